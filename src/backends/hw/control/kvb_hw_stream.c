/*
 * kvbridge's control stream (kvb_hw_stream.h).
 *
 * The connecting side sends a KVB_HELLO frame holding its segment
 * descriptor on the peer's handshake port; the listener answers with its
 * own descriptor and keeps the connection: from then on both sides send
 * KVB_FRAME frames, each one kvbridge wire message.  The descriptors tell
 * each side where the other's TCP transport (or RDMA devices) are.  SYNC
 * and SYNCED frames travel the same ordered stream for the staging layer
 * (through the link's sync_send hook).
 *
 * With a shared secret (params.secret_file) a stream carries nothing until
 * both sides proved they hold it, in AUTH frames (97 bytes: step, the
 * listener's nonce, the connector's nonce, a MAC) after the connector's
 * hello:
 *   1. listener -> connector: nonce_s (fresh, random)
 *   2. connector -> listener: nonce_c, HMAC(K, "kvb-c" | nonce_s | nonce_c)
 *   3. listener -> connector: HMAC(K, "kvb-s" | nonce_s | nonce_c)
 * or, when step 2's MAC is wrong, a step AUTH_REFUSED (so that the connector
 * can say why) before the listener closes.
 * K is the hash of the secret; HMAC-SHA-256 and the comparisons are
 * libsodium's.  Only then does the listener announce the stream to the core
 * (and answer the hello).  A connector with a secret refuses a listener that
 * answers without this; a listener with one refuses a connector that cannot.
 *
 * With TLS (kvb_tls.h, GnuTLS) a connector that has params.tls_ca sends a
 * STARTTLS frame where the hello would be and starts the TLS handshake at
 * once, checking the listener's certificate against its CAs and the host it
 * dialed; the listener (which needs tls_cert/tls_key, and then refuses
 * plaintext hellos) reads the ClientHello, possibly already behind the
 * STARTTLS frame in its buffer, and answers.  The hello, AUTH and every
 * frame after travel inside TLS: the shared secret, when there is one,
 * still authenticates the two workers to each other.
 */
#include "config.h"

#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <glib.h>
#include <sodium.h>
#include <kvbridge/kvbridge.h>

#include "control/kvb_hw_stream.h"
#include "events/kvb_hw_net.h"
#include "transport/kvb_hw_mem.h"
#include "transport/kvb_hw_rdma_window.h"
#include "transport/kvb_hw_staging.h"
#include "transport/kvb_hw_transport.h"
#include "kvb_tls.h"
#include "kvb_wire.h"

#define STREAM_FRAME_MAX ((uint64_t)KVB_MSG_MAX + 1)

static const hw_peer_ops_t stream_ops;

#define AUTH_LEN (1 + 32 + 32 + crypto_auth_hmacsha256_BYTES)
#define AUTH_REFUSED 0xEE

static void stream_queue(hw_peer_t *p, kvb_mc_msg_type_t type, const void *buf, size_t len);

static void auth_mac(hw_t *hw, const char *who, const hw_peer_t *p, uint8_t *mac)
{
	uint8_t in[5 + 64];
	memcpy(in, who, 5);
	memcpy(in + 5, p->nonce_s, 32);
	memcpy(in + 37, p->nonce_c, 32);
	crypto_auth_hmacsha256(mac, in, sizeof(in), hw->auth_key);
}

static void auth_send(hw_peer_t *p, uint8_t step, const uint8_t *mac)
{
	uint8_t f[AUTH_LEN] = {step};
	memcpy(f + 1, p->nonce_s, 32);
	memcpy(f + 33, p->nonce_c, 32);
	if (mac)
		memcpy(f + 65, mac, crypto_auth_hmacsha256_BYTES);
	stream_queue(p, KVB_MC_KVB_AUTH, f, sizeof(f));
}

/* A refused authentication: counted, said, the stream closed (p freed or
 * handed down to the core).  Always false. */
