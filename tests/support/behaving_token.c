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
 *   HSM_SHIM_NO_MULTIPART "1": C_SignUpdate and C_SignFinal are refused with
 *                        CKR_FUNCTION_NOT_SUPPORTED (AWS CloudHSM; not balanced over a
 *                        Luna HA group): only one C_Sign a signature works
 *   HSM_SHIM_MAX_SESSIONS the token says (C_GetTokenInfo) it allows this many sessions
 *                        and refuses one more with CKR_SESSION_COUNT (YubiHSM 2: 16);
 *                        counted over every process that names the same
 *                        HSM_SHIM_SESSIONS_FILE (a counter shared through mmap), as a
 *                        token counts them; the most ever open is kept beside it
 *   HSM_SHIM_FIND_PER_S  object look-ups (C_FindObjectsInit, C_GetAttributeValue) over
 *                        this many within any second in this process fail with
 *                        CKR_DEVICE_ERROR (AWS CloudHSM: 10 a second an HSM)
 *   HSM_SHIM_GONE_FILE   while this file exists the token is away (its slot is not
 *                        listed, every call on a session says CKR_DEVICE_REMOVED); each
 *                        time it comes back it is in another slot (its id + 1000), and
 *                        the sessions of before are gone (a network HSM's client
 *                        restarted, an HA group failing over, a USB token re-plugged)
 * Built by tests/support/behaving_token.py with gcc and p11-kit's pkcs11.h. */
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
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
static int no_ro, no_multipart;
static long max_sessions, find_per_s;
#define MAX_FINDS 1024
static long find_times[MAX_FINDS], finds, find_next; /* the last look-ups let through */
static long local_counts[2];
static long *counts = local_counts; /* [0] open now, [1] the most ever open */
static const char *gone_file;
static long slot_offset, generation; /* slot ids shown = real + offset; bumped at return */
static int was_gone;
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

/* Whether the token is away now; on its return it moves to another slot and the
 * sessions opened before are forgotten. */
static int away(void) {
    if (gone_file == NULL) return 0;
    int gone = access(gone_file, F_OK) == 0;
    pthread_mutex_lock(&lock);
    if (was_gone && !gone) {
        slot_offset += 1000;
        generation++;
        for (int i = 0; i < SLOTS; i++) sessions[i].dropped = sessions[i].handle != 0;
        __atomic_store_n(&counts[0], 0, __ATOMIC_SEQ_CST);
    }
    was_gone = gone;
    pthread_mutex_unlock(&lock);
    return gone;
}

/* A look-up now: CKR_OK, or CKR_DEVICE_ERROR over the token's rate: when find_per_s
   look-ups were let through within the last second (a sliding second, so that a burst
   is throttled however it falls across the clock's seconds). */
static CK_RV looked_up(void) {
    if (find_per_s <= 0) return CKR_OK;
    long window = find_per_s < MAX_FINDS ? find_per_s : MAX_FINDS;
    CK_RV rv = CKR_OK;
    pthread_mutex_lock(&lock);
    long now = now_ms();
    if (finds == window && now - find_times[find_next] < 1000) {
        rv = CKR_DEVICE_ERROR; /* find_times[find_next]: the oldest of the last `window` */
    } else {
        find_times[find_next] = now;
        find_next = (find_next + 1) % window;
        if (finds < window) finds++;
    }
    pthread_mutex_unlock(&lock);
    return rv;
}

