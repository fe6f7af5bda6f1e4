/*
 * The sim backend: the backend vtable on SimGrid's C API (see
 * include/kvbridge/sim.h for the model).
 *
 * Everything runs inside SimGrid's sequential scheduler (contexts/nthreads
 * 1), so shared state needs no locks: an actor runs until it blocks in a
 * SimGrid call.  The parties:
 *  - the owner actor of each endpoint (the study's node worker) calls the
 *    vtable ops and kvb_sim_wait();
 *  - a listener actor per endpoint receives control messages from its
 *    mailbox and schedules them as MSG events;
 *  - a queue-pair actor per busy queue pair runs its flows with
 *    sg_host_sendto and schedules the XFER_DONE events.
 * Events are scheduled into the endpoint's heap at "now + latency" and the
 * owner is woken if it waits; kvb_sim_wait moves due events to the ready
 * queue that event_poll drains.
 */
#include "config.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <simgrid/actor.h>
#include <simgrid/comm.h>
#include <simgrid/engine.h>
#include <simgrid/host.h>
#include <simgrid/mailbox.h>
#include <simgrid/semaphore.h>
#include <kvbridge/sim.h>

#include "kvb_heap.h"

#define SIM_RKEY_LEN 16u

typedef struct sim_ep sim_ep_t;

typedef enum conn_state {
	CONN_IDLE = 0,
	CONN_CONNECTING = 1,
	CONN_UP = 2,
	CONN_DOWN = 3,
	CONN_CLOSED = 4,
} conn_state_t;

/* kvb_conn_t.priv */
typedef struct sim_conn {
	uint64_t id;
	uint64_t peer_ep;
	uint64_t peer_conn;
	conn_state_t state;
} sim_conn_t;

typedef struct sched_item {
	uint64_t t;
	uint64_t seq;
	bool cancelled;
	bool is_timer;
	uint64_t timer_id;
	uint64_t conn_id;       /* 0 when the event names no conn */
	kvb_event_t ev;
	void *owned;            /* MSG payload, freed after delivery */
} sched_item_t;

typedef struct sim_mr {
	uint64_t id;
	uint64_t addr, len;
} sim_mr_t;

struct sim_ep {
	kvb_sim_world_t *w;
	kvb_backend_t *be;
	uint64_t id;
	char *name;
	sg_host_t nics[KVB_MAX_NICS];
	uint32_t n_nics;
	GPtrArray *heap;        /* sched_item_t*, min-heap by (t, seq) */
	uint64_t seq;
	GHashTable *timers;     /* timer id -> sched_item_t* (scheduled, not yet ready) */
	uint64_t next_timer_id;
	GQueue ready;           /* sched_item_t* due, not yet polled */
	GPtrArray *delivered;   /* items returned by the last poll */
	sg_sem_t sem;
	bool waiting, signaled, woken;
	GHashTable *conns;      /* conn id -> kvb_conn_t* */
	uint64_t next_conn_id;
	GHashTable *mrs;        /* mr id -> sim_mr_t* */
	uint64_t next_mr_id;
	sg_mailbox_t mbox;
	sg_actor_t listener;
	GPtrArray *to_start;    /* qp_t* with ops and no actor yet */
	bool dead;
	bool stopping;          /* shutdown message sent to the listener */
	uint64_t rng;
	char err[256];
};

/* kvb_backend_t.priv */
typedef struct sim_priv {
	sim_ep_t *ep;
} sim_priv_t;

typedef struct op_rec {
	uint64_t cookie;
	uint32_t nic;
	uint64_t len;
	uint32_t n_slices;
	uint64_t slice_len;
} op_rec_t;

typedef struct qp_key {
	uint64_t src_ep, conn_id, stream;
	uint32_t lnic, rnic;
} qp_key_t;

typedef struct qp {
	qp_key_t key;
	kvb_sim_world_t *w;
	sim_ep_t *src;
	uint64_t dst_ep;
	sg_host_t src_host, dst_host;
	GQueue pending;         /* op_rec_t* posted, not started */
	GQueue running;         /* op_rec_t* in the current flow(s) */
	sg_actor_t actor;
	bool queued;            /* in its endpoint's to_start list */
	uint32_t flows_open;    /* flows of this qp in flight (0 or 1) */
} qp_t;

typedef struct nic_stat {
	double tx, rx;
	bool down;
} nic_stat_t;

typedef struct incoming {
	uint64_t from_ep, from_conn;
} incoming_t;

/* A control message in flight through a mailbox. */
typedef struct sim_msg {
	uint64_t dst_ep, dst_conn;
	size_t len;
	uint8_t data[];
} sim_msg_t;

struct kvb_sim_world {
	kvb_sim_world_params_t p;
	uint64_t latency_ns;
	GHashTable *eps_by_name;  /* name -> sim_ep_t* */
	GHashTable *eps_by_id;    /* id -> sim_ep_t* */
	uint64_t next_ep_id;
	GHashTable *qps;          /* qp_key_t* -> qp_t* */
	GHashTable *nic_stats;    /* sg_host_t -> nic_stat_t* */
	GHashTable *incoming;     /* id -> incoming_t* */
	uint64_t next_incoming;
	kvb_sim_stats_t stats;
	uint64_t flows_in_flight;
	kvb_sim_post_hook_fn post_hook;
	void *post_hook_user;
};

/* ---- helpers ------------------------------------------------------------ */

