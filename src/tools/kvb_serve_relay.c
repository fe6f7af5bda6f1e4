/*
 * kvbridge-serve --role relay: a bridge between a prefill engine (upstream)
 * and a decode engine, e.g. vLLM 0.13 prefillers feeding vLLM 0.32
 * decoders, or a KV pool between two tiers.
 *
 * To the router the relay is the prefiller: its bootstrap and engine id
 * (gen2) or its side channel (gen0) are what decoders are sent to.  For
 * each prefill leg it receives:
 *   1. the downstream transfer is begun (a decoder that asks first waits);
 *   2. the leg goes to the upstream engine in the upstream's router
 *      contract, from a worker thread; its answer gives the prompt length
 *      (usage.prompt_tokens) and, for gen0, where to pull from;
 *   3. the relay pulls the KV from upstream as a decoder would (into the
 *      ingress pool when the layouts differ);
 *   4. when the pull is done the blocks (converted to the downstream layout
 *      when block sizes or K/V packing differ) are made ready for the
 *      downstream transfer, under the same lease as any producer's; a
 *      failed pull aborts the transfer, so the decoder gets an error, not
 *      stale bytes.
 * The prefill leg is answered once upstream has answered (with the
 * relay's own kv_transfer_params for a gen0 router).
 *
 * Layouts: the two sides must hold the same model (layers, KV heads, head
 * size, dtype); they may differ in tokens per block and in K/V packing,
 * which the relay converts token by token.  Anything else is refused at
 * start, with both layouts printed.
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <json-glib/json-glib.h>

#include "kvb_serve.h"

typedef struct relay_req {
	int refs;                   /* the prefill leg's path, and an early pull's */
	bool failed;                /* the router and the decoder have been told */
	char tid[KVB_ID_MAX];       /* the downstream transfer */
	char rid[KVB_ID_MAX];       /* X-Request-Id sent upstream */
	char endpoint[64];
	uint64_t cid;               /* the router's prefill leg, answered after upstream's */
	GBytes *body;               /* what goes upstream */
	/* the upstream answer (filled by the worker thread) */
	int status;
	GByteArray *answer;
	char why[512];
	char engine_id[KVB_ID_MAX]; /* gen2 upstream, resolved by the thread when unknown */
	/* the upstream pull: posted when the prompt length is known (from the
	 * leg's token ids at once, else from upstream's answer) */
	cons_req_t *pull;           /* in flight */
	uint64_t early_tokens;      /* > 0: posted with the leg, for this many tokens */
	bool drain;                 /* failed, but upstream holds the KV: let the pull end */
	bool answered;              /* upstream answered the leg, lengths agree */
	bool pulled;                /* the pull is done: in_blocks hold the KV */
	uint32_t *in_blocks, in_n;  /* ingress blocks, ours until they serve downstream */
	uint64_t tokens;
} relay_req_t;

static struct {
	bool on;
	kvb_hw_vllm_protocol_t up_proto;
	char up_host[256];
	uint16_t up_port;
	bool up_https;              /* --upstream https://: verified against S.tls_client */
	char up_bootstrap[300];
	char up_engine[KVB_ID_MAX];
	GMutex lock;                /* up_engine, set by a worker thread */
	GThreadPool *threads;
	serve_pool_t *ingress;      /* where upstream writes (== &S.pool when layouts match) */
	bool convert;
	uint64_t relayed, failed;
	uint64_t early_pulls;       /* posted with the prefill leg, before upstream's answer */
} R;

bool relay_is(void)
{
	return R.on;
}

void relay_stats(char *buf, size_t len)
{
	if (!R.on) {
		*buf = 0;
		return;
	}
	g_snprintf(buf, len, ",\"relay\":{\"relayed\":%" PRIu64 ",\"failed\":%" PRIu64
		   ",\"early_pulls\":%" PRIu64 "}", R.relayed, R.failed, R.early_pulls);
}

/* Same model (layers, heads, head size, dtype); true when the block sizes
 * or K/V packing differ (a conversion). */
static bool layouts_compatible(const serve_pool_t *a, const serve_pool_t *b)
{
	return a->model.m.layers == b->model.m.layers && a->model.m.kv_heads == b->model.m.kv_heads &&
	       a->model.m.head_dim == b->model.m.head_dim &&
	       a->model.m.dtype_bytes == b->model.m.dtype_bytes;
}

