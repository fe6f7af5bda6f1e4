/*
 * Model presets and the paged KV-cache layout of one TP rank.  Shapes from
 * ../shared/research/anchors.md, section 2.4 (bf16, 2 bytes per element).
 */
#include "config.h"

#include <inttypes.h>

#include <glib.h>
#include <kvbridge/model.h>

/* Shapes from ../shared/research/anchors.md (section 2.4); active parameters
 * and width from the models' published configs (config.json: hidden_size;
 * parameter counts from the model cards). */
static const kvb_model_t model_presets[] = {
	/* name              layers kv_heads head_dim dtype  params_b hidden */
	{"qwen2.5-0.5b",      24,  2,  64, 2,   0.49,  896},
	{"qwen2.5-7b",        28,  4, 128, 2,   7.6,  3584},
	{"llama-3-8b",        32,  8, 128, 2,   8.0,  4096},
	{"llama-3.1-8b",      32,  8, 128, 2,   8.0,  4096},
	{"mistral-7b",        32,  8, 128, 2,   7.2,  4096},
	{"qwen3-8b",          36,  8, 128, 2,   8.2,  4096},
	{"llama-2-7b",        32, 32, 128, 2,   6.7,  4096},
	{"llama-3-70b",       80,  8, 128, 2,  70.6,  8192},
	{"llama-3.1-70b",     80,  8, 128, 2,  70.6,  8192},
	{"qwen2.5-72b",       80,  8, 128, 2,  72.7,  8192},
	{"qwen3-235b-a22b",   94,  4, 128, 2,  22.0,  4096},
	{NULL, 0, 0, 0, 0, 0, 0},
};

const kvb_model_t *kvb_model_presets(void)
{
	return model_presets;
}

const kvb_model_t *kvb_model_find(const char *name)
{
	if (!name)
		return NULL;
	for (const kvb_model_t *m = model_presets; m->name; m++)
		if (g_ascii_strcasecmp(m->name, name) == 0)
			return m;
	return NULL;
}

uint64_t kvb_model_kv_bytes_per_token(const kvb_model_t *model)
{
	if (!model)
		return 0;
	return 2 * (uint64_t)model->layers * model->kv_heads * model->head_dim * model->dtype_bytes;
}

/* a * b into *out, false on 64-bit overflow */
static bool mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
	if (a && b > UINT64_MAX / a)
		return false;
	*out = a * b;
	return true;
}

/*
 * Heads are split across ranks (replicated when tp_size > kv_heads, as vLLM
 * does), so a block holds heads_per_rank x block_tokens x (K|V) x head_dim
 * elements with no padding: block_stride == block_bytes.  Every product is
 * overflow-checked because sizes come from user configuration.
 */
