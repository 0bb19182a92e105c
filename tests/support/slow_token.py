"""A slow token: SoftHSM behind a PKCS#11 wrapper module compiled here (gcc, p11-kit's
pkcs11.h) that sleeps in every C_Sign. For tests and benchmarks/slow_token.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .softhsm import MODULE

SHIM = r"""
#include <dlfcn.h>
#include <unistd.h>
#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR real;
static CK_FUNCTION_LIST mine;

static CK_RV slow_sign(CK_SESSION_HANDLE s, CK_BYTE_PTR data, CK_ULONG size,
                       CK_BYTE_PTR signature, CK_ULONG_PTR length) {
    if (signature != NULL) usleep(DELAY_US);  /* not for the length query */
    return real->C_Sign(s, data, size, signature, length);
}

static CK_RV slow_sign_final(CK_SESSION_HANDLE s, CK_BYTE_PTR signature,
                             CK_ULONG_PTR length) {
    if (signature != NULL) usleep(DELAY_US);
    return real->C_SignFinal(s, signature, length);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
    if (real == NULL) {
        void *module = dlopen(REAL_MODULE, RTLD_NOW | RTLD_LOCAL);
        if (module == NULL) return CKR_GENERAL_ERROR;
        CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(module, "C_GetFunctionList");
        if (get == NULL) return CKR_GENERAL_ERROR;
        CK_RV rv = get(&real);
        if (rv != CKR_OK) return rv;
        mine = *real;
        mine.C_Sign = slow_sign;
        mine.C_SignFinal = slow_sign_final;
    }
    *list = &mine;
    return CKR_OK;
}
"""


def build_shim(tmp: Path, delay_ms: int, real_module: str = MODULE) -> Path:
    """A PKCS#11 module that is ``real_module`` with C_Sign ``delay_ms`` slower."""
    source, library = tmp / "slowtoken.c", tmp / "slowtoken.so"
    source.write_text(SHIM)
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-O2",
            "-I/usr/include/p11-kit-1",
            f"-DDELAY_US={delay_ms * 1000}",
            f'-DREAL_MODULE="{real_module}"',
            "-o",
            str(library),
            str(source),
            "-ldl",
        ],
        check=True,
    )
    return library
