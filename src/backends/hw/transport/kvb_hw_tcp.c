/*
 * Mooncake TCP transport (../shared/research/mooncake-te.md 3.3), both ends.
 *
 * Client: one persistent connection ("lane") per peer and local NIC, bound
 * to that NIC's source address.  Each posted op is one request: the 24-byte
 * header, then the payload (WRITE).  Requests are pipelined: the next header
 * goes out before the previous status frame arrives, and completions are
 * matched in order, as the server answers in order.  v2 peers acknowledge a
 * WRITE once applied and precede READ data with a status; v1 peers do not,
 * so a v1 WRITE completes when its last byte is handed to the kernel.
 *
 * Server: reads a header, checks [addr, addr + size) against the registered
 * memory (and the fences) before a byte moves, then receives into or sends
 * from that memory directly.  A refused range gets status 1 (v2) and the
 * connection is closed, since the payload that follows cannot be trusted.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>

#include "events/kvb_hw_net.h"
#include "transport/kvb_hw_gpu.h"
#include "transport/kvb_hw_tcp.h"
#include "kvb_mc_wire.h"

#define IO_CHUNK (8u << 20)       /* bytes per send/recv call on the data path */
#define IO_BUDGET (64u << 20)     /* bytes per dispatch of one connection */

/* ------------------------------------------------------------------------ */
/* client lanes                                                             */

typedef struct hw_op {
	uint64_t cookie;
	uint8_t opcode;
	uint64_t laddr, raddr, len;
	uint64_t done;          /* payload bytes sent (WRITE) or received (READ) */
	uint8_t hdr[KVB_MC_TCP_HEADER_LEN];
	size_t hdr_done;
	bool status_ok;         /* READ (v2): the status came, data follows */
} hw_op_t;

typedef enum lane_state {
	LANE_DOWN = 0,
	LANE_CONNECTING = 1,
	LANE_UP = 2,
} lane_state_t;

struct hw_lane {
	hw_link_t *link;
	uint32_t nic;
	int fd;
	hw_watch_t *w;
	hw_deadline_t *deadline;
	lane_state_t state;
	bool v2;
	GQueue tosend;          /* hw_op_t*: not yet (fully) written */
	GQueue sent;            /* hw_op_t*: written, awaiting status or data */
	uint8_t st[KVB_MC_TCP_STATUS_LEN * 64]; /* status frames received, st_off consumed */
	size_t st_len, st_off;
};

static void op_complete(hw_lane_t *l, hw_op_t *op, int status)
{
	hw_link_t *p = l->link;
	hw_t *hw = p->hw;
	if (status == KVB_OK) {
		hw_stats(hw)->tcp_bytes_posted += op->len;
		hw_stats(hw)->nic_bytes[l->nic] += op->len;
	}
	if (p->ops_outstanding)
		p->ops_outstanding--;
	hw_xfer_done(hw, op->cookie, status, l->nic);
	g_free(op);
}

static void lane_close_fd(hw_lane_t *l)
{
	hw_watch_free(l->w);
	l->w = NULL;
	hw_deadline_disarm(l->deadline);
	if (l->fd >= 0) {
		close(l->fd);
		l->fd = -1;
	}
	l->state = LANE_DOWN;
	l->st_len = l->st_off = 0;
}

/* Every op of the lane ends with status; the connection closes.  The next
 * post reconnects. */
static void lane_fail(hw_lane_t *l, int status, const char *why)
{
	hw_t *hw = l->link->hw;
	hw_set_error(hw, "data connection to %s:%u (nic %u): %s", l->link->data_host,
		     l->link->data_port, l->nic, why);
	lane_close_fd(l);
	hw_op_t *op;
	while ((op = g_queue_pop_head(&l->sent)))
		op_complete(l, op, status);
	while ((op = g_queue_pop_head(&l->tosend)))
		op_complete(l, op, status);
}

static bool lane_io(void *obj, GIOCondition cond);
static void lane_timeout(void *obj);

/* A connection the peer refused, reset or closed means the peer process is
 * gone or restarting (KVB_ERR_PEER: not the local NIC's fault, no retry on
 * another NIC); anything else (unreachable, timed out) is the path's
 * (KVB_ERR_TRANSPORT: counts against the NIC, retried on another). */
