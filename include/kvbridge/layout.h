/*
 * KV-cache layout math: regions, block addresses, tail alignment, run
 * coalescing, tensor-parallel pairing and byte plans, copy plans and slicing.
 *
 * Vocabulary (as vLLM's MooncakeConnector uses it):
 *  - A *region* is one contiguous array of equal-sized block slots: one layer
 *    tensor, or one K or V half of it.  Block b of a region starts at
 *    base + b * block_stride; only the first block_bytes of each slot carry
 *    data (block_bytes <= block_stride).
 *  - Regions carry the model layer and KV-cache group they belong to.  The two
 *    sides pair their regions by (group, layer, occurrence): the n-th region of
 *    a given layer and group on one side pairs with the n-th on the other.
 *  - Block ids are per group: a request lists, per group, the block ids that
 *    hold its tokens, in token order.
 *  - When the producer lists more blocks than the consumer (the consumer
 *    already had a prefix cached), the producer sends its *last* n blocks:
 *    tail alignment.  A producer with fewer blocks than the consumer is an
 *    error.
 *  - Within a block the layout is head-major (vLLM "LBHNC"/HND): the bytes of
 *    each KV head are contiguous, which lets unequal TP sizes slice a block by
 *    head.
 *
 * Everything here is pure arithmetic over caller memory: no allocation unless
 * stated, no backend, no clock.  Each function validates its input and
 * reports the offending value through kvb_err_t.
 */
#ifndef KVBRIDGE_LAYOUT_H
#define KVBRIDGE_LAYOUT_H

#include <stdbool.h>
#include <stdint.h>
#include <kvbridge/error.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Where a region's memory lives; selects the NIC topology entry. */
typedef enum kvb_mem_kind {
	KVB_MEM_HOST = 0, /* host memory; device = NUMA node (-1 unknown) */
	KVB_MEM_CUDA = 1, /* CUDA device memory; device = GPU ordinal */
} kvb_mem_kind_t;

typedef struct kvb_region {
	uint64_t base;          /* address of block 0 */
	uint64_t block_stride;  /* bytes from block b to block b + 1 (> 0) */
	uint64_t block_bytes;   /* meaningful bytes per block (0 < bytes <= stride) */
	uint32_t num_blocks;    /* block slots in the region (> 0) */
	int32_t layer;          /* model layer index (>= 0) */
	int32_t group;          /* KV-cache group index (>= 0) */
	kvb_mem_kind_t mem_kind;
	int32_t device;         /* NUMA node or GPU ordinal, -1 when unknown */
} kvb_region_t;

/* Hard limits shared by the API and the wire codec. */
#define KVB_MAX_REGIONS 8192u
#define KVB_MAX_GROUPS 64u
#define KVB_MAX_BLOCKS_PER_GROUP (1u << 22)

/* A borrowed list of block ids (one KV-cache group of one request). */
typedef struct kvb_block_list {
	const uint32_t *ids;
	uint32_t count;
} kvb_block_list_t;

/* Check one region: non-zero sizes, block_bytes <= block_stride, no address
 * overflow, non-negative layer and group. */
KVB_API int kvb_region_check(const kvb_region_t *region, kvb_err_t *err);

/* Check a whole layout: every region valid, group indices dense from 0,
 * regions pairwise disjoint in their meaningful bytes (regions with the same
 * stride may interleave, as vLLM's per-K/V regions of one tensor do; with
 * different strides their spans must not overlap).  On success *n_groups (if not NULL) is the
 * number of groups. */
KVB_API int kvb_layout_check(const kvb_region_t *regions, uint32_t n_regions,
			     uint32_t *n_groups, kvb_err_t *err);

/* Address range [*addr, *addr + *len) of the meaningful bytes of block_id.
 * KVB_ERR_RANGE when block_id >= num_blocks. */
KVB_API int kvb_region_block_range(const kvb_region_t *region, uint32_t block_id,
				   uint64_t *addr, uint64_t *len, kvb_err_t *err);

/* Number of bytes a region spans in memory (num_blocks * block_stride). */
KVB_API uint64_t kvb_region_span(const kvb_region_t *region);

/* Location name used by the NIC topology, e.g. "cuda:0", "cpu:1", "cpu:*". */
KVB_API void kvb_region_location(const kvb_region_t *region, char *buf, size_t len);

/* Tail alignment: with n_src producer blocks and n_dst consumer blocks, the
 * producer sends src[*src_skip .. n_src) to dst[0 .. n_dst).  KVB_ERR_LAYOUT
 * when n_src < n_dst. */
KVB_API int kvb_tail_align(uint32_t n_src, uint32_t n_dst, uint32_t *src_skip,
			   kvb_err_t *err);

/* A run of blocks contiguous on both sides: src_first + i -> dst_first + i. */
typedef struct kvb_run {
	uint32_t src_first;
	uint32_t dst_first;
	uint32_t count;
} kvb_run_t;

/* Split paired id lists (src[i] -> dst[i], i < n) into maximal runs where
 * both ids increase by exactly 1.  runs must hold n entries (the worst
 * case); returns the number of runs written. */
KVB_API uint32_t kvb_runs_build(const uint32_t *src, const uint32_t *dst, uint32_t n,
				kvb_run_t *runs);

/* ---- tensor parallelism ------------------------------------------------ */

