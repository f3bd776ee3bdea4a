/*
 * keyword-filter: drops or masks inbound messages containing listed words
 * (sensitive words in customer chats; Chinese is the main case).
 *
 *   [[filter]]
 *   type = "keyword-filter"
 *   name = "sensitive"
 *   words = ["傻瓜", "退款骗局", "spam"]
 *   action = "mask"              # or "drop" (default)
 *   parts = ["text", "link.title"]   # optional; default ["text"]
 *
 * "drop" refuses the message: emit completes with KFG_EDROPPED and the
 * reason below. "mask" replaces every occurrence with one '*' per UTF-8
 * character ("你是傻瓜吗" -> "你是**吗") and passes the message on. Matching
 * is case-insensitive for ASCII letters only.
 *
 * `parts` names what is inspected: "kind" means the field "text" of every
 * part of that kind, "kind.field" another field (e.g. "link.title").
 *
 * Threading: filter() runs on whichever loop called emit, on several loops
 * at once. Everything it reads (the automaton, the part list, metric
 * handles) is built in init and never written again, so it needs no lock;
 * metric bumps are lock-free in the host. The matching itself is in match.c
 * (Aho–Corasick, one pass over the text whatever the number of words).
 */
#include <kfgate/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "match.h"

static const struct kfg_config_key kwf_config[] = {
    {"words", KFG_CFG_STRING_ARRAY, KFG_CFG_REQUIRED, NULL,
     "words to look for (UTF-8; ASCII letters match in any case)"},
    {"action", KFG_CFG_STRING, 0, "drop",
     "\"drop\" refuses the message, \"mask\" replaces each word with '*'"},
    {"parts", KFG_CFG_STRING_ARRAY, 0, NULL,
     "part kinds to inspect, \"kind\" or \"kind.field\"; default [\"text\"]"},
    {NULL, 0, 0, NULL, NULL},
};

/* One inspected (part kind, field) pair. */
struct target {
    char *kind;
    const char *field;   /* points into kind's allocation, or "text" */
};

enum { OUT_PASSED, OUT_DROPPED, OUT_MASKED, OUT_ERROR, OUT__COUNT };

static const char *const outcome_label[OUT__COUNT] = {
    [OUT_PASSED] = "outcome=\"passed\"",
    [OUT_DROPPED] = "outcome=\"dropped\"",
    [OUT_MASKED] = "outcome=\"masked\"",
    [OUT_ERROR] = "outcome=\"error\"",
};

struct kwf {
    struct kfg_instance *ins;
    const struct kfg_host *host;
    const char *name;
    struct kwm *matcher;
    int mask;
    struct target *targets;
    size_t ntargets;
    struct kfg_metric *messages[OUT__COUNT];
};

static int add_target(struct kwf *f, const char *spec)
{
    const char *dot = strchr(spec, '.');
    if (spec[0] == '\0' || dot == spec || (dot && dot[1] == '\0')) {
        f->host->log(f->ins, NULL, KFG_LOG_ERROR,
                     "parts: \"%s\" is not \"kind\" or \"kind.field\"", spec);
        return KFG_EINVAL;
    }
    char *kind = strdup(spec);
    if (!kind) return KFG_ENOMEM;
    const char *field = "text";
    if (dot) {
        kind[dot - spec] = '\0';
        field = kind + (dot - spec) + 1;
    }
    f->targets[f->ntargets++] = (struct target){kind, field};
    return KFG_OK;
}

static void kwf_destroy(void *ctx)
{
    struct kwf *f = ctx;
    for (size_t i = 0; i < f->ntargets; i++) free(f->targets[i].kind);
    free(f->targets);
    kwm_free(f->matcher);
    f->targets = NULL;
    f->ntargets = 0;
    f->matcher = NULL;
}

