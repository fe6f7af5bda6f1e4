/*
 * kvbridge-proxy: the disaggregated-serving router in front of vLLM
 * MooncakeConnector prefillers (P) and decoders (D), speaking either router
 * contract (kvb_proxy_vllm.h has the bodies, field by field):
 *
 * --vllm-protocol gen0 (vLLM 0.13.0 - 0.15.1; vLLM's toy_proxy_server.py):
 *   1. the client's completion request goes to a prefiller with
 *      kv_transfer_params {do_remote_decode: true, ...}, max_tokens 1,
 *      stream false, X-Request-Id set;
 *   2. the kv_transfer_params of the prefiller's answer (remote_host,
 *      remote_port, ...) are copied into the request for a decoder;
 *   3. the decoder's response goes back to the client byte for byte
 *      (streamed responses included).
 *   A failed prefill is answered 502 with the prefiller's words.
 *
 * --vllm-protocol gen2 (vLLM 0.16.0 and later; "gen1" is a synonym; vLLM's
 * mooncake_connector_proxy.py): at start, every prefiller's /health is
 * polled until 200, then its bootstrap server's GET /query names its dp
 * ranks and their engine ids (requests get 503 until then).  Per request a
 * fresh uuid4 rid and transfer_id "xfer-<rid>"; the P leg (max_tokens 1,
 * kv_transfer_params with the transfer_id, X-data-parallel-rank) and the D
 * leg (remote_bootstrap_addr, remote_engine_id, the same transfer_id) go
 * out at once, and D's answer is relayed to the client byte for byte.
 * Unlike vLLM's example, which never looks at the P leg's result, the P
 * answer is awaited on a worker thread: a failure is logged with P's words
 * and counted (/stats), never blocking the client.  D then learns of it
 * only when its wait for the KV cache times out (P's abort timeout,
 * VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT, 480 s by default) and fails the
 * request (or recomputes it, per kv_load_failure_policy).  The D leg is
 * connected before the P leg is sent, so a decoder that is down costs a 502
 * and no orphaned prefill.
 *
 * Prefill targets (gen2: prefiller x dp rank) and decoders are picked round
 * robin.  One thread per client connection, a pool of threads for the gen2
 * P legs; a request the proxy cannot parse gets 400 and a closed connection.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <glib.h>
#include <json-glib/json-glib.h>
#include <kvbridge/error.h>

#include "kvb_cli.h"
#include "kvb_http.h"
#include "kvb_proxy_vllm.h"
#include "kvb_tool_http.h"

typedef struct endpoint {
	char host[256];
	uint16_t port;
	uint16_t bootstrap_port; /* prefillers under gen2 */
} endpoint_t;

/* gen2: one prefill target, a dp rank of a prefiller */
typedef struct ptarget {
	guint prefiller; /* index into prefillers */
	uint32_t dp_rank;
	char engine_id[128];
	char *bootstrap_addr; /* "http://host:port", remote_bootstrap_addr */
} ptarget_t;

/* gen2: a P leg in flight on the pool */
typedef struct pleg {
	guint prefiller;
	uint32_t dp_rank;
	char rid[64];
	char target[KVB_HTTP_TARGET_MAX];
	char *body;
	gint refs;                  /* the P leg's thread and the client's */
	GMutex lock;
	int dfd;                    /* the decode leg's connection; -1 once closed */
	gint busy;                  /* P stayed busy (503) past --busy-wait */
} pleg_t;

static struct {
	gchar *host;
	gint port;
	gchar **p_hosts, **p_ports, **p_boots, **d_hosts, **d_ports;
	gchar *protocol;
	gint timeout_s;
	gint startup_timeout_s;
	gint max_clients;
	gint request_timeout_s;
	gdouble busy_wait_s;
	gchar *allow_peers;
	gchar *api_key;
	gchar *tls_cert, *tls_key, *tls_ca;
	gboolean verbose;
} o = {.port = 8000, .timeout_s = 600, .startup_timeout_s = G_MININT, .max_clients = 256,
       .request_timeout_s = 10, .busy_wait_s = 10};

#define STARTUP_TIMEOUT_DEFAULT_S 600
#define BOOTSTRAP_PORT_DEFAULT "8998"
#define DISCOVERY_POLL_MS 5000 /* one /health or /query attempt, at most */
#define TLS_HANDSHAKE_TIMEOUT_S 10

static kvb_proxy_protocol_t proto = KVB_PROXY_GEN2;
static char *auth_field; /* "Authorization: Bearer $OPENAI_API_KEY", or NULL */
static GArray *prefillers, *decoders; /* endpoint_t */
static GArray *targets;               /* ptarget_t; gen2, set once before ready */
static gint ready;                    /* gen2: targets discovered */
static gint discovery_failed;
static int listen_fd = -1;
static GThreadPool *client_pool, *pleg_pool;
static gint rr_p, rr_d;
static gint64 n_requests, n_errors, n_prefill_legs, n_prefill_failed, n_decode_failed;
static gint64 n_busy, n_busy_retries; /* 503s given after --busy-wait; retries of a busy P */
static gint64 n_refused;              /* connections from outside --allow-peers */
static gint64 n_tls_failed;           /* clients whose TLS handshake failed */
static gint64 n_slow;                 /* clients whose request missed --request-timeout (408) */
static gint64 n_crowded;              /* connections refused: their address had too many
				       * requests still arriving */

/* Slowloris and idle connections: a client's request (TLS handshake, head,
 * body) must arrive within --request-timeout, and one address may have at
 * most arriving_max connections whose request is still arriving (a quarter
 * of --max-clients), so no single peer holds every thread. */
typedef struct client {
	int fd;
	char addr[64];
} client_t;
static GMutex arriving_lock;
static GHashTable *arriving;          /* address -> connections still arriving */
static guint arriving_max;
static kvb_tls_t *front_tls;          /* --tls-cert/--tls-key: clients speak HTTPS */
static kvb_tls_t *leg_tls;            /* --tls-ca: the legs to P and D speak HTTPS */
static kvb_acl_t allowed;             /* who may send requests */
static char *api_key;                 /* clients' Bearer token (--api-key), or NULL */

