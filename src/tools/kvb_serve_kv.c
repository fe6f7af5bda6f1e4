/*
 * kvbridge-serve's requests (kvb_serve.h): a prefill leg produces a
 * request's KV (the test pattern, held under the lease until pulled), a
 * decode leg pulls it and checks every byte, in the router contract of the
 * worker's vLLM protocol:
 *
 *   gen2 (vLLM 0.16+)  prefill leg: kv_transfer_params {do_remote_decode,
 *                      transfer_id}, answered kv_transfer_params null;
 *                      decode leg: {do_remote_prefill, remote_bootstrap_addr,
 *                      remote_engine_id, transfer_id}: the bootstrap is
 *                      queried, the paired producer ranks pulled.
 *   gen0 (0.13-0.15)   prefill leg answers {remote_host, remote_port, ...},
 *                      which the proxy copies to the decode leg; both sides
 *                      name the transfer by vLLM's internal request id
 *                      ("cmpl-<X-Request-Id>-0"); kvbridge producers also
 *                      announce kvbridge_segment, which a kvbridge consumer
 *                      pulls over kvbridge's own stream (--pull-protocol).
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>

#include "kvb_serve.h"

/* ---- kv_transfer_params ---------------------------------------------------- */

bool param_true(JsonObject *params, const char *name)
{
	if (!params || !json_object_has_member(params, name))
		return false;
	JsonNode *n = json_object_get_member(params, name);
	return JSON_NODE_HOLDS_VALUE(n) && json_node_get_value_type(n) == G_TYPE_BOOLEAN &&
	       json_node_get_boolean(n);
}

const char *param_str(JsonObject *params, const char *name)
{
	if (!params || !json_object_has_member(params, name))
		return NULL;
	JsonNode *n = json_object_get_member(params, name);
	if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_STRING)
		return NULL;
	return json_node_get_string(n);
}

bool param_int(JsonObject *params, const char *name, int64_t *out)
{
	if (!params || !json_object_has_member(params, name))
		return false;
	JsonNode *n = json_object_get_member(params, name);
	if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_INT64)
		return false;
	*out = json_node_get_int(n);
	return true;
}

int param_count(JsonObject *params, const char *name, int64_t min, int64_t max, int64_t *out,
		char *why, size_t why_len)
{
	if (!params || !json_object_has_member(params, name))
		return 0;
	JsonNode *n = json_object_get_member(params, name);
	bool is_int = JSON_NODE_HOLDS_VALUE(n) && json_node_get_value_type(n) == G_TYPE_INT64;
	int64_t v = is_int ? json_node_get_int(n) : 0;
	if (!is_int || v < min || v > max) {
		/* json-glib wraps integers beyond int64: say the range, not the value */
		g_snprintf(why, why_len, "kv_transfer_params.%s must be an integer in %" PRId64 "..%" PRId64,
			   name, min, max);
		return -1;
	}
	*out = v;
	return 1;
}

/* vLLM's internal request id: "cmpl-<X-Request-Id>-0" for the first prompt
 * of a completion, "chatcmpl-<X-Request-Id>" for a chat (0.13.0; later
 * releases append a random suffix, which the side channel strips). */
void gen0_transfer_id(const char *rid, const char *endpoint, char *out, size_t len)
{
	if (endpoint && g_str_has_suffix(endpoint, "/chat/completions"))
		g_snprintf(out, len, "chatcmpl-%s", rid);
	else
		g_snprintf(out, len, "cmpl-%s-0", rid);
}

/* The host of "http://h:p/x", "h:p", "[v6]:p" or "h", into out. */
static void addr_host(const char *addr, char *out, size_t len)
{
	const char *a = strstr(addr, "://");
	a = a ? a + 3 : addr;
	const char *end;
	if (*a == '[') {
		a++;
		end = strchr(a, ']');
	} else {
		end = a + strcspn(a, ":/");
	}
	size_t n = end ? (size_t)(end - a) : strlen(a);
	g_snprintf(out, len, "%.*s", (int)MIN(n, len - 1), a);
}

/* A client named addr for us to dial: 403 unless the allowed peers hold it. */
static bool dial_allowed(uint64_t cid, const char *field, const char *addr)
{
	char host[256], why[KVB_ERR_MSG_MAX], msg[KVB_ERR_MSG_MAX + 128];
	addr_host(addr, host, sizeof(host));
	if (kvb_hw_peer_allowed(S.be, host, why, sizeof(why)))
		return true;
	g_snprintf(msg, sizeof(msg), "kv_transfer_params.%s: %s; this worker dials only the peers "
		   "--allow-peers names", field, why);
	kvb_httpd_respond_error(S.httpd, cid, 403, "PermissionDenied", msg);
	return false;
}

