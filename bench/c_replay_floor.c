/* The replayer's floor: the least CPU any replayer can spend per command on this kernel with one
 * thread, one send and one receive per command (bench/replay_rate.py runs it beside `fastproxy
 * replay`, as bench/c_relay.c is the relay's floor beside the proxy). N connections (logged in with
 * libmariadb, then driven raw), each sends sysbench's point select (COM_QUERY), waits for the whole
 * response, sends the next: no pacing, no order across connections, no verdict, no capture to read:
 * nothing but the network path and a response's framing.
 *
 * Two ways to drive the sockets (the 7th argument):
 * - epoll: level-triggered epoll, one write(2) and one read(2) per command;
 * - uring (built with -DWITH_URING -luring): io_uring, a send and a receive per command queued and
 *   submitted together for every connection that is ready, one io_uring_enter a round (as the
 *   proxy's data plane does, fastproxy/csrc/uring.c).
 *
 * DEPTH (the 8th argument, default 1) is how many commands a connection keeps in flight: 1 is a
 * replay (each command waits for the previous one's response, as the capture's client did); more
 * is pipelining (the server reads the next command while it answers this one; the responses of
 * one read are answered with one write of as many new commands). What pipelining would save a
 * replayer at speed 0.
 *
 *     gcc -O2 [-DWITH_URING] -o c_replay_floor bench/c_replay_floor.c $(mariadb_config --cflags --libs) [-luring]
 *     ./c_replay_floor PORT PASSWORD_FILE CONNECTIONS SECONDS TABLES TABLE_SIZE [epoll|uring] [DEPTH]
 *
 * Prints one JSON line: commands, CPU seconds (user, system) of the process during the run, wall.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <mysql.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#ifdef WITH_URING
#include <liburing.h>
#endif

enum { FIRST, COLUMNS, COLUMNS_EOF, ROWS };

struct conn {
    MYSQL *mysql;
    int fd;
    unsigned char in[1 << 16];
    size_t in_len;
    int state;
    long columns_left;
    /* the next commands, framed (up to MAX_DEPTH); two buffers so that on io_uring a send still
     * in flight is never overwritten by the next */
    unsigned char out_buf[2][128 * 64];
    unsigned char *out;
    int out_len;
    int sends;          /* sends queued so far (io_uring): the next one takes out_buf[sends % 2] */
    int send_len[2];    /* the length of each send in flight, by buffer */
    int sends_in_flight;
};

enum { MAX_DEPTH = 64 };
static unsigned long long commands;
static long tables, table_size;
static int depth = 1;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu(struct rusage *r, int system) {
    struct timeval *t = system ? &r->ru_stime : &r->ru_utime;
    return t->tv_sec + t->tv_usec / 1e6;
}

/* The next k commands into c->out (one buffer, one write). */
static void next_queries(struct conn *c, int k) {
    c->out = c->out_buf[c->sends % 2];
    c->out_len = 0;
    for (int i = 0; i < k; i++) {
        unsigned char *pkt = c->out + c->out_len;
        int n = snprintf((char *)pkt + 5, 123, "SELECT c FROM sbtest%ld WHERE id=%ld",
                         1 + random() % tables, 1 + random() % table_size);
        pkt[0] = (n + 1) & 0xFF;
        pkt[1] = ((n + 1) >> 8) & 0xFF;
        pkt[2] = 0;
        pkt[3] = 0;     /* sequence id */
        pkt[4] = 0x03;  /* COM_QUERY */
        c->out_len += n + 5;
    }
}

static void send_queries(struct conn *c, int k) {
    next_queries(c, k);  /* epoll: the write is done when it returns; out_buf[0] serves every time */
    if (write(c->fd, c->out, c->out_len) != c->out_len) {
        perror("write");
        exit(1);
    }
}

/* One packet of the response; 1 when the response is complete. */
static int on_packet(struct conn *c, const unsigned char *p, size_t len) {
    int eof = len > 0 && len < 9 && p[0] == 0xFE;
    switch (c->state) {
    case FIRST:
        if (p[0] == 0x00 || p[0] == 0xFF)
            return 1;  /* OK / ERR */
        c->columns_left = p[0];  /* < 251 columns here */
        c->state = COLUMNS;
        return 0;
    case COLUMNS:
        if (--c->columns_left == 0)
            c->state = COLUMNS_EOF;
        return 0;
    case COLUMNS_EOF:
        c->state = ROWS;
        return 0;
    default:
        if (p[0] == 0xFF)
            return 1;
        if (eof) {
            unsigned status = len >= 5 ? p[3] | p[4] << 8 : 0;
            if (status & 0x0008) {  /* SERVER_MORE_RESULTS_EXIST */
                c->state = FIRST;
                return 0;
            }
            return 1;
        }
        return 0;
    }
}

/* n more bytes arrived in c->in: how many responses they complete. */
static int on_received(struct conn *c, ssize_t n) {
    if (n <= 0) {
        fprintf(stderr, "read: %s\n", n == 0 ? "closed" : strerror(n < 0 ? (int)-n : errno));
        exit(1);
    }
    c->in_len += n;
    size_t off = 0;
    int done = 0;
    while (c->in_len - off >= 4) {
        size_t len = c->in[off] | c->in[off + 1] << 8 | c->in[off + 2] << 16;
        if (c->in_len - off < 4 + len)
            break;
        if (on_packet(c, c->in + off + 4, len)) {
            done++;
            c->state = FIRST;  /* the next response (pipelined) starts with the next packet */
        }
        off += 4 + len;
    }
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
    commands += done;
    return done;
}