static bool auth_fail(hw_peer_t *p, const char *why)
{
	p->hw->stats.auth_failures++;
	hw_peer_down(p, KVB_ERR_PEER, why);
	return false;
}

/* An AUTH frame on p; false when the stream went down. */
static bool auth_frame(hw_peer_t *p, const uint8_t *f, size_t len)
{
	hw_t *hw = p->hw;
	bool listener = p->hello_done; /* the connector's hello_done waits for the answer */
	if (!hw->auth)
		return auth_fail(p, "the peer asks for a shared secret this worker has none of "
				    "(--secret-file, KVB_SECRET_FILE)");
	if (len != AUTH_LEN)
		return auth_fail(p, "authentication frame of the wrong length");
	uint8_t mac[crypto_auth_hmacsha256_BYTES];
	if (!listener && f[0] == 1 && p->auth_step == 0) {
		memcpy(p->nonce_s, f + 1, 32);
		randombytes_buf(p->nonce_c, sizeof(p->nonce_c));
		auth_mac(hw, "kvb-c", p, mac);
		auth_send(p, 2, mac);
		p->auth_step = 2;
		return true;
	}
	if (listener && f[0] == 2 && p->auth_step == 1) {
		memcpy(p->nonce_c, f + 33, 32);
		auth_mac(hw, "kvb-c", p, mac);
		if (sodium_memcmp(mac, f + 65, sizeof(mac)) != 0) {
			auth_send(p, AUTH_REFUSED, NULL);
			hw_flush_tx_tls(p->fd, p->tls, p->tx, &p->tx_off); /* best effort: it may learn why */
			return auth_fail(p, "the connecting peer does not hold this worker's shared secret");
		}
		auth_mac(hw, "kvb-s", p, mac);
		auth_send(p, 3, mac);
		p->auth_step = 3;
		p->state = HW_PEER_UP;
		hw_deadline_disarm(p->connect_deadline);
		hw->stats.streams_opened++;
		hw_peer_announce(p); /* the core accepts; then the hello is answered */
		return true;
	}
	if (!listener && f[0] == 3 && p->auth_step == 2) {
		auth_mac(hw, "kvb-s", p, mac);
		if (memcmp(f + 1, p->nonce_s, 32) || memcmp(f + 33, p->nonce_c, 32) ||
		    sodium_memcmp(mac, f + 65, sizeof(mac)) != 0)
			return auth_fail(p, "the listening peer does not hold this worker's shared secret");
		p->auth_step = 3;
		return true;
	}
	if (!listener && f[0] == AUTH_REFUSED)
		return auth_fail(p, "the listening peer refused this worker's proof: the two do not hold "
				    "the same shared secret");
	return auth_fail(p, "authentication step out of order");
}

static void stream_queue(hw_peer_t *p, kvb_mc_msg_type_t type, const void *buf, size_t len)
{
	kvb_mc_frame_encode(p->tx, type, buf, len);
	if (p->w)
		hw_watch_set(p->w, G_IO_IN | G_IO_OUT);
}

/* The link's sync_send: SYNC/SYNCED frames for the staging layer. */
static bool stream_sync_send(hw_link_t *l, kvb_mc_msg_type_t type, const void *buf, size_t len)
{
	hw_peer_t *p = (hw_peer_t *)((char *)l - offsetof(hw_peer_t, link));
	if (p->state != HW_PEER_UP)
		return false;
	stream_queue(p, type, buf, len);
	return true;
}

static bool stream_listener_start(hw_peer_t *p);

/* A TLS listener's first frame inside TLS: the connector's hello.  False
 * when the peer went down. */
