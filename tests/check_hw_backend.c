/*
 * The hw backend over real sockets on loopback: connectors in one process
 * sharing one GMainContext, every byte verified, and the wire protocols fed
 * what they must refuse.  (Two processes, network namespaces and the real
 * Mooncake and vLLM peers are in tests/test_hw_*.sh.)
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <check.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <zmq.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/hw.h>

#include "../src/tools/kvb_pattern.h"
#include "kvb_mc_wire.h"
#include "transport/kvb_hw_mem.h"
#include "kvb_vllm_wire.h"
#include "hw_side.h"
#include "suites.h"

/* ---- end to end ------------------------------------------------------------ */

static void transfer_case(uint32_t nics, const char *scheme, uint16_t side_port)
{
	side_t P, D;
	side_open(&P, KVB_ROLE_PRODUCER, 30, nics, side_port);
	side_open(&D, KVB_ROLE_CONSUMER, 30, nics, 0);
	side_t *both[2] = {&P, &D};
	uint32_t pb[24], db[24];
	for (uint32_t i = 0; i < 24; i++) {
		pb[i] = 3 + i * 2;       /* scattered on the producer */
		db[i] = 40 - i;          /* reversed on the consumer */
	}
	char addr[128];
	if (side_port)
		g_snprintf(addr, sizeof(addr), "%s127.0.0.1:%u", scheme, side_port);
	else
		g_snprintf(addr, sizeof(addr), "%s%s", scheme, kvb_hw_segment_name(P.be));
	produce(&P, "req-1", pb, 24);
	pull(&D, addr, "req-1", db, 24);
	ck_assert_msg(run_until(both, 2, &D, 1, 20), "no answer");
	kvb_finished_t *f = &g_array_index(D.fin, kvb_finished_t, 0);
	ck_assert_msg(f->state == KVB_CONSUMER_DONE, "consumer: %s (%s)", kvb_status_name(f->status), f->reason);
	ck_assert_uint_eq(check_request(&D, "req-1", db, 24), 0);
	ck_assert(run_until(both, 2, &P, 1, 10));
	ck_assert_int_eq(g_array_index(P.fin, kvb_finished_t, 0).state, KVB_PRODUCER_SENT);
	kvb_hw_stats_t st;
	kvb_hw_stats_get(P.be, &st);
	ck_assert_uint_eq(st.tcp_bytes_posted, (uint64_t)24 * LAYERS * BLOCK_BYTES);
	for (uint32_t i = 0; i < nics; i++)
		ck_assert_msg(st.nic_bytes[i] > 0, "NIC %u carried nothing", i);
	side_close(&D);
	side_close(&P);
}

/* GPU memory (emulated: PROT_NONE device pages, so a transport touching
 * them directly would fault) through the staging path on both sides: the
 * producer's posts go device -> bounce chunk -> socket, the consumer's data
 * server socket -> stage -> device.  A small pool (2 chunks of 32 KiB) makes
 * ops wait for chunks and split into pieces. */
static void gpu_case_pool(bool prod_gpu, bool cons_gpu, uint32_t nics, uint64_t chunk, uint64_t pool)
{
	side_t P, D;
	side_open_mem(&P, KVB_ROLE_PRODUCER, 30, nics, 0, prod_gpu, chunk, pool);
	side_open_mem(&D, KVB_ROLE_CONSUMER, 30, nics, 0, cons_gpu, chunk, pool);
	side_t *both[2] = {&P, &D};
	kvb_hw_gpu_path_t paths[KVB_HW_MAX_NICS];
	uint32_t np = 0;
	ck_assert_int_eq(kvb_hw_mr_paths(P.be, P.mem, paths, KVB_HW_MAX_NICS, &np), KVB_OK);
	ck_assert_uint_eq(np, nics);
	for (uint32_t i = 0; i < np; i++)
		ck_assert_int_eq(paths[i], prod_gpu ? KVB_HW_PATH_STAGING : KVB_HW_PATH_HOST);
	uint32_t pb[40], db[40];
	for (uint32_t i = 0; i < 40; i++) {
		pb[i] = 1 + i;           /* contiguous on the producer: long ops, many pieces */
		db[i] = 63 - i;          /* reversed on the consumer */
	}
	const char *ids[2] = {"gpu-1", "gpu-2"};
	for (int r = 0; r < 2; r++) {
		produce(&P, ids[r], pb, 40);
		pull(&D, kvb_hw_segment_name(P.be), ids[r], db, 40);
		ck_assert_msg(run_until(both, 2, &D, (guint)r + 1, 20), "no answer");
		kvb_finished_t *f = &g_array_index(D.fin, kvb_finished_t, r);
		ck_assert_msg(f->state == KVB_CONSUMER_DONE, "consumer: %s (%s)", kvb_status_name(f->status),
			      f->reason);
		ck_assert_uint_eq(check_request(&D, ids[r], db, 40), 0);
		ck_assert(run_until(both, 2, &P, (guint)r + 1, 10));
	}
	/* untouched blocks kept their bytes */
	for (uint32_t l = 0; l < LAYERS; l++)
		ck_assert_uint_eq(at(&D, D.regs[l].base)[0], 0xEE);
	kvb_hw_stats_t ps, ds;
	kvb_hw_stats_get(P.be, &ps);
	kvb_hw_stats_get(D.be, &ds);
	uint64_t bytes = (uint64_t)2 * 40 * LAYERS * BLOCK_BYTES;
	ck_assert_uint_eq(ps.tcp_bytes_posted, bytes);
	ck_assert_uint_eq(ps.gpu_staged_bytes, prod_gpu ? bytes : 0);
	ck_assert_uint_eq(ds.gpu_staged_bytes, cons_gpu ? bytes : 0);
	if (prod_gpu) /* every op of up to 40 blocks went in pieces of at most a chunk */
		ck_assert_uint_ge(ps.gpu_copies, bytes / chunk);
	for (uint32_t i = 0; i < nics; i++)
		ck_assert_msg(ps.nic_bytes[i] > 0, "NIC %u carried nothing", i);
	side_close(&D);
	side_close(&P);
}

