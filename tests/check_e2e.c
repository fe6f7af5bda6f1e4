/*
 * End to end over the loop backend: a realistic model layout, randomized
 * workloads with fixed seeds (API calls in random orders, overlapping
 * requests, tail alignment, several groups), every TP pairing, NIC policies
 * and striping.  Every byte is verified; every test ends with the teardown
 * invariant.
 */
#include "config.h"

#include <string.h>

#include "harness.h"
#include "suites.h"

/* Qwen2.5-0.5B: 24 layers, 2 KV heads of 64, bf16, 16-token blocks. */
START_TEST(test_qwen_layout)
{
	const kvb_model_t *m = kvb_model_find("qwen2.5-0.5b");
	ck_assert_ptr_nonnull(m);
	kvb_region_t regs[24];
	uint64_t span = kvb_model_layout(m, 1, 16, 64, 0x100000, regs, NULL);
	ck_assert_uint_eq(span, 24ull * 64 * 8192);
	h_world_t *w = h_world_new(3);
	h_opts_t o;
	h_opts_default(&o);
	o.layers = m->layers;
	o.num_blocks = 64;
	o.block_bytes = regs[0].block_bytes;
	o.stride = regs[0].block_stride;
	o.slice_size = 65536;
	o.role = KVB_ROLE_PRODUCER;
	h_worker_t *p = h_add(w, "prefill", &o);
	o.role = KVB_ROLE_CONSUMER;
	h_worker_t *d = h_add(w, "decode", &o);
	/* 4 requests of 8 blocks (128 tokens): 8 x 24 x 8 KiB = 1.5 MiB each */
	for (uint32_t r = 0; r < 4; r++) {
		uint32_t pi[8], di[8];
		for (uint32_t k = 0; k < 8; k++) {
			pi[k] = r * 8 + k;
			di[k] = 63 - (r * 8 + k);
		}
		kvb_block_list_t pb = {pi, 8}, db = {di, 8};
		char tid[16], rid[16];
		snprintf(tid, sizeof(tid), "x%u", r);
		snprintf(rid, sizeof(rid), "r%u", r);
		h_fill(p, 100 + r, &pb, 1);
		h_expect(d, 100 + r, &db, 1);
		ck_assert_int_eq(kvb_producer_begin(p->conn, tid, NULL), KVB_OK);
		ck_assert_int_eq(kvb_producer_ready(p->conn, tid, &pb, 1, NULL), KVB_OK);
		h_pull(d, rid, tid, "prefill", &db, 1);
	}
	h_run(w, NULL, NULL, 100);
	ck_assert_uint_eq(d->finished->len, 4);
	for (guint i = 0; i < d->finished->len; i++) {
		kvb_finished_t *f = &g_array_index(d->finished, kvb_finished_t, i);
		ck_assert_int_eq(f->status, KVB_OK);
		ck_assert_uint_eq(f->bytes, 8ull * 24 * 8192);
	}
	h_invariants(w);
	h_world_free(w);
}
END_TEST

typedef struct req_plan {
	char tid[24], rid[24];
	uint32_t p, d;
	uint32_t order;  /* 0: pull, begin, ready; 1: begin, pull, ready; 2: begin, ready, pull */
	uint32_t pi[2][12], di[2][12];
	kvb_block_list_t pb[2], db[2];
} req_plan_t;

/* Random requests between 2 producers and 2 consumers with 2 KV groups:
 * random lengths (consumer lists shorter: tail alignment), random orders of
 * the API calls, random gaps; everything must arrive byte-exact. */
