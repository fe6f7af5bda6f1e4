/*
 * The hw backend: instance, vtable, events, timers, registered memory, the
 * handshake listener (Mooncake types 0-3) and kvbridge control streams.
 *
 * Everything runs on one GMainContext: listeners, sessions, data lanes and
 * timers are GSources; the vtable's ops only queue work and return.
 * event_poll dispatches the context (when nobody else is dispatching it)
 * and hands out the events the sources queued.
 *
 * Control stream (kvbridge peers): the connecting side sends a KVB_HELLO
 * frame holding its segment descriptor on the peer's handshake port; the
 * listener answers with its own descriptor and keeps the connection: from
 * then on both sides send KVB_FRAME frames, each one kvbridge wire message.
 * The descriptors tell each side where the other's TCP transport listens.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <glib.h>
#include <glib-unix.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/hw.h>

#include "kvb_hw_int.h"
#include "kvb_mc_wire.h"

#define RPC_SESSION_TIMEOUT_NS (5 * G_GUINT64_CONSTANT(1000000000)) /* Mooncake's SO_RCVTIMEO */
#define STREAM_FRAME_MAX ((uint64_t)KVB_MSG_MAX + 1)
#define DISPATCH_ROUNDS 64

typedef struct hw_timer {
	uint64_t id;
	uint64_t deadline_ns;
	uint64_t cookie;
	GSequenceIter *it;
} hw_timer_t;

/* An accepted handshake-port connection before it is classified. */
typedef struct rpc_session {
	hw_t *hw;
	int fd;
	hw_watch_t *w;
	hw_deadline_t *deadline;
	GByteArray *rx;
	GByteArray *tx;
	size_t tx_off;
	bool replied;         /* reply queued: write it, shut down, wait for the close */
} rpc_session_t;

struct hw {
	kvb_backend_t *be;
	kvb_hw_params_t p;
	char host[KVB_MC_NAME_MAX];
	char bind_host[KVB_MC_NAME_MAX];
	char side_host[KVB_MC_NAME_MAX];
	char nic_addrs[KVB_HW_MAX_NICS][KVB_MC_NAME_MAX];
	GMainContext *ctx;
	bool own_ctx;
	char segment[KVB_MC_NAME_MAX];
	uint16_t rpc_port;

	int rpc_fd;
	hw_watch_t *rpc_w;
	GQueue rpc_sessions;        /* rpc_session_t* */
	GQueue calls;               /* hw_call_t* in flight */
	GQueue peers;               /* hw_peer_t* */
	GHashTable *incoming;       /* incoming id -> hw_peer_t* awaiting conn_accept */
	uint64_t incoming_seq;

	GArray *events;             /* kvb_event_t ready for event_poll */
	GPtrArray *held;            /* message buffers handed out by the last event_poll */
	GSequence *timers;          /* hw_timer_t* by (deadline, id) */
	GHashTable *timer_by_id;
	uint64_t timer_seq;
	GSource *timer_src;

	GPtrArray *mrs;             /* hw_mr_t* */
	uint32_t mr_seq;
	GArray *fences;             /* uint64_t pairs: addr, len */

	void (*notify)(void *user);
	void *notify_user;
	bool debug;
	char last_error[256];
	kvb_hw_stats_t stats;

	hw_tcp_server_t *tcp;
	hw_vllm_t *vllm;
	hw_rdma_t *rdma;
	hw_gpu_t *gpu;
	char rdma_devices[512];
};

static hw_t *hw_of(kvb_backend_t *be)
{
	return (hw_t *)be->priv;
}

static hw_peer_t *peer_of(kvb_conn_t *conn)
{
	return *(hw_peer_t **)conn->priv;
}

uint64_t hw_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

const kvb_hw_params_t *hw_params(hw_t *hw)
{
	return &hw->p;
}

const char *hw_host(hw_t *hw)
{
	return hw->host;
}

uint16_t hw_rpc_port_of(hw_t *hw)
{
	return hw->rpc_port;
}

kvb_hw_stats_t *hw_stats(hw_t *hw)
{
	return &hw->stats;
}

hw_tcp_server_t **hw_tcp_server_slot(hw_t *hw)
{
	return &hw->tcp;
}

hw_rdma_t **hw_rdma_slot(hw_t *hw)
{
	return &hw->rdma;
}

hw_gpu_t **hw_gpu_slot(hw_t *hw)
{
	return &hw->gpu;
}

const char *hw_segment(hw_t *hw)
{
	return hw->segment;
}

hw_vllm_t **hw_vllm_slot(hw_t *hw)
{
	return &hw->vllm;
}

void hw_set_error(hw_t *hw, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	g_vsnprintf(hw->last_error, sizeof(hw->last_error), fmt, ap);
	va_end(ap);
	if (hw->debug)
		fprintf(stderr, "kvbridge-hw[%s]: error: %s\n", hw->segment, hw->last_error);
}

void hw_log(hw_t *hw, const char *fmt, ...)
{
	if (!hw->debug)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "kvbridge-hw[%s]: ", hw->segment);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

void hw_warn(hw_t *hw, const char *fmt, ...)
{
	const kvb_hw_params_t *prm = hw_params(hw);
	if (!prm->warn_fn && !hw->debug)
		return;
	char line[KVB_ERR_MSG_MAX + 256];
	va_list ap;
	va_start(ap, fmt);
	g_vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (prm->warn_fn)
		prm->warn_fn(prm->warn_arg, line);
	else
		fprintf(stderr, "kvbridge-hw[%s]: warning: %s\n", hw->segment, line);
}

/* ------------------------------------------------------------------------ */
/* GSource helpers                                                          */

struct hw_watch {
	GSource src;
	gpointer tag;
	hw_watch_fn fn;
	void *obj;
};

static gboolean watch_dispatch(GSource *src, GSourceFunc cb, gpointer data)
{
	(void)cb;
	(void)data;
	hw_watch_t *w = (hw_watch_t *)src;
	GIOCondition c = g_source_query_unix_fd(src, w->tag);
	if (!c)
		return G_SOURCE_CONTINUE;
	g_source_ref(src);
	bool keep = w->fn(w->obj, c);
	bool destroyed = g_source_is_destroyed(src);
	g_source_unref(src);
	if (destroyed)
		return G_SOURCE_REMOVE;
	return keep ? G_SOURCE_CONTINUE : G_SOURCE_REMOVE;
}

static GSourceFuncs watch_funcs = {
	.dispatch = watch_dispatch,
};

hw_watch_t *hw_watch_new(hw_t *hw, int fd, GIOCondition cond, hw_watch_fn fn, void *obj)
{
	GSource *src = g_source_new(&watch_funcs, sizeof(hw_watch_t));
	hw_watch_t *w = (hw_watch_t *)src;
	w->fn = fn;
	w->obj = obj;
	w->tag = g_source_add_unix_fd(src, fd, cond);
	g_source_attach(src, hw->ctx);
	return w;
}

void hw_watch_set(hw_watch_t *w, GIOCondition cond)
{
	if (w && !g_source_is_destroyed(&w->src))
		g_source_modify_unix_fd(&w->src, w->tag, cond);
}

void hw_watch_free(hw_watch_t *w)
{
	if (!w)
		return;
	g_source_destroy(&w->src);
	g_source_unref(&w->src);
}

struct hw_deadline {
	GSource src;
	void (*fn)(void *obj);
	void *obj;
};

static gboolean deadline_dispatch(GSource *src, GSourceFunc cb, gpointer data)
{
	(void)cb;
	(void)data;
	hw_deadline_t *d = (hw_deadline_t *)src;
	g_source_set_ready_time(src, -1);
	d->fn(d->obj);
	return G_SOURCE_CONTINUE;
}

static GSourceFuncs deadline_funcs = {
	.dispatch = deadline_dispatch,
};

hw_deadline_t *hw_deadline_new(hw_t *hw, void (*fn)(void *obj), void *obj)
{
	GSource *src = g_source_new(&deadline_funcs, sizeof(hw_deadline_t));
	hw_deadline_t *d = (hw_deadline_t *)src;
	d->fn = fn;
	d->obj = obj;
	g_source_set_ready_time(src, -1);
	g_source_attach(src, hw->ctx);
	return d;
}

void hw_deadline_arm(hw_deadline_t *d, uint64_t delay_ns)
{
	g_source_set_ready_time(&d->src, g_get_monotonic_time() + (gint64)(delay_ns / 1000) + 1);
}

void hw_deadline_disarm(hw_deadline_t *d)
{
	if (d)
		g_source_set_ready_time(&d->src, -1);
}

void hw_deadline_free(hw_deadline_t *d)
{
	if (!d)
		return;
	g_source_destroy(&d->src);
	g_source_unref(&d->src);
}

/* ------------------------------------------------------------------------ */
/* events and timers                                                        */

void hw_event_push(hw_t *hw, const kvb_event_t *ev)
{
	bool was_empty = hw->events->len == 0;
	g_array_append_val(hw->events, *ev);
	if (was_empty && hw->notify)
		hw->notify(hw->notify_user);
}

void hw_xfer_done(hw_t *hw, uint64_t cookie, int status, uint32_t nic)
{
	if (hw_gpu_piece_done(hw, cookie, status, nic))
		return;
	kvb_event_t ev = {.type = KVB_EV_XFER_DONE, .status = status, .cookie = cookie, .nic = nic};
	hw_event_push(hw, &ev);
}

