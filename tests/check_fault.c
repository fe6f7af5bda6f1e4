/*
 * The fault backend over loop endpoints, driven through the ops table (no
 * connector): every rule kind observed through events, virtual times and
 * stats; reserved timer cookies never surface; closing with held items
 * leaks nothing.
 *
 * World: "a" is a loop endpoint wrapped by fault (fa), "b" a plain loop
 * endpoint.  NICs move 1 byte/ns, slice latency 2000 ns, message latency
 * 10000 ns.
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>

#include <kvbridge/fault.h>
#include <kvbridge/loop.h>

#include "suites.h"

#define BW 1000000000u
#define LAT 2000u
#define MLAT 10000u

typedef struct rec {
	kvb_event_t ev;
	uint64_t t;
	size_t len;
	char data[64];
} rec_t;

typedef struct region {
	uint8_t *buf;
	size_t len;
	void *mr;
	kvb_rkey_t rkey;
} region_t;

typedef struct world {
	kvb_loop_fabric_t *f;
	kvb_backend_t *fa, *b; /* fa wraps loop "a" */
	kvb_conn_t *ca, *cb;
	region_t la, rb;
} world_t;

static kvb_backend_t *loop_ep(kvb_loop_fabric_t *f, const char *name)
{
	kvb_loop_params_t p;
	kvb_loop_params_default(&p);
	p.nic_bandwidth_Bps = BW;
	p.latency_ns = LAT;
	p.msg_latency_ns = MLAT;
	kvb_backend_t *be = NULL;
	ck_assert_int_eq(kvb_loop_open(f, name, &p, &be, NULL), KVB_OK);
	return be;
}

/* Poll until nothing is ready; reserved cookies must never show up. */
static int poll_rec(kvb_loop_fabric_t *f, kvb_backend_t *be, rec_t *out, int cap)
{
	kvb_event_t evs[3];
	int n = 0, k;
	while ((k = be->ops->event_poll(be, evs, 3)) > 0) {
		for (int i = 0; i < k; i++) {
			ck_assert_int_lt(n, cap);
			if (evs[i].type == KVB_EV_TIMER || evs[i].type == KVB_EV_XFER_DONE)
				ck_assert_msg(!(evs[i].cookie & KVB_COOKIE_RESERVED),
					      "reserved cookie %#" PRIx64 " leaked", evs[i].cookie);
			out[n].ev = evs[i];
			out[n].t = kvb_loop_fabric_now(f);
			out[n].len = evs[i].len;
			if (evs[i].type == KVB_EV_MSG && evs[i].len) {
				ck_assert_uint_le(evs[i].len, sizeof(out[n].data));
				memcpy(out[n].data, evs[i].data, evs[i].len);
			}
			n++;
		}
	}
	return n;
}

static int next_rec(kvb_loop_fabric_t *f, kvb_backend_t *be, rec_t *out, int cap)
{
	int n;
	while ((n = poll_rec(f, be, out, cap)) == 0)
		ck_assert_msg(kvb_loop_fabric_advance(f), "fabric ran dry waiting for an event");
	return n;
}

static int run_rec(kvb_loop_fabric_t *f, kvb_backend_t *be, rec_t *out, int cap)
{
	int n = 0;
	do
		n += poll_rec(f, be, out + n, cap - n);
	while (kvb_loop_fabric_advance(f));
	return n;
}

static void connect_pair(kvb_loop_fabric_t *f, kvb_backend_t *a, kvb_backend_t *b, const char *bname,
			 kvb_conn_t **ca, kvb_conn_t **cb)
{
	rec_t r[4];
	uint64_t t0 = kvb_loop_fabric_now(f);
	*ca = kvb_conn_alloc(a);
	ck_assert_int_eq(a->ops->conn_connect(a, *ca, bname), KVB_INPROGRESS);
	ck_assert_int_eq(next_rec(f, b, r, 4), 1);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_CONN_INCOMING);
	*cb = kvb_conn_alloc(b);
	ck_assert_int_eq(b->ops->conn_accept(b, *cb, r[0].ev.incoming_id), KVB_OK);
	ck_assert_int_eq(next_rec(f, a, r, 4), 1);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_CONN_UP);
	ck_assert_ptr_eq(r[0].ev.conn, *ca);
	ck_assert_uint_eq(r[0].t, t0 + 2 * MLAT);
}

