/*
 * vLLM's Gen 1/2 HTTP bootstrap on the event loop (kvb_hw_vllm_bootstrap.h).
 *
 * Server: HTTP/1.1 with keep-alive, one request at a time per connection
 * (pipelined requests wait in the buffer), bodies by Content-Length or
 * chunked.  Routes as vLLM's FastAPI app: POST /register, GET /query;
 * FastAPI's 404 and 405 bodies otherwise.  What the strict parser refuses
 * (a ZMQ greeting, garbage) gets uvicorn's 400 text and a closed
 * connection; a connection idle for IDLE_NS is closed.
 *
 * Client: one request per connection ("Connection: close"), the response
 * read to its Content-Length, chunked end, or EOF.  A connection refused,
 * reset or timed out is retried as vLLM's httpx loop does; an HTTP answer
 * is final.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>

#include "control/kvb_hw_vllm_bootstrap.h"
#include "events/kvb_hw_net.h"
#include "kvb_http.h"

#define IDLE_NS (30 * G_GUINT64_CONSTANT(1000000000))
#define RX_CAP (KVB_HTTP_HEAD_MAX + KVB_VLLM_BOOT_BODY_MAX + 64)
#define REGISTER_TRIES 3
#define QUERY_TRIES 3
#define QUERY_RETRY_NS (100 * G_GUINT64_CONSTANT(1000000))

struct hw_vllm_boot {
	hw_t *hw;
	int fd;
	uint16_t port;
	hw_watch_t *w;
	kvb_vllm_registry_t *registry;
	GQueue conns;               /* boot_conn_t* */
	GQueue calls;               /* hw_vllm_boot_call_t* */
};

/* ------------------------------------------------------------------------ */
/* server                                                                   */

typedef struct boot_conn {
	struct hw_vllm_boot *b;
	int fd;
	hw_watch_t *w;
	hw_deadline_t *idle;
	GByteArray *rx;
	GByteArray *tx;
	size_t tx_off;
	bool close_after;           /* the last response said Connection: close */
	char peer_ip[64];           /* the client's address, for warnings */
} boot_conn_t;

static void conn_free(boot_conn_t *c)
{
	g_queue_remove(&c->b->conns, c);
	hw_watch_free(c->w);
	hw_deadline_free(c->idle);
	if (c->fd >= 0)
		close(c->fd);
	g_byte_array_unref(c->rx);
	g_byte_array_unref(c->tx);
	g_free(c);
}

static void conn_idle(void *obj)
{
	conn_free(obj);
}

static void respond(boot_conn_t *c, int status, const char *type, const char *body, bool keep)
{
	GString *out = g_string_new(NULL);
	kvb_http_write_response(out, status, type, body, strlen(body), keep);
	g_byte_array_append(c->tx, (const guint8 *)out->str, (guint)out->len);
	g_string_free(out, TRUE);
	c->close_after = !keep;
	hw_watch_set(c->w, G_IO_IN | G_IO_OUT);
}

/* One whole request: route it. */
static void serve_request(boot_conn_t *c, const kvb_http_msg_t *m, const char *body, size_t len)
{
	hw_t *hw = c->b->hw;
	hw->stats.vllm_bootstrap_requests++;
	bool keep = m->keep_alive;
	const char *path = m->target;
	char route[KVB_HTTP_TARGET_MAX];
	g_strlcpy(route, path, sizeof(route));
	char *q = strchr(route, '?');
	if (q)
		*q = 0;
	if (!strcmp(route, "/register")) {
		if (strcmp(m->method, "POST")) {
			respond(c, 405, "application/json", "{\"detail\":\"Method Not Allowed\"}", keep);
			return;
		}
		GString *reply = g_string_new(NULL);
		unsigned status = 500;
		kvb_err_t err;
		int rc = kvb_vllm_registry_handle(c->b->registry, body, len, &status, reply, &err);
		if (rc != KVB_OK)
			hw_warn(hw, "vLLM bootstrap: /register refused (%u): %s", status, err.msg);
		else
			hw_log(hw, "vLLM bootstrap: registered %.*s", (int)MIN(len, 512), body);
		respond(c, (int)status, "application/json", reply->str, keep);
		g_string_free(reply, TRUE);
		return;
	}
	if (!strcmp(route, "/query")) {
		if (strcmp(m->method, "GET")) {
			respond(c, 405, "application/json", "{\"detail\":\"Method Not Allowed\"}", keep);
			return;
		}
		GString *reply = g_string_new(NULL);
		kvb_vllm_registry_query_json(c->b->registry, reply);
		respond(c, 200, "application/json", reply->str, keep);
		g_string_free(reply, TRUE);
		return;
	}
	respond(c, 404, "application/json", "{\"detail\":\"Not Found\"}", keep);
}

