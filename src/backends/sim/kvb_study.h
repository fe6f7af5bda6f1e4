/*
 * A disaggregated-serving study on the sim backend: prefill and decode
 * nodes, each one kvbridge connector on its NIC hosts, a router, a workload,
 * faults, and the measurements (per-request CSV, per-NIC utilization,
 * JSONL events, summary).
 *
 * The serving model around the connector is deliberately small and stated:
 *  - the router sends each request at its arrival to a prefill node and a
 *    decode node (round robin; crashed decode nodes are skipped), at the
 *    same time, as vLLM's Gen 1+ proxy does;
 *  - a prefill node runs one prefill at a time, FIFO, when its KV pool has
 *    room; prefill time comes from kvb_prefill_seconds (FLOPs); a prefill
 *    prefix cache (hash ids, LRU) skips cached tokens;
 *  - a decode node pulls as soon as its KV pool has room (late decoders add
 *    a delay), holds the blocks while it decodes output_tokens x tpot, and
 *    a decode prefix cache (hash ids, LRU) removes the blocks it already
 *    holds from what must move (tail alignment does the rest);
 *  - KV layout: one region per GPU, 16-token blocks, cross-layer (a block
 *    holds every layer of its tokens for that GPU's share of the heads), so a
 *    request is one contiguous run per GPU when the pool is not fragmented;
 *  - TTFT = done - arrival + one decode step.
 * The connector (state machines, leases, slicing, NIC policies) is the
 * core's own code, unchanged.
 */
#ifndef KVB_SIM_STUDY_H
#define KVB_SIM_STUDY_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>
#include <kvbridge/config.h>
#include <kvbridge/model.h>
#include <kvbridge/sim.h>

#include "kvb_platform.h"
#include "kvb_workload.h"

typedef enum kvb_fault_action {
	KVB_FA_CRASH = 1,        /* a node dies (decode or prefill) */
	KVB_FA_NIC_DOWN = 2,     /* one NIC of one node */
	KVB_FA_NIC_UP = 3,
	KVB_FA_NIC_DEGRADE = 4,  /* NIC bandwidth x factor */
	KVB_FA_RAIL_DOWN = 5,    /* NIC `nic` of every node */
	KVB_FA_RAIL_UP = 6,
} kvb_fault_action_t;

typedef struct kvb_study_fault {
	kvb_fault_action_t action;
	double at_s;
	kvb_platform_role_t role;
	uint32_t node;
	uint32_t nic;
	double factor;
} kvb_study_fault_t;

/* Parse "crash:decode:3@120", "nic-down:prefill:0:2@60", "nic-up:prefill:0:2@90",
 * "nic-degrade:decode:1:0:0.5@30", "rail-down:3@100", "rail-up:3@200". */
gboolean kvb_study_fault_parse(const char *spec, kvb_study_fault_t *f, GError **err);

typedef struct kvb_study_params {
	kvb_platform_desc_t platform;
	char *platform_xml;            /* a user's SimGrid XML instead of `platform` */
	const kvb_model_t *model;
	uint32_t block_tokens;         /* tokens per KV block (16) */
	double kv_pool_gbytes;         /* KV pool per node, GB (400) */
	kvb_gpu_params_t gpu;          /* prefill speed */
	double decode_tpot_s;          /* decode time per output token (0.03) */
	bool prefill_prefix_cache;     /* skip cached tokens in prefill (true) */
	bool decode_prefix_cache;      /* blocks a decode node holds do not move (true) */
	uint64_t prefix_cache_blocks;  /* per node, in 512-token hash blocks; 0 = what the KV
					* pool holds (kv_pool_gbytes / bytes of 512 tokens) */
	kvb_config_t conn;             /* connector config of every node (role set per node) */
	kvb_sim_flow_model_t flow_model;
	double abort_prob;             /* decode-side client abort probability */
	double abort_after_mean_s;     /* exponential delay of the abort after arrival */
	double late_prob;              /* fraction of late decoders */
	double late_delay_mean_s;      /* exponential extra delay before their pull */
	kvb_study_fault_t *faults;
	uint32_t n_faults;
	uint64_t seed;
	const char *out_dir;           /* NULL: no files */
	bool events;                   /* write events.jsonl */
	bool progress;                 /* progress lines on stderr */
	double sample_s;               /* NIC utilisation period, 0 = span / 200 */
} kvb_study_params_t;

void kvb_study_params_defaults(kvb_study_params_t *p);
void kvb_study_params_clear(kvb_study_params_t *p);

typedef struct kvb_study_result {
	uint64_t requests, done, failed, aborted, crashed;
	double sim_end_s, wall_s;
	double xfer_p50_s, xfer_p90_s, xfer_p99_s, xfer_mean_s;
	double ttft_mean_s, ttft_p50_s, ttft_p99_s;
	double ttft_share_mean;        /* transfer / TTFT, mean over done requests */
	double block_seconds_held;     /* producer blocks x seconds from ready to release */
	double block_seconds_leaked;   /* the same for requests whose lease expired */
	uint64_t leases_expired;
	uint64_t stale_reads;          /* ops that read blocks not held by their request */
	double nic_imbalance;          /* max / mean bytes over prefill NICs */
	double bytes_moved;
	double avg_rate_GBps;          /* bytes moved / sum of transfer times */
	kvb_sim_stats_t sim;
	uint64_t peak_rss_kb;
} kvb_study_result_t;

/* Run one study.  SimGrid runs once per process: call this once. */
gboolean kvb_study_run(const kvb_study_params_t *p, const kvb_workload_t *wl, kvb_study_result_t *res,
		       GError **err);

/* Mooncake FAST'25 Fig. 12: one prefill and one decode node of p's platform;
 * for each size, `concurrency` transfers of size / concurrency start at once
 * and seconds[k] is the time until the last lands.  Sizes in GB (1e9 B).
 * stats (may be NULL) receives the flow counts.
 * Calls SimGrid: once per process, instead of kvb_study_run. */
gboolean kvb_study_transfer_bench(const kvb_study_params_t *p, const double *sizes_gb, uint32_t n_sizes,
				  uint32_t concurrency, double *seconds, kvb_sim_stats_t *stats, GError **err);

/* The summary as text (g_free). */
char *kvb_study_summary(const kvb_study_params_t *p, const kvb_study_result_t *r);

#endif /* KVB_SIM_STUDY_H */
