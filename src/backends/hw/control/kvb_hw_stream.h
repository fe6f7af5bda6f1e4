/*
 * kvbridge's own control stream between two kvbridge endpoints: a
 * persistent connection on the peer's handshake port, opened by a
 * KVB_HELLO frame that carries the connecting side's segment descriptor
 * and answered with the listener's; then KVB_FRAME frames (one kvbridge
 * wire message each) both ways, and SYNC/SYNCED for GPU memory behind a
 * mirror.  Peer addresses "host:port" and "kvb://host:port".
 *
 * With TLS (params.tls_ca on the connecting side, tls_cert/tls_key on the
 * listening one) the connector sends KVB_STARTTLS instead of the hello,
 * the TLS handshake follows on the same connection, and the hello and all
 * after it travel inside.
 */
#ifndef KVB_HW_STREAM_H
#define KVB_HW_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "control/kvb_hw_peer.h"

/* conn_connect to a kvbridge peer: makes the peer of conn and opens a
 * stream to host:port.  KVB_INPROGRESS (CONN_UP or CONN_DOWN follows), or
 * an error (nothing made; reason in the instance's last error). */
int hw_stream_connect(hw_t *hw, kvb_conn_t *conn, const char *addr, const char *host,
		      uint16_t port);
/* The handshake listener read a KVB_HELLO (payload) on fd: make the
 * incoming peer and announce it.  rest: bytes that followed the hello.
 * Takes fd (closed on refusal); false when refused (reason logged). */
bool hw_stream_accept_hello(hw_t *hw, int fd, const uint8_t *payload, size_t len,
			    const uint8_t *rest, size_t rest_len);
/* The handshake listener read a KVB_STARTTLS on fd (and has tls_server):
 * make the incoming peer, which answers the TLS handshake and waits for
 * the hello inside.  rest: bytes that followed (the ClientHello, maybe).
 * Takes fd; false when refused at once (reason logged). */
bool hw_stream_accept_tls(hw_t *hw, int fd, const uint8_t *rest, size_t rest_len);

#endif /* KVB_HW_STREAM_H */
