/*
 * The study driver (see kvb_study.h): builds the SimGrid platform, one
 * connector per node on the sim backend, and the actors that play router,
 * engines, fault injector and sampler; then collects the measurements.
 *
 * Actors (all sequential inside SimGrid, sharing plain C state):
 *  - router: sleeps until each arrival and hands the request to a prefill
 *    and a decode node;
 *  - one worker per node: its engine (prefill queue or decode admission),
 *    its connector's progress, and kvb_sim_wait until the next event;
 *  - faults: applies crashes and NIC faults at their times;
 *  - sampler (daemon): NIC utilisation and progress lines.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>
#include <simgrid/actor.h>
#include <simgrid/engine.h>
#include <simgrid/host.h>
#include <simgrid/link.h>
#include <simgrid/plugins/load.h>
#include <xbt/dynar.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/sim.h>

#include "kvb_heap.h"
#include "kvb_study.h"

#define ADDR_BASE UINT64_C(0x100000000000)
#define NODE_SPAN (UINT64_C(1) << 40)

typedef struct study study_t;
typedef struct node node_t;

/* One request's life, filled in as it goes; -1 = did not happen. */
typedef struct req {
	uint64_t idx;
	const kvb_wl_request_t *w;
	char tid[32], rid[32];
	node_t *p, *d;
	uint32_t *p_blocks, n_p;
	uint32_t *d_blocks, n_d;
	uint32_t p_cached_tokens;
	uint32_t d_hit_blocks;      /* 16-token blocks the decode node already holds */
	double arrival, prefill_start, prefill_end, pull_at, xfer_start, xfer_end, done_at, decode_end;
	double released_at;         /* producer blocks freed */
	uint64_t bytes;
	uint32_t nics;
	int p_state, p_status;
	int d_state, d_status;
	char reason[KVB_REASON_MAX];
	bool aborted, crashed, late, d_known, pulled, p_final, d_final;
} req_t;

/* An engine event of a node. */
typedef enum ev_kind {
	EV_PREFILL_END = 1,
	EV_TRY_PULL = 2,
	EV_DECODE_END = 3,
	EV_ABORT = 4,
} ev_kind_t;

typedef struct eng_ev {
	double t;
	uint64_t seq;
	ev_kind_t kind;
	req_t *r;
} eng_ev_t;

/* A prefix cache of hash ids with LRU eviction. */
typedef struct prefix_cache {
	GHashTable *map;            /* hash id -> GList* node in lru */
	GQueue lru;                 /* head = most recent; data = id */
	uint64_t cap;
} prefix_cache_t;

struct node {
	study_t *S;
	bool prefill;
	uint32_t idx;
	char name[32];
	sg_host_t nics[KVB_MAX_NICS];
	uint32_t n_nics;
	kvb_backend_t *be;
	kvb_connector_t *conn;
	kvb_region_t *regions;
	uint32_t n_regions;
	uint32_t pool_blocks;
	int32_t *owner;             /* per block: request idx, -1 free */
	uint32_t free_blocks;
	uint32_t cursor;
	GQueue waiting;             /* prefill: queued jobs; decode: pulls waiting for blocks */
	GQueue arrivals;            /* decode: requests routed here, not yet seen by the worker */
	bool busy;                  /* prefill engine busy */
	GPtrArray *events;          /* eng_ev_t* min-heap */
	uint64_t ev_seq;
	prefix_cache_t cache;
	uint64_t live;              /* requests here not final */
	bool dead;
};

struct study {
	const kvb_study_params_t *p;
	const kvb_workload_t *wl;
	kvb_platform_map_t *map;
	kvb_sim_world_t *world;
	node_t *pnodes, *dnodes;
	uint32_t n_p, n_d;
	req_t *reqs;
	uint64_t n_reqs;
	uint64_t routed;
	bool router_done;
	uint32_t next_p, next_d;
	uint64_t block_bytes_gpu;   /* per region block */
	uint64_t kv_bytes_token;
	uint64_t gpus;
	FILE *events;
	GString *nic_csv;
	uint64_t done, failed, finished;
	uint64_t stale_reads;
	double block_seconds_held, block_seconds_leaked;
	uint64_t leases_expired;
	GRand *rng;
	double wall0;
	double span_guess;
	uint32_t workers_alive;
	GHashTable *node_of_be;     /* kvb_backend_t* -> node_t* */
	kvb_study_result_t *res;
};

static study_t *S_;

/* ---- parameters ---------------------------------------------------------- */

void kvb_study_params_defaults(kvb_study_params_t *p)
{
	memset(p, 0, sizeof(*p));
	kvb_platform_desc_defaults(&p->platform);
	p->platform.zero_link_latency = true;
	p->model = kvb_model_find("llama-3-70b");
	p->block_tokens = 16;
	p->kv_pool_gbytes = 400;
	kvb_gpu_params_defaults(&p->gpu);
	p->decode_tpot_s = 0.03;
	p->prefill_prefix_cache = true;
	p->decode_prefix_cache = true;
	p->prefix_cache_blocks = 0;
	kvb_config_init(&p->conn);
	p->conn.nic_queue_depth = 1u << 20;
	p->flow_model = KVB_SIM_FLOWS_MERGED;
	p->abort_after_mean_s = 5;
	p->late_delay_mean_s = 10;
	p->seed = 1;
}

void kvb_study_params_clear(kvb_study_params_t *p)
{
	kvb_config_clear(&p->conn);
	g_free(p->faults);
	g_free(p->platform_xml);
	p->faults = NULL;
	p->platform_xml = NULL;
	p->n_faults = 0;
}

gboolean kvb_study_fault_parse(const char *spec, kvb_study_fault_t *f, GError **err)
{
	memset(f, 0, sizeof(*f));
	f->factor = 1;
	const char *at = spec ? strrchr(spec, '@') : NULL;
	char *end = NULL;
	if (!at || !at[1])
		goto bad;
	f->at_s = g_ascii_strtod(at + 1, &end);
	if (*end || !(f->at_s >= 0) || !isfinite(f->at_s))
		goto bad;
	char *head = g_strndup(spec, (gsize)(at - spec));
	char **parts = g_strsplit(head, ":", 0);
	g_free(head);
	guint n = g_strv_length(parts);
	gboolean ok = FALSE;
	const char *kind = n ? parts[0] : "";
	bool role_ok = n >= 2 && (strcmp(parts[1], "prefill") == 0 || strcmp(parts[1], "decode") == 0);
	if (role_ok)
		f->role = strcmp(parts[1], "prefill") == 0 ? KVB_PLATFORM_PREFILL : KVB_PLATFORM_DECODE;
	if (strcmp(kind, "crash") == 0 && n == 3 && role_ok) {
		f->action = KVB_FA_CRASH;
		ok = sscanf(parts[2], "%u", &f->node) == 1;
	} else if ((strcmp(kind, "nic-down") == 0 || strcmp(kind, "nic-up") == 0) && n == 4 && role_ok) {
		f->action = strcmp(kind, "nic-down") == 0 ? KVB_FA_NIC_DOWN : KVB_FA_NIC_UP;
		ok = sscanf(parts[2], "%u", &f->node) == 1 && sscanf(parts[3], "%u", &f->nic) == 1;
	} else if (strcmp(kind, "nic-degrade") == 0 && n == 5 && role_ok) {
		f->action = KVB_FA_NIC_DEGRADE;
		ok = sscanf(parts[2], "%u", &f->node) == 1 && sscanf(parts[3], "%u", &f->nic) == 1 &&
		     sscanf(parts[4], "%lf", &f->factor) == 1 && f->factor > 0 && f->factor <= 1;
	} else if ((strcmp(kind, "rail-down") == 0 || strcmp(kind, "rail-up") == 0) && n == 2) {
		f->action = strcmp(kind, "rail-down") == 0 ? KVB_FA_RAIL_DOWN : KVB_FA_RAIL_UP;
		ok = sscanf(parts[1], "%u", &f->nic) == 1;
	}
	g_strfreev(parts);
	if (ok)
		return TRUE;
bad:
	g_set_error(err, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
		    "fault '%s': expected crash:ROLE:NODE@T, nic-down:ROLE:NODE:NIC@T, nic-up:ROLE:NODE:NIC@T, "
		    "nic-degrade:ROLE:NODE:NIC:FACTOR@T, rail-down:NIC@T or rail-up:NIC@T (ROLE prefill|decode, "
		    "T seconds, FACTOR in (0,1])", spec ? spec : "(null)");
	return FALSE;
}

