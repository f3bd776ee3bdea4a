/* Unit tests for configuration loading and validation (cmocka). */
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
#include "config.h"
#include "log.h"
#include "toml.h"

static struct kfg_buf errs;

static struct kfg_config *load_ok(const char *src)
{
    struct kfg_config *c = NULL;

    kfg_buf_reset(&errs);
    if (kfg_config_load_buf("gw.toml", src, strlen(src), &c, &errs) != 0)
        fail_msg("rejected:\n%s\nerrors:\n%s", src, kfg_buf_cstr(&errs));
    assert_non_null(c);
    assert_int_equal(errs.len, 0);
    return c;
}

/* Loading src fails; returns the error text (valid until the next load). */
static const char *load_err(const char *src)
{
    struct kfg_config *c = (struct kfg_config *)&c;

    kfg_buf_reset(&errs);
    if (kfg_config_load_buf("gw.toml", src, strlen(src), &c, &errs) == 0)
        fail_msg("accepted:\n%s", src);
    assert_null(c);
    assert_true(errs.len > 0);
    return kfg_buf_cstr(&errs);
}

/* The error text holds `want` as one whole line. */
static void assert_line(const char *text, const char *want)
{
    size_t n = strlen(want);

    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (len == n && memcmp(p, want, n) == 0)
            return;
        p += len + (nl != NULL);
    }
    fail_msg("no line\n  %s\nin\n%s", want, text);
}

static size_t count_lines(const char *text)
{
    size_t n = 0;

    for (; *text; text++)
        n += *text == '\n';
    return n;
}

static int teardown(void **state)
{
    (void)state;
    kfg_buf_free(&errs);
    return 0;
}

/* ---- defaults ---- */

static void test_defaults(void **state)
{
    (void)state;
    struct kfg_config *c = load_ok("");

    assert_string_equal(c->path, "gw.toml");
    assert_true(c->workers >= 1);       /* 0 resolves to the CPU count */
    assert_string_equal(c->plugin_dir, "build/plugins");
    assert_int_equal(c->drain_timeout_ms, 10000);
    assert_string_equal(c->http_listen, "0.0.0.0:8080");
    assert_int_equal(c->http.max_head_bytes, 16384);
    assert_int_equal(c->http.max_headers, 100);
    assert_string_equal(c->admin_listen, "127.0.0.1:9090");
    assert_int_equal(c->log_format, KFG_LOG_LOGFMT);
    assert_int_equal(c->log_level, KFG_LOG_INFO);
    assert_string_equal(c->journal.dir, "var/journal");
    assert_int_equal(c->client_timeout_ms, 10000);
    assert_int_equal(c->client_connect_timeout_ms, 3000);
    assert_int_equal(c->client_max_response_bytes, 4u << 20);
    assert_string_equal(c->journal.dir, "var/journal");
    assert_int_equal(c->journal.fsync, KFG_FSYNC_CFG_INTERVAL);
    assert_int_equal(c->journal.segment_bytes, 64u << 20);
    assert_int_equal(c->journal.max_pending, 65536);
    assert_string_equal(c->bus.feed, "ipc:///tmp/kfgate/feed.ipc");
    assert_int_equal(c->bus.ipc_mode, 0600);
    assert_int_equal(c->bus.batch_max, 32);
    assert_int_equal(c->bus.retry_cap_ms, 60000);
    assert_int_equal(c->ninstances, 0);
    kfg_config_free(c);

    /* Setting some keys leaves the others at their defaults. */
    c = load_ok("[http]\nmax_headers = 50\n[journal]\nfsync = \"always\"\n"
                "[gateway]\nworkers = 3\n[log]\nformat = \"json\"\nlevel = \"debug\"\n");
    assert_int_equal(c->http.max_headers, 50);
    assert_int_equal(c->http.max_head_bytes, 16384);
    assert_string_equal(c->http_listen, "0.0.0.0:8080");
    assert_int_equal(c->journal.fsync, KFG_FSYNC_CFG_ALWAYS);
    assert_int_equal(c->journal.fsync_interval_ms, 10);
    assert_int_equal(c->workers, 3);
    assert_int_equal(c->log_format, KFG_LOG_JSON);
    assert_int_equal(c->log_level, KFG_LOG_DEBUG);
    kfg_config_free(c);
}