static gint timer_cmp(gconstpointer a, gconstpointer b, gpointer user)
{
	(void)user;
	const hw_timer_t *x = a, *y = b;
	if (x->deadline_ns != y->deadline_ns)
		return x->deadline_ns < y->deadline_ns ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

static void timer_src_rearm(hw_t *hw)
{
	GSequenceIter *first = g_sequence_get_begin_iter(hw->timers);
	if (g_sequence_iter_is_end(first)) {
		g_source_set_ready_time(hw->timer_src, -1);
		return;
	}
	hw_timer_t *t = g_sequence_get(first);
	uint64_t now = hw_now_ns();
	gint64 wait_us = t->deadline_ns > now ? (gint64)((t->deadline_ns - now + 999) / 1000) : 0;
	g_source_set_ready_time(hw->timer_src, g_get_monotonic_time() + wait_us);
}

static gboolean timer_src_dispatch(GSource *src, GSourceFunc cb, gpointer data)
{
	(void)cb;
	(void)data;
	hw_t *hw = *(hw_t **)((char *)src + sizeof(GSource));
	uint64_t now = hw_now_ns();
	for (;;) {
		GSequenceIter *first = g_sequence_get_begin_iter(hw->timers);
		if (g_sequence_iter_is_end(first))
			break;
		hw_timer_t *t = g_sequence_get(first);
		if (t->deadline_ns > now)
			break;
		kvb_event_t ev = {.type = KVB_EV_TIMER, .cookie = t->cookie};
		g_hash_table_remove(hw->timer_by_id, &t->id);
		g_sequence_remove(first);
		hw_event_push(hw, &ev);
	}
	timer_src_rearm(hw);
	return G_SOURCE_CONTINUE;
}

static GSourceFuncs timer_src_funcs = {
	.dispatch = timer_src_dispatch,
};

static uint64_t op_clock_now_ns(kvb_backend_t *be)
{
	(void)be;
	return hw_now_ns();
}

static int op_timer_arm(kvb_backend_t *be, uint64_t deadline_ns, uint64_t cookie,
			uint64_t *timer_id)
{
	hw_t *hw = hw_of(be);
	hw_timer_t *t = g_new0(hw_timer_t, 1);
	t->id = ++hw->timer_seq;
	t->deadline_ns = deadline_ns;
	t->cookie = cookie;
	t->it = g_sequence_insert_sorted(hw->timers, t, timer_cmp, NULL);
	g_hash_table_insert(hw->timer_by_id, &t->id, t);
	if (timer_id)
		*timer_id = t->id;
	timer_src_rearm(hw);
	return KVB_OK;
}

static int op_timer_cancel(kvb_backend_t *be, uint64_t timer_id)
{
	hw_t *hw = hw_of(be);
	hw_timer_t *t = g_hash_table_lookup(hw->timer_by_id, &timer_id);
	if (!t)
		return KVB_ERR_NOT_FOUND;
	g_hash_table_remove(hw->timer_by_id, &timer_id);
	g_sequence_remove(t->it);
	timer_src_rearm(hw);
	return KVB_OK;
}

static int op_random_fill(kvb_backend_t *be, void *buf, size_t len)
{
	hw_t *hw = hw_of(be);
	uint8_t *b = buf;
	while (len) {
		ssize_t n = getrandom(b, len, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			hw_set_error(hw, "getrandom: %s", g_strerror(errno));
			return KVB_ERR_TRANSPORT;
		}
		b += n;
		len -= (size_t)n;
	}
	return KVB_OK;
}

/* ------------------------------------------------------------------------ */
/* NICs and memory                                                          */

static uint32_t op_nic_count(kvb_backend_t *be)
{
	hw_t *hw = hw_of(be);
	return hw->rdma ? hw_rdma_n_devices(hw) : hw->p.n_nics;
}

static int op_nic_query(kvb_backend_t *be, uint32_t index, kvb_nic_info_t *info)
{
	hw_t *hw = hw_of(be);
	if (index >= op_nic_count(be))
		return KVB_ERR_NOT_FOUND;
	memset(info, 0, sizeof(*info));
	if (hw->rdma)
		g_strlcpy(info->name, hw_rdma_device_name(hw, index), sizeof(info->name));
	else if (hw->nic_addrs[index][0])
		g_snprintf(info->name, sizeof(info->name), "tcp%u@%s", index, hw->nic_addrs[index]);
	else
		g_snprintf(info->name, sizeof(info->name), "tcp%u", index);
	info->bandwidth_bps = hw->p.nic_bandwidth_bps;
	info->numa_node = -1;
	return KVB_OK;
}

hw_mr_t *hw_mr_find(hw_t *hw, uint64_t addr, uint64_t len)
{
	if (!len || addr + len < addr)
		return NULL;
	for (guint i = 0; i < hw->mrs->len; i++) {
		hw_mr_t *m = hw->mrs->pdata[i];
		if (addr >= m->addr && addr + len <= m->addr + m->len)
			return m;
	}
	return NULL;
}

static int op_mr_reg(kvb_backend_t *be, void *addr, size_t len, const kvb_mem_attr_t *attr,
		     void **mr, kvb_rkey_t *rkey)
{
	hw_t *hw = hw_of(be);
	if (!addr || !len || (uint64_t)(uintptr_t)addr + len < (uint64_t)(uintptr_t)addr) {
		hw_set_error(hw, "mr_reg: empty or wrapping range %p + %zu", addr, len);
		return KVB_ERR_INVALID;
	}
	if (attr && attr->kind != KVB_MEM_HOST && attr->kind != KVB_MEM_CUDA) {
		hw_set_error(hw, "mr_reg: unknown memory kind %d", (int)attr->kind);
		return KVB_ERR_INVALID;
	}
	hw_mr_t *m = g_new0(hw_mr_t, 1);
	m->addr = (uint64_t)(uintptr_t)addr;
	m->len = len;
	m->kind = attr ? attr->kind : KVB_MEM_HOST;
	m->device = attr ? attr->device : -1;
	kvb_err_t rerr;
	if (m->kind == KVB_MEM_CUDA) {
		if (hw_gpu_mr_check(hw, m, &rerr) != KVB_OK) {
			hw_set_error(hw, "mr_reg: %s", rerr.msg);
			g_free(m);
			return rerr.code;
		}
		/* TCP cannot reach device memory: staged; RDMA devices decide below */
		for (uint32_t i = 0; i < KVB_HW_MAX_NICS; i++)
			m->path[i] = KVB_HW_PATH_STAGING;
	}
	if (hw_rdma_mr_reg(hw, m, &rerr) != KVB_OK) {
		hw_set_error(hw, "mr_reg: %s", rerr.msg);
		g_free(m);
		return rerr.code;
	}
	m->id = ++hw->mr_seq;
	g_ptr_array_add(hw->mrs, m);
	if (m->kind == KVB_MEM_CUDA) {
		GString *line = g_string_new(NULL);
		for (uint32_t i = 0; i < op_nic_count(be); i++) {
			kvb_nic_info_t info;
			be->ops->nic_query(be, i, &info);
			g_string_append_printf(line, "%s%s %s", i ? ", " : "", info.name,
					       kvb_hw_gpu_path_name((kvb_hw_gpu_path_t)m->path[i]));
		}
		hw_log(hw, "GPU memory 0x%" PRIx64 " + %" PRIu64 " (%s %d): %s", m->addr, m->len,
		       m->gpu_provider == HW_GPU_CUDA ? "cuda" : "emulated", m->device, line->str);
		g_string_free(line, TRUE);
	}
	*mr = m;
	if (rkey) {
		/* TCP needs no key: the peer's server checks ranges.  Carry the id so
		 * a mismatch shows in logs. */
		memset(rkey, 0, sizeof(*rkey));
		rkey->len = 4;
		memcpy(rkey->bytes, &m->id, 4);
	}
	return KVB_OK;
}

static int op_mr_dereg(kvb_backend_t *be, void *mr)
{
	hw_t *hw = hw_of(be);
	if (!mr || !g_ptr_array_remove(hw->mrs, mr)) {
		hw_set_error(hw, "mr_dereg: unknown registration");
		return KVB_ERR_NOT_FOUND;
	}
	/* peers writing into or reading from it lose their connection: no byte
	 * lands in memory that is no longer ours to serve */
	hw_tcp_server_drop_mr(hw, mr);
	hw_gpu_quiesce(hw, mr);
	hw_rdma_mr_dereg(hw, mr);
	g_free(mr);
	return KVB_OK;
}

bool hw_fenced(hw_t *hw, uint64_t addr, uint64_t len)
{
	const uint64_t *f = (const uint64_t *)(void *)hw->fences->data;
	for (guint i = 0; i + 1 < hw->fences->len; i += 2)
		if (addr < f[i] + f[i + 1] && f[i] < addr + len)
			return true;
	return false;
}

void hw_fence_add(hw_t *hw, uint64_t addr, uint64_t len)
{
	if (!len)
		return;
	uint64_t pair[2] = {addr, len};
	g_array_append_vals(hw->fences, pair, 2);
}

void hw_fence_clear(hw_t *hw, uint64_t addr, uint64_t len)
{
	uint64_t *f = (uint64_t *)(void *)hw->fences->data;
	for (guint i = 0; i + 1 < hw->fences->len;) {
		if (addr < f[i] + f[i + 1] && f[i] < addr + len) {
			g_array_remove_range(hw->fences, i, 2);
			f = (uint64_t *)(void *)hw->fences->data;
		} else {
			i += 2;
		}
	}
}

char *hw_descriptor_json(hw_t *hw)
{
	kvb_mc_segment_t seg;
	memset(&seg, 0, sizeof(seg));
	g_strlcpy(seg.name, hw->segment, sizeof(seg.name));
	g_strlcpy(seg.protocol, "tcp", sizeof(seg.protocol));
	seg.tcp_data_port = kvb_hw_data_port(hw->be);
	g_strlcpy(seg.tcp_data_host, hw->host, sizeof(seg.tcp_data_host));
	seg.tcp_proto_version = hw->p.tcp_proto_version;
	GDateTime *now = g_date_time_new_now_local();
	char *ts = g_date_time_format(now, "%Y-%m-%d %H:%M:%S.%f");
	g_strlcpy(seg.timestamp, ts, sizeof(seg.timestamp));
	g_free(ts);
	g_date_time_unref(now);
	seg.n_buffers = hw->mrs->len;
	seg.buffers = g_new0(kvb_mc_buffer_t, seg.n_buffers ? seg.n_buffers : 1);
	for (guint i = 0; i < hw->mrs->len; i++) {
		hw_mr_t *m = hw->mrs->pdata[i];
		g_strlcpy(seg.buffers[i].name, hw->segment, sizeof(seg.buffers[i].name));
		seg.buffers[i].addr = m->addr;
		seg.buffers[i].length = m->len;
	}
	hw_rdma_describe(hw, &seg);
	GString *out = g_string_new(NULL);
	kvb_err_t err;
	if (kvb_mc_segment_to_json(&seg, out, &err) != KVB_OK) {
		hw_set_error(hw, "descriptor: %s", err.msg);
		g_string_assign(out, "{}");
	}
	kvb_mc_segment_clear(&seg);
	return g_string_free(out, FALSE);
}

/* ------------------------------------------------------------------------ */
/* sockets                                                                  */

static void sock_tune(int fd)
{
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	int fl = fcntl(fd, F_GETFL, 0);
	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	fcntl(fd, F_SETFD, FD_CLOEXEC);
}

int hw_tcp_connect(const char *host, uint16_t port, const char *src, kvb_err_t *err)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC};
	struct addrinfo *res = NULL;
	char portstr[8];
	g_snprintf(portstr, sizeof(portstr), "%u", port);
	int rc = getaddrinfo(host, portstr, &hints, &res);
	if (rc != 0) {
		kvb_err_set(err, KVB_ERR_PEER, "cannot resolve %s: %s", host, gai_strerror(rc));
		return -1;
	}
	int fd = -1, last = 0;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
		if (fd < 0) {
			last = errno;
			continue;
		}
		sock_tune(fd);
		if (src && *src) {
			struct addrinfo *sres = NULL;
			struct addrinfo sh = {.ai_socktype = SOCK_STREAM, .ai_family = ai->ai_family,
					      .ai_flags = AI_NUMERICHOST};
			if (getaddrinfo(src, NULL, &sh, &sres) != 0 ||
			    bind(fd, sres->ai_addr, sres->ai_addrlen) != 0) {
				last = errno ? errno : EADDRNOTAVAIL;
				if (sres)
					freeaddrinfo(sres);
				close(fd);
				fd = -1;
				continue;
			}
			freeaddrinfo(sres);
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 || errno == EINPROGRESS)
			break;
		last = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		kvb_err_set(err, KVB_ERR_PEER, "cannot connect to %s:%u%s%s: %s", host, port,
			    src && *src ? " from " : "", src && *src ? src : "", g_strerror(last));
		errno = last; /* callers classify the failure */
	}
	return fd;
}

