/*
 * kvb_gpu_check: the GPU device check.  On a machine with a GPU it
 * allocates a producer's and a consumer's KV cache in device memory
 * (cudaMalloc), registers both with the hw backend (regions of kind
 * KVB_MEM_CUDA, two loopback TCP NICs each, so every NIC takes the staging
 * path), moves a request's blocks producer -> consumer R times, checks every
 * byte of the consumer's buffer after each move, and prints the staging
 * path's GB/s next to what the copy engines do with the same blocks in the
 * same run: cudaMemcpyAsync device -> pinned host -> device, and device ->
 * device.
 *
 * --memory emulated runs the same steps on the hw backend's emulated device
 * memory (kvb_hw_emu_gpu_alloc: PROT_NONE pages a transport cannot touch),
 * with memcpy as the baseline; it needs no GPU and is how CI runs this
 * program (tests/test_gpu_emulated.sh).
 *
 * Exit: 0 every byte verified and the staging path ran on both sides, 1 a
 * check failed, 2 bad options or a setup error, 77 --memory cuda without a
 * CUDA build or without a GPU (the reason is printed).
 */
#include "config.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/hw.h>

#include "../../src/tools/kvb_devmem.h"
#include "../../src/tools/kvb_pattern.h"

#define EXIT_SKIP 77
#define PROD_FILL 0x5Au   /* the producer's blocks outside a request */
#define SENTINEL 0xEEu    /* the consumer's bytes no request may touch */
#define REQUEST_TIMEOUT_S 60.0
#define MAX_REPEAT 1000


/* ---- options -------------------------------------------------------------- */

static struct {
	gchar *memory;
	gint layers, block_tokens, kv_bytes, blocks, request_blocks, repeat, nics, device;
	gboolean quick;
} o = {.layers = -1, .block_tokens = -1, .kv_bytes = -1, .blocks = -1, .request_blocks = -1,
       .repeat = -1, .nics = -1};

static GOptionEntry entries[] = {
	{"memory", 'm', 0, G_OPTION_ARG_STRING, &o.memory,
	 "cuda (device memory, the default; built --with-cuda) or emulated (the hw backend's emulated "
	 "device memory: no GPU needed)", "KIND"},
	{"layers", 'L', 0, G_OPTION_ARG_INT, &o.layers,
	 "model layers, a K and a V region each (default 28, Qwen2.5-7B)", "N"},
	{"block-tokens", 0, 0, G_OPTION_ARG_INT, &o.block_tokens, "tokens per KV block (default 16)", "N"},
	{"kv-bytes-per-token-per-region", 0, 0, G_OPTION_ARG_INT, &o.kv_bytes,
	 "bytes of one token in one region (default 1024: 4 KV heads x 128 dim x 2 bytes)", "N"},
	{"blocks-per-region", 0, 0, G_OPTION_ARG_INT, &o.blocks, "block slots per region (default 512)", "N"},
	{"request-blocks", 0, 0, G_OPTION_ARG_INT, &o.request_blocks,
	 "blocks per request (default 256: 4096 tokens)", "N"},
	{"repeat", 'r', 0, G_OPTION_ARG_INT, &o.repeat, "requests to move and verify (default 5)", "R"},
	{"nics", 'n', 0, G_OPTION_ARG_INT, &o.nics,
	 "TCP NICs per side: source addresses 127.0.0.1, 127.0.0.2, ... (default 2)", "N"},
	{"device", 'd', 0, G_OPTION_ARG_INT, &o.device, "GPU ordinal (default 0)", "N"},
	{"quick", 'q', 0, G_OPTION_ARG_NONE, &o.quick,
	 "small sizes for CI: 2 layers, 32 blocks of 64 KiB per region, 12 per request, 3 requests, and a "
	 "staging pool of 4 chunks of 32 KiB, so each block goes in pieces and ops wait for chunks "
	 "(options given explicitly still apply)", NULL},
	{NULL},
};

static kvb_devmem_t mode;
static GMainContext *ctx;

/* ---- device memory: CUDA or emulated (src/tools/kvb_devmem.h) --------------- */