static int lane_errno_status(int e)
{
	return e == ECONNREFUSED || e == ECONNRESET || e == EPIPE ? KVB_ERR_PEER : KVB_ERR_TRANSPORT;
}

static void lane_connect(hw_lane_t *l)
{
	hw_link_t *p = l->link;
	hw_t *hw = p->hw;
	kvb_err_t err;
	const char *src = hw_params(hw)->nic_addrs[l->nic];
	l->fd = hw_tcp_connect(p->data_host, p->data_port, src, &hw->acl, &err);
	if (l->fd < 0) {
		lane_fail(l, lane_errno_status(errno), err.msg);
		return;
	}
	l->state = LANE_CONNECTING;
	l->v2 = p->data_v2;
	l->w = hw_watch_new(hw, l->fd, G_IO_OUT, lane_io, l);
	hw_deadline_arm(l->deadline, hw_params(hw)->connect_timeout_ns);
}

/* After a refused request the server closes: the requests written behind
 * it were not applied and go out again on a new connection. */
static void lane_reset_after_reject(hw_lane_t *l)
{
	lane_close_fd(l);
	hw_op_t *op;
	while ((op = g_queue_pop_tail(&l->sent))) {
		op->done = 0;
		op->hdr_done = 0;
		op->status_ok = false;
		g_queue_push_head(&l->tosend, op);
	}
	if (l->tosend.length) {
		hw_op_t *head = l->tosend.head->data;
		head->done = 0;
		head->hdr_done = 0;
		lane_connect(l);
	}
}

static void lane_watch_update(hw_lane_t *l)
{
	if (l->state != LANE_UP)
		return;
	hw_watch_set(l->w, G_IO_IN | (l->tosend.length ? G_IO_OUT : 0));
	if (l->sent.length)
		hw_deadline_arm(l->deadline, hw_params(l->link->hw)->status_timeout_ns);
	else
		hw_deadline_disarm(l->deadline);
}

/* Write queued requests.  Returns false when the lane failed. */
static bool lane_send(hw_lane_t *l)
{
	uint64_t budget = IO_BUDGET;
	while (l->tosend.length && budget) {
		hw_op_t *op = l->tosend.head->data;
		struct iovec iov[2];
		int n = 0;
		if (op->hdr_done < sizeof(op->hdr)) {
			iov[n].iov_base = op->hdr + op->hdr_done;
			iov[n++].iov_len = sizeof(op->hdr) - op->hdr_done;
		}
		if (op->opcode == KVB_MC_TCP_OP_WRITE && op->done < op->len) {
			iov[n].iov_base = (uint8_t *)(uintptr_t)op->laddr + op->done;
			iov[n++].iov_len = (size_t)MIN(op->len - op->done, (uint64_t)IO_CHUNK);
		}
		if (n) {
			struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
			ssize_t w = sendmsg(l->fd, &mh, MSG_NOSIGNAL);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				if (errno == EAGAIN || errno == EWOULDBLOCK)
					return true;
				lane_fail(l, lane_errno_status(errno), g_strerror(errno));
				return false;
			}
			size_t took = (size_t)w;
			budget -= MIN(budget, (uint64_t)took);
			size_t h = MIN(took, sizeof(op->hdr) - op->hdr_done);
			op->hdr_done += h;
			op->done += took - h;
			if (op->hdr_done < sizeof(op->hdr) ||
			    (op->opcode == KVB_MC_TCP_OP_WRITE && op->done < op->len))
				continue;
		}
		g_queue_pop_head(&l->tosend);
		if (op->opcode == KVB_MC_TCP_OP_WRITE)
			op->done = 0; /* now counts nothing: the status completes it */
		if (op->opcode == KVB_MC_TCP_OP_WRITE && !l->v2)
			op_complete(l, op, KVB_OK);
		else
			g_queue_push_tail(&l->sent, op);
	}
	return true;
}

/* Read status frames and READ data.  Returns false when the lane failed or
 * was reset. */