int hw_tcp_connect_result(int fd)
{
	int e = 0;
	socklen_t l = sizeof(e);
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l) != 0)
		return errno;
	return e;
}

static int listen_on(const char *bind_host, uint16_t port, kvb_err_t *err)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC,
				 .ai_flags = AI_PASSIVE};
	struct addrinfo *res = NULL;
	char portstr[8];
	g_snprintf(portstr, sizeof(portstr), "%u", port);
	int rc = getaddrinfo(bind_host && *bind_host ? bind_host : NULL, portstr, &hints, &res);
	if (rc != 0) {
		kvb_err_set(err, KVB_ERR_CONFIG, "cannot resolve bind address %s: %s", bind_host,
			    gai_strerror(rc));
		return -1;
	}
	int fd = -1, last = 0;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
		if (fd < 0) {
			last = errno;
			continue;
		}
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 128) == 0) {
			sock_tune(fd);
			break;
		}
		last = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		kvb_err_set(err, KVB_ERR_CONFIG, "cannot listen on %s:%u: %s",
			    bind_host && *bind_host ? bind_host : "*", port, g_strerror(last));
	return fd;
}

int hw_tcp_listen(const char *bind_host, uint16_t port, uint16_t min, uint16_t max,
		  uint16_t *bound, kvb_err_t *err)
{
	int fd = -1;
	if (port) {
		fd = listen_on(bind_host, port, err);
	} else {
		/* Mooncake P2P: a random free port in [min, max], 500 tries */
		for (int i = 0; i < 500 && fd < 0; i++) {
			uint16_t p = (uint16_t)g_random_int_range(min, (gint32)max + 1);
			fd = listen_on(bind_host, p, err);
		}
	}
	if (fd < 0)
		return -1;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	getsockname(fd, (struct sockaddr *)&ss, &sl);
	*bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						: ((struct sockaddr_in *)&ss)->sin_port);
	kvb_err_clear(err);
	return fd;
}

/* Write what is left of tx (from *off).  Returns 1 when all was written, 0
 * when the socket is full, -errno on failure. */
static int flush_tx(int fd, GByteArray *tx, size_t *off)
{
	while (*off < tx->len) {
		ssize_t n = send(fd, tx->data + *off, tx->len - *off, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -errno;
		}
		*off += (size_t)n;
	}
	g_byte_array_set_size(tx, 0);
	*off = 0;
	return 1;
}

/* Read what is available into rx (at most cap bytes held).  Returns the
 * bytes read (> 0), 0 on EAGAIN, -1 on EOF, -errno on failure. */
static ssize_t fill_rx(int fd, GByteArray *rx, size_t cap)
{
	ssize_t total = 0;
	for (;;) {
		if (rx->len >= cap)
			return total;
		size_t room = MIN((size_t)65536, cap - rx->len);
		guint old = rx->len;
		g_byte_array_set_size(rx, old + (guint)room);
		ssize_t n = recv(fd, rx->data + old, room, 0);
		if (n <= 0) {
			g_byte_array_set_size(rx, old);
			if (n == 0)
				return total ? total : -1;
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return total;
			return -errno;
		}
		g_byte_array_set_size(rx, old + (guint)n);
		total += n;
	}
}

/* ------------------------------------------------------------------------ */
/* the handshake client: one request per connection                          */

struct hw_call {
	hw_t *hw;
	int fd;
	hw_watch_t *w;
	hw_deadline_t *deadline;
	GByteArray *tx;
	size_t tx_off;
	GByteArray *rx;
	bool connected;
	hw_call_fn cb;
	void *obj;
	char what[KVB_MC_NAME_MAX + 16];
};

static void call_free(hw_call_t *c)
{
	g_queue_remove(&c->hw->calls, c);
	hw_watch_free(c->w);
	hw_deadline_free(c->deadline);
	if (c->fd >= 0)
		close(c->fd);
	g_byte_array_unref(c->tx);
	g_byte_array_unref(c->rx);
	g_free(c);
}

static void call_finish(hw_call_t *c, int status, const char *why, kvb_mc_msg_type_t type,
			const uint8_t *payload, size_t len)
{
	hw_call_fn cb = c->cb;
	void *obj = c->obj;
	c->cb = NULL;
	if (cb)
		cb(obj, status, why, type, payload, len);
}

static void call_timeout(void *obj)
{
	hw_call_t *c = obj;
	char why[KVB_MC_NAME_MAX + 64];
	g_snprintf(why, sizeof(why), "%s: no reply within the timeout", c->what);
	call_finish(c, KVB_ERR_TIMEOUT, why, 0, NULL, 0);
	call_free(c);
}

static bool call_io(void *obj, GIOCondition cond)
{
	hw_call_t *c = obj;
	hw_t *hw = c->hw;
	char why[KVB_MC_NAME_MAX + 160];
	if (!c->connected && (cond & (G_IO_OUT | G_IO_ERR | G_IO_HUP))) {
		int e = hw_tcp_connect_result(c->fd);
		if (e) {
			g_snprintf(why, sizeof(why), "%s: connect: %s", c->what, g_strerror(e));
			goto fail;
		}
		c->connected = true;
	}
	if (c->tx->len) {
		int r = flush_tx(c->fd, c->tx, &c->tx_off);
		if (r < 0) {
			g_snprintf(why, sizeof(why), "%s: send: %s", c->what, g_strerror(-r));
			goto fail;
		}
		if (r == 0)
			return true;
		hw_watch_set(c->w, G_IO_IN);
	}
	if (cond & (G_IO_IN | G_IO_HUP | G_IO_ERR)) {
		ssize_t n = fill_rx(c->fd, c->rx, KVB_MC_FRAME_HEADER_LEN + hw->p.handshake_max);
		if (n < -1) {
			g_snprintf(why, sizeof(why), "%s: recv: %s", c->what, g_strerror((int)-n));
			goto fail;
		}
		if (c->rx->len >= KVB_MC_FRAME_HEADER_LEN) {
			uint64_t body;
			kvb_err_t err;
			if (kvb_mc_frame_header(c->rx->data, hw->p.handshake_max, &body, &err) != KVB_OK) {
				g_snprintf(why, sizeof(why), "%s: reply: %s", c->what, err.msg);
				goto fail;
			}
			if (c->rx->len >= KVB_MC_FRAME_HEADER_LEN + body) {
				kvb_mc_msg_type_t type;
				const uint8_t *payload;
				size_t plen;
				if (kvb_mc_frame_body(c->rx->data + KVB_MC_FRAME_HEADER_LEN, body, &type,
						      &payload, &plen, &err) != KVB_OK) {
					g_snprintf(why, sizeof(why), "%s: reply: %s", c->what, err.msg);
					goto fail;
				}
				/* close at once: Mooncake's listener waits for it */
				call_finish(c, KVB_OK, NULL, type, payload, plen);
				call_free(c);
				return false;
			}
		}
		if (n == -1) {
			g_snprintf(why, sizeof(why), "%s: connection closed before a whole reply",
				   c->what);
			goto fail;
		}
	}
	return true;
fail:
	hw_set_error(hw, "%s", why);
	call_finish(c, KVB_ERR_PEER, why, 0, NULL, 0);
	call_free(c);
	return false;
}

hw_call_t *hw_call_start(hw_t *hw, const char *host, uint16_t port, kvb_mc_msg_type_t type,
			 const void *payload, size_t len, hw_call_fn cb, void *obj)
{
	hw_call_t *c = g_new0(hw_call_t, 1);
	c->hw = hw;
	c->cb = cb;
	c->obj = obj;
	g_snprintf(c->what, sizeof(c->what), "handshake with %s:%u", host, port);
	c->tx = g_byte_array_new();
	c->rx = g_byte_array_new();
	kvb_mc_frame_encode(c->tx, type, payload, len);
	kvb_err_t err;
	c->fd = hw_tcp_connect(host, port, NULL, &err);
	g_queue_push_tail(&hw->calls, c);
	if (c->fd < 0) {
		/* report from the loop, never from inside the caller */
		c->deadline = hw_deadline_new(hw, call_timeout, c);
		g_strlcpy(c->what, err.msg, sizeof(c->what));
		hw_deadline_arm(c->deadline, 0);
		return c;
	}
	c->w = hw_watch_new(hw, c->fd, G_IO_OUT, call_io, c);
	c->deadline = hw_deadline_new(hw, call_timeout, c);
	hw_deadline_arm(c->deadline, hw->p.connect_timeout_ns);
	return c;
}

