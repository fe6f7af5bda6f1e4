/*
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
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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

/* ------------------------------------------------------------------------ */
/* helpers                                                                  */

/* snprintf for reasons and names: truncation is intended (reasons are
 * bounded), so it goes through vsnprintf where the compiler does not flag it. */
static void textf(char *dst, size_t len, const char *fmt, ...) KVB_PRINTF(3, 4);

static void textf(char *dst, size_t len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(dst, len, fmt, ap);
	va_end(ap);
}

static int api_fail(kvb_connector_t *c, kvb_err_t *err, int code, const char *fmt, ...)
	KVB_PRINTF(4, 5);

static int api_fail(kvb_connector_t *c, kvb_err_t *err, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->last_error, sizeof(c->last_error), fmt, ap);
	va_end(ap);
	return kvb_err_set(err, code, "%s", c->last_error);
}

/* Record an error coming from a lower layer (kvb_err_t already filled). */
static int api_fail_err(kvb_connector_t *c, kvb_err_t *err, const kvb_err_t *cause)
{
	g_strlcpy(c->last_error, cause->msg, sizeof(c->last_error));
	if (err)
		*err = *cause;
	return cause->code;
}

static uint64_t now_ns(const kvb_connector_t *c)
{
	return c->be->ops->clock_now_ns(c->be);
}

static bool id_valid(const char *id)
{
	return id && id[0] && strlen(id) < KVB_ID_MAX;
}

static gpointer serial_key(uint64_t serial)
{
	return (gpointer)(uintptr_t)serial;
}

static void timer_stop(kvb_connector_t *c, ctimer_t *t)
{
	if (!t->serial)
		return;
	g_hash_table_remove(c->timers, serial_key(t->serial));
	c->be->ops->timer_cancel(c->be, t->backend_id);
	t->serial = 0;
}

static int timer_start(kvb_connector_t *c, ctimer_t *t, timer_kind_t kind, void *obj,
		       uint32_t nic, uint64_t deadline)
{
	timer_stop(c, t);
	uint64_t serial = ++c->next_serial;
	uint64_t id = 0;
	int rc = c->be->ops->timer_arm(c->be, deadline, serial, &id);
	if (rc != KVB_OK)
		return rc;
	timer_ref_t *ref = g_new(timer_ref_t, 1);
	ref->kind = kind;
	ref->obj = obj;
	ref->nic = nic;
	ref->backend_id = id;
	g_hash_table_insert(c->timers, serial_key(serial), ref);
	t->serial = serial;
	t->backend_id = id;
	return KVB_OK;
}

static double ns_to_s(uint64_t ns)
{
	return (double)ns / 1e9;
}

/* Copy per-group block lists into one allocation owned by the request. */
static void groups_copy(const kvb_block_list_t *src, uint32_t n_groups, kvb_block_list_t **groups,
			uint32_t **ids, uint64_t *n_blocks)
{
	uint64_t total = 0;
	for (uint32_t g = 0; g < n_groups; g++)
		total += src[g].count;
	*groups = n_groups ? g_new0(kvb_block_list_t, n_groups) : NULL;
	*ids = total ? g_new(uint32_t, total) : NULL;
	uint64_t at = 0;
	for (uint32_t g = 0; g < n_groups; g++) {
		(*groups)[g].count = src[g].count;
		(*groups)[g].ids = src[g].count ? *ids + at : NULL;
		if (src[g].count)
			memcpy(*ids + at, src[g].ids, (size_t)src[g].count * sizeof(uint32_t));
		at += src[g].count;
	}
	*n_blocks = total;
}

/* Engine-supplied block ids must fit every region of their group. */
static int groups_check(kvb_connector_t *c, const kvb_block_list_t *groups, uint32_t n_groups,
			kvb_err_t *err)
{
	if (!c->regions)
		return api_fail(c, err, KVB_ERR_STATE, "no KV layout registered (kvb_connector_register_layout)");
	if (n_groups != c->n_groups)
		return api_fail(c, err, KVB_ERR_INVALID, "%u block lists given, the layout has %u KV groups",
				n_groups, c->n_groups);
	if (n_groups && !groups)
		return api_fail(c, err, KVB_ERR_INVALID, "block lists are NULL");
	for (uint32_t g = 0; g < n_groups; g++) {
		if (groups[g].count > KVB_MAX_BLOCKS_PER_GROUP)
			return api_fail(c, err, KVB_ERR_INVALID, "group %u lists %u blocks (limit %u)", g,
					groups[g].count, KVB_MAX_BLOCKS_PER_GROUP);
		if (groups[g].count && !groups[g].ids)
			return api_fail(c, err, KVB_ERR_INVALID, "group %u: ids is NULL", g);
		for (uint32_t i = 0; i < groups[g].count; i++)
			if (groups[g].ids[i] >= c->group_blocks[g])
				return api_fail(c, err, KVB_ERR_RANGE,
						"block %u (group %u, position %u) is outside the layout's %u blocks",
						groups[g].ids[i], g, i, c->group_blocks[g]);
	}
	return KVB_OK;
}

static void record_emit(kvb_connector_t *c, const kvb_xfer_record_t *rec)
{
	if (c->record_fn)
		c->record_fn(rec, c->record_user);
}

static void count_failure(kvb_connector_t *c, int status)
{
	c->counters.transfers_failed++;
	switch (kvb_fail_class(status)) {
	case KVB_FAIL_TRANSPORT: c->counters.fail_transport++; break;
	case KVB_FAIL_LEASE: c->counters.fail_lease++; break;
	case KVB_FAIL_PEER: c->counters.fail_peer++; break;
	case KVB_FAIL_TIMEOUT: c->counters.fail_timeout++; break;
	case KVB_FAIL_ABORTED: c->counters.fail_aborted++; break;
	default: c->counters.fail_peer++; break;
	}
}

static void finished_push(kvb_connector_t *c, kvb_role_t role, const char *id, int state, int status,
			  const char *reason, uint64_t bytes)
{
	kvb_finished_t *f = g_new0(kvb_finished_t, 1);
	f->role = role;
	g_strlcpy(f->id, id, sizeof(f->id));
	f->state = state;
	f->status = status;
	g_strlcpy(f->reason, reason ? reason : "", sizeof(f->reason));
	f->bytes = bytes;
	f->end_ns = now_ns(c);
	g_queue_push_tail(&c->finished, f);
}

/* ------------------------------------------------------------------------ */
/* peers                                                                    */

static void peer_maybe_free(peer_t *p)
{
	if (p->state != PEER_DOWN || p->dead_listed || p->targets.length || p->sends.length)
		return;
	p->dead_listed = true;
	g_queue_push_tail(&p->c->dead_peers, p);
}

/* Free peers queued by peer_maybe_free; called where no event of the current
 * poll batch can still name their conn. */
static void peers_reap(kvb_connector_t *c)
{
	peer_t *p;
	while ((p = g_queue_pop_head(&c->dead_peers))) {
		g_queue_remove(&c->peers, p);
		c->be->ops->conn_close(c->be, p->conn);
		kvb_conn_free(p->conn);
		g_free(p);
	}
}

static peer_t *peer_new(kvb_connector_t *c, const char *addr, bool outbound)
{
	peer_t *p = g_new0(peer_t, 1);
	p->c = c;
	p->outbound = outbound;
	g_strlcpy(p->addr, addr, sizeof(p->addr));
	p->conn = kvb_conn_alloc(c->be);
	p->conn->user = p;
	g_queue_push_tail(&c->peers, p);
	return p;
}

static int msg_send(kvb_connector_t *c, peer_t *p, const GByteArray *frame)
{
	if (p->state != PEER_UP)
		return KVB_ERR_PEER;
	return c->be->ops->msg_send(c->be, p->conn, frame->data, frame->len);
}

static int notice_send(kvb_connector_t *c, peer_t *p, kvb_wire_type_t type, const char *transfer_id,
		       const char *request_id, int status, uint64_t bytes, const char *reason)
{
	if (p->state != PEER_UP)
		return KVB_ERR_PEER;
	kvb_wire_notice_t n;
	kvb_wire_notice_fill(&n, type, transfer_id, request_id, status, bytes, reason);
	g_byte_array_set_size(c->scratch, 0);
	int rc = kvb_wire_encode_notice(c->scratch, &n, NULL);
	if (rc != KVB_OK)
		return rc;
	return msg_send(c, p, c->scratch);
}

/* ------------------------------------------------------------------------ */
/* producer side                                                            */

static void pull_free(pull_t *pl)
{
	if (!pl)
		return;
	kvb_wire_pull_clear(&pl->msg);
	g_free(pl->rank_key);
	g_free(pl);
}

static void rank_set(prod_req_t *r, const char *key, rank_state_t st)
{
	g_hash_table_insert(r->ranks, g_strdup(key), GINT_TO_POINTER(st));
}

