/*
 * The benchmark's ceiling: the subset of the qqchat protocol that the bench's
 * workloads speak, served the way a perfect server would serve it, so that a
 * daemon's figures can be given beside what the network and the protocol alone
 * cost on the same machine in the same sitting.
 *
 * One thread, level-triggered epoll, no storage (users, sessions and groups live
 * in memory; passwords are compared as sent, never hashed; a message is pushed
 * to whoever is online and then forgotten). Per wake-up it reads each ready
 * connection once, handles every complete line, queues the replies and pushes
 * in per-connection output buffers, and writes each touched connection once.
 *
 * Served: register, login (reply and an empty `synced`), logout, ping, chat,
 * ack, group_create, group_join, group_chat, with the fields, ids, `req` echo
 * and error codes of docs/protocol.md. Any other request type gets
 * `unknown_type`; bad JSON, wrong fields and lines over 64 KiB get the errors
 * the daemon gives. Strings are validated and forwarded as sent (escapes kept);
 * an escape counts as one character in the length rules.
 *
 * Usage: ceiling [HOST [PORT]]   (default 127.0.0.1, a free port); prints the
 * port it listens on, then serves until killed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINE 65536             /* bytes of a request line, without the \n */
#define READ_CHUNK 65536           /* one read() per readable connection per wake-up */
#define MAX_OUT (4u << 20)         /* output waiting for a client that does not read */
#define MAX_DEPTH 64               /* nesting of JSON values we agree to skip */
#define CLOSE_WAIT_S 5             /* longest wait for a closing connection to read */
#define MAX_USERS (1u << 24)
#define MAX_GROUPS (1u << 20)
#define GROUP_MEMBERS_MAX 500
#define MEMBERS_PAGE 100
#define TEXT_MAX 4000
#define MAX_ID 9007199254740992ULL /* 2^53 */
#define EVENTS 256

/* -- buffers ------------------------------------------------------------------ */

struct buf {
    char *p;
    size_t len, cap;
};

static bool buf_reserve(struct buf *b, size_t more, size_t limit) {
    if (b->len + more <= b->cap)
        return true;
    if (b->len + more > limit)
        return false;
    size_t cap = b->cap ? b->cap : 512;
    while (cap < b->len + more)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return false;
    b->p = p;
    b->cap = cap;
    return true;
}

