/* The response tracker (see tracker.h). A port of the state machine that lived in _packet.pyx as a
 * cdef class; the states and their order of checks are unchanged, so the tests that pinned the
 * class (tests/test_packet*.py, through the ResponseTracker wrapper) pin this code. */
#include "tracker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mysql_constants.h"

static int start_next(tracker *t);

void trk_init(tracker *t, int deprecate_eof, trk_callback cb, void *ctx) {
    memset(t, 0, offsetof(tracker, head));  /* the head buffer needs no clearing */
    t->deprecate_eof = deprecate_eof ? 1 : 0;
    t->q = t->q_inline;
    t->q_cap = TRK_QUEUE_INLINE;
    t->cb = cb;
    t->ctx = ctx;
    t->state = TRK_ST_IDLE;
    fp_init(&t->fp);  /* fingerprint */
    t->fingerprints = 1;
}

void trk_free(tracker *t) {
    fp_free(&t->fp);  /* fingerprint */
    if (t->q != t->q_inline)
        free(t->q);
    t->q = t->q_inline;
    t->q_cap = TRK_QUEUE_INLINE;
    t->q_head = t->q_len = 0;
}

/* Length-encoded integer at p; *used = bytes consumed (0 if truncated). */
static int64_t lenenc(const uint8_t *p, int64_t avail, int *used) {
    if (avail < 1) {
        *used = 0;
        return 0;
    }
    uint8_t first = p[0];
    if (first < 0xFB) {
        *used = 1;
        return first;
    }
    if (first == 0xFC && avail >= 3) {
        *used = 3;
        return p[1] | (p[2] << 8);
    }
    if (first == 0xFD && avail >= 4) {
        *used = 4;
        return p[1] | (p[2] << 8) | (p[3] << 16);
    }
    if (first == 0xFE && avail >= 9) {
        *used = 9;
        uint64_t v = 0;
        for (int i = 8; i >= 1; i--)
            v = (v << 8) | p[i];
        return (int64_t)v;
    }
    *used = 0;
    return 0;
}

static int fail(tracker *t, const char *what, int cmd) {
    snprintf(t->error, sizeof t->error, "%s%#04x", what, cmd);
    return -1;
}

int trk_begin(tracker *t, uint8_t cmd, int cursor) {
    if (t->q_len == t->q_cap) {
        uint32_t cap = t->q_cap * 2;
        uint16_t *q = malloc(cap * sizeof *q);
        if (!q)
            return -1;
        for (uint32_t i = 0; i < t->q_len; i++)
            q[i] = t->q[(t->q_head + i) % t->q_cap];
        if (t->q != t->q_inline)
            free(t->q);
        t->q = q;
        t->q_cap = cap;
        t->q_head = 0;
    }
    t->q[(t->q_head + t->q_len) % t->q_cap] = (uint16_t)(cmd | (cursor ? 0x100 : 0));
    t->q_len++;
    if (!t->have_cur)
        start_next(t);
    return 0;
}

static void deliver(tracker *t) {
    if (t->cb)
        t->cb(t->ctx, &t->cur);
}

static int finish(tracker *t, int outcome) {
    t->cur.outcome = (uint8_t)outcome;
    t->cur.hash_ordered = fp_ordered(&t->fp);  /* fingerprint */
    t->cur.hash_unordered = fp_unordered(&t->fp);
    t->have_cur = 0;
    t->done = 1;
    deliver(t);
    return start_next(t);
}

/* Start the next queued command; commands without a response complete here. */
static int start_next(tracker *t) {
    t->resp_packets = 0;
    fp_reset(&t->fp);  /* fingerprint */
    while (t->q_len) {
        uint16_t e = t->q[t->q_head];
        t->q_head = (t->q_head + 1) % t->q_cap;
        t->q_len--;
        uint8_t cmd = e & 0xFF;
        memset(&t->cur, 0, offsetof(trk_result, schema));  /* the name buffer needs no clearing */
        t->cur.cmd = cmd;
        t->cur.outcome = TRK_UNKNOWN;
        t->cur.stmt_id = -1;
        t->have_cur = 1;
        t->cursor = (e >> 8) & 1;
        t->count = 0;
        switch (cmd) {
        case COM_QUERY: case COM_STMT_EXECUTE: case COM_PROCESS_INFO: case COM_STMT_BULK_EXECUTE:
            t->state = TRK_ST_FIRST;
            break;
        case COM_STMT_FETCH:
            t->state = TRK_ST_ROWS;
            break;
        case COM_STMT_PREPARE:
            t->state = TRK_ST_PREPARE_FIRST;
            break;
        case COM_FIELD_LIST:
            t->state = TRK_ST_FIELD_LIST;
            break;
        case COM_STATISTICS:
            t->state = TRK_ST_STATISTICS;
            break;
        case COM_CHANGE_USER:
            t->state = TRK_ST_AUTH;
            break;
        default:
            if (!trk_expects_response(cmd)) {
                t->cur.outcome = TRK_NO_RESPONSE;
                t->have_cur = 0;
                deliver(t);
                continue;
            }
            t->state = TRK_ST_SIMPLE;
        }
        return 0;
    }
    t->have_cur = 0;
    t->state = TRK_ST_IDLE;
    return 0;
}