static void random_workload(uint64_t seed)
{
	GRand *rng = g_rand_new_with_seed((guint32)seed);
	h_world_t *w = h_world_new(seed);
	h_opts_t o;
	h_opts_default(&o);
	o.layers = 6;
	o.groups = 2;
	o.num_blocks = 160;
	o.block_bytes = 1024 + 8 * (uint64_t)g_rand_int_range(rng, 0, 64);
	o.stride = o.block_bytes + 8 * (uint64_t)g_rand_int_range(rng, 0, 16);
	o.slice_size = 4096;
	o.n_nics = (uint32_t)g_rand_int_range(rng, 1, 5);
	static const char *policies[] = {"round_robin", "random", "least_loaded"};
	o.policy = policies[g_rand_int_range(rng, 0, 3)];
	h_worker_t *P[2], *D[2];
	o.role = KVB_ROLE_PRODUCER;
	P[0] = h_add(w, "p0", &o);
	P[1] = h_add(w, "p1", &o);
	o.role = KVB_ROLE_CONSUMER;
	D[0] = h_add(w, "d0", &o);
	D[1] = h_add(w, "d1", &o);
	uint32_t next_p[2] = {0, 0}, next_d[2] = {0, 0};
	enum { N = 12 };
	req_plan_t *plans = g_new0(req_plan_t, N);
	for (uint32_t i = 0; i < N; i++) {
		req_plan_t *q = &plans[i];
		snprintf(q->tid, sizeof(q->tid), "xfer-%u", i);
		snprintf(q->rid, sizeof(q->rid), "req-%u", i);
		q->p = (uint32_t)g_rand_int_range(rng, 0, 2);
		q->d = (uint32_t)g_rand_int_range(rng, 0, 2);
		q->order = (uint32_t)g_rand_int_range(rng, 0, 3);
		for (uint32_t g = 0; g < 2; g++) {
			uint32_t np = (uint32_t)g_rand_int_range(rng, 0, 7);
			uint32_t nd = np ? (uint32_t)g_rand_int_range(rng, 0, (gint32)np + 1) : 0;
			/* distinct blocks per worker; shuffled runs so some coalesce */
			bool reversed = g_rand_int_range(rng, 0, 4) == 0;
			for (uint32_t k = 0; k < np; k++)
				q->pi[g][k] = next_p[q->p] + (reversed ? np - 1 - k : k);
			next_p[q->p] += np;
			for (uint32_t k = 0; k < nd; k++)
				q->di[g][k] = next_d[q->d] + k;
			next_d[q->d] += nd;
			q->pb[g] = (kvb_block_list_t){q->pi[g], np};
			q->db[g] = (kvb_block_list_t){q->di[g], nd};
		}
		ck_assert_uint_le(next_p[q->p], o.num_blocks);
		ck_assert_uint_le(next_d[q->d], o.num_blocks);
	}
	for (uint32_t i = 0; i < N; i++) {
		req_plan_t *q = &plans[i];
		h_worker_t *p = P[q->p], *d = D[q->d];
		h_fill(p, 1000 + i, q->pb, 2);
		h_expect(d, 1000 + i, q->db, 2);
		const char *addr = p->name;
		kvb_pull_params_t pp = {q->rid, q->tid, &addr, 1, 0, q->db, 2};
		for (int step = 0; step < 3; step++) {
			int what = q->order == 0 ? (int[]){2, 0, 1}[step]
				 : q->order == 1 ? (int[]){0, 2, 1}[step] : step;
			if (what == 0)
				ck_assert_int_eq(kvb_producer_begin(p->conn, q->tid, NULL), KVB_OK);
			else if (what == 1)
				ck_assert_int_eq(kvb_producer_ready(p->conn, q->tid, q->pb, 2, NULL), KVB_OK);
			else
				ck_assert_int_eq(kvb_consumer_pull(d->conn, &pp, NULL), KVB_OK);
			h_run_for(w, g_rand_double_range(rng, 0, 0.0002));
		}
	}
	h_run(w, NULL, NULL, 100);
	for (uint32_t i = 0; i < N; i++) {
		req_plan_t *q = &plans[i];
		const kvb_finished_t *f = h_finished(D[q->d], q->rid);
		ck_assert_msg(f && f->status == KVB_OK, "seed %" G_GUINT64_FORMAT " request %u: %s", seed, i,
			      f ? f->reason : "not finished");
		f = h_finished(P[q->p], q->tid);
		ck_assert_msg(f && f->state == KVB_PRODUCER_SENT, "seed %" G_GUINT64_FORMAT " transfer %u", seed, i);
	}
	h_invariants(w);
	h_world_free(w);
	g_free(plans);
	g_rand_free(rng);
}

