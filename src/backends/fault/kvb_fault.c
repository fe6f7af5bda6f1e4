/*
 * The fault backend: wraps another backend instance and injects failures
 * (rules and counting in include/kvbridge/fault.h).
 *
 * Every op is forwarded to the inner instance with the core's own kvb_conn_t
 * pointers, so the core must allocate conns with this backend's conn_size
 * (FAULT_CONN_SIZE, checked against the inner backend's at open) and the
 * inner backend must not rely on conn->backend.
 *
 * Events reach the core through one queue (`ready`): inner events pass
 * through the rules on their way out of event_poll, synthesized events (a
 * slice failed at completion, a failed connect) and released ones are added
 * to it.  Every MSG payload is copied when it leaves the inner backend, so
 * held, duplicated and reordered messages outlive the inner buffer; handed-out
 * payloads are freed at the start of the next event_poll.
 *
 * Held items with a deadline (DELAY_MSG, STALL_COMPLETIONS with delay_ns) are
 * released by timers armed on the inner backend with the cookie
 *   KVB_COOKIE_RESERVED | instance tag << 40 | hold id.
 * Such timers are consumed here.  A reserved timer with another tag is passed
 * up only if a wrapper above armed it through us; any other is dropped, so a
 * reserved cookie never reaches the core.
 */
#include "config.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/fault.h>

#define FAULT_RULES_MAX 32u
#define FAULT_CONN_SIZE 512u
#define FAULT_ERR_MAX 256
#define FAULT_ID_BITS 40
#define FAULT_ID_MASK ((UINT64_C(1) << FAULT_ID_BITS) - 1)
#define FAULT_TAG_MASK (~(KVB_COOKIE_RESERVED | FAULT_ID_MASK))
#define FAULT_POLL_CHUNK 64

/* An event on its way to the core, or held back. */
typedef struct fault_item {
	kvb_event_t ev;
	void *buf;               /* owned copy of a MSG payload (ev.data) */
	uint64_t hold_id;        /* != 0 while an inner timer will release it */
	uint64_t timer_id;       /* the inner timer */
} fault_item_t;

typedef struct fault_inst {
	kvb_backend_t *inner;
	uint64_t tag;            /* bits 40..62 of our timer cookies */
	kvb_fault_rule_t rules[FAULT_RULES_MAX];
	uint32_t n_rules;
	uint64_t n_posts, n_msgs, n_completions, n_connects;
	kvb_fault_stats_t stats;
	GQueue ready;            /* fault_item_t *, in delivery order */
	GQueue held;             /* delayed messages and stalled completions */
	GQueue reorder;          /* messages waiting for the next one on their conn */
	GHashTable *held_ids;    /* &hold_id -> fault_item_t * (timed holds) */
	GPtrArray *delivered;    /* payloads handed out by the last poll */
	GHashTable *failed_conns; /* conns whose connect was failed here: inner never saw them */
	GHashTable *upstream;    /* reserved cookies armed through us from above -> count */
	uint64_t next_hold;
	bool own_error;
	char err[FAULT_ERR_MAX];
} fault_inst_t;

static gint fault_tag_counter;

static int fault_instance_open(kvb_backend_t *be, const void *args, kvb_err_t *err);

/* ---- helpers ---- */

static fault_inst_t *fi_of(kvb_backend_t *be)
{
	return (fault_inst_t *)be->priv;
}

