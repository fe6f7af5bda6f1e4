/*
 * The connector's internals, shared by its four files:
 *   kvb_connector.c  helpers, peers, connection events, the event loop, the public API
 *   kvb_producer.c   the producer's requests, pulls, leases and sends
 *   kvb_slices.c     posting slices over the NICs, completions, NIC errors
 *   kvb_consumer.c   the consumer's requests and targets
 *
 * The connector state machines.
 *
 * Producer request (one per transfer id; "pull" = one consumer rank's request
 * for the blocks; need = consumer ranks paired with this rank):
 *
 *   (none) --pull arrives first------------------> PLACEHOLDER
 *   (none) --kvb_producer_begin------------------> PREFILL
 *   PLACEHOLDER --kvb_producer_begin-------------> PREFILL     (queued pulls kept)
 *   PLACEHOLDER --pull-wait timeout--------------> (dropped; pulls refused TIMEOUT)
 *   PLACEHOLDER --last queued pull cancelled-----> (dropped)
 *   PREFILL --pull-wait timeout------------------> PREFILL     (pulls refused TIMEOUT)
 *   PREFILL --kvb_producer_ready-----------------> READY       (blocks held, lease armed)
 *   PREFILL --kvb_producer_abort-----------------> ABORTED     (pulls refused ABORTED)
 *   READY   --pull (valid, paired)---------------> SENDING     (STARTED sent)
 *   READY   --pull served at once, served==need--> SENT        (empty pull, replica skip)
 *   READY   --lease timer------------------------> EXPIRED
 *   READY   --kvb_producer_abort-----------------> ABORTED
 *   SENDING --every send ended, served == need---> SENT
 *   SENDING --every send ended, served <  need---> READY       (a failed pull may be retried)
 *   SENDING --lease timer------------------------> fence: stop posting, drain, then EXPIRED
 *   SENDING --kvb_producer_abort-----------------> fence: stop posting, drain, then ABORTED
 *   SENT, EXPIRED, ABORTED: terminal; blocks released; the id is remembered
 *   (tombstone) so that a late pull is refused with the reason.
 *
 * Consumer request (one per request id, one target per producer rank):
 *
 *   (none)    --kvb_consumer_pull---------------> WAITING     (blocks held, deadline armed)
 *   WAITING   --connection up, PULL sent--------> REQUESTED
 *   WAITING/REQUESTED --STARTED-----------------> RECEIVING
 *   any live  --every target DONE ok------------> DONE
 *   any live  --a target failed (DONE error, connection lost, connect failed):
 *                cancel the other targets, wait for them, then FAILED (first reason)
 *   any live  --kvb_consumer_abort-------------> cancel targets; FAILED (ABORTED) when
 *                                                they confirm (at once if none started)
 *   any live  --deadline------------------------> FAILED (TIMEOUT), targets cancelled
 *   DONE, FAILED: terminal; blocks released.
 *
 * Fencing: a producer request is released only when no slice of it is posted
 * (sends are freed only when their outstanding count is zero, and a request
 * only when it has no sends).  Nothing is posted from a request whose fence is
 * set or which has ended.
 */
#ifndef KVB_CONNECTOR_INT_H
#define KVB_CONNECTOR_INT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>

#include "kvb_wire.h"

#define EVENT_BATCH 64
#define POST_BUDGET 32      /* slices posted for one send before rotating */
#define KVB_MAX_TP 4096u

typedef enum timer_kind {
	TIMER_LEASE = 1,       /* producer: lease on READY blocks */
	TIMER_PULL_WAIT = 2,   /* producer: queued pulls waiting for ready */
	TIMER_DEADLINE = 3,    /* consumer: whole-request deadline */
	TIMER_NIC_COOLDOWN = 4,/* a NIC marked down may be tried again */
	TIMER_HEARTBEAT = 5,   /* consumer: send heartbeats for expected requests */
} timer_kind_t;

typedef struct ctimer {
	uint64_t serial;       /* 0 = not armed */
	uint64_t backend_id;
} ctimer_t;

typedef struct timer_ref {
	timer_kind_t kind;
	void *obj;
	uint32_t nic;
	uint64_t backend_id;
} timer_ref_t;

typedef enum peer_state {
	PEER_CONNECTING = 1,
	PEER_UP = 2,
	PEER_DOWN = 3,
} peer_state_t;

typedef struct peer {
	kvb_connector_t *c;
	kvb_conn_t *conn;
	char addr[KVB_ADDR_MAX];
	peer_state_t state;
	bool outbound;
	bool dead_listed;      /* queued for freeing at the end of progress */
	GQueue targets;        /* cons_target_t* that use this peer */
	GQueue sends;          /* send_t* that write to this peer */
} peer_t;

