/* The data plane's workers (see dp.h and docs/dataplane.md).
 *
 * One thread per worker, each with its own epoll set; a connection stays on one worker for life and
 * nothing on the path of one command is shared with another worker, except the capture ring's
 * mutex while a capture runs. Level-triggered epoll, one read per readiness: a request/response
 * costs epoll_wait + recv + send on each side, like a plain TCP relay; the interest set only
 * changes under backpressure. */
#define _GNU_SOURCE
#include "dp.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "mysql_constants.h"
#include "uring.h"

#define DP_MAX_EVENTS 128

enum { FR_NONE = 0, FR_CMD, FR_SKIP, FR_INFILE };

#define STAT_ADD(field, n) __atomic_store_n(&(field), (field) + (n), __ATOMIC_RELAXED)

static int64_t wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- queues (inbox of a worker, the event queue to Python) ---------------------------------- */

static int queue_init(dp_queue *q, size_t item_size) {
    memset(q, 0, sizeof *q);
    q->item_size = item_size;
    q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (q->efd < 0)
        return -1;
    pthread_mutex_init(&q->lock, NULL);
    return 0;
}

static void queue_destroy(dp_queue *q) {
    if (q->efd >= 0) {
        close(q->efd);
        pthread_mutex_destroy(&q->lock);
    }
    free(q->items);
    q->items = NULL;
    q->efd = -1;
}

static int queue_push(dp_queue *q, const void *item) {
    pthread_mutex_lock(&q->lock);
    if (q->len == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 16;
        void *items = realloc(q->items, cap * q->item_size);
        if (!items) {
            pthread_mutex_unlock(&q->lock);
            return -1;
        }
        q->items = items;
        q->cap = cap;
    }
    memcpy((char *)q->items + q->len * q->item_size, item, q->item_size);
    int was_empty = q->len++ == 0;
    pthread_mutex_unlock(&q->lock);
    if (was_empty) {
        uint64_t one = 1;
        ssize_t rc = write(q->efd, &one, sizeof one);
        (void)rc;  /* EAGAIN: the counter is already non-zero, the reader wakes anyway */
    }
    return 0;
}

/* Swap the queue's items out (the caller frees them). The eventfd is read first: a push after
 * that signals again, so no item is ever left without a wake-up. */
static size_t queue_take(dp_queue *q, void **items) {
    uint64_t v;
    ssize_t rc = read(q->efd, &v, sizeof v);
    (void)rc;
    pthread_mutex_lock(&q->lock);
    size_t n = q->len;
    *items = q->items;
    q->items = NULL;
    q->len = q->cap = 0;
    pthread_mutex_unlock(&q->lock);
    return n;
}

size_t dp_take_events(dp *d, dp_event **out) { return queue_take(&d->events, (void **)out); }

static void post_event(dp *d, int type, dp_conn *c, uint64_t arg) {
    dp_event ev = {type, c, arg};
    while (queue_push(&d->events, &ev) < 0)
        usleep(1000);  /* out of memory: an event must not be lost (a close frees a connection) */
}

int dp_post(dp_worker *w, int type, dp_conn *c, void *ptr, uint64_t arg) {
    dp_msg m = {type, c, ptr, arg};
    return queue_push(&w->inbox, &m);
}

/* ---- lifecycle --------------------------------------------------------------------------------- */

int dp_init(dp *d, int nworkers, const int64_t *latency_bounds, int io) {
    memset(d, 0, sizeof *d);
    d->events.efd = -1;
    memcpy(d->latency_bounds, latency_bounds, sizeof d->latency_bounds);
    if (io != DP_IO_EPOLL) {
        /* asked once here: a worker whose own ring cannot be made after all runs on epoll */
        int e = uring_probe();
        if (e < 0 && io == DP_IO_URING)
            return e;
        io = e < 0 ? DP_IO_EPOLL : DP_IO_URING;
    }
    d->io = io;
    if (queue_init(&d->events, sizeof(dp_event)) < 0)
        return -1;
    if (posix_memalign((void **)&d->workers, 64, nworkers * sizeof(dp_worker)))
        return -1;
    memset(d->workers, 0, nworkers * sizeof(dp_worker));
    for (int i = 0; i < nworkers; i++) {
        dp_worker *w = &d->workers[i];
        w->dp = d;
        w->index = i;
        w->epfd = -1;
        w->inbox.efd = -1;
        d->nworkers = i + 1;
        w->epfd = epoll_create1(EPOLL_CLOEXEC);
        w->rbuf = malloc(DP_READ_SIZE);
        w->tbuf = malloc(DP_READ_SIZE);
        if (w->epfd < 0 || !w->rbuf || !w->tbuf || queue_init(&w->inbox, sizeof(dp_msg)) < 0)
            return -1;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &w->inbox_marker};
        if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->inbox.efd, &ev) < 0)
            return -1;
    }
    return 0;
}

void dp_destroy(dp *d) {
    for (int i = 0; i < d->nworkers; i++) {
        dp_worker *w = &d->workers[i];
        if (w->epfd >= 0)
            close(w->epfd);
        if (w->ring) {
            uring_free(w->ring);
            free(w->ring);
            w->ring = NULL;
        }
        queue_destroy(&w->inbox);
        free(w->rbuf);
        free(w->tbuf);
        free(w->ready);
        free(w->ready_spare);
    }
    free(d->workers);
    d->workers = NULL;
    d->nworkers = 0;
    queue_destroy(&d->events);
}

dp_conn *dp_conn_new(uint64_t conn_id, int client_fd, int backend_fd, uint64_t max_packet_size) {
    dp_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->conn_id = conn_id;
    c->cli.conn = c->be.conn = c;
    c->cli.is_client = 1;
    c->cli.fd = client_fd;
    c->be.fd = backend_fd;
    c->max_packet_size = max_packet_size;
    c->s.status_flags = SERVER_STATUS_AUTOCOMMIT;
    trk_init(&c->trk, 0, NULL, c);  /* the callback is set by the worker (dp.c) */
    pthread_mutex_init(&c->lock, NULL);
    for (int i = 0; i < 2; i++) {
        int fd = i ? backend_fd : client_fd;
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0 && !(fl & O_NONBLOCK))
            fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    }
    return c;
}

static void infiles_clear(dp_conn *c) {
    for (uint32_t i = 0; i < c->ninfiles; i++)
        free(c->infiles[i].content);
    free(c->infiles);
    c->infiles = NULL;
    c->ninfiles = 0;
    free(c->infile_buf);
    c->infile_buf = NULL;
    c->infile_len = c->infile_cap = 0;
    c->infile_capture = 0;
}

static void own_clear(dp_conn *c) {
    if (c->own_trk) {
        trk_free(c->own_trk);
        free(c->own_trk);
        c->own_trk = NULL;
    }
    free(c->own_ans);
    c->own_ans = NULL;
    c->own_len = c->own_cap = 0;
    c->own_active = 0;
}

