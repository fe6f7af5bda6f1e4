/*
 * GPU memory for the hw backend.
 *
 * Memory the core registers with kind KVB_MEM_CUDA belongs to a provider:
 *   cuda      device memory from the CUDA runtime (configure --with-cuda)
 *   emulated  kvb_hw_emu_gpu_alloc(): a memfd mapped twice, the "device"
 *             mapping PROT_NONE so that a transport touching it directly
 *             faults, and a second mapping the provider copies through.
 *             It gives machines without a GPU (CI) the same code paths.
 *
 * At registration the path is chosen per NIC and kept in the hw_mr:
 *   RDMA NIC  dma-buf (cuMemGetHandleForAddressRange, ibv_reg_dmabuf_mr),
 *             else peer memory (ibv_reg_mr on the device pointer, as with
 *             nvidia-peermem), else staging (kvb_hw_rdma.c tries them).
 *   TCP       staging: a socket cannot read device memory.
 *
 * Staging on the side that posts: an op whose local range is device memory
 * on a staging NIC is cut into pieces of at most one bounce chunk (pinned
 * host memory, registered on every RDMA device for local access only).  The
 * pool is carved in 64 KiB units, so a small piece (one 16 KiB block) takes
 * one unit and many of them fly at once, while a long op moves a chunk per
 * piece.  A
 * WRITE copies device -> chunk, then the transport posts from the chunk; a
 * READ lands in the chunk, then copies chunk -> device.  The op completes
 * when all its pieces have, with the first failure's status.  The pool is
 * fixed (params.staging_bytes); ops wait for room in order.
 *
 * Staging on the side that serves: the TCP data server receives a write
 * into a chunk and copies it to the device before it acknowledges, and
 * copies device -> chunk before it sends a read (kvb_hw_tcp.c).  One-sided
 * RDMA never tells the target that bytes landed, so an RDMA device that
 * cannot reach a GPU registration exposes a pinned host mirror of it,
 * registered at the GPU addresses (ibv_reg_mr_iova), under the descriptor
 * extension kvb_mirror_rkey (its plain rkey stays 0: a Mooncake peer fails
 * instead of writing where nothing reads).  A kvbridge peer writing there
 * sends SYNC (mirror -> GPU) on the control stream after its WRITE and
 * completes the op when SYNCED comes back; before a READ it asks for GPU ->
 * mirror first.  The peer's DONE notice follows its completions on the same
 * ordered stream, so the consumer's core never sees DONE before the bytes
 * are in GPU memory.
 *
 * Copies never block the loop: cudaMemcpyAsync on one stream per device,
 * then cudaLaunchHostFunc pushes the record onto a done list and writes an
 * eventfd watched on the instance's context.  The emulated provider copies
 * at once and signals the same eventfd, so its completions travel the same
 * road.
 */
#define _GNU_SOURCE /* memfd_create */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#ifdef KVB_HAVE_CUDA
#include <cuda.h>
#include <cuda_runtime_api.h>
#endif

#include <glib.h>
#include <kvbridge/kvbridge.h>

#include "kvb_hw_int.h"

#define GPU_MAX_DEVICES 64
#define STAGE_RETRY_NS (1000u * 1000u) /* a transport queue was full: try again */

/* ------------------------------------------------------------------------ */
/* emulated device memory (process-wide)                                    */

typedef struct emu_alloc {
	uint8_t *dev;    /* PROT_NONE: what the application and the core see */
	uint8_t *shadow; /* read-write view of the same pages */
	size_t len;
} emu_alloc_t;

static GMutex emu_lock;
static GArray *emu_allocs; /* emu_alloc_t */

static bool emu_find(uint64_t addr, uint64_t len, emu_alloc_t *out)
{
	bool found = false;
	g_mutex_lock(&emu_lock);
	for (guint i = 0; emu_allocs && i < emu_allocs->len; i++) {
		emu_alloc_t *a = &g_array_index(emu_allocs, emu_alloc_t, i);
		uint64_t base = (uint64_t)(uintptr_t)a->dev;
		if (addr >= base && addr - base <= a->len && len <= a->len - (addr - base)) {
			*out = *a;
			found = true;
			break;
		}
	}
	g_mutex_unlock(&emu_lock);
	return found;
}

void *kvb_hw_emu_gpu_alloc(size_t len)
{
	if (!len)
		return NULL;
	int fd = memfd_create("kvb-emu-gpu", MFD_CLOEXEC);
	if (fd < 0)
		return NULL;
	if (ftruncate(fd, (off_t)len) != 0) {
		close(fd);
		return NULL;
	}
	void *dev = mmap(NULL, len, PROT_NONE, MAP_SHARED, fd, 0);
	void *shadow = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (dev == MAP_FAILED || shadow == MAP_FAILED) {
		if (dev != MAP_FAILED)
			munmap(dev, len);
		if (shadow != MAP_FAILED)
			munmap(shadow, len);
		return NULL;
	}
	emu_alloc_t a = {dev, shadow, len};
	g_mutex_lock(&emu_lock);
	if (!emu_allocs)
		emu_allocs = g_array_new(FALSE, FALSE, sizeof(emu_alloc_t));
	g_array_append_val(emu_allocs, a);
	g_mutex_unlock(&emu_lock);
	return dev;
}