/* The bytes so far cannot start an HTTP request: the method is a run of
 * capital letters ended by a space.  A ZMQ greeting (0xff ...) from a Gen 0
 * peer, which then waits for ours, is refused at once instead of at the
 * idle timeout. */
static bool not_http(const GByteArray *rx)
{
	for (guint i = 0; i < rx->len && i <= KVB_HTTP_METHOD_MAX; i++) {
		uint8_t b = rx->data[i];
		if (b == ' ')
			return i == 0;
		if (b < 'A' || b > 'Z')
			return true;
	}
	return rx->len > KVB_HTTP_METHOD_MAX;
}

/* Parse what rx holds: serve each whole request.  false: the connection
 * is being closed (refused input). */
static bool conn_parse(boot_conn_t *c)
{
	while (c->rx->len && !c->close_after) {
		kvb_http_msg_t m;
		kvb_err_t err;
		int rc = not_http(c->rx) ? KVB_ERR_PROTOCOL
					 : kvb_http_parse_request((const char *)c->rx->data, c->rx->len, &m,
								  &err);
		if (rc == KVB_ERR_PROTOCOL && not_http(c->rx))
			kvb_err_set(&err, KVB_ERR_PROTOCOL, "the first bytes are not an HTTP method "
				    "(a ZMQ peer of vLLM's Gen 0 side channel?)");
		if (rc == KVB_INPROGRESS)
			return true;
		if (rc != KVB_OK) {
			hw_warn_from(c->b->hw, c->peer_ip, "vLLM bootstrap: not an HTTP request from %s, "
				     "answered 400: %s", c->peer_ip, err.msg);
			respond(c, 400, "text/plain; charset=utf-8", "Invalid HTTP request received.", false);
			g_byte_array_set_size(c->rx, 0);
			return false;
		}
		size_t need = m.head_len;
		GByteArray *body = g_byte_array_new();
		if (m.chunked) {
			kvb_http_chunked_t d;
			kvb_http_chunked_init(&d);
			size_t used = 0;
			rc = kvb_http_chunked_feed(&d, (const char *)c->rx->data + m.head_len,
						   c->rx->len - m.head_len, &used, body, &err);
			if (rc == KVB_INPROGRESS) {
				g_byte_array_unref(body);
				kvb_http_msg_clear(&m);
				return true;
			}
			need += used;
		} else {
			uint64_t cl = m.has_content_length ? m.content_length : 0;
			if (cl > KVB_VLLM_BOOT_BODY_MAX) {
				rc = KVB_ERR_PROTOCOL;
				kvb_err_set(&err, KVB_ERR_PROTOCOL, "body of %" PRIu64 " bytes", cl);
			} else if (c->rx->len - m.head_len < cl) {
				g_byte_array_unref(body);
				kvb_http_msg_clear(&m);
				return true;
			} else {
				g_byte_array_append(body, c->rx->data + m.head_len, (guint)cl);
				need += cl;
			}
		}
		if (rc != KVB_OK) {
			hw_warn_from(c->b->hw, c->peer_ip, "vLLM bootstrap: request body from %s refused, "
				     "answered 400: %s", c->peer_ip, err.msg);
			respond(c, 400, "text/plain; charset=utf-8", "Invalid HTTP request received.", false);
			g_byte_array_unref(body);
			kvb_http_msg_clear(&m);
			g_byte_array_set_size(c->rx, 0);
			return false;
		}
		g_byte_array_append(body, (const guint8 *)"", 1); /* NUL for the JSON parser */
		serve_request(c, &m, (const char *)body->data, body->len - 1);
		g_byte_array_unref(body);
		kvb_http_msg_clear(&m);
		g_byte_array_remove_range(c->rx, 0, (guint)need);
	}
	return true;
}