typedef enum rank_state {
	RANK_PENDING = 1,
	RANK_SENDING = 2,
	RANK_SERVED = 3,
	RANK_FAILED = 4,
} rank_state_t;

typedef struct pull {
	peer_t *peer;
	kvb_wire_pull_t msg;
	char *rank_key;
} pull_t;

struct send;

/* One posted op: n_slices consecutive slices of a copy on one NIC pair. */
typedef struct slice {
	struct send *send;
	uint64_t src, dst, len;
	uint64_t slice_len;
	uint32_t n_slices;
	uint32_t src_region, dst_region;
	uint32_t nic, remote_nic;
	uint32_t attempts;
	uint32_t avoid;
	struct slice *prev, *next; /* connector's in-flight list */
} slice_t;

typedef struct prod_req prod_req_t;

typedef struct send {
	kvb_connector_t *c;
	prod_req_t *req;
	pull_t *pull;
	kvb_copy_t *copies;
	uint32_t n_copies;
	uint32_t cursor;
	uint64_t cursor_off;
	GQueue retry;          /* slice_t* waiting for a re-post */
	uint64_t outstanding;      /* ops posted, not completed */
	uint64_t stream;           /* ordering/fairness unit for the backend */
	uint64_t bytes_total, bytes_done, slices, retries, nic_mask;
	uint64_t post_ns;
	int status;
	char reason[KVB_REASON_MAX];
	bool stopped;          /* no more posting */
	bool cancelled;        /* the consumer cancelled: counts as served */
	bool in_active;
} send_t;

struct prod_req {
	kvb_connector_t *c;
	char id[KVB_ID_MAX];
	kvb_producer_state_t state;
	bool engine_known;     /* begun by the engine (not a bare placeholder) */
	uint32_t n_groups;
	kvb_block_list_t *groups;
	uint32_t *ids;
	uint64_t n_blocks;
	uint64_t ready_ns;
	uint64_t lease_deadline;  /* absolute; renewed by heartbeats */
	uint64_t first_pull_ns;   /* 0 until a pull arrived */
	ctimer_t lease;
	ctimer_t pull_wait;
	GQueue pending;        /* pull_t* queued until ready */
	GQueue sends;          /* send_t* in flight */
	GHashTable *ranks;     /* "request_id/rank" -> rank_state_t */
	uint32_t d_tp;         /* consumer TP size (0 until the first pull) */
	uint32_t need;
	uint32_t served;
	int fence;             /* KVB_OK, or KVB_ERR_EXPIRED / KVB_ERR_ABORTED */
	char fence_reason[KVB_REASON_MAX];
	uint64_t bytes_sent;
};

typedef enum target_state {
	TARGET_CONNECTING = 1,
	TARGET_REQUESTED = 2,
	TARGET_RECEIVING = 3,
	TARGET_DONE = 4,
	TARGET_FAILED = 5,
} target_state_t;

typedef struct cons_req cons_req_t;

typedef struct cons_target {
	cons_req_t *req;
	peer_t *peer;
	target_state_t state;
	bool cancel_sent;
	uint64_t bytes;
} cons_target_t;

struct cons_req {
	kvb_connector_t *c;
	char id[KVB_ID_MAX];
	char transfer_id[KVB_ID_MAX];
	kvb_consumer_state_t state;
	uint64_t n_blocks;
	ctimer_t deadline;
	uint64_t start_ns, post_ns;
	int status;            /* first failure */
	char reason[KVB_REASON_MAX];
	bool aborting;
	GByteArray *pull_frame;
	uint32_t n_targets;
	cons_target_t *targets;
};

typedef struct tombstone {
	char id[KVB_ID_MAX];
	kvb_producer_state_t state;
	int status;
	char reason[KVB_REASON_MAX];
} tombstone_t;

struct kvb_connector {
	kvb_config_t cfg;
	kvb_backend_t *be;
	bool producer, consumer;
	kvb_nic_policy_t *policy;
	uint32_t n_nics;
	kvb_nic_info_t nics[KVB_MAX_NICS];
	uint64_t nic_inflight_bytes[KVB_MAX_NICS];
	uint32_t nic_inflight_slices[KVB_MAX_NICS];
	bool nic_down[KVB_MAX_NICS];
	uint32_t nic_errors[KVB_MAX_NICS];
	ctimer_t nic_cooldown[KVB_MAX_NICS];

	kvb_region_t *regions;
	uint32_t n_regions, n_groups;
	void **mrs;
	kvb_rkey_t *rkeys;
	char (*locations)[KVB_LOCATION_MAX];
	uint32_t *group_blocks;   /* per group: smallest num_blocks of its regions */

