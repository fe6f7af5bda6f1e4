/*
 * kvbridge-serve: a prefill or decode worker with a stand-in engine, on the
 * hw backend.  It speaks what real peers speak:
 *
 *  - an OpenAI-style HTTP front (POST /v1/completions, /v1/chat/completions)
 *    with vLLM's kv_transfer_params, so kvbridge-proxy or vLLM's toy proxy
 *    can route requests to it;
 *  - as a producer, vLLM's MooncakeConnector side channel (Gen 0: ZMQ
 *    ROUTER on VLLM_MOONCAKE_BOOTSTRAP_PORT + dp_rank * tp_size + tp_rank)
 *    and the Mooncake handshake + TCP transport, so a vLLM decoder can pull
 *    from it;
 *  - as a consumer, the same side channel towards a producer (vllm://), or
 *    kvbridge's own control stream when the producer is a kvbridge-serve.
 *
 * The engine allocates blocks from a KV pool laid out like the model preset
 * (one region per layer), "prefills" by writing a deterministic pattern
 * derived from the request id, and the consumer checks every byte it
 * received against the same pattern.  GET /stats reports counters, pool and
 * held blocks (tests use it to check that nothing leaks); GET /layout
 * reports the regions (a vLLM-style decoder mirrors them).
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>
#include <glib-unix.h>
#include <json-glib/json-glib.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/hw.h>

#include "kvb_devmem.h"
#include "kvb_pattern.h"
#include "kvb_tool_http.h"

typedef struct serve_opts {
	gchar *role;
	gchar *config;
	gchar *model;
	gint blocks;
	gint block_tokens;
	gchar *host;
	gchar *bind;
	gint http_port;
	gint rpc_port;
	gint data_port;
	gint nics;
	gchar **nic_addrs;
	gchar *pull_protocol;
	gchar *events;
	gdouble lease_s;
	gboolean verbose;
	gboolean list_models;
	gint tp_size, tp_rank, dp_rank;
	gchar *rdma_devices;
	gchar *memory;
	gint gpu;
} serve_opts_t;

static serve_opts_t o = {.blocks = 1024, .block_tokens = 16, .http_port = 8100, .nics = 1,
			 .lease_s = -1, .tp_size = -1, .tp_rank = -1, .dp_rank = -1};

typedef struct prod_req {
	char id[KVB_ID_MAX];
	uint32_t *blocks;
	uint32_t n;
	uint64_t ready_ns;
} prod_req_t;

typedef struct cons_req {
	char id[KVB_ID_MAX];
	uint32_t *blocks;
	uint32_t n;
	uint64_t conn_id;        /* the HTTP client waiting for the answer */
	uint64_t start_ns;
	uint64_t tokens;
} cons_req_t;

typedef struct serve {
	kvb_config_t cfg;
	const kvb_model_t *model;
	kvb_region_t *regions;
	uint32_t n_regions;
	uint8_t *mem;
	uint64_t mem_len;
	GArray *free_blocks;     /* uint32_t stack */
	kvb_backend_t *be;
	kvb_connector_t *conn;
	GMainContext *ctx;
	GMainLoop *loop;
	GSource *progress_idle;
	kvb_httpd_t *httpd;
	GHashTable *prod;        /* id -> prod_req_t* */
	GHashTable *cons;        /* id -> cons_req_t* */
	uint16_t side_base;      /* side-channel port of dp_rank's tp rank 0 */
	FILE *events;
	uint64_t served_ok, served_failed, verified_bytes, mismatched_bytes;
} serve_t;

static serve_t S;

static uint64_t mono_ns(void)
{
	return (uint64_t)g_get_monotonic_time() * 1000u;
}

