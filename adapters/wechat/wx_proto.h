/*
 * The WeChat callback protocol without the gateway's loops: one HTTP
 * request (method, raw query, body) in, a decision out (reject with a status
 * and the official code, echo a verification string, or a parsed inbound
 * message to publish); the mapping of a parsed message onto an envelope
 * through the host's msg_* table (envelope.h builders); passive reply XML
 * for an outbound envelope. Unit-tested and fuzzed with a fake host table.
 */
#ifndef WX_PROTO_H
#define WX_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <kfgate/plugin.h>

#include "wx_crypto.h"
#include "wx_xml.h"

enum wx_variant { WX_MP = 0, WX_WECOM = 1 };

/* MP only: which POST forms the instance accepts. */
enum wx_mode {
    WX_MODE_ANY = 0,     /* plain and encrypted (compatible mode) */
    WX_MODE_PLAIN = 1,   /* plain only */
    WX_MODE_SAFE = 2,    /* encrypted only (encrypt_type=aes + msg_signature) */
};

struct wx_conf {
    int variant;                 /* enum wx_variant */
    int mode;                    /* enum wx_mode (MP) */
    const char *token;
    size_t token_len;
    int has_key;
    unsigned char key[32];
    struct wx_aes *aes;          /* NULL, or wx_aes_new(key), owned by the user */
    const char *receive_id;      /* AppID / CorpID; may be "" */
    size_t rid_len;
};

enum wx_kind {
    WX_R_REJECT = 0,
    WX_R_ECHO = 1,               /* answer 200 with echo/echo_len */
    WX_R_MESSAGE = 2,            /* publish xml; reply encrypted if `encrypted` */
};

struct wx_req {
    int kind;
    int status;                  /* WX_R_REJECT: the HTTP status */
    int code;                    /* WX_R_REJECT: official code, 0 if none applies */
    const char *why;             /* static text for the log line */
    char *echo;                  /* WX_R_ECHO, malloc'd */
    size_t echo_len;
    int encrypted;               /* WX_R_MESSAGE: the request was encrypted */
    unsigned char *plainbuf;     /* decrypted frame */
    const char *inner;           /* the message XML (plaintext) */
    size_t inner_len;
    char timestamp[32], nonce[80];
    struct wx_xml xml;           /* parsed inner; last: not zeroed as a whole */
};

/* Decides what to do with one callback request, in the order of the
 * official samples. Always fills *r; free it with wx_req_free. */
void wx_request(const struct wx_conf *c, const char *method, size_t mlen,
                const char *query, size_t qlen, const char *body, size_t blen,
                struct wx_req *r);
void wx_req_free(struct wx_req *r);

/* What the mapping learned about the message, for the reply. */
#define WX_ID_MAX 256

/* n bytes of p (which holds no NUL) into dst of cap bytes, cut to fit,
 * NUL-terminated: snprintf's "%.*s" without its cost on the hot path. */
static inline void wx_copy_cut(char *dst, size_t cap, const char *p, size_t n)
{
    if (!cap)
        return;
    if (n >= cap)
        n = cap - 1;
    if (n)
        memcpy(dst, p, n);
    dst[n] = '\0';
}
struct wx_info {
    int is_event;
    int unknown;                 /* published as event "wechat_unknown" */
    char from[WX_ID_MAX + 1];    /* the request's FromUserName ("" if too long) */
    char to[WX_ID_MAX + 1];      /* the request's ToUserName */
    char msg_type[32];
    char idem[520];
};

struct wx_build_opts {
    int variant;
    int keep_raw;                /* raw.body = inner XML for every message */
    int64_t now_ms;              /* receipt time */
    int64_t deadline_ms;         /* 0: none */
};

/* Builds the envelope for a parsed message (wechat.md §5 onto
 * spec/envelope.md). Every message type and event of §5 has its mapping;
 * anything else, or a known type whose fields do not fit (bad coordinates),
 * becomes type "event" with an event part "wechat_unknown" and the raw XML.
 * Returns KFG_OK with *out owned by the caller, KFG_EINVAL when the header
 * fields are missing (no FromUserName/OpenKfId, no MsgType), or the host's
 * error. */
int wx_build_msg(const struct kfg_host *h, struct kfg_instance *ins,
                 const struct wx_xml *x, const char *inner, size_t inner_len,
                 const struct wx_build_opts *o, struct kfg_msg **out, struct wx_info *info);

/* Music has no envelope kind: an extension part (spec/envelope.md §11)
 *   {"kind":"x-wechat-music","title","description","url" (MusicUrl),
 *    "hq_url" (HQMusicUrl, default url),"thumb_media_id" (required)}
 * MP only, as a passive reply and through custom/send. */
#define WX_KIND_MUSIC "x-wechat-music"
#define WX_P_HQ_URL "hq_url"

/* Passive reply XML (wechat.md §6) for an outbound envelope answering
 * `info`'s message, one of: text; image, voice (media_id); video (media_id,
 * title, description); news (1..n parts of kind link: 1 article on MP, up
 * to 8 on WeCom); music (WX_KIND_MUSIC, MP); transfer to customer service
 * (MP: an event part named "transfer_customer_service", key = the optional
 * KfAccount). Appends to b; returns KFG_OK, or KFG_EINVAL when the envelope
 * cannot be expressed as a passive reply (then the API sends it). */
int wx_reply_xml(const struct kfg_host *h, const struct kfg_msg *m, int variant,
                 const struct wx_info *info, int64_t now_s, struct wx_buf *b);

/* Wraps a plaintext reply for safe/WeCom mode: encrypts it, signs it over
 * the reply's own Encrypt, TimeStamp and Nonce; b receives the envelope. */
int wx_reply_encrypt(const struct wx_conf *c, const char *xml, size_t len,
                     int64_t now_s, struct wx_buf *b);

#endif /* WX_PROTO_H */
