/*
 * NIC selection policies.
 *
 * For every slice the connector asks a policy which local NIC to post it on.
 * A policy sees the NICs' state (up or down, bytes in flight) and the slice's
 * context (memory location of the local buffer, length, attempt number and a
 * NIC to avoid on retries) and returns a NIC index.
 *
 * Built-in policies (found by name without registration):
 *   round_robin   next NIC that is up, in index order
 *   random        uniform among NICs that are up (seeded xoshiro256**)
 *   least_loaded  fewest bytes in flight; ties go to the next after the last pick
 *   topology      Mooncake's priority matrix: random among the location's
 *                 preferred NICs that are up, else its secondary NICs, else any
 *   sticky        Mooncake's per-request local NIC: a seeded hash of the
 *                 transfer (stream) picks one NIC for all its slices; the next
 *                 usable NIC when it is full or down
 *
 * Every policy is deterministic for a given seed and call sequence.  Extra
 * policies are added with kvb_nic_policy_register() before any connector is
 * created (the registry has no lock: register at start-up).
 */
#ifndef KVBRIDGE_POLICY_H
#define KVBRIDGE_POLICY_H

#include <stdbool.h>
#include <stdint.h>
#include <kvbridge/error.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KVB_POLICY_ABI 1u
#define KVB_MAX_NICS 64u
#define KVB_NIC_NAME_MAX 64u
#define KVB_LOCATION_MAX 32u
#define KVB_POLICY_NAME_MAX 32u

/* One entry of the priority matrix: a memory location ("cuda:0", "cpu:1",
 * "*" for any) and the NIC indices it prefers, then those it may use. */
typedef struct kvb_topology_entry {
	char location[KVB_LOCATION_MAX];
	uint32_t n_preferred;
	uint32_t preferred[KVB_MAX_NICS];
	uint32_t n_secondary;
	uint32_t secondary[KVB_MAX_NICS];
} kvb_topology_entry_t;

/* What a policy is created with. */
typedef struct kvb_policy_params {
	uint32_t n_nics;                          /* 1 .. KVB_MAX_NICS */
	uint64_t seed;                            /* for randomized policies */
	const kvb_topology_entry_t *topology;     /* may be NULL */
	uint32_t n_topology;
} kvb_policy_params_t;

/* The NICs' state at the time of a pick (owned by the connector). */
typedef struct kvb_nic_view {
	uint32_t n_nics;
	const uint64_t *inflight_bytes; /* per NIC */
	const bool *up;                 /* per NIC: usable now */
} kvb_nic_view_t;

#define KVB_NIC_NONE UINT32_MAX

/* The slice being placed. */
typedef struct kvb_pick_ctx {
	const char *location; /* local buffer's location, e.g. "cuda:0"; NULL = unknown */
	uint64_t len;         /* slice bytes */
	uint32_t attempt;     /* 0 on first post, k on the k-th retry */
	uint32_t avoid_nic;   /* NIC that just failed this slice, or KVB_NIC_NONE */
	uint64_t stream;      /* the transfer the slice belongs to (sticky policies) */
} kvb_pick_ctx_t;

