/* The floor on io_uring: bench/c_relay.c's minimal single-threaded TCP relay (copies bytes, nothing
 * else) rewritten to find out whether io_uring spends less CPU per query than epoll on this kernel
 * (bench/e2e.py row "c-relay-uring"; BENCHMARKS.md "io_uring: does it pay?").
 *
 *     gcc -O2 -o c_relay_uring bench/c_relay_uring.c && ./c_relay_uring LISTEN_PORT BACKEND_PORT
 *
 * Raw system calls and <linux/io_uring.h> only (no liburing). What it uses, and why:
 *  - one io_uring_enter per loop turn submits every send/recv queued while handling the previous
 *    batch of completions and waits for the next: the batching that epoll + recv + send cannot do;
 *  - multishot recv with a ring of provided buffers (IORING_REGISTER_PBUF_RING): a socket is armed
 *    once and each arrival becomes a completion carrying a buffer, no re-arming per message; the
 *    relay then sends from that same buffer (no copy in user space), and gives the buffer back to
 *    the kernel when the send completes;
 *  - multishot accept;
 *  - fixed files (a sparse registered file table, slot = fd number) so that no request takes a
 *    reference on its socket's file, and a registered ring fd so io_uring_enter does not either;
 *  - IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN: completions are run in our io_uring_enter, in
 *    batches, not by interrupting the thread (the setup io_uring's authors recommend for this);
 *  - no SQPOLL: a polling kernel thread would burn a second core, not what "less CPU" means here.
 *
 * Flow control like c_relay: when 16 buffers wait to be written to one side, the multishot recv on
 * its source is cancelled and re-armed once that side drained (c_relay stops polling the source
 * while output is pending). When the ring of buffers runs low, what arrives is copied out and its
 * buffer given back at once (so that stalled peers cannot hold every buffer and stop the other
 * directions); when it runs dry, a recv ends with ENOBUFS and is re-armed once buffers come back.
 * Partial sends: the rest is sent from the same buffer, in order
 * (one send in flight per direction). A close or error on either side closes the pair, like c_relay:
 * both sockets are shut down, which ends their pending requests, and the pair is freed once the
 * last of its requests has completed (their completions carry the pair's address).
 */
#define _GNU_SOURCE
#include "relay_args.h"
#include <arpa/inet.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NBUF 1024   /* provided buffers (a power of two: the buffer ring's size) */
#define BUFSZ 32768 /* bytes per buffer: one recv completion fills at most one */
#define QMAX 16     /* buffers queued for one side before its source is paused */
#define BGID 0      /* the one buffer group */

/* user_data: the side's address with the operation in its low bits (sides are 8-byte aligned) */
enum { UD_ACCEPT = 0, OP_RECV = 1, OP_SEND = 2, UD_IGNORE = 3 };

/* bytes waiting to be written to a side: a provided buffer, or a copy of one (see on_recv) */
struct chunk {
    struct chunk *next;
    char *data;
    unsigned off, len;
    int bid;              /* the provided buffer's id, or -1: a malloc'd copy */
};

struct pair;
struct side {
    int fd;               /* also its slot in the fixed file table */
    struct side *peer;
    struct pair *pair;
    struct chunk *q_head, *q_tail; /* what to write to this side, in order */
    int qlen;
    int sending;          /* a send to this side is in flight (one at a time: keeps order) */
    int recv_on;          /* a multishot recv from this side is armed */
    int cancelling;       /* ... and asked to stop (too much queued for the peer) */
    int starved;          /* waiting for buffers (on the starved list) */
    struct side *starved_next;
};
struct pair {
    struct side s[2];
    int refs;             /* requests in flight: the pair is freed when dead and none are left */
    int dead;
};

/* ---- the ring ---------------------------------------------------------------------------- */

static int ring_fd, enter_fd;
static unsigned enter_flags;
static unsigned *sq_head, *sq_tail, *sq_array, sq_mask, sq_entries, sq_local_tail, to_submit;
static struct io_uring_sqe *sqes;
static unsigned *cq_head, *cq_tail, cq_mask;
static struct io_uring_cqe *cqes;

static int enter(unsigned submit, unsigned wait_nr, unsigned flags) {
    int r;
    do
        r = syscall(__NR_io_uring_enter, enter_fd, submit, wait_nr, flags | enter_flags, NULL, 0);
    while (r < 0 && errno == EINTR);
    return r;
}

