/*
 * kfgate-echo: the smallest possible core, as an example of kfgate/bus.h.
 * It follows the feed and answers every inbound text message (dir "in")
 * with an outbound envelope on the same instance and conversation whose text
 * is "echo: <text>" and whose reply_to is the inbound id. Each answer
 * carries idem "echo:<inbound id>", so a resend after a lost answer, or a
 * restart with --from over records already answered, delivers nothing twice.
 * One JSON line per answer on stdout:
 *   {"in_seq":7,"in_id":"0190...","ok":true,"id":"0190...","seq":8,"duplicate":false}
 *
 * The envelope is read and written through its JSON form (kfg_env_to_json /
 * kfg_env_from_json, spec/envelope.md), so this file names only JSON keys.
 */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "buf.h"
#include "envelope.h"
#include "kfgate/bus.h"
#include "kfgate/envelope.h"
#include "tool_exit.h"

#define SEND_TRIES 5

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: kfgate-echo [--topic PREFIX] [--from SEQ] [--count N] [--feed URL]\n"
               "                   [--replay URL] [--outbound URL] [--timeout MS]\n"
               "  --topic PREFIX  only conversations under PREFIX (tenant/channel/instance)\n"
               "  --from SEQ      also answer history from SEQ (default: from now)\n"
               "  --count N       exit after N answers\n");
}

static const char *jstr(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* The text of an inbound text message: its first part of kind "text". */
static const char *text_of(const json_t *env)
{
    const json_t *parts = json_object_get(env, KFG_ENV_PARTS);
    size_t i;
    const json_t *p;
    json_array_foreach(parts, i, p) {
        const char *kind = jstr(p, KFG_ENV_P_KIND);
        if (kind && strcmp(kind, KFG_ENV_KIND_TEXT) == 0 && jstr(p, KFG_ENV_P_TEXT))
            return jstr(p, KFG_ENV_P_TEXT);
    }
    return NULL;
}

/* The outbound answer to env as JSON, or NULL when env is not an inbound
 * text message. */
static json_t *reply_for(const json_t *env)
{
    const char *dir = jstr(env, KFG_ENV_DIR), *type = jstr(env, KFG_ENV_TYPE);
    const char *id = jstr(env, KFG_ENV_ID), *text = text_of(env);
    if (!dir || strcmp(dir, KFG_ENV_DIR_IN) != 0 || !type ||
        strcmp(type, KFG_ENV_TYPE_MESSAGE) != 0 || !text || !id)
        return NULL;
    size_t tl = strlen(text);
    char *echo = malloc(tl + 7);
    if (!echo)
        return NULL;
    memcpy(echo, "echo: ", 6);
    memcpy(echo + 6, text, tl + 1);
    char idem[128];
    snprintf(idem, sizeof idem, "echo:%s", id);
    json_t *out = json_object();
    json_object_set_new(out, KFG_ENV_V, json_integer(KFG_ENV_VERSION));
    json_object_set_new(out, KFG_ENV_TYPE, json_string(KFG_ENV_TYPE_MESSAGE));
    json_object_set_new(out, KFG_ENV_DIR, json_string(KFG_ENV_DIR_OUT));
    /* Same instance and conversation (the whole object: id, kind, thread). */
    static const char *const same[] = { KFG_ENV_TENANT, KFG_ENV_CHANNEL, KFG_ENV_INSTANCE,
                                        KFG_ENV_CONVERSATION };
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        json_t *v = json_object_get(env, same[i]);
        if (v)
            json_object_set(out, same[i], v);
    }
    json_object_set_new(out, KFG_ENV_REPLY_TO, json_string(id));
    json_object_set_new(out, KFG_ENV_IDEM, json_string(idem));
    json_t *part = json_object();
    json_object_set_new(part, KFG_ENV_P_KIND, json_string(KFG_ENV_KIND_TEXT));
    json_object_set_new(part, KFG_ENV_P_TEXT, json_string(echo));
    json_t *parts = json_array();
    json_array_append_new(parts, part);
    json_object_set_new(out, KFG_ENV_PARTS, parts);
    free(echo);
    return out;
}

static void print_answer(uint64_t in_seq, const char *in_id, int rv, const struct kfg_bus_ack *a,
                         const char *local)
{
    struct kfg_buf b = { 0 };
    kfg_buf_printf(&b, "{\"in_seq\":%" PRIu64 ",\"in_id\":", in_seq);
    kfg_buf_json_str(&b, in_id, strlen(in_id));
    if (local) {
        kfg_buf_puts(&b, ",\"ok\":false,\"error\":\"invalid\",\"reason\":");
        kfg_buf_json_str(&b, local, strlen(local));
    } else if (rv != 0) {
        kfg_buf_puts(&b, ",\"ok\":false,\"error\":\"transport\",\"reason\":");
        kfg_buf_json_str(&b, kfg_bus_strerror(rv), strlen(kfg_bus_strerror(rv)));
    } else if (a->ok) {
        kfg_buf_puts(&b, ",\"ok\":true,\"id\":");
        kfg_buf_json_str(&b, a->id, strlen(a->id));
        kfg_buf_printf(&b, ",\"seq\":%" PRIu64 ",\"duplicate\":%s", a->seq,
                       a->duplicate ? "true" : "false");
    } else {
        kfg_buf_puts(&b, ",\"ok\":false,\"error\":");
        kfg_buf_json_str(&b, a->error, strlen(a->error));
        kfg_buf_puts(&b, ",\"reason\":");
        kfg_buf_json_str(&b, a->reason, strlen(a->reason));
    }
    kfg_buf_puts(&b, "}\n");
    fwrite(b.p, 1, b.len, stdout);
    fflush(stdout);
    kfg_buf_free(&b);
}

