/*
 * kfgate: the daemon's entry point. Parses the command line, loads and
 * checks the configuration, opens the listeners, starts the plugin
 * instances, then runs the control loop on this thread and the worker loops
 * on their own until SIGTERM/SIGINT. SIGHUP reloads.
 */
#include <curl/curl.h>
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "busd.h"
#include "config.h"
#include "gateway.h"
#include "http.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kfgate -c FILE [--check]\n"
            "       kfgate --version\n"
            "  -c, --config FILE   configuration (TOML); see config.example.toml\n"
            "      --check         validate the configuration and every plugin it names, "
            "then exit\n"
            "  -v, --version       print the version and plugin ABI, then exit\n");
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct kfg_gateway *gw = arg;
    if (sig == SIGHUP) {
        kfg_log(KFG_LOG_INFO, NULL, NULL, "SIGHUP: reloading %s", gw->cfg->path);
        struct kfg_buf errs = { 0 };
        kfg_gateway_reload(gw, &errs);
        kfg_buf_free(&errs);
        return;
    }
    kfg_log(KFG_LOG_INFO, NULL, NULL, "%s received", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    kfg_gateway_shutdown(gw);
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    int check = 0;
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "check", no_argument, NULL, 'C' },
        { "version", no_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int o;
    while ((o = getopt_long(argc, argv, "c:vh", opts, NULL)) != -1) {
        switch (o) {
        case 'c':
            path = optarg;
            break;
        case 'C':
            check = 1;
            break;
        case 'v':
            printf("kfgate %s (plugin ABI %d.%d, libevent %s, %s)\n", KFG_VERSION,
                   KFG_ABI_MAJOR, KFG_ABI_MINOR, event_get_version(), curl_version());
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!path || optind != argc) {
        usage(stderr);
        return 2;
    }

    kfg_log_setup(KFG_LOG_LOGFMT, KFG_LOG_INFO, 2);
    struct kfg_buf errs = { 0 };
    struct kfg_config *cfg;
    if (kfg_config_load(path, &cfg, &errs) < 0) {
        fprintf(stderr, "%s", kfg_buf_cstr(&errs));
        fprintf(stderr, "kfgate: configuration %s is invalid\n", path);
        kfg_buf_free(&errs);
        return 1;
    }
    kfg_log_setup(cfg->log_format, cfg->log_level, 2);
    if (check) {
        int r = kfg_gateway_check(cfg, &errs);
        if (r < 0) {
            fprintf(stderr, "%s", kfg_buf_cstr(&errs));
            fprintf(stderr, "kfgate: configuration %s is invalid\n", path);
        } else {
            printf("kfgate: configuration %s is valid (%zu instance(s))\n", path,
                   cfg->ninstances);
        }
        kfg_buf_free(&errs);
        kfg_config_free(cfg);
        return r < 0 ? 1 : 0;
    }

    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);

    static struct kfg_gateway gw_storage;
    struct kfg_gateway *gw = &gw_storage;
    kfg_gw = gw;
    pthread_mutex_init(&gw->chain_mu, NULL);
    gw->cfg = cfg;
    gw->control = kfg_loop_new(0);
    gw->nworkers = cfg->workers;
    gw->workers = calloc(gw->nworkers, sizeof(*gw->workers));
    if (!gw->control || !gw->workers)
        return 1;
    for (size_t i = 0; i < gw->nworkers; i++)
        if (!(gw->workers[i] = kfg_loop_new((unsigned)i + 1)))
            return 1;
    /* Everything below that captures "the current loop" runs as if on the
     * control loop, which is where it will be used from. */
    kfg_loop_enter(gw->control);

    gw->m_reloads_ok = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_reloads_total",
                                      "Configuration reloads, by outcome.", "outcome=\"ok\"");
    gw->m_reloads_failed = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_reloads_total", NULL,
                                          "outcome=\"failed\"");
    gw->m_instances = kfg_metric_get(KFG_METRIC_GAUGE, "kfgate_instances",
                                     "Plugin instances in the current generation.", NULL);
    /* The bus first: instances may emit as soon as they start. */
    if (kfg_busd_start(gw, cfg, &errs) < 0) {
        fprintf(stderr, "%s", kfg_buf_cstr(&errs));
        fprintf(stderr, "kfgate: cannot start the bus\n");
        return 1;
    }

    gw->front = kfg_http_server_new("http");
    if (kfg_http_server_listen(gw->front, cfg->http_listen, gw->workers, gw->nworkers) < 0)
        return 1;
    if (cfg->admin_listen[0]) {
        gw->admin = kfg_http_server_new("admin");
        if (kfg_http_server_listen(gw->admin, cfg->admin_listen, &gw->control, 1) < 0)
            return 1;
        struct kfg_routes *ar = kfg_routes_new();
        kfg_admin_routes(ar);
        struct kfg_http_config acfg;
        kfg_http_config_defaults(&acfg);
        acfg.max_connections = 64;
        kfg_http_server_publish(gw->admin, ar, &acfg);
    }

    if (kfg_gateway_apply(gw, cfg, &errs) < 0) {
        fprintf(stderr, "%s", kfg_buf_cstr(&errs));
        fprintf(stderr, "kfgate: cannot start\n");
        return 1;
    }
    kfg_buf_free(&errs);

    struct event_base *base = kfg_loop_base(gw->control);
    struct event *sigs[3];
    int signums[3] = { SIGTERM, SIGINT, SIGHUP };
    for (int i = 0; i < 3; i++) {
        sigs[i] = evsignal_new(base, signums[i], on_signal, gw);
        event_add(sigs[i], NULL);
    }
    for (size_t i = 0; i < gw->nworkers; i++)
        if (kfg_loop_spawn(gw->workers[i]) < 0) {
            kfg_error("cannot start worker thread");
            return 1;
        }
    kfg_log(KFG_LOG_INFO, NULL, NULL,
            "kfgate %s listening on %s (port %d), admin on %s, %zu worker(s)", KFG_VERSION,
            cfg->http_listen, kfg_http_server_port(gw->front),
            cfg->admin_listen[0] ? cfg->admin_listen : "(disabled)", gw->nworkers);

    kfg_loop_run(gw->control);

    for (size_t i = 0; i < gw->nworkers; i++)
        kfg_loop_join(gw->workers[i]);
    kfg_loop_enter(gw->control);
    for (int i = 0; i < 3; i++)
        event_free(sigs[i]);
    kfg_busd_stop(gw);
    kfg_gateway_free(gw);
    kfg_http_server_free(gw->front);
    kfg_http_server_free(gw->admin);
    for (size_t i = 0; i < gw->nworkers; i++)
        kfg_loop_free(gw->workers[i]);
    free(gw->workers);
    kfg_plugin_set_release(&gw->plugins);
    kfg_config_free(gw->cfg);
    kfg_loop_free(gw->control);
    kfg_metrics_shutdown();
    curl_global_cleanup();
    kfg_log(KFG_LOG_INFO, NULL, NULL, "bye");
    return gw->exit_code;
}