int relay_setup(void)
{
	R.on = true;
	g_mutex_init(&R.lock);
	if (!o.upstream) {
		fprintf(stderr, "kvbridge-serve: --role relay needs --upstream http://HOST:PORT (the "
			"prefill engine)\n");
		return 2;
	}
	R.up_https = g_str_has_prefix(o.upstream, "https://");
	const char *u = g_str_has_prefix(o.upstream, "http://") ? o.upstream + 7
			: R.up_https ? o.upstream + 8 : o.upstream;
	char hostport[300];
	g_strlcpy(hostport, u, sizeof(hostport));
	char *slash = strchr(hostport, '/');
	if (slash)
		*slash = 0;
	const char *colon = strrchr(hostport, ':');
	if (!colon || colon == hostport || atoi(colon + 1) <= 0 || atoi(colon + 1) > 65535) {
		fprintf(stderr, "kvbridge-serve: --upstream %s: expected http://HOST:PORT or "
			"https://HOST:PORT\n", o.upstream);
		return 2;
	}
	if (R.up_https && !S.tls_client) {
		kvb_err_t e;
		if (!(S.tls_client = kvb_tls_client_new(NULL, NULL, &e))) {
			fprintf(stderr, "kvbridge-serve: --upstream %s: %s\n", o.upstream, e.msg);
			return 2;
		}
	}
	g_strlcpy(R.up_host, hostport, MIN(sizeof(R.up_host), (size_t)(colon - hostport) + 1));
	R.up_port = (uint16_t)atoi(colon + 1);
	if (kvb_hw_vllm_protocol_parse(o.upstream_protocol ? o.upstream_protocol
							   : (o.vllm_protocol ? o.vllm_protocol : "gen2"),
				       &R.up_proto) != KVB_OK ||
	    (R.up_proto != KVB_HW_VLLM_GEN0 && R.up_proto != KVB_HW_VLLM_GEN2)) {
		fprintf(stderr, "kvbridge-serve: --upstream-protocol %s: expected gen2 or gen0\n",
			o.upstream_protocol);
		return 2;
	}
	if (o.upstream_bootstrap)
		g_strlcpy(R.up_bootstrap, o.upstream_bootstrap, sizeof(R.up_bootstrap));
	else
		g_snprintf(R.up_bootstrap, sizeof(R.up_bootstrap), "http://%s:%u", R.up_host,
			   S.cfg.bootstrap_port);
	if (o.upstream_engine_id)
		g_strlcpy(R.up_engine, o.upstream_engine_id, sizeof(R.up_engine));
	/* the upstream layout */
	kvb_tool_model_t up;
	char why[512];
	if (!kvb_tool_model_load(o.upstream_model ? o.upstream_model : (o.model ? o.model : "qwen2.5-0.5b"),
				 o.dtype, &up, why, sizeof(why))) {
		fprintf(stderr, "kvbridge-serve: --upstream-model: %s\n", why);
		return 2;
	}
	kvb_kv_layout_t kv = S.pool.kv;
	if (o.upstream_kv_layout && kvb_kv_layout_parse(o.upstream_kv_layout, &kv) != KVB_OK) {
		fprintf(stderr, "kvbridge-serve: --upstream-kv-layout %s: expected packed or split\n",
			o.upstream_kv_layout);
		return 2;
	}
	uint32_t bt = o.upstream_block_tokens > 0 ? (uint32_t)o.upstream_block_tokens : S.pool.block_tokens;
	R.ingress = &S.pool;
	if (kv != S.pool.kv || bt != S.pool.block_tokens || strcmp(up.name, S.pool.model.name)) {
		/* a pool of its own for what arrives, the same bytes per token */
		uint64_t tokens = (uint64_t)S.pool.n_blocks * S.pool.block_tokens;
		int rc = pool_init(&S.ingress, "ingress pool", &up, kv, bt, (uint32_t)((tokens + bt - 1) / bt));
		if (rc)
			return rc;
		S.has_ingress = true;
		char *a = pool_describe(&S.ingress), *b = pool_describe(&S.pool);
		if (!layouts_compatible(&S.ingress, &S.pool)) {
			fprintf(stderr, "kvbridge-serve: the relay cannot convert between these layouts (they "
				"must hold the same model, dtype and KV heads):\n  upstream:   %s\n  downstream: %s\n",
				a, b);
			g_free(a);
			g_free(b);
			return 2;
		}
		fprintf(stderr, "kvbridge-serve: relay converts\n  upstream:   %s\n  downstream: %s\n", a, b);
		g_free(a);
		g_free(b);
		R.ingress = &S.ingress;
		R.convert = true;
	}
	return 0;
}

/* The upstream side has a backend instance and connector of its own: the
 * core keeps one layout per connector, and the upstream layout may differ.
 * A consumer on the same context, speaking the upstream's protocol, with
 * the ingress pool's regions (the downstream pool's when they match). */
