/*
 * vLLM Gen 1/2, the consumer side (kvb_hw_vllm_gen2.h): "vllm2://" peers,
 * one DEALER per message in flight, and the bootstrap query cache.  The
 * producer side and the protocol's description are in kvb_hw_vllm_gen2.c.
 *
 * Pulls to one worker posted in the same turn of the event loop go out as
 * one MooncakeXferMetadata naming them all (at most BATCH_MAX), as vLLM's D
 * sends a scheduler step's requests: one message and one reply stream for
 * many small requests instead of one each.
 *
 * A DEALER (with its monitor) carries one message at a time, as vLLM's D
 * sends them, so every reply on it is about that message.  Once the
 * message's last reply (FINISH or ERROR) has come, nothing more can arrive
 * on it, and it is kept, connected, for the next pull to the same worker
 * (at most IDLE_PER_WORKER per worker, closed after IDLE_NS unused or when
 * the worker disconnects): a pull then costs one message each way instead
 * of a TCP connection and a ZMTP handshake.  A DEALER whose message ended
 * any other way (its last pull cancelled, a timeout, a CONTINUE naming the
 * last request) is closed, since a late reply on it would be read as the
 * next message's.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <zmq.h>
#include <kvbridge/kvbridge.h>

#include "control/kvb_hw_peer.h"
#include "control/kvb_hw_vllm_bootstrap.h"
#include "control/kvb_hw_vllm_gen2_client.h"
#include "control/kvb_hw_vllm_gen2_int.h"
#include "events/kvb_hw_net.h"
#include "events/kvb_hw_zmq.h"
#include "transport/kvb_hw_mem.h"
#include "transport/kvb_hw_rdma_window.h"
#include "kvb_vllm_bootstrap_wire.h"
#include "kvb_vllm_xfer_wire.h"
#include "kvb_wire.h"

#define NS_PER_S G_GUINT64_CONSTANT(1000000000)
#define RCV_EXTRA_NS (60 * NS_PER_S)   /* vLLM's D: RCVTIMEO = abort timeout + 60 s */
#define IDLE_NS (10 * NS_PER_S)        /* an unused DEALER is closed after this */
#define IDLE_PER_WORKER 16u            /* DEALERs kept per producer worker */

static const hw_peer_ops_t client_ops;

/* ------------------------------------------------------------------------ */
/* bootstrap queries (consumer side)                                        */

typedef struct v2engine {
	char key[KVB_VLLM_ADDR_MAX + KVB_VLLM_ENGINE_ID_MAX + 2]; /* "host:port|engine" */
	char engine_id[KVB_VLLM_ENGINE_ID_MAX];
	uint32_t dp_rank, tp_size, pp_size;
	char **workers;             /* tp_size * pp_size "vllm2://host:port", NULL-terminated */
} v2engine_t;

typedef struct v2waiter {
	char engine_id[KVB_VLLM_ENGINE_ID_MAX];
	kvb_hw_vllm_query_fn fn;
	void *user;
} v2waiter_t;

/* One /query in flight (or a cached answer on its way) for one bootstrap. */
typedef struct v2query {
	struct hw_vllm2 *v;
	char bootstrap[KVB_VLLM_ADDR_MAX]; /* "host:port" */
	char host[KVB_VLLM_HOST_MAX];
	uint16_t port;
	hw_vllm_boot_call_t *call;
	hw_deadline_t *later;       /* answers from the cache go out from the loop */
	GQueue waiters;             /* v2waiter_t* */
	char why[KVB_ERR_MSG_MAX];
	int status;
} v2query_t;

static void engine_free(void *p)
{
	v2engine_t *e = p;
	g_strfreev(e->workers);
	g_free(e);
}

static void engine_key(char *key, size_t len, const char *bootstrap, const char *engine_id)
{
	g_snprintf(key, len, "%s|%s", bootstrap, engine_id);
}

/* Answer every waiter of q from the cache (or with q's error), then free q. */
static void query_deliver(v2query_t *q)
{
	struct hw_vllm2 *v = q->v;
	g_queue_remove(&v->queries, q);
	v2waiter_t *w;
	while ((w = g_queue_pop_head(&q->waiters))) {
		char key[sizeof(((v2engine_t *)0)->key)];
		engine_key(key, sizeof(key), q->bootstrap, w->engine_id);
		v2engine_t *e = q->status == KVB_OK ? g_hash_table_lookup(v->engines, key) : NULL;
		if (e) {
			kvb_hw_vllm_engine_t out = {
				.engine_id = e->engine_id, .dp_rank = e->dp_rank, .tp_size = e->tp_size,
				.pp_size = e->pp_size, .workers = (const char *const *)e->workers,
			};
			w->fn(w->user, KVB_OK, NULL, &out);
		} else if (q->status == KVB_OK) {
			char why[KVB_ERR_MSG_MAX];
			g_snprintf(why, sizeof(why), "engine %s is not registered at the bootstrap http://%s",
				   w->engine_id, q->bootstrap);
			w->fn(w->user, KVB_ERR_NOT_FOUND, why, NULL);
		} else {
			w->fn(w->user, q->status, q->why, NULL);
		}
		g_free(w);
	}
	hw_vllm_boot_call_cancel(q->call);
	hw_deadline_free(q->later);
	g_free(q);
}

