/*
 * The WeChat callback XML, parsed safely, and the passive reply XML. No
 * dependency on the gateway.
 *
 * What is accepted: one well-formed XML document, read as UTF-8 whatever it
 * declares, whose root is <xml> (no namespace). Its direct child elements
 * become fields: name -> the concatenation of all its text and CDATA
 * children (a value may span several CDATA sections; the five predefined
 * entities and character references are decoded). A name appearing twice
 * is refused (ambiguous). Nested elements (Articles, ScanCodeInfo, ...)
 * keep only the parent's own text. Refused: any "<!DOCTYPE" (in any case,
 * looked for before any parsing), so no DTD, no entity declarations, no
 * external entities, no network.
 *
 * Two parsers give the same answer (the fuzz harness checks it on every
 * input): a scanner of the flat shape WeChat sends (ASCII element names, no
 * attributes, no comments or PIs, no CR, no nesting: the hot path, no
 * allocation for documents up to WX_XML_INLINE bytes), and for anything the
 * scanner does not take, libxml2 (XML_PARSE_NONET, no DTD loading, no
 * attribute defaults, no validation, no entity substitution), whose tree
 * is copied out and freed at once.
 *
 * Call wx_xml_init() once from a single thread before any parse (the
 * plugin's init does), never xmlCleanupParser.
 */
#ifndef WX_XML_H
#define WX_XML_H

#include <stddef.h>

#define WX_XML_MAX_FIELDS 64
#define WX_XML_INLINE 4096   /* names and values of smaller documents: no malloc */

struct wx_field {
    const char *name;    /* NUL-terminated, in the wx_xml's arena */
    size_t nlen;
    const char *val;     /* NUL-terminated (may contain NUL bytes), in the arena */
    size_t len;
};

/* Owns every name and value (in `small`, or in `heap` for big documents):
 * valid until wx_xml_free; not copyable (f[] may point into itself). */
struct wx_xml {
    struct wx_field f[WX_XML_MAX_FIELDS];
    size_t n;
    char *heap;          /* malloc'd arena, or NULL */
    int slow;            /* set when libxml2 parsed it (for tests and the bench) */
    char small[WX_XML_INLINE];
};

void wx_xml_init(void);

/* WX_OK, or WX_PARSE_XML for anything that is not one well-formed <xml>
 * document as described above. *x is always safe to wx_xml_free. */
int wx_xml_parse(const char *buf, size_t len, struct wx_xml *x);
void wx_xml_free(struct wx_xml *x);

/* The two parsers on their own, for the differential fuzz harness and the
 * tests: the scanner returns WX_OK or 1 (not its shape: ask libxml2), never
 * a refusal; the libxml2 parser answers like wx_xml_parse. Neither looks for
 * DOCTYPE (wx_xml_parse does, first). */
int wx_xml_parse_fast(const char *buf, size_t len, struct wx_xml *x);
int wx_xml_parse_libxml(const char *buf, size_t len, struct wx_xml *x);

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
