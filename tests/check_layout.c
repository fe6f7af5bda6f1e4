/*
 * Layout math: region and layout checks, tail alignment, runs, region
 * pairing, copy plans (hand-made cases, bad input, and a randomized
 * comparison against a block-by-block reference over real buffers), slicing.
 */
#include "config.h"

#include <inttypes.h>
#include <stdint.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/layout.h>

#include "suites.h"

/* rc is code, err carries it, and the message names `needle`. */
#define ck_assert_err(rc, err, want, needle)                                                     \
	do {                                                                                     \
		ck_assert_int_eq((rc), (want));                                                  \
		ck_assert_int_eq((err).code, (want));                                            \
		ck_assert_msg((err).msg[0] != '\0', "empty error message");                     \
		ck_assert_msg(strstr((err).msg, (needle)) != NULL, "message '%s' lacks '%s'",     \
			      (err).msg, (needle));                                              \
	} while (0)

static kvb_region_t reg(uint64_t base, uint64_t stride, uint64_t bytes, uint32_t nb, int32_t layer,
			int32_t group)
{
	return (kvb_region_t){
		.base = base,
		.block_stride = stride,
		.block_bytes = bytes,
		.num_blocks = nb,
		.layer = layer,
		.group = group,
		.mem_kind = KVB_MEM_HOST,
		.device = -1,
	};
}

static kvb_tp_plan_t tp_whole(uint64_t len)
{
	return (kvb_tp_plan_t){.send = true, .src_off = 0, .dst_off = 0, .len = len};
}

/* ---- regions ----------------------------------------------------------- */

START_TEST(test_region_check)
{
	kvb_err_t err;
	kvb_region_t r = reg(0x10000, 4096, 4096, 16, 3, 0);

	ck_assert_int_eq(kvb_region_check(&r, &err), KVB_OK);
	ck_assert_int_eq(kvb_region_check(&r, NULL), KVB_OK);

	r = reg(0x10000, 4096, 4096, 0, 0, 0);
	ck_assert_err(kvb_region_check(&r, &err), err, KVB_ERR_INVALID, "0 blocks");
	r = reg(0x10000, 0, 0, 16, 0, 0);
	ck_assert_err(kvb_region_check(&r, &err), err, KVB_ERR_INVALID, "block_stride is 0");
	r = reg(0x10000, 4096, 0, 16, 0, 0);
	ck_assert_err(kvb_region_check(&r, &err), err, KVB_ERR_INVALID, "block_bytes is 0");
	r = reg(0x10000, 4096, 4097, 16, 0, 0);
	ck_assert_err(kvb_region_check(&r, &err), err, KVB_ERR_INVALID, "4097");
	ck_assert_ptr_nonnull(strstr(err.msg, "4096"));
	r = reg(0, UINT64_MAX / 2, 16, 3, 0, 0);
	ck_assert_err(kvb_region_check(&r, &err), err, KVB_ERR_INVALID, "overflows");
	r = reg(UINT64_MAX - 4095, 4096, 4096, 2, 0, 0);
	ck_assert_err(kvb_region_check(&r, &err), err, KVB_ERR_INVALID, "wraps");
	/* the end address must be representable: ending at UINT64_MAX is fine */
	r = reg(UINT64_MAX - 8192, 4096, 4096, 2, 0, 0);
	ck_assert_int_eq(kvb_region_check(&r, &err), KVB_OK);
	r = reg(UINT64_MAX - 8191, 4096, 4096, 2, 0, 0);
	ck_assert_err(kvb_region_check(&r, &err), err, KVB_ERR_INVALID, "wraps");
	r = reg(0, 4096, 4096, 2, 0, 0);
	ck_assert_int_eq(kvb_region_check(&r, &err), KVB_OK);
	r = reg(0x10000, 64, 64, 1, -7, 0);
	ck_assert_err(kvb_region_check(&r, &err), err, KVB_ERR_INVALID, "-7");
	r = reg(0x10000, 64, 64, 1, 0, -2);
	ck_assert_err(kvb_region_check(&r, &err), err, KVB_ERR_INVALID, "-2");
	r = reg(0x10000, 64, 64, 1, 0, 0);
	r.mem_kind = (kvb_mem_kind_t)9;
	ck_assert_err(kvb_region_check(&r, &err), err, KVB_ERR_INVALID, "9");
	ck_assert_err(kvb_region_check(NULL, &err), err, KVB_ERR_INVALID, "NULL");
}
END_TEST

START_TEST(test_region_span_range_location)
{
	kvb_err_t err;
	kvb_region_t r = reg(0x100000, 8192, 6000, 4096, 0, 0);
	uint64_t addr = 0, len = 0;
	char buf[32];

	ck_assert_uint_eq(kvb_region_span(&r), 4096u * 8192u);
	ck_assert_uint_eq(kvb_region_span(NULL), 0);
	r.block_stride = UINT64_MAX / 2;
	ck_assert_uint_eq(kvb_region_span(&r), UINT64_MAX);
	r.block_stride = 8192;

	ck_assert_int_eq(kvb_region_block_range(&r, 0, &addr, &len, &err), KVB_OK);
	ck_assert_uint_eq(addr, 0x100000);
	ck_assert_uint_eq(len, 6000);
	ck_assert_int_eq(kvb_region_block_range(&r, 4095, &addr, &len, &err), KVB_OK);
	ck_assert_uint_eq(addr, 0x100000 + 4095ull * 8192);
	ck_assert_uint_eq(len, 6000);
	addr = 1;
	ck_assert_err(kvb_region_block_range(&r, 4096, &addr, &len, &err), err, KVB_ERR_RANGE,
		      "4096");
	ck_assert_uint_eq(addr, 1); /* untouched on error */
	ck_assert_err(kvb_region_block_range(&r, 4097, NULL, NULL, &err), err, KVB_ERR_RANGE,
		      "block 4097");

	r.mem_kind = KVB_MEM_CUDA;
	r.device = 0;
	kvb_region_location(&r, buf, sizeof(buf));
	ck_assert_str_eq(buf, "cuda:0");
	r.device = 7;
	kvb_region_location(&r, buf, sizeof(buf));
	ck_assert_str_eq(buf, "cuda:7");
	r.device = -1;
	kvb_region_location(&r, buf, sizeof(buf));
	ck_assert_str_eq(buf, "cuda:*");
	r.mem_kind = KVB_MEM_HOST;
	r.device = 1;
	kvb_region_location(&r, buf, sizeof(buf));
	ck_assert_str_eq(buf, "cpu:1");
	r.device = -1;
	kvb_region_location(&r, buf, sizeof(buf));
	ck_assert_str_eq(buf, "cpu:*");
	memset(buf, 'x', sizeof(buf));
	kvb_region_location(&r, buf, 3);
	ck_assert_str_eq(buf, "cp");
	ck_assert_int_eq(buf[3], 'x');
	kvb_region_location(&r, NULL, 0); /* no crash */
}
END_TEST

