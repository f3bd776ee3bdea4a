/* Passive replies (wechat.md §6) from outbound envelopes; see wx_proto.h. */
#include "wx_proto.h"

#include <kfgate/envelope.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct kfg_str pget(const struct kfg_host *h, const struct kfg_msg *m, size_t i,
                           const char *key)
{
    struct kfg_str s = h->msg_part_get(m, i, key);
    if (!s.ptr)
        s.ptr = "", s.len = 0;
    return s;
}

static int kind_is(const char *k, const char *s)
{
    return k && strcmp(k, s) == 0;
}

static void head(struct wx_buf *b, const struct wx_info *info, int64_t now_s, const char *type)
{
    char ts[24];
    snprintf(ts, sizeof ts, "%lld", (long long)now_s);
    wx_buf_puts(b, "<xml>");
    wx_buf_elem(b, "ToUserName", info->from, strlen(info->from));
    wx_buf_elem(b, "FromUserName", info->to, strlen(info->to));
    wx_buf_puts(b, "<CreateTime>");
    wx_buf_puts(b, ts);
    wx_buf_puts(b, "</CreateTime>");
    wx_buf_elem(b, "MsgType", type, strlen(type));
}

int wx_reply_xml(const struct kfg_host *h, const struct kfg_msg *m, int variant,
                 const struct wx_info *info, int64_t now_s, struct wx_buf *b)
{
    size_t n = h->msg_part_count(m);
    if (n == 0 || !info->from[0] || !info->to[0])
        return KFG_EINVAL;
    const char *k0 = h->msg_part_kind(m, 0);
    if (kind_is(k0, KFG_ENV_KIND_LINK)) {
        /* news: every part a link; MP allows 1 article in a reply to a
         * user message, WeCom 8. */
        size_t max = variant == WX_WECOM ? 8 : 1;
        if (n > max)
            return KFG_EINVAL;
        for (size_t i = 0; i < n; i++)
            if (!kind_is(h->msg_part_kind(m, i), KFG_ENV_KIND_LINK))
                return KFG_EINVAL;
        head(b, info, now_s, "news");
        char cnt[80];
        snprintf(cnt, sizeof cnt, "<ArticleCount>%zu</ArticleCount><Articles>", n);
        wx_buf_puts(b, cnt);
        for (size_t i = 0; i < n; i++) {
            struct kfg_str t = pget(h, m, i, KFG_ENV_P_TITLE),
                           d = pget(h, m, i, KFG_ENV_P_DESCRIPTION),
                           p = pget(h, m, i, KFG_ENV_P_THUMB_URL),
                           u = pget(h, m, i, KFG_ENV_P_URL);
            wx_buf_puts(b, "<item>");
            wx_buf_elem(b, "Title", t.ptr, t.len);
            wx_buf_elem(b, "Description", d.ptr, d.len);
            wx_buf_elem(b, "PicUrl", p.ptr, p.len);
            wx_buf_elem(b, "Url", u.ptr, u.len);
            wx_buf_puts(b, "</item>");
        }
        wx_buf_puts(b, "</Articles></xml>");
        return b->oom ? KFG_ENOMEM : KFG_OK;
    }
    if (n != 1)
        return KFG_EINVAL;     /* one reply carries one message */
    if (kind_is(k0, KFG_ENV_KIND_TEXT)) {
        struct kfg_str t = pget(h, m, 0, KFG_ENV_P_TEXT);
        head(b, info, now_s, "text");
        wx_buf_elem(b, "Content", t.ptr, t.len);
    } else if (kind_is(k0, KFG_ENV_KIND_IMAGE) || kind_is(k0, KFG_ENV_KIND_VOICE)) {
        struct kfg_str id = pget(h, m, 0, KFG_ENV_P_MEDIA_ID);
        if (!id.len)
            return KFG_EINVAL;   /* a passive reply needs a media_id, not a url */
        int img = kind_is(k0, KFG_ENV_KIND_IMAGE);
        head(b, info, now_s, img ? "image" : "voice");
        wx_buf_puts(b, img ? "<Image>" : "<Voice>");
        wx_buf_elem(b, "MediaId", id.ptr, id.len);
        wx_buf_puts(b, img ? "</Image>" : "</Voice>");
    } else if (kind_is(k0, KFG_ENV_KIND_VIDEO)) {
        struct kfg_str id = pget(h, m, 0, KFG_ENV_P_MEDIA_ID),
                       t = pget(h, m, 0, KFG_ENV_P_TITLE),
                       d = pget(h, m, 0, KFG_ENV_P_DESCRIPTION);
        if (!id.len)
            return KFG_EINVAL;
        head(b, info, now_s, "video");
        wx_buf_puts(b, "<Video>");
        wx_buf_elem(b, "MediaId", id.ptr, id.len);
        wx_buf_elem(b, "Title", t.ptr, t.len);
        wx_buf_elem(b, "Description", d.ptr, d.len);
        wx_buf_puts(b, "</Video>");
    } else if (kind_is(k0, WX_KIND_MUSIC) && variant == WX_MP) {
        /* music (MP only): ThumbMediaId is required by WeChat, and a music
         * message without any URL plays nothing */
        struct kfg_str t = pget(h, m, 0, KFG_ENV_P_TITLE),
                       d = pget(h, m, 0, KFG_ENV_P_DESCRIPTION),
                       u = pget(h, m, 0, KFG_ENV_P_URL),
                       hq = pget(h, m, 0, WX_P_HQ_URL),
                       th = pget(h, m, 0, KFG_ENV_P_THUMB_MEDIA_ID);
        if (!th.len || (!u.len && !hq.len))
            return KFG_EINVAL;
        head(b, info, now_s, "music");
        wx_buf_puts(b, "<Music>");
        wx_buf_elem(b, "Title", t.ptr, t.len);
        wx_buf_elem(b, "Description", d.ptr, d.len);
        wx_buf_elem(b, "MusicUrl", u.ptr, u.len);
        wx_buf_elem(b, "HQMusicUrl", hq.len ? hq.ptr : u.ptr, hq.len ? hq.len : u.len);
        wx_buf_elem(b, "ThumbMediaId", th.ptr, th.len);
        wx_buf_puts(b, "</Music>");
    } else if (kind_is(k0, KFG_ENV_KIND_EVENT) && variant == WX_MP) {
        /* Hand the conversation to human customer service:
         * {"kind":"event","name":"transfer_customer_service","key":"kf@acct"} */
        struct kfg_str name = pget(h, m, 0, KFG_ENV_P_EVENT_NAME);
        if (name.len != 25 || memcmp(name.ptr, "transfer_customer_service", 25) != 0)
            return KFG_EINVAL;
        struct kfg_str kf = pget(h, m, 0, KFG_ENV_P_EVENT_KEY);
        head(b, info, now_s, "transfer_customer_service");
        if (kf.len) {
            wx_buf_puts(b, "<TransInfo>");
            wx_buf_elem(b, "KfAccount", kf.ptr, kf.len);
            wx_buf_puts(b, "</TransInfo>");
        }
    } else {
        return KFG_EINVAL;
    }
    wx_buf_puts(b, "</xml>");
    return b->oom ? KFG_ENOMEM : KFG_OK;
}

int wx_reply_encrypt(const struct wx_conf *c, const char *xml, size_t len, int64_t now_s,
                     struct wx_buf *b)
{
    /* one RNG call for the frame's 16-byte prefix and a fresh 10-digit
     * decimal nonce (like WeChat's own) */
    char r[26];
    if (wx_random_alnum(r, sizeof r) != 0)
        return WX_ENCRYPT_AES;
    const unsigned char *rnd = (const unsigned char *)r;
    char *nonce = r + 16;
    for (int i = 0; i < 10; i++)
        nonce[i] = (char)('0' + (unsigned char)nonce[i] % 10);
    if (nonce[0] == '0')
        nonce[0] = '1';
    char *enc;
    size_t enc_len;
    int rc = wx_encrypt_with(c->key, c->aes, rnd, xml, len, c->receive_id, c->rid_len, &enc,
                             &enc_len);
    if (rc != WX_OK)
        return rc;
    char ts[24];
    int tsn = snprintf(ts, sizeof ts, "%lld", (long long)now_s);
    rc = wx_reply_envelope(b, c->token, c->token_len, enc, enc_len, ts, (size_t)tsn, nonce, 10);
    free(enc);
    return rc;
}
