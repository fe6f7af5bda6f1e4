/* HTTP/1.1: heads parsed and refused as kvb_http.h lists, chunked bodies
 * split anywhere, writers whose output the parser reads back. */
#include "config.h"

#include <string.h>

#include <check.h>
#include <glib.h>

#include "kvb_http.h"
#include "suites.h"

/* Parse s[0, n) from a heap copy of exactly n bytes, so a read past the
 * end shows up under ASan and valgrind. */
static int parse_n(bool request, const char *s, size_t n, kvb_http_msg_t *m, kvb_err_t *err)
{
	char *copy = g_malloc(n ? n : 1);
	memcpy(copy, s, n);
	int rc = request ? kvb_http_parse_request(copy, n, m, err)
			 : kvb_http_parse_response(copy, n, m, err);
	g_free(copy);
	return rc;
}

static int parse(bool request, const char *s, kvb_http_msg_t *m, kvb_err_t *err)
{
	return parse_n(request, s, strlen(s), m, err);
}

static void expect_refused_n(bool request, const char *s, size_t n, const char *needle)
{
	kvb_http_msg_t m;
	kvb_err_t err;
	kvb_err_clear(&err);
	int rc = parse_n(request, s, n, &m, &err);
	ck_assert_msg(rc == KVB_ERR_PROTOCOL, "'%.60s' gave %d, not refused", s, rc);
	ck_assert_int_eq(err.code, KVB_ERR_PROTOCOL);
	ck_assert_msg(strstr(err.msg, needle), "'%.60s': message '%s' lacks '%s'", s, err.msg, needle);
	ck_assert_uint_eq(m.n_fields, 0);
	ck_assert_ptr_null(m.fields[0].name);
	kvb_http_msg_clear(&m); /* harmless on a refused msg */
}

static void expect_refused(bool request, const char *s, const char *needle)
{
	expect_refused_n(request, s, strlen(s), needle);
}

#define REQ true
#define RESP false

/* ---- accepted heads ------------------------------------------------------ */

START_TEST(test_request_fields)
{
	const char *s = "POST /v1/completions?stream=1 HTTP/1.1\r\n"
			"Host: router:8000\r\n"
			"content-type:application/json\r\n"
			"X-Request-Id: \t cmpl-7 \t \r\n"
			"Content-Length: 5\r\n"
			"X-Empty:\r\n"
			"X-Obs: caf\xc3\xa9\r\n"
			"\r\n"
			"hello";
	kvb_http_msg_t m;
	kvb_err_t err;
	ck_assert_int_eq(parse(REQ, s, &m, &err), KVB_OK);
	ck_assert(m.is_request);
	ck_assert_str_eq(m.method, "POST");
	ck_assert_str_eq(m.target, "/v1/completions?stream=1");
	ck_assert_int_eq(m.version_minor, 1);
	ck_assert_uint_eq(m.n_fields, 6);
	ck_assert_str_eq(m.fields[1].name, "content-type");
	ck_assert_str_eq(kvb_http_field_get(&m, "Content-Type"), "application/json");
	ck_assert_str_eq(kvb_http_field_get(&m, "x-request-id"), "cmpl-7");
	ck_assert_str_eq(kvb_http_field_get(&m, "X-EMPTY"), "");
	ck_assert_str_eq(kvb_http_field_get(&m, "x-obs"), "caf\xc3\xa9");
	ck_assert_ptr_null(kvb_http_field_get(&m, "Accept"));
	ck_assert(m.has_content_length);
	ck_assert_uint_eq(m.content_length, 5);
	ck_assert(!m.chunked);
	ck_assert(m.keep_alive);
	ck_assert_uint_eq(m.head_len, strlen(s) - 5);
	ck_assert_str_eq(s + m.head_len, "hello");
	kvb_http_msg_clear(&m);
	ck_assert_uint_eq(m.n_fields, 0);
	kvb_http_msg_clear(&m);
}
END_TEST

