/*
 * kvbridge-serve: a prefill or decode worker with a stand-in engine, or a
 * relay between two engines, on the hw backend.  It speaks what real peers
 * speak:
 *
 *  - an OpenAI-style HTTP front (POST /v1/completions, /v1/chat/completions)
 *    with vLLM's kv_transfer_params, so kvbridge-proxy or vLLM's routers
 *    can route requests to it;
 *  - vLLM's MooncakeConnector control plane, of today's vLLM (--vllm-protocol
 *    gen2, 0.16+: HTTP bootstrap, a ROUTER per worker, transfer_id) or of
 *    0.13-0.15 (gen0: a fixed-port side channel), and the Mooncake
 *    handshake + TCP transport (or RDMA), so vLLM decoders pull from it and
 *    vLLM prefillers push into it;
 *  - kvbridge's own control stream between two kvbridge-serve (gen0 mode).
 *
 * The stand-in engine allocates blocks from a KV pool laid out like the
 * model (a preset, or a Hugging Face folder's config.json: one region per
 * layer, or K and V regions per layer), "prefills" by writing a
 * deterministic pattern derived from the transfer id, and the consumer
 * checks every byte it received against the same pattern (or dumps what
 * a real engine sent, --verify none --dump-dir).  As a relay (--role relay)
 * it pulls each request from an upstream prefiller and serves it to the
 * decoder, converting between block sizes and K/V packing when the two
 * vLLM releases lay the cache out differently.
 *
 * GET /health, /stats (counters, pool, blocks held), /layout (regions).
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
#include <sodium.h>

#include "kvb_cli.h"
#include "kvb_devmem.h"
#include "kvb_serve.h"

serve_opts_t o = {.blocks = 1024, .block_tokens = 16, .http_port = 8100, .nics = 1, .lease_s = -1,
		  .tp_size = NOT_GIVEN, .tp_rank = NOT_GIVEN, .dp_rank = NOT_GIVEN,
		  .bootstrap_port = NOT_GIVEN, .upstream_block_tokens = 0, .test_corrupt_block = NOT_GIVEN};
serve_t S;

uint64_t serve_now_ns(void)
{
	return (uint64_t)g_get_monotonic_time() * 1000u;
}

void serve_log(const char *fmt, ...)
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

/* ---- progress ------------------------------------------------------------- */

/* The backend's warnings (a refused vLLM request, a peer gone) always reach
 * the log: they are what an operator looks for when a decoder reports an
 * error. */
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

static gboolean progress_cb(gpointer data)
{
	(void)data;
	int guard = 0;
	while ((kvb_connector_progress(S.conn) > 0 || (S.up_conn && kvb_connector_progress(S.up_conn) > 0)) &&
	       guard++ < 64)
		collect_finished();
	collect_finished();
	if (S.progress_idle) {
		g_source_unref(S.progress_idle);
		S.progress_idle = NULL;
	}
	return G_SOURCE_REMOVE;
}

void schedule_progress(void)
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
	int64_t t;
	if (param_int(params, "kvbridge_tokens", &t))
		return (uint64_t)t; /* checked: 1..INT32_MAX */
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