static bool lane_recv(hw_lane_t *l)
{
	uint64_t budget = IO_BUDGET;
	while (l->sent.length && budget) {
		hw_op_t *op = l->sent.head->data;
		bool need_status = l->v2 && !op->status_ok;
		ssize_t r = 0;
		if (need_status && l->st_len - l->st_off < KVB_MC_TCP_STATUS_LEN) {
			/* read the status frames of as many waiting ops as possible in
			 * one call: the consecutive writes at the head, up to and
			 * including a read (its data follows its status) */
			memmove(l->st, l->st + l->st_off, l->st_len - l->st_off);
			l->st_len -= l->st_off;
			l->st_off = 0;
			size_t k = 0;
			for (GList *g = l->sent.head; g && k < sizeof(l->st) / KVB_MC_TCP_STATUS_LEN; g = g->next) {
				hw_op_t *o = g->data;
				if (o->status_ok)
					break;
				k++;
				if (o->opcode == KVB_MC_TCP_OP_READ)
					break;
			}
			r = recv(l->fd, l->st + l->st_len, k * KVB_MC_TCP_STATUS_LEN - l->st_len, 0);
		} else if (!need_status) {
			size_t want = (size_t)MIN(op->len - op->done, (uint64_t)IO_CHUNK);
			r = recv(l->fd, (uint8_t *)(uintptr_t)op->laddr + op->done, want, 0);
		} else {
			r = -2; /* a status frame is already here */
		}
		if (r == 0) {
			lane_fail(l, KVB_ERR_PEER, "connection closed by the peer");
			return false;
		}
		if (r == -1) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return true;
			lane_fail(l, lane_errno_status(errno), g_strerror(errno));
			return false;
		}
		if (r > 0) {
			budget -= MIN(budget, (uint64_t)r);
			hw_deadline_arm(l->deadline, hw_params(l->link->hw)->status_timeout_ns);
		}
		if (need_status) {
			if (r > 0)
				l->st_len += (size_t)r;
			if (l->st_len - l->st_off < KVB_MC_TCP_STATUS_LEN)
				continue;
			uint32_t code;
			kvb_err_t err;
			int drc = kvb_mc_tcp_status_decode(l->st + l->st_off, &code, &err);
			l->st_off += KVB_MC_TCP_STATUS_LEN;
			if (drc != KVB_OK) {
				lane_fail(l, KVB_ERR_TRANSPORT, err.msg);
				return false;
			}
			if (code != KVB_MC_TCP_STATUS_OK) {
				g_queue_pop_head(&l->sent);
				hw_set_error(l->link->hw,
					     "peer %s refused %s of %" PRIu64 " bytes at 0x%" PRIx64
					     " (outside its registered memory)",
					     l->link->name, op->opcode == KVB_MC_TCP_OP_WRITE ? "a write" : "a read",
					     op->len, op->raddr);
				op_complete(l, op, KVB_ERR_RANGE);
				lane_reset_after_reject(l);
				return false;
			}
			if (op->opcode == KVB_MC_TCP_OP_WRITE) {
				g_queue_pop_head(&l->sent);
				op_complete(l, op, KVB_OK);
				continue;
			}
			op->status_ok = true;
			if (op->len)
				continue;
		} else {
			op->done += (uint64_t)r;
		}
		if (op->opcode == KVB_MC_TCP_OP_READ && op->done == op->len) {
			g_queue_pop_head(&l->sent);
			op_complete(l, op, KVB_OK);
		}
	}
	return true;
}

static bool lane_io(void *obj, GIOCondition cond)
{
	hw_lane_t *l = obj;
	if (l->state == LANE_CONNECTING) {
		int e = hw_tcp_connect_result(l->fd);
		if (e) {
			lane_fail(l, lane_errno_status(e), g_strerror(e));
			return false;
		}
		l->state = LANE_UP;
		hw_deadline_disarm(l->deadline);
	}
	if (!l->sent.length && (cond & G_IO_IN)) {
		/* nothing asked, yet readable: the server closed the connection
		 * (or sent what it never should); close it now, so that an idle
		 * lane neither spins the loop nor looks alive, and reconnect on
		 * the next post */
		uint8_t b;
		ssize_t r = recv(l->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
		if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
			if (r > 0)
				hw_set_error(l->link->hw, "data connection to %s:%u (nic %u): bytes from the "
					     "server with no request pending; closed", l->link->data_host,
					     l->link->data_port, l->nic);
			if (l->tosend.length) {
				lane_fail(l, KVB_ERR_PEER, "connection closed by the peer");
				return false;
			}
			lane_close_fd(l);
			return false;
		}
	}
	if ((cond & (G_IO_IN | G_IO_HUP | G_IO_ERR)) && !lane_recv(l))
		return false;
	if (l->tosend.length && !lane_send(l))
		return false;
	if (!l->sent.length && !l->tosend.length && (cond & (G_IO_HUP | G_IO_ERR))) {
		/* the server went away while we were idle: reconnect on the next post */
		lane_close_fd(l);
		return false;
	}
	lane_watch_update(l);
	return true;
}