int relay_open_upstream(void (*warn)(void *, const char *), void (*notify)(void *),
			kvb_record_fn record)
{
	kvb_err_t err;
	kvb_hw_params_t hp;
	kvb_hw_params_default(&hp);
	hp.warn_fn = warn;
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
	if (o.tls_cert)
		hp.tls_cert = o.tls_cert;
	if (o.tls_key)
		hp.tls_key = o.tls_key;
	if (o.tls_ca)
		hp.tls_ca = o.tls_ca;
	hp.n_nics = (uint32_t)o.nics;
	for (guint i = 0; o.nic_addrs && o.nic_addrs[i] && i < KVB_HW_MAX_NICS; i++)
		hp.nic_addrs[i] = o.nic_addrs[i];
	if (o.rdma_devices)
		hp.rdma_devices = o.rdma_devices;
	hp.context = S.ctx;
	hp.vllm_protocol = R.up_proto == KVB_HW_VLLM_GEN2 ? KVB_HW_VLLM_GEN2 : KVB_HW_VLLM_NONE;
	if (o.vllm_release)
		hp.vllm_release = o.vllm_release;
	hp.vllm_abort_timeout_ns = S.cfg.abort_timeout_ns;
	if (kvb_hw_open(&hp, &S.up_be, &err) != KVB_OK) {
		fprintf(stderr, "kvbridge-serve: relay upstream side: %s\n", err.msg);
		return 1;
	}
	kvb_config_t cfg;
	kvb_config_init(&cfg);
	kvb_config_copy(&cfg, &S.cfg);
	cfg.role = KVB_ROLE_CONSUMER;
	int rc = kvb_connector_new(&cfg, S.up_be, &S.up_conn, &err);
	kvb_config_clear(&cfg);
	if (rc != KVB_OK ||
	    kvb_connector_register_layout(S.up_conn, R.ingress->regions, R.ingress->n_regions, &err) != KVB_OK) {
		fprintf(stderr, "kvbridge-serve: relay upstream connector: %s\n", err.msg);
		return 1;
	}
	if (R.up_proto == KVB_HW_VLLM_GEN2) {
		/* the names vLLM producers pair regions by */
		serve_pool_t *p = R.ingress;
		char **buf = g_new0(char *, p->n_regions + 1);
		for (uint32_t i = 0; i < p->n_regions; i++)
			buf[i] = g_strdup(pool_layer_name(p, i));
		kvb_hw_vllm_layout_t l = {.regions = p->regions, .n_regions = p->n_regions,
					  .layer_names = (const char *const *)buf, .tp_size = S.cfg.tp_size,
					  .tp_rank = S.cfg.tp_rank, .dp_rank = S.cfg.dp_rank};
		rc = kvb_hw_vllm_set_layout(S.up_be, &l, &err);
		g_strfreev(buf);
		if (rc != KVB_OK) {
			fprintf(stderr, "kvbridge-serve: relay upstream layout: %s\n", err.msg);
			return 1;
		}
	}
	kvb_connector_set_record_fn(S.up_conn, record, NULL);
	kvb_hw_set_notify(S.up_be, notify, NULL);
	fprintf(stderr, "kvbridge-serve: relay: upstream %s:%u speaks %s; its KV lands at segment %s\n",
		R.up_host, R.up_port, R.up_proto == KVB_HW_VLLM_GEN2 ? "gen2" : "gen0",
		kvb_hw_segment_name(S.up_be));
	return 0;
}

void relay_fini(void)
{
	if (!R.on)
		return;
	/* a worker still waiting on upstream would come back to a context that
	 * is gone: leave such a pool to the process's exit */
	if (R.threads && !g_thread_pool_get_num_threads(R.threads))
		g_thread_pool_free(R.threads, TRUE, FALSE);
	R.threads = NULL;
}

/* ---- conversion ------------------------------------------------------------- */

/*
 * Byte order inside a block, as vLLM's CPU attention kernels keep it (read
 * from live vLLM 0.13.0 and 0.32.0 decoders, tests/vllm/README.md), for
 * head h, token slot s, dimension d, element size es, D dims, bt tokens:
 *   packed (one region a layer, 0.16+): per head, K as [dim][token] then V
 *     as [token][dim]: K at (h*2*bt*D + d*bt + s)*es, V at
 *     (h*2*bt*D + bt*D + s*D + d)*es
 *   split (K and V regions, 0.13-0.19): K region [head][dim][token], V
 *     region [head][token][dim]: K at ((h*D + d)*bt + s)*es, V at
 *     ((h*bt + s)*D + d)*es
 * elem_at gives (region within the layer, offset) of one element.
 */
static uint64_t elem_at(const serve_pool_t *p, bool v, uint64_t h, uint64_t s, uint64_t d,
			uint32_t *region)
{
	uint64_t D = p->model.m.head_dim, bt = p->block_tokens, es = p->model.m.dtype_bytes;
	if (p->kv == KVB_KV_SPLIT) {
		*region = v ? 1 : 0;
		return (v ? (h * bt + s) * D + d : (h * D + d) * bt + s) * es;
	}
	*region = 0;
	return (h * 2 * bt * D + (v ? bt * D + s * D + d : d * bt + s)) * es;
}

