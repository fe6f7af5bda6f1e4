/*
 * Producer state machine: every transition of the chart at the top of
 * src/core/kvb_connector_int.h (docs/architecture.md names the test for each).
 * Every test ends with the teardown invariant (h_invariants).
 */
#include "config.h"

#include <string.h>

#include "harness.h"
#include "suites.h"



static int pstate(h_worker_t *p, const char *id)
{
	return kvb_producer_state(p->conn, id);
}

static int cstate(h_worker_t *d, const char *id)
{
	return kvb_consumer_state(d->conn, id);
}



/* (none)->PREFILL->READY->SENDING->SENT and, on the consumer,
 * WAITING->REQUESTED->RECEIVING->DONE; every byte verified. */
START_TEST(test_basic_transfer)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	kvb_block_list_t pb = H_LIST(5, 6, 7, 9), db = H_LIST(2, 3, 4, 8);
	h_fill(p, 11, &pb, 1);

	ck_assert_int_eq(kvb_producer_begin(p->conn, "x1", NULL), KVB_OK);
	ck_assert_int_eq(pstate(p, "x1"), KVB_PRODUCER_PREFILL);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x1", &pb, 1, NULL), KVB_OK);
	ck_assert_int_eq(pstate(p, "x1"), KVB_PRODUCER_READY);
	kvb_counters_t pc;
	kvb_connector_counters(p->conn, &pc);
	ck_assert_uint_eq(pc.blocks_held, 4);

	h_pull(d, "r1", "x1", "p0", &db, 1);
	ck_assert_int_eq(cstate(d, "r1"), KVB_CONSUMER_WAITING);
	h_run_until(w, d, "r1", KVB_CONSUMER_REQUESTED, false);
	h_run_until(w, p, "x1", KVB_PRODUCER_SENDING, true);
	h_run_until(w, d, "r1", KVB_CONSUMER_RECEIVING, false);
	ck_assert_int_eq(h_run(w, NULL, NULL, 100), KVB_OK);

	const kvb_finished_t *fp = h_expect_finished(p, "x1", KVB_PRODUCER_SENT, KVB_OK);
	const kvb_finished_t *fd = h_expect_finished(d, "r1", KVB_CONSUMER_DONE, KVB_OK);
	uint64_t bytes = 4 /* layers */ * 4 /* blocks */ * 4096;
	ck_assert_uint_eq(fp->bytes, bytes);
	ck_assert_uint_eq(fd->bytes, bytes);
	ck_assert_uint_ge(fd->end_ns, fp->end_ns);

	/* one record per side; slices of 4 KiB striped over both NICs */
	ck_assert_uint_eq(p->records->len, 1);
	kvb_xfer_record_t *rec = &g_array_index(p->records, kvb_xfer_record_t, 0);
	ck_assert_uint_eq(rec->bytes, bytes);
	ck_assert_uint_eq(rec->slices, bytes / 4096);
	ck_assert_uint_eq(rec->nics_used, 2);
	ck_assert_uint_eq(rec->nic_mask, 3);
	ck_assert_int_eq(rec->status, KVB_OK);
	ck_assert_uint_gt(rec->end_ns, rec->post_ns);
	ck_assert_uint_eq(kvb_loop_nic_tx_bytes(p->loop_be, 0), bytes / 2);
	ck_assert_uint_eq(kvb_loop_nic_tx_bytes(p->loop_be, 1), bytes / 2);
	ck_assert_uint_eq(d->records->len, 1);

	kvb_connector_counters(p->conn, &pc);
	ck_assert_uint_eq(pc.transfers_ok, 1);
	ck_assert_uint_eq(pc.bytes_sent, bytes);
	ck_assert_uint_eq(pc.slices_posted, bytes / 4096);

	h_expect(d, 11, &db, 1);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* Tail alignment: the producer holds more blocks than the consumer asks for
 * (a cached prefix on the consumer); the last ones are sent. */
