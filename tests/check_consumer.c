/*
 * Consumer state machine: connect failures, aborts at every stage, the
 * deadline, peers dying mid-transfer, partial failure with several producer
 * ranks.  Every test ends with the teardown invariant.
 */
#include "config.h"

#include <string.h>

#include "harness.h"
#include "suites.h"





/* WAITING -> FAILED (PEER) when the producer address does not exist. */
START_TEST(test_connect_unknown_producer)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	o.role = KVB_ROLE_CONSUMER;
	h_worker_t *d = h_add(w, "d0", &o);
	kvb_block_list_t db = H_LIST(1, 2);
	h_pull(d, "r", "x", "nobody", &db, 1);
	h_run(w, NULL, NULL, 100);
	const kvb_finished_t *f = h_expect_finished(d, "r", KVB_CONSUMER_FAILED, KVB_ERR_PEER);
	ck_assert_msg(strstr(f->reason, "cannot connect to nobody"), "reason: %s", f->reason);
	kvb_counters_t c;
	kvb_connector_counters(d->conn, &c);
	ck_assert_uint_eq(c.fail_peer, 1);
	/* the connector keeps working: the next pull to a real producer succeeds */
	o.role = KVB_ROLE_PRODUCER;
	h_worker_t *p = h_add(w, "p0", &o);
	kvb_block_list_t pb = H_LIST(4, 5);
	h_fill(p, 1, &pb, 1);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	h_pull(d, "r2", "x", "p0", &db, 1);
	h_run(w, NULL, NULL, 100);
	h_expect_finished(d, "r2", KVB_CONSUMER_DONE, KVB_OK);
	h_expect(d, 1, &db, 1);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* WAITING -> FAILED (ABORTED) at once: nothing was sent yet. */
START_TEST(test_abort_waiting)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	kvb_block_list_t db = H_LIST(1, 2);
	h_pull(d, "r", "x", "p0", &db, 1);
	ck_assert_int_eq(kvb_consumer_state(d->conn, "r"), KVB_CONSUMER_WAITING);
	ck_assert_int_eq(kvb_consumer_abort(d->conn, "r", NULL), KVB_OK);
	h_collect(w);
	h_expect_finished(d, "r", KVB_CONSUMER_FAILED, KVB_ERR_ABORTED);
	ck_assert_int_eq(kvb_consumer_abort(d->conn, "r", NULL), KVB_ERR_NOT_FOUND);
	h_run(w, NULL, NULL, 100);
	ck_assert_int_eq(kvb_producer_state(p->conn, "x"), KVB_ERR_NOT_FOUND);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* REQUESTED -> cancel -> FAILED (ABORTED) when the producer confirms.  The
 * producer counts the cancel as a release: once ready it frees at once. */
START_TEST(test_abort_requested_releases_producer)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	kvb_block_list_t pb = H_LIST(8, 9), db = H_LIST(1, 2);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	h_pull(d, "r", "x", "p0", &db, 1);
	h_run_until(w, d, "r", KVB_CONSUMER_REQUESTED, false);
	h_run_for(w, 0.001); /* the pull is queued on the producer */
	ck_assert_int_eq(kvb_consumer_abort(d->conn, "r", NULL), KVB_OK);
	ck_assert_int_eq(kvb_consumer_state(d->conn, "r"), KVB_CONSUMER_REQUESTED); /* until confirmed */
	ck_assert_int_eq(kvb_consumer_abort(d->conn, "r", NULL), KVB_ERR_STATE);
	h_state_wait_t sw = {d, "r", 0, false};
	h_run(w, h_pred_finished, &sw, 100);
	h_expect_finished(d, "r", KVB_CONSUMER_FAILED, KVB_ERR_ABORTED);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	h_collect(w);
	const kvb_finished_t *f = h_expect_finished(p, "x", KVB_PRODUCER_SENT, KVB_OK);
	ck_assert_uint_eq(f->bytes, 0);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* RECEIVING -> cancel: the producer stops posting and confirms; the
 * consumer ends only then (its blocks are not written after it ends). */
