/* HTTP plumbing for the tools: a GMainContext server and a blocking client. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <glib.h>
#include <glib-unix.h>
#include <sodium.h>
#include <kvbridge/error.h>

#include "kvb_tool_http.h"

#define REQ_TIMEOUT_S 30
#define TLS_WARN_EVERY_US (10 * G_USEC_PER_SEC)
#define KVB_TOOL_HTTP_ERROR g_quark_from_static_string("kvb-tool-http")

typedef struct hconn {
	kvb_httpd_t *d;
	uint64_t id;
	int fd;
	GSource *src;
	GIOCondition watching;  /* what src waits for */
	GSource *timeout;
	kvb_tls_session_t *tls; /* NULL: plaintext */
	bool tls_ready;         /* the handshake is over */
	GByteArray *rx;
	GByteArray *tx;
	size_t tx_off;
	bool dispatched;        /* handed to the handler; waiting for the answer */
	kvb_http_msg_t msg;
	bool have_msg;
} hconn_t;

struct kvb_httpd {
	GMainContext *ctx;
	int fd;
	uint16_t port;
	GSource *src;
	GHashTable *conns;      /* id -> hconn_t* */
	uint64_t next_id;
	kvb_httpd_handler handler;
	void *user;
	kvb_acl_t acl;          /* who may connect */
	bool has_acl;
	uint64_t refused;
	const kvb_tls_t *tls;   /* HTTPS only when set */
	char *tls_who;          /* prefix of the handshake warnings */
	uint64_t tls_failed;
	uint64_t tls_unwarned;  /* failures since the last warning */
	gint64 tls_warned_us;
};

static void hconn_free(hconn_t *c)
{
	g_hash_table_remove(c->d->conns, &c->id);
	if (c->src) {
		g_source_destroy(c->src);
		g_source_unref(c->src);
	}
	if (c->timeout) {
		g_source_destroy(c->timeout);
		g_source_unref(c->timeout);
	}
	if (c->have_msg)
		kvb_http_msg_clear(&c->msg);
	kvb_tls_session_free(c->tls);
	close(c->fd);
	g_byte_array_unref(c->rx);
	g_byte_array_unref(c->tx);
	g_free(c);
}

static gboolean hconn_timeout(gpointer data)
{
	hconn_t *c = data;
	g_source_unref(c->timeout);
	c->timeout = NULL;
	if (!c->dispatched)
		hconn_free(c);
	return G_SOURCE_REMOVE;
}

static void hconn_reply_raw(hconn_t *c, int status, const char *type, const char *body, size_t len)
{
	GString *out = g_string_new(NULL);
	kvb_http_write_response(out, status, type, body, len, false);
	g_byte_array_append(c->tx, (const guint8 *)out->str, (guint)out->len);
	g_string_free(out, TRUE);
}

/* {"error": {"message": msg, "type": type, "code": status}} with msg escaped */
static GString *error_json(int status, const char *type, const char *msg)
{
	GString *s = g_string_new("{\"error\":{\"message\":\"");
	for (const char *p = msg; *p; p++) {
		if (*p == '"' || *p == '\\')
			g_string_append_c(s, '\\');
		if ((unsigned char)*p >= 0x20)
			g_string_append_c(s, *p);
	}
	g_string_append_printf(s, "\",\"type\":\"%s\",\"code\":%d}}\n", type, status);
	return s;
}

static gboolean hconn_io(gint fd, GIOCondition cond, gpointer data);

static void hconn_watch(hconn_t *c, GIOCondition cond)
{
	if (c->src) {
		g_source_destroy(c->src);
		g_source_unref(c->src);
	}
	c->watching = cond;
	c->src = g_unix_fd_source_new(c->fd, cond);
	g_source_set_callback(c->src, (GSourceFunc)(void (*)(void))hconn_io, c, NULL);
	g_source_attach(c->src, c->d->ctx);
}

static ssize_t hconn_recv(hconn_t *c, void *buf, size_t len)
{
	return c->tls ? kvb_tls_recv(c->tls, buf, len) : recv(c->fd, buf, len, 0);
}

