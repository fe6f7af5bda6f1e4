/*
 * The event and timer service of the hw backend (kvb_hw_events.h): one
 * GMainContext, GSource helpers, the event queue the core polls and the
 * core's timers.  Every socket and timer of the backend is a GSource on the
 * instance's context; the vtable's ops only queue work and return.
 */
#include "config.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <glib.h>
#include <glib-unix.h>
#include <kvbridge/kvbridge.h>

#include "events/kvb_hw_events.h"

#define DISPATCH_ROUNDS 64

typedef struct hw_timer {
	uint64_t id;
	uint64_t deadline_ns;
	uint64_t cookie;
	GSequenceIter *it;
} hw_timer_t;

uint64_t hw_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void hw_set_error(hw_t *hw, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	g_vsnprintf(hw->last_error, sizeof(hw->last_error), fmt, ap);
	va_end(ap);
	if (hw->debug)
		fprintf(stderr, "kvbridge-hw[%s]: error: %s\n", hw->segment, hw->last_error);
}

void hw_log(hw_t *hw, const char *fmt, ...)
{
	if (!hw->debug)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "kvbridge-hw[%s]: ", hw->segment);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* ------------------------------------------------------------------------ */
/* GSource helpers                                                          */
struct hw_watch {
	GSource src;
	gpointer tag;
	hw_watch_fn fn;
	void *obj;
};

static gboolean watch_dispatch(GSource *src, GSourceFunc cb, gpointer data)
{
	(void)cb;
	(void)data;
	hw_watch_t *w = (hw_watch_t *)src;
	GIOCondition c = g_source_query_unix_fd(src, w->tag);
	if (!c)
		return G_SOURCE_CONTINUE;
	g_source_ref(src);
	bool keep = w->fn(w->obj, c);
	bool destroyed = g_source_is_destroyed(src);
	g_source_unref(src);
	if (destroyed)
		return G_SOURCE_REMOVE;
	return keep ? G_SOURCE_CONTINUE : G_SOURCE_REMOVE;
}

static GSourceFuncs watch_funcs = {
	.dispatch = watch_dispatch,
};

hw_watch_t *hw_watch_new(hw_t *hw, int fd, GIOCondition cond, hw_watch_fn fn, void *obj)
{
	GSource *src = g_source_new(&watch_funcs, sizeof(hw_watch_t));
	hw_watch_t *w = (hw_watch_t *)src;
	w->fn = fn;
	w->obj = obj;
	w->tag = g_source_add_unix_fd(src, fd, cond);
	g_source_attach(src, hw->ctx);
	return w;
}

void hw_watch_set(hw_watch_t *w, GIOCondition cond)
{
	if (w && !g_source_is_destroyed(&w->src))
		g_source_modify_unix_fd(&w->src, w->tag, cond);
}

void hw_watch_free(hw_watch_t *w)
{
	if (!w)
		return;
	g_source_destroy(&w->src);
	g_source_unref(&w->src);
}

struct hw_deadline {
	GSource src;
	void (*fn)(void *obj);
	void *obj;
};

static gboolean deadline_dispatch(GSource *src, GSourceFunc cb, gpointer data)
{
	(void)cb;
	(void)data;
	hw_deadline_t *d = (hw_deadline_t *)src;
	g_source_set_ready_time(src, -1);
	d->fn(d->obj);
	return G_SOURCE_CONTINUE;
}

static GSourceFuncs deadline_funcs = {
	.dispatch = deadline_dispatch,
};

hw_deadline_t *hw_deadline_new(hw_t *hw, void (*fn)(void *obj), void *obj)
{
	GSource *src = g_source_new(&deadline_funcs, sizeof(hw_deadline_t));
	hw_deadline_t *d = (hw_deadline_t *)src;
	d->fn = fn;
	d->obj = obj;
	g_source_set_ready_time(src, -1);
	g_source_attach(src, hw->ctx);
	return d;
}

void hw_deadline_arm(hw_deadline_t *d, uint64_t delay_ns)
{
	g_source_set_ready_time(&d->src, g_get_monotonic_time() + (gint64)(delay_ns / 1000) + 1);
}

void hw_deadline_disarm(hw_deadline_t *d)
{
	if (d)
		g_source_set_ready_time(&d->src, -1);
}

void hw_deadline_free(hw_deadline_t *d)
{
	if (!d)
		return;
	g_source_destroy(&d->src);
	g_source_unref(&d->src);
}

