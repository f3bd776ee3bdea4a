/* Unit tests for the TOML decoder (cmocka). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "toml.h"

static struct kfg_toml_value *parse_ok(const char *src)
{
    struct kfg_toml_value *root = NULL;
    struct kfg_toml_error err;

    if (kfg_toml_parse(src, strlen(src), &root, &err) != 0)
        fail_msg("unexpected error at %u:%u: %s\n--- input:\n%s", (unsigned)err.line,
                 (unsigned)err.col, err.msg, src);
    assert_non_null(root);
    assert_int_equal(root->type, KFG_TOML_TABLE);
    return root;
}

/* Expects a parse error at line:col whose message contains `what`. */
static void expect_error(const char *src, size_t len, uint32_t line, uint32_t col,
                         const char *what)
{
    struct kfg_toml_value *root = (struct kfg_toml_value *)0x1;
    struct kfg_toml_error err;

    if (kfg_toml_parse(src, len, &root, &err) == 0)
        fail_msg("accepted invalid input:\n%.*s", (int)len, src);
    assert_null(root);
    if (err.line != line || err.col != col || !strstr(err.msg, what))
        fail_msg("got %u:%u '%s', want %u:%u '...%s...'", (unsigned)err.line,
                 (unsigned)err.col, err.msg, (unsigned)line, (unsigned)col, what);
}

#define EXPECT_ERROR(src, line, col, what) expect_error(src, strlen(src), line, col, what)

static const struct kfg_toml_value *path(const struct kfg_toml_value *t, const char *dotted)
{
    char buf[256], *save = NULL;

    snprintf(buf, sizeof buf, "%s", dotted);
    for (char *k = strtok_r(buf, ".", &save); k && t; k = strtok_r(NULL, ".", &save))
        t = kfg_toml_table_get(t, k);
    return t;
}

static int64_t get_int(const struct kfg_toml_value *t, const char *dotted)
{
    int64_t i = 0;

    assert_true(kfg_toml_get_int(path(t, dotted), &i));
    return i;
}

static double get_float(const struct kfg_toml_value *t, const char *dotted)
{
    double d = 0;

    assert_int_equal(path(t, dotted)->type, KFG_TOML_FLOAT);
    assert_true(kfg_toml_get_float(path(t, dotted), &d));
    return d;
}

static const char *get_str(const struct kfg_toml_value *t, const char *dotted)
{
    const char *s = NULL;

    assert_true(kfg_toml_get_string(path(t, dotted), &s, NULL));
    return s;
}

/* ---- values and accessors ---- */

static void test_scalars(void **state)
{
    (void)state;
    struct kfg_toml_value *r = parse_ok(
        "s = \"hi\"\n"
        "i = -42\n"
        "f = 2.5e3\n"
        "b = false\n"
        "odt = 1979-05-27T07:32:00-07:00\n"
        "ldt = 1979-05-27T07:32:00\n"
        "ld = 1979-05-27\n"
        "lt = 07:32:00\n"
        "a = [1, 2]\n"
        "t = {}\n");
    bool b = true;
    int64_t i;
    double d;
    const char *s;
    size_t len;

    assert_int_equal(kfg_toml_table_len(r), 10);
    assert_true(kfg_toml_get_string(kfg_toml_table_get(r, "s"), &s, &len));
    assert_string_equal(s, "hi");
    assert_int_equal(len, 2);
    assert_int_equal(get_int(r, "i"), -42);
    assert_true(get_float(r, "f") == 2500.0);
    assert_true(kfg_toml_get_bool(kfg_toml_table_get(r, "b"), &b));
    assert_false(b);
    assert_int_equal(path(r, "odt")->type, KFG_TOML_DATETIME);
    assert_int_equal(path(r, "ldt")->type, KFG_TOML_DATETIME_LOCAL);
    assert_int_equal(path(r, "ld")->type, KFG_TOML_DATE_LOCAL);
    assert_int_equal(path(r, "lt")->type, KFG_TOML_TIME_LOCAL);
    assert_int_equal(kfg_toml_array_len(path(r, "a")), 2);
    assert_int_equal(path(r, "t")->type, KFG_TOML_TABLE);
    assert_int_equal(kfg_toml_table_len(path(r, "t")), 0);

    /* wrong types are refused, not converted (except int -> float) */
    assert_false(kfg_toml_get_int(path(r, "s"), &i));
    assert_false(kfg_toml_get_string(path(r, "i"), &s, NULL));
    assert_false(kfg_toml_get_bool(path(r, "i"), &b));
    assert_null(kfg_toml_get_datetime(path(r, "s")));
    assert_true(kfg_toml_get_float(path(r, "i"), &d));
    assert_true(d == -42.0);
    assert_int_equal(kfg_toml_array_len(path(r, "t")), 0);
    assert_int_equal(kfg_toml_table_len(path(r, "a")), 0);
    assert_null(kfg_toml_array_at(path(r, "a"), 2));
    assert_null(kfg_toml_table_at(r, 10));
    assert_null(kfg_toml_table_get(r, "missing"));
    assert_null(kfg_toml_table_get(path(r, "a"), "x"));

    /* NULL-safe */
    assert_null(kfg_toml_table_get(NULL, "x"));
    assert_null(kfg_toml_table_get(r, NULL));
    assert_null(kfg_toml_table_find(NULL, "x", 1));
    assert_int_equal(kfg_toml_table_len(NULL), 0);
    assert_int_equal(kfg_toml_array_len(NULL), 0);
    assert_false(kfg_toml_get_int(NULL, &i));
    assert_null(kfg_toml_get_datetime(NULL));

    assert_string_equal(kfg_toml_type_name(KFG_TOML_DATETIME_LOCAL), "datetime-local");
    assert_string_equal(kfg_toml_type_name(KFG_TOML_BOOL), "bool");
    kfg_toml_free(r);
    kfg_toml_free(NULL);
}