/* ---- small helpers ------------------------------------------------------- */

static double now_s(void)
{
	return simgrid_get_clock();
}

static double rand_exp(GRand *rng, double mean)
{
	double u = g_rand_double(rng);
	return -mean * log(1.0 - u);
}

static bool ev_before(gconstpointer pa, gconstpointer pb)
{
	const eng_ev_t *a = pa, *b = pb;
	return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

static void ev_push(node_t *n, double t, ev_kind_t kind, req_t *r)
{
	eng_ev_t *e = g_new(eng_ev_t, 1);
	e->t = t;
	e->seq = n->ev_seq++;
	e->kind = kind;
	e->r = r;
	kvb_heap_push(n->events, e, ev_before);
}

static eng_ev_t *ev_pop_due(node_t *n, double now)
{
	eng_ev_t *top = kvb_heap_peek(n->events);
	if (!top || top->t > now)
		return NULL;
	return kvb_heap_pop(n->events, ev_before);
}

static double ev_next(node_t *n)
{
	return n->events->len ? ((eng_ev_t *)n->events->pdata[0])->t : -1;
}

/* ---- prefix cache ------------------------------------------------------- */

static void cache_init(prefix_cache_t *c, uint64_t cap)
{
	c->map = g_hash_table_new(g_direct_hash, g_direct_equal);
	g_queue_init(&c->lru);
	c->cap = cap;
}

static void cache_free(prefix_cache_t *c)
{
	if (c->map)
		g_hash_table_destroy(c->map);
	g_queue_clear(&c->lru);
}

/* Leading hash blocks of the request already cached here. */
static uint32_t cache_prefix_hits(prefix_cache_t *c, const kvb_wl_request_t *w)
{
	uint32_t hits = 0;
	while (hits < w->n_hash && g_hash_table_contains(c->map, GUINT_TO_POINTER(w->hash_ids[hits])))
		hits++;
	return hits;
}

static void cache_insert(prefix_cache_t *c, const kvb_wl_request_t *w)
{
	if (!c->cap)
		return;
	for (uint32_t i = 0; i < w->n_hash; i++) {
		gpointer key = GUINT_TO_POINTER(w->hash_ids[i]); /* 0 is a valid key */
		GList *l = g_hash_table_lookup(c->map, key);
		if (l) {
			g_queue_unlink(&c->lru, l);
			g_queue_push_head_link(&c->lru, l);
			continue;
		}
		g_queue_push_head(&c->lru, key);
		g_hash_table_insert(c->map, key, c->lru.head);
		if (c->lru.length > c->cap)
			g_hash_table_remove(c->map, g_queue_pop_tail(&c->lru));
	}
}

/* ---- block pools --------------------------------------------------------- */

/* Take n free blocks, scanning from the cursor so that FIFO allocation and
 * release keep runs contiguous.  The caller checked free_blocks >= n. */
static uint32_t *pool_alloc(node_t *n, uint32_t count, int32_t owner)
{
	uint32_t *ids = g_new(uint32_t, count ? count : 1);
	uint32_t got = 0;
	while (got < count) {
		if (n->owner[n->cursor] < 0) {
			n->owner[n->cursor] = owner;
			ids[got++] = n->cursor;
		}
		n->cursor = (n->cursor + 1) % n->pool_blocks;
	}
	n->free_blocks -= count;
	return ids;
}

/* Give the blocks back and drop the id array (*ids becomes NULL). */
static void pool_free(node_t *n, uint32_t **ids, uint32_t count)
{
	for (uint32_t i = 0; i < count; i++)
		n->owner[(*ids)[i]] = -1;
	n->free_blocks += count;
	g_free(*ids);
	*ids = NULL;
}

static uint32_t blocks_for(const study_t *S, uint32_t tokens)
{
	return (tokens + S->p->block_tokens - 1) / S->p->block_tokens;
}

/* ---- stale reads --------------------------------------------------------- */

/* Every op a producer posts must read blocks its request still holds. */
static void post_hook(kvb_backend_t *be, const kvb_slice_op_t *op, void *user)
{
	study_t *S = user;
	node_t *n = g_hash_table_lookup(S->node_of_be, be);
	if (!n || !n->prefill || !S->reqs)
		return;
	uint64_t region_span = (uint64_t)n->pool_blocks * S->block_bytes_gpu;
	uint64_t off = op->local_addr - n->regions[0].base;
	uint64_t first = (off % region_span) / S->block_bytes_gpu;
	uint64_t last = ((off + op->len - 1) % region_span) / S->block_bytes_gpu;
	int32_t who = n->owner[first];
	for (uint64_t b = first; b <= last && b < n->pool_blocks; b++)
		if (n->owner[b] < 0 || n->owner[b] != who) {
			S->stale_reads++;
			return;
		}
	if (who < 0 || (S->reqs && (uint64_t)who < S->n_reqs && S->reqs[who].p_final))
		S->stale_reads++;
}

/* ---- engines -------------------------------------------------------------- */

static void req_final(req_t *r, bool producer)
{
	node_t *n = producer ? r->p : r->d;
	if (producer ? r->p_final : r->d_final)
		return;
	if (producer)
		r->p_final = true;
	else
		r->d_final = true;
	n->live--;
	if (r->p_final && r->d_final)
		n->S->finished++;
}

/* Start queued prefills while the engine is idle and the pool has room
 * (FIFO: the head waits for room, nothing overtakes it). */
static void prefill_try_start(node_t *n)
{
	study_t *S = n->S;
	while (!n->busy && !n->dead && n->waiting.length) {
		req_t *r = g_queue_peek_head(&n->waiting);
		uint32_t need = blocks_for(S, r->w->input_tokens);
		if (need > n->pool_blocks) {
			g_queue_pop_head(&n->waiting);
			g_strlcpy(r->reason, "request larger than the prefill KV pool", sizeof(r->reason));
			r->p_status = KVB_ERR_RANGE;
			req_final(r, true);
			continue;
		}
		if (need > n->free_blocks)
			return;
		g_queue_pop_head(&n->waiting);
		r->p_blocks = pool_alloc(n, need, (int32_t)r->idx);
		r->n_p = need;
		uint32_t hits = S->p->prefill_prefix_cache ? cache_prefix_hits(&n->cache, r->w) : 0;
		uint32_t cached = MIN(hits * KVB_WL_BLOCK_TOKENS, r->w->input_tokens > 0 ? r->w->input_tokens - 1 : 0);
		r->p_cached_tokens = cached;
		if (S->p->prefill_prefix_cache)
			cache_insert(&n->cache, r->w);
		kvb_err_t e;
		if (kvb_producer_begin(n->conn, r->tid, &e) != KVB_OK) {
			g_strlcpy(r->reason, e.msg, sizeof(r->reason));
			pool_free(n, &r->p_blocks, r->n_p);
			req_final(r, true);
			continue;
		}
		r->prefill_start = now_s();
		double t = kvb_prefill_seconds(S->p->model, r->w->input_tokens - cached, cached, &S->p->gpu);
		n->busy = true;
		ev_push(n, now_s() + t, EV_PREFILL_END, r);
	}
}

static void prefill_end(node_t *n, req_t *r)
{
	n->busy = false;
	r->prefill_end = now_s();
	kvb_block_list_t l = {r->p_blocks, r->n_p};
	kvb_err_t e;
	if (kvb_producer_ready(n->conn, r->tid, &l, 1, &e) != KVB_OK) {
		g_strlcpy(r->reason, e.msg, sizeof(r->reason));
		kvb_producer_abort(n->conn, r->tid, NULL);
	}
	prefill_try_start(n);
}

static void decode_try_pull(node_t *n, req_t *r, bool from_queue);

/* Pulls waiting for room, in arrival order. */
static void decode_admit(node_t *n)
{
	while (n->waiting.length && !n->dead) {
		req_t *r = g_queue_peek_head(&n->waiting);
		uint32_t need = blocks_for(n->S, r->w->input_tokens) - r->d_hit_blocks;
		if (need > n->free_blocks)
			return;
		g_queue_pop_head(&n->waiting);
		decode_try_pull(n, r, true);
	}
}

static void decode_fail_local(req_t *r, int status, const char *why)
{
	r->d_status = status;
	r->d_state = KVB_CONSUMER_FAILED;
	g_strlcpy(r->reason, why, sizeof(r->reason));
	req_final(r, false);
}

/* Pull when the pool has room, after any pull already waiting (FIFO);
 * from_queue: r is the head just taken off the waiting queue. */
static void decode_try_pull(node_t *n, req_t *r, bool from_queue)
{
	study_t *S = n->S;
	if (r->aborted || r->d_final)
		return;
	uint32_t total = blocks_for(S, r->w->input_tokens);
	if (total - r->d_hit_blocks > n->pool_blocks) {
		if (r->d_known)
			kvb_consumer_abort(n->conn, r->rid, NULL);
		decode_fail_local(r, KVB_ERR_RANGE, "request larger than the decode KV pool");
		return;
	}
	uint32_t need = total - r->d_hit_blocks;
	if (need > n->free_blocks || (!from_queue && n->waiting.length)) {
		if (!g_queue_find(&n->waiting, r))
			g_queue_push_tail(&n->waiting, r);
		return;
	}
	r->d_blocks = pool_alloc(n, need, (int32_t)r->idx);
	r->n_d = need;
	const char *addr = r->p->name;
	kvb_block_list_t l = {r->d_blocks, r->n_d};
	kvb_pull_params_t pp = {r->rid, r->tid, &addr, 1, 0, &l, 1};
	kvb_err_t e;
	r->pull_at = now_s();
	r->pulled = true;
	if (kvb_consumer_pull(n->conn, &pp, &e) != KVB_OK) {
		pool_free(n, &r->d_blocks, r->n_d);
		r->n_d = 0;
		decode_fail_local(r, e.code, e.msg);
		return;
	}
	r->d_known = true;
}

/* A decode node learns about a request at its arrival. */
static void decode_arrive(node_t *n, req_t *r)
{
	study_t *S = n->S;
	if (S->p->decode_prefix_cache) {
		uint32_t hits = cache_prefix_hits(&n->cache, r->w);
		uint32_t per = KVB_WL_BLOCK_TOKENS / S->p->block_tokens;
		uint32_t total = blocks_for(S, r->w->input_tokens);
		/* the last block is always recomputed/pulled, as vLLM does */
		r->d_hit_blocks = MIN(hits * per, total > 0 ? total - 1 : 0);
		cache_insert(&n->cache, r->w);
	}
	if (S->p->conn.lease_policy == KVB_LEASE_HEARTBEAT) {
		const char *addr = r->p->name;
		kvb_pull_params_t pp = {r->rid, r->tid, &addr, 1, 0, NULL, 0};
		if (kvb_consumer_expect(n->conn, &pp, NULL) == KVB_OK)
			r->d_known = true;
	}
	if (S->p->abort_prob > 0 && g_rand_double(S->rng) < S->p->abort_prob)
		ev_push(n, now_s() + rand_exp(S->rng, S->p->abort_after_mean_s), EV_ABORT, r);
	if (S->p->late_prob > 0 && g_rand_double(S->rng) < S->p->late_prob) {
		r->late = true;
		ev_push(n, now_s() + rand_exp(S->rng, S->p->late_delay_mean_s), EV_TRY_PULL, r);
	} else {
		decode_try_pull(n, r, false);
	}
}

static void decode_abort(node_t *n, req_t *r)
{
	if (r->d_final || r->done_at >= 0)
		return;
	r->aborted = true;
	GList *l = g_queue_find(&n->waiting, r);
	if (l)
		g_queue_delete_link(&n->waiting, l);
	if (r->d_known && kvb_consumer_abort(n->conn, r->rid, NULL) == KVB_OK)
		return; /* ends through poll_finished */
	if (!r->d_known || !r->pulled)
		decode_fail_local(r, KVB_ERR_ABORTED, "client aborted before the pull");
}

/* ---- records and finished requests --------------------------------------- */

/* Transfer ids are "x<idx>", request ids "r<idx>". */
static req_t *req_by_tid(study_t *S, const char *id)
{
	uint64_t i = g_ascii_strtoull(id + 1, NULL, 10);
	return i < S->n_reqs ? &S->reqs[i] : NULL;
}

static void on_record(const kvb_xfer_record_t *rec, void *user)
{
	study_t *S = user;
	if (S->events) {
		char line[2048];
		kvb_xfer_record_json(rec, line, sizeof(line));
		fprintf(S->events, "{\"t\":%.9f,%s\n", now_s(), line + 1);
	}
	if (rec->role != KVB_ROLE_PRODUCER || !rec->transfer_id)
		return;
	req_t *r = req_by_tid(S, rec->transfer_id);
	if (!r || rec->status != KVB_OK)
		return;
	r->xfer_start = (double)rec->post_ns / 1e9;
	r->xfer_end = (double)rec->end_ns / 1e9;
	r->bytes = rec->bytes;
	r->nics = rec->nics_used;
}

static void producer_finished(node_t *n, const kvb_finished_t *f)
{
	study_t *S = n->S;
	req_t *r = req_by_tid(S, f->id);
	if (!r)
		return;
	r->p_state = f->state;
	r->p_status = f->status;
	r->released_at = now_s();
	if (r->n_p) {
		double held = r->prefill_end >= 0 ? (r->released_at - r->prefill_end) * r->n_p : 0;
		S->block_seconds_held += held;
		if (f->state == KVB_PRODUCER_EXPIRED) {
			S->block_seconds_leaked += held;
			S->leases_expired++;
		}
		pool_free(n, &r->p_blocks, r->n_p);
	}
	req_final(r, true);
	prefill_try_start(n);
}

static void consumer_finished(node_t *n, const kvb_finished_t *f)
{
	study_t *S = n->S;
	req_t *r = req_by_tid(S, f->id); /* "r<idx>" */
	if (!r)
		return;
	r->d_state = f->state;
	r->d_status = f->status;
	if (f->status == KVB_OK) {
		r->done_at = now_s();
		ev_push(n, now_s() + r->w->output_tokens * S->p->decode_tpot_s, EV_DECODE_END, r);
		return;
	}
	g_strlcpy(r->reason, f->reason, sizeof(r->reason));
	if (r->n_d) {
		pool_free(n, &r->d_blocks, r->n_d);
		r->n_d = 0;
	}
	req_final(r, false);
	decode_admit(n);
}

static void decode_end(node_t *n, req_t *r)
{
	r->decode_end = now_s();
	if (r->n_d) {
		pool_free(n, &r->d_blocks, r->n_d);
		r->n_d = 0;
	}
	req_final(r, false);
	decode_admit(n);
}

/* ---- actors ---------------------------------------------------------------- */

static void node_drain(node_t *n)
{
	kvb_finished_t f[32];
	for (;;) {
		int progressed = kvb_connector_progress(n->conn);
		int got = kvb_connector_poll_finished(n->conn, f, 32);
		for (int i = 0; i < got; i++) {
			if (f[i].role == KVB_ROLE_PRODUCER)
				producer_finished(n, &f[i]);
			else
				consumer_finished(n, &f[i]);
		}
		if (progressed <= 0 && got == 0)
			return;
	}
}

static void node_main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	node_t *n = sg_actor_self_get_data();
	study_t *S = n->S;
	for (;;) {
		eng_ev_t *e;
		while ((e = ev_pop_due(n, now_s()))) {
			switch (e->kind) {
			case EV_PREFILL_END: prefill_end(n, e->r); break;
			case EV_TRY_PULL: decode_try_pull(n, e->r, false); break;
			case EV_DECODE_END: decode_end(n, e->r); break;
			case EV_ABORT: decode_abort(n, e->r); break;
			}
			g_free(e);
		}
		req_t *r;
		while ((r = g_queue_pop_head(&n->arrivals)))
			decode_arrive(n, r);
		if (n->prefill)
			prefill_try_start(n);
		node_drain(n);
		if (S->router_done && n->live == 0 && !n->events->len)
			break;
		if (kvb_sim_wait(n->be, ev_next(n)) < 0)
			break; /* crashed */
	}
	if (--S->workers_alive == 0)
		kvb_sim_world_shutdown(S->world);
}

