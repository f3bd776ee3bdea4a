#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "buf.h"
#include "log.h"

static int pfd[2];

static int setup(void **state)
{
    (void)state;
    if (pipe(pfd) < 0)
        return -1;
    /* Non-blocking read end: "nothing was logged" is then an EAGAIN. */
    fcntl(pfd[0], F_SETFL, O_NONBLOCK);
    kfg_log_setup(KFG_LOG_LOGFMT, KFG_LOG_INFO, pfd[1]);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    kfg_log_setup(KFG_LOG_LOGFMT, KFG_LOG_INFO, 2);
    close(pfd[0]);
    close(pfd[1]);
    return 0;
}

/* Everything logged since the last call; the caller frees. */
static char *drain(size_t *lenp)
{
    struct kfg_buf b = {0};
    char tmp[4096];
    ssize_t n;
    while ((n = read(pfd[0], tmp, sizeof(tmp))) > 0)
        kfg_buf_append(&b, tmp, (size_t)n);
    if (lenp)
        *lenp = b.len;
    return b.p ? b.p : calloc(1, 1);
}

/* Checks the timestamp of a logfmt (or JSON) line and replaces it with TS. */
static char *mask_ts(char *line, int json)
{
    regex_t re;
    const char *pat = json
        ? "^\\{\"ts\":\"[0-9]{4}-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9]\\.[0-9]{3}Z\""
        : "^ts=[0-9]{4}-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9]\\.[0-9]{3}Z ";
    assert_int_equal(regcomp(&re, pat, REG_EXTENDED | REG_NOSUB), 0);
    if (regexec(&re, line, 0, NULL, 0) != 0)
        fail_msg("bad timestamp in: %s", line);
    regfree(&re);
    size_t off = json ? 7 : 3;
    memcpy(line + off, "TS", 2);
    memmove(line + off + 2, line + off + 24, strlen(line + off + 24) + 1);
    return line;
}

static char *one_line(int json)
{
    size_t len;
    char *s = drain(&len);
    assert_true(len > 0);
    assert_int_equal(s[len - 1], '\n');
    assert_ptr_equal(strchr(s, '\n'), s + len - 1);
    return mask_ts(s, json);
}

static void logkv(int level, int max, const char *inst, const char *req,
                  const char *const *kv, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kfg_logv(level, max, inst, req, kv, fmt, ap);
    va_end(ap);
}

static void test_parse(void **state)
{
    (void)state;
    assert_int_equal(kfg_log_level_parse("error"), KFG_LOG_ERROR);
    assert_int_equal(kfg_log_level_parse("warn"), KFG_LOG_WARN);
    assert_int_equal(kfg_log_level_parse("info"), KFG_LOG_INFO);
    assert_int_equal(kfg_log_level_parse("DEBUG"), KFG_LOG_DEBUG);
    assert_int_equal(kfg_log_level_parse("trace"), -1);
    assert_int_equal(kfg_log_level_parse(""), -1);
    assert_int_equal(kfg_log_level_parse(NULL), -1);
    assert_int_equal(kfg_log_format_parse("logfmt"), KFG_LOG_LOGFMT);
    assert_int_equal(kfg_log_format_parse("json"), KFG_LOG_JSON);
    assert_int_equal(kfg_log_format_parse("xml"), -1);
    assert_int_equal(kfg_log_format_parse(NULL), -1);
}

static void test_logfmt_basic(void **state)
{
    (void)state;
    kfg_log(KFG_LOG_INFO, "wx0", "r-1", "hello %d", 42);
    char *s = one_line(0);
    assert_string_equal(s, "ts=TS level=info instance=wx0 req=r-1 msg=\"hello 42\"\n");
    free(s);

    kfg_warn("ok");
    s = one_line(0);
    assert_string_equal(s, "ts=TS level=warn msg=ok\n");
    free(s);

    kfg_log(KFG_LOG_ERROR, "", NULL, "%s", "");
    s = one_line(0);
    assert_string_equal(s, "ts=TS level=error msg=\"\"\n");
    free(s);
}

static void test_logfmt_kv_and_quoting(void **state)
{
    (void)state;
    const char *kv[] = {
        "plain", "abc/def:1.5",
        "space", "a b",
        "eq", "a=b",
        "dq", "say \"hi\"",
        "bs", "C:\\dir",
        "ctl", "a\tb\rc\x01" "d\x7f",
        "empty", "",
        "utf8", "h\xc3\xa9llo",
        "bad", "x\xff" "y",
        "bad key=\"", "v",
        NULL,
    };
    logkv(KFG_LOG_INFO, -1, "i 1", NULL, kv, "done");
    char *s = one_line(0);
    assert_string_equal(s,
        "ts=TS level=info instance=\"i 1\" plain=abc/def:1.5 space=\"a b\" eq=\"a=b\" "
        "dq=\"say \\\"hi\\\"\" bs=\"C:\\\\dir\" ctl=\"a\\tb\\rc\\u0001d\\u007f\" "
        "empty=\"\" utf8=h\xc3\xa9llo bad=x\xef\xbf\xbdy bad_key__=v msg=done\n");
    free(s);

    /* A key with no value before the terminator. */
    const char *odd[] = { "k", NULL };
    logkv(KFG_LOG_INFO, -1, NULL, NULL, odd, "m");
    s = one_line(0);
    assert_string_equal(s, "ts=TS level=info k=\"\" msg=m\n");
    free(s);
}