static int reg(unsigned op, void *arg, unsigned nr) {
    return syscall(__NR_io_uring_register, ring_fd, op, arg, nr);
}

static void publish_sqes(void) {
    __atomic_store_n(sq_tail, sq_local_tail, __ATOMIC_RELEASE);
}

static struct io_uring_sqe *get_sqe(void) {
    if (sq_local_tail - __atomic_load_n(sq_head, __ATOMIC_ACQUIRE) == sq_entries) {
        publish_sqes();  /* full: submit what is queued now, completions are reaped later */
        if (enter(to_submit, 0, 0) < 0) {
            perror("io_uring_enter");
            exit(1);
        }
        to_submit = 0;
    }
    unsigned i = sq_local_tail++ & sq_mask;
    sq_array[i] = i;
    to_submit++;
    memset(&sqes[i], 0, sizeof sqes[i]);
    return &sqes[i];
}

static void setup_ring(void) {
    struct io_uring_params p = {
        .flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL |
                 IORING_SETUP_CQSIZE,
        .cq_entries = 4096,
    };
    ring_fd = syscall(__NR_io_uring_setup, 256, &p);
    if (ring_fd < 0) {
        perror("io_uring_setup");
        exit(1);
    }
    if (!(p.features & IORING_FEAT_SINGLE_MMAP) || !(p.features & IORING_FEAT_NODROP)) {
        fprintf(stderr, "kernel too old for this relay\n");
        exit(1);
    }
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    size_t len = sq_len > cq_len ? sq_len : cq_len;
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQ_RING);
    sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQES);
    if (m == MAP_FAILED || sqes == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    sq_head = (unsigned *)(m + p.sq_off.head);
    sq_tail = (unsigned *)(m + p.sq_off.tail);
    sq_array = (unsigned *)(m + p.sq_off.array);
    sq_mask = *(unsigned *)(m + p.sq_off.ring_mask);
    sq_entries = p.sq_entries;
    sq_local_tail = *sq_tail;
    cq_head = (unsigned *)(m + p.cq_off.head);
    cq_tail = (unsigned *)(m + p.cq_off.tail);
    cq_mask = *(unsigned *)(m + p.cq_off.ring_mask);
    cqes = (struct io_uring_cqe *)(m + p.cq_off.cqes);

    /* register the ring's own fd: io_uring_enter then skips the fd lookup each call */
    enter_fd = ring_fd;
    struct io_uring_rsrc_update ru = {.offset = -1U, .data = ring_fd};
    if (reg(IORING_REGISTER_RING_FDS, &ru, 1) == 1) {
        enter_fd = ru.offset;
        enter_flags = IORING_ENTER_REGISTERED_RING;
    }

    /* a sparse fixed file table, as large as we may have fds (slot = fd) */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    struct io_uring_rsrc_register rr = {.nr = rl.rlim_cur < 65536 ? rl.rlim_cur : 65536,
                                        .flags = IORING_RSRC_REGISTER_SPARSE};
    if (reg(IORING_REGISTER_FILES2, &rr, sizeof rr) < 0) {
        perror("IORING_REGISTER_FILES2");
        exit(1);
    }
}

static int set_slot(int slot, int fd) {
    struct io_uring_files_update u = {.offset = slot, .fds = (uintptr_t)&fd};
    return reg(IORING_REGISTER_FILES_UPDATE, &u, 1) == 1 ? 0 : -1;
}

/* ---- provided buffers -------------------------------------------------------------------- */

static char *bufs;
static struct io_uring_buf_ring *br;
static unsigned short br_tail;
static int nfree;                 /* buffers the kernel can pick */
static struct chunk pool_chunk[NBUF]; /* the queue entry of each provided buffer */
static struct side *starved_list; /* recvs ended by ENOBUFS, re-armed when buffers return */

static void give_back(int bid) {
    struct io_uring_buf *b = &br->bufs[br_tail & (NBUF - 1)];
    b->addr = (uintptr_t)(bufs + (size_t)bid * BUFSZ);
    b->len = BUFSZ;
    b->bid = bid;
    br_tail++;
    __atomic_store_n(&br->tail, br_tail, __ATOMIC_RELEASE);
    nfree++;
}

