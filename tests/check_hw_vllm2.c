/*
 * vLLM's Gen 1/2 side channel (vLLM 0.16 - 0.32) in the hw backend, over
 * loopback: a kvbridge producer and a kvbridge consumer that meet only
 * through the HTTP bootstrap and the ROUTER/DEALER messages vLLM peers
 * exchange, every byte verified; what a vLLM peer of the other generation,
 * or a broken one, sends, and what it gets back.  Real vLLM processes are in
 * tests/test_vllm_*.sh.
 */
#include "config.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <check.h>
#include <glib.h>
#include <zmq.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/hw.h>

#include "../src/tools/kvb_pattern.h"
#include "hw_side.h"
#include "kvb_vllm_wire.h"
#include "kvb_vllm_xfer_wire.h"
#include "suites.h"

/* A free TCP port on loopback (the kernel's pick, released at once). */
static uint16_t free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	ck_assert(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
	socklen_t l = sizeof(a);
	getsockname(fd, (struct sockaddr *)&a, &l);
	close(fd);
	return ntohs(a.sin_port);
}

typedef struct found {
	bool done;
	int status;
	char why[256];
	char worker[128];
	uint32_t tp_size;
} found_t;

static void on_query(void *user, int status, const char *why, const kvb_hw_vllm_engine_t *e)
{
	found_t *f = user;
	f->done = true;
	f->status = status;
	g_strlcpy(f->why, why ? why : "", sizeof(f->why));
	if (e) {
		f->tp_size = e->tp_size;
		g_strlcpy(f->worker, e->workers[0], sizeof(f->worker));
	}
}

static found_t query(side_t **sides, int n, side_t *d, uint16_t bport, const char *engine)
{
	found_t f = {0};
	char url[64];
	g_snprintf(url, sizeof(url), "http://127.0.0.1:%u", bport);
	kvb_err_t err;
	ck_assert_msg(kvb_hw_vllm_query(d->be, url, engine, on_query, &f, &err) == KVB_OK, "%s", err.msg);
	gint64 end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
	while (!f.done && g_get_monotonic_time() < end)
		step(sides, n);
	ck_assert_msg(f.done, "no answer to the bootstrap query");
	return f;
}

static void open_producer(side_t *P, uint16_t bport, double lease_s)
{
	side_opts_t o = {.vllm = KVB_HW_VLLM_GEN2, .bootstrap_port = bport, .engine_id = "prefill-0"};
	side_open_opt(P, KVB_ROLE_PRODUCER, lease_s, &o);
}

static void open_consumer(side_t *D)
{
	side_opts_t o = {.vllm = KVB_HW_VLLM_GEN2};
	side_open_opt(D, KVB_ROLE_CONSUMER, 30, &o);
}

static void blocks(uint32_t *pb, uint32_t *db, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		pb[i] = 3 + i * 2;       /* scattered on the producer */
		db[i] = 40 - i;          /* reversed on the consumer */
	}
}

/* ---- a kvbridge pair through the bootstrap ----------------------------------- */

static void pair_case(bool pull_first)
{
	uint16_t bport = free_port();
	side_t P, D;
	open_producer(&P, bport, 30);
	open_consumer(&D);
	side_t *both[2] = {&P, &D};
	ck_assert_uint_eq(kvb_hw_vllm_bootstrap_port(P.be), bport);
	ck_assert(g_str_has_prefix(kvb_hw_vllm_worker_addr(P.be), "tcp://127.0.0.1:"));
	found_t f = query(both, 2, &D, bport, "prefill-0");
	ck_assert_msg(f.status == KVB_OK, "query: %s", f.why);
	ck_assert_uint_eq(f.tp_size, 1);
	char want[96];
	g_snprintf(want, sizeof(want), "vllm2://%s", kvb_hw_vllm_worker_addr(P.be) + 6);
	ck_assert_str_eq(f.worker, want);

	uint32_t pb[24], db[24];
	blocks(pb, db, 24);
	if (pull_first) {
		/* the decoder is first: the producer waits for its prefill */
		pull(&D, f.worker, "xfer-1", db, 24);
		for (int i = 0; i < 200; i++)
			step(both, 2);
		ck_assert_uint_eq(D.fin->len, 0);
		produce(&P, "xfer-1", pb, 24);
	} else {
		produce(&P, "xfer-1", pb, 24);
		pull(&D, f.worker, "xfer-1", db, 24);
	}
	ck_assert_msg(run_until(both, 2, &D, 1, 20), "no answer");
	kvb_finished_t *fin = &g_array_index(D.fin, kvb_finished_t, 0);
	ck_assert_msg(fin->state == KVB_CONSUMER_DONE, "consumer: %s (%s)", kvb_status_name(fin->status),
		      fin->reason);
	ck_assert_uint_eq(check_request(&D, "xfer-1", db, 24), 0);
	ck_assert(run_until(both, 2, &P, 1, 10));
	ck_assert_int_eq(g_array_index(P.fin, kvb_finished_t, 0).state, KVB_PRODUCER_SENT);
	kvb_hw_stats_t st;
	kvb_hw_stats_get(P.be, &st);
	ck_assert_uint_eq(st.tcp_bytes_posted, (uint64_t)24 * LAYERS * BLOCK_BYTES);
	ck_assert_uint_eq(st.vllm_messages, 1);
	ck_assert_uint_ge(st.vllm_replies, 1);
	ck_assert_uint_eq(st.vllm_errors, 0);
	ck_assert_uint_eq(st.vllm_bootstrap_requests, 1); /* D's /query; P registered in-process */
	side_close(&D);
	side_close(&P);
}

START_TEST(test_gen2_pair)
{
	pair_case(false);
}
END_TEST

START_TEST(test_gen2_pull_before_prefill)
{
	pair_case(true);
}
END_TEST

