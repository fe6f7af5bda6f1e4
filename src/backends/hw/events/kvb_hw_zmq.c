/*
 * ZMQ helpers (kvb_hw_zmq.h).
 */
#include "config.h"

#include <errno.h>
#include <string.h>
#include <netdb.h>
#include <sys/socket.h>

#include <glib.h>

#include "events/kvb_hw_events.h"
#include "events/kvb_hw_zmq.h"

void *hw_zmq_ctx(void)
{
	static void *ctx;
	static GMutex lock;
	g_mutex_lock(&lock);
	if (!ctx)
		ctx = zmq_ctx_new();
	g_mutex_unlock(&lock);
	return ctx;
}

int hw_zmq_recv(void *sock, zmq_msg_t *frames, size_t *n_total)
{
	int n = 0;
	*n_total = 0;
	for (;;) {
		zmq_msg_t m;
		zmq_msg_init(&m);
		if (zmq_msg_recv(&m, sock, n == 0 && *n_total == 0 ? ZMQ_DONTWAIT : 0) < 0) {
			zmq_msg_close(&m);
			return *n_total ? n : (errno == EAGAIN ? 0 : -1);
		}
		(*n_total)++;
		int more = zmq_msg_more(&m);
		if (n < HW_ZMQ_MAX_FRAMES)
			frames[n++] = m;
		else
			zmq_msg_close(&m);
		if (!more)
			return n;
	}
}

void hw_zmq_frames_close(zmq_msg_t *frames, int n)
{
	for (int i = 0; i < n; i++)
		zmq_msg_close(&frames[i]);
}

bool hw_zmq_readable(void *sock)
{
	int ev = 0;
	size_t sz = sizeof(ev);
	return zmq_getsockopt(sock, ZMQ_EVENTS, &ev, &sz) == 0 && (ev & ZMQ_POLLIN);
}

int hw_zmq_fd(void *sock)
{
	int fd = -1;
	size_t sz = sizeof(fd);
	zmq_getsockopt(sock, ZMQ_FD, &fd, &sz);
	return fd;
}

const char *hw_zmq_peer(zmq_msg_t *frame)
{
	const char *a = zmq_msg_gets(frame, "Peer-Address");
	return a ? a : "";
}

void *hw_zmq_monitor_open(void *sock)
{
	char ep[64];
	static gint seq;
	g_snprintf(ep, sizeof(ep), "inproc://kvb-zmq-mon-%p-%d", sock, g_atomic_int_add(&seq, 1));
	if (zmq_socket_monitor(sock, ep, ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED) != 0)
		return NULL;
	void *mon = zmq_socket(hw_zmq_ctx(), ZMQ_PAIR);
	if (mon && zmq_connect(mon, ep) != 0) {
		int e = errno;
		zmq_close(mon);
		zmq_socket_monitor(sock, NULL, 0);
		errno = e;
		return NULL;
	}
	return mon;
}

/* An event message: u16 event, u32 value, then a frame with the endpoint. */
unsigned hw_zmq_monitor_next(void *mon)
{
	while (hw_zmq_readable(mon)) {
		zmq_msg_t frames[HW_ZMQ_MAX_FRAMES];
		size_t total;
		int n = hw_zmq_recv(mon, frames, &total);
		if (n <= 0)
			return 0;
		uint16_t ev = 0;
		if (zmq_msg_size(&frames[0]) >= 2)
			memcpy(&ev, zmq_msg_data(&frames[0]), 2);
		hw_zmq_frames_close(frames, n);
		if (ev)
			return ev;
	}
	return 0;
}

void hw_zmq_monitor_close(void *sock, void *mon)
{
	if (sock)
		zmq_socket_monitor(sock, NULL, 0);
	if (mon)
		zmq_close(mon);
}

