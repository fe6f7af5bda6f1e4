/* vLLM Gen 1/2 side channel: MooncakeXferResponse against msgspec's bytes
 * and error texts (tests/fixtures/vllm), the checks a D adds, the release
 * profiles and the ROUTER payload classifier.  MooncakeXferMetadata:
 * check_vllm_xfer_wire.c. */
#include "config.h"

#include <string.h>

#include <check.h>
#include <glib.h>
#include <msgpack.h>

#include "kvb_vllm_wire.h"
#include "kvb_vllm_xfer_wire.h"
#include "suites.h"

static GBytes *fixture(const char *name)
{
	char *path = g_build_filename(KVB_FIXTURES_DIR, name, NULL);
	gchar *data;
	gsize len;
	GError *gerr = NULL;
	if (!g_file_get_contents(path, &data, &len, &gerr))
		ck_abort_msg("fixture %s: %s", path, gerr->message);
	g_free(path);
	return g_bytes_new_take(data, len);
}

static int gba_write(void *data, const char *buf, size_t len)
{
	g_byte_array_append(data, (const guint8 *)buf, (guint)len);
	return 0;
}

static void pstr(msgpack_packer *pk, const char *s)
{
	msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* ---- responses ------------------------------------------------------------ */

static void r_finish(kvb_vllm_xfer_resp_t *r)
{
	kvb_vllm_xfer_resp_init(r, KVB_VLLM_XFER_FINISH);
}

static void r_continue_ok(kvb_vllm_xfer_resp_t *r)
{
	kvb_vllm_xfer_resp_init(r, KVB_VLLM_XFER_CONTINUE);
	ck_assert_int_eq(kvb_vllm_xfer_resp_add_ok(r, "cmpl-a-0", NULL), KVB_OK);
	ck_assert_int_eq(kvb_vllm_xfer_resp_add_ok(r, "cmpl-b-0", NULL), KVB_OK);
}

static void r_finish_timeout(kvb_vllm_xfer_resp_t *r)
{
	kvb_vllm_xfer_resp_init(r, KVB_VLLM_XFER_FINISH);
	ck_assert_int_eq(kvb_vllm_xfer_resp_add_err(r, "cmpl-a-0", NULL), KVB_OK);
	ck_assert_int_eq(kvb_vllm_xfer_resp_set_err_msg(r, "Timeout waiting for P side ready.", NULL),
			 KVB_OK);
}

static void r_error(kvb_vllm_xfer_resp_t *r)
{
	kvb_vllm_xfer_resp_init(r, KVB_VLLM_XFER_ERROR);
	ck_assert_int_eq(kvb_vllm_xfer_resp_set_err_msg(
				 r, "Expected `array`, got `int` - at `$.req_blocks[...][1][0]`", NULL),
			 KVB_OK);
}

static void r_ok_empty(kvb_vllm_xfer_resp_t *r)
{
	kvb_vllm_xfer_resp_init(r, KVB_VLLM_XFER_FINISH);
	r->has_ok_reqs = true;
}

static void r_mixed(kvb_vllm_xfer_resp_t *r)
{
	kvb_vllm_xfer_resp_init(r, KVB_VLLM_XFER_FINISH);
	ck_assert_int_eq(kvb_vllm_xfer_resp_add_ok(r, "réq-😀", NULL), KVB_OK);
	ck_assert_int_eq(kvb_vllm_xfer_resp_add_err(r, "b", NULL), KVB_OK);
	ck_assert_int_eq(kvb_vllm_xfer_resp_add_err(r, "c", NULL), KVB_OK);
	ck_assert_int_eq(kvb_vllm_xfer_resp_set_err_msg(r, "Mooncake transfer engine returned -1 — ü",
							NULL),
			 KVB_OK);
}

static const struct rgolden {
	const char *name;
	void (*build)(kvb_vllm_xfer_resp_t *r);
} rgoldens[] = {
	{"resp_finish", r_finish},        {"resp_continue_ok", r_continue_ok},
	{"resp_finish_timeout", r_finish_timeout}, {"resp_error", r_error},
	{"resp_ok_empty", r_ok_empty},    {"resp_mixed", r_mixed},
};

static void assert_resp_eq(const kvb_vllm_xfer_resp_t *a, const kvb_vllm_xfer_resp_t *b)
{
	ck_assert_int_eq(a->status, b->status);
	ck_assert_int_eq(a->has_ok_reqs, b->has_ok_reqs);
	ck_assert_int_eq(a->has_err_reqs, b->has_err_reqs);
	ck_assert_uint_eq(a->n_ok_reqs, b->n_ok_reqs);
	ck_assert_uint_eq(a->n_err_reqs, b->n_err_reqs);
	for (uint32_t i = 0; i < a->n_ok_reqs; i++)
		ck_assert_str_eq(a->ok_reqs[i], b->ok_reqs[i]);
	for (uint32_t i = 0; i < a->n_err_reqs; i++)
		ck_assert_str_eq(a->err_reqs[i], b->err_reqs[i]);
	ck_assert_int_eq(a->err_msg != NULL, b->err_msg != NULL);
	if (a->err_msg)
		ck_assert_str_eq(a->err_msg, b->err_msg);
}

START_TEST(test_golden_resp)
{
	for (size_t i = 0; i < G_N_ELEMENTS(rgoldens); i++) {
		char fname[64];
		g_snprintf(fname, sizeof(fname), "%s.msgpack", rgoldens[i].name);
		GBytes *ref = fixture(fname);
		gsize len;
		const void *data = g_bytes_get_data(ref, &len);
		kvb_vllm_xfer_resp_t want, got;
		rgoldens[i].build(&want);
		GByteArray *out = g_byte_array_new();
		kvb_err_t err;
		ck_assert_int_eq(kvb_vllm_xfer_resp_encode(out, &want, &err), KVB_OK);
		ck_assert_msg(out->len == len && !memcmp(out->data, data, len), "%s: bytes differ",
			      rgoldens[i].name);
		int rc = kvb_vllm_xfer_resp_decode(data, len, &got, &err);
		ck_assert_msg(rc == KVB_OK, "%s: %s", rgoldens[i].name, err.msg);
		assert_resp_eq(&got, &want);
		kvb_vllm_xfer_resp_clear(&got);
		kvb_vllm_xfer_resp_clear(&want);
		g_byte_array_unref(out);
		g_bytes_unref(ref);
	}
}
END_TEST

START_TEST(test_golden_resp_errors)
{
	GBytes *tsv = fixture("resp.tsv");
	char *text = g_strndup(g_bytes_get_data(tsv, NULL), g_bytes_get_size(tsv));
	char **lines = g_strsplit(text, "\n", -1);
	unsigned refused = 0;
	for (char **l = lines; *l && **l; l++) {
		char **f = g_strsplit(*l, "\t", 2);
		char fname[80];
		g_snprintf(fname, sizeof(fname), "%s.msgpack", f[0]);
		GBytes *in = fixture(fname);
		gsize len;
		const void *data = g_bytes_get_data(in, &len);
		kvb_vllm_xfer_resp_t r;
		kvb_err_t err;
		kvb_err_clear(&err);
		int rc = kvb_vllm_xfer_resp_decode(data, len, &r, &err);
		if (!strcmp(f[1], "OK")) {
			ck_assert_msg(rc == KVB_OK, "%s: %s", f[0], err.msg);
		} else {
			ck_assert_msg(rc == KVB_ERR_PROTOCOL && !strcmp(err.msg, f[1]),
				      "%s: msgspec says '%s', we said '%s'", f[0], f[1], err.msg);
			ck_assert_ptr_null(r.ok_reqs);
			ck_assert_ptr_null(r.err_msg);
			refused++;
		}
		kvb_vllm_xfer_resp_clear(&r);
		g_bytes_unref(in);
		g_strfreev(f);
	}
	ck_assert_uint_ge(refused, 9);
	g_strfreev(lines);
	g_free(text);
	g_bytes_unref(tsv);
}
END_TEST

/* ---- response refusals ----------------------------------------------------- */

static void expect_resp_refused(GByteArray *b, const char *needle)
{
	kvb_vllm_xfer_resp_t r;
	kvb_err_t err;
	kvb_err_clear(&err);
	int rc = kvb_vllm_xfer_resp_decode(b->data, b->len, &r, &err);
	ck_assert_msg(rc == KVB_ERR_PROTOCOL && strstr(err.msg, needle), "rc %d '%s' lacks '%s'", rc,
		      err.msg, needle);
	ck_assert_ptr_null(r.ok_reqs);
	ck_assert_ptr_null(r.err_reqs);
	ck_assert_ptr_null(r.err_msg);
	g_byte_array_unref(b);
}

static GByteArray *resp_msg(int status, const char *const *ok, int nok, const char *const *er,
			    int ner, const char *msg, size_t msg_len)
{
	GByteArray *b = g_byte_array_new();
	msgpack_packer pk;
	msgpack_packer_init(&pk, b, gba_write);
	msgpack_pack_map(&pk, 1 + (nok >= 0) + (ner >= 0) + (msg != NULL));
	pstr(&pk, "status");
	msgpack_pack_int(&pk, status);
	if (nok >= 0) {
		pstr(&pk, "ok_reqs");
		msgpack_pack_array(&pk, (size_t)nok);
		for (int i = 0; i < nok; i++)
			pstr(&pk, ok[i]);
	}
	if (ner >= 0) {
		pstr(&pk, "err_reqs");
		msgpack_pack_array(&pk, (size_t)ner);
		for (int i = 0; i < ner; i++)
			pstr(&pk, er[i]);
	}
	if (msg) {
		pstr(&pk, "err_msg");
		msgpack_pack_str_with_body(&pk, msg, msg_len);
	}
	return b;
}

START_TEST(test_resp_refusals)
{
	static const char *const ab[] = {"a", "b"}, *const aa[] = {"a", "a"}, *const e[] = {""};
	expect_resp_refused(resp_msg(0, aa, 2, NULL, -1, NULL, 0),
			    "request id `a` is named twice - at `$.ok_reqs[1]`");
	expect_resp_refused(resp_msg(0, ab, 1, ab, 1, NULL, 0),
			    "request id `a` is named twice - at `$.err_reqs[0]`");
	expect_resp_refused(resp_msg(1, e, 1, NULL, -1, NULL, 0), "str is empty (1 to 127 bytes) - at `$.ok_reqs[0]`");
	expect_resp_refused(resp_msg(2, ab, 1, NULL, -1, "x", 1),
			    "an ERROR reply names 1 request(s) as done - at `$.ok_reqs`");
	expect_resp_refused(resp_msg(0, NULL, -1, NULL, -1, "a\0b", 3), "str holds a NUL byte - at `$.err_msg`");
	char *big = g_malloc(KVB_VLLM_ERR_MSG_MAX);
	memset(big, 'm', KVB_VLLM_ERR_MSG_MAX);
	expect_resp_refused(resp_msg(0, NULL, -1, NULL, -1, big, KVB_VLLM_ERR_MSG_MAX),
			    "str of 65536 bytes (at most 65535) - at `$.err_msg`");
	g_free(big);
	char id[KVB_VLLM_ID_MAX + 1];
	memset(id, 'i', KVB_VLLM_ID_MAX);
	id[KVB_VLLM_ID_MAX] = '\0';
	const char *const longid[] = {id};
	expect_resp_refused(resp_msg(0, NULL, -1, longid, 1, NULL, 0), "is 128 bytes (at most 127) - at `$.err_reqs[0]`");
	/* msgspec's own refusals on a few more shapes */
	expect_resp_refused(resp_msg(3, NULL, -1, NULL, -1, NULL, 0), "Invalid enum value 3 - at `$.status`");
	GByteArray *b = resp_msg(0, ab, 2, NULL, -1, NULL, 0);
	g_byte_array_append(b, (const guint8 *)"\x00", 1);
	expect_resp_refused(b, "MessagePack data is malformed: trailing characters (byte 22)");
	/* an ERROR reply with err_reqs is fine; an empty ok list too */
	kvb_vllm_xfer_resp_t r;
	b = resp_msg(2, ab, 0, ab, 2, "boom", 4);
	ck_assert_int_eq(kvb_vllm_xfer_resp_decode(b->data, b->len, &r, NULL), KVB_OK);
	ck_assert(r.has_ok_reqs);
	ck_assert_uint_eq(r.n_err_reqs, 2);
	ck_assert_str_eq(r.err_msg, "boom");
	kvb_vllm_xfer_resp_clear(&r);
	g_byte_array_unref(b);
	/* the builders refuse what the decoder would */
	kvb_vllm_xfer_resp_init(&r, KVB_VLLM_XFER_ERROR);
	kvb_err_t err;
	ck_assert_int_eq(kvb_vllm_xfer_resp_add_ok(&r, "a", &err), KVB_OK);
	GByteArray *out = g_byte_array_new();
	ck_assert_int_eq(kvb_vllm_xfer_resp_encode(out, &r, &err), KVB_ERR_INVALID);
	ck_assert_uint_eq(out->len, 0);
	ck_assert_int_eq(kvb_vllm_xfer_resp_add_err(&r, "a", &err), KVB_ERR_EXISTS);
	ck_assert_int_eq(kvb_vllm_xfer_resp_add_err(&r, id, &err), KVB_ERR_INVALID);
	ck_assert_int_eq(kvb_vllm_xfer_resp_set_err_msg(&r, "\xc3\x28", &err), KVB_ERR_INVALID);
	r.status = (kvb_vllm_xfer_status_t)7;
	ck_assert_int_eq(kvb_vllm_xfer_resp_encode(out, &r, &err), KVB_ERR_INVALID);
	kvb_vllm_xfer_resp_clear(&r);
	g_byte_array_unref(out);
}
END_TEST

/* ---- profiles and the classifier ------------------------------------------- */

START_TEST(test_profiles)
{
	static const struct {
		const char *v;
		int rc;
		kvb_vllm_xfer_profile_t p;
	} cases[] = {
		{"0.16.0", KVB_OK, KVB_VLLM_XFER_V016},  {"0.18.1", KVB_OK, KVB_VLLM_XFER_V016},
		{"0.19.0", KVB_OK, KVB_VLLM_XFER_V019},  {"0.19.1", KVB_OK, KVB_VLLM_XFER_V019},
		{"0.20.0", KVB_OK, KVB_VLLM_XFER_V020},  {"0.22.1", KVB_OK, KVB_VLLM_XFER_V020},
		{"0.23.0", KVB_OK, KVB_VLLM_XFER_V020},  {"0.24.0", KVB_OK, KVB_VLLM_XFER_V024},
		{"0.25.1", KVB_OK, KVB_VLLM_XFER_V025},  {"0.29.0", KVB_OK, KVB_VLLM_XFER_V025},
		{"0.30.0", KVB_OK, KVB_VLLM_XFER_V030},  {"0.31.0", KVB_OK, KVB_VLLM_XFER_V030},
		{"0.32.0", KVB_OK, KVB_VLLM_XFER_V032},  {"0.32.0+cpu", KVB_OK, KVB_VLLM_XFER_V032},
		{"0.25", KVB_OK, KVB_VLLM_XFER_V025},
		{"0.15.1", KVB_ERR_UNSUPPORTED, 0},     {"0.33.0", KVB_ERR_UNSUPPORTED, 0},
		{"1.0.0", KVB_ERR_UNSUPPORTED, 0},      {"x", KVB_ERR_INVALID, 0},
		{"0.", KVB_ERR_INVALID, 0},             {"0.22.", KVB_ERR_INVALID, 0},
		{"", KVB_ERR_INVALID, 0},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
		kvb_vllm_xfer_profile_t p = KVB_VLLM_XFER_ANY;
		kvb_err_t err;
		int rc = kvb_vllm_xfer_profile_from_version(cases[i].v, &p, &err);
		ck_assert_msg(rc == cases[i].rc, "%s: %d (%s)", cases[i].v, rc, err.msg);
		if (rc == KVB_OK)
			ck_assert_int_eq(p, cases[i].p);
	}
	/* the field table of the header, bit by bit */
	static const uint32_t fields[] = {0x3fff, 0x3f, 0x7f, 0x7f, 0x37f, 0x7ff, 0x27ff, 0x3fff};
	static const uint32_t required[] = {0x3f, 0x3f, 0x7f, 0x7f, 0x7f, 0xff, 0xff, 0xff};
	for (int p = 0; p <= KVB_VLLM_XFER_PROFILE_LAST; p++) {
		ck_assert_uint_eq(kvb_vllm_xfer_profile_fields(p), fields[p]);
		ck_assert_uint_eq(kvb_vllm_xfer_profile_required(p), required[p]);
		ck_assert_ptr_nonnull(kvb_vllm_xfer_profile_name(p));
	}
	ck_assert_int_eq(kvb_vllm_xfer_profile_form(KVB_VLLM_XFER_V019), KVB_VLLM_BLOCKS_FLAT);
	ck_assert_int_eq(kvb_vllm_xfer_profile_form(KVB_VLLM_XFER_V020), KVB_VLLM_BLOCKS_GROUPED);
	ck_assert_ptr_null(kvb_vllm_xfer_profile_name((kvb_vllm_xfer_profile_t)8));
	ck_assert_str_eq(kvb_vllm_xfer_field_name(KVB_VLLM_XF_ROW_OFFSETS), "registered_row_offsets");
	ck_assert_ptr_null(kvb_vllm_xfer_field_name((kvb_vllm_xfer_field_t)14));
}
END_TEST

START_TEST(test_classify)
{
	/* a Gen 0 MooncakeAgentMetadata, as kvb_vllm_meta_encode writes it */
	kvb_vllm_meta_t gen0;
	static const uint64_t bases[] = {4096};
	static const uint32_t ids[] = {1, 2};
	ck_assert_int_eq(kvb_vllm_meta_init(&gen0, "10.0.0.7", 15000, bases, 1, NULL), KVB_OK);
	ck_assert_int_eq(kvb_vllm_meta_add_request(&gen0, "r", ids, 2, NULL), KVB_OK);
	GByteArray *b = g_byte_array_new();
	ck_assert_int_eq(kvb_vllm_meta_encode(KVB_VLLM_GEN0, b, &gen0, NULL), KVB_OK);
	kvb_vllm_meta_clear(&gen0);
	ck_assert_int_eq(kvb_vllm_payload_classify(b->data, b->len), KVB_VLLM_PAYLOAD_AGENT_META);
	/* the same with one byte more is not one message */
	g_byte_array_append(b, (const guint8 *)"\xc0", 1);
	ck_assert_int_eq(kvb_vllm_payload_classify(b->data, b->len), KVB_VLLM_PAYLOAD_OTHER);
	ck_assert_int_eq(kvb_vllm_payload_classify(b->data, b->len - 2), KVB_VLLM_PAYLOAD_OTHER);
	g_byte_array_unref(b);
	static const char *const metas[] = {"meta_v016_basic.msgpack", "meta_v032_real.msgpack",
					    "meta_v032_empty.msgpack", "err_port_str.msgpack"};
	for (size_t i = 0; i < G_N_ELEMENTS(metas); i++) {
		GBytes *g = fixture(metas[i]);
		gsize len;
		const void *data = g_bytes_get_data(g, &len);
		ck_assert_int_eq(kvb_vllm_payload_classify(data, len), KVB_VLLM_PAYLOAD_XFER_META);
		g_bytes_unref(g);
	}
	static const char *const others[] = {"resp_continue_ok.msgpack", "err_not_map.msgpack",
					     "err_truncated.msgpack", "err_empty.msgpack",
					     "err_root_key_int.msgpack"};
	for (size_t i = 0; i < G_N_ELEMENTS(others); i++) {
		GBytes *g = fixture(others[i]);
		gsize len;
		const void *data = g_bytes_get_data(g, &len);
		ck_assert_msg(kvb_vllm_payload_classify(data, len) == KVB_VLLM_PAYLOAD_OTHER, "%s",
			      others[i]);
		g_bytes_unref(g);
	}
	ck_assert_int_eq(kvb_vllm_payload_classify("trans_done", 10), KVB_VLLM_PAYLOAD_OTHER);
	ck_assert_int_eq(kvb_vllm_payload_classify(NULL, 0), KVB_VLLM_PAYLOAD_OTHER);
	/* both generations' keys: neither */
	GBytes *real = fixture("meta_v032_real.msgpack");
	b = g_byte_array_new();
	g_byte_array_append(b, g_bytes_get_data(real, NULL), (guint)g_bytes_get_size(real));
	g_bytes_unref(real);
	b->data[0]++; /* fixmap: one more entry */
	msgpack_packer pk;
	msgpack_packer_init(&pk, b, gba_write);
	pstr(&pk, "request_ids");
	msgpack_pack_array(&pk, 0);
	ck_assert_int_eq(kvb_vllm_payload_classify(b->data, b->len), KVB_VLLM_PAYLOAD_OTHER);
	g_byte_array_unref(b);
}
END_TEST

Suite *kvb_suite_vllm_xfer_resp(void)
{
	Suite *s = suite_create("vllm_xfer_resp");
	TCase *tc = tcase_create("resp");
	tcase_add_test(tc, test_golden_resp);
	tcase_add_test(tc, test_golden_resp_errors);
	tcase_add_test(tc, test_resp_refusals);
	tcase_add_test(tc, test_profiles);
	tcase_add_test(tc, test_classify);
	suite_add_tcase(s, tc);
	return s;
}