static void logv(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static void logv(const char *fmt, ...)
{
	if (!o.verbose)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "kvbridge-serve: ");
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* ---- KV pool -------------------------------------------------------------- */

static bool pool_alloc(uint32_t n, uint32_t **out)
{
	if (n > S.free_blocks->len)
		return false;
	uint32_t *b = g_new(uint32_t, n ? n : 1);
	for (uint32_t i = 0; i < n; i++) {
		b[i] = g_array_index(S.free_blocks, uint32_t, S.free_blocks->len - 1);
		g_array_set_size(S.free_blocks, S.free_blocks->len - 1);
	}
	*out = b;
	return true;
}

static void pool_free(uint32_t *b, uint32_t n)
{
	g_array_append_vals(S.free_blocks, b, n);
	g_free(b);
}

static uint8_t *block_ptr(uint32_t region, uint32_t id)
{
	const kvb_region_t *r = &S.regions[region];
	return (uint8_t *)(uintptr_t)(r->base + (uint64_t)id * r->block_stride);
}

/* ---- the KV pool's memory: host, emulated GPU or CUDA --------------------- */

static kvb_devmem_t pool_mem;
static uint8_t *scratch;      /* one block, for GPU pools */

/* Copy between the pool and host memory; a failure says so once per call
 * (the block check then counts the bytes it could not move). */
static void pool_copy(void *dst, const void *src, size_t len, bool to_pool)
{
	char why[256];
	if (!kvb_devmem_copy(pool_mem, dst, src, len, to_pool, why, sizeof(why)))
		fprintf(stderr, "kvbridge-serve: KV pool copy: %s\n", why);
}

static void block_fill(uint32_t reg, uint32_t id, uint64_t seed)
{
	uint64_t len = S.regions[reg].block_bytes;
	if (pool_mem == KVB_DEVMEM_HOST) {
		kvb_pattern_fill(block_ptr(reg, id), len, seed);
		return;
	}
	kvb_pattern_fill(scratch, len, seed);
	pool_copy(block_ptr(reg, id), scratch, len, true);
}

static void block_poison(uint32_t reg, uint32_t id)
{
	uint64_t len = S.regions[reg].block_bytes;
	if (pool_mem == KVB_DEVMEM_HOST) {
		memset(block_ptr(reg, id), 0xA5, len);
		return;
	}
	memset(scratch, 0xA5, len);
	pool_copy(block_ptr(reg, id), scratch, len, true);
}

static uint64_t block_mismatches(uint32_t reg, uint32_t id, uint64_t seed)
{
	uint64_t len = S.regions[reg].block_bytes;
	if (pool_mem == KVB_DEVMEM_HOST)
		return kvb_pattern_mismatches(block_ptr(reg, id), len, seed);
	pool_copy(scratch, block_ptr(reg, id), len, false);
	return kvb_pattern_mismatches(scratch, len, seed);
}

/* ---- progress ------------------------------------------------------------- */

/* The backend's warnings (a refused vLLM request, a peer gone) always reach
 * the log: they are what an operator looks for when a decoder reports
 * trans_error. */
static void hw_warning(void *arg, const char *line)
{
	(void)arg;
	fprintf(stderr, "kvbridge-serve: warning: %s\n", line);
}

static void on_record(const kvb_xfer_record_t *r, void *user)
{
	(void)user;
	if (!S.events)
		return;
	char line[2048];
	int n = kvb_xfer_record_json(r, line, sizeof(line));
	if (n > 0 && (size_t)n < sizeof(line)) {
		fputs(line, S.events);
		fputc('\n', S.events);
		fflush(S.events);
	}
}

static void consumer_answer(cons_req_t *r, const kvb_finished_t *f)
{
	uint64_t elapsed = mono_ns() - r->start_ns;
	if (f->state != KVB_CONSUMER_DONE) {
		S.served_failed++;
		char msg[KVB_REASON_MAX + 96];
		g_snprintf(msg, sizeof(msg), "KV transfer failed: %s (%s)", kvb_status_name(f->status),
			   f->reason);
		logv("request %s: %s", r->id, msg);
		kvb_httpd_respond_error(S.httpd, r->conn_id, f->status == KVB_ERR_TIMEOUT ? 504 : 502,
					"KVTransferError", msg);
		return;
	}
	/* every byte of every block, against the producer's pattern */
	uint64_t seed = kvb_pattern_request_seed(r->id), bad = 0, bytes = 0;
	for (uint32_t reg = 0; reg < S.n_regions; reg++)
		for (uint32_t k = 0; k < r->n; k++) {
			uint64_t len = S.regions[reg].block_bytes;
			bad += block_mismatches(reg, r->blocks[k], kvb_pattern_block_seed(seed, reg, k));
			bytes += len;
		}
	S.verified_bytes += bytes - bad;
	S.mismatched_bytes += bad;
	if (bad) {
		S.served_failed++;
		char msg[160];
		g_snprintf(msg, sizeof(msg), "KV verification failed: %" PRIu64 " of %" PRIu64
					     " bytes differ from the producer's pattern", bad, bytes);
		kvb_httpd_respond_error(S.httpd, r->conn_id, 500, "KVVerificationError", msg);
		return;
	}
	S.served_ok++;
	logv("request %s: %u blocks, %" PRIu64 " bytes verified in %.3f ms", r->id, r->n, bytes,
	     (double)elapsed / 1e6);
	GString *s = g_string_new(NULL);
	g_string_append_printf(s,
		"{\"id\":\"cmpl-%s\",\"object\":\"text_completion\",\"model\":\"%s\","
		"\"choices\":[{\"index\":0,\"text\":\"kvbridge: %u blocks x %u layers received and verified\","
		"\"finish_reason\":\"length\"}],"
		"\"usage\":{\"prompt_tokens\":%" PRIu64 ",\"completion_tokens\":1,\"total_tokens\":%" PRIu64 "},"
		"\"kvbridge\":{\"state\":\"done\",\"blocks\":%u,\"verified_bytes\":%" PRIu64
		",\"mismatched_bytes\":0,\"transfer_ms\":%.3f}}\n",
		r->id, S.model->name, r->n, S.n_regions, r->tokens, r->tokens + 1, r->n, bytes,
		(double)elapsed / 1e6);
	kvb_httpd_respond(S.httpd, r->conn_id, 200, "application/json", s->str, s->len);
	g_string_free(s, TRUE);
}

static void collect_finished(void)
{
	kvb_finished_t f[32];
	int n;
	while ((n = kvb_connector_poll_finished(S.conn, f, 32)) > 0) {
		for (int i = 0; i < n; i++) {
			if (f[i].role == KVB_ROLE_PRODUCER) {
				prod_req_t *r = g_hash_table_lookup(S.prod, f[i].id);
				logv("producer %s: %s%s%s", f[i].id, kvb_producer_state_name(f[i].state),
				     f[i].reason[0] ? ": " : "", f[i].reason);
				if (r) {
					pool_free(r->blocks, r->n);
					r->blocks = NULL;
					g_hash_table_remove(S.prod, f[i].id);
				}
			} else {
				cons_req_t *r = g_hash_table_lookup(S.cons, f[i].id);
				if (r) {
					consumer_answer(r, &f[i]);
					pool_free(r->blocks, r->n);
					r->blocks = NULL;
					g_hash_table_remove(S.cons, f[i].id);
				}
			}
		}
	}
}

static gboolean progress_cb(gpointer data)
{
	(void)data;
	int guard = 0;
	while (kvb_connector_progress(S.conn) > 0 && guard++ < 64)
		collect_finished();
	collect_finished();
	if (S.progress_idle) {
		g_source_unref(S.progress_idle);
		S.progress_idle = NULL;
	}
	return G_SOURCE_REMOVE;
}

static void schedule_progress(void)
{
	if (S.progress_idle)
		return;
	S.progress_idle = g_idle_source_new();
	g_source_set_callback(S.progress_idle, progress_cb, NULL, NULL);
	g_source_attach(S.progress_idle, S.ctx);
}

static void on_backend_event(void *user)
{
	(void)user;
	schedule_progress();
}

static gboolean tick(gpointer data)
{
	(void)data;
	schedule_progress();
	return G_SOURCE_CONTINUE;
}

/* ---- HTTP front ----------------------------------------------------------- */

static uint64_t count_words(const char *s)
{
	uint64_t n = 0;
	bool in = false;
	for (; s && *s; s++) {
		bool sp = g_ascii_isspace(*s);
		if (!sp && !in)
			n++;
		in = !sp;
	}
	return n;
}

/* Prompt length in tokens: kvbridge_tokens in kv_transfer_params if given,
 * else prompt_token_ids / a token-id prompt array, else words of the prompt
 * or of the chat messages. */
static uint64_t prompt_tokens(JsonObject *body, JsonObject *params)
{
	if (params && json_object_has_member(params, "kvbridge_tokens"))
		return (uint64_t)MAX(0, json_object_get_int_member(params, "kvbridge_tokens"));
	JsonNode *p = json_object_get_member(body, "prompt");
	if (p && JSON_NODE_HOLDS_ARRAY(p))
		return json_array_get_length(json_node_get_array(p));
	if (p && JSON_NODE_HOLDS_VALUE(p) && json_node_get_value_type(p) == G_TYPE_STRING)
		return count_words(json_node_get_string(p));
	JsonNode *m = json_object_get_member(body, "messages");
	uint64_t n = 0;
	if (m && JSON_NODE_HOLDS_ARRAY(m)) {
		JsonArray *a = json_node_get_array(m);
		for (guint i = 0; i < json_array_get_length(a); i++) {
			JsonNode *e = json_array_get_element(a, i);
			if (JSON_NODE_HOLDS_OBJECT(e)) {
				JsonObject *eo = json_node_get_object(e);
				if (json_object_has_member(eo, "content") &&
				    JSON_NODE_HOLDS_VALUE(json_object_get_member(eo, "content")))
					n += count_words(json_object_get_string_member(eo, "content"));
			}
		}
	}
	return n;
}

static bool param_true(JsonObject *params, const char *name)
{
	if (!params || !json_object_has_member(params, name))
		return false;
	JsonNode *n = json_object_get_member(params, name);
	return JSON_NODE_HOLDS_VALUE(n) && json_node_get_value_type(n) == G_TYPE_BOOLEAN &&
	       json_node_get_boolean(n);
}

static const char *param_str(JsonObject *params, const char *name)
{
	if (!params || !json_object_has_member(params, name))
		return NULL;
	JsonNode *n = json_object_get_member(params, name);
	if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_STRING)
		return NULL;
	return json_node_get_string(n);
}