static void tombstone_add(kvb_connector_t *c, const prod_req_t *r, int status, const char *reason)
{
	if (c->cfg.tombstone_max == 0)
		return;
	tombstone_t *old = g_hash_table_lookup(c->tombstones, r->id);
	if (old) {
		g_hash_table_remove(c->tombstones, r->id);
		g_queue_remove(&c->tomb_order, old);
		g_free(old);
	}
	while (c->tomb_order.length >= c->cfg.tombstone_max) {
		tombstone_t *t = g_queue_pop_head(&c->tomb_order);
		g_hash_table_remove(c->tombstones, t->id);
		g_free(t);
	}
	tombstone_t *t = g_new0(tombstone_t, 1);
	g_strlcpy(t->id, r->id, sizeof(t->id));
	t->state = r->state;
	t->status = status;
	g_strlcpy(t->reason, reason ? reason : "", sizeof(t->reason));
	g_queue_push_tail(&c->tomb_order, t);
	g_hash_table_insert(c->tombstones, t->id, t);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Adaptive lease input: the delay from ready to the first pull (0 for pulls
 * that were already waiting), over the last 256 requests. */
static void delay_record(kvb_connector_t *c, uint64_t delay)
{
	c->delays[c->n_delays % G_N_ELEMENTS(c->delays)] = delay;
	c->n_delays++;
	if (c->n_delays % 16 == 0 || c->n_delays == 32) {
		uint32_t n = MIN(c->n_delays, (uint32_t)G_N_ELEMENTS(c->delays));
		uint64_t sorted[G_N_ELEMENTS(c->delays)];
		memcpy(sorted, c->delays, n * sizeof(uint64_t));
		qsort(sorted, n, sizeof(uint64_t), cmp_u64);
		c->delay_p99 = sorted[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1];
	}
}

/* How long a request that just became READY holds its blocks. */
static uint64_t lease_duration(const kvb_connector_t *c)
{
	uint64_t lmax = kvb_config_lease_max(&c->cfg);
	switch (c->cfg.lease_policy) {
	case KVB_LEASE_HEARTBEAT:
		return MIN(3 * c->cfg.heartbeat_interval_ns, lmax);
	case KVB_LEASE_ADAPTIVE:
		if (c->n_delays < 32)
			return lmax;
		return CLAMP(c->delay_p99 * c->cfg.adaptive_factor, c->cfg.lease_min_ns, lmax);
	case KVB_LEASE_FIXED:
	default:
		return c->cfg.abort_timeout_ns;
	}
}

/* Refuse a pull that will not be served: reply DONE with the reason. */
static void pull_refuse(kvb_connector_t *c, prod_req_t *r, pull_t *pl, int status, const char *reason)
{
	notice_send(c, pl->peer, KVB_WIRE_DONE, pl->msg.transfer_id, pl->msg.request_id, status, 0,
		    reason);
	if (r && pl->rank_key)
		rank_set(r, pl->rank_key, RANK_FAILED);
	count_failure(c, status);
}

static void prod_req_free(prod_req_t *r)
{
	pull_t *pl;
	while ((pl = g_queue_pop_head(&r->pending)))
		pull_free(pl);
	g_hash_table_destroy(r->ranks);
	g_free(r->groups);
	g_free(r->ids);
	g_free(r);
}

static prod_req_t *prod_req_new(kvb_connector_t *c, const char *id, kvb_producer_state_t state)
{
	prod_req_t *r = g_new0(prod_req_t, 1);
	r->c = c;
	g_strlcpy(r->id, id, sizeof(r->id));
	r->state = state;
	r->ranks = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
	g_hash_table_insert(c->producers, r->id, r);
	c->counters.live_requests++;
	return r;
}

/* Drop a request from the table without reporting it (placeholders). */
static void prod_req_drop(kvb_connector_t *c, prod_req_t *r)
{
	timer_stop(c, &r->lease);
	timer_stop(c, &r->pull_wait);
	c->counters.live_requests--;
	g_hash_table_remove(c->producers, r->id);
	prod_req_free(r);
}

/* Terminal transition: release the blocks, report, remember the id. */
static void prod_finish(kvb_connector_t *c, prod_req_t *r, kvb_producer_state_t state, int status,
			const char *reason)
{
	g_assert(r->sends.length == 0);
	pull_t *pl;
	while ((pl = g_queue_pop_head(&r->pending))) {
		pull_refuse(c, r, pl, status == KVB_OK ? KVB_ERR_STATE : status,
			    reason && reason[0] ? reason : "transfer already served");
		pull_free(pl);
	}
	r->state = state;
	timer_stop(c, &r->lease);
	timer_stop(c, &r->pull_wait);
	c->counters.blocks_held -= r->n_blocks;
	if (state == KVB_PRODUCER_EXPIRED)
		c->counters.leases_expired++;
	if (r->engine_known)
		finished_push(c, KVB_ROLE_PRODUCER, r->id, state, status, reason, r->bytes_sent);
	tombstone_add(c, r, status, reason);
	prod_req_drop(c, r);
}

/* Decide what a producer request is once its sends have changed. */
static void prod_settle(kvb_connector_t *c, prod_req_t *r)
{
	if (r->sends.length)
		return;
	if (r->state != KVB_PRODUCER_READY && r->state != KVB_PRODUCER_SENDING)
		return;
	if (r->need && r->served >= r->need) {
		prod_finish(c, r, KVB_PRODUCER_SENT, KVB_OK, "");
		return;
	}
	if (r->fence != KVB_OK) {
		prod_finish(c, r, r->fence == KVB_ERR_EXPIRED ? KVB_PRODUCER_EXPIRED : KVB_PRODUCER_ABORTED,
			    r->fence, r->fence_reason);
		return;
	}
	r->state = KVB_PRODUCER_READY;
}

static bool send_has_work(const send_t *s)
{
	return s->retry.length || s->cursor < s->n_copies;
}

static void active_add(kvb_connector_t *c, send_t *s)
{
	if (!s->in_active && !s->stopped && send_has_work(s)) {
		s->in_active = true;
		g_queue_push_tail(&c->active, s);
	}
}

static void active_remove(kvb_connector_t *c, send_t *s)
{
	if (s->in_active) {
		g_queue_remove(&c->active, s);
		s->in_active = false;
	}
}

/* Stop posting a send; its first failure is the one reported. */
static void send_stop(send_t *s, int status, const char *reason)
{
	if (s->status == KVB_OK && status != KVB_OK) {
		s->status = status;
		g_strlcpy(s->reason, reason, sizeof(s->reason));
	}
	s->stopped = true;
	slice_t *sl;
	while ((sl = g_queue_pop_head(&s->retry)))
		g_free(sl);
	active_remove(s->c, s);
}

static void send_finish(kvb_connector_t *c, send_t *s)
{
	prod_req_t *r = s->req;
	peer_t *p = s->pull->peer;
	active_remove(c, s);
	bool served = s->status == KVB_OK || s->cancelled;
	int status = s->cancelled && s->status == KVB_OK ? KVB_ERR_ABORTED : s->status;
	const char *reason = s->status != KVB_OK ? s->reason
			   : s->cancelled ? "cancelled by the consumer" : "";

	notice_send(c, p, KVB_WIRE_DONE, r->id, s->pull->msg.request_id, status, s->bytes_done, reason);
	if (status == KVB_OK)
		c->counters.transfers_ok++;
	else
		count_failure(c, status);

	kvb_xfer_record_t rec = {
		.role = KVB_ROLE_PRODUCER,
		.transfer_id = r->id,
		.request_id = s->pull->msg.request_id,
		.peer = p->addr,
		.bytes = s->bytes_done,
		.slices = s->slices,
		.retries = s->retries,
		.nic_mask = s->nic_mask,
		.nics_used = (uint32_t)__builtin_popcountll(s->nic_mask),
		.post_ns = s->post_ns,
		.end_ns = now_ns(c),
		.status = status,
		.fail_class = kvb_fail_class(status),
		.reason = reason,
	};
	record_emit(c, &rec);

	rank_set(r, s->pull->rank_key, served ? RANK_SERVED : RANK_FAILED);
	if (served)
		r->served++;
	r->bytes_sent += s->bytes_done;
	g_queue_remove(&r->sends, s);
	g_queue_remove(&p->sends, s);
	pull_free(s->pull);
	g_free(s->copies);
	g_free(s);
	peer_maybe_free(p);
	prod_settle(c, r);
}

/* A send ends when nothing of it is posted and nothing is left to post. */
static void send_check(kvb_connector_t *c, send_t *s)
{
	if (s->outstanding == 0 && (s->stopped || !send_has_work(s)))
		send_finish(c, s);
}

/* Build the copy plan for a pull against the request's blocks.  One TP byte
 * plan per region pair (regions may differ in size); when every pair has the
 * same plan the whole layout is planned at once so runs merge across it. */
static int send_plan(kvb_connector_t *c, prod_req_t *r, const kvb_wire_pull_t *m, kvb_copy_t **copies,
		     uint32_t *n_copies, uint64_t *total, kvb_err_t *err)
{
	*copies = NULL;
	*n_copies = 0;
	*total = 0;
	if (m->n_blocks == 0)
		return KVB_OK;
	uint32_t *pair = g_new(uint32_t, c->n_regions);
	kvb_tp_plan_t *plans = g_new(kvb_tp_plan_t, c->n_regions);
	int rc = kvb_regions_pair(c->regions, c->n_regions, m->regions, m->n_regions, pair, err);
	bool uniform = true;
	for (uint32_t i = 0; rc == KVB_OK && i < c->n_regions; i++) {
		kvb_tp_side_t ps = {c->cfg.tp_size, c->cfg.tp_rank, c->regions[i].block_bytes};
		kvb_tp_side_t ds = {m->tp_size, m->tp_rank, m->regions[pair[i]].block_bytes};
		rc = kvb_tp_plan(&ps, &ds, c->cfg.total_kv_heads, &plans[i], err);
		if (rc == KVB_OK && i > 0 && memcmp(&plans[i], &plans[0], sizeof(plans[0])) != 0)
			uniform = false;
	}
	if (rc == KVB_OK && uniform) {
		rc = kvb_copy_plan_build(c->regions, c->n_regions, r->groups, m->regions, m->n_regions,
					 m->groups, c->n_groups, &plans[0], copies, n_copies, total, err);
	} else if (rc == KVB_OK) {
		GArray *all = g_array_new(FALSE, FALSE, sizeof(kvb_copy_t));
		for (uint32_t i = 0; rc == KVB_OK && i < c->n_regions; i++) {
			kvb_copy_t *part = NULL;
			uint32_t n = 0;
			uint64_t bytes = 0;
			rc = kvb_copy_plan_build(&c->regions[i], 1, r->groups, &m->regions[pair[i]], 1,
						 m->groups, c->n_groups, &plans[i], &part, &n, &bytes, err);
			for (uint32_t k = 0; rc == KVB_OK && k < n; k++) {
				part[k].src_region = i;
				part[k].dst_region = pair[i];
			}
			if (rc == KVB_OK) {
				g_array_append_vals(all, part, n);
				*total += bytes;
			}
			g_free(part);
		}
		*n_copies = all->len;
		*copies = (kvb_copy_t *)g_array_free(all, rc != KVB_OK);
		if (rc != KVB_OK) {
			*copies = NULL;
			*n_copies = 0;
			*total = 0;
		}
	}
	g_free(pair);
	g_free(plans);
	return rc;
}

/* Start serving a pull from a READY/SENDING request.  The pull is owned by
 * the send from here on (or freed on refusal). */
static void send_start(kvb_connector_t *c, prod_req_t *r, pull_t *pl)
{
	kvb_err_t e;
	kvb_err_clear(&e);
	kvb_copy_t *copies;
	uint32_t n_copies;
	uint64_t total;
	int rc = send_plan(c, r, &pl->msg, &copies, &n_copies, &total, &e);
	if (rc != KVB_OK) {
		pull_refuse(c, r, pl, rc, e.msg);
		pull_free(pl);
		return;
	}
	send_t *s = g_new0(send_t, 1);
	s->c = c;
	s->req = r;
	s->pull = pl;
	s->copies = copies;
	s->n_copies = n_copies;
	s->bytes_total = total;
	s->stream = ++c->next_stream;
	s->post_ns = now_ns(c);
	g_queue_push_tail(&r->sends, s);
	g_queue_push_tail(&pl->peer->sends, s);
	rank_set(r, pl->rank_key, RANK_SENDING);
	r->state = KVB_PRODUCER_SENDING;
	notice_send(c, pl->peer, KVB_WIRE_STARTED, r->id, pl->msg.request_id, KVB_OK, 0, NULL);
	active_add(c, s);
	send_check(c, s);
}

/* Serve the pulls that waited for ready.  Each send may end the request
 * (an empty pull can complete it), so it is looked up again every time. */
static void prod_start_pending(kvb_connector_t *c, prod_req_t *r)
{
	char id[KVB_ID_MAX];
	g_strlcpy(id, r->id, sizeof(id));
	while ((r = g_hash_table_lookup(c->producers, id)) && r->pending.length)
		send_start(c, r, g_queue_pop_head(&r->pending));
	if (r)
		prod_settle(c, r);
}

/* Reasons to refuse a pull before it is queued. */
static int pull_validate(kvb_connector_t *c, const kvb_wire_pull_t *m, kvb_err_t *err)
{
	if (!c->producer)
		return kvb_err_set(err, KVB_ERR_PEER, "this worker (role %s) does not produce KV",
				   kvb_role_name(c->cfg.role));
	if (!c->regions)
		return kvb_err_set(err, KVB_ERR_PEER, "producer has not registered its KV layout yet");
	if (!id_valid(m->transfer_id) || !id_valid(m->request_id))
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "pull without transfer or request id");
	if (m->tp_size == 0 || m->tp_rank >= m->tp_size)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "consumer tp_rank %u with tp_size %u", m->tp_rank,
				   m->tp_size);
	if (m->n_nics == 0 || m->n_nics > KVB_MAX_NICS)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "consumer announces %u NICs (1..%u)", m->n_nics,
				   KVB_MAX_NICS);
	int32_t ratio;
	int rc = kvb_tp_ratio(c->cfg.tp_size, m->tp_size, &ratio, err);
	if (rc != KVB_OK)
		return rc;
	if (!kvb_tp_pairs(c->cfg.tp_size, c->cfg.tp_rank, m->tp_size, m->tp_rank))
		return kvb_err_set(err, KVB_ERR_LAYOUT,
				   "consumer rank %u/%u does not pair with producer rank %u/%u", m->tp_rank,
				   m->tp_size, c->cfg.tp_rank, c->cfg.tp_size);
	uint32_t groups = 0;
	if (m->n_regions) {
		kvb_err_t cause;
		kvb_err_clear(&cause);
		if (kvb_layout_check(m->regions, m->n_regions, &groups, &cause) != KVB_OK)
			return kvb_err_set(err, KVB_ERR_LAYOUT, "consumer layout: %s", cause.msg);
	}
	if (m->tp_size > KVB_MAX_TP)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "consumer tp_size %u exceeds %u", m->tp_size,
				   KVB_MAX_TP);
	if (m->n_groups != c->n_groups || (m->n_regions && groups != c->n_groups))
		return kvb_err_set(err, KVB_ERR_LAYOUT, "consumer has %u KV groups, producer %u",
				   m->n_groups, c->n_groups);
	if (m->n_regions != c->n_regions && m->n_blocks)
		return kvb_err_set(err, KVB_ERR_LAYOUT, "consumer has %u regions, producer %u", m->n_regions,
				   c->n_regions);
	return KVB_OK;
}

