/*
 * wechat: the WeChat Official Account (MP) and WeCom channel adapter.
 *
 *   [[adapter]]
 *   type = "wechat"
 *   name = "wx-main"
 *   tenant = "acme"
 *   path = "/wx/main"                 # the callback URL path
 *   variant = "mp"                    # or "wecom"
 *   mode = "compatible"               # MP: plain | compatible | safe
 *   token = "env:WX_TOKEN"
 *   encoding_aes_key = "env:WX_AES"   # 43 characters
 *   receive_id = "wx1234567890abcdef" # AppID (MP) or CorpID (WeCom)
 *   secret = "env:WX_SECRET"          # outbound: AppSecret / corpsecret
 *   agent_id = 1000002                # WeCom outbound
 *   api_base = "https://api.weixin.qq.com"
 *
 * Inbound (worker loops): wx_request() decides (verification echo, reject
 * with the official code named in the log, or a message); wx_build_msg()
 * maps it onto an envelope with the idempotency key; emit; WeChat is
 * answered only from the emit completion. Within reply_window_ms of receipt
 * an outbound answer to that user (deliver with reply_to) goes back in the
 * HTTP response as a passive reply (encrypted when the request was);
 * otherwise the request is answered "success" and later answers go through
 * the customer-service API (MP message/custom/send, WeCom message/send) with
 * one access-token owner per instance (control loop only).
 */
#include <kfgate/envelope.h>
#include <kfgate/plugin.h>

#include <pthread.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "wx_crypto.h"
#include "wx_proto.h"
#include "wx_xml.h"

static const struct kfg_config_key wx_config[] = {
    {"path", KFG_CFG_STRING, KFG_CFG_REQUIRED, NULL, "callback URL path, e.g. \"/wx/main\""},
    {"variant", KFG_CFG_STRING, 0, "mp", "\"mp\" (Official Account) or \"wecom\""},
    {"mode", KFG_CFG_STRING, 0, "compatible",
     "MP: which POSTs are accepted: \"plain\", \"compatible\" (both) or \"safe\""},
    {"token", KFG_CFG_SECRET, KFG_CFG_REQUIRED, NULL, "the callback Token"},
    {"encoding_aes_key", KFG_CFG_SECRET, 0, NULL, "the 43-character EncodingAESKey"},
    {"receive_id", KFG_CFG_STRING, 0, NULL, "AppID (MP) or CorpID / SuiteID (WeCom); may be \"\""},
    {"secret", KFG_CFG_SECRET, 0, NULL, "AppSecret (MP) or the app's corpsecret (WeCom)"},
    {"agent_id", KFG_CFG_INT, 0, "0", "WeCom: the app's AgentID for message/send"},
    {"api_base", KFG_CFG_STRING, 0, NULL,
     "API base URL (default https://api.weixin.qq.com or https://qyapi.weixin.qq.com)"},
    {"stable_token", KFG_CFG_BOOL, 0, "true", "MP: use /cgi-bin/stable_token, not /cgi-bin/token"},
    {"reply_window_ms", KFG_CFG_INT, 0, "4500",
     "how long after receipt an answer can still go back as a passive reply"},
    {"max_body", KFG_CFG_INT, 0, "262144", "largest callback body, bytes"},
    {"keep_raw", KFG_CFG_BOOL, 0, "false", "publish the decrypted XML as raw.body"},
    {"api_timeout_ms", KFG_CFG_INT, 0, "10000", "timeout of one API call"},
    {NULL, 0, 0, NULL, NULL},
};

enum outcome {
    O_OK, O_DROPPED, O_VERIFY, O_REJECT, O_BUSY, O_ERROR, O_PASSIVE, O__N
};
static const char *const outcome_label[O__N] = {
    "outcome=\"ok\"", "outcome=\"dropped\"", "outcome=\"verified\"",
    "outcome=\"rejected\"", "outcome=\"busy\"", "outcome=\"error\"",
    "outcome=\"passive_reply\"",
};

#define RUNNING 1L
#define ONE_WORK 2L
#define TOKEN_CAP 1024
#define TOKEN_MARGIN_MS (300 * 1000LL)

struct wx;

/* One callback request between emit and its answer (worker loop). */
struct call {
    struct wx *wx;
    struct kfg_request *req;
    struct kfg_loop *loop;
    struct timespec t0;
    int64_t t0_ms;
    int encrypted;
    struct wx_info info;
    char id[48];                    /* the envelope id (ABI 1.1 emit2), "" if unknown */
    /* passive-reply waiter: in wx->waiters while waiting (under wx->lock) */
    int waiting;
    struct kfg_timer *timer;        /* on `loop` */
    struct call *prev, *next;
    struct wx_buf reply;            /* set by deliver when claimed */
};

/* One outbound API delivery (control loop). */
struct job {
    struct wx *wx;
    struct kfg_delivery *d;
    char *body;                     /* JSON */
    size_t body_len;
    int token_retried;
    char used_token[TOKEN_CAP];
    struct job *next;               /* in wx->token_wait */
    struct job *all_prev, *all_next;
};

struct wx {
    struct kfg_instance *ins;
    const struct kfg_host *host;
    struct kfg_loop *control;
    struct wx_conf conf;
    const char *path, *secret, *api_base;
    int64_t agent_id;
    int stable;
    int64_t reply_window_ms, api_timeout_ms;
    size_t max_body;
    int keep_raw;
    int has_emit2;                  /* the host has ABI 1.1 emit2 */

    atomic_long inflight;

    pthread_mutex_t lock;           /* waiters */
    struct call *waiters;

    /* access token: control loop only */
    char token[TOKEN_CAP];
    int64_t token_expires_ms;       /* refresh due at this time */
    int refreshing;
    int64_t last_force_ms;
    struct job *token_wait, *token_wait_tail;
    /* the last token request failed: why, since when (health) */
    char token_error[160];
    int64_t token_error_ms;
    struct job *jobs;               /* all jobs, for destroy */

