/*
 * NIC selection policies: the PRNG, the policy registry, policy instances
 * and the four built-ins (round_robin, random, least_loaded, topology).
 *
 * Randomness is a seeded xoshiro256** so that a run is reproducible from
 * its seed (the core reads no entropy of its own).  Built-ins live in a
 * constant table and are never copied; user policies are copied into a
 * fixed registry (a normalized table: slots past the caller's size read as
 * NULL), so an ops table from an older header never has its tail read.
 * The registry has no lock: register at start-up, as the header says.
 */
#include "config.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/policy.h>

#define POLICY_REGISTRY_MAX 16

/* ---- PRNG: xoshiro256** (Blackman, Vigna), seeded by splitmix64 --------- */

static uint64_t rotl64(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += UINT64_C(0x9e3779b97f4a7c15));
	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

/* splitmix64 expands any seed (0 included) into a state that is never all
 * zero, the one state xoshiro cannot leave. */
void kvb_rng_seed(kvb_rng_t *rng, uint64_t seed)
{
	for (int i = 0; i < 4; i++)
		rng->s[i] = splitmix64(&seed);
}

uint64_t kvb_rng_next(kvb_rng_t *rng)
{
	uint64_t *s = rng->s;
	uint64_t result = rotl64(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl64(s[3], 45);
	return result;
}

/* Rejection sampling: draws below 2^64 mod bound are discarded, so every
 * residue has the same number of preimages.  A bound of 0 or 1 has one
 * answer and consumes no draw. */
uint64_t kvb_rng_below(kvb_rng_t *rng, uint64_t bound)
{
	if (bound <= 1)
		return 0;
	uint64_t threshold = (0 - bound) % bound;
	for (;;) {
		uint64_t r = kvb_rng_next(rng);
		if (r >= threshold)
			return r % bound;
	}
}

double kvb_rng_uniform(kvb_rng_t *rng)
{
	return (double)(kvb_rng_next(rng) >> 11) * 0x1.0p-53;
}

/* ---- helpers shared by the built-ins ------------------------------------ */

static uint32_t view_len(const kvb_nic_view_t *view)
{
	return view->n_nics < KVB_MAX_NICS ? view->n_nics : KVB_MAX_NICS;
}

static bool nic_usable(const kvb_nic_view_t *view, uint32_t nic, uint32_t avoid)
{
	return nic < view_len(view) && view->up[nic] && nic != avoid;
}

/* The avoided NIC is the answer of last resort: taken only when it is the
 * one NIC that is up. */
static int avoid_or_none(const kvb_nic_view_t *view, uint32_t avoid)
{
	if (avoid < view_len(view) && view->up[avoid])
		return (int)avoid;
	return KVB_ERR_NO_RESOURCE;
}

/* A uniform pick among the usable NICs of list (every NIC when list is
 * NULL); KVB_ERR_NO_RESOURCE when none is usable.  Ignores the avoided NIC. */
static int random_among(kvb_rng_t *rng, const kvb_nic_view_t *view, const uint32_t *list,
			uint32_t n_list, uint32_t avoid)
{
	uint32_t cand[KVB_MAX_NICS];
	uint32_t n = 0;

	if (!list)
		n_list = view_len(view);
	for (uint32_t i = 0; i < n_list; i++) {
		uint32_t nic = list ? list[i] : i;
		if (nic_usable(view, nic, avoid) && n < KVB_MAX_NICS)
			cand[n++] = nic;
	}
	if (n == 0)
		return KVB_ERR_NO_RESOURCE;
	return (int)cand[kvb_rng_below(rng, n)];
}


/* ---- bulk placement helpers ----------------------------------------------
 * The built-in bulk placements reproduce, in O(NICs^2) per call, exactly what
 * n single picks would do: the same counts and the same state afterwards.
 * "Usable" for a slice is room > 0 and not the avoided NIC; the avoided NIC
 * takes slices only when no other NIC has room (avoid_or_none). */

typedef struct bulk {
	uint32_t k;                 /* NICs */
	uint32_t room[KVB_MAX_NICS];
	uint32_t *counts;
	uint32_t placed, n;
	uint32_t avoid;
} bulk_t;

static void bulk_begin(bulk_t *b, const kvb_nic_view_t *view, const uint32_t *room, uint32_t n,
		       uint32_t *counts, uint32_t avoid)
{
	b->k = view_len(view);
	for (uint32_t i = 0; i < b->k; i++) {
		b->room[i] = view->up[i] ? room[i] : 0;
		counts[i] = 0;
	}
	b->counts = counts;
	b->placed = 0;
	b->n = n;
	b->avoid = avoid;
}

static bool bulk_usable(const bulk_t *b, uint32_t nic)
{
	return b->room[nic] > 0 && nic != b->avoid;
}

static uint32_t bulk_n_usable(const bulk_t *b)
{
	uint32_t u = 0;
	for (uint32_t i = 0; i < b->k; i++)
		u += bulk_usable(b, i);
	return u;
}

static void bulk_give(bulk_t *b, uint32_t nic, uint32_t c)
{
	b->counts[nic] += c;
	b->room[nic] -= c;
	b->placed += c;
}

/* No NIC but the avoided one has room: every remaining slice it can take
 * goes there, as repeated single picks would do.  Returns false when even
 * it has none. */
static bool bulk_avoid_tail(bulk_t *b, uint32_t *last)
{
	if (b->avoid >= b->k || b->room[b->avoid] == 0)
		return false;
	uint32_t c = MIN(b->n - b->placed, b->room[b->avoid]);
	bulk_give(b, b->avoid, c);
	*last = b->avoid;
	return true;
}

static int bulk_result(const bulk_t *b)
{
	return b->placed ? (int)b->placed : KVB_ERR_NO_RESOURCE;
}

/* ---- round_robin --------------------------------------------------------- */

struct rr_state {
	uint32_t last; /* index of the previous pick */
};

static int rr_init(void *state, const kvb_policy_params_t *params, kvb_err_t *err)
{
	struct rr_state *st = state;
	st->last = params->n_nics - 1; /* so the first pick is NIC 0 */
	return KVB_OK;
}

static int rr_pick(void *state, const kvb_pick_ctx_t *ctx, const kvb_nic_view_t *view)
{
	struct rr_state *st = state;
	uint32_t n = view_len(view);

	for (uint32_t k = 1; k <= n; k++) {
		uint32_t nic = (uint32_t)(((uint64_t)st->last + k) % n);
		if (nic_usable(view, nic, ctx->avoid_nic)) {
			st->last = nic;
			return (int)nic;
		}
	}
	int rc = avoid_or_none(view, ctx->avoid_nic);
	if (rc >= 0)
		st->last = (uint32_t)rc;
	return rc;
}


/* Whole rounds over the usable NICs at once (each gets the same count and
 * the cursor ends on the last one of the round), then a partial round. */
static int rr_pick_bulk(void *state, const kvb_pick_ctx_t *ctx, const kvb_nic_view_t *view,
			const uint32_t *room, uint32_t n, uint32_t *counts)
{
	struct rr_state *st = state;
	bulk_t b;
	bulk_begin(&b, view, room, n, counts, ctx->avoid_nic);
	while (b.placed < n) {
		uint32_t u = bulk_n_usable(&b);
		if (u == 0) {
			bulk_avoid_tail(&b, &st->last);
			break;
		}
		uint32_t min_room = UINT32_MAX, last_in_round = st->last;
		for (uint32_t j = 1; j <= b.k; j++) {
			uint32_t nic = (uint32_t)(((uint64_t)st->last + j) % b.k);
			if (bulk_usable(&b, nic)) {
				min_room = MIN(min_room, b.room[nic]);
				last_in_round = nic;
			}
		}
		uint32_t full = MIN((n - b.placed) / u, min_room);
		if (full >= 1) {
			for (uint32_t i = 0; i < b.k; i++)
				if (bulk_usable(&b, i))
					bulk_give(&b, i, full);
			st->last = last_in_round;
			continue;
		}
		for (uint32_t j = 1; j <= b.k && b.placed < n; j++) {
			uint32_t nic = (uint32_t)(((uint64_t)st->last + j) % b.k);
			if (bulk_usable(&b, nic)) {
				bulk_give(&b, nic, 1);
				st->last = nic;
				j = 0; /* continue after the new cursor */
			}
		}
	}
	return bulk_result(&b);
}

static const kvb_nic_policy_ops_t rr_ops = {
	.abi = KVB_POLICY_ABI,
	.size = sizeof(kvb_nic_policy_ops_t),
	.name = "round_robin",
	.state_size = sizeof(struct rr_state),
	.init = rr_init,
	.pick = rr_pick,
	.pick_bulk = rr_pick_bulk,
};

/* ---- random -------------------------------------------------------------- */

struct random_state {
	kvb_rng_t rng;
};

static int random_init(void *state, const kvb_policy_params_t *params, kvb_err_t *err)
{
	struct random_state *st = state;
	kvb_rng_seed(&st->rng, params->seed);
	return KVB_OK;
}

static int random_pick(void *state, const kvb_pick_ctx_t *ctx, const kvb_nic_view_t *view)
{
	struct random_state *st = state;
	int rc = random_among(&st->rng, view, NULL, 0, ctx->avoid_nic);
	return rc >= 0 ? rc : avoid_or_none(view, ctx->avoid_nic);
}

static const kvb_nic_policy_ops_t random_ops = {
	.abi = KVB_POLICY_ABI,
	.size = sizeof(kvb_nic_policy_ops_t),
	.name = "random",
	.state_size = sizeof(struct random_state),
	.init = random_init,
	.pick = random_pick,
};

/* ---- least_loaded -------------------------------------------------------- */

struct ll_state {
	uint32_t last; /* index of the previous pick */
};

static int ll_init(void *state, const kvb_policy_params_t *params, kvb_err_t *err)
{
	struct ll_state *st = state;
	st->last = params->n_nics - 1;
	return KVB_OK;
}

/* The scan starts after the previous pick and keeps the first strict
 * minimum, so NICs with equal load take turns instead of NIC 0 taking all. */
static int ll_pick(void *state, const kvb_pick_ctx_t *ctx, const kvb_nic_view_t *view)
{
	struct ll_state *st = state;
	uint32_t n = view_len(view);
	uint32_t best = KVB_NIC_NONE;

	for (uint32_t k = 1; k <= n; k++) {
		uint32_t nic = (uint32_t)(((uint64_t)st->last + k) % n);
		if (!nic_usable(view, nic, ctx->avoid_nic))
			continue;
		if (best == KVB_NIC_NONE || view->inflight_bytes[nic] < view->inflight_bytes[best])
			best = nic;
	}
	if (best == KVB_NIC_NONE) {
		int rc = avoid_or_none(view, ctx->avoid_nic);
		if (rc < 0)
			return rc;
		best = (uint32_t)rc;
	}
	st->last = best;
	return (int)best;
}


/* Water filling, exactly as repeated ll_pick: the NICs at the lowest load
 * take turns in cyclic order after the previous pick.  Each loop either
 * serves the lowest group for as many whole rounds as keep it strictly below
 * the next load level (bounded by rooms and n), or, when fewer slices than
 * group members remain, places them one at a time. */
static int ll_pick_bulk(void *state, const kvb_pick_ctx_t *ctx, const kvb_nic_view_t *view,
			const uint32_t *room, uint32_t n, uint32_t *counts)
{
	struct ll_state *st = state;
	uint64_t load[KVB_MAX_NICS];
	bulk_t b;
	bulk_begin(&b, view, room, n, counts, ctx->avoid_nic);
	for (uint32_t i = 0; i < b.k; i++)
		load[i] = view->inflight_bytes[i];
	uint64_t len = ctx->len;
	while (b.placed < n) {
		uint32_t u = bulk_n_usable(&b);
		if (u == 0) {
			bulk_avoid_tail(&b, &st->last);
			break;
		}
		uint64_t m = UINT64_MAX, m2 = UINT64_MAX;
		for (uint32_t i = 0; i < b.k; i++)
			if (bulk_usable(&b, i) && load[i] < m)
				m = load[i];
		uint32_t g = 0, min_room = UINT32_MAX, last_in_round = st->last, first = KVB_NIC_NONE;
		for (uint32_t j = 1; j <= b.k; j++) {
			uint32_t nic = (uint32_t)(((uint64_t)st->last + j) % b.k);
			if (!bulk_usable(&b, nic))
				continue;
			if (load[nic] == m) {
				g++;
				min_room = MIN(min_room, b.room[nic]);
				last_in_round = nic;
				if (first == KVB_NIC_NONE)
					first = nic;
			} else if (load[nic] < m2) {
				m2 = load[nic];
			}
		}
		uint64_t rounds = UINT64_MAX;
		if (m2 != UINT64_MAX && len > 0)
			rounds = (m2 - m + len - 1) / len;
		uint64_t full = MIN(MIN(rounds, (uint64_t)((n - b.placed) / g)), (uint64_t)min_room);
		if (full >= 1) {
			for (uint32_t i = 0; i < b.k; i++)
				if (bulk_usable(&b, i) && load[i] == m) {
					bulk_give(&b, i, (uint32_t)full);
					load[i] += full * len;
				}
			st->last = last_in_round;
		} else {
			bulk_give(&b, first, 1);
			load[first] += len;
			st->last = first;
		}
	}
	return bulk_result(&b);
}

static const kvb_nic_policy_ops_t ll_ops = {
	.abi = KVB_POLICY_ABI,
	.size = sizeof(kvb_nic_policy_ops_t),
	.name = "least_loaded",
	.state_size = sizeof(struct ll_state),
	.init = ll_init,
	.pick = ll_pick,
	.pick_bulk = ll_pick_bulk,
};

/* ---- topology (Mooncake's priority matrix) ------------------------------- */

struct topo_state {
	kvb_rng_t rng;
	uint32_t n_entries;
	kvb_topology_entry_t *entries; /* copy of params->topology */
};

static int topo_check_list(const kvb_topology_entry_t *e, uint32_t index, const char *what,
			   uint32_t n, const uint32_t *list, uint32_t n_nics, kvb_err_t *err)
{
	if (n > KVB_MAX_NICS)
		return kvb_err_set(err, KVB_ERR_CONFIG,
				   "topology entry %u ('%s'): %u %s NICs, at most %u", index,
				   e->location, n, what, KVB_MAX_NICS);
	for (uint32_t j = 0; j < n; j++)
		if (list[j] >= n_nics)
			return kvb_err_set(err, KVB_ERR_CONFIG,
					   "topology entry %u ('%s'): %s NIC %u out of range (%u NICs)",
					   index, e->location, what, list[j], n_nics);
	return KVB_OK;
}

static int topo_check(const kvb_policy_params_t *params, kvb_err_t *err)
{
	if (params->n_topology && !params->topology)
		return kvb_err_set(err, KVB_ERR_CONFIG, "topology is NULL but n_topology is %u",
				   params->n_topology);
	for (uint32_t i = 0; i < params->n_topology; i++) {
		const kvb_topology_entry_t *e = &params->topology[i];
		if (!memchr(e->location, '\0', sizeof(e->location)))
			return kvb_err_set(err, KVB_ERR_CONFIG,
					   "topology entry %u: location is not terminated within %u bytes",
					   i, KVB_LOCATION_MAX);
		if (e->location[0] == '\0')
			return kvb_err_set(err, KVB_ERR_CONFIG, "topology entry %u: location is empty", i);
		for (uint32_t j = 0; j < i; j++)
			if (strcmp(params->topology[j].location, e->location) == 0)
				return kvb_err_set(err, KVB_ERR_CONFIG,
						   "topology entries %u and %u both describe location '%s'",
						   j, i, e->location);
		int rc = topo_check_list(e, i, "preferred", e->n_preferred, e->preferred,
					 params->n_nics, err);
		if (rc == KVB_OK)
			rc = topo_check_list(e, i, "secondary", e->n_secondary, e->secondary,
					     params->n_nics, err);
		if (rc != KVB_OK)
			return rc;
	}
	return KVB_OK;
}

static int topo_init(void *state, const kvb_policy_params_t *params, kvb_err_t *err)
{
	struct topo_state *st = state;
	int rc = topo_check(params, err);
	if (rc != KVB_OK)
		return rc;
	kvb_rng_seed(&st->rng, params->seed);
	if (params->n_topology) {
		st->entries = g_try_new(kvb_topology_entry_t, params->n_topology);
		if (!st->entries)
			return kvb_err_set(err, KVB_ERR_NOMEM, "topology of %u entries: out of memory",
					   params->n_topology);
		memcpy(st->entries, params->topology, params->n_topology * sizeof(*st->entries));
		st->n_entries = params->n_topology;
	}
	return KVB_OK;
}

static void topo_fini(void *state)
{
	struct topo_state *st = state;
	g_free(st->entries);
	st->entries = NULL;
}

/* Exact location first, then the "*" entry; NULL when neither exists. */
static const kvb_topology_entry_t *topo_lookup(const struct topo_state *st, const char *location)
{
	const kvb_topology_entry_t *any = NULL;

	for (uint32_t i = 0; i < st->n_entries; i++) {
		const kvb_topology_entry_t *e = &st->entries[i];
		if (location && strcmp(e->location, location) == 0)
			return e;
		if (strcmp(e->location, "*") == 0)
			any = e;
	}
	return any;
}

/* First post: random among preferred, else secondary, else any NIC.
 * Retry k: Mooncake's deterministic walk, position (k - 1) mod (|pref| +
 * |sec|) over preferred-then-secondary, moving on past NICs that are down
 * (or avoided), so successive retries visit every listed NIC. */
static int topo_pick(void *state, const kvb_pick_ctx_t *ctx, const kvb_nic_view_t *view)
{
	struct topo_state *st = state;
	const kvb_topology_entry_t *e = topo_lookup(st, ctx->location);
	uint32_t all[KVB_MAX_NICS];
	const uint32_t *pref = all, *sec = all; /* never NULL: NULL means "every NIC" below */
	uint32_t n_pref, n_sec = 0;
	uint32_t avoid = ctx->avoid_nic;
	int rc;

	if (e) {
		pref = e->preferred;
		n_pref = e->n_preferred;
		sec = e->secondary;
		n_sec = e->n_secondary;
	} else {
		n_pref = view_len(view);
		for (uint32_t i = 0; i < n_pref; i++)
			all[i] = i;
	}
	if (ctx->attempt > 0) {
		uint32_t len = n_pref + n_sec;
		for (uint32_t k = 0; k < len; k++) {
			uint32_t j = (uint32_t)(((uint64_t)ctx->attempt - 1 + k) % len);
			uint32_t nic = j < n_pref ? pref[j] : sec[j - n_pref];
			if (nic_usable(view, nic, avoid))
				return (int)nic;
		}
	} else {
		rc = random_among(&st->rng, view, pref, n_pref, avoid);
		if (rc >= 0)
			return rc;
		rc = random_among(&st->rng, view, sec, n_sec, avoid);
		if (rc >= 0)
			return rc;
	}
	rc = random_among(&st->rng, view, NULL, 0, avoid);
	return rc >= 0 ? rc : avoid_or_none(view, avoid);
}

static const kvb_nic_policy_ops_t topo_ops = {
	.abi = KVB_POLICY_ABI,
	.size = sizeof(kvb_nic_policy_ops_t),
	.name = "topology",
	.state_size = sizeof(struct topo_state),
	.init = topo_init,
	.pick = topo_pick,
	.fini = topo_fini,
};


/* ---- sticky (Mooncake TE's local NIC choice) ------------------------------
 * Mooncake's transfer engine picks one local NIC per request, at random
 * among the buffer's preferred NICs, and posts every slice of the request on
 * it (mooncake-te.md 3.2).  Here: the NIC is a seeded hash of the stream
 * among the NICs that are usable, so every slice of a transfer lands on one
 * NIC while it has room, and a full or failed NIC moves the rest to another.
 */

struct sticky_state {
	uint64_t seed;
};

static int sticky_init(void *state, const kvb_policy_params_t *params, kvb_err_t *err)
{
	struct sticky_state *st = state;
	st->seed = params->seed;
	return KVB_OK;
}

static uint64_t sticky_mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static int sticky_pick(void *state, const kvb_pick_ctx_t *ctx, const kvb_nic_view_t *view)
{
	struct sticky_state *st = state;
	uint32_t n = view_len(view);
	uint32_t home = (uint32_t)(sticky_mix(st->seed ^ sticky_mix(ctx->stream)) % n);
	for (uint32_t k = 0; k < n; k++) {
		uint32_t nic = (home + k) % n;
		if (nic_usable(view, nic, ctx->avoid_nic))
			return (int)nic;
	}
	return avoid_or_none(view, ctx->avoid_nic);
}

static const kvb_nic_policy_ops_t sticky_ops = {
	.abi = KVB_POLICY_ABI,
	.size = sizeof(kvb_nic_policy_ops_t),
	.name = "sticky",
	.state_size = sizeof(struct sticky_state),
	.init = sticky_init,
	.pick = sticky_pick,
};

/* ---- registry ------------------------------------------------------------ */

static const kvb_nic_policy_ops_t *const builtin_policies[] = {
	&rr_ops, &random_ops, &ll_ops, &topo_ops, &sticky_ops,
};

#define N_BUILTINS G_N_ELEMENTS(builtin_policies)

static kvb_nic_policy_ops_t policy_registry[POLICY_REGISTRY_MAX];
static unsigned policy_registry_len;
static const char *policy_names[N_BUILTINS + POLICY_REGISTRY_MAX + 1];

static bool policy_name_ok(const char *name)
{
	if (!name[0] || strlen(name) >= KVB_POLICY_NAME_MAX)
		return false;
	for (const char *p = name; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
			return false;
	return true;
}

int kvb_nic_policy_register(const kvb_nic_policy_ops_t *ops)
{
	if (!ops)
		return KVB_ERR_INVALID;
	if (ops->abi == 0 || ops->abi > KVB_POLICY_ABI ||
	    ops->size < offsetof(kvb_nic_policy_ops_t, pick) + sizeof(ops->pick))
		return KVB_ERR_ABI;
	if (!ops->name || !ops->init || !ops->pick || !policy_name_ok(ops->name))
		return KVB_ERR_INVALID;
	if (kvb_nic_policy_find(ops->name))
		return KVB_ERR_EXISTS;
	if (policy_registry_len == POLICY_REGISTRY_MAX)
		return KVB_ERR_NO_RESOURCE;

	kvb_nic_policy_ops_t *slot = &policy_registry[policy_registry_len];
	memset(slot, 0, sizeof(*slot));
	memcpy(slot, ops, ops->size < sizeof(*slot) ? ops->size : sizeof(*slot));
	slot->size = sizeof(*slot);
	kvb_nic_policy_names(); /* built-in names first */
	policy_names[N_BUILTINS + policy_registry_len] = slot->name;
	policy_registry_len++;
	return KVB_OK;
}

const kvb_nic_policy_ops_t *kvb_nic_policy_find(const char *name)
{
	if (!name)
		return NULL;
	for (size_t i = 0; i < N_BUILTINS; i++)
		if (strcmp(builtin_policies[i]->name, name) == 0)
			return builtin_policies[i];
	for (unsigned i = 0; i < policy_registry_len; i++)
		if (strcmp(policy_registry[i].name, name) == 0)
			return &policy_registry[i];
	return NULL;
}

const char *const *kvb_nic_policy_names(void)
{
	if (!policy_names[0])
		for (size_t i = 0; i < N_BUILTINS; i++)
			policy_names[i] = builtin_policies[i]->name;
	return policy_names;
}

/* ---- instances ----------------------------------------------------------- */

struct kvb_nic_policy {
	const kvb_nic_policy_ops_t *ops;
	uint32_t n_nics;
	void *state; /* ops->state_size zeroed bytes; NULL when 0 */
};

static int policy_unknown(const char *name, kvb_err_t *err)
{
	char known[KVB_ERR_MSG_MAX] = "";

	for (const char *const *n = kvb_nic_policy_names(); *n; n++) {
		if (known[0])
			g_strlcat(known, ", ", sizeof(known));
		g_strlcat(known, *n, sizeof(known));
	}
	return kvb_err_set(err, KVB_ERR_NOT_FOUND, "unknown NIC policy '%s' (known: %s)", name, known);
}

int kvb_nic_policy_new(const char *name, const kvb_policy_params_t *params, kvb_nic_policy_t **out,
		       kvb_err_t *err)
{
	if (!out)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_nic_policy_new: out is NULL");
	*out = NULL;
	if (!name || !params)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_nic_policy_new: name and params are required");
	const kvb_nic_policy_ops_t *ops = kvb_nic_policy_find(name);
	if (!ops)
		return policy_unknown(name, err);
	if (params->n_nics == 0 || params->n_nics > KVB_MAX_NICS)
		return kvb_err_set(err, KVB_ERR_CONFIG, "NIC policy '%s': %u NICs, need 1 to %u", name,
				   params->n_nics, KVB_MAX_NICS);

	kvb_nic_policy_t *p = g_new0(kvb_nic_policy_t, 1);
	p->ops = ops;
	p->n_nics = params->n_nics;
	if (ops->state_size) {
		p->state = g_try_malloc0(ops->state_size);
		if (!p->state) {
			g_free(p);
			return kvb_err_set(err, KVB_ERR_NOMEM, "NIC policy '%s': no memory for %zu bytes of state",
					   name, ops->state_size);
		}
	}
	kvb_err_clear(err);
	int rc = ops->init(p->state, params, err);
	if (rc != KVB_OK) {
		/* init releases what it took on failure; fini is not called */
		if (rc > 0)
			rc = KVB_ERR_INVALID;
		if (err && err->code == KVB_OK)
			kvb_err_set(err, rc, "NIC policy '%s' failed to initialize: %s", name,
				    kvb_strerror(rc));
		g_free(p->state);
		g_free(p);
		return rc;
	}
	*out = p;
	return KVB_OK;
}

/* The wrapper is the connector's guarantee: whatever a (user) policy
 * returns, the connector gets an index of a NIC that is up or
 * KVB_ERR_NO_RESOURCE.  A view that does not match the instance is misuse. */
int kvb_nic_policy_pick(kvb_nic_policy_t *policy, const kvb_pick_ctx_t *ctx,
			const kvb_nic_view_t *view)
{
	if (!policy || !ctx || !view || !view->up || !view->inflight_bytes ||
	    view->n_nics != policy->n_nics)
		return KVB_ERR_INVALID;
	int nic = policy->ops->pick(policy->state, ctx, view);
	if (nic < 0 || (uint32_t)nic >= view->n_nics || !view->up[nic])
		return KVB_ERR_NO_RESOURCE;
	return nic;
}

/* Bulk placement: the policy's own fast path when it has one, else single
 * picks against a private copy of the view that grows as slices are placed.
 * Either way the result is checked against the rooms the caller gave. */
int kvb_nic_policy_pick_bulk(kvb_nic_policy_t *policy, const kvb_pick_ctx_t *ctx,
			     const kvb_nic_view_t *view, const uint32_t *room, uint32_t n,
			     uint32_t *counts)
{
	if (!policy || !ctx || !view || !view->up || !view->inflight_bytes || !room || !counts ||
	    view->n_nics != policy->n_nics)
		return KVB_ERR_INVALID;
	uint32_t k = view->n_nics;
	if (n == 0) {
		memset(counts, 0, sizeof(*counts) * k);
		return KVB_ERR_NO_RESOURCE;
	}
	if (policy->ops->pick_bulk) {
		int placed = policy->ops->pick_bulk(policy->state, ctx, view, room, n, counts);
		if (placed <= 0)
			return KVB_ERR_NO_RESOURCE;
		uint64_t sum = 0;
		for (uint32_t i = 0; i < k; i++) {
			if (counts[i] > (view->up[i] ? room[i] : 0))
				return KVB_ERR_INVALID;
			sum += counts[i];
		}
		return sum == (uint64_t)placed && sum <= n ? placed : KVB_ERR_INVALID;
	}
	uint64_t load[KVB_MAX_NICS];
	bool up[KVB_MAX_NICS];
	uint32_t left[KVB_MAX_NICS];
	for (uint32_t i = 0; i < k; i++) {
		load[i] = view->inflight_bytes[i];
		left[i] = view->up[i] ? room[i] : 0;
		up[i] = left[i] > 0;
		counts[i] = 0;
	}
	kvb_nic_view_t v = {k, load, up};
	uint32_t placed = 0;
	while (placed < n) {
		int nic = kvb_nic_policy_pick(policy, ctx, &v);
		if (nic < 0)
			break;
		counts[nic]++;
		placed++;
		load[nic] += ctx->len;
		if (--left[nic] == 0)
			up[nic] = false;
	}
	return placed ? (int)placed : KVB_ERR_NO_RESOURCE;
}

const char *kvb_nic_policy_name(const kvb_nic_policy_t *policy)
{
	return policy ? policy->ops->name : NULL;
}

void kvb_nic_policy_free(kvb_nic_policy_t *policy)
{
	if (!policy)
		return;
	if (policy->ops->fini)
		policy->ops->fini(policy->state);
	g_free(policy->state);
	g_free(policy);
}