static void region_reg(kvb_backend_t *be, region_t *r, size_t len, uint8_t fill)
{
	r->buf = g_malloc(len);
	r->len = len;
	memset(r->buf, fill, len);
	ck_assert_int_eq(be->ops->mr_reg(be, r->buf, len, NULL, &r->mr, &r->rkey), KVB_OK);
}

static kvb_slice_op_t wslice(const world_t *w, uint64_t off, uint64_t len, uint64_t cookie)
{
	kvb_slice_op_t s = {
		.opcode = KVB_XFER_WRITE,
		.local_addr = (uint64_t)(uintptr_t)w->la.buf + off,
		.local_mr = w->la.mr,
		.remote_addr = (uint64_t)(uintptr_t)w->rb.buf + off,
		.remote_key = &w->rb.rkey,
		.len = len,
		.cookie = cookie,
		.n_slices = 1,
		.slice_len = len,
	};
	return s;
}

static void world_up(world_t *w)
{
	kvb_err_t err = {0};
	memset(w, 0, sizeof(*w));
	w->f = kvb_loop_fabric_new(7);
	ck_assert_int_eq(kvb_fault_wrap(loop_ep(w->f, "a"), &w->fa, &err), KVB_OK);
	w->b = loop_ep(w->f, "b");
	connect_pair(w->f, w->fa, w->b, "b", &w->ca, &w->cb);
	region_reg(w->fa, &w->la, 16384, 0);
	region_reg(w->b, &w->rb, 16384, 0xBB);
	for (size_t i = 0; i < 16384; i++)
		w->la.buf[i] = (uint8_t)(i * 13u + 5);
}

static void world_down(world_t *w)
{
	if (w->ca) {
		w->fa->ops->conn_close(w->fa, w->ca);
		kvb_conn_free(w->ca);
	}
	if (w->cb) {
		w->b->ops->conn_close(w->b, w->cb);
		kvb_conn_free(w->cb);
	}
	kvb_backend_close(w->fa);
	kvb_backend_close(w->b);
	ck_assert_uint_eq(kvb_loop_fabric_pending(w->f), 0);
	kvb_loop_fabric_free(w->f);
	g_free(w->la.buf);
	g_free(w->rb.buf);
}

static void add_rule(kvb_backend_t *be, kvb_fault_kind_t kind, uint64_t nth, uint64_t count,
		     uint64_t delay_ns, kvb_fault_post_mode_t mode, int status)
{
	kvb_fault_rule_t r = {
		.kind = kind, .nth = nth, .count = count, .delay_ns = delay_ns, .mode = mode, .status = status,
	};
	ck_assert_int_eq(kvb_fault_add(be, &r), KVB_OK);
}

static void send3(world_t *w, const char *m1, const char *m2, const char *m3)
{
	const char *m[3] = {m1, m2, m3};
	for (int i = 0; i < 3; i++)
		if (m[i])
			ck_assert_int_eq(w->b->ops->msg_send(w->b, w->cb, m[i], strlen(m[i])), KVB_OK);
}

static void assert_msg(const rec_t *r, const char *text, kvb_conn_t *conn)
{
	ck_assert_int_eq(r->ev.type, KVB_EV_MSG);
	ck_assert_ptr_eq(r->ev.conn, conn);
	ck_assert_uint_eq(r->len, strlen(text));
	ck_assert_mem_eq(r->data, text, r->len);
}

/* ---- a fake inner backend whose conns are too large ---- */

static int fake_closed;

static int fake_open(kvb_backend_t *be, const void *args, kvb_err_t *err)
{
	return KVB_OK;
}

static void fake_close(kvb_backend_t *be)
{
	fake_closed++;
}

static uint64_t fake_now(kvb_backend_t *be)
{
	return 0;
}

static int fake_arm(kvb_backend_t *be, uint64_t d, uint64_t c, uint64_t *id)
{
	return KVB_ERR_UNSUPPORTED;
}

