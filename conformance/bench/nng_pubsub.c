/* nng_pubsub: the raw NNG peer for the bus benchmark — pub0/sub0 with
 * messages of the envelope's size, one per NNG message, SENDBUF = RECVBUF =
 * 1024 as the gateway uses.
 *
 *   nng_pubsub pub URL COUNT BYTES     publish COUNT messages, then 200 "end"s
 *   nng_pubsub sub URL COUNT           receive until COUNT or "end" or 5 s idle;
 *                                      prints received/s, loss, p50/p99 latency
 * Each message starts with its CLOCK_MONOTONIC send time (ns, 8 bytes).
 * Build: cc -O2 nng_pubsub.c -lnng -o nng_pubsub */
#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>
#include <nng/protocol/pubsub0/sub.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void die(const char *what, int rv)
{
    fprintf(stderr, "nng_pubsub: %s: %s\n", what, nng_strerror(rv));
    exit(1);
}

int main(int argc, char **argv)
{
    nng_socket s;
    int rv;
    if (argc < 4) {
        fprintf(stderr, "usage: nng_pubsub pub URL COUNT BYTES | sub URL COUNT\n");
        return 2;
    }
    long count = atol(argv[3]);
    if (strcmp(argv[1], "pub") == 0 && argc == 5) {
        size_t bytes = (size_t)atol(argv[4]);
        if (bytes < 8)
            bytes = 8;
        if ((rv = nng_pub0_open(&s)) != 0)
            die("pub0_open", rv);
        nng_socket_set_int(s, NNG_OPT_SENDBUF, 1024);
        if ((rv = nng_listen(s, argv[2], NULL, 0)) != 0)
            die("listen", rv);
        sleep(1);    /* let the subscriber dial in */
        char *buf = calloc(1, bytes);
        for (long i = 0; i < count; i++) {
            uint64_t t = mono_ns();
            memcpy(buf, &t, 8);
            if ((rv = nng_send(s, buf, bytes, 0)) != 0)
                die("send", rv);
        }
        for (int i = 0; i < 200; i++) {
            nng_send(s, "end", 3, 0);
            usleep(1000);
        }
        sleep(1);
        free(buf);
        nng_close(s);
        return 0;
    }
    if (strcmp(argv[1], "sub") != 0)
        return 2;
    if ((rv = nng_sub0_open(&s)) != 0)
        die("sub0_open", rv);
    nng_socket_set_int(s, NNG_OPT_RECVBUF, 1024);
    nng_socket_set(s, NNG_OPT_SUB_SUBSCRIBE, "", 0);
    nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 5000);
    if ((rv = nng_dial(s, argv[2], NULL, NNG_FLAG_NONBLOCK)) != 0)
        die("dial", rv);
    uint64_t *lat = malloc(sizeof(*lat) * (size_t)count);
    long got = 0;
    uint64_t first = 0, last = 0;
    for (;;) {
        nng_msg *m;
        if (nng_recvmsg(s, &m, 0) != 0)
            break;
        uint64_t now = mono_ns();
        if (nng_msg_len(m) == 3 && memcmp(nng_msg_body(m), "end", 3) == 0) {
            nng_msg_free(m);
            break;
        }
        if (nng_msg_len(m) >= 8 && got < count) {
            uint64_t t;
            memcpy(&t, nng_msg_body(m), 8);
            lat[got++] = now - t;
            if (!first)
                first = now;
            last = now;
        }
        nng_msg_free(m);
        if (got == count)
            break;
    }
    qsort(lat, (size_t)got, sizeof(*lat), cmp_u64);
    double secs = got > 1 ? (double)(last - first) / 1e9 : 0;
    printf("received=%ld lost=%ld rate=%.0f p50_ms=%.3f p99_ms=%.3f\n", got, count - got,
           secs > 0 ? (double)got / secs : 0, got ? (double)lat[got / 2] / 1e6 : 0,
           got ? (double)lat[(size_t)((double)got * 0.99)] / 1e6 : 0);
    fflush(stdout);
    /* No nng_close: on Debian's 1.5.2 closing a socket whose peer still
     * sends can hang (nng-notes.md); the process exit releases it. */
    _exit(0);
}
