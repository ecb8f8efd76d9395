/* The capture ring buffer (see ring.h). */
#include "ring.h"

#include <stdlib.h>
#include <string.h>

int ring_init(ring *r, size_t capacity) {
    memset(r, 0, sizeof *r);
    r->buf = malloc(capacity);
    if (!r->buf)
        return -1;
    r->cap = capacity;
    pthread_mutex_init(&r->lock, NULL);
    return 0;
}

void ring_destroy(ring *r) {
    if (r->buf) {
        pthread_mutex_destroy(&r->lock);
        free(r->buf);
        r->buf = NULL;
    }
}

/* Explicit little-endian stores: the file format must not depend on the host's byte order.
 * Written out byte by byte (no loop), so that the compiler merges each into a single store on
 * little-endian hosts (gcc's store merging at -O2; a loop stays a loop there: ring_append of a
 * 100-byte statement took ~745 instructions with loops, ~315 without, lock included; callgrind). */
static inline void le16(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static inline void le32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static inline void le64(unsigned char *p, uint64_t v) {
    le32(p, (uint32_t)v);
    le32(p + 4, (uint32_t)(v >> 32));
}

static void put(ring *r, const char *src, size_t n) {
    size_t first = r->cap - r->head;
    if (n < first) {
        memcpy(r->buf + r->head, src, n);
        r->head += n;
    } else {
        /* Records are allowed to wrap: two copies beat wasting the tail end of the buffer. */
        memcpy(r->buf + r->head, src, first);
        memcpy(r->buf, src + first, n - first);
        r->head = n - first;
    }
}

static void get(const ring *r, char *dst, size_t pos, size_t n) {
    size_t first = r->cap - pos;
    if (n <= first) {
        memcpy(dst, r->buf + pos, n);
    } else {
        memcpy(dst, r->buf + pos, first);
        memcpy(dst + first, r->buf, n - first);
    }
}

static uint32_t rd32(const unsigned char *b) {
    return b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
}

int ring_append(ring *r, const RecordHead *h, const char *payload, size_t n, int flags) {
    size_t total = RING_HEADER_SIZE + n;
    unsigned char hdr[RING_HEADER_SIZE];
    /* everything but end_ns is encoded before taking the lock */
    le32(hdr, (uint32_t)total);
    hdr[4] = h->kind;
    hdr[5] = h->outcome;
    le16(hdr + 6, h->err_code);
    le64(hdr + 8, h->conn_id);
    le64(hdr + 16, (uint64_t)h->start_ns);
    le64(hdr + 32, h->affected_rows);
    le64(hdr + 40, h->rows);
    le64(hdr + 48, h->last_insert_id);
    le64(hdr + 56, h->hash_ordered);
    le64(hdr + 64, h->hash_unordered);
    le32(hdr + 72, h->columns);
    le16(hdr + 76, h->warnings);
    le16(hdr + 78, h->status_flags);
    pthread_mutex_lock(&r->lock);
    if (r->closed) {
        pthread_mutex_unlock(&r->lock);
        return RING_CLOSED;
    }
    if (total > RING_MAX_RECORD || total > r->cap - r->used) {
        pthread_mutex_unlock(&r->lock);
        return RING_FULL;
    }
    int64_t end_ns = h->end_ns;
    int is_command = (h->kind & ~RING_LARGE_FLAG) == RING_KIND_COMMAND;  /* a marker of one too */
    if ((flags & RING_ORDERED) && is_command) {
        if (end_ns < r->last_end_ns) {
            if (r->last_end_ns - end_ns > r->max_late_ns)
                r->max_late_ns = r->last_end_ns - end_ns;
        } else {
            r->last_end_ns = end_ns;
        }
    }
    le64(hdr + 24, (uint64_t)end_ns);
    put(r, (const char *)hdr, RING_HEADER_SIZE);
    put(r, payload, n);
    r->used += total;
    r->records_used++;
    r->records_appended++;
    r->commands_appended += is_command;
    r->markers_used += (h->kind & RING_LARGE_FLAG) != 0;
    r->bytes_appended += total;
    pthread_mutex_unlock(&r->lock);
    return RING_APPENDED;
}

void ring_close(ring *r) {
    pthread_mutex_lock(&r->lock);
    r->closed = 1;
    pthread_mutex_unlock(&r->lock);
}

size_t ring_drain_size(ring *r, size_t max_bytes, size_t *nrec) {
    size_t n = 0, k = 0;
    pthread_mutex_lock(&r->lock);
    if (r->used <= max_bytes && r->markers_used == 0) {
        n = r->used;
        k = r->records_used;
    } else {
        /* walk record headers to stop on a record boundary, and before a marker */
        size_t pos = r->tail;
        unsigned char b[5];
        while (n < r->used) {
            get(r, (char *)b, pos, 5);
            uint32_t rlen = rd32(b);
            if ((b[4] & RING_LARGE_FLAG) || (n > 0 && n + rlen > max_bytes))
                break;
            n += rlen;
            k++;
            pos = (pos + rlen) % r->cap;
        }
    }
    pthread_mutex_unlock(&r->lock);
    *nrec = k;
    return n;
}

void ring_drain_copy(ring *r, char *dst, size_t n) {
    /* [tail, tail + n) is counted in `used` until released: no producer writes there */
    get(r, dst, r->tail, n);
}

void ring_drain_pieces(const ring *r, size_t n, const char **p1, size_t *n1, const char **p2, size_t *n2) {
    size_t first = r->cap - r->tail;
    *p1 = r->buf + r->tail;
    *p2 = r->buf;
    *n1 = n <= first ? n : first;
    *n2 = n - *n1;
}

uint64_t ring_count_commands(const ring *r, size_t n) {
    uint64_t ncmd = 0;
    size_t pos = r->tail, done = 0;
    unsigned char b[5];
    while (done < n) {
        get(r, (char *)b, pos, 5);
        uint32_t rlen = rd32(b);
        ncmd += b[4] == RING_KIND_COMMAND;
        done += rlen;
        pos += rlen;
        if (pos >= r->cap)
            pos -= r->cap;
    }
    return ncmd;
}

void ring_drain_release(ring *r, size_t n, size_t nrec) {
    pthread_mutex_lock(&r->lock);
    r->tail = (r->tail + n) % r->cap;
    r->used -= n;
    r->records_used -= nrec;
    r->records_drained += nrec;
    if (r->used == 0)  /* restart at offset 0 so that later records wrap (two memcpys) less often */
        r->head = r->tail = 0;
    pthread_mutex_unlock(&r->lock);
}

int ring_peek_marker(ring *r, unsigned char *out) {
    int found = 0;
    pthread_mutex_lock(&r->lock);
    if (r->markers_used && r->used) {
        get(r, (char *)out, r->tail, 5);
        if (out[4] & RING_LARGE_FLAG) {
            get(r, (char *)out, r->tail, RING_MARKER_SIZE);
            found = 1;
        }
    }
    pthread_mutex_unlock(&r->lock);
    return found;
}

void ring_release_marker(ring *r) {
    pthread_mutex_lock(&r->lock);
    r->tail = (r->tail + RING_MARKER_SIZE) % r->cap;
    r->used -= RING_MARKER_SIZE;
    r->records_used--;
    r->records_drained++;
    r->markers_used--;
    if (r->used == 0)
        r->head = r->tail = 0;
    pthread_mutex_unlock(&r->lock);
}
