/*
 * kfg_httpc against a real HTTP server: libevent's evhttp on 127.0.0.1:0,
 * sharing the client's event_base. No timing assertions; run_until only
 * guards against a hang.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "httpc.h"

#define GUARD_SECONDS 20
#define MAX_HANG 64

struct fixture {
    struct event_base *base;
    struct evhttp *http;
    struct kfg_httpc *hc;
    char url[64];               /* "http://127.0.0.1:<port>" */
    int expired;
    /* what the server saw */
    int served;
    int hanging;
    struct evhttp_request *hang[MAX_HANG];
    char method[16];
    char xtest[64];
    char body[256];
    size_t body_len;
    uint16_t peer_port[2];
};

struct result {
    struct fixture *f;
    int calls;
    int result, status;
    char body[256];
    size_t body_len;
    char error[CURL_ERROR_SIZE];
    int chain_left;             /* test_done_starts_call */
    const void *cancel;         /* owner to cancel from done */
    int free_client;
    int *total;                 /* shared completion count, or NULL */
};

static const struct kfg_httpc_limits test_limits = {
    .default_timeout_ms = 5000,
    .connect_timeout_ms = 2000,
    .max_response_bytes = 4096,
    .max_inflight = 64,
};

static const char *method_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_HEAD: return "HEAD";
    default: return "?";
    }
}

static void send_big(struct evhttp_request *req, int chunked)
{
    struct evbuffer *b = evbuffer_new();
    static char x[16384];

    memset(x, 'x', sizeof(x));
    for (int i = 0; i < 4; i++)
        evbuffer_add(b, x, sizeof(x));
    if (chunked) {
        evhttp_send_reply_start(req, 200, "OK");
        evhttp_send_reply_chunk(req, b);
        evhttp_send_reply_end(req);
    } else {
        evhttp_send_reply(req, 200, "OK", b);
    }
    evbuffer_free(b);
}

/* /echo answers "<method> <X-Test>|<body>"; /hang never answers. */
static void serve(struct evhttp_request *req, void *arg)
{
    struct fixture *f = arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    const char *xt = evhttp_find_header(evhttp_request_get_input_headers(req),
                                        "X-Test");
    struct evbuffer *out;

    if (f->served < 2) {
        char *addr;
        ev_uint16_t port;

        evhttp_connection_get_peer(evhttp_request_get_connection(req), &addr,
                                   &port);
        f->peer_port[f->served] = port;
    }
    f->served++;
    if (!strcmp(path, "/hang")) {
        assert_true(f->hanging < MAX_HANG);
        f->hang[f->hanging++] = req;
        return;
    }
    if (!strcmp(path, "/big") || !strcmp(path, "/chunked")) {
        send_big(req, path[1] == 'c');
        return;
    }
    if (strcmp(path, "/echo")) {
        evhttp_send_error(req, HTTP_NOTFOUND, NULL);
        return;
    }
    snprintf(f->method, sizeof(f->method), "%s",
             method_name(evhttp_request_get_command(req)));
    snprintf(f->xtest, sizeof(f->xtest), "%s", xt ? xt : "");
    f->body_len = evbuffer_get_length(in);
    assert_true(f->body_len <= sizeof(f->body));
    evbuffer_copyout(in, f->body, f->body_len);

    out = evbuffer_new();
    evbuffer_add_printf(out, "%s %s|", f->method, f->xtest);
    evbuffer_add(out, f->body, f->body_len);
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct evhttp_bound_socket *bound;
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);

    assert_non_null(f);
    f->base = event_base_new();
    f->http = evhttp_new(f->base);
    assert_non_null(f->base);
    assert_non_null(f->http);
    evhttp_set_gencb(f->http, serve, f);
    bound = evhttp_bind_socket_with_handle(f->http, "127.0.0.1", 0);
    assert_non_null(bound);
    assert_int_equal(getsockname(evhttp_bound_socket_get_fd(bound),
                                 (struct sockaddr *)&sin, &len), 0);
    snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%u",
             (unsigned)ntohs(sin.sin_port));
    f->hc = kfg_httpc_new(f->base, &test_limits);
    assert_non_null(f->hc);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    kfg_httpc_free(f->hc);
    /* A reply releases a request evhttp orphaned when the client left. */
    for (int i = 0; i < f->hanging; i++)
        evhttp_send_reply(f->hang[i], 200, "OK", NULL);
    evhttp_free(f->http);
    event_base_free(f->base);
    free(f);
    return 0;
}