static bool param_int(JsonObject *params, const char *name, int64_t *out)
{
	if (!params || !json_object_has_member(params, name))
		return false;
	JsonNode *n = json_object_get_member(params, name);
	if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_INT64)
		return false;
	*out = json_node_get_int(n);
	return true;
}

static void handle_produce(uint64_t cid, const char *rid, uint64_t tokens)
{
	kvb_err_t err;
	uint32_t n = (uint32_t)((tokens + (uint64_t)o.block_tokens - 1) / (uint64_t)o.block_tokens);
	if (!n)
		n = 1;
	uint32_t *blocks;
	if (g_hash_table_contains(S.prod, rid)) {
		kvb_httpd_respond_error(S.httpd, cid, 409, "ConflictError", "request id already in flight");
		return;
	}
	if (!pool_alloc(n, &blocks)) {
		kvb_httpd_respond_error(S.httpd, cid, 503, "KVPoolFull",
					"not enough free KV blocks for this prompt; retry later");
		return;
	}
	/* "prefill": the pattern every receiver checks */
	uint64_t seed = kvb_pattern_request_seed(rid);
	for (uint32_t reg = 0; reg < S.n_regions; reg++)
		for (uint32_t k = 0; k < n; k++)
			block_fill(reg, blocks[k], kvb_pattern_block_seed(seed, reg, k));
	kvb_block_list_t group = {blocks, n};
	if (kvb_producer_begin(S.conn, rid, &err) != KVB_OK ||
	    kvb_producer_ready(S.conn, rid, &group, 1, &err) != KVB_OK) {
		pool_free(blocks, n);
		kvb_httpd_respond_error(S.httpd, cid, 409, "KVTransferError", err.msg);
		return;
	}
	prod_req_t *r = g_new0(prod_req_t, 1);
	g_strlcpy(r->id, rid, sizeof(r->id));
	r->blocks = blocks;
	r->n = n;
	r->ready_ns = mono_ns();
	g_hash_table_insert(S.prod, r->id, r);
	logv("producer %s: %u blocks ready (%" PRIu64 " tokens)", rid, n, tokens);
	GString *s = g_string_new(NULL);
	g_string_append_printf(s,
		"{\"id\":\"cmpl-%s\",\"object\":\"text_completion\",\"model\":\"%s\","
		"\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":\"length\"}],"
		"\"usage\":{\"prompt_tokens\":%" PRIu64 ",\"completion_tokens\":1,\"total_tokens\":%" PRIu64 "},"
		"\"kv_transfer_params\":{\"do_remote_prefill\":true,\"do_remote_decode\":false,"
		"\"remote_host\":\"%s\",\"remote_port\":%u,\"remote_engine_id\":\"%s\","
		"\"tp_size\":%u,\"kvbridge_segment\":\"%s\",\"kvbridge_tokens\":%" PRIu64 ","
		"\"remote_block_ids\":[",
		rid, S.model->name, tokens, tokens + 1, o.host ? o.host : "127.0.0.1", S.side_base,
		S.cfg.engine_id, S.cfg.tp_size, kvb_hw_segment_name(S.be), tokens);
	for (uint32_t i = 0; i < n; i++)
		g_string_append_printf(s, "%s%u", i ? "," : "", blocks[i]);
	g_string_append(s, "]}}\n");
	kvb_httpd_respond(S.httpd, cid, 200, "application/json", s->str, s->len);
	g_string_free(s, TRUE);
	schedule_progress();
}