START_TEST(test_layout_check)
{
	kvb_err_t err;
	uint32_t n_groups = 99;
	kvb_region_t r[4];

	/* two groups, regions not sorted by address, touching but not overlapping */
	r[0] = reg(0x3000, 0x100, 0x100, 16, 0, 1);
	r[1] = reg(0x1000, 0x100, 0x80, 16, 0, 0);
	r[2] = reg(0x2000, 0x100, 0x100, 16, 1, 0);
	ck_assert_int_eq(kvb_layout_check(r, 3, &n_groups, &err), KVB_OK);
	ck_assert_uint_eq(n_groups, 2);
	ck_assert_int_eq(kvb_layout_check(r, 3, NULL, NULL), KVB_OK);

	n_groups = 99;
	ck_assert_int_eq(kvb_layout_check(NULL, 0, &n_groups, &err), KVB_OK);
	ck_assert_uint_eq(n_groups, 0);

	/* groups 0 and 2: group 1 is missing */
	r[0].group = 2;
	n_groups = 99;
	ck_assert_err(kvb_layout_check(r, 3, &n_groups, &err), err, KVB_ERR_INVALID, "group 1");
	ck_assert_uint_eq(n_groups, 99);
	r[0].group = 1;

	/* region 2 starts inside region 1's last block */
	r[2].base = 0x1000 + 15 * 0x100;
	ck_assert_err(kvb_layout_check(r, 3, NULL, &err), err, KVB_ERR_INVALID, "overlap");
	ck_assert_ptr_nonnull(strstr(err.msg, "regions 1 "));
	ck_assert_ptr_nonnull(strstr(err.msg, "and 2 "));
	r[2].base = 0x2000;

	/* a big region containing two others: the overlap is not between
	 * neighbours in address order only */
	r[3] = reg(0x0, 0x1000, 0x1000, 8, 2, 0);
	ck_assert_err(kvb_layout_check(r, 4, NULL, &err), err, KVB_ERR_INVALID, "overlap");
	ck_assert_ptr_nonnull(strstr(err.msg, "and 3 "));

	/* the same region twice */
	r[3] = r[1];
	ck_assert_err(kvb_layout_check(r, 4, NULL, &err), err, KVB_ERR_INVALID, "overlap");

	/* a bad region is reported with its index */
	r[2].block_bytes = 0x101;
	ck_assert_err(kvb_layout_check(r, 3, NULL, &err), err, KVB_ERR_INVALID, "region 2");
	ck_assert_ptr_nonnull(strstr(err.msg, "257"));
	r[2].block_bytes = 0x100;

	r[0].group = 64;
	ck_assert_err(kvb_layout_check(r, 3, NULL, &err), err, KVB_ERR_INVALID, "64");
	r[0].group = 1;

	ck_assert_err(kvb_layout_check(r, KVB_MAX_REGIONS + 1, NULL, &err), err, KVB_ERR_INVALID,
		      "8193");
	ck_assert_err(kvb_layout_check(NULL, 2, NULL, &err), err, KVB_ERR_INVALID, "NULL");
}
END_TEST

/* vLLM makes one region per cache[:, i] when a block is not dense: the K and V
 * halves of a layer share the stride and interleave without sharing bytes. */
START_TEST(test_layout_check_interleaved)
{
	kvb_err_t err;
	kvb_region_t r[3];

	r[0] = reg(0x10000, 0x200, 0x100, 32, 0, 0);          /* K half */
	r[1] = reg(0x10000 + 0x100, 0x200, 0x100, 32, 0, 0);  /* V half */
	r[2] = reg(0x10000 + 32 * 0x200 + 0x100, 0x200, 0x100, 4, 1, 0);
	ck_assert_int_eq(kvb_layout_check(r, 3, NULL, &err), KVB_OK);

	/* V half starting inside K's data */
	r[1].base = 0x10000 + 0xff;
	ck_assert_err(kvb_layout_check(r, 3, NULL, &err), err, KVB_ERR_INVALID, "overlap");
	/* V half spilling into the next slot's K data */
	r[1].base = 0x10000 + 0x100;
	r[1].block_bytes = 0x101;
	ck_assert_err(kvb_layout_check(r, 3, NULL, &err), err, KVB_ERR_INVALID, "overlap");
	/* interleaved but with another stride: refused */
	r[1] = reg(0x10000 + 0x100, 0x400, 0x100, 16, 0, 0);
	ck_assert_err(kvb_layout_check(r, 3, NULL, &err), err, KVB_ERR_INVALID, "overlap");
	/* a third region interleaving with K but colliding with V's bytes */
	r[1] = reg(0x10000 + 0x100, 0x200, 0x100, 32, 0, 0);
	r[2] = reg(0x10000 + 0x180, 0x200, 0x80, 32, 1, 0);
	ck_assert_err(kvb_layout_check(r, 3, NULL, &err), err, KVB_ERR_INVALID, "regions 1 ");
	/* a region after V in address order that misses V but hits K's block 1:
	 * the sweep must keep K active past V */
	r[2] = reg(0x10000 + 0x210, 0x200, 0x10, 8, 1, 0);
	ck_assert_err(kvb_layout_check(r, 3, NULL, &err), err, KVB_ERR_INVALID, "regions 0 ");
	ck_assert_ptr_nonnull(strstr(err.msg, "and 2 "));
}
END_TEST

/* ---- block lists ------------------------------------------------------- */

START_TEST(test_tail_align)
{
	kvb_err_t err;
	uint32_t skip = 99;

	ck_assert_int_eq(kvb_tail_align(5, 5, &skip, &err), KVB_OK);
	ck_assert_uint_eq(skip, 0);
	ck_assert_int_eq(kvb_tail_align(9, 3, &skip, &err), KVB_OK);
	ck_assert_uint_eq(skip, 6);
	ck_assert_int_eq(kvb_tail_align(4, 0, &skip, &err), KVB_OK);
	ck_assert_uint_eq(skip, 4);
	ck_assert_int_eq(kvb_tail_align(0, 0, &skip, &err), KVB_OK);
	ck_assert_uint_eq(skip, 0);
	skip = 99;
	ck_assert_err(kvb_tail_align(3, 17, &skip, &err), err, KVB_ERR_LAYOUT, "17");
	ck_assert_ptr_nonnull(strstr(err.msg, "3"));
	ck_assert_uint_eq(skip, 99);
}
END_TEST

