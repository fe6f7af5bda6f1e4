/*
 * The RDMA verbs data path: Mooncake-compatible RC endpoints set up over
 * the type-0 handshake, one-sided WRITE/READ, completions, failover, the
 * stall watchdog and the liveness probes of peers that keep no stream.
 * Devices and registrations: kvb_hw_rdma_dev.h.
 */
#ifndef KVB_HW_RDMA_H
#define KVB_HW_RDMA_H

#include <stdbool.h>
#include <stdint.h>

#include <kvbridge/backend.h>

#include "events/kvb_hw_events.h"
#include "transport/kvb_hw_link.h"
#include "transport/kvb_hw_mem.h"
#include "transport/kvb_hw_rdma_dev.h"
#include "kvb_mc_wire.h"

/* Open params.rdma_devices (no-op when empty). */
int hw_rdma_open(hw_t *hw, kvb_err_t *err);
void hw_rdma_close(hw_t *hw);
uint64_t hw_rdma_endpoint_count(hw_t *hw);
/* Passive type-0 handshake: the reply JSON (g_free); a refusal has reply_msg. */
char *hw_rdma_handshake(hw_t *hw, const kvb_mc_handshake_t *req);
/* This instance has RDMA and the link's peer published an rdma descriptor. */
bool hw_rdma_link_usable(hw_link_t *l);
/* The op's remote range is GPU memory the chosen peer device reaches only
 * through its host mirror (kvb_mirror_rkey): kvb_hw_staging.c keeps it in
 * step around the post. */
bool hw_rdma_remote_mirrored(hw_link_t *l, const kvb_slice_op_t *op);
/* m: the local registration.  to_mirror: use the remote buffer's mirror
 * key (kvb_hw_staging.c's mirrored posts). */
int hw_rdma_post(hw_link_t *l, const kvb_slice_op_t *op, hw_mr_t *m, bool to_mirror);
/* l is being freed: its ops in flight complete silently. */
void hw_rdma_link_clear(hw_link_t *l);
/* A kvbridge peer's control stream went down: retire the endpoints (ours
 * and the ones it connected to us) of its segment, so its queue pairs do
 * not outlive it. */
void hw_rdma_peer_gone(hw_link_t *l);

#endif /* KVB_HW_RDMA_H */
