/* Dispatch, kfgate's operations, XPath mapping, the pipeline; see soap.h. */
#include "soap.h"

#include <kfgate/envelope.h>

#include <libxml/parser.h>
#include <libxml/xpathInternals.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ID 256

static const char *const op_names[] = { "", "PushMessage", "PushEvent", "GetMessageStatus",
                                        "" };

const char *soap_op_name(int op)
{
    return op >= 0 && op <= SOAP_OP_MAPPED ? op_names[op] : "";
}

static int set_s(const struct kfg_msg_sink *s, const char *key, struct kfg_str v)
{
    return s->set(s->arg, key, v.ptr, v.len);
}

/* ---------------------------------------------------------------------------
 * kfgate's own operations. Children in the kfgate namespace, any order;
 * unknown children are refused so a typo is not silently dropped.
 */
struct fields {
    struct kfg_str v[24];
    xmlNodePtr parts[64];
    size_t nparts;
    xmlNodePtr data[64];
    size_t ndata;
};

static int name_is(xmlNodePtr n, const char *z)
{
    return !strcmp((const char *)n->name, z);
}

/* Collects the children of op into f by their position in `names`. */
static int collect(struct soap_doc *d, xmlNodePtr op, const char *const *names,
                   const struct soap_limits *lim, struct fields *f, struct soap_fault *fa)
{
    memset(f, 0, sizeof *f);
    const char *opn = (const char *)op->name;
    for (xmlNodePtr c = op->children; c; c = c->next) {
        if (c->type != XML_ELEMENT_NODE)
            continue;
        if (!c->ns || strcmp((const char *)c->ns->href, SOAP_KFG_NS) != 0) {
            soap_fault_set(fa, 500, SOAP_FC_CLIENT, "InvalidField",
                           "%s: element <%s> is not in the kfgate namespace " SOAP_KFG_NS, opn,
                           (const char *)c->name);
            return -1;
        }
        if (name_is(c, "part") && names[0] && !strcmp(names[0], "+parts")) {
            if (f->nparts == 64) {
                soap_fault_set(fa, 500, SOAP_FC_CLIENT, "InvalidField",
                               "%s: more than 64 parts", opn);
                return -1;
            }
            f->parts[f->nparts++] = c;
            continue;
        }
        if (name_is(c, "data")) {
            if (f->ndata == 64) {
                soap_fault_set(fa, 500, SOAP_FC_CLIENT, "InvalidField",
                               "%s: more than 64 data entries", opn);
                return -1;
            }
            f->data[f->ndata++] = c;
            continue;
        }
        size_t i = 1;
        for (; names[i]; i++)
            if (name_is(c, names[i]))
                break;
        if (!names[i]) {
            soap_fault_set(fa, 500, SOAP_FC_CLIENT, "InvalidField",
                           "%s: unknown element <%s>", opn, (const char *)c->name);
            return -1;
        }
        if (f->v[i].ptr) {
            soap_fault_set(fa, 500, SOAP_FC_CLIENT, "InvalidField",
                           "%s: <%s> given twice", opn, names[i]);
            return -1;
        }
        struct kfg_str t = soap_text(d, c);
        if (!t.ptr) {
            soap_fault_set(fa, 500, SOAP_FC_SERVER, "Internal", "out of memory");
            return -1;
        }
        f->v[i] = t;
        (void)lim;
    }
    return 0;
}

static int need(struct kfg_str v, const char *op, const char *name, size_t max,
                struct soap_fault *f)
{
    if (!v.ptr || !soap_trim(v).len) {
        soap_fault_set(f, 500, SOAP_FC_CLIENT, "MissingField", "%s: <%s> is required", op, name);
        return -1;
    }
    if (max && v.len > max) {
        soap_fault_set(f, 500, SOAP_FC_CLIENT, "InvalidField",
                       "%s: <%s> is longer than %zu bytes", op, name, max);
        return -1;
    }
    return 0;
}

static int opt(struct kfg_str v, const char *op, const char *name, size_t max,
               struct soap_fault *f)
{
    if (v.ptr && v.len > max) {
        soap_fault_set(f, 500, SOAP_FC_CLIENT, "InvalidField",
                       "%s: <%s> is longer than %zu bytes", op, name, max);
        return -1;
    }
    return 0;
}

#define SINKFAIL(rc)                                                                    \
    do {                                                                                \
        if ((rc) < 0) {                                                                 \
            soap_fault_set(fa, 500, SOAP_FC_SERVER, "Internal",                         \
                           "the message could not be built (%d)", (int)(rc));          \
            return -1;                                                                  \
        }                                                                               \
    } while (0)

static int set_opt(const struct kfg_msg_sink *s, const char *key, struct kfg_str v)
{
    return v.ptr ? set_s(s, key, soap_trim(v)) : KFG_OK;
}

static int is_uint(struct kfg_str v)
{
    v = soap_trim(v);
    if (!v.len || v.len > 19)
        return 0;
    for (size_t i = 0; i < v.len; i++)
        if (v.ptr[i] < '0' || v.ptr[i] > '9')
            return 0;
    return 1;
}

static int is_num(struct kfg_str v, double lo, double hi)
{
    v = soap_trim(v);
    char b[48];
    if (!v.len || v.len >= sizeof b)
        return 0;
    memcpy(b, v.ptr, v.len);
    b[v.len] = '\0';
    char *end;
    double x = strtod(b, &end);
    return *end == '\0' && isfinite(x) && x >= lo && x <= hi;
}