static void gpu_case(bool prod_gpu, bool cons_gpu, uint32_t nics)
{
	gpu_case_pool(prod_gpu, cons_gpu, nics, 32768, 65536);
}

START_TEST(test_gpu_staging_both_sides)
{
	gpu_case(true, true, 2);
}
END_TEST

/* Pieces of a 128 KiB chunk take two 64 KiB units of a 4-unit pool, single
 * blocks one: long and short pieces share the pool. */
START_TEST(test_gpu_staging_pool_units)
{
	gpu_case_pool(true, true, 1, 131072, 262144);
}
END_TEST

START_TEST(test_gpu_staging_producer_only)
{
	gpu_case(true, false, 1);
}
END_TEST

START_TEST(test_gpu_staging_consumer_only)
{
	gpu_case(false, true, 1);
}
END_TEST

/* Memory registered as GPU memory that no provider owns is refused with a
 * reason, and so is an unknown kind. */
START_TEST(test_gpu_registration_refusals)
{
	kvb_hw_params_t p;
	kvb_hw_params_default(&p);
	p.bind_host = "127.0.0.1";
	p.context = hw_side_ctx;
	kvb_backend_t *be;
	kvb_err_t err;
	ck_assert_msg(kvb_hw_open(&p, &be, &err) == KVB_OK, "open: %s", err.msg);
	static uint8_t host[65536];
	void *mr;
	kvb_rkey_t rk;
	kvb_mem_attr_t a = {KVB_MEM_CUDA, 0};
	int rc = be->ops->mr_reg(be, host, sizeof(host), &a, &mr, &rk);
	ck_assert_int_ne(rc, KVB_OK);
	const char *why = be->ops->last_error(be);
#ifdef KVB_HAVE_CUDA
	ck_assert_msg(strstr(why, "CUDA") || strstr(why, "device memory"), "%s", why);
#else
	ck_assert_msg(strstr(why, "--with-cuda"), "%s", why);
#endif
	kvb_mem_attr_t bad = {(kvb_mem_kind_t)7, 0};
	ck_assert_int_eq(be->ops->mr_reg(be, host, sizeof(host), &bad, &mr, &rk), KVB_ERR_INVALID);
	/* staging parameters out of range */
	kvb_hw_params_t q = p;
	q.staging_chunk = 100;
	kvb_backend_t *be2;
	ck_assert_int_eq(kvb_hw_open(&q, &be2, &err), KVB_ERR_CONFIG);
	ck_assert_msg(strstr(err.msg, "staging"), "%s", err.msg);
	/* emulated GPU memory registers (staging on the one TCP NIC) and may be
	 * left registered at close: the backend releases it */
	void *dev = kvb_hw_emu_gpu_alloc(65536);
	ck_assert_int_eq(be->ops->mr_reg(be, dev, 65536, &a, &mr, &rk), KVB_OK);
	kvb_hw_gpu_path_t path;
	uint32_t np;
	ck_assert_int_eq(kvb_hw_mr_paths(be, dev, &path, 1, &np), KVB_OK);
	ck_assert_int_eq(path, KVB_HW_PATH_STAGING);
	ck_assert_str_eq(kvb_hw_gpu_path_name(path), "staging");
	ck_assert_int_eq(kvb_hw_mr_paths(be, host, &path, 1, &np), KVB_ERR_NOT_FOUND);
	kvb_backend_close(be);
	kvb_hw_emu_gpu_free(dev);
}
END_TEST

START_TEST(test_kvb_transfer)
{
	transfer_case(1, "kvb://", 0);
}
END_TEST

START_TEST(test_kvb_transfer_two_nics)
{
	transfer_case(2, "", 0);
}
END_TEST

START_TEST(test_vllm_gen0_transfer)
{
	/* the consumer speaks vLLM's side channel; the producer's ROUTER turns
	 * it into a pull and writes through the consumer's Mooncake transport */
	transfer_case(1, "vllm://", 39000 + (uint16_t)(getpid() % 1000));
}
END_TEST

/* A Gen 0 producer that dies while the decoder waits for its reply is
 * noticed within seconds (the DEALER's monitor sees the connection close),
 * not at the lease + 60 s; a producer that is not there at all fails the
 * pull after connect_timeout (2 s here). */