void hw_call_cancel(hw_call_t *c)
{
	if (c)
		call_free(c);
}

/* ------------------------------------------------------------------------ */
/* peers                                                                    */

hw_peer_t *hw_peer_new(hw_t *hw, hw_peer_kind_t kind, const char *addr)
{
	hw_peer_t *p = g_new0(hw_peer_t, 1);
	p->hw = hw;
	p->kind = kind;
	p->state = HW_PEER_CONNECTING;
	p->fd = -1;
	g_strlcpy(p->addr, addr ? addr : "", sizeof(p->addr));
	p->rx = g_byte_array_new();
	p->tx = g_byte_array_new();
	g_queue_push_tail(&hw->peers, p);
	return p;
}

void hw_peer_free(hw_peer_t *p)
{
	hw_t *hw = p->hw;
	g_queue_remove(&hw->peers, p);
	if (p->incoming_id)
		g_hash_table_remove(hw->incoming, &p->incoming_id);
	if (p->vllm)
		hw_vllm_peer_detach(p);
	hw_call_cancel(p->call);
	hw_lanes_free(p);
	hw_rdma_peer_detach(p);
	hw_gpu_peer_detach(p);
	hw_watch_free(p->w);
	hw_deadline_free(p->connect_deadline);
	if (p->fd >= 0)
		close(p->fd);
	g_byte_array_unref(p->rx);
	g_byte_array_unref(p->tx);
	kvb_mc_segment_clear(&p->seg);
	g_free(p);
}

void hw_peer_up(hw_peer_t *p)
{
	if (p->state != HW_PEER_CONNECTING)
		return;
	p->state = HW_PEER_UP;
	hw_deadline_disarm(p->connect_deadline);
	if (p->conn) {
		kvb_event_t ev = {.type = KVB_EV_CONN_UP, .conn = p->conn};
		hw_event_push(p->hw, &ev);
	}
}

void hw_peer_down(hw_peer_t *p, int status, const char *why)
{
	if (p->state == HW_PEER_DOWN)
		return;
	p->state = HW_PEER_DOWN;
	hw_set_error(p->hw, "peer %s: %s", p->addr, why ? why : kvb_strerror(status));
	if (status != KVB_OK)
		hw_warn(p->hw, "peer %s down: %s", p->addr, why ? why : kvb_strerror(status));
	hw_lanes_fail(p, KVB_ERR_PEER);
	hw_rdma_peer_gone(p);
	hw_gpu_peer_down(p);
	hw_watch_free(p->w);
	p->w = NULL;
	hw_deadline_disarm(p->connect_deadline);
	if (p->fd >= 0) {
		close(p->fd);
		p->fd = -1;
	}
	if (p->conn) {
		kvb_event_t ev = {.type = KVB_EV_CONN_DOWN, .conn = p->conn, .status = status};
		hw_event_push(p->hw, &ev);
	} else if (!p->incoming_id) {
		/* the core already closed it (or never knew it) */
		hw_peer_free(p);
	}
}

void hw_peer_deliver(hw_peer_t *p, const void *data, size_t len)
{
	if (!p->conn || p->state != HW_PEER_UP)
		return;
	/* owned by the queued event, then held until the next event_poll */
	kvb_event_t ev = {.type = KVB_EV_MSG, .conn = p->conn, .data = g_memdup2(data, len),
			  .len = len};
	hw_event_push(p->hw, &ev);
}

void hw_peer_announce(hw_peer_t *p)
{
	hw_t *hw = p->hw;
	p->incoming_id = ++hw->incoming_seq;
	g_hash_table_insert(hw->incoming, &p->incoming_id, p);
	kvb_event_t ev = {.type = KVB_EV_CONN_INCOMING, .incoming_id = p->incoming_id};
	hw_event_push(hw, &ev);
}

int hw_peer_set_segment(hw_peer_t *p, kvb_mc_segment_t *seg, const char *fallback_host,
			kvb_err_t *err)
{
	bool rdma = !strcmp(seg->protocol, "rdma");
	int rc = KVB_OK;
	if (rdma && !hw_rdma_n_devices(p->hw))
		rc = kvb_err_set(err, KVB_ERR_UNSUPPORTED,
				 "peer segment %s speaks rdma and this endpoint has no RDMA devices "
				 "(give it some: rdma_devices, KVB_RDMA_DEVICES, --rdma-devices)", seg->name);
	else if (rdma && !seg->n_devices)
		rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "peer segment %s speaks rdma but lists no devices",
				 seg->name);
	else if (!rdma && strcmp(seg->protocol, "tcp"))
		rc = kvb_err_set(err, KVB_ERR_UNSUPPORTED, "peer segment %s speaks '%s' (expected tcp or rdma)",
				 seg->name, seg->protocol);
	else if (!rdma && (!seg->tcp_data_port || seg->tcp_data_port > 65535))
		rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "peer segment %s: tcp_data_port %u", seg->name,
				 seg->tcp_data_port);
	else if (!rdma && hw_rdma_n_devices(p->hw))
		rc = kvb_err_set(err, KVB_ERR_UNSUPPORTED,
				 "peer segment %s speaks tcp and this endpoint moves data over RDMA "
				 "(run both sides with RDMA devices, or neither)", seg->name);
	if (rc != KVB_OK) {
		kvb_mc_segment_clear(seg);
		return rc;
	}
	kvb_mc_segment_clear(&p->seg);
	p->seg = *seg;
	memset(seg, 0, sizeof(*seg));
	p->have_seg = true;
	char host[KVB_MC_NAME_MAX];
	uint16_t port;
	if (p->seg.tcp_data_host[0])
		g_strlcpy(p->data_host, p->seg.tcp_data_host, sizeof(p->data_host));
	else if (kvb_mc_parse_host_port(p->seg.name, host, sizeof(host), &port, NULL) == KVB_OK)
		g_strlcpy(p->data_host, host, sizeof(p->data_host));
	else
		g_strlcpy(p->data_host, fallback_host, sizeof(p->data_host));
	p->data_port = (uint16_t)p->seg.tcp_data_port;
	p->data_v2 = p->seg.tcp_proto_version >= 2 && p->hw->p.tcp_proto_version >= 2;
	return KVB_OK;
}

/* ---- kvbridge control stream --------------------------------------------- */

static void stream_queue(hw_peer_t *p, kvb_mc_msg_type_t type, const void *buf, size_t len)
{
	kvb_mc_frame_encode(p->tx, type, buf, len);
	if (p->w)
		hw_watch_set(p->w, G_IO_IN | G_IO_OUT);
}

void hw_stream_send(hw_peer_t *p, kvb_mc_msg_type_t type, const void *buf, size_t len)
{
	if (p->kind == HW_PEER_KVB && p->state == HW_PEER_UP && p->tx)
		stream_queue(p, type, buf, len);
}

/* Parse whole frames out of p->rx.  Returns false when the peer went down. */
static bool stream_frames(hw_peer_t *p)
{
	hw_t *hw = p->hw;
	size_t off = 0;
	bool ok = true;
	while (p->rx->len - off >= KVB_MC_FRAME_HEADER_LEN) {
		uint64_t body;
		kvb_err_t err;
		uint64_t cap = p->hello_done ? STREAM_FRAME_MAX : hw->p.handshake_max;
		if (kvb_mc_frame_header(p->rx->data + off, cap, &body, &err) != KVB_OK) {
			hw_peer_down(p, KVB_ERR_PROTOCOL, err.msg);
			return false;
		}
		if (p->rx->len - off < KVB_MC_FRAME_HEADER_LEN + body)
			break;
		kvb_mc_msg_type_t type;
		const uint8_t *payload;
		size_t plen;
		if (kvb_mc_frame_body(p->rx->data + off + KVB_MC_FRAME_HEADER_LEN, body, &type, &payload,
				      &plen, &err) != KVB_OK) {
			hw_peer_down(p, KVB_ERR_PROTOCOL, err.msg);
			return false;
		}
		off += KVB_MC_FRAME_HEADER_LEN + body;
		if (!p->hello_done) {
			/* the listener's answer to our hello: its descriptor */
			kvb_mc_segment_t seg;
			if (type != KVB_MC_KVB_HELLO) {
				hw_peer_down(p, KVB_ERR_PROTOCOL,
					     "peer answered the kvbridge hello with a non-kvbridge frame "
					     "(is it a Mooncake engine? use its segment through a vLLM or "
					     "Mooncake client instead)");
				return false;
			}
			if (kvb_mc_segment_from_json((const char *)payload, plen, &seg, &err) != KVB_OK ||
			    hw_peer_set_segment(p, &seg, p->host, &err) != KVB_OK) {
				hw_peer_down(p, err.code, err.msg);
				return false;
			}
			p->hello_done = true;
			hw_peer_up(p);
			continue;
		}
		if (type == KVB_MC_KVB_SYNC || type == KVB_MC_KVB_SYNCED) {
			if (!hw_gpu_sync_frame(p, type, payload, plen, &err)) {
				hw_peer_down(p, KVB_ERR_PROTOCOL, err.msg);
				return false;
			}
			continue;
		}
		if (type != KVB_MC_KVB_FRAME) {
			hw_peer_down(p, KVB_ERR_PROTOCOL, "unexpected frame type on a kvbridge stream");
			return false;
		}
		hw_peer_deliver(p, payload, plen);
	}
	if (off)
		g_byte_array_remove_range(p->rx, 0, (guint)off);
	return ok;
}

