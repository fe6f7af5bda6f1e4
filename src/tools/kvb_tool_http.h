/*
 * HTTP plumbing shared by kvbridge-serve and kvbridge-proxy, on top of the
 * strict parser of src/backends/hw/kvb_http.h:
 *  - a small non-blocking server on a GMainContext (one request per
 *    connection, answered whenever the handler is ready, then closed);
 *  - a blocking client for worker threads (one request per connection).
 */
#ifndef KVB_TOOL_HTTP_H
#define KVB_TOOL_HTTP_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>

#include "kvb_acl.h"
#include "kvb_http.h"
#include "kvb_tls.h"

typedef struct kvb_httpd kvb_httpd_t;

/* A request arrived whole.  Answer now or later with kvb_httpd_respond
 * (conn_id stays valid until answered or until the client goes away). */
typedef void (*kvb_httpd_handler)(kvb_httpd_t *d, uint64_t conn_id, const kvb_http_msg_t *req,
				  const char *body, size_t body_len, void *user);

/* Listen on bind_host:port (port 0 = any free port). */
kvb_httpd_t *kvb_httpd_new(GMainContext *ctx, const char *bind_host, uint16_t port,
			   kvb_httpd_handler handler, void *user, GError **error);
uint16_t kvb_httpd_port(const kvb_httpd_t *d);
/* An API key for HTTP endpoints: "--api-key" given, else the environment
 * variable env (KVB_API_KEY), else NULL (no key: endpoints open to whoever
 * the allow-list admits).  A key with control characters or spaces is
 * refused (false, why set). */
bool kvb_http_api_key(const char *given, const char *env, char **key, char *why, size_t why_len);
/* Whether req carries "Authorization: Bearer <key>"; compared in constant
 * time (libsodium) over fixed-size hashes, so neither the key's bytes nor
 * its length leak through timing. */
bool kvb_http_bearer_ok(const kvb_http_msg_t *req, const char *key);

/* Only peers acl allows may connect (others are closed at accept, counted). */
void kvb_httpd_set_acl(kvb_httpd_t *d, const kvb_acl_t *acl);
uint64_t kvb_httpd_refused(const kvb_httpd_t *d);
/* Speak HTTPS only, with server credentials tls (borrowed: it outlives d).
 * A connection whose handshake fails (a plaintext client, a client that
 * does not trust the certificate) is closed and counted; a warning on
 * stderr, prefixed with who, at most every 10 s. */
void kvb_httpd_set_tls(kvb_httpd_t *d, const kvb_tls_t *tls, const char *who);
uint64_t kvb_httpd_tls_failed(const kvb_httpd_t *d);
void kvb_httpd_free(kvb_httpd_t *d); /* NULL is a no-op */

/* Send the response and close.  false when the client is gone. */
bool kvb_httpd_respond(kvb_httpd_t *d, uint64_t conn_id, int status, const char *content_type,
		       const char *body, size_t body_len);
/* JSON convenience: {"error": {"message": msg, "type": type}} */
bool kvb_httpd_respond_error(kvb_httpd_t *d, uint64_t conn_id, int status, const char *type,
			     const char *msg);

/* Blocking client: connect to host:port (over TLS when tls, a client's
 * credentials, is given), send one request (Connection: close), read the
 * whole response.  *status and body (decoded from chunked if needed) on
 * success; false with error set on connect, TLS, I/O, timeout or parse
 * failures. */
bool kvb_http_request(const char *host, uint16_t port, const kvb_tls_t *tls, const char *method,
		      const char *target,
		      const char *const *extra_fields, const char *content_type, const char *body,
		      size_t body_len, int timeout_ms, int *status, GByteArray *resp_body,
		      GError **error);

/* Blocking connect with a timeout; fd or -1 with error set. */
int kvb_http_connect(const char *host, uint16_t port, int timeout_ms, GError **error);

/* A blocking connection, plaintext or TLS, for threads. */
typedef struct kvb_http_conn {
	int fd;                 /* -1 when closed */
	kvb_tls_session_t *tls; /* NULL: plaintext */
} kvb_http_conn_t;

/* kvb_http_connect, then the TLS handshake when tls is given (the peer's
 * certificate must name host); false with error set, nothing left open. */
bool kvb_http_conn_open(kvb_http_conn_t *c, const char *host, uint16_t port, const kvb_tls_t *tls,
			int timeout_ms, GError **error);
/* An accepted fd: as is, or after the server side of the handshake. */
bool kvb_http_conn_accept(kvb_http_conn_t *c, int fd, const kvb_tls_t *tls, int timeout_ms,
			  GError **error);
bool kvb_http_conn_send_all(kvb_http_conn_t *c, const void *buf, size_t len);
ssize_t kvb_http_conn_recv(kvb_http_conn_t *c, void *buf, size_t len); /* as recv(2) */
/* close_notify when TLS, then close(2); a closed c is a no-op. */
void kvb_http_conn_close(kvb_http_conn_t *c);

#endif /* KVB_TOOL_HTTP_H */
