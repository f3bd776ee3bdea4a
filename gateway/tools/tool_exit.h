/*
 * Exit path of the bus tools (kfgate-tail, -send, -echo, the bench
 * subscribers). Debian's NNG 1.5.2 can hang in nng_close() on a socket whose
 * peer is still sending (nanomsg/nng#1219, #1543; fixed in 1.7.3): a tail
 * that has printed everything would then never exit, its last lines stuck
 * in the stdio buffer. So: flush first, then close under a watchdog that
 * ends the process with the tool's own status if the close does not return.
 */
#ifndef KFG_TOOL_EXIT_H
#define KFG_TOOL_EXIT_H

#include <signal.h>
#include <stdio.h>
#include <unistd.h>

static volatile sig_atomic_t tool_exit_status;

static void tool_exit_alarm(int sig)
{
    (void)sig;
    _exit(tool_exit_status);
}

/* Call before closing the bus handles; status is what the process exits with
 * should the close hang for more than 2 s. */
static inline void tool_exit_guard(int status)
{
    fflush(stdout);
    fflush(stderr);
    tool_exit_status = status;
    struct sigaction sa = { 0 };
    sa.sa_handler = tool_exit_alarm;
    sigaction(SIGALRM, &sa, NULL);
    alarm(2);
}

#endif