static bool conn_io(void *obj, GIOCondition cond)
{
	boot_conn_t *c = obj;
	hw_deadline_arm(c->idle, IDLE_NS);
	if (c->tx->len) {
		int r = hw_flush_tx(c->fd, c->tx, &c->tx_off);
		if (r < 0) {
			conn_free(c);
			return false;
		}
		if (r == 1) {
			if (c->close_after) {
				conn_free(c);
				return false;
			}
			hw_watch_set(c->w, G_IO_IN);
		}
	}
	if (!(cond & (G_IO_IN | G_IO_HUP | G_IO_ERR)) || c->close_after)
		return true;
	ssize_t n = hw_fill_rx(c->fd, c->rx, RX_CAP);
	conn_parse(c);
	if (c->tx->len) {
		/* answer what was complete before the end of the stream */
		int r = hw_flush_tx(c->fd, c->tx, &c->tx_off);
		if (r < 0 || (r == 1 && c->close_after)) {
			conn_free(c);
			return false;
		}
	}
	if (n < 0 || (c->rx->len >= RX_CAP && !c->close_after)) {
		conn_free(c);
		return false;
	}
	return true;
}

static bool boot_accept(void *obj, GIOCondition cond)
{
	struct hw_vllm_boot *b = obj;
	(void)cond;
	for (int i = 0; i < 64; i++) {
		struct sockaddr_storage sa;
		socklen_t sl = sizeof(sa);
		int fd = accept(b->fd, (struct sockaddr *)&sa, &sl);
		if (fd < 0)
			break;
		if (!hw_accept_allowed(b->hw, fd, (struct sockaddr *)&sa, "vLLM bootstrap"))
			continue;
		hw_sock_tune(fd);
		boot_conn_t *c = g_new0(boot_conn_t, 1);
		const void *ip = sa.ss_family == AF_INET6 ? (const void *)&((struct sockaddr_in6 *)&sa)->sin6_addr
							  : (const void *)&((struct sockaddr_in *)&sa)->sin_addr;
		if (!inet_ntop(sa.ss_family, ip, c->peer_ip, sizeof(c->peer_ip)))
			c->peer_ip[0] = 0;
		c->b = b;
		c->fd = fd;
		c->rx = g_byte_array_new();
		c->tx = g_byte_array_new();
		c->w = hw_watch_new(b->hw, fd, G_IO_IN, conn_io, c);
		c->idle = hw_deadline_new(b->hw, conn_idle, c);
		hw_deadline_arm(c->idle, IDLE_NS);
		g_queue_push_tail(&b->conns, c);
	}
	return true;
}

static struct hw_vllm_boot *boot_state(hw_t *hw)
{
	if (!hw->vllm_boot) {
		struct hw_vllm_boot *b = g_new0(struct hw_vllm_boot, 1);
		b->hw = hw;
		b->fd = -1;
		g_queue_init(&b->conns);
		g_queue_init(&b->calls);
		hw->vllm_boot = b;
	}
	return hw->vllm_boot;
}

/* vLLM 0.31+ answers an identical re-register 200, older releases 400. */
static unsigned registry_flags(hw_t *hw)
{
	const char *rel = hw->p.vllm_release ? hw->p.vllm_release : "0.32.0";
	unsigned major = 0, minor = 0;
	if (sscanf(rel, "%u.%u", &major, &minor) == 2 && (major > 0 || minor >= 31))
		return KVB_VLLM_REGISTRY_IDENTICAL_OK;
	return 0;
}

int hw_vllm_bootstrap_serve(hw_t *hw, uint16_t port, kvb_err_t *err)
{
	struct hw_vllm_boot *b = boot_state(hw);
	if (b->fd >= 0)
		return kvb_err_set(err, KVB_ERR_STATE, "vLLM bootstrap already served on port %u", b->port);
	b->fd = hw_tcp_listen(hw->bind_host, port, 0, 0, &b->port, err);
	if (b->fd < 0)
		return kvb_err_set(err, KVB_ERR_CONFIG, "vLLM bootstrap: %s", err->msg);
	b->registry = kvb_vllm_registry_new(registry_flags(hw));
	b->w = hw_watch_new(hw, b->fd, G_IO_IN, boot_accept, b);
	hw_log(hw, "vLLM bootstrap on %s:%u", hw->bind_host, b->port);
	return KVB_OK;
}

uint16_t hw_vllm_bootstrap_port(hw_t *hw)
{
	return hw->vllm_boot && hw->vllm_boot->fd >= 0 ? hw->vllm_boot->port : 0;
}

/* ------------------------------------------------------------------------ */
/* client                                                                   */

typedef enum call_kind { CALL_REGISTER = 1, CALL_QUERY = 2 } call_kind_t;

