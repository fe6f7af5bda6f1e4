/*
 * Tensor parallelism: vLLM's tp_ratio and handshake_target_ranks, pairing
 * symmetry, the per-head byte plan (against vLLM's offset rules, on known
 * head counts with replication on either side), and a reassembly check that
 * every consumer rank ends up with exactly its heads, each byte written once.
 */
#include "config.h"

#include <stdint.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/layout.h>

#include "suites.h"

#define ck_assert_err(rc, err, want, needle)                                                     \
	do {                                                                                     \
		ck_assert_int_eq((rc), (want));                                                  \
		ck_assert_int_eq((err).code, (want));                                            \
		ck_assert_msg((err).msg[0] != '\0', "empty error message");                     \
		ck_assert_msg(strstr((err).msg, (needle)) != NULL, "message '%s' lacks '%s'",     \
			      (err).msg, (needle));                                              \
	} while (0)

static const uint32_t tp_sizes[] = {1, 2, 4, 8};

static kvb_tp_side_t side(uint32_t tp, uint32_t rank, uint64_t bytes)
{
	return (kvb_tp_side_t){.tp_size = tp, .tp_rank = rank, .kv_block_bytes = bytes};
}

/* Plan for (p, d), asserting success. */
static kvb_tp_plan_t plan_ok(uint32_t p_tp, uint32_t p, uint64_t p_bytes, uint32_t d_tp, uint32_t d,
			     uint64_t d_bytes, uint32_t heads)
{
	kvb_tp_side_t ps = side(p_tp, p, p_bytes), ds = side(d_tp, d, d_bytes);
	kvb_tp_plan_t plan;
	kvb_err_t err;
	int rc = kvb_tp_plan(&ps, &ds, heads, &plan, &err);
	ck_assert_msg(rc == KVB_OK, "plan P%u/%u D%u/%u heads %u: %s", p, p_tp, d, d_tp, heads,
		      err.msg);
	return plan;
}

static void assert_plan(kvb_tp_plan_t plan, bool send, uint64_t src_off, uint64_t dst_off,
			uint64_t len)
{
	ck_assert_int_eq(plan.send, send);
	if (!send) {
		ck_assert_uint_eq(plan.len, 0);
		return;
	}
	ck_assert_uint_eq(plan.src_off, src_off);
	ck_assert_uint_eq(plan.dst_off, dst_off);
	ck_assert_uint_eq(plan.len, len);
}

START_TEST(test_tp_ratio)
{
	kvb_err_t err;
	int32_t ratio = 0;

	ck_assert_int_eq(kvb_tp_ratio(8, 2, &ratio, &err), KVB_OK);
	ck_assert_int_eq(ratio, 4);
	ck_assert_int_eq(kvb_tp_ratio(2, 8, &ratio, &err), KVB_OK);
	ck_assert_int_eq(ratio, -4);
	ck_assert_int_eq(kvb_tp_ratio(4, 4, &ratio, &err), KVB_OK);
	ck_assert_int_eq(ratio, 1);
	ck_assert_int_eq(kvb_tp_ratio(1, 1, &ratio, NULL), KVB_OK);
	ck_assert_int_eq(ratio, 1);
	ratio = 42;
	ck_assert_err(kvb_tp_ratio(3, 2, &ratio, &err), err, KVB_ERR_LAYOUT, "3");
	ck_assert_int_eq(ratio, 42);
	ck_assert_err(kvb_tp_ratio(4, 6, &ratio, &err), err, KVB_ERR_LAYOUT, "6");
	ck_assert_err(kvb_tp_ratio(0, 2, &ratio, &err), err, KVB_ERR_INVALID, "0");
	ck_assert_err(kvb_tp_ratio(UINT32_MAX - 1, 1, &ratio, &err), err, KVB_ERR_INVALID,
		      "4294967294");
}
END_TEST