static void *dev_alloc(size_t len)
{
	char why[256];
	void *p = kvb_devmem_alloc(mode, o.device, len, why, sizeof(why));
	if (!p)
		fprintf(stderr, "kvb_gpu_check: %s\n", why);
	return p;
}

static bool dev_copy(void *dst, const void *src, size_t len, bool to_dev)
{
	char why[256];
	if (kvb_devmem_copy(mode, dst, src, len, to_dev, why, sizeof(why)))
		return true;
	fprintf(stderr, "kvb_gpu_check: %s\n", why);
	return false;
}

/* ---- the two sides ------------------------------------------------------------ */

typedef struct side {
	const char *name;
	kvb_backend_t *be;
	kvb_connector_t *c;
	uint8_t *dev;      /* the KV cache (device memory) */
	uint8_t *view;     /* host copy: what the producer uploads, the consumer downloads */
	size_t len;
	kvb_region_t *regs;
	GArray *fin;       /* kvb_finished_t */
} side_t;

typedef struct geom {
	uint32_t n_regions, blocks, n;
	uint64_t block_bytes, span, len, request_bytes;
} geom_t;

static uint8_t *region_block(uint8_t *base, const geom_t *g, uint32_t reg, uint32_t block)
{
	return base + (uint64_t)reg * g->span + (uint64_t)block * g->block_bytes;
}

static bool side_open(side_t *s, const char *name, kvb_role_t role, const geom_t *g)
{
	kvb_err_t err;
	s->name = name;
	s->len = g->len;
	s->fin = g_array_new(FALSE, FALSE, sizeof(kvb_finished_t));
	s->dev = dev_alloc(g->len);
	s->view = kvb_devmem_host_alloc(mode, g->len);
	if (!s->dev || !s->view) {
		fprintf(stderr, "kvb_gpu_check: %s: cannot allocate %" PRIu64 " bytes of %s memory and as "
			"many of host memory\n", name, g->len, mode == KVB_DEVMEM_CUDA ? "device" : "emulated device");
		return false;
	}
	memset(s->view, role == KVB_ROLE_PRODUCER ? PROD_FILL : SENTINEL, g->len);
	if (!dev_copy(s->dev, s->view, g->len, true))
		return false;
	s->regs = g_new0(kvb_region_t, g->n_regions);
	for (uint32_t i = 0; i < g->n_regions; i++)
		s->regs[i] = (kvb_region_t){.base = (uint64_t)(uintptr_t)s->dev + (uint64_t)i * g->span,
					    .block_stride = g->block_bytes, .block_bytes = g->block_bytes,
					    .num_blocks = g->blocks, .layer = (int32_t)(i / 2), .group = 0,
					    .mem_kind = KVB_MEM_CUDA, .device = o.device};

	kvb_hw_params_t p;
	kvb_hw_params_default(&p);
	if (o.quick) {
		p.staging_chunk = 32768;
		p.staging_bytes = 4 * 32768;
	}
	if (kvb_hw_params_apply_env(&p, NULL, &err) != KVB_OK) { /* KVB_STAGING_*, MC_* */
		fprintf(stderr, "kvb_gpu_check: %s\n", err.msg);
		return false;
	}
	static const char *addrs[KVB_HW_MAX_NICS] = {
		"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6",
		"127.0.0.7", "127.0.0.8", "127.0.0.9", "127.0.0.10", "127.0.0.11", "127.0.0.12",
		"127.0.0.13", "127.0.0.14", "127.0.0.15", "127.0.0.16"};
	p.host = "127.0.0.1";
	p.bind_host = "127.0.0.1";
	p.context = ctx;
	p.n_nics = (uint32_t)o.nics;
	for (int i = 0; i < o.nics; i++)
		p.nic_addrs[i] = addrs[i];
	p.rdma_devices = NULL; /* TCP: the staging path whatever KVB_RDMA_DEVICES says */
	if (kvb_hw_open(&p, &s->be, &err) != KVB_OK) {
		fprintf(stderr, "kvb_gpu_check: %s: backend: %s\n", name, err.msg);
		return false;
	}
	kvb_config_t cfg;
	kvb_config_init(&cfg);
	cfg.role = role;
	cfg.abort_timeout_ns = (uint64_t)(2 * REQUEST_TIMEOUT_S * 1e9);
	cfg.consumer_timeout_ns = (uint64_t)(REQUEST_TIMEOUT_S * 1e9);
	int rc = kvb_connector_new(&cfg, s->be, &s->c, &err);
	kvb_config_clear(&cfg);
	if (rc != KVB_OK) {
		fprintf(stderr, "kvb_gpu_check: %s: connector: %s\n", name, err.msg);
		return false;
	}
	if (kvb_connector_register_layout(s->c, s->regs, g->n_regions, &err) != KVB_OK) {
		fprintf(stderr, "kvb_gpu_check: %s: registering the KV layout: %s\n", name, err.msg);
		return false;
	}
	return true;
}

