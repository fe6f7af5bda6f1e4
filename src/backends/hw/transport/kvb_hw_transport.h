/*
 * The transport interface the control protocols and the vtable use: one
 * call per thing they need from the data path, whichever transport (TCP
 * lanes, RDMA, staged or mirrored GPU memory) carries it.
 *
 *  - open/close of every transport, in dependency order;
 *  - NICs (RDMA devices, or TCP "NICs" bound to source addresses);
 *  - memory registration (host, CUDA, emulated GPU) and this endpoint's
 *    segment descriptor (what peers may reach, and how);
 *  - links: the data path to a peer's segment: set it from a descriptor,
 *    post ops on it, take it down, clear it.
 */
#ifndef KVB_HW_TRANSPORT_H
#define KVB_HW_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <kvbridge/backend.h>

#include "events/kvb_hw_events.h"
#include "transport/kvb_hw_link.h"
#include "transport/kvb_hw_mem.h"
#include "kvb_mc_wire.h"

/* The TCP data server, GPU providers, staging, and (params.rdma_devices)
 * RDMA devices.  hw_transport_close releases them and every registration an
 * owner left registered; safe after a partial open. */
int hw_transport_open(hw_t *hw, kvb_err_t *err);
void hw_transport_close(hw_t *hw);
uint16_t hw_transport_data_port(hw_t *hw);

uint32_t hw_nic_count(hw_t *hw);
int hw_nic_query(hw_t *hw, uint32_t index, kvb_nic_info_t *info);

/* The vtable's mr_reg / mr_dereg. */
int hw_mem_register(hw_t *hw, void *addr, size_t len, const kvb_mem_attr_t *attr, void **mr,
		    kvb_rkey_t *rkey);
int hw_mem_deregister(hw_t *hw, void *mr);

/* This endpoint's segment descriptor as JSON (g_free). */
char *hw_segment_json(hw_t *hw);

/* ---- links ----------------------------------------------------------------- */

void hw_link_init(hw_link_t *l, hw_t *hw, const char *name);
/* Use seg (moved in) as the link's data target; refused (seg cleared) when
 * this endpoint cannot reach it (rdma vs tcp, no data port).  fallback_host:
 * where the data port is when the descriptor names no host. */
int hw_link_set_segment(hw_link_t *l, kvb_mc_segment_t *seg, const char *fallback_host,
			kvb_err_t *err);
/* The vtable's xfer_post on this link. */
int hw_link_post(hw_link_t *l, const kvb_slice_op_t *ops, size_t n, size_t *n_posted);
/* The peer went away: ops in flight fail with status; with retire, the RDMA
 * endpoints of its segment are retired too (a kvbridge peer whose stream
 * closed is gone for good). */
void hw_link_down(hw_link_t *l, int status, bool retire);
/* Free what the transports keep for the link (ops in flight end silently). */
void hw_link_clear(hw_link_t *l);

#endif /* KVB_HW_TRANSPORT_H */
