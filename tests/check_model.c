/*
 * Model presets and per-rank cache layouts, and an end-to-end check of
 * kvb_model_layout + kvb_tp_plan + kvb_copy_plan_build moving a real,
 * head-tagged cache between unequal TP sizes.
 */
#include "config.h"

#include <stdint.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/model.h>

#include "suites.h"

#define ck_assert_err(rc, err, want, needle)                                                     \
	do {                                                                                     \
		ck_assert_int_eq((rc), (want));                                                  \
		ck_assert_int_eq((err).code, (want));                                            \
		ck_assert_msg((err).msg[0] != '\0', "empty error message");                     \
		ck_assert_msg(strstr((err).msg, (needle)) != NULL, "message '%s' lacks '%s'",     \
			      (err).msg, (needle));                                              \
	} while (0)

#define KIB 1024u

/* Shapes and bytes per token from ../shared/research/anchors.md 2.4. */
static const struct {
	const char *name;
	uint32_t layers, kv_heads, head_dim;
	uint64_t bytes_per_token;
} expected[] = {
	{"qwen2.5-0.5b", 24, 2, 64, 12 * KIB},
	{"qwen2.5-7b", 28, 4, 128, 56 * KIB},
	{"llama-3-8b", 32, 8, 128, 128 * KIB},
	{"llama-3.1-8b", 32, 8, 128, 128 * KIB},
	{"qwen3-8b", 36, 8, 128, 144 * KIB},
	{"llama-3-70b", 80, 8, 128, 320 * KIB},
	{"llama-2-7b", 32, 32, 128, 512 * KIB},
};

START_TEST(test_presets)
{
	const kvb_model_t *all = kvb_model_presets();
	size_t n = 0;

	ck_assert_ptr_nonnull(all);
	for (; all[n].name; n++) {
		ck_assert_uint_gt(all[n].layers, 0);
		ck_assert_uint_gt(all[n].kv_heads, 0);
		ck_assert_uint_gt(all[n].head_dim, 0);
		ck_assert_uint_eq(all[n].dtype_bytes, 2);
		ck_assert_ptr_eq(kvb_model_find(all[n].name), &all[n]); /* names unique */
		ck_assert_uint_eq(kvb_model_kv_bytes_per_token(&all[n]),
				  2ull * all[n].layers * all[n].kv_heads * all[n].head_dim * 2);
	}
	ck_assert_uint_ge(n, G_N_ELEMENTS(expected));

	for (size_t i = 0; i < G_N_ELEMENTS(expected); i++) {
		const kvb_model_t *m = kvb_model_find(expected[i].name);
		ck_assert_msg(m != NULL, "preset %s missing", expected[i].name);
		ck_assert_str_eq(m->name, expected[i].name);
		ck_assert_uint_eq(m->layers, expected[i].layers);
		ck_assert_uint_eq(m->kv_heads, expected[i].kv_heads);
		ck_assert_uint_eq(m->head_dim, expected[i].head_dim);
		ck_assert_uint_eq(m->dtype_bytes, 2);
		ck_assert_uint_eq(kvb_model_kv_bytes_per_token(m), expected[i].bytes_per_token);
	}
}
END_TEST

START_TEST(test_find)
{
	const kvb_model_t *m = kvb_model_find("Qwen2.5-7B");
	ck_assert_ptr_nonnull(m);
	ck_assert_str_eq(m->name, "qwen2.5-7b");
	ck_assert_ptr_eq(kvb_model_find("LLAMA-3-70b"), kvb_model_find("llama-3-70b"));

	const kvb_model_t *a = kvb_model_find("llama-3.1-8b"), *b = kvb_model_find("llama-3-8b");
	ck_assert_ptr_nonnull(a);
	ck_assert_ptr_nonnull(b);
	ck_assert_uint_eq(kvb_model_kv_bytes_per_token(a), kvb_model_kv_bytes_per_token(b));

	ck_assert_ptr_null(kvb_model_find("qwen2.5"));
	ck_assert_ptr_null(kvb_model_find("qwen2.5-7b "));
	ck_assert_ptr_null(kvb_model_find(""));
	ck_assert_ptr_null(kvb_model_find(NULL));
	ck_assert_uint_eq(kvb_model_kv_bytes_per_token(NULL), 0);
}
END_TEST