static int end_of_result(tracker *t) {
    if (t->cur.status_flags & SERVER_STATUS_MORE_RESULTS_EXISTS) {
        t->state = TRK_ST_FIRST;
        return 0;
    }
    return finish(t, TRK_OK);
}

/* The session state changes after the info string of an OK packet (CLIENT_SESSION_TRACK):
 * https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_ok_packet.html
 * Only SESSION_TRACK_SCHEMA is taken: the current database, whatever statement changed it. */
static void parse_session_state(tracker *t, uint32_t pos) {
    int used;
    int cut = t->head_len < t->pkt_len;
    int64_t end = t->head_len;
    int64_t v = lenenc(&t->head[pos], end - pos, &used);  /* info string */
    if (!used || pos + used + v > end)
        goto incomplete;
    pos += used + (uint32_t)v;
    v = lenenc(&t->head[pos], end - pos, &used);  /* all session state changes */
    if (!used)
        goto incomplete;
    pos += used;
    if (pos + v > end)
        t->cur.schema_cut = (uint8_t)cut;  /* some changes lie beyond the head */
    else
        end = pos + v;
    while (pos < end) {
        uint8_t type = t->head[pos];
        int64_t len = lenenc(&t->head[pos + 1], end - pos - 1, &used);
        if (!used || pos + 1 + used + len > end)
            goto incomplete;
        uint32_t entry = pos + 1 + used;
        if (type == SESSION_TRACK_SCHEMA) {
            int n_used;
            int64_t n = lenenc(&t->head[entry], len, &n_used);
            if (n_used && n_used + n <= len && n <= TRK_SCHEMA_MAX) {
                memcpy(t->cur.schema, &t->head[entry + n_used], (size_t)n);
                t->cur.schema[n] = 0;
                t->cur.schema_len = (uint16_t)n;
                t->cur.schema_set = 1;
            }
        }
        pos = entry + (uint32_t)len;
    }
    return;
incomplete:
    t->cur.schema_cut = (uint8_t)cut;
}

static void parse_ok(tracker *t, uint32_t pos) {
    int used;
    int64_t v = lenenc(&t->head[pos], (int64_t)t->head_len - pos, &used);
    if (!used)
        return;
    t->cur.affected_rows += v;
    pos += used;
    v = lenenc(&t->head[pos], (int64_t)t->head_len - pos, &used);
    if (!used)
        return;
    if (v)
        t->cur.last_insert_id = v;
    pos += used;
    if (t->head_len >= pos + 4) {
        t->cur.status_flags = t->head[pos] | (t->head[pos + 1] << 8);
        t->cur.warnings = t->head[pos + 2] | (t->head[pos + 3] << 8);
        t->cur.has_status = 1;
        if (t->session_track && (t->cur.status_flags & SERVER_STATUS_SESSION_STATE_CHANGED))
            parse_session_state(t, pos + 4);
    }
}

static void parse_eof(tracker *t) {
    if (t->head_len >= 5) {
        t->cur.warnings = t->head[1] | (t->head[2] << 8);
        t->cur.status_flags = t->head[3] | (t->head[4] << 8);
        t->cur.has_status = 1;
    }
}

static void parse_err(tracker *t, trk_result *r) {
    const uint8_t *h = t->head;
    uint32_t n = t->head_len;
    if (n >= 3)
        r->err_code = h[1] | (h[2] << 8);
    if (n >= 9 && h[3] == '#') {  /* '#' then the 5-byte SQL state */
        memcpy(r->sql_state, h + 4, 5);
        r->sql_state[5] = 0;
        r->err_msg = (const char *)h + 9;
        r->err_msg_len = n - 9;
    } else {
        r->sql_state[0] = 0;
        r->err_msg = n > 3 ? (const char *)h + 3 : "";
        r->err_msg_len = n > 3 ? n - 3 : 0;
    }
}

