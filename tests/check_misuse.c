/*
 * API misuse: every call gets a clear error code and a message naming the
 * bad value; nothing leaks; the connector keeps serving (each test ends with
 * a good transfer and the teardown invariant).
 */
#include "config.h"

#include <string.h>

#include "harness.h"
#include "suites.h"

static void expect_err(int rc, int code, const kvb_err_t *err, const char *needle)
{
	ck_assert_msg(rc == code, "got %s, expected %s (%s)", kvb_status_name(rc), kvb_status_name(code),
		      err->msg);
	ck_assert_int_eq(err->code, code);
	ck_assert_msg(strstr(err->msg, needle), "message '%s' lacks '%s'", err->msg, needle);
}

/* A good transfer "ok-<tag>" from p to d, verified. */
static void good_transfer(h_world_t *w, h_worker_t *p, h_worker_t *d, const char *tag, uint32_t base)
{
	uint32_t pi[2] = {base, base + 1}, di[2] = {base + 2, base + 3};
	kvb_block_list_t pb = {pi, 2}, db = {di, 2};
	char tid[64], rid[64];
	snprintf(tid, sizeof(tid), "ok-%s", tag);
	snprintf(rid, sizeof(rid), "r-%s", tag);
	h_fill(p, base, &pb, 1);
	ck_assert_int_eq(kvb_producer_begin(p->conn, tid, NULL), KVB_OK);
	ck_assert_int_eq(kvb_producer_ready(p->conn, tid, &pb, 1, NULL), KVB_OK);
	h_pull(d, rid, tid, p->name, &db, 1);
	h_run(w, NULL, NULL, 100);
	const kvb_finished_t *f = h_finished(d, rid);
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(f->status, KVB_OK);
	h_expect(d, base, &db, 1);
}

START_TEST(test_unknown_requests_and_double_calls)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	h_worker_t *p = h_add(w, "p0", &o);
	h_worker_t *d = h_add(w, "d0", &o);
	kvb_err_t e;
	kvb_block_list_t pb = H_LIST(1);
	expect_err(kvb_producer_ready(p->conn, "ghost", &pb, 1, &e), KVB_ERR_NOT_FOUND, &e, "ghost");
	ck_assert_str_eq(kvb_connector_last_error(p->conn), e.msg);
	expect_err(kvb_producer_abort(p->conn, "ghost", &e), KVB_ERR_NOT_FOUND, &e, "ghost");
	expect_err(kvb_consumer_abort(d->conn, "ghost", &e), KVB_ERR_NOT_FOUND, &e, "ghost");
	expect_err(kvb_producer_ready(p->conn, NULL, &pb, 1, &e), KVB_ERR_NOT_FOUND, &e, "(null)");
	ck_assert_int_eq(kvb_producer_state(p->conn, "ghost"), KVB_ERR_NOT_FOUND);
	ck_assert_int_eq(kvb_consumer_state(d->conn, "ghost"), KVB_ERR_NOT_FOUND);

	ck_assert_int_eq(kvb_producer_begin(p->conn, "t", NULL), KVB_OK);
	expect_err(kvb_producer_begin(p->conn, "t", &e), KVB_ERR_EXISTS, &e, "already live");
	ck_assert_int_eq(kvb_producer_ready(p->conn, "t", &pb, 1, NULL), KVB_OK);
	expect_err(kvb_producer_ready(p->conn, "t", &pb, 1, &e), KVB_ERR_STATE, &e, "ready, not prefill");
	ck_assert_int_eq(kvb_producer_abort(p->conn, "t", NULL), KVB_OK);
	/* double free */
	expect_err(kvb_producer_abort(p->conn, "t", &e), KVB_ERR_NOT_FOUND, &e, "unknown transfer t");
	expect_err(kvb_producer_begin(p->conn, "t", &e), KVB_ERR_STATE, &e, "must not be reused");

	char longid[KVB_ID_MAX + 8];
	memset(longid, 'a', sizeof(longid) - 1);
	longid[sizeof(longid) - 1] = '\0';
	expect_err(kvb_producer_begin(p->conn, longid, &e), KVB_ERR_INVALID, &e, "longer than");
	expect_err(kvb_producer_begin(p->conn, "", &e), KVB_ERR_INVALID, &e, "empty");

	good_transfer(w, p, d, "a", 10);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