static void query_later(void *obj)
{
	query_deliver(obj);
}

static void query_answered(void *obj, int status, const char *why, const kvb_vllm_boot_query_t *r)
{
	v2query_t *q = obj;
	struct hw_vllm2 *v = q->v;
	q->call = NULL;
	q->status = status;
	if (status != KVB_OK) {
		g_strlcpy(q->why, why ? why : kvb_strerror(status), sizeof(q->why));
		query_deliver(q);
		return;
	}
	/* cache every engine of the reply (vLLM's D does too) */
	for (uint32_t i = 0; i < r->n_engines; i++) {
		const kvb_vllm_boot_engine_t *be = &r->engines[i];
		v2engine_t *e = g_new0(v2engine_t, 1);
		engine_key(e->key, sizeof(e->key), q->bootstrap, be->engine_id);
		g_strlcpy(e->engine_id, be->engine_id, sizeof(e->engine_id));
		e->dp_rank = be->dp_rank;
		e->tp_size = be->tp_size;
		e->pp_size = 0;
		for (uint32_t k = 0; k < be->n_workers; k++)
			e->pp_size = MAX(e->pp_size, r->workers[be->first_worker + k].pp_rank + 1);
		e->workers = g_new0(char *, (size_t)e->tp_size * e->pp_size + 1);
		bool complete = true;
		for (uint32_t t = 0; t < e->tp_size; t++)
			for (uint32_t pp = 0; pp < e->pp_size; pp++) {
				const kvb_vllm_boot_worker_t *wk = kvb_vllm_query_worker(r, be, t, pp);
				if (!wk) {
					complete = false;
					e->workers[t * e->pp_size + pp] = g_strdup("");
					continue;
				}
				e->workers[t * e->pp_size + pp] =
					g_strdup_printf(wk->where.ipv6 ? "vllm2://[%s]:%u" : "vllm2://%s:%u",
							wk->where.host, wk->where.port);
			}
		if (!complete) {
			hw_warn(v->hw, "vLLM bootstrap http://%s: engine %s is missing workers (not every "
				"tp/pp rank registered yet)", q->bootstrap, e->engine_id);
			engine_free(e);
			continue;
		}
		g_hash_table_replace(v->engines, e->key, e);
	}
	query_deliver(q);
}

int hw_vllm2_query(hw_t *hw, const char *bootstrap_addr, const char *engine_id,
		   kvb_hw_vllm_query_fn fn, void *user, kvb_err_t *err)
{
	struct hw_vllm2 *v = hw->vllm2;
	if (!v)
		return kvb_err_set(err, KVB_ERR_STATE, "this instance does not speak vLLM Gen 1/2");
	if (!bootstrap_addr || !engine_id || !*engine_id || !fn ||
	    strlen(engine_id) >= KVB_VLLM_ENGINE_ID_MAX)
		return kvb_err_set(err, KVB_ERR_INVALID, "vLLM query: bootstrap address, engine id (1..%u "
				   "bytes) and a callback are needed", KVB_VLLM_ENGINE_ID_MAX - 1);
	const char *a = bootstrap_addr;
	if (g_str_has_prefix(a, "http://"))
		a += 7;
	char hostport[KVB_VLLM_ADDR_MAX];
	g_strlcpy(hostport, a, sizeof(hostport));
	char *slash = strchr(hostport, '/');
	if (slash)
		*slash = 0;
	char host[KVB_VLLM_HOST_MAX];
	uint16_t port;
	if (strstr(bootstrap_addr, "://") && !g_str_has_prefix(bootstrap_addr, "http://"))
		return kvb_err_set(err, KVB_ERR_INVALID, "bootstrap address %s: only http:// is served "
				   "by vLLM's bootstrap", bootstrap_addr);
	if (kvb_mc_parse_host_port(hostport, host, sizeof(host), &port, err) != KVB_OK)
		return kvb_err_set(err, KVB_ERR_INVALID, "bootstrap address %s: %s", bootstrap_addr,
				   err->msg);
	v2waiter_t *w = g_new0(v2waiter_t, 1);
	g_strlcpy(w->engine_id, engine_id, sizeof(w->engine_id));
	w->fn = fn;
	w->user = user;
	/* join a query in flight for this bootstrap */
	for (GList *l = v->queries.head; l; l = l->next) {
		v2query_t *q = l->data;
		if (!strcmp(q->bootstrap, hostport)) {
			g_queue_push_tail(&q->waiters, w);
			return KVB_OK;
		}
	}
	v2query_t *q = g_new0(v2query_t, 1);
	q->v = v;
	g_strlcpy(q->bootstrap, hostport, sizeof(q->bootstrap));
	g_strlcpy(q->host, host, sizeof(q->host));
	q->port = port;
	g_queue_init(&q->waiters);
	g_queue_push_tail(&q->waiters, w);
	g_queue_push_tail(&v->queries, q);
	char key[sizeof(((v2engine_t *)0)->key)];
	engine_key(key, sizeof(key), hostport, engine_id);
	if (g_hash_table_lookup(v->engines, key)) {
		q->later = hw_deadline_new(hw, query_later, q);
		hw_deadline_arm(q->later, 0);
		return KVB_OK;
	}
	hw->stats.vllm_queries++;
	q->call = hw_vllm_bootstrap_query(hw, host, port, query_answered, q);
	return KVB_OK;
}

