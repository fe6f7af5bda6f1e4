/*
 * Lease policies (fixed, heartbeat, adaptive) and the consumer's EXPECTED
 * state (kvb_consumer_expect: announced, heartbeating, no blocks held).
 * Every test ends with the teardown invariant.
 */
#include "config.h"

#include "harness.h"
#include "suites.h"

static void setup(h_world_t **w, h_worker_t **p, h_worker_t **d, h_opts_t *o)
{
	*w = h_world_new(1);
	h_pair(*w, p, d, o);
}

static kvb_counters_t counters(h_worker_t *x)
{
	kvb_counters_t c;
	kvb_connector_counters(x->conn, &c);
	return c;
}

/* A consumer that announced the request and pulls 20 s later keeps the
 * producer's heartbeat lease (3 s) alive the whole time. */
START_TEST(test_heartbeat_lease_renewed)
{
	h_world_t *w;
	h_worker_t *p, *d;
	h_opts_t o;
	h_opts_default(&o);
	o.lease_policy = KVB_LEASE_HEARTBEAT;
	o.heartbeat_s = 1;
	o.lease_s = 100;
	setup(&w, &p, &d, &o);
	kvb_block_list_t pb = H_LIST(1, 2), db = H_LIST(5, 6);
	h_fill(p, 3, &pb, 1);
	h_expect_pull(d, "r", "x", "p0");
	ck_assert_int_eq(kvb_consumer_state(d->conn, "r"), KVB_CONSUMER_EXPECTED);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	ck_assert_uint_eq(counters(p).last_lease_ns, S(3));
	ck_assert_uint_eq(counters(d).blocks_held, 0);
	h_run_for(w, 20);
	ck_assert_int_eq(kvb_producer_state(p->conn, "x"), KVB_PRODUCER_READY);
	ck_assert_int_eq(kvb_consumer_state(d->conn, "r"), KVB_CONSUMER_EXPECTED);
	ck_assert_uint_ge(counters(p).lease_renewals, 18);
	ck_assert_uint_ge(counters(d).heartbeats_sent, 19);
	h_pull(d, "r", "x", "p0", &db, 1);
	ck_assert_uint_eq(counters(d).blocks_held, 2);
	h_run(w, NULL, NULL, 100);
	h_expect_finished(d, "r", KVB_CONSUMER_DONE, KVB_OK);
	h_expect_finished(p, "x", KVB_PRODUCER_SENT, KVB_OK);
	h_expect(d, 3, &db, 1);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* The announcing consumer dies: heartbeats stop and the producer frees the
 * blocks 3 intervals after the last one, not after the 480 s fixed lease. */
START_TEST(test_heartbeat_dead_consumer_freed_fast)
{
	h_world_t *w;
	h_worker_t *p, *d;
	h_opts_t o;
	h_opts_default(&o);
	o.lease_policy = KVB_LEASE_HEARTBEAT;
	o.heartbeat_s = 1;
	o.lease_s = 480;
	setup(&w, &p, &d, &o);
	kvb_block_list_t pb = H_LIST(1, 2);
	h_expect_pull(d, "r", "x", "p0");
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	h_run_for(w, 5.5);
	h_kill(w, d);
	h_run(w, NULL, NULL, 1000);
	const kvb_finished_t *f = h_expect_finished(p, "x", KVB_PRODUCER_EXPIRED, KVB_ERR_EXPIRED);
	/* last heartbeat at 5 s (+ message latency): expiry 3 s later */
	ck_assert_uint_gt(f->end_ns, S(8));
	ck_assert_uint_lt(f->end_ns, S(8.1));
	ck_assert_ptr_nonnull(strstr(f->reason, "(heartbeat)"));
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* Heartbeats never hold blocks past lease_max; the consumer that never
 * pulls ends at its own deadline. */
START_TEST(test_heartbeat_lease_max)
{
	h_world_t *w;
	h_worker_t *p, *d;
	h_opts_t o;
	h_opts_default(&o);
	o.lease_policy = KVB_LEASE_HEARTBEAT;
	o.heartbeat_s = 1;
	o.lease_max_s = 10;
	o.consumer_timeout_s = 15;
	setup(&w, &p, &d, &o);
	kvb_block_list_t pb = H_LIST(1);
	h_expect_pull(d, "r", "x", "p0");
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	h_run(w, NULL, NULL, 100);
	const kvb_finished_t *f = h_expect_finished(p, "x", KVB_PRODUCER_EXPIRED, KVB_ERR_EXPIRED);
	ck_assert_uint_eq(f->end_ns, S(10));
	f = h_expect_finished(d, "r", KVB_CONSUMER_FAILED, KVB_ERR_TIMEOUT);
	ck_assert_uint_eq(f->end_ns, S(15));
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* A fixed lease ignores heartbeats: expect + pull still works, the lease is
 * the abort timeout. */
START_TEST(test_fixed_lease_ignores_heartbeats)
{
	h_world_t *w;
	h_worker_t *p, *d;
	h_opts_t o;
	h_opts_default(&o);
	o.heartbeat_s = 1;
	o.lease_s = 4;
	setup(&w, &p, &d, &o);
	kvb_block_list_t pb = H_LIST(1), db = H_LIST(9);
	h_expect_pull(d, "r", "x", "p0");
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	h_run_for(w, 6);
	h_expect_finished(p, "x", KVB_PRODUCER_EXPIRED, KVB_ERR_EXPIRED);
	ck_assert_uint_eq(counters(p).lease_renewals, 0);
	ck_assert_uint_ge(counters(p).heartbeats_received, 5);
	h_pull(d, "r", "x", "p0", &db, 1);
	h_run(w, NULL, NULL, 100);
	h_expect_finished(d, "r", KVB_CONSUMER_FAILED, KVB_ERR_EXPIRED);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* Adaptive: after 32 served requests whose pulls came 0.5 s after ready,
 * the lease becomes factor x p99 = 1 s; a request nobody pulls then expires
 * after 1 s instead of lease_max. */
START_TEST(test_adaptive_lease)
{
	h_world_t *w;
	h_worker_t *p, *d;
	h_opts_t o;
	h_opts_default(&o);
	o.lease_policy = KVB_LEASE_ADAPTIVE;
	o.lease_min_s = 0.2;
	o.lease_max_s = 100;
	o.lease_s = 480;
	o.num_blocks = 64;
	setup(&w, &p, &d, &o);
	for (uint32_t i = 0; i < 32; i++) {
		char tid[16], rid[16];
		snprintf(tid, sizeof(tid), "x%u", i);
		snprintf(rid, sizeof(rid), "r%u", i);
		uint32_t pi[1] = {i}, di[1] = {i};
		kvb_block_list_t pb = {pi, 1}, db = {di, 1};
		ck_assert_int_eq(kvb_producer_begin(p->conn, tid, NULL), KVB_OK);
		ck_assert_int_eq(kvb_producer_ready(p->conn, tid, &pb, 1, NULL), KVB_OK);
		ck_assert_uint_eq(counters(p).last_lease_ns, S(100));
		h_run_for(w, 0.5);
		h_pull(d, rid, tid, "p0", &db, 1);
		h_run(w, NULL, NULL, 10);
		h_expect_finished(d, rid, KVB_CONSUMER_DONE, KVB_OK);
		h_forget(d, &db, 1);
	}
	uint32_t pi[1] = {40};
	kvb_block_list_t pb = {pi, 1};
	ck_assert_int_eq(kvb_producer_begin(p->conn, "orphan", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "orphan", &pb, 1, NULL), KVB_OK);
	uint64_t lease = counters(p).last_lease_ns;
	/* p99 of 32 delays of 0.5 s plus a message latency, times 2 */
	ck_assert_uint_ge(lease, S(1.0));
	ck_assert_uint_lt(lease, S(1.001));
	uint64_t t0 = kvb_loop_fabric_now(w->fabric);
	h_run(w, NULL, NULL, 200);
	const kvb_finished_t *f = h_expect_finished(p, "orphan", KVB_PRODUCER_EXPIRED, KVB_ERR_EXPIRED);
	ck_assert_uint_eq(f->end_ns - t0, lease);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* EXPECTED ends: abort at once (nothing held), connect failure, deadline. */
START_TEST(test_expected_endings)
{
	h_world_t *w;
	h_worker_t *p, *d;
	h_opts_t o;
	h_opts_default(&o);
	o.consumer_timeout_s = 3;
	setup(&w, &p, &d, &o);
	h_expect_pull(d, "a", "x", "p0");
	ck_assert_int_eq(kvb_consumer_abort(d->conn, "a", NULL), KVB_OK);
	h_collect(w);
	h_expect_finished(d, "a", KVB_CONSUMER_FAILED, KVB_ERR_ABORTED);
	h_expect_pull(d, "b", "y", "nowhere");
	h_expect_pull(d, "c", "z", "p0");
	kvb_err_t e;
	const char *addr = "p0";
	kvb_pull_params_t pp = {"c", "z", &addr, 1, 0, NULL, 0};
	ck_assert_int_eq(kvb_consumer_expect(d->conn, &pp, &e), KVB_ERR_EXISTS);
	/* a pull naming another transfer for the expected id is refused */
	kvb_block_list_t db = H_LIST(3);
	pp.transfer_id = "other";
	pp.groups = &db;
	pp.n_groups = 1;
	ck_assert_int_eq(kvb_consumer_pull(d->conn, &pp, &e), KVB_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(e.msg, "expected transfer z"));
	h_run(w, NULL, NULL, 100);
	h_expect_finished(d, "b", KVB_CONSUMER_FAILED, KVB_ERR_PEER);
	const kvb_finished_t *f = h_expect_finished(d, "c", KVB_CONSUMER_FAILED, KVB_ERR_TIMEOUT);
	ck_assert_uint_eq(f->end_ns, S(3));
	h_invariants(w);
	h_world_free(w);
}
END_TEST

Suite *kvb_suite_lease(void)
{
	Suite *s = suite_create("lease");
	TCase *tc = tcase_create("policies");
	tcase_add_test(tc, test_heartbeat_lease_renewed);
	tcase_add_test(tc, test_heartbeat_dead_consumer_freed_fast);
	tcase_add_test(tc, test_heartbeat_lease_max);
	tcase_add_test(tc, test_fixed_lease_ignores_heartbeats);
	tcase_add_test(tc, test_adaptive_lease);
	tcase_add_test(tc, test_expected_endings);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);
	return s;
}
