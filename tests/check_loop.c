/*
 * The loop backend, driven through its ops table (no connector): virtual
 * times of connects, messages, slices and timers; data really copied; queue
 * back-pressure; range checks; NIC and endpoint failures; teardown with work
 * in flight.
 *
 * Every test uses 1 byte/ns NICs (1e9 B/s), slice latency 2000 ns and
 * message latency 10000 ns, so a slice of L bytes posted at t on idle NICs
 * completes at t + L + 2000.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include <glib.h>

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

static kvb_loop_params_t params(uint32_t n_nics)
{
	kvb_loop_params_t p;
	kvb_loop_params_default(&p);
	p.n_nics = n_nics;
	p.nic_bandwidth_Bps = BW;
	p.latency_ns = LAT;
	p.msg_latency_ns = MLAT;
	return p;
}

static kvb_backend_t *ep_open(kvb_loop_fabric_t *f, const char *name, uint32_t n_nics)
{
	kvb_loop_params_t p = params(n_nics);
	kvb_backend_t *be = NULL;
	kvb_err_t err = {0};
	int rc = kvb_loop_open(f, name, &p, &be, &err);
	ck_assert_msg(rc == KVB_OK, "open %s: %s", name, err.msg);
	return be;
}

/* Poll be until it has nothing ready, recording events at the current time. */
static int poll_rec(kvb_loop_fabric_t *f, kvb_backend_t *be, rec_t *out, int cap)
{
	kvb_event_t evs[4];
	int n = 0, k;
	while ((k = be->ops->event_poll(be, evs, 4)) > 0) {
		for (int i = 0; i < k; i++) {
			ck_assert_int_lt(n, cap);
			out[n].ev = evs[i];
			out[n].t = kvb_loop_fabric_now(f);
			out[n].len = evs[i].len;
			if (evs[i].type == KVB_EV_MSG) {
				ck_assert_uint_le(evs[i].len, sizeof(out[n].data));
				if (evs[i].len)
					memcpy(out[n].data, evs[i].data, evs[i].len);
			}
			n++;
		}
	}
	return n;
}

/* Advance until be has something ready; poll it. */
static int next_rec(kvb_loop_fabric_t *f, kvb_backend_t *be, rec_t *out, int cap)
{
	int n;
	while ((n = poll_rec(f, be, out, cap)) == 0)
		ck_assert_msg(kvb_loop_fabric_advance(f), "fabric ran dry waiting for an event");
	return n;
}

/* Run the fabric dry, collecting be's events with their times. */
static int run_rec(kvb_loop_fabric_t *f, kvb_backend_t *be, rec_t *out, int cap)
{
	int n = 0;
	do
		n += poll_rec(f, be, out + n, cap - n);
	while (kvb_loop_fabric_advance(f));
	return n;
}

/* a connects to b (named bname); checks the handshake's virtual times. */
static void connect_pair(kvb_loop_fabric_t *f, kvb_backend_t *a, kvb_backend_t *b, const char *bname,
			 kvb_conn_t **ca, kvb_conn_t **cb)
{
	rec_t r[4];
	uint64_t t0 = kvb_loop_fabric_now(f);
	*ca = kvb_conn_alloc(a);
	ck_assert_int_eq(a->ops->conn_connect(a, *ca, bname), KVB_INPROGRESS);
	ck_assert_int_eq(next_rec(f, b, r, 4), 1);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_CONN_INCOMING);
	ck_assert_uint_eq(r[0].t, t0 + MLAT);
	*cb = kvb_conn_alloc(b);
	ck_assert_int_eq(b->ops->conn_accept(b, *cb, r[0].ev.incoming_id), KVB_OK);
	ck_assert_int_eq(next_rec(f, a, r, 4), 1);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_CONN_UP);
	ck_assert_int_eq(r[0].ev.status, KVB_OK);
	ck_assert_ptr_eq(r[0].ev.conn, *ca);
	ck_assert_uint_eq(r[0].t, t0 + 2 * MLAT);
}

static void conn_done(kvb_backend_t *be, kvb_conn_t *c)
{
	be->ops->conn_close(be, c);
	kvb_conn_free(c);
}

static void region_reg(kvb_backend_t *be, region_t *r, size_t len, uint8_t fill)
{
	r->buf = g_malloc(len);
	r->len = len;
	memset(r->buf, fill, len);
	ck_assert_int_eq(be->ops->mr_reg(be, r->buf, len, NULL, &r->mr, &r->rkey), KVB_OK);
	ck_assert_uint_eq(r->rkey.len, 16);
}

static void region_done(kvb_backend_t *be, region_t *r)
{
	ck_assert_int_eq(be->ops->mr_dereg(be, r->mr), KVB_OK);
	g_free(r->buf);
}

static kvb_slice_op_t slice(kvb_xfer_opcode_t op, uint32_t nic, uint32_t rnic, const region_t *l,
			    uint64_t loff, const region_t *r, uint64_t roff, uint64_t len, uint64_t cookie)
{
	kvb_slice_op_t s = {
		.opcode = op,
		.local_nic = nic,
		.remote_nic = rnic,
		.local_addr = (uint64_t)(uintptr_t)l->buf + loff,
		.local_mr = l->mr,
		.remote_addr = (uint64_t)(uintptr_t)r->buf + roff,
		.remote_key = &r->rkey,
		.len = len,
		.cookie = cookie,
		.n_slices = 1,
		.slice_len = len,
	};
	return s;
}

static void pattern(uint8_t *p, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)(i * 31u + seed);
}

static bool all_bytes(const uint8_t *p, size_t len, uint8_t v)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != v)
			return false;
	return true;
}

/* Standard two-endpoint world. */
typedef struct world {
	kvb_loop_fabric_t *f;
	kvb_backend_t *a, *b;
	kvb_conn_t *ca, *cb;
} world_t;

static void world_up(world_t *w, uint32_t na, uint32_t nb)
{
	w->f = kvb_loop_fabric_new(1);
	w->a = ep_open(w->f, "a", na);
	w->b = ep_open(w->f, "b", nb);
	connect_pair(w->f, w->a, w->b, "b", &w->ca, &w->cb);
}

