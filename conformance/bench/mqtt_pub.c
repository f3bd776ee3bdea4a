/* mqtt_pub: the device fleet of the MQTT benchmark. Publishes COUNT QoS
 * messages round-robin over DEVICES topics bench/d<i>/up, at RATE per
 * second (0 = as fast as the broker takes them), each a JSON text that
 * carries "T0=<CLOCK_MONOTONIC ns>;R0=<CLOCK_REALTIME ns>;" so bus_sub and
 * the mosquitto_sub reader can both compute end-to-end latency. Waits for
 * every acknowledgement, then prints one line of key=value.
 *
 *   mqtt_pub HOST PORT COUNT RATE QOS DEVICES
 */
#define _GNU_SOURCE
#include <mosquitto.h>

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_long acked;

static uint64_t ns(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void on_publish(struct mosquitto *m, void *o, int mid)
{
    (void)m;
    (void)o;
    (void)mid;
    atomic_fetch_add(&acked, 1);
}

int main(int argc, char **argv)
{
    if (argc < 7) {
        fprintf(stderr, "usage: mqtt_pub HOST PORT COUNT RATE QOS DEVICES\n");
        return 2;
    }
    long count = atol(argv[3]), rate = atol(argv[4]);
    int qos = atoi(argv[5]), devices = atoi(argv[6]);
    mosquitto_lib_init();
    struct mosquitto *m = mosquitto_new("bench-fleet", true, NULL);
    mosquitto_publish_callback_set(m, on_publish);
    mosquitto_max_inflight_messages_set(m, 1000);
    if (mosquitto_connect(m, argv[1], atoi(argv[2]), 30) != MOSQ_ERR_SUCCESS ||
        mosquitto_loop_start(m) != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "mqtt_pub: cannot connect\n");
        return 1;
    }
    uint64_t t0 = ns(CLOCK_MONOTONIC);
    char topic[64], body[160];
    for (long i = 0; i < count; i++) {
        if (rate > 0) {
            uint64_t due = t0 + (uint64_t)((double)i * 1e9 / (double)rate);
            uint64_t now = ns(CLOCK_MONOTONIC);
            if (due > now)
                usleep((useconds_t)((due - now) / 1000));
        } else {
            /* Do not queue unboundedly inside the library. */
            while (i - atomic_load(&acked) > 5000)
                usleep(100);
        }
        snprintf(topic, sizeof topic, "bench/d%ld/up", i % devices);
        int n = snprintf(body, sizeof body,
                         "{\"text\":\"T0=%llu;R0=%llu; reading\",\"id\":%ld}",
                         (unsigned long long)ns(CLOCK_MONOTONIC),
                         (unsigned long long)ns(CLOCK_REALTIME), i);
        int rc;
        while ((rc = mosquitto_publish(m, NULL, topic, n, body, qos, false)) ==
               MOSQ_ERR_NOMEM)
            usleep(1000);
        if (rc != MOSQ_ERR_SUCCESS) {
            fprintf(stderr, "mqtt_pub: publish: %s\n", mosquitto_strerror(rc));
            return 1;
        }
    }
    uint64_t t_sent = ns(CLOCK_MONOTONIC);
    for (int w = 0; w < 60000 && qos > 0 && atomic_load(&acked) < count; w++)
        usleep(1000);
    double secs = (double)(t_sent - t0) / 1e9;
    printf("sent=%ld acked=%ld rate=%.0f\n", count, (long)atomic_load(&acked),
           secs > 0 ? (double)count / secs : 0);
    mosquitto_disconnect(m);
    mosquitto_loop_stop(m, false);
    mosquitto_destroy(m);
    mosquitto_lib_cleanup();
    return 0;
}