/* A transfer the producer never gets: vLLM's timeout reply, in its words. */
START_TEST(test_gen2_timeout_words)
{
	uint16_t bport = free_port();
	side_t P, D;
	open_producer(&P, bport, 1.0);
	open_consumer(&D);
	side_t *both[2] = {&P, &D};
	found_t f = query(both, 2, &D, bport, "prefill-0");
	ck_assert_int_eq(f.status, KVB_OK);
	uint32_t pb[4], db[4];
	blocks(pb, db, 4);
	pull(&D, f.worker, "xfer-never", db, 4);
	ck_assert(run_until(both, 2, &D, 1, 10));
	kvb_finished_t *fin = &g_array_index(D.fin, kvb_finished_t, 0);
	ck_assert_int_eq(fin->state, KVB_CONSUMER_FAILED);
	ck_assert_int_eq(fin->status, KVB_ERR_TIMEOUT);
	ck_assert_msg(strstr(fin->reason, "Timeout waiting for P side ready."), "%s", fin->reason);
	side_close(&D);
	side_close(&P);
}
END_TEST

/* An engine the bootstrap does not know, and a bootstrap that is not there. */
START_TEST(test_gen2_query_failures)
{
	uint16_t bport = free_port();
	side_t P, D;
	open_producer(&P, bport, 30);
	open_consumer(&D);
	side_t *both[2] = {&P, &D};
	found_t f = query(both, 2, &D, bport, "no-such-engine");
	ck_assert_int_eq(f.status, KVB_ERR_NOT_FOUND);
	ck_assert_msg(strstr(f.why, "no-such-engine"), "%s", f.why);
	f = query(both, 2, &D, free_port(), "prefill-0");
	ck_assert_int_eq(f.status, KVB_ERR_PEER);
	ck_assert_msg(strstr(f.why, "/query"), "%s", f.why);
	side_close(&D);
	side_close(&P);
}
END_TEST

/* The producer restarts on new ports under the same engine id: the pull to
 * the stale worker fails within seconds, the cache entry goes, and the next
 * query finds the new worker. */
START_TEST(test_gen2_producer_restart)
{
	uint16_t bport = free_port();
	side_t B, P, D;
	open_producer(&B, bport, 30);   /* serves the bootstrap; its own worker is "prefill-0" */
	side_opts_t po = {.vllm = KVB_HW_VLLM_GEN2, .engine_id = "prefill-1", .dp_rank = 1};
	char server[32];
	g_snprintf(server, sizeof(server), "127.0.0.1:%u", bport);
	po.bootstrap_server = server;
	side_open_opt(&P, KVB_ROLE_PRODUCER, 30, &po);
	open_consumer(&D);
	side_t *all[3] = {&B, &P, &D};
	found_t f;
	for (int i = 0; i < 50; i++) { /* P registers over HTTP */
		f = query(all, 3, &D, bport, "prefill-1");
		if (f.status == KVB_OK)
			break;
		for (int k = 0; k < 100; k++)
			step(all, 3);
	}
	ck_assert_msg(f.status == KVB_OK, "%s", f.why);
	char old[128];
	g_strlcpy(old, f.worker, sizeof(old));
	side_close(&P); /* gone: its ROUTER port refuses connections */
	side_t *two[2] = {&B, &D};
	uint32_t pb[4], db[4];
	blocks(pb, db, 4);
	pull(&D, old, "xfer-stale", db, 4);
	gint64 t0 = g_get_monotonic_time();
	ck_assert(run_until(two, 2, &D, 1, 10));
	double took = (double)(g_get_monotonic_time() - t0) / 1e6;
	kvb_finished_t *fin = &g_array_index(D.fin, kvb_finished_t, 0);
	ck_assert_int_eq(fin->state, KVB_CONSUMER_FAILED);
	ck_assert_msg(took < 5, "the dead worker was noticed after %.1f s", took);
	ck_assert_msg(strstr(fin->reason, "producer worker"), "%s", fin->reason);
	/* the cache forgot the engine: a new query goes to the bootstrap */
	kvb_hw_stats_t before, after;
	kvb_hw_stats_get(D.be, &before);
	f = query(two, 2, &D, bport, "prefill-1");
	kvb_hw_stats_get(D.be, &after);
	ck_assert_uint_eq(after.vllm_queries, before.vllm_queries + 1);
	side_close(&D);
	side_close(&B);
}
END_TEST

/* Pulls in a row between one producer worker and one decoder: the decoder
 * keeps its DEALER, the producer the decoder's descriptor and data
 * connections, every byte still right.  Then the decoder restarts on the
 * same handshake port with other memory: the producer notices that its
 * kept connections closed, asks for the new descriptor, and the bytes land
 * in the new decoder's memory. */
START_TEST(test_gen2_connection_reuse)
{
	uint16_t bport = free_port(), rport = free_port();
	side_t P, D;
	open_producer(&P, bport, 30);
	side_opts_t dopt = {.vllm = KVB_HW_VLLM_GEN2, .rpc_port = rport};
	side_open_opt(&D, KVB_ROLE_CONSUMER, 30, &dopt);
	side_t *both[2] = {&P, &D};
	found_t f = query(both, 2, &D, bport, "prefill-0");
	ck_assert_msg(f.status == KVB_OK, "query: %s", f.why);
	uint32_t pb[8], db[8];
	blocks(pb, db, 8);
	for (int i = 0; i < 3; i++) {
		char id[16];
		g_snprintf(id, sizeof(id), "xfer-r%d", i);
		produce(&P, id, pb, 8);
		pull(&D, f.worker, id, db, 8);
		ck_assert_msg(run_until(both, 2, &D, (guint)i + 1, 20), "pull %d: no answer", i);
		kvb_finished_t *fin = &g_array_index(D.fin, kvb_finished_t, i);
		ck_assert_msg(fin->state == KVB_CONSUMER_DONE, "pull %d: %s", i, fin->reason);
		ck_assert_uint_eq(check_request(&D, id, db, 8), 0);
		ck_assert(run_until(both, 2, &P, (guint)i + 1, 10));
	}
	kvb_hw_stats_t ps, ds;
	kvb_hw_stats_get(P.be, &ps);
	kvb_hw_stats_get(D.be, &ds);
	ck_assert_uint_eq(ds.vllm_dealers, 1);
	ck_assert_uint_eq(ds.vllm_dealers_reused, 2);
	ck_assert_uint_eq(ps.vllm_descriptors_reused, 2);

	/* the decoder restarts on the same port, its KV somewhere else */
	side_close(&D);
	for (int i = 0; i < 100; i++)
		step(both, 1); /* the producer sees its kept connections close */
	side_t D2;
	void *shift = g_malloc(1 << 20); /* D2's memory lands elsewhere */
	side_open_opt(&D2, KVB_ROLE_CONSUMER, 30, &dopt);
	both[1] = &D2;
	produce(&P, "xfer-after", pb, 8);
	pull(&D2, f.worker, "xfer-after", db, 8);
	ck_assert_msg(run_until(both, 2, &D2, 1, 20), "no answer after the restart");
	kvb_finished_t *fin = &g_array_index(D2.fin, kvb_finished_t, 0);
	ck_assert_msg(fin->state == KVB_CONSUMER_DONE, "after the restart: %s", fin->reason);
	ck_assert_uint_eq(check_request(&D2, "xfer-after", db, 8), 0);
	ck_assert(run_until(both, 2, &P, 4, 10));
	kvb_hw_stats_get(P.be, &ps);
	ck_assert_uint_eq(ps.vllm_descriptors_reused, 2); /* asked for the new descriptor */
	g_free(shift);
	side_close(&D2);
	side_close(&P);
}
END_TEST

