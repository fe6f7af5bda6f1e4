/* Connector test harness: see harness.h. */
#include "config.h"

#include <string.h>

#include "harness.h"

void h_opts_default(h_opts_t *o)
{
	memset(o, 0, sizeof(*o));
	o->role = KVB_ROLE_BOTH;
	o->tp_size = 1;
	o->layers = 4;
	o->groups = 1;
	o->num_blocks = 64;
	o->block_bytes = 4096;
	o->stride = 4096 + 512;
	o->n_nics = 2;
	o->nic_Bps = 25000000000ull;
	o->latency_ns = 2000;
	o->msg_latency_ns = 10000;
	o->queue_depth = 256;
	o->lease_s = 10;
	o->lease_policy = KVB_LEASE_FIXED;
	o->slice_retries = 3;
	o->nic_queue_depth = 64;
	o->nic_error_threshold = 3;
	o->nic_cooldown_s = 30;
	o->slice_size = 4096;
	o->policy = "round_robin";
	o->seed = 7;
}

h_world_t *h_world_new(uint64_t seed)
{
	h_world_t *w = g_new0(h_world_t, 1);
	w->fabric = kvb_loop_fabric_new(seed);
	ck_assert_ptr_nonnull(w->fabric);
	return w;
}

static void record_cb(const kvb_xfer_record_t *r, void *user)
{
	h_worker_t *x = user;
	kvb_xfer_record_t copy = *r;
	copy.transfer_id = copy.request_id = copy.peer = copy.reason = NULL;
	g_array_append_val(x->records, copy);
	char line[1024];
	int n = kvb_xfer_record_json(r, line, sizeof(line));
	ck_assert_int_gt(n, 0);
	ck_assert(line[0] == '{');
}

h_worker_t *h_add(h_world_t *w, const char *name, const h_opts_t *o)
{
	ck_assert_uint_lt(w->n, H_MAX_WORKERS);
	ck_assert_uint_le(o->layers, 64);
	h_worker_t *x = g_new0(h_worker_t, 1);
	g_strlcpy(x->name, name, sizeof(x->name));
	x->opts = *o;
	uint64_t stride = o->stride ? o->stride : o->block_bytes;
	x->mem_len = (size_t)(stride * o->num_blocks * o->layers);
	x->mem = g_malloc(x->mem_len);
	x->expect = g_malloc(x->mem_len);
	memset(x->mem, H_CANARY, x->mem_len);
	memset(x->expect, H_CANARY, x->mem_len);
	for (uint32_t l = 0; l < o->layers; l++) {
		kvb_region_t *r = &x->regions[l];
		r->base = (uint64_t)(uintptr_t)(x->mem + (size_t)l * stride * o->num_blocks);
		r->block_stride = stride;
		r->block_bytes = o->block_bytes;
		r->num_blocks = o->num_blocks;
		r->layer = (int32_t)l;
		r->group = (int32_t)(l % (o->groups ? o->groups : 1));
		r->mem_kind = KVB_MEM_HOST;
		r->device = -1;
	}
	kvb_loop_params_t lp;
	kvb_loop_params_default(&lp);
	lp.n_nics = o->n_nics;
	lp.nic_bandwidth_Bps = o->nic_Bps;
	lp.latency_ns = o->latency_ns;
	lp.msg_latency_ns = o->msg_latency_ns;
	lp.queue_depth = o->queue_depth;
	kvb_err_t err;
	kvb_err_clear(&err);
	int rc = kvb_loop_open(w->fabric, name, &lp, &x->loop_be, &err);
	ck_assert_msg(rc == KVB_OK, "loop open: %s", err.msg);
	x->be = x->loop_be;
	if (o->fault) {
		rc = kvb_fault_wrap(x->loop_be, &x->be, &err);
		ck_assert_msg(rc == KVB_OK, "fault wrap: %s", err.msg);
	}
	kvb_config_t cfg;
	kvb_config_init(&cfg);
	cfg.role = o->role;
	cfg.tp_size = o->tp_size;
	cfg.tp_rank = o->tp_rank;
	cfg.total_kv_heads = o->total_kv_heads;
	cfg.abort_timeout_ns = (uint64_t)(o->lease_s * 1e9);
	cfg.lease_policy = o->lease_policy;
	if (o->heartbeat_s > 0)
		cfg.heartbeat_interval_ns = (uint64_t)(o->heartbeat_s * 1e9);
	if (o->lease_min_s > 0)
		cfg.lease_min_ns = (uint64_t)(o->lease_min_s * 1e9);
	if (o->lease_max_s > 0)
		cfg.lease_max_ns = (uint64_t)(o->lease_max_s * 1e9);
	cfg.consumer_timeout_ns = (uint64_t)(o->consumer_timeout_s * 1e9);
	cfg.unprefilled_wait_ns = (uint64_t)(o->unprefilled_wait_s * 1e9);
	cfg.slice_size = o->slice_size;
	cfg.fragment_limit = o->slice_size / 4;
	cfg.slice_retries = o->slice_retries;
	cfg.nic_queue_depth = o->nic_queue_depth;
	cfg.nic_error_threshold = o->nic_error_threshold;
	cfg.nic_cooldown_ns = (uint64_t)(o->nic_cooldown_s * 1e9);
	cfg.seed = o->seed;
	g_strlcpy(cfg.nic_policy, o->policy, sizeof(cfg.nic_policy));
	rc = kvb_connector_new(&cfg, x->be, &x->conn, &err);
	kvb_config_clear(&cfg);
	ck_assert_msg(rc == KVB_OK, "connector: %s", err.msg);
	rc = kvb_connector_register_layout(x->conn, x->regions, o->layers, &err);
	ck_assert_msg(rc == KVB_OK, "layout: %s", err.msg);
	x->finished = g_array_new(FALSE, TRUE, sizeof(kvb_finished_t));
	x->records = g_array_new(FALSE, TRUE, sizeof(kvb_xfer_record_t));
	kvb_connector_set_record_fn(x->conn, record_cb, x);
	w->w[w->n++] = x;
	return x;
}