static void logv(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static void logv(const char *fmt, ...)
{
	if (!o.verbose)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "kvbridge-proxy: ");
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static void note(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static void note(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("kvbridge-proxy: ");
	vprintf(fmt, ap);
	putchar('\n');
	fflush(stdout);
	va_end(ap);
}

static void reply_body(kvb_http_conn_t *cc, int status, const char *body, size_t len)
{
	GString *out = g_string_new(NULL);
	kvb_http_write_response(out, status, "application/json", body, len, false);
	kvb_http_conn_send_all(cc, out->str, out->len);
	g_string_free(out, TRUE);
}

/* vLLM's error body: {"error":{"message","type","code"}}, msg escaped. */
static GString *error_json(int status, const char *type, const char *msg)
{
	GString *b = g_string_new("{\"error\":{\"message\":\"");
	for (const char *p = msg; *p; p++) {
		if (*p == '"' || *p == '\\')
			g_string_append_c(b, '\\');
		if ((unsigned char)*p >= 0x20)
			g_string_append_c(b, *p);
	}
	g_string_append_printf(b, "\",\"type\":\"%s\",\"code\":%d}}\n", type, status);
	return b;
}

static void reply(kvb_http_conn_t *cc, int status, const char *type, const char *msg)
{
	GString *b = error_json(status, type, msg);
	reply_body(cc, status, b->str, b->len);
	g_string_free(b, TRUE);
	if (status >= 400)
		g_atomic_pointer_add(&n_errors, 1);
}

/* 503 with Retry-After: the prefillers are full, the client may come back. */
static void reply_busy(kvb_http_conn_t *cc, const char *msg)
{
	GString *b = error_json(503, "ServiceUnavailable", msg);
	GString *out = g_string_new(NULL);
	g_string_printf(out, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
			"Retry-After: %d\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
			MAX(1, (int)(o.busy_wait_s + 0.5)), b->len, b->str);
	kvb_http_conn_send_all(cc, out->str, out->len);
	g_string_free(out, TRUE);
	g_string_free(b, TRUE);
	g_atomic_pointer_add(&n_errors, 1);
	g_atomic_pointer_add(&n_busy, 1);
}

/* POST to a prefiller; while it answers 503 (its KV pool is full), again
 * after a growing pause (50 ms doubling to 1 s) for at most --busy-wait
 * seconds.  What kvb_http_request returns, for the last try. */
static bool prefill_post(const endpoint_t *pe, const char *target, const char *const *fields,
			 const char *body, int *status, GByteArray *resp, GError **gerr)
{
	gint64 end = g_get_monotonic_time() + (gint64)(o.busy_wait_s * G_USEC_PER_SEC);
	gulong pause_us = 50000;
	for (;;) {
		g_byte_array_set_size(resp, 0);
		bool ok = kvb_http_request(pe->host, pe->port, leg_tls, "POST", target, fields, "application/json",
					   body, strlen(body), o.timeout_s * 1000, status, resp, gerr);
		if (!ok || *status != 503 || g_get_monotonic_time() + (gint64)pause_us > end)
			return ok;
		g_atomic_pointer_add(&n_busy_retries, 1);
		g_usleep(pause_us);
		pause_us = MIN(pause_us * 2, 1000000ul);
	}
}

/* A peer's answer as one log line: controls become spaces, at most max bytes. */
static char *one_line(const guint8 *p, size_t len, size_t max)
{
	GString *s = g_string_new(NULL);
	for (size_t i = 0; i < len && i < max; i++)
		g_string_append_c(s, p[i] < 0x20 || p[i] == 0x7f ? ' ' : (char)p[i]);
	if (len > max)
		g_string_append(s, "...");
	return g_string_free(s, FALSE);
}

/* Connect to the decoder (over TLS with --tls-ca); false after answering
 * the client 502. */
static bool decoder_connect(kvb_http_conn_t *cc, kvb_http_conn_t *dc, const endpoint_t *d,
			    const char *why_extra)
{
	GError *gerr = NULL;
	if (!kvb_http_conn_open(dc, d->host, d->port, leg_tls, o.timeout_s * 1000, &gerr)) {
		char m[1200];
		g_snprintf(m, sizeof(m), "decoder %s:%u: %s%s", d->host, d->port, gerr->message,
			   why_extra ? why_extra : "");
		reply(cc, 502, "DecoderUnavailable", m);
		g_atomic_pointer_add(&n_decode_failed, 1);
		g_error_free(gerr);
		return false;
	}
	return true;
}

/* Send the request on dfd (closed here) and relay the decoder's response
 * as it arrives. */
static void pleg_unref(pleg_t *j)
{
	if (!g_atomic_int_dec_and_test(&j->refs))
		return;
	g_mutex_clear(&j->lock);
	g_free(j->body);
	g_free(j);
}

/* The decode leg's connection is over: no shutdown() may reach its number. */
static void decoder_close(kvb_http_conn_t *dc, pleg_t *j)
{
	if (j) {
		g_mutex_lock(&j->lock);
		j->dfd = -1;
		g_mutex_unlock(&j->lock);
	}
	kvb_http_conn_close(dc);
}

static void decoder_relay(kvb_http_conn_t *cc, kvb_http_conn_t *dc, const endpoint_t *d,
			  const char *target, const char *const *fields, const char *body, pleg_t *j)
{
	char hostf[300];
	g_snprintf(hostf, sizeof(hostf), "%s:%u", d->host, d->port);
	GString *req = g_string_new(NULL);
	kvb_http_write_request(req, "POST", target, hostf, fields, "application/json", body, strlen(body));
	bool ok = kvb_http_conn_send_all(dc, req->str, req->len);
	g_string_free(req, TRUE);
	if (!ok) {
		reply(cc, 502, "DecoderUnavailable", "could not send the request to the decoder");
		g_atomic_pointer_add(&n_decode_failed, 1);
		decoder_close(dc, j);
		return;
	}
	char buf[65536];
	uint64_t relayed = 0;
	for (;;) {
		ssize_t n = kvb_http_conn_recv(dc, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (!kvb_http_conn_send_all(cc, buf, (size_t)n))
			break; /* the client left */
		relayed += (uint64_t)n;
	}
	if (!relayed && j && g_atomic_int_get(&j->busy)) {
		char m[300];
		g_snprintf(m, sizeof(m), "every try of the prefill leg for %.0f s got 503 (the prefiller's KV "
			   "pool is full); the decode leg was closed", o.busy_wait_s);
		reply_busy(cc, m);
	} else if (!relayed) {
		reply(cc, 502, "DecoderUnavailable", "the decoder closed without a response");
		g_atomic_pointer_add(&n_decode_failed, 1);
	}
	decoder_close(dc, j);
}

/* gen0: prefill, wait, then decode with P's kv_transfer_params. */
static void route_gen0(kvb_http_conn_t *cc, const kvb_http_msg_t *msg, JsonNode *root)
{
	char rid[128];
	const char *hid = kvb_http_field_get(msg, "X-Request-Id");
	if (hid && *hid && strlen(hid) < sizeof(rid))
		g_strlcpy(rid, hid, sizeof(rid));
	else {
		char *u = g_uuid_string_random();
		g_strlcpy(rid, u, sizeof(rid));
		g_free(u);
	}
	char *pbody = kvb_proxy_prefill_body(KVB_PROXY_GEN0, root, NULL);
	guint pi = (guint)g_atomic_int_add(&rr_p, 1) % prefillers->len;
	guint di = (guint)g_atomic_int_add(&rr_d, 1) % decoders->len;
	endpoint_t *pe = &g_array_index(prefillers, endpoint_t, pi);
	endpoint_t *de = &g_array_index(decoders, endpoint_t, di);
	char idf[160];
	g_snprintf(idf, sizeof(idf), "X-Request-Id: %s", rid);
	const char *fields[] = {idf, auth_field, NULL};
	int status = 0;
	GError *gerr = NULL;
	GByteArray *presp = g_byte_array_new();
	logv("%s: prefill on %s:%u, decode on %s:%u", rid, pe->host, pe->port, de->host, de->port);
	g_atomic_pointer_add(&n_prefill_legs, 1);
	bool ok = prefill_post(pe, msg->target, fields, pbody, &status, presp, &gerr);
	g_free(pbody);
	if (ok && status == 503) {
		char m[1200];
		g_snprintf(m, sizeof(m), "prefiller %s:%u is busy (503 for %.0f s): %.*s", pe->host, pe->port,
			   o.busy_wait_s, (int)MIN(presp->len, 1000u), (const char *)presp->data);
		reply_busy(cc, m);
		g_byte_array_unref(presp);
		return;
	}
	if (!ok || status / 100 != 2) {
		char m[1200];
		if (!ok)
			g_snprintf(m, sizeof(m), "prefiller %s:%u: %s", pe->host, pe->port, gerr->message);
		else
			g_snprintf(m, sizeof(m), "prefiller %s:%u answered %d: %.*s", pe->host, pe->port, status,
				   (int)MIN(presp->len, 1000u), (const char *)presp->data);
		reply(cc, 502, "PrefillError", m);
		g_atomic_pointer_add(&n_prefill_failed, 1);
		g_clear_error(&gerr);
		g_byte_array_unref(presp);
		return;
	}
	kvb_err_t err;
	char *dbody = kvb_proxy_gen0_decode_body(root, (const char *)presp->data, presp->len, &err);
	g_byte_array_unref(presp);
	if (!dbody) {
		reply(cc, 502, "PrefillError", err.msg);
		g_atomic_pointer_add(&n_prefill_failed, 1);
		return;
	}
	const char *dfields[] = {idf, "Connection: close", auth_field, NULL};
	kvb_http_conn_t dc;
	if (decoder_connect(cc, &dc, de, NULL))
		decoder_relay(cc, &dc, de, msg->target, dfields, dbody, NULL);
	g_free(dbody);
}

/* gen2, on the pool: the P leg, awaited only to log and count a failure. */
static void prefill_leg(gpointer data, gpointer user)
{
	(void)user;
	pleg_t *j = data;
	const endpoint_t *pe = &g_array_index(prefillers, endpoint_t, j->prefiller);
	char idf[96], dpf[64];
	g_snprintf(idf, sizeof(idf), "X-Request-Id: %s", j->rid);
	g_snprintf(dpf, sizeof(dpf), "X-data-parallel-rank: %u", j->dp_rank);
	const char *fields[] = {idf, dpf, auth_field, NULL};
	int status = 0;
	GError *gerr = NULL;
	GByteArray *resp = g_byte_array_new();
	bool ok = prefill_post(pe, j->target, fields, j->body, &status, resp, &gerr);
	if (ok && status == 503) {
		/* still full: end the decode leg, whose client gets 503 and Retry-After */
		g_atomic_int_set(&j->busy, 1);
		g_mutex_lock(&j->lock);
		if (j->dfd >= 0)
			shutdown(j->dfd, SHUT_RDWR);
		g_mutex_unlock(&j->lock);
	}
	if (!ok || status / 100 != 2) {
		g_atomic_pointer_add(&n_prefill_failed, 1);
		char *words = ok ? one_line(resp->data, resp->len, 1000) : g_strdup(gerr->message);
		if (ok)
			fprintf(stderr, "kvbridge-proxy: %s: prefill leg on %s:%u (dp %u) answered %d: %s "
				"(the decoder fails this request when its wait for the KV cache times out)\n",
				j->rid, pe->host, pe->port, j->dp_rank, status, words);
		else
			fprintf(stderr, "kvbridge-proxy: %s: prefill leg on %s:%u (dp %u) failed: %s "
				"(the decoder fails this request when its wait for the KV cache times out)\n",
				j->rid, pe->host, pe->port, j->dp_rank, words);
		g_free(words);
		g_clear_error(&gerr);
	} else {
		logv("%s: prefill leg on %s:%u (dp %u) answered %d", j->rid, pe->host, pe->port, j->dp_rank,
		     status);
	}
	g_byte_array_unref(resp);
	pleg_unref(j);
}

/* gen2: P and D legs at once; D's answer to the client. */
static void route_gen2(kvb_http_conn_t *cc, const kvb_http_msg_t *msg, JsonNode *root)
{
	if (!g_atomic_int_get(&ready)) {
		reply(cc, 503, "ServiceUnavailable",
		      "the proxy is still waiting for its prefillers (/health, then the bootstrap /query)");
		return;
	}
	guint ti = (guint)g_atomic_int_add(&rr_p, 1) % targets->len;
	guint di = (guint)g_atomic_int_add(&rr_d, 1) % decoders->len;
	const ptarget_t *t = &g_array_index(targets, ptarget_t, ti);
	const endpoint_t *pe = &g_array_index(prefillers, endpoint_t, t->prefiller);
	const endpoint_t *de = &g_array_index(decoders, endpoint_t, di);
	pleg_t *j = g_new0(pleg_t, 1);
	char *u = g_uuid_string_random();
	g_strlcpy(j->rid, u, sizeof(j->rid));
	g_free(u);
	char *xfer = g_strconcat("xfer-", j->rid, NULL);
	j->prefiller = t->prefiller;
	j->dp_rank = t->dp_rank;
	g_strlcpy(j->target, msg->target, sizeof(j->target));
	j->body = kvb_proxy_prefill_body(KVB_PROXY_GEN2, root, xfer);
	char *dbody = kvb_proxy_gen2_decode_body(root, t->bootstrap_addr, t->engine_id, xfer);
	logv("%s: prefill on %s:%u dp %u (engine %s), decode on %s:%u", j->rid, pe->host, pe->port,
	     t->dp_rank, t->engine_id, de->host, de->port);
	kvb_http_conn_t dc;
	if (!decoder_connect(cc, &dc, de, "; nothing was sent to the prefiller")) {
		g_free(j->body);
		g_free(j);
	} else {
		char idf[96];
		g_snprintf(idf, sizeof(idf), "X-Request-Id: %s", j->rid);
		const char *dfields[] = {idf, "Connection: close", auth_field, NULL};
		g_atomic_pointer_add(&n_prefill_legs, 1);
		g_mutex_init(&j->lock);
		j->dfd = dc.fd;
		j->refs = 2; /* the pool's and ours */
		g_thread_pool_push(pleg_pool, j, NULL);
		decoder_relay(cc, &dc, de, msg->target, dfields, dbody, j);
		pleg_unref(j);
	}
	g_free(dbody);
	g_free(xfer);
}

static void reply_stats(kvb_http_conn_t *cc)
{
	bool up = proto == KVB_PROXY_GEN0 || g_atomic_int_get(&ready);
	JsonBuilder *b = json_builder_new();
	json_builder_begin_object(b);
	json_builder_set_member_name(b, "protocol");
	json_builder_add_string_value(b, kvb_proxy_protocol_name(proto));
	json_builder_set_member_name(b, "ready");
	json_builder_add_boolean_value(b, up);
	const struct {
		const char *name;
		gint64 *v;
	} c[] = {
		{"requests", &n_requests}, {"errors", &n_errors}, {"prefill_legs", &n_prefill_legs},
		{"prefill_failed", &n_prefill_failed}, {"decode_failed", &n_decode_failed},
		{"busy", &n_busy}, {"busy_retries", &n_busy_retries}, {"peers_refused", &n_refused},
		{"tls_handshakes_failed", &n_tls_failed}, {"slow_clients", &n_slow},
		{"crowded_refused", &n_crowded},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(c); i++) {
		json_builder_set_member_name(b, c[i].name);
		json_builder_add_int_value(b, (gint64)g_atomic_pointer_get(c[i].v));
	}
	json_builder_set_member_name(b, "prefill_targets");
	json_builder_begin_array(b);
	for (guint i = 0; proto == KVB_PROXY_GEN2 && up && i < targets->len; i++) {
		const ptarget_t *t = &g_array_index(targets, ptarget_t, i);
		const endpoint_t *pe = &g_array_index(prefillers, endpoint_t, t->prefiller);
		char hp[300];
		g_snprintf(hp, sizeof(hp), "%s:%u", pe->host, pe->port);
		json_builder_begin_object(b);
		json_builder_set_member_name(b, "prefiller");
		json_builder_add_string_value(b, hp);
		json_builder_set_member_name(b, "dp_rank");
		json_builder_add_int_value(b, t->dp_rank);
		json_builder_set_member_name(b, "engine_id");
		json_builder_add_string_value(b, t->engine_id);
		json_builder_set_member_name(b, "bootstrap");
		json_builder_add_string_value(b, t->bootstrap_addr);
		json_builder_end_object(b);
	}
	json_builder_end_array(b);
	json_builder_end_object(b);
	JsonGenerator *g = json_generator_new();
	JsonNode *root = json_builder_get_root(b);
	json_generator_set_root(g, root);
	gsize len;
	char *s = json_generator_to_data(g, &len);
	reply_body(cc, 200, s, len);
	g_free(s);
	json_node_unref(root);
	g_object_unref(g);
	g_object_unref(b);
}

/* A client whose TLS handshake failed: counted, said at most every 10 s
 * (a plaintext client retrying in a loop must not flood the log). */
static void tls_client_failed(int fd, const char *why)
{
	static GMutex lock;
	static gint64 warned_us;
	static guint64 unwarned;
	gint64 total = g_atomic_pointer_add(&n_tls_failed, 1) + 1;
	gint64 now = g_get_monotonic_time();
	g_mutex_lock(&lock);
	unwarned++;
	if (!warned_us || now - warned_us >= 10 * G_USEC_PER_SEC) {
		struct sockaddr_storage sa;
		socklen_t sl = sizeof(sa);
		char host[64] = "?", port[8] = "?";
		if (!getpeername(fd, (struct sockaddr *)&sa, &sl))
			getnameinfo((struct sockaddr *)&sa, sl, host, sizeof(host), port, sizeof(port),
				    NI_NUMERICHOST | NI_NUMERICSERV);
		fprintf(stderr, "kvbridge-proxy: warning: HTTPS port: client %s port %s closed, %s (a "
			"plaintext client, or one that does not trust our certificate?); %" G_GUINT64_FORMAT
			" such failure(s) since the last warning, %" G_GINT64_FORMAT " in all\n",
			host, port, why, unwarned, total);
		warned_us = now;
		unwarned = 0;
	}
	g_mutex_unlock(&lock);
}

static bool arriving_enter(const char *addr)
{
	g_mutex_lock(&arriving_lock);
	guint n = GPOINTER_TO_UINT(g_hash_table_lookup(arriving, addr));
	bool ok = n < arriving_max;
	if (ok)
		g_hash_table_insert(arriving, g_strdup(addr), GUINT_TO_POINTER(n + 1));
	g_mutex_unlock(&arriving_lock);
	return ok;
}

static void arriving_leave(client_t *cl)
{
	if (!cl->addr[0])
		return;
	g_mutex_lock(&arriving_lock);
	guint n = GPOINTER_TO_UINT(g_hash_table_lookup(arriving, cl->addr));
	if (n > 1)
		g_hash_table_insert(arriving, g_strdup(cl->addr), GUINT_TO_POINTER(n - 1));
	else
		g_hash_table_remove(arriving, cl->addr);
	g_mutex_unlock(&arriving_lock);
	cl->addr[0] = 0;
}

/* Receive timeout: what is left of the request's deadline (at least 1 ms);
 * false once it has passed. */
static bool rcv_deadline(int fd, gint64 deadline)
{
	gint64 left = deadline - g_get_monotonic_time();
	if (left <= 0)
		return false;
	struct timeval tv = {(time_t)(left / G_USEC_PER_SEC), (suseconds_t)MAX(left % G_USEC_PER_SEC, 1000)};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return true;
}

static void serve_client(gpointer data, gpointer user)
{
	(void)user;
	client_t *cl = data;
	int cfd = cl->fd;
	gint64 deadline = g_get_monotonic_time() + (gint64)o.request_timeout_s * G_USEC_PER_SEC;
	kvb_http_conn_t conn, *cc = &conn;
	GError *terr = NULL;
	rcv_deadline(cfd, deadline);
	if (!kvb_http_conn_accept(cc, cfd, front_tls, MIN(o.request_timeout_s, TLS_HANDSHAKE_TIMEOUT_S) * 1000,
				  &terr)) {
		arriving_leave(cl);
		tls_client_failed(cfd, terr->message);
		g_error_free(terr);
		close(cfd);
		g_free(cl);
		return;
	}
	GByteArray *in = g_byte_array_new();
	kvb_http_msg_t msg;
	bool have = false;
	kvb_err_t err;
	for (;;) {
		guint old = in->len;
		if (!rcv_deadline(cfd, deadline)) {
			errno = EAGAIN;
			goto slow;
		}
		g_byte_array_set_size(in, old + 16384);
		ssize_t n = kvb_http_conn_recv(cc, in->data + old, 16384);
		g_byte_array_set_size(in, old + (guint)MAX(n, 0));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			goto slow;
		if (n <= 0)
			goto out;
		if (!have && (memchr(in->data + old, '\n', (size_t)n) || memchr(in->data + old, '\r', (size_t)n) ||
			      in->len >= KVB_HTTP_HEAD_MAX)) {
			int rc = kvb_http_parse_request((const char *)in->data, in->len, &msg, &err);
			if (rc == KVB_INPROGRESS)
				continue;
			if (rc != KVB_OK) {
				reply(cc, 400, "BadRequestError", err.msg);
				goto out;
			}
			have = true;
			if (msg.chunked) {
				reply(cc, 411, "LengthRequired", "send the body with Content-Length");
				goto out;
			}
		}
		if (!have)
			continue;
		if (in->len >= msg.head_len + (msg.has_content_length ? msg.content_length : 0))
			break;
	}
	arriving_leave(cl); /* the request is in: its thread works for it now */
	g_atomic_pointer_add(&n_requests, 1);
	if (!strcmp(msg.method, "GET") && (!strcmp(msg.target, "/healthcheck") || !strcmp(msg.target, "/health"))) {
		if (proto == KVB_PROXY_GEN2 && !g_atomic_int_get(&ready)) {
			reply(cc, 503, "ServiceUnavailable", "the proxy is still waiting for its prefillers");
		} else {
			const char *b = "{\"status\":\"ok\"}\n";
			reply_body(cc, 200, b, strlen(b));
		}
		goto out;
	}
	if (!kvb_http_bearer_ok(&msg, api_key)) {
		reply(cc, 401, "Unauthorized", "this proxy needs \"Authorization: Bearer <its --api-key>\"");
		goto out;
	}
	if (!strcmp(msg.method, "GET") && !strcmp(msg.target, "/stats")) {
		reply_stats(cc);
		goto out;
	}
	if (strcmp(msg.method, "POST") ||
	    (strcmp(msg.target, "/v1/completions") && strcmp(msg.target, "/v1/chat/completions"))) {
		reply(cc, 404, "NotFoundError", "POST /v1/completions or /v1/chat/completions");
		goto out;
	}
	const char *body = (const char *)in->data + msg.head_len;
	size_t blen = msg.has_content_length ? (size_t)msg.content_length : 0;
	JsonParser *jp = json_parser_new();
	GError *gerr = NULL;
	if (!json_parser_load_from_data(jp, body, (gssize)blen, &gerr) ||
	    !JSON_NODE_HOLDS_OBJECT(json_parser_get_root(jp))) {
		reply(cc, 400, "BadRequestError", gerr ? gerr->message : "the body is not a JSON object");
		g_clear_error(&gerr);
		g_object_unref(jp);
		goto out;
	}
	if (proto == KVB_PROXY_GEN0)
		route_gen0(cc, &msg, json_parser_get_root(jp));
	else
		route_gen2(cc, &msg, json_parser_get_root(jp));
	g_object_unref(jp);
	goto out;
slow:
	g_atomic_pointer_add(&n_slow, 1);
	if (in->len)
		reply(cc, 408, "RequestTimeout", "the request did not arrive within --request-timeout");
out:
	arriving_leave(cl);
	if (have)
		kvb_http_msg_clear(&msg);
	g_byte_array_unref(in);
	kvb_http_conn_close(cc);
	g_free(cl);
}

/* ------------------------------------------------------------------------ */
/* gen2 discovery                                                            */

static gint64 ms_left(gint64 deadline)
{
	return (deadline - g_get_monotonic_time()) / 1000;
}

/* Poll the prefiller's /health every second until it answers 200. */
static bool wait_health(const endpoint_t *pe, gint64 start, gint64 deadline)
{
	gint64 last_note = 0;
	char why[600] = "no attempt made";
	for (;;) {
		gint64 left = ms_left(deadline);
		if (left > 0) {
			int status = 0;
			GError *gerr = NULL;
			GByteArray *b = g_byte_array_new();
			bool ok = kvb_http_request(pe->host, pe->port, leg_tls, "GET", "/health", NULL, NULL, NULL, 0,
						   (int)MIN(left, DISCOVERY_POLL_MS), &status, b, &gerr);
			g_byte_array_unref(b);
			if (ok && status == 200)
				return true;
			if (ok)
				g_snprintf(why, sizeof(why), "HTTP %d", status);
			else
				g_strlcpy(why, gerr->message, sizeof(why));
			g_clear_error(&gerr);
		}
		gint64 now = g_get_monotonic_time();
		if (ms_left(deadline) <= 0) {
			fprintf(stderr,
				"kvbridge-proxy: prefiller %s:%u: GET /health did not answer 200 within "
				"--startup-timeout %d s (last: %s)\n",
				pe->host, pe->port, o.startup_timeout_s, why);
			return false;
		}
		if (!last_note || now - last_note >= 10 * G_USEC_PER_SEC) {
			note("waiting for prefiller %s:%u: GET /health: %s (%" G_GINT64_FORMAT " s of %d)",
			     pe->host, pe->port, why, (now - start) / G_USEC_PER_SEC, o.startup_timeout_s);
			last_note = now;
		}
		g_usleep((gulong)MIN(ms_left(deadline), 1000) * 1000);
	}
}

/* GET /query on the prefiller's bootstrap server; connection failures are
 * retried every second until the deadline, a wrong answer is final. */
static GArray *query_dps(const endpoint_t *pe, gint64 start, gint64 deadline)
{
	gint64 last_note = 0;
	char why[600] = "no attempt made";
	for (;;) {
		gint64 left = ms_left(deadline);
		if (left > 0) {
			int status = 0;
			GError *gerr = NULL;
			GByteArray *b = g_byte_array_new();
			/* vLLM's bootstrap server speaks plain HTTP */
			bool ok = kvb_http_request(pe->host, pe->bootstrap_port, NULL, "GET", "/query", NULL, NULL,
						   NULL, 0, (int)MIN(left, DISCOVERY_POLL_MS), &status, b, &gerr);
			if (ok) {
				GArray *dps = NULL;
				kvb_err_t err;
				if (status != 200) {
					char *w = one_line(b->data, b->len, 300);
					fprintf(stderr,
						"kvbridge-proxy: prefiller %s:%u: GET http://%s:%u/query answered "
						"%d: %s (is %u its VLLM_MOONCAKE_BOOTSTRAP_PORT? see "
						"--prefiller-bootstrap-port)\n",
						pe->host, pe->port, pe->host, pe->bootstrap_port, status, w,
						pe->bootstrap_port);
					g_free(w);
				} else if (!(dps = kvb_proxy_query_dps((const char *)b->data, b->len, &err))) {
					char *w = one_line(b->data, b->len, 300);
					fprintf(stderr,
						"kvbridge-proxy: prefiller %s:%u: refusing the answer of GET "
						"http://%s:%u/query: %s (it was: %s)\n",
						pe->host, pe->port, pe->host, pe->bootstrap_port, err.msg, w);
					g_free(w);
				}
				g_byte_array_unref(b);
				return dps;
			}
			g_strlcpy(why, gerr->message, sizeof(why));
			g_clear_error(&gerr);
			g_byte_array_unref(b);
		}
		gint64 now = g_get_monotonic_time();
		if (ms_left(deadline) <= 0) {
			fprintf(stderr,
				"kvbridge-proxy: prefiller %s:%u: GET http://%s:%u/query did not answer within "
				"--startup-timeout %d s (last: %s)\n",
				pe->host, pe->port, pe->host, pe->bootstrap_port, o.startup_timeout_s, why);
			return NULL;
		}
		if (!last_note || now - last_note >= 10 * G_USEC_PER_SEC) {
			note("waiting for prefiller %s:%u: GET http://%s:%u/query: %s (%" G_GINT64_FORMAT " s of %d)",
			     pe->host, pe->port, pe->host, pe->bootstrap_port, why,
			     (now - start) / G_USEC_PER_SEC, o.startup_timeout_s);
			last_note = now;
		}
		g_usleep((gulong)MIN(ms_left(deadline), 1000) * 1000);
	}
}

/* The discovery thread: every prefiller's dp ranks, then ready.  On
 * failure the listening socket is shut down, which ends main's accept. */
static gpointer discover(gpointer data)
{
	int bound = GPOINTER_TO_INT(data);
	gint64 start = g_get_monotonic_time();
	gint64 deadline = start + (gint64)o.startup_timeout_s * G_USEC_PER_SEC;
	GArray *ts = g_array_new(FALSE, TRUE, sizeof(ptarget_t));
	for (guint i = 0; i < prefillers->len; i++) {
		const endpoint_t *pe = &g_array_index(prefillers, endpoint_t, i);
		if (!wait_health(pe, start, deadline))
			goto fail;
		GArray *dps = query_dps(pe, start, deadline);
		if (!dps)
			goto fail;
		GString *l = g_string_new(NULL);
		for (guint k = 0; k < dps->len; k++) {
			const kvb_proxy_dp_t *d = &g_array_index(dps, kvb_proxy_dp_t, k);
			ptarget_t t = {.prefiller = i, .dp_rank = d->dp_rank};
			g_strlcpy(t.engine_id, d->engine_id, sizeof(t.engine_id));
			t.bootstrap_addr = kvb_proxy_bootstrap_addr(pe->host, pe->bootstrap_port);
			g_array_append_val(ts, t);
			g_string_append_printf(l, "%sdp %u engine %s", k ? ", " : "", d->dp_rank, d->engine_id);
		}
		note("prefiller %s:%u: bootstrap http://%s:%u, dp_size %u: %s", pe->host, pe->port, pe->host,
		     pe->bootstrap_port, dps->len, l->str);
		g_string_free(l, TRUE);
		g_array_unref(dps);
	}
	targets = ts;
	g_atomic_int_set(&ready, 1);
	note("ready on %s:%d, vllm protocol gen2, %u prefill target(s) on %u prefiller(s), %u decoder(s)%s%s",
	     o.host, bound, targets->len, prefillers->len, decoders->len,
	     front_tls ? ", clients over tls" : "", leg_tls ? ", legs over tls" : "");
	return NULL;
fail:
	for (guint i = 0; i < ts->len; i++)
		g_free(g_array_index(ts, ptarget_t, i).bootstrap_addr);
	g_array_unref(ts);
	g_atomic_int_set(&discovery_failed, 1);
	shutdown(listen_fd, SHUT_RDWR);
	return NULL;
}

/* ------------------------------------------------------------------------ */
/* options                                                                   */

static GPtrArray *split_list(gchar **items)
{
	GPtrArray *out = g_ptr_array_new_with_free_func(g_free);
	for (gchar **h = items; h && *h; h++) {
		gchar **parts = g_strsplit(*h, ",", -1);
		for (gchar **q = parts; *q; q++)
			if (**q)
				g_ptr_array_add(out, g_strdup(g_strstrip(*q)));
		g_strfreev(parts);
	}
	return out;
}

static bool parse_port(const char *s, const char *what, uint16_t *out)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (!*s || *end || v < 1 || v > 65535) {
		fprintf(stderr, "kvbridge-proxy: %s port %s: expected 1..65535\n", what, s);
		return false;
	}
	*out = (uint16_t)v;
	return true;
}

static bool parse_endpoints(gchar **hosts, gchar **ports, const char *def_port, GArray *out,
			    const char *what)
{
	GPtrArray *hs = split_list(hosts);
	GPtrArray *ps = split_list(ports);
	if (!hs->len)
		g_ptr_array_add(hs, g_strdup("localhost"));
	if (!ps->len)
		g_ptr_array_add(ps, g_strdup(def_port));
	bool ok = true;
	guint n = MAX(hs->len, ps->len);
	if (hs->len != ps->len && hs->len != 1 && ps->len != 1) {
		fprintf(stderr, "kvbridge-proxy: %u %s hosts but %u ports\n", hs->len, what, ps->len);
		ok = false;
	}
	for (guint i = 0; ok && i < n; i++) {
		endpoint_t e = {0};
		g_strlcpy(e.host, hs->pdata[hs->len == 1 ? 0 : i], sizeof(e.host));
		if (!parse_port(ps->pdata[ps->len == 1 ? 0 : i], what, &e.port)) {
			ok = false;
			break;
		}
		g_array_append_val(out, e);
	}
	g_ptr_array_free(hs, TRUE);
	g_ptr_array_free(ps, TRUE);
	return ok;
}

/* Whether host names this machine as the proxy listens on it. */
static bool same_host(const char *host, const char *listen_host)
{
	return !strcmp(host, listen_host) || !strcmp(host, "localhost") || !strcmp(host, "::1") ||
	       g_str_has_prefix(host, "127.") || !strcmp(listen_host, "0.0.0.0") ||
	       !strcmp(listen_host, "::");
}

/* A port of ours that a prefiller or decoder on this machine also uses: one
 * of the two would fail to bind, or the proxy would talk to itself.  Said
 * at start, naming both; false when there is a clash. */
static bool ports_apart(const char *listen_host)
{
	if (!o.port)
		return true;
	const char *env = g_getenv("VLLM_MOONCAKE_BOOTSTRAP_PORT");
	long base = env && *env ? strtol(env, NULL, 10) : 8998;
	for (guint k = 0; k < 2; k++) {
		GArray *a = k ? decoders : prefillers;
		for (guint i = 0; i < a->len; i++) {
			endpoint_t *e = &g_array_index(a, endpoint_t, i);
			if (!same_host(e->host, listen_host))
				continue;
			const char *what = NULL;
			if (e->port == o.port)
				what = "HTTP port";
			else if (!k && proto == KVB_PROXY_GEN2 && e->bootstrap_port == o.port)
				what = "bootstrap port (--prefiller-bootstrap-port, VLLM_MOONCAKE_BOOTSTRAP_PORT)";
			else if (!k && proto == KVB_PROXY_GEN0 && o.port >= base && o.port < base + 8)
				what = "side-channel ports (VLLM_MOONCAKE_BOOTSTRAP_PORT + tp rank)";
			if (what) {
				fprintf(stderr, "kvbridge-proxy: --port %d is also %s %s:%u's %s; give the proxy "
					"another --port\n", o.port, k ? "decoder" : "prefiller", e->host, e->port,
					what);
				return false;
			}
		}
	}
	return true;
}

/* --prefiller-bootstrap-port: none (8998 for all), one for all, or one per prefiller. */
static bool parse_bootstrap_ports(gchar **items, GArray *ps)
{
	GPtrArray *bs = split_list(items);
	if (!bs->len)
		g_ptr_array_add(bs, g_strdup(BOOTSTRAP_PORT_DEFAULT));
	bool ok = true;
	if (bs->len != 1 && bs->len != ps->len) {
		fprintf(stderr,
			"kvbridge-proxy: %u --prefiller-bootstrap-port values for %u prefillers (give one for "
			"all or one per prefiller)\n",
			bs->len, ps->len);
		ok = false;
	}
	for (guint i = 0; ok && i < ps->len; i++)
		ok = parse_port(bs->pdata[bs->len == 1 ? 0 : i], "--prefiller-bootstrap-port",
				&g_array_index(ps, endpoint_t, i).bootstrap_port);
	g_ptr_array_free(bs, TRUE);
	return ok;
}

static GOptionEntry entries[] = {
	{"vllm-protocol", 0, 0, G_OPTION_ARG_STRING, &o.protocol, "router contract: gen2 (vLLM 0.16.0 and later; gen1 is the same; default) or gen0 (vLLM 0.13.0 - 0.15.1)", "gen0|gen2"},
	{"host", 0, 0, G_OPTION_ARG_STRING, &o.host, "listen address (default 127.0.0.1; 0.0.0.0 = every interface, warned about)", "IP"},
	{"port", 0, 0, G_OPTION_ARG_INT, &o.port, "listen port (default 8000; 0 = any free port)", "PORT"},
	{"api-key", 0, 0, G_OPTION_ARG_STRING, &o.api_key,
	 "require \"Authorization: Bearer KEY\" from clients on everything but /health (at least 16 "
	 "characters; default KVB_API_KEY); the legs to P and D carry OPENAI_API_KEY", "KEY"},
	{"tls-cert", 0, 0, G_OPTION_ARG_FILENAME, &o.tls_cert,
	 "clients speak HTTPS (TLS 1.2+) to the proxy, which shows this PEM certificate chain, with "
	 "--tls-key (default KVB_TLS_CERT; off: plain HTTP)", "FILE"},
	{"tls-key", 0, 0, G_OPTION_ARG_FILENAME, &o.tls_key,
	 "the PEM private key of --tls-cert (default KVB_TLS_KEY)", "FILE"},
	{"tls-ca", 0, 0, G_OPTION_ARG_FILENAME, &o.tls_ca,
	 "the legs to prefillers and decoders speak HTTPS, their certificates signed by these PEM CA "
	 "certificates and naming the --prefiller-host/--decoder-host dialed (default KVB_TLS_CA; off: "
	 "plain HTTP; the gen2 bootstrap /query stays plain HTTP, as vLLM serves it)", "FILE"},
	{"allow-peers", 0, 0, G_OPTION_ARG_STRING, &o.allow_peers,
	 "networks that may send requests: CIDR list (10.0.0.0/8,fd00::/8), * = anyone (default "
	 "KVB_ALLOW_PEERS, else loopback and --host's network)", "NETS"},
	{"busy-wait", 0, 0, G_OPTION_ARG_DOUBLE, &o.busy_wait_s,
	 "seconds to keep retrying a prefiller that answers 503 (KV pool full), pausing 50 ms "
	 "doubling to 1 s, before answering the client 503 with Retry-After (default 10; 0 = no retry)",
	 "S"},
	{"prefiller-host", 0, 0, G_OPTION_ARG_STRING_ARRAY, &o.p_hosts, "prefiller host (repeat or comma list; default localhost)", "HOST"},
	{"prefiller-hosts", 0, G_OPTION_FLAG_HIDDEN, G_OPTION_ARG_STRING_ARRAY, &o.p_hosts, NULL, NULL},
	{"prefiller-port", 0, 0, G_OPTION_ARG_STRING_ARRAY, &o.p_ports, "prefiller HTTP port (repeat or comma list; default 8100)", "PORT"},
	{"prefiller-ports", 0, G_OPTION_FLAG_HIDDEN, G_OPTION_ARG_STRING_ARRAY, &o.p_ports, NULL, NULL},
	{"prefiller-bootstrap-port", 0, 0, G_OPTION_ARG_STRING_ARRAY, &o.p_boots, "gen2: the prefiller's bootstrap port, VLLM_MOONCAKE_BOOTSTRAP_PORT (repeat or comma list: one for all or one per prefiller; default 8998)", "PORT"},
	{"prefiller-bootstrap-ports", 0, G_OPTION_FLAG_HIDDEN, G_OPTION_ARG_STRING_ARRAY, &o.p_boots, NULL, NULL},
	{"decoder-host", 0, 0, G_OPTION_ARG_STRING_ARRAY, &o.d_hosts, "decoder host (repeat or comma list; default localhost)", "HOST"},
	{"decoder-hosts", 0, G_OPTION_FLAG_HIDDEN, G_OPTION_ARG_STRING_ARRAY, &o.d_hosts, NULL, NULL},
	{"decoder-port", 0, 0, G_OPTION_ARG_STRING_ARRAY, &o.d_ports, "decoder HTTP port (repeat or comma list; default 8200)", "PORT"},
	{"decoder-ports", 0, G_OPTION_FLAG_HIDDEN, G_OPTION_ARG_STRING_ARRAY, &o.d_ports, NULL, NULL},
	{"startup-timeout", 0, 0, G_OPTION_ARG_INT, &o.startup_timeout_s, "gen2: seconds to wait for every prefiller's /health and /query before giving up (default 600)", "S"},
	{"timeout", 0, 0, G_OPTION_ARG_INT, &o.timeout_s, "seconds to wait for a prefiller or decoder (default 600)", "S"},
	{"max-clients", 0, 0, G_OPTION_ARG_INT, &o.max_clients, "concurrent client connections (default 256); one "
	 "address may have a quarter of them with a request still arriving", "N"},
	{"request-timeout", 0, 0, G_OPTION_ARG_INT, &o.request_timeout_s, "seconds a client has to send its whole "
	 "request, TLS handshake included, else 408 and closed (default 10; idle and slowloris connections)", "S"},
	{"verbose", 'v', 0, G_OPTION_ARG_NONE, &o.verbose, "log every request", NULL},
	{NULL},
};

static const char help_text[] =
	"Routes OpenAI completions (POST /v1/completions, /v1/chat/completions) through a\n"
	"prefiller (P) and a decoder (D) running vLLM's MooncakeConnector (or kvbridge-serve),\n"
	"picked round robin; D's answer, streamed or not, goes back to the client byte for byte.\n"
	"GET /health, GET /stats (counters, prefill targets).\n"
	"\n"
	"Two router contracts (--vllm-protocol), which do not mix: a vLLM 0.16+ P answers no\n"
	"kv_transfer_params, so gen0 against it fails every request with 502 here (vLLM's toy\n"
	"proxy silently lets D prefill on its own, with no KV transfer), and a 0.13 - 0.15 D\n"
	"does not know gen2's parameters.\n"
	"\n"
	"  gen2 (default; vLLM 0.16.0 and later, Gen 1 0.16-0.18 and Gen 2 0.19+ alike;\n"
	"  \"gen1\" is accepted as a synonym), as vLLM's mooncake_connector_proxy.py:\n"
	"    at start, each prefiller's /health is polled every second until 200, then\n"
	"    GET http://<prefiller host>:<bootstrap port>/query gives its dp ranks and their\n"
	"    engine ids; requests get 503 until every prefiller has answered (at most\n"
	"    --startup-timeout s, then the proxy exits).  Per request: a fresh uuid4 rid and\n"
	"    transfer_id \"xfer-<rid>\"; a prefill target (prefiller, dp rank) and a decoder,\n"
	"    round robin; at the same time\n"
	"      to P: max_tokens 1 (max_completion_tokens 1 if present), stream false,\n"
	"            stream_options and min_tokens dropped, kv_transfer_params\n"
	"            {do_remote_decode: true, do_remote_prefill: false, transfer_id},\n"
	"            headers X-Request-Id: rid, X-data-parallel-rank: <dp>;\n"
	"      to D: the request with kv_transfer_params {do_remote_decode: false,\n"
	"            do_remote_prefill: true, remote_bootstrap_addr: http://<P host>:<bootstrap\n"
	"            port>, remote_engine_id, transfer_id}, header X-Request-Id: rid.\n"
	"    Both legs carry Authorization: Bearer $OPENAI_API_KEY when that is set.  P's\n"
	"    answer is awaited in the background: a failure is logged with P's words and\n"
	"    counted (prefill_failed in /stats) but does not hold up D's answer; D fails the\n"
	"    request when its wait for the KV cache times out (P's abort timeout,\n"
	"    VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT, 480 s).  A decoder that cannot be reached:\n"
	"    502, and nothing is sent to P.\n"
	"\n"
	"  gen0 (vLLM 0.13.0 - 0.15.1), as vLLM's toy_proxy_server.py: sequential.  P gets\n"
	"    max_tokens 1, stream false, kv_transfer_params {do_remote_decode: true,\n"
	"    do_remote_prefill: false, remote_*: null} and the client's X-Request-Id (or a\n"
	"    uuid); then D gets the request with the kv_transfer_params of P's answer\n"
	"    (remote_host, remote_port).  A failed prefill is answered 502 with P's words.\n"
	"\n"
	"Examples:\n"
	"  kvbridge-proxy --prefiller-host 10.0.0.1 --prefiller-port 8100 \\\n"
	"                 --prefiller-bootstrap-port 8998 \\\n"
	"                 --decoder-host 10.0.0.2 --decoder-port 8200\n"
	"  kvbridge-proxy --vllm-protocol gen0 --prefiller-port 8100 --decoder-port 8200\n"
	"  curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\\n"
	"       -d '{\"model\":\"m\",\"prompt\":\"hello world\",\"max_tokens\":8}'\n";

int main(int argc, char **argv)
{
	GError *gerr = NULL;
	GOptionContext *oc = g_option_context_new("- route completions through a prefiller and a decoder");
	g_option_context_add_main_entries(oc, entries, NULL);
	g_option_context_set_description(oc, help_text);
	if (!g_option_context_parse(oc, &argc, &argv, &gerr)) {
		fprintf(stderr, "kvbridge-proxy: %s (try --help)\n", gerr->message);
		return 2;
	}
	g_option_context_free(oc);
	if (argc > 1) {
		fprintf(stderr, "kvbridge-proxy: unexpected argument %s (try --help)\n", argv[1]);
		return 2;
	}
	const char *P = "kvbridge-proxy";
	if (!kvb_cli_check_int64(P, "--port", o.port, 0, 65535) ||
	    !kvb_cli_check_int64(P, "--timeout", o.timeout_s, 1, 86400) ||
	    !kvb_cli_check_int64(P, "--max-clients", o.max_clients, 1, 65536) ||
	    !kvb_cli_check_int64(P, "--request-timeout", o.request_timeout_s, 1, 3600) ||
	    (o.startup_timeout_s != G_MININT &&
	     !kvb_cli_check_int64(P, "--startup-timeout", o.startup_timeout_s, 1, 86400)) ||
	    !kvb_cli_check_double(P, "--busy-wait", o.busy_wait_s, 0, 3600, 0))
		return KVB_CLI_USAGE;
	if (o.protocol && !kvb_proxy_protocol_parse(o.protocol, &proto)) {
		fprintf(stderr, "kvbridge-proxy: --vllm-protocol %s: expected gen0 (vLLM 0.13.0 - 0.15.1) or "
			"gen2 (vLLM 0.16.0 and later; gen1 is the same)\n", o.protocol);
		return 2;
	}
	if (proto == KVB_PROXY_GEN0 && (o.p_boots || o.startup_timeout_s != G_MININT)) {
		fprintf(stderr, "kvbridge-proxy: --%s applies to --vllm-protocol gen2 only (a gen0 prefiller "
			"names its side channel in its answer)\n",
			o.p_boots ? "prefiller-bootstrap-port" : "startup-timeout");
		return 2;
	}
	if (o.startup_timeout_s == G_MININT)
		o.startup_timeout_s = STARTUP_TIMEOUT_DEFAULT_S;
	const char *key = g_getenv("OPENAI_API_KEY");
	if (key && *key) {
		for (const char *p = key; *p; p++)
			if ((unsigned char)*p < 0x20 || *p == 0x7f) {
				fprintf(stderr, "kvbridge-proxy: OPENAI_API_KEY holds a control character\n");
				return 2;
			}
		auth_field = g_strdup_printf("Authorization: Bearer %s", key);
	}
	prefillers = g_array_new(FALSE, FALSE, sizeof(endpoint_t));
	decoders = g_array_new(FALSE, FALSE, sizeof(endpoint_t));
	if (!parse_endpoints(o.p_hosts, o.p_ports, "8100", prefillers, "prefiller") ||
	    !parse_endpoints(o.d_hosts, o.d_ports, "8200", decoders, "decoder") ||
	    (proto == KVB_PROXY_GEN2 && !parse_bootstrap_ports(o.p_boots, prefillers)))
		return 2;
	if (proto == KVB_PROXY_GEN0)
		note("vllm protocol gen0 (vLLM 0.13.0 - 0.15.1): sequential, the prefiller's kv_transfer_params "
		     "go to the decoder");
	else
		note("vllm protocol gen2 (vLLM 0.16.0 and later): prefill and decode legs at once, "
		     "transfer_id, engine ids from the prefillers' bootstrap /query");
	signal(SIGPIPE, SIG_IGN);
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
	struct addrinfo *res = NULL;
	char ps[8];
	g_snprintf(ps, sizeof(ps), "%d", o.port);
	if (!o.host)
		o.host = g_strdup("127.0.0.1");
	const char *h = o.host;
	if (!ports_apart(h))
		return 2;
	char kwhy[128];
	if (!kvb_http_api_key(o.api_key, "KVB_API_KEY", &api_key, kwhy, sizeof(kwhy))) {
		fprintf(stderr, "kvbridge-proxy: --api-key: %s\n", kwhy);
		return 2;
	}
	kvb_err_t terr;
	if (!kvb_tls_from_options(o.tls_cert, o.tls_key, o.tls_ca, &front_tls, &leg_tls, &terr)) {
		fprintf(stderr, "kvbridge-proxy: %s\n", terr.msg);
		return 2;
	}
	const char *allow = o.allow_peers ? o.allow_peers : g_getenv("KVB_ALLOW_PEERS");
	kvb_err_t aerr;
	if (allow && *allow) {
		if (kvb_acl_parse(&allowed, allow, &aerr) != KVB_OK) {
			fprintf(stderr, "kvbridge-proxy: --allow-peers: %s\n", aerr.msg);
			return 2;
		}
	} else {
		kvb_acl_default(&allowed, h);
	}
	char nets[512];
	kvb_acl_describe(&allowed, nets, sizeof(nets));
	note("peers allowed: %s", nets);
	if (kvb_acl_is_open(&allowed))
		fprintf(stderr, "kvbridge-proxy: warning: --allow-peers lets any address send requests\n");
	int rc = getaddrinfo(h, ps, &hints, &res);
	if (rc) {
		fprintf(stderr, "kvbridge-proxy: --host %s: %s\n", h, gai_strerror(rc));
		return 2;
	}
	int lfd = socket(res->ai_family, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, res->ai_addr, res->ai_addrlen) || listen(lfd, 256)) {
		fprintf(stderr, "kvbridge-proxy: cannot listen on %s:%d: %s\n", h, o.port, g_strerror(errno));
		return 1;
	}
	freeaddrinfo(res);
	listen_fd = lfd;
	if (!strcmp(h, "0.0.0.0") || !strcmp(h, "::") || !strcmp(h, "*"))
		fprintf(stderr, "kvbridge-proxy: warning: listening on every interface (%s): anyone who "
			"can reach this host can send requests through the proxy\n", h);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	getsockname(lfd, (struct sockaddr *)&ss, &sl);
	int bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						    : ((struct sockaddr_in *)&ss)->sin_port);
	arriving = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
	arriving_max = MAX(1u, (guint)o.max_clients / 4);
	client_pool = g_thread_pool_new(serve_client, NULL, o.max_clients, FALSE, NULL);
	if (proto == KVB_PROXY_GEN0) {
		printf("kvbridge-proxy: ready on %s:%d, %u prefiller(s), %u decoder(s)%s%s\n", h, bound,
		       prefillers->len, decoders->len, front_tls ? ", clients over tls" : "",
		       leg_tls ? ", legs over tls" : "");
		fflush(stdout);
	} else {
		pleg_pool = g_thread_pool_new(prefill_leg, NULL, o.max_clients, FALSE, NULL);
		note("listening on %s:%d%s; asking %u prefiller(s) for their dp ranks (503 until then), "
		     "%u decoder(s)%s", h, bound, front_tls ? " (clients over tls)" : "", prefillers->len,
		     decoders->len, leg_tls ? ", legs over tls" : "");
		g_thread_unref(g_thread_new("discover", discover, GINT_TO_POINTER(bound)));
	}
	for (;;) {
		struct sockaddr_storage from;
		socklen_t from_len = sizeof(from);
		int cfd = accept(lfd, (struct sockaddr *)&from, &from_len);
		if (cfd >= 0 && !kvb_acl_allows(&allowed, (struct sockaddr *)&from)) {
			g_atomic_pointer_add(&n_refused, 1); /* closed before a byte is read */
			close(cfd);
			continue;
		}
		if (cfd < 0) {
			if (g_atomic_int_get(&discovery_failed)) {
				fprintf(stderr, "kvbridge-proxy: giving up: the prefillers' dp ranks are unknown\n");
				break;
			}
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			fprintf(stderr, "kvbridge-proxy: accept: %s\n", g_strerror(errno));
			break;
		}
		client_t *cl = g_new0(client_t, 1);
		cl->fd = cfd;
		getnameinfo((struct sockaddr *)&from, from_len, cl->addr, sizeof(cl->addr), NULL, 0,
			    NI_NUMERICHOST);
		if (!arriving_enter(cl->addr)) {
			gint64 total = g_atomic_pointer_add(&n_crowded, 1) + 1;
			static gint64 said_at;
			gint64 now = g_get_monotonic_time();
			if (now - said_at > 10 * G_USEC_PER_SEC) {
				said_at = now;
				fprintf(stderr, "kvbridge-proxy: warning: %s has %u requests still arriving; "
					"its new connections are closed (%" G_GINT64_FORMAT " so far)\n", cl->addr,
					arriving_max, total);
			}
			close(cfd);
			g_free(cl);
			continue;
		}
		g_thread_pool_push(client_pool, cl, NULL);
	}
	close(lfd);
	if (g_atomic_int_get(&discovery_failed))
		return 1; /* nothing worth waiting for: every request so far got 503 */
	g_thread_pool_free(client_pool, FALSE, TRUE);
	kvb_tls_free(front_tls);
	kvb_tls_free(leg_tls);
	return 1;
}
