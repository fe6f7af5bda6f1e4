/* Wire codec: round trips, and every malformed frame rejected with a reason. */
#include "config.h"

#include <string.h>

#include <check.h>
#include <glib.h>

#include "../src/core/kvb_wire.h"
#include "suites.h"

static void sample_pull(kvb_wire_pull_t *p, kvb_region_t *regs, kvb_rkey_t *keys, kvb_block_list_t *groups,
			uint32_t *ids)
{
	memset(p, 0, sizeof(*p));
	g_strlcpy(p->transfer_id, "xfer-123", sizeof(p->transfer_id));
	g_strlcpy(p->request_id, "cmpl-9", sizeof(p->request_id));
	p->tp_size = 4;
	p->tp_rank = 3;
	p->n_nics = 8;
	p->n_regions = 2;
	for (uint32_t i = 0; i < 2; i++) {
		regs[i] = (kvb_region_t){0x7f0000000000ull + i * 0x100000, 8192, 4096, 128, (int32_t)i, 0,
					 KVB_MEM_CUDA, 3};
		keys[i].len = 16;
		for (uint32_t k = 0; k < 16; k++)
			keys[i].bytes[k] = (uint8_t)(i * 16 + k);
	}
	for (uint32_t i = 0; i < 5; i++)
		ids[i] = 10 + i * 3;
	groups[0] = (kvb_block_list_t){ids, 5};
	p->regions = regs;
	p->rkeys = keys;
	p->n_groups = 1;
	p->groups = groups;
}

START_TEST(test_pull_roundtrip)
{
	kvb_region_t regs[2];
	kvb_rkey_t keys[2];
	kvb_block_list_t groups[1];
	uint32_t ids[5];
	kvb_wire_pull_t in, out;
	sample_pull(&in, regs, keys, groups, ids);
	GByteArray *buf = g_byte_array_new();
	ck_assert_int_eq(kvb_wire_encode_pull(buf, &in, NULL), KVB_OK);
	kvb_wire_type_t type;
	ck_assert_int_eq(kvb_wire_peek(buf->data, buf->len, &type, NULL), KVB_OK);
	ck_assert_int_eq(type, KVB_WIRE_PULL);
	ck_assert_int_eq(kvb_wire_decode_pull(buf->data, buf->len, &out, NULL), KVB_OK);
	ck_assert_str_eq(out.transfer_id, "xfer-123");
	ck_assert_str_eq(out.request_id, "cmpl-9");
	ck_assert_uint_eq(out.tp_size, 4);
	ck_assert_uint_eq(out.tp_rank, 3);
	ck_assert_uint_eq(out.n_nics, 8);
	ck_assert_uint_eq(out.n_regions, 2);
	for (int i = 0; i < 2; i++) {
		ck_assert_uint_eq(out.regions[i].base, regs[i].base);
		ck_assert_uint_eq(out.regions[i].block_stride, regs[i].block_stride);
		ck_assert_uint_eq(out.regions[i].block_bytes, regs[i].block_bytes);
		ck_assert_uint_eq(out.regions[i].num_blocks, regs[i].num_blocks);
		ck_assert_int_eq(out.regions[i].layer, regs[i].layer);
		ck_assert_int_eq(out.regions[i].group, regs[i].group);
		ck_assert_int_eq(out.regions[i].mem_kind, regs[i].mem_kind);
		ck_assert_int_eq(out.regions[i].device, regs[i].device);
	}
	ck_assert_uint_eq(out.rkeys[1].len, 16);
	ck_assert_mem_eq(out.rkeys[1].bytes, keys[1].bytes, 16);
	ck_assert_uint_eq(out.n_groups, 1);
	ck_assert_uint_eq(out.groups[0].count, 5);
	ck_assert_mem_eq(out.groups[0].ids, ids, sizeof(ids));
	ck_assert_uint_eq(out.n_blocks, 5);
	char tid[KVB_ID_MAX], rid[KVB_ID_MAX];
	ck_assert_int_eq(kvb_wire_peek_ids(buf->data, buf->len, tid, rid), KVB_OK);
	ck_assert_str_eq(tid, "xfer-123");
	ck_assert_str_eq(rid, "cmpl-9");
	kvb_wire_pull_clear(&out);
	g_byte_array_unref(buf);
}
END_TEST