static bool valid_id(const char *id)
{
	return id && *id && strlen(id) < KVB_ID_MAX;
}

/* ---- the producer side ------------------------------------------------------- */

void handle_produce(uint64_t cid, const char *rid, const char *endpoint, uint64_t tokens,
		    JsonObject *params)
{
	kvb_err_t err;
	char tid[KVB_ID_MAX];
	if (S.vproto == KVB_HW_VLLM_GEN2) {
		const char *t = param_str(params, "transfer_id");
		if (!valid_id(t)) {
			/* vLLM's P only warns and frees the blocks: the decoder then
			 * waits for nothing.  Refuse, so the router's mistake shows. */
			kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError",
						"Missing transfer_id in kv_transfer_params from router! (this "
						"worker speaks vLLM 0.16+'s contract: --vllm-protocol gen0 for "
						"the old toy proxy)");
			return;
		}
		g_strlcpy(tid, t, sizeof(tid));
	} else {
		gen0_transfer_id(rid, endpoint, tid, sizeof(tid));
	}
	serve_pool_t *pool = &S.pool;
	uint32_t n = pool_blocks_for(pool, tokens);
	uint32_t *blocks;
	if (g_hash_table_contains(S.prod, tid)) {
		kvb_httpd_respond_error(S.httpd, cid, 409, "ConflictError", "transfer id already in flight");
		return;
	}
	if (!pool_alloc(pool, n, &blocks)) {
		kvb_httpd_respond_error(S.httpd, cid, 503, "KVPoolFull",
					"not enough free KV blocks for this prompt; retry later");
		return;
	}
	/* "prefill": the pattern every receiver checks */
	pool_fill_pattern(pool, tid, blocks, n);
	kvb_block_list_t group = {blocks, n};
	if (kvb_producer_begin(S.conn, tid, &err) != KVB_OK ||
	    kvb_producer_ready(S.conn, tid, &group, 1, &err) != KVB_OK) {
		pool_free(pool, blocks, n);
		kvb_httpd_respond_error(S.httpd, cid, 409, "KVTransferError", err.msg);
		return;
	}
	prod_req_t *r = g_new0(prod_req_t, 1);
	g_strlcpy(r->id, tid, sizeof(r->id));
	r->pool = pool;
	r->blocks = blocks;
	r->n = n;
	r->ready_ns = serve_now_ns();
	g_hash_table_insert(S.prod, r->id, r);
	serve_log("producer %s: %u blocks ready (%" PRIu64 " tokens)", tid, n, tokens);
	GString *s = g_string_new(NULL);
	g_string_append_printf(s,
		"{\"id\":\"cmpl-%s\",\"object\":\"text_completion\",\"model\":\"%s\","
		"\"choices\":[{\"index\":0,\"text\":\"\",\"token_ids\":[],\"finish_reason\":\"length\"}],"
		"\"usage\":{\"prompt_tokens\":%" PRIu64 ",\"completion_tokens\":1,\"total_tokens\":%" PRIu64 "},",
		rid, pool->model.name, tokens, tokens + 1);
	if (S.vproto == KVB_HW_VLLM_GEN2) {
		/* vLLM 0.16+: the producer returns no kv_transfer_params */
		g_string_append(s, "\"kv_transfer_params\":null}\n");
	} else {
		g_string_append_printf(s,
			"\"kv_transfer_params\":{\"do_remote_prefill\":true,\"do_remote_decode\":false,"
			"\"remote_host\":\"%s\",\"remote_port\":%u,\"remote_engine_id\":\"%s\","
			"\"tp_size\":%u,\"kvbridge_segment\":\"%s\",\"kvbridge_tokens\":%" PRIu64 ","
			"\"remote_block_ids\":[",
			S.host, S.side_base, S.cfg.engine_id, S.cfg.tp_size,
			kvb_hw_segment_name(S.be), tokens);
		for (uint32_t i = 0; i < n; i++)
			g_string_append_printf(s, "%s%u", i ? "," : "", blocks[i]);
		g_string_append(s, "]}}\n");
	}
	kvb_httpd_respond(S.httpd, cid, 200, "application/json", s->str, s->len);
	g_string_free(s, TRUE);
	schedule_progress();
}

/* ---- the consumer side ------------------------------------------------------- */

