/*
 * ws_load: a WebSocket load generator for conformance/bench/ws_bench.py.
 * One thread, epoll, non-blocking sockets; client frames masked with a fresh
 * random key each (RFC 6455 5.3), server frames unmasked and checked to be so.
 *
 *   ws_load idle      --conns N            open N connections, print "ready",
 *                                          hold them (answering pings) until
 *                                          stdin closes or SIGTERM
 *   ws_load handshake --conns C --seconds S  C slots, each: connect, upgrade,
 *                                          check Sec-WebSocket-Accept, close
 *   ws_load echo      --conns N --seconds S  N connections, each with --window
 *                                          messages in flight; a received data
 *                                          frame containing --match answers
 *                                          the oldest one
 *
 * Common options: --host IP --port P --path /p [--origin O] [--protocol P]
 *   [--hello TEXT] (a text frame sent once the connection is open; for echo,
 *   measuring starts only when every connection is open and --settle-ms has
 *   passed) [--msg TEMPLATE] ("{id}" replaced by a unique id per message)
 *   [--src N] (bind to 127.0.0.2 .. 127.0.0.(N+1), spreading the 4-tuples so
 *   that tens of thousands of connections do not exhaust the ports of one
 *   source address) [--src-base K] (first last-octet, default 2).
 * Output: one line of key=value pairs on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF 4096
#define WBUF 4096
#define MAXWIN 64

enum mode { M_IDLE, M_HANDSHAKE, M_ECHO };
enum state { S_FREE, S_CONNECTING, S_UPGRADING, S_OPEN };

struct conn {
    int fd;
    uint8_t state;
    uint8_t want_out;       /* EPOLLOUT registered */
    uint8_t greeted;        /* a data frame arrived (welcome) */
    uint16_t inflight;
    uint32_t rlen, wlen, woff;
    uint32_t sent;          /* messages sent on this connection */
    uint32_t head;          /* ring of send times of in-flight messages */
    char key[25];
    uint64_t t_sent[MAXWIN];
    char *rbuf, *wbuf;      /* owned; freed when the connection closes */
};

static struct {
    enum mode mode;
    const char *host, *path, *origin, *protocol, *hello, *msg, *match;
    int port, conns, seconds, window, src, src_base, settle_ms, pending_max;
    uint32_t nonce;
} o = { .host = "127.0.0.1", .path = "/", .msg = "{id}", .match = "", .port = 0,
        .conns = 100, .seconds = 5, .window = 1, .src = 1, .src_base = 2,
        .settle_ms = 500, .pending_max = 256 };

static struct conn *cs;
static int ep;
static volatile sig_atomic_t stop;
static uint64_t n_greeted, n_open, n_handshakes, n_msgs, n_errors, n_closed_by_server, n_connecting;
static uint64_t err_connect, err_upgrade, err_proto;
static int measuring;
static uint64_t *hist;      /* latency histogram, see hist_idx */
#define HIST_N (10000 + 100000)
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint32_t rnd32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

/* 1 us buckets below 10 ms, 100 us buckets up to ~10 s. */
static size_t hist_idx(uint64_t us)
{
    if (us < 10000)
        return us;
    us = 10000 + (us - 10000) / 100;
    return us < HIST_N ? us : HIST_N - 1;
}

static double hist_us(size_t i)
{
    return i < 10000 ? (double)i : 10000.0 + (double)(i - 10000) * 100.0;
}

static double percentile(double p)
{
    uint64_t total = 0, acc = 0;
    for (size_t i = 0; i < HIST_N; i++)
        total += hist[i];
    if (!total)
        return 0;
    uint64_t want = (uint64_t)(p * (double)total);
    for (size_t i = 0; i < HIST_N; i++) {
        acc += hist[i];
        if (acc > want)
            return hist_us(i);
    }
    return hist_us(HIST_N - 1);
}

static void on_signal(int s)
{
    (void)s;
    stop = 1;
}

static void ep_mod(struct conn *c, int out)
{
    struct epoll_event ev = { .events = EPOLLIN | (out ? EPOLLOUT : 0),
                              .data.u32 = (uint32_t)(c - cs) };
    if (c->want_out != out) {
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = (uint8_t)out;
    }
}

static void conn_close(struct conn *c)
{
    if (c->state == S_FREE)
        return;
    if (c->state == S_OPEN)
        n_open--;
    if (c->greeted)
        n_greeted--;
    else
        n_connecting--;
    close(c->fd);
    /* The buffers stay with the slot: handshake mode reuses it at once. */
    c->state = S_FREE;
    c->fd = -1;
}