static void lane_timeout(void *obj)
{
	hw_lane_t *l = obj;
	if (l->state == LANE_CONNECTING)
		lane_fail(l, KVB_ERR_TRANSPORT, "connect timed out");
	else if (l->sent.length)
		lane_fail(l, KVB_ERR_TRANSPORT, "no status frame or data within the status timeout");
}

int hw_lane_post(hw_link_t *p, const kvb_slice_op_t *op, hw_mr_t *m)
{
	hw_t *hw = p->hw;
	const kvb_hw_params_t *prm = hw_params(hw);
	if (op->local_nic >= prm->n_nics) {
		hw_set_error(hw, "xfer_post: local nic %u of %u", op->local_nic, prm->n_nics);
		return KVB_ERR_INVALID;
	}
	if (!op->len || (op->opcode != KVB_XFER_WRITE && op->opcode != KVB_XFER_READ)) {
		hw_set_error(hw, "xfer_post: empty op or unknown opcode %d", (int)op->opcode);
		return KVB_ERR_INVALID;
	}
	if (m->kind == KVB_MEM_CUDA) {
		/* kvb_hw_transport.c stages GPU memory before it reaches a socket */
		hw_set_error(hw, "xfer_post: GPU memory at 0x%" PRIx64 " reached the TCP transport "
				 "unstaged", op->local_addr);
		return KVB_ERR_INVALID;
	}
	/* the least loaded of the NIC's lanes (an unopened one counts as empty) */
	uint32_t nl = prm->tcp_lanes ? MIN(prm->tcp_lanes, KVB_HW_MAX_LANES) : 1;
	uint32_t best = op->local_nic * KVB_HW_MAX_LANES;
	for (uint32_t k = 0; k < nl; k++) {
		uint32_t i = op->local_nic * KVB_HW_MAX_LANES + k;
		hw_lane_t *c = p->lanes[i], *b = p->lanes[best];
		if (!c) {
			best = i;
			break;
		}
		if (b && c->tosend.length + c->sent.length < b->tosend.length + b->sent.length)
			best = i;
	}
	hw_lane_t *l = p->lanes[best];
	if (!l) {
		l = g_new0(hw_lane_t, 1);
		l->link = p;
		l->nic = op->local_nic;
		l->fd = -1;
		l->deadline = hw_deadline_new(hw, lane_timeout, l);
		p->lanes[best] = l;
	}
	if (l->tosend.length + l->sent.length >= prm->lane_depth)
		return KVB_ERR_NO_RESOURCE;
	hw_op_t *o = g_new0(hw_op_t, 1);
	o->cookie = op->cookie;
	o->opcode = op->opcode == KVB_XFER_WRITE ? KVB_MC_TCP_OP_WRITE : KVB_MC_TCP_OP_READ;
	o->laddr = op->local_addr;
	o->raddr = op->remote_addr;
	o->len = op->len;
	kvb_mc_tcp_header_t h = {.size = op->len, .addr = op->remote_addr, .opcode = o->opcode,
				 .v2 = p->data_v2};
	kvb_mc_tcp_header_encode(o->hdr, &h);
	g_queue_push_tail(&l->tosend, o);
	p->ops_outstanding++;
	if (l->state == LANE_DOWN)
		lane_connect(l);
	else
		lane_watch_update(l);
	return KVB_OK;
}