static void worker_close(h_worker_t *x)
{
	if (x->conn) {
		kvb_connector_free(x->conn);
		x->conn = NULL;
	}
	if (x->be) {
		kvb_backend_close(x->be); /* closes the wrapped loop endpoint too */
		x->be = x->loop_be = NULL;
	}
}

void h_kill(h_world_t *w, h_worker_t *x)
{
	(void)w;
	kvb_loop_kill(x->loop_be);
	worker_close(x);
	x->dead = true;
}

void h_world_free(h_world_t *w)
{
	for (uint32_t i = 0; i < w->n; i++) {
		h_worker_t *x = w->w[i];
		worker_close(x);
		g_array_free(x->finished, TRUE);
		g_array_free(x->records, TRUE);
		g_free(x->mem);
		g_free(x->expect);
		g_free(x);
	}
	kvb_loop_fabric_free(w->fabric);
	g_free(w);
}

void h_collect(h_world_t *w)
{
	for (uint32_t i = 0; i < w->n; i++) {
		h_worker_t *x = w->w[i];
		if (!x->conn)
			continue;
		kvb_finished_t f[16];
		int n;
		while ((n = kvb_connector_poll_finished(x->conn, f, 16)) > 0)
			g_array_append_vals(x->finished, f, (guint)n);
	}
}

typedef struct run_ctx {
	h_world_t *w;
	bool (*pred)(void *);
	void *user;
} run_ctx_t;

static bool run_done(void *user)
{
	run_ctx_t *ctx = user;
	h_collect(ctx->w);
	return ctx->pred ? ctx->pred(ctx->user) : false;
}

int h_run(h_world_t *w, bool (*pred)(void *), void *user, double max_s)
{
	kvb_connector_t *conns[H_MAX_WORKERS];
	uint32_t n = 0;
	for (uint32_t i = 0; i < w->n; i++)
		if (w->w[i]->conn)
			conns[n++] = w->w[i]->conn;
	run_ctx_t ctx = {w, pred, user};
	int rc = kvb_loop_drive(w->fabric, conns, n, pred ? run_done : NULL, &ctx, (uint64_t)(max_s * 1e9));
	h_collect(w);
	return rc;
}

static bool never(void *user)
{
	(void)user;
	return false;
}