static void test_order_and_iteration(void **state)
{
    (void)state;
    struct kfg_toml_value *r = parse_ok("zeta = 1\nalpha = 2\n[mid]\nx = 3\n[[arr]]\n[[arr]]\n");
    const char *want[] = {"zeta", "alpha", "mid", "arr"};

    assert_int_equal(kfg_toml_table_len(r), 4);
    for (size_t i = 0; i < 4; i++) {
        const struct kfg_toml_entry *e = kfg_toml_table_at(r, i);

        assert_string_equal(e->key, want[i]);
        assert_int_equal(e->key_len, strlen(want[i]));
    }
    assert_int_equal(kfg_toml_array_len(path(r, "arr")), 2);
    assert_int_equal(kfg_toml_array_at(path(r, "arr"), 1)->type, KFG_TOML_TABLE);
    kfg_toml_free(r);
}

static void test_integers(void **state)
{
    (void)state;
    struct kfg_toml_value *r = parse_ok(
        "max = 9223372036854775807\n"
        "min = -9223372036854775808\n"
        "us = 1_000_000\n"
        "hex = 0xDEAD_beef\n"
        "hexmax = 0x7fffffffffffffff\n"
        "oct = 0o755\n"
        "bin = 0b1101\n"
        "pz = +0\n"
        "nz = -0\n");

    assert_true(get_int(r, "max") == INT64_MAX);
    assert_true(get_int(r, "min") == INT64_MIN);
    assert_int_equal(get_int(r, "us"), 1000000);
    assert_int_equal(get_int(r, "hex"), 0xDEADBEEF);
    assert_true(get_int(r, "hexmax") == INT64_MAX);
    assert_int_equal(get_int(r, "oct"), 0755);
    assert_int_equal(get_int(r, "bin"), 13);
    assert_int_equal(get_int(r, "pz"), 0);
    assert_int_equal(get_int(r, "nz"), 0);
    kfg_toml_free(r);

    EXPECT_ERROR("a = 9223372036854775808", 1, 5, "out of 64-bit range");
    EXPECT_ERROR("a = -9223372036854775809", 1, 5, "out of 64-bit range");
    EXPECT_ERROR("a = 0x8000000000000000", 1, 5, "out of 64-bit range");
    EXPECT_ERROR("a = 99999999999999999999999", 1, 5, "out of 64-bit range");
    EXPECT_ERROR("a = 012", 1, 5, "leading zeros are not allowed in '012'");
    EXPECT_ERROR("a = 1__2", 1, 5, "underscores must sit between digits");
    EXPECT_ERROR("a = -0x1", 1, 5, "cannot have a sign");
    EXPECT_ERROR("a = 0o8", 1, 5, "invalid integer '0o8'");
    EXPECT_ERROR("a = 0X1", 1, 5, "invalid number '0X1'");
}