/* Pulls posted in one turn go out as one MooncakeXferMetadata, as vLLM's D
 * sends a step's requests: the producer answers those it has at once
 * (CONTINUE), the last when its prefill comes (FINISH), every byte in its
 * own blocks; the DEALER then serves the next pull. */
START_TEST(test_gen2_batched_pulls)
{
	uint16_t bport = free_port();
	side_t P, D;
	open_producer(&P, bport, 30);
	open_consumer(&D);
	side_t *both[2] = {&P, &D};
	found_t f = query(both, 2, &D, bport, "prefill-0");
	ck_assert_msg(f.status == KVB_OK, "query: %s", f.why);
	enum { N = 6, PER = 4 };
	uint32_t pb[N][PER], db[N][PER];
	char ids[N][16];
	for (int k = 0; k < N; k++) {
		g_snprintf(ids[k], sizeof(ids[k]), "xfer-b%d", k);
		for (int i = 0; i < PER; i++) {
			pb[k][i] = (uint32_t)(1 + k * 9 + i * 2);
			db[k][i] = (uint32_t)(63 - k * PER - i);
		}
		if (k != 2) /* xfer-b2's prefill comes later */
			produce(&P, ids[k], pb[k], PER);
	}
	for (int k = 0; k < N; k++)
		pull(&D, f.worker, ids[k], db[k], PER);
	ck_assert_msg(run_until(both, 2, &D, N - 1, 20), "the ready five: no answer");
	ck_assert_uint_eq(D.fin->len, N - 1);
	produce(&P, ids[2], pb[2], PER);
	ck_assert_msg(run_until(both, 2, &D, N, 20), "the late one: no answer");
	for (guint i = 0; i < D.fin->len; i++) {
		kvb_finished_t *fin = &g_array_index(D.fin, kvb_finished_t, i);
		ck_assert_msg(fin->state == KVB_CONSUMER_DONE, "pull %u: %s", i, fin->reason);
	}
	for (int k = 0; k < N; k++)
		ck_assert_uint_eq(check_request(&D, ids[k], db[k], PER), 0);
	ck_assert(run_until(both, 2, &P, N, 10));
	kvb_hw_stats_t ps, ds;
	kvb_hw_stats_get(P.be, &ps);
	kvb_hw_stats_get(D.be, &ds);
	ck_assert_uint_eq(ds.vllm_batched_pulls, N);
	ck_assert_uint_eq(ds.vllm_dealers, 1);
	ck_assert_uint_eq(ps.vllm_messages, 1);
	ck_assert_uint_ge(ps.vllm_replies, 2); /* a CONTINUE, then the FINISH */

	/* the FINISH ended the message: its DEALER carries the next pull */
	produce(&P, "xfer-next", pb[0], PER);
	pull(&D, f.worker, "xfer-next", db[0], PER);
	ck_assert_msg(run_until(both, 2, &D, N + 1, 20), "the next pull: no answer");
	kvb_finished_t *fin = &g_array_index(D.fin, kvb_finished_t, N);
	ck_assert_msg(fin->state == KVB_CONSUMER_DONE, "the next pull: %s", fin->reason);
	ck_assert_uint_eq(check_request(&D, "xfer-next", db[0], PER), 0);
	kvb_hw_stats_get(D.be, &ds);
	ck_assert_uint_eq(ds.vllm_dealers, 1);
	ck_assert_uint_eq(ds.vllm_dealers_reused, 1);
	ck_assert_uint_eq(ds.vllm_batched_pulls, N);
	side_close(&D);
	side_close(&P);
}
END_TEST

/* Heterogeneous TP: one producer worker (TP 1, every KV head) serves two
 * decoder ranks (TP 2), each holding half of the heads in blocks half as
 * long; rank r gets bytes [r * half, (r + 1) * half) of each producer
 * block, as vLLM's head split of an HND block lays them out. */