/* The parts of kfgate's Part type, in the order of the WSDL. */
static const char *const part_names[] = {
    NULL, "kind", "text", "format", "url", "mediaId", "mime", "size", "name", "title",
    "description", "lat", "lon", "label", NULL,
};
static const char *const part_keys[] = {
    NULL, NULL, "text", "format", "url", "media_id", "mime", "size", "name", "title",
    "description", "lat", "lon", "label", NULL,
};

static int build_part(struct soap_doc *d, xmlNodePtr pn, size_t idx, const char *op,
                      const struct soap_limits *lim, const struct kfg_msg_sink *s,
                      struct soap_fault *fa)
{
    struct fields f;
    if (collect(d, pn, part_names, lim, &f, fa) != 0)
        return -1;
    if (f.ndata) {
        soap_fault_set(fa, 500, SOAP_FC_CLIENT, "InvalidField", "%s: part[%zu]: unknown <data>",
                       op, idx);
        return -1;
    }
    struct kfg_str kind = soap_trim(f.v[1]);
    char what[48];
    snprintf(what, sizeof what, "part[%zu]", idx);
    if (!kind.ptr || !kind.len) {
        soap_fault_set(fa, 500, SOAP_FC_CLIENT, "MissingField", "%s: %s: <kind> is required", op,
                       what);
        return -1;
    }
    char k[32];
    if (kind.len >= sizeof k) {
        soap_fault_set(fa, 500, SOAP_FC_CLIENT, "InvalidField", "%s: %s: <kind> is too long", op,
                       what);
        return -1;
    }
    memcpy(k, kind.ptr, kind.len);
    k[kind.len] = '\0';
    int media = !strcmp(k, "image") || !strcmp(k, "voice") || !strcmp(k, "video") ||
                !strcmp(k, "file");
    const char *miss = NULL;
    if (!strcmp(k, "text")) {
        if (!f.v[2].ptr)
            miss = "text";
    } else if (media) {
        if (!f.v[4].ptr && !f.v[5].ptr)
            miss = "url or mediaId";
    } else if (!strcmp(k, "location")) {
        if (!f.v[11].ptr || !f.v[12].ptr)
            miss = "lat and lon";
    } else if (!strcmp(k, "link")) {
        if (!f.v[4].ptr)
            miss = "url";
    } else if (strncmp(k, "x-", 2) != 0) {
        soap_fault_set(fa, 500, SOAP_FC_CLIENT, "InvalidField",
                       "%s: %s: kind \"%s\" is not text, image, voice, video, file, location, "
                       "link or an x- extension", op, what, k);
        return -1;
    }
    if (miss) {
        soap_fault_set(fa, 500, SOAP_FC_CLIENT, "MissingField",
                       "%s: %s: a %s part needs <%s>", op, what, k, miss);
        return -1;
    }
    if (f.v[7].ptr && !is_uint(f.v[7])) {
        soap_fault_set(fa, 500, SOAP_FC_CLIENT, "InvalidField",
                       "%s: %s: <size> must be an unsigned integer", op, what);
        return -1;
    }
    if ((f.v[11].ptr && !is_num(f.v[11], -90, 90)) || (f.v[12].ptr && !is_num(f.v[12], -180, 180))) {
        soap_fault_set(fa, 500, SOAP_FC_CLIENT, "InvalidField",
                       "%s: %s: <lat> must be -90..90 and <lon> -180..180", op, what);
        return -1;
    }
    if (f.v[2].ptr && lim->max_field && f.v[2].len > lim->max_field) {
        soap_fault_set(fa, 500, SOAP_FC_CLIENT, "InvalidField",
                       "%s: %s: <text> is longer than %zu bytes", op, what, lim->max_field);
        return -1;
    }
    int p = s->part_add(s->arg, k);
    SINKFAIL(p);
    for (size_t i = 2; part_names[i]; i++) {
        if (!f.v[i].ptr)
            continue;
        /* Text keeps its whitespace; everything else is a token. */
        struct kfg_str v = i == 2 ? f.v[i] : soap_trim(f.v[i]);
        SINKFAIL(s->part_set(s->arg, p, part_keys[i], v.ptr, v.len));
    }
    return 0;
}

/* <data><key>k</key><value>v</value></data> -> channel_data.k */
static int build_data(struct soap_doc *d, struct fields *f, const char *op,
                      const struct kfg_msg_sink *s, struct soap_fault *fa)
{
    for (size_t i = 0; i < f->ndata; i++) {
        xmlNodePtr kn = soap_child(f->data[i], SOAP_KFG_NS, "key");
        xmlNodePtr vn = soap_child(f->data[i], SOAP_KFG_NS, "value");
        struct kfg_str k = soap_trim(soap_text(d, kn)), v = soap_text(d, vn);
        if (!kn || !k.len || k.len > 64) {
            soap_fault_set(fa, 500, SOAP_FC_CLIENT, "MissingField",
                           "%s: data[%zu]: <key> of 1..64 bytes is required", op, i);
            return -1;
        }
        for (size_t j = 0; j < k.len; j++) {
            char c = k.ptr[j];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-')) {
                soap_fault_set(fa, 500, SOAP_FC_CLIENT, "InvalidField",
                               "%s: data[%zu]: <key> may hold only A-Z a-z 0-9 _ -", op, i);
                return -1;
            }
        }
        if (!strncmp(k.ptr, "soap_", 5)) {
            soap_fault_set(fa, 500, SOAP_FC_CLIENT, "InvalidField",
                           "%s: data[%zu]: keys starting with soap_ are the adapter's", op, i);
            return -1;
        }
        char key[96];
        snprintf(key, sizeof key, "channel_data.%.*s", (int)k.len, k.ptr);
        SINKFAIL(s->set(s->arg, key, v.ptr ? v.ptr : "", v.ptr ? v.len : 0));
    }
    return 0;
}