static void test_floats(void **state)
{
    (void)state;
    struct kfg_toml_value *r = parse_ok(
        "a = 3.14159\n"
        "b = -0.0\n"
        "c = 5e+22\n"
        "d = 1e06\n"
        "e = -2E-2\n"
        "f = 6.626e-34\n"
        "g = 224_617.445_991_228\n"
        "h = inf\n"
        "i = -inf\n"
        "j = nan\n"
        "k = 1e-400\n");

    assert_true(get_float(r, "a") == 3.14159);
    assert_true(get_float(r, "b") == 0.0 && signbit(get_float(r, "b")));
    assert_true(get_float(r, "c") == 5e22);
    assert_true(get_float(r, "d") == 1e6);
    assert_true(get_float(r, "e") == -0.02);
    assert_true(get_float(r, "f") == 6.626e-34);
    assert_true(get_float(r, "g") == 224617.445991228);
    assert_true(isinf(get_float(r, "h")) && get_float(r, "h") > 0);
    assert_true(isinf(get_float(r, "i")) && get_float(r, "i") < 0);
    assert_true(isnan(get_float(r, "j")));
    assert_true(get_float(r, "k") == 0.0);     /* underflow rounds to zero */
    kfg_toml_free(r);

    EXPECT_ERROR("a = 1e400", 1, 5, "float out of range");
    EXPECT_ERROR("a = .5", 1, 5, "invalid number '.5'");
    EXPECT_ERROR("a = 5.", 1, 5, "invalid number '5.'");
    EXPECT_ERROR("a = 1.e5", 1, 5, "invalid number");
    EXPECT_ERROR("a = 1e", 1, 5, "invalid number");
    EXPECT_ERROR("a = 1_.5", 1, 5, "underscores");
    EXPECT_ERROR("a = 03.14", 1, 5, "leading zeros");
    EXPECT_ERROR("a = Inf", 1, 5, "invalid value 'Inf'");
    EXPECT_ERROR("a = nan_", 1, 5, "invalid value 'nan_'");
}

static void test_datetimes(void **state)
{
    (void)state;
    struct kfg_toml_value *r = parse_ok(
        "a = 1979-05-27T07:32:00.999999-07:00\n"
        "b = 1979-05-27 07:32:00z\n"
        "c = 2000-02-29t23:59:60.1234567891\n"
        "d = 2024-02-29\n"
        "e = 00:00:00.5\n"
        "f = 1987-07-05T17:45:56.6+08:00\n");
    const struct kfg_toml_datetime *dt = kfg_toml_get_datetime(path(r, "a"));

    assert_non_null(dt);
    assert_int_equal(dt->year, 1979);
    assert_int_equal(dt->month, 5);
    assert_int_equal(dt->day, 27);
    assert_int_equal(dt->hour, 7);
    assert_int_equal(dt->minute, 32);
    assert_int_equal(dt->second, 0);
    assert_int_equal(dt->nanosecond, 999999000);
    assert_int_equal(dt->offset_minutes, -420);
    assert_string_equal(dt->text, "1979-05-27T07:32:00.999999-07:00");

    dt = kfg_toml_get_datetime(path(r, "b"));
    assert_int_equal(path(r, "b")->type, KFG_TOML_DATETIME);
    assert_int_equal(dt->offset_minutes, 0);
    assert_string_equal(dt->text, "1979-05-27T07:32:00Z");

    dt = kfg_toml_get_datetime(path(r, "c"));
    assert_int_equal(path(r, "c")->type, KFG_TOML_DATETIME_LOCAL);
    assert_int_equal(dt->second, 60);
    assert_int_equal(dt->nanosecond, 123456789);   /* truncated, not rounded */
    assert_string_equal(dt->text, "2000-02-29T23:59:60.123456789");

    assert_string_equal(kfg_toml_get_datetime(path(r, "d"))->text, "2024-02-29");
    dt = kfg_toml_get_datetime(path(r, "e"));
    assert_string_equal(dt->text, "00:00:00.5");
    assert_int_equal(dt->nanosecond, 500000000);
    assert_int_equal(dt->year, 0);
    assert_int_equal(kfg_toml_get_datetime(path(r, "f"))->offset_minutes, 480);
    kfg_toml_free(r);

    EXPECT_ERROR("a = 1900-02-29", 1, 13, "day 29 is out of range for 1900-02");
    EXPECT_ERROR("a = 2023-04-31", 1, 13, "day 31 is out of range");
    EXPECT_ERROR("a = 2023-13-01", 1, 10, "month 13 is out of range");
    EXPECT_ERROR("a = 2023-01-01T24:00:00", 1, 16, "out of range");
    EXPECT_ERROR("a = 2023-01-01T12:00", 1, 16, "seconds are required");
    EXPECT_ERROR("a = 12:00", 1, 5, "seconds are required");
    EXPECT_ERROR("a = 2023-01-01T12:00:00+24:00", 1, 24, "UTC offset +24:00 is out of range");
    EXPECT_ERROR("a = 2023-01-01T12:00:00+0100", 1, 24, "invalid UTC offset");
    EXPECT_ERROR("a = 2023-01-01T12:00:00.Z", 1, 24, "digits after the decimal point");
    EXPECT_ERROR("a = 2023-1-01", 1, 5, "invalid date");
    EXPECT_ERROR("a = 12:00:00Z", 1, 13, "expected end of line after the value, found 'Z'");
}