static void on_http(kvb_httpd_t *d, uint64_t cid, const kvb_http_msg_t *req, const char *body,
		    size_t body_len, void *user)
{
	(void)user;
	(void)d;
	bool health = !strcmp(req->method, "GET") && !strcmp(req->target, "/health");
	if (!health && !kvb_http_bearer_ok(req, S.api_key)) {
		/* nothing about this worker for a caller without the key */
		kvb_httpd_respond_error(S.httpd, cid, 401, "Unauthorized",
					"this worker needs \"Authorization: Bearer <its --api-key>\"");
		return;
	}
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
	char rid[KVB_ID_MAX - 16];
	const char *hdr = kvb_http_field_get(req, "X-Request-Id");
	if (hdr && *hdr && strlen(hdr) < sizeof(rid))
		g_strlcpy(rid, hdr, sizeof(rid));
	else {
		char *u = g_uuid_string_random();
		g_strlcpy(rid, u, sizeof(rid));
		g_free(u);
	}
	/* a prompt length a client states is a count of tokens, nothing else */
	int64_t stated;
	char why[160];
	if (param_count(params, "kvbridge_tokens", 1, INT32_MAX, &stated, why, sizeof(why)) < 0) {
		kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError", why);
		g_object_unref(jp);
		return;
	}
	if (relay_is()) {
		relay_handle(cid, req, body, body_len, root, params, rid);
		g_object_unref(jp);
		return;
	}
	uint64_t tokens = prompt_tokens(root, params);
	if (!tokens) {
		kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError",
					"the prompt is empty: there is no KV to move");
	} else if (tokens > (uint64_t)S.pool.n_blocks * S.pool.block_tokens) {
		kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError",
					"the prompt needs more KV blocks than the pool holds");
	} else if (param_true(params, "do_remote_decode")) {
		if (S.cfg.role == KVB_ROLE_CONSUMER)
			kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError",
						"this worker is a kv_consumer; do_remote_decode needs a producer");
		else
			handle_produce(cid, rid, req->target, tokens, params);
	} else if (param_true(params, "do_remote_prefill")) {
		if (S.cfg.role == KVB_ROLE_PRODUCER)
			kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError",
						"this worker is a kv_producer; do_remote_prefill needs a consumer");
		else
			handle_consume(cid, rid, req->target, tokens, params);
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
	{"role", 'r', 0, G_OPTION_ARG_STRING, &o.role, "producer, consumer, both, or relay (default: the config's, kv_both)", "ROLE"},
	{"config", 'c', 0, G_OPTION_ARG_FILENAME, &o.config, "kvbridge config file (docs/configuration.md)", "FILE"},
	{"model", 'm', 0, G_OPTION_ARG_STRING, &o.model,
	 "the KV layout's model: a preset (default qwen2.5-0.5b; --list-models) or a Hugging Face "
	 "folder with a config.json, as vLLM's --model", "NAME|DIR"},
	{"dtype", 0, 0, G_OPTION_ARG_STRING, &o.dtype, "KV dtype: auto (the model's), float32, bfloat16, float16", "T"},
	{"kv-layout", 0, 0, G_OPTION_ARG_STRING, &o.kv_layout,
	 "packed (one region a layer, K|V: vLLM 0.16+; default) or split (K and V regions a layer: "
	 "vLLM 0.13-0.19 on CPU)", "L"},
	{"list-models", 0, 0, G_OPTION_ARG_NONE, &o.list_models, "list the model presets", NULL},
	{"blocks", 0, 0, G_OPTION_ARG_INT, &o.blocks, "KV blocks in the pool (default 1024)", "N"},
	{"block-tokens", 0, 0, G_OPTION_ARG_INT, &o.block_tokens, "tokens per block (default 16)", "N"},
	{"host", 0, 0, G_OPTION_ARG_STRING, &o.host,
	 "address peers use to reach this worker, and where every port listens unless --bind "
	 "(default MC_TCP_BIND_ADDRESS, else VLLM_HOST_IP, else 127.0.0.1)", "IP"},
	{"api-key", 0, 0, G_OPTION_ARG_STRING, &o.api_key,
	 "require \"Authorization: Bearer KEY\" on every HTTP endpoint but /health, as vLLM's --api-key "
	 "(at least 16 characters; default KVB_API_KEY; the proxy sends OPENAI_API_KEY)", "KEY"},
	{"secret-file", 0, 0, G_OPTION_ARG_FILENAME, &o.secret_file,
	 "a file (>= 32 bytes) the kvbridge workers that talk to each other share: their control "
	 "streams authenticate with it (challenge-response); default KVB_SECRET_FILE", "FILE"},
	{"tls-cert", 0, 0, G_OPTION_ARG_FILENAME, &o.tls_cert,
	 "TLS 1.2+ with this PEM certificate chain (and --tls-key) on the HTTP front (HTTPS) and on "
	 "the kvbridge control streams other workers open to this one, which must then use TLS "
	 "(default KVB_TLS_CERT; off: plaintext; vLLM and Mooncake peers stay plaintext)", "FILE"},
	{"tls-key", 0, 0, G_OPTION_ARG_FILENAME, &o.tls_key,
	 "the PEM private key of --tls-cert (default KVB_TLS_KEY)", "FILE"},
	{"tls-ca", 0, 0, G_OPTION_ARG_FILENAME, &o.tls_ca,
	 "PEM CA certificates: the kvbridge control streams this worker opens (kvb:// pulls) use TLS "
	 "and the peer's certificate must be signed by them and name the host dialed; also the trust "
	 "for --upstream https://... (default KVB_TLS_CA; without it, https:// upstreams use the "
	 "system's trust store)", "FILE"},
	{"allow-peers", 0, 0, G_OPTION_ARG_STRING, &o.allow_peers,
	 "networks that may connect to any port and that this worker may dial when a message or a "
	 "client names them: CIDR list (10.0.0.0/8,fd00::/8), * = anyone (default KVB_ALLOW_PEERS, "
	 "else loopback and --host's network)", "NETS"},
	{"bind", 0, 0, G_OPTION_ARG_STRING, &o.bind,
	 "listen address of every port (default --host; 0.0.0.0 = every interface, warned about)", "IP"},
	{"http-port", 0, 0, G_OPTION_ARG_INT, &o.http_port, "HTTP front port (default 8100)", "PORT"},
	{"rpc-port", 0, 0, G_OPTION_ARG_INT, &o.rpc_port, "Mooncake handshake port (default random in 15000-17000)", "PORT"},
	{"data-port", 0, 0, G_OPTION_ARG_INT, &o.data_port, "TCP transport port (default random)", "PORT"},
	{"nics", 0, 0, G_OPTION_ARG_INT, &o.nics, "data connections per peer (default 1)", "N"},
	{"rdma-devices", 0, 0, G_OPTION_ARG_STRING, &o.rdma_devices,
	 "RDMA devices (mlx5_0,mlx5_1 / rxe0,rxe1 / auto; also KVB_RDMA_DEVICES); default TCP", "LIST"},
	{"rdma-buffer-keys", 0, 0, G_OPTION_ARG_NONE, &o.rdma_buffer_keys,
	 "RDMA: publish keys that reach the whole KV pool, as Mooncake does (KVB_RDMA_BUFFER_KEYS=1). "
	 "Default: the pool is closed to remote access and each kvbridge pull opens keys for its own "
	 "blocks only; on automatically for consumers that pull over vLLM's side channels (gen2, "
	 "--pull-protocol vllm), which carry no per-pull keys", NULL},
	{"memory", 0, 0, G_OPTION_ARG_STRING, &o.memory,
	 "where the KV pool lives: host (default), cuda (GPU --gpu; built --with-cuda) or emulated "
	 "(GPU memory emulated in host pages, for tests without a GPU)", "KIND"},
	{"gpu", 0, 0, G_OPTION_ARG_INT, &o.gpu, "GPU ordinal for --memory cuda (default 0)", "N"},
	{"tp-size", 0, 0, G_OPTION_ARG_INT, &o.tp_size, "tensor-parallel size (default the config's, 1)", "N"},
	{"tp-rank", 0, 0, G_OPTION_ARG_INT, &o.tp_rank, "this worker's tensor-parallel rank (default 0)", "R"},
	{"dp-rank", 0, 0, G_OPTION_ARG_INT, &o.dp_rank, "this worker's data-parallel rank (default 0)", "R"},
	{"nic-addr", 0, 0, G_OPTION_ARG_STRING_ARRAY, &o.nic_addrs, "source address of a data connection (repeat per NIC)", "IP"},
	{"vllm-protocol", 0, 0, G_OPTION_ARG_STRING, &o.vllm_protocol,
	 "vLLM's MooncakeConnector control plane this worker speaks: gen2 (vLLM 0.16 and later: HTTP "
	 "bootstrap, transfer_id; default) or gen0 (vLLM 0.13-0.15: fixed side-channel ports)", "GEN"},
	{"vllm-release", 0, 0, G_OPTION_ARG_STRING, &o.vllm_release,
	 "gen2: the vLLM release of the peers, for the request encoding (default 0.32.0)", "X.Y.Z"},
	{"engine-id", 0, 0, G_OPTION_ARG_STRING, &o.engine_id, "gen2: this engine's id at the bootstrap (default: the config's engine_id)", "ID"},
	{"bootstrap-port", 0, 0, G_OPTION_ARG_INT, &o.bootstrap_port,
	 "gen2 producer: serve vLLM's HTTP bootstrap on this port (default VLLM_MOONCAKE_BOOTSTRAP_PORT, "
	 "8998, on tp rank 0 unless --bootstrap-server; 0 = do not serve)", "PORT"},
	{"bootstrap-server", 0, 0, G_OPTION_ARG_STRING, &o.bootstrap_server,
	 "gen2 producer: register at this bootstrap instead (vLLM's bootstrap_server_address)", "HOST:PORT"},
	{"pull-protocol", 0, 0, G_OPTION_ARG_STRING, &o.pull_protocol,
	 "gen0 consumer: vllm (Gen 0 side channel), kvb (kvbridge stream) or auto (kvb when the "
	 "producer announces kvbridge_segment; default)", "P"},
	{"verify", 0, 0, G_OPTION_ARG_STRING, &o.verify,
	 "consumer: pattern (check every byte against a kvbridge producer's pattern; default) or none "
	 "(a real engine's KV: take it as it comes; see --dump-dir)", "V"},
	{"dump-dir", 0, 0, G_OPTION_ARG_FILENAME, &o.dump_dir,
	 "consumer: write each request's received KV to DIR/<request id>.kv (regions after each other, "
	 "blocks in request order)", "DIR"},
	{"upstream", 0, 0, G_OPTION_ARG_STRING, &o.upstream,
	 "relay: the prefill engine's HTTP address (http://host:port, or https://host:port checked "
	 "against --tls-ca); prefill legs are forwarded there and their KV pulled", "URL"},
	{"upstream-protocol", 0, 0, G_OPTION_ARG_STRING, &o.upstream_protocol,
	 "relay: the upstream engine's vLLM protocol, gen2 or gen0 (default --vllm-protocol)", "GEN"},
	{"upstream-bootstrap", 0, 0, G_OPTION_ARG_STRING, &o.upstream_bootstrap,
	 "relay, gen2 upstream: its bootstrap (default the upstream host, VLLM_MOONCAKE_BOOTSTRAP_PORT)", "URL"},
	{"upstream-engine-id", 0, 0, G_OPTION_ARG_STRING, &o.upstream_engine_id,
	 "relay, gen2 upstream: its engine id (default: dp rank 0's at the bootstrap)", "ID"},
	{"upstream-model", 0, 0, G_OPTION_ARG_STRING, &o.upstream_model,
	 "relay: the upstream layout's model (default --model)", "NAME|DIR"},
	{"upstream-kv-layout", 0, 0, G_OPTION_ARG_STRING, &o.upstream_kv_layout,
	 "relay: the upstream layout's K/V packing (default --kv-layout)", "L"},
	{"upstream-block-tokens", 0, 0, G_OPTION_ARG_INT, &o.upstream_block_tokens,
	 "relay: the upstream layout's tokens per block (default --block-tokens)", "N"},
	{"test-corrupt-block", 0, 0, G_OPTION_ARG_INT, &o.test_corrupt_block,
	 "relay, for tests only: flip the bytes of this block of every relayed request (a negative "
	 "control: the decoder's tokens must change)", "K"},
	{"lease", 0, 0, G_OPTION_ARG_STRING, &o.lease, "producer lease in seconds, > 0 (default VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT or 480)", "S"},
	{"events", 0, 0, G_OPTION_ARG_FILENAME, &o.events, "append one JSON line per transfer", "FILE"},
	{"verbose", 'v', 0, G_OPTION_ARG_NONE, &o.verbose, "log every request", NULL},
	{NULL},
};