static fault_inst_t *fi_checked(kvb_backend_t *be)
{
	if (!be || be->ops->instance_open != fault_instance_open)
		return NULL;
	return fi_of(be);
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static int fault_fail(fault_inst_t *fi, int code, const char *fmt, ...) KVB_PRINTF(3, 4);

static int fault_fail(fault_inst_t *fi, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(fi->err, sizeof(fi->err), fmt, ap);
	va_end(ap);
	fi->own_error = true;
	return code;
}

/* The result of a forwarded call: a failure is the inner backend's to
 * describe. */
static int fault_inner_rc(fault_inst_t *fi, int rc)
{
	if (rc < 0)
		fi->own_error = false;
	return rc;
}

static fault_item_t *item_new(const kvb_event_t *ev)
{
	fault_item_t *it = g_new0(fault_item_t, 1);
	it->ev = *ev;
	if (ev->type == KVB_EV_MSG) {
		it->buf = ev->len ? g_memdup2(ev->data, ev->len) : NULL;
		it->ev.data = it->buf;
	}
	return it;
}

static void item_free(fault_item_t *it)
{
	if (!it)
		return;
	g_free(it->buf);
	g_free(it);
}

static void item_free_cb(gpointer p)
{
	item_free(p);
}

/* Events that name a conn and so must vanish when the core closes it. */
static bool item_names(const fault_item_t *it, const kvb_conn_t *conn)
{
	switch (it->ev.type) {
	case KVB_EV_MSG:
	case KVB_EV_CONN_UP:
	case KVB_EV_CONN_DOWN:
		return it->ev.conn == conn;
	default:
		return false;
	}
}

/* How many operations from nth a rule covers.  STALL_COMPLETIONS reads
 * count 0 as "from the nth onwards" (its header line); the others as 1. */
static bool rule_covers(const kvb_fault_rule_t *r, uint64_t idx)
{
	uint64_t span = r->count ? r->count : (r->kind == KVB_FAULT_STALL_COMPLETIONS ? UINT64_MAX : 1);
	return idx >= r->nth && idx - r->nth < span;
}

/* First rule (in the order added) of one of the kinds in mask covering idx. */
static const kvb_fault_rule_t *rule_find(const fault_inst_t *fi, unsigned mask, uint64_t idx)
{
	for (uint32_t i = 0; i < fi->n_rules; i++) {
		const kvb_fault_rule_t *r = &fi->rules[i];
		if ((mask & (1u << r->kind)) && rule_covers(r, idx))
			return r;
	}
	return NULL;
}

#define KIND_BIT(k) (1u << (k))
#define MSG_KINDS (KIND_BIT(KVB_FAULT_DROP_MSG) | KIND_BIT(KVB_FAULT_DELAY_MSG) | \
		   KIND_BIT(KVB_FAULT_DUP_MSG) | KIND_BIT(KVB_FAULT_REORDER_MSG))

/* ---- holding and releasing ---- */

/* After a message is delivered on a conn, the messages REORDER_MSG held for
 * that conn follow it. */
static void reorder_flush(fault_inst_t *fi, const kvb_conn_t *conn)
{
	GList *l = fi->reorder.head;
	while (l) {
		GList *next = l->next;
		fault_item_t *it = l->data;
		if (it->ev.conn == conn) {
			g_queue_delete_link(&fi->reorder, l);
			g_queue_push_tail(&fi->ready, it);
		}
		l = next;
	}
}

static void output_msg(fault_inst_t *fi, fault_item_t *it)
{
	kvb_conn_t *conn = it->ev.conn;
	g_queue_push_tail(&fi->ready, it);
	reorder_flush(fi, conn);
}

static void output(fault_inst_t *fi, fault_item_t *it)
{
	if (it->ev.type == KVB_EV_MSG)
		output_msg(fi, it);
	else
		g_queue_push_tail(&fi->ready, it);
}

/* Hold an item; with timed, an inner timer releases it delay_ns from now.
 * If the inner backend cannot arm one, the item goes out at once. */
static void hold(fault_inst_t *fi, fault_item_t *it, bool timed, uint64_t delay_ns)
{
	if (timed) {
		kvb_backend_t *in = fi->inner;
		uint64_t id = ++fi->next_hold & FAULT_ID_MASK;
		uint64_t cookie = KVB_COOKIE_RESERVED | fi->tag | id;
		uint64_t deadline = sat_add(in->ops->clock_now_ns(in), delay_ns);
		if (in->ops->timer_arm(in, deadline, cookie, &it->timer_id) != KVB_OK) {
			output(fi, it);
			return;
		}
		it->hold_id = id;
		g_hash_table_insert(fi->held_ids, &it->hold_id, it);
	}
	g_queue_push_tail(&fi->held, it);
}