static int set_time(const struct kfg_msg_sink *s, struct kfg_str v, const char *op,
                    struct soap_fault *fa)
{
    if (!v.ptr)
        return 0;
    v = soap_trim(v);
    int64_t ms;
    if (soap_datetime(v.ptr, v.len, &ms) != 0) {
        soap_fault_set(fa, 500, SOAP_FC_CLIENT, "InvalidField",
                       "%s: <timestamp> is not an xs:dateTime", op);
        return -1;
    }
    SINKFAIL(s->set_int(s->arg, KFG_ENV_TS_CHANNEL, ms));
    return 0;
}

static int sender(const struct kfg_msg_sink *s, struct kfg_str id, const struct soap_user *p,
                  const char *op, struct soap_fault *fa)
{
    if (id.ptr && soap_trim(id).len) {
        if (need(id, op, "senderId", MAX_ID, fa) != 0)
            return -1;
        SINKFAIL(set_s(s, KFG_ENV_SENDER_ID, soap_trim(id)));
        return 0;
    }
    if (!p) {
        soap_fault_set(fa, 500, SOAP_FC_CLIENT, "MissingField",
                       "%s: <senderId> is required when the request is not authenticated", op);
        return -1;
    }
    SINKFAIL(s->set(s->arg, KFG_ENV_SENDER_ID, p->name, p->nlen));
    return 0;
}

static const char *const msg_names[] = {
    "+parts", "conversationId", "conversationKind", "conversationName", "conversationThread",
    "senderId", "senderName", "senderRole", "recipientId", "replyTo", "timestamp", "text",
    "format", NULL,
};

static int push_message(struct soap_doc *d, const struct soap_cfg *c, const struct soap_out *o,
                        const struct kfg_msg_sink *s, struct soap_fault *fa)
{
    const char *op = "PushMessage";
    struct fields f;
    if (collect(d, d->op, msg_names, &c->lim, &f, fa) != 0)
        return -1;
    if (need(f.v[1], op, "conversationId", MAX_ID, fa) || opt(f.v[2], op, "conversationKind", 64, fa) ||
        opt(f.v[3], op, "conversationName", MAX_ID, fa) ||
        opt(f.v[4], op, "conversationThread", MAX_ID, fa) || opt(f.v[6], op, "senderName", MAX_ID, fa) ||
        opt(f.v[7], op, "senderRole", 64, fa) || opt(f.v[8], op, "recipientId", MAX_ID, fa) ||
        opt(f.v[9], op, "replyTo", 64, fa) || opt(f.v[12], op, "format", 16, fa))
        return -1;
    if (!f.v[11].ptr && !f.nparts) {
        soap_fault_set(fa, 500, SOAP_FC_CLIENT, "MissingField",
                       "PushMessage: a <text> or at least one <part> is required");
        return -1;
    }
    if (f.v[11].ptr && c->lim.max_field && f.v[11].len > c->lim.max_field) {
        soap_fault_set(fa, 500, SOAP_FC_CLIENT, "InvalidField",
                       "PushMessage: <text> is longer than %zu bytes", c->lim.max_field);
        return -1;
    }
    if (f.v[12].ptr) {
        struct kfg_str fm = soap_trim(f.v[12]);
        if (!(fm.len == 5 && !memcmp(fm.ptr, "plain", 5)) &&
            !(fm.len == 8 && !memcmp(fm.ptr, "markdown", 8)) &&
            !(fm.len == 4 && !memcmp(fm.ptr, "html", 4))) {
            soap_fault_set(fa, 500, SOAP_FC_CLIENT, "InvalidField",
                           "PushMessage: <format> must be plain, markdown or html");
            return -1;
        }
    }
    SINKFAIL(s->begin(s->arg, KFG_ENV_TYPE_MESSAGE));
    SINKFAIL(set_s(s, KFG_ENV_CONVERSATION_ID, soap_trim(f.v[1])));
    SINKFAIL(set_opt(s, KFG_ENV_CONVERSATION_KIND, f.v[2]));
    SINKFAIL(set_opt(s, KFG_ENV_CONVERSATION_NAME, f.v[3]));
    SINKFAIL(set_opt(s, KFG_ENV_CONVERSATION_THREAD, f.v[4]));
    if (sender(s, f.v[5], o->principal, op, fa) != 0)
        return -1;
    SINKFAIL(set_opt(s, KFG_ENV_SENDER_NAME, f.v[6]));
    SINKFAIL(set_opt(s, KFG_ENV_SENDER_ROLE, f.v[7]));
    SINKFAIL(set_opt(s, KFG_ENV_RECIPIENT_ID, f.v[8]));
    SINKFAIL(set_opt(s, KFG_ENV_REPLY_TO, f.v[9]));
    if (set_time(s, f.v[10], op, fa) != 0)
        return -1;
    if (f.v[11].ptr) {
        int p = s->part_add(s->arg, KFG_ENV_KIND_TEXT);
        SINKFAIL(p);
        SINKFAIL(s->part_set(s->arg, p, KFG_ENV_P_TEXT, f.v[11].ptr, f.v[11].len));
        if (f.v[12].ptr) {
            struct kfg_str fm = soap_trim(f.v[12]);
            SINKFAIL(s->part_set(s->arg, p, KFG_ENV_P_FORMAT, fm.ptr, fm.len));
        }
    }
    for (size_t i = 0; i < f.nparts; i++)
        if (build_part(d, f.parts[i], i, op, &c->lim, s, fa) != 0)
            return -1;
    return build_data(d, &f, op, s, fa);
}