void dp_conn_free(dp_conn *c) {
    if (!c)
        return;
    for (uint32_t i = 0; i < c->q_cap; i++)
        free(c->q[i].buf);
    free(c->q);
    free(c->held);
    free(c->be_rest);
    own_clear(c);
    infiles_clear(c);
    for (int i = 0; i < 2; i++) {
        dp_side *s = i ? &c->be : &c->cli;
        free(s->out.data);
        free(s->pend.data);
        free(s->stash.data);
        free(s->rmsg);
    }
    trk_free(&c->trk);
    dp_session_free(&c->s);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static int buf_append(dp_buf *b, const uint8_t *p, size_t n) {
    if (b->off + b->len + n > b->cap) {
        if (b->off) {
            memmove(b->data, b->data + b->off, b->len);
            b->off = 0;
        }
        if (b->len + n > b->cap) {
            size_t cap = b->len + n;
            uint8_t *d = realloc(b->data, cap);
            if (!d)
                return -1;
            b->data = d;
            b->cap = (uint32_t)cap;
        }
    }
    memcpy(b->data + b->off + b->len, p, n);
    b->len += (uint32_t)n;
    return 0;
}

static void buf_clear(dp_buf *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* Bytes still to be written to a side: on io_uring, those in flight and those queued behind them. */
static uint32_t side_pending(const dp_side *s) { return s->out.len + s->pend.len; }

void dp_conn_set_tls(dp_conn *c, void *client_ssl, void *backend_ssl) {
    c->cli.ssl = client_ssl;
    c->be.ssl = backend_ssl;
    /* what OpenSSL already holds (records read with the end of the handshake) is read at once */
    c->cli.tls_more = client_ssl != NULL;
    c->be.tls_more = backend_ssl != NULL;
}

int dp_tls_check(void *ssl, int server_side, const char *version) {
    SSL *t = ssl;
    if (!t || !SSL_get_rbio(t) || !SSL_get_wbio(t) || BIO_method_type(SSL_get_rbio(t)) != BIO_TYPE_MEM
        || BIO_method_type(SSL_get_wbio(t)) != BIO_TYPE_MEM || !SSL_is_init_finished(t)
        || SSL_is_server(t) != server_side)
        return 0;
    return strcmp(SSL_get_version(t), version) == 0;
}

/* Bytes to send to a TLS side go through OpenSSL into its write BIO; nothing is on the socket yet. */
static int tls_encrypt(dp_side *s, const uint8_t *p, size_t n) {
    while (n) {
        int chunk = n > (1u << 30) ? (1 << 30) : (int)n;
        ERR_clear_error();
        int k = SSL_write(s->ssl, p, chunk);
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

int dp_conn_set_initial(dp_conn *c, const uint8_t *client_out, size_t n_out) {
    if (!n_out)
        return 0;
    if (c->cli.ssl)  /* encrypted now (Python's thread: the worker has not got the connection yet) */
        return tls_encrypt(&c->cli, client_out, n_out);
    return buf_append(&c->cli.out, client_out, n_out);
}

/* ---- I/O of one side -------------------------------------------------------------------------- */

static ssize_t io_read_plain(dp_side *s, void *buf, size_t n) { return recv(s->fd, buf, n, 0); }

/* While a capture runs, a backend's bytes are read with the kernel's arrival time: a command's end
 * is stamped when its answer arrived, not when this worker got to it (with more busy threads than
 * cores a worker may read an answer late, after another worker relayed a command that already saw
 * that commit; causal replay must still order that command after this one). */
static int stamped_reads(dp_side *s) {
    if (s->is_client || !s->conn->w->capture)
        return 0;
    if (!s->stamped) {
        int one = 1;
        s->stamped = 1;
        if (setsockopt(s->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one) < 0)
            s->stamped = 2;  /* not offered: wall-clock stamps, as without a capture */
    }
    return s->stamped == 1;
}

/* A recvmsg's header with room for the kernel's arrival time. */
typedef struct dp_rmsg {
    struct msghdr msg;
    struct iovec iov;
    union {
        char buf[CMSG_SPACE(sizeof(struct timespec))];
        struct cmsghdr align;
    } ctl;
} dp_rmsg;

static void rmsg_prepare(dp_rmsg *m, void *buf, size_t n) {
    memset(m, 0, sizeof *m);
    m->iov.iov_base = buf;
    m->iov.iov_len = n;
    m->msg.msg_iov = &m->iov;
    m->msg.msg_iovlen = 1;
    m->msg.msg_control = m->ctl.buf;
    m->msg.msg_controllen = sizeof m->ctl.buf;
}

/* The kernel's arrival time in a recvmsg's control messages (`ctl`, `len` bytes), or 0. */
static int64_t cmsg_arrival(void *ctl, size_t len) {
    struct msghdr msg = {0};
    msg.msg_control = ctl;
    msg.msg_controllen = len;
    int64_t at = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS && cm->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(cm), sizeof ts);
            at = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
        }
    }
    return at;
}

static int64_t rmsg_arrival(dp_rmsg *m) { return cmsg_arrival(m->msg.msg_control, m->msg.msg_controllen); }

static ssize_t io_read(dp_side *s, void *buf, size_t n) {
    s->arrived_ns = 0;  /* unknown unless this read says (a capture may have stopped since the last) */
    if (!stamped_reads(s))
        return io_read_plain(s, buf, n);
    dp_rmsg m;
    rmsg_prepare(&m, buf, n);
    ssize_t k = recvmsg(s->fd, &m.msg, 0);
    if (k > 0)
        s->arrived_ns = rmsg_arrival(&m);
    return k;
}

static ssize_t io_write(dp_side *s, const void *buf, size_t n) { return send(s->fd, buf, n, MSG_NOSIGNAL); }

static void ready_enqueue(dp_worker *w, dp_side *s) {
    if (s->ready_queued)
        return;
    if (w->nready == w->ready_cap) {
        /* only this list grows: the other may be the one ready_pass is reading */
        uint32_t cap = w->ready_cap ? w->ready_cap * 2 : 16;
        dp_side **a = realloc(w->ready, cap * sizeof *a);
        if (!a)
            return;  /* read at its next readiness instead */
        w->ready = a;
        w->ready_cap = cap;
    }
    w->ready[w->nready++] = s;
    s->ready_queued = 1;
}

/* ---- connection helpers ------------------------------------------------------------------------- */

static void u_set_interest(dp_conn *c, dp_side *s, uint32_t want);
static void u_kick_send(dp_worker *w, dp_side *s);
static void zombie_check(dp_conn *c);

static void set_interest(dp_conn *c, dp_side *s, uint32_t want) {
    if (c->w->ring) {
        u_set_interest(c, s, want);
        return;
    }
    if (s->fd < 0 || want == s->registered)
        return;
    if (s->ssl && s->tls_more && (want & EPOLLIN) && !(s->registered & EPOLLIN))
        ready_enqueue(c->w, s);  /* read again: what OpenSSL holds raises no readiness */
    struct epoll_event ev = {.events = want, .data.ptr = s};
    int op = s->registered == 0 ? EPOLL_CTL_ADD : want == 0 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    /* a side wanting nothing leaves the set: EPOLLHUP/EPOLLERR would be reported regardless */
    if (epoll_ctl(c->w->epfd, op, s->fd, &ev) == 0 || op == EPOLL_CTL_DEL)
        s->registered = want;
}

/* Backpressure: a side's source is not read while it has this much to write. With epoll, anything
 * (written at once when it can be); on io_uring, where every write waits for its completion, a
 * read's worth. */
static int side_full(const dp_conn *c, const dp_side *s) {
    return c->w->ring ? side_pending(s) >= DP_READ_SIZE : s->out.len != 0;
}

static void update_interest(dp_conn *c) {
    uint32_t cli = 0, be = 0;
    if (c->own_active && !c->dead) {  /* the proxy's own query: its answer is not the client's */
        if (!c->be_lost)
            be = EPOLLIN | (c->be.out.len ? EPOLLOUT : 0);
    } else if (!c->parked && !c->dead) {
        if (!c->closing) {
            if (!side_full(c, &c->be) && c->q_len < DP_MAX_PIPELINE && !c->cli_lost)
                cli |= EPOLLIN;
            if (!side_full(c, &c->cli) && !c->be_lost)
                be |= EPOLLIN;
            if (c->be.out.len && !c->be_lost)
                be |= EPOLLOUT;
        }
        if (c->cli.out.len && !c->cli_lost)
            cli |= EPOLLOUT;
    }
    set_interest(c, &c->cli, cli);
    set_interest(c, &c->be, be);
}

static void side_close_now(dp_side *s) {
    if (s->recv_armed || s->send_armed)
        shutdown(s->fd, SHUT_RDWR);  /* ends what io_uring has in flight on it (then reported closed) */
    close(s->fd);
    s->fd = -1;
    s->close_deferred = 0;
    if (!s->send_armed)  /* else the kernel's until the send completes (u_on_send frees it) */
        buf_clear(&s->out);
    buf_clear(&s->pend);
    buf_clear(&s->stash);
    s->stash_eof = 0;
}

static void side_close(dp_conn *c, dp_side *s) {
    if (s->fd < 0 || s->close_deferred)
        return;
    set_interest(c, s, 0);
    int gone = s->is_client ? c->cli_lost : c->be_lost;
    if (s->ssl) {
        if (!gone) {  /* close_notify, best effort */
            uint8_t buf[512];
            ERR_clear_error();
            SSL_shutdown(s->ssl);
            int k = BIO_read(SSL_get_wbio(s->ssl), buf, sizeof buf);
            if (k > 0 && c->w->ring) {
                if (buf_append(s->send_armed ? &s->pend : &s->out, buf, (size_t)k) == 0)
                    u_kick_send(c->w, s);
            } else if (k > 0 && io_write(s, buf, (size_t)k) < 0) {
            }
        }
        ERR_clear_error();
        s->ssl = NULL;  /* Python's: it frees it once told the connection closed */
    }
    if (c->w->ring && side_pending(s) && !gone && c->close_reason != DP_CLOSE_FORCED) {
        /* io_uring: what was forwarded before the close is still queued or in flight (a COM_QUIT
         * after a COM_STMT_CLOSE; epoll wrote it at once): closed by u_on_send once written */
        s->close_deferred = 1;
        u_kick_send(c->w, s);
        if (s->recv_armed)
            shutdown(s->fd, SHUT_RD);  /* ends the recv: nothing more is read from it */
        return;
    }
    side_close_now(s);
}

static void lost(dp_side *s) {
    /* what this loss aborts ends now, not at the last bytes' time (an older arrival or batch) */
    s->conn->w->now = wall_ns();
    if (s->is_client)
        s->conn->cli_lost = 1;
    else
        s->conn->be_lost = 1;
}

static void send_raw(dp_conn *c, dp_side *s, const uint8_t *p, size_t n);

/* What OpenSSL wrote for a TLS side (records, alerts, key updates): onto its socket. */
static void tls_flush(dp_conn *c, dp_side *s) {
    BIO *wb = SSL_get_wbio(s->ssl);
    uint8_t *buf = c->w->tbuf;
    while (BIO_ctrl_pending(wb) > 0 && !(s->is_client ? c->cli_lost : c->be_lost)) {
        int k = BIO_read(wb, buf, DP_READ_SIZE);
        if (k <= 0)
            break;
        send_raw(c, s, buf, (size_t)k);
    }
}

/* Forward bytes to a side (encrypted first on a TLS side): written at once when nothing is queued,
 * the rest kept in its output buffer (whose reader side is then no longer read: see update_interest). */
static void send_to(dp_conn *c, dp_side *s, const uint8_t *p, size_t n) {
    if (s->fd < 0 || s->close_deferred || (s->is_client ? c->cli_lost : c->be_lost) || !n)
        return;
    if (s->ssl) {
        if (tls_encrypt(s, p, n) < 0) {
            lost(s);
            return;
        }
        tls_flush(c, s);
        return;
    }
    send_raw(c, s, p, n);
}

static void send_raw(dp_conn *c, dp_side *s, const uint8_t *p, size_t n) {
    if (c->w->ring) {  /* queued; written by the next io_uring_enter */
        if (buf_append(s->send_armed ? &s->pend : &s->out, p, n) < 0) {
            c->close_after = DP_CLOSE_NO_MEMORY;
            lost(s);
            return;
        }
        u_kick_send(c->w, s);
        return;
    }
    if (s->out.len == 0) {
        ssize_t k = io_write(s, p, n);
        if (k < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                lost(s);
                return;
            }
            k = 0;
        }
        if ((size_t)k == n)
            return;
        p += k;
        n -= k;
    }
    if (buf_append(&s->out, p, n) < 0) {
        c->close_after = DP_CLOSE_NO_MEMORY;
        lost(s);
    }
}