/* Take an item out of the held set (cancelling its timer when asked). */
static void unhold(fault_inst_t *fi, fault_item_t *it, bool cancel_timer)
{
	if (it->hold_id) {
		g_hash_table_remove(fi->held_ids, &it->hold_id);
		if (cancel_timer)
			fi->inner->ops->timer_cancel(fi->inner, it->timer_id);
		it->hold_id = 0;
	}
}

/* Every completion, from the inner backend or synthesized, passes here. */
static void emit_completion(fault_inst_t *fi, fault_item_t *it)
{
	fi->n_completions++;
	fi->stats.completions++;
	const kvb_fault_rule_t *r = rule_find(fi, KIND_BIT(KVB_FAULT_STALL_COMPLETIONS), fi->n_completions);
	if (!r) {
		g_queue_push_tail(&fi->ready, it);
		return;
	}
	fi->stats.completions_stalled++;
	hold(fi, it, r->delay_ns > 0, r->delay_ns);
}

static void on_msg(fault_inst_t *fi, const kvb_event_t *ev)
{
	fi->n_msgs++;
	fi->stats.msgs++;
	const kvb_fault_rule_t *r = rule_find(fi, MSG_KINDS, fi->n_msgs);
	if (r && r->kind == KVB_FAULT_DROP_MSG) {
		fi->stats.msgs_dropped++;
		return;
	}
	fault_item_t *it = item_new(ev);
	if (!r) {
		output_msg(fi, it);
		return;
	}
	switch (r->kind) {
	case KVB_FAULT_DUP_MSG:
		fi->stats.msgs_duplicated++;
		g_queue_push_tail(&fi->ready, it);
		output_msg(fi, item_new(ev));
		break;
	case KVB_FAULT_DELAY_MSG:
		fi->stats.msgs_delayed++;
		hold(fi, it, true, r->delay_ns);
		break;
	case KVB_FAULT_REORDER_MSG:
		fi->stats.msgs_reordered++;
		g_queue_push_tail(&fi->reorder, it);
		break;
	default:
		output_msg(fi, it);
		break;
	}
}

/* A reserved-cookie timer from the inner backend: ours releases a held item
 * and is swallowed; one a wrapper above armed through us goes up; any other
 * is dropped.  Returns true when the event goes to the core. */
static bool on_reserved_timer(fault_inst_t *fi, const kvb_event_t *ev)
{
	uint64_t cookie = ev->cookie;
	if ((cookie & FAULT_TAG_MASK) == fi->tag) {
		uint64_t id = cookie & FAULT_ID_MASK;
		fault_item_t *it = g_hash_table_lookup(fi->held_ids, &id);
		if (it) {
			unhold(fi, it, false);
			g_queue_remove(&fi->held, it);
			output(fi, it);
		}
		return false;
	}
	gpointer n = g_hash_table_lookup(fi->upstream, &cookie);
	if (!n)
		return false;
	if (GPOINTER_TO_UINT(n) > 1)
		g_hash_table_insert(fi->upstream, g_memdup2(&cookie, sizeof(cookie)),
				    GUINT_TO_POINTER(GPOINTER_TO_UINT(n) - 1));
	else
		g_hash_table_remove(fi->upstream, &cookie);
	return true;
}

/* Route one inner event through the rules. */
static void on_inner_event(fault_inst_t *fi, const kvb_event_t *ev)
{
	switch (ev->type) {
	case KVB_EV_MSG:
		on_msg(fi, ev);
		break;
	case KVB_EV_XFER_DONE:
		emit_completion(fi, item_new(ev));
		break;
	case KVB_EV_TIMER:
		if (!(ev->cookie & KVB_COOKIE_RESERVED) || on_reserved_timer(fi, ev))
			g_queue_push_tail(&fi->ready, item_new(ev));
		break;
	case KVB_EV_CONN_DOWN:
		reorder_flush(fi, ev->conn);
		g_queue_push_tail(&fi->ready, item_new(ev));
		break;
	default:
		g_queue_push_tail(&fi->ready, item_new(ev));
		break;
	}
}

