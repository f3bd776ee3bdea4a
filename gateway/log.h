/*
 * Structured logging: one line per event, written with a single write(2) so
 * lines from several threads never interleave. logfmt by default
 * (ts=... level=... instance=... req=... msg="..."), or JSON objects.
 * Everything passed in is borrowed for the duration of the call.
 */
#ifndef KFG_LOG_H
#define KFG_LOG_H

#include <stdarg.h>

#include "kfgate/plugin.h"   /* enum kfg_log_level */

enum kfg_log_format { KFG_LOG_LOGFMT = 0, KFG_LOG_JSON = 1 };

/* Process-wide settings; safe to call again on reload. fd defaults to 2. */
void kfg_log_setup(enum kfg_log_format format, int level, int fd);
int kfg_log_level(void);
/* Parses "error"/"warn"/"info"/"debug"; -1 if unknown. */
int kfg_log_level_parse(const char *s);
int kfg_log_format_parse(const char *s);   /* "logfmt" / "json"; -1 if unknown */

/* instance and req_id may be NULL. `level` above `max_level` is skipped; pass
 * -1 as max_level to use the process level. Extra key=value pairs can be
 * given as `kv`, a NULL-terminated array of alternating keys and values. */
void kfg_logv(int level, int max_level, const char *instance,
              const char *req_id, const char *const *kv, const char *fmt,
              va_list ap);
void kfg_log(int level, const char *instance, const char *req_id,
             const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#define kfg_error(...) kfg_log(KFG_LOG_ERROR, NULL, NULL, __VA_ARGS__)
#define kfg_warn(...) kfg_log(KFG_LOG_WARN, NULL, NULL, __VA_ARGS__)
#define kfg_info(...) kfg_log(KFG_LOG_INFO, NULL, NULL, __VA_ARGS__)
#define kfg_debug(...) kfg_log(KFG_LOG_DEBUG, NULL, NULL, __VA_ARGS__)

#endif