START_TEST(test_vllm_gen0_producer_dies_noticed)
{
	side_t D;
	side_open(&D, KVB_ROLE_CONSUMER, 120, 1, 0);
	side_t *one[1] = {&D};
	/* the producer: a bare ROUTER that takes the message and then dies
	 * without a word, as a SIGKILLed vLLM would */
	void *zc = zmq_ctx_new();
	void *router = zmq_socket(zc, ZMQ_ROUTER);
	int zero = 0;
	zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof(zero));
	/* a free port the kernel picks (a fixed one in the ephemeral range
	 * clashed now and then with a socket of the same run) */
	ck_assert_int_eq(zmq_bind(router, "tcp://127.0.0.1:*"), 0);
	char ep[64];
	size_t eplen = sizeof(ep);
	ck_assert_int_eq(zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, ep, &eplen), 0);
	uint16_t port = (uint16_t)atoi(strrchr(ep, ':') + 1);
	uint32_t b[4] = {1, 2, 3, 4};
	char addr[64];
	g_snprintf(addr, sizeof(addr), "vllm://127.0.0.1:%u", port);
	pull(&D, addr, "dies-1", b, 4);
	bool got = false;
	for (int i = 0; i < 2000 && !got; i++) {
		step(one, 1);
		char buf[8192];
		got = zmq_recv(router, buf, sizeof(buf), ZMQ_DONTWAIT) >= 0;
	}
	ck_assert_msg(got, "the decoder's message never reached the producer");
	for (int i = 0; i < 50; i++)
		step(one, 1);
	ck_assert_uint_eq(D.fin->len, 0);
	gint64 t0 = g_get_monotonic_time();
	zmq_close(router);
	zmq_ctx_term(zc);
	ck_assert_msg(run_until(one, 1, &D, 1, 10), "the consumer did not notice the dead producer in 10 s");
	double took = (double)(g_get_monotonic_time() - t0) / 1e6;
	kvb_finished_t *f = &g_array_index(D.fin, kvb_finished_t, 0);
	ck_assert_int_eq(f->state, KVB_CONSUMER_FAILED);
	ck_assert_msg(strstr(f->reason, "closed the side channel"), "%s", f->reason);
	ck_assert_msg(took < 5, "noticed after %.1f s", took);

	/* nobody listening: the pull fails after connect_timeout */
	t0 = g_get_monotonic_time();
	pull(&D, addr, "nobody-1", b, 4);
	ck_assert_msg(run_until(one, 1, &D, 2, 10), "no answer for a producer that is not there");
	took = (double)(g_get_monotonic_time() - t0) / 1e6;
	f = &g_array_index(D.fin, kvb_finished_t, 1);
	ck_assert_int_eq(f->state, KVB_CONSUMER_FAILED);
	ck_assert_msg(strstr(f->reason, "no connection"), "%s", f->reason);
	ck_assert_msg(took >= 1.5 && took < 5, "failed after %.1f s", took);
	side_close(&D);
}
END_TEST

START_TEST(test_lease_expiry_refuses_late_pull)
{
	side_t P, D;
	side_open(&P, KVB_ROLE_PRODUCER, 0.3, 1, 0);
	side_open(&D, KVB_ROLE_CONSUMER, 30, 1, 0);
	side_t *both[2] = {&P, &D};
	uint32_t b[4] = {1, 2, 3, 4};
	produce(&P, "late", b, 4);
	ck_assert(run_until(both, 2, &P, 1, 5));
	ck_assert_int_eq(g_array_index(P.fin, kvb_finished_t, 0).state, KVB_PRODUCER_EXPIRED);
	pull(&D, kvb_hw_segment_name(P.be), "late", b, 4);
	ck_assert(run_until(both, 2, &D, 1, 10));
	kvb_finished_t *f = &g_array_index(D.fin, kvb_finished_t, 0);
	ck_assert_int_eq(f->state, KVB_CONSUMER_FAILED);
	ck_assert_int_eq(f->status, KVB_ERR_EXPIRED);
	/* nothing was written into the consumer's blocks */
	for (uint32_t r = 0; r < LAYERS; r++)
		for (uint32_t k = 0; k < 4; k++)
			ck_assert_uint_eq(((uint8_t *)(uintptr_t)(D.regs[r].base + b[k] * STRIDE))[0], 0xEE);
	side_close(&D);
	side_close(&P);
}
END_TEST

static void consumer_dies_case(bool gpu)
{
	side_t P, D;
	/* GPU: both sides staged, a 2-chunk pool, so pieces wait for chunks and
	 * copies are in flight when the consumer vanishes */
	side_open_mem(&P, KVB_ROLE_PRODUCER, 1.0, 1, 0, gpu, gpu ? 32768 : 0, 65536);
	side_open_mem(&D, KVB_ROLE_CONSUMER, 30, 1, 0, gpu, gpu ? 32768 : 0, 65536);
	side_t *both[2] = {&P, &D};
	uint32_t b[BLOCKS / 2];
	for (uint32_t i = 0; i < BLOCKS / 2; i++)
		b[i] = i;
	produce(&P, "dies", b, BLOCKS / 2);
	pull(&D, kvb_hw_segment_name(P.be), "dies", b, BLOCKS / 2);
	/* let the transfer start, then the consumer vanishes as a killed process would */
	for (int i = 0; i < 50; i++)
		step(both, 2);
	kvb_connector_free(D.c);
	D.c = NULL;
	kvb_backend_close(D.be);
	D.be = NULL;
	side_t *one[1] = {&P};
	ck_assert(run_until(one, 1, &P, 1, 10));
	kvb_finished_t *f = &g_array_index(P.fin, kvb_finished_t, 0);
	ck_assert_msg(f->state == KVB_PRODUCER_EXPIRED || f->state == KVB_PRODUCER_SENT,
		      "producer state %d", f->state);
	/* and it still serves the next consumer */
	side_t D2;
	side_open_mem(&D2, KVB_ROLE_CONSUMER, 30, 1, 0, gpu, gpu ? 32768 : 0, 65536);
	side_t *two[2] = {&P, &D2};
	produce(&P, "next", b, 8);
	pull(&D2, kvb_hw_segment_name(P.be), "next", b, 8);
	ck_assert(run_until(two, 2, &D2, 1, 10));
	ck_assert_int_eq(g_array_index(D2.fin, kvb_finished_t, 0).state, KVB_CONSUMER_DONE);
	ck_assert_uint_eq(check_request(&D2, "next", b, 8), 0);
	ck_assert(run_until(two, 2, &P, 2, 5));
	side_close(&D2);
	side_close(&D);
	side_close(&P);
}

START_TEST(test_consumer_dies_producer_frees_at_lease)
{
	consumer_dies_case(false);
}
END_TEST

START_TEST(test_gpu_consumer_dies_mid_staging)
{
	consumer_dies_case(true);
}
END_TEST

/* ---- bad input --------------------------------------------------------------- */