START_TEST(test_runs_build)
{
	kvb_run_t runs[8];
	const uint32_t s1[] = {4, 5, 6, 10, 11, 3, 4};
	const uint32_t d1[] = {0, 1, 2, 3, 4, 9, 10};

	ck_assert_uint_eq(kvb_runs_build(s1, d1, 7, runs), 3);
	ck_assert_uint_eq(runs[0].src_first, 4);
	ck_assert_uint_eq(runs[0].dst_first, 0);
	ck_assert_uint_eq(runs[0].count, 3);
	ck_assert_uint_eq(runs[1].src_first, 10);
	ck_assert_uint_eq(runs[1].dst_first, 3);
	ck_assert_uint_eq(runs[1].count, 2);
	ck_assert_uint_eq(runs[2].src_first, 3);
	ck_assert_uint_eq(runs[2].dst_first, 9);
	ck_assert_uint_eq(runs[2].count, 2);

	/* src contiguous but dst not, and vice versa: every block its own run */
	const uint32_t s2[] = {1, 2, 3, 7};
	const uint32_t d2[] = {5, 7, 8, 9};
	ck_assert_uint_eq(kvb_runs_build(s2, d2, 4, runs), 3);
	ck_assert_uint_eq(runs[1].count, 2);
	ck_assert_uint_eq(runs[2].src_first, 7);

	/* descending and repeated ids are not runs; UINT32_MAX + 1 does not wrap */
	const uint32_t s3[] = {5, 4, 4, UINT32_MAX, 0};
	const uint32_t d3[] = {1, 2, 3, UINT32_MAX, 0};
	ck_assert_uint_eq(kvb_runs_build(s3, d3, 5, runs), 5);

	ck_assert_uint_eq(kvb_runs_build(NULL, NULL, 0, runs), 0);
	ck_assert_uint_eq(kvb_runs_build(s1, d1, 1, runs), 1);
	ck_assert_uint_eq(runs[0].count, 1);
}
END_TEST

/* ---- region pairing ---------------------------------------------------- */

START_TEST(test_regions_pair)
{
	kvb_err_t err;
	uint32_t pair[6];
	kvb_region_t s[6], d[6];

	/* producer: (g0,l0)#0 (g0,l1) (g0,l0)#1 (g1,l0) (g0,l0)#2 (g1,l1) */
	s[0] = reg(0x0000, 64, 64, 4, 0, 0);
	s[1] = reg(0x1000, 64, 64, 4, 1, 0);
	s[2] = reg(0x2000, 64, 64, 4, 0, 0);
	s[3] = reg(0x3000, 64, 64, 4, 0, 1);
	s[4] = reg(0x4000, 64, 64, 4, 0, 0);
	s[5] = reg(0x5000, 64, 64, 4, 1, 1);
	/* consumer in another order; occurrences keep their relative order */
	d[0] = reg(0x0000, 64, 64, 4, 1, 1);
	d[1] = reg(0x1000, 64, 64, 4, 0, 0);
	d[2] = reg(0x2000, 64, 64, 4, 0, 1);
	d[3] = reg(0x3000, 64, 64, 4, 0, 0);
	d[4] = reg(0x4000, 64, 64, 4, 1, 0);
	d[5] = reg(0x5000, 64, 64, 4, 0, 0);
	ck_assert_int_eq(kvb_regions_pair(s, 6, d, 6, pair, &err), KVB_OK);
	ck_assert_uint_eq(pair[0], 1);
	ck_assert_uint_eq(pair[1], 4);
	ck_assert_uint_eq(pair[2], 3);
	ck_assert_uint_eq(pair[3], 2);
	ck_assert_uint_eq(pair[4], 5);
	ck_assert_uint_eq(pair[5], 0);

	ck_assert_int_eq(kvb_regions_pair(NULL, 0, NULL, 0, NULL, &err), KVB_OK);

	ck_assert_err(kvb_regions_pair(s, 6, d, 5, pair, &err), err, KVB_ERR_LAYOUT, "6");
	ck_assert_ptr_nonnull(strstr(err.msg, "5"));

	/* consumer has layer 7 where the producer has (g1, l1) */
	d[0].layer = 7;
	ck_assert_err(kvb_regions_pair(s, 6, d, 6, pair, &err), err, KVB_ERR_LAYOUT,
		      "producer region 5");
	ck_assert_ptr_nonnull(strstr(err.msg, "layer 1"));
	/* a group mismatch: consumer (g1, l0) moved to group 0 */
	d[0].layer = 1;
	d[2].group = 0;
	ck_assert_err(kvb_regions_pair(s, 6, d, 6, pair, &err), err, KVB_ERR_LAYOUT, "no partner");
	ck_assert_ptr_nonnull(strstr(err.msg, "occurrence 3"));
}
END_TEST

/* ---- copy plans: hand-made cases -------------------------------------- */