    struct kfg_metric *requests[O__N];
    struct kfg_metric *latency;
    struct kfg_metric *api_calls, *token_refreshes;
};

static struct timespec mono(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t;
}

static int64_t wall_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static double since(struct timespec t0)
{
    struct timespec t = mono();
    return (double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9;
}

/* ------------------------------------------------------------------------ */
/* In-flight accounting for stop (as in the example adapter). */

static int acquire(struct wx *wx)
{
    long n = atomic_load(&wx->inflight);
    while (n & RUNNING)
        if (atomic_compare_exchange_weak(&wx->inflight, &n, n + ONE_WORK))
            return 1;
    return 0;
}

static void on_drained(void *arg)
{
    struct wx *wx = arg;
    wx->host->stopped(wx->ins);
}

static void release(struct wx *wx)
{
    if (atomic_fetch_sub(&wx->inflight, ONE_WORK) != ONE_WORK)
        return;
    if (wx->host->post(wx->control, on_drained, wx) != KFG_OK)
        wx->host->log(wx->ins, NULL, KFG_LOG_WARN, "cannot post stopped: control loop gone");
}

/* ------------------------------------------------------------------------ */
/* Answers */

static void respond(struct wx *wx, struct kfg_request *req, int status, const char *ctype,
                    const char *body, size_t len, int retry_after)
{
    struct kfg_header h[2] = {{"Content-Type", ctype}, {"Retry-After", "1"}};
    wx->host->req_respond(req, status, h, retry_after ? 2 : 1, body, len);
}

static void count(struct wx *wx, enum outcome o, struct timespec t0)
{
    wx->host->metric_add(wx->requests[o], 1);
    wx->host->metric_observe(wx->latency, since(t0));
}

static void call_free(struct call *c)
{
    wx_buf_free(&c->reply);
    free(c);
}

/* "success": received, no passive reply (WeChat does not retry). */
static void answer_success(struct call *c, enum outcome o)
{
    respond(c->wx, c->req, 200, "text/plain; charset=utf-8", "success", 7, 0);
    count(c->wx, o, c->t0);
    struct wx *wx = c->wx;
    call_free(c);
    release(wx);
}

/* The waiter's window closed: answer "success" unless deliver claimed it. */
static void on_window(void *arg)
{
    struct call *c = arg;
    struct wx *wx = c->wx;
    pthread_mutex_lock(&wx->lock);
    int mine = c->waiting;
    if (mine) {
        c->waiting = 0;
        if (c->prev) c->prev->next = c->next; else wx->waiters = c->next;
        if (c->next) c->next->prev = c->prev;
    }
    pthread_mutex_unlock(&wx->lock);
    wx->host->timer_free(c->timer);
    c->timer = NULL;
    if (mine)
        answer_success(c, O_OK);
    /* else: deliver claimed it and posted on_passive to this loop */
}

/* Posted by deliver to the request's loop with the reply in c->reply. */
static void on_passive(void *arg)
{
    struct call *c = arg;
    struct wx *wx = c->wx;
    if (c->timer) {
        wx->host->timer_free(c->timer);
        c->timer = NULL;
    }
    if (!c->reply.len) {
        answer_success(c, O_OK);
        return;
    }
    respond(wx, c->req, 200, "application/xml", c->reply.p, c->reply.len, 0);
    count(wx, O_PASSIVE, c->t0);
    call_free(c);
    release(wx);
}

static void on_emitted(void *arg, int result, uint64_t seq, const char *reason)
{
    struct call *c = arg;
    struct wx *wx = c->wx;
    const struct kfg_host *h = wx->host;
    (void)seq;
    switch (result) {
    case KFG_OK: {
        /* Durable (or a duplicate of a durable one): WeChat may be told. */
        int64_t left = c->t0_ms + wx->reply_window_ms - wall_ms();
        if (left > 0 && c->info.from[0] && c->info.to[0] && !c->info.unknown &&
            atomic_load(&wx->inflight) & RUNNING) {
            c->timer = h->timer_start(wx->ins, (uint64_t)left, 0, on_window, c);
            if (c->timer) {
                pthread_mutex_lock(&wx->lock);
                c->waiting = 1;
                c->prev = NULL;
                c->next = wx->waiters;
                if (c->next) c->next->prev = c;
                wx->waiters = c;
                pthread_mutex_unlock(&wx->lock);
                return;
            }
        }
        answer_success(c, O_OK);
        return;
    }
    case KFG_EDROPPED:
        h->log(wx->ins, c->req, KFG_LOG_INFO, "dropped by a filter: %s", reason ? reason : "");
        answer_success(c, O_DROPPED);
        return;
    case KFG_AGAIN:
    case KFG_ESTOPPED:
        /* Not stored: WeChat retries on anything but success. */
        respond(wx, c->req, 503, "text/plain", "", 0, 1);
        count(wx, O_BUSY, c->t0);
        break;
    default:
        h->log(wx->ins, c->req, KFG_LOG_WARN, "emit failed: %d", result);
        respond(wx, c->req, 500, "text/plain", "", 0, 0);
        count(wx, O_ERROR, c->t0);
        break;
    }
    call_free(c);
    release(wx);
}

/* ABI 1.1: the completion also names the envelope, so that a passive reply
 * is matched to the very message it answers (reply_to). A duplicate names
 * the original, which is what a core answers. */
static void on_emitted2(void *arg, const struct kfg_emit_result *r)
{
    struct call *c = arg;
    if (r->result == KFG_OK && r->id)
        wx_copy_cut(c->id, sizeof c->id, r->id, strlen(r->id));
    on_emitted(c, r->result, r->seq, r->reason);
}

static void on_callback(void *ctx, struct kfg_request *req)
{
    struct wx *wx = ctx;
    const struct kfg_host *h = wx->host;
    struct timespec t0 = mono();
    int64_t t0_ms = wall_ms();
    struct kfg_str method = h->req_method(req), query = h->req_query(req),
                   body = h->req_body(req);

    if (body.len > wx->max_body) {
        h->log(wx->ins, req, KFG_LOG_WARN, "rejected: body of %zu bytes over max_body",
               body.len);
        respond(wx, req, 413, "text/plain", "", 0, 0);
        count(wx, O_REJECT, t0);
        return;
    }
    struct wx_req r;
    wx_request(&wx->conf, method.ptr, method.len, query.ptr, query.len, body.ptr, body.len, &r);
    if (r.kind == WX_R_REJECT) {
        /* the official code by name: -40005 is ValidateAppid_Error on MP */
        const char *name = r.code == WX_VALIDATE_RECEIVEID && wx->conf.variant == WX_MP
                               ? "ValidateAppid_Error"
                               : wx_err_name(r.code);
        if (r.code)
            h->log(wx->ins, req, KFG_LOG_WARN, "rejected: %d %s: %s", r.code, name, r.why);
        else
            h->log(wx->ins, req, KFG_LOG_WARN, "rejected: %s", r.why);
        respond(wx, req, r.status, "text/plain", "", 0, 0);
        count(wx, O_REJECT, t0);
        wx_req_free(&r);
        return;
    }
    if (r.kind == WX_R_ECHO) {
        h->log(wx->ins, req, KFG_LOG_INFO, "URL verification ok");
        respond(wx, req, 200, "text/plain", r.echo, r.echo_len, 0);
        count(wx, O_VERIFY, t0);
        wx_req_free(&r);
        return;
    }
    if (!acquire(wx)) {
        respond(wx, req, 503, "text/plain", "", 0, 1);
        count(wx, O_BUSY, t0);
        wx_req_free(&r);
        return;
    }
    struct call *c = calloc(1, sizeof *c);
    if (!c) {
        respond(wx, req, 500, "text/plain", "", 0, 0);
        count(wx, O_ERROR, t0);
        wx_req_free(&r);
        release(wx);
        return;
    }
    c->wx = wx;
    c->req = req;
    c->loop = h->req_loop(req);
    c->t0 = t0;
    c->t0_ms = t0_ms;
    c->encrypted = r.encrypted;
    struct wx_build_opts o = {
        .variant = wx->conf.variant,
        .keep_raw = wx->keep_raw,
        .now_ms = t0_ms,
        .deadline_ms = wx->reply_window_ms > 0 ? t0_ms + wx->reply_window_ms : 0,
    };
    struct kfg_msg *m = NULL;
    int rc = wx_build_msg(h, wx->ins, &r.xml, r.inner, r.inner_len, &o, &m, &c->info);
    wx_req_free(&r);
    if (rc == KFG_EINVAL && !m) {
        h->log(wx->ins, req, KFG_LOG_WARN,
               "rejected: %d %s: message without MsgType or FromUserName", WX_PARSE_XML,
               wx_err_name(WX_PARSE_XML));
        respond(wx, req, 400, "text/plain", "", 0, 0);
        count(wx, O_REJECT, t0);
        call_free(c);
        release(wx);
        return;
    }
    if (rc == KFG_OK)
        rc = wx->has_emit2 ? h->emit2(wx->ins, m, on_emitted2, c)
                           : h->emit(wx->ins, m, on_emitted, c);
    if (rc != KFG_OK) {
        if (m)
            h->msg_free(m);
        on_emitted(c, rc, 0, NULL);
    }
}

/* ------------------------------------------------------------------------ */
/* Outbound: access token and API calls (control loop) */

/* Minimal reader of a flat JSON object: the value of top-level `key` as
 * text (strings unescaped for \" \\ \/ only; the values we read are plain
 * ASCII) or raw number. Returns length or -1. */
static long json_get(const char *s, size_t n, const char *key, char *out, size_t cap)
{
    size_t kl = strlen(key);
    int depth = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '{' || ch == '[') { depth++; continue; }
        if (ch == '}' || ch == ']') { depth--; continue; }
        if (ch != '"')
            continue;
        size_t j = i + 1;
        while (j < n && s[j] != '"') {
            if (s[j] == '\\') j++;
            j++;
        }
        if (j >= n)
            return -1;
        int is_key = depth == 1 && j - i - 1 == kl && memcmp(s + i + 1, key, kl) == 0;
        size_t k = j + 1;
        while (k < n && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r' || s[k] == '\n')) k++;
        if (!is_key || k >= n || s[k] != ':') {
            i = j;
            continue;
        }
        k++;
        while (k < n && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r' || s[k] == '\n')) k++;
        size_t o = 0;
        if (k < n && s[k] == '"') {
            for (k++; k < n && s[k] != '"'; k++) {
                if (s[k] == '\\' && k + 1 < n) k++;
                if (o + 1 >= cap) return -1;
                out[o++] = s[k];
            }
        } else {
            while (k < n && s[k] != ',' && s[k] != '}' && s[k] != ' ') {
                if (o + 1 >= cap) return -1;
                out[o++] = s[k++];
            }
        }
        out[o] = '\0';
        return (long)o;
    }
    return -1;
}

static void json_str(struct wx_buf *b, const char *s, size_t n)
{
    wx_buf_puts(b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[8];
        if (c == '"' || c == '\\') {
            e[0] = '\\', e[1] = (char)c;
            wx_buf_put(b, e, 2);
        } else if (c < 0x20) {
            int k = snprintf(e, sizeof e, "\\u%04x", c);
            wx_buf_put(b, e, (size_t)k);
        } else {
            wx_buf_put(b, s + i, 1);
        }
    }
    wx_buf_puts(b, "\"");
}

static struct kfg_str part_get(const struct kfg_host *h, const struct kfg_msg *m, size_t i,
                               const char *k)
{
    struct kfg_str s = h->msg_part_get(m, i, k);
    if (!s.ptr)
        s.ptr = "", s.len = 0;
    return s;
}

/* The API body for an outbound envelope; KFG_EINVAL if it has no form. */
static int api_body(struct wx *wx, const struct kfg_msg *m, struct wx_buf *b)
{
    const struct kfg_host *h = wx->host;
    struct kfg_str to = h->msg_get(m, KFG_ENV_CONVERSATION_ID);
    if (!to.ptr || !to.len)
        to = h->msg_get(m, KFG_ENV_RECIPIENT_ID);
    size_t n = h->msg_part_count(m);
    if (!to.ptr || !to.len || n == 0)
        return KFG_EINVAL;
    const char *k = h->msg_part_kind(m, 0);
    if (!k)
        return KFG_EINVAL;
    wx_buf_puts(b, "{\"touser\":");
    json_str(b, to.ptr, to.len);
    if (wx->conf.variant == WX_WECOM) {
        char a[40];
        snprintf(a, sizeof a, ",\"agentid\":%lld", (long long)wx->agent_id);
        wx_buf_puts(b, a);
    }
    if (strcmp(k, KFG_ENV_KIND_LINK) == 0) {
        /* news: the same articles shape on MP custom/send and WeCom message/send */
        wx_buf_puts(b, ",\"msgtype\":\"news\",\"news\":{\"articles\":[");
        if (n > 8)
            return KFG_EINVAL;
        for (size_t i = 0; i < n; i++)
            if (strcmp(h->msg_part_kind(m, i), KFG_ENV_KIND_LINK) != 0)
                return KFG_EINVAL;
        for (size_t i = 0; i < n; i++) {
            if (i) wx_buf_puts(b, ",");
            struct kfg_str t = part_get(h, m, i, KFG_ENV_P_TITLE),
                           d = part_get(h, m, i, KFG_ENV_P_DESCRIPTION),
                           u = part_get(h, m, i, KFG_ENV_P_URL),
                           p = part_get(h, m, i, KFG_ENV_P_THUMB_URL);
            wx_buf_puts(b, "{\"title\":"); json_str(b, t.ptr, t.len);
            wx_buf_puts(b, ",\"description\":"); json_str(b, d.ptr, d.len);
            wx_buf_puts(b, ",\"url\":"); json_str(b, u.ptr, u.len);
            wx_buf_puts(b, ",\"picurl\":"); json_str(b, p.ptr, p.len);
            wx_buf_puts(b, "}");
        }
        wx_buf_puts(b, "]}");
    } else if (n != 1) {
        return KFG_EINVAL;
    } else if (strcmp(k, WX_KIND_MUSIC) == 0) {
        struct kfg_str t = part_get(h, m, 0, KFG_ENV_P_TITLE),
                       d = part_get(h, m, 0, KFG_ENV_P_DESCRIPTION),
                       u = part_get(h, m, 0, KFG_ENV_P_URL),
                       hq = part_get(h, m, 0, WX_P_HQ_URL),
                       th = part_get(h, m, 0, KFG_ENV_P_THUMB_MEDIA_ID);
        if (wx->conf.variant != WX_MP || !th.len || (!u.len && !hq.len))
            return KFG_EINVAL;
        if (!hq.len)
            hq = u;
        wx_buf_puts(b, ",\"msgtype\":\"music\",\"music\":{\"title\":");
        json_str(b, t.ptr, t.len);
        wx_buf_puts(b, ",\"description\":"); json_str(b, d.ptr, d.len);
        wx_buf_puts(b, ",\"musicurl\":"); json_str(b, u.ptr, u.len);
        wx_buf_puts(b, ",\"hqmusicurl\":"); json_str(b, hq.ptr, hq.len);
        wx_buf_puts(b, ",\"thumb_media_id\":"); json_str(b, th.ptr, th.len);
        wx_buf_puts(b, "}");
    } else if (strcmp(k, KFG_ENV_KIND_TEXT) == 0) {
        struct kfg_str t = part_get(h, m, 0, KFG_ENV_P_TEXT);
        wx_buf_puts(b, ",\"msgtype\":\"text\",\"text\":{\"content\":");
        json_str(b, t.ptr, t.len);
        wx_buf_puts(b, "}");
    } else if (strcmp(k, KFG_ENV_KIND_IMAGE) == 0 || strcmp(k, KFG_ENV_KIND_VOICE) == 0 ||
               strcmp(k, KFG_ENV_KIND_VIDEO) == 0 || strcmp(k, KFG_ENV_KIND_FILE) == 0) {
        struct kfg_str id = part_get(h, m, 0, KFG_ENV_P_MEDIA_ID);
        if (!id.len)
            return KFG_EINVAL;
        if (strcmp(k, KFG_ENV_KIND_FILE) == 0 && wx->conf.variant == WX_MP)
            return KFG_EINVAL;
        wx_buf_puts(b, ",\"msgtype\":\"");
        wx_buf_puts(b, k);
        wx_buf_puts(b, "\",\"");
        wx_buf_puts(b, k);
        wx_buf_puts(b, "\":{\"media_id\":");
        json_str(b, id.ptr, id.len);
        if (strcmp(k, KFG_ENV_KIND_VIDEO) == 0) {
            struct kfg_str th = part_get(h, m, 0, KFG_ENV_P_THUMB_MEDIA_ID),
                           t = part_get(h, m, 0, KFG_ENV_P_TITLE),
                           d = part_get(h, m, 0, KFG_ENV_P_DESCRIPTION);
            if (wx->conf.variant == WX_MP) {
                wx_buf_puts(b, ",\"thumb_media_id\":");
                json_str(b, th.ptr, th.len);
            }
            wx_buf_puts(b, ",\"title\":"); json_str(b, t.ptr, t.len);
            wx_buf_puts(b, ",\"description\":"); json_str(b, d.ptr, d.len);
        }
        wx_buf_puts(b, "}");
    } else {
        return KFG_EINVAL;
    }
    if (wx->conf.variant == WX_WECOM)
        wx_buf_puts(b, ",\"safe\":0");
    wx_buf_puts(b, "}");
    return b->oom ? KFG_ENOMEM : KFG_OK;
}

static void job_finish(struct job *j, int result, const char *code, const char *detail)
{
    struct wx *wx = j->wx;
    wx->host->delivered(j->d, result, code, detail);
    if (j->all_prev) j->all_prev->all_next = j->all_next; else wx->jobs = j->all_next;
    if (j->all_next) j->all_next->all_prev = j->all_prev;
    free(j->body);
    free(j);
    release(wx);
}

static void token_fetch(struct wx *wx, int force);
static void job_send(struct job *j);

/* Waits for a token (single flight), or sends now if there is one. */
static void job_go(struct job *j, int force)
{
    struct wx *wx = j->wx;
    if (!force && wx->token[0] && wall_ms() < wx->token_expires_ms) {
        job_send(j);
        return;
    }
    j->next = NULL;
    if (wx->token_wait_tail) wx->token_wait_tail->next = j; else wx->token_wait = j;
    wx->token_wait_tail = j;
    if (!wx->refreshing)
        token_fetch(wx, force);
}

static void on_token(void *arg, int result, int status, struct kfg_str body, const char *error)
{
    struct wx *wx = arg;
    const struct kfg_host *h = wx->host;
    char tok[TOKEN_CAP], num[32], code[32] = "", emsg[96] = "";
    const char *detail = NULL;
    wx->refreshing = 0;
    h->metric_add(wx->token_refreshes, 1);
    int ok = 0, retriable = 1;
    if (result != KFG_OK) {
        detail = error ? error : "token request failed";
    } else if (status != 200) {
        detail = "token request: HTTP error";
    } else if (json_get(body.ptr, body.len, "access_token", tok, sizeof tok) > 0) {
        int64_t exp = 7200;
        if (json_get(body.ptr, body.len, "expires_in", num, sizeof num) > 0)
            exp = strtoll(num, NULL, 10);
        if (exp <= 0)
            exp = 7200;
        memcpy(wx->token, tok, strlen(tok) + 1);
        int64_t margin = exp * 1000 > 2 * TOKEN_MARGIN_MS ? TOKEN_MARGIN_MS : exp * 500;
        wx->token_expires_ms = wall_ms() + exp * 1000 - margin;
        ok = 1;
    } else {
        json_get(body.ptr, body.len, "errcode", code, sizeof code);
        json_get(body.ptr, body.len, "errmsg", emsg, sizeof emsg);
        detail = "token request refused";
        long ec = strtol(code, NULL, 10);
        /* configuration errors are final */
        if (ec == 40013 || ec == 40125 || ec == 40164 || ec == 40001 || ec == 60020 ||
            ec == 40091 || ec == 41002 || ec == 41004)
            retriable = 0;
    }
    if (!ok) {
        h->log(wx->ins, NULL, KFG_LOG_WARN, "access token refresh failed: %s%s%s",
               detail, code[0] ? " errcode=" : "", code);
        if (!wx->token_error[0])
            wx->token_error_ms = wall_ms();
        snprintf(wx->token_error, sizeof wx->token_error, "%s%s%s%s%s%s", detail,
                 code[0] ? " (errcode " : "", code, emsg[0] ? ": " : "", emsg,
                 code[0] ? ")" : "");
    } else {
        wx->token_error[0] = '\0';
    }
    struct job *q = wx->token_wait;
    wx->token_wait = wx->token_wait_tail = NULL;
    while (q) {
        struct job *n = q->next;
        if (ok)
            job_send(q);
        else
            job_finish(q, retriable ? KFG_RETRY : KFG_EFAIL, code[0] ? code : NULL, detail);
        q = n;
    }
}

static void token_fetch(struct wx *wx, int force)
{
    const struct kfg_host *h = wx->host;
    char url[2048];
    struct wx_buf body = {0};
    struct kfg_http_call call = {.timeout_ms = (uint32_t)wx->api_timeout_ms};
    const char *hdrs[] = {"Content-Type: application/json", NULL};
    const char *rid = wx->conf.receive_id ? wx->conf.receive_id : "";
    if (wx->conf.variant == WX_WECOM) {
        snprintf(url, sizeof url, "%s/cgi-bin/gettoken?corpid=%s&corpsecret=%s", wx->api_base,
                 rid, wx->secret);
        call.method = "GET";
    } else if (wx->stable) {
        int64_t now = wall_ms();
        /* force_refresh is limited (20 a day, 30 s apart). */
        int f = force && now - wx->last_force_ms >= 30000;
        if (f)
            wx->last_force_ms = now;
        snprintf(url, sizeof url, "%s/cgi-bin/stable_token", wx->api_base);
        wx_buf_puts(&body, "{\"grant_type\":\"client_credential\",\"appid\":");
        json_str(&body, rid, strlen(rid));
        wx_buf_puts(&body, ",\"secret\":");
        json_str(&body, wx->secret, strlen(wx->secret));
        wx_buf_puts(&body, f ? ",\"force_refresh\":true}" : ",\"force_refresh\":false}");
        call.method = "POST";
        call.headers = hdrs;
        call.body = body.p;
        call.body_len = body.len;
    } else {
        snprintf(url, sizeof url,
                 "%s/cgi-bin/token?grant_type=client_credential&appid=%s&secret=%s",
                 wx->api_base, rid, wx->secret);
        call.method = "GET";
    }
    call.url = url;
    wx->refreshing = 1;
    int rc = body.oom ? KFG_ENOMEM : h->http_call(wx->ins, &call, on_token, wx);
    wx_buf_free(&body);
    if (rc != KFG_OK) {
        wx->refreshing = 0;
        if (!wx->token_error[0])
            wx->token_error_ms = wall_ms();
        snprintf(wx->token_error, sizeof wx->token_error, "cannot start the token request");
        struct job *q = wx->token_wait;
        wx->token_wait = wx->token_wait_tail = NULL;
        while (q) {
            struct job *n = q->next;
            job_finish(q, KFG_RETRY, NULL, "cannot start the token request");
            q = n;
        }
    }
}

static void on_sent(void *arg, int result, int status, struct kfg_str body, const char *error)
{
    struct job *j = arg;
    struct wx *wx = j->wx;
    char code[32] = "", msg[160] = "";
    if (result != KFG_OK) {
        job_finish(j, KFG_RETRY, NULL, error ? error : "API call failed");
        return;
    }
    if (status != 200) {
        job_finish(j, status >= 500 ? KFG_RETRY : KFG_EFAIL, NULL, "API: HTTP error");
        return;
    }
    if (json_get(body.ptr, body.len, "errcode", code, sizeof code) < 0) {
        job_finish(j, KFG_RETRY, NULL, "API: no errcode in the answer");
        return;
    }
    json_get(body.ptr, body.len, "errmsg", msg, sizeof msg);
    long ec = strtol(code, NULL, 10);
    if (ec == 0) {
        job_finish(j, KFG_OK, NULL, NULL);
        return;
    }
    if ((ec == 40001 || ec == 40014 || ec == 42001) && !j->token_retried) {
        /* The token went bad: refresh once (unless someone already did) and
         * retry this call once. */
        j->token_retried = 1;
        int same = strcmp(j->used_token, wx->token) == 0;
        if (same)
            wx->token[0] = '\0';
        job_go(j, same);
        return;
    }
    wx->host->log(wx->ins, NULL, KFG_LOG_WARN, "API errcode %ld: %s", ec, msg);
    /* -1 (busy) and token errors after one refresh: the host retries with
     * backoff. 45009 quota, 45015 48-hour window, 45047, configuration
     * errors and everything else: final. */
    int retry = ec == -1 || ec == 40001 || ec == 40014 || ec == 42001;
    job_finish(j, retry ? KFG_RETRY : KFG_EFAIL, code, msg[0] ? msg : NULL);
}

static void job_send(struct job *j)
{
    struct wx *wx = j->wx;
    const struct kfg_host *h = wx->host;
    char url[2048 + TOKEN_CAP];
    snprintf(url, sizeof url, "%s/cgi-bin/message/%s?access_token=%s", wx->api_base,
             wx->conf.variant == WX_WECOM ? "send" : "custom/send", wx->token);
    memcpy(j->used_token, wx->token, sizeof j->used_token);
    const char *hdrs[] = {"Content-Type: application/json", NULL};
    struct kfg_http_call call = {
        .method = "POST", .url = url, .headers = hdrs, .body = j->body,
        .body_len = j->body_len, .timeout_ms = (uint32_t)wx->api_timeout_ms,
    };
    h->metric_add(wx->api_calls, 1);
    if (h->http_call(wx->ins, &call, on_sent, j) != KFG_OK)
        job_finish(j, KFG_RETRY, NULL, "cannot start the API call");
}

/* The waiter an answer belongs to, claimed (removed) under the lock: the
 * one whose envelope id is reply_to; with a host that does not tell ids
 * (ABI 1.0), the oldest waiter of that user. */
static struct call *claim_waiter(struct wx *wx, struct kfg_str reply_to, struct kfg_str conv)
{
    struct call *found = NULL;
    pthread_mutex_lock(&wx->lock);
    for (struct call *c = wx->waiters; c; c = c->next) {
        if (c->id[0]) {
            if (strlen(c->id) == reply_to.len && memcmp(c->id, reply_to.ptr, reply_to.len) == 0 &&
                strlen(c->info.from) == conv.len && memcmp(c->info.from, conv.ptr, conv.len) == 0) {
                found = c;
                break;
            }
        } else if (strlen(c->info.from) == conv.len &&
                   memcmp(c->info.from, conv.ptr, conv.len) == 0) {
            found = c;        /* the list is newest first: keep looking for older */
        }
    }
    if (found) {
        found->waiting = 0;
        if (found->prev) found->prev->next = found->next; else wx->waiters = found->next;
        if (found->next) found->next->prev = found->prev;
    }
    pthread_mutex_unlock(&wx->lock);
    return found;
}

static int wx_deliver(void *ctx, const struct kfg_msg *m, struct kfg_delivery *d)
{
    struct wx *wx = ctx;
    const struct kfg_host *h = wx->host;
    struct kfg_str reply_to = h->msg_get(m, KFG_ENV_REPLY_TO);
    struct kfg_str conv = h->msg_get(m, KFG_ENV_CONVERSATION_ID);

    /* Passive reply: an answer to a request still waiting in its window. */
    if (reply_to.ptr && reply_to.len && conv.ptr && conv.len) {
        /* The waiter is matched by reply_to (see claim_waiter). */
        pthread_mutex_lock(&wx->lock);
        int any = wx->waiters != NULL;
        pthread_mutex_unlock(&wx->lock);
        if (any) {
            struct call *c = claim_waiter(wx, reply_to, conv);
            if (c) {
                struct wx_buf x = {0};
                int64_t now_s = wall_ms() / 1000;
                int rc = wx_reply_xml(h, m, wx->conf.variant, &c->info, now_s, &x);
                if (rc == KFG_OK && c->encrypted) {
                    rc = wx_reply_encrypt(&wx->conf, x.p, x.len, now_s, &c->reply);
                    wx_buf_free(&x);
                } else if (rc == KFG_OK) {
                    c->reply = x;
                } else {
                    wx_buf_free(&x);
                }
                if (rc != KFG_OK || c->reply.oom) {
                    /* No passive form: answer "success" now, send by API. */
                    wx_buf_free(&c->reply);
                    if (h->post(c->loop, on_passive, c) != KFG_OK)
                        h->log(wx->ins, NULL, KFG_LOG_WARN, "cannot post to the request's loop");
                } else if (h->post(c->loop, on_passive, c) == KFG_OK) {
                    h->delivered(d, KFG_OK, NULL, "passive reply");
                    return KFG_OK;
                } else {
                    h->log(wx->ins, NULL, KFG_LOG_WARN, "cannot post to the request's loop");
                    return KFG_RETRY;
                }
            }
        }
    }

    if (!wx->secret || !wx->secret[0]) {
        h->log(wx->ins, NULL, KFG_LOG_WARN, "cannot deliver: no secret configured");
        return KFG_EFAIL;
    }
    struct wx_buf b = {0};
    int rc = api_body(wx, m, &b);
    if (rc != KFG_OK) {
        wx_buf_free(&b);
        h->log(wx->ins, NULL, KFG_LOG_WARN, "cannot deliver: no API form for this envelope");
        return KFG_EFAIL;
    }
    if (!acquire(wx)) {
        wx_buf_free(&b);
        return KFG_RETRY;
    }
    struct job *j = calloc(1, sizeof *j);
    if (!j) {
        wx_buf_free(&b);
        release(wx);
        return KFG_ENOMEM;
    }
    j->wx = wx;
    j->d = d;
    j->body = b.p;
    j->body_len = b.len;
    j->all_next = wx->jobs;
    if (wx->jobs) wx->jobs->all_prev = j;
    wx->jobs = j;
    job_go(j, 0);
    return KFG_OK;
}

/* ------------------------------------------------------------------------ */
/* Lifecycle */

static int wx_init(struct kfg_instance *ins, const struct kfg_host *host, void *ctx)
{
    struct wx *wx = ctx;
    wx->ins = ins;
    wx->host = host;
    wx->control = host->loop_current();
    atomic_init(&wx->inflight, RUNNING);

    wx->path = host->config_string(ins, "path");
    if (!wx->path || wx->path[0] != '/') {
        host->log(ins, NULL, KFG_LOG_ERROR, "path must start with '/'");
        return KFG_EINVAL;
    }
    const char *variant = host->config_string(ins, "variant");
    if (strcmp(variant, "mp") == 0) {
        wx->conf.variant = WX_MP;
    } else if (strcmp(variant, "wecom") == 0) {
        wx->conf.variant = WX_WECOM;
    } else {
        host->log(ins, NULL, KFG_LOG_ERROR, "variant must be \"mp\" or \"wecom\", not \"%s\"",
                  variant);
        return KFG_EINVAL;
    }
    const char *mode = host->config_string(ins, "mode");
    if (strcmp(mode, "compatible") == 0) {
        wx->conf.mode = WX_MODE_ANY;
    } else if (strcmp(mode, "plain") == 0) {
        wx->conf.mode = WX_MODE_PLAIN;
    } else if (strcmp(mode, "safe") == 0) {
        wx->conf.mode = WX_MODE_SAFE;
    } else {
        host->log(ins, NULL, KFG_LOG_ERROR,
                  "mode must be \"plain\", \"compatible\" or \"safe\", not \"%s\"", mode);
        return KFG_EINVAL;
    }
    const char *token = host->config_string(ins, "token");
    if (!token || !token[0]) {
        host->log(ins, NULL, KFG_LOG_ERROR, "token is empty");
        return KFG_EINVAL;
    }
    wx->conf.token = token;
    wx->conf.token_len = strlen(token);
    const char *aes = host->config_string(ins, "encoding_aes_key");
    if (aes && aes[0]) {
        int rc = wx_aes_key(aes, strlen(aes), wx->conf.key);
        if (rc != WX_OK) {
            host->log(ins, NULL, KFG_LOG_ERROR,
                      "encoding_aes_key: %d %s: must be 43 characters of [A-Za-z0-9+/]", rc,
                      wx_err_name(rc));
            return KFG_EINVAL;
        }
        wx->conf.has_key = 1;
    } else if (wx->conf.variant == WX_WECOM || wx->conf.mode == WX_MODE_SAFE) {
        host->log(ins, NULL, KFG_LOG_ERROR, "encoding_aes_key: %d %s: required for %s",
                  WX_ILLEGAL_AES_KEY, wx_err_name(WX_ILLEGAL_AES_KEY),
                  wx->conf.variant == WX_WECOM ? "wecom" : "mode = \"safe\"");
        return KFG_EINVAL;
    }
    const char *rid = host->config_string(ins, "receive_id");
    if (!rid && wx->conf.has_key) {
        host->log(ins, NULL, KFG_LOG_ERROR,
                  "receive_id (AppID / CorpID) is required with encoding_aes_key");
        return KFG_EINVAL;
    }
    wx->conf.receive_id = rid ? rid : "";
    wx->conf.rid_len = strlen(wx->conf.receive_id);
    wx->secret = host->config_string(ins, "secret");
    wx->agent_id = host->config_int(ins, "agent_id");
    wx->stable = host->config_bool(ins, "stable_token");
    wx->api_base = host->config_string(ins, "api_base");
    if (!wx->api_base || !wx->api_base[0])
        wx->api_base = wx->conf.variant == WX_WECOM ? "https://qyapi.weixin.qq.com"
                                                    : "https://api.weixin.qq.com";
    if (strlen(wx->api_base) > 1024) {
        host->log(ins, NULL, KFG_LOG_ERROR, "api_base is too long");
        return KFG_EINVAL;
    }
    if (wx->secret && (strlen(wx->secret) > 256 || strpbrk(wx->secret, "&?#% \"\\"))) {
        host->log(ins, NULL, KFG_LOG_ERROR, "secret has characters a secret cannot have");
        return KFG_EINVAL;
    }
    if (strlen(wx->conf.receive_id) > 128 || strpbrk(wx->conf.receive_id, "&?#% \"\\")) {
        host->log(ins, NULL, KFG_LOG_ERROR, "receive_id has characters an id cannot have");
        return KFG_EINVAL;
    }
    wx->reply_window_ms = host->config_int(ins, "reply_window_ms");
    if (wx->reply_window_ms < 0 || wx->reply_window_ms > 4900) {
        host->log(ins, NULL, KFG_LOG_ERROR,
                  "reply_window_ms must be 0..4900 (WeChat waits 5 s), not %lld",
                  (long long)wx->reply_window_ms);
        return KFG_EINVAL;
    }
    wx->api_timeout_ms = host->config_int(ins, "api_timeout_ms");
    if (wx->api_timeout_ms <= 0 || wx->api_timeout_ms > 600000) {
        host->log(ins, NULL, KFG_LOG_ERROR, "api_timeout_ms must be 1..600000");
        return KFG_EINVAL;
    }
    int64_t mb = host->config_int(ins, "max_body");
    if (mb <= 0 || mb > (64 << 20)) {
        host->log(ins, NULL, KFG_LOG_ERROR, "max_body must be 1..67108864");
        return KFG_EINVAL;
    }
    wx->max_body = (size_t)mb;
    wx->keep_raw = host->config_bool(ins, "keep_raw");
    wx->has_emit2 = host->abi_minor >= 1 &&
                    host->struct_size > offsetof(struct kfg_host, emit2) && host->emit2;

    for (int o = 0; o < O__N; o++) {
        wx->requests[o] = host->metric_counter(ins, "wechat_requests_total",
                                               "Callback requests by outcome.", outcome_label[o]);
        if (!wx->requests[o])
            return KFG_ENOMEM;
    }
    wx->latency = host->metric_histogram(ins, "wechat_request_duration_seconds",
                                         "Time from callback to answer.", NULL);
    wx->api_calls = host->metric_counter(ins, "wechat_api_calls_total",
                                         "Outbound message API calls.", NULL);
    wx->token_refreshes = host->metric_counter(ins, "wechat_token_refreshes_total",
                                               "Access token requests.", NULL);
    if (!wx->latency || !wx->api_calls || !wx->token_refreshes)
        return KFG_ENOMEM;
    if (pthread_mutex_init(&wx->lock, NULL) != 0)
        return KFG_ENOMEM;
    /* Last: init fails before it, or destroy frees it. Without it (no
     * memory), every message makes its own AES context. */
    if (wx->conf.has_key)
        wx->conf.aes = wx_aes_new(wx->conf.key);
    wx_xml_init();
    return KFG_OK;
}

static int wx_start(void *ctx)
{
    struct wx *wx = ctx;
    int rc = wx->host->route_add(wx->ins, "GET", wx->path, KFG_ROUTE_EXACT, on_callback);
    if (rc == KFG_OK)
        rc = wx->host->route_add(wx->ins, "POST", wx->path, KFG_ROUTE_EXACT, on_callback);
    if (rc != KFG_OK) {
        wx->host->log(wx->ins, NULL, KFG_LOG_ERROR, "cannot claim route %s: %d", wx->path, rc);
        return rc;
    }
    wx->host->log(wx->ins, NULL, KFG_LOG_INFO, "wechat %s callback on %s",
                  wx->conf.variant == WX_WECOM ? "wecom" : "mp", wx->path);
    return KFG_OK;
}

static int wx_stop(void *ctx)
{
    struct wx *wx = ctx;
    long was = atomic_fetch_sub(&wx->inflight, RUNNING);
    return was == RUNNING ? KFG_OK : KFG_AGAIN;
}

/* Unhealthy while outbound cannot work: the last access-token request
 * failed (wrong secret, IP not whitelisted, API unreachable...). Inbound
 * callbacks are still served; the detail says what to fix. */
static int wx_health(void *ctx, char *detail, size_t cap)
{
    struct wx *wx = ctx;
    if (!wx->token_error[0])
        return KFG_OK;
    snprintf(detail, cap, "outbound: access token refresh failing for %llds: %s",
             (long long)((wall_ms() - wx->token_error_ms) / 1000), wx->token_error);
    return KFG_EFAIL;
}

static void wx_destroy(void *ctx)
{
    struct wx *wx = ctx;
    /* After a drain timeout: waiters and jobs may be left. The host answers
     * their requests and finishes their deliveries itself. */
    struct call *c = wx->waiters;
    while (c) {
        struct call *n = c->next;
        if (c->timer)
            wx->host->timer_free(c->timer);
        call_free(c);
        c = n;
    }
    wx->waiters = NULL;
    struct job *j = wx->jobs;
    while (j) {
        struct job *n = j->all_next;
        free(j->body);
        free(j);
        j = n;
    }
    wx->jobs = NULL;
    wx_aes_free(wx->conf.aes);
    wx->conf.aes = NULL;
    pthread_mutex_destroy(&wx->lock);
}

KFG_PLUGIN_EXPORT = {
    KFG_PLUGIN_HEADER,
    .kind = KFG_KIND_ADAPTER,
    .name = "wechat",
    .version = "0.1.0",
    .description = "WeChat Official Account and WeCom callbacks (plain, compatible, safe mode)",
    .config = wx_config,
    .ctx_size = sizeof(struct wx),
    .init = wx_init,
    .start = wx_start,
    .stop = wx_stop,
    .destroy = wx_destroy,
    .health = wx_health,
    .deliver = wx_deliver,
};