/* A pull through worker endpoint "host:port" could not connect or lost its
 * connection: forget the engines that list it, so the next query asks the
 * bootstrap again (the producer may have restarted on new ports). */
static void engines_forget(struct hw_vllm2 *v, const char *addr)
{
	GHashTableIter it;
	gpointer val;
	g_hash_table_iter_init(&it, v->engines);
	while (g_hash_table_iter_next(&it, NULL, &val)) {
		v2engine_t *e = val;
		for (char **wk = e->workers; *wk; wk++)
			if (!strcmp(*wk, addr)) {
				hw_log(v->hw, "vLLM engine %s forgotten: its worker %s failed", e->engine_id, addr);
				g_hash_table_iter_remove(&it);
				break;
			}
	}
}

/* ------------------------------------------------------------------------ */
/* consumer side                                                            */

typedef struct v2client {
	struct hw_vllm2 *v;
	hw_peer_t *peer;
	char endpoint[KVB_VLLM_ADDR_MAX]; /* tcp://host:port */
	GQueue pulls;               /* v2pull_t*: every pull of ours, pending or sent */
	GQueue pending;             /* v2pull_t*: posted this turn, not yet sent */
	GQueue busy;                /* v2chan_t*: channels carrying our messages */
	hw_deadline_t *flush;       /* sends the pending pulls, a batch per message */
	hw_deadline_t *kick;        /* after a send: reads what already came */
} v2client_t;

/* A DEALER to one producer worker and its monitor: carries one message
 * (one batch of pulls) at a time, then idles in v->idle_chans until the
 * next batch to that worker. */
typedef struct v2chan {
	struct hw_vllm2 *v;
	char endpoint[KVB_VLLM_ADDR_MAX]; /* tcp://host:port */
	void *sock;
	hw_watch_t *w;
	void *mon;                  /* PAIR end of the DEALER's socket monitor */
	hw_watch_t *mon_w;
	bool connected;
	v2client_t *vc;             /* whose message it carries; NULL while idle */
	GQueue pulls;               /* v2pull_t*: the message's requests not yet answered */
	bool reusable;              /* the message's last reply came: may serve again */
	hw_deadline_t *timer;       /* the connect timeout, then the reply timeout */
	hw_deadline_t *idle_timer;
} v2chan_t;

/* One pull: pending until the turn's flush, then on a channel. */
typedef struct v2pull {
	v2client_t *vc;
	char transfer_id[KVB_ID_MAX];
	char request_id[KVB_ID_MAX];
	uint64_t bytes;
	v2chan_t *ch;               /* NULL while pending */
	kvb_wire_pull_t pull;       /* while pending: what a batch's message is built from */
	GByteArray *payload;        /* while pending: this pull's message on its own */
	GArray *ranges;             /* uint64_t pairs: destination ranges (for fences) */
} v2pull_t;

#define BATCH_MAX 64u               /* requests in one MooncakeXferMetadata */

static bool chan_monitor(v2chan_t *ch);

static void chan_free(v2chan_t *ch)
{
	hw_watch_free(ch->w);
	hw_watch_free(ch->mon_w);
	hw_deadline_free(ch->timer);
	hw_deadline_free(ch->idle_timer);
	hw_zmq_monitor_close(ch->sock, ch->mon);
	if (ch->sock)
		zmq_close(ch->sock);
	g_free(ch);
}

static GQueue *idle_queue(struct hw_vllm2 *v, const char *endpoint, bool create)
{
	GQueue *q = g_hash_table_lookup(v->idle_chans, endpoint);
	if (!q && create) {
		q = g_queue_new();
		g_hash_table_insert(v->idle_chans, g_strdup(endpoint), q);
	}
	return q;
}

static void chan_unpark(v2chan_t *ch)
{
	GQueue *q = idle_queue(ch->v, ch->endpoint, false);
	if (q) {
		g_queue_remove(q, ch);
		if (!q->length)
			g_hash_table_remove(ch->v->idle_chans, ch->endpoint);
	}
	hw_deadline_disarm(ch->idle_timer);
}

static void chan_idle_expired(void *obj)
{
	v2chan_t *ch = obj;
	chan_unpark(ch);
	chan_free(ch);
}

/* The last pull of ch's message is over: keep ch for the next, or close it. */
static void chan_release(v2chan_t *ch)
{
	g_queue_remove(&ch->vc->busy, ch);
	ch->vc = NULL;
	hw_deadline_disarm(ch->timer);
	GQueue *q = ch->reusable && ch->connected ? idle_queue(ch->v, ch->endpoint, true) : NULL;
	if (!q || q->length >= IDLE_PER_WORKER) {
		chan_free(ch);
		return;
	}
	g_queue_push_tail(q, ch);
	hw_deadline_arm(ch->idle_timer, IDLE_NS);
}