static node_t *route_decode(study_t *S)
{
	for (uint32_t k = 0; k < S->n_d; k++) {
		node_t *d = &S->dnodes[(S->next_d + k) % S->n_d];
		if (!d->dead) {
			S->next_d = (S->next_d + k + 1) % S->n_d;
			return d;
		}
	}
	return NULL;
}

static node_t *route_prefill(study_t *S)
{
	for (uint32_t k = 0; k < S->n_p; k++) {
		node_t *p = &S->pnodes[(S->next_p + k) % S->n_p];
		if (!p->dead) {
			S->next_p = (S->next_p + k + 1) % S->n_p;
			return p;
		}
	}
	return NULL;
}

static void router_main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	study_t *S = sg_actor_self_get_data();
	for (uint64_t i = 0; i < S->n_reqs; i++) {
		req_t *r = &S->reqs[i];
		if (r->arrival > now_s())
			sg_actor_sleep_until(r->arrival);
		node_t *p = route_prefill(S), *d = route_decode(S);
		S->routed++;
		if (!p || !d) {
			g_strlcpy(r->reason, "no live node to route to", sizeof(r->reason));
			r->p_final = r->d_final = true;
			S->finished++;
			continue;
		}
		r->p = p;
		r->d = d;
		p->live++;
		d->live++;
		/* the nodes' own actors act on it (their messages leave their hosts) */
		g_queue_push_tail(&p->waiting, r);
		kvb_sim_wake(p->be);
		g_queue_push_tail(&d->arrivals, r);
		kvb_sim_wake(d->be);
	}
	S->router_done = true;
	for (uint32_t i = 0; i < S->n_p; i++)
		if (!S->pnodes[i].dead)
			kvb_sim_wake(S->pnodes[i].be);
	for (uint32_t i = 0; i < S->n_d; i++)
		if (!S->dnodes[i].dead)
			kvb_sim_wake(S->dnodes[i].be);
}

