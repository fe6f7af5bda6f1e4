/*
 * NIC policies: the xoshiro256** PRNG (known answers, determinism, unbiased
 * bounded draws), each built-in's picks on hand-made NIC views, the
 * topology policy's fallbacks and retry walk, the registry's checks, a
 * user policy, and a randomized check that every built-in keeps the pick
 * contract (an up NIC, the avoided one only as a last resort).
 */
#include "config.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <glib.h>
#include <kvbridge/policy.h>

#include "suites.h"

static const char *const builtins[] = {"round_robin", "random", "least_loaded", "topology", "sticky"};

/* The NICs' state for a pick. */
typedef struct nics {
	uint32_t n;
	bool up[KVB_MAX_NICS];
	uint64_t inflight[KVB_MAX_NICS];
} nics_t;

static void nics_init(nics_t *s, uint32_t n)
{
	memset(s, 0, sizeof(*s));
	s->n = n;
	for (uint32_t i = 0; i < n; i++)
		s->up[i] = true;
}

static kvb_nic_view_t view_of(const nics_t *s)
{
	return (kvb_nic_view_t){s->n, s->inflight, s->up};
}

static kvb_nic_policy_t *policy_new(const char *name, uint32_t n, uint64_t seed,
				    const kvb_topology_entry_t *topo, uint32_t n_topo)
{
	kvb_policy_params_t params = {n, seed, topo, n_topo};
	kvb_nic_policy_t *p = NULL;
	kvb_err_t err;
	int rc = kvb_nic_policy_new(name, &params, &p, &err);
	ck_assert_msg(rc == KVB_OK, "policy %s: %s (%s)", name, kvb_status_name(rc), err.msg);
	ck_assert_ptr_nonnull(p);
	ck_assert_str_eq(kvb_nic_policy_name(p), name);
	return p;
}

static int pick(kvb_nic_policy_t *p, const nics_t *s, const char *loc, uint32_t attempt,
		uint32_t avoid)
{
	kvb_pick_ctx_t ctx = {loc, 4096, attempt, avoid, 0};
	kvb_nic_view_t view = view_of(s);
	return kvb_nic_policy_pick(p, &ctx, &view);
}

/* A pick that must succeed (for histograms). */
static uint32_t upick(kvb_nic_policy_t *p, const nics_t *s, const char *loc)
{
	int nic = pick(p, s, loc, 0, KVB_NIC_NONE);
	ck_assert_msg(nic >= 0 && (uint32_t)nic < s->n && s->up[nic], "picked %d", nic);
	return (uint32_t)nic;
}

static kvb_topology_entry_t topo_entry(const char *loc, uint32_t n_pref, const uint32_t *pref,
				       uint32_t n_sec, const uint32_t *sec)
{
	kvb_topology_entry_t e;
	memset(&e, 0, sizeof(e));
	g_strlcpy(e.location, loc, sizeof(e.location));
	e.n_preferred = n_pref;
	if (n_pref)
		memcpy(e.preferred, pref, n_pref * sizeof(*pref));
	e.n_secondary = n_sec;
	if (n_sec)
		memcpy(e.secondary, sec, n_sec * sizeof(*sec));
	return e;
}

/* ---- PRNG ----------------------------------------------------------------- */

/* Reference values from the published splitmix64 and xoshiro256** code. */
START_TEST(test_rng_known_answers)
{
	kvb_rng_t r;

	kvb_rng_seed(&r, 0);
	ck_assert_uint_eq(r.s[0], UINT64_C(0xe220a8397b1dcdaf));
	ck_assert_uint_eq(r.s[1], UINT64_C(0x6e789e6aa1b965f4));
	ck_assert_uint_eq(r.s[2], UINT64_C(0x06c45d188009454f));
	ck_assert_uint_eq(r.s[3], UINT64_C(0xf88bb8a8724c81ec));
	ck_assert_uint_eq(kvb_rng_next(&r), UINT64_C(11091344671253066420));
	ck_assert_uint_eq(kvb_rng_next(&r), UINT64_C(13793997310169335082));
	ck_assert_uint_eq(kvb_rng_next(&r), UINT64_C(1900383378846508768));

	r = (kvb_rng_t){{1, 2, 3, 4}};
	ck_assert_uint_eq(kvb_rng_next(&r), 11520);
	ck_assert_uint_eq(kvb_rng_next(&r), 0);
	ck_assert_uint_eq(kvb_rng_next(&r), 1509978240);
	ck_assert_uint_eq(kvb_rng_next(&r), UINT64_C(1215971899390074240));

	kvb_rng_seed(&r, 42);
	ck_assert_uint_eq(kvb_rng_next(&r), UINT64_C(0x15780b2e0c2ec716));
	ck_assert_uint_eq(kvb_rng_next(&r), UINT64_C(0x6104d9866d113a7e));
	ck_assert_uint_eq(kvb_rng_next(&r), UINT64_C(0xae17533239e499a1));
}
END_TEST

START_TEST(test_rng_determinism)
{
	kvb_rng_t a, b, c;

	kvb_rng_seed(&a, 42);
	kvb_rng_seed(&b, 42);
	kvb_rng_seed(&c, 43);
	uint64_t first = 0;
	for (int i = 0; i < 1000; i++) {
		uint64_t x = kvb_rng_next(&a);
		if (i == 0)
			first = x;
		ck_assert_uint_eq(x, kvb_rng_next(&b));
		ck_assert_uint_ne(x, kvb_rng_next(&c));
	}
	/* reseeding restarts the sequence */
	kvb_rng_seed(&a, 42);
	ck_assert_uint_eq(kvb_rng_next(&a), first);
	/* seed 0 is a valid seed (the state is not all zero) */
	kvb_rng_seed(&a, 0);
	ck_assert(a.s[0] | a.s[1] | a.s[2] | a.s[3]);
}
END_TEST

START_TEST(test_rng_below)
{
	static const uint64_t bounds[] = {1, 2, 3, 7, 10, 1000, 4294967297u,
					  UINT64_C(0x8000000000000001), UINT64_MAX};
	kvb_rng_t r;

	kvb_rng_seed(&r, 1);
	for (size_t b = 0; b < G_N_ELEMENTS(bounds); b++)
		for (int i = 0; i < 2000; i++)
			ck_assert_uint_lt(kvb_rng_below(&r, bounds[b]), bounds[b]);
	ck_assert_uint_eq(kvb_rng_below(&r, 1), 0);

	/* chi-square over 10 buckets: 9 degrees of freedom, p = 0.001 at 27.9 */
	uint32_t hist[10] = {0};
	kvb_rng_seed(&r, 12345);
	for (int i = 0; i < 100000; i++)
		hist[kvb_rng_below(&r, 10)]++;
	double chi2 = 0;
	for (int i = 0; i < 10; i++)
		chi2 += (hist[i] - 10000.0) * (hist[i] - 10000.0) / 10000.0;
	ck_assert_msg(chi2 < 40.0, "chi-square %.1f over 10 buckets", chi2);

	/* No modulo bias: with bound ~ 2/3 * 2^64, a plain `% bound` puts 2/3
	 * of the draws below 2^64 - bound; uniform draws put 1/2 there. */
	uint64_t bound = UINT64_C(0xaaaaaaaaaaaaaaaa);
	uint64_t low_edge = (uint64_t)0 - bound; /* 2^64 - bound */
	int low = 0;
	for (int i = 0; i < 10000; i++)
		if (kvb_rng_below(&r, bound) < low_edge)
			low++;
	ck_assert_msg(low > 4700 && low < 5300, "%d of 10000 draws in the lower half", low);
}
END_TEST

