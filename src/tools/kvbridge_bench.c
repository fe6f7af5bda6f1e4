/*
 * kvbridge-bench: one-sided transfer throughput and latency through the hw
 * backend, comparable to Mooncake's transfer_engine_bench and nixlbench.
 *
 *   kvbridge-bench --mode target                 serve a registered buffer
 *   kvbridge-bench --mode initiator --target kvb://HOST:PORT | mooncake://HOST:PORT
 *   kvbridge-bench --loopback                    both, plus a plain-socket ceiling
 *   kvbridge-bench --loopback --control gen2     whole vLLM Gen 2 transfers too
 *
 * The initiator sweeps block sizes (4 KiB to 64 MiB by default); for each it
 * keeps --batch requests in flight per thread for --duration seconds and
 * prints GB/s and p50/p99 request latency.  --loopback forks a target and a
 * plain-socket sink, and prints kvbridge's rate as a ratio of what blocking
 * send()/recv() reaches over the same loopback in the same run.  With
 * --control gen2 each request is instead a whole vLLM Gen 2 transfer
 * through the connector core (kvb_bench_vllm2.c), measured against both.
 *
 * A target serves until SIGINT or SIGTERM; on stdin it
 * answers "sum OFFSET LENGTH" with the SHA-256 of that range of its buffer,
 * and "fill SEED" by refilling the buffer, so interop tests can check bytes
 * another engine wrote, and "stats" with the backend's counters
 * (rdma_endpoints=N ...).  --memory emulated puts the target's buffer in
 * emulated GPU memory (the staging paths, without a GPU).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <glib.h>
#include <glib-unix.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/hw.h>

#include "kvb_bench.h"
#include "kvb_cli.h"

#define PROG "kvbridge-bench"
#define BATCH_MAX 4096
#define THREADS_MAX 64
#define DURATION_MAX 86400.0 /* seconds per block size */
#define MAX_REPEAT 15

typedef struct opts {
	gchar *mode;
	gchar *target;
	gchar *op;
	gchar *block_sizes;
	gint batch;
	gint threads;
	gint nics;
	gdouble duration;
	gint repeat;
	gchar *buffer_size;
	gchar *host;
	gint rpc_port;
	gint data_port;
	gchar *csv;
	gboolean loopback;
	gboolean no_baseline;
	uint64_t fill_seed;
	uint64_t count;          /* 0: --duration */
	uint64_t check_seed;
	bool check_set;
	uint64_t remote_addr;
	bool remote_set;
	uint64_t rkey;           /* --rkey: an RDMA key of our choosing */
	bool rkey_set;
	gboolean quiet;
	gchar *rdma_devices;
	gint lanes;
	gchar *memory;
	gchar *control;
} opts_t;

static opts_t o = {
	.op = NULL, .batch = 16, .threads = 1, .nics = 1, .duration = 1.0, .repeat = 0, .fill_seed = 1,
};

/* The numeric options as typed; bench_options() checks them into o. */
static struct bench_args {
	gchar *batch, *threads, *nics, *lanes, *duration, *repeat, *rpc_port, *data_port;
	gchar *fill_seed, *count, *check_seed, *remote_addr, *rkey;
} args;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* "4096", "64K", "1.5M", "1GiB": a byte count >= 1 that fits 64 bits. */
static bool parse_size(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	double v = g_ascii_strtod(s, &end);
	if (errno || end == s || !(v > 0) || !isfinite(v))
		return false;
	uint64_t mul = 1;
	if (*end == 'K' || *end == 'k')
		mul = 1024, end++;
	else if (*end == 'M' || *end == 'm')
		mul = 1024 * 1024, end++;
	else if (*end == 'G' || *end == 'g')
		mul = 1024ull * 1024 * 1024, end++;
	if (*end == 'i' || *end == 'B')
		end++;
	if (*end == 'B')
		end++;
	if (*end || v * (double)mul >= 0x1p64)
		return false;
	*out = (uint64_t)(v * (double)mul);
	return *out > 0;
}

static void fill(uint8_t *p, uint64_t len, uint64_t seed)
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

static void *alloc_buffer(uint64_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		fprintf(stderr, "kvbridge-bench: cannot map %" PRIu64 " bytes: %s\n", len, g_strerror(errno));
		exit(1);
	}
	return p;
}

static kvb_backend_t *open_backend(uint16_t rpc_port, uint16_t data_port, GMainContext *ctx)
{
	kvb_hw_params_t p;
	kvb_hw_params_default(&p);
	kvb_err_t err;
	if (kvb_hw_params_apply_env(&p, NULL, &err) != KVB_OK) {
		fprintf(stderr, "kvbridge-bench: %s\n", err.msg);
		exit(2);
	}
	if (o.host)
		p.host = o.host;
	p.rpc_port = rpc_port;
	p.data_port = data_port;
	p.n_nics = (uint32_t)o.nics;
	p.context = ctx;
	if (o.rdma_devices)
		p.rdma_devices = o.rdma_devices;
	if (o.lanes > 0)
		p.tcp_lanes = (uint32_t)o.lanes;
	o.lanes = (int)p.tcp_lanes; /* what the ceiling mirrors */
	kvb_backend_t *be;
	if (kvb_hw_open(&p, &be, &err) != KVB_OK) {
		fprintf(stderr, "kvbridge-bench: %s\n", err.msg);
		exit(1);
	}
	if (p.rdma_devices && *p.rdma_devices) /* RDMA: the devices are the NICs */
		o.nics = (int)be->ops->nic_count(be);
	return be;
}

/* ------------------------------------------------------------------------ */
/* target                                                                   */

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
	(void)sig;
	stop_flag = 1;
}

/* The target's buffer in emulated GPU memory (--memory emulated): buf is
 * then a host view, synced before a sum and after a fill. */
static uint8_t *target_dev;
static kvb_backend_t *target_be;