/* The vLLM layout this worker shows its peers: its pool's regions, named
 * as vLLM names attention layers. */
static int vllm_layout(void)
{
	kvb_err_t err;
	if (S.vproto == KVB_HW_VLLM_GEN0 && S.cfg.role == KVB_ROLE_CONSUMER)
		return 0;
	serve_pool_t *p = &S.pool;
	const char **names = g_new0(const char *, p->n_regions);
	char **buf = g_new0(char *, p->n_regions + 1);
	for (uint32_t i = 0; i < p->n_regions; i++) {
		buf[i] = g_strdup(pool_layer_name(p, i));
		names[i] = buf[i];
	}
	kvb_hw_vllm_layout_t l = {.regions = p->regions, .n_regions = p->n_regions, .layer_names = names,
				  .tp_size = S.cfg.tp_size, .tp_rank = S.cfg.tp_rank,
				  .dp_rank = S.cfg.dp_rank,
				  .engine_id = o.engine_id ? o.engine_id : S.cfg.engine_id};
	int rc = kvb_hw_vllm_set_layout(S.be, &l, &err);
	g_free(names);
	g_strfreev(buf);
	if (rc != KVB_OK)
		fprintf(stderr, "kvbridge-serve: vLLM layout: %s\n", err.msg);
	return rc == KVB_OK ? 0 : 1;
}

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
	bool relay = o.role && !strcmp(o.role, "relay");
	if (o.role && !relay) {
		char full[32];
		g_snprintf(full, sizeof(full), g_str_has_prefix(o.role, "kv_") ? "%s" : "kv_%s", o.role);
		if (kvb_role_parse(full, &S.cfg.role) != KVB_OK) {
			fprintf(stderr, "kvbridge-serve: --role %s: expected producer, consumer, both or relay\n",
				o.role);
			return 2;
		}
	}
	if (relay)
		S.cfg.role = KVB_ROLE_BOTH;
	char kwhy[128];
	if (!kvb_http_api_key(o.api_key, "KVB_API_KEY", &S.api_key, kwhy, sizeof(kwhy))) {
		fprintf(stderr, "kvbridge-serve: --api-key: %s\n", kwhy);
		return KVB_CLI_USAGE;
	}
	if (!kvb_tls_from_options(o.tls_cert, o.tls_key, o.tls_ca, &S.tls_server, &S.tls_client, &err)) {
		fprintf(stderr, "kvbridge-serve: %s\n", err.msg);
		return KVB_CLI_USAGE;
	}
	/* every number in range, the option named; NOT_GIVEN keeps the default */
	const char *P = "kvbridge-serve";
	const struct {
		const char *opt;
		int value;
		int64_t min, max;
	} ints[] = {
		{"--blocks", o.blocks, 1, 1 << 20},
		{"--block-tokens", o.block_tokens, 1, 4096},
		{"--nics", o.nics, 1, KVB_HW_MAX_NICS},
		{"--http-port", o.http_port, 0, 65535},
		{"--rpc-port", o.rpc_port, 0, 65535},
		{"--data-port", o.data_port, 0, 65535},
		{"--gpu", o.gpu, 0, 1023},
		{"--tp-size", o.tp_size, 1, 4096},
		{"--tp-rank", o.tp_rank, 0, 4095},
		{"--dp-rank", o.dp_rank, 0, 65535},
		{"--bootstrap-port", o.bootstrap_port, 0, 65535},
		{"--upstream-block-tokens", o.upstream_block_tokens, 0, 4096},
		{"--test-corrupt-block", o.test_corrupt_block, 0, 1 << 20},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(ints); i++)
		if (ints[i].value != NOT_GIVEN &&
		    !kvb_cli_check_int64(P, ints[i].opt, ints[i].value, ints[i].min, ints[i].max))
			return KVB_CLI_USAGE;
	if (!kvb_cli_parse_double(P, "--lease", o.lease, 0, 1e9, KVB_CLI_ABOVE_MIN, &o.lease_s))
		return KVB_CLI_USAGE;
	if (o.lease_s >= 0)
		S.cfg.abort_timeout_ns = (uint64_t)(o.lease_s * 1e9);
	if (o.tp_size != NOT_GIVEN)
		S.cfg.tp_size = (uint32_t)o.tp_size;
	if (o.tp_rank != NOT_GIVEN)
		S.cfg.tp_rank = (uint32_t)o.tp_rank;
	if (o.dp_rank != NOT_GIVEN)
		S.cfg.dp_rank = (uint32_t)o.dp_rank;
	if (o.pull_protocol && strcmp(o.pull_protocol, "vllm") && strcmp(o.pull_protocol, "kvb") &&
	    strcmp(o.pull_protocol, "auto")) {
		fprintf(stderr, "kvbridge-serve: --pull-protocol %s: expected vllm, kvb or auto\n", o.pull_protocol);
		return 2;
	}
	if (kvb_hw_vllm_protocol_parse(o.vllm_protocol ? o.vllm_protocol : "gen2", &S.vproto) != KVB_OK ||
	    (S.vproto != KVB_HW_VLLM_GEN0 && S.vproto != KVB_HW_VLLM_GEN2)) {
		fprintf(stderr, "kvbridge-serve: --vllm-protocol %s: expected gen2 (vLLM 0.16+) or gen0 "
			"(vLLM 0.13-0.15)\n", o.vllm_protocol);
		return 2;
	}
	if (o.verify && strcmp(o.verify, "pattern") && strcmp(o.verify, "none")) {
		fprintf(stderr, "kvbridge-serve: --verify %s: expected pattern or none\n", o.verify);
		return 2;
	}
	S.verify_pattern = !o.verify || !strcmp(o.verify, "pattern");
	if (o.dump_dir && !g_file_test(o.dump_dir, G_FILE_TEST_IS_DIR)) {
		fprintf(stderr, "kvbridge-serve: --dump-dir %s: not a folder\n", o.dump_dir);
		return 2;
	}
	/* Gen 0 prefills before the decode leg starts: a pull for a transfer a
	 * rank never began (its prefill went to another rank) says so in 5 s */
	if (S.vproto == KVB_HW_VLLM_GEN0 && !S.cfg.unprefilled_wait_ns)
		S.cfg.unprefilled_wait_ns = 5 * G_GUINT64_CONSTANT(1000000000);
	if (kvb_config_validate(&S.cfg, &err) != KVB_OK) {
		fprintf(stderr, "kvbridge-serve: %s\n", err.msg);
		return 2;
	}
	/* the KV pool */
	kvb_tool_model_t model;
	char why[512];
	if (!kvb_tool_model_load(o.model ? o.model : "qwen2.5-0.5b", o.dtype, &model, why, sizeof(why))) {
		fprintf(stderr, "kvbridge-serve: --model: %s\n", why);
		return 2;
	}
	kvb_kv_layout_t kv = KVB_KV_PACKED;
	if (o.kv_layout && kvb_kv_layout_parse(o.kv_layout, &kv) != KVB_OK) {
		fprintf(stderr, "kvbridge-serve: --kv-layout %s: expected packed or split\n", o.kv_layout);
		return 2;
	}
	if (!o.memory)
		o.memory = g_strdup("host");
	kvb_devmem_t mk;
	if (!kvb_devmem_parse(o.memory, &mk)) {
		fprintf(stderr, "kvbridge-serve: --memory %s: expected host, cuda or emulated\n", o.memory);
		return 2;
	}
