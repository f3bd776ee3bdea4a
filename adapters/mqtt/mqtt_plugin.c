/*
 * kfgate MQTT adapter: joins a broker (Mosquitto, EMQX, ...) as one MQTT
 * 3.1.1 or 5 client per instance, brings device messages onto the bus and
 * publishes the core's answers back. spec/mqtt.md is the operator's and
 * the core's contract (config, mapping, guarantees, receipts).
 *
 * The client is libmosquitto driven by the gateway's control loop: its
 * socket is registered with libevent (read always, write while the library
 * has output), mosquitto_loop_misc runs on a 1 s timer for keepalive, and
 * there is no library thread. Connecting is asynchronous, so a broker that
 * is down never blocks the gateway; reconnects back off with jitter.
 *
 * ACK AFTER COMMIT. libmosquitto 2.0 queues the PUBACK (QoS 1) / PUBREC
 * (QoS 2) of an inbound PUBLISH before calling on_message, and gives no API
 * to defer it. It writes queued packets only from mosquitto_loop_write when
 * the handle is marked threaded (mosquitto_threaded_set), so this adapter
 * marks it and holds the socket's output while any QoS > 0 message it
 * handed to the gateway is not yet journaled; it also stops reading then,
 * so no acknowledgement of a later message can slip out with the batch.
 * When the journal has committed them all, the held PUBACKs go out
 * together. An emit that fails after the fact drops the connection
 * without writing, so the broker redelivers. The exact guarantee and its
 * one remaining window (QoS 2's PUBREC) are in spec/mqtt.md.
 *
 * Everything here runs on the control loop: init, start, stop, deliver,
 * the socket and timer callbacks and the emit completions.
 */
#include <kfgate/envelope.h>
#include <kfgate/plugin.h>

#include "mqtt.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <fcntl.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MQ_VERSION "0.1.0"
#define MQ_FILTERS_MAX 32
#define MQ_BROKERS_MAX 8
#define MQ_HASH 1024

static const struct kfg_config_key mq_config[] = {
    { "brokers", KFG_CFG_STRING_ARRAY, KFG_CFG_REQUIRED, NULL,
      "broker URLs, tried in turn: mqtt://host[:port] or mqtts://host[:port] (one scheme)" },
    { "client_id", KFG_CFG_STRING, 0, NULL,
      "MQTT client id (default kfgate-<instance>); fixed, so a persistent session resumes" },
    { "clean_session", KFG_CFG_BOOL, 0, "false",
      "false: persistent session (the broker queues QoS 1/2 messages while we are away)" },
    { "protocol", KFG_CFG_STRING, 0, "3.1.1", "\"3.1.1\" or \"5\"" },
    { "session_expiry_s", KFG_CFG_INT, 0, "86400",
      "MQTT 5, persistent session, mqtt://: how long the broker keeps it after a disconnect" },
    { "username", KFG_CFG_STRING, 0, NULL, "MQTT user name" },
    { "password", KFG_CFG_SECRET, 0, NULL, "MQTT password; \"env:NAME\" reads the environment" },
    { "tls_ca", KFG_CFG_STRING, 0, NULL,
      "PEM CA file for mqtts:// (default: the system's trust store)" },
    { "tls_cert", KFG_CFG_STRING, 0, NULL, "PEM client certificate (with tls_key)" },
    { "tls_key", KFG_CFG_STRING, 0, NULL, "PEM client key (with tls_cert)" },
    { "keepalive_s", KFG_CFG_INT, 0, "30", "MQTT keepalive in seconds (5..3600)" },
    { "connect_timeout_ms", KFG_CFG_INT, 0, "10000",
      "a connection without CONNACK after this long is dropped and retried" },
    { "reconnect_min_ms", KFG_CFG_INT, 0, "500", "first reconnect delay (then doubled)" },
    { "reconnect_max_ms", KFG_CFG_INT, 0, "30000", "largest reconnect delay" },
    { "subscribe", KFG_CFG_STRING_ARRAY, KFG_CFG_REQUIRED, NULL,
      "topic filters with captures: \"devices/{device}/up\" or "
      "\"a/{x}/{y} => conversation.id={x}; sender.id={y}\"" },
    { "qos", KFG_CFG_INT, 0, "1", "subscription QoS 0, 1 or 2" },
    { "conversation", KFG_CFG_STRING, 0, NULL,
      "template for conversation.id over the captures (default: the first capture)" },
    { "sender", KFG_CFG_STRING, 0, NULL,
      "template for sender.id over the captures (default: the first capture)" },
    { "format", KFG_CFG_STRING, 0, "json", "payload format: json, msgpack or raw" },
    { "json_text", KFG_CFG_STRING, 0, NULL, "JSON pointer to a text: a message with a text part" },
    { "json_event", KFG_CFG_STRING, 0, NULL, "JSON pointer to the event name" },
    { "json_value", KFG_CFG_STRING, 0, NULL,
      "JSON pointer to the event value (default: the whole payload)" },
    { "json_conversation", KFG_CFG_STRING, 0, NULL,
      "JSON pointer to conversation.id (wins over the topic)" },
    { "json_sender", KFG_CFG_STRING, 0, NULL, "JSON pointer to sender.id (wins over the topic)" },
    { "json_ts", KFG_CFG_STRING, 0, NULL, "JSON pointer to the device time, ms since the epoch" },
    { "json_fields", KFG_CFG_STRING_ARRAY, 0, NULL,
      "more fields: \"envelope.key=/json/pointer\"" },
    { "event_name", KFG_CFG_STRING, 0, "telemetry", "event part name when there is no text" },
    { "raw_ctype", KFG_CFG_STRING, 0, "application/octet-stream", "raw.ctype for format raw" },
    { "raw_text", KFG_CFG_BOOL, 0, "false",
      "format raw: a UTF-8 payload becomes a text message" },
    { "keep_raw", KFG_CFG_BOOL, 0, "false", "json/msgpack: keep the payload in raw.body too" },
    { "dedupe", KFG_CFG_STRING, 0, NULL,
      "idempotency key: \"correlation_data\" (MQTT 5) or a JSON pointer (\"/msg_id\")" },
    { "max_payload", KFG_CFG_INT, 0, "262144", "largest accepted payload in bytes" },
    { "max_text", KFG_CFG_INT, 0, "65536", "longest text part / event value in bytes" },
    { "bad_payload", KFG_CFG_STRING, 0, "event",
      "a payload that cannot be mapped: \"event\" (an invalid_payload event) or \"drop\"" },
    { "max_pending", KFG_CFG_INT, 0, "1000",
      "inbound messages handed to the gateway and not yet journaled; reading pauses above" },
    { "receive_maximum", KFG_CFG_INT, 0, "100", "MQTT 5 receive maximum (QoS 1/2 in flight to us)" },
    { "publish_topic", KFG_CFG_STRING, 0, NULL,
      "outbound topic template, e.g. \"devices/{device}/down\"" },
    { "publish_qos", KFG_CFG_INT, 0, "1", "outbound QoS 0, 1 or 2 (retain is always off)" },
    { "publish_format", KFG_CFG_STRING, 0, "json", "outbound payload: json or text" },
    { "outbound_queue", KFG_CFG_INT, 0, "1000",
      "outbound messages held while disconnected; beyond it they are retried by the gateway" },
    { "outbound_queue_ms", KFG_CFG_INT, 0, "30000",
      "longest wait for a connection before a delivery is handed back for retry" },
    { "publish_timeout_ms", KFG_CFG_INT, 0, "30000",
      "longest wait for the broker's PUBACK/PUBCOMP before the delivery is retried" },
    { NULL, 0, 0, NULL, NULL },
};

enum { IN_ACCEPTED, IN_DUPLICATE, IN_FILTERED, IN_INVALID, IN_UNMATCHED, IN_FAILED, IN__N };
static const char *const in_label[IN__N] = {
    "outcome=\"accepted\"", "outcome=\"duplicate\"", "outcome=\"filtered\"",
    "outcome=\"invalid\"", "outcome=\"unmatched\"", "outcome=\"failed\"",
};
enum { OUT_SENT, OUT_RETRY, OUT_FAILED, OUT__N };
static const char *const out_label[OUT__N] = {
    "outcome=\"sent\"", "outcome=\"retry\"", "outcome=\"failed\"",
};

struct mq;

/* One outbound delivery. topic and payload live in the same allocation. */
struct job {
    struct mq *q;
    struct kfg_delivery *d;
    int mid;
    int64_t t0;                     /* ms: queued or published */
    char *topic;
    char *payload;
    size_t plen;
    struct job *next, *prev;        /* the queue or the in-flight list */
    struct job *hnext;              /* mid hash chain (in flight only) */
};

/* One inbound message handed to the gateway. */
struct inmsg {
    struct mq *q;
    int qos;
    struct kfg_msg *m;              /* kept only while emit must be retried */
    struct inmsg *next;
};