static void flush_side(dp_conn *c, dp_side *s) {
    if (c->w->ring) {
        u_kick_send(c->w, s);
        return;
    }
    while (s->out.len) {
        ssize_t k = io_write(s, s->out.data + s->out.off, s->out.len);
        if (k < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return;
            lost(s);
            return;
        }
        s->out.off += (uint32_t)k;
        s->out.len -= (uint32_t)k;
    }
    /* idle connections hold no buffer */
    free(s->out.data);
    s->out.data = NULL;
    s->out.off = s->out.cap = 0;
    (void)c;
}

/* Every command answered, no part of a client packet forwarded, no LOCAL INFILE file going. */
static int command_boundary(const dp_conn *c) {
    return trk_idle(&c->trk) && c->fr_hdr_have == 0 && c->fr_remaining == 0 && !c->fr_prev_max
           && c->fr_mode == FR_NONE && !c->infile && !c->reading_cmd;
}

/* ... and not inside a transaction. */
static int at_boundary(const dp_conn *c) {
    return command_boundary(c) && !(c->s.status_flags & SERVER_STATUS_IN_TRANS);
}

static int close_because(dp_conn *c, int reason, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int close_because(dp_conn *c, int reason, const char *fmt, ...) {
    if (!c->close_after) {
        c->close_after = (uint8_t)reason;
        if (fmt) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(c->close_message, sizeof c->close_message, fmt, ap);
            va_end(ap);
        }
    }
    return -1;
}

/* ---- capture ------------------------------------------------------------------------------------ */

/* The first refused record stops the capture: nothing after it is appended (by any worker). */
static void capture_refused(dp_conn *c, dp_capture *cap, int refusal, const RecordHead *h, const uint8_t *p,
                            size_t n) {
    if (refusal == RING_REFUSED_CLOSED || __atomic_exchange_n(&cap->full_reported, 1, __ATOMIC_ACQ_REL))
        return;
    cap->refusal = refusal;
    cap->refused_kind = h->kind;
    cap->refused_cmd = h->kind == RING_KIND_COMMAND && n ? p[0] : 0;
    cap->refused_conn_id = h->conn_id;
    cap->refused_size = n;
    cap->refused_at_ns = h->start_ns;
    post_event(c->w->dp, DP_EV_CAPTURE_REFUSED, NULL, (uint64_t)refusal);
}

static void capture_append(dp_conn *c, dp_capture *cap, const RecordHead *h, const uint8_t *p, size_t n) {
    if (__atomic_load_n(&cap->full_reported, __ATOMIC_ACQUIRE))
        return;
    if (n > cap->large_min && c->w->dp->append_large) {  /* the side path (rare: takes the GIL) */
        int refusal = c->w->dp->append_large(cap->large_ctx, h, p, n);
        if (refusal != RING_REFUSED_NONE)
            capture_refused(c, cap, refusal, h, p, n);
        return;
    }
    int rc = ring_append(cap->ring, h, (const char *)p, n, RING_ORDERED);
    if (rc == RING_APPENDED)
        return;
    capture_refused(c, cap, rc == RING_CLOSED ? RING_REFUSED_CLOSED
                            : RING_HEADER_SIZE + (uint64_t)n > RING_MAX_RECORD ? RING_REFUSED_TOO_LARGE
                            : RING_HEADER_SIZE + n > cap->ring->cap ? RING_REFUSED_BIGGER_THAN_RING
                            : RING_REFUSED_FULL, h, p, n);
}

/* The LOCAL INFILE files of the command that started at start_ns, each just before its record. */
static void record_infiles(dp_conn *c, dp_capture *cap, int64_t start_ns) {
    for (uint32_t i = 0; i < c->ninfiles; i++) {
        dp_infile *f = &c->infiles[i];
        size_t n = 8 + (f->content ? f->size : 0);
        uint8_t *body = malloc(n);
        if (!body)
            break;
        for (int k = 0; k < 8; k++)  /* INFILE_SIZE: the file's size (u64), then its content */
            body[k] = (uint8_t)(f->size >> (8 * k));
        if (f->content)
            memcpy(body + 8, f->content, f->size);
        __atomic_add_fetch(&cap->infile_files, 1, __ATOMIC_RELAXED);
        if (f->content)
            __atomic_add_fetch(&cap->infile_bytes, f->size, __ATOMIC_RELAXED);
        else
            __atomic_add_fetch(&cap->infile_too_large, 1, __ATOMIC_RELAXED);
        RecordHead h;
        memset(&h, 0, sizeof h);
        h.kind = RING_KIND_LOCAL_INFILE;
        h.conn_id = c->conn_id;
        h.start_ns = start_ns;
        capture_append(c, cap, &h, body, n);
        free(body);
    }
    infiles_clear(c);
}

/* Append a finished command to the capture. Runs before the session applies the command (a
 * COM_STMT_CLOSE of a filtered statement must still find it). 1 when it was a COM_STMT_PREPARE the
 * capture dropped (its statement is marked once the session holds it). */
static int capture_command(dp_conn *c, const dp_cmd *m, const trk_result *r, int64_t now) {
    dp_capture *cap = c->w->capture;
    dp *d = c->w->dp;
    if (m->len != m->total || !m->len || m->start_ns < cap->start_ns)
        return 0;
    if (cap->select && d->select_hook && !d->select_hook(c->py_handle, m->buf, m->len, r)) {
        infiles_clear(c);  /* the files of a command not captured */
        return 0;
    }
    if (c->ninfiles)
        record_infiles(c, cap, m->start_ns);
    const uint8_t *p = m->buf;
    size_t n = m->len;
    uint8_t cmd = p[0];
    uint64_t affected = (uint64_t)r->affected_rows;
    uint8_t *blanked = NULL;
    if (cmd == COM_QUERY || cmd == COM_STMT_PREPARE) {
        /* the secret classifier: its C scan here, its policy (with the GIL) only when the scan
         * found something, the session reads text differently, or SQL PREPAREs were dropped */
        int policy = c->dbcs || (cmd == COM_QUERY && c->sql_prepares_dropped)
                     || (d->secret_quick && d->secret_quick(p + 1, n - 1));
        if (policy && d->capture_hook) {
            uint8_t *out = NULL;
            size_t out_n = 0;
            int rc = d->capture_hook(c->py_handle, p, n, r, &out, &out_n);
            c->sql_prepares_dropped = (rc & DP_SQL_DROPPED) != 0;
            if ((rc & DP_VERDICT_MASK) == DP_DROPPED) {
                free(out);
                return cmd == COM_STMT_PREPARE && r->outcome == TRK_OK && r->stmt_id >= 0;
            }
            if ((rc & DP_VERDICT_MASK) == DP_REDACTED && out) {
                blanked = out;
                p = out;
                n = out_n;
            }
        }
        if (cmd == COM_STMT_PREPARE && r->outcome == TRK_OK)
            affected = (uint64_t)r->stmt_id;  /* a prepare has no affected rows: the field carries the id */
    } else if (cmd == COM_CHANGE_USER || cmd == COM_RESET_CONNECTION) {
        c->sql_prepares_dropped = 0;  /* SQL-level statements are gone */
    }
    if (cmd == COM_CHANGE_USER) {
        const uint8_t *user, *db;
        size_t ulen, dblen, at, alen;
        dp_parse_change_user(p, n, c->s.capabilities, &user, &ulen, &db, &dblen, &at, &alen);
        blanked = malloc(n + 1);
        if (!blanked)
            return 0;
        memcpy(blanked, p, at);
        blanked[at] = 0;  /* the auth response, empty: no secret on disk */
        memcpy(blanked + at + 1, p + at + alen, n - at - alen);
        n = n - alen + 1;
        p = blanked;
    } else if (((cmd >= COM_STMT_EXECUTE && cmd <= COM_STMT_RESET) || cmd == COM_STMT_FETCH
                || cmd == COM_STMT_BULK_EXECUTE) && n >= 5) {
        /* every command naming a statement by id (bytes 1-4): the bulk execute (MariaDB) carries
         * bound values like an execute, so a dropped prepare's bulk executes go too */
        uint32_t id = p[1] | (p[2] << 8) | (p[3] << 16) | ((uint32_t)p[4] << 24);
        if (id == DP_LAST_STMT_ID && c->s.has_last_prepared)
            id = c->s.last_prepared;  /* MariaDB: the last statement prepared (mariadb_stmt_execute_direct) */
        dp_stmt *e = dp_stmt_find(&c->s, id);
        if (e && e->filtered) {
            __atomic_add_fetch(&cap->filtered, 1, __ATOMIC_RELAXED);
            return 0;
        }
    }
    RecordHead h;
    memset(&h, 0, sizeof h);
    h.kind = RING_KIND_COMMAND;
    h.outcome = r->outcome;
    h.err_code = r->outcome == TRK_ERR ? r->err_code : 0;
    h.conn_id = c->conn_id;
    h.start_ns = m->start_ns;
    h.end_ns = now;
    h.affected_rows = affected;
    h.rows = (uint64_t)r->rows;
    h.last_insert_id = (uint64_t)r->last_insert_id;
    h.columns = (uint32_t)r->columns;
    h.warnings = r->warnings;
    h.status_flags = r->status_flags;
    h.hash_ordered = r->hash_ordered;    /* result fingerprints (fingerprint.h, in the tracker) */
    h.hash_unordered = r->hash_unordered;
    capture_append(c, cap, &h, p, n);
    free(blanked);
    return 0;
}

/* ---- commands: from the client's framer to the tracker and back ------------------------------- */

static int latency_bucket(const dp *d, int64_t ns) {
    int i = 0;
    while (i < DP_LATENCY_BOUNDS && ns > d->latency_bounds[i])
        i++;
    return i;
}

