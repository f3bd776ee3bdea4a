/*
 * kfgate-tail: print a kfgate node's feed as JSON lines, one record a line:
 *   {"seq":7,"topic":"acme/wechat/wx","envelope":{...}}
 * A range lost to journal retention prints
 *   {"lost":{"from":1,"to":3},"topic":"acme/"}
 * (and a warning on stderr). Catch-up, gap filling and the heartbeat check
 * are kfg_bus_sub's (spec/bus.md section 2): every record once, in seq order
 * per topic, with --from replaying history first and then following live
 * with no gap and no duplicate.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "envelope.h"
#include "kfgate/bus.h"
#include "tool_exit.h"

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kfgate-tail [--from SEQ] [--topic PREFIX] [--count N] [--feed URL]\n"
            "                   [--idle MS] [--replay URL] [--timeout MS] [--stats]\n"
            "                   [--recvbuf N] [--slow-us US]\n"
            "  --from SEQ      replay from SEQ (1: everything kept), then follow;\n"
            "                  default: follow from now\n"
            "  --topic PREFIX  only topics starting with PREFIX (tenant/channel/instance)\n"
            "  --count N       exit after N records\n"
            "  --idle MS       exit 0 after MS without a record (default: never)\n"
            "  --feed URL      default " KFG_BUS_DEFAULT_FEED "\n"
            "  --replay URL    default " KFG_BUS_DEFAULT_REPLAY "\n"
            "  --timeout MS    replay request timeout (default 5000)\n"
            "  --stats         counters on stderr at exit\n"
            "  --recvbuf N     feed receive queue, messages (1..8192, default 1024)\n"
            "  --slow-us US    sleep US microseconds after each record (tests: make\n"
            "                  the feed queue overflow so gaps are filled by replay)\n");
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int parse_u64(const char *s, uint64_t *v)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-')
        return -1;
    *v = x;
    return 0;
}

static void print_record(const struct kfg_bus_rec *r, struct kfg_buf *b, struct kfg_buf *env)
{
    kfg_buf_reset(b);
    kfg_buf_reset(env);
    if (r->kind == KFG_BUS_LOSS) {
        kfg_buf_printf(b, "{\"lost\":{\"from\":%" PRIu64 ",\"to\":%" PRIu64 "},\"topic\":",
                       r->seq, r->seq_to);
        kfg_buf_json_str(b, r->topic, r->topic_len);
        kfg_buf_puts(b, "}\n");
        fprintf(stderr, "kfgate-tail: records %" PRIu64 "..%" PRIu64
                        " are gone from the journal (retention)\n", r->seq, r->seq_to);
    } else {
        kfg_buf_printf(b, "{\"seq\":%" PRIu64 ",\"topic\":", r->seq);
        kfg_buf_json_str(b, r->topic, r->topic_len);
        if (kfg_env_to_json(r->env, r->env_len, env) == 0 && !env->oom && env->len) {
            kfg_buf_puts(b, ",\"envelope\":");
            kfg_buf_append(b, env->p, env->len);
            kfg_buf_puts(b, "}\n");
        } else {
            kfg_buf_printf(b, ",\"envelope\":null,\"error\":\"undecodable envelope (%zu bytes)\"}\n",
                           r->env_len);
        }
    }
    fwrite(b->p, 1, b->len, stdout);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "from", required_argument, NULL, 'f' },
        { "topic", required_argument, NULL, 't' },
        { "count", required_argument, NULL, 'n' },
        { "idle", required_argument, NULL, 'i' },
        { "feed", required_argument, NULL, 'F' },
        { "replay", required_argument, NULL, 'R' },
        { "timeout", required_argument, NULL, 'T' },
        { "stats", no_argument, NULL, 's' },
        { "recvbuf", required_argument, NULL, 'B' },
        { "slow-us", required_argument, NULL, 'S' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct kfg_bus_opts o = { 0 };
    const char *prefix = "";
    uint64_t from = 0, count = 0, idle = 0, timeout = 0, recvbuf = 0, slow_us = 0;
    int have_from = 0, want_stats = 0, c;
    while ((c = getopt_long(argc, argv, "f:t:n:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'f':
            if (parse_u64(optarg, &from) < 0)
                goto bad;
            have_from = 1;
            break;
        case 't': prefix = optarg; break;
        case 'n':
            if (parse_u64(optarg, &count) < 0 || count == 0)
                goto bad;
            break;
        case 'i':
            if (parse_u64(optarg, &idle) < 0 || idle == 0 || idle > 86400000)
                goto bad;
            break;
        case 'F': o.feed_url = optarg; break;
        case 'R': o.replay_url = optarg; break;
        case 'T':
            if (parse_u64(optarg, &timeout) < 0 || timeout == 0 || timeout > 3600000)
                goto bad;
            o.request_timeout_ms = (int)timeout;
            break;
        case 's': want_stats = 1; break;
        case 'B':
            if (parse_u64(optarg, &recvbuf) < 0 || recvbuf == 0 || recvbuf > 8192)
                goto bad;
            o.recvbuf = (int)recvbuf;
            break;
        case 'S':
            if (parse_u64(optarg, &slow_us) < 0 || slow_us > 10000000)
                goto bad;
            break;
        case 'h': usage(stdout); return 0;
        default: goto bad;
        }
    }
    if (optind != argc)
        goto bad;

    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct kfg_bus *bus;
    struct kfg_bus_sub *sub;
    int rv = kfg_bus_open(&bus, &o);
    if (rv != 0) {
        fprintf(stderr, "kfgate-tail: %s\n", kfg_bus_strerror(rv));
        return 1;
    }
    /* --from SEQ: the first seq wanted, so the cursor (last processed) is SEQ - 1. */
    rv = kfg_bus_sub(bus, prefix, have_from ? (from ? from - 1 : 0) : KFG_BUS_LIVE, &sub);
    if (rv != 0) {
        fprintf(stderr, "kfgate-tail: subscribe: %s\n", kfg_bus_strerror(rv));
        kfg_bus_close(bus);
        return 1;
    }
    struct kfg_buf line = { 0 }, env = { 0 };
    uint64_t n = 0;
    int status = 0, last_err = 0;
    int64_t active = now_ms();
    while (!stop && (!count || n < count)) {
        struct kfg_bus_rec r;
        rv = kfg_bus_next(sub, &r, 250);
        if (rv != 0 && idle && (uint64_t)(now_ms() - active) >= idle) {
            if (rv != KFG_BUS_ETIMEDOUT) {
                fprintf(stderr, "kfgate-tail: %s: %s\n", kfg_bus_strerror(rv),
                        kfg_bus_sub_errmsg(sub));
                status = 1;
            }
            break;
        }
        if (rv == KFG_BUS_ETIMEDOUT)
            continue;
        if (rv != 0) {
            /* The state is intact: report once and keep trying. */
            if (rv != last_err)
                fprintf(stderr, "kfgate-tail: %s: %s (retrying)\n", kfg_bus_strerror(rv),
                        kfg_bus_sub_errmsg(sub));
            last_err = rv;
            continue;
        }
        last_err = 0;
        active = now_ms();
        print_record(&r, &line, &env);
        if (ferror(stdout)) {
            status = errno == EPIPE ? 0 : 1;
            break;
        }
        if (r.kind == KFG_BUS_RECORD)
            n++;
        if (slow_us)
            usleep((useconds_t)slow_us);
    }
    if (want_stats) {
        struct kfg_bus_stats st;
        kfg_bus_sub_stats(sub, &st);
        fprintf(stderr,
                "kfgate-tail: delivered %" PRIu64 " (feed %" PRIu64 ", replayed %" PRIu64
                "), gaps %" PRIu64 " (by heartbeat %" PRIu64 ", %" PRIu64
                " records), duplicates %" PRIu64 ", lost %" PRIu64 ", bad messages %" PRIu64
                ", replay requests %" PRIu64 ", heartbeats %" PRIu64 "\n",
                st.delivered, st.from_feed, st.replayed, st.gaps, st.gaps_by_heartbeat,
                st.gap_records, st.duplicates, st.lost, st.bad_messages, st.replay_requests,
                st.heartbeats);
    }
    kfg_buf_free(&line);
    kfg_buf_free(&env);
    tool_exit_guard(status);
    kfg_bus_sub_free(sub);
    kfg_bus_close(bus);
    return status;
bad:
    usage(stderr);
    return 2;
}