/* A connection to 127.0.0.1:port from src (NULL: 127.0.0.1). */
static int raw_connect_from(const char *src, uint16_t port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (src) {
		struct sockaddr_in s = {.sin_family = AF_INET};
		inet_pton(AF_INET, src, &s.sin_addr);
		ck_assert(bind(fd, (struct sockaddr *)&s, sizeof(s)) == 0);
	}
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	ck_assert(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
	return fd;
}

static int raw_connect(uint16_t port)
{
	return raw_connect_from(NULL, port);
}

/* Pump the context while waiting for fd to have data or close. */
static ssize_t raw_read(side_t **sides, int n, int fd, void *buf, size_t len, double max_s)
{
	gint64 end = g_get_monotonic_time() + (gint64)(max_s * 1e6);
	size_t got = 0;
	while (g_get_monotonic_time() < end && got < len) {
		step(sides, n);
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 1) == 1) {
			ssize_t r = recv(fd, (uint8_t *)buf + got, len - got, 0);
			if (r <= 0)
				return got ? (ssize_t)got : r;
			got += (size_t)r;
		}
	}
	return (ssize_t)got;
}

/* A probe must still be answered: the listener kept serving. */
static void assert_probe(side_t **sides, int n, uint16_t port)
{
	int fd = raw_connect(port);
	GByteArray *f = g_byte_array_new();
	kvb_mc_frame_encode(f, KVB_MC_PROBE, "{}", 2);
	ck_assert(send(fd, f->data, f->len, 0) == (ssize_t)f->len);
	g_byte_array_unref(f);
	uint8_t buf[64];
	ssize_t r = raw_read(sides, n, fd, buf, 8 + 1 + 20, 5);
	ck_assert_int_eq(r, 29);
	ck_assert_int_eq(buf[8], KVB_MC_PROBE);
	ck_assert(memcmp(buf + 9, "{\"status\":\"success\"}", 20) == 0);
	close(fd);
}

START_TEST(test_handshake_bad_frames)
{
	side_t P;
	side_open(&P, KVB_ROLE_PRODUCER, 30, 1, 0);
	side_t *one[1] = {&P};
	uint16_t port = kvb_hw_rpc_port(P.be);
	static const uint8_t zero_len[8] = {0};
	static const uint8_t huge_len[8] = {0, 0, 0, 0x40, 0, 0, 0, 0}; /* 1 GiB */
	uint8_t bad_type[8 + 3] = {3, 0, 0, 0, 0, 0, 0, 0, 0x42, '{', '}'};
	uint8_t bad_json[8 + 6] = {6, 0, 0, 0, 0, 0, 0, 0, KVB_MC_NOTIFY, '{', '"', 'n', 'a', ':'};
	uint8_t truncated[8 + 4] = {100, 0, 0, 0, 0, 0, 0, 0, KVB_MC_METADATA, '{', '}', ' '};
	struct { const uint8_t *b; size_t n; bool expect_close; } cases[] = {
		{zero_len, 8, true}, {huge_len, 8, true}, {bad_type, sizeof(bad_type), true},
		{bad_json, sizeof(bad_json), true}, {truncated, sizeof(truncated), false},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
		int fd = raw_connect(port);
		ck_assert(send(fd, cases[i].b, cases[i].n, 0) == (ssize_t)cases[i].n);
		if (!cases[i].expect_close)
			shutdown(fd, SHUT_WR); /* a peer that stops mid-frame */
		uint8_t buf[16];
		ssize_t r = raw_read(one, 1, fd, buf, sizeof(buf), 7);
		ck_assert_msg(r <= 0, "case %zu: got a reply to a bad frame", i);
		close(fd);
		assert_probe(one, 1, port);
	}
	kvb_hw_stats_t st;
	kvb_hw_stats_get(P.be, &st);
	ck_assert_uint_ge(st.handshake_errors, 4);
	side_close(&P);
}
END_TEST