START_TEST(test_copy_plan_dense_runs)
{
	kvb_err_t err;
	kvb_region_t s[2] = {reg(0x100000, 256, 256, 16, 0, 0), reg(0x200000, 256, 256, 16, 1, 0)};
	kvb_region_t d[2] = {reg(0x900000, 256, 256, 12, 1, 0), reg(0x800000, 256, 256, 12, 0, 0)};
	const uint32_t sid[] = {1, 2, 3, 7};
	const uint32_t did[] = {4, 5, 6, 9};
	kvb_block_list_t sg = {sid, 4}, dg = {did, 4};
	kvb_tp_plan_t tp = tp_whole(256);
	kvb_copy_t *c = NULL;
	uint32_t n = 0;
	uint64_t total = 0;

	ck_assert_int_eq(kvb_copy_plan_build(s, 2, &sg, d, 2, &dg, 1, &tp, &c, &n, &total, &err),
			 KVB_OK);
	ck_assert_uint_eq(n, 4);
	ck_assert_uint_eq(total, 2 * 4 * 256);
	/* producer region 0 (layer 0) pairs with consumer region 1 */
	ck_assert_uint_eq(c[0].src_region, 0);
	ck_assert_uint_eq(c[0].dst_region, 1);
	ck_assert_uint_eq(c[0].src_addr, 0x100000 + 1 * 256);
	ck_assert_uint_eq(c[0].dst_addr, 0x800000 + 4 * 256);
	ck_assert_uint_eq(c[0].len, 3 * 256);
	ck_assert_uint_eq(c[1].src_addr, 0x100000 + 7 * 256);
	ck_assert_uint_eq(c[1].dst_addr, 0x800000 + 9 * 256);
	ck_assert_uint_eq(c[1].len, 256);
	ck_assert_uint_eq(c[2].src_region, 1);
	ck_assert_uint_eq(c[2].dst_region, 0);
	ck_assert_uint_eq(c[2].src_addr, 0x200000 + 256);
	ck_assert_uint_eq(c[2].dst_addr, 0x900000 + 4 * 256);
	ck_assert_uint_eq(c[2].len, 3 * 256);
	g_free(c);

	/* total_bytes is optional */
	ck_assert_int_eq(kvb_copy_plan_build(s, 2, &sg, d, 2, &dg, 1, &tp, &c, &n, NULL, &err),
			 KVB_OK);
	ck_assert_uint_eq(n, 4);
	g_free(c);
}
END_TEST

START_TEST(test_copy_plan_tail_and_padding)
{
	kvb_err_t err;
	/* producer slots padded (stride 320 > 256): no coalescing */
	kvb_region_t s[1] = {reg(0x100000, 320, 256, 16, 0, 0)};
	kvb_region_t d[1] = {reg(0x800000, 256, 256, 16, 0, 0)};
	const uint32_t sid[] = {9, 9, 0, 1, 2};  /* the first two are the consumer's cached prefix */
	const uint32_t did[] = {3, 4, 5};
	kvb_block_list_t sg = {sid, 5}, dg = {did, 3};
	kvb_tp_plan_t tp = tp_whole(256);
	kvb_copy_t *c = NULL;
	uint32_t n = 0;
	uint64_t total = 0;

	ck_assert_int_eq(kvb_copy_plan_build(s, 1, &sg, d, 1, &dg, 1, &tp, &c, &n, &total, &err),
			 KVB_OK);
	ck_assert_uint_eq(n, 3);
	ck_assert_uint_eq(total, 3 * 256);
	for (uint32_t i = 0; i < 3; i++) {
		ck_assert_uint_eq(c[i].src_addr, 0x100000 + i * 320);
		ck_assert_uint_eq(c[i].dst_addr, 0x800000 + (3 + i) * 256);
		ck_assert_uint_eq(c[i].len, 256);
	}
	g_free(c);
}
END_TEST

START_TEST(test_copy_plan_tp_slice)
{
	kvb_err_t err;
	/* producer block: 2 heads of 128 bytes; consumer block: 4 heads */
	kvb_region_t s[1] = {reg(0x100000, 256, 256, 8, 0, 0)};
	kvb_region_t d[1] = {reg(0x800000, 512, 512, 8, 0, 0)};
	const uint32_t sid[] = {0, 1, 2};
	const uint32_t did[] = {5, 6, 7};
	kvb_block_list_t sg = {sid, 3}, dg = {did, 3};
	kvb_tp_plan_t tp = {.send = true, .src_off = 0, .dst_off = 256, .len = 256};
	kvb_copy_t *c = NULL;
	uint32_t n = 0;
	uint64_t total = 0;

	ck_assert_int_eq(kvb_copy_plan_build(s, 1, &sg, d, 1, &dg, 1, &tp, &c, &n, &total, &err),
			 KVB_OK);
	/* contiguous on the producer, strided on the consumer: one copy per block */
	ck_assert_uint_eq(n, 3);
	for (uint32_t i = 0; i < 3; i++) {
		ck_assert_uint_eq(c[i].src_addr, 0x100000 + i * 256);
		ck_assert_uint_eq(c[i].dst_addr, 0x800000 + (5 + i) * 512 + 256);
		ck_assert_uint_eq(c[i].len, 256);
	}
	g_free(c);

	/* the reverse split: slice the producer block */
	kvb_region_t s2[1] = {reg(0x100000, 512, 512, 8, 0, 0)};
	kvb_region_t d2[1] = {reg(0x800000, 256, 256, 8, 0, 0)};
	tp = (kvb_tp_plan_t){.send = true, .src_off = 128, .dst_off = 0, .len = 256};
	ck_assert_int_eq(kvb_copy_plan_build(s2, 1, &sg, d2, 1, &dg, 1, &tp, &c, &n, &total, &err),
			 KVB_OK);
	ck_assert_uint_eq(n, 3);
	ck_assert_uint_eq(total, 3 * 256);
	ck_assert_uint_eq(c[2].src_addr, 0x100000 + 2 * 512 + 128);
	ck_assert_uint_eq(c[2].dst_addr, 0x800000 + 7 * 256);
	g_free(c);
}
END_TEST

START_TEST(test_copy_plan_empty_and_nosend)
{
	kvb_err_t err;
	kvb_region_t s[2] = {reg(0x100000, 64, 64, 8, 0, 0), reg(0x200000, 64, 64, 8, 0, 1)};
	kvb_region_t d[2] = {reg(0x800000, 64, 64, 8, 0, 0), reg(0x900000, 64, 64, 8, 0, 1)};
	const uint32_t ids[] = {1, 2, 3};
	const uint32_t bad[] = {1, 8};
	kvb_block_list_t sg[2] = {{ids, 3}, {NULL, 0}}, dg[2] = {{NULL, 0}, {NULL, 0}};
	kvb_tp_plan_t tp = tp_whole(64);
	kvb_copy_t *c = (kvb_copy_t *)&err;
	uint32_t n = 99;
	uint64_t total = 99;

	/* the consumer has everything cached */
	ck_assert_int_eq(kvb_copy_plan_build(s, 2, sg, d, 2, dg, 2, &tp, &c, &n, &total, &err),
			 KVB_OK);
	ck_assert_ptr_null(c);
	ck_assert_uint_eq(n, 0);
	ck_assert_uint_eq(total, 0);

	/* no regions and no groups */
	n = 99;
	ck_assert_int_eq(kvb_copy_plan_build(NULL, 0, NULL, NULL, 0, NULL, 0, &tp, &c, &n, &total,
					     &err),
			 KVB_OK);
	ck_assert_uint_eq(n, 0);

	/* a replica that does not send gets no copies ... */
	dg[0] = (kvb_block_list_t){ids, 3};
	tp = (kvb_tp_plan_t){.send = false};
	n = 99;
	ck_assert_int_eq(kvb_copy_plan_build(s, 2, sg, d, 2, dg, 2, &tp, &c, &n, &total, &err),
			 KVB_OK);
	ck_assert_ptr_null(c);
	ck_assert_uint_eq(n, 0);
	ck_assert_uint_eq(total, 0);
	/* ... but still rejects what its peers reject */
	dg[0] = (kvb_block_list_t){bad, 2};
	ck_assert_err(kvb_copy_plan_build(s, 2, sg, d, 2, dg, 2, &tp, &c, &n, &total, &err), err,
		      KVB_ERR_RANGE, "block 8");
}
END_TEST