void kvb_hw_emu_gpu_free(void *dev)
{
	emu_alloc_t a = {0};
	bool found = false;
	g_mutex_lock(&emu_lock);
	for (guint i = 0; emu_allocs && i < emu_allocs->len; i++) {
		if (g_array_index(emu_allocs, emu_alloc_t, i).dev == dev) {
			a = g_array_index(emu_allocs, emu_alloc_t, i);
			g_array_remove_index_fast(emu_allocs, i);
			found = true;
			break;
		}
	}
	if (emu_allocs && !emu_allocs->len) {
		g_array_free(emu_allocs, TRUE);
		emu_allocs = NULL;
	}
	g_mutex_unlock(&emu_lock);
	if (found) {
		munmap(a.dev, a.len);
		munmap(a.shadow, a.len);
	}
}

/* Host pointer through which [addr, addr + len) of emulated memory is
 * reachable, or addr itself when it is not emulated memory. */
static uint8_t *emu_view(uint64_t addr, uint64_t len)
{
	emu_alloc_t a;
	if (emu_find(addr, len, &a))
		return a.shadow + (addr - (uint64_t)(uintptr_t)a.dev);
	return (uint8_t *)(uintptr_t)addr;
}

int kvb_hw_emu_gpu_copy(void *dst, const void *src, size_t len)
{
	if (!len)
		return KVB_OK;
	if (!dst || !src)
		return KVB_ERR_INVALID;
	memcpy(emu_view((uint64_t)(uintptr_t)dst, len), emu_view((uint64_t)(uintptr_t)src, len), len);
	return KVB_OK;
}

/* ------------------------------------------------------------------------ */
/* instance state                                                           */

struct hw_gpu_copy {
	hw_t *hw;
	hw_gpu_copy_fn fn;
	void *arg;
	int status;
	char why[160];
	bool cancelled;
	void *orphan;          /* a bounce buffer to free once the copy is over */
};

typedef struct stage_op stage_op_t;

typedef struct stage_piece {
	stage_op_t *so;
	uint64_t off, len;
	uint32_t unit, n_units;  /* where in the pool */
	uint32_t nic;
	bool posted;           /* handed to the transport: its completion is ours */
} stage_piece_t;

struct stage_op {
	hw_peer_t *peer;
	hw_mr_t *mr;
	kvb_slice_op_t op;
	uint64_t next;         /* first byte not yet cut into a piece */
	uint32_t live;         /* pieces started, not finished */
	int status;
	uint32_t nic;
};

struct hw_gpu {
	hw_t *hw;
	int efd;
	hw_watch_t *w;
	GMutex done_lock;
	GQueue done;           /* hw_gpu_copy_t* finished (filled by CUDA's thread) */
	uint32_t in_flight;    /* copies started, callbacks not yet run */

	/* the bounce pool */
	uint8_t *pool;
	size_t pool_len, chunk_len, unit_len;
	uint32_t n_units;
	uint32_t units_free;
	uint32_t cursor;       /* where the next first-fit search starts */
	hw_mr_t pool_mr;
	uint8_t *unit_used;    /* n_units flags */
	GQueue waiting;        /* stage_op_t* with bytes not yet cut into pieces */
	GQueue parked;         /* stage_piece_t* whose post found a full queue */
	hw_deadline_t *retry;
	GHashTable *pieces;    /* every live stage_piece_t* (a transport completion's
				* cookie is one of these while it is posted) */
	GHashTable *ops;       /* every live stage_op_t* */
	GHashTable *mirrored;  /* every live mirrored_op_t* (cookies as for pieces) */
	uint64_t sync_seq;

#ifdef KVB_HAVE_CUDA
	cudaStream_t streams[GPU_MAX_DEVICES];
	bool cuda_checked, cuda_ok;
	char cuda_why[160];
	CUresult (*get_handle)(void *, CUdeviceptr, size_t, CUmemRangeHandleType, unsigned long long);
#endif
};

static hw_gpu_t *G(hw_t *hw)
{
	return *hw_gpu_slot(hw);
}

const char *kvb_hw_gpu_path_name(kvb_hw_gpu_path_t path)
{
	switch (path) {
	case KVB_HW_PATH_HOST: return "host";
	case KVB_HW_PATH_DMABUF: return "dma-buf";
	case KVB_HW_PATH_PEERMEM: return "peer-memory";
	case KVB_HW_PATH_STAGING: return "staging";
	}
	return "?";
}

static bool gpu_io(void *obj, GIOCondition cond);

int hw_gpu_open(hw_t *hw, kvb_err_t *err)
{
	hw_gpu_t *g = g_new0(hw_gpu_t, 1);
	g->hw = hw;
	g->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (g->efd < 0) {
		g_free(g);
		return kvb_err_set(err, KVB_ERR_NO_RESOURCE, "eventfd: %s", g_strerror(errno));
	}
	g_mutex_init(&g->done_lock);
	g->w = hw_watch_new(hw, g->efd, G_IO_IN, gpu_io, g);
	g->pieces = g_hash_table_new(g_direct_hash, g_direct_equal);
	g->ops = g_hash_table_new(g_direct_hash, g_direct_equal);
	g->mirrored = g_hash_table_new(g_direct_hash, g_direct_equal);
	*hw_gpu_slot(hw) = g;
	return KVB_OK;
}

static void copy_free(hw_gpu_copy_t *c);
static void pool_free(hw_gpu_t *g);

