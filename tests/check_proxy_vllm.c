/* kvbridge-proxy's router contracts (src/tools/kvb_proxy_vllm.h): the P
 * and D bodies of gen0 and gen2 field by field, the client's request left
 * untouched by them, the bootstrap address, and /query turned into dp
 * targets (refusals included). */
#include "config.h"

#include <string.h>

#include <check.h>
#include <glib.h>
#include <json-glib/json-glib.h>

#include "kvb_proxy_vllm.h"
#include "suites.h"

static const char *client_request =
	"{\"model\":\"m\",\"prompt\":\"hello\",\"max_tokens\":8,\"max_completion_tokens\":7,"
	"\"min_tokens\":3,\"min_completion_tokens\":2,\"stream\":true,"
	"\"stream_options\":{\"include_usage\":true},\"temperature\":0.5,"
	"\"kv_transfer_params\":{\"from\":\"client\"},\"stop\":[\"x\",\"y\"]}";

static JsonParser *parse(const char *s)
{
	JsonParser *p = json_parser_new();
	GError *gerr = NULL;
	ck_assert_msg(json_parser_load_from_data(p, s, -1, &gerr), "%s: %s", s,
		      gerr ? gerr->message : "?");
	ck_assert(JSON_NODE_HOLDS_OBJECT(json_parser_get_root(p)));
	return p;
}

static JsonObject *obj(JsonParser *p)
{
	return json_node_get_object(json_parser_get_root(p));
}

/* The client's request is as it came: each leg edits its own copy. */
static void assert_untouched(JsonParser *req)
{
	JsonObject *o = obj(req);
	ck_assert_uint_eq(json_object_get_size(o), 11);
	ck_assert_int_eq(json_object_get_int_member(o, "max_tokens"), 8);
	ck_assert_int_eq(json_object_get_int_member(o, "max_completion_tokens"), 7);
	ck_assert_int_eq(json_object_get_int_member(o, "min_tokens"), 3);
	ck_assert(json_object_get_boolean_member(o, "stream"));
	ck_assert(json_object_has_member(o, "stream_options"));
	ck_assert_str_eq(json_object_get_string_member(json_object_get_object_member(o, "kv_transfer_params"),
						       "from"), "client");
}

START_TEST(test_protocol_names)
{
	kvb_proxy_protocol_t p = KVB_PROXY_GEN0;
	ck_assert(kvb_proxy_protocol_parse("gen2", &p) && p == KVB_PROXY_GEN2);
	p = KVB_PROXY_GEN0;
	ck_assert(kvb_proxy_protocol_parse("gen1", &p) && p == KVB_PROXY_GEN2);
	ck_assert(kvb_proxy_protocol_parse("GEN2", &p) && p == KVB_PROXY_GEN2);
	ck_assert(kvb_proxy_protocol_parse("gen0", &p) && p == KVB_PROXY_GEN0);
	const char *bad[] = {"gen3", "gen", "", "gen2 ", "0", "toy"};
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++)
		ck_assert_msg(!kvb_proxy_protocol_parse(bad[i], &p), "'%s' accepted", bad[i]);
	ck_assert(!kvb_proxy_protocol_parse(NULL, &p));
	ck_assert_str_eq(kvb_proxy_protocol_name(KVB_PROXY_GEN0), "gen0");
	ck_assert_str_eq(kvb_proxy_protocol_name(KVB_PROXY_GEN2), "gen2");
}
END_TEST

START_TEST(test_gen2_prefill_body)
{
	JsonParser *req = parse(client_request);
	char *s = kvb_proxy_prefill_body(KVB_PROXY_GEN2, json_parser_get_root(req), "xfer-abc");
	JsonParser *pp = parse(s);
	JsonObject *o = obj(pp);
	/* model prompt max_tokens max_completion_tokens stream temperature kv_transfer_params stop */
	ck_assert_uint_eq(json_object_get_size(o), 8);
	ck_assert_int_eq(json_object_get_int_member(o, "max_tokens"), 1);
	ck_assert_int_eq(json_object_get_int_member(o, "max_completion_tokens"), 1);
	ck_assert(!json_object_get_boolean_member(o, "stream"));
	ck_assert(!json_object_has_member(o, "stream_options"));
	ck_assert(!json_object_has_member(o, "min_tokens"));
	ck_assert(!json_object_has_member(o, "min_completion_tokens"));
	ck_assert_str_eq(json_object_get_string_member(o, "prompt"), "hello");
	ck_assert_uint_eq(json_array_get_length(json_object_get_array_member(o, "stop")), 2);
	JsonObject *kp = json_object_get_object_member(o, "kv_transfer_params");
	ck_assert_uint_eq(json_object_get_size(kp), 3);
	ck_assert(json_object_get_boolean_member(kp, "do_remote_decode"));
	ck_assert(!json_object_get_boolean_member(kp, "do_remote_prefill"));
	ck_assert_str_eq(json_object_get_string_member(kp, "transfer_id"), "xfer-abc");
	assert_untouched(req);
	g_object_unref(pp);
	g_free(s);

	/* no max_completion_tokens in the request: none in the P leg either */
	JsonParser *plain = parse("{\"prompt\":\"p\",\"max_tokens\":4}");
	s = kvb_proxy_prefill_body(KVB_PROXY_GEN2, json_parser_get_root(plain), "xfer-1");
	pp = parse(s);
	ck_assert(!json_object_has_member(obj(pp), "max_completion_tokens"));
	ck_assert(json_object_has_member(obj(pp), "stream"));
	g_object_unref(pp);
	g_free(s);
	g_object_unref(plain);
	g_object_unref(req);
}
END_TEST