START_TEST(test_tail_alignment)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	kvb_block_list_t pb = H_LIST(1, 2, 3, 4, 5, 6), db = H_LIST(40, 41);
	h_fill(p, 5, &pb, 1);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	h_pull(d, "r", "x", "p0", &db, 1);
	h_run(w, NULL, NULL, 100);
	h_expect_finished(d, "r", KVB_CONSUMER_DONE, KVB_OK);
	h_expect_finished(p, "x", KVB_PRODUCER_SENT, KVB_OK);
	h_expect(d, 5, &db, 1); /* pattern positions count from the end */
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* (none)->PLACEHOLDER (pull first), PLACEHOLDER->PREFILL (begin adopts). */
START_TEST(test_placeholder_then_begin)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	kvb_block_list_t pb = H_LIST(9, 10), db = H_LIST(0, 1);
	h_fill(p, 3, &pb, 1);
	h_pull(d, "r", "x", "p0", &db, 1);
	h_run_until(w, p, "x", KVB_PRODUCER_PLACEHOLDER, true);
	ck_assert_int_eq(cstate(d, "r"), KVB_CONSUMER_REQUESTED);
	/* the engine does not know a placeholder: ready and abort refuse it */
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_ERR_NOT_FOUND);
	ck_assert_int_eq(kvb_producer_abort(p->conn, "x", NULL), KVB_ERR_NOT_FOUND);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(pstate(p, "x"), KVB_PRODUCER_PREFILL);
	h_run_for(w, 0.001);
	ck_assert_int_eq(cstate(d, "r"), KVB_CONSUMER_REQUESTED);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	h_run(w, NULL, NULL, 100);
	h_expect_finished(p, "x", KVB_PRODUCER_SENT, KVB_OK);
	h_expect_finished(d, "r", KVB_CONSUMER_DONE, KVB_OK);
	h_expect(d, 3, &db, 1);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* PLACEHOLDER -> dropped at the pull-wait timeout; the consumer fails with
 * TIMEOUT and the reason; the producer reports nothing (its engine never
 * knew the transfer). */
START_TEST(test_placeholder_timeout)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	o.lease_s = 0.5;
	o.consumer_timeout_s = 5;
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	kvb_block_list_t db = H_LIST(0, 1);
	h_pull(d, "r", "x", "p0", &db, 1);
	h_run(w, NULL, NULL, 100);
	const kvb_finished_t *f = h_expect_finished(d, "r", KVB_CONSUMER_FAILED, KVB_ERR_TIMEOUT);
	ck_assert_ptr_nonnull(strstr(f->reason, "not ready within 0.500 s"));
	ck_assert_uint_lt(f->end_ns, S(0.6));
	ck_assert_uint_gt(f->end_ns, S(0.5));
	ck_assert_int_eq(pstate(p, "x"), KVB_ERR_NOT_FOUND);
	ck_assert_uint_eq(p->finished->len, 0);
	/* not remembered either: the engine may still begin it */
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_abort(p->conn, "x", NULL), KVB_OK);
	h_forget(d, &db, 1);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* unprefilled_wait: a pull for a transfer this producer never began fails
 * after 0.5 s (not at the 30 s lease), the reason naming the transfer and
 * this rank; one begun within that time waits for its prefill as usual. */
START_TEST(test_unprefilled_wait)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	o.lease_s = 30;
	o.unprefilled_wait_s = 0.5;
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	kvb_block_list_t db = H_LIST(0, 1), db2 = H_LIST(2, 3), pb = H_LIST(9, 10);
	h_pull(d, "r", "never", "p0", &db, 1);
	h_run(w, NULL, NULL, 100);
	const kvb_finished_t *f = h_expect_finished(d, "r", KVB_CONSUMER_FAILED, KVB_ERR_NOT_FOUND);
	ck_assert_msg(strstr(f->reason, "transfer never was never prefilled on this producer (tp rank 0 "
			     "of 1) within 0.500 s"), "%s", f->reason);
	ck_assert_uint_lt(f->end_ns, S(0.6));
	ck_assert_uint_eq(p->finished->len, 0);
	h_forget(d, &db, 1);
	/* begun at 0.3 s, ready at 2 s: the pull waits past the 0.5 s */
	h_fill(p, 4, &pb, 1);
	h_pull(d, "r2", "late", "p0", &db2, 1);
	h_run_for(w, 0.3);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "late", NULL), KVB_OK);
	h_run_for(w, 1.7);
	ck_assert_int_eq(cstate(d, "r2"), KVB_CONSUMER_REQUESTED);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "late", &pb, 1, NULL), KVB_OK);
	h_run(w, NULL, NULL, 100);
	h_expect_finished(d, "r2", KVB_CONSUMER_DONE, KVB_OK);
	h_expect(d, 4, &db2, 1);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* PLACEHOLDER -> dropped when the consumer cancels its only pull. */
