/*
 * kfgate-send: read outbound envelopes as JSON lines on stdin (spec/
 * envelope.md, dir "out"), convert each to msgpack, send it to the node's
 * outbound endpoint and print its answer as one JSON line on stdout:
 *   {"line":1,"ok":true,"id":"0190...","seq":42,"duplicate":false}
 *   {"line":2,"ok":false,"error":"invalid","reason":"field 'instance': missing"}
 * Lines that do not convert get {"ok":false,"error":"invalid",...} without
 * being sent; a transport failure gets "error":"transport" (outcome unknown:
 * resend only envelopes that carry `idem`). Blank lines are skipped.
 * Exit status: 0 all accepted, 1 any rejected, 2 any transport failure.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "envelope.h"
#include "kfgate/bus.h"
#include "tool_exit.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: kfgate-send [--outbound URL] [--timeout MS] < envelopes.jsonl\n"
               "  --outbound URL  default " KFG_BUS_DEFAULT_OUTBOUND "\n"
               "  --timeout MS    wait for each answer (default 5000)\n");
}

static void answer(struct kfg_buf *b, unsigned long lineno, const struct kfg_bus_ack *a)
{
    kfg_buf_reset(b);
    kfg_buf_printf(b, "{\"line\":%lu,\"ok\":%s", lineno, a->ok ? "true" : "false");
    if (a->ok) {
        kfg_buf_puts(b, ",\"id\":");
        kfg_buf_json_str(b, a->id, strlen(a->id));
        kfg_buf_printf(b, ",\"seq\":%" PRIu64 ",\"duplicate\":%s", a->seq,
                       a->duplicate ? "true" : "false");
    } else {
        kfg_buf_puts(b, ",\"error\":");
        kfg_buf_json_str(b, a->error, strlen(a->error));
        kfg_buf_puts(b, ",\"reason\":");
        kfg_buf_json_str(b, a->reason, strlen(a->reason));
    }
    kfg_buf_puts(b, "}\n");
    fwrite(b->p, 1, b->len, stdout);
    fflush(stdout);
}

static void local_error(struct kfg_buf *b, unsigned long lineno, const char *error,
                        const char *reason)
{
    struct kfg_bus_ack a = { 0 };
    snprintf(a.error, sizeof a.error, "%s", error);
    snprintf(a.reason, sizeof a.reason, "%s", reason);
    answer(b, lineno, &a);
}

static int blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return 0;
    return 1;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "outbound", required_argument, NULL, 'o' },
        { "timeout", required_argument, NULL, 'T' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct kfg_bus_opts o = { 0 };
    int c;
    while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'o': o.outbound_url = optarg; break;
        case 'T': {
            char *end;
            long t = strtol(optarg, &end, 10);
            if (*end || end == optarg || t <= 0 || t > 3600000) {
                usage(stderr);
                return 2;
            }
            o.request_timeout_ms = (int)t;
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    struct kfg_bus *bus;
    int rv = kfg_bus_open(&bus, &o);
    if (rv != 0) {
        fprintf(stderr, "kfgate-send: %s\n", kfg_bus_strerror(rv));
        return 2;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    unsigned long lineno = 0;
    int status = 0;
    struct kfg_buf out = { 0 }, env = { 0 };
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (blank(line, (size_t)n))
            continue;
        char reason[256] = "";
        kfg_buf_reset(&env);
        if (kfg_env_from_json(line, (size_t)n, &env, reason, sizeof reason) != 0 || env.oom) {
            local_error(&out, lineno, "invalid", reason[0] ? reason : "not a valid envelope");
            if (status < 1)
                status = 1;
            continue;
        }
        struct kfg_bus_ack a;
        rv = kfg_bus_send(bus, env.p, env.len, &a, 0);
        if (rv != 0) {
            char why[128];
            snprintf(why, sizeof why, "%s (outcome unknown)", kfg_bus_strerror(rv));
            local_error(&out, lineno, "transport", why);
            status = 2;
            continue;
        }
        answer(&out, lineno, &a);
        if (!a.ok && status < 1)
            status = 1;
    }
    free(line);
    kfg_buf_free(&out);
    kfg_buf_free(&env);
    tool_exit_guard(status);
    kfg_bus_close(bus);
    return status;
}
