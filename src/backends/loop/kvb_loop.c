/*
 * The loop backend: endpoints of one process on a shared fabric with a
 * deterministic virtual clock (model in include/kvbridge/loop.h).
 *
 * Everything that happens later is an event in the fabric's binary min-heap,
 * ordered by (time, insertion sequence), so events due at the same virtual
 * time become ready in the order they were scheduled.  Nothing moves until
 * kvb_loop_fabric_advance() sets the clock to the earliest event and moves
 * every event due then into its endpoint's ready queue; event_poll only
 * drains that queue.
 *
 * Timing rules (t = clock when the op is called):
 *   conn_connect      CONN_INCOMING at the target at t + msg_latency (of the
 *                     initiator), or CONN_DOWN(PEER) to the initiator then
 *                     when no live endpoint has that name
 *   conn_accept       the accepted conn is up at once; CONN_UP at the
 *                     initiator at t + msg_latency (of the acceptor)
 *   conn_close, kill  CONN_DOWN(PEER) at the peer conn at t + msg_latency
 *   msg_send          MSG at max(t + msg_latency, last arrival on that conn)
 *   xfer_post         start = max(t, local NIC free, remote NIC free); both
 *                     NICs busy for ceil(len * 1e9 / min(bw_local, bw_remote));
 *                     XFER_DONE latency_ns after that.  A slice that cannot
 *                     run (NIC down, peer gone) completes with
 *                     KVB_ERR_TRANSPORT at t + latency_ns, using no NIC time.
 *   timer_arm         TIMER at max(deadline, t)
 * The data of a slice is copied when its XFER_DONE becomes due, after the
 * remote range is checked against the peer's registration named by the rkey.
 *
 * Connection states (loop_conn_t.state):
 *
 *   IDLE --conn_connect--> CONNECTING --CONN_UP due--> UP --CONN_DOWN due--> DOWN
 *   IDLE --conn_accept---> UP                   \                        /
 *          any state --conn_close--> CLOSED      `------CONN_DOWN due---'
 *
 * Cross-endpoint references (peer conn, the endpoint of an rkey, the target
 * of a slice) are ids looked up when used, never pointers: a peer may close
 * and the core frees conns right after conn_close.  Closing a conn or an
 * endpoint removes every scheduled or ready event that names it.
 */
#include "config.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/loop.h>

#define LOOP_RKEY_LEN 16u
#define LOOP_ERR_MAX 256

typedef enum loop_conn_state {
	LOOP_CONN_IDLE = 0,       /* allocated by the core, never connected */
	LOOP_CONN_CONNECTING = 1, /* conn_connect called, CONN_UP not due yet */
	LOOP_CONN_UP = 2,         /* paired: messages and slices flow */
	LOOP_CONN_DOWN = 3,       /* a CONN_DOWN became due */
	LOOP_CONN_CLOSED = 4,     /* conn_close called */
} loop_conn_state_t;

/* Per-conn state, in kvb_conn_t.priv. */
typedef struct loop_conn {
	uint64_t id;             /* endpoint-local, never reused; 0 = none */
	loop_conn_state_t state;
	bool down_sched;         /* a CONN_DOWN was scheduled for it */
	uint64_t peer_ep;        /* paired peer endpoint id (0 = not paired) */
	uint64_t peer_conn;      /* the peer conn's id on that endpoint */
	uint64_t last_rx_ns;     /* latest arrival scheduled on it (FIFO) */
} loop_conn_t;

typedef struct loop_nic {
	uint64_t busy_until;
	uint32_t inflight;       /* slices posted on it, XFER_DONE not due yet */
	bool up;
	uint64_t down_epoch;     /* bumped whenever the NIC goes down */
	uint64_t tx_bytes;
} loop_nic_t;

typedef struct loop_mr {
	uint64_t id;             /* the handle is (void *)id */
	uint8_t *addr;
	size_t len;
	uint64_t inflight;       /* local slices using it */
} loop_mr_t;

/* A connect request waiting for conn_accept at the target. */
typedef struct loop_incoming {
	uint64_t id;
	uint64_t from_ep;
	uint64_t from_conn;
} loop_incoming_t;

typedef struct loop_xfer {
	kvb_xfer_opcode_t opcode;
	uint32_t local_nic;
	uint32_t remote_nic;     /* already reduced modulo the peer's NIC count */
	uint64_t local_epoch, remote_epoch;
	uint64_t local_mr;
	uint8_t *local_ptr;
	uint64_t remote_addr;
	uint64_t len;
	uint64_t conn_id, peer_ep, peer_conn;
	bool rkey_ok;
	uint64_t rkey_ep, rkey_mr;
	bool accounted;          /* still counted in NIC and MR in-flight */
} loop_xfer_t;

typedef struct loop_ev {
	uint64_t time, seq;
	size_t heap_idx;         /* SIZE_MAX when not in the heap */
	uint64_t ep_id;          /* receiving endpoint */
	uint64_t conn_id;        /* conn the event names (MSG, CONN_*), 0 none */
	uint64_t timer_id;       /* TIMER: key in the endpoint's timer table */
	kvb_event_t ev;
	void *buf;               /* MSG payload (owned) */
	bool is_xfer;
	loop_xfer_t x;
} loop_ev_t;

/* One endpoint: the instance's priv. */
typedef struct loop_ep {
	uint64_t id;             /* fabric-unique, never reused, from 1 */
	char *name;
	kvb_loop_fabric_t *fabric;
	kvb_loop_params_t p;
	loop_nic_t *nics;
	uint64_t rng;
	bool dead;
	GQueue ready;            /* loop_ev_t *, due and not polled */
	GPtrArray *delivered;    /* MSG events handed out by the last poll */
	GHashTable *mrs;         /* &id -> loop_mr_t * (owned) */
	GHashTable *conns;       /* &loop_conn_t.id -> kvb_conn_t * */
	GHashTable *incoming;    /* &id -> loop_incoming_t * (owned) */
	GHashTable *timers;      /* &timer_id -> loop_ev_t * (scheduled or ready) */
	uint64_t next_mr, next_conn, next_incoming, next_timer;
	char err[LOOP_ERR_MAX];
} loop_ep_t;

