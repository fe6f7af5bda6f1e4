/*
 * The RDMA window-keys frame (src/backends/hw/kvb_rdma_window_wire.c): a
 * frame round-trips byte for byte, the lookup finds a range's key only for
 * slices inside it, and every rule is refused on both sides with the field
 * named and nothing allocated.
 */
#include "config.h"

#include <string.h>

#include <check.h>
#include <kvbridge/kvbridge.h>

#include "kvb_rdma_window_wire.h"
#include "suites.h"

static uint64_t ranges3[] = {0x10000, 0x1000, 0x11000, 0x800, 0x20000, 0x4000};
static uint32_t keys3[] = {0x101, 0x201, 0x102, 0x202, 0x103, 0x203};

static kvb_window_keys_t sample(void)
{
	kvb_window_keys_t w;
	memset(&w, 0, sizeof(w));
	g_strlcpy(w.transfer_id, "xfer-1", sizeof(w.transfer_id));
	g_strlcpy(w.request_id, "req-\xc3\xa9", sizeof(w.request_id));
	w.n_devices = 2;
	w.n_ranges = 3;
	w.ranges = ranges3;
	w.rkeys = keys3;
	return w;
}

START_TEST(test_window_roundtrip)
{
	kvb_window_keys_t w = sample(), d;
	GByteArray *out = g_byte_array_new();
	ck_assert_int_eq(kvb_window_keys_encode(out, &w, NULL), KVB_OK);
	ck_assert_uint_eq(out->len, KVB_WINDOW_HEADER_LEN + 6 + 6 + 3 * (16 + 8));
	ck_assert_uint_eq(out->data[0], 1);
	ck_assert_uint_eq(out->data[1], 2);
	ck_assert_int_eq(kvb_window_keys_decode(out->data, out->len, &d, NULL), KVB_OK);
	ck_assert_str_eq(d.transfer_id, "xfer-1");
	ck_assert_str_eq(d.request_id, "req-\xc3\xa9");
	ck_assert_uint_eq(d.n_ranges, 3);
	ck_assert_mem_eq(d.ranges, ranges3, sizeof(ranges3));
	ck_assert_mem_eq(d.rkeys, keys3, sizeof(keys3));
	/* lookups: inside a range, its key on that device; across or outside, 0 */
	ck_assert_uint_eq(kvb_window_keys_find(&d, 0x10000, 0x1000, 0), 0x101);
	ck_assert_uint_eq(kvb_window_keys_find(&d, 0x10800, 0x100, 1), 0x201);
	ck_assert_uint_eq(kvb_window_keys_find(&d, 0x11000, 0x800, 1), 0x202);
	ck_assert_uint_eq(kvb_window_keys_find(&d, 0x10f00, 0x200, 0), 0); /* spans two ranges */
	ck_assert_uint_eq(kvb_window_keys_find(&d, 0x11700, 0x200, 0), 0); /* runs past the end */
	ck_assert_uint_eq(kvb_window_keys_find(&d, 0xffff, 0x10, 0), 0);   /* starts before */
	ck_assert_uint_eq(kvb_window_keys_find(&d, 0x23fff, 1, 0), 0x103);
	ck_assert_uint_eq(kvb_window_keys_find(&d, 0x24000, 1, 0), 0);
	ck_assert_uint_eq(kvb_window_keys_find(&d, 0x20000, 0x10, 2), 0);  /* no such device */
	ck_assert_uint_eq(kvb_window_keys_find(&d, 0x20000, 0, 0), 0);
	kvb_window_keys_clear(&d);
	ck_assert_ptr_null(d.ranges);
	g_byte_array_unref(out);
}
END_TEST

static void refused(const GByteArray *f, const char *needle)
{
	kvb_window_keys_t d;
	kvb_err_t err;
	kvb_err_clear(&err);
	ck_assert_int_eq(kvb_window_keys_decode(f->data, f->len, &d, &err), KVB_ERR_PROTOCOL);
	ck_assert_msg(strstr(err.msg, needle), "'%s' does not name '%s'", err.msg, needle);
	ck_assert_ptr_null(d.ranges);
	ck_assert_ptr_null(d.rkeys);
}

START_TEST(test_window_refusals)
{
	kvb_window_keys_t w = sample();
	GByteArray *good = g_byte_array_new();
	ck_assert_int_eq(kvb_window_keys_encode(good, &w, NULL), KVB_OK);
	GByteArray *f = g_byte_array_new();
	/* every prefix is refused */
	for (guint cut = 0; cut < good->len; cut++) {
		g_byte_array_set_size(f, 0);
		g_byte_array_append(f, good->data, cut);
		refused(f, cut < KVB_WINDOW_HEADER_LEN ? "header" : "expected");
	}
	/* one byte too many */
	g_byte_array_set_size(f, 0);
	g_byte_array_append(f, good->data, good->len);
	g_byte_array_append(f, (const guint8 *)"x", 1);
	refused(f, "expected");
#define MUTATE(off, val, needle)                                                                   \
	do {                                                                                       \
		g_byte_array_set_size(f, 0);                                                       \
		g_byte_array_append(f, good->data, good->len);                                     \
		f->data[off] = (val);                                                              \
		refused(f, needle);                                                                \
	} while (0)
	MUTATE(0, 2, "version");
	MUTATE(1, 0, "devices");
	MUTATE(1, 65, "devices");
	MUTATE(2, 0, "transfer id");
	MUTATE(6, 0, "ranges");
	MUTATE(KVB_WINDOW_HEADER_LEN + 2, 0, "UTF-8");        /* a NUL in the transfer id */
	MUTATE(KVB_WINDOW_HEADER_LEN + 6 + 4, 0xff, "UTF-8"); /* a bad byte in the request id */
	/* range 1 starts inside range 0 */
	size_t r1 = KVB_WINDOW_HEADER_LEN + 12 + 24;
	MUTATE(r1 + 1, 0x00, "overlaps");
	/* range 2 of length 0 */
	size_t r2len = KVB_WINDOW_HEADER_LEN + 12 + 48 + 8;
	g_byte_array_set_size(f, 0);
	g_byte_array_append(f, good->data, good->len);
	memset(f->data + r2len, 0, 8);
	refused(f, "empty or wraps");
	/* a count of ranges past the limit */
	g_byte_array_set_size(f, 0);
	g_byte_array_append(f, good->data, good->len);
	f->data[6] = 0x01; f->data[7] = 0x00; f->data[8] = 0x01; f->data[9] = 0x00; /* 65537 */
	refused(f, "ranges");
	/* the encoder holds itself to the same rules */
	kvb_err_t err;
	uint64_t bad[] = {0x2000, 0x100, 0x1000, 0x100};
	w.n_ranges = 2;
	w.ranges = bad;
	g_byte_array_set_size(f, 0);
	ck_assert_int_eq(kvb_window_keys_encode(f, &w, &err), KVB_ERR_INVALID);
	ck_assert_uint_eq(f->len, 0);
	w = sample();
	w.transfer_id[0] = 0;
	ck_assert_int_eq(kvb_window_keys_encode(f, &w, &err), KVB_ERR_INVALID);
	ck_assert_uint_eq(f->len, 0);
	g_byte_array_unref(f);
	g_byte_array_unref(good);
}
END_TEST

Suite *kvb_suite_rdma_window_wire(void)
{
	Suite *s = suite_create("rdma_window_wire");
	TCase *tc = tcase_create("frame");
	tcase_add_test(tc, test_window_roundtrip);
	tcase_add_test(tc, test_window_refusals);
	suite_add_tcase(s, tc);
	return s;
}