START_TEST(test_rng_uniform)
{
	kvb_rng_t r;
	double sum = 0, lo = 1, hi = 0;

	kvb_rng_seed(&r, 99);
	for (int i = 0; i < 100000; i++) {
		double u = kvb_rng_uniform(&r);
		ck_assert(u >= 0.0 && u < 1.0);
		/* 53 significant bits: u * 2^53 is an integer */
		double scaled = u * 0x1.0p53;
		ck_assert(scaled == (double)(uint64_t)scaled);
		sum += u;
		lo = u < lo ? u : lo;
		hi = u > hi ? u : hi;
	}
	ck_assert_msg(sum / 100000 > 0.49 && sum / 100000 < 0.51, "mean %f", sum / 100000);
	ck_assert(lo < 0.001 && hi > 0.999);
	/* the extreme draws: 0 maps to 0, UINT64_MAX to 1 - 2^-53 (below 1) */
	r = (kvb_rng_t){{0, 0, 0, 0}};
	ck_assert(kvb_rng_uniform(&r) == 0.0);
	r = (kvb_rng_t){{0, UINT64_C(0x4fc71c71c71c71c7), 0, 0}};
	ck_assert(kvb_rng_uniform(&r) == 1.0 - 0x1.0p-53);
}
END_TEST

/* ---- round_robin ------------------------------------------------------ */

START_TEST(test_round_robin)
{
	nics_t s;
	nics_init(&s, 4);
	kvb_nic_policy_t *p = policy_new("round_robin", 4, 0, NULL, 0);

	static const int seq[] = {0, 1, 2, 3, 0, 1, 2, 3, 0};
	for (size_t i = 0; i < G_N_ELEMENTS(seq); i++)
		ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), seq[i]);
	/* last pick 0; NIC 2 goes down */
	s.up[2] = false;
	static const int seq2[] = {1, 3, 0, 1, 3};
	for (size_t i = 0; i < G_N_ELEMENTS(seq2); i++)
		ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), seq2[i]);
	/* last pick 3; avoiding 0 moves on to 1, and the cycle goes on from there */
	ck_assert_int_eq(pick(p, &s, NULL, 1, 0), 1);
	ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), 3);
	/* avoiding a NIC that is down changes nothing */
	ck_assert_int_eq(pick(p, &s, NULL, 1, 2), 0);
	/* only the avoided NIC is up: it is still the answer */
	s.up[0] = s.up[1] = false;
	ck_assert_int_eq(pick(p, &s, NULL, 1, 3), 3);
	ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), 3);
	s.up[3] = false;
	ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), KVB_ERR_NO_RESOURCE);
	ck_assert_int_eq(pick(p, &s, NULL, 1, 3), KVB_ERR_NO_RESOURCE);
	/* NICs come back: the cycle continues after the last pick (3) */
	nics_init(&s, 4);
	ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), 0);
	kvb_nic_policy_free(p);

	/* one NIC */
	nics_init(&s, 1);
	p = policy_new("round_robin", 1, 0, NULL, 0);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), 0);
	ck_assert_int_eq(pick(p, &s, NULL, 1, 0), 0);
	kvb_nic_policy_free(p);

	/* KVB_MAX_NICS NICs wrap around */
	nics_init(&s, KVB_MAX_NICS);
	p = policy_new("round_robin", KVB_MAX_NICS, 0, NULL, 0);
	for (uint32_t i = 0; i < 2 * KVB_MAX_NICS; i++)
		ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), (int)(i % KVB_MAX_NICS));
	kvb_nic_policy_free(p);
}
END_TEST

/* ---- random ----------------------------------------------------------- */

START_TEST(test_random)
{
	nics_t s;
	nics_init(&s, 4);
	kvb_nic_policy_t *p = policy_new("random", 4, 7, NULL, 0);
	uint32_t hist[4] = {0};

	for (int i = 0; i < 100000; i++) {
		int nic = pick(p, &s, NULL, 0, KVB_NIC_NONE);
		ck_assert(nic >= 0 && nic < 4);
		hist[nic]++;
	}
	for (int i = 0; i < 4; i++)
		ck_assert_msg(hist[i] > 24000 && hist[i] < 26000, "NIC %d: %u of 100000", i, hist[i]);

	/* avoided and down NICs are not picked while others are up */
	memset(hist, 0, sizeof(hist));
	s.up[3] = false;
	for (int i = 0; i < 3000; i++) {
		int nic = pick(p, &s, NULL, 1, 1);
		ck_assert(nic == 0 || nic == 2);
		hist[nic]++;
	}
	ck_assert(hist[0] > 1300 && hist[2] > 1300);
	s.up[0] = s.up[2] = false;
	ck_assert_int_eq(pick(p, &s, NULL, 1, 1), 1);
	kvb_nic_policy_free(p);

	/* same seed, same picks; another seed, other picks */
	nics_init(&s, 4);
	kvb_nic_policy_t *a = policy_new("random", 4, 2024, NULL, 0);
	kvb_nic_policy_t *b = policy_new("random", 4, 2024, NULL, 0);
	kvb_nic_policy_t *c = policy_new("random", 4, 2025, NULL, 0);
	int differ = 0;
	for (int i = 0; i < 1000; i++) {
		s.up[i % 4] = (i % 7) != 0; /* the same changing views for both */
		int x = pick(a, &s, NULL, 0, KVB_NIC_NONE);
		ck_assert_int_eq(x, pick(b, &s, NULL, 0, KVB_NIC_NONE));
		differ += x != pick(c, &s, NULL, 0, KVB_NIC_NONE);
	}
	ck_assert_int_gt(differ, 500);
	kvb_nic_policy_free(a);
	kvb_nic_policy_free(b);
	kvb_nic_policy_free(c);
}
END_TEST

/* ---- least_loaded ----------------------------------------------------- */

START_TEST(test_least_loaded)
{
	nics_t s;
	nics_init(&s, 4);
	kvb_nic_policy_t *p = policy_new("least_loaded", 4, 0, NULL, 0);

	/* equal loads rotate */
	static const int seq[] = {0, 1, 2, 3, 0, 1};
	for (size_t i = 0; i < G_N_ELEMENTS(seq); i++)
		ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), seq[i]);

	/* the minimum wins; ties among the minima rotate (last pick 1) */
	uint64_t loads[4] = {500, 100, 300, 100};
	memcpy(s.inflight, loads, sizeof(loads));
	ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), 3);
	ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), 1);
	ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), 3);
	/* a unique minimum is picked every time */
	s.inflight[3] = 50;
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), 3);
	/* avoided: next smallest; down: skipped */
	ck_assert_int_eq(pick(p, &s, NULL, 1, 3), 1);
	s.up[3] = false;
	ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), 1);
	s.up[1] = false;
	ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), 2);
	/* only the avoided NIC is up */
	s.up[0] = false;
	ck_assert_int_eq(pick(p, &s, NULL, 1, 2), 2);
	/* huge loads compare correctly */
	nics_init(&s, 3);
	kvb_nic_policy_free(p);
	p = policy_new("least_loaded", 3, 0, NULL, 0);
	s.inflight[0] = UINT64_MAX;
	s.inflight[1] = UINT64_MAX - 1;
	s.inflight[2] = UINT64_MAX;
	ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), 1);
	kvb_nic_policy_free(p);
}
END_TEST