START_TEST(test_tcp_transport_refuses_out_of_range)
{
	side_t P;
	side_open(&P, KVB_ROLE_PRODUCER, 30, 1, 0);
	side_t *one[1] = {&P};
	uint16_t port = kvb_hw_data_port(P.be);
	uint8_t before[64];
	memcpy(before, P.mem, sizeof(before));
	/* v2 write just past the registered memory: status 1, connection closed */
	int fd = raw_connect(port);
	uint8_t hdr[KVB_MC_TCP_HEADER_LEN];
	kvb_mc_tcp_header_t h = {.size = 64, .addr = (uint64_t)(uintptr_t)P.mem + P.len - 32,
				 .opcode = KVB_MC_TCP_OP_WRITE, .v2 = true};
	kvb_mc_tcp_header_encode(hdr, &h);
	uint8_t payload[64];
	memset(payload, 0x11, sizeof(payload));
	send(fd, hdr, sizeof(hdr), 0);
	send(fd, payload, sizeof(payload), 0);
	uint8_t st[8];
	ck_assert_int_eq(raw_read(one, 1, fd, st, 8, 5), 8);
	uint32_t code;
	ck_assert(kvb_mc_tcp_status_decode(st, &code, NULL) == KVB_OK);
	ck_assert_uint_eq(code, KVB_MC_TCP_STATUS_REJECTED);
	uint8_t more;
	ck_assert_int_le(raw_read(one, 1, fd, &more, 1, 2), 0);
	close(fd);
	/* garbage header (opcode 7): closed without a status */
	fd = raw_connect(port);
	memset(hdr, 0, sizeof(hdr));
	hdr[0] = 8;
	hdr[16] = 7;
	send(fd, hdr, sizeof(hdr), 0);
	ck_assert_int_le(raw_read(one, 1, fd, st, 8, 5), 0);
	close(fd);
	/* a read of memory that was never registered */
	fd = raw_connect(port);
	h = (kvb_mc_tcp_header_t){.size = 16, .addr = 4096, .opcode = KVB_MC_TCP_OP_READ, .v2 = true};
	kvb_mc_tcp_header_encode(hdr, &h);
	send(fd, hdr, sizeof(hdr), 0);
	ck_assert_int_eq(raw_read(one, 1, fd, st, 8, 5), 8);
	ck_assert(kvb_mc_tcp_status_decode(st, &code, NULL) == KVB_OK);
	ck_assert_uint_eq(code, KVB_MC_TCP_STATUS_REJECTED);
	close(fd);
	/* registered memory, but no transfer in progress opened it: a write and
	 * a read are refused, nothing is touched or sent */
	for (int op = 0; op < 2; op++) {
		fd = raw_connect(port);
		h = (kvb_mc_tcp_header_t){.size = 64, .addr = (uint64_t)(uintptr_t)P.mem,
					  .opcode = op ? KVB_MC_TCP_OP_READ : KVB_MC_TCP_OP_WRITE, .v2 = true};
		kvb_mc_tcp_header_encode(hdr, &h);
		send(fd, hdr, sizeof(hdr), 0);
		if (!op)
			send(fd, payload, sizeof(payload), 0);
		ck_assert_int_eq(raw_read(one, 1, fd, st, 8, 5), 8);
		ck_assert(kvb_mc_tcp_status_decode(st, &code, NULL) == KVB_OK);
		ck_assert_uint_eq(code, KVB_MC_TCP_STATUS_REJECTED);
		ck_assert_int_le(raw_read(one, 1, fd, &more, 1, 2), 0); /* no byte of KV follows */
		close(fd);
	}
	ck_assert(memcmp(P.mem, before, 64) == 0);
	/* exposed on purpose (a benchmark target): a valid v2 write lands */
	ck_assert_int_eq(kvb_hw_expose(P.be, P.mem, 64), KVB_OK);
	ck_assert_int_eq(kvb_hw_expose(P.be, P.mem + P.len - 8, 64), KVB_ERR_RANGE);
	fd = raw_connect(port);
	h = (kvb_mc_tcp_header_t){.size = 64, .addr = (uint64_t)(uintptr_t)P.mem, .opcode = KVB_MC_TCP_OP_WRITE,
				  .v2 = true};
	kvb_mc_tcp_header_encode(hdr, &h);
	send(fd, hdr, sizeof(hdr), 0);
	send(fd, payload, sizeof(payload), 0);
	ck_assert_int_eq(raw_read(one, 1, fd, st, 8, 5), 8);
	ck_assert(kvb_mc_tcp_status_decode(st, &code, NULL) == KVB_OK);
	ck_assert_uint_eq(code, KVB_MC_TCP_STATUS_OK);
	ck_assert(memcmp(P.mem, payload, 64) == 0);
	/* the end of memory was never touched */
	ck_assert_uint_eq(P.mem[P.len - 1], 0xEE);
	close(fd);
	kvb_hw_stats_t s;
	kvb_hw_stats_get(P.be, &s);
	ck_assert_uint_eq(s.tcp_requests_rejected, 5);
	ck_assert_uint_eq(s.window_refused, 2);
	ck_assert_uint_eq(s.tcp_requests_served, 1);
	side_close(&P);
}
END_TEST

/* One v2 WRITE of len bytes of 0x5A at addr to a data port; the status. */
static uint32_t raw_write_from(side_t **sides, int n, const char *src, uint16_t port, uint64_t addr,
			       uint64_t len)
{
	int fd = raw_connect_from(src, port);
	uint8_t hdr[KVB_MC_TCP_HEADER_LEN];
	kvb_mc_tcp_header_t h = {.size = len, .addr = addr, .opcode = KVB_MC_TCP_OP_WRITE, .v2 = true};
	kvb_mc_tcp_header_encode(hdr, &h);
	uint8_t *payload = g_malloc(len);
	memset(payload, 0x5A, len);
	send(fd, hdr, sizeof(hdr), 0);
	send(fd, payload, len, 0);
	g_free(payload);
	uint8_t st[8];
	uint32_t code = 99;
	if (raw_read(sides, n, fd, st, 8, 5) == 8)
		kvb_mc_tcp_status_decode(st, &code, NULL);
	close(fd);
	return code;
}

static uint32_t raw_write(side_t **sides, int n, uint16_t port, uint64_t addr, uint64_t len)
{
	return raw_write_from(sides, n, NULL, port, addr, len);
}

/* A consumer's data port takes writes only into the blocks of a pull it has
 * in progress, from the peer the pull went to: while its pull waits for the
 * prefill, a write into one of its blocks from the producer's address
 * (127.0.0.1) lands, the same write from another allowed address
 * (127.0.0.2) is refused, and one into another block of the same pool is
 * refused; once the pull is done, its blocks are closed again. */
START_TEST(test_data_windows)
{
	side_t P, D;
	side_open(&P, KVB_ROLE_PRODUCER, 30, 1, 0);
	side_open(&D, KVB_ROLE_CONSUMER, 30, 1, 0);
	side_t *both[2] = {&P, &D};
	uint32_t pb[2] = {3, 4}, db[2] = {10, 11};
	pull(&D, kvb_hw_segment_name(P.be), "win-1", db, 2);
	for (int i = 0; i < 100; i++)
		step(both, 2);
	ck_assert_uint_eq(D.fin->len, 0);
	uint16_t port = kvb_hw_data_port(D.be);
	uint64_t in = D.regs[1].base + 11 * STRIDE, out = D.regs[1].base + 20 * STRIDE;
	memset(at(&D, in), 0xEE, 256);
	ck_assert_uint_eq(raw_write_from(both, 2, "127.0.0.2", port, in, 256), KVB_MC_TCP_STATUS_REJECTED);
	ck_assert_uint_eq(at(&D, in)[0], 0xEE);
	ck_assert_uint_eq(raw_write(both, 2, port, in, 256), KVB_MC_TCP_STATUS_OK);
	ck_assert_uint_eq(at(&D, in)[0], 0x5A);
	ck_assert_uint_eq(raw_write(both, 2, port, out, 256), KVB_MC_TCP_STATUS_REJECTED);
	ck_assert_uint_eq(at(&D, out)[0], 0xEE);
	/* past the block's meaningful bytes (into its padding) is outside too */
	ck_assert_uint_eq(raw_write(both, 2, port, in + BLOCK_BYTES - 16, 64), KVB_MC_TCP_STATUS_REJECTED);
	produce(&P, "win-1", pb, 2);
	ck_assert(run_until(both, 2, &D, 1, 10));
	ck_assert_int_eq(g_array_index(D.fin, kvb_finished_t, 0).state, KVB_CONSUMER_DONE);
	ck_assert_uint_eq(check_request(&D, "win-1", db, 2), 0); /* the producer's bytes, not ours */
	ck_assert_uint_eq(raw_write(both, 2, port, in, 256), KVB_MC_TCP_STATUS_REJECTED);
	ck_assert_uint_eq(check_request(&D, "win-1", db, 2), 0); /* untouched by the late write */
	kvb_hw_stats_t st;
	kvb_hw_stats_get(D.be, &st);
	ck_assert_uint_eq(st.window_refused, 4);
	ck_assert(run_until(both, 2, &P, 1, 10));
	side_close(&D);
	side_close(&P);
}
END_TEST

