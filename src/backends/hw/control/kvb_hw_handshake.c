/*
 * Mooncake's handshake port (kvb_hw_handshake.h).
 *
 * Each accepted connection is a session that reads one frame and answers
 * it the way Mooncake's listener does (reply, half-close, wait for the
 * client's close), except a KVB_HELLO, whose connection becomes a kvbridge
 * stream.  A session that says nothing within Mooncake's receive timeout is
 * dropped.
 */
#include "config.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>

#include "control/kvb_hw_handshake.h"
#include "control/kvb_hw_peer.h"
#include "control/kvb_hw_stream.h"
#include "events/kvb_hw_net.h"
#include "transport/kvb_hw_rdma.h"
#include "transport/kvb_hw_transport.h"

#define RPC_SESSION_TIMEOUT_NS (5 * G_GUINT64_CONSTANT(1000000000)) /* Mooncake's SO_RCVTIMEO */

/* An accepted handshake-port connection before it is classified. */
typedef struct rpc_session {
	hw_t *hw;
	int fd;
	hw_watch_t *w;
	hw_deadline_t *deadline;
	GByteArray *rx;
	GByteArray *tx;
	size_t tx_off;
	bool replied;         /* reply queued: write it, shut down, wait for the close */
} rpc_session_t;

struct hw_handshake {
	int fd;
	hw_watch_t *w;
	GQueue sessions;            /* rpc_session_t* */
};

static void rpc_session_free(rpc_session_t *s)
{
	g_queue_remove(&s->hw->handshake->sessions, s);
	hw_watch_free(s->w);
	hw_deadline_free(s->deadline);
	if (s->fd >= 0)
		close(s->fd);
	g_byte_array_unref(s->rx);
	g_byte_array_unref(s->tx);
	g_free(s);
}

static void rpc_session_timeout(void *obj)
{
	rpc_session_free(obj);
}

static void rpc_reply(rpc_session_t *s, kvb_mc_msg_type_t type, const char *json)
{
	kvb_mc_frame_encode(s->tx, type, json, strlen(json));
	s->replied = true;
	hw_watch_set(s->w, G_IO_OUT | G_IO_IN);
}

/* Answer one frame.  Returns false when the session was freed. */
static bool rpc_handle(rpc_session_t *s, kvb_mc_msg_type_t type, const uint8_t *payload,
		       size_t len, size_t consumed)
{
	hw_t *hw = s->hw;
	kvb_err_t err;
	switch (type) {
	case KVB_MC_METADATA: {
		char *desc = hw_segment_json(hw);
		rpc_reply(s, type, desc);
		g_free(desc);
		break;
	}
	case KVB_MC_NOTIFY: {
		kvb_mc_notify_t n;
		if (kvb_mc_notify_from_json((const char *)payload, len, &n, &err) != KVB_OK) {
			hw->stats.handshake_errors++;
			hw_set_error(hw, "notify refused: %s", err.msg);
			rpc_session_free(s);
			return false;
		}
		hw_log(hw, "notify from %s: %s", n.name, n.notify_msg);
		rpc_reply(s, type, kvb_mc_notify_reply_json());
		break;
	}
	case KVB_MC_PROBE:
		rpc_reply(s, type, kvb_mc_probe_reply_json());
		break;
	case KVB_MC_CONNECTION: {
		/* RDMA queue pairs (a refusal with reply_msg when we have none, the
		 * way Mooncake refuses, so the peer reports a reason) */
		kvb_mc_handshake_t hs;
		if (kvb_mc_handshake_from_json((const char *)payload, len, &hs, &err) != KVB_OK) {
			hw->stats.handshake_errors++;
			hw_set_error(hw, "connection handshake refused: %s", err.msg);
			rpc_session_free(s);
			return false;
		}
		char *reply = hw_rdma_handshake(hw, &hs);
		rpc_reply(s, type, reply);
		g_free(reply);
		break;
	}
	case KVB_MC_KVB_HELLO: {
		if (hw->tls_server) {
			char host[KVB_MC_NAME_MAX];
			hw_sock_peer_host(s->fd, host, sizeof(host));
			hw->stats.tls_failures++;
			hw_warn_from(hw, host, "kvbridge stream from %s refused: this worker's streams need TLS "
				     "(it has tls_cert) and the peer did not start it (give it tls_ca: "
				     "kvbridge-serve --tls-ca)", host);
			rpc_session_free(s);
			return false;
		}
		/* the connection becomes a kvbridge stream: the socket moves on */
		int fd = s->fd;
		s->fd = -1;
		hw_stream_accept_hello(hw, fd, payload, len, s->rx->data + consumed,
				       s->rx->len - consumed);
		rpc_session_free(s);
		return false;
	}
	case KVB_MC_KVB_STARTTLS: {
		if (!hw->tls_server || len != 1 || payload[0] != 1) {
			char host[KVB_MC_NAME_MAX];
			hw_sock_peer_host(s->fd, host, sizeof(host));
			hw->stats.tls_failures++;
			hw_warn_from(hw, host, "kvbridge stream from %s refused: %s", host,
				     hw->tls_server ? "unknown STARTTLS version"
				     : "it asks for TLS and this worker has no tls_cert/tls_key "
				       "(kvbridge-serve --tls-cert/--tls-key)");
			rpc_session_free(s);
			return false;
		}
		/* a kvbridge stream in TLS: the socket, and what followed the frame, move on */
		int fd = s->fd;
		s->fd = -1;
		hw_stream_accept_tls(hw, fd, s->rx->data + consumed, s->rx->len - consumed);
		rpc_session_free(s);
		return false;
	}
	default:
		hw->stats.handshake_errors++;
		hw_set_error(hw, "handshake frame of type %d refused", (int)type);
		rpc_session_free(s);
		return false;
	}
	hw->stats.handshakes_served++;
	return true;
}