START_TEST(test_gen2_heterogeneous_tp)
{
	uint16_t bport = free_port();
	side_t P, D[2];
	open_producer(&P, bport, 30);
	const uint64_t half = BLOCK_BYTES / 2;
	for (uint32_t r = 0; r < 2; r++) {
		side_opts_t o = {.vllm = KVB_HW_VLLM_GEN2, .tp_size = 2, .tp_rank = r, .block_bytes = half};
		side_open_opt(&D[r], KVB_ROLE_CONSUMER, 30, &o);
	}
	side_t *all[3] = {&P, &D[0], &D[1]};
	found_t f = query(all, 3, &D[0], bport, "prefill-0");
	ck_assert_msg(f.status == KVB_OK, "query: %s", f.why);
	ck_assert_uint_eq(f.tp_size, 1);
	uint32_t pb[6], db[6];
	blocks(pb, db, 6);
	produce(&P, "xfer-tp", pb, 6);
	for (uint32_t r = 0; r < 2; r++) {
		const char *prods[1] = {f.worker};
		kvb_block_list_t g = {db, 6};
		kvb_pull_params_t pp = {.request_id = r ? "req-r1" : "req-r0", .transfer_id = "xfer-tp",
					.producers = prods, .n_producers = 1, .producer_tp_size = 1,
					.groups = &g, .n_groups = 1};
		kvb_err_t err;
		ck_assert_msg(kvb_consumer_pull(D[r].c, &pp, &err) == KVB_OK, "pull rank %u: %s", r, err.msg);
	}
	ck_assert(run_until(all, 3, &D[0], 1, 20));
	ck_assert(run_until(all, 3, &D[1], 1, 20));
	uint8_t *want = g_malloc(BLOCK_BYTES);
	uint64_t seed = kvb_pattern_request_seed("xfer-tp");
	for (uint32_t r = 0; r < 2; r++) {
		kvb_finished_t *fin = &g_array_index(D[r].fin, kvb_finished_t, 0);
		ck_assert_msg(fin->state == KVB_CONSUMER_DONE, "rank %u: %s", r, fin->reason);
		uint64_t bad = 0;
		for (uint32_t l = 0; l < LAYERS; l++)
			for (uint32_t k = 0; k < 6; k++) {
				kvb_pattern_fill(want, BLOCK_BYTES, kvb_pattern_block_seed(seed, l, k));
				const uint8_t *got = at(&D[r], D[r].regs[l].base + (uint64_t)db[k] * STRIDE);
				bad += memcmp(got, want + r * half, half) != 0;
				for (uint64_t i = half; i < STRIDE; i++)
					bad += got[i] != 0xEE; /* nothing past the half */
			}
		ck_assert_msg(bad == 0, "rank %u: %" PRIu64 " blocks or bytes wrong", r, bad);
	}
	g_free(want);
	/* the producer's transfer ends once both ranks have their share */
	ck_assert(run_until(all, 3, &P, 1, 10));
	ck_assert_int_eq(g_array_index(P.fin, kvb_finished_t, 0).state, KVB_PRODUCER_SENT);
	side_close(&D[0]);
	side_close(&D[1]);
	side_close(&P);
}
END_TEST

/* ---- what peers send that must be refused ------------------------------------- */

/* One message on a DEALER (as vLLM's D sends it; req_env: as a REQ would),
 * the replies collected until FINISH or ERROR. */
static int dealer_call(side_t **sides, int n, const char *ep, const void *buf, size_t len, bool req_env,
		       GPtrArray *replies)
{
	void *zc = zmq_ctx_new();
	void *s = zmq_socket(zc, ZMQ_DEALER);
	int zero = 0;
	zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero));
	ck_assert(zmq_connect(s, ep) == 0);
	if (req_env)
		zmq_send(s, "", 0, ZMQ_SNDMORE);
	zmq_send(s, buf, len, 0);
	int got = 0;
	for (int k = 0; k < 20000; k++) {
		step(sides, n);
		char rbuf[4096];
		int r = zmq_recv(s, rbuf, sizeof(rbuf), ZMQ_DONTWAIT);
		if (r < 0 || (r == 0 && req_env))
			continue;
		g_ptr_array_add(replies, g_bytes_new(rbuf, (gsize)MIN(r, (int)sizeof(rbuf))));
		got++;
		kvb_vllm_xfer_resp_t resp;
		if (kvb_vllm_xfer_resp_decode(rbuf, (size_t)r, &resp, NULL) != KVB_OK)
			break; /* not a Gen 2 reply: there is no more */
		bool last = resp.status != KVB_VLLM_XFER_CONTINUE;
		kvb_vllm_xfer_resp_clear(&resp);
		if (last)
			break;
	}
	zmq_close(s);
	zmq_ctx_term(zc);
	return got;
}

static void expect_error(side_t **sides, int n, const char *ep, const void *buf, size_t len,
			 const char *words)
{
	GPtrArray *r = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
	ck_assert_int_eq(dealer_call(sides, n, ep, buf, len, false, r), 1);
	gsize sz;
	const void *d = g_bytes_get_data(r->pdata[0], &sz);
	kvb_vllm_xfer_resp_t resp;
	kvb_err_t err;
	ck_assert_msg(kvb_vllm_xfer_resp_decode(d, sz, &resp, &err) == KVB_OK, "%s", err.msg);
	ck_assert_int_eq(resp.status, KVB_VLLM_XFER_ERROR);
	ck_assert(!resp.has_ok_reqs && !resp.has_err_reqs);
	ck_assert_msg(resp.err_msg && strstr(resp.err_msg, words), "err_msg %s, want %s",
		      resp.err_msg ? resp.err_msg : "(none)", words);
	kvb_vllm_xfer_resp_clear(&resp);
	g_ptr_array_unref(r);
}

/* A well-formed request for our layout, encoded as vLLM 0.32 does. */
/* D stands in for a vLLM decoder whose messages the test writes by hand, so
 * its connector sent no pull that would open its blocks to the producer's
 * writes: expose them, as kvbridge-bench's target does. */
static void expose_all(side_t *D)
{
	for (uint32_t i = 0; i < LAYERS; i++)
		ck_assert_int_eq(kvb_hw_expose(D->be, (void *)(uintptr_t)D->regs[i].base,
					       (size_t)BLOCKS * STRIDE), KVB_OK);
}