/* The path each NIC took for each region: one line per side when all
 * regions agree (they should: same memory, same NICs). */
static bool side_paths(side_t *s, const geom_t *g, uint32_t *n_staging)
{
	kvb_hw_gpu_path_t first[KVB_HW_MAX_NICS], paths[KVB_HW_MAX_NICS];
	uint32_t n0 = 0, n = 0;
	bool same = true;
	for (uint32_t r = 0; r < g->n_regions; r++) {
		int rc = kvb_hw_mr_paths(s->be, (void *)(uintptr_t)s->regs[r].base, r ? paths : first,
					 KVB_HW_MAX_NICS, r ? &n : &n0);
		if (rc != KVB_OK) {
			fprintf(stderr, "kvb_gpu_check: %s: region %u is not registered (%s)\n", s->name, r,
				kvb_strerror(rc));
			return false;
		}
		if (r && (n != n0 || memcmp(paths, first, sizeof(paths[0]) * MIN(n, KVB_HW_MAX_NICS))))
			same = false;
	}
	printf("paths: %-8s", s->name);
	*n_staging = 0;
	for (uint32_t i = 0; i < n0 && i < KVB_HW_MAX_NICS; i++) {
		kvb_nic_info_t info;
		memset(&info, 0, sizeof(info));
		if (s->be->ops->nic_query(s->be, i, &info) != KVB_OK)
			g_snprintf(info.name, sizeof(info.name), "nic%u", i);
		printf("%s%s %s", i ? ", " : " ", info.name, kvb_hw_gpu_path_name(first[i]));
		*n_staging += first[i] == KVB_HW_PATH_STAGING;
	}
	printf("%s\n", same ? "" : " (region 0; other regions differ)");
	return true;
}

static void side_close(side_t *s)
{
	if (s->c)
		kvb_connector_free(s->c);
	if (s->be)
		kvb_backend_close(s->be);
	kvb_devmem_free(mode, s->dev, s->len);
	kvb_devmem_host_free(mode, s->view);
	g_free(s->regs);
	if (s->fin)
		g_array_free(s->fin, TRUE);
}

/* ---- driving the loop ----------------------------------------------------------- */

static void pump(side_t *s)
{
	kvb_connector_progress(s->c);
	kvb_finished_t f[16];
	int k;
	while ((k = kvb_connector_poll_finished(s->c, f, 16)) > 0)
		g_array_append_vals(s->fin, f, (guint)k);
}

static gboolean tick(gpointer unused)
{
	(void)unused;
	return G_SOURCE_CONTINUE;
}

/* Progress both sides until s has want finished requests or max_s passes.
 * The loop blocks in the context; a 1 ms tick bounds each wait so that work
 * the core parked without an event (a full queue) is retried. */