/* The tracker's callback: a command's response is complete (or it never gets one). */
static void on_result(void *ctx, const trk_result *r) {
    dp_conn *c = ctx;
    if (r->unsolicited) {  /* forwarded already; kept for the close record (1927 killed, 4031 timeout...) */
        size_t k = r->err_msg_len < sizeof c->unsol_err_msg - 1 ? r->err_msg_len : sizeof c->unsol_err_msg - 1;
        c->unsol_err_code = r->err_code;
        memcpy(c->unsol_err_msg, r->err_msg, k);
        c->unsol_err_msg[k] = 0;
        return;
    }
    dp_worker *w = c->w;
    dp_cmd *m = &c->q[c->q_head];
    c->q_head = (c->q_head + 1) % c->q_cap;
    c->q_len--;
    int64_t now = w->now;
    if (now < m->start_ns)  /* pipelined commands start a ns apart; an abort in their batch ends them at its start */
        now = m->start_ns;
    int64_t lat = now - m->start_ns;
    STAT_ADD(w->stats.latency_buckets[latency_bucket(w->dp, lat)], 1);
    STAT_ADD(w->stats.latency_sum_ns, (uint64_t)lat);
    if (r->outcome == TRK_ERR)
        STAT_ADD(w->stats.command_errors[r->cmd], 1);
    dp_session *s = &c->s;
    s->commands++;
    s->last_cmd = r->cmd;
    s->last_outcome = r->outcome;
    s->last_err_code = r->outcome == TRK_ERR ? r->err_code : 0;
    s->last_start_ns = m->start_ns;
    s->last_end_ns = now;
    s->has_last = 1;
    int dropped_prepare = m->capture && c->cap_state == DP_CAP_ON && w->capture && capture_command(c, m, r, now);
    if (!m->capture && c->ninfiles)
        infiles_clear(c);
    dp_session_apply(c, m, r);
    if (dropped_prepare) {
        dp_stmt *e = dp_stmt_find(&c->s, (uint32_t)r->stmt_id);
        if (e)  /* its executes, resets and close are not captured either */
            e->filtered = 1;
    }
    if (c->cap_state == DP_CAP_WAIT && !(s->status_flags & SERVER_STATUS_IN_TRANS))
        c->cap_state = DP_CAP_PENDING;  /* the transaction ended: its state is read at the next command */
    if (r->cmd == COM_QUIT)
        close_because(c, DP_CLOSE_CLIENT_QUIT, NULL);
    if (m->cap > DP_KEEP_BUFFER_MAX) {
        free(m->buf);
        m->buf = NULL;
        m->cap = 0;
    }
}

static int queue_grow(dp_conn *c) {
    uint32_t cap = c->q_cap ? c->q_cap * 2 : 2;
    dp_cmd *q = calloc(cap, sizeof *q);
    if (!q)
        return -1;
    for (uint32_t i = 0; i < c->q_cap; i++)  /* all slots, in order, with the buffers they hold */
        q[i] = c->q[(c->q_head + i) % c->q_cap];
    free(c->q);
    c->q = q;
    c->q_cap = cap;
    c->q_head = 0;
    return 0;
}

static dp_cmd *reading_slot(dp_conn *c) { return &c->q[(c->q_head + c->q_len) % c->q_cap]; }

static int start_command(dp_conn *c) {
    if (c->q_len + 1 >= c->q_cap && queue_grow(c) < 0)
        return close_because(c, DP_CLOSE_NO_MEMORY, NULL);
    dp_cmd *m = reading_slot(c);
    int64_t now = c->w->now;
    if (now <= c->s.last_arrival_ns)  /* several commands in one read: keep their order in time */
        now = c->s.last_arrival_ns + 1;
    c->s.last_arrival_ns = now;
    m->start_ns = now;
    m->len = 0;
    m->total = 0;
    m->semicolon = 0;
    m->capture = c->cap_state == DP_CAP_ON;
    c->fr_want = m->capture ? UINT64_MAX : 1;
    c->reading_cmd = 1;
    return 0;
}

/* The first letters of the statements whose session effects Python follows (use, prepare,
 * deallocate / drop, create), or whitespace / a comment before the statement: sqltext.FIRST_BYTES. */
static int may_have_session_effect(uint8_t a, uint8_t b) {
    switch (a | 0x20) {
    case 'u': return (b | 0x20) == 's';
    case 'p': case 'c': return (b | 0x20) == 'r';
    case 'd': return (b | 0x20) == 'r' || (b | 0x20) == 'e';
    }
    return a == ' ' || a == '\t' || a == '\r' || a == '\n' || a == '/' || a == '#' || a == '-';
}

/* How many payload bytes of the command being read to keep, now that `m->len` are known: only
 * what the session state needs (or all of it while the connection is captured). */
static uint64_t decide_want(dp_conn *c, const dp_cmd *m) {
    const uint8_t *b = m->buf;
    uint32_t n = m->len;
    switch (b[0]) {
    case COM_QUERY:
        if (n < 3)
            return 3;
        /* what Python's session policy may look at: the first DP_SCAN_LIMIT bytes of the SQL */
        return may_have_session_effect(b[1], b[2]) || c->s.multi_statements ? 1 + DP_SCAN_LIMIT : n;
    case COM_STMT_EXECUTE: {
        if (n < 6)
            return 6;  /* statement id, flags (a cursor?) */
        dp_stmt *e = dp_stmt_find(&c->s, b[1] | (b[2] << 8) | (b[3] << 16) | ((uint32_t)b[4] << 24));
        if (!e || !e->num_params)
            return n;
        uint64_t flag_at = 10 + (e->num_params + 7) / 8;
        if (n < flag_at + 1)
            return flag_at + 1;
        return b[flag_at] == 1 ? flag_at + 1 + 2u * e->num_params : n;  /* newly bound parameter types */
    }
    case COM_STMT_PREPARE: case COM_INIT_DB: case COM_CHANGE_USER:
        return UINT64_MAX;
    case COM_STMT_CLOSE: case COM_STMT_RESET: case COM_STMT_SEND_LONG_DATA: case COM_STMT_FETCH:
        return 5;
    case COM_SET_OPTION:
        return 3;
    default:
        return n;
    }
}

/* `buf` grown by doubling (from `first` when empty) until it holds `need` bytes: the new block
 * (its size in *cap), or NULL when out of memory (then `buf` and *cap are unchanged). */
static uint8_t *grow_doubling(uint8_t *buf, size_t *cap, size_t need, size_t first) {
    size_t n = *cap ? *cap : first;
    while (n < need)
        n *= 2;
    uint8_t *b = realloc(buf, n);
    if (b)
        *cap = n;
    return b;
}

static int cmd_keep(dp_cmd *m, const uint8_t *p, size_t n) {
    if (m->len + n > m->cap) {
        size_t cap = m->cap;
        uint8_t *b = grow_doubling(m->buf, &cap, m->len + n, 64);
        if (!b)
            return -1;
        m->buf = b;
        m->cap = (uint32_t)cap;
    }
    memcpy(m->buf + m->len, p, n);
    m->len += (uint32_t)n;
    return 0;
}

static int collect(dp_conn *c, const uint8_t *p, size_t n) {
    dp_cmd *m = reading_slot(c);
    while (n) {
        if (m->len == m->total && m->len < c->fr_want) {
            size_t take = c->fr_want - m->len < n ? (size_t)(c->fr_want - m->len) : n;
            if (cmd_keep(m, p, take) < 0)
                return close_because(c, DP_CLOSE_NO_MEMORY, NULL);
            m->total += take;
            p += take;
            n -= take;
            if (m->len == c->fr_want) {
                uint64_t want = decide_want(c, m);
                if (want > c->fr_want)
                    c->fr_want = want;
            }
        } else {
            /* past what is kept: a query's `;` there tells Python a later statement may USE */
            if (!m->semicolon && m->len && m->buf[0] == COM_QUERY && c->s.multi_statements && memchr(p, ';', n))
                m->semicolon = 1;
            m->total += n;
            n = 0;
        }
    }
    return 0;
}

static int end_command(dp_conn *c) {
    dp_cmd *m = reading_slot(c);
    c->reading_cmd = 0;
    if (m->total == 0)
        return close_because(c, DP_CLOSE_CLIENT_PROTOCOL, "empty command packet");
    uint8_t cmd = m->buf[0];
    int cursor = cmd == COM_STMT_EXECUTE && m->len >= 6 && m->buf[5] != 0;
    STAT_ADD(c->w->stats.commands[cmd], 1);
    c->q_len++;  /* in flight from now: the tracker's callback may complete it right away */
    if (trk_begin(&c->trk, cmd, cursor) < 0)
        return close_because(c, DP_CLOSE_NO_MEMORY, NULL);
    return 0;
}

/* A LOCAL INFILE file's bytes, for a capture that records them (up to its limit: then its size). */
static void collect_infile(dp_conn *c, const uint8_t *p, size_t n) {
    dp_capture *cap = c->w->capture;
    c->infile_size += n;
    if (!cap || c->infile_size > cap->local_infile_limit) {
        free(c->infile_buf);
        c->infile_buf = NULL;
        c->infile_len = c->infile_cap = 0;
        return;
    }
    if (c->infile_len + n > c->infile_cap) {
        uint8_t *b = grow_doubling(c->infile_buf, &c->infile_cap, c->infile_len + n, 4096);
        if (!b) {
            c->infile_capture = 0;
            return;
        }
        c->infile_buf = b;
    }
    memcpy(c->infile_buf + c->infile_len, p, n);
    c->infile_len += n;
}

static void end_infile(dp_conn *c) {
    dp_infile *f = realloc(c->infiles, (c->ninfiles + 1) * sizeof *f);
    if (!f) {
        c->infile_capture = 0;
        return;
    }
    c->infiles = f;
    dp_capture *cap = c->w->capture;
    int whole = cap && c->infile_size <= cap->local_infile_limit;
    f[c->ninfiles].size = c->infile_size;
    f[c->ninfiles].content = whole ? (c->infile_buf ? c->infile_buf : malloc(1)) : NULL;
    if (!whole)
        free(c->infile_buf);
    c->ninfiles++;
    c->infile_buf = NULL;
    c->infile_len = c->infile_cap = 0;
    c->infile_size = 0;
    c->infile_capture = 0;
}