START_TEST(test_abort_receiving)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	o.nic_Bps = 1000000;
	o.nic_queue_depth = 1;
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	kvb_block_list_t pb = H_LIST(1, 2, 3, 4), db = H_LIST(5, 6, 7, 8);
	h_fill(p, 2, &pb, 1);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	h_pull(d, "r", "x", "p0", &db, 1);
	h_run_until(w, d, "r", KVB_CONSUMER_RECEIVING, false);
	h_run_for(w, 0.01);
	ck_assert_int_eq(kvb_consumer_abort(d->conn, "r", NULL), KVB_OK);
	ck_assert_int_eq(kvb_consumer_state(d->conn, "r"), KVB_CONSUMER_RECEIVING);
	h_state_wait_t sw = {d, "r", 0, false};
	h_run(w, h_pred_finished, &sw, 100);
	h_expect_finished(d, "r", KVB_CONSUMER_FAILED, KVB_ERR_ABORTED);
	/* snapshot the consumer's memory: nothing may change after it ended */
	h_forget(d, &db, 1);
	h_run(w, NULL, NULL, 100);
	const kvb_finished_t *f = h_expect_finished(p, "x", KVB_PRODUCER_SENT, KVB_OK);
	ck_assert_uint_lt(f->bytes, 4 * 4 * 4096);
	kvb_counters_t pc;
	kvb_connector_counters(p->conn, &pc);
	ck_assert_uint_lt(pc.slices_posted, 16);
	ck_assert_uint_eq(pc.fail_aborted, 1);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* Deadline: FAILED (TIMEOUT) exactly consumer_timeout after the pull; the
 * producer is told to drop the queued pull. */
START_TEST(test_consumer_deadline)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	o.lease_s = 10;
	o.consumer_timeout_s = 1;
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	kvb_block_list_t db = H_LIST(1);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	h_pull(d, "r", "x", "p0", &db, 1);
	h_state_wait_t sw = {d, "r", 0, false};
	h_run(w, h_pred_finished, &sw, 100);
	const kvb_finished_t *f = h_expect_finished(d, "r", KVB_CONSUMER_FAILED, KVB_ERR_TIMEOUT);
	ck_assert_uint_eq(f->end_ns, S(1));
	ck_assert_ptr_nonnull(strstr(f->reason, "within 1.000 s (0 of 1 producers done)"));
	h_run_for(w, 0.001);
	ck_assert_int_eq(kvb_producer_state(p->conn, "x"), KVB_PRODUCER_PREFILL);
	ck_assert_int_eq(kvb_producer_abort(p->conn, "x", NULL), KVB_OK);
	h_run(w, NULL, NULL, 100);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* The producer dies mid-transfer: the consumer fails with PEER at once. */
START_TEST(test_producer_killed_mid_transfer)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	o.nic_Bps = 1000000;
	o.nic_queue_depth = 1;
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	kvb_block_list_t pb = H_LIST(1, 2, 3, 4), db = H_LIST(5, 6, 7, 8);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	h_pull(d, "r", "x", "p0", &db, 1);
	h_run_until(w, d, "r", KVB_CONSUMER_RECEIVING, false);
	h_kill(w, p);
	h_run(w, NULL, NULL, 100);
	const kvb_finished_t *f = h_expect_finished(d, "r", KVB_CONSUMER_FAILED, KVB_ERR_PEER);
	ck_assert_ptr_nonnull(strstr(f->reason, "lost connection to p0"));
	h_forget(d, &db, 1);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* The consumer dies mid-transfer: the producer's send ends (posted slices
 * drain with errors), the blocks stay held until the lease, then EXPIRED;
 * the producer keeps serving others. */