static bool run_until(side_t *a, side_t *b, side_t *s, guint want, double max_s)
{
	gint64 end = g_get_monotonic_time() + (gint64)(max_s * 1e6);
	for (;;) {
		pump(a);
		pump(b);
		if (s->fin->len >= want)
			return true;
		if (g_get_monotonic_time() >= end)
			return false;
		g_main_context_iteration(ctx, TRUE);
	}
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- pattern and verification --------------------------------------------------- */

/* The request's blocks of every region get the pattern (in the producer's
 * host view), then the whole view goes to the device. */
static bool fill_request(side_t *P, const geom_t *g, const char *id, const uint32_t *pb)
{
	uint64_t seed = kvb_pattern_request_seed(id);
	for (uint32_t r = 0; r < g->n_regions; r++)
		for (uint32_t k = 0; k < g->n; k++)
			kvb_pattern_fill(region_block(P->view, g, r, pb[k]), g->block_bytes,
					 kvb_pattern_block_seed(seed, r, k));
	return dev_copy(P->dev, P->view, g->len, true);
}

/* Download the consumer's whole buffer and check every byte: the request's
 * blocks (db[k] holds block k of the request) against the pattern, all
 * others against the sentinel.  Counts go to *pattern_bad, *sentinel_bad. */
static bool verify(side_t *D, const geom_t *g, const char *id, const uint32_t *db, uint64_t *pattern_bad,
		   uint64_t *sentinel_bad)
{
	*pattern_bad = *sentinel_bad = 0;
	memset(D->view, 0, D->len); /* nothing stale passes */
	if (!dev_copy(D->view, D->dev, D->len, false))
		return false;
	int64_t *slot = g_new(int64_t, g->blocks);
	for (uint32_t b = 0; b < g->blocks; b++)
		slot[b] = -1;
	for (uint32_t k = 0; k < g->n; k++)
		slot[db[k]] = k;
	uint8_t *clean = g_malloc(g->block_bytes);
	memset(clean, SENTINEL, g->block_bytes);
	uint64_t seed = kvb_pattern_request_seed(id);
	for (uint32_t r = 0; r < g->n_regions; r++)
		for (uint32_t b = 0; b < g->blocks; b++) {
			const uint8_t *p = region_block(D->view, g, r, b);
			if (slot[b] >= 0) {
				*pattern_bad += kvb_pattern_mismatches(p, g->block_bytes,
					kvb_pattern_block_seed(seed, r, (uint64_t)slot[b]));
				continue;
			}
			if (!memcmp(p, clean, g->block_bytes))
				continue;
			for (uint64_t i = 0; i < g->block_bytes; i++)
				*sentinel_bad += p[i] != SENTINEL;
		}
	g_free(clean);
	g_free(slot);
	return true;
}

/* ---- baselines: the same blocks through the copy engines -------------------------- */

#ifdef KVB_HAVE_CUDA
static cudaStream_t stream;
#endif

/* Block k of region r of the request: producer block pb[k] -> consumer block
 * db[k].  d2d: device to device; otherwise device -> bounce (host, pinned
 * with CUDA) -> device.  Returns seconds, < 0 on error. */
static double baseline(side_t *P, side_t *D, const geom_t *g, const uint32_t *pb, const uint32_t *db,
		       uint8_t *bounce, bool d2d)
{
	double t0 = now_s();
	if (mode == KVB_DEVMEM_EMULATED) {
		for (uint32_t r = 0; r < g->n_regions; r++)
			for (uint32_t k = 0; k < g->n; k++) {
				uint8_t *src = region_block(P->dev, g, r, pb[k]);
				uint8_t *dst = region_block(D->dev, g, r, db[k]);
				uint8_t *b = bounce + ((uint64_t)r * g->n + k) * g->block_bytes;
				if (d2d) {
					if (kvb_hw_emu_gpu_copy(dst, src, g->block_bytes) != KVB_OK)
						return -1;
				} else if (kvb_hw_emu_gpu_copy(b, src, g->block_bytes) != KVB_OK) {
					return -1;
				}
			}
		if (!d2d)
			for (uint32_t r = 0; r < g->n_regions; r++)
				for (uint32_t k = 0; k < g->n; k++)
					if (kvb_hw_emu_gpu_copy(region_block(D->dev, g, r, db[k]),
								bounce + ((uint64_t)r * g->n + k) * g->block_bytes,
								g->block_bytes) != KVB_OK)
						return -1;
		return now_s() - t0;
	}
#ifdef KVB_HAVE_CUDA
	cudaError_t e = cudaSuccess;
	for (uint32_t r = 0; r < g->n_regions && e == cudaSuccess; r++)
		for (uint32_t k = 0; k < g->n && e == cudaSuccess; k++) {
			uint8_t *src = region_block(P->dev, g, r, pb[k]);
			uint8_t *dst = region_block(D->dev, g, r, db[k]);
			uint8_t *b = bounce + ((uint64_t)r * g->n + k) * g->block_bytes;
			e = d2d ? cudaMemcpyAsync(dst, src, g->block_bytes, cudaMemcpyDeviceToDevice, stream)
				: cudaMemcpyAsync(b, src, g->block_bytes, cudaMemcpyDeviceToHost, stream);
		}
	for (uint32_t r = 0; !d2d && r < g->n_regions && e == cudaSuccess; r++)
		for (uint32_t k = 0; k < g->n && e == cudaSuccess; k++)
			e = cudaMemcpyAsync(region_block(D->dev, g, r, db[k]),
					    bounce + ((uint64_t)r * g->n + k) * g->block_bytes, g->block_bytes,
					    cudaMemcpyHostToDevice, stream);
	if (e == cudaSuccess)
		e = cudaStreamSynchronize(stream);
	if (e != cudaSuccess) {
		fprintf(stderr, "kvb_gpu_check: baseline (%s): %s\n", d2d ? "D2D" : "D2H+H2D",
			cudaGetErrorString(e));
		return -1;
	}
	return now_s() - t0;
#else
	(void)bounce;
	return -1;
#endif
}

/* ---- main ---------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void defaults(void)
{
	/* --quick: small sizes; an option given explicitly wins */
#define DEF(f, full_, quick_) \
	if (o.f < 0) \
		o.f = o.quick ? (quick_) : (full_)
	DEF(layers, 28, 2);
	DEF(block_tokens, 16, 16);
	DEF(kv_bytes, 1024, 4096);
	DEF(blocks, 512, 32);
	DEF(request_blocks, 256, 12);
	DEF(repeat, 5, 3);
	DEF(nics, 2, 2);
#undef DEF
}