struct mq {
    struct kfg_instance *ins;
    const struct kfg_host *host;
    struct event_base *base;
    const char *name;
    struct mosquitto *mosq;

    /* config */
    struct mqt_url brokers[MQ_BROKERS_MAX];
    size_t nbrokers, broker;
    char client_id[128];
    int clean, v5, v5_session, qos, pub_qos, keepalive;
    int pub_text;
    int bad_event;
    int64_t connect_timeout, rc_min, rc_max, session_expiry;
    size_t max_pending, q_max;
    int64_t q_ms, pub_timeout;
    struct mqt_filter *filters;
    size_t nfilters;
    char *subs[MQ_FILTERS_MAX];
    struct mqt_map map;
    struct mqt_tmpl t_conv, t_sender, t_pub;
    int have_pub;

    /* connection, control loop only */
    int fd;
    struct event ev;
    int ev_set;
    short ev_flags;
    int connected, connecting, subscribed_once;
    int64_t t_connect;
    int64_t backoff;
    uint64_t rng;                   /* xorshift state for the jitter */
    struct kfg_timer *t_misc, *t_reconnect, *t_retry;
    struct event probe_ev;          /* MQTT 5 sessions: see connect_v5 */
    int probe_fd, probe_set;
    char status[256];               /* why not connected, for health */
    char sub_error[320];            /* a refused subscription, for health */
    int running, stopping;
    int lib_ref;                    /* holds a mosquitto_lib_init */

    /* inbound */
    size_t pending, pending_qos;    /* emitted, completion not yet seen */
    struct inmsg *retry_head, *retry_tail;
    int64_t retry_delay;
    int64_t log_t;                  /* rate limit for bad-payload lines */
    unsigned log_suppressed;

    /* outbound */
    struct job *q_head, *q_tail;    /* waiting for a connection */
    size_t q_len;
    struct job *fl_head;            /* published, waiting for the broker */
    size_t fl_len;
    struct job *hash[MQ_HASH];

    struct kfg_metric *m_conn, *m_in[IN__N], *m_out[OUT__N], *m_err[MQT_E__N],
        *m_connects, *m_queue, *m_pending, *m_lat;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void update_io(struct mq *q);
static void schedule_reconnect(struct mq *q);
static void flush_queue(struct mq *q);
static void do_read(struct mq *q);

static const char *mosq_err(int rc)
{
    return rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc);
}

/* ---------------------------------------------------------------------------
 * Outbound bookkeeping.
 */
static void list_unlink(struct job **head, struct job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        *head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    j->next = j->prev = NULL;
}

static void fl_add(struct mq *q, struct job *j)
{
    j->prev = NULL;
    j->next = q->fl_head;
    if (q->fl_head)
        q->fl_head->prev = j;
    q->fl_head = j;
    q->fl_len++;
    struct job **b = &q->hash[(unsigned)j->mid % MQ_HASH];
    j->hnext = *b;
    *b = j;
}

static void fl_remove(struct mq *q, struct job *j)
{
    list_unlink(&q->fl_head, j);
    q->fl_len--;
    for (struct job **b = &q->hash[(unsigned)j->mid % MQ_HASH]; *b; b = &(*b)->hnext)
        if (*b == j) {
            *b = j->hnext;
            break;
        }
}

static struct job *fl_find(struct mq *q, int mid)
{
    for (struct job *j = q->hash[(unsigned)mid % MQ_HASH]; j; j = j->hnext)
        if (j->mid == mid)
            return j;
    return NULL;
}

static void q_push(struct mq *q, struct job *j, int front)
{
    j->prev = j->next = NULL;
    if (front) {
        j->next = q->q_head;
        if (q->q_head)
            q->q_head->prev = j;
        q->q_head = j;
        if (!q->q_tail)
            q->q_tail = j;
    } else {
        j->prev = q->q_tail;
        if (q->q_tail)
            q->q_tail->next = j;
        q->q_tail = j;
        if (!q->q_head)
            q->q_head = j;
    }
    q->q_len++;
    q->host->metric_set(q->m_queue, (int64_t)q->q_len);
}

static struct job *q_pop(struct mq *q)
{
    struct job *j = q->q_head;
    if (!j)
        return NULL;
    q->q_head = j->next;
    if (q->q_head)
        q->q_head->prev = NULL;
    else
        q->q_tail = NULL;
    j->next = j->prev = NULL;
    q->q_len--;
    q->host->metric_set(q->m_queue, (int64_t)q->q_len);
    return j;
}

static void q_remove(struct mq *q, struct job *j)
{
    if (j == q->q_tail)
        q->q_tail = j->prev;
    list_unlink(&q->q_head, j);
    q->q_len--;
    q->host->metric_set(q->m_queue, (int64_t)q->q_len);
}

static void job_finish(struct job *j, int result, const char *code, const char *detail)
{
    struct mq *q = j->q;
    q->host->metric_add(q->m_out[result == KFG_OK ? OUT_SENT : result == KFG_RETRY ? OUT_RETRY
                                                                                 : OUT_FAILED], 1);
    if (result == KFG_OK)
        q->host->metric_observe(q->m_lat, (double)(now_ms() - j->t0) / 1000.0);
    q->host->delivered(j->d, result, code, detail);
    free(j);
}

/* Publishes j now; on a lost connection it goes back to the queue front. */
static void job_publish(struct mq *q, struct job *j)
{
    int mid = 0;
    int rc = mosquitto_publish_v5(q->mosq, &mid, j->topic, (int)j->plen, j->payload,
                                  q->pub_qos, false, NULL);
    if (rc == MOSQ_ERR_SUCCESS) {
        j->mid = mid;
        j->t0 = now_ms();
        fl_add(q, j);
        return;
    }
    if (rc == MOSQ_ERR_NO_CONN || rc == MOSQ_ERR_CONN_LOST) {
        q_push(q, j, 1);
        return;
    }
    char detail[160];
    snprintf(detail, sizeof detail, "publish to %s refused by the client library: %s",
             j->topic, mosq_err(rc));
    job_finish(j, rc == MOSQ_ERR_NOMEM ? KFG_RETRY : KFG_EFAIL, "mqtt:publish", detail);
}

static void flush_queue(struct mq *q)
{
    struct job *j;
    while (q->connected && (j = q_pop(q)))
        job_publish(q, j);
}

/* ---------------------------------------------------------------------------
 * Outbound: deliver.
 */
struct out_ctx {
    struct mq *q;
    const struct kfg_msg *m;
};

static int resolve_out(void *arg, const char *name, const char **val, size_t *len)
{
    struct out_ctx *c = arg;
    const struct kfg_host *h = c->q->host;
    char key[64];
    snprintf(key, sizeof key, "channel_data.%s", name);
    struct kfg_str v = h->msg_get(c->m, key);
    if (!v.ptr && (!strcmp(name, "conversation") || !strcmp(name, "recipient") ||
                   !strcmp(name, "sender"))) {
        snprintf(key, sizeof key, "%s.id", name);
        v = h->msg_get(c->m, key);
    }
    if (!v.ptr && mqt_tmpl_vars(&c->q->t_pub) == 1) {
        /* One variable: the device the core answers is its conversation
         * (or, when set, the recipient). */
        v = h->msg_get(c->m, KFG_ENV_RECIPIENT_ID);
        if (!v.ptr)
            v = h->msg_get(c->m, KFG_ENV_CONVERSATION_ID);
    }
    if (!v.ptr)
        return -1;
    *val = v.ptr;
    *len = v.len;
    return 0;
}

static void jset(json_t *o, const char *name, struct kfg_str v)
{
    if (v.ptr)
        json_object_set_new(o, name, json_stringn(v.ptr, v.len));
}

/* The JSON payload: the envelope's routing fields and its parts. */
static char *out_json(struct mq *q, const struct kfg_msg *m, size_t *len)
{
    const struct kfg_host *h = q->host;
    json_t *o = json_object();
    jset(o, "id", h->msg_get(m, KFG_ENV_ID));
    jset(o, "type", h->msg_get(m, KFG_ENV_TYPE));
    jset(o, "conversation", h->msg_get(m, KFG_ENV_CONVERSATION_ID));
    jset(o, "recipient", h->msg_get(m, KFG_ENV_RECIPIENT_ID));
    jset(o, "reply_to", h->msg_get(m, KFG_ENV_REPLY_TO));
    static const char *const pf[] = {
        "text", "format", "url", "media_id", "mime", "size", "name", "duration_ms", "width",
        "height", "sha256", "thumb_url", "title", "description", "lat", "lon", "label",
        "key", "value", NULL
    };
    json_t *parts = json_array();
    size_t np = h->msg_part_count(m);
    for (size_t i = 0; i < np; i++) {
        json_t *p = json_object();
        const char *kind = h->msg_part_kind(m, i);
        json_object_set_new(p, "kind", json_string(kind ? kind : ""));
        for (size_t f = 0; pf[f]; f++)
            jset(p, pf[f], h->msg_part_get(m, i, pf[f]));
        json_array_append_new(parts, p);
    }
    json_object_set_new(o, "parts", parts);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    *len = s ? strlen(s) : 0;
    return s;
}