START_TEST(test_layout)
{
	kvb_err_t err;
	const kvb_model_t *m = kvb_model_find("qwen2.5-0.5b");
	kvb_region_t r[80];
	uint32_t n_groups = 0;

	/* TP 1: both heads, 16 tokens: 2 x 16 x 2 x 64 x 2 = 8192 bytes per block */
	uint64_t total = kvb_model_layout(m, 1, 16, 10, 0x100000, r, &err);
	ck_assert_uint_eq(total, 24ull * 10 * 8192);
	for (uint32_t i = 0; i < 24; i++) {
		ck_assert_uint_eq(r[i].base, 0x100000 + (uint64_t)i * 10 * 8192);
		ck_assert_uint_eq(r[i].block_stride, 8192);
		ck_assert_uint_eq(r[i].block_bytes, 8192);
		ck_assert_uint_eq(r[i].num_blocks, 10);
		ck_assert_int_eq(r[i].layer, (int32_t)i);
		ck_assert_int_eq(r[i].group, 0);
		ck_assert_int_eq(r[i].mem_kind, KVB_MEM_HOST);
		ck_assert_int_eq(r[i].device, -1);
	}
	ck_assert_uint_eq(r[23].base + kvb_region_span(&r[23]), 0x100000 + total);
	ck_assert_int_eq(kvb_layout_check(r, 24, &n_groups, &err), KVB_OK);
	ck_assert_uint_eq(n_groups, 1);
	/* the blocks of one token position add up to the model's bytes per token */
	uint64_t sum = 0;
	for (uint32_t i = 0; i < 24; i++)
		sum += r[i].block_bytes;
	ck_assert_uint_eq(sum / 16, kvb_model_kv_bytes_per_token(m));

	/* TP 2: one head per rank; TP 4: the 2 heads are replicated, still one */
	ck_assert_uint_eq(kvb_model_layout(m, 2, 16, 10, 0, r, &err), 24ull * 10 * 4096);
	ck_assert_uint_eq(r[5].block_bytes, 4096);
	ck_assert_uint_eq(kvb_model_layout(m, 4, 16, 10, 0, r, &err), 24ull * 10 * 4096);
	ck_assert_uint_eq(r[5].block_bytes, 4096);
	ck_assert_uint_eq(r[5].base, 5ull * 10 * 4096);

	/* llama-2-7b at TP 8: 4 heads per rank x 32 tokens x 2 x 128 x 2 */
	m = kvb_model_find("llama-2-7b");
	ck_assert_uint_eq(kvb_model_layout(m, 8, 32, 100, 0x1000, r, &err),
			  32ull * 100 * 65536);
	ck_assert_uint_eq(r[31].block_bytes, 65536);
	ck_assert_int_eq(kvb_layout_check(r, 32, NULL, &err), KVB_OK);
}
END_TEST

