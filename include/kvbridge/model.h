/*
 * Model presets: the KV-cache shape of well-known models, and the layout of
 * a paged KV cache for one worker.
 *
 * KV bytes per token = 2 (K and V) x layers x kv_heads x head_dim x dtype bytes
 * (../shared/research/anchors.md, section 2.4).
 */
#ifndef KVBRIDGE_MODEL_H
#define KVBRIDGE_MODEL_H

#include <stdint.h>
#include <kvbridge/error.h>
#include <kvbridge/layout.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvb_model {
	const char *name;        /* "qwen2.5-0.5b" */
	uint32_t layers;
	uint32_t kv_heads;
	uint32_t head_dim;
	uint32_t dtype_bytes;    /* 2 for bf16 */
	double active_params_b;  /* parameters used per token, billions (MoE: active) */
	uint32_t hidden;         /* model width (query heads x head_dim) */
} kvb_model_t;

/* Built-in presets, terminated by an entry with name NULL. */
KVB_API const kvb_model_t *kvb_model_presets(void);
/* Case-insensitive lookup; NULL when unknown. */
KVB_API const kvb_model_t *kvb_model_find(const char *name);

/* KV bytes per token over all layers and heads. */
KVB_API uint64_t kvb_model_kv_bytes_per_token(const kvb_model_t *model);

/* Describe a paged KV cache for one TP rank: one region per layer (K and V
 * together, head-major within a block: heads x tokens x (K|V) x head_dim),
 * num_blocks blocks of block_tokens tokens, group 0, laid out back to back
 * from base.  regions must hold model->layers entries.  Returns the total
 * bytes the cache spans, or 0 with err set. */
KVB_API uint64_t kvb_model_layout(const kvb_model_t *model, uint32_t tp_size,
				  uint32_t block_tokens, uint32_t num_blocks, uint64_t base,
				  kvb_region_t *regions, kvb_err_t *err);

/* How a layer's K and V sit in registered memory. */
typedef enum kvb_kv_layout {
	KVB_KV_PACKED = 0, /* one region per layer, each head's K and V together in a block
			    * (vLLM 0.16+; what kvb_model_layout builds) */
	KVB_KV_SPLIT = 1,  /* two regions per layer, K then V, each head's bytes together in a
			    * block (vLLM 0.13 - 0.19 on CPU: K and V are separate tensors,
			    * registered one region each) */
} kvb_kv_layout_t;

KVB_API const char *kvb_kv_layout_name(kvb_kv_layout_t kv);
/* "packed" or "split"; KVB_ERR_INVALID otherwise. */
KVB_API int kvb_kv_layout_parse(const char *name, kvb_kv_layout_t *kv);

/* kvb_model_layout for either layout: regions must hold model->layers
 * (packed) or 2 * model->layers (split) entries; *n_regions receives the
 * count.  Split regions are K0, V0, K1, V1, ... with the same layer index
 * for the K and V of one layer (they pair by occurrence). */
KVB_API uint64_t kvb_model_layout_kv(const kvb_model_t *model, kvb_kv_layout_t kv, uint32_t tp_size,
				     uint32_t block_tokens, uint32_t num_blocks, uint64_t base,
				     kvb_region_t *regions, uint32_t *n_regions, kvb_err_t *err);

#ifdef __cplusplus
}
#endif
#endif /* KVBRIDGE_MODEL_H */
