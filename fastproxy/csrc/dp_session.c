/* Session state kept per connection by the data plane: current database, status flags, user,
 * prepared statements (SQL, parameter count, last bound types). Updated from each finished command
 * whose payload the framer kept (dp.c decides what to keep); read by Python through a snapshot
 * taken under the connection's lock. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "dp.h"
#include "mysql_constants.h"

/* ---- prepared statements: open addressing on the statement id ------------------------------- */

static uint32_t slot_of(uint32_t id, uint32_t cap) { return (id * 2654435761u) & (cap - 1); }

dp_stmt *dp_stmt_find(dp_session *s, uint32_t id) {
    if (!s->stmts_len)
        return NULL;
    for (uint32_t i = slot_of(id, s->stmts_cap), k = 0; k < s->stmts_cap; i = (i + 1) & (s->stmts_cap - 1), k++) {
        dp_stmt *e = &s->stmts[i];
        if (e->used == 0)
            return NULL;
        if (e->used == 1 && e->id == id)
            return e;
    }
    return NULL;
}

static void stmt_clear(dp_stmt *e) {
    free(e->sql);
    free(e->types);
    memset(e, 0, sizeof *e);
}

static int stmts_grow(dp_session *s) {
    uint32_t cap = s->stmts_cap ? s->stmts_cap * 2 : 8;
    while (s->stmts_len * 2 >= cap)
        cap *= 2;
    dp_stmt *tab = calloc(cap, sizeof *tab);
    if (!tab)
        return -1;
    for (uint32_t i = 0; i < s->stmts_cap; i++) {
        dp_stmt *e = &s->stmts[i];
        if (e->used != 1)
            continue;
        uint32_t j = slot_of(e->id, cap);
        while (tab[j].used)
            j = (j + 1) & (cap - 1);
        tab[j] = *e;
    }
    free(s->stmts);
    s->stmts = tab;
    s->stmts_cap = cap;
    s->stmts_used = s->stmts_len;
    return 0;
}

/* The live entry for id, created empty if needed. */
static dp_stmt *stmt_put(dp_session *s, uint32_t id) {
    dp_stmt *e = dp_stmt_find(s, id);
    if (e) {
        stmt_clear(e);
        e->used = 1;
        e->id = id;
        return e;
    }
    if ((s->stmts_used + 1) * 4 > s->stmts_cap * 3 && stmts_grow(s) < 0)
        return NULL;
    uint32_t i = slot_of(id, s->stmts_cap);
    while (s->stmts[i].used == 1)
        i = (i + 1) & (s->stmts_cap - 1);
    if (s->stmts[i].used == 0)
        s->stmts_used++;
    e = &s->stmts[i];
    memset(e, 0, sizeof *e);
    e->used = 1;
    e->id = id;
    s->stmts_len++;
    return e;
}

static void stmt_del(dp_session *s, uint32_t id) {
    dp_stmt *e = dp_stmt_find(s, id);
    if (!e)
        return;
    stmt_clear(e);
    e->used = 2;
    s->stmts_len--;
}

static void stmts_forget(dp_session *s) {
    for (uint32_t i = 0; i < s->stmts_cap; i++)
        if (s->stmts[i].used == 1)
            stmt_clear(&s->stmts[i]);
    free(s->stmts);
    s->stmts = NULL;
    s->stmts_cap = s->stmts_len = s->stmts_used = 0;
    s->has_last_prepared = 0;
}

void dp_session_free(dp_session *s) {
    stmts_forget(s);
    free(s->user);
    free(s->db);
    s->user = s->db = NULL;
}

static char *dup_bytes(const uint8_t *p, size_t n) {
    char *out = malloc(n + 1);
    if (out) {
        memcpy(out, p, n);
        out[n] = 0;
    }
    return out;
}

/* ---- payload parsers ------------------------------------------------------------------------ */

static int is_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* p[i] opens a block comment (`/` `*`): where scanning goes on after its `*` `/`; 0 if it never closes. */
static size_t past_block_comment(const uint8_t *p, size_t i, size_t n) {
    size_t j = i + 2;
    while (j + 1 < n && !(p[j] == '*' && p[j + 1] == '/'))
        j++;
    return j + 1 < n ? j + 2 : 0;
}

/* `USE db` as the whole of a COM_QUERY (command byte first): after whitespace and comments, `use`,
 * a name (back-quoted, or up to whitespace/;), an optional `;`. The same statements as
 * fastproxy.proxy.session's former regex. *quoted: the name is back-quoted (`` stands for `). */
