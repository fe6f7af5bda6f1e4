/*
 * Where a tool or test keeps its KV memory: host pages, CUDA device memory
 * (built --with-cuda), or the hw backend's emulated device memory
 * (kvb_hw_emu_gpu_alloc: PROT_NONE pages, for machines without a GPU).
 * Shared by kvbridge-serve, kvbridge-bench and the GPU device check; include
 * config.h first.
 */
#ifndef KVB_DEVMEM_H
#define KVB_DEVMEM_H

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <kvbridge/hw.h>
#ifdef KVB_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

typedef enum kvb_devmem {
	KVB_DEVMEM_HOST = 0,
	KVB_DEVMEM_EMULATED = 1,
	KVB_DEVMEM_CUDA = 2,
} kvb_devmem_t;

static inline const char *kvb_devmem_name(kvb_devmem_t k)
{
	return k == KVB_DEVMEM_CUDA ? "cuda" : k == KVB_DEVMEM_EMULATED ? "emulated" : "host";
}

/* "host", "emulated" or "cuda"; false for anything else. */
static inline bool kvb_devmem_parse(const char *s, kvb_devmem_t *out)
{
	for (int k = KVB_DEVMEM_HOST; k <= KVB_DEVMEM_CUDA; k++)
		if (!strcmp(s, kvb_devmem_name((kvb_devmem_t)k))) {
			*out = (kvb_devmem_t)k;
			return true;
		}
	return false;
}

/* len bytes of k (CUDA: on GPU gpu), or NULL with the reason in why. */
static inline void *kvb_devmem_alloc(kvb_devmem_t k, int gpu, size_t len, char *why, size_t why_len)
{
	void *p = NULL;
	switch (k) {
	case KVB_DEVMEM_HOST:
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			snprintf(why, why_len, "mmap: %s", strerror(errno));
			p = NULL;
		}
		break;
	case KVB_DEVMEM_EMULATED:
		if (!(p = kvb_hw_emu_gpu_alloc(len)))
			snprintf(why, why_len, "emulated GPU memory: %s", strerror(errno));
		break;
	case KVB_DEVMEM_CUDA:
#ifdef KVB_HAVE_CUDA
	{
		cudaError_t e = cudaSetDevice(gpu);
		if (e == cudaSuccess)
			e = cudaMalloc(&p, len);
		if (e != cudaSuccess) {
			snprintf(why, why_len, "cudaMalloc(%zu) on GPU %d: %s", len, gpu, cudaGetErrorString(e));
			p = NULL;
		}
	}
#else
		(void)gpu;
		snprintf(why, why_len, "this build has no CUDA (configure --with-cuda)");
#endif
		break;
	}
	return p;
}

static inline void kvb_devmem_free(kvb_devmem_t k, void *p, size_t len)
{
	if (!p)
		return;
	if (k == KVB_DEVMEM_HOST)
		munmap(p, len);
	else if (k == KVB_DEVMEM_EMULATED)
		kvb_hw_emu_gpu_free(p);
#ifdef KVB_HAVE_CUDA
	else
		cudaFree(p);
#endif
}

/* Synchronous copy between k's memory and host memory, to_dev saying
 * which way; false with the reason in why. */
static inline bool kvb_devmem_copy(kvb_devmem_t k, void *dst, const void *src, size_t len, bool to_dev,
				   char *why, size_t why_len)
{
	if (k == KVB_DEVMEM_HOST) {
		memcpy(dst, src, len);
		return true;
	}
	if (k == KVB_DEVMEM_EMULATED) {
		if (kvb_hw_emu_gpu_copy(dst, src, len) == KVB_OK)
			return true;
		snprintf(why, why_len, "emulated GPU copy of %zu bytes refused", len);
		return false;
	}
#ifdef KVB_HAVE_CUDA
	cudaError_t e = cudaMemcpy(dst, src, len, to_dev ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost);
	if (e == cudaSuccess)
		e = cudaDeviceSynchronize();
	if (e == cudaSuccess)
		return true;
	snprintf(why, why_len, "cudaMemcpy (%zu bytes %s the GPU): %s", len, to_dev ? "to" : "from",
		 cudaGetErrorString(e));
#else
	(void)to_dev;
	snprintf(why, why_len, "this build has no CUDA");
#endif
	return false;
}

/* Host memory for copies to and from k: pinned with CUDA, plain otherwise. */
static inline void *kvb_devmem_host_alloc(kvb_devmem_t k, size_t len)
{
#ifdef KVB_HAVE_CUDA
	if (k == KVB_DEVMEM_CUDA) {
		void *p = NULL;
		return cudaHostAlloc(&p, len, cudaHostAllocPortable) == cudaSuccess ? p : NULL;
	}
#endif
	(void)k;
	return malloc(len);
}

static inline void kvb_devmem_host_free(kvb_devmem_t k, void *p)
{
#ifdef KVB_HAVE_CUDA
	if (k == KVB_DEVMEM_CUDA) {
		cudaFreeHost(p);
		return;
	}
#endif
	(void)k;
	free(p);
}

#endif /* KVB_DEVMEM_H */
