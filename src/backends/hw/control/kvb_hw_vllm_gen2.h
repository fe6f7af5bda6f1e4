/*
 * vLLM's MooncakeConnector side channel, Gen 1/2 (vLLM 0.16.0 - 0.32.0), as
 * a control protocol over the connector core.
 *
 * Producer side: a ZMQ ROUTER on a random port of params.host, registered
 * at the HTTP bootstrap under the worker's dp/tp/pp ranks; each
 * MooncakeXferMetadata becomes one core pull per request (transfer_id
 * keyed), answered by a stream of MooncakeXferResponse.
 *
 * Consumer side: "vllm2://host:port" peers (a producer worker's ROUTER, as
 * the bootstrap's /query lists it); each core pull becomes a
 * MooncakeXferMetadata on a fresh DEALER, its replies a DONE.
 */
#ifndef KVB_HW_VLLM_GEN2_H
#define KVB_HW_VLLM_GEN2_H

#include <stdint.h>

#include <kvbridge/backend.h>
#include <kvbridge/hw.h>

#include "control/kvb_hw_vllm_gen2_client.h"
#include "events/kvb_hw_events.h"

/* Bind the ROUTER; serve the bootstrap when params.vllm_bootstrap_port. */
int hw_vllm2_start(hw_t *hw, kvb_err_t *err);
void hw_vllm2_stop(hw_t *hw);
/* The layout and identity (copied); registers the ROUTER at the bootstrap. */
int hw_vllm2_set_layout(hw_t *hw, const kvb_hw_vllm_layout_t *layout, kvb_err_t *err);
const char *hw_vllm2_worker_addr(hw_t *hw);

#endif /* KVB_HW_VLLM_GEN2_H */
