/*
 * The connector: moves a request's KV blocks from a producer (prefill) to a
 * consumer (decode), as vLLM's MooncakeConnector does, over any backend.
 *
 * One connector serves one worker (one TP rank of one engine).  The engine
 * drives it:
 *
 *   producer side                          consumer side
 *   kvb_producer_begin(transfer_id)        kvb_consumer_pull(request_id,
 *     ... prefill runs ...                   transfer_id, producers, blocks)
 *   kvb_producer_ready(transfer_id, blocks)
 *         <---- pull (consumer's regions, block ids) ----
 *         ---- one-sided writes of every slice ---->
 *         ---- done (ok or error, with a reason) ---->
 *
 * and calls kvb_connector_progress() whenever its backend has events (the
 * loop backend's driver, a GLib source in hw, an actor loop in sim).  Finished
 * requests are collected with kvb_connector_poll_finished(): a producer
 * request is finished when its blocks may be freed (sent, expired, aborted);
 * a consumer request when its blocks hold the KV (done) or must be treated as
 * empty (failed, with a reason).  No request is ever left waiting: every
 * error and timeout ends it.
 *
 * Lease fencing: a producer holds a request's blocks from ready until every
 * expected consumer rank was served, or until the lease
 * (VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT) runs out.  Blocks are never released
 * while a slice from them is posted: expiry or abort during a send stops
 * posting, waits for the posted slices to complete, then releases.  A pull
 * that arrives after expiry is refused with KVB_ERR_EXPIRED and never served.
 *
 * The state charts, with the test covering each transition, are in
 * docs/architecture.md and at the top of src/core/kvb_connector_int.h.
 */
#ifndef KVBRIDGE_CONNECTOR_H
#define KVBRIDGE_CONNECTOR_H

#include <stdbool.h>
#include <stdint.h>
#include <kvbridge/backend.h>
#include <kvbridge/config.h>
#include <kvbridge/error.h>
#include <kvbridge/layout.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KVB_ID_MAX 128u     /* request and transfer ids, bytes including NUL */
#define KVB_ADDR_MAX 256u   /* peer addresses */
#define KVB_REASON_MAX 200u

typedef struct kvb_connector kvb_connector_t;

/* Producer request states. */
typedef enum kvb_producer_state {
	KVB_PRODUCER_PLACEHOLDER = 0, /* a pull arrived before the engine named the transfer */
	KVB_PRODUCER_PREFILL = 1,     /* prefill running; no blocks held */
	KVB_PRODUCER_READY = 2,       /* blocks held, lease running, waiting for pulls */
	KVB_PRODUCER_SENDING = 3,     /* slices of at least one pull in flight */
	KVB_PRODUCER_SENT = 4,        /* terminal: every expected pull served; blocks freed */
	KVB_PRODUCER_EXPIRED = 5,     /* terminal: lease ran out; blocks freed */
	KVB_PRODUCER_ABORTED = 6,     /* terminal: engine aborted; blocks freed */
} kvb_producer_state_t;

/* Consumer request states. */
typedef enum kvb_consumer_state {
	KVB_CONSUMER_EXPECTED = 0,    /* announced (kvb_consumer_expect), no blocks held yet;
				       * heartbeats keep a heartbeat lease alive */
	KVB_CONSUMER_WAITING = 1,     /* blocks held; connecting to the producer(s) */
	KVB_CONSUMER_REQUESTED = 2,   /* pull sent, no producer has started */
	KVB_CONSUMER_RECEIVING = 3,   /* a producer is writing */
	KVB_CONSUMER_DONE = 4,        /* terminal: every byte landed */
	KVB_CONSUMER_FAILED = 5,      /* terminal: error, timeout or abort; reason given */
} kvb_consumer_state_t;

KVB_API const char *kvb_producer_state_name(kvb_producer_state_t state);
KVB_API const char *kvb_consumer_state_name(kvb_consumer_state_t state);