static ssize_t hconn_send(hconn_t *c, const void *buf, size_t len)
{
	return c->tls ? kvb_tls_send(c->tls, buf, len) : send(c->fd, buf, len, MSG_NOSIGNAL);
}

/* A failed handshake: counted, and said now and then (a plaintext client
 * retrying in a loop must not flood the log). */
static void tls_failed(kvb_httpd_t *d, int fd, const char *why)
{
	d->tls_failed++;
	d->tls_unwarned++;
	gint64 now = g_get_monotonic_time();
	if (d->tls_warned_us && now - d->tls_warned_us < TLS_WARN_EVERY_US)
		return;
	struct sockaddr_storage sa;
	socklen_t sl = sizeof(sa);
	char host[64] = "?", port[8] = "?";
	if (!getpeername(fd, (struct sockaddr *)&sa, &sl))
		getnameinfo((struct sockaddr *)&sa, sl, host, sizeof(host), port, sizeof(port),
			    NI_NUMERICHOST | NI_NUMERICSERV);
	fprintf(stderr, "%s: warning: HTTPS port: client %s port %s closed, %s (a plaintext client, or "
		"one that does not trust our certificate?); %" G_GUINT64_FORMAT " such failure(s) since "
		"the last warning, %" G_GUINT64_FORMAT " in all\n",
		d->tls_who, host, port, why, d->tls_unwarned, d->tls_failed);
	d->tls_warned_us = now;
	d->tls_unwarned = 0;
}

/* The server side of the handshake, a step per readiness. */
static gboolean hconn_handshake(hconn_t *c)
{
	kvb_err_t e;
	int rc = kvb_tls_handshake_step(c->tls, &e);
	if (rc < 0) {
		tls_failed(c->d, c->fd, e.msg);
		hconn_free(c);
		return G_SOURCE_REMOVE;
	}
	GIOCondition want = rc == 0 && kvb_tls_wants_write(c->tls) ? G_IO_OUT : G_IO_IN;
	c->tls_ready = rc > 0;
	if (want != c->watching)
		hconn_watch(c, want); /* replaces the source this runs from: its return is moot */
	return G_SOURCE_CONTINUE;
}

static gboolean hconn_io(gint fd, GIOCondition cond, gpointer data)
{
	hconn_t *c = data;
	(void)cond;
	if (c->tls && !c->tls_ready) {
		gboolean keep = hconn_handshake(c);
		/* done: the request may be in already (even in GnuTLS's buffer), read it now */
		if (keep != G_SOURCE_CONTINUE || !c->tls_ready)
			return keep;
	}
	if (c->tx->len) {
		while (c->tx_off < c->tx->len) {
			ssize_t n = hconn_send(c, c->tx->data + c->tx_off, c->tx->len - c->tx_off);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
				return G_SOURCE_CONTINUE;
			if (n <= 0)
				break;
			c->tx_off += (size_t)n;
		}
		if (c->tls && c->tx_off == c->tx->len)
			kvb_tls_bye(c->tls);
		hconn_free(c);
		return G_SOURCE_REMOVE;
	}
	if (c->dispatched) {
		/* waiting for the handler: a closed client means nobody to answer */
		char b;
		ssize_t n = recv(fd, &b, 1, MSG_PEEK);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
			hconn_free(c);
			return G_SOURCE_REMOVE;
		}
		return G_SOURCE_CONTINUE;
	}
	guint start = c->rx->len;
	for (;;) {
		guint old = c->rx->len;
		g_byte_array_set_size(c->rx, old + 16384);
		ssize_t n = hconn_recv(c, c->rx->data + old, 16384);
		if (n < 0) {
			g_byte_array_set_size(c->rx, old);
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			hconn_free(c);
			return G_SOURCE_REMOVE;
		}
		g_byte_array_set_size(c->rx, old + (guint)n);
		if (n == 0) {
			hconn_free(c);
			return G_SOURCE_REMOVE;
		}
	}
	kvb_err_t err;
	/* the parser rescans from the start: only worth it when a line ended
	 * (bare CRs are refused by it too, so look for those as well) */
	if (!c->have_msg && !memchr(c->rx->data + start, '\n', c->rx->len - start) &&
	    !memchr(c->rx->data + start, '\r', c->rx->len - start) && c->rx->len < KVB_HTTP_HEAD_MAX)
		return G_SOURCE_CONTINUE;
	if (!c->have_msg) {
		int rc = kvb_http_parse_request((const char *)c->rx->data, c->rx->len, &c->msg, &err);
		if (rc == KVB_INPROGRESS)
			return G_SOURCE_CONTINUE;
		if (rc != KVB_OK) {
			GString *e = error_json(400, "BadRequestError", err.msg);
			hconn_reply_raw(c, 400, "application/json", e->str, e->len);
			g_string_free(e, TRUE);
			hconn_watch(c, G_IO_OUT);
			return G_SOURCE_REMOVE;
		}
		c->have_msg = true;
		if (c->msg.chunked) {
			const char *m = "{\"error\":{\"message\":\"chunked request bodies are not accepted\"}}\n";
			hconn_reply_raw(c, 411, "application/json", m, strlen(m));
			hconn_watch(c, G_IO_OUT);
			return G_SOURCE_REMOVE;
		}
	}
	uint64_t need = c->msg.head_len + (c->msg.has_content_length ? c->msg.content_length : 0);
	if (c->rx->len < need)
		return G_SOURCE_CONTINUE;
	c->dispatched = true;
	c->d->handler(c->d, c->id, &c->msg, (const char *)c->rx->data + c->msg.head_len,
		      (size_t)(need - c->msg.head_len), c->d->user);
	return G_SOURCE_CONTINUE;
}

