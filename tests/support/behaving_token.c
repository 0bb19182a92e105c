/* A PKCS#11 module that is another one (SoftHSM) behaving as hardware tokens do, each
 * behaviour switched by an environment variable of the process that loads it:
 *   HSM_SHIM_REAL        the real module (required)
 *   HSM_SHIM_IDLE_MS     a session left unused this long is dropped: every call on it
 *                        then returns CKR_SESSION_HANDLE_INVALID (YubiHSM 2: 30 s)
 *   HSM_SHIM_NO_RO       "1": read-only sessions are refused with
 *                        CKR_FUNCTION_NOT_SUPPORTED (AWS CloudHSM, PKCS#11 library 5)
 *   HSM_SHIM_FAIL_EVERY  every Nth signature fails with HSM_SHIM_FAIL_RV (default
 *                        CKR_FUNCTION_FAILED: how CloudHSM reports throttling)
 *   HSM_SHIM_LATENCY_MS  each signature takes this much longer (a network HSM)
 * Built by tests/support/behaving_token.py with gcc and p11-kit's pkcs11.h. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <p11-kit/pkcs11.h>

#define SLOTS 4096

static CK_FUNCTION_LIST_PTR real;
static CK_FUNCTION_LIST mine;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long idle_ms, fail_every, latency_ms, signatures;
static CK_RV fail_rv = CKR_FUNCTION_FAILED;
static int no_ro;
static struct { CK_SESSION_HANDLE handle; long last; int dropped; } sessions[SLOTS];

static long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

static long env_long(const char *name, long otherwise) {
    const char *value = getenv(name);
    return value ? strtol(value, NULL, 0) : otherwise;
}

/* The session's use now: CKR_OK, or CKR_SESSION_HANDLE_INVALID once it went idle. */
static CK_RV used(CK_SESSION_HANDLE s) {
    CK_RV rv = CKR_OK;
    int close_it = 0;
    pthread_mutex_lock(&lock);
    int i = (int)(s % SLOTS);
    long now = now_ms();
    if (sessions[i].handle == s) {
        if (sessions[i].dropped) {
            rv = CKR_SESSION_HANDLE_INVALID;
        } else if (idle_ms > 0 && now - sessions[i].last > idle_ms) {
            sessions[i].dropped = 1;
            close_it = 1;
            rv = CKR_SESSION_HANDLE_INVALID;
        } else {
            sessions[i].last = now;
        }
    }
    pthread_mutex_unlock(&lock);
    if (close_it) real->C_CloseSession(s);  /* the token forgot it */
    return rv;
}

static CK_RV open_session(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                          CK_SESSION_HANDLE_PTR s) {
    if (no_ro && !(flags & CKF_RW_SESSION)) return CKR_FUNCTION_NOT_SUPPORTED;
    CK_RV rv = real->C_OpenSession(slot, flags, app, notify, s);
    if (rv == CKR_OK) {
        pthread_mutex_lock(&lock);
        int i = (int)(*s % SLOTS);
        sessions[i].handle = *s;
        sessions[i].last = now_ms();
        sessions[i].dropped = 0;
        pthread_mutex_unlock(&lock);
    }
    return rv;
}

static CK_RV close_session(CK_SESSION_HANDLE s) {
    CK_RV rv = used(s);
    if (rv != CKR_OK) return rv;
    return real->C_CloseSession(s);
}

static CK_RV login(CK_SESSION_HANDLE s, CK_USER_TYPE who, CK_UTF8CHAR_PTR pin, CK_ULONG len) {
    CK_RV rv = used(s);
    return rv != CKR_OK ? rv : real->C_Login(s, who, pin, len);
}

static CK_RV sign_init(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE key) {
    CK_RV rv = used(s);
    return rv != CKR_OK ? rv : real->C_SignInit(s, m, key);
}

static CK_RV sign(CK_SESSION_HANDLE s, CK_BYTE_PTR data, CK_ULONG size, CK_BYTE_PTR signature,
                  CK_ULONG_PTR length) {
    CK_RV rv = used(s);
    if (rv != CKR_OK) return rv;
    if (signature != NULL) {  /* not for the length query */
        if (latency_ms > 0) usleep((useconds_t)(latency_ms * 1000));
        pthread_mutex_lock(&lock);
        long n = ++signatures;
        pthread_mutex_unlock(&lock);
        if (fail_every > 0 && n % fail_every == 0) {
            CK_BYTE scratch[1024];
            CK_ULONG room = sizeof scratch;
            real->C_Sign(s, data, size, scratch, &room);  /* ends the operation, as a failure does */
            return fail_rv;
        }
    }
    return real->C_Sign(s, data, size, signature, length);
}

static CK_RV find_init(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
    CK_RV rv = used(s);
    return rv != CKR_OK ? rv : real->C_FindObjectsInit(s, t, n);
}

static CK_RV find(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR o, CK_ULONG max, CK_ULONG_PTR n) {
    CK_RV rv = used(s);
    return rv != CKR_OK ? rv : real->C_FindObjects(s, o, max, n);
}

static CK_RV find_final(CK_SESSION_HANDLE s) {
    CK_RV rv = used(s);
    return rv != CKR_OK ? rv : real->C_FindObjectsFinal(s);
}

static CK_RV get_attributes(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t,
                            CK_ULONG n) {
    CK_RV rv = used(s);
    return rv != CKR_OK ? rv : real->C_GetAttributeValue(s, o, t, n);
}

static CK_RV session_info(CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR info) {
    CK_RV rv = used(s);
    return rv != CKR_OK ? rv : real->C_GetSessionInfo(s, info);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
    if (real == NULL) {
        const char *path = getenv("HSM_SHIM_REAL");
        if (path == NULL) return CKR_GENERAL_ERROR;
        void *module = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (module == NULL) return CKR_GENERAL_ERROR;
        CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(module, "C_GetFunctionList");
        if (get == NULL) return CKR_GENERAL_ERROR;
        CK_RV rv = get(&real);
        if (rv != CKR_OK) return rv;
        idle_ms = env_long("HSM_SHIM_IDLE_MS", 0);
        fail_every = env_long("HSM_SHIM_FAIL_EVERY", 0);
        fail_rv = (CK_RV)env_long("HSM_SHIM_FAIL_RV", CKR_FUNCTION_FAILED);
        latency_ms = env_long("HSM_SHIM_LATENCY_MS", 0);
        no_ro = env_long("HSM_SHIM_NO_RO", 0) != 0;
        mine = *real;
        mine.C_OpenSession = open_session;
        mine.C_CloseSession = close_session;
        mine.C_Login = login;
        mine.C_SignInit = sign_init;
        mine.C_Sign = sign;
        mine.C_FindObjectsInit = find_init;
        mine.C_FindObjects = find;
        mine.C_FindObjectsFinal = find_final;
        mine.C_GetAttributeValue = get_attributes;
        mine.C_GetSessionInfo = session_info;
    }
    *list = &mine;
    return CKR_OK;
}
