/*
 * KV-cache layout math: region checks, tail alignment, runs, TP pairing and
 * byte plans, copy plans, slicing.  Pure arithmetic over caller memory; the
 * only allocations are the copy plan's output and its scratch arrays.
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/layout.h>

/* ---- regions ----------------------------------------------------------- */

int kvb_region_check(const kvb_region_t *region, kvb_err_t *err)
{
	if (!region)
		return kvb_err_set(err, KVB_ERR_INVALID, "region is NULL");
	if (region->num_blocks == 0)
		return kvb_err_set(err, KVB_ERR_INVALID, "region has 0 blocks");
	if (region->block_stride == 0)
		return kvb_err_set(err, KVB_ERR_INVALID, "region block_stride is 0");
	if (region->block_bytes == 0)
		return kvb_err_set(err, KVB_ERR_INVALID, "region block_bytes is 0");
	if (region->block_bytes > region->block_stride)
		return kvb_err_set(err, KVB_ERR_INVALID,
				   "region block_bytes %" PRIu64 " exceeds block_stride %" PRIu64,
				   region->block_bytes, region->block_stride);
	if (region->block_stride > UINT64_MAX / region->num_blocks)
		return kvb_err_set(err, KVB_ERR_INVALID,
				   "region of %u blocks of stride %" PRIu64 " overflows 64 bits",
				   region->num_blocks, region->block_stride);
	uint64_t span = (uint64_t)region->num_blocks * region->block_stride;
	if (span > UINT64_MAX - region->base)
		return kvb_err_set(err, KVB_ERR_INVALID,
				   "region at 0x%" PRIx64 " spanning %" PRIu64 " bytes wraps the address space",
				   region->base, span);
	if (region->layer < 0)
		return kvb_err_set(err, KVB_ERR_INVALID, "region layer %d is negative", region->layer);
	if (region->group < 0)
		return kvb_err_set(err, KVB_ERR_INVALID, "region group %d is negative", region->group);
	if (region->mem_kind != KVB_MEM_HOST && region->mem_kind != KVB_MEM_CUDA)
		return kvb_err_set(err, KVB_ERR_INVALID, "region mem_kind %d is unknown",
				   (int)region->mem_kind);
	return KVB_OK;
}

uint64_t kvb_region_span(const kvb_region_t *region)
{
	if (!region)
		return 0;
	if (region->num_blocks && region->block_stride > UINT64_MAX / region->num_blocks)
		return UINT64_MAX; /* saturate; kvb_region_check rejects such a region */
	return (uint64_t)region->num_blocks * region->block_stride;
}

int kvb_region_block_range(const kvb_region_t *region, uint32_t block_id, uint64_t *addr,
			   uint64_t *len, kvb_err_t *err)
{
	int rc = kvb_region_check(region, err);
	if (rc != KVB_OK)
		return rc;
	if (block_id >= region->num_blocks)
		return kvb_err_set(err, KVB_ERR_RANGE, "block %u outside region (%u blocks)", block_id,
				   region->num_blocks);
	if (addr)
		*addr = region->base + (uint64_t)block_id * region->block_stride;
	if (len)
		*len = region->block_bytes;
	return KVB_OK;
}

void kvb_region_location(const kvb_region_t *region, char *buf, size_t len)
{
	if (!buf || len == 0)
		return;
	if (!region) {
		buf[0] = '\0';
		return;
	}
	const char *kind = region->mem_kind == KVB_MEM_CUDA ? "cuda" : "cpu";
	if (region->device < 0)
		snprintf(buf, len, "%s:*", kind);
	else
		snprintf(buf, len, "%s:%d", kind, region->device);
}

/* Index of a region sorted by base address, for the overlap sweep. */
struct region_ref {
	uint64_t base;
	uint32_t index;
};

static int region_ref_cmp(const void *a, const void *b)
{
	const struct region_ref *x = a, *y = b;
	if (x->base != y->base)
		return x->base < y->base ? -1 : 1;
	return x->index < y->index ? -1 : (x->index > y->index);
}