static gboolean accept_io(gint fd, GIOCondition cond, gpointer data)
{
	kvb_httpd_t *d = data;
	(void)cond;
	for (int i = 0; i < 64; i++) {
		struct sockaddr_storage sa;
		socklen_t sl = sizeof(sa);
		int cfd = accept(fd, (struct sockaddr *)&sa, &sl);
		if (cfd < 0)
			break;
		if (d->has_acl && !kvb_acl_allows(&d->acl, (struct sockaddr *)&sa)) {
			d->refused++; /* closed before a byte is read */
			close(cfd);
			continue;
		}
		fcntl(cfd, F_SETFL, fcntl(cfd, F_GETFL, 0) | O_NONBLOCK);
		fcntl(cfd, F_SETFD, FD_CLOEXEC);
		int one = 1;
		setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		hconn_t *c = g_new0(hconn_t, 1);
		c->d = d;
		c->id = ++d->next_id;
		c->fd = cfd;
		c->rx = g_byte_array_new();
		c->tx = g_byte_array_new();
		g_hash_table_insert(d->conns, &c->id, c);
		if (d->tls) {
			kvb_err_t e;
			c->tls = kvb_tls_session_new(d->tls, cfd, NULL, &e);
			if (!c->tls) {
				tls_failed(d, cfd, e.msg);
				hconn_free(c);
				continue;
			}
		}
		hconn_watch(c, G_IO_IN);
		c->timeout = g_timeout_source_new_seconds(REQ_TIMEOUT_S);
		g_source_set_callback(c->timeout, hconn_timeout, c, NULL);
		g_source_attach(c->timeout, d->ctx);
	}
	return G_SOURCE_CONTINUE;
}