/* Copy tokens [0, tokens) of a request from in's blocks to out's, layer by
 * layer through host buffers: block sizes and K/V packing may differ. */
static void convert(serve_pool_t *in, const uint32_t *ib, serve_pool_t *out, const uint32_t *ob,
		    uint64_t tokens)
{
	const kvb_model_t *m = &out->model.m;
	uint32_t heads = S.cfg.tp_size >= m->kv_heads ? 1 : m->kv_heads / S.cfg.tp_size;
	uint64_t es = m->dtype_bytes;
	uint32_t n_in = pool_blocks_for(in, tokens), n_out = pool_blocks_for(out, tokens);
	uint32_t rin = in->kv == KVB_KV_SPLIT ? 2 : 1, rout = out->kv == KVB_KV_SPLIT ? 2 : 1;
	uint64_t bin = in->regions[0].block_bytes, bout = out->regions[0].block_bytes;
	uint8_t *src = g_malloc((size_t)(rin * n_in * bin));
	uint8_t *dst = g_malloc0((size_t)(rout * n_out * bout));
	for (uint32_t l = 0; l < m->layers; l++) {
		for (uint32_t r = 0; r < rin; r++)
			for (uint32_t k = 0; k < n_in; k++)
				pool_copy_block_bytes(in, l * rin + r, ib[k], 0, src + (r * n_in + k) * bin, bin, false);
		for (uint64_t t = 0; t < tokens; t++) {
			uint64_t ki = t / in->block_tokens, si = t % in->block_tokens;
			uint64_t ko = t / out->block_tokens, so = t % out->block_tokens;
			for (int v = 0; v < 2; v++)
				for (uint64_t h = 0; h < heads; h++)
					for (uint64_t d = 0; d < m->head_dim; d++) {
						uint32_t ri, ro;
						uint64_t oi = elem_at(in, v, h, si, d, &ri);
						uint64_t oo = elem_at(out, v, h, so, d, &ro);
						memcpy(dst + (ro * n_out + ko) * bout + oo, src + (ri * n_in + ki) * bin + oi, es);
					}
		}
		for (uint32_t r = 0; r < rout; r++)
			for (uint32_t k = 0; k < n_out; k++)
				pool_copy_block_bytes(out, l * rout + r, ob[k], 0, dst + (r * n_out + k) * bout, bout, true);
	}
	g_free(src);
	g_free(dst);
}

/* ---- the prefill leg ---------------------------------------------------------- */

static gboolean upstream_answered(gpointer data);

/* Worker thread: the prefill leg upstream (blocking), then, when the gen2
 * engine id is unknown, the upstream bootstrap's /query. */
static void upstream_call(gpointer data, gpointer user)
{
	(void)user;
	relay_req_t *q = data;
	char rid_hdr[KVB_ID_MAX + 16];
	g_snprintf(rid_hdr, sizeof(rid_hdr), "X-Request-Id: %s", q->rid);
	const char *extra[] = {rid_hdr, NULL};
	GError *e = NULL;
	gsize len;
	const char *body = g_bytes_get_data(q->body, &len);
	q->answer = g_byte_array_new();
	if (!kvb_http_request(R.up_host, R.up_port, R.up_https ? S.tls_client : NULL, "POST", q->endpoint,
			      extra, "application/json", body, len,
			      600000, &q->status, q->answer, &e)) {
		g_snprintf(q->why, sizeof(q->why), "upstream %s:%u: %s", R.up_host, R.up_port, e->message);
		g_error_free(e);
		q->status = 0;
	}
	g_mutex_lock(&R.lock);
	g_strlcpy(q->engine_id, R.up_engine, sizeof(q->engine_id));
	g_mutex_unlock(&R.lock);
	if (q->status == 200 && R.up_proto == KVB_HW_VLLM_GEN2 && !q->engine_id[0]) {
		/* as vLLM's proxy: dp rank 0's engine at the upstream bootstrap */
		const char *b = g_str_has_prefix(R.up_bootstrap, "http://") ? R.up_bootstrap + 7 : R.up_bootstrap;
		char host[256];
		g_strlcpy(host, b, sizeof(host));
		char *c = strrchr(host, ':');
		int status = 0;
		GByteArray *qb = g_byte_array_new();
		if (c) {
			*c = 0;
			/* vLLM's bootstrap server speaks plain HTTP */
			if (kvb_http_request(host, (uint16_t)atoi(c + 1), NULL, "GET", "/query", NULL, NULL, NULL, 0,
					     30000, &status, qb, NULL) && status == 200) {
				JsonParser *jp = json_parser_new();
				if (json_parser_load_from_data(jp, (const char *)qb->data, qb->len, NULL) &&
				    JSON_NODE_HOLDS_OBJECT(json_parser_get_root(jp))) {
					JsonObject *r = json_node_get_object(json_parser_get_root(jp));
					if (json_object_has_member(r, "0") &&
					    JSON_NODE_HOLDS_OBJECT(json_object_get_member(r, "0"))) {
						JsonObject *d0 = json_object_get_object_member(r, "0");
						const char *id = json_object_has_member(d0, "engine_id")
								 ? json_object_get_string_member(d0, "engine_id") : NULL;
						if (id)
							g_strlcpy(q->engine_id, id, sizeof(q->engine_id));
					}
				}
				g_object_unref(jp);
			}
		}
		g_byte_array_unref(qb);
		if (!q->engine_id[0])
			g_snprintf(q->why, sizeof(q->why), "upstream bootstrap %s: no engine at dp rank 0 "
				   "(HTTP %d)", R.up_bootstrap, status);
		g_mutex_lock(&R.lock);
		if (q->engine_id[0])
			g_strlcpy(R.up_engine, q->engine_id, sizeof(R.up_engine));
		g_mutex_unlock(&R.lock);
	}
	g_main_context_invoke(S.ctx, upstream_answered, q);
}

