/*
 * The WeChat callback XML, parsed safely with libxml2, and the passive reply
 * XML. No dependency on the gateway.
 *
 * Parsing: libxml2 with XML_PARSE_NONET, without DTD loading, attribute
 * defaults, validation or entity substitution; the input is read as UTF-8
 * whatever it declares; any "<!DOCTYPE" (in any case) is refused before
 * libxml2 sees the input, and a document that still carries a DTD is
 * refused after. The root must be <xml>. Its direct child elements become
 * fields: name -> the concatenation of all its text and CDATA children (a
 * value may span several CDATA sections). A name appearing twice is
 * refused (ambiguous). Nested elements (Articles, ScanCodeInfo, ...) keep an
 * empty value.
 *
 * Call wx_xml_init() once from a single thread before any parse (the
 * plugin's init does), never xmlCleanupParser.
 */
#ifndef WX_XML_H
#define WX_XML_H

#include <stddef.h>

#define WX_XML_MAX_FIELDS 64

struct wx_field {
    const char *name;    /* NUL-terminated, owned by the doc */
    char *val;           /* NUL-terminated (may contain NUL bytes), malloc'd */
    size_t len;
};

struct wx_xml {
    void *doc;           /* xmlDocPtr */
    struct wx_field f[WX_XML_MAX_FIELDS];
    size_t n;
};

void wx_xml_init(void);

/* WX_OK, or WX_PARSE_XML for anything that is not one well-formed <xml>
 * document as described above. *x is always safe to wx_xml_free. */
int wx_xml_parse(const char *buf, size_t len, struct wx_xml *x);
void wx_xml_free(struct wx_xml *x);

/* The field's value (exactly as in the document), or NULL when absent. */
const struct wx_field *wx_xml_get(const struct wx_xml *x, const char *name);

/* Like wx_xml_get, but the value with leading and trailing ASCII
 * whitespace removed (for ids, names and numbers): sets *p and *n; returns 1 if
 * present, 0 if absent. */
int wx_xml_get_trim(const struct wx_xml *x, const char *name, const char **p, size_t *n);

/* --- building XML ------------------------------------------------------ */

/* A growable byte buffer. */
struct wx_buf {
    char *p;
    size_t len, cap;
    int oom;
};

void wx_buf_put(struct wx_buf *b, const void *s, size_t n);
void wx_buf_puts(struct wx_buf *b, const char *s);
void wx_buf_free(struct wx_buf *b);

/* <![CDATA[ s ]]>, with every "]]>" inside split as "]]]]><![CDATA[>". */
void wx_buf_cdata(struct wx_buf *b, const char *s, size_t n);

/* <name><![CDATA[s]]></name> */
void wx_buf_elem(struct wx_buf *b, const char *name, const char *s, size_t n);

/* The encrypted reply envelope of wechat.md §3:
 * <xml><Encrypt><![CDATA[b64]]></Encrypt><MsgSignature><![CDATA[hex]]></MsgSignature>
 * <TimeStamp>ts</TimeStamp><Nonce><![CDATA[nonce]]></Nonce></xml>
 * with the signature over token, ts, nonce and the reply's own Encrypt. */
int wx_reply_envelope(struct wx_buf *b, const char *token, size_t token_len,
                      const char *encrypt, size_t enc_len,
                      const char *ts, size_t ts_len, const char *nonce, size_t nonce_len);

#endif /* WX_XML_H */
