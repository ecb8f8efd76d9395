# The result fingerprint hasher (fingerprint.h), for Cython modules to cimport.
from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef extern from "fingerprint.h" nogil:
    ctypedef struct fp_state:
        uint64_t rows
        uint32_t results
    void fp_init(fp_state *fp)
    void fp_free(fp_state *fp)
    void fp_reset(fp_state *fp)
    void fp_row_begin(fp_state *fp, int64_t length)
    int fp_row_bytes(fp_state *fp, const unsigned char *p, size_t n)
    void fp_row_end(fp_state *fp)
    void fp_result_end(fp_state *fp)
    uint64_t fp_ordered(const fp_state *fp)
    uint64_t fp_unordered(const fp_state *fp)
    uint64_t fp_fold(uint64_t value, uint64_t seed)