void hw_lanes_fail(hw_link_t *p, int status)
{
	for (uint32_t i = 0; i < KVB_HW_MAX_NICS * KVB_HW_MAX_LANES; i++)
		if (p->lanes[i] && (p->lanes[i]->sent.length || p->lanes[i]->tosend.length ||
				    p->lanes[i]->fd >= 0))
			lane_fail(p->lanes[i], status, "the connection to the peer went down");
}

void hw_lanes_free(hw_link_t *p)
{
	for (uint32_t i = 0; i < KVB_HW_MAX_NICS * KVB_HW_MAX_LANES; i++) {
		hw_lane_t *l = p->lanes[i];
		if (!l)
			continue;
		lane_close_fd(l);
		/* ops still queued are discarded (instance close: no events) */
		g_queue_clear_full(&l->sent, g_free);
		g_queue_clear_full(&l->tosend, g_free);
		hw_deadline_free(l->deadline);
		g_free(l);
		p->lanes[i] = NULL;
	}
}

bool hw_lanes_idle(const hw_link_t *p)
{
	bool any = false;
	for (uint32_t i = 0; i < KVB_HW_MAX_NICS * KVB_HW_MAX_LANES; i++) {
		const hw_lane_t *l = p->lanes[i];
		if (!l)
			continue;
		if (l->state != LANE_UP || l->fd < 0 || l->sent.length || l->tosend.length)
			return false;
		any = true;
	}
	return any;
}

void hw_lanes_move(hw_link_t *from, hw_link_t *to)
{
	for (uint32_t i = 0; i < KVB_HW_MAX_NICS * KVB_HW_MAX_LANES; i++) {
		if (!from->lanes[i])
			continue;
		g_assert(!to->lanes[i]);
		to->lanes[i] = from->lanes[i];
		to->lanes[i]->link = to;
		from->lanes[i] = NULL;
	}
}

/* ------------------------------------------------------------------------ */
/* the data server                                                          */

struct hw_tcp_server {
	hw_t *hw;
	int fd;
	uint16_t port;
	hw_watch_t *w;
	GQueue sessions;
};

typedef enum dphase {
	D_HDR = 0,
	D_WRITE_DATA = 1,
	D_STATUS = 2,
	D_READ_DATA = 3,
	D_COPY = 4,             /* GPU memory: a copy to or from the stage is running */
} dphase_t;

typedef struct dsess {
	struct hw_tcp_server *srv;
	int fd;
	char peer_ip[64];           /* for warnings */
	hw_watch_t *w;
	dphase_t phase;
	uint8_t hdr[KVB_MC_TCP_HEADER_LEN];
	size_t hdr_done;
	kvb_mc_tcp_header_t h;
	uint64_t done;
	/* v2 status frames: a write's is queued and sent with the next ones
	 * when the socket has nothing more to read (one send for many acks); a
	 * read's or a refusal's goes out at once, after those queued */
	uint8_t st[KVB_MC_TCP_STATUS_LEN * 64];
	size_t st_len, st_done;
	dphase_t then;          /* phase after D_STATUS has flushed st */
	bool close_after_status;
	hw_mr_t *mr;            /* while moving bytes */
	/* GPU memory goes through a pinned stage: [stage_off, stage_off +
	 * stage_fill) of the request is in it */
	uint8_t *stage;
	uint64_t stage_off, stage_fill;
	hw_gpu_copy_t *copy;
	dphase_t after_copy;
} dsess_t;

static void dsess_free(dsess_t *s)
{
	hw_t *hw = s->srv->hw;
	if (s->copy)
		hw_gpu_copy_cancel(s->copy, s->stage); /* the copy still uses the stage */
	else
		hw_gpu_host_free(hw, s->stage);
	if (s->mr && s->mr->busy)
		s->mr->busy--;
	g_queue_remove(&s->srv->sessions, s);
	hw_watch_free(s->w);
	if (s->fd >= 0)
		close(s->fd);
	g_free(s);
}

/* Queue a status frame and flush everything queued before phase `then`. */
static void dsess_status(dsess_t *s, uint32_t code, dphase_t then)
{
	kvb_mc_tcp_status_encode(s->st + s->st_len, code);
	s->st_len += KVB_MC_TCP_STATUS_LEN;
	s->then = then;
	s->phase = D_STATUS;
}