struct kvb_loop_fabric {
	uint64_t now;
	uint64_t seed;
	uint64_t seq;
	uint64_t next_ep;
	GPtrArray *heap;         /* loop_ev_t *, min-heap on (time, seq) */
	GHashTable *eps;         /* &id -> loop_ep_t * */
	GHashTable *names;       /* name -> loop_ep_t * */
};

static int loop_instance_open(kvb_backend_t *be, const void *args, kvb_err_t *err);

/* ---- helpers ---- */

static loop_ep_t *ep_of(kvb_backend_t *be)
{
	return (loop_ep_t *)be->priv;
}

/* be as a loop endpoint, or NULL when be is another backend's instance. */
static loop_ep_t *ep_checked(kvb_backend_t *be)
{
	if (!be || be->ops->instance_open != loop_instance_open)
		return NULL;
	return ep_of(be);
}

static loop_conn_t *lconn(kvb_conn_t *conn)
{
	return (loop_conn_t *)conn->priv;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static int ep_fail(loop_ep_t *ep, int code, const char *fmt, ...) KVB_PRINTF(3, 4);

static int ep_fail(loop_ep_t *ep, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ep->err, sizeof(ep->err), fmt, ap);
	va_end(ap);
	return code;
}

static uint64_t splitmix64(uint64_t *state)
{
	uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));
	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

static loop_ep_t *fabric_ep(const kvb_loop_fabric_t *f, uint64_t id)
{
	return id ? g_hash_table_lookup(f->eps, &id) : NULL;
}

static kvb_conn_t *ep_conn(loop_ep_t *ep, uint64_t id)
{
	return (ep && id) ? g_hash_table_lookup(ep->conns, &id) : NULL;
}

static loop_mr_t *ep_mr(loop_ep_t *ep, uint64_t id)
{
	return id ? g_hash_table_lookup(ep->mrs, &id) : NULL;
}

/* ceil(len * 1e9 / bw) without overflowing for any 64-bit len. */
static uint64_t xfer_duration(uint64_t len, uint64_t bw)
{
	unsigned __int128 ns = ((unsigned __int128)len * 1000000000u + bw - 1) / bw;
	return ns > UINT64_MAX ? UINT64_MAX : (uint64_t)ns;
}

/* ---- events and the heap ---- */

static void ev_free(gpointer p)
{
	loop_ev_t *ev = p;
	if (!ev)
		return;
	g_free(ev->buf);
	g_free(ev);
}

static loop_ev_t *ev_new(uint64_t ep_id, kvb_event_type_t type, uint64_t conn_id)
{
	loop_ev_t *ev = g_new0(loop_ev_t, 1);
	ev->heap_idx = SIZE_MAX;
	ev->ep_id = ep_id;
	ev->conn_id = conn_id;
	ev->ev.type = type;
	ev->ev.status = KVB_OK;
	return ev;
}

/* Give back what an accepted slice holds (NIC queue slot, MR use). */
static void xfer_release(loop_ep_t *ep, loop_ev_t *ev)
{
	if (!ev->is_xfer || !ev->x.accounted || !ep)
		return;
	ev->x.accounted = false;
	loop_nic_t *nic = &ep->nics[ev->x.local_nic];
	if (nic->inflight)
		nic->inflight--;
	loop_mr_t *mr = ep_mr(ep, ev->x.local_mr);
	if (mr && mr->inflight)
		mr->inflight--;
}

/* Drop an event that will never be delivered; ep is its owner (or NULL). */
static void ev_discard(loop_ep_t *ep, loop_ev_t *ev)
{
	if (ep && ev->timer_id)
		g_hash_table_remove(ep->timers, &ev->timer_id);
	xfer_release(ep, ev);
	ev_free(ev);
}

static bool ev_earlier(const loop_ev_t *a, const loop_ev_t *b)
{
	return a->time != b->time ? a->time < b->time : a->seq < b->seq;
}

static void heap_set(GPtrArray *h, size_t i, loop_ev_t *ev)
{
	h->pdata[i] = ev;
	ev->heap_idx = i;
}

static void heap_up(GPtrArray *h, size_t i)
{
	loop_ev_t *ev = h->pdata[i];
	while (i > 0) {
		size_t parent = (i - 1) / 2;
		loop_ev_t *p = h->pdata[parent];
		if (!ev_earlier(ev, p))
			break;
		heap_set(h, i, p);
		i = parent;
	}
	heap_set(h, i, ev);
}

static void heap_down(GPtrArray *h, size_t i)
{
	size_t n = h->len;
	loop_ev_t *ev = h->pdata[i];
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && ev_earlier(h->pdata[c + 1], h->pdata[c]))
			c++;
		if (!ev_earlier(h->pdata[c], ev))
			break;
		heap_set(h, i, h->pdata[c]);
		i = c;
	}
	heap_set(h, i, ev);
}

static loop_ev_t *heap_remove(GPtrArray *h, size_t i)
{
	loop_ev_t *ev = h->pdata[i];
	loop_ev_t *last = h->pdata[h->len - 1];
	g_ptr_array_set_size(h, h->len - 1);
	if (i < h->len) {
		heap_set(h, i, last);
		heap_up(h, i);
		heap_down(h, last->heap_idx);
	}
	ev->heap_idx = SIZE_MAX;
	return ev;
}

/* Schedule ev at time t (never before now). */
static void ev_schedule(kvb_loop_fabric_t *f, loop_ev_t *ev, uint64_t t)
{
	ev->time = t < f->now ? f->now : t;
	ev->seq = f->seq++;
	g_ptr_array_add(f->heap, ev);
	heap_up(f->heap, f->heap->len - 1);
}

typedef bool (*ev_pred_fn)(const loop_ev_t *ev, const void *data);

/* Remove every scheduled event of ep matching pred (O(heap), then
 * re-heapify): used when a conn or an endpoint goes away, so pending counts
 * and advance never see events nobody can receive. */