/* ---- topology --------------------------------------------------------- */

START_TEST(test_topology_fallbacks)
{
	static const uint32_t p0[] = {2, 3}, s0[] = {0}, p1[] = {0, 1};
	kvb_topology_entry_t t[2] = {
		topo_entry("cuda:0", 2, p0, 1, s0),
		topo_entry("cuda:1", 2, p1, 0, NULL),
	};
	nics_t s;
	nics_init(&s, 4);
	kvb_nic_policy_t *p = policy_new("topology", 4, 11, t, 2);
	uint32_t hist[4] = {0};

	/* preferred NICs only, both used */
	for (int i = 0; i < 1000; i++)
		hist[upick(p, &s, "cuda:0")]++;
	ck_assert_uint_eq(hist[0] + hist[1], 0);
	ck_assert(hist[2] > 400 && hist[3] > 400);
	memset(hist, 0, sizeof(hist));
	for (int i = 0; i < 1000; i++)
		hist[upick(p, &s, "cuda:1")]++;
	ck_assert(hist[0] > 400 && hist[1] > 400);

	/* one preferred NIC down, then avoided */
	s.up[2] = false;
	for (int i = 0; i < 50; i++)
		ck_assert_int_eq(pick(p, &s, "cuda:0", 0, KVB_NIC_NONE), 3);
	/* the only preferred NIC up is avoided: secondary */
	ck_assert_int_eq(pick(p, &s, "cuda:0", 0, 3), 0);
	/* preferred all down: secondary */
	s.up[3] = false;
	for (int i = 0; i < 50; i++)
		ck_assert_int_eq(pick(p, &s, "cuda:0", 0, KVB_NIC_NONE), 0);
	/* secondary down too: any NIC that is up */
	s.up[0] = false;
	for (int i = 0; i < 50; i++)
		ck_assert_int_eq(pick(p, &s, "cuda:0", 0, KVB_NIC_NONE), 1);
	/* ... unless it is avoided and the avoided one is all there is */
	ck_assert_int_eq(pick(p, &s, "cuda:0", 0, 1), 1);
	/* preferred NIC up but avoided, an unlisted NIC up: the unlisted one */
	s.up[2] = true;
	for (int i = 0; i < 50; i++)
		ck_assert_int_eq(pick(p, &s, "cuda:0", 0, 2), 1);

	/* unknown or NULL location without a "*" entry: every NIC is preferred */
	nics_init(&s, 4);
	const char *locs[] = {"cpu:0", NULL, "cuda:"};
	for (size_t l = 0; l < G_N_ELEMENTS(locs); l++) {
		memset(hist, 0, sizeof(hist));
		for (int i = 0; i < 2000; i++)
			hist[upick(p, &s, locs[l])]++;
		for (int i = 0; i < 4; i++)
			ck_assert_msg(hist[i] > 350, "location %s: NIC %d picked %u times of 2000",
				      locs[l] ? locs[l] : "(null)", i, hist[i]);
	}
	kvb_nic_policy_free(p);

	/* no topology at all: every NIC is preferred */
	p = policy_new("topology", 4, 11, NULL, 0);
	memset(hist, 0, sizeof(hist));
	for (int i = 0; i < 2000; i++)
		hist[upick(p, &s, "cuda:0")]++;
	for (int i = 0; i < 4; i++)
		ck_assert_uint_gt(hist[i], 350);
	kvb_nic_policy_free(p);

	/* an entry with empty lists: any NIC */
	kvb_topology_entry_t empty = topo_entry("cpu:0", 0, NULL, 0, NULL);
	p = policy_new("topology", 4, 11, &empty, 1);
	memset(hist, 0, sizeof(hist));
	for (int i = 0; i < 2000; i++)
		hist[upick(p, &s, "cpu:0")]++;
	for (int i = 0; i < 4; i++)
		ck_assert_uint_gt(hist[i], 350);
	kvb_nic_policy_free(p);
}
END_TEST

START_TEST(test_topology_star)
{
	static const uint32_t star[] = {1}, c0[] = {0}, star_sec[] = {2};
	kvb_topology_entry_t t[2] = {
		topo_entry("cuda:0", 1, c0, 0, NULL),
		topo_entry("*", 1, star, 1, star_sec),
	};
	nics_t s;
	nics_init(&s, 4);
	kvb_nic_policy_t *p = policy_new("topology", 4, 3, t, 2);

	for (int i = 0; i < 50; i++) {
		ck_assert_int_eq(pick(p, &s, "cpu:5", 0, KVB_NIC_NONE), 1);
		ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), 1);
		ck_assert_int_eq(pick(p, &s, "*", 0, KVB_NIC_NONE), 1);
		ck_assert_int_eq(pick(p, &s, "cuda:0", 0, KVB_NIC_NONE), 0);
	}
	/* the "*" entry's secondary list applies too */
	s.up[1] = false;
	ck_assert_int_eq(pick(p, &s, "cpu:5", 0, KVB_NIC_NONE), 2);
	/* an exact entry does not fall back to "*" lists: cuda:0 goes to any NIC */
	s.up[0] = false;
	for (int i = 0; i < 50; i++) {
		int nic = pick(p, &s, "cuda:0", 0, KVB_NIC_NONE);
		ck_assert(nic == 2 || nic == 3);
	}
	kvb_nic_policy_free(p);
}
END_TEST

START_TEST(test_topology_retry_walk)
{
	static const uint32_t pref[] = {3, 1}, sec[] = {2};
	kvb_topology_entry_t t = topo_entry("cuda:0", 2, pref, 1, sec);
	nics_t s;
	nics_init(&s, 4);
	kvb_nic_policy_t *p = policy_new("topology", 4, 5, &t, 1);

	/* attempt k walks index (k - 1) mod 3 over [3, 1, 2] */
	static const int walk[] = {3, 1, 2, 3, 1, 2, 3};
	for (uint32_t k = 1; k <= G_N_ELEMENTS(walk); k++)
		ck_assert_int_eq(pick(p, &s, "cuda:0", k, KVB_NIC_NONE), walk[k - 1]);
	/* large attempt numbers do not overflow */
	ck_assert_int_eq(pick(p, &s, "cuda:0", UINT32_MAX, KVB_NIC_NONE),
			 walk[(UINT32_MAX - 1) % 3]);
	/* down NICs are passed over: [3, x, 2] */
	s.up[1] = false;
	static const int walk_down[] = {3, 2, 2, 3};
	for (uint32_t k = 1; k <= G_N_ELEMENTS(walk_down); k++)
		ck_assert_int_eq(pick(p, &s, "cuda:0", k, KVB_NIC_NONE), walk_down[k - 1]);
	/* so is the avoided NIC */
	ck_assert_int_eq(pick(p, &s, "cuda:0", 1, 3), 2);
	ck_assert_int_eq(pick(p, &s, "cuda:0", 3, 2), 3);
	/* every listed NIC down: any NIC up (0), or the avoided one as last resort */
	s.up[3] = s.up[2] = false;
	ck_assert_int_eq(pick(p, &s, "cuda:0", 2, KVB_NIC_NONE), 0);
	ck_assert_int_eq(pick(p, &s, "cuda:0", 2, 0), 0);
	kvb_nic_policy_free(p);

	/* without an entry the walk covers every NIC in index order */
	nics_init(&s, 5);
	p = policy_new("topology", 5, 5, NULL, 0);
	for (uint32_t k = 1; k <= 12; k++)
		ck_assert_int_eq(pick(p, &s, "cuda:7", k, KVB_NIC_NONE), (int)((k - 1) % 5));
	s.up[2] = false;
	ck_assert_int_eq(pick(p, &s, "cuda:7", 3, KVB_NIC_NONE), 3);
	kvb_nic_policy_free(p);
}
END_TEST

