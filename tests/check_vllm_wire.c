/* vLLM side channel, Gen 0: MooncakeAgentMetadata byte for byte as msgspec
 * writes it, tolerant and strict decoding, replies and ZMQ envelopes. */
#include "config.h"

#include <string.h>

#include <check.h>
#include <glib.h>
#include <msgpack.h>

#include "kvb_vllm_wire.h"
#include "suites.h"

/*
 * The reference message, produced once with Python msgpack 1.2.4:
 *   msgpack.packb({"remote_hostname": "decoder-0.prefill.cluster.example.internal",
 *                  "remote_port": 15000, "request_ids": ["req-a", "b"],
 *                  "kv_caches_base_addr": [0x7f0000000000, 200, 4096],
 *                  "block_ids": [[1, 2, 300, 70000], []]})
 * (dict in that key order); msgspec 0.22.0 encoding the MooncakeAgentMetadata
 * Struct with the same values gives the same 155 bytes.  It covers fixstr and
 * str8, positive fixint, uint8, uint16, uint32 and uint64, and an empty list.
 */
static const uint8_t ref_msg[] = {
	0x85, 0xaf, 0x72, 0x65, 0x6d, 0x6f, 0x74, 0x65, 0x5f, 0x68, 0x6f, 0x73,
	0x74, 0x6e, 0x61, 0x6d, 0x65, 0xd9, 0x2a, 0x64, 0x65, 0x63, 0x6f, 0x64,
	0x65, 0x72, 0x2d, 0x30, 0x2e, 0x70, 0x72, 0x65, 0x66, 0x69, 0x6c, 0x6c,
	0x2e, 0x63, 0x6c, 0x75, 0x73, 0x74, 0x65, 0x72, 0x2e, 0x65, 0x78, 0x61,
	0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x69, 0x6e, 0x74, 0x65, 0x72, 0x6e, 0x61,
	0x6c, 0xab, 0x72, 0x65, 0x6d, 0x6f, 0x74, 0x65, 0x5f, 0x70, 0x6f, 0x72,
	0x74, 0xcd, 0x3a, 0x98, 0xab, 0x72, 0x65, 0x71, 0x75, 0x65, 0x73, 0x74,
	0x5f, 0x69, 0x64, 0x73, 0x92, 0xa5, 0x72, 0x65, 0x71, 0x2d, 0x61, 0xa1,
	0x62, 0xb3, 0x6b, 0x76, 0x5f, 0x63, 0x61, 0x63, 0x68, 0x65, 0x73, 0x5f,
	0x62, 0x61, 0x73, 0x65, 0x5f, 0x61, 0x64, 0x64, 0x72, 0x93, 0xcf, 0x00,
	0x00, 0x7f, 0x00, 0x00, 0x00, 0x00, 0x00, 0xcc, 0xc8, 0xcd, 0x10, 0x00,
	0xa9, 0x62, 0x6c, 0x6f, 0x63, 0x6b, 0x5f, 0x69, 0x64, 0x73, 0x92, 0x94,
	0x01, 0x02, 0xcd, 0x01, 0x2c, 0xce, 0x00, 0x01, 0x11, 0x70, 0x90,
};

#define REF_HOST "decoder-0.prefill.cluster.example.internal"
static const uint64_t ref_bases[] = {0x7f0000000000ull, 200, 4096};
static const uint32_t ref_blocks_a[] = {1, 2, 300, 70000};

static void ref_meta(kvb_vllm_meta_t *m)
{
	ck_assert_int_eq(kvb_vllm_meta_init(m, REF_HOST, 15000, ref_bases, 3, NULL), KVB_OK);
	ck_assert_int_eq(kvb_vllm_meta_add_request(m, "req-a", ref_blocks_a, 4, NULL), KVB_OK);
	ck_assert_int_eq(kvb_vllm_meta_add_request(m, "b", NULL, 0, NULL), KVB_OK);
}

static void assert_meta_eq(const kvb_vllm_meta_t *a, const kvb_vllm_meta_t *b)
{
	ck_assert_str_eq(a->remote_hostname, b->remote_hostname);
	ck_assert_uint_eq(a->remote_port, b->remote_port);
	ck_assert_uint_eq(a->n_requests, b->n_requests);
	ck_assert_uint_eq(a->n_bases, b->n_bases);
	ck_assert_uint_eq(a->n_block_ids, b->n_block_ids);
	for (uint32_t i = 0; i < a->n_bases; i++)
		ck_assert_uint_eq(a->kv_caches_base_addr[i], b->kv_caches_base_addr[i]);
	for (uint32_t r = 0; r < a->n_requests; r++) {
		ck_assert_str_eq(a->request_ids[r], b->request_ids[r]);
		ck_assert_uint_eq(a->block_counts[r], b->block_counts[r]);
		for (uint32_t j = 0; j < a->block_counts[r]; j++)
			ck_assert_uint_eq(a->block_ids[a->block_offsets[r] + j],
					  b->block_ids[b->block_offsets[r] + j]);
	}
}