static void setup_buffers(void) {
    bufs = mmap(NULL, (size_t)NBUF * BUFSZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    br = mmap(NULL, NBUF * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
              -1, 0);
    if (bufs == MAP_FAILED || br == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    struct io_uring_buf_reg r = {.ring_addr = (uintptr_t)br, .ring_entries = NBUF, .bgid = BGID};
    if (reg(IORING_REGISTER_PBUF_RING, &r, 1) < 0) {
        perror("IORING_REGISTER_PBUF_RING");
        exit(1);
    }
    for (int i = 0; i < NBUF; i++)
        give_back(i);
}

/* ---- the relay --------------------------------------------------------------------------- */

/* wait for buffers; the starved list holds a reference, so the pair outlives its entry */
static void starve(struct side *s) {
    s->starved = 1;
    s->starved_next = starved_list;
    starved_list = s;
    s->pair->refs++;
}

static void arm_recv(struct side *s) {
    if (s->recv_on || s->starved || s->pair->dead || s->peer->qlen >= QMAX)
        return;
    if (!nfree) {
        starve(s);
        return;
    }
    struct io_uring_sqe *e = get_sqe();
    e->opcode = IORING_OP_RECV;
    e->fd = s->fd;
    e->flags = IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
    e->ioprio = IORING_RECV_MULTISHOT;
    e->buf_group = BGID;
    e->user_data = (uintptr_t)s | OP_RECV;
    s->recv_on = 1;
    s->pair->refs++;
}

static void kick_send(struct side *d) {
    struct chunk *c = d->q_head;
    if (d->sending || !c || d->pair->dead)
        return;
    struct io_uring_sqe *e = get_sqe();
    e->opcode = IORING_OP_SEND;
    e->fd = d->fd;
    e->flags = IOSQE_FIXED_FILE;
    e->addr = (uintptr_t)(c->data + c->off);
    e->len = c->len;
    e->msg_flags = MSG_NOSIGNAL | MSG_WAITALL; /* WAITALL: the kernel retries a short send itself */
    e->user_data = (uintptr_t)d | OP_SEND;
    d->sending = 1;
    d->pair->refs++;
}

static void release(struct chunk *c) {
    if (c->bid >= 0)
        give_back(c->bid);
    else
        free(c);
}

static void maybe_free(struct pair *p) {
    if (!p->dead || p->refs)
        return;
    for (int i = 0; i < 2; i++) {
        struct side *s = &p->s[i];
        for (struct chunk *c = s->q_head, *next; c; c = next) {
            next = c->next;
            release(c);
        }
        set_slot(s->fd, -1);
        close(s->fd);
    }
    free(p);
}

static void kill_pair(struct pair *p) {
    if (p->dead)
        return;
    p->dead = 1;
    /* ends the multishot recvs (they complete with 0) and any send waiting for room */
    shutdown(p->s[0].fd, SHUT_RDWR);
    shutdown(p->s[1].fd, SHUT_RDWR);
}

static void on_recv(struct side *s, int res, unsigned flags) {
    struct pair *p = s->pair;
    if (res > 0) {
        int bid = flags >> IORING_CQE_BUFFER_SHIFT;
        nfree--;
        if (p->dead) {
            give_back(bid);
        } else {
            struct side *d = s->peer;
            char *buf = bufs + (size_t)bid * BUFSZ;
            struct chunk *c;
            if (nfree >= NBUF / 4) {
                c = &pool_chunk[bid];  /* the usual case: sent from the buffer it came in */
                c->data = buf;
                c->bid = bid;
            } else {
                /* few buffers left: copy and give the buffer back, so that sides whose peer does
                 * not read cannot hold the whole ring and stop every other direction (deadlock) */
                c = malloc(sizeof *c + res);
                c->data = (char *)(c + 1);
                memcpy(c->data, buf, res);
                c->bid = -1;
                give_back(bid);
            }
            c->off = 0;
            c->len = res;
            c->next = NULL;
            if (d->q_head)
                d->q_tail->next = c;
            else
                d->q_head = c;
            d->q_tail = c;
            d->qlen++;
            kick_send(d);
            if (d->qlen >= QMAX && s->recv_on && !s->cancelling && (flags & IORING_CQE_F_MORE)) {
                /* the peer does not keep up: stop reading its source until it drained */
                struct io_uring_sqe *e = get_sqe();
                e->opcode = IORING_OP_ASYNC_CANCEL;
                e->addr = (uintptr_t)s | OP_RECV;
                e->user_data = UD_IGNORE;
                s->cancelling = 1;
            }
        }
    }
    if (flags & IORING_CQE_F_MORE)
        return;
    /* the multishot recv ended */
    s->recv_on = 0;
    s->cancelling = 0;
    p->refs--;
    if (p->dead) {
        maybe_free(p);
    } else if (res == 0 || (res < 0 && res != -ENOBUFS && res != -ECANCELED)) {
        kill_pair(p);  /* EOF or error: close the pair, like c_relay */
        maybe_free(p);
    } else if (res == -ENOBUFS) {
        starve(s);
    } else {
        arm_recv(s);  /* cancelled (re-armed here if already drained, else after a send) or ended */
    }
}

static void on_send(struct side *d, int res) {
    struct pair *p = d->pair;
    d->sending = 0;
    p->refs--;
    if (p->dead) {
        maybe_free(p);
        return;
    }
    if (res <= 0) {
        kill_pair(p);
        maybe_free(p);
        return;
    }
    struct chunk *c = d->q_head;
    c->off += res;
    c->len -= res;
    if (!c->len) {
        d->q_head = c->next;
        d->qlen--;
        release(c);
        arm_recv(d->peer);  /* if its source was paused */
    }
    kick_send(d);  /* the rest of a partial send, or the next buffer */
}

static void on_accept(int cfd, const struct sockaddr_in *ba, int nslots) {
    int one = 1;
    /* blocking connect, as in c_relay: loopback, instant. The sockets stay blocking: io_uring
     * only ever tries them without waiting and polls when they are not ready */
    int bfd = socket(AF_INET, SOCK_STREAM, 0);
    if (bfd < 0 || cfd >= nslots || bfd >= nslots || connect(bfd, (struct sockaddr *)ba, sizeof *ba) < 0 ||
        set_slot(cfd, cfd) < 0 || set_slot(bfd, bfd) < 0) {
        if (cfd < nslots)
            set_slot(cfd, -1);  /* clearing an empty slot is harmless */
        close(cfd);
        if (bfd >= 0)
            close(bfd);  /* its slot was not set: set_slot(bfd) was the last step */
        return;
    }
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(bfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct pair *p = calloc(1, sizeof *p);
    for (int i = 0; i < 2; i++) {
        p->s[i].fd = i ? bfd : cfd;
        p->s[i].peer = &p->s[!i];
        p->s[i].pair = p;
    }
    arm_recv(&p->s[0]);
    arm_recv(&p->s[1]);
}

static void arm_accept(int lfd) {
    struct io_uring_sqe *e = get_sqe();
    e->opcode = IORING_OP_ACCEPT;
    e->fd = lfd;
    e->ioprio = IORING_ACCEPT_MULTISHOT;
    e->user_data = UD_ACCEPT;
}

int main(int argc, char **argv) {
    struct sockaddr_in ba;
    int lfd = relay_listen(argc, argv, 0, &ba);
    setup_ring();
    setup_buffers();
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    int nslots = rl.rlim_cur < 65536 ? rl.rlim_cur : 65536;
    arm_accept(lfd);
    for (;;) {
        /* one system call: submit everything queued since the last turn, wait for one completion */
        publish_sqes();
        if (enter(to_submit, 1, IORING_ENTER_GETEVENTS) < 0) {
            perror("io_uring_enter");
            return 1;
        }
        to_submit = 0;
        unsigned head = *cq_head, tail = __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE);
        for (; head != tail; head++) {
            struct io_uring_cqe *c = &cqes[head & cq_mask];
            uint64_t ud = c->user_data;
            int res = c->res;
            unsigned flags = c->flags;
            /* hand the slot back before handling: the kernel may post into it meanwhile */
            __atomic_store_n(cq_head, head + 1, __ATOMIC_RELEASE);
            if (ud == UD_ACCEPT) {
                if (res >= 0)
                    on_accept(res, &ba, nslots);
                if (!(flags & IORING_CQE_F_MORE))
                    arm_accept(lfd);
            } else if (ud == UD_IGNORE) {
                continue;
            } else if ((ud & 3) == OP_RECV) {
                on_recv((struct side *)(ud & ~(uint64_t)3), res, flags);
            } else {
                on_send((struct side *)(ud & ~(uint64_t)3), res);
            }
        }
        /* buffers came back: re-arm the recvs that ran out of them (and let go of dead pairs) */
        for (struct side **pp = &starved_list; *pp;) {
            struct side *s = *pp;
            if (!s->pair->dead && !nfree) {
                pp = &s->starved_next;
                continue;
            }
            *pp = s->starved_next;
            s->starved = 0;
            s->pair->refs--;
            if (s->pair->dead)
                maybe_free(s->pair);
            else
                arm_recv(s);
        }
    }
}