static void cons_fail(cons_req_t *r, int http, const char *type, const char *msg)
{
	S.served_failed++;
	serve_log("request %s: %s", r->id, msg);
	if (r->conn_id)
		kvb_httpd_respond_error(S.httpd, r->conn_id, http, type, msg);
	if (r->relay) {
		kvb_finished_t f;
		memset(&f, 0, sizeof(f));
		f.role = KVB_ROLE_CONSUMER;
		f.state = KVB_CONSUMER_FAILED;
		f.status = KVB_ERR_PEER;
		g_strlcpy(f.reason, msg, sizeof(f.reason));
		relay_pulled(r, &f);
	}
	if (r->blocks)
		pool_free(r->pool, r->blocks, r->n);
	r->blocks = NULL;
	g_hash_table_remove(S.cons, r->id);
}

bool pull_start(cons_req_t *r, const char *const *producers, uint32_t n, uint32_t producer_tp,
		char *why, size_t why_len)
{
	kvb_err_t err;
	kvb_block_list_t group = {r->blocks, r->n};
	kvb_pull_params_t pp = {.request_id = r->id, .transfer_id = r->transfer_id,
				.producers = producers, .n_producers = n,
				.producer_tp_size = producer_tp, .groups = &group, .n_groups = 1};
	if (kvb_consumer_pull(r->conn, &pp, &err) != KVB_OK) {
		g_strlcpy(why, err.msg, why_len);
		return false;
	}
	serve_log("consumer %s: pulling %u blocks of %s from %s%s", r->id, r->n, r->transfer_id,
		  producers[0], n > 1 ? " and more" : "");
	schedule_progress();
	return true;
}

/* The bootstrap told where the producer's workers are: pull from the ranks
 * that pair with ours. */
static void on_engine(void *user, int status, const char *why, const kvb_hw_vllm_engine_t *e)
{
	char *rid = user;
	cons_req_t *r = g_hash_table_lookup(S.cons, rid);
	g_free(rid);
	if (!r)
		return;
	r->query_pending = false;
	char msg[KVB_ERR_MSG_MAX + 96];
	if (status != KVB_OK) {
		g_snprintf(msg, sizeof(msg), "KV transfer failed: bootstrap query: %s", why);
		cons_fail(r, 502, "KVTransferError", msg);
		return;
	}
	if (e->pp_size != 1) {
		g_snprintf(msg, sizeof(msg), "producer engine %s has %u pipeline stages; this consumer "
			   "pulls from one (kvbridge consumers do not support prefill-side PP yet)",
			   e->engine_id, e->pp_size);
		cons_fail(r, 501, "KVTransferError", msg);
		return;
	}
	uint32_t ranks[64], n = 0;
	kvb_err_t err;
	/* the core pulls from at most 64 producer ranks */
	if (e->tp_size / S.cfg.tp_size > 64 ||
	    kvb_tp_targets(S.cfg.tp_size, S.cfg.tp_rank, e->tp_size, ranks, &n, &err) != KVB_OK) {
		g_snprintf(msg, sizeof(msg), "KV transfer failed: producer TP %u, ours %u: %s", e->tp_size,
			   S.cfg.tp_size, e->tp_size / S.cfg.tp_size > 64 ? "more than 64 producer ranks "
			   "per consumer rank" : err.msg);
		cons_fail(r, 502, "KVTransferError", msg);
		return;
	}
	const char *producers[64];
	for (uint32_t i = 0; i < n && i < 64; i++)
		producers[i] = e->workers[ranks[i] * e->pp_size];
	if (!pull_start(r, producers, MIN(n, 64u), e->tp_size, msg, sizeof(msg)))
		cons_fail(r, 400, "KVTransferError", msg);
}

bool pull_gen2(cons_req_t *r, const char *bootstrap, const char *engine_id, char *why, size_t why_len)
{
	kvb_err_t err;
	r->query_pending = true;
	if (kvb_hw_vllm_query(r->be, bootstrap, engine_id, on_engine, g_strdup(r->id), &err) != KVB_OK) {
		r->query_pending = false;
		g_strlcpy(why, err.msg, why_len);
		return false;
	}
	return true;
}