/* Frees vp; releases its channel (maybe freeing it) when vp was the last. */
static void pull_free(v2pull_t *vp)
{
	g_queue_remove(&vp->vc->pulls, vp);
	if (vp->ch) {
		g_queue_remove(&vp->ch->pulls, vp);
		if (!vp->ch->pulls.length)
			chan_release(vp->ch);
	} else {
		g_queue_remove(&vp->vc->pending, vp);
		kvb_wire_pull_clear(&vp->pull);
	}
	if (vp->payload)
		g_byte_array_unref(vp->payload);
	if (vp->ranges)
		g_array_free(vp->ranges, TRUE);
	hw_window_close(vp->vc->v->hw, vp, NULL, NULL);
	g_free(vp);
}

static void client_done(v2client_t *vc, const char *transfer_id, const char *request_id, int status,
			uint64_t bytes, const char *reason)
{
	kvb_wire_notice_t n;
	kvb_wire_notice_fill(&n, KVB_WIRE_DONE, transfer_id, request_id, status, bytes, reason);
	GByteArray *out = g_byte_array_new();
	if (kvb_wire_encode_notice(out, &n, NULL) == KVB_OK)
		hw_peer_deliver(vc->peer, out->data, out->len);
	g_byte_array_unref(out);
}

/* End a pull with a failure; forget engines when the worker is unreachable. */
static void pull_fail(v2pull_t *vp, int status, const char *why, bool forget)
{
	v2client_t *vc = vp->vc;
	if (forget)
		engines_forget(vc->v, vc->peer->addr);
	hw_set_error(vc->v->hw, "vLLM producer %s: %s", vc->endpoint, why);
	client_done(vc, vp->transfer_id, vp->request_id, status, 0, why);
	pull_free(vp);
}

/* Fail every pull ch's message still waits for; ch is released (freed). */
static void chan_fail_all(v2chan_t *ch, int status, const char *why, bool forget)
{
	ch->reusable = false;
	for (guint n = ch->pulls.length; n; n--)
		pull_fail(ch->pulls.head->data, status, why, forget);
}

/* What one reply means for vp: 1 done, -1 failed (why, status), 0 pending. */
static int reply_verdict(const kvb_vllm_xfer_resp_t *resp, const v2pull_t *vp, char *why,
			 size_t why_len, int *status)
{
	bool ok = false, bad = false;
	for (uint32_t k = 0; k < resp->n_ok_reqs; k++)
		ok |= !strcmp(resp->ok_reqs[k], vp->request_id);
	for (uint32_t k = 0; k < resp->n_err_reqs; k++)
		bad |= !strcmp(resp->err_reqs[k], vp->request_id);
	const char *msg = resp->err_msg ? resp->err_msg : "no reason given";
	*status = KVB_ERR_PEER;
	if (resp->status == KVB_VLLM_XFER_ERROR) {
		g_snprintf(why, why_len, "the vLLM producer refused the request: %s", msg);
		return -1;
	}
	if (bad) {
		if (!strcmp(msg, TIMEOUT_TEXT))
			*status = KVB_ERR_TIMEOUT;
		g_snprintf(why, why_len, "the vLLM producer failed it: %s", msg);
		return -1;
	}
	if (ok)
		return 1;
	if (resp->status == KVB_VLLM_XFER_FINISH) {
		g_snprintf(why, why_len, "the vLLM producer finished without naming request %s",
			   vp->request_id);
		return -1;
	}
	return 0;
}

/* The replies that came on a busy ch: true when its message ended (ch
 * released, maybe freed). */
static bool chan_replies(v2chan_t *ch)
{
	for (int i = 0; i < 64 && hw_zmq_readable(ch->sock); i++) {
		zmq_msg_t frames[HW_ZMQ_MAX_FRAMES];
		size_t total;
		int n = hw_zmq_recv(ch->sock, frames, &total);
		if (n <= 0)
			return false;
		zmq_msg_t *last = &frames[n - 1];
		kvb_vllm_xfer_resp_t resp;
		kvb_err_t err;
		char why[KVB_ERR_MSG_MAX + 64];
		int rc = kvb_vllm_xfer_resp_decode(zmq_msg_data(last), zmq_msg_size(last), &resp, &err);
		hw_zmq_frames_close(frames, n);
		if (rc != KVB_OK) {
			g_snprintf(why, sizeof(why), "unreadable reply: %s", err.msg);
			chan_fail_all(ch, KVB_ERR_PROTOCOL, why, false);
			return true;
		}
		/* FINISH and ERROR are a message's last reply */
		ch->reusable = resp.status == KVB_VLLM_XFER_FINISH || resp.status == KVB_VLLM_XFER_ERROR;
		bool ended = false;
		GList *l = ch->pulls.head;
		while (l && !ended) {
			GList *next = l->next;
			v2pull_t *vp = l->data;
			int status;
			int verdict = reply_verdict(&resp, vp, why, sizeof(why), &status);
			ended = verdict != 0 && ch->pulls.length == 1; /* ch goes with its last pull */
			if (verdict > 0) {
				client_done(vp->vc, vp->transfer_id, vp->request_id, KVB_OK, vp->bytes, NULL);
				pull_free(vp);
			} else if (verdict < 0) {
				pull_fail(vp, status, why, false);
			}
			l = next;
		}
		kvb_vllm_xfer_resp_clear(&resp);
		if (ended)
			return true;
	}
	return false;
}

