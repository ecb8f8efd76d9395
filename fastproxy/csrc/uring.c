/* See uring.h. */
#define _GNU_SOURCE
#include "uring.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define URING_FLAGS (IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL)

static int sys_setup(unsigned entries, struct io_uring_params *p) {
    int fd = (int)syscall(__NR_io_uring_setup, entries, p);
    return fd < 0 ? -errno : fd;
}

static int sys_register(int fd, unsigned op, void *arg, unsigned nr) {
    int r = (int)syscall(__NR_io_uring_register, fd, op, arg, nr);
    return r < 0 ? -errno : r;
}

int uring_probe(void) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = URING_FLAGS;
    int fd = sys_setup(4, &p);
    if (fd < 0)
        return fd;
    int ok = (p.features & IORING_FEAT_SINGLE_MMAP) && (p.features & IORING_FEAT_NODROP)
             && (p.features & IORING_FEAT_FAST_POLL);
    close(fd);
    return ok ? 0 : -ENOSYS;
}

void uring_free(uring *u) {
    if (u->br)
        munmap(u->br, u->nbuf * sizeof(struct io_uring_buf));
    if (u->bufs)
        munmap(u->bufs, (size_t)u->nbuf * u->bufsz);
    if (u->sqes)
        munmap(u->sqes, u->sqes_len);
    if (u->ring_map)
        munmap(u->ring_map, u->ring_len);
    if (u->fd >= 0)
        close(u->fd);
    memset(u, 0, sizeof *u);
    u->fd = -1;
}

void uring_give_back(uring *u, unsigned bid) {
    struct io_uring_buf *b = &u->br->bufs[u->br_tail & (u->nbuf - 1)];
    b->addr = (uintptr_t)uring_buf(u, bid);
    b->len = u->bufsz;
    b->bid = (unsigned short)bid;
    u->br_tail++;
    __atomic_store_n(&u->br->tail, u->br_tail, __ATOMIC_RELEASE);
}

int uring_init(uring *u, unsigned entries, unsigned cq_entries, unsigned nbuf, unsigned bufsz) {
    struct io_uring_params p;
    memset(u, 0, sizeof *u);
    memset(&p, 0, sizeof p);
    p.flags = URING_FLAGS | IORING_SETUP_CQSIZE;
    p.cq_entries = cq_entries;
    u->fd = sys_setup(entries, &p);
    if (u->fd < 0) {
        int e = u->fd;
        u->fd = -1;
        return e;
    }
    int err = -ENOMEM;
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    u->ring_len = sq_len > cq_len ? sq_len : cq_len;
    u->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
    char *m = mmap(NULL, u->ring_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd, IORING_OFF_SQ_RING);
    if (m == MAP_FAILED)
        goto fail;
    u->ring_map = m;
    void *s = mmap(NULL, u->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd, IORING_OFF_SQES);
    if (s == MAP_FAILED)
        goto fail;
    u->sqes = s;
    u->sq_head = (unsigned *)(m + p.sq_off.head);
    u->sq_tail = (unsigned *)(m + p.sq_off.tail);
    u->sq_array = (unsigned *)(m + p.sq_off.array);
    u->sq_mask = *(unsigned *)(m + p.sq_off.ring_mask);
    u->sq_entries = p.sq_entries;
    u->sq_local_tail = *u->sq_tail;
    u->cq_head = (unsigned *)(m + p.cq_off.head);
    u->cq_tail = (unsigned *)(m + p.cq_off.tail);
    u->cq_mask = *(unsigned *)(m + p.cq_off.ring_mask);
    u->cqes = (struct io_uring_cqe *)(m + p.cq_off.cqes);

    /* the ring's own fd registered: io_uring_enter then skips looking it up (optional) */
    u->enter_fd = u->fd;
    struct io_uring_rsrc_update ru = {.offset = -1U, .data = (uint64_t)u->fd};
    if (sys_register(u->fd, IORING_REGISTER_RING_FDS, &ru, 1) == 1) {
        u->enter_fd = (int)ru.offset;
        u->enter_flags = IORING_ENTER_REGISTERED_RING;
    }

    u->nbuf = nbuf;  /* a power of two */
    u->bufsz = bufsz;
    u->bufs = mmap(NULL, (size_t)nbuf * bufsz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    u->br = mmap(NULL, nbuf * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (u->bufs == MAP_FAILED || u->br == MAP_FAILED) {
        if (u->bufs == MAP_FAILED)
            u->bufs = NULL;
        if (u->br == MAP_FAILED)
            u->br = NULL;
        goto fail;
    }
    struct io_uring_buf_reg r = {.ring_addr = (uintptr_t)u->br, .ring_entries = nbuf, .bgid = 0};
    err = sys_register(u->fd, IORING_REGISTER_PBUF_RING, &r, 1);
    if (err < 0)
        goto fail;
    for (unsigned i = 0; i < nbuf; i++)
        uring_give_back(u, i);
    return 0;
fail:
    uring_free(u);
    return err;
}

static int enter(uring *u, unsigned submit, unsigned wait_nr, unsigned flags) {
    int r = (int)syscall(__NR_io_uring_enter, u->enter_fd, submit, wait_nr, flags | u->enter_flags, NULL, 0);
    return r < 0 ? -errno : r;
}

struct io_uring_sqe *uring_sqe(uring *u) {
    if (u->sq_local_tail - __atomic_load_n(u->sq_head, __ATOMIC_ACQUIRE) == u->sq_entries) {
        /* full: submit what is queued now; its completions are reaped at the next turn */
        __atomic_store_n(u->sq_tail, u->sq_local_tail, __ATOMIC_RELEASE);
        int r;
        do
            r = enter(u, u->to_submit, 0, 0);
        while (r == -EINTR);
        if (r < 0)
            return NULL;
        u->to_submit = 0;
    }
    unsigned i = u->sq_local_tail++ & u->sq_mask;
    u->sq_array[i] = i;
    u->to_submit++;
    memset(&u->sqes[i], 0, sizeof u->sqes[i]);
    return &u->sqes[i];
}

int uring_enter(uring *u, unsigned wait_nr) {
    __atomic_store_n(u->sq_tail, u->sq_local_tail, __ATOMIC_RELEASE);
    /* GETEVENTS even when not waiting: with DEFER_TASKRUN, completions are only run in it */
    int r = enter(u, u->to_submit, wait_nr, IORING_ENTER_GETEVENTS);
    if (r >= 0)
        u->to_submit = 0;
    return r < 0 ? r : 0;
}
