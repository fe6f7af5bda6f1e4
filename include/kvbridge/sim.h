/*
 * The sim backend: the connector core inside SimGrid 3.32.
 *
 * Every endpoint (one connector, one simulated node) is owned by one SimGrid
 * actor, which drives it: progress the connector, then kvb_sim_wait() until
 * an event is due.  Time is SimGrid's clock.  Everything the core sees goes
 * through the same vtable as on real NICs:
 *
 *  - Data: a posted op is a network flow between two NIC hosts
 *    (sg_host_sendto, so the route and the bandwidth sharing are SimGrid's
 *    max-min model), run by an actor per busy queue pair.  A queue pair is
 *    (connection, local NIC, remote NIC, stream): its ops are served in
 *    order, distinct queue pairs share links fairly.
 *  - Flow models.  KVB_SIM_FLOWS_PER_SLICE makes every slice of an op its own
 *    flow, back to back on its queue pair (the naive model, one solver event
 *    per 64 KiB).  KVB_SIM_FLOWS_MERGED sends everything queued on a queue
 *    pair as one flow.  Because a queue pair that stays busy holds exactly
 *    one flow at every instant in both models, every byte (and so the last
 *    byte of every transfer) moves at the same instant in both; only the
 *    completions of ops inside a merged flow are reported at its end.
 *  - Latency is added once per op completion and per message delivery
 *    (pipelined, as a NIC keeps sending while earlier slices are in flight);
 *    generate platforms with zero link latency so SimGrid does not charge it
 *    per flow as well.
 *  - Control messages are mailbox communications (sg_mailbox_put_async to
 *    the peer's listener actor), so they take time on the network too.
 *  - Timers and randomness are per endpoint, seeded.
 *
 * Faults: kvb_sim_kill() crashes an endpoint (its connections drop, flows
 * into it fail with KVB_ERR_PEER), kvb_sim_nic_set_up() takes a NIC host
 * down (flows through it fail with KVB_ERR_TRANSPORT).
 */
#ifndef KVBRIDGE_SIM_H
#define KVBRIDGE_SIM_H

#include <stdbool.h>
#include <stdint.h>
#include <simgrid/forward.h>
#include <kvbridge/backend.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvb_sim_world kvb_sim_world_t;

typedef enum kvb_sim_flow_model {
	KVB_SIM_FLOWS_MERGED = 0,    /* one flow per busy queue-pair period (default) */
	KVB_SIM_FLOWS_PER_SLICE = 1, /* one flow per slice: the naive reference */
} kvb_sim_flow_model_t;

typedef struct kvb_sim_world_params {
	kvb_sim_flow_model_t flow_model;
	double latency_s;            /* one-way latency added to every op and message */
	double nic_bandwidth_bps;    /* reported by nic_query (bits/s), informational */
} kvb_sim_world_params_t;

/* Create after simgrid_init and simgrid_load_platform, before simgrid_run. */
KVB_API kvb_sim_world_t *kvb_sim_world_new(const kvb_sim_world_params_t *params);
/* From an actor, when the study is over: stop every endpoint's listener
 * actor so the simulation can end without cutting pending receives. */
KVB_API void kvb_sim_world_shutdown(kvb_sim_world_t *world);

/* After simgrid_run returned and every endpoint was closed. */
KVB_API void kvb_sim_world_free(kvb_sim_world_t *world);

/* Arguments of kvb_backend_open(kvb_sim_backend_ops(), &args, ...).  Open
 * endpoints before simgrid_run (or from an actor).  The endpoint's listener
 * actor runs on nics[0]. */
typedef struct kvb_sim_args {
	kvb_sim_world_t *world;
	const char *name;            /* address, unique in the world */
	sg_host_t const *nics;       /* this node's NIC hosts (copied) */
	uint32_t n_nics;             /* 1 .. KVB_MAX_NICS */
	uint64_t seed;
} kvb_sim_args_t;

KVB_API const kvb_backend_ops_t *kvb_sim_backend_ops(void);

/* From the endpoint's owner actor: block in simulated time until an event is
 * ready, kvb_sim_wake() is called, or the clock reaches deadline_s (a
 * negative deadline means none).  Returns 1 when events are ready, 0
 * otherwise, KVB_ERR_STATE when the endpoint was killed. */
KVB_API int kvb_sim_wait(kvb_backend_t *be, double deadline_s);

/* From any actor: make the owner's kvb_sim_wait return (engine work queued). */
KVB_API void kvb_sim_wake(kvb_backend_t *be);

/* Crash an endpoint: its connections drop (peers see KVB_EV_CONN_DOWN after
 * the latency), its own flows stop, flows into it fail with KVB_ERR_PEER, no
 * more events.  The owner actor must stop using it (kvb_sim_wait returns
 * KVB_ERR_STATE); close it later as usual. */
KVB_API int kvb_sim_kill(kvb_backend_t *be);

/* Take a NIC host down or bring it back: flows through it fail with
 * KVB_ERR_TRANSPORT at once, posts on it fail after the latency. */
KVB_API int kvb_sim_nic_set_up(kvb_sim_world_t *world, sg_host_t nic, bool up);

typedef struct kvb_sim_stats {
	uint64_t flows_started, flows_completed, flows_failed;
	uint64_t flows_peak;         /* most flows in flight at once */
	uint64_t ops_completed;
	uint64_t messages;
	double bytes;                /* completed */
} kvb_sim_stats_t;

KVB_API void kvb_sim_world_stats(const kvb_sim_world_t *world, kvb_sim_stats_t *out);

/* Bytes a NIC host has sent and received (completed flows, and the sent part
 * of flows cut by faults is not counted). */
KVB_API double kvb_sim_nic_tx_bytes(const kvb_sim_world_t *world, sg_host_t nic);
KVB_API double kvb_sim_nic_rx_bytes(const kvb_sim_world_t *world, sg_host_t nic);

/* Called for every op when it is posted (validation hook for studies: e.g.
 * stale-read detection).  NULL to remove. */
typedef void (*kvb_sim_post_hook_fn)(kvb_backend_t *be, const kvb_slice_op_t *op, void *user);
KVB_API void kvb_sim_set_post_hook(kvb_sim_world_t *world, kvb_sim_post_hook_fn fn, void *user);

#ifdef __cplusplus
}
#endif
#endif /* KVBRIDGE_SIM_H */