static void on_guard(evutil_socket_t fd, short what, void *arg)
{
    struct fixture *f = arg;

    (void)fd;
    (void)what;
    f->expired = 1;
    event_base_loopbreak(f->base);
}

/* Runs the loop until *counter reaches target. */
static void run_until(struct fixture *f, const int *counter, int target)
{
    struct timeval tv = { GUARD_SECONDS, 0 };
    struct event *guard = evtimer_new(f->base, on_guard, f);

    evtimer_add(guard, &tv);
    while (*counter < target && !f->expired)
        event_base_loop(f->base, EVLOOP_ONCE);
    event_free(guard);
    assert_false(f->expired);
}

/* Lets pending I/O run for a few loop turns, e.g. to see that nothing else
 * completes. */
static void spin(struct fixture *f)
{
    for (int i = 0; i < 20; i++)
        event_base_loop(f->base, EVLOOP_NONBLOCK);
}

static void on_done(void *arg, int result, int status, struct kfg_str body,
                    const char *error)
{
    struct result *r = arg;

    r->calls++;
    if (r->total)
        (*r->total)++;
    r->result = result;
    r->status = status;
    assert_non_null(body.ptr);
    r->body_len = body.len < sizeof(r->body) ? body.len : sizeof(r->body);
    memcpy(r->body, body.ptr, r->body_len);
    snprintf(r->error, sizeof(r->error), "%s", error ? error : "");
    if (result == KFG_OK)
        assert_null(error);
    else
        assert_true(error && error[0]);
}

static int start(struct fixture *f, const void *owner, const char *method,
                 const char *path, const char *const *headers,
                 const void *body, size_t body_len, uint32_t timeout_ms,
                 struct result *r)
{
    char url[128];
    struct kfg_http_call call = {
        .method = method, .url = url, .headers = headers, .body = body,
        .body_len = body_len, .timeout_ms = timeout_ms,
    };
    int rc;

    snprintf(url, sizeof(url), "%s%s", f->url, path);
    r->f = f;
    rc = kfg_httpc_call(f->hc, owner, &call, on_done, r);
    assert_int_equal(r->calls, 0);      /* never completes synchronously */
    return rc;
}

static void test_get(void **state)
{
    struct fixture *f = *state;
    const char *const hdrs[] = { "X-Test: abc", NULL };
    struct result r = { 0 };

    assert_int_equal(start(f, f, "GET", "/echo", hdrs, NULL, 0, 0, &r),
                     KFG_OK);
    assert_int_equal(kfg_httpc_inflight(f->hc), 1);
    run_until(f, &r.calls, 1);
    assert_string_equal(f->method, "GET");
    assert_string_equal(f->xtest, "abc");
    assert_int_equal(f->body_len, 0);
    assert_int_equal(r.result, KFG_OK);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, strlen("GET abc|"));
    assert_memory_equal(r.body, "GET abc|", r.body_len);
    assert_int_equal(kfg_httpc_inflight(f->hc), 0);
    spin(f);
    assert_int_equal(r.calls, 1);
}