START_TEST(test_random_workloads)
{
	random_workload(1000 + (uint64_t)_i);
}
END_TEST

/* Every producer/consumer TP pairing with 1..8 KV heads: each consumer rank
 * pulls from its target producer ranks and ends up with exactly its heads. */
static void tp_case(uint32_t ptp, uint32_t dtp, uint32_t heads)
{
	h_world_t *w = h_world_new(ptp * 100 + dtp * 10 + heads);
	h_opts_t o;
	h_opts_default(&o);
	o.layers = 2;
	o.num_blocks = 16;
	o.total_kv_heads = heads;
	o.slice_size = 4096;
	h_worker_t *P[8], *D[8];
	kvb_block_list_t pb = H_LIST(2, 3, 5), db = H_LIST(7, 8, 9);
	o.role = KVB_ROLE_PRODUCER;
	o.tp_size = ptp;
	o.block_bytes = (heads >= ptp ? heads / ptp : 1) * 512;
	o.stride = o.block_bytes + 64;
	for (uint32_t r = 0; r < ptp; r++) {
		char name[16];
		snprintf(name, sizeof(name), "p%u", r);
		o.tp_rank = r;
		P[r] = h_add(w, name, &o);
		h_fill(P[r], 42, &pb, 1);
		ck_assert_int_eq(kvb_producer_begin(P[r]->conn, "x", NULL), KVB_OK);
		ck_assert_int_eq(kvb_producer_ready(P[r]->conn, "x", &pb, 1, NULL), KVB_OK);
	}
	o.role = KVB_ROLE_CONSUMER;
	o.tp_size = dtp;
	o.block_bytes = (heads >= dtp ? heads / dtp : 1) * 512;
	o.stride = o.block_bytes + 64;
	for (uint32_t r = 0; r < dtp; r++) {
		char name[16], rid[16];
		snprintf(name, sizeof(name), "d%u", r);
		snprintf(rid, sizeof(rid), "r%u", r);
		o.tp_rank = r;
		D[r] = h_add(w, name, &o);
		uint32_t targets[8], n = 0;
		ck_assert_int_eq(kvb_tp_targets(dtp, r, ptp, targets, &n, NULL), KVB_OK);
		const char *addrs[8];
		char names[8][8];
		for (uint32_t k = 0; k < n; k++) {
			snprintf(names[k], sizeof(names[k]), "p%u", targets[k]);
			addrs[k] = names[k];
		}
		kvb_pull_params_t pp = {rid, "x", addrs, n, ptp, &db, 1};
		ck_assert_int_eq(kvb_consumer_pull(D[r]->conn, &pp, NULL), KVB_OK);
		h_expect(D[r], 42, &db, 1);
	}
	h_run(w, NULL, NULL, 100);
	for (uint32_t r = 0; r < dtp; r++) {
		char rid[16];
		snprintf(rid, sizeof(rid), "r%u", r);
		const kvb_finished_t *f = h_finished(D[r], rid);
		ck_assert_msg(f && f->status == KVB_OK, "P%u D%u H%u: consumer %u: %s", ptp, dtp, heads, r,
			      f ? f->reason : "not finished");
	}
	for (uint32_t r = 0; r < ptp; r++) {
		const kvb_finished_t *f = h_finished(P[r], "x");
		ck_assert_msg(f && f->state == KVB_PRODUCER_SENT, "P%u D%u H%u: producer %u not sent", ptp, dtp,
			      heads, r);
	}
	h_invariants(w);
	h_world_free(w);
}