static void buf_release(struct buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* -- state --------------------------------------------------------------------- */

struct conn {
    int fd;
    uint32_t events;      /* what epoll watches for it now */
    uint32_t uid;         /* 0: anonymous */
    uint64_t max_sent;    /* highest message id pushed to it since its login */
    struct buf in;        /* a partial line, carried to the next read */
    struct buf out;       /* replies and pushes not yet written */
    bool queued;          /* on the list flushed at the end of the wake-up */
    bool closing;         /* write what is queued, then close; read no more */
    bool dead;            /* close at the end of the wake-up */
    time_t close_by;      /* closing: cut it then, written or not */
    struct conn *next;    /* the flush list */
    struct conn *closing_prev, *closing_next; /* the list of closing connections */
};

struct user {
    char *name;           /* JSON string contents, as sent (unescaped: no '\\') */
    uint32_t name_len;
    char *pw;
    uint32_t pw_len;
    struct conn *conn;    /* the session, if online */
    uint64_t acked;       /* acknowledged position */
};

struct group {
    char *name, *desc;    /* JSON string contents, as sent */
    uint32_t name_len, desc_len;
    uint32_t creator;
    uint32_t *members;    /* user ids in join order */
    uint32_t n, cap;
};

static int epfd, listen_fd;
static bool listening = true;
static struct user *users;        /* users[uid - 1] */
static uint32_t n_users, cap_users;
static uint32_t *name_index;      /* open addressing: uid, 0 for empty */
static uint32_t index_mask;
static struct group *groups;      /* groups[gid - 1] */
static uint32_t n_groups, cap_groups;
static uint64_t last_msg_id;
static struct conn *flush_list;
static struct conn *closing_list;
static char read_buf[MAX_LINE + READ_CHUNK + 1];

/* -- output ------------------------------------------------------------------ */

/* Every line is built in `line` and then copied to the output buffer of each
 * connection it goes to (a group message is built once for all its members). */
static struct buf line;

static void w(const char *s, size_t n) {
    if (!buf_reserve(&line, n, SIZE_MAX)) {
        perror("ceiling: out of memory");
        exit(1);
    }
    memcpy(line.p + line.len, s, n);
    line.len += n;
}

static void ws(const char *s) { w(s, strlen(s)); }

static void wu(uint64_t v) {
    char tmp[24], *p = tmp + sizeof tmp;
    do
        *--p = (char)('0' + v % 10);
    while (v /= 10);
    w(p, (size_t)(tmp + sizeof tmp - p));
}

/* A JSON string whose contents are already JSON (as received, escapes kept). */
static void wstr(const char *s, size_t n) {
    w("\"", 1);
    w(s, n);
    w("\"", 1);
}

static void queue(struct conn *c) {
    if (!c->queued) {
        c->queued = true;
        c->next = flush_list;
        flush_list = c;
    }
}

/* Queue the line built for `c`; written at the end of the wake-up. */
static void deliver(struct conn *c) {
    if (c->dead)
        return;
    if (!buf_reserve(&c->out, line.len, MAX_OUT)) {
        c->dead = true; /* it does not read: drop it, as the daemon does */
        queue(c);
        return;
    }
    memcpy(c->out.p + c->out.len, line.p, line.len);
    c->out.len += line.len;
    queue(c);
}

/* -- a small JSON scanner -------------------------------------------------------- */

/* A value found in the request: for a string, the bytes between the quotes. */
struct span {
    const char *p;
    size_t n;
    char kind; /* 0 absent, 's' string, 'n' number, 'b' true/false, 'z' null, 'o', 'a' */
};

enum { F_TYPE, F_REQ, F_NAME, F_PASSWORD, F_TO, F_TEXT, F_ID, F_GROUP, F_DESC, N_FIELDS };
static const char *const field_names[N_FIELDS] = {
    "type", "req", "name", "password", "to", "text", "id", "group", "desc"};

static bool valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            return false;
        i += len;
    }
    return true;
}

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static bool is_hex(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* p at the opening quote; returns the position after the closing one, or NULL. */
static const char *scan_string(const char *p, const char *end) {
    for (p++; p < end; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            return p + 1;
        if (c < 0x20)
            return NULL;
        if (c == '\\') {
            if (++p >= end)
                return NULL;
            switch (*p) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                break;
            case 'u':
                if (end - p < 5 || !is_hex(p[1]) || !is_hex(p[2]) || !is_hex(p[3]) ||
                    !is_hex(p[4]))
                    return NULL;
                p += 4;
                break;
            default:
                return NULL;
            }
        }
    }
    return NULL;
}

static const char *scan_digits(const char *p, const char *end) {
    const char *start = p;
    while (p < end && *p >= '0' && *p <= '9')
        p++;
    return p == start ? NULL : p;
}

static const char *scan_number(const char *p, const char *end) {
    if (p < end && *p == '-')
        p++;
    if (p < end && *p == '0')
        p++;
    else if (!(p = scan_digits(p, end)))
        return NULL;
    if (p < end && *p == '.' && !(p = scan_digits(p + 1, end)))
        return NULL;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (!(p = scan_digits(p, end)))
            return NULL;
    }
    return p;
}

static const char *scan_value(const char *p, const char *end, int depth, struct span *out);

static const char *scan_literal(const char *p, const char *end, const char *word) {
    size_t n = strlen(word);
    return (size_t)(end - p) >= n && memcmp(p, word, n) == 0 ? p + n : NULL;
}

/* An object or array (p at its opening bracket); returns the position after it. */
static const char *scan_container(const char *p, const char *end, int depth) {
    char close = *p == '{' ? '}' : ']';
    bool object = close == '}';
    if (depth >= MAX_DEPTH)
        return NULL;
    p = skip_ws(p + 1, end);
    if (p < end && *p == close)
        return p + 1;
    for (;;) {
        if (object) {
            if (p >= end || *p != '"' || !(p = scan_string(p, end)))
                return NULL;
            p = skip_ws(p, end);
            if (p >= end || *p != ':')
                return NULL;
            p = skip_ws(p + 1, end);
        }
        if (!(p = scan_value(p, end, depth + 1, NULL)))
            return NULL;
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        return p < end && *p == close ? p + 1 : NULL;
    }
}

static const char *scan_value(const char *p, const char *end, int depth, struct span *out) {
    const char *start = p, *after;
    char kind;
    if (p >= end)
        return NULL;
    switch (*p) {
    case '"': after = scan_string(p, end); kind = 's'; break;
    case '{': case '[': after = scan_container(p, end, depth); kind = *p == '{' ? 'o' : 'a'; break;
    case 't': after = scan_literal(p, end, "true"); kind = 'b'; break;
    case 'f': after = scan_literal(p, end, "false"); kind = 'b'; break;
    case 'n': after = scan_literal(p, end, "null"); kind = 'z'; break;
    default: after = scan_number(p, end); kind = 'n'; break;
    }
    if (after && out) {
        out->kind = kind;
        out->p = kind == 's' ? start + 1 : start;
        out->n = (size_t)(after - start) - (kind == 's' ? 2 : 0);
    }
    return after;
}