static void world_down(world_t *w)
{
	if (w->ca)
		conn_done(w->a, w->ca);
	if (w->cb)
		conn_done(w->b, w->cb);
	kvb_backend_close(w->a);
	kvb_backend_close(w->b);
	ck_assert_uint_eq(kvb_loop_fabric_pending(w->f), 0);
	kvb_loop_fabric_free(w->f);
}

/* ---- tests ---- */

START_TEST(test_loop_connect_times)
{
	kvb_loop_fabric_t *f = kvb_loop_fabric_new(1);
	ck_assert(!kvb_loop_fabric_advance(f));
	ck_assert_uint_eq(kvb_loop_fabric_pending(f), 0);
	kvb_backend_t *a = ep_open(f, "a", 1), *b = ep_open(f, "b", 1);
	ck_assert_str_eq(a->ops->name, "loop");
	rec_t r[4];

	kvb_conn_t *ca = kvb_conn_alloc(a);
	ck_assert_int_eq(a->ops->conn_connect(a, ca, "b"), KVB_INPROGRESS);
	ck_assert_int_eq(a->ops->conn_connect(a, ca, "b"), KVB_ERR_STATE);
	ck_assert_uint_eq(kvb_loop_fabric_pending(f), 1);
	ck_assert_int_eq(poll_rec(f, b, r, 4), 0);
	ck_assert(kvb_loop_fabric_advance(f));
	ck_assert_uint_eq(kvb_loop_fabric_now(f), MLAT);
	ck_assert_uint_eq(a->ops->clock_now_ns(a), MLAT);
	ck_assert_uint_eq(kvb_loop_fabric_pending(f), 1); /* ready, not polled */
	ck_assert_int_eq(poll_rec(f, b, r, 4), 1);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_CONN_INCOMING);
	ck_assert_uint_eq(kvb_loop_fabric_pending(f), 0);

	kvb_conn_t *cb = kvb_conn_alloc(b);
	ck_assert_int_eq(b->ops->conn_accept(b, cb, r[0].ev.incoming_id + 100), KVB_ERR_NOT_FOUND);
	ck_assert_int_eq(b->ops->conn_accept(b, cb, r[0].ev.incoming_id), KVB_OK);
	/* The accepted side is up at once; the initiator only at CONN_UP. */
	ck_assert_int_eq(b->ops->msg_send(b, cb, "hi", 2), KVB_OK);
	ck_assert_int_eq(a->ops->msg_send(a, ca, "x", 1), KVB_ERR_PEER);
	ck_assert_str_ne(a->ops->last_error(a), "");
	ck_assert_int_eq(next_rec(f, a, r, 4), 2);
	ck_assert_uint_eq(r[0].t, 2 * MLAT);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_CONN_UP);
	ck_assert_ptr_eq(r[0].ev.conn, ca);
	ck_assert_int_eq(r[1].ev.type, KVB_EV_MSG);
	ck_assert_ptr_eq(r[1].ev.conn, ca);
	ck_assert_mem_eq(r[1].data, "hi", 2);
	ck_assert_int_eq(a->ops->msg_send(a, ca, "x", 1), KVB_OK);

	conn_done(a, ca);
	conn_done(b, cb);
	kvb_backend_close(a);
	kvb_backend_close(b);
	ck_assert_uint_eq(kvb_loop_fabric_pending(f), 0);
	kvb_loop_fabric_free(f);
}
END_TEST

START_TEST(test_loop_connect_unknown)
{
	kvb_loop_fabric_t *f = kvb_loop_fabric_new(1);
	kvb_backend_t *a = ep_open(f, "a", 1);
	rec_t r[4];
	kvb_conn_t *ca = kvb_conn_alloc(a);
	ck_assert_int_eq(a->ops->conn_connect(a, ca, "nobody"), KVB_INPROGRESS);
	ck_assert_int_eq(run_rec(f, a, r, 4), 1);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_CONN_DOWN);
	ck_assert_int_eq(r[0].ev.status, KVB_ERR_PEER);
	ck_assert_ptr_eq(r[0].ev.conn, ca);
	ck_assert_uint_eq(r[0].t, MLAT);
	ck_assert_int_eq(a->ops->msg_send(a, ca, "x", 1), KVB_ERR_PEER);
	conn_done(a, ca);
	kvb_backend_close(a);
	kvb_loop_fabric_free(f);
}
END_TEST

START_TEST(test_loop_open_args)
{
	kvb_loop_fabric_t *f = kvb_loop_fabric_new(1);
	kvb_backend_t *a = ep_open(f, "a", 1), *x = (kvb_backend_t *)1;
	kvb_err_t err = {0};
	kvb_loop_params_t p = params(1);

	ck_assert_int_eq(kvb_loop_open(f, "a", &p, &x, &err), KVB_ERR_EXISTS);
	ck_assert_ptr_null(x);
	ck_assert_ptr_nonnull(strstr(err.msg, "'a'"));
	p.n_nics = 0;
	ck_assert_int_eq(kvb_loop_open(f, "c", &p, &x, &err), KVB_ERR_INVALID);
	p.n_nics = KVB_MAX_NICS + 1;
	ck_assert_int_eq(kvb_loop_open(f, "c", &p, &x, &err), KVB_ERR_INVALID);
	p = params(1);
	p.nic_bandwidth_Bps = 0;
	ck_assert_int_eq(kvb_loop_open(f, "c", &p, &x, &err), KVB_ERR_INVALID);
	ck_assert_int_eq(kvb_loop_open(f, NULL, NULL, &x, &err), KVB_ERR_INVALID);
	ck_assert_int_eq(kvb_backend_open(kvb_loop_backend_ops(), NULL, &x, &err), KVB_ERR_INVALID);

	/* Defaults from loop.h. */
	kvb_loop_params_default(&p);
	ck_assert_uint_eq(p.n_nics, 1);
	ck_assert_uint_eq(p.nic_bandwidth_Bps, UINT64_C(25000000000));
	ck_assert_uint_eq(p.latency_ns, 2000);
	ck_assert_uint_eq(p.msg_latency_ns, 10000);
	ck_assert_uint_eq(p.queue_depth, 256);
	ck_assert_int_eq(p.numa_node, -1);
	ck_assert_int_eq(kvb_loop_open(f, "d", NULL, &x, &err), KVB_OK);
	ck_assert_uint_eq(x->ops->nic_count(x), 1);
	kvb_backend_close(x);

	/* A name is free again once its endpoint is closed. */
	kvb_backend_close(a);
	a = ep_open(f, "a", 1);
	const void *ext = NULL;
	ck_assert_int_eq(a->ops->ext_get(a, "cuda", &ext), KVB_ERR_NOT_FOUND);
	ck_assert_ptr_nonnull(strstr(a->ops->last_error(a), "cuda"));
	kvb_backend_close(a);
	kvb_loop_fabric_free(f);
}
END_TEST