START_TEST(test_gen0_prefill_body)
{
	JsonParser *req = parse(client_request);
	char *s = kvb_proxy_prefill_body(KVB_PROXY_GEN0, json_parser_get_root(req), "ignored");
	JsonParser *pp = parse(s);
	JsonObject *o = obj(pp);
	ck_assert_int_eq(json_object_get_int_member(o, "max_tokens"), 1);
	ck_assert(!json_object_get_boolean_member(o, "stream"));
	ck_assert(!json_object_has_member(o, "min_tokens"));
	JsonObject *kp = json_object_get_object_member(o, "kv_transfer_params");
	ck_assert_uint_eq(json_object_get_size(kp), 6);
	ck_assert(!json_object_has_member(kp, "transfer_id"));
	const char *nulls[] = {"remote_engine_id", "remote_block_ids", "remote_host", "remote_port"};
	for (size_t i = 0; i < G_N_ELEMENTS(nulls); i++)
		ck_assert_msg(json_object_get_null_member(kp, nulls[i]), "%s not null", nulls[i]);
	assert_untouched(req);
	g_object_unref(pp);
	g_free(s);
	g_object_unref(req);
}
END_TEST

START_TEST(test_gen2_decode_body)
{
	JsonParser *req = parse(client_request);
	char *s = kvb_proxy_gen2_decode_body(json_parser_get_root(req), "http://10.0.0.1:8998", "eng-7",
					     "xfer-abc");
	JsonParser *dp = parse(s);
	JsonObject *o = obj(dp);
	/* everything of the client's, only kv_transfer_params replaced */
	ck_assert_uint_eq(json_object_get_size(o), 11);
	ck_assert_int_eq(json_object_get_int_member(o, "max_tokens"), 8);
	ck_assert_int_eq(json_object_get_int_member(o, "min_tokens"), 3);
	ck_assert(json_object_get_boolean_member(o, "stream"));
	ck_assert(json_object_has_member(o, "stream_options"));
	JsonObject *kp = json_object_get_object_member(o, "kv_transfer_params");
	ck_assert_uint_eq(json_object_get_size(kp), 5);
	ck_assert(!json_object_get_boolean_member(kp, "do_remote_decode"));
	ck_assert(json_object_get_boolean_member(kp, "do_remote_prefill"));
	ck_assert_str_eq(json_object_get_string_member(kp, "remote_bootstrap_addr"), "http://10.0.0.1:8998");
	ck_assert_str_eq(json_object_get_string_member(kp, "remote_engine_id"), "eng-7");
	ck_assert_str_eq(json_object_get_string_member(kp, "transfer_id"), "xfer-abc");
	assert_untouched(req);
	g_object_unref(dp);
	g_free(s);
	g_object_unref(req);
}
END_TEST

START_TEST(test_gen0_decode_body)
{
	JsonParser *req = parse(client_request);
	const char *answer = "{\"id\":\"cmpl-1\",\"kv_transfer_params\":{\"do_remote_prefill\":true,"
			     "\"remote_host\":\"10.0.0.1\",\"remote_port\":5557}}";
	kvb_err_t err;
	kvb_err_clear(&err);
	char *s = kvb_proxy_gen0_decode_body(json_parser_get_root(req), answer, strlen(answer), &err);
	ck_assert_ptr_nonnull(s);
	JsonParser *dp = parse(s);
	JsonObject *o = obj(dp);
	ck_assert_uint_eq(json_object_get_size(o), 11);
	ck_assert_int_eq(json_object_get_int_member(o, "max_tokens"), 8);
	JsonObject *kp = json_object_get_object_member(o, "kv_transfer_params");
	ck_assert_uint_eq(json_object_get_size(kp), 3);
	ck_assert_str_eq(json_object_get_string_member(kp, "remote_host"), "10.0.0.1");
	ck_assert_int_eq(json_object_get_int_member(kp, "remote_port"), 5557);
	assert_untouched(req);
	g_object_unref(dp);
	g_free(s);

	/* a 0.16+ P answers kv_transfer_params null; not JSON; not an object */
	const char *bad[] = {"{\"id\":\"c\",\"kv_transfer_params\":null}", "{\"id\":\"c\"}", "not json",
			     "[1]", "{\"kv_transfer_params\":[1]}"};
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
		kvb_err_clear(&err);
		ck_assert_ptr_null(kvb_proxy_gen0_decode_body(json_parser_get_root(req), bad[i],
							      strlen(bad[i]), &err));
		ck_assert_int_eq(err.code, KVB_ERR_PROTOCOL);
		ck_assert_msg(strstr(err.msg, "no kv_transfer_params"), "%s: %s", bad[i], err.msg);
	}
	g_object_unref(req);
}
END_TEST