static void heap_purge(kvb_loop_fabric_t *f, loop_ep_t *ep, ev_pred_fn pred, const void *data)
{
	GPtrArray *h = f->heap;
	size_t w = 0;
	for (size_t r = 0; r < h->len; r++) {
		loop_ev_t *ev = h->pdata[r];
		if (ev->ep_id == ep->id && pred(ev, data)) {
			ev->heap_idx = SIZE_MAX;
			ev_discard(ep, ev);
			continue;
		}
		h->pdata[w++] = ev;
	}
	g_ptr_array_set_size(h, w);
	for (size_t i = 0; i < w; i++)
		((loop_ev_t *)h->pdata[i])->heap_idx = i;
	for (size_t i = w / 2; i-- > 0;)
		heap_down(h, i);
}

static void ready_purge(loop_ep_t *ep, ev_pred_fn pred, const void *data)
{
	GList *l = ep->ready.head;
	while (l) {
		GList *next = l->next;
		loop_ev_t *ev = l->data;
		if (pred(ev, data)) {
			g_queue_delete_link(&ep->ready, l);
			ev_discard(ep, ev);
		}
		l = next;
	}
}

static bool pred_all(const loop_ev_t *ev, const void *data)
{
	(void)ev;
	(void)data;
	return true;
}

static bool pred_conn(const loop_ev_t *ev, const void *data)
{
	return ev->conn_id == *(const uint64_t *)data;
}

/* CONN_DOWN to one conn, at most once per conn, after every message
 * already scheduled on it. */
static void schedule_conn_down(kvb_loop_fabric_t *f, uint64_t ep_id, uint64_t conn_id, int status,
			       uint64_t t)
{
	loop_ep_t *ep = fabric_ep(f, ep_id);
	if (!ep || ep->dead)
		return;
	kvb_conn_t *conn = ep_conn(ep, conn_id);
	if (!conn)
		return;
	loop_conn_t *lc = lconn(conn);
	if (lc->down_sched)
		return;
	lc->down_sched = true;
	if (t < lc->last_rx_ns)
		t = lc->last_rx_ns;
	lc->last_rx_ns = t;
	loop_ev_t *ev = ev_new(ep_id, KVB_EV_CONN_DOWN, conn_id);
	ev->ev.status = status;
	ev_schedule(f, ev, t);
}

/* The endpoint goes away (kill or close): peers of its conns and initiators
 * still waiting for an accept see CONN_DOWN. */
static void ep_disconnect(loop_ep_t *ep)
{
	kvb_loop_fabric_t *f = ep->fabric;
	uint64_t t = sat_add(f->now, ep->p.msg_latency_ns);
	GHashTableIter it;
	gpointer key, val;

	g_hash_table_iter_init(&it, ep->conns);
	while (g_hash_table_iter_next(&it, &key, &val)) {
		loop_conn_t *lc = lconn(val);
		if (lc->peer_ep)
			schedule_conn_down(f, lc->peer_ep, lc->peer_conn, KVB_ERR_PEER, t);
	}
	g_hash_table_iter_init(&it, ep->incoming);
	while (g_hash_table_iter_next(&it, &key, &val)) {
		loop_incoming_t *in = val;
		schedule_conn_down(f, in->from_ep, in->from_conn, KVB_ERR_PEER, t);
	}
	g_hash_table_remove_all(ep->incoming);
}

/* Drop everything scheduled for ep and everything it has not polled. */
static void ep_drop_events(loop_ep_t *ep)
{
	heap_purge(ep->fabric, ep, pred_all, NULL);
	ready_purge(ep, pred_all, NULL);
}

/* ---- the data path at completion time ---- */

/* Decide a slice's status when it becomes due, and copy its bytes when it
 * succeeds.  Everything that could have changed since the post (NICs, the
 * peer, its conn, its registration) is looked up now. */
static int xfer_finish(kvb_loop_fabric_t *f, loop_ep_t *ep, loop_ev_t *ev)
{
	loop_xfer_t *x = &ev->x;
	loop_nic_t *lnic = &ep->nics[x->local_nic];

	if (!lnic->up || lnic->down_epoch != x->local_epoch)
		return ep_fail(ep, KVB_ERR_TRANSPORT, "slice %#" PRIx64 ": local NIC loop%u went down",
			       ev->ev.cookie, x->local_nic);
	if (!ep_conn(ep, x->conn_id))
		return ep_fail(ep, KVB_ERR_PEER, "slice %#" PRIx64 ": conn closed", ev->ev.cookie);
	loop_ep_t *peer = fabric_ep(f, x->peer_ep);
	if (!peer || peer->dead)
		return ep_fail(ep, KVB_ERR_PEER, "slice %#" PRIx64 ": peer endpoint %" PRIu64 " is gone",
			       ev->ev.cookie, x->peer_ep);
	if (!ep_conn(peer, x->peer_conn))
		return ep_fail(ep, KVB_ERR_PEER, "slice %#" PRIx64 ": peer '%s' closed the conn",
			       ev->ev.cookie, peer->name);
	loop_nic_t *rnic = &peer->nics[x->remote_nic];
	if (!rnic->up || rnic->down_epoch != x->remote_epoch)
		return ep_fail(ep, KVB_ERR_TRANSPORT, "slice %#" PRIx64 ": NIC loop%u of '%s' went down",
			       ev->ev.cookie, x->remote_nic, peer->name);
	if (!x->rkey_ok || x->rkey_ep != peer->id)
		return ep_fail(ep, KVB_ERR_RANGE, "slice %#" PRIx64 ": rkey does not name a region of '%s'",
			       ev->ev.cookie, peer->name);
	loop_mr_t *rmr = ep_mr(peer, x->rkey_mr);
	if (!rmr)
		return ep_fail(ep, KVB_ERR_RANGE, "slice %#" PRIx64 ": region %" PRIu64 " of '%s' is not registered",
			       ev->ev.cookie, x->rkey_mr, peer->name);
	uint64_t base = (uint64_t)(uintptr_t)rmr->addr;
	if (x->remote_addr < base || x->len > rmr->len || x->remote_addr - base > rmr->len - x->len)
		return ep_fail(ep, KVB_ERR_RANGE,
			       "slice %#" PRIx64 ": remote [%#" PRIx64 ", +%" PRIu64 ") outside region %" PRIu64
			       " [%#" PRIx64 ", +%zu) of '%s'",
			       ev->ev.cookie, x->remote_addr, x->len, rmr->id, base, rmr->len, peer->name);

	uint8_t *remote = rmr->addr + (x->remote_addr - base);
	if (x->len) {
		if (x->opcode == KVB_XFER_WRITE)
			memmove(remote, x->local_ptr, x->len);
		else
			memmove(x->local_ptr, remote, x->len);
	}
	if (x->opcode == KVB_XFER_WRITE)
		lnic->tx_bytes += x->len;
	else
		rnic->tx_bytes += x->len;
	return KVB_OK;
}

