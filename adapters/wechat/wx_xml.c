/* WeChat callback XML; see wx_xml.h. */
#include "wx_xml.h"
#include "wx_crypto.h"

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void wx_xml_init(void)
{
    xmlInitParser();
}

/* Case-insensitive search for "<!doctype". By its '!', which a WeChat
 * document holds only in "<![CDATA[" (a '<' would be met every tag). */
static int has_doctype(const char *s, size_t n)
{
    static const char pat[] = "doctype";
    const size_t m = sizeof pat - 1;
    const char *p = s, *end = s + n;
    while (p < end && (p = memchr(p, '!', (size_t)(end - p))) != NULL) {
        if (p > s && p[-1] == '<' && (size_t)(end - p - 1) >= m) {
            size_t k = 0;
            while (k < m) {
                char c = p[1 + k];
                if (c >= 'A' && c <= 'Z')
                    c = (char)(c - 'A' + 'a');
                if (c != pat[k])
                    break;
                k++;
            }
            if (k == m)
                return 1;
        }
        p++;
    }
    return 0;
}

static void reset(struct wx_xml *x)
{
    x->n = 0;
    x->heap = NULL;
    x->slow = 0;
}

void wx_xml_free(struct wx_xml *x)
{
    free(x->heap);
    x->heap = NULL;
    x->n = 0;
}

/* An arena of at least `need` bytes: the inline one or one malloc. */
static char *arena(struct wx_xml *x, size_t need)
{
    if (need <= sizeof x->small)
        return x->small;
    x->heap = malloc(need);
    return x->heap;
}

static int dup_name(const struct wx_xml *x, const char *name, size_t n)
{
    for (size_t i = 0; i < x->n; i++)
        if (x->f[i].nlen == n && memcmp(x->f[i].name, name, n) == 0)
            return 1;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The scanner of the flat shape. Everything it does not fully understand
 * is left to libxml2 (return 1), so it never has to be right about a
 * refusal, only about what it accepts. */

#define DEFER 1

static int xws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n';   /* CR: left to libxml2 */
}

static int name_start(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static int name_char(unsigned char c)
{
    return name_start(c) || (c >= '0' && c <= '9') || c == '-' || c == '.';
}

/* Length of the valid character data at s[0..n): stops at the first byte
 * that is not an XML Char in strict UTF-8 (controls, CR, overlongs,
 * surrogates, U+FFFE/U+FFFF, beyond U+10FFFF, truncated sequences). */
static size_t valid_chars(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        /* eight printable ASCII bytes at a time (no byte < 0x20 or >= 0x80) */
        while (n - i >= 8) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            const uint64_t lo = 0x0101010101010101ull, hi = 0x8080808080808080ull;
            if (((w - lo * 0x20) | w) & hi)
                break;
            i += 8;
        }
        if (i == n)
            break;
        unsigned char c = s[i];
        if (c < 0x80) {
            if (c < 0x20 && c != '\t' && c != '\n')
                return i;
            i++;
            continue;
        }
        uint32_t cp;
        size_t k;
        if (c >= 0xc2 && c <= 0xdf) {
            k = 2, cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            k = 3, cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            k = 4, cp = c & 0x07;
        } else {
            return i;
        }
        if (n - i < k)
            return i;
        for (size_t j = 1; j < k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return i;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        if ((k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff) || cp == 0xfffe || cp == 0xffff)
            return i;
        i += k;
    }
    return i;
}

static size_t put_utf8(char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12);
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | cp >> 18);
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* A reference at s[0..n) (s[0] == '&'): its decoded bytes into o, its
 * source length into *used; 0 if it is not one we decode. The output is
 * never longer than the source. */