struct hw_vllm_boot_call {
	struct hw_vllm_boot *b;
	call_kind_t kind;
	char host[KVB_VLLM_HOST_MAX];
	uint16_t port;
	GString *request;           /* the whole HTTP request */
	uint32_t tries, max_tries;
	int fd;
	hw_watch_t *w;
	hw_deadline_t *timer;       /* the attempt's timeout, or the pause before a retry */
	bool waiting_retry;
	bool connected;
	GByteArray *tx;
	size_t tx_off;
	GByteArray *rx;
	char last_why[KVB_ERR_MSG_MAX];
	/* a registration into our own registry (no socket) */
	bool local;
	int local_status;
	hw_vllm_register_fn reg_cb;
	hw_vllm_query_done_fn query_cb;
	void *obj;
};

static void call_close_fd(hw_vllm_boot_call_t *c)
{
	hw_watch_free(c->w);
	c->w = NULL;
	if (c->fd >= 0) {
		close(c->fd);
		c->fd = -1;
	}
	g_byte_array_set_size(c->tx, 0);
	g_byte_array_set_size(c->rx, 0);
	c->tx_off = 0;
	c->connected = false;
}

static void call_free(hw_vllm_boot_call_t *c)
{
	g_queue_remove(&c->b->calls, c);
	call_close_fd(c);
	hw_deadline_free(c->timer);
	g_byte_array_unref(c->tx);
	g_byte_array_unref(c->rx);
	if (c->request)
		g_string_free(c->request, TRUE);
	g_free(c);
}

void hw_vllm_boot_call_cancel(hw_vllm_boot_call_t *c)
{
	if (c)
		call_free(c);
}

/* The call's result: run the callback once, then free the call. */
static void call_end(hw_vllm_boot_call_t *c, int status, const char *why,
		     const kvb_vllm_boot_query_t *q)
{
	if (c->kind == CALL_REGISTER && c->reg_cb)
		c->reg_cb(c->obj, status, why);
	else if (c->kind == CALL_QUERY && c->query_cb)
		c->query_cb(c->obj, status, why, q);
	call_free(c);
}

static void call_attempt(hw_vllm_boot_call_t *c);

/* A transport failure: try again after the release's pause, or give up. */
static void call_retry(hw_vllm_boot_call_t *c, const char *why)
{
	g_strlcpy(c->last_why, why, sizeof(c->last_why));
	call_close_fd(c);
	if (c->tries >= c->max_tries) {
		char msg[KVB_ERR_MSG_MAX + 96];
		g_snprintf(msg, sizeof(msg), "%s http://%s:%u%s: %s (after %u tries)",
			   c->kind == CALL_REGISTER ? "POST" : "GET", c->host, c->port,
			   c->kind == CALL_REGISTER ? "/register" : "/query", why, c->tries);
		call_end(c, KVB_ERR_PEER, msg, NULL);
		return;
	}
	/* vLLM: register backs off 1 s, 2 s; the decoder's query 0.1 s */
	uint64_t pause = c->kind == CALL_REGISTER ? (uint64_t)c->tries * G_GUINT64_CONSTANT(1000000000)
						  : QUERY_RETRY_NS;
	c->waiting_retry = true;
	hw_deadline_arm(c->timer, pause);
}

static void call_timer(void *obj)
{
	hw_vllm_boot_call_t *c = obj;
	if (c->local) {
		call_end(c, c->local_status, c->local_status == KVB_OK ? NULL : c->last_why, NULL);
		return;
	}
	if (c->waiting_retry) {
		c->waiting_retry = false;
		call_attempt(c);
		return;
	}
	call_retry(c, "no answer within the connector timeout");
}

/* The whole response is in rx: act on it.  Returns false when the call
 * ended (freed). */