#ifndef KVB_HAVE_CUDA
	if (mk == KVB_DEVMEM_CUDA) {
		fprintf(stderr, "kvbridge-serve: --memory cuda: this build has no CUDA (configure --with-cuda)\n");
		return 2;
	}
#endif
	int rc = pool_init(&S.pool, "KV pool", &model, kv, (uint32_t)o.block_tokens, (uint32_t)o.blocks);
	if (rc)
		return rc;
	if (relay && (rc = relay_setup()) != 0)
		return rc;
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
	if (o.allow_peers)
		hp.allow_peers = o.allow_peers;
	if (o.secret_file)
		hp.secret_file = o.secret_file;
	/* the same credentials for kvbridge's control streams as for the HTTP front */
	if (o.tls_cert)
		hp.tls_cert = o.tls_cert;
	if (o.tls_key)
		hp.tls_key = o.tls_key;
	if (o.tls_ca)
		hp.tls_ca = o.tls_ca;
	g_strlcpy(S.host, hp.host, sizeof(S.host));
	hp.rpc_port = (uint16_t)o.rpc_port;
	hp.data_port = (uint16_t)o.data_port;
	hp.n_nics = (uint32_t)o.nics;
	for (guint i = 0; o.nic_addrs && o.nic_addrs[i] && i < KVB_HW_MAX_NICS; i++)
		hp.nic_addrs[i] = o.nic_addrs[i];
	hp.context = S.ctx;
	if (o.rdma_devices)
		hp.rdma_devices = o.rdma_devices;
	/* vLLM producers write with the descriptor's keys: a consumer that pulls
	 * over their side channels must publish live ones */
	bool vllm_pulls = S.cfg.role != KVB_ROLE_PRODUCER &&
			  (S.vproto == KVB_HW_VLLM_GEN2 || !g_strcmp0(o.pull_protocol, "vllm"));
	if (o.rdma_buffer_keys || (vllm_pulls && hp.rdma_devices && *hp.rdma_devices))
		hp.rdma_buffer_keys = true;
	if (hp.rdma_devices && *hp.rdma_devices)
		S.rdma_keys = hp.rdma_buffer_keys || hp.memory_open ? "; RDMA keys reach the whole pool"
								    : "; RDMA keys per pull (windows)";
	hp.vllm_protocol = S.vproto;
	if (o.vllm_release)
		hp.vllm_release = o.vllm_release;
	hp.vllm_abort_timeout_ns = S.cfg.abort_timeout_ns;
	if (S.vproto == KVB_HW_VLLM_GEN0) {
		uint32_t worker_port = 0;
		if (S.cfg.role != KVB_ROLE_CONSUMER) {
			if (kvb_config_worker_port(&S.cfg, &worker_port, &err) != KVB_OK) {
				fprintf(stderr, "kvbridge-serve: %s\n", err.msg);
				return 2;
			}
			hp.side_channel_port = (uint16_t)worker_port;
		} else {
			hp.vllm_protocol = KVB_HW_VLLM_NONE;
		}
		S.side_base = (uint16_t)(S.cfg.bootstrap_port + S.cfg.dp_rank * S.cfg.tp_size);
	} else if (S.cfg.role != KVB_ROLE_CONSUMER) {
		/* vLLM: the TP 0 / PP 0 worker serves the bootstrap */
		if (o.bootstrap_port != NOT_GIVEN)
			hp.vllm_bootstrap_port = (uint16_t)o.bootstrap_port;
		else if (S.cfg.tp_rank == 0 && !o.bootstrap_server)
			hp.vllm_bootstrap_port = (uint16_t)S.cfg.bootstrap_port;
		/* the other ranks join tp rank 0's, on this host unless told */
		static char local[160];
		g_snprintf(local, sizeof(local), strchr(S.host, ':') ? "[%s]:%u" : "%s:%u", S.host,
			   S.cfg.bootstrap_port);
		hp.vllm_bootstrap_server = o.bootstrap_server ? o.bootstrap_server
					   : hp.vllm_bootstrap_port ? NULL : local;
	}
	/* two of our own ports the same: say which, before one bind fails */
	const struct { int port; const char *what; } mine[] = {
		{o.http_port, "--http-port"},
		{o.rpc_port, "--rpc-port"},
		{o.data_port, "--data-port"},
		{hp.vllm_bootstrap_port, "the vLLM bootstrap port (--bootstrap-port, VLLM_MOONCAKE_BOOTSTRAP_PORT)"},
		{hp.side_channel_port, "the vLLM side-channel port (VLLM_MOONCAKE_BOOTSTRAP_PORT + ranks)"},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(mine); i++)
		for (size_t j = i + 1; j < G_N_ELEMENTS(mine); j++)
			if (mine[i].port > 0 && mine[i].port == mine[j].port) {
				fprintf(stderr, "kvbridge-serve: %s and %s are both port %d; give one another\n",
					mine[i].what, mine[j].what, mine[i].port);
				return 2;
			}
	if (kvb_hw_open(&hp, &S.be, &err) != KVB_OK) {
		fprintf(stderr, "kvbridge-serve: %s\n", err.msg);
		return 1;
	}
	if (kvb_connector_new(&S.cfg, S.be, &S.conn, &err) != KVB_OK ||
	    kvb_connector_register_layout(S.conn, S.pool.regions, S.pool.n_regions, &err) != KVB_OK) {
		fprintf(stderr, "kvbridge-serve: connector: %s\n", err.msg);
		return 1;
	}
	if ((rc = vllm_layout()) != 0)
		return rc;
	kvb_connector_set_record_fn(S.conn, on_record, NULL);
	kvb_hw_set_notify(S.be, on_backend_event, NULL);
	if (relay && (rc = relay_open_upstream(hw_warning, on_backend_event, on_record)) != 0)
		return rc;
	if (mk != KVB_DEVMEM_HOST) {
		/* how each NIC reaches the GPU pool: said once, at start */
		char *paths = gpu_paths_text();
		fprintf(stderr, "kvbridge-serve: KV pool in %s GPU memory (%.1f MiB): %s\n",
			mk == KVB_DEVMEM_CUDA ? "CUDA" : "emulated", (double)S.pool.mem_len / 1048576.0, paths);
		g_free(paths);
	}
	/* the HTTP front listens where the backend's listeners do */
	S.httpd = kvb_httpd_new(S.ctx, kvb_hw_bind_host(S.be), (uint16_t)o.http_port, on_http, NULL, &gerr);
	if (!S.httpd) {
		fprintf(stderr, "kvbridge-serve: %s\n", gerr->message);
		return 1;
	}
	/* the HTTP front admits whom the backend's ports admit */
	char nets[512];
	kvb_hw_allowed_peers(S.be, nets, sizeof(nets));
	kvb_acl_t acl;
	if (kvb_acl_parse(&acl, nets, &err) == KVB_OK)
		kvb_httpd_set_acl(S.httpd, &acl);
	if (S.tls_server)
		kvb_httpd_set_tls(S.httpd, S.tls_server, "kvbridge-serve");
	S.prod = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, g_free);
	S.cons = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, g_free);
	return 0;
}