	GHashTable *producers;    /* id -> prod_req_t* (owned) */
	GHashTable *consumers;    /* id -> cons_req_t* (owned) */
	GHashTable *tombstones;   /* id -> tombstone_t* (owned by tomb_order) */
	GQueue tomb_order;
	GHashTable *timers;       /* serial -> timer_ref_t* (owned) */
	uint64_t next_serial;
	GHashTable *peers_by_addr;/* outbound, not down: addr -> peer_t* */
	GQueue peers;             /* every peer (owned) */
	GQueue dead_peers;        /* freed at the end of progress */
	GQueue active;            /* send_t* with slices left to post */
	slice_t *inflight;        /* every posted slice */
	GQueue finished;          /* kvb_finished_t* */
	ctimer_t heartbeat;       /* armed while expected requests exist */
	uint32_t n_expected;
	uint64_t delays[256];     /* adaptive lease: recent ready-to-pull delays */
	uint32_t n_delays;
	uint64_t delay_p99;       /* cached, recomputed every 16 samples */
	uint64_t incoming_seq;
	uint64_t next_stream;

	kvb_counters_t counters;
	kvb_record_fn record_fn;
	void *record_user;
	char last_error[KVB_ERR_MSG_MAX];
	GByteArray *scratch;
};


/* kvb_connector.c */
int api_fail(kvb_connector_t *c, kvb_err_t *err, int code, const char *fmt, ...) KVB_PRINTF(4, 5);
int api_fail_err(kvb_connector_t *c, kvb_err_t *err, const kvb_err_t *cause);
void count_failure(kvb_connector_t *c, int status);
void finished_push(kvb_connector_t *c, kvb_role_t role, const char *id, int state, int status,
			  const char *reason, uint64_t bytes);
int groups_check(kvb_connector_t *c, const kvb_block_list_t *groups, uint32_t n_groups,
			kvb_err_t *err);
void groups_copy(const kvb_block_list_t *src, uint32_t n_groups, kvb_block_list_t **groups,
			uint32_t **ids, uint64_t *n_blocks);
void heartbeat_arm(kvb_connector_t *c);
bool id_valid(const char *id);
int msg_send(kvb_connector_t *c, peer_t *p, const GByteArray *frame);
int notice_send(kvb_connector_t *c, peer_t *p, kvb_wire_type_t type, const char *transfer_id,
		const char *request_id, int status, uint64_t bytes, const char *reason);
uint64_t now_ns(const kvb_connector_t *c);
double ns_to_s(uint64_t ns);
void peer_maybe_free(peer_t *p);
peer_t *peer_new(kvb_connector_t *c, const char *addr, bool outbound);
void record_emit(kvb_connector_t *c, const kvb_xfer_record_t *rec);
void textf(char *dst, size_t len, const char *fmt, ...) KVB_PRINTF(3, 4);
int timer_start(kvb_connector_t *c, ctimer_t *t, timer_kind_t kind, void *obj,
		uint32_t nic, uint64_t deadline);
void timer_stop(kvb_connector_t *c, ctimer_t *t);

/* kvb_producer.c */
void active_add(kvb_connector_t *c, send_t *s);
void active_remove(kvb_connector_t *c, send_t *s);
void on_cancel(kvb_connector_t *c, peer_t *p, const kvb_wire_notice_t *n);
void on_heartbeat(kvb_connector_t *c, const kvb_wire_notice_t *n);
void on_lease(kvb_connector_t *c, prod_req_t *r);
void on_pull(kvb_connector_t *c, peer_t *p, const void *data, size_t len);
void on_pull_wait(kvb_connector_t *c, prod_req_t *r);
void prod_req_drop(kvb_connector_t *c, prod_req_t *r);
void prod_req_free(prod_req_t *r);
void pull_free(pull_t *pl);
void rank_set(prod_req_t *r, const char *key, rank_state_t st);
void send_check(kvb_connector_t *c, send_t *s);
bool send_has_work(const send_t *s);
void send_stop(send_t *s, int status, const char *reason);

/* kvb_slices.c */
void inflight_unlink(kvb_connector_t *c, slice_t *sl);
void on_xfer_done(kvb_connector_t *c, const kvb_event_t *ev);
int post_work(kvb_connector_t *c);

/* kvb_consumer.c */
void cons_req_free(cons_req_t *r);
void cons_settle(kvb_connector_t *c, cons_req_t *r);
void on_deadline(kvb_connector_t *c, cons_req_t *r);
void on_notice(kvb_connector_t *c, peer_t *p, const kvb_wire_notice_t *n);
void target_end(cons_target_t *t, int status, uint64_t bytes, const char *reason);
void target_send_pull(kvb_connector_t *c, cons_target_t *t);
bool target_settled(const cons_target_t *t);

#endif /* KVB_CONNECTOR_INT_H */