/* init rejects the matrix, with a message that names the bad value, and
 * leaves nothing allocated (checked by ASan and valgrind). */
static void topo_rejected(const kvb_topology_entry_t *t, uint32_t n_topo, uint32_t n_nics,
			  const char *needle)
{
	kvb_policy_params_t params = {n_nics, 1, t, n_topo};
	kvb_nic_policy_t *p = (kvb_nic_policy_t *)&params;
	kvb_err_t err;

	ck_assert_int_eq(kvb_nic_policy_new("topology", &params, &p, &err), KVB_ERR_CONFIG);
	ck_assert_ptr_null(p);
	ck_assert_int_eq(err.code, KVB_ERR_CONFIG);
	ck_assert_msg(strstr(err.msg, needle) != NULL, "message '%s' lacks '%s'", err.msg, needle);
	ck_assert_int_eq(kvb_nic_policy_new("topology", &params, &p, NULL), KVB_ERR_CONFIG);
}

START_TEST(test_topology_bad)
{
	static const uint32_t ok[] = {0, 1}, big[] = {0, 4}, huge[] = {UINT32_MAX};
	kvb_topology_entry_t t[2];

	t[0] = topo_entry("cuda:0", 2, ok, 0, NULL);
	t[1] = topo_entry("cuda:1", 2, big, 0, NULL);
	topo_rejected(t, 2, 4, "preferred NIC 4");
	t[1] = topo_entry("cuda:1", 2, ok, 1, huge);
	topo_rejected(t, 2, 4, "secondary NIC 4294967295");
	t[1] = topo_entry("cuda:1", 2, ok, 0, NULL);
	t[1].n_preferred = KVB_MAX_NICS + 1;
	topo_rejected(t, 2, 4, "65 preferred");
	t[1].n_preferred = 0;
	t[1].n_secondary = UINT32_MAX;
	topo_rejected(t, 2, 4, "4294967295 secondary");
	t[1] = topo_entry("cuda:0", 1, ok, 0, NULL);
	topo_rejected(t, 2, 4, "'cuda:0'");
	t[1] = topo_entry("", 1, ok, 0, NULL);
	topo_rejected(t, 2, 4, "entry 1: location is empty");
	memset(t[1].location, 'x', sizeof(t[1].location));
	topo_rejected(t, 2, 4, "not terminated");
	topo_rejected(NULL, 3, 4, "n_topology is 3");
	/* index == n_nics is out of range; n_nics - 1 is fine */
	t[0] = topo_entry("cuda:0", 2, ok, 0, NULL);
	topo_rejected(t, 1, 1, "preferred NIC 1");
	kvb_nic_policy_free(policy_new("topology", 2, 1, t, 1));
	/* KVB_MAX_NICS entries in a list are fine */
	kvb_topology_entry_t full = topo_entry("*", 0, NULL, 0, NULL);
	full.n_preferred = full.n_secondary = KVB_MAX_NICS;
	for (uint32_t i = 0; i < KVB_MAX_NICS; i++)
		full.preferred[i] = full.secondary[i] = KVB_MAX_NICS - 1 - i;
	kvb_nic_policy_t *p = policy_new("topology", KVB_MAX_NICS, 1, &full, 1);
	nics_t s;
	nics_init(&s, KVB_MAX_NICS);
	ck_assert_int_eq(pick(p, &s, NULL, 1, KVB_NIC_NONE), KVB_MAX_NICS - 1);
	ck_assert_int_eq(pick(p, &s, NULL, KVB_MAX_NICS + 1, KVB_NIC_NONE), KVB_MAX_NICS - 1);
	kvb_nic_policy_free(p);
	/* the policy keeps its own copy of the matrix */
	static const uint32_t two[] = {2};
	kvb_topology_entry_t *heap = g_new(kvb_topology_entry_t, 1);
	*heap = topo_entry("cuda:0", 1, two, 0, NULL);
	nics_init(&s, 4);
	p = policy_new("topology", 4, 1, heap, 1);
	heap->preferred[0] = 1;
	g_free(heap);
	ck_assert_int_eq(pick(p, &s, "cuda:0", 0, KVB_NIC_NONE), 2);
	kvb_nic_policy_free(p);
}
END_TEST

/* ---- every built-in --------------------------------------------------- */

/* Through the instance wrapper and through the ops directly: a policy
 * itself answers KVB_ERR_NO_RESOURCE when nothing is up. */
START_TEST(test_none_up)
{
	static const uint32_t pref[] = {1};
	kvb_topology_entry_t t = topo_entry("cuda:0", 1, pref, 0, NULL);
	nics_t s;
	nics_init(&s, 4);
	memset(s.up, 0, sizeof(s.up));
	kvb_nic_view_t view = view_of(&s);

	for (size_t i = 0; i < G_N_ELEMENTS(builtins); i++) {
		kvb_nic_policy_t *p = policy_new(builtins[i], 4, 1, &t, 1);
		const kvb_nic_policy_ops_t *ops = kvb_nic_policy_find(builtins[i]);
		ck_assert_ptr_nonnull(ops);
		void *state = g_malloc0(ops->state_size);
		kvb_policy_params_t params = {4, 1, &t, 1};
		ck_assert_int_eq(ops->init(state, &params, NULL), KVB_OK);
		for (uint32_t attempt = 0; attempt < 3; attempt++) {
			for (uint32_t avoid = 0; avoid < 6; avoid++) {
				uint32_t a = avoid == 5 ? KVB_NIC_NONE : avoid;
				kvb_pick_ctx_t ctx = {"cuda:0", 64, attempt, a, 0};
				ck_assert_int_eq(pick(p, &s, "cuda:0", attempt, a), KVB_ERR_NO_RESOURCE);
				ck_assert_int_eq(pick(p, &s, NULL, attempt, a), KVB_ERR_NO_RESOURCE);
				ck_assert_int_eq(ops->pick(state, &ctx, &view), KVB_ERR_NO_RESOURCE);
			}
		}
		/* and recovers when one comes up */
		s.up[2] = true;
		ck_assert_int_eq(pick(p, &s, "cuda:0", 0, KVB_NIC_NONE), 2);
		ck_assert_int_eq(pick(p, &s, "cuda:0", 1, 2), 2);
		s.up[2] = false;
		if (ops->fini)
			ops->fini(state);
		g_free(state);
		kvb_nic_policy_free(p);
	}
}
END_TEST