static bool stream_tls_hello(hw_peer_t *p, kvb_mc_msg_type_t type, const uint8_t *payload, size_t len)
{
	hw_t *hw = p->hw;
	kvb_mc_segment_t seg;
	kvb_err_t err;
	if (type != KVB_MC_KVB_HELLO) {
		hw->stats.handshake_errors++;
		hw_peer_down(p, KVB_ERR_PROTOCOL, "the first frame inside TLS is not a kvbridge hello");
		return false;
	}
	if (kvb_mc_segment_from_json((const char *)payload, len, &seg, &err) != KVB_OK) {
		hw->stats.handshake_errors++;
		hw_peer_down(p, KVB_ERR_PROTOCOL, err.msg);
		return false;
	}
	g_strlcpy(p->addr, seg.name, sizeof(p->addr));
	g_strlcpy(p->link.name, seg.name, sizeof(p->link.name));
	if (hw_link_set_segment(&p->link, &seg, p->host, &err) != KVB_OK) {
		hw->stats.handshake_errors++;
		hw_peer_down(p, err.code, err.msg);
		return false;
	}
	p->hello_awaited = false;
	p->hello_done = true;
	return stream_listener_start(p);
}

/* Parse whole frames out of p->rx.  Returns false when the peer went down. */
static bool stream_frames(hw_peer_t *p)
{
	hw_t *hw = p->hw;
	size_t off = 0;
	bool ok = true;
	while (p->rx->len - off >= KVB_MC_FRAME_HEADER_LEN) {
		uint64_t body;
		kvb_err_t err;
		uint64_t cap = p->hello_done ? STREAM_FRAME_MAX : hw->p.handshake_max;
		if (kvb_mc_frame_header(p->rx->data + off, cap, &body, &err) != KVB_OK) {
			hw_peer_down(p, KVB_ERR_PROTOCOL, err.msg);
			return false;
		}
		if (p->rx->len - off < KVB_MC_FRAME_HEADER_LEN + body)
			break;
		kvb_mc_msg_type_t type;
		const uint8_t *payload;
		size_t plen;
		if (kvb_mc_frame_body(p->rx->data + off + KVB_MC_FRAME_HEADER_LEN, body, &type, &payload,
				      &plen, &err) != KVB_OK) {
			hw_peer_down(p, KVB_ERR_PROTOCOL, err.msg);
			return false;
		}
		off += KVB_MC_FRAME_HEADER_LEN + body;
		if (p->hello_awaited) {
			if (!stream_tls_hello(p, type, payload, plen))
				return false;
			if (p->state == HW_PEER_UP)
				break; /* announced: the rest waits for the core's conn_accept */
			continue;
		}
		if (type == KVB_MC_KVB_AUTH) {
			if (!auth_frame(p, payload, plen))
				return false;
			continue;
		}
		if (hw->auth && p->auth_step != 3) {
			/* nothing but the challenge-response before it is done */
			return auth_fail(p, p->hello_done ? "the connecting peer sent a message before it "
						       "authenticated (does it hold the shared secret?)"
						     : "the listening peer did not authenticate (does it hold "
						       "the shared secret?)");
		}
		if (!p->hello_done) {
			/* the listener's answer to our hello: its descriptor */
			kvb_mc_segment_t seg;
			if (type != KVB_MC_KVB_HELLO) {
				hw_peer_down(p, KVB_ERR_PROTOCOL,
					     "peer answered the kvbridge hello with a non-kvbridge frame "
					     "(is it a Mooncake engine? use its segment through a vLLM or "
					     "Mooncake client instead)");
				return false;
			}
			if (kvb_mc_segment_from_json((const char *)payload, plen, &seg, &err) != KVB_OK ||
			    hw_link_set_segment(&p->link, &seg, p->host, &err) != KVB_OK) {
				hw_peer_down(p, err.code, err.msg);
				return false;
			}
			p->hello_done = true;
			hw_peer_up(p);
			continue;
		}
		if (type == KVB_MC_KVB_SYNC || type == KVB_MC_KVB_SYNCED) {
			if (!hw_staging_sync_frame(&p->link, type, payload, plen, &err)) {
				hw_peer_down(p, KVB_ERR_PROTOCOL, err.msg);
				return false;
			}
			continue;
		}
		if (type == KVB_MC_KVB_WINDOW) {
			/* the RDMA keys of the pull that follows */
			if (hw_link_window_keys_add(&p->link, payload, plen, &err) != KVB_OK) {
				hw_peer_down(p, KVB_ERR_PROTOCOL, err.msg);
				return false;
			}
			continue;
		}
		if (type != KVB_MC_KVB_FRAME) {
			hw_peer_down(p, KVB_ERR_PROTOCOL, "unexpected frame type on a kvbridge stream");
			return false;
		}
		kvb_wire_type_t wt;
		char tid[KVB_ID_MAX], rid[KVB_ID_MAX];
		if (kvb_wire_peek(payload, plen, &wt, NULL) == KVB_OK &&
		    (wt == KVB_WIRE_DONE || wt == KVB_WIRE_CANCEL) &&
		    kvb_wire_peek_ids(payload, plen, tid, rid) == KVB_OK) {
			if (wt == KVB_WIRE_DONE)
				hw_window_close(p->hw, p, tid, rid); /* the pull is over: no more writes */
			else
				hw_link_window_keys_drop(&p->link, tid, rid); /* cancelled: its keys die */
		}
		hw_peer_deliver(p, payload, plen);
	}
	if (off)
		g_byte_array_remove_range(p->rx, 0, (guint)off);
	return ok;
}