static bool stream_io(void *obj, GIOCondition cond)
{
	hw_peer_t *p = obj;
	char why[160];
	if (p->state == HW_PEER_CONNECTING && !p->hello_sent) {
		int e = hw_tcp_connect_result(p->fd);
		if (e) {
			g_snprintf(why, sizeof(why), "connect: %s", g_strerror(e));
			hw_peer_down(p, KVB_ERR_PEER, why);
			return false;
		}
		p->hello_sent = true;
	}
	if (p->tx->len) {
		int r = flush_tx(p->fd, p->tx, &p->tx_off);
		if (r < 0) {
			g_snprintf(why, sizeof(why), "send: %s", g_strerror(-r));
			hw_peer_down(p, KVB_ERR_PEER, why);
			return false;
		}
		if (r == 1)
			hw_watch_set(p->w, G_IO_IN);
	}
	if (cond & (G_IO_IN | G_IO_HUP | G_IO_ERR)) {
		ssize_t n = fill_rx(p->fd, p->rx, KVB_MC_FRAME_HEADER_LEN + STREAM_FRAME_MAX);
		bool alive = stream_frames(p);
		if (!alive)
			return false; /* hw_peer_down freed the watch */
		if (n < 0) {
			g_snprintf(why, sizeof(why), "%s",
				   n == -1 ? "connection closed by the peer" : g_strerror((int)-n));
			hw_peer_down(p, KVB_ERR_PEER, why);
			return false;
		}
	}
	return true;
}

static void stream_connect_timeout(void *obj)
{
	hw_peer_t *p = obj;
	if (p->state == HW_PEER_CONNECTING)
		hw_peer_down(p, KVB_ERR_TIMEOUT, "no hello answer within the connect timeout");
}

static int stream_connect(hw_peer_t *p, const char *host, uint16_t port)
{
	hw_t *hw = p->hw;
	kvb_err_t err;
	g_strlcpy(p->host, host, sizeof(p->host));
	p->port = port;
	p->fd = hw_tcp_connect(host, port, NULL, &err);
	if (p->fd < 0) {
		hw_set_error(hw, "%s", err.msg);
		return KVB_ERR_PEER;
	}
	char *desc = hw_descriptor_json(hw);
	stream_queue(p, KVB_MC_KVB_HELLO, desc, strlen(desc));
	g_free(desc);
	p->w = hw_watch_new(hw, p->fd, G_IO_OUT | G_IO_IN, stream_io, p);
	p->connect_deadline = hw_deadline_new(hw, stream_connect_timeout, p);
	hw_deadline_arm(p->connect_deadline, hw->p.connect_timeout_ns);
	return KVB_INPROGRESS;
}

/* ---- handshake listener --------------------------------------------------- */

static void rpc_session_free(rpc_session_t *s)
{
	g_queue_remove(&s->hw->rpc_sessions, s);
	hw_watch_free(s->w);
	hw_deadline_free(s->deadline);
	if (s->fd >= 0)
		close(s->fd);
	g_byte_array_unref(s->rx);
	g_byte_array_unref(s->tx);
	g_free(s);
}

static void rpc_session_timeout(void *obj)
{
	rpc_session_free(obj);
}

static void rpc_reply(rpc_session_t *s, kvb_mc_msg_type_t type, const char *json)
{
	kvb_mc_frame_encode(s->tx, type, json, strlen(json));
	s->replied = true;
	hw_watch_set(s->w, G_IO_OUT | G_IO_IN);
}

/* Turn the session into an incoming kvbridge stream: the hello holds the
 * peer's descriptor; answer with ours once the core accepted. */
static void rpc_to_stream(rpc_session_t *s, const uint8_t *payload, size_t len, size_t consumed)
{
	hw_t *hw = s->hw;
	kvb_mc_segment_t seg;
	kvb_err_t err;
	if (kvb_mc_segment_from_json((const char *)payload, len, &seg, &err) != KVB_OK) {
		hw->stats.handshake_errors++;
		hw_set_error(hw, "kvbridge hello refused: %s", err.msg);
		rpc_session_free(s);
		return;
	}
	hw_peer_t *p = hw_peer_new(hw, HW_PEER_KVB, seg.name);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[NI_MAXHOST] = "";
	if (getpeername(s->fd, (struct sockaddr *)&ss, &sl) == 0)
		getnameinfo((struct sockaddr *)&ss, sl, host, sizeof(host), NULL, 0, NI_NUMERICHOST);
	g_strlcpy(p->host, host, sizeof(p->host));
	if (hw_peer_set_segment(p, &seg, host, &err) != KVB_OK) {
		hw->stats.handshake_errors++;
		hw_set_error(hw, "kvbridge hello from %s refused: %s", host, err.msg);
		hw_peer_free(p);
		rpc_session_free(s);
		return;
	}
	/* the socket moves to the peer; bytes after the hello stay in rx */
	p->fd = s->fd;
	s->fd = -1;
	g_byte_array_append(p->rx, s->rx->data + consumed, s->rx->len - consumed);
	p->hello_sent = p->hello_done = true;
	p->state = HW_PEER_UP;
	hw->stats.streams_opened++;
	rpc_session_free(s);
	hw_peer_announce(p);
}

/* Answer one frame.  Returns false when the session was freed. */
static bool rpc_handle(rpc_session_t *s, kvb_mc_msg_type_t type, const uint8_t *payload,
		       size_t len, size_t consumed)
{
	hw_t *hw = s->hw;
	kvb_err_t err;
	switch (type) {
	case KVB_MC_METADATA: {
		char *desc = hw_descriptor_json(hw);
		rpc_reply(s, type, desc);
		g_free(desc);
		break;
	}
	case KVB_MC_NOTIFY: {
		kvb_mc_notify_t n;
		if (kvb_mc_notify_from_json((const char *)payload, len, &n, &err) != KVB_OK) {
			hw->stats.handshake_errors++;
			hw_set_error(hw, "notify refused: %s", err.msg);
			rpc_session_free(s);
			return false;
		}
		hw_log(hw, "notify from %s: %s", n.name, n.notify_msg);
		rpc_reply(s, type, kvb_mc_notify_reply_json());
		break;
	}
	case KVB_MC_PROBE:
		rpc_reply(s, type, kvb_mc_probe_reply_json());
		break;
	case KVB_MC_CONNECTION: {
		/* RDMA queue pairs (a refusal with reply_msg when we have none, the
		 * way Mooncake refuses, so the peer reports a reason) */
		kvb_mc_handshake_t hs;
		if (kvb_mc_handshake_from_json((const char *)payload, len, &hs, &err) != KVB_OK) {
			hw->stats.handshake_errors++;
			hw_set_error(hw, "connection handshake refused: %s", err.msg);
			rpc_session_free(s);
			return false;
		}
		char *reply = hw_rdma_handshake(hw, &hs);
		rpc_reply(s, type, reply);
		g_free(reply);
		break;
	}
	case KVB_MC_KVB_HELLO:
		rpc_to_stream(s, payload, len, consumed);
		return false;
	default:
		hw->stats.handshake_errors++;
		hw_set_error(hw, "handshake frame of type %d refused", (int)type);
		rpc_session_free(s);
		return false;
	}
	hw->stats.handshakes_served++;
	return true;
}

static bool rpc_session_io(void *obj, GIOCondition cond)
{
	rpc_session_t *s = obj;
	hw_t *hw = s->hw;
	if (s->replied) {
		if (s->tx->len) {
			int r = flush_tx(s->fd, s->tx, &s->tx_off);
			if (r < 0) {
				rpc_session_free(s);
				return false;
			}
			if (r == 0)
				return true;
			/* all sent: half-close, then wait for the client's close */
			shutdown(s->fd, SHUT_WR);
			hw_watch_set(s->w, G_IO_IN);
		}
		if (cond & (G_IO_IN | G_IO_HUP | G_IO_ERR)) {
			char sink[256];
			ssize_t n = recv(s->fd, sink, sizeof(sink), 0);
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
				rpc_session_free(s);
				return false;
			}
		}
		return true;
	}
	ssize_t n = fill_rx(s->fd, s->rx, KVB_MC_FRAME_HEADER_LEN + hw->p.handshake_max);
	if (s->rx->len >= KVB_MC_FRAME_HEADER_LEN) {
		uint64_t body;
		kvb_err_t err;
		if (kvb_mc_frame_header(s->rx->data, hw->p.handshake_max, &body, &err) != KVB_OK) {
			hw->stats.handshake_errors++;
			hw_set_error(hw, "handshake refused: %s", err.msg);
			rpc_session_free(s);
			return false;
		}
		if (s->rx->len >= KVB_MC_FRAME_HEADER_LEN + body) {
			kvb_mc_msg_type_t type;
			const uint8_t *payload;
			size_t plen;
			if (kvb_mc_frame_body(s->rx->data + KVB_MC_FRAME_HEADER_LEN, body, &type, &payload,
					      &plen, &err) != KVB_OK) {
				hw->stats.handshake_errors++;
				hw_set_error(hw, "handshake refused: %s", err.msg);
				rpc_session_free(s);
				return false;
			}
			/* may free the session (errors, and a hello that becomes a stream) */
			return rpc_handle(s, type, payload, plen, KVB_MC_FRAME_HEADER_LEN + body);
		}
	}
	if (n < 0) {
		rpc_session_free(s);
		return false;
	}
	return true;
}

static bool rpc_accept(void *obj, GIOCondition cond)
{
	hw_t *hw = obj;
	(void)cond;
	for (int i = 0; i < 64; i++) {
		int fd = accept(hw->rpc_fd, NULL, NULL);
		if (fd < 0)
			break;
		sock_tune(fd);
		rpc_session_t *s = g_new0(rpc_session_t, 1);
		s->hw = hw;
		s->fd = fd;
		s->rx = g_byte_array_new();
		s->tx = g_byte_array_new();
		s->w = hw_watch_new(hw, fd, G_IO_IN, rpc_session_io, s);
		s->deadline = hw_deadline_new(hw, rpc_session_timeout, s);
		hw_deadline_arm(s->deadline, RPC_SESSION_TIMEOUT_NS);
		g_queue_push_tail(&hw->rpc_sessions, s);
	}
	return true;
}

