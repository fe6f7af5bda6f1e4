/*
 * Workloads for the simulation backend: request traces (Mooncake JSONL,
 * Azure LLM inference CSV), a seeded generator that stands in for them, and
 * a prefill time model.  Plain C + GLib, no SimGrid, so it is tested alone.
 * Formats, formulas, fitted defaults and their sources: docs/workloads.md.
 *
 * A workload is an immutable array of requests sorted by arrival time (ties
 * by id).  Arrival times are seconds after the earliest request, so the
 * first request arrives at 0 (kvb_workload_from_array keeps the caller's
 * times as they are).  Requests carry the prefix-block hashes of
 * their prompt (Mooncake: one id per 512-token block, equal ids = the same
 * prefix KV, shareable); Azure traces have none.
 *
 * Errors are GErrors (domain KVB_WL_ERROR, or G_FILE_ERROR when the file
 * cannot be read).  Parse errors name the file, the line (and, for CSV, the
 * column), the field and the offending text:
 *   conversation.jsonl:17: field input_length: expected a non-negative
 *   integer, got "-3"
 *
 * Everything here is deterministic: no clock, no global state, randomness
 * only from the generator's seed.
 */
#ifndef KVB_WORKLOAD_H
#define KVB_WORKLOAD_H

#include <stdint.h>

#include <glib.h>
#include <kvbridge/model.h>

#define KVB_WL_BLOCK_TOKENS 512u          /* Mooncake trace: tokens per hash block */
#define KVB_WL_MAX_TOKENS 16777216u       /* 2^24: per request, input or output */
#define KVB_WL_MAX_HASHES 65536u          /* hash ids per request */
#define KVB_WL_MAX_LINE (1024u * 1024u)   /* bytes per input line, newline excluded */
#define KVB_WL_MAX_REQUESTS 16777216u     /* generator: n_requests upper bound */
#define KVB_WL_MAX_DEPTH 64u              /* JSON nesting inside skipped values */

#define KVB_WL_ERROR (kvb_wl_error_quark())
GQuark kvb_wl_error_quark(void);
typedef enum kvb_wl_error_code {
	KVB_WL_ERROR_PARSE = 1,   /* malformed line, field or value in a trace */
	KVB_WL_ERROR_FORMAT = 2,  /* AUTO could not tell the format */
	KVB_WL_ERROR_EMPTY = 3,   /* the trace holds no request */
	KVB_WL_ERROR_INVALID = 4, /* bad argument or generator parameter */
} kvb_wl_error_code_t;

/* One request.  Pointers stay valid until kvb_workload_free. */
typedef struct kvb_wl_request {
	uint64_t id;              /* position in the input, 0-based (file or generation order) */
	double arrival_s;         /* seconds after the earliest request, rate multiplier applied */
	uint32_t input_tokens;    /* prompt length, <= KVB_WL_MAX_TOKENS */
	uint32_t output_tokens;   /* tokens to generate, <= KVB_WL_MAX_TOKENS */
	uint32_t n_hash;          /* prefix-block hashes, <= KVB_WL_MAX_HASHES (Azure: 0) */
	const uint32_t *hash_ids; /* n_hash ids, owned by the workload; NULL when n_hash is 0 */
} kvb_wl_request_t;

typedef struct kvb_workload kvb_workload_t;

typedef enum kvb_wl_format {
	KVB_WL_AUTO = 0,     /* by content: first non-blank byte '{' or a TIMESTAMP header */
	KVB_WL_MOONCAKE = 1, /* JSONL: timestamp (ms), input_length, output_length, hash_ids */
	KVB_WL_AZURE = 2,    /* CSV: TIMESTAMP,ContextTokens,GeneratedTokens */
} kvb_wl_format_t;