static sim_ep_t *ep_of(kvb_backend_t *be)
{
	return ((sim_priv_t *)(void *)be->priv)->ep;
}

static sim_conn_t *sconn(kvb_conn_t *conn)
{
	return (sim_conn_t *)(void *)conn->priv;
}

static int ep_fail(sim_ep_t *ep, int code, const char *fmt, ...) KVB_PRINTF(3, 4);

static int ep_fail(sim_ep_t *ep, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ep->err, sizeof(ep->err), fmt, ap);
	va_end(ap);
	return code;
}

static uint64_t now_ns(void)
{
	return (uint64_t)llround(simgrid_get_clock() * 1e9);
}

static guint u64_hash(gconstpointer p)
{
	uint64_t v = *(const uint64_t *)p;
	return (guint)(v ^ (v >> 32));
}

static gboolean u64_equal(gconstpointer a, gconstpointer b)
{
	return *(const uint64_t *)a == *(const uint64_t *)b;
}

static uint64_t *u64_key(uint64_t v)
{
	uint64_t *k = g_new(uint64_t, 1);
	*k = v;
	return k;
}

static guint qp_hash(gconstpointer p)
{
	const qp_key_t *k = p;
	uint64_t h = k->src_ep * 0x9e3779b97f4a7c15ull ^ k->conn_id * 0xbf58476d1ce4e5b9ull ^
		     k->stream * 0x94d049bb133111ebull ^ ((uint64_t)k->lnic << 32 | k->rnic);
	return (guint)(h ^ (h >> 32));
}

static gboolean qp_equal(gconstpointer a, gconstpointer b)
{
	return memcmp(a, b, sizeof(qp_key_t)) == 0;
}

static nic_stat_t *nic_stat(kvb_sim_world_t *w, sg_host_t host)
{
	nic_stat_t *st = g_hash_table_lookup(w->nic_stats, host);
	if (!st) {
		st = g_new0(nic_stat_t, 1);
		g_hash_table_insert(w->nic_stats, host, st);
	}
	return st;
}

static sim_ep_t *ep_by_id(kvb_sim_world_t *w, uint64_t id)
{
	return g_hash_table_lookup(w->eps_by_id, &id);
}

/* ---- scheduling --------------------------------------------------------- */