/* A request that ended; its blocks are the engine's again. */
typedef struct kvb_finished {
	kvb_role_t role;                 /* KVB_ROLE_PRODUCER or KVB_ROLE_CONSUMER */
	char id[KVB_ID_MAX];             /* producer: transfer id; consumer: request id */
	int state;                       /* terminal kvb_producer_state_t / kvb_consumer_state_t */
	int status;                      /* KVB_OK, or why it failed / expired / aborted */
	char reason[KVB_REASON_MAX];     /* words for status ("" when KVB_OK) */
	uint64_t bytes;                  /* bytes moved for this request */
	uint64_t end_ns;                 /* backend time of the transition */
} kvb_finished_t;

/* A record per transfer (one pull served by a producer, or one consumer
 * request), for logs and studies. */
typedef struct kvb_xfer_record {
	kvb_role_t role;
	const char *transfer_id;
	const char *request_id;          /* consumer request id */
	const char *peer;                /* peer address or connection name */
	uint64_t bytes;
	uint64_t slices;
	uint64_t retries;                /* slice re-posts */
	uint64_t nic_mask;               /* bit i: local NIC i carried a slice */
	uint32_t nics_used;
	uint64_t post_ns;                /* first slice posted (consumer: pull sent) */
	uint64_t end_ns;
	int status;                      /* KVB_OK or error */
	kvb_fail_class_t fail_class;
	const char *reason;
} kvb_xfer_record_t;

typedef void (*kvb_record_fn)(const kvb_xfer_record_t *record, void *user);

/* Counters; failures are split by class. */
typedef struct kvb_counters {
	uint64_t producer_requests;      /* begun */
	uint64_t consumer_requests;      /* pulls issued */
	uint64_t transfers_ok;           /* pulls served (producer) + requests done (consumer) */
	uint64_t transfers_failed;
	uint64_t bytes_sent;
	uint64_t bytes_received;         /* as reported by producers' done messages */
	uint64_t slices_posted;
	uint64_t slices_retried;
	uint64_t slices_failed;          /* completions with an error */
	uint64_t post_backpressure;      /* KVB_ERR_NO_RESOURCE from the backend */
	uint64_t fail_transport;
	uint64_t fail_lease;
	uint64_t fail_peer;
	uint64_t fail_timeout;
	uint64_t fail_aborted;
	uint64_t leases_expired;
	uint64_t late_pulls_refused;     /* pulls for expired/finished transfers */
	uint64_t duplicate_pulls;
	uint64_t unknown_messages;       /* for requests this side does not know */
	uint64_t stale_messages;         /* for requests already past that step */
	uint64_t malformed_messages;
	uint64_t nic_down_events;
	uint64_t heartbeats_sent;
	uint64_t heartbeats_received;
	uint64_t lease_renewals;         /* leases extended by a heartbeat */
	uint64_t last_lease_ns;          /* lease given to the latest READY request */
	uint64_t blocks_held;            /* now */
	uint64_t live_requests;          /* now, both roles */
} kvb_counters_t;

/* Create a connector over an open backend instance (borrowed; it must
 * outlive the connector).  The config is copied and validated; the NIC policy
 * is created from it with the backend's NICs.  One connector per backend
 * instance. */
KVB_API int kvb_connector_new(const kvb_config_t *cfg, kvb_backend_t *be,
			      kvb_connector_t **out, kvb_err_t *err);

/* Abort every live request (without waiting for fences: the backend must
 * discard posted work when it is closed), deregister memory, close
 * connections, free.  NULL is a no-op. */
KVB_API void kvb_connector_free(kvb_connector_t *c);

/* Register the worker's KV layout (once).  Regions are copied; their memory
 * is registered with the backend and must stay valid until free. */
KVB_API int kvb_connector_register_layout(kvb_connector_t *c, const kvb_region_t *regions,
					  uint32_t n_regions, kvb_err_t *err);

/* Handle ready backend events, post queued slices, fire due work.  Returns the
 * number of events and slices handled (0 = idle) or a negative error when the
 * backend itself failed.  Never blocks. */
KVB_API int kvb_connector_progress(kvb_connector_t *c);

/* ---- producer (kv_producer, kv_both) ---- */