static void test_strings(void **state)
{
    (void)state;
    struct kfg_toml_value *r = parse_ok(
        "nul = \"a\\u0000b\"\n"
        "esc = \"\\b\\t\\n\\f\\r\\\"\\\\\\u00e9\\U0001F600\"\n"
        "lit = 'C:\\path\\\"x\"'\n"
        "ml = \"\"\"\nline1\n  line2\\\n     line3 \\  \n\n  end\"\"\"\n"
        "q = \"\"\"two quotes: \"\"\"\"\"\n"
        "mll = '''\n'one' ''two''\n'''\n"
        "crlf = \"\"\"a\r\nb\"\"\"\n"
        "utf8 = \"µ€😀\"\n");
    const char *s;
    size_t len;

    assert_true(kfg_toml_get_string(path(r, "nul"), &s, &len));
    assert_int_equal(len, 3);
    assert_memory_equal(s, "a\0b", 4);
    assert_string_equal(get_str(r, "esc"), "\b\t\n\f\r\"\\\xc3\xa9\xf0\x9f\x98\x80");
    assert_string_equal(get_str(r, "lit"), "C:\\path\\\"x\"");
    assert_string_equal(get_str(r, "ml"), "line1\n  line2line3 end");
    assert_string_equal(get_str(r, "q"), "two quotes: \"\"");
    assert_string_equal(get_str(r, "mll"), "'one' ''two''\n");
    assert_string_equal(get_str(r, "crlf"), "a\nb");
    assert_string_equal(get_str(r, "utf8"), "µ€😀");
    kfg_toml_free(r);

    EXPECT_ERROR("a = \"x\\qy\"", 1, 7, "invalid escape '\\q' in string");
    EXPECT_ERROR("a = \"\\xff\"", 1, 6, "invalid escape '\\x'");
    EXPECT_ERROR("a = \"\\e\"", 1, 6, "invalid escape '\\e'");
    EXPECT_ERROR("a = \"\\uD800\"", 1, 6, "\\uD800 is not a Unicode scalar value");
    EXPECT_ERROR("a = \"\\U00110000\"", 1, 6, "not a Unicode scalar value");
    EXPECT_ERROR("a = \"\\u12\"", 1, 6, "needs exactly 4 hex digits");
    EXPECT_ERROR("a = \"abc\nb = 1", 1, 5, "unterminated string");
    EXPECT_ERROR("a = \"\"\"abc", 1, 5, "unterminated multi-line string");
    EXPECT_ERROR("a = 'tab\tok\x01'", 1, 12, "control character U+0001 must be escaped");
    EXPECT_ERROR("a = \"x\x7fy\"", 1, 7, "U+007F");
    EXPECT_ERROR("a = \"\"\"x\\ y\"\"\"", 1, 9, "line-ending backslash");
    EXPECT_ERROR("a = \"\"\"x\"\"\"\"\"\"", 1, 9, "too many quotes");
    EXPECT_ERROR("a = \"x\ry\"", 1, 7, "carriage return");
}

static void test_utf8_validation(void **state)
{
    (void)state;
    /* overlong '/', surrogate, above U+10FFFF, stray continuation, truncated */
    expect_error("a = \"\xc0\xaf\"", 8, 1, 6, "invalid UTF-8 byte 0xC0");
    expect_error("a = \"\xed\xa0\x80\"", 9, 1, 6, "invalid UTF-8 byte 0xED");
    expect_error("a = \"\xf4\x90\x80\x80\"", 10, 1, 6, "invalid UTF-8 byte 0xF4");
    expect_error("a = \"\x80\"", 7, 1, 6, "invalid UTF-8 byte 0x80");
    expect_error("a = \"\xe2\x82\"", 8, 1, 6, "invalid UTF-8");
    expect_error("# \xe0\x80\x80\n", 6, 1, 3, "invalid UTF-8 byte 0xE0");
    expect_error("a = 1 # \xff", 9, 1, 9, "invalid UTF-8 byte 0xFF");
    expect_error("\xe3\x80\x80x = 1", 7, 1, 1, "expected a key, found U+3000");
    expect_error("\xef\xbb\xbf\xef\xbb\xbf", 6, 1, 1, "U+FEFF");

    /* a leading byte order mark is skipped and not counted in columns */
    struct kfg_toml_value *r = parse_ok("\xef\xbb\xbf" "key = 1\n");
    assert_int_equal(kfg_toml_table_at(r, 0)->key_pos.col, 1);
    assert_int_equal(path(r, "key")->pos.col, 7);
    kfg_toml_free(r);
}