START_TEST(test_layout_errors)
{
	kvb_err_t err;
	kvb_region_t r[80];
	const kvb_model_t *m = kvb_model_find("llama-3-8b");

	kvb_err_clear(&err);
	ck_assert_uint_eq(kvb_model_layout(m, 3, 16, 10, 0, r, &err), 0);
	ck_assert_err(err.code, err, KVB_ERR_LAYOUT, "tp size 3");
	ck_assert_uint_eq(kvb_model_layout(m, 12, 16, 10, 0, r, &err), 0);
	ck_assert_err(err.code, err, KVB_ERR_LAYOUT, "12");
	ck_assert_uint_eq(kvb_model_layout(m, 0, 16, 10, 0, r, &err), 0);
	ck_assert_err(err.code, err, KVB_ERR_INVALID, "tp_size 0");
	ck_assert_uint_eq(kvb_model_layout(m, 1, 0, 10, 0, r, &err), 0);
	ck_assert_err(err.code, err, KVB_ERR_INVALID, "block_tokens 0");
	ck_assert_uint_eq(kvb_model_layout(m, 1, 16, 0, 0, r, &err), 0);
	ck_assert_err(err.code, err, KVB_ERR_INVALID, "num_blocks 0");
	ck_assert_uint_eq(kvb_model_layout(m, 1, 16, 10, 0, NULL, &err), 0);
	ck_assert_err(err.code, err, KVB_ERR_INVALID, "NULL");
	ck_assert_uint_eq(kvb_model_layout(NULL, 1, 16, 10, 0, r, &err), 0);
	ck_assert_err(err.code, err, KVB_ERR_INVALID, "NULL");
	/* the cache would wrap the address space */
	ck_assert_uint_eq(kvb_model_layout(m, 1, 16, 10, UINT64_MAX - 4096, r, &err), 0);
	ck_assert_err(err.code, err, KVB_ERR_INVALID, "overflows");
	ck_assert_uint_eq(kvb_model_layout(m, 1, UINT32_MAX, UINT32_MAX, 0, r, &err), 0);
	ck_assert_err(err.code, err, KVB_ERR_INVALID, "4294967295");
	kvb_model_t zero = {"zero", 4, 0, 128, 2, 1.0, 512};
	ck_assert_uint_eq(kvb_model_layout(&zero, 1, 16, 10, 0, r, &err), 0);
	ck_assert_err(err.code, err, KVB_ERR_INVALID, "kv_heads 0");
	ck_assert_uint_eq(kvb_model_layout(m, 3, 16, 10, 0, r, NULL), 0);
}
END_TEST

/*
 * A tiny model's cache on P_tp producer ranks, moved to D_tp consumer ranks
 * with the TP plan and copy plans of every (p, d), for several head counts.
 * Producer bytes are tagged by (layer, block, head, byte); each consumer
 * block that was asked for must end up with exactly its heads' bytes,
 * written once, and every other byte must stay untouched.
 */
static uint8_t cache_tag(uint32_t layer, uint32_t block, uint64_t head, uint64_t byte)
{
	uint32_t h = layer * 2654435761u ^ block * 40503u ^ (uint32_t)head * 9973u ^
		     (uint32_t)byte * 131u;
	return (uint8_t)(h ^ (h >> 8) ^ (h >> 16) ^ 0x5a);
}