static void handle_consume(uint64_t cid, const char *rid, uint64_t tokens, JsonObject *params)
{
	kvb_err_t err;
	const char *host = param_str(params, "remote_host");
	const char *seg = param_str(params, "kvbridge_segment");
	int64_t port = 0;
	bool use_kvb = seg && g_strcmp0(o.pull_protocol, "vllm") != 0;
	if (g_strcmp0(o.pull_protocol, "kvb") == 0 && !seg) {
		kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError",
					"--pull-protocol kvb needs kvbridge_segment in kv_transfer_params");
		return;
	}
	if (!use_kvb && (!host || !param_int(params, "remote_port", &port) || port <= 0 || port > 65535)) {
		kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError",
					"kv_transfer_params needs remote_host and remote_port (the producer's "
					"side channel) for a remote prefill");
		return;
	}
	if (g_hash_table_contains(S.cons, rid)) {
		kvb_httpd_respond_error(S.httpd, cid, 409, "ConflictError", "request id already in flight");
		return;
	}
	uint32_t n = (uint32_t)((tokens + (uint64_t)o.block_tokens - 1) / (uint64_t)o.block_tokens);
	if (!n)
		n = 1;
	uint32_t *blocks;
	if (!pool_alloc(n, &blocks)) {
		kvb_httpd_respond_error(S.httpd, cid, 503, "KVPoolFull", "not enough free KV blocks");
		return;
	}
	/* stale bytes must not pass the check: poison the blocks first */
	for (uint32_t reg = 0; reg < S.n_regions; reg++)
		for (uint32_t k = 0; k < n; k++)
			block_poison(reg, blocks[k]);
	char addr[KVB_ADDR_MAX];
	if (use_kvb)
		g_snprintf(addr, sizeof(addr), "kvb://%s", seg);
	else
		g_snprintf(addr, sizeof(addr), strchr(host, ':') ? "vllm://[%s]:%" PRId64 : "vllm://%s:%" PRId64,
			   host, port + (int64_t)S.cfg.tp_rank);
	const char *producers[1] = {addr};
	kvb_block_list_t group = {blocks, n};
	kvb_pull_params_t pp = {.request_id = rid, .transfer_id = rid, .producers = producers,
				.n_producers = 1, .groups = &group, .n_groups = 1};
	if (kvb_consumer_pull(S.conn, &pp, &err) != KVB_OK) {
		pool_free(blocks, n);
		kvb_httpd_respond_error(S.httpd, cid, 400, "KVTransferError", err.msg);
		return;
	}
	cons_req_t *r = g_new0(cons_req_t, 1);
	g_strlcpy(r->id, rid, sizeof(r->id));
	r->blocks = blocks;
	r->n = n;
	r->conn_id = cid;
	r->start_ns = mono_ns();
	r->tokens = tokens;
	g_hash_table_insert(S.cons, r->id, r);
	logv("consumer %s: pulling %u blocks from %s", rid, n, addr);
	schedule_progress();
}

static void respond_stats(uint64_t cid)
{
	kvb_counters_t c;
	kvb_connector_counters(S.conn, &c);
	kvb_hw_stats_t h;
	kvb_hw_stats_get(S.be, &h);
	GString *nic_bytes = g_string_new(NULL);
	for (uint32_t i = 0; i < S.be->ops->nic_count(S.be) && i < KVB_HW_MAX_NICS; i++)
		g_string_append_printf(nic_bytes, "%s%" PRIu64, i ? "," : "", h.nic_bytes[i]);
	GString *s = g_string_new(NULL);
	g_string_append_printf(s,
		"{\"role\":\"%s\",\"segment\":\"%s\",\"data_port\":%u,\"side_channel_port\":%u,"
		"\"pool\":{\"blocks\":%d,\"free\":%u},\"requests\":{\"producer_live\":%u,\"consumer_live\":%u,"
		"\"served_ok\":%" PRIu64 ",\"served_failed\":%" PRIu64 ",\"verified_bytes\":%" PRIu64
		",\"mismatched_bytes\":%" PRIu64 "},"
		"\"connector\":{\"transfers_ok\":%" PRIu64 ",\"transfers_failed\":%" PRIu64
		",\"bytes_sent\":%" PRIu64 ",\"leases_expired\":%" PRIu64 ",\"late_pulls_refused\":%" PRIu64
		",\"fail_transport\":%" PRIu64 ",\"fail_peer\":%" PRIu64 ",\"fail_lease\":%" PRIu64
		",\"fail_timeout\":%" PRIu64 ",\"slices_retried\":%" PRIu64 ",\"malformed_messages\":%" PRIu64
		",\"blocks_held\":%" PRIu64 ",\"live_requests\":%" PRIu64 "},"
		"\"hw\":{\"handshakes_served\":%" PRIu64 ",\"handshake_errors\":%" PRIu64
		",\"streams_opened\":%" PRIu64 ",\"tcp_requests_served\":%" PRIu64
		",\"tcp_requests_rejected\":%" PRIu64 ",\"tcp_bytes_in\":%" PRIu64 ",\"tcp_bytes_out\":%" PRIu64
		",\"tcp_bytes_posted\":%" PRIu64 ",\"vllm_messages\":%" PRIu64 ",\"vllm_errors\":%" PRIu64
		",\"fenced_writes\":%" PRIu64 ",\"rdma_bytes_posted\":%" PRIu64 ",\"rdma_endpoints\":%" PRIu64
		",\"gpu_copies\":%" PRIu64 ",\"gpu_staged_bytes\":%" PRIu64 ",\"gpu_syncs_requested\":%" PRIu64
		",\"gpu_syncs_served\":%" PRIu64 ",\"nic_bytes\":[%s]},\"memory\":\"%s\"}\n",
		kvb_role_name(S.cfg.role), kvb_hw_segment_name(S.be), kvb_hw_data_port(S.be),
		kvb_hw_side_channel_port(S.be), o.blocks, S.free_blocks->len, g_hash_table_size(S.prod),
		g_hash_table_size(S.cons), S.served_ok, S.served_failed, S.verified_bytes, S.mismatched_bytes,
		c.transfers_ok, c.transfers_failed, c.bytes_sent, c.leases_expired, c.late_pulls_refused,
		c.fail_transport, c.fail_peer, c.fail_lease, c.fail_timeout, c.slices_retried,
		c.malformed_messages, c.blocks_held, c.live_requests, h.handshakes_served,
		h.handshake_errors, h.streams_opened, h.tcp_requests_served, h.tcp_requests_rejected,
		h.tcp_bytes_in, h.tcp_bytes_out, h.tcp_bytes_posted, h.vllm_messages, h.vllm_errors,
		h.fenced_writes, h.rdma_bytes_posted, h.rdma_endpoints, h.gpu_copies, h.gpu_staged_bytes,
		h.gpu_syncs_requested, h.gpu_syncs_served, nic_bytes->str, o.memory);
	g_string_free(nic_bytes, TRUE);
	kvb_httpd_respond(S.httpd, cid, 200, "application/json", s->str, s->len);
	g_string_free(s, TRUE);
}