static bool item_before(gconstpointer pa, gconstpointer pb)
{
	const sched_item_t *a = pa, *b = pb;
	return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

static void heap_push(GPtrArray *h, sched_item_t *it)
{
	kvb_heap_push(h, it, item_before);
}

static sched_item_t *heap_pop(GPtrArray *h)
{
	return kvb_heap_pop(h, item_before);
}

static void item_free(sched_item_t *it)
{
	g_free(it->owned);
	g_free(it);
}

static void ep_wake(sim_ep_t *ep)
{
	if (ep->waiting && !ep->signaled) {
		ep->signaled = true;
		sg_sem_release(ep->sem);
	}
}

/* Schedule an event for ep at absolute time t; the item takes owned. */
static void ep_schedule(sim_ep_t *ep, uint64_t t, const kvb_event_t *ev, uint64_t conn_id, void *owned)
{
	if (ep->dead) {
		g_free(owned);
		return;
	}
	sched_item_t *it = g_new0(sched_item_t, 1);
	it->t = t;
	it->seq = ep->seq++;
	it->ev = *ev;
	it->conn_id = conn_id;
	it->owned = owned;
	heap_push(ep->heap, it);
	ep_wake(ep);
}

/* Move every item due at or before now into the ready queue. */
static void ep_collect_due(sim_ep_t *ep)
{
	uint64_t now = now_ns();
	while (ep->heap->len && ((sched_item_t *)ep->heap->pdata[0])->t <= now) {
		sched_item_t *it = heap_pop(ep->heap);
		if (it->cancelled) {
			item_free(it);
			continue;
		}
		if (it->is_timer)
			g_hash_table_remove(ep->timers, &it->timer_id);
		g_queue_push_tail(&ep->ready, it);
	}
}

static bool ep_next_time(sim_ep_t *ep, uint64_t *t)
{
	while (ep->heap->len && ((sched_item_t *)ep->heap->pdata[0])->cancelled)
		item_free(heap_pop(ep->heap));
	if (!ep->heap->len)
		return false;
	*t = ((sched_item_t *)ep->heap->pdata[0])->t;
	return true;
}

/* Drop every queued event that names a conn (closed or dead). */
static void ep_purge_conn(sim_ep_t *ep, uint64_t conn_id)
{
	for (guint i = 0; i < ep->heap->len; i++) {
		sched_item_t *it = ep->heap->pdata[i];
		if (it->conn_id == conn_id)
			it->cancelled = true;
	}
	GList *l = ep->ready.head;
	while (l) {
		GList *next = l->next;
		sched_item_t *it = l->data;
		if (it->conn_id == conn_id) {
			g_queue_delete_link(&ep->ready, l);
			item_free(it);
		}
		l = next;
	}
}

static void ep_drop_all(sim_ep_t *ep)
{
	sched_item_t *it;
	while ((it = heap_pop(ep->heap)))
		item_free(it);
	while ((it = g_queue_pop_head(&ep->ready)))
		item_free(it);
	g_hash_table_remove_all(ep->timers);
}

/* ---- flows -------------------------------------------------------------- */

static void op_complete(kvb_sim_world_t *w, sim_ep_t *src, op_rec_t *op, int status, uint64_t t)
{
	kvb_event_t ev = {.type = KVB_EV_XFER_DONE, .status = status, .cookie = op->cookie, .nic = op->nic};
	if (status == KVB_OK)
		w->stats.ops_completed++;
	if (src && !src->dead)
		ep_schedule(src, t, &ev, 0, NULL);
	g_free(op);
}

static void qp_free(qp_t *qp)
{
	if (qp->queued && qp->src)
		g_ptr_array_remove_fast(qp->src->to_start, qp);
	g_hash_table_remove(qp->w->qps, &qp->key);
	g_free(qp);
}

/* Fail every op of a queue pair and stop its actor (faults). */
static void qp_fail(qp_t *qp, int status)
{
	kvb_sim_world_t *w = qp->w;
	uint64_t t = now_ns() + w->latency_ns;
	op_rec_t *op;
	while ((op = g_queue_pop_head(&qp->running)))
		op_complete(w, qp->src, op, status, t);
	while ((op = g_queue_pop_head(&qp->pending)))
		op_complete(w, qp->src, op, status, t);
	if (qp->flows_open) {
		w->stats.flows_failed += qp->flows_open;
		w->flows_in_flight -= qp->flows_open;
		qp->flows_open = 0;
	}
	if (qp->actor) {
		sg_actor_t a = qp->actor;
		qp->actor = NULL;
		sg_actor_kill(a);
	}
	qp_free(qp);
}

static void flow_run(kvb_sim_world_t *w, qp_t *qp, double bytes)
{
	w->stats.flows_started++;
	w->flows_in_flight++;
	qp->flows_open = 1;
	if (w->flows_in_flight > w->stats.flows_peak)
		w->stats.flows_peak = w->flows_in_flight;
	sg_host_sendto(qp->src_host, qp->dst_host, bytes);
	qp->flows_open = 0;
	w->flows_in_flight--;
	w->stats.flows_completed++;
	w->stats.bytes += bytes;
	nic_stat(w, qp->src_host)->tx += bytes;
	nic_stat(w, qp->dst_host)->rx += bytes;
}

/* A queue pair's actor: serve its ops in order until none is left.  Merged
 * model: everything queued goes as one flow; per-slice model: every slice
 * is a flow of its own, back to back. */
static void qp_main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	qp_t *qp = sg_actor_self_get_data();
	kvb_sim_world_t *w = qp->w;
	while (qp->pending.length) {
		op_rec_t *op;
		if (w->p.flow_model == KVB_SIM_FLOWS_MERGED) {
			double bytes = 0;
			while ((op = g_queue_pop_head(&qp->pending))) {
				bytes += (double)op->len;
				g_queue_push_tail(&qp->running, op);
			}
			flow_run(w, qp, bytes);
		} else {
			op = g_queue_pop_head(&qp->pending);
			g_queue_push_tail(&qp->running, op);
			uint64_t left = op->len;
			for (uint32_t s = 0; s < op->n_slices; s++) {
				uint64_t len = s + 1 == op->n_slices ? left : op->slice_len;
				flow_run(w, qp, (double)len);
				left -= len;
			}
		}
		uint64_t t = now_ns() + w->latency_ns;
		while ((op = g_queue_pop_head(&qp->running)))
			op_complete(w, qp->src, op, KVB_OK, t);
	}
	qp->actor = NULL;
	qp_free(qp);
}

/* ---- world -------------------------------------------------------------- */

kvb_sim_world_t *kvb_sim_world_new(const kvb_sim_world_params_t *params)
{
	kvb_sim_world_t *w = g_new0(kvb_sim_world_t, 1);
	if (params)
		w->p = *params;
	w->latency_ns = (uint64_t)llround(w->p.latency_s * 1e9);
	w->eps_by_name = g_hash_table_new(g_str_hash, g_str_equal);
	w->eps_by_id = g_hash_table_new_full(u64_hash, u64_equal, g_free, NULL);
	w->qps = g_hash_table_new(qp_hash, qp_equal);
	w->nic_stats = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
	w->incoming = g_hash_table_new_full(u64_hash, u64_equal, g_free, g_free);
	return w;
}

void kvb_sim_world_free(kvb_sim_world_t *w)
{
	if (!w)
		return;
	GHashTableIter it;
	gpointer v;
	g_hash_table_iter_init(&it, w->qps);
	while (g_hash_table_iter_next(&it, NULL, &v)) {
		qp_t *qp = v;
		op_rec_t *op;
		while ((op = g_queue_pop_head(&qp->pending)))
			g_free(op);
		while ((op = g_queue_pop_head(&qp->running)))
			g_free(op);
		g_hash_table_iter_remove(&it);
		g_free(qp);
	}
	g_hash_table_destroy(w->qps);
	g_hash_table_destroy(w->eps_by_name);
	g_hash_table_destroy(w->eps_by_id);
	g_hash_table_destroy(w->nic_stats);
	g_hash_table_destroy(w->incoming);
	g_free(w);
}

void kvb_sim_world_stats(const kvb_sim_world_t *w, kvb_sim_stats_t *out)
{
	*out = w->stats;
}

double kvb_sim_nic_tx_bytes(const kvb_sim_world_t *w, sg_host_t nic)
{
	nic_stat_t *st = g_hash_table_lookup(w->nic_stats, nic);
	return st ? st->tx : 0;
}

