/* The response tracker: follows the server's side of the MySQL command phase, packet by packet,
 * without keeping the packets. One implementation, used by the data plane (fastproxy/csrc/dp.c)
 * and, through the ResponseTracker wrapper of fastproxy/_packet.pyx, by the replay client.
 *
 * Spec: https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_command_phase.html
 *
 * Use: trk_init(), then trk_begin() for every command the client sends (in order; pipelining is
 * fine) and trk_feed() with every chunk of bytes the server sends. Each time a command's response
 * is complete, the callback gets its result, in command order. No allocation on the way except the
 * queue of pipelined commands, which grows only when more than TRK_QUEUE_INLINE are in flight.
 */
#ifndef FASTPROXY_TRACKER_H
#define FASTPROXY_TRACKER_H

#include <stddef.h>
#include <stdint.h>

#include "fingerprint.h"

#define TRK_HEAD_MAX 1024          /* bytes of each server packet kept for parsing (ERR messages are <= 512) */
#define TRK_MAX_PAYLOAD 0xFFFFFFu  /* a physical payload of this size continues in the next packet */
#define TRK_QUEUE_INLINE 8         /* pipelined commands held without allocating */
#define TRK_SCHEMA_MAX 256         /* a database name: 64 characters of up to 4 bytes */

enum trk_outcome { TRK_OK = 0, TRK_ERR = 1, TRK_NO_RESPONSE = 2, TRK_UNKNOWN = 3 };

enum trk_state {
    TRK_ST_IDLE = 0,
    TRK_ST_FIRST,                /* first packet of a (next) result: OK / ERR / LOCAL INFILE / column count */
    TRK_ST_COLUMNS,              /* column definitions of a result set */
    TRK_ST_COLUMNS_EOF,          /* EOF after column definitions (CLIENT_DEPRECATE_EOF off) */
    TRK_ST_ROWS,                 /* rows until EOF/OK terminator or ERR */
    TRK_ST_SIMPLE,               /* one OK / EOF / ERR packet */
    TRK_ST_STATISTICS,           /* one plain-text packet */
    TRK_ST_AUTH,                 /* COM_CHANGE_USER: auth switch / more data until OK or ERR */
    TRK_ST_FIELD_LIST,           /* column definitions until EOF / ERR */
    TRK_ST_PREPARE_FIRST,
    TRK_ST_PREPARE_PARAMS,
    TRK_ST_PREPARE_PARAMS_EOF,
    TRK_ST_PREPARE_COLUMNS,
    TRK_ST_PREPARE_COLUMNS_EOF,
};

/* How one command's response ended. */
typedef struct trk_result {
    int64_t affected_rows;       /* summed over the OK packets of a multi-result */
    int64_t last_insert_id;
    int64_t rows;
    int64_t stmt_id;             /* COM_STMT_PREPARE: the id the server assigned; else -1 */
    int32_t result_sets;
    int32_t columns;             /* of the first result set (COM_FIELD_LIST: definitions seen) */
    uint16_t status_flags;
    uint16_t warnings;
    uint16_t err_code;
    uint16_t num_params;         /* COM_STMT_PREPARE */
    uint16_t num_columns;        /* COM_STMT_PREPARE */
    uint8_t cmd;
    uint8_t outcome;             /* enum trk_outcome */
    uint8_t local_infile;        /* the server asked for a LOCAL INFILE file */
    uint8_t unsolicited;         /* an ERR the server sent with no command pending (KILL, shutdown) */
    uint8_t has_status;          /* status_flags came from an OK/EOF packet (else 0 means unknown) */
    char sql_state[6];           /* NUL-terminated, "" if the ERR had none */
    const char *err_msg;         /* ERR message (not NUL-terminated); valid during the callback only */
    uint32_t err_msg_len;
    uint64_t hash_ordered;       /* result fingerprint (fingerprint.h); 0 without a result set */
    uint64_t hash_unordered;
    /* SESSION_TRACK_SCHEMA of an OK packet (CLIENT_SESSION_TRACK, tracker.session_track): the
     * current database after the command, whatever statement changed it. schema_cut: a change was
     * flagged but the OK packet was longer than TRK_HEAD_MAX, so what changed is unknown. The
     * name is last: start_next clears the result up to it only. */
    uint8_t schema_set;
    uint8_t schema_cut;
    uint16_t schema_len;
    char schema[TRK_SCHEMA_MAX + 1];
} trk_result;