static void assert_meta_empty(const kvb_vllm_meta_t *m)
{
	ck_assert_ptr_null(m->request_ids);
	ck_assert_ptr_null(m->block_counts);
	ck_assert_ptr_null(m->block_offsets);
	ck_assert_ptr_null(m->block_ids);
	ck_assert_ptr_null(m->kv_caches_base_addr);
	ck_assert_uint_eq(m->n_requests, 0);
}

START_TEST(test_encode_reference_bytes)
{
	kvb_vllm_meta_t m;
	ref_meta(&m);
	GByteArray *b = g_byte_array_new();
	ck_assert_int_eq(kvb_vllm_meta_encode(KVB_VLLM_GEN0, b, &m, NULL), KVB_OK);
	ck_assert_uint_eq(b->len, sizeof(ref_msg));
	ck_assert_mem_eq(b->data, ref_msg, sizeof(ref_msg));
	kvb_vllm_meta_clear(&m);
	g_byte_array_unref(b);
}
END_TEST

START_TEST(test_decode_reference)
{
	kvb_vllm_meta_t m;
	kvb_err_t err;
	ck_assert_int_eq(kvb_vllm_meta_decode(KVB_VLLM_GEN0, ref_msg, sizeof(ref_msg), &m, &err), KVB_OK);
	ck_assert_str_eq(m.remote_hostname, REF_HOST);
	ck_assert_uint_eq(m.remote_port, 15000);
	ck_assert_uint_eq(m.n_requests, 2);
	ck_assert_str_eq(m.request_ids[0], "req-a");
	ck_assert_str_eq(m.request_ids[1], "b");
	ck_assert_uint_eq(m.block_counts[0], 4);
	ck_assert_uint_eq(m.block_counts[1], 0);
	ck_assert_uint_eq(m.block_offsets[0], 0);
	ck_assert_uint_eq(m.block_offsets[1], 4);
	ck_assert_uint_eq(m.n_block_ids, 4);
	ck_assert_mem_eq(m.block_ids, ref_blocks_a, sizeof(ref_blocks_a));
	ck_assert_uint_eq(m.n_bases, 3);
	ck_assert_mem_eq(m.kv_caches_base_addr, ref_bases, sizeof(ref_bases));
	kvb_vllm_meta_t r;
	ref_meta(&r);
	assert_meta_eq(&m, &r);
	kvb_vllm_meta_clear(&r);
	kvb_vllm_meta_clear(&m);
	kvb_vllm_meta_clear(&m); /* a cleared meta clears again */
}
END_TEST

static void roundtrip(const kvb_vllm_meta_t *in)
{
	GByteArray *b = g_byte_array_new();
	kvb_err_t err;
	ck_assert_int_eq(kvb_vllm_meta_encode(KVB_VLLM_GEN0, b, in, &err), KVB_OK);
	kvb_vllm_meta_t out;
	int rc = kvb_vllm_meta_decode(KVB_VLLM_GEN0, b->data, b->len, &out, &err);
	ck_assert_msg(rc == KVB_OK, "decode: %s", err.msg);
	assert_meta_eq(in, &out);
	/* encoding what was decoded gives the same bytes */
	GByteArray *b2 = g_byte_array_new();
	ck_assert_int_eq(kvb_vllm_meta_encode(KVB_VLLM_GEN0, b2, &out, NULL), KVB_OK);
	ck_assert_uint_eq(b2->len, b->len);
	ck_assert_mem_eq(b2->data, b->data, b->len);
	kvb_vllm_meta_clear(&out);
	g_byte_array_unref(b);
	g_byte_array_unref(b2);
}

START_TEST(test_roundtrip_edges)
{
	kvb_vllm_meta_t m;
	/* no requests, no bases */
	ck_assert_int_eq(kvb_vllm_meta_init(&m, "h", 0, NULL, 0, NULL), KVB_OK);
	roundtrip(&m);
	kvb_vllm_meta_clear(&m);
	/* every integer width at its limits, longest host and id */
	char host[KVB_VLLM_HOST_MAX], id[KVB_VLLM_ID_MAX];
	memset(host, 'h', sizeof(host) - 1);
	host[sizeof(host) - 1] = '\0';
	memset(id, 'i', sizeof(id) - 1);
	id[sizeof(id) - 1] = '\0';
	const uint64_t bases[] = {0, 127, 128, 255, 256, 65535, 65536, UINT32_MAX, 1ull + UINT32_MAX,
				  UINT64_MAX};
	const uint32_t ids[] = {0, 127, 128, 255, 256, 65535, 65536, UINT32_MAX};
	ck_assert_int_eq(kvb_vllm_meta_init(&m, host, 65535, bases, 10, NULL), KVB_OK);
	ck_assert_int_eq(kvb_vllm_meta_add_request(&m, id, ids, 8, NULL), KVB_OK);
	ck_assert_int_eq(kvb_vllm_meta_add_request(&m, "x", NULL, 0, NULL), KVB_OK);
	ck_assert_int_eq(kvb_vllm_meta_add_request(&m, "y", ids + 2, 3, NULL), KVB_OK);
	roundtrip(&m);
	kvb_vllm_meta_clear(&m);
}
END_TEST