/* "rxe0 staging, rxe1 dma-buf": the path each NIC takes to the pool. */
static char *gpu_paths_text(void)
{
	kvb_hw_gpu_path_t paths[KVB_HW_MAX_NICS];
	uint32_t n = 0;
	GString *s = g_string_new(NULL);
	if (kvb_hw_mr_paths(S.be, S.mem, paths, KVB_HW_MAX_NICS, &n) == KVB_OK)
		for (uint32_t i = 0; i < n && i < KVB_HW_MAX_NICS; i++) {
			kvb_nic_info_t info;
			S.be->ops->nic_query(S.be, i, &info);
			g_string_append_printf(s, "%s%s %s", i ? ", " : "", info.name,
					       kvb_hw_gpu_path_name(paths[i]));
		}
	return g_string_free(s, FALSE);
}

static void respond_layout(uint64_t cid)
{
	GString *s = g_string_new(NULL);
	char *paths = gpu_paths_text();
	g_string_append_printf(s, "{\"model\":\"%s\",\"block_tokens\":%d,\"num_blocks\":%d,\"tp_size\":%u,"
				  "\"tp_rank\":%u,\"memory\":\"%s\",\"nic_paths\":\"%s\",\"regions\":[",
			       S.model->name, o.block_tokens, o.blocks, S.cfg.tp_size, S.cfg.tp_rank, o.memory,
			       paths);
	g_free(paths);
	for (uint32_t i = 0; i < S.n_regions; i++)
		g_string_append_printf(s, "%s{\"base\":%" PRIu64 ",\"block_stride\":%" PRIu64
					  ",\"block_bytes\":%" PRIu64 ",\"num_blocks\":%u,\"layer\":%d}",
				       i ? "," : "", S.regions[i].base, S.regions[i].block_stride,
				       S.regions[i].block_bytes, S.regions[i].num_blocks, S.regions[i].layer);
	g_string_append(s, "]}\n");
	kvb_httpd_respond(S.httpd, cid, 200, "application/json", s->str, s->len);
	g_string_free(s, TRUE);
}

static void on_http(kvb_httpd_t *d, uint64_t cid, const kvb_http_msg_t *req, const char *body,
		    size_t body_len, void *user)
{
	(void)user;
	(void)d;
	if (!strcmp(req->method, "GET")) {
		if (!strcmp(req->target, "/health"))
			kvb_httpd_respond(S.httpd, cid, 200, "application/json", "{\"status\":\"ok\"}\n", 16);
		else if (!strcmp(req->target, "/stats"))
			respond_stats(cid);
		else if (!strcmp(req->target, "/layout"))
			respond_layout(cid);
		else
			kvb_httpd_respond_error(S.httpd, cid, 404, "NotFoundError",
						"GET /health, /stats or /layout");
		return;
	}
	if (strcmp(req->method, "POST") ||
	    (strcmp(req->target, "/v1/completions") && strcmp(req->target, "/v1/chat/completions"))) {
		kvb_httpd_respond_error(S.httpd, cid, 404, "NotFoundError",
					"POST /v1/completions or /v1/chat/completions");
		return;
	}
	JsonParser *jp = json_parser_new();
	GError *gerr = NULL;
	if (!json_parser_load_from_data(jp, body, (gssize)body_len, &gerr) ||
	    !JSON_NODE_HOLDS_OBJECT(json_parser_get_root(jp))) {
		kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError",
					gerr ? gerr->message : "the body is not a JSON object");
		g_clear_error(&gerr);
		g_object_unref(jp);
		return;
	}
	JsonObject *root = json_node_get_object(json_parser_get_root(jp));
	JsonObject *params = NULL;
	if (json_object_has_member(root, "kv_transfer_params") &&
	    JSON_NODE_HOLDS_OBJECT(json_object_get_member(root, "kv_transfer_params")))
		params = json_object_get_object_member(root, "kv_transfer_params");
	char rid[KVB_ID_MAX];
	const char *hdr = kvb_http_field_get(req, "X-Request-Id");
	if (hdr && *hdr && strlen(hdr) < sizeof(rid))
		g_strlcpy(rid, hdr, sizeof(rid));
	else {
		char *u = g_uuid_string_random();
		g_strlcpy(rid, u, sizeof(rid));
		g_free(u);
	}
	uint64_t tokens = prompt_tokens(root, params);
	if (tokens > (uint64_t)o.blocks * (uint64_t)o.block_tokens) {
		kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError",
					"the prompt needs more KV blocks than the pool holds");
	} else if (param_true(params, "do_remote_decode")) {
		if (S.cfg.role == KVB_ROLE_CONSUMER)
			kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError",
						"this worker is a kv_consumer; do_remote_decode needs a producer");
		else
			handle_produce(cid, rid, tokens);
	} else if (param_true(params, "do_remote_prefill")) {
		if (S.cfg.role == KVB_ROLE_PRODUCER)
			kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError",
						"this worker is a kv_producer; do_remote_prefill needs a consumer");
		else
			handle_consume(cid, rid, tokens, params);
	} else {
		kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError",
					"kv_transfer_params needs do_remote_decode (prefill side) or "
					"do_remote_prefill (decode side): this engine only moves KV caches");
	}
	g_object_unref(jp);
}

static gboolean on_quit(gpointer data)
{
	(void)data;
	g_main_loop_quit(S.loop);
	return G_SOURCE_CONTINUE;
}

