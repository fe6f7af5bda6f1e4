/* vLLM Gen 1/2 HTTP bootstrap bodies: /register and /query replayed against
 * the replies of vLLM's own MooncakeBootstrapServer (tests/fixtures/vllm/
 * bootstrap_*.tsv, made by gen_bootstrap.py from the 0.30.0 and 0.32.0
 * wheels), the D side's /query parser, and tcp:// worker addresses. */
#include "config.h"

#include <string.h>

#include <check.h>
#include <glib.h>
#include <json-glib/json-glib.h>

#include "kvb_vllm_bootstrap_wire.h"
#include "suites.h"

static char *fixture_text(const char *name)
{
	char *path = g_build_filename(KVB_FIXTURES_DIR, name, NULL);
	gchar *data;
	GError *gerr = NULL;
	if (!g_file_get_contents(path, &data, NULL, &gerr))
		ck_abort_msg("fixture %s: %s", path, gerr->message);
	g_free(path);
	return data;
}

/* The request body column: a JSON string literal. */
static char *json_string_literal(const char *lit)
{
	JsonParser *p = json_parser_new();
	ck_assert(json_parser_load_from_data(p, lit, -1, NULL));
	char *s = g_strdup(json_node_get_string(json_parser_get_root(p)));
	g_object_unref(p);
	return s;
}

/* Replay every request of a release's table against one registry. */
static void replay(const char *file, unsigned flags, unsigned *n_rows)
{
	char *text = fixture_text(file);
	char **lines = g_strsplit(text, "\n", -1);
	kvb_vllm_registry_t *reg = kvb_vllm_registry_new(flags);
	unsigned rows = 0;
	for (char **l = lines; *l && **l; l++) {
		char **f = g_strsplit(*l, "\t", 6);
		ck_assert_ptr_nonnull(f[5]);
		const char *name = f[0];
		char *body = json_string_literal(f[3]);
		bool status_only = strchr(f[4], '?') != NULL || !strcmp(name, "bad_engine_nul");
		unsigned want = (unsigned)atoi(f[4]);
		GString *reply = g_string_new(NULL);
		unsigned got;
		if (!strcmp(f[1], "GET")) {
			kvb_vllm_registry_query_json(reg, reply);
			got = 200;
		} else {
			kvb_err_t err;
			kvb_err_clear(&err);
			int rc = kvb_vllm_registry_handle(reg, body, strlen(body), &got, reply, &err);
			ck_assert_msg((rc == KVB_OK) == (got == 200), "%s: rc %d, status %u", name, rc, got);
			if (rc)
				ck_assert_msg(err.msg[0], "%s: refusal without a message", name);
		}
		ck_assert_msg(got == want, "%s: status %u, vLLM answered %u", name, got, want);
		if (status_only)
			ck_assert_msg(strstr(reply->str, "\"type\":\"json_invalid\""), "%s: %s", name,
				      reply->str);
		else
			ck_assert_msg(!strcmp(reply->str, f[5]), "%s:\n ours %s\n vLLM %s", name,
				      reply->str, f[5]);
		g_string_free(reply, TRUE);
		g_free(body);
		g_strfreev(f);
		rows++;
	}
	kvb_vllm_registry_free(reg);
	g_strfreev(lines);
	g_free(text);
	*n_rows = rows;
}

START_TEST(test_golden_v032)
{
	unsigned rows;
	replay("bootstrap_0.32.0.tsv", KVB_VLLM_REGISTRY_IDENTICAL_OK, &rows);
	ck_assert_uint_ge(rows, 30);
}
END_TEST

START_TEST(test_golden_v030)
{
	/* before 0.31 the same worker registering again is a 400 */
	unsigned rows;
	replay("bootstrap_0.30.0.tsv", 0, &rows);
	ck_assert_uint_ge(rows, 30);
}
END_TEST

