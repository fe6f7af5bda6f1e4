/*
 * kvbridge-serve's KV pools (kvb_serve.h): a paged KV cache shaped like the
 * model (one region per layer, or a K and a V region per layer), in host,
 * emulated GPU or CUDA memory, with the block operations the stand-in
 * engine needs: the test pattern, poison, checks and dumps.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "kvb_devmem.h"
#include "kvb_pattern.h"
#include "kvb_serve.h"

static kvb_devmem_t pool_mem_kind(void)
{
	kvb_devmem_t k = KVB_DEVMEM_HOST;
	kvb_devmem_parse(o.memory ? o.memory : "host", &k);
	return k;
}

static uint8_t *scratch;      /* one block, for GPU pools */
static uint64_t scratch_len;

/* Copy between a pool and host memory; a failure says so (the block check
 * then counts the bytes it could not move). */
static void devcopy(void *dst, const void *src, size_t len, bool to_pool)
{
	char why[256];
	if (!kvb_devmem_copy(pool_mem_kind(), dst, src, len, to_pool, why, sizeof(why)))
		fprintf(stderr, "kvbridge-serve: KV pool copy: %s\n", why);
}

uint8_t *block_ptr(serve_pool_t *p, uint32_t region, uint32_t id)
{
	const kvb_region_t *r = &p->regions[region];
	return (uint8_t *)(uintptr_t)(r->base + (uint64_t)id * r->block_stride);
}

int pool_init(serve_pool_t *p, const char *name, const kvb_tool_model_t *model, kvb_kv_layout_t kv,
	      uint32_t block_tokens, uint32_t n_blocks)
{
	kvb_err_t err;
	memset(p, 0, sizeof(*p));
	p->name = name;
	p->model = *model;
	p->model.m.name = p->model.name;
	p->kv = kv;
	p->block_tokens = block_tokens;
	p->n_blocks = n_blocks;
	p->regions = g_new0(kvb_region_t, 2 * (size_t)model->m.layers);
	p->mem_len = kvb_model_layout_kv(&p->model.m, kv, S.cfg.tp_size, block_tokens, n_blocks, 0,
					 p->regions, &p->n_regions, &err);
	if (!p->mem_len) {
		fprintf(stderr, "kvbridge-serve: %s layout: %s\n", name, err.msg);
		return 2;
	}
	kvb_devmem_t k = pool_mem_kind();
	char why[256] = "";
	p->mem = kvb_devmem_alloc(k, o.gpu, p->mem_len, why, sizeof(why));
	if (!p->mem) {
		fprintf(stderr, "kvbridge-serve: cannot allocate %.1f MiB of %s memory for the %s: %s\n",
			(double)p->mem_len / 1048576.0, kvb_devmem_name(k), name, why);
		return 1;
	}
	uint64_t max_block = 0;
	for (uint32_t i = 0; i < p->n_regions; i++) {
		p->regions[i].base += (uint64_t)(uintptr_t)p->mem;
		if (k != KVB_DEVMEM_HOST) {
			p->regions[i].mem_kind = KVB_MEM_CUDA;
			p->regions[i].device = k == KVB_DEVMEM_CUDA ? o.gpu : 0;
		}
		max_block = MAX(max_block, p->regions[i].block_bytes);
	}
	if (k != KVB_DEVMEM_HOST) {
		if (max_block > scratch_len) {
			scratch = g_realloc(scratch, max_block);
			scratch_len = max_block;
		}
		/* the pool starts with known bytes, as the host pool's zero pages do */
		memset(scratch, 0, max_block);
		for (uint32_t i = 0; i < p->n_regions; i++)
			for (uint32_t b = 0; b < p->regions[i].num_blocks; b++)
				devcopy(block_ptr(p, i, b), scratch, p->regions[i].block_bytes, true);
	}
	p->free_blocks = g_array_new(FALSE, FALSE, sizeof(uint32_t));
	for (int64_t i = (int64_t)n_blocks - 1; i >= 0; i--) {
		uint32_t b = (uint32_t)i;
		g_array_append_val(p->free_blocks, b);
	}
	return 0;
}