/* ---- setup ---------------------------------------------------------------- */

static GOptionEntry entries[] = {
	{"role", 'r', 0, G_OPTION_ARG_STRING, &o.role, "producer, consumer or both (default: the config's, kv_both)", "ROLE"},
	{"config", 'c', 0, G_OPTION_ARG_FILENAME, &o.config, "kvbridge config file (docs/configuration.md)", "FILE"},
	{"model", 'm', 0, G_OPTION_ARG_STRING, &o.model, "model preset for the KV layout (default qwen2.5-0.5b; --list-models)", "NAME"},
	{"list-models", 0, 0, G_OPTION_ARG_NONE, &o.list_models, "list the model presets", NULL},
	{"blocks", 0, 0, G_OPTION_ARG_INT, &o.blocks, "KV blocks in the pool (default 1024)", "N"},
	{"block-tokens", 0, 0, G_OPTION_ARG_INT, &o.block_tokens, "tokens per block (default 16)", "N"},
	{"host", 0, 0, G_OPTION_ARG_STRING, &o.host, "address peers use to reach this worker (default 127.0.0.1)", "IP"},
	{"bind", 0, 0, G_OPTION_ARG_STRING, &o.bind, "listen address (default 0.0.0.0)", "IP"},
	{"http-port", 0, 0, G_OPTION_ARG_INT, &o.http_port, "HTTP front port (default 8100)", "PORT"},
	{"rpc-port", 0, 0, G_OPTION_ARG_INT, &o.rpc_port, "Mooncake handshake port (default random in 15000-17000)", "PORT"},
	{"data-port", 0, 0, G_OPTION_ARG_INT, &o.data_port, "TCP transport port (default random)", "PORT"},
	{"nics", 0, 0, G_OPTION_ARG_INT, &o.nics, "data connections per peer (default 1)", "N"},
	{"rdma-devices", 0, 0, G_OPTION_ARG_STRING, &o.rdma_devices,
	 "RDMA devices (mlx5_0,mlx5_1 / rxe0,rxe1 / auto; also KVB_RDMA_DEVICES); default TCP", "LIST"},
	{"memory", 0, 0, G_OPTION_ARG_STRING, &o.memory,
	 "where the KV pool lives: host (default), cuda (GPU --gpu; built --with-cuda) or emulated "
	 "(GPU memory emulated in host pages, for tests without a GPU)", "KIND"},
	{"gpu", 0, 0, G_OPTION_ARG_INT, &o.gpu, "GPU ordinal for --memory cuda (default 0)", "N"},
	{"tp-size", 0, 0, G_OPTION_ARG_INT, &o.tp_size, "tensor-parallel size (default the config's, 1)", "N"},
	{"tp-rank", 0, 0, G_OPTION_ARG_INT, &o.tp_rank, "this worker's tensor-parallel rank (default 0)", "R"},
	{"dp-rank", 0, 0, G_OPTION_ARG_INT, &o.dp_rank, "this worker's data-parallel rank (default 0)", "R"},
	{"nic-addr", 0, 0, G_OPTION_ARG_STRING_ARRAY, &o.nic_addrs, "source address of a data connection (repeat per NIC)", "IP"},
	{"pull-protocol", 0, 0, G_OPTION_ARG_STRING, &o.pull_protocol,
	 "consumer: vllm (Gen 0 side channel), kvb (kvbridge stream) or auto (kvb when the producer "
	 "announces kvbridge_segment; default)", "P"},
	{"lease", 0, 0, G_OPTION_ARG_DOUBLE, &o.lease_s, "producer lease in seconds (default VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT or 480)", "S"},
	{"events", 0, 0, G_OPTION_ARG_FILENAME, &o.events, "append one JSON line per transfer", "FILE"},
	{"verbose", 'v', 0, G_OPTION_ARG_NONE, &o.verbose, "log every request", NULL},
	{NULL},
};