/* The TLS handshake, a step per readiness (after the connector's
 * plaintext STARTTLS frame is out): 1 done, 0 waiting, -1 the peer went
 * down.  Once done, the connector's hello goes in. */
static int stream_tls_handshake(hw_peer_t *p)
{
	hw_t *hw = p->hw;
	char why[KVB_ERR_MSG_MAX + 160];
	if (p->tx->len) {
		int r = hw_flush_tx(p->fd, p->tx, &p->tx_off);
		if (r < 0) {
			g_snprintf(why, sizeof(why), "send: %s", g_strerror(-r));
			hw_peer_down(p, KVB_ERR_PEER, why);
			return -1;
		}
		if (r == 0)
			return 0;
	}
	kvb_err_t err;
	int rc = kvb_tls_handshake_step(p->tls, &err);
	if (rc < 0) {
		hw->stats.tls_failures++;
		g_snprintf(why, sizeof(why), "%s%s", err.msg,
			   p->hello_awaited ? "" : " (is TLS on for the peer's streams? tls_cert, tls_key)");
		hw_peer_down(p, KVB_ERR_PEER, why);
		return -1;
	}
	if (rc == 0) {
		hw_watch_set(p->w, kvb_tls_wants_write(p->tls) ? G_IO_OUT : G_IO_IN);
		return 0;
	}
	p->tls_ready = true;
	hw->stats.tls_streams++;
	char d[64];
	hw_log(hw, "stream with %s: %s", p->host, kvb_tls_describe(p->tls, d, sizeof(d)));
	if (!p->hello_awaited) {
		char *desc = hw_segment_json(hw);
		kvb_mc_frame_encode(p->tx, KVB_MC_KVB_HELLO, desc, strlen(desc));
		g_free(desc);
	}
	hw_watch_set(p->w, p->tx->len ? G_IO_IN | G_IO_OUT : G_IO_IN);
	return 1;
}