/*
 * Do the data bytes of two valid regions share an address?  Regions whose
 * spans are disjoint never do.  Regions with the same stride may interleave:
 * vLLM makes one region per cache[:, i] when a block is not dense, so the K
 * and V halves of a layer share a stride and sit at different offsets inside
 * each slot.  They are disjoint when b's data, at offset r inside a's slot,
 * starts after a's data and ends before the next slot (conservative at the
 * span edges).  Different strides with overlapping spans count as overlap.
 */
static bool regions_collide(const kvb_region_t *a, const kvb_region_t *b)
{
	if (a->base > b->base) {
		const kvb_region_t *t = a;
		a = b;
		b = t;
	}
	if (b->base - a->base >= kvb_region_span(a))
		return false;
	if (a->block_stride != b->block_stride)
		return true;
	uint64_t r = (b->base - a->base) % a->block_stride;
	return !(r >= a->block_bytes && b->block_bytes <= a->block_stride - r);
}

/*
 * Sweep the regions in address order, comparing each with the earlier ones
 * whose span reaches it.  With separate tensors the active set holds one
 * region and the check is O(n log n); interleaved K/V halves add one more.
 */
static int layout_check_overlap(const kvb_region_t *regions, uint32_t n, kvb_err_t *err)
{
	struct region_ref *refs = g_new(struct region_ref, n);
	uint32_t *active = g_new(uint32_t, n);
	uint32_t n_active = 0;
	int rc = KVB_OK;

	for (uint32_t i = 0; i < n; i++) {
		refs[i].base = regions[i].base;
		refs[i].index = i;
	}
	qsort(refs, n, sizeof(*refs), region_ref_cmp);
	for (uint32_t k = 0; k < n && rc == KVB_OK; k++) {
		const kvb_region_t *cur = &regions[refs[k].index];
		uint32_t kept = 0;
		for (uint32_t j = 0; j < n_active; j++) {
			const kvb_region_t *prev = &regions[active[j]];
			if (cur->base - prev->base >= kvb_region_span(prev))
				continue; /* prev ends before cur: drop it from the active set */
			if (regions_collide(prev, cur)) {
				uint32_t lo = active[j] < refs[k].index ? active[j] : refs[k].index;
				uint32_t hi = active[j] < refs[k].index ? refs[k].index : active[j];
				rc = kvb_err_set(err, KVB_ERR_INVALID,
						 "regions %u (0x%" PRIx64 "+%" PRIu64 ") and %u (0x%" PRIx64
						 "+%" PRIu64 ") overlap",
						 lo, regions[lo].base, kvb_region_span(&regions[lo]), hi,
						 regions[hi].base, kvb_region_span(&regions[hi]));
				break;
			}
			active[kept++] = active[j];
		}
		n_active = kept;
		active[n_active++] = refs[k].index;
	}
	g_free(active);
	g_free(refs);
	return rc;
}

int kvb_layout_check(const kvb_region_t *regions, uint32_t n_regions, uint32_t *n_groups,
		     kvb_err_t *err)
{
	uint64_t seen = 0; /* bit g: group g is used (KVB_MAX_GROUPS == 64) */
	int32_t max_group = -1;

	if (n_regions > KVB_MAX_REGIONS)
		return kvb_err_set(err, KVB_ERR_INVALID, "%u regions exceed the limit of %u", n_regions,
				   KVB_MAX_REGIONS);
	if (n_regions && !regions)
		return kvb_err_set(err, KVB_ERR_INVALID, "regions is NULL for %u regions", n_regions);
	for (uint32_t i = 0; i < n_regions; i++) {
		kvb_err_t sub;
		int rc = kvb_region_check(&regions[i], &sub);
		if (rc != KVB_OK)
			return kvb_err_set(err, rc, "region %u: %s", i, sub.msg);
		if ((uint32_t)regions[i].group >= KVB_MAX_GROUPS)
			return kvb_err_set(err, KVB_ERR_INVALID, "region %u: group %d exceeds the limit of %u",
					   i, regions[i].group, KVB_MAX_GROUPS - 1);
		seen |= UINT64_C(1) << regions[i].group;
		if (regions[i].group > max_group)
			max_group = regions[i].group;
	}
	for (int32_t g = 0; g <= max_group; g++)
		if (!(seen & (UINT64_C(1) << g)))
			return kvb_err_set(err, KVB_ERR_INVALID,
					   "group %d has no region (groups must be dense 0..%d)", g,
					   max_group);
	if (n_regions > 1) {
		int rc = layout_check_overlap(regions, n_regions, err);
		if (rc != KVB_OK)
			return rc;
	}
	if (n_groups)
		*n_groups = (uint32_t)(max_group + 1);
	return KVB_OK;
}