/* An event became due: update the conn state it reports, finish a slice,
 * and queue it for event_poll. */
static void ev_due(kvb_loop_fabric_t *f, loop_ev_t *ev)
{
	loop_ep_t *ep = fabric_ep(f, ev->ep_id);
	if (!ep || ep->dead) {
		ev_discard(ep, ev);
		return;
	}
	if (ev->conn_id) {
		kvb_conn_t *conn = ep_conn(ep, ev->conn_id);
		if (!conn) {
			ev_discard(ep, ev);
			return;
		}
		loop_conn_t *lc = lconn(conn);
		if (ev->ev.type == KVB_EV_CONN_UP && lc->state == LOOP_CONN_CONNECTING)
			lc->state = LOOP_CONN_UP;
		else if (ev->ev.type == KVB_EV_CONN_DOWN)
			lc->state = LOOP_CONN_DOWN;
	}
	if (ev->is_xfer) {
		xfer_release(ep, ev);
		if (ev->ev.status == KVB_OK)
			ev->ev.status = xfer_finish(f, ep, ev);
	}
	g_queue_push_tail(&ep->ready, ev);
}

/* ---- fabric ---- */

kvb_loop_fabric_t *kvb_loop_fabric_new(uint64_t seed)
{
	kvb_loop_fabric_t *f = g_new0(kvb_loop_fabric_t, 1);
	f->seed = seed;
	f->heap = g_ptr_array_new();
	f->eps = g_hash_table_new(g_int64_hash, g_int64_equal);
	f->names = g_hash_table_new(g_str_hash, g_str_equal);
	return f;
}

void kvb_loop_fabric_free(kvb_loop_fabric_t *f)
{
	if (!f)
		return;
	if (g_hash_table_size(f->eps) != 0) {
		g_critical("kvb_loop_fabric_free: %u endpoint(s) still open; fabric not freed",
			   g_hash_table_size(f->eps));
		return;
	}
	for (size_t i = 0; i < f->heap->len; i++)
		ev_free(f->heap->pdata[i]);
	g_ptr_array_free(f->heap, TRUE);
	g_hash_table_destroy(f->eps);
	g_hash_table_destroy(f->names);
	g_free(f);
}

uint64_t kvb_loop_fabric_now(const kvb_loop_fabric_t *f)
{
	return f ? f->now : 0;
}

bool kvb_loop_fabric_advance(kvb_loop_fabric_t *f)
{
	if (!f || f->heap->len == 0)
		return false;
	uint64_t t = ((loop_ev_t *)f->heap->pdata[0])->time;
	if (t > f->now)
		f->now = t;
	while (f->heap->len && ((loop_ev_t *)f->heap->pdata[0])->time == t)
		ev_due(f, heap_remove(f->heap, 0));
	return true;
}

bool kvb_loop_fabric_next(const kvb_loop_fabric_t *f, uint64_t *t)
{
	if (!f || f->heap->len == 0)
		return false;
	*t = ((loop_ev_t *)f->heap->pdata[0])->time;
	return true;
}

bool kvb_loop_fabric_advance_to(kvb_loop_fabric_t *f, uint64_t t)
{
	if (!f)
		return false;
	if (f->heap->len && ((loop_ev_t *)f->heap->pdata[0])->time <= t)
		return kvb_loop_fabric_advance(f);
	if (t <= f->now)
		return false;
	f->now = t;
	return true;
}

uint64_t kvb_loop_fabric_pending(const kvb_loop_fabric_t *f)
{
	if (!f)
		return 0;
	uint64_t n = f->heap->len;
	GHashTableIter it;
	gpointer key, val;
	g_hash_table_iter_init(&it, f->eps);
	while (g_hash_table_iter_next(&it, &key, &val))
		n += g_queue_get_length(&((loop_ep_t *)val)->ready);
	return n;
}

void kvb_loop_params_default(kvb_loop_params_t *p)
{
	if (!p)
		return;
	p->n_nics = 1;
	p->nic_bandwidth_Bps = UINT64_C(25000000000);
	p->latency_ns = 2000;
	p->msg_latency_ns = 10000;
	p->queue_depth = 256;
	p->numa_node = -1;
}

/* ---- lifecycle ---- */

static int loop_instance_open(kvb_backend_t *be, const void *args_v, kvb_err_t *err)
{
	const kvb_loop_args_t *args = args_v;
	loop_ep_t *ep = ep_of(be);
	kvb_loop_params_t p;

	if (!args || !args->fabric || !args->name || !args->name[0])
		return kvb_err_set(err, KVB_ERR_INVALID, "loop: args need a fabric and a non-empty name");
	if (args->params)
		p = *args->params;
	else
		kvb_loop_params_default(&p);
	if (p.n_nics == 0 || p.n_nics > KVB_MAX_NICS)
		return kvb_err_set(err, KVB_ERR_INVALID, "loop '%s': n_nics %u outside 1..%u",
				   args->name, p.n_nics, KVB_MAX_NICS);
	if (p.nic_bandwidth_Bps == 0)
		return kvb_err_set(err, KVB_ERR_INVALID, "loop '%s': nic_bandwidth_Bps is 0", args->name);
	if (p.queue_depth == 0)
		return kvb_err_set(err, KVB_ERR_INVALID, "loop '%s': queue_depth is 0", args->name);

	kvb_loop_fabric_t *f = args->fabric;
	if (g_hash_table_contains(f->names, args->name))
		return kvb_err_set(err, KVB_ERR_EXISTS, "loop: endpoint name '%s' already on the fabric",
				   args->name);

	ep->id = ++f->next_ep;
	ep->name = g_strdup(args->name);
	ep->fabric = f;
	ep->p = p;
	ep->nics = g_new0(loop_nic_t, p.n_nics);
	for (uint32_t i = 0; i < p.n_nics; i++)
		ep->nics[i].up = true;
	ep->rng = f->seed ^ (ep->id * UINT64_C(0xD1B54A32D192ED03));
	(void)splitmix64(&ep->rng);
	g_queue_init(&ep->ready);
	ep->delivered = g_ptr_array_new_with_free_func(ev_free);
	ep->mrs = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, g_free);
	ep->conns = g_hash_table_new(g_int64_hash, g_int64_equal);
	ep->incoming = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, g_free);
	ep->timers = g_hash_table_new(g_int64_hash, g_int64_equal);
	g_hash_table_insert(f->eps, &ep->id, ep);
	g_hash_table_insert(f->names, ep->name, ep);
	return KVB_OK;
}