static int fake_poll(kvb_backend_t *be, kvb_event_t *ev, int max)
{
	return 0;
}

static const kvb_backend_ops_t fake_ops = {
	.abi = KVB_BACKEND_ABI,
	.size = sizeof(kvb_backend_ops_t),
	.name = "fake",
	.conn_size = 4096,
	.instance_open = fake_open,
	.instance_close = fake_close,
	.clock_now_ns = fake_now,
	.timer_arm = fake_arm,
	.event_poll = fake_poll,
};

/* ---- tests ---- */

START_TEST(test_fault_basics)
{
	world_t w;
	world_up(&w);
	kvb_backend_t *inner = kvb_fault_inner(w.fa);
	kvb_fault_stats_t st;
	kvb_err_t err = {0};

	ck_assert_str_eq(w.fa->ops->name, "fault");
	ck_assert_ptr_nonnull(inner);
	ck_assert_str_eq(inner->ops->name, "loop");
	ck_assert_ptr_null(kvb_fault_inner(w.b));
	ck_assert_uint_eq(w.fa->ops->nic_count(w.fa), 1);
	ck_assert_uint_eq(w.fa->ops->clock_now_ns(w.fa), kvb_loop_fabric_now(w.f));
	ck_assert_int_eq(kvb_fault_stats(w.fa, &st), KVB_OK);
	ck_assert_uint_eq(st.connects, 1);
	ck_assert_uint_eq(st.posts + st.msgs + st.completions + st.connects_failed, 0);
	ck_assert_int_eq(kvb_fault_stats(w.b, &st), KVB_ERR_INVALID);

	/* Inner failures are described by the inner backend. */
	const void *ext;
	ck_assert_int_eq(w.fa->ops->ext_get(w.fa, "cuda", &ext), KVB_ERR_NOT_FOUND);
	ck_assert_ptr_nonnull(strstr(w.fa->ops->last_error(w.fa), "cuda"));

	kvb_fault_rule_t bad = {.kind = KVB_FAULT_DROP_MSG, .nth = 0};
	ck_assert_int_eq(kvb_fault_add(w.fa, &bad), KVB_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(w.fa->ops->last_error(w.fa), "nth"));
	bad.nth = 1;
	bad.kind = (kvb_fault_kind_t)99;
	ck_assert_int_eq(kvb_fault_add(w.fa, &bad), KVB_ERR_INVALID);
	bad.kind = KVB_FAULT_FAIL_POST;
	bad.status = 3;
	ck_assert_int_eq(kvb_fault_add(w.fa, &bad), KVB_ERR_INVALID);
	ck_assert_int_eq(kvb_fault_add(w.b, &bad), KVB_ERR_INVALID);
	for (int i = 0; i < 32; i++)
		add_rule(w.fa, KVB_FAULT_DROP_MSG, 1000 + i, 1, 0, 0, 0);
	bad.status = 0;
	ck_assert_int_eq(kvb_fault_add(w.fa, &bad), KVB_ERR_NO_RESOURCE);

	/* Timers armed by the core pass through unchanged. */
	uint64_t tid;
	rec_t r[4];
	uint64_t t0 = kvb_loop_fabric_now(w.f);
	ck_assert_int_eq(w.fa->ops->timer_arm(w.fa, t0 + 100, 42, &tid), KVB_OK);
	ck_assert_int_eq(next_rec(w.f, w.fa, r, 4), 1);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_TIMER);
	ck_assert_uint_eq(r[0].ev.cookie, 42);
	ck_assert_uint_eq(r[0].t, t0 + 100);
	uint8_t rnd[8];
	ck_assert_int_eq(w.fa->ops->random_fill(w.fa, rnd, 8), KVB_OK);
	world_down(&w);

	/* Wrapping takes ownership also on failure. */
	ck_assert_int_eq(kvb_fault_wrap(NULL, &w.fa, &err), KVB_ERR_INVALID);
	kvb_backend_t *fake = NULL, *out = NULL;
	ck_assert_int_eq(kvb_backend_open(&fake_ops, NULL, &fake, NULL), KVB_OK);
	fake_closed = 0;
	ck_assert_int_eq(kvb_fault_wrap(fake, &out, &err), KVB_ERR_UNSUPPORTED);
	ck_assert_ptr_null(out);
	ck_assert_int_eq(fake_closed, 1);
	ck_assert_ptr_nonnull(strstr(err.msg, "fake"));
}
END_TEST