static bool stream_io(void *obj, GIOCondition cond)
{
	hw_peer_t *p = obj;
	char why[160];
	if (p->state == HW_PEER_CONNECTING && !p->hello_sent) {
		int e = hw_tcp_connect_result(p->fd);
		if (e) {
			g_snprintf(why, sizeof(why), "connect: %s", g_strerror(e));
			hw_peer_down(p, KVB_ERR_PEER, why);
			return false;
		}
		p->hello_sent = true;
	}
	bool read = cond & (G_IO_IN | G_IO_HUP | G_IO_ERR);
	if (p->tls && !p->tls_ready) {
		int r = stream_tls_handshake(p);
		if (r <= 0)
			return r == 0;
		read = true; /* the peer's first frames may have come with its Finished */
	}
	if (p->tx->len) {
		int r = hw_flush_tx_tls(p->fd, p->tls, p->tx, &p->tx_off);
		if (r < 0) {
			g_snprintf(why, sizeof(why), "send: %s", g_strerror(-r));
			hw_peer_down(p, KVB_ERR_PEER, why);
			return false;
		}
		if (r == 1)
			hw_watch_set(p->w, G_IO_IN);
	}
	/* TLS may hold decrypted records the socket no longer signals */
	while (read) {
		ssize_t n = hw_fill_rx_tls(p->fd, p->tls, p->rx, KVB_MC_FRAME_HEADER_LEN + STREAM_FRAME_MAX);
		bool alive = stream_frames(p);
		if (!alive)
			return false; /* hw_peer_down freed the watch */
		if (n < 0) {
			g_snprintf(why, sizeof(why), "%s",
				   n == -1 ? "connection closed by the peer" : g_strerror((int)-n));
			hw_peer_down(p, KVB_ERR_PEER, why);
			return false;
		}
		read = p->tls && n > 0 && kvb_tls_pending(p->tls) > 0;
	}
	return true;
}

static void stream_connect_timeout(void *obj)
{
	hw_peer_t *p = obj;
	if (p->state != HW_PEER_CONNECTING)
		return;
	if (p->tls && !p->tls_ready)
		p->hw->stats.tls_failures++;
	hw_peer_down(p, KVB_ERR_TIMEOUT, p->tls && !p->tls_ready ? "no TLS handshake within the connect timeout"
		     : p->hello_awaited ? "no hello inside TLS within the connect timeout"
		     : p->hello_done && p->hw->auth
		     ? "the connecting peer did not authenticate within the connect timeout"
		     : "no hello answer within the connect timeout");
}

int hw_stream_connect(hw_t *hw, kvb_conn_t *conn, const char *addr, const char *host,
		      uint16_t port)
{
	kvb_err_t err;
	int fd = hw_tcp_connect(host, port, NULL, &hw->acl, &err);
	if (fd < 0) {
		hw_set_error(hw, "%s", err.msg);
		return KVB_ERR_PEER;
	}
	kvb_tls_session_t *tls = NULL;
	if (hw->tls_client && !(tls = kvb_tls_session_new(hw->tls_client, fd, host, &err))) {
		hw_set_error(hw, "%s", err.msg);
		close(fd);
		return err.code;
	}
	hw_peer_t *p = hw_peer_new(hw, HW_PEER_KVB, &stream_ops, addr);
	hw_peer_bind(p, conn);
	g_strlcpy(p->host, host, sizeof(p->host));
	p->port = port;
	p->fd = fd;
	p->tls = tls;
	p->link.sync_send = stream_sync_send;
	if (tls) {
		/* the hello goes inside TLS, once its handshake is over */
		uint8_t version = 1;
		stream_queue(p, KVB_MC_KVB_STARTTLS, &version, 1);
	} else {
		char *desc = hw_segment_json(hw);
		stream_queue(p, KVB_MC_KVB_HELLO, desc, strlen(desc));
		g_free(desc);
	}
	p->w = hw_watch_new(hw, p->fd, G_IO_OUT | G_IO_IN, stream_io, p);
	p->connect_deadline = hw_deadline_new(hw, stream_connect_timeout, p);
	hw_deadline_arm(p->connect_deadline, hw->p.connect_timeout_ns);
	return KVB_INPROGRESS;
}

