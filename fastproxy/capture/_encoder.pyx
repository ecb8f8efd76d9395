# cython: language_level=3
"""ChunkEncoder: the capture writer's per-chunk work in C, without the GIL.

The writer thread (fastproxy/capture/writer.py) used to drain the ring into a new bytes object and
hand it to python-lz4: one copy of every captured byte, and a Python object per chunk. Here the
records are compressed straight out of the ring (liblz4's frame API, Debian's liblz4-dev) into an
output buffer this object owns and reuses; they stay in the ring, counted as used (so no producer
writes there), until the writer has them on disk and calls release(). A chunk the disk refused can
then still be read back whole (raw()) to salvage its records.

The lz4 frame is the one the format describes (docs/traffic-format.md): independent 64 KiB blocks,
block checksums, flushed at every chunk (so a file cut off by a crash is readable to its last
chunk). It carries no content checksum: the block checksums already cover every compressed byte
of the file, and the content checksum, an XXH32 of every decompressed byte, cost the writer about
a fifth of its CPU (bench/test_bench_capture.py) for a check that a streaming reader can only make
at the frame's end, after it has handed out every record of the file. What the block checksums
leave out is each block's 4-byte size field: a flip there either derails the frame's parsing (a
size or checksum error) or, in its "stored uncompressed" bit, hands the reader bytes of another
length than the records they replace, which the record checks catch (tests/test_capture_store.py
flips it in every block). Frames written with a content checksum (captures before 2026-12-04)
still read, checked: the reader checks whatever the frame says it carries.
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memset

from fastproxy._ringbuf cimport (RingBuffer, ring_count_commands, ring_drain_pieces,
                                 ring_drain_release, ring_drain_size)

# lz4's fast mode with acceleration 2 (a negative level): on captured sysbench records 20 % less of
# the writer's CPU than acceleration 1 for 1 % bigger files (BENCHMARKS.md, "A capture's cost counted")
cdef enum: COMPRESSION_LEVEL = -2

cdef extern from "Python.h":
    object PyMemoryView_FromMemory(char *mem, Py_ssize_t size, int flags)
    int PyBUF_READ

cdef extern from "lz4frame.h" nogil:
    ctypedef struct LZ4F_cctx:
        pass
    ctypedef enum LZ4F_blockSizeID_t:
        LZ4F_max64KB
    ctypedef enum LZ4F_blockMode_t:
        LZ4F_blockIndependent
    ctypedef enum LZ4F_contentChecksum_t:
        LZ4F_noContentChecksum
    ctypedef enum LZ4F_blockChecksum_t:
        LZ4F_blockChecksumEnabled
    ctypedef struct LZ4F_frameInfo_t:
        LZ4F_blockSizeID_t blockSizeID
        LZ4F_blockMode_t blockMode
        LZ4F_contentChecksum_t contentChecksumFlag
        LZ4F_blockChecksum_t blockChecksumFlag
    ctypedef struct LZ4F_preferences_t:
        LZ4F_frameInfo_t frameInfo
        int compressionLevel
        unsigned autoFlush
    ctypedef struct LZ4F_compressOptions_t:
        unsigned stableSrc
    unsigned LZ4F_VERSION
    unsigned LZ4F_isError(size_t code)
    const char *LZ4F_getErrorName(size_t code)
    size_t LZ4F_createCompressionContext(LZ4F_cctx **cctx, unsigned version)
    size_t LZ4F_freeCompressionContext(LZ4F_cctx *cctx)
    size_t LZ4F_compressBound(size_t src_size, const LZ4F_preferences_t *prefs)
    size_t LZ4F_compressBegin(LZ4F_cctx *cctx, void *dst, size_t cap, const LZ4F_preferences_t *prefs)
    size_t LZ4F_compressUpdate(LZ4F_cctx *cctx, void *dst, size_t cap, const void *src, size_t n,
                               const LZ4F_compressOptions_t *opts)
    size_t LZ4F_compressEnd(LZ4F_cctx *cctx, void *dst, size_t cap, const LZ4F_compressOptions_t *opts)


cdef class ChunkEncoder:
    """ChunkEncoder(ringbuf, compress): takes chunks of whole records from the ring and encodes
    them (one lz4 frame per file: begin(), take()/encode() ..., end(); or as they are).

    The memoryviews take() and encode() return point into a buffer reused by the next call: write
    them before calling again.
    """
    cdef RingBuffer _rb
    cdef LZ4F_cctx *_cctx
    cdef LZ4F_preferences_t _prefs
    cdef bint _compress
    cdef char *_out
    cdef size_t _out_cap
    cdef size_t _taken       # bytes of the chunk taken from the ring and not yet released
    cdef size_t _taken_rec
    cdef readonly uint64_t commands  # COMMAND records in the taken chunk

    def __cinit__(self, RingBuffer ringbuf not None, bint compress):
        self._rb = ringbuf
        self._compress = compress
        memset(&self._prefs, 0, sizeof(self._prefs))
        self._prefs.frameInfo.blockSizeID = LZ4F_max64KB
        self._prefs.frameInfo.blockMode = LZ4F_blockIndependent  # the frame goes on after a cut: writer._salvage
        self._prefs.frameInfo.contentChecksumFlag = LZ4F_noContentChecksum  # why: the module's docstring
        self._prefs.frameInfo.blockChecksumFlag = LZ4F_blockChecksumEnabled
        self._prefs.autoFlush = 1
        self._prefs.compressionLevel = COMPRESSION_LEVEL
        if compress:
            _check(LZ4F_createCompressionContext(&self._cctx, LZ4F_VERSION))

    def __dealloc__(self):
        if self._cctx is not NULL:
            LZ4F_freeCompressionContext(self._cctx)
        free(self._out)

    cdef int _reserve(self, size_t n) except -1:
        cdef char *p
        if n > self._out_cap:
            p = <char *>realloc(self._out, n)
            if p is NULL:
                raise MemoryError(f"cannot allocate {n} bytes for the capture writer")
            self._out = p
            self._out_cap = n
        return 0

    cdef size_t _bound(self, size_t n) noexcept:
        return LZ4F_compressBound(n, &self._prefs) if self._compress else n

    def begin(self):
        """Start a new frame (a new file): its header bytes (b"" uncompressed). A chunk taken
        before is not touched (the header is made in a buffer of its own)."""
        cdef char head[32]  # LZ4F_HEADER_SIZE_MAX (19)
        if not self._compress:
            return b""
        return PyBytes_FromStringAndSize(head, _check(LZ4F_compressBegin(self._cctx, head, sizeof(head), &self._prefs)))

    def end(self):
        """End the frame: its end mark (b"" uncompressed)."""
        cdef char tail[16]  # the end mark, 4 bytes (8 with a content checksum)
        if not self._compress:
            return b""
        return PyBytes_FromStringAndSize(tail, _check(LZ4F_compressEnd(self._cctx, tail, sizeof(tail), NULL)))

    def take(self, Py_ssize_t max_bytes):
        """Encode the oldest whole records, up to max_bytes of them (one larger record alone), and
        return the encoded bytes; None when the ring is empty or a large record is next (its
        next_large()). The records stay in the ring until release(); `taken` / `taken_records` /
        `commands` describe them."""
        cdef size_t n, nrec, n1, n2, k = 0, k2 = 0
        cdef const char *p1
        cdef const char *p2
        if self._taken:
            raise RuntimeError("the chunk taken before was not released")
        n = ring_drain_size(&self._rb._r, max_bytes, &nrec)
        if n == 0:
            return None
        ring_drain_pieces(&self._rb._r, n, &p1, &n1, &p2, &n2)
        self._reserve(self._bound(n1) + self._bound(n2))
        with nogil:
            if self._compress:
                k = LZ4F_compressUpdate(self._cctx, self._out, self._out_cap, p1, n1, NULL)
                if n2 and not LZ4F_isError(k):
                    # a chunk that wraps around the ring: two calls, so one more block boundary
                    k2 = LZ4F_compressUpdate(self._cctx, self._out + k, self._out_cap - k, p2, n2, NULL)
            else:
                memcpy(self._out, p1, n1)
                memcpy(self._out + n1, p2, n2)
                k = n
            self.commands = ring_count_commands(&self._rb._r, n)
        _check(k)
        k += _check(k2)
        self._taken, self._taken_rec = n, nrec
        return PyMemoryView_FromMemory(self._out, k, PyBUF_READ)

    @property
    def taken(self):
        """Bytes of records taken and not yet released."""
        return self._taken

    @property
    def taken_records(self):
        return self._taken_rec

    def raw(self):
        """A copy of the records taken (to salvage those a refused write still has room for)."""
        cdef size_t n1, n2
        cdef const char *p1
        cdef const char *p2
        ring_drain_pieces(&self._rb._r, self._taken, &p1, &n1, &p2, &n2)
        out = PyBytes_FromStringAndSize(NULL, self._taken)
        memcpy(PyBytes_AS_STRING(out), p1, n1)
        memcpy(PyBytes_AS_STRING(out) + n1, p2, n2)
        return out

    def release(self):
        """Remove the records taken from the ring: they are written (and counted as drained)."""
        if self._taken:
            ring_drain_release(&self._rb._r, self._taken, self._taken_rec)
            self._rb._commands_drained += self.commands
            self._taken = self._taken_rec = 0
            self.commands = 0

    def encode(self, data):
        """Encode bytes that are not in the ring (a large record's slices, salvaged records)."""
        cdef Py_buffer view
        cdef size_t k
        if not self._compress:
            return data
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._reserve(self._bound(<size_t>view.len))
            with nogil:
                k = LZ4F_compressUpdate(self._cctx, self._out, self._out_cap, view.buf, <size_t>view.len, NULL)
            _check(k)
            return PyMemoryView_FromMemory(self._out, k, PyBUF_READ)
        finally:
            PyBuffer_Release(&view)


cdef size_t _check(size_t code) except? 0:
    if LZ4F_isError(code):
        raise RuntimeError(f"lz4: {LZ4F_getErrorName(code).decode()}")
    return code