START_TEST(test_fault_fail_at_post)
{
	world_t w;
	world_up(&w);
	kvb_fault_stats_t st;
	rec_t r[8];
	size_t np = 99;
	add_rule(w.fa, KVB_FAULT_FAIL_POST, 2, 2, 0, KVB_FAULT_AT_POST, 0);

	kvb_slice_op_t ops[4];
	for (int i = 0; i < 4; i++)
		ops[i] = wslice(&w, 1024u * i, 1024, 100 + i);
	ck_assert_int_eq(w.fa->ops->xfer_post(w.fa, w.ca, ops, 4, &np), KVB_ERR_TRANSPORT);
	ck_assert_uint_eq(np, 1);
	ck_assert_ptr_nonnull(strstr(w.fa->ops->last_error(w.fa), "failed at post"));
	/* The retry is the 3rd counted post: fails too. */
	ck_assert_int_eq(w.fa->ops->xfer_post(w.fa, w.ca, ops + 1, 3, &np), KVB_ERR_TRANSPORT);
	ck_assert_uint_eq(np, 0);
	ck_assert_int_eq(w.fa->ops->xfer_post(w.fa, w.ca, ops + 1, 3, &np), KVB_OK);
	ck_assert_uint_eq(np, 3);
	ck_assert_int_eq(run_rec(w.f, w.fa, r, 8), 4);
	for (int i = 0; i < 4; i++) {
		ck_assert_int_eq(r[i].ev.type, KVB_EV_XFER_DONE);
		ck_assert_int_eq(r[i].ev.status, KVB_OK);
		ck_assert_uint_eq(r[i].ev.cookie, 100u + i);
	}
	ck_assert_mem_eq(w.rb.buf, w.la.buf, 4096);
	ck_assert_int_eq(kvb_fault_stats(w.fa, &st), KVB_OK);
	ck_assert_uint_eq(st.posts, 6);
	ck_assert_uint_eq(st.posts_failed, 2);
	ck_assert_uint_eq(st.completions, 4);
	world_down(&w);
}
END_TEST

START_TEST(test_fault_fail_at_completion)
{
	world_t w;
	world_up(&w);
	kvb_fault_stats_t st;
	rec_t r[8];
	size_t np;
	add_rule(w.fa, KVB_FAULT_FAIL_POST, 1, 1, 0, KVB_FAULT_AT_COMPLETION, KVB_ERR_RANGE);
	kvb_slice_op_t ops[2] = {wslice(&w, 0, 4096, 1), wslice(&w, 4096, 4096, 2)};
	ops[0].local_nic = 0;
	uint64_t t0 = kvb_loop_fabric_now(w.f);
	ck_assert_int_eq(w.fa->ops->xfer_post(w.fa, w.ca, ops, 2, &np), KVB_OK);
	ck_assert_uint_eq(np, 2);
	/* The failed slice completes on the next poll, without time passing. */
	ck_assert_int_eq(poll_rec(w.f, w.fa, r, 8), 1);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_XFER_DONE);
	ck_assert_int_eq(r[0].ev.status, KVB_ERR_RANGE);
	ck_assert_uint_eq(r[0].ev.cookie, 1);
	ck_assert_uint_eq(r[0].t, t0);
	ck_assert_int_eq(run_rec(w.f, w.fa, r, 8), 1);
	ck_assert_int_eq(r[0].ev.status, KVB_OK);
	ck_assert_uint_eq(r[0].ev.cookie, 2);
	ck_assert_uint_eq(r[0].t, t0 + 4096 + LAT); /* the failed slice used no NIC time */
	for (size_t i = 0; i < 4096; i++)
		ck_assert_uint_eq(w.rb.buf[i], 0xBB);
	ck_assert_mem_eq(w.rb.buf + 4096, w.la.buf + 4096, 4096);
	ck_assert_int_eq(kvb_fault_stats(w.fa, &st), KVB_OK);
	ck_assert_uint_eq(st.posts, 2);
	ck_assert_uint_eq(st.posts_failed, 1);
	ck_assert_uint_eq(st.completions, 2);
	world_down(&w);
}
END_TEST