START_TEST(test_blocks_outside_region)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	h_worker_t *p = h_add(w, "p0", &o);
	h_worker_t *d = h_add(w, "d0", &o);
	kvb_err_t e;
	kvb_block_list_t bad = H_LIST(1, 64);
	ck_assert_int_eq(kvb_producer_begin(p->conn, "t", NULL), KVB_OK);
	expect_err(kvb_producer_ready(p->conn, "t", &bad, 1, &e), KVB_ERR_RANGE, &e, "block 64");
	ck_assert_int_eq(kvb_producer_state(p->conn, "t"), KVB_PRODUCER_PREFILL);
	/* wrong number of groups, NULL ids */
	kvb_block_list_t two[2] = {H_LIST(1), H_LIST(2)};
	expect_err(kvb_producer_ready(p->conn, "t", two, 2, &e), KVB_ERR_INVALID, &e, "2 block lists");
	kvb_block_list_t nul = {NULL, 3};
	expect_err(kvb_producer_ready(p->conn, "t", &nul, 1, &e), KVB_ERR_INVALID, &e, "NULL");
	ck_assert_int_eq(kvb_producer_abort(p->conn, "t", NULL), KVB_OK);

	const char *addrs[2] = {"p0", "p0"};
	kvb_pull_params_t pp = {"r", "x", addrs, 1, 0, &bad, 1};
	expect_err(kvb_consumer_pull(d->conn, &pp, &e), KVB_ERR_RANGE, &e, "block 64");
	kvb_block_list_t okl = H_LIST(1);
	pp.groups = &okl;
	pp.n_producers = 2;
	expect_err(kvb_consumer_pull(d->conn, &pp, &e), KVB_ERR_INVALID, &e, "listed twice");
	pp.n_producers = 0;
	expect_err(kvb_consumer_pull(d->conn, &pp, &e), KVB_ERR_INVALID, &e, "0 producer");
	pp.n_producers = 1;
	ck_assert_int_eq(kvb_consumer_pull(d->conn, &pp, NULL), KVB_OK);
	expect_err(kvb_consumer_pull(d->conn, &pp, &e), KVB_ERR_EXISTS, &e, "already pulling");
	ck_assert_int_eq(kvb_consumer_abort(d->conn, "r", NULL), KVB_OK);
	h_run(w, NULL, NULL, 100);
	expect_err(kvb_consumer_pull(d->conn, NULL, &e), KVB_ERR_INVALID, &e, "NULL");

	good_transfer(w, p, d, "b", 20);
	h_invariants(w);
	h_world_free(w);
}
END_TEST

START_TEST(test_bad_layouts)
{
	h_world_t *w = h_world_new(1);
	kvb_backend_t *be;
	ck_assert_int_eq(kvb_loop_open(w->fabric, "solo", NULL, &be, NULL), KVB_OK);
	kvb_config_t cfg;
	kvb_config_init(&cfg);
	kvb_connector_t *c;
	kvb_err_t e;
	ck_assert_int_eq(kvb_connector_new(&cfg, be, &c, &e), KVB_OK);
	expect_err(kvb_connector_register_layout(c, NULL, 0, &e), KVB_ERR_INVALID, &e, "empty KV layout");
	static uint8_t mem[65536];
	kvb_region_t r = {(uint64_t)(uintptr_t)mem, 0, 0, 16, 0, 0, KVB_MEM_HOST, -1};
	int rc = kvb_connector_register_layout(c, &r, 1, &e);
	ck_assert_int_lt(rc, 0);
	ck_assert_msg(e.msg[0], "zero-length region gave no message");
	r.block_stride = 4096;
	r.block_bytes = 8192;
	rc = kvb_connector_register_layout(c, &r, 1, &e);
	ck_assert_int_lt(rc, 0);
	ck_assert_msg(strstr(e.msg, "8192"), "message: %s", e.msg);
	kvb_region_t two[2] = {r, r};
	two[0].block_bytes = two[1].block_bytes = 4096;
	rc = kvb_connector_register_layout(c, two, 2, &e); /* overlap */
	ck_assert_int_lt(rc, 0);
	ck_assert_msg(e.msg[0], "overlap gave no message");
	/* pulls and readies without a layout */
	kvb_block_list_t l = H_LIST(1);
	ck_assert_int_eq(kvb_producer_begin(c, "t", NULL), KVB_OK);
	expect_err(kvb_producer_ready(c, "t", &l, 1, &e), KVB_ERR_STATE, &e, "no KV layout");
	ck_assert_int_eq(kvb_producer_abort(c, "t", NULL), KVB_OK);
	/* a good layout registers once */
	r.block_bytes = 4096;
	ck_assert_int_eq(kvb_connector_register_layout(c, &r, 1, &e), KVB_OK);
	expect_err(kvb_connector_register_layout(c, &r, 1, &e), KVB_ERR_STATE, &e, "already registered");
	kvb_counters_t k;
	kvb_connector_counters(c, &k);
	ck_assert_uint_eq(k.blocks_held, 0);
	ck_assert_uint_eq(k.live_requests, 0);
	kvb_connector_free(c);
	kvb_config_clear(&cfg);
	kvb_backend_close(be);
	h_world_free(w);
}
END_TEST

