/*
 * Outbound HTTP client: libcurl's multi_socket API driven by libevent.
 *
 * curl tells us which sockets to watch (sock_cb) and when to wake it up
 * (timer_cb). Those callbacks only arm libevent events, because curl must
 * not be re-entered from inside its own callbacks; the libevent callbacks
 * then run curl_multi_socket_action and drain finished transfers. The same
 * split keeps `done` off the caller's stack: adding a handle only arms the
 * timer, so even a transfer that fails at once completes from the loop.
 *
 * The daemon calls curl_global_init() once, before any thread starts and
 * before the first kfg_httpc_new; a client is used only on its loop thread.
 */
#include "httpc.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define DEF_TIMEOUT_MS 10000u
#define DEF_CONNECT_TIMEOUT_MS 3000u
#define DEF_MAX_RESPONSE ((size_t)4 << 20)
#define DEF_MAX_INFLIGHT 1024u
/* Response headers kept for http_call2: enough for any API's rate-limit and
 * tracing headers; beyond it the rest are skipped, the call still succeeds. */
#define MAX_RESP_HEADERS 64u
#define MAX_RESP_HEADER_BYTES 16384u

/* One socket curl asked us to watch. Listed so that sockets curl never
 * reported as removed are still freed with the client. */
struct sock {
    struct sock *prev, *next;
    struct event *ev;
};

struct call {
    struct call *prev, *next;
    CURL *easy;
    const void *owner;
    kfg_http_done done;             /* one of done, done2 */
    kfg_http_done2 done2;
    void *arg;
    struct curl_slist *headers;
    struct timespec t0;
    /* done2 only: the final response's header lines, "name\0value\0"... */
    char *hdr;
    size_t hdr_len, nhdr;
    char *resp;                     /* NUL-terminated for convenience */
    size_t resp_len, resp_cap, resp_max;
    int too_large;
    char errbuf[CURL_ERROR_SIZE];
};

struct kfg_httpc {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    struct kfg_httpc_limits lim;
    struct call *calls;
    struct sock *socks;
    unsigned inflight;
    unsigned draining;      /* depth of drain(); destruction waits for 0 */
    int dying;              /* freed from a done callback; destroy later */
};

static void sock_free(struct kfg_httpc *c, struct sock *s)
{
    event_free(s->ev);
    if (s->prev)
        s->prev->next = s->next;
    else
        c->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    free(s);
}

static void call_free(struct call *k)
{
    if (k->easy)
        curl_easy_cleanup(k->easy);
    curl_slist_free_all(k->headers);
    free(k->hdr);
    free(k->resp);
    free(k);
}

/* Takes a call out of the multi and the list; no callback. */
static void detach(struct kfg_httpc *c, struct call *k)
{
    curl_multi_remove_handle(c->multi, k->easy);
    if (k->prev)
        k->prev->next = k->next;
    else
        c->calls = k->next;
    if (k->next)
        k->next->prev = k->prev;
    c->inflight--;
}

static void destroy(struct kfg_httpc *c)
{
    /* Cleanup closes cached connections, which may still call sock_cb. */
    curl_multi_cleanup(c->multi);
    while (c->socks)
        sock_free(c, c->socks);
    event_free(c->timer);
    free(c);
}

static void complete(struct kfg_httpc *c, struct call *k, CURLcode code)
{
    struct kfg_str body = { "", 0 };
    const char *err = NULL;
    long status = 0;
    int result;

    curl_easy_getinfo(k->easy, CURLINFO_RESPONSE_CODE, &status);
    if (k->too_large || code == CURLE_FILESIZE_EXCEEDED) {
        result = KFG_EFAIL;
        err = "response too large";
    } else if (code == CURLE_OK) {
        result = KFG_OK;
        if (k->resp) {
            body.ptr = k->resp;
            body.len = k->resp_len;
        }
    } else {
        result = code == CURLE_OPERATION_TIMEDOUT ? KFG_ETIMEDOUT : KFG_EFAIL;
        err = k->errbuf[0] ? k->errbuf : curl_easy_strerror(code);
    }
    /* Detached before done runs: done may cancel owners, start calls or
     * free the client, and none of that may find this call. */
    detach(c, k);
    if (!k->done2) {
        k->done(k->arg, result, (int)status, body, err);
        call_free(k);
        return;
    }
    struct kfg_str names[MAX_RESP_HEADERS], values[MAX_RESP_HEADERS];
    size_t n = 0;
    for (size_t at = 0; at < k->hdr_len && n < k->nhdr;) {
        names[n].ptr = k->hdr + at;
        names[n].len = strlen(k->hdr + at);
        at += names[n].len + 1;
        values[n].ptr = k->hdr + at;
        values[n].len = strlen(k->hdr + at);
        at += values[n].len + 1;
        n++;
    }
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    struct kfg_http_response r = {
        .result = result,
        .status = (int)status,
        .body = body,
        .error = err,
        .nheaders = n,
        .header_names = names,
        .header_values = values,
        .elapsed_us = (uint64_t)((t1.tv_sec - k->t0.tv_sec) * 1000000LL +
                                 (t1.tv_nsec - k->t0.tv_nsec) / 1000),
    };
    k->done2(k->arg, &r);
    call_free(k);
}

