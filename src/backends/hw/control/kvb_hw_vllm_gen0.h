/*
 * vLLM's MooncakeConnector side channel, Gen 0 (vLLM 0.13.0 - 0.15.1), as a
 * control protocol: a ZMQ ROUTER on the side-channel port whose messages
 * become pulls of the connector core (producer side), and "vllm://host:port"
 * peers whose pulls become MooncakeAgentMetadata messages (consumer side).
 */
#ifndef KVB_HW_VLLM_GEN0_H
#define KVB_HW_VLLM_GEN0_H

#include <stdint.h>

#include <kvbridge/backend.h>
#include <kvbridge/layout.h>

#include "events/kvb_hw_events.h"

/* Bind the ROUTER on params.side_channel_host:side_channel_port. */
int hw_vllm_start(hw_t *hw, kvb_err_t *err);
void hw_vllm_stop(hw_t *hw);
int hw_vllm_set_layout(hw_t *hw, const kvb_region_t *regions, uint32_t n, uint32_t tp_size,
		       uint32_t tp_rank, kvb_err_t *err);
/* conn_connect to a Gen 0 producer's side channel (see hw_stream_connect). */
int hw_vllm_client_connect(hw_t *hw, kvb_conn_t *conn, const char *addr, const char *host,
			   uint16_t port);

#endif /* KVB_HW_VLLM_GEN0_H */