START_TEST(test_loop_nic_query)
{
	kvb_loop_fabric_t *f = kvb_loop_fabric_new(1);
	kvb_loop_params_t p = params(2);
	p.numa_node = 1;
	kvb_backend_t *a = NULL;
	ck_assert_int_eq(kvb_loop_open(f, "a", &p, &a, NULL), KVB_OK);
	kvb_nic_info_t info;
	ck_assert_uint_eq(a->ops->nic_count(a), 2);
	for (uint32_t i = 0; i < 2; i++) {
		char name[16];
		snprintf(name, sizeof(name), "loop%u", i);
		ck_assert_int_eq(a->ops->nic_query(a, i, &info), KVB_OK);
		ck_assert_str_eq(info.name, name);
		ck_assert_uint_eq(info.bandwidth_bps, (uint64_t)BW * 8);
		ck_assert_int_eq(info.numa_node, 1);
	}
	ck_assert_int_eq(a->ops->nic_query(a, 2, &info), KVB_ERR_NOT_FOUND);
	ck_assert_ptr_nonnull(strstr(a->ops->last_error(a), "NIC 2"));
	ck_assert_int_eq(kvb_loop_set_nic_up(a, 2, false), KVB_ERR_NOT_FOUND);
	ck_assert_int_eq(kvb_loop_set_nic_up(NULL, 0, false), KVB_ERR_INVALID);
	ck_assert_int_eq(kvb_loop_kill(NULL), KVB_ERR_INVALID);
	ck_assert_uint_eq(kvb_loop_nic_tx_bytes(a, 7), 0);
	kvb_backend_close(a);
	kvb_loop_fabric_free(f);
}
END_TEST

START_TEST(test_loop_msg_order)
{
	world_t w;
	world_up(&w, 1, 1);
	rec_t r[8];
	uint64_t t0 = kvb_loop_fabric_now(w.f);
	char big[4];

	ck_assert_int_eq(w.a->ops->msg_send(w.a, w.ca, "one", 3), KVB_OK);
	ck_assert_int_eq(w.a->ops->msg_send(w.a, w.ca, "two", 3), KVB_OK);
	ck_assert_int_eq(w.a->ops->msg_send(w.a, w.ca, NULL, 0), KVB_OK);
	ck_assert_int_eq(w.a->ops->msg_send(w.a, w.ca, "three", 5), KVB_OK);
	ck_assert_int_eq(w.a->ops->msg_send(w.a, w.ca, big, (size_t)KVB_MSG_MAX + 1), KVB_ERR_INVALID);
	/* A later message, sent after a timer, arrives later. */
	uint64_t tid;
	ck_assert_int_eq(w.a->ops->timer_arm(w.a, t0 + 4000, 9, &tid), KVB_OK);
	ck_assert_int_eq(next_rec(w.f, w.a, r, 8), 1);
	ck_assert_uint_eq(r[0].t, t0 + 4000);
	ck_assert_int_eq(w.a->ops->msg_send(w.a, w.ca, "four", 4), KVB_OK);

	ck_assert_int_eq(next_rec(w.f, w.b, r, 8), 4);
	const char *want[] = {"one", "two", "", "three"};
	for (int i = 0; i < 4; i++) {
		ck_assert_int_eq(r[i].ev.type, KVB_EV_MSG);
		ck_assert_ptr_eq(r[i].ev.conn, w.cb);
		ck_assert_uint_eq(r[i].t, t0 + MLAT);
		ck_assert_uint_eq(r[i].len, strlen(want[i]));
		ck_assert_mem_eq(r[i].data, want[i], r[i].len);
	}
	ck_assert_int_eq(next_rec(w.f, w.b, r, 8), 1);
	ck_assert_uint_eq(r[0].t, t0 + 4000 + MLAT);
	ck_assert_mem_eq(r[0].data, "four", 4);
	world_down(&w);
}
END_TEST

/* The MSG payload is valid until the next poll on the endpoint. */
START_TEST(test_loop_msg_buffer_lifetime)
{
	world_t w;
	world_up(&w, 1, 1);
	kvb_event_t ev[2];
	ck_assert_int_eq(w.a->ops->msg_send(w.a, w.ca, "abcdef", 6), KVB_OK);
	ck_assert(kvb_loop_fabric_advance(w.f));
	ck_assert_int_eq(w.b->ops->event_poll(w.b, ev, 2), 1);
	ck_assert_int_eq(w.a->ops->msg_send(w.a, w.ca, "zzzzzz", 6), KVB_OK);
	ck_assert_mem_eq(ev[0].data, "abcdef", 6);
	ck_assert_int_eq(w.b->ops->event_poll(w.b, ev + 1, 1), 0);
	world_down(&w);
}
END_TEST