static bool call_response(hw_vllm_boot_call_t *c, bool eof)
{
	kvb_http_msg_t m;
	kvb_err_t err;
	int rc = kvb_http_parse_response((const char *)c->rx->data, c->rx->len, &m, &err);
	if (rc == KVB_INPROGRESS) {
		if (eof) {
			call_retry(c, "connection closed before a whole answer");
			return false;
		}
		return true;
	}
	if (rc != KVB_OK) {
		char why[KVB_ERR_MSG_MAX + 32];
		g_snprintf(why, sizeof(why), "bad HTTP answer: %s", err.msg);
		call_end(c, KVB_ERR_PROTOCOL, why, NULL);
		return false;
	}
	GByteArray *body = g_byte_array_new();
	const char *b0 = (const char *)c->rx->data + m.head_len;
	size_t blen = c->rx->len - m.head_len;
	if (m.chunked) {
		kvb_http_chunked_t d;
		kvb_http_chunked_init(&d);
		size_t used;
		rc = kvb_http_chunked_feed(&d, b0, blen, &used, body, &err);
	} else if (m.has_content_length) {
		rc = blen >= m.content_length ? KVB_OK : KVB_INPROGRESS;
		if (rc == KVB_OK)
			g_byte_array_append(body, (const guint8 *)b0, (guint)m.content_length);
	} else {
		rc = eof ? KVB_OK : KVB_INPROGRESS;
		if (rc == KVB_OK)
			g_byte_array_append(body, (const guint8 *)b0, (guint)blen);
	}
	if (rc == KVB_INPROGRESS && !eof) {
		g_byte_array_unref(body);
		kvb_http_msg_clear(&m);
		return true;
	}
	int status = m.status;
	kvb_http_msg_clear(&m);
	if (rc != KVB_OK) {
		g_byte_array_unref(body);
		call_retry(c, rc == KVB_INPROGRESS ? "connection closed before a whole answer" : err.msg);
		return false;
	}
	g_byte_array_append(body, (const guint8 *)"", 1);
	char why[KVB_ERR_MSG_MAX];
	if (status != 200) {
		g_snprintf(why, sizeof(why), "http://%s:%u%s answered %d: %.300s", c->host, c->port,
			   c->kind == CALL_REGISTER ? "/register" : "/query", status, (const char *)body->data);
		g_byte_array_unref(body);
		call_end(c, status == 400 ? KVB_ERR_EXISTS : KVB_ERR_PEER, why, NULL);
		return false;
	}
	if (c->kind == CALL_REGISTER) {
		g_byte_array_unref(body);
		call_end(c, KVB_OK, NULL, NULL);
		return false;
	}
	kvb_vllm_boot_query_t q;
	if (kvb_vllm_query_decode((const char *)body->data, body->len - 1, &q, &err) != KVB_OK) {
		g_snprintf(why, sizeof(why), "http://%s:%u/query: %s", c->host, c->port, err.msg);
		g_byte_array_unref(body);
		call_end(c, KVB_ERR_PROTOCOL, why, NULL);
		return false;
	}
	g_byte_array_unref(body);
	hw_vllm_query_done_fn cb = c->query_cb;
	void *obj = c->obj;
	c->query_cb = NULL;
	call_free(c);
	if (cb)
		cb(obj, KVB_OK, NULL, &q);
	kvb_vllm_query_clear(&q);
	return false;
}

static bool call_io(void *obj, GIOCondition cond)
{
	hw_vllm_boot_call_t *c = obj;
	char why[160];
	if (!c->connected) {
		int e = hw_tcp_connect_result(c->fd);
		if (e) {
			g_snprintf(why, sizeof(why), "connect: %s", g_strerror(e));
			call_retry(c, why);
			return false;
		}
		c->connected = true;
	}
	if (c->tx->len) {
		int r = hw_flush_tx(c->fd, c->tx, &c->tx_off);
		if (r < 0) {
			g_snprintf(why, sizeof(why), "send: %s", g_strerror(-r));
			call_retry(c, why);
			return false;
		}
		if (r == 1)
			hw_watch_set(c->w, G_IO_IN);
	}
	if (!(cond & (G_IO_IN | G_IO_HUP | G_IO_ERR)))
		return true;
	ssize_t n = hw_fill_rx(c->fd, c->rx, RX_CAP);
	if (n < -1) {
		g_snprintf(why, sizeof(why), "recv: %s", g_strerror((int)-n));
		call_retry(c, why);
		return false;
	}
	if (!c->rx->len && n == -1) {
		call_retry(c, "connection closed without an answer");
		return false;
	}
	if (c->rx->len >= RX_CAP) {
		call_end(c, KVB_ERR_PROTOCOL, "answer larger than the bootstrap's limit", NULL);
		return false;
	}
	return call_response(c, n == -1);
}

static void call_attempt(hw_vllm_boot_call_t *c)
{
	hw_t *hw = c->b->hw;
	kvb_err_t err;
	c->tries++;
	c->fd = hw_tcp_connect(c->host, c->port, NULL, &hw->acl, &err);
	if (c->fd < 0) {
		call_retry(c, err.msg);
		return;
	}
	g_byte_array_append(c->tx, (const guint8 *)c->request->str, (guint)c->request->len);
	c->w = hw_watch_new(hw, c->fd, G_IO_OUT | G_IO_IN, call_io, c);
	hw_deadline_arm(c->timer, hw->p.vllm_connector_timeout_ns);
}

