/* The data plane: relays authenticated connections on worker threads, each with its own epoll
 * loop, without the GIL and without a Python object per command (docs/dataplane.md).
 *
 * Python (the control plane) accepts, does the handshake, then hands a connection's two sockets to
 * a worker (dp_add, through the worker's inbox). From then on the worker forwards bytes the moment
 * they arrive and watches them on the side: the client's with a framer (commands), the server's
 * with the response tracker (tracker.h); it keeps the session state, the metrics (per worker), and
 * appends capture records to the ring (ring.h). Python hears back through one event queue, read on
 * its loop through an eventfd, only for what is rare: a connection closed, a connection parked at
 * a command boundary (so that Python can record its state for a capture), the capture ring full.
 */
#ifndef FASTPROXY_DP_H
#define FASTPROXY_DP_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "ring.h"
#include "tracker.h"

#define DP_READ_SIZE (64 * 1024)   /* one read; also the most a side's output buffer holds */
#define DP_LAST_STMT_ID 0xFFFFFFFFu  /* MariaDB: a statement command's id for the last statement prepared */
#define DP_MAX_PIPELINE 64         /* commands in flight before the client is no longer read */
#define DP_LATENCY_BOUNDS 16       /* latency histogram: bounds given by Python (metrics.py) */
#define DP_USE_MAX 4096            /* a COM_QUERY longer than this is never taken for `USE db` */
#define DP_KEEP_BUFFER_MAX 4096    /* command buffers larger than this are freed once used */
#define DP_SCAN_LIMIT (64 * 1024)  /* bytes of a COM_QUERY looked at for session effects (sqltext.SCAN_LIMIT) */
#define DP_OWN_ANSWER_MAX (16 << 20) /* the answer to one of the proxy's own queries */

/* A connection's part in a capture. PENDING: its state is read (the proxy's own queries) at its next
 * command, before that command; WAIT: inside a transaction that wrote before the capture started,
 * captured from its end (then PENDING). */
enum dp_capture_state { DP_CAP_OFF = 0, DP_CAP_WAIT = 1, DP_CAP_ON = 2, DP_CAP_PENDING = 3 };

/* Why a connection ended (Python logs accordingly). */
enum dp_close_reason {
    DP_CLOSE_NONE = 0,
    DP_CLOSE_CLIENT_QUIT,        /* COM_QUIT */
    DP_CLOSE_CLIENT_GONE,        /* the client closed or reset its connection */
    DP_CLOSE_BACKEND_GONE,       /* the backend closed an idle connection */
    DP_CLOSE_BACKEND_LOST,       /* the backend went away during a command */
    DP_CLOSE_CLIENT_PROTOCOL,    /* malformed client packet (message in close_message) */
    DP_CLOSE_BACKEND_PROTOCOL,   /* malformed backend packet */
    DP_CLOSE_DRAIN,              /* shutdown: closed at a transaction boundary */
    DP_CLOSE_FORCED,             /* shutdown: force-closed after the timeout */
    DP_CLOSE_NO_MEMORY,
};

#define DP_OUTCOME_BACKEND_LOST 4   /* the backend went away before answering (capture/record.py) */
/* DP_MSG_RESUME's argument: DP_RESUME_SET_CAPTURE | the capture state to set, or 0 to keep it */
#define DP_RESUME_SET_CAPTURE 0x100
#define DP_RESUME_CAPTURE_MASK 0xFF

enum dp_event_type { DP_EV_CLOSED = 1, DP_EV_PARKED = 2, DP_EV_CAPTURE_REFUSED = 3, DP_EV_SYNC = 4 };
/* Why a connection waits for Python: its client started a command (held, not forwarded) while the
 * proxy has something to ask the server first; or the answer to the proxy's own query is in. */
enum dp_park_reason { DP_PARK_OWN_QUERY = 1, DP_PARK_OWN_ANSWER = 2 };

/* Counters of one worker. Only its thread writes them; Python sums all workers' when /metrics is
 * scraped. Aligned so that two workers never share a cache line. */
typedef struct dp_stats {
    uint64_t bytes_from_clients;
    uint64_t bytes_to_clients;
    uint64_t latency_sum_ns;
    uint64_t protocol_errors;
    uint64_t connections;        /* open on this worker (a gauge) */
    uint64_t commands[256];
    uint64_t command_errors[256];
    uint64_t latency_buckets[DP_LATENCY_BOUNDS + 1];
} __attribute__((aligned(64))) dp_stats;