START_TEST(test_copy_plan_errors)
{
	kvb_err_t err;
	kvb_region_t s[2] = {reg(0x100000, 64, 64, 16, 0, 0), reg(0x200000, 64, 64, 10, 1, 0)};
	kvb_region_t d[2] = {reg(0x800000, 64, 64, 12, 0, 0), reg(0x900000, 64, 64, 16, 1, 0)};
	const uint32_t sid[] = {1, 2, 3};
	const uint32_t did[] = {4, 5, 6};
	const uint32_t s_high[] = {1, 12, 3}; /* fits region 0 (16), not region 1 (10) */
	const uint32_t d_high[] = {4, 5, 13}; /* fits region 1 (16), not region 0 (12) */
	kvb_block_list_t sg = {sid, 3}, dg = {did, 3};
	kvb_block_list_t sg2[2] = {{sid, 3}, {sid, 3}}, dg2[2] = {{did, 3}, {did, 3}};
	kvb_tp_plan_t tp = tp_whole(64);
	kvb_copy_t *c = NULL;
	uint32_t n = 0;
	uint64_t total = 0;

	ck_assert_int_eq(kvb_copy_plan_build(s, 2, &sg, d, 2, &dg, 1, &tp, &c, &n, &total, &err),
			 KVB_OK);
	ck_assert_uint_eq(n, 2);
	g_free(c);

	/* block id outside the smallest region of its group, each side */
	sg.ids = s_high;
	c = (kvb_copy_t *)&err;
	n = 7;
	ck_assert_err(kvb_copy_plan_build(s, 2, &sg, d, 2, &dg, 1, &tp, &c, &n, &total, &err), err,
		      KVB_ERR_RANGE, "block 12");
	ck_assert_ptr_nonnull(strstr(err.msg, "producer region 1"));
	ck_assert_ptr_nonnull(strstr(err.msg, "10 blocks"));
	ck_assert_ptr_null(c);
	ck_assert_uint_eq(n, 0);
	sg.ids = sid;
	dg.ids = d_high;
	ck_assert_err(kvb_copy_plan_build(s, 2, &sg, d, 2, &dg, 1, &tp, &c, &n, &total, &err), err,
		      KVB_ERR_RANGE, "block 13");
	ck_assert_ptr_nonnull(strstr(err.msg, "consumer region 0"));
	ck_assert_ptr_nonnull(strstr(err.msg, "12 blocks"));
	dg.ids = did;

	/* producer list shorter than the consumer's */
	sg.count = 2;
	ck_assert_err(kvb_copy_plan_build(s, 2, &sg, d, 2, &dg, 1, &tp, &c, &n, &total, &err), err,
		      KVB_ERR_LAYOUT, "2 blocks");
	ck_assert_ptr_nonnull(strstr(err.msg, "wants 3"));
	sg.count = 3;

	/* region counts differ */
	ck_assert_err(kvb_copy_plan_build(s, 2, &sg, d, 1, &dg, 1, &tp, &c, &n, &total, &err), err,
		      KVB_ERR_LAYOUT, "2 regions");

	/* a region's layer has no partner */
	d[1].layer = 5;
	ck_assert_err(kvb_copy_plan_build(s, 2, &sg, d, 2, &dg, 1, &tp, &c, &n, &total, &err), err,
		      KVB_ERR_LAYOUT, "no partner");
	d[1].layer = 1;

	/* a region in group 1 but the request has one group */
	s[1].group = 1;
	ck_assert_err(kvb_copy_plan_build(s, 2, &sg, d, 2, &dg, 1, &tp, &c, &n, &total, &err), err,
		      KVB_ERR_LAYOUT, "group 1");
	s[1].group = 0;

	ck_assert_err(kvb_copy_plan_build(s, 2, sg2, d, 2, dg2, 65, &tp, &c, &n, &total, &err), err,
		      KVB_ERR_INVALID, "65");

	/* TP slice larger than a block, or past its end */
	tp = tp_whole(65);
	ck_assert_err(kvb_copy_plan_build(s, 2, &sg, d, 2, &dg, 1, &tp, &c, &n, &total, &err), err,
		      KVB_ERR_LAYOUT, "65");
	tp = (kvb_tp_plan_t){.send = true, .src_off = 0, .dst_off = 40, .len = 32};
	ck_assert_err(kvb_copy_plan_build(s, 2, &sg, d, 2, &dg, 1, &tp, &c, &n, &total, &err), err,
		      KVB_ERR_LAYOUT, "40+32");
	tp = (kvb_tp_plan_t){.send = true, .src_off = UINT64_MAX, .dst_off = 0, .len = 32};
	ck_assert_err(kvb_copy_plan_build(s, 2, &sg, d, 2, &dg, 1, &tp, &c, &n, &total, &err), err,
		      KVB_ERR_LAYOUT, "exceeds");
	tp = (kvb_tp_plan_t){.send = true, .len = 0};
	ck_assert_err(kvb_copy_plan_build(s, 2, &sg, d, 2, &dg, 1, &tp, &c, &n, &total, &err), err,
		      KVB_ERR_INVALID, "0 bytes");
	tp = tp_whole(64);

	/* invalid regions */
	s[0].num_blocks = 0;
	ck_assert_err(kvb_copy_plan_build(s, 2, &sg, d, 2, &dg, 1, &tp, &c, &n, &total, &err), err,
		      KVB_ERR_INVALID, "producer region 0");
	s[0].num_blocks = 16;
	d[1].block_bytes = 65;
	ck_assert_err(kvb_copy_plan_build(s, 2, &sg, d, 2, &dg, 1, &tp, &c, &n, &total, &err), err,
		      KVB_ERR_INVALID, "65");
	ck_assert_ptr_nonnull(strstr(err.msg, "consumer region 1"));
	d[1].block_bytes = 64;

	/* a list with a count but no ids */
	sg.ids = NULL;
	ck_assert_err(kvb_copy_plan_build(s, 2, &sg, d, 2, &dg, 1, &tp, &c, &n, &total, &err), err,
		      KVB_ERR_INVALID, "3 blocks");
	sg.ids = sid;
	ck_assert_err(kvb_copy_plan_build(s, 2, &sg, d, 2, &dg, 1, NULL, &c, &n, &total, &err), err,
		      KVB_ERR_INVALID, "NULL");
}
END_TEST