/* Queue a write's acknowledgement; it leaves with the next flush. */
static void dsess_ack_later(dsess_t *s)
{
	kvb_mc_tcp_status_encode(s->st + s->st_len, KVB_MC_TCP_STATUS_OK);
	s->st_len += KVB_MC_TCP_STATUS_LEN;
	s->phase = D_HDR;
	if (s->st_len == sizeof(s->st)) {
		s->then = D_HDR;
		s->phase = D_STATUS;
	}
}

/* A header arrived: check it, then pick the next phase.  Returns false when
 * the session must close. */
static bool dsess_header(dsess_t *s)
{
	hw_t *hw = s->srv->hw;
	kvb_err_t err;
	s->hdr_done = 0;
	if (kvb_mc_tcp_header_decode(s->hdr, &s->h, &err) != KVB_OK) {
		hw_stats(hw)->tcp_requests_rejected++;
		hw_set_error(hw, "tcp transport: header refused: %s", err.msg);
		return false;
	}
	hw_mr_t *mr = hw_mr_find(hw, s->h.addr, s->h.size);
	bool fenced = mr && s->h.opcode == KVB_MC_TCP_OP_WRITE && hw_fenced(hw, s->h.addr, s->h.size);
	hw_window_verdict_t wv = mr && !fenced ? hw_window_check(hw, s->h.addr, s->h.size, s->peer_ip)
					       : HW_WINDOW_OPEN;
	bool closed = wv != HW_WINDOW_OPEN;
	if (!mr || fenced || closed) {
		hw_stats(hw)->tcp_requests_rejected++;
		if (fenced)
			hw_stats(hw)->fenced_writes++;
		const char *op = s->h.opcode == KVB_MC_TCP_OP_WRITE ? "write" : "read";
		const char *why = fenced ? "the range belongs to a cancelled pull"
				  : wv == HW_WINDOW_OTHER_PEER
					  ? "the blocks of a pull with another peer (a multi-homed producer? "
					    "KVB_WINDOW_ANY_PEER=1 admits any allowed peer)"
				  : closed ? "outside every transfer in progress (no open window)"
					   : "outside registered memory";
		hw_set_error(hw, "tcp transport: %s of %" PRIu64 " bytes at 0x%" PRIx64 " refused: %s", op,
			     s->h.size, s->h.addr, why);
		if (closed) {
			hw_stats(hw)->window_refused++;
			hw_warn_from(hw, s->peer_ip, "tcp transport: %s of %" PRIu64 " bytes at 0x%" PRIx64
				     " from %s refused: %s", op, s->h.size, s->h.addr, s->peer_ip, why);
		}
		if (!s->h.v2)
			return false;
		dsess_status(s, KVB_MC_TCP_STATUS_REJECTED, D_HDR);
		s->close_after_status = true;
		return true;
	}
	s->mr = mr;
	mr->busy++;
	s->done = 0;
	s->stage_off = s->stage_fill = 0;
	if (mr->kind == KVB_MEM_CUDA && !s->stage) {
		s->stage = hw_gpu_host_alloc(hw, hw_params(hw)->staging_chunk);
		if (!s->stage) {
			hw_set_error(hw, "tcp transport: no pinned memory for a staging buffer");
			return false;
		}
	}
	if (s->h.opcode == KVB_MC_TCP_OP_WRITE)
		s->phase = D_WRITE_DATA;
	else if (s->h.v2)
		dsess_status(s, KVB_MC_TCP_STATUS_OK, D_READ_DATA);
	else
		s->phase = D_READ_DATA;
	return true;
}

static void dsess_request_done(dsess_t *s)
{
	hw_t *hw = s->srv->hw;
	hw_stats(hw)->tcp_requests_served++;
	if (s->h.opcode == KVB_MC_TCP_OP_WRITE)
		hw_stats(hw)->tcp_bytes_in += s->h.size;
	else
		hw_stats(hw)->tcp_bytes_out += s->h.size;
	if (s->mr) {
		s->mr->busy--;
		s->mr = NULL;
	}
}

/* A write's last byte is in our memory: count it, acknowledge it (v2), and
 * wait for the next header. */