START_TEST(test_bad_config_and_roles)
{
	h_world_t *w = h_world_new(1);
	kvb_backend_t *be;
	ck_assert_int_eq(kvb_loop_open(w->fabric, "solo", NULL, &be, NULL), KVB_OK);
	kvb_config_t cfg;
	kvb_config_init(&cfg);
	kvb_connector_t *c = (kvb_connector_t *)&cfg;
	kvb_err_t e;
	cfg.tp_rank = 3; /* tp_size 1 */
	ck_assert_int_eq(kvb_connector_new(&cfg, be, &c, &e), KVB_ERR_CONFIG);
	ck_assert_ptr_null(c);
	ck_assert_ptr_nonnull(strstr(e.msg, "tp_rank"));
	cfg.tp_rank = 0;
	g_strlcpy(cfg.nic_policy, "fastest", sizeof(cfg.nic_policy));
	ck_assert_int_eq(kvb_connector_new(&cfg, be, &c, &e), KVB_ERR_NOT_FOUND);
	ck_assert_ptr_nonnull(strstr(e.msg, "fastest"));
	g_strlcpy(cfg.nic_policy, "round_robin", sizeof(cfg.nic_policy));
	ck_assert_int_eq(kvb_connector_new(NULL, be, &c, &e), KVB_ERR_INVALID);

	/* role checks */
	cfg.role = KVB_ROLE_CONSUMER;
	ck_assert_int_eq(kvb_connector_new(&cfg, be, &c, &e), KVB_OK);
	/* one connector per backend instance */
	kvb_connector_t *c2;
	ck_assert_int_eq(kvb_connector_new(&cfg, be, &c2, &e), KVB_ERR_STATE);
	expect_err(kvb_producer_begin(c, "t", &e), KVB_ERR_STATE, &e, "kv_consumer cannot produce");
	kvb_connector_free(c);
	cfg.role = KVB_ROLE_PRODUCER;
	ck_assert_int_eq(kvb_connector_new(&cfg, be, &c, &e), KVB_OK);
	const char *addrs[1] = {"x"};
	kvb_block_list_t l = H_LIST(1);
	kvb_pull_params_t pp = {"r", "x", addrs, 1, 0, &l, 1};
	expect_err(kvb_consumer_pull(c, &pp, &e), KVB_ERR_STATE, &e, "kv_producer cannot consume");
	kvb_connector_free(c);
	kvb_config_clear(&cfg);
	kvb_backend_close(be);
	h_world_free(w);
}
END_TEST

/* A producer that receives a pull while it is a consumer only refuses it. */
START_TEST(test_pull_to_consumer_refused)
{
	h_world_t *w = h_world_new(1);
	h_opts_t o;
	h_opts_default(&o);
	o.role = KVB_ROLE_CONSUMER;
	h_worker_t *a = h_add(w, "a", &o);
	h_worker_t *b = h_add(w, "b", &o);
	kvb_block_list_t l = H_LIST(1);
	h_pull(a, "r", "x", "b", &l, 1);
	h_run(w, NULL, NULL, 100);
	const kvb_finished_t *f = h_finished(a, "r");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(f->status, KVB_ERR_PEER);
	ck_assert_ptr_nonnull(strstr(f->reason, "does not produce"));
	(void)b;
	h_invariants(w);
	h_world_free(w);
}
END_TEST

Suite *kvb_suite_misuse(void)
{
	Suite *s = suite_create("misuse");
	TCase *tc = tcase_create("api");
	tcase_add_test(tc, test_unknown_requests_and_double_calls);
	tcase_add_test(tc, test_blocks_outside_region);
	tcase_add_test(tc, test_bad_layouts);
	tcase_add_test(tc, test_bad_config_and_roles);
	tcase_add_test(tc, test_pull_to_consumer_refused);
	suite_add_tcase(s, tc);
	return s;
}