static void test_post_put_delete(void **state)
{
    struct fixture *f = *state;
    const char *const hdrs[] = { "X-Test: json",
                                 "Content-Type: application/json", NULL };
    static const char body[] = "{\"a\":1}\0tail";   /* binary-safe */
    const char *methods[] = { "POST", "PUT", "DELETE" };

    for (int i = 0; i < 3; i++) {
        struct result r = { 0 };
        char want[64];
        size_t blen = i == 2 ? 0 : sizeof(body) - 1;
        size_t n;

        assert_int_equal(start(f, f, methods[i], "/echo", hdrs,
                               i == 2 ? NULL : body, blen, 0, &r), KFG_OK);
        run_until(f, &r.calls, 1);
        assert_string_equal(f->method, methods[i]);
        assert_string_equal(f->xtest, "json");
        assert_int_equal(f->body_len, blen);
        assert_memory_equal(f->body, body, blen);
        assert_int_equal(r.result, KFG_OK);
        assert_int_equal(r.status, 200);
        n = (size_t)snprintf(want, sizeof(want), "%s json|", methods[i]);
        memcpy(want + n, body, blen);
        assert_int_equal(r.body_len, n + blen);
        assert_memory_equal(r.body, want, n + blen);
    }
}

static void test_404(void **state)
{
    struct fixture *f = *state;
    struct result r = { 0 };

    assert_int_equal(start(f, f, "GET", "/nope", NULL, NULL, 0, 0, &r),
                     KFG_OK);
    run_until(f, &r.calls, 1);
    assert_int_equal(r.result, KFG_OK);
    assert_int_equal(r.status, 404);
}

static void test_refused(void **state)
{
    struct fixture *f = *state;
    struct sockaddr_in sin = { .sin_family = AF_INET };
    socklen_t len = sizeof(sin);
    struct result r = { 0 };
    char url[64];
    struct kfg_http_call call = { .method = "GET", .url = url };
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    /* A port that is bound but not listening refuses connections. */
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/",
             (unsigned)ntohs(sin.sin_port));
    assert_int_equal(kfg_httpc_call(f->hc, f, &call, on_done, &r), KFG_OK);
    assert_int_equal(r.calls, 0);
    run_until(f, &r.calls, 1);
    close(fd);
    assert_int_equal(r.result, KFG_EFAIL);
    assert_int_equal(r.status, 0);
    assert_true(r.error[0]);
}

static void test_timeout(void **state)
{
    struct fixture *f = *state;
    struct result r = { 0 };

    assert_int_equal(start(f, f, "GET", "/hang", NULL, NULL, 0, 200, &r),
                     KFG_OK);
    run_until(f, &r.calls, 1);
    assert_int_equal(r.result, KFG_ETIMEDOUT);
    assert_true(r.error[0]);
    assert_int_equal(f->hanging, 1);
}

static void test_too_large(void **state)
{
    struct fixture *f = *state;
    /* /big has a Content-Length, /chunked is only caught while reading. */
    const char *paths[] = { "/big", "/chunked" };

    for (int i = 0; i < 2; i++) {
        struct result r = { 0 };

        assert_int_equal(start(f, f, "GET", paths[i], NULL, NULL, 0, 0, &r),
                         KFG_OK);
        run_until(f, &r.calls, 1);
        assert_int_equal(r.result, KFG_EFAIL);
        assert_string_equal(r.error, "response too large");
        assert_int_equal(r.body_len, 0);
    }
}

static void test_bad_args(void **state)
{
    struct fixture *f = *state;
    const char *const crlf[] = { "X-Test: a\r\nX-Evil: 1", NULL };
    struct kfg_http_call call = { .method = "GET", .url = NULL };
    struct result r = { 0 };

    assert_int_equal(kfg_httpc_call(f->hc, f, &call, on_done, &r),
                     KFG_EINVAL);
    assert_int_equal(start(f, f, "GET", "/echo", crlf, NULL, 0, 0, &r),
                     KFG_EINVAL);
    assert_int_equal(start(f, f, "GE T", "/echo", NULL, NULL, 0, 0, &r),
                     KFG_EINVAL);
    assert_int_equal(start(f, f, "POST", "/echo", NULL, NULL, 5, 0, &r),
                     KFG_EINVAL);
    assert_int_equal(kfg_httpc_inflight(f->hc), 0);

    /* Other protocols are refused, from the loop like any failure. */
    call.url = "file:///etc/passwd";
    assert_int_equal(kfg_httpc_call(f->hc, f, &call, on_done, &r), KFG_OK);
    assert_int_equal(r.calls, 0);
    run_until(f, &r.calls, 1);
    assert_int_equal(r.result, KFG_EFAIL);
    assert_true(r.error[0]);
}