START_TEST(test_roundtrip_at_limits)
{
	/* the most requests and bases the limits allow; a 32-element list
	 * needs array16, 4096 requests too */
	kvb_vllm_meta_t m;
	uint64_t *bases = g_new(uint64_t, KVB_VLLM_MAX_BASES);
	for (uint32_t i = 0; i < KVB_VLLM_MAX_BASES; i++)
		bases[i] = 0x7f0000000000ull + (uint64_t)i * 0x10000;
	ck_assert_int_eq(kvb_vllm_meta_init(&m, "10.1.2.3", 17000, bases, KVB_VLLM_MAX_BASES, NULL),
			 KVB_OK);
	uint32_t ids[40];
	for (uint32_t j = 0; j < 40; j++)
		ids[j] = j * 7;
	for (uint32_t r = 0; r < KVB_VLLM_MAX_REQUESTS; r++) {
		char id[32];
		g_snprintf(id, sizeof(id), "cmpl-%u", r);
		ck_assert_int_eq(kvb_vllm_meta_add_request(&m, id, ids, r % 41, NULL), KVB_OK);
	}
	kvb_err_t err;
	ck_assert_int_eq(kvb_vllm_meta_add_request(&m, "one-too-many", NULL, 0, &err), KVB_ERR_INVALID);
	roundtrip(&m);
	kvb_vllm_meta_clear(&m);
	g_free(bases);
}
END_TEST

/* ---- a small msgpack writer for hand-made (and broken) messages ---------- */

static int gba_write(void *data, const char *buf, size_t len)
{
	g_byte_array_append(data, (const guint8 *)buf, (guint)len);
	return 0;
}

static void pstr(msgpack_packer *pk, const char *s)
{
	msgpack_pack_str_with_body(pk, s, strlen(s));
}

typedef void (*value_fn)(msgpack_packer *pk);

static void v_host(msgpack_packer *pk) { pstr(pk, "10.0.0.7"); }
static void v_port(msgpack_packer *pk) { msgpack_pack_uint32(pk, 15000); }
static void v_ids(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	pstr(pk, "a");
	pstr(pk, "b");
}
static void v_bases(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	msgpack_pack_uint64(pk, 4096);
	msgpack_pack_uint64(pk, 8192);
}
static void v_blocks(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	msgpack_pack_array(pk, 2);
	msgpack_pack_uint32(pk, 1);
	msgpack_pack_uint32(pk, 2);
	msgpack_pack_array(pk, 1);
	msgpack_pack_uint32(pk, 3);
}

static const char *const keys[] = {"remote_hostname", "remote_port", "request_ids",
				   "kv_caches_base_addr", "block_ids"};
static const value_fn defaults[] = {v_host, v_port, v_ids, v_bases, v_blocks};

/* The default message with key `key` given value `fn` (NULL: left out). */
static GByteArray *build(const char *key, value_fn fn)
{
	GByteArray *b = g_byte_array_new();
	msgpack_packer pk;
	msgpack_packer_init(&pk, b, gba_write);
	int n = 5;
	if (key && !fn)
		n--;
	msgpack_pack_map(&pk, (size_t)n);
	for (int k = 0; k < 5; k++) {
		if (key && !strcmp(key, keys[k])) {
			if (!fn)
				continue;
			pstr(&pk, keys[k]);
			fn(&pk);
		} else {
			pstr(&pk, keys[k]);
			defaults[k](&pk);
		}
	}
	return b;
}

/* Decoding b is refused with KVB_ERR_PROTOCOL, a message holding needle,
 * and nothing left allocated. */
static void expect_refused(const void *buf, size_t len, const char *needle)
{
	kvb_vllm_meta_t m;
	kvb_err_t err;
	kvb_err_clear(&err);
	memset(&m, 0xa5, sizeof(m));
	ck_assert_int_eq(kvb_vllm_meta_decode(KVB_VLLM_GEN0, buf, len, &m, &err), KVB_ERR_PROTOCOL);
	ck_assert_int_eq(err.code, KVB_ERR_PROTOCOL);
	ck_assert_msg(strstr(err.msg, needle), "message '%s' lacks '%s'", err.msg, needle);
	assert_meta_empty(&m);
}

static void expect_refused_ba(GByteArray *b, const char *needle)
{
	expect_refused(b->data, b->len, needle);
	g_byte_array_unref(b);
}

START_TEST(test_default_message_decodes)
{
	/* the builder's default message is valid: every refusal below differs
	 * from it in one field */
	GByteArray *b = build(NULL, NULL);
	kvb_vllm_meta_t m;
	ck_assert_int_eq(kvb_vllm_meta_decode(KVB_VLLM_GEN0, b->data, b->len, &m, NULL), KVB_OK);
	ck_assert_str_eq(m.remote_hostname, "10.0.0.7");
	ck_assert_uint_eq(m.n_requests, 2);
	ck_assert_uint_eq(m.n_block_ids, 3);
	ck_assert_uint_eq(m.block_ids[m.block_offsets[1]], 3);
	kvb_vllm_meta_clear(&m);
	g_byte_array_unref(b);
}
END_TEST