static bool rpc_session_io(void *obj, GIOCondition cond)
{
	rpc_session_t *s = obj;
	hw_t *hw = s->hw;
	if (s->replied) {
		if (s->tx->len) {
			int r = hw_flush_tx(s->fd, s->tx, &s->tx_off);
			if (r < 0) {
				rpc_session_free(s);
				return false;
			}
			if (r == 0)
				return true;
			/* all sent: half-close, then wait for the client's close */
			shutdown(s->fd, SHUT_WR);
			hw_watch_set(s->w, G_IO_IN);
		}
		if (cond & (G_IO_IN | G_IO_HUP | G_IO_ERR)) {
			char sink[256];
			ssize_t n = recv(s->fd, sink, sizeof(sink), 0);
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
				rpc_session_free(s);
				return false;
			}
		}
		return true;
	}
	ssize_t n = hw_fill_rx(s->fd, s->rx, KVB_MC_FRAME_HEADER_LEN + hw->p.handshake_max);
	if (s->rx->len >= KVB_MC_FRAME_HEADER_LEN) {
		uint64_t body;
		kvb_err_t err;
		if (kvb_mc_frame_header(s->rx->data, hw->p.handshake_max, &body, &err) != KVB_OK) {
			hw->stats.handshake_errors++;
			hw_set_error(hw, "handshake refused: %s", err.msg);
			rpc_session_free(s);
			return false;
		}
		if (s->rx->len >= KVB_MC_FRAME_HEADER_LEN + body) {
			kvb_mc_msg_type_t type;
			const uint8_t *payload;
			size_t plen;
			if (kvb_mc_frame_body(s->rx->data + KVB_MC_FRAME_HEADER_LEN, body, &type, &payload,
					      &plen, &err) != KVB_OK) {
				hw->stats.handshake_errors++;
				hw_set_error(hw, "handshake refused: %s", err.msg);
				rpc_session_free(s);
				return false;
			}
			/* may free the session (errors, and a hello that becomes a stream) */
			return rpc_handle(s, type, payload, plen, KVB_MC_FRAME_HEADER_LEN + body);
		}
	}
	if (n < 0) {
		rpc_session_free(s);
		return false;
	}
	return true;
}

