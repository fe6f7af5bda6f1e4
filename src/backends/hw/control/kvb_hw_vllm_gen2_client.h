/*
 * vLLM Gen 1/2, the consumer side: pulls from a producer worker's ROUTER
 * ("vllm2://host:port") and the bootstrap query cache
 * (kvb_hw_vllm_gen2_client.c).
 */
#ifndef KVB_HW_VLLM_GEN2_CLIENT_H
#define KVB_HW_VLLM_GEN2_CLIENT_H

#include <stdint.h>

#include <kvbridge/backend.h>
#include <kvbridge/hw.h>

#include "events/kvb_hw_events.h"

/* conn_connect to a producer worker's ROUTER (see hw_stream_connect). */
int hw_vllm2_client_connect(hw_t *hw, kvb_conn_t *conn, const char *addr, const char *host,
			    uint16_t port);
/* kvb_hw_vllm_query. */
int hw_vllm2_query(hw_t *hw, const char *bootstrap_addr, const char *engine_id,
		   kvb_hw_vllm_query_fn fn, void *user, kvb_err_t *err);

#endif /* KVB_HW_VLLM_GEN2_CLIENT_H */
