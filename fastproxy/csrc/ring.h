/* The capture ring buffer: a fixed block of C memory holding whole encoded records
 * (docs/traffic-format.md, version 2), appended to by several producers (the data plane's worker
 * threads, and Python under the GIL) and drained by the capture writer thread.
 *
 * One mutex serializes appends and the bookkeeping of a drain. An append holds it for a header
 * encode and a memcpy of the payload (~100 ns for a typical statement); the drain copies its bytes
 * out *without* it (producers only ever write after the head, never into what is being drained).
 * Nothing here blocks for long or grows: a record that does not fit is refused, and the caller stops
 * the capture (dropping records silently would make a replay lie).
 *
 * Large records (the side path): a record too large for the ring (a 70 MiB INSERT of a BLOB) is
 * appended as a *marker*: its header with RING_LARGE_FLAG set in kind, then a u64 id under which
 * the caller (fastproxy/_ringbuf.pyx, under the GIL) keeps the payload. ring_drain_size stops before
 * a marker; the drainer takes it with ring_peek_marker / ring_release_marker and writes the record
 * from the header and the payload, in sequence.
 *
 * Completion order: the command records of the data plane's workers (and of the Python relay) are
 * appended with RING_ORDERED and keep their true end_ns (the kernel's arrival time of the answer
 * when the capture is on: dp.c). Workers append in the order they get to an answer, not the order
 * the answers arrived, so a record may come after one that ended later; the ring keeps the largest
 * such lateness (max_late_ns), the capture writes it to meta as reorder_window_ns, and the reader
 * restores completion order within that window (fastproxy/capture/reorder.py) — the order replay's
 * causal scheduling relies on.
 */
#ifndef FASTPROXY_RING_H
#define FASTPROXY_RING_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define RING_HEADER_SIZE 80
#define RING_KIND_COMMAND 1
#define RING_KIND_CONN_OPEN 2
#define RING_KIND_CONN_STATE 3
#define RING_KIND_CONN_CLOSE 4
#define RING_KIND_LOCAL_INFILE 5  /* a LOCAL INFILE file a client sent (capture.local-infile) */
#define RING_MAX_RECORD 0xFFFFFFFFull  /* record_len is a u32 */
#define RING_LARGE_FLAG 0x80          /* in a marker's kind: the payload waits outside the ring */
#define RING_MARKER_SIZE (RING_HEADER_SIZE + 8)  /* a marker: the header, then the payload's u64 id */

/* The fields of one record header (docs/traffic-format.md, version 2). */
typedef struct RecordHead {
    uint8_t kind;
    uint8_t outcome;
    uint16_t err_code;
    uint64_t conn_id;
    int64_t start_ns;
    int64_t end_ns;
    uint64_t affected_rows;
    uint64_t rows;
    uint64_t last_insert_id;
    uint64_t hash_ordered;
    uint64_t hash_unordered;
    uint32_t columns;
    uint16_t warnings;
    uint16_t status_flags;
} RecordHead;

enum { RING_ORDERED = 1 };
enum { RING_APPENDED = 1, RING_FULL = 0, RING_CLOSED = -1 };
/* Why an append was refused (RingBuffer.refusal; the data plane reports its own the same way). */
enum {
    RING_REFUSED_NONE = 0,
    RING_REFUSED_FULL = 1,              /* no room in the ring: the writer has not caught up */
    RING_REFUSED_LARGE_LIMIT = 2,       /* the side path already holds large_max bytes of large records */
    RING_REFUSED_TOO_LARGE = 3,         /* larger than a record can be (record_len is a u32) */
    RING_REFUSED_BIGGER_THAN_RING = 4,  /* larger than the whole ring, and no side path */
    RING_REFUSED_CLOSED = 5,            /* the ring was closed (the capture stopped) */
};

typedef struct ring {
    pthread_mutex_t lock;
    char *buf;
    size_t cap;
    size_t head;                 /* next write offset */
    size_t tail;                 /* next read offset (start of the oldest record) */
    size_t used;                 /* bytes of whole records between tail and head */
    size_t records_used;
    uint64_t records_appended;
    uint64_t commands_appended;  /* KIND_COMMAND records among them */
    uint64_t bytes_appended;
    uint64_t records_drained;
    size_t markers_used;         /* markers (RING_LARGE_FLAG) between tail and head */
    int64_t last_end_ns;         /* the largest end_ns of a RING_ORDERED command so far */
    int64_t max_late_ns;         /* the most a RING_ORDERED command's end_ns fell behind last_end_ns */
    int closed;                  /* appends refused (RING_CLOSED) once the capture stopped */
} ring;

int ring_init(ring *r, size_t capacity);
void ring_destroy(ring *r);
/* RING_APPENDED, RING_FULL (nothing written) or RING_CLOSED. */
int ring_append(ring *r, const RecordHead *h, const char *payload, size_t n, int flags);
void ring_close(ring *r);
/* Drain step 1: under the lock, how many bytes (and records) of whole records to take, up to
 * max_bytes (a single larger record comes out alone, so a drain always progresses). */
size_t ring_drain_size(ring *r, size_t max_bytes, size_t *nrec);
/* Step 2, without the lock: copy them out. Step 3: release them. Only one thread drains. */
void ring_drain_copy(ring *r, char *dst, size_t n);
void ring_drain_release(ring *r, size_t n, size_t nrec);
/* Step 2 for a drainer that reads the records where they are (the capture writer compresses them
 * straight out of the ring): the at most two contiguous pieces of the n bytes at the tail (*n2 is 0
 * unless they wrap), valid until ring_drain_release. ring_count_commands: the COMMAND records among
 * the whole records of those n bytes. */
void ring_drain_pieces(const ring *r, size_t n, const char **p1, size_t *n1, const char **p2, size_t *n2);
uint64_t ring_count_commands(const ring *r, size_t n);
/* 1 and the marker's RING_MARKER_SIZE bytes in out if the oldest record is a marker, else 0.
 * ring_release_marker removes it (once its record is written). Only the drainer calls them. */
int ring_peek_marker(ring *r, unsigned char *out);
void ring_release_marker(ring *r);

#endif