static void e2e_run(uint32_t heads, uint32_t p_tp, uint32_t d_tp)
{
	const kvb_model_t m = {"tiny", 3, heads, 4, 2, 1.0, 64};
	const uint32_t block_tokens = 2, nb = 12;
	const uint32_t p_ids[] = {9, 10, 11, 0, 1, 5};   /* D has the first one cached */
	const uint32_t d_ids[] = {2, 3, 4, 5, 9};
	const kvb_block_list_t pg = {p_ids, 6}, dg = {d_ids, 5};
	kvb_region_t pr[8][3], dr[8][3];
	uint8_t *pbuf[8], *dbuf[8], *wcount[8];
	uint64_t ptotal = 0, dtotal = 0;
	kvb_err_t err;

	for (uint32_t p = 0; p < p_tp; p++) {
		ptotal = kvb_model_layout(&m, p_tp, block_tokens, nb, 0, pr[p], &err);
		ck_assert_uint_gt(ptotal, 0);
		pbuf[p] = g_malloc(ptotal);
		ck_assert_uint_eq(kvb_model_layout(&m, p_tp, block_tokens, nb,
						   (uint64_t)(uintptr_t)pbuf[p], pr[p], &err),
				  ptotal);
		uint64_t first = (uint64_t)p * heads / p_tp, bph = pr[p][0].block_bytes /
								      (p_tp >= heads ? 1 : heads / p_tp);
		for (uint32_t l = 0; l < m.layers; l++)
			for (uint32_t b = 0; b < nb; b++)
				for (uint64_t i = 0; i < pr[p][l].block_bytes; i++)
					pbuf[p][(pr[p][l].base - (uint64_t)(uintptr_t)pbuf[p]) +
						b * pr[p][l].block_stride + i] =
						cache_tag(l, b, first + i / bph, i % bph);
	}
	for (uint32_t d = 0; d < d_tp; d++) {
		dtotal = kvb_model_layout(&m, d_tp, block_tokens, nb, 0, dr[d], &err);
		dbuf[d] = g_malloc(dtotal);
		wcount[d] = g_malloc0(dtotal);
		memset(dbuf[d], 0xEE, dtotal);
		kvb_model_layout(&m, d_tp, block_tokens, nb, (uint64_t)(uintptr_t)dbuf[d], dr[d],
				 &err);
	}

	for (uint32_t p = 0; p < p_tp; p++) {
		for (uint32_t d = 0; d < d_tp; d++) {
			kvb_tp_side_t ps = {p_tp, p, pr[p][0].block_bytes};
			kvb_tp_side_t ds = {d_tp, d, dr[d][0].block_bytes};
			kvb_tp_plan_t tp;
			kvb_copy_t *c = NULL;
			uint32_t n = 0;
			uint64_t total = 0;
			ck_assert_int_eq(kvb_tp_plan(&ps, &ds, heads, &tp, &err), KVB_OK);
			ck_assert_int_eq(kvb_copy_plan_build(pr[p], m.layers, &pg, dr[d], m.layers,
							     &dg, 1, &tp, &c, &n, &total, &err),
					 KVB_OK);
			ck_assert_uint_eq(total, tp.send ? tp.len * 5 * m.layers : 0);
			/* whole blocks on both sides coalesce into runs: 3 per layer */
			if (tp.send && tp.len == pr[p][0].block_stride &&
			    tp.len == dr[d][0].block_stride)
				ck_assert_uint_eq(n, 3 * m.layers);
			for (uint32_t i = 0; i < n; i++) {
				uint64_t off = c[i].dst_addr - (uint64_t)(uintptr_t)dbuf[d];
				ck_assert_uint_le(off + c[i].len, dtotal);
				memcpy(dbuf[d] + off, (const void *)(uintptr_t)c[i].src_addr, c[i].len);
				for (uint64_t k = 0; k < c[i].len; k++)
					wcount[d][off + k]++;
			}
			g_free(c);
		}
	}

	for (uint32_t d = 0; d < d_tp; d++) {
		uint64_t first = (uint64_t)d * heads / d_tp;
		uint64_t bph = dr[d][0].block_bytes / (d_tp >= heads ? 1 : heads / d_tp);
		for (uint32_t l = 0; l < m.layers; l++) {
			for (uint32_t b = 0; b < nb; b++) {
				/* which producer block fills consumer block b, if any */
				int32_t src_block = -1;
				for (uint32_t k = 0; k < 5; k++)
					if (d_ids[k] == b)
						src_block = (int32_t)p_ids[k + 1];
				uint64_t at = dr[d][l].base - (uint64_t)(uintptr_t)dbuf[d] +
					      b * dr[d][l].block_stride;
				for (uint64_t i = 0; i < dr[d][l].block_bytes; i++) {
					uint8_t want = src_block < 0
							       ? 0xEE
							       : cache_tag(l, (uint32_t)src_block,
									   first + i / bph, i % bph);
					unsigned want_w = src_block < 0 ? 0 : 1;
					if (wcount[d][at + i] != want_w || dbuf[d][at + i] != want)
						ck_abort_msg("H %u P_tp %u D_tp %u: D%u layer %u block %u "
							     "byte %u: 0x%02x written %u times, want 0x%02x "
							     "%u times",
							     heads, p_tp, d_tp, d, l, b, (unsigned)i,
							     dbuf[d][at + i], wcount[d][at + i], want, want_w);
				}
			}
		}
		g_free(dbuf[d]);
		g_free(wcount[d]);
	}
	for (uint32_t p = 0; p < p_tp; p++)
		g_free(pbuf[p]);
}