/*
 * Load a trace.  rate_mult > 0 compresses time: arrival_s = raw / rate_mult
 * (2.0 replays twice as fast).  limit > 0 keeps the first `limit` requests in
 * file order and stops reading there (lines after them are not parsed);
 * 0 keeps all.
 *
 * Mooncake JSONL: one object per line with timestamp (a non-negative JSON
 * number, milliseconds), input_length and output_length (non-negative
 * integers <= KVB_WL_MAX_TOKENS), hash_ids (array of at most
 * KVB_WL_MAX_HASHES integers in [0, 2^32-1]).  Other keys are skipped, their
 * values validated as JSON.  Duplicate keys, missing fields, a fraction or
 * exponent where an integer is expected and bytes after the object are
 * errors.
 *
 * Azure CSV: a header naming exactly TIMESTAMP, ContextTokens and
 * GeneratedTokens (any order), then rows of three fields; TIMESTAMP is
 * "YYYY-MM-DD HH:MM:SS" with 0 to 7 fractional digits (UTC assumed; only
 * differences are used).  n_hash is 0.
 *
 * Both: blank lines (only spaces, tabs, CR) are skipped, a UTF-8 byte order
 * mark at the start is skipped, CRLF is accepted, lines are at most
 * KVB_WL_MAX_LINE bytes, the last line may lack its newline.  Requests
 * whose timestamps go backwards are accepted and sorted (stable: ties keep
 * file order); id remains the file position.  A file without requests is an
 * error (KVB_WL_ERROR_EMPTY).
 *
 * Returns TRUE and a new workload in *out, or FALSE with *err set and *out
 * untouched.
 */
gboolean kvb_workload_load(const char *path, kvb_wl_format_t fmt, double rate_mult,
			   uint64_t limit, kvb_workload_t **out, GError **err);

/*
 * Build a workload from caller requests (for tests and hand-made scenarios).
 * The array and every hash_ids are copied; ids and arrival times are kept
 * as given (no shift to 0, no rate multiplier).  Each request is checked:
 * finite arrival_s >= 0, token counts and n_hash within the limits above,
 * hash_ids not NULL when n_hash > 0.  The copy is sorted
 * by (arrival_s, id).  source names the workload in messages (may be NULL).
 */
gboolean kvb_workload_from_array(const kvb_wl_request_t *reqs, uint64_t n, const char *source,
				 kvb_workload_t **out, GError **err);

/* Generator parameters; start from kvb_wl_gen_defaults. */
typedef struct kvb_wl_gen_params {
	uint64_t seed;          /* xoshiro256** seeded through splitmix64 */
	uint64_t n_requests;    /* 1 .. KVB_WL_MAX_REQUESTS */
	double rate_per_s;      /* Poisson arrival rate, > 0 */
	double input_mean;      /* mean prompt tokens after clamping, in [1, max_tokens] */
	double input_sigma;     /* lognormal shape (sd of ln length), in [0, 4] */
	double output_mean;     /* mean output tokens after clamping, in [1, max_tokens] */
	double output_sigma;    /* lognormal shape, in [0, 4] */
	uint32_t max_tokens;    /* lengths are clamped to [1, max_tokens] */
	uint32_t block_tokens;  /* tokens per hash block, >= 1 */
	double reuse_prob;      /* chance a request continues an earlier one, in [0, 1] */
	uint32_t window;        /* the parent is one of the last `window` requests, >= 1 */
} kvb_wl_gen_params_t;

/*
 * Defaults: the Mooncake conversation trace (FAST'25 Table 2) fitted in
 * docs/workloads.md: seed 1, 12,031 requests at 3.4 req/s, input mean 12,035
 * sigma 1.05, output mean 343 sigma 0.65, max_tokens 131,072, 512-token
 * blocks, reuse_prob 0.92 over a window of 1,024 (prefix cache ratio ~0.40).
 */
void kvb_wl_gen_defaults(kvb_wl_gen_params_t *p);

/*
 * Generate a workload.  Request i arrives at the sum of i exponential gaps
 * (request 0 at 0).  Lengths are round(exp(mu + sigma Z)) clamped to
 * [1, max_tokens], with mu solved so the *clamped* mean equals the asked
 * mean.  With probability reuse_prob (never for request 0) a request
 * continues a parent drawn uniformly among the previous min(i, window)
 * requests: it copies the parent's hash ids for min(parent full blocks, own
 * full blocks) blocks, then takes fresh ids for the rest of its
 * ceil(input/block_tokens) blocks.  Every request takes the same seven
 * 64-bit draws whatever the parameters, so changing reuse_prob or the rate
 * keeps the other streams (lengths, arrivals) identical.  Same parameters,
 * same workload, bit for bit (given the same libm).  At the default lengths
 * the cache ratio is about 0.433 x reuse_prob: a parent shares at most the
 * child's own full blocks, so ratios above ~0.43 need longer shared
 * prefixes than this model makes (replay a trace instead).
 */
gboolean kvb_workload_generate(const kvb_wl_gen_params_t *p, kvb_workload_t **out, GError **err);