START_TEST(test_fault_drop_msg)
{
	world_t w;
	world_up(&w);
	kvb_fault_stats_t st;
	rec_t r[8];
	add_rule(w.fa, KVB_FAULT_DROP_MSG, 2, 0, 0, 0, 0);
	send3(&w, "m1", "m2", "m3");
	ck_assert_int_eq(run_rec(w.f, w.fa, r, 8), 2);
	assert_msg(&r[0], "m1", w.ca);
	assert_msg(&r[1], "m3", w.ca);
	ck_assert_int_eq(kvb_fault_stats(w.fa, &st), KVB_OK);
	ck_assert_uint_eq(st.msgs, 3);
	ck_assert_uint_eq(st.msgs_dropped, 1);
	world_down(&w);
}
END_TEST

START_TEST(test_fault_delay_msg)
{
	world_t w;
	world_up(&w);
	kvb_fault_stats_t st;
	rec_t r[8];
	add_rule(w.fa, KVB_FAULT_DELAY_MSG, 1, 1, 50000, 0, 0);
	uint64_t t0 = kvb_loop_fabric_now(w.f);
	send3(&w, "m1", "m2", NULL);
	ck_assert_int_eq(next_rec(w.f, w.fa, r, 8), 1);
	assert_msg(&r[0], "m2", w.ca);
	ck_assert_uint_eq(r[0].t, t0 + MLAT);
	ck_assert_int_eq(run_rec(w.f, w.fa, r, 8), 1);
	assert_msg(&r[0], "m1", w.ca);
	ck_assert_uint_eq(r[0].t, t0 + MLAT + 50000);
	ck_assert_int_eq(kvb_fault_stats(w.fa, &st), KVB_OK);
	ck_assert_uint_eq(st.msgs, 2);
	ck_assert_uint_eq(st.msgs_delayed, 1);
	world_down(&w);
}
END_TEST

START_TEST(test_fault_dup_msg)
{
	world_t w;
	world_up(&w);
	kvb_fault_stats_t st;
	kvb_event_t ev[4];
	add_rule(w.fa, KVB_FAULT_DUP_MSG, 1, 1, 0, 0, 0);
	send3(&w, "hello", "next", NULL);
	ck_assert(kvb_loop_fabric_advance(w.f));
	ck_assert_int_eq(w.fa->ops->event_poll(w.fa, ev, 4), 3);
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(ev[i].type, KVB_EV_MSG);
		ck_assert_ptr_eq(ev[i].conn, w.ca);
		ck_assert_uint_eq(ev[i].len, 5);
		ck_assert_mem_eq(ev[i].data, "hello", 5);
	}
	ck_assert_ptr_ne(ev[0].data, ev[1].data);
	ck_assert_mem_eq(ev[2].data, "next", 4);
	ck_assert_int_eq(w.fa->ops->event_poll(w.fa, ev, 4), 0);
	ck_assert_int_eq(kvb_fault_stats(w.fa, &st), KVB_OK);
	ck_assert_uint_eq(st.msgs, 2);
	ck_assert_uint_eq(st.msgs_duplicated, 1);
	world_down(&w);
}
END_TEST

