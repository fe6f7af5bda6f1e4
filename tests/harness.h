/*
 * Test harness for connector tests: workers (a connector over a loop
 * endpoint, optionally fault-wrapped, with a real KV layout in memory) on
 * one fabric, a byte pattern that any TP rank can verify, and the teardown
 * invariant every test ends with.
 *
 * Pattern: byte o of the meaningful part of a block at token-block position
 * pos (counted from the END of the request's block list, so tail alignment
 * needs no bookkeeping) in layer L of transfer seed S carries
 * mix(S, L, pos, global head of o, offset within the head).  Bytes outside
 * meaningful data are a canary (0xEE on consumers) that must never change.
 */
#ifndef KVB_TESTS_HARNESS_H
#define KVB_TESTS_HARNESS_H

#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/fault.h>
#include <kvbridge/loop.h>

#define H_MAX_WORKERS 16
#define S(x) ((uint64_t)((x) * 1e9)) /* seconds to ns */
#define H_CANARY 0xEE

typedef struct h_opts {
	kvb_role_t role;
	uint32_t tp_size, tp_rank, total_kv_heads;
	uint32_t layers;          /* regions (one per layer) */
	uint32_t groups;          /* layer L is in group L % groups */
	uint32_t num_blocks;
	uint64_t block_bytes;     /* meaningful bytes per block */
	uint64_t stride;          /* 0 = block_bytes */
	uint32_t n_nics;
	uint64_t nic_Bps;         /* loop NIC bandwidth */
	uint64_t latency_ns, msg_latency_ns;
	uint32_t queue_depth;     /* loop per-NIC queue */
	bool fault;               /* wrap the endpoint in the fault backend */
	double lease_s;           /* abort timeout */
	kvb_lease_policy_t lease_policy;
	double heartbeat_s, lease_min_s, lease_max_s; /* 0 = connector defaults */
	double consumer_timeout_s;/* 0 = lease + 60 */
	double unprefilled_wait_s;/* 0 = the lease */
	uint32_t slice_retries;
	uint32_t nic_queue_depth; /* connector: slices in flight per NIC */
	uint32_t nic_error_threshold;
	double nic_cooldown_s;
	uint64_t slice_size;
	const char *policy;
	uint64_t seed;
} h_opts_t;

typedef struct h_worker {
	char name[64];
	h_opts_t opts;
	kvb_backend_t *be;        /* what the connector uses (fault or loop) */
	kvb_backend_t *loop_be;   /* the loop endpoint */
	kvb_connector_t *conn;
	uint8_t *mem, *expect;
	size_t mem_len;
	kvb_region_t regions[64];
	GArray *finished;         /* kvb_finished_t */
	GArray *records;          /* kvb_xfer_record_t copies (strings dropped) */
	bool dead;
} h_worker_t;

typedef struct h_world {
	kvb_loop_fabric_t *fabric;
	h_worker_t *w[H_MAX_WORKERS];
	uint32_t n;
} h_world_t;

/* Defaults: kv_both, TP 1, 4 layers, 1 group, 64 blocks of 4 KiB (stride
 * 4 KiB + 512 padding), 2 NICs at 25 GB/s, lease 10 s, 4 KiB slices so even
 * small requests have many slices. */
void h_opts_default(h_opts_t *o);

h_world_t *h_world_new(uint64_t seed);
h_worker_t *h_add(h_world_t *w, const char *name, const h_opts_t *o);
/* Free every worker and the fabric (connectors first, then backends). */
void h_world_free(h_world_t *w);

/* Kill a worker as if its process died: endpoint killed, connector freed. */
void h_kill(h_world_t *w, h_worker_t *x);

/* Drive until pred(user) is true (pred NULL: until nothing is left to do).
 * Returns the kvb_loop_drive status.  Finished requests are collected into
 * each worker's `finished` array on the way. */
int h_run(h_world_t *w, bool (*pred)(void *), void *user, double max_s);
/* Drive for a span of virtual time (or until dry). */
void h_run_for(h_world_t *w, double seconds);
void h_collect(h_world_t *w);

/* Fill a producer's blocks of one request with the pattern, and record them
 * as expected contents. */
void h_fill(h_worker_t *x, uint64_t seed, const kvb_block_list_t *groups, uint32_t n_groups);
/* Record the pattern a consumer's blocks must hold after a good transfer. */
void h_expect(h_worker_t *x, uint64_t seed, const kvb_block_list_t *groups, uint32_t n_groups);
/* Accept whatever the blocks hold now (failed transfer: contents undefined). */
void h_forget(h_worker_t *x, const kvb_block_list_t *groups, uint32_t n_groups);
/* Compare all of a worker's memory with its expected image; on mismatch
 * report the first differing byte's region, block and offset. */
void h_verify(h_worker_t *x);

/* Convenience: a single-group block list from ids. */
#define H_LIST(...) ((kvb_block_list_t){(const uint32_t[]){__VA_ARGS__}, \
	(uint32_t)(sizeof((const uint32_t[]){__VA_ARGS__}) / sizeof(uint32_t))})

/* Expect helper: one producer address. */
int h_expect_pull(h_worker_t *consumer, const char *request_id, const char *transfer_id,
		  const char *producer);

/* Pull helper: one producer address. */
int h_pull(h_worker_t *consumer, const char *request_id, const char *transfer_id,
	   const char *producer, const kvb_block_list_t *groups, uint32_t n_groups);

/* Finished entry of a worker by id, or NULL. */
const kvb_finished_t *h_finished(h_worker_t *x, const char *id);

/* Teardown invariant: on every live worker, no block held, no live request,
 * every finished entry collected; then h_verify on each. */
void h_invariants(h_world_t *w);

/* Assert that a request finished with this state and status; returns it. */
const kvb_finished_t *h_expect_finished(h_worker_t *x, const char *id, int state, int status);
/* Drive until a request reaches a state (asserting it does). */
void h_run_until(h_world_t *w, h_worker_t *x, const char *id, int state, bool producer);
/* A producer "p0" and a consumer "d0" with the given options (role overridden). */
void h_pair(h_world_t *w, h_worker_t **p, h_worker_t **d, const h_opts_t *base);

/* State predicates for h_run. */
typedef struct h_state_wait {
	h_worker_t *x;
	const char *id;
	int state;
	bool producer;
} h_state_wait_t;
bool h_pred_state(void *user);      /* request reached state (or ended with it) */
bool h_pred_finished(void *user);   /* request id finished on worker */

#endif