/* What an idle DEALER receives cannot be about any pull: dropped. */
static void chan_discard(v2chan_t *ch)
{
	for (int i = 0; i < 64 && hw_zmq_readable(ch->sock); i++) {
		zmq_msg_t frames[HW_ZMQ_MAX_FRAMES];
		size_t total;
		int n = hw_zmq_recv(ch->sock, frames, &total);
		if (n <= 0)
			return;
		hw_zmq_frames_close(frames, n);
		hw_log(ch->v->hw, "vllm2: a reply on an idle connection to %s dropped", ch->endpoint);
	}
}

static bool chan_io(void *obj, GIOCondition cond)
{
	(void)cond;
	v2chan_t *ch = obj;
	hw_watch_t *w = ch->w;
	hw_watch_ref(w);
	if (ch->vc)
		chan_replies(ch);
	else
		chan_discard(ch);
	bool alive = !hw_watch_gone(w);
	hw_watch_unref(w);
	return alive;
}

/* Monitor events: 6 bytes (u16 event, u32 value), then the endpoint.
 * True when ch was released or freed (its message ended, or it was idle
 * and lost). */
static bool chan_monitor(v2chan_t *ch)
{
	unsigned ev;
	while ((ev = hw_zmq_monitor_next(ch->mon))) {
		if (ev == ZMQ_EVENT_CONNECTED) {
			ch->connected = true;
			if (ch->vc)
				hw_deadline_arm(ch->timer, ch->v->hw->p.vllm_abort_timeout_ns + RCV_EXTRA_NS);
		} else if (ev == ZMQ_EVENT_DISCONNECTED && ch->connected) {
			ch->connected = false;
			if (!ch->vc) {
				chan_unpark(ch);
				chan_free(ch);
				return true;
			}
			/* replies may still be queued: read them first */
			if (chan_replies(ch))
				return true;
			chan_fail_all(ch, KVB_ERR_PEER,
				      "the producer worker closed the connection before its final reply", true);
			return true;
		}
	}
	return false;
}

static bool chan_mon_io(void *obj, GIOCondition cond)
{
	(void)cond;
	v2chan_t *ch = obj;
	hw_watch_t *w = ch->mon_w;
	hw_watch_ref(w);
	chan_monitor(ch);
	bool alive = !hw_watch_gone(w);
	hw_watch_unref(w);
	return alive;
}

static void chan_timeout(void *obj)
{
	v2chan_t *ch = obj;
	hw_t *hw = ch->v->hw;
	char why[160];
	if (!ch->connected) {
		g_snprintf(why, sizeof(why), "no connection to the producer worker within %.1f s",
			   (double)hw->p.connect_timeout_ns / 1e9);
		chan_fail_all(ch, KVB_ERR_PEER, why, true);
		return;
	}
	g_snprintf(why, sizeof(why), "no final reply from the producer worker within %.0f s",
		   (double)(hw->p.vllm_abort_timeout_ns + RCV_EXTRA_NS) / 1e9);
	chan_fail_all(ch, KVB_ERR_TIMEOUT, why, false);
}

/* An idle channel to endpoint, or a new one (connecting). */
static v2chan_t *chan_take(struct hw_vllm2 *v, const char *endpoint)
{
	hw_t *hw = v->hw;
	GQueue *q = idle_queue(v, endpoint, false);
	while (q && q->length) {
		v2chan_t *ch = g_queue_pop_head(q);
		if (!q->length)
			g_hash_table_remove(v->idle_chans, endpoint);
		hw_deadline_disarm(ch->idle_timer);
		/* a disconnect may be waiting in the monitor (then ch is freed) */
		if (!chan_monitor(ch)) {
			if (ch->connected) {
				hw->stats.vllm_dealers_reused++;
				return ch;
			}
			chan_free(ch);
		}
		q = idle_queue(v, endpoint, false);
	}
	v2chan_t *ch = g_new0(v2chan_t, 1);
	ch->v = v;
	g_strlcpy(ch->endpoint, endpoint, sizeof(ch->endpoint));
	g_queue_init(&ch->pulls);
	ch->timer = hw_deadline_new(hw, chan_timeout, ch);
	ch->idle_timer = hw_deadline_new(hw, chan_idle_expired, ch);
	ch->sock = zmq_socket(hw_zmq_ctx(), ZMQ_DEALER);
	int zero = 0;
	zmq_setsockopt(ch->sock, ZMQ_LINGER, &zero, sizeof(zero));
	/* a monitor tells connected / disconnected at once, where ZMQ itself
	 * would reconnect silently for ever */
	ch->mon = hw_zmq_monitor_open(ch->sock);
	if (!ch->mon || zmq_connect(ch->sock, endpoint) != 0) {
		hw_set_error(hw, "vllm2 client: %s: %s", endpoint, zmq_strerror(errno));
		chan_free(ch);
		return NULL;
	}
	ch->w = hw_watch_new(hw, hw_zmq_fd(ch->sock), G_IO_IN, chan_io, ch);
	ch->mon_w = hw_watch_new(hw, hw_zmq_fd(ch->mon), G_IO_IN, chan_mon_io, ch);
	hw->stats.vllm_dealers++;
	return ch;
}