START_TEST(test_loop_write_read)
{
	world_t w;
	world_up(&w, 1, 1);
	region_t la, rb;
	rec_t r[4];
	region_reg(w.a, &la, 8192, 0);
	region_reg(w.b, &rb, 8192, 0xBB);
	pattern(la.buf, 8192, 1);
	pattern(rb.buf + 4096, 2048, 7);

	uint64_t t0 = kvb_loop_fabric_now(w.f);
	kvb_slice_op_t op = slice(KVB_XFER_WRITE, 0, 0, &la, 0, &rb, 1024, 4096, 7);
	size_t np = 99;
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, &op, 1, &np), KVB_OK);
	ck_assert_uint_eq(np, 1);
	ck_assert(all_bytes(rb.buf + 1024, 4096 - 1024, 0xBB)); /* nothing copied before completion */
	ck_assert_int_eq(next_rec(w.f, w.a, r, 4), 1);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_XFER_DONE);
	ck_assert_int_eq(r[0].ev.status, KVB_OK);
	ck_assert_uint_eq(r[0].ev.cookie, 7);
	ck_assert_uint_eq(r[0].ev.nic, 0);
	ck_assert_uint_eq(r[0].t, t0 + 4096 + LAT);
	ck_assert_mem_eq(rb.buf + 1024, la.buf, 4096);
	ck_assert(all_bytes(rb.buf, 1024, 0xBB));

	/* READ: remote -> local. */
	uint64_t t1 = kvb_loop_fabric_now(w.f);
	op = slice(KVB_XFER_READ, 0, 0, &la, 6000, &rb, 4096 + 1024, 2048, 8);
	pattern(rb.buf + 5120, 2048, 9);
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, &op, 1, NULL), KVB_OK);
	ck_assert_int_eq(next_rec(w.f, w.a, r, 4), 1);
	ck_assert_int_eq(r[0].ev.status, KVB_OK);
	ck_assert_uint_eq(r[0].ev.cookie, 8);
	ck_assert_uint_eq(r[0].t, t1 + 2048 + LAT);
	ck_assert_mem_eq(la.buf + 6000, rb.buf + 5120, 2048);

	/* tx counts what each NIC sent: a's WRITE, b's side of the READ. */
	ck_assert_uint_eq(kvb_loop_nic_tx_bytes(w.a, 0), 4096);
	ck_assert_uint_eq(kvb_loop_nic_tx_bytes(w.b, 0), 2048);

	region_done(w.a, &la);
	region_done(w.b, &rb);
	world_down(&w);
}
END_TEST

START_TEST(test_loop_serialize_and_stripe)
{
	world_t w;
	world_up(&w, 2, 2);
	region_t la, rb;
	rec_t r[8];
	size_t np;
	region_reg(w.a, &la, 16384, 0);
	region_reg(w.b, &rb, 16384, 0);
	pattern(la.buf, 16384, 3);

	/* Two back-to-back slices on one NIC pair: the second waits. */
	uint64_t t0 = kvb_loop_fabric_now(w.f);
	kvb_slice_op_t ops[2] = {
		slice(KVB_XFER_WRITE, 0, 0, &la, 0, &rb, 0, 4096, 1),
		slice(KVB_XFER_WRITE, 0, 0, &la, 4096, &rb, 4096, 4096, 2),
	};
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, ops, 2, &np), KVB_OK);
	ck_assert_int_eq(run_rec(w.f, w.a, r, 8), 2);
	ck_assert_uint_eq(r[0].ev.cookie, 1);
	ck_assert_uint_eq(r[0].t, t0 + 4096 + LAT);
	ck_assert_uint_eq(r[1].ev.cookie, 2);
	ck_assert_uint_eq(r[1].t, t0 + 2 * 4096 + LAT);

	/* The same 8192 bytes striped over two NIC pairs: half the time. */
	t0 = kvb_loop_fabric_now(w.f);
	ops[0] = slice(KVB_XFER_WRITE, 0, 0, &la, 8192, &rb, 8192, 4096, 3);
	ops[1] = slice(KVB_XFER_WRITE, 1, 1, &la, 12288, &rb, 12288, 4096, 4);
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, ops, 2, &np), KVB_OK);
	ck_assert_int_eq(run_rec(w.f, w.a, r, 8), 2);
	ck_assert_uint_eq(r[0].t, t0 + 4096 + LAT);
	ck_assert_uint_eq(r[1].t, t0 + 4096 + LAT);
	ck_assert_uint_eq(r[1].ev.nic, 1);
	ck_assert_uint_eq(kvb_loop_nic_tx_bytes(w.a, 0), 3 * 4096);
	ck_assert_uint_eq(kvb_loop_nic_tx_bytes(w.a, 1), 4096);
	ck_assert_mem_eq(rb.buf, la.buf, 16384);

	/* Two local NICs into one remote NIC (remote_nic 2 is NIC 0 modulo 2):
	 * the remote NIC serializes them. */
	t0 = kvb_loop_fabric_now(w.f);
	ops[0] = slice(KVB_XFER_WRITE, 0, 0, &la, 0, &rb, 0, 4096, 5);
	ops[1] = slice(KVB_XFER_WRITE, 1, 2, &la, 0, &rb, 0, 4096, 6);
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, ops, 2, &np), KVB_OK);
	ck_assert_int_eq(run_rec(w.f, w.a, r, 8), 2);
	ck_assert_uint_eq(r[0].t, t0 + 4096 + LAT);
	ck_assert_uint_eq(r[1].t, t0 + 2 * 4096 + LAT);
	ck_assert_uint_eq(kvb_loop_nic_tx_bytes(w.a, 1), 2 * 4096);

	region_done(w.a, &la);
	region_done(w.b, &rb);
	world_down(&w);
}
END_TEST

START_TEST(test_loop_queue_depth)
{
	kvb_loop_fabric_t *f = kvb_loop_fabric_new(1);
	kvb_loop_params_t p = params(1);
	p.queue_depth = 2;
	world_t w = {.f = f};
	ck_assert_int_eq(kvb_loop_open(f, "a", &p, &w.a, NULL), KVB_OK);
	w.b = ep_open(f, "b", 1);
	connect_pair(f, w.a, w.b, "b", &w.ca, &w.cb);
	region_t la, rb;
	rec_t r[8];
	size_t np = 99;
	region_reg(w.a, &la, 4096, 1);
	region_reg(w.b, &rb, 4096, 0);

	kvb_slice_op_t ops[3];
	for (int i = 0; i < 3; i++)
		ops[i] = slice(KVB_XFER_WRITE, 0, 0, &la, 1024u * i, &rb, 1024u * i, 1024, 10 + i);
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, ops, 3, &np), KVB_ERR_NO_RESOURCE);
	ck_assert_uint_eq(np, 2);
	ck_assert_ptr_nonnull(strstr(w.a->ops->last_error(w.a), "queue full"));
	ck_assert_int_eq(next_rec(f, w.a, r, 8), 1);
	ck_assert_uint_eq(r[0].ev.cookie, 10);
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, ops + 2, 1, &np), KVB_OK);
	ck_assert_uint_eq(np, 1);
	ck_assert_int_eq(run_rec(f, w.a, r, 8), 2);
	ck_assert_uint_eq(r[0].ev.cookie, 11);
	ck_assert_uint_eq(r[1].ev.cookie, 12);
	ck_assert_mem_eq(rb.buf, la.buf, 3072);
	region_done(w.a, &la);
	region_done(w.b, &rb);
	world_down(&w);
}
END_TEST