static void answer_stdin(const char *line, uint8_t *buf, uint64_t len)
{
	unsigned long long off, n, seed;
	if (sscanf(line, "sum %llu %llu", &off, &n) == 2) {
		if (off > len || n > len - off) {
			printf("error range %llu+%llu outside the %" PRIu64 "-byte buffer\n", off, n, len);
		} else {
			if (target_dev)
				kvb_hw_emu_gpu_copy(buf + off, target_dev + off, n);
			char *hex = g_compute_checksum_for_data(G_CHECKSUM_SHA256, buf + off, n);
			printf("sum %llu %llu %s\n", off, n, hex);
			g_free(hex);
		}
	} else if (sscanf(line, "fill %llu", &seed) == 1) {
		fill(buf, len, seed);
		if (target_dev)
			kvb_hw_emu_gpu_copy(target_dev, buf, len);
		printf("filled %llu\n", seed);
	} else if (!strcmp(line, "stats")) {
		kvb_hw_stats_t st;
		kvb_hw_stats_get(target_be, &st);
		printf("stats rdma_endpoints=%" PRIu64 " handshakes_served=%" PRIu64 " tcp_bytes_in=%" PRIu64
		       " tcp_bytes_out=%" PRIu64 "\n", st.rdma_endpoints, st.handshakes_served, st.tcp_bytes_in,
		       st.tcp_bytes_out);
	} else {
		printf("error unknown command (sum OFFSET LENGTH | fill SEED | stats)\n");
	}
	fflush(stdout);
}

static int run_target(uint64_t buf_len)
{
	kvb_backend_t *be = open_backend((uint16_t)o.rpc_port, (uint16_t)o.data_port, NULL);
	target_be = be;
	uint8_t *buf = alloc_buffer(buf_len);
	fill(buf, buf_len, o.fill_seed);
	kvb_mem_attr_t attr = {KVB_MEM_HOST, -1};
	uint8_t *reg = buf;
	if (o.memory && !strcmp(o.memory, "emulated")) {
		if (!(target_dev = kvb_hw_emu_gpu_alloc(buf_len))) {
			fprintf(stderr, "kvbridge-bench: no emulated GPU memory of %" PRIu64 " bytes\n", buf_len);
			return 1;
		}
		kvb_hw_emu_gpu_copy(target_dev, buf, buf_len);
		attr = (kvb_mem_attr_t){KVB_MEM_CUDA, 0};
		reg = target_dev;
	}
	void *mr;
	kvb_rkey_t rkey;
	/* a target is there to be read and written: its whole buffer is open */
	if (be->ops->mr_reg(be, reg, buf_len, &attr, &mr, &rkey) != KVB_OK ||
	    kvb_hw_expose(be, reg, buf_len) != KVB_OK) {
		fprintf(stderr, "kvbridge-bench: register: %s\n", be->ops->last_error(be));
		return 1;
	}
	printf("kvbridge-bench: target ready segment=%s data_port=%u buffer=0x%" PRIx64 " size=%" PRIu64 "\n",
	       kvb_hw_segment_name(be), kvb_hw_data_port(be), (uint64_t)(uintptr_t)reg, buf_len);
	fflush(stdout);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	GPtrArray *conns = g_ptr_array_new();
	GString *line = g_string_new(NULL);
	bool stdin_open = true;
	int flags = fcntl(0, F_GETFL, 0);
	fcntl(0, F_SETFL, flags | O_NONBLOCK);
	while (!stop_flag) {
		kvb_hw_wait(be, 50 * 1000000ull);
		kvb_event_t ev[16];
		int n = be->ops->event_poll(be, ev, 16);
		for (int i = 0; i < n; i++) {
			if (ev[i].type == KVB_EV_CONN_INCOMING) {
				kvb_conn_t *c = kvb_conn_alloc(be);
				if (be->ops->conn_accept(be, c, ev[i].incoming_id) == KVB_OK)
					g_ptr_array_add(conns, c);
				else
					kvb_conn_free(c);
			} else if (ev[i].type == KVB_EV_CONN_DOWN && ev[i].conn) {
				be->ops->conn_close(be, ev[i].conn);
				g_ptr_array_remove(conns, ev[i].conn);
				kvb_conn_free(ev[i].conn);
			}
		}
		while (stdin_open) {
			char c;
			ssize_t r = read(0, &c, 1);
			if (r == 1) {
				if (c == '\n') {
					answer_stdin(line->str, buf, buf_len);
					g_string_truncate(line, 0);
				} else if (line->len < 256) {
					g_string_append_c(line, c);
				}
				continue;
			}
			if (r == 0)
				stdin_open = false;
			break;
		}
	}
	kvb_hw_stats_t st;
	kvb_hw_stats_get(be, &st);
	if (!o.quiet)
		fprintf(stderr, "kvbridge-bench: target served %" PRIu64 " requests (%" PRIu64
				" bytes in, %" PRIu64 " out), refused %" PRIu64 "\n",
			st.tcp_requests_served, st.tcp_bytes_in, st.tcp_bytes_out, st.tcp_requests_rejected);
	for (guint i = 0; i < conns->len; i++) {
		be->ops->conn_close(be, conns->pdata[i]);
		kvb_conn_free(conns->pdata[i]);
	}
	g_ptr_array_free(conns, TRUE);
	g_string_free(line, TRUE);
	be->ops->mr_dereg(be, mr);
	kvb_backend_close(be);
	munmap(buf, buf_len);
	if (target_dev)
		kvb_hw_emu_gpu_free(target_dev);
	return 0;
}

/* ------------------------------------------------------------------------ */
/* initiator                                                                */

typedef struct worker {
	int index;
	const char *target;
	kvb_xfer_opcode_t op;
	uint64_t block, batch, duration_ns, buf_len;
	uint64_t bytes, ops;
	uint64_t checked;        /* bytes read and found equal to --check-pattern */
	GArray *lat_ns;          /* uint64_t */
	int rc;
	char error[256];
	GMutex *start_lock;
	GCond *start_cond;
	gint *start_flag;
	gint *ready;
} worker_t;