START_TEST(test_fault_reorder_msg)
{
	world_t w;
	world_up(&w);
	kvb_fault_stats_t st;
	rec_t r[8];
	add_rule(w.fa, KVB_FAULT_REORDER_MSG, 1, 1, 0, 0, 0);
	add_rule(w.fa, KVB_FAULT_REORDER_MSG, 4, 1, 0, 0, 0);
	send3(&w, "m1", "m2", "m3");
	ck_assert_int_eq(next_rec(w.f, w.fa, r, 8), 3);
	assert_msg(&r[0], "m2", w.ca);
	assert_msg(&r[1], "m1", w.ca);
	assert_msg(&r[2], "m3", w.ca);
	/* A held message goes out before its conn's CONN_DOWN. */
	send3(&w, "m4", NULL, NULL);
	w.b->ops->conn_close(w.b, w.cb);
	kvb_conn_free(w.cb);
	w.cb = NULL;
	ck_assert_int_eq(run_rec(w.f, w.fa, r, 8), 2);
	assert_msg(&r[0], "m4", w.ca);
	ck_assert_int_eq(r[1].ev.type, KVB_EV_CONN_DOWN);
	ck_assert_int_eq(kvb_fault_stats(w.fa, &st), KVB_OK);
	ck_assert_uint_eq(st.msgs, 4);
	ck_assert_uint_eq(st.msgs_reordered, 2);
	world_down(&w);
}
END_TEST

START_TEST(test_fault_stall_release)
{
	world_t w;
	world_up(&w);
	kvb_fault_stats_t st;
	rec_t r[8];
	size_t np;
	add_rule(w.fa, KVB_FAULT_STALL_COMPLETIONS, 2, 0, 0, 0, 0); /* from the 2nd on */
	kvb_slice_op_t ops[3] = {wslice(&w, 0, 1024, 1), wslice(&w, 1024, 1024, 2), wslice(&w, 2048, 1024, 3)};
	ck_assert_int_eq(w.fa->ops->xfer_post(w.fa, w.ca, ops, 3, &np), KVB_OK);
	ck_assert_int_eq(run_rec(w.f, w.fa, r, 8), 1);
	ck_assert_uint_eq(r[0].ev.cookie, 1);
	ck_assert_int_eq(kvb_fault_stats(w.fa, &st), KVB_OK);
	ck_assert_uint_eq(st.completions, 3);
	ck_assert_uint_eq(st.completions_stalled, 2);
	/* The data landed; only the report is held. */
	ck_assert_mem_eq(w.rb.buf, w.la.buf, 3072);
	ck_assert_int_eq(kvb_fault_release(w.fa), KVB_OK);
	ck_assert_int_eq(poll_rec(w.f, w.fa, r, 8), 2);
	ck_assert_uint_eq(r[0].ev.cookie, 2);
	ck_assert_uint_eq(r[1].ev.cookie, 3);
	ck_assert_int_eq(r[1].ev.status, KVB_OK);
	ck_assert_int_eq(kvb_fault_release(w.b), KVB_ERR_INVALID);
	world_down(&w);
}
END_TEST

START_TEST(test_fault_stall_timed)
{
	world_t w;
	world_up(&w);
	rec_t r[8];
	size_t np;
	add_rule(w.fa, KVB_FAULT_STALL_COMPLETIONS, 1, 1, 100000, 0, 0);
	add_rule(w.fa, KVB_FAULT_FAIL_POST, 3, 1, 0, KVB_FAULT_AT_COMPLETION, KVB_ERR_ABORTED);
	uint64_t t0 = kvb_loop_fabric_now(w.f);
	kvb_slice_op_t ops[3] = {wslice(&w, 0, 4096, 1), wslice(&w, 4096, 4096, 2), wslice(&w, 8192, 4096, 3)};
	ck_assert_int_eq(w.fa->ops->xfer_post(w.fa, w.ca, ops, 3, &np), KVB_OK);
	/* completions in the order they reach the fault layer: 3 (synthesized
	 * at post, 1st, stalled), then 1 and 2 */
	ck_assert_int_eq(run_rec(w.f, w.fa, r, 8), 3);
	ck_assert_uint_eq(r[0].ev.cookie, 1);
	ck_assert_uint_eq(r[0].t, t0 + 4096 + LAT);
	ck_assert_uint_eq(r[1].ev.cookie, 2);
	ck_assert_uint_eq(r[1].t, t0 + 2 * 4096 + LAT);
	ck_assert_uint_eq(r[2].ev.cookie, 3);
	ck_assert_int_eq(r[2].ev.status, KVB_ERR_ABORTED);
	ck_assert_uint_eq(r[2].t, t0 + 100000);
	world_down(&w);
}
END_TEST