START_TEST(test_loop_local_range)
{
	world_t w;
	world_up(&w, 1, 1);
	region_t la, rb;
	rec_t r[8];
	size_t np = 99;
	region_reg(w.a, &la, 4096, 1);
	region_reg(w.b, &rb, 4096, 0);

	kvb_slice_op_t ops[2] = {
		slice(KVB_XFER_WRITE, 0, 0, &la, 0, &rb, 0, 1024, 1),
		slice(KVB_XFER_WRITE, 0, 0, &la, 3072, &rb, 0, 1025, 2), /* one byte past the end */
	};
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, ops, 2, &np), KVB_ERR_RANGE);
	ck_assert_uint_eq(np, 1);
	ck_assert_str_ne(w.a->ops->last_error(w.a), "");
	ops[1] = slice(KVB_XFER_WRITE, 0, 0, &la, 0, &rb, 0, 16, 3);
	ops[1].local_addr -= 1; /* one byte before the start */
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, ops + 1, 1, &np), KVB_ERR_RANGE);
	ck_assert_uint_eq(np, 0);
	ops[1] = slice(KVB_XFER_WRITE, 5, 0, &la, 0, &rb, 0, 16, 4);
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, ops + 1, 1, &np), KVB_ERR_NOT_FOUND);
	ops[1] = slice(KVB_XFER_WRITE, 0, 0, &la, 0, &rb, 0, 16, 5);
	ops[1].local_mr = (void *)(uintptr_t)12345;
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, ops + 1, 1, &np), KVB_ERR_INVALID);
	ops[1] = slice(KVB_XFER_WRITE, 0, 0, &la, 0, &rb, 0, 16, 6);
	ops[1].opcode = (kvb_xfer_opcode_t)9;
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, ops + 1, 1, &np), KVB_ERR_INVALID);
	/* Only the accepted slice completes. */
	ck_assert_int_eq(run_rec(w.f, w.a, r, 8), 1);
	ck_assert_uint_eq(r[0].ev.cookie, 1);
	ck_assert_int_eq(r[0].ev.status, KVB_OK);
	region_done(w.a, &la);
	region_done(w.b, &rb);
	world_down(&w);
}
END_TEST

START_TEST(test_loop_remote_range)
{
	world_t w;
	world_up(&w, 1, 1);
	region_t la, ra, rb, rb2;
	rec_t r[8];
	region_reg(w.a, &la, 4096, 1);
	region_reg(w.a, &ra, 4096, 2);
	region_reg(w.b, &rb, 4096, 0xBB);
	region_reg(w.b, &rb2, 4096, 0xCC);
	kvb_rkey_t shortkey = rb.rkey;
	shortkey.len = 3;

	kvb_slice_op_t ops[5] = {
		slice(KVB_XFER_WRITE, 0, 0, &la, 0, &rb, 3072, 1025, 1), /* past the end */
		slice(KVB_XFER_WRITE, 0, 0, &la, 0, &ra, 0, 64, 2),      /* a's own key */
		slice(KVB_XFER_WRITE, 0, 0, &la, 0, &rb, 0, 64, 3),
		slice(KVB_XFER_READ, 0, 0, &la, 0, &rb2, 0, 64, 4),      /* region gone by then */
		slice(KVB_XFER_WRITE, 0, 0, &la, 0, &rb, 0, 64, 5),
	};
	ops[2].remote_key = &shortkey;
	ops[4].remote_addr -= 1;
	size_t np;
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, ops, 5, &np), KVB_OK);
	ck_assert_uint_eq(np, 5);
	region_done(w.b, &rb2);
	ck_assert_int_eq(run_rec(w.f, w.a, r, 8), 5);
	for (int i = 0; i < 5; i++) {
		ck_assert_uint_eq(r[i].ev.cookie, (uint64_t)i + 1);
		ck_assert_int_eq(r[i].ev.status, KVB_ERR_RANGE);
	}
	ck_assert(all_bytes(rb.buf, 4096, 0xBB));
	ck_assert(all_bytes(ra.buf, 4096, 2));
	ck_assert(all_bytes(la.buf, 4096, 1));
	ck_assert_uint_eq(kvb_loop_nic_tx_bytes(w.a, 0), 0);
	region_done(w.a, &la);
	region_done(w.a, &ra);
	region_done(w.b, &rb);
	world_down(&w);
}
END_TEST

START_TEST(test_loop_mr_dereg)
{
	world_t w;
	world_up(&w, 1, 1);
	region_t la, rb;
	rec_t r[4];
	region_reg(w.a, &la, 4096, 1);
	region_reg(w.b, &rb, 4096, 0);
	kvb_slice_op_t op = slice(KVB_XFER_WRITE, 0, 0, &la, 0, &rb, 0, 4096, 1);
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, &op, 1, NULL), KVB_OK);
	ck_assert_int_eq(w.a->ops->mr_dereg(w.a, la.mr), KVB_ERR_STATE);
	ck_assert_int_eq(w.a->ops->mr_dereg(w.a, (void *)(uintptr_t)777), KVB_ERR_NOT_FOUND);
	void *mr;
	ck_assert_int_eq(w.a->ops->mr_reg(w.a, NULL, 16, NULL, &mr, NULL), KVB_ERR_INVALID);
	ck_assert_int_eq(run_rec(w.f, w.a, r, 4), 1);
	ck_assert_int_eq(w.a->ops->mr_dereg(w.a, la.mr), KVB_OK);
	ck_assert_int_eq(w.a->ops->mr_dereg(w.a, la.mr), KVB_ERR_NOT_FOUND);
	g_free(la.buf);
	region_done(w.b, &rb);
	world_down(&w);
}
END_TEST

