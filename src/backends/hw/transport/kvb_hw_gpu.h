/*
 * GPU memory providers of the hw backend (CUDA, emulated): which provider
 * owns a registration, asynchronous copies between pinned host memory and
 * device memory (signalled on the loop through an eventfd), pinned host
 * allocations and dma-buf handles.  Below the transports: the TCP data
 * server and RDMA registration use it; it calls no transport.
 */
#ifndef KVB_HW_GPU_H
#define KVB_HW_GPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "events/kvb_hw_events.h"
#include "transport/kvb_hw_mem.h"

int hw_gpu_open(hw_t *hw, kvb_err_t *err);
/* Wait for every copy in flight and drop their records without callbacks
 * (instance close, before the buffers they use are freed). */
void hw_gpu_drain(hw_t *hw);
void hw_gpu_close(hw_t *hw);
/* m (kind KVB_MEM_CUDA) is device memory of a provider: fill gpu_provider
 * and device, or say why not. */
int hw_gpu_mr_check(hw_t *hw, hw_mr_t *m, kvb_err_t *err);
/* A dma-buf fd for all of m (the caller closes it), or why there is none. */
int hw_gpu_dmabuf(hw_t *hw, const hw_mr_t *m, int *fd, char *why, size_t why_len);

/* Asynchronous copy between pinned host memory and m's device memory; fn
 * runs later from the context with the status and, on failure, a reason. */
typedef void (*hw_gpu_copy_fn)(void *arg, int status, const char *why);
typedef struct hw_gpu_copy hw_gpu_copy_t;
hw_gpu_copy_t *hw_gpu_copy(hw_t *hw, const hw_mr_t *m, void *host, uint64_t dev_addr, size_t len,
			   bool to_device, hw_gpu_copy_fn fn, void *arg);
/* fn will not run; orphan (a hw_gpu_host_alloc buffer the copy uses, or
 * NULL) is freed when the copy is over. */
void hw_gpu_copy_cancel(hw_gpu_copy_t *c, void *orphan);
/* Wait for copies into or out of m's device (deregistration). */
void hw_gpu_quiesce(hw_t *hw, const hw_mr_t *m);
/* Pinned host memory when CUDA is there, else page-aligned. */
void *hw_gpu_host_alloc(hw_t *hw, size_t len);
void hw_gpu_host_free(hw_t *hw, void *p);

#endif /* KVB_HW_GPU_H */