static void test_example_config_loads(void **state)
{
    (void)state;
    struct kfg_config *c = NULL;

    kfg_buf_reset(&errs);
    /* The shipped example documents every key: it must stay valid. */
    if (access("config.example.toml", R_OK) != 0)
        skip();
    if (kfg_config_load("config.example.toml", &c, &errs) != 0)
        fail_msg("config.example.toml:\n%s", kfg_buf_cstr(&errs));
    kfg_config_free(c);
}

static void test_load_file(void **state)
{
    (void)state;
    char path[] = "/tmp/kfg_config_test_XXXXXX";
    int fd = mkstemp(path);
    struct kfg_config *c = NULL;

    assert_true(fd >= 0);
    const char *src = "[http]\nlisten = \"127.0.0.1:1\"\n[admin]\nlistn = \"\"\n";
    assert_int_equal(write(fd, src, strlen(src)), (ssize_t)strlen(src));
    close(fd);

    kfg_buf_reset(&errs);
    assert_int_equal(kfg_config_load(path, &c, &errs), -1);
    assert_null(c);
    char want[128];
    snprintf(want, sizeof want,
             "%s:4:1: [admin] unknown key 'listn' (did you mean 'listen'?)", path);
    assert_line(kfg_buf_cstr(&errs), want);

    unlink(path);
    kfg_buf_reset(&errs);
    assert_int_equal(kfg_config_load(path, &c, &errs), -1);
    assert_null(c);
    assert_non_null(strstr(kfg_buf_cstr(&errs), "cannot open"));
    assert_non_null(strstr(kfg_buf_cstr(&errs), path));
}

/* ---- positions and keys in errors ---- */

static void test_error_names_file_line_col_key(void **state)
{
    (void)state;
    const char *e = load_err("# comment\n[http]\n  max_headers = \"100\"\nlisten = 8080\n");

    /* The column is the value's, where the problem is. */
    assert_line(e, "gw.toml:3:17: [http] key 'max_headers' must be an integer, not string");
    assert_line(e, "gw.toml:4:10: [http] key 'listen' must be a string, not integer");
    assert_int_equal(count_lines(e), 2);       /* every error, not just the first */

    e = load_err("[gateway]\nworkers = 1000\n");
    assert_line(e, "gw.toml:2:11: [gateway] key 'workers' = 1000 is out of range 0..256");
    e = load_err("[http]\nmax_head_bytes = 255\n");
    assert_line(e, "gw.toml:2:18: [http] key 'max_head_bytes' = 255 is out of range 256..1048576");
    e = load_err("[client]\ntimeout_ms = -1\n");
    assert_line(e, "gw.toml:2:14: [client] key 'timeout_ms' = -1 is out of range 1..3600000");

    /* TOML syntax errors come through with the same prefix. */
    e = load_err("[http]\nlisten = \"unterminated\n");
    assert_int_equal(strncmp(e, "gw.toml:2:", 10), 0);
    assert_int_equal(count_lines(e), 1);
    e = load_err("a = 1\na = 2\n");
    assert_int_equal(strncmp(e, "gw.toml:2:1: ", 13), 0);
    assert_non_null(strstr(e, "'a'"));
}

static void test_unknown_key_suggests(void **state)
{
    (void)state;
    const char *e = load_err("[http]\nlistn = \"x\"\nmax_header = 10\nzzzzzz = 1\n"
                             "[jurnal]\ndir = \"x\"\n[[adaptr]]\n");

    assert_line(e, "gw.toml:2:1: [http] unknown key 'listn' (did you mean 'listen'?)");
    assert_line(e, "gw.toml:3:1: [http] unknown key 'max_header' (did you mean 'max_headers'?)");
    assert_line(e, "gw.toml:4:1: [http] unknown key 'zzzzzz'");    /* nothing close */
    assert_line(e, "gw.toml:5:2: unknown key 'jurnal' (did you mean 'journal'?)");
    assert_line(e, "gw.toml:7:3: unknown key 'adaptr' (did you mean 'adapter'?)");
    assert_int_equal(count_lines(e), 5);

    e = load_err("[bus]\nretry_cap = 5\n[journal]\nfsync_intervl_ms = 5\n");
    assert_line(e, "gw.toml:2:1: [bus] unknown key 'retry_cap' (did you mean 'retry_max'?)");
    assert_line(e, "gw.toml:4:1: [journal] unknown key 'fsync_intervl_ms' "
                   "(did you mean 'fsync_interval_ms'?)");

    /* Dotted keys report the key where it was written. */
    e = load_err("http.lisen = \"x\"\n");
    assert_line(e, "gw.toml:1:6: [http] unknown key 'lisen' (did you mean 'listen'?)");

    static const char *const cands[] = { "listen", "max_headers", "workers", NULL };
    assert_string_equal(kfg_nearest("listne", cands), "listen");
    assert_string_equal(kfg_nearest("worker", cands), "workers");
    assert_string_equal(kfg_nearest("max_hedaers", cands), "max_headers");
    assert_null(kfg_nearest("port", cands));
    assert_null(kfg_nearest("", cands));
    assert_null(kfg_nearest("x", (const char *const[]){ NULL }));
}

