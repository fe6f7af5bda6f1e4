/*
 * Model presets or a Hugging Face config.json (kvb_tool_model.h).
 */
#include "config.h"

#include <string.h>

#include <glib.h>
#include <json-glib/json-glib.h>

#include "kvb_tool_model.h"

static int dtype_bytes(const char *d)
{
	if (!d)
		return 0;
	if (!g_ascii_strcasecmp(d, "float32") || !g_ascii_strcasecmp(d, "float") ||
	    !g_ascii_strcasecmp(d, "fp32"))
		return 4;
	if (!g_ascii_strcasecmp(d, "bfloat16") || !g_ascii_strcasecmp(d, "float16") ||
	    !g_ascii_strcasecmp(d, "half") || !g_ascii_strcasecmp(d, "fp16") ||
	    !g_ascii_strcasecmp(d, "bf16"))
		return 2;
	return 0;
}

static int64_t int_member(JsonObject *o, const char *name)
{
	if (!json_object_has_member(o, name))
		return -1;
	JsonNode *n = json_object_get_member(o, name);
	if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_INT64)
		return -1;
	return json_node_get_int(n);
}

static const char *str_member(JsonObject *o, const char *name)
{
	if (!json_object_has_member(o, name))
		return NULL;
	JsonNode *n = json_object_get_member(o, name);
	if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_STRING)
		return NULL;
	return json_node_get_string(n);
}

static bool from_config(const char *dir, kvb_tool_model_t *out, char *why, size_t why_len)
{
	char *path = g_build_filename(dir, "config.json", NULL);
	JsonParser *p = json_parser_new();
	GError *e = NULL;
	bool ok = false;
	if (!json_parser_load_from_file(p, path, &e)) {
		g_snprintf(why, why_len, "%s: %s", path, e->message);
		g_error_free(e);
		goto out;
	}
	JsonNode *root = json_parser_get_root(p);
	if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
		g_snprintf(why, why_len, "%s: not a JSON object", path);
		goto out;
	}
	JsonObject *c = json_node_get_object(root);
	/* multimodal configs keep the language model in text_config */
	if (json_object_has_member(c, "text_config") &&
	    JSON_NODE_HOLDS_OBJECT(json_object_get_member(c, "text_config")))
		c = json_object_get_object_member(c, "text_config");
	int64_t layers = int_member(c, "num_hidden_layers");
	int64_t heads = int_member(c, "num_attention_heads");
	int64_t kv_heads = int_member(c, "num_key_value_heads");
	int64_t hidden = int_member(c, "hidden_size");
	int64_t head_dim = int_member(c, "head_dim");
	if (kv_heads < 0)
		kv_heads = heads;
	if (head_dim < 0 && hidden > 0 && heads > 0)
		head_dim = hidden / heads;
	if (layers <= 0 || layers > 8192 || kv_heads <= 0 || kv_heads > 65536 || head_dim <= 0 ||
	    head_dim > 65536) {
		g_snprintf(why, why_len, "%s: need num_hidden_layers, num_key_value_heads (or "
			   "num_attention_heads) and head_dim (or hidden_size) within range", path);
		goto out;
	}
	const char *dt = str_member(c, "torch_dtype");
	if (!dt)
		dt = str_member(c, "dtype");
	out->m.layers = (uint32_t)layers;
	out->m.kv_heads = (uint32_t)kv_heads;
	out->m.head_dim = (uint32_t)head_dim;
	out->m.dtype_bytes = (uint32_t)(dtype_bytes(dt) ? dtype_bytes(dt) : 2);
	out->m.hidden = hidden > 0 ? (uint32_t)hidden : (uint32_t)(heads * head_dim);
	char *base = g_path_get_basename(dir);
	g_strlcpy(out->name, base, sizeof(out->name));
	g_free(base);
	ok = true;
out:
	g_object_unref(p);
	g_free(path);
	return ok;
}

bool kvb_tool_model_load(const char *spec, const char *dtype, kvb_tool_model_t *out, char *why,
			 size_t why_len)
{
	memset(out, 0, sizeof(*out));
	const kvb_model_t *preset = kvb_model_find(spec);
	if (preset) {
		out->m = *preset;
		g_strlcpy(out->name, preset->name, sizeof(out->name));
	} else if (g_file_test(spec, G_FILE_TEST_IS_DIR)) {
		if (!from_config(spec, out, why, why_len))
			return false;
	} else {
		g_snprintf(why, why_len, "%s is neither a model preset (--list-models) nor a folder with "
			   "a config.json", spec);
		return false;
	}
	if (dtype && g_ascii_strcasecmp(dtype, "auto")) {
		int b = dtype_bytes(dtype);
		if (!b) {
			g_snprintf(why, why_len, "--dtype %s: expected auto, float32, bfloat16 or float16", dtype);
			return false;
		}
		out->m.dtype_bytes = (uint32_t)b;
	}
	out->m.name = out->name;
	return true;
}