void hw_gpu_close(hw_t *hw)
{
	hw_gpu_t *g = G(hw);
	if (!g)
		return;
#ifdef KVB_HAVE_CUDA
	for (int d = 0; d < GPU_MAX_DEVICES; d++)
		if (g->streams[d]) {
			cudaStreamSynchronize(g->streams[d]);
			cudaStreamDestroy(g->streams[d]);
		}
#endif
	/* every copy has finished now: drop the records without callbacks (no
	 * event after close) */
	g_mutex_lock(&g->done_lock);
	hw_gpu_copy_t *c;
	while ((c = g_queue_pop_head(&g->done)))
		copy_free(c);
	g_mutex_unlock(&g->done_lock);
	GHashTableIter it;
	gpointer key;
	g_hash_table_iter_init(&it, g->pieces);
	while (g_hash_table_iter_next(&it, &key, NULL))
		g_free(key);
	g_hash_table_destroy(g->pieces);
	g_hash_table_iter_init(&it, g->ops);
	while (g_hash_table_iter_next(&it, &key, NULL))
		g_free(key);
	g_hash_table_destroy(g->ops);
	g_hash_table_iter_init(&it, g->mirrored);
	while (g_hash_table_iter_next(&it, &key, NULL))
		g_free(key);
	g_hash_table_destroy(g->mirrored);
	g_queue_clear(&g->waiting);
	g_queue_clear(&g->parked);
	hw_deadline_free(g->retry);
	pool_free(g);
	hw_watch_free(g->w);
	close(g->efd);
	g_mutex_clear(&g->done_lock);
	g_free(g);
	*hw_gpu_slot(hw) = NULL;
}

/* ------------------------------------------------------------------------ */
/* providers                                                                */

#ifdef KVB_HAVE_CUDA
static bool cuda_ready(hw_gpu_t *g)
{
	if (g->cuda_checked)
		return g->cuda_ok;
	g->cuda_checked = true;
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);
	if (e != cudaSuccess || n <= 0) {
		g_snprintf(g->cuda_why, sizeof(g->cuda_why), "no CUDA device (%s)",
			   e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
		cudaGetLastError();
		return false;
	}
	void *fn = NULL;
	enum cudaDriverEntryPointQueryResult q;
	if (cudaGetDriverEntryPointByVersion("cuMemGetHandleForAddressRange", &fn, 12000,
					     cudaEnableDefault, &q) == cudaSuccess &&
	    q == cudaDriverEntryPointSuccess)
		g->get_handle = (CUresult(*)(void *, CUdeviceptr, size_t, CUmemRangeHandleType,
					     unsigned long long))fn;
	cudaGetLastError();
	g->cuda_ok = true;
	return true;
}

static cudaStream_t cuda_stream(hw_gpu_t *g, int32_t device, char *why, size_t why_len)
{
	if (device < 0 || device >= GPU_MAX_DEVICES) {
		g_snprintf(why, why_len, "GPU ordinal %d out of range", device);
		return NULL;
	}
	if (!g->streams[device]) {
		cudaError_t e = cudaSetDevice(device);
		if (e == cudaSuccess)
			e = cudaStreamCreateWithFlags(&g->streams[device], cudaStreamNonBlocking);
		if (e != cudaSuccess) {
			g_snprintf(why, why_len, "cuda stream on device %d: %s", device, cudaGetErrorString(e));
			g->streams[device] = NULL;
			return NULL;
		}
	}
	return g->streams[device];
}
#endif

int hw_gpu_mr_check(hw_t *hw, hw_mr_t *m, kvb_err_t *err)
{
	emu_alloc_t a;
	if (emu_find(m->addr, m->len, &a)) {
		m->gpu_provider = HW_GPU_EMULATED;
		return KVB_OK;
	}
#ifdef KVB_HAVE_CUDA
	hw_gpu_t *g = G(hw);
	if (!cuda_ready(g))
		return kvb_err_set(err, KVB_ERR_UNSUPPORTED, "GPU memory at 0x%" PRIx64 ": %s", m->addr,
				   g->cuda_why);
	struct cudaPointerAttributes pa;
	cudaError_t e = cudaPointerGetAttributes(&pa, (void *)(uintptr_t)m->addr);
	if (e != cudaSuccess || pa.type != cudaMemoryTypeDevice) {
		cudaGetLastError();
		return kvb_err_set(err, KVB_ERR_INVALID,
				   "0x%" PRIx64 " was registered as GPU memory but is not CUDA device "
				   "memory (%s)", m->addr,
				   e != cudaSuccess ? cudaGetErrorString(e) : "host or managed memory");
	}
	if (m->device >= 0 && pa.device != m->device)
		return kvb_err_set(err, KVB_ERR_INVALID,
				   "0x%" PRIx64 " is on GPU %d, registered as GPU %d", m->addr, pa.device,
				   m->device);
	m->device = pa.device;
	m->gpu_provider = HW_GPU_CUDA;
	return KVB_OK;
#else
	(void)hw;
	return kvb_err_set(err, KVB_ERR_UNSUPPORTED,
			   "GPU memory at 0x%" PRIx64 ": this build has no CUDA (configure --with-cuda)",
			   m->addr);
#endif
}