/* The producer address a vLLM pull's window is bound to, from its endpoint:
 * numeric addresses only (a name binds nothing: any allowed sender). */
START_TEST(test_window_peer_of)
{
	char out[64];
	static const struct {
		const char *ep, *want;
	} t[] = {
		{"tcp://10.0.0.4:5557", "10.0.0.4"}, {"tcp://[fd00::1]:5557", "fd00::1"},
		{"10.0.0.4:8998", "10.0.0.4"},       {"tcp://[::ffff:10.0.0.4]:1", "10.0.0.4"},
		{"tcp://prefill-0:5557", ""},        {"tcp://", ""},
		{"", ""},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(t); i++) {
		hw_window_peer_of(t[i].ep, out, sizeof(out));
		ck_assert_msg(!strcmp(out, t[i].want), "%s: '%s', want '%s'", t[i].ep, out, t[i].want);
	}
}
END_TEST

static char *secret_file(const char *dir, const char *name, const char *text)
{
	char *path = g_build_filename(dir, name, NULL);
	ck_assert(g_file_set_contents(path, text, -1, NULL));
	return path;
}

/* A consumer's pull over kvbridge's stream; its finished record. */
static kvb_finished_t stream_pull(side_t *P, side_t *D, const char *id)
{
	side_t *both[2] = {P, D};
	uint32_t b[2] = {5, 6};
	guint before = D->fin->len;
	produce(P, id, b, 2);
	pull(D, kvb_hw_segment_name(P->be), id, b, 2);
	ck_assert_msg(run_until(both, 2, D, before + 1, 10), "%s: no answer", id);
	return g_array_index(D->fin, kvb_finished_t, before);
}

/* Shared secret on kvbridge's control stream: both holding it, the pull
 * works; a wrong secret, none, or a listener without one are refused with
 * the reason, counted; a secret under 32 bytes is refused at open. */
START_TEST(test_stream_shared_secret)
{
	char *dir = g_dir_make_tmp("kvb-secret-XXXXXX", NULL);
	char *a = secret_file(dir, "a", "0123456789abcdef0123456789abcdef-secret-A\n");
	char *b = secret_file(dir, "b", "0123456789abcdef0123456789abcdef-secret-B\n");
	char *shrt = secret_file(dir, "s", "too short\n");
	side_opts_t oa = {.secret_file = a}, ob = {.secret_file = b}, none = {0};
	side_t P, D;
	side_open_opt(&P, KVB_ROLE_PRODUCER, 2, &oa);
	side_open_opt(&D, KVB_ROLE_CONSUMER, 30, &oa);
	kvb_finished_t f = stream_pull(&P, &D, "s-ok");
	ck_assert_msg(f.state == KVB_CONSUMER_DONE, "same secret: %s", f.reason);
	ck_assert_uint_eq(check_request(&D, "s-ok", (uint32_t[]){5, 6}, 2), 0);
	side_t *both[2] = {&P, &D};
	ck_assert(run_until(both, 2, &P, 1, 10));

	const struct {
		side_opts_t *d;
		const char *why;
	} bad[] = {
		{&ob, "does not hold this worker's shared secret"},
		{&none, "has none of"},
	};
	for (size_t i = 0; i < 2; i++) {
		side_t D2;
		side_open_opt(&D2, KVB_ROLE_CONSUMER, 30, bad[i].d);
		char id[16];
		g_snprintf(id, sizeof(id), "s-bad%zu", i);
		f = stream_pull(&P, &D2, id);
		ck_assert_int_eq(f.state, KVB_CONSUMER_FAILED);
		ck_assert_msg(strstr(f.reason, bad[i].why) || strstr(f.reason, "shared secret"), "%s", f.reason);
		ck_assert_uint_eq(D2.fin->len, 1);
		side_close(&D2);
		/* the producer's blocks for it go at its 2 s lease */
		side_t *one[1] = {&P};
		ck_assert(run_until(one, 1, &P, 2 + (guint)i, 10));
	}
	kvb_hw_stats_t st;
	kvb_hw_stats_get(P.be, &st);
	ck_assert_uint_ge(st.auth_failures, 1);
	ck_assert_uint_eq(st.streams_opened, 1);
	/* a hello and a frame in one write, without the proof: refused as soon
	 * as it arrives, and counted, not dropped at the 5 s connect timeout */
	kvb_mc_segment_t seg;
	memset(&seg, 0, sizeof(seg));
	g_strlcpy(seg.name, "127.0.0.1:1", sizeof(seg.name));
	g_strlcpy(seg.protocol, "tcp", sizeof(seg.protocol));
	g_strlcpy(seg.tcp_data_host, "127.0.0.1", sizeof(seg.tcp_data_host));
	seg.tcp_data_port = 1;
	seg.tcp_proto_version = 2;
	GString *js = g_string_new(NULL);
	ck_assert_int_eq(kvb_mc_segment_to_json(&seg, js, NULL), KVB_OK);
	GByteArray *wire = g_byte_array_new();
	kvb_mc_frame_encode(wire, KVB_MC_KVB_HELLO, js->str, js->len);
	kvb_mc_frame_encode(wire, KVB_MC_KVB_FRAME, "x", 1);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(kvb_hw_rpc_port(P.be))};
	inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&dst, sizeof(dst)), 0);
	ck_assert_int_eq(write(fd, wire->data, wire->len), (ssize_t)wire->len);
	uint64_t failures = st.auth_failures;
	gint64 t0 = g_get_monotonic_time();
	while (st.auth_failures == failures && g_get_monotonic_time() - t0 < 4 * G_USEC_PER_SEC) {
		step(both, 2);
		kvb_hw_stats_get(P.be, &st);
	}
	ck_assert_uint_eq(st.auth_failures, failures + 1);
	ck_assert_msg(g_get_monotonic_time() - t0 < 2 * G_USEC_PER_SEC, "refused only after %.1f s",
		      (double)(g_get_monotonic_time() - t0) / 1e6);
	close(fd);
	g_byte_array_unref(wire);
	g_string_free(js, TRUE);
	/* a listener without a secret: the connector that has one refuses it */
	side_t P0, D3;
	side_open_opt(&P0, KVB_ROLE_PRODUCER, 2, &none);
	side_open_opt(&D3, KVB_ROLE_CONSUMER, 30, &oa);
	f = stream_pull(&P0, &D3, "s-nolisten");
	ck_assert_int_eq(f.state, KVB_CONSUMER_FAILED);
	ck_assert_msg(strstr(f.reason, "did not authenticate"), "%s", f.reason);
	side_close(&D3);
	side_t *one0[1] = {&P0};
	ck_assert(run_until(one0, 1, &P0, 1, 10));
	side_close(&P0);
	/* too short a secret: the instance does not open */
	kvb_hw_params_t p;
	kvb_hw_params_default(&p);
	p.secret_file = shrt;
	kvb_backend_t *be;
	kvb_err_t err;
	ck_assert_int_eq(kvb_hw_open(&p, &be, &err), KVB_ERR_CONFIG);
	ck_assert_msg(strstr(err.msg, "at least 32"), "%s", err.msg);
	side_close(&D);
	side_close(&P);
	g_unlink(a);
	g_unlink(b);
	g_unlink(shrt);
	g_rmdir(dir);
	g_free(a);
	g_free(b);
	g_free(shrt);
	g_free(dir);
}
END_TEST