static void drain(struct kfg_httpc *c)
{
    CURLMsg *m;
    int left;

    c->draining++;
    /* One message at a time: a done callback that cancels calls also
     * removes their queued messages (curl_multi_remove_handle does). */
    while (!c->dying && (m = curl_multi_info_read(c->multi, &left))) {
        char *priv = NULL;

        if (m->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        complete(c, (struct call *)(void *)priv, m->data.result);
    }
    if (--c->draining == 0 && c->dying)
        destroy(c);
}

static void on_sock(evutil_socket_t fd, short what, void *arg)
{
    struct kfg_httpc *c = arg;
    int flags = 0, running;

    if (what & EV_READ)
        flags |= CURL_CSELECT_IN;
    if (what & EV_WRITE)
        flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(c->multi, fd, flags, &running);
    drain(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct kfg_httpc *c = arg;
    int running;

    (void)fd;
    (void)what;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    drain(c);
}

static int sock_cb(CURL *easy, curl_socket_t fd, int what, void *userp,
                   void *socketp)
{
    struct kfg_httpc *c = userp;
    struct sock *s = socketp;
    short kind = EV_PERSIST;

    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (s)
            sock_free(c, s);
        return 0;
    }
    if (what & CURL_POLL_IN)
        kind |= EV_READ;
    if (what & CURL_POLL_OUT)
        kind |= EV_WRITE;
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s)
            return -1;
        s->ev = event_new(c->base, fd, kind, on_sock, c);
        if (!s->ev) {
            free(s);
            return -1;
        }
        s->next = c->socks;
        if (c->socks)
            c->socks->prev = s;
        c->socks = s;
        curl_multi_assign(c->multi, fd, s);
    } else {
        event_del(s->ev);
        event_assign(s->ev, c->base, fd, kind, on_sock, c);
    }
    return event_add(s->ev, NULL) < 0 ? -1 : 0;
}

static int timer_cb(CURLM *multi, long ms, void *userp)
{
    struct kfg_httpc *c = userp;
    struct timeval tv;

    (void)multi;
    if (ms < 0)
        return evtimer_del(c->timer) < 0 ? -1 : 0;
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    return evtimer_add(c->timer, &tv) < 0 ? -1 : 0;
}

static size_t on_body(char *data, size_t size, size_t n, void *userp)
{
    struct call *k = userp;
    size_t len = size * n;

    /* Returning short aborts the transfer with CURLE_WRITE_ERROR. */
    if (len > k->resp_max - k->resp_len) {
        k->too_large = 1;
        return 0;
    }
    if (k->resp_len + len + 1 > k->resp_cap) {
        size_t cap = k->resp_cap ? k->resp_cap : 4096;
        char *p;

        while (cap < k->resp_len + len + 1)
            cap *= 2;
        if (cap > k->resp_max + 1)
            cap = k->resp_max + 1;
        p = realloc(k->resp, cap);
        if (!p)
            return 0;
        k->resp = p;
        k->resp_cap = cap;
    }
    memcpy(k->resp + k->resp_len, data, len);
    k->resp_len += len;
    k->resp[k->resp_len] = '\0';
    return len;
}

/* One header line of the response (curl passes each, with its CRLF). A new
 * status line starts over, so only the final response's headers remain
 * (not those of a 100 Continue or of a redirect). */
