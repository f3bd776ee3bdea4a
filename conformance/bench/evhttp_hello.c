/* evhttp_hello: the peer figure for `make bench` — a bare libevent 2.1 evhttp
 * server, one thread, answering every request with 200 "ok" (text/plain).
 *
 *   evhttp_hello PORT        listens on 127.0.0.1:PORT until SIGTERM/SIGINT
 *
 * Build: gcc -O2 -o evhttp_hello evhttp_hello.c -levent
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static struct evbuffer *reply;

static void on_request(struct evhttp_request *req, void *arg)
{
    (void)arg;
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    /* evhttp_send_reply drains the buffer it is given: send a copy. */
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    evbuffer_add_buffer_reference(b, reply);
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopbreak(arg);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    if (port <= 0 || port > 65535) {
        fprintf(stderr, "evhttp_hello: bad port: %s\n", argv[1]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    struct event_base *base = event_base_new();
    struct evhttp *http = base ? evhttp_new(base) : NULL;
    reply = evbuffer_new();
    if (!http || !reply || evbuffer_add(reply, "ok", 2) != 0) {
        fprintf(stderr, "evhttp_hello: out of memory\n");
        return 1;
    }
    evhttp_set_gencb(http, on_request, NULL);
    if (!evhttp_bind_socket_with_handle(http, "127.0.0.1", (ev_uint16_t)port)) {
        fprintf(stderr, "evhttp_hello: cannot listen on 127.0.0.1:%d\n", port);
        return 1;
    }
    struct event *sterm = evsignal_new(base, SIGTERM, on_signal, base);
    struct event *sint = evsignal_new(base, SIGINT, on_signal, base);
    if (!sterm || !sint || evsignal_add(sterm, NULL) || evsignal_add(sint, NULL)) {
        fprintf(stderr, "evhttp_hello: cannot install signal handlers\n");
        return 1;
    }

    event_base_dispatch(base);

    event_free(sterm);
    event_free(sint);
    evhttp_free(http);
    evbuffer_free(reply);
    event_base_free(base);
    return 0;
}