START_TEST(test_placeholder_cancelled)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	kvb_block_list_t db = H_LIST(0, 1);
	h_pull(d, "r", "x", "p0", &db, 1);
	h_run_until(w, p, "x", KVB_PRODUCER_PLACEHOLDER, true);
	ck_assert_int_eq(kvb_consumer_abort(d->conn, "r", NULL), KVB_OK);
	h_run(w, NULL, NULL, 100);
	h_expect_finished(d, "r", KVB_CONSUMER_FAILED, KVB_ERR_ABORTED);
	ck_assert_int_eq(pstate(p, "x"), KVB_ERR_NOT_FOUND);
	ck_assert_uint_eq(p->finished->len, 0);
	kvb_counters_t pc;
	kvb_connector_counters(p->conn, &pc);
	ck_assert_uint_eq(pc.fail_aborted, 1);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* PREFILL -> PREFILL: queued pulls time out, the request stays with the engine. */
START_TEST(test_prefill_pull_wait_timeout)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	o.lease_s = 1;
	o.consumer_timeout_s = 10;
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	kvb_block_list_t db = H_LIST(3);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	h_pull(d, "r", "x", "p0", &db, 1);
	h_run(w, NULL, NULL, 100);
	h_expect_finished(d, "r", KVB_CONSUMER_FAILED, KVB_ERR_TIMEOUT);
	ck_assert_int_eq(pstate(p, "x"), KVB_PRODUCER_PREFILL);
	kvb_counters_t pc;
	kvb_connector_counters(p->conn, &pc);
	ck_assert_uint_eq(pc.fail_timeout, 1);
	/* PREFILL -> ABORTED with nothing queued */
	ck_assert_int_eq(kvb_producer_abort(p->conn, "x", NULL), KVB_OK);
	h_collect(w);
	h_expect_finished(p, "x", KVB_PRODUCER_ABORTED, KVB_ERR_ABORTED);
	h_forget(d, &db, 1);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* PREFILL -> ABORTED refuses the queued pull with ABORTED. */
START_TEST(test_abort_prefill_refuses_pulls)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	kvb_block_list_t db = H_LIST(3, 4);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	h_pull(d, "r", "x", "p0", &db, 1);
	h_run_for(w, 0.001);
	ck_assert_int_eq(pstate(p, "x"), KVB_PRODUCER_PREFILL);
	ck_assert_int_eq(kvb_producer_abort(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(pstate(p, "x"), KVB_ERR_NOT_FOUND);
	h_run(w, NULL, NULL, 100);
	h_expect_finished(p, "x", KVB_PRODUCER_ABORTED, KVB_ERR_ABORTED);
	const kvb_finished_t *f = h_expect_finished(d, "r", KVB_CONSUMER_FAILED, KVB_ERR_ABORTED);
	ck_assert_ptr_nonnull(strstr(f->reason, "aborted by the engine"));
	/* ids are not reused */
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_ERR_STATE);
	h_forget(d, &db, 1);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* READY -> SENT at once: an all-empty pull (full prefix hit on the consumer)
 * releases the producer's blocks. */
START_TEST(test_empty_pull_release)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	kvb_block_list_t pb = H_LIST(1, 2, 3);
	kvb_block_list_t db = {NULL, 0};
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	h_pull(d, "r", "x", "p0", &db, 1);
	h_run(w, NULL, NULL, 100);
	const kvb_finished_t *fp = h_expect_finished(p, "x", KVB_PRODUCER_SENT, KVB_OK);
	ck_assert_uint_eq(fp->bytes, 0);
	ck_assert_uint_lt(fp->end_ns, S(0.001)); /* not at the lease */
	h_expect_finished(d, "r", KVB_CONSUMER_DONE, KVB_OK);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* READY -> EXPIRED at exactly the lease; then the engine reuses the blocks
 * and a late pull is refused with EXPIRED: no stale or reused bytes are
 * ever written to the consumer. */
START_TEST(test_lease_expiry_ready_and_late_pull)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	o.lease_s = 2;
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	kvb_block_list_t pb = H_LIST(7, 8, 9), db = H_LIST(1, 2, 3);
	h_fill(p, 21, &pb, 1);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	h_run(w, NULL, NULL, 100);
	const kvb_finished_t *f = h_expect_finished(p, "x", KVB_PRODUCER_EXPIRED, KVB_ERR_EXPIRED);
	ck_assert_uint_eq(f->end_ns, S(2));
	ck_assert_ptr_nonnull(strstr(f->reason, "lease of 2.000 s (fixed) expired"));
	kvb_counters_t pc;
	kvb_connector_counters(p->conn, &pc);
	ck_assert_uint_eq(pc.leases_expired, 1);
	ck_assert_uint_eq(pc.blocks_held, 0);

	/* the engine reuses the blocks for another request */
	h_fill(p, 999, &pb, 1);
	h_pull(d, "late", "x", "p0", &db, 1);
	h_run(w, NULL, NULL, 100);
	f = h_expect_finished(d, "late", KVB_CONSUMER_FAILED, KVB_ERR_EXPIRED);
	ck_assert_ptr_nonnull(strstr(f->reason, "already expired"));
	kvb_connector_counters(p->conn, &pc);
	ck_assert_uint_eq(pc.late_pulls_refused, 1);
	ck_assert_uint_eq(pc.slices_posted, 0);
	/* consumer memory untouched (expect image is all canary) */
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* READY -> ABORTED. */
START_TEST(test_abort_ready)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	kvb_block_list_t pb = H_LIST(7), db = H_LIST(1);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_abort(p->conn, "x", NULL), KVB_OK);
	h_collect(w);
	h_expect_finished(p, "x", KVB_PRODUCER_ABORTED, KVB_ERR_ABORTED);
	ck_assert_int_eq(kvb_producer_abort(p->conn, "x", NULL), KVB_ERR_NOT_FOUND);
	h_pull(d, "r", "x", "p0", &db, 1);
	h_run(w, NULL, NULL, 100);
	h_expect_finished(d, "r", KVB_CONSUMER_FAILED, KVB_ERR_ABORTED);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* SENDING -> READY after a failed send (transport error, no retries left);
 * the blocks stay held and a second pull is served. */