/* The line must be one JSON object; the fields we know are picked out of its
 * top level (the last of a repeated key wins, and null counts as absent).
 * Returns 0, -1 for bad JSON, -2 for JSON that is not an object. */
static int parse_request(const char *p, const char *end, struct span f[N_FIELDS]) {
    memset(f, 0, sizeof(struct span) * N_FIELDS);
    p = skip_ws(p, end);
    if (p >= end)
        return -1;
    if (*p != '{') {
        const char *after = scan_value(p, end, 0, NULL);
        return after && skip_ws(after, end) == end ? -2 : -1;
    }
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') {
        p++;
    } else {
        for (;;) {
            if (p >= end || *p != '"')
                return -1;
            const char *key = p + 1, *after = scan_string(p, end);
            if (!after)
                return -1;
            size_t key_len = (size_t)(after - key) - 1;
            p = skip_ws(after, end);
            if (p >= end || *p != ':')
                return -1;
            p = skip_ws(p + 1, end);
            struct span v;
            if (!(p = scan_value(p, end, 1, &v)))
                return -1;
            for (int i = 0; i < N_FIELDS; i++) {
                if (strlen(field_names[i]) == key_len &&
                    memcmp(field_names[i], key, key_len) == 0) {
                    f[i] = v.kind == 'z' && i != F_REQ ? (struct span){0} : v;
                    break;
                }
            }
            p = skip_ws(p, end);
            if (p < end && *p == ',') {
                p = skip_ws(p + 1, end);
                continue;
            }
            if (p >= end || *p != '}')
                return -1;
            p++;
            break;
        }
    }
    return skip_ws(p, end) == end ? 0 : -1;
}

static bool span_is(const struct span *s, const char *word) {
    size_t n = strlen(word);
    return s->n == n && memcmp(s->p, word, n) == 0;
}

/* A positive integer id (1..2^53), or 0. */
static uint64_t span_id(const struct span *s) {
    if (s->kind != 'n' || s->n == 0 || s->n > 16 || s->p[0] == '-' || s->p[0] == '0')
        return 0;
    uint64_t v = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (s->p[i] < '0' || s->p[i] > '9')
            return 0; /* a fraction or an exponent: not an integer id */
        v = v * 10 + (uint64_t)(s->p[i] - '0');
    }
    return v <= MAX_ID ? v : 0;
}

/* Characters of a JSON string's contents (an escape is one); *blank says whether
 * they are all whitespace. */
static size_t span_chars(const struct span *s, bool *blank) {
    size_t n = 0;
    bool only_ws = true;
    for (size_t i = 0; i < s->n; i++) {
        unsigned char c = (unsigned char)s->p[i];
        if ((c & 0xC0) == 0x80)
            continue;
        n++;
        if (c == '\\') {
            char e = s->p[++i];
            if (e == 'u')
                i += 4;
            if (e != 'n' && e != 't' && e != 'r' && e != 'f')
                only_ws = false;
        } else if (c != ' ') {
            only_ws = false;
        }
    }
    if (blank)
        *blank = only_ws;
    return n;
}

/* -- replies --------------------------------------------------------------------- */

static struct span cur_req; /* the request being handled: its `req`, echoed */

/* Start a reply to the current request: its type and `req`. */
static void reply_start(const char *type) {
    line.len = 0;
    ws("{\"type\":\"");
    ws(type);
    ws("\"");
    if (cur_req.kind == 's') {
        ws(",\"req\":");
        wstr(cur_req.p, cur_req.n);
    } else if (cur_req.kind) {
        ws(",\"req\":");
        w(cur_req.p, cur_req.n);
    }
}

static void reply_end(struct conn *c) {
    ws("}\n");
    deliver(c);
}

static void error_field(struct conn *c, const char *code, const char *message,
                        const char *field) {
    reply_start("error");
    ws(",\"code\":\"");
    ws(code);
    ws("\",\"message\":\"");
    ws(message);
    ws("\"");
    if (field) {
        ws(",\"field\":\"");
        ws(field);
        ws("\"");
    }
    reply_end(c);
}

static void send_error(struct conn *c, const char *code, const char *message) {
    error_field(c, code, message, NULL);
}

