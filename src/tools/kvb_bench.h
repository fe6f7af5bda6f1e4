/*
 * kvbridge-bench's parts (kvbridge_bench.c: one-sided transfers and the
 * socket ceiling; kvb_bench_vllm2.c: whole vLLM Gen 2 transfers through the
 * connector core).
 */
#ifndef KVB_BENCH_H
#define KVB_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One measurement at one block size. */
typedef struct kvb_bench_result {
	double gbps;             /* 10^9 bytes/s */
	double p50_us, p99_us;   /* request latency */
	uint64_t ops;            /* requests completed */
	uint64_t checked;        /* bytes verified after the run */
	int rc;                  /* 0, or 1 when the run failed (reason printed) */
} kvb_bench_result_t;

/* A Gen 2 point: a producer (on its own thread, serving vLLM's bootstrap)
 * and a consumer (the calling thread) on 127.0.0.1; each request is one
 * block of `block` bytes, pulled as a vLLM 0.32 decoder pulls a KV cache. */
typedef struct kvb_bench_gen2 {
	uint64_t block;
	uint32_t batch;          /* requests in flight */
	uint64_t duration_ns;    /* or count > 0: exactly count requests */
	uint64_t count;
	uint32_t lanes;          /* TCP connections per peer, 0 = the default */
	bool quiet;
} kvb_bench_gen2_t;

int kvb_bench_gen2_point(const kvb_bench_gen2_t *b, kvb_bench_result_t *out);

#endif /* KVB_BENCH_H */
