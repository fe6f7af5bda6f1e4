/*
 * libFuzzer target: Gen 0 MooncakeAgentMetadata decoding.  Whatever decodes
 * must encode, decode again to the same meta, and encode to the same bytes
 * (encode(decode(x)) is a fixed point), and building the meta by hand with
 * kvb_vllm_meta_init/add_request gives the same bytes; any difference
 * abort()s.  Refusals must be KVB_ERR_PROTOCOL with a message and nothing
 * allocated.  The same bytes also go through the reply decoder.
 */
// FUZZ_SOURCES: src/backends/hw/kvb_vllm_wire.c src/core/kvb_error.c
// FUZZ_PKGS: msgpack
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvb_vllm_wire.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_same(const kvb_vllm_meta_t *a, const kvb_vllm_meta_t *b)
{
	if (strcmp(a->remote_hostname, b->remote_hostname) || a->remote_port != b->remote_port ||
	    a->n_requests != b->n_requests || a->n_bases != b->n_bases ||
	    a->n_block_ids != b->n_block_ids)
		abort();
	if (a->n_bases && memcmp(a->kv_caches_base_addr, b->kv_caches_base_addr,
				 a->n_bases * sizeof(uint64_t)))
		abort();
	if (a->n_block_ids && memcmp(a->block_ids, b->block_ids, a->n_block_ids * sizeof(uint32_t)))
		abort();
	uint64_t at = 0;
	for (uint32_t r = 0; r < a->n_requests; r++) {
		if (strcmp(a->request_ids[r], b->request_ids[r]) ||
		    a->block_counts[r] != b->block_counts[r] ||
		    a->block_offsets[r] != b->block_offsets[r] || a->block_offsets[r] != at)
			abort();
		at += a->block_counts[r];
	}
	if (at != a->n_block_ids)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	kvb_vllm_reply_t reply;
	kvb_vllm_reply_decode(KVB_VLLM_GEN0, data, size, &reply, NULL);

	kvb_vllm_meta_t m, m2;
	kvb_err_t err;
	if (kvb_vllm_meta_decode(KVB_VLLM_GEN0, data, size, &m, &err) != KVB_OK) {
		if (err.code != KVB_ERR_PROTOCOL || m.request_ids || m.block_ids ||
		    m.kv_caches_base_addr || !err.msg[0])
			abort();
		return 0;
	}
	GByteArray *b1 = g_byte_array_new(), *b2 = g_byte_array_new();
	if (kvb_vllm_meta_encode(KVB_VLLM_GEN0, b1, &m, &err) != KVB_OK)
		abort();
	if (kvb_vllm_meta_decode(KVB_VLLM_GEN0, b1->data, b1->len, &m2, &err) != KVB_OK)
		abort();
	check_same(&m, &m2);
	if (kvb_vllm_meta_encode(KVB_VLLM_GEN0, b2, &m2, &err) != KVB_OK || b1->len != b2->len ||
	    memcmp(b1->data, b2->data, b1->len))
		abort();
	/* the builder makes the same message */
	kvb_vllm_meta_t m3;
	if (kvb_vllm_meta_init(&m3, m.remote_hostname, m.remote_port, m.kv_caches_base_addr, m.n_bases,
			       &err) != KVB_OK)
		abort();
	for (uint32_t r = 0; r < m.n_requests; r++)
		if (kvb_vllm_meta_add_request(&m3, m.request_ids[r], m.block_ids + m.block_offsets[r],
					      m.block_counts[r], &err) != KVB_OK)
			abort();
	check_same(&m, &m3);
	g_byte_array_set_size(b2, 0);
	if (kvb_vllm_meta_encode(KVB_VLLM_GEN0, b2, &m3, &err) != KVB_OK || b1->len != b2->len ||
	    memcmp(b1->data, b2->data, b1->len))
		abort();
	kvb_vllm_meta_clear(&m3);
	kvb_vllm_meta_clear(&m);
	kvb_vllm_meta_clear(&m2);
	g_byte_array_unref(b1);
	g_byte_array_unref(b2);
	return 0;
}