static sg_link_t nic_link(sg_host_t nic, sg_host_t other, bool egress)
{
	xbt_dynar_t links = xbt_dynar_new(sizeof(sg_link_t), NULL);
	if (egress)
		sg_host_get_route(nic, other, links);
	else
		sg_host_get_route(other, nic, links);
	sg_link_t l = NULL;
	if (!xbt_dynar_is_empty(links))
		l = egress ? xbt_dynar_get_as(links, 0, sg_link_t)
			   : xbt_dynar_get_as(links, xbt_dynar_length(links) - 1, sg_link_t);
	xbt_dynar_free(&links);
	return l;
}

static node_t *fault_node(study_t *S, const kvb_study_fault_t *f)
{
	if (f->role == KVB_PLATFORM_PREFILL)
		return f->node < S->n_p ? &S->pnodes[f->node] : NULL;
	return f->node < S->n_d ? &S->dnodes[f->node] : NULL;
}

static void node_crash(node_t *n)
{
	study_t *S = n->S;
	if (n->dead)
		return;
	n->dead = true;
	kvb_sim_kill(n->be);
	for (uint64_t i = 0; i < S->n_reqs; i++) {
		req_t *r = &S->reqs[i];
		if (r->d == n && !r->d_final) {
			r->crashed = true;
			decode_fail_local(r, KVB_ERR_PEER, "decode node crashed");
		}
		if (r->p == n && !r->p_final) {
			r->crashed = true;
			g_strlcpy(r->reason, "prefill node crashed", sizeof(r->reason));
			req_final(r, true);
		}
	}
}

static void faults_main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	study_t *S = sg_actor_self_get_data();
	sg_actor_daemonize(sg_actor_self());
	const kvb_study_params_t *p = S->p;
	/* faults sorted by time by the caller */
	for (uint32_t i = 0; i < p->n_faults; i++) {
		const kvb_study_fault_t *f = &p->faults[i];
		if (f->at_s > now_s())
			sg_actor_sleep_until(f->at_s);
		if (S->router_done && S->finished == S->n_reqs)
			return;
		node_t *n = fault_node(S, f);
		switch (f->action) {
		case KVB_FA_CRASH:
			if (n)
				node_crash(n);
			break;
		case KVB_FA_NIC_DOWN:
		case KVB_FA_NIC_UP:
			if (n && f->nic < n->n_nics)
				kvb_sim_nic_set_up(S->world, n->nics[f->nic], f->action == KVB_FA_NIC_UP);
			break;
		case KVB_FA_NIC_DEGRADE:
			if (n && f->nic < n->n_nics) {
				node_t *other = n->prefill ? &S->dnodes[0] : &S->pnodes[0];
				for (int dir = 0; dir < 2; dir++) {
					sg_link_t l = nic_link(n->nics[f->nic], other->nics[0], dir == 0);
					if (l)
						sg_link_set_bandwidth(l, sg_link_get_bandwidth(l) * f->factor);
				}
			}
			break;
		case KVB_FA_RAIL_DOWN:
		case KVB_FA_RAIL_UP:
			for (uint32_t k = 0; k < S->n_p + S->n_d; k++) {
				node_t *m = k < S->n_p ? &S->pnodes[k] : &S->dnodes[k - S->n_p];
				if (f->nic < m->n_nics)
					kvb_sim_nic_set_up(S->world, m->nics[f->nic], f->action == KVB_FA_RAIL_UP);
			}
			break;
		}
	}
}