START_TEST(test_send_failure_back_to_ready)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	o.slice_retries = 0;
	o.role = KVB_ROLE_PRODUCER;
	o.fault = true;
	h_worker_t *p = h_add(w, "p0", &o);
	o.fault = false;
	o.role = KVB_ROLE_CONSUMER;
	h_worker_t *d = h_add(w, "d0", &o);
	kvb_fault_rule_t rule = {.kind = KVB_FAULT_FAIL_POST, .nth = 3, .mode = KVB_FAULT_AT_COMPLETION};
	ck_assert_int_eq(kvb_fault_add(p->be, &rule), KVB_OK);
	kvb_block_list_t pb = H_LIST(7, 8), d1 = H_LIST(1, 2), d2 = H_LIST(11, 12);
	h_fill(p, 4, &pb, 1);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	h_pull(d, "r1", "x", "p0", &d1, 1);
	h_state_wait_t sw = {d, "r1", 0, false};
	h_run(w, h_pred_finished, &sw, 100);
	const kvb_finished_t *f = h_expect_finished(d, "r1", KVB_CONSUMER_FAILED, KVB_ERR_TRANSPORT);
	ck_assert_ptr_nonnull(strstr(f->reason, "failed on NIC"));
	h_run_for(w, 0.001);
	ck_assert_int_eq(pstate(p, "x"), KVB_PRODUCER_READY);
	kvb_counters_t pc;
	kvb_connector_counters(p->conn, &pc);
	ck_assert_uint_eq(pc.blocks_held, 2);
	ck_assert_uint_eq(pc.fail_transport, 1);
	h_forget(d, &d1, 1);

	h_pull(d, "r2", "x", "p0", &d2, 1);
	h_run(w, NULL, NULL, 100);
	h_expect_finished(d, "r2", KVB_CONSUMER_DONE, KVB_OK);
	h_expect_finished(p, "x", KVB_PRODUCER_SENT, KVB_OK);
	h_expect(d, 4, &d2, 1);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* SENDING + lease -> fence: posting stops, the blocks stay held while
 * slices are posted, then EXPIRED; the consumer fails with EXPIRED. */
