/*
 * ZMQ helpers (kvb_hw_zmq.h).
 */
#include "config.h"

#include <errno.h>

#include <glib.h>

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
