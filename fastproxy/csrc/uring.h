/* A minimal io_uring for one thread: the submission and completion rings, mapped, and one group of
 * provided buffers (the kernel picks one when a recv completes, so that a connection waiting for
 * bytes holds no buffer of its own). Raw system calls and <linux/io_uring.h>: no liburing.
 *
 * Made by the thread that uses it (IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN: completions run in
 * that thread's io_uring_enter, in batches, instead of interrupting it), which is also the only one
 * to touch it. See docs/dataplane.md, "io_uring".
 */
#ifndef FASTPROXY_URING_H
#define FASTPROXY_URING_H

#include <linux/io_uring.h>
#include <stddef.h>
#include <stdint.h>

typedef struct uring {
    int fd;
    int enter_fd;                  /* the registered ring's index, or fd */
    unsigned enter_flags;
    unsigned *sq_head, *sq_tail, *sq_array, sq_mask, sq_entries, sq_local_tail, to_submit;
    struct io_uring_sqe *sqes;
    unsigned *cq_head, *cq_tail, cq_mask;
    struct io_uring_cqe *cqes;
    void *ring_map;
    size_t ring_len;
    size_t sqes_len;
    /* the provided buffers: nbuf of bufsz bytes, group 0 */
    uint8_t *bufs;
    struct io_uring_buf_ring *br;
    unsigned nbuf, bufsz;
    unsigned short br_tail;
} uring;

/* 0 when this kernel (and the process's seccomp profile, and kernel.io_uring_disabled) lets a ring
 * with what uring_init needs be made; else -errno. Any thread. */
int uring_probe(void);
/* In the thread that will use the ring. 0, or -errno (nothing left allocated). */
int uring_init(uring *u, unsigned entries, unsigned cq_entries, unsigned nbuf, unsigned bufsz);
void uring_free(uring *u);
/* A zeroed submission entry, queued for the next uring_enter (submits early when the ring is full);
 * NULL only if the kernel refused that early submission. */
struct io_uring_sqe *uring_sqe(uring *u);
/* Submit what is queued and wait for at least `wait_nr` completions. <0: -errno. */
int uring_enter(uring *u, unsigned wait_nr);
/* The bytes of provided buffer `bid`, and giving it back to the kernel once they are used. */
static inline uint8_t *uring_buf(uring *u, unsigned bid) { return u->bufs + (size_t)bid * u->bufsz; }
void uring_give_back(uring *u, unsigned bid);

#endif