double kvb_sim_nic_rx_bytes(const kvb_sim_world_t *w, sg_host_t nic)
{
	nic_stat_t *st = g_hash_table_lookup(w->nic_stats, nic);
	return st ? st->rx : 0;
}

void kvb_sim_set_post_hook(kvb_sim_world_t *w, kvb_sim_post_hook_fn fn, void *user)
{
	w->post_hook = fn;
	w->post_hook_user = user;
}

int kvb_sim_nic_set_up(kvb_sim_world_t *w, sg_host_t nic, bool up)
{
	if (!w || !nic)
		return KVB_ERR_INVALID;
	nic_stat(w, nic)->down = !up;
	if (up)
		return KVB_OK;
	GList *qps = g_hash_table_get_values(w->qps);
	for (GList *l = qps; l; l = l->next) {
		qp_t *qp = l->data;
		if (qp->src_host == nic || qp->dst_host == nic)
			qp_fail(qp, KVB_ERR_TRANSPORT);
	}
	g_list_free(qps);
	return KVB_OK;
}

/* ---- listener ----------------------------------------------------------- */

static void listener_exit(int failed, void *data)
{
	(void)failed;
	sim_ep_t *ep = data;
	ep->listener = NULL;
}

/* Receive control messages in mailbox order and schedule them after the
 * latency (FIFO per sender: a put is matched only after the previous one
 * completed). */
static void listener_main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	sim_ep_t *ep = sg_actor_self_get_data();
	sg_actor_daemonize(sg_actor_self());
	sg_actor_on_exit(listener_exit, ep);
	for (;;) {
		sim_msg_t *m = sg_mailbox_get(ep->mbox);
		if (m->dst_conn == UINT64_MAX) { /* shutdown */
			g_free(m);
			ep->listener = NULL;
			return;
		}
		kvb_conn_t *conn = ep->dead ? NULL : g_hash_table_lookup(ep->conns, &m->dst_conn);
		if (!conn || sconn(conn)->state != CONN_UP) {
			g_free(m);
			continue;
		}
		kvb_event_t ev = {.type = KVB_EV_MSG, .conn = conn, .data = m->data, .len = m->len};
		ep_schedule(ep, now_ns() + ep->w->latency_ns, &ev, m->dst_conn, m);
	}
}

/* Stop an endpoint's listener with a message rather than sg_actor_kill: a
 * receive cut by a kill trips SimGrid 3.32's link-load plugin. */
static void listener_stop(sim_ep_t *ep)
{
	if (!ep->listener || ep->stopping)
		return;
	ep->stopping = true;
	sim_msg_t *m = g_malloc0(sizeof(sim_msg_t));
	m->dst_conn = UINT64_MAX;
	sg_comm_t c = sg_mailbox_put_init(ep->mbox, m, 1);
	sg_comm_detach(c, g_free);
}

void kvb_sim_world_shutdown(kvb_sim_world_t *w)
{
	GHashTableIter it;
	gpointer v;
	g_hash_table_iter_init(&it, w->eps_by_id);
	while (g_hash_table_iter_next(&it, NULL, &v))
		listener_stop(v);
}

/* ---- vtable ------------------------------------------------------------- */

static int sim_instance_open(kvb_backend_t *be, const void *args_v, kvb_err_t *err)
{
	const kvb_sim_args_t *a = args_v;
	if (!a || !a->world || !a->name || !a->name[0] || !a->nics || a->n_nics == 0 ||
	    a->n_nics > KVB_MAX_NICS)
		return kvb_err_set(err, KVB_ERR_INVALID, "sim backend: world, name and 1..%u NIC hosts required",
				   KVB_MAX_NICS);
	kvb_sim_world_t *w = a->world;
	if (g_hash_table_contains(w->eps_by_name, a->name))
		return kvb_err_set(err, KVB_ERR_EXISTS, "sim backend: endpoint '%s' exists", a->name);
	for (uint32_t i = 0; i < a->n_nics; i++)
		if (!a->nics[i])
			return kvb_err_set(err, KVB_ERR_INVALID, "sim backend: NIC host %u of '%s' is NULL", i,
					   a->name);
	sim_ep_t *ep = g_new0(sim_ep_t, 1);
	ep->w = w;
	ep->be = be;
	ep->id = ++w->next_ep_id;
	ep->name = g_strdup(a->name);
	memcpy(ep->nics, a->nics, a->n_nics * sizeof(sg_host_t));
	ep->n_nics = a->n_nics;
	ep->heap = g_ptr_array_new();
	ep->to_start = g_ptr_array_new();
	ep->timers = g_hash_table_new_full(u64_hash, u64_equal, g_free, NULL);
	ep->delivered = g_ptr_array_new_with_free_func((GDestroyNotify)item_free);
	ep->sem = sg_sem_init(0);
	ep->conns = g_hash_table_new_full(u64_hash, u64_equal, g_free, NULL);
	ep->mrs = g_hash_table_new_full(u64_hash, u64_equal, g_free, g_free);
	ep->rng = a->seed ^ (ep->id * 0x9e3779b97f4a7c15ull);
	char *mbname = g_strdup_printf("kvb-sim-%s", a->name);
	ep->mbox = sg_mailbox_by_name(mbname);
	g_free(mbname);
	((sim_priv_t *)(void *)be->priv)->ep = ep;
	g_hash_table_insert(w->eps_by_name, ep->name, ep);
	g_hash_table_insert(w->eps_by_id, u64_key(ep->id), ep);
	ep->listener = sg_actor_init("kvb-listener", ep->nics[0]);
	sg_actor_set_data(ep->listener, ep);
	sg_actor_start(ep->listener, listener_main, 0, NULL);
	return KVB_OK;
}

