/* What the kernel's arrival time costs a read: the part of a capture's cost that callgrind
 * (bench/capture_instructions.py) cannot count, because it is kernel work.
 *
 *     gcc -O2 -o /tmp/recv_ts bench/recv_timestamp_cost.c && /tmp/recv_ts [iterations] [rounds]
 *
 * A loopback TCP pair; each iteration writes a 64-byte message on one end and reads it on the
 * other, the way a worker reads a backend's answer: plain recv() (capture off) against recvmsg()
 * with SO_TIMESTAMPNS and room for the control message (capture on, dp.c's read while a capture
 * runs). The two run interleaved, round by round; per round the ns per iteration of each and
 * their difference are printed, then the medians. Both sides pay the same write, so the
 * difference is the timestamped read's extra cost. The option is switched off for the plain
 * rounds: while any socket asks for arrival times the kernel stamps every packet it receives,
 * which is part of the cost (it stops doing so lazily: the plain run starts 50 ms later). A third run per round reads plainly while the other pair asks for
 * arrival times: what that global stamping costs a packet of a connection that does not ask
 * (a proxied query crosses loopback four times; the worker asks for the time on one of them). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(1); }

static void pair(int fds[2]) {
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (l < 0 || bind(l, (void *)&a, sizeof a) || listen(l, 1) || getsockname(l, (void *)&a, &len)) die("listen");
    fds[0] = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fds[0], (void *)&a, sizeof a)) die("connect");
    fds[1] = accept(l, NULL, NULL);
    if (fds[1] < 0) die("accept");
    setsockopt(fds[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    close(l);
}

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

/* ns per write + read; `stamped`: recvmsg with the arrival time, else recv */
static double run(int fds[2], long n, int stamped) {
    char msg[64] = {0}, buf[4096], ctl[CMSG_SPACE(sizeof(struct timespec))];
    struct iovec iov = {buf, sizeof buf};
    long seen = 0;
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        if (write(fds[0], msg, sizeof msg) != sizeof msg) die("write");
        ssize_t k;
        if (stamped) {
            struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
            k = recvmsg(fds[1], &m, 0);
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) seen++;
        } else {
            k = recv(fds[1], buf, sizeof buf, 0);
        }
        if (k <= 0) die("read");
    }
    double t = (now_ns() - t0) / n;
    if (stamped && seen < n / 2) {
        fprintf(stderr, "only %ld of %ld reads had an arrival time\n", seen, n);
        exit(1);
    }
    return t;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000;
    int rounds = argc > 2 ? atoi(argv[2]) : 9, one = 1;
    int plain[2], stamped[2];
    pair(plain);
    pair(stamped);
    int zero = 0;
    double *d = calloc(rounds, sizeof *d), *p = calloc(rounds, sizeof *p), *s = calloc(rounds, sizeof *s);
    double *g = calloc(rounds, sizeof *g);
    for (int r = -1; r < rounds; r++) {  /* round -1 warms up */
        if (setsockopt(stamped[1], SOL_SOCKET, SO_TIMESTAMPNS, &zero, sizeof zero)) die("SO_TIMESTAMPNS");
        usleep(50000);  /* the kernel stops stamping every packet lazily (a deferred work item) */
        double tp = run(plain, r < 0 ? n / 10 : n, 0);
        if (setsockopt(stamped[1], SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one)) die("SO_TIMESTAMPNS");
        double ts = run(stamped, r < 0 ? n / 10 : n, 1);
        double tg = run(plain, r < 0 ? n / 10 : n, 0);  /* stamping still on, for the other pair */
        if (r < 0)
            continue;
        p[r] = tp;
        s[r] = ts;
        d[r] = s[r] - p[r];
        g[r] = tg - tp;
        printf("round %d: recv %.0f ns, recvmsg+timestamp %.0f ns, difference %+.0f ns; recv while another "
               "socket asks: %+.0f ns\n", r + 1, p[r], s[r], d[r], g[r]);
    }
    qsort(p, rounds, sizeof *p, cmp);
    qsort(s, rounds, sizeof *s, cmp);
    qsort(d, rounds, sizeof *d, cmp);
    qsort(g, rounds, sizeof *g, cmp);
    printf("median: recv %.0f ns, recvmsg+timestamp %.0f ns, same-round difference %+.0f ns; a plain recv while "
           "another socket asks: %+.0f ns (%d rounds of %ld)\n", p[rounds / 2], s[rounds / 2], d[rounds / 2],
           g[rounds / 2], rounds, n);
    return 0;
}