/* Watch the client's bytes (already forwarded): cut them into packets, commands into dp_cmd. */
static int frame_client(dp_conn *c, const uint8_t *p, size_t n) {
    size_t pos = 0;
    while (pos < n) {
        if (c->fr_hdr_have < 4) {
            while (c->fr_hdr_have < 4 && pos < n)
                c->fr_hdr[c->fr_hdr_have++] = p[pos++];
            if (c->fr_hdr_have < 4)
                return 0;
            uint32_t len = c->fr_hdr[0] | (c->fr_hdr[1] << 8) | ((uint32_t)c->fr_hdr[2] << 16);
            int continuation = c->fr_prev_max;
            c->fr_prev_max = len == MAX_PACKET_PAYLOAD;
            c->fr_remaining = len;
            if (!continuation) {  /* a new logical packet */
                c->fr_total = 0;
                int seq = c->fr_hdr[3];
                if (c->infile) {  /* LOCAL INFILE data: any sequence id (they wrap), until the empty packet */
                    c->fr_mode = FR_INFILE;
                } else if (seq == 0) {  /* sequence 0 starts a command */
                    if (start_command(c) < 0)
                        return -1;
                    c->fr_mode = FR_CMD;
                } else if (trk_idle(&c->trk)) {
                    return close_because(c, DP_CLOSE_CLIENT_PROTOCOL,
                                         "packet with sequence id %d where a command must start", seq);
                } else {
                    c->fr_mode = FR_SKIP;  /* continues a command (COM_CHANGE_USER's auth exchange) */
                }
            }
            c->fr_total += len;
            if (c->fr_total > c->max_packet_size)
                return close_because(c, DP_CLOSE_CLIENT_PROTOCOL, "packet of at least %llu bytes exceeds the limit of %llu",
                                     (unsigned long long)c->fr_total, (unsigned long long)c->max_packet_size);
        }
        size_t take = n - pos < c->fr_remaining ? n - pos : c->fr_remaining;
        if (take) {
            if (c->fr_mode == FR_CMD && collect(c, p + pos, take) < 0)
                return -1;
            if (c->fr_mode == FR_INFILE && c->infile_capture)
                collect_infile(c, p + pos, take);
        }
        pos += take;
        c->fr_remaining -= (uint32_t)take;
        if (c->fr_remaining)
            return 0;
        c->fr_hdr_have = 0;
        if (c->fr_prev_max)
            continue;  /* the logical packet goes on in the next physical one */
        if (c->fr_mode == FR_CMD) {
            if (end_command(c) < 0)
                return -1;
        } else if (c->fr_mode == FR_INFILE && c->fr_total == 0) {
            c->infile = 0;
            if (c->infile_capture)
                end_infile(c);
        }
        c->fr_mode = FR_NONE;
        if (c->close_after)
            return 0;  /* COM_QUIT: nothing after it matters */
    }
    return 0;
}

/* ---- events of one connection ----------------------------------------------------------------- */

static void park(dp_conn *c, int reason) {
    c->parked = 1;
    update_interest(c);
    post_event(c->w->dp, DP_EV_PARKED, c, (uint64_t)reason);
}

/* The proxy has something to ask the server (the database it did not say, or a session open before
 * the capture): asked when the client starts its next command, which waits (held) meanwhile. */
static int own_query_due(const dp_conn *c) { return c->s.db_stale || c->cap_state == DP_CAP_PENDING; }

static void on_client_data(dp_conn *c, const uint8_t *p, size_t n) {
    if (!c->held_skip && own_query_due(c) && command_boundary(c) && n >= 5 && p[3] == 0 && p[4] != COM_QUIT) {
        uint8_t *held = malloc(n);
        if (held) {
            memcpy(held, p, n);
            c->held = held;
            c->held_len = n;
            park(c, DP_PARK_OWN_QUERY);
            return;
        }
    }
    STAT_ADD(c->w->stats.bytes_from_clients, n);
    send_to(c, &c->be, p, n);  /* forward first, then watch */
    if (frame_client(c, p, n) < 0 && c->close_after == DP_CLOSE_CLIENT_PROTOCOL)
        STAT_ADD(c->w->stats.protocol_errors, 1);
}

static void on_backend_data(dp_conn *c, const uint8_t *p, size_t n) {
    STAT_ADD(c->w->stats.bytes_to_clients, n);
    /* Watched before relayed: once a client has an answer, everything about that command is in
     * place -- counters, session state (/api/debug/connections), the capture record -- as with a
     * single-threaded relay. Relaying first left a window (the send wakes the client; this thread
     * is then often preempted) in which the client, or another worker, saw the state before it. */
    int rc = trk_feed(&c->trk, p, n);
    send_to(c, &c->cli, p, n);
    if (rc < 0) {
        STAT_ADD(c->w->stats.protocol_errors, 1);
        close_because(c, DP_CLOSE_BACKEND_PROTOCOL, "%s", c->trk.error);
        return;
    }
    if (c->trk.local_infile_requests != c->infile_seen) {  /* the server asked for a file */
        c->infile_seen = c->trk.local_infile_requests;
        c->infile = 1;
        dp_capture *cap = c->w->capture;
        if (cap && cap->local_infile && c->cap_state == DP_CAP_ON && c->q_len && c->q[c->q_head].capture) {
            c->infile_capture = 1;
            c->infile_size = 0;
        }
    }
}

static void own_done(void *ctx, const trk_result *r) {
    (void)ctx;
    (void)r;
}

/* Backend bytes while the proxy's own query runs: its answer, up to the end of the response;
 * whatever follows is the client's business once Python resumes the connection. */
static void on_own_answer(dp_conn *c, const uint8_t *p, size_t n) {
    size_t used = 0;
    if (trk_feed_some(c->own_trk, p, n, &used) < 0) {
        STAT_ADD(c->w->stats.protocol_errors, 1);
        close_because(c, DP_CLOSE_BACKEND_PROTOCOL, "%s (the answer to the proxy's own query)", c->own_trk->error);
        c->own_lost = 1;
        c->own_active = 0;
        park(c, DP_PARK_OWN_ANSWER);
        return;
    }
    if (c->own_len + used > DP_OWN_ANSWER_MAX) {
        close_because(c, DP_CLOSE_BACKEND_PROTOCOL, "the answer to the proxy's own query exceeds %d bytes",
                      DP_OWN_ANSWER_MAX);
        c->own_lost = 1;
        c->own_active = 0;
        park(c, DP_PARK_OWN_ANSWER);
        return;
    }
    if (c->own_len + used > c->own_cap) {
        uint8_t *b = grow_doubling(c->own_ans, &c->own_cap, c->own_len + used, 4096);
        if (!b) {
            close_because(c, DP_CLOSE_NO_MEMORY, NULL);
            c->own_lost = 1;
            c->own_active = 0;
            park(c, DP_PARK_OWN_ANSWER);
            return;
        }
        c->own_ans = b;
    }
    memcpy(c->own_ans + c->own_len, p, used);
    c->own_len += used;
    if (!trk_idle(c->own_trk))
        return;
    if (used < n) {
        uint8_t *rest = realloc(c->be_rest, c->be_rest_len + (n - used));
        if (rest) {
            memcpy(rest + c->be_rest_len, p + used, n - used);
            c->be_rest = rest;
            c->be_rest_len += n - used;
        }
    }
    c->own_active = 0;
    park(c, DP_PARK_OWN_ANSWER);  /* still Python's: the answer is in */
}

static void start_own_query(dp_conn *c, uint8_t *packet, size_t n) {
    if (!c->own_trk) {
        c->own_trk = malloc(sizeof *c->own_trk);
        if (!c->own_trk) {
            free(packet);
            close_because(c, DP_CLOSE_NO_MEMORY, NULL);
            c->own_lost = 1;
            post_event(c->w->dp, DP_EV_PARKED, c, DP_PARK_OWN_ANSWER);
            return;
        }
        trk_init(c->own_trk, c->trk.deprecate_eof, own_done, c);
    }
    c->own_len = 0;
    trk_begin(c->own_trk, COM_QUERY, 0);
    c->own_active = 1;
    send_to(c, &c->be, packet, n);
    free(packet);
    if (c->be_lost) {
        c->own_active = 0;
        c->own_lost = 1;
        post_event(c->w->dp, DP_EV_PARKED, c, DP_PARK_OWN_ANSWER);
        return;
    }
    update_interest(c);
}

static void deliver(dp_conn *c, dp_side *s, const uint8_t *p, size_t n) {
    dp_worker *w = c->w;
    int64_t wall = wall_ns(), now = wall;
    /* a backend's bytes: when they arrived (io_read), if the kernel said and it is believable */
    if (!s->is_client && s->arrived_ns && s->arrived_ns <= now && now - s->arrived_ns < 10000000000LL)
        now = s->arrived_ns;
    w->now = now;
    if (c->own_active)
        on_own_answer(c, p, n);
    else if (s->is_client)
        on_client_data(c, p, n);
    else
        on_backend_data(c, p, n);
    /* the arrival time is these bytes' only: an abort later in this batch (EOF, a failed write)
     * ends its command now, never before a start this batch stamped */
    w->now = wall;
}

static void read_lost(dp_conn *c, dp_side *s) {
    lost(s);
    if (c->own_active && !s->is_client) {  /* during the proxy's own query: Python says so */
        c->own_active = 0;
        c->own_lost = 1;
        park(c, DP_PARK_OWN_ANSWER);
    }
}

/* A TLS side: at a readiness, the socket's bytes into OpenSSL's read BIO; then one SSL_read, as
 * a plain side has one recv. While OpenSSL may hold more, the side stays in the worker's ready
 * list (epoll cannot see those bytes). */
static void tls_read_once(dp_conn *c, dp_side *s);