/* Fail the flows that start or end at ep. */
static void ep_fail_qps(sim_ep_t *ep)
{
	kvb_sim_world_t *w = ep->w;
	GList *qps = g_hash_table_get_values(w->qps);
	for (GList *l = qps; l; l = l->next) {
		qp_t *qp = l->data;
		if (qp->src == ep) {
			if (qp->queued)
				g_ptr_array_remove_fast(ep->to_start, qp);
			qp->queued = false;
			qp->src = NULL; /* nobody to tell */
			qp_fail(qp, KVB_ERR_PEER);
		} else if (qp->dst_ep == ep->id) {
			qp_fail(qp, KVB_ERR_PEER);
		}
	}
	g_list_free(qps);
}

/* Tell the peers of every conn that it is gone. */
static void ep_drop_conns(sim_ep_t *ep)
{
	GHashTableIter it;
	gpointer v;
	g_hash_table_iter_init(&it, ep->conns);
	while (g_hash_table_iter_next(&it, NULL, &v)) {
		sim_conn_t *sc = sconn(v);
		sim_ep_t *peer = ep_by_id(ep->w, sc->peer_ep);
		if (peer && !peer->dead && sc->peer_conn) {
			kvb_conn_t *pc = g_hash_table_lookup(peer->conns, &sc->peer_conn);
			if (pc && sconn(pc)->state != CONN_DOWN) {
				kvb_event_t ev = {.type = KVB_EV_CONN_DOWN, .status = KVB_ERR_PEER, .conn = pc};
				ep_schedule(peer, now_ns() + ep->w->latency_ns, &ev, sc->peer_conn, NULL);
			}
		}
		sc->state = CONN_DOWN;
	}
}

int kvb_sim_kill(kvb_backend_t *be)
{
	if (!be)
		return KVB_ERR_INVALID;
	sim_ep_t *ep = ep_of(be);
	if (ep->dead)
		return KVB_OK;
	ep->dead = true;
	ep_fail_qps(ep);
	ep_drop_conns(ep);
	ep_drop_all(ep);
	listener_stop(ep);
	if (ep->waiting && !ep->signaled) {
		ep->signaled = true;
		sg_sem_release(ep->sem);
	}
	return KVB_OK;
}

static void sim_instance_close(kvb_backend_t *be)
{
	sim_ep_t *ep = ep_of(be);
	kvb_sim_world_t *w = ep->w;
	if (!ep->dead) {
		ep->dead = true;
		ep_fail_qps(ep);
		ep_drop_conns(ep);
	}
	ep_drop_all(ep);
	g_ptr_array_free(ep->delivered, TRUE);
	g_ptr_array_free(ep->heap, TRUE);
	g_ptr_array_free(ep->to_start, TRUE);
	g_hash_table_destroy(ep->timers);
	g_hash_table_destroy(ep->conns);
	g_hash_table_destroy(ep->mrs);
	sg_sem_destroy(ep->sem);
	g_hash_table_remove(w->eps_by_name, ep->name);
	g_hash_table_remove(w->eps_by_id, &ep->id);
	g_free(ep->name);
	g_free(ep);
}

static uint64_t sim_clock_now_ns(kvb_backend_t *be)
{
	(void)be;
	return now_ns();
}

static int sim_timer_arm(kvb_backend_t *be, uint64_t deadline_ns, uint64_t cookie, uint64_t *timer_id)
{
	sim_ep_t *ep = ep_of(be);
	if (ep->dead)
		return ep_fail(ep, KVB_ERR_STATE, "timer_arm: endpoint %s was killed", ep->name);
	sched_item_t *it = g_new0(sched_item_t, 1);
	it->t = MAX(deadline_ns, now_ns());
	it->seq = ep->seq++;
	it->is_timer = true;
	it->timer_id = ++ep->next_timer_id;
	it->ev.type = KVB_EV_TIMER;
	it->ev.cookie = cookie;
	heap_push(ep->heap, it);
	g_hash_table_insert(ep->timers, u64_key(it->timer_id), it);
	if (timer_id)
		*timer_id = it->timer_id;
	return KVB_OK;
}

static int sim_timer_cancel(kvb_backend_t *be, uint64_t timer_id)
{
	sim_ep_t *ep = ep_of(be);
	sched_item_t *it = g_hash_table_lookup(ep->timers, &timer_id);
	if (!it)
		return KVB_ERR_NOT_FOUND;
	it->cancelled = true;
	g_hash_table_remove(ep->timers, &timer_id);
	return KVB_OK;
}

static int sim_random_fill(kvb_backend_t *be, void *buf, size_t len)
{
	sim_ep_t *ep = ep_of(be);
	uint8_t *p = buf;
	while (len) {
		uint64_t z = (ep->rng += 0x9e3779b97f4a7c15ull);
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		z ^= z >> 31;
		size_t n = len < 8 ? len : 8;
		memcpy(p, &z, n);
		p += n;
		len -= n;
	}
	return KVB_OK;
}

static uint32_t sim_nic_count(kvb_backend_t *be)
{
	return ep_of(be)->n_nics;
}

