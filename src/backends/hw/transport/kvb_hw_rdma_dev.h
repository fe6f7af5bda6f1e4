/*
 * The RDMA transport's devices and registrations: which devices this
 * endpoint has (its NICs when it has any), memory registered on every one
 * of them (GPU memory: dma-buf, peer memory, or a pinned mirror), and the
 * rdma part of this endpoint's segment descriptor.
 */
#ifndef KVB_HW_RDMA_DEV_H
#define KVB_HW_RDMA_DEV_H

#include <stdint.h>

#include "events/kvb_hw_events.h"
#include "transport/kvb_hw_mem.h"
#include "kvb_mc_wire.h"

uint32_t hw_rdma_n_devices(hw_t *hw); /* 0: no RDMA, TCP only */
const char *hw_rdma_device_name(hw_t *hw, uint32_t i);
/* Register m on every device; GPU memory picks its path per device (dma-buf,
 * peer memory, staging) and records it in m->path. */
int hw_rdma_mr_reg(hw_t *hw, hw_mr_t *m, kvb_err_t *err);
/* Host memory for local access only (the staging pool): no remote rights. */
int hw_rdma_mr_reg_local(hw_t *hw, hw_mr_t *m, kvb_err_t *err);
void hw_rdma_mr_dereg(hw_t *hw, hw_mr_t *m);
/* Turn a tcp descriptor (buffers filled) into an rdma one: devices, keys, matrix. */
void hw_rdma_describe(hw_t *hw, kvb_mc_segment_t *seg);

#endif /* KVB_HW_RDMA_DEV_H */
