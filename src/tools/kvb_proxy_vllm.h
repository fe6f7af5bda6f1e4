/*
 * The two router contracts of vLLM's MooncakeConnector, as plain functions
 * over JSON: what kvbridge-proxy sends to a prefiller (P) and a decoder (D)
 * for one client request, and the prefill targets it learns from P's
 * bootstrap server.  No sockets here, so tests/check_proxy_vllm.c checks
 * every body field by field.  Notes: ../shared/research/
 * vllm-mooncake-connector.md 2.4, 2.6, 2.7, 7; vllm-cpu.md "The router
 * contract".
 *
 * gen0 (vLLM 0.13.0 - 0.15.1; toy_proxy_server.py): sequential.  P gets the
 *   body with kv_transfer_params {do_remote_decode: true, do_remote_prefill:
 *   false, remote_engine_id/remote_block_ids/remote_host/remote_port: null},
 *   max_tokens 1 (max_completion_tokens 1 if present), stream false,
 *   min_tokens, min_completion_tokens and stream_options removed; D gets the
 *   original body with the kv_transfer_params of P's answer.
 * gen2 (vLLM 0.16.0 and later, "gen1" is the same router contract;
 *   mooncake_connector_proxy.py): both legs at once, keyed by a transfer_id
 *   the router makes ("xfer-" + request id).  P gets the body with
 *   kv_transfer_params {do_remote_decode: true, do_remote_prefill: false,
 *   transfer_id}, max_tokens 1 (max_completion_tokens 1 if present), stream
 *   false, stream_options removed, and also min_tokens and
 *   min_completion_tokens removed (vLLM's example keeps them, and P then
 *   refuses min_tokens > max_tokens with a 400 nobody reads); D gets the
 *   original body with kv_transfer_params {do_remote_decode: false,
 *   do_remote_prefill: true, remote_bootstrap_addr, remote_engine_id,
 *   transfer_id}.  P answers kv_transfer_params null.
 */
#ifndef KVB_PROXY_VLLM_H
#define KVB_PROXY_VLLM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>
#include <json-glib/json-glib.h>
#include <kvbridge/error.h>

typedef enum kvb_proxy_protocol {
	KVB_PROXY_GEN0 = 0, /* vLLM 0.13.0 - 0.15.1: sequential, P's params to D */
	KVB_PROXY_GEN2 = 2, /* vLLM 0.16.0+: concurrent legs, transfer_id, bootstrap /query */
} kvb_proxy_protocol_t;

/* "gen0", "gen1" or "gen2" (gen1 is gen2: the router contract did not
 * change between them).  false for anything else. */
bool kvb_proxy_protocol_parse(const char *s, kvb_proxy_protocol_t *out);
const char *kvb_proxy_protocol_name(kvb_proxy_protocol_t p);

/* The P leg's body, from the client's request (a JSON object, left as is).
 * gen2 needs transfer_id; gen0 ignores it.  Newly allocated JSON text. */
char *kvb_proxy_prefill_body(kvb_proxy_protocol_t p, JsonNode *request, const char *transfer_id);

/* gen0: the D leg's body: the request with P's kv_transfer_params.  NULL
 * with err set when P's answer carries no kv_transfer_params object. */
char *kvb_proxy_gen0_decode_body(JsonNode *request, const char *p_answer, size_t p_answer_len,
				 kvb_err_t *err);

/* gen2: the D leg's body (see the top). */
char *kvb_proxy_gen2_decode_body(JsonNode *request, const char *bootstrap_addr,
				 const char *engine_id, const char *transfer_id);

/* "http://host:port" as vLLM's proxy writes remote_bootstrap_addr (IPv6
 * hosts in brackets). */
char *kvb_proxy_bootstrap_addr(const char *host, uint16_t port);

/* One data-parallel engine of a prefiller, from its bootstrap /query. */
typedef struct kvb_proxy_dp {
	uint32_t dp_rank;
	char engine_id[128];
} kvb_proxy_dp_t;

/* P's GET /query answer, strictly (kvb_vllm_query_decode's rules, and at
 * least one dp rank): a GArray of kvb_proxy_dp_t in dp_rank order, or NULL
 * with err naming the fault. */
GArray *kvb_proxy_query_dps(const char *body, size_t len, kvb_err_t *err);

#endif /* KVB_PROXY_VLLM_H */
