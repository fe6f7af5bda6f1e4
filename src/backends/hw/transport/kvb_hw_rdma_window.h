/*
 * RDMA windows (kvb_hw_rdma_window.c): remote keys that reach the blocks of
 * one pull, for that pull only; the consumer registers and sends them, the
 * producer keeps them on the peer's link and writes with them.
 */
#ifndef KVB_HW_RDMA_WINDOW_H
#define KVB_HW_RDMA_WINDOW_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>
#include <kvbridge/error.h>

#include "events/kvb_hw_events.h"
#include "transport/kvb_hw_link.h"
#include "transport/kvb_hw_mem.h"

/* kvb_hw_rkey_explicit: remote_key = "rkey" tag, u32 key (hw_mem_register's
 * own keys are 4 bytes long, so the two cannot be confused). */
#define HW_RKEY_EXPLICIT_LEN 8u
#define HW_RKEY_EXPLICIT_TAG "rkey"

/* m is registered on RDMA devices without remote access (its blocks are
 * reached through windows only). */
bool hw_rdma_mr_closed(const hw_mr_t *m);
/* Some range (uint64_t pairs) lies in such a registration. */
bool hw_rdma_ranges_closed(hw_t *hw, const GArray *ranges);
/* Consumer: hw_window_open for a pull whose producer can take RDMA keys (a
 * kvbridge stream).  The ranges that lie in closed memory are registered on
 * every device for it, and the KVB_MC_KVB_WINDOW payload to send before the
 * pull is appended to keys (nothing when none is needed).  The
 * registrations are undone, and the keys die, when the window closes. */
int hw_window_open_keyed(hw_t *hw, const void *owner, const char *transfer_id,
			 const char *request_id, const GArray *ranges, const char *peer, GByteArray *keys,
			 kvb_err_t *err);
/* kvb_hw_expose: open m to remote access for good (registered again). */
int hw_rdma_mr_open(hw_t *hw, hw_mr_t *m, kvb_err_t *err);
/* Producer: keep the keys of a peer's KVB_MC_KVB_WINDOW frame until the pull
 * ends; drop them (transfer_id NULL: all of the link's); the key of the
 * window that holds [addr, addr + len) on peer device dev, or 0. */
int hw_link_window_keys_add(hw_link_t *l, const uint8_t *payload, size_t len, kvb_err_t *err);
void hw_link_window_keys_drop(hw_link_t *l, const char *transfer_id, const char *request_id);
uint32_t hw_link_window_rkey(const hw_link_t *l, uint64_t addr, uint64_t len, uint32_t dev);

#endif /* KVB_HW_RDMA_WINDOW_H */