static void relay_req_free(relay_req_t *q)
{
	if (q->in_blocks)
		pool_free(R.ingress, q->in_blocks, q->in_n);
	if (q->body)
		g_bytes_unref(q->body);
	if (q->answer)
		g_byte_array_unref(q->answer);
	g_free(q);
}

static void relay_req_unref(relay_req_t *q)
{
	if (--q->refs <= 0)
		relay_req_free(q);
}

/* The transfer fails: the router's leg (when still open) gets the reason,
 * the decoder's pull an error, an upstream pull in flight is cancelled. */
static void relay_fail(relay_req_t *q, int http, const char *msg)
{
	if (q->failed)
		return;
	q->failed = true;
	R.failed++;
	kvb_err_t err;
	kvb_producer_abort(S.conn, q->tid, &err);
	cons_req_t *r = q->pull;
	if (r && r->query_pending) {
		/* not posted yet (the bootstrap has not answered): forget it */
		q->pull = NULL;
		r->relay = NULL;
		pool_free(r->pool, r->blocks, r->n);
		r->blocks = NULL;
		g_hash_table_remove(S.cons, r->id);
		relay_req_unref(q); /* the pull's reference; the caller holds another */
	} else if (r && !q->drain) {
		kvb_consumer_abort(S.up_conn, r->id, &err); /* relay_pulled drops the pull's ref */
	}
	fprintf(stderr, "kvbridge-serve: relay %s: %s\n", q->tid, msg);
	if (q->cid)
		kvb_httpd_respond_error(S.httpd, q->cid, http, "KVRelayError", msg);
	q->cid = 0;
	schedule_progress();
}

/* Post the pull of tokens tokens into the ingress pool; false (q failed)
 * when it could not be.  The pull holds a reference on q. */
static bool relay_pull(relay_req_t *q, uint64_t tokens, const char *up_host, int64_t up_port)
{
	char why[KVB_ERR_MSG_MAX];
	cons_req_t *r = g_new0(cons_req_t, 1);
	g_snprintf(r->id, sizeof(r->id), "relay-%s", q->tid);
	r->pool = R.ingress;
	r->n = pool_blocks_for(R.ingress, tokens);
	r->tokens = tokens;
	r->start_ns = serve_now_ns();
	r->conn = S.up_conn;
	r->be = S.up_be;
	if (R.up_proto == KVB_HW_VLLM_GEN2)
		g_strlcpy(r->transfer_id, q->tid, sizeof(r->transfer_id));
	else
		gen0_transfer_id(q->rid, q->endpoint, r->transfer_id, sizeof(r->transfer_id));
	if (g_hash_table_contains(S.cons, r->id) || !pool_alloc(R.ingress, r->n, &r->blocks)) {
		g_free(r);
		relay_fail(q, 503, "the relay's KV pool is full (or the transfer is in flight twice)");
		return false;
	}
	pool_poison(R.ingress, r->blocks, r->n);
	g_hash_table_insert(S.cons, r->id, r);
	r->relay = q;
	q->pull = r;
	q->refs++;
	bool ok;
	if (R.up_proto == KVB_HW_VLLM_GEN2) {
		ok = pull_gen2(r, R.up_bootstrap, q->engine_id, why, sizeof(why));
	} else {
		char addr[KVB_ADDR_MAX];
		g_snprintf(addr, sizeof(addr), strchr(up_host, ':') ? "vllm://[%s]:%" PRId64 : "vllm://%s:%" PRId64,
			   up_host, up_port + (int64_t)S.cfg.tp_rank);
		const char *producers[1] = {addr};
		ok = pull_start(r, producers, 1, 0, why, sizeof(why));
	}
	if (!ok) {
		q->pull = NULL;
		r->relay = NULL;
		pool_free(R.ingress, r->blocks, r->n);
		r->blocks = NULL;
		g_hash_table_remove(S.cons, r->id);
		q->refs--;
		relay_fail(q, 502, why);
	}
	return ok;
}