/* How long pulls wait for r to be ready: the lease, or unprefilled_wait for a
 * transfer the engine has not begun here (a decoder asks every producer rank;
 * one that never prefills it should say so soon, not at the lease). */
static uint64_t pull_wait_ns(const kvb_connector_t *c, const prod_req_t *r)
{
	if (r->state == KVB_PRODUCER_PLACEHOLDER && c->cfg.unprefilled_wait_ns)
		return MIN(c->cfg.unprefilled_wait_ns, c->cfg.abort_timeout_ns);
	return c->cfg.abort_timeout_ns;
}

static void on_pull(kvb_connector_t *c, peer_t *p, const void *data, size_t len)
{
	kvb_err_t e;
	kvb_err_clear(&e);
	pull_t *pl = g_new0(pull_t, 1);
	pl->peer = p;
	int rc = kvb_wire_decode_pull(data, len, &pl->msg, &e);
	if (rc == KVB_OK)
		rc = pull_validate(c, &pl->msg, &e);
	if (rc != KVB_OK) {
		if (rc == KVB_ERR_PROTOCOL)
			c->counters.malformed_messages++;
		char tid[KVB_ID_MAX], rid[KVB_ID_MAX];
		if (kvb_wire_peek_ids(data, len, tid, rid) == KVB_OK)
			notice_send(c, p, KVB_WIRE_DONE, tid, rid, rc, 0, e.msg);
		count_failure(c, rc);
		pull_free(pl);
		return;
	}
	const kvb_wire_pull_t *m = &pl->msg;
	tombstone_t *t = g_hash_table_lookup(c->tombstones, m->transfer_id);
	prod_req_t *r = g_hash_table_lookup(c->producers, m->transfer_id);
	if (!r && t) {
		/* Late pull: the blocks are gone (or reused); never serve it. */
		c->counters.late_pulls_refused++;
		char reason[KVB_REASON_MAX];
		int status = t->status != KVB_OK ? t->status : KVB_ERR_STATE;
		textf(reason, sizeof(reason), "transfer %s already %s%s%s", t->id,
			 kvb_producer_state_name(t->state), t->reason[0] ? ": " : "", t->reason);
		pull_refuse(c, NULL, pl, status, reason);
		pull_free(pl);
		return;
	}
	if (!r)
		r = prod_req_new(c, m->transfer_id, KVB_PRODUCER_PLACEHOLDER);

	if (r->d_tp == 0) {
		/* consumer ranks that pair with this rank (pull_validate checked
		 * that the sizes divide) */
		r->d_tp = m->tp_size;
		r->need = c->cfg.tp_size >= m->tp_size ? 1 : m->tp_size / c->cfg.tp_size;
	} else if (r->d_tp != m->tp_size) {
		char reason[KVB_REASON_MAX];
		textf(reason, sizeof(reason), "consumer TP size %u differs from the first pull's %u",
			 m->tp_size, r->d_tp);
		pull_refuse(c, r, pl, KVB_ERR_LAYOUT, reason);
		pull_free(pl);
		return;
	}
	pl->rank_key = g_strdup_printf("%s/%u", m->request_id, m->tp_rank);
	gpointer st = g_hash_table_lookup(r->ranks, pl->rank_key);
	if (st && GPOINTER_TO_INT(st) != RANK_FAILED) {
		/* A duplicate (network or consumer retry): the original is being
		 * handled; answering it would disturb the consumer's bookkeeping. */
		c->counters.duplicate_pulls++;
		pull_free(pl);
		return;
	}
	rank_set(r, pl->rank_key, RANK_PENDING);
	switch (r->state) {
	case KVB_PRODUCER_PLACEHOLDER:
	case KVB_PRODUCER_PREFILL:
		g_queue_push_tail(&r->pending, pl);
		if (!r->pull_wait.serial &&
		    timer_start(c, &r->pull_wait, TIMER_PULL_WAIT, r, 0, now_ns(c) + pull_wait_ns(c, r)) != KVB_OK) {
			g_queue_remove(&r->pending, pl);
			pull_refuse(c, r, pl, KVB_ERR_NO_RESOURCE, "cannot arm the pull-wait timer");
			pull_free(pl);
			if (r->state == KVB_PRODUCER_PLACEHOLDER && !r->pending.length)
				prod_req_drop(c, r);
		}
		return;
	case KVB_PRODUCER_READY:
	case KVB_PRODUCER_SENDING:
		if (r->fence != KVB_OK) {
			pull_refuse(c, r, pl, r->fence, r->fence_reason);
			pull_free(pl);
			return;
		}
		if (!r->first_pull_ns) {
			r->first_pull_ns = now_ns(c);
			delay_record(c, r->first_pull_ns - r->ready_ns);
		}
		send_start(c, r, pl); /* may end r */
		return;
	default:
		g_assert_not_reached();
	}
}

/* A consumer says its pull is still coming: a heartbeat lease moves its
 * deadline to three intervals from now, never past lease_max from ready. */
static void on_heartbeat(kvb_connector_t *c, const kvb_wire_notice_t *n)
{
	c->counters.heartbeats_received++;
	prod_req_t *r = g_hash_table_lookup(c->producers, n->transfer_id);
	if (!r || r->state != KVB_PRODUCER_READY || c->cfg.lease_policy != KVB_LEASE_HEARTBEAT)
		return;
	uint64_t deadline = MIN(now_ns(c) + 3 * c->cfg.heartbeat_interval_ns,
				r->ready_ns + kvb_config_lease_max(&c->cfg));
	if (deadline <= r->lease_deadline)
		return;
	if (timer_start(c, &r->lease, TIMER_LEASE, r, 0, deadline) == KVB_OK) {
		r->lease_deadline = deadline;
		c->counters.lease_renewals++;
	}
}

static void on_cancel(kvb_connector_t *c, peer_t *p, const kvb_wire_notice_t *n)
{
	prod_req_t *r = g_hash_table_lookup(c->producers, n->transfer_id);
	if (!r) {
		if (g_hash_table_contains(c->tombstones, n->transfer_id))
			c->counters.stale_messages++;
		else
			c->counters.unknown_messages++;
		return;
	}
	for (GList *l = r->pending.head; l; l = l->next) {
		pull_t *pl = l->data;
		if (pl->peer == p && strcmp(pl->msg.request_id, n->request_id) == 0) {
			g_queue_delete_link(&r->pending, l);
			notice_send(c, p, KVB_WIRE_DONE, r->id, pl->msg.request_id, KVB_ERR_ABORTED, 0,
				    "cancelled by the consumer");
			count_failure(c, KVB_ERR_ABORTED);
			rank_set(r, pl->rank_key, RANK_SERVED);
			r->served++;
			pull_free(pl);
			if (r->state == KVB_PRODUCER_PLACEHOLDER && !r->pending.length)
				prod_req_drop(c, r);
			else if (!r->pending.length)
				timer_stop(c, &r->pull_wait);
			return;
		}
	}
	for (GList *l = r->sends.head; l; l = l->next) {
		send_t *s = l->data;
		if (s->pull->peer == p && strcmp(s->pull->msg.request_id, n->request_id) == 0) {
			if (s->cancelled) {
				c->counters.stale_messages++;
				return;
			}
			s->cancelled = true;
			if (send_has_work(s))
				send_stop(s, KVB_ERR_ABORTED, "cancelled by the consumer");
			send_check(c, s);
			return;
		}
	}
	c->counters.stale_messages++;
}

/* Lease ran out: a READY request ends now; a SENDING one is fenced. */
static void on_lease(kvb_connector_t *c, prod_req_t *r)
{
	r->lease.serial = 0;
	char reason[KVB_REASON_MAX];
	textf(reason, sizeof(reason), "lease of %.3f s (%s) expired with %u of %u consumer ranks served",
	      ns_to_s(r->lease_deadline - r->ready_ns), kvb_lease_policy_name(c->cfg.lease_policy),
	      r->served, r->need);
	if (r->state == KVB_PRODUCER_READY) {
		prod_finish(c, r, KVB_PRODUCER_EXPIRED, KVB_ERR_EXPIRED, reason);
		return;
	}
	if (r->state != KVB_PRODUCER_SENDING || r->fence != KVB_OK)
		return;
	r->fence = KVB_ERR_EXPIRED;
	g_strlcpy(r->fence_reason, reason, sizeof(r->fence_reason));
	GList *sends = g_list_copy(r->sends.head);
	for (GList *l = sends; l; l = l->next) {
		send_t *s = l->data;
		if (send_has_work(s))
			send_stop(s, KVB_ERR_EXPIRED, "lease expired mid-transfer");
	}
	/* send_check may end the request; check membership before each call */
	for (GList *l = sends; l; l = l->next) {
		if (g_hash_table_lookup(c->producers, r->id) != r || !g_queue_find(&r->sends, l->data))
			continue;
		send_check(c, l->data);
	}
	g_list_free(sends);
}