START_TEST(test_loop_nic_down)
{
	world_t w;
	world_up(&w, 1, 1);
	region_t la, rb;
	rec_t r[4];
	region_reg(w.a, &la, 4096, 1);
	region_reg(w.b, &rb, 4096, 0xBB);
	kvb_slice_op_t op = slice(KVB_XFER_WRITE, 0, 0, &la, 0, &rb, 0, 4096, 1);

	/* Local NIC down at post: accepted, fails after the latency. */
	ck_assert_int_eq(kvb_loop_set_nic_up(w.a, 0, false), KVB_OK);
	uint64_t t0 = kvb_loop_fabric_now(w.f);
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, &op, 1, NULL), KVB_OK);
	ck_assert_int_eq(run_rec(w.f, w.a, r, 4), 1);
	ck_assert_int_eq(r[0].ev.status, KVB_ERR_TRANSPORT);
	ck_assert_uint_eq(r[0].t, t0 + LAT);

	/* Down and up again while the slice flies: still fails. */
	ck_assert_int_eq(kvb_loop_set_nic_up(w.a, 0, true), KVB_OK);
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, &op, 1, NULL), KVB_OK);
	ck_assert_int_eq(kvb_loop_set_nic_up(w.a, 0, false), KVB_OK);
	ck_assert_int_eq(kvb_loop_set_nic_up(w.a, 0, true), KVB_OK);
	ck_assert_int_eq(run_rec(w.f, w.a, r, 4), 1);
	ck_assert_int_eq(r[0].ev.status, KVB_ERR_TRANSPORT);

	/* Remote NIC down during the flight. */
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, &op, 1, NULL), KVB_OK);
	ck_assert_int_eq(kvb_loop_set_nic_up(w.b, 0, false), KVB_OK);
	ck_assert_int_eq(run_rec(w.f, w.a, r, 4), 1);
	ck_assert_int_eq(r[0].ev.status, KVB_ERR_TRANSPORT);
	/* Remote NIC down at post. */
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, &op, 1, NULL), KVB_OK);
	ck_assert_int_eq(run_rec(w.f, w.a, r, 4), 1);
	ck_assert_int_eq(r[0].ev.status, KVB_ERR_TRANSPORT);
	ck_assert(all_bytes(rb.buf, 4096, 0xBB));

	/* All up: works. */
	ck_assert_int_eq(kvb_loop_set_nic_up(w.b, 0, true), KVB_OK);
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, &op, 1, NULL), KVB_OK);
	ck_assert_int_eq(run_rec(w.f, w.a, r, 4), 1);
	ck_assert_int_eq(r[0].ev.status, KVB_OK);
	ck_assert_mem_eq(rb.buf, la.buf, 4096);
	region_done(w.a, &la);
	region_done(w.b, &rb);
	world_down(&w);
}
END_TEST

START_TEST(test_loop_kill)
{
	world_t w;
	world_up(&w, 1, 1);
	region_t la, rb;
	rec_t r[8];
	region_reg(w.a, &la, 4096, 1);
	region_reg(w.b, &rb, 4096, 0xBB);
	uint64_t t0 = kvb_loop_fabric_now(w.f), tid;

	kvb_slice_op_t op = slice(KVB_XFER_WRITE, 0, 0, &la, 0, &rb, 0, 4096, 1);
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, &op, 1, NULL), KVB_OK);
	ck_assert_int_eq(w.a->ops->msg_send(w.a, w.ca, "to-b", 4), KVB_OK);
	ck_assert_int_eq(w.b->ops->msg_send(w.b, w.cb, "last", 4), KVB_OK);
	ck_assert_int_eq(w.b->ops->timer_arm(w.b, t0 + 1, 1, &tid), KVB_OK);
	ck_assert_int_eq(kvb_loop_kill(w.b), KVB_OK);
	ck_assert_int_eq(kvb_loop_kill(w.b), KVB_OK);

	/* The dead endpoint accepts nothing and delivers nothing. */
	ck_assert_int_eq(w.b->ops->xfer_post(w.b, w.cb, &op, 1, NULL), KVB_ERR_STATE);
	ck_assert_int_eq(w.b->ops->msg_send(w.b, w.cb, "x", 1), KVB_ERR_STATE);
	ck_assert_int_eq(w.b->ops->timer_arm(w.b, t0 + 5, 2, &tid), KVB_ERR_STATE);

	/* The survivor: slice fails, the message sent before the crash still
	 * arrives, then CONN_DOWN. */
	ck_assert_int_eq(run_rec(w.f, w.a, r, 8), 3);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_XFER_DONE);
	ck_assert_int_eq(r[0].ev.status, KVB_ERR_PEER);
	ck_assert_uint_eq(r[0].t, t0 + 4096 + LAT);
	ck_assert_int_eq(r[1].ev.type, KVB_EV_MSG);
	ck_assert_mem_eq(r[1].data, "last", 4);
	ck_assert_int_eq(r[2].ev.type, KVB_EV_CONN_DOWN);
	ck_assert_int_eq(r[2].ev.status, KVB_ERR_PEER);
	ck_assert_ptr_eq(r[2].ev.conn, w.ca);
	ck_assert_uint_eq(r[2].t, t0 + MLAT);
	ck_assert_int_eq(poll_rec(w.f, w.b, r, 8), 0);
	ck_assert(all_bytes(rb.buf, 4096, 0xBB));
	ck_assert_int_eq(w.a->ops->msg_send(w.a, w.ca, "x", 1), KVB_ERR_PEER);
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, &op, 1, NULL), KVB_ERR_PEER);

	/* Connecting to a dead endpoint fails. */
	kvb_conn_t *c2 = kvb_conn_alloc(w.a);
	ck_assert_int_eq(w.a->ops->conn_connect(w.a, c2, "b"), KVB_INPROGRESS);
	ck_assert_int_eq(run_rec(w.f, w.a, r, 8), 1);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_CONN_DOWN);
	ck_assert_ptr_eq(r[0].ev.conn, c2);
	conn_done(w.a, c2);

	region_done(w.a, &la);
	region_done(w.b, &rb);
	world_down(&w);
}
END_TEST

