/*
 * HTTP/1.1 request-head parser and chunked body decoder (RFC 9110, RFC 9112).
 *
 * Pure code: no I/O, no allocation, no global state, safe from any thread.
 *
 * Ownership: every kfg_http_slice the parser fills in points into the
 * caller's buffer and stays valid while those bytes are neither moved nor
 * overwritten. The only exceptions are empty slices and the `path` "/" of an
 * absolute-form target without a path, which point to static storage. A slice
 * is never NULL, so memcmp/fwrite on it are always safe. Slices are not
 * NUL-terminated. The head parser never writes to the buffer; the chunked
 * decoder rewrites the region it is given (see below).
 *
 * Policy, chosen for one unambiguous reading of the framing (no request
 * smuggling through disagreement with another parser):
 *  - Lines end in CRLF only. A bare LF or a bare CR anywhere in the head or
 *    in chunked framing is 400. Empty lines (CRLF) before the request-line
 *    are skipped (RFC 9112 2.2) and counted in the returned head length.
 *  - request-line = method SP request-target SP HTTP-version CRLF, single
 *    spaces. The method is a case-sensitive token; unknown methods parse
 *    as KFG_HTTP_OTHER (the router answers 405/501).
 *  - request-target bytes are %x21-7E except '#'; no percent-decoding or
 *    normalisation happens here. Forms: origin ("/..."); asterisk ("*", for
 *    OPTIONS only); absolute ("http://" or "https://", case-insensitive,
 *    RFC 9112 3.2.2 says a server MUST accept it) whose authority must be
 *    non-empty, has no userinfo, and becomes `host`, overriding the Host
 *    field. CONNECT (authority-form) is 501: kfgate is not a proxy.
 *  - Only HTTP/1.0 and HTTP/1.1; another well-formed HTTP/d.d is 505.
 *  - Field names are tokens followed directly by ':'; obs-fold is 400; values
 *    may hold HTAB, SP, VCHAR and obs-text (%x80-FF); any other control byte
 *    is 400. Values are trimmed of leading and trailing SP/HTAB.
 *  - Host: exactly one in HTTP/1.1, at most one in 1.0; its value may hold
 *    only reg-name / IP-literal / port characters (no '/', '@', spaces).
 *  - Content-Length: 1*DIGIT up to INT64_MAX. Repeated lines and comma lists
 *    are accepted only when every value is the same number (RFC 9112 6.3).
 *  - Transfer-Encoding: a list of tokens over all its lines. With
 *    Content-Length, in HTTP/1.0, empty elements, chunked with parameters,
 *    chunked twice, or a final coding that is not chunked: 400. Codings other
 *    than chunked before it: 501.
 *  - Expect: only "100-continue" (ignored in HTTP/1.0); anything else 417.
 *  - Upgrade: at most one field line. `upgrade` is set only for HTTP/1.1
 *    when Connection lists "upgrade" and Upgrade is non-empty.
 *  - Error priority: a malformed line or a limit fails as soon as the
 *    offending byte is in the buffer, even before the head is complete.
 *    Errors in field values (Host, Content-Length, Transfer-Encoding,
 *    Upgrade, Expect) are reported once the head is complete, the first in
 *    field order, before the whole-head checks. The result therefore
 *    depends only on the bytes, never on how they were split into reads.
 *
 * After any negative result the caller should answer the status with
 * "Connection: close" and close: the framing of what follows is unknown.
 */
#ifndef KFG_HTTP_PARSE_H
#define KFG_HTTP_PARSE_H

#include <stddef.h>
#include <stdint.h>

struct kfg_http_slice {
    const char *p;
    size_t n;
};

struct kfg_http_header {
    struct kfg_http_slice name;     /* a token, case as sent */
    struct kfg_http_slice value;    /* leading/trailing SP and HTAB trimmed */
};

struct kfg_http_limits {
    size_t max_head_bytes;  /* whole head incl. the final CRLFCRLF; else 431 */
    unsigned max_headers;   /* field lines; else 431 */
};

#define KFG_HTTP_LIMITS_DEFAULT { .max_head_bytes = 16384, .max_headers = 100 }

enum kfg_http_method {
    KFG_HTTP_GET = 1,
    KFG_HTTP_HEAD,
    KFG_HTTP_POST,
    KFG_HTTP_PUT,
    KFG_HTTP_DELETE,
    KFG_HTTP_PATCH,
    KFG_HTTP_OPTIONS,
    KFG_HTTP_TRACE,
    KFG_HTTP_CONNECT,       /* recognised, but always answered 501 */
    KFG_HTTP_OTHER,         /* any other token; see method_name */
};

struct kfg_http_request {
    /* In: an array of lim->max_headers entries, set before every call. */
    struct kfg_http_header *headers;
    unsigned nheaders;

