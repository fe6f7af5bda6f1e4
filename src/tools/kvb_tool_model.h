/*
 * The model a tool's KV pool is shaped after: a built-in preset by name, or
 * a Hugging Face model folder (its config.json), as vLLM takes --model.
 */
#ifndef KVB_TOOL_MODEL_H
#define KVB_TOOL_MODEL_H

#include <stdbool.h>
#include <stddef.h>

#include <kvbridge/model.h>

typedef struct kvb_tool_model {
	kvb_model_t m;           /* m.name points at name */
	char name[256];
} kvb_tool_model_t;

/*
 * spec: a preset name (kvb_model_presets) or a folder holding config.json
 * (num_hidden_layers, num_key_value_heads or num_attention_heads, head_dim
 * or hidden_size / num_attention_heads, torch_dtype or dtype).  dtype: NULL
 * or "auto" (the config's), "float32", "bfloat16", "float16" (vLLM's
 * --dtype; the KV cache follows it).  false with the reason in why.
 */
bool kvb_tool_model_load(const char *spec, const char *dtype, kvb_tool_model_t *out, char *why,
			 size_t why_len);

#endif /* KVB_TOOL_MODEL_H */