/* A running capture, as the workers see it (installed and removed through their inboxes). */
typedef struct dp_capture {
    ring *ring;
    int64_t start_ns;
    uint64_t large_min;          /* payloads of more bytes take the ring's side path (append_large) */
    void *large_ctx;             /* the Python RingBuffer, for append_large (borrowed) */
    uint64_t filtered;           /* statements not written because they may carry a secret */
    uint64_t existing;           /* connections already open when the capture started */
    uint64_t waited_txn;         /* of those, inside a transaction that wrote: captured from its end */
    uint8_t local_infile;        /* record LOCAL INFILE files (KIND_LOCAL_INFILE) ... */
    uint64_t local_infile_limit; /* ... up to this size (larger: the size only) */
    uint64_t infile_files, infile_bytes, infile_too_large;
    int full_reported;           /* the ring refused a record: capture stops (reported once) */
    /* the refused record (written once, before DP_EV_CAPTURE_REFUSED is posted) */
    int refusal;                 /* RING_REFUSED_* */
    uint8_t refused_kind;
    uint8_t refused_cmd;
    uint64_t refused_conn_id;
    uint64_t refused_size;
    int64_t refused_at_ns;
    uint8_t select;              /* a capture filter is set: every command asks Python (select_hook) */
} dp_capture;

/* One command in flight, beside its entry in the tracker's queue. */
typedef struct dp_cmd {
    int64_t start_ns;            /* wall clock when its first byte arrived */
    uint8_t *buf;                /* the payload bytes kept (command byte first) */
    uint32_t len;                /* bytes in buf */
    uint32_t cap;
    uint64_t total;              /* payload length */
    uint8_t capture;             /* captured (the connection was captured when it began) */
    uint8_t semicolon;           /* a ';' in the payload beyond the bytes kept */
} dp_cmd;

/* A LOCAL INFILE file the client sent for the command in flight (for a capture that records them). */
typedef struct dp_infile {
    uint64_t size;
    uint8_t *content;            /* NULL when larger than the capture's limit */
} dp_infile;

/* A prepared statement the session holds. */
typedef struct dp_stmt {
    uint32_t id;
    uint16_t num_params;
    uint8_t used;                /* 0 empty, 1 live, 2 deleted (open addressing) */
    uint8_t filtered;            /* its SQL may carry a secret: none of its commands are captured */
    char *sql;
    uint32_t sql_len;
    uint8_t *types;              /* 2 bytes per parameter, as last bound by an execute; or NULL */
} dp_stmt;

/* What the proxy knows about the session (readable from Python under `lock`). */
typedef struct dp_session {
    char *user;
    char *db;                    /* NULL: none */
    uint64_t capabilities;
    uint16_t status_flags;
    uint8_t txn_wrote;           /* the open transaction has changed rows */
    uint8_t db_stale;            /* the database may have changed and the server did not say to what */
    uint8_t multi_statements;    /* CLIENT_MULTI_STATEMENTS, or COM_SET_OPTION turned them on */
    dp_stmt *stmts;              /* open-addressing table, power-of-two size */
    uint32_t stmts_cap;
    uint32_t stmts_len;          /* live */
    uint32_t stmts_used;         /* live + deleted */
    uint32_t last_prepared;      /* the id of the last statement prepared: MariaDB's id 0xFFFFFFFF names it */
    uint8_t has_last_prepared;
    uint64_t commands;
    uint8_t last_cmd;
    uint8_t last_outcome;
    uint16_t last_err_code;
    uint8_t has_last;
    int64_t last_start_ns;
    int64_t last_end_ns;
    int64_t last_arrival_ns;
} dp_session;

struct dp_conn;
struct dp_worker;
struct dp_rmsg;

/* Bytes waiting: data[off, off + len) of cap allocated. */
typedef struct dp_buf {
    uint8_t *data;
    uint32_t off, len, cap;
} dp_buf;