static GByteArray *good_request(side_t *D, const char *req, const char *xfer, const uint32_t *ids,
				uint32_t n, uint32_t n_regions, const char *first_name)
{
	kvb_vllm_xfer_meta_t m;
	kvb_err_t err;
	ck_assert(kvb_vllm_xfer_meta_init(&m, "127.0.0.1", kvb_hw_rpc_port(D->be), 1, 0, &err) == KVB_OK);
	uint32_t counts[1] = {n};
	ck_assert(kvb_vllm_xfer_meta_add_request(&m, req, xfer, ids, counts, 1, &err) == KVB_OK);
	for (uint32_t i = 0; i < n_regions; i++) {
		char name[64];
		if (i == 0 && first_name)
			g_strlcpy(name, first_name, sizeof(name));
		else
			g_snprintf(name, sizeof(name), "model.layers.%u.self_attn.attn", i);
		uint32_t shared = 0;
		kvb_vllm_xfer_region_t r = {
			.fields = KVB_VLLM_XF_REGION_MASK, .base_addr = D->regs[i % LAYERS].base,
			.block_len = STRIDE, .kv_block_len = BLOCK_BYTES, .layer_name = name,
			.layer_index = i, .group_index = 0, .shared_group_ids = &shared,
			.n_shared_group_ids = 1, .row_offset = -1,
		};
		ck_assert_msg(kvb_vllm_xfer_meta_add_region(&m, &r, &err) == KVB_OK, "%s", err.msg);
	}
	GByteArray *out = g_byte_array_new();
	ck_assert_msg(kvb_vllm_xfer_meta_encode(KVB_VLLM_XFER_V032, out, &m, &err) == KVB_OK, "%s", err.msg);
	kvb_vllm_xfer_meta_clear(&m);
	return out;
}

START_TEST(test_gen2_bad_requests_get_error)
{
	uint16_t bport = free_port();
	side_t P, D;
	open_producer(&P, bport, 30);
	open_consumer(&D); /* only its registered memory, for descriptors */
	side_t *both[2] = {&P, &D};
	char ep[64];
	g_strlcpy(ep, kvb_hw_vllm_worker_addr(P.be), sizeof(ep));
	/* not msgpack; a map without the required keys; a wrong type */
	expect_error(both, 2, ep, "\xc1", 1, "MessagePack data is malformed");
	expect_error(both, 2, ep, "\x80", 1, "Object missing required field `remote_hostname`");
	static const uint8_t wrong_port[] = {0x81, 0xaf, 'r', 'e', 'm', 'o', 't', 'e', '_', 'h', 'o', 's', 't',
					     'n', 'a', 'm', 'e', 0x05};
	expect_error(both, 2, ep, wrong_port, sizeof(wrong_port), "Expected `str`, got `int`");
	uint32_t ids[2] = {1, 2};
	/* a layer this producer does not have, by name */
	GByteArray *b = good_request(&D, "d-1", "xfer-x", ids, 2, LAYERS, "model.layers.9.mlp");
	expect_error(both, 2, ep, b->data, b->len,
		     "Mooncake producer registered layer has no matching consumer occurrence: "
		     "model.layers.0.self_attn.attn occurrence 0.");
	g_byte_array_unref(b);
	/* fewer regions than the producer pairs */
	b = good_request(&D, "d-1", "xfer-x", ids, 2, LAYERS - 1, NULL);
	expect_error(both, 2, ep, b->data, b->len, "no matching consumer occurrence");
	g_byte_array_unref(b);
	/* per-block lengths that cannot be the same layout */
	kvb_vllm_xfer_meta_t m;
	ck_assert(kvb_vllm_xfer_meta_init(&m, "127.0.0.1", kvb_hw_rpc_port(D.be), 1, 0, NULL) == KVB_OK);
	uint32_t two[1] = {2};
	ck_assert(kvb_vllm_xfer_meta_add_request(&m, "d-2", "xfer-y", ids, two, 1, NULL) == KVB_OK);
	for (uint32_t i = 0; i < LAYERS; i++) {
		char name[64];
		g_snprintf(name, sizeof(name), "model.layers.%u.self_attn.attn", i);
		kvb_vllm_xfer_region_t r = {
			.fields = KVB_VLLM_XF_REGION_MASK & ~(KVB_VLLM_XF_BIT(KVB_VLLM_XF_SHARED_GROUP_IDS) |
							      KVB_VLLM_XF_BIT(KVB_VLLM_XF_ROW_OFFSETS)),
			.base_addr = D.regs[i].base, .block_len = STRIDE, .kv_block_len = BLOCK_BYTES / 2,
			.layer_name = name, .layer_index = i, .group_index = 0,
		};
		ck_assert(kvb_vllm_xfer_meta_add_region(&m, &r, NULL) == KVB_OK);
	}
	GByteArray *bl = g_byte_array_new();
	ck_assert(kvb_vllm_xfer_meta_encode(KVB_VLLM_XFER_V030, bl, &m, NULL) == KVB_OK);
	kvb_vllm_xfer_meta_clear(&m);
	expect_error(both, 2, ep, bl->data, bl->len, "model.layers.0.self_attn.attn");
	g_byte_array_unref(bl);
	/* and after all that the producer still serves a good request */
	uint32_t pb[2] = {5, 6}, db[2] = {1, 2};
	produce(&P, "xfer-ok", pb, 2);
	expose_all(&D);
	b = good_request(&D, "d-ok", "xfer-ok", db, 2, LAYERS, NULL);
	GPtrArray *r = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
	ck_assert_int_eq(dealer_call(both, 2, ep, b->data, b->len, false, r), 1);
	gsize sz;
	const void *d = g_bytes_get_data(r->pdata[0], &sz);
	kvb_vllm_xfer_resp_t resp;
	ck_assert(kvb_vllm_xfer_resp_decode(d, sz, &resp, NULL) == KVB_OK);
	ck_assert_int_eq(resp.status, KVB_VLLM_XFER_FINISH);
	ck_assert_uint_eq(resp.n_ok_reqs, 1);
	ck_assert_str_eq(resp.ok_reqs[0], "d-ok");
	kvb_vllm_xfer_resp_clear(&resp);
	g_ptr_array_unref(r);
	g_byte_array_unref(b);
	ck_assert_uint_eq(check_request(&D, "xfer-ok", db, 2), 0);
	ck_assert(run_until(both, 2, &P, 1, 10));
	kvb_hw_stats_t st;
	kvb_hw_stats_get(P.be, &st);
	ck_assert_uint_eq(st.vllm_errors, 6);
	side_close(&D);
	side_close(&P);
}
END_TEST

/* A garbage storm from one peer: its first warnings are logged, the rest
 * counted (one line says how many), and a second peer's warnings still get
 * through; every message is still answered. */
typedef struct warn_log {
	GPtrArray *lines;
} warn_log_t;

static void warn_collect(void *arg, const char *line)
{
	warn_log_t *w = arg;
	g_ptr_array_add(w->lines, g_strdup(line));
}