START_TEST(test_tp_matrix)
{
	static const uint32_t sizes[] = {1, 2, 4, 8};
	static const uint32_t heads[] = {1, 2, 8};
	for (int a = 0; a < 4; a++)
		for (int b = 0; b < 4; b++)
			for (int h = 0; h < 3; h++)
				tp_case(sizes[a], sizes[b], heads[h]);
}
END_TEST

static h_worker_t *policy_run(h_world_t *w, const char *policy, uint32_t nics, uint64_t *end_ns)
{
	h_opts_t o;
	h_opts_default(&o);
	o.n_nics = nics;
	o.policy = policy;
	o.nic_Bps = 1000000000; /* 1 GB/s per NIC */
	o.role = KVB_ROLE_PRODUCER;
	h_worker_t *p = h_add(w, "p0", &o);
	o.role = KVB_ROLE_CONSUMER;
	h_worker_t *d = h_add(w, "d0", &o);
	kvb_block_list_t pb = H_LIST(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
	kvb_block_list_t db = H_LIST(16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31);
	h_fill(p, 9, &pb, 1);
	h_expect(d, 9, &db, 1);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "x", NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, "x", &pb, 1, NULL), KVB_OK);
	h_pull(d, "r", "x", "p0", &db, 1);
	h_run(w, NULL, NULL, 100);
	const kvb_finished_t *f = h_finished(d, "r");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(f->status, KVB_OK);
	*end_ns = g_array_index(p->records, kvb_xfer_record_t, 0).end_ns -
		  g_array_index(p->records, kvb_xfer_record_t, 0).post_ns;
	return p;
}

/* Each built-in policy spreads 64 slices over 4 NICs; round robin exactly. */
START_TEST(test_policies_spread)
{
	static const char *names[] = {"round_robin", "random", "least_loaded", "topology"};
	for (int i = 0; i < 4; i++) {
		h_world_t *w = h_world_new(5);
		uint64_t ns;
		h_worker_t *p = policy_run(w, names[i], 4, &ns);
		uint64_t total = 4 * 16 * 4096;
		for (uint32_t n = 0; n < 4; n++) {
			uint64_t tx = kvb_loop_nic_tx_bytes(p->loop_be, n);
			if (i == 0)
				ck_assert_uint_eq(tx, total / 4);
			else
				ck_assert_msg(tx >= total / 10, "%s: NIC %u carried %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT,
					      names[i], n, tx, total);
		}
		h_invariants(w);
		h_world_free(w);
	}
}
END_TEST

/* Striping: two NICs move the same request in half the (virtual) time. */
START_TEST(test_striping_speedup)
{
	uint64_t t1, t2, t4;
	h_world_t *w = h_world_new(1);
	policy_run(w, "round_robin", 1, &t1);
	h_invariants(w);
	h_world_free(w);
	w = h_world_new(1);
	policy_run(w, "round_robin", 2, &t2);
	h_invariants(w);
	h_world_free(w);
	w = h_world_new(1);
	policy_run(w, "least_loaded", 4, &t4);
	h_invariants(w);
	h_world_free(w);
	double r2 = (double)t1 / (double)t2, r4 = (double)t1 / (double)t4;
	ck_assert_msg(r2 > 1.95 && r2 < 2.05, "2 NICs: speedup %.3f", r2);
	ck_assert_msg(r4 > 3.8 && r4 < 4.2, "4 NICs: speedup %.3f", r4);
}
END_TEST

Suite *kvb_suite_e2e(void)
{
	Suite *s = suite_create("e2e");
	TCase *tc = tcase_create("loop");
	tcase_add_test(tc, test_qwen_layout);
	tcase_add_loop_test(tc, test_random_workloads, 0, 6);
	tcase_add_test(tc, test_tp_matrix);
	tcase_add_test(tc, test_policies_spread);
	tcase_add_test(tc, test_striping_speedup);
	tcase_set_timeout(tc, 300);
	suite_add_tcase(s, tc);
	return s;
}