START_TEST(test_consumer_killed_mid_transfer)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	o.nic_Bps = 1000000;
	o.nic_queue_depth = 1;
	o.lease_s = 1;
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	o.role = KVB_ROLE_CONSUMER;
	o.nic_Bps = 25000000000ull;
	h_worker_t *d2 = h_add(w, "d1", &o);
	kvb_block_list_t pb = H_LIST(1, 2, 3, 4), db = H_LIST(5, 6, 7, 8);
	kvb_block_list_t pb2 = H_LIST(20, 21), db2 = H_LIST(30, 31);
	h_fill(p, 12, &pb2, 1);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	h_pull(d, "r", "x", "p0", &db, 1);
	h_run_until(w, p, "x", KVB_PRODUCER_SENDING, true);
	h_run_for(w, 0.005);
	h_kill(w, d);
	h_run_for(w, 0.1);
	ck_assert_int_eq(kvb_producer_state(p->conn, "x"), KVB_PRODUCER_READY);
	kvb_counters_t pc;
	kvb_connector_counters(p->conn, &pc);
	ck_assert_uint_eq(pc.blocks_held, 4);
	ck_assert_uint_eq(pc.fail_peer, 1);
	/* others are still served */
	ck_assert_int_eq(kvb_producer_begin(p->conn, "y", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "y", &pb2, 1, NULL), KVB_OK);
	h_pull(d2, "q", "y", "p0", &db2, 1);
	h_run(w, NULL, NULL, 100);
	h_expect_finished(d2, "q", KVB_CONSUMER_DONE, KVB_OK);
	h_expect_finished(p, "y", KVB_PRODUCER_SENT, KVB_OK);
	const kvb_finished_t *f = h_expect_finished(p, "x", KVB_PRODUCER_EXPIRED, KVB_ERR_EXPIRED);
	ck_assert_uint_eq(f->end_ns, S(1));
	h_expect(d2, 12, &db2, 1);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* Two producer ranks; one dies while the other is still writing: the
 * consumer cancels the survivor, waits for its confirmation, then fails
 * with the first reason. */
START_TEST(test_multi_target_partial_failure)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	o.total_kv_heads = 2;
	o.role = KVB_ROLE_PRODUCER;
	o.tp_size = 2;
	o.block_bytes = 2048;
	o.stride = 2048;
	o.nic_Bps = 1000000;
	o.nic_queue_depth = 1;
	o.tp_rank = 0;
	h_worker_t *p0 = h_add(w, "p0", &o);
	o.tp_rank = 1;
	h_worker_t *p1 = h_add(w, "p1", &o);
	o.role = KVB_ROLE_CONSUMER;
	o.tp_size = 1;
	o.tp_rank = 0;
	o.block_bytes = 4096;
	o.stride = 4096;
	h_worker_t *d = h_add(w, "d0", &o);
	kvb_block_list_t pb = H_LIST(1, 2, 3, 4), db = H_LIST(5, 6, 7, 8);
	for (int i = 0; i < 2; i++) {
		h_worker_t *p = i ? p1 : p0;
		ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
		ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	}
	const char *addrs[2] = {"p0", "p1"};
	kvb_pull_params_t pp = {"r", "x", addrs, 2, 2, &db, 1};
	ck_assert_int_eq(kvb_consumer_pull(d->conn, &pp, NULL), KVB_OK);
	h_run_until(w, d, "r", KVB_CONSUMER_RECEIVING, false);
	h_run_for(w, 0.003);
	h_kill(w, p1);
	h_state_wait_t sw = {d, "r", 0, false};
	h_run(w, h_pred_finished, &sw, 100);
	const kvb_finished_t *f = h_expect_finished(d, "r", KVB_CONSUMER_FAILED, KVB_ERR_PEER);
	ck_assert_ptr_nonnull(strstr(f->reason, "p1"));
	/* p0 was cancelled before finishing its part */
	h_run(w, NULL, NULL, 100);
	const kvb_finished_t *fp = h_expect_finished(p0, "x", KVB_PRODUCER_SENT, KVB_OK);
	ck_assert_uint_lt(fp->bytes, 4 * 4 * 2048);
	kvb_counters_t pc;
	kvb_connector_counters(p0->conn, &pc);
	ck_assert_uint_eq(pc.fail_aborted, 1);
	h_forget(d, &db, 1);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

Suite *kvb_suite_consumer(void)
{
	Suite *s = suite_create("consumer");
	TCase *tc = tcase_create("transitions");
	tcase_add_test(tc, test_connect_unknown_producer);
	tcase_add_test(tc, test_abort_waiting);
	tcase_add_test(tc, test_abort_requested_releases_producer);
	tcase_add_test(tc, test_abort_receiving);
	tcase_add_test(tc, test_consumer_deadline);
	tcase_add_test(tc, test_producer_killed_mid_transfer);
	tcase_add_test(tc, test_consumer_killed_mid_transfer);
	tcase_add_test(tc, test_multi_target_partial_failure);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);
	return s;
}
