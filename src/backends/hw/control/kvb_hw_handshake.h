/*
 * Mooncake's handshake port (the Transfer Engine's "RPC port", P2PHANDSHAKE):
 * the listener that answers Connection (type 0: RDMA queue pairs, through
 * the RDMA transport), Metadata (1: this endpoint's segment descriptor),
 * Notify (2) and Probe (3), and hands KVB_HELLO connections to the
 * kvbridge stream.  Also Mooncake segments as data-only peers
 * ("mooncake://host:port": fetch the descriptor, then move data).
 */
#ifndef KVB_HW_HANDSHAKE_H
#define KVB_HW_HANDSHAKE_H

#include <stdint.h>

#include <kvbridge/backend.h>

#include "events/kvb_hw_events.h"

/* Listen on params.bind_host:params.rpc_port (0: a random port in the
 * range); sets hw->rpc_port and hw->segment. */
int hw_handshake_start(hw_t *hw, kvb_err_t *err);
void hw_handshake_stop(hw_t *hw);

/* conn_connect to a Mooncake Transfer Engine's handshake port (see
 * hw_stream_connect for the contract). */
int hw_mooncake_connect(hw_t *hw, kvb_conn_t *conn, const char *addr, const char *host,
			uint16_t port);

#endif /* KVB_HW_HANDSHAKE_H */
