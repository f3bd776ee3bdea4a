/*
 * The HTTP/1.1 front door: listeners, connections, routing, responses.
 *
 * One kfg_http_server serves one address. Its listening socket is opened
 * once per worker loop with SO_REUSEPORT so the kernel spreads connections
 * over the workers with no hand-off. Each connection lives on one loop for
 * its whole life; requests on it are parsed, routed and answered in order
 * (a pipelined request waits until the one before it is answered).
 *
 * Routes and limits are published together as an immutable snapshot.
 * Workers pick up a new snapshot between requests; a request keeps the
 * instance that owns its route referenced until it is answered, so a reload
 * can swap routes while requests are in flight and drain the old instances.
 */
#ifndef KFG_HTTP_H
#define KFG_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "kfgate/plugin.h"

struct kfg_loop;
struct kfg_instance;
struct kfg_http_server;
struct kfg_routes;

struct kfg_http_config {
    size_t max_head_bytes;       /* request line + headers -> 431 */
    unsigned max_headers;        /* -> 431 */
    size_t max_body_bytes;       /* -> 413 */
    unsigned max_connections;    /* per server; beyond: 503 and close */
    uint32_t header_timeout_ms;  /* head must arrive within -> 408 */
    uint32_t body_timeout_ms;    /* body must arrive within -> 408 */
    uint32_t idle_timeout_ms;    /* keep-alive idle -> close */
    uint32_t write_timeout_ms;   /* a client that stops reading -> close */
};

void kfg_http_config_defaults(struct kfg_http_config *c);

/* Route tables are built on the control loop and then published; once
 * published they are read-only. ins may be NULL (host-internal routes). */
struct kfg_routes *kfg_routes_new(void);
int kfg_routes_add(struct kfg_routes *r, const char *method, const char *path,
                   unsigned flags, kfg_http_handler fn, void *ctx,
                   struct kfg_instance *ins);
/* Drops every route of ins (used when an instance fails to start). */
void kfg_routes_remove_instance(struct kfg_routes *r, const struct kfg_instance *ins);
void kfg_routes_free(struct kfg_routes *r);   /* only if never published */
size_t kfg_routes_count(const struct kfg_routes *r);

struct kfg_http_server *kfg_http_server_new(const char *name);
/* Opens "host:port" on each loop (before the loops run). port 0 picks a free
 * port (the first socket's), shared by the others. Returns 0 or -1 (logged). */
int kfg_http_server_listen(struct kfg_http_server *s, const char *addr,
                           struct kfg_loop **loops, size_t nloops);
int kfg_http_server_port(const struct kfg_http_server *s);
/* Publishes routes + config (the server takes ownership of routes); the old
 * snapshot is released once every loop has moved on. Control loop. */
void kfg_http_server_publish(struct kfg_http_server *s, struct kfg_routes *r,
                             const struct kfg_http_config *cfg);
/* Stops accepting and closes idle connections; connections with a request
 * in progress close once it is answered. done() runs on the control loop
 * when no connection is left. */
void kfg_http_server_drain(struct kfg_http_server *s, void (*done)(void *arg),
                           void *arg);
unsigned kfg_http_server_connections(const struct kfg_http_server *s);
/* Frees a drained server after the loops have stopped. */
void kfg_http_server_free(struct kfg_http_server *s);

/* Request functions behind struct kfg_host. */
struct kfg_str kfg_req_method(const struct kfg_request *req);
struct kfg_str kfg_req_path(const struct kfg_request *req);
struct kfg_str kfg_req_query(const struct kfg_request *req);
struct kfg_str kfg_req_header(const struct kfg_request *req, const char *name);
size_t kfg_req_header_count(const struct kfg_request *req);
int kfg_req_header_at(const struct kfg_request *req, size_t i,
                      struct kfg_str *name, struct kfg_str *value);
struct kfg_str kfg_req_body(const struct kfg_request *req);
const char *kfg_req_id(const struct kfg_request *req);
const char *kfg_req_peer(const struct kfg_request *req);
struct kfg_loop *kfg_req_loop(const struct kfg_request *req);
int kfg_req_respond(struct kfg_request *req, int status,
                    const struct kfg_header *headers, size_t nheaders,
                    const void *body, size_t len);
int kfg_req_upgrade(struct kfg_request *req, struct kfg_upgraded *out);
struct kfg_instance *kfg_req_instance(const struct kfg_request *req);

const char *kfg_http_reason(int status);

#endif