/* A required string field; false (and the error sent) if it is not one. */
static bool need_string(struct conn *c, const struct span *f, int field) {
    if (f[field].kind == 's')
        return true;
    error_field(c, f[field].kind ? "bad_field" : "missing_field",
                f[field].kind ? "this field must be a string" : "this field is required",
                field_names[field]);
    return false;
}

/* A required id field; 0 (and the error sent) if it is not one. */
static uint64_t need_id(struct conn *c, const struct span *f, int field) {
    uint64_t id = span_id(&f[field]);
    if (!id)
        error_field(c, f[field].kind ? "bad_field" : "missing_field",
                    f[field].kind ? "this field must be a positive integer id"
                                  : "this field is required",
                    field_names[field]);
    return id;
}

static bool check_text(struct conn *c, const struct span *text) {
    bool blank;
    size_t n = span_chars(text, &blank);
    if (blank)
        send_error(c, "empty_text", "the message text is empty");
    else if (n > TEXT_MAX)
        send_error(c, "too_long", "a message is at most 4000 characters");
    return !blank && n <= TEXT_MAX;
}

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* -- users ----------------------------------------------------------------------- */

static uint32_t name_hash(const char *s, size_t n) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static uint32_t find_user(const char *name, size_t n) {
    if (!name_index)
        return 0;
    for (uint32_t i = name_hash(name, n) & index_mask;; i = (i + 1) & index_mask) {
        uint32_t uid = name_index[i];
        if (!uid)
            return 0;
        if (users[uid - 1].name_len == n && memcmp(users[uid - 1].name, name, n) == 0)
            return uid;
    }
}

static void index_put(uint32_t uid) {
    struct user *u = &users[uid - 1];
    uint32_t i = name_hash(u->name, u->name_len) & index_mask;
    while (name_index[i])
        i = (i + 1) & index_mask;
    name_index[i] = uid;
}

/* Room for one more user, in the array and in the name index. */
static bool grow_users(void) {
    if (n_users == cap_users) {
        uint32_t cap = cap_users ? cap_users * 2 : 1024;
        struct user *p = realloc(users, sizeof *p * cap);
        if (!p)
            return false;
        users = p;
        cap_users = cap;
    }
    if (!name_index || (n_users + 1) * 2 > index_mask + 1) { /* keep it half empty */
        uint32_t size = name_index ? (index_mask + 1) * 2 : 2048;
        uint32_t *p = calloc(size, sizeof *p);
        if (!p)
            return false;
        free(name_index);
        name_index = p;
        index_mask = size - 1;
        for (uint32_t uid = 1; uid <= n_users; uid++)
            index_put(uid);
    }
    return true;
}