/* ---- copy plans: randomized comparison with a reference ----------------- */

/* splitmix64: a fixed-seed generator, identical on every platform */
typedef struct rng {
	uint64_t s;
} rng_t;

static uint64_t rng_next(rng_t *r)
{
	uint64_t z = (r->s += UINT64_C(0x9e3779b97f4a7c15));
	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

static uint32_t rng_below(rng_t *r, uint32_t n)
{
	return (uint32_t)(rng_next(r) % n);
}

static void rng_fill(rng_t *r, uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)rng_next(r);
}

static void rng_shuffle(rng_t *r, uint32_t *a, uint32_t n)
{
	for (uint32_t i = n; i > 1; i--) {
		uint32_t j = rng_below(r, i), t = a[i - 1];
		a[i - 1] = a[j];
		a[j] = t;
	}
}

/* n distinct ids below limit (n <= limit), continuing runs 3 times in 4. */
static void gen_ids(rng_t *r, uint32_t *ids, uint32_t n, uint32_t limit)
{
	bool *used = g_new0(bool, limit);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t id = 0;
		if (i && rng_below(r, 4) != 0 && ids[i - 1] + 1 < limit && !used[ids[i - 1] + 1]) {
			id = ids[i - 1] + 1;
		} else {
			do
				id = rng_below(r, limit);
			while (used[id]);
		}
		used[id] = true;
		ids[i] = id;
	}
	g_free(used);
}

#define RT_MAX_GROUPS 3
#define RT_MAX_LAYERS 4
#define RT_MAX_PER 3
#define RT_MAX_REGIONS (RT_MAX_GROUPS * RT_MAX_LAYERS * RT_MAX_PER)

/* One side of a random layout, with its memory. */
struct rt_side {
	kvb_region_t reg[RT_MAX_REGIONS];
	uint8_t *buf;
	size_t size;
};

/*
 * Place logical region k (0..n) at array index pos[k] on this side with its
 * own stride, padding and block count; memory is laid out in a third random
 * order with random gaps, so array order, address order and pairing order all
 * differ.
 */
static void rt_side_build(rng_t *r, struct rt_side *side, uint32_t n, const uint32_t *pos,
			  const int32_t *lgroup, const int32_t *llayer, const uint32_t *nb_min,
			  uint64_t bytes_min, uint64_t full_len)
{
	uint32_t order[RT_MAX_REGIONS];
	uint64_t off[RT_MAX_REGIONS];
	size_t at = 0;

	for (uint32_t k = 0; k < n; k++) {
		kvb_region_t *x = &side->reg[pos[k]];
		uint64_t bytes = full_len ? full_len : bytes_min + rng_below(r, 12);
		uint64_t stride = bytes + (rng_below(r, 2) ? 0 : rng_below(r, 24));
		*x = reg(0, stride, bytes, nb_min[lgroup[k]] + rng_below(r, 3), llayer[k], lgroup[k]);
	}
	for (uint32_t i = 0; i < n; i++)
		order[i] = i;
	rng_shuffle(r, order, n);
	for (uint32_t i = 0; i < n; i++) {
		at += rng_below(r, 3) * 16;
		off[order[i]] = at;
		at += kvb_region_span(&side->reg[order[i]]);
	}
	side->size = at + 1;
	side->buf = g_malloc(side->size);
	for (uint32_t i = 0; i < n; i++)
		side->reg[i].base = (uint64_t)(uintptr_t)side->buf + off[i];
}

/* What the trials exercised, so the generator itself is checked. */
struct rt_stats {
	uint32_t merged;      /* copies spanning several blocks */
	uint32_t padded;      /* regions with block_bytes < block_stride */
	uint32_t sliced;      /* trials with a partial-block TP slice */
	uint32_t skipped;     /* groups whose producer list was tail-aligned */
	uint32_t empty;       /* groups with nothing to copy */
	uint32_t multi_group; /* trials with several groups */
	uint32_t multi_occ;   /* trials with several regions per (group, layer) */
};

/*
 * Why copy i of a plan is wrong, or NULL: its regions must be partners; it
 * must lie inside both regions' spans and start at the TP offset of a slot;
 * a copy longer than the TP slice is only allowed when whole slots are
 * copied on both sides; and the next copy of the same pair must not continue
 * it (runs are maximal).  One check call per copy keeps valgrind runs fast.
 */
static const char *rt_copy_problem(const kvb_copy_t *c, uint32_t n_c, uint32_t i,
				   const kvb_region_t *sr, const kvb_region_t *dr, uint32_t n,
				   const uint32_t *partner, const kvb_tp_plan_t *tp)
{
	if (c[i].src_region >= n || c[i].dst_region >= n)
		return "region index out of range";
	if (partner[c[i].src_region] != c[i].dst_region)
		return "regions are not partners";
	const kvb_region_t *s = &sr[c[i].src_region], *d = &dr[c[i].dst_region];
	if (c[i].len == 0 || c[i].len % tp->len)
		return "length is not a multiple of the TP slice";
	if (c[i].src_addr < s->base || c[i].src_addr + c[i].len > s->base + kvb_region_span(s))
		return "outside the producer region";
	if (c[i].dst_addr < d->base || c[i].dst_addr + c[i].len > d->base + kvb_region_span(d))
		return "outside the consumer region";
	if ((c[i].src_addr - s->base) % s->block_stride != tp->src_off ||
	    (c[i].dst_addr - d->base) % d->block_stride != tp->dst_off)
		return "does not start at the TP offset of a slot";
	if (c[i].len > tp->len && (s->block_stride != tp->len || d->block_stride != tp->len))
		return "spans several slots with padding or a partial slice";
	if (i + 1 < n_c && c[i + 1].src_region == c[i].src_region &&
	    c[i + 1].dst_region == c[i].dst_region && c[i].src_addr + c[i].len == c[i + 1].src_addr &&
	    c[i].dst_addr + c[i].len == c[i + 1].dst_addr)
		return "the next copy continues it (not merged)";
	return NULL;
}

