#include "metrics.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define NBUCKETS 16
#define CACHE_LINE 64
#define MAX_LABELS 32
/* Clamp for one observation: keeps the double -> integer conversion
 * defined; nothing we time comes anywhere near 31 years. */
#define MAX_OBSERVE_NS 1000000000000000000ull

/* Bounds compared in integer nanoseconds, the unit the sum is kept in, so a
 * sample and its bucket can never disagree through float rounding. */
static const uint64_t bucket_ns[NBUCKETS] = {
    100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000, 25000000,
    50000000, 100000000, 250000000, 500000000, 1000000000, 2500000000u,
    5000000000u, 10000000000u,
};
static const char *const bucket_le[NBUCKETS + 1] = {
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
    "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
};

struct family;

struct kfg_metric {
    /* Each metric starts on its own cache line with the update counters
     * first: two hot counters bumped from different workers never share a
     * line, and the cold fields below are only read by render. */
    _Alignas(CACHE_LINE) _Atomic int64_t value;     /* counter, gauge */
    /* Histogram sum as integer nanoseconds: one fetch_add with no CAS
     * retry under contention, exact (a double accumulating 1e-4 steps
     * drifts), rendered as an exact decimal, and 2^64 ns is 584 years. */
    _Atomic uint64_t sum_ns;
    /* Per bucket, not cumulative; the last is (10 s, +Inf). There is no
     * separate count: render derives it from the buckets, so _count always
     * equals the +Inf bucket even while observations race with a scrape. */
    _Atomic uint64_t bucket[NBUCKETS + 1];
    struct family *fam;
    struct kfg_metric *next;
    char labels[];
};

struct family {
    struct family *next;
    enum kfg_metric_type type;
    char *help;
    struct kfg_metric *first;
    struct kfg_metric **tail;
    char name[];
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct family *g_families;
static struct family **g_ftail = &g_families;

static int valid_name(const char *s)
{
    if (!s || !*s || (*s >= '0' && *s <= '9'))
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '_' || *s == ':'))
            return 0;
    return 1;
}

static int label_name_char(char c, int first)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
           (!first && c >= '0' && c <= '9');
}

/* A malformed label set would make the whole page unparseable and lose
 * every metric on scrape, so it is refused here, at creation. Accepts
 * name="value"[,name="value"...] with escaped values, unique names, no
 * reserved __ names, and no `le` on histograms (render adds it). */
static int valid_labels(const char *s, enum kfg_metric_type type)
{
    const char *names[MAX_LABELS];
    size_t lens[MAX_LABELS];
    size_t n = 0;
    if (!s || !*s)
        return 1;
    for (;;) {
        const char *start = s;
        if (!label_name_char(*s, 1))
            return 0;
        while (label_name_char(*s, 0))
            s++;
        size_t len = (size_t)(s - start);
        if ((len >= 2 && start[0] == '_' && start[1] == '_') ||
            (type == KFG_METRIC_HISTOGRAM && len == 2 && memcmp(start, "le", 2) == 0))
            return 0;
        for (size_t i = 0; i < n; i++)
            if (lens[i] == len && memcmp(names[i], start, len) == 0)
                return 0;
        if (n == MAX_LABELS)
            return 0;
        names[n] = start;
        lens[n++] = len;
        if (s[0] != '=' || s[1] != '"')
            return 0;
        for (s += 2; *s != '"'; s++) {
            if (!*s || *s == '\n')
                return 0;
            if (*s == '\\' && *++s != '\\' && *s != '"' && *s != 'n')
                return 0;
        }
        s++;
        if (!*s)
            return 1;
        if (*s++ != ',')
            return 0;
    }
}

static const char *const hist_suffix[] = { "_bucket", "_sum", "_count" };

/* Is `a` histogram `h`'s name plus one of the series suffixes? */
static int is_hist_series(const char *a, const char *h)
{
    size_t hl = strlen(h);
    if (strncmp(a, h, hl) != 0)
        return 0;
    for (size_t i = 0; i < 3; i++)
        if (strcmp(a + hl, hist_suffix[i]) == 0)
            return 1;
    return 0;
}