/* Discard everything of the endpoint: peers see CONN_DOWN (unless a kill
 * already told them), no event of it survives, conns left open by the core
 * are forgotten (the core owns their memory). */
static void loop_instance_close(kvb_backend_t *be)
{
	loop_ep_t *ep = ep_of(be);
	kvb_loop_fabric_t *f = ep->fabric;

	if (!ep->dead)
		ep_disconnect(ep);
	ep_drop_events(ep);
	g_ptr_array_free(ep->delivered, TRUE);
	g_hash_table_remove(f->eps, &ep->id);
	g_hash_table_remove(f->names, ep->name);
	g_hash_table_destroy(ep->timers);
	g_hash_table_destroy(ep->incoming);
	g_hash_table_destroy(ep->conns);
	g_hash_table_destroy(ep->mrs);
	g_free(ep->nics);
	g_free(ep->name);
}

/* ---- environment ---- */

static uint64_t loop_clock_now_ns(kvb_backend_t *be)
{
	return ep_of(be)->fabric->now;
}

static int loop_timer_arm(kvb_backend_t *be, uint64_t deadline_ns, uint64_t cookie, uint64_t *timer_id)
{
	loop_ep_t *ep = ep_of(be);
	if (ep->dead)
		return ep_fail(ep, KVB_ERR_STATE, "timer_arm: endpoint '%s' was killed", ep->name);
	loop_ev_t *ev = ev_new(ep->id, KVB_EV_TIMER, 0);
	ev->ev.cookie = cookie;
	ev->timer_id = ++ep->next_timer;
	g_hash_table_insert(ep->timers, &ev->timer_id, ev);
	ev_schedule(ep->fabric, ev, deadline_ns);
	if (timer_id)
		*timer_id = ev->timer_id;
	return KVB_OK;
}

/* Cancelled timers are removed wherever they are (heap or ready queue), so
 * a cancelled timer is never delivered here. */
static int loop_timer_cancel(kvb_backend_t *be, uint64_t timer_id)
{
	loop_ep_t *ep = ep_of(be);
	loop_ev_t *ev = timer_id ? g_hash_table_lookup(ep->timers, &timer_id) : NULL;
	if (!ev)
		return ep_fail(ep, KVB_ERR_NOT_FOUND, "timer_cancel: no pending timer %" PRIu64, timer_id);
	if (ev->heap_idx != SIZE_MAX)
		heap_remove(ep->fabric->heap, ev->heap_idx);
	else
		g_queue_remove(&ep->ready, ev);
	ev_discard(ep, ev);
	return KVB_OK;
}

static int loop_random_fill(kvb_backend_t *be, void *buf, size_t len)
{
	loop_ep_t *ep = ep_of(be);
	uint8_t *p = buf;
	if (!buf && len)
		return ep_fail(ep, KVB_ERR_INVALID, "random_fill: buf is NULL");
	while (len) {
		uint64_t r = splitmix64(&ep->rng);
		size_t k = len < sizeof(r) ? len : sizeof(r);
		memcpy(p, &r, k);
		p += k;
		len -= k;
	}
	return KVB_OK;
}

/* ---- NICs ---- */

static uint32_t loop_nic_count(kvb_backend_t *be)
{
	return ep_of(be)->p.n_nics;
}

static int loop_nic_query(kvb_backend_t *be, uint32_t index, kvb_nic_info_t *info)
{
	loop_ep_t *ep = ep_of(be);
	if (index >= ep->p.n_nics)
		return ep_fail(ep, KVB_ERR_NOT_FOUND, "nic_query: NIC %u of '%s' (it has %u)", index,
			       ep->name, ep->p.n_nics);
	if (!info)
		return ep_fail(ep, KVB_ERR_INVALID, "nic_query: info is NULL");
	memset(info, 0, sizeof(*info));
	snprintf(info->name, sizeof(info->name), "loop%u", index);
	info->bandwidth_bps = ep->p.nic_bandwidth_Bps > UINT64_MAX / 8 ? UINT64_MAX
								    : ep->p.nic_bandwidth_Bps * 8;
	info->numa_node = ep->p.numa_node;
	return KVB_OK;
}

/* ---- memory registration ---- */

static int loop_mr_reg(kvb_backend_t *be, void *addr, size_t len, const kvb_mem_attr_t *attr,
		       void **mr_out, kvb_rkey_t *rkey)
{
	loop_ep_t *ep = ep_of(be);
	if (!addr || len == 0 || !mr_out)
		return ep_fail(ep, KVB_ERR_INVALID, "mr_reg: addr %p, len %zu, mr %p", addr, len,
			       (void *)mr_out);
	loop_mr_t *mr = g_new0(loop_mr_t, 1);
	mr->id = ++ep->next_mr;
	mr->addr = addr;
	mr->len = len;
	g_hash_table_insert(ep->mrs, &mr->id, mr);
	*mr_out = (void *)(uintptr_t)mr->id;
	if (rkey) {
		memset(rkey, 0, sizeof(*rkey));
		rkey->len = LOOP_RKEY_LEN;
		memcpy(rkey->bytes, &mr->id, 8);
		memcpy(rkey->bytes + 8, &ep->id, 8);
	}
	return KVB_OK;
}