/* Random views, avoids, attempts and locations: every built-in returns an
 * up NIC, not the avoided one while another is up, and two instances with
 * the same seed agree pick for pick. */
START_TEST(test_contract_randomized)
{
	static const uint32_t p0[] = {0, 5}, s0[] = {6, 1}, p1[] = {3}, ps[] = {2, 4};
	kvb_topology_entry_t t[3] = {
		topo_entry("cuda:0", 2, p0, 2, s0),
		topo_entry("cpu:1", 1, p1, 0, NULL),
		topo_entry("*", 2, ps, 0, NULL),
	};
	static const char *locs[] = {"cuda:0", "cpu:1", "cuda:3", NULL};

	for (size_t i = 0; i < G_N_ELEMENTS(builtins); i++) {
		kvb_nic_policy_t *a = policy_new(builtins[i], 7, 77, t, 3);
		kvb_nic_policy_t *b = policy_new(builtins[i], 7, 77, t, 3);
		kvb_rng_t r;
		kvb_rng_seed(&r, 5);
		nics_t s;
		nics_init(&s, 7);
		for (int round = 0; round < 20000; round++) {
			uint32_t n_up = 0;
			for (uint32_t n = 0; n < 7; n++) {
				s.up[n] = kvb_rng_below(&r, 4) != 0;
				s.inflight[n] = kvb_rng_below(&r, 4) * 4096;
				n_up += s.up[n];
			}
			uint32_t avoid = kvb_rng_below(&r, 3) ? (uint32_t)kvb_rng_below(&r, 8) : KVB_NIC_NONE;
			uint32_t attempt = (uint32_t)kvb_rng_below(&r, 4);
			const char *loc = locs[kvb_rng_below(&r, G_N_ELEMENTS(locs))];
			int x = pick(a, &s, loc, attempt, avoid);
			ck_assert_int_eq(x, pick(b, &s, loc, attempt, avoid));
			if (n_up == 0) {
				ck_assert_int_eq(x, KVB_ERR_NO_RESOURCE);
				continue;
			}
			ck_assert_msg(x >= 0 && x < 7 && s.up[x], "%s: picked %d", builtins[i], x);
			bool other = n_up > 1 || avoid >= 7 || !s.up[avoid];
			if (other)
				ck_assert_msg((uint32_t)x != avoid, "%s: picked avoided NIC %u", builtins[i], avoid);
		}
		kvb_nic_policy_free(a);
		kvb_nic_policy_free(b);
	}
}
END_TEST

/* ---- instances -------------------------------------------------------- */

START_TEST(test_new_errors)
{
	kvb_policy_params_t params = {4, 1, NULL, 0};
	kvb_nic_policy_t *p = (kvb_nic_policy_t *)&params;
	kvb_err_t err;

	ck_assert_int_eq(kvb_nic_policy_new("fastest", &params, &p, &err), KVB_ERR_NOT_FOUND);
	ck_assert_ptr_null(p);
	ck_assert_int_eq(err.code, KVB_ERR_NOT_FOUND);
	for (size_t i = 0; i < G_N_ELEMENTS(builtins); i++)
		ck_assert_msg(strstr(err.msg, builtins[i]), "'%s' lacks %s", err.msg, builtins[i]);
	ck_assert_ptr_nonnull(strstr(err.msg, "'fastest'"));
	ck_assert_int_eq(kvb_nic_policy_new("", &params, &p, &err), KVB_ERR_NOT_FOUND);
	ck_assert_int_eq(kvb_nic_policy_new("fastest", &params, &p, NULL), KVB_ERR_NOT_FOUND);

	params.n_nics = 0;
	ck_assert_int_eq(kvb_nic_policy_new("round_robin", &params, &p, &err), KVB_ERR_CONFIG);
	ck_assert_ptr_null(p);
	ck_assert_ptr_nonnull(strstr(err.msg, "0 NICs"));
	params.n_nics = KVB_MAX_NICS + 1;
	ck_assert_int_eq(kvb_nic_policy_new("random", &params, &p, &err), KVB_ERR_CONFIG);
	ck_assert_ptr_nonnull(strstr(err.msg, "65 NICs"));
	params.n_nics = KVB_MAX_NICS;
	kvb_nic_policy_free(policy_new("least_loaded", KVB_MAX_NICS, 0, NULL, 0));

	ck_assert_int_eq(kvb_nic_policy_new(NULL, &params, &p, &err), KVB_ERR_INVALID);
	ck_assert_int_eq(kvb_nic_policy_new("random", NULL, &p, &err), KVB_ERR_INVALID);
	ck_assert_ptr_null(p);
	ck_assert_int_eq(kvb_nic_policy_new("random", &params, NULL, &err), KVB_ERR_INVALID);

	/* success clears a stale error */
	kvb_err_set(&err, KVB_ERR_PEER, "stale");
	ck_assert_int_eq(kvb_nic_policy_new("random", &params, &p, &err), KVB_OK);
	ck_assert_int_eq(err.code, KVB_OK);
	kvb_nic_policy_free(p);
	kvb_nic_policy_free(NULL);
	ck_assert_ptr_null(kvb_nic_policy_name(NULL));
}
END_TEST

START_TEST(test_pick_misuse)
{
	nics_t s;
	nics_init(&s, 4);
	kvb_nic_policy_t *p = policy_new("round_robin", 4, 0, NULL, 0);
	kvb_pick_ctx_t ctx = {NULL, 1, 0, KVB_NIC_NONE, 0};
	kvb_nic_view_t view = view_of(&s);

	ck_assert_int_eq(kvb_nic_policy_pick(NULL, &ctx, &view), KVB_ERR_INVALID);
	ck_assert_int_eq(kvb_nic_policy_pick(p, NULL, &view), KVB_ERR_INVALID);
	ck_assert_int_eq(kvb_nic_policy_pick(p, &ctx, NULL), KVB_ERR_INVALID);
	view.n_nics = 3;
	ck_assert_int_eq(kvb_nic_policy_pick(p, &ctx, &view), KVB_ERR_INVALID);
	view.n_nics = 5;
	ck_assert_int_eq(kvb_nic_policy_pick(p, &ctx, &view), KVB_ERR_INVALID);
	view = view_of(&s);
	view.up = NULL;
	ck_assert_int_eq(kvb_nic_policy_pick(p, &ctx, &view), KVB_ERR_INVALID);
	view = view_of(&s);
	view.inflight_bytes = NULL;
	ck_assert_int_eq(kvb_nic_policy_pick(p, &ctx, &view), KVB_ERR_INVALID);
	/* misuse did not advance the cycle */
	view = view_of(&s);
	ck_assert_int_eq(kvb_nic_policy_pick(p, &ctx, &view), 0);
	kvb_nic_policy_free(p);
}
END_TEST

/* ---- registry --------------------------------------------------------- */