bool hw_watch_gone(hw_watch_t *w)
{
	return g_source_is_destroyed((GSource *)w);
}

void hw_watch_ref(hw_watch_t *w)
{
	g_source_ref((GSource *)w);
}

void hw_watch_unref(hw_watch_t *w)
{
	g_source_unref((GSource *)w);
}

/* ------------------------------------------------------------------------ */
/* events and timers                                                        */

void hw_event_push(hw_t *hw, const kvb_event_t *ev)
{
	bool was_empty = hw->events->len == 0;
	g_array_append_val(hw->events, *ev);
	if (was_empty && hw->notify)
		hw->notify(hw->notify_user);
}

void hw_xfer_done(hw_t *hw, uint64_t cookie, int status, uint32_t nic)
{
	if (hw->xfer_filter && hw->xfer_filter(hw, cookie, status, nic))
		return;
	kvb_event_t ev = {.type = KVB_EV_XFER_DONE, .status = status, .cookie = cookie, .nic = nic};
	hw_event_push(hw, &ev);
}

static gint timer_cmp(gconstpointer a, gconstpointer b, gpointer user)
{
	(void)user;
	const hw_timer_t *x = a, *y = b;
	if (x->deadline_ns != y->deadline_ns)
		return x->deadline_ns < y->deadline_ns ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

static void timer_src_rearm(hw_t *hw)
{
	GSequenceIter *first = g_sequence_get_begin_iter(hw->timers);
	if (g_sequence_iter_is_end(first)) {
		g_source_set_ready_time(hw->timer_src, -1);
		return;
	}
	hw_timer_t *t = g_sequence_get(first);
	uint64_t now = hw_now_ns();
	gint64 wait_us = t->deadline_ns > now ? (gint64)((t->deadline_ns - now + 999) / 1000) : 0;
	g_source_set_ready_time(hw->timer_src, g_get_monotonic_time() + wait_us);
}

static gboolean timer_src_dispatch(GSource *src, GSourceFunc cb, gpointer data)
{
	(void)cb;
	(void)data;
	hw_t *hw = *(hw_t **)((char *)src + sizeof(GSource));
	uint64_t now = hw_now_ns();
	for (;;) {
		GSequenceIter *first = g_sequence_get_begin_iter(hw->timers);
		if (g_sequence_iter_is_end(first))
			break;
		hw_timer_t *t = g_sequence_get(first);
		if (t->deadline_ns > now)
			break;
		kvb_event_t ev = {.type = KVB_EV_TIMER, .cookie = t->cookie};
		g_hash_table_remove(hw->timer_by_id, &t->id);
		g_sequence_remove(first);
		hw_event_push(hw, &ev);
	}
	timer_src_rearm(hw);
	return G_SOURCE_CONTINUE;
}

static GSourceFuncs timer_src_funcs = {
	.dispatch = timer_src_dispatch,
};


int hw_timer_arm(hw_t *hw, uint64_t deadline_ns, uint64_t cookie, uint64_t *timer_id)
{
	hw_timer_t *t = g_new0(hw_timer_t, 1);
	t->id = ++hw->timer_seq;
	t->deadline_ns = deadline_ns;
	t->cookie = cookie;
	t->it = g_sequence_insert_sorted(hw->timers, t, timer_cmp, NULL);
	g_hash_table_insert(hw->timer_by_id, &t->id, t);
	if (timer_id)
		*timer_id = t->id;
	timer_src_rearm(hw);
	return KVB_OK;
}

int hw_timer_cancel(hw_t *hw, uint64_t timer_id)
{
	hw_timer_t *t = g_hash_table_lookup(hw->timer_by_id, &timer_id);
	if (!t)
		return KVB_ERR_NOT_FOUND;
	g_hash_table_remove(hw->timer_by_id, &timer_id);
	g_sequence_remove(t->it);
	timer_src_rearm(hw);
	return KVB_OK;
}

void hw_events_drop_conn(hw_t *hw, kvb_conn_t *conn)
{
	for (guint i = 0; i < hw->events->len;) {
		kvb_event_t *ev = &g_array_index(hw->events, kvb_event_t, i);
		if (ev->conn == conn) {
			if (ev->type == KVB_EV_MSG)
				g_free((void *)ev->data);
			g_array_remove_index(hw->events, i);
		} else {
			i++;
		}
	}
}

int hw_events_poll(hw_t *hw, kvb_event_t *events, int max)
{
	/* the messages handed out last time are no longer needed */
	g_ptr_array_set_size(hw->held, 0);
	if (!hw->events->len && g_main_context_acquire(hw->ctx)) {
		/* not inside someone's dispatch of this context: run what is ready */
		if (g_main_depth() == 0)
			for (int i = 0; i < DISPATCH_ROUNDS && g_main_context_iteration(hw->ctx, FALSE); i++)
				;
		g_main_context_release(hw->ctx);
	}
	int n = (int)MIN((guint)max, hw->events->len);
	for (int i = 0; i < n; i++) {
		events[i] = g_array_index(hw->events, kvb_event_t, i);
		if (events[i].type == KVB_EV_MSG)
			g_ptr_array_add(hw->held, (void *)events[i].data);
	}
	g_array_remove_range(hw->events, 0, (guint)n);
	return n;
}

static void wait_timeout(void *obj)
{
	*(bool *)obj = true;
}

bool hw_events_wait(hw_t *hw, uint64_t timeout_ns)
{
	if (hw->events->len)
		return true;
	if (!g_main_context_acquire(hw->ctx))
		return false;
	if (timeout_ns == 0) {
		for (int i = 0; i < DISPATCH_ROUNDS && g_main_context_iteration(hw->ctx, FALSE); i++)
			;
	} else {
		bool expired = false;
		hw_deadline_t *d = hw_deadline_new(hw, wait_timeout, &expired);
		hw_deadline_arm(d, timeout_ns);
		while (!hw->events->len && !expired)
			g_main_context_iteration(hw->ctx, TRUE);
		hw_deadline_free(d);
	}
	g_main_context_release(hw->ctx);
	return hw->events->len > 0;
}

void hw_events_init(hw_t *hw)
{
	hw->debug = g_strcmp0(g_getenv("KVB_HW_DEBUG"), "1") == 0;
	if (hw->p.context) {
		hw->ctx = g_main_context_ref(hw->p.context);
	} else {
		hw->ctx = g_main_context_new();
		hw->own_ctx = true;
	}
	g_queue_init(&hw->calls);
	g_queue_init(&hw->peers);
	hw->incoming = g_hash_table_new(g_int64_hash, g_int64_equal);
	hw->events = g_array_new(FALSE, FALSE, sizeof(kvb_event_t));
	hw->held = g_ptr_array_new_with_free_func(g_free);
	hw->timers = g_sequence_new(g_free);
	hw->timer_by_id = g_hash_table_new(g_int64_hash, g_int64_equal);
	hw->mrs = g_ptr_array_new();
	hw->fences = g_array_new(FALSE, FALSE, sizeof(uint64_t));
	hw->timer_src = g_source_new(&timer_src_funcs, sizeof(GSource) + sizeof(hw_t *));
	*(hw_t **)((char *)hw->timer_src + sizeof(GSource)) = hw;
	g_source_set_ready_time(hw->timer_src, -1);
	g_source_attach(hw->timer_src, hw->ctx);
}

void hw_events_fini(hw_t *hw)
{
	if (hw->timer_src) {
		g_source_destroy(hw->timer_src);
		g_source_unref(hw->timer_src);
	}
	if (hw->timers)
		g_sequence_free(hw->timers);
	if (hw->timer_by_id)
		g_hash_table_destroy(hw->timer_by_id);
	if (hw->incoming)
		g_hash_table_destroy(hw->incoming);
	if (hw->events) {
		for (guint i = 0; i < hw->events->len; i++) {
			kvb_event_t *ev = &g_array_index(hw->events, kvb_event_t, i);
			if (ev->type == KVB_EV_MSG)
				g_free((void *)ev->data);
		}
		g_array_free(hw->events, TRUE);
	}
	if (hw->held)
		g_ptr_array_free(hw->held, TRUE);
	if (hw->mrs)
		g_ptr_array_free(hw->mrs, TRUE);
	if (hw->fences)
		g_array_free(hw->fences, TRUE);
	if (hw->ctx) {
		/* our own context: let destroyed sources finalize */
		if (hw->own_ctx)
			while (g_main_context_iteration(hw->ctx, FALSE))
				;
		g_main_context_unref(hw->ctx);
	}
}