static void purge_queue(fault_inst_t *fi, GQueue *q, const kvb_conn_t *conn)
{
	GList *l = q->head;
	while (l) {
		GList *next = l->next;
		fault_item_t *it = l->data;
		if (item_names(it, conn)) {
			g_queue_delete_link(q, l);
			unhold(fi, it, true);
			item_free(it);
		}
		l = next;
	}
}

/* ---- lifecycle ---- */

static int fault_instance_open(kvb_backend_t *be, const void *args_v, kvb_err_t *err)
{
	const kvb_fault_args_t *args = args_v;
	fault_inst_t *fi = fi_of(be);
	if (!args || !args->inner)
		return kvb_err_set(err, KVB_ERR_INVALID, "fault: args need an inner backend");
	if (args->inner->ops->conn_size > FAULT_CONN_SIZE)
		return kvb_err_set(err, KVB_ERR_UNSUPPORTED,
				   "fault: inner backend '%s' needs %zu bytes per conn, fault carries %u",
				   args->inner->ops->name, args->inner->ops->conn_size, FAULT_CONN_SIZE);
	fi->inner = args->inner;
	uint64_t tag = (uint64_t)(guint)g_atomic_int_add(&fault_tag_counter, 1) + 1;
	fi->tag = (tag << FAULT_ID_BITS) & FAULT_TAG_MASK;
	g_queue_init(&fi->ready);
	g_queue_init(&fi->held);
	g_queue_init(&fi->reorder);
	fi->held_ids = g_hash_table_new(g_int64_hash, g_int64_equal);
	fi->delivered = g_ptr_array_new_with_free_func(g_free);
	fi->failed_conns = g_hash_table_new(g_direct_hash, g_direct_equal);
	fi->upstream = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL);
	return KVB_OK;
}

/* Held timers need no cancelling: closing the inner instance discards them. */
static void fault_instance_close(kvb_backend_t *be)
{
	fault_inst_t *fi = fi_of(be);
	g_queue_clear_full(&fi->ready, item_free_cb);
	g_queue_clear_full(&fi->held, item_free_cb);
	g_queue_clear_full(&fi->reorder, item_free_cb);
	g_hash_table_destroy(fi->held_ids);
	g_ptr_array_free(fi->delivered, TRUE);
	g_hash_table_destroy(fi->failed_conns);
	g_hash_table_destroy(fi->upstream);
	kvb_backend_close(fi->inner);
	fi->inner = NULL;
}

/* ---- forwarded ops ---- */

static uint64_t fault_clock_now_ns(kvb_backend_t *be)
{
	kvb_backend_t *in = fi_of(be)->inner;
	return in->ops->clock_now_ns(in);
}

static int fault_timer_arm(kvb_backend_t *be, uint64_t deadline_ns, uint64_t cookie, uint64_t *timer_id)
{
	fault_inst_t *fi = fi_of(be);
	int rc = fi->inner->ops->timer_arm(fi->inner, deadline_ns, cookie, timer_id);
	if (rc == KVB_OK && (cookie & KVB_COOKIE_RESERVED)) {
		guint n = GPOINTER_TO_UINT(g_hash_table_lookup(fi->upstream, &cookie));
		g_hash_table_insert(fi->upstream, g_memdup2(&cookie, sizeof(cookie)), GUINT_TO_POINTER(n + 1));
	}
	return fault_inner_rc(fi, rc);
}

static int fault_timer_cancel(kvb_backend_t *be, uint64_t timer_id)
{
	fault_inst_t *fi = fi_of(be);
	return fault_inner_rc(fi, fi->inner->ops->timer_cancel(fi->inner, timer_id));
}