START_TEST(test_names)
{
	const char *const *names = kvb_nic_policy_names();
	size_t n = 0;

	ck_assert_ptr_nonnull(names);
	for (size_t i = 0; i < G_N_ELEMENTS(builtins); i++)
		ck_assert_str_eq(names[i], builtins[i]);
	for (; names[n]; n++) {
		const kvb_nic_policy_ops_t *ops = kvb_nic_policy_find(names[n]);
		ck_assert_ptr_nonnull(ops);
		ck_assert_str_eq(ops->name, names[n]);
		for (size_t j = 0; j < n; j++)
			ck_assert_str_ne(names[j], names[n]);
	}
	ck_assert_uint_ge(n, G_N_ELEMENTS(builtins));
	ck_assert_uint_le(n, G_N_ELEMENTS(builtins) + 16);
	for (size_t i = 0; i < G_N_ELEMENTS(builtins); i++) {
		const kvb_nic_policy_ops_t *ops = kvb_nic_policy_find(builtins[i]);
		ck_assert_uint_eq(ops->abi, KVB_POLICY_ABI);
		ck_assert_uint_eq(ops->size, sizeof(kvb_nic_policy_ops_t));
		ck_assert_ptr_nonnull(ops->init);
		ck_assert_ptr_nonnull(ops->pick);
	}
	ck_assert_ptr_null(kvb_nic_policy_find(NULL));
	ck_assert_ptr_null(kvb_nic_policy_find("nope"));
	ck_assert_ptr_null(kvb_nic_policy_find("Random"));
	ck_assert_ptr_null(kvb_nic_policy_find("random "));
}
END_TEST

/* A user policy: the highest-numbered NIC that is up.  The test policies'
 * bookkeeping is process-wide, so every test registers its own names (the
 * registry persists across tests under CK_FORK=no). */
struct high_state {
	uint32_t magic;
	uint32_t n_nics;
	uint64_t picks;
	uint32_t zeroed_tail[8];
};

static int high_inits, high_finis, high_saw_zeroed;

static int high_init(void *state, const kvb_policy_params_t *params, kvb_err_t *err)
{
	struct high_state *st = state;
	static const struct high_state zero;
	high_inits++;
	high_saw_zeroed += memcmp(st, &zero, sizeof(*st)) == 0;
	st->magic = 0x41474948;
	st->n_nics = params->n_nics;
	return KVB_OK;
}

static int high_pick(void *state, const kvb_pick_ctx_t *ctx, const kvb_nic_view_t *view)
{
	struct high_state *st = state;
	ck_assert_uint_eq(st->magic, 0x41474948);
	st->picks++;
	for (uint32_t i = view->n_nics; i-- > 0;)
		if (view->up[i])
			return (int)i;
	return KVB_ERR_NO_RESOURCE;
}

static void high_fini(void *state)
{
	struct high_state *st = state;
	ck_assert_uint_eq(st->magic, 0x41474948);
	high_finis++;
}

static const kvb_nic_policy_ops_t high_ops = {
	.abi = KVB_POLICY_ABI,
	.size = sizeof(kvb_nic_policy_ops_t),
	.name = "highest_up",
	.state_size = sizeof(struct high_state),
	.init = high_init,
	.pick = high_pick,
	.fini = high_fini,
};

START_TEST(test_user_policy)
{
	ck_assert_ptr_null(kvb_nic_policy_find("highest_up"));
	ck_assert_int_eq(kvb_nic_policy_register(&high_ops), KVB_OK);
	const kvb_nic_policy_ops_t *ops = kvb_nic_policy_find("highest_up");
	ck_assert_ptr_nonnull(ops);
	ck_assert_str_eq(ops->name, "highest_up");
	ck_assert(ops->pick == high_pick);
	ck_assert_uint_eq(ops->state_size, sizeof(struct high_state));

	const char *const *names = kvb_nic_policy_names();
	bool listed = false;
	for (size_t i = 0; names[i]; i++) {
		if (i < G_N_ELEMENTS(builtins))
			ck_assert_str_eq(names[i], builtins[i]);
		listed |= strcmp(names[i], "highest_up") == 0;
	}
	ck_assert(listed);

	int inits = high_inits, finis = high_finis, zeroed = high_saw_zeroed;
	nics_t s;
	nics_init(&s, 5);
	kvb_nic_policy_t *p = policy_new("highest_up", 5, 0, NULL, 0);
	ck_assert_int_eq(high_inits, inits + 1);
	ck_assert_int_eq(high_saw_zeroed, zeroed + 1);
	ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), 4);
	s.up[4] = false;
	ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), 3);
	memset(s.up, 0, sizeof(s.up));
	ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), KVB_ERR_NO_RESOURCE);
	ck_assert_int_eq(high_finis, finis);
	kvb_nic_policy_free(p);
	ck_assert_int_eq(high_finis, finis + 1);

	/* a second registration of the same name is refused */
	ck_assert_int_eq(kvb_nic_policy_register(&high_ops), KVB_ERR_EXISTS);
}
END_TEST

/* A policy that returns whatever the test asks for. */
static int liar_answer;

static int liar_init(void *state, const kvb_policy_params_t *params, kvb_err_t *err)
{
	return KVB_OK;
}

static int liar_pick(void *state, const kvb_pick_ctx_t *ctx, const kvb_nic_view_t *view)
{
	return liar_answer;
}

START_TEST(test_pick_validates_policy)
{
	/* no state, no fini, an older (shorter) table */
	kvb_nic_policy_ops_t ops = {
		.abi = KVB_POLICY_ABI,
		.size = offsetof(kvb_nic_policy_ops_t, pick) + sizeof(ops.pick),
		.name = "liar",
		.init = liar_init,
		.pick = liar_pick,
	};
	ck_assert_int_eq(kvb_nic_policy_register(&ops), KVB_OK);
	nics_t s;
	nics_init(&s, 4);
	s.up[1] = false;
	kvb_nic_policy_t *p = policy_new("liar", 4, 0, NULL, 0);
	static const struct {
		int answer, want;
	} cases[] = {
		{0, 0}, {3, 3}, {1, KVB_ERR_NO_RESOURCE}, {4, KVB_ERR_NO_RESOURCE},
		{1000, KVB_ERR_NO_RESOURCE}, {-1, KVB_ERR_NO_RESOURCE},
		{KVB_ERR_TRANSPORT, KVB_ERR_NO_RESOURCE}, {KVB_ERR_NO_RESOURCE, KVB_ERR_NO_RESOURCE},
		{INT32_MIN, KVB_ERR_NO_RESOURCE},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
		liar_answer = cases[i].answer;
		ck_assert_int_eq(pick(p, &s, NULL, 0, KVB_NIC_NONE), cases[i].want);
	}
	kvb_nic_policy_free(p);
}
END_TEST

static int fini_calls;
static void counting_fini(void *state)
{
	fini_calls++;
}

static int failing_init(void *state, const kvb_policy_params_t *params, kvb_err_t *err)
{
	if (params->seed == 1)
		return kvb_err_set(err, KVB_ERR_CONFIG, "seed %u is unlucky", 1u);
	return KVB_ERR_CONFIG; /* no message of its own */
}