typedef struct dp_side {
    struct dp_conn *conn;
    int fd;
    uint8_t is_client;
    uint32_t registered;         /* epoll events currently asked for; 0 = not in the epoll set (io_uring:
                                  * what the side wants, EPOLLIN meaning a recv is to be kept armed) */
    dp_buf out;                  /* bytes not yet written to this side (with TLS: encrypted); on io_uring,
                                  * those of the send in flight (the kernel's until it completes) */
    /* io_uring only: a recv / a send in flight; the bytes queued behind that send; what a recv
     * brought while the side was not to be read (backpressure, parked), read first when it is */
    uint8_t recv_armed;          /* a recv is in flight (which kind: U_ARMED_* in dp.c) */
    uint8_t recv_cancel;         /* ... and its cancel is asked for */
    uint8_t send_armed;
    dp_buf pend;
    dp_buf stash;
    uint8_t stash_eof;           /* ... and the end (EOF or error) that came after it */
    uint8_t close_deferred;      /* closed by the connection, but a send is still to complete first */
    int64_t stash_arrived_ns;
    struct dp_rmsg *rmsg;        /* recvmsg's header and control buffer (a stamped backend) */
    /* TLS on this side: an OpenSSL SSL over memory BIOs, made by Python's ssl module during the
     * handshake (Python keeps it alive until the connection is reported closed) */
    void *ssl;
    uint8_t tls_more;            /* OpenSSL may hold more decrypted bytes: read on without readiness */
    uint8_t ready_queued;        /* in the worker's ready list */
    uint8_t stamped;             /* SO_TIMESTAMPNS is on (a backend socket, once a capture ran) */
    int64_t arrived_ns;          /* the kernel's arrival time of the last bytes read (0: unknown) */
} dp_side;

typedef struct dp_conn {
    struct dp_worker *w;
    uint64_t conn_id;
    void *py_handle;             /* the Python object this connection belongs to (borrowed) */
    dp_side cli, be;
    /* client framer */
    uint8_t fr_hdr[4];
    uint8_t fr_hdr_have;
    uint8_t fr_prev_max;
    uint8_t fr_mode;             /* what the current logical client packet is (dp.c) */
    uint8_t infile;              /* the client is sending a LOCAL INFILE file */
    uint32_t fr_remaining;       /* payload bytes left in the current physical packet */
    uint64_t fr_total;           /* payload bytes of the current logical packet so far */
    uint64_t fr_want;            /* payload bytes of the command being read to keep */
    uint64_t max_packet_size;
    int64_t infile_seen;
    /* commands in flight (ring, parallel to the tracker's queue) + the one being read at q[tail] */
    dp_cmd *q;
    uint32_t q_head, q_len, q_cap;
    uint8_t reading_cmd;         /* q[tail] is being filled */
    tracker trk;
    dp_session s;
    pthread_mutex_t lock;        /* guards the session's strings and statements against snapshots */
    /* capture */
    uint8_t cap_state;           /* enum dp_capture_state */
    /* lifecycle */
    uint8_t parked;              /* handed to Python (until DP_MSG_RESUME): the worker leaves it alone */
    uint8_t draining;            /* shutdown: close at the next transaction boundary */
    uint8_t closing;             /* closed but for flushing what the client must still get */
    uint8_t dead;                /* finished: Python owns it (frees it) */
    uint8_t zombie;              /* finished, but io_uring operations on it are still in flight */
    uint8_t close_after;         /* close (for this reason) once this event is handled, e.g. COM_QUIT */
    uint8_t closed_captured;     /* it was captured when it closed (Python records the close) */
    uint8_t sql_prepares_dropped;/* the capture dropped an SQL PREPARE of it: its queries go past Python */
    uint8_t dbcs;                /* its character set reads SQL differently (the classifier's policy decides) */
    /* the proxy's own queries (docs/dataplane.md): the client's bytes held meanwhile, the answer */
    uint8_t *held;
    size_t held_len;
    uint8_t held_skip;           /* forward the held bytes without asking first (it reads diagnostics) */
    uint8_t own_active;          /* a query of the proxy is on the backend connection */
    uint8_t own_lost;            /* the backend went away during it */
    tracker *own_trk;
    uint8_t *own_ans;
    size_t own_len, own_cap;
    uint8_t *be_rest;            /* backend bytes after the answer: the client's, once resumed */
    size_t be_rest_len;
    /* the server's last word on an idle connection (e.g. 1927 connection killed) */
    uint16_t unsol_err_code;
    char unsol_err_msg[200];
    /* LOCAL INFILE files of the command in flight, for a capture that records them */
    uint8_t infile_capture;
    uint64_t infile_size;
    uint8_t *infile_buf;
    size_t infile_len, infile_cap;
    dp_infile *infiles;
    uint32_t ninfiles;
    uint8_t cli_lost;            /* the client side failed (EOF, reset): handled once the event is */
    uint8_t be_lost;
    uint8_t close_reason;
    char close_message[200];
    char backend_addr[64];
    struct dp_conn *prev, *next; /* the worker's list */
} dp_conn;