/* Regions without rkeys (the TCP transport's) and a short block list: the
 * smallest PULL the hw backend sends must decode. */
START_TEST(test_pull_without_rkeys)
{
	kvb_region_t regs[24];
	kvb_rkey_t keys[24];
	uint32_t id = 7;
	kvb_block_list_t group = {&id, 1};
	kvb_wire_pull_t in, out;
	memset(&in, 0, sizeof(in));
	memset(keys, 0, sizeof(keys));
	g_strlcpy(in.transfer_id, "t", sizeof(in.transfer_id));
	g_strlcpy(in.request_id, "r", sizeof(in.request_id));
	in.tp_size = 1;
	in.n_nics = 1;
	in.n_regions = 24;
	for (uint32_t i = 0; i < 24; i++)
		regs[i] = (kvb_region_t){0x1000 + i * 0x10000ull, 4096, 4096, 16, (int32_t)i, 0, KVB_MEM_HOST, -1};
	in.regions = regs;
	in.rkeys = keys;
	in.n_groups = 1;
	in.groups = &group;
	GByteArray *buf = g_byte_array_new();
	ck_assert_int_eq(kvb_wire_encode_pull(buf, &in, NULL), KVB_OK);
	kvb_err_t err;
	ck_assert_msg(kvb_wire_decode_pull(buf->data, buf->len, &out, &err) == KVB_OK, "%s", err.msg);
	ck_assert_uint_eq(out.n_regions, 24);
	ck_assert_uint_eq(out.regions[23].base, regs[23].base);
	ck_assert_uint_eq(out.rkeys[23].len, 0);
	ck_assert_uint_eq(out.n_blocks, 1);
	kvb_wire_pull_clear(&out);
	g_byte_array_unref(buf);
}
END_TEST

START_TEST(test_notice_roundtrip)
{
	kvb_wire_notice_t in, out;
	memset(&in, 0, sizeof(in));
	in.type = KVB_WIRE_DONE;
	g_strlcpy(in.transfer_id, "t", sizeof(in.transfer_id));
	g_strlcpy(in.request_id, "r", sizeof(in.request_id));
	in.status = KVB_ERR_EXPIRED;
	in.bytes = 1ull << 40;
	g_strlcpy(in.reason, "lease \"expired\"", sizeof(in.reason));
	GByteArray *buf = g_byte_array_new();
	ck_assert_int_eq(kvb_wire_encode_notice(buf, &in, NULL), KVB_OK);
	ck_assert_int_eq(kvb_wire_decode_notice(buf->data, buf->len, &out, NULL), KVB_OK);
	ck_assert_int_eq(out.type, KVB_WIRE_DONE);
	ck_assert_int_eq(out.status, KVB_ERR_EXPIRED);
	ck_assert_uint_eq(out.bytes, 1ull << 40);
	ck_assert_str_eq(out.reason, "lease \"expired\"");
	for (int t = KVB_WIRE_STARTED; t <= KVB_WIRE_HEARTBEAT; t += 1) {
		if (t == KVB_WIRE_DONE)
			continue;
		g_byte_array_set_size(buf, 0);
		in.type = (kvb_wire_type_t)t;
		ck_assert_int_eq(kvb_wire_encode_notice(buf, &in, NULL), KVB_OK);
		ck_assert_uint_eq(buf->len, KVB_WIRE_HEADER_LEN + 2 + 1 + 2 + 1);
		ck_assert_int_eq(kvb_wire_decode_notice(buf->data, buf->len, &out, NULL), KVB_OK);
		ck_assert_int_eq(out.type, t);
	}
	in.type = KVB_WIRE_PULL;
	ck_assert_int_eq(kvb_wire_encode_notice(buf, &in, NULL), KVB_ERR_INVALID);
	g_byte_array_unref(buf);
}
END_TEST