START_TEST(test_request_minimal_and_limits)
{
	kvb_http_msg_t m;
	ck_assert_int_eq(parse(REQ, "GET / HTTP/1.0\r\n\r\n", &m, NULL), KVB_OK);
	ck_assert_str_eq(m.method, "GET");
	ck_assert_str_eq(m.target, "/");
	ck_assert_int_eq(m.version_minor, 0);
	ck_assert_uint_eq(m.n_fields, 0);
	ck_assert(!m.has_content_length);
	ck_assert(!m.keep_alive);
	ck_assert_uint_eq(m.head_len, 18);
	kvb_http_msg_clear(&m);
	/* the longest method and target that fit, and exactly 64 fields */
	GString *g = g_string_new(NULL);
	g_string_append_printf(g, "%.*s ", KVB_HTTP_METHOD_MAX - 1, "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
	g_string_append_c(g, '/');
	for (uint32_t i = 1; i < KVB_HTTP_TARGET_MAX - 1; i++)
		g_string_append_c(g, 'a');
	g_string_append(g, " HTTP/1.1\r\n");
	for (uint32_t i = 0; i < KVB_HTTP_MAX_HEADERS; i++)
		g_string_append_printf(g, "X-F%u: %u\r\n", i, i);
	g_string_append(g, "\r\n");
	kvb_err_t err;
	ck_assert_msg(parse(REQ, g->str, &m, &err) == KVB_OK, "%s", err.msg);
	ck_assert_uint_eq(strlen(m.method), KVB_HTTP_METHOD_MAX - 1);
	ck_assert_uint_eq(strlen(m.target), KVB_HTTP_TARGET_MAX - 1);
	ck_assert_uint_eq(m.n_fields, KVB_HTTP_MAX_HEADERS);
	ck_assert_str_eq(kvb_http_field_get(&m, "x-f63"), "63");
	kvb_http_msg_clear(&m);
	g_string_free(g, TRUE);
}
END_TEST

START_TEST(test_head_exactly_at_limit)
{
	/* a head of exactly KVB_HTTP_HEAD_MAX bytes, CRLFCRLF included, passes */
	GString *g = g_string_new("GET / HTTP/1.1\r\nX-Pad: ");
	size_t fill = KVB_HTTP_HEAD_MAX - g->len - 4;
	for (size_t i = 0; i < fill; i++)
		g_string_append_c(g, 'p');
	g_string_append(g, "\r\n\r\nbody");
	kvb_http_msg_t m;
	kvb_err_t err;
	ck_assert_msg(parse(REQ, g->str, &m, &err) == KVB_OK, "%s", err.msg);
	ck_assert_uint_eq(m.head_len, KVB_HTTP_HEAD_MAX);
	kvb_http_msg_clear(&m);
	g_string_free(g, TRUE);
}
END_TEST

START_TEST(test_response_fields)
{
	kvb_http_msg_t m;
	kvb_err_t err;
	const char *s = "HTTP/1.1 404 Not Found Here\r\nContent-Length: 0\r\n\r\n";
	ck_assert_int_eq(parse(RESP, s, &m, &err), KVB_OK);
	ck_assert(!m.is_request);
	ck_assert_int_eq(m.status, 404);
	ck_assert_str_eq(m.reason, "Not Found Here");
	ck_assert_int_eq(m.version_minor, 1);
	ck_assert(m.has_content_length);
	ck_assert_uint_eq(m.content_length, 0);
	ck_assert_uint_eq(m.head_len, strlen(s));
	kvb_http_msg_clear(&m);
	/* an empty reason keeps its space */
	ck_assert_int_eq(parse(RESP, "HTTP/1.0 204 \r\n\r\n", &m, &err), KVB_OK);
	ck_assert_int_eq(m.status, 204);
	ck_assert_str_eq(m.reason, "");
	ck_assert(!m.keep_alive);
	kvb_http_msg_clear(&m);
	/* a chunked response */
	ck_assert_int_eq(parse(RESP, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &m, &err),
			 KVB_OK);
	ck_assert(m.chunked);
	ck_assert(!m.has_content_length);
	kvb_http_msg_clear(&m);
	/* 100 and 599 are the ends of the range; a long reason is cut */
	ck_assert_int_eq(parse(RESP, "HTTP/1.1 100 Continue\r\n\r\n", &m, &err), KVB_OK);
	kvb_http_msg_clear(&m);
	GString *g = g_string_new("HTTP/1.1 599 ");
	for (int i = 0; i < 500; i++)
		g_string_append_c(g, 'r');
	g_string_append(g, "\r\n\r\n");
	ck_assert_int_eq(parse(RESP, g->str, &m, &err), KVB_OK);
	ck_assert_int_eq(m.status, 599);
	ck_assert_uint_eq(strlen(m.reason), KVB_HTTP_REASON_MAX - 1);
	kvb_http_msg_clear(&m);
	g_string_free(g, TRUE);
}
END_TEST

START_TEST(test_content_length_and_chunked)
{
	kvb_http_msg_t m;
	kvb_err_t err;
	/* repeated with the same value (leading zeros included) is one length */
	ck_assert_int_eq(parse(REQ, "PUT /x HTTP/1.1\r\nContent-Length: 42\r\ncontent-length: 042\r\n\r\n",
			       &m, &err), KVB_OK);
	ck_assert_uint_eq(m.content_length, 42);
	kvb_http_msg_clear(&m);
	/* the largest body allowed */
	ck_assert_int_eq(parse(REQ, "PUT /x HTTP/1.1\r\nContent-Length: 67108864\r\n\r\n", &m, &err),
			 KVB_OK);
	ck_assert_uint_eq(m.content_length, KVB_HTTP_BODY_MAX);
	kvb_http_msg_clear(&m);
	/* transfer codings are case-insensitive (RFC 9112 7) */
	ck_assert_int_eq(parse(REQ, "POST /x HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\n\r\n", &m, &err),
			 KVB_OK);
	ck_assert(m.chunked);
	ck_assert(!m.has_content_length);
	kvb_http_msg_clear(&m);
}
END_TEST

START_TEST(test_keep_alive_rules)
{
	static const struct {
		const char *head;
		bool keep_alive;
	} cases[] = {
		{"GET / HTTP/1.1\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nConnection: CLOSE\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nConnection: Upgrade\r\nConnection:close\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nConnection: closed, enclose\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", true},
		{"GET / HTTP/1.0\r\n\r\n", false},
		{"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
		{"GET / HTTP/1.0\r\nConnection: Upgrade ,Keep-Alive\r\n\r\n", true},
		{"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", false},
		{"GET / HTTP/1.0\r\nConnection: keep-alives\r\n\r\n", false},
		{"GET / HTTP/1.0\r\nKeep-Alive: timeout=5\r\n\r\n", false},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
		kvb_http_msg_t m;
		kvb_err_t err;
		ck_assert_int_eq(parse(REQ, cases[i].head, &m, &err), KVB_OK);
		ck_assert_msg(m.keep_alive == cases[i].keep_alive, "case %zu", i);
		kvb_http_msg_clear(&m);
		/* the same rules for responses */
		const char *line_end = strstr(cases[i].head, "\r\n");
		GString *r = g_string_new(NULL);
		g_string_append_printf(r, "HTTP/1.%c 200 OK%s", cases[i].head[13], line_end);
		ck_assert_int_eq(parse(RESP, r->str, &m, &err), KVB_OK);
		ck_assert_msg(m.keep_alive == cases[i].keep_alive, "response case %zu", i);
		kvb_http_msg_clear(&m);
		g_string_free(r, TRUE);
	}
}
END_TEST

START_TEST(test_incremental)
{
	/* one byte at a time: INPROGRESS until the head is complete, whatever
	 * the cut (inside CRLF, inside CRLFCRLF) */
	static const char *const heads[] = {
		"POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
	};
	for (int h = 0; h < 2; h++) {
		bool req = h == 0;
		size_t n = strlen(heads[h]);
		kvb_http_msg_t m;
		kvb_err_t err;
		for (size_t k = 0; k < n; k++) {
			ck_assert_msg(parse_n(req, heads[h], k, &m, &err) == KVB_INPROGRESS, "at %zu", k);
			ck_assert_uint_eq(m.n_fields, 0);
		}
		ck_assert_int_eq(parse_n(req, heads[h], n, &m, &err), KVB_OK);
		ck_assert_uint_eq(m.head_len, n);
		ck_assert_uint_eq(m.n_fields, 2);
		kvb_http_msg_clear(&m);
	}
}
END_TEST

/* ---- refused heads (kvb_http.h's list, in its order) --------------------- */

START_TEST(test_refuse_head_too_large)
{
	/* no end in sight after KVB_HTTP_HEAD_MAX bytes */
	GString *g = g_string_new("GET / HTTP/1.1\r\nX-Pad: ");
	while (g->len < KVB_HTTP_HEAD_MAX)
		g_string_append_c(g, 'p');
	expect_refused_n(REQ, g->str, g->len, "head larger than 65536");
	/* one short of it is still waiting */
	kvb_http_msg_t m;
	ck_assert_int_eq(parse_n(REQ, g->str, KVB_HTTP_HEAD_MAX - 1, &m, NULL), KVB_INPROGRESS);
	/* complete, but one byte over */
	g_string_truncate(g, KVB_HTTP_HEAD_MAX - 3);
	g_string_append(g, "\r\n\r\n");
	expect_refused_n(REQ, g->str, g->len, "head larger than 65536");
	g_string_free(g, TRUE);
}
END_TEST

START_TEST(test_refuse_too_many_fields)
{
	GString *g = g_string_new("GET / HTTP/1.1\r\n");
	for (uint32_t i = 0; i <= KVB_HTTP_MAX_HEADERS; i++)
		g_string_append_printf(g, "X-F%u: %u\r\n", i, i);
	g_string_append(g, "\r\n");
	expect_refused(REQ, g->str, "more than 64 header fields");
	g_string_free(g, TRUE);
}
END_TEST

START_TEST(test_refuse_bare_lf)
{
	expect_refused(REQ, "GET / HTTP/1.1\n\n", "bare LF at byte 14");
	expect_refused(REQ, "GET / HTTP/1.1\r\nHost: a\n\r\n", "bare LF");
	expect_refused(RESP, "HTTP/1.1 200 OK\r\n\n", "bare LF");
	/* refused at once, before the head is complete */
	expect_refused(REQ, "GET / HTTP/1.1\nHost", "bare LF");
	expect_refused(REQ, "\n", "bare LF at byte 0");
	/* a bare CR cannot become a line end either */
	expect_refused(REQ, "GET / HTTP/1.1\rHost: a\r\n\r\n", "bare CR");
	expect_refused(REQ, "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", "bare CR");
}
END_TEST

START_TEST(test_refuse_start_line_parts)
{
	static const char *const req[] = {
		"GET /\r\n\r\n",
		"GET\r\n\r\n",
		"GET  / HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1 \r\n\r\n",
		"GET / x HTTP/1.1\r\n\r\n",
		" GET / HTTP/1.1\r\n\r\n",
		"GET / \r\n\r\n",
		"\r\n\r\n",
		"\r\nGET / HTTP/1.1\r\n\r\n",
	};
	for (size_t i = 0; i < G_N_ELEMENTS(req); i++)
		expect_refused(REQ, req[i], "does not split into method, target and version");
	static const char *const resp[] = {
		"HTTP/1.1 200\r\n\r\n",
		"HTTP/1.1\r\n\r\n",
		"HTTP/1.1  200 OK\r\n\r\n",
		"HTTP/1.1 2000 OK\r\n\r\n",
		"HTTP/1.1 20 OK\r\n\r\n",
		"\r\n\r\n",
	};
	for (size_t i = 0; i < G_N_ELEMENTS(resp); i++)
		expect_refused(RESP, resp[i], "does not split into version, status and reason");
}
END_TEST

START_TEST(test_refuse_method_not_token)
{
	expect_refused(REQ, "GE(T / HTTP/1.1\r\n\r\n", "method 'GE(T' is not a token");
	expect_refused(REQ, "G\tET / HTTP/1.1\r\n\r\n", "is not a token");
	expect_refused(REQ, "G\xc3\xa9T / HTTP/1.1\r\n\r\n", "is not a token");
	expect_refused(REQ, "ABCDEFGHIJKLMNOPQ / HTTP/1.1\r\n\r\n", "longer than 15 bytes");
}
END_TEST

START_TEST(test_refuse_target_controls)
{
	expect_refused(REQ, "GET /a\x01 HTTP/1.1\r\n\r\n", "request target has byte 0x01");
	expect_refused(REQ, "GET /a\tb HTTP/1.1\r\n\r\n", "request target has byte 0x09");
	expect_refused(REQ, "GET /a\x7f HTTP/1.1\r\n\r\n", "request target has byte 0x7f");
	expect_refused(REQ, "GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n", "request target has byte 0xc3");
	expect_refused_n(REQ, "GET /a\0b HTTP/1.1\r\n\r\n", 22, "request target has byte 0x00");
	GString *g = g_string_new("GET /");
	for (uint32_t i = 1; i < KVB_HTTP_TARGET_MAX; i++)
		g_string_append_c(g, 'a');
	g_string_append(g, " HTTP/1.1\r\n\r\n");
	expect_refused(REQ, g->str, "request target is 2048 bytes");
	g_string_free(g, TRUE);
}
END_TEST

START_TEST(test_refuse_version)
{
	static const char *const v[] = {"HTTP/2.0", "HTTP/1.2", "http/1.1", "HTTP/1.10", "HTTP/1",
					"HTTP/0.9", "HTTP/1.1x"};
	for (size_t i = 0; i < G_N_ELEMENTS(v); i++) {
		char *r = g_strdup_printf("GET / %s\r\n\r\n", v[i]);
		expect_refused(REQ, r, "only HTTP/1.0 and HTTP/1.1");
		g_free(r);
		r = g_strdup_printf("%s 200 OK\r\n\r\n", v[i]);
		expect_refused(RESP, r, "only HTTP/1.0 and HTTP/1.1");
		g_free(r);
	}
}
END_TEST

START_TEST(test_refuse_status_code)
{
	expect_refused(RESP, "HTTP/1.1 099 Early\r\n\r\n", "status code 99 outside 100..599");
	expect_refused(RESP, "HTTP/1.1 600 Late\r\n\r\n", "status code 600 outside");
	expect_refused(RESP, "HTTP/1.1 2x0 OK\r\n\r\n", "status code '2x0' is not three digits");
	expect_refused(RESP, "HTTP/1.1 200 O\x01K\r\n\r\n", "reason phrase has control byte 0x01");
}
END_TEST

START_TEST(test_refuse_obs_fold)
{
	expect_refused(REQ, "GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n", "obsolete line folding");
	expect_refused(RESP, "HTTP/1.1 200 OK\r\nX-A: a\r\n\tb\r\n\r\n", "obsolete line folding");
	expect_refused(REQ, "GET / HTTP/1.1\r\n Host: a\r\n\r\n", "obsolete line folding");
}
END_TEST

START_TEST(test_refuse_field_name)
{
	expect_refused(REQ, "GET / HTTP/1.1\r\nHost : a\r\n\r\n", "field name 'Host ' is not a token");
	expect_refused(REQ, "GET / HTTP/1.1\r\nHo st: a\r\n\r\n", "is not a token");
	expect_refused(REQ, "GET / HTTP/1.1\r\n: a\r\n\r\n", "field name '' is not a token");
	expect_refused(REQ, "GET / HTTP/1.1\r\nNoColon\r\n\r\n", "'NoColon' is not a token followed by ':'");
	expect_refused(RESP, "HTTP/1.1 200 OK\r\nX(y): a\r\n\r\n", "is not a token");
}
END_TEST

START_TEST(test_refuse_field_value_controls)
{
	expect_refused(REQ, "GET / HTTP/1.1\r\nX-A: a\x01" "b\r\n\r\n", "field X-A: value has control byte 0x01");
	expect_refused(REQ, "GET / HTTP/1.1\r\nX-A: a\x7f\r\n\r\n", "value has control byte 0x7f");
	expect_refused_n(REQ, "GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n", 28, "value has control byte 0x00");
	expect_refused(RESP, "HTTP/1.1 200 OK\r\nX-A: \x1b[31m\r\n\r\n", "value has control byte 0x1b");
}
END_TEST

START_TEST(test_refuse_content_length_syntax)
{
	static const char *const v[] = {"-1", "+5", "5 5", "0x10", "1,1", "5;", "\xef\xbc\x95"};
	for (size_t i = 0; i < G_N_ELEMENTS(v); i++) {
		char *r = g_strdup_printf("POST / HTTP/1.1\r\nContent-Length: %s\r\n\r\n", v[i]);
		expect_refused(REQ, r, "is not all digits");
		g_free(r);
	}
	expect_refused(REQ, "POST / HTTP/1.1\r\nContent-Length:  \r\n\r\n", "Content-Length is empty");
	expect_refused(RESP, "HTTP/1.1 200 OK\r\nContent-Length: 1a\r\n\r\n", "is not all digits");
}
END_TEST

START_TEST(test_refuse_content_length_too_big)
{
	expect_refused(REQ, "POST / HTTP/1.1\r\nContent-Length: 67108865\r\n\r\n", "above 67108864");
	/* far past 2^64: refused without wrapping */
	expect_refused(REQ, "POST / HTTP/1.1\r\nContent-Length: 184467440737095516160000\r\n\r\n",
		       "above 67108864");
}
END_TEST

START_TEST(test_refuse_content_length_conflict)
{
	expect_refused(REQ, "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
		       "Content-Length repeated with different values (5 and 6)");
}
END_TEST

START_TEST(test_refuse_transfer_encoding)
{
	static const char *const v[] = {"gzip", "gzip, chunked", "chunked, chunked", "identity",
					"chunked;q=1", "xchunked", ""};
	for (size_t i = 0; i < G_N_ELEMENTS(v); i++) {
		char *r = g_strdup_printf("POST / HTTP/1.1\r\nTransfer-Encoding: %s\r\n\r\n", v[i]);
		expect_refused(REQ, r, "only a single \"chunked\"");
		g_free(r);
	}
	expect_refused(REQ, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
			    "Transfer-Encoding: chunked\r\n\r\n", "repeated");
	/* RFC 9112 6.1: HTTP/1.0 has no transfer codings */
	expect_refused(REQ, "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0");
}
END_TEST

START_TEST(test_refuse_smuggling)
{
	expect_refused(REQ, "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
		       "Transfer-Encoding together with Content-Length");
	expect_refused(RESP, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
		       "request smuggling");
}
END_TEST

/* ---- chunked bodies ------------------------------------------------------ */

static const char chunked_body[] = "5\r\nhello\r\n"
				   "6;name=\"v;x\"\r\n world\r\n"
				   "000A ; ext\r\n, and more\r\n"
				   "1f\r\n0123456789abcdef0123456789ABCDE\r\n"
				   "0\r\n"
				   "X-Trailer: yes\r\n"
				   "Checksum:\r\n"
				   "\r\n";
static const char chunked_data[] = "hello world, and more0123456789abcdef0123456789ABCDE";

START_TEST(test_chunked_whole)
{
	GString *in = g_string_new(chunked_body);
	g_string_append(in, "GET / HTTP/1.1\r\n"); /* the next message */
	kvb_http_chunked_t d;
	kvb_http_chunked_init(&d);
	GByteArray *out = g_byte_array_new();
	size_t used;
	kvb_err_t err;
	ck_assert_int_eq(kvb_http_chunked_feed(&d, in->str, in->len, &used, out, &err), KVB_OK);
	ck_assert_uint_eq(used, strlen(chunked_body));
	ck_assert_uint_eq(out->len, strlen(chunked_data));
	ck_assert_mem_eq(out->data, chunked_data, out->len);
	ck_assert_uint_eq(d.total, strlen(chunked_data));
	/* done stays done, and takes nothing more */
	ck_assert_int_eq(kvb_http_chunked_feed(&d, "xyz", 3, &used, out, &err), KVB_OK);
	ck_assert_uint_eq(used, 0);
	/* an empty body, and validation only (out NULL) */
	kvb_http_chunked_init(&d);
	ck_assert_int_eq(kvb_http_chunked_feed(&d, "0\r\n\r\n", 5, &used, NULL, &err), KVB_OK);
	ck_assert_uint_eq(used, 5);
	ck_assert_uint_eq(d.total, 0);
	kvb_http_chunked_init(&d);
	ck_assert_int_eq(kvb_http_chunked_feed(&d, chunked_body, strlen(chunked_body), &used, NULL,
					       &err), KVB_OK);
	ck_assert_uint_eq(d.total, strlen(chunked_data));
	g_byte_array_unref(out);
	g_string_free(in, TRUE);
}
END_TEST

START_TEST(test_chunked_split_everywhere)
{
	size_t n = strlen(chunked_body);
	for (size_t k = 0; k <= n; k++) {
		kvb_http_chunked_t d;
		kvb_http_chunked_init(&d);
		GByteArray *out = g_byte_array_new();
		size_t used;
		kvb_err_t err;
		/* heap copies of each part so a read past either end is caught */
		char *a = g_memdup2(chunked_body, k ? k : 1), *b = g_memdup2(chunked_body + k, n - k + 1);
		int rc = kvb_http_chunked_feed(&d, a, k, &used, out, &err);
		ck_assert_int_eq(rc, k == n ? KVB_OK : KVB_INPROGRESS);
		ck_assert_uint_eq(used, k);
		if (k < n) {
			ck_assert_int_eq(kvb_http_chunked_feed(&d, b, n - k, &used, out, &err), KVB_OK);
			ck_assert_uint_eq(used, n - k);
		}
		ck_assert_uint_eq(out->len, strlen(chunked_data));
		ck_assert_mem_eq(out->data, chunked_data, out->len);
		g_free(a);
		g_free(b);
		g_byte_array_unref(out);
	}
	/* and one byte at a time */
	kvb_http_chunked_t d;
	kvb_http_chunked_init(&d);
	GByteArray *out = g_byte_array_new();
	for (size_t i = 0; i < n; i++) {
		size_t used;
		int rc = kvb_http_chunked_feed(&d, chunked_body + i, 1, &used, out, NULL);
		ck_assert_int_eq(rc, i + 1 == n ? KVB_OK : KVB_INPROGRESS);
		ck_assert_uint_eq(used, 1);
	}
	ck_assert_mem_eq(out->data, chunked_data, strlen(chunked_data));
	g_byte_array_unref(out);
}
END_TEST

static void chunk_refused(const char *in, size_t n, const char *needle)
{
	kvb_http_chunked_t d;
	kvb_http_chunked_init(&d);
	size_t used;
	kvb_err_t err;
	kvb_err_clear(&err);
	char *copy = g_memdup2(in, n ? n : 1);
	int rc = kvb_http_chunked_feed(&d, copy, n, &used, NULL, &err);
	ck_assert_msg(rc == KVB_ERR_PROTOCOL, "'%.40s' gave %d", in, rc);
	ck_assert_msg(strstr(err.msg, needle), "'%.40s': '%s' lacks '%s'", in, err.msg, needle);
	ck_assert_uint_le(used, n);
	/* refused stays refused */
	ck_assert_int_eq(kvb_http_chunked_feed(&d, "0\r\n\r\n", 5, &used, NULL, &err), KVB_ERR_PROTOCOL);
	ck_assert_ptr_nonnull(strstr(err.msg, "already refused"));
	g_free(copy);
}

START_TEST(test_chunked_refuse_size_not_hex)
{
	chunk_refused("x\r\n", 3, "chunk size is not hex");
	chunk_refused("\r\n", 2, "chunk size is not hex");
	chunk_refused(";a\r\n", 4, "chunk size is not hex");
	chunk_refused("-5\r\n", 4, "chunk size is not hex");
	chunk_refused("5g\r\n", 4, "chunk size is not hex");
	chunk_refused("0x5\r\n", 5, "chunk size is not hex");
	chunk_refused("5 \r\n", 4, "other than ';'");
	chunk_refused("5\n", 2, "not ended by CRLF");
	chunk_refused("5\r\r", 3, "not ended by CRLF");
	chunk_refused("5;a\x01\r\n", 6, "chunk extension has a control byte");
}
END_TEST

START_TEST(test_chunked_refuse_overflow)
{
	chunk_refused("10000000000000000\r\n", 19, "chunk size overflows");
	chunk_refused("ffffffffffffffffff", 18, "chunk size overflows");
	/* a size line that never ends */
	GString *g = g_string_new("0");
	while (g->len < 5000)
		g_string_append_c(g, '0');
	chunk_refused(g->str, g->len, "chunk size line longer than");
	g_string_free(g, TRUE);
}
END_TEST

START_TEST(test_chunked_refuse_body_max)
{
	chunk_refused("4000001\r\n", 9, "would make the body exceed 67108864");
	/* exactly the limit over two chunks passes; one byte more does not */
	static char zeros[1 << 20];
	kvb_http_chunked_t d;
	kvb_http_chunked_init(&d);
	size_t used;
	kvb_err_t err;
	for (int c = 0; c < 2; c++) {
		ck_assert_int_eq(kvb_http_chunked_feed(&d, "2000000\r\n", 9, &used, NULL, &err),
				 KVB_INPROGRESS);
		for (int i = 0; i < 32; i++)
			ck_assert_int_eq(kvb_http_chunked_feed(&d, zeros, sizeof(zeros), &used, NULL, &err),
					 KVB_INPROGRESS);
		ck_assert_int_eq(kvb_http_chunked_feed(&d, "\r\n", 2, &used, NULL, &err), KVB_INPROGRESS);
	}
	ck_assert_uint_eq(d.total, KVB_HTTP_BODY_MAX);
	ck_assert_int_eq(kvb_http_chunked_feed(&d, "1\r\n", 3, &used, NULL, &err), KVB_ERR_PROTOCOL);
	ck_assert_ptr_nonnull(strstr(err.msg, "would make the body exceed"));
}
END_TEST

START_TEST(test_chunked_refuse_data_crlf)
{
	chunk_refused("5\r\nhelloX", 9, "chunk data not followed by CRLF");
	chunk_refused("5\r\nhello\rX", 10, "chunk data not followed by CRLF");
	chunk_refused("5\r\nhello\n", 9, "chunk data not followed by CRLF");
	chunk_refused("3\r\nhello\r\n", 10, "chunk data not followed by CRLF");
}
END_TEST

START_TEST(test_chunked_refuse_trailers)
{
	chunk_refused("0\r\nX: a\r\n b\r\n\r\n", 15, "obsolete line folding in the trailers");
	chunk_refused("0\r\nX y: a\r\n\r\n", 13, "trailer field name is not a token");
	chunk_refused("0\r\n: a\r\n\r\n", 10, "trailer field name is not a token");
	chunk_refused("0\r\nX: a\x01\r\n\r\n", 12, "trailer field value has a control byte");
	chunk_refused("0\r\nX: a\rb\r\n\r\n", 12, "bare CR in the trailers");
	chunk_refused("0\r\n\rX", 5, "bare CR in the trailers");
	chunk_refused("0\r\n\n", 4, "trailer field name is not a token");
	GString *g = g_string_new("0\r\nX: ");
	while (g->len < KVB_HTTP_HEAD_MAX + 10)
		g_string_append_c(g, 'v');
	chunk_refused(g->str, g->len, "trailers larger than 65536");
	g_string_free(g, TRUE);
}
END_TEST

/* ---- writers ------------------------------------------------------------- */

START_TEST(test_write_request_roundtrip)
{
	GString *out = g_string_new(NULL);
	const char body[] = "{\"prompt\": \"hi\"}";
	const char *const extra[] = {"X-Request-Id: cmpl-1", "Accept: */*", NULL};
	kvb_http_write_request(out, "POST", "/v1/completions", "10.0.0.1:8000", extra,
			       "application/json", body, strlen(body));
	kvb_http_msg_t m;
	kvb_err_t err;
	ck_assert_msg(kvb_http_parse_request(out->str, out->len, &m, &err) == KVB_OK, "%s", err.msg);
	ck_assert_str_eq(m.method, "POST");
	ck_assert_str_eq(m.target, "/v1/completions");
	ck_assert_int_eq(m.version_minor, 1);
	ck_assert_str_eq(m.fields[0].name, "Host");
	ck_assert_str_eq(m.fields[0].value, "10.0.0.1:8000");
	ck_assert_str_eq(kvb_http_field_get(&m, "Content-Type"), "application/json");
	ck_assert_str_eq(kvb_http_field_get(&m, "X-Request-Id"), "cmpl-1");
	ck_assert_str_eq(kvb_http_field_get(&m, "Accept"), "*/*");
	ck_assert_uint_eq(m.n_fields, 5);
	ck_assert(m.has_content_length);
	ck_assert_uint_eq(m.content_length, strlen(body));
	ck_assert_uint_eq(out->len, m.head_len + strlen(body));
	ck_assert_mem_eq(out->str + m.head_len, body, strlen(body));
	kvb_http_msg_clear(&m);
	/* no body: no Content-Type, Content-Length 0; writers append */
	g_string_assign(out, "");
	kvb_http_write_request(out, "GET", "/query", "p:8998", NULL, "application/json", NULL, 0);
	size_t first = out->len;
	kvb_http_write_request(out, "GET", "/health", "p:8998", NULL, NULL, NULL, 0);
	ck_assert_int_eq(kvb_http_parse_request(out->str, out->len, &m, &err), KVB_OK);
	ck_assert_uint_eq(m.head_len, first);
	ck_assert_ptr_null(kvb_http_field_get(&m, "Content-Type"));
	ck_assert_uint_eq(m.content_length, 0);
	kvb_http_msg_clear(&m);
	ck_assert_int_eq(kvb_http_parse_request(out->str + first, out->len - first, &m, &err), KVB_OK);
	ck_assert_str_eq(m.target, "/health");
	kvb_http_msg_clear(&m);
	g_string_free(out, TRUE);
}
END_TEST

START_TEST(test_write_no_injection)
{
	/* a CR or LF smuggled into a value cannot start a field of its own */
	GString *out = g_string_new(NULL);
	const char *const extra[] = {"X-A: a\r\nContent-Length: 99", NULL};
	kvb_http_write_request(out, "GET", "/", "h\r\n\r\nGET /evil HTTP/1.1", extra, NULL, NULL, 0);
	kvb_http_msg_t m;
	kvb_err_t err;
	ck_assert_msg(kvb_http_parse_request(out->str, out->len, &m, &err) == KVB_OK, "%s", err.msg);
	ck_assert_uint_eq(m.n_fields, 3);
	ck_assert_str_eq(kvb_http_field_get(&m, "X-A"), "a  Content-Length: 99");
	ck_assert_uint_eq(m.content_length, 0);
	ck_assert_uint_eq(m.head_len, out->len);
	kvb_http_msg_clear(&m);
	g_string_free(out, TRUE);
}
END_TEST

START_TEST(test_write_response_roundtrip)
{
	static const struct {
		int status;
		bool keep_alive;
		const char *body;
	} cases[] = {
		{200, true, "{\"ok\": true}"},
		{503, false, "busy"},
		{400, false, ""},
		{204, true, NULL},
		{299, true, "x"},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
		GString *out = g_string_new(NULL);
		const char *b = cases[i].body;
		kvb_http_write_response(out, cases[i].status, b ? "application/json" : NULL, b,
					b ? strlen(b) : 0, cases[i].keep_alive);
		kvb_http_msg_t m;
		kvb_err_t err;
		ck_assert_msg(kvb_http_parse_response(out->str, out->len, &m, &err) == KVB_OK, "%s",
			      err.msg);
		ck_assert_int_eq(m.status, cases[i].status);
		ck_assert_str_eq(m.reason, kvb_http_reason(cases[i].status));
		ck_assert(m.keep_alive == cases[i].keep_alive);
		if (cases[i].status == 204) {
			ck_assert(!m.has_content_length);
			ck_assert_uint_eq(out->len, m.head_len);
		} else {
			ck_assert(m.has_content_length);
			ck_assert_uint_eq(m.content_length, strlen(b));
			ck_assert_uint_eq(out->len, m.head_len + strlen(b));
			ck_assert_mem_eq(out->str + m.head_len, b, strlen(b));
			ck_assert_str_eq(kvb_http_field_get(&m, "content-type"), "application/json");
		}
		kvb_http_msg_clear(&m);
		g_string_free(out, TRUE);
	}
}
END_TEST

START_TEST(test_reason_phrases)
{
	ck_assert_str_eq(kvb_http_reason(200), "OK");
	ck_assert_str_eq(kvb_http_reason(400), "Bad Request");
	ck_assert_str_eq(kvb_http_reason(404), "Not Found");
	ck_assert_str_eq(kvb_http_reason(413), "Content Too Large");
	ck_assert_str_eq(kvb_http_reason(500), "Internal Server Error");
	ck_assert_str_eq(kvb_http_reason(503), "Service Unavailable");
	ck_assert_str_eq(kvb_http_reason(299), "Unknown");
	ck_assert_str_eq(kvb_http_reason(-1), "Unknown");
}
END_TEST

Suite *kvb_suite_http(void)
{
	Suite *s = suite_create("http");
	TCase *tc = tcase_create("heads");
	tcase_add_test(tc, test_request_fields);
	tcase_add_test(tc, test_request_minimal_and_limits);
	tcase_add_test(tc, test_head_exactly_at_limit);
	tcase_add_test(tc, test_response_fields);
	tcase_add_test(tc, test_content_length_and_chunked);
	tcase_add_test(tc, test_keep_alive_rules);
	tcase_add_test(tc, test_incremental);
	suite_add_tcase(s, tc);
	tc = tcase_create("refusals");
	tcase_add_test(tc, test_refuse_head_too_large);
	tcase_add_test(tc, test_refuse_too_many_fields);
	tcase_add_test(tc, test_refuse_bare_lf);
	tcase_add_test(tc, test_refuse_start_line_parts);
	tcase_add_test(tc, test_refuse_method_not_token);
	tcase_add_test(tc, test_refuse_target_controls);
	tcase_add_test(tc, test_refuse_version);
	tcase_add_test(tc, test_refuse_status_code);
	tcase_add_test(tc, test_refuse_obs_fold);
	tcase_add_test(tc, test_refuse_field_name);
	tcase_add_test(tc, test_refuse_field_value_controls);
	tcase_add_test(tc, test_refuse_content_length_syntax);
	tcase_add_test(tc, test_refuse_content_length_too_big);
	tcase_add_test(tc, test_refuse_content_length_conflict);
	tcase_add_test(tc, test_refuse_transfer_encoding);
	tcase_add_test(tc, test_refuse_smuggling);
	suite_add_tcase(s, tc);
	tc = tcase_create("chunked");
	tcase_add_test(tc, test_chunked_whole);
	tcase_add_test(tc, test_chunked_split_everywhere);
	tcase_add_test(tc, test_chunked_refuse_size_not_hex);
	tcase_add_test(tc, test_chunked_refuse_overflow);
	tcase_add_test(tc, test_chunked_refuse_body_max);
	tcase_add_test(tc, test_chunked_refuse_data_crlf);
	tcase_add_test(tc, test_chunked_refuse_trailers);
	suite_add_tcase(s, tc);
	tc = tcase_create("writers");
	tcase_add_test(tc, test_write_request_roundtrip);
	tcase_add_test(tc, test_write_no_injection);
	tcase_add_test(tc, test_write_response_roundtrip);
	tcase_add_test(tc, test_reason_phrases);
	suite_add_tcase(s, tc);
	return s;
}