static void read_side_tls(dp_conn *c, dp_side *s) {
    dp_worker *w = c->w;
    if (!s->tls_more) {
        ssize_t k = io_read(s, w->tbuf, DP_READ_SIZE);
        if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            read_lost(c, s);
            return;
        }
        if (k > 0 && BIO_write(SSL_get_rbio(s->ssl), w->tbuf, (int)k) != (int)k) {
            read_lost(c, s);
            return;
        }
    }
    tls_read_once(c, s);
}

/* One SSL_read of what the read BIO holds. */
static void tls_read_once(dp_conn *c, dp_side *s) {
    dp_worker *w = c->w;
    SSL *ssl = s->ssl;
    ERR_clear_error();
    int k = SSL_read(ssl, w->rbuf, DP_READ_SIZE);
    int e = k > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl, k);
    tls_flush(c, s);  /* what reading made OpenSSL send (a key update's answer, an alert) */
    if (k > 0) {
        s->tls_more = 1;
        ready_enqueue(w, s);
        deliver(c, s, w->rbuf, (size_t)k);
        return;
    }
    s->tls_more = 0;
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
        read_lost(c, s);  /* close_notify, or a TLS error */
}

static void u_read_side(dp_conn *c, dp_side *s);

static void read_side(dp_conn *c, dp_side *s) {
    if (c->w->ring) {
        u_read_side(c, s);
        return;
    }
    if (s->ssl) {
        read_side_tls(c, s);
        return;
    }
    dp_worker *w = c->w;
    ssize_t k = io_read(s, w->rbuf, DP_READ_SIZE);
    if (k > 0)
        deliver(c, s, w->rbuf, (size_t)k);
    else if (k == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        read_lost(c, s);
}

static void settle(dp_conn *c);

/* After an event of a connection: settle it; a parked one is Python's (settle leaves it alone), but
 * the answer to the proxy's own query is read meanwhile, and on io_uring a recv must be armed for it
 * (again after each completion of a single-shot recv, or once a cancelled multishot one ended). */
static void after_event(dp_conn *c) {
    if (c->dead)
        zombie_check(c);
    else if (c->parked)
        update_interest(c);
    else
        settle(c);
}

/* The sides to read without a readiness or a completion: TLS sides whose OpenSSL may hold more
 * decrypted bytes, and (io_uring) sides with a stash, still wanting to be read. */
static void ready_pass(dp_worker *w) {
    uint32_t n = w->nready, cap = w->ready_cap;
    dp_side **list = w->ready;
    w->ready = w->ready_spare;  /* sides queued meanwhile go to the other list (each keeps its size) */
    w->ready_cap = w->spare_cap;
    w->ready_spare = list;
    w->spare_cap = cap;
    w->nready = 0;
    for (uint32_t i = 0; i < n; i++) {
        dp_side *s = list[i];
        dp_conn *c = s->conn;
        s->ready_queued = 0;
        if (c->dead) {
            zombie_check(c);
            continue;
        }
        if (s->fd < 0 || !((s->ssl && s->tls_more) || s->stash.len || s->stash_eof)
            || (c->parked && !c->own_active) || !(s->registered & EPOLLIN))
            continue;  /* set_interest queues it again when it wants to be read */
        read_side(c, s);
        after_event(c);
    }
}

static void err_packet(uint8_t *out, size_t *n, int seq, int code, const char *state, const char *msg) {
    size_t mlen = strlen(msg), len = 1 + 2 + 1 + 5 + mlen;
    out[0] = len & 0xFF;
    out[1] = (len >> 8) & 0xFF;
    out[2] = (len >> 16) & 0xFF;
    out[3] = (uint8_t)seq;
    out[4] = ERR_HEADER;
    out[5] = code & 0xFF;
    out[6] = (code >> 8) & 0xFF;
    out[7] = '#';
    memcpy(out + 8, state, 5);
    memcpy(out + 13, msg, mlen);
    *n = 4 + len;
}

static void send_err(dp_conn *c, int seq, const char *msg) {
    uint8_t pkt[256];
    size_t n;
    err_packet(pkt, &n, seq, ER_UNKNOWN_ERROR, "08S01", msg);
    send_to(c, &c->cli, pkt, n);
}

static void start_close(dp_conn *c, int reason) {
    if (c->closing)
        return;
    /* in flight: they happened, with no known end (client gone), or may not have (backend gone) */
    if (!trk_idle(&c->trk))
        trk_abort(&c->trk, reason == DP_CLOSE_BACKEND_LOST || reason == DP_CLOSE_BACKEND_GONE ? DP_OUTCOME_BACKEND_LOST
                                                                                             : TRK_UNKNOWN);
    c->closing = 1;
    c->close_reason = (uint8_t)reason;
    c->reading_cmd = 0;
    c->closed_captured = c->w->capture && c->cap_state == DP_CAP_ON;  /* Python records the close */
    c->cap_state = DP_CAP_OFF;
    infiles_clear(c);
    side_close(c, &c->be);
}

static void finish(dp_conn *c) {
    dp_worker *w = c->w;
    side_close(c, &c->cli);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->dead = 1;
    w->nconns--;
    STAT_ADD(w->stats.connections, -1);
    c->next = w->finished;  /* reported once this batch of events is handled */
    w->finished = c;
}

/* After anything happened to a connection: close, park, or adjust what epoll watches. */
static void settle(dp_conn *c) {
    if (c->dead || c->parked)
        return;
    if (!c->closing) {
        if (c->close_after == DP_CLOSE_FORCED) {
            start_close(c, DP_CLOSE_FORCED);
            finish(c);
            return;
        } else if (c->close_after) {
            start_close(c, c->close_after);
        } else if (c->cli_lost) {
            start_close(c, DP_CLOSE_CLIENT_GONE);
        } else if (c->be_lost) {
            if (!trk_idle(&c->trk)) {
                /* mid-command: tell the client in protocol terms, if a packet of it is not half sent */
                int at_packet = trk_at_packet_boundary(&c->trk), seq = trk_next_seq(&c->trk);
                /* production may not have run these: recorded as BACKEND_LOST, not replayed by default */
                trk_abort(&c->trk, DP_OUTCOME_BACKEND_LOST);
                if (at_packet) {
                    char msg[160];
                    snprintf(msg, sizeof msg, "fastproxy: lost connection to backend %s during query", c->backend_addr);
                    send_err(c, seq, msg);
                }
                start_close(c, DP_CLOSE_BACKEND_LOST);
            } else {
                start_close(c, DP_CLOSE_BACKEND_GONE);
            }
        } else if (c->draining && at_boundary(c)) {
            start_close(c, DP_CLOSE_DRAIN);
        }
    }
    if (c->closing && (side_pending(&c->cli) == 0 || c->cli_lost || c->cli.fd < 0)) {
        finish(c);
        return;
    }
    update_interest(c);
}

static void handle_io(dp_conn *c, dp_side *s, uint32_t events) {
    if (events & EPOLLOUT) {
        flush_side(c, s);
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        if (s->registered & EPOLLIN)
            read_side(c, s);
        else if (events & (EPOLLHUP | EPOLLERR))
            lost(s);
    }
}

/* ---- io_uring ----------------------------------------------------------------------------------- */

/* A worker on io_uring keeps the same connection logic; only the I/O differs (docs/dataplane.md,
 * "io_uring"). A side that wants to be read keeps one recv armed, into a buffer the kernel picks
 * from the worker's provided buffers when bytes arrive; what it brings is handled like a read's bytes
 * (or kept in the side's stash when the side no longer wants reading by then). Writes are queued and
 * written by the next io_uring_enter, one send in flight per side. One io_uring_enter per loop turn
 * submits all of them and waits for the next completions: about one system call per turn where epoll
 * needs epoll_wait plus a recv and a send per side. */

#define U_ENTRIES 256
#define U_CQ_ENTRIES 4096
#define U_NBUF 256                 /* provided buffers per worker (a power of two) ... */
#define U_BUFSZ (32 * 1024)        /* ... of this size: 8 MiB per worker */
/* user_data: the side's address with the operation in its low bits (sides are 8-byte aligned); 0
 * for what needs no handling (a cancel) */
enum { U_NONE = 0, U_RECV = 1, U_SEND = 2, U_INBOX = 3, U_OP_MASK = 7 };
/* dp_side.recv_armed: a multishot recv (armed once, each arrival a completion), or a multishot
 * recvmsg whose buffers begin with the arrival time (a backend while a capture runs) */
enum { U_ARMED_STAMPED = 2, U_ARMED_MULTI = 3 };

static void u_arm_recv(dp_worker *w, dp_side *s) {
    struct io_uring_sqe *e = uring_sqe(w->ring);
    if (!e) {
        lost(s);
        return;
    }
    e->fd = s->fd;
    e->flags = IOSQE_BUFFER_SELECT;
    e->buf_group = 0;
    e->user_data = (uintptr_t)s | U_RECV;
    if (stamped_reads(s)) {  /* the kernel's arrival time, as io_read has it (capture) */
        if (!s->rmsg && !(s->rmsg = malloc(sizeof *s->rmsg))) {
            e->opcode = IORING_OP_RECV;  /* wall-clock stamps then, as where the kernel has none */
            s->stamped = 2;
        } else {
            /* each buffer: struct io_uring_recvmsg_out, the control messages (room for one
             * timestamp, as the header says), then the bytes (u_on_recv) */
            memset(&s->rmsg->msg, 0, sizeof s->rmsg->msg);
            s->rmsg->msg.msg_controllen = sizeof s->rmsg->ctl.buf;
            e->opcode = IORING_OP_RECVMSG;
            e->addr = (uintptr_t)&s->rmsg->msg;
            e->len = 1;
        }
    } else {
        e->opcode = IORING_OP_RECV;
    }
    e->ioprio = IORING_RECV_MULTISHOT;  /* armed once: each arrival is a completion */
    s->recv_armed = e->opcode == IORING_OP_RECVMSG ? U_ARMED_STAMPED : U_ARMED_MULTI;
}

static void u_kick_send(dp_worker *w, dp_side *s) {
    if (s->send_armed || s->fd < 0)
        return;
    if (!s->out.len) {
        if (!s->pend.len)
            return;
        dp_buf t = s->out;  /* what was queued behind the last send goes out now */
        s->out = s->pend;
        s->pend = t;
        s->pend.off = s->pend.len = 0;
    }
    struct io_uring_sqe *e = uring_sqe(w->ring);
    if (!e) {
        lost(s);
        return;
    }
    e->opcode = IORING_OP_SEND;
    e->fd = s->fd;
    e->addr = (uintptr_t)(s->out.data + s->out.off);
    e->len = s->out.len;
    e->msg_flags = MSG_NOSIGNAL | MSG_WAITALL;  /* WAITALL: the kernel sends the rest of a short send */
    e->user_data = (uintptr_t)s | U_SEND;
    s->send_armed = 1;
}

/* Stop a multishot recv (it ends with a completion without IORING_CQE_F_MORE); what it brings
 * meanwhile waits in the stash. */
static void u_cancel_recv(dp_worker *w, dp_side *s) {
    if (!s->recv_armed || s->recv_cancel)
        return;
    struct io_uring_sqe *e = uring_sqe(w->ring);
    if (!e)
        return;
    e->opcode = IORING_OP_ASYNC_CANCEL;
    e->addr = (uintptr_t)s | U_RECV;
    e->user_data = U_NONE;
    s->recv_cancel = 1;
}

static void u_set_interest(dp_conn *c, dp_side *s, uint32_t want) {
    if (s->fd < 0 || s->close_deferred)
        return;
    s->registered = want;  /* EPOLLOUT needs nothing: a send is in flight while bytes are queued */
    if (!(want & EPOLLIN)) {
        u_cancel_recv(c->w, s);  /* a single-shot recv is left to complete (into the stash) */
        return;
    }
    int stamp = !s->is_client && c->w->capture && s->stamped != 2;
    if (s->recv_armed && (s->recv_armed == U_ARMED_STAMPED) != stamp)
        u_cancel_recv(c->w, s);  /* a capture began (re-armed as a recvmsg, for arrival times) or ended */
    if (s->stash.len || s->stash_eof || (s->ssl && s->tls_more))
        ready_enqueue(c->w, s);
    else if (!s->recv_armed)
        u_arm_recv(c->w, s);
}

/* Bytes a recv brought, to a side that wants them. */
static void u_got(dp_conn *c, dp_side *s, const uint8_t *p, size_t n) {
    if (!s->ssl) {
        deliver(c, s, p, n);
        return;
    }
    if (BIO_write(SSL_get_rbio(s->ssl), p, (int)n) != (int)n) {
        read_lost(c, s);
        return;
    }
    tls_read_once(c, s);
}

/* From the ready list: the stash first, then what OpenSSL holds, then the end that followed them. */
static void u_read_side(dp_conn *c, dp_side *s) {
    if (s->stash.len) {
        dp_buf b = s->stash;
        memset(&s->stash, 0, sizeof s->stash);
        s->arrived_ns = s->stash_arrived_ns;
        u_got(c, s, b.data + b.off, b.len);
        free(b.data);
    } else if (s->ssl && s->tls_more) {
        tls_read_once(c, s);
    } else if (s->stash_eof) {
        s->stash_eof = 0;
        read_lost(c, s);
    }
}

static int conn_referenced(const dp_conn *c);

static void u_on_recv(dp_worker *w, dp_side *s, int res, unsigned flags) {
    dp_conn *c = s->conn;
    uint8_t *p = NULL;
    int stamped = s->recv_armed == U_ARMED_STAMPED;
    if (!(flags & IORING_CQE_F_MORE)) {  /* it ended (a multishot recv stays armed while F_MORE) */
        s->recv_armed = 0;
        s->recv_cancel = 0;
    }
    if (flags & IORING_CQE_F_BUFFER)
        p = uring_buf(w->ring, flags >> IORING_CQE_BUFFER_SHIFT);
    int64_t at = 0;
    if (p && res > 0 && stamped) {
        /* a recvmsg's buffer: its header, the control messages, then the bytes (EOF: none) */
        const struct io_uring_recvmsg_out *o = (const void *)p;
        size_t head = sizeof *o + s->rmsg->msg.msg_namelen + s->rmsg->msg.msg_controllen;
        if ((size_t)res < head || o->controllen > s->rmsg->msg.msg_controllen) {
            res = -EPROTO;
        } else {
            at = cmsg_arrival(p + sizeof *o + s->rmsg->msg.msg_namelen, o->controllen);
            p += head;
            res -= (int)head;
        }
    }
    if (!c->dead && s->fd >= 0 && res != -ENOBUFS && res != -ECANCELED) {
        int wanted = (s->registered & EPOLLIN) && !(c->parked && !c->own_active) && !s->stash.len && !s->stash_eof;
        if (res > 0 && wanted) {
            s->arrived_ns = at;
            u_got(c, s, p, (size_t)res);
        } else if (res > 0) {
            if (!s->stash.len)
                s->stash_arrived_ns = at;
            if (buf_append(&s->stash, p, (size_t)res) < 0) {
                c->close_after = DP_CLOSE_NO_MEMORY;
                lost(s);
            }
        } else if (wanted) {
            read_lost(c, s);  /* EOF or error */
        } else {
            s->stash_eof = 1;
        }
    }
    if (flags & IORING_CQE_F_BUFFER)
        uring_give_back(w->ring, flags >> IORING_CQE_BUFFER_SHIFT);
    after_event(c);  /* re-armed there (no buffer left: ENOBUFS, re-armed at once: buffers are back) */
}

static void u_on_send(dp_worker *w, dp_side *s, int res) {
    dp_conn *c = s->conn;
    s->send_armed = 0;
    if (s->fd < 0) {  /* closed meanwhile: the bytes were the kernel's until now */
        buf_clear(&s->out);
    } else if (res < 0) {
        if (s->close_deferred)
            side_close_now(s);
        else if (!c->dead)
            lost(s);
    } else {
        s->out.off += (uint32_t)res;
        s->out.len -= (uint32_t)res;
        if (!s->out.len) {
            s->out.off = 0;
            if (!s->pend.len) {  /* idle connections hold no buffer */
                buf_clear(&s->out);
                buf_clear(&s->pend);
            }
        }
        u_kick_send(w, s);  /* the rest of a short send, or what was queued behind it */
        if (s->close_deferred && !s->send_armed)
            side_close_now(s);
    }
    after_event(c);
}

static void u_arm_inbox(dp_worker *w) {
    struct io_uring_sqe *e = uring_sqe(w->ring);
    if (!e)
        return;
    e->opcode = IORING_OP_POLL_ADD;
    e->fd = w->inbox.efd;
    e->poll32_events = POLLIN;
    e->user_data = (uintptr_t)&w->inbox_marker | U_INBOX;
}

static void handle_inbox(dp_worker *w);
static void report_finished(dp_worker *w);

static void u_handle(dp_worker *w, const struct io_uring_cqe *e) {
    uint64_t ud = e->user_data;
    switch (ud & U_OP_MASK) {
    case U_INBOX:
        handle_inbox(w);
        if (!w->stop)
            u_arm_inbox(w);
        break;
    case U_RECV:
        u_on_recv(w, (dp_side *)(uintptr_t)(ud & ~(uint64_t)U_OP_MASK), e->res, e->flags);
        break;
    case U_SEND:
        u_on_send(w, (dp_side *)(uintptr_t)(ud & ~(uint64_t)U_OP_MASK), e->res);
        break;
    }
}

/* Handle every completion posted; 1 if there were any. */
static int u_reap(dp_worker *w) {
    uring *u = w->ring;
    unsigned head = *u->cq_head, tail = __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE);
    if (head == tail)
        return 0;
    for (; head != tail; head++) {
        struct io_uring_cqe e = u->cqes[head & u->cq_mask];
        /* the slot back before handling: handling may submit, and the kernel may post meanwhile */
        __atomic_store_n(u->cq_head, head + 1, __ATOMIC_RELEASE);
        u_handle(w, &e);
    }
    return 1;
}