/* 77 with the reason when --memory cuda cannot run here. */
static int cuda_probe(char *gpu_name, size_t name_len)
{
#ifndef KVB_HAVE_CUDA
	(void)gpu_name;
	(void)name_len;
	printf("SKIP: this build has no CUDA (configure --with-cuda=DIR; --memory emulated runs without a GPU)\n");
	return EXIT_SKIP;
#else
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);
	if (e != cudaSuccess || n <= 0) {
		printf("SKIP: no CUDA device (cudaGetDeviceCount: %s)\n",
		       e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
		return EXIT_SKIP;
	}
	if (o.device >= n) {
		fprintf(stderr, "kvb_gpu_check: --device %d: this machine has %d CUDA device%s\n", o.device, n,
			n == 1 ? "" : "s");
		return 2;
	}
	struct cudaDeviceProp prop;
	e = cudaSetDevice(o.device);
	if (e == cudaSuccess)
		e = cudaGetDeviceProperties(&prop, o.device);
	if (e == cudaSuccess)
		e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
	if (e != cudaSuccess) {
		fprintf(stderr, "kvb_gpu_check: GPU %d: %s\n", o.device, cudaGetErrorString(e));
		return 2;
	}
	g_snprintf(gpu_name, name_len, "%s", prop.name);
	return 0;
#endif
}