static int mq_deliver(void *ctx, const struct kfg_msg *m, struct kfg_delivery *d)
{
    struct mq *q = ctx;
    const struct kfg_host *h = q->host;
    if (!q->have_pub) {
        h->delivered(d, KFG_EFAIL, "mqtt:no_publish_topic", "the instance has no publish_topic");
        return KFG_OK;
    }
    if (!q->running)
        return KFG_RETRY;
    char topic[512], why[160];
    struct out_ctx oc = { q, m };
    int tl = mqt_tmpl_render(&q->t_pub, resolve_out, &oc, 1, topic, sizeof topic, why,
                             sizeof why);
    if (tl < 0) {
        char detail[200];
        snprintf(detail, sizeof detail, "publish_topic: %s", why);
        h->delivered(d, KFG_EFAIL, "mqtt:topic", detail);
        return KFG_OK;
    }
    char *body = NULL;
    size_t blen = 0;
    if (q->pub_text) {
        struct kfg_str t = { NULL, 0 };
        for (size_t i = 0; i < h->msg_part_count(m) && !t.ptr; i++) {
            const char *k = h->msg_part_kind(m, i);
            if (k && !strcmp(k, KFG_ENV_KIND_TEXT))
                t = h->msg_part_get(m, i, KFG_ENV_P_TEXT);
        }
        if (!t.ptr) {
            h->delivered(d, KFG_EFAIL, "mqtt:no_text",
                         "publish_format is text and the message has no text part");
            return KFG_OK;
        }
        body = (char *)t.ptr;
        blen = t.len;
    } else {
        body = out_json(q, m, &blen);
        if (!body)
            return KFG_ENOMEM;
    }
    struct job *j = malloc(sizeof *j + (size_t)tl + 1 + blen + 1);
    if (!j) {
        if (!q->pub_text)
            free(body);
        return KFG_ENOMEM;
    }
    memset(j, 0, sizeof *j);
    j->q = q;
    j->d = d;
    j->topic = (char *)(j + 1);
    memcpy(j->topic, topic, (size_t)tl + 1);
    j->payload = j->topic + tl + 1;
    memcpy(j->payload, body, blen);
    j->payload[blen] = '\0';
    j->plen = blen;
    if (!q->pub_text)
        free(body);
    j->t0 = now_ms();
    if (q->connected && !q->q_head) {
        job_publish(q, j);
        update_io(q);
        return KFG_OK;
    }
    if (q->q_len >= q->q_max) {
        job_finish(j, KFG_RETRY, "mqtt:queue_full",
                   "not connected to the broker and the outbound queue is full");
        return KFG_OK;
    }
    q_push(q, j, 0);
    return KFG_OK;
}

/* ---------------------------------------------------------------------------
 * Inbound.
 */
static int holding(const struct mq *q)
{
    return q->pending_qos > 0 || q->retry_head != NULL;
}

/* Drops the connection without writing what is queued (the held PUBACKs),
 * so the broker redelivers every message not yet acknowledged. */
static void drop_unacked(struct mq *q, const char *why)
{
    q->host->log(q->ins, NULL, KFG_LOG_WARN,
                 "dropping the connection without acknowledging: %s", why);
    int fd = mosquitto_socket(q->mosq);
    if (fd >= 0)
        shutdown(fd, SHUT_RDWR);
    snprintf(q->status, sizeof q->status, "reconnecting after: %s", why);
}

static void inbound_settled(struct mq *q, int qos)
{
    q->pending--;
    if (qos > 0)
        q->pending_qos--;
    q->host->metric_set(q->m_pending, (int64_t)q->pending);
    if (q->stopping && q->pending == 0 && !q->retry_head) {
        /* Everything read is journaled: acknowledge, say goodbye, done. */
        mosquitto_loop_write(q->mosq, 1);
        mosquitto_disconnect(q->mosq);
        mosquitto_loop_write(q->mosq, 1);
        q->stopping = 0;
        q->host->log(q->ins, NULL, KFG_LOG_INFO, "drained");
        q->host->stopped(q->ins);
        return;
    }
    if (!holding(q) && q->connected) {
        mosquitto_loop_write(q->mosq, 1);   /* the held acknowledgements */
        update_io(q);
        do_read(q);                          /* TLS may hold decrypted bytes */
    } else {
        update_io(q);
    }
}

static void emit_outcome(struct mq *q, int qos, int result, int duplicate, const char *reason)
{
    const struct kfg_host *h = q->host;
    if (result == KFG_OK) {
        h->metric_add(q->m_in[duplicate ? IN_DUPLICATE : IN_ACCEPTED], 1);
    } else if (result == KFG_EDROPPED) {
        h->metric_add(q->m_in[IN_FILTERED], 1);
    } else {
        h->metric_add(q->m_in[IN_FAILED], 1);
        char why[200];
        snprintf(why, sizeof why, "the gateway could not journal a message (%d%s%s)", result,
                 reason ? ": " : "", reason ? reason : "");
        if (qos > 0)
            drop_unacked(q, why);
        else
            h->log(q->ins, NULL, KFG_LOG_ERROR, "QoS 0 message lost: %s", why);
    }
    inbound_settled(q, qos);
}

static void on_emitted(void *arg, int result, uint64_t seq, const char *reason)
{
    (void)seq;
    struct inmsg *im = arg;
    struct mq *q = im->q;
    int qos = im->qos;
    free(im);
    emit_outcome(q, qos, result, 0, reason);
}

static void on_emitted2(void *arg, const struct kfg_emit_result *r)
{
    struct inmsg *im = arg;
    struct mq *q = im->q;
    int qos = im->qos;
    free(im);
    emit_outcome(q, qos, r->result, r->duplicate, r->reason);
}

static int emit_one(struct mq *q, struct inmsg *im)
{
    const struct kfg_host *h = q->host;
    struct kfg_msg *m = im->m;
    im->m = NULL;
    int rc = h->abi_minor >= 1 && h->emit2 ? h->emit2(q->ins, m, on_emitted2, im)
                                           : h->emit(q->ins, m, on_emitted, im);
    if (rc != KFG_OK)
        im->m = m;
    return rc;
}

static void retry_emits(void *arg);

static void retry_arm(struct mq *q)
{
    if (q->t_retry || !q->retry_head)
        return;
    q->retry_delay = q->retry_delay ? q->retry_delay * 2 : 20;
    if (q->retry_delay > 1000)
        q->retry_delay = 1000;
    q->t_retry = q->host->timer_start(q->ins, (uint64_t)q->retry_delay, 0, retry_emits, q);
}

static void retry_emits(void *arg)
{
    struct mq *q = arg;
    q->host->timer_free(q->t_retry);
    q->t_retry = NULL;
    while (q->retry_head) {
        struct inmsg *im = q->retry_head;
        int rc = emit_one(q, im);
        if (rc == KFG_AGAIN)
            break;
        q->retry_head = im->next;
        if (!q->retry_head)
            q->retry_tail = NULL;
        im->next = NULL;
        if (rc != KFG_OK) {
            q->host->msg_free(im->m);
            int qos = im->qos;
            free(im);
            q->host->metric_add(q->m_in[IN_FAILED], 1);
            if (qos > 0)
                drop_unacked(q, "the gateway refused a message on retry");
            inbound_settled(q, qos);
        }
    }
    if (q->retry_head) {
        retry_arm(q);
    } else {
        q->retry_delay = 0;
        if (!holding(q) && q->connected) {
            mosquitto_loop_write(q->mosq, 1);
            update_io(q);
        }
    }
}

/* Hands m to the gateway; m is the host's or freed after this. */
static void hand_over(struct mq *q, struct kfg_msg *m, int qos)
{
    struct inmsg *im = calloc(1, sizeof *im);
    if (!im) {
        q->host->msg_free(m);
        q->host->metric_add(q->m_in[IN_FAILED], 1);
        if (qos > 0)
            drop_unacked(q, "out of memory");
        return;
    }
    im->q = q;
    im->qos = qos;
    im->m = m;
    q->pending++;
    if (qos > 0)
        q->pending_qos++;
    q->host->metric_set(q->m_pending, (int64_t)q->pending);
    int rc = q->retry_head ? KFG_AGAIN : emit_one(q, im);
    if (rc == KFG_OK)
        return;
    if (rc == KFG_AGAIN) {
        /* Over a limit: keep it (its acknowledgement stays held) and stop
         * reading until the gateway takes it. */
        if (q->retry_tail)
            q->retry_tail->next = im;
        else
            q->retry_head = im;
        q->retry_tail = im;
        retry_arm(q);
        return;
    }
    q->host->log(q->ins, NULL, KFG_LOG_ERROR, "the gateway refused an inbound message (%d)", rc);
    q->host->msg_free(im->m);
    free(im);
    q->host->metric_add(q->m_in[IN_FAILED], 1);
    q->pending--;
    if (qos > 0)
        q->pending_qos--;
}

