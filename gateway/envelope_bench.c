/*
 * Micro-benchmark of the per-message core work every adapter pays: build a
 * typical inbound message (12 fields, one text part) with the msg_* calls
 * and encode it as an envelope. Not a test: prints ns per message.
 *     build/envelope_bench [N]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "envelope.h"
#include "msg.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct kfg_msg *build(int i)
{
    char id[32];
    snprintf(id, sizeof id, "%d", 1000000 + i);
    struct kfg_msg *m = kfg_msg_new("message", "acme", "wechat", "wx-main");
    kfg_msg_set(m, "conversation.id", "oUser123456789abcdefghijklmn", 28);
    kfg_msg_set(m, "conversation.kind", "direct", 6);
    kfg_msg_set(m, "sender.id", "oUser123456789abcdefghijklmn", 28);
    kfg_msg_set(m, "recipient.id", "gh_1234567890ab", 15);
    kfg_msg_set(m, "idem", id, strlen(id));
    kfg_msg_set(m, "channel_msg_id", id, strlen(id));
    kfg_msg_set_int(m, "ts.channel", 1700000000000LL);
    kfg_msg_set(m, "channel_data.msg_type", "text", 4);
    kfg_msg_set(m, "channel_data.agent_id", "1000002", 7);
    kfg_msg_set(m, "trace.traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", 55);
    int p = kfg_msg_part_add(m, "text");
    kfg_msg_part_set(m, (size_t)p, "text", "hello, is anybody there?", 24);
    return m;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 200000;
    struct kfg_buf out = { 0 };
    size_t bytes = 0;
    double t0 = now_s(), t_build = 0, t_enc = 0;
    for (int i = 0; i < n; i++) {
        double a = now_s();
        struct kfg_msg *m = build(i);
        kfg_msg_accept(m, (uint64_t)i + 1);
        double b = now_s();
        kfg_buf_reset(&out);
        if (kfg_env_encode(m, &out) != 0)
            return 1;
        double c = now_s();
        bytes += out.len;
        t_build += b - a;
        t_enc += c - b;
        kfg_msg_free(m);
    }
    double el = now_s() - t0;
    printf("envelope_bench: %d msgs, %.0f ns/msg total (build %.0f, encode %.0f), "
           "%.0f B/envelope, %.0f msgs/s\n", n, el / n * 1e9, t_build / n * 1e9,
           t_enc / n * 1e9, (double)bytes / n, n / el);
    kfg_buf_free(&out);
    return 0;
}