static void free_reqs(GHashTable *t, bool prod)
{
	if (!t)
		return;
	GHashTableIter it;
	gpointer v;
	g_hash_table_iter_init(&it, t);
	while (g_hash_table_iter_next(&it, NULL, &v))
		g_free(prod ? ((prod_req_t *)v)->blocks : ((cons_req_t *)v)->blocks);
	g_hash_table_destroy(t);
}

static void teardown(void)
{
	if (S.api_key)
		sodium_memzero(S.api_key, strlen(S.api_key));
	g_free(S.api_key);
	if (S.httpd)
		kvb_httpd_free(S.httpd);
	kvb_tls_free(S.tls_server);
	kvb_tls_free(S.tls_client);
	relay_fini();
	if (S.up_conn)
		kvb_connector_free(S.up_conn);
	if (S.up_be)
		kvb_backend_close(S.up_be);
	if (S.conn)
		kvb_connector_free(S.conn);
	if (S.be)
		kvb_backend_close(S.be);
	free_reqs(S.prod, true);
	free_reqs(S.cons, false);
	if (S.progress_idle) {
		g_source_destroy(S.progress_idle);
		g_source_unref(S.progress_idle);
	}
	if (S.loop)
		g_main_loop_unref(S.loop);
	if (S.ctx)
		g_main_context_unref(S.ctx);
	if (S.has_ingress)
		pool_fini(&S.ingress);
	pool_fini(&S.pool);
	kvb_config_clear(&S.cfg);
	if (S.events)
		fclose(S.events);
}