static void dsess_write_applied(dsess_t *s)
{
	dsess_request_done(s);
	if (s->h.v2)
		dsess_ack_later(s);
	else
		s->phase = D_HDR;
}

static bool dsess_io(void *obj, GIOCondition cond);

static void dsess_copied(void *arg, int status, const char *why)
{
	dsess_t *s = arg;
	s->copy = NULL;
	if (status != KVB_OK) {
		hw_set_error(s->srv->hw, "tcp transport: staging copy: %s", why);
		dsess_free(s);
		return;
	}
	s->phase = s->after_copy;
	if (s->phase == D_WRITE_DATA) {
		s->stage_off = s->done;
		s->stage_fill = 0;
		if (s->done == s->h.size)
			dsess_write_applied(s);
	}
	dsess_io(s, G_IO_IN | G_IO_OUT);
}

/* Start a copy between the stage and the GPU: a write's bytes received so
 * far go to the device, or a read's next stage-full comes from it. */
static void dsess_copy(dsess_t *s, dphase_t then)
{
	hw_t *hw = s->srv->hw;
	uint64_t n;
	bool to_device = s->h.opcode == KVB_MC_TCP_OP_WRITE;
	if (to_device) {
		n = s->done - s->stage_off;
	} else {
		s->stage_off = s->done;
		n = MIN(s->h.size - s->done, hw_params(hw)->staging_chunk);
		s->stage_fill = n;
	}
	s->phase = D_COPY;
	s->after_copy = then;
	s->copy = hw_gpu_copy(hw, s->mr, s->stage, s->h.addr + s->stage_off, (size_t)n, to_device,
			      dsess_copied, s);
}

static bool dsess_io(void *obj, GIOCondition cond)
{
	dsess_t *s = obj;
	uint64_t budget = IO_BUDGET;
	(void)cond;
	while (budget) {
		ssize_t r;
		switch (s->phase) {
		case D_HDR:
			r = recv(s->fd, s->hdr + s->hdr_done, sizeof(s->hdr) - s->hdr_done, 0);
			if (r > 0) {
				s->hdr_done += (size_t)r;
				if (s->hdr_done == sizeof(s->hdr) && !dsess_header(s))
					goto close;
			}
			break;
		case D_WRITE_DATA:
			if (s->stage) {
				uint64_t room = s->stage_off + hw_params(s->srv->hw)->staging_chunk - s->done;
				r = recv(s->fd, s->stage + (s->done - s->stage_off),
					 (size_t)MIN(s->h.size - s->done, room), 0);
				if (r > 0) {
					s->done += (uint64_t)r;
					budget -= MIN(budget, (uint64_t)r);
					if (s->done == s->h.size || (uint64_t)r == room)
						dsess_copy(s, D_WRITE_DATA);
				}
				break;
			}
			r = recv(s->fd, (uint8_t *)(uintptr_t)s->h.addr + s->done,
				 (size_t)MIN(s->h.size - s->done, (uint64_t)IO_CHUNK), 0);
			if (r > 0) {
				s->done += (uint64_t)r;
				budget -= MIN(budget, (uint64_t)r);
				if (s->done == s->h.size)
					dsess_write_applied(s);
			}
			break;
		case D_STATUS:
			r = send(s->fd, s->st + s->st_done, s->st_len - s->st_done, MSG_NOSIGNAL);
			if (r > 0) {
				s->st_done += (size_t)r;
				if (s->st_done == s->st_len) {
					s->st_len = s->st_done = 0;
					if (s->close_after_status)
						goto close;
					s->phase = s->then;
				}
			}
			break;
		case D_READ_DATA:
			if (s->stage && s->done == s->stage_off + s->stage_fill) {
				dsess_copy(s, D_READ_DATA);
				r = -2;
				break;
			}
			if (s->stage)
				r = send(s->fd, s->stage + (s->done - s->stage_off),
					 (size_t)(s->stage_off + s->stage_fill - s->done), MSG_NOSIGNAL);
			else
				r = send(s->fd, (uint8_t *)(uintptr_t)s->h.addr + s->done,
					 (size_t)MIN(s->h.size - s->done, (uint64_t)IO_CHUNK), MSG_NOSIGNAL);
			if (r > 0) {
				s->done += (uint64_t)r;
				budget -= MIN(budget, (uint64_t)r);
				if (s->done == s->h.size) {
					dsess_request_done(s);
					s->phase = D_HDR;
				}
			}
			break;
		case D_COPY:
			r = -2;
			break;
		default:
			goto close;
		}
		if (r == -2)
			break; /* a staging copy runs: its end resumes the session */
		if (r == 0)
			goto close;
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			goto close;
		}
	}
	/* nothing more to read now (or the budget is spent): the queued acks go */
	if (s->st_len && s->phase != D_STATUS && s->phase != D_COPY) {
		ssize_t r = send(s->fd, s->st + s->st_done, s->st_len - s->st_done, MSG_NOSIGNAL);
		if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			goto close;
		if (r > 0)
			s->st_done += (size_t)r;
		if (s->st_done == s->st_len) {
			s->st_len = s->st_done = 0;
		} else {
			s->then = s->phase;
			s->phase = D_STATUS;
		}
	}
	hw_watch_set(s->w, s->phase == D_COPY ? 0
			   : s->phase == D_STATUS || s->phase == D_READ_DATA ? G_IO_OUT : G_IO_IN);
	return true;