typedef struct kvb_nic_policy_ops {
	uint32_t abi;       /* KVB_POLICY_ABI */
	uint32_t size;      /* sizeof(kvb_nic_policy_ops_t) */
	const char *name;   /* unique, [a-z0-9_]+ */
	size_t state_size;  /* bytes the connector allocates (zeroed) for the policy */
	/* Prepare state.  May fail with KVB_ERR_CONFIG (bad topology).  Must not
	 * keep pointers into params beyond the call. */
	int (*init)(void *state, const kvb_policy_params_t *params, kvb_err_t *err);
	/* Return a NIC index < view->n_nics whose view->up is true, or
	 * KVB_ERR_NO_RESOURCE when none is up.  Should avoid ctx->avoid_nic when
	 * another NIC is up.  Never blocks. */
	int (*pick)(void *state, const kvb_pick_ctx_t *ctx, const kvb_nic_view_t *view);
	/* Release what init acquired; may be NULL. */
	void (*fini)(void *state);
	/* Place n slices of ctx->len bytes at once (the core's fast path):
	 * counts[i] receives the slices given to NIC i, at most room[i] (0 = not
	 * usable now; view->up is true exactly where room[i] > 0).  The result
	 * and the state left behind must equal n calls of pick with
	 * view->inflight_bytes[i] grown by ctx->len and room[i] shrunk after each
	 * placement, stopping when no NIC has room.  Returns the number placed,
	 * or KVB_ERR_NO_RESOURCE when none.  May be NULL: the core then loops
	 * pick, which is exact but costs a call per slice. */
	int (*pick_bulk)(void *state, const kvb_pick_ctx_t *ctx, const kvb_nic_view_t *view,
			 const uint32_t *room, uint32_t n, uint32_t *counts);
} kvb_nic_policy_ops_t;

/* Add a policy to the registry (at most 16; no unregister).  The table is
 * copied; its name and functions must live for the whole process.  Names are
 * [a-z0-9_]+ and shorter than KVB_POLICY_NAME_MAX.  KVB_ERR_EXISTS for a
 * taken name (also the same table twice), KVB_ERR_ABI for an unknown abi or
 * a size too small to hold pick, KVB_ERR_INVALID for missing ops or a bad
 * name, KVB_ERR_NO_RESOURCE when the registry is full.  A failed init must
 * clean up after itself: fini is not called. */
KVB_API int kvb_nic_policy_register(const kvb_nic_policy_ops_t *ops);

/* Find a policy by name (built-ins first); NULL when unknown. */
KVB_API const kvb_nic_policy_ops_t *kvb_nic_policy_find(const char *name);

/* Names of all known policies, NULL-terminated; static storage. */
KVB_API const char *const *kvb_nic_policy_names(void);

/* A policy instance. */
typedef struct kvb_nic_policy kvb_nic_policy_t;

KVB_API int kvb_nic_policy_new(const char *name, const kvb_policy_params_t *params,
			       kvb_nic_policy_t **out, kvb_err_t *err);
/* A NIC index, KVB_ERR_NO_RESOURCE when no NIC is usable, or KVB_ERR_INVALID
 * for bad arguments (view of a different NIC count, NULL arrays). */
KVB_API int kvb_nic_policy_pick(kvb_nic_policy_t *policy, const kvb_pick_ctx_t *ctx,
				const kvb_nic_view_t *view);
/* Place n slices at once (see pick_bulk); uses the policy's pick_bulk or
 * loops its pick.  counts must hold view->n_nics entries. */
KVB_API int kvb_nic_policy_pick_bulk(kvb_nic_policy_t *policy, const kvb_pick_ctx_t *ctx,
				     const kvb_nic_view_t *view, const uint32_t *room, uint32_t n,
				     uint32_t *counts);
KVB_API const char *kvb_nic_policy_name(const kvb_nic_policy_t *policy);
KVB_API void kvb_nic_policy_free(kvb_nic_policy_t *policy);

/* A small deterministic PRNG (xoshiro256**) for policies and backends. */
typedef struct kvb_rng {
	uint64_t s[4];
} kvb_rng_t;

KVB_API void kvb_rng_seed(kvb_rng_t *rng, uint64_t seed);
KVB_API uint64_t kvb_rng_next(kvb_rng_t *rng);
/* Uniform in [0, bound) without modulo bias; bounds 0 and 1 give 0 and take
 * no draw. */
KVB_API uint64_t kvb_rng_below(kvb_rng_t *rng, uint64_t bound);
/* Uniform double in [0, 1). */
KVB_API double kvb_rng_uniform(kvb_rng_t *rng);

#ifdef __cplusplus
}
#endif
#endif /* KVBRIDGE_POLICY_H */