static double wall_now(void)
{
	return (double)g_get_monotonic_time() / 1e6;
}

/* NIC utilisation samples and progress lines; a daemon, it dies with the
 * simulation. */
static void sampler_main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	study_t *S = sg_actor_self_get_data();
	sg_actor_daemonize(sg_actor_self());
	uint32_t n_nics = 0;
	for (uint32_t i = 0; i < S->n_p; i++)
		n_nics += S->pnodes[i].n_nics;
	for (uint32_t i = 0; i < S->n_d; i++)
		n_nics += S->dnodes[i].n_nics;
	sg_link_t *links = g_new0(sg_link_t, n_nics);
	double *last = g_new0(double, n_nics);
	uint32_t k = 0;
	for (uint32_t side = 0; side < 2; side++) {
		node_t *nodes = side ? S->dnodes : S->pnodes;
		uint32_t count = side ? S->n_d : S->n_p;
		for (uint32_t i = 0; i < count; i++)
			for (uint32_t j = 0; j < nodes[i].n_nics; j++, k++) {
				node_t *other = side ? &S->pnodes[0] : &S->dnodes[0];
				links[k] = S->nic_csv ? nic_link(nodes[i].nics[j], other->nics[0], side == 0) : NULL;
				if (links[k])
					sg_link_load_track(links[k]);
			}
	}
	double period = S->p->sample_s > 0 ? S->p->sample_s : MAX(S->span_guess / 200.0, 1e-3);
	double last_progress = wall_now();
	for (;;) {
		sg_actor_sleep_for(period);
		k = 0;
		for (uint32_t side = 0; side < 2 && S->nic_csv; side++) {
			node_t *nodes = side ? S->dnodes : S->pnodes;
			uint32_t count = side ? S->n_d : S->n_p;
			for (uint32_t i = 0; i < count; i++)
				for (uint32_t j = 0; j < nodes[i].n_nics; j++, k++) {
					if (!links[k])
						continue;
					double cum = sg_link_get_cum_load(links[k]);
					double bw = sg_link_get_bandwidth(links[k]);
					double rate = (cum - last[k]) / period;
					last[k] = cum;
					g_string_append_printf(S->nic_csv, "%.6f,%s,%s,%u,%u,%.6f,%.4f\n", now_s(),
							       sg_host_get_name(nodes[i].nics[j]),
							       side ? "decode" : "prefill", i, j, rate * 8 / 1e9,
							       bw > 0 ? rate / bw : 0);
				}
		}
		if (S->p->progress && wall_now() - last_progress >= 2.0) {
			last_progress = wall_now();
			fprintf(stderr, "  sim %.1f s: %" PRIu64 "/%" PRIu64 " routed, %" PRIu64
				" finished (wall %.1f s)\n", now_s(), S->routed, S->n_reqs, S->finished,
				wall_now() - S->wall0);
		}
	}
}

/* ---- setup ----------------------------------------------------------------- */

static gboolean node_open(study_t *S, node_t *n, bool prefill, uint32_t idx, GError **err)
{
	const kvb_study_params_t *p = S->p;
	n->S = S;
	n->prefill = prefill;
	n->idx = idx;
	snprintf(n->name, sizeof(n->name), "%s%u", prefill ? "prefill-" : "decode-", idx);
	kvb_platform_role_t role = prefill ? KVB_PLATFORM_PREFILL : KVB_PLATFORM_DECODE;
	n->n_nics = MIN(S->map->nics[role], KVB_MAX_NICS);
	for (uint32_t k = 0; k < n->n_nics; k++)
		n->nics[k] = kvb_platform_map_host(S->map, role, idx, k);
	kvb_sim_args_t a = {S->world, n->name, n->nics, n->n_nics, p->seed * 7919 + idx * 2 + prefill};
	kvb_err_t e;
	if (kvb_backend_open(kvb_sim_backend_ops(), &a, &n->be, &e) != KVB_OK) {
		g_set_error(err, G_OPTION_ERROR, G_OPTION_ERROR_FAILED, "%s: %s", n->name, e.msg);
		return FALSE;
	}
	kvb_config_t cfg;
	kvb_config_init(&cfg);
	kvb_config_copy(&cfg, &p->conn);
	cfg.role = prefill ? KVB_ROLE_PRODUCER : KVB_ROLE_CONSUMER;
	cfg.seed = p->conn.seed * 1000003 + idx * 2 + prefill;
	/* GPU -> NIC affinity as the topology policy's priority matrix */
	uint32_t gpus = (uint32_t)S->gpus;
	if (!cfg.n_topology) {
		cfg.topology = g_new0(kvb_topology_names_t, gpus);
		cfg.n_topology = gpus;
		for (uint32_t g = 0; g < gpus; g++) {
			uint32_t first = 0, count = 0;
			kvb_platform_gpu_nics(&p->platform, g, &first, &count);
			snprintf(cfg.topology[g].location, KVB_LOCATION_MAX, "cuda:%u", g);
			cfg.topology[g].preferred = g_new0(char *, count + 1);
			for (uint32_t k = 0; k < count && first + k < n->n_nics; k++)
				cfg.topology[g].preferred[k] = g_strdup(sg_host_get_name(n->nics[first + k]));
			cfg.topology[g].secondary = g_new0(char *, 1);
		}
	}
	int rc = kvb_connector_new(&cfg, n->be, &n->conn, &e);
	kvb_config_clear(&cfg);
	if (rc != KVB_OK) {
		g_set_error(err, G_OPTION_ERROR, G_OPTION_ERROR_FAILED, "%s connector: %s", n->name, e.msg);
		return FALSE;
	}
	kvb_connector_set_record_fn(n->conn, on_record, S);
	g_hash_table_insert(S->node_of_be, n->be, n);
	double pool_bytes = p->kv_pool_gbytes * 1e9;
	n->pool_blocks = (uint32_t)MIN(pool_bytes / (double)(S->block_bytes_gpu * S->gpus), 1e9);
	if (n->pool_blocks == 0) {
		g_set_error(err, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
			    "kv_pool_gbytes %.3f holds no %u-token block of %s", p->kv_pool_gbytes,
			    p->block_tokens, p->model->name);
		return FALSE;
	}
	n->n_regions = gpus;
	n->regions = g_new0(kvb_region_t, gpus);
	uint64_t base = ADDR_BASE + (uint64_t)(prefill ? idx : S->n_p + idx) * NODE_SPAN;
	for (uint32_t g = 0; g < gpus; g++) {
		kvb_region_t *r = &n->regions[g];
		r->base = base + (uint64_t)g * n->pool_blocks * S->block_bytes_gpu;
		r->block_stride = S->block_bytes_gpu;
		r->block_bytes = S->block_bytes_gpu;
		r->num_blocks = n->pool_blocks;
		r->layer = 0;
		r->group = 0;
		r->mem_kind = KVB_MEM_CUDA;
		r->device = (int32_t)g;
	}
	if (kvb_connector_register_layout(n->conn, n->regions, gpus, &e) != KVB_OK) {
		g_set_error(err, G_OPTION_ERROR, G_OPTION_ERROR_FAILED, "%s layout: %s", n->name, e.msg);
		return FALSE;
	}
	n->owner = g_new(int32_t, n->pool_blocks);
	for (uint32_t b = 0; b < n->pool_blocks; b++)
		n->owner[b] = -1;
	n->free_blocks = n->pool_blocks;
	n->events = g_ptr_array_new();
	/* auto: the 512-token blocks the KV pool can hold */
	uint64_t cap = p->prefix_cache_blocks;
	if (!cap)
		cap = (uint64_t)(pool_bytes / ((double)S->kv_bytes_token * KVB_WL_BLOCK_TOKENS));
	cache_init(&n->cache, cap);
	return TRUE;
}

