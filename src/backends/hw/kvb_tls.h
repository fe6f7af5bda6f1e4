/*
 * Optional TLS for kvbridge's control plane, on GnuTLS: no crypto of our
 * own, only credentials, a session per connection and its I/O.  Used by the
 * tools' HTTP (kvbridge-serve's front, kvbridge-proxy's front and legs) and
 * by the backend's kvbridge control stream (control/kvb_hw_stream.c).
 *
 * TLS 1.2 and 1.3 only.  A client verifies the peer's certificate chain
 * against its CA file (or the system's trust store) and the certificate's
 * name against the host it dialed (a DNS name or an IP address in the
 * subjectAltName), during the handshake.
 *
 * Sessions work on blocking and non-blocking sockets alike: I/O returns
 * what recv(2)/send(2) would, with errno EAGAIN when the socket has to
 * become ready first; kvb_tls_wants_write says for which direction.  A
 * session keeps records it decrypted but was not asked for yet
 * (kvb_tls_pending): a poll loop must drain it before waiting for the fd.
 */
#ifndef KVB_TLS_H
#define KVB_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <kvbridge/error.h>

typedef struct kvb_tls kvb_tls_t;                 /* credentials, shared by threads */
typedef struct kvb_tls_session kvb_tls_session_t; /* one connection, one thread at a time */

/* How errors name the three files: the tools' options or the backend's params. */
typedef struct kvb_tls_names {
	const char *cert, *key, *ca;
} kvb_tls_names_t;
extern const kvb_tls_names_t kvb_tls_option_names; /* --tls-cert, --tls-key, --tls-ca */
extern const kvb_tls_names_t kvb_tls_param_names;  /* tls_cert, tls_key, tls_ca */

/* A server's certificate chain and private key (PEM).  Errors
 * (KVB_ERR_CONFIG) name the file: "--tls-cert FILE: file not found", a key
 * that does not match its certificate. */
kvb_tls_t *kvb_tls_server_new(const char *cert_file, const char *key_file,
			      const kvb_tls_names_t *names, kvb_err_t *err);
/* A client's trust: the CA certificates in ca_file (PEM), or the system's
 * trust store when ca_file is NULL. */
kvb_tls_t *kvb_tls_client_new(const char *ca_file, const kvb_tls_names_t *names, kvb_err_t *err);
void kvb_tls_free(kvb_tls_t *t); /* NULL is a no-op; no session may outlive it */

/* The tools' options: --tls-cert and --tls-key (else KVB_TLS_CERT and
 * KVB_TLS_KEY) make *server, --tls-ca (else KVB_TLS_CA) makes *client;
 * either stays NULL when not asked for.  false with err set (naming the
 * option) on a missing half or a bad file. */
bool kvb_tls_from_options(const char *cert, const char *key, const char *ca, kvb_tls_t **server,
			  kvb_tls_t **client, kvb_err_t *err);

/* A session over fd (not owned: closing it stays the caller's).  For a
 * client t, peer_host is what the certificate must name. */
kvb_tls_session_t *kvb_tls_session_new(const kvb_tls_t *t, int fd, const char *peer_host,
				       kvb_err_t *err);
/* Bytes already read from fd that belong to the TLS stream (a protocol
 * that switches to TLS after a plaintext frame may have read past it): the
 * session reads them before the socket.  Copied. */
void kvb_tls_session_preread(kvb_tls_session_t *s, const void *buf, size_t len);
void kvb_tls_session_free(kvb_tls_session_t *s); /* NULL is a no-op */

/* One step of the handshake: 1 done, 0 call again once the socket is ready
 * (kvb_tls_wants_write), -1 failed (err, KVB_ERR_PEER: what went wrong,
 * e.g. the peer's certificate is not trusted or the peer did not speak
 * TLS). */
int kvb_tls_handshake_step(kvb_tls_session_t *s, kvb_err_t *err);
/* The whole handshake, waiting with poll(2) for at most timeout_ms. */
bool kvb_tls_handshake(kvb_tls_session_t *s, int timeout_ms, kvb_err_t *err);
bool kvb_tls_wants_write(const kvb_tls_session_t *s);

/* As recv(2)/send(2): bytes moved, 0 at the end of the stream (a peer that
 * closes without close_notify ends it too: the protocol's own framing
 * tells a truncated message), -1 with errno EAGAIN, EINTR, or ECONNRESET
 * for any TLS failure.  After EAGAIN from kvb_tls_send, call it again with
 * the same bytes (at least as many): the record is already sealed. */
ssize_t kvb_tls_recv(kvb_tls_session_t *s, void *buf, size_t len);
ssize_t kvb_tls_send(kvb_tls_session_t *s, const void *buf, size_t len);
/* Decrypted bytes waiting in the session (readable without the socket). */
size_t kvb_tls_pending(const kvb_tls_session_t *s);
/* Tell the peer the stream ends (close_notify); never waits. */
void kvb_tls_bye(kvb_tls_session_t *s);
/* The negotiated version and cipher, e.g. "TLS1.3/AES-256-GCM". */
const char *kvb_tls_describe(const kvb_tls_session_t *s, char *buf, size_t len);

#endif /* KVB_TLS_H */