START_TEST(test_worker_addr)
{
	static const struct {
		const char *s;
		const char *host;
		unsigned port;
		bool v6;
	} ok[] = {
		{"tcp://127.0.0.1:5555", "127.0.0.1", 5555, false},
		{"tcp://[::1]:7777", "::1", 7777, true},
		{"tcp://[fe80::1%eth0]:65535", "fe80::1%eth0", 65535, true},
		{"tcp://[2001:db8::8:800:200c:417a]:1", "2001:db8::8:800:200c:417a", 1, true},
		{"tcp://prefill-0.cluster_a.local:49152", "prefill-0.cluster_a.local", 49152, false},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(ok); i++) {
		kvb_vllm_worker_addr_t a;
		kvb_err_t err;
		int rc = kvb_vllm_worker_addr_parse(ok[i].s, &a, &err);
		ck_assert_msg(rc == KVB_OK, "%s: %s", ok[i].s, err.msg);
		ck_assert_str_eq(a.host, ok[i].host);
		ck_assert_uint_eq(a.port, ok[i].port);
		ck_assert_int_eq(a.ipv6, ok[i].v6);
		char back[KVB_VLLM_ADDR_MAX];
		ck_assert_int_eq(kvb_vllm_worker_addr_format(a.host, a.port, back, sizeof(back), NULL),
				 KVB_OK);
		ck_assert_str_eq(back, ok[i].s);
	}
	static const struct {
		const char *s;
		const char *needle;
	} bad[] = {
		{"tcp://h:0", "port is not 1..65535"},     {"tcp://h:65536", "port is not"},
		{"tcp://h:08", "port is not"},             {"tcp://h:", "port is not"},
		{"tcp://h:1x", "port is not"},             {"tcp://h:+1", "port is not"},
		{"tcp://::1:5", "expected host:port"},     {"tcp://:5", "expected host:port"},
		{"tcp://h", "expected host:port"},         {"http://h:1", "is not tcp://host:port"},
		{"tcp://[::1]5", "expected [IPv6]:port"},   {"tcp://[1.2.3.4]:5", "is not an IPv6"},
		{"tcp://[::1%]:5", "empty IPv6 zone"},     {"tcp://[::1%e/0]:5", "bad IPv6 zone"},
		{"tcp://*:5", "expected host:port"},       {"", "is not tcp://"},
		{"tcp://h:5 ", "port is not"},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
		kvb_vllm_worker_addr_t a;
		kvb_err_t err;
		ck_assert_int_eq(kvb_vllm_worker_addr_parse(bad[i].s, &a, &err), KVB_ERR_PROTOCOL);
		ck_assert_msg(strstr(err.msg, bad[i].needle), "%s: '%s'", bad[i].s, err.msg);
	}
	char small[8];
	ck_assert_int_eq(kvb_vllm_worker_addr_format("10.0.0.1", 5, small, sizeof(small), NULL),
			 KVB_ERR_INVALID);
	char buf[64];
	ck_assert_int_eq(kvb_vllm_worker_addr_format("bad host", 5, buf, sizeof(buf), NULL),
			 KVB_ERR_INVALID);
}
END_TEST