static void node_close(node_t *n)
{
	kvb_connector_free(n->conn);
	kvb_backend_close(n->be);
	g_free(n->regions);
	g_free(n->owner);
	if (n->events) {
		g_ptr_array_set_free_func(n->events, g_free);
		g_ptr_array_free(n->events, TRUE);
	}
	g_queue_clear(&n->waiting);
	g_queue_clear(&n->arrivals);
	cache_free(&n->cache);
}

static int cmp_fault(const void *a, const void *b)
{
	const kvb_study_fault_t *x = a, *y = b;
	return x->at_s < y->at_s ? -1 : x->at_s > y->at_s;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double pct(const double *v, size_t n, double q)
{
	if (!n)
		return 0;
	size_t i = (size_t)ceil(q * (double)n);
	return v[i ? i - 1 : 0];
}

static const char *outcome_name(const req_t *r)
{
	if (r->d_status == KVB_OK && r->done_at >= 0)
		return "done";
	if (r->crashed)
		return "crashed";
	if (r->aborted)
		return "aborted";
	return "failed";
}

static gboolean write_outputs(study_t *S, GError **err)
{
	const char *dir = S->p->out_dir;
	GString *csv = g_string_new("id,arrival_s,prefill_node,decode_node,input_tokens,output_tokens,"
				    "prefill_start_s,prefill_end_s,pull_s,xfer_start_s,xfer_end_s,done_s,"
				    "ttft_s,transfer_s,bytes,nics,outcome,status,reason\n");
	for (uint64_t i = 0; i < S->n_reqs; i++) {
		req_t *r = &S->reqs[i];
		double ttft = r->done_at >= 0 ? r->done_at - r->arrival + S->p->decode_tpot_s : -1;
		double xfer = r->xfer_end >= 0 ? r->xfer_end - r->xfer_start : -1;
		char *reason = g_strdelimit(g_strdup(r->reason), ",\n\"", ';');
		g_string_append_printf(csv,
				       "%" PRIu64 ",%.6f,%d,%d,%u,%u,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%" PRIu64
				       ",%u,%s,%s,%s\n",
				       r->w->id, r->arrival, r->p ? (int)r->p->idx : -1, r->d ? (int)r->d->idx : -1,
				       r->w->input_tokens, r->w->output_tokens, r->prefill_start, r->prefill_end,
				       r->pull_at, r->xfer_start, r->xfer_end, r->done_at, ttft, xfer, r->bytes, r->nics,
				       outcome_name(r), kvb_status_name(r->d_status != KVB_OK ? r->d_status : r->p_status),
				       reason);
		g_free(reason);
	}
	char *path = g_build_filename(dir, "requests.csv", NULL);
	gboolean ok = g_file_set_contents(path, csv->str, (gssize)csv->len, err);
	g_free(path);
	g_string_free(csv, TRUE);
	if (ok && S->nic_csv) {
		path = g_build_filename(dir, "nics.csv", NULL);
		ok = g_file_set_contents(path, S->nic_csv->str, (gssize)S->nic_csv->len, err);
		g_free(path);
	}
	return ok;
}

static void compute_result(study_t *S, kvb_study_result_t *res)
{
	double *xfer = g_new(double, S->n_reqs + 1), *ttft = g_new(double, S->n_reqs + 1);
	size_t nx = 0, nt = 0;
	double share = 0, xsum = 0, bytes = 0;
	for (uint64_t i = 0; i < S->n_reqs; i++) {
		req_t *r = &S->reqs[i];
		if (r->done_at >= 0 && r->d_status == KVB_OK) {
			res->done++;
			double t = r->done_at - r->arrival + S->p->decode_tpot_s;
			ttft[nt++] = t;
			if (r->xfer_end >= 0) {
				double x = r->xfer_end - r->xfer_start;
				xfer[nx++] = x;
				xsum += x;
				bytes += (double)r->bytes;
				share += t > 0 ? x / t : 0;
			}
		} else if (r->crashed) {
			res->crashed++;
		} else if (r->aborted) {
			res->aborted++;
		} else {
			res->failed++;
		}
	}
	qsort(xfer, nx, sizeof(double), cmp_double);
	qsort(ttft, nt, sizeof(double), cmp_double);
	res->requests = S->n_reqs;
	res->xfer_p50_s = pct(xfer, nx, 0.50);
	res->xfer_p90_s = pct(xfer, nx, 0.90);
	res->xfer_p99_s = pct(xfer, nx, 0.99);
	res->xfer_mean_s = nx ? xsum / (double)nx : 0;
	double tsum = 0;
	for (size_t i = 0; i < nt; i++)
		tsum += ttft[i];
	res->ttft_mean_s = nt ? tsum / (double)nt : 0;
	res->ttft_p50_s = pct(ttft, nt, 0.50);
	res->ttft_p99_s = pct(ttft, nt, 0.99);
	res->ttft_share_mean = nx ? share / (double)nx : 0;
	res->block_seconds_held = S->block_seconds_held;
	res->block_seconds_leaked = S->block_seconds_leaked;
	res->leases_expired = S->leases_expired;
	res->stale_reads = S->stale_reads;
	res->bytes_moved = bytes;
	res->avg_rate_GBps = xsum > 0 ? bytes / xsum / 1e9 : 0;
	double max_tx = 0, sum_tx = 0;
	uint32_t cnt = 0;
	for (uint32_t i = 0; i < S->n_p; i++)
		for (uint32_t k = 0; k < S->pnodes[i].n_nics; k++) {
			double tx = kvb_sim_nic_tx_bytes(S->world, S->pnodes[i].nics[k]);
			max_tx = MAX(max_tx, tx);
			sum_tx += tx;
			cnt++;
		}
	res->nic_imbalance = sum_tx > 0 ? max_tx / (sum_tx / cnt) : 0;
	res->sim_end_s = simgrid_get_clock();
	kvb_sim_world_stats(S->world, &res->sim);
	struct rusage ru;
	if (getrusage(RUSAGE_SELF, &ru) == 0)
		res->peak_rss_kb = (uint64_t)ru.ru_maxrss;
	g_free(xfer);
	g_free(ttft);
}

/* SimGrid, the platform, the world and one connector per node. */
static gboolean study_setup(study_t *S, const kvb_study_params_t *p, GError **err)
{
	kvb_err_t e;
	if (!p->model)
		return g_set_error(err, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "no model"), FALSE;
	if (kvb_config_validate(&p->conn, &e) != KVB_OK)
		return g_set_error(err, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "%s", e.msg), FALSE;
	if (p->block_tokens == 0 || !(p->decode_tpot_s >= 0) || !(p->kv_pool_gbytes > 0))
		return g_set_error(err, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
				   "block_tokens, decode_tpot and kv_pool_gbytes must be positive"), FALSE;
	S->p = p;
	S_ = S;
	S->wall0 = wall_now();
	S->rng = g_rand_new_with_seed((guint32)(p->seed * 2654435761u));
	S->gpus = MAX(p->platform.gpus_per_node, 1);
	S->kv_bytes_token = kvb_model_kv_bytes_per_token(p->model);
	S->block_bytes_gpu = (S->kv_bytes_token * p->block_tokens + S->gpus - 1) / S->gpus;

	/* SimGrid: once per process */
	char *argv0[] = {"kvbridge-sim", "--log=root.thres:critical", "--cfg=contexts/stack-size:64",
			 "--cfg=contexts/guard-size:0", NULL};
	int argc0 = 4;
	simgrid_init(&argc0, argv0);
	sg_link_load_plugin_init();
	char *xml_path = NULL;
	if (p->platform_xml) {
		xml_path = g_strdup(p->platform_xml);
	} else {
		xml_path = g_build_filename(g_get_tmp_dir(), "kvbridge-platform-XXXXXX.xml", NULL);
		int fd = g_mkstemp(xml_path);
		if (fd >= 0)
			close(fd);
		if (fd < 0 || !kvb_platform_write(&p->platform, xml_path, err)) {
			if (fd < 0)
				g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errno), "%s: %s", xml_path,
					    g_strerror(errno));
			g_free(xml_path);
			return FALSE;
		}
	}
	simgrid_load_platform(xml_path);
	if (!p->platform_xml)
		g_unlink(xml_path);
	gboolean ok = kvb_platform_map_build(p->platform_xml ? p->platform_xml : "generated platform", &S->map, err);
	g_free(xml_path);
	if (!ok)
		return FALSE;
	kvb_sim_world_params_t wp = {p->flow_model,
				     p->platform_xml ? 0 : kvb_platform_route_latency_s(&p->platform),
				     p->platform.nic_gbps * 1e9};
	S->world = kvb_sim_world_new(&wp);
	kvb_sim_set_post_hook(S->world, post_hook, S);
	S->n_p = S->map->nodes[KVB_PLATFORM_PREFILL];
	S->n_d = S->map->nodes[KVB_PLATFORM_DECODE];
	S->node_of_be = g_hash_table_new(g_direct_hash, g_direct_equal);
	S->pnodes = g_new0(node_t, S->n_p);
	S->dnodes = g_new0(node_t, S->n_d);
	for (uint32_t i = 0; ok && i < S->n_p; i++)
		ok = node_open(S, &S->pnodes[i], true, i, err);
	for (uint32_t i = 0; ok && i < S->n_d; i++)
		ok = node_open(S, &S->dnodes[i], false, i, err);
	return ok;
}

