/* The replayer's floor: the least CPU any replayer can spend per command on this kernel with one
 * thread, one send and one receive per command (bench/replay_rate.py runs it beside `fastproxy
 * replay`, as bench/c_relay.c is the relay's floor beside the proxy). N connections (logged in with
 * libmariadb, then driven raw), each sends sysbench's point select (COM_QUERY), waits for the whole
 * response, sends the next: no pacing, no order across connections, no verdict, no capture to read:
 * nothing but the network path and a response's framing.
 *
 * Two ways to drive the sockets (the last argument):
 * - epoll: level-triggered epoll, one write(2) and one read(2) per command;
 * - uring (built with -DWITH_URING -luring): io_uring, a send and a receive per command queued and
 *   submitted together for every connection that is ready, one io_uring_enter a round (as the
 *   proxy's data plane does, fastproxy/csrc/uring.c).
 *
 *     gcc -O2 [-DWITH_URING] -o c_replay_floor bench/c_replay_floor.c $(mariadb_config --cflags --libs) [-luring]
 *     ./c_replay_floor PORT PASSWORD_FILE CONNECTIONS SECONDS TABLES TABLE_SIZE [epoll|uring]
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
    unsigned char out[128];  /* the next command, framed */
    int out_len;
};

static unsigned long long commands;
static long tables, table_size;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu(struct rusage *r, int system) {
    struct timeval *t = system ? &r->ru_stime : &r->ru_utime;
    return t->tv_sec + t->tv_usec / 1e6;
}

/* The next command into c->out; its response is read from the first packet on. */
static void next_query(struct conn *c) {
    unsigned char *pkt = c->out;
    int n = snprintf((char *)pkt + 5, sizeof c->out - 5, "SELECT c FROM sbtest%ld WHERE id=%ld",
                     1 + random() % tables, 1 + random() % table_size);
    pkt[0] = (n + 1) & 0xFF;
    pkt[1] = ((n + 1) >> 8) & 0xFF;
    pkt[2] = 0;
    pkt[3] = 0;     /* sequence id */
    pkt[4] = 0x03;  /* COM_QUERY */
    c->out_len = n + 5;
    c->state = FIRST;
}

static void send_query(struct conn *c) {
    next_query(c);
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

/* n more bytes arrived in c->in; 1 when they complete the response. */
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
        done = on_packet(c, c->in + off + 4, len);
        off += 4 + len;
        if (done)
            break;
    }
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
    if (done)
        commands++;
    return done;
}

static void on_readable(struct conn *c) {
    ssize_t n = read(c->fd, c->in + c->in_len, sizeof c->in - c->in_len);
    if (on_received(c, n < 0 ? -errno : n))
        send_query(c);
}

static void run_epoll(struct conn *conns, int n, double end) {
    int ep = epoll_create1(0);
    for (int i = 0; i < n; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
    }
    for (int i = 0; i < n; i++)
        send_query(&conns[i]);
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
    if (op == OP_SEND)
        io_uring_prep_send(sqe, c->fd, c->out, c->out_len, 0);
    else
        io_uring_prep_recv(sqe, c->fd, c->in + c->in_len, sizeof c->in - c->in_len, 0);
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
        next_query(&conns[i]);
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
                if (cqe->res != c->out_len) {
                    fprintf(stderr, "send: %s\n", cqe->res < 0 ? strerror(-cqe->res) : "short");
                    exit(1);
                }
                continue;
            }
            if (on_received(c, cqe->res)) {
                next_query(c);
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
    if (argc != 7 && argc != 8) {
        fprintf(stderr, "usage: %s PORT PASSWORD_FILE CONNECTIONS SECONDS TABLES TABLE_SIZE [epoll|uring]\n", argv[0]);
        return 2;
    }
    int uring = argc == 8 && strcmp(argv[7], "uring") == 0;
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