/* ---- positions and messages ---- */

static void test_positions(void **state)
{
    (void)state;
    struct kfg_toml_value *r = parse_ok(
        "title = \"x\"\n"                   /* 1 */
        "\n"                                /* 2 */
        "[server]\n"                        /* 3 */
        "  host = \"h\"   # c\n"            /* 4 */
        "  ports = [ 8001,\n"               /* 5 */
        "\t8002 ]\n"                        /* 6 */
        "[[adapter]]\n"                     /* 7 */
        "path = 'a'\n"                      /* 8 */
        "[[adapter]]\n"                     /* 9 */
        "    pth = 'b'\n"                   /* 10 */
        "[a.b.c]\n"                         /* 11 */
        "\"µ€\" = { x.y = 1 }\n");          /* 12 */
    const struct kfg_toml_value *server = path(r, "server"), *ad, *v;
    const struct kfg_toml_entry *e;

    e = kfg_toml_table_at(r, 0);
    assert_int_equal(e->key_pos.line, 1);
    assert_int_equal(e->key_pos.col, 1);
    assert_int_equal(e->value->pos.col, 9);

    /* a [header] table records the header, its entry the key in it */
    assert_int_equal(server->pos.line, 3);
    assert_int_equal(server->pos.col, 1);
    e = kfg_toml_table_find(r, "server", 6);
    assert_int_equal(e->key_pos.line, 3);
    assert_int_equal(e->key_pos.col, 2);

    e = kfg_toml_table_at(server, 0);
    assert_string_equal(e->key, "host");
    assert_int_equal(e->key_pos.line, 4);
    assert_int_equal(e->key_pos.col, 3);
    assert_int_equal(e->value->pos.col, 10);

    v = path(r, "server.ports");
    assert_int_equal(v->pos.line, 5);
    assert_int_equal(v->pos.col, 11);
    assert_int_equal(kfg_toml_array_at(v, 0)->pos.col, 13);
    assert_int_equal(kfg_toml_array_at(v, 1)->pos.line, 6);
    assert_int_equal(kfg_toml_array_at(v, 1)->pos.col, 2);     /* a tab is one column */

    /* array of tables: the array records the first header, each element its own */
    ad = path(r, "adapter");
    assert_int_equal(ad->pos.line, 7);
    assert_int_equal(kfg_toml_array_at(ad, 0)->pos.line, 7);
    assert_int_equal(kfg_toml_array_at(ad, 1)->pos.line, 9);
    e = kfg_toml_table_at(kfg_toml_array_at(ad, 1), 0);
    assert_string_equal(e->key, "pth");
    assert_int_equal(e->key_pos.line, 10);
    assert_int_equal(e->key_pos.col, 5);

    /* implicit tables record the key that created them */
    assert_int_equal(path(r, "a")->pos.line, 11);
    assert_int_equal(path(r, "a")->pos.col, 2);
    assert_int_equal(path(r, "a.b")->pos.col, 4);
    assert_int_equal(path(r, "a.b.c")->pos.col, 1);

    /* columns count characters, not bytes */
    e = kfg_toml_table_at(path(r, "a.b.c"), 0);
    assert_string_equal(e->key, "µ€");
    assert_int_equal(e->key_pos.line, 12);
    assert_int_equal(e->value->pos.col, 8);
    v = kfg_toml_table_at(e->value, 0)->value;    /* x, created by a dotted key */
    assert_int_equal(v->pos.col, 10);
    assert_int_equal(kfg_toml_table_at(v, 0)->key_pos.col, 12);
    kfg_toml_free(r);
}

