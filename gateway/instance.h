/*
 * Instances: one configured [[adapter]] or [[filter]] table bound to a
 * loaded plugin. The control loop owns their lifecycle; worker loops only
 * take and drop references (one per published route table that lists the
 * instance, one per request in flight), so an instance that was removed by
 * a reload is destroyed exactly when nothing can reach it any more.
 */
#ifndef KFG_INSTANCE_H
#define KFG_INSTANCE_H

#include <stdatomic.h>
#include <stdint.h>

#include "kfgate/plugin.h"

struct kfg_so;
struct kfg_metric;
struct kfg_icfg;

enum kfg_instance_state {
    KFG_INS_NEW = 0,
    KFG_INS_READY,       /* init done */
    KFG_INS_RUNNING,     /* start done */
    KFG_INS_STOPPING,    /* stop called, draining */
    KFG_INS_STOPPED,     /* drained, waiting for the last reference */
    KFG_INS_DEAD,        /* destroyed */
};

enum { KFG_STATUS_CLASSES = 5 };   /* 1xx .. 5xx */

struct kfg_ins_route;

struct kfg_instance {
    char *name;
    char *tenant;                      /* NULL for filters */
    int kind;
    const struct kfg_plugin *plugin;   /* normalized copy owned by so */
    struct kfg_so *so;                 /* referenced while the instance lives */
    struct kfg_icfg *cfg;              /* resolved keys of its table */
    void *ctx;
    int log_level;
    enum kfg_instance_state state;
    int plugin_stopped;                /* stop returned OK or stopped() came */
    atomic_int refs;
    uint64_t stop_deadline_ms;
    struct kfg_instance *next;         /* in the live or draining list */
    struct kfg_ins_route *routes;
    size_t nroutes;
    int kept;                          /* survives into the new generation */

    struct kfg_metric *m_requests[KFG_STATUS_CLASSES];
    struct kfg_metric *m_latency;
    struct kfg_metric *m_emitted, *m_dropped, *m_rejected;
    struct kfg_metric *m_delivered, *m_delivery_failed;
    void *bus_topic;                   /* the bus's feed topic, cached (busd.c) */
};

void kfg_instance_ref(struct kfg_instance *ins);
/* Any thread; the last reference posts the final teardown to the control loop. */
void kfg_instance_unref(struct kfg_instance *ins);

#endif
