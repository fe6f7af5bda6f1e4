/*
 * kvbridge-proxy: the disaggregated-serving router of vLLM's toy proxy
 * (tests/v1/kv_connector/nixl_integration/toy_proxy_server.py), the one the
 * Gen 0 MooncakeConnector was documented with:
 *
 *   1. the client's completion request goes to a prefiller with
 *      kv_transfer_params {do_remote_decode: true, ...}, max_tokens 1,
 *      stream false, X-Request-Id set;
 *   2. the kv_transfer_params of the prefiller's answer (remote_host,
 *      remote_port, ...) are copied into the request for a decoder;
 *   3. the decoder's response goes back to the client byte for byte
 *      (streamed responses included).
 * Prefillers and decoders are picked round robin.  One thread per client
 * connection; a request the proxy cannot parse gets 400 and a closed
 * connection, a failed prefill 502 with the prefiller's words.
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

#include "kvb_http.h"
#include "kvb_tool_http.h"

typedef struct endpoint {
	char host[256];
	uint16_t port;
} endpoint_t;

static struct {
	gchar *host;
	gint port;
	gchar **p_hosts, **p_ports, **d_hosts, **d_ports;
	gint timeout_s;
	gint max_clients;
	gboolean verbose;
} o = {.port = 8000, .timeout_s = 600, .max_clients = 256};

static GArray *prefillers, *decoders; /* endpoint_t */
static gint rr_p, rr_d;
static gint64 n_requests, n_errors;

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

static bool send_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		p += n;
		len -= (size_t)n;
	}
	return true;
}

static void reply(int fd, int status, const char *type, const char *msg)
{
	GString *b = g_string_new("{\"error\":{\"message\":\"");
	for (const char *p = msg; *p; p++) {
		if (*p == '"' || *p == '\\')
			g_string_append_c(b, '\\');
		if ((unsigned char)*p >= 0x20)
			g_string_append_c(b, *p);
	}
	g_string_append_printf(b, "\",\"type\":\"%s\",\"code\":%d}}\n", type, status);
	GString *out = g_string_new(NULL);
	kvb_http_write_response(out, status, "application/json", b->str, b->len, false);
	send_all(fd, out->str, out->len);
	g_string_free(out, TRUE);
	g_string_free(b, TRUE);
	if (status >= 400)
		g_atomic_pointer_add(&n_errors, 1);
}

static char *node_to_json(JsonNode *n)
{
	JsonGenerator *g = json_generator_new();
	json_generator_set_root(g, n);
	char *s = json_generator_to_data(g, NULL);
	g_object_unref(g);
	return s;
}