static void log_bad(struct mq *q, const char *topic, const struct mqt_problem *p)
{
    int64_t t = now_ms();
    if (t - q->log_t < 1000) {
        q->log_suppressed++;
        return;
    }
    q->host->log(q->ins, NULL, KFG_LOG_WARN, "bad payload on %s: %s%s%s: %s (%u more not "
                 "logged in the last second)", topic, mqt_err_code(p->err),
                 p->pointer[0] ? " at " : "", p->pointer, p->detail, q->log_suppressed);
    q->log_t = t;
    q->log_suppressed = 0;
}

/* The invalid_payload event: who sent what, and why it was refused. */
static void bad_payload(struct mq *q, const struct mqt_filter *f, const struct mqt_caps *caps,
                        const struct mosquitto_message *msg, const struct mqt_problem *p)
{
    const struct kfg_host *h = q->host;
    h->metric_add(q->m_in[IN_INVALID], 1);
    h->metric_add(q->m_err[p->err], 1);
    log_bad(q, msg->topic, p);
    if (!q->bad_event)
        return;
    struct kfg_host_sink ms = { h, q->ins, NULL };
    struct kfg_msg_sink sink = kfg_host_sink(&ms);
    struct mqt_problem p2;
    if (kfg_host_sink_begin(&ms, KFG_ENV_TYPE_EVENT) != KFG_OK)
        return;
    int rc = mqt_map_identity(&q->map, f, caps, &sink, &p2);
    int part = rc == 0 ? h->msg_part_add(ms.m, KFG_ENV_KIND_EVENT) : -1;
    if (part >= 0) {
        const char *code = mqt_err_code(p->err);
        rc = kfg_env_part_setz(h, ms.m, part, KFG_ENV_P_EVENT_NAME, "invalid_payload");
        if (rc == KFG_OK)
            rc = kfg_env_part_setz(h, ms.m, part, "value.reason", code);
        if (rc == KFG_OK && p->detail[0])
            rc = kfg_env_part_setz(h, ms.m, part, "value.detail", p->detail);
        if (rc == KFG_OK && p->pointer[0])
            rc = kfg_env_part_setz(h, ms.m, part, "value.pointer", p->pointer);
        if (rc == KFG_OK)
            rc = kfg_env_part_set_uint(h, ms.m, part, "value.size", (uint64_t)msg->payloadlen);
        if (rc == KFG_OK)
            rc = kfg_env_set_channel_data(h, ms.m, "topic", msg->topic, strlen(msg->topic));
        if (rc == KFG_OK && (size_t)msg->payloadlen <= q->map.max_payload)
            rc = kfg_env_set_raw(h, ms.m, q->map.format == MQT_JSON ? "application/json"
                                 : q->map.format == MQT_MSGPACK ? "application/msgpack"
                                 : q->map.raw_ctype, msg->payload, (size_t)msg->payloadlen);
    }
    if (rc != KFG_OK || part < 0) {
        h->msg_free(ms.m);
        return;
    }
    hand_over(q, ms.m, msg->qos);
}

static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *props)
{
    (void)mosq;
    struct mq *q = obj;
    const struct kfg_host *h = q->host;
    size_t tl = strlen(msg->topic);
    struct mqt_caps caps;
    const struct mqt_filter *f = NULL;
    for (size_t i = 0; i < q->nfilters && !f; i++)
        if (mqt_filter_match(&q->filters[i], msg->topic, tl, &caps))
            f = &q->filters[i];
    if (!f) {
        /* A subscription of an older configuration kept by the session. */
        h->metric_add(q->m_in[IN_UNMATCHED], 1);
        h->log(q->ins, NULL, KFG_LOG_DEBUG, "no filter matches %s: ignored", msg->topic);
        return;
    }
    void *corr = NULL;
    uint16_t corr_len = 0;
    if (props && q->map.idem_correlation)
        mosquitto_property_read_binary(props, MQTT_PROP_CORRELATION_DATA, &corr, &corr_len,
                                       false);
    struct kfg_host_sink ms = { h, q->ins, NULL };
    struct kfg_msg_sink sink = kfg_host_sink(&ms);
    struct mqt_problem p;
    int rc = mqt_map_message(&q->map, f, &caps, msg->topic, tl, msg->payload,
                             (size_t)msg->payloadlen, corr, corr_len, &sink, &p);
    free(corr);
    if (rc == 0 && ms.m)
        rc = kfg_env_set_channel_data_int(h, ms.m, "qos", msg->qos);
    /* A retained message is the broker's stored state, resent on every
     * subscribe: a core may want to tell it from a live one. */
    if (rc == 0 && ms.m && msg->retain)
        rc = kfg_env_set_channel_data_int(h, ms.m, "retain", 1);
    if (rc != 0) {
        if (ms.m)
            h->msg_free(ms.m);
        bad_payload(q, f, &caps, msg, &p);
        return;
    }
    hand_over(q, ms.m, msg->qos);
}

/* ---------------------------------------------------------------------------
 * Connection.
 */
static void on_connect(struct mosquitto *mosq, void *obj, int rc, int flags,
                       const mosquitto_property *props)
{
    (void)props;
    struct mq *q = obj;
    const struct kfg_host *h = q->host;
    const struct mqt_url *b = &q->brokers[q->broker];
    q->connecting = 0;
    if (rc != 0) {
        snprintf(q->status, sizeof q->status, "%s://%s:%d refused the connection: %s",
                 b->tls ? "mqtts" : "mqtt", b->host, b->port,
                 q->v5 ? mosquitto_reason_string(rc) : mosquitto_connack_string(rc));
        h->log(q->ins, NULL, KFG_LOG_ERROR, "%s", q->status);
        return;     /* the library disconnects; on_disconnect reconnects */
    }
    int present = flags & 1;
    q->connected = 1;
    q->backoff = 0;
    q->status[0] = '\0';
    h->metric_set(q->m_conn, 1);
    h->metric_add(q->m_connects, 1);
    h->log(q->ins, NULL, KFG_LOG_INFO, "connected to %s://%s:%d as %s (MQTT %s, session %s)",
           b->tls ? "mqtts" : "mqtt", b->host, b->port, q->client_id, q->v5 ? "5" : "3.1.1",
           present ? "resumed" : "new");
    /* A resumed session keeps our subscriptions; the first connection of
     * this process subscribes anyway, the configuration may have changed. */
    if (!present || !q->subscribed_once || q->clean) {
        q->sub_error[0] = '\0';
        int src = mosquitto_subscribe_multiple(mosq, NULL, (int)q->nfilters, q->subs, q->qos,
                                               0, NULL);
        if (src != MOSQ_ERR_SUCCESS)
            h->log(q->ins, NULL, KFG_LOG_ERROR, "cannot subscribe: %s", mosq_err(src));
        q->subscribed_once = 1;
    }
    flush_queue(q);
}

static void on_subscribe(struct mosquitto *mosq, void *obj, int mid, int n, const int *granted,
                         const mosquitto_property *props)
{
    (void)mosq;
    (void)mid;
    (void)props;
    struct mq *q = obj;
    for (int i = 0; i < n && (size_t)i < q->nfilters; i++) {
        if (granted[i] >= 0x80) {
            snprintf(q->sub_error, sizeof q->sub_error, "the broker refused the subscription "
                     "%s (reason 0x%02x)", q->subs[i], granted[i]);
            q->host->log(q->ins, NULL, KFG_LOG_ERROR, "%s", q->sub_error);
        } else {
            q->host->log(q->ins, NULL, KFG_LOG_INFO, "subscribed %s (QoS %d)", q->subs[i],
                         granted[i]);
        }
    }
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int rc,
                          const mosquitto_property *props)
{
    (void)mosq;
    (void)props;
    struct mq *q = obj;
    const struct mqt_url *b = &q->brokers[q->broker];
    int was = q->connected, trying = q->connecting;
    const char *why = rc == MOSQ_ERR_SUCCESS ? "closed" : mosq_err(rc);
    q->connected = 0;
    q->connecting = 0;
    q->host->metric_set(q->m_conn, 0);
    /* A CONNACK refusal already said why (on_connect); keep that. */
    if (was)
        snprintf(q->status, sizeof q->status, "lost the connection to %s://%s:%d: %s",
                 b->tls ? "mqtts" : "mqtt", b->host, b->port, why);
    else if (trying || !q->status[0])
        snprintf(q->status, sizeof q->status, "cannot connect to %s://%s:%d: %s",
                 b->tls ? "mqtts" : "mqtt", b->host, b->port, why);
    if (was)
        q->host->log(q->ins, NULL, KFG_LOG_WARN, "%s", q->status);
    /* QoS 0 publishes not yet written are gone with the socket. QoS 1/2
     * stay with libmosquitto, which resends them after the reconnect. */
    if (q->pub_qos == 0)
        while (q->fl_head) {
            struct job *j = q->fl_head;
            fl_remove(q, j);
            job_finish(j, KFG_RETRY, "mqtt:disconnected", "the connection was lost before "
                       "the message was written");
        }
    /* Messages handed to the gateway and not yet journaled were not
     * acknowledged (their PUBACKs went with the socket): the broker
     * redelivers them, the journal's dedupe drops the copy if they land. */
    if (q->running)
        schedule_reconnect(q);
}