static GByteArray *encoded_pull(void)
{
	kvb_region_t regs[2];
	kvb_rkey_t keys[2];
	kvb_block_list_t groups[1];
	uint32_t ids[5];
	kvb_wire_pull_t in;
	sample_pull(&in, regs, keys, groups, ids);
	GByteArray *buf = g_byte_array_new();
	ck_assert_int_eq(kvb_wire_encode_pull(buf, &in, NULL), KVB_OK);
	return buf;
}

static void expect_bad(const GByteArray *buf, const char *needle)
{
	kvb_wire_pull_t out;
	kvb_err_t err;
	kvb_err_clear(&err);
	ck_assert_int_eq(kvb_wire_decode_pull(buf->data, buf->len, &out, &err), KVB_ERR_PROTOCOL);
	ck_assert_msg(strstr(err.msg, needle), "message '%s' lacks '%s'", err.msg, needle);
	ck_assert_ptr_null(out.regions);
	ck_assert_ptr_null(out.ids);
}

static void set_u32(GByteArray *b, size_t at, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		b->data[at + i] = (uint8_t)(v >> (8 * i));
}

START_TEST(test_malformed_header)
{
	GByteArray *b = encoded_pull();
	b->data[0] = 'X';
	expect_bad(b, "magic");
	b->data[0] = 'K';
	b->data[4] = 2;
	expect_bad(b, "version");
	b->data[4] = 1;
	b->data[5] = 9;
	expect_bad(b, "unknown message type");
	b->data[5] = 1;
	b->data[6] = 1;
	expect_bad(b, "reserved");
	b->data[6] = 0;
	set_u32(b, 8, b->len); /* announces more than it carries */
	expect_bad(b, "payload");
	g_byte_array_unref(b);

	kvb_err_t err;
	ck_assert_int_eq(kvb_wire_peek("KVBW", 4, NULL, &err), KVB_ERR_PROTOCOL);
	ck_assert_ptr_nonnull(strstr(err.msg, "shorter"));
	ck_assert_int_eq(kvb_wire_peek(NULL, 0, NULL, NULL), KVB_ERR_PROTOCOL);
}
END_TEST

/* Every truncation of a valid frame (with the header patched to match) is
 * rejected as truncated, and nothing leaks. */
START_TEST(test_every_truncation)
{
	GByteArray *b = encoded_pull();
	guint full = b->len;
	for (guint len = KVB_WIRE_HEADER_LEN; len < full; len++) {
		GByteArray *t = g_byte_array_new();
		g_byte_array_append(t, b->data, len);
		set_u32(t, 8, len - KVB_WIRE_HEADER_LEN);
		kvb_wire_pull_t out;
		kvb_err_t err;
		kvb_err_clear(&err);
		int rc = kvb_wire_decode_pull(t->data, t->len, &out, &err);
		ck_assert_msg(rc == KVB_ERR_PROTOCOL, "length %u accepted", len);
		ck_assert_msg(err.msg[0], "length %u: empty message", len);
		g_byte_array_unref(t);
	}
	/* and a trailing byte is rejected too */
	g_byte_array_append(b, (const guint8 *)"x", 1);
	set_u32(b, 8, b->len - KVB_WIRE_HEADER_LEN);
	expect_bad(b, "trailing");
	g_byte_array_unref(b);
}
END_TEST