void h_run_for(h_world_t *w, double seconds)
{
	uint64_t until = kvb_loop_fabric_now(w->fabric) + (uint64_t)(seconds * 1e9);
	if (h_run(w, never, NULL, seconds) == KVB_ERR_STATE) /* ran dry: idle to the end */
		kvb_loop_fabric_advance_to(w->fabric, until);
}

/* ---- pattern ---- */

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Seed of one head's bytes in one block; byte at offset oh within the head is
 * byte (oh & 7) of mix(head_seed ^ (oh >> 3)). */
static uint64_t pattern_head_seed(uint64_t seed, int32_t layer, uint32_t pos, uint32_t head)
{
	return mix(seed ^ ((uint64_t)(uint32_t)layer << 48) ^ ((uint64_t)pos << 24) ^
		   ((uint64_t)head << 16));
}

/* Write the request's pattern for every block of every group into buf. */
static void pattern_write(h_worker_t *x, uint8_t *buf, uint64_t seed, const kvb_block_list_t *groups,
			  uint32_t n_groups)
{
	const h_opts_t *o = &x->opts;
	uint32_t H = o->total_kv_heads ? o->total_kv_heads : o->tp_size;
	uint32_t hpr = H >= o->tp_size ? H / o->tp_size : 1;
	uint32_t first = (uint32_t)((uint64_t)o->tp_rank * H / o->tp_size);
	uint64_t bph = o->block_bytes / hpr;
	for (uint32_t l = 0; l < o->layers; l++) {
		const kvb_region_t *r = &x->regions[l];
		const kvb_block_list_t *g = &groups[(uint32_t)r->group];
		ck_assert_uint_lt((uint32_t)r->group, n_groups);
		for (uint32_t k = 0; k < g->count; k++) {
			uint32_t pos = g->count - 1 - k;
			uint8_t *blk = buf + (r->base - (uint64_t)(uintptr_t)x->mem) + (uint64_t)g->ids[k] * r->block_stride;
			uint64_t word = 0, word_idx = UINT64_MAX, hseed = 0;
			uint32_t cur_head = UINT32_MAX;
			for (uint64_t off = 0; off < o->block_bytes; off++) {
				uint32_t head = first + (uint32_t)(off / bph);
				uint64_t oh = off % bph;
				if (head != cur_head) {
					cur_head = head;
					hseed = pattern_head_seed(seed, r->layer, pos, head);
					word_idx = UINT64_MAX;
				}
				if ((oh >> 3) != word_idx) {
					word_idx = oh >> 3;
					word = mix(hseed ^ word_idx);
				}
				blk[off] = (uint8_t)(word >> (8 * (oh & 7)));
			}
		}
	}
}

void h_fill(h_worker_t *x, uint64_t seed, const kvb_block_list_t *groups, uint32_t n_groups)
{
	pattern_write(x, x->mem, seed, groups, n_groups);
	pattern_write(x, x->expect, seed, groups, n_groups);
}

void h_expect(h_worker_t *x, uint64_t seed, const kvb_block_list_t *groups, uint32_t n_groups)
{
	pattern_write(x, x->expect, seed, groups, n_groups);
}

void h_forget(h_worker_t *x, const kvb_block_list_t *groups, uint32_t n_groups)
{
	for (uint32_t l = 0; l < x->opts.layers; l++) {
		const kvb_region_t *r = &x->regions[l];
		const kvb_block_list_t *g = &groups[(uint32_t)r->group];
		ck_assert_uint_lt((uint32_t)r->group, n_groups);
		for (uint32_t k = 0; k < g->count; k++) {
			size_t at = (size_t)(r->base - (uint64_t)(uintptr_t)x->mem) + (size_t)g->ids[k] * r->block_stride;
			memcpy(x->expect + at, x->mem + at, (size_t)r->block_stride);
		}
	}
}

void h_verify(h_worker_t *x)
{
	if (memcmp(x->mem, x->expect, x->mem_len) == 0)
		return;
	size_t i = 0;
	while (x->mem[i] == x->expect[i])
		i++;
	uint64_t stride = x->opts.stride ? x->opts.stride : x->opts.block_bytes;
	size_t per_region = (size_t)(stride * x->opts.num_blocks);
	ck_abort_msg("%s: memory differs at byte %zu (region %zu, block %zu, offset %zu): 0x%02x, expected 0x%02x",
		     x->name, i, i / per_region, (i % per_region) / stride, (i % per_region) % stride,
		     x->mem[i], x->expect[i]);
}

