/*
 * The loop backend: in-process endpoints on a shared "fabric", with a
 * deterministic virtual clock.  It is the core's test double and the engine of
 * the first demo.
 *
 *  - Data: a posted slice is a memcpy between registered regions of two
 *    endpoints, performed when the slice completes in virtual time.  Remote
 *    ranges are checked against the peer's registrations; an out-of-range
 *    slice completes with KVB_ERR_RANGE and copies nothing.
 *  - Time: a slice posted at t on local NIC i to peer NIC j starts at
 *    max(t, i free, j free), occupies both NICs for len / bandwidth and
 *    completes latency later.  Control messages arrive msg_latency after they
 *    are sent, in order.  Nothing happens until kvb_loop_fabric_advance()
 *    moves the clock to the next scheduled event.
 *  - Faults: a NIC can be taken down (its posts and in-flight slices fail
 *    with KVB_ERR_TRANSPORT) and an endpoint can be killed (its peers see
 *    KVB_EV_CONN_DOWN, slices into it fail with KVB_ERR_PEER).
 */
#ifndef KVBRIDGE_LOOP_H
#define KVBRIDGE_LOOP_H

#include <stdbool.h>
#include <stdint.h>
#include <kvbridge/backend.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvb_loop_fabric kvb_loop_fabric_t;

typedef struct kvb_loop_params {
	uint32_t n_nics;              /* default 1, at most KVB_MAX_NICS */
	uint64_t nic_bandwidth_Bps;   /* bytes per second; default 25e9 (200 Gb/s) */
	uint64_t latency_ns;          /* per slice; default 2000 */
	uint64_t msg_latency_ns;      /* per control message and connect step; default 10000 */
	uint32_t queue_depth;         /* slices in flight per NIC; default 256 */
	int32_t numa_node;            /* reported for every NIC; default -1 */
} kvb_loop_params_t;

/* Arguments of kvb_backend_open(kvb_loop_backend_ops(), &args, ...). */
typedef struct kvb_loop_args {
	kvb_loop_fabric_t *fabric;
	const char *name;             /* endpoint address, unique on the fabric */
	const kvb_loop_params_t *params; /* NULL = defaults */
} kvb_loop_args_t;

KVB_API const kvb_backend_ops_t *kvb_loop_backend_ops(void);

KVB_API kvb_loop_fabric_t *kvb_loop_fabric_new(uint64_t seed);
/* Every endpoint must be closed first. */
KVB_API void kvb_loop_fabric_free(kvb_loop_fabric_t *fabric);

/* Convenience: open an endpoint. */
KVB_API int kvb_loop_open(kvb_loop_fabric_t *fabric, const char *name,
			  const kvb_loop_params_t *params, kvb_backend_t **out, kvb_err_t *err);

KVB_API void kvb_loop_params_default(kvb_loop_params_t *params);

/* Virtual time now. */
KVB_API uint64_t kvb_loop_fabric_now(const kvb_loop_fabric_t *fabric);

/* Move the clock to the earliest scheduled event and make every event due at
 * that time ready.  Returns false when nothing is scheduled. */
KVB_API bool kvb_loop_fabric_advance(kvb_loop_fabric_t *fabric);

/* Advance towards time t: like kvb_loop_fabric_advance when an event is due
 * at or before t, else move the clock to t (an idle gap).  Returns false when
 * the clock is already at or past t and nothing is due. */
KVB_API bool kvb_loop_fabric_advance_to(kvb_loop_fabric_t *fabric, uint64_t t);

/* Time of the earliest scheduled event; false when nothing is scheduled. */
KVB_API bool kvb_loop_fabric_next(const kvb_loop_fabric_t *fabric, uint64_t *t);

/* Events scheduled but not yet due, and events ready but not yet polled. */
KVB_API uint64_t kvb_loop_fabric_pending(const kvb_loop_fabric_t *fabric);

/* Take a NIC of an endpoint down or up. */
KVB_API int kvb_loop_set_nic_up(kvb_backend_t *be, uint32_t nic, bool up);

/* Kill an endpoint as a crashed process would die: its connections drop
 * (peers see KVB_EV_CONN_DOWN), slices into its memory fail, it delivers no
 * more events.  The instance must still be closed. */
KVB_API int kvb_loop_kill(kvb_backend_t *be);

/* Bytes each NIC of an endpoint has sent (for striping tests). */
KVB_API uint64_t kvb_loop_nic_tx_bytes(kvb_backend_t *be, uint32_t nic);

/* Drive connectors until done(user) is true or nothing is left to happen:
 * progress every connector until all are idle, then advance the clock.
 * Returns KVB_OK when done() became true (or, with done NULL, when the fabric
 * ran dry), KVB_ERR_TIMEOUT when the next event lies beyond max_ns of virtual
 * time from the start (the clock is then left exactly max_ns later; 0 = no
 * limit), KVB_ERR_STATE when the fabric ran dry before done() became true,
 * or a negative progress error. */
struct kvb_connector;
KVB_API int kvb_loop_drive(kvb_loop_fabric_t *fabric, struct kvb_connector *const *conns,
			   uint32_t n, bool (*done)(void *user), void *user, uint64_t max_ns);

#ifdef __cplusplus
}
#endif
#endif /* KVBRIDGE_LOOP_H */