bool hw_stream_accept_hello(hw_t *hw, int fd, const uint8_t *payload, size_t len,
			    const uint8_t *rest, size_t rest_len)
{
	kvb_mc_segment_t seg;
	kvb_err_t err;
	if (kvb_mc_segment_from_json((const char *)payload, len, &seg, &err) != KVB_OK) {
		hw->stats.handshake_errors++;
		hw_set_error(hw, "kvbridge hello refused: %s", err.msg);
		close(fd);
		return false;
	}
	hw_peer_t *p = hw_peer_new(hw, HW_PEER_KVB, &stream_ops, seg.name);
	char host[KVB_MC_NAME_MAX];
	hw_sock_peer_host(fd, host, sizeof(host));
	g_strlcpy(p->host, host, sizeof(p->host));
	if (hw_link_set_segment(&p->link, &seg, host, &err) != KVB_OK) {
		hw->stats.handshake_errors++;
		hw_set_error(hw, "kvbridge hello from %s refused: %s", host, err.msg);
		hw_peer_free(p);
		close(fd);
		return false;
	}
	p->link.sync_send = stream_sync_send;
	/* the socket moves to the peer; bytes after the hello stay in rx */
	p->fd = fd;
	g_byte_array_append(p->rx, rest, (guint)rest_len);
	p->hello_sent = p->hello_done = true;
	if (!stream_listener_start(p))
		return false;
	/* with a secret, what came in the hello's read (a proof, or a frame
	 * before it) is judged now, not when the peer sends again (without
	 * one, stream_accepted reads it) */
	return !hw->auth || !p->rx->len || stream_frames(p);
}

/* The listener has the connector's hello: the challenge first when there is
 * a shared secret (the core hears of the stream once it is met), else the
 * stream is announced.  False when the peer went down. */
static bool stream_listener_start(hw_peer_t *p)
{
	hw_t *hw = p->hw;
	if (hw->auth) {
		p->state = HW_PEER_CONNECTING;
		randombytes_buf(p->nonce_s, sizeof(p->nonce_s));
		auth_send(p, 1, NULL);
		p->auth_step = 1;
		if (!p->w)
			p->w = hw_watch_new(hw, p->fd, G_IO_IN | G_IO_OUT, stream_io, p);
		if (!p->connect_deadline) {
			p->connect_deadline = hw_deadline_new(hw, stream_connect_timeout, p);
			hw_deadline_arm(p->connect_deadline, hw->p.connect_timeout_ns);
		}
		return true;
	}
	p->state = HW_PEER_UP;
	hw_deadline_disarm(p->connect_deadline);
	hw->stats.streams_opened++;
	hw_peer_announce(p);
	return true;
}

bool hw_stream_accept_tls(hw_t *hw, int fd, const uint8_t *rest, size_t rest_len)
{
	char host[KVB_MC_NAME_MAX];
	hw_sock_peer_host(fd, host, sizeof(host));
	kvb_err_t err;
	kvb_tls_session_t *tls = kvb_tls_session_new(hw->tls_server, fd, NULL, &err);
	if (!tls) {
		hw->stats.tls_failures++;
		hw_warn_from(hw, host, "kvbridge stream from %s refused: %s", host, err.msg);
		close(fd);
		return false;
	}
	kvb_tls_session_preread(tls, rest, rest_len);
	/* named by its address until its hello names its segment */
	hw_peer_t *p = hw_peer_new(hw, HW_PEER_KVB, &stream_ops, host);
	g_strlcpy(p->host, host, sizeof(p->host));
	p->fd = fd;
	p->tls = tls;
	p->link.sync_send = stream_sync_send;
	p->hello_sent = true;
	p->hello_awaited = true;
	p->w = hw_watch_new(hw, p->fd, G_IO_IN, stream_io, p);
	p->connect_deadline = hw_deadline_new(hw, stream_connect_timeout, p);
	hw_deadline_arm(p->connect_deadline, hw->p.connect_timeout_ns);
	/* the ClientHello may be in hand already, where the socket cannot signal it */
	stream_io(p, G_IO_IN);
	return true;
}