static const char *const event_names[] = {
    NULL, "conversationId", "senderId", "recipientId", "timestamp", "name", "key", "value",
    NULL,
};

static int push_event(struct soap_doc *d, const struct soap_cfg *c, const struct soap_out *o,
                      const struct kfg_msg_sink *s, struct soap_fault *fa)
{
    const char *op = "PushEvent";
    struct fields f;
    if (collect(d, d->op, event_names, &c->lim, &f, fa) != 0)
        return -1;
    if (need(f.v[1], op, "conversationId", MAX_ID, fa) || need(f.v[5], op, "name", 128, fa) ||
        opt(f.v[3], op, "recipientId", MAX_ID, fa) || opt(f.v[6], op, "key", MAX_ID, fa) ||
        opt(f.v[7], op, "value", c->lim.max_field ? c->lim.max_field : 65536, fa))
        return -1;
    SINKFAIL(s->begin(s->arg, KFG_ENV_TYPE_EVENT));
    SINKFAIL(set_s(s, KFG_ENV_CONVERSATION_ID, soap_trim(f.v[1])));
    if (sender(s, f.v[2], o->principal, op, fa) != 0)
        return -1;
    SINKFAIL(set_opt(s, KFG_ENV_RECIPIENT_ID, f.v[3]));
    if (set_time(s, f.v[4], op, fa) != 0)
        return -1;
    int p = s->part_add(s->arg, KFG_ENV_KIND_EVENT);
    SINKFAIL(p);
    struct kfg_str n = soap_trim(f.v[5]);
    SINKFAIL(s->part_set(s->arg, p, KFG_ENV_P_EVENT_NAME, n.ptr, n.len));
    if (f.v[6].ptr) {
        struct kfg_str k = soap_trim(f.v[6]);
        SINKFAIL(s->part_set(s->arg, p, KFG_ENV_P_EVENT_KEY, k.ptr, k.len));
    }
    if (f.v[7].ptr)
        SINKFAIL(s->part_set(s->arg, p, KFG_ENV_P_EVENT_VALUE, f.v[7].ptr, f.v[7].len));
    return build_data(d, &f, op, s, fa);
}

/* ---------------------------------------------------------------------------
 * XPath mapping.
 */
#define XPOOL_MAX 64

struct xset {
    xmlXPathCompExprPtr e[SOAP_MAP_FIELDS_MAX + 5];
};

struct soap_xpool {
    pthread_mutex_t mu;
    struct xset *free[XPOOL_MAX];
    size_t n;
};

static void xset_free(const struct soap_map *m, struct xset *x)
{
    if (!x)
        return;
    for (size_t i = 0; i < m->nexpr; i++)
        if (x->e[i])
            xmlXPathFreeCompExpr(x->e[i]);
    free(x);
}

static void xpath_silent(void *ctx, xmlErrorPtr e)
{
    (void)ctx;
    (void)e;
}

static struct xset *xset_new(const struct soap_map *m, size_t *bad)
{
    struct xset *x = calloc(1, sizeof *x);
    /* A context only to route compile errors away from stderr. */
    xmlXPathContextPtr c = x ? xmlXPathNewContext(NULL) : NULL;
    if (!c) {
        free(x);
        return NULL;
    }
    c->error = xpath_silent;
    for (size_t i = 0; i < m->nexpr; i++) {
        x->e[i] = xmlXPathCtxtCompile(c, (const xmlChar *)m->expr[i]);
        if (!x->e[i]) {
            if (bad)
                *bad = i;
            xset_free(m, x);
            xmlXPathFreeContext(c);
            return NULL;
        }
    }
    xmlXPathFreeContext(c);
    return x;
}

/* Compiled expressions are kept per user (one request at a time): libxml2
 * does not promise that one compiled expression can be evaluated by two
 * threads at once. */
static struct xset *xset_take(const struct soap_map *m)
{
    struct soap_xpool *p = m->xpool;
    struct xset *x = NULL;
    pthread_mutex_lock(&p->mu);
    if (p->n)
        x = p->free[--p->n];
    pthread_mutex_unlock(&p->mu);
    return x ? x : xset_new(m, NULL);
}

static void xset_give(const struct soap_map *m, struct xset *x)
{
    struct soap_xpool *p = m->xpool;
    pthread_mutex_lock(&p->mu);
    if (p->n < XPOOL_MAX) {
        p->free[p->n++] = x;
        x = NULL;
    }
    pthread_mutex_unlock(&p->mu);
    xset_free(m, x);
}

int soap_map_set_op(struct soap_map *m, const char *qname, char *why, size_t cap)
{
    const char *colon = qname ? strchr(qname, ':') : NULL;
    if (!colon || colon == qname || !colon[1] || strlen(colon + 1) >= sizeof m->op_local) {
        snprintf(why, cap, "map_operation must be \"prefix:Element\" with the prefix declared "
                           "in namespaces, not \"%s\"", qname ? qname : "");
        return -1;
    }
    for (size_t i = 0; i < m->nns; i++) {
        if (strlen(m->ns[i].prefix) == (size_t)(colon - qname) &&
            !strncmp(m->ns[i].prefix, qname, (size_t)(colon - qname))) {
            m->op_ns = strdup(m->ns[i].uri);
            snprintf(m->op_local, sizeof m->op_local, "%s", colon + 1);
            m->enabled = 1;
            return m->op_ns ? 0 : -1;
        }
    }
    snprintf(why, cap, "map_operation \"%s\": prefix not declared in namespaces", qname);
    return -1;
}

