/*
 * Sockets on the event service: non-blocking TCP connect and listen, the
 * buffered send/receive helpers every stream uses, and the one-shot
 * handshake client (connect, send one Mooncake frame, read the reply,
 * close) that transports and control protocols both use to talk to a peer's
 * handshake port.  Below the transports; calls nothing above.
 */
#ifndef KVB_HW_NET_H
#define KVB_HW_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <glib.h>

#include "events/kvb_hw_events.h"
#include "kvb_mc_wire.h"

/* TCP_NODELAY, O_NONBLOCK, FD_CLOEXEC. */
void hw_sock_tune(int fd);

/* Non-blocking TCP connect to host:port (IPv4/IPv6 by getaddrinfo), bound to
 * src (NULL or "" = any).  Returns the fd (connect may be in progress) or -1
 * with the reason in err. */
/* Dial host:port (from src when given); only addresses acl allows (NULL =
 * any), else -1 with err naming the refusal. */
int hw_tcp_connect(const char *host, uint16_t port, const char *src, const kvb_acl_t *acl,
		   kvb_err_t *err);
/* A connection accept() gave us from sa: true when acl lets it in; else it is
 * closed, counted (peers_refused) and warned about (what: our port's name). */
bool hw_accept_allowed(hw_t *hw, int fd, const struct sockaddr *sa, const char *what);
/* After POLLOUT on a connecting socket: 0, or the connect's errno. */
int hw_tcp_connect_result(int fd);
/* Listening socket on bind_host:port (port 0 = try [min, max] at random,
 * as Mooncake's P2P mode does; min = max = 0 with port 0: any free port).
 * Returns the fd and the bound port, or -1. */
int hw_tcp_listen(const char *bind_host, uint16_t port, uint16_t min, uint16_t max,
		  uint16_t *bound, kvb_err_t *err);

/* Write tx from *off on: 1 when all is written (tx emptied), 0 when the
 * socket is full, -errno on failure. */
int hw_flush_tx(int fd, GByteArray *tx, size_t *off);
/* Read what is available into rx (at most cap bytes held).  Returns the
 * bytes read (> 0), 0 on EAGAIN, -1 on EOF, -errno on failure. */
ssize_t hw_fill_rx(int fd, GByteArray *rx, size_t cap);
/* The same through a TLS session (kvb_tls.h) when tls is not NULL; its
 * handshake must be over.  hw_fill_rx_tls reads until the session has
 * nothing left either (kvb_tls_pending is 0 unless rx reached cap). */
struct kvb_tls_session;
int hw_flush_tx_tls(int fd, struct kvb_tls_session *tls, GByteArray *tx, size_t *off);
ssize_t hw_fill_rx_tls(int fd, struct kvb_tls_session *tls, GByteArray *rx, size_t cap);
/* The numeric address of fd's peer ("" when unknown). */
void hw_sock_peer_host(int fd, char *host, size_t len);

/* ---- the handshake client: one request per connection -------------------- */

typedef struct hw_call hw_call_t;
/* cb runs once, from the loop, with KVB_OK and the reply payload, or an
 * error and a reason. */
typedef void (*hw_call_fn)(void *obj, int status, const char *why, kvb_mc_msg_type_t type,
			   const uint8_t *payload, size_t len);
hw_call_t *hw_call_start(hw_t *hw, const char *host, uint16_t port, kvb_mc_msg_type_t type,
			 const void *payload, size_t len, hw_call_fn cb, void *obj);
void hw_call_cancel(hw_call_t *c); /* cb will not run; NULL is a no-op */
/* Instance close: free the calls nobody owns any more. */
void hw_calls_free_all(hw_t *hw);

#endif /* KVB_HW_NET_H */