static hw_vllm_boot_call_t *call_new(hw_t *hw, call_kind_t kind, const char *host, uint16_t port,
				     void *obj)
{
	struct hw_vllm_boot *b = boot_state(hw);
	hw_vllm_boot_call_t *c = g_new0(hw_vllm_boot_call_t, 1);
	c->b = b;
	c->kind = kind;
	c->fd = -1;
	c->obj = obj;
	g_strlcpy(c->host, host ? host : "", sizeof(c->host));
	c->port = port;
	c->tx = g_byte_array_new();
	c->rx = g_byte_array_new();
	c->timer = hw_deadline_new(hw, call_timer, c);
	g_queue_push_tail(&b->calls, c);
	return c;
}

hw_vllm_boot_call_t *hw_vllm_bootstrap_register(hw_t *hw, const char *server,
						const kvb_vllm_register_t *w,
						hw_vllm_register_fn cb, void *obj)
{
	struct hw_vllm_boot *b = boot_state(hw);
	kvb_err_t err;
	if (!server && b->registry) {
		/* our own registry: no socket, the answer comes from the loop */
		hw_vllm_boot_call_t *c = call_new(hw, CALL_REGISTER, "", 0, obj);
		c->reg_cb = cb;
		c->local = true;
		GString *reply = g_string_new(NULL);
		c->local_status = kvb_vllm_registry_add(b->registry, w, reply, &err);
		if (c->local_status != KVB_OK)
			g_snprintf(c->last_why, sizeof(c->last_why), "bootstrap refused the worker: %s",
				   reply->str);
		g_string_free(reply, TRUE);
		hw_deadline_arm(c->timer, 0);
		return c;
	}
	char host[KVB_VLLM_HOST_MAX];
	uint16_t port = hw->p.vllm_bootstrap_default_port;
	g_strlcpy(host, "127.0.0.1", sizeof(host));
	if (server && kvb_mc_parse_host_port(server, host, sizeof(host), &port, &err) != KVB_OK) {
		hw_vllm_boot_call_t *c = call_new(hw, CALL_REGISTER, "", 0, obj);
		c->reg_cb = cb;
		c->local = true;
		c->local_status = KVB_ERR_CONFIG;
		g_snprintf(c->last_why, sizeof(c->last_why), "bootstrap server %s: %s", server, err.msg);
		hw_deadline_arm(c->timer, 0);
		return c;
	}
	hw_vllm_boot_call_t *c = call_new(hw, CALL_REGISTER, host, port, obj);
	c->reg_cb = cb;
	c->max_tries = REGISTER_TRIES;
	GString *json = g_string_new(NULL);
	kvb_vllm_register_encode(w, json, NULL);
	c->request = g_string_new(NULL);
	char hostport[KVB_VLLM_HOST_MAX + 16];
	g_snprintf(hostport, sizeof(hostport), strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);
	static const char *const extra[] = {"Connection: close", NULL};
	GString *req = g_string_new(NULL);
	kvb_http_write_request(req, "POST", "/register", hostport, extra, "application/json", json->str,
			       json->len);
	g_string_append_len(c->request, req->str, (gssize)req->len);
	g_string_free(req, TRUE);
	g_string_free(json, TRUE);
	call_attempt(c);
	return c;
}

hw_vllm_boot_call_t *hw_vllm_bootstrap_query(hw_t *hw, const char *host, uint16_t port,
					     hw_vllm_query_done_fn cb, void *obj)
{
	hw_vllm_boot_call_t *c = call_new(hw, CALL_QUERY, host, port, obj);
	c->query_cb = cb;
	c->max_tries = QUERY_TRIES;
	char hostport[KVB_VLLM_HOST_MAX + 16];
	g_snprintf(hostport, sizeof(hostport), strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);
	static const char *const extra[] = {"Connection: close", NULL};
	c->request = g_string_new(NULL);
	kvb_http_write_request(c->request, "GET", "/query", hostport, extra, NULL, NULL, 0);
	call_attempt(c);
	return c;
}

void hw_vllm_bootstrap_stop(hw_t *hw)
{
	struct hw_vllm_boot *b = hw->vllm_boot;
	if (!b)
		return;
	while (b->conns.head)
		conn_free(b->conns.head->data);
	while (b->calls.head)
		call_free(b->calls.head->data);
	hw_watch_free(b->w);
	if (b->fd >= 0)
		close(b->fd);
	kvb_vllm_registry_free(b->registry);
	g_free(b);
	hw->vllm_boot = NULL;
}