/* Number of requests (0 for NULL). */
uint64_t kvb_workload_count(const kvb_workload_t *w);

/* Request i of the arrival order (sorted by arrival_s, ties by id); NULL
 * when i >= count. */
const kvb_wl_request_t *kvb_workload_get(const kvb_workload_t *w, uint64_t i);

/* The path the workload was loaded from, or a description of how it was
 * made ("generated: seed 1, 12031 requests"). */
const char *kvb_workload_source(const kvb_workload_t *w);

typedef struct kvb_wl_stats {
	uint64_t count;
	double duration_s;          /* last arrival - first arrival */
	double mean_input, mean_output;
	uint32_t p50_input, p99_input;   /* nearest rank: sorted[ceil(q n) - 1] */
	uint32_t p50_output, p99_output;
	uint32_t max_input, max_output;
	uint64_t total_input_tokens, total_output_tokens;
	uint64_t total_blocks;      /* sum of n_hash */
	uint64_t hit_blocks;        /* blocks whose id occurred earlier in arrival order */
	double cache_ratio;         /* hit_blocks / total_blocks (0 when no blocks) */
} kvb_wl_stats_t;

/*
 * Summary statistics.  The prefix cache ratio is that of an unbounded cache
 * that keeps every block ever computed: each distinct id misses once, every
 * later occurrence hits, so hit_blocks = total_blocks - distinct ids (a
 * repeat inside one request also counts as a hit).  A NULL or empty
 * workload gives all zeros.
 */
void kvb_workload_stats(const kvb_workload_t *w, kvb_wl_stats_t *st);

/* Free a workload and every request and hash array it owns; NULL is a no-op. */
void kvb_workload_free(kvb_workload_t *w);

/* ---- prefill time model ------------------------------------------------ */

/* Prefill hardware: one tensor-parallel prefill instance. */
typedef struct kvb_gpu_params {
	double tflops_per_gpu; /* dense bf16 peak, TFLOP/s: 312 (A100/A800), 989 (H100/H800) */
	uint32_t gpus;         /* GPUs working on one prefill (TP degree) */
	double mfu;            /* model FLOPs utilisation, (0, 1] */
	double overhead_s;     /* fixed time per prefill (scheduling, launch, sampling) */
} kvb_gpu_params_t;

/* Defaults: 312 TFLOP/s x 8 GPUs (Mooncake's 8 x A800 node), mfu 0.45,
 * overhead 0.02 s. */
void kvb_gpu_params_defaults(kvb_gpu_params_t *g);

/*
 * FLOPs to prefill new_tokens on top of cached_tokens already in the cache:
 *   2 P n + 2 L h ((c + n)^2 - c^2)
 * with P = active parameters (active_params_b x 1e9), L layers, h hidden,
 * n new, c cached tokens.  The first term is the dense layers: every
 * parameter is one multiply-add (2 FLOPs) per token.  The second is causal
 * attention: the query at position t (1-based) scores t keys (Q K^T: h
 * multiply-adds per key) and mixes t values (A V: h per value), 4 h t FLOPs
 * per layer; summed over t = c+1 .. c+n that is 2 h ((c+n)^2 - c^2 + n),
 * and the + n term (2 L h n, under 0.01% of 2 P n for every preset) is
 * dropped.  h counts query heads (GQA shrinks the KV, not these FLOPs).
 * Softmax, norms and the lm_head saving (only the last position needs
 * logits) are ignored.  Computed as 2 L h n (2c + n) to avoid cancellation.
 * Returns -1 when m is NULL.
 */
double kvb_prefill_flops(const kvb_model_t *m, uint32_t new_tokens, uint32_t cached_tokens);

/*
 * Seconds for one prefill: overhead_s + flops / (tflops_per_gpu 1e12 x gpus
 * x mfu).  g NULL means kvb_gpu_params_defaults.  new_tokens 0 gives
 * overhead_s (vLLM always recomputes at least one token: callers that mimic
 * it pass >= 1).  Returns -1 when m is NULL or g has a non-positive or
 * non-finite tflops_per_gpu, mfu or overhead_s < 0, or gpus 0.
 */
double kvb_prefill_seconds(const kvb_model_t *m, uint32_t new_tokens, uint32_t cached_tokens,
			   const kvb_gpu_params_t *g);

#endif /* KVB_WORKLOAD_H */