static int flush_out(struct conn *c)
{
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) {
                ep_mod(c, 1);
                return 0;
            }
            return -1;
        }
        c->woff += (uint32_t)n;
    }
    c->woff = c->wlen = 0;
    if (c->want_out)
        ep_mod(c, 0);
    return 0;
}

static int queue(struct conn *c, const void *p, size_t n)
{
    if (c->wlen - c->woff + n > WBUF)
        return -1;
    if (c->woff && c->wlen + n > WBUF) {
        memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
        c->wlen -= c->woff;
        c->woff = 0;
    }
    memcpy(c->wbuf + c->wlen, p, n);
    c->wlen += (uint32_t)n;
    return 0;
}

/* One masked frame: FIN set, opcode op. */
static int send_frame(struct conn *c, int op, const void *payload, size_t n)
{
    uint8_t h[14 + 1024];
    size_t hl = 0;
    h[hl++] = (uint8_t)(0x80 | op);
    if (n < 126) {
        h[hl++] = (uint8_t)(0x80 | n);
    } else if (n < 65536) {
        h[hl++] = 0x80 | 126;
        h[hl++] = (uint8_t)(n >> 8);
        h[hl++] = (uint8_t)n;
    } else {
        return -1;
    }
    uint32_t m = rnd32();
    uint8_t mk[4] = { (uint8_t)m, (uint8_t)(m >> 8), (uint8_t)(m >> 16), (uint8_t)(m >> 24) };
    memcpy(h + hl, mk, 4);
    hl += 4;
    if (n > sizeof h - hl)
        return -1;
    const uint8_t *s = payload;
    for (size_t i = 0; i < n; i++)
        h[hl + i] = s[i] ^ mk[i & 3];
    return queue(c, h, hl + n);
}

static void make_key(struct conn *c)
{
    uint8_t raw[16];
    for (int i = 0; i < 16; i += 4) {
        uint32_t r = rnd32();
        memcpy(raw + i, &r, 4);
    }
    EVP_EncodeBlock((unsigned char *)c->key, raw, 16);
}

static int open_one(struct conn *c, uint64_t idx)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        err_connect++;
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (o.src > 1 || o.src_base != 2) {
        struct sockaddr_in sa = { .sin_family = AF_INET };
        sa.sin_addr.s_addr = htonl((127u << 24) | (uint32_t)(o.src_base + (int)(idx % (uint64_t)o.src)));
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
            close(fd);
            err_connect++;
            return -1;
        }
    }
    struct sockaddr_in da = { .sin_family = AF_INET, .sin_port = htons((uint16_t)o.port) };
    inet_pton(AF_INET, o.host, &da.sin_addr);
    if (connect(fd, (struct sockaddr *)&da, sizeof da) != 0 && errno != EINPROGRESS) {
        close(fd);
        err_connect++;
        return -1;
    }
    char *rbuf = c->rbuf, *wbuf = c->wbuf;
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->state = S_CONNECTING;
    c->rbuf = rbuf ? rbuf : malloc(RBUF);
    c->wbuf = wbuf ? wbuf : malloc(WBUF);
    make_key(c);
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n%s%s%s%s%s%s\r\n",
                     o.path, o.host, o.port, c->key,
                     o.origin ? "Origin: " : "", o.origin ? o.origin : "", o.origin ? "\r\n" : "",
                     o.protocol ? "Sec-WebSocket-Protocol: " : "", o.protocol ? o.protocol : "",
                     o.protocol ? "\r\n" : "");
    /* On loopback the connection is usually up when connect returns: send
     * the request now and wait for writability only if it is not (a send
     * on a socket still connecting fails with EAGAIN). */
    ssize_t sent = send(fd, req, (size_t)n, MSG_NOSIGNAL);
    if (sent < 0 && errno != EAGAIN && errno != ENOTCONN) {
        close(fd);
        c->state = S_FREE;
        err_connect++;
        return -1;
    }
    if (sent < 0)
        sent = 0;
    if (sent < n)
        queue(c, req + sent, (size_t)(n - sent));
    struct epoll_event ev = { .events = EPOLLIN | (c->wlen ? EPOLLOUT : 0),
                              .data.u32 = (uint32_t)(c - cs) };
    c->want_out = c->wlen != 0;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    n_connecting++;
    return 0;
}

