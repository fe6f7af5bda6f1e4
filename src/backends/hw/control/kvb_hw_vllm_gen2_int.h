/*
 * State shared by the two files of vLLM's Gen 1/2 side channel:
 * kvb_hw_vllm_gen2.c (producer side, start and stop) and
 * kvb_hw_vllm_gen2_client.c (consumer side, bootstrap queries).
 */
#ifndef KVB_HW_VLLM_GEN2_INT_H
#define KVB_HW_VLLM_GEN2_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>
#include <kvbridge/layout.h>

#include "control/kvb_hw_vllm_bootstrap.h"
#include "events/kvb_hw_events.h"
#include "events/kvb_hw_zmq.h"
#include "kvb_vllm_bootstrap_wire.h"
#include "kvb_vllm_xfer_wire.h"

/* vLLM's words when a producer waited in vain for the prefill. */
#define TIMEOUT_TEXT "Timeout waiting for P side ready."

typedef struct v2region {
	kvb_region_t r;
	char name[KVB_VLLM_NAME_MAX];
	uint32_t occurrence;        /* among the regions of the same name, in order */
} v2region_t;

struct hw_vllm2 {
	hw_t *hw;
	void *router;
	int router_fd;
	hw_watch_t *router_w;
	hw_zmq_gate_t *gate;        /* shuts down connections from outside allow_peers */
	hw_deadline_t *kick;        /* re-check ZMQ_EVENTS after sends (edge-triggered fd) */
	char worker_addr[KVB_VLLM_ADDR_MAX]; /* tcp://host:port */
	uint16_t router_port;

	/* the layout decoders pair with, and who we are */
	v2region_t *regions;
	uint32_t n_regions;
	uint32_t n_groups;
	uint32_t tp_size, tp_rank, pp_size, pp_rank, dp_rank;
	char engine_id[KVB_VLLM_ENGINE_ID_MAX];
	bool have_layout;
	hw_vllm_boot_call_t *reg_call;

	GQueue sessions;            /* v2sess_t*: producer side */
	GHashTable *decoders;       /* "host:port" -> v2decoder_t*: descriptors and idle lanes */
	kvb_vllm_xfer_profile_t profile; /* consumer side: how our requests are encoded */
	GHashTable *engines;        /* "bootstrap|engine" -> v2engine_t* (query cache) */
	GQueue queries;             /* v2query_t* */
	GHashTable *idle_chans;     /* "tcp://host:port" -> GQueue of idle v2chan_t* */
};

/* The consumer side's state: made by start, released by stop. */
void hw_vllm2_client_init(struct hw_vllm2 *v);
void hw_vllm2_client_fini(struct hw_vllm2 *v);

#endif /* KVB_HW_VLLM_GEN2_INT_H */