int soap_map_add_ns(struct soap_map *m, const char *spec, char *why, size_t cap)
{
    const char *eq = spec ? strchr(spec, '=') : NULL;
    if (!eq || eq == spec || !eq[1] || (size_t)(eq - spec) >= sizeof m->ns[0].prefix) {
        snprintf(why, cap, "namespaces entries are \"prefix=uri\", not \"%s\"", spec ? spec : "");
        return -1;
    }
    if (m->nns == SOAP_MAP_NS_MAX) {
        snprintf(why, cap, "at most %d namespaces", SOAP_MAP_NS_MAX);
        return -1;
    }
    for (const char *p = spec; p < eq; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9' && p > spec) ||
              *p == '_' || (*p == '-' && p > spec))) {
            snprintf(why, cap, "namespace prefix in \"%s\" is not an NCName", spec);
            return -1;
        }
    memcpy(m->ns[m->nns].prefix, spec, (size_t)(eq - spec));
    m->ns[m->nns].prefix[eq - spec] = '\0';
    if (!(m->ns[m->nns].uri = strdup(eq + 1)))
        return -1;
    m->nns++;
    return 0;
}

int soap_map_add_expr(struct soap_map *m, const char *key, const char *expr, int *slot,
                      char *why, size_t cap)
{
    *slot = -1;
    if (!expr || !*expr)
        return 0;
    if (m->nexpr == SOAP_MAP_FIELDS_MAX + 5) {
        snprintf(why, cap, "%s: too many expressions", key);
        return -1;
    }
    if (!(m->expr[m->nexpr] = strdup(expr)))
        return -1;
    *slot = (int)m->nexpr++;
    return 0;
}

int soap_map_add_field(struct soap_map *m, const char *spec, char *why, size_t cap)
{
    const char *eq = spec ? strchr(spec, '=') : NULL;
    if (!eq || eq == spec || !eq[1] || (size_t)(eq - spec) >= sizeof m->fields[0].key) {
        snprintf(why, cap, "map_fields entries are \"envelope.key=xpath\", not \"%s\"",
                 spec ? spec : "");
        return -1;
    }
    if (m->nfields == SOAP_MAP_FIELDS_MAX) {
        snprintf(why, cap, "at most %d map_fields", SOAP_MAP_FIELDS_MAX);
        return -1;
    }
    size_t kl = (size_t)(eq - spec);
    static const char *const ok[] = { "sender.", "conversation.", "recipient.",
                                      "channel_data.", "reply_to", NULL };
    int allowed = 0;
    for (size_t i = 0; ok[i]; i++)
        if (!strncmp(spec, ok[i], strlen(ok[i])) && kl > strlen(ok[i]) - (ok[i][strlen(ok[i]) - 1] != '.'))
            allowed = 1;
    if (!allowed) {
        snprintf(why, cap, "map_fields \"%.*s\": only sender.*, conversation.*, recipient.*, "
                           "channel_data.* and reply_to can be mapped", (int)kl, spec);
        return -1;
    }
    memcpy(m->fields[m->nfields].key, spec, kl);
    m->fields[m->nfields].key[kl] = '\0';
    if (soap_map_add_expr(m, m->fields[m->nfields].key, eq + 1, &m->fields[m->nfields].x, why,
                          cap) != 0)
        return -1;
    m->nfields++;
    return 0;
}

static xmlXPathContextPtr xctx(const struct soap_map *m, xmlDocPtr doc, xmlNodePtr node)
{
    xmlXPathContextPtr x = xmlXPathNewContext(doc);
    if (!x)
        return NULL;
    for (size_t i = 0; i < m->nns; i++)
        if (xmlXPathRegisterNs(x, (const xmlChar *)m->ns[i].prefix,
                               (const xmlChar *)m->ns[i].uri) != 0) {
            xmlXPathFreeContext(x);
            return NULL;
        }
    x->node = node;
    return x;
}

/* String value of expression i at the context node; malloc'd (xmlFree) or
 * NULL on an evaluation error. */
static xmlChar *eval_str(xmlXPathContextPtr x, struct xset *set, int i)
{
    xmlXPathObjectPtr o = xmlXPathCompiledEval(set->e[i], x);
    if (!o)
        return NULL;
    xmlChar *s = xmlXPathCastToString(o);
    xmlXPathFreeObject(o);
    return s;
}