kvb_httpd_t *kvb_httpd_new(GMainContext *ctx, const char *bind_host, uint16_t port,
			   kvb_httpd_handler handler, void *user, GError **error)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
	struct addrinfo *res = NULL;
	char ps[8];
	g_snprintf(ps, sizeof(ps), "%u", port);
	int rc = getaddrinfo(bind_host && *bind_host ? bind_host : NULL, ps, &hints, &res);
	if (rc) {
		g_set_error(error, KVB_TOOL_HTTP_ERROR, 1, "HTTP bind address %s: %s", bind_host,
			    gai_strerror(rc));
		return NULL;
	}
	int fd = -1, e = 0;
	for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
		fd = socket(ai->ai_family, SOCK_STREAM, 0);
		if (fd < 0)
			continue;
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 128)) {
			e = errno;
			close(fd);
			fd = -1;
		}
	}
	freeaddrinfo(res);
	if (fd < 0) {
		g_set_error(error, KVB_TOOL_HTTP_ERROR, 1, "cannot listen for HTTP on %s:%u: %s",
			    bind_host ? bind_host : "*", port, g_strerror(e));
		return NULL;
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	kvb_httpd_t *d = g_new0(kvb_httpd_t, 1);
	d->ctx = g_main_context_ref(ctx);
	d->fd = fd;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	getsockname(fd, (struct sockaddr *)&ss, &sl);
	d->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						 : ((struct sockaddr_in *)&ss)->sin_port);
	d->conns = g_hash_table_new(g_int64_hash, g_int64_equal);
	d->handler = handler;
	d->user = user;
	d->src = g_unix_fd_source_new(fd, G_IO_IN);
	g_source_set_callback(d->src, (GSourceFunc)(void (*)(void))accept_io, d, NULL);
	g_source_attach(d->src, ctx);
	return d;
}

uint16_t kvb_httpd_port(const kvb_httpd_t *d)
{
	return d->port;
}

void kvb_httpd_free(kvb_httpd_t *d)
{
	if (!d)
		return;
	GList *cs = g_hash_table_get_values(d->conns);
	for (GList *l = cs; l; l = l->next)
		hconn_free(l->data);
	g_list_free(cs);
	g_hash_table_destroy(d->conns);
	g_source_destroy(d->src);
	g_source_unref(d->src);
	close(d->fd);
	g_main_context_unref(d->ctx);
	g_free(d->tls_who);
	g_free(d);
}

bool kvb_httpd_respond(kvb_httpd_t *d, uint64_t conn_id, int status, const char *content_type,
		       const char *body, size_t body_len)
{
	hconn_t *c = g_hash_table_lookup(d->conns, &conn_id);
	if (!c)
		return false;
	GString *out = g_string_new(NULL);
	kvb_http_write_response(out, status, content_type, body, body_len, false);
	g_byte_array_append(c->tx, (const guint8 *)out->str, (guint)out->len);
	g_string_free(out, TRUE);
	hconn_watch(c, G_IO_OUT);
	return true;
}

bool kvb_httpd_respond_error(kvb_httpd_t *d, uint64_t conn_id, int status, const char *type,
			     const char *msg)
{
	GString *s = error_json(status, type, msg);
	bool ok = kvb_httpd_respond(d, conn_id, status, "application/json", s->str, s->len);
	g_string_free(s, TRUE);
	return ok;
}

/* ------------------------------------------------------------------------ */
/* blocking client                                                          */

int kvb_http_connect(const char *host, uint16_t port, int timeout_ms, GError **error)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
	struct addrinfo *res = NULL;
	char ps[8];
	g_snprintf(ps, sizeof(ps), "%u", port);
	int rc = getaddrinfo(host, ps, &hints, &res);
	if (rc) {
		g_set_error(error, KVB_TOOL_HTTP_ERROR, 1, "%s: %s", host, gai_strerror(rc));
		return -1;
	}
	int fd = -1, e = ECONNREFUSED;
	for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
		fd = socket(ai->ai_family, SOCK_STREAM, 0);
		if (fd < 0)
			continue;
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
			e = errno;
			close(fd);
			fd = -1;
			continue;
		}
		struct pollfd p = {.fd = fd, .events = POLLOUT};
		int soe = 0;
		socklen_t sl = sizeof(soe);
		if (poll(&p, 1, timeout_ms) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soe, &sl) || soe) {
			e = soe ? soe : ETIMEDOUT;
			close(fd);
			fd = -1;
			continue;
		}
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) & ~O_NONBLOCK);
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	}
	freeaddrinfo(res);
	if (fd < 0)
		g_set_error(error, KVB_TOOL_HTTP_ERROR, 1, "cannot connect to %s:%u: %s",
			    host, port, g_strerror(e));
	return fd;
}

