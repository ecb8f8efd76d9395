/* Result fingerprints: column/row counts and two 64-bit hashes of a command's rows, computed as the
 * server's packets pass (docs/traffic-format.md, "Result fingerprints").
 *
 * A streaming API with no allocation on the common path and no copy of row data:
 *
 *     fp_reset(fp)                        a new command
 *     fp_row_begin(fp, len)               a packet that may be a row starts; len = its payload length,
 *                                         or -1 when unknown (a row of 16 MiB and more)
 *     fp_row_bytes(fp, p, n)              bytes of it, as they arrive (any split)
 *     fp_row_end(fp)                      it was a row: fold it in (a terminator is simply never ended)
 *     fp_result_end(fp)                   the end of one result set (EOF/OK after its rows)
 *     fp_ordered(fp), fp_unordered(fp)    the command's hashes (0 when it had no result set)
 *     fp_free(fp)                         release the spill state (rows split across reads)
 *
 * Definition (fixed: captures and replays must agree, whichever build computes them):
 *     row_hash   = XXH3_64bits(row payload)          (packet headers removed, 16 MiB parts joined)
 *     per result set, over its rows i = 0, 1, ... (mod 2^64 sums, starting at o = 0, u = 0):
 *         o = o + XXH3_64bits_withSeed(le64(row_hash), 8, i)
 *         u = u + XXH3_64bits_withSeed(le64(row_hash), 8, FP_UNORDERED_SEED)
 *     per command, over its result sets in order, starting at O = 0, U = 0:
 *         O = XXH3_64bits_withSeed(le64(o), 8, O)
 *         U = XXH3_64bits_withSeed(le64(u), 8, U)
 * u is a sum of mixed row hashes: commutative (row order does not matter) and duplicates do not
 * cancel (unlike XOR). o mixes each row with its position, so order matters; being a sum rather
 * than a chain, consecutive rows do not wait for each other (no serial dependency per row).
 * A command whose response has no result set has O = U = 0.
 *
 * Header-only (xxhash inlined with XXH_INLINE_ALL, from Debian's libxxhash-dev), so that the
 * Cython tracker and a C data plane get the same code without a shared library of ours. Rows longer
 * than 240 bytes that arrive in one piece go to libxxhash's XXH3_64bits_dispatch when the build
 * defines FP_XXH_DISPATCH (x86-64, linked with -lxxhash): the same function, AVX2/AVX-512 chosen at
 * run time (~16 GB/s here against ~9 GB/s for the inlined SSE2 code).
 */
#ifndef FASTPROXY_FINGERPRINT_H
#define FASTPROXY_FINGERPRINT_H

#include <stdint.h>
#include <stddef.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#define FP_UNORDERED_SEED 0x9E3779B97F4A7C15ULL

#ifdef FP_XXH_DISPATCH
XXH64_hash_t XXH3_64bits_dispatch(const void *input, size_t len);   /* libxxhash's x86 dispatcher */
#define FP_HASH_ROW(p, n) ((n) > 240 ? XXH3_64bits_dispatch((p), (n)) : XXH3_64bits((p), (n)))
#else
#define FP_HASH_ROW(p, n) XXH3_64bits((p), (n))
#endif

typedef struct fp_state {
    XXH3_state_t *spill;    /* streaming state for a row split across reads; allocated on first need */
    uint64_t row_hash;      /* the current row's hash when it came in one piece */
    int64_t row_expect;     /* payload length announced by fp_row_begin, -1 if unknown */
    int64_t row_seen;       /* bytes of the current row seen so far */
    int row_spilled;        /* the current row goes through `spill` */
    uint64_t res_ordered, res_unordered, res_rows;   /* the result set in progress */
    uint64_t ordered, unordered;                     /* the command so far */
    uint64_t rows;                                   /* rows of all its result sets */
    uint32_t results;                                /* result sets ended */
} fp_state;

static inline uint64_t fp_fold(uint64_t value, uint64_t seed) {
    /* le64(value): the same bytes on every host (a byte loop here cost a store-forwarding stall per row) */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    value = __builtin_bswap64(value);
#endif
    return XXH3_64bits_withSeed(&value, 8, seed);
}

static inline void fp_init(fp_state *fp) {
    fp->spill = NULL;
    fp->row_hash = 0;
    fp->row_expect = -1;
    fp->row_seen = 0;
    fp->row_spilled = 0;
    fp->res_ordered = fp->res_unordered = fp->res_rows = 0;
    fp->ordered = fp->unordered = fp->rows = 0;
    fp->results = 0;
}

static inline void fp_free(fp_state *fp) {
    if (fp->spill) XXH3_freeState(fp->spill);
    fp->spill = NULL;
}

static inline void fp_reset(fp_state *fp) {
    fp->res_ordered = fp->res_unordered = fp->res_rows = 0;
    fp->ordered = fp->unordered = fp->rows = 0;
    fp->results = 0;
    fp->row_seen = 0;
    fp->row_spilled = 0;
}

static inline void fp_row_begin(fp_state *fp, int64_t len) {
    fp->row_expect = len;
    fp->row_seen = 0;
    fp->row_spilled = 0;
    fp->row_hash = 0;
}

/* 0, or -1 if the spill state cannot be allocated (the caller raises MemoryError). */
static inline int fp_row_bytes(fp_state *fp, const unsigned char *p, size_t n) {
    if (fp->row_seen == 0 && !fp->row_spilled && (int64_t)n == fp->row_expect) {
        fp->row_hash = FP_HASH_ROW(p, n);     /* the whole row in one read: the common case */
        fp->row_seen = (int64_t)n;
        return 0;
    }
    if (!fp->row_spilled) {
        if (fp->spill == NULL && (fp->spill = XXH3_createState()) == NULL) return -1;
        XXH3_64bits_reset(fp->spill);
        fp->row_spilled = 1;
    }
    XXH3_64bits_update(fp->spill, p, n);
    fp->row_seen += (int64_t)n;
    return 0;
}

static inline void fp_row_end(fp_state *fp) {
    uint64_t h;
    if (fp->row_spilled) h = XXH3_64bits_digest(fp->spill);
    else if (fp->row_seen) h = fp->row_hash;
    else h = XXH3_64bits(NULL, 0);   /* an empty payload (not a valid row, but defined) */
    fp->res_ordered += fp_fold(h, fp->res_rows);
    fp->res_unordered += fp_fold(h, FP_UNORDERED_SEED);
    fp->res_rows++;
    fp->row_seen = 0;
    fp->row_spilled = 0;
}

static inline void fp_result_end(fp_state *fp) {
    fp->ordered = fp_fold(fp->res_ordered, fp->ordered);
    fp->unordered = fp_fold(fp->res_unordered, fp->unordered);
    fp->rows += fp->res_rows;
    fp->results++;
    fp->res_ordered = fp->res_unordered = fp->res_rows = 0;
}

static inline uint64_t fp_ordered(const fp_state *fp) { return fp->results ? fp->ordered : 0; }
static inline uint64_t fp_unordered(const fp_state *fp) { return fp->results ? fp->unordered : 0; }

#endif
