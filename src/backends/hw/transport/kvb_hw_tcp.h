/*
 * Mooncake's TCP transport, both ends: client lanes on a link (persistent,
 * pipelined connections per local NIC to the peer's data port) and the data
 * server (READ and WRITE into registered memory, ranges and fences checked
 * before a byte moves; GPU memory staged through pinned buffers).
 */
#ifndef KVB_HW_TCP_H
#define KVB_HW_TCP_H

#include <stdint.h>

#include <kvbridge/backend.h>

#include "events/kvb_hw_events.h"
#include "transport/kvb_hw_link.h"
#include "transport/kvb_hw_mem.h"

int hw_tcp_server_start(hw_t *hw, kvb_err_t *err);
uint16_t hw_tcp_server_port(hw_t *hw);
void hw_tcp_server_stop(hw_t *hw);
/* Close data-server sessions moving bytes in or out of mr (deregistration). */
void hw_tcp_server_drop_mr(hw_t *hw, hw_mr_t *mr);

/* Post one op (host memory: GPU memory is staged before it gets here) on
 * the least loaded lane of its NIC.  KVB_ERR_NO_RESOURCE: that lane's queue
 * is full. */
int hw_lane_post(hw_link_t *l, const kvb_slice_op_t *op, hw_mr_t *m);
/* Fail every op of l's lanes with status and close them. */
void hw_lanes_fail(hw_link_t *l, int status);
/* Free l's lanes; ops still queued are discarded without events. */
void hw_lanes_free(hw_link_t *l);
/* True when l has lanes and every one is connected with nothing queued:
 * they may move to another link to the same peer. */
bool hw_lanes_idle(const hw_link_t *l);
/* Move from's lanes to `to` (a link to the same data server, with no lanes
 * of its own), so that its next posts skip the connection setup. */
void hw_lanes_move(hw_link_t *from, hw_link_t *to);

#endif /* KVB_HW_TCP_H */