static void test_reuses_connection(void **state)
{
    struct fixture *f = *state;
    struct result r1 = { 0 }, r2 = { 0 };

    assert_int_equal(start(f, f, "GET", "/echo", NULL, NULL, 0, 0, &r1),
                     KFG_OK);
    run_until(f, &r1.calls, 1);
    assert_int_equal(start(f, f, "GET", "/echo", NULL, NULL, 0, 0, &r2),
                     KFG_OK);
    run_until(f, &r2.calls, 1);
    assert_int_equal(r2.status, 200);
    assert_int_equal(f->served, 2);
    assert_int_equal(f->peer_port[0], f->peer_port[1]);
}

static void test_concurrent(void **state)
{
    struct fixture *f = *state;
    struct result r[50];
    char hdr[50][32];
    const char *hdrs[50][2];
    int total = 0;

    memset(r, 0, sizeof(r));
    for (int i = 0; i < 50; i++) {
        snprintf(hdr[i], sizeof(hdr[i]), "X-Test: %d", i);
        hdrs[i][0] = hdr[i];
        hdrs[i][1] = NULL;
        r[i].total = &total;
        assert_int_equal(start(f, f, "GET", "/echo", hdrs[i], NULL, 0, 0,
                               &r[i]), KFG_OK);
    }
    assert_int_equal(kfg_httpc_inflight(f->hc), 50);
    run_until(f, &total, 50);
    spin(f);
    for (int i = 0; i < 50; i++) {
        char want[32];
        int n = snprintf(want, sizeof(want), "GET %d|", i);

        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].result, KFG_OK);
        assert_int_equal(r[i].status, 200);
        assert_int_equal(r[i].body_len, n);
        assert_memory_equal(r[i].body, want, n);
    }
    assert_int_equal(f->served, 50);
    assert_int_equal(kfg_httpc_inflight(f->hc), 0);
}

static void test_cancel_owner(void **state)
{
    struct fixture *f = *state;
    int a = 0, b = 0;   /* owners: only the addresses matter */
    struct result ra[4], rb = { 0 };

    memset(ra, 0, sizeof(ra));
    /* Cancelled before any I/O: the server never sees them. */
    assert_int_equal(start(f, &a, "GET", "/echo", NULL, NULL, 0, 0, &ra[0]),
                     KFG_OK);
    assert_int_equal(start(f, &a, "GET", "/echo", NULL, NULL, 0, 0, &ra[1]),
                     KFG_OK);
    kfg_httpc_cancel_owner(f->hc, &a);
    assert_int_equal(kfg_httpc_inflight(f->hc), 0);

    /* Cancelled while the server holds them, next to another owner's. */
    assert_int_equal(start(f, &a, "GET", "/hang", NULL, NULL, 0, 0, &ra[2]),
                     KFG_OK);
    assert_int_equal(start(f, &b, "GET", "/hang", NULL, NULL, 0, 0, &rb),
                     KFG_OK);
    assert_int_equal(start(f, &a, "GET", "/hang", NULL, NULL, 0, 0, &ra[3]),
                     KFG_OK);
    run_until(f, &f->hanging, 3);
    kfg_httpc_cancel_owner(f->hc, &a);
    assert_int_equal(kfg_httpc_inflight(f->hc), 1);
    /* The server answers all three now; only b may hear of it. */
    for (int i = 0; i < f->hanging; i++)
        evhttp_send_reply(f->hang[i], 200, "OK", NULL);
    f->hanging = 0;
    run_until(f, &rb.calls, 1);
    spin(f);
    for (int i = 0; i < 4; i++)
        assert_int_equal(ra[i].calls, 0);
    assert_int_equal(rb.calls, 1);
    assert_int_equal(rb.status, 200);
    assert_int_equal(f->served, 3);
}