static void on_pull_wait(kvb_connector_t *c, prod_req_t *r)
{
	r->pull_wait.serial = 0;
	char reason[KVB_REASON_MAX];
	int status = KVB_ERR_TIMEOUT;
	if (r->state == KVB_PRODUCER_PLACEHOLDER && c->cfg.unprefilled_wait_ns) {
		status = KVB_ERR_NOT_FOUND;
		textf(reason, sizeof(reason), "transfer %s was never prefilled on this producer (tp rank "
			 "%u of %u) within %.3f s; a decoder pulls from every producer rank, so each must "
			 "prefill it", r->id, c->cfg.tp_rank, c->cfg.tp_size, ns_to_s(pull_wait_ns(c, r)));
	} else {
		textf(reason, sizeof(reason), "producer request not ready within %.3f s",
			 ns_to_s(c->cfg.abort_timeout_ns));
	}
	pull_t *pl;
	while ((pl = g_queue_pop_head(&r->pending))) {
		pull_refuse(c, r, pl, status, reason);
		pull_free(pl);
	}
	if (r->state == KVB_PRODUCER_PLACEHOLDER)
		prod_req_drop(c, r);
}

/* ------------------------------------------------------------------------ */
/* slices                                                                   */

static void inflight_link(kvb_connector_t *c, slice_t *sl)
{
	sl->prev = NULL;
	sl->next = c->inflight;
	if (c->inflight)
		c->inflight->prev = sl;
	c->inflight = sl;
}

static void inflight_unlink(kvb_connector_t *c, slice_t *sl)
{
	if (sl->prev)
		sl->prev->next = sl->next;
	else
		c->inflight = sl->next;
	if (sl->next)
		sl->next->prev = sl->prev;
	sl->prev = sl->next = NULL;
}

static bool any_nic_up(const kvb_connector_t *c)
{
	for (uint32_t i = 0; i < c->n_nics; i++)
		if (!c->nic_down[i])
			return true;
	return false;
}

/* Account a posted op: it is in flight until its completion. */
static void op_posted(kvb_connector_t *c, send_t *s, slice_t *op)
{
	if (s->slices == 0 && s->retries == 0)
		s->post_ns = now_ns(c);
	s->outstanding++;
	s->slices += op->n_slices;
	s->nic_mask |= UINT64_C(1) << op->nic;
	c->nic_inflight_bytes[op->nic] += op->len;
	c->nic_inflight_slices[op->nic] += op->n_slices;
	c->counters.slices_posted += op->n_slices;
	inflight_link(c, op);
}

/* An op the backend refused at post time: no completion will come. */
static void op_refused(kvb_connector_t *c, send_t *s, slice_t *op, int rc)
{
	char reason[KVB_REASON_MAX];
	textf(reason, sizeof(reason), "post on NIC %u failed: %s (%s)", op->nic, kvb_strerror(rc),
	      c->be->ops->last_error(c->be));
	c->counters.slices_failed += op->n_slices;
	g_free(op);
	send_stop(s, rc == KVB_ERR_RANGE || rc == KVB_ERR_PEER ? rc : KVB_ERR_TRANSPORT, reason);
}

static void op_fill(const kvb_connector_t *c, const send_t *s, const slice_t *op, kvb_slice_op_t *wr)
{
	*wr = (kvb_slice_op_t){
		.opcode = KVB_XFER_WRITE,
		.local_nic = op->nic,
		.remote_nic = op->remote_nic,
		.local_addr = op->src,
		.local_mr = c->mrs[op->src_region],
		.remote_addr = op->dst,
		.remote_key = &s->pull->msg.rkeys[op->dst_region],
		.len = op->len,
		.cookie = (uint64_t)(uintptr_t)op,
		.n_slices = op->n_slices,
		.slice_len = op->slice_len,
		.stream = s->stream,
	};
}

/* Room per NIC for new slices: queue depth minus what is in flight, 0 for
 * NICs that are down. */
static uint32_t nic_rooms(const kvb_connector_t *c, uint32_t *room, bool *up)
{
	uint32_t total = 0;
	for (uint32_t i = 0; i < c->n_nics; i++) {
		uint32_t used = c->nic_inflight_slices[i];
		room[i] = c->nic_down[i] || used >= c->cfg.nic_queue_depth ? 0 : c->cfg.nic_queue_depth - used;
		up[i] = room[i] > 0;
		total += room[i];
	}
	return total;
}

/* Re-post the head of the retry queue on another NIC (one op, whole). */
static int send_post_retry(kvb_connector_t *c, send_t *s, int *posted)
{
	slice_t *op = g_queue_peek_head(&s->retry);
	uint32_t room[KVB_MAX_NICS];
	bool up[KVB_MAX_NICS];
	if (nic_rooms(c, room, up) == 0)
		return KVB_ERR_NO_RESOURCE;
	kvb_nic_view_t view = {c->n_nics, c->nic_inflight_bytes, up};
	kvb_pick_ctx_t ctx = {c->locations[op->src_region], op->len, op->attempts, op->avoid, s->stream};
	int nic = kvb_nic_policy_pick(c->policy, &ctx, &view);
	if (nic < 0)
		return KVB_ERR_NO_RESOURCE;
	op->nic = (uint32_t)nic;
	op->remote_nic = (uint32_t)nic % s->pull->msg.n_nics;
	kvb_slice_op_t wr;
	op_fill(c, s, op, &wr);
	size_t n_posted = 0;
	int rc = c->be->ops->xfer_post(c->be, s->pull->peer->conn, &wr, 1, &n_posted);
	if (rc == KVB_ERR_NO_RESOURCE || (rc == KVB_OK && n_posted == 0)) {
		c->counters.post_backpressure++;
		return KVB_ERR_NO_RESOURCE;
	}
	g_queue_pop_head(&s->retry);
	if (rc != KVB_OK) {
		op_refused(c, s, op, rc);
		return KVB_OK;
	}
	op_posted(c, s, op);
	(*posted)++;
	return KVB_INPROGRESS;
}

/* Slice the rest of the current copy and place its slices on the NICs with
 * the policy's bulk placement: every NIC that got slices gets one op with a
 * contiguous part of the copy (the counts per NIC are the policy's; which
 * bytes ride on which NIC is not a policy decision).  The last op carries
 * the copy's final, possibly longer, slice. */
static int send_post_copy(kvb_connector_t *c, send_t *s, int *posted)
{
	const kvb_copy_t *cp = &s->copies[s->cursor];
	uint64_t remaining = cp->len - s->cursor_off;
	uint64_t slice = c->cfg.slice_size, frag = c->cfg.fragment_limit;
	uint64_t n_total = kvb_slice_count(remaining, slice, frag);
	uint32_t room[KVB_MAX_NICS], counts[KVB_MAX_NICS];
	bool up[KVB_MAX_NICS];
	if (nic_rooms(c, room, up) == 0)
		return KVB_ERR_NO_RESOURCE;
	kvb_nic_view_t view = {c->n_nics, c->nic_inflight_bytes, up};
	kvb_pick_ctx_t ctx = {c->locations[cp->src_region], slice, 0, KVB_NIC_NONE, s->stream};
	uint32_t want = n_total > UINT32_MAX ? UINT32_MAX : (uint32_t)n_total;
	int placed = kvb_nic_policy_pick_bulk(c->policy, &ctx, &view, room, want, counts);
	if (placed <= 0)
		return KVB_ERR_NO_RESOURCE;

	kvb_slice_op_t wr[KVB_MAX_NICS];
	slice_t *ops[KVB_MAX_NICS];
	size_t n_ops = 0;
	uint64_t off = s->cursor_off, left = n_total;
	for (uint32_t nic = 0; nic < c->n_nics; nic++) {
		if (!counts[nic])
			continue;
		uint32_t cnt = counts[nic];
		/* the copy's last slice absorbs the tail (kvb_slice_next_len) */
		uint64_t len = cnt == left ? cp->len - off : (uint64_t)cnt * slice;
		slice_t *op = g_new0(slice_t, 1);
		op->send = s;
		op->src = cp->src_addr + off;
		op->dst = cp->dst_addr + off;
		op->len = len;
		op->n_slices = cnt;
		op->slice_len = slice;
		op->src_region = cp->src_region;
		op->dst_region = cp->dst_region;
		op->nic = nic;
		op->remote_nic = nic % s->pull->msg.n_nics;
		op->avoid = KVB_NIC_NONE;
		op_fill(c, s, op, &wr[n_ops]);
		ops[n_ops++] = op;
		off += len;
		left -= cnt;
	}
	size_t n_posted = 0;
	int rc = c->be->ops->xfer_post(c->be, s->pull->peer->conn, wr, n_ops, &n_posted);
	for (size_t i = 0; i < n_posted; i++) {
		op_posted(c, s, ops[i]);
		s->cursor_off += ops[i]->len;
		(*posted)++;
	}
	if (s->cursor_off == cp->len) {
		s->cursor++;
		s->cursor_off = 0;
	}
	if (n_posted < n_ops && rc != KVB_OK && rc != KVB_ERR_NO_RESOURCE) {
		/* the op at n_posted was refused; the ops after it were never tried */
		op_refused(c, s, ops[n_posted], rc);
		n_posted++;
	}
	for (size_t i = n_posted; i < n_ops; i++)
		g_free(ops[i]);
	if (rc == KVB_ERR_NO_RESOURCE || (rc == KVB_OK && n_posted < n_ops)) {
		c->counters.post_backpressure++;
		return KVB_ERR_NO_RESOURCE;
	}
	return KVB_INPROGRESS;
}

/* Post up to budget ops of one send.  Returns KVB_OK when the send has
 * nothing more to post now, KVB_INPROGRESS when the budget ran out, or
 * KVB_ERR_NO_RESOURCE when every usable NIC queue is full. */
static int send_post(kvb_connector_t *c, send_t *s, int budget, int *posted)
{
	while (budget-- > 0) {
		if (s->stopped || s->req->fence != KVB_OK || !send_has_work(s))
			return KVB_OK;
		if (!any_nic_up(c)) {
			char reason[KVB_REASON_MAX];
			textf(reason, sizeof(reason), "all %u NICs are down", c->n_nics);
			send_stop(s, KVB_ERR_TRANSPORT, reason);
			return KVB_OK;
		}
		int rc = s->retry.length ? send_post_retry(c, s, posted) : send_post_copy(c, s, posted);
		if (rc == KVB_ERR_NO_RESOURCE)
			return rc;
	}
	return KVB_INPROGRESS;
}

/* Post queued slices, round-robin over sends, until every send is drained
 * or the NICs are full. */
static int post_work(kvb_connector_t *c)
{
	int posted = 0;
	while (c->active.length) {
		send_t *s = g_queue_peek_head(&c->active);
		int rc = send_post(c, s, POST_BUDGET, &posted);
		if (rc == KVB_ERR_NO_RESOURCE)
			break;
		if (rc == KVB_OK) {
			active_remove(c, s);
			send_check(c, s);
		} else {
			g_queue_push_tail(&c->active, g_queue_pop_head(&c->active));
		}
	}
	return posted;
}