START_TEST(test_lease_expiry_mid_send)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	o.nic_Bps = 1000000; /* 1 MB/s: a 4 KiB slice takes 4.1 ms */
	o.nic_queue_depth = 2;
	o.lease_s = 0.05;
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	kvb_block_list_t pb = H_LIST(1, 2, 3, 4, 5, 6, 7, 8), db = H_LIST(11, 12, 13, 14, 15, 16, 17, 18);
	h_fill(p, 8, &pb, 1);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	h_pull(d, "r", "x", "p0", &db, 1);
	h_run_for(w, 0.0501);
	/* lease has fired; slices are still posted: fenced, not released */
	ck_assert_int_eq(pstate(p, "x"), KVB_PRODUCER_SENDING);
	kvb_counters_t pc;
	kvb_connector_counters(p->conn, &pc);
	ck_assert_uint_eq(pc.blocks_held, 8);
	uint64_t posted = pc.slices_posted;
	h_run(w, NULL, NULL, 100);
	const kvb_finished_t *f = h_expect_finished(p, "x", KVB_PRODUCER_EXPIRED, KVB_ERR_EXPIRED);
	ck_assert_uint_gt(f->end_ns, S(0.05));
	kvb_connector_counters(p->conn, &pc);
	ck_assert_uint_le(pc.slices_posted, posted + 0); /* nothing posted after the fence */
	ck_assert_uint_lt(pc.slices_posted, 4u * 8u);
	f = h_expect_finished(d, "r", KVB_CONSUMER_FAILED, KVB_ERR_EXPIRED);
	ck_assert_ptr_nonnull(strstr(f->reason, "lease expired mid-transfer"));
	h_forget(d, &db, 1);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* SENDING + abort -> fence, then ABORTED. */