/* A closed conn: events queued for it vanish, the peer sees CONN_DOWN, and
 * slices already posted towards it fail. */
START_TEST(test_loop_conn_close)
{
	world_t w;
	world_up(&w, 1, 1);
	region_t la, rb;
	rec_t r[8];
	region_reg(w.a, &la, 4096, 1);
	region_reg(w.b, &rb, 4096, 0xBB);
	uint64_t t0 = kvb_loop_fabric_now(w.f);

	ck_assert_int_eq(w.a->ops->msg_send(w.a, w.ca, "lost", 4), KVB_OK);
	kvb_slice_op_t op = slice(KVB_XFER_WRITE, 0, 0, &la, 0, &rb, 0, 4096, 1);
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, &op, 1, NULL), KVB_OK);
	ck_assert(kvb_loop_fabric_advance(w.f)); /* the slice is done, the message not yet */
	conn_done(w.b, w.cb);
	w.cb = NULL;
	ck_assert_int_eq(w.a->ops->msg_send(w.a, w.ca, "x", 1), KVB_ERR_PEER);
	ck_assert_int_eq(run_rec(w.f, w.b, r, 8), 0);
	ck_assert_int_eq(run_rec(w.f, w.a, r, 8), 2);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_XFER_DONE);
	ck_assert_int_eq(r[0].ev.status, KVB_OK); /* completed before the close */
	ck_assert_int_eq(r[1].ev.type, KVB_EV_CONN_DOWN);
	ck_assert_uint_eq(r[1].t, t0 + 4096 + LAT + MLAT);
	region_done(w.a, &la);
	region_done(w.b, &rb);
	world_down(&w);
}
END_TEST

START_TEST(test_loop_connect_races)
{
	kvb_loop_fabric_t *f = kvb_loop_fabric_new(1);
	kvb_backend_t *a = ep_open(f, "a", 1), *b = ep_open(f, "b", 1);
	rec_t r[4];

	/* The target closes before the connect request reaches it. */
	kvb_conn_t *ca = kvb_conn_alloc(a);
	ck_assert_int_eq(a->ops->conn_connect(a, ca, "b"), KVB_INPROGRESS);
	kvb_backend_close(b);
	ck_assert_int_eq(run_rec(f, a, r, 4), 1);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_CONN_DOWN);
	ck_assert_uint_eq(r[0].t, MLAT);
	conn_done(a, ca);

	/* The initiator gives up before the accept. */
	b = ep_open(f, "b", 1);
	uint64_t t0 = kvb_loop_fabric_now(f);
	ca = kvb_conn_alloc(a);
	ck_assert_int_eq(a->ops->conn_connect(a, ca, "b"), KVB_INPROGRESS);
	ck_assert_int_eq(next_rec(f, b, r, 4), 1);
	conn_done(a, ca);
	kvb_conn_t *cb = kvb_conn_alloc(b);
	ck_assert_int_eq(b->ops->conn_accept(b, cb, r[0].ev.incoming_id), KVB_OK);
	ck_assert_int_eq(run_rec(f, b, r, 4), 1);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_CONN_DOWN);
	ck_assert_ptr_eq(r[0].ev.conn, cb);
	ck_assert_uint_eq(r[0].t, t0 + 2 * MLAT);
	ck_assert_int_eq(poll_rec(f, a, r, 4), 0);
	conn_done(b, cb);
	kvb_backend_close(a);
	kvb_backend_close(b);
	ck_assert_uint_eq(kvb_loop_fabric_pending(f), 0);
	kvb_loop_fabric_free(f);
}
END_TEST

START_TEST(test_loop_timers)
{
	kvb_loop_fabric_t *f = kvb_loop_fabric_new(1);
	kvb_backend_t *a = ep_open(f, "a", 1);
	rec_t r[8];
	uint64_t id[8];

	ck_assert_int_eq(a->ops->timer_arm(a, 500, 1, &id[0]), KVB_OK);
	ck_assert_int_eq(a->ops->timer_arm(a, 100, 2, &id[1]), KVB_OK);
	ck_assert_int_eq(a->ops->timer_arm(a, 100, 3, &id[2]), KVB_OK);
	ck_assert_int_eq(a->ops->timer_arm(a, 300, 4, &id[3]), KVB_OK);
	ck_assert_int_eq(a->ops->timer_arm(a, UINT64_MAX, 5, &id[4]), KVB_OK);
	ck_assert_int_eq(a->ops->timer_cancel(a, id[3]), KVB_OK);
	ck_assert_int_eq(a->ops->timer_cancel(a, id[3]), KVB_ERR_NOT_FOUND);
	ck_assert_int_eq(a->ops->timer_cancel(a, 999), KVB_ERR_NOT_FOUND);
	ck_assert_int_eq(a->ops->timer_cancel(a, id[4]), KVB_OK);
	ck_assert_uint_eq(kvb_loop_fabric_pending(f), 3);

	ck_assert_int_eq(next_rec(f, a, r, 8), 2);
	ck_assert_uint_eq(r[0].t, 100);
	ck_assert_int_eq(r[0].ev.type, KVB_EV_TIMER);
	ck_assert_uint_eq(r[0].ev.cookie, 2); /* equal deadlines: FIFO */
	ck_assert_uint_eq(r[1].ev.cookie, 3);
	/* A deadline in the past fires now, after what is already due. */
	ck_assert_int_eq(a->ops->timer_arm(a, 50, 6, &id[5]), KVB_OK);
	ck_assert_int_eq(next_rec(f, a, r, 8), 1);
	ck_assert_uint_eq(r[0].t, 100);
	ck_assert_uint_eq(r[0].ev.cookie, 6);
	ck_assert_int_eq(next_rec(f, a, r, 8), 1);
	ck_assert_uint_eq(r[0].t, 500);
	ck_assert_uint_eq(r[0].ev.cookie, 1);
	ck_assert_int_eq(a->ops->timer_cancel(a, id[0]), KVB_ERR_NOT_FOUND); /* already delivered */

	/* Cancelling a due but unpolled timer removes it. */
	ck_assert_int_eq(a->ops->timer_arm(a, 600, 7, &id[6]), KVB_OK);
	ck_assert_int_eq(a->ops->timer_arm(a, 600, 8, &id[7]), KVB_OK);
	ck_assert(kvb_loop_fabric_advance(f));
	ck_assert_int_eq(a->ops->timer_cancel(a, id[6]), KVB_OK);
	ck_assert_int_eq(poll_rec(f, a, r, 8), 1);
	ck_assert_uint_eq(r[0].ev.cookie, 8);
	ck_assert(!kvb_loop_fabric_advance(f));
	ck_assert_uint_eq(kvb_loop_fabric_now(f), 600);
	kvb_backend_close(a);
	kvb_loop_fabric_free(f);
}
END_TEST