static int fault_random_fill(kvb_backend_t *be, void *buf, size_t len)
{
	fault_inst_t *fi = fi_of(be);
	return fault_inner_rc(fi, fi->inner->ops->random_fill(fi->inner, buf, len));
}

static uint32_t fault_nic_count(kvb_backend_t *be)
{
	kvb_backend_t *in = fi_of(be)->inner;
	return in->ops->nic_count(in);
}

static int fault_nic_query(kvb_backend_t *be, uint32_t index, kvb_nic_info_t *info)
{
	fault_inst_t *fi = fi_of(be);
	return fault_inner_rc(fi, fi->inner->ops->nic_query(fi->inner, index, info));
}

static int fault_mr_reg(kvb_backend_t *be, void *addr, size_t len, const kvb_mem_attr_t *attr, void **mr,
			kvb_rkey_t *rkey)
{
	fault_inst_t *fi = fi_of(be);
	return fault_inner_rc(fi, fi->inner->ops->mr_reg(fi->inner, addr, len, attr, mr, rkey));
}

static int fault_mr_dereg(kvb_backend_t *be, void *mr)
{
	fault_inst_t *fi = fi_of(be);
	return fault_inner_rc(fi, fi->inner->ops->mr_dereg(fi->inner, mr));
}

/* FAIL_CONNECT: the inner backend never sees the conn; the core gets the
 * usual KVB_INPROGRESS and then CONN_DOWN(PEER) from the next poll. */
static int fault_conn_connect(kvb_backend_t *be, kvb_conn_t *conn, const char *peer_address)
{
	fault_inst_t *fi = fi_of(be);
	fi->n_connects++;
	fi->stats.connects++;
	if (conn && rule_find(fi, KIND_BIT(KVB_FAULT_FAIL_CONNECT), fi->n_connects)) {
		fi->stats.connects_failed++;
		g_hash_table_add(fi->failed_conns, conn);
		kvb_event_t ev = {.type = KVB_EV_CONN_DOWN, .status = KVB_ERR_PEER, .conn = conn};
		g_queue_push_tail(&fi->ready, item_new(&ev));
		fault_fail(fi, KVB_ERR_PEER, "fault: connect %" PRIu64 " to '%s' failed by injection",
			   fi->n_connects, peer_address ? peer_address : "(null)");
		return KVB_INPROGRESS;
	}
	return fault_inner_rc(fi, fi->inner->ops->conn_connect(fi->inner, conn, peer_address));
}

static int fault_conn_accept(kvb_backend_t *be, kvb_conn_t *conn, uint64_t incoming_id)
{
	fault_inst_t *fi = fi_of(be);
	return fault_inner_rc(fi, fi->inner->ops->conn_accept(fi->inner, conn, incoming_id));
}

/* No event may name the conn afterwards: drop whatever we queued or held
 * for it before closing it below. */
static void fault_conn_close(kvb_backend_t *be, kvb_conn_t *conn)
{
	fault_inst_t *fi = fi_of(be);
	if (!conn)
		return;
	purge_queue(fi, &fi->ready, conn);
	purge_queue(fi, &fi->held, conn);
	purge_queue(fi, &fi->reorder, conn);
	if (g_hash_table_remove(fi->failed_conns, conn))
		return;
	fi->inner->ops->conn_close(fi->inner, conn);
}

/* FAIL_POST: slices are counted one by one; runs of unaffected slices go to
 * the inner backend in one call, an affected slice either stops the post
 * (AT_POST) or is taken here and completes with the rule's status
 * (AT_COMPLETION).  Slices the inner backend refuses are not counted. */
