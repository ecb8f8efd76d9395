"""Builds the Cython extensions: every fastproxy/**/*.pyx becomes one small extension module.

Separate extensions joined by .pxd cimports (not one big compilation unit) keep rebuilds cheap
and the layers honest.
"""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTPROXY_DEBUG") == "1"
# Modules that include fastproxy/fingerprint.h (result fingerprints, xxhash).
FINGERPRINT_USERS = {"fastproxy._packet", "fastproxy._fingerprint"}


def xxh_dispatch() -> bool:
    """Whether the system libxxhash has the x86 run-time dispatcher (Debian's amd64 build has)."""
    import ctypes
    import ctypes.util

    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("xxhash") or "libxxhash.so.0"), "XXH3_64bits_dispatch")
    except OSError:
        return False


def extensions():
    exts = []
    dispatch = xxh_dispatch()
    for path in sorted(glob.glob("fastproxy/**/*.pyx", recursive=True)):
        module = path[:-4].replace(os.sep, ".")
        kw = {}
        if module in FINGERPRINT_USERS and dispatch:
            kw = dict(define_macros=[("FP_XXH_DISPATCH", "1")], libraries=["xxhash"])
        # include_dirs: fastproxy/fingerprint.h, which inlines xxhash from Debian's libxxhash-dev
        exts.append(Extension(module, [path], include_dirs=["fastproxy"], depends=["fastproxy/fingerprint.h"],
                              extra_compile_args=["-O2"] if not DEBUG else ["-O0", "-g"], **kw))
    return exts


setup(
    ext_modules=cythonize(
        extensions(),
        language_level=3,
        compiler_directives={
            "boundscheck": DEBUG,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)