START_TEST(test_register_codec)
{
	kvb_vllm_register_t r = {.dp_rank = 3, .tp_rank = 1, .pp_rank = 65535};
	g_strlcpy(r.engine_id, "5d8c0f1e-7a2b-4c3d-9e8f-0a1b2c3d4e5f_dp3", sizeof(r.engine_id));
	g_strlcpy(r.addr, "tcp://[fd00::2]:50001", sizeof(r.addr));
	GString *s = g_string_new(NULL);
	ck_assert_int_eq(kvb_vllm_register_encode(&r, s, NULL), KVB_OK);
	ck_assert_str_eq(s->str, "{\"engine_id\":\"5d8c0f1e-7a2b-4c3d-9e8f-0a1b2c3d4e5f_dp3\","
				 "\"dp_rank\":3,\"tp_rank\":1,\"pp_rank\":65535,"
				 "\"addr\":\"tcp://[fd00::2]:50001\"}");
	kvb_vllm_register_t back;
	kvb_err_t err;
	ck_assert_int_eq(kvb_vllm_register_decode(s->str, s->len, &back, NULL, &err), KVB_OK);
	ck_assert_str_eq(back.engine_id, r.engine_id);
	ck_assert_uint_eq(back.pp_rank, 65535);
	ck_assert_str_eq(back.where.host, "fd00::2");
	ck_assert_uint_eq(back.where.port, 50001);
	/* what the decoder refuses is not encoded */
	r.pp_rank = 65536;
	g_string_truncate(s, 0);
	ck_assert_int_eq(kvb_vllm_register_encode(&r, s, &err), KVB_ERR_INVALID);
	ck_assert_uint_eq(s->len, 0);
	r.pp_rank = 0;
	g_strlcpy(r.addr, "tcp://h:0", sizeof(r.addr));
	ck_assert_int_eq(kvb_vllm_register_encode(&r, s, &err), KVB_ERR_INVALID);
	g_string_free(s, TRUE);
	/* JSON that json-glib would take but JSON is not, and what it cannot hold */
	static const struct {
		const char *body;
		const char *needle;
	} bad[] = {
		{"{\"engine_id\":\"e\",\"dp_rank\":0,\"tp_rank\":0,\"pp_rank\":0,\"addr\":\"tcp://h:1\"}{}",
		 "Extra data"},
		{"{'engine_id':'e'}", "property name enclosed in double quotes"},
		{"{\"dp_rank\":00}", "leading zero"},
		{"{\"dp_rank\":1,}", "property name"},
		{"[1,]", "Expecting value"},
		{"{\"dp_rank\":-9223372036854775809}", "beyond 64 bits"},
		{"{\"dp_rank\":99999999999999999999}", "beyond 64 bits"},
		{"{\"engine_id\":\"a\\u0000b\"}", "NUL"},
		{"{\"engine_id\":\"\\ud800\"}", "lone surrogate"},
		{"{\"engine_id\":\"\xc3\x28\"}", "not UTF-8"},
		{"{\"dp_rank\":0,\"dp_rank\":1}", "Duplicate key 'dp_rank'"},
		{"{\"a\":\"\x01\"}", "control character"},
		{"nul\x00l", "at byte 3: Text that is not UTF-8"},
		{" ", "Expecting value"},
		{"{\"tp_r\":[1e1616,-0.0]}", "beyond the range of a double"},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
		GString *reply = g_string_new(NULL);
		size_t len = i == 12 ? 6 : strlen(bad[i].body);
		ck_assert_int_eq(kvb_vllm_register_decode(bad[i].body, len, &back, reply, &err),
				 KVB_ERR_PROTOCOL);
		ck_assert_msg(strstr(err.msg, bad[i].needle), "case %zu: '%s'", i, err.msg);
		ck_assert_msg(g_str_has_prefix(reply->str,
					       "{\"detail\":[{\"type\":\"json_invalid\",\"loc\":[\"body\","),
			      "case %zu: %s", i, reply->str);
		ck_assert_uint_eq(back.dp_rank, 0);
		ck_assert_str_eq(back.engine_id, "");
		g_string_free(reply, TRUE);
	}
	/* 33 levels of nesting: refused before json-glib recurses */
	GString *deep = g_string_new("{\"x\":");
	for (int i = 0; i < 40; i++)
		g_string_append_c(deep, '[');
	for (int i = 0; i < 40; i++)
		g_string_append_c(deep, ']');
	g_string_append_c(deep, '}');
	ck_assert_int_eq(kvb_vllm_register_decode(deep->str, deep->len, &back, NULL, &err),
			 KVB_ERR_PROTOCOL);
	ck_assert_ptr_nonnull(strstr(err.msg, "Nesting deeper than 32"));
	g_string_free(deep, TRUE);
	char *big = g_malloc0(KVB_VLLM_BOOT_BODY_MAX + 2);
	memset(big, ' ', KVB_VLLM_BOOT_BODY_MAX + 1);
	ck_assert_int_eq(kvb_vllm_register_decode(big, KVB_VLLM_BOOT_BODY_MAX + 1, &back, NULL, &err),
			 KVB_ERR_PROTOCOL);
	ck_assert_ptr_nonnull(strstr(err.msg, "65537 bytes"));
	g_free(big);
}
END_TEST

START_TEST(test_422_echo_floats)
{
	/* the input echo of a float is Python's repr() of it */
	static const struct {
		const char *num;
		const char *repr;
	} cases[] = {
		{"4.0", "4.0"}, {"1.5", "1.5"}, {"0.1", "0.1"}, {"-0.0", "-0.0"},
		{"1e-05", "1e-05"}, {"0.0001", "0.0001"}, {"1e16", "1e+16"},
		{"1e15", "1000000000000000.0"}, {"123456789.125", "123456789.125"},
		{"5e-324", "5e-324"}, {"1.7976931348623157e308", "1.7976931348623157e+308"},
		{"2.5E3", "2500.0"}, {"-1.25e-7", "-1.25e-07"},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
		char *body = g_strdup_printf("{\"engine_id\":\"e\",\"dp_rank\":%s,\"tp_rank\":0,"
					     "\"pp_rank\":0,\"addr\":\"tcp://h:1\"}", cases[i].num);
		char *want = g_strdup_printf("{\"detail\":[{\"type\":\"int_type\",\"loc\":[\"body\","
					     "\"dp_rank\"],\"msg\":\"Input should be a valid integer\","
					     "\"input\":%s}]}", cases[i].repr);
		GString *reply = g_string_new(NULL);
		kvb_vllm_register_t r;
		ck_assert_int_eq(kvb_vllm_register_decode(body, strlen(body), &r, reply, NULL),
				 KVB_ERR_PROTOCOL);
		ck_assert_str_eq(reply->str, want);
		g_string_free(reply, TRUE);
		g_free(body);
		g_free(want);
	}
}
END_TEST