START_TEST(test_fault_fail_connect)
{
	kvb_loop_fabric_t *f = kvb_loop_fabric_new(1);
	kvb_backend_t *fa = NULL, *b = loop_ep(f, "b");
	kvb_fault_stats_t st;
	rec_t r[4];
	ck_assert_int_eq(kvb_fault_wrap(loop_ep(f, "a"), &fa, NULL), KVB_OK);
	add_rule(fa, KVB_FAULT_FAIL_CONNECT, 1, 1, 0, 0, 0);

	kvb_conn_t *c1 = kvb_conn_alloc(fa);
	ck_assert_int_eq(fa->ops->conn_connect(fa, c1, "b"), KVB_INPROGRESS);
	ck_assert_int_eq(poll_rec(f, fa, r, 4), 1);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_CONN_DOWN);
	ck_assert_int_eq(r[0].ev.status, KVB_ERR_PEER);
	ck_assert_ptr_eq(r[0].ev.conn, c1);
	ck_assert_int_eq(fa->ops->msg_send(fa, c1, "x", 1), KVB_ERR_PEER);
	ck_assert_int_eq(fa->ops->xfer_post(fa, c1, NULL, 0, NULL), KVB_ERR_PEER);
	ck_assert_int_eq(run_rec(f, b, r, 4), 0); /* b never heard of it */
	fa->ops->conn_close(fa, c1);
	kvb_conn_free(c1);

	kvb_conn_t *ca, *cb;
	connect_pair(f, fa, b, "b", &ca, &cb);
	ck_assert_int_eq(kvb_fault_stats(fa, &st), KVB_OK);
	ck_assert_uint_eq(st.connects, 2);
	ck_assert_uint_eq(st.connects_failed, 1);
	fa->ops->conn_close(fa, ca);
	kvb_conn_free(ca);
	ck_assert_int_eq(run_rec(f, b, r, 4), 1);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_CONN_DOWN);
	b->ops->conn_close(b, cb);
	kvb_conn_free(cb);
	kvb_backend_close(fa);
	kvb_backend_close(b);
	kvb_loop_fabric_free(f);
}
END_TEST

/* Reserved cookies never surface: stray ones on the inner backend are
 * dropped, and two stacked fault layers each consume their own. */
START_TEST(test_fault_reserved_cookies)
{
	kvb_loop_fabric_t *f = kvb_loop_fabric_new(1);
	kvb_backend_t *inner = NULL, *outer = NULL, *b = loop_ep(f, "b");
	rec_t r[8];
	uint64_t tid;
	ck_assert_int_eq(kvb_fault_wrap(loop_ep(f, "a"), &inner, NULL), KVB_OK);
	ck_assert_int_eq(kvb_fault_wrap(inner, &outer, NULL), KVB_OK);
	kvb_backend_t *la = kvb_fault_inner(inner);
	ck_assert_int_eq(la->ops->timer_arm(la, 10, KVB_COOKIE_RESERVED | 0x5, &tid), KVB_OK);
	ck_assert_int_eq(run_rec(f, outer, r, 8), 0);

	add_rule(inner, KVB_FAULT_DELAY_MSG, 1, 1, 1000, 0, 0);
	add_rule(outer, KVB_FAULT_DELAY_MSG, 1, 1, 2000, 0, 0);
	kvb_conn_t *ca, *cb;
	connect_pair(f, outer, b, "b", &ca, &cb);
	uint64_t t0 = kvb_loop_fabric_now(f);
	ck_assert_int_eq(b->ops->msg_send(b, cb, "slow", 4), KVB_OK);
	ck_assert_int_eq(outer->ops->timer_arm(outer, t0 + 500, 77, &tid), KVB_OK);
	ck_assert_int_eq(run_rec(f, outer, r, 8), 2);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_TIMER);
	ck_assert_uint_eq(r[0].ev.cookie, 77);
	assert_msg(&r[1], "slow", ca);
	ck_assert_uint_eq(r[1].t, t0 + MLAT + 1000 + 2000);

	outer->ops->conn_close(outer, ca);
	kvb_conn_free(ca);
	b->ops->conn_close(b, cb);
	kvb_conn_free(cb);
	kvb_backend_close(outer);
	kvb_backend_close(b);
	ck_assert_uint_eq(kvb_loop_fabric_pending(f), 0);
	kvb_loop_fabric_free(f);
}
END_TEST

