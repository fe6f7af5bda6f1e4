/*
 * The simulator's workload module: Mooncake and Azure trace loaders (the
 * real traces in ../shared/data when present, and hand-written files for
 * every malformed case), the seeded generator, statistics and the prefill
 * time model.
 *
 * The real traces are found through $KVB_DATA_DIR, then
 * $top_srcdir/../shared/data (make check exports top_srcdir), then
 * ../shared/data and /work/shared/data; tests that need them print
 * "# SKIP" and return when none exists.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include <check.h>
#include <glib.h>
#include <glib/gstdio.h>

#include "kvb_workload.h"

Suite *kvb_suite_workload(void);

/* ---- helpers ------------------------------------------------------------------ */

/* Path of a shared data file, or NULL (and a "# SKIP" line) when absent. */
static char *data_file(const char *name)
{
	const char *env = g_getenv("KVB_DATA_DIR"), *top = g_getenv("top_srcdir");
	char *cands[4] = {
		env ? g_build_filename(env, name, NULL) : NULL,
		top ? g_build_filename(top, "..", "shared", "data", name, NULL) : NULL,
		g_build_filename("..", "shared", "data", name, NULL),
		g_build_filename("/work", "shared", "data", name, NULL),
	};
	char *found = NULL;
	for (size_t i = 0; i < G_N_ELEMENTS(cands); i++) {
		if (!found && cands[i] && g_file_test(cands[i], G_FILE_TEST_IS_REGULAR))
			found = cands[i];
		else
			g_free(cands[i]);
	}
	if (!found)
		printf("# SKIP %s not found (set KVB_DATA_DIR to the folder of ../shared/data)\n",
		       name);
	return found;
}

typedef struct tmpdir {
	char *dir;
	GPtrArray *files;
} tmpdir_t;

static void tmp_open(tmpdir_t *t)
{
	GError *e = NULL;
	t->dir = g_dir_make_tmp("kvb-wl-XXXXXX", &e);
	ck_assert_msg(t->dir != NULL, "g_dir_make_tmp: %s", e ? e->message : "?");
	t->files = g_ptr_array_new_with_free_func(g_free);
}

/* Write len bytes (-1: strlen) to dir/name; returns the path (owned by t). */
static const char *tmp_write(tmpdir_t *t, const char *name, const char *text, gssize len)
{
	char *path = g_build_filename(t->dir, name, NULL);
	GError *e = NULL;
	ck_assert_msg(g_file_set_contents(path, text, len, &e), "write %s: %s", path,
		      e ? e->message : "?");
	g_ptr_array_add(t->files, path);
	return path;
}

static void tmp_close(tmpdir_t *t)
{
	for (guint i = 0; i < t->files->len; i++)
		g_unlink(g_ptr_array_index(t->files, i));
	g_ptr_array_free(t->files, TRUE);
	g_rmdir(t->dir);
	g_free(t->dir);
}

static kvb_workload_t *load_ok(const char *path, kvb_wl_format_t fmt, double rate, uint64_t limit)
{
	kvb_workload_t *w = NULL;
	GError *e = NULL;
	gboolean ok = kvb_workload_load(path, fmt, rate, limit, &w, &e);
	ck_assert_msg(ok, "load %s: %s", path, e ? e->message : "(no error)");
	ck_assert_ptr_null(e);
	ck_assert_ptr_nonnull(w);
	return w;
}

/* Every request: sorted by (arrival, id), first at 0, hash pointer sane. */
static void check_order(const kvb_workload_t *w)
{
	uint64_t n = kvb_workload_count(w);
	ck_assert_uint_gt(n, 0);
	ck_assert_double_eq(kvb_workload_get(w, 0)->arrival_s, 0.0);
	for (uint64_t i = 0; i < n; i++) {
		const kvb_wl_request_t *r = kvb_workload_get(w, i);
		ck_assert_ptr_nonnull(r);
		ck_assert(r->n_hash == 0 || r->hash_ids != NULL);
		if (i > 0) {
			const kvb_wl_request_t *q = kvb_workload_get(w, i - 1);
			ck_assert(q->arrival_s < r->arrival_s ||
				  (q->arrival_s == r->arrival_s && q->id < r->id));
		}
	}
	ck_assert_ptr_null(kvb_workload_get(w, n));
}

/* ---- the real traces --------------------------------------------------------- */

START_TEST(test_conversation_trace)
{
	char *path = data_file("conversation_trace.jsonl");
	if (!path)
		return;
	kvb_workload_t *w = load_ok(path, KVB_WL_AUTO, 1.0, 0);
	kvb_wl_stats_t st;
	kvb_workload_stats(w, &st);
	check_order(w);
	/* Mooncake FAST'25 Table 2: 12,031 requests, mean input 12,035, output 343 */
	ck_assert_uint_eq(st.count, 12031);
	ck_assert_uint_eq(st.total_input_tokens, 144793823);
	ck_assert_double_eq_tol(st.mean_input, 12035.0, 1.0);
	ck_assert_double_eq_tol(st.mean_output, 343.0, 1.0);
	/* anchors.md section 5: p50 6,909, p99 85,401, max 126,195 */
	ck_assert_uint_eq(st.p50_input, 6909);
	ck_assert_uint_eq(st.p99_input, 85401);
	ck_assert_uint_eq(st.max_input, 126195);
	ck_assert_double_eq_tol(st.duration_s, 3536.999, 1e-9);
	ck_assert_double_eq_tol(kvb_workload_get(w, 12030)->arrival_s, 3536.999, 1e-9);
	/* unbounded-cache reuse: 105,710 of 288,500 blocks seen before = 0.366
	 * (the paper rounds it to 40%) */
	ck_assert_uint_eq(st.total_blocks, 288500);
	ck_assert_uint_eq(st.hit_blocks, 105710);
	ck_assert_double_eq_tol(st.cache_ratio, 0.366, 0.0005);
	/* file is already in timestamp order: ids are positions */
	for (uint64_t i = 0; i < st.count; i++)
		ck_assert_uint_eq(kvb_workload_get(w, i)->id, i);
	const kvb_wl_request_t *r = kvb_workload_get(w, 0);
	ck_assert_uint_eq(r->input_tokens, 6758);
	ck_assert_uint_eq(r->output_tokens, 500);
	ck_assert_uint_eq(r->n_hash, 14);
	ck_assert_uint_eq(r->hash_ids[0], 0);
	ck_assert_uint_eq(r->hash_ids[13], 13);
	ck_assert_str_eq(kvb_workload_source(w), path);

	/* rate multiplier 2: every arrival exactly halves */
	kvb_workload_t *w2 = load_ok(path, KVB_WL_MOONCAKE, 2.0, 0);
	ck_assert_uint_eq(kvb_workload_count(w2), 12031);
	for (uint64_t i = 0; i < 12031; i++) {
		ck_assert_uint_eq(kvb_workload_get(w2, i)->id, kvb_workload_get(w, i)->id);
		ck_assert_double_eq(kvb_workload_get(w2, i)->arrival_s,
				    kvb_workload_get(w, i)->arrival_s / 2);
	}
	ck_assert_double_eq_tol(kvb_workload_get(w2, 12030)->arrival_s, 1768.4995, 1e-9);
	kvb_workload_free(w2);

	/* limit keeps the first requests */
	w2 = load_ok(path, KVB_WL_MOONCAKE, 1.0, 100);
	ck_assert_uint_eq(kvb_workload_count(w2), 100);
	for (uint64_t i = 0; i < 100; i++) {
		const kvb_wl_request_t *a = kvb_workload_get(w, i), *b = kvb_workload_get(w2, i);
		ck_assert_uint_eq(a->input_tokens, b->input_tokens);
		ck_assert_uint_eq(a->n_hash, b->n_hash);
		ck_assert_int_eq(memcmp(a->hash_ids, b->hash_ids, a->n_hash * sizeof(uint32_t)), 0);
	}
	kvb_workload_free(w2);
	kvb_workload_free(w);
	g_free(path);
}
END_TEST