START_TEST(test_e2e_unequal_tp)
{
	const uint32_t sizes[] = {1, 2, 4, 8};
	const uint32_t heads[] = {1, 2, 4, 8};

	for (size_t h = 0; h < G_N_ELEMENTS(heads); h++)
		for (size_t a = 0; a < G_N_ELEMENTS(sizes); a++)
			for (size_t b = 0; b < G_N_ELEMENTS(sizes); b++)
				e2e_run(heads[h], sizes[a], sizes[b]);
}
END_TEST

/* Separate K and V regions: two per layer, half a packed block each, the
 * same layer index (they pair by occurrence); a valid layout whose bytes
 * per token equal the packed one's. */
START_TEST(test_layout_split)
{
	kvb_err_t err;
	const kvb_model_t *m = kvb_model_find("qwen2.5-0.5b");
	kvb_region_t packed[24], r[48];
	uint32_t n = 0, n_groups = 0;
	uint64_t total = kvb_model_layout_kv(m, KVB_KV_SPLIT, 1, 16, 10, 0x100000, r, &n, &err);
	ck_assert_uint_eq(n, 48);
	ck_assert_uint_eq(total, kvb_model_layout(m, 1, 16, 10, 0x100000, packed, &err));
	for (uint32_t i = 0; i < 48; i++) {
		ck_assert_uint_eq(r[i].base, 0x100000 + (uint64_t)i * 10 * 4096);
		ck_assert_uint_eq(r[i].block_stride, 4096);
		ck_assert_uint_eq(r[i].block_bytes, 4096);
		ck_assert_int_eq(r[i].layer, (int32_t)(i / 2));
	}
	ck_assert_int_eq(kvb_layout_check(r, 48, &n_groups, &err), KVB_OK);
	uint64_t sum = 0;
	for (uint32_t i = 0; i < 48; i++)
		sum += r[i].block_bytes;
	ck_assert_uint_eq(sum / 16, kvb_model_kv_bytes_per_token(m));
	/* K pairs with K and V with V between two split layouts */
	kvb_region_t r2[48];
	ck_assert_uint_gt(kvb_model_layout_kv(m, KVB_KV_SPLIT, 1, 16, 10, 0x900000000ull, r2, &n, &err), 0);
	uint32_t pair[48];
	ck_assert_int_eq(kvb_regions_pair(r, 48, r2, 48, pair, &err), KVB_OK);
	for (uint32_t i = 0; i < 48; i++)
		ck_assert_uint_eq(pair[i], i);
	/* packed is kvb_model_layout */
	ck_assert_uint_eq(kvb_model_layout_kv(m, KVB_KV_PACKED, 1, 16, 10, 0, r, &n, &err), total);
	ck_assert_uint_eq(n, 24);
	kvb_kv_layout_t kv;
	ck_assert_int_eq(kvb_kv_layout_parse("split", &kv), KVB_OK);
	ck_assert_int_eq(kv, KVB_KV_SPLIT);
	ck_assert_int_eq(kvb_kv_layout_parse("interleaved", &kv), KVB_ERR_INVALID);
	ck_assert_str_eq(kvb_kv_layout_name(KVB_KV_PACKED), "packed");
}
END_TEST

Suite *kvb_suite_model(void)
{
	Suite *s = suite_create("model");
	TCase *tc = tcase_create("presets");
	tcase_add_test(tc, test_presets);
	tcase_add_test(tc, test_find);
	suite_add_tcase(s, tc);

	tc = tcase_create("cache_layout");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_layout);
	tcase_add_test(tc, test_layout_errors);
	tcase_add_test(tc, test_layout_split);
	tcase_add_test(tc, test_e2e_unequal_tp);
	suite_add_tcase(s, tc);
	return s;
}
