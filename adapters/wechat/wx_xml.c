/* WeChat callback XML; see wx_xml.h. */
#include "wx_xml.h"
#include "wx_crypto.h"

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <stdlib.h>
#include <string.h>

void wx_xml_init(void)
{
    xmlInitParser();
}

/* Case-insensitive search for "<!doctype". */
static int has_doctype(const char *s, size_t n)
{
    static const char pat[] = "<!doctype";
    const size_t m = sizeof pat - 1;
    for (size_t i = 0; i + m <= n; i++) {
        if (s[i] != '<')
            continue;
        size_t k = 1;
        while (k < m) {
            char c = s[i + k];
            if (c >= 'A' && c <= 'Z')
                c = (char)(c - 'A' + 'a');
            if (c != pat[k])
                break;
            k++;
        }
        if (k == m)
            return 1;
    }
    return 0;
}

void wx_xml_free(struct wx_xml *x)
{
    for (size_t i = 0; i < x->n; i++)
        free(x->f[i].val);
    if (x->doc)
        xmlFreeDoc(x->doc);
    x->doc = NULL;
    x->n = 0;
}

int wx_xml_parse(const char *buf, size_t len, struct wx_xml *x)
{
    x->doc = NULL;
    x->n = 0;
    if (!buf || len == 0 || len > INT32_MAX || has_doctype(buf, len))
        return WX_PARSE_XML;
    /* No XML_PARSE_NOENT (no entity substitution), no DTDLOAD/DTDATTR/
     * DTDVALID, no XINCLUDE, no HUGE; NONET; errors not printed. */
    const int opts = XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING;
    xmlParserCtxtPtr ctxt = xmlNewParserCtxt();
    if (!ctxt)
        return WX_PARSE_XML;
    xmlDocPtr doc = xmlCtxtReadMemory(ctxt, buf, (int)len, NULL, "UTF-8", opts);
    int wf = ctxt->wellFormed;
    xmlFreeParserCtxt(ctxt);
    if (!doc)
        return WX_PARSE_XML;
    x->doc = doc;
    xmlNodePtr root = xmlDocGetRootElement(doc);
    if (!wf || doc->intSubset || doc->extSubset || !root || root->ns ||
        strcmp((const char *)root->name, "xml") != 0)
        goto bad;
    for (xmlNodePtr c = root->children; c; c = c->next) {
        if (c->type == XML_ENTITY_REF_NODE)
            goto bad;                   /* cannot happen without a DTD */
        if (c->type != XML_ELEMENT_NODE)
            continue;
        const char *name = (const char *)c->name;
        for (size_t i = 0; i < x->n; i++)
            if (strcmp(x->f[i].name, name) == 0)
                goto bad;               /* duplicate field: ambiguous */
        if (x->n == WX_XML_MAX_FIELDS)
            goto bad;
        size_t total = 0;
        for (xmlNodePtr t = c->children; t; t = t->next) {
            if (t->type == XML_ENTITY_REF_NODE)
                goto bad;
            if ((t->type == XML_TEXT_NODE || t->type == XML_CDATA_SECTION_NODE) && t->content)
                total += strlen((const char *)t->content);
        }
        char *v = malloc(total + 1);
        if (!v)
            goto bad;
        size_t o = 0;
        for (xmlNodePtr t = c->children; t; t = t->next)
            if ((t->type == XML_TEXT_NODE || t->type == XML_CDATA_SECTION_NODE) && t->content) {
                size_t k = strlen((const char *)t->content);
                memcpy(v + o, t->content, k);
                o += k;
            }
        v[o] = '\0';
        x->f[x->n].name = name;
        x->f[x->n].val = v;
        x->f[x->n].len = o;
        x->n++;
    }
    return WX_OK;
bad:
    wx_xml_free(x);
    return WX_PARSE_XML;
}

const struct wx_field *wx_xml_get(const struct wx_xml *x, const char *name)
{
    for (size_t i = 0; i < x->n; i++)
        if (strcmp(x->f[i].name, name) == 0)
            return &x->f[i];
    return NULL;
}

static int ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

int wx_xml_get_trim(const struct wx_xml *x, const char *name, const char **p, size_t *n)
{
    const struct wx_field *f = wx_xml_get(x, name);
    if (!f) {
        *p = NULL;
        *n = 0;
        return 0;
    }
    const char *s = f->val;
    size_t k = f->len;
    while (k && ws(*s))
        s++, k--;
    while (k && ws(s[k - 1]))
        k--;
    *p = s;
    *n = k;
    return 1;
}

/* ------------------------------------------------------------------------ */

void wx_buf_put(struct wx_buf *b, const void *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->len + n + 1)
            nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void wx_buf_puts(struct wx_buf *b, const char *s)
{
    wx_buf_put(b, s, strlen(s));
}

void wx_buf_free(struct wx_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}

void wx_buf_cdata(struct wx_buf *b, const char *s, size_t n)
{
    wx_buf_puts(b, "<![CDATA[");
    size_t start = 0;
    for (size_t i = 0; i + 3 <= n; i++) {
        if (s[i] == ']' && s[i + 1] == ']' && s[i + 2] == '>') {
            wx_buf_put(b, s + start, i + 2 - start);  /* up to "]]" */
            wx_buf_puts(b, "]]><![CDATA[");
            start = i + 2;                            /* ">" goes on */
        }
    }
    wx_buf_put(b, s + start, n - start);
    wx_buf_puts(b, "]]>");
}

void wx_buf_elem(struct wx_buf *b, const char *name, const char *s, size_t n)
{
    wx_buf_puts(b, "<");
    wx_buf_puts(b, name);
    wx_buf_puts(b, ">");
    wx_buf_cdata(b, s, n);
    wx_buf_puts(b, "</");
    wx_buf_puts(b, name);
    wx_buf_puts(b, ">");
}

int wx_reply_envelope(struct wx_buf *b, const char *token, size_t token_len,
                      const char *encrypt, size_t enc_len,
                      const char *ts, size_t ts_len, const char *nonce, size_t nonce_len)
{
    const char *parts[4] = {token, ts, nonce, encrypt};
    size_t lens[4] = {token_len, ts_len, nonce_len, enc_len};
    char sig[WX_SIG_LEN + 1];
    if (wx_signature(parts, lens, 4, sig) != WX_OK)
        return WX_COMPUTE_SIGNATURE;
    wx_buf_puts(b, "<xml>");
    wx_buf_elem(b, "Encrypt", encrypt, enc_len);
    wx_buf_elem(b, "MsgSignature", sig, WX_SIG_LEN);
    wx_buf_puts(b, "<TimeStamp>");
    wx_buf_put(b, ts, ts_len);
    wx_buf_puts(b, "</TimeStamp>");
    wx_buf_elem(b, "Nonce", nonce, nonce_len);
    wx_buf_puts(b, "</xml>");
    return b->oom ? WX_GEN_RETURN_XML : WX_OK;
}