static void study_teardown(study_t *S)
{
	for (uint64_t i = 0; i < S->n_reqs; i++) {
		g_free(S->reqs[i].p_blocks);
		g_free(S->reqs[i].d_blocks);
	}
	for (uint32_t i = 0; S->pnodes && i < S->n_p; i++)
		node_close(&S->pnodes[i]);
	for (uint32_t i = 0; S->dnodes && i < S->n_d; i++)
		node_close(&S->dnodes[i]);
	g_free(S->pnodes);
	g_free(S->dnodes);
	g_free(S->reqs);
	if (S->world)
		kvb_sim_world_free(S->world);
	kvb_platform_map_free(S->map);
	if (S->node_of_be)
		g_hash_table_destroy(S->node_of_be);
	if (S->rng)
		g_rand_free(S->rng);
	S_ = NULL;
}

gboolean kvb_study_run(const kvb_study_params_t *p, const kvb_workload_t *wl, kvb_study_result_t *res,
		       GError **err)
{
	memset(res, 0, sizeof(*res));
	study_t S = {0};
	S.wl = wl;
	S.res = res;
	gboolean ok = study_setup(&S, p, err);

	S.n_reqs = ok ? kvb_workload_count(wl) : 0;
	S.reqs = g_new0(req_t, S.n_reqs + 1);
	for (uint64_t i = 0; i < S.n_reqs; i++) {
		req_t *r = &S.reqs[i];
		r->idx = i;
		r->w = kvb_workload_get(wl, i);
		snprintf(r->tid, sizeof(r->tid), "x%" PRIu64, i);
		snprintf(r->rid, sizeof(r->rid), "r%" PRIu64, i);
		r->arrival = r->w->arrival_s;
		r->prefill_start = r->prefill_end = r->pull_at = r->xfer_start = r->xfer_end = -1;
		r->done_at = r->decode_end = r->released_at = -1;
		r->p_state = r->d_state = -1;
	}
	S.span_guess = S.n_reqs ? S.reqs[S.n_reqs - 1].arrival + 1 : 1;
	kvb_study_fault_t *faults = NULL;
	if (ok && p->n_faults) {
		faults = g_memdup2(p->faults, sizeof(*faults) * p->n_faults);
		qsort(faults, p->n_faults, sizeof(*faults), cmp_fault);
		for (uint32_t i = 0; i < p->n_faults; i++)
			if (!fault_node(&S, &faults[i]) && faults[i].action != KVB_FA_RAIL_DOWN &&
			    faults[i].action != KVB_FA_RAIL_UP) {
				g_set_error(err, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
					    "fault %u names node %u, the platform has %u prefill and %u decode nodes",
					    i, faults[i].node, S.n_p, S.n_d);
				ok = FALSE;
			}
	}
	if (ok && p->out_dir) {
		if (g_mkdir_with_parents(p->out_dir, 0755) != 0) {
			g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errno), "%s: %s", p->out_dir,
				    g_strerror(errno));
			ok = FALSE;
		} else {
			S.nic_csv = g_string_new("time_s,nic,role,node,nic_index,gbps,utilization\n");
			if (p->events) {
				char *path = g_build_filename(p->out_dir, "events.jsonl", NULL);
				S.events = fopen(path, "w");
				g_free(path);
			}
		}
	}
	if (ok) {
		kvb_study_params_t pf = *p;
		pf.faults = faults;
		S.p = &pf;
		for (uint32_t i = 0; i < S.n_p; i++) {
			sg_actor_t a = sg_actor_init(S.pnodes[i].name, S.pnodes[i].nics[0]);
			sg_actor_set_data(a, &S.pnodes[i]);
			sg_actor_start(a, node_main, 0, NULL);
		}
		for (uint32_t i = 0; i < S.n_d; i++) {
			sg_actor_t a = sg_actor_init(S.dnodes[i].name, S.dnodes[i].nics[0]);
			sg_actor_set_data(a, &S.dnodes[i]);
			sg_actor_start(a, node_main, 0, NULL);
		}
		S.workers_alive = S.n_p + S.n_d;
		sg_actor_t a = sg_actor_init("router", S.pnodes[0].nics[0]);
		sg_actor_set_data(a, &S);
		sg_actor_start(a, router_main, 0, NULL);
		if (p->n_faults) {
			a = sg_actor_init("faults", S.pnodes[0].nics[0]);
			sg_actor_set_data(a, &S);
			sg_actor_start(a, faults_main, 0, NULL);
		}
		a = sg_actor_init("sampler", S.pnodes[0].nics[0]);
		sg_actor_set_data(a, &S);
		sg_actor_start(a, sampler_main, 0, NULL);
		simgrid_run();
		S.p = p;
		compute_result(&S, res);
		res->wall_s = wall_now() - S.wall0;
		if (p->out_dir)
			ok = write_outputs(&S, err);
	}
	if (S.events)
		fclose(S.events);
	if (S.nic_csv)
		g_string_free(S.nic_csv, TRUE);
	g_free(faults);
	study_teardown(&S);
	return ok;
}


/* ---- transfer benchmark (Mooncake FAST'25 Fig. 12) ------------------------ */

typedef struct bench {
	study_t *S;
	const double *sizes;
	uint32_t n_sizes, conc;
	double *out;
	int phase;          /* size index both sides work on */
	bool p_done;
	uint64_t next_id;
} bench_t;

static bench_t *B_;

static uint32_t bench_blocks(const study_t *S, double gb, uint32_t conc)
{
	double per = gb * 1e9 / conc / (double)(S->block_bytes_gpu * S->gpus);
	return (uint32_t)MAX(1.0, ceil(per));
}