static guint lines_with(warn_log_t *w, const char *needle)
{
	guint n = 0;
	for (guint i = 0; i < w->lines->len; i++)
		n += strstr(g_ptr_array_index(w->lines, i), needle) != NULL;
	return n;
}

START_TEST(test_gen2_warning_storm_rate_limited)
{
	warn_log_t wl = {g_ptr_array_new_with_free_func(g_free)};
	side_t P;
	side_opts_t o = {.vllm = KVB_HW_VLLM_GEN2, .bootstrap_port = free_port(), .engine_id = "prefill-0",
			 .warn_fn = warn_collect, .warn_arg = &wl};
	side_open_opt(&P, KVB_ROLE_PRODUCER, 30, &o);
	side_t *one[1] = {&P};
	const char *worker = kvb_hw_vllm_worker_addr(P.be); /* tcp://127.0.0.1:port */
	enum { STORM = 300 };
	const char garbage[] = "\xc1 not msgpack";
	/* the storm, from 127.0.0.1; then a few from 127.0.0.2 (ZMQ's
	 * "tcp://source;destination") */
	char ep2[128];
	g_snprintf(ep2, sizeof(ep2), "tcp://127.0.0.2:0;%s", worker + 6);
	const char *eps[2] = {worker, ep2};
	int sent[2] = {STORM, 3}, answered[2] = {0, 0};
	void *zc = zmq_ctx_new();
	for (int k = 0; k < 2; k++) {
		void *d = zmq_socket(zc, ZMQ_DEALER);
		int zero = 0, wait_ms = 20;
		zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof(zero));
		zmq_setsockopt(d, ZMQ_RCVTIMEO, &wait_ms, sizeof(wait_ms));
		ck_assert_int_eq(zmq_connect(d, eps[k]), 0);
		for (int i = 0; i < sent[k]; i++)
			ck_assert(zmq_send(d, garbage, sizeof(garbage) - 1, 0) >= 0);
		gint64 end = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
		while (answered[k] < sent[k] && g_get_monotonic_time() < end) {
			step(one, 1);
			char buf[4096];
			while (zmq_recv(d, buf, sizeof(buf), ZMQ_DONTWAIT) >= 0)
				answered[k]++;
		}
		zmq_close(d);
	}
	zmq_ctx_term(zc);
	ck_assert_int_eq(answered[0], STORM); /* every message still gets its ERROR */
	ck_assert_int_eq(answered[1], 3);
	guint from1 = lines_with(&wl, "(127.0.0.1) answered ERROR");
	guint from2 = lines_with(&wl, "(127.0.0.2) answered ERROR");
	ck_assert_msg(from1 >= 1 && from1 <= 5, "%u lines about 127.0.0.1's storm", from1);
	ck_assert_uint_eq(from2, 3); /* the other peer is not drowned */
	kvb_hw_stats_t st;
	kvb_hw_stats_get(P.be, &st);
	ck_assert_uint_eq(st.warnings_suppressed, STORM - from1);
	/* closing says what was held back, with the count */
	side_close(&P);
	char want[64];
	g_snprintf(want, sizeof(want), "%u more warnings like this one", STORM - from1);
	ck_assert_msg(lines_with(&wl, want) == 1, "no line saying \"%s\" (%u lines)", want, wl.lines->len);
	ck_assert_uint_le(wl.lines->len, 12);
	g_ptr_array_free(wl.lines, TRUE);
}
END_TEST

/* allow_peers 127.0.0.1/32: a decoder's message from 127.0.0.2 gets no
 * answer and no session (counted), one from 127.0.0.1 its ERROR; the
 * bootstrap closes a connection from 127.0.0.2 unread; and a consumer so
 * configured refuses to dial a producer address outside the list, at once,
 * saying why. */
START_TEST(test_gen2_allowed_peers)
{
	uint16_t bport = free_port();
	side_t P, D;
	side_opts_t o = {.vllm = KVB_HW_VLLM_GEN2, .bootstrap_port = bport, .engine_id = "prefill-0",
			 .allow_peers = "127.0.0.1/32"};
	side_open_opt(&P, KVB_ROLE_PRODUCER, 30, &o);
	side_opts_t dopt = {.vllm = KVB_HW_VLLM_GEN2, .allow_peers = "127.0.0.1/32"};
	side_open_opt(&D, KVB_ROLE_CONSUMER, 30, &dopt);
	side_t *both[2] = {&P, &D};
	const char *worker = kvb_hw_vllm_worker_addr(P.be);
	char ep2[128];
	g_snprintf(ep2, sizeof(ep2), "tcp://127.0.0.2:0;%s", worker + 6);
	const char *eps[2] = {ep2, worker};
	int answered[2] = {0, 0};
	void *zc = zmq_ctx_new();
	for (int k = 0; k < 2; k++) {
		void *d = zmq_socket(zc, ZMQ_DEALER);
		int zero = 0;
		zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof(zero));
		ck_assert_int_eq(zmq_connect(d, eps[k]), 0);
		ck_assert(zmq_send(d, "\xc1", 1, 0) >= 0);
		gint64 end = g_get_monotonic_time() + 2 * G_USEC_PER_SEC;
		while (!answered[k] && g_get_monotonic_time() < end) {
			step(both, 2);
			char buf[4096];
			answered[k] += zmq_recv(d, buf, sizeof(buf), ZMQ_DONTWAIT) >= 0;
		}
		zmq_close(d);
	}
	zmq_ctx_term(zc);
	ck_assert_msg(!answered[0], "a message from 127.0.0.2 was answered");
	ck_assert_msg(answered[1], "a message from 127.0.0.1 got no answer");
	kvb_hw_stats_t st;
	kvb_hw_stats_get(P.be, &st);
	/* its message dropped, and each of its (re)connections shut down */
	ck_assert_uint_ge(st.peers_refused, 1);
	uint64_t refused = st.peers_refused;

	/* the bootstrap: 127.0.0.2 is closed at accept, unread */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in src = {.sin_family = AF_INET};
	inet_pton(AF_INET, "127.0.0.2", &src.sin_addr);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&src, sizeof(src)), 0);
	struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(bport)};
	inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&dst, sizeof(dst)), 0);
	const char q[] = "GET /query HTTP/1.1\r\nHost: x\r\n\r\n";
	(void)!write(fd, q, sizeof(q) - 1);
	char buf[256];
	ssize_t got = 1;
	gint64 end = g_get_monotonic_time() + 2 * G_USEC_PER_SEC;
	while (g_get_monotonic_time() < end) {
		step(both, 2);
		got = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (got >= 0)
			break;
	}
	close(fd);
	ck_assert_msg(got == 0, "the bootstrap answered 127.0.0.2 (%zd bytes)", got);
	kvb_hw_stats_get(P.be, &st);
	ck_assert_uint_eq(st.peers_refused, refused + 1);

	/* the consumer will not dial outside its list */
	uint32_t db[2] = {1, 2};
	const char *prods[1] = {"vllm2://127.0.0.3:5555"};
	kvb_block_list_t g = {db, 2};
	kvb_pull_params_t pp = {.request_id = "r-out", .transfer_id = "x-out", .producers = prods,
				.n_producers = 1, .producer_tp_size = 1, .groups = &g, .n_groups = 1};
	kvb_err_t err;
	int rc = kvb_consumer_pull(D.c, &pp, &err);
	if (rc == KVB_OK) {
		ck_assert(run_until(both, 2, &D, 1, 5));
		kvb_finished_t *f = &g_array_index(D.fin, kvb_finished_t, 0);
		ck_assert_int_eq(f->state, KVB_CONSUMER_FAILED);
		ck_assert_msg(strstr(f->reason, "not among the allowed peers"), "%s", f->reason);
	} else {
		ck_assert_msg(strstr(err.msg, "not among the allowed peers"), "%s", err.msg);
	}
	char why[256];
	ck_assert(!kvb_hw_peer_allowed(D.be, "127.0.0.3", why, sizeof(why)));
	ck_assert(kvb_hw_peer_allowed(D.be, "127.0.0.1", why, sizeof(why)));
	side_close(&D);
	side_close(&P);
}
END_TEST