static size_t on_header(char *data, size_t size, size_t n, void *userp)
{
    struct call *k = userp;
    size_t len = size * n;
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        k->hdr_len = k->nhdr = 0;
        return len;
    }
    const char *colon = memchr(data, ':', len);
    if (!colon || colon == data || k->nhdr >= MAX_RESP_HEADERS)
        return len;
    size_t nl = (size_t)(colon - data);
    const char *v = colon + 1, *end = data + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
        end--;
    size_t vl = (size_t)(end - v);
    if (memchr(data, '\0', nl) || memchr(v, '\0', vl))
        return len;     /* would cut the name/value list short */
    if (k->hdr_len + nl + vl + 2 > MAX_RESP_HEADER_BYTES)
        return len;
    if (!k->hdr && !(k->hdr = malloc(MAX_RESP_HEADER_BYTES)))
        return len;
    memcpy(k->hdr + k->hdr_len, data, nl);
    k->hdr[k->hdr_len + nl] = '\0';
    k->hdr_len += nl + 1;
    memcpy(k->hdr + k->hdr_len, v, vl);
    k->hdr[k->hdr_len + vl] = '\0';
    k->hdr_len += vl + 1;
    k->nhdr++;
    return len;
}

/* The method goes into the request line verbatim, so it must be a token. */
static int method_ok(const char *m)
{
    static const char tchar[] = "!#$%&'*+-.^_`|~0123456789"
                                "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                "abcdefghijklmnopqrstuvwxyz";

    return m[0] && m[strspn(m, tchar)] == '\0';
}

static int setup(struct call *k, const struct kfg_http_call *call,
                 const struct kfg_httpc_limits *lim)
{
    const char *method = call->method ? call->method : "GET";
    uint32_t timeout = call->timeout_ms ? call->timeout_ms
                                        : lim->default_timeout_ms;
    int has_body = call->body || !strcmp(method, "POST") ||
                   !strcmp(method, "PUT") || !strcmp(method, "PATCH");
    int has_expect = 0;
    struct curl_slist *l;
    CURL *e;

    if (!method_ok(method))
        return KFG_EINVAL;
    for (const char *const *h = call->headers; h && *h; h++) {
        if (strpbrk(*h, "\r\n"))
            return KFG_EINVAL;      /* would inject headers */
        if (!strncasecmp(*h, "Expect:", 7))
            has_expect = 1;
        if (!(l = curl_slist_append(k->headers, *h)))
            return KFG_ENOMEM;
        k->headers = l;
    }
    /* curl holds large bodies back for up to a second waiting for
     * "100 Continue"; the APIs we call answer without it. */
    if (has_body && !has_expect) {
        if (!(l = curl_slist_append(k->headers, "Expect:")))
            return KFG_ENOMEM;
        k->headers = l;
    }

    if (!(e = k->easy = curl_easy_init()))
        return KFG_ENOMEM;
    if (curl_easy_setopt(e, CURLOPT_URL, call->url) ||
        curl_easy_setopt(e, CURLOPT_PRIVATE, k) ||
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, k->errbuf) ||
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) ||
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) ||
        curl_easy_setopt(e, CURLOPT_WRITEDATA, k) ||
        (k->done2 && (curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header) ||
                      curl_easy_setopt(e, CURLOPT_HEADERDATA, k))) ||
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout) ||
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                         (long)lim->connect_timeout_ms) ||
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) ||
#if CURL_AT_LEAST_VERSION(7, 85, 0)
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") ||
        curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https") ||
#else
        curl_easy_setopt(e, CURLOPT_PROTOCOLS,
                         (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS)) ||
        curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS,
                         (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS)) ||
#endif
        /* Fails early on a Content-Length over the limit; on_body
         * catches chunked bodies. */
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE,
                         (curl_off_t)k->resp_max) ||
        (k->headers && curl_easy_setopt(e, CURLOPT_HTTPHEADER, k->headers)))
        return KFG_EFAIL;

    if (has_body) {
        /* The size must be set before COPYPOSTFIELDS copies binary data. */
        if (curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                             (curl_off_t)call->body_len) ||
            curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS,
                             call->body ? call->body : "") ||
            (strcmp(method, "POST") &&
             curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method)))
            return KFG_EFAIL;
    } else if (!strcmp(method, "HEAD")) {
        if (curl_easy_setopt(e, CURLOPT_NOBODY, 1L))
            return KFG_EFAIL;
    } else if (strcmp(method, "GET")) {
        if (curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method))
            return KFG_EFAIL;
    }
    return KFG_OK;
}