int hw_gpu_dmabuf(hw_t *hw, const hw_mr_t *m, int *fd, char *why, size_t why_len)
{
	*fd = -1;
	if (m->gpu_provider != HW_GPU_CUDA) {
		g_snprintf(why, why_len, "emulated device memory has no dma-buf");
		return KVB_ERR_UNSUPPORTED;
	}
#ifdef KVB_HAVE_CUDA
	hw_gpu_t *g = G(hw);
	if (!g->get_handle) {
		g_snprintf(why, why_len, "the CUDA driver has no cuMemGetHandleForAddressRange");
		return KVB_ERR_UNSUPPORTED;
	}
	long page = sysconf(_SC_PAGESIZE);
	if ((m->addr | m->len) & (uint64_t)(page - 1)) {
		g_snprintf(why, why_len, "range not aligned to %ld bytes", page);
		return KVB_ERR_UNSUPPORTED;
	}
	int h = -1;
	CUresult r = g->get_handle(&h, (CUdeviceptr)m->addr, m->len, CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0);
	if (r != CUDA_SUCCESS || h < 0) {
		g_snprintf(why, why_len, "cuMemGetHandleForAddressRange: CUresult %d", (int)r);
		return KVB_ERR_UNSUPPORTED;
	}
	*fd = h;
	return KVB_OK;
#else
	(void)hw;
	g_snprintf(why, why_len, "no CUDA in this build");
	return KVB_ERR_UNSUPPORTED;
#endif
}

/* ------------------------------------------------------------------------ */
/* copies                                                                   */

static void copy_free(hw_gpu_copy_t *c)
{
	if (c->orphan)
		hw_gpu_host_free(c->hw, c->orphan);
	g_free(c);
}

static void copy_finished(hw_gpu_t *g, hw_gpu_copy_t *c)
{
	g_mutex_lock(&g->done_lock);
	g_queue_push_tail(&g->done, c);
	g_mutex_unlock(&g->done_lock);
	uint64_t one = 1;
	ssize_t w = write(g->efd, &one, sizeof(one));
	(void)w; /* EAGAIN: the counter is already non-zero, the watch fires anyway */
}

#ifdef KVB_HAVE_CUDA
static void CUDART_CB cuda_host_fn(void *arg)
{
	hw_gpu_copy_t *c = arg;
	copy_finished(G(c->hw), c);
}
#endif

static bool gpu_io(void *obj, GIOCondition cond)
{
	hw_gpu_t *g = obj;
	(void)cond;
	uint64_t v;
	ssize_t r = read(g->efd, &v, sizeof(v));
	(void)r;
	for (;;) {
		g_mutex_lock(&g->done_lock);
		hw_gpu_copy_t *c = g_queue_pop_head(&g->done);
		g_mutex_unlock(&g->done_lock);
		if (!c)
			break;
		g->in_flight--;
		if (!c->cancelled)
			c->fn(c->arg, c->status, c->why);
		copy_free(c);
	}
	return true;
}

hw_gpu_copy_t *hw_gpu_copy(hw_t *hw, const hw_mr_t *m, void *host, uint64_t dev_addr, size_t len,
			   bool to_device, hw_gpu_copy_fn fn, void *arg)
{
	hw_gpu_t *g = G(hw);
	hw_gpu_copy_t *c = g_new0(hw_gpu_copy_t, 1);
	c->hw = hw;
	c->fn = fn;
	c->arg = arg;
	g->in_flight++;
	hw_stats(hw)->gpu_copies++;
	hw_stats(hw)->gpu_staged_bytes += len;
	if (m->gpu_provider == HW_GPU_EMULATED) {
		if (to_device)
			kvb_hw_emu_gpu_copy((void *)(uintptr_t)dev_addr, host, len);
		else
			kvb_hw_emu_gpu_copy(host, (void *)(uintptr_t)dev_addr, len);
		copy_finished(g, c);
		return c;
	}
#ifdef KVB_HAVE_CUDA
	cudaStream_t s = cuda_stream(g, m->device, c->why, sizeof(c->why));
	cudaError_t e = cudaSuccess;
	if (s) {
		void *dev = (void *)(uintptr_t)dev_addr;
		e = cudaMemcpyAsync(to_device ? dev : host, to_device ? host : dev, len,
				    to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost, s);
		if (e == cudaSuccess)
			e = cudaLaunchHostFunc(s, cuda_host_fn, c);
		if (e == cudaSuccess)
			return c;
		g_snprintf(c->why, sizeof(c->why), "cudaMemcpyAsync (%zu bytes %s GPU %d): %s", len,
			   to_device ? "to" : "from", m->device, cudaGetErrorString(e));
		cudaGetLastError();
	}
#endif
	c->status = KVB_ERR_TRANSPORT;
	if (!c->why[0])
		g_snprintf(c->why, sizeof(c->why), "no provider for GPU memory at 0x%" PRIx64, dev_addr);
	copy_finished(g, c);
	return c;
}

void hw_gpu_copy_cancel(hw_gpu_copy_t *c, void *orphan)
{
	c->cancelled = true;
	c->orphan = orphan;
}

void hw_gpu_quiesce(hw_t *hw, const hw_mr_t *m)
{
#ifdef KVB_HAVE_CUDA
	hw_gpu_t *g = G(hw);
	if (g && g->in_flight && m->kind == KVB_MEM_CUDA && m->gpu_provider == HW_GPU_CUDA && m->device >= 0 &&
	    m->device < GPU_MAX_DEVICES && g->streams[m->device])
		cudaStreamSynchronize(g->streams[m->device]);
#else
	(void)hw;
	(void)m;
#endif
}

