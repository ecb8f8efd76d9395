/* What bench/c_relay.c and bench/c_relay_uring.c share: their command line (LISTEN_PORT
 * BACKEND_PORT, both on loopback) and the listening socket. */
#ifndef RELAY_ARGS_H
#define RELAY_ARGS_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

/* The listening socket (flags: e.g. SOCK_NONBLOCK) and the backend's address; exits on a bad
 * command line or a port it cannot listen on. */
static int relay_listen(int argc, char **argv, int flags, struct sockaddr_in *backend) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT BACKEND_PORT\n", argv[0]);
        exit(2);
    }
    int one = 1;
    struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    *backend = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(atoi(argv[2])),
                                    .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int lfd = socket(AF_INET, SOCK_STREAM | flags, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&la, sizeof la) < 0 || listen(lfd, 1024) < 0) {
        perror("listen");
        exit(1);
    }
    return lfd;
}

#endif