void pool_fini(serve_pool_t *p)
{
	if (p->mem)
		kvb_devmem_free(pool_mem_kind(), p->mem, p->mem_len);
	if (p->free_blocks)
		g_array_free(p->free_blocks, TRUE);
	g_free(p->regions);
	memset(p, 0, sizeof(*p));
	g_free(scratch);
	scratch = NULL;
	scratch_len = 0;
}

bool pool_alloc(serve_pool_t *p, uint32_t n, uint32_t **out)
{
	if (n > p->free_blocks->len)
		return false;
	uint32_t *b = g_new(uint32_t, n ? n : 1);
	for (uint32_t i = 0; i < n; i++) {
		b[i] = g_array_index(p->free_blocks, uint32_t, p->free_blocks->len - 1);
		g_array_set_size(p->free_blocks, p->free_blocks->len - 1);
	}
	*out = b;
	return true;
}

void pool_free(serve_pool_t *p, uint32_t *b, uint32_t n)
{
	g_array_append_vals(p->free_blocks, b, n);
	g_free(b);
}

uint32_t pool_blocks_for(const serve_pool_t *p, uint64_t tokens)
{
	uint64_t n = (tokens + p->block_tokens - 1) / p->block_tokens;
	return n ? (uint32_t)MIN(n, (uint64_t)UINT32_MAX) : 1;
}

void pool_copy_block_bytes(serve_pool_t *p, uint32_t region, uint32_t id, uint64_t off, void *host,
			   uint64_t len, bool to_pool)
{
	uint8_t *at = block_ptr(p, region, id) + off;
	if (pool_mem_kind() == KVB_DEVMEM_HOST) {
		if (to_pool)
			memcpy(at, host, len);
		else
			memcpy(host, at, len);
		return;
	}
	if (to_pool)
		devcopy(at, host, len, true);
	else
		devcopy(host, at, len, false);
}

static uint8_t *block_scratch(uint64_t len)
{
	if (len > scratch_len) {
		scratch = g_realloc(scratch, len);
		scratch_len = len;
	}
	return scratch;
}

/* A request's block k of n carries the pattern of its position counted from
 * the last (n - 1 - k): a decoder that asks for fewer blocks gets the
 * producer's last ones (vLLM's rule: its prefix is cached), and those check
 * against its own last positions. */
void pool_fill_pattern(serve_pool_t *p, const char *transfer_id, const uint32_t *b, uint32_t n)
{
	uint64_t seed = kvb_pattern_request_seed(transfer_id);
	for (uint32_t reg = 0; reg < p->n_regions; reg++)
		for (uint32_t k = 0; k < n; k++) {
			uint64_t len = p->regions[reg].block_bytes;
			uint8_t *buf = block_scratch(len);
			kvb_pattern_fill(buf, len, kvb_pattern_block_seed(seed, reg, n - 1 - k));
			pool_copy_block_bytes(p, reg, b[k], 0, buf, len, true);
		}
}

void pool_poison(serve_pool_t *p, const uint32_t *b, uint32_t n)
{
	for (uint32_t reg = 0; reg < p->n_regions; reg++)
		for (uint32_t k = 0; k < n; k++) {
			uint64_t len = p->regions[reg].block_bytes;
			uint8_t *buf = block_scratch(len);
			memset(buf, 0xA5, len);
			pool_copy_block_bytes(p, reg, b[k], 0, buf, len, true);
		}
}

uint64_t pool_check_pattern(serve_pool_t *p, const char *transfer_id, const uint32_t *b, uint32_t n,
			    uint64_t *bytes)
{
	uint64_t seed = kvb_pattern_request_seed(transfer_id), bad = 0;
	*bytes = 0;
	for (uint32_t reg = 0; reg < p->n_regions; reg++)
		for (uint32_t k = 0; k < n; k++) {
			uint64_t len = p->regions[reg].block_bytes;
			uint8_t *buf = block_scratch(len);
			pool_copy_block_bytes(p, reg, b[k], 0, buf, len, false);
			bad += kvb_pattern_mismatches(buf, len, kvb_pattern_block_seed(seed, reg, n - 1 - k));
			*bytes += len;
		}
	return bad;
}