/* Once the core accepted an incoming stream: answer the hello and watch it. */
static void stream_accepted(hw_peer_t *p)
{
	hw_t *hw = p->hw;
	char *desc = hw_descriptor_json(hw);
	kvb_mc_frame_encode(p->tx, KVB_MC_KVB_HELLO, desc, strlen(desc));
	g_free(desc);
	p->w = hw_watch_new(hw, p->fd, G_IO_IN | G_IO_OUT, stream_io, p);
	if (p->rx->len)
		stream_frames(p);
}

/* ---- Mooncake segment peers (data only) ----------------------------------- */

static void mooncake_descriptor(void *obj, int status, const char *why, kvb_mc_msg_type_t type,
				const uint8_t *payload, size_t len)
{
	hw_peer_t *p = obj;
	p->call = NULL;
	kvb_mc_segment_t seg;
	kvb_err_t err;
	if (status != KVB_OK) {
		hw_peer_down(p, status, why);
		return;
	}
	if (type != KVB_MC_METADATA ||
	    kvb_mc_segment_from_json((const char *)payload, len, &seg, &err) != KVB_OK) {
		hw_peer_down(p, KVB_ERR_PROTOCOL,
			     type != KVB_MC_METADATA ? "metadata reply of the wrong type" : err.msg);
		return;
	}
	if (hw_peer_set_segment(p, &seg, p->host, &err) != KVB_OK) {
		hw_peer_down(p, err.code, err.msg);
		return;
	}
	hw_peer_up(p);
}

/* A Mooncake Transfer Engine: fetch its descriptor (type 1, P2P), then move
 * data through its TCP transport.  It speaks no kvbridge control messages. */
static int mooncake_connect(hw_peer_t *p, const char *host, uint16_t port)
{
	hw_t *hw = p->hw;
	g_strlcpy(p->host, host, sizeof(p->host));
	p->port = port;
	char *desc = hw_descriptor_json(hw);
	p->call = hw_call_start(hw, host, port, KVB_MC_METADATA, desc, strlen(desc),
				mooncake_descriptor, p);
	g_free(desc);
	return KVB_INPROGRESS;
}

/* ------------------------------------------------------------------------ */
/* vtable: connections, data, messages, progress                             */

static int op_conn_connect(kvb_backend_t *be, kvb_conn_t *conn, const char *peer_address)
{
	hw_t *hw = hw_of(be);
	const char *a = peer_address;
	hw_peer_kind_t kind = HW_PEER_KVB;
	if (g_str_has_prefix(a, "kvb://")) {
		a += 6;
	} else if (g_str_has_prefix(a, "vllm://")) {
		a += 7;
		kind = HW_PEER_VLLM_CLIENT;
	} else if (g_str_has_prefix(a, "mooncake://")) {
		a += 11;
		kind = HW_PEER_MOONCAKE;
	} else if (strstr(a, "://")) {
		hw_set_error(hw, "peer address %s: unknown scheme (kvb://, vllm:// or mooncake://)",
			     peer_address);
		return KVB_ERR_INVALID;
	}
	char host[KVB_MC_NAME_MAX];
	uint16_t port;
	kvb_err_t err;
	if (kvb_mc_parse_host_port(a, host, sizeof(host), &port, &err) != KVB_OK) {
		hw_set_error(hw, "peer address %s: %s", peer_address, err.msg);
		return KVB_ERR_INVALID;
	}
	hw_peer_t *p = hw_peer_new(hw, kind, peer_address);
	p->conn = conn;
	*(hw_peer_t **)conn->priv = p;
	int rc;
	if (kind == HW_PEER_VLLM_CLIENT) {
		rc = hw_vllm_client_connect(p, host, port, &err);
		if (rc < 0)
			hw_set_error(hw, "%s", err.msg);
	} else if (kind == HW_PEER_MOONCAKE) {
		rc = mooncake_connect(p, host, port);
	} else {
		rc = stream_connect(p, host, port);
	}
	if (rc < 0) {
		p->conn = NULL;
		hw_peer_free(p);
		*(hw_peer_t **)conn->priv = NULL;
		return rc;
	}
	return KVB_INPROGRESS;
}

static int op_conn_accept(kvb_backend_t *be, kvb_conn_t *conn, uint64_t incoming_id)
{
	hw_t *hw = hw_of(be);
	hw_peer_t *p = g_hash_table_lookup(hw->incoming, &incoming_id);
	if (!p) {
		hw_set_error(hw, "conn_accept: unknown incoming id %" PRIu64, incoming_id);
		return KVB_ERR_NOT_FOUND;
	}
	g_hash_table_remove(hw->incoming, &incoming_id);
	p->incoming_id = 0;
	p->conn = conn;
	*(hw_peer_t **)conn->priv = p;
	if (p->state == HW_PEER_DOWN) {
		/* went away between the announcement and the accept */
		kvb_event_t ev = {.type = KVB_EV_CONN_DOWN, .conn = conn, .status = KVB_ERR_PEER};
		hw_event_push(hw, &ev);
		return KVB_OK;
	}
	if (p->kind == HW_PEER_KVB)
		stream_accepted(p);
	else
		hw_vllm_accepted(p);
	return KVB_OK;
}

static void op_conn_close(kvb_backend_t *be, kvb_conn_t *conn)
{
	hw_t *hw = hw_of(be);
	/* no later event names the conn */
	for (guint i = 0; i < hw->events->len;) {
		kvb_event_t *ev = &g_array_index(hw->events, kvb_event_t, i);
		if (ev->conn == conn) {
			if (ev->type == KVB_EV_MSG)
				g_free((void *)ev->data);
			g_array_remove_index(hw->events, i);
		} else {
			i++;
		}
	}
	hw_peer_t *p = peer_of(conn);
	if (!p)
		return;
	p->conn = NULL;
	*(hw_peer_t **)conn->priv = NULL;
	if (p->kind == HW_PEER_VLLM_CLIENT || p->kind == HW_PEER_VLLM_SESSION) {
		hw_vllm_peer_closed(p);
		return;
	}
	/* orderly: what is queued on the stream is still written (best effort,
	 * without blocking), then the socket closes and the peer sees EOF */
	if (p->fd >= 0 && p->tx->len)
		flush_tx(p->fd, p->tx, &p->tx_off);
	hw_peer_free(p);
}

static int op_xfer_post(kvb_backend_t *be, kvb_conn_t *conn, const kvb_slice_op_t *ops, size_t n,
			size_t *n_posted)
{
	hw_t *hw = hw_of(be);
	hw_peer_t *p = peer_of(conn);
	*n_posted = 0;
	if (!p || p->state != HW_PEER_UP || !p->have_seg) {
		hw_set_error(hw, "xfer_post: connection %s is not up", p ? p->addr : "?");
		return KVB_ERR_PEER;
	}
	for (size_t i = 0; i < n; i++) {
		const kvb_slice_op_t *op = &ops[i];
		hw_mr_t *m = hw_mr_find(hw, op->local_addr, op->len);
		if (!m) {
			hw_set_error(hw, "xfer_post: local range 0x%" PRIx64 " + %" PRIu64
					 " is not registered memory", op->local_addr, op->len);
			return KVB_ERR_RANGE;
		}
		int rc;
		if (m->kind == KVB_MEM_CUDA && op->local_nic < KVB_HW_MAX_NICS &&
		    m->path[op->local_nic] == KVB_HW_PATH_STAGING)
			rc = hw_gpu_post(p, m, op);
		else
			rc = hw_post_one(p, op, m);
		if (rc != KVB_OK)
			return rc;
		(*n_posted)++;
	}
	return KVB_OK;
}

int hw_post_one(hw_peer_t *p, const kvb_slice_op_t *op, hw_mr_t *m)
{
	if (p->state != HW_PEER_UP || !p->have_seg) {
		hw_set_error(p->hw, "xfer_post: connection %s is not up", p->addr);
		return KVB_ERR_PEER;
	}
	return hw_rdma_peer_usable(p) ? hw_rdma_post(p, op, m, false) : hw_lane_post(p, op, m);
}

hw_t *hw_of_backend(kvb_backend_t *be)
{
	return hw_of(be);
}

static int op_msg_send(kvb_backend_t *be, kvb_conn_t *conn, const void *buf, size_t len)
{
	hw_t *hw = hw_of(be);
	hw_peer_t *p = peer_of(conn);
	if (!p || p->state != HW_PEER_UP) {
		hw_set_error(hw, "msg_send: connection %s is down", p ? p->addr : "?");
		return KVB_ERR_PEER;
	}
	if (len > KVB_MSG_MAX) {
		hw_set_error(hw, "msg_send: %zu bytes exceed %u", len, KVB_MSG_MAX);
		return KVB_ERR_INVALID;
	}
	if (p->kind == HW_PEER_MOONCAKE) {
		hw_set_error(hw, "msg_send: %s is a Mooncake segment (data only)", p->addr);
		return KVB_ERR_UNSUPPORTED;
	}
	if (p->kind != HW_PEER_KVB)
		return hw_vllm_msg_send(p, buf, len);
	stream_queue(p, KVB_MC_KVB_FRAME, buf, len);
	return KVB_OK;
}

static int op_event_poll(kvb_backend_t *be, kvb_event_t *events, int max)
{
	hw_t *hw = hw_of(be);
	/* the messages handed out last time are no longer needed */
	g_ptr_array_set_size(hw->held, 0);
	if (!hw->events->len && g_main_context_acquire(hw->ctx)) {
		/* not inside someone's dispatch of this context: run what is ready */
		if (g_main_depth() == 0)
			for (int i = 0; i < DISPATCH_ROUNDS && g_main_context_iteration(hw->ctx, FALSE); i++)
				;
		g_main_context_release(hw->ctx);
	}
	int n = (int)MIN((guint)max, hw->events->len);
	for (int i = 0; i < n; i++) {
		events[i] = g_array_index(hw->events, kvb_event_t, i);
		if (events[i].type == KVB_EV_MSG)
			g_ptr_array_add(hw->held, (void *)events[i].data);
	}
	g_array_remove_range(hw->events, 0, (guint)n);
	return n;
}