/* A decoder TP rank this producer rank does not serve (P tp 2 rank 0, D tp 2
 * rank 1): ERROR, as vLLM's pairing check answers. */
START_TEST(test_gen2_tp_pairing)
{
	uint16_t bport = free_port();
	side_t P, D;
	side_opts_t o = {.vllm = KVB_HW_VLLM_GEN2, .bootstrap_port = bport, .engine_id = "prefill-0",
			 .tp_size = 2, .tp_rank = 0};
	side_open_opt(&P, KVB_ROLE_PRODUCER, 30, &o);
	open_consumer(&D);
	side_t *both[2] = {&P, &D};
	kvb_vllm_xfer_meta_t m;
	ck_assert(kvb_vllm_xfer_meta_init(&m, "127.0.0.1", kvb_hw_rpc_port(D.be), 2, 1, NULL) == KVB_OK);
	uint32_t ids[1] = {1}, one[1] = {1};
	ck_assert(kvb_vllm_xfer_meta_add_request(&m, "d-1", "xfer-1", ids, one, 1, NULL) == KVB_OK);
	GByteArray *b = g_byte_array_new();
	ck_assert(kvb_vllm_xfer_meta_encode(KVB_VLLM_XFER_V020, b, &m, NULL) == KVB_OK);
	kvb_vllm_xfer_meta_clear(&m);
	expect_error(both, 2, kvb_hw_vllm_worker_addr(P.be), b->data, b->len,
		     "This D tp_rank 1 is not paired with P tp_rank 0; expected one of [0].");
	g_byte_array_unref(b);
	side_close(&D);
	side_close(&P);
}
END_TEST

/* A Gen 0 decoder on a Gen 2 port gets trans_error (its framing), and a
 * Gen 2 decoder on a Gen 0 port an ERROR reply it can decode (its framing). */
START_TEST(test_wrong_generation)
{
	uint16_t bport = free_port(), sport = free_port();
	side_t P2, P0, D;
	open_producer(&P2, bport, 30);
	side_open(&P0, KVB_ROLE_PRODUCER, 30, 1, sport);
	open_consumer(&D);
	side_t *all[3] = {&P2, &P0, &D};
	kvb_vllm_meta_t m0;
	uint64_t bases[LAYERS];
	for (int i = 0; i < LAYERS; i++)
		bases[i] = D.regs[i].base;
	ck_assert(kvb_vllm_meta_init(&m0, "127.0.0.1", kvb_hw_rpc_port(D.be), bases, LAYERS, NULL) == KVB_OK);
	uint32_t ids[1] = {1};
	ck_assert(kvb_vllm_meta_add_request(&m0, "cmpl-x-0", ids, 1, NULL) == KVB_OK);
	GByteArray *g0 = g_byte_array_new();
	ck_assert(kvb_vllm_meta_encode(KVB_VLLM_GEN0, g0, &m0, NULL) == KVB_OK);
	kvb_vllm_meta_clear(&m0);
	char ep2[64];
	g_strlcpy(ep2, kvb_hw_vllm_worker_addr(P2.be), sizeof(ep2));
	for (int req = 0; req < 2; req++) {
		GPtrArray *r = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
		ck_assert_int_eq(dealer_call(all, 3, ep2, g0->data, g0->len, req, r), 1);
		gsize sz;
		const char *d = g_bytes_get_data(r->pdata[0], &sz);
		ck_assert_uint_eq(sz, 11);
		ck_assert(memcmp(d, "trans_error", 11) == 0);
		g_ptr_array_unref(r);
	}
	g_byte_array_unref(g0);
	uint32_t db[1] = {1};
	GByteArray *g2 = good_request(&D, "d-1", "xfer-1", db, 1, LAYERS, NULL);
	char ep0[64];
	g_snprintf(ep0, sizeof(ep0), "tcp://127.0.0.1:%u", sport);
	expect_error(all, 3, ep0, g2->data, g2->len, "Gen 0");
	g_byte_array_unref(g2);
	kvb_hw_stats_t s2, s0;
	kvb_hw_stats_get(P2.be, &s2);
	kvb_hw_stats_get(P0.be, &s0);
	ck_assert_uint_eq(s2.vllm_wrong_generation, 2);
	ck_assert_uint_eq(s0.vllm_wrong_generation, 1);
	side_close(&D);
	side_close(&P0);
	side_close(&P2);
}
END_TEST