static void client_kick(void *obj)
{
	v2client_t *vc = obj;
	GList *l = vc->busy.head;
	while (l) {
		GList *next = l->next; /* only l's own channel can leave the list */
		v2chan_t *ch = l->data;
		if (!chan_monitor(ch))
			chan_replies(ch);
		l = next;
	}
}

/* Our name for a region the core sent: the layout's, found by base. */
static void region_name(struct hw_vllm2 *v, const kvb_region_t *r, char *name, size_t len)
{
	for (uint32_t i = 0; i < v->n_regions; i++)
		if (v->regions[i].r.base == r->base && v->regions[i].r.block_stride == r->block_stride) {
			g_strlcpy(name, v->regions[i].name, len);
			return;
		}
	g_snprintf(name, len, "model.layers.%d.self_attn.attn", r->layer);
}

/* Whether b can ride in a's message: the same rank and the same regions. */
static bool pull_batchable(const kvb_wire_pull_t *a, const kvb_wire_pull_t *b)
{
	if (a->tp_size != b->tp_size || a->tp_rank != b->tp_rank || a->n_regions != b->n_regions ||
	    a->n_groups != b->n_groups)
		return false;
	for (uint32_t i = 0; i < a->n_regions; i++) {
		const kvb_region_t *x = &a->regions[i], *y = &b->regions[i];
		if (x->base != y->base || x->block_stride != y->block_stride ||
		    x->block_bytes != y->block_bytes || x->layer != y->layer || x->group != y->group)
			return false;
	}
	return true;
}

/* The MooncakeXferMetadata a vLLM D of our release sends for these pulls
 * (one request each; the regions are the first's, the same in all). */
static int pull_encode(struct hw_vllm2 *v, const kvb_wire_pull_t *const *pulls, uint32_t n_pulls,
		       GByteArray *out, uint64_t *bytes, kvb_err_t *err)
{
	hw_t *hw = v->hw;
	const kvb_wire_pull_t *first = pulls[0];
	kvb_vllm_xfer_meta_t m;
	int rc = kvb_vllm_xfer_meta_init(&m, hw->host, hw->rpc_port, first->tp_size, first->tp_rank, err);
	uint32_t *counts = g_new0(uint32_t, first->n_groups ? first->n_groups : 1);
	for (uint32_t q = 0; q < n_pulls && rc == KVB_OK; q++) {
		const kvb_wire_pull_t *pull = pulls[q];
		uint32_t n_ids = 0;
		for (uint32_t g = 0; g < pull->n_groups; g++)
			n_ids += counts[g] = pull->groups[g].count;
		uint32_t *ids = g_new0(uint32_t, n_ids ? n_ids : 1);
		for (uint32_t g = 0, k = 0; g < pull->n_groups; g++)
			for (uint32_t i = 0; i < pull->groups[g].count; i++)
				ids[k++] = pull->groups[g].ids[i];
		rc = kvb_vllm_xfer_meta_add_request(&m, pull->request_id, pull->transfer_id, ids, counts,
						    n_ids ? pull->n_groups : 0, err);
		g_free(ids);
	}
	uint32_t fields = kvb_vllm_xfer_profile_fields(v->profile) & KVB_VLLM_XF_REGION_MASK;
	fields &= ~(KVB_VLLM_XF_BIT(KVB_VLLM_XF_SHARED_GROUP_IDS) | KVB_VLLM_XF_BIT(KVB_VLLM_XF_ROW_OFFSETS));
	*bytes = 0;
	for (uint32_t i = 0; i < first->n_regions && rc == KVB_OK; i++) {
		const kvb_region_t *r = &first->regions[i];
		char name[KVB_VLLM_NAME_MAX];
		region_name(v, r, name, sizeof(name));
		const uint32_t shared = (uint32_t)r->group;
		kvb_vllm_xfer_region_t x = {
			.fields = fields | (kvb_vllm_xfer_profile_fields(v->profile) &
					    (KVB_VLLM_XF_BIT(KVB_VLLM_XF_SHARED_GROUP_IDS) |
					     KVB_VLLM_XF_BIT(KVB_VLLM_XF_ROW_OFFSETS))),
			.base_addr = r->base,
			.block_len = r->block_stride,
			.kv_block_len = r->block_bytes,
			.layer_name = name,
			.layer_index = (uint32_t)r->layer,
			.group_index = r->group,
			.shared_group_ids = &shared,
			.n_shared_group_ids = 1,
			.row_offset = -1,
		};
		rc = kvb_vllm_xfer_meta_add_region(&m, &x, err);
		if (r->group >= 0 && (uint32_t)r->group < first->n_groups)
			*bytes += (uint64_t)first->groups[r->group].count * r->block_bytes;
	}
	if (rc == KVB_OK)
		rc = kvb_vllm_xfer_meta_encode(v->profile, out, &m, err);
	kvb_vllm_xfer_meta_clear(&m);
	g_free(counts);
	return rc;
}