static void random_bytes(uint64_t seed, const char *second, uint8_t out[2][64])
{
	kvb_loop_fabric_t *f = kvb_loop_fabric_new(seed);
	kvb_backend_t *a = ep_open(f, "a", 1);
	kvb_backend_t *b = ep_open(f, second, 1);
	ck_assert_int_eq(a->ops->random_fill(a, out[0], 64), KVB_OK);
	ck_assert_int_eq(b->ops->random_fill(b, out[1], 61), KVB_OK);
	out[1][61] = out[1][62] = out[1][63] = 0;
	kvb_backend_close(a);
	kvb_backend_close(b);
	kvb_loop_fabric_free(f);
}

START_TEST(test_loop_random)
{
	uint8_t x[2][64], y[2][64], z[2][64];
	random_bytes(42, "b", x);
	random_bytes(42, "other-name", y); /* seeded by index, not by name */
	random_bytes(43, "b", z);
	ck_assert_mem_eq(x, y, sizeof(x));
	ck_assert(memcmp(x[0], z[0], 64) != 0);
	ck_assert(memcmp(x[0], x[1], 61) != 0);
	ck_assert(!all_bytes(x[0], 64, 0));
}
END_TEST

/* Closing endpoints with everything in flight: slices, messages, timers,
 * registrations, an unaccepted connect.  ASan/valgrind check the leaks. */
START_TEST(test_loop_close_inflight)
{
	world_t w;
	world_up(&w, 2, 2);
	region_t la, rb;
	region_reg(w.a, &la, 65536, 1);
	region_reg(w.b, &rb, 65536, 0);
	kvb_slice_op_t ops[16];
	for (int i = 0; i < 16; i++)
		ops[i] = slice(KVB_XFER_WRITE, (uint32_t)i % 2, 0, &la, 4096u * i, &rb, 4096u * i, 4096, i);
	size_t np;
	ck_assert_int_eq(w.a->ops->xfer_post(w.a, w.ca, ops, 16, &np), KVB_OK);
	ck_assert_int_eq(w.b->ops->msg_send(w.b, w.cb, "m", 1), KVB_OK);
	ck_assert_int_eq(w.a->ops->msg_send(w.a, w.ca, "n", 1), KVB_OK);
	uint64_t tid;
	ck_assert_int_eq(w.a->ops->timer_arm(w.a, 1000000, 1, &tid), KVB_OK);
	kvb_backend_t *c = ep_open(w.f, "c", 1);
	kvb_conn_t *cc = kvb_conn_alloc(c);
	ck_assert_int_eq(c->ops->conn_connect(c, cc, "a"), KVB_INPROGRESS);
	ck_assert(kvb_loop_fabric_advance(w.f)); /* some completions ready, unpolled */
	ck_assert_uint_gt(kvb_loop_fabric_pending(w.f), 0);

	/* b goes first: a's slices into it then fail. */
	kvb_backend_close(w.b);
	kvb_conn_free(w.cb);
	w.cb = NULL;
	ck_assert_int_eq(w.a->ops->mr_dereg(w.a, la.mr), KVB_ERR_STATE);
	kvb_backend_close(w.a);
	kvb_conn_free(w.ca);
	w.ca = NULL;
	rec_t r[4];
	ck_assert_int_eq(run_rec(w.f, c, r, 4), 1); /* a's close reaches c */
	ck_assert_int_eq(r[0].ev.type, KVB_EV_CONN_DOWN);
	conn_done(c, cc);
	kvb_backend_close(c);
	ck_assert_uint_eq(kvb_loop_fabric_pending(w.f), 0);
	kvb_loop_fabric_free(w.f);
	g_free(la.buf);
	g_free(rb.buf);
}
END_TEST

Suite *kvb_suite_loop(void)
{
	Suite *s = suite_create("loop");
	TCase *tc = tcase_create("loop");
	tcase_add_test(tc, test_loop_connect_times);
	tcase_add_test(tc, test_loop_connect_unknown);
	tcase_add_test(tc, test_loop_open_args);
	tcase_add_test(tc, test_loop_nic_query);
	tcase_add_test(tc, test_loop_msg_order);
	tcase_add_test(tc, test_loop_msg_buffer_lifetime);
	tcase_add_test(tc, test_loop_write_read);
	tcase_add_test(tc, test_loop_serialize_and_stripe);
	tcase_add_test(tc, test_loop_queue_depth);
	tcase_add_test(tc, test_loop_local_range);
	tcase_add_test(tc, test_loop_remote_range);
	tcase_add_test(tc, test_loop_mr_dereg);
	tcase_add_test(tc, test_loop_nic_down);
	tcase_add_test(tc, test_loop_kill);
	tcase_add_test(tc, test_loop_conn_close);
	tcase_add_test(tc, test_loop_connect_races);
	tcase_add_test(tc, test_loop_timers);
	tcase_add_test(tc, test_loop_random);
	tcase_add_test(tc, test_loop_close_inflight);
	suite_add_tcase(s, tc);
	return s;
}