typedef void (*trk_callback)(void *ctx, const trk_result *r);

typedef struct tracker {
    trk_result cur;
    uint8_t have_cur;
    uint8_t state;               /* enum trk_state */
    uint8_t cursor;              /* the current COM_STMT_EXECUTE asked for a cursor */
    uint8_t deprecate_eof;
    uint8_t session_track;       /* CLIENT_SESSION_TRACK: OK packets carry session state changes */
    uint8_t stop_at_done;        /* trk_feed_some: stop right after a command completes */
    uint8_t done;
    /* packet scanning (a physical packet may span trk_feed calls) */
    uint8_t hdr[4];
    uint8_t hdr_have;
    uint8_t continuation;        /* the current physical packet continues a 16 MiB logical packet */
    uint8_t prev_max;
    uint32_t pkt_len;
    uint32_t pkt_remaining;
    uint32_t head_len;
    int64_t count;               /* column / param definitions still expected */
    int64_t prep_columns;
    int64_t packets;             /* logical server packets seen */
    int64_t resp_packets;        /* of the current response */
    int64_t unsolicited;
    int64_t local_infile_requests;
    /* commands sent and not yet started: (cmd | cursor << 8), a ring */
    uint16_t *q;
    uint32_t q_head, q_len, q_cap;
    uint16_t q_inline[TRK_QUEUE_INLINE];
    trk_callback cb;
    void *ctx;
    char error[112];             /* why trk_feed returned -1 */
    /* result fingerprint (fingerprint.h): the hook is the lines marked "fingerprint" in tracker.c */
    fp_state fp;
    uint8_t fingerprints;        /* compute them (trk_init: on) */
    uint8_t fp_on;               /* the current packet may be a row: its bytes are hashed */
    uint8_t fp_row;              /* on_packet found it is a row: fold it in at its last byte */
    uint8_t head[TRK_HEAD_MAX];
} tracker;

void trk_init(tracker *t, int deprecate_eof, trk_callback cb, void *ctx);
void trk_free(tracker *t);
/* Register a command (its first payload byte, and for COM_STMT_EXECUTE whether the flags byte asks
 * for a cursor). May complete it (and earlier ones) at once: commands without a response.
 * -1 only when the queue cannot grow (out of memory). */
int trk_begin(tracker *t, uint8_t cmd, int cursor);
/* Scan server bytes. 0, or -1 with t->error set when they break the protocol. */
int trk_feed(tracker *t, const uint8_t *p, size_t n);
/* Like trk_feed, but stops right after the first command that completes: *used = the bytes it took
 * (the rest belongs to what follows). */
int trk_feed_some(tracker *t, const uint8_t *p, size_t n, size_t *used);
/* The server side is gone: every pending command ends with `outcome`. */
void trk_abort(tracker *t, int outcome);

static inline uint32_t trk_pending(const tracker *t) { return t->have_cur + t->q_len; }
static inline int trk_idle(const tracker *t) { return !t->have_cur && !t->q_len; }
static inline int trk_at_packet_boundary(const tracker *t) { return t->hdr_have == 0 && t->pkt_remaining == 0; }
/* Sequence id the next server packet of the current response would carry. */
static inline int trk_next_seq(const tracker *t) { return t->resp_packets == 0 ? 1 : (t->hdr[3] + 1) & 0xFF; }
/* The commands the server never answers. */
static inline int trk_expects_response(int cmd) { return !(cmd == 0x01 || cmd == 0x19 || cmd == 0x18); }

#endif