static void send_msg(struct conn *c)
{
    char id[64], buf[1024];
    snprintf(id, sizeof id, "%08x-%ld-%u", o.nonce, (long)(c - cs), c->sent);
    const char *t = strstr(o.msg, "{id}");
    int n = t ? snprintf(buf, sizeof buf, "%.*s%s%s", (int)(t - o.msg), o.msg, id, t + 4)
              : snprintf(buf, sizeof buf, "%s", o.msg);
    if (send_frame(c, 1, buf, (size_t)n) != 0) {
        n_errors++;
        return;
    }
    c->t_sent[(c->head + c->inflight) % MAXWIN] = now_ns();
    c->inflight++;
    c->sent++;
}

static void fill_window(struct conn *c)
{
    while (measuring && c->inflight < o.window)
        send_msg(c);
}

/* The expected Sec-WebSocket-Accept for c->key. */
static void accept_for(const struct conn *c, char out[29])
{
    char cat[64];
    unsigned char dg[SHA_DIGEST_LENGTH];
    int n = snprintf(cat, sizeof cat, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", c->key);
    SHA1((unsigned char *)cat, (size_t)n, dg);
    EVP_EncodeBlock((unsigned char *)out, dg, SHA_DIGEST_LENGTH);
}

static const char *hdr(const char *head, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (const char *p = strstr(head, "\r\n"); p && p[2] != '\r'; p = strstr(p + 2, "\r\n")) {
        if (strncasecmp(p + 2, name, nl) == 0 && p[2 + nl] == ':') {
            const char *v = p + 3 + nl;
            while (*v == ' ')
                v++;
            const char *e = strstr(v, "\r\n");
            *len = (size_t)(e - v);
            return v;
        }
    }
    return NULL;
}

/* 1 = consumed the head, 0 = need more, -1 = refused. */
static int on_upgrade(struct conn *c)
{
    c->rbuf[c->rlen] = 0;
    char *end = strstr(c->rbuf, "\r\n\r\n");
    if (!end)
        return c->rlen >= RBUF - 1 ? -1 : 0;
    end[2] = 0;
    if (strncmp(c->rbuf, "HTTP/1.1 101", 12) != 0) {
        if (!err_upgrade)
            fprintf(stderr, "ws_load: refused: %.200s\n", c->rbuf);
        return -1;
    }
    size_t al;
    const char *a = hdr(c->rbuf, "Sec-WebSocket-Accept", &al);
    char want[29];
    accept_for(c, want);
    if (!a || al != 28 || memcmp(a, want, 28) != 0) {
        if (!err_upgrade)
            fprintf(stderr, "ws_load: bad Sec-WebSocket-Accept\n");
        return -1;
    }
    size_t used = (size_t)(end + 4 - c->rbuf);
    memmove(c->rbuf, c->rbuf + used, c->rlen - used);
    c->rlen -= (uint32_t)used;
    c->state = S_OPEN;
    n_connecting--;
    n_open++;
    n_handshakes++;
    return 1;
}

static void on_data(struct conn *c, const uint8_t *p, size_t n)
{
    if (!c->greeted) {
        c->greeted = 1;
        n_greeted++;
    }
    if (o.mode != M_ECHO || !c->inflight)
        return;
    if (o.match[0] && !memmem(p, n, o.match, strlen(o.match)))
        return;
    uint64_t t = c->t_sent[c->head % MAXWIN];
    c->head = (c->head + 1) % MAXWIN;
    c->inflight--;
    if (measuring) {
        n_msgs++;
        hist[hist_idx((now_ns() - t) / 1000)]++;
    }
    fill_window(c);
}

/* Parses whole frames in rbuf; -1 closes the connection. */
static int on_frames(struct conn *c)
{
    size_t off = 0;
    const uint8_t *b = (const uint8_t *)c->rbuf;
    while (c->rlen - off >= 2) {
        uint8_t op = b[off] & 0x0f, len7 = b[off + 1] & 0x7f;
        if (b[off + 1] & 0x80) {          /* servers must not mask */
            err_proto++;
            return -1;
        }
        size_t hl = 2;
        uint64_t len = len7;
        if (len7 == 126) {
            if (c->rlen - off < 4)
                break;
            len = (uint64_t)b[off + 2] << 8 | b[off + 3];
            hl = 4;
        } else if (len7 == 127) {
            if (c->rlen - off < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | b[off + 2 + i];
            hl = 10;
        }
        if (len > RBUF - 16) {
            err_proto++;
            return -1;
        }
        if (c->rlen - off < hl + len)
            break;
        const uint8_t *pl = b + off + hl;
        switch (op) {
        case 0: case 1: case 2:
            on_data(c, pl, (size_t)len);
            break;
        case 8:
            n_closed_by_server++;
            if (len >= 2 && !stop && n_closed_by_server <= 3)  /* a few say why */
                fprintf(stderr, "ws_load: server closed with %u %.*s\n",
                        (unsigned)(pl[0] << 8 | pl[1]), (int)len - 2, (const char *)pl + 2);
            return -1;
        case 9:
            send_frame(c, 10, pl, (size_t)len);
            break;
        default:
            break;
        }
        off += hl + (size_t)len;
    }
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= (uint32_t)off;
    return 0;
}

static void after_open(struct conn *c)
{
    if (o.mode == M_HANDSHAKE) {
        static const uint8_t code[2] = { 0x03, 0xe8 };
        send_frame(c, 8, code, 2);
        flush_out(c);
        conn_close(c);
        return;
    }
    if (o.hello)
        send_frame(c, 1, o.hello, strlen(o.hello));
    fill_window(c);
}

static void on_event(struct conn *c, uint32_t events)
{
    if (c->state == S_FREE)
        return;
    if (events & EPOLLOUT) {
        if (flush_out(c) != 0)
            goto fail;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        for (;;) {
            ssize_t n = recv(c->fd, c->rbuf + c->rlen, RBUF - 1 - c->rlen, 0);
            if (n < 0 && errno == EAGAIN)
                break;
            if (n <= 0)
                goto fail;
            c->rlen += (uint32_t)n;
            if (c->state != S_OPEN) {
                int r = on_upgrade(c);
                if (r < 0) {
                    err_upgrade++;
                    goto fail;
                }
                if (r == 0)
                    continue;
                after_open(c);
                if (c->state == S_FREE)
                    return;
            }
            if (on_frames(c) != 0)
                goto fail;
            if (c->rlen >= RBUF - 1)
                goto fail;
        }
        if (c->wlen && flush_out(c) != 0)
            goto fail;
    }
    return;
fail:
    if (c->state != S_OPEN && c->state != S_FREE && !stop)
        err_connect += (events & EPOLLERR) ? 1 : 0;
    if (!stop && o.mode != M_HANDSHAKE)
        n_errors++;
    else if (!stop && c->state != S_OPEN)
        n_errors++;
    conn_close(c);
}

static void usage(void)
{
    fprintf(stderr, "usage: ws_load idle|handshake|echo --port P [options] (see the source)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        { "host", 1, 0, 'H' }, { "port", 1, 0, 'p' }, { "path", 1, 0, 'P' },
        { "origin", 1, 0, 'O' }, { "protocol", 1, 0, 'S' }, { "hello", 1, 0, 'h' },
        { "msg", 1, 0, 'm' }, { "match", 1, 0, 'M' }, { "conns", 1, 0, 'c' },
        { "seconds", 1, 0, 's' }, { "window", 1, 0, 'w' }, { "src", 1, 0, 'r' },
        { "src-base", 1, 0, 'b' }, { "settle-ms", 1, 0, 't' }, { "pending", 1, 0, 'q' },
        { 0, 0, 0, 0 },
    };
    if (argc < 2)
        usage();
    if (!strcmp(argv[1], "idle"))
        o.mode = M_IDLE;
    else if (!strcmp(argv[1], "handshake"))
        o.mode = M_HANDSHAKE;
    else if (!strcmp(argv[1], "echo"))
        o.mode = M_ECHO;
    else
        usage();
    optind = 2;
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'H': o.host = optarg; break;
        case 'p': o.port = atoi(optarg); break;
        case 'P': o.path = optarg; break;
        case 'O': o.origin = optarg; break;
        case 'S': o.protocol = optarg; break;
        case 'h': o.hello = optarg; break;
        case 'm': o.msg = optarg; break;
        case 'M': o.match = optarg; break;
        case 'c': o.conns = atoi(optarg); break;
        case 's': o.seconds = atoi(optarg); break;
        case 'w': o.window = atoi(optarg); break;
        case 'r': o.src = atoi(optarg); break;
        case 'b': o.src_base = atoi(optarg); break;
        case 't': o.settle_ms = atoi(optarg); break;
        case 'q': o.pending_max = atoi(optarg); break;
        default: usage();
        }
    }
    if (!o.port || o.conns <= 0 || o.window < 1 || o.window > MAXWIN || o.src < 1 ||
        o.pending_max < 1)
        usage();
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    rng ^= (uint64_t)now_ns() * 0x2545F4914F6CDD1Dull ^ (uint64_t)getpid();
    o.nonce = rnd32();
    hist = calloc(HIST_N, sizeof *hist);
    cs = calloc((size_t)o.conns, sizeof *cs);
    ep = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < o.conns; i++)
        cs[i].fd = -1;

    struct epoll_event evs[512];
    uint64_t t0 = now_ns(), started = 0, t_measure = 0, t_end = 0, opened_at = 0;
    int next = 0;
    int ready_printed = 0;
    uint64_t attempts = 0;
    for (;;) {
        /* Keep at most pending_max connections in their handshake, so the
         * listen backlog never overflows (an overflow costs a 1 s SYN retry). */
        if (o.mode == M_HANDSHAKE) {
            if (t_measure && !stop) {
                for (int i = 0; i < o.conns; i++)
                    if (cs[i].state == S_FREE && (int)n_connecting < o.pending_max)
                        if (open_one(&cs[i], attempts++) != 0)
                            break;
            }
        } else {
            while (next < o.conns && (int)n_connecting < o.pending_max && !stop) {
                if (open_one(&cs[next], (uint64_t)next) == 0)
                    next++;
                else
                    break;
            }
        }
        int n = epoll_wait(ep, evs, 512, 10);
        for (int i = 0; i < n; i++)
            on_event(&cs[evs[i].data.u32], evs[i].events);
        uint64_t now = now_ns();
        if (o.mode == M_HANDSHAKE && !t_measure) {
            t_measure = now;
            t_end = now + (uint64_t)o.seconds * 1000000000ull;
            n_handshakes = 0;
        }
        /* With --hello, open means answered too (the server took the hello). */
        if (o.mode != M_HANDSHAKE && !opened_at && next == o.conns && !n_connecting &&
            (!o.hello || n_greeted == n_open)) {
            opened_at = now;
            if (o.mode == M_IDLE) {
                printf("ready open=%llu greeted=%llu errors=%llu secs=%.2f\n", (unsigned long long)n_open,
                       (unsigned long long)n_greeted,
                       (unsigned long long)(n_errors + err_connect + err_upgrade),
                       (double)(now - t0) / 1e9);
                fflush(stdout);
                ready_printed = 1;
            }
        }
        if (o.mode == M_ECHO && opened_at && !measuring &&
            now - opened_at >= (uint64_t)o.settle_ms * 1000000ull) {
            measuring = 1;
            t_measure = now;
            t_end = now + (uint64_t)o.seconds * 1000000000ull;
            for (int i = 0; i < o.conns; i++)
                if (cs[i].state == S_OPEN) {
                    fill_window(&cs[i]);
                    flush_out(&cs[i]);
                }
            started = n_open;
        }
        if (o.mode == M_IDLE && ready_printed) {
            struct pollfd pf = { .fd = 0, .events = POLLIN };
            if (poll(&pf, 1, 0) == 1) {
                char b[64];
                if (read(0, b, sizeof b) <= 0)
                    stop = 1;
            }
        }
        if (t_end && now >= t_end)
            stop = 1;
        if (stop)
            break;
    }
    double secs = t_end ? (double)(now_ns() - t_measure) / 1e9 : 0;
    if (o.mode == M_IDLE) {
        printf("open=%llu closed_by_server=%llu errors=%llu\n", (unsigned long long)n_open,
               (unsigned long long)n_closed_by_server, (unsigned long long)n_errors);
    } else if (o.mode == M_HANDSHAKE) {
        printf("handshakes=%llu secs=%.3f rate=%.1f connect_errors=%llu upgrade_errors=%llu "
               "errors=%llu\n",
               (unsigned long long)n_handshakes, secs, (double)n_handshakes / secs,
               (unsigned long long)err_connect, (unsigned long long)err_upgrade,
               (unsigned long long)n_errors);
    } else {
        printf("conns=%llu open_at_end=%llu msgs=%llu secs=%.3f rate=%.1f p50_us=%.0f "
               "p99_us=%.0f p999_us=%.0f errors=%llu closed_by_server=%llu\n",
               (unsigned long long)started, (unsigned long long)n_open,
               (unsigned long long)n_msgs, secs, secs > 0 ? (double)n_msgs / secs : 0,
               percentile(0.50), percentile(0.99), percentile(0.999),
               (unsigned long long)(n_errors + err_connect + err_upgrade + err_proto),
               (unsigned long long)n_closed_by_server);
    }
    for (int i = 0; i < o.conns; i++)
        conn_close(&cs[i]);
    return 0;
}