static int sim_nic_query(kvb_backend_t *be, uint32_t index, kvb_nic_info_t *info)
{
	sim_ep_t *ep = ep_of(be);
	if (index >= ep->n_nics)
		return KVB_ERR_NOT_FOUND;
	memset(info, 0, sizeof(*info));
	g_strlcpy(info->name, sg_host_get_name(ep->nics[index]), sizeof(info->name));
	info->bandwidth_bps = (uint64_t)ep->w->p.nic_bandwidth_bps;
	info->numa_node = -1;
	return KVB_OK;
}

/* The simulator moves no bytes: a registration only records the range so
 * that remote addresses can be checked as a NIC would. */
static int sim_mr_reg(kvb_backend_t *be, void *addr, size_t len, const kvb_mem_attr_t *attr, void **mr,
		      kvb_rkey_t *rkey)
{
	(void)attr;
	sim_ep_t *ep = ep_of(be);
	if (!len)
		return ep_fail(ep, KVB_ERR_INVALID, "mr_reg: zero length");
	sim_mr_t *m = g_new0(sim_mr_t, 1);
	m->id = ++ep->next_mr_id;
	m->addr = (uint64_t)(uintptr_t)addr;
	m->len = len;
	g_hash_table_insert(ep->mrs, u64_key(m->id), m);
	*mr = (void *)(uintptr_t)m->id;
	rkey->len = SIM_RKEY_LEN;
	memcpy(rkey->bytes, &ep->id, 8);
	memcpy(rkey->bytes + 8, &m->id, 8);
	return KVB_OK;
}

static int sim_mr_dereg(kvb_backend_t *be, void *mr)
{
	sim_ep_t *ep = ep_of(be);
	uint64_t id = (uint64_t)(uintptr_t)mr;
	return g_hash_table_remove(ep->mrs, &id) ? KVB_OK : KVB_ERR_NOT_FOUND;
}

static void conn_register(sim_ep_t *ep, kvb_conn_t *conn)
{
	sim_conn_t *sc = sconn(conn);
	sc->id = ++ep->next_conn_id;
	g_hash_table_insert(ep->conns, u64_key(sc->id), conn);
}

static int sim_conn_connect(kvb_backend_t *be, kvb_conn_t *conn, const char *addr)
{
	sim_ep_t *ep = ep_of(be);
	kvb_sim_world_t *w = ep->w;
	if (ep->dead)
		return ep_fail(ep, KVB_ERR_STATE, "conn_connect: endpoint %s was killed", ep->name);
	conn_register(ep, conn);
	sim_conn_t *sc = sconn(conn);
	sc->state = CONN_CONNECTING;
	sim_ep_t *peer = addr ? g_hash_table_lookup(w->eps_by_name, addr) : NULL;
	uint64_t t = now_ns() + w->latency_ns;
	if (!peer || peer->dead) {
		ep_fail(ep, KVB_ERR_PEER, "no live endpoint '%s'", addr ? addr : "(null)");
		sc->state = CONN_DOWN;
		kvb_event_t ev = {.type = KVB_EV_CONN_DOWN, .status = KVB_ERR_PEER, .conn = conn};
		ep_schedule(ep, t, &ev, sc->id, NULL);
		return KVB_INPROGRESS;
	}
	incoming_t *in = g_new0(incoming_t, 1);
	in->from_ep = ep->id;
	in->from_conn = sc->id;
	uint64_t id = ++w->next_incoming;
	g_hash_table_insert(w->incoming, u64_key(id), in);
	sc->peer_ep = peer->id;
	kvb_event_t ev = {.type = KVB_EV_CONN_INCOMING, .incoming_id = id};
	ep_schedule(peer, t, &ev, 0, NULL);
	return KVB_INPROGRESS;
}

static int sim_conn_accept(kvb_backend_t *be, kvb_conn_t *conn, uint64_t incoming_id)
{
	sim_ep_t *ep = ep_of(be);
	kvb_sim_world_t *w = ep->w;
	incoming_t *in = g_hash_table_lookup(w->incoming, &incoming_id);
	if (!in)
		return ep_fail(ep, KVB_ERR_NOT_FOUND, "conn_accept: unknown incoming %" PRIu64, incoming_id);
	conn_register(ep, conn);
	sim_conn_t *sc = sconn(conn);
	sc->peer_ep = in->from_ep;
	sc->peer_conn = in->from_conn;
	sc->state = CONN_UP;
	sim_ep_t *from = ep_by_id(w, in->from_ep);
	kvb_conn_t *fc = from && !from->dead ? g_hash_table_lookup(from->conns, &in->from_conn) : NULL;
	uint64_t t = now_ns() + w->latency_ns;
	if (fc && sconn(fc)->state == CONN_CONNECTING) {
		sconn(fc)->peer_conn = sc->id;
		sconn(fc)->state = CONN_UP;
		kvb_event_t ev = {.type = KVB_EV_CONN_UP, .conn = fc};
		ep_schedule(from, t, &ev, in->from_conn, NULL);
	} else {
		sc->state = CONN_DOWN;
		kvb_event_t ev = {.type = KVB_EV_CONN_DOWN, .status = KVB_ERR_PEER, .conn = conn};
		ep_schedule(ep, t, &ev, sc->id, NULL);
	}
	g_hash_table_remove(w->incoming, &incoming_id);
	return KVB_OK;
}