/* The session's use now: CKR_OK, or CKR_SESSION_HANDLE_INVALID once it went idle. */
static CK_RV used(CK_SESSION_HANDLE s) {
    if (away()) return CKR_DEVICE_REMOVED;
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

/* The real slot of a slot id shown; -1 if none (the token away, or an old id). */
static long real_slot(CK_SLOT_ID slot) {
    if (away()) return -1;
    pthread_mutex_lock(&lock);
    long real_id = (long)slot - slot_offset;
    pthread_mutex_unlock(&lock);
    return real_id;
}

static CK_RV slot_list(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count) {
    CK_ULONG room = list ? *count : 0;
    CK_RV rv = real->C_GetSlotList(present, list, count);
    if (rv != CKR_OK || gone_file == NULL) return rv;
    if (away()) { *count = 0; return CKR_OK; }
    if (list) for (CK_ULONG i = 0; i < *count && i < room; i++) list[i] += slot_offset;
    return rv;
}

static CK_RV slot_info(CK_SLOT_ID slot, CK_SLOT_INFO_PTR info) {
    long id = gone_file ? real_slot(slot) : (long)slot;
    return id < 0 ? CKR_SLOT_ID_INVALID : real->C_GetSlotInfo((CK_SLOT_ID)id, info);
}

static CK_RV token_info(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info) {
    long id = gone_file ? real_slot(slot) : (long)slot;
    if (id < 0) return CKR_SLOT_ID_INVALID;
    CK_RV rv = real->C_GetTokenInfo((CK_SLOT_ID)id, info);
    if (rv == CKR_OK && max_sessions > 0) {
        info->ulMaxSessionCount = info->ulMaxRwSessionCount = (CK_ULONG)max_sessions;
    }
    return rv;
}

static CK_RV mechanism_info(CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info) {
    long id = gone_file ? real_slot(slot) : (long)slot;
    return id < 0 ? CKR_SLOT_ID_INVALID : real->C_GetMechanismInfo((CK_SLOT_ID)id, type, info);
}

static CK_RV mechanism_list(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count) {
    long id = gone_file ? real_slot(slot) : (long)slot;
    return id < 0 ? CKR_SLOT_ID_INVALID : real->C_GetMechanismList((CK_SLOT_ID)id, list, count);
}

static CK_RV open_session(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                          CK_SESSION_HANDLE_PTR s) {
    if (no_ro && !(flags & CKF_RW_SESSION)) return CKR_FUNCTION_NOT_SUPPORTED;
    long id = gone_file ? real_slot(slot) : (long)slot;
    if (id < 0) return CKR_SLOT_ID_INVALID;
    long now_open = __atomic_add_fetch(&counts[0], 1, __ATOMIC_SEQ_CST);
    if (max_sessions > 0 && now_open > max_sessions) {
        __atomic_sub_fetch(&counts[0], 1, __ATOMIC_SEQ_CST);
        return CKR_SESSION_COUNT;
    }
    long most = __atomic_load_n(&counts[1], __ATOMIC_SEQ_CST);
    while (now_open > most &&
           !__atomic_compare_exchange_n(&counts[1], &most, now_open, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {}
    CK_RV rv = real->C_OpenSession((CK_SLOT_ID)id, flags, app, notify, s);
    if (rv != CKR_OK) __atomic_sub_fetch(&counts[0], 1, __ATOMIC_SEQ_CST);
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
    rv = real->C_CloseSession(s);
    if (rv == CKR_OK) __atomic_sub_fetch(&counts[0], 1, __ATOMIC_SEQ_CST);
    return rv;
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

static CK_RV sign_update(CK_SESSION_HANDLE s, CK_BYTE_PTR part, CK_ULONG size) {
    if (no_multipart) return CKR_FUNCTION_NOT_SUPPORTED;
    CK_RV rv = used(s);
    return rv != CKR_OK ? rv : real->C_SignUpdate(s, part, size);
}

static CK_RV sign_final(CK_SESSION_HANDLE s, CK_BYTE_PTR signature, CK_ULONG_PTR length) {
    if (no_multipart) return CKR_FUNCTION_NOT_SUPPORTED;
    CK_RV rv = used(s);
    return rv != CKR_OK ? rv : real->C_SignFinal(s, signature, length);
}

static CK_RV find_init(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
    CK_RV rv = used(s);
    if (rv == CKR_OK) rv = looked_up();
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
    if (rv == CKR_OK) rv = looked_up();
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
        no_multipart = env_long("HSM_SHIM_NO_MULTIPART", 0) != 0;
        max_sessions = env_long("HSM_SHIM_MAX_SESSIONS", 0);
        find_per_s = env_long("HSM_SHIM_FIND_PER_S", 0);
        gone_file = getenv("HSM_SHIM_GONE_FILE");
        const char *shared = getenv("HSM_SHIM_SESSIONS_FILE");
        if (shared != NULL) {
            int fd = open(shared, O_RDWR | O_CREAT, 0600);
            if (fd < 0 || ftruncate(fd, sizeof local_counts) != 0) return CKR_GENERAL_ERROR;
            void *map = mmap(NULL, sizeof local_counts, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            close(fd);
            if (map == MAP_FAILED) return CKR_GENERAL_ERROR;
            counts = map;
        }
        mine = *real;
        mine.C_GetSlotList = slot_list;
        mine.C_GetSlotInfo = slot_info;
        mine.C_GetTokenInfo = token_info;
        mine.C_GetMechanismInfo = mechanism_info;
        mine.C_GetMechanismList = mechanism_list;
        mine.C_OpenSession = open_session;
        mine.C_CloseSession = close_session;
        mine.C_Login = login;
        mine.C_SignInit = sign_init;
        mine.C_Sign = sign;
        mine.C_SignUpdate = sign_update;
        mine.C_SignFinal = sign_final;
        mine.C_FindObjectsInit = find_init;
        mine.C_FindObjects = find;
        mine.C_FindObjectsFinal = find_final;
        mine.C_GetAttributeValue = get_attributes;
        mine.C_GetSessionInfo = session_info;
    }
    *list = &mine;
    return CKR_OK;
}