bool pool_dump(serve_pool_t *p, const char *dir, const char *id, const uint32_t *b, uint32_t n)
{
	/* request ids come from clients: keep the file name to one safe word */
	char safe[KVB_ID_MAX];
	g_strlcpy(safe, id, sizeof(safe));
	for (char *c = safe; *c; c++)
		if (!g_ascii_isalnum(*c) && *c != '-' && *c != '_' && *c != '.')
			*c = '_';
	char *path = g_strdup_printf("%s/%s.kv", dir, safe);
	FILE *f = fopen(path, "wb");
	if (!f) {
		fprintf(stderr, "kvbridge-serve: dump %s: %s\n", path, g_strerror(errno));
		g_free(path);
		return false;
	}
	bool ok = true;
	for (uint32_t reg = 0; reg < p->n_regions && ok; reg++)
		for (uint32_t k = 0; k < n && ok; k++) {
			uint64_t len = p->regions[reg].block_bytes;
			uint8_t *buf = block_scratch(len);
			pool_copy_block_bytes(p, reg, b[k], 0, buf, len, false);
			ok = fwrite(buf, 1, len, f) == len;
		}
	if (fclose(f) != 0 || !ok) {
		fprintf(stderr, "kvbridge-serve: dump %s: %s\n", path, g_strerror(errno));
		ok = false;
	}
	/* what the dump holds, for a reader that has only addresses: the
	 * regions and the request's block ids */
	GString *j = g_string_new("{\"regions\":[");
	for (uint32_t reg = 0; reg < p->n_regions; reg++)
		g_string_append_printf(j, "%s{\"base\":%" PRIu64 ",\"block_stride\":%" PRIu64
				       ",\"block_bytes\":%" PRIu64 ",\"num_blocks\":%u}", reg ? "," : "",
				       p->regions[reg].base, p->regions[reg].block_stride,
				       p->regions[reg].block_bytes, p->regions[reg].num_blocks);
	g_string_append(j, "],\"blocks\":[");
	for (uint32_t k = 0; k < n; k++)
		g_string_append_printf(j, "%s%u", k ? "," : "", b[k]);
	g_string_append(j, "]}\n");
	char *jpath = g_strdup_printf("%s/%s.json", dir, safe);
	GError *e = NULL;
	if (ok && !g_file_set_contents(jpath, j->str, (gssize)j->len, &e)) {
		fprintf(stderr, "kvbridge-serve: dump %s: %s\n", jpath, e->message);
		g_error_free(e);
		ok = false;
	}
	g_free(jpath);
	g_string_free(j, TRUE);
	g_free(path);
	return ok;
}

char *pool_describe(const serve_pool_t *p)
{
	const kvb_model_t *m = &p->model.m;
	uint32_t heads = S.cfg.tp_size >= m->kv_heads ? 1 : m->kv_heads / S.cfg.tp_size;
	return g_strdup_printf("%s: %u layers x %u KV heads x %u dims, %s, %u tokens a block, %s "
			       "(%u regions of %" PRIu64 "-byte blocks)",
			       m->name, m->layers, heads, m->head_dim,
			       m->dtype_bytes == 4 ? "float32" : m->dtype_bytes == 2 ? "16-bit" : "?",
			       p->block_tokens, p->kv == KVB_KV_SPLIT ? "K and V split" : "K|V packed",
			       p->n_regions, p->regions ? p->regions[0].block_bytes : 0);
}

const char *pool_layer_name(const serve_pool_t *p, uint32_t i)
{
	static char name[64];
	g_snprintf(name, sizeof(name), "model.layers.%d.self_attn.attn", p->regions[i].layer);
	return name;
}