static void test_log_injection(void **state)
{
    (void)state;
    kfg_info("user said: %s", "hi\nts=2020-01-01T00:00:00.000Z level=error msg=forged");
    char *s = one_line(0);   /* asserts exactly one newline, at the end */
    assert_string_equal(s, "ts=TS level=info msg=\"user said: hi\\nts=2020-01-01T00:00:00.000Z "
                           "level=error msg=forged\"\n");
    free(s);

    const char *kv[] = { "k", "a\nb", NULL };
    logkv(KFG_LOG_INFO, -1, "x\ny", "r\r\n", kv, "m");
    s = one_line(0);
    assert_string_equal(s, "ts=TS level=info instance=\"x\\ny\" req=\"r\\r\\n\" k=\"a\\nb\" msg=m\n");
    free(s);
}

static void test_levels(void **state)
{
    (void)state;
    size_t len;
    char *s;

    kfg_debug("skipped");
    s = drain(&len);
    assert_int_equal(len, 0);
    free(s);

    /* A per-instance max_level overrides the process level both ways. */
    logkv(KFG_LOG_DEBUG, KFG_LOG_DEBUG, "wx0", NULL, NULL, "dbg");
    s = one_line(0);
    assert_string_equal(s, "ts=TS level=debug instance=wx0 msg=dbg\n");
    free(s);
    logkv(KFG_LOG_WARN, KFG_LOG_ERROR, "wx0", NULL, NULL, "quiet");
    s = drain(&len);
    assert_int_equal(len, 0);
    free(s);

    kfg_log_setup(KFG_LOG_LOGFMT, KFG_LOG_ERROR, pfd[1]);
    assert_int_equal(kfg_log_level(), KFG_LOG_ERROR);
    kfg_warn("no");
    kfg_error("yes");
    s = one_line(0);
    assert_string_equal(s, "ts=TS level=error msg=yes\n");
    free(s);
    kfg_log_setup(KFG_LOG_LOGFMT, KFG_LOG_INFO, pfd[1]);
}

static void test_json(void **state)
{
    (void)state;
    kfg_log_setup(KFG_LOG_JSON, KFG_LOG_INFO, pfd[1]);
    const char *kv[] = { "n", "1", "q", "a\"b\\c", NULL };
    logkv(KFG_LOG_INFO, -1, "wx0", "r1", kv, "hello %s", "world");
    char *s = one_line(1);
    assert_string_equal(s, "{\"ts\":\"TS\",\"level\":\"info\",\"instance\":\"wx0\",\"req\":\"r1\","
                           "\"n\":\"1\",\"q\":\"a\\\"b\\\\c\",\"msg\":\"hello world\"}\n");
    free(s);

    /* String escaping matches kfg_buf_json_str byte for byte. */
    const char nasty[] = "q\"b\\n\nr\rt\tc\x01\x1f\x7f \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 "
                         "bad\xff\xc0\xafx \xed\xa0\x80 \xe2\x82";
    kfg_info("%s", nasty);
    s = one_line(1);
    struct kfg_buf want = {0};
    kfg_buf_puts(&want, "{\"ts\":\"TS\",\"level\":\"info\",\"msg\":");
    kfg_buf_json_str(&want, nasty, strlen(nasty));
    kfg_buf_puts(&want, "}\n");
    assert_string_equal(s, kfg_buf_cstr(&want));
    kfg_buf_free(&want);
    free(s);
    kfg_log_setup(KFG_LOG_LOGFMT, KFG_LOG_INFO, pfd[1]);
}