/* ---- block lists ------------------------------------------------------- */

int kvb_tail_align(uint32_t n_src, uint32_t n_dst, uint32_t *src_skip, kvb_err_t *err)
{
	if (n_src < n_dst)
		return kvb_err_set(err, KVB_ERR_LAYOUT, "producer has %u blocks, consumer wants %u",
				   n_src, n_dst);
	if (src_skip)
		*src_skip = n_src - n_dst;
	return KVB_OK;
}

uint32_t kvb_runs_build(const uint32_t *src, const uint32_t *dst, uint32_t n, kvb_run_t *runs)
{
	uint32_t n_runs = 0;

	for (uint32_t i = 0; i < n; i++) {
		/* 64-bit compare: UINT32_MAX followed by 0 is not a run */
		if (n_runs && (uint64_t)src[i - 1] + 1 == src[i] && (uint64_t)dst[i - 1] + 1 == dst[i]) {
			runs[n_runs - 1].count++;
			continue;
		}
		runs[n_runs].src_first = src[i];
		runs[n_runs].dst_first = dst[i];
		runs[n_runs].count = 1;
		n_runs++;
	}
	return n_runs;
}

/* ---- tensor parallelism ------------------------------------------------ */

int kvb_tp_ratio(uint32_t local_tp, uint32_t remote_tp, int32_t *ratio, kvb_err_t *err)
{
	if (local_tp == 0 || remote_tp == 0)
		return kvb_err_set(err, KVB_ERR_INVALID, "tp size is 0 (local %u, remote %u)", local_tp,
				   remote_tp);
	uint32_t hi = local_tp >= remote_tp ? local_tp : remote_tp;
	uint32_t lo = local_tp >= remote_tp ? remote_tp : local_tp;
	if (hi % lo)
		return kvb_err_set(err, KVB_ERR_LAYOUT,
				   "tp sizes %u and %u: neither divides the other", local_tp, remote_tp);
	if (hi / lo > INT32_MAX)
		return kvb_err_set(err, KVB_ERR_INVALID, "tp ratio %u/%u is too large", hi, lo);
	if (ratio)
		*ratio = local_tp >= remote_tp ? (int32_t)(hi / lo) : -(int32_t)(hi / lo);
	return KVB_OK;
}

int kvb_tp_targets(uint32_t local_tp, uint32_t local_rank, uint32_t remote_tp, uint32_t *ranks,
		   uint32_t *n_ranks, kvb_err_t *err)
{
	int32_t ratio;
	int rc = kvb_tp_ratio(local_tp, remote_tp, &ratio, err);
	if (rc != KVB_OK)
		return rc;
	if (local_rank >= local_tp)
		return kvb_err_set(err, KVB_ERR_INVALID, "tp rank %u is not below tp size %u",
				   local_rank, local_tp);
	if (!ranks || !n_ranks)
		return kvb_err_set(err, KVB_ERR_INVALID, "ranks or n_ranks is NULL");
	if (ratio > 0) {
		ranks[0] = local_rank / (uint32_t)ratio;
		*n_ranks = 1;
	} else {
		uint32_t k = (uint32_t)-ratio;
		for (uint32_t i = 0; i < k; i++)
			ranks[i] = local_rank * k + i;
		*n_ranks = k;
	}
	return KVB_OK;
}

