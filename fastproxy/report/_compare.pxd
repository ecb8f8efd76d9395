# cython: language_level=3
from fastproxy._packet cimport CommandResult

# the verdict's hook (_observe.pyx) calls it without a Python call; `rec` is a capture Record
cdef bint same_as_captured_c(tuple rec, CommandResult result) except -1