static const char *op_last_error(kvb_backend_t *be)
{
	return hw_of(be)->last_error;
}

static int op_ext_get(kvb_backend_t *be, const char *name, const void **ext)
{
	(void)be;
	(void)ext;
	(void)name;
	return KVB_ERR_NOT_FOUND;
}

/* ------------------------------------------------------------------------ */
/* lifecycle                                                                */

static void hw_free_all(hw_t *hw)
{
	hw_vllm_stop(hw);
	while (hw->rpc_sessions.head)
		rpc_session_free(hw->rpc_sessions.head->data);
	while (hw->peers.head) {
		hw_peer_t *p = hw->peers.head->data;
		hw_lanes_free(p);
		if (p->conn)
			*(hw_peer_t **)p->conn->priv = NULL;
		p->conn = NULL;
		hw_peer_free(p);
	}
	hw_tcp_server_stop(hw);
	/* copies into or out of registrations (and their mirrors) end first;
	 * mirrors are freed by the GPU code, the pool deregistered by RDMA */
	if (hw->mrs)
		for (guint i = 0; i < hw->mrs->len; i++) {
			hw_gpu_quiesce(hw, hw->mrs->pdata[i]);
			hw_rdma_mr_dereg(hw, hw->mrs->pdata[i]);
			g_free(hw->mrs->pdata[i]); /* left registered by the owner */
		}
	hw_gpu_close(hw);
	hw_rdma_close(hw);
	/* after their owners (peers, sessions, endpoints, probes) have cancelled
	 * theirs: what is left has no owner (fire-and-forget acks) */
	while (hw->calls.head)
		call_free(hw->calls.head->data);
	hw_watch_free(hw->rpc_w);
	if (hw->rpc_fd >= 0)
		close(hw->rpc_fd);
	if (hw->timer_src) {
		g_source_destroy(hw->timer_src);
		g_source_unref(hw->timer_src);
	}
	if (hw->timers)
		g_sequence_free(hw->timers);
	if (hw->timer_by_id)
		g_hash_table_destroy(hw->timer_by_id);
	if (hw->incoming)
		g_hash_table_destroy(hw->incoming);
	if (hw->events) {
		for (guint i = 0; i < hw->events->len; i++) {
			kvb_event_t *ev = &g_array_index(hw->events, kvb_event_t, i);
			if (ev->type == KVB_EV_MSG)
				g_free((void *)ev->data);
		}
		g_array_free(hw->events, TRUE);
	}
	if (hw->held)
		g_ptr_array_free(hw->held, TRUE);
	if (hw->mrs)
		g_ptr_array_free(hw->mrs, TRUE);
	if (hw->fences)
		g_array_free(hw->fences, TRUE);
	if (hw->ctx) {
		/* our own context: let destroyed sources finalize */
		if (hw->own_ctx)
			while (g_main_context_iteration(hw->ctx, FALSE))
				;
		g_main_context_unref(hw->ctx);
	}
}

static int op_instance_open(kvb_backend_t *be, const void *args, kvb_err_t *err)
{
	hw_t *hw = hw_of(be);
	memset(hw, 0, sizeof(*hw));
	hw->be = be;
	hw->rpc_fd = -1;
	const kvb_hw_args_t *a = args;
	kvb_hw_params_default(&hw->p);
	if (a && a->params)
		hw->p = *a->params;
	kvb_hw_params_t *p = &hw->p;
	if (!p->n_nics || p->n_nics > KVB_HW_MAX_NICS)
		return kvb_err_set(err, KVB_ERR_CONFIG, "n_nics %u out of range 1..%u", p->n_nics,
				   KVB_HW_MAX_NICS);
	if (p->handshake_max < 1024 || p->handshake_max > KVB_MC_HANDSHAKE_MAX_LIMIT)
		return kvb_err_set(err, KVB_ERR_CONFIG, "handshake_max %u out of range 1024..%u",
				   p->handshake_max, KVB_MC_HANDSHAKE_MAX_LIMIT);
	if (p->tcp_proto_version < 1 || p->tcp_proto_version > 2)
		return kvb_err_set(err, KVB_ERR_CONFIG, "tcp_proto_version %u: expected 1 or 2",
				   p->tcp_proto_version);
	if (p->rpc_port_min < 1024 || p->rpc_port_min > p->rpc_port_max)
		return kvb_err_set(err, KVB_ERR_CONFIG, "rpc port range %u..%u invalid",
				   p->rpc_port_min, p->rpc_port_max);
	if (!p->lane_depth)
		return kvb_err_set(err, KVB_ERR_CONFIG, "lane_depth must be >= 1");
	if (p->staging_chunk < 4096 || p->staging_chunk > (UINT64_C(1) << 30) ||
	    p->staging_bytes < p->staging_chunk)
		return kvb_err_set(err, KVB_ERR_CONFIG, "staging: chunk %" PRIu64 " bytes (4 KiB..1 GiB) "
				   "and pool %" PRIu64 " bytes (at least one chunk)", p->staging_chunk,
				   p->staging_bytes);
	if (p->tcp_lanes > KVB_HW_MAX_LANES)
		return kvb_err_set(err, KVB_ERR_CONFIG, "tcp_lanes %u out of range 1..%u", p->tcp_lanes,
				   KVB_HW_MAX_LANES);
	/* own copies of the strings */
	g_strlcpy(hw->host, p->host && *p->host ? p->host : "127.0.0.1", sizeof(hw->host));
	g_strlcpy(hw->bind_host, p->bind_host ? p->bind_host : "0.0.0.0", sizeof(hw->bind_host));
	g_strlcpy(hw->side_host, p->side_channel_host ? p->side_channel_host : hw->bind_host,
		  sizeof(hw->side_host));
	p->host = hw->host;
	p->bind_host = hw->bind_host;
	p->side_channel_host = hw->side_host;
	for (uint32_t i = 0; i < KVB_HW_MAX_NICS; i++) {
		if (i < p->n_nics && p->nic_addrs[i])
			g_strlcpy(hw->nic_addrs[i], p->nic_addrs[i], sizeof(hw->nic_addrs[i]));
		p->nic_addrs[i] = hw->nic_addrs[i];
	}
	hw->debug = g_strcmp0(g_getenv("KVB_HW_DEBUG"), "1") == 0;
	if (p->context) {
		hw->ctx = g_main_context_ref(p->context);
	} else {
		hw->ctx = g_main_context_new();
		hw->own_ctx = true;
	}
	g_queue_init(&hw->rpc_sessions);
	g_queue_init(&hw->calls);
	g_queue_init(&hw->peers);
	hw->incoming = g_hash_table_new(g_int64_hash, g_int64_equal);
	hw->events = g_array_new(FALSE, FALSE, sizeof(kvb_event_t));
	hw->held = g_ptr_array_new_with_free_func(g_free);
	hw->timers = g_sequence_new(g_free);
	hw->timer_by_id = g_hash_table_new(g_int64_hash, g_int64_equal);
	hw->mrs = g_ptr_array_new();
	hw->fences = g_array_new(FALSE, FALSE, sizeof(uint64_t));
	hw->timer_src = g_source_new(&timer_src_funcs, sizeof(GSource) + sizeof(hw_t *));
	*(hw_t **)((char *)hw->timer_src + sizeof(GSource)) = hw;
	g_source_set_ready_time(hw->timer_src, -1);
	g_source_attach(hw->timer_src, hw->ctx);

	hw->rpc_fd = hw_tcp_listen(hw->bind_host, p->rpc_port, p->rpc_port_min, p->rpc_port_max,
				   &hw->rpc_port, err);
	if (hw->rpc_fd < 0)
		goto fail;
	g_snprintf(hw->segment, sizeof(hw->segment), strchr(hw->host, ':') ? "[%s]:%u" : "%s:%u",
		   hw->host, hw->rpc_port);
	hw->rpc_w = hw_watch_new(hw, hw->rpc_fd, G_IO_IN, rpc_accept, hw);
	if (hw_tcp_server_start(hw, err) != KVB_OK)
		goto fail;
	if (hw_gpu_open(hw, err) != KVB_OK)
		goto fail;
	if (p->rdma_devices && *p->rdma_devices) {
		g_strlcpy(hw->rdma_devices, p->rdma_devices, sizeof(hw->rdma_devices));
		p->rdma_devices = hw->rdma_devices;
		if (p->mtu && p->mtu != 512 && p->mtu != 1024 && p->mtu != 2048 && p->mtu != 4096) {
			kvb_err_set(err, KVB_ERR_CONFIG, "mtu %u: expected 512, 1024, 2048 or 4096", p->mtu);
			goto fail;
		}
		if (p->qp_per_ep > KVB_MC_MAX_QP) {
			kvb_err_set(err, KVB_ERR_CONFIG, "qp_per_ep %u out of range 1..%u", p->qp_per_ep,
				    KVB_MC_MAX_QP);
			goto fail;
		}
		if (hw_rdma_open(hw, err) != KVB_OK)
			goto fail;
	} else {
		p->rdma_devices = NULL;
	}
	if (p->side_channel_port && hw_vllm_start(hw, err) != KVB_OK)
		goto fail;
	hw_log(hw, "up: handshake port %u, data port %u", hw->rpc_port, kvb_hw_data_port(be));
	return KVB_OK;
fail:
	hw_free_all(hw);
	return err ? err->code : KVB_ERR_CONFIG;
}

static void op_instance_close(kvb_backend_t *be)
{
	hw_free_all(hw_of(be));
}