static int fault_xfer_post(kvb_backend_t *be, kvb_conn_t *conn, const kvb_slice_op_t *ops, size_t n,
			   size_t *n_posted)
{
	fault_inst_t *fi = fi_of(be);
	const unsigned mask = KIND_BIT(KVB_FAULT_FAIL_POST);
	size_t dummy, i = 0;
	if (!n_posted)
		n_posted = &dummy;
	*n_posted = 0;
	if (conn && g_hash_table_contains(fi->failed_conns, conn))
		return fault_fail(fi, KVB_ERR_PEER, "fault: xfer_post on a conn whose connect was failed");
	if (!ops && n)
		return fault_fail(fi, KVB_ERR_INVALID, "fault: xfer_post: ops is NULL");
	while (i < n) {
		size_t j = i;
		while (j < n && !rule_find(fi, mask, fi->n_posts + 1 + (j - i)))
			j++;
		if (j > i) {
			size_t k = 0;
			int rc = fi->inner->ops->xfer_post(fi->inner, conn, ops + i, j - i, &k);
			if (k > j - i)
				k = j - i;
			fi->n_posts += k;
			fi->stats.posts += k;
			*n_posted = i + k;
			if (rc != KVB_OK)
				return fault_inner_rc(fi, rc);
			i = j;
			continue;
		}
		const kvb_fault_rule_t *r = rule_find(fi, mask, fi->n_posts + 1);
		int status = r->status ? r->status : KVB_ERR_TRANSPORT;
		fi->n_posts++;
		fi->stats.posts++;
		fi->stats.posts_failed++;
		if (r->mode == KVB_FAULT_AT_POST)
			return fault_fail(fi, status, "fault: slice %" PRIu64 " (cookie %#" PRIx64 ") failed at post: %s",
					  fi->n_posts, ops[i].cookie, kvb_status_name(status));
		kvb_event_t ev = {
			.type = KVB_EV_XFER_DONE,
			.status = status,
			.cookie = ops[i].cookie,
			.nic = ops[i].local_nic,
		};
		emit_completion(fi, item_new(&ev));
		*n_posted = ++i;
	}
	return KVB_OK;
}

static int fault_msg_send(kvb_backend_t *be, kvb_conn_t *conn, const void *buf, size_t len)
{
	fault_inst_t *fi = fi_of(be);
	if (conn && g_hash_table_contains(fi->failed_conns, conn))
		return fault_fail(fi, KVB_ERR_PEER, "fault: msg_send on a conn whose connect was failed");
	return fault_inner_rc(fi, fi->inner->ops->msg_send(fi->inner, conn, buf, len));
}

/* Fill the ready queue from the inner backend until max events are ready
 * or the inner backend has none left (several inner polls are safe: every
 * payload was copied), then hand out up to max. */
static int fault_event_poll(kvb_backend_t *be, kvb_event_t *events, int max)
{
	fault_inst_t *fi = fi_of(be);
	kvb_backend_t *in = fi->inner;
	kvb_event_t tmp[FAULT_POLL_CHUNK];
	int inner_rc = 0;

	g_ptr_array_set_size(fi->delivered, 0);
	if (!events || max <= 0)
		return 0;
	while (g_queue_get_length(&fi->ready) < (guint)max) {
		int want = max - (int)g_queue_get_length(&fi->ready);
		int k = in->ops->event_poll(in, tmp, want < FAULT_POLL_CHUNK ? want : FAULT_POLL_CHUNK);
		if (k <= 0) {
			inner_rc = k;
			break;
		}
		for (int i = 0; i < k; i++)
			on_inner_event(fi, &tmp[i]);
	}
	int n = 0;
	while (n < max && !g_queue_is_empty(&fi->ready)) {
		fault_item_t *it = g_queue_pop_head(&fi->ready);
		events[n++] = it->ev;
		if (it->buf)
			g_ptr_array_add(fi->delivered, it->buf);
		g_free(it);
	}
	if (n == 0 && inner_rc < 0)
		return fault_inner_rc(fi, inner_rc);
	return n;
}

static const char *fault_last_error(kvb_backend_t *be)
{
	fault_inst_t *fi = fi_of(be);
	return fi->own_error ? fi->err : fi->inner->ops->last_error(fi->inner);
}

static int fault_ext_get(kvb_backend_t *be, const char *name, const void **ext)
{
	fault_inst_t *fi = fi_of(be);
	return fault_inner_rc(fi, fi->inner->ops->ext_get(fi->inner, name, ext));
}