/* Once the core accepted an incoming stream: answer the hello and watch it. */
static void stream_accepted(hw_peer_t *p)
{
	hw_t *hw = p->hw;
	char *desc = hw_segment_json(hw);
	kvb_mc_frame_encode(p->tx, KVB_MC_KVB_HELLO, desc, strlen(desc));
	g_free(desc);
	if (p->w) /* authenticated first: already watched */
		hw_watch_set(p->w, G_IO_IN | G_IO_OUT);
	else
		p->w = hw_watch_new(hw, p->fd, G_IO_IN | G_IO_OUT, stream_io, p);
	if (p->rx->len)
		stream_frames(p);
}

/* A pull we send opens a window on its destination blocks for the producer's
 * writes (over RDMA, with keys of its own, sent just before it); our CANCEL,
 * or its DONE (stream_frames), closes it.  The producer drops a pull's keys
 * when it sends the DONE. */
static int stream_msg_send(hw_peer_t *p, const void *buf, size_t len)
{
	kvb_wire_type_t type = 0;
	char tid[KVB_ID_MAX], rid[KVB_ID_MAX];
	if (kvb_wire_peek(buf, len, &type, NULL) == KVB_OK && type == KVB_WIRE_PULL) {
		kvb_wire_pull_t pull;
		if (kvb_wire_decode_pull(buf, len, &pull, NULL) == KVB_OK) {
			GArray *ranges = hw_pull_ranges(&pull);
			GByteArray *keys = g_byte_array_new();
			kvb_err_t err;
			/* bound to the producer's addresses: the one this stream
			 * reached, and those its hello says its TCP lanes use */
			char host[KVB_MC_NAME_MAX] = "";
			if (p->fd >= 0)
				hw_sock_peer_host(p->fd, host, sizeof(host));
			GString *peer = g_string_new(host);
			for (uint32_t i = 0; *host && p->link.have_seg && i < p->link.seg.n_tcp_sources; i++)
				g_string_append_printf(peer, ",%s", p->link.seg.tcp_sources[i]);
			int rc = hw_window_open_keyed(p->hw, p, pull.transfer_id, pull.request_id, ranges,
						      peer->str, keys, &err);
			g_string_free(peer, TRUE);
			if (rc == KVB_OK && keys->len)
				stream_queue(p, KVB_MC_KVB_WINDOW, keys->data, keys->len);
			g_byte_array_unref(keys);
			g_array_free(ranges, TRUE);
			if (rc != KVB_OK) {
				hw_set_error(p->hw, "pull %s: %s", pull.transfer_id, err.msg);
				kvb_wire_pull_clear(&pull);
				return rc;
			}
			kvb_wire_pull_clear(&pull);
		}
	} else if (type == KVB_WIRE_CANCEL) {
		if (kvb_wire_peek_ids(buf, len, tid, rid) == KVB_OK)
			hw_window_close(p->hw, p, tid, rid);
	} else if (type == KVB_WIRE_DONE) {
		if (kvb_wire_peek_ids(buf, len, tid, rid) == KVB_OK)
			hw_link_window_keys_drop(&p->link, tid, rid);
	}
	stream_queue(p, KVB_MC_KVB_FRAME, buf, len);
	return KVB_OK;
}

static void stream_closed(hw_peer_t *p)
{
	/* orderly: what is queued on the stream is still written (best effort,
	 * without blocking), then the socket closes and the peer sees EOF */
	if (p->fd >= 0 && p->tx->len && (!p->tls || p->tls_ready))
		hw_flush_tx_tls(p->fd, p->tls, p->tx, &p->tx_off);
	if (p->fd >= 0 && p->tls && p->tls_ready)
		kvb_tls_bye(p->tls);
	hw_peer_free(p);
}

static void stream_detach(hw_peer_t *p)
{
	kvb_tls_session_free(p->tls);
	p->tls = NULL;
}

static const hw_peer_ops_t stream_ops = {
	.protocol = "kvbridge",
	.accepted = stream_accepted,
	.msg_send = stream_msg_send,
	.closed = stream_closed,
	.detach = stream_detach,
};