void *hw_gpu_host_alloc(hw_t *hw, size_t len)
{
#ifdef KVB_HAVE_CUDA
	hw_gpu_t *g = G(hw);
	if (cuda_ready(g)) {
		void *p = NULL;
		if (cudaHostAlloc(&p, len, cudaHostAllocPortable) == cudaSuccess)
			return p;
		cudaGetLastError();
		return NULL;
	}
#else
	(void)hw;
#endif
	void *p = NULL;
	if (posix_memalign(&p, 4096, len) != 0)
		return NULL;
	return p;
}

void hw_gpu_host_free(hw_t *hw, void *p)
{
	if (!p)
		return;
#ifdef KVB_HAVE_CUDA
	hw_gpu_t *g = G(hw);
	if (g && g->cuda_ok) {
		cudaFreeHost(p);
		return;
	}
#else
	(void)hw;
#endif
	free(p);
}

/* ------------------------------------------------------------------------ */
/* the bounce pool                                                          */

static void pool_free(hw_gpu_t *g)
{
	if (g->pool) { /* a pool exists only registered */
		hw_rdma_mr_dereg(g->hw, &g->pool_mr);
		hw_gpu_host_free(g->hw, g->pool);
	}
	g->pool = NULL;
	g_free(g->unit_used);
	g->unit_used = NULL;
}

static int pool_ensure(hw_gpu_t *g, kvb_err_t *err)
{
	if (g->pool)
		return KVB_OK;
	const kvb_hw_params_t *prm = hw_params(g->hw);
	g->chunk_len = prm->staging_chunk ? prm->staging_chunk : (4u << 20);
	g->unit_len = MIN(g->chunk_len, (size_t)64 << 10);
	g->chunk_len = g->chunk_len / g->unit_len * g->unit_len;
	uint64_t chunks = MAX((uint64_t)1, prm->staging_bytes / g->chunk_len);
	g->pool_len = (size_t)chunks * g->chunk_len;
	g->n_units = (uint32_t)(g->pool_len / g->unit_len);
	g->pool = hw_gpu_host_alloc(g->hw, g->pool_len);
	if (!g->pool)
		return kvb_err_set(err, KVB_ERR_NO_RESOURCE, "staging pool of %zu bytes: out of pinned memory",
				   g->pool_len);
	g->pool_mr.addr = (uint64_t)(uintptr_t)g->pool;
	g->pool_mr.len = g->pool_len;
	g->pool_mr.kind = KVB_MEM_HOST;
	g->pool_mr.device = -1;
	if (hw_rdma_mr_reg_local(g->hw, &g->pool_mr, err) != KVB_OK) {
		hw_gpu_host_free(g->hw, g->pool);
		g->pool = NULL;
		return err->code;
	}
	g->unit_used = g_new0(uint8_t, g->n_units);
	g->units_free = g->n_units;
	hw_log(g->hw, "staging pool: %zu bytes, pieces of up to %zu bytes in %zu-byte units",
	       g->pool_len, g->chunk_len, g->unit_len);
	return KVB_OK;
}

/* ------------------------------------------------------------------------ */
/* staged posts                                                             */

static void stage_pump(hw_gpu_t *g);

static void stage_op_finish_piece(hw_gpu_t *g, stage_piece_t *pc, int status, uint32_t nic)
{
	stage_op_t *so = pc->so;
	memset(g->unit_used + pc->unit, 0, pc->n_units);
	g->units_free += pc->n_units;
	g_hash_table_remove(g->pieces, pc);
	g_free(pc);
	if (status != KVB_OK && so->status == KVB_OK) {
		so->status = status;
		/* pieces not started yet will not be */
		if (so->next < so->op.len) {
			so->next = so->op.len;
			g_queue_remove(&g->waiting, so);
		}
	}
	so->nic = nic;
	so->live--;
	if (!so->live && so->next >= so->op.len) {
		g_hash_table_remove(g->ops, so);
		hw_xfer_done(g->hw, so->op.cookie, so->status, so->nic);
		g_free(so);
	}
	stage_pump(g);
}

static uint8_t *unit_ptr(hw_gpu_t *g, uint32_t unit)
{
	return g->pool + (size_t)unit * g->unit_len;
}

/* First fit of n contiguous free units from the cursor on; false when
 * there is no such run now. */
static bool units_take(hw_gpu_t *g, uint32_t n, uint32_t *start)
{
	if (n > g->units_free)
		return false;
	for (uint32_t tried = 0, i = g->cursor % g->n_units; tried < g->n_units;) {
		if (i + n > g->n_units) {
			tried += g->n_units - i;
			i = 0;
			continue;
		}
		uint32_t run = 0;
		while (run < n && !g->unit_used[i + run])
			run++;
		if (run == n) {
			memset(g->unit_used + i, 1, n);
			g->units_free -= n;
			g->cursor = i + n;
			*start = i;
			return true;
		}
		tried += run + 1;
		i += run + 1;
	}
	return false;
}

