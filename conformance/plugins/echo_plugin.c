/*
 * echo: a test adapter for the conformance suite (not shipped).
 *
 * Built by the suite's fixtures with
 *     cc -shared -fPIC -I gateway/include [-DECHO_NAME=\"echo\"]
 *        [-DECHO_VERSION=\"1.0\"] echo_plugin.c -o <plugin_dir>/echo.so
 * so that a test can drop a new build of the same plugin type, with another
 * version string, into plugin_dir and reload.
 *
 * Keys:  path   route prefix (required)
 *        reply  body of the answer when the request has no body (default "echo")
 *        token  a secret ("env:NAME" allowed); GET <path>secret?v=X answers
 *               200 "match" when X equals it, else 403 "mismatch"
 *        unhealthy  when set, health fails with this text as the detail
 *
 * Every other request, any method, is answered 200 with the decoded request
 * body (or `reply` when the body is empty), with the status given in the
 * request header X-Echo-Status (default 200), and these headers:
 *   X-Echo-Version  ECHO_VERSION      X-Echo-Instance  the instance name
 *   X-Echo-Method   the method        X-Echo-Path      the raw path
 *   X-Echo-Query    the raw query     X-Body-Length    decoded body length
 */
#include <kfgate/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef ECHO_NAME
#define ECHO_NAME "echo"
#endif
#ifndef ECHO_VERSION
#define ECHO_VERSION "1.0"
#endif

struct echo {
    struct kfg_instance *ins;
    const struct kfg_host *host;
    const char *path, *reply, *token, *unhealthy;
};

static const struct kfg_config_key echo_config[] = {
    {"path", KFG_CFG_STRING, KFG_CFG_REQUIRED, NULL, "route prefix"},
    {"reply", KFG_CFG_STRING, 0, "echo", "answer when the request has no body"},
    {"token", KFG_CFG_SECRET, 0, NULL, "a secret compared by GET <path>secret?v="},
    {"unhealthy", KFG_CFG_STRING, 0, NULL, "make health fail with this detail"},
    {NULL, 0, 0, NULL, NULL},
};

static int echo_init(struct kfg_instance *ins, const struct kfg_host *host, void *ctx)
{
    struct echo *e = ctx;
    e->ins = ins;
    e->host = host;
    e->path = host->config_string(ins, "path");
    e->reply = host->config_string(ins, "reply");
    e->token = host->config_string(ins, "token");
    e->unhealthy = host->config_string(ins, "unhealthy");
    if (!e->path || e->path[0] != '/') {
        host->log(ins, NULL, KFG_LOG_ERROR, "path must start with '/'");
        return KFG_EINVAL;
    }
    return KFG_OK;
}

static void copy_str(char *dst, size_t cap, struct kfg_str s)
{
    size_t n = s.ptr ? (s.len < cap - 1 ? s.len : cap - 1) : 0;
    if (n)
        memcpy(dst, s.ptr, n);
    dst[n] = '\0';
}

static void on_request(void *ctx, struct kfg_request *req)
{
    struct echo *e = ctx;
    const struct kfg_host *h = e->host;
    char method[32], path[512], query[512], blen[32];
    copy_str(method, sizeof(method), h->req_method(req));
    copy_str(path, sizeof(path), h->req_path(req));
    copy_str(query, sizeof(query), h->req_query(req));
    struct kfg_str body = h->req_body(req);
    size_t pl = strlen(e->path);
    if (strcmp(method, "GET") == 0 && strlen(path) == pl + 6 &&
        strcmp(path + pl, "secret") == 0) {
        int match = e->token && *e->token && strncmp(query, "v=", 2) == 0 &&
                    strcmp(query + 2, e->token) == 0;
        const char *ans = match ? "match" : "mismatch";
        h->req_respond(req, match ? 200 : 403, NULL, 0, ans, strlen(ans));
        return;
    }
    snprintf(blen, sizeof(blen), "%zu", body.len);
    char st[8];
    copy_str(st, sizeof(st), h->req_header(req, "X-Echo-Status"));
    int status = st[0] ? atoi(st) : 200;
    struct kfg_header hd[] = {
        {"Content-Type", "application/octet-stream"},
        {"X-Echo-Version", ECHO_VERSION},
        {"X-Echo-Instance", h->instance_name(e->ins)},
        {"X-Echo-Method", method},
        {"X-Echo-Path", path},
        {"X-Echo-Query", query},
        {"X-Body-Length", blen},
    };
    if (body.len)
        h->req_respond(req, status, hd, sizeof(hd) / sizeof(hd[0]), body.ptr, body.len);
    else
        h->req_respond(req, status, hd, sizeof(hd) / sizeof(hd[0]), e->reply, strlen(e->reply));
}

static int echo_start(void *ctx)
{
    struct echo *e = ctx;
    return e->host->route_add(e->ins, NULL, e->path, KFG_ROUTE_PREFIX, on_request);
}

static int echo_health(void *ctx, char *detail, size_t cap)
{
    struct echo *e = ctx;
    if (!e->unhealthy || !*e->unhealthy)
        return KFG_OK;
    snprintf(detail, cap, "%s", e->unhealthy);
    return KFG_EFAIL;
}

static int echo_deliver(void *ctx, const struct kfg_msg *m, struct kfg_delivery *d)
{
    (void)ctx;
    (void)m;
    (void)d;
    return KFG_EFAIL;   /* this test channel cannot send anything */
}

KFG_PLUGIN_EXPORT = {
    KFG_PLUGIN_HEADER,
    .kind = KFG_KIND_ADAPTER,
    .name = ECHO_NAME,
    .version = ECHO_VERSION,
    .description = "conformance test adapter: echoes requests",
    .config = echo_config,
    .ctx_size = sizeof(struct echo),
    .init = echo_init,
    .start = echo_start,
    .health = echo_health,
    .deliver = echo_deliver,
};