int dp_used_database(const uint8_t *p, size_t n, const uint8_t **name, size_t *name_len, int *quoted) {
    size_t i = 1;
    for (;;) {
        while (i < n && is_space(p[i]))
            i++;
        if (i + 1 < n && p[i] == '/' && p[i + 1] == '*') {
            if (!(i = past_block_comment(p, i, n)))
                return 0;
            continue;
        }
        break;
    }
    if (i + 3 >= n || tolower(p[i]) != 'u' || tolower(p[i + 1]) != 's' || tolower(p[i + 2]) != 'e' || !is_space(p[i + 3]))
        return 0;
    i += 3;
    while (i < n && is_space(p[i]))
        i++;
    size_t start, end;
    if (i < n && p[i] == '`') {
        size_t j = i + 1;
        for (;;) {
            if (j >= n)
                return 0;
            if (p[j] == '`') {
                if (j + 1 < n && p[j + 1] == '`') {
                    j += 2;
                    continue;
                }
                break;
            }
            j++;
        }
        if (j == i + 1)
            return 0;
        start = i + 1;
        end = j;
        i = j + 1;
        *quoted = 1;
    } else {
        start = i;
        while (i < n && !is_space(p[i]) && p[i] != ';')
            i++;
        if (i == start)
            return 0;
        end = i;
        *quoted = 0;
    }
    while (i < n && is_space(p[i]))
        i++;
    if (i < n && p[i] == ';')
        i++;
    while (i < n && is_space(p[i]))
        i++;
    if (i != n)
        return 0;
    *name = p + start;
    *name_len = end - start;
    return 1;
}

static size_t cstring_end(const uint8_t *p, size_t n, size_t pos, size_t *next) {
    const uint8_t *z = pos < n ? memchr(p + pos, 0, n - pos) : NULL;
    if (!z) {
        *next = n;
        return n;
    }
    *next = (size_t)(z - p) + 1;
    return (size_t)(z - p);
}

/* COM_CHANGE_USER: user and database, and where its auth response lies (auth_len bytes at
 * auth_at, which capture replaces by one empty byte: no secret on disk). */
int dp_parse_change_user(const uint8_t *p, size_t n, uint64_t caps, const uint8_t **user, size_t *user_len,
                         const uint8_t **db, size_t *db_len, size_t *auth_at, size_t *auth_len) {
    size_t pos, end = cstring_end(p, n, 1, &pos);
    *user = p + 1;
    *user_len = end - 1;
    *auth_at = pos;
    if (caps & CLIENT_SECURE_CONNECTION) {
        size_t a = pos < n ? 1 + (size_t)p[pos] : 0;
        pos = pos + a < n ? pos + a : n;
        *auth_len = pos - *auth_at;
    } else {
        cstring_end(p, n, pos, &pos);
        *auth_len = pos - *auth_at;
    }
    if (pos < n) {
        size_t after;
        end = cstring_end(p, n, pos, &after);
        *db = p + pos;
        *db_len = end - pos;
    } else {
        *db = NULL;
        *db_len = 0;
    }
    return 0;
}

/* Offset of the parameter types in a COM_STMT_EXECUTE payload that binds new ones, else 0. */
uint64_t dp_execute_types_at(dp_session *s, const uint8_t *p, size_t n, uint16_t *nparams) {
    if (n < 11)
        return 0;
    uint32_t id = p[1] | (p[2] << 8) | (p[3] << 16) | ((uint32_t)p[4] << 24);
    dp_stmt *e = dp_stmt_find(s, id);
    if (!e || !e->num_params)
        return 0;
    size_t flag_at = 10 + (e->num_params + 7) / 8;
    if (n <= flag_at || p[flag_at] != 1)
        return 0;
    *nparams = e->num_params;
    return flag_at + 1;
}

/* ---- statements whose session effects Python follows ------------------------------------------ */

static int is_word_byte(uint8_t c) { return (uint8_t)((c | 0x20) - 'a') < 26 || (uint8_t)(c - '0') < 10 || c == '_'; }