static kvb_backend_ops_t hw_ops = {
	.abi = KVB_BACKEND_ABI,
	.size = sizeof(kvb_backend_ops_t),
	.name = "hw",
	.instance_size = sizeof(hw_t),
	.conn_size = sizeof(hw_peer_t *),
	.instance_open = op_instance_open,
	.instance_close = op_instance_close,
	.clock_now_ns = op_clock_now_ns,
	.timer_arm = op_timer_arm,
	.timer_cancel = op_timer_cancel,
	.random_fill = op_random_fill,
	.nic_count = op_nic_count,
	.nic_query = op_nic_query,
	.mr_reg = op_mr_reg,
	.mr_dereg = op_mr_dereg,
	.conn_connect = op_conn_connect,
	.conn_accept = op_conn_accept,
	.conn_close = op_conn_close,
	.xfer_post = op_xfer_post,
	.msg_send = op_msg_send,
	.event_poll = op_event_poll,
	.last_error = op_last_error,
	.ext_get = op_ext_get,
};

/* ------------------------------------------------------------------------ */
/* public API                                                               */

const kvb_backend_ops_t *kvb_hw_backend_ops(void)
{
	return &hw_ops;
}

void kvb_hw_params_default(kvb_hw_params_t *p)
{
	memset(p, 0, sizeof(*p));
	p->host = "127.0.0.1";
	p->bind_host = "0.0.0.0";
	p->rpc_port_min = 15000;
	p->rpc_port_max = 17000;
	p->n_nics = 1;
	p->handshake_max = KVB_MC_HANDSHAKE_MAX_DEFAULT;
	p->tcp_proto_version = 2;
	p->connect_timeout_ns = 5 * G_GUINT64_CONSTANT(1000000000);
	p->status_timeout_ns = 30 * G_GUINT64_CONSTANT(1000000000);
	p->lane_depth = 4096;
	p->tcp_lanes = 4;
	p->ib_port = 1;
	p->gid_index = -1;
	p->mtu = 4096;
	p->qp_per_ep = 2;
	p->max_wr = 256;
	p->rdma_stall_timeout_ns = 10 * G_GUINT64_CONSTANT(1000000000);
	p->rdma_peer_probe_ns = 30 * G_GUINT64_CONSTANT(1000000000);
	p->staging_bytes = 64u << 20;
	p->staging_chunk = 4u << 20;
}

static bool env_u64(char **envp, const char *name, uint64_t min, uint64_t max, uint64_t *out,
		    kvb_err_t *err, int *rc)
{
	const char *v = envp ? g_environ_getenv(envp, name) : g_getenv(name);
	if (!v)
		return false;
	char *end = NULL;
	errno = 0;
	guint64 x = g_ascii_strtoull(v, &end, 10);
	if (!*v || *end || errno || x < min || x > max) {
		*rc = kvb_err_set(err, KVB_ERR_CONFIG,
				  "%s=%s: expected an integer in %" PRIu64 "..%" PRIu64, name, v, min,
				  max);
		return false;
	}
	*out = x;
	return true;
}

int kvb_hw_params_apply_env(kvb_hw_params_t *p, char **envp, kvb_err_t *err)
{
	int rc = KVB_OK;
	uint64_t v;
	if (env_u64(envp, "MC_HANDSHAKE_MAX_LENGTH", KVB_MC_HANDSHAKE_MAX_DEFAULT,
		    KVB_MC_HANDSHAKE_MAX_LIMIT, &v, err, &rc))
		p->handshake_max = (uint32_t)v;
	if (env_u64(envp, "MC_MIN_RPC_PORT", 1024, 65535, &v, err, &rc))
		p->rpc_port_min = (uint16_t)v;
	if (env_u64(envp, "MC_MAX_RPC_PORT", 1024, 65535, &v, err, &rc))
		p->rpc_port_max = (uint16_t)v;
	if (env_u64(envp, "MC_HANDSHAKE_CONNECT_TIMEOUT", 1, 3600, &v, err, &rc))
		p->connect_timeout_ns = v * G_GUINT64_CONSTANT(1000000000);
	if (env_u64(envp, "MC_TCP_PROTO", 1, 2, &v, err, &rc))
		p->tcp_proto_version = (uint32_t)v;
	if (env_u64(envp, "MC_TCP_LANES_PER_PEER", 1, KVB_HW_MAX_LANES, &v, err, &rc))
		p->tcp_lanes = (uint32_t)v;
	if (env_u64(envp, "KVB_STAGING_BYTES", 4096, UINT64_C(1) << 40, &v, err, &rc))
		p->staging_bytes = v;
	if (env_u64(envp, "KVB_STAGING_CHUNK", 4096, UINT64_C(1) << 30, &v, err, &rc))
		p->staging_chunk = v;
	if (env_u64(envp, "MC_TCP_STATUS_TIMEOUT_SEC", 1, 3600, &v, err, &rc))
		p->status_timeout_ns = v * G_GUINT64_CONSTANT(1000000000);
	if (env_u64(envp, "MC_IB_PORT", 1, 255, &v, err, &rc))
		p->ib_port = (uint8_t)v;
	if (env_u64(envp, "MC_GID_INDEX", 0, 1023, &v, err, &rc))
		p->gid_index = (int32_t)v;
	if (env_u64(envp, "MC_MTU", 512, 4096, &v, err, &rc)) {
		if (v != 512 && v != 1024 && v != 2048 && v != 4096)
			rc = kvb_err_set(err, KVB_ERR_CONFIG, "MC_MTU=%" PRIu64 ": expected 512, 1024, 2048 or 4096", v);
		else
			p->mtu = (uint32_t)v;
	}
	if (env_u64(envp, "MC_NUM_QP_PER_EP", 1, KVB_MC_MAX_QP, &v, err, &rc))
		p->qp_per_ep = (uint32_t)v;
	if (env_u64(envp, "MC_MAX_WR", 1, 65536, &v, err, &rc))
		p->max_wr = (uint32_t)v;
	if (env_u64(envp, "MC_SLICE_TIMEOUT", 0, 3600, &v, err, &rc))
		p->rdma_stall_timeout_ns = v * G_GUINT64_CONSTANT(1000000000);
	if (env_u64(envp, "KVB_RDMA_PEER_PROBE", 0, 86400, &v, err, &rc))
		p->rdma_peer_probe_ns = v * G_GUINT64_CONSTANT(1000000000);
	const char *devs = envp ? g_environ_getenv(envp, "KVB_RDMA_DEVICES") : g_getenv("KVB_RDMA_DEVICES");
	if (devs)
		p->rdma_devices = devs; /* borrowed, copied at open */
	const char *force_tcp = envp ? g_environ_getenv(envp, "MC_FORCE_TCP") : g_getenv("MC_FORCE_TCP");
	if (force_tcp && (!strcmp(force_tcp, "1") || !g_ascii_strcasecmp(force_tcp, "true")))
		p->rdma_devices = NULL;
	const char *bind = envp ? g_environ_getenv(envp, "MC_TCP_BIND_ADDRESS")
				: g_getenv("MC_TCP_BIND_ADDRESS");
	if (bind && *bind)
		p->host = bind; /* borrowed from the environment, copied at open */
	if (rc == KVB_OK && p->rpc_port_min > p->rpc_port_max)
		rc = kvb_err_set(err, KVB_ERR_CONFIG, "MC_MIN_RPC_PORT %u > MC_MAX_RPC_PORT %u",
				 p->rpc_port_min, p->rpc_port_max);
	return rc;
}

int kvb_hw_open(const kvb_hw_params_t *params, kvb_backend_t **out, kvb_err_t *err)
{
	kvb_hw_args_t args = {.params = params};
	return kvb_backend_open(kvb_hw_backend_ops(), &args, out, err);
}

GMainContext *kvb_hw_context(kvb_backend_t *be)
{
	return hw_of(be)->ctx;
}

const char *kvb_hw_segment_name(kvb_backend_t *be)
{
	return hw_of(be)->segment;
}

uint16_t kvb_hw_rpc_port(kvb_backend_t *be)
{
	return hw_of(be)->rpc_port;
}

uint16_t kvb_hw_side_channel_port(kvb_backend_t *be)
{
	hw_t *hw = hw_of(be);
	return hw->vllm ? hw->p.side_channel_port : 0;
}

uint16_t kvb_hw_data_port(kvb_backend_t *be)
{
	return hw_tcp_server_port(hw_of(be));
}

int kvb_hw_set_vllm_layout(kvb_backend_t *be, const kvb_region_t *regions, uint32_t n,
			   uint32_t tp_size, uint32_t tp_rank, kvb_err_t *err)
{
	return hw_vllm_set_layout(hw_of(be), regions, n, tp_size, tp_rank, err);
}

void kvb_hw_set_notify(kvb_backend_t *be, void (*fn)(void *user), void *user)
{
	hw_t *hw = hw_of(be);
	hw->notify = fn;
	hw->notify_user = user;
}

static void wait_timeout(void *obj)
{
	*(bool *)obj = true;
}

bool kvb_hw_wait(kvb_backend_t *be, uint64_t timeout_ns)
{
	hw_t *hw = hw_of(be);
	if (hw->events->len)
		return true;
	if (!g_main_context_acquire(hw->ctx))
		return false;
	if (timeout_ns == 0) {
		for (int i = 0; i < DISPATCH_ROUNDS && g_main_context_iteration(hw->ctx, FALSE); i++)
			;
	} else {
		bool expired = false;
		hw_deadline_t *d = hw_deadline_new(hw, wait_timeout, &expired);
		hw_deadline_arm(d, timeout_ns);
		while (!hw->events->len && !expired)
			g_main_context_iteration(hw->ctx, TRUE);
		hw_deadline_free(d);
	}
	g_main_context_release(hw->ctx);
	return hw->events->len > 0;
}

int kvb_hw_peer_buffer(kvb_backend_t *be, kvb_conn_t *conn, uint32_t i, uint64_t *addr,
		       uint64_t *len)
{
	(void)be;
	hw_peer_t *p = conn ? peer_of(conn) : NULL;
	if (!p || !p->have_seg || i >= p->seg.n_buffers)
		return KVB_ERR_NOT_FOUND;
	*addr = p->seg.buffers[i].addr;
	*len = p->seg.buffers[i].length;
	return KVB_OK;
}

void kvb_hw_stats_get(kvb_backend_t *be, kvb_hw_stats_t *out)
{
	hw_t *hw = hw_of(be);
	*out = hw->stats;
	out->rdma_endpoints = hw_rdma_endpoint_count(hw);
}