static void nic_error(kvb_connector_t *c, uint32_t nic)
{
	if (nic >= c->n_nics)
		return;
	c->nic_errors[nic]++;
	if (c->nic_down[nic] || c->nic_errors[nic] < c->cfg.nic_error_threshold)
		return;
	c->nic_down[nic] = true;
	c->counters.nic_down_events++;
	timer_start(c, &c->nic_cooldown[nic], TIMER_NIC_COOLDOWN, NULL, nic,
		    now_ns(c) + c->cfg.nic_cooldown_ns);
}

static void on_xfer_done(kvb_connector_t *c, const kvb_event_t *ev)
{
	slice_t *op = (slice_t *)(uintptr_t)ev->cookie;
	send_t *s = op->send;
	inflight_unlink(c, op);
	c->nic_inflight_bytes[op->nic] -= op->len;
	c->nic_inflight_slices[op->nic] -= op->n_slices;
	s->outstanding--;
	if (ev->status == KVB_OK) {
		s->bytes_done += op->len;
		c->counters.bytes_sent += op->len;
		c->nic_errors[op->nic] = 0;
		g_free(op);
	} else {
		c->counters.slices_failed += op->n_slices;
		if (ev->status == KVB_ERR_TRANSPORT)
			nic_error(c, op->nic);
		bool retryable = ev->status == KVB_ERR_TRANSPORT && op->attempts < c->cfg.slice_retries &&
				 !s->stopped && s->req->fence == KVB_OK;
		if (retryable) {
			op->attempts++;
			op->avoid = op->nic;
			s->retries += op->n_slices;
			c->counters.slices_retried += op->n_slices;
			g_queue_push_tail(&s->retry, op);
			active_add(c, s);
		} else {
			char reason[KVB_REASON_MAX];
			textf(reason, sizeof(reason), "%u slices (%" G_GUINT64_FORMAT
			      " bytes) failed on NIC %u after %u attempts: %s (%s)", op->n_slices, op->len,
			      op->nic, op->attempts + 1, kvb_strerror(ev->status), c->be->ops->last_error(c->be));
			int st = ev->status == KVB_ERR_RANGE || ev->status == KVB_ERR_PEER ? ev->status
											 : KVB_ERR_TRANSPORT;
			g_free(op);
			send_stop(s, st, reason);
		}
	}
	send_check(c, s);
}

/* ------------------------------------------------------------------------ */
/* consumer side                                                            */

static bool target_settled(const cons_target_t *t)
{
	return t->state == TARGET_DONE || t->state == TARGET_FAILED;
}

static void cons_req_free(cons_req_t *r)
{
	if (r->pull_frame)
		g_byte_array_unref(r->pull_frame);
	g_free(r->targets);
	g_free(r);
}

static void cons_finish(kvb_connector_t *c, cons_req_t *r)
{
	if (r->state == KVB_CONSUMER_EXPECTED)
		c->n_expected--;
	kvb_consumer_state_t state = KVB_CONSUMER_DONE;
	int status = r->status;
	if (status == KVB_OK && r->aborting) {
		status = KVB_ERR_ABORTED;
		g_strlcpy(r->reason, "aborted by the engine", sizeof(r->reason));
	}
	if (status != KVB_OK)
		state = KVB_CONSUMER_FAILED;
	r->state = state;
	timer_stop(c, &r->deadline);
	char peer_addr[KVB_ADDR_MAX] = "";
	if (r->n_targets && r->targets[0].peer)
		g_strlcpy(peer_addr, r->targets[0].peer->addr, sizeof(peer_addr));
	uint64_t bytes = 0;
	for (uint32_t i = 0; i < r->n_targets; i++) {
		cons_target_t *t = &r->targets[i];
		bytes += t->bytes;
		if (t->peer) {
			g_queue_remove(&t->peer->targets, t);
			peer_maybe_free(t->peer);
			t->peer = NULL;
		}
	}
	if (status == KVB_OK) {
		c->counters.transfers_ok++;
		c->counters.bytes_received += bytes;
	} else {
		count_failure(c, status);
	}
	kvb_xfer_record_t rec = {
		.role = KVB_ROLE_CONSUMER,
		.transfer_id = r->transfer_id,
		.request_id = r->id,
		.peer = peer_addr,
		.bytes = bytes,
		.post_ns = r->post_ns ? r->post_ns : r->start_ns,
		.end_ns = now_ns(c),
		.status = status,
		.fail_class = kvb_fail_class(status),
		.reason = r->reason,
	};
	record_emit(c, &rec);
	c->counters.blocks_held -= r->n_blocks;
	c->counters.live_requests--;
	finished_push(c, KVB_ROLE_CONSUMER, r->id, state, status, r->reason, bytes);
	g_hash_table_remove(c->consumers, r->id);
	cons_req_free(r);
}

static void target_end(cons_target_t *t, int status, uint64_t bytes, const char *reason)
{
	if (target_settled(t))
		return;
	cons_req_t *r = t->req;
	t->state = status == KVB_OK ? TARGET_DONE : TARGET_FAILED;
	t->bytes += bytes;
	if (status != KVB_OK && r->status == KVB_OK) {
		r->status = status;
		textf(r->reason, sizeof(r->reason), "producer %s: %s", t->peer ? t->peer->addr : "?",
			 reason && reason[0] ? reason : kvb_strerror(status));
	}
}

static void target_send_pull(kvb_connector_t *c, cons_target_t *t)
{
	cons_req_t *r = t->req;
	int rc = msg_send(c, t->peer, r->pull_frame);
	if (rc != KVB_OK) {
		char reason[KVB_REASON_MAX];
		textf(reason, sizeof(reason), "sending the pull failed: %s (%s)", kvb_strerror(rc),
			 c->be->ops->last_error(c->be));
		target_end(t, rc == KVB_ERR_PEER ? KVB_ERR_PEER : KVB_ERR_TRANSPORT, 0, reason);
		return;
	}
	t->state = TARGET_REQUESTED;
	if (!r->post_ns)
		r->post_ns = now_ns(c);
}

/* Recompute a consumer request after a target changed; end it when every
 * target is settled.  Once failing or aborting, targets that have a pull in
 * flight are told to stop, and targets still connecting are dropped. */
static void cons_settle(kvb_connector_t *c, cons_req_t *r)
{
	bool failing = r->status != KVB_OK || r->aborting;
	uint32_t settled = 0, receiving = 0, requested = 0;
	for (uint32_t i = 0; i < r->n_targets; i++) {
		cons_target_t *t = &r->targets[i];
		if (failing && t->state == TARGET_CONNECTING)
			target_end(t, r->aborting ? KVB_ERR_ABORTED : r->status, 0, "not started");
		if (failing && (t->state == TARGET_REQUESTED || t->state == TARGET_RECEIVING) && !t->cancel_sent) {
			t->cancel_sent = true;
			if (notice_send(c, t->peer, KVB_WIRE_CANCEL, r->transfer_id, r->id, KVB_OK, 0, NULL) != KVB_OK)
				target_end(t, KVB_ERR_PEER, 0, "connection lost while cancelling");
		}
		if (target_settled(t))
			settled++;
		else if (t->state == TARGET_RECEIVING)
			receiving++;
		else if (t->state == TARGET_REQUESTED)
			requested++;
	}
	if (settled == r->n_targets) {
		cons_finish(c, r);
		return;
	}
	if (r->state == KVB_CONSUMER_EXPECTED)
		return;
	if (receiving)
		r->state = KVB_CONSUMER_RECEIVING;
	else if (requested && r->state == KVB_CONSUMER_WAITING)
		r->state = KVB_CONSUMER_REQUESTED;
}

static cons_target_t *target_for(cons_req_t *r, const peer_t *p)
{
	for (uint32_t i = 0; i < r->n_targets; i++)
		if (r->targets[i].peer == p)
			return &r->targets[i];
	return NULL;
}

static void on_notice(kvb_connector_t *c, peer_t *p, const kvb_wire_notice_t *n)
{
	cons_req_t *r = g_hash_table_lookup(c->consumers, n->request_id);
	cons_target_t *t = r ? target_for(r, p) : NULL;
	if (!t || strcmp(r->transfer_id, n->transfer_id) != 0) {
		c->counters.unknown_messages++;
		return;
	}
	if (n->type == KVB_WIRE_STARTED) {
		if (t->state != TARGET_REQUESTED) {
			c->counters.stale_messages++;
			return;
		}
		t->state = TARGET_RECEIVING;
	} else {
		if (target_settled(t)) {
			c->counters.stale_messages++;
			return;
		}
		target_end(t, n->status, n->bytes, n->reason);
	}
	cons_settle(c, r);
}

static void on_deadline(kvb_connector_t *c, cons_req_t *r)
{
	r->deadline.serial = 0;
	uint32_t done = 0;
	for (uint32_t i = 0; i < r->n_targets; i++)
		done += r->targets[i].state == TARGET_DONE;
	if (r->status == KVB_OK) {
		r->status = KVB_ERR_TIMEOUT;
		textf(r->reason, sizeof(r->reason),
			 "no complete answer within %.3f s (%u of %u producers done)",
			 ns_to_s(kvb_config_consumer_timeout(&c->cfg)), done, r->n_targets);
	}
	for (uint32_t i = 0; i < r->n_targets; i++) {
		cons_target_t *t = &r->targets[i];
		if ((t->state == TARGET_REQUESTED || t->state == TARGET_RECEIVING) && !t->cancel_sent) {
			t->cancel_sent = true;
			notice_send(c, t->peer, KVB_WIRE_CANCEL, r->transfer_id, r->id, KVB_OK, 0, NULL);
		}
		if (!target_settled(t))
			t->state = TARGET_FAILED;
	}
	cons_finish(c, r);
}

/* ------------------------------------------------------------------------ */
/* connection events                                                        */

static void on_conn_up(kvb_connector_t *c, peer_t *p)
{
	if (p->state != PEER_CONNECTING)
		return;
	p->state = PEER_UP;
	GList *targets = g_list_copy(p->targets.head);
	for (GList *l = targets; l; l = l->next) {
		cons_target_t *t = l->data;
		if (t->state == TARGET_CONNECTING && t->req->state != KVB_CONSUMER_EXPECTED)
			target_send_pull(c, t);
	}
	/* settle each request once (a request may have been finished by now) */
	for (GList *l = targets; l; l = l->next) {
		cons_target_t *t = l->data;
		if (g_queue_find(&p->targets, t))
			cons_settle(c, t->req);
	}
	g_list_free(targets);
}