/* Both halves are in (upstream answered the leg, its KV is in the ingress
 * pool): convert if the layouts differ, and serve the decoder. */
static void relay_make_ready(relay_req_t *q)
{
	kvb_err_t err;
	uint32_t *out = q->in_blocks, n_out = q->in_n;
	if (o.test_corrupt_block >= 0 && (uint32_t)o.test_corrupt_block < q->in_n) {
		/* tests: the negative control.  Every byte of one block flipped. */
		serve_pool_t *p = R.ingress;
		for (uint32_t reg = 0; reg < p->n_regions; reg++) {
			uint64_t len = p->regions[reg].block_bytes;
			uint8_t *buf = g_malloc(len);
			pool_copy_block_bytes(p, reg, q->in_blocks[o.test_corrupt_block], 0, buf, len, false);
			for (uint64_t i = 0; i < len; i++)
				buf[i] ^= 0x5a;
			pool_copy_block_bytes(p, reg, q->in_blocks[o.test_corrupt_block], 0, buf, len, true);
			g_free(buf);
		}
	}
	if (R.convert) {
		n_out = pool_blocks_for(&S.pool, q->tokens);
		if (!pool_alloc(&S.pool, n_out, &out)) {
			relay_fail(q, 503, "the relay's downstream KV pool is full");
			return;
		}
		convert(R.ingress, q->in_blocks, &S.pool, out, q->tokens);
		pool_free(R.ingress, q->in_blocks, q->in_n);
	}
	q->in_blocks = NULL; /* serving downstream now (or freed) */
	kvb_block_list_t g = {out, n_out};
	if (kvb_producer_ready(S.conn, q->tid, &g, 1, &err) != KVB_OK) {
		char msg[KVB_ERR_MSG_MAX + 64];
		g_snprintf(msg, sizeof(msg), "downstream transfer: %s", err.msg);
		pool_free(&S.pool, out, n_out);
		relay_fail(q, 502, msg);
		return;
	}
	prod_req_t *p = g_new0(prod_req_t, 1);
	g_strlcpy(p->id, q->tid, sizeof(p->id));
	p->pool = &S.pool;
	p->blocks = out;
	p->n = n_out;
	p->ready_ns = serve_now_ns();
	g_hash_table_insert(S.prod, p->id, p);
	R.relayed++;
	schedule_progress();
}

/* Upstream answered the prefill leg: answer the router, and pull the KV
 * (unless the pull went out with the leg). */