static int setup(void)
{
	kvb_err_t err;
	GError *gerr = NULL;
	kvb_config_init(&S.cfg);
	if (o.config && !kvb_config_load_file(&S.cfg, o.config, &gerr)) {
		fprintf(stderr, "kvbridge-serve: %s\n", gerr->message);
		return 2;
	}
	if (!kvb_config_apply_env(&S.cfg, NULL, &gerr)) {
		fprintf(stderr, "kvbridge-serve: %s\n", gerr->message);
		return 2;
	}
	if (o.role) {
		char full[32];
		g_snprintf(full, sizeof(full), g_str_has_prefix(o.role, "kv_") ? "%s" : "kv_%s", o.role);
		if (kvb_role_parse(full, &S.cfg.role) != KVB_OK) {
			fprintf(stderr, "kvbridge-serve: --role %s: expected producer, consumer or both\n", o.role);
			return 2;
		}
	}
	if (o.lease_s >= 0)
		S.cfg.abort_timeout_ns = (uint64_t)(o.lease_s * 1e9);
	if (o.tp_size >= 0)
		S.cfg.tp_size = (uint32_t)o.tp_size;
	if (o.tp_rank >= 0)
		S.cfg.tp_rank = (uint32_t)o.tp_rank;
	if (o.dp_rank >= 0)
		S.cfg.dp_rank = (uint32_t)o.dp_rank;
	if (o.pull_protocol && strcmp(o.pull_protocol, "vllm") && strcmp(o.pull_protocol, "kvb") &&
	    strcmp(o.pull_protocol, "auto")) {
		fprintf(stderr, "kvbridge-serve: --pull-protocol %s: expected vllm, kvb or auto\n", o.pull_protocol);
		return 2;
	}
	if (kvb_config_validate(&S.cfg, &err) != KVB_OK) {
		fprintf(stderr, "kvbridge-serve: %s\n", err.msg);
		return 2;
	}
	S.model = kvb_model_find(o.model ? o.model : "qwen2.5-0.5b");
	if (!S.model) {
		fprintf(stderr, "kvbridge-serve: unknown model %s (--list-models)\n", o.model);
		return 2;
	}
	if (o.blocks < 1 || o.blocks > 1 << 20 || o.block_tokens < 1 || o.block_tokens > 4096 ||
	    o.nics < 1 || o.nics > (int)KVB_HW_MAX_NICS || o.http_port < 0 || o.http_port > 65535 ||
	    o.rpc_port < 0 || o.rpc_port > 65535 || o.data_port < 0 || o.data_port > 65535) {
		fprintf(stderr, "kvbridge-serve: --blocks 1..1048576, --block-tokens 1..4096, --nics 1..%u, ports 0..65535\n",
			KVB_HW_MAX_NICS);
		return 2;
	}
	/* the KV pool */
	S.n_regions = S.model->layers;
	S.regions = g_new0(kvb_region_t, S.n_regions);
	S.mem_len = kvb_model_layout(S.model, S.cfg.tp_size, (uint32_t)o.block_tokens, (uint32_t)o.blocks, 0,
				     S.regions, &err);
	if (!S.mem_len) {
		fprintf(stderr, "kvbridge-serve: layout: %s\n", err.msg);
		return 2;
	}
	if (!o.memory)
		o.memory = g_strdup("host");
	if (!kvb_devmem_parse(o.memory, &pool_mem)) {
		fprintf(stderr, "kvbridge-serve: --memory %s: expected host, cuda or emulated\n", o.memory);
		return 2;
	}
#ifndef KVB_HAVE_CUDA
	if (pool_mem == KVB_DEVMEM_CUDA) {
		fprintf(stderr, "kvbridge-serve: --memory cuda: this build has no CUDA (configure --with-cuda)\n");
		return 2;
	}
#endif
	char why[256] = "";
	S.mem = kvb_devmem_alloc(pool_mem, o.gpu, S.mem_len, why, sizeof(why));
	if (!S.mem) {
		fprintf(stderr, "kvbridge-serve: cannot allocate %.1f MiB of %s memory for the KV pool: %s\n",
			(double)S.mem_len / 1048576.0, o.memory, why);
		return 1;
	}
	uint64_t max_block = 0;
	for (uint32_t i = 0; i < S.n_regions; i++) {
		S.regions[i].base += (uint64_t)(uintptr_t)S.mem;
		if (pool_mem != KVB_DEVMEM_HOST) {
			S.regions[i].mem_kind = KVB_MEM_CUDA;
			S.regions[i].device = pool_mem == KVB_DEVMEM_CUDA ? o.gpu : 0;
		}
		max_block = MAX(max_block, S.regions[i].block_bytes);
	}
	if (pool_mem != KVB_DEVMEM_HOST) {
		scratch = g_malloc(max_block);
		/* the pool starts with known bytes, as the host pool's zero pages do */
		memset(scratch, 0, max_block);
		for (uint32_t i = 0; i < S.n_regions; i++)
			for (uint32_t b = 0; b < S.regions[i].num_blocks; b++)
				pool_copy(block_ptr(i, b), scratch, S.regions[i].block_bytes, true);
	}
	S.free_blocks = g_array_new(FALSE, FALSE, sizeof(uint32_t));
	for (int i = o.blocks - 1; i >= 0; i--) {
		uint32_t b = (uint32_t)i;
		g_array_append_val(S.free_blocks, b);
	}
	/* the backend */
	S.ctx = g_main_context_new();
	kvb_hw_params_t hp;
	kvb_hw_params_default(&hp);
	hp.warn_fn = hw_warning;
	if (kvb_hw_params_apply_env(&hp, NULL, &err) != KVB_OK) {
		fprintf(stderr, "kvbridge-serve: %s\n", err.msg);
		return 2;
	}
	if (o.host)
		hp.host = o.host;
	if (o.bind)
		hp.bind_host = o.bind;
	hp.rpc_port = (uint16_t)o.rpc_port;
	hp.data_port = (uint16_t)o.data_port;
	hp.n_nics = (uint32_t)o.nics;
	for (guint i = 0; o.nic_addrs && o.nic_addrs[i] && i < KVB_HW_MAX_NICS; i++)
		hp.nic_addrs[i] = o.nic_addrs[i];
	hp.context = S.ctx;
	if (o.rdma_devices)
		hp.rdma_devices = o.rdma_devices;
	uint32_t worker_port = 0;
	if (S.cfg.role != KVB_ROLE_CONSUMER) {
		if (kvb_config_worker_port(&S.cfg, &worker_port, &err) != KVB_OK) {
			fprintf(stderr, "kvbridge-serve: %s\n", err.msg);
			return 2;
		}
		hp.side_channel_port = (uint16_t)worker_port;
	}
	S.side_base = (uint16_t)(S.cfg.bootstrap_port + S.cfg.dp_rank * S.cfg.tp_size);
	if (kvb_hw_open(&hp, &S.be, &err) != KVB_OK) {
		fprintf(stderr, "kvbridge-serve: %s\n", err.msg);
		return 1;
	}
	if (kvb_connector_new(&S.cfg, S.be, &S.conn, &err) != KVB_OK ||
	    kvb_connector_register_layout(S.conn, S.regions, S.n_regions, &err) != KVB_OK) {
		fprintf(stderr, "kvbridge-serve: connector: %s\n", err.msg);
		return 1;
	}
	if (S.cfg.role != KVB_ROLE_CONSUMER &&
	    kvb_hw_set_vllm_layout(S.be, S.regions, S.n_regions, S.cfg.tp_size, S.cfg.tp_rank, &err) != KVB_OK) {
		fprintf(stderr, "kvbridge-serve: %s\n", err.msg);
		return 1;
	}
	kvb_connector_set_record_fn(S.conn, on_record, NULL);
	kvb_hw_set_notify(S.be, on_backend_event, NULL);
	if (pool_mem != KVB_DEVMEM_HOST) {
		/* how each NIC reaches the GPU pool: said once, at start */
		char *paths = gpu_paths_text();
		fprintf(stderr, "kvbridge-serve: KV pool in %s GPU memory (%.1f MiB): %s\n",
			pool_mem == KVB_DEVMEM_CUDA ? "CUDA" : "emulated", (double)S.mem_len / 1048576.0, paths);
		g_free(paths);
	}
	S.httpd = kvb_httpd_new(S.ctx, o.bind ? o.bind : "0.0.0.0", (uint16_t)o.http_port, on_http, NULL, &gerr);
	if (!S.httpd) {
		fprintf(stderr, "kvbridge-serve: %s\n", gerr->message);
		return 1;
	}
	S.prod = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, g_free);
	S.cons = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, g_free);
	return 0;
}