int soap_map_finish(struct soap_map *m, char *why, size_t cap)
{
    if (!m->enabled)
        return 0;
    if (m->x_conv < 0 || (m->x_sender < 0) || (m->x_text < 0 && m->x_event < 0)) {
        snprintf(why, cap, "a mapped operation needs map_conversation, map_sender and "
                           "map_text or map_event");
        return -1;
    }
    if (!(m->xpool = calloc(1, sizeof *m->xpool)))
        return -1;
    pthread_mutex_init(&m->xpool->mu, NULL);
    size_t bad = 0;
    struct xset *x = xset_new(m, &bad);
    if (!x) {
        snprintf(why, cap, "XPath expression \"%s\" does not compile", m->expr[bad]);
        return -1;
    }
    /* Evaluate each once on a stand-in document: an undeclared prefix or an
     * unknown function shows up now, not on the first request. */
    xmlDocPtr doc = xmlReadMemory("<x/>", 4, NULL, "UTF-8", XML_PARSE_NONET);
    xmlXPathContextPtr c = doc ? xctx(m, doc, xmlDocGetRootElement(doc)) : NULL;
    int rc = 0;
    if (!c) {
        rc = -1;
        snprintf(why, cap, "cannot set up XPath");
    }
    if (c)
        c->error = xpath_silent;
    for (size_t i = 0; c && i < m->nexpr; i++) {
        xmlChar *s = eval_str(c, x, (int)i);
        if (!s) {
            snprintf(why, cap, "XPath expression \"%s\" fails (undeclared prefix or unknown "
                               "function?)", m->expr[i]);
            rc = -1;
            break;
        }
        xmlFree(s);
    }
    if (c)
        xmlXPathFreeContext(c);
    if (doc)
        xmlFreeDoc(doc);
    xset_give(m, x);
    if (rc)
        return rc;
    if (!m->response) {
        snprintf(why, cap, "a mapped operation needs map_response (the answer's element)");
        return -1;
    }
    struct soap_buf b = { 0 };
    struct soap_vals v = { "i", "e", "1", "accepted", "k" };
    soap_template(&b, m->response, &v);
    xmlDocPtr t = b.p ? xmlReadMemory(b.p, (int)b.len, NULL, "UTF-8",
                                      XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING)
                      : NULL;
    int good = t && xmlDocGetRootElement(t) && !t->intSubset;
    if (t)
        xmlFreeDoc(t);
    sb_free(&b);
    if (!good || strstr(m->response, "<!")) {
        snprintf(why, cap, "map_response is not one well-formed XML element (namespaces "
                           "declared inside it; placeholders {id} {envelope_id} {seq} {status} "
                           "{idem})");
        return -1;
    }
    return 0;
}

void soap_map_free(struct soap_map *m)
{
    if (m->xpool) {
        for (size_t i = 0; i < m->xpool->n; i++)
            xset_free(m, m->xpool->free[i]);
        pthread_mutex_destroy(&m->xpool->mu);
        free(m->xpool);
    }
    for (size_t i = 0; i < m->nns; i++)
        free(m->ns[i].uri);
    for (size_t i = 0; i < m->nexpr; i++)
        free(m->expr[i]);
    free(m->op_ns);
    free(m->action);
    free(m->response);
    memset(m, 0, sizeof *m);
    m->x_conv = m->x_sender = m->x_text = m->x_event = m->x_idem = -1;
}

void soap_template_kv(struct soap_buf *b, const char *tpl, const struct soap_kv *kv,
                      size_t n)
{
    const char *p = tpl;
    while (*p) {
        const char *o = strchr(p, '{');
        if (!o) {
            sb_puts(b, p);
            return;
        }
        sb_put(b, p, (size_t)(o - p));
        const char *c = strchr(o + 1, '}');
        const struct soap_kv *hit = NULL;
        if (c)
            for (size_t i = 0; i < n && !hit; i++)
                if (strlen(kv[i].k) == (size_t)(c - o - 1) &&
                    !memcmp(o + 1, kv[i].k, (size_t)(c - o - 1)))
                    hit = &kv[i];
        if (hit) {
            if (hit->v)
                sb_esc(b, hit->v, hit->vlen ? hit->vlen : strlen(hit->v));
            p = c + 1;
        } else {
            sb_put(b, "{", 1);
            p = o + 1;
        }
    }
}

void soap_template(struct soap_buf *b, const char *tpl, const struct soap_vals *v)
{
    const struct soap_kv kv[] = {
        { "id", v->id, 0 }, { "envelope_id", v->envelope_id, 0 }, { "seq", v->seq, 0 },
        { "status", v->status, 0 }, { "idem", v->idem, 0 },
    };
    soap_template_kv(b, tpl, kv, sizeof kv / sizeof kv[0]);
}