static struct family *find_family(const char *name)
{
    for (struct family *f = g_families; f; f = f->next)
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

/* A histogram `x` next to a metric `x_count` (either way round) renders as
 * two families claiming the same series; parsers reject or merge them. */
static int collides(const char *name, enum kfg_metric_type type)
{
    for (struct family *f = g_families; f; f = f->next) {
        if (type == KFG_METRIC_HISTOGRAM && is_hist_series(f->name, name))
            return 1;
        if (f->type == KFG_METRIC_HISTOGRAM && is_hist_series(name, f->name))
            return 1;
    }
    return 0;
}

static struct family *new_family(enum kfg_metric_type type, const char *name,
                                 const char *help)
{
    size_t nl = strlen(name);
    struct family *f = malloc(sizeof(*f) + nl + 1);
    char *h = strdup(help ? help : "");
    if (!f || !h) {
        free(f);
        free(h);
        return NULL;
    }
    f->next = NULL;
    f->type = type;
    f->help = h;
    f->first = NULL;
    f->tail = &f->first;
    memcpy(f->name, name, nl + 1);
    *g_ftail = f;
    g_ftail = &f->next;
    return f;
}

static struct kfg_metric *new_metric(struct family *f, const char *labels)
{
    size_t ll = strlen(labels);
    size_t size = sizeof(struct kfg_metric) + ll + 1;
    size = (size + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE;  /* aligned_alloc wants a multiple */
    struct kfg_metric *m = aligned_alloc(CACHE_LINE, size);
    if (!m)
        return NULL;
    memset(m, 0, size);
    m->fam = f;
    memcpy(m->labels, labels, ll + 1);
    *f->tail = m;
    f->tail = &m->next;
    return m;
}

struct kfg_metric *kfg_metric_get(enum kfg_metric_type type, const char *name,
                                  const char *help, const char *labels)
{
    if (type < KFG_METRIC_COUNTER || type > KFG_METRIC_HISTOGRAM || !valid_name(name) ||
        !valid_labels(labels, type))
        return NULL;
    if (!labels)
        labels = "";
    struct kfg_metric *m = NULL;
    pthread_mutex_lock(&g_lock);
    struct family *f = find_family(name);
    if (!f) {
        if (!collides(name, type))
            f = new_family(type, name, help);
    } else if (f->type != type) {
        f = NULL;
    } else if (!*f->help && help && *help) {
        char *h = strdup(help);   /* first caller had no help text; take this one */
        if (h) {
            free(f->help);
            f->help = h;
        }
    }
    if (f) {
        for (m = f->first; m; m = m->next)
            if (strcmp(m->labels, labels) == 0)
                break;
        if (!m)
            m = new_metric(f, labels);
    }
    pthread_mutex_unlock(&g_lock);
    return m;
}

/* Hot path: one relaxed atomic add. The NULL test costs a predicted branch
 * and keeps a metric whose creation failed from crashing the request. */
void kfg_metric_add(struct kfg_metric *m, int64_t delta)
{
    if (m)
        atomic_fetch_add_explicit(&m->value, delta, memory_order_relaxed);
}

void kfg_metric_set(struct kfg_metric *m, int64_t value)
{
    if (m)
        atomic_store_explicit(&m->value, value, memory_order_relaxed);
}

void kfg_metric_observe(struct kfg_metric *m, double seconds)
{
    if (!m)
        return;
    uint64_t ns;
    if (!(seconds > 0))     /* negative, zero or NaN */
        ns = 0;
    else if (seconds >= MAX_OBSERVE_NS / 1e9)
        ns = MAX_OBSERVE_NS;
    else
        ns = (uint64_t)(seconds * 1e9 + 0.5);
    size_t i = 0;
    while (i < NBUCKETS && ns > bucket_ns[i])
        i++;
    atomic_fetch_add_explicit(&m->bucket[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->sum_ns, ns, memory_order_relaxed);
}

int64_t kfg_metric_value(const struct kfg_metric *m)
{
    return m ? atomic_load_explicit(&m->value, memory_order_relaxed) : 0;
}

uint64_t kfg_metric_count(const struct kfg_metric *m)
{
    uint64_t n = 0;
    for (size_t i = 0; m && i <= NBUCKETS; i++)
        n += atomic_load_explicit(&m->bucket[i], memory_order_relaxed);
    return n;
}

static void put_series(struct kfg_buf *out, const char *name, const char *suffix,
                       const char *labels, const char *le)
{
    kfg_buf_puts(out, name);
    kfg_buf_puts(out, suffix);
    if (*labels || le) {
        kfg_buf_putc(out, '{');
        kfg_buf_puts(out, labels);
        if (le) {
            kfg_buf_puts(out, *labels ? ",le=\"" : "le=\"");
            kfg_buf_puts(out, le);
            kfg_buf_putc(out, '"');
        }
        kfg_buf_putc(out, '}');
    }
    kfg_buf_putc(out, ' ');
}

/* Exact decimal seconds, trailing zeros dropped: 1500000 ns -> "0.0015". */
static void put_seconds(struct kfg_buf *out, uint64_t ns)
{
    char frac[10];
    int n = 9;
    uint64_t f = ns % 1000000000u;
    for (int i = 8; i >= 0; i--, f /= 10)
        frac[i] = (char)('0' + f % 10);
    while (n > 0 && frac[n - 1] == '0')
        n--;
    kfg_buf_printf(out, "%" PRIu64, ns / 1000000000u);
    if (n > 0) {
        kfg_buf_putc(out, '.');
        kfg_buf_append(out, frac, (size_t)n);
    }
}

static void render_family(struct kfg_buf *out, const struct family *f)
{
    static const char *const type_names[] = { "", "counter", "gauge", "histogram" };
    if (*f->help) {
        kfg_buf_printf(out, "# HELP %s ", f->name);
        for (const char *p = f->help; *p; p++) {
            if (*p == '\\')
                kfg_buf_puts(out, "\\\\");
            else if (*p == '\n')
                kfg_buf_puts(out, "\\n");
            else
                kfg_buf_putc(out, *p);
        }
        kfg_buf_putc(out, '\n');
    }
    kfg_buf_printf(out, "# TYPE %s %s\n", f->name, type_names[f->type]);
    for (const struct kfg_metric *m = f->first; m; m = m->next) {
        if (f->type != KFG_METRIC_HISTOGRAM) {
            put_series(out, f->name, "", m->labels, NULL);
            kfg_buf_printf(out, "%" PRId64 "\n",
                           atomic_load_explicit(&m->value, memory_order_relaxed));
            continue;
        }
        uint64_t cum = 0;
        for (size_t i = 0; i <= NBUCKETS; i++) {
            cum += atomic_load_explicit(&m->bucket[i], memory_order_relaxed);
            put_series(out, f->name, "_bucket", m->labels, bucket_le[i]);
            kfg_buf_printf(out, "%" PRIu64 "\n", cum);
        }
        put_series(out, f->name, "_sum", m->labels, NULL);
        put_seconds(out, atomic_load_explicit(&m->sum_ns, memory_order_relaxed));
        kfg_buf_putc(out, '\n');
        put_series(out, f->name, "_count", m->labels, NULL);
        kfg_buf_printf(out, "%" PRIu64 "\n", cum);
    }
}

void kfg_metrics_render(struct kfg_buf *out)
{
    pthread_mutex_lock(&g_lock);
    for (const struct family *f = g_families; f; f = f->next)
        if (f->first)   /* empty only if creating its first metric ran out of memory */
            render_family(out, f);
    pthread_mutex_unlock(&g_lock);
}

void kfg_metrics_label_escape(char *out, size_t cap, const char *value)
{
    if (!cap)
        return;
    size_t o = 0;
    const char *p = value ? value : "";
    while (*p) {
        unsigned char c = (unsigned char)*p;
        const char *unit = p;
        size_t n = 1;
        if (c == '\\' || c == '"' || c == '\n') {
            unit = c == '\\' ? "\\\\" : c == '"' ? "\\\"" : "\\n";
            n = 2;
        } else if (c >= 0xc0) {
            /* Keep a UTF-8 character whole so truncation cannot cut it. */
            size_t want = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
            while (n < want && ((unsigned char)p[n] & 0xc0) == 0x80)
                n++;
        }
        if (o + n >= cap)
            break;
        memcpy(out + o, unit, n);
        o += n;
        p += unit == p ? n : 1;
    }
    out[o] = '\0';
}

void kfg_metrics_shutdown(void)
{
    pthread_mutex_lock(&g_lock);
    struct family *f = g_families;
    while (f) {
        struct family *fn = f->next;
        struct kfg_metric *m = f->first;
        while (m) {
            struct kfg_metric *mn = m->next;
            free(m);
            m = mn;
        }
        free(f->help);
        free(f);
        f = fn;
    }
    g_families = NULL;
    g_ftail = &g_families;
    pthread_mutex_unlock(&g_lock);
}