    enum kfg_http_method method;
    struct kfg_http_slice method_name;
    struct kfg_http_slice target;   /* request-target as sent */
    struct kfg_http_slice path;     /* up to '?'; "*" for asterisk-form */
    struct kfg_http_slice query;    /* after the first '?', without it */
    struct kfg_http_slice host;     /* absolute-form authority, else Host */
    struct kfg_http_slice upgrade_proto;    /* Upgrade value when upgrade */
    int version_minor;              /* 0 or 1 */
    int64_t content_length;         /* -1 if absent */
    unsigned chunked : 1;           /* body is chunked; content_length -1 */
    unsigned keep_alive : 1;
    unsigned expect_continue : 1;
    unsigned upgrade : 1;
    unsigned has_host : 1;
};

/*
 * Where to resume after an incomplete head, so bytes that arrive in many
 * reads are not rescanned from the start each time: only the last,
 * still-incomplete line is. Zero it before a connection's first request;
 * the parser zeroes it again whenever it returns non-zero.
 */
struct kfg_http_parser {
    size_t off;
    unsigned line;
};

/*
 * Parses the request head at the start of buf[0..len). Bytes after the head
 * (a body, pipelined requests) are never examined.
 *
 * Returns > 0: length of the head (leading empty lines and the final CRLF
 *              included); *req is filled in.
 *           0: incomplete; call again with the same bytes plus more. Between
 *              such calls the buffer may move, but its first len bytes must
 *              not change. *req holds nothing useful.
 *         < 0: -(HTTP status) to answer: 400, 417, 431, 501 or 505; *why
 *              (when why is non-NULL) is a static phrase for the log.
 * ps may be NULL: every call then scans from the start.
 */
int kfg_http_parse_request(struct kfg_http_parser *ps, const char *buf,
                           size_t len, const struct kfg_http_limits *lim,
                           struct kfg_http_request *req, const char **why);

/* First field named `name` (case-insensitive): its value, or NULL. */
const struct kfg_http_slice *
kfg_http_header_get(const struct kfg_http_request *req, const char *name);

/* Whether a comma-separated value lists `token` (case-insensitive), e.g.
 * "websocket" in an Upgrade value. */
int kfg_http_list_has(struct kfg_http_slice value, const char *token);

/*
 * Incremental chunked body decoder (RFC 9112 7.1) that decodes in place.
 *
 * The decoder keeps all state it needs in *c and consumes every byte it is
 * given until the body is complete, so the caller never re-presents input.
 * Chunk data is moved (memmove) to the front of the region it is handed; the
 * framing is validated and dropped. Chunk extensions and trailer fields are
 * checked for syntax and discarded. Limits: a chunk-size line (extensions
 * and CRLF included) of KFG_HTTP_CHUNK_LINE_MAX bytes, else 400; a trailer
 * section (final CRLF included) of KFG_HTTP_TRAILER_MAX bytes, else 431;
 * max_body payload bytes in total, else 413, reported as soon as a
 * chunk-size says so.
 *
 * Typical use, with the body decoded contiguously into the connection
 * buffer: keep D = decoded bytes at buf[0..D) and the raw bytes after them.
 *
 *     r = kfg_http_chunked_decode(&c, buf + D, R, &used, &out, &why);
 *     D += out;   // the new payload is at buf[D - out .. D)
 *
 *   r == 0: used == R: nothing raw is left; append the next read at buf + D.
 *   r == 1: the body is buf[0..D); the bytes that followed it (the next
 *           pipelined request) are the R - used bytes at buf + D - out + used.
 *   r < 0:  -(status) to answer (400, 413, 431); close the connection.
 *
 * In general: after a call on region[0..len), region[0..*out_len) holds the
 * payload it produced, region[*out_len..*consumed) is garbage, and
 * region[*consumed..len) is untouched. *consumed < len only when r == 1.
 * Once finished, further calls return 1 (consuming nothing); after an error
 * they return the same error. Results do not depend on how the input is
 * split across calls.
 */
#define KFG_HTTP_CHUNK_LINE_MAX 1024
#define KFG_HTTP_TRAILER_MAX 4096

struct kfg_http_chunked {
    uint64_t size;          /* chunk-size being read, then data left */
    uint64_t total;         /* payload announced so far */
    uint64_t max_body;
    uint32_t line;          /* bytes of the current size line or trailer */
    int state;
    int status;             /* sticky error: -(HTTP status), or 0 */
    const char *why;
};

void kfg_http_chunked_init(struct kfg_http_chunked *c, size_t max_body);
int kfg_http_chunked_decode(struct kfg_http_chunked *c, char *buf, size_t len,
                            size_t *consumed, size_t *out_len,
                            const char **why);

#endif