static void teardown(void)
{
	if (S.httpd)
		kvb_httpd_free(S.httpd);
	if (S.conn)
		kvb_connector_free(S.conn);
	if (S.be)
		kvb_backend_close(S.be);
	if (S.prod) {
		GHashTableIter it;
		gpointer v;
		g_hash_table_iter_init(&it, S.prod);
		while (g_hash_table_iter_next(&it, NULL, &v))
			g_free(((prod_req_t *)v)->blocks);
		g_hash_table_destroy(S.prod);
	}
	if (S.cons) {
		GHashTableIter it;
		gpointer v;
		g_hash_table_iter_init(&it, S.cons);
		while (g_hash_table_iter_next(&it, NULL, &v))
			g_free(((cons_req_t *)v)->blocks);
		g_hash_table_destroy(S.cons);
	}
	if (S.progress_idle) {
		g_source_destroy(S.progress_idle);
		g_source_unref(S.progress_idle);
	}
	if (S.loop)
		g_main_loop_unref(S.loop);
	if (S.ctx)
		g_main_context_unref(S.ctx);
	kvb_devmem_free(pool_mem, S.mem, S.mem_len);
	g_free(scratch);
	if (S.free_blocks)
		g_array_free(S.free_blocks, TRUE);
	g_free(S.regions);
	kvb_config_clear(&S.cfg);
	if (S.events)
		fclose(S.events);
}

int main(int argc, char **argv)
{
	GError *gerr = NULL;
	GOptionContext *oc = g_option_context_new("- a prefill or decode worker that moves real KV caches");
	g_option_context_add_main_entries(oc, entries, NULL);
	g_option_context_set_description(oc,
		"A producer (prefill) fills each request's KV blocks with a pattern derived from the\n"
		"request id and holds them under a lease until a decoder pulls them; a consumer pulls\n"
		"them and checks every byte.  Requests arrive over HTTP with vLLM's kv_transfer_params\n"
		"(kvbridge-proxy sends them).  Ports: HTTP --http-port; Mooncake handshake and TCP\n"
		"transport --rpc-port/--data-port; the vLLM side channel of a producer at\n"
		"VLLM_MOONCAKE_BOOTSTRAP_PORT (8998) + dp_rank * tp_size + tp_rank.\n"
		"\n"
		"Examples:\n"
		"  kvbridge-serve --role producer --http-port 8100\n"
		"  kvbridge-serve --role consumer --http-port 8200\n"
		"  kvbridge-proxy --prefiller-port 8100 --decoder-port 8200\n"
		"  curl -s localhost:8000/v1/completions -d '{\"prompt\":\"...\",\"max_tokens\":8}'\n"
		"\n"
		"GET /health, /stats (counters, pool, blocks held), /layout (KV regions).\n"
		"Environment: VLLM_MOONCAKE_BOOTSTRAP_PORT, VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT,\n"
		"KVBRIDGE_* (docs/configuration.md), Mooncake's MC_* (MC_TCP_PROTO, MC_MIN_RPC_PORT...).\n");
	if (!g_option_context_parse(oc, &argc, &argv, &gerr)) {
		fprintf(stderr, "kvbridge-serve: %s (try --help)\n", gerr->message);
		return 2;
	}
	g_option_context_free(oc);
	if (o.list_models) {
		for (const kvb_model_t *m = kvb_model_presets(); m->name; m++)
			printf("%-16s %3u layers, %.1f KiB of KV per token\n", m->name, m->layers,
			       (double)kvb_model_kv_bytes_per_token(m) / 1024.0);
		return 0;
	}
	if (argc > 1) {
		fprintf(stderr, "kvbridge-serve: unexpected argument %s (try --help)\n", argv[1]);
		return 2;
	}
	int rc = setup();
	if (rc) {
		teardown();
		return rc;
	}
	if (o.events) {
		S.events = fopen(o.events, "a");
		if (!S.events) {
			fprintf(stderr, "kvbridge-serve: %s: %s\n", o.events, g_strerror(errno));
			teardown();
			return 1;
		}
	}
	S.loop = g_main_loop_new(S.ctx, FALSE);
	GSource *sig1 = g_unix_signal_source_new(SIGINT);
	GSource *sig2 = g_unix_signal_source_new(SIGTERM);
	g_source_set_callback(sig1, on_quit, NULL, NULL);
	g_source_set_callback(sig2, on_quit, NULL, NULL);
	g_source_attach(sig1, S.ctx);
	g_source_attach(sig2, S.ctx);
	GSource *t = g_timeout_source_new(100);
	g_source_set_callback(t, tick, NULL, NULL);
	g_source_attach(t, S.ctx);
	printf("kvbridge-serve: ready role=%s http=%u segment=%s data_port=%u side_channel=%u model=%s "
	       "blocks=%d lease_s=%.1f\n",
	       kvb_role_name(S.cfg.role), kvb_httpd_port(S.httpd), kvb_hw_segment_name(S.be),
	       kvb_hw_data_port(S.be), kvb_hw_side_channel_port(S.be), S.model->name, o.blocks,
	       (double)S.cfg.abort_timeout_ns / 1e9);
	fflush(stdout);
	g_main_loop_run(S.loop);
	fprintf(stderr, "kvbridge-serve: stopping (%" PRIu64 " requests verified, %" PRIu64 " failed)\n",
		S.served_ok, S.served_failed);
	g_source_destroy(sig1);
	g_source_unref(sig1);
	g_source_destroy(sig2);
	g_source_unref(sig2);
	g_source_destroy(t);
	g_source_unref(t);
	teardown();
	return 0;
}