typedef struct dp_msg {
    int type;
    dp_conn *conn;
    void *ptr;
    uint64_t arg;
} dp_msg;

typedef struct dp_event {
    int type;
    dp_conn *conn;
    uint64_t arg;
} dp_event;

typedef struct dp_queue {        /* a mutex-guarded vector (inbox or event queue) */
    pthread_mutex_t lock;
    void *items;
    size_t len, cap, item_size;
    int efd;                     /* eventfd signalled when the queue turns non-empty */
} dp_queue;

struct dp;

typedef struct dp_worker {
    dp_stats stats;
    struct dp *dp;
    int index;
    int epfd;
    dp_queue inbox;
    uint8_t inbox_marker;        /* its address tags the inbox's eventfd in the epoll set */
    dp_capture *capture;         /* installed through the inbox */
    struct uring *ring;          /* io_uring in place of epoll (made by the worker's thread), or NULL */
    uint8_t started;             /* its thread has chosen its I/O (dp_worker_io) */
    uint32_t zombies;            /* finished connections not yet reported (see zombie in dp_conn) */
    dp_conn *conns;              /* list of live connections */
    uint64_t nconns;             /* live connections (read by Python to place new ones) */
    dp_conn *finished;           /* closed during this batch of events: reported after it */
    int64_t now;                 /* wall clock at the current event */
    uint8_t stop;
    uint8_t *rbuf;               /* DP_READ_SIZE */
    uint8_t *tbuf;               /* DP_READ_SIZE: encrypted bytes on their way in or out (TLS) */
    /* sides to read after the batch though no readiness / completion will say so: TLS sides whose
     * OpenSSL may hold more decrypted bytes, and (io_uring) sides with a stash */
    dp_side **ready, **ready_spare;
    uint32_t nready, ready_cap, spare_cap;
} dp_worker;

/* The ring's side path for records too large for it (Python, takes the GIL): RING_REFUSED_NONE or
 * why it was refused. */
typedef int (*dp_append_large)(void *ctx, const RecordHead *h, const uint8_t *payload, size_t n);
/* The secret classifier's pre-check (no GIL): 1 when its policy must look at the statement. */
typedef int (*dp_secret_quick)(const uint8_t *sql, size_t n);
/* Capture policy for a captured COM_QUERY / COM_STMT_PREPARE (Python, takes the GIL): the verdict
 * (DP_CLEAN: record it as is; DP_REDACTED: record *out, malloc'd; DP_DROPPED: not at all) | the
 * DP_SQL_DROPPED bit while the connection has SQL-level PREPAREs the capture dropped. */
typedef int (*dp_capture_hook)(void *conn, const uint8_t *payload, size_t n, const trk_result *r, uint8_t **out,
                               size_t *out_n);
/* Session policy in Python (takes the GIL), for the rare commands whose effect the C session does not
 * know: DP_HOOK_QUERY (a COM_QUERY that may PREPARE, create a temporary table, USE...; returns 1
 * when the current database may have changed), DP_HOOK_FORGET (COM_RESET_CONNECTION, COM_CHANGE_USER). */
typedef int (*dp_session_hook)(void *conn, int kind, const uint8_t *payload, size_t n, const trk_result *r,
                               int flags);
/* Capture filter in Python (takes the GIL), asked for every command of a captured connection while
 * one is set: 1 to record the command, 0 to leave it out (the filter counts it). */
typedef int (*dp_select_hook)(void *conn, const uint8_t *payload, size_t n, const trk_result *r);
enum { DP_CLEAN = 0, DP_REDACTED = 1, DP_DROPPED = 2, DP_VERDICT_MASK = 3, DP_SQL_DROPPED = 16 };
enum { DP_HOOK_QUERY = 1, DP_HOOK_FORGET = 2 };

/* Which I/O the workers use: io_uring where this kernel and the process's seccomp profile allow it,
 * else epoll (AUTO); or one of them (URING fails dp_init where it is not allowed). */