/* Each completion starts the next call from inside done. */
static void on_done_chain(void *arg, int result, int status,
                          struct kfg_str body, const char *error)
{
    struct result *r = arg;
    struct fixture *f = r->f;
    int calls = r->calls;

    on_done(arg, result, status, body, error);
    assert_int_equal(r->calls, calls + 1);
    assert_int_equal(result, KFG_OK);
    if (r->chain_left-- > 0) {
        char url[128];
        struct kfg_http_call call = { .method = "GET", .url = url };

        snprintf(url, sizeof(url), "%s/echo", f->url);
        assert_int_equal(kfg_httpc_call(f->hc, f, &call, on_done_chain, r),
                         KFG_OK);
        /* not re-entered from inside kfg_httpc_call */
        assert_int_equal(r->calls, calls + 1);
    }
}

static void test_done_starts_call(void **state)
{
    struct fixture *f = *state;
    struct result r = { .f = f, .chain_left = 2 };
    char url[128];
    struct kfg_http_call call = { .method = "GET", .url = url };

    snprintf(url, sizeof(url), "%s/echo", f->url);
    assert_int_equal(kfg_httpc_call(f->hc, f, &call, on_done_chain, &r),
                     KFG_OK);
    run_until(f, &r.calls, 3);
    spin(f);
    assert_int_equal(r.calls, 3);
    assert_int_equal(f->served, 3);
    assert_int_equal(kfg_httpc_inflight(f->hc), 0);
}

/* Cancels an owner, or frees the client, from inside done. */
static void on_done_cancel(void *arg, int result, int status,
                           struct kfg_str body, const char *error)
{
    struct result *r = arg;

    on_done(arg, result, status, body, error);
    if (r->free_client) {
        kfg_httpc_free(r->f->hc);
        r->f->hc = NULL;
    } else {
        kfg_httpc_cancel_owner(r->f->hc, r->cancel);
    }
}

static void start_with(struct fixture *f, const void *owner, const char *path,
                       kfg_http_done done, struct result *r)
{
    char url[128];
    struct kfg_http_call call = { .method = "GET", .url = url };

    /* a path on the test server, or any URL */
    snprintf(url, sizeof(url), "%s%s", path[0] == '/' ? f->url : "", path);
    r->f = f;
    assert_int_equal(kfg_httpc_call(f->hc, owner, &call, done, r), KFG_OK);
}

static void test_done_cancels_owner(void **state)
{
    struct fixture *f = *state;
    struct result r = { .cancel = f }, rq = { .cancel = f };

    /* Refused protocols all fail in the same timer run, so their
     * completions are queued together: the first done cancels the rest
     * while curl still holds their messages. */
    for (int i = 0; i < 10; i++)
        start_with(f, f, "file:///etc/passwd", on_done_cancel, &rq);
    run_until(f, &rq.calls, 1);
    assert_int_equal(rq.calls, 1);
    assert_int_equal(rq.result, KFG_EFAIL);
    assert_int_equal(kfg_httpc_inflight(f->hc), 0);

    /* The same with transfers that go over the wire. */
    for (int i = 0; i < 10; i++)
        start_with(f, f, "/echo", on_done_cancel, &r);
    run_until(f, &r.calls, 1);
    assert_int_equal(r.calls, 1);
    assert_int_equal(kfg_httpc_inflight(f->hc), 0);
    /* The client still works afterwards. */
    {
        struct result r2 = { 0 };

        assert_int_equal(start(f, f, "GET", "/echo", NULL, NULL, 0, 0, &r2),
                         KFG_OK);
        run_until(f, &r2.calls, 1);
        assert_int_equal(r2.status, 200);
    }
    spin(f);
    assert_int_equal(r.calls, 1);
    assert_int_equal(rq.calls, 1);
}