static int loop_mr_dereg(kvb_backend_t *be, void *handle)
{
	loop_ep_t *ep = ep_of(be);
	uint64_t id = (uint64_t)(uintptr_t)handle;
	loop_mr_t *mr = ep_mr(ep, id);
	if (!mr)
		return ep_fail(ep, KVB_ERR_NOT_FOUND, "mr_dereg: no region %" PRIu64 " on '%s'", id, ep->name);
	if (mr->inflight)
		return ep_fail(ep, KVB_ERR_STATE, "mr_dereg: region %" PRIu64 " has %" PRIu64 " slice(s) in flight",
			       id, mr->inflight);
	g_hash_table_remove(ep->mrs, &id);
	return KVB_OK;
}

/* ---- connections ---- */

static void conn_register(loop_ep_t *ep, kvb_conn_t *conn, loop_conn_state_t state)
{
	loop_conn_t *lc = lconn(conn);
	memset(lc, 0, sizeof(*lc));
	lc->id = ++ep->next_conn;
	lc->state = state;
	g_hash_table_insert(ep->conns, &lc->id, conn);
}

static int loop_conn_connect(kvb_backend_t *be, kvb_conn_t *conn, const char *peer_address)
{
	loop_ep_t *ep = ep_of(be);
	kvb_loop_fabric_t *f = ep->fabric;
	if (ep->dead)
		return ep_fail(ep, KVB_ERR_STATE, "conn_connect: endpoint '%s' was killed", ep->name);
	if (!conn || !peer_address)
		return ep_fail(ep, KVB_ERR_INVALID, "conn_connect: conn or address is NULL");
	if (lconn(conn)->state != LOOP_CONN_IDLE)
		return ep_fail(ep, KVB_ERR_STATE, "conn_connect: conn already used (state %d)",
			       (int)lconn(conn)->state);

	conn_register(ep, conn, LOOP_CONN_CONNECTING);
	loop_conn_t *lc = lconn(conn);
	uint64_t t = sat_add(f->now, ep->p.msg_latency_ns);
	loop_ep_t *target = g_hash_table_lookup(f->names, peer_address);
	if (!target || target->dead) {
		ep_fail(ep, KVB_ERR_PEER, "conn_connect: no live endpoint '%s'", peer_address);
		schedule_conn_down(f, ep->id, lc->id, KVB_ERR_PEER, t);
		return KVB_INPROGRESS;
	}
	loop_incoming_t *in = g_new0(loop_incoming_t, 1);
	in->id = ++target->next_incoming;
	in->from_ep = ep->id;
	in->from_conn = lc->id;
	g_hash_table_insert(target->incoming, &in->id, in);
	loop_ev_t *ev = ev_new(target->id, KVB_EV_CONN_INCOMING, 0);
	ev->ev.incoming_id = in->id;
	ev_schedule(f, ev, t);
	return KVB_INPROGRESS;
}

/* Pair the accepted conn with the initiator's.  When the initiator has gone
 * meanwhile the accept still succeeds and the new conn sees CONN_DOWN. */
static int loop_conn_accept(kvb_backend_t *be, kvb_conn_t *conn, uint64_t incoming_id)
{
	loop_ep_t *ep = ep_of(be);
	kvb_loop_fabric_t *f = ep->fabric;
	if (ep->dead)
		return ep_fail(ep, KVB_ERR_STATE, "conn_accept: endpoint '%s' was killed", ep->name);
	if (!conn)
		return ep_fail(ep, KVB_ERR_INVALID, "conn_accept: conn is NULL");
	if (lconn(conn)->state != LOOP_CONN_IDLE)
		return ep_fail(ep, KVB_ERR_STATE, "conn_accept: conn already used (state %d)",
			       (int)lconn(conn)->state);
	loop_incoming_t *in = g_hash_table_lookup(ep->incoming, &incoming_id);
	if (!in)
		return ep_fail(ep, KVB_ERR_NOT_FOUND, "conn_accept: no incoming connection %" PRIu64,
			       incoming_id);
	uint64_t from_ep = in->from_ep, from_conn = in->from_conn;
	g_hash_table_remove(ep->incoming, &incoming_id);

	conn_register(ep, conn, LOOP_CONN_UP);
	loop_conn_t *lc = lconn(conn);
	uint64_t t = sat_add(f->now, ep->p.msg_latency_ns);
	loop_ep_t *init = fabric_ep(f, from_ep);
	kvb_conn_t *iconn = (init && !init->dead) ? ep_conn(init, from_conn) : NULL;
	loop_conn_t *ilc = iconn ? lconn(iconn) : NULL;
	if (!ilc || ilc->state != LOOP_CONN_CONNECTING || ilc->down_sched) {
		schedule_conn_down(f, ep->id, lc->id, KVB_ERR_PEER, t);
		return KVB_OK;
	}
	lc->peer_ep = from_ep;
	lc->peer_conn = from_conn;
	ilc->peer_ep = ep->id;
	ilc->peer_conn = lc->id;
	if (t < ilc->last_rx_ns)
		t = ilc->last_rx_ns;
	ilc->last_rx_ns = t;
	ev_schedule(f, ev_new(from_ep, KVB_EV_CONN_UP, from_conn), t);
	return KVB_OK;
}

static void loop_conn_close(kvb_backend_t *be, kvb_conn_t *conn)
{
	loop_ep_t *ep = ep_of(be);
	if (!conn)
		return;
	loop_conn_t *lc = lconn(conn);
	if (!lc->id || ep_conn(ep, lc->id) != conn)
		return;
	uint64_t id = lc->id;
	g_hash_table_remove(ep->conns, &id);
	heap_purge(ep->fabric, ep, pred_conn, &id);
	ready_purge(ep, pred_conn, &id);
	if (lc->peer_ep && !ep->dead)
		schedule_conn_down(ep->fabric, lc->peer_ep, lc->peer_conn, KVB_ERR_PEER,
				   sat_add(ep->fabric->now, ep->p.msg_latency_ns));
	lc->state = LOOP_CONN_CLOSED;
	lc->id = 0;
}