struct kfg_httpc *kfg_httpc_new(struct event_base *base,
                                const struct kfg_httpc_limits *limits)
{
    struct kfg_httpc *c;

    if (!base || !(c = calloc(1, sizeof(*c))))
        return NULL;
    c->base = base;
    if (limits)
        c->lim = *limits;
    if (!c->lim.default_timeout_ms)
        c->lim.default_timeout_ms = DEF_TIMEOUT_MS;
    if (!c->lim.connect_timeout_ms)
        c->lim.connect_timeout_ms = DEF_CONNECT_TIMEOUT_MS;
    if (!c->lim.max_response_bytes)
        c->lim.max_response_bytes = DEF_MAX_RESPONSE;
    /* Keeps resp_max + 1 and the curl_off_t conversion from overflowing. */
    if (c->lim.max_response_bytes > (size_t)INT32_MAX)
        c->lim.max_response_bytes = (size_t)INT32_MAX;
    if (!c->lim.max_inflight)
        c->lim.max_inflight = DEF_MAX_INFLIGHT;

    c->multi = curl_multi_init();
    c->timer = evtimer_new(base, on_timer, c);
    if (!c->multi || !c->timer ||
        curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, sock_cb) ||
        curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c) ||
        curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb) ||
        curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c)) {
        if (c->multi)
            curl_multi_cleanup(c->multi);
        if (c->timer)
            event_free(c->timer);
        free(c);
        return NULL;
    }
    return c;
}

void kfg_httpc_free(struct kfg_httpc *c)
{
    if (!c || c->dying)
        return;
    while (c->calls) {
        struct call *k = c->calls;

        detach(c, k);
        call_free(k);
    }
    c->dying = 1;
    if (!c->draining)
        destroy(c);
}

static int start_call(struct kfg_httpc *c, const void *owner,
                      const struct kfg_http_call *call, kfg_http_done done,
                      kfg_http_done2 done2, void *arg)
{
    struct call *k;
    int rc;

    if (!c || !call || !call->url || !(done || done2) || (call->body_len && !call->body))
        return KFG_EINVAL;
    if (c->dying)
        return KFG_ESTOPPED;
    if (c->inflight >= c->lim.max_inflight)
        return KFG_AGAIN;
    if (!(k = calloc(1, sizeof(*k))))
        return KFG_ENOMEM;
    k->owner = owner;
    k->done = done;
    k->done2 = done2;
    k->arg = arg;
    clock_gettime(CLOCK_MONOTONIC, &k->t0);
    k->resp_max = c->lim.max_response_bytes;
    if ((rc = setup(k, call, &c->lim)) != KFG_OK) {
        call_free(k);
        return rc;
    }
    if (curl_multi_add_handle(c->multi, k->easy) != CURLM_OK) {
        call_free(k);
        return KFG_EFAIL;
    }
    k->next = c->calls;
    if (c->calls)
        c->calls->prev = k;
    c->calls = k;
    c->inflight++;
    return KFG_OK;
}

int kfg_httpc_call(struct kfg_httpc *c, const void *owner,
                   const struct kfg_http_call *call, kfg_http_done done,
                   void *arg)
{
    return done ? start_call(c, owner, call, done, NULL, arg) : KFG_EINVAL;
}

int kfg_httpc_call2(struct kfg_httpc *c, const void *owner,
                    const struct kfg_http_call *call, kfg_http_done2 done,
                    void *arg)
{
    return done ? start_call(c, owner, call, NULL, done, arg) : KFG_EINVAL;
}

void kfg_httpc_cancel_owner(struct kfg_httpc *c, const void *owner)
{
    struct call *k, *next;

    if (!c)
        return;
    /* No user code runs here, so the saved next stays valid. */
    for (k = c->calls; k; k = next) {
        next = k->next;
        if (k->owner == owner) {
            detach(c, k);
            call_free(k);
        }
    }
}

unsigned kfg_httpc_inflight(const struct kfg_httpc *c)
{
    return c ? c->inflight : 0;
}