int main(int argc, char **argv)
{
	GError *gerr = NULL;
	GOptionContext *oc = g_option_context_new("- a prefill or decode worker, or a relay, that moves real KV caches");
	g_option_context_add_main_entries(oc, entries, NULL);
	g_option_context_set_description(oc,
		"A producer (prefill) fills each request's KV blocks with a pattern derived from the\n"
		"transfer id and holds them under a lease until a decoder pulls them; a consumer pulls\n"
		"them and checks every byte.  Requests arrive over HTTP with vLLM's kv_transfer_params\n"
		"(kvbridge-proxy or vLLM's routers send them).  A relay forwards each prefill leg to a\n"
		"real prefill engine (--upstream), pulls the KV from it, and serves it to the decoder.\n"
		"\n"
		"vLLM control planes (--vllm-protocol):\n"
		"  gen2  vLLM 0.16 and later (default): producers serve or join the HTTP bootstrap\n"
		"        (VLLM_MOONCAKE_BOOTSTRAP_PORT, 8998) and a ROUTER on a random port; the router\n"
		"        names each request's transfer_id.\n"
		"  gen0  vLLM 0.13-0.15: the producer's side channel at VLLM_MOONCAKE_BOOTSTRAP_PORT\n"
		"        + dp_rank * tp_size + tp_rank; transfers are named by vLLM's internal request id.\n"
		"\n"
		"Examples:\n"
		"  kvbridge-serve --role producer --http-port 8100\n"
		"  kvbridge-serve --role consumer --http-port 8200\n"
		"  kvbridge-proxy --prefiller-port 8100 --decoder-port 8200\n"
		"  curl -s localhost:8000/v1/completions -d '{\"prompt\":\"...\",\"max_tokens\":8}'\n"
		"\n"
		"  # between two vLLM instances (docs/vllm.md):\n"
		"  kvbridge-serve --role relay --upstream http://127.0.0.1:8100 --model MODEL_DIR \\\n"
		"      --dtype float32 --block-tokens 32 --http-port 8300 --bootstrap-port 8997\n"
		"\n"
		"GET /health, /stats (counters, pool, blocks held), /layout (KV regions).\n"
		"Environment: VLLM_MOONCAKE_BOOTSTRAP_PORT, VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT,\n"
		"VLLM_MOONCAKE_CONNECTOR_TIMEOUT, KVBRIDGE_* (docs/configuration.md), Mooncake's MC_*.\n");
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
	char *layout = pool_describe(&S.pool);
	fprintf(stderr, "kvbridge-serve: %s; vLLM %s%s%s\n", layout,
		S.vproto == KVB_HW_VLLM_GEN2 ? "gen2 (0.16+)" : "gen0 (0.13-0.15)",
		kvb_hw_vllm_bootstrap_port(S.be) ? ", bootstrap served here" : "",
		*kvb_hw_vllm_worker_addr(S.be) ? ", worker " : "");
	if (*kvb_hw_vllm_worker_addr(S.be))
		fprintf(stderr, "kvbridge-serve: worker %s engine %s\n", kvb_hw_vllm_worker_addr(S.be),
			o.engine_id ? o.engine_id : S.cfg.engine_id);
	g_free(layout);
	/* what a peer on the network can reach, said once */
	GString *ports = g_string_new(NULL);
	g_string_printf(ports, "http %u, handshake %u, data %u", kvb_httpd_port(S.httpd),
			kvb_hw_rpc_port(S.be), kvb_hw_data_port(S.be));
	if (kvb_hw_vllm_bootstrap_port(S.be))
		g_string_append_printf(ports, ", vLLM bootstrap %u", kvb_hw_vllm_bootstrap_port(S.be));
	if (kvb_hw_side_channel_port(S.be))
		g_string_append_printf(ports, ", vLLM side channel %u", kvb_hw_side_channel_port(S.be));
	if (S.up_be)
		g_string_append_printf(ports, ", upstream handshake %u, upstream data %u",
				       kvb_hw_rpc_port(S.up_be), kvb_hw_data_port(S.up_be));
	char nets[512];
	kvb_hw_allowed_peers(S.be, nets, sizeof(nets));
	fprintf(stderr, "kvbridge-serve: listening on %s: %s%s%s; peers allowed: %s; HTTP%s %s%s\n",
		kvb_hw_bind_host(S.be), ports->str, *kvb_hw_vllm_worker_addr(S.be) ? "; worker ROUTER " : "",
		kvb_hw_vllm_worker_addr(S.be), nets, S.tls_server ? "S (TLS)" : "",
		S.api_key ? "needs the API key (but /health)" : "open to the allowed peers (no --api-key)",
		S.rdma_keys ? S.rdma_keys : "");
	g_string_free(ports, TRUE);
	printf("kvbridge-serve: ready role=%s http=%u segment=%s data_port=%u side_channel=%u "
	       "bootstrap=%u vllm=%s model=%s blocks=%d lease_s=%.1f%s\n",
	       relay_is() ? "relay" : kvb_role_name(S.cfg.role), kvb_httpd_port(S.httpd),
	       kvb_hw_segment_name(S.be), kvb_hw_data_port(S.be), kvb_hw_side_channel_port(S.be),
	       kvb_hw_vllm_bootstrap_port(S.be), S.vproto == KVB_HW_VLLM_GEN2 ? "gen2" : "gen0",
	       S.pool.model.name, o.blocks, (double)S.cfg.abort_timeout_ns / 1e9,
	       S.tls_server ? " tls=on" : "");
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
