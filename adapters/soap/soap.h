/*
 * kfgate SOAP adapter: the parts that need no host.
 *
 * Plain C over libxml2 and OpenSSL's libcrypto, so the unit tests
 * (soap_*_test.c, cmocka) and the libFuzzer harness (soap_fuzz.c) link it
 * without a gateway; soap_plugin.c glues it to <kfgate/plugin.h>.
 *
 *   soap_xml.c    the hardened parser (no DTD, no entities, no network,
 *                 size/depth/element limits), envelope checks in both SOAP
 *                 versions, header blocks (WS-Security, WS-Addressing,
 *                 mustUnderstand), output buffers, envelopes and faults
 *   soap_sec.c    UsernameToken PasswordText/PasswordDigest, Created window,
 *                 the nonce replay cache, HTTP Basic, constant-time compares
 *   soap_ops.c    dispatch (Body element + SOAPAction/action), kfgate's own
 *                 operations and the XPath mapping of a foreign operation,
 *                 written through a sink; the whole request pipeline
 *                 (soap_process) that the plugin and the fuzzer call
 *   soap_store.c  the bounded status table (message id / idem -> record)
 *
 * OWNERSHIP, once for this header: every struct kfg_str a function fills
 * points into the parsed document (struct soap_doc) or into the caller's
 * request and lives as long as that; strings a soap_* function returns as
 * `char *` are malloc'd for the caller; config structs are built once at
 * init and read-only afterwards (safe from every worker), except the
 * objects that say they lock.
 */
#ifndef KFGATE_SOAP_H
#define KFGATE_SOAP_H

#include <kfgate/plugin.h>

#include <libxml/tree.h>
#include <libxml/xpath.h>
#include <pthread.h>
#include <kfgate/envelope.h>
#include <stddef.h>
#include <stdint.h>

#define SOAP_NS11 "http://schemas.xmlsoap.org/soap/envelope/"
#define SOAP_NS12 "http://www.w3.org/2003/05/soap-envelope"
#define SOAP_KFG_NS "urn:kfgate:soap:1"
#define SOAP_WSSE_NS \
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
#define SOAP_WSU_NS \
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
#define SOAP_UTP_NS \
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
#define SOAP_WSA_NS "http://www.w3.org/2005/08/addressing"
#define SOAP_WSA04_NS "http://schemas.xmlsoap.org/ws/2004/08/addressing"

#define SOAP_ACTION_BASE "urn:kfgate:soap:1/"
#define SOAP_CT11 "text/xml; charset=utf-8"
#define SOAP_CT12 "application/soap+xml; charset=utf-8"

/* ---------------------------------------------------------------------------
 * Faults. `code` is the fault class; the 1.1 faultcode and the 1.2
 * Code/Value follow from it and the version; `sub` is the kfg: subcode
 * (1.2 Subcode, 1.1 detail) naming the problem in one word.
 */
enum soap_fc {
    SOAP_FC_CLIENT = 1,      /* 1.1 Client, 1.2 Sender */
    SOAP_FC_SERVER,          /* 1.1 Server, 1.2 Receiver */
    SOAP_FC_VERSION,         /* VersionMismatch (both) */
    SOAP_FC_MUST,            /* MustUnderstand (both) */
};

struct soap_fault {
    int http;                /* 0 = no fault */
    int code;                /* enum soap_fc */
    const char *sub;         /* static: "MalformedXml", "AuthenticationFailed" */
    char reason[320];
    int retry_after;         /* seconds for a Retry-After header; 0 = none */
};

