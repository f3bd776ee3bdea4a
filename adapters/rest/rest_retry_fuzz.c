/*
 * libFuzzer harness over Retry-After parsing (rest_http.c): a webhook
 * receiver's header value is untrusted. Checks the contract, not just the
 * absence of crashes: results are in [0, saturation], a parse of an
 * HTTP-date agrees with the delay it yields, and the cap never exceeds its
 * limits.
 *
 *   make -C adapters/rest fuzz FUZZ_SECONDS=60
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *v = (const char *)data;
    int64_t now = 1700000000000LL;
    int64_t ms = -1;
    int rc = rest_retry_after_ms(v, size, now, &ms);
    if (rc == 0 && (ms < 0 || ms > REST_RETRY_AFTER_SAT_S * 1000))
        abort();
    if (rc != 0 && rc != -1)
        abort();
    int64_t t;
    if (rest_http_date(v, size, &t) == 0) {
        /* a date is a whole calendar day count, never before year 0 */
        if (t < -62167219200LL || t > 253402300799LL)
            abort();
        if (rc != 0)
            abort();
    }
    if (rc == 0) {
        int64_t c = rest_retry_cap(ms, now, now + 5000, 0, 3600000);
        if (c < -1 || c > 5000 || c > ms || (c == -1) != (ms > 5000))
            abort();
    }
    return 0;
}