static bool rpc_accept(void *obj, GIOCondition cond)
{
	hw_t *hw = obj;
	(void)cond;
	for (int i = 0; i < 64; i++) {
		struct sockaddr_storage sa;
		socklen_t sl = sizeof(sa);
		int fd = accept(hw->handshake->fd, (struct sockaddr *)&sa, &sl);
		if (fd < 0)
			break;
		if (!hw_accept_allowed(hw, fd, (struct sockaddr *)&sa, "handshake"))
			continue;
		hw_sock_tune(fd);
		rpc_session_t *s = g_new0(rpc_session_t, 1);
		s->hw = hw;
		s->fd = fd;
		s->rx = g_byte_array_new();
		s->tx = g_byte_array_new();
		s->w = hw_watch_new(hw, fd, G_IO_IN, rpc_session_io, s);
		s->deadline = hw_deadline_new(hw, rpc_session_timeout, s);
		hw_deadline_arm(s->deadline, RPC_SESSION_TIMEOUT_NS);
		g_queue_push_tail(&hw->handshake->sessions, s);
	}
	return true;
}

int hw_handshake_start(hw_t *hw, kvb_err_t *err)
{
	struct hw_handshake *h = g_new0(struct hw_handshake, 1);
	g_queue_init(&h->sessions);
	hw->handshake = h;
	h->fd = hw_tcp_listen(hw->bind_host, hw->p.rpc_port, hw->p.rpc_port_min, hw->p.rpc_port_max,
			      &hw->rpc_port, err);
	if (h->fd < 0)
		return err->code;
	g_snprintf(hw->segment, sizeof(hw->segment), strchr(hw->host, ':') ? "[%s]:%u" : "%s:%u",
		   hw->host, hw->rpc_port);
	h->w = hw_watch_new(hw, h->fd, G_IO_IN, rpc_accept, hw);
	return KVB_OK;
}

void hw_handshake_stop(hw_t *hw)
{
	struct hw_handshake *h = hw->handshake;
	if (!h)
		return;
	while (h->sessions.head)
		rpc_session_free(h->sessions.head->data);
	hw_watch_free(h->w);
	if (h->fd >= 0)
		close(h->fd);
	g_free(h);
	hw->handshake = NULL;
}

/* ---- Mooncake segment peers (data only) ----------------------------------- */

static const hw_peer_ops_t mooncake_ops;

static void mooncake_descriptor(void *obj, int status, const char *why, kvb_mc_msg_type_t type,
				const uint8_t *payload, size_t len)
{
	hw_peer_t *p = obj;
	p->call = NULL;
	kvb_mc_segment_t seg;
	kvb_err_t err;
	if (status != KVB_OK) {
		hw_peer_down(p, status, why);
		return;
	}
	if (type != KVB_MC_METADATA ||
	    kvb_mc_segment_from_json((const char *)payload, len, &seg, &err) != KVB_OK) {
		hw_peer_down(p, KVB_ERR_PROTOCOL,
			     type != KVB_MC_METADATA ? "metadata reply of the wrong type" : err.msg);
		return;
	}
	if (hw_link_set_segment(&p->link, &seg, p->host, &err) != KVB_OK) {
		hw_peer_down(p, err.code, err.msg);
		return;
	}
	hw_peer_up(p);
}

/* A Mooncake Transfer Engine: fetch its descriptor (type 1, P2P), then move
 * data through its TCP transport.  It speaks no kvbridge control messages. */
int hw_mooncake_connect(hw_t *hw, kvb_conn_t *conn, const char *addr, const char *host,
			uint16_t port)
{
	hw_peer_t *p = hw_peer_new(hw, HW_PEER_MOONCAKE, &mooncake_ops, addr);
	hw_peer_bind(p, conn);
	g_strlcpy(p->host, host, sizeof(p->host));
	p->port = port;
	char *desc = hw_segment_json(hw);
	p->call = hw_call_start(hw, host, port, KVB_MC_METADATA, desc, strlen(desc),
				mooncake_descriptor, p);
	g_free(desc);
	return KVB_INPROGRESS;
}

static int mooncake_msg_send(hw_peer_t *p, const void *buf, size_t len)
{
	(void)buf;
	(void)len;
	hw_set_error(p->hw, "msg_send: %s is a Mooncake segment (data only)", p->addr);
	return KVB_ERR_UNSUPPORTED;
}

static void mooncake_accepted(hw_peer_t *p)
{
	(void)p; /* never announced: Mooncake peers are only dialled */
}

static const hw_peer_ops_t mooncake_ops = {
	.protocol = "mooncake",
	.accepted = mooncake_accepted,
	.msg_send = mooncake_msg_send,
	.closed = hw_peer_free,
};