static void test_error_messages(void **state)
{
    (void)state;
    struct kfg_toml_error err;
    struct kfg_toml_value *root;
    const char *src = "[owner]\nname = 'a'\n        name = 'b'\n";

    assert_int_equal(kfg_toml_parse(src, strlen(src), &root, &err), -1);
    assert_int_equal(err.line, 3);
    assert_int_equal(err.col, 9);
    assert_string_equal(err.msg, "duplicate key 'name' (first defined at line 2, col 1)");

    /* err may be NULL */
    assert_int_equal(kfg_toml_parse(src, strlen(src), &root, NULL), -1);
    assert_null(root);

    EXPECT_ERROR("a = 1\n\n[t]\nb = 2 c = 3\n", 4, 7,
                 "expected end of line after the value, found 'c'");
    EXPECT_ERROR("x = [1, 2\ny = 3", 2, 1, "expected ',' or ']' in array, found 'y'");
    EXPECT_ERROR("x = [1, 2,", 1, 5, "unterminated array");
    EXPECT_ERROR("x = {a = 1", 1, 5, "unterminated inline table");
    EXPECT_ERROR("x = {a = 1,}", 1, 12, "trailing comma");
    EXPECT_ERROR("x = {a = 1,\n b = 2}", 1, 12, "newlines are not allowed in an inline table");
    EXPECT_ERROR("key\n", 1, 4, "expected '=' after key 'key', found end of line");
    EXPECT_ERROR("key =\n", 1, 6, "expected a value, found end of line");
    EXPECT_ERROR("k = hello", 1, 5, "invalid value 'hello'");
    EXPECT_ERROR("[a]\n[a]", 2, 1, "table [a] defined twice (first at line 1)");
    EXPECT_ERROR("[a\n", 1, 3, "expected ']' to close the header");
    EXPECT_ERROR("[[a]\n", 1, 4, "expected ']]' to close the header");
    EXPECT_ERROR("[a]x\n", 1, 4, "expected end of line after the table header");
    EXPECT_ERROR("\"a\tb\".\"c\" = 1\n\"a\tb\".\"c\" = 2", 2, 7,
                 "duplicate key '\"a\\u0009b\".c'");
    EXPECT_ERROR("'''k''' = 1", 1, 1, "multi-line strings cannot be used as keys");
    EXPECT_ERROR("a = 1\r\nb = 2\r\nb = 3", 3, 1, "duplicate key 'b'");
    EXPECT_ERROR("a = 1\rb = 2", 1, 6, "carriage return without line feed");
    EXPECT_ERROR("a = 1 # x\x7f", 1, 10, "control character U+007F is not allowed in a comment");
    expect_error("\x00", 1, 1, 1, "control character");
    expect_error("a = \"\0\"", 7, 1, 6, "control character U+0000 must be escaped");

    /* long keys are shortened in messages, which always stay NUL-terminated */
    char big[1100];
    memset(big, 'k', 500);
    strcpy(big + 500, " = 1\n");
    assert_int_equal(kfg_toml_parse(big, strlen(big), &root, &err), 0);
    kfg_toml_free(root);
    memcpy(big + 505, big, 505);
    big[1010] = '\0';
    assert_int_equal(kfg_toml_parse(big, strlen(big), &root, &err), -1);
    assert_int_equal(err.line, 2);
    assert_non_null(strstr(err.msg, "duplicate key 'kkkk"));
    assert_non_null(strstr(err.msg, "...'"));
    assert_true(strlen(err.msg) < sizeof err.msg);
}

/* ---- table definition rules ---- */

static void test_table_rules(void **state)
{
    (void)state;
    struct kfg_toml_value *r;

    r = parse_ok("[a.b.c]\nx = 1\n[a]\ny = 2\n[a.b]\nz = 3\n");
    assert_int_equal(get_int(r, "a.b.c.x"), 1);
    assert_int_equal(get_int(r, "a.y"), 2);
    assert_int_equal(get_int(r, "a.b.z"), 3);
    kfg_toml_free(r);

    r = parse_ok("[fruit]\napple.color = 'red'\napple.taste.sweet = true\n"
                 "[fruit.apple.texture]\nsmooth = true\n");
    assert_string_equal(get_str(r, "fruit.apple.color"), "red");
    assert_int_equal(path(r, "fruit.apple.texture.smooth")->type, KFG_TOML_BOOL);
    kfg_toml_free(r);

    r = parse_ok("[[a]]\nx = 1\n[a.sub]\ny = 1\n[[a]]\nx = 2\n[a.sub]\ny = 2\n[[a.list]]\n");
    assert_int_equal(kfg_toml_array_len(path(r, "a")), 2);
    assert_int_equal(get_int(kfg_toml_array_at(path(r, "a"), 1), "sub.y"), 2);
    assert_int_equal(kfg_toml_array_len(path(kfg_toml_array_at(path(r, "a"), 1), "list")), 1);
    kfg_toml_free(r);

    r = parse_ok("a.b = 1\na.c = 2\nt = { x.y = 1, x.z = 2 }\n");
    assert_int_equal(get_int(r, "a.c"), 2);
    assert_int_equal(get_int(r, "t.x.z"), 2);
    kfg_toml_free(r);

    EXPECT_ERROR("[a]\nb.c = 1\n[a.b]\n", 3, 1, "was already defined by dotted keys");
    EXPECT_ERROR("[a.b]\n[a]\nb.c = 1\n", 3, 1, "cannot add to table 'b' with dotted keys");
    EXPECT_ERROR("a = {b = 1}\na.c = 2\n", 2, 1, "cannot add keys to inline table 'a'");
    EXPECT_ERROR("a = {b = 1}\n[a.c]\n", 2, 2, "'a' is an inline table");
    EXPECT_ERROR("a = {b = 1}\n[a]\n", 2, 2, "it is already an inline table");
    EXPECT_ERROR("a = [{}]\n[[a]]\n", 2, 3, "it is already an array");
    EXPECT_ERROR("[[a]]\n[a]\n", 2, 2, "it is already an array of tables");
    EXPECT_ERROR("[a]\n[[a]]\n", 2, 3, "it is already a table");
    EXPECT_ERROR("a = 1\n[a.b]\n", 2, 2, "'a' is an integer (line 1)");
    EXPECT_ERROR("a = 1\na.b = 2\n", 2, 1, "cannot set 'a.b': 'a' is an integer");
    EXPECT_ERROR("[[a]]\n[a.b]\n[a.b]\n", 3, 1, "table [a.b] defined twice");
    EXPECT_ERROR("x = {a.b = 1, a = 2}", 1, 15, "duplicate key 'a'");
}