static void on_readable(struct conn *c) {
    ssize_t n = read(c->fd, c->in + c->in_len, sizeof c->in - c->in_len);
    int done = on_received(c, n < 0 ? -errno : n);
    if (done)
        send_queries(c, done);
}

static void run_epoll(struct conn *conns, int n, double end) {
    int ep = epoll_create1(0);
    for (int i = 0; i < n; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
    }
    for (int i = 0; i < n; i++)
        send_queries(&conns[i], depth);
    struct epoll_event evs[64];
    while (now() < end) {
        int k = epoll_wait(ep, evs, 64, 100);
        for (int i = 0; i < k; i++)
            on_readable(evs[i].data.ptr);
    }
}

#ifdef WITH_URING
enum { OP_SEND = 0, OP_RECV = 1 };  /* in the low bit of a completion's user data */

static void queue_op(struct io_uring *ring, struct conn *c, int op) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) {
        io_uring_submit(ring);
        sqe = io_uring_get_sqe(ring);
    }
    if (op == OP_SEND) {
        if (c->sends_in_flight == 2) {  /* never here: a response comes after its command is sent */
            fprintf(stderr, "a third send in flight\n");
            exit(1);
        }
        io_uring_prep_send(sqe, c->fd, c->out, c->out_len, 0);
        c->send_len[c->sends % 2] = c->out_len;
        c->sends++;
        c->sends_in_flight++;
    } else {
        io_uring_prep_recv(sqe, c->fd, c->in + c->in_len, sizeof c->in - c->in_len, 0);
    }
    io_uring_sqe_set_data64(sqe, (unsigned long long)(uintptr_t)c | op);
}

static void run_uring(struct conn *conns, int n, double end) {
    struct io_uring ring;
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    int r = io_uring_queue_init_params(4 * n + 8, &ring, &p);
    if (r < 0) {
        fprintf(stderr, "io_uring_queue_init: %s\n", strerror(-r));
        exit(1);
    }
    for (int i = 0; i < n; i++) {
        next_queries(&conns[i], depth);
        queue_op(&ring, &conns[i], OP_SEND);
        queue_op(&ring, &conns[i], OP_RECV);
    }
    while (now() < end) {
        struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 100000000};
        struct io_uring_cqe *cqe;
        io_uring_submit_and_wait_timeout(&ring, &cqe, 1, &ts, NULL);
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            seen++;
            struct conn *c = (struct conn *)(uintptr_t)(cqe->user_data & ~1ULL);
            if ((cqe->user_data & 1) == OP_SEND) {
                /* sends complete in the order queued (one socket): the oldest in flight */
                int oldest = (c->sends - c->sends_in_flight) % 2;
                if (cqe->res != c->send_len[oldest]) {
                    fprintf(stderr, "send: %s\n", cqe->res < 0 ? strerror(-cqe->res) : "short");
                    exit(1);
                }
                c->sends_in_flight--;
                continue;
            }
            int done = on_received(c, cqe->res);
            if (done) {  /* the previous send completed before its responses arrived */
                next_queries(c, done);
                queue_op(&ring, c, OP_SEND);
            }
            queue_op(&ring, c, OP_RECV);
        }
        io_uring_cq_advance(&ring, seen);
    }
}
#endif

static char *read_password(const char *path) {
    static char buf[256];
    FILE *f = fopen(path, "r");
    if (!f || !fgets(buf, sizeof buf, f)) {
        perror(path);
        exit(2);
    }
    fclose(f);
    buf[strcspn(buf, "\r\n")] = 0;
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 7 || argc > 9) {
        fprintf(stderr, "usage: %s PORT PASSWORD_FILE CONNECTIONS SECONDS TABLES TABLE_SIZE [epoll|uring] [DEPTH]\n", argv[0]);
        return 2;
    }
    int uring = argc >= 8 && strcmp(argv[7], "uring") == 0;
    depth = argc == 9 ? atoi(argv[8]) : 1;
    if (depth < 1 || depth > MAX_DEPTH) {
        fprintf(stderr, "DEPTH: 1 to %d\n", MAX_DEPTH);
        return 2;
    }
#ifndef WITH_URING
    if (uring) {
        fprintf(stderr, "built without io_uring (-DWITH_URING -luring)\n");
        return 2;
    }
#endif
    int port = atoi(argv[1]), n = atoi(argv[3]);
    double seconds = atof(argv[4]);
    tables = atol(argv[5]);
    table_size = atol(argv[6]);
    const char *password = read_password(argv[2]);
    struct conn *conns = calloc(n, sizeof *conns);
    for (int i = 0; i < n; i++) {
        struct conn *c = &conns[i];
        c->mysql = mysql_init(NULL);
        if (!mysql_real_connect(c->mysql, "127.0.0.1", "root", password, "sbtest", port, NULL, 0)) {
            fprintf(stderr, "connect: %s\n", mysql_error(c->mysql));
            return 1;
        }
        c->fd = mysql_get_socket(c->mysql);
    }
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    double t0 = now(), end = t0 + seconds;
#ifdef WITH_URING
    if (uring)
        run_uring(conns, n, end);
    else
#endif
        run_epoll(conns, n, end);
    double wall = now() - t0;
    getrusage(RUSAGE_SELF, &r1);
    printf("{\"commands\": %llu, \"user_s\": %.4f, \"system_s\": %.4f, \"wall_s\": %.4f}\n", commands,
           cpu(&r1, 0) - cpu(&r0, 0), cpu(&r1, 1) - cpu(&r0, 1), wall);
    /* the connections' last responses are left unread: the process exits */
    return 0;
}