/* Closing a conn drops what is held for it; closing the instance drops
 * everything else (leaks checked by ASan/valgrind). */
START_TEST(test_fault_close_held)
{
	world_t w;
	world_up(&w);
	rec_t r[8];
	size_t np;
	add_rule(w.fa, KVB_FAULT_DELAY_MSG, 1, 1, 50000, 0, 0);
	add_rule(w.fa, KVB_FAULT_REORDER_MSG, 2, 1, 0, 0, 0);
	add_rule(w.fa, KVB_FAULT_STALL_COMPLETIONS, 1, 0, 0, 0, 0);
	add_rule(w.fa, KVB_FAULT_FAIL_POST, 2, 1, 0, KVB_FAULT_AT_COMPLETION, 0);
	send3(&w, "d", "r", NULL);
	ck_assert(kvb_loop_fabric_advance(w.f));
	ck_assert_int_eq(poll_rec(w.f, w.fa, r, 8), 0); /* both held */
	w.fa->ops->conn_close(w.fa, w.ca);
	kvb_conn_free(w.ca);
	w.ca = NULL;
	ck_assert_int_eq(run_rec(w.f, w.fa, r, 8), 0); /* nothing names the closed conn */
	ck_assert_int_eq(poll_rec(w.f, w.b, r, 8), 1);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_CONN_DOWN);
	ck_assert_ptr_eq(r[0].ev.conn, w.cb);
	w.b->ops->conn_close(w.b, w.cb);
	kvb_conn_free(w.cb);
	w.cb = NULL;

	/* Held completions and an unpolled synthesized one at close. */
	kvb_conn_t *c2, *cb2;
	connect_pair(w.f, w.fa, w.b, "b", &c2, &cb2);
	kvb_slice_op_t ops[2] = {wslice(&w, 0, 1024, 1), wslice(&w, 1024, 1024, 2)};
	ck_assert_int_eq(w.fa->ops->xfer_post(w.fa, c2, ops, 2, &np), KVB_OK);
	ck_assert_int_eq(w.b->ops->msg_send(w.b, cb2, "late", 4), KVB_OK);
	ck_assert_int_eq(kvb_loop_kill(kvb_fault_inner(w.fa)), KVB_OK);
	ck_assert_int_eq(run_rec(w.f, w.b, r, 8), 1);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_CONN_DOWN);
	ck_assert_ptr_eq(r[0].ev.conn, cb2);
	ck_assert_int_eq(poll_rec(w.f, w.fa, r, 8), 0); /* killed: nothing more, held items stay */
	w.fa->ops->conn_close(w.fa, c2);
	kvb_conn_free(c2);
	w.b->ops->conn_close(w.b, cb2);
	kvb_conn_free(cb2);
	world_down(&w);
}
END_TEST

Suite *kvb_suite_fault(void)
{
	Suite *s = suite_create("fault");
	TCase *tc = tcase_create("fault");
	tcase_add_test(tc, test_fault_basics);
	tcase_add_test(tc, test_fault_fail_at_post);
	tcase_add_test(tc, test_fault_fail_at_completion);
	tcase_add_test(tc, test_fault_drop_msg);
	tcase_add_test(tc, test_fault_delay_msg);
	tcase_add_test(tc, test_fault_dup_msg);
	tcase_add_test(tc, test_fault_reorder_msg);
	tcase_add_test(tc, test_fault_stall_release);
	tcase_add_test(tc, test_fault_stall_timed);
	tcase_add_test(tc, test_fault_fail_connect);
	tcase_add_test(tc, test_fault_reserved_cookies);
	tcase_add_test(tc, test_fault_close_held);
	suite_add_tcase(s, tc);
	return s;
}