/* ---- data path ---- */

static int loop_xfer_post(kvb_backend_t *be, kvb_conn_t *conn, const kvb_slice_op_t *ops, size_t n,
			  size_t *n_posted)
{
	loop_ep_t *ep = ep_of(be);
	kvb_loop_fabric_t *f = ep->fabric;
	size_t dummy;
	if (!n_posted)
		n_posted = &dummy;
	*n_posted = 0;
	if (ep->dead)
		return ep_fail(ep, KVB_ERR_STATE, "xfer_post: endpoint '%s' was killed", ep->name);
	if (!conn || (!ops && n))
		return ep_fail(ep, KVB_ERR_INVALID, "xfer_post: conn or ops is NULL");
	loop_conn_t *lc = lconn(conn);
	if (!lc->id || ep_conn(ep, lc->id) != conn || lc->state != LOOP_CONN_UP)
		return ep_fail(ep, KVB_ERR_PEER, "xfer_post: conn %" PRIu64 " is not up (state %d)", lc->id,
			       (int)lc->state);
	loop_ep_t *peer = fabric_ep(f, lc->peer_ep);
	bool peer_ok = peer && !peer->dead && ep_conn(peer, lc->peer_conn);

	for (size_t i = 0; i < n; i++) {
		const kvb_slice_op_t *op = &ops[i];
		if (op->opcode != KVB_XFER_WRITE && op->opcode != KVB_XFER_READ)
			return ep_fail(ep, KVB_ERR_INVALID, "xfer_post: slice %zu: opcode %d", i, (int)op->opcode);
		if (op->local_nic >= ep->p.n_nics)
			return ep_fail(ep, KVB_ERR_NOT_FOUND, "xfer_post: slice %zu: local NIC %u (have %u)", i,
				       op->local_nic, ep->p.n_nics);
		loop_mr_t *mr = ep_mr(ep, (uint64_t)(uintptr_t)op->local_mr);
		if (!mr)
			return ep_fail(ep, KVB_ERR_INVALID, "xfer_post: slice %zu: unknown local_mr %p", i,
				       op->local_mr);
		uint64_t base = (uint64_t)(uintptr_t)mr->addr;
		if (op->local_addr < base || op->len > mr->len || op->local_addr - base > mr->len - op->len)
			return ep_fail(ep, KVB_ERR_RANGE,
				       "xfer_post: slice %zu: local [%#" PRIx64 ", +%" PRIu64 ") outside region %" PRIu64
				       " [%#" PRIx64 ", +%zu)",
				       i, op->local_addr, op->len, mr->id, base, mr->len);
		if (!op->remote_key)
			return ep_fail(ep, KVB_ERR_INVALID, "xfer_post: slice %zu: remote_key is NULL", i);
		if (op->n_slices == 0 || op->len == 0 ||
		    (op->n_slices > 1 && (op->slice_len == 0 ||
					  (uint64_t)(op->n_slices - 1) >= op->len / op->slice_len + (op->len % op->slice_len != 0))))
			return ep_fail(ep, KVB_ERR_INVALID,
				       "xfer_post: slice %zu: %u slices of %" PRIu64 " bytes do not cut %" PRIu64 " bytes",
				       i, op->n_slices, op->slice_len, op->len);
		loop_nic_t *nic = &ep->nics[op->local_nic];
		if (nic->inflight >= ep->p.queue_depth)
			return ep_fail(ep, KVB_ERR_NO_RESOURCE, "xfer_post: slice %zu: NIC loop%u queue full (%u)",
				       i, op->local_nic, ep->p.queue_depth);

		loop_ev_t *ev = ev_new(ep->id, KVB_EV_XFER_DONE, 0);
		loop_xfer_t *x = &ev->x;
		ev->is_xfer = true;
		ev->ev.cookie = op->cookie;
		ev->ev.nic = op->local_nic;
		x->opcode = op->opcode;
		x->local_nic = op->local_nic;
		x->local_epoch = nic->down_epoch;
		x->local_mr = mr->id;
		x->local_ptr = mr->addr + (op->local_addr - base);
		x->remote_addr = op->remote_addr;
		x->len = op->len;
		x->conn_id = lc->id;
		x->peer_ep = lc->peer_ep;
		x->peer_conn = lc->peer_conn;
		if (op->remote_key->len == LOOP_RKEY_LEN) {
			x->rkey_ok = true;
			memcpy(&x->rkey_mr, op->remote_key->bytes, 8);
			memcpy(&x->rkey_ep, op->remote_key->bytes + 8, 8);
		}

		uint64_t done;
		loop_nic_t *rnic = NULL;
		if (peer_ok) {
			x->remote_nic = op->remote_nic % peer->p.n_nics;
			rnic = &peer->nics[x->remote_nic];
			x->remote_epoch = rnic->down_epoch;
		}
		if (!nic->up || !rnic || !rnic->up) {
			ev->ev.status = ep_fail(ep, rnic || !nic->up ? KVB_ERR_TRANSPORT : KVB_ERR_PEER,
						"slice %#" PRIx64 ": %s", op->cookie,
						!nic->up ? "local NIC down" : !rnic ? "peer gone" : "remote NIC down");
			done = sat_add(f->now, ep->p.latency_ns);
		} else {
			uint64_t bw = MIN(ep->p.nic_bandwidth_Bps, peer->p.nic_bandwidth_Bps);
			uint64_t start = MAX(f->now, MAX(nic->busy_until, rnic->busy_until));
			uint64_t end = sat_add(start, xfer_duration(op->len, bw));
			nic->busy_until = rnic->busy_until = end;
			done = sat_add(end, ep->p.latency_ns);
		}
		nic->inflight++;
		mr->inflight++;
		x->accounted = true;
		ev_schedule(f, ev, done);
		*n_posted = i + 1;
	}
	return KVB_OK;
}