static int mapped(struct soap_doc *d, const struct soap_cfg *c, struct soap_out *o,
                  const struct kfg_msg_sink *s, struct soap_fault *fa)
{
    const struct soap_map *m = c->map;
    struct xset *set = xset_take(m);
    xmlXPathContextPtr x = set ? xctx(m, d->doc, d->op) : NULL;
    if (!x) {
        if (set)
            xset_give(m, set);
        soap_fault_set(fa, 500, SOAP_FC_SERVER, "Internal", "out of memory");
        return -1;
    }
    x->error = xpath_silent;
    int rc = -1;
    xmlChar *v[SOAP_MAP_FIELDS_MAX + 5] = { 0 };
    for (size_t i = 0; i < m->nexpr; i++) {
        if (!(v[i] = eval_str(x, set, (int)i))) {
            soap_fault_set(fa, 500, SOAP_FC_SERVER, "MappingFailed",
                           "%s: XPath expression \"%s\" failed", m->op_local, m->expr[i]);
            goto out;
        }
    }
#define VAL(i) soap_trim((struct kfg_str){ (const char *)v[i], strlen((const char *)v[i]) })
    struct {
        int x;
        const char *key, *cfg;
        size_t max;
    } req[] = {
        { m->x_conv, KFG_ENV_CONVERSATION_ID, "map_conversation", MAX_ID },
        { m->x_sender, KFG_ENV_SENDER_ID, "map_sender", MAX_ID },
    };
    for (size_t i = 0; i < 2; i++) {
        struct kfg_str sv = VAL(req[i].x);
        if (!sv.len || sv.len > req[i].max) {
            soap_fault_set(fa, 500, SOAP_FC_CLIENT, sv.len ? "InvalidField" : "MissingField",
                           "%s: %s (%s) is %s", m->op_local, req[i].cfg, m->expr[req[i].x],
                           sv.len ? "longer than 256 bytes" : "empty in this request");
            goto out;
        }
    }
    struct kfg_str text = m->x_text >= 0 ? VAL(m->x_text) : (struct kfg_str){ NULL, 0 };
    struct kfg_str ev = m->x_event >= 0 ? VAL(m->x_event) : (struct kfg_str){ NULL, 0 };
    if (!text.len && !ev.len) {
        soap_fault_set(fa, 500, SOAP_FC_CLIENT, "MissingField", "%s: %s (%s) is empty in this "
                       "request", m->op_local, m->x_text >= 0 ? "map_text" : "map_event",
                       m->expr[m->x_text >= 0 ? m->x_text : m->x_event]);
        goto out;
    }
    if (text.len && c->lim.max_field && text.len > c->lim.max_field) {
        soap_fault_set(fa, 500, SOAP_FC_CLIENT, "InvalidField", "%s: map_text is longer than "
                       "%zu bytes", m->op_local, c->lim.max_field);
        goto out;
    }
    if (s->begin(s->arg, m->type) < 0)
        goto sinkfail;
    for (size_t i = 0; i < 2; i++) {
        struct kfg_str sv = VAL(req[i].x);
        if (set_s(s, req[i].key, sv) < 0)
            goto sinkfail;
    }
    if (text.len) {
        int p = s->part_add(s->arg, KFG_ENV_KIND_TEXT);
        if (p < 0 || s->part_set(s->arg, p, KFG_ENV_P_TEXT, text.ptr, text.len) < 0)
            goto sinkfail;
    }
    if (ev.len) {
        int p = s->part_add(s->arg, KFG_ENV_KIND_EVENT);
        if (p < 0 || s->part_set(s->arg, p, KFG_ENV_P_EVENT_NAME, ev.ptr, ev.len) < 0)
            goto sinkfail;
    }
    for (size_t i = 0; i < m->nfields; i++) {
        struct kfg_str fv = VAL(m->fields[i].x);
        if (!fv.len)
            continue;   /* optional: absent in this request */
        if (fv.len > 4096) {
            soap_fault_set(fa, 500, SOAP_FC_CLIENT, "InvalidField", "%s: %s (%s) is longer "
                           "than 4096 bytes", m->op_local, m->fields[i].key,
                           m->expr[m->fields[i].x]);
            goto out;
        }
        if (set_s(s, m->fields[i].key, fv) < 0)
            goto sinkfail;
    }
    if (!o->idem_len && m->x_idem >= 0) {
        struct kfg_str iv = VAL(m->x_idem);
        if (iv.len && iv.len <= 256) {
            memcpy(o->idem, iv.ptr, iv.len);
            o->idem_len = iv.len;
        }
    }
#undef VAL
    rc = 0;
    goto out;
sinkfail:
    soap_fault_set(fa, 500, SOAP_FC_SERVER, "Internal", "the message could not be built");
out:
    for (size_t i = 0; i < m->nexpr; i++)
        if (v[i])
            xmlFree(v[i]);
    xmlXPathFreeContext(x);
    xset_give(m, set);
    return rc;
}

/* ---------------------------------------------------------------------------
 * The pipeline.
 */
static int action_ok(struct kfg_str got, const char *want)
{
    if (!got.ptr || !got.len || !want)
        return 1;
    return strlen(want) == got.len && !memcmp(got.ptr, want, got.len);
}

/* idem is the escaped single component (spec/envelope.md §5). */
static int idem_escape(struct kfg_str v, char *out, size_t cap, size_t *len)
{
    size_t o = 0;
    for (size_t i = 0; i < v.len; i++) {
        char ch = v.ptr[i];
        if (ch == '%' || ch == ':') {
            if (o + 3 > cap)
                return -1;
            out[o++] = '%';
            out[o++] = ch == '%' ? '2' : '3';
            out[o++] = ch == '%' ? '5' : 'A';
        } else {
            if ((unsigned char)ch < 0x21 || o + 1 > cap)
                return -1;
            out[o++] = ch;
        }
    }
    *len = o;
    return 0;
}