static void sim_conn_close(kvb_backend_t *be, kvb_conn_t *conn)
{
	sim_ep_t *ep = ep_of(be);
	sim_conn_t *sc = sconn(conn);
	if (!sc->id)
		return;
	ep_purge_conn(ep, sc->id);
	sim_ep_t *peer = ep_by_id(ep->w, sc->peer_ep);
	if (peer && !peer->dead && sc->peer_conn && sc->state != CONN_DOWN) {
		kvb_conn_t *pc = g_hash_table_lookup(peer->conns, &sc->peer_conn);
		if (pc && sconn(pc)->state == CONN_UP) {
			kvb_event_t ev = {.type = KVB_EV_CONN_DOWN, .status = KVB_ERR_PEER, .conn = pc};
			ep_schedule(peer, now_ns() + ep->w->latency_ns, &ev, sc->peer_conn, NULL);
		}
	}
	g_hash_table_remove(ep->conns, &sc->id);
	sc->state = CONN_CLOSED;
	sc->id = 0;
}

static bool remote_range_ok(sim_ep_t *peer, const kvb_slice_op_t *op)
{
	if (!op->remote_key || op->remote_key->len != SIM_RKEY_LEN)
		return false;
	uint64_t ep_id, mr_id;
	memcpy(&ep_id, op->remote_key->bytes, 8);
	memcpy(&mr_id, op->remote_key->bytes + 8, 8);
	if (ep_id != peer->id)
		return false;
	sim_mr_t *m = g_hash_table_lookup(peer->mrs, &mr_id);
	return m && op->remote_addr >= m->addr && op->len <= m->len &&
	       op->remote_addr - m->addr <= m->len - op->len;
}

static int sim_xfer_post(kvb_backend_t *be, kvb_conn_t *conn, const kvb_slice_op_t *ops, size_t n,
			 size_t *n_posted)
{
	sim_ep_t *ep = ep_of(be);
	kvb_sim_world_t *w = ep->w;
	size_t dummy;
	if (!n_posted)
		n_posted = &dummy;
	*n_posted = 0;
	if (ep->dead)
		return ep_fail(ep, KVB_ERR_STATE, "xfer_post: endpoint %s was killed", ep->name);
	sim_conn_t *sc = sconn(conn);
	if (sc->state != CONN_UP)
		return ep_fail(ep, KVB_ERR_PEER, "xfer_post: conn %" PRIu64 " is not up", sc->id);
	sim_ep_t *peer = ep_by_id(w, sc->peer_ep);
	uint64_t t_fail = now_ns() + w->latency_ns;
	for (size_t i = 0; i < n; i++) {
		const kvb_slice_op_t *op = &ops[i];
		if (op->local_nic >= ep->n_nics)
			return ep_fail(ep, KVB_ERR_NOT_FOUND, "xfer_post: op %zu: local NIC %u (have %u)", i,
				       op->local_nic, ep->n_nics);
		if (op->n_slices == 0 || op->len == 0)
			return ep_fail(ep, KVB_ERR_INVALID, "xfer_post: op %zu: %u slices, %" PRIu64 " bytes", i,
				       op->n_slices, op->len);
		uint64_t mr_id = (uint64_t)(uintptr_t)op->local_mr;
		sim_mr_t *lm = g_hash_table_lookup(ep->mrs, &mr_id);
		if (!lm || op->local_addr < lm->addr || op->len > lm->len ||
		    op->local_addr - lm->addr > lm->len - op->len)
			return ep_fail(ep, KVB_ERR_RANGE, "xfer_post: op %zu: local range outside its region", i);
		if (w->post_hook)
			w->post_hook(be, op, w->post_hook_user);
		op_rec_t *rec = g_new0(op_rec_t, 1);
		rec->cookie = op->cookie;
		rec->nic = op->local_nic;
		rec->len = op->len;
		rec->n_slices = op->n_slices;
		rec->slice_len = op->slice_len;
		(*n_posted)++;

		if (!peer || peer->dead) {
			ep_fail(ep, KVB_ERR_PEER, "xfer_post: peer of conn %" PRIu64 " is gone", sc->id);
			op_complete(w, ep, rec, KVB_ERR_PEER, t_fail);
			continue;
		}
		if (!remote_range_ok(peer, op)) {
			ep_fail(ep, KVB_ERR_RANGE, "remote [%#" PRIx64 ", +%" PRIu64 ") not in a region of %s",
				op->remote_addr, op->len, peer->name);
			op_complete(w, ep, rec, KVB_ERR_RANGE, t_fail);
			continue;
		}
		sg_host_t src = ep->nics[op->local_nic];
		sg_host_t dst = peer->nics[op->remote_nic % peer->n_nics];
		if (nic_stat(w, src)->down || nic_stat(w, dst)->down) {
			ep_fail(ep, KVB_ERR_TRANSPORT, "xfer_post: NIC %s is down",
				nic_stat(w, src)->down ? sg_host_get_name(src) : sg_host_get_name(dst));
			op_complete(w, ep, rec, KVB_ERR_TRANSPORT, t_fail);
			continue;
		}
		qp_key_t key = {ep->id, sc->id, op->stream, op->local_nic, op->remote_nic % peer->n_nics};
		qp_t *qp = g_hash_table_lookup(w->qps, &key);
		if (!qp) {
			qp = g_new0(qp_t, 1);
			qp->key = key;
			qp->w = w;
			qp->src = ep;
			qp->dst_ep = peer->id;
			qp->src_host = src;
			qp->dst_host = dst;
			g_hash_table_insert(w->qps, &qp->key, qp);
		}
		g_queue_push_tail(&qp->pending, rec);
		if (!qp->actor && !qp->queued) {
			/* started when the owner blocks (kvb_sim_wait), so that
			 * everything posted at this instant joins one flow: simcalls
			 * in between (messages, actor creation) would let it start early */
			qp->queued = true;
			g_ptr_array_add(ep->to_start, qp);
		}
	}
	return KVB_OK;
}