int h_expect_pull(h_worker_t *consumer, const char *request_id, const char *transfer_id,
		  const char *producer)
{
	const char *addrs[1] = {producer};
	kvb_pull_params_t pp = {request_id, transfer_id, addrs, 1, 0, NULL, 0};
	kvb_err_t err;
	kvb_err_clear(&err);
	int rc = kvb_consumer_expect(consumer->conn, &pp, &err);
	ck_assert_msg(rc == KVB_OK, "expect %s: %s", request_id, err.msg);
	return rc;
}

int h_pull(h_worker_t *consumer, const char *request_id, const char *transfer_id,
	   const char *producer, const kvb_block_list_t *groups, uint32_t n_groups)
{
	const char *addrs[1] = {producer};
	kvb_pull_params_t pp = {
		.request_id = request_id,
		.transfer_id = transfer_id,
		.producers = addrs,
		.n_producers = 1,
		.groups = groups,
		.n_groups = n_groups,
	};
	kvb_err_t err;
	kvb_err_clear(&err);
	int rc = kvb_consumer_pull(consumer->conn, &pp, &err);
	ck_assert_msg(rc == KVB_OK, "pull %s: %s", request_id, err.msg);
	return rc;
}

const kvb_finished_t *h_finished(h_worker_t *x, const char *id)
{
	for (guint i = 0; i < x->finished->len; i++) {
		const kvb_finished_t *f = &g_array_index(x->finished, kvb_finished_t, i);
		if (strcmp(f->id, id) == 0)
			return f;
	}
	return NULL;
}

void h_invariants(h_world_t *w)
{
	h_collect(w);
	for (uint32_t i = 0; i < w->n; i++) {
		h_worker_t *x = w->w[i];
		if (!x->conn)
			continue;
		kvb_counters_t c;
		kvb_connector_counters(x->conn, &c);
		ck_assert_msg(c.blocks_held == 0, "%s still holds %" G_GUINT64_FORMAT " blocks", x->name,
			      c.blocks_held);
		ck_assert_msg(c.live_requests == 0, "%s has %" G_GUINT64_FORMAT " live requests", x->name,
			      c.live_requests);
		h_verify(x);
	}
}

bool h_pred_state(void *user)
{
	h_state_wait_t *sw = user;
	int st = sw->producer ? kvb_producer_state(sw->x->conn, sw->id)
			      : kvb_consumer_state(sw->x->conn, sw->id);
	if (st == sw->state)
		return true;
	const kvb_finished_t *f = h_finished(sw->x, sw->id);
	return f && f->state == sw->state;
}

bool h_pred_finished(void *user)
{
	h_state_wait_t *sw = user;
	return h_finished(sw->x, sw->id) != NULL;
}

const kvb_finished_t *h_expect_finished(h_worker_t *x, const char *id, int state, int status)
{
	const kvb_finished_t *f = h_finished(x, id);
	ck_assert_msg(f, "%s: %s did not finish", x->name, id);
	ck_assert_msg(f->state == state && f->status == status,
		      "%s: %s finished in state %d status %s (%s), expected %d %s", x->name, id, f->state,
		      kvb_status_name(f->status), f->reason, state, kvb_status_name(status));
	return f;
}

void h_run_until(h_world_t *w, h_worker_t *x, const char *id, int state, bool producer)
{
	h_state_wait_t sw = {x, id, state, producer};
	int rc = h_run(w, h_pred_state, &sw, 1000);
	ck_assert_msg(rc == KVB_OK, "%s never reached state %d (%s)", id, state, kvb_status_name(rc));
}

void h_pair(h_world_t *w, h_worker_t **p, h_worker_t **d, const h_opts_t *base)
{
	h_opts_t o = *base;
	o.role = KVB_ROLE_PRODUCER;
	*p = h_add(w, "p0", &o);
	o.role = KVB_ROLE_CONSUMER;
	*d = h_add(w, "d0", &o);
}