static void rt_trial(uint64_t seed, struct rt_stats *st)
{
	rng_t rng = {seed}, *r = &rng;
	kvb_err_t err;
	uint32_t n_groups = 1 + rng_below(r, RT_MAX_GROUPS);
	uint32_t n_layers = 1 + rng_below(r, RT_MAX_LAYERS);
	int32_t lgroup[RT_MAX_REGIONS], llayer[RT_MAX_REGIONS];
	uint32_t n = 0;

	/* logical regions: every (group, layer) with 1..3 occurrences */
	for (uint32_t g = 0; g < n_groups; g++)
		for (uint32_t l = 0; l < n_layers; l++)
			for (uint32_t k = 1 + rng_below(r, RT_MAX_PER); k > 0; k--) {
				lgroup[n] = (int32_t)g;
				llayer[n] = (int32_t)l;
				n++;
			}
	st->multi_group += n_groups > 1;
	st->multi_occ += n > n_groups * n_layers;

	/* array positions: shuffle, then give each (group, layer)'s occurrences
	 * the positions in increasing order, so occurrence o pairs with o */
	uint32_t spos[RT_MAX_REGIONS], dpos[RT_MAX_REGIONS];
	for (int side = 0; side < 2; side++) {
		uint32_t *pos = side ? dpos : spos, tmp[RT_MAX_REGIONS];
		for (uint32_t i = 0; i < n; i++)
			tmp[i] = i;
		rng_shuffle(r, tmp, n);
		/* tmp[i] = logical region at array index i; give occurrences in order */
		int32_t key_at[RT_MAX_REGIONS];
		for (uint32_t i = 0; i < n; i++)
			key_at[i] = lgroup[tmp[i]] * RT_MAX_LAYERS + llayer[tmp[i]];
		bool taken[RT_MAX_REGIONS] = {false};
		for (uint32_t k = 0; k < n; k++) {
			int32_t key = lgroup[k] * RT_MAX_LAYERS + llayer[k];
			for (uint32_t i = 0; i < n; i++) {
				if (!taken[i] && key_at[i] == key) {
					taken[i] = true;
					pos[k] = i;
					break;
				}
			}
		}
	}

	/* TP plan: whole blocks of one size everywhere, or a random slice */
	bool full = rng_below(r, 2);
	kvb_tp_plan_t tp;
	if (full)
		tp = tp_whole(1 + rng_below(r, 48));
	else
		tp = (kvb_tp_plan_t){.send = true, .src_off = rng_below(r, 8),
				     .dst_off = rng_below(r, 8), .len = 1 + rng_below(r, 24)};
	st->sliced += !full;

	uint32_t nb_src[RT_MAX_GROUPS], nb_dst[RT_MAX_GROUPS];
	for (uint32_t g = 0; g < n_groups; g++) {
		nb_src[g] = 4 + rng_below(r, 40);
		nb_dst[g] = 4 + rng_below(r, 40);
	}
	struct rt_side S, D;
	rt_side_build(r, &S, n, spos, lgroup, llayer, nb_src, tp.src_off + tp.len,
		      full ? tp.len : 0);
	rt_side_build(r, &D, n, dpos, lgroup, llayer, nb_dst, tp.dst_off + tp.len,
		      full ? tp.len : 0);

	for (uint32_t i = 0; i < n; i++)
		st->padded += (S.reg[i].block_bytes < S.reg[i].block_stride) +
			      (D.reg[i].block_bytes < D.reg[i].block_stride);
	uint32_t g_check = 0;
	ck_assert_int_eq(kvb_layout_check(S.reg, n, &g_check, &err), KVB_OK);
	ck_assert_uint_eq(g_check, n_groups);
	ck_assert_int_eq(kvb_layout_check(D.reg, n, &g_check, &err), KVB_OK);

	/* block lists: distinct ids, the producer lists 0..3 extra leading blocks */
	uint32_t *sids[RT_MAX_GROUPS], *dids[RT_MAX_GROUPS];
	kvb_block_list_t sg[RT_MAX_GROUPS], dg[RT_MAX_GROUPS];
	for (uint32_t g = 0; g < n_groups; g++) {
		uint32_t lim = nb_src[g] < nb_dst[g] ? nb_src[g] : nb_dst[g];
		uint32_t nd = rng_below(r, 5) == 0 ? 0 : rng_below(r, lim + 1);
		uint32_t ns = nd + rng_below(r, 4);
		if (ns > nb_src[g])
			ns = nb_src[g];
		sids[g] = g_new(uint32_t, ns + 1);
		dids[g] = g_new(uint32_t, nd + 1);
		gen_ids(r, sids[g], ns, nb_src[g]);
		gen_ids(r, dids[g], nd, nb_dst[g]);
		sg[g] = (kvb_block_list_t){sids[g], ns};
		dg[g] = (kvb_block_list_t){dids[g], nd};
		st->skipped += ns > nd;
		st->empty += nd == 0;
	}

	/* memory: random producer bytes, the same random background on both
	 * consumer copies so stray writes show */
	uint8_t *ref = g_malloc(D.size);
	rng_fill(r, S.buf, S.size);
	rng_fill(r, D.buf, D.size);
	memcpy(ref, D.buf, D.size);

	/* reference: block by block, region pair by region pair */
	uint64_t want_copies = 0, want_bytes = 0;
	for (uint32_t k = 0; k < n; k++) {
		const kvb_region_t *s = &S.reg[spos[k]], *d = &D.reg[dpos[k]];
		uint32_t g = (uint32_t)lgroup[k];
		uint32_t nd = dg[g].count, skip = sg[g].count - nd;
		bool dense = tp.len == s->block_stride && tp.len == d->block_stride;
		for (uint32_t i = 0; i < nd; i++) {
			uint32_t si = sids[g][skip + i], di = dids[g][i];
			uint64_t so = s->base - (uint64_t)(uintptr_t)S.buf + si * s->block_stride +
				      tp.src_off;
			uint64_t doff = d->base - (uint64_t)(uintptr_t)D.buf + di * d->block_stride +
					tp.dst_off;
			memcpy(ref + doff, S.buf + so, tp.len);
			want_bytes += tp.len;
			bool cont = i && si == sids[g][skip + i - 1] + 1 && di == dids[g][i - 1] + 1;
			if (!dense || !cont)
				want_copies++;
		}
	}

	kvb_copy_t *c = NULL;
	uint32_t n_c = 0;
	uint64_t total = 0;
	ck_assert_int_eq(kvb_copy_plan_build(S.reg, n, sg, D.reg, n, dg, n_groups, &tp, &c, &n_c,
					     &total, &err),
			 KVB_OK);
	ck_assert_uint_eq(n_c, want_copies);
	ck_assert_uint_eq(total, want_bytes);

	uint64_t sum = 0;
	uint32_t partner[RT_MAX_REGIONS];
	for (uint32_t k = 0; k < n; k++)
		partner[spos[k]] = dpos[k];
	for (uint32_t i = 0; i < n_c; i++) {
		const char *why = rt_copy_problem(c, n_c, i, S.reg, D.reg, n, partner, &tp);
		ck_assert_msg(why == NULL, "seed %" PRIu64 " copy %u of %u: %s", seed, i, n_c, why);
		st->merged += c[i].len > tp.len;
		memcpy((void *)(uintptr_t)c[i].dst_addr, (const void *)(uintptr_t)c[i].src_addr,
		       c[i].len);
		sum += c[i].len;
	}
	ck_assert_uint_eq(sum, total);
	ck_assert_msg(memcmp(ref, D.buf, D.size) == 0, "seed %" PRIu64 ": plan and reference differ",
		      seed);

	g_free(c);
	for (uint32_t g = 0; g < n_groups; g++) {
		g_free(sids[g]);
		g_free(dids[g]);
	}
	g_free(ref);
	g_free(S.buf);
	g_free(D.buf);
}