static const kvb_backend_ops_t fault_ops = {
	.abi = KVB_BACKEND_ABI,
	.size = sizeof(kvb_backend_ops_t),
	.name = "fault",
	.instance_size = sizeof(fault_inst_t),
	.conn_size = FAULT_CONN_SIZE,
	.instance_open = fault_instance_open,
	.instance_close = fault_instance_close,
	.clock_now_ns = fault_clock_now_ns,
	.timer_arm = fault_timer_arm,
	.timer_cancel = fault_timer_cancel,
	.random_fill = fault_random_fill,
	.nic_count = fault_nic_count,
	.nic_query = fault_nic_query,
	.mr_reg = fault_mr_reg,
	.mr_dereg = fault_mr_dereg,
	.conn_connect = fault_conn_connect,
	.conn_accept = fault_conn_accept,
	.conn_close = fault_conn_close,
	.xfer_post = fault_xfer_post,
	.msg_send = fault_msg_send,
	.event_poll = fault_event_poll,
	.last_error = fault_last_error,
	.ext_get = fault_ext_get,
};

const kvb_backend_ops_t *kvb_fault_backend_ops(void)
{
	return &fault_ops;
}

int kvb_fault_wrap(kvb_backend_t *inner, kvb_backend_t **out, kvb_err_t *err)
{
	if (out)
		*out = NULL;
	if (!inner)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_fault_wrap: inner is NULL");
	kvb_fault_args_t args = {.inner = inner};
	int rc = kvb_backend_open(&fault_ops, &args, out, err);
	if (rc != KVB_OK)
		kvb_backend_close(inner);
	return rc;
}

int kvb_fault_add(kvb_backend_t *be, const kvb_fault_rule_t *rule)
{
	fault_inst_t *fi = fi_checked(be);
	if (!fi || !rule)
		return KVB_ERR_INVALID;
	if (rule->kind < KVB_FAULT_FAIL_POST || rule->kind > KVB_FAULT_FAIL_CONNECT)
		return fault_fail(fi, KVB_ERR_INVALID, "fault: unknown rule kind %d", (int)rule->kind);
	if (rule->nth == 0)
		return fault_fail(fi, KVB_ERR_INVALID, "fault: rule nth is 1-based, got 0");
	if (rule->kind == KVB_FAULT_FAIL_POST &&
	    (rule->status > 0 || (rule->mode != KVB_FAULT_AT_POST && rule->mode != KVB_FAULT_AT_COMPLETION)))
		return fault_fail(fi, KVB_ERR_INVALID, "fault: FAIL_POST status %d / mode %d", rule->status,
				  (int)rule->mode);
	if (fi->n_rules == FAULT_RULES_MAX)
		return fault_fail(fi, KVB_ERR_NO_RESOURCE, "fault: at most %u rules", FAULT_RULES_MAX);
	fi->rules[fi->n_rules++] = *rule;
	return KVB_OK;
}

/* Held items go out in the order they were held, then reorder-held ones. */
int kvb_fault_release(kvb_backend_t *be)
{
	fault_inst_t *fi = fi_checked(be);
	fault_item_t *it;
	if (!fi)
		return KVB_ERR_INVALID;
	while ((it = g_queue_pop_head(&fi->held))) {
		unhold(fi, it, true);
		g_queue_push_tail(&fi->ready, it);
	}
	while ((it = g_queue_pop_head(&fi->reorder)))
		g_queue_push_tail(&fi->ready, it);
	return KVB_OK;
}

int kvb_fault_stats(kvb_backend_t *be, kvb_fault_stats_t *out)
{
	fault_inst_t *fi = fi_checked(be);
	if (!fi || !out)
		return KVB_ERR_INVALID;
	*out = fi->stats;
	return KVB_OK;
}

kvb_backend_t *kvb_fault_inner(kvb_backend_t *be)
{
	fault_inst_t *fi = fi_checked(be);
	return fi ? fi->inner : NULL;
}