/* ---- the bootstrap over HTTP -------------------------------------------------- */

static char *http_n(side_t **sides, int n, uint16_t port, const char *raw, size_t len, bool half_close)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	ck_assert(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
	ck_assert(send(fd, raw, len, 0) == (ssize_t)len);
	if (half_close)
		shutdown(fd, SHUT_WR);
	GString *got = g_string_new(NULL);
	for (int k = 0; k < 20000; k++) {
		step(sides, n);
		char buf[4096];
		ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (r > 0)
			g_string_append_len(got, buf, r);
		else if (r == 0)
			break;
	}
	close(fd);
	return g_string_free(got, FALSE);
}

static char *http(side_t **sides, int n, uint16_t port, const char *raw)
{
	return http_n(sides, n, port, raw, strlen(raw), true);
}

START_TEST(test_gen2_bootstrap_http)
{
	uint16_t bport = free_port();
	side_t P;
	open_producer(&P, bport, 30);
	side_t *one[1] = {&P};
	for (int i = 0; i < 50; i++)
		step(one, 1); /* the in-process registration lands */
	char *q = http(one, 1, bport, "GET /query HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
	ck_assert_msg(strstr(q, "HTTP/1.1 200"), "%s", q);
	char want[160];
	g_snprintf(want, sizeof(want), "{\"0\":{\"engine_id\":\"prefill-0\",\"worker_addr\":{\"0\":{\"0\":\"%s\"}}}}",
		   kvb_hw_vllm_worker_addr(P.be));
	ck_assert_msg(strstr(q, want), "%s\nwant %s", q, want);
	g_free(q);
	/* another worker for the same slot: vLLM's 400 */
	const char *body = "{\"engine_id\":\"prefill-0\",\"dp_rank\":0,\"tp_rank\":0,\"pp_rank\":0,"
			   "\"addr\":\"tcp://127.0.0.1:1\"}";
	char req[512];
	g_snprintf(req, sizeof(req), "POST /register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
		   "Content-Length: %zu\r\nConnection: close\r\n\r\n%s", strlen(body), body);
	char *r = http(one, 1, bport, req);
	ck_assert_msg(strstr(r, "HTTP/1.1 400") && strstr(r, "already registered"), "%s", r);
	g_free(r);
	/* a schema error: 422 */
	body = "{\"engine_id\":\"e\",\"dp_rank\":\"zero\"}";
	g_snprintf(req, sizeof(req), "POST /register HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n"
		   "Connection: close\r\n\r\n%s", strlen(body), body);
	r = http(one, 1, bport, req);
	ck_assert_msg(strstr(r, "HTTP/1.1 422") && strstr(r, "\"detail\""), "%s", r);
	g_free(r);
	/* a second engine on dp 1, then both in /query */
	body = "{\"engine_id\":\"prefill-1\",\"dp_rank\":1,\"tp_rank\":0,\"pp_rank\":0,"
	       "\"addr\":\"tcp://127.0.0.1:2\"}";
	g_snprintf(req, sizeof(req), "POST /register HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n"
		   "Connection: close\r\n\r\n%s", strlen(body), body);
	r = http(one, 1, bport, req);
	ck_assert_msg(strstr(r, "HTTP/1.1 200") && strstr(r, "{\"status\":\"ok\"}"), "%s", r);
	g_free(r);
	q = http(one, 1, bport, "GET /query HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
	ck_assert_msg(strstr(q, "\"1\":{\"engine_id\":\"prefill-1\""), "%s", q);
	g_free(q);
	/* unknown path, wrong method, and a ZMQ greeting (a Gen 0 peer) */
	r = http(one, 1, bport, "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
	ck_assert_msg(strstr(r, "HTTP/1.1 404"), "%s", r);
	g_free(r);
	r = http(one, 1, bport, "GET /register HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
	ck_assert_msg(strstr(r, "HTTP/1.1 405"), "%s", r);
	g_free(r);
	/* the greeting alone, the connection left open as a ZMQ peer would:
	 * answered at once, not at the idle timeout */
	static const char zmtp[10] = {'\xff', 0, 0, 0, 0, 0, 0, 0, 1, 0x7f};
	gint64 t0 = g_get_monotonic_time();
	r = http_n(one, 1, bport, zmtp, sizeof(zmtp), false);
	ck_assert_msg(g_get_monotonic_time() - t0 < 5 * G_USEC_PER_SEC, "the greeting hung");
	ck_assert_msg(strstr(r, "HTTP/1.1 400") && strstr(r, "Invalid HTTP request received."), "%s", r);
	g_free(r);
	side_close(&P);
}
END_TEST

Suite *kvb_suite_hw_vllm2(void)
{
	Suite *s = suite_create("hw_vllm2");
	TCase *tc = tcase_create("loopback");
	tcase_add_checked_fixture(tc, hw_side_setup, hw_side_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_gen2_pair);
	tcase_add_test(tc, test_gen2_pull_before_prefill);
	tcase_add_test(tc, test_gen2_timeout_words);
	tcase_add_test(tc, test_gen2_query_failures);
	tcase_add_test(tc, test_gen2_producer_restart);
	tcase_add_test(tc, test_gen2_connection_reuse);
	tcase_add_test(tc, test_gen2_batched_pulls);
	tcase_add_test(tc, test_gen2_heterogeneous_tp);
	tcase_add_test(tc, test_gen2_bad_requests_get_error);
	tcase_add_test(tc, test_gen2_tp_pairing);
	tcase_add_test(tc, test_gen2_warning_storm_rate_limited);
	tcase_add_test(tc, test_gen2_allowed_peers);
	tcase_add_test(tc, test_wrong_generation);
	tcase_add_test(tc, test_gen2_bootstrap_http);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(kvb_suite_hw_vllm2());
	srunner_set_tap(sr, "-");
	srunner_run_all(sr, CK_ENV);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
