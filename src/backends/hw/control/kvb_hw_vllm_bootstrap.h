/*
 * vLLM's Gen 1/2 HTTP bootstrap on the event loop: the server one producer
 * worker runs (POST /register, GET /query; what vLLM's FastAPI app
 * answers, kvb_vllm_bootstrap_wire.h) and the client calls a worker or a
 * decoder makes (register with vLLM's retries, query).  Anything that is
 * not HTTP (a ZMQ greeting from a Gen 0 peer) gets a 400 and the
 * connection closes, as uvicorn does.
 */
#ifndef KVB_HW_VLLM_BOOTSTRAP_H
#define KVB_HW_VLLM_BOOTSTRAP_H

#include <stdint.h>

#include "events/kvb_hw_events.h"
#include "kvb_vllm_bootstrap_wire.h"

/* Serve on params.bind_host:port (0: a free port); the registry follows the
 * rules of params.vllm_release (0.31+: an identical re-register is ok). */
int hw_vllm_bootstrap_serve(hw_t *hw, uint16_t port, kvb_err_t *err);
void hw_vllm_bootstrap_stop(hw_t *hw);
/* The port served (0: none). */
uint16_t hw_vllm_bootstrap_port(hw_t *hw);

typedef struct hw_vllm_boot_call hw_vllm_boot_call_t;
typedef void (*hw_vllm_register_fn)(void *obj, int status, const char *why);
typedef void (*hw_vllm_query_done_fn)(void *obj, int status, const char *why,
				      const kvb_vllm_boot_query_t *q);

/* Register a worker: into this instance's registry when it serves one and
 * server is NULL, else POST http://server/register ("host:port") with
 * vLLM's retries (3 tries, 1 s then 2 s apart, each within
 * params.vllm_connector_timeout_ns).  cb runs once, from the loop. */
hw_vllm_boot_call_t *hw_vllm_bootstrap_register(hw_t *hw, const char *server,
						const kvb_vllm_register_t *w,
						hw_vllm_register_fn cb, void *obj);
/* GET http://host:port/query (3 tries 0.1 s apart, as vLLM's D); cb gets
 * the parsed reply (borrowed for the call). */
hw_vllm_boot_call_t *hw_vllm_bootstrap_query(hw_t *hw, const char *host, uint16_t port,
					     hw_vllm_query_done_fn cb, void *obj);
/* cb will not run; NULL is a no-op. */
void hw_vllm_boot_call_cancel(hw_vllm_boot_call_t *c);

#endif /* KVB_HW_VLLM_BOOTSTRAP_H */