START_TEST(test_copy_plan_random)
{
	struct rt_stats st = {0};

	for (uint64_t seed = 1; seed <= 500; seed++)
		rt_trial(seed, &st);
	ck_assert_uint_gt(st.merged, 100);
	ck_assert_uint_gt(st.padded, 100);
	ck_assert_uint_gt(st.sliced, 100);
	ck_assert_uint_gt(st.skipped, 100);
	ck_assert_uint_gt(st.empty, 20);
	ck_assert_uint_gt(st.multi_group, 100);
	ck_assert_uint_gt(st.multi_occ, 100);
}
END_TEST

/* ---- slicing ----------------------------------------------------------- */

START_TEST(test_slice)
{
	const uint64_t S = KVB_DEFAULT_SLICE_SIZE, F = KVB_DEFAULT_FRAGMENT_LIMIT;

	ck_assert_uint_eq(kvb_slice_next_len(100, S, F), 100);
	ck_assert_uint_eq(kvb_slice_next_len(S, S, F), S);
	ck_assert_uint_eq(kvb_slice_next_len(S + F, S, F), S + F);
	ck_assert_uint_eq(kvb_slice_next_len(S + F + 1, S, F), S);
	ck_assert_uint_eq(kvb_slice_next_len(UINT64_MAX, S, F), S);
	ck_assert_uint_eq(kvb_slice_next_len(UINT64_MAX, UINT64_MAX - 1, 5), UINT64_MAX);
	ck_assert_uint_eq(kvb_slice_next_len(12345, 0, F), 12345);

	ck_assert_uint_eq(kvb_slice_count(0, S, F), 0);
	ck_assert_uint_eq(kvb_slice_count(1, S, F), 1);
	ck_assert_uint_eq(kvb_slice_count(S + F, S, F), 1);
	ck_assert_uint_eq(kvb_slice_count(S + F + 1, S, F), 2);
	ck_assert_uint_eq(kvb_slice_count(2 * S, S, F), 2);
	ck_assert_uint_eq(kvb_slice_count(2 * S + F, S, F), 2);
	ck_assert_uint_eq(kvb_slice_count(2 * S + F + 1, S, F), 3);
	ck_assert_uint_eq(kvb_slice_count(12345, 0, F), 1);
	ck_assert_uint_eq(kvb_slice_count(UINT64_MAX, UINT64_C(1) << 32, 0),
			  (UINT64_C(1) << 32));

	/* count matches the loop callers run (Mooncake's submitTransfer): every
	 * slice but the last is exactly the slice size; the last is at most
	 * slice + fragment, and more than the fragment limit unless it is alone */
	const uint64_t cfg[][3] = {
		{S, F, 2000000}, {4096, 0, 300000}, {1000, 999, 100000}, {7, 3, 3000}, {1, 0, 500},
	};
	for (size_t k = 0; k < G_N_ELEMENTS(cfg); k++) {
		for (uint64_t len = 0; len < cfg[k][2]; len += 1 + len / 7) {
			uint64_t left = len, count = 0;
			while (left) {
				uint64_t s = kvb_slice_next_len(left, cfg[k][0], cfg[k][1]);
				ck_assert_uint_gt(s, 0);
				ck_assert_uint_le(s, cfg[k][0] + cfg[k][1]);
				if (s != left)
					ck_assert_uint_eq(s, cfg[k][0]);
				else if (count)
					ck_assert_uint_gt(s, cfg[k][1]);
				left -= s;
				count++;
			}
			ck_assert_uint_eq(kvb_slice_count(len, cfg[k][0], cfg[k][1]), count);
		}
	}
}
END_TEST

Suite *kvb_suite_layout(void)
{
	Suite *s = suite_create("layout");
	TCase *tc = tcase_create("regions");
	tcase_add_test(tc, test_region_check);
	tcase_add_test(tc, test_region_span_range_location);
	tcase_add_test(tc, test_layout_check);
	tcase_add_test(tc, test_layout_check_interleaved);
	suite_add_tcase(s, tc);

	tc = tcase_create("blocks");
	tcase_add_test(tc, test_tail_align);
	tcase_add_test(tc, test_runs_build);
	tcase_add_test(tc, test_regions_pair);
	suite_add_tcase(s, tc);

	tc = tcase_create("copy_plan");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_copy_plan_dense_runs);
	tcase_add_test(tc, test_copy_plan_tail_and_padding);
	tcase_add_test(tc, test_copy_plan_tp_slice);
	tcase_add_test(tc, test_copy_plan_empty_and_nosend);
	tcase_add_test(tc, test_copy_plan_errors);
	tcase_add_test(tc, test_copy_plan_random);
	suite_add_tcase(s, tc);

	tc = tcase_create("slice");
	tcase_add_test(tc, test_slice);
	suite_add_tcase(s, tc);
	return s;
}