START_TEST(test_unknown_keys_any_order)
{
	/* later vLLM forks add keys; msgspec ignores them, and so do we */
	GByteArray *b = g_byte_array_new();
	msgpack_packer pk;
	msgpack_packer_init(&pk, b, gba_write);
	msgpack_pack_map(&pk, 9);
	pstr(&pk, "cp_rank");
	msgpack_pack_int(&pk, -1);
	pstr(&pk, "block_ids");
	v_blocks(&pk);
	pstr(&pk, "tp_size");
	msgpack_pack_uint32(&pk, 8);
	pstr(&pk, "kv_caches_base_addr");
	v_bases(&pk);
	pstr(&pk, "num_tokens");
	msgpack_pack_array(&pk, 2);
	msgpack_pack_map(&pk, 1);
	pstr(&pk, "nested");
	msgpack_pack_nil(&pk);
	msgpack_pack_double(&pk, 1.5);
	pstr(&pk, "request_ids");
	v_ids(&pk);
	pstr(&pk, "remote_port");
	v_port(&pk);
	pstr(&pk, "remote_hostname");
	v_host(&pk);
	pstr(&pk, "Remote_hostname"); /* keys are case-sensitive: a near miss is unknown */
	msgpack_pack_bin_with_body(&pk, "\x00\x01", 2);
	kvb_vllm_meta_t m, ref;
	kvb_err_t err;
	int rc = kvb_vllm_meta_decode(KVB_VLLM_GEN0, b->data, b->len, &m, &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	GByteArray *d = build(NULL, NULL);
	ck_assert_int_eq(kvb_vllm_meta_decode(KVB_VLLM_GEN0, d->data, d->len, &ref, NULL), KVB_OK);
	assert_meta_eq(&m, &ref);
	kvb_vllm_meta_clear(&m);
	kvb_vllm_meta_clear(&ref);
	g_byte_array_unref(b);
	g_byte_array_unref(d);
}
END_TEST

START_TEST(test_refuse_not_a_map)
{
	GByteArray *b = g_byte_array_new();
	msgpack_packer pk;
	msgpack_packer_init(&pk, b, gba_write);
	msgpack_pack_array(&pk, 5);
	for (int k = 0; k < 5; k++)
		defaults[k](&pk);
	expect_refused_ba(b, "expected a map");
	expect_refused("", 0, "empty");
}
END_TEST

START_TEST(test_refuse_missing_key)
{
	for (int k = 0; k < 5; k++) {
		char needle[64];
		g_snprintf(needle, sizeof(needle), "missing required key %s", keys[k]);
		expect_refused_ba(build(keys[k], NULL), needle);
	}
}
END_TEST

static void v_str_port(msgpack_packer *pk) { pstr(pk, "15000"); }
static void v_float_port(msgpack_packer *pk) { msgpack_pack_double(pk, 15000.0); }
static void v_bool_port(msgpack_packer *pk) { msgpack_pack_true(pk); }
static void v_bin_host(msgpack_packer *pk) { msgpack_pack_bin_with_body(pk, "10.0.0.7", 8); }
static void v_nil_host(msgpack_packer *pk) { msgpack_pack_nil(pk); }
static void v_map_ids(msgpack_packer *pk) { msgpack_pack_map(pk, 0); }
static void v_int_id(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	pstr(pk, "a");
	msgpack_pack_uint32(pk, 7);
}
static void v_str_base(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	msgpack_pack_uint64(pk, 4096);
	pstr(pk, "8192");
}
static void v_flat_blocks(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	msgpack_pack_uint32(pk, 1);
	msgpack_pack_uint32(pk, 2);
}
static void v_float_block(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	msgpack_pack_array(pk, 1);
	msgpack_pack_float(pk, 1.0f);
	msgpack_pack_array(pk, 0);
}

START_TEST(test_refuse_wrong_type)
{
	static const struct {
		const char *key;
		value_fn fn;
		const char *needle;
	} cases[] = {
		{"remote_port", v_str_port, "remote_port: expected int, got str"},
		{"remote_port", v_float_port, "remote_port: expected int, got float"},
		{"remote_port", v_bool_port, "remote_port: expected int, got bool"},
		{"remote_hostname", v_bin_host, "remote_hostname: expected str, got bin"},
		{"remote_hostname", v_nil_host, "remote_hostname: expected str, got nil"},
		{"request_ids", v_map_ids, "request_ids: expected array, got map"},
		{"request_ids", v_int_id, "request_ids[1]: expected str, got int"},
		{"kv_caches_base_addr", v_str_base, "kv_caches_base_addr[1]: expected int, got str"},
		{"block_ids", v_flat_blocks, "block_ids[0]: expected array, got int"},
		{"block_ids", v_float_block, "block_ids[0][0]: expected int, got float"},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(cases); i++)
		expect_refused_ba(build(cases[i].key, cases[i].fn), cases[i].needle);
}
END_TEST

static void v_neg_block(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	msgpack_pack_array(pk, 2);
	msgpack_pack_uint32(pk, 1);
	msgpack_pack_int32(pk, -1);
	msgpack_pack_array(pk, 0);
}

START_TEST(test_refuse_negative_block_id)
{
	expect_refused_ba(build("block_ids", v_neg_block), "block_ids[0][1] is negative");
}
END_TEST

static void v_big_block(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	msgpack_pack_array(pk, 0);
	msgpack_pack_array(pk, 1);
	msgpack_pack_uint64(pk, 1ull + UINT32_MAX);
}

START_TEST(test_refuse_block_id_above_u32)
{
	expect_refused_ba(build("block_ids", v_big_block), "block_ids[1][0] is 4294967296");
}
END_TEST

static void v_neg_port(msgpack_packer *pk) { msgpack_pack_int(pk, -1); }
static void v_big_port(msgpack_packer *pk) { msgpack_pack_uint32(pk, 65536); }

START_TEST(test_refuse_negative_port)
{
	expect_refused_ba(build("remote_port", v_neg_port), "remote_port is negative");
}
END_TEST

START_TEST(test_refuse_port_above_65535)
{
	expect_refused_ba(build("remote_port", v_big_port), "remote_port is 65536");
}
END_TEST

static void v_neg_base(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 1);
	msgpack_pack_int64(pk, INT64_MIN);
}