static void on_conn_down(kvb_connector_t *c, peer_t *p, int status)
{
	bool was_connecting = p->state == PEER_CONNECTING;
	p->state = PEER_DOWN;
	if (p->outbound && g_hash_table_lookup(c->peers_by_addr, p->addr) == p)
		g_hash_table_remove(c->peers_by_addr, p->addr);
	char reason[KVB_REASON_MAX];
	textf(reason, sizeof(reason), "%s %s: %s", was_connecting ? "cannot connect to" : "lost connection to",
		 p->addr, c->be->ops->last_error(c->be));

	/* consumer targets through this peer */
	GList *targets = g_list_copy(p->targets.head);
	for (GList *l = targets; l; l = l->next)
		target_end(l->data, KVB_ERR_PEER, 0, reason);
	for (GList *l = targets; l; l = l->next) {
		cons_target_t *t = l->data;
		if (g_queue_find(&p->targets, t))
			cons_settle(c, t->req);
	}
	g_list_free(targets);

	/* producer sends to this peer stop; they end when their slices drain */
	GList *sends = g_list_copy(p->sends.head);
	for (GList *l = sends; l; l = l->next)
		send_stop(l->data, KVB_ERR_PEER, reason);
	for (GList *l = sends; l; l = l->next)
		if (g_queue_find(&p->sends, l->data))
			send_check(c, l->data);
	g_list_free(sends);

	/* pulls from this peer still queued on producer requests */
	GList *reqs = g_hash_table_get_values(c->producers);
	for (GList *l = reqs; l; l = l->next) {
		prod_req_t *r = l->data;
		GList *q = r->pending.head;
		while (q) {
			GList *next = q->next;
			pull_t *pl = q->data;
			if (pl->peer == p) {
				g_queue_delete_link(&r->pending, q);
				rank_set(r, pl->rank_key, RANK_FAILED);
				pull_free(pl);
			}
			q = next;
		}
		if (r->state == KVB_PRODUCER_PLACEHOLDER && !r->pending.length)
			prod_req_drop(c, r);
	}
	g_list_free(reqs);
	(void)status;
	peer_maybe_free(p);
}

static void on_incoming(kvb_connector_t *c, uint64_t incoming_id)
{
	char name[KVB_ADDR_MAX];
	textf(name, sizeof(name), "incoming#%" G_GUINT64_FORMAT, ++c->incoming_seq);
	peer_t *p = peer_new(c, name, false);
	int rc = c->be->ops->conn_accept(c->be, p->conn, incoming_id);
	if (rc != KVB_OK) {
		/* never accepted: nothing to close */
		g_queue_remove(&c->peers, p);
		kvb_conn_free(p->conn);
		g_free(p);
		return;
	}
	p->state = PEER_UP;
}

static void on_msg(kvb_connector_t *c, peer_t *p, const void *data, size_t len)
{
	kvb_wire_type_t type;
	if (kvb_wire_peek(data, len, &type, NULL) != KVB_OK) {
		c->counters.malformed_messages++;
		return;
	}
	if (type == KVB_WIRE_PULL) {
		on_pull(c, p, data, len);
		return;
	}
	kvb_wire_notice_t n;
	if (kvb_wire_decode_notice(data, len, &n, NULL) != KVB_OK) {
		c->counters.malformed_messages++;
		return;
	}
	if (type == KVB_WIRE_CANCEL || type == KVB_WIRE_HEARTBEAT) {
		if (!c->producer)
			c->counters.unknown_messages++;
		else if (type == KVB_WIRE_CANCEL)
			on_cancel(c, p, &n);
		else
			on_heartbeat(c, &n);
	} else if (c->consumer) {
		on_notice(c, p, &n);
	} else {
		c->counters.unknown_messages++;
	}
}

static void heartbeat_arm(kvb_connector_t *c)
{
	if (c->n_expected && !c->heartbeat.serial)
		timer_start(c, &c->heartbeat, TIMER_HEARTBEAT, NULL, 0,
			    now_ns(c) + c->cfg.heartbeat_interval_ns);
}

/* Every heartbeat interval: one HEARTBEAT per expected request and
 * connected target. */
static void on_heartbeat_tick(kvb_connector_t *c)
{
	GHashTableIter it;
	gpointer v;
	g_hash_table_iter_init(&it, c->consumers);
	while (g_hash_table_iter_next(&it, NULL, &v)) {
		cons_req_t *r = v;
		if (r->state != KVB_CONSUMER_EXPECTED)
			continue;
		for (uint32_t i = 0; i < r->n_targets; i++) {
			cons_target_t *t = &r->targets[i];
			if (t->peer && t->peer->state == PEER_UP && !target_settled(t) &&
			    notice_send(c, t->peer, KVB_WIRE_HEARTBEAT, r->transfer_id, r->id, KVB_OK, 0,
					NULL) == KVB_OK)
				c->counters.heartbeats_sent++;
		}
	}
	heartbeat_arm(c);
}

static void on_timer(kvb_connector_t *c, uint64_t serial)
{
	timer_ref_t *ref = g_hash_table_lookup(c->timers, serial_key(serial));
	if (!ref)
		return; /* cancelled, or its owner is gone */
	timer_ref_t copy = *ref;
	g_hash_table_remove(c->timers, serial_key(serial));
	switch (copy.kind) {
	case TIMER_LEASE:
		on_lease(c, copy.obj);
		break;
	case TIMER_PULL_WAIT:
		on_pull_wait(c, copy.obj);
		break;
	case TIMER_DEADLINE:
		on_deadline(c, copy.obj);
		break;
	case TIMER_HEARTBEAT:
		c->heartbeat.serial = 0;
		on_heartbeat_tick(c);
		break;
	case TIMER_NIC_COOLDOWN:
		c->nic_cooldown[copy.nic].serial = 0;
		c->nic_down[copy.nic] = false;
		c->nic_errors[copy.nic] = 0;
		break;
	}
}

static void dispatch(kvb_connector_t *c, const kvb_event_t *ev)
{
	peer_t *p = ev->conn ? ev->conn->user : NULL;
	switch (ev->type) {
	case KVB_EV_XFER_DONE:
		on_xfer_done(c, ev);
		break;
	case KVB_EV_MSG:
		if (p)
			on_msg(c, p, ev->data, ev->len);
		break;
	case KVB_EV_TIMER:
		on_timer(c, ev->cookie);
		break;
	case KVB_EV_CONN_UP:
		if (p)
			on_conn_up(c, p);
		break;
	case KVB_EV_CONN_DOWN:
		if (p && p->state != PEER_DOWN)
			on_conn_down(c, p, ev->status);
		break;
	case KVB_EV_CONN_INCOMING:
		on_incoming(c, ev->incoming_id);
		break;
	}
}

/* ------------------------------------------------------------------------ */
/* public API                                                               */

int kvb_connector_progress(kvb_connector_t *c)
{
	kvb_event_t evs[EVENT_BATCH];
	int handled = 0;
	for (;;) {
		int n = c->be->ops->event_poll(c->be, evs, EVENT_BATCH);
		if (n < 0) {
			textf(c->last_error, sizeof(c->last_error), "event_poll failed: %s (%s)",
				 kvb_strerror(n), c->be->ops->last_error(c->be));
			return n;
		}
		for (int i = 0; i < n; i++)
			dispatch(c, &evs[i]);
		handled += n;
		peers_reap(c);
		if (n < EVENT_BATCH)
			break;
	}
	handled += post_work(c);
	peers_reap(c);
	return handled;
}

static void nic_table_load(kvb_connector_t *c)
{
	c->n_nics = c->be->ops->nic_count(c->be);
	if (c->n_nics > KVB_MAX_NICS)
		c->n_nics = KVB_MAX_NICS;
	for (uint32_t i = 0; i < c->n_nics; i++) {
		if (c->be->ops->nic_query(c->be, i, &c->nics[i]) != KVB_OK)
			textf(c->nics[i].name, sizeof(c->nics[i].name), "nic%u", i);
	}
}

/* Resolve the configured priority matrix (NIC names) to indices. */
static int topology_resolve(kvb_connector_t *c, kvb_topology_entry_t **out, kvb_err_t *err)
{
	*out = NULL;
	if (!c->cfg.n_topology)
		return KVB_OK;
	kvb_topology_entry_t *t = g_new0(kvb_topology_entry_t, c->cfg.n_topology);
	for (uint32_t e = 0; e < c->cfg.n_topology; e++) {
		const kvb_topology_names_t *src = &c->cfg.topology[e];
		g_strlcpy(t[e].location, src->location, sizeof(t[e].location));
		for (int pass = 0; pass < 2; pass++) {
			char **names = pass == 0 ? src->preferred : src->secondary;
			uint32_t *dst = pass == 0 ? t[e].preferred : t[e].secondary;
			uint32_t *n = pass == 0 ? &t[e].n_preferred : &t[e].n_secondary;
			for (char **name = names; name && *name; name++) {
				uint32_t idx = KVB_NIC_NONE;
				for (uint32_t i = 0; i < c->n_nics; i++)
					if (strcmp(c->nics[i].name, *name) == 0)
						idx = i;
				if (idx == KVB_NIC_NONE) {
					g_free(t);
					return kvb_err_set(err, KVB_ERR_CONFIG,
							   "topology entry %s names NIC '%s', which the %s backend does not have",
							   src->location, *name, c->be->ops->name);
				}
				if (*n < KVB_MAX_NICS)
					dst[(*n)++] = idx;
			}
		}
	}
	*out = t;
	return KVB_OK;
}

int kvb_connector_new(const kvb_config_t *cfg, kvb_backend_t *be, kvb_connector_t **out,
		      kvb_err_t *err)
{
	if (!out)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_connector_new: out is NULL");
	*out = NULL;
	if (!cfg || !be)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_connector_new: config and backend are required");
	int rc = kvb_config_validate(cfg, err);
	if (rc != KVB_OK)
		return rc;
	if (be->user)
		return kvb_err_set(err, KVB_ERR_STATE, "backend instance already has an owner");
	kvb_connector_t *c = g_new0(kvb_connector_t, 1);
	kvb_config_copy(&c->cfg, cfg);
	c->be = be;
	c->producer = cfg->role == KVB_ROLE_PRODUCER || cfg->role == KVB_ROLE_BOTH;
	c->consumer = cfg->role == KVB_ROLE_CONSUMER || cfg->role == KVB_ROLE_BOTH;
	nic_table_load(c);
	if (c->n_nics == 0) {
		kvb_config_clear(&c->cfg);
		g_free(c);
		return kvb_err_set(err, KVB_ERR_CONFIG, "backend '%s' reports no NICs", be->ops->name);
	}
	kvb_topology_entry_t *topo = NULL;
	rc = topology_resolve(c, &topo, err);
	if (rc == KVB_OK) {
		kvb_policy_params_t pp = {c->n_nics, cfg->seed, topo, topo ? cfg->n_topology : 0};
		rc = kvb_nic_policy_new(cfg->nic_policy, &pp, &c->policy, err);
		g_free(topo);
	}
	if (rc != KVB_OK) {
		kvb_config_clear(&c->cfg);
		g_free(c);
		return rc;
	}
	c->producers = g_hash_table_new(g_str_hash, g_str_equal);
	c->consumers = g_hash_table_new(g_str_hash, g_str_equal);
	c->tombstones = g_hash_table_new(g_str_hash, g_str_equal);
	c->timers = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
	c->peers_by_addr = g_hash_table_new(g_str_hash, g_str_equal);
	c->scratch = g_byte_array_new();
	be->user = c;
	*out = c;
	return KVB_OK;
}