static void on_log(struct mosquitto *mosq, void *obj, int level, const char *str)
{
    (void)mosq;
    struct mq *q = obj;
    if (level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING))
        q->host->log(q->ins, NULL, KFG_LOG_DEBUG, "libmosquitto: %s", str);
}

static void do_connect(void *arg);

static void schedule_reconnect(struct mq *q)
{
    if (q->t_reconnect || !q->running)
        return;
    q->backoff = q->backoff ? q->backoff * 2 : q->rc_min;
    if (q->backoff > q->rc_max)
        q->backoff = q->rc_max;
    /* Full jitter over the upper half, so a fleet of gateways that lost a
     * broker together does not come back in lockstep. */
    q->rng ^= q->rng << 13;
    q->rng ^= q->rng >> 7;
    q->rng ^= q->rng << 17;
    int64_t d = q->backoff / 2 + (int64_t)(q->rng % (uint64_t)(q->backoff / 2 + 1));
    if (q->nbrokers > 1)
        q->broker = (q->broker + 1) % q->nbrokers;
    size_t l = strlen(q->status);
    if (l < sizeof q->status - 40 && !strstr(q->status, "(retry in"))
        snprintf(q->status + l, sizeof q->status - l, " (retry in %lld ms)", (long long)d);
    q->t_reconnect = q->host->timer_start(q->ins, (uint64_t)d, 0, do_connect, q);
    update_io(q);
}

/* MQTT 5 sessions. libmosquitto 2.0 sends CONNECT properties only from its
 * blocking connect, and a v5 CONNECT without a Session Expiry Interval ends
 * the session at the first disconnect. So for a persistent v5 session on
 * mqtt:// the broker is first probed with a non-blocking TCP connect of our
 * own; once it answered, the blocking connect costs one round trip to a
 * broker known to be there, and the socket is made non-blocking at once.
 * (Over mqtts:// it would also run the TLS handshake blocking, which a
 * stalled broker could stretch without bound: not done, spec section 6.4.) */
static void connect_fail(struct mq *q, const char *what, const char *why)
{
    const struct mqt_url *b = &q->brokers[q->broker];
    snprintf(q->status, sizeof q->status, "%s %s://%s:%d: %s", what, b->tls ? "mqtts" : "mqtt",
             b->host, b->port, why);
    q->host->log(q->ins, NULL, KFG_LOG_DEBUG, "%s", q->status);
    schedule_reconnect(q);
}

static void connect_v5(struct mq *q)
{
    const struct mqt_url *b = &q->brokers[q->broker];
    mosquitto_property *props = NULL;
    int rc = mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL,
                                          (uint32_t)q->session_expiry);
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_connect_bind_v5(q->mosq, b->host, b->port, q->keepalive, NULL, props);
    mosquitto_property_free_all(&props);
    int fd = mosquitto_socket(q->mosq);
    if (rc != MOSQ_ERR_SUCCESS || fd < 0) {
        connect_fail(q, "cannot connect to", mosq_err(rc));
        return;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        shutdown(fd, SHUT_RDWR);
        connect_fail(q, "cannot make the socket non-blocking for", strerror(errno));
        return;
    }
    snprintf(q->status, sizeof q->status, "connecting to mqtt://%s:%d", b->host, b->port);
    q->connecting = 1;
    q->t_connect = now_ms();
    update_io(q);
}

static void probe_close(struct mq *q)
{
    if (q->probe_set)
        event_del(&q->probe_ev);
    q->probe_set = 0;
    if (q->probe_fd >= 0)
        close(q->probe_fd);
    q->probe_fd = -1;
}

static void probe_done(evutil_socket_t fd, short what, void *arg)
{
    struct mq *q = arg;
    int err = 0;
    socklen_t l = sizeof err;
    if (what & EV_TIMEOUT)
        err = ETIMEDOUT;
    else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) != 0)
        err = errno;
    probe_close(q);
    if (!q->running)
        return;
    if (err)
        connect_fail(q, "cannot connect to", strerror(err));
    else
        connect_v5(q);
}