START_TEST(test_abort_sending)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	o.nic_Bps = 1000000;
	o.nic_queue_depth = 2;
	h_worker_t *p, *d;
	h_pair(w, &p, &d, &o);
	kvb_block_list_t pb = H_LIST(1, 2, 3, 4), db = H_LIST(11, 12, 13, 14);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	h_pull(d, "r", "x", "p0", &db, 1);
	h_run_until(w, p, "x", KVB_PRODUCER_SENDING, true);
	h_run_for(w, 0.005);
	ck_assert_int_eq(kvb_producer_abort(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(pstate(p, "x"), KVB_PRODUCER_SENDING); /* fenced */
	ck_assert_int_eq(kvb_producer_abort(p->conn, "x", NULL), KVB_ERR_STATE);
	h_run(w, NULL, NULL, 100);
	h_expect_finished(p, "x", KVB_PRODUCER_ABORTED, KVB_ERR_ABORTED);
	const kvb_finished_t *f = h_expect_finished(d, "r", KVB_CONSUMER_FAILED, KVB_ERR_ABORTED);
	ck_assert_ptr_nonnull(strstr(f->reason, "producer aborted mid-transfer"));
	h_forget(d, &db, 1);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* Two producer ranks (TP 2, one KV head each) fill one consumer rank (TP 1,
 * two heads): each writes its head at its offset of every block. */
START_TEST(test_tp_two_producers_one_consumer)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	o.total_kv_heads = 2;
	o.role = KVB_ROLE_PRODUCER;
	o.tp_size = 2;
	o.block_bytes = 2048;
	o.stride = 2048;
	o.tp_rank = 0;
	h_worker_t *p0 = h_add(w, "p0", &o);
	o.tp_rank = 1;
	h_worker_t *p1 = h_add(w, "p1", &o);
	o.role = KVB_ROLE_CONSUMER;
	o.tp_size = 1;
	o.tp_rank = 0;
	o.block_bytes = 4096;
	o.stride = 4096 + 64;
	h_worker_t *d = h_add(w, "d0", &o);
	kvb_block_list_t pb = H_LIST(3, 4, 5), db = H_LIST(20, 22, 21);
	h_fill(p0, 77, &pb, 1);
	h_fill(p1, 77, &pb, 1);
	for (int i = 0; i < 2; i++) {
		h_worker_t *p = i ? p1 : p0;
		ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
		ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	}
	const char *addrs[2] = {"p0", "p1"};
	kvb_pull_params_t pp = {"r", "x", addrs, 2, 2, &db, 1};
	ck_assert_int_eq(kvb_consumer_pull(d->conn, &pp, NULL), KVB_OK);
	h_run(w, NULL, NULL, 100);
	h_expect_finished(p0, "x", KVB_PRODUCER_SENT, KVB_OK);
	h_expect_finished(p1, "x", KVB_PRODUCER_SENT, KVB_OK);
	const kvb_finished_t *f = h_expect_finished(d, "r", KVB_CONSUMER_DONE, KVB_OK);
	ck_assert_uint_eq(f->bytes, 4 * 3 * 4096);
	h_expect(d, 77, &db, 1);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* One producer rank serves two consumer ranks (need = 2):
 * SENDING -> READY after the first, SENT after the second. */
START_TEST(test_tp_one_producer_two_consumers)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	o.total_kv_heads = 2;
	o.role = KVB_ROLE_PRODUCER;
	o.block_bytes = 4096;
	o.stride = 4096;
	h_worker_t *p = h_add(w, "p0", &o);
	o.role = KVB_ROLE_CONSUMER;
	o.tp_size = 2;
	o.block_bytes = 2048;
	o.stride = 2048 + 128;
	o.tp_rank = 0;
	h_worker_t *d0 = h_add(w, "d0", &o);
	o.tp_rank = 1;
	h_worker_t *d1 = h_add(w, "d1", &o);
	kvb_block_list_t pb = H_LIST(3, 4), db = H_LIST(9, 10);
	h_fill(p, 5, &pb, 1);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	const char *addrs[1] = {"p0"};
	kvb_pull_params_t pp = {"r0", "x", addrs, 1, 1, &db, 1};
	ck_assert_int_eq(kvb_consumer_pull(d0->conn, &pp, NULL), KVB_OK);
	h_state_wait_t sw = {d0, "r0", 0, false};
	h_run(w, h_pred_finished, &sw, 100);
	h_expect_finished(d0, "r0", KVB_CONSUMER_DONE, KVB_OK);
	h_run_for(w, 0.001);
	ck_assert_int_eq(pstate(p, "x"), KVB_PRODUCER_READY);
	pp.request_id = "r1";
	ck_assert_int_eq(kvb_consumer_pull(d1->conn, &pp, NULL), KVB_OK);
	h_run(w, NULL, NULL, 100);
	h_expect_finished(d1, "r1", KVB_CONSUMER_DONE, KVB_OK);
	const kvb_finished_t *f = h_expect_finished(p, "x", KVB_PRODUCER_SENT, KVB_OK);
	ck_assert_uint_eq(f->bytes, 4 * 2 * 4096);
	h_expect(d0, 5, &db, 1);
	h_expect(d1, 5, &db, 1);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

/* A rank that does not pair is refused with LAYOUT, and a layout that cannot
 * be paired (different block bytes) too; the producer keeps its blocks. */
START_TEST(test_pull_refused_layout)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	o.role = KVB_ROLE_PRODUCER;
	h_worker_t *p = h_add(w, "p0", &o);
	o.role = KVB_ROLE_CONSUMER;
	o.block_bytes = 2048;
	h_worker_t *d = h_add(w, "d0", &o);
	kvb_block_list_t pb = H_LIST(3), db = H_LIST(9);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	h_pull(d, "r", "x", "p0", &db, 1);
	h_state_wait_t sw = {d, "r", 0, false};
	h_run(w, h_pred_finished, &sw, 100);
	const kvb_finished_t *f = h_expect_finished(d, "r", KVB_CONSUMER_FAILED, KVB_ERR_LAYOUT);
	ck_assert_msg(strstr(f->reason, "4096") && strstr(f->reason, "2048"), "reason: %s", f->reason);
	ck_assert_int_eq(pstate(p, "x"), KVB_PRODUCER_READY);
	ck_assert_int_eq(kvb_producer_abort(p->conn, "x", NULL), KVB_OK);
	h_run(w, NULL, NULL, 100);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

Suite *kvb_suite_producer(void)
{
	Suite *s = suite_create("producer");
	TCase *tc = tcase_create("transitions");
	tcase_add_test(tc, test_basic_transfer);
	tcase_add_test(tc, test_tail_alignment);
	tcase_add_test(tc, test_placeholder_then_begin);
	tcase_add_test(tc, test_placeholder_timeout);
	tcase_add_test(tc, test_unprefilled_wait);
	tcase_add_test(tc, test_placeholder_cancelled);
	tcase_add_test(tc, test_prefill_pull_wait_timeout);
	tcase_add_test(tc, test_abort_prefill_refuses_pulls);
	tcase_add_test(tc, test_empty_pull_release);
	tcase_add_test(tc, test_lease_expiry_ready_and_late_pull);
	tcase_add_test(tc, test_abort_ready);
	tcase_add_test(tc, test_send_failure_back_to_ready);
	tcase_add_test(tc, test_lease_expiry_mid_send);
	tcase_add_test(tc, test_abort_sending);
	tcase_add_test(tc, test_tp_two_producers_one_consumer);
	tcase_add_test(tc, test_tp_one_producer_two_consumers);
	tcase_add_test(tc, test_pull_refused_layout);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);
	return s;
}