void kvb_connector_free(kvb_connector_t *c)
{
	if (!c)
		return;
	/* posted slices: the backend discards them when it is closed */
	while (c->inflight) {
		slice_t *sl = c->inflight;
		inflight_unlink(c, sl);
		g_free(sl);
	}
	GHashTableIter it;
	gpointer v;
	g_hash_table_iter_init(&it, c->producers);
	while (g_hash_table_iter_next(&it, NULL, &v)) {
		prod_req_t *r = v;
		send_t *s;
		while ((s = g_queue_pop_head(&r->sends))) {
			slice_t *sl;
			while ((sl = g_queue_pop_head(&s->retry)))
				g_free(sl);
			pull_free(s->pull);
			g_free(s->copies);
			g_free(s);
		}
		prod_req_free(r);
	}
	g_hash_table_destroy(c->producers);
	g_hash_table_iter_init(&it, c->consumers);
	while (g_hash_table_iter_next(&it, NULL, &v))
		cons_req_free(v);
	g_hash_table_destroy(c->consumers);
	g_hash_table_destroy(c->tombstones);
	g_queue_clear_full(&c->tomb_order, g_free);
	g_hash_table_iter_init(&it, c->timers);
	while (g_hash_table_iter_next(&it, NULL, &v))
		c->be->ops->timer_cancel(c->be, ((timer_ref_t *)v)->backend_id);
	g_hash_table_destroy(c->timers);
	peer_t *p;
	while ((p = g_queue_pop_head(&c->peers))) {
		c->be->ops->conn_close(c->be, p->conn);
		kvb_conn_free(p->conn);
		g_queue_clear(&p->targets);
		g_queue_clear(&p->sends);
		g_free(p);
	}
	g_queue_clear(&c->dead_peers);
	g_hash_table_destroy(c->peers_by_addr);
	g_queue_clear(&c->active);
	for (uint32_t i = 0; i < c->n_regions; i++)
		if (c->mrs[i])
			c->be->ops->mr_dereg(c->be, c->mrs[i]);
	g_free(c->mrs);
	g_free(c->rkeys);
	g_free(c->regions);
	g_free(c->locations);
	g_free(c->group_blocks);
	kvb_finished_t *f;
	while ((f = g_queue_pop_head(&c->finished)))
		g_free(f);
	kvb_nic_policy_free(c->policy);
	g_byte_array_unref(c->scratch);
	c->be->user = NULL;
	kvb_config_clear(&c->cfg);
	g_free(c);
}

int kvb_connector_register_layout(kvb_connector_t *c, const kvb_region_t *regions,
				  uint32_t n_regions, kvb_err_t *err)
{
	if (c->regions)
		return api_fail(c, err, KVB_ERR_STATE, "a KV layout is already registered");
	if (!regions || n_regions == 0)
		return api_fail(c, err, KVB_ERR_INVALID, "empty KV layout (0 regions)");
	if (n_regions > KVB_MAX_REGIONS)
		return api_fail(c, err, KVB_ERR_INVALID, "%u regions exceed the limit of %u", n_regions,
				KVB_MAX_REGIONS);
	kvb_err_t e;
	kvb_err_clear(&e);
	uint32_t n_groups = 0;
	int rc = kvb_layout_check(regions, n_regions, &n_groups, &e);
	if (rc != KVB_OK)
		return api_fail_err(c, err, &e);
	void **mrs = g_new0(void *, n_regions);
	kvb_rkey_t *rkeys = g_new0(kvb_rkey_t, n_regions);
	for (uint32_t i = 0; i < n_regions; i++) {
		kvb_mem_attr_t attr = {regions[i].mem_kind, regions[i].device};
		rc = c->be->ops->mr_reg(c->be, (void *)(uintptr_t)regions[i].base,
					(size_t)kvb_region_span(&regions[i]), &attr, &mrs[i], &rkeys[i]);
		if (rc != KVB_OK) {
			api_fail(c, err, rc, "registering region %u (%" G_GUINT64_FORMAT " bytes at 0x%" G_GINT64_MODIFIER
				 "x) failed: %s (%s)", i, kvb_region_span(&regions[i]), regions[i].base,
				 kvb_strerror(rc), c->be->ops->last_error(c->be));
			for (uint32_t k = 0; k < i; k++)
				c->be->ops->mr_dereg(c->be, mrs[k]);
			g_free(mrs);
			g_free(rkeys);
			return rc;
		}
	}
	c->regions = g_memdup2(regions, sizeof(kvb_region_t) * n_regions);
	c->n_regions = n_regions;
	c->n_groups = n_groups;
	c->mrs = mrs;
	c->rkeys = rkeys;
	c->locations = g_malloc0_n(n_regions, KVB_LOCATION_MAX);
	for (uint32_t i = 0; i < n_regions; i++)
		kvb_region_location(&regions[i], c->locations[i], KVB_LOCATION_MAX);
	c->group_blocks = g_new(uint32_t, n_groups);
	for (uint32_t g = 0; g < n_groups; g++)
		c->group_blocks[g] = UINT32_MAX;
	for (uint32_t i = 0; i < n_regions; i++) {
		uint32_t g = (uint32_t)regions[i].group;
		if (regions[i].num_blocks < c->group_blocks[g])
			c->group_blocks[g] = regions[i].num_blocks;
	}
	return KVB_OK;
}

int kvb_producer_begin(kvb_connector_t *c, const char *transfer_id, kvb_err_t *err)
{
	if (!c->producer)
		return api_fail(c, err, KVB_ERR_STATE, "role %s cannot produce", kvb_role_name(c->cfg.role));
	if (!id_valid(transfer_id))
		return api_fail(c, err, KVB_ERR_INVALID, "transfer id is empty or longer than %u bytes",
				KVB_ID_MAX - 1);
	prod_req_t *r = g_hash_table_lookup(c->producers, transfer_id);
	if (r && r->engine_known)
		return api_fail(c, err, KVB_ERR_EXISTS, "transfer %s is already live (%s)", transfer_id,
				kvb_producer_state_name(r->state));
	if (!r && g_hash_table_contains(c->tombstones, transfer_id))
		return api_fail(c, err, KVB_ERR_STATE, "transfer %s already ended; ids must not be reused",
				transfer_id);
	if (!r)
		r = prod_req_new(c, transfer_id, KVB_PRODUCER_PREFILL);
	bool was_placeholder = r->state == KVB_PRODUCER_PLACEHOLDER;
	r->engine_known = true;
	r->state = KVB_PRODUCER_PREFILL;
	if (was_placeholder && r->pull_wait.serial && c->cfg.unprefilled_wait_ns) {
		/* begun after all: its waiting pulls get the whole lease */
		timer_stop(c, &r->pull_wait);
		if (timer_start(c, &r->pull_wait, TIMER_PULL_WAIT, r, 0,
				now_ns(c) + c->cfg.abort_timeout_ns) != KVB_OK)
			return api_fail(c, err, KVB_ERR_NO_RESOURCE, "cannot arm the pull-wait timer");
	}
	c->counters.producer_requests++;
	return KVB_OK;
}

int kvb_producer_ready(kvb_connector_t *c, const char *transfer_id, const kvb_block_list_t *groups,
		       uint32_t n_groups, kvb_err_t *err)
{
	if (!c->producer)
		return api_fail(c, err, KVB_ERR_STATE, "role %s cannot produce", kvb_role_name(c->cfg.role));
	prod_req_t *r = id_valid(transfer_id) ? g_hash_table_lookup(c->producers, transfer_id) : NULL;
	if (!r || !r->engine_known)
		return api_fail(c, err, KVB_ERR_NOT_FOUND, "unknown transfer %s (call kvb_producer_begin first)",
				transfer_id ? transfer_id : "(null)");
	if (r->state != KVB_PRODUCER_PREFILL)
		return api_fail(c, err, KVB_ERR_STATE, "transfer %s is %s, not prefill", transfer_id,
				kvb_producer_state_name(r->state));
	int rc = groups_check(c, groups, n_groups, err);
	if (rc != KVB_OK)
		return rc;
	uint64_t now = now_ns(c);
	uint64_t lease = lease_duration(c);
	rc = timer_start(c, &r->lease, TIMER_LEASE, r, 0, now + lease);
	if (rc != KVB_OK)
		return api_fail(c, err, rc, "cannot arm the lease timer: %s (%s)", kvb_strerror(rc),
				c->be->ops->last_error(c->be));
	groups_copy(groups, n_groups, &r->groups, &r->ids, &r->n_blocks);
	r->n_groups = n_groups;
	r->ready_ns = now;
	r->lease_deadline = now + lease;
	c->counters.last_lease_ns = lease;
	r->state = KVB_PRODUCER_READY;
	if (r->pending.length) {
		r->first_pull_ns = now;
		delay_record(c, 0);
	}
	c->counters.blocks_held += r->n_blocks;
	timer_stop(c, &r->pull_wait);
	prod_start_pending(c, r);
	post_work(c);
	return KVB_OK;
}

int kvb_producer_abort(kvb_connector_t *c, const char *transfer_id, kvb_err_t *err)
{
	prod_req_t *r = id_valid(transfer_id) ? g_hash_table_lookup(c->producers, transfer_id) : NULL;
	if (!r || !r->engine_known)
		return api_fail(c, err, KVB_ERR_NOT_FOUND, "unknown transfer %s",
				transfer_id ? transfer_id : "(null)");
	const char *reason = "aborted by the engine";
	switch (r->state) {
	case KVB_PRODUCER_PREFILL:
	case KVB_PRODUCER_READY:
		prod_finish(c, r, KVB_PRODUCER_ABORTED, KVB_ERR_ABORTED, reason);
		return KVB_OK;
	case KVB_PRODUCER_SENDING:
		if (r->fence != KVB_OK)
			return api_fail(c, err, KVB_ERR_STATE, "transfer %s is already being %s", transfer_id,
					r->fence == KVB_ERR_EXPIRED ? "expired" : "aborted");
		r->fence = KVB_ERR_ABORTED;
		g_strlcpy(r->fence_reason, reason, sizeof(r->fence_reason));
		timer_stop(c, &r->lease);
		GList *sends = g_list_copy(r->sends.head);
		for (GList *l = sends; l; l = l->next)
			if (send_has_work(l->data))
				send_stop(l->data, KVB_ERR_ABORTED, "producer aborted mid-transfer");
		for (GList *l = sends; l; l = l->next) {
			if (g_hash_table_lookup(c->producers, transfer_id) != r || !g_queue_find(&r->sends, l->data))
				continue;
			send_check(c, l->data);
		}
		g_list_free(sends);
		return KVB_OK;
	default:
		return api_fail(c, err, KVB_ERR_STATE, "transfer %s is %s", transfer_id,
				kvb_producer_state_name(r->state));
	}
}

