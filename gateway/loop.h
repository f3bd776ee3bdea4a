/*
 * Event loops. The gateway runs one control loop on the main thread (config,
 * lifecycle, admin listener, signals) and N worker loops, one thread each,
 * that own HTTP connections. Each loop has a post queue so any thread can
 * hand it work, and lazily a libcurl multi client.
 */
#ifndef KFG_LOOP_H
#define KFG_LOOP_H

#include <pthread.h>

struct event_base;
struct kfg_loop;
struct kfg_httpc;

typedef void (*kfg_post_fn)(void *arg);

/* id 0 is the control loop. */
struct kfg_loop *kfg_loop_new(unsigned id);
/* Frees a loop whose thread has ended (or that never ran). Posted work that
 * never ran is dropped. */
void kfg_loop_free(struct kfg_loop *loop);
unsigned kfg_loop_id(const struct kfg_loop *loop);
struct event_base *kfg_loop_base(struct kfg_loop *loop);
/* The loop whose thread is calling, or NULL. */
struct kfg_loop *kfg_loop_current(void);
/* Makes loop the calling thread's current loop without running it (set-up
 * and tear-down code on the control thread). */
void kfg_loop_enter(struct kfg_loop *loop);
/* Runs the loop on the calling thread until kfg_loop_stop. */
void kfg_loop_run(struct kfg_loop *loop);
/* Starts a thread that runs the loop. */
int kfg_loop_spawn(struct kfg_loop *loop);
void kfg_loop_join(struct kfg_loop *loop);
/* Asks the loop to return from kfg_loop_run after the current iteration;
 * any thread. Posts made afterwards fail. */
void kfg_loop_stop(struct kfg_loop *loop);
/* Queues fn(arg) to run on the loop's thread; any thread. 0 or -1 (stopped). */
int kfg_loop_post(struct kfg_loop *loop, kfg_post_fn fn, void *arg);
/* Runs fn(arg) once on the loop, after the callbacks already activated in
 * the current pass (e.g. every readable connection of one epoll round);
 * registering the same fn and arg again before then is a no-op. Loop
 * thread only. 0, or -1 when all KFG_LOOP_PASS_HOOKS slots are taken (the
 * caller then does its work at once). This is how work handed to another
 * thread is handed over once per pass instead of once per request. */
#define KFG_LOOP_PASS_HOOKS 8
int kfg_loop_at_pass_end(struct kfg_loop *loop, kfg_post_fn fn, void *arg);
/* The loop's HTTP client, created on first use; loop thread only. */
struct kfg_httpc *kfg_loop_httpc(struct kfg_loop *loop);
/* Per-loop slot for the HTTP server layer. */
void *kfg_loop_http_state(struct kfg_loop *loop);
void kfg_loop_set_http_state(struct kfg_loop *loop, void *state);

#endif