static gboolean upstream_answered(gpointer data)
{
	relay_req_t *q = data;
	char msg[1024];
	if (q->failed) {
		relay_req_unref(q);
		return G_SOURCE_REMOVE;
	}
	if (q->status != 200) {
		if (q->status)
			g_snprintf(msg, sizeof(msg), "upstream answered HTTP %d: %.400s", q->status,
				   q->answer ? (const char *)q->answer->data : "");
		else
			g_strlcpy(msg, q->why, sizeof(msg));
		relay_fail(q, 502, msg);
		relay_req_unref(q);
		return G_SOURCE_REMOVE;
	}
	JsonParser *jp = json_parser_new();
	uint64_t tokens = 0;
	const char *up_host = NULL;
	int64_t up_port = 0;
	JsonObject *root = NULL, *params = NULL;
	if (json_parser_load_from_data(jp, (const char *)q->answer->data, q->answer->len, NULL) &&
	    JSON_NODE_HOLDS_OBJECT(json_parser_get_root(jp))) {
		root = json_node_get_object(json_parser_get_root(jp));
		if (json_object_has_member(root, "usage") &&
		    JSON_NODE_HOLDS_OBJECT(json_object_get_member(root, "usage"))) {
			int64_t pt = 0;
			if (param_int(json_object_get_object_member(root, "usage"), "prompt_tokens", &pt) && pt > 0)
				tokens = (uint64_t)pt;
		}
		if (json_object_has_member(root, "kv_transfer_params") &&
		    JSON_NODE_HOLDS_OBJECT(json_object_get_member(root, "kv_transfer_params")))
			params = json_object_get_object_member(root, "kv_transfer_params");
		up_host = param_str(params, "remote_host");
		param_int(params, "remote_port", &up_port);
	}
	if (!tokens || (R.up_proto == KVB_HW_VLLM_GEN0 && (!up_host || up_port <= 0 || up_port > 65535)) ||
	    (R.up_proto == KVB_HW_VLLM_GEN2 && !q->engine_id[0]) ||
	    (q->early_tokens && tokens != q->early_tokens)) {
		/* upstream prefilled and serves the early pull soon: aborting it would
		 * fail upstream's write and leave its blocks held until its lease
		 * (480 s for vLLM); the pull ends, relay_pulled drops the bytes */
		q->drain = q->early_tokens && tokens;
		if (q->early_tokens && tokens && tokens != q->early_tokens)
			g_snprintf(msg, sizeof(msg), "upstream prefilled %" PRIu64 " prompt tokens, the leg "
				   "named %" PRIu64 ": the KV pulled with the leg cannot be trusted", tokens,
				   q->early_tokens);
		else
			g_snprintf(msg, sizeof(msg), "upstream's answer lacks %s", !tokens ? "usage.prompt_tokens"
				   : R.up_proto == KVB_HW_VLLM_GEN0 ? "kv_transfer_params remote_host/remote_port "
				   "(is it a gen0 kv_producer?)" : q->why);
		relay_fail(q, 502, msg);
		g_object_unref(jp);
		relay_req_unref(q);
		return G_SOURCE_REMOVE;
	}
	q->tokens = tokens;
	bool ok = q->early_tokens || relay_pull(q, tokens, up_host, up_port);
	/* the router's prefill leg: upstream's answer, with our kv_transfer_params */
	if (ok && q->cid) {
		if (params) {
			json_object_remove_member(root, "kv_transfer_params");
		}
		if (S.vproto == KVB_HW_VLLM_GEN0) {
			JsonObject *kp = json_object_new();
			json_object_set_boolean_member(kp, "do_remote_prefill", TRUE);
			json_object_set_boolean_member(kp, "do_remote_decode", FALSE);
			json_object_set_string_member(kp, "remote_host", S.host);
			json_object_set_int_member(kp, "remote_port", S.side_base);
			json_object_set_string_member(kp, "remote_engine_id", S.cfg.engine_id);
			json_object_set_object_member(root, "kv_transfer_params", kp);
		} else {
			json_object_set_null_member(root, "kv_transfer_params");
		}
		JsonGenerator *g = json_generator_new();
		JsonNode *n = json_node_new(JSON_NODE_OBJECT);
		json_node_set_object(n, root);
		json_generator_set_root(g, n);
		gsize blen;
		char *b = json_generator_to_data(g, &blen);
		kvb_httpd_respond(S.httpd, q->cid, 200, "application/json", b, blen);
		g_free(b);
		json_node_free(n);
		g_object_unref(g);
		q->cid = 0;
	}
	g_object_unref(jp);
	if (ok) {
		q->answered = true;
		if (q->pulled)
			relay_make_ready(q); /* the early pull was first */
	}
	relay_req_unref(q);
	return G_SOURCE_REMOVE;
}

/* A leg's prompt given as token ids ("prompt": [ints]): its length, or 0. */
static uint64_t prompt_token_count(JsonObject *root)
{
	if (!root || !json_object_has_member(root, "prompt") ||
	    !JSON_NODE_HOLDS_ARRAY(json_object_get_member(root, "prompt")))
		return 0;
	JsonArray *a = json_object_get_array_member(root, "prompt");
	guint n = json_array_get_length(a);
	for (guint i = 0; i < n; i++) {
		JsonNode *e = json_array_get_element(a, i);
		if (!JSON_NODE_HOLDS_VALUE(e) || json_node_get_value_type(e) != G_TYPE_INT64)
			return 0; /* text, or a batch: upstream's answer will say */
	}
	return n;
}