static peer_t *peer_get(kvb_connector_t *c, const char *addr, kvb_err_t *err)
{
	peer_t *p = g_hash_table_lookup(c->peers_by_addr, addr);
	if (p)
		return p;
	p = peer_new(c, addr, true);
	p->state = PEER_CONNECTING;
	int rc = c->be->ops->conn_connect(c->be, p->conn, addr);
	if (rc != KVB_OK && rc != KVB_INPROGRESS) {
		kvb_err_set(err, rc, "connect to %s failed: %s (%s)", addr, kvb_strerror(rc),
			    c->be->ops->last_error(c->be));
		g_queue_remove(&c->peers, p);
		kvb_conn_free(p->conn);
		g_free(p);
		return NULL;
	}
	if (rc == KVB_OK)
		p->state = PEER_UP;
	g_hash_table_insert(c->peers_by_addr, p->addr, p);
	return p;
}

/* Checks shared by expect and pull: role, ids and producer addresses. */
static int pull_params_check(kvb_connector_t *c, const kvb_pull_params_t *pp, kvb_err_t *err)
{
	if (!c->consumer)
		return api_fail(c, err, KVB_ERR_STATE, "role %s cannot consume", kvb_role_name(c->cfg.role));
	if (!pp)
		return api_fail(c, err, KVB_ERR_INVALID, "pull parameters are NULL");
	if (!id_valid(pp->request_id) || !id_valid(pp->transfer_id))
		return api_fail(c, err, KVB_ERR_INVALID, "request and transfer ids must be 1..%u bytes",
				KVB_ID_MAX - 1);
	if (pp->n_producers == 0 || pp->n_producers > 64 || !pp->producers)
		return api_fail(c, err, KVB_ERR_INVALID, "%u producer addresses given (1..64)", pp->n_producers);
	for (uint32_t i = 0; i < pp->n_producers; i++) {
		const char *a = pp->producers[i];
		if (!a || !a[0] || strlen(a) >= KVB_ADDR_MAX)
			return api_fail(c, err, KVB_ERR_INVALID, "producer address %u is empty or too long", i);
		for (uint32_t k = 0; k < i; k++)
			if (strcmp(pp->producers[k], a) == 0)
				return api_fail(c, err, KVB_ERR_INVALID, "producer address %s is listed twice", a);
	}
	return KVB_OK;
}

/* Encode the PULL frame a request sends to every target. */
static int pull_frame_build(kvb_connector_t *c, cons_req_t *r, const kvb_pull_params_t *pp, kvb_err_t *e)
{
	kvb_wire_pull_t m;
	memset(&m, 0, sizeof(m));
	g_strlcpy(m.transfer_id, pp->transfer_id, sizeof(m.transfer_id));
	g_strlcpy(m.request_id, pp->request_id, sizeof(m.request_id));
	m.tp_size = c->cfg.tp_size;
	m.tp_rank = c->cfg.tp_rank;
	m.n_nics = c->n_nics;
	m.n_regions = c->n_regions;
	m.regions = c->regions;
	m.rkeys = c->rkeys;
	m.n_groups = pp->n_groups;
	m.groups = (kvb_block_list_t *)pp->groups;
	r->pull_frame = g_byte_array_new();
	return kvb_wire_encode_pull(r->pull_frame, &m, e);
}

/* Create a consumer request (EXPECTED or WAITING) and start connecting to
 * its producers. */
static int cons_req_start(kvb_connector_t *c, const kvb_pull_params_t *pp, bool expected,
			  kvb_err_t *err)
{
	cons_req_t *r = g_new0(cons_req_t, 1);
	r->c = c;
	g_strlcpy(r->id, pp->request_id, sizeof(r->id));
	g_strlcpy(r->transfer_id, pp->transfer_id, sizeof(r->transfer_id));
	r->state = expected ? KVB_CONSUMER_EXPECTED : KVB_CONSUMER_WAITING;
	r->start_ns = now_ns(c);
	kvb_err_t e;
	kvb_err_clear(&e);
	int rc = expected ? KVB_OK : pull_frame_build(c, r, pp, &e);
	if (rc == KVB_OK)
		rc = timer_start(c, &r->deadline, TIMER_DEADLINE, r, 0,
				 r->start_ns + kvb_config_consumer_timeout(&c->cfg));
	if (rc != KVB_OK) {
		cons_req_free(r);
		return e.code ? api_fail_err(c, err, &e)
			      : api_fail(c, err, rc, "cannot arm the deadline timer: %s", kvb_strerror(rc));
	}
	for (uint32_t g = 0; !expected && g < pp->n_groups; g++)
		r->n_blocks += pp->groups[g].count;
	r->n_targets = pp->n_producers;
	r->targets = g_new0(cons_target_t, r->n_targets);
	g_hash_table_insert(c->consumers, r->id, r);
	c->counters.consumer_requests++;
	c->counters.live_requests++;
	c->counters.blocks_held += r->n_blocks;
	if (expected) {
		c->n_expected++;
		heartbeat_arm(c);
	}

	for (uint32_t i = 0; i < r->n_targets; i++) {
		cons_target_t *t = &r->targets[i];
		t->req = r;
		t->state = TARGET_CONNECTING;
		kvb_err_clear(&e);
		peer_t *p = peer_get(c, pp->producers[i], &e);
		if (!p) {
			target_end(t, KVB_ERR_PEER, 0, e.msg);
			continue;
		}
		t->peer = p;
		g_queue_push_tail(&p->targets, t);
		if (p->state == PEER_UP && !expected)
			target_send_pull(c, t);
	}
	cons_settle(c, r);
	return KVB_OK;
}

int kvb_consumer_expect(kvb_connector_t *c, const kvb_pull_params_t *pp, kvb_err_t *err)
{
	int rc = pull_params_check(c, pp, err);
	if (rc != KVB_OK)
		return rc;
	if (g_hash_table_contains(c->consumers, pp->request_id))
		return api_fail(c, err, KVB_ERR_EXISTS, "request %s is already known", pp->request_id);
	return cons_req_start(c, pp, true, err);
}

/* An EXPECTED request gets its blocks: hold them, send the pull to every
 * target already connected (the others send it when they come up). */
static int cons_req_upgrade(kvb_connector_t *c, cons_req_t *r, const kvb_pull_params_t *pp,
			    kvb_err_t *err)
{
	if (strcmp(r->transfer_id, pp->transfer_id) != 0)
		return api_fail(c, err, KVB_ERR_INVALID, "request %s expected transfer %s, pull names %s",
				r->id, r->transfer_id, pp->transfer_id);
	kvb_err_t e;
	kvb_err_clear(&e);
	if (pull_frame_build(c, r, pp, &e) != KVB_OK) {
		g_byte_array_unref(r->pull_frame);
		r->pull_frame = NULL;
		return api_fail_err(c, err, &e);
	}
	for (uint32_t g = 0; g < pp->n_groups; g++)
		r->n_blocks += pp->groups[g].count;
	c->counters.blocks_held += r->n_blocks;
	c->n_expected--;
	r->state = KVB_CONSUMER_WAITING;
	r->start_ns = now_ns(c);
	timer_start(c, &r->deadline, TIMER_DEADLINE, r, 0,
		    r->start_ns + kvb_config_consumer_timeout(&c->cfg));
	for (uint32_t i = 0; i < r->n_targets; i++) {
		cons_target_t *t = &r->targets[i];
		if (t->state == TARGET_CONNECTING && t->peer && t->peer->state == PEER_UP)
			target_send_pull(c, t);
	}
	cons_settle(c, r);
	return KVB_OK;
}

int kvb_consumer_pull(kvb_connector_t *c, const kvb_pull_params_t *pp, kvb_err_t *err)
{
	int rc = pull_params_check(c, pp, err);
	if (rc != KVB_OK)
		return rc;
	rc = groups_check(c, pp->groups, pp->n_groups, err);
	if (rc != KVB_OK)
		return rc;
	cons_req_t *r = g_hash_table_lookup(c->consumers, pp->request_id);
	if (r && r->state == KVB_CONSUMER_EXPECTED && !r->aborting)
		return cons_req_upgrade(c, r, pp, err);
	if (r)
		return api_fail(c, err, KVB_ERR_EXISTS, "request %s is already pulling", pp->request_id);
	return cons_req_start(c, pp, false, err);
}

int kvb_consumer_abort(kvb_connector_t *c, const char *request_id, kvb_err_t *err)
{
	cons_req_t *r = id_valid(request_id) ? g_hash_table_lookup(c->consumers, request_id) : NULL;
	if (!r)
		return api_fail(c, err, KVB_ERR_NOT_FOUND, "unknown request %s",
				request_id ? request_id : "(null)");
	if (r->aborting)
		return api_fail(c, err, KVB_ERR_STATE, "request %s is already being aborted", request_id);
	r->aborting = true;
	if (r->status == KVB_OK) {
		r->status = KVB_ERR_ABORTED;
		g_strlcpy(r->reason, "aborted by the engine", sizeof(r->reason));
	}
	cons_settle(c, r);
	return KVB_OK;
}

int kvb_connector_poll_finished(kvb_connector_t *c, kvb_finished_t *out, int max)
{
	int n = 0;
	while (n < max && c->finished.length) {
		kvb_finished_t *f = g_queue_pop_head(&c->finished);
		out[n++] = *f;
		g_free(f);
	}
	return n;
}

int kvb_producer_state(const kvb_connector_t *c, const char *transfer_id)
{
	prod_req_t *r = transfer_id ? g_hash_table_lookup(c->producers, transfer_id) : NULL;
	return r ? (int)r->state : KVB_ERR_NOT_FOUND;
}

int kvb_consumer_state(const kvb_connector_t *c, const char *request_id)
{
	cons_req_t *r = request_id ? g_hash_table_lookup(c->consumers, request_id) : NULL;
	return r ? (int)r->state : KVB_ERR_NOT_FOUND;
}

void kvb_connector_counters(const kvb_connector_t *c, kvb_counters_t *out)
{
	*out = c->counters;
}

void kvb_connector_set_record_fn(kvb_connector_t *c, kvb_record_fn fn, void *user)
{
	c->record_fn = fn;
	c->record_user = user;
}

const char *kvb_connector_last_error(const kvb_connector_t *c)
{
	return c->last_error;
}

const kvb_config_t *kvb_connector_config(const kvb_connector_t *c)
{
	return &c->cfg;
}

kvb_backend_t *kvb_connector_backend(const kvb_connector_t *c)
{
	return c->be;
}

const char *kvb_producer_state_name(kvb_producer_state_t state)
{
	switch (state) {
	case KVB_PRODUCER_PLACEHOLDER: return "placeholder";
	case KVB_PRODUCER_PREFILL: return "prefill";
	case KVB_PRODUCER_READY: return "ready";
	case KVB_PRODUCER_SENDING: return "sending";
	case KVB_PRODUCER_SENT: return "sent";
	case KVB_PRODUCER_EXPIRED: return "expired";
	case KVB_PRODUCER_ABORTED: return "aborted";
	}
	return "unknown";
}

const char *kvb_consumer_state_name(kvb_consumer_state_t state)
{
	switch (state) {
	case KVB_CONSUMER_EXPECTED: return "expected";
	case KVB_CONSUMER_WAITING: return "waiting";
	case KVB_CONSUMER_REQUESTED: return "requested";
	case KVB_CONSUMER_RECEIVING: return "receiving";
	case KVB_CONSUMER_DONE: return "done";
	case KVB_CONSUMER_FAILED: return "failed";
	}
	return "unknown";
}
