/*
 * Prometheus metrics registry. Metrics are created (find-or-create by name +
 * labels, under a mutex; cheap enough for init paths, not for hot paths) and
 * then updated lock-free from any thread with relaxed atomics. The registry
 * owns every metric; handles stay valid until kfg_metrics_shutdown, so a
 * removed instance's counters keep their last value, as Prometheus expects.
 */
#ifndef KFG_METRICS_H
#define KFG_METRICS_H

#include <stdint.h>

#include "buf.h"

enum kfg_metric_type { KFG_METRIC_COUNTER = 1, KFG_METRIC_GAUGE, KFG_METRIC_HISTOGRAM };

struct kfg_metric;

/* name: [a-zA-Z_:][a-zA-Z0-9_:]*, else NULL. labels: label text without
 * braces, e.g. `instance="wx0",outcome="ok"`, or NULL/"" for none; values
 * must already be escaped (use kfg_metrics_label_escape). A second call with
 * the same name and labels returns the same metric; the same name with
 * another type returns NULL (as do invalid labels, a histogram `x` next to
 * an `x_count`/`x_sum`/`x_bucket`, and out of memory). Labels are compared
 * as text, so always pass them in the same order. Histograms use seconds
 * with fixed buckets 0.0001 .. 10 s; observations are clamped to [0, 1e9].
 * Updates on a NULL metric are no-ops; counter deltas must be >= 0 (not
 * checked on the hot path). */
struct kfg_metric *kfg_metric_get(enum kfg_metric_type type, const char *name,
                                  const char *help, const char *labels);
void kfg_metric_add(struct kfg_metric *m, int64_t delta);
void kfg_metric_set(struct kfg_metric *m, int64_t value);
void kfg_metric_observe(struct kfg_metric *m, double seconds);
int64_t kfg_metric_value(const struct kfg_metric *m);   /* counter, gauge; tests */
uint64_t kfg_metric_count(const struct kfg_metric *m);  /* histogram samples */

/* Appends the whole registry in Prometheus text format 0.0.4: one # HELP and
 * # TYPE per name, metrics grouped by name, histograms as _bucket{le=...},
 * _sum and _count. */
void kfg_metrics_render(struct kfg_buf *out);
/* Escapes \, " and newline of a label value into out (NUL-terminated,
 * truncated to cap). */
void kfg_metrics_label_escape(char *out, size_t cap, const char *value);
void kfg_metrics_shutdown(void);

#endif