void soap_fault_set(struct soap_fault *f, int http, int code, const char *sub,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* ---------------------------------------------------------------------------
 * Output buffer. Growth failure sets oom and drops further writes, so a
 * writer checks once at the end.
 */
struct soap_buf {
    char *p;
    size_t len, cap;
    int oom;
};

void sb_put(struct soap_buf *b, const void *s, size_t n);
void sb_puts(struct soap_buf *b, const char *s);
/* XML-escaped text (& < > " '); invalid control bytes become U+FFFD. */
void sb_esc(struct soap_buf *b, const char *s, size_t n);
void sb_printf(struct soap_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_free(struct soap_buf *b);

/* "<e:Envelope xmlns:e=...><e:Body>" and its end, in version 11 or 12. */
void soap_env_begin(struct soap_buf *b, int version);
void soap_env_end(struct soap_buf *b, int version);
/* A whole fault envelope. request_id may be NULL. */
void soap_fault_xml(struct soap_buf *b, int version, const struct soap_fault *f,
                    const char *request_id);
const char *soap_ctype(int version);

/* ---------------------------------------------------------------------------
 * Parsing. A pool of libxml2 parser contexts shared by the workers (locked):
 * creating one per request costs more than the parse of a small envelope.
 */
struct soap_limits {
    size_t max_body;         /* bytes */
    unsigned max_depth;      /* element nesting */
    unsigned max_elements;   /* elements in the document */
    size_t max_field;        /* bytes of one text value */
};

struct soap_pool;
struct soap_pool *soap_pool_new(void);
void soap_pool_free(struct soap_pool *p);

/* What the header blocks said. */
struct soap_token {
    int present;             /* a wsse:UsernameToken was found */
    int digest;              /* Password Type is #PasswordDigest */
    struct kfg_str user, password, nonce, created;
    struct kfg_str nonce_enc;    /* EncodingType attribute, ptr NULL if absent */
};

struct soap_doc {
    xmlDocPtr doc;
    int version;             /* 11 or 12 */
    xmlNodePtr header, body, op;
    struct kfg_str wsa_message_id, wsa_action;
    int has_security;
    struct soap_token tok;
    char **tmp;              /* text values that had to be joined */
    size_t ntmp, captmp;
};

/* Parses and checks an envelope. Returns 0, or fills f and returns -1.
 * Faults: DtdNotAllowed, NotUtf8, MalformedXml (400), NotSoap (400),
 * VersionMismatch, TooLarge, TooDeep, TooManyElements, BadEnvelope,
 * MustUnderstand, BadHeader. */
int soap_parse(struct soap_pool *pool, const struct soap_limits *lim, const char *buf,
               size_t len, struct soap_doc *d, struct soap_fault *f);
void soap_doc_free(struct soap_doc *d);

/* The text content of an element: a pointer into the document when it is
 * one text node (the usual case), else joined into d->tmp. ptr NULL on
 * out of memory. */
struct kfg_str soap_text(struct soap_doc *d, xmlNodePtr n);
/* First element child of n with that local name in namespace ns. */
xmlNodePtr soap_child(xmlNodePtr n, const char *ns, const char *local);
/* Leading and trailing XML whitespace removed. */
struct kfg_str soap_trim(struct kfg_str s);
/* 1 when the node is an element named ns:local. */
int soap_is(xmlNodePtr n, const char *ns, const char *local);

/* Content type of a request: 11 for text/xml, 12 for application/soap+xml
 * (its action parameter, unquoted, into *action), 0 for anything else.
 * A charset other than UTF-8 is refused (-1). */
int soap_ctype_version(const char *ct, size_t len, struct kfg_str *action);
/* SOAPAction header value without its quotes. */
struct kfg_str soap_unquote(struct kfg_str s);

/* ---------------------------------------------------------------------------
 * Security.
 */
struct soap_user {
    char *name, *pass;
    size_t nlen, plen;
};

enum soap_auth_mode {
    SOAP_AUTH_NONE = 0,      /* open (must be configured explicitly) */
    SOAP_AUTH_WSSE,          /* UsernameToken required */
    SOAP_AUTH_BASIC,         /* HTTP Basic required */
    SOAP_AUTH_EITHER,        /* one of the two */
    SOAP_AUTH_BOTH,          /* both, same or different users */
};

struct soap_nonces;          /* locked: safe from every worker */

struct soap_sec {
    int mode;                /* enum soap_auth_mode */
    const struct soap_user *users;
    size_t nusers;
    int allow_text;          /* PasswordText accepted */
    int text_needs_created;  /* PasswordText also needs Nonce + Created */
    int64_t window_s;        /* |now - Created| allowed */
    struct soap_nonces *nonces;
};

/* 1 when equal; time depends on the lengths only. */
int soap_ct_equal(const void *a, size_t alen, const void *b, size_t blen);
/* RFC 4648 base64 (no line breaks). Returns the decoded length or -1. */
long soap_b64_decode(const char *in, size_t n, unsigned char *out, size_t cap);
/* Writes NUL-terminated base64 of n bytes; out needs 4*((n+2)/3)+1. */
void soap_b64_encode(const unsigned char *in, size_t n, char *out);
/* xs:dateTime ("2026-12-02T16:50:53.123Z", offsets allowed; no zone =
 * UTC) to ms since the epoch. 0 or -1. */
int soap_datetime(const char *s, size_t n, int64_t *ms);
/* "YYYY-MM-DDThh:mm:ss.mmmZ" + NUL into out[25]. */
void soap_datetime_fmt(int64_t ms, char out[25]);
/* Base64(SHA1(nonce + created + password)) into out[29]. */
void soap_digest_b64(const void *nonce, size_t nlen, const char *created, size_t clen,
                     const char *pass, size_t plen, char out[29]);

struct soap_nonces *soap_nonces_new(size_t cap);
void soap_nonces_free(struct soap_nonces *n);
/* 0: new, recorded until expires_s; 1: seen before; -1: cache full of
 * live nonces (refuse: evicting one would allow its replay). */
int soap_nonce_check(struct soap_nonces *n, const char *user, size_t ulen, const void *nonce,
                     size_t nlen, int64_t expires_s, int64_t now_s);

/* Checks the request against s->mode. authz: the Authorization header (ptr
 * NULL if absent). On success *principal is the user (borrowed from s) or
 * NULL when the mode is NONE; returns 0. Else fills f, returns -1. */
int soap_authenticate(const struct soap_sec *s, const struct soap_doc *d, struct kfg_str authz,
                      int64_t now_s, const struct soap_user **principal, struct soap_fault *f);

/* ---------------------------------------------------------------------------
 * Operations and mapping.
 */
enum soap_op {
    SOAP_OP_NONE = 0,
    SOAP_OP_PUSH_MESSAGE,
    SOAP_OP_PUSH_EVENT,
    SOAP_OP_GET_STATUS,
    SOAP_OP_MAPPED,
};
/* Local name of the operation's request element ("PushMessage"). */
const char *soap_op_name(int op);


#define SOAP_MAP_FIELDS_MAX 32
#define SOAP_MAP_NS_MAX 16

struct soap_xpool;           /* compiled XPath sets, locked */

/* A foreign operation: request element, XPath expressions relative to it,
 * namespace prefixes for them, and the answer's element template. */
struct soap_map {
    int enabled;
    size_t nns;
    struct {
        char prefix[32];
        char *uri;
    } ns[SOAP_MAP_NS_MAX];
    char op_local[128];
    char *op_ns;
    char *action;            /* expected SOAPAction/action, NULL = any */
    const char *type;        /* "message" / "event" */
    /* Expressions (index into expr[]): conversation, sender, text, event,
     * idem, then fields. -1 = not mapped. */
    int x_conv, x_sender, x_text, x_event, x_idem;
    size_t nfields;
    struct {
        char key[128];
        int x;
    } fields[SOAP_MAP_FIELDS_MAX];
    size_t nexpr;
    char *expr[SOAP_MAP_FIELDS_MAX + 5];
    char *response;          /* template with {id} {envelope_id} {seq} {status} {idem} */
    struct soap_xpool *xpool;
};

/* Builds map from config strings; 0, or -1 with why. Call soap_map_free. */
int soap_map_set_op(struct soap_map *m, const char *qname, char *why, size_t cap);
int soap_map_add_ns(struct soap_map *m, const char *spec, char *why, size_t cap);
int soap_map_add_expr(struct soap_map *m, const char *key, const char *expr, int *slot,
                      char *why, size_t cap);
int soap_map_add_field(struct soap_map *m, const char *spec, char *why, size_t cap);
/* After all the above: compiles and test-evaluates every expression and
 * checks the response template is well-formed. */
int soap_map_finish(struct soap_map *m, char *why, size_t cap);
void soap_map_free(struct soap_map *m);

/* Fills a response template: placeholders from vals (XML-escaped). */
struct soap_vals {
    const char *id, *envelope_id, *seq, *status, *idem;
};
void soap_template(struct soap_buf *b, const char *tpl, const struct soap_vals *v);
/* The general form: {k} -> v (vlen 0 = strlen); unknown {x} stay as text. */
struct soap_kv {
    const char *k, *v;
    size_t vlen;
};
void soap_template_kv(struct soap_buf *b, const char *tpl, const struct soap_kv *kv,
                      size_t n);

/* What a SOAP answer (of an outbound call) says: fault or not, its class
 * and reason. Returns 0 when body is a SOAP envelope, else -1. */
struct soap_reply {
    int fault;               /* 1 when the Body holds a Fault */
    int code;                /* enum soap_fc of the fault */
    char faultcode[64];      /* as received, e.g. "soap:Client" */
    char reason[200];
};
int soap_reply_parse(struct soap_pool *pool, const char *body, size_t len,
                     struct soap_reply *r);

/* The request pipeline for one POST, everything but the emit. */
struct soap_in {
    const char *body;
    size_t len;
    struct kfg_str ctype, soapaction, authz;
    int64_t now_ms;
    const char *msg_id;      /* the adapter's id for a new message (36 chars) */
};

struct soap_out {
    int version;             /* of the answer: 11 or 12 */
    int op;                  /* enum soap_op */
    int built;               /* the sink holds a message to emit */
    char idem[512];          /* "" = none */
    size_t idem_len;
    char query[256];         /* GetMessageStatus: the id asked for */
    const struct soap_user *principal;
    struct soap_fault fault; /* fault.http != 0: answer with it */
};

struct soap_cfg {
    struct soap_limits lim;
    struct soap_sec sec;
    const struct soap_map *map;      /* NULL: kfgate's operations only */
    int keep_raw;
    int native;              /* kfgate's own operations enabled */
    struct soap_pool *pool;
};

/* Parses, authenticates, dispatches and (for pushes) writes the message
 * into the sink. Returns with out->fault set on any refusal (the sink's
 * message, if begun, is the caller's to free). */
void soap_process(const struct soap_cfg *c, const struct soap_in *in,
                  const struct kfg_msg_sink *s, struct soap_out *out);

/* ---------------------------------------------------------------------------
 * Status table: bounded, locked, oldest record evicted first. A record is
 * reachable by up to three keys (adapter message id, envelope id, idem).
 */
struct soap_store;

struct soap_rec {
    char id[64];             /* adapter message id (inbound) or envelope id */
    char envelope_id[64];
    char idem[512];
    char dir[4];             /* "in" / "out" */
    char status[16];         /* accepted, dropped, sending, retrying, sent, failed */
    uint64_t seq;
    unsigned attempts;
    char code[48];
    char detail[200];
    int64_t created_ms, updated_ms;
};

struct soap_store *soap_store_new(size_t cap);
void soap_store_free(struct soap_store *s);
/* Inserts or updates the record whose id is r->id (keys envelope_id and idem
 * are added when non-empty). */
void soap_store_put(struct soap_store *s, const struct soap_rec *r);
/* Copies the record reachable by key into *out; 0, or -1 when unknown. */
int soap_store_get(struct soap_store *s, const char *key, size_t klen, struct soap_rec *out);
size_t soap_store_count(struct soap_store *s);

/* Lowercase UUIDv7 (36 chars + NUL). */
void soap_uuid7(char out[37], int64_t now_ms);

#endif /* KFGATE_SOAP_H */
