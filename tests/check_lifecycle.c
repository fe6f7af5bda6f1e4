/*
 * Duplicate, late, unknown, out-of-order and malformed messages, and data
 * path faults (failed posts, NICs going down, stalled completions), all
 * through the fault backend.  Every test ends with the teardown invariant.
 */
#include "config.h"

#include <string.h>

#include "../src/core/kvb_wire.h"
#include "harness.h"
#include "suites.h"



typedef struct setup {
	h_world_t *w;
	h_worker_t *p, *d;
	kvb_block_list_t pb, db;
} setup_t;

static uint32_t p_ids[] = {10, 11, 12, 13, 14, 15};
static uint32_t d_ids[] = {40, 41, 42, 43, 44, 45};

/* A producer and a consumer, each optionally fault-wrapped, with one
 * transfer "x" ready on the producer and filled with seed 33. */
static void setup(setup_t *s, h_opts_t *o, bool fault_p, bool fault_d)
{
	s->w = h_world_new(1);
	o->role = KVB_ROLE_PRODUCER;
	o->fault = fault_p;
	s->p = h_add(s->w, "p0", o);
	o->role = KVB_ROLE_CONSUMER;
	o->fault = fault_d;
	s->d = h_add(s->w, "d0", o);
	s->pb = (kvb_block_list_t){p_ids, 6};
	s->db = (kvb_block_list_t){d_ids, 6};
	h_fill(s->p, 33, &s->pb, 1);
	ck_assert_int_eq(kvb_producer_begin(s->p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(s->p->conn, "x", &s->pb, 1, NULL), KVB_OK);
}

static void fault(h_worker_t *x, kvb_fault_kind_t kind, uint64_t nth, uint64_t count, uint64_t delay_ns)
{
	kvb_fault_rule_t r = {.kind = kind, .nth = nth, .count = count, .delay_ns = delay_ns};
	ck_assert_int_eq(kvb_fault_add(x->be, &r), KVB_OK);
}

static kvb_counters_t counters(h_worker_t *x)
{
	kvb_counters_t c;
	kvb_connector_counters(x->conn, &c);
	return c;
}

/* A duplicated PULL is ignored: one send, one transfer, bytes intact. */
START_TEST(test_duplicate_pull)
{
	setup_t s;
	h_opts_t o;
	h_opts_default(&o);
	setup(&s, &o, true, false);
	fault(s.p, KVB_FAULT_DUP_MSG, 1, 1, 0);
	h_pull(s.d, "r", "x", "p0", &s.db, 1);
	h_run(s.w, NULL, NULL, 100);
	h_expect_finished(s.d, "r", KVB_CONSUMER_DONE, KVB_OK);
	h_expect_finished(s.p, "x", KVB_PRODUCER_SENT, KVB_OK);
	kvb_counters_t pc = counters(s.p);
	ck_assert_uint_eq(pc.duplicate_pulls, 1);
	ck_assert_uint_eq(pc.transfers_ok, 1);
	ck_assert_uint_eq(pc.slices_posted, 4 * 6);
	h_expect(s.d, 33, &s.db, 1);
	h_invariants(s.w);
	h_world_free(s.w);
}
END_TEST

/* A duplicated DONE is stale: counted, ignored. */
START_TEST(test_duplicate_done)
{
	setup_t s;
	h_opts_t o;
	h_opts_default(&o);
	setup(&s, &o, false, true);
	fault(s.d, KVB_FAULT_DUP_MSG, 2, 1, 0); /* 1 = STARTED, 2 = DONE */
	h_pull(s.d, "r", "x", "p0", &s.db, 1);
	h_run(s.w, NULL, NULL, 100);
	h_expect_finished(s.d, "r", KVB_CONSUMER_DONE, KVB_OK);
	ck_assert_uint_eq(counters(s.d).unknown_messages, 1); /* the request is gone by then */
	h_expect(s.d, 33, &s.db, 1);
	h_invariants(s.w);
	h_world_free(s.w);
}
END_TEST

/* STARTED delivered after DONE (reordered): DONE wins, STARTED is ignored. */
START_TEST(test_reordered_notices)
{
	setup_t s;
	h_opts_t o;
	h_opts_default(&o);
	o.consumer_timeout_s = 5;
	setup(&s, &o, false, true);
	fault(s.d, KVB_FAULT_REORDER_MSG, 1, 1, 0);
	/* a second request keeps the consumer busy so the late STARTED finds it */
	h_pull(s.d, "r", "x", "p0", &s.db, 1);
	h_run(s.w, NULL, NULL, 100);
	h_expect_finished(s.d, "r", KVB_CONSUMER_DONE, KVB_OK);
	kvb_fault_stats_t fs;
	ck_assert_int_eq(kvb_fault_stats(s.d->be, &fs), KVB_OK);
	ck_assert_uint_eq(fs.msgs_reordered, 1);
	ck_assert_uint_eq(counters(s.d).unknown_messages, 1);
	h_expect(s.d, 33, &s.db, 1);
	h_invariants(s.w);
	h_world_free(s.w);
}
END_TEST

/* A lost DONE: the data landed but was never confirmed, so the consumer
 * fails at its deadline (never served unconfirmed) and the producer is SENT. */
START_TEST(test_dropped_done)
{
	setup_t s;
	h_opts_t o;
	h_opts_default(&o);
	o.consumer_timeout_s = 2;
	setup(&s, &o, false, true);
	fault(s.d, KVB_FAULT_DROP_MSG, 2, 1, 0);
	h_pull(s.d, "r", "x", "p0", &s.db, 1);
	h_run(s.w, NULL, NULL, 100);
	const kvb_finished_t *f = h_expect_finished(s.d, "r", KVB_CONSUMER_FAILED, KVB_ERR_TIMEOUT);
	ck_assert_uint_eq(f->end_ns, S(2));
	h_expect_finished(s.p, "x", KVB_PRODUCER_SENT, KVB_OK);
	h_forget(s.d, &s.db, 1);
	h_invariants(s.w);
	h_world_free(s.w);
}
END_TEST

/* A lost PULL: the consumer times out, the producer's lease expires. */
START_TEST(test_dropped_pull)
{
	setup_t s;
	h_opts_t o;
	h_opts_default(&o);
	o.lease_s = 3;
	o.consumer_timeout_s = 2;
	setup(&s, &o, true, false);
	fault(s.p, KVB_FAULT_DROP_MSG, 1, 1, 0);
	h_pull(s.d, "r", "x", "p0", &s.db, 1);
	h_run(s.w, NULL, NULL, 100);
	h_expect_finished(s.d, "r", KVB_CONSUMER_FAILED, KVB_ERR_TIMEOUT);
	const kvb_finished_t *f = h_expect_finished(s.p, "x", KVB_PRODUCER_EXPIRED, KVB_ERR_EXPIRED);
	ck_assert_uint_eq(f->end_ns, S(3));
	h_invariants(s.w);
	h_world_free(s.w);
}
END_TEST

/* A PULL delayed by 0.5 s still completes, 0.5 s later. */
START_TEST(test_delayed_pull)
{
	setup_t s;
	h_opts_t o;
	h_opts_default(&o);
	setup(&s, &o, true, false);
	fault(s.p, KVB_FAULT_DELAY_MSG, 1, 1, S(0.5));
	h_pull(s.d, "r", "x", "p0", &s.db, 1);
	h_run(s.w, NULL, NULL, 100);
	const kvb_finished_t *f = h_expect_finished(s.d, "r", KVB_CONSUMER_DONE, KVB_OK);
	ck_assert_uint_gt(f->end_ns, S(0.5));
	ck_assert_uint_lt(f->end_ns, S(0.51));
	h_expect(s.d, 33, &s.db, 1);
	h_invariants(s.w);
	h_world_free(s.w);
}
END_TEST

/* Raw frames from a peer that is not a connector: garbage, truncated,
 * unknown requests, bad layouts.  Each is counted and, where the ids can be
 * read, answered with an error; both connectors keep serving. */
START_TEST(test_malformed_and_unknown_messages)
{
	setup_t s;
	h_opts_t o;
	h_opts_default(&o);
	setup(&s, &o, false, false);
	kvb_backend_t *evil;
	ck_assert_int_eq(kvb_loop_open(s.w->fabric, "evil", NULL, &evil, NULL), KVB_OK);
	kvb_conn_t *cp = kvb_conn_alloc(evil), *cd = kvb_conn_alloc(evil);
	ck_assert_int_eq(evil->ops->conn_connect(evil, cp, "p0"), KVB_INPROGRESS);
	ck_assert_int_eq(evil->ops->conn_connect(evil, cd, "d0"), KVB_INPROGRESS);
	h_run_for(s.w, 0.001);
	kvb_event_t ev[16];
	int n = evil->ops->event_poll(evil, ev, 16);
	ck_assert_int_eq(n, 2);
	ck_assert_int_eq(ev[0].type, KVB_EV_CONN_UP);
	ck_assert_int_eq(ev[1].type, KVB_EV_CONN_UP);

	GByteArray *b = g_byte_array_new();
	/* 1: garbage */
	ck_assert_int_eq(evil->ops->msg_send(evil, cp, "hello", 5), KVB_OK);
	ck_assert_int_eq(evil->ops->msg_send(evil, cd, "hello world, long enough", 24), KVB_OK);
	/* 2: a PULL whose regions overlap, for the live transfer */
	kvb_region_t regs[4];
	kvb_rkey_t keys[4];
	memset(keys, 0, sizeof(keys));
	for (int i = 0; i < 4; i++)
		regs[i] = (kvb_region_t){0x1000, 4096, 4096, 64, i, 0, KVB_MEM_HOST, -1};
	kvb_wire_pull_t pull;
	memset(&pull, 0, sizeof(pull));
	strcpy(pull.transfer_id, "x");
	strcpy(pull.request_id, "evil-1");
	pull.tp_size = 1;
	pull.n_nics = 1;
	pull.n_regions = 4;
	pull.regions = regs;
	pull.rkeys = keys;
	pull.n_groups = 1;
	kvb_block_list_t g = {d_ids, 6};
	pull.groups = &g;
	ck_assert_int_eq(kvb_wire_encode_pull(b, &pull, NULL), KVB_OK);
	ck_assert_int_eq(evil->ops->msg_send(evil, cp, b->data, b->len), KVB_OK);
	/* 3: the same PULL, truncated (header patched to agree) */
	guint cut = b->len - 7;
	b->data[8] = (uint8_t)(cut - KVB_WIRE_HEADER_LEN);
	b->data[9] = (uint8_t)((cut - KVB_WIRE_HEADER_LEN) >> 8);
	ck_assert_int_eq(evil->ops->msg_send(evil, cp, b->data, cut), KVB_OK);
	/* 4: a PULL with sane regions but addresses the pull does not own:
	 *    wrong rkey -> the writes fail remotely, nothing of d0 is touched */
	for (int i = 0; i < 4; i++)
		regs[i] = (kvb_region_t){s.d->regions[i].base, s.d->regions[i].block_stride, 4096, 64, i, 0,
					 KVB_MEM_HOST, -1};
	strcpy(pull.request_id, "evil-2");
	g_byte_array_set_size(b, 0);
	ck_assert_int_eq(kvb_wire_encode_pull(b, &pull, NULL), KVB_OK);
	ck_assert_int_eq(evil->ops->msg_send(evil, cp, b->data, b->len), KVB_OK);
	/* 5: notices for requests nobody knows */
	kvb_wire_notice_t nt;
	memset(&nt, 0, sizeof(nt));
	nt.type = KVB_WIRE_DONE;
	strcpy(nt.transfer_id, "nope");
	strcpy(nt.request_id, "nope");
	g_byte_array_set_size(b, 0);
	ck_assert_int_eq(kvb_wire_encode_notice(b, &nt, NULL), KVB_OK);
	ck_assert_int_eq(evil->ops->msg_send(evil, cd, b->data, b->len), KVB_OK);
	nt.type = KVB_WIRE_CANCEL;
	g_byte_array_set_size(b, 0);
	ck_assert_int_eq(kvb_wire_encode_notice(b, &nt, NULL), KVB_OK);
	ck_assert_int_eq(evil->ops->msg_send(evil, cp, b->data, b->len), KVB_OK);
	h_run_for(s.w, 0.01);

	/* replies to evil: DONE errors for the pulls it could name */
	int dones = 0, layout = 0, proto = 0, range = 0;
	while ((n = evil->ops->event_poll(evil, ev, 16)) > 0) {
		for (int i = 0; i < n; i++) {
			if (ev[i].type != KVB_EV_MSG)
				continue;
			kvb_wire_notice_t r;
			if (kvb_wire_decode_notice(ev[i].data, ev[i].len, &r, NULL) != KVB_OK || r.type != KVB_WIRE_DONE)
				continue;
			dones++;
			layout += r.status == KVB_ERR_LAYOUT;
			proto += r.status == KVB_ERR_PROTOCOL;
			range += r.status == KVB_ERR_RANGE;
		}
		h_run_for(s.w, 0.001);
	}
	ck_assert_int_eq(layout, 1);  /* overlapping regions */
	ck_assert_int_eq(proto, 1);   /* truncated */
	ck_assert_int_eq(range, 1);   /* bad rkey: remote access refused */
	ck_assert_int_eq(dones, 3);
	kvb_counters_t pc = counters(s.p), dc = counters(s.d);
	ck_assert_uint_ge(pc.malformed_messages, 2);
	ck_assert_uint_eq(pc.unknown_messages, 1);
	ck_assert_uint_eq(dc.malformed_messages, 1);
	ck_assert_uint_eq(dc.unknown_messages, 1);
	/* evil-2's failed send left x READY: the real consumer is still served */
	ck_assert_int_eq(kvb_producer_state(s.p->conn, "x"), KVB_PRODUCER_READY);
	h_pull(s.d, "r", "x", "p0", &s.db, 1);
	h_run(s.w, NULL, NULL, 100);
	h_expect_finished(s.d, "r", KVB_CONSUMER_DONE, KVB_OK);
	h_expect_finished(s.p, "x", KVB_PRODUCER_SENT, KVB_OK);
	h_expect(s.d, 33, &s.db, 1);
	h_invariants(s.w);

	evil->ops->conn_close(evil, cp);
	evil->ops->conn_close(evil, cd);
	kvb_conn_free(cp);
	kvb_conn_free(cd);
	kvb_backend_close(evil);
	g_byte_array_unref(b);
	h_world_free(s.w);
}
END_TEST

/* The 3rd posted slice fails at completion; it is retried on the other NIC. */
START_TEST(test_failed_slice_retried)
{
	setup_t s;
	h_opts_t o;
	h_opts_default(&o);
	setup(&s, &o, true, false);
	kvb_fault_rule_t r = {.kind = KVB_FAULT_FAIL_POST, .nth = 3, .mode = KVB_FAULT_AT_COMPLETION};
	ck_assert_int_eq(kvb_fault_add(s.p->be, &r), KVB_OK);
	h_pull(s.d, "r", "x", "p0", &s.db, 1);
	h_run(s.w, NULL, NULL, 100);
	h_expect_finished(s.d, "r", KVB_CONSUMER_DONE, KVB_OK);
	kvb_counters_t pc = counters(s.p);
	ck_assert_uint_eq(pc.slices_failed, 1);
	ck_assert_uint_eq(pc.slices_retried, 1);
	ck_assert_uint_eq(pc.slices_posted, 4 * 6 + 1);
	ck_assert_uint_eq(pc.nic_down_events, 0);
	kvb_xfer_record_t *rec = &g_array_index(s.p->records, kvb_xfer_record_t, 0);
	ck_assert_uint_eq(rec->retries, 1);
	ck_assert_int_eq(rec->status, KVB_OK);
	h_expect(s.d, 33, &s.db, 1);
	h_invariants(s.w);
	h_world_free(s.w);
}
END_TEST

/* A post refused synchronously with no retries: transport failure. */
START_TEST(test_post_refused_no_retry)
{
	setup_t s;
	h_opts_t o;
	h_opts_default(&o);
	o.slice_retries = 0;
	setup(&s, &o, true, false);
	kvb_fault_rule_t r = {.kind = KVB_FAULT_FAIL_POST, .nth = 1, .mode = KVB_FAULT_AT_POST};
	ck_assert_int_eq(kvb_fault_add(s.p->be, &r), KVB_OK);
	h_pull(s.d, "r", "x", "p0", &s.db, 1);
	h_run(s.w, NULL, NULL, 100);
	const kvb_finished_t *f = h_expect_finished(s.d, "r", KVB_CONSUMER_FAILED, KVB_ERR_TRANSPORT);
	ck_assert_ptr_nonnull(strstr(f->reason, "post on NIC"));
	h_expect_finished(s.p, "x", KVB_PRODUCER_EXPIRED, KVB_ERR_EXPIRED);
	ck_assert_uint_eq(counters(s.p).fail_transport, 1);
	h_forget(s.d, &s.db, 1);
	h_invariants(s.w);
	h_world_free(s.w);
}
END_TEST

/* NIC 0 is down: its slices fail, are retried on NIC 1, NIC 0 is marked down
 * after the error threshold; after the cooldown it is used again. */
START_TEST(test_nic_down_failover)
{
	setup_t s;
	h_opts_t o;
	h_opts_default(&o);
	o.nic_cooldown_s = 1;
	setup(&s, &o, false, false);
	ck_assert_int_eq(kvb_loop_set_nic_up(s.p->loop_be, 0, false), KVB_OK);
	h_pull(s.d, "r", "x", "p0", &s.db, 1);
	h_run(s.w, NULL, NULL, 100);
	h_expect_finished(s.d, "r", KVB_CONSUMER_DONE, KVB_OK);
	kvb_counters_t pc = counters(s.p);
	/* all 24 slices were posted at once, round robin: the 12 on NIC 0 fail
	 * and are retried on NIC 1; NIC 0 is marked down at the third error */
	ck_assert_uint_eq(pc.nic_down_events, 1);
	ck_assert_uint_eq(pc.slices_failed, 12);
	ck_assert_uint_eq(pc.slices_retried, 12);
	uint64_t bytes = 4 * 6 * 4096;
	ck_assert_uint_eq(kvb_loop_nic_tx_bytes(s.p->loop_be, 1), bytes);
	h_expect(s.d, 33, &s.db, 1);

	/* NIC 0 is back; after the cooldown both NICs carry the next transfer */
	ck_assert_int_eq(kvb_loop_set_nic_up(s.p->loop_be, 0, true), KVB_OK);
	h_run_for(s.w, 1.5);
	uint32_t p2[] = {20, 21, 22, 23}, d2[] = {50, 51, 52, 53};
	kvb_block_list_t pb2 = {p2, 4}, db2 = {d2, 4};
	h_fill(s.p, 34, &pb2, 1);
	ck_assert_int_eq(kvb_producer_begin(s.p->conn, "y", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(s.p->conn, "y", &pb2, 1, NULL), KVB_OK);
	h_pull(s.d, "q", "y", "p0", &db2, 1);
	h_run(s.w, NULL, NULL, 100);
	h_expect_finished(s.d, "q", KVB_CONSUMER_DONE, KVB_OK);
	ck_assert_uint_gt(kvb_loop_nic_tx_bytes(s.p->loop_be, 0), 0);
	h_expect(s.d, 34, &db2, 1);
	h_invariants(s.w);
	h_world_free(s.w);
}
END_TEST

/* Every NIC down: the transfer fails with a transport error naming it. */
START_TEST(test_all_nics_down)
{
	setup_t s;
	h_opts_t o;
	h_opts_default(&o);
	o.lease_s = 1;
	setup(&s, &o, false, false);
	kvb_loop_set_nic_up(s.p->loop_be, 0, false);
	kvb_loop_set_nic_up(s.p->loop_be, 1, false);
	h_pull(s.d, "r", "x", "p0", &s.db, 1);
	h_run(s.w, NULL, NULL, 100);
	h_expect_finished(s.d, "r", KVB_CONSUMER_FAILED, KVB_ERR_TRANSPORT);
	h_expect_finished(s.p, "x", KVB_PRODUCER_EXPIRED, KVB_ERR_EXPIRED);
	ck_assert_uint_eq(counters(s.p).nic_down_events, 2);
	h_forget(s.d, &s.db, 1);
	h_invariants(s.w);
	h_world_free(s.w);
}
END_TEST

/* Completions stall past the lease: the request stays fenced (blocks held)
 * until they are released, then expires. */
START_TEST(test_stalled_completions_hold_fence)
{
	setup_t s;
	h_opts_t o;
	h_opts_default(&o);
	o.lease_s = 1;
	o.nic_queue_depth = 2;
	setup(&s, &o, true, false);
	fault(s.p, KVB_FAULT_STALL_COMPLETIONS, 1, 1000, 0);
	h_pull(s.d, "r", "x", "p0", &s.db, 1);
	h_run_for(s.w, 2);
	ck_assert_int_eq(kvb_producer_state(s.p->conn, "x"), KVB_PRODUCER_SENDING);
	ck_assert_uint_eq(counters(s.p).blocks_held, 6);
	ck_assert_uint_eq(counters(s.p).slices_posted, 4);
	ck_assert_int_eq(kvb_fault_release(s.p->be), KVB_OK);
	h_run(s.w, NULL, NULL, 100);
	h_expect_finished(s.p, "x", KVB_PRODUCER_EXPIRED, KVB_ERR_EXPIRED);
	h_expect_finished(s.d, "r", KVB_CONSUMER_FAILED, KVB_ERR_EXPIRED);
	ck_assert_uint_eq(counters(s.p).slices_posted, 4);
	h_forget(s.d, &s.db, 1);
	h_invariants(s.w);
	h_world_free(s.w);
}
END_TEST

/* A connect that fails is reported with the reason; the next one works. */
START_TEST(test_connect_failure_injected)
{
	setup_t s;
	h_opts_t o;
	h_opts_default(&o);
	setup(&s, &o, false, true);
	fault(s.d, KVB_FAULT_FAIL_CONNECT, 1, 1, 0);
	h_pull(s.d, "r", "x", "p0", &s.db, 1);
	h_run_for(s.w, 0.01);
	h_expect_finished(s.d, "r", KVB_CONSUMER_FAILED, KVB_ERR_PEER);
	h_pull(s.d, "r2", "x", "p0", &s.db, 1);
	h_run(s.w, NULL, NULL, 100);
	h_expect_finished(s.d, "r2", KVB_CONSUMER_DONE, KVB_OK);
	h_expect(s.d, 33, &s.db, 1);
	h_invariants(s.w);
	h_world_free(s.w);
}
END_TEST

Suite *kvb_suite_lifecycle(void)
{
	Suite *s = suite_create("lifecycle");
	TCase *tc = tcase_create("messages");
	tcase_add_test(tc, test_duplicate_pull);
	tcase_add_test(tc, test_duplicate_done);
	tcase_add_test(tc, test_reordered_notices);
	tcase_add_test(tc, test_dropped_done);
	tcase_add_test(tc, test_dropped_pull);
	tcase_add_test(tc, test_delayed_pull);
	tcase_add_test(tc, test_malformed_and_unknown_messages);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);
	tc = tcase_create("faults");
	tcase_add_test(tc, test_failed_slice_retried);
	tcase_add_test(tc, test_post_refused_no_retry);
	tcase_add_test(tc, test_nic_down_failover);
	tcase_add_test(tc, test_all_nics_down);
	tcase_add_test(tc, test_stalled_completions_hold_fence);
	tcase_add_test(tc, test_connect_failure_injected);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);
	return s;
}