START_TEST(test_refuse_negative_base)
{
	expect_refused_ba(build("kv_caches_base_addr", v_neg_base), "kv_caches_base_addr[0] is negative");
}
END_TEST

static void v_three_lists(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 3);
	for (int i = 0; i < 3; i++)
		msgpack_pack_array(pk, 0);
}

START_TEST(test_refuse_length_mismatch)
{
	expect_refused_ba(build("block_ids", v_three_lists),
			  "block_ids has 3 lists but request_ids has 2");
}
END_TEST

static void v_empty_id(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	pstr(pk, "a");
	pstr(pk, "");
}

START_TEST(test_refuse_empty_request_id)
{
	expect_refused_ba(build("request_ids", v_empty_id), "request_ids[1] is empty");
}
END_TEST

static void v_long_id(msgpack_packer *pk)
{
	char id[KVB_VLLM_ID_MAX + 1];
	memset(id, 'x', KVB_VLLM_ID_MAX);
	id[KVB_VLLM_ID_MAX] = '\0';
	msgpack_pack_array(pk, 2);
	pstr(pk, id); /* 128 bytes: one more than fits with its NUL */
	pstr(pk, "b");
}

START_TEST(test_refuse_long_request_id)
{
	expect_refused_ba(build("request_ids", v_long_id), "request_ids[0] is 128 bytes");
}
END_TEST

static void v_nul_id(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	msgpack_pack_str_with_body(pk, "a\0b", 3);
	pstr(pk, "b");
}

START_TEST(test_refuse_nul_in_request_id)
{
	expect_refused_ba(build("request_ids", v_nul_id), "request_ids[0] holds a NUL");
}
END_TEST

static void v_empty_host(msgpack_packer *pk) { pstr(pk, ""); }
static void v_long_host(msgpack_packer *pk)
{
	char h[KVB_VLLM_HOST_MAX + 1];
	memset(h, 'h', KVB_VLLM_HOST_MAX);
	h[KVB_VLLM_HOST_MAX] = '\0';
	pstr(pk, h);
}

START_TEST(test_refuse_bad_hostname)
{
	expect_refused_ba(build("remote_hostname", v_empty_host), "remote_hostname is empty");
	expect_refused_ba(build("remote_hostname", v_long_host), "remote_hostname is 256 bytes");
}
END_TEST

static void v_many_ids(msgpack_packer *pk)
{
	msgpack_pack_array(pk, KVB_VLLM_MAX_REQUESTS + 1);
	for (uint32_t i = 0; i <= KVB_VLLM_MAX_REQUESTS; i++)
		pstr(pk, "r");
}
static void v_many_bases(msgpack_packer *pk)
{
	msgpack_pack_array(pk, KVB_VLLM_MAX_BASES + 1);
	for (uint32_t i = 0; i <= KVB_VLLM_MAX_BASES; i++)
		msgpack_pack_uint64(pk, i);
}
static void v_many_blocks(msgpack_packer *pk)
{
	/* two lists, each within the limit, together one over it */
	uint32_t half = KVB_VLLM_MAX_BLOCKS / 2;
	msgpack_pack_array(pk, 2);
	msgpack_pack_array(pk, half);
	for (uint32_t i = 0; i < half; i++)
		msgpack_pack_uint32(pk, 0);
	msgpack_pack_array(pk, half + 1);
	for (uint32_t i = 0; i <= half; i++)
		msgpack_pack_uint32(pk, 0);
}

