/*
 * WeChat / WeCom callback crypto (WXBizMsgCrypt), with no dependency on the
 * gateway: signatures, strict base64, the EncodingAESKey, AES-256-CBC frames
 * with the 32-byte PKCS#7 variant, and the callback query string.
 *
 * Error codes are the official ones (identical across Tencent's samples);
 * wx_err_name() gives the official name, which every log line carries.
 * See ../shared/protocols/wechat.md §2-§3.
 */
#ifndef WX_CRYPTO_H
#define WX_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

enum wx_err {
    WX_OK = 0,
    WX_VALIDATE_SIGNATURE = -40001,   /* ValidateSignature_Error */
    WX_PARSE_XML = -40002,            /* ParseXml_Error */
    WX_COMPUTE_SIGNATURE = -40003,    /* ComputeSignature_Error */
    WX_ILLEGAL_AES_KEY = -40004,      /* IllegalAesKey */
    WX_VALIDATE_RECEIVEID = -40005,   /* ValidateCorpid_Error / ValidateAppid_Error */
    WX_ENCRYPT_AES = -40006,          /* EncryptAES_Error */
    WX_DECRYPT_AES = -40007,          /* DecryptAES_Error */
    WX_ILLEGAL_BUFFER = -40008,       /* IllegalBuffer */
    WX_ENCODE_BASE64 = -40009,        /* EncodeBase64_Error */
    WX_DECODE_BASE64 = -40010,        /* DecodeBase64_Error */
    WX_GEN_RETURN_XML = -40011,       /* GenReturnXml_Error */
};

/* "ValidateSignature_Error" for -40001, ...; "OK" for 0; "Unknown" else. */
const char *wx_err_name(int code);

/* Length of a signature in lowercase hex. */
#define WX_SIG_LEN 40

/* lowercase_hex(SHA1(join(sort(parts)))): parts sorted bytewise (memcmp,
 * shorter first on a common prefix), joined with no separator. n <= 8.
 * Returns WX_OK or WX_COMPUTE_SIGNATURE. out gets 40 hex + NUL. */
int wx_signature(const char *const *parts, const size_t *lens, size_t n,
                 char out[WX_SIG_LEN + 1]);

/* Checks `given` (as received, any length) against the signature of
 * {token, timestamp, nonce[, x]} (x NULL for the plain signature), comparing
 * the 40 hex characters in constant time (CRYPTO_memcmp). Exactly 40
 * lowercase hex characters match; uppercase does not.
 * WX_OK or WX_VALIDATE_SIGNATURE. */
int wx_signature_check(const char *token, size_t token_len,
                       const char *timestamp, size_t ts_len,
                       const char *nonce, size_t nonce_len,
                       const char *x, size_t x_len,
                       const char *given, size_t given_len);

/* Strict standard base64 (RFC 4648 alphabet, '=' padding required, length a
 * multiple of 4, no whitespace, no '=' inside). out must hold len/4*3 bytes.
 * Returns WX_OK or WX_DECODE_BASE64 (also for empty input). Non-zero
 * discarded bits in the last symbol are accepted, as every official
 * decoder does. */
int wx_b64_decode(const char *in, size_t len, unsigned char *out, size_t *out_len);

/* Standard base64 with padding and no line breaks; out must hold
 * 4*((len+2)/3)+1 bytes (NUL-terminated). Returns the length written. */
size_t wx_b64_encode(const unsigned char *in, size_t len, char *out);

/* AES key from the 43-character EncodingAESKey: base64 of key + "=", the
 * two discarded bits of the 43rd character ignored. WX_OK or
 * WX_ILLEGAL_AES_KEY. */
int wx_aes_key(const char *encoding_aes_key, size_t len, unsigned char key[32]);

/* Decrypts an Encrypt value (base64 text) and checks the frame, in the order
 * of the official samples (wechat.md §3, steps 3-6):
 *   base64 -> WX_DECODE_BASE64; length a multiple of 32 and >= 32, AES, pad
 *   byte 1..32 and every pad byte equal to it (strict: the samples check
 *   only the range) -> WX_DECRYPT_AES; frame > 20 bytes and 20 + length
 *   within it -> WX_ILLEGAL_BUFFER; receive id -> WX_VALIDATE_RECEIVEID.
 * On WX_OK *buf is a malloc'd buffer the caller frees, and the message is
 * (*buf)[*msg_off .. *msg_off + *msg_len), followed by a NUL. On error *buf
 * is NULL. */
/* AES-256-CBC contexts made once for one key (an instance's), so that a
 * message costs no context allocation and no key expansion. Thread-safe:
 * a context another thread is using is not waited for, that call makes a
 * fresh one. wx_aes_new returns NULL when out of memory; every function
 * that takes one also works with NULL (a context per call). */
struct wx_aes;
struct wx_aes *wx_aes_new(const unsigned char key[32]);
void wx_aes_free(struct wx_aes *a);

int wx_decrypt(const unsigned char key[32], const char *b64, size_t b64_len,
               const char *receive_id, size_t rid_len,
               unsigned char **buf, size_t *msg_off, size_t *msg_len);
/* The same with aes: NULL, or made from the same key. */
int wx_decrypt_with(const unsigned char key[32], struct wx_aes *aes, const char *b64,
                    size_t b64_len, const char *receive_id, size_t rid_len,
                    unsigned char **buf, size_t *msg_off, size_t *msg_len);

/* Encrypts msg into the base64 text of a frame random16 || len32 || msg ||
 * receive_id, padded to a multiple of 32 (a full block of 0x20 when
 * already aligned). *out is malloc'd, NUL-terminated, freed by the caller.
 * WX_OK, WX_ENCRYPT_AES (also on out of memory). */
int wx_encrypt(const unsigned char key[32], const unsigned char random16[16],
               const char *msg, size_t msg_len,
               const char *receive_id, size_t rid_len,
               char **out, size_t *out_len);
int wx_encrypt_with(const unsigned char key[32], struct wx_aes *aes,
                    const unsigned char random16[16], const char *msg, size_t msg_len,
                    const char *receive_id, size_t rid_len, char **out, size_t *out_len);

/* Fills buf with n random printable characters [A-Za-z0-9] (RAND_bytes).
 * Returns 0, or -1 if the RNG failed. */
int wx_random_alnum(char *buf, size_t n);

/* Query parameter `name` from a raw query string ("a=1&b=x%2By"),
 * percent-decoded exactly once ("+" stays "+": WeChat's base64 values carry
 * it). Returns the decoded length (0..cap), or
 *   -1  absent,
 *   -2  present more than once (ambiguous: refused),
 *   -3  a bad percent escape ("%zz", "%4" at the end),
 *   -4  the decoded value does not fit in cap bytes. */
long wx_query_get(const char *q, size_t qlen, const char *name,
                  char *out, size_t cap);

/* Several parameters in one pass over the query: for each, got is what
 * wx_query_get would return for it (the value decoded into out). */
struct wx_qparam {
    const char *name;
    size_t nlen;
    char *out;
    size_t cap;
    long got;
};
void wx_query_scan(const char *q, size_t qlen, struct wx_qparam *ps, size_t np);

#endif /* WX_CRYPTO_H */