bool kvb_tp_pairs(uint32_t p_tp, uint32_t p_rank, uint32_t d_tp, uint32_t d_rank)
{
	int32_t ratio;
	if (kvb_tp_ratio(p_tp, d_tp, &ratio, NULL) != KVB_OK || p_rank >= p_tp || d_rank >= d_tp)
		return false;
	if (ratio > 0)
		return d_rank == p_rank / (uint32_t)ratio;
	return d_rank / (uint32_t)-ratio == p_rank;
}

/* The heads one rank holds: [first, first + count), and bytes per head. */
struct tp_heads {
	uint64_t first;
	uint64_t count;
	uint64_t bph;
};

static int tp_side_heads(const kvb_tp_side_t *s, uint32_t heads, const char *who,
			 struct tp_heads *out, kvb_err_t *err)
{
	if (s->tp_size == 0)
		return kvb_err_set(err, KVB_ERR_INVALID, "%s tp size is 0", who);
	if (s->tp_rank >= s->tp_size)
		return kvb_err_set(err, KVB_ERR_INVALID, "%s tp rank %u is not below tp size %u", who,
				   s->tp_rank, s->tp_size);
	if (s->kv_block_bytes == 0)
		return kvb_err_set(err, KVB_ERR_INVALID, "%s kv_block_bytes is 0", who);
	if (heads % s->tp_size && s->tp_size % heads)
		return kvb_err_set(err, KVB_ERR_LAYOUT,
				   "%s tp size %u and %u kv heads: neither divides the other", who,
				   s->tp_size, heads);
	out->count = s->tp_size >= heads ? 1 : heads / s->tp_size;
	out->first = (uint64_t)s->tp_rank * heads / s->tp_size;
	if (s->kv_block_bytes % out->count)
		return kvb_err_set(err, KVB_ERR_LAYOUT,
				   "%s kv_block_bytes %" PRIu64 " is not a multiple of its %" PRIu64
				   " heads",
				   who, s->kv_block_bytes, out->count);
	out->bph = s->kv_block_bytes / out->count;
	return KVB_OK;
}

/*
 * One rule for every TP combination: each rank holds a contiguous head range
 * and the plan copies the heads both ranks hold.  That reproduces vLLM's
 * equal/P>D/P<D offsets when heads are unknown (heads = max tp) and its
 * per-head plan when one side is replicated.  Replicas must not write a D
 * block twice: among the producer ranks paired with d, the ones holding the
 * same head are p_rank rounded down to a multiple of
 * s = min(p_tp / heads, max(1, p_tp / d_tp)), so only those multiples send.
 * (s = p_tp / heads alone, "first of the replica group", starves consumers
 * whose paired producers are all non-first replicas, e.g. heads 1, P 2, D 4.)
 */
int kvb_tp_plan(const kvb_tp_side_t *producer, const kvb_tp_side_t *consumer,
		uint32_t total_kv_heads, kvb_tp_plan_t *plan, kvb_err_t *err)
{
	struct tp_heads ph, dh;
	int rc;

	if (!producer || !consumer || !plan)
		return kvb_err_set(err, KVB_ERR_INVALID, "producer, consumer or plan is NULL");
	memset(plan, 0, sizeof(*plan));
	if (producer->tp_size == 0 || consumer->tp_size == 0)
		return kvb_err_set(err, KVB_ERR_INVALID, "tp size is 0 (producer %u, consumer %u)",
				   producer->tp_size, consumer->tp_size);
	rc = kvb_tp_ratio(producer->tp_size, consumer->tp_size, NULL, err);
	if (rc != KVB_OK)
		return rc;
	uint32_t heads = total_kv_heads;
	if (heads == 0)
		heads = producer->tp_size > consumer->tp_size ? producer->tp_size : consumer->tp_size;
	rc = tp_side_heads(producer, heads, "producer", &ph, err);
	if (rc == KVB_OK)
		rc = tp_side_heads(consumer, heads, "consumer", &dh, err);
	if (rc != KVB_OK)
		return rc;
	if (ph.bph != dh.bph)
		return kvb_err_set(err, KVB_ERR_LAYOUT,
				   "bytes per head differ: producer %" PRIu64 ", consumer %" PRIu64,
				   ph.bph, dh.bph);
	if (!kvb_tp_pairs(producer->tp_size, producer->tp_rank, consumer->tp_size,
			  consumer->tp_rank))
		return KVB_OK;
	if (producer->tp_size > heads) {
		uint32_t group = producer->tp_size / heads;
		uint32_t ratio = producer->tp_size > consumer->tp_size
					 ? producer->tp_size / consumer->tp_size
					 : 1;
		uint32_t step = group < ratio ? group : ratio;
		if (producer->tp_rank % step)
			return KVB_OK;
	}
	uint64_t lo = ph.first > dh.first ? ph.first : dh.first;
	uint64_t p_end = ph.first + ph.count, d_end = dh.first + dh.count;
	uint64_t hi = p_end < d_end ? p_end : d_end;
	if (lo >= hi)
		return KVB_OK;
	plan->send = true;
	plan->src_off = (lo - ph.first) * ph.bph;
	plan->dst_off = (lo - dh.first) * ph.bph;
	plan->len = (hi - lo) * ph.bph;
	return KVB_OK;
}