/* vLLM's tp_ratio(local, remote): local/remote when local >= remote (must
 * divide evenly), else -(remote/local).  KVB_ERR_LAYOUT when neither size
 * divides the other. */
KVB_API int kvb_tp_ratio(uint32_t local_tp, uint32_t remote_tp, int32_t *ratio,
			 kvb_err_t *err);

/* Which remote ranks a local rank exchanges KV with (vLLM's
 * handshake_target_ranks): local_tp >= remote_tp gives one rank,
 * rank / (local_tp / remote_tp); otherwise k = remote_tp / local_tp ranks
 * rank * k + i.  ranks must hold max(1, remote_tp / local_tp) entries;
 * *n_ranks receives the count. */
KVB_API int kvb_tp_targets(uint32_t local_tp, uint32_t local_rank, uint32_t remote_tp,
			   uint32_t *ranks, uint32_t *n_ranks, kvb_err_t *err);

/* True when producer rank p and consumer rank d exchange KV. */
KVB_API bool kvb_tp_pairs(uint32_t p_tp, uint32_t p_rank, uint32_t d_tp, uint32_t d_rank);

/* One side of a TP byte plan. */
typedef struct kvb_tp_side {
	uint32_t tp_size;
	uint32_t tp_rank;
	uint64_t kv_block_bytes; /* meaningful bytes per block on this rank */
} kvb_tp_side_t;

/* What producer rank p sends of each block to consumer rank d. */
typedef struct kvb_tp_plan {
	bool send;        /* false: nothing to send (replica skip or no shared head) */
	uint64_t src_off; /* offset within the producer's block */
	uint64_t dst_off; /* offset within the consumer's block */
	uint64_t len;     /* bytes per block */
} kvb_tp_plan_t;

/* Byte plan for a paired (p, d).  total_kv_heads is the model's KV head
 * count (0 = unknown: heads are treated as max(p_tp, d_tp) equal shares, which
 * gives vLLM's offset rule for unequal TP).  A rank holds
 * max(1, heads / tp) heads starting at head (rank * heads) / tp; when tp >
 * heads the KV is replicated.  Among the producer ranks a consumer rank pulls
 * from, only the first holder of each head sends it: p sends when
 * p % min(p_tp / heads, max(1, p_tp / d_tp)) == 0 (vLLM's p % r == 0 when the
 * consumer is not replicated).  Unpaired (p, d) get send = false.  The plan
 * copies the heads both ranks hold, so bytes-per-head must agree on both
 * sides: KVB_ERR_LAYOUT otherwise.  For MLA pass total_kv_heads = 1. */
KVB_API int kvb_tp_plan(const kvb_tp_side_t *producer, const kvb_tp_side_t *consumer,
			uint32_t total_kv_heads, kvb_tp_plan_t *plan, kvb_err_t *err);

/* ---- copy plans -------------------------------------------------------- */

/* One contiguous copy from a producer address to a consumer address. */
typedef struct kvb_copy {
	uint32_t src_region;
	uint32_t dst_region;
	uint64_t src_addr;
	uint64_t dst_addr;
	uint64_t len;
} kvb_copy_t;

/* Pair regions by (group, layer, occurrence).  pair[i] receives the consumer
 * region index for producer region i.  KVB_ERR_LAYOUT when the counts differ or
 * a region has no partner. */
KVB_API int kvb_regions_pair(const kvb_region_t *src, uint32_t n_src,
			     const kvb_region_t *dst, uint32_t n_dst,
			     uint32_t *pair, kvb_err_t *err);

/* Build the copies that move a request from producer to consumer:
 * pair the regions, tail-align each group's block lists, find runs, apply the
 * TP byte plan, and merge copies adjacent in memory on both sides.  Block ids
 * are range-checked against both sides' regions.  On success *copies is a
 * g_malloc'ed array (free with g_free) of *n_copies entries (0 when the plan
 * sends nothing) and *total_bytes their sum. */
KVB_API int kvb_copy_plan_build(const kvb_region_t *src, uint32_t n_src,
				const kvb_block_list_t *src_groups,
				const kvb_region_t *dst, uint32_t n_dst,
				const kvb_block_list_t *dst_groups,
				uint32_t n_groups, const kvb_tp_plan_t *tp,
				kvb_copy_t **copies, uint32_t *n_copies,
				uint64_t *total_bytes, kvb_err_t *err);

/* ---- slicing ----------------------------------------------------------- */

/* Mooncake defaults: 64 KiB slices; a remainder of at most slice + slice/4
 * goes out as one slice, so the last slice of a copy is 1 byte .. 80 KiB and
 * the others exactly 64 KiB (Mooncake's submitTransfer rule). */
#define KVB_DEFAULT_SLICE_SIZE (64u * 1024u)
#define KVB_DEFAULT_FRAGMENT_LIMIT (16u * 1024u)

/* Length of the next slice when `remaining` bytes are left of a copy:
 * remaining itself if it is <= slice_size + fragment_limit, else slice_size. */
KVB_API uint64_t kvb_slice_next_len(uint64_t remaining, uint64_t slice_size,
				    uint64_t fragment_limit);

/* Number of slices a copy of len bytes is cut into. */
KVB_API uint64_t kvb_slice_count(uint64_t len, uint64_t slice_size, uint64_t fragment_limit);

#ifdef __cplusplus
}
#endif
#endif /* KVBRIDGE_LAYOUT_H */