/* ---- hostile input ---- */

static char *repeat(const char *prefix, const char *unit, size_t n, const char *suffix)
{
    size_t pl = strlen(prefix), ul = strlen(unit), sl = strlen(suffix);
    char *s = malloc(pl + ul * n + sl + 1), *p = s;

    assert_non_null(s);
    memcpy(p, prefix, pl);
    p += pl;
    for (size_t i = 0; i < n; i++, p += ul)
        memcpy(p, unit, ul);
    memcpy(p, suffix, sl + 1);
    return s;
}

static void check_depth(const char *prefix, const char *open, const char *mid,
                        const char *close, size_t ok_depth)
{
    char *a = repeat(prefix, open, ok_depth, ""), *b, *src;
    struct kfg_toml_value *root;
    struct kfg_toml_error err;
    size_t al;

    b = repeat(mid, close, ok_depth, "\n");
    al = strlen(a);
    src = malloc(al + strlen(b) + 1);
    memcpy(src, a, al);
    strcpy(src + al, b);
    if (kfg_toml_parse(src, strlen(src), &root, &err) != 0)
        fail_msg("depth %zu rejected: %s", ok_depth, err.msg);
    kfg_toml_free(root);
    free(a);
    free(b);
    free(src);

    a = repeat(prefix, open, ok_depth + 1, "");
    b = repeat(mid, close, ok_depth + 1, "\n");
    al = strlen(a);
    src = malloc(al + strlen(b) + 1);
    memcpy(src, a, al);
    strcpy(src + al, b);
    assert_int_equal(kfg_toml_parse(src, strlen(src), &root, &err), -1);
    assert_non_null(strstr(err.msg, "nesting is deeper than 128 levels"));
    free(a);
    free(b);
    free(src);
}

static void test_deep_nesting(void **state)
{
    (void)state;
    check_depth("a = ", "[", "1", "]", KFG_TOML_MAX_DEPTH);
    check_depth("a = ", "{b = ", "1", "}", KFG_TOML_MAX_DEPTH);
    check_depth("a = ", "[{b = ", "1", "}]", KFG_TOML_MAX_DEPTH / 2);

    /* dotted keys and headers count as nesting too */
    char *s = repeat("", "k.", KFG_TOML_MAX_DEPTH - 1, "k = 1\n");
    struct kfg_toml_value *root = parse_ok(s);
    kfg_toml_free(root);
    free(s);
    s = repeat("", "k.", KFG_TOML_MAX_DEPTH, "k = {}\n");
    assert_int_equal(kfg_toml_parse(s, strlen(s), &root, NULL), -1);
    free(s);
    s = repeat("[", "k.", KFG_TOML_MAX_DEPTH - 1, "k]\n");
    root = parse_ok(s);
    kfg_toml_free(root);
    free(s);
    s = repeat("[[", "k.", KFG_TOML_MAX_DEPTH, "k]]\n");
    assert_int_equal(kfg_toml_parse(s, strlen(s), &root, NULL), -1);
    free(s);

    /* a megabyte of brackets fails fast instead of recursing */
    s = repeat("a = ", "[", 1 << 20, "");
    struct kfg_toml_error err;
    assert_int_equal(kfg_toml_parse(s, strlen(s), &root, &err), -1);
    assert_int_equal(err.col, 5 + KFG_TOML_MAX_DEPTH);
    free(s);
    s = repeat("", "a.", 1 << 18, "a = 1");
    assert_int_equal(kfg_toml_parse(s, strlen(s), &root, &err), -1);
    free(s);
}