START_TEST(test_tp_targets)
{
	kvb_err_t err;
	uint32_t ranks[8], n = 0;

	/* D_tp 2 < P_tp 8: D rank 1 pulls from P ranks 4..7 */
	ck_assert_int_eq(kvb_tp_targets(2, 1, 8, ranks, &n, &err), KVB_OK);
	ck_assert_uint_eq(n, 4);
	for (uint32_t i = 0; i < 4; i++)
		ck_assert_uint_eq(ranks[i], 4 + i);
	/* P_tp 8 > D_tp 2: P rank 5 serves D rank 1 */
	ck_assert_int_eq(kvb_tp_targets(8, 5, 2, ranks, &n, &err), KVB_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_uint_eq(ranks[0], 1);
	ck_assert_int_eq(kvb_tp_targets(4, 3, 4, ranks, &n, &err), KVB_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_uint_eq(ranks[0], 3);
	ck_assert_int_eq(kvb_tp_targets(1, 0, 8, ranks, &n, &err), KVB_OK);
	ck_assert_uint_eq(n, 8);
	ck_assert_uint_eq(ranks[7], 7);

	n = 99;
	ck_assert_err(kvb_tp_targets(4, 4, 2, ranks, &n, &err), err, KVB_ERR_INVALID, "rank 4");
	ck_assert_uint_eq(n, 99);
	ck_assert_err(kvb_tp_targets(4, 9, 8, ranks, &n, &err), err, KVB_ERR_INVALID, "9");
	ck_assert_err(kvb_tp_targets(6, 0, 4, ranks, &n, &err), err, KVB_ERR_LAYOUT, "6");
	ck_assert_err(kvb_tp_targets(0, 0, 4, ranks, &n, &err), err, KVB_ERR_INVALID, "0");
	ck_assert_err(kvb_tp_targets(2, 0, 4, NULL, &n, &err), err, KVB_ERR_INVALID, "NULL");
}
END_TEST

/* d in targets(P side of p) <=> p in targets(D side of d), and kvb_tp_pairs
 * agrees with both. */
START_TEST(test_tp_symmetry)
{
	kvb_err_t err;

	for (size_t a = 0; a < G_N_ELEMENTS(tp_sizes); a++) {
		for (size_t b = 0; b < G_N_ELEMENTS(tp_sizes); b++) {
			uint32_t p_tp = tp_sizes[a], d_tp = tp_sizes[b];
			uint32_t pairs = 0;
			for (uint32_t p = 0; p < p_tp; p++) {
				for (uint32_t d = 0; d < d_tp; d++) {
					uint32_t pr[8], dr[8], np = 0, nd = 0;
					bool p_has_d = false, d_has_p = false;
					ck_assert_int_eq(kvb_tp_targets(p_tp, p, d_tp, pr, &np, &err),
							 KVB_OK);
					ck_assert_int_eq(kvb_tp_targets(d_tp, d, p_tp, dr, &nd, &err),
							 KVB_OK);
					ck_assert_uint_eq(np, d_tp > p_tp ? d_tp / p_tp : 1);
					ck_assert_uint_eq(nd, p_tp > d_tp ? p_tp / d_tp : 1);
					for (uint32_t i = 0; i < np; i++) {
						ck_assert_uint_lt(pr[i], d_tp);
						p_has_d |= pr[i] == d;
					}
					for (uint32_t i = 0; i < nd; i++) {
						ck_assert_uint_lt(dr[i], p_tp);
						d_has_p |= dr[i] == p;
					}
					ck_assert_msg(p_has_d == d_has_p, "P%u/%u D%u/%u asymmetric", p,
						      p_tp, d, d_tp);
					ck_assert_int_eq(kvb_tp_pairs(p_tp, p, d_tp, d), p_has_d);
					pairs += p_has_d;
				}
			}
			/* every rank of the larger side pairs with exactly one */
			ck_assert_uint_eq(pairs, p_tp > d_tp ? p_tp : d_tp);
		}
	}
	ck_assert(!kvb_tp_pairs(4, 4, 2, 0));
	ck_assert(!kvb_tp_pairs(4, 0, 2, 2));
	ck_assert(!kvb_tp_pairs(3, 0, 2, 0));
	ck_assert(!kvb_tp_pairs(0, 0, 2, 0));
}
END_TEST

/* With heads unknown (or at least max tp, no replication) the plan is vLLM's:
 * equal TP -> whole block; P_tp > D_tp (r) -> dst_off = (p % r) * p_bytes,
 * len = p_bytes; P_tp < D_tp (k) -> src_off = (d % k) * d_bytes, len = d_bytes. */
START_TEST(test_tp_plan_vllm_rules)
{
	const uint64_t bph = 96;
	const uint32_t heads_list[] = {0, 8, 16};

	for (size_t hi = 0; hi < G_N_ELEMENTS(heads_list); hi++) {
		for (size_t a = 0; a < G_N_ELEMENTS(tp_sizes); a++) {
			for (size_t b = 0; b < G_N_ELEMENTS(tp_sizes); b++) {
				uint32_t p_tp = tp_sizes[a], d_tp = tp_sizes[b];
				uint32_t heads = heads_list[hi] ? heads_list[hi]
							       : (p_tp > d_tp ? p_tp : d_tp);
				uint64_t p_bytes = bph * heads / p_tp, d_bytes = bph * heads / d_tp;
				for (uint32_t p = 0; p < p_tp; p++) {
					for (uint32_t d = 0; d < d_tp; d++) {
						kvb_tp_plan_t plan = plan_ok(p_tp, p, p_bytes, d_tp, d,
									     d_bytes, heads_list[hi]);
						if (!kvb_tp_pairs(p_tp, p, d_tp, d)) {
							assert_plan(plan, false, 0, 0, 0);
						} else if (p_tp == d_tp) {
							assert_plan(plan, true, 0, 0, p_bytes);
							ck_assert_uint_eq(p_bytes, d_bytes);
						} else if (p_tp > d_tp) {
							uint32_t r = p_tp / d_tp;
							assert_plan(plan, true, 0, (p % r) * p_bytes,
								    p_bytes);
							ck_assert_uint_eq(d_bytes, p_bytes * r);
						} else {
							uint32_t k = d_tp / p_tp;
							assert_plan(plan, true, (d % k) * d_bytes, 0,
								    d_bytes);
							ck_assert_uint_eq(p_bytes, d_bytes * k);
						}
					}
				}
			}
		}
	}
}
END_TEST

START_TEST(test_tp_plan_known_heads)
{
	const uint64_t bph = 1024;

	/* 8 kv heads, P_tp 8, D_tp 2: P rank p holds head p, D rank d heads 4d..4d+3 */
	for (uint32_t p = 0; p < 8; p++) {
		for (uint32_t d = 0; d < 2; d++) {
			kvb_tp_plan_t plan = plan_ok(8, p, bph, 2, d, 4 * bph, 8);
			if (p / 4 == d)
				assert_plan(plan, true, 0, (p % 4) * bph, bph);
			else
				assert_plan(plan, false, 0, 0, 0);
		}
	}

	/* 2 kv heads, P_tp 8 (4 replicas per head), D_tp 2: only P0 and P4 send,
	 * each its whole block */
	for (uint32_t p = 0; p < 8; p++) {
		for (uint32_t d = 0; d < 2; d++) {
			kvb_tp_plan_t plan = plan_ok(8, p, bph, 2, d, bph, 2);
			if (p == 4 * d)
				assert_plan(plan, true, 0, 0, bph);
			else
				assert_plan(plan, false, 0, 0, 0);
		}
	}

	/* 2 kv heads, P_tp 8 replicated, D_tp 1 (holds both): P0 sends head 0
	 * at offset 0, P4 head 1 at offset bph */
	for (uint32_t p = 0; p < 8; p++) {
		kvb_tp_plan_t plan = plan_ok(8, p, bph, 1, 0, 2 * bph, 2);
		if (p == 0)
			assert_plan(plan, true, 0, 0, bph);
		else if (p == 4)
			assert_plan(plan, true, 0, bph, bph);
		else
			assert_plan(plan, false, 0, 0, 0);
	}

	/* consumer replicated: 2 heads, P_tp 1, D_tp 4: D rank d holds head d / 2
	 * and takes it from P's block at (d / 2) * bph */
	for (uint32_t d = 0; d < 4; d++)
		assert_plan(plan_ok(1, 0, 2 * bph, 4, d, bph, 2), true, (d / 2) * bph, 0, bph);

	/* both replicated, P_tp < D_tp: 1 head (MLA-like), P_tp 2, D_tp 4: each
	 * D rank gets the whole block from its one paired P rank */
	for (uint32_t p = 0; p < 2; p++)
		for (uint32_t d = 0; d < 4; d++)
			assert_plan(plan_ok(2, p, bph, 4, d, bph, 1), d / 2 == p, 0, 0, bph);

	/* both replicated, P_tp > D_tp: 1 head, P_tp 4, D_tp 2: vLLM's p % r == 0 */
	for (uint32_t p = 0; p < 4; p++)
		for (uint32_t d = 0; d < 2; d++)
			assert_plan(plan_ok(4, p, bph, 2, d, bph, 1), p == 2 * d, 0, 0, bph);

	/* 4 heads, P_tp 8 (2 replicas per head), D_tp 2: D0 (heads 0, 1) is fed
	 * by P0 (head 0) and P2 (head 1); P1 and P3 are replicas */
	assert_plan(plan_ok(8, 0, bph, 2, 0, 2 * bph, 4), true, 0, 0, bph);
	assert_plan(plan_ok(8, 1, bph, 2, 0, 2 * bph, 4), false, 0, 0, 0);
	assert_plan(plan_ok(8, 2, bph, 2, 0, 2 * bph, 4), true, 0, bph, bph);
	assert_plan(plan_ok(8, 3, bph, 2, 0, 2 * bph, 4), false, 0, 0, 0);
	assert_plan(plan_ok(8, 6, bph, 2, 1, 2 * bph, 4), true, 0, bph, bph);
}
END_TEST

/*
 * Every (p, d) pair, paired or not, moves bytes tagged by (head, byte) from
 * P rank blocks into D rank blocks; afterwards each D block holds exactly its
 * heads' bytes and every byte was written once (replicas do not double-write,
 * no consumer is starved).
 */
static uint8_t head_tag(uint64_t head, uint64_t byte)
{
	return (uint8_t)(1 + head * 37 + byte * 11);
}

START_TEST(test_tp_reassembly)
{
	const uint32_t heads_list[] = {1, 2, 4, 8};
	const uint64_t bph = 5;
	uint32_t combos = 0;

	for (size_t hi = 0; hi < G_N_ELEMENTS(heads_list); hi++) {
		uint32_t H = heads_list[hi];
		for (size_t a = 0; a < G_N_ELEMENTS(tp_sizes); a++) {
			for (size_t b = 0; b < G_N_ELEMENTS(tp_sizes); b++) {
				uint32_t p_tp = tp_sizes[a], d_tp = tp_sizes[b];
				uint32_t p_heads = p_tp >= H ? 1 : H / p_tp;
				uint32_t d_heads = d_tp >= H ? 1 : H / d_tp;
				uint64_t p_bytes = p_heads * bph, d_bytes = d_heads * bph;
				uint8_t src[8][8 * 5], dst[8][8 * 5], writes[8][8 * 5];
				uint32_t senders = 0;

				memset(dst, 0, sizeof(dst));
				memset(writes, 0, sizeof(writes));
				for (uint32_t p = 0; p < p_tp; p++) {
					uint64_t first = (uint64_t)p * H / p_tp;
					for (uint64_t i = 0; i < p_bytes; i++)
						src[p][i] = head_tag(first + i / bph, i % bph);
				}
				for (uint32_t p = 0; p < p_tp; p++) {
					for (uint32_t d = 0; d < d_tp; d++) {
						kvb_tp_plan_t plan =
							plan_ok(p_tp, p, p_bytes, d_tp, d, d_bytes, H);
						if (!plan.send)
							continue;
						ck_assert(kvb_tp_pairs(p_tp, p, d_tp, d));
						ck_assert_uint_gt(plan.len, 0);
						ck_assert_uint_le(plan.src_off + plan.len, p_bytes);
						ck_assert_uint_le(plan.dst_off + plan.len, d_bytes);
						for (uint64_t i = 0; i < plan.len; i++) {
							dst[d][plan.dst_off + i] = src[p][plan.src_off + i];
							writes[d][plan.dst_off + i]++;
						}
						senders++;
					}
				}
				for (uint32_t d = 0; d < d_tp; d++) {
					uint64_t first = (uint64_t)d * H / d_tp;
					for (uint64_t i = 0; i < d_bytes; i++) {
						ck_assert_msg(writes[d][i] == 1,
							      "H %u P_tp %u D_tp %u: D%u byte %u written %u times",
							      H, p_tp, d_tp, d, (unsigned)i, writes[d][i]);
						ck_assert_uint_eq(dst[d][i],
								  head_tag(first + i / bph, i % bph));
					}
				}
				/* one sender per (consumer rank, producer head range) */
				ck_assert_uint_ge(senders, d_tp);
				combos++;
			}
		}
	}
	ck_assert_uint_eq(combos, 64);
}
END_TEST

START_TEST(test_tp_plan_errors)
{
	kvb_err_t err;
	kvb_tp_plan_t plan;
	kvb_tp_side_t p, d;

	/* TP sizes that do not divide each other */
	p = side(3, 0, 1024);
	d = side(2, 0, 1024);
	ck_assert_err(kvb_tp_plan(&p, &d, 0, &plan, &err), err, KVB_ERR_LAYOUT, "3");
	ck_assert_int_eq(plan.send, false);
	/* heads and a TP size that do not divide each other */
	p = side(4, 0, 1024);
	d = side(2, 0, 2048);
	ck_assert_err(kvb_tp_plan(&p, &d, 6, &plan, &err), err, KVB_ERR_LAYOUT, "6");
	ck_assert_ptr_nonnull(strstr(err.msg, "producer"));
	p = side(2, 0, 3072);
	d = side(4, 0, 1024);
	ck_assert_err(kvb_tp_plan(&p, &d, 6, &plan, &err), err, KVB_ERR_LAYOUT, "consumer tp size 4");
	/* rank not below size */
	p = side(2, 2, 1024);
	d = side(2, 0, 1024);
	ck_assert_err(kvb_tp_plan(&p, &d, 0, &plan, &err), err, KVB_ERR_INVALID, "rank 2");
	p = side(2, 0, 1024);
	d = side(4, 7, 1024);
	ck_assert_err(kvb_tp_plan(&p, &d, 0, &plan, &err), err, KVB_ERR_INVALID, "7");
	/* zero sizes */
	p = side(0, 0, 1024);
	ck_assert_err(kvb_tp_plan(&p, &d, 0, &plan, &err), err, KVB_ERR_INVALID, "0");
	p = side(2, 0, 0);
	ck_assert_err(kvb_tp_plan(&p, &d, 0, &plan, &err), err, KVB_ERR_INVALID, "kv_block_bytes");
	/* bytes per head differ: P_tp 2 D_tp 1 needs D = 2 x P */
	p = side(2, 0, 100);
	d = side(1, 0, 300);
	ck_assert_err(kvb_tp_plan(&p, &d, 0, &plan, &err), err, KVB_ERR_LAYOUT, "100");
	ck_assert_ptr_nonnull(strstr(err.msg, "150"));
	/* equal TP needs equal lengths */
	p = side(4, 1, 4096);
	d = side(4, 1, 8192);
	ck_assert_err(kvb_tp_plan(&p, &d, 8, &plan, &err), err, KVB_ERR_LAYOUT, "2048");
	ck_assert_ptr_nonnull(strstr(err.msg, "4096"));
	/* block bytes not a multiple of the rank's heads */
	p = side(2, 0, 1001);
	d = side(1, 0, 2002);
	ck_assert_err(kvb_tp_plan(&p, &d, 4, &plan, &err), err, KVB_ERR_LAYOUT, "1001");
	ck_assert_err(kvb_tp_plan(NULL, &d, 4, &plan, &err), err, KVB_ERR_INVALID, "NULL");
}
END_TEST

Suite *kvb_suite_tp(void)
{
	Suite *s = suite_create("tp");
	TCase *tc = tcase_create("ranks");
	tcase_add_test(tc, test_tp_ratio);
	tcase_add_test(tc, test_tp_targets);
	tcase_add_test(tc, test_tp_symmetry);
	suite_add_tcase(s, tc);

	tc = tcase_create("plan");
	tcase_add_test(tc, test_tp_plan_vllm_rules);
	tcase_add_test(tc, test_tp_plan_known_heads);
	tcase_add_test(tc, test_tp_reassembly);
	tcase_add_test(tc, test_tp_plan_errors);
	suite_add_tcase(s, tc);
	return s;
}