static int sim_msg_send(kvb_backend_t *be, kvb_conn_t *conn, const void *buf, size_t len)
{
	sim_ep_t *ep = ep_of(be);
	sim_conn_t *sc = sconn(conn);
	if (ep->dead)
		return ep_fail(ep, KVB_ERR_STATE, "msg_send: endpoint %s was killed", ep->name);
	if (sc->state != CONN_UP)
		return ep_fail(ep, KVB_ERR_PEER, "msg_send: conn %" PRIu64 " is not up", sc->id);
	sim_ep_t *peer = ep_by_id(ep->w, sc->peer_ep);
	if (!peer || peer->dead || !peer->listener)
		return ep_fail(ep, KVB_ERR_PEER, "msg_send: peer of conn %" PRIu64 " is gone", sc->id);
	if (len > KVB_MSG_MAX)
		return ep_fail(ep, KVB_ERR_INVALID, "msg_send: %zu bytes exceed KVB_MSG_MAX", len);
	sim_msg_t *m = g_malloc(sizeof(sim_msg_t) + len);
	m->dst_ep = peer->id;
	m->dst_conn = sc->peer_conn;
	m->len = len;
	memcpy(m->data, buf, len);
	/* 64 bytes of transport headers on top of the payload */
	sg_comm_t c = sg_mailbox_put_init(peer->mbox, m, (long)len + 64);
	sg_comm_detach(c, g_free);
	ep->w->stats.messages++;
	return KVB_OK;
}

static int sim_event_poll(kvb_backend_t *be, kvb_event_t *events, int max)
{
	sim_ep_t *ep = ep_of(be);
	g_ptr_array_set_size(ep->delivered, 0);
	if (ep->dead)
		return 0;
	ep_collect_due(ep);
	int n = 0;
	while (n < max && ep->ready.length) {
		sched_item_t *it = g_queue_pop_head(&ep->ready);
		events[n++] = it->ev;
		g_ptr_array_add(ep->delivered, it);
	}
	return n;
}

static const char *sim_last_error(kvb_backend_t *be)
{
	return ep_of(be)->err;
}

/* Start an actor for every queue pair that got its first ops since the
 * owner last blocked. */
static void ep_start_qps(sim_ep_t *ep)
{
	for (guint i = 0; i < ep->to_start->len; i++) {
		qp_t *qp = ep->to_start->pdata[i];
		qp->queued = false;
		qp->actor = sg_actor_init("kvb-qp", qp->src_host);
		sg_actor_set_data(qp->actor, qp);
		sg_actor_start(qp->actor, qp_main, 0, NULL);
	}
	g_ptr_array_set_size(ep->to_start, 0);
}

int kvb_sim_wait(kvb_backend_t *be, double deadline_s)
{
	sim_ep_t *ep = ep_of(be);
	ep_start_qps(ep);
	for (;;) {
		if (ep->dead)
			return KVB_ERR_STATE;
		ep_collect_due(ep);
		if (ep->ready.length)
			return 1;
		if (ep->woken) {
			ep->woken = false;
			return 0;
		}
		double now = simgrid_get_clock();
		if (deadline_s >= 0 && now >= deadline_s)
			return 0;
		uint64_t next;
		double until = deadline_s;
		if (ep_next_time(ep, &next) && (until < 0 || (double)next / 1e9 < until))
			until = (double)next / 1e9;
		ep->waiting = true;
		ep->signaled = false;
		if (until < 0)
			sg_sem_acquire(ep->sem);
		else
			sg_sem_acquire_timeout(ep->sem, MAX(until - now, 0.0));
		ep->waiting = false;
		ep->signaled = false;
	}
}

void kvb_sim_wake(kvb_backend_t *be)
{
	sim_ep_t *ep = ep_of(be);
	ep->woken = true;
	ep_wake(ep);
}

static const kvb_backend_ops_t sim_ops = {
	.abi = KVB_BACKEND_ABI,
	.size = sizeof(kvb_backend_ops_t),
	.name = "sim",
	.instance_size = sizeof(sim_priv_t),
	.conn_size = sizeof(sim_conn_t),
	.instance_open = sim_instance_open,
	.instance_close = sim_instance_close,
	.clock_now_ns = sim_clock_now_ns,
	.timer_arm = sim_timer_arm,
	.timer_cancel = sim_timer_cancel,
	.random_fill = sim_random_fill,
	.nic_count = sim_nic_count,
	.nic_query = sim_nic_query,
	.mr_reg = sim_mr_reg,
	.mr_dereg = sim_mr_dereg,
	.conn_connect = sim_conn_connect,
	.conn_accept = sim_conn_accept,
	.conn_close = sim_conn_close,
	.xfer_post = sim_xfer_post,
	.msg_send = sim_msg_send,
	.event_poll = sim_event_poll,
	.last_error = sim_last_error,
};

const kvb_backend_ops_t *kvb_sim_backend_ops(void)
{
	return &sim_ops;
}