/* TLS on kvbridge's control stream: both sides with it, the pull works
 * (with a shared secret inside too); either side without it, or a CA that
 * did not sign the listener's certificate, refused with the reason and
 * counted; bad files refused at open, named as params.  Certificates from
 * tests/tls/make_certs.sh (openssl); without openssl the case passes
 * vacuously and says so. */
START_TEST(test_stream_tls)
{
	char *dir = g_dir_make_tmp("kvb-tls-XXXXXX", NULL);
	char *argv[] = {"sh", KVB_TLS_CERTS_SCRIPT, dir, NULL};
	int status = 0;
	if (!g_spawn_sync(NULL, argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL, NULL, &status, NULL) ||
	    !g_spawn_check_wait_status(status, NULL)) {
		fprintf(stderr, "# test_stream_tls: no test certificates (is openssl installed?)\n");
		g_free(dir);
		return;
	}
	char *cert = g_build_filename(dir, "server.pem", NULL), *key = g_build_filename(dir, "server.key", NULL);
	char *ca = g_build_filename(dir, "ca.pem", NULL), *other = g_build_filename(dir, "other-ca.pem", NULL);
	char *secret = secret_file(dir, "secret", "0123456789abcdef0123456789abcdef-secret-A\n");
	side_opts_t tls = {.tls_cert = cert, .tls_key = key, .tls_ca = ca};
	side_opts_t tls_secret = tls, none = {0}, wrong_ca = {.tls_ca = other};
	tls_secret.secret_file = secret;
	side_t P, D;
	side_open_opt(&P, KVB_ROLE_PRODUCER, 2, &tls_secret);
	side_open_opt(&D, KVB_ROLE_CONSUMER, 30, &tls_secret);
	kvb_finished_t f = stream_pull(&P, &D, "t-ok");
	ck_assert_msg(f.state == KVB_CONSUMER_DONE, "TLS and a secret: %s", f.reason);
	ck_assert_uint_eq(check_request(&D, "t-ok", (uint32_t[]){5, 6}, 2), 0);
	side_t *both[2] = {&P, &D};
	ck_assert(run_until(both, 2, &P, 1, 10));
	kvb_hw_stats_t st;
	kvb_hw_stats_get(D.be, &st);
	ck_assert_uint_eq(st.tls_streams, 1);
	side_close(&D);

	const struct {
		side_opts_t *d;
		const char *why;
	} bad[] = {
		{&none, "connection closed"},          /* a plaintext hello: the listener refuses it */
		{&wrong_ca, "issuer is unknown"},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
		side_t D2;
		side_open_opt(&D2, KVB_ROLE_CONSUMER, 30, bad[i].d);
		char id[16];
		g_snprintf(id, sizeof(id), "t-bad%zu", i);
		f = stream_pull(&P, &D2, id);
		ck_assert_int_eq(f.state, KVB_CONSUMER_FAILED);
		ck_assert_msg(strstr(f.reason, bad[i].why), "%s", f.reason);
		side_close(&D2);
		side_t *one[1] = {&P};
		ck_assert(run_until(one, 1, &P, 2 + (guint)i, 10));
	}
	kvb_hw_stats_get(P.be, &st);
	ck_assert_uint_eq(st.tls_streams, 1);
	ck_assert_uint_ge(st.tls_failures, 2);
	ck_assert_uint_eq(st.streams_opened, 1);
	side_close(&P);
	/* a listener without TLS: the connector that wants it says so */
	side_t P0, D3;
	side_open_opt(&P0, KVB_ROLE_PRODUCER, 2, &none);
	side_open_opt(&D3, KVB_ROLE_CONSUMER, 30, &tls);
	f = stream_pull(&P0, &D3, "t-nolisten");
	ck_assert_int_eq(f.state, KVB_CONSUMER_FAILED);
	ck_assert_msg(strstr(f.reason, "TLS handshake failed"), "%s", f.reason);
	side_close(&D3);
	side_t *one0[1] = {&P0};
	ck_assert(run_until(one0, 1, &P0, 1, 10));
	kvb_hw_stats_get(P0.be, &st);
	ck_assert_uint_eq(st.tls_failures, 1);
	side_close(&P0);
	/* bad files: the instance does not open, the param named */
	kvb_hw_params_t p;
	kvb_backend_t *be;
	kvb_err_t err;
	kvb_hw_params_default(&p);
	p.tls_cert = cert;
	ck_assert_int_eq(kvb_hw_open(&p, &be, &err), KVB_ERR_CONFIG);
	ck_assert_msg(strstr(err.msg, "tls_cert without tls_key"), "%s", err.msg);
	p.tls_key = ca; /* not the key of cert */
	ck_assert_int_eq(kvb_hw_open(&p, &be, &err), KVB_ERR_CONFIG);
	ck_assert_msg(g_str_has_prefix(err.msg, "tls_cert ") || g_str_has_prefix(err.msg, "tls_key "), "%s", err.msg);
	kvb_hw_params_default(&p);
	p.tls_ca = "/nonexistent/ca.pem";
	ck_assert_int_eq(kvb_hw_open(&p, &be, &err), KVB_ERR_CONFIG);
	ck_assert_msg(strstr(err.msg, "tls_ca /nonexistent/ca.pem: file not found"), "%s", err.msg);
	char *rm[] = {"rm", "-rf", dir, NULL};
	g_spawn_sync(NULL, rm, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL, NULL, NULL, NULL);
	g_free(cert);
	g_free(key);
	g_free(ca);
	g_free(other);
	g_free(secret);
	g_free(dir);
}
END_TEST

