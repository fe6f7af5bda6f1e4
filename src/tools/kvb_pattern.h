/*
 * Deterministic KV contents for the tools: a producer fills each block from
 * a seed, any receiver recomputes the same bytes and checks every one.
 */
#ifndef KVB_PATTERN_H
#define KVB_PATTERN_H

#include <stdint.h>
#include <string.h>

/* splitmix64's finalizer: a well-mixed 64-bit function of x. */
static inline uint64_t kvb_pattern_mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Fill len bytes of p from seed (8 bytes per mixed word). */
static inline void kvb_pattern_fill(uint8_t *p, uint64_t len, uint64_t seed)
{
	uint64_t w = 0;
	for (uint64_t i = 0; i < len; i++) {
		if ((i & 7) == 0)
			w = kvb_pattern_mix(seed ^ (i >> 3));
		p[i] = (uint8_t)(w >> (8 * (i & 7)));
	}
}

/* Bytes of p that differ from the pattern of seed. */
static inline uint64_t kvb_pattern_mismatches(const uint8_t *p, uint64_t len, uint64_t seed)
{
	uint64_t bad = 0, w = 0;
	for (uint64_t i = 0; i < len; i++) {
		if ((i & 7) == 0)
			w = kvb_pattern_mix(seed ^ (i >> 3));
		bad += p[i] != (uint8_t)(w >> (8 * (i & 7)));
	}
	return bad;
}

/* A request's seed from its id (FNV-1a), so both sides derive it alone. */
static inline uint64_t kvb_pattern_request_seed(const char *id)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (const unsigned char *c = (const unsigned char *)id; *c; c++)
		h = (h ^ *c) * 0x100000001b3ull;
	return h;
}

/* Seed of block k (in request order) of region r of a request. */
static inline uint64_t kvb_pattern_block_seed(uint64_t request_seed, uint32_t region, uint64_t k)
{
	return kvb_pattern_mix(request_seed ^ ((uint64_t)region << 40) ^ k);
}

#endif /* KVB_PATTERN_H */