static int prepare_columns(tracker *t) {
    if (t->prep_columns) {
        t->count = t->prep_columns;
        t->state = TRK_ST_PREPARE_COLUMNS;
        return 0;
    }
    return finish(t, TRK_OK);
}

static int on_packet(tracker *t) {
    int first = t->head_len ? t->head[0] : -1;
    uint8_t st = t->state;
    trk_result *cur = &t->cur;
    int used;
    int64_t v;
    if (st == TRK_ST_IDLE) {
        /* e.g. an ERR the server sends before closing an idle connection (KILL, shutdown) */
        t->unsolicited++;
        if (first == ERR_HEADER) {
            trk_result r;
            memset(&r, 0, sizeof r);
            r.outcome = TRK_ERR;
            r.stmt_id = -1;
            r.unsolicited = 1;
            parse_err(t, &r);
            if (t->cb)
                t->cb(t->ctx, &r);
        }
        return 0;
    }
    if (first == ERR_HEADER && st != TRK_ST_STATISTICS) {
        parse_err(t, cur);
        return finish(t, TRK_ERR);
    }
    switch (st) {
    case TRK_ST_ROWS: {
        int terminator = t->deprecate_eof ? (first == EOF_HEADER && t->pkt_len < TRK_MAX_PAYLOAD)
                                          : (first == EOF_HEADER && t->pkt_len < 9);
        if (!terminator) {
            cur->rows++;
            t->fp_row = t->fp_on;  /* fingerprint */
            return 0;
        }
        if (t->deprecate_eof)
            parse_ok(t, 1);
        else
            parse_eof(t);
        /* fingerprint: a result set ended (not a cursor's metadata: its rows come with the fetches) */
        if (t->fp_on && !(t->cursor && (cur->status_flags & SERVER_STATUS_CURSOR_EXISTS)))
            fp_result_end(&t->fp);
        return end_of_result(t);
    }
    case TRK_ST_FIRST:
        if (first == OK_HEADER) {
            parse_ok(t, 1);
            return end_of_result(t);
        }
        if (first == LOCAL_INFILE_HEADER) {
            cur->local_infile = 1;  /* the client now sends the file; OK/ERR follows */
            t->local_infile_requests++;
            return 0;
        }
        v = lenenc(t->head, t->head_len, &used);
        if (!used || v == 0)
            return fail(t, "bad column count in response to command ", cur->cmd);
        cur->result_sets++;
        if (cur->columns == 0)
            cur->columns = (int32_t)v;
        t->count = v;
        t->state = TRK_ST_COLUMNS;
        return 0;
    case TRK_ST_COLUMNS:
        if (--t->count == 0)
            t->state = t->deprecate_eof ? TRK_ST_ROWS : TRK_ST_COLUMNS_EOF;
        return 0;
    case TRK_ST_COLUMNS_EOF:
        parse_eof(t);
        if (t->cursor && (cur->status_flags & SERVER_STATUS_CURSOR_EXISTS))
            /* COM_STMT_EXECUTE that opened a cursor: rows come later, through COM_STMT_FETCH */
            return end_of_result(t);
        t->state = TRK_ST_ROWS;
        return 0;
    case TRK_ST_SIMPLE:
        if (first == OK_HEADER) {
            parse_ok(t, 1);
        } else if (first == EOF_HEADER) {
            if (t->pkt_len < 9)
                parse_eof(t);
            else
                parse_ok(t, 1);
        }
        return finish(t, TRK_OK);
    case TRK_ST_STATISTICS:
        return finish(t, TRK_OK);
    case TRK_ST_AUTH:
        if (first == OK_HEADER) {
            parse_ok(t, 1);
            return finish(t, TRK_OK);
        }
        return 0;  /* 0xFE auth switch / 0x01 more data: the client answers, the exchange goes on */
    case TRK_ST_FIELD_LIST:
        if (first == EOF_HEADER && t->pkt_len < TRK_MAX_PAYLOAD)
            return finish(t, TRK_OK);
        cur->columns++;
        return 0;
    case TRK_ST_PREPARE_FIRST:
        if (first != OK_HEADER || t->head_len < 12)
            return fail(t, "bad COM_STMT_PREPARE response to command ", cur->cmd);
        cur->stmt_id = (int64_t)((uint32_t)t->head[1] | ((uint32_t)t->head[2] << 8)
                                 | ((uint32_t)t->head[3] << 16) | ((uint32_t)t->head[4] << 24));
        cur->num_columns = t->head[5] | (t->head[6] << 8);
        cur->num_params = t->head[7] | (t->head[8] << 8);
        cur->warnings = t->head[10] | (t->head[11] << 8);
        t->prep_columns = cur->num_columns;
        if (cur->num_params) {
            t->count = cur->num_params;
            t->state = TRK_ST_PREPARE_PARAMS;
            return 0;
        }
        return prepare_columns(t);
    case TRK_ST_PREPARE_PARAMS:
        if (--t->count == 0) {
            if (t->deprecate_eof)
                return prepare_columns(t);
            t->state = TRK_ST_PREPARE_PARAMS_EOF;
        }
        return 0;
    case TRK_ST_PREPARE_PARAMS_EOF:
        return prepare_columns(t);
    case TRK_ST_PREPARE_COLUMNS:
        if (--t->count == 0) {
            if (t->deprecate_eof)
                return finish(t, TRK_OK);
            t->state = TRK_ST_PREPARE_COLUMNS_EOF;
        }
        return 0;
    case TRK_ST_PREPARE_COLUMNS_EOF:
        return finish(t, TRK_OK);
    }
    return fail(t, "response tracker in an unknown state, command ", cur->cmd);
}