START_TEST(test_refuse_counts_above_limits)
{
	expect_refused_ba(build("request_ids", v_many_ids), "request_ids has 4097 entries");
	expect_refused_ba(build("kv_caches_base_addr", v_many_bases),
			  "kv_caches_base_addr has 4097 entries");
	expect_refused_ba(build("block_ids", v_many_blocks), "block_ids holds 4194305 ids");
}
END_TEST

START_TEST(test_refuse_trailing_bytes)
{
	GByteArray *b = g_byte_array_new();
	g_byte_array_append(b, ref_msg, sizeof(ref_msg));
	g_byte_array_append(b, (const guint8 *)"\xc0", 1);
	expect_refused_ba(b, "1 trailing bytes");
	/* two messages back to back are one too many */
	b = g_byte_array_new();
	g_byte_array_append(b, ref_msg, sizeof(ref_msg));
	g_byte_array_append(b, ref_msg, sizeof(ref_msg));
	expect_refused_ba(b, "155 trailing bytes");
}
END_TEST

START_TEST(test_refuse_duplicate_key)
{
	/* msgspec keeps the last copy; two readers picking different copies
	 * would disagree, so a repeated known key is refused */
	GByteArray *b = g_byte_array_new();
	g_byte_array_append(b, ref_msg, sizeof(ref_msg));
	b->data[0] = 0x86;
	msgpack_packer pk;
	msgpack_packer_init(&pk, b, gba_write);
	pstr(&pk, "remote_port");
	msgpack_pack_uint32(&pk, 1);
	expect_refused_ba(b, "key remote_port appears twice");
}
END_TEST

START_TEST(test_refuse_non_str_key)
{
	GByteArray *b = g_byte_array_new();
	g_byte_array_append(b, ref_msg, sizeof(ref_msg));
	b->data[0] = 0x86;
	msgpack_packer pk;
	msgpack_packer_init(&pk, b, gba_write);
	msgpack_pack_uint32(&pk, 1);
	msgpack_pack_uint32(&pk, 2);
	expect_refused_ba(b, "key 5 is int, not str");
}
END_TEST

START_TEST(test_refuse_truncated_everywhere)
{
	/* every proper prefix of a valid message is refused and leaves nothing
	 * allocated (valgrind and ASan runs check the second half) */
	for (size_t n = 0; n < sizeof(ref_msg); n++) {
		kvb_vllm_meta_t m;
		kvb_err_t err;
		ck_assert_int_eq(kvb_vllm_meta_decode(KVB_VLLM_GEN0, ref_msg, n, &m, &err),
				 KVB_ERR_PROTOCOL);
		ck_assert_msg(n == 0 || strstr(err.msg, "truncated"), "at %zu: %s", n, err.msg);
		assert_meta_empty(&m);
	}
}
END_TEST

START_TEST(test_refuse_hostile_structure)
{
	/* an array32 header that claims 4 G elements: msgpack-c would allocate
	 * 96 GiB for it before reading one */
	static const uint8_t huge_array[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0x00};
	expect_refused(huge_array, sizeof(huge_array), "declares 4294967295 entries");
	static const uint8_t huge_map[] = {0x81, 0xa1, 0x6b, 0xdf, 0x7f, 0xff, 0xff, 0xff};
	expect_refused(huge_map, sizeof(huge_map), "declares 2147483647 entries");
	static const uint8_t huge_str[] = {0xdb, 0xff, 0xff, 0xff, 0xff, 0x61};
	expect_refused(huge_str, sizeof(huge_str), "truncated");
	/* 100000 nested one-element arrays */
	size_t depth = 100000;
	uint8_t *deep = g_malloc(depth + 1);
	memset(deep, 0x91, depth);
	deep[depth] = 0x00;
	expect_refused(deep, depth + 1, "nesting deeper than");
	g_free(deep);
	/* 0xc1 is never used by msgpack */
	static const uint8_t reserved[] = {0x81, 0xa1, 0x6b, 0xc1};
	expect_refused(reserved, sizeof(reserved), "0xc1 at offset 3 is not a msgpack type");
}
END_TEST

START_TEST(test_unknown_generation)
{
	kvb_vllm_meta_t m;
	kvb_err_t err;
	ck_assert_int_eq(kvb_vllm_meta_decode((kvb_vllm_gen_t)1, ref_msg, sizeof(ref_msg), &m, &err),
			 KVB_ERR_UNSUPPORTED);
	ck_assert_ptr_nonnull(strstr(err.msg, "generation 1"));
	assert_meta_empty(&m);
	ref_meta(&m);
	GByteArray *b = g_byte_array_new();
	ck_assert_int_eq(kvb_vllm_meta_encode((kvb_vllm_gen_t)7, b, &m, &err), KVB_ERR_UNSUPPORTED);
	ck_assert_uint_eq(b->len, 0);
	kvb_vllm_meta_clear(&m);
	g_byte_array_unref(b);
	size_t len = 99;
	ck_assert_ptr_null(kvb_vllm_reply_bytes((kvb_vllm_gen_t)1, KVB_VLLM_REPLY_DONE, &len));
	ck_assert_uint_eq(len, 0);
}
END_TEST