static int wait_event(kvb_backend_t *be, kvb_event_type_t type, kvb_event_t *out, uint64_t timeout_ns)
{
	uint64_t end = now_ns() + timeout_ns;
	while (now_ns() < end) {
		kvb_hw_wait(be, 10 * 1000000ull);
		kvb_event_t ev;
		while (be->ops->event_poll(be, &ev, 1) == 1) {
			if (ev.type == type || ev.type == KVB_EV_CONN_DOWN) {
				*out = ev;
				return ev.type == type ? KVB_OK : KVB_ERR_PEER;
			}
		}
	}
	return KVB_ERR_TIMEOUT;
}

static gpointer worker_run(gpointer arg)
{
	worker_t *w = arg;
	GMainContext *ctx = g_main_context_new();
	kvb_backend_t *be = open_backend(0, 0, ctx);
	uint8_t *buf = alloc_buffer(w->buf_len);
	fill(buf, w->buf_len, 7 + (uint64_t)w->index);
	void *mr = NULL;
	kvb_rkey_t rkey;
	kvb_mem_attr_t attr = {KVB_MEM_HOST, -1};
	kvb_conn_t *conn = kvb_conn_alloc(be);
	kvb_event_t ev;
	uint64_t raddr = 0, rlen = 0;
	if (be->ops->mr_reg(be, buf, w->buf_len, &attr, &mr, &rkey) != KVB_OK ||
	    be->ops->conn_connect(be, conn, w->target) < 0 ||
	    wait_event(be, KVB_EV_CONN_UP, &ev, 10ull * 1000000000ull) != KVB_OK ||
	    kvb_hw_peer_buffer(be, conn, 0, &raddr, &rlen) != KVB_OK) {
		g_snprintf(w->error, sizeof(w->error), "%s: %s", w->target, be->ops->last_error(be));
		w->rc = 1;
		g_atomic_int_inc(w->ready);
		goto out;
	}
	/* each thread writes into its own slice of the target's buffer (or of
	 * the range at --remote-addr) */
	uint64_t span = rlen / (uint64_t)o.threads;
	if (o.remote_set) {
		raddr = o.remote_addr;
		span = w->buf_len;
	}
	uint64_t rbase = raddr + span * (uint64_t)w->index;
	if (o.rkey_set)
		kvb_hw_rkey_explicit(&rkey, (uint32_t)o.rkey);
	uint64_t nslots = MIN(span, w->buf_len) / w->block;
	if (!nslots) {
		g_snprintf(w->error, sizeof(w->error), "block %" PRIu64 " larger than the buffer share %" PRIu64,
			   w->block, MIN(span, w->buf_len));
		w->rc = 1;
		g_atomic_int_inc(w->ready);
		goto out;
	}
	g_atomic_int_inc(w->ready);
	g_mutex_lock(w->start_lock);
	while (!g_atomic_int_get(w->start_flag))
		g_cond_wait(w->start_cond, w->start_lock);
	g_mutex_unlock(w->start_lock);

	uint64_t *post_t = g_new0(uint64_t, w->batch);
	uint64_t *free_cookies = g_new0(uint64_t, w->batch);
	uint64_t n_free = w->batch;
	for (uint64_t i = 0; i < w->batch; i++)
		free_cookies[i] = w->batch - 1 - i;
	uint64_t slot = 0, inflight = 0, nic = 0;
	uint64_t t0 = now_ns(), stop = t0 + w->duration_ns;
	bool posting = true;
	uint64_t limit = o.count > 0 ? o.count : UINT64_MAX;
	while (posting || inflight) {
		while (posting && inflight < w->batch && slot < limit) {
			uint64_t cookie = free_cookies[n_free - 1];
			kvb_slice_op_t op = {
				.opcode = w->op, .local_nic = (uint32_t)(nic % (uint64_t)o.nics),
				.remote_nic = (uint32_t)(nic++ % (uint64_t)o.nics), /* rail i -> peer NIC i */
				.local_addr = (uint64_t)(uintptr_t)buf + (slot % nslots) * w->block,
				.local_mr = mr, .remote_addr = rbase + (slot % nslots) * w->block,
				.remote_key = &rkey, .len = w->block, .cookie = cookie, .n_slices = 1,
				.slice_len = w->block, .stream = 1,
			};
			size_t posted;
			int rc = be->ops->xfer_post(be, conn, &op, 1, &posted);
			if (rc == KVB_ERR_NO_RESOURCE)
				break;
			if (rc != KVB_OK) {
				g_snprintf(w->error, sizeof(w->error), "post: %s", be->ops->last_error(be));
				w->rc = 1;
				posting = false;
				break;
			}
			post_t[cookie] = now_ns();
			n_free--;
			slot++;
			inflight++;
		}
		if (o.count > 0 && slot >= limit)
			posting = false;
		kvb_event_t evs[64];
		int n = be->ops->event_poll(be, evs, 64);
		if (n == 0) {
			kvb_hw_wait(be, 1000000ull);
			continue;
		}
		uint64_t t = now_ns();
		for (int i = 0; i < n; i++) {
			if (evs[i].type != KVB_EV_XFER_DONE)
				continue;
			inflight--;
			free_cookies[n_free++] = evs[i].cookie;
			if (evs[i].status != KVB_OK) {
				g_snprintf(w->error, sizeof(w->error), "transfer failed: %s (%s)",
					   kvb_strerror(evs[i].status), be->ops->last_error(be));
				w->rc = 1;
				posting = false;
				continue;
			}
			uint64_t lat = t - post_t[evs[i].cookie];
			g_array_append_val(w->lat_ns, lat);
			w->bytes += w->block;
			w->ops++;
		}
		if (o.count > 0 ? slot >= limit : t >= stop)
			posting = false;
	}
	w->duration_ns = now_ns() - t0;
	if (o.check_set && w->op == KVB_XFER_READ && !w->rc) {
		/* what was read must be the peer's pattern at the same offsets */
		uint8_t *expect = alloc_buffer(w->buf_len);
		fill(expect, w->buf_len, o.check_seed);
		uint64_t n = MIN(slot, nslots) * w->block, bad = 0;
		for (uint64_t i = 0; i < n; i++)
			bad += buf[i] != expect[i];
		munmap(expect, w->buf_len);
		if (bad) {
			g_snprintf(w->error, sizeof(w->error), "%" PRIu64 " of %" PRIu64 " bytes read differ from "
				   "the pattern of seed %" PRIu64, bad, n, o.check_seed);
			w->rc = 1;
		} else {
			w->checked = n;
		}
	}
	g_free(post_t);
	g_free(free_cookies);
out:
	be->ops->conn_close(be, conn);
	kvb_conn_free(conn);
	if (mr)
		be->ops->mr_dereg(be, mr);
	kvb_backend_close(be);
	g_main_context_unref(ctx);
	munmap(buf, w->buf_len);
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

typedef kvb_bench_result_t result_t;

static result_t run_point(const char *target, kvb_xfer_opcode_t op, uint64_t block, uint64_t buf_len)
{
	result_t r = {0};
	int T = o.threads;
	worker_t *w = g_new0(worker_t, T);
	GThread **th = g_new0(GThread *, T);
	GMutex lock;
	GCond cond;
	gint flag = 0, ready = 0;
	g_mutex_init(&lock);
	g_cond_init(&cond);
	for (int i = 0; i < T; i++) {
		w[i] = (worker_t){.index = i, .target = target, .op = op, .block = block,
				  .batch = (uint64_t)o.batch,
				  .duration_ns = (uint64_t)(o.duration * 1e9), .buf_len = buf_len,
				  .lat_ns = g_array_new(FALSE, FALSE, sizeof(uint64_t)),
				  .start_lock = &lock, .start_cond = &cond, .start_flag = &flag,
				  .ready = &ready};
		th[i] = g_thread_new("bench", worker_run, &w[i]);
	}
	while (g_atomic_int_get(&ready) < T)
		g_usleep(1000);
	g_mutex_lock(&lock);
	g_atomic_int_set(&flag, 1);
	g_cond_broadcast(&cond);
	g_mutex_unlock(&lock);
	uint64_t bytes = 0, dur = 0;
	GArray *all = g_array_new(FALSE, FALSE, sizeof(uint64_t));
	for (int i = 0; i < T; i++) {
		g_thread_join(th[i]);
		if (w[i].rc) {
			fprintf(stderr, "kvbridge-bench: thread %d: %s\n", i, w[i].error);
			r.rc = 1;
		}
		bytes += w[i].bytes;
		dur = MAX(dur, w[i].duration_ns);
		r.ops += w[i].ops;
		r.checked += w[i].checked;
		g_array_append_vals(all, w[i].lat_ns->data, w[i].lat_ns->len);
		g_array_free(w[i].lat_ns, TRUE);
	}
	if (all->len) {
		qsort(all->data, all->len, sizeof(uint64_t), cmp_u64);
		r.p50_us = (double)g_array_index(all, uint64_t, all->len / 2) / 1e3;
		r.p99_us = (double)g_array_index(all, uint64_t, (all->len * 99) / 100) / 1e3;
	}
	r.gbps = dur ? (double)bytes / (double)dur : 0; /* bytes per ns = GB/s */
	g_array_free(all, TRUE);
	g_mutex_clear(&lock);
	g_cond_clear(&cond);
	g_free(w);
	g_free(th);
	return r;
}

/* ------------------------------------------------------------------------ */
/* plain-socket ceiling                                                     */

static int sink_listen(uint16_t *port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 64))
		return -1;
	socklen_t l = sizeof(a);
	getsockname(fd, (struct sockaddr *)&a, &l);
	*port = ntohs(a.sin_port);
	return fd;
}