void relay_handle(uint64_t cid, const kvb_http_msg_t *req, const char *body, size_t body_len,
		  JsonObject *root, JsonObject *params, const char *rid)
{
	(void)body;
	(void)body_len;
	if (param_true(params, "do_remote_prefill")) {
		kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError",
					"a relay serves prefill legs (do_remote_decode); send decode legs to "
					"the decoder, with the relay as its producer");
		return;
	}
	if (!param_true(params, "do_remote_decode")) {
		kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError",
					"kv_transfer_params needs do_remote_decode: a relay only moves KV caches");
		return;
	}
	relay_req_t *q = g_new0(relay_req_t, 1);
	q->refs = 1;
	g_strlcpy(q->rid, rid, sizeof(q->rid));
	g_strlcpy(q->endpoint, req->target, sizeof(q->endpoint));
	q->cid = cid;
	if (S.vproto == KVB_HW_VLLM_GEN2) {
		const char *t = param_str(params, "transfer_id");
		if (!t || !*t || strlen(t) >= KVB_ID_MAX - 8) {
			kvb_httpd_respond_error(S.httpd, cid, 400, "BadRequestError",
						"Missing transfer_id in kv_transfer_params from router!");
			g_free(q);
			return;
		}
		g_strlcpy(q->tid, t, sizeof(q->tid));
	} else {
		gen0_transfer_id(rid, req->target, q->tid, sizeof(q->tid));
	}
	kvb_err_t err;
	if (kvb_producer_begin(S.conn, q->tid, &err) != KVB_OK) {
		kvb_httpd_respond_error(S.httpd, cid, 409, "KVRelayError", err.msg);
		g_free(q);
		return;
	}
	/* A gen2 upstream whose engine we know, and a prompt of token ids: the
	 * pull goes out now, as vLLM's decoder sends its request with the
	 * decode leg, so the prefiller writes the KV the moment it has it
	 * instead of after its HTTP answer has come back here. */
	uint64_t early = R.up_proto == KVB_HW_VLLM_GEN2 ? prompt_token_count(root) : 0;
	if (early) {
		g_mutex_lock(&R.lock);
		g_strlcpy(q->engine_id, R.up_engine, sizeof(q->engine_id));
		g_mutex_unlock(&R.lock);
		if (q->engine_id[0]) {
			q->early_tokens = early;
			q->tokens = early;
			R.early_pulls++;
			if (!relay_pull(q, early, NULL, 0)) {
				relay_req_unref(q);
				return;
			}
		}
	}
	/* the leg upstream, in the upstream's contract (kvbridge_tokens, a
	 * kvbridge engine's prompt length, goes along; vLLM ignores it) */
	int64_t kt = 0;
	bool has_kt = param_int(params, "kvbridge_tokens", &kt);
	JsonObject *kp = json_object_new();
	if (has_kt)
		json_object_set_int_member(kp, "kvbridge_tokens", kt);
	json_object_set_boolean_member(kp, "do_remote_decode", TRUE);
	json_object_set_boolean_member(kp, "do_remote_prefill", FALSE);
	if (R.up_proto == KVB_HW_VLLM_GEN2) {
		json_object_set_string_member(kp, "transfer_id", q->tid);
	} else {
		json_object_set_null_member(kp, "remote_engine_id");
		json_object_set_null_member(kp, "remote_block_ids");
		json_object_set_null_member(kp, "remote_host");
		json_object_set_null_member(kp, "remote_port");
	}
	json_object_set_object_member(root, "kv_transfer_params", kp);
	json_object_set_int_member(root, "max_tokens", 1);
	json_object_set_boolean_member(root, "stream", FALSE);
	if (json_object_has_member(root, "max_completion_tokens"))
		json_object_set_int_member(root, "max_completion_tokens", 1);
	json_object_remove_member(root, "stream_options");
	JsonGenerator *g = json_generator_new();
	JsonNode *n = json_node_new(JSON_NODE_OBJECT);
	json_node_set_object(n, root);
	json_generator_set_root(g, n);
	gsize blen;
	char *b = json_generator_to_data(g, &blen);
	q->body = g_bytes_new_take(b, blen);
	json_node_free(n);
	g_object_unref(g);
	if (!R.threads)
		R.threads = g_thread_pool_new(upstream_call, NULL, 32, FALSE, NULL);
	g_thread_pool_push(R.threads, q, NULL);
}

void relay_pulled(cons_req_t *r, const kvb_finished_t *f)
{
	relay_req_t *q = r->relay;
	r->relay = NULL;
	q->pull = NULL;
	if (q->failed) {
		relay_req_unref(q);
		return; /* the caller frees the ingress blocks */
	}
	if (f->state != KVB_CONSUMER_DONE) {
		char msg[KVB_REASON_MAX + 64];
		g_snprintf(msg, sizeof(msg), "upstream pull failed: %s (%s)", kvb_status_name(f->status),
			   f->reason);
		relay_fail(q, 502, msg);
		relay_req_unref(q);
		return;
	}
	serve_log("relay %s: %" PRIu64 " tokens pulled from upstream (%.3f ms)%s", q->tid, r->tokens,
		  (double)(serve_now_ns() - r->start_ns) / 1e6,
		  q->answered ? ", ready downstream" : ", before upstream's answer");
	q->in_blocks = r->blocks;
	q->in_n = r->n;
	r->blocks = NULL; /* q's now */
	q->pulled = true;
	if (q->answered)
		relay_make_ready(q);
	relay_req_unref(q);
}

void relay_served(prod_req_t *r, const kvb_finished_t *f)
{
	(void)r;
	if (f->state != KVB_PRODUCER_SENT)
		serve_log("relay %s downstream: %s (%s)", f->id, kvb_producer_state_name(f->state), f->reason);
}