/* 1-32 characters: letters (any script), digits, '_', '.', '-'; not only digits. */
static bool good_name(const struct span *s) {
    bool digits = true;
    for (size_t i = 0; i < s->n; i++) {
        unsigned char c = (unsigned char)s->p[i];
        if (!(c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
            return false;
        digits = digits && c >= '0' && c <= '9';
    }
    size_t n = span_chars(s, NULL);
    return n >= 1 && n <= 32 && !digits;
}

static void detach(struct conn *c) {
    if (c->uid) {
        users[c->uid - 1].conn = NULL;
        c->uid = 0;
    }
}

/* -- groups ------------------------------------------------------------------------ */

static bool is_member(const struct group *g, uint32_t uid) {
    for (uint32_t i = 0; i < g->n; i++)
        if (g->members[i] == uid)
            return true;
    return false;
}

/* A group as group_create and group_join give it (`viewer` 0: with `creator`
 * and a page of 100 members), or as the login reply lists the viewer's groups
 * (with the viewer's `role` and the first 20 members). */
static void w_group(uint32_t gid, uint32_t viewer) {
    const struct group *g = &groups[gid - 1];
    uint32_t page = viewer ? 20 : MEMBERS_PAGE;
    ws("{\"id\":");
    wu(gid);
    ws(",\"name\":");
    wstr(g->name, g->name_len);
    ws(",\"desc\":");
    wstr(g->desc, g->desc_len);
    if (viewer) {
        ws(viewer == g->creator ? ",\"role\":\"creator\"" : ",\"role\":\"member\"");
    } else {
        ws(",\"creator\":");
        wu(g->creator);
    }
    ws(",\"members\":[");
    for (uint32_t i = 0; i < g->n && i < page; i++) {
        const struct user *u = &users[g->members[i] - 1];
        ws(i ? ",{\"id\":" : "{\"id\":");
        wu(g->members[i]);
        ws(",\"name\":");
        wstr(u->name, u->name_len);
        ws(g->members[i] == g->creator ? ",\"role\":\"creator\"" : ",\"role\":\"member\"");
        ws(u->conn ? ",\"online\":true}" : ",\"online\":false}");
    }
    ws("],\"member_count\":");
    wu(g->n);
    ws(g->n > page ? ",\"more_members\":true}" : ",\"more_members\":false}");
}

/* -- requests ---------------------------------------------------------------------- */

static void close_later(struct conn *c) {
    if (!c->closing) {
        c->closing = true;
        c->close_by = time(NULL) + CLOSE_WAIT_S;
        c->closing_next = closing_list;
        if (closing_list)
            closing_list->closing_prev = c;
        closing_list = c;
    }
    queue(c);
}

static void on_register(struct conn *c, struct span *f) {
    if (!need_string(c, f, F_NAME) || !need_string(c, f, F_PASSWORD))
        return;
    size_t pw_chars = span_chars(&f[F_PASSWORD], NULL);
    char *mem = NULL;
    if (!good_name(&f[F_NAME]))
        send_error(c, "bad_name", "a name is 1-32 letters, digits, '_', '.' or '-', "
                                  "not only digits");
    else if (pw_chars < 6 || pw_chars > 256)
        send_error(c, "weak_password", "a password is 6-256 characters");
    else if (find_user(f[F_NAME].p, f[F_NAME].n))
        send_error(c, "name_taken", "this name is taken");
    else if (n_users >= MAX_USERS || !grow_users() ||
             !(mem = malloc(f[F_NAME].n + f[F_PASSWORD].n + 1)))
        send_error(c, "internal", "internal server error");
    if (!mem)
        return;
    struct user *u = &users[n_users++];
    memcpy(mem, f[F_NAME].p, f[F_NAME].n);
    memcpy(mem + f[F_NAME].n, f[F_PASSWORD].p, f[F_PASSWORD].n);
    *u = (struct user){.name = mem, .name_len = (uint32_t)f[F_NAME].n,
                       .pw = mem + f[F_NAME].n, .pw_len = (uint32_t)f[F_PASSWORD].n};
    index_put(n_users);
    reply_start("register");
    ws(",\"id\":");
    wu(n_users);
    ws(",\"name\":");
    wstr(u->name, u->name_len);
    reply_end(c);
}

static void on_login(struct conn *c, struct span *f) {
    if (!f[F_NAME].kind) {
        error_field(c, "missing_field", "login needs 'name'", "name");
        return;
    }
    if (!need_string(c, f, F_NAME) || !need_string(c, f, F_PASSWORD))
        return;
    if (c->uid) {
        send_error(c, "already_logged_in", "this connection is logged in; log out first");
        return;
    }
    uint32_t uid = find_user(f[F_NAME].p, f[F_NAME].n);
    struct user *u = uid ? &users[uid - 1] : NULL;
    if (!u || u->pw_len != f[F_PASSWORD].n || memcmp(u->pw, f[F_PASSWORD].p, u->pw_len)) {
        send_error(c, "bad_credentials", "wrong user or password");
        return;
    }
    if (u->conn) { /* one session per user: the new login wins */
        struct conn *old = u->conn;
        detach(old);
        line.len = 0;
        ws("{\"type\":\"kicked\",\"reason\":\"logged in from another place\"}\n");
        deliver(old);
        close_later(old);
    }
    u->conn = c;
    c->uid = uid;
    c->max_sent = 0;
    reply_start("login");
    ws(",\"user\":{\"id\":");
    wu(uid);
    ws(",\"name\":");
    wstr(u->name, u->name_len);
    ws("},\"friends\":[],\"friends_more\":false,\"groups\":[");
    unsigned listed = 0; /* the user's first 50 groups */
    for (uint32_t gid = 1; gid <= n_groups && listed < 50; gid++) {
        if (is_member(&groups[gid - 1], uid)) {
            ws(listed++ ? "," : "");
            w_group(gid, uid);
        }
    }
    ws("],\"groups_more\":false,\"requests\":[]}\n");
    ws("{\"type\":\"synced\",\"count\":0}\n"); /* nothing is stored: never a backlog */
    deliver(c);
}

/* The reply to a send: the message's id and time. */
static void reply_sent(struct conn *c, const char *type, uint64_t id, uint64_t ts) {
    reply_start(type);
    ws(",\"id\":");
    wu(id);
    ws(",\"ts\":");
    wu(ts);
    reply_end(c);
}

/* The `message` push of a new message, up to its last field. */
static void w_message(uint64_t id, uint32_t from, const struct span *text, uint64_t ts) {
    const struct user *u = &users[from - 1];
    line.len = 0;
    ws("{\"type\":\"message\",\"id\":");
    wu(id);
    ws(",\"from\":");
    wu(from);
    ws(",\"name\":");
    wstr(u->name, u->name_len);
    ws(",\"text\":");
    wstr(text->p, text->n);
    ws(",\"ts\":");
    wu(ts);
}

static void on_chat(struct conn *c, struct span *f) {
    uint64_t to = need_id(c, f, F_TO);
    if (!to || !need_string(c, f, F_TEXT) || !check_text(c, &f[F_TEXT]))
        return;
    if (to > n_users) {
        send_error(c, "no_such_user", "there is no such user");
        return;
    }
    uint64_t id = ++last_msg_id, ts = now_ms();
    struct conn *rc = users[to - 1].conn;
    if (rc) {
        w_message(id, c->uid, &f[F_TEXT], ts);
        ws(",\"to\":");
        wu(to);
        ws("}\n");
        deliver(rc);
        rc->max_sent = id;
    }
    reply_sent(c, "chat", id, ts);
}

static void on_ack(struct conn *c, struct span *f) {
    uint64_t id = need_id(c, f, F_ID);
    if (!id)
        return;
    struct user *u = &users[c->uid - 1];
    if (id > u->acked && id > c->max_sent) {
        send_error(c, "bad_ack", "that message was not sent to this connection");
        return;
    }
    if (id > u->acked)
        u->acked = id;
    reply_start("ack");
    ws(",\"id\":");
    wu(id);
    reply_end(c);
}

static void on_group_create(struct conn *c, struct span *f) {
    if (!need_string(c, f, F_NAME) || (f[F_DESC].kind && !need_string(c, f, F_DESC)))
        return;
    bool blank;
    size_t n = span_chars(&f[F_NAME], &blank);
    if (blank || n > 64) {
        send_error(c, "bad_name", "a group name is 1-64 characters");
        return;
    }
    if (f[F_DESC].kind && span_chars(&f[F_DESC], NULL) > 256) {
        send_error(c, "too_long", "a group description is at most 256 characters");
        return;
    }
    if (n_groups == cap_groups) {
        uint32_t cap = cap_groups ? cap_groups * 2 : 64;
        struct group *p = cap <= MAX_GROUPS ? realloc(groups, sizeof *p * cap) : NULL;
        if (!p) {
            send_error(c, "too_many_groups_created", "no more groups can be created");
            return;
        }
        groups = p;
        cap_groups = cap;
    }
    size_t name_n = f[F_NAME].n, desc_n = f[F_DESC].kind ? f[F_DESC].n : 0;
    char *mem = malloc(name_n + desc_n + 1);
    uint32_t *members = malloc(sizeof *members * 8);
    if (!mem || !members) {
        free(mem);
        free(members);
        send_error(c, "internal", "internal server error");
        return;
    }
    memcpy(mem, f[F_NAME].p, name_n);
    if (desc_n)
        memcpy(mem + name_n, f[F_DESC].p, desc_n);
    members[0] = c->uid;
    groups[n_groups++] = (struct group){.name = mem, .name_len = (uint32_t)name_n,
                                        .desc = mem + name_n, .desc_len = (uint32_t)desc_n,
                                        .creator = c->uid, .members = members, .n = 1,
                                        .cap = 8};
    reply_start("group_create");
    ws(",\"group\":");
    w_group(n_groups, 0);
    reply_end(c);
}

static void on_group_join(struct conn *c, struct span *f) {
    uint64_t gid = need_id(c, f, F_GROUP);
    if (!gid)
        return;
    struct group *g = gid <= n_groups ? &groups[gid - 1] : NULL;
    uint32_t *members = NULL;
    if (!g)
        send_error(c, "no_such_group", "there is no such group");
    else if (is_member(g, c->uid))
        send_error(c, "already_member", "you are already in this group");
    else if (g->n >= GROUP_MEMBERS_MAX)
        send_error(c, "group_full", "this group has the most members a group may have");
    else if (g->n < g->cap)
        members = g->members;
    else if (!(members = realloc(g->members, sizeof *members * g->cap * 2)))
        send_error(c, "internal", "internal server error");
    else
        g->cap *= 2;
    if (!members)
        return;
    g->members = members;
    g->members[g->n++] = c->uid;
    reply_start("group_join");
    ws(",\"group\":");
    w_group((uint32_t)gid, 0);
    reply_end(c);
    line.len = 0;
    ws("{\"type\":\"group_joined\",\"group\":");
    wu(gid);
    ws(",\"user\":");
    wu(c->uid);
    ws(",\"name\":");
    wstr(users[c->uid - 1].name, users[c->uid - 1].name_len);
    ws("}\n");
    for (uint32_t i = 0; i < g->n; i++) {
        struct conn *mc = users[g->members[i] - 1].conn;
        if (mc && mc != c)
            deliver(mc);
    }
}

static void on_group_chat(struct conn *c, struct span *f) {
    uint64_t gid = need_id(c, f, F_GROUP);
    if (!gid || !need_string(c, f, F_TEXT) || !check_text(c, &f[F_TEXT]))
        return;
    const struct group *g = gid <= n_groups ? &groups[gid - 1] : NULL;
    if (!g) {
        send_error(c, "no_such_group", "there is no such group");
        return;
    }
    if (!is_member(g, c->uid)) {
        send_error(c, "not_member", "you are not a member of this group");
        return;
    }
    uint64_t id = ++last_msg_id, ts = now_ms();
    w_message(id, c->uid, &f[F_TEXT], ts); /* built once, copied to every member online */
    ws(",\"group\":");
    wu(gid);
    ws("}\n");
    for (uint32_t i = 0; i < g->n; i++) {
        struct conn *mc = users[g->members[i] - 1].conn;
        if (mc && mc != c) {
            deliver(mc);
            mc->max_sent = id;
        }
    }
    reply_sent(c, "group_chat", id, ts);
}

static void handle_line(struct conn *c, const char *text, size_t n) {
    if (n && text[n - 1] == '\r')
        n--;
    size_t i = 0;
    while (i < n && text[i] && strchr(" \t\r\v\f", text[i]))
        i++;
    if (i == n)
        return; /* a blank line: no reply */
    struct span f[N_FIELDS];
    cur_req = (struct span){0};
    int parsed = valid_utf8((const unsigned char *)text, n) ? parse_request(text, text + n, f)
                                                            : -1;
    if (parsed == -1) {
        send_error(c, "bad_json", "each line must be one JSON object");
        return;
    }
    if (parsed == -2) {
        send_error(c, "bad_request", "a request is a JSON object");
        return;
    }
    if (f[F_REQ].kind == 'o' || f[F_REQ].kind == 'a') {
        error_field(c, "bad_field", "field 'req' must be a JSON scalar", "req");
        return;
    }
    cur_req = f[F_REQ];
    if (!need_string(c, f, F_TYPE))
        return;
    static const struct {
        const char *type;
        void (*handler)(struct conn *, struct span *);
        bool anonymous; /* served before login */
    } table[] = {
        {"chat", on_chat, false},           {"ack", on_ack, false},
        {"group_chat", on_group_chat, false}, {"ping", NULL, true},
        {"register", on_register, true},    {"login", on_login, true},
        {"logout", NULL, false},            {"group_create", on_group_create, false},
        {"group_join", on_group_join, false},
    };
    for (size_t k = 0; k < sizeof table / sizeof table[0]; k++) {
        if (!span_is(&f[F_TYPE], table[k].type))
            continue;
        if (!table[k].anonymous && !c->uid)
            send_error(c, "not_logged_in", "log in first");
        else if (table[k].handler)
            table[k].handler(c, f);
        else if (table[k].anonymous) /* ping */
            reply_start("pong"), reply_end(c);
        else /* logout */
            detach(c), reply_start("logout"), reply_end(c);
        return;
    }
    send_error(c, "unknown_type", "the ceiling serves only register, login, logout, ping, "
                                  "chat, ack, group_create, group_join and group_chat");
}

/* -- connections --------------------------------------------------------------------- */

static void set_events(struct conn *c, uint32_t events) {
    if (c->events == events)
        return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->events = events;
    else
        c->dead = true;
}

static void close_conn(struct conn *c) {
    detach(c);
    if (c->closing) {
        if (c->closing_prev)
            c->closing_prev->closing_next = c->closing_next;
        else
            closing_list = c->closing_next;
        if (c->closing_next)
            c->closing_next->closing_prev = c->closing_prev;
    }
    close(c->fd); /* also leaves the epoll set */
    buf_release(&c->in);
    buf_release(&c->out);
    free(c);
    if (!listening) { /* a descriptor is free again */
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, listen_fd, &ev) == 0)
            listening = true;
    }
}