/* ---- copy plans -------------------------------------------------------- */

/* Sort key for pairing: (group, layer, array index). */
struct pair_key {
	int32_t group;
	int32_t layer;
	uint32_t index;
};

/* Compare (group, layer) only. */
static int pair_key_cmp_gl(const struct pair_key *x, const struct pair_key *y)
{
	if (x->group != y->group)
		return x->group < y->group ? -1 : 1;
	if (x->layer != y->layer)
		return x->layer < y->layer ? -1 : 1;
	return 0;
}

static int pair_key_cmp(const void *a, const void *b)
{
	const struct pair_key *x = a, *y = b;
	int c = pair_key_cmp_gl(x, y);
	if (c)
		return c;
	return x->index < y->index ? -1 : (x->index > y->index);
}

static struct pair_key *pair_keys_sorted(const kvb_region_t *r, uint32_t n)
{
	struct pair_key *keys = g_new(struct pair_key, n ? n : 1);
	for (uint32_t i = 0; i < n; i++) {
		keys[i].group = r[i].group;
		keys[i].layer = r[i].layer;
		keys[i].index = i;
	}
	qsort(keys, n, sizeof(*keys), pair_key_cmp);
	return keys;
}

/*
 * Sorting both sides by (group, layer, index) lines up the n-th occurrence
 * of each (group, layer) at the same position, so pairing is a lockstep walk
 * (O(n log n); layouts reach KVB_MAX_REGIONS and this runs per request).  At
 * the first key mismatch the smaller key's region is the one without partner.
 */
int kvb_regions_pair(const kvb_region_t *src, uint32_t n_src, const kvb_region_t *dst,
		     uint32_t n_dst, uint32_t *pair, kvb_err_t *err)
{
	if (n_src != n_dst)
		return kvb_err_set(err, KVB_ERR_LAYOUT, "producer has %u regions, consumer has %u",
				   n_src, n_dst);
	if (n_src && (!src || !dst || !pair))
		return kvb_err_set(err, KVB_ERR_INVALID, "src, dst or pair is NULL");
	struct pair_key *ks = pair_keys_sorted(src, n_src);
	struct pair_key *kd = pair_keys_sorted(dst, n_dst);
	int rc = KVB_OK;
	uint32_t occ_s = 0, occ_d = 0;

	for (uint32_t k = 0; k < n_src; k++) {
		occ_s = k && pair_key_cmp_gl(&ks[k], &ks[k - 1]) == 0 ? occ_s + 1 : 0;
		occ_d = k && pair_key_cmp_gl(&kd[k], &kd[k - 1]) == 0 ? occ_d + 1 : 0;
		int c = pair_key_cmp_gl(&ks[k], &kd[k]);
		if (c != 0) {
			const struct pair_key *lone = c < 0 ? &ks[k] : &kd[k];
			rc = kvb_err_set(err, KVB_ERR_LAYOUT,
					 "%s region %u (group %d, layer %d, occurrence %u) has no partner",
					 c < 0 ? "producer" : "consumer", lone->index, lone->group,
					 lone->layer, c < 0 ? occ_s : occ_d);
			break;
		}
		pair[ks[k].index] = kd[k].index;
	}
	g_free(ks);
	g_free(kd);
	return rc;
}