START_TEST(test_init_failure)
{
	static const kvb_nic_policy_ops_t ops = {
		.abi = KVB_POLICY_ABI,
		.size = sizeof(kvb_nic_policy_ops_t),
		.name = "never_ready",
		.state_size = 100,
		.init = failing_init,
		.pick = liar_pick,
		.fini = counting_fini,
	};
	ck_assert_int_eq(kvb_nic_policy_register(&ops), KVB_OK);
	kvb_policy_params_t params = {2, 1, NULL, 0};
	kvb_nic_policy_t *p = (kvb_nic_policy_t *)&params;
	kvb_err_t err;
	int finis = fini_calls;

	ck_assert_int_eq(kvb_nic_policy_new("never_ready", &params, &p, &err), KVB_ERR_CONFIG);
	ck_assert_ptr_null(p);
	ck_assert_str_eq(err.msg, "seed 1 is unlucky");
	/* a stale error does not hide the missing message */
	params.seed = 2;
	kvb_err_set(&err, KVB_ERR_PEER, "stale");
	ck_assert_int_eq(kvb_nic_policy_new("never_ready", &params, &p, &err), KVB_ERR_CONFIG);
	ck_assert_int_eq(err.code, KVB_ERR_CONFIG);
	ck_assert_msg(strstr(err.msg, "'never_ready'"), "message '%s'", err.msg);
	ck_assert_int_eq(kvb_nic_policy_new("never_ready", &params, &p, NULL), KVB_ERR_CONFIG);
	ck_assert_int_eq(fini_calls, finis);
}
END_TEST

/* A table shorter than fini: the fini pointer past size is never read. */
START_TEST(test_short_table)
{
	kvb_nic_policy_ops_t ops = {
		.abi = KVB_POLICY_ABI,
		.size = offsetof(kvb_nic_policy_ops_t, fini),
		.name = "short_table",
		.state_size = 8,
		.init = liar_init,
		.pick = liar_pick,
		.fini = counting_fini, /* beyond size: garbage to this core */
	};
	ck_assert_int_eq(kvb_nic_policy_register(&ops), KVB_OK);
	const kvb_nic_policy_ops_t *found = kvb_nic_policy_find("short_table");
	ck_assert_ptr_nonnull(found);
	ck_assert_ptr_null(found->fini);
	int finis = fini_calls;
	kvb_nic_policy_free(policy_new("short_table", 2, 0, NULL, 0));
	ck_assert_int_eq(fini_calls, finis);
}
END_TEST

START_TEST(test_register_errors)
{
	kvb_nic_policy_ops_t good = {
		.abi = KVB_POLICY_ABI,
		.size = sizeof(kvb_nic_policy_ops_t),
		.name = "reg_errors",
		.init = liar_init,
		.pick = liar_pick,
	};
	kvb_nic_policy_ops_t o;

	ck_assert_int_eq(kvb_nic_policy_register(NULL), KVB_ERR_INVALID);
	o = good;
	o.abi = 0;
	ck_assert_int_eq(kvb_nic_policy_register(&o), KVB_ERR_ABI);
	o.abi = KVB_POLICY_ABI + 1;
	ck_assert_int_eq(kvb_nic_policy_register(&o), KVB_ERR_ABI);
	o = good;
	o.size = offsetof(kvb_nic_policy_ops_t, pick) + sizeof(o.pick) - 1;
	ck_assert_int_eq(kvb_nic_policy_register(&o), KVB_ERR_ABI);
	o.size = 0;
	ck_assert_int_eq(kvb_nic_policy_register(&o), KVB_ERR_ABI);
	o = good;
	o.name = NULL;
	ck_assert_int_eq(kvb_nic_policy_register(&o), KVB_ERR_INVALID);
	o = good;
	o.init = NULL;
	ck_assert_int_eq(kvb_nic_policy_register(&o), KVB_ERR_INVALID);
	o = good;
	o.pick = NULL;
	ck_assert_int_eq(kvb_nic_policy_register(&o), KVB_ERR_INVALID);
	static const char *bad_names[] = {"", "Upper", "has-dash", "sp ace", "dot.ted", "tab\t",
					  "caf\xc3\xa9", "x/y", "*"};
	for (size_t i = 0; i < G_N_ELEMENTS(bad_names); i++) {
		o = good;
		o.name = bad_names[i];
		ck_assert_msg(kvb_nic_policy_register(&o) == KVB_ERR_INVALID, "name '%s' accepted",
			      bad_names[i]);
		ck_assert_ptr_null(kvb_nic_policy_find(bad_names[i]));
	}
	/* built-in names are taken */
	for (size_t i = 0; i < G_N_ELEMENTS(builtins); i++) {
		o = good;
		o.name = builtins[i];
		ck_assert_int_eq(kvb_nic_policy_register(&o), KVB_ERR_EXISTS);
		ck_assert_ptr_ne(kvb_nic_policy_find(builtins[i])->pick, liar_pick);
	}
	/* nothing above was registered */
	ck_assert_ptr_null(kvb_nic_policy_find("reg_errors"));
	/* a valid name made of every allowed kind of character */
	o = good;
	o.name = "reg_errors_09";
	ck_assert_int_eq(kvb_nic_policy_register(&o), KVB_OK);
	/* the same name from another table is taken */
	o.pick = high_pick;
	ck_assert_int_eq(kvb_nic_policy_register(&o), KVB_ERR_EXISTS);
	ck_assert(kvb_nic_policy_find("reg_errors_09")->pick == liar_pick);
}
END_TEST

/* Fills the registry in a child process so that the process-wide registry
 * of the test runner (CK_FORK=no) stays usable for the other tests. */
static int fill_registry(void)
{
	static char names[32][24];
	kvb_nic_policy_ops_t o = {
		.abi = KVB_POLICY_ABI,
		.size = sizeof(kvb_nic_policy_ops_t),
		.init = liar_init,
		.pick = liar_pick,
	};
	int added = 0;
	for (int i = 0; i < 32; i++) {
		g_snprintf(names[i], sizeof(names[i]), "fill_%d", i);
		o.name = names[i];
		int rc = kvb_nic_policy_register(&o);
		if (rc == KVB_OK)
			added++;
		else if (rc != KVB_ERR_NO_RESOURCE)
			return 10;
	}
	const char *const *list = kvb_nic_policy_names();
	size_t n = 0;
	while (list[n])
		n++;
	if (n != G_N_ELEMENTS(builtins) + 16)
		return 11;
	if (added < 1 || strcmp(list[n - 1], names[added - 1]) != 0)
		return 12;
	if (kvb_nic_policy_find(names[added]) || !kvb_nic_policy_find(names[added - 1]))
		return 13;
	/* a full registry still refuses a taken name as taken */
	o.name = "random";
	if (kvb_nic_policy_register(&o) != KVB_ERR_EXISTS)
		return 14;
	return added >= 1 && added <= 16 ? 0 : 15;
}

START_TEST(test_registry_full)
{
	fflush(NULL);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		_exit(fill_registry());
	int status = 0;
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), 0);
}
END_TEST

/* Bulk placement equals n single picks: same counts, same state after
 * (checked by the next single picks), for every built-in, with random loads,
 * rooms, NICs down and an avoided NIC. */
