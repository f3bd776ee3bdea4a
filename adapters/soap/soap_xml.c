/* The hardened SOAP parser, envelopes and faults; see soap.h. */
#include "soap.h"

#include <libxml/parser.h>
#include <libxml/parserInternals.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void soap_fault_set(struct soap_fault *f, int http, int code, const char *sub,
                    const char *fmt, ...)
{
    f->http = http;
    f->code = code;
    f->sub = sub;
    f->retry_after = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->reason, sizeof f->reason, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------------------
 * Output.
 */
static int sb_grow(struct soap_buf *b, size_t n)
{
    if (b->oom)
        return -1;
    if (b->len + n + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + n + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void sb_put(struct soap_buf *b, const void *s, size_t n)
{
    if (sb_grow(b, n) != 0)
        return;
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void sb_puts(struct soap_buf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

void sb_esc(struct soap_buf *b, const char *s, size_t n)
{
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *rep = NULL;
        switch (c) {
        case '&': rep = "&amp;"; break;
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '"': rep = "&quot;"; break;
        case '\'': rep = "&apos;"; break;
        case '\r': rep = "&#13;"; break;
        default:
            /* XML 1.0 has no place for other C0 controls. */
            if (c < 0x20 && c != '\t' && c != '\n')
                rep = "\xEF\xBF\xBD";
        }
        if (rep) {
            sb_put(b, s + run, i - run);
            sb_puts(b, rep);
            run = i + 1;
        }
    }
    sb_put(b, s + run, n - run);
}

void sb_printf(struct soap_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        sb_put(b, tmp, (size_t)n);
        return;
    }
    if (sb_grow(b, (size_t)n) != 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void sb_free(struct soap_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}

const char *soap_ctype(int version)
{
    return version == 12 ? SOAP_CT12 : SOAP_CT11;
}

void soap_env_begin(struct soap_buf *b, int version)
{
    if (version == 12)
        sb_puts(b, "<?xml version=\"1.0\" encoding=\"utf-8\"?>"
                   "<env:Envelope xmlns:env=\"" SOAP_NS12 "\" xmlns:kfg=\"" SOAP_KFG_NS
                   "\"><env:Body>");
    else
        sb_puts(b, "<?xml version=\"1.0\" encoding=\"utf-8\"?>"
                   "<soap:Envelope xmlns:soap=\"" SOAP_NS11 "\" xmlns:kfg=\"" SOAP_KFG_NS
                   "\"><soap:Body>");
}

void soap_env_end(struct soap_buf *b, int version)
{
    sb_puts(b, version == 12 ? "</env:Body></env:Envelope>" : "</soap:Body></soap:Envelope>");
}

static void fault_detail(struct soap_buf *b, const struct soap_fault *f, const char *rid)
{
    sb_puts(b, "<kfg:fault><kfg:code>");
    sb_puts(b, f->sub ? f->sub : "Error");
    sb_puts(b, "</kfg:code>");
    if (rid) {
        sb_puts(b, "<kfg:requestId>");
        sb_esc(b, rid, strlen(rid));
        sb_puts(b, "</kfg:requestId>");
    }
    if (f->retry_after)
        sb_printf(b, "<kfg:retryAfter>%d</kfg:retryAfter>", f->retry_after);
    sb_puts(b, "</kfg:fault>");
}

void soap_fault_xml(struct soap_buf *b, int version, const struct soap_fault *f,
                    const char *rid)
{
    if (version == 12) {
        sb_puts(b, "<?xml version=\"1.0\" encoding=\"utf-8\"?>"
                   "<env:Envelope xmlns:env=\"" SOAP_NS12 "\" xmlns:kfg=\"" SOAP_KFG_NS "\">");
        if (f->code == SOAP_FC_VERSION)
            sb_puts(b, "<env:Header><env:Upgrade>"
                       "<env:SupportedEnvelope qname=\"e12:Envelope\" xmlns:e12=\"" SOAP_NS12
                       "\"/><env:SupportedEnvelope qname=\"e11:Envelope\" xmlns:e11=\""
                       SOAP_NS11 "\"/></env:Upgrade></env:Header>");
        const char *v = f->code == SOAP_FC_SERVER    ? "env:Receiver"
                        : f->code == SOAP_FC_VERSION ? "env:VersionMismatch"
                        : f->code == SOAP_FC_MUST    ? "env:MustUnderstand"
                                                     : "env:Sender";
        sb_puts(b, "<env:Body><env:Fault><env:Code><env:Value>");
        sb_puts(b, v);
        sb_puts(b, "</env:Value>");
        if (f->sub) {
            sb_puts(b, "<env:Subcode><env:Value>kfg:");
            sb_puts(b, f->sub);
            sb_puts(b, "</env:Value></env:Subcode>");
        }
        sb_puts(b, "</env:Code><env:Reason><env:Text xml:lang=\"en\">");
        sb_esc(b, f->reason, strlen(f->reason));
        sb_puts(b, "</env:Text></env:Reason><env:Detail>");
        fault_detail(b, f, rid);
        sb_puts(b, "</env:Detail></env:Fault></env:Body></env:Envelope>");
    } else {
        const char *v = f->code == SOAP_FC_SERVER    ? "soap:Server"
                        : f->code == SOAP_FC_VERSION ? "soap:VersionMismatch"
                        : f->code == SOAP_FC_MUST    ? "soap:MustUnderstand"
                                                     : "soap:Client";
        sb_puts(b, "<?xml version=\"1.0\" encoding=\"utf-8\"?>"
                   "<soap:Envelope xmlns:soap=\"" SOAP_NS11 "\" xmlns:kfg=\"" SOAP_KFG_NS
                   "\"><soap:Body><soap:Fault><faultcode>");
        sb_puts(b, v);
        sb_puts(b, "</faultcode><faultstring xml:lang=\"en\">");
        sb_esc(b, f->reason, strlen(f->reason));
        sb_puts(b, "</faultstring><detail>");
        fault_detail(b, f, rid);
        sb_puts(b, "</detail></soap:Fault></soap:Body></soap:Envelope>");
    }
}

/* ---------------------------------------------------------------------------
 * Parser contexts.
 */
#define POOL_MAX 64

struct soap_pool {
    pthread_mutex_t mu;
    xmlParserCtxtPtr free[POOL_MAX];
    size_t n;
};

/* Defence in depth behind the byte scan for "<!DOCTYPE": if the parser ever
 * reaches a document type declaration, it stops before the internal subset
 * (where entities would be declared) is read. */
static void no_internal_subset(void *ctx, const xmlChar *name, const xmlChar *eid,
                               const xmlChar *sid)
{
    (void)name;
    (void)eid;
    (void)sid;
    xmlStopParser((xmlParserCtxtPtr)ctx);
}

static xmlEntityPtr no_entity(void *ctx, const xmlChar *name)
{
    (void)name;
    xmlStopParser((xmlParserCtxtPtr)ctx);
    return NULL;
}

struct soap_pool *soap_pool_new(void)
{
    struct soap_pool *p = calloc(1, sizeof *p);
    if (p)
        pthread_mutex_init(&p->mu, NULL);
    return p;
}

void soap_pool_free(struct soap_pool *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++)
        xmlFreeParserCtxt(p->free[i]);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

static xmlParserCtxtPtr pool_take(struct soap_pool *p)
{
    xmlParserCtxtPtr c = NULL;
    if (p) {
        pthread_mutex_lock(&p->mu);
        if (p->n)
            c = p->free[--p->n];
        pthread_mutex_unlock(&p->mu);
    }
    if (!c) {
        c = xmlNewParserCtxt();
        if (c && c->sax) {
            c->sax->internalSubset = no_internal_subset;
            c->sax->externalSubset = no_internal_subset;
            c->sax->getEntity = no_entity;
            c->sax->getParameterEntity = no_entity;
        }
    }
    return c;
}

static void pool_give(struct soap_pool *p, xmlParserCtxtPtr c)
{
    if (!c)
        return;
    if (p) {
        pthread_mutex_lock(&p->mu);
        if (p->n < POOL_MAX) {
            p->free[p->n++] = c;
            c = NULL;
        }
        pthread_mutex_unlock(&p->mu);
    }
    if (c)
        xmlFreeParserCtxt(c);
}

/* ---------------------------------------------------------------------------
 * Node helpers.
 */
static int streq(const xmlChar *a, const char *b)
{
    return a && strcmp((const char *)a, b) == 0;
}

int soap_is(xmlNodePtr n, const char *ns, const char *local)
{
    return n && n->type == XML_ELEMENT_NODE && streq(n->name, local) &&
           (ns ? n->ns && streq(n->ns->href, ns) : !n->ns);
}

xmlNodePtr soap_child(xmlNodePtr n, const char *ns, const char *local)
{
    for (xmlNodePtr c = n ? n->children : NULL; c; c = c->next)
        if (soap_is(c, ns, local))
            return c;
    return NULL;
}

static xmlNodePtr first_elem(xmlNodePtr c)
{
    while (c && c->type != XML_ELEMENT_NODE)
        c = c->next;
    return c;
}

struct kfg_str soap_trim(struct kfg_str s)
{
    while (s.len && (*s.ptr == ' ' || *s.ptr == '\t' || *s.ptr == '\n' || *s.ptr == '\r')) {
        s.ptr++;
        s.len--;
    }
    while (s.len && (s.ptr[s.len - 1] == ' ' || s.ptr[s.len - 1] == '\t' ||
                     s.ptr[s.len - 1] == '\n' || s.ptr[s.len - 1] == '\r'))
        s.len--;
    return s;
}

struct kfg_str soap_text(struct soap_doc *d, xmlNodePtr n)
{
    static const char empty[] = "";
    struct kfg_str s = { empty, 0 };
    if (!n)
        return s;
    xmlNodePtr c = n->children;
    if (!c)
        return s;
    if (!c->next && (c->type == XML_TEXT_NODE || c->type == XML_CDATA_SECTION_NODE)) {
        s.ptr = c->content ? (const char *)c->content : empty;
        s.len = c->content ? strlen(s.ptr) : 0;
        return s;
    }
    if (d->ntmp == d->captmp) {
        size_t cap = d->captmp ? d->captmp * 2 : 8;
        char **t = realloc(d->tmp, cap * sizeof *t);
        if (!t)
            return (struct kfg_str){ NULL, 0 };
        d->tmp = t;
        d->captmp = cap;
    }
    xmlChar *v = xmlNodeGetContent(n);
    if (!v)
        return (struct kfg_str){ NULL, 0 };
    d->tmp[d->ntmp++] = (char *)v;
    s.ptr = (const char *)v;
    s.len = strlen(s.ptr);
    return s;
}

static struct kfg_str attr(xmlNodePtr n, const char *name, const char *ns)
{
    xmlAttrPtr a = xmlHasNsProp(n, (const xmlChar *)name, (const xmlChar *)ns);
    if (!a || a->type != XML_ATTRIBUTE_NODE)
        return (struct kfg_str){ NULL, 0 };
    xmlNodePtr t = a->children;
    if (t && !t->next && t->type == XML_TEXT_NODE && t->content)
        return (struct kfg_str){ (const char *)t->content, strlen((const char *)t->content) };
    return (struct kfg_str){ "", 0 };
}

static int str_eq(struct kfg_str s, const char *z)
{
    size_t n = strlen(z);
    return s.ptr && s.len == n && memcmp(s.ptr, z, n) == 0;
}

/* ---------------------------------------------------------------------------
 * Content types.
 */
struct kfg_str soap_unquote(struct kfg_str s)
{
    s = soap_trim(s);
    if (s.len >= 2 && s.ptr[0] == '"' && s.ptr[s.len - 1] == '"') {
        s.ptr++;
        s.len -= 2;
    }
    return s;
}

static int ieq(const char *a, size_t n, const char *z)
{
    return strlen(z) == n && strncasecmp(a, z, n) == 0;
}

int soap_ctype_version(const char *ct, size_t len, struct kfg_str *action)
{
    if (action)
        *action = (struct kfg_str){ NULL, 0 };
    if (!ct)
        return 0;
    size_t i = 0;
    while (i < len && ct[i] != ';')
        i++;
    struct kfg_str mt = soap_trim((struct kfg_str){ ct, i });
    int v = ieq(mt.ptr, mt.len, "text/xml") ? 11
            : ieq(mt.ptr, mt.len, "application/soap+xml") ? 12 : 0;
    if (!v)
        return 0;
    /* Parameters: ; name=value, value a token or a quoted string. */
    while (i < len) {
        i++;    /* ';' */
        while (i < len && (ct[i] == ' ' || ct[i] == '\t'))
            i++;
        size_t ns = i;
        while (i < len && ct[i] != '=' && ct[i] != ';')
            i++;
        struct kfg_str name = soap_trim((struct kfg_str){ ct + ns, i - ns });
        struct kfg_str val = { "", 0 };
        if (i < len && ct[i] == '=') {
            i++;
            if (i < len && ct[i] == '"') {
                size_t vs = ++i;
                while (i < len && ct[i] != '"') {
                    if (ct[i] == '\\' && i + 1 < len)
                        i++;
                    i++;
                }
                val = (struct kfg_str){ ct + vs, i - vs };
                if (i < len)
                    i++;
                while (i < len && ct[i] != ';')
                    i++;
            } else {
                size_t vs = i;
                while (i < len && ct[i] != ';')
                    i++;
                val = soap_trim((struct kfg_str){ ct + vs, i - vs });
            }
        }
        if (ieq(name.ptr, name.len, "charset")) {
            if (!ieq(val.ptr, val.len, "utf-8") && !ieq(val.ptr, val.len, "utf8"))
                return -1;
        } else if (ieq(name.ptr, name.len, "action") && action) {
            *action = val;
        }
    }
    return v;
}

/* ---------------------------------------------------------------------------
 * Parse.
 */
static int has_doctype(const char *s, size_t n)
{
    static const char pat[] = "<!doctype";
    const size_t m = sizeof pat - 1;
    const char *p = s, *end = s + n;
    while ((p = memchr(p, '<', (size_t)(end - p))) != NULL) {
        if ((size_t)(end - p) < m)
            return 0;
        if (p[1] == '!' && strncasecmp(p, pat, m) == 0)
            return 1;
        p++;
    }
    return 0;
}

static int walk_limits(xmlNodePtr root, const struct soap_limits *lim, struct soap_fault *f)
{
    unsigned depth = 1, count = 0;
    xmlNodePtr n = root;
    while (n) {
        if (n->type == XML_ELEMENT_NODE) {
            if (++count > lim->max_elements) {
                soap_fault_set(f, 500, SOAP_FC_CLIENT, "TooManyElements",
                               "the message has more than %u elements", lim->max_elements);
                return -1;
            }
            if (depth > lim->max_depth) {
                soap_fault_set(f, 500, SOAP_FC_CLIENT, "TooDeep",
                               "elements are nested deeper than %u levels", lim->max_depth);
                return -1;
            }
        } else if ((n->type == XML_TEXT_NODE || n->type == XML_CDATA_SECTION_NODE) &&
                   n->content && lim->max_field &&
                   strlen((const char *)n->content) > lim->max_field) {
            soap_fault_set(f, 500, SOAP_FC_CLIENT, "TooLarge",
                           "a text value is longer than %zu bytes", lim->max_field);
            return -1;
        } else if (n->type == XML_ENTITY_REF_NODE || n->type == XML_DTD_NODE ||
                   n->type == XML_ENTITY_DECL) {
            soap_fault_set(f, 500, SOAP_FC_CLIENT, "DtdNotAllowed",
                           "entity references and DTDs are not allowed in SOAP messages");
            return -1;
        }
        if (n->type == XML_ELEMENT_NODE && n->children) {
            n = n->children;
            depth++;
            continue;
        }
        while (n && !n->next && n != root) {
            n = n->parent;
            depth--;
        }
        if (!n || n == root)
            break;
        n = n->next;
    }
    return 0;
}

static int must_understand(struct kfg_str v)
{
    return str_eq(v, "1") || str_eq(v, "true");
}

/* Header blocks: WS-Security and WS-Addressing are ours; any other block
 * that says mustUnderstand and is meant for us is a fault. */
static int headers(struct soap_doc *d, const char *env_ns, struct soap_fault *f)
{
    for (xmlNodePtr h = first_elem(d->header ? d->header->children : NULL); h;
         h = first_elem(h->next)) {
        const char *ns = h->ns ? (const char *)h->ns->href : NULL;
        if (ns && !strcmp(ns, SOAP_WSSE_NS) && streq(h->name, "Security")) {
            if (d->has_security)
                continue;   /* the first block is the one for us */
            d->has_security = 1;
            xmlNodePtr ut = soap_child(h, SOAP_WSSE_NS, "UsernameToken");
            if (!ut)
                continue;
            struct soap_token *t = &d->tok;
            t->present = 1;
            t->user = soap_trim(soap_text(d, soap_child(ut, SOAP_WSSE_NS, "Username")));
            xmlNodePtr pw = soap_child(ut, SOAP_WSSE_NS, "Password");
            t->password = soap_text(d, pw);
            if (pw) {
                struct kfg_str ty = attr(pw, "Type", NULL);
                t->digest = ty.ptr && ty.len >= 15 &&
                            memcmp(ty.ptr + ty.len - 15, "#PasswordDigest", 15) == 0;
                if (ty.ptr && !t->digest &&
                    !(ty.len >= 13 && memcmp(ty.ptr + ty.len - 13, "#PasswordText", 13) == 0)) {
                    soap_fault_set(f, 500, SOAP_FC_CLIENT, "UnsupportedPasswordType",
                                   "wsse:Password Type must be #PasswordText or "
                                   "#PasswordDigest");
                    return -1;
                }
            }
            /* Absent elements read as "" (soap_text of NULL); ptr NULL only
             * when joining text ran out of memory. */
            xmlNodePtr no = soap_child(ut, SOAP_WSSE_NS, "Nonce");
            t->nonce = soap_trim(soap_text(d, no));
            if (no)
                t->nonce_enc = attr(no, "EncodingType", NULL);
            t->created = soap_trim(soap_text(d, soap_child(ut, SOAP_WSU_NS, "Created")));
            if (!t->user.ptr || !t->password.ptr || !t->nonce.ptr || !t->created.ptr) {
                soap_fault_set(f, 500, SOAP_FC_SERVER, "Internal", "out of memory");
                return -1;
            }
            continue;
        }
        if (ns && (!strcmp(ns, SOAP_WSA_NS) || !strcmp(ns, SOAP_WSA04_NS))) {
            if (streq(h->name, "MessageID"))
                d->wsa_message_id = soap_trim(soap_text(d, h));
            else if (streq(h->name, "Action"))
                d->wsa_action = soap_trim(soap_text(d, h));
            continue;
        }
        if (must_understand(attr(h, "mustUnderstand", env_ns))) {
            /* 1.1 actor / 1.2 role: only blocks for the next or the final
             * node are ours to understand. */
            struct kfg_str role = d->version == 12 ? attr(h, "role", env_ns)
                                                   : attr(h, "actor", env_ns);
            int ours = !role.ptr ||
                       str_eq(role, "http://schemas.xmlsoap.org/soap/actor/next") ||
                       str_eq(role, "http://www.w3.org/2003/05/soap-envelope/role/next") ||
                       str_eq(role,
                              "http://www.w3.org/2003/05/soap-envelope/role/ultimateReceiver");
            if (ours) {
                soap_fault_set(f, 500, SOAP_FC_MUST, "MustUnderstand",
                               "header block {%s}%s is marked mustUnderstand and is not "
                               "understood", ns ? ns : "", (const char *)h->name);
                return -1;
            }
        }
    }
    return 0;
}

int soap_parse(struct soap_pool *pool, const struct soap_limits *lim, const char *buf,
               size_t len, struct soap_doc *d, struct soap_fault *f)
{
    memset(d, 0, sizeof *d);
    if (len > lim->max_body || len > INT32_MAX) {
        soap_fault_set(f, 413, SOAP_FC_CLIENT, "TooLarge",
                       "the request body has %zu bytes, at most %zu are accepted", len,
                       lim->max_body);
        return -1;
    }
    if (!buf || len == 0) {
        soap_fault_set(f, 400, SOAP_FC_CLIENT, "NotSoap", "the request body is empty");
        return -1;
    }
    const unsigned char *u = (const unsigned char *)buf;
    if ((len >= 2 && ((u[0] == 0xFE && u[1] == 0xFF) || (u[0] == 0xFF && u[1] == 0xFE))) ||
        u[0] == 0 || (len >= 2 && u[1] == 0) ||
        (len >= 4 && u[0] == 0x4C && u[1] == 0x6F && u[2] == 0xA7 && u[3] == 0x94)) {
        /* UTF-16/32 (a zero byte or a BOM up front) and EBCDIC ("<?xm"):
         * the only inputs libxml2 would decode as something else than
         * UTF-8 when no encoding is forced. */
        soap_fault_set(f, 400, SOAP_FC_CLIENT, "NotUtf8",
                       "only UTF-8 encoded messages are accepted");
        return -1;
    }
    if (has_doctype(buf, len)) {
        soap_fault_set(f, 500, SOAP_FC_CLIENT, "DtdNotAllowed",
                       "a SOAP message must not contain a document type declaration "
                       "(<!DOCTYPE>); DTDs and entities are refused");
        return -1;
    }
    xmlParserCtxtPtr ctxt = pool_take(pool);
    if (!ctxt) {
        soap_fault_set(f, 500, SOAP_FC_SERVER, "Internal", "out of memory");
        return -1;
    }
    /* No NOENT (no entity substitution), no DTDLOAD/DTDATTR/DTDVALID, no
     * XINCLUDE, no HUGE (libxml2's own limits stay on), NONET. */
    const int opts = XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING |
                     XML_PARSE_NOCDATA | XML_PARSE_COMPACT | XML_PARSE_IGNORE_ENC;
    /* No forced encoding: forcing "UTF-8" runs every byte through
     * libxml2's encoder (a second copy, 10% of a push under load). What it
     * would detect instead was refused above, and IGNORE_ENC makes it
     * ignore an encoding declaration, so the input is read as UTF-8. */
    xmlDocPtr doc = xmlCtxtReadMemory(ctxt, buf, (int)len, NULL, NULL, opts);
    int stopped = ctxt->errNo == XML_ERR_USER_STOP;
    if (!doc || !ctxt->wellFormed || stopped) {
        if (stopped)
            soap_fault_set(f, 500, SOAP_FC_CLIENT, "DtdNotAllowed",
                           "DTDs and entity references are refused");
        else {
            const xmlError *e = &ctxt->lastError;
            char msg[200];
            snprintf(msg, sizeof msg, "%s", e->message ? e->message : "not well-formed");
            size_t ml = strlen(msg);
            while (ml && (msg[ml - 1] == '\n' || msg[ml - 1] == ' '))
                msg[--ml] = '\0';
            soap_fault_set(f, 400, SOAP_FC_CLIENT, "MalformedXml",
                           "the request is not well-formed XML (line %d: %s)", e->line, msg);
        }
        if (doc)
            xmlFreeDoc(doc);
        pool_give(pool, ctxt);
        return -1;
    }
    pool_give(pool, ctxt);
    d->doc = doc;
    if (doc->intSubset || doc->extSubset) {
        soap_fault_set(f, 500, SOAP_FC_CLIENT, "DtdNotAllowed", "DTDs are refused");
        return -1;
    }
    xmlNodePtr root = xmlDocGetRootElement(doc);
    if (!root) {
        soap_fault_set(f, 400, SOAP_FC_CLIENT, "NotSoap", "the document has no root element");
        return -1;
    }
    if (walk_limits(root, lim, f) != 0)
        return -1;
    if (!streq(root->name, "Envelope")) {
        soap_fault_set(f, 400, SOAP_FC_CLIENT, "NotSoap",
                       "the root element is <%s>, not a SOAP Envelope", (const char *)root->name);
        return -1;
    }
    const char *ns = root->ns ? (const char *)root->ns->href : "";
    if (!strcmp(ns, SOAP_NS11)) {
        d->version = 11;
    } else if (!strcmp(ns, SOAP_NS12)) {
        d->version = 12;
    } else {
        soap_fault_set(f, 500, SOAP_FC_VERSION, "VersionMismatch",
                       "the Envelope namespace \"%s\" is neither SOAP 1.1 (" SOAP_NS11
                       ") nor SOAP 1.2 (" SOAP_NS12 ")", ns);
        return -1;
    }
    xmlNodePtr c = first_elem(root->children);
    if (soap_is(c, ns, "Header")) {
        d->header = c;
        c = first_elem(c->next);
    }
    if (!soap_is(c, ns, "Body")) {
        soap_fault_set(f, 500, SOAP_FC_CLIENT, "BadEnvelope",
                       "the Envelope must hold an optional Header and then a Body");
        return -1;
    }
    d->body = c;
    if (first_elem(c->next)) {
        soap_fault_set(f, 500, SOAP_FC_CLIENT, "BadEnvelope",
                       "nothing may follow the Body in the Envelope");
        return -1;
    }
    d->op = first_elem(c->children);
    if (d->op && first_elem(d->op->next)) {
        soap_fault_set(f, 500, SOAP_FC_CLIENT, "BadEnvelope",
                       "the Body must hold exactly one element (document/literal)");
        return -1;
    }
    if (headers(d, ns, f) != 0)
        return -1;
    return 0;
}

void soap_doc_free(struct soap_doc *d)
{
    for (size_t i = 0; i < d->ntmp; i++)
        xmlFree(d->tmp[i]);
    free(d->tmp);
    if (d->doc)
        xmlFreeDoc(d->doc);
    memset(d, 0, sizeof *d);
}

int soap_reply_parse(struct soap_pool *pool, const char *body, size_t len,
                     struct soap_reply *r)
{
    memset(r, 0, sizeof *r);
    struct soap_limits lim = { .max_body = 4u << 20, .max_depth = 64, .max_elements = 100000,
                               .max_field = 0 };
    struct soap_doc d;
    struct soap_fault f;
    if (soap_parse(pool, &lim, body, len, &d, &f) != 0) {
        int soapish = d.version != 0;
        soap_doc_free(&d);
        return soapish ? 0 : -1;
    }
    const char *ns = d.version == 12 ? SOAP_NS12 : SOAP_NS11;
    if (soap_is(d.op, ns, "Fault")) {
        r->fault = 1;
        struct kfg_str code, reason;
        if (d.version == 12) {
            code = soap_trim(soap_text(&d, soap_child(soap_child(d.op, ns, "Code"), ns, "Value")));
            reason = soap_trim(soap_text(&d, soap_child(soap_child(d.op, ns, "Reason"), ns, "Text")));
        } else {
            code = soap_trim(soap_text(&d, soap_child(d.op, NULL, "faultcode")));
            reason = soap_trim(soap_text(&d, soap_child(d.op, NULL, "faultstring")));
        }
        snprintf(r->faultcode, sizeof r->faultcode, "%.*s", (int)code.len,
                 code.ptr ? code.ptr : "");
        snprintf(r->reason, sizeof r->reason, "%.*s", (int)reason.len,
                 reason.ptr ? reason.ptr : "");
        const char *local = strchr(r->faultcode, ':');
        local = local ? local + 1 : r->faultcode;
        r->code = !strncmp(local, "Client", 6) || !strncmp(local, "Sender", 6) ||
                          !strncmp(local, "DataEncodingUnknown", 19)
                      ? SOAP_FC_CLIENT
                  : !strncmp(local, "VersionMismatch", 15) ? SOAP_FC_VERSION
                  : !strncmp(local, "MustUnderstand", 14)  ? SOAP_FC_MUST
                                                           : SOAP_FC_SERVER;
    }
    soap_doc_free(&d);
    return 0;
}