/* 1 when an answer was sent (or refused), 0 when rec needs none. */
static int handle(struct kfg_bus *bus, const struct kfg_bus_rec *rec, struct kfg_buf *js,
                  struct kfg_buf *mp)
{
    kfg_buf_reset(js);
    if (kfg_env_to_json(rec->env, rec->env_len, js) != 0 || js->oom || !js->len)
        return 0;
    json_t *env = json_loadb(js->p, js->len, 0, NULL);
    if (!env)
        return 0;
    json_t *out = reply_for(env);
    if (!out) {
        json_decref(env);
        return 0;
    }
    const char *in_id = jstr(env, KFG_ENV_ID);
    char *text = json_dumps(out, JSON_COMPACT);
    json_decref(out);
    char reason[256] = "";
    kfg_buf_reset(mp);
    if (!text || kfg_env_from_json(text, strlen(text), mp, reason, sizeof reason) != 0 ||
        mp->oom) {
        print_answer(rec->seq, in_id, 0, NULL, reason[0] ? reason : "cannot encode the answer");
        free(text);
        json_decref(env);
        return 1;
    }
    free(text);
    struct kfg_bus_ack a;
    int rv = KFG_BUS_ECONN;
    /* idem makes resending after a lost answer safe. */
    for (int i = 0; i < SEND_TRIES && !stop; i++) {
        rv = kfg_bus_send(bus, mp->p, mp->len, &a, 0);
        if (rv == 0 && !(!a.ok && strcmp(a.error, "busy") == 0))
            break;
        if (i + 1 < SEND_TRIES)
            usleep(100000u << i);
    }
    print_answer(rec->seq, in_id, rv, &a, NULL);
    json_decref(env);
    return 1;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "topic", required_argument, NULL, 't' },
        { "from", required_argument, NULL, 'f' },
        { "count", required_argument, NULL, 'n' },
        { "feed", required_argument, NULL, 'F' },
        { "replay", required_argument, NULL, 'R' },
        { "outbound", required_argument, NULL, 'O' },
        { "timeout", required_argument, NULL, 'T' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct kfg_bus_opts o = { 0 };
    const char *prefix = "";
    unsigned long long from = 0, count = 0;
    int have_from = 0, c;
    char *end;
    while ((c = getopt_long(argc, argv, "t:f:n:h", longopts, NULL)) != -1) {
        switch (c) {
        case 't': prefix = optarg; break;
        case 'f':
            from = strtoull(optarg, &end, 10);
            if (*end || end == optarg || *optarg == '-')
                goto bad;
            have_from = 1;
            break;
        case 'n':
            count = strtoull(optarg, &end, 10);
            if (*end || end == optarg || *optarg == '-' || !count)
                goto bad;
            break;
        case 'F': o.feed_url = optarg; break;
        case 'R': o.replay_url = optarg; break;
        case 'O': o.outbound_url = optarg; break;
        case 'T': {
            long t = strtol(optarg, &end, 10);
            if (*end || end == optarg || t <= 0 || t > 3600000)
                goto bad;
            o.request_timeout_ms = (int)t;
            break;
        }
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
    if (rv == 0)
        rv = kfg_bus_sub(bus, prefix, have_from ? (from ? from - 1 : 0) : KFG_BUS_LIVE, &sub);
    if (rv != 0) {
        fprintf(stderr, "kfgate-echo: %s\n", kfg_bus_strerror(rv));
        kfg_bus_close(bus);
        return 1;
    }
    struct kfg_buf js = { 0 }, mp = { 0 };
    unsigned long long answered = 0;
    int last_err = 0;
    while (!stop && (!count || answered < count)) {
        struct kfg_bus_rec r;
        rv = kfg_bus_next(sub, &r, 250);
        if (rv == KFG_BUS_ETIMEDOUT)
            continue;
        if (rv != 0) {
            if (rv != last_err)
                fprintf(stderr, "kfgate-echo: %s: %s (retrying)\n", kfg_bus_strerror(rv),
                        kfg_bus_sub_errmsg(sub));
            last_err = rv;
            continue;
        }
        last_err = 0;
        if (r.kind == KFG_BUS_LOSS) {
            fprintf(stderr, "kfgate-echo: records %" PRIu64 "..%" PRIu64 " were lost to retention\n",
                    r.seq, r.seq_to);
            continue;
        }
        answered += (unsigned long long)handle(bus, &r, &js, &mp);
    }
    kfg_buf_free(&js);
    kfg_buf_free(&mp);
    tool_exit_guard(0);
    kfg_bus_sub_free(sub);
    kfg_bus_close(bus);
    return 0;
bad:
    usage(stderr);
    return 2;
}