static void uring_run(dp_worker *w) {
    u_arm_inbox(w);
    while (!w->stop) {
        int r = uring_enter(w->ring, w->nready ? 0 : 1);
        if (r < 0 && r != -EINTR && r != -EBUSY)
            break;
        u_reap(w);
        if (w->nready)
            ready_pass(w);
        report_finished(w);
    }
    report_finished(w);
    /* finished connections whose operations are still in flight (their sockets are shut down, so
     * they complete at once): reported closed once they did, as Python waits for that */
    for (int turns = 0; w->zombies && turns < 1000; turns++) {
        if (uring_enter(w->ring, 0) < 0 || !u_reap(w))
            usleep(1000);
        if (w->nready)
            ready_pass(w);
    }
}

/* ---- the worker -------------------------------------------------------------------------------- */

static void add_conn(dp_worker *w, dp_conn *c, int cap_state, dp_bytes *b) {
    c->w = w;
    if (w->ring) {
        /* blocking: io_uring then always waits for readiness itself, on every kernel that has what
         * uring_probe asks for (the one direct write left, a TLS close_notify, says MSG_DONTWAIT) */
        for (int i = 0; i < 2; i++) {
            int fd = i ? c->be.fd : c->cli.fd;
            int fl = fcntl(fd, F_GETFL);
            if (fl >= 0 && (fl & O_NONBLOCK))
                fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
        }
    }
    c->trk.cb = on_result;
    c->trk.ctx = c;
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    STAT_ADD(w->stats.connections, 1);
    c->cap_state = (uint8_t)(w->capture ? cap_state : DP_CAP_OFF);
    w->now = wall_ns();
    for (int i = 0; i < 2; i++) {  /* what OpenSSL holds to send (the server's OK, encrypted) */
        dp_side *s = i ? &c->be : &c->cli;
        if (s->ssl) {
            tls_flush(c, s);
            if (s->tls_more)
                ready_enqueue(w, s);
        }
    }
    flush_side(c, &c->cli);  /* what the handshake left to send: the server's OK */
    if (b) {
        if (b->backend_in_len)
            on_backend_data(c, b->backend_in, b->backend_in_len);
        if (b->client_in_len)
            on_client_data(c, b->client_in, b->client_in_len);
        free(b->client_in);
        free(b->backend_in);
        free(b);
    }
    settle(c);
}