/* Hostile counts must not make the decoder allocate or read past the frame. */
START_TEST(test_hostile_counts)
{
	GByteArray *b = encoded_pull();
	/* payload: tid(2+8) rid(2+6) tp_size tp_rank n_nics n_regions */
	size_t n_regions_at = KVB_WIRE_HEADER_LEN + 10 + 8 + 12;
	set_u32(b, n_regions_at, 0xffffffffu);
	expect_bad(b, "n_regions");
	set_u32(b, n_regions_at, 3);
	expect_bad(b, "truncated");
	set_u32(b, n_regions_at, 2);
	/* rkey length of region 0 */
	size_t rkey_len_at = n_regions_at + 4 + 8 * 3 + 4 * 5;
	set_u32(b, rkey_len_at, KVB_RKEY_MAX + 1);
	expect_bad(b, "rkey");
	set_u32(b, rkey_len_at, 16);
	/* mem_kind of region 0 */
	set_u32(b, rkey_len_at - 8, 7);
	expect_bad(b, "mem_kind");
	set_u32(b, rkey_len_at - 8, KVB_MEM_CUDA);
	/* group count */
	size_t groups_at = b->len - 4 * 5 - 4 - 4;
	set_u32(b, groups_at, KVB_MAX_GROUPS + 1);
	expect_bad(b, "n_groups");
	set_u32(b, groups_at, 1);
	set_u32(b, groups_at + 4, KVB_MAX_BLOCKS_PER_GROUP + 1);
	expect_bad(b, "blocks");
	set_u32(b, groups_at + 4, 1000);
	expect_bad(b, "truncated");
	set_u32(b, groups_at + 4, 5);
	kvb_wire_pull_t out;
	ck_assert_int_eq(kvb_wire_decode_pull(b->data, b->len, &out, NULL), KVB_OK);
	kvb_wire_pull_clear(&out);
	g_byte_array_unref(b);
}
END_TEST

START_TEST(test_bad_strings_and_status)
{
	kvb_wire_notice_t n;
	memset(&n, 0, sizeof(n));
	n.type = KVB_WIRE_DONE;
	strcpy(n.transfer_id, "ab");
	strcpy(n.request_id, "cd");
	GByteArray *b = g_byte_array_new();
	ck_assert_int_eq(kvb_wire_encode_notice(b, &n, NULL), KVB_OK);
	kvb_wire_notice_t out;
	kvb_err_t err;
	/* NUL inside the transfer id */
	b->data[KVB_WIRE_HEADER_LEN + 2] = '\0';
	ck_assert_int_eq(kvb_wire_decode_notice(b->data, b->len, &out, &err), KVB_ERR_PROTOCOL);
	ck_assert_ptr_nonnull(strstr(err.msg, "NUL"));
	b->data[KVB_WIRE_HEADER_LEN + 2] = 'a';
	/* string longer than the id limit */
	b->data[KVB_WIRE_HEADER_LEN] = 0xff;
	b->data[KVB_WIRE_HEADER_LEN + 1] = 0xff;
	ck_assert_int_eq(kvb_wire_decode_notice(b->data, b->len, &out, &err), KVB_ERR_PROTOCOL);
	ck_assert_ptr_nonnull(strstr(err.msg, "limit"));
	b->data[KVB_WIRE_HEADER_LEN] = 2;
	b->data[KVB_WIRE_HEADER_LEN + 1] = 0;
	/* status outside the kvbridge range */
	set_u32(b, KVB_WIRE_HEADER_LEN + 8, 5);
	ck_assert_int_eq(kvb_wire_decode_notice(b->data, b->len, &out, &err), KVB_ERR_PROTOCOL);
	ck_assert_ptr_nonnull(strstr(err.msg, "status"));
	set_u32(b, KVB_WIRE_HEADER_LEN + 8, (uint32_t)(KVB_STATUS_MIN - 1));
	ck_assert_int_eq(kvb_wire_decode_notice(b->data, b->len, &out, &err), KVB_ERR_PROTOCOL);
	set_u32(b, KVB_WIRE_HEADER_LEN + 8, (uint32_t)KVB_ERR_TIMEOUT);
	ck_assert_int_eq(kvb_wire_decode_notice(b->data, b->len, &out, &err), KVB_OK);
	ck_assert_int_eq(out.status, KVB_ERR_TIMEOUT);
	/* a PULL frame is not a notice, and vice versa */
	kvb_wire_pull_t p;
	ck_assert_int_eq(kvb_wire_decode_pull(b->data, b->len, &p, &err), KVB_ERR_PROTOCOL);
	GByteArray *pb = encoded_pull();
	ck_assert_int_eq(kvb_wire_decode_notice(pb->data, pb->len, &out, &err), KVB_ERR_PROTOCOL);
	g_byte_array_unref(pb);
	g_byte_array_unref(b);
}
END_TEST