static void piece_post(hw_gpu_t *g, stage_piece_t *pc)
{
	stage_op_t *so = pc->so;
	kvb_slice_op_t op = so->op;
	op.local_addr = (uint64_t)(uintptr_t)unit_ptr(g, pc->unit);
	op.local_mr = &g->pool_mr;
	op.remote_addr = so->op.remote_addr + pc->off;
	op.len = pc->len;
	op.cookie = (uint64_t)(uintptr_t)pc;
	uint64_t sl = so->op.n_slices > 1 ? so->op.slice_len : so->op.len;
	op.slice_len = MIN(sl, pc->len);
	op.n_slices = (uint32_t)((pc->len + op.slice_len - 1) / op.slice_len);
	pc->posted = true;
	int rc = hw_post_one(so->peer, &op, &g->pool_mr);
	if (rc == KVB_OK)
		return;
	pc->posted = false;
	if (rc == KVB_ERR_NO_RESOURCE) {
		g_queue_push_tail(&g->parked, pc);
		hw_deadline_arm(g->retry, STAGE_RETRY_NS);
		return;
	}
	stage_op_finish_piece(g, pc, rc, so->op.local_nic);
}

static void retry_parked(void *obj)
{
	hw_gpu_t *g = obj;
	GQueue q = g->parked;
	g_queue_init(&g->parked);
	stage_piece_t *pc;
	while ((pc = g_queue_pop_head(&q)))
		piece_post(g, pc);
}

/* device -> chunk finished (WRITE): post the chunk. */
static void write_copied(void *arg, int status, const char *why)
{
	stage_piece_t *pc = arg;
	hw_gpu_t *g = G(pc->so->peer->hw);
	if (status != KVB_OK) {
		hw_set_error(g->hw, "staging: %s", why);
		stage_op_finish_piece(g, pc, status, pc->so->op.local_nic);
		return;
	}
	piece_post(g, pc);
}

/* chunk -> device finished (READ): the piece is done. */
static void read_copied(void *arg, int status, const char *why)
{
	stage_piece_t *pc = arg;
	hw_gpu_t *g = G(pc->so->peer->hw);
	if (status != KVB_OK)
		hw_set_error(g->hw, "staging: %s", why);
	stage_op_finish_piece(g, pc, status, pc->nic);
}

static bool mirrored_done(hw_gpu_t *g, uint64_t cookie, int status, uint32_t nic);

bool hw_gpu_piece_done(hw_t *hw, uint64_t cookie, int status, uint32_t nic)
{
	hw_gpu_t *g = G(hw);
	if (!g)
		return false;
	if (mirrored_done(g, cookie, status, nic))
		return true;
	stage_piece_t *pc = (stage_piece_t *)(uintptr_t)cookie;
	if (!g_hash_table_contains(g->pieces, pc) || !pc->posted)
		return false;
	pc->posted = false;
	pc->nic = nic;
	stage_op_t *so = pc->so;
	if (status == KVB_OK && so->op.opcode == KVB_XFER_READ) {
		hw_gpu_copy(hw, so->mr, unit_ptr(g, pc->unit), so->op.local_addr + pc->off, pc->len, true,
			    read_copied, pc);
		return true;
	}
	stage_op_finish_piece(g, pc, status, nic);
	return true;
}

static void stage_pump(hw_gpu_t *g)
{
	while (g->waiting.length && g->units_free) {
		stage_op_t *so = g->waiting.head->data;
		/* whole slices per piece where a slice fits in a chunk */
		uint64_t sl = so->op.n_slices > 1 ? so->op.slice_len : so->op.len;
		uint64_t take = g->chunk_len;
		if (sl <= g->chunk_len)
			take = g->chunk_len / sl * sl;
		uint64_t len = MIN(take, so->op.len - so->next);
		uint32_t n = (uint32_t)((len + g->unit_len - 1) / g->unit_len), unit;
		if (!units_take(g, n, &unit))
			break; /* in order: the head waits for room */
		stage_piece_t *pc = g_new0(stage_piece_t, 1);
		g_hash_table_add(g->pieces, pc);
		pc->so = so;
		pc->unit = unit;
		pc->n_units = n;
		pc->off = so->next;
		pc->len = len;
		pc->nic = so->op.local_nic;
		so->next += pc->len;
		so->live++;
		if (so->next >= so->op.len)
			g_queue_pop_head(&g->waiting);
		if (so->op.opcode == KVB_XFER_WRITE)
			hw_gpu_copy(g->hw, so->mr, unit_ptr(g, unit), so->op.local_addr + pc->off, pc->len,
				    false, write_copied, pc);
		else
			piece_post(g, pc);
	}
}

int hw_gpu_post(hw_peer_t *p, hw_mr_t *m, const kvb_slice_op_t *op)
{
	hw_t *hw = p->hw;
	hw_gpu_t *g = G(hw);
	kvb_err_t err;
	if (!op->len || (op->opcode != KVB_XFER_WRITE && op->opcode != KVB_XFER_READ)) {
		hw_set_error(hw, "xfer_post: empty op or unknown opcode %d", (int)op->opcode);
		return KVB_ERR_INVALID;
	}
	if (pool_ensure(g, &err) != KVB_OK) {
		hw_set_error(hw, "xfer_post: %s", err.msg);
		return err.code;
	}
	if (!g->retry)
		g->retry = hw_deadline_new(hw, retry_parked, g);
	stage_op_t *so = g_new0(stage_op_t, 1);
	so->peer = p;
	so->mr = m;
	so->op = *op;
	so->nic = op->local_nic;
	g_hash_table_add(g->ops, so);
	g_queue_push_tail(&g->waiting, so);
	stage_pump(g);
	return KVB_OK;
}

/* ------------------------------------------------------------------------ */
/* a peer's GPU memory through its mirror                                   */

