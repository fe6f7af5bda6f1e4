/*
 * GPU memory through NICs that cannot reach it, on the posting side: staged
 * posts through a pinned bounce pool (local device memory), and mirrored
 * posts (a kvbridge peer's device memory behind the host mirror its RDMA
 * device exposes, kept in step by SYNC frames on the peer's stream).  Also
 * the serving side of SYNC.  Above the TCP and RDMA transports, whose posts
 * it makes; below kvb_hw_transport.c, which routes ops here.
 */
#ifndef KVB_HW_STAGING_H
#define KVB_HW_STAGING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <kvbridge/backend.h>

#include "events/kvb_hw_events.h"
#include "transport/kvb_hw_link.h"
#include "transport/kvb_hw_mem.h"

int hw_staging_open(hw_t *hw, kvb_err_t *err);
void hw_staging_close(hw_t *hw);

/* An op whose local range is device memory on a staging NIC: pieces
 * through the bounce pool. */
int hw_staging_post(hw_link_t *l, hw_mr_t *m, const kvb_slice_op_t *op);
/* An op whose local range is host memory (or the pool): straight to RDMA or
 * TCP, through the peer's mirror (with SYNCs) when its remote range is GPU
 * memory the peer's device reaches only that way. */
int hw_staging_post_host(hw_link_t *l, const kvb_slice_op_t *op, hw_mr_t *m);

/* Stream frames: a peer asks us to sync (serve), or answers our SYNC.
 * false: the frame is malformed (the stream goes down, reason in err). */
bool hw_staging_sync_frame(hw_link_t *l, kvb_mc_msg_type_t type, const uint8_t *payload,
			   size_t len, kvb_err_t *err);
/* l's stream is down: our syncs waiting on it fail with KVB_ERR_PEER. */
void hw_staging_link_down(hw_link_t *l);
/* l is being freed: drop its state (copies it asked for are cancelled). */
void hw_staging_link_clear(hw_link_t *l);

#endif /* KVB_HW_STAGING_H */