START_TEST(test_bootstrap_addr)
{
	const struct {
		const char *host;
		uint16_t port;
		const char *want;
	} cases[] = {
		{"10.0.0.1", 8998, "http://10.0.0.1:8998"},
		{"prefill-0.example", 9000, "http://prefill-0.example:9000"},
		{"::1", 8998, "http://[::1]:8998"},
		{"fe80::1%eth0", 1, "http://[fe80::1%eth0]:1"},
		{"[::1]", 8998, "http://[::1]:8998"},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
		char *s = kvb_proxy_bootstrap_addr(cases[i].host, cases[i].port);
		ck_assert_str_eq(s, cases[i].want);
		g_free(s);
	}
}
END_TEST

static void expect_query_refused(const char *body, const char *needle)
{
	kvb_err_t err;
	kvb_err_clear(&err);
	GArray *dps = kvb_proxy_query_dps(body, strlen(body), &err);
	ck_assert_msg(!dps, "'%s' accepted", body);
	ck_assert_int_eq(err.code, KVB_ERR_PROTOCOL);
	ck_assert_msg(strstr(err.msg, needle), "'%s': message '%s' lacks '%s'", body, err.msg, needle);
}

START_TEST(test_query_dps)
{
	/* as a 0.32.0 bootstrap server answers, dp ranks out of order, and a
	 * member a later release might add */
	const char *q = "{\"1\":{\"engine_id\":\"e-1\",\"worker_addr\":{\"0\":{\"0\":\"tcp://10.0.0.1:40001\"}}},"
			"\"0\":{\"engine_id\":\"e-0\",\"worker_addr\":{\"0\":{\"0\":\"tcp://10.0.0.1:40000\"},"
			"\"1\":{\"0\":\"tcp://10.0.0.1:40002\"}},\"tp_size\":2}}";
	kvb_err_t err;
	kvb_err_clear(&err);
	GArray *dps = kvb_proxy_query_dps(q, strlen(q), &err);
	ck_assert_msg(dps, "%s", err.msg);
	ck_assert_uint_eq(dps->len, 2);
	ck_assert_uint_eq(g_array_index(dps, kvb_proxy_dp_t, 0).dp_rank, 0);
	ck_assert_str_eq(g_array_index(dps, kvb_proxy_dp_t, 0).engine_id, "e-0");
	ck_assert_uint_eq(g_array_index(dps, kvb_proxy_dp_t, 1).dp_rank, 1);
	ck_assert_str_eq(g_array_index(dps, kvb_proxy_dp_t, 1).engine_id, "e-1");
	g_array_unref(dps);

	expect_query_refused("{}", "no dp rank registered");
	expect_query_refused("[]", "not a JSON object");
	expect_query_refused("", "invalid JSON");
	expect_query_refused("{\"0\":{\"engine_id\":\"e\"}}", "worker_addr");
	expect_query_refused("{\"0\":{\"worker_addr\":{\"0\":{\"0\":\"tcp://h:1\"}}}}", "engine_id");
	expect_query_refused("{\"00\":{\"engine_id\":\"e\",\"worker_addr\":{\"0\":{\"0\":\"tcp://h:1\"}}}}", "00");
	expect_query_refused("{\"0\":{\"engine_id\":5,\"worker_addr\":{\"0\":{\"0\":\"tcp://h:1\"}}}}", "engine_id");
	expect_query_refused("{\"0\":{\"engine_id\":\"e\",\"worker_addr\":{\"0\":{\"0\":\"http://h:1\"}}}}", "tcp://");
	expect_query_refused("{\"0\":{\"engine_id\":\"e\",\"worker_addr\":{\"0\":{\"0\":\"tcp://h:1\"}}},"
			     "\"1\":{\"engine_id\":\"e\",\"worker_addr\":{\"0\":{\"0\":\"tcp://h:2\"}}}}", "e");
}
END_TEST

Suite *kvb_suite_proxy_vllm(void)
{
	Suite *s = suite_create("proxy_vllm");
	TCase *tc = tcase_create("contracts");
	tcase_add_test(tc, test_protocol_names);
	tcase_add_test(tc, test_gen2_prefill_body);
	tcase_add_test(tc, test_gen0_prefill_body);
	tcase_add_test(tc, test_gen2_decode_body);
	tcase_add_test(tc, test_gen0_decode_body);
	tcase_add_test(tc, test_bootstrap_addr);
	tcase_add_test(tc, test_query_dps);
	suite_add_tcase(s, tc);
	return s;
}