START_TEST(test_registry_limits)
{
	kvb_vllm_registry_t *reg = kvb_vllm_registry_new(KVB_VLLM_REGISTRY_IDENTICAL_OK);
	kvb_vllm_register_t w = {.dp_rank = 0};
	g_strlcpy(w.engine_id, "e", sizeof(w.engine_id));
	g_strlcpy(w.addr, "tcp://h:1", sizeof(w.addr));
	for (uint32_t i = 0; i < KVB_VLLM_BOOT_MAX_WORKERS; i++) {
		w.tp_rank = i / 16;
		w.pp_rank = i % 16;
		ck_assert_int_eq(kvb_vllm_registry_add(reg, &w, NULL, NULL), KVB_OK);
	}
	ck_assert_uint_eq(kvb_vllm_registry_size(reg), KVB_VLLM_BOOT_MAX_WORKERS);
	/* the same again is still fine; one more is not */
	ck_assert_int_eq(kvb_vllm_registry_add(reg, &w, NULL, NULL), KVB_OK);
	w.pp_rank = 16;
	GString *reply = g_string_new(NULL);
	kvb_err_t err;
	ck_assert_int_eq(kvb_vllm_registry_add(reg, &w, reply, &err), KVB_ERR_NO_RESOURCE);
	ck_assert_str_eq(reply->str, "{\"detail\":\"Registry full: 4096 workers registered "
				     "(kvbridge's limit)\"}");
	/* and what it serves, a D reads back whole */
	g_string_truncate(reply, 0);
	kvb_vllm_registry_query_json(reg, reply);
	kvb_vllm_boot_query_t q;
	int rc = kvb_vllm_query_decode(reply->str, reply->len, &q, &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	ck_assert_uint_eq(q.n_engines, 1);
	ck_assert_uint_eq(q.engines[0].tp_size, 256);
	ck_assert_uint_eq(q.n_workers, KVB_VLLM_BOOT_MAX_WORKERS);
	ck_assert_ptr_nonnull(kvb_vllm_query_worker(&q, &q.engines[0], 255, 15));
	kvb_vllm_query_clear(&q);
	g_string_free(reply, TRUE);
	kvb_vllm_registry_free(reg);
	kvb_vllm_registry_free(NULL);
}
END_TEST

START_TEST(test_query_decode)
{
	/* the body vLLM 0.32.0 served after the golden registrations */
	char *text = fixture_text("bootstrap_0.32.0.tsv");
	char *row = strstr(text, "query_full\t");
	ck_assert_ptr_nonnull(row);
	char **f = g_strsplit(row, "\t", 6);
	char *nl = strchr(f[5], '\n');
	if (nl)
		*nl = '\0';
	kvb_vllm_boot_query_t q;
	kvb_err_t err;
	int rc = kvb_vllm_query_decode(f[5], strlen(f[5]), &q, &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	ck_assert_uint_eq(q.n_engines, 3);
	const kvb_vllm_boot_engine_t *e0 = kvb_vllm_query_engine(&q, "e0");
	ck_assert_ptr_nonnull(e0);
	ck_assert_uint_eq(e0->dp_rank, 0);
	ck_assert_uint_eq(e0->tp_size, 3);
	ck_assert_uint_eq(e0->n_workers, 4);
	const kvb_vllm_boot_worker_t *w = kvb_vllm_query_worker(&q, e0, 0, 1);
	ck_assert_ptr_nonnull(w);
	ck_assert_str_eq(w->where.host, "prefill-0.cluster");
	ck_assert_uint_eq(w->where.port, 8);
	w = kvb_vllm_query_worker(&q, e0, 1, 0);
	ck_assert(w->where.ipv6);
	ck_assert_str_eq(w->where.host, "::1");
	ck_assert_ptr_null(kvb_vllm_query_worker(&q, e0, 1, 1));
	const kvb_vllm_boot_engine_t *e3 = kvb_vllm_query_engine(&q, "é\"\\\n\t\x01/ü");
	ck_assert_ptr_nonnull(e3);
	ck_assert_uint_eq(e3->dp_rank, 3);
	ck_assert_str_eq(q.workers[e3->first_worker].where.host, "fe80::1%eth0");
	ck_assert_ptr_null(kvb_vllm_query_engine(&q, "e9"));
	kvb_vllm_query_clear(&q);
	g_strfreev(f);
	g_free(text);
	/* an empty registry, and a later release's extra member */
	ck_assert_int_eq(kvb_vllm_query_decode("{}", 2, &q, NULL), KVB_OK);
	ck_assert_uint_eq(q.n_engines, 0);
	kvb_vllm_query_clear(&q);
	static const char extra[] = "{\"0\":{\"engine_id\":\"e\",\"worker_addr\":{\"0\":{\"0\":"
				    "\"tcp://h:1\"}},\"zone\":{\"a\":[1]}}}";
	ck_assert_int_eq(kvb_vllm_query_decode(extra, strlen(extra), &q, NULL), KVB_OK);
	ck_assert_uint_eq(q.n_workers, 1);
	kvb_vllm_query_clear(&q);
	static const struct {
		const char *body;
		const char *needle;
	} bad[] = {
		{"[]", "not a JSON object"},
		{"{\"00\":{}}", "dp key \"00\" is not a rank"},
		{"{\"-1\":{}}", "dp key \"-1\""},
		{"{\"65536\":{}}", "dp key \"65536\""},
		{"{\"0\":[]}", "dp 0 is not an object"},
		{"{\"0\":{\"worker_addr\":{}}}", "engine_id missing"},
		{"{\"0\":{\"engine_id\":\"\",\"worker_addr\":{}}}", "engine_id of 0 bytes"},
		{"{\"0\":{\"engine_id\":\"e\"}}", "worker_addr missing"},
		{"{\"0\":{\"engine_id\":\"e\",\"worker_addr\":{}}}", "worker_addr is empty"},
		{"{\"0\":{\"engine_id\":\"e\",\"worker_addr\":{\"1\":{\"0\":\"tcp://h:1\"}}}}",
		 "tp key \"1\" is not one of 0..0"},
		{"{\"0\":{\"engine_id\":\"e\",\"worker_addr\":{\"0\":{}}}}", "not a non-empty object"},
		{"{\"0\":{\"engine_id\":\"e\",\"worker_addr\":{\"0\":{\"x\":\"tcp://h:1\"}}}}",
		 "pp key \"x\""},
		{"{\"0\":{\"engine_id\":\"e\",\"worker_addr\":{\"0\":{\"0\":5}}}}", "addr is not a str"},
		{"{\"0\":{\"engine_id\":\"e\",\"worker_addr\":{\"0\":{\"0\":\"tcp://h:0\"}}}}",
		 "port is not 1..65535"},
		{"{\"0\":{\"engine_id\":\"e\",\"worker_addr\":{\"0\":{\"0\":\"tcp://h:1\"}}},"
		 "\"1\":{\"engine_id\":\"e\",\"worker_addr\":{\"0\":{\"0\":\"tcp://h:2\"}}}}",
		 "engine_id e names dp 0 and dp 1"},
		{"{\"0\":{\"engine_id\":\"e\",\"worker_addr\":{\"0\":{\"0\":\"tcp://h:1\",\"0\":"
		 "\"tcp://h:2\"}}}}", "Duplicate key '0'"},
		{"{\"0\":{}}{}", "Extra data"},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
		memset(&q, 0x5a, sizeof(q));
		ck_assert_int_eq(kvb_vllm_query_decode(bad[i].body, strlen(bad[i].body), &q, &err),
				 KVB_ERR_PROTOCOL);
		ck_assert_msg(strstr(err.msg, bad[i].needle), "case %zu: '%s'", i, err.msg);
		ck_assert_ptr_null(q.engines);
		ck_assert_ptr_null(q.workers);
	}
}
END_TEST

Suite *kvb_suite_vllm_bootstrap_wire(void)
{
	Suite *s = suite_create("vllm_bootstrap_wire");
	TCase *tc = tcase_create("bootstrap");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_golden_v032);
	tcase_add_test(tc, test_golden_v030);
	tcase_add_test(tc, test_worker_addr);
	tcase_add_test(tc, test_register_codec);
	tcase_add_test(tc, test_422_echo_floats);
	tcase_add_test(tc, test_registry_limits);
	tcase_add_test(tc, test_query_decode);
	suite_add_tcase(s, tc);
	return s;
}