static void single_picks(kvb_nic_policy_t *p, const kvb_pick_ctx_t *ctx, uint32_t k,
			 const uint64_t *load0, const uint32_t *room0, const bool *up0, uint32_t n,
			 uint32_t *counts)
{
	uint64_t load[KVB_MAX_NICS];
	uint32_t room[KVB_MAX_NICS];
	bool up[KVB_MAX_NICS];
	for (uint32_t i = 0; i < k; i++) {
		load[i] = load0[i];
		room[i] = up0[i] ? room0[i] : 0;
		up[i] = room[i] > 0;
		counts[i] = 0;
	}
	kvb_nic_view_t v = {k, load, up};
	for (uint32_t j = 0; j < n; j++) {
		int nic = kvb_nic_policy_pick(p, ctx, &v);
		if (nic < 0)
			break;
		counts[nic]++;
		load[nic] += ctx->len;
		if (--room[nic] == 0)
			up[nic] = false;
	}
}

START_TEST(test_bulk_equals_single_picks)
{
	static const char *names[] = {"round_robin", "random", "least_loaded", "topology", "sticky"};
	kvb_rng_t rng;
	kvb_rng_seed(&rng, 77);
	for (int iter = 0; iter < 4000; iter++) {
		const char *name = names[iter % 5];
		uint32_t k = 1 + (uint32_t)kvb_rng_below(&rng, 8);
		uint64_t seed = kvb_rng_next(&rng);
		kvb_policy_params_t params = {k, seed, NULL, 0};
		kvb_nic_policy_t *a, *b;
		ck_assert_int_eq(kvb_nic_policy_new(name, &params, &a, NULL), KVB_OK);
		ck_assert_int_eq(kvb_nic_policy_new(name, &params, &b, NULL), KVB_OK);
		uint64_t load[KVB_MAX_NICS];
		uint32_t room[KVB_MAX_NICS], ca[KVB_MAX_NICS], cb[KVB_MAX_NICS];
		bool up[KVB_MAX_NICS];
		/* two rounds with the same instances: state carries over */
		for (int round = 0; round < 2; round++) {
			uint64_t len = 1 + kvb_rng_below(&rng, 3) * 4096;
			for (uint32_t i = 0; i < k; i++) {
				/* loads often equal, to exercise ties */
				load[i] = kvb_rng_below(&rng, 4) * (kvb_rng_below(&rng, 2) ? len : 1000);
				room[i] = (uint32_t)kvb_rng_below(&rng, 6);
				up[i] = kvb_rng_below(&rng, 5) != 0;
			}
			uint32_t avoid = kvb_rng_below(&rng, 3) == 0 ? (uint32_t)kvb_rng_below(&rng, k) : KVB_NIC_NONE;
			uint32_t n = 1 + (uint32_t)kvb_rng_below(&rng, 40);
			kvb_pick_ctx_t ctx = {"cpu:0", len, 0, avoid, 5};
			bool vup[KVB_MAX_NICS];
			for (uint32_t i = 0; i < k; i++)
				vup[i] = up[i] && room[i] > 0;
			kvb_nic_view_t view = {k, load, vup};
			int placed = kvb_nic_policy_pick_bulk(a, &ctx, &view, room, n, ca);
			single_picks(b, &ctx, k, load, room, up, n, cb);
			uint32_t sum = 0;
			for (uint32_t i = 0; i < k; i++) {
				ck_assert_msg(ca[i] == cb[i], "%s iter %d round %d: NIC %u bulk %u single %u (k %u n %u avoid %u)",
					      name, iter, round, i, ca[i], cb[i], k, n, avoid);
				sum += ca[i];
			}
			ck_assert_int_eq(placed, sum ? (int)sum : KVB_ERR_NO_RESOURCE);
		}
		/* the state left behind is the same */
		for (uint32_t i = 0; i < k; i++) {
			load[i] = 0;
			up[i] = true;
		}
		kvb_nic_view_t view = {k, load, up};
		kvb_pick_ctx_t ctx = {"cpu:0", 4096, 0, KVB_NIC_NONE, 5};
		for (int j = 0; j < 3; j++)
			ck_assert_int_eq(kvb_nic_policy_pick(a, &ctx, &view), kvb_nic_policy_pick(b, &ctx, &view));
		kvb_nic_policy_free(a);
		kvb_nic_policy_free(b);
	}
}
END_TEST

/* sticky: every slice of a stream on one NIC, different streams spread,
 * the next usable NIC when the home one is full or down */
START_TEST(test_sticky)
{
	kvb_policy_params_t params = {8, 5, NULL, 0};
	kvb_nic_policy_t *p;
	ck_assert_int_eq(kvb_nic_policy_new("sticky", &params, &p, NULL), KVB_OK);
	uint64_t load[8] = {0};
	bool up[8];
	for (int i = 0; i < 8; i++)
		up[i] = true;
	kvb_nic_view_t view = {8, load, up};
	uint32_t used[8] = {0};
	for (uint64_t stream = 1; stream <= 64; stream++) {
		kvb_pick_ctx_t ctx = {NULL, 4096, 0, KVB_NIC_NONE, stream};
		int home = kvb_nic_policy_pick(p, &ctx, &view);
		ck_assert_int_ge(home, 0);
		for (int k = 0; k < 5; k++)
			ck_assert_int_eq(kvb_nic_policy_pick(p, &ctx, &view), home);
		used[home]++;
		up[home] = false;
		int other = kvb_nic_policy_pick(p, &ctx, &view);
		ck_assert_int_eq(other, (home + 1) % 8);
		up[home] = true;
	}
	uint32_t nics_used = 0;
	for (int i = 0; i < 8; i++)
		nics_used += used[i] > 0;
	ck_assert_uint_ge(nics_used, 6);
	kvb_nic_policy_free(p);
}
END_TEST

Suite *kvb_suite_policy(void)
{
	Suite *s = suite_create("policy");
	TCase *tc;

	tc = tcase_create("rng");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_rng_known_answers);
	tcase_add_test(tc, test_rng_determinism);
	tcase_add_test(tc, test_rng_below);
	tcase_add_test(tc, test_rng_uniform);
	suite_add_tcase(s, tc);

	tc = tcase_create("builtins");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_round_robin);
	tcase_add_test(tc, test_random);
	tcase_add_test(tc, test_least_loaded);
	tcase_add_test(tc, test_topology_fallbacks);
	tcase_add_test(tc, test_topology_star);
	tcase_add_test(tc, test_topology_retry_walk);
	tcase_add_test(tc, test_topology_bad);
	tcase_add_test(tc, test_none_up);
	tcase_add_test(tc, test_contract_randomized);
	tcase_add_test(tc, test_bulk_equals_single_picks);
	tcase_add_test(tc, test_sticky);
	suite_add_tcase(s, tc);

	tc = tcase_create("instances");
	tcase_add_test(tc, test_new_errors);
	tcase_add_test(tc, test_pick_misuse);
	suite_add_tcase(s, tc);

	tc = tcase_create("registry");
	tcase_add_test(tc, test_names);
	tcase_add_test(tc, test_user_policy);
	tcase_add_test(tc, test_pick_validates_policy);
	tcase_add_test(tc, test_init_failure);
	tcase_add_test(tc, test_short_table);
	tcase_add_test(tc, test_register_errors);
	tcase_add_test(tc, test_registry_full);
	suite_add_tcase(s, tc);
	return s;
}
