/*
 * The gateway: configuration generations, plugin instances and their
 * lifecycle, the filter chain, shutdown.
 * All of it is driven from the control loop; worker loops only read
 * published snapshots.
 */
#ifndef KFG_GATEWAY_H
#define KFG_GATEWAY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#include "buf.h"
#include "config.h"
#include "instance.h"
#include "loader.h"

struct kfg_loop;
struct kfg_http_server;
struct kfg_metric;
struct event;

/* The ordered filters of one generation; loops hold references. */
struct kfg_chain {
    atomic_int refs;
    size_t n;
    struct kfg_instance *v[];
};

/* One route an instance registered; replayed into every later generation
 * the instance survives into. */
struct kfg_ins_route {
    char *method, *path;
    unsigned flags;
    kfg_http_handler fn;
};

struct kfg_gateway {
    struct kfg_config *cfg;
    struct kfg_plugin_set plugins;
    struct kfg_loop *control;
    struct kfg_loop **workers;
    size_t nworkers;
    struct kfg_http_server *front, *admin;

    struct kfg_instance *live;         /* current generation, config order */
    struct kfg_instance *draining;     /* removed, waiting to be destroyed */
    struct event *drain_timer;
    struct kfg_routes *building;       /* routes of the generation being built */

    pthread_mutex_t chain_mu;
    _Atomic(struct kfg_chain *) chain;


    int shutting_down;
    int exit_code;
    struct event *shutdown_timer;      /* the drain deadline */
    struct event *shutdown_tick;
    unsigned generation;

    struct kfg_metric *m_reloads_ok, *m_reloads_failed, *m_instances;
};

extern struct kfg_gateway *kfg_gw;

/* Builds and starts the generation described by cfg, or changes nothing.
 * On success the gateway owns cfg. Control loop. */
int kfg_gateway_apply(struct kfg_gateway *gw, struct kfg_config *cfg, struct kfg_buf *errs);
/* Re-reads the config file and applies it; errors go to errs and the log. */
int kfg_gateway_reload(struct kfg_gateway *gw, struct kfg_buf *errs);
/* Resolves every instance of cfg against the plugins in its plugin_dir
 * without starting anything: the --check mode. */
int kfg_gateway_check(struct kfg_config *cfg, struct kfg_buf *errs);
void kfg_gateway_shutdown(struct kfg_gateway *gw);
/* After the loops stopped: destroys what is left. */
void kfg_gateway_free(struct kfg_gateway *gw);

/* The filter chain as seen by the calling loop. */
const struct kfg_chain *kfg_chain_current(void);
/* Ends an instance's use of the control loop when it stops by itself. */
void kfg_instance_stopped(struct kfg_instance *ins);
const struct kfg_host *kfg_host_table(void);
/* Admin endpoints on the admin server's routes. */
void kfg_admin_routes(struct kfg_routes *r);
/* host->emit: the filters, then the bus (busd.h). */
int kfg_emit(struct kfg_instance *ins, struct kfg_msg *m, kfg_emit_done done, void *arg);

#endif