static void test_wrong_types(void **state)
{
    (void)state;
    const char *e;

    e = load_err("http = \"0.0.0.0:80\"\n");
    assert_line(e, "gw.toml:1:1: 'http' must be a table: write [http]");
    e = load_err("[log]\nlevel = 3\nformat = \"xml\"\n");
    assert_line(e, "gw.toml:2:9: [log] key 'level' must be one of "
                   "\"error\", \"warn\", \"info\", \"debug\"");
    assert_line(e, "gw.toml:3:10: [log] key 'format' must be one of \"logfmt\", \"json\"");
    e = load_err("[journal]\nfsync = \"sometimes\"\nsegment_bytes = 1.5\n");
    assert_line(e, "gw.toml:2:9: [journal] key 'fsync' must be one of "
                   "\"always\", \"interval\", \"never\"");
    assert_line(e, "gw.toml:3:17: [journal] key 'segment_bytes' must be an integer, not float");
    e = load_err("[gateway]\nplugin_dir = [\"a\"]\ndrain_timeout_ms = true\n");
    assert_line(e, "gw.toml:2:14: [gateway] key 'plugin_dir' must be a string, not array");
    assert_line(e, "gw.toml:3:20: [gateway] key 'drain_timeout_ms' must be an integer, "
                   "not bool");
    e = load_err("adapter = 3\n");
    assert_line(e, "gw.toml:1:1: 'adapter' must be an array of tables: write [[adapter]]");
    e = load_err("filter = [1]\n");
    assert_line(e, "gw.toml:1:11: filter[0] must be a table");
}

/* ---- plugin instances ---- */

static void test_instances(void **state)
{
    (void)state;
    struct kfg_config *c = load_ok(
        "[[adapter]]\ntype = \"webhook\"\nname = \"hook-1\"\ntenant = \"acme\"\n"
        "[[filter]]\ntype = \"ratelimit\"\nname = \"rl\"\nlog_level = \"warn\"\n"
        "[[adapter]]\ntype = \"webhook\"\nname = \"hook.2\"\n");

    assert_int_equal(c->ninstances, 3);
    assert_string_equal(c->instances[0].name, "hook-1");
    assert_string_equal(c->instances[0].tenant, "acme");
    assert_int_equal(c->instances[0].log_level, -1);
    assert_int_equal(c->instances[0].pos.line, 1);
    assert_string_equal(c->instances[1].name, "hook.2");    /* adapters first */
    assert_string_equal(c->instances[1].tenant, "default");
    assert_int_equal(c->instances[2].kind, KFG_KIND_FILTER);
    assert_int_equal(c->instances[2].log_level, KFG_LOG_WARN);
    kfg_config_free(c);

    const char *e = load_err("[[adapter]]\nname = \"a\"\n"
                             "[[adapter]]\ntype = \"t\"\nname = \"bad name\"\n"
                             "[[adapter]]\ntype = \"t\"\nname = \"x\"\n"
                             "[[adapter]]\ntype = \"t\"\nname = \"x\"\n"
                             "[[filter]]\ntype = \"f\"\nname = \"f\"\ntenant = \"t\"\n");
    assert_line(e, "gw.toml:1:1: adapter[0]: key 'type' (the plugin's name) is required "
                   "and must be a string");
    assert_line(e, "gw.toml:5:8: adapter[1]: key 'name' is required: 1-64 characters of "
                   "A-Z a-z 0-9 _ - .");
    assert_line(e, "gw.toml:9:1: adapter[3]: name 'x' is already used by the instance at "
                   "line 6");
    assert_line(e, "gw.toml:15:1: filter 'f': 'tenant' applies to adapters only");
}