static void on_accept(void) {
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* no descriptor to spare: stop listening until a connection closes */
                epoll_ctl(epfd, EPOLL_CTL_DEL, listen_fd, NULL);
                listening = false;
            }
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (!c || epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
            free(c);
            close(fd);
            continue;
        }
        c->fd = fd;
        c->events = EPOLLIN;
    }
}

static void on_readable(struct conn *c) {
    size_t have = c->in.len;
    if (have)
        memcpy(read_buf, c->in.p, have);
    c->in.len = 0;
    ssize_t got = read(c->fd, read_buf + have, READ_CHUNK);
    if (got <= 0) {
        if (got < 0 && (errno == EAGAIN || errno == EINTR)) {
            c->in.len = have; /* still there */
            return;
        }
        c->dead = true; /* closed by the client, or broken */
        queue(c);
        return;
    }
    have += (size_t)got;
    size_t start = 0;
    while (!c->closing && !c->dead) {
        char *nl = memchr(read_buf + start, '\n', have - start);
        if (!nl)
            break;
        size_t len = (size_t)(nl - (read_buf + start));
        if (len > MAX_LINE)
            break;
        handle_line(c, read_buf + start, len);
        start += len + 1;
    }
    if (c->closing || c->dead)
        return;
    size_t rest = have - start;
    if (rest > MAX_LINE || (rest && memchr(read_buf + start, '\n', rest))) {
        cur_req = (struct span){0};
        send_error(c, "line_too_long", "a line is at most 65536 bytes; closing");
        close_later(c);
        return;
    }
    if (rest) {
        if (!buf_reserve(&c->in, rest, MAX_LINE)) {
            c->dead = true;
            queue(c);
            return;
        }
        memcpy(c->in.p, read_buf + start, rest);
        c->in.len = rest;
    } else if (c->in.cap > 4096) {
        buf_release(&c->in);
    }
}