static void probe_start(struct mq *q)
{
    const struct mqt_url *b = &q->brokers[q->broker];
    char port[8];
    snprintf(port, sizeof port, "%d", b->port);
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    struct addrinfo *ai = NULL;
    int g = getaddrinfo(b->host, port, &hints, &ai);
    if (g != 0 || !ai) {
        connect_fail(q, "cannot resolve", gai_strerror(g));
        return;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int rc = fd < 0 ? -1 : connect(fd, ai->ai_addr, ai->ai_addrlen);
    int err = errno;
    freeaddrinfo(ai);
    if (fd < 0 || (rc != 0 && err != EINPROGRESS)) {
        if (fd >= 0)
            close(fd);
        connect_fail(q, "cannot connect to", strerror(err));
        return;
    }
    if (rc == 0) {
        close(fd);
        connect_v5(q);
        return;
    }
    q->probe_fd = fd;
    struct timeval tv = { (time_t)(q->connect_timeout / 1000),
                          (suseconds_t)((q->connect_timeout % 1000) * 1000) };
    if (event_assign(&q->probe_ev, q->base, fd, EV_WRITE, probe_done, q) != 0 ||
        event_add(&q->probe_ev, &tv) != 0) {
        probe_close(q);
        connect_fail(q, "cannot wait for", "libevent refused the probe");
        return;
    }
    q->probe_set = 1;
    snprintf(q->status, sizeof q->status, "connecting to mqtt://%s:%d", b->host, b->port);
}

static void do_connect(void *arg)
{
    struct mq *q = arg;
    if (q->t_reconnect) {
        q->host->timer_free(q->t_reconnect);
        q->t_reconnect = NULL;
    }
    if (!q->running)
        return;
    const struct mqt_url *b = &q->brokers[q->broker];
    if (q->v5_session) {
        probe_start(q);
        return;
    }
    int rc = mosquitto_connect_async(q->mosq, b->host, b->port, q->keepalive);
    if (rc != MOSQ_ERR_SUCCESS) {
        snprintf(q->status, sizeof q->status, "cannot connect to %s://%s:%d: %s",
                 b->tls ? "mqtts" : "mqtt", b->host, b->port, mosq_err(rc));
        q->host->log(q->ins, NULL, KFG_LOG_DEBUG, "%s", q->status);
        schedule_reconnect(q);
        return;
    }
    snprintf(q->status, sizeof q->status, "connecting to %s://%s:%d", b->tls ? "mqtts" : "mqtt",
             b->host, b->port);
    q->connecting = 1;
    q->t_connect = now_ms();
    update_io(q);
}

static void check_rc(struct mq *q, int rc)
{
    if (rc == MOSQ_ERR_SUCCESS)
        return;
    /* libmosquitto closed the socket and called on_disconnect already for
     * a lost connection; anything else gets the same treatment here. */
    if (!q->t_reconnect && q->running && mosquitto_socket(q->mosq) < 0) {
        if (q->connected || q->connecting)
            on_disconnect(q->mosq, q, rc, NULL);
        else
            schedule_reconnect(q);
    }
}

static void do_read(struct mq *q)
{
    if (holding(q) || q->stopping || mosquitto_socket(q->mosq) < 0)
        return;
    /* libmosquitto 2.0 reads one QoS 1 packet per call. Everything already
     * in the socket goes into one batch, so one journal commit releases
     * many PUBACKs instead of one. */
    for (int i = 0; i < 1024; i++) {
        errno = 0;
        int rc = mosquitto_loop_read(q->mosq, 1);
        if (rc != MOSQ_ERR_SUCCESS) {
            check_rc(q, rc);
            break;
        }
        int fd = mosquitto_socket(q->mosq);
        if (fd < 0 || q->pending >= q->max_pending || q->retry_head || errno == EAGAIN)
            break;
        int avail = 0;
        if (!q->brokers[0].tls && (ioctl(fd, FIONREAD, &avail) != 0 || avail <= 0))
            break;
    }
    if (!holding(q) && mosquitto_socket(q->mosq) >= 0 && mosquitto_want_write(q->mosq))
        check_rc(q, mosquitto_loop_write(q->mosq, 1));
    update_io(q);
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    struct mq *q = arg;
    if (what & EV_WRITE) {
        if (!holding(q))
            check_rc(q, mosquitto_loop_write(q->mosq, 1));
    }
    if (what & EV_READ)
        do_read(q);
    update_io(q);
}

/* Keeps the libevent registration in line with the socket and the hold.
 * One event for both directions: libmosquitto closes its socket itself
 * before telling us, and a single registration is then removed with
 * EPOLL_CTL_DEL, whose EBADF libevent ignores (a MOD would warn). */
static void update_io(struct mq *q)
{
    int fd = q->mosq ? mosquitto_socket(q->mosq) : -1;
    short want = 0;
    if (fd >= 0) {
        if (!holding(q) && !q->stopping && q->pending < q->max_pending)
            want |= EV_READ;
        if (!holding(q) && mosquitto_want_write(q->mosq))
            want |= EV_WRITE;
    }
    if (fd == q->fd && want == q->ev_flags)
        return;
    if (q->ev_set) {
        event_del(&q->ev);
        q->ev_set = 0;
    }
    q->fd = fd;
    q->ev_flags = want;
    if (fd < 0 || !want)
        return;
    /* Embedded, so toggling write interest on every publish allocates
     * nothing. */
    if (event_assign(&q->ev, q->base, fd, want | EV_PERSIST, on_io, q) == 0 &&
        event_add(&q->ev, NULL) == 0)
        q->ev_set = 1;
}

/* Every second: keepalive, connect timeout, delivery deadlines. */
static void on_misc(void *arg)
{
    struct mq *q = arg;
    int64_t t = now_ms();
    if (mosquitto_socket(q->mosq) >= 0) {
        if (q->connecting && t - q->t_connect > q->connect_timeout) {
            const struct mqt_url *b = &q->brokers[q->broker];
            snprintf(q->status, sizeof q->status, "no CONNACK from %s://%s:%d within %lld ms",
                     b->tls ? "mqtts" : "mqtt", b->host, b->port, (long long)q->connect_timeout);
            q->host->log(q->ins, NULL, KFG_LOG_WARN, "%s", q->status);
            shutdown(mosquitto_socket(q->mosq), SHUT_RDWR);
            do_read(q);
        } else {
            check_rc(q, mosquitto_loop_misc(q->mosq));
        }
    }
    while (q->q_head && t - q->q_head->t0 > q->q_ms) {
        struct job *j = q->q_head;
        q_remove(q, j);
        char detail[320];
        snprintf(detail, sizeof detail, "not connected to the broker for %lld ms: %.256s",
                 (long long)q->q_ms, q->status);
        job_finish(j, KFG_RETRY, "mqtt:disconnected", detail);
    }
    for (struct job *j = q->fl_head, *n; j; j = n) {
        n = j->next;
        if (t - j->t0 > q->pub_timeout) {
            fl_remove(q, j);
            job_finish(j, KFG_RETRY, "mqtt:no_ack", "the broker did not acknowledge the "
                       "publish in time");
        }
    }
    update_io(q);
}

static void on_publish(struct mosquitto *mosq, void *obj, int mid, int reason,
                       const mosquitto_property *props)
{
    (void)mosq;
    (void)props;
    struct mq *q = obj;
    struct job *j = fl_find(q, mid);
    if (!j)
        return;     /* timed out before and handed back for retry */
    fl_remove(q, j);
    if (reason >= 0x80) {
        char code[24], detail[160];
        snprintf(code, sizeof code, "mqtt:0x%02x", reason);
        snprintf(detail, sizeof detail, "the broker refused the publish to %s: %s", j->topic,
                 mosquitto_reason_string(reason));
        job_finish(j, KFG_EFAIL, code, detail);
        return;
    }
    job_finish(j, KFG_OK, NULL, NULL);
}

/* ---------------------------------------------------------------------------
 * Lifecycle.
 */
static int cfg_int(struct mq *q, const char *key, int64_t min, int64_t max, int64_t *out)
{
    int64_t v = q->host->config_int(q->ins, key);
    if (v < min || v > max) {
        q->host->log(q->ins, NULL, KFG_LOG_ERROR, "%s must be in %lld..%lld, not %lld", key,
                     (long long)min, (long long)max, (long long)v);
        return KFG_EINVAL;
    }
    *out = v;
    return KFG_OK;
}

static const char *opt_string(struct mq *q, const char *key)
{
    const char *v = q->host->config_string(q->ins, key);
    return v && *v ? v : NULL;
}

static int ptr_key(struct mq *q, const char *key, const char **out)
{
    const char *v = opt_string(q, key);
    *out = v;
    if (v && !mqt_pointer_valid(v)) {
        q->host->log(q->ins, NULL, KFG_LOG_ERROR, "%s = \"%s\" is not a JSON pointer "
                     "(RFC 6901, e.g. \"/text\")", key, v);
        return KFG_EINVAL;
    }
    return KFG_OK;
}

static int tmpl_key(struct mq *q, const char *key, struct mqt_tmpl *t, int *have)
{
    const char *v = opt_string(q, key);
    *have = v != NULL;
    if (!v)
        return KFG_OK;
    char why[200];
    if (mqt_tmpl_parse(v, strlen(v), t, why, sizeof why) != 0) {
        q->host->log(q->ins, NULL, KFG_LOG_ERROR, "%s: %s", key, why);
        return KFG_EINVAL;
    }
    return KFG_OK;
}

static int mq_init_inner(struct mq *q)
{
    const struct kfg_host *h = q->host;
    struct kfg_instance *ins = q->ins;
    char why[256];
    int rc;
    int64_t v;

    q->nbrokers = h->config_array_len(ins, "brokers");
    if (q->nbrokers == 0 || q->nbrokers > MQ_BROKERS_MAX) {
        h->log(ins, NULL, KFG_LOG_ERROR, "brokers: 1..%d URLs", MQ_BROKERS_MAX);
        return KFG_EINVAL;
    }
    for (size_t i = 0; i < q->nbrokers; i++) {
        if (mqt_url_parse(h->config_array_string(ins, "brokers", i), &q->brokers[i], why,
                          sizeof why) != 0) {
            h->log(ins, NULL, KFG_LOG_ERROR, "brokers: %s", why);
            return KFG_EINVAL;
        }
        if (q->brokers[i].tls != q->brokers[0].tls) {
            h->log(ins, NULL, KFG_LOG_ERROR, "brokers: mixing mqtt:// and mqtts:// in one "
                   "instance is not supported");
            return KFG_EINVAL;
        }
    }
    const char *cid = opt_string(q, "client_id");
    if (cid)
        snprintf(q->client_id, sizeof q->client_id, "%s", cid);
    else
        snprintf(q->client_id, sizeof q->client_id, "kfgate-%s", q->name);
    if (strlen(q->client_id) > 120) {
        h->log(ins, NULL, KFG_LOG_ERROR, "client_id longer than 120 bytes");
        return KFG_EINVAL;
    }
    q->clean = h->config_bool(ins, "clean_session");
    const char *proto = h->config_string(ins, "protocol");
    if (proto && (!strcmp(proto, "5") || !strcmp(proto, "5.0"))) {
        q->v5 = 1;
    } else if (!proto || strcmp(proto, "3.1.1")) {
        h->log(ins, NULL, KFG_LOG_ERROR, "protocol must be \"3.1.1\" or \"5\"");
        return KFG_EINVAL;
    }
    if ((rc = cfg_int(q, "session_expiry_s", 0, UINT32_MAX, &q->session_expiry)) ||
        (rc = cfg_int(q, "keepalive_s", 5, 3600, &v)))
        return rc;
    q->keepalive = (int)v;
    if ((rc = cfg_int(q, "connect_timeout_ms", 100, 600000, &q->connect_timeout)) ||
        (rc = cfg_int(q, "reconnect_min_ms", 10, 3600000, &q->rc_min)) ||
        (rc = cfg_int(q, "reconnect_max_ms", 10, 3600000, &q->rc_max)))
        return rc;
    if (q->rc_max < q->rc_min)
        q->rc_max = q->rc_min;
    if ((rc = cfg_int(q, "qos", 0, 2, &v)))
        return rc;
    q->qos = (int)v;
    if ((rc = cfg_int(q, "publish_qos", 0, 2, &v)))
        return rc;
    q->pub_qos = (int)v;
    if ((rc = cfg_int(q, "max_pending", 1, 1000000, &v)))
        return rc;
    q->max_pending = (size_t)v;
    if ((rc = cfg_int(q, "outbound_queue", 0, 10000000, &v)))
        return rc;
    q->q_max = (size_t)v;
    if ((rc = cfg_int(q, "outbound_queue_ms", 0, 86400000, &q->q_ms)) ||
        (rc = cfg_int(q, "publish_timeout_ms", 100, 86400000, &q->pub_timeout)))
        return rc;

    /* Filters. */
    q->nfilters = h->config_array_len(ins, "subscribe");
    if (q->nfilters == 0 || q->nfilters > MQ_FILTERS_MAX) {
        h->log(ins, NULL, KFG_LOG_ERROR, "subscribe: 1..%d topic filters", MQ_FILTERS_MAX);
        return KFG_EINVAL;
    }
    q->filters = calloc(q->nfilters, sizeof *q->filters);
    if (!q->filters)
        return KFG_ENOMEM;
    if ((rc = tmpl_key(q, "conversation", &q->t_conv, &(int){ 0 })) ||
        (rc = tmpl_key(q, "sender", &q->t_sender, &(int){ 0 })))
        return rc;
    int have_conv = opt_string(q, "conversation") != NULL;
    int have_sender = opt_string(q, "sender") != NULL;
    for (size_t i = 0; i < q->nfilters; i++) {
        const char *spec = h->config_array_string(ins, "subscribe", i);
        struct mqt_filter *f = &q->filters[i];
        if (mqt_filter_parse(spec ? spec : "", f, why, sizeof why) != 0) {
            h->log(ins, NULL, KFG_LOG_ERROR, "subscribe: %s", why);
            return KFG_EINVAL;
        }
        q->subs[i] = f->sub;
        /* Every default template must be satisfiable by every filter that
         * does not map the key itself. */
        const struct mqt_tmpl *t[2] = { have_conv ? &q->t_conv : NULL,
                                        have_sender ? &q->t_sender : NULL };
        const char *keys[2] = { "conversation.id", "sender.id" };
        for (int k = 0; k < 2; k++) {
            int own = 0;
            for (size_t m = 0; m < f->nmap; m++)
                own |= !strcmp(f->map[m].key, keys[k]);
            if (own || !t[k])
                continue;
            for (size_t s = 0; s + 1 < t[k]->nseg; s++)
                if (mqt_filter_cap(f, t[k]->seg[s].name) < 0) {
                    h->log(ins, NULL, KFG_LOG_ERROR, "subscribe \"%s\": the %s template "
                           "uses {%s}, which this filter does not capture", spec,
                           k ? "sender" : "conversation", t[k]->seg[s].name);
                    return KFG_EINVAL;
                }
        }
    }

    /* Payload mapping. */
    struct mqt_map *mp = &q->map;
    const char *fmt = h->config_string(ins, "format");
    if (!fmt || !strcmp(fmt, "json"))
        mp->format = MQT_JSON;
    else if (!strcmp(fmt, "msgpack"))
        mp->format = MQT_MSGPACK;
    else if (!strcmp(fmt, "raw"))
        mp->format = MQT_RAW;
    else {
        h->log(ins, NULL, KFG_LOG_ERROR, "format must be json, msgpack or raw");
        return KFG_EINVAL;
    }
    if ((rc = cfg_int(q, "max_payload", 1, 256 << 20, &v)))
        return rc;
    mp->max_payload = (size_t)v;
    if ((rc = cfg_int(q, "max_text", 1, 1 << 20, &v)))
        return rc;
    mp->max_text = (size_t)v;
    mp->max_id = 256;
    mp->event_name = opt_string(q, "event_name");
    if (!mp->event_name || strlen(mp->event_name) > 128) {
        h->log(ins, NULL, KFG_LOG_ERROR, "event_name: 1..128 bytes");
        return KFG_EINVAL;
    }
    mp->raw_ctype = opt_string(q, "raw_ctype");
    if (!mp->raw_ctype)
        mp->raw_ctype = "application/octet-stream";
    mp->raw_text = h->config_bool(ins, "raw_text");
    mp->keep_raw = h->config_bool(ins, "keep_raw");
    if ((rc = ptr_key(q, "json_text", &mp->p_text)) ||
        (rc = ptr_key(q, "json_event", &mp->p_event)) ||
        (rc = ptr_key(q, "json_value", &mp->p_value)) ||
        (rc = ptr_key(q, "json_conversation", &mp->p_conversation)) ||
        (rc = ptr_key(q, "json_sender", &mp->p_sender)) ||
        (rc = ptr_key(q, "json_ts", &mp->p_ts)))
        return rc;
    size_t nf = h->config_array_len(ins, "json_fields");
    for (size_t i = 0; i < nf; i++)
        if (mqt_map_add_field(mp, h->config_array_string(ins, "json_fields", i), why,
                              sizeof why) != 0) {
            h->log(ins, NULL, KFG_LOG_ERROR, "%s", why);
            return KFG_EINVAL;
        }
    if (mp->format == MQT_RAW && (mp->p_text || mp->p_event || mp->p_value ||
                                  mp->p_conversation || mp->p_sender || mp->p_ts || nf))
        h->log(ins, NULL, KFG_LOG_WARN, "format raw: the json_* pointers are ignored");
    mp->conversation = have_conv ? &q->t_conv : NULL;
    mp->sender = have_sender ? &q->t_sender : NULL;
    const char *dd = opt_string(q, "dedupe");
    if (dd) {
        if (!strcmp(dd, "correlation_data")) {
            if (!q->v5) {
                h->log(ins, NULL, KFG_LOG_ERROR, "dedupe = \"correlation_data\" needs "
                       "protocol = \"5\"");
                return KFG_EINVAL;
            }
            mp->idem_correlation = 1;
        } else if (mqt_pointer_valid(dd) && *dd && mp->format != MQT_RAW) {
            mp->p_idem = dd;
        } else {
            h->log(ins, NULL, KFG_LOG_ERROR, "dedupe must be \"correlation_data\" or a JSON "
                   "pointer into a json/msgpack payload (\"/msg_id\")");
            return KFG_EINVAL;
        }
    }
    const char *bp = h->config_string(ins, "bad_payload");
    if (!bp || !strcmp(bp, "event"))
        q->bad_event = 1;
    else if (strcmp(bp, "drop")) {
        h->log(ins, NULL, KFG_LOG_ERROR, "bad_payload must be \"event\" or \"drop\"");
        return KFG_EINVAL;
    }

    /* Outbound. */
    if ((rc = tmpl_key(q, "publish_topic", &q->t_pub, &q->have_pub)))
        return rc;
    const char *pf = h->config_string(ins, "publish_format");
    if (pf && !strcmp(pf, "text"))
        q->pub_text = 1;
    else if (pf && strcmp(pf, "json")) {
        h->log(ins, NULL, KFG_LOG_ERROR, "publish_format must be json or text");
        return KFG_EINVAL;
    }

    /* The client. */
    /* Reference counted inside libmosquitto 2.0 (shared by every copy of
     * this .so a reload loads), so one init per instance, one cleanup. */
    mosquitto_lib_init();
    q->lib_ref = 1;
    q->mosq = mosquitto_new(q->client_id, q->clean, q);
    if (!q->mosq) {
        h->log(ins, NULL, KFG_LOG_ERROR, "mosquitto_new: %s", strerror(errno));
        return KFG_ENOMEM;
    }
    /* Threaded mode makes libmosquitto queue every packet for
     * mosquitto_loop_write instead of writing from inside the API calls
     * and its own read handler: the hold of ACK AFTER COMMIT above. */
    mosquitto_threaded_set(q->mosq, true);
    mosquitto_int_option(q->mosq, MOSQ_OPT_PROTOCOL_VERSION,
                         q->v5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311);
    if ((rc = cfg_int(q, "receive_maximum", 1, 65535, &v)))
        return rc;
    mosquitto_int_option(q->mosq, MOSQ_OPT_RECEIVE_MAXIMUM, (int)v);
    mosquitto_int_option(q->mosq, MOSQ_OPT_TCP_NODELAY, 1);
    const char *user = opt_string(q, "username"), *pass = opt_string(q, "password");
    if ((user || pass) && mosquitto_username_pw_set(q->mosq, user ? user : "", pass) != 0) {
        h->log(ins, NULL, KFG_LOG_ERROR, "username/password rejected by libmosquitto");
        return KFG_EINVAL;
    }
    const char *ca = opt_string(q, "tls_ca"), *cert = opt_string(q, "tls_cert"),
               *key = opt_string(q, "tls_key");
    if (q->brokers[0].tls) {
        if (!!cert != !!key) {
            h->log(ins, NULL, KFG_LOG_ERROR, "tls_cert and tls_key go together");
            return KFG_EINVAL;
        }
        int trc = ca ? mosquitto_tls_set(q->mosq, ca, NULL, cert, key, NULL)
                     : mosquitto_int_option(q->mosq, MOSQ_OPT_TLS_USE_OS_CERTS, 1);
        if (trc == MOSQ_ERR_SUCCESS && !ca && cert)
            trc = mosquitto_tls_set(q->mosq, NULL, "/etc/ssl/certs", cert, key, NULL);
        if (trc == MOSQ_ERR_SUCCESS)
            trc = mosquitto_tls_opts_set(q->mosq, 1, NULL, NULL);
        if (trc != MOSQ_ERR_SUCCESS) {
            h->log(ins, NULL, KFG_LOG_ERROR, "TLS setup (tls_ca %s, tls_cert %s): %s",
                   ca ? ca : "-", cert ? cert : "-", mosq_err(trc));
            return KFG_EINVAL;
        }
        mosquitto_tls_insecure_set(q->mosq, false);
    } else if (ca || cert || key) {
        h->log(ins, NULL, KFG_LOG_WARN, "tls_* keys are ignored for mqtt:// brokers");
    }
    q->v5_session = q->v5 && !q->clean && !q->brokers[0].tls && q->session_expiry > 0;
    if (q->v5 && !q->clean && q->brokers[0].tls)
        h->log(ins, NULL, KFG_LOG_WARN, "MQTT 5 over mqtts://: the session ends at each "
               "disconnect (no Session Expiry Interval, spec/mqtt.md section 6.4); use "
               "protocol 3.1.1 for a durable session");
    mosquitto_connect_v5_callback_set(q->mosq, on_connect);
    mosquitto_disconnect_v5_callback_set(q->mosq, on_disconnect);
    mosquitto_message_v5_callback_set(q->mosq, on_message);
    mosquitto_publish_v5_callback_set(q->mosq, on_publish);
    mosquitto_subscribe_v5_callback_set(q->mosq, on_subscribe);
    mosquitto_log_callback_set(q->mosq, on_log);

    q->m_conn = h->metric_gauge(ins, "mqtt_connected", "1 while connected to a broker.", NULL);
    q->m_queue = h->metric_gauge(ins, "mqtt_outbound_queued",
                                 "Outbound messages waiting for a connection.", NULL);
    q->m_pending = h->metric_gauge(ins, "mqtt_inbound_pending",
                                   "Inbound messages handed to the gateway, not yet journaled.",
                                   NULL);
    q->m_connects = h->metric_counter(ins, "mqtt_connects_total", "Successful connections.",
                                      NULL);
    q->m_lat = h->metric_histogram(ins, "mqtt_publish_ack_seconds",
                                   "From publish to the broker's acknowledgement.", NULL);
    for (int i = 0; i < IN__N; i++)
        q->m_in[i] = h->metric_counter(ins, "mqtt_messages_in_total",
                                       "Inbound device messages by outcome.", in_label[i]);
    for (int i = 0; i < OUT__N; i++)
        q->m_out[i] = h->metric_counter(ins, "mqtt_messages_out_total",
                                        "Outbound publishes by outcome.", out_label[i]);
    for (int i = 1; i < MQT_E__N; i++) {
        char l[64];
        snprintf(l, sizeof l, "reason=\"%s\"", mqt_err_code(i));
        q->m_err[i] = h->metric_counter(ins, "mqtt_errors_total",
                                        "Inbound payloads refused, by reason.", l);
    }
    q->m_err[0] = q->m_err[MQT_E_SINK];
    if (!q->m_conn || !q->m_queue || !q->m_pending || !q->m_connects || !q->m_lat)
        return KFG_ENOMEM;
    for (int i = 0; i < MQT_E__N; i++)
        if (!q->m_err[i])
            return KFG_ENOMEM;
    for (int i = 0; i < IN__N; i++)
        if (!q->m_in[i])
            return KFG_ENOMEM;
    for (int i = 0; i < OUT__N; i++)
        if (!q->m_out[i])
            return KFG_ENOMEM;
    return KFG_OK;
}

static void mq_cleanup(struct mq *q)
{
    if (q->mosq) {
        mosquitto_destroy(q->mosq);
        q->mosq = NULL;
    }
    if (q->lib_ref) {
        q->lib_ref = 0;
        mosquitto_lib_cleanup();
    }
    free(q->filters);
    q->filters = NULL;
}

static int mq_init(struct kfg_instance *ins, const struct kfg_host *host, void *ctx)
{
    struct mq *q = ctx;
    q->ins = ins;
    q->host = host;
    q->name = host->instance_name(ins);
    q->fd = -1;
    q->probe_fd = -1;
    snprintf(q->status, sizeof q->status, "not started");
    int rc = mq_init_inner(q);
    if (rc != KFG_OK)
        mq_cleanup(q);
    return rc;
}

static int mq_start(void *ctx)
{
    struct mq *q = ctx;
    q->base = q->host->loop_base(q->host->loop_current());
    if (!q->base) {
        q->host->log(q->ins, NULL, KFG_LOG_ERROR, "no event loop");
        return KFG_EFAIL;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    /* The instance's own jitter source: random() is the process's. */
    q->rng = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40) ^
             (uint64_t)(uintptr_t)q;
    if (!q->rng)
        q->rng = 0x9e3779b97f4a7c15ull;
    q->running = 1;
    q->t_misc = q->host->timer_start(q->ins, 1000, 1, on_misc, q);
    if (!q->t_misc)
        return KFG_ENOMEM;
    do_connect(q);      /* asynchronous: a broker that is down only delays */
    const struct mqt_url *b = &q->brokers[q->broker];
    q->host->log(q->ins, NULL, KFG_LOG_INFO, "MQTT %s client %s for %s://%s:%d, %zu filter(s)",
                 q->v5 ? "5" : "3.1.1", q->client_id, b->tls ? "mqtts" : "mqtt", b->host,
                 b->port, q->nfilters);
    return KFG_OK;
}

static int mq_stop(void *ctx)
{
    struct mq *q = ctx;
    q->running = 0;
    /* A pending timer keeps the instance referenced: none may outlive stop. */
    if (q->t_reconnect)
        q->host->timer_free(q->t_reconnect);
    if (q->t_misc)
        q->host->timer_free(q->t_misc);
    if (q->t_retry)
        q->host->timer_free(q->t_retry);
    q->t_reconnect = q->t_misc = q->t_retry = NULL;
    probe_close(q);
    struct job *j;
    while ((j = q_pop(q)))
        job_finish(j, KFG_RETRY, "mqtt:stopping", "the instance is stopping");
    while ((j = q->fl_head)) {
        fl_remove(q, j);
        job_finish(j, KFG_RETRY, "mqtt:stopping", "the instance stopped before the broker "
                   "acknowledged the publish");
    }
    /* Messages whose emit must be retried are not journaled: closing
     * without their PUBACKs makes the broker redeliver them later. */
    while (q->retry_head) {
        struct inmsg *im = q->retry_head;
        q->retry_head = im->next;
        q->host->msg_free(im->m);
        q->pending--;
        if (im->qos > 0)
            q->pending_qos--;
        free(im);
        drop_unacked(q, "stopping with messages the gateway has not taken");
    }
    q->retry_tail = NULL;
    if (q->pending) {
        q->stopping = 1;
        update_io(q);
        q->host->log(q->ins, NULL, KFG_LOG_INFO, "stopping, %zu message(s) being journaled",
                     q->pending);
        return KFG_AGAIN;
    }
    if (mosquitto_socket(q->mosq) >= 0) {
        mosquitto_loop_write(q->mosq, 1);
        mosquitto_disconnect(q->mosq);
        mosquitto_loop_write(q->mosq, 1);
    }
    update_io(q);
    return KFG_OK;
}

static int mq_health(void *ctx, char *detail, size_t cap)
{
    struct mq *q = ctx;
    if (q->connected && q->sub_error[0]) {
        snprintf(detail, cap, "%s", q->sub_error);
        return KFG_EFAIL;
    }
    if (q->connected)
        return KFG_OK;
    snprintf(detail, cap, "not connected: %s", q->status[0] ? q->status : "connecting");
    return KFG_EFAIL;
}

static void mq_destroy(void *ctx)
{
    struct mq *q = ctx;
    if (q->t_misc)
        q->host->timer_free(q->t_misc);
    if (q->t_reconnect)
        q->host->timer_free(q->t_reconnect);
    if (q->t_retry)
        q->host->timer_free(q->t_retry);
    q->t_misc = q->t_reconnect = q->t_retry = NULL;
    if (q->ev_set)
        event_del(&q->ev);
    q->ev_set = 0;
    probe_close(q);
    /* The host finished deliveries still held here after a drain timeout;
     * only the memory is ours. */
    struct job *j;
    while ((j = q->q_head)) {
        q->q_head = j->next;
        free(j);
    }
    while ((j = q->fl_head)) {
        q->fl_head = j->next;
        free(j);
    }
    while (q->retry_head) {
        struct inmsg *im = q->retry_head;
        q->retry_head = im->next;
        q->host->msg_free(im->m);
        free(im);
    }
    mq_cleanup(q);
}

KFG_PLUGIN_EXPORT = {
    KFG_PLUGIN_HEADER,
    .kind = KFG_KIND_ADAPTER,
    .name = "mqtt",
    .version = MQ_VERSION,
    .description = "MQTT 3.1.1/5 devices through a broker (libmosquitto on the control loop)",
    .config = mq_config,
    .ctx_size = sizeof(struct mq),
    .init = mq_init,
    .start = mq_start,
    .stop = mq_stop,
    .destroy = mq_destroy,
    .health = mq_health,
    .deliver = mq_deliver,
};