static void test_many_keys(void **state)
{
    (void)state;
    enum { N = 200000 };
    char *src = malloc((size_t)N * 24), *p = src;
    struct kfg_toml_value *root;
    struct kfg_toml_error err;
    clock_t t0 = clock();

    for (int i = 0; i < N; i++)
        p += sprintf(p, "key%d = %d\n", i, i);
    assert_int_equal(kfg_toml_parse(src, (size_t)(p - src), &root, &err), 0);
    assert_int_equal(kfg_toml_table_len(root), N);
    for (int i = 0; i < N; i += 997) {
        char k[16];

        snprintf(k, sizeof k, "key%d", i);
        assert_int_equal(get_int(root, k), i);
    }
    kfg_toml_free(root);

    /* a duplicate at the very end is still found */
    p += sprintf(p, "key%d = 0\n", N / 2);
    assert_int_equal(kfg_toml_parse(src, (size_t)(p - src), &root, &err), -1);
    assert_int_equal(err.line, N + 1);
    assert_non_null(strstr(err.msg, "duplicate key"));
    free(src);

    /* many array-of-tables elements and a long single-line array */
    src = repeat("", "[[t]]\nx = 1\n", 100000, "");
    root = parse_ok(src);
    assert_int_equal(kfg_toml_array_len(path(root, "t")), 100000);
    kfg_toml_free(root);
    free(src);
    src = repeat("a = [", "1,", 300000, "2]\nb = 1\n");
    root = parse_ok(src);
    assert_int_equal(kfg_toml_array_len(path(root, "a")), 300001);
    assert_int_equal(path(root, "b")->pos.line, 2);
    kfg_toml_free(root);
    free(src);

    /* generous bound; quadratic behaviour would take minutes */
    assert_true((double)(clock() - t0) / CLOCKS_PER_SEC < 20.0);
}

static void test_edges(void **state)
{
    (void)state;
    struct kfg_toml_value *root = NULL;
    struct kfg_toml_error err;

    /* empty and comment-only documents */
    root = parse_ok("");
    assert_int_equal(kfg_toml_table_len(root), 0);
    kfg_toml_free(root);
    assert_int_equal(kfg_toml_parse(NULL, 0, &root, &err), 0);
    kfg_toml_free(root);
    root = parse_ok("# only\n\n   \t\n# comments");
    kfg_toml_free(root);

    /* the input need not be NUL-terminated: only len bytes are read */
    assert_int_equal(kfg_toml_parse("a = 12345", 5, &root, &err), 0);
    assert_int_equal(get_int(root, "a"), 1);
    kfg_toml_free(root);
    assert_int_equal(kfg_toml_parse("a = \"xy\"", 7, &root, &err), -1);
    assert_non_null(strstr(err.msg, "unterminated string"));
    assert_int_equal(kfg_toml_parse("a = 1979-05-27T07:32:00Z", 21, &root, &err), -1);
    assert_int_equal(kfg_toml_parse("a = tr", 6, &root, &err), -1);

    /* bad arguments */
    assert_int_equal(kfg_toml_parse("a = 1", 5, NULL, &err), -1);
    assert_int_equal(kfg_toml_parse(NULL, 3, &root, &err), -1);
    assert_null(root);

    /* keys: empty quoted, NUL inside, dotted with whitespace, numeric */
    root = parse_ok("\"\" = 1\n\"a\\u0000b\" = 2\n a . \"b.c\" . d = 3\n1.2 = 4\n");
    int64_t one = 0;
    assert_true(kfg_toml_get_int(kfg_toml_table_get(root, ""), &one));
    assert_int_equal(one, 1);
    assert_non_null(kfg_toml_table_find(root, "a\0b", 3));
    assert_int_equal(kfg_toml_table_find(root, "a", 1)->value->type, KFG_TOML_TABLE);
    assert_int_equal(get_int(kfg_toml_table_get(path(root, "a"), "b.c"), "d"), 3);
    assert_int_equal(get_int(root, "1.2"), 4);
    kfg_toml_free(root);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalars),
        cmocka_unit_test(test_order_and_iteration),
        cmocka_unit_test(test_integers),
        cmocka_unit_test(test_floats),
        cmocka_unit_test(test_datetimes),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_utf8_validation),
        cmocka_unit_test(test_positions),
        cmocka_unit_test(test_error_messages),
        cmocka_unit_test(test_table_rules),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_many_keys),
        cmocka_unit_test(test_edges),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