typedef enum mphase {
	M_SYNC_OUT = 1,   /* READ: waiting for the peer's GPU -> mirror copy */
	M_POSTED = 2,     /* on the RDMA transport */
	M_SYNC_IN = 3,    /* WRITE done: waiting for the peer's mirror -> GPU copy */
} mphase_t;

typedef struct mirrored_op {
	hw_peer_t *peer;
	hw_mr_t *mr;           /* the local registration (or the staging pool) */
	kvb_slice_op_t op;     /* remote_key borrowed until completion, as the core promises */
	uint64_t sync_id;
	mphase_t phase;
	uint32_t nic;
} mirrored_op_t;

/* Per peer: the mirrored ops waiting for its SYNCED, and the copies it
 * asked us for. */
typedef struct gpu_peer {
	GHashTable *waiting;   /* sync id -> mirrored_op_t* */
	GQueue serving;        /* sync_serve_t* */
} gpu_peer_t;

typedef struct sync_serve {
	hw_peer_t *peer;
	uint64_t id;
	hw_gpu_copy_t *copy;
} sync_serve_t;

static gpu_peer_t *gpu_peer(hw_peer_t *p)
{
	if (!p->gpu) {
		gpu_peer_t *gp = g_new0(gpu_peer_t, 1);
		gp->waiting = g_hash_table_new(g_int64_hash, g_int64_equal);
		p->gpu = gp;
	}
	return p->gpu;
}

static void mirrored_finish(hw_gpu_t *g, mirrored_op_t *m, int status)
{
	g_hash_table_remove(g->mirrored, m);
	uint64_t cookie = m->op.cookie;
	uint32_t nic = m->nic;
	g_free(m);
	hw_xfer_done(g->hw, cookie, status, nic);
}

static void mirrored_sync(hw_gpu_t *g, mirrored_op_t *m, bool to_device)
{
	hw_peer_t *p = m->peer;
	if (p->kind != HW_PEER_KVB || p->state != HW_PEER_UP) {
		hw_set_error(g->hw, "%s: GPU memory behind its mirror needs the kvbridge control stream, "
				    "which is down", p->addr);
		mirrored_finish(g, m, KVB_ERR_PEER);
		return;
	}
	kvb_mc_sync_t s = {.id = ++g->sync_seq, .addr = m->op.remote_addr, .len = m->op.len,
			   .to_device = to_device};
	uint8_t buf[KVB_MC_SYNC_LEN];
	kvb_mc_sync_encode(buf, &s);
	m->sync_id = s.id;
	m->phase = to_device ? M_SYNC_IN : M_SYNC_OUT;
	g_hash_table_insert(gpu_peer(p)->waiting, &m->sync_id, m);
	hw_stats(g->hw)->gpu_syncs_requested++;
	hw_stream_send(p, KVB_MC_KVB_SYNC, buf, sizeof(buf));
}

/* Post m's op to the peer's mirror; its completion comes back as m.  A
 * refusal means no completion will come. */
static int mirrored_post(mirrored_op_t *m)
{
	kvb_slice_op_t op = m->op;
	op.cookie = (uint64_t)(uintptr_t)m;
	m->phase = M_POSTED;
	return hw_rdma_post(m->peer, &op, m->mr, true);
}

int hw_gpu_post_mirrored(hw_peer_t *p, const kvb_slice_op_t *op, hw_mr_t *mr)
{
	hw_gpu_t *g = G(p->hw);
	if (p->kind != HW_PEER_KVB) {
		hw_set_error(p->hw, "xfer_post: 0x%" PRIx64 " is GPU memory %s exposes through a host "
				    "mirror; only a kvbridge peer (control stream) can keep it in step",
			     op->remote_addr, p->addr);
		return KVB_ERR_RANGE;
	}
	mirrored_op_t *m = g_new0(mirrored_op_t, 1);
	m->peer = p;
	m->mr = mr;
	m->op = *op;
	m->nic = op->local_nic;
	g_hash_table_add(g->mirrored, m);
	if (op->opcode == KVB_XFER_READ) {
		mirrored_sync(g, m, false);
		return KVB_OK;
	}
	int rc = mirrored_post(m);
	if (rc != KVB_OK) {
		/* not accepted: no completion for it */
		g_hash_table_remove(g->mirrored, m);
		g_free(m);
	}
	return rc;
}

static bool mirrored_done(hw_gpu_t *g, uint64_t cookie, int status, uint32_t nic)
{
	mirrored_op_t *m = (mirrored_op_t *)(uintptr_t)cookie;
	if (!g_hash_table_contains(g->mirrored, m) || m->phase != M_POSTED)
		return false;
	m->nic = nic;
	if (status == KVB_OK && m->op.opcode == KVB_XFER_WRITE)
		mirrored_sync(g, m, true);
	else
		mirrored_finish(g, m, status);
	return true;
}

static void synced(hw_gpu_t *g, hw_peer_t *p, const kvb_mc_synced_t *s)
{
	gpu_peer_t *gp = p->gpu;
	mirrored_op_t *m = gp ? g_hash_table_lookup(gp->waiting, &s->id) : NULL;
	if (!m) {
		hw_warn(g->hw, "peer %s answered sync %" PRIu64 ", which is not waiting", p->addr, s->id);
		return;
	}
	g_hash_table_remove(gp->waiting, &s->id);
	if (s->status != KVB_OK) {
		hw_set_error(g->hw, "peer %s could not sync its GPU memory at 0x%" PRIx64 ": %s", p->addr,
			     m->op.remote_addr, s->why);
		mirrored_finish(g, m, s->status == KVB_ERR_TRANSPORT ? KVB_ERR_PEER : s->status);
		return;
	}
	if (m->phase != M_SYNC_OUT) {
		mirrored_finish(g, m, KVB_OK);
		return;
	}
	int rc = mirrored_post(m); /* a READ, now that the mirror holds the GPU's bytes */
	if (rc != KVB_OK)
		mirrored_finish(g, m, rc);
}