bool kvb_http_conn_open(kvb_http_conn_t *c, const char *host, uint16_t port, const kvb_tls_t *tls,
			int timeout_ms, GError **error)
{
	c->tls = NULL;
	c->fd = kvb_http_connect(host, port, timeout_ms, error);
	if (c->fd < 0)
		return false;
	if (!tls)
		return true;
	kvb_err_t e;
	if (!(c->tls = kvb_tls_session_new(tls, c->fd, host, &e)) || !kvb_tls_handshake(c->tls, timeout_ms, &e)) {
		g_set_error(error, KVB_TOOL_HTTP_ERROR, 1, "https://%s:%u: %s", host, port, e.msg);
		kvb_tls_session_free(c->tls);
		c->tls = NULL;
		close(c->fd);
		c->fd = -1;
		return false;
	}
	return true;
}

bool kvb_http_conn_accept(kvb_http_conn_t *c, int fd, const kvb_tls_t *tls, int timeout_ms,
			  GError **error)
{
	c->fd = fd;
	c->tls = NULL;
	if (!tls)
		return true;
	kvb_err_t e;
	if (!(c->tls = kvb_tls_session_new(tls, fd, NULL, &e)) || !kvb_tls_handshake(c->tls, timeout_ms, &e)) {
		g_set_error(error, KVB_TOOL_HTTP_ERROR, 1, "%s", e.msg);
		kvb_tls_session_free(c->tls);
		c->tls = NULL;
		return false; /* fd stays the caller's */
	}
	return true;
}

bool kvb_http_conn_send_all(kvb_http_conn_t *c, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t n = c->tls ? kvb_tls_send(c->tls, p, len) : send(c->fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		p += n;
		len -= (size_t)n;
	}
	return true;
}

ssize_t kvb_http_conn_recv(kvb_http_conn_t *c, void *buf, size_t len)
{
	return c->tls ? kvb_tls_recv(c->tls, buf, len) : recv(c->fd, buf, len, 0);
}

void kvb_http_conn_close(kvb_http_conn_t *c)
{
	if (c->fd < 0)
		return;
	if (c->tls) {
		kvb_tls_bye(c->tls);
		kvb_tls_session_free(c->tls);
		c->tls = NULL;
	}
	close(c->fd);
	c->fd = -1;
}

