"""Builds the Cython extensions: every fastproxy/**/*.pyx becomes one small extension module.

Separate extensions joined by .pxd cimports (not one big compilation unit) keep rebuilds cheap
and the layers honest.
"""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTPROXY_DEBUG") == "1"


def extensions():
    exts = []
    for path in sorted(glob.glob("fastproxy/**/*.pyx", recursive=True)):
        module = path[:-4].replace(os.sep, ".")
        exts.append(Extension(module, [path], extra_compile_args=["-O2"] if not DEBUG else ["-O0", "-g"]))
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