void handle_consume(uint64_t cid, const char *rid, const char *endpoint, uint64_t tokens,
		    JsonObject *params)
{
	char addr[KVB_ADDR_MAX], tid[KVB_ID_MAX], why[KVB_ERR_MSG_MAX];
	const char *boot = NULL, *engine = NULL;
	bool use_kvb = false;
	if (S.vproto == KVB_HW_VLLM_GEN2) {
		boot = param_str(params, "remote_bootstrap_addr");
		engine = param_str(params, "remote_engine_id");
		const char *t = param_str(params, "transfer_id");
		if (!boot || !engine || !valid_id(t)) {
			/* vLLM's D logs "Got invalid KVTransferParams" and prefills
			 * itself; this engine cannot */
			kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError",
						"Got invalid KVTransferParams: a remote prefill needs "
						"remote_bootstrap_addr, remote_engine_id and transfer_id (vLLM "
						"0.16+'s router contract; --vllm-protocol gen0 for the old one)");
			return;
		}
		g_strlcpy(tid, t, sizeof(tid));
		if (!dial_allowed(cid, "remote_bootstrap_addr", boot))
			return;
	} else {
		const char *host = param_str(params, "remote_host");
		const char *seg = param_str(params, "kvbridge_segment");
		int64_t port = 0;
		/* the prefiller's TP size (kvbridge producers say it; vLLM's Gen 0
		 * assumes ours): Gen 0 names neither block sizes nor ranks, so its
		 * ranks cannot be paired with ours unless the sizes are equal */
		int64_t ptp = 0;
		if (param_count(params, "tp_size", 1, 4096, &ptp, why, sizeof(why)) < 0) {
			kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError", why);
			return;
		}
		if (ptp && (uint32_t)ptp != S.cfg.tp_size) {
			g_snprintf(why, sizeof(why), "the prefiller has TP size %" PRId64 " and this decoder %u: "
				   "vLLM's Gen 0 contract pairs equal TP sizes only (each decoder rank pulls "
				   "from the prefiller rank of its number; Gen 2 pairs different sizes)",
				   ptp, S.cfg.tp_size);
			kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError", why);
			return;
		}
		use_kvb = seg && g_strcmp0(o.pull_protocol, "vllm") != 0;
		if (g_strcmp0(o.pull_protocol, "kvb") == 0 && !seg) {
			kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError",
						"--pull-protocol kvb needs kvbridge_segment in kv_transfer_params");
			return;
		}
		if (!use_kvb && (!host || !param_int(params, "remote_port", &port) || port <= 0 ||
				 port > 65535)) {
			kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError",
						"kv_transfer_params needs remote_host and remote_port (the "
						"producer's side channel) for a remote prefill");
			return;
		}
		if (!dial_allowed(cid, use_kvb ? "kvbridge_segment" : "remote_host", use_kvb ? seg : host))
			return;
		if (use_kvb)
			g_snprintf(addr, sizeof(addr), "kvb://%s", seg);
		else
			g_snprintf(addr, sizeof(addr),
				   strchr(host, ':') ? "vllm://[%s]:%" PRId64 : "vllm://%s:%" PRId64, host,
				   port + (int64_t)S.cfg.tp_rank);
		gen0_transfer_id(rid, endpoint, tid, sizeof(tid));
	}
	if (g_hash_table_contains(S.cons, rid)) {
		kvb_httpd_respond_error(S.httpd, cid, 409, "ConflictError", "request id already in flight");
		return;
	}
	serve_pool_t *pool = &S.pool;
	uint32_t n = pool_blocks_for(pool, tokens);
	uint32_t *blocks;
	if (!pool_alloc(pool, n, &blocks)) {
		kvb_httpd_respond_error(S.httpd, cid, 503, "KVPoolFull", "not enough free KV blocks");
		return;
	}
	/* stale bytes must not pass the check: poison the blocks first */
	pool_poison(pool, blocks, n);
	cons_req_t *r = g_new0(cons_req_t, 1);
	g_strlcpy(r->id, rid, sizeof(r->id));
	g_strlcpy(r->transfer_id, tid, sizeof(r->transfer_id));
	r->pool = pool;
	r->blocks = blocks;
	r->n = n;
	r->conn_id = cid;
	r->start_ns = serve_now_ns();
	r->tokens = tokens;
	r->conn = S.conn;
	r->be = S.be;
	g_hash_table_insert(S.cons, r->id, r);
	const char *producers[1] = {addr};
	bool ok = S.vproto == KVB_HW_VLLM_GEN2 ? pull_gen2(r, boot, engine, why, sizeof(why))
					       : pull_start(r, producers, 1, 0, why, sizeof(why));
	if (!ok) {
		r->conn_id = 0;
		kvb_httpd_respond_error(S.httpd, cid, 400, "KVTransferError", why);
		pool_free(pool, r->blocks, r->n);
		r->blocks = NULL;
		g_hash_table_remove(S.cons, r->id);
	}
}

/* A pull ended: answer the client, after checking every byte (or dumping
 * them, for a producer whose bytes are not the pattern). */