START_TEST(test_synthetic_trace)
{
	char *path = data_file("synthetic_trace.jsonl");
	if (!path)
		return;
	kvb_workload_t *w = load_ok(path, KVB_WL_AUTO, 1.0, 0);
	kvb_wl_stats_t st;
	kvb_workload_stats(w, &st);
	check_order(w);
	/* Table 2: 3,993 requests, input 15,325, output 149, cache ratio 66% */
	ck_assert_uint_eq(st.count, 3993);
	ck_assert_double_eq_tol(st.mean_input, 15325.0, 1.0);
	ck_assert_double_eq_tol(st.mean_output, 149.0, 1.0);
	ck_assert_uint_eq(st.total_blocks, 121877);
	ck_assert_uint_eq(st.hit_blocks, 77953);
	ck_assert_double_eq_tol(st.cache_ratio, 0.640, 0.0005);
	ck_assert_double_eq_tol(st.duration_s, 1022.025, 1e-9);
	kvb_workload_free(w);
	g_free(path);
}
END_TEST

START_TEST(test_azure_traces)
{
	char *conv = data_file("AzureLLMInferenceTrace_conv.csv");
	if (!conv)
		return;
	kvb_workload_t *w = load_ok(conv, KVB_WL_AUTO, 1.0, 0);
	kvb_wl_stats_t st;
	kvb_workload_stats(w, &st);
	check_order(w);
	/* the file is a header and 19,366 rows (the last without a newline, so
	 * wc -l says 19,366 lines); ~1 h on 2023-11-16 */
	ck_assert_uint_eq(st.count, 19366);
	ck_assert_double_eq_tol(st.duration_s, 3501.721937, 1e-6);
	ck_assert_double_eq_tol(st.mean_input, 1154.7, 0.05);
	ck_assert_double_eq_tol(st.mean_output, 211.13, 0.05);
	ck_assert_uint_eq(st.max_input, 14050);
	ck_assert_uint_eq(st.total_blocks, 0);
	ck_assert_double_eq(st.cache_ratio, 0.0);
	const kvb_wl_request_t *r0 = kvb_workload_get(w, 0), *r1 = kvb_workload_get(w, 1);
	ck_assert_uint_eq(r0->input_tokens, 374);
	ck_assert_uint_eq(r0->output_tokens, 44);
	ck_assert_uint_eq(r0->n_hash, 0);
	ck_assert_ptr_null(r0->hash_ids);
	/* 18:15:50.9951690 - 18:15:46.6805900 */
	ck_assert_double_eq_tol(r1->arrival_s, 4.314579, 1e-9);
	kvb_workload_free(w);

	/* twice as fast */
	w = load_ok(conv, KVB_WL_AZURE, 2.0, 0);
	kvb_workload_stats(w, &st);
	ck_assert_double_eq_tol(st.duration_s, 3501.721937 / 2, 1e-6);
	kvb_workload_free(w);
	g_free(conv);

	char *code = data_file("AzureLLMInferenceTrace_code.csv");
	if (!code)
		return;
	w = load_ok(code, KVB_WL_AUTO, 1.0, 0);
	kvb_workload_stats(w, &st);
	ck_assert_uint_eq(st.count, 8819);
	ck_assert_double_eq_tol(st.duration_s, 3435.948056, 1e-6);
	ck_assert_double_eq_tol(st.mean_input, 2047.85, 0.05);
	kvb_workload_free(w);
	g_free(code);
}
END_TEST

/* ---- well-formed edge cases -------------------------------------------------- */

START_TEST(test_mooncake_extras)
{
	tmpdir_t t;
	tmp_open(&t);
	/* BOM, CRLF, blank lines, unknown keys of every JSON type, keys in any
	 * order, escaped key names, no final newline */
	const char *text =
		"\xEF\xBB\xBF"
		"{\"timestamp\": 1500, \"input_length\": 1025, \"output_length\": 7, "
		"\"hash_ids\": [5, 6, 7]}\r\n"
		"\n  \t\r\n"
		"{\"meta\": {\"a\": [1, {\"b\": \"x\\\"y\\\\\\u00e9\\ud83d\\ude00\"}], \"c\": null},"
		" \"flag\": true, \"off\": false, \"n\": -1.5e+3, \"e\": [], \"o\": {},"
		" \"hash_ids\" : [ ] , \"output_length\":0,\"input_length\":0,"
		"\"times\\u0074amp\":2.5e3, \"s\": \"caf\xC3\xA9 }]\", \"z\": 0}\n"
		"{\"timestamp\":1500,\"input_length\":16777216,\"output_length\":16777216,"
		"\"hash_ids\":[4294967295,0]}";
	const char *path = tmp_write(&t, "extras.jsonl", text, -1);
	kvb_workload_t *w = load_ok(path, KVB_WL_AUTO, 1.0, 0);
	ck_assert_uint_eq(kvb_workload_count(w), 3);
	check_order(w);
	const kvb_wl_request_t *a = kvb_workload_get(w, 0), *b = kvb_workload_get(w, 1),
			       *c = kvb_workload_get(w, 2);
	/* two requests at 1500 ms keep file order; the 2.5e3 one comes last */
	ck_assert_uint_eq(a->id, 0);
	ck_assert_uint_eq(a->input_tokens, 1025);
	ck_assert_uint_eq(a->output_tokens, 7);
	ck_assert_uint_eq(a->n_hash, 3);
	ck_assert_uint_eq(a->hash_ids[0], 5);
	ck_assert_uint_eq(a->hash_ids[2], 7);
	ck_assert_uint_eq(b->id, 2);
	ck_assert_double_eq(b->arrival_s, 0.0);
	ck_assert_uint_eq(b->input_tokens, KVB_WL_MAX_TOKENS);
	ck_assert_uint_eq(b->hash_ids[0], UINT32_MAX);
	ck_assert_uint_eq(c->id, 1);
	ck_assert_double_eq_tol(c->arrival_s, 1.0, 1e-12);
	ck_assert_uint_eq(c->input_tokens, 0);
	ck_assert_uint_eq(c->n_hash, 0);
	ck_assert_ptr_null(c->hash_ids);
	kvb_workload_free(w);
	tmp_close(&t);
}
END_TEST

START_TEST(test_out_of_order)
{
	tmpdir_t t;
	tmp_open(&t);
	const char *text =
		"{\"timestamp\": 3000, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": [1]}\n"
		"{\"timestamp\": 1000, \"input_length\": 2, \"output_length\": 1, \"hash_ids\": [2]}\n"
		"{\"timestamp\": 3000, \"input_length\": 3, \"output_length\": 1, \"hash_ids\": [1, 3]}\n"
		"{\"timestamp\": 500.5, \"input_length\": 4, \"output_length\": 1, \"hash_ids\": [2]}\n";
	const char *path = tmp_write(&t, "order.jsonl", text, -1);
	kvb_workload_t *w = load_ok(path, KVB_WL_MOONCAKE, 0.5, 0);
	check_order(w);
	static const uint64_t ids[] = {3, 1, 0, 2};
	static const double at[] = {0, 0.9990, 4.999, 4.999}; /* (ms - 500.5) / 1000 / 0.5 */
	for (uint64_t i = 0; i < 4; i++) {
		ck_assert_uint_eq(kvb_workload_get(w, i)->id, ids[i]);
		ck_assert_uint_eq(kvb_workload_get(w, i)->input_tokens, ids[i] + 1);
		ck_assert_double_eq_tol(kvb_workload_get(w, i)->arrival_s, at[i], 1e-12);
	}
	/* cache ratio follows arrival order: [2] [2] [1] [1,3] -> hits 2 of 5 */
	kvb_wl_stats_t st;
	kvb_workload_stats(w, &st);
	ck_assert_uint_eq(st.total_blocks, 5);
	ck_assert_uint_eq(st.hit_blocks, 2);
	ck_assert_double_eq_tol(st.cache_ratio, 0.4, 1e-15);
	kvb_workload_free(w);
	tmp_close(&t);
}
END_TEST