static void test_done_frees_client(void **state)
{
    struct fixture *f = *state;
    struct result r = { .free_client = 1 };

    /* queued completions behind the one whose done frees the client */
    for (int i = 0; i < 5; i++)
        start_with(f, f, "file:///etc/passwd", on_done_cancel, &r);
    for (int i = 0; i < 5; i++)
        start_with(f, f, "/echo", on_done_cancel, &r);
    for (int i = 0; i < 2; i++)
        start_with(f, f, "/hang", on_done_cancel, &r);
    run_until(f, &r.calls, 1);
    assert_null(f->hc);
    spin(f);
    assert_int_equal(r.calls, 1);
}

static void test_free_in_flight(void **state)
{
    struct fixture *f = *state;
    struct result r[8];

    memset(r, 0, sizeof(r));
    for (int i = 0; i < 5; i++)
        assert_int_equal(start(f, f, "GET", "/hang", NULL, NULL, 0, 0, &r[i]),
                         KFG_OK);
    run_until(f, &f->hanging, 5);
    /* and some that have not reached the wire yet */
    for (int i = 5; i < 8; i++)
        assert_int_equal(start(f, f, "POST", "/echo", NULL, "x", 1, 0, &r[i]),
                         KFG_OK);
    assert_int_equal(kfg_httpc_inflight(f->hc), 8);
    kfg_httpc_free(f->hc);
    f->hc = NULL;
    spin(f);
    for (int i = 0; i < 8; i++)
        assert_int_equal(r[i].calls, 0);
}

static void test_max_inflight(void **state)
{
    struct fixture *f = *state;
    struct kfg_httpc_limits lim = test_limits;
    struct kfg_httpc *main_hc = f->hc;
    struct result r[4];

    memset(r, 0, sizeof(r));
    lim.max_inflight = 2;
    f->hc = kfg_httpc_new(f->base, &lim);
    assert_non_null(f->hc);
    assert_int_equal(start(f, f, "GET", "/echo", NULL, NULL, 0, 0, &r[0]),
                     KFG_OK);
    assert_int_equal(start(f, f, "GET", "/echo", NULL, NULL, 0, 0, &r[1]),
                     KFG_OK);
    assert_int_equal(start(f, f, "GET", "/echo", NULL, NULL, 0, 0, &r[2]),
                     KFG_AGAIN);
    assert_int_equal(kfg_httpc_inflight(f->hc), 2);
    run_until(f, &r[0].calls, 1);
    run_until(f, &r[1].calls, 1);
    assert_int_equal(r[2].calls, 0);
    /* capacity comes back once calls complete */
    assert_int_equal(start(f, f, "GET", "/echo", NULL, NULL, 0, 0, &r[3]),
                     KFG_OK);
    run_until(f, &r[3].calls, 1);
    assert_int_equal(r[3].status, 200);
    kfg_httpc_free(f->hc);
    f->hc = main_hc;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_post_put_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_404, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_args, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reuses_connection, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_concurrent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_owner, setup, teardown),
        cmocka_unit_test_setup_teardown(test_done_starts_call, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_done_cancels_owner, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_done_frees_client, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_free_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_inflight, setup, teardown),
    };
    int failed;

    /* Writing to a peer that left must not kill the test (the server side
     * answers hung requests after their client has gone). */
    signal(SIGPIPE, SIG_IGN);
    /* Loopback traffic must not go through a proxy from the environment. */
    unsetenv("http_proxy");
    unsetenv("HTTP_PROXY");
    unsetenv("all_proxy");
    unsetenv("ALL_PROXY");
    curl_global_init(CURL_GLOBAL_DEFAULT);
    failed = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return failed;
}