/* Child: accept connections; each sends "W" + block size (write: we sink) or
 * "R" + block size (read: we source), then streams until the peer closes. */
static void sink_serve(int lfd, uint64_t buf_len, int ready_fd)
{
	/* shared and touched once, so that neither page faults nor copy-on-write
	 * after fork() slow the baseline down (the kvbridge target's buffer is
	 * touched too, by its fill) */
	uint8_t *buf = mmap(NULL, buf_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		_exit(1);
	memset(buf, 1, buf_len);
	signal(SIGCHLD, SIG_IGN);
	if (write(ready_fd, "r", 1) != 1)
		_exit(1);
	close(ready_fd);
	for (;;) {
		int fd = accept(lfd, NULL, NULL);
		if (fd < 0)
			_exit(0);
		if (fork() == 0) {
			close(lfd);
			char mode;
			uint64_t block;
			if (recv(fd, &mode, 1, MSG_WAITALL) != 1 || recv(fd, &block, 8, MSG_WAITALL) != 8)
				_exit(0);
			uint64_t slot = 0, nslots = buf_len / block;
			for (;;) {
				uint8_t *p = buf + (slot++ % nslots) * block;
				ssize_t n = mode == 'W' ? recv(fd, p, block, MSG_WAITALL)
							: send(fd, p, block, MSG_NOSIGNAL);
				if (n <= 0)
					_exit(0);
			}
		}
		close(fd);
	}
}

typedef struct sock_worker {
	uint16_t port;
	bool write;
	uint64_t block, buf_len, duration_ns, bytes, dur;
} sock_worker_t;

static gpointer sock_worker_run(gpointer arg)
{
	sock_worker_t *w = arg;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(w->port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
		close(fd);
		return NULL;
	}
	char mode = w->write ? 'W' : 'R';
	send(fd, &mode, 1, 0);
	send(fd, &w->block, 8, 0);
	uint8_t *buf = alloc_buffer(w->buf_len);
	fill(buf, w->buf_len, 5);
	uint64_t nslots = w->buf_len / w->block, slot = 0;
	uint64_t t0 = now_ns(), end = t0 + w->duration_ns;
	while (now_ns() < end) {
		uint8_t *p = buf + (slot++ % nslots) * w->block;
		ssize_t n = w->write ? send(fd, p, w->block, MSG_NOSIGNAL) : recv(fd, p, w->block, MSG_WAITALL);
		if (n <= 0)
			break;
		w->bytes += (uint64_t)n;
	}
	w->dur = now_ns() - t0;
	close(fd);
	munmap(buf, w->buf_len);
	return NULL;
}

static double socket_ceiling(uint16_t port, bool write, uint64_t block, uint64_t buf_len)
{
	/* one blocking connection per kvbridge thread and NIC: the sender and the
	 * sink each get as many threads as kvbridge's initiator and target use
	 * (kvbridge's lanes share their thread, so they are not mirrored: more
	 * sockets would mean more threads, and the ceiling would measure the
	 * thread count, not the transport) */
	int T = o.threads * o.nics;
	sock_worker_t *w = g_new0(sock_worker_t, T);
	GThread **th = g_new0(GThread *, T);
	for (int i = 0; i < T; i++) {
		w[i] = (sock_worker_t){.port = port, .write = write, .block = block,
				       .buf_len = buf_len / (uint64_t)T >= block ? buf_len / (uint64_t)T : block,
				       .duration_ns = (uint64_t)(o.duration * 1e9)};
		th[i] = g_thread_new("sock", sock_worker_run, &w[i]);
	}
	uint64_t bytes = 0, dur = 0;
	for (int i = 0; i < T; i++) {
		g_thread_join(th[i]);
		bytes += w[i].bytes;
		dur = MAX(dur, w[i].dur);
	}
	g_free(w);
	g_free(th);
	return dur ? (double)bytes / (double)dur : 0;
}

/* ------------------------------------------------------------------------ */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median_double(const double *v, int n)
{
	double s[MAX_REPEAT];
	memcpy(s, v, sizeof(double) * (size_t)n);
	qsort(s, (size_t)n, sizeof(double), cmp_double);
	return s[n / 2];
}

/* The run whose rate is the median (latencies come from that same run); the
 * bytes verified and ops are summed over all runs. */
static result_t median_run(const result_t *runs, int n)
{
	double g[MAX_REPEAT];
	for (int k = 0; k < n; k++)
		g[k] = runs[k].gbps;
	double m = median_double(g, n);
	result_t r = runs[0];
	for (int k = 0; k < n; k++)
		if (runs[k].gbps == m)
			r = runs[k];
	r.checked = r.ops = 0;
	for (int k = 0; k < n; k++) {
		r.checked += runs[k].checked;
		r.ops += runs[k].ops;
		if (runs[k].rc)
			r.rc = runs[k].rc;
	}
	return r;
}

static bool parse_sizes(const char *spec, GArray *out)
{
	if (!spec || !strcmp(spec, "sweep")) {
		for (uint64_t s = 4096; s <= (64ull << 20); s *= 4)
			g_array_append_val(out, s);
		return true;
	}
	gchar **parts = g_strsplit(spec, ",", -1);
	bool ok = true;
	for (gchar **p = parts; *p && ok; p++) {
		uint64_t v;
		ok = parse_size(g_strstrip(*p), &v);
		if (ok)
			g_array_append_val(out, v);
	}
	g_strfreev(parts);
	return ok && out->len;
}

static GOptionEntry entries[] = {
	{"mode", 0, 0, G_OPTION_ARG_STRING, &o.mode, "target or initiator (default initiator)", "MODE"},
	{"target", 't', 0, G_OPTION_ARG_STRING, &o.target,
	 "initiator: the target, kvb://HOST:PORT (kvbridge) or mooncake://HOST:PORT (a Mooncake "
	 "Transfer Engine's handshake port)", "ADDR"},
	{"loopback", 'l', 0, G_OPTION_ARG_NONE, &o.loopback,
	 "fork a target on 127.0.0.1 and a plain-socket sink, run the sweep against both", NULL},
	{"op", 'o', 0, G_OPTION_ARG_STRING, &o.op, "write or read (default write)", "OP"},
	{"block-sizes", 'b', 0, G_OPTION_ARG_STRING, &o.block_sizes,
	 "comma list (4K,64K,1M) or 'sweep' (4 KiB to 64 MiB by 4x, the default)", "LIST"},
	{"batch", 'B', 0, G_OPTION_ARG_STRING, &args.batch, "requests in flight per thread, 1 to 4096 (default 16)", "N"},
	{"threads", 'T', 0, G_OPTION_ARG_STRING, &args.threads, "initiator threads, one connection each, 1 to 64 (default 1)", "N"},
	{"nics", 'n', 0, G_OPTION_ARG_STRING, &args.nics, "NICs per thread, 1 to 16 (TCP: source addresses, default 1)", "N"},
	{"lanes", 0, 0, G_OPTION_ARG_STRING, &args.lanes,
	 "TCP connections per peer per NIC, 1 to 16 (default 4 as Mooncake's pool; MC_TCP_LANES_PER_PEER)", "N"},
	{"rdma-devices", 0, 0, G_OPTION_ARG_STRING, &o.rdma_devices,
	 "RDMA devices to use (rxe0,rxe1 or auto; default TCP; also KVB_RDMA_DEVICES); requests go "
	 "round-robin over them, device i to the peer's device i", "LIST"},
	{"memory", 0, 0, G_OPTION_ARG_STRING, &o.memory,
	 "target: host (default) or emulated (the buffer in emulated GPU memory)", "KIND"},
	{"duration", 'd', 0, G_OPTION_ARG_STRING, &args.duration, "seconds per block size, > 0 (default 1)", "S"},
	{"repeat", 'r', 0, G_OPTION_ARG_STRING, &args.repeat,
	 "measure each size N times, 1 to 15 (kvbridge and the socket ceiling interleaved) and report the "
	 "median run (default 1, 3 with --loopback)", "N"},
	{"buffer-size", 0, 0, G_OPTION_ARG_STRING, &o.buffer_size, "registered buffer (default 1G target, 256M initiator)", "SIZE"},
	{"host", 0, 0, G_OPTION_ARG_STRING, &o.host, "address peers use to reach this process (default 127.0.0.1)", "HOST"},
	{"rpc-port", 0, 0, G_OPTION_ARG_STRING, &args.rpc_port, "target: handshake port, 0 to 65535 (default 0: random 15000-17000)", "PORT"},
	{"data-port", 0, 0, G_OPTION_ARG_STRING, &args.data_port, "target: TCP transport port, 0 to 65535 (default 0: random)", "PORT"},
	{"fill-seed", 0, 0, G_OPTION_ARG_STRING, &args.fill_seed, "target: pattern seed of the buffer (default 1)", "N"},
	{"count", 0, 0, G_OPTION_ARG_STRING, &args.count, "post exactly N >= 1 requests per thread per size (instead of --duration)", "N"},
	{"remote-addr", 0, 0, G_OPTION_ARG_STRING, &args.remote_addr, "initiator: remote address to use, decimal or 0x hex (default: the peer's first buffer)", "ADDR"},
	{"rkey", 0, 0, G_OPTION_ARG_STRING, &args.rkey, "initiator, RDMA: post with this remote key instead of the peer's (a security check: a forged or stale key must reach nothing)", "KEY"},
	{"check-pattern", 0, 0, G_OPTION_ARG_STRING, &args.check_seed, "initiator, reads: check the bytes read against the pattern of SEED (a target filled with --fill-seed SEED)", "SEED"},
	{"csv", 0, 0, G_OPTION_ARG_FILENAME, &o.csv, "append one CSV row per block size", "FILE"},
	{"control", 0, 0, G_OPTION_ARG_STRING, &o.control,
	 "loopback: one-sided (default: each request a write posted to the backend) or gen2 (each "
	 "request a whole vLLM Gen 2 transfer through the connector core: bootstrap, "
	 "MooncakeXferMetadata, writes, FINISH; measured next to one-sided and the socket ceiling)", "C"},
	{"no-baseline", 0, 0, G_OPTION_ARG_NONE, &o.no_baseline, "loopback: skip the plain-socket ceiling", NULL},
	{"quiet", 'q', 0, G_OPTION_ARG_NONE, &o.quiet, "less output", NULL},
	{NULL},
};

/* An address: decimal, or hex after 0x. */
static bool parse_addr(const char *opt, const char *text, uint64_t *out)
{
	if (!text || !(text[0] == '0' && (text[1] == 'x' || text[1] == 'X')))
		return kvb_cli_parse_uint64(PROG, opt, text, 0, UINT64_MAX, out);
	guint64 v;
	if (!g_ascii_string_to_unsigned(text + 2, 16, 0, G_MAXUINT64, &v, NULL)) {
		fprintf(stderr, PROG ": %s %s: not an address (decimal, or hex after 0x)\n", opt, text);
		return false;
	}
	*out = v;
	return true;
}

/* Every option checked before anything starts: numbers against their
 * ranges, names against the names accepted; false when refused. */
static bool bench_options(uint64_t *buf_len, GArray *sizes, kvb_xfer_opcode_t *op, bool *gen2)
{
	static const char *const modes[] = {"initiator", "target", NULL};
	static const char *const ops[] = {"write", "read", NULL};
	static const char *const memories[] = {"host", "emulated", NULL};
	static const char *const controls[] = {"one-sided", "gen2", NULL};
	int mode = 0, opi = 0, memory = 0, control = 0;
	if (!kvb_cli_parse_choice(PROG, "--mode", o.mode, modes, &mode) ||
	    !kvb_cli_parse_choice(PROG, "--op", o.op, ops, &opi) ||
	    !kvb_cli_parse_choice(PROG, "--memory", o.memory, memories, &memory) ||
	    !kvb_cli_parse_choice(PROG, "--control", o.control, controls, &control) ||
	    !kvb_cli_parse_int(PROG, "--batch", args.batch, 1, BATCH_MAX, &o.batch) ||
	    !kvb_cli_parse_int(PROG, "--threads", args.threads, 1, THREADS_MAX, &o.threads) ||
	    !kvb_cli_parse_int(PROG, "--nics", args.nics, 1, KVB_HW_MAX_NICS, &o.nics) ||
	    !kvb_cli_parse_int(PROG, "--lanes", args.lanes, 1, KVB_HW_MAX_LANES, &o.lanes) ||
	    !kvb_cli_parse_double(PROG, "--duration", args.duration, 0, DURATION_MAX, KVB_CLI_ABOVE_MIN,
				  &o.duration) ||
	    !kvb_cli_parse_int(PROG, "--repeat", args.repeat, 1, MAX_REPEAT, &o.repeat) ||
	    !kvb_cli_parse_int(PROG, "--rpc-port", args.rpc_port, 0, 65535, &o.rpc_port) ||
	    !kvb_cli_parse_int(PROG, "--data-port", args.data_port, 0, 65535, &o.data_port) ||
	    !kvb_cli_parse_uint64(PROG, "--fill-seed", args.fill_seed, 0, UINT64_MAX, &o.fill_seed) ||
	    !kvb_cli_parse_uint64(PROG, "--count", args.count, 1, UINT64_MAX, &o.count) ||
	    !kvb_cli_parse_uint64(PROG, "--check-pattern", args.check_seed, 0, UINT64_MAX, &o.check_seed) ||
	    !parse_addr("--remote-addr", args.remote_addr, &o.remote_addr) ||
	    !parse_addr("--rkey", args.rkey, &o.rkey))
		return false;
	o.check_set = args.check_seed != NULL;
	o.remote_set = args.remote_addr != NULL;
	o.rkey_set = args.rkey != NULL;
	if (o.rkey_set && (o.rkey > UINT32_MAX || !o.rdma_devices)) {
		fprintf(stderr, "kvbridge-bench: --rkey %s: expected a 32-bit RDMA key, with --rdma-devices\n",
			args.rkey);
		return false;
	}
	*op = opi ? KVB_XFER_READ : KVB_XFER_WRITE;
	*gen2 = control == 1;
	if (*gen2 && (!o.loopback || o.threads != 1 || *op != KVB_XFER_WRITE || o.rdma_devices || o.nics != 1)) {
		fprintf(stderr, "kvbridge-bench: --control gen2 runs with --loopback, writes, one thread, one "
			"TCP NIC (the producer writes into the decoder, as vLLM's)\n");
		return false;
	}
	if (o.buffer_size && !parse_size(o.buffer_size, buf_len)) {
		fprintf(stderr, "kvbridge-bench: --buffer-size %s: expected a size of at least 1 byte, "
			"like 256M or 1G\n", o.buffer_size);
		return false;
	}
	if (!parse_sizes(o.block_sizes, sizes)) {
		fprintf(stderr, "kvbridge-bench: --block-sizes %s: expected sizes of at least 1 byte, "
			"like 4K,64K,1M, or 'sweep'\n", o.block_sizes);
		return false;
	}
	return true;
}

int main(int argc, char **argv)
{
	GError *gerr = NULL;
	GOptionContext *oc = g_option_context_new("- transfer throughput and latency through kvbridge's hw backend");
	g_option_context_add_main_entries(oc, entries, NULL);
	g_option_context_set_description(oc,
		"Examples:\n"
		"  kvbridge-bench --loopback                       sweep 4 KiB..64 MiB, kvbridge vs plain sockets\n"
		"  kvbridge-bench --mode target --rpc-port 15500   serve a 1 GiB buffer\n"
		"  kvbridge-bench -t kvb://10.0.0.2:15500 -b 64K,1M -T 4\n"
		"  kvbridge-bench -t mooncake://10.0.0.2:16225     against a Mooncake Transfer Engine\n"
		"  kvbridge-bench --loopback --control gen2 -b 64K,1M,64M\n"
		"                                                  vLLM Gen 2 transfers vs one-sided vs sockets\n"
		"\nOutput: one line per block size: GB/s (1e9 bytes/s), p50 and p99 request latency,\n"
		"and with --loopback the plain-socket rate and kvbridge's ratio to it.\n"
		"A value out of range or an unknown name stops it with exit status 2 before it starts.\n"
		"Environment: Mooncake's MC_* variables (MC_TCP_PROTO, MC_MIN_RPC_PORT, ...).\n");
	if (!g_option_context_parse(oc, &argc, &argv, &gerr)) {
		fprintf(stderr, "kvbridge-bench: %s (try --help)\n", gerr->message);
		return KVB_CLI_USAGE;
	}
	g_option_context_free(oc);
	if (argc > 1) {
		fprintf(stderr, "kvbridge-bench: unexpected argument '%s' (try --help)\n", argv[1]);
		return KVB_CLI_USAGE;
	}
	bool target_mode = o.mode && !strcmp(o.mode, "target");
	uint64_t buf_len = target_mode || o.loopback ? (1ull << 30) : (256ull << 20);
	GArray *sizes = g_array_new(FALSE, FALSE, sizeof(uint64_t));
	kvb_xfer_opcode_t op = KVB_XFER_WRITE;
	bool gen2 = false;
	if (!bench_options(&buf_len, sizes, &op, &gen2)) {
		g_array_free(sizes, TRUE); /* ASan builds check leaks on every exit */
		return KVB_CLI_USAGE;
	}
	if (o.repeat == 0)
		o.repeat = o.loopback ? 3 : 1;
	if (o.lanes == 0) { /* the default the backend will use: MC_TCP_LANES_PER_PEER or 4 */
		kvb_hw_params_t dp;
		kvb_hw_params_default(&dp);
		kvb_err_t e;
		kvb_hw_params_apply_env(&dp, NULL, &e);
		o.lanes = (int)dp.tcp_lanes;
	}
	if (target_mode) {
		g_array_free(sizes, TRUE);
		return run_target(buf_len);
	}

	pid_t target_pid = 0, sink_pid = 0;
	uint16_t sink_port = 0;
	char target_addr[128];
	if (o.loopback) {
		int pfd[2];
		if (pipe(pfd))
			return 1;
		target_pid = fork();
		if (target_pid == 0) {
			close(pfd[0]);
			dup2(pfd[1], 1);
			int devnull = open("/dev/null", O_RDONLY);
			dup2(devnull, 0);
			g_free(o.mode);
			o.mode = g_strdup("target");
			o.quiet = TRUE;
			_exit(run_target(buf_len));
		}
		close(pfd[1]);
		char line[512] = "";
		FILE *f = fdopen(pfd[0], "r");
		if (!fgets(line, sizeof(line), f) || !strstr(line, "segment=")) {
			fprintf(stderr, "kvbridge-bench: the loopback target did not start\n");
			return 1;
		}
		char seg[128];
		sscanf(strstr(line, "segment=") + 8, "%127s", seg);
		g_snprintf(target_addr, sizeof(target_addr), "kvb://%s", seg);
		o.target = target_addr;
		if (!o.no_baseline) {
			int lfd = sink_listen(&sink_port), rfd[2];
			if (lfd < 0 || pipe(rfd)) {
				fprintf(stderr, "kvbridge-bench: plain-socket sink: %s\n", g_strerror(errno));
				return 1;
			}
			sink_pid = fork();
			if (sink_pid == 0) {
				close(rfd[0]);
				sink_serve(lfd, MIN(buf_len, 256ull << 20), rfd[1]); /* kvbridge's window */
			}
			close(lfd);
			close(rfd[1]);
			char ready;
			if (read(rfd[0], &ready, 1) != 1) { /* the sink has touched its buffer */
				fprintf(stderr, "kvbridge-bench: the plain-socket sink did not start\n");
				return 1;
			}
			close(rfd[0]);
		}
	}
	if (!o.target) {
		fprintf(stderr, "kvbridge-bench: give --target ADDR, --loopback or --mode target (see --help)\n");
		return 2;
	}
	FILE *csv = NULL;
	if (o.csv) {
		bool fresh = !g_file_test(o.csv, G_FILE_TEST_EXISTS);
		csv = fopen(o.csv, "a");
		if (!csv) {
			fprintf(stderr, "kvbridge-bench: %s: %s\n", o.csv, g_strerror(errno));
			return 1;
		}
		if (fresh && gen2)
			fprintf(csv, "control,op,block_bytes,batch,ops,GBps,p50_us,p99_us,onesided_GBps,"
				"socket_GBps,ratio_socket,ratio_onesided\n");
		else if (fresh)
			fprintf(csv, "op,block_bytes,batch,threads,nics,ops,GBps,p50_us,p99_us,socket_GBps,ratio\n");
	}
	char reps[48] = "";
	if (o.repeat > 1)
		g_snprintf(reps, sizeof(reps), ", median of %d runs", o.repeat);
	printf("kvbridge-bench: %s to %s, batch %d, %d thread(s), %d NIC(s) x %d TCP lane(s) each, %.1f s per size%s\n",
	       op == KVB_XFER_WRITE ? "write" : "read", o.target, o.batch, o.threads, o.nics, o.lanes, o.duration,
	       reps);
	if (gen2) {
		printf("gen2: every request a vLLM Gen 2 transfer of one block (kvbridge producer -> kvbridge "
		       "consumer); one-sided: the same writes posted directly\n");
		printf("%10s %10s %10s %10s %14s %12s %10s %12s\n", "block", "gen2 GB/s", "p50 us", "p99 us",
		       "one-sided GB/s", "socket GB/s", "gen2/sock", "gen2/1-sided");
	} else {
		printf("%10s %10s %10s %10s %12s %8s\n", "block", "GB/s", "p50 us", "p99 us",
		       sink_pid ? "socket GB/s" : "", sink_pid ? "ratio" : "");
	}
	int rc = 0;
	uint64_t per_thread = buf_len / (uint64_t)o.threads;
	for (guint i = 0; i < sizes->len; i++) {
		uint64_t b = g_array_index(sizes, uint64_t, i);
		if (b > per_thread) {
			fprintf(stderr, "kvbridge-bench: block %" PRIu64 " exceeds the buffer share %" PRIu64 ", skipped\n",
				b, per_thread);
			continue;
		}
		/* interleave the repeats so that both see the same machine noise */
		result_t runs[MAX_REPEAT], g2runs[MAX_REPEAT];
		double socks[MAX_REPEAT];
		for (int k = 0; k < o.repeat; k++) {
			runs[k] = run_point(o.target, op, b,
					    MIN(buf_len, 256ull << 20) < b ? b : MIN(buf_len, 256ull << 20));
			if (runs[k].rc)
				rc = 1;
			if (gen2) {
				kvb_bench_gen2_t g = {.block = b, .batch = (uint32_t)o.batch,
						      .duration_ns = (uint64_t)(o.duration * 1e9),
						      .count = o.count,
						      .lanes = (uint32_t)o.lanes, .quiet = o.quiet};
				if (kvb_bench_gen2_point(&g, &g2runs[k]))
					rc = 1;
			}
			socks[k] = sink_pid ? socket_ceiling(sink_port, op == KVB_XFER_WRITE, b,
							     MIN(buf_len, 256ull << 20)) : 0;
		}
		result_t r = median_run(runs, o.repeat);
		double sock = median_double(socks, o.repeat);
		char label[32];
		if (b >= (1u << 20))
			g_snprintf(label, sizeof(label), "%" PRIu64 "M", b >> 20);
		else
			g_snprintf(label, sizeof(label), "%" PRIu64 "K", b >> 10);
		if (gen2) {
			result_t g = median_run(g2runs, o.repeat);
			printf("%10s %10.3f %10.1f %10.1f %14.3f %12.3f %10.2f %12.2f\n", label, g.gbps, g.p50_us,
			       g.p99_us, r.gbps, sock, sock > 0 ? g.gbps / sock : 0, r.gbps > 0 ? g.gbps / r.gbps : 0);
			fflush(stdout);
			if (csv)
				fprintf(csv, "gen2,write,%" PRIu64 ",%d,%" PRIu64 ",%.4f,%.1f,%.1f,%.4f,%.4f,%.3f,%.3f\n",
					b, o.batch, g.ops, g.gbps, g.p50_us, g.p99_us, r.gbps, sock,
					sock > 0 ? g.gbps / sock : 0, r.gbps > 0 ? g.gbps / r.gbps : 0);
			if (!o.quiet)
				printf("kvbridge-bench: gen2 %s: %" PRIu64 " requests, %" PRIu64 " bytes verified\n",
				       label, g.ops, g.checked);
			continue;
		}
		if (sink_pid)
			printf("%10s %10.3f %10.1f %10.1f %12.3f %8.2f\n", label, r.gbps, r.p50_us, r.p99_us, sock,
			       sock > 0 ? r.gbps / sock : 0);
		else
			printf("%10s %10.3f %10.1f %10.1f\n", label, r.gbps, r.p50_us, r.p99_us);
		fflush(stdout);
		if (r.checked)
			printf("kvbridge-bench: verified %" PRIu64 " bytes read against the pattern of seed %" PRIu64 "\n",
			       r.checked, o.check_seed);
		if (csv)
			fprintf(csv, "%s,%" PRIu64 ",%d,%d,%d,%" PRIu64 ",%.4f,%.1f,%.1f,%.4f,%.3f\n",
				op == KVB_XFER_WRITE ? "write" : "read", b, o.batch, o.threads, o.nics, r.ops, r.gbps,
				r.p50_us, r.p99_us, sock, sock > 0 ? r.gbps / sock : 0);
	}
	if (csv)
		fclose(csv);
	if (target_pid) {
		kill(target_pid, SIGTERM);
		waitpid(target_pid, NULL, 0);
	}
	if (sink_pid) {
		kill(sink_pid, SIGKILL);
		waitpid(sink_pid, NULL, 0);
	}
	g_array_free(sizes, TRUE);
	return rc;
}