/* Send the first pending pull with those that can share its message. */
static void client_send_batch(v2client_t *vc)
{
	struct hw_vllm2 *v = vc->v;
	hw_t *hw = v->hw;
	v2pull_t *batch[BATCH_MAX] = {vc->pending.head->data};
	const kvb_wire_pull_t *pulls[BATCH_MAX] = {&batch[0]->pull};
	uint32_t n = 1;
	for (GList *l = vc->pending.head->next; l && n < BATCH_MAX; l = l->next) {
		v2pull_t *vp = l->data;
		if (!pull_batchable(pulls[0], &vp->pull))
			continue;
		batch[n] = vp;
		pulls[n++] = &vp->pull;
	}
	GByteArray *payload = batch[0]->payload;
	GByteArray *joint = NULL;
	if (n > 1) {
		uint64_t ignored;
		kvb_err_t err;
		joint = g_byte_array_new();
		if (pull_encode(v, pulls, n, joint, &ignored, &err) == KVB_OK) {
			payload = joint;
		} else { /* cannot happen when each encoded alone; then alone */
			hw_log(hw, "vllm2 client: %u requests in one message: %s", n, err.msg);
			n = 1;
		}
	}
	v2chan_t *ch = chan_take(v, vc->endpoint);
	if (!ch || zmq_send(ch->sock, payload->data, payload->len, ZMQ_DONTWAIT) < 0) {
		char why[160];
		g_snprintf(why, sizeof(why), "cannot send to the producer worker: %s", zmq_strerror(errno));
		if (ch)
			chan_free(ch);
		for (uint32_t i = 0; i < n; i++)
			pull_fail(batch[i], KVB_ERR_PEER, why, false);
	} else {
		ch->vc = vc;
		ch->reusable = false;
		g_queue_push_tail(&vc->busy, ch);
		for (uint32_t i = 0; i < n; i++) {
			v2pull_t *vp = batch[i];
			g_queue_remove(&vc->pending, vp);
			kvb_wire_pull_clear(&vp->pull);
			g_byte_array_unref(vp->payload);
			vp->payload = NULL;
			vp->ch = ch;
			g_queue_push_tail(&ch->pulls, vp);
		}
		if (n > 1)
			hw->stats.vllm_batched_pulls += n;
		hw_deadline_arm(ch->timer, ch->connected ? hw->p.vllm_abort_timeout_ns + RCV_EXTRA_NS
							 : hw->p.connect_timeout_ns);
		hw_deadline_arm(vc->kick, 0);
	}
	if (joint)
		g_byte_array_unref(joint);
}

/* The turn's pulls to this worker go out as vLLM's D sends a batch: one
 * message (and DEALER) per batch and worker, naming all its requests. */
static void client_flush(void *obj)
{
	v2client_t *vc = obj;
	while (vc->pending.length)
		client_send_batch(vc);
}

static int client_pull(v2client_t *vc, const void *buf, size_t len)
{
	struct hw_vllm2 *v = vc->v;
	hw_t *hw = v->hw;
	v2pull_t *vp = g_new0(v2pull_t, 1);
	kvb_err_t err;
	if (kvb_wire_decode_pull(buf, len, &vp->pull, &err) != KVB_OK) {
		hw_set_error(hw, "vllm2 client: %s", err.msg);
		g_free(vp);
		return KVB_ERR_INVALID;
	}
	/* encoded alone now, so that what cannot be sent is refused at once */
	const kvb_wire_pull_t *one = &vp->pull;
	vp->payload = g_byte_array_new();
	int rc = pull_encode(v, &one, 1, vp->payload, &vp->bytes, &err);
	if (rc != KVB_OK) {
		hw_set_error(hw, "vllm2 client: request %s: %s", vp->pull.request_id, err.msg);
		g_byte_array_unref(vp->payload);
		kvb_wire_pull_clear(&vp->pull);
		g_free(vp);
		return rc;
	}
	vp->vc = vc;
	g_strlcpy(vp->transfer_id, vp->pull.transfer_id, sizeof(vp->transfer_id));
	g_strlcpy(vp->request_id, vp->pull.request_id, sizeof(vp->request_id));
	vp->ranges = hw_pull_ranges(&vp->pull);
	if (hw_rdma_ranges_closed(hw, vp->ranges)) {
		hw_set_error(hw, "vllm2 client: request %s: %s", vp->request_id, "vLLM's side channel carries no per-pull RDMA keys, and this worker's memory is closed to "
			     "remote access: start it with KVB_RDMA_BUFFER_KEYS=1 (kvbridge-serve --rdma-buffer-keys) "
			     "to let vLLM producers write with the descriptor's keys (docs/security.md)");
		g_array_free(vp->ranges, TRUE);
		g_byte_array_unref(vp->payload);
		kvb_wire_pull_clear(&vp->pull);
		g_free(vp);
		return KVB_ERR_INVALID;
	}
	/* the producer may write these blocks, and only these, until the pull ends */
	char peer[64];
	hw_window_peer_of(vc->endpoint, peer, sizeof(peer));
	hw_window_open(hw, vp, vp->transfer_id, vp->request_id, vp->ranges, peer);
	/* the blocks are ours for this pull again: lift old fences on them */
	for (guint i = 0; i + 1 < vp->ranges->len; i += 2)
		hw_fence_clear(hw, g_array_index(vp->ranges, uint64_t, i),
			       g_array_index(vp->ranges, uint64_t, i + 1));
	g_queue_push_tail(&vc->pulls, vp);
	g_queue_push_tail(&vc->pending, vp);
	hw_deadline_arm(vc->flush, 0);
	return KVB_OK;
}

