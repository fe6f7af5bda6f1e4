/*
 * ZMQ helpers (kvb_hw_zmq.h).
 */
#include "config.h"

#include <errno.h>
#include <string.h>

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