/* Per-group state of a copy plan. */
struct plan_group {
	const uint32_t *src_ids; /* tail-aligned: src_ids[i] -> dst_ids[i] */
	const uint32_t *dst_ids;
	uint32_t n;
	kvb_run_t *runs;
	uint32_t n_runs;
};

/* Every used id of group g must fit every region of g on this side: compare
 * the largest id with the smallest region, and name both on failure. */
static int plan_range_check(const kvb_region_t *r, uint32_t n_r, const char *who, int32_t g,
			    const uint32_t *ids, uint32_t n, kvb_err_t *err)
{
	uint32_t min_nb = UINT32_MAX, min_i = 0, max_id = 0, max_at = 0;
	bool any = false;

	for (uint32_t i = 0; i < n_r; i++) {
		if (r[i].group == g && r[i].num_blocks < min_nb) {
			min_nb = r[i].num_blocks;
			min_i = i;
			any = true;
		}
	}
	if (!any || n == 0)
		return KVB_OK;
	for (uint32_t i = 0; i < n; i++) {
		if (ids[i] >= max_id) {
			max_id = ids[i];
			max_at = i;
		}
	}
	if (max_id >= min_nb)
		return kvb_err_set(err, KVB_ERR_RANGE,
				   "group %d: block %u (list index %u) outside %s region %u (%u blocks)",
				   g, max_id, max_at, who, min_i, min_nb);
	return KVB_OK;
}

static int plan_check_regions(const kvb_region_t *r, uint32_t n, uint32_t n_groups, const char *who,
			      kvb_err_t *err)
{
	if (n > KVB_MAX_REGIONS)
		return kvb_err_set(err, KVB_ERR_INVALID, "%s has %u regions, the limit is %u", who, n,
				   KVB_MAX_REGIONS);
	if (n && !r)
		return kvb_err_set(err, KVB_ERR_INVALID, "%s regions is NULL", who);
	for (uint32_t i = 0; i < n; i++) {
		kvb_err_t sub;
		int rc = kvb_region_check(&r[i], &sub);
		if (rc != KVB_OK)
			return kvb_err_set(err, rc, "%s region %u: %s", who, i, sub.msg);
		if ((uint32_t)r[i].group >= n_groups)
			return kvb_err_set(err, KVB_ERR_LAYOUT,
					   "%s region %u: group %d but the request has %u groups", who, i,
					   r[i].group, n_groups);
	}
	return KVB_OK;
}

static int plan_check_lists(const kvb_block_list_t *lists, uint32_t n_groups, const char *who,
			    kvb_err_t *err)
{
	if (n_groups && !lists)
		return kvb_err_set(err, KVB_ERR_INVALID, "%s block lists are NULL", who);
	for (uint32_t g = 0; g < n_groups; g++) {
		if (lists[g].count > KVB_MAX_BLOCKS_PER_GROUP)
			return kvb_err_set(err, KVB_ERR_INVALID, "%s group %u lists %u blocks, the limit is %u",
					   who, g, lists[g].count, KVB_MAX_BLOCKS_PER_GROUP);
		if (lists[g].count && !lists[g].ids)
			return kvb_err_set(err, KVB_ERR_INVALID, "%s group %u: ids is NULL for %u blocks",
					   who, g, lists[g].count);
	}
	return KVB_OK;
}

/*
 * Merging per-block copies that continue each other on both sides gives one
 * copy per run exactly when the slice is the whole slot on both sides
 * (len == both strides, so offsets are 0).  Otherwise nothing ever merges:
 * on a side with len < stride, consecutive slices of one region are at least
 * a stride apart, and maximal runs never continue each other.  So the plan
 * emits the merged result directly.
 */