static void serve_reply(hw_peer_t *p, uint64_t id, int status, const char *why)
{
	kvb_mc_synced_t r = {.id = id, .status = status};
	g_strlcpy(r.why, why ? why : "", sizeof(r.why));
	GByteArray *b = g_byte_array_new();
	kvb_mc_synced_encode(b, &r);
	hw_stream_send(p, KVB_MC_KVB_SYNCED, b->data, b->len);
	g_byte_array_unref(b);
}

static void serve_copied(void *arg, int status, const char *why)
{
	sync_serve_t *sv = arg;
	hw_peer_t *p = sv->peer;
	g_queue_remove(&gpu_peer(p)->serving, sv);
	if (status != KVB_OK)
		hw_set_error(p->hw, "sync for %s: %s", p->addr, why);
	serve_reply(p, sv->id, status, status == KVB_OK ? NULL : why);
	g_free(sv);
}

static void serve(hw_gpu_t *g, hw_peer_t *p, const kvb_mc_sync_t *s)
{
	hw_t *hw = g->hw;
	hw_mr_t *mr = hw_mr_find(hw, s->addr, s->len);
	char why[KVB_MC_SYNC_WHY_MAX];
	if (!mr || !mr->mirror) {
		g_snprintf(why, sizeof(why), "0x%" PRIx64 " + %" PRIu64 " is not mirrored GPU memory",
			   s->addr, s->len);
		hw_stats(hw)->tcp_requests_rejected++;
		serve_reply(p, s->id, KVB_ERR_RANGE, why);
		return;
	}
	if (s->to_device && hw_fenced(hw, s->addr, s->len)) {
		hw_stats(hw)->fenced_writes++;
		serve_reply(p, s->id, KVB_ERR_RANGE, "the range belongs to a cancelled pull");
		return;
	}
	sync_serve_t *sv = g_new0(sync_serve_t, 1);
	sv->peer = p;
	sv->id = s->id;
	g_queue_push_tail(&gpu_peer(p)->serving, sv);
	hw_stats(hw)->gpu_syncs_served++;
	sv->copy = hw_gpu_copy(hw, mr, (uint8_t *)mr->mirror + (s->addr - mr->addr), s->addr,
			       (size_t)s->len, s->to_device, serve_copied, sv);
}

bool hw_gpu_sync_frame(hw_peer_t *p, kvb_mc_msg_type_t type, const uint8_t *payload, size_t len,
		       kvb_err_t *err)
{
	hw_gpu_t *g = G(p->hw);
	if (type == KVB_MC_KVB_SYNC) {
		kvb_mc_sync_t s;
		if (kvb_mc_sync_decode(payload, len, &s, err) != KVB_OK)
			return false;
		serve(g, p, &s);
		return true;
	}
	kvb_mc_synced_t r;
	if (kvb_mc_synced_decode(payload, len, &r, err) != KVB_OK)
		return false;
	synced(g, p, &r);
	return true;
}

void hw_gpu_peer_down(hw_peer_t *p)
{
	gpu_peer_t *gp = p->gpu;
	hw_gpu_t *g = G(p->hw);
	if (!gp || !g)
		return;
	GList *ms = g_hash_table_get_values(gp->waiting);
	g_hash_table_remove_all(gp->waiting);
	for (GList *l = ms; l; l = l->next)
		mirrored_finish(g, l->data, KVB_ERR_PEER);
	g_list_free(ms);
}

void hw_gpu_peer_detach(hw_peer_t *p)
{
	gpu_peer_t *gp = p->gpu;
	hw_gpu_t *g = G(p->hw);
	if (!gp)
		return;
	/* instance close: ops still waiting are discarded without events */
	GList *ms = g_hash_table_get_values(gp->waiting);
	for (GList *l = ms; l; l = l->next) {
		if (g)
			g_hash_table_remove(g->mirrored, l->data);
		g_free(l->data);
	}
	g_list_free(ms);
	g_hash_table_destroy(gp->waiting);
	sync_serve_t *sv;
	while ((sv = g_queue_pop_head(&gp->serving))) {
		hw_gpu_copy_cancel(sv->copy, NULL);
		g_free(sv);
	}
	g_free(gp);
	p->gpu = NULL;
}

/* ------------------------------------------------------------------------ */
/* reporting                                                                */

int kvb_hw_mr_paths(kvb_backend_t *be, const void *addr, kvb_hw_gpu_path_t *paths, uint32_t max,
		    uint32_t *n)
{
	hw_t *hw = hw_of_backend(be);
	hw_mr_t *m = hw_mr_find(hw, (uint64_t)(uintptr_t)addr, 1);
	if (!m)
		return KVB_ERR_NOT_FOUND;
	uint32_t nics = be->ops->nic_count(be);
	*n = nics;
	for (uint32_t i = 0; i < nics && i < max; i++)
		paths[i] = (kvb_hw_gpu_path_t)m->path[i];
	return KVB_OK;
}