static size_t entity(const char *s, size_t n, char *o, size_t *used)
{
    static const struct { const char *src; char c; } pre[] = {
        {"&lt;", '<'}, {"&gt;", '>'}, {"&amp;", '&'}, {"&quot;", '"'}, {"&apos;", '\''},
    };
    for (size_t i = 0; i < sizeof pre / sizeof pre[0]; i++) {
        size_t k = strlen(pre[i].src);
        if (n >= k && memcmp(s, pre[i].src, k) == 0) {
            *o = pre[i].c;
            *used = k;
            return 1;
        }
    }
    if (n < 4 || s[1] != '#')
        return 0;
    size_t i = 2;
    int hex = s[2] == 'x';
    if (hex)
        i++;
    uint32_t cp = 0;
    size_t digits = 0;
    for (; i < n && s[i] != ';'; i++) {
        unsigned char c = (unsigned char)s[i];
        uint32_t d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (hex && c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (hex && c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return 0;
        if (++digits > 8)
            return 0;
        cp = cp * (hex ? 16 : 10) + d;
    }
    if (i >= n || digits == 0)
        return 0;
    /* XML Char only; CR from a reference is fine in XML but left to libxml2
     * like every CR */
    if (!(cp == 0x9 || cp == 0xa || (cp >= 0x20 && cp <= 0xd7ff) ||
          (cp >= 0xe000 && cp <= 0xfffd) || (cp >= 0x10000 && cp <= 0x10ffff)))
        return 0;
    *used = i + 1;
    return put_utf8(o, cp);
}

int wx_xml_parse_fast(const char *buf, size_t len, struct wx_xml *x)
{
    reset(x);
    /* libxml2's own text limit is 10 MB; big documents are rare: leave them. */
    if (!buf || len == 0 || len > (1u << 20))
        return DEFER;
    const char *s = buf, *end = buf + len;
    char *a = arena(x, len + 1);
    if (!a)
        return DEFER;
    char *o = a;
    while (s < end && xws((unsigned char)*s))
        s++;
    if (end - s < 5 || memcmp(s, "<xml", 4) != 0)
        goto defer;
    s += 4;
    while (s < end && xws((unsigned char)*s))
        s++;
    if (s == end || *s != '>')
        goto defer;
    s++;
    for (;;) {
        while (s < end && xws((unsigned char)*s))
            s++;
        if (end - s < 2 || *s != '<')
            goto defer;
        if (s[1] == '/') {
            /* </xml>, then only whitespace */
            if (end - s < 6 || memcmp(s + 2, "xml", 3) != 0)
                goto defer;
            s += 5;
            while (s < end && xws((unsigned char)*s))
                s++;
            if (s == end || *s != '>')
                goto defer;
            s++;
            while (s < end && xws((unsigned char)*s))
                s++;
            if (s != end)
                goto defer;
            return WX_OK;
        }
        /* <Name> or <Name/> */
        s++;
        const char *name = s;
        if (!name_start((unsigned char)*s))
            goto defer;
        while (s < end && name_char((unsigned char)*s))
            s++;
        size_t nlen = (size_t)(s - name);
        while (s < end && xws((unsigned char)*s))
            s++;
        if (s == end)
            goto defer;
        int empty = 0;
        if (*s == '/') {
            if (end - s < 2 || s[1] != '>')
                goto defer;
            empty = 1;
            s += 2;
        } else if (*s == '>') {
            s++;
        } else {
            goto defer;                     /* attributes */
        }
        if (x->n == WX_XML_MAX_FIELDS)
            goto defer;
        memcpy(o, name, nlen);
        o[nlen] = '\0';
        if (dup_name(x, o, nlen))
            goto defer;
        struct wx_field *f = &x->f[x->n];
        f->name = o;
        f->nlen = nlen;
        o += nlen + 1;
        f->val = o;
        while (!empty) {
            if (s == end)
                goto defer;
            if (*s == '<') {
                if (end - s >= 9 && memcmp(s, "<![CDATA[", 9) == 0) {
                    const char *c = s + 9, *e = c;
                    for (;;) {
                        e = memchr(e, ']', (size_t)(end - e));
                        if (!e || end - e < 3)
                            goto defer;
                        if (e[1] == ']' && e[2] == '>')
                            break;
                        e++;
                    }
                    size_t k = (size_t)(e - c);
                    if (valid_chars((const unsigned char *)c, k) != k)
                        goto defer;
                    memcpy(o, c, k);
                    o += k;
                    s = e + 3;
                    continue;
                }
                if (end - s < 2 || s[1] != '/')
                    goto defer;             /* nested element, comment, PI */
                s += 2;
                if ((size_t)(end - s) < nlen || memcmp(s, name, nlen) != 0)
                    goto defer;
                s += nlen;
                while (s < end && xws((unsigned char)*s))
                    s++;
                if (s == end || *s != '>')
                    goto defer;
                s++;
                break;
            }
            if (*s == '&') {
                size_t used;
                size_t k = entity(s, (size_t)(end - s), o, &used);
                if (!k)
                    goto defer;
                o += k;
                s += used;
                continue;
            }
            const char *t = s;
            while (s < end && *s != '<' && *s != '&')
                s++;
            size_t k = (size_t)(s - t);
            if (valid_chars((const unsigned char *)t, k) != k)
                goto defer;
            /* "]]>" is not allowed in text */
            for (const char *q = t; (q = memchr(q, ']', (size_t)(s - q))) != NULL; q++)
                if (s - q >= 3 && q[1] == ']' && q[2] == '>')
                    goto defer;
            memcpy(o, t, k);
            o += k;
        }
        f->len = (size_t)(o - f->val);
        *o++ = '\0';
        x->n++;
    }
defer:
    wx_xml_free(x);
    return DEFER;
}

/* ------------------------------------------------------------------------ */
/* libxml2, for everything else */

static size_t text_len(xmlNodePtr c, int *bad)
{
    size_t total = 0;
    for (xmlNodePtr t = c->children; t; t = t->next) {
        if (t->type == XML_ENTITY_REF_NODE)
            *bad = 1;                   /* cannot happen without a DTD */
        if ((t->type == XML_TEXT_NODE || t->type == XML_CDATA_SECTION_NODE) && t->content)
            total += strlen((const char *)t->content);
    }
    return total;
}

int wx_xml_parse_libxml(const char *buf, size_t len, struct wx_xml *x)
{
    reset(x);
    if (!buf || len == 0 || len > INT32_MAX)
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
    x->slow = 1;
    int bad = 0;
    xmlNodePtr root = xmlDocGetRootElement(doc);
    if (!wf || doc->intSubset || doc->extSubset || !root || root->ns ||
        strcmp((const char *)root->name, "xml") != 0) {
        bad = 1;
        goto out;
    }
    /* the arena: every name and value with its NUL */
    size_t need = 1, nf = 0;
    for (xmlNodePtr c = root->children; c && !bad; c = c->next) {
        if (c->type == XML_ENTITY_REF_NODE)
            bad = 1;
        if (c->type != XML_ELEMENT_NODE)
            continue;
        if (++nf > WX_XML_MAX_FIELDS)
            bad = 1;
        need += strlen((const char *)c->name) + 1 + text_len(c, &bad) + 1;
    }
    char *o = bad ? NULL : arena(x, need);
    if (!o) {
        bad = 1;
        goto out;
    }
    for (xmlNodePtr c = root->children; c; c = c->next) {
        if (c->type != XML_ELEMENT_NODE)
            continue;
        size_t nl = strlen((const char *)c->name);
        if (dup_name(x, (const char *)c->name, nl)) {
            bad = 1;                    /* duplicate field: ambiguous */
            goto out;
        }
        struct wx_field *f = &x->f[x->n];
        memcpy(o, c->name, nl + 1);
        f->name = o;
        f->nlen = nl;
        o += nl + 1;
        f->val = o;
        for (xmlNodePtr t = c->children; t; t = t->next)
            if ((t->type == XML_TEXT_NODE || t->type == XML_CDATA_SECTION_NODE) && t->content) {
                size_t k = strlen((const char *)t->content);
                memcpy(o, t->content, k);
                o += k;
            }
        f->len = (size_t)(o - f->val);
        *o++ = '\0';
        x->n++;
    }
out:
    xmlFreeDoc(doc);
    if (bad) {
        wx_xml_free(x);
        return WX_PARSE_XML;
    }
    return WX_OK;
}

int wx_xml_parse(const char *buf, size_t len, struct wx_xml *x)
{
    reset(x);
    if (!buf || len == 0 || len > INT32_MAX || has_doctype(buf, len))
        return WX_PARSE_XML;
    if (wx_xml_parse_fast(buf, len, x) == WX_OK)
        return WX_OK;
    return wx_xml_parse_libxml(buf, len, x);
}

const struct wx_field *wx_xml_get(const struct wx_xml *x, const char *name)
{
    size_t k = strlen(name);
    for (size_t i = 0; i < x->n; i++)
        if (x->f[i].nlen == k && memcmp(x->f[i].name, name, k) == 0)
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