static const struct kfg_config_key plugin_keys[] = {
    { "url", KFG_CFG_STRING, KFG_CFG_REQUIRED, NULL, "where to post" },
    { "token", KFG_CFG_SECRET, 0, "", NULL },
    { "port", KFG_CFG_INT, 0, "4500", NULL },
    { "enabled", KFG_CFG_BOOL, 0, "true", NULL },
    { "ratio", KFG_CFG_FLOAT, 0, "0.25", NULL },
    { "allow", KFG_CFG_STRING_ARRAY, 0, NULL, NULL },
    { NULL, 0, 0, NULL, NULL },
};

/* Loads src (one adapter) and resolves it against plugin_keys. */
static struct kfg_icfg *resolve(const char *src, struct kfg_config **cp)
{
    struct kfg_config *c = load_ok(src);

    assert_int_equal(c->ninstances, 1);
    kfg_buf_reset(&errs);
    struct kfg_icfg *ic = kfg_icfg_resolve(c, &c->instances[0], plugin_keys, &errs);
    *cp = c;
    return ic;
}

static void test_instance_keys_and_defaults(void **state)
{
    (void)state;
    struct kfg_config *c;
    struct kfg_icfg *ic = resolve("[[adapter]]\ntype = \"t\"\nname = \"n\"\n"
                                  "url = \"https://x\"\nratio = 2\nallow = [\"a\", \"b\"]\n", &c);

    assert_non_null(ic);
    assert_string_equal(kfg_icfg_string(ic, "url"), "https://x");
    assert_string_equal(kfg_icfg_string(ic, "token"), "");      /* defaults */
    assert_int_equal(kfg_icfg_int(ic, "port"), 4500);
    assert_true(kfg_icfg_bool(ic, "enabled"));
    assert_true(kfg_icfg_float(ic, "ratio") == 2.0);           /* int accepted */
    assert_int_equal(kfg_icfg_array_len(ic, "allow"), 2);
    assert_string_equal(kfg_icfg_array_string(ic, "allow", 1), "b");
    assert_null(kfg_icfg_array_string(ic, "allow", 2));
    /* Wrong-typed or unknown lookups are harmless. */
    assert_null(kfg_icfg_string(ic, "port"));
    assert_int_equal(kfg_icfg_int(ic, "nope"), 0);
    kfg_icfg_free(ic);
    kfg_config_free(c);

    ic = resolve("[[adapter]]\ntype = \"t\"\nname = \"n\"\n", &c);
    assert_null(ic);
    assert_line(kfg_buf_cstr(&errs),
                "gw.toml:1:1: adapter 'n' (type t): key 'url' is required (where to post)");
    kfg_config_free(c);

    /* Regression: a non-bool for a BOOL key read an uninitialised bool
     * (UBSan: "load of value 160, which is not a valid value for type
     * '_Bool'" in kfg_icfg_resolve). */
    ic = resolve("[[adapter]]\ntype = \"t\"\nname = \"n\"\nurl = 1\nport = \"80\"\n"
                 "enabled = \"yes\"\nallow = [\"a\", 2]\nratio = \"x\"\nurll = \"u\"\n", &c);
    assert_null(ic);
    const char *e = kfg_buf_cstr(&errs);
    assert_line(e, "gw.toml:4:7: adapter 'n' (type t): key 'url' must be a string, not integer");
    assert_line(e, "gw.toml:5:8: adapter 'n' (type t): key 'port' must be an integer, not string");
    assert_line(e, "gw.toml:6:11: adapter 'n' (type t): key 'enabled' must be true or false, "
                   "not string");
    assert_line(e, "gw.toml:7:15: adapter 'n' (type t): key 'allow': item 1 must be a string");
    assert_line(e, "gw.toml:8:9: adapter 'n' (type t): key 'ratio' must be a number, not string");
    assert_line(e, "gw.toml:9:1: adapter 'n' (type t): unknown key 'urll' (did you mean 'url'?)");
    kfg_config_free(c);

    char why[128];
    assert_int_equal(kfg_config_keys_check(plugin_keys, why, sizeof why), 0);
    static const struct kfg_config_key reserved[] = {
        { "name", KFG_CFG_STRING, 0, NULL, NULL }, { NULL, 0, 0, NULL, NULL } };
    assert_int_equal(kfg_config_keys_check(reserved, why, sizeof why), -1);
    assert_string_equal(why, "config key 'name' is reserved for the host");
    static const struct kfg_config_key baddef[] = {
        { "n", KFG_CFG_INT, 0, "12x", NULL }, { NULL, 0, 0, NULL, NULL } };
    assert_int_equal(kfg_config_keys_check(baddef, why, sizeof why), -1);
    assert_string_equal(why, "config key 'n' has an invalid default '12x'");
}