/* The engine scheduled a request whose KV goes to a remote decoder: creates
 * the entry (PREFILL), or adopts a placeholder made by an early pull.
 * KVB_ERR_EXISTS if the transfer id is live; KVB_ERR_STATE if it already
 * ended and is still remembered. */
KVB_API int kvb_producer_begin(kvb_connector_t *c, const char *transfer_id, kvb_err_t *err);

/* Prefill finished: the request's blocks, one list per KV group, are held
 * (copied) and the lease starts.  Pulls already waiting are served. */
KVB_API int kvb_producer_ready(kvb_connector_t *c, const char *transfer_id,
			       const kvb_block_list_t *groups, uint32_t n_groups,
			       kvb_err_t *err);

/* The engine gave up on the request (client abort, error).  Sends stop at a
 * fence; queued pulls are refused with KVB_ERR_ABORTED. */
KVB_API int kvb_producer_abort(kvb_connector_t *c, const char *transfer_id, kvb_err_t *err);

/* ---- consumer (kv_consumer, kv_both) ---- */

typedef struct kvb_pull_params {
	const char *request_id;          /* the consumer's id for the request */
	const char *transfer_id;         /* shared with the producer */
	const char *const *producers;    /* addresses of the producer ranks to pull from */
	uint32_t n_producers;            /* see kvb_tp_targets(); 1 .. 64 */
	uint32_t producer_tp_size;       /* for the pairing check; 0 = same as ours */
	const kvb_block_list_t *groups;  /* blocks to fill, one list per group (may be empty) */
	uint32_t n_groups;
} kvb_pull_params_t;

/* Announce a request the router sent here before its blocks can be
 * allocated (vLLM's decoder schedules the pull later).  Connects to the
 * producers and sends a HEARTBEAT every heartbeat_interval until
 * kvb_consumer_pull with the same request id, an abort, or the consumer
 * timeout.  Producers with lease_policy heartbeat keep the blocks while
 * heartbeats come and free them soon after they stop (a dead decoder).
 * The groups of params are ignored. */
KVB_API int kvb_consumer_expect(kvb_connector_t *c, const kvb_pull_params_t *params,
				kvb_err_t *err);

/* Hold the blocks and ask every producer for them.  An EXPECTED request of
 * the same id (and transfer id) becomes WAITING.  All-empty lists send a
 * release notification only (full prefix hit) and finish DONE once every
 * producer answered. */
KVB_API int kvb_consumer_pull(kvb_connector_t *c, const kvb_pull_params_t *params,
			      kvb_err_t *err);

/* Give up on a pull.  Before any producer started writing the request ends
 * at once (FAILED, KVB_ERR_ABORTED); otherwise producers are told to stop and
 * the request ends when they confirm or its timeout passes. */
KVB_API int kvb_consumer_abort(kvb_connector_t *c, const char *request_id, kvb_err_t *err);

/* ---- results and introspection ---- */

/* Move up to max finished requests into out; returns how many. */
KVB_API int kvb_connector_poll_finished(kvb_connector_t *c, kvb_finished_t *out, int max);

/* Current state of a live request, or KVB_ERR_NOT_FOUND. */
KVB_API int kvb_producer_state(const kvb_connector_t *c, const char *transfer_id);
KVB_API int kvb_consumer_state(const kvb_connector_t *c, const char *request_id);

KVB_API void kvb_connector_counters(const kvb_connector_t *c, kvb_counters_t *out);

/* Called once per finished transfer (producer pull served or failed, consumer
 * request ended).  The record and its strings are valid during the call. */
KVB_API void kvb_connector_set_record_fn(kvb_connector_t *c, kvb_record_fn fn, void *user);

/* Words for the most recent error returned by an API call on c. */
KVB_API const char *kvb_connector_last_error(const kvb_connector_t *c);

KVB_API const kvb_config_t *kvb_connector_config(const kvb_connector_t *c);
KVB_API kvb_backend_t *kvb_connector_backend(const kvb_connector_t *c);

/* Format a record as one JSON line (no newline): the event-log format shared
 * by every backend.  Returns the length it needed (like snprintf). */
KVB_API int kvb_xfer_record_json(const kvb_xfer_record_t *record, char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif /* KVBRIDGE_CONNECTOR_H */