START_TEST(test_rate_and_limit)
{
	tmpdir_t t;
	tmp_open(&t);
	const char *text =
		"{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": []}\n"
		"{\"timestamp\": 1000, \"input_length\": 2, \"output_length\": 1, \"hash_ids\": []}\n"
		"{\"timestamp\": 2500, \"input_length\": 3, \"output_length\": 1, \"hash_ids\": []}\n"
		"{\"timestamp\": 4000, \"input_length\": 4, \"output_length\": 1, \"hash_ids\": []}\n"
		"{\"timestamp\": oops}\n";
	const char *path = tmp_write(&t, "rate.jsonl", text, -1);
	static const double at[] = {0, 1, 2.5, 4};
	static const double rates[] = {1, 2, 0.5, 3};
	for (size_t k = 0; k < G_N_ELEMENTS(rates); k++) {
		/* limit 4 stops before the broken fifth line */
		kvb_workload_t *w = load_ok(path, KVB_WL_AUTO, rates[k], 4);
		ck_assert_uint_eq(kvb_workload_count(w), 4);
		for (uint64_t i = 0; i < 4; i++)
			ck_assert_double_eq_tol(kvb_workload_get(w, i)->arrival_s, at[i] / rates[k],
						1e-12);
		kvb_workload_free(w);
	}
	kvb_workload_t *w = load_ok(path, KVB_WL_AUTO, 1, 2);
	ck_assert_uint_eq(kvb_workload_count(w), 2);
	ck_assert_uint_eq(kvb_workload_get(w, 1)->input_tokens, 2);
	kvb_workload_free(w);

	/* without a limit (or with a larger one) the fifth line is read and fails */
	static const uint64_t limits[] = {0, 5, 1000};
	for (size_t k = 0; k < G_N_ELEMENTS(limits); k++) {
		GError *e = NULL;
		w = NULL;
		ck_assert(!kvb_workload_load(path, KVB_WL_AUTO, 1, limits[k], &w, &e));
		ck_assert_ptr_null(w);
		ck_assert_ptr_nonnull(e);
		ck_assert_msg(strstr(e->message, "rate.jsonl:5: field timestamp") != NULL, "%s",
			      e->message);
		g_error_free(e);
	}

	/* bad multipliers */
	static const double bad[] = {0, -1, NAN, INFINITY};
	for (size_t k = 0; k < G_N_ELEMENTS(bad); k++) {
		GError *e = NULL;
		w = NULL;
		ck_assert(!kvb_workload_load(path, KVB_WL_AUTO, bad[k], 0, &w, &e));
		ck_assert_ptr_null(w);
		ck_assert(g_error_matches(e, KVB_WL_ERROR, KVB_WL_ERROR_INVALID));
		ck_assert_msg(strstr(e->message, "rate multiplier") != NULL, "%s", e->message);
		g_error_free(e);
	}
	tmp_close(&t);
}
END_TEST

START_TEST(test_azure_edges)
{
	tmpdir_t t;
	tmp_open(&t);
	/* columns in another order, CRLF, no and short fractions, midnight, a
	 * leap day, a timestamp out of order, no final newline */
	const char *text =
		"GeneratedTokens,TIMESTAMP,ContextTokens\r\n"
		"5,2024-02-28 23:59:59.5,100\r\n"
		"\r\n"
		"6,2024-02-29 00:00:00.25,200\r\n"
		"7,2024-03-01 00:00:01,300\r\n"
		"8,2024-02-28 23:59:59,400";
	const char *path = tmp_write(&t, "edges.csv", text, -1);
	kvb_workload_t *w = load_ok(path, KVB_WL_AUTO, 1.0, 0);
	check_order(w);
	ck_assert_uint_eq(kvb_workload_count(w), 4);
	static const uint64_t ids[] = {3, 0, 1, 2};
	static const double at[] = {0, 0.5, 1.25, 86402};
	for (uint64_t i = 0; i < 4; i++) {
		const kvb_wl_request_t *r = kvb_workload_get(w, i);
		ck_assert_uint_eq(r->id, ids[i]);
		ck_assert_uint_eq(r->input_tokens, 100 * (ids[i] + 1));
		ck_assert_uint_eq(r->output_tokens, 5 + ids[i]);
		ck_assert_double_eq_tol(r->arrival_s, at[i], 1e-9);
	}
	kvb_workload_free(w);

	/* 7 fractional digits and a year boundary */
	path = tmp_write(&t, "year.csv",
			 "TIMESTAMP,ContextTokens,GeneratedTokens\n"
			 "2023-12-31 23:59:59.9999999,1,1\n"
			 "2024-01-01 00:00:00.0000001,2,2\n", -1);
	w = load_ok(path, KVB_WL_AZURE, 1.0, 0);
	ck_assert_double_eq_tol(kvb_workload_get(w, 1)->arrival_s, 2e-7, 1e-13);
	kvb_workload_free(w);

	/* 2000 is a leap year (divisible by 400), 1900 is not (malformed cases) */
	path = tmp_write(&t, "y2k.csv",
			 "TIMESTAMP,ContextTokens,GeneratedTokens\n"
			 "2000-02-28 12:00:00,1,1\n"
			 "2000-02-29 12:00:00,2,2\n"
			 "2000-03-01 12:00:00,3,3\n", -1);
	w = load_ok(path, KVB_WL_AZURE, 1.0, 0);
	ck_assert_double_eq(kvb_workload_get(w, 1)->arrival_s, 86400.0);
	ck_assert_double_eq(kvb_workload_get(w, 2)->arrival_s, 172800.0);
	kvb_workload_free(w);
	tmp_close(&t);
}
END_TEST

/* ---- malformed input --------------------------------------------------------- */

#define GOOD "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 2, \"hash_ids\": [1]}\n"
#define HDR "TIMESTAMP,ContextTokens,GeneratedTokens\n"
#define ROW "2023-11-16 18:15:46.6805900,374,44\n"

typedef struct bad_case {
	const char *file;
	const char *text;
	kvb_wl_format_t fmt;
	int code;
	const char *needle[3]; /* substrings the message must hold, besides the file name */
} bad_case_t;