static void client_cancel(v2client_t *vc, const kvb_wire_notice_t *n)
{
	hw_t *hw = vc->v->hw;
	for (GList *l = vc->pulls.head; l; l = l->next) {
		v2pull_t *vp = l->data;
		if (strcmp(vp->transfer_id, n->transfer_id) || strcmp(vp->request_id, n->request_id))
			continue;
		if (vp->ch) /* sent: the producer may still write */
			for (guint i = 0; i + 1 < vp->ranges->len; i += 2)
				hw_fence_add(hw, g_array_index(vp->ranges, uint64_t, i),
					     g_array_index(vp->ranges, uint64_t, i + 1));
		client_done(vc, vp->transfer_id, vp->request_id, KVB_ERR_ABORTED, 0,
			    vp->ch ? "cancelled; a vLLM producer cannot be told to stop, so its late "
				     "writes into these blocks are refused"
				   : "cancelled before it was sent");
		pull_free(vp);
		return;
	}
}

static int client_msg_send(hw_peer_t *p, const void *buf, size_t len)
{
	v2client_t *vc = p->proto;
	kvb_wire_type_t type;
	kvb_err_t err;
	if (kvb_wire_peek(buf, len, &type, &err) != KVB_OK) {
		hw_set_error(p->hw, "msg_send: %s", err.msg);
		return KVB_ERR_INVALID;
	}
	if (type == KVB_WIRE_PULL)
		return client_pull(vc, buf, len);
	if (type == KVB_WIRE_CANCEL) {
		kvb_wire_notice_t n;
		if (kvb_wire_decode_notice(buf, len, &n, NULL) == KVB_OK)
			client_cancel(vc, &n);
	}
	return KVB_OK; /* HEARTBEAT: vLLM has none */
}

static void client_detach(hw_peer_t *p)
{
	v2client_t *vc = p->proto;
	if (vc) {
		while (vc->pulls.head)
			pull_free(vc->pulls.head->data);
		hw_deadline_free(vc->flush);
		hw_deadline_free(vc->kick);
		g_free(vc);
	}
	p->proto = NULL;
}

static void client_accepted(hw_peer_t *p)
{
	(void)p; /* never announced: clients are only dialled */
}

static const hw_peer_ops_t client_ops = {
	.protocol = "vllm gen2 (consumer)",
	.accepted = client_accepted,
	.msg_send = client_msg_send,
	.closed = hw_peer_free,
	.detach = client_detach,
};

int hw_vllm2_client_connect(hw_t *hw, kvb_conn_t *conn, const char *addr, const char *host,
			    uint16_t port)
{
	struct hw_vllm2 *v = hw->vllm2;
	if (!v) {
		hw_set_error(hw, "peer %s: this instance does not speak vLLM Gen 1/2 "
				 "(vllm_protocol gen2)", addr);
		return KVB_ERR_UNSUPPORTED;
	}
	hw_peer_t *p = hw_peer_new(hw, HW_PEER_VLLM_CLIENT, &client_ops, addr);
	hw_peer_bind(p, conn);
	v2client_t *vc = g_new0(v2client_t, 1);
	vc->v = v;
	vc->peer = p;
	g_queue_init(&vc->pulls);
	g_queue_init(&vc->pending);
	g_queue_init(&vc->busy);
	g_snprintf(vc->endpoint, sizeof(vc->endpoint), strchr(host, ':') ? "tcp://[%s]:%u" : "tcp://%s:%u",
		   host, port);
	vc->kick = hw_deadline_new(hw, client_kick, vc);
	vc->flush = hw_deadline_new(hw, client_flush, vc);
	p->proto = vc;
	g_strlcpy(p->host, host, sizeof(p->host));
	p->port = port;
	/* ZMQ connects lazily; the peer is up at once (errors show per pull) */
	p->link.have_seg = true;
	hw_peer_up(p);
	return KVB_INPROGRESS;
}

static void idle_queue_free(gpointer data)
{
	GQueue *q = data;
	v2chan_t *ch;
	while ((ch = g_queue_pop_head(q)))
		chan_free(ch);
	g_queue_free(q);
}

void hw_vllm2_client_init(struct hw_vllm2 *v)
{
	g_queue_init(&v->queries);
	v->engines = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, engine_free);
	v->idle_chans = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, idle_queue_free);
}

void hw_vllm2_client_fini(struct hw_vllm2 *v)
{
	while (v->queries.head) {
		v2query_t *q = v->queries.head->data;
		g_queue_clear_full(&q->waiters, g_free); /* no callbacks after close */
		query_deliver(q);
	}
	g_hash_table_destroy(v->engines);
	g_hash_table_destroy(v->idle_chans);
}