enum dp_io { DP_IO_AUTO = 0, DP_IO_EPOLL = 1, DP_IO_URING = 2 };

typedef struct dp {
    int nworkers;
    int io;                         /* enum dp_io asked for */
    dp_worker *workers;
    dp_queue events;
    int64_t latency_bounds[DP_LATENCY_BOUNDS];
    dp_secret_quick secret_quick;   /* the classifier's pre-check, run without the GIL */
    dp_capture_hook capture_hook;   /* its policy, with the GIL, only when the pre-check says so */
    dp_session_hook session_hook;
    dp_append_large append_large;
    dp_select_hook select_hook;     /* the capture's filter, with the GIL, only while one is set */
} dp;

/* lifecycle (Python thread) */
int64_t dp_bench_commands(const uint8_t *cmd, size_t cmd_len, const uint8_t *resp, size_t resp_len, long iters,
                          ring *r, int deprecate_eof, dp_secret_quick quick);
int dp_init(dp *d, int nworkers, const int64_t *latency_bounds, int io);  /* io: enum dp_io */
int dp_worker_io(const dp_worker *w);        /* DP_IO_URING or DP_IO_EPOLL: what it runs on (once started) */
static inline int dp_worker_started(const dp_worker *w) { return __atomic_load_n(&w->started, __ATOMIC_ACQUIRE); }
void dp_destroy(dp *d);
void dp_worker_run(dp_worker *w);             /* a worker thread's body: returns after DP_MSG_STOP */
dp_conn *dp_conn_new(uint64_t conn_id, int client_fd, int backend_fd, uint64_t max_packet_size);
void dp_conn_free(dp_conn *c);
int dp_conn_set_initial(dp_conn *c, const uint8_t *client_out, size_t n_out);
/* TLS on either side (NULL: plain): SSL objects over memory BIOs, their handshake done. Before
 * dp_conn_set_initial (whose bytes are then encrypted) and before the connection is posted. */
void dp_conn_set_tls(dp_conn *c, void *client_ssl, void *backend_ssl);
/* Whether `ssl` is a usable SSL object: memory BIOs, handshake finished, on the expected side, with
 * the protocol version Python reports for it (a check that the pointer is what it should be). */
int dp_tls_check(void *ssl, int server_side, const char *version);
int dp_post(dp_worker *w, int type, dp_conn *c, void *ptr, uint64_t arg);
size_t dp_take_events(dp *d, dp_event **out);  /* swaps the event vector out; caller frees */

enum dp_msg_type {
    DP_MSG_ADD = 1,       /* conn; arg: initial capture state; ptr: initial client bytes (dp_bytes*) */
    DP_MSG_RESUME,        /* conn: Python is done with a parked connection */
    DP_MSG_OWN_QUERY,     /* conn; ptr: a COM_QUERY packet of the proxy to send (malloc'd) */
    DP_MSG_CAPTURE,       /* ptr: dp_capture* or NULL */
    DP_MSG_DRAIN,
    DP_MSG_CLOSE_ALL,
    DP_MSG_SYNC,          /* arg: token, answered by DP_EV_SYNC */
    DP_MSG_STOP,
};

/* Bytes handed to a worker with a new connection: already read from the client (after its last
 * handshake packet) and from the backend (after its OK), to be processed as if just read. */
typedef struct dp_bytes {
    uint8_t *client_in;
    size_t client_in_len;
    uint8_t *backend_in;
    size_t backend_in_len;
} dp_bytes;



/* session (dp_session.c) */
void dp_session_free(dp_session *s);
void dp_session_forget_statements(dp_conn *c);
int dp_worth_scanning(const uint8_t *p, size_t n, int multi_statements, int semicolon);
dp_stmt *dp_stmt_find(dp_session *s, uint32_t id);
int dp_session_apply(dp_conn *c, const dp_cmd *cmd, const trk_result *r);
int dp_used_database(const uint8_t *p, size_t n, const uint8_t **name, size_t *name_len, int *quoted);
int dp_parse_change_user(const uint8_t *p, size_t n, uint64_t caps, const uint8_t **user, size_t *user_len,
                         const uint8_t **db, size_t *db_len, size_t *auth_at, size_t *auth_len);
uint64_t dp_execute_types_at(dp_session *s, const uint8_t *p, size_t n, uint16_t *nparams);

#endif