START_TEST(test_build_refusals)
{
	kvb_vllm_meta_t m;
	kvb_err_t err;
	char host[KVB_VLLM_HOST_MAX + 1];
	memset(host, 'h', KVB_VLLM_HOST_MAX);
	host[KVB_VLLM_HOST_MAX] = '\0';
	ck_assert_int_eq(kvb_vllm_meta_init(&m, "", 1, NULL, 0, &err), KVB_ERR_INVALID);
	assert_meta_empty(&m);
	ck_assert_int_eq(kvb_vllm_meta_init(&m, host, 1, NULL, 0, &err), KVB_ERR_INVALID);
	ck_assert_int_eq(kvb_vllm_meta_init(&m, "h", 1, NULL, 1, &err), KVB_ERR_INVALID);
	ck_assert_int_eq(kvb_vllm_meta_init(&m, "h", 1, NULL, KVB_VLLM_MAX_BASES + 1, &err),
			 KVB_ERR_INVALID);
	assert_meta_empty(&m);
	ck_assert_int_eq(kvb_vllm_meta_init(&m, "h", 1, NULL, 0, &err), KVB_OK);
	ck_assert_int_eq(kvb_vllm_meta_add_request(&m, "", NULL, 0, &err), KVB_ERR_INVALID);
	char id[KVB_VLLM_ID_MAX + 1];
	memset(id, 'i', KVB_VLLM_ID_MAX);
	id[KVB_VLLM_ID_MAX] = '\0';
	ck_assert_int_eq(kvb_vllm_meta_add_request(&m, id, NULL, 0, &err), KVB_ERR_INVALID);
	ck_assert_int_eq(kvb_vllm_meta_add_request(&m, "r", NULL, 3, &err), KVB_ERR_INVALID);
	ck_assert_uint_eq(m.n_requests, 0);
	/* a meta the decoder would refuse is not encoded */
	GByteArray *b = g_byte_array_new();
	m.remote_hostname[0] = '\0';
	ck_assert_int_eq(kvb_vllm_meta_encode(KVB_VLLM_GEN0, b, &m, &err), KVB_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "remote_hostname"));
	ck_assert_uint_eq(b->len, 0);
	kvb_vllm_meta_clear(&m);
	g_byte_array_unref(b);
}
END_TEST

START_TEST(test_replies)
{
	size_t len;
	const char *s = kvb_vllm_reply_bytes(KVB_VLLM_GEN0, KVB_VLLM_REPLY_DONE, &len);
	ck_assert_uint_eq(len, 10);
	ck_assert_mem_eq(s, "trans_done", 10);
	s = kvb_vllm_reply_bytes(KVB_VLLM_GEN0, KVB_VLLM_REPLY_ERROR, &len);
	ck_assert_uint_eq(len, 11);
	ck_assert_mem_eq(s, "trans_error", 11);
	kvb_vllm_reply_t r = KVB_VLLM_REPLY_ERROR;
	ck_assert_int_eq(kvb_vllm_reply_decode(KVB_VLLM_GEN0, "trans_done", 10, &r, NULL), KVB_OK);
	ck_assert_int_eq(r, KVB_VLLM_REPLY_DONE);
	ck_assert_int_eq(kvb_vllm_reply_decode(KVB_VLLM_GEN0, "trans_error", 11, &r, NULL), KVB_OK);
	ck_assert_int_eq(r, KVB_VLLM_REPLY_ERROR);
	static const struct {
		const char *bytes;
		size_t len;
	} bad[] = {
		{"trans_done", 11},   /* with its NUL */
		{"trans_don", 9},     /* a prefix */
		{"TRANS_DONE", 10},
		{"trans_errorX", 12},
		{"", 0},
		{"\x81\xa6status\x00", 9}, /* a Gen 1+ MooncakeXferResponse */
	};
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
		kvb_err_t err;
		ck_assert_int_eq(kvb_vllm_reply_decode(KVB_VLLM_GEN0, bad[i].bytes, bad[i].len, &r, &err),
				 KVB_ERR_PROTOCOL);
		ck_assert_ptr_nonnull(strstr(err.msg, "neither trans_done nor trans_error"));
	}
}
END_TEST

