/*
 * Helpers of the hw backend's loopback suites (check_hw_backend,
 * check_hw_vllm2): one side = a backend instance and a connector on a
 * shared GMainContext, with a paged KV layout in host or emulated GPU
 * memory whose bytes the test fills and checks.
 */
#ifndef KVB_TEST_HW_SIDE_H
#define KVB_TEST_HW_SIDE_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/hw.h>

#define LAYERS 4
#define BLOCKS 64
#define BLOCK_BYTES 8192u
#define STRIDE (BLOCK_BYTES + 512u)
#define S_NS(x) ((uint64_t)((x) * 1e9))

typedef struct side {
	kvb_backend_t *be;
	kvb_connector_t *c;
	uint8_t *mem;            /* what the regions point at (emulated GPU memory when gpu) */
	uint8_t *view;           /* host copy the test fills and checks (== mem on the host) */
	bool gpu;
	size_t len;
	uint64_t block_bytes;    /* meaningful bytes per block (BLOCK_BYTES unless set) */
	kvb_region_t regs[LAYERS];
	GArray *fin;             /* kvb_finished_t */
} side_t;

/* What side_open_opt may change from the defaults. */
typedef struct side_opts {
	uint32_t nics;           /* 0 = 1 */
	uint16_t side_port;      /* vLLM gen0 side channel */
	bool gpu;
	uint64_t staging_chunk, staging_bytes;
	kvb_hw_vllm_protocol_t vllm; /* KVB_HW_VLLM_AUTO by default */
	uint16_t bootstrap_port; /* gen2: serve the bootstrap here */
	const char *bootstrap_server; /* gen2: register there */
	const char *engine_id;   /* gen2 layout */
	uint32_t tp_size, tp_rank; /* 0, 0 = 1, 0 */
	uint32_t dp_rank;
	double abort_timeout_s;  /* params.vllm_abort_timeout_ns; 0 = default */
	uint16_t rpc_port;       /* 0 = random */
	uint64_t block_bytes;    /* 0 = BLOCK_BYTES (at most STRIDE) */
	const char *allow_peers; /* params.allow_peers */
	const char *secret_file; /* params.secret_file */
	const char *tls_cert, *tls_key, *tls_ca; /* params.tls_* */
	void (*warn_fn)(void *arg, const char *line); /* params.warn_fn */
	void *warn_arg;
} side_opts_t;

extern GMainContext *hw_side_ctx;

void side_open_opt(side_t *s, kvb_role_t role, double lease_s, const side_opts_t *o);
void side_open_mem(side_t *s, kvb_role_t role, double lease_s, uint32_t nics, uint16_t side_port,
		   bool gpu, uint64_t staging_chunk, uint64_t staging_bytes);
void side_open(side_t *s, kvb_role_t role, double lease_s, uint32_t nics, uint16_t side_port);
/* Host address of a region address (the test's view of GPU memory). */
uint8_t *at(side_t *s, uint64_t addr);
/* Teardown invariant (no block held, no live request), then close. */
void side_close(side_t *s);
void step(side_t **sides, int n);
/* Run until side s has want finished requests or max_s passes. */
bool run_until(side_t **sides, int n, side_t *s, guint want, double max_s);
void fill_request(side_t *s, const char *id, const uint32_t *blocks, uint32_t n);
uint64_t check_request(side_t *s, const char *id, const uint32_t *blocks, uint32_t n);
void pull(side_t *cons, const char *addr, const char *id, const uint32_t *blocks, uint32_t n);
void produce(side_t *prod, const char *id, const uint32_t *blocks, uint32_t n);
void hw_side_setup(void);
void hw_side_teardown(void);

#endif /* KVB_TEST_HW_SIDE_H */