/* Python is done with a parked connection: what it held and what followed the answer go on. */
static void resume(dp_conn *c, uint64_t arg) {
    dp_worker *w = c->w;
    c->parked = 0;
    if (arg & DP_RESUME_SET_CAPTURE)
        c->cap_state = (uint8_t)(w->capture ? (arg & DP_RESUME_CAPTURE_MASK) : DP_CAP_OFF);
    if (c->own_lost && !c->close_after) {
        /* the client's command never reached the server: the error is its answer */
        char msg[160];
        snprintf(msg, sizeof msg, "fastproxy: lost connection to backend %s", c->backend_addr);
        send_err(c, 1, msg);
        c->be_lost = 1;
    }
    free(c->own_ans);
    c->own_ans = NULL;
    c->own_len = c->own_cap = 0;
    if (!c->own_lost) {
        w->now = wall_ns();
        if (c->be_rest_len)
            on_backend_data(c, c->be_rest, c->be_rest_len);
        if (c->held_len && !c->close_after) {
            c->held_skip = 1;
            on_client_data(c, c->held, c->held_len);
            c->held_skip = 0;
        }
    }
    free(c->be_rest);
    c->be_rest = NULL;
    c->be_rest_len = 0;
    free(c->held);
    c->held = NULL;
    c->held_len = 0;
    settle(c);
}

static void set_capture(dp_worker *w, dp_capture *cap) {
    w->capture = cap;
    for (dp_conn *c = w->conns; c; c = c->next) {
        if (!cap) {
            c->cap_state = DP_CAP_OFF;
            if (c->be.stamped == 1 && c->be.fd >= 0) {  /* no capture: no kernel stamp per read */
                int zero = 0;
                setsockopt(c->be.fd, SOL_SOCKET, SO_TIMESTAMPNS, &zero, sizeof zero);
            }
            c->be.stamped = 0;
            continue;
        }
        if (c->closing)
            continue;
        /* every connection already open: its state is read at its next command (before it); one
         * inside a transaction that wrote is captured from the end of it */
        __atomic_add_fetch(&cap->existing, 1, __ATOMIC_RELAXED);
        if ((c->s.status_flags & SERVER_STATUS_IN_TRANS) && c->s.txn_wrote) {
            c->cap_state = DP_CAP_WAIT;
            __atomic_add_fetch(&cap->waited_txn, 1, __ATOMIC_RELAXED);
        } else {
            c->cap_state = DP_CAP_PENDING;
        }
    }
}

static void handle_inbox(dp_worker *w) {
    dp_msg *msgs;
    size_t n = queue_take(&w->inbox, (void **)&msgs);
    for (size_t i = 0; i < n; i++) {
        dp_msg *m = &msgs[i];
        dp_conn *c = m->conn;
        w->now = wall_ns();
        switch (m->type) {
        case DP_MSG_ADD:
            add_conn(w, c, (int)m->arg, m->ptr);
            break;
        case DP_MSG_RESUME:
            resume(c, m->arg);
            break;
        case DP_MSG_OWN_QUERY:
            start_own_query(c, m->ptr, (size_t)m->arg);
            break;
        case DP_MSG_CAPTURE:
            set_capture(w, m->ptr);
            break;
        case DP_MSG_DRAIN:
            for (dp_conn *x = w->conns, *next; x; x = next) {
                next = x->next;
                x->draining = 1;
                settle(x);  /* a parked one is settled when Python resumes it */
            }
            break;
        case DP_MSG_CLOSE_ALL:
            for (dp_conn *x = w->conns, *next; x; x = next) {
                next = x->next;
                if (x->parked) {  /* Python owns it until it resumes it: closed then */
                    close_because(x, DP_CLOSE_FORCED, NULL);
                    continue;
                }
                start_close(x, DP_CLOSE_FORCED);
                if (!x->dead)
                    finish(x);
            }
            break;
        case DP_MSG_SYNC:
            post_event(w->dp, DP_EV_SYNC, NULL, m->arg);
            break;
        case DP_MSG_STOP:
            w->stop = 1;
            break;
        }
    }
    free(msgs);
}

/* Whether the worker still refers to a finished connection: an io_uring operation in flight on it,
 * a side in the ready list. Python frees it once told it closed, so it is told only after. */
static int conn_referenced(const dp_conn *c) {
    return c->cli.recv_armed || c->cli.send_armed || c->be.recv_armed || c->be.send_armed || c->cli.ready_queued
           || c->be.ready_queued;
}

static void report_finished(dp_worker *w) {
    while (w->finished) {
        dp_conn *c = w->finished;
        w->finished = c->next;
        c->next = NULL;
        if (conn_referenced(c)) {  /* reported by zombie_check, once the last reference is gone */
            c->zombie = 1;
            w->zombies++;
            continue;
        }
        post_event(w->dp, DP_EV_CLOSED, c, c->close_reason);  /* Python frees it from here on */
    }
}

static void zombie_check(dp_conn *c) {
    if (!c->zombie || conn_referenced(c))
        return;
    c->zombie = 0;
    c->w->zombies--;
    post_event(c->w->dp, DP_EV_CLOSED, c, c->close_reason);
}

int dp_worker_io(const dp_worker *w) { return w->ring ? DP_IO_URING : DP_IO_EPOLL; }

void dp_worker_run(dp_worker *w) {
    struct epoll_event evs[DP_MAX_EVENTS];
    char name[16];
    snprintf(name, sizeof name, "fp-worker-%d", w->index);
    pthread_setname_np(pthread_self(), name);  /* per-thread CPU in top / perf / /proc/PID/task */
    if (w->dp->io == DP_IO_URING) {
        /* made here: the ring belongs to the thread that submits (SINGLE_ISSUER); epoll if it fails */
        uring *u = malloc(sizeof *u);
        if (u && uring_init(u, U_ENTRIES, U_CQ_ENTRIES, U_NBUF, U_BUFSZ) == 0)
            w->ring = u;
        else
            free(u);
    }
    __atomic_store_n(&w->started, 1, __ATOMIC_RELEASE);
    if (w->ring) {
        uring_run(w);
        return;
    }
    while (!w->stop) {
        int n = epoll_wait(w->epfd, evs, DP_MAX_EVENTS, w->nready ? 0 : -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int i = 0; i < n; i++) {
            void *ptr = evs[i].data.ptr;
            if (ptr == &w->inbox_marker) {
                handle_inbox(w);
                continue;
            }
            dp_side *s = ptr;
            dp_conn *c = s->conn;
            if (c->dead || (c->parked && !c->own_active))
                continue;
            handle_io(c, s, evs[i].events);
            settle(c);
        }
        if (w->nready)
            ready_pass(w);
        report_finished(w);
    }
    report_finished(w);
}

/* ---- the per-command work alone, for bench/test_bench_dataplane.py ---------------------------- */

/* Run `iters` commands through one connection without sockets: the client's command bytes through
 * the framer, the server's response through the tracker, then the session, the counters and (with
 * a ring) the secret classifier's scan and the capture append — everything a worker does per
 * command but the system calls. Returns
 * the elapsed nanoseconds (CLOCK_MONOTONIC), or -1. */
int64_t dp_bench_commands(const uint8_t *cmd, size_t cmd_len, const uint8_t *resp, size_t resp_len, long iters,
                          ring *r, int deprecate_eof, dp_secret_quick quick) {
    static const int64_t bounds[DP_LATENCY_BOUNDS] = {100000, 250000, 500000, 1000000, 2500000, 5000000,
                                                      10000000, 25000000, 50000000, 100000000, 250000000,
                                                      500000000, 1000000000, 2500000000, 5000000000,
                                                      10000000000};
    dp d;
    memset(&d, 0, sizeof d);
    memcpy(d.latency_bounds, bounds, sizeof bounds);
    d.secret_quick = quick;  /* the secret classifier's scan, as a capture runs it */
    if (queue_init(&d.events, sizeof(dp_event)) < 0)
        return -1;
    dp_worker *w;
    if (posix_memalign((void **)&w, 64, sizeof *w)) {
        queue_destroy(&d.events);
        return -1;
    }
    memset(w, 0, sizeof *w);
    w->dp = &d;
    w->epfd = -1;
    dp_capture cap;
    memset(&cap, 0, sizeof cap);
    cap.ring = r;
    w->capture = r ? &cap : NULL;
    dp_conn *c = dp_conn_new(1, -1, -1, 1u << 30);
    if (!c) {
        free(w);
        queue_destroy(&d.events);
        return -1;
    }
    c->cli.fd = c->be.fd = -1;  /* nothing is sent: only the watching is measured */
    c->w = w;
    c->trk.cb = on_result;
    c->trk.ctx = c;
    c->trk.deprecate_eof = deprecate_eof ? 1 : 0;
    c->cap_state = r ? DP_CAP_ON : DP_CAP_OFF;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < iters && !c->close_after; i++) {
        w->now = wall_ns();
        on_client_data(c, cmd, cmd_len);
        w->now = wall_ns();
        on_backend_data(c, resp, resp_len);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    int64_t ns = (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000000 + (t1.tv_nsec - t0.tv_nsec);
    int failed = c->close_after || c->s.commands != (uint64_t)iters || cap.full_reported;
    dp_conn_free(c);
    free(w);
    queue_destroy(&d.events);
    return failed ? -1 : ns;
}
