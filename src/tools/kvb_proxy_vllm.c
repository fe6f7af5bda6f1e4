/* The router contracts of vLLM's MooncakeConnector (kvb_proxy_vllm.h). */
#include "config.h"

#include <string.h>

#include <glib.h>
#include <json-glib/json-glib.h>
#include <kvbridge/error.h>

#include "kvb_proxy_vllm.h"
#include "kvb_vllm_bootstrap_wire.h"

bool kvb_proxy_protocol_parse(const char *s, kvb_proxy_protocol_t *out)
{
	if (!s)
		return false;
	if (!g_ascii_strcasecmp(s, "gen0")) {
		*out = KVB_PROXY_GEN0;
		return true;
	}
	if (!g_ascii_strcasecmp(s, "gen1") || !g_ascii_strcasecmp(s, "gen2")) {
		*out = KVB_PROXY_GEN2;
		return true;
	}
	return false;
}

const char *kvb_proxy_protocol_name(kvb_proxy_protocol_t p)
{
	return p == KVB_PROXY_GEN0 ? "gen0" : "gen2";
}

static char *node_to_json(JsonNode *n)
{
	JsonGenerator *g = json_generator_new();
	json_generator_set_root(g, n);
	char *s = json_generator_to_data(g, NULL);
	g_object_unref(g);
	return s;
}

/* A copy of the request object whose top-level members can be set and
 * removed without touching the original.  json_node_copy alone is not one:
 * the copy shares the JsonObject, so the P leg's max_tokens 1 and stream
 * false would reach D too.  Nested values are shared; nothing here edits
 * them in place. */
static JsonNode *copy_request(JsonNode *request)
{
	JsonObject *src = json_node_get_object(request);
	JsonObject *dst = json_object_new();
	GList *names = json_object_get_members(src);
	for (GList *l = names; l; l = l->next)
		json_object_set_member(dst, l->data, json_node_copy(json_object_get_member(src, l->data)));
	g_list_free(names);
	JsonNode *n = json_node_new(JSON_NODE_OBJECT);
	json_node_take_object(n, dst);
	return n;
}

char *kvb_proxy_prefill_body(kvb_proxy_protocol_t p, JsonNode *request, const char *transfer_id)
{
	JsonNode *node = copy_request(request);
	JsonObject *o = json_node_get_object(node);
	JsonObject *kp = json_object_new();
	json_object_set_boolean_member(kp, "do_remote_decode", TRUE);
	json_object_set_boolean_member(kp, "do_remote_prefill", FALSE);
	if (p == KVB_PROXY_GEN0) {
		json_object_set_null_member(kp, "remote_engine_id");
		json_object_set_null_member(kp, "remote_block_ids");
		json_object_set_null_member(kp, "remote_host");
		json_object_set_null_member(kp, "remote_port");
	} else {
		json_object_set_string_member(kp, "transfer_id", transfer_id);
	}
	json_object_set_object_member(o, "kv_transfer_params", kp);
	json_object_set_boolean_member(o, "stream", FALSE);
	json_object_set_int_member(o, "max_tokens", 1);
	if (json_object_has_member(o, "max_completion_tokens"))
		json_object_set_int_member(o, "max_completion_tokens", 1);
	json_object_remove_member(o, "min_tokens");
	json_object_remove_member(o, "min_completion_tokens");
	json_object_remove_member(o, "stream_options");
	char *s = node_to_json(node);
	json_node_unref(node);
	return s;
}

char *kvb_proxy_gen0_decode_body(JsonNode *request, const char *p_answer, size_t p_answer_len,
				 kvb_err_t *err)
{
	JsonParser *rp = json_parser_new();
	JsonObject *params = NULL;
	if (json_parser_load_from_data(rp, p_answer, (gssize)p_answer_len, NULL) &&
	    JSON_NODE_HOLDS_OBJECT(json_parser_get_root(rp))) {
		JsonObject *ro = json_node_get_object(json_parser_get_root(rp));
		if (json_object_has_member(ro, "kv_transfer_params") &&
		    JSON_NODE_HOLDS_OBJECT(json_object_get_member(ro, "kv_transfer_params")))
			params = json_object_get_object_member(ro, "kv_transfer_params");
	}
	if (!params) {
		kvb_err_set(err, KVB_ERR_PROTOCOL,
			    "the prefiller's answer carries no kv_transfer_params (is it a KV producer?)");
		g_object_unref(rp);
		return NULL;
	}
	JsonNode *node = copy_request(request);
	json_object_set_object_member(json_node_get_object(node), "kv_transfer_params",
				      json_object_ref(params));
	char *s = node_to_json(node);
	json_node_unref(node);
	g_object_unref(rp);
	return s;
}

char *kvb_proxy_gen2_decode_body(JsonNode *request, const char *bootstrap_addr,
				 const char *engine_id, const char *transfer_id)
{
	JsonNode *node = copy_request(request);
	JsonObject *kp = json_object_new();
	json_object_set_boolean_member(kp, "do_remote_decode", FALSE);
	json_object_set_boolean_member(kp, "do_remote_prefill", TRUE);
	json_object_set_string_member(kp, "remote_bootstrap_addr", bootstrap_addr);
	json_object_set_string_member(kp, "remote_engine_id", engine_id);
	json_object_set_string_member(kp, "transfer_id", transfer_id);
	json_object_set_object_member(json_node_get_object(node), "kv_transfer_params", kp);
	char *s = node_to_json(node);
	json_node_unref(node);
	return s;
}

char *kvb_proxy_bootstrap_addr(const char *host, uint16_t port)
{
	if (strchr(host, ':') && host[0] != '[')
		return g_strdup_printf("http://[%s]:%u", host, port);
	return g_strdup_printf("http://%s:%u", host, port);
}

static gint dp_cmp(gconstpointer a, gconstpointer b)
{
	const kvb_proxy_dp_t *x = a, *y = b;
	return x->dp_rank < y->dp_rank ? -1 : x->dp_rank > y->dp_rank;
}

GArray *kvb_proxy_query_dps(const char *body, size_t len, kvb_err_t *err)
{
	kvb_vllm_boot_query_t q;
	if (kvb_vllm_query_decode(body, len, &q, err) != KVB_OK)
		return NULL;
	if (!q.n_engines) {
		kvb_err_set(err, KVB_ERR_PROTOCOL,
			    "/query: no dp rank registered (an empty object: P's workers have not "
			    "registered with this bootstrap server)");
		kvb_vllm_query_clear(&q);
		return NULL;
	}
	GArray *dps = g_array_sized_new(FALSE, TRUE, sizeof(kvb_proxy_dp_t), q.n_engines);
	for (uint32_t i = 0; i < q.n_engines; i++) {
		kvb_proxy_dp_t d = {.dp_rank = q.engines[i].dp_rank};
		G_STATIC_ASSERT(sizeof(d.engine_id) >= KVB_VLLM_ENGINE_ID_MAX);
		g_strlcpy(d.engine_id, q.engines[i].engine_id, sizeof(d.engine_id));
		g_array_append_val(dps, d);
	}
	g_array_sort(dps, dp_cmp);
	kvb_vllm_query_clear(&q);
	return dps;
}
