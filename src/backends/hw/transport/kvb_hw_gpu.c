/*
 * GPU memory for the hw backend: providers, copies, pinned host memory.
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
 * Staging itself (the bounce pool, mirrors kept in step by SYNC frames) is
 * kvb_hw_staging.c; the TCP data server stages what it serves
 * (kvb_hw_tcp.c).
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

#include "transport/kvb_hw_gpu.h"

#define GPU_MAX_DEVICES 64

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

typedef struct hw_gpu {
	hw_t *hw;
	int efd;
	hw_watch_t *w;
	GMutex done_lock;
	GQueue done;           /* hw_gpu_copy_t* finished (filled by CUDA's thread) */
	uint32_t in_flight;    /* copies started, callbacks not yet run */
#ifdef KVB_HAVE_CUDA
	cudaStream_t streams[GPU_MAX_DEVICES];
	bool cuda_checked, cuda_ok;
	char cuda_why[160];
	CUresult (*get_handle)(void *, CUdeviceptr, size_t, CUmemRangeHandleType, unsigned long long);
#endif
} hw_gpu_t;

static hw_gpu_t *G(hw_t *hw)
{
	return hw->gpu;
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
static void copy_free(hw_gpu_copy_t *c);

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
	hw->gpu = g;
	return KVB_OK;
}

void hw_gpu_drain(hw_t *hw)
{
	hw_gpu_t *g = G(hw);
	if (!g)
		return;
#ifdef KVB_HAVE_CUDA
	for (int d = 0; d < GPU_MAX_DEVICES; d++)
		if (g->streams[d])
			cudaStreamSynchronize(g->streams[d]);
#endif
	/* every copy has finished now: drop the records without callbacks (no
	 * event after close) */
	g_mutex_lock(&g->done_lock);
	hw_gpu_copy_t *c;
	while ((c = g_queue_pop_head(&g->done))) {
		g->in_flight--;
		copy_free(c);
	}
	g_mutex_unlock(&g->done_lock);
}

void hw_gpu_close(hw_t *hw)
{
	hw_gpu_t *g = G(hw);
	if (!g)
		return;
	hw_gpu_drain(hw);
#ifdef KVB_HAVE_CUDA
	for (int d = 0; d < GPU_MAX_DEVICES; d++)
		if (g->streams[d])
			cudaStreamDestroy(g->streams[d]);
#endif
	hw_watch_free(g->w);
	close(g->efd);
	g_mutex_clear(&g->done_lock);
	g_free(g);
	hw->gpu = NULL;
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