START_TEST(test_vllm_bad_messages_get_trans_error)
{
	uint16_t sport = 40000 + (uint16_t)(getpid() % 1000);
	side_t P;
	side_open(&P, KVB_ROLE_PRODUCER, 30, 1, sport);
	side_t *one[1] = {&P};
	void *zc = zmq_ctx_new();
	char ep[64];
	g_snprintf(ep, sizeof(ep), "tcp://127.0.0.1:%u", sport);
	const char *garbage[] = {"\xc1", "\x81\xa3" "abc", "not msgpack at all"};
	for (size_t i = 0; i < G_N_ELEMENTS(garbage); i++) {
		for (int req = 0; req < 2; req++) {
			/* as REQ would ([id, "", payload]) and as DEALER ([id, payload]) */
			void *s = zmq_socket(zc, ZMQ_DEALER);
			int zero = 0;
			zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero));
			ck_assert(zmq_connect(s, ep) == 0);
			if (req)
				zmq_send(s, "", 0, ZMQ_SNDMORE);
			zmq_send(s, garbage[i], strlen(garbage[i]), 0);
			char buf[64];
			int got = -1;
			for (int k = 0; k < 2000 && got < 0; k++) {
				step(one, 1);
				got = zmq_recv(s, buf, sizeof(buf), ZMQ_DONTWAIT);
				if (got == 0 && req)
					got = -1; /* the empty delimiter */
			}
			ck_assert_int_eq(got, 11);
			ck_assert(memcmp(buf, "trans_error", 11) == 0);
			zmq_close(s);
		}
	}
	kvb_hw_stats_t st;
	kvb_hw_stats_get(P.be, &st);
	ck_assert_uint_eq(st.vllm_errors, 6);
	zmq_ctx_term(zc);
	side_close(&P);
}
END_TEST

Suite *kvb_suite_hw_backend(void)
{
	Suite *s = suite_create("hw_backend");
	TCase *tc = tcase_create("loopback");
	tcase_add_checked_fixture(tc, hw_side_setup, hw_side_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_kvb_transfer);
	tcase_add_test(tc, test_kvb_transfer_two_nics);
	tcase_add_test(tc, test_vllm_gen0_transfer);
	tcase_add_test(tc, test_vllm_gen0_producer_dies_noticed);
	tcase_add_test(tc, test_lease_expiry_refuses_late_pull);
	tcase_add_test(tc, test_consumer_dies_producer_frees_at_lease);
	tcase_add_test(tc, test_handshake_bad_frames);
	tcase_add_test(tc, test_tcp_transport_refuses_out_of_range);
	tcase_add_test(tc, test_data_windows);
	tcase_add_test(tc, test_window_peer_of);
	tcase_add_test(tc, test_stream_shared_secret);
	tcase_add_test(tc, test_stream_tls);
	tcase_add_test(tc, test_vllm_bad_messages_get_trans_error);
	tcase_add_test(tc, test_gpu_staging_both_sides);
	tcase_add_test(tc, test_gpu_staging_pool_units);
	tcase_add_test(tc, test_gpu_staging_producer_only);
	tcase_add_test(tc, test_gpu_staging_consumer_only);
	tcase_add_test(tc, test_gpu_registration_refusals);
	tcase_add_test(tc, test_gpu_consumer_dies_mid_staging);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(kvb_suite_hw_backend());
	srunner_set_tap(sr, "-");
	srunner_run_all(sr, CK_ENV);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
