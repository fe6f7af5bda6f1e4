/*
 * kvbridge-bench --control gen2: whole vLLM Gen 2 transfers through the
 * connector core, on loopback (kvb_bench.h).
 *
 * One point = a producer on its own thread (its own GMainContext, backend
 * and connector, serving vLLM's HTTP bootstrap) and a consumer on the
 * calling thread.  The consumer asks the bootstrap for the producer's
 * worker once (as vLLM's decoder caches /query), then keeps `batch`
 * requests in flight: each is kvb_consumer_pull of one block, which the hw
 * backend turns into a MooncakeXferMetadata on a DEALER to the producer's
 * ROUTER; the producer's core serves it (lease, slices over the TCP lanes)
 * and the reply stream (FINISH) ends it.  So a request's latency is what a
 * vLLM 0.32 decoder waits for one KV cache of that size from a producer
 * that is already prefilled, and the rate is what the Gen 2 control path
 * leaves of the TCP transport.
 *
 * The producer keeps a window of transfers "b<seq>" ready ahead of the
 * consumer (slot seq % window, each slot filled once with its own pattern);
 * the consumer pulls them in order into free slots of its own.  At the end
 * the consumer's slots are compared with the pattern of the producer slot
 * each last received, and the producer aborts what was never pulled, so
 * both connectors end with no block held.
 */
#include "config.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/hw.h>

#include "kvb_bench.h"

#define NS_PER_S G_GUINT64_CONSTANT(1000000000)
#define SETUP_TIMEOUT_NS (20 * NS_PER_S)
#define DRAIN_TIMEOUT_NS (60 * NS_PER_S)
#define ENGINE_ID "bench-prefill"

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

/* Word-at-a-time pattern of a slot (cheap enough for GiB-sized windows). */
static void slot_fill(uint8_t *p, uint64_t len, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
	for (uint64_t i = 0; i + 8 <= len; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(p + i, &x, 8);
	}
	for (uint64_t i = len & ~7ull; i < len; i++)
		p[i] = (uint8_t)(seed + i);
}

