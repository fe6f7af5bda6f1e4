/*
 * Helpers of the hw backend's loopback suites (hw_side.h).
 */
#include "config.h"

#include <string.h>

#include <check.h>
#include <glib.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/hw.h>

#include "../src/tools/kvb_pattern.h"
#include "hw_side.h"

GMainContext *hw_side_ctx;

void side_open_opt(side_t *s, kvb_role_t role, double lease_s, const side_opts_t *o)
{
	memset(s, 0, sizeof(*s));
	s->len = (size_t)LAYERS * BLOCKS * STRIDE;
	uint32_t nics = o->nics ? o->nics : 1;
	bool gpu = o->gpu;
	s->gpu = gpu;
	s->block_bytes = o->block_bytes ? o->block_bytes : BLOCK_BYTES;
	s->view = g_malloc(s->len);
	memset(s->view, 0xEE, s->len);
	if (gpu) {
		s->mem = kvb_hw_emu_gpu_alloc(s->len);
		ck_assert(s->mem);
		ck_assert_int_eq(kvb_hw_emu_gpu_copy(s->mem, s->view, s->len), KVB_OK);
	} else {
		s->mem = s->view;
	}
	for (uint32_t i = 0; i < LAYERS; i++)
		s->regs[i] = (kvb_region_t){(uint64_t)(uintptr_t)s->mem + (uint64_t)i * BLOCKS * STRIDE, STRIDE,
					    s->block_bytes, BLOCKS, (int32_t)i, 0,
					    gpu ? KVB_MEM_CUDA : KVB_MEM_HOST, gpu ? 0 : -1};
	kvb_hw_params_t p;
	kvb_hw_params_default(&p);
	if (o->staging_chunk) {
		p.staging_chunk = o->staging_chunk;
		p.staging_bytes = o->staging_bytes;
	}
	p.host = "127.0.0.1";
	p.vllm_protocol = o->vllm;
	p.vllm_bootstrap_port = o->bootstrap_port;
	p.vllm_bootstrap_server = o->bootstrap_server;
	if (o->abort_timeout_s > 0)
		p.vllm_abort_timeout_ns = S_NS(o->abort_timeout_s);
	p.bind_host = "127.0.0.1";
	p.rpc_port = o->rpc_port;
	p.context = hw_side_ctx;
	p.n_nics = nics;
	p.nic_addrs[0] = "127.0.0.1";
	p.nic_addrs[1] = "127.0.0.2";
	p.side_channel_port = o->side_port;
	p.side_channel_host = "127.0.0.1";
	p.connect_timeout_ns = S_NS(2);
	p.warn_fn = o->warn_fn;
	p.allow_peers = o->allow_peers;
	p.secret_file = o->secret_file;
	p.tls_cert = o->tls_cert;
	p.tls_key = o->tls_key;
	p.tls_ca = o->tls_ca;
	p.warn_arg = o->warn_arg;
	kvb_err_t err;
	ck_assert_msg(kvb_hw_open(&p, &s->be, &err) == KVB_OK, "open: %s", err.msg);
	kvb_config_t cfg;
	kvb_config_init(&cfg);
	cfg.role = role;
	if (o->tp_size) {
		cfg.tp_size = o->tp_size;
		cfg.tp_rank = o->tp_rank;
	}
	cfg.abort_timeout_ns = S_NS(lease_s);
	cfg.consumer_timeout_ns = S_NS(lease_s + 5);
	cfg.slice_size = 16384;
	cfg.fragment_limit = 4096;
	ck_assert_msg(kvb_connector_new(&cfg, s->be, &s->c, &err) == KVB_OK, "connector: %s", err.msg);
	kvb_config_clear(&cfg);
	ck_assert_msg(kvb_connector_register_layout(s->c, s->regs, LAYERS, &err) == KVB_OK, "%s", err.msg);
	if (o->side_port || o->vllm == KVB_HW_VLLM_GEN2) {
		kvb_hw_vllm_layout_t l = {.regions = s->regs, .n_regions = LAYERS,
					  .tp_size = o->tp_size ? o->tp_size : 1, .tp_rank = o->tp_rank,
					  .dp_rank = o->dp_rank,
					  .engine_id = o->engine_id};
		ck_assert_msg(kvb_hw_vllm_set_layout(s->be, &l, &err) == KVB_OK, "vllm layout: %s",
			      err.msg);
	}
	s->fin = g_array_new(FALSE, FALSE, sizeof(kvb_finished_t));
}

void side_open_mem(side_t *s, kvb_role_t role, double lease_s, uint32_t nics, uint16_t side_port,
		   bool gpu, uint64_t staging_chunk, uint64_t staging_bytes)
{
	side_opts_t o = {.nics = nics, .side_port = side_port, .gpu = gpu,
			 .staging_chunk = staging_chunk, .staging_bytes = staging_bytes};
	side_open_opt(s, role, lease_s, &o);
}