/* sqltext._START: whitespace and comments (executable comments opened), then one of the keywords. */
static int starts_with_effect_keyword(const uint8_t *p, size_t n) {
    static const char *words[] = {"use", "prepare", "deallocate", "drop", "create"};
    size_t i = 0;
    for (;;) {
        if (i < n && is_space(p[i])) {
            while (i < n && is_space(p[i]))
                i++;
            continue;
        }
        if (i + 1 < n && p[i] == '/' && p[i + 1] == '*') {
            size_t k = i + 2;
            if (k < n && p[k] == 'M')
                k++;
            if (k < n && p[k] == '!') {  /* an executable comment: its content is SQL */
                k++;
                while (k < n && (uint8_t)(p[k] - '0') < 10)
                    k++;
                i = k;
                continue;
            }
            if (!(i = past_block_comment(p, i, n)))
                return 0;
            continue;
        }
        if (i + 2 < n && p[i] == '-' && p[i + 1] == '-' && is_space(p[i + 2])) {
            const uint8_t *nl = memchr(p + i + 3, '\n', n - i - 3);
            if (!nl)
                return 0;
            i = (size_t)(nl - p) + 1;
            continue;
        }
        if (i < n && p[i] == '#') {
            const uint8_t *nl = memchr(p + i, '\n', n - i);
            if (!nl)
                return 0;
            i = (size_t)(nl - p) + 1;
            continue;
        }
        break;
    }
    for (size_t w = 0; w < sizeof words / sizeof *words; w++) {
        size_t k = strlen(words[w]);
        if (i + k > n)
            continue;
        size_t m = 0;
        while (m < k && (p[i + m] | 0x20) == words[w][m])
            m++;
        if (m == k && (i + k == n || !is_word_byte(p[i + k])))
            return 1;
    }
    return 0;
}

/* sqltext.worth_scanning: whether a COM_QUERY payload (command byte first; `semicolon`: one beyond
 * the bytes given) may hold a statement whose effect on the session Python follows. */
int dp_worth_scanning(const uint8_t *p, size_t n, int multi_statements, int semicolon) {
    if (n < 3)
        return 0;
    uint8_t a = p[1] | 0x20, b = p[2] | 0x20;
    int letter = (a == 'u' && b == 's') || ((a == 'p' || a == 'c') && b == 'r') || (a == 'd' && (b == 'r' || b == 'e'));
    int lead = p[1] == ' ' || p[1] == '\t' || p[1] == '\r' || p[1] == '\n' || p[1] == '/' || p[1] == '#' || p[1] == '-';
    if ((letter || lead) && starts_with_effect_keyword(p + 1, n - 1))
        return 1;
    return multi_statements && (semicolon || memchr(p + 1, ';', n - 1) != NULL);
}

/* ---- applying a finished command ------------------------------------------------------------- */

static void set_db(dp_session *s, const uint8_t *name, size_t len, int quoted) {
    char *db = malloc(len + 1);
    if (!db)
        return;
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        db[k++] = (char)name[i];
        if (quoted && name[i] == '`' && i + 1 < len && name[i + 1] == '`')
            i++;
    }
    db[k] = 0;
    free(s->db);
    s->db = db;
}

static void session_hook(dp_conn *c, int kind, const uint8_t *p, size_t n, const trk_result *r, int semicolon) {
    dp_session_hook hook = c->w->dp->session_hook;
    if (!hook)
        return;
    /* flags: 1 a `;` beyond the bytes given, 2 multi-statements are on */
    if (hook(c->py_handle, kind, p, n, r, (semicolon ? 1 : 0) | (c->s.multi_statements ? 2 : 0)) & 1)
        c->s.db_stale = 1;  /* the database may have changed: asked at the next command */
}

void dp_session_forget_statements(dp_conn *c) {
    pthread_mutex_lock(&c->lock);
    stmts_forget(&c->s);
    pthread_mutex_unlock(&c->lock);
    c->s.txn_wrote = 0;
}

/* Update the session from a finished command (its payload kept as dp.c decided). The current
 * database comes from the server (SESSION_TRACK_SCHEMA, or the proxy's own SELECT DATABASE() when
 * it may have changed without the server saying to what), never from the SQL text. */