static const bad_case_t bad_cases[] = {
	/* Mooncake JSONL */
	{"bad_json.jsonl",
	 GOOD "{\"timestamp\": 5, \"input_length\" 10, \"output_length\": 2, \"hash_ids\": [1]}\n",
	 KVB_WL_AUTO, KVB_WL_ERROR_PARSE,
	 {":2: field input_length: ", "expected ':' after the key, got \"10\"", NULL}},
	{"negative.jsonl",
	 GOOD "{\"timestamp\": 5, \"input_length\": -3, \"output_length\": 2, \"hash_ids\": [1]}\n",
	 KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":2: field input_length: expected a non-negative integer, got \"-3\"", NULL, NULL}},
	{"float.jsonl",
	 "{\"timestamp\": 5, \"input_length\": 3, \"output_length\": 12.5, \"hash_ids\": [1]}\n",
	 KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field output_length: ", "got \"12.5\"", NULL}},
	{"float0.jsonl",
	 "{\"timestamp\": 5, \"input_length\": 3.0, \"output_length\": 1, \"hash_ids\": [1]}\n",
	 KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE, {":1: field input_length: ", "got \"3.0\"", NULL}},
	{"exponent.jsonl",
	 "{\"timestamp\": 5, \"input_length\": 1e3, \"output_length\": 1, \"hash_ids\": [1]}\n",
	 KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE, {":1: field input_length: ", "got \"1e3\"", NULL}},
	{"leading0.jsonl",
	 "{\"timestamp\": 5, \"input_length\": 012, \"output_length\": 1, \"hash_ids\": [1]}\n",
	 KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE, {":1: field input_length: ", "got \"012\"", NULL}},
	{"missing.jsonl", GOOD GOOD "{\"timestamp\": 5, \"input_length\": 3, \"output_length\": 1}\n",
	 KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE, {":3: field hash_ids: missing", NULL, NULL}},
	{"missing_ts.jsonl", "{}\n", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field timestamp: missing", NULL, NULL}},
	{"huge.jsonl",
	 "{\"timestamp\": 5, \"input_length\": 16777217, \"output_length\": 1, \"hash_ids\": []}\n",
	 KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field input_length: ", "16777217 exceeds the limit 16777216", NULL}},
	{"overflow.jsonl",
	 "{\"timestamp\": 5, \"input_length\": 1, \"output_length\": 184467440737095516160, "
	 "\"hash_ids\": []}\n",
	 KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field output_length: ", "184467440737095516160 exceeds", NULL}},
	{"unterminated.jsonl", GOOD "{\"timestamp\": 0, \"note\": \"abc\n", KVB_WL_AUTO,
	 KVB_WL_ERROR_PARSE, {":2: field note: unterminated string", NULL, NULL}},
	{"unterminated_key.jsonl", "{\"timest", KVB_WL_AUTO, KVB_WL_ERROR_PARSE,
	 {":1: unterminated string", NULL, NULL}},
	{"hash_neg.jsonl",
	 "{\"timestamp\": 5, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": [1, -2]}\n",
	 KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field hash_ids: element 1: ", "got \"-2\"", NULL}},
	{"hash_big.jsonl",
	 "{\"timestamp\": 5, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": [4294967296]}\n",
	 KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field hash_ids: element 0: ", "4294967296 exceeds the limit 4294967295", NULL}},
	{"hash_type.jsonl",
	 "{\"timestamp\": 5, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": \"abc\"}\n",
	 KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field hash_ids: ", "expected an array", "\\\"abc\\\""}},
	{"hash_unclosed.jsonl",
	 "{\"timestamp\": 5, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": [1, 2\n",
	 KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field hash_ids: ", "expected ',' or ']', got end of line", NULL}},
	{"ts_string.jsonl",
	 "{\"timestamp\": \"12\", \"input_length\": 1, \"output_length\": 1, \"hash_ids\": []}\n",
	 KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field timestamp: ", "expected a non-negative number", "\\\"12\\\""}},
	{"ts_negative.jsonl",
	 GOOD "{\"timestamp\": -1, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": []}\n",
	 KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":2: field timestamp: expected a non-negative number, got \"-1\"", NULL, NULL}},
	{"ts_inf.jsonl",
	 "{\"timestamp\": 1e999, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": []}\n",
	 KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field timestamp: ", "1e999", "out of range"}},
	{"trailing.jsonl", GOOD GOOD "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 2, "
	 "\"hash_ids\": [1]} x\n", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":3: ", "expected end of line after the object, got \"x\"", NULL}},
	{"two_objects.jsonl", "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 2, "
	 "\"hash_ids\": [1]}{}\n", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: ", "end of line after the object", NULL}},
	{"duplicate.jsonl",
	 "{\"timestamp\": 0, \"input_length\": 1, \"input_length\": 2, \"output_length\": 1, "
	 "\"hash_ids\": []}\n",
	 KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE, {":1: field input_length: duplicate key", NULL, NULL}},
	{"array_line.jsonl", GOOD "[1, 2]\n", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":2: ", "expected '{' to start an object, got \"[1\"", NULL}},
	{"bare_key.jsonl", "{timestamp: 0}\n", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: ", "expected '\"' to start a key, got \"timestamp:\"", NULL}},
	{"trailing_comma.jsonl", "{\"timestamp\": 0,}\n", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field timestamp: ", "expected '\"' to start a key", NULL}},
	{"no_comma.jsonl", "{\"timestamp\": 0 \"input_length\": 1}\n", KVB_WL_MOONCAKE,
	 KVB_WL_ERROR_PARSE, {":1: field timestamp: ", "expected ',' or '}' after the value", NULL}},
	{"bad_escape.jsonl", "{\"note\": \"a\\qb\"}\n", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field note: ", "unknown escape \\q", NULL}},
	{"surrogate.jsonl", "{\"note\": \"\\udc00\"}\n", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field note: ", "lone low surrogate", NULL}},
	{"half_pair.jsonl", "{\"note\": \"\\ud83dx\"}\n", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field note: ", "without its pair", NULL}},
	{"bad_hex.jsonl", "{\"note\": \"\\u12g4\"}\n", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field note: ", "4 hex digits", NULL}},
	{"control.jsonl", "{\"note\": \"a\tb\"}\n", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field note: ", "control byte 0x09", NULL}},
	{"utf8.jsonl", "{\"note\": \"a\xff\"}\n", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field note: ", "invalid UTF-8", NULL}},
	{"nul_key.jsonl", "{\"timestamp\\u0000\": 0, \"input_length\": 1, \"output_length\": 1, "
	 "\"hash_ids\": []}\n", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field timestamp: missing", NULL, NULL}},
	{"odd_key.jsonl", "{\"a\\nb\\u00e9\": tru}\n", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field a?b??: ", "got \"tru\"", NULL}},
	{"literal.jsonl", "{\"flag\": tru}\n", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field flag: ", "expected a JSON value, got \"tru\"", NULL}},
	{"bad_number.jsonl", "{\"n\": 1.}\n", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field n: ", "expected a JSON value, got \"1.\"", NULL}},
	{"nested_bad.jsonl", "{\"m\": {\"a\": [1, 2,]}}\n", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
	 {":1: field m: ", "expected a JSON value, got \"]\"", NULL}},
	{"empty.jsonl", "", KVB_WL_MOONCAKE, KVB_WL_ERROR_EMPTY,
	 {":1: end of file and no request in it", NULL, NULL}},
	{"blank.jsonl", "\n  \n\t\r\n", KVB_WL_MOONCAKE, KVB_WL_ERROR_EMPTY,
	 {":3: end of file and no request", NULL, NULL}},
	/* Azure CSV */
	{"month.csv", HDR ROW "2023-13-16 18:15:50.99,396,109\n", KVB_WL_AUTO, KVB_WL_ERROR_PARSE,
	 {":3:1: field TIMESTAMP: ", "month out of range in \"2023-13-16 18:15:50.99\"", NULL}},
	{"leap.csv", HDR "2023-02-29 00:00:00,1,1\n", KVB_WL_AZURE, KVB_WL_ERROR_PARSE,
	 {":2:1: field TIMESTAMP: ", "day out of range", NULL}},
	{"leap1900.csv", HDR "1900-02-29 00:00:00,1,1\n", KVB_WL_AZURE, KVB_WL_ERROR_PARSE,
	 {":2:1: field TIMESTAMP: ", "day out of range in \"1900-02-29 00:00:00\"", NULL}},
	{"hour.csv", HDR "2023-02-28 24:00:00,1,1\n", KVB_WL_AZURE, KVB_WL_ERROR_PARSE,
	 {":2:1: field TIMESTAMP: ", "hour out of range", NULL}},
	{"frac8.csv", HDR "2023-11-16 18:15:46.68059001,1,1\n", KVB_WL_AZURE, KVB_WL_ERROR_PARSE,
	 {":2:1: field TIMESTAMP: ", "8 fractional digits", NULL}},
	{"garbage_ts.csv", HDR ROW ROW "yesterday,1,1\n", KVB_WL_AZURE, KVB_WL_ERROR_PARSE,
	 {":4:1: field TIMESTAMP: ", "expected YYYY-MM-DD HH:MM:SS[.fffffff], got \"yesterday\"",
	  NULL}},
	{"dot_ts.csv", HDR "2023-11-16 18:15:46.,1,1\n", KVB_WL_AZURE, KVB_WL_ERROR_PARSE,
	 {":2:1: field TIMESTAMP: ", "got \"2023-11-16 18:15:46.\"", NULL}},
	{"iso_ts.csv", HDR "2023-11-16T18:15:46,1,1\n", KVB_WL_AZURE, KVB_WL_ERROR_PARSE,
	 {":2:1: field TIMESTAMP: ", "expected YYYY-MM-DD", NULL}},
	{"ts_later.csv", "ContextTokens,GeneratedTokens,TIMESTAMP\n1,2,2023-11-16 1:15:46\n",
	 KVB_WL_AUTO, KVB_WL_ERROR_PARSE, {":2:5: field TIMESTAMP: ", "\"2023-11-16 1:15:46\"", NULL}},
	{"header.csv", "TIMESTAMP,Context,GeneratedTokens\n" ROW, KVB_WL_AZURE, KVB_WL_ERROR_PARSE,
	 {":1:11: header column 2: ", "got \"Context\"", NULL}},
	{"header_dup.csv", "TIMESTAMP,TIMESTAMP,GeneratedTokens\n" ROW, KVB_WL_AZURE,
	 KVB_WL_ERROR_PARSE, {":1:11: header column 2: duplicate column \"TIMESTAMP\"", NULL, NULL}},
	{"header_short.csv", "TIMESTAMP,ContextTokens\n" ROW, KVB_WL_AUTO, KVB_WL_ERROR_PARSE,
	 {":1:24: header has 2 columns, expected 3", NULL, NULL}},
	{"header_long.csv", "TIMESTAMP,ContextTokens,GeneratedTokens,Extra\n" ROW, KVB_WL_AUTO,
	 KVB_WL_ERROR_PARSE, {":1:41: header has more than 3 columns", NULL, NULL}},
	{"header_case.csv", "timestamp,ContextTokens,GeneratedTokens\n" ROW, KVB_WL_AZURE,
	 KVB_WL_ERROR_PARSE, {":1:1: header column 1: ", "got \"timestamp\"", NULL}},
	{"negative.csv", HDR "2023-11-16 18:15:46.6805900,-5,44\n", KVB_WL_AZURE, KVB_WL_ERROR_PARSE,
	 {":2:29: field ContextTokens: expected a non-negative integer, got \"-5\"", NULL, NULL}},
	{"float.csv", HDR ROW "2023-11-16 18:15:46.6805900,374,4.5\n", KVB_WL_AZURE,
	 KVB_WL_ERROR_PARSE, {":3:33: field GeneratedTokens: ", "got \"4.5\"", NULL}},
	{"space.csv", HDR "2023-11-16 18:15:46.6805900, 374,44\n", KVB_WL_AZURE, KVB_WL_ERROR_PARSE,
	 {":2:29: field ContextTokens: ", "got \" 374\"", NULL}},
	{"empty_field.csv", HDR "2023-11-16 18:15:46.6805900,,44\n", KVB_WL_AZURE,
	 KVB_WL_ERROR_PARSE, {":2:29: field ContextTokens: ", "got \"\"", NULL}},
	{"huge.csv", HDR "2023-11-16 18:15:46.6805900,16777217,44\n", KVB_WL_AZURE,
	 KVB_WL_ERROR_PARSE, {":2:29: field ContextTokens: ", "exceeds the limit 16777216", NULL}},
	{"short_row.csv", HDR ROW "2023-11-16 18:15:46.6805900,374\n", KVB_WL_AZURE,
	 KVB_WL_ERROR_PARSE, {":3:32: field GeneratedTokens: missing", NULL, NULL}},
	{"long_row.csv", HDR "2023-11-16 18:15:46.6805900,374,44,9\n", KVB_WL_AZURE,
	 KVB_WL_ERROR_PARSE, {":2:36: row has more than 3 columns", NULL, NULL}},
	{"header_only.csv", HDR, KVB_WL_AUTO, KVB_WL_ERROR_EMPTY,
	 {":1: end of file and no request in it", NULL, NULL}},
	{"empty.csv", "", KVB_WL_AZURE, KVB_WL_ERROR_EMPTY, {":1: end of file", NULL, NULL}},
	/* format detection */
	{"empty_auto.txt", " \n\n", KVB_WL_AUTO, KVB_WL_ERROR_EMPTY,
	 {":3: empty file: cannot detect the trace format", NULL, NULL}},
	{"unknown.txt", "\n\nhello,world\n", KVB_WL_AUTO, KVB_WL_ERROR_FORMAT,
	 {":3: cannot detect the trace format", "got \"hello,world\"", NULL}},
	{"json_as_csv.jsonl", GOOD, KVB_WL_AZURE, KVB_WL_ERROR_PARSE,
	 {":1:1: header column 1: ", "got \"{\\\"timestamp\\\": 0\"", NULL}},
};

static void expect_failure(const char *path, const char *file, kvb_wl_format_t fmt, int code,
			   const char *const needle[3])
{
	kvb_workload_t *w = NULL;
	GError *e = NULL;
	ck_assert_msg(!kvb_workload_load(path, fmt, 1.0, 0, &w, &e), "%s loaded", file);
	ck_assert_ptr_null(w);
	ck_assert_ptr_nonnull(e);
	ck_assert_msg(e->domain == KVB_WL_ERROR && e->code == code, "%s: code %d, want %d: %s",
		      file, e->code, code, e->message);
	ck_assert_msg(g_str_has_prefix(e->message, path), "%s: message '%s' does not start with %s",
		      file, e->message, path);
	for (int k = 0; k < 3 && needle[k]; k++)
		ck_assert_msg(strstr(e->message, needle[k]) != NULL, "%s: message '%s' lacks '%s'",
			      file, e->message, needle[k]);
	g_error_free(e);
}

START_TEST(test_malformed)
{
	tmpdir_t t;
	tmp_open(&t);
	for (size_t i = 0; i < G_N_ELEMENTS(bad_cases); i++) {
		const bad_case_t *c = &bad_cases[i];
		const char *path = tmp_write(&t, c->file, c->text, -1);
		expect_failure(path, c->file, c->fmt, c->code, c->needle);
	}
	tmp_close(&t);
}
END_TEST

/* Cases built at run time: limits on elements, nesting and line length. */
START_TEST(test_malformed_limits)
{
	tmpdir_t t;
	tmp_open(&t);
	GString *s = g_string_new(GOOD "{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1, "
				  "\"hash_ids\": [");
	for (unsigned i = 0; i < KVB_WL_MAX_HASHES; i++)
		g_string_append_printf(s, "%u,", i);
	g_string_append(s, "7]}\n");
	const char *path = tmp_write(&t, "many_hashes.jsonl", s->str, (gssize)s->len);
	expect_failure(path, "many_hashes.jsonl", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
		       (const char *const[3]){":2: field hash_ids: ", "more than 65536 elements",
					      NULL});
	/* exactly 65536 is fine */
	g_string_truncate(s, s->len - strlen(",7]}\n"));
	g_string_append(s, "]}\n");
	path = tmp_write(&t, "max_hashes.jsonl", s->str, (gssize)s->len);
	kvb_workload_t *w = load_ok(path, KVB_WL_MOONCAKE, 1, 0);
	ck_assert_uint_eq(kvb_workload_get(w, 1)->n_hash, KVB_WL_MAX_HASHES);
	ck_assert_uint_eq(kvb_workload_get(w, 1)->hash_ids[65535], 65535);
	kvb_workload_free(w);

	g_string_assign(s, "{\"deep\": ");
	for (unsigned i = 0; i <= KVB_WL_MAX_DEPTH; i++)
		g_string_append_c(s, '[');
	for (unsigned i = 0; i <= KVB_WL_MAX_DEPTH; i++)
		g_string_append_c(s, ']');
	g_string_append(s, "}\n");
	path = tmp_write(&t, "deep.jsonl", s->str, (gssize)s->len);
	expect_failure(path, "deep.jsonl", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
		       (const char *const[3]){":1: field deep: ", "nested deeper than 64", NULL});

	g_string_assign(s, GOOD GOOD GOOD "{\"pad\": \"");
	while (s->len < 3 * strlen(GOOD) + KVB_WL_MAX_LINE + 1)
		g_string_append_c(s, 'x');
	g_string_append(s, "\"}\n");
	path = tmp_write(&t, "long_line.jsonl", s->str, (gssize)s->len);
	expect_failure(path, "long_line.jsonl", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
		       (const char *const[3]){":4: line is ", "the limit is 1048576", NULL});

	/* a NUL byte inside a line */
	static const char nul[] = "{\"timestamp\": 0\0, \"input_length\": 1}\n";
	path = tmp_write(&t, "nul.jsonl", nul, sizeof(nul) - 1);
	expect_failure(path, "nul.jsonl", KVB_WL_MOONCAKE, KVB_WL_ERROR_PARSE,
		       (const char *const[3]){":1: field timestamp: ", "expected ',' or '}'", NULL});
	g_string_free(s, TRUE);

	/* unreadable file: GLib's error names the path */
	char *missing = g_build_filename(t.dir, "no-such-trace.jsonl", NULL);
	GError *e = NULL;
	w = NULL;
	ck_assert(!kvb_workload_load(missing, KVB_WL_AUTO, 1, 0, &w, &e));
	ck_assert_ptr_null(w);
	ck_assert(e && e->domain == G_FILE_ERROR);
	ck_assert_msg(strstr(e->message, "no-such-trace.jsonl") != NULL, "%s", e->message);
	g_error_free(e);
	g_free(missing);
	tmp_close(&t);
}
END_TEST

/* ---- statistics and arrays ----------------------------------------------------- */

START_TEST(test_stats_and_array)
{
	static const uint32_t h0[] = {1, 2}, h1[] = {1, 2, 3}, h2[] = {4, 1}, h3[] = {9, 9};
	const kvb_wl_request_t reqs[] = {
		{.id = 10, .arrival_s = 2.0, .input_tokens = 300, .output_tokens = 3, .n_hash = 3,
		 .hash_ids = h1},
		{.id = 11, .arrival_s = 1.0, .input_tokens = 100, .output_tokens = 1, .n_hash = 2,
		 .hash_ids = h0},
		{.id = 12, .arrival_s = 3.5, .input_tokens = 400, .output_tokens = 4, .n_hash = 2,
		 .hash_ids = h2},
		{.id = 9, .arrival_s = 3.5, .input_tokens = 200, .output_tokens = 2, .n_hash = 2,
		 .hash_ids = h3},
		{.id = 13, .arrival_s = 4.0, .input_tokens = 500, .output_tokens = 5},
	};
	kvb_workload_t *w = NULL;
	GError *e = NULL;
	ck_assert(kvb_workload_from_array(reqs, G_N_ELEMENTS(reqs), "hand", &w, &e));
	ck_assert_str_eq(kvb_workload_source(w), "hand");
	static const uint64_t ids[] = {11, 10, 9, 12, 13};
	for (uint64_t i = 0; i < 5; i++)
		ck_assert_uint_eq(kvb_workload_get(w, i)->id, ids[i]);
	ck_assert_double_eq(kvb_workload_get(w, 0)->arrival_s, 1.0); /* kept, not shifted */
	ck_assert_ptr_ne(kvb_workload_get(w, 1)->hash_ids, h1);      /* copied */
	ck_assert_uint_eq(kvb_workload_get(w, 1)->hash_ids[2], 3);

	kvb_wl_stats_t st;
	kvb_workload_stats(w, &st);
	ck_assert_uint_eq(st.count, 5);
	ck_assert_double_eq(st.duration_s, 3.0);
	ck_assert_double_eq(st.mean_input, 300.0);
	ck_assert_double_eq(st.mean_output, 3.0);
	ck_assert_uint_eq(st.p50_input, 300);  /* sorted[ceil(2.5) - 1] */
	ck_assert_uint_eq(st.p99_input, 500);
	ck_assert_uint_eq(st.p50_output, 3);
	ck_assert_uint_eq(st.max_output, 5);
	ck_assert_uint_eq(st.total_input_tokens, 1500);
	/* [1,2] [1,2,3] [9,9] [4,1]: hits 1,2 then the second 9, then 1 */
	ck_assert_uint_eq(st.total_blocks, 9);
	ck_assert_uint_eq(st.hit_blocks, 4);
	ck_assert_double_eq_tol(st.cache_ratio, 4.0 / 9.0, 1e-15);
	kvb_workload_free(w);

	kvb_workload_stats(NULL, &st);
	ck_assert_uint_eq(st.count, 0);
	ck_assert_double_eq(st.cache_ratio, 0.0);
	ck_assert_uint_eq(kvb_workload_count(NULL), 0);
	ck_assert_ptr_null(kvb_workload_get(NULL, 0));
	kvb_workload_free(NULL);

	kvb_wl_request_t bad = reqs[0];
	bad.arrival_s = -1;
	w = NULL;
	ck_assert(!kvb_workload_from_array(&bad, 1, "hand", &w, &e));
	ck_assert_ptr_null(w);
	ck_assert(g_error_matches(e, KVB_WL_ERROR, KVB_WL_ERROR_INVALID));
	ck_assert_msg(strstr(e->message, "request 0 (id 10): field arrival_s") != NULL, "%s",
		      e->message);
	g_clear_error(&e);
	bad = reqs[0];
	bad.hash_ids = NULL;
	ck_assert(!kvb_workload_from_array(&bad, 1, NULL, &w, &e));
	ck_assert_msg(strstr(e->message, "field hash_ids") != NULL, "%s", e->message);
	g_clear_error(&e);
	bad = reqs[0];
	bad.input_tokens = KVB_WL_MAX_TOKENS + 1;
	ck_assert(!kvb_workload_from_array(&bad, 1, NULL, &w, &e));
	ck_assert_msg(strstr(e->message, "field input_tokens") != NULL, "%s", e->message);
	g_clear_error(&e);
	ck_assert(!kvb_workload_from_array(reqs, 0, "none", &w, &e));
	ck_assert(g_error_matches(e, KVB_WL_ERROR, KVB_WL_ERROR_EMPTY));
	g_clear_error(&e);
	ck_assert_ptr_null(w);
}
END_TEST

/* ---- generator ---------------------------------------------------------------- */

static kvb_workload_t *gen_ok(const kvb_wl_gen_params_t *p)
{
	kvb_workload_t *w = NULL;
	GError *e = NULL;
	ck_assert_msg(kvb_workload_generate(p, &w, &e), "generate: %s", e ? e->message : "?");
	ck_assert_ptr_nonnull(w);
	return w;
}

/* Byte-for-byte equality of every field and hash list. */
static gboolean same_workload(const kvb_workload_t *a, const kvb_workload_t *b)
{
	if (kvb_workload_count(a) != kvb_workload_count(b))
		return FALSE;
	for (uint64_t i = 0; i < kvb_workload_count(a); i++) {
		const kvb_wl_request_t *x = kvb_workload_get(a, i), *y = kvb_workload_get(b, i);
		if (x->id != y->id || memcmp(&x->arrival_s, &y->arrival_s, sizeof(double)) != 0 ||
		    x->input_tokens != y->input_tokens || x->output_tokens != y->output_tokens ||
		    x->n_hash != y->n_hash ||
		    (x->n_hash && memcmp(x->hash_ids, y->hash_ids, x->n_hash * sizeof(uint32_t))))
			return FALSE;
	}
	return TRUE;
}

START_TEST(test_gen_determinism)
{
	kvb_wl_gen_params_t p;
	kvb_wl_gen_defaults(&p);
	p.n_requests = 5000;
	p.seed = 42;
	kvb_workload_t *a = gen_ok(&p), *b = gen_ok(&p);
	ck_assert(same_workload(a, b));
	ck_assert_str_eq(kvb_workload_source(a), "generated: seed 42, 5000 requests");
	p.seed = 43;
	kvb_workload_t *c = gen_ok(&p);
	ck_assert(!same_workload(a, c));
	kvb_workload_free(c);

	/* seven draws per request whatever the parameters: another reuse_prob or
	 * rate leaves the lengths (and, for reuse, the arrivals) unchanged */
	p.seed = 42;
	p.reuse_prob = 0.3;
	p.window = 7;
	c = gen_ok(&p);
	kvb_wl_gen_params_t q = p;
	q.rate_per_s = 2 * p.rate_per_s;
	kvb_workload_t *d = gen_ok(&q);
	for (uint64_t i = 0; i < 5000; i++) {
		const kvb_wl_request_t *x = kvb_workload_get(a, i), *y = kvb_workload_get(c, i),
				       *z = kvb_workload_get(d, i);
		ck_assert_double_eq(x->arrival_s, y->arrival_s);
		ck_assert_double_eq_tol(z->arrival_s, x->arrival_s / 2, 1e-9);
		ck_assert_uint_eq(x->input_tokens, y->input_tokens);
		ck_assert_uint_eq(x->output_tokens, z->output_tokens);
		ck_assert_uint_eq(x->n_hash, y->n_hash);
	}
	kvb_workload_free(a);
	kvb_workload_free(b);
	kvb_workload_free(c);
	kvb_workload_free(d);
}
END_TEST

START_TEST(test_gen_rate_and_lengths)
{
	kvb_wl_gen_params_t p;
	kvb_wl_gen_defaults(&p);
	p.n_requests = 50000;
	p.seed = 7;
	kvb_workload_t *w = gen_ok(&p);
	check_order(w);
	kvb_wl_stats_t st;
	kvb_workload_stats(w, &st);
	ck_assert_uint_eq(st.count, 50000);
	double gap = st.duration_s / (double)(st.count - 1);
	ck_assert_msg(fabs(gap * p.rate_per_s - 1) < 0.02, "mean gap %.5f s, want %.5f", gap,
		      1 / p.rate_per_s);
	ck_assert_msg(fabs(st.mean_input / p.input_mean - 1) < 0.03, "mean input %.1f",
		      st.mean_input);
	ck_assert_msg(fabs(st.mean_output / p.output_mean - 1) < 0.03, "mean output %.1f",
		      st.mean_output);
	/* shape: the fit's medians (7,023 and 278) within 5% */
	ck_assert_msg(fabs(st.p50_input / 7023.0 - 1) < 0.05, "p50 input %u", st.p50_input);
	ck_assert_msg(fabs(st.p50_output / 278.0 - 1) < 0.05, "p50 output %u", st.p50_output);
	ck_assert_uint_le(st.max_input, p.max_tokens);
	for (uint64_t i = 0; i < st.count; i++) {
		const kvb_wl_request_t *r = kvb_workload_get(w, i);
		ck_assert_uint_eq(r->id, i);
		ck_assert_uint_ge(r->input_tokens, 1);
		ck_assert_uint_ge(r->output_tokens, 1);
		ck_assert_uint_eq(r->n_hash, (r->input_tokens + 511) / 512);
	}
	kvb_workload_free(w);

	/* heavy clamping: the solver still hits the asked mean */
	p.n_requests = 50000;
	p.max_tokens = 1000;
	p.input_mean = 500;
	p.input_sigma = 2;
	p.output_mean = 1;
	p.output_sigma = 0;
	p.block_tokens = 16;
	w = gen_ok(&p);
	kvb_workload_stats(w, &st);
	ck_assert_msg(fabs(st.mean_input / 500 - 1) < 0.03, "clamped mean input %.1f",
		      st.mean_input);
	ck_assert_uint_eq(st.max_input, 1000);
	ck_assert_uint_eq(st.max_output, 1);
	ck_assert_uint_eq(kvb_workload_get(w, 0)->n_hash,
			  (kvb_workload_get(w, 0)->input_tokens + 15) / 16);
	kvb_workload_free(w);
}
END_TEST

START_TEST(test_gen_cache_ratio)
{
	kvb_wl_gen_params_t p;
	kvb_wl_gen_defaults(&p);
	p.n_requests = 20000;
	kvb_workload_t *w = gen_ok(&p);
	kvb_wl_stats_t st;
	kvb_workload_stats(w, &st);
	/* Mooncake conversation trace, Table 2: 40% */
	ck_assert_msg(fabs(st.cache_ratio - 0.40) <= 0.05, "cache ratio %.4f", st.cache_ratio);

	/* every hit is a prefix hit (as in the real trace), and each request's
	 * shared prefix is a prefix of a request among the last `window` */
	GHashTable *seen = g_hash_table_new(g_direct_hash, g_direct_equal);
	uint64_t hits = 0;
	for (uint64_t i = 0; i < st.count; i++) {
		const kvb_wl_request_t *r = kvb_workload_get(w, i);
		uint32_t k = 0;
		while (k < r->n_hash && g_hash_table_contains(seen, GUINT_TO_POINTER(r->hash_ids[k])))
			k++;
		for (uint32_t j = k; j < r->n_hash; j++)
			ck_assert(!g_hash_table_contains(seen, GUINT_TO_POINTER(r->hash_ids[j])));
		ck_assert_uint_le((uint64_t)k * 512, r->input_tokens);
		if (k > 0) {
			gboolean found = FALSE;
			for (uint64_t j = i > p.window ? i - p.window : 0; j < i && !found; j++) {
				const kvb_wl_request_t *q = kvb_workload_get(w, j);
				found = q->n_hash >= k &&
					memcmp(q->hash_ids, r->hash_ids, k * sizeof(uint32_t)) == 0;
			}
			ck_assert_msg(found, "request %" G_GUINT64_FORMAT ": no parent in window", i);
		}
		hits += k;
		for (uint32_t j = 0; j < r->n_hash; j++)
			g_hash_table_add(seen, GUINT_TO_POINTER(r->hash_ids[j]));
	}
	ck_assert_uint_eq(hits, st.hit_blocks);
	g_hash_table_destroy(seen);
	kvb_workload_free(w);

	/* no reuse: no hit; window 1 and reuse 1: each continues its predecessor */
	p.reuse_prob = 0;
	w = gen_ok(&p);
	kvb_workload_stats(w, &st);
	ck_assert_uint_eq(st.hit_blocks, 0);
	kvb_workload_free(w);
	p.reuse_prob = 1;
	p.window = 1;
	p.n_requests = 2000;
	w = gen_ok(&p);
	for (uint64_t i = 1; i < 2000; i++) {
		const kvb_wl_request_t *a = kvb_workload_get(w, i - 1), *b = kvb_workload_get(w, i);
		uint32_t shared = MIN(a->input_tokens / 512, b->input_tokens / 512);
		ck_assert_int_eq(memcmp(a->hash_ids, b->hash_ids, shared * sizeof(uint32_t)), 0);
		if (shared < b->n_hash && shared < a->n_hash)
			ck_assert_uint_ne(a->hash_ids[shared], b->hash_ids[shared]);
	}
	kvb_workload_free(w);
}
END_TEST

START_TEST(test_gen_params)
{
	kvb_wl_gen_params_t p, d;
	kvb_wl_gen_defaults(&d);
	struct {
		const char *name;
		kvb_wl_gen_params_t p;
	} bad[16];
	size_t n = 0;
#define BAD(field, value) \
	do { bad[n].name = #field; bad[n].p = d; bad[n].p.field = (value); n++; } while (0)
	BAD(n_requests, 0);
	BAD(n_requests, (uint64_t)KVB_WL_MAX_REQUESTS + 1);
	BAD(rate_per_s, 0);
	BAD(rate_per_s, NAN);
	BAD(max_tokens, 0);
	BAD(max_tokens, KVB_WL_MAX_TOKENS + 1);
	BAD(input_mean, 200000);
	BAD(input_mean, 0.5);
	BAD(output_mean, NAN);
	BAD(input_sigma, -0.1);
	BAD(output_sigma, 4.5);
	BAD(block_tokens, 0);
	BAD(block_tokens, 1); /* 131072 blocks of 1 token > 65536 hashes */
	BAD(reuse_prob, 1.5);
	BAD(window, 0);
#undef BAD
	for (size_t i = 0; i < n; i++) {
		kvb_workload_t *w = NULL;
		GError *e = NULL;
		p = bad[i].p;
		ck_assert_msg(!kvb_workload_generate(&p, &w, &e), "%s accepted", bad[i].name);
		ck_assert_ptr_null(w);
		ck_assert(g_error_matches(e, KVB_WL_ERROR, KVB_WL_ERROR_INVALID));
		char *want = g_strdup_printf("generator: %s = ", bad[i].name);
		ck_assert_msg(strstr(e->message, want) != NULL, "'%s' lacks '%s'", e->message, want);
		g_free(want);
		g_error_free(e);
	}
}
END_TEST

/* ---- prefill model --------------------------------------------------------------- */

START_TEST(test_prefill_exact)
{
	/* 0.5 B params, 2 layers, width 8; 3 new tokens after 5 cached:
	 * 2 x 5e8 x 3 + 2 x 2 x 8 x ((5 + 3)^2 - 5^2) = 3e9 + 32 x 39 = 3000001248 */
	const kvb_model_t m = {.name = "toy", .layers = 2, .kv_heads = 1, .head_dim = 8,
			       .dtype_bytes = 2, .active_params_b = 0.5, .hidden = 8};
	ck_assert_double_eq(kvb_prefill_flops(&m, 3, 5), 3000001248.0);
	const kvb_gpu_params_t g = {.tflops_per_gpu = 1, .gpus = 2, .mfu = 0.5, .overhead_s = 0.25};
	ck_assert_double_eq_tol(kvb_prefill_seconds(&m, 3, 5, &g), 0.253000001248, 1e-15);
	ck_assert_double_eq(kvb_prefill_seconds(&m, 0, 5, &g), 0.25);

	/* Llama-3-70B, 8k prompt, defaults (8 x 312 TFLOP/s x 0.45 + 20 ms):
	 * 2 x 70.6e9 x 8192 + 2 x 80 x 8192 x 8192^2 = 1156710400000000 + 87960930222080 */
	const kvb_model_t *l70 = kvb_model_find("llama-3-70b");
	ck_assert_ptr_nonnull(l70);
	ck_assert_double_eq_tol(kvb_prefill_flops(l70, 8192, 0), 1244671330222080.0, 1.0);
	kvb_gpu_params_t d;
	kvb_gpu_params_defaults(&d);
	ck_assert_double_eq(d.tflops_per_gpu, 312);
	ck_assert_uint_eq(d.gpus, 8);
	ck_assert_double_eq(d.mfu, 0.45);
	ck_assert_double_eq(d.overhead_s, 0.02);
	double want = 0.02 + 1244671330222080.0 / 1.1232e15; /* 1.128147 s */
	ck_assert_double_eq_tol(kvb_prefill_seconds(l70, 8192, 0, &d), want, 1e-12);
	ck_assert_double_eq_tol(kvb_prefill_seconds(l70, 8192, 0, NULL), want, 1e-12);

	/* twice the GPUs halve the compute part */
	kvb_gpu_params_t g16 = d;
	g16.gpus = 16;
	ck_assert_double_eq_tol(kvb_prefill_seconds(l70, 8192, 0, &g16) - 0.02, (want - 0.02) / 2,
				1e-12);

	/* invalid input */
	ck_assert_double_eq(kvb_prefill_flops(NULL, 1, 0), -1);
	ck_assert_double_eq(kvb_prefill_seconds(NULL, 1, 0, &d), -1);
	kvb_gpu_params_t b = d;
	b.gpus = 0;
	ck_assert_double_eq(kvb_prefill_seconds(l70, 1, 0, &b), -1);
	b = d;
	b.mfu = 1.5;
	ck_assert_double_eq(kvb_prefill_seconds(l70, 1, 0, &b), -1);
	b = d;
	b.tflops_per_gpu = NAN;
	ck_assert_double_eq(kvb_prefill_seconds(l70, 1, 0, &b), -1);
	b = d;
	b.overhead_s = -1;
	ck_assert_double_eq(kvb_prefill_seconds(l70, 1, 0, &b), -1);
}
END_TEST

START_TEST(test_prefill_monotonic)
{
	for (const kvb_model_t *m = kvb_model_presets(); m->name; m++) {
		for (uint32_t c = 0; c <= 65536; c += 16384) {
			double prev = kvb_prefill_seconds(m, 0, c, NULL);
			for (uint32_t n = 1; n <= 262144; n *= 2) {
				double t = kvb_prefill_seconds(m, n, c, NULL);
				ck_assert_msg(t > prev, "%s: %u new after %u cached", m->name, n, c);
				/* more cache under the same new tokens costs more attention */
				ck_assert(kvb_prefill_seconds(m, n, c + 1024, NULL) > t);
				prev = t;
			}
		}
		/* for a fixed prompt, a longer cached prefix is cheaper */
		double prev = kvb_prefill_seconds(m, 131072, 0, NULL);
		for (uint32_t c = 8192; c < 131072; c += 8192) {
			double t = kvb_prefill_seconds(m, 131072 - c, c, NULL);
			ck_assert_msg(t < prev, "%s: cached %u", m->name, c);
			prev = t;
		}
	}
}
END_TEST

START_TEST(test_prefill_mooncake_anchor)
{
	/* Mooncake FAST'25 Fig. 14 (anchors.md 3.1): a 95% prefix hit cuts the
	 * prefill of a 128k prompt by 92% (dummy Llama3-70B, 8 x A800). */
	const kvb_model_t *m = kvb_model_find("llama-3-70b");
	ck_assert_ptr_nonnull(m);
	const uint32_t total = 131072, cached = (uint32_t)(0.95 * total); /* 124518 */
	double full = kvb_prefill_seconds(m, total, 0, NULL);
	double hit = kvb_prefill_seconds(m, total - cached, cached, NULL);
	double cut = 1 - hit / full;
	printf("# prefill llama-3-70b 128k: %.2f s cold, %.2f s at 95%% hit, cut %.1f%% (paper 92%%)\n",
	       full, hit, 100 * cut);
	ck_assert_msg(fabs(cut - 0.92) < 0.01, "cut %.4f", cut);
	/* the FLOP ratio alone (no fixed overhead) says the same */
	double fcut = 1 - kvb_prefill_flops(m, total - cached, cached) / kvb_prefill_flops(m, total, 0);
	ck_assert_msg(fabs(fcut - 0.92) < 0.01, "flop cut %.4f", fcut);
}
END_TEST

Suite *kvb_suite_workload(void)
{
	Suite *s = suite_create("workload");
	TCase *tc = tcase_create("traces");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_conversation_trace);
	tcase_add_test(tc, test_synthetic_trace);
	tcase_add_test(tc, test_azure_traces);
	suite_add_tcase(s, tc);

	tc = tcase_create("parsing");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_mooncake_extras);
	tcase_add_test(tc, test_out_of_order);
	tcase_add_test(tc, test_rate_and_limit);
	tcase_add_test(tc, test_azure_edges);
	tcase_add_test(tc, test_malformed);
	tcase_add_test(tc, test_malformed_limits);
	tcase_add_test(tc, test_stats_and_array);
	suite_add_tcase(s, tc);

	tc = tcase_create("generator");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_gen_determinism);
	tcase_add_test(tc, test_gen_rate_and_lengths);
	tcase_add_test(tc, test_gen_cache_ratio);
	tcase_add_test(tc, test_gen_params);
	suite_add_tcase(s, tc);

	tc = tcase_create("prefill");
	tcase_add_test(tc, test_prefill_exact);
	tcase_add_test(tc, test_prefill_monotonic);
	tcase_add_test(tc, test_prefill_mooncake_anchor);
	suite_add_tcase(s, tc);
	return s;
}