static int loop_msg_send(kvb_backend_t *be, kvb_conn_t *conn, const void *buf, size_t len)
{
	loop_ep_t *ep = ep_of(be);
	kvb_loop_fabric_t *f = ep->fabric;
	if (ep->dead)
		return ep_fail(ep, KVB_ERR_STATE, "msg_send: endpoint '%s' was killed", ep->name);
	if (!conn || (!buf && len))
		return ep_fail(ep, KVB_ERR_INVALID, "msg_send: conn or buf is NULL");
	if (len > KVB_MSG_MAX)
		return ep_fail(ep, KVB_ERR_INVALID, "msg_send: %zu bytes (max %u)", len, KVB_MSG_MAX);
	loop_conn_t *lc = lconn(conn);
	if (!lc->id || ep_conn(ep, lc->id) != conn || lc->state != LOOP_CONN_UP)
		return ep_fail(ep, KVB_ERR_PEER, "msg_send: conn %" PRIu64 " is not up (state %d)", lc->id,
			       (int)lc->state);
	loop_ep_t *peer = fabric_ep(f, lc->peer_ep);
	kvb_conn_t *pconn = (peer && !peer->dead) ? ep_conn(peer, lc->peer_conn) : NULL;
	if (!pconn)
		return ep_fail(ep, KVB_ERR_PEER, "msg_send: the peer of conn %" PRIu64 " is gone", lc->id);
	loop_conn_t *plc = lconn(pconn);
	uint64_t t = MAX(sat_add(f->now, ep->p.msg_latency_ns), plc->last_rx_ns);
	plc->last_rx_ns = t;
	loop_ev_t *ev = ev_new(peer->id, KVB_EV_MSG, plc->id);
	ev->buf = len ? g_memdup2(buf, len) : NULL;
	ev->ev.len = len;
	ev_schedule(f, ev, t);
	return KVB_OK;
}

/* Hand out ready events.  MSG payloads stay valid until the next call, so
 * last round's delivered messages are freed first. */
static int loop_event_poll(kvb_backend_t *be, kvb_event_t *events, int max)
{
	loop_ep_t *ep = ep_of(be);
	g_ptr_array_set_size(ep->delivered, 0);
	if (ep->dead || !events || max <= 0)
		return 0;
	int n = 0;
	while (n < max && !g_queue_is_empty(&ep->ready)) {
		loop_ev_t *ev = g_queue_pop_head(&ep->ready);
		kvb_conn_t *conn = NULL;
		if (ev->conn_id && !(conn = ep_conn(ep, ev->conn_id))) {
			ev_discard(ep, ev);
			continue;
		}
		if (ev->timer_id) {
			g_hash_table_remove(ep->timers, &ev->timer_id);
			ev->timer_id = 0;
		}
		events[n] = ev->ev;
		events[n].conn = conn;
		if (ev->ev.type == KVB_EV_MSG) {
			events[n].data = ev->buf;
			g_ptr_array_add(ep->delivered, ev);
		} else {
			ev_free(ev);
		}
		n++;
	}
	return n;
}

static const char *loop_last_error(kvb_backend_t *be)
{
	return ep_of(be)->err;
}

static int loop_ext_get(kvb_backend_t *be, const char *name, const void **ext)
{
	return ep_fail(ep_of(be), KVB_ERR_NOT_FOUND, "ext_get: no extension '%s' in loop",
		       name ? name : "(null)");
}

static const kvb_backend_ops_t loop_ops = {
	.abi = KVB_BACKEND_ABI,
	.size = sizeof(kvb_backend_ops_t),
	.name = "loop",
	.instance_size = sizeof(loop_ep_t),
	.conn_size = sizeof(loop_conn_t),
	.instance_open = loop_instance_open,
	.instance_close = loop_instance_close,
	.clock_now_ns = loop_clock_now_ns,
	.timer_arm = loop_timer_arm,
	.timer_cancel = loop_timer_cancel,
	.random_fill = loop_random_fill,
	.nic_count = loop_nic_count,
	.nic_query = loop_nic_query,
	.mr_reg = loop_mr_reg,
	.mr_dereg = loop_mr_dereg,
	.conn_connect = loop_conn_connect,
	.conn_accept = loop_conn_accept,
	.conn_close = loop_conn_close,
	.xfer_post = loop_xfer_post,
	.msg_send = loop_msg_send,
	.event_poll = loop_event_poll,
	.last_error = loop_last_error,
	.ext_get = loop_ext_get,
};

const kvb_backend_ops_t *kvb_loop_backend_ops(void)
{
	return &loop_ops;
}

int kvb_loop_open(kvb_loop_fabric_t *fabric, const char *name, const kvb_loop_params_t *params,
		  kvb_backend_t **out, kvb_err_t *err)
{
	kvb_loop_args_t args = {.fabric = fabric, .name = name, .params = params};
	return kvb_backend_open(&loop_ops, &args, out, err);
}

/* ---- loop-specific controls ---- */

int kvb_loop_set_nic_up(kvb_backend_t *be, uint32_t nic, bool up)
{
	loop_ep_t *ep = ep_checked(be);
	if (!ep)
		return KVB_ERR_INVALID;
	if (nic >= ep->p.n_nics)
		return ep_fail(ep, KVB_ERR_NOT_FOUND, "set_nic_up: NIC %u of '%s' (it has %u)", nic,
			       ep->name, ep->p.n_nics);
	if (ep->nics[nic].up && !up)
		ep->nics[nic].down_epoch++;
	ep->nics[nic].up = up;
	return KVB_OK;
}

/* A crash: peers learn after msg_latency, slices into the endpoint fail when
 * they complete, and nothing more is delivered to it. */
int kvb_loop_kill(kvb_backend_t *be)
{
	loop_ep_t *ep = ep_checked(be);
	if (!ep)
		return KVB_ERR_INVALID;
	if (ep->dead)
		return KVB_OK;
	ep_disconnect(ep);
	ep->dead = true;
	ep_drop_events(ep);
	return KVB_OK;
}

uint64_t kvb_loop_nic_tx_bytes(kvb_backend_t *be, uint32_t nic)
{
	loop_ep_t *ep = ep_checked(be);
	if (!ep || nic >= ep->p.n_nics)
		return 0;
	return ep->nics[nic].tx_bytes;
}