static bool plan_pair_dense(const kvb_region_t *s, const kvb_region_t *d, const kvb_tp_plan_t *tp)
{
	return tp->len == s->block_stride && tp->len == d->block_stride;
}

/*
 * Validate everything first (regions, pairing, tail alignment, block ranges,
 * TP slice bounds), so an error leaves nothing allocated and a replica that
 * sends nothing still rejects a request its peers would reject.  Then size
 * the output exactly (runs for dense pairs, blocks otherwise) and emit per
 * producer region in array order, runs in list order.
 */
int kvb_copy_plan_build(const kvb_region_t *src, uint32_t n_src, const kvb_block_list_t *src_groups,
			const kvb_region_t *dst, uint32_t n_dst, const kvb_block_list_t *dst_groups,
			uint32_t n_groups, const kvb_tp_plan_t *tp, kvb_copy_t **copies,
			uint32_t *n_copies, uint64_t *total_bytes, kvb_err_t *err)
{
	struct plan_group grp[KVB_MAX_GROUPS];
	uint32_t *pair = NULL;
	kvb_run_t *run_buf = NULL;
	kvb_copy_t *out = NULL;
	uint32_t n_out = 0;
	uint64_t total = 0, total_ids = 0, need = 0;
	int rc;

	if (!copies || !n_copies || !tp)
		return kvb_err_set(err, KVB_ERR_INVALID, "copies, n_copies or tp is NULL");
	*copies = NULL;
	*n_copies = 0;
	if (total_bytes)
		*total_bytes = 0;
	if (n_groups > KVB_MAX_GROUPS)
		return kvb_err_set(err, KVB_ERR_INVALID, "%u groups exceed the limit of %u", n_groups,
				   KVB_MAX_GROUPS);
	if ((rc = plan_check_regions(src, n_src, n_groups, "producer", err)) != KVB_OK ||
	    (rc = plan_check_regions(dst, n_dst, n_groups, "consumer", err)) != KVB_OK ||
	    (rc = plan_check_lists(src_groups, n_groups, "producer", err)) != KVB_OK ||
	    (rc = plan_check_lists(dst_groups, n_groups, "consumer", err)) != KVB_OK)
		return rc;

	pair = g_new(uint32_t, n_src ? n_src : 1);
	rc = kvb_regions_pair(src, n_src, dst, n_dst, pair, err);
	if (rc != KVB_OK)
		goto out;

	for (uint32_t g = 0; g < n_groups; g++) {
		uint32_t skip = 0;
		kvb_err_t sub;
		rc = kvb_tail_align(src_groups[g].count, dst_groups[g].count, &skip, &sub);
		if (rc != KVB_OK) {
			rc = kvb_err_set(err, rc, "group %u: %s", g, sub.msg);
			goto out;
		}
		grp[g].src_ids = src_groups[g].count ? src_groups[g].ids + skip : NULL;
		grp[g].dst_ids = dst_groups[g].ids;
		grp[g].n = dst_groups[g].count;
		rc = plan_range_check(src, n_src, "producer", (int32_t)g, grp[g].src_ids, grp[g].n, err);
		if (rc == KVB_OK)
			rc = plan_range_check(dst, n_dst, "consumer", (int32_t)g, grp[g].dst_ids,
					      grp[g].n, err);
		if (rc != KVB_OK)
			goto out;
		total_ids += grp[g].n;
	}

	if (!tp->send)
		goto out;
	if (tp->len == 0) {
		rc = kvb_err_set(err, KVB_ERR_INVALID, "tp plan sends 0 bytes per block");
		goto out;
	}
	for (uint32_t i = 0; i < n_src; i++) {
		const kvb_region_t *s = &src[i], *d = &dst[pair[i]];
		if (tp->len > s->block_bytes || tp->src_off > s->block_bytes - tp->len ||
		    tp->len > d->block_bytes || tp->dst_off > d->block_bytes - tp->len) {
			rc = kvb_err_set(err, KVB_ERR_LAYOUT,
					 "tp slice src %" PRIu64 "+%" PRIu64 " / dst %" PRIu64 "+%" PRIu64
					 " exceeds producer region %u (%" PRIu64
					 " bytes) or consumer region %u (%" PRIu64 " bytes)",
					 tp->src_off, tp->len, tp->dst_off, tp->len, i, s->block_bytes,
					 pair[i], d->block_bytes);
			goto out;
		}
	}

	run_buf = g_try_new(kvb_run_t, total_ids ? total_ids : 1);
	if (!run_buf) {
		rc = kvb_err_set(err, KVB_ERR_NOMEM, "cannot allocate %" PRIu64 " runs", total_ids);
		goto out;
	}
	for (uint32_t g = 0, used = 0; g < n_groups; g++) {
		grp[g].runs = run_buf + used;
		grp[g].n_runs = kvb_runs_build(grp[g].src_ids, grp[g].dst_ids, grp[g].n, grp[g].runs);
		used += grp[g].n_runs;
	}

	for (uint32_t i = 0; i < n_src; i++) {
		const struct plan_group *pg = &grp[src[i].group];
		need += plan_pair_dense(&src[i], &dst[pair[i]], tp) ? pg->n_runs : pg->n;
	}
	if (need > UINT32_MAX) {
		rc = kvb_err_set(err, KVB_ERR_INVALID, "plan needs %" PRIu64 " copies, more than %u",
				 need, UINT32_MAX);
		goto out;
	}
	if (need == 0)
		goto out;
	out = g_try_new(kvb_copy_t, need);
	if (!out) {
		rc = kvb_err_set(err, KVB_ERR_NOMEM, "cannot allocate %" PRIu64 " copies", need);
		goto out;
	}

	for (uint32_t i = 0; i < n_src; i++) {
		const kvb_region_t *s = &src[i], *d = &dst[pair[i]];
		const struct plan_group *pg = &grp[s->group];
		bool dense = plan_pair_dense(s, d, tp);
		for (uint32_t r = 0; r < pg->n_runs; r++) {
			const kvb_run_t *run = &pg->runs[r];
			uint32_t per = dense ? run->count : 1;
			for (uint32_t b = 0; b < run->count; b += per) {
				uint64_t sa = s->base + (uint64_t)(run->src_first + b) * s->block_stride +
					      tp->src_off;
				uint64_t da = d->base + (uint64_t)(run->dst_first + b) * d->block_stride +
					      tp->dst_off;
				uint64_t len = tp->len * per;
				if (total > UINT64_MAX - len) {
					rc = kvb_err_set(err, KVB_ERR_INVALID,
							 "plan moves more than 2^64 bytes");
					goto out;
				}
				total += len;
				out[n_out++] = (kvb_copy_t){i, pair[i], sa, da, len};
			}
		}
	}

out:
	g_free(run_buf);
	g_free(pair);
	if (rc != KVB_OK) {
		g_free(out);
		return rc;
	}
	if (n_out == 0) {
		g_free(out);
		out = NULL;
	}
	*copies = out;
	*n_copies = n_out;
	if (total_bytes)
		*total_bytes = total;
	return KVB_OK;
}

/* ---- slicing ----------------------------------------------------------- */

uint64_t kvb_slice_next_len(uint64_t remaining, uint64_t slice_size, uint64_t fragment_limit)
{
	/* slice_size 0 would never finish: treat it as "do not slice" */
	if (slice_size == 0 || remaining <= slice_size || remaining - slice_size <= fragment_limit)
		return remaining;
	return slice_size;
}

uint64_t kvb_slice_count(uint64_t len, uint64_t slice_size, uint64_t fragment_limit)
{
	if (len == 0)
		return 0;
	if (slice_size == 0 || len <= slice_size || len - slice_size <= fragment_limit)
		return 1;
	/* full slices until at most slice_size + fragment_limit is left */
	uint64_t over = len - slice_size - fragment_limit;
	return over / slice_size + (over % slice_size != 0) + 1;
}