int dp_session_apply(dp_conn *c, const dp_cmd *cmd, const trk_result *r) {
    dp_session *s = &c->s;
    const uint8_t *p = cmd->buf;
    size_t n = cmd->len;
    int whole = cmd->len == cmd->total;
    if (r->outcome == TRK_OK) {
        if (r->has_status) {
            s->status_flags = r->status_flags;
            if (r->status_flags & SERVER_STATUS_IN_TRANS) {
                if (r->affected_rows)
                    s->txn_wrote = 1;
            } else {
                s->txn_wrote = 0;
            }
        }
        if (r->schema_set) {  /* the server said which database is current now */
            pthread_mutex_lock(&c->lock);
            set_db(s, (const uint8_t *)r->schema, r->schema_len, 0);
            if (!r->schema_len) {
                free(s->db);
                s->db = NULL;
            }
            pthread_mutex_unlock(&c->lock);
            s->db_stale = 0;
        } else if (r->schema_cut || (r->has_status && (r->status_flags & SERVER_STATUS_DB_DROPPED))) {
            s->db_stale = 1;
        }
    }
    switch (r->cmd) {
    case COM_STMT_EXECUTE: {
        /* also from a failed execute: the server took the types all the same, and later executes
         * of the statement do not repeat them */
        if (r->outcome != TRK_OK && r->outcome != TRK_ERR)
            return 0;
        uint16_t np = 0;
        uint64_t at = dp_execute_types_at(s, p, n, &np);
        if (!at || at + 2u * np > n)
            return 0;
        uint32_t id = p[1] | (p[2] << 8) | (p[3] << 16) | ((uint32_t)p[4] << 24);
        dp_stmt *e = dp_stmt_find(s, id);
        if (e->types && memcmp(e->types, p + at, 2u * np) == 0)
            return 0;  /* drivers that send the types with every execute: nothing new */
        uint8_t *types = malloc(2u * np);
        if (!types)
            return -1;
        memcpy(types, p + at, 2u * np);
        pthread_mutex_lock(&c->lock);
        free(e->types);
        e->types = types;
        pthread_mutex_unlock(&c->lock);
        return 0;
    }
    case COM_QUERY:
        /* SQL PREPAREs, temporary tables, a USE the server may not report: Python follows those,
         * for the few queries that may hold one (also after an error: a multi-statement may have
         * failed after its USE) */
        if (n > 1 && (r->outcome == TRK_OK || r->outcome == TRK_ERR)
            && dp_worth_scanning(p, n, s->multi_statements, cmd->semicolon))
            session_hook(c, DP_HOOK_QUERY, p, n, r, cmd->semicolon || (!whole && n > DP_SCAN_LIMIT));
        return 0;
    default:
        break;
    }
    if (r->outcome != TRK_OK && r->outcome != TRK_NO_RESPONSE)
        return 0;  /* ERR or no answer: nothing changed (COM_STMT_CLOSE has no answer) */
    switch (r->cmd) {
    case COM_STMT_PREPARE: {
        if (!whole || r->stmt_id < 0)
            return 0;
        char *sql = dup_bytes(p + 1, n - 1);
        if (!sql)
            return -1;
        pthread_mutex_lock(&c->lock);
        dp_stmt *e = stmt_put(s, (uint32_t)r->stmt_id);
        if (e) {
            e->sql = sql;
            e->sql_len = (uint32_t)(n - 1);
            e->num_params = r->num_params;
            s->last_prepared = (uint32_t)r->stmt_id;
            s->has_last_prepared = 1;
        }
        pthread_mutex_unlock(&c->lock);
        if (!e) {
            free(sql);
            return -1;
        }
        return 0;
    }
    case COM_STMT_CLOSE:
        if (n >= 5) {
            pthread_mutex_lock(&c->lock);
            stmt_del(s, p[1] | (p[2] << 8) | (p[3] << 16) | ((uint32_t)p[4] << 24));
            pthread_mutex_unlock(&c->lock);
        }
        return 0;
    case COM_INIT_DB:
        if (whole && !r->schema_set) {  /* the server's answer wins when it gave one */
            pthread_mutex_lock(&c->lock);
            set_db(s, p + 1, n - 1, 0);
            pthread_mutex_unlock(&c->lock);
            s->db_stale = 0;
        }
        return 0;
    case COM_SET_OPTION:
        if (n >= 3)
            s->multi_statements = (p[1] | (p[2] << 8)) == 0;  /* MYSQL_OPTION_MULTI_STATEMENTS_ON */
        return 0;
    case COM_RESET_CONNECTION:
        dp_session_forget_statements(c);
        session_hook(c, DP_HOOK_FORGET, p, n, r, 0);
        return 0;
    case COM_CHANGE_USER: {
        if (!whole)
            return 0;
        const uint8_t *user, *db;
        size_t ulen, dblen, auth_at, auth_len;
        dp_parse_change_user(p, n, s->capabilities, &user, &ulen, &db, &dblen, &auth_at, &auth_len);
        char *u = dup_bytes(user, ulen);
        pthread_mutex_lock(&c->lock);
        free(s->user);
        s->user = u;
        if (!r->schema_set) {  /* the server sets the database the command names (none if none) */
            free(s->db);
            s->db = db && dblen ? dup_bytes(db, dblen) : NULL;
            s->db_stale = 0;
        }
        pthread_mutex_unlock(&c->lock);
        dp_session_forget_statements(c);
        session_hook(c, DP_HOOK_FORGET, p, n, r, 0);
        return 0;
    }
    }
    return 0;
}
