/* The floor: a minimal single-threaded TCP relay on epoll that only copies bytes, as the fastest a
 * relay can be on this kernel with one thread (bench/e2e.py builds and runs it beside HAProxy and
 * fastproxy: "c-relay"). Same I/O pattern as fastproxy's data plane (level-triggered epoll, one
 * recv per readiness, send at once, the rest kept and the source paused) minus everything that
 * understands MySQL.
 *
 *     gcc -O2 -o c_relay bench/c_relay.c && ./c_relay LISTEN_PORT BACKEND_PORT
 */
#define _GNU_SOURCE
#include "relay_args.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 65536

struct side;
struct side {
    int fd;
    struct side *peer;
    char *out;        /* bytes not yet written to this side */
    size_t out_len, out_off;
    unsigned events;
};

static int ep;
static char rbuf[BUF];

static void watch(struct side *s, unsigned want) {
    if (want == s->events)
        return;
    struct epoll_event ev = {.events = want, .data.ptr = s};
    epoll_ctl(ep, s->events ? (want ? EPOLL_CTL_MOD : EPOLL_CTL_DEL) : EPOLL_CTL_ADD, s->fd, &ev);
    s->events = want;
}

static void settle(struct side *a) {
    struct side *b = a->peer;
    watch(a, (b->out_len ? 0 : EPOLLIN) | (a->out_len ? EPOLLOUT : 0));
    watch(b, (a->out_len ? 0 : EPOLLIN) | (b->out_len ? EPOLLOUT : 0));
}

static void drop(struct side *a) {
    struct side *b = a->peer;
    close(a->fd);
    close(b->fd);
    free(a->out);
    free(b->out);
    free(a < b ? a : b);  /* the pair was allocated at once */
}

static int flush(struct side *s) {
    while (s->out_len) {
        ssize_t k = send(s->fd, s->out + s->out_off, s->out_len, MSG_NOSIGNAL);
        if (k < 0)
            return errno == EAGAIN ? 0 : -1;
        s->out_off += k;
        s->out_len -= k;
    }
    s->out_off = 0;
    return 0;
}

static int relay(struct side *from) {
    struct side *to = from->peer;
    ssize_t n = recv(from->fd, rbuf, BUF, 0);
    if (n == 0)
        return -1;
    if (n < 0)
        return errno == EAGAIN ? 0 : -1;
    ssize_t k = send(to->fd, rbuf, n, MSG_NOSIGNAL);
    if (k < 0) {
        if (errno != EAGAIN)
            return -1;
        k = 0;
    }
    if (k < n) {
        to->out = realloc(to->out, n - k);
        memcpy(to->out, rbuf + k, n - k);
        to->out_len = n - k;
        to->out_off = 0;
    }
    return 0;
}

int main(int argc, char **argv) {
    struct sockaddr_in ba;
    int lfd = relay_listen(argc, argv, SOCK_NONBLOCK, &ba), one = 1;
    ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    struct epoll_event evs[128];
    for (;;) {
        int n = epoll_wait(ep, evs, 128, -1);
        for (int i = 0; i < n; i++) {
            struct side *s = evs[i].data.ptr;
            if (s == (void *)1)
                continue;  /* its pair was closed earlier in this batch */
            if (!s) {
                int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                if (cfd < 0)
                    continue;
                int bfd = socket(AF_INET, SOCK_STREAM, 0);  /* blocking connect: loopback, instant */
                if (connect(bfd, (struct sockaddr *)&ba, sizeof ba) < 0) {
                    close(cfd);
                    close(bfd);
                    continue;
                }
                setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                setsockopt(bfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                struct side *pair = calloc(2, sizeof *pair);
                pair[0].fd = cfd;
                pair[1].fd = bfd;
                pair[0].peer = &pair[1];
                pair[1].peer = &pair[0];
                fcntl(bfd, F_SETFL, O_NONBLOCK);
                settle(&pair[0]);
                continue;
            }
            int dead = 0;
            if (evs[i].events & EPOLLOUT)
                dead |= flush(s) < 0;
            if (!dead && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                dead |= relay(s) < 0;
            if (dead) {
                /* skip later events of this pair in the same batch */
                for (int j = i + 1; j < n; j++)
                    if (evs[j].data.ptr == s->peer || evs[j].data.ptr == s)
                        evs[j].data.ptr = (void *)1;
                epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                epoll_ctl(ep, EPOLL_CTL_DEL, s->peer->fd, NULL);
                drop(s);
                continue;
            }
            settle(s);
        }
    }
}
