# For other Cython modules: the scan behind the secret classifier, without the GIL.

cdef int needs_policy(const unsigned char* p, Py_ssize_t n) noexcept nogil