static void test_env_secret(void **state)
{
    (void)state;
    struct kfg_config *c;
    struct kfg_icfg *ic, *ic2;

    setenv("KFG_TEST_TOKEN", "s3cr3t", 1);
    ic = resolve("[[adapter]]\ntype = \"t\"\nname = \"n\"\nurl = \"env:KFG_TEST_TOKEN\"\n"
                 "token = \"env:KFG_TEST_TOKEN\"\n", &c);
    assert_non_null(ic);
    assert_string_equal(kfg_icfg_string(ic, "token"), "s3cr3t");
    /* Only secrets read the environment; a plain string stays as written. */
    assert_string_equal(kfg_icfg_string(ic, "url"), "env:KFG_TEST_TOKEN");

    /* A reload sees a changed secret as a changed instance. */
    setenv("KFG_TEST_TOKEN", "rotated", 1);
    ic2 = kfg_icfg_resolve(c, &c->instances[0], plugin_keys, &errs);
    assert_non_null(ic2);
    assert_string_equal(kfg_icfg_string(ic2, "token"), "rotated");
    assert_false(kfg_icfg_equal(ic, ic2));
    kfg_icfg_free(ic2);
    setenv("KFG_TEST_TOKEN", "s3cr3t", 1);
    ic2 = kfg_icfg_resolve(c, &c->instances[0], plugin_keys, &errs);
    assert_true(kfg_icfg_equal(ic, ic2));
    kfg_icfg_free(ic);
    kfg_icfg_free(ic2);
    kfg_config_free(c);

    /* A literal secret is used as is. */
    ic = resolve("[[adapter]]\ntype = \"t\"\nname = \"n\"\nurl = \"u\"\ntoken = \"plain\"\n", &c);
    assert_string_equal(kfg_icfg_string(ic, "token"), "plain");
    kfg_icfg_free(ic);
    kfg_config_free(c);

    unsetenv("KFG_TEST_UNSET");
    ic = resolve("[[adapter]]\ntype = \"t\"\nname = \"n\"\nurl = \"u\"\n"
                 "token = \"env:KFG_TEST_UNSET\"\n", &c);
    assert_null(ic);
    assert_line(kfg_buf_cstr(&errs), "gw.toml:5:9: key 'token': environment variable "
                                     "'KFG_TEST_UNSET' is not set");
    /* The secret's value never shows in an error. */
    assert_null(strstr(kfg_buf_cstr(&errs), "s3cr3t"));
    kfg_config_free(c);

    ic = resolve("[[adapter]]\ntype = \"t\"\nname = \"n\"\nurl = \"u\"\ntoken = \"env:\"\n", &c);
    assert_null(ic);
    assert_line(kfg_buf_cstr(&errs), "gw.toml:5:9: key 'token': environment variable "
                                     "'' is not set");
    kfg_config_free(c);

    /* An empty variable is set: it resolves to "". */
    setenv("KFG_TEST_EMPTY", "", 1);
    ic = resolve("[[adapter]]\ntype = \"t\"\nname = \"n\"\nurl = \"u\"\n"
                 "token = \"env:KFG_TEST_EMPTY\"\n", &c);
    assert_non_null(ic);
    assert_string_equal(kfg_icfg_string(ic, "token"), "");
    kfg_icfg_free(ic);
    kfg_config_free(c);
}

/* ---- regressions found by the fuzzers ---- */