START_TEST(test_encode_limits)
{
	kvb_wire_notice_t n;
	memset(&n, 0, sizeof(n));
	n.type = KVB_WIRE_STARTED;
	memset(n.transfer_id, 'a', KVB_ID_MAX - 1);
	n.transfer_id[KVB_ID_MAX - 1] = '\0';
	GByteArray *b = g_byte_array_new();
	ck_assert_int_eq(kvb_wire_encode_notice(b, &n, NULL), KVB_OK);
	kvb_wire_notice_t out;
	ck_assert_int_eq(kvb_wire_decode_notice(b->data, b->len, &out, NULL), KVB_OK);
	ck_assert_uint_eq(strlen(out.transfer_id), KVB_ID_MAX - 1);
	/* a pull over the message limit is refused and leaves the buffer as it was */
	kvb_wire_pull_t p;
	memset(&p, 0, sizeof(p));
	strcpy(p.transfer_id, "t");
	strcpy(p.request_id, "r");
	p.n_groups = 2;
	kvb_block_list_t groups[2];
	uint32_t *ids = g_new0(uint32_t, KVB_MAX_BLOCKS_PER_GROUP);
	for (int g = 0; g < 2; g++)
		groups[g] = (kvb_block_list_t){ids, KVB_MAX_BLOCKS_PER_GROUP};
	p.groups = groups;
	guint before = b->len;
	kvb_err_t err;
	ck_assert_int_eq(kvb_wire_encode_pull(b, &p, &err), KVB_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "KVB_MSG_MAX"));
	ck_assert_uint_eq(b->len, before);
	g_free(ids);
	g_byte_array_unref(b);
}
END_TEST

/* Random bit flips never crash the decoder; whatever it accepts is sane. */
START_TEST(test_random_corruption)
{
	GByteArray *b = encoded_pull();
	GRand *rng = g_rand_new_with_seed(1234);
	for (int iter = 0; iter < 20000; iter++) {
		GByteArray *t = g_byte_array_new();
		g_byte_array_append(t, b->data, b->len);
		int flips = g_rand_int_range(rng, 1, 4);
		for (int f = 0; f < flips; f++) {
			guint at = (guint)g_rand_int_range(rng, 0, (gint32)t->len);
			t->data[at] ^= (uint8_t)(1u << g_rand_int_range(rng, 0, 8));
		}
		if (g_rand_boolean(rng))
			g_byte_array_set_size(t, (guint)g_rand_int_range(rng, 0, (gint32)t->len + 1));
		kvb_wire_pull_t out;
		if (kvb_wire_decode_pull(t->data, t->len, &out, NULL) == KVB_OK) {
			ck_assert_uint_le(out.n_regions, KVB_MAX_REGIONS);
			uint64_t total = 0;
			for (uint32_t g = 0; g < out.n_groups; g++)
				total += out.groups[g].count;
			ck_assert_uint_eq(total, out.n_blocks);
			kvb_wire_pull_clear(&out);
		}
		kvb_wire_notice_t n;
		kvb_wire_decode_notice(t->data, t->len, &n, NULL);
		g_byte_array_unref(t);
	}
	g_rand_free(rng);
	g_byte_array_unref(b);
}
END_TEST

Suite *kvb_suite_wire(void)
{
	Suite *s = suite_create("wire");
	TCase *tc = tcase_create("codec");
	tcase_add_test(tc, test_pull_roundtrip);
	tcase_add_test(tc, test_pull_without_rkeys);
	tcase_add_test(tc, test_notice_roundtrip);
	tcase_add_test(tc, test_malformed_header);
	tcase_add_test(tc, test_every_truncation);
	tcase_add_test(tc, test_hostile_counts);
	tcase_add_test(tc, test_bad_strings_and_status);
	tcase_add_test(tc, test_encode_limits);
	tcase_add_test(tc, test_random_corruption);
	tcase_set_timeout(tc, 120);
	suite_add_tcase(s, tc);
	return s;
}