void side_open(side_t *s, kvb_role_t role, double lease_s, uint32_t nics, uint16_t side_port)
{
	side_open_mem(s, role, lease_s, nics, side_port, false, 0, 0);
}

/* Host address of a region address (the test's view of GPU memory). */
uint8_t *at(side_t *s, uint64_t addr)
{
	return s->view + (addr - (uint64_t)(uintptr_t)s->mem);
}

/* Teardown invariant: no block held, no live request. */
void side_close(side_t *s)
{
	if (s->c) {
		kvb_counters_t c;
		kvb_connector_counters(s->c, &c);
		ck_assert_uint_eq(c.blocks_held, 0);
		ck_assert_uint_eq(c.live_requests, 0);
		kvb_connector_free(s->c);
	}
	if (s->be)
		kvb_backend_close(s->be);
	if (s->gpu)
		kvb_hw_emu_gpu_free(s->mem);
	g_free(s->view);
	g_array_free(s->fin, TRUE);
}

void step(side_t **sides, int n)
{
	for (int i = 0; i < n; i++) {
		if (!sides[i]->c)
			continue;
		kvb_connector_progress(sides[i]->c);
		kvb_finished_t f[16];
		int k;
		while ((k = kvb_connector_poll_finished(sides[i]->c, f, 16)) > 0)
			g_array_append_vals(sides[i]->fin, f, (guint)k);
	}
	g_main_context_iteration(hw_side_ctx, FALSE);
	g_usleep(200);
}

/* Run until side s has n finished requests or max_s passes. */
bool run_until(side_t **sides, int n, side_t *s, guint want, double max_s)
{
	gint64 end = g_get_monotonic_time() + (gint64)(max_s * 1e6);
	while (g_get_monotonic_time() < end) {
		step(sides, n);
		if (s->fin->len >= want)
			return true;
	}
	return false;
}


void fill_request(side_t *s, const char *id, const uint32_t *blocks, uint32_t n)
{
	uint64_t seed = kvb_pattern_request_seed(id);
	for (uint32_t r = 0; r < LAYERS; r++)
		for (uint32_t k = 0; k < n; k++)
			kvb_pattern_fill(at(s, s->regs[r].base + (uint64_t)blocks[k] * STRIDE),
					 s->block_bytes, kvb_pattern_block_seed(seed, r, k));
	if (s->gpu)
		ck_assert_int_eq(kvb_hw_emu_gpu_copy(s->mem, s->view, s->len), KVB_OK);
}

uint64_t check_request(side_t *s, const char *id, const uint32_t *blocks, uint32_t n)
{
	uint64_t seed = kvb_pattern_request_seed(id), bad = 0;
	if (s->gpu)
		ck_assert_int_eq(kvb_hw_emu_gpu_copy(s->view, s->mem, s->len), KVB_OK);
	for (uint32_t r = 0; r < LAYERS; r++)
		for (uint32_t k = 0; k < n; k++) {
			const uint8_t *b = at(s, s->regs[r].base + (uint64_t)blocks[k] * STRIDE);
			bad += kvb_pattern_mismatches(b, s->block_bytes, kvb_pattern_block_seed(seed, r, k));
			/* the padding after the meaningful bytes never changes */
			for (uint32_t i = s->block_bytes; i < STRIDE; i++)
				bad += b[i] != 0xEE;
		}
	return bad;
}

void pull(side_t *cons, const char *addr, const char *id, const uint32_t *blocks, uint32_t n)
{
	const char *prods[1] = {addr};
	kvb_block_list_t g = {blocks, n};
	kvb_pull_params_t pp = {.request_id = id, .transfer_id = id, .producers = prods, .n_producers = 1,
				.groups = &g, .n_groups = 1};
	kvb_err_t err;
	ck_assert_msg(kvb_consumer_pull(cons->c, &pp, &err) == KVB_OK, "pull: %s", err.msg);
}

void produce(side_t *prod, const char *id, const uint32_t *blocks, uint32_t n)
{
	kvb_err_t err;
	fill_request(prod, id, blocks, n);
	kvb_block_list_t g = {blocks, n};
	ck_assert(kvb_producer_begin(prod->c, id, &err) == KVB_OK);
	ck_assert_msg(kvb_producer_ready(prod->c, id, &g, 1, &err) == KVB_OK, "%s", err.msg);
}

void hw_side_setup(void)
{
	hw_side_ctx = g_main_context_new();
}

void hw_side_teardown(void)
{
	while (g_main_context_iteration(hw_side_ctx, FALSE))
		;
	g_main_context_unref(hw_side_ctx);
}