/* The end of a wake-up: one write to every connection something was queued for. */
static void flush_all(void) {
    while (flush_list) {
        struct conn *c = flush_list;
        flush_list = c->next;
        c->queued = false;
        if (!c->dead && c->out.len) {
            ssize_t n = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL);
            if (n < 0 && errno != EAGAIN && errno != EINTR) {
                c->dead = true;
            } else if (n > 0) {
                c->out.len -= (size_t)n;
                memmove(c->out.p, c->out.p + n, c->out.len);
            }
        }
        if (!c->dead && c->out.len == 0 && c->out.cap > 65536)
            buf_release(&c->out);
        if (c->dead || (c->closing && c->out.len == 0)) {
            close_conn(c);
            continue;
        }
        /* while output waits, read nothing more from it (it is not reading either) */
        set_events(c, c->out.len ? EPOLLOUT : c->closing ? 0 : EPOLLIN);
        if (c->dead)
            close_conn(c);
    }
}

/* Closing connections that have not read their last lines in time are cut. */
static void sweep_closing(void) {
    time_t now = time(NULL);
    for (struct conn *c = closing_list; c; c = c->closing_next) {
        if (now >= c->close_by) {
            c->dead = true;
            queue(c);
        }
    }
}

int main(int argc, char **argv) {
    const char *host = argc > 1 ? argv[1] : "127.0.0.1";
    int port = argc > 2 ? atoi(argv[2]) : 0;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (argc > 3 || inet_pton(AF_INET, host, &addr.sin_addr) != 1 || port < 0 || port > 65535) {
        fprintf(stderr, "usage: %s [IPV4-ADDRESS [PORT]]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    socklen_t len = sizeof addr;
    if (listen_fd < 0 ||
        setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 || bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        listen(listen_fd, SOMAXCONN) != 0 ||
        getsockname(listen_fd, (struct sockaddr *)&addr, &len) != 0) {
        perror("ceiling: listen");
        return 1;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, listen_fd, &ev) != 0) {
        perror("ceiling: epoll");
        return 1;
    }
    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    struct epoll_event events[EVENTS];
    for (;;) {
        int n = epoll_wait(epfd, events, EVENTS, closing_list ? 1000 : -1);
        if (n < 0 && errno != EINTR) {
            perror("ceiling: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (!c) {
                on_accept();
            } else if (!c->dead) {
                if (events[i].events & (EPOLLERR | EPOLLHUP)) {
                    c->dead = true;
                    queue(c);
                } else if (events[i].events & EPOLLOUT) {
                    queue(c); /* room again: the flush below writes what waits */
                } else if (events[i].events & EPOLLIN) {
                    on_readable(c);
                }
            }
        }
        if (closing_list)
            sweep_closing();
        flush_all();
    }
}