static void test_regress_toml_lone_sign(void **state)
{
    (void)state;
    /* toml.c read one byte past a value that is only a sign ("a = [[[+"
     * at the very end of the input): heap-buffer-overflow in parse_number. */
    static const char *const srcs[] = { "a = [[[+", "a = +", "a = -", "[gateway]\nworkers = +" };
    for (size_t i = 0; i < sizeof srcs / sizeof srcs[0]; i++) {
        size_t n = strlen(srcs[i]);
        char *exact = malloc(n);        /* no NUL after it: ASan sees overreads */
        struct kfg_toml_value *root = NULL;
        struct kfg_toml_error err;
        memcpy(exact, srcs[i], n);
        assert_int_equal(kfg_toml_parse(exact, n, &root, &err), -1);
        assert_null(root);
        assert_non_null(strstr(err.msg, "invalid number"));
        free(exact);
    }
    const char *e = load_err("[gateway]\nworkers = +\n");
    assert_line(e, "gw.toml:2:11: invalid number '+'");
}

static void test_regress_key_control_bytes(void **state)
{
    (void)state;
    struct kfg_config *c;
    const char *e;

    /* Found by config_fuzz ("\"LL]nL\\nan\"=\"\""): a quoted key holding
     * "\n" was printed raw, splitting one error over two lines. */
    e = load_err("\"a\\nb\" = 1\n");
    assert_line(e, "gw.toml:1:1: unknown key 'a\\x0ab'");
    assert_int_equal(count_lines(e), 1);
    e = load_err("[http]\n\"x\\u001b[31m\\\\\" = 1\n");
    assert_line(e, "gw.toml:2:1: [http] unknown key 'x\\x1b[31m\\x5c'");

    /* A key with a NUL byte is not the key before the NUL: it used to be
     * taken for 'listen' (strcmp), so an unknown key went unreported and
     * could silently override the real one. */
    e = load_err("[http]\nlisten = \"a:1\"\n\"listen\\u0000x\" = \"b:2\"\n");
    assert_line(e, "gw.toml:3:1: [http] unknown key 'listen\\x00x' (did you mean 'listen'?)");
    e = load_err("\"http\\u0000\" = { listen = \"b:2\" }\n");
    assert_line(e, "gw.toml:1:1: unknown key 'http\\x00' (did you mean 'http'?)");
    e = load_err("\"adapter\\u0000\" = 1\n");
    assert_line(e, "gw.toml:1:1: unknown key 'adapter\\x00' (did you mean 'adapter'?)");
    struct kfg_icfg *ic = resolve("[[adapter]]\ntype = \"t\"\nname = \"n\"\nurl = \"u\"\n"
                                  "\"url\\u0000\" = \"v\"\n", &c);
    assert_null(ic);
    assert_line(kfg_buf_cstr(&errs),
                "gw.toml:5:1: adapter 'n' (type t): unknown key 'url\\x00' (did you mean 'url'?)");
    kfg_config_free(c);

    /* The same for text from values that errors quote. */
    ic = resolve("[[adapter]]\ntype = \"t\\r\\nx\"\nname = \"n\"\nurl = \"u\"\n"
                 "token = \"env:A\\nB\"\n", &c);
    assert_null(ic);
    e = kfg_buf_cstr(&errs);
    assert_line(e, "gw.toml:5:9: key 'token': environment variable 'A\\x0aB' is not set");
    assert_int_equal(count_lines(e), 1);
    kfg_config_free(c);
    ic = resolve("[[adapter]]\ntype = \"t\\nx\"\nname = \"n\"\nurl = \"u\"\nzz = 1\n", &c);
    assert_null(ic);
    e = kfg_buf_cstr(&errs);
    assert_line(e, "gw.toml:5:1: adapter 'n' (type t\\x0ax): unknown key 'zz'");
    assert_int_equal(count_lines(e), 1);
    kfg_config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_example_config_loads),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_error_names_file_line_col_key),
        cmocka_unit_test(test_unknown_key_suggests),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_instances),
        cmocka_unit_test(test_instance_keys_and_defaults),
        cmocka_unit_test(test_env_secret),
        cmocka_unit_test(test_regress_toml_lone_sign),
        cmocka_unit_test(test_regress_key_control_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