bool kvb_http_request(const char *host, uint16_t port, const kvb_tls_t *tls, const char *method,
		      const char *target, const char *const *extra_fields, const char *content_type,
		      const char *body, size_t body_len, int timeout_ms, int *status,
		      GByteArray *resp_body, GError **error)
{
	kvb_http_conn_t conn;
	if (!kvb_http_conn_open(&conn, host, port, tls, timeout_ms, error))
		return false;
	GPtrArray *fields = g_ptr_array_new();
	for (const char *const *f = extra_fields; f && *f; f++)
		g_ptr_array_add(fields, (gpointer)*f);
	g_ptr_array_add(fields, (gpointer) "Connection: close");
	g_ptr_array_add(fields, NULL);
	char hostfield[300];
	g_snprintf(hostfield, sizeof(hostfield), "%s:%u", host, port);
	GString *req = g_string_new(NULL);
	kvb_http_write_request(req, method, target, hostfield, (const char *const *)fields->pdata,
			       content_type, body, body_len);
	g_ptr_array_free(fields, TRUE);
	bool ok = false;
	if (!kvb_http_conn_send_all(&conn, req->str, req->len)) {
		g_set_error(error, KVB_TOOL_HTTP_ERROR, 1, "%s:%u: send: %s", host, port, g_strerror(errno));
		goto out;
	}
	GByteArray *in = g_byte_array_new();
	for (;;) {
		guint old = in->len;
		g_byte_array_set_size(in, old + 65536);
		ssize_t n = kvb_http_conn_recv(&conn, in->data + old, 65536);
		if (n < 0 && errno == EINTR) {
			g_byte_array_set_size(in, old);
			continue;
		}
		if (n < 0) {
			g_byte_array_set_size(in, old);
			g_set_error(error, KVB_TOOL_HTTP_ERROR, 1, "%s:%u: %s", host, port,
				    errno == EAGAIN ? "no response within the timeout" : g_strerror(errno));
			g_byte_array_unref(in);
			goto out;
		}
		g_byte_array_set_size(in, old + (guint)n);
		if (n == 0 || in->len > KVB_HTTP_BODY_MAX + KVB_HTTP_HEAD_MAX)
			break;
	}
	kvb_http_msg_t msg;
	kvb_err_t err;
	int rc = kvb_http_parse_response((const char *)in->data, in->len, &msg, &err);
	if (rc != KVB_OK) {
		g_set_error(error, KVB_TOOL_HTTP_ERROR, 1, "%s:%u: bad response: %s", host, port,
			    rc == KVB_INPROGRESS ? "truncated head" : err.msg);
		g_byte_array_unref(in);
		goto out;
	}
	*status = msg.status;
	const char *b = (const char *)in->data + msg.head_len;
	size_t blen = in->len - msg.head_len;
	if (msg.chunked) {
		kvb_http_chunked_t dec;
		kvb_http_chunked_init(&dec);
		size_t used;
		if (kvb_http_chunked_feed(&dec, b, blen, &used, resp_body, &err) != KVB_OK) {
			g_set_error(error, KVB_TOOL_HTTP_ERROR, 1, "%s:%u: bad chunked body: %s",
				    host, port, err.msg);
			kvb_http_msg_clear(&msg);
			g_byte_array_unref(in);
			goto out;
		}
	} else {
		if (msg.has_content_length && msg.content_length < blen)
			blen = (size_t)msg.content_length;
		if (msg.has_content_length && msg.content_length > blen) {
			g_set_error(error, KVB_TOOL_HTTP_ERROR, 1,
				    "%s:%u: response body truncated (%zu of %" G_GUINT64_FORMAT " bytes)", host,
				    port, blen, msg.content_length);
			kvb_http_msg_clear(&msg);
			g_byte_array_unref(in);
			goto out;
		}
		g_byte_array_append(resp_body, (const guint8 *)b, (guint)blen);
	}
	kvb_http_msg_clear(&msg);
	g_byte_array_unref(in);
	ok = true;
out:
	g_string_free(req, TRUE);
	kvb_http_conn_close(&conn);
	return ok;
}

void kvb_httpd_set_acl(kvb_httpd_t *d, const kvb_acl_t *acl)
{
	d->acl = *acl;
	d->has_acl = true;
}

uint64_t kvb_httpd_refused(const kvb_httpd_t *d)
{
	return d->refused;
}

void kvb_httpd_set_tls(kvb_httpd_t *d, const kvb_tls_t *tls, const char *who)
{
	d->tls = tls;
	g_free(d->tls_who);
	d->tls_who = g_strdup(who);
}

uint64_t kvb_httpd_tls_failed(const kvb_httpd_t *d)
{
	return d->tls_failed;
}

bool kvb_http_api_key(const char *given, const char *env, char **key, char *why, size_t why_len)
{
	const char *k = given && *given ? given : env ? g_getenv(env) : NULL;
	*key = NULL;
	if (!k || !*k)
		return true;
	for (const char *p = k; *p; p++)
		if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
			g_snprintf(why, why_len, "the API key holds a space or a control character");
			return false;
		}
	if (strlen(k) < 16) {
		g_snprintf(why, why_len, "the API key is shorter than 16 characters");
		return false;
	}
	*key = g_strdup(k);
	return true;
}

bool kvb_http_bearer_ok(const kvb_http_msg_t *req, const char *key)
{
	const char *h = kvb_http_field_get(req, "Authorization");
	if (!key)
		return true;
	if (!h || g_ascii_strncasecmp(h, "Bearer ", 7) != 0)
		return false;
	unsigned char want[crypto_generichash_BYTES], got[crypto_generichash_BYTES];
	crypto_generichash(want, sizeof(want), (const unsigned char *)key, strlen(key), NULL, 0);
	crypto_generichash(got, sizeof(got), (const unsigned char *)h + 7, strlen(h + 7), NULL, 0);
	return sodium_memcmp(want, got, sizeof(want)) == 0;
}