static int feed(tracker *t, const uint8_t *p, size_t n, size_t *used) {
    size_t pos = 0;
    for (;;) {
        if (t->hdr_have < 4) {
            while (t->hdr_have < 4 && pos < n)
                t->hdr[t->hdr_have++] = p[pos++];
            if (t->hdr_have < 4)
                break;
            t->pkt_len = t->hdr[0] | (t->hdr[1] << 8) | ((uint32_t)t->hdr[2] << 16);
            t->pkt_remaining = t->pkt_len;
            t->continuation = t->prev_max;
            t->prev_max = t->pkt_len == TRK_MAX_PAYLOAD;
            t->head_len = 0;
            if (!t->continuation) {  /* fingerprint: a packet in a row section may be a row */
                t->fp_on = t->fingerprints && t->state == TRK_ST_ROWS;
                if (t->fp_on)
                    fp_row_begin(&t->fp, t->pkt_len < TRK_MAX_PAYLOAD ? (int64_t)t->pkt_len : -1);
            }
        }
        size_t take = n - pos < t->pkt_remaining ? n - pos : t->pkt_remaining;
        if (take) {
            if (!t->continuation && t->head_len < TRK_HEAD_MAX) {
                size_t c = take < TRK_HEAD_MAX - t->head_len ? take : TRK_HEAD_MAX - t->head_len;
                memcpy(&t->head[t->head_len], p + pos, c);
                t->head_len += (uint32_t)c;
            }
            if (t->fp_on && fp_row_bytes(&t->fp, p + pos, take) < 0)  /* fingerprint */
                return fail(t, "out of memory hashing a row, command ", t->cur.cmd);
            pos += take;
            t->pkt_remaining -= (uint32_t)take;
        }
        if (t->pkt_remaining)
            break;
        t->hdr_have = 0;
        if (!t->continuation) {
            t->packets++;
            t->resp_packets++;
            if (on_packet(t) < 0)
                return -1;
            if (t->stop_at_done && t->done) {
                *used = pos;
                return 0;
            }
        }
        if (t->fp_row && !t->prev_max) {  /* fingerprint: the row's last byte has passed */
            fp_row_end(&t->fp);
            t->fp_row = 0;
        }
        if (pos == n)
            break;
    }
    *used = pos;
    return 0;
}

int trk_feed(tracker *t, const uint8_t *p, size_t n) {
    size_t used;
    return feed(t, p, n, &used);
}

int trk_feed_some(tracker *t, const uint8_t *p, size_t n, size_t *used) {
    t->stop_at_done = 1;
    t->done = 0;
    int rc = feed(t, p, n, used);
    t->stop_at_done = 0;
    return rc;
}

void trk_abort(tracker *t, int outcome) {
    while (t->have_cur)
        finish(t, outcome);
    t->hdr_have = 0;
    t->pkt_remaining = 0;
    t->prev_max = 0;
}