static int kwf_init(struct kfg_instance *ins, const struct kfg_host *host, void *ctx)
{
    struct kwf *f = ctx;
    f->ins = ins;
    f->host = host;
    f->name = host->instance_name(ins);

    const char *action = host->config_string(ins, "action");
    if (strcmp(action, "drop") == 0) {
        f->mask = 0;
    } else if (strcmp(action, "mask") == 0) {
        f->mask = 1;
    } else {
        host->log(ins, NULL, KFG_LOG_ERROR, "action must be \"drop\" or \"mask\", not \"%s\"",
                  action);
        return KFG_EINVAL;
    }

    /* The host does not call destroy when init fails, so every error path
     * below cleans up through kwf_destroy itself. */
    int rc = KFG_OK;
    size_t nparts = host->config_array_len(ins, "parts");
    f->targets = calloc(nparts ? nparts : 1, sizeof *f->targets);
    if (!f->targets) return KFG_ENOMEM;
    if (nparts == 0) rc = add_target(f, "text");
    for (size_t i = 0; rc == KFG_OK && i < nparts; i++)
        rc = add_target(f, host->config_array_string(ins, "parts", i));
    if (rc != KFG_OK) goto fail;

    size_t nwords = host->config_array_len(ins, "words");
    if (nwords == 0) {
        host->log(ins, NULL, KFG_LOG_ERROR, "words is empty");
        rc = KFG_EINVAL;
        goto fail;
    }
    f->matcher = kwm_new();
    if (!f->matcher) {
        rc = KFG_ENOMEM;
        goto fail;
    }
    for (size_t i = 0; i < nwords; i++) {
        const char *w = host->config_array_string(ins, "words", i);
        int r = kwm_add(f->matcher, w, strlen(w));
        if (r == KWM_EINVAL) {
            host->log(ins, NULL, KFG_LOG_ERROR, "words[%zu] is empty or not valid UTF-8", i);
            rc = KFG_EINVAL;
            goto fail;
        }
        if (r != KWM_OK) {
            rc = KFG_ENOMEM;
            goto fail;
        }
    }
    if (kwm_build(f->matcher) != KWM_OK) {
        rc = KFG_ENOMEM;
        goto fail;
    }

    for (int o = 0; o < OUT__COUNT; o++) {
        f->messages[o] = host->metric_counter(ins, "keyword_filter_messages_total",
                                              "Messages inspected, by outcome.",
                                              outcome_label[o]);
        if (!f->messages[o]) {
            rc = KFG_ENOMEM;
            goto fail;
        }
    }
    host->log(ins, NULL, KFG_LOG_INFO, "%zu words, %zu states, action %s", nwords,
              kwm_states(f->matcher), f->mask ? "mask" : "drop");
    return KFG_OK;

fail:
    kwf_destroy(f);
    return rc;
}

static int kwf_filter(void *ctx, struct kfg_msg *m, char *reason, size_t reason_cap)
{
    struct kwf *f = ctx;
    const struct kfg_host *h = f->host;
    int masked = 0;
    size_t nparts = h->msg_part_count(m);

    for (size_t i = 0; i < nparts; i++) {
        const char *kind = h->msg_part_kind(m, i);
        if (!kind) continue;
        for (size_t t = 0; t < f->ntargets; t++) {
            if (strcmp(kind, f->targets[t].kind) != 0) continue;
            const char *field = f->targets[t].field;
            struct kfg_str s = h->msg_part_get(m, i, field);   /* borrowed */
            if (!s.ptr || s.len == 0) continue;

            if (!f->mask) {
                struct kwm_hit hit;
                if (!kwm_find(f->matcher, s.ptr, s.len, &hit)) continue;
                /* The word itself stays out of logs and of the reason (which
                 * may be shown to the sender); its index is enough to debug. */
                h->log(f->ins, NULL, KFG_LOG_DEBUG, "drop: words[%zu] in part %zu (%s.%s)",
                       hit.word, i, kind, field);
                snprintf(reason, reason_cap, "sensitive word (%s)", f->name);
                h->metric_add(f->messages[OUT_DROPPED], 1);
                return KFG_EDROPPED;
            }

            char *out;
            size_t out_len;
            long r = kwm_mask(f->matcher, s.ptr, s.len, '*', &out, &out_len);
            int rc = r < 0 ? KFG_ENOMEM : KFG_OK;
            if (r > 0) {
                /* s is invalid from here on: the message changes. */
                rc = h->msg_part_set(m, i, field, out, out_len);
                free(out);
                masked = 1;
            }
            if (rc != KFG_OK) {
                /* Fail closed: a message we could not mask must not pass. */
                h->log(f->ins, NULL, KFG_LOG_WARN, "mask failed in part %zu: %d", i, rc);
                h->metric_add(f->messages[OUT_ERROR], 1);
                return rc;
            }
        }
    }
    h->metric_add(f->messages[masked ? OUT_MASKED : OUT_PASSED], 1);
    return KFG_OK;
}

static int kwf_health(void *ctx, char *detail, size_t cap)
{
    struct kwf *f = ctx;
    if (!f->matcher) {
        snprintf(detail, cap, "no matcher");
        return KFG_EFAIL;
    }
    return KFG_OK;
}

KFG_PLUGIN_EXPORT = {
    KFG_PLUGIN_HEADER,
    .kind = KFG_KIND_FILTER,
    .name = "keyword-filter",
    .version = "1.0.0",
    .description = "Drops or masks messages containing listed (sensitive) words",
    .config = kwf_config,
    .ctx_size = sizeof(struct kwf),
    .init = kwf_init,
    .destroy = kwf_destroy,
    .health = kwf_health,
    .filter = kwf_filter,
};