static void test_long_line(void **state)
{
    (void)state;
    /* Longer than the stack buffer but under the cap: intact. */
    char *big = malloc(5001);
    memset(big, 'a', 5000);
    big[5000] = '\0';
    kfg_info("%s", big);
    char *s = one_line(0);
    assert_int_equal(strlen(s), strlen("ts=TS level=info msg=\n") + 5000);
    assert_memory_equal(s + strlen("ts=TS level=info msg="), big, 5000);
    assert_null(strstr(s, "truncated"));
    free(s);
    free(big);

    /* Far over the cap: cut to 16 KiB, the quote still closed, marked. */
    size_t n = 100000;
    big = malloc(n + 1);
    memset(big, ' ', n);
    big[n] = '\0';
    kfg_info("%s", big);
    size_t len;
    s = drain(&len);
    assert_true(len <= 16384);
    assert_true(len > 16000);
    assert_ptr_equal(strchr(s, '\n'), s + len - 1);
    const char *tail = "\" truncated=true\n";
    assert_string_equal(s + len - strlen(tail), tail);
    free(s);

    /* Each '"' becomes two bytes: the cut never splits an escape. */
    memset(big, '"', n);
    kfg_info("%s", big);
    s = drain(&len);
    assert_true(len <= 16384);
    assert_string_equal(s + len - strlen(tail), tail);
    char *q = strstr(s, "msg=\"") + 5;
    size_t vlen = (size_t)(s + len - strlen(tail) - q);
    assert_int_equal(vlen % 2, 0);
    for (size_t i = 0; i < vlen; i += 2)
        assert_memory_equal(q + i, "\\\"", 2);
    free(s);

    /* Multi-byte characters are not cut in half either. */
    for (size_t i = 0; i + 3 <= n; i += 3)
        memcpy(big + i, "\xe2\x82\xac", 3);
    big[n - n % 3] = '\0';
    kfg_log_setup(KFG_LOG_JSON, KFG_LOG_INFO, pfd[1]);
    kfg_info("%s", big);
    s = drain(&len);
    assert_true(len <= 16384);
    const char *jtail = "\",\"truncated\":true}\n";
    assert_string_equal(s + len - strlen(jtail), jtail);
    q = strstr(s, "\"msg\":\"") + 7;
    vlen = (size_t)(s + len - strlen(jtail) - q);
    assert_int_equal(vlen % 3, 0);
    assert_memory_equal(q, big, vlen);
    free(s);
    free(big);
    kfg_log_setup(KFG_LOG_LOGFMT, KFG_LOG_INFO, pfd[1]);
}

static void test_errno_preserved(void **state)
{
    (void)state;
    errno = ENOENT;
    kfg_info("open failed: %m");
    assert_int_equal(errno, ENOENT);
    char *s = one_line(0);
    char want[256];
    snprintf(want, sizeof(want), "ts=TS level=info msg=\"open failed: %s\"\n", strerror(ENOENT));
    assert_string_equal(s, want);
    free(s);
}

static void test_default_fd(void **state)
{
    (void)state;
    int saved = dup(2);
    assert_true(saved >= 0);
    assert_int_equal(dup2(pfd[1], 2), 2);
    kfg_log_setup(KFG_LOG_LOGFMT, KFG_LOG_INFO, -1);
    kfg_info("to stderr");
    dup2(saved, 2);
    close(saved);
    kfg_log_setup(KFG_LOG_LOGFMT, KFG_LOG_INFO, pfd[1]);
    char *s = one_line(0);
    assert_string_equal(s, "ts=TS level=info msg=\"to stderr\"\n");
    free(s);
}

#define NTHREADS 4
#define NLINES 2000

static void *spam(void *arg)
{
    int id = (int)(intptr_t)arg;
    char pad[6001];
    for (int i = 0; i < NLINES; i++) {
        /* Sizes span the stack buffer, PIPE_BUF and the heap path. */
        int plen = (i * 37 + id * 101) % 6000;
        memset(pad, 'a' + id, (size_t)plen);
        pad[plen] = '\0';
        kfg_info("t%d n%d %s end", id, i, pad);
    }
    return NULL;
}

static void test_threads_no_interleave(void **state)
{
    (void)state;
    char path[] = "/tmp/kfg_log_test.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    /* O_APPEND: each write(2) lands whole at the end of the file. */
    fcntl(fd, F_SETFL, O_APPEND);
    kfg_log_setup(KFG_LOG_LOGFMT, KFG_LOG_INFO, fd);
    pthread_t th[NTHREADS];
    for (int t = 0; t < NTHREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, spam, (void *)(intptr_t)t), 0);
    for (int t = 0; t < NTHREADS; t++)
        pthread_join(th[t], NULL);
    kfg_log_setup(KFG_LOG_LOGFMT, KFG_LOG_INFO, pfd[1]);

    off_t size = lseek(fd, 0, SEEK_END);
    char *all = malloc((size_t)size + 1);
    assert_int_equal(pread(fd, all, (size_t)size, 0), size);
    all[size] = '\0';
    close(fd);

    int seen[NTHREADS] = {0};
    int lines = 0;
    for (char *p = all, *nl; (nl = strchr(p, '\n')); p = nl + 1) {
        *nl = '\0';
        int id, i, off = 0;
        assert_int_equal(sscanf(p + 28, "level=info msg=\"t%d n%d%n", &id, &i, &off), 2);
        assert_true(id >= 0 && id < NTHREADS);
        assert_int_equal(i, seen[id]);   /* per-thread order kept, nothing lost */
        seen[id]++;
        int plen = (i * 37 + id * 101) % 6000;
        for (int k = 0; k < plen; k++)
            assert_int_equal(p[28 + off + 1 + k], 'a' + id);
        assert_string_equal(p + 28 + off + 1 + plen, " end\"");
        lines++;
    }
    assert_int_equal(lines, NTHREADS * NLINES);
    free(all);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test_setup_teardown(test_logfmt_basic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_logfmt_kv_and_quoting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_injection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_levels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errno_preserved, setup, teardown),
        cmocka_unit_test_setup_teardown(test_default_fd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads_no_interleave, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