static void consumer_answer(cons_req_t *r, const kvb_finished_t *f)
{
	uint64_t elapsed = serve_now_ns() - r->start_ns;
	if (f->state != KVB_CONSUMER_DONE) {
		S.served_failed++;
		char msg[KVB_REASON_MAX + 96];
		g_snprintf(msg, sizeof(msg), "KV transfer failed: %s (%s)", kvb_status_name(f->status),
			   f->reason);
		serve_log("request %s: %s", r->id, msg);
		kvb_httpd_respond_error(S.httpd, r->conn_id, f->status == KVB_ERR_TIMEOUT ? 504 : 502,
					"KVTransferError", msg);
		return;
	}
	serve_pool_t *p = r->pool;
	uint64_t bad = 0, bytes = 0;
	if (o.dump_dir && !pool_dump(p, o.dump_dir, r->id, r->blocks, r->n)) {
		S.served_failed++;
		kvb_httpd_respond_error(S.httpd, r->conn_id, 500, "KVDumpError", "could not dump the KV");
		return;
	}
	if (S.verify_pattern) {
		bad = pool_check_pattern(p, r->transfer_id, r->blocks, r->n, &bytes);
		S.verified_bytes += bytes - bad;
		S.mismatched_bytes += bad;
	} else {
		for (uint32_t reg = 0; reg < p->n_regions; reg++)
			bytes += p->regions[reg].block_bytes * r->n;
	}
	if (bad) {
		S.served_failed++;
		char msg[160];
		g_snprintf(msg, sizeof(msg), "KV verification failed: %" PRIu64 " of %" PRIu64
					     " bytes differ from the producer's pattern", bad, bytes);
		kvb_httpd_respond_error(S.httpd, r->conn_id, 500, "KVVerificationError", msg);
		return;
	}
	S.served_ok++;
	serve_log("request %s: %u blocks, %" PRIu64 " bytes %s in %.3f ms", r->id, r->n, bytes,
		  S.verify_pattern ? "verified" : "received", (double)elapsed / 1e6);
	GString *s = g_string_new(NULL);
	g_string_append_printf(s,
		"{\"id\":\"cmpl-%s\",\"object\":\"text_completion\",\"model\":\"%s\","
		"\"choices\":[{\"index\":0,\"text\":\"kvbridge: %u blocks x %u regions %s\","
		"\"token_ids\":[],\"finish_reason\":\"length\"}],"
		"\"usage\":{\"prompt_tokens\":%" PRIu64 ",\"completion_tokens\":1,\"total_tokens\":%" PRIu64 "},"
		"\"kvbridge\":{\"state\":\"done\",\"transfer_id\":\"%s\",\"blocks\":%u,\"%s\":%" PRIu64
		",\"mismatched_bytes\":0,\"transfer_ms\":%.3f}}\n",
		r->id, p->model.name, r->n, p->n_regions,
		S.verify_pattern ? "received and verified" : "received", r->tokens, r->tokens + 1,
		r->transfer_id, r->n, S.verify_pattern ? "verified_bytes" : "received_bytes", bytes,
		(double)elapsed / 1e6);
	kvb_httpd_respond(S.httpd, r->conn_id, 200, "application/json", s->str, s->len);
	g_string_free(s, TRUE);
}

static void collect_from(kvb_connector_t *conn)
{
	kvb_finished_t f[32];
	int n;
	while ((n = kvb_connector_poll_finished(conn, f, 32)) > 0) {
		for (int i = 0; i < n; i++) {
			if (f[i].role == KVB_ROLE_PRODUCER) {
				prod_req_t *r = g_hash_table_lookup(S.prod, f[i].id);
				serve_log("producer %s: %s%s%s", f[i].id, kvb_producer_state_name(f[i].state),
					  f[i].reason[0] ? ": " : "", f[i].reason);
				if (!r)
					continue;
				if (relay_is())
					relay_served(r, &f[i]);
				if (r->blocks)
					pool_free(r->pool, r->blocks, r->n);
				r->blocks = NULL;
				g_hash_table_remove(S.prod, f[i].id);
			} else {
				cons_req_t *r = g_hash_table_lookup(S.cons, f[i].id);
				if (!r)
					continue;
				if (r->relay) {
					relay_pulled(r, &f[i]); /* may take the blocks */
				} else {
					consumer_answer(r, &f[i]);
				}
				if (r->blocks)
					pool_free(r->pool, r->blocks, r->n);
				r->blocks = NULL;
				g_hash_table_remove(S.cons, f[i].id);
			}
		}
	}
}

void collect_finished(void)
{
	collect_from(S.conn);
	if (S.up_conn)
		collect_from(S.up_conn);
}