START_TEST(test_envelopes)
{
	kvb_vllm_envelope_t env;
	size_t pi = 99;
	const size_t dealer[] = {5, 155};
	ck_assert_int_eq(kvb_vllm_envelope_classify(dealer, 2, &env, &pi, NULL), KVB_OK);
	ck_assert_int_eq(env, KVB_VLLM_ENV_DEALER);
	ck_assert_uint_eq(pi, 1);
	const size_t req[] = {5, 0, 155};
	ck_assert_int_eq(kvb_vllm_envelope_classify(req, 3, &env, &pi, NULL), KVB_OK);
	ck_assert_int_eq(env, KVB_VLLM_ENV_REQ);
	ck_assert_uint_eq(pi, 2);
	/* an empty payload is the decoder's business, not the envelope's */
	const size_t dealer_empty[] = {5, 0};
	ck_assert_int_eq(kvb_vllm_envelope_classify(dealer_empty, 2, &env, &pi, NULL), KVB_OK);
	static const struct {
		size_t sizes[4];
		size_t n;
		const char *needle;
	} bad[] = {
		{{5}, 1, "1 frames"},
		{{0}, 0, "0 frames"},
		{{5, 1, 155}, 3, "delimiter frame holds 1 bytes"},
		{{5, 0, 0, 155}, 4, "4 frames"},
		{{0, 155}, 2, "empty identity"},
		{{0, 0, 155}, 3, "empty identity"},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
		kvb_err_t err;
		ck_assert_int_eq(kvb_vllm_envelope_classify(bad[i].sizes, bad[i].n, &env, &pi, &err),
				 KVB_ERR_PROTOCOL);
		ck_assert_msg(strstr(err.msg, bad[i].needle), "case %zu: '%s'", i, err.msg);
	}
}
END_TEST

/* Gen 0 transfer ids: 0.14+ internal ids lose their random suffix, others
 * are kept whole. */
START_TEST(test_gen0_transfer_ids)
{
	static const char *const cases[][2] = {
		{"cmpl-r1-0-1a2b3c4d", "cmpl-r1-0"},            /* 0.14 / 0.15 decoder */
		{"cmpl-r1-0", "cmpl-r1-0"},                     /* 0.13: no suffix */
		{"cmpl-5f0c8d0e-aaaa-4bbb-8ccc-0123456789ab-12-00ff00ff",
		 "cmpl-5f0c8d0e-aaaa-4bbb-8ccc-0123456789ab-12"},
		{"cmpl-r1-0-1A2B3C4D", "cmpl-r1-0-1A2B3C4D"},   /* not lowercase hex */
		{"cmpl-r1-0-1a2b3c4", "cmpl-r1-0-1a2b3c4"},     /* seven digits */
		{"cmpl-r1-x-1a2b3c4d", "cmpl-r1-x-1a2b3c4d"},   /* no index before it */
		{"-0-1a2b3c4d", "-0-1a2b3c4d"},                 /* nothing before the index */
		{"req-1", "req-1"},
		{"", ""},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
		char out[KVB_VLLM_ID_MAX];
		kvb_vllm_gen0_transfer_id(cases[i][0], out, sizeof(out));
		ck_assert_msg(!strcmp(out, cases[i][1]), "%s -> %s, want %s", cases[i][0], out, cases[i][1]);
	}
	char small[6];
	kvb_vllm_gen0_transfer_id("cmpl-r1-0-1a2b3c4d", small, sizeof(small));
	ck_assert_str_eq(small, "cmpl-");
}
END_TEST

Suite *kvb_suite_vllm_wire(void)
{
	Suite *s = suite_create("vllm_wire");
	TCase *tc = tcase_create("codec");
	tcase_add_test(tc, test_encode_reference_bytes);
	tcase_add_test(tc, test_decode_reference);
	tcase_add_test(tc, test_roundtrip_edges);
	tcase_add_test(tc, test_roundtrip_at_limits);
	tcase_add_test(tc, test_default_message_decodes);
	tcase_add_test(tc, test_unknown_keys_any_order);
	tcase_add_test(tc, test_unknown_generation);
	tcase_add_test(tc, test_build_refusals);
	suite_add_tcase(s, tc);
	tc = tcase_create("refusals");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_refuse_not_a_map);
	tcase_add_test(tc, test_refuse_missing_key);
	tcase_add_test(tc, test_refuse_wrong_type);
	tcase_add_test(tc, test_refuse_negative_block_id);
	tcase_add_test(tc, test_refuse_block_id_above_u32);
	tcase_add_test(tc, test_refuse_negative_port);
	tcase_add_test(tc, test_refuse_port_above_65535);
	tcase_add_test(tc, test_refuse_negative_base);
	tcase_add_test(tc, test_refuse_length_mismatch);
	tcase_add_test(tc, test_refuse_empty_request_id);
	tcase_add_test(tc, test_refuse_long_request_id);
	tcase_add_test(tc, test_refuse_nul_in_request_id);
	tcase_add_test(tc, test_refuse_bad_hostname);
	tcase_add_test(tc, test_refuse_counts_above_limits);
	tcase_add_test(tc, test_refuse_trailing_bytes);
	tcase_add_test(tc, test_refuse_duplicate_key);
	tcase_add_test(tc, test_refuse_non_str_key);
	tcase_add_test(tc, test_refuse_truncated_everywhere);
	tcase_add_test(tc, test_refuse_hostile_structure);
	suite_add_tcase(s, tc);
	tc = tcase_create("replies");
	tcase_add_test(tc, test_replies);
	tcase_add_test(tc, test_envelopes);
	tcase_add_test(tc, test_gen0_transfer_ids);
	suite_add_tcase(s, tc);
	return s;
}