static uint8_t *map_bytes(uint64_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

/* A free TCP port on loopback (the kernel's pick, released at once). */
static uint16_t free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t l = sizeof(a);
	uint16_t port = 0;
	if (fd >= 0 && !bind(fd, (struct sockaddr *)&a, sizeof(a)) &&
	    !getsockname(fd, (struct sockaddr *)&a, &l))
		port = ntohs(a.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

/* One side: backend, connector and a one-region layout of `slots` blocks. */
typedef struct side {
	GMainContext *ctx;
	kvb_backend_t *be;
	kvb_connector_t *c;
	uint8_t *mem;
	uint64_t len;
} side_t;

static int side_open(side_t *s, const kvb_bench_gen2_t *b, kvb_role_t role, uint32_t slots,
		     uint16_t bootstrap_port, char *why, size_t why_len)
{
	memset(s, 0, sizeof(*s));
	s->ctx = g_main_context_new();
	s->len = b->block * slots;
	if (!(s->mem = map_bytes(s->len))) {
		g_snprintf(why, why_len, "cannot map %" PRIu64 " bytes", s->len);
		return -1;
	}
	kvb_hw_params_t p;
	kvb_hw_params_default(&p);
	kvb_err_t err;
	if (kvb_hw_params_apply_env(&p, NULL, &err) != KVB_OK)
		goto fail;
	p.host = "127.0.0.1";
	p.bind_host = "127.0.0.1";
	p.context = s->ctx;
	p.vllm_protocol = KVB_HW_VLLM_GEN2;
	p.vllm_bootstrap_port = bootstrap_port;
	if (b->lanes)
		p.tcp_lanes = b->lanes;
	if (kvb_hw_open(&p, &s->be, &err) != KVB_OK)
		goto fail;
	kvb_config_t cfg;
	kvb_config_init(&cfg);
	cfg.role = role;
	cfg.abort_timeout_ns = 120 * NS_PER_S;
	cfg.consumer_timeout_ns = 120 * NS_PER_S;
	int rc = kvb_connector_new(&cfg, s->be, &s->c, &err);
	kvb_config_clear(&cfg);
	if (rc != KVB_OK)
		goto fail;
	kvb_region_t r = {(uint64_t)(uintptr_t)s->mem, b->block, b->block, slots, 0, 0, KVB_MEM_HOST, -1};
	if (kvb_connector_register_layout(s->c, &r, 1, &err) != KVB_OK)
		goto fail;
	kvb_hw_vllm_layout_t l = {.regions = &r, .n_regions = 1, .tp_size = 1,
				  .engine_id = role == KVB_ROLE_PRODUCER ? ENGINE_ID : "bench-decode"};
	if (kvb_hw_vllm_set_layout(s->be, &l, &err) != KVB_OK)
		goto fail;
	return 0;
fail:
	g_snprintf(why, why_len, "%s", err.msg);
	return -1;
}

static void side_close(side_t *s)
{
	if (s->c)
		kvb_connector_free(s->c);
	if (s->be)
		kvb_backend_close(s->be);
	if (s->mem)
		munmap(s->mem, s->len);
	if (s->ctx)
		g_main_context_unref(s->ctx);
}

/* ------------------------------------------------------------------------ */
/* the producer thread                                                      */

typedef struct producer {
	const kvb_bench_gen2_t *b;
	uint32_t window;
	uint16_t bootstrap_port;
	gint state;              /* 0 starting, 1 serving, -1 failed */
	gint stop;               /* set by the consumer once `pulled` is final */
	uint64_t pulled;         /* transfers the consumer pulled: b0 .. b<pulled-1>; written
				  * before stop is set, read after */
	uint64_t sent, failed;
	uint64_t blocks_held;    /* at the end */
	char error[256];
} producer_t;

static uint64_t seq_of(const char *id)
{
	return g_ascii_strtoull(id + 1, NULL, 10);
}

static gpointer producer_run(gpointer arg)
{
	producer_t *P = arg;
	side_t s;
	if (side_open(&s, P->b, KVB_ROLE_PRODUCER, P->window, P->bootstrap_port, P->error,
		      sizeof(P->error))) {
		g_atomic_int_set(&P->state, -1);
		side_close(&s);
		return NULL;
	}
	for (uint32_t k = 0; k < P->window; k++)
		slot_fill(s.mem + (uint64_t)k * P->b->block, P->b->block, (uint64_t)k + 1);
	bool *busy = g_new0(bool, P->window);
	uint64_t next = 0;
	bool aborted = false;
	uint64_t drain_end = 0;
	g_atomic_int_set(&P->state, 1);
	for (;;) {
		bool stopping = g_atomic_int_get(&P->stop);
		while (!stopping && !busy[next % P->window]) {
			char id[32];
			g_snprintf(id, sizeof(id), "b%" PRIu64, next);
			uint32_t blk = (uint32_t)(next % P->window);
			kvb_block_list_t g = {&blk, 1};
			kvb_err_t err;
			if (kvb_producer_begin(s.c, id, &err) != KVB_OK ||
			    kvb_producer_ready(s.c, id, &g, 1, &err) != KVB_OK) {
				g_snprintf(P->error, sizeof(P->error), "producer %s: %s", id, err.msg);
				P->failed++;
				stopping = true;
				break;
			}
			busy[blk] = true;
			next++;
		}
		if (stopping && !aborted) {
			/* what the consumer never pulled is given back now, not at lease expiry */
			for (uint64_t q = P->pulled; q < next; q++) {
				char id[32];
				g_snprintf(id, sizeof(id), "b%" PRIu64, q);
				kvb_err_t err;
				kvb_producer_abort(s.c, id, &err);
			}
			aborted = true;
			drain_end = mono_ns() + DRAIN_TIMEOUT_NS;
		}
		kvb_connector_progress(s.c);
		kvb_finished_t f[64];
		int n;
		bool any = false;
		while ((n = kvb_connector_poll_finished(s.c, f, 64)) > 0) {
			any = true;
			for (int i = 0; i < n; i++) {
				uint64_t q = seq_of(f[i].id);
				busy[q % P->window] = false;
				if (f[i].state == KVB_PRODUCER_SENT)
					P->sent++;
				else if (!stopping || q < P->pulled) {
					P->failed++;
					g_snprintf(P->error, sizeof(P->error), "producer %s: %s %s", f[i].id,
						   kvb_producer_state_name(f[i].state), f[i].reason);
				}
			}
		}
		if (aborted) {
			kvb_counters_t c;
			kvb_connector_counters(s.c, &c);
			if (c.live_requests == 0 || mono_ns() > drain_end) {
				P->blocks_held = c.blocks_held;
				break;
			}
		}
		if (!any)
			kvb_hw_wait(s.be, 1000000ull);
	}
	g_free(busy);
	side_close(&s);
	return NULL;
}

/* ------------------------------------------------------------------------ */
/* the consumer (calling thread)                                            */

typedef struct found {
	bool done;
	int status;
	char why[256];
	char worker[128];
} found_t;

static void on_query(void *user, int status, const char *why, const kvb_hw_vllm_engine_t *e)
{
	found_t *f = user;
	f->done = true;
	f->status = status;
	g_strlcpy(f->why, why ? why : "", sizeof(f->why));
	if (e && e->workers && e->workers[0])
		g_strlcpy(f->worker, e->workers[0], sizeof(f->worker));
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

int kvb_bench_gen2_point(const kvb_bench_gen2_t *b, kvb_bench_result_t *out)
{
	memset(out, 0, sizeof(*out));
	uint32_t batch = b->batch;
	/* the producer's window: twice the requests in flight, at most 1 GiB
	 * (but always more than the batch, so the consumer never waits for a
	 * slot the producer has not readied) */
	uint64_t cap = (1ull << 30) / b->block;
	uint32_t window = (uint32_t)MAX((uint64_t)batch + 2, MIN(2ull * batch, cap));
	producer_t P = {.b = b, .window = window, .bootstrap_port = free_port()};
	GThread *th = g_thread_new("bench-producer", producer_run, &P);
	side_t s;
	char why[256] = "";
	uint64_t *lat = NULL, *t_post = NULL, *slot_seq = NULL;
	uint32_t *free_slots = NULL;
	uint64_t end = mono_ns() + SETUP_TIMEOUT_NS;
	int rc = side_open(&s, b, KVB_ROLE_CONSUMER, batch, 0, why, sizeof(why));
	while (!rc && g_atomic_int_get(&P.state) == 0 && mono_ns() < end)
		g_usleep(1000);
	if (!rc && g_atomic_int_get(&P.state) != 1) {
		g_snprintf(why, sizeof(why), "producer: %s", P.error[0] ? P.error : "did not start");
		rc = -1;
	}
	found_t f = {0};
	if (!rc) {
		char url[64];
		g_snprintf(url, sizeof(url), "http://127.0.0.1:%u", P.bootstrap_port);
		kvb_err_t err;
		if (kvb_hw_vllm_query(s.be, url, ENGINE_ID, on_query, &f, &err) != KVB_OK) {
			g_snprintf(why, sizeof(why), "bootstrap query: %s", err.msg);
			rc = -1;
		}
		while (!rc && !f.done && mono_ns() < end)
			kvb_hw_wait(s.be, 10000000ull);
		if (!rc && (!f.done || f.status != KVB_OK || !f.worker[0])) {
			g_snprintf(why, sizeof(why), "bootstrap query: %s", f.done ? f.why : "no answer");
			rc = -1;
		}
	}
	uint64_t posted = 0, done = 0, inflight = 0, n_free = batch, t0 = 0, t_last = 0;
	uint64_t limit = b->count ? b->count : UINT64_MAX;
	size_t lat_cap = 1024, n_lat = 0;
	if (!rc) {
		lat = g_new(uint64_t, lat_cap);
		t_post = g_new0(uint64_t, batch);
		slot_seq = g_new(uint64_t, batch);
		free_slots = g_new(uint32_t, batch);
		for (uint32_t k = 0; k < batch; k++) {
			slot_seq[k] = UINT64_MAX;
			free_slots[k] = batch - 1 - k;
		}
		t0 = mono_ns();
	}
	uint64_t stop_at = t0 + b->duration_ns;
	bool posting = !rc;
	const char *prods[1] = {f.worker};
	while (posting || inflight) {
		while (posting && inflight < batch && posted < limit) {
			uint32_t slot = free_slots[--n_free];
			char id[32];
			g_snprintf(id, sizeof(id), "b%" PRIu64, posted);
			kvb_block_list_t g = {&slot, 1};
			kvb_pull_params_t pp = {.request_id = id, .transfer_id = id, .producers = prods,
						.n_producers = 1, .groups = &g, .n_groups = 1};
			kvb_err_t err;
			if (kvb_consumer_pull(s.c, &pp, &err) != KVB_OK) {
				g_snprintf(why, sizeof(why), "pull %s: %s", id, err.msg);
				n_free++;
				rc = -1;
				posting = false;
				break;
			}
			slot_seq[slot] = posted++;
			t_post[slot] = mono_ns();
			inflight++;
		}
		kvb_connector_progress(s.c);
		kvb_finished_t fin[64];
		int n, got = 0;
		while ((n = kvb_connector_poll_finished(s.c, fin, 64)) > 0) {
			uint64_t t = mono_ns();
			got += n;
			for (int i = 0; i < n; i++) {
				uint64_t q = seq_of(fin[i].id);
				uint32_t slot = 0;
				while (slot < batch && slot_seq[slot] != q)
					slot++;
				if (slot == batch)
					continue; /* not ours: cannot happen */
				inflight--;
				free_slots[n_free++] = slot;
				if (fin[i].state != KVB_CONSUMER_DONE || fin[i].status != KVB_OK) {
					g_snprintf(why, sizeof(why), "request %s: %s (%s)", fin[i].id,
						   kvb_consumer_state_name(fin[i].state), fin[i].reason);
					slot_seq[slot] = UINT64_MAX;
					rc = -1;
					posting = false;
					continue;
				}
				if (n_lat == lat_cap)
					lat = g_renew(uint64_t, lat, lat_cap *= 2);
				lat[n_lat++] = t - t_post[slot];
				done++;
				t_last = t;
			}
		}
		if (posted >= limit || (!b->count && mono_ns() >= stop_at))
			posting = false;
		if (!got)
			kvb_hw_wait(s.be, 1000000ull);
	}
	/* every slot holds what the producer slot of its last request held */
	if (slot_seq) {
		uint8_t *want = map_bytes(b->block);
		for (uint32_t k = 0; want && k < batch; k++) {
			if (slot_seq[k] == UINT64_MAX)
				continue;
			slot_fill(want, b->block, slot_seq[k] % window + 1);
			if (memcmp(want, s.mem + (uint64_t)k * b->block, b->block)) {
				g_snprintf(why, sizeof(why), "request b%" PRIu64 ": the bytes received differ from "
					   "the producer's", slot_seq[k]);
				rc = -1;
			} else {
				out->checked += b->block;
			}
		}
		if (want)
			munmap(want, b->block);
	}
	P.pulled = posted;
	g_atomic_int_set(&P.stop, 1);
	g_thread_join(th);
	kvb_counters_t c = {0};
	if (s.c)
		kvb_connector_counters(s.c, &c);
	if (!rc && (P.failed || P.blocks_held || c.blocks_held || P.sent != done)) {
		g_snprintf(why, sizeof(why), "producer: %" PRIu64 " sent, %" PRIu64 " failed, %" PRIu64
			   " blocks held at the end; consumer: %" PRIu64 " done, %" PRIu64 " blocks held%s%s",
			   P.sent, P.failed, P.blocks_held, done, c.blocks_held, P.error[0] ? "; " : "", P.error);
		rc = -1;
	}
	side_close(&s);
	if (n_lat) {
		qsort(lat, n_lat, sizeof(uint64_t), cmp_u64);
		out->p50_us = (double)lat[n_lat / 2] / 1e3;
		out->p99_us = (double)lat[(n_lat * 99) / 100] / 1e3;
	}
	out->ops = done;
	out->gbps = t_last > t0 ? (double)(done * b->block) / (double)(t_last - t0) : 0;
	if (rc) {
		fprintf(stderr, "kvbridge-bench: gen2 at %" PRIu64 " bytes: %s\n", b->block, why);
		out->rc = 1;
	}
	g_free(lat);
	g_free(t_post);
	g_free(slot_seq);
	g_free(free_slots);
	return out->rc;
}