uint64_t kvb_model_layout(const kvb_model_t *model, uint32_t tp_size, uint32_t block_tokens,
			  uint32_t num_blocks, uint64_t base, kvb_region_t *regions, kvb_err_t *err)
{
	uint64_t block_bytes, region_bytes, total;

	if (!model || !regions) {
		kvb_err_set(err, KVB_ERR_INVALID, "model or regions is NULL");
		return 0;
	}
	if (model->layers == 0 || model->kv_heads == 0 || model->head_dim == 0 ||
	    model->dtype_bytes == 0) {
		kvb_err_set(err, KVB_ERR_INVALID,
			    "model %s has a zero dimension (layers %u, kv_heads %u, head_dim %u, "
			    "dtype_bytes %u)",
			    model->name ? model->name : "(unnamed)", model->layers, model->kv_heads,
			    model->head_dim, model->dtype_bytes);
		return 0;
	}
	if (model->layers > KVB_MAX_REGIONS) {
		kvb_err_set(err, KVB_ERR_INVALID, "model has %u layers, the region limit is %u",
			    model->layers, KVB_MAX_REGIONS);
		return 0;
	}
	if (tp_size == 0 || block_tokens == 0 || num_blocks == 0) {
		kvb_err_set(err, KVB_ERR_INVALID, "tp_size %u, block_tokens %u, num_blocks %u: none may be 0",
			    tp_size, block_tokens, num_blocks);
		return 0;
	}
	if (model->kv_heads % tp_size && tp_size % model->kv_heads) {
		kvb_err_set(err, KVB_ERR_LAYOUT, "tp size %u and %u kv heads: neither divides the other",
			    tp_size, model->kv_heads);
		return 0;
	}
	uint64_t heads = tp_size >= model->kv_heads ? 1 : model->kv_heads / tp_size;
	uint64_t elem_bytes = 2 * (uint64_t)model->head_dim * model->dtype_bytes; /* K and V */
	if (!mul_u64(heads, block_tokens, &block_bytes) ||
	    !mul_u64(block_bytes, elem_bytes, &block_bytes) ||
	    !mul_u64(block_bytes, num_blocks, &region_bytes) ||
	    !mul_u64(region_bytes, model->layers, &total) || total > UINT64_MAX - base) {
		kvb_err_set(err, KVB_ERR_INVALID,
			    "cache of %u layers x %u blocks x %u tokens at 0x%" PRIx64
			    " overflows 64 bits",
			    model->layers, num_blocks, block_tokens, base);
		return 0;
	}
	for (uint32_t i = 0; i < model->layers; i++) {
		regions[i] = (kvb_region_t){
			.base = base + (uint64_t)i * region_bytes,
			.block_stride = block_bytes,
			.block_bytes = block_bytes,
			.num_blocks = num_blocks,
			.layer = (int32_t)i,
			.group = 0,
			.mem_kind = KVB_MEM_HOST,
			.device = -1,
		};
	}
	return total;
}

const char *kvb_kv_layout_name(kvb_kv_layout_t kv)
{
	return kv == KVB_KV_SPLIT ? "split" : "packed";
}

int kvb_kv_layout_parse(const char *name, kvb_kv_layout_t *kv)
{
	if (name && !g_ascii_strcasecmp(name, "packed")) {
		*kv = KVB_KV_PACKED;
		return KVB_OK;
	}
	if (name && !g_ascii_strcasecmp(name, "split")) {
		*kv = KVB_KV_SPLIT;
		return KVB_OK;
	}
	return KVB_ERR_INVALID;
}

/* The split layout halves each packed block into a K and a V region of the
 * same number of blocks, laid out K0, V0, K1, V1, ... back to back. */
uint64_t kvb_model_layout_kv(const kvb_model_t *model, kvb_kv_layout_t kv, uint32_t tp_size,
			     uint32_t block_tokens, uint32_t num_blocks, uint64_t base,
			     kvb_region_t *regions, uint32_t *n_regions, kvb_err_t *err)
{
	if (kv != KVB_KV_PACKED && kv != KVB_KV_SPLIT) {
		kvb_err_set(err, KVB_ERR_INVALID, "KV layout %d unknown", (int)kv);
		return 0;
	}
	if (kv == KVB_KV_PACKED || !model || !regions) {
		uint64_t total = kvb_model_layout(model, tp_size, block_tokens, num_blocks, base, regions, err);
		if (total && n_regions)
			*n_regions = model->layers;
		return total;
	}
	if (model->layers > KVB_MAX_REGIONS / 2) {
		kvb_err_set(err, KVB_ERR_INVALID, "model has %u layers, the region limit is %u (two a layer)",
			    model->layers, KVB_MAX_REGIONS);
		return 0;
	}
	/* the packed layout of the same model gives sizes and checks */
	kvb_region_t *packed = g_new(kvb_region_t, model->layers);
	uint64_t total = kvb_model_layout(model, tp_size, block_tokens, num_blocks, base, packed, err);
	if (!total) {
		g_free(packed);
		return 0;
	}
	uint64_t half = packed[0].block_bytes / 2;
	uint64_t region_bytes = half * num_blocks;
	for (uint32_t i = 0; i < model->layers; i++)
		for (uint32_t h = 0; h < 2; h++) {
			kvb_region_t *r = &regions[2 * i + h];
			*r = packed[i];
			r->base = base + (2 * (uint64_t)i + h) * region_bytes;
			r->block_stride = half;
			r->block_bytes = half;
		}
	g_free(packed);
	if (n_regions)
		*n_regions = 2 * model->layers;
	return total;
}