close:
	dsess_free(s);
	return false;
}

static bool server_accept(void *obj, GIOCondition cond)
{
	struct hw_tcp_server *srv = obj;
	(void)cond;
	for (int i = 0; i < 64; i++) {
		struct sockaddr_storage sa;
		socklen_t sl = sizeof(sa);
		int fd = accept(srv->fd, (struct sockaddr *)&sa, &sl);
		if (fd < 0)
			break;
		if (!hw_accept_allowed(srv->hw, fd, (struct sockaddr *)&sa, "TCP data"))
			continue;
		char ip[64] = "";
		const void *a = sa.ss_family == AF_INET6 ? (const void *)&((struct sockaddr_in6 *)&sa)->sin6_addr
							 : (const void *)&((struct sockaddr_in *)&sa)->sin_addr;
		inet_ntop(sa.ss_family, a, ip, sizeof(ip));
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
		fcntl(fd, F_SETFD, FD_CLOEXEC);
		dsess_t *s = g_new0(dsess_t, 1);
		s->srv = srv;
		s->fd = fd;
		g_strlcpy(s->peer_ip, ip, sizeof(s->peer_ip));
		s->w = hw_watch_new(srv->hw, fd, G_IO_IN, dsess_io, s);
		g_queue_push_tail(&srv->sessions, s);
	}
	return true;
}

int hw_tcp_server_start(hw_t *hw, kvb_err_t *err)
{
	const kvb_hw_params_t *p = hw_params(hw);
	struct hw_tcp_server *srv = g_new0(struct hw_tcp_server, 1);
	srv->hw = hw;
	srv->fd = hw_tcp_listen(p->bind_host, p->data_port, p->rpc_port_min, p->rpc_port_max,
				&srv->port, err);
	if (srv->fd < 0) {
		g_free(srv);
		return err ? err->code : KVB_ERR_CONFIG;
	}
	srv->w = hw_watch_new(hw, srv->fd, G_IO_IN, server_accept, srv);
	hw->tcp = srv;
	return KVB_OK;
}

void hw_tcp_server_stop(hw_t *hw)
{
	struct hw_tcp_server *srv = hw->tcp;
	if (!srv)
		return;
	while (srv->sessions.head)
		dsess_free(srv->sessions.head->data);
	hw_watch_free(srv->w);
	close(srv->fd);
	g_free(srv);
	hw->tcp = NULL;
}

void hw_tcp_server_drop_mr(hw_t *hw, hw_mr_t *mr)
{
	struct hw_tcp_server *srv = hw->tcp;
	if (!srv)
		return;
	for (GList *l = srv->sessions.head; l;) {
		GList *next = l->next;
		dsess_t *s = l->data;
		if (s->mr == mr) {
			s->mr = NULL; /* freed by the caller right after */
			dsess_free(s);
		}
		l = next;
	}
}

uint16_t hw_tcp_server_port(hw_t *hw)
{
	struct hw_tcp_server *srv = hw->tcp;
	return srv ? srv->port : 0;
}