bool hw_zmq_sender_allowed(hw_t *hw, zmq_msg_t *frame)
{
	const char *ip = hw_zmq_peer(frame);
	if (kvb_acl_allows_ip(&hw->acl, ip))
		return true;
	hw->stats.peers_refused++;
	hw_warn_from(hw, ip, "vLLM side channel: message from %s dropped: not among the allowed peers",
		     *ip ? ip : "an unknown address");
	return false;
}

struct hw_zmq_gate {
	struct hw *hw;
	void *router;
	void *mon;
	hw_watch_t *w;
	char what[48];
};

/* Monitor events: a 6-byte frame (u16 event, u32 value: the accepted
 * connection's fd), then the endpoint.  The fd is libzmq's: it is only ever
 * shut down, never closed, and only when its peer is not allowed (were the
 * number reused meanwhile, by a socket to an allowed peer, nothing happens
 * to it). */
static bool gate_io(void *obj, GIOCondition cond)
{
	(void)cond;
	hw_zmq_gate_t *g = obj;
	while (hw_zmq_readable(g->mon)) {
		zmq_msg_t frames[HW_ZMQ_MAX_FRAMES];
		size_t total;
		int n = hw_zmq_recv(g->mon, frames, &total);
		if (n <= 0)
			break;
		uint16_t ev = 0;
		uint32_t fd = 0;
		if (zmq_msg_size(&frames[0]) >= 6) {
			memcpy(&ev, zmq_msg_data(&frames[0]), 2);
			memcpy(&fd, (const uint8_t *)zmq_msg_data(&frames[0]) + 2, 4);
		}
		hw_zmq_frames_close(frames, n);
		if (ev != ZMQ_EVENT_ACCEPTED)
			continue;
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		if (getpeername((int)fd, (struct sockaddr *)&ss, &sl) != 0 ||
		    kvb_acl_allows(&g->hw->acl, (struct sockaddr *)&ss))
			continue;
		char host[NI_MAXHOST] = "";
		getnameinfo((struct sockaddr *)&ss, sl, host, sizeof(host), NULL, 0, NI_NUMERICHOST);
		shutdown((int)fd, SHUT_RDWR);
		g->hw->stats.peers_refused++;
		hw_warn_from(g->hw, host, "%s: connection from %s shut down: not among the allowed peers",
			     g->what, host);
	}
	return true;
}

hw_zmq_gate_t *hw_zmq_gate_open(struct hw *hw, void *router, const char *what)
{
	char ep[64];
	static gint seq;
	g_snprintf(ep, sizeof(ep), "inproc://kvb-zmq-gate-%p-%d", router, g_atomic_int_add(&seq, 1));
	if (zmq_socket_monitor(router, ep, ZMQ_EVENT_ACCEPTED) != 0)
		return NULL;
	hw_zmq_gate_t *g = g_new0(hw_zmq_gate_t, 1);
	g->hw = hw;
	g->router = router;
	g_strlcpy(g->what, what, sizeof(g->what));
	g->mon = zmq_socket(hw_zmq_ctx(), ZMQ_PAIR);
	/* no high-water mark: libzmq's I/O thread blocks on a full monitor pipe
	 * (a flood of connections between two turns of our loop) */
	int unlimited = 0;
	if (g->mon)
		zmq_setsockopt(g->mon, ZMQ_RCVHWM, &unlimited, sizeof(unlimited));
	if (!g->mon || zmq_connect(g->mon, ep) != 0) {
		hw_zmq_gate_close(g);
		return NULL;
	}
	g->w = hw_watch_new(hw, hw_zmq_fd(g->mon), G_IO_IN, gate_io, g);
	gate_io(g, 0); /* the connect's commands: the fd fires only for what comes after */
	return g;
}

void hw_zmq_gate_close(hw_zmq_gate_t *g)
{
	if (!g)
		return;
	hw_watch_free(g->w);
	zmq_socket_monitor(g->router, NULL, 0);
	if (g->mon)
		zmq_close(g->mon);
	g_free(g);
}