int main(int argc, char **argv)
{
	GError *gerr = NULL;
	GOptionContext *oc = g_option_context_new("- the GPU device check: KV blocks through the staging path");
	g_option_context_add_main_entries(oc, entries, NULL);
	g_option_context_set_description(oc,
		"Moves a KV layout (K and V regions per layer) from a producer's device memory to a\n"
		"consumer's over loopback TCP NICs, which stage through pinned host chunks, checks every\n"
		"byte of the consumer's buffer after each request, and prints the staging path's GB/s\n"
		"(1e9 bytes/s, median of the requests) next to cudaMemcpyAsync D2H+H2D and D2D of the same\n"
		"blocks measured in the same run.\n"
		"Environment: KVB_STAGING_BYTES, KVB_STAGING_CHUNK (the staging pool), MC_* (hw backend).\n"
		"Exit: 0 verified, 1 a check failed, 2 setup error, 77 no CUDA build or no GPU (SKIP).\n");
	bool ok = g_option_context_parse(oc, &argc, &argv, &gerr);
	g_option_context_free(oc);
	if (!ok) {
		fprintf(stderr, "kvb_gpu_check: %s (try --help)\n", gerr->message);
		g_error_free(gerr);
		return 2;
	}
	defaults();
	if (!o.memory || !strcmp(o.memory, "cuda")) {
		mode = KVB_DEVMEM_CUDA;
	} else if (!strcmp(o.memory, "emulated")) {
		mode = KVB_DEVMEM_EMULATED;
	} else {
		fprintf(stderr, "kvb_gpu_check: --memory %s: expected cuda or emulated\n", o.memory);
		return 2;
	}
	if (o.layers < 1 || 2 * (int64_t)o.layers > KVB_MAX_REGIONS || o.block_tokens < 1 || o.kv_bytes < 1 ||
	    o.blocks < 1 || o.request_blocks < 1 || o.request_blocks > o.blocks || o.repeat < 1 ||
	    o.repeat > MAX_REPEAT || o.nics < 1 || o.nics > (int)KVB_HW_MAX_NICS || o.device < 0) {
		fprintf(stderr, "kvb_gpu_check: need --layers 1..%u, --block-tokens, "
			"--kv-bytes-per-token-per-region, --blocks-per-region >= 1, --request-blocks "
			"1..blocks-per-region, --repeat 1..%d, --nics 1..%u, --device >= 0\n",
			KVB_MAX_REGIONS / 2, MAX_REPEAT, KVB_HW_MAX_NICS);
		return 2;
	}
	char gpu_name[256] = "emulated device memory";
	if (mode == KVB_DEVMEM_CUDA) {
		int rc = cuda_probe(gpu_name, sizeof(gpu_name));
		if (rc)
			return rc;
	}

	geom_t g = {.n_regions = 2u * (uint32_t)o.layers, .blocks = (uint32_t)o.blocks,
		    .n = (uint32_t)o.request_blocks,
		    .block_bytes = (uint64_t)o.block_tokens * (uint64_t)o.kv_bytes};
	g.span = g.block_bytes * g.blocks;
	g.len = g.span * g.n_regions;
	g.request_bytes = g.block_bytes * g.n * g.n_regions;
	printf("kvb_gpu_check: %s memory (%s, GPU %d); %u layers x K,V = %u regions of %u blocks x %" PRIu64
	       " bytes (%.1f MiB per side); %u blocks per request (%u tokens, %.1f MiB); %d requests; "
	       "%d TCP NICs\n",
	       mode == KVB_DEVMEM_CUDA ? "cuda" : "emulated", gpu_name, o.device, (uint32_t)o.layers, g.n_regions,
	       g.blocks, g.block_bytes, (double)g.len / 1048576.0, g.n, g.n * (uint32_t)o.block_tokens,
	       (double)g.request_bytes / 1048576.0, o.repeat, o.nics);
	fflush(stdout);

	int status = 2;
	ctx = g_main_context_new();
	GSource *ticker = g_timeout_source_new(1);
	g_source_set_callback(ticker, tick, NULL, NULL);
	g_source_attach(ticker, ctx);
	side_t P = {0}, D = {0};
	uint32_t *pb = g_new(uint32_t, g.n), *db = g_new(uint32_t, g.n);
	uint8_t *bounce = NULL;
	double *t_stage = g_new0(double, (gsize)o.repeat), *t_ce = g_new0(double, (gsize)o.repeat),
	       *t_d2d = g_new0(double, (gsize)o.repeat);
	char id[64] = "";

	if (!side_open(&P, "producer", KVB_ROLE_PRODUCER, &g) || !side_open(&D, "consumer", KVB_ROLE_CONSUMER, &g))
		goto out;
	bounce = kvb_devmem_host_alloc(mode, g.request_bytes);
	if (!bounce)
		goto out;
	memset(bounce, 0, g.request_bytes); /* resident before the first timed copy */
	uint32_t stg_p = 0, stg_d = 0;
	if (!side_paths(&P, &g, &stg_p) || !side_paths(&D, &g, &stg_d))
		goto out;
	status = 1;
	if (stg_p != (uint32_t)o.nics || stg_d != (uint32_t)o.nics) {
		printf("FAIL: expected the staging path on every NIC of both sides (TCP cannot reach device "
		       "memory)\n");
		goto out;
	}
	/* scattered on the producer (every other block when they fit), reversed
	 * on the consumer: no two blocks coalesce into one op */
	for (uint32_t k = 0; k < g.n; k++) {
		pb[k] = 2 * g.n <= g.blocks ? 1 + 2 * k : k;
		db[k] = g.blocks - 1 - k;
	}
	char seg[128];
	g_snprintf(seg, sizeof(seg), "kvb://%s", kvb_hw_segment_name(P.be));

	for (int r = 0; r < o.repeat; r++) {
		kvb_err_t err;
		g_snprintf(id, sizeof(id), "gpu-check-%d", r);
		if (!fill_request(&P, &g, id, pb))
			goto out;
		kvb_block_list_t pg = {pb, g.n}, dg = {db, g.n};
		if (kvb_producer_begin(P.c, id, &err) != KVB_OK ||
		    kvb_producer_ready(P.c, id, &pg, 1, &err) != KVB_OK) {
			printf("FAIL: producer: %s\n", err.msg);
			goto out;
		}
		const char *prods[1] = {seg};
		kvb_pull_params_t pp = {.request_id = id, .transfer_id = id, .producers = prods,
					.n_producers = 1, .groups = &dg, .n_groups = 1};
		double t0 = now_s();
		if (kvb_consumer_pull(D.c, &pp, &err) != KVB_OK) {
			printf("FAIL: pull: %s\n", err.msg);
			goto out;
		}
		if (!run_until(&P, &D, &D, (guint)r + 1, REQUEST_TIMEOUT_S)) {
			printf("FAIL: request %d: no answer in %.0f s\n", r + 1, REQUEST_TIMEOUT_S);
			goto out;
		}
		t_stage[r] = now_s() - t0;
		kvb_finished_t *f = &g_array_index(D.fin, kvb_finished_t, r);
		if (f->state != KVB_CONSUMER_DONE) {
			printf("FAIL: request %d: consumer %s: %s (%s)\n", r + 1, kvb_consumer_state_name(f->state),
			       kvb_status_name(f->status), f->reason);
			goto out;
		}
		if (!run_until(&P, &D, &P, (guint)r + 1, REQUEST_TIMEOUT_S)) {
			printf("FAIL: request %d: the producer never finished\n", r + 1);
			goto out;
		}
		kvb_finished_t *pf = &g_array_index(P.fin, kvb_finished_t, r);
		if (pf->state != KVB_PRODUCER_SENT) {
			printf("FAIL: request %d: producer %s: %s (%s)\n", r + 1, kvb_producer_state_name(pf->state),
			       kvb_status_name(pf->status), pf->reason);
			goto out;
		}
		uint64_t bad_pat, bad_sent;
		if (!verify(&D, &g, id, db, &bad_pat, &bad_sent))
			goto out;
		if (bad_pat || bad_sent) {
			printf("FAIL: request %d: %" PRIu64 " of %" PRIu64 " request bytes differ from the pattern, %" PRIu64
			       " of %" PRIu64 " other bytes lost the sentinel 0x%02X\n",
			       r + 1, bad_pat, g.request_bytes, bad_sent, g.len - g.request_bytes, SENTINEL);
			goto out;
		}
		t_ce[r] = baseline(&P, &D, &g, pb, db, bounce, false);
		t_d2d[r] = baseline(&P, &D, &g, pb, db, bounce, true);
		if (t_ce[r] < 0 || t_d2d[r] < 0) {
			status = 2;
			goto out;
		}
		printf("request %d/%d: %" PRIu64 " bytes staged in %.3f s (%.2f GB/s), all %" PRIu64
		       " bytes of the consumer verified; copy engine %.2f GB/s, D2D %.2f GB/s\n",
		       r + 1, o.repeat, g.request_bytes, t_stage[r], (double)g.request_bytes / t_stage[r] / 1e9,
		       g.len, (double)g.request_bytes / t_ce[r] / 1e9, (double)g.request_bytes / t_d2d[r] / 1e9);
		fflush(stdout);
	}

	/* The baselines must move the same bytes: the consumer back to the
	 * sentinel, each baseline once more, every byte checked. */
	for (int d2d = 0; d2d < 2; d2d++) {
		uint64_t bad_pat, bad_sent;
		memset(D.view, SENTINEL, D.len);
		if (!dev_copy(D.dev, D.view, D.len, true) || baseline(&P, &D, &g, pb, db, bounce, d2d) < 0 ||
		    !verify(&D, &g, id, db, &bad_pat, &bad_sent)) {
			status = 2;
			goto out;
		}
		if (bad_pat || bad_sent) {
			printf("FAIL: baseline %s: %" PRIu64 " request bytes and %" PRIu64 " other bytes wrong\n",
			       d2d ? "D2D" : "D2H+H2D", bad_pat, bad_sent);
			goto out;
		}
	}

	kvb_hw_stats_t ps, ds;
	kvb_hw_stats_get(P.be, &ps);
	kvb_hw_stats_get(D.be, &ds);
	double gs = (double)g.request_bytes / median(t_stage, o.repeat) / 1e9;
	double gc = (double)g.request_bytes / median(t_ce, o.repeat) / 1e9;
	double gd = (double)g.request_bytes / median(t_d2d, o.repeat) / 1e9;
	const char *base = mode == KVB_DEVMEM_CUDA ? "cudaMemcpyAsync" : "memcpy (emulated)";
	printf("\n%-36s %14s %12s\n", "path (same blocks, same run)", "bytes/request", "median GB/s");
	printf("%-36s %14" PRIu64 " %12.2f\n", "staging: kvbridge hw, TCP loopback", g.request_bytes, gs);
	printf("%-36s %14" PRIu64 " %12.2f\n", mode == KVB_DEVMEM_CUDA ? "copy engine: D2H + H2D, pinned" :
	       "baseline: D2H + H2D (memcpy)", g.request_bytes, gc);
	printf("%-36s %14" PRIu64 " %12.2f\n", mode == KVB_DEVMEM_CUDA ? "copy engine: D2D" : "baseline: D2D (memcpy)",
	       g.request_bytes, gd);
	printf("staging / D2H+H2D: %.3f   (baseline: %s, per block, %d requests)\n", gs / gc, base, o.repeat);
	printf("backend stats: producer gpu_copies %" PRIu64 " gpu_staged_bytes %" PRIu64
	       "; consumer gpu_copies %" PRIu64 " gpu_staged_bytes %" PRIu64 "\n",
	       ps.gpu_copies, ps.gpu_staged_bytes, ds.gpu_copies, ds.gpu_staged_bytes);
	uint64_t moved = g.request_bytes * (uint64_t)o.repeat;
	if (!ps.gpu_copies || !ds.gpu_copies || ps.gpu_staged_bytes < moved || ds.gpu_staged_bytes < moved) {
		printf("FAIL: the staging path did not carry the %" PRIu64 " bytes on both sides\n", moved);
		goto out;
	}
	kvb_counters_t pc, dc;
	kvb_connector_counters(P.c, &pc);
	kvb_connector_counters(D.c, &dc);
	if (pc.blocks_held || pc.live_requests || dc.blocks_held || dc.live_requests) {
		printf("FAIL: at the end the producer holds %" PRIu64 " blocks (%" PRIu64 " live requests), the "
		       "consumer %" PRIu64 " (%" PRIu64 ")\n",
		       pc.blocks_held, pc.live_requests, dc.blocks_held, dc.live_requests);
		goto out;
	}
	printf("PASS: %d requests, %" PRIu64 " bytes staged and verified; no block held\n", o.repeat, moved);
	status = 0;
out:
	side_close(&D);
	side_close(&P);
	kvb_devmem_host_free(mode, bounce);
#ifdef KVB_HAVE_CUDA
	if (stream)
		cudaStreamDestroy(stream);
#endif
	g_source_destroy(ticker);
	g_source_unref(ticker);
	while (g_main_context_iteration(ctx, FALSE))
		;
	g_main_context_unref(ctx);
	g_free(pb);
	g_free(db);
	g_free(t_stage);
	g_free(t_ce);
	g_free(t_d2d);
	g_free(o.memory);
	return status;
}