/* The decoder's response, relayed as it arrives. */
static void relay_decoder(int cfd, const endpoint_t *d, const char *target, const char *rid,
			  const char *body)
{
	GError *gerr = NULL;
	int dfd = kvb_http_connect(d->host, d->port, o.timeout_s * 1000, &gerr);
	if (dfd < 0) {
		reply(cfd, 502, "DecoderUnavailable", gerr->message);
		g_error_free(gerr);
		return;
	}
	char idf[KVB_HTTP_TARGET_MAX], hostf[300];
	g_snprintf(idf, sizeof(idf), "X-Request-Id: %s", rid);
	g_snprintf(hostf, sizeof(hostf), "%s:%u", d->host, d->port);
	const char *fields[] = {idf, "Connection: close", NULL};
	GString *req = g_string_new(NULL);
	kvb_http_write_request(req, "POST", target, hostf, fields, "application/json", body, strlen(body));
	bool ok = send_all(dfd, req->str, req->len);
	g_string_free(req, TRUE);
	if (!ok) {
		reply(cfd, 502, "DecoderUnavailable", "could not send the request to the decoder");
		close(dfd);
		return;
	}
	char buf[65536];
	uint64_t relayed = 0;
	for (;;) {
		ssize_t n = recv(dfd, buf, sizeof(buf), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (!send_all(cfd, buf, (size_t)n))
			break; /* the client left */
		relayed += (uint64_t)n;
	}
	if (!relayed)
		reply(cfd, 502, "DecoderUnavailable", "the decoder closed without a response");
	close(dfd);
}

static void serve_client(gpointer data, gpointer user)
{
	(void)user;
	int cfd = GPOINTER_TO_INT(data);
	struct timeval tv = {o.timeout_s, 0};
	setsockopt(cfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	GByteArray *in = g_byte_array_new();
	kvb_http_msg_t msg;
	bool have = false;
	kvb_err_t err;
	for (;;) {
		guint old = in->len;
		g_byte_array_set_size(in, old + 16384);
		ssize_t n = recv(cfd, in->data + old, 16384, 0);
		g_byte_array_set_size(in, old + (guint)MAX(n, 0));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			goto out;
		if (!have && (memchr(in->data + old, '\n', (size_t)n) || memchr(in->data + old, '\r', (size_t)n) ||
			      in->len >= KVB_HTTP_HEAD_MAX)) {
			int rc = kvb_http_parse_request((const char *)in->data, in->len, &msg, &err);
			if (rc == KVB_INPROGRESS)
				continue;
			if (rc != KVB_OK) {
				reply(cfd, 400, "BadRequestError", err.msg);
				goto out;
			}
			have = true;
			if (msg.chunked) {
				reply(cfd, 411, "LengthRequired", "send the body with Content-Length");
				goto out;
			}
		}
		if (!have)
			continue;
		if (in->len >= msg.head_len + (msg.has_content_length ? msg.content_length : 0))
			break;
	}
	g_atomic_pointer_add(&n_requests, 1);
	if (!strcmp(msg.method, "GET") && (!strcmp(msg.target, "/healthcheck") || !strcmp(msg.target, "/health"))) {
		const char *b = "{\"status\":\"ok\"}\n";
		GString *out = g_string_new(NULL);
		kvb_http_write_response(out, 200, "application/json", b, strlen(b), false);
		send_all(cfd, out->str, out->len);
		g_string_free(out, TRUE);
		goto out;
	}
	if (strcmp(msg.method, "POST") ||
	    (strcmp(msg.target, "/v1/completions") && strcmp(msg.target, "/v1/chat/completions"))) {
		reply(cfd, 404, "NotFoundError", "POST /v1/completions or /v1/chat/completions");
		goto out;
	}
	const char *body = (const char *)in->data + msg.head_len;
	size_t blen = msg.has_content_length ? (size_t)msg.content_length : 0;
	JsonParser *jp = json_parser_new();
	GError *gerr = NULL;
	if (!json_parser_load_from_data(jp, body, (gssize)blen, &gerr) ||
	    !JSON_NODE_HOLDS_OBJECT(json_parser_get_root(jp))) {
		reply(cfd, 400, "BadRequestError", gerr ? gerr->message : "the body is not a JSON object");
		g_clear_error(&gerr);
		g_object_unref(jp);
		goto out;
	}
	char rid[128];
	const char *hid = kvb_http_field_get(&msg, "X-Request-Id");
	if (hid && *hid && strlen(hid) < sizeof(rid))
		g_strlcpy(rid, hid, sizeof(rid));
	else {
		char *u = g_uuid_string_random();
		g_strlcpy(rid, u, sizeof(rid));
		g_free(u);
	}
	/* 1. prefill leg */
	JsonNode *pnode = json_node_copy(json_parser_get_root(jp));
	JsonObject *po = json_node_get_object(pnode);
	JsonObject *kp = json_object_new();
	json_object_set_boolean_member(kp, "do_remote_decode", TRUE);
	json_object_set_boolean_member(kp, "do_remote_prefill", FALSE);
	json_object_set_null_member(kp, "remote_engine_id");
	json_object_set_null_member(kp, "remote_block_ids");
	json_object_set_null_member(kp, "remote_host");
	json_object_set_null_member(kp, "remote_port");
	json_object_set_object_member(po, "kv_transfer_params", kp);
	json_object_set_boolean_member(po, "stream", FALSE);
	json_object_set_int_member(po, "max_tokens", 1);
	if (json_object_has_member(po, "max_completion_tokens"))
		json_object_set_int_member(po, "max_completion_tokens", 1);
	json_object_remove_member(po, "min_tokens");
	json_object_remove_member(po, "min_completion_tokens");
	json_object_remove_member(po, "stream_options");
	char *pbody = node_to_json(pnode);
	json_node_unref(pnode);
	guint pi = (guint)g_atomic_int_add(&rr_p, 1) % prefillers->len;
	guint di = (guint)g_atomic_int_add(&rr_d, 1) % decoders->len;
	endpoint_t *pe = &g_array_index(prefillers, endpoint_t, pi);
	endpoint_t *de = &g_array_index(decoders, endpoint_t, di);
	char idf[160];
	g_snprintf(idf, sizeof(idf), "X-Request-Id: %s", rid);
	const char *fields[] = {idf, NULL};
	int status = 0;
	GByteArray *presp = g_byte_array_new();
	logv("%s: prefill on %s:%u, decode on %s:%u", rid, pe->host, pe->port, de->host, de->port);
	bool ok = kvb_http_request(pe->host, pe->port, "POST", msg.target, fields, "application/json",
				   pbody, strlen(pbody), o.timeout_s * 1000, &status, presp, &gerr);
	g_free(pbody);
	if (!ok || status / 100 != 2) {
		char m[1200];
		if (!ok)
			g_snprintf(m, sizeof(m), "prefiller %s:%u: %s", pe->host, pe->port, gerr->message);
		else
			g_snprintf(m, sizeof(m), "prefiller %s:%u answered %d: %.*s", pe->host, pe->port, status,
				   (int)MIN(presp->len, 1000u), (const char *)presp->data);
		reply(cfd, 502, "PrefillError", m);
		g_clear_error(&gerr);
		g_byte_array_unref(presp);
		g_object_unref(jp);
		goto out;
	}
	/* 2. the prefiller's kv_transfer_params go to the decoder */
	JsonParser *rp = json_parser_new();
	JsonObject *params = NULL;
	if (json_parser_load_from_data(rp, (const char *)presp->data, (gssize)presp->len, NULL) &&
	    JSON_NODE_HOLDS_OBJECT(json_parser_get_root(rp))) {
		JsonObject *ro = json_node_get_object(json_parser_get_root(rp));
		if (json_object_has_member(ro, "kv_transfer_params") &&
		    JSON_NODE_HOLDS_OBJECT(json_object_get_member(ro, "kv_transfer_params")))
			params = json_object_get_object_member(ro, "kv_transfer_params");
	}
	g_byte_array_unref(presp);
	if (!params) {
		reply(cfd, 502, "PrefillError",
		      "the prefiller's answer carries no kv_transfer_params (is it a KV producer?)");
		g_object_unref(rp);
		g_object_unref(jp);
		goto out;
	}
	JsonNode *dnode = json_node_copy(json_parser_get_root(jp));
	JsonObject *dobj = json_node_get_object(dnode);
	json_object_set_object_member(dobj, "kv_transfer_params", json_object_ref(params));
	char *dbody = node_to_json(dnode);
	json_node_unref(dnode);
	g_object_unref(rp);
	g_object_unref(jp);
	/* 3. the decoder's answer, as it comes */
	relay_decoder(cfd, de, msg.target, rid, dbody);
	g_free(dbody);
out:
	if (have)
		kvb_http_msg_clear(&msg);
	g_byte_array_unref(in);
	close(cfd);
}

static bool parse_endpoints(gchar **hosts, gchar **ports, const char *def_port, GArray *out,
			    const char *what)
{
	GPtrArray *hs = g_ptr_array_new_with_free_func(g_free);
	GPtrArray *ps = g_ptr_array_new_with_free_func(g_free);
	for (gchar **h = hosts; h && *h; h++) {
		gchar **parts = g_strsplit(*h, ",", -1);
		for (gchar **q = parts; *q; q++)
			if (**q)
				g_ptr_array_add(hs, g_strdup(g_strstrip(*q)));
		g_strfreev(parts);
	}
	for (gchar **p = ports; p && *p; p++) {
		gchar **parts = g_strsplit(*p, ",", -1);
		for (gchar **q = parts; *q; q++)
			if (**q)
				g_ptr_array_add(ps, g_strdup(g_strstrip(*q)));
		g_strfreev(parts);
	}
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
		endpoint_t e;
		g_strlcpy(e.host, hs->pdata[hs->len == 1 ? 0 : i], sizeof(e.host));
		char *end;
		long v = strtol(ps->pdata[ps->len == 1 ? 0 : i], &end, 10);
		if (*end || v < 1 || v > 65535) {
			fprintf(stderr, "kvbridge-proxy: %s port %s: expected 1..65535\n", what,
				(char *)ps->pdata[ps->len == 1 ? 0 : i]);
			ok = false;
			break;
		}
		e.port = (uint16_t)v;
		g_array_append_val(out, e);
	}
	g_ptr_array_free(hs, TRUE);
	g_ptr_array_free(ps, TRUE);
	return ok;
}

static GOptionEntry entries[] = {
	{"host", 0, 0, G_OPTION_ARG_STRING, &o.host, "listen address (default 127.0.0.1)", "IP"},
	{"port", 0, 0, G_OPTION_ARG_INT, &o.port, "listen port (default 8000; 0 = any free port)", "PORT"},
	{"prefiller-host", 0, 0, G_OPTION_ARG_STRING_ARRAY, &o.p_hosts, "prefiller host (repeat or comma list; default localhost)", "HOST"},
	{"prefiller-hosts", 0, G_OPTION_FLAG_HIDDEN, G_OPTION_ARG_STRING_ARRAY, &o.p_hosts, NULL, NULL},
	{"prefiller-port", 0, 0, G_OPTION_ARG_STRING_ARRAY, &o.p_ports, "prefiller HTTP port (repeat or comma list; default 8100)", "PORT"},
	{"prefiller-ports", 0, G_OPTION_FLAG_HIDDEN, G_OPTION_ARG_STRING_ARRAY, &o.p_ports, NULL, NULL},
	{"decoder-host", 0, 0, G_OPTION_ARG_STRING_ARRAY, &o.d_hosts, "decoder host (repeat or comma list; default localhost)", "HOST"},
	{"decoder-hosts", 0, G_OPTION_FLAG_HIDDEN, G_OPTION_ARG_STRING_ARRAY, &o.d_hosts, NULL, NULL},
	{"decoder-port", 0, 0, G_OPTION_ARG_STRING_ARRAY, &o.d_ports, "decoder HTTP port (repeat or comma list; default 8200)", "PORT"},
	{"decoder-ports", 0, G_OPTION_FLAG_HIDDEN, G_OPTION_ARG_STRING_ARRAY, &o.d_ports, NULL, NULL},
	{"timeout", 0, 0, G_OPTION_ARG_INT, &o.timeout_s, "seconds to wait for a prefiller or decoder (default 600)", "S"},
	{"max-clients", 0, 0, G_OPTION_ARG_INT, &o.max_clients, "concurrent client connections (default 256)", "N"},
	{"verbose", 'v', 0, G_OPTION_ARG_NONE, &o.verbose, "log every request", NULL},
	{NULL},
};

int main(int argc, char **argv)
{
	GError *gerr = NULL;
	GOptionContext *oc = g_option_context_new("- route completions through a prefiller, then a decoder");
	g_option_context_add_main_entries(oc, entries, NULL);
	g_option_context_set_description(oc,
		"vLLM's toy disaggregated proxy, in C: each request is prefilled on a prefiller\n"
		"(max_tokens 1, kv_transfer_params.do_remote_decode) and the decoder receives the\n"
		"prefiller's kv_transfer_params; its answer is relayed to the client as is.\n"
		"\n"
		"Example:\n"
		"  kvbridge-proxy --prefiller-host 10.0.0.1 --prefiller-port 8100 \\\n"
		"                 --decoder-host 10.0.0.2 --decoder-port 8200\n"
		"  curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\\n"
		"       -d '{\"model\":\"m\",\"prompt\":\"hello world\",\"max_tokens\":8}'\n");
	if (!g_option_context_parse(oc, &argc, &argv, &gerr)) {
		fprintf(stderr, "kvbridge-proxy: %s (try --help)\n", gerr->message);
		return 2;
	}
	g_option_context_free(oc);
	if (argc > 1 || o.port < 0 || o.port > 65535 || o.timeout_s < 1 || o.max_clients < 1) {
		fprintf(stderr, "kvbridge-proxy: bad arguments (--port 0..65535, --timeout >= 1; try --help)\n");
		return 2;
	}
	prefillers = g_array_new(FALSE, FALSE, sizeof(endpoint_t));
	decoders = g_array_new(FALSE, FALSE, sizeof(endpoint_t));
	if (!parse_endpoints(o.p_hosts, o.p_ports, "8100", prefillers, "prefiller") ||
	    !parse_endpoints(o.d_hosts, o.d_ports, "8200", decoders, "decoder"))
		return 2;
	signal(SIGPIPE, SIG_IGN);
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
	struct addrinfo *res = NULL;
	char ps[8];
	g_snprintf(ps, sizeof(ps), "%d", o.port);
	const char *h = o.host ? o.host : "127.0.0.1";
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
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	getsockname(lfd, (struct sockaddr *)&ss, &sl);
	int bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						    : ((struct sockaddr_in *)&ss)->sin_port);
	GThreadPool *pool = g_thread_pool_new(serve_client, NULL, o.max_clients, FALSE, NULL);
	printf("kvbridge-proxy: ready on %s:%d, %u prefiller(s), %u decoder(s)\n", h, bound, prefillers->len,
	       decoders->len);
	fflush(stdout);
	for (;;) {
		int cfd = accept(lfd, NULL, NULL);
		if (cfd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			fprintf(stderr, "kvbridge-proxy: accept: %s\n", g_strerror(errno));
			break;
		}
		g_thread_pool_push(pool, GINT_TO_POINTER(cfd), NULL);
	}
	g_thread_pool_free(pool, FALSE, TRUE);
	close(lfd);
	return 1;
}