void soap_process(const struct soap_cfg *c, const struct soap_in *in,
                  const struct kfg_msg_sink *s, struct soap_out *o)
{
    memset(o, 0, sizeof *o);
    struct soap_fault *f = &o->fault;
    struct kfg_str ct_action;
    int cv = soap_ctype_version(in->ctype.ptr, in->ctype.len, &ct_action);
    o->version = cv > 0 ? cv : 11;
    if (cv < 0) {
        /* Refused before parsing: nothing says it is SOAP at all, so 400. */
        soap_fault_set(f, 400, SOAP_FC_CLIENT, "UnsupportedMediaType",
                       "only charset=utf-8 is accepted");
        return;
    }
    struct soap_doc d;
    if (soap_parse(c->pool, &c->lim, in->body, in->len, &d, f) != 0) {
        if (d.version)
            o->version = d.version;
        soap_doc_free(&d);
        if (!cv && f->http == 400)
            soap_fault_set(f, 400, SOAP_FC_CLIENT, "UnsupportedMediaType",
                           "Content-Type must be text/xml (SOAP 1.1) or application/soap+xml "
                           "(SOAP 1.2)");
        return;
    }
    o->version = d.version;
    if (cv != d.version) {
        /* A SOAP envelope, so a SOAP fault with HTTP 500 like every other. */
        soap_fault_set(f, 500, SOAP_FC_CLIENT, "UnsupportedMediaType",
                       "a SOAP %s envelope must be sent as Content-Type %s",
                       d.version == 12 ? "1.2" : "1.1",
                       d.version == 12 ? "application/soap+xml" : "text/xml");
        goto out;
    }
    if (soap_authenticate(&c->sec, &d, in->authz, in->now_ms / 1000, &o->principal, f) != 0)
        goto out;
    if (!d.op) {
        soap_fault_set(f, 500, SOAP_FC_CLIENT, "UnknownOperation",
                       "the Body is empty: no operation");
        goto out;
    }
    const char *ons = d.op->ns ? (const char *)d.op->ns->href : "";
    const char *expected = NULL;
    if (c->native && !strcmp(ons, SOAP_KFG_NS)) {
        for (int i = SOAP_OP_PUSH_MESSAGE; i <= SOAP_OP_GET_STATUS; i++)
            if (name_is(d.op, op_names[i]))
                o->op = i;
    }
    static const char *const native_action[] = {
        SOAP_ACTION_BASE "PushMessage", SOAP_ACTION_BASE "PushEvent",
        SOAP_ACTION_BASE "GetMessageStatus",
    };
    if (o->op) {
        expected = native_action[o->op - 1];
    } else if (c->map && c->map->enabled && !strcmp(ons, c->map->op_ns) &&
               name_is(d.op, c->map->op_local)) {
        o->op = SOAP_OP_MAPPED;
        expected = c->map->action;
    } else {
        soap_fault_set(f, 500, SOAP_FC_CLIENT, "UnknownOperation",
                       "no operation {%s}%s on this endpoint", ons, (const char *)d.op->name);
        goto out;
    }
    struct kfg_str act = d.version == 12 ? ct_action : soap_unquote(in->soapaction);
    if (!action_ok(act, expected) || !action_ok(d.wsa_action, expected)) {
        struct kfg_str bad = action_ok(act, expected) ? d.wsa_action : act;
        soap_fault_set(f, 500, SOAP_FC_CLIENT, "ActionMismatch",
                       "action \"%.*s\" does not match operation %s (expected \"%s\")",
                       (int)(bad.len > 120 ? 120 : bad.len), bad.ptr,
                       (const char *)d.op->name, expected);
        goto out;
    }
    if (d.wsa_message_id.ptr) {
        if (!d.wsa_message_id.len || d.wsa_message_id.len > 256 ||
            idem_escape(d.wsa_message_id, o->idem, 511, &o->idem_len) != 0) {
            soap_fault_set(f, 500, SOAP_FC_CLIENT, "InvalidHeader",
                           "wsa:MessageID must be 1..256 printable characters");
            goto out;
        }
    }
    if (o->op == SOAP_OP_GET_STATUS) {
        static const char *const names[] = { NULL, "messageId", NULL };
        struct fields fl;
        if (collect(&d, d.op, names, &c->lim, &fl, f) != 0)
            goto out;
        if (fl.ndata) {
            soap_fault_set(f, 500, SOAP_FC_CLIENT, "InvalidField",
                           "GetMessageStatus: unknown element <data>");
            goto out;
        }
        struct kfg_str id = soap_trim(fl.v[1]);
        if (need(id, "GetMessageStatus", "messageId", sizeof o->query - 1, f) != 0)
            goto out;
        memcpy(o->query, id.ptr, id.len);
        o->query[id.len] = '\0';
        goto out;
    }
    int rc = o->op == SOAP_OP_PUSH_MESSAGE ? push_message(&d, c, o, s, f)
             : o->op == SOAP_OP_PUSH_EVENT ? push_event(&d, c, o, s, f)
                                           : mapped(&d, c, o, s, f);
    if (rc != 0)
        goto out;
    o->built = 1;
#define SET(k, p, n)                                                        \
    if (s->set(s->arg, k, p, n) < 0)                                        \
        goto sinkfail;
    SET(KFG_ENV_CHANNEL_MSG_ID, in->msg_id, strlen(in->msg_id));
    if (o->idem_len && o->op == SOAP_OP_MAPPED && !d.wsa_message_id.ptr) {
        /* A mapped natural key: escape it like the MessageID. */
        char tmp[512];
        size_t tl;
        if (idem_escape((struct kfg_str){ o->idem, o->idem_len }, tmp, 511, &tl) == 0) {
            memcpy(o->idem, tmp, tl);
            o->idem_len = tl;
        } else {
            o->idem_len = 0;
        }
    }
    o->idem[o->idem_len] = '\0';
    if (o->idem_len)
        SET(KFG_ENV_IDEM, o->idem, o->idem_len);
    if (d.wsa_message_id.ptr)
        SET("channel_data.soap_message_id", d.wsa_message_id.ptr, d.wsa_message_id.len);
    SET("channel_data.soap_version", d.version == 12 ? "1.2" : "1.1", 3);
    {
        const char *on = (const char *)d.op->name;
        SET("channel_data.soap_operation", on, strlen(on));
    }
    if (act.ptr && act.len)
        SET("channel_data.soap_action", act.ptr, act.len);
    if (o->principal)
        SET("channel_data.soap_principal", o->principal->name, o->principal->nlen);
    if (c->keep_raw) {
        SET(KFG_ENV_RAW_CTYPE, d.version == 12 ? "application/soap+xml" : "text/xml",
            d.version == 12 ? 20 : 8);
        SET(KFG_ENV_RAW_BODY, in->body, in->len);
    }
#undef SET
    goto out;
sinkfail:
    soap_fault_set(f, 500, SOAP_FC_SERVER, "Internal", "the message could not be built");
out:
    soap_doc_free(&d);
}