/* Run the connector until `want` requests of this side finished. */
static void bench_wait_finished(node_t *n, uint32_t want)
{
	uint32_t got = 0;
	kvb_finished_t f[64];
	for (;;) {
		while (kvb_connector_progress(n->conn) > 0)
			;
		int k;
		while ((k = kvb_connector_poll_finished(n->conn, f, 64)) > 0)
			for (int i = 0; i < k; i++) {
				if (f[i].status != KVB_OK)
					fprintf(stderr, "kvbridge-sim: bench %s %s: %s\n", n->name, f[i].id, f[i].reason);
				got++;
			}
		if (got >= want)
			return;
		kvb_sim_wait(n->be, -1);
	}
}

static void bench_p_main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	bench_t *b = B_;
	node_t *n = &b->S->pnodes[0];
	for (uint32_t k = 0; k < b->n_sizes; k++) {
		while (b->phase != (int)k)
			kvb_sim_wait(n->be, -1);
		uint32_t blocks = bench_blocks(b->S, b->sizes[k], b->conc);
		uint32_t **ids = g_new0(uint32_t *, b->conc);
		for (uint32_t c = 0; c < b->conc; c++) {
			char tid[32];
			snprintf(tid, sizeof(tid), "b%u-%u", k, c);
			ids[c] = pool_alloc(n, blocks, 0);
			kvb_block_list_t l = {ids[c], blocks};
			kvb_producer_begin(n->conn, tid, NULL);
			kvb_producer_ready(n->conn, tid, &l, 1, NULL);
		}
		bench_wait_finished(n, b->conc);
		for (uint32_t c = 0; c < b->conc; c++)
			pool_free(n, &ids[c], blocks);
		g_free(ids);
		b->p_done = true;
		kvb_sim_wake(b->S->dnodes[0].be);
	}
}

static void bench_d_main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	bench_t *b = B_;
	node_t *n = &b->S->dnodes[0];
	for (uint32_t k = 0; k < b->n_sizes; k++) {
		double t0 = now_s();
		b->p_done = false;
		b->phase = (int)k;
		kvb_sim_wake(b->S->pnodes[0].be);
		uint32_t blocks = bench_blocks(b->S, b->sizes[k], b->conc);
		uint32_t **ids = g_new0(uint32_t *, b->conc);
		for (uint32_t c = 0; c < b->conc; c++) {
			char tid[32], rid[32];
			snprintf(tid, sizeof(tid), "b%u-%u", k, c);
			snprintf(rid, sizeof(rid), "q%u-%u", k, c);
			ids[c] = pool_alloc(n, blocks, 0);
			kvb_block_list_t l = {ids[c], blocks};
			const char *addr = b->S->pnodes[0].name;
			kvb_pull_params_t pp = {rid, tid, &addr, 1, 0, &l, 1};
			kvb_consumer_pull(n->conn, &pp, NULL);
		}
		bench_wait_finished(n, b->conc);
		b->out[k] = now_s() - t0;
		while (!b->p_done)
			kvb_sim_wait(n->be, -1);
		for (uint32_t c = 0; c < b->conc; c++)
			pool_free(n, &ids[c], blocks);
		g_free(ids);
	}
	b->phase = -1;
	kvb_sim_world_shutdown(b->S->world);
}

gboolean kvb_study_transfer_bench(const kvb_study_params_t *p, const double *sizes_gb, uint32_t n_sizes,
				  uint32_t concurrency, double *seconds, kvb_sim_stats_t *stats, GError **err)
{
	if (!n_sizes || !concurrency)
		return g_set_error(err, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
				   "transfer bench: no sizes or zero concurrency"), FALSE;
	kvb_study_params_t q = *p;
	q.platform.prefill_nodes = q.platform.decode_nodes = 1;
	double max_gb = 0;
	for (uint32_t k = 0; k < n_sizes; k++) {
		if (!(sizes_gb[k] > 0))
			return g_set_error(err, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
					   "transfer bench: size %g GB is not positive", sizes_gb[k]), FALSE;
		max_gb = MAX(max_gb, sizes_gb[k]);
	}
	q.kv_pool_gbytes = MAX(q.kv_pool_gbytes, max_gb * 1.05 + 1);
	study_t S = {0};
	bench_t b = {&S, sizes_gb, n_sizes, concurrency, seconds, -1, false, 0};
	B_ = &b;
	gboolean ok = study_setup(&S, &q, err);
	if (ok) {
		sg_actor_t a = sg_actor_init("bench-p", S.pnodes[0].nics[0]);
		sg_actor_start(a, bench_p_main, 0, NULL);
		a = sg_actor_init("bench-d", S.dnodes[0].nics[0]);
		sg_actor_start(a, bench_d_main, 0, NULL);
		simgrid_run();
		if (stats)
			kvb_sim_world_stats(S.world, stats);
	}
	study_teardown(&S);
	B_ = NULL;
	return ok;
}

char *kvb_study_summary(const kvb_study_params_t *p, const kvb_study_result_t *r)
{
	GString *s = g_string_new(NULL);
	g_string_append_printf(s, "summary (%s, %u+%u nodes x %u NICs at %.0f Gb/s, %s, NIC policy %s, lease %s)\n",
			       p->model->name, p->platform.prefill_nodes, p->platform.decode_nodes,
			       p->platform.nics_per_node, p->platform.nic_gbps,
			       kvb_topology_name(p->platform.topology), p->conn.nic_policy,
			       kvb_lease_policy_name(p->conn.lease_policy));
	g_string_append_printf(s, "  requests               %" PRIu64 " (%" PRIu64 " done, %" PRIu64 " failed, %" PRIu64
			       " aborted, %" PRIu64 " lost to crashes)\n",
			       r->requests, r->done, r->failed, r->aborted, r->crashed);
	g_string_append_printf(s, "  transfer time          p50 %.3f ms, p90 %.3f ms, p99 %.3f ms (mean %.3f ms)\n",
			       r->xfer_p50_s * 1e3, r->xfer_p90_s * 1e3, r->xfer_p99_s * 1e3, r->xfer_mean_s * 1e3);
	g_string_append_printf(s, "  TTFT                   mean %.3f s, p50 %.3f s, p99 %.3f s; transfer share %.1f%%\n",
			       r->ttft_mean_s, r->ttft_p50_s, r->ttft_p99_s, r->ttft_share_mean * 100);
	g_string_append_printf(s, "  KV moved               %.2f TB at %.1f GB/s per transfer on average\n",
			       r->bytes_moved / 1e12, r->avg_rate_GBps);
	g_string_append_printf(s, "  KV block-seconds held  %.4g (leaked by expired leases: %.4g)\n",
			       r->block_seconds_held, r->block_seconds_leaked);
	g_string_append_printf(s, "  leases expired         %" PRIu64 "\n", r->leases_expired);
	g_string_append_printf(s, "  stale reads            %" PRIu64 "\n", r->stale_reads);
	g_string_append_printf(s, "  NIC imbalance          %.3f (max / mean bytes over prefill NICs)\n",
			       r->nic_imbalance);
	g_string_append_printf(s, "  simulated              %.3f s in %.2f s wall, %" PRIu64 " flows (peak %" PRIu64
			       " in flight), peak RSS %.0f MiB\n",
			       r->sim_end_s, r->wall_s, r->sim.flows_started, r->sim.flows_peak,
			       (double)r->peak_rss_kb / 1024.0);
	return g_string_free(s, FALSE);
}
