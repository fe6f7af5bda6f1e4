/*
 * libFuzzer target: Gen 1/2 MooncakeXferMetadata and MooncakeXferResponse
 * decoding.  The first byte picks the profile the metadata is decoded as
 * (any, or one release range), the rest is the payload.  Whatever decodes
 * must encode as the matching release (ANY: 0.32, which carries every
 * field) and decode again to the same meta, and that encoding must be a
 * fixed point; a refusal must be KVB_ERR_PROTOCOL with a message and
 * nothing allocated.  The payload also goes through the response decoder
 * (same round trip) and the ROUTER classifier, which must agree with the
 * decoders: what decodes as metadata is classified as such.  Any
 * difference abort()s.
 */
// FUZZ_SOURCES: src/backends/hw/kvb_vllm_xfer_wire.c src/backends/hw/kvb_vllm_xfer_decode.c src/core/kvb_error.c
// FUZZ_PKGS: msgpack
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvb_vllm_xfer_wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same_meta(const kvb_vllm_xfer_meta_t *a, const kvb_vllm_xfer_meta_t *b, bool form_free)
{
	if (strcmp(a->remote_hostname, b->remote_hostname) || a->remote_port != b->remote_port ||
	    a->remote_tp_size != b->remote_tp_size || a->remote_tp_rank != b->remote_tp_rank ||
	    a->remote_pp_size != b->remote_pp_size || a->n_reqs != b->n_reqs ||
	    a->n_regions != b->n_regions || a->region_fields != b->region_fields ||
	    a->n_block_ids != b->n_block_ids || (!form_free && a->form != b->form))
		abort();
	for (uint32_t i = 0; i < a->n_reqs; i++) {
		const kvb_vllm_xfer_req_t *ra = &a->reqs[i], *rb = &b->reqs[i];
		if (strcmp(ra->req_id, rb->req_id) || strcmp(ra->transfer_id, rb->transfer_id))
			abort();
		/* FLAT [ids] reads back GROUPED as [[ids]] */
		if (ra->n_lists != rb->n_lists && !(form_free && ra->n_lists == 1 && rb->n_lists == 1))
			abort();
		for (uint32_t g = 0; g < ra->n_lists; g++) {
			uint32_t na, nb;
			const uint32_t *la = kvb_vllm_xfer_meta_blocks(a, i, g, &na);
			const uint32_t *lb = kvb_vllm_xfer_meta_blocks(b, i, g, &nb);
			if (na != nb || (na && memcmp(la, lb, na * sizeof(uint32_t))))
				abort();
		}
	}
	for (uint32_t i = 0; i < a->n_regions; i++) {
		kvb_vllm_xfer_region_t x, y;
		if (kvb_vllm_xfer_meta_get_region(a, i, &x) || kvb_vllm_xfer_meta_get_region(b, i, &y))
			abort();
		if (x.base_addr != y.base_addr || x.block_len != y.block_len ||
		    x.kv_block_len != y.kv_block_len || x.layer_index != y.layer_index ||
		    x.group_index != y.group_index || x.row_offset != y.row_offset ||
		    x.n_shared_group_ids != y.n_shared_group_ids ||
		    (x.layer_name && strcmp(x.layer_name, y.layer_name)) ||
		    (x.n_shared_group_ids &&
		     memcmp(x.shared_group_ids, y.shared_group_ids, x.n_shared_group_ids * 4)))
			abort();
	}
}

static void empty_meta(const kvb_vllm_xfer_meta_t *m)
{
	if (m->reqs || m->lists || m->block_ids || m->kv_caches_base_addr || m->block_lens ||
	    m->kv_block_lens || m->layer_names || m->layer_indices || m->group_indices ||
	    m->shared_lists || m->shared_ids || m->row_offsets)
		abort();
}

static void meta_case(kvb_vllm_xfer_profile_t p, const uint8_t *data, size_t size)
{
	kvb_vllm_xfer_meta_t m, m2;
	kvb_err_t err;
	if (kvb_vllm_xfer_meta_decode(p, data, size, &m, &err) != KVB_OK) {
		if (err.code != KVB_ERR_PROTOCOL || !err.msg[0])
			abort();
		empty_meta(&m);
		return;
	}
	if (kvb_vllm_payload_classify(data, size) != KVB_VLLM_PAYLOAD_XFER_META &&
	    kvb_vllm_payload_classify(data, size) != KVB_VLLM_PAYLOAD_OTHER)
		abort(); /* request_ids next to req_blocks is OTHER, never Gen 0 */
	kvb_vllm_xfer_profile_t ep = p == KVB_VLLM_XFER_ANY ? KVB_VLLM_XFER_V032 : p;
	GByteArray *b1 = g_byte_array_new(), *b2 = g_byte_array_new();
	int rc = kvb_vllm_xfer_meta_encode(ep, b1, &m, &err);
	/* ANY may hold fields 0.32 writes only per group: a flat meta goes as [[ids]] */
	if (rc != KVB_OK)
		abort();
	if (kvb_vllm_xfer_meta_decode(ep, b1->data, b1->len, &m2, &err) != KVB_OK)
		abort();
	same_meta(&m, &m2, p == KVB_VLLM_XFER_ANY);
	if (kvb_vllm_xfer_meta_encode(ep, b2, &m2, &err) != KVB_OK || b1->len != b2->len ||
	    memcmp(b1->data, b2->data, b1->len))
		abort();
	if (kvb_vllm_payload_classify(b1->data, b1->len) != KVB_VLLM_PAYLOAD_XFER_META)
		abort();
	kvb_vllm_xfer_meta_clear(&m);
	kvb_vllm_xfer_meta_clear(&m2);
	g_byte_array_unref(b1);
	g_byte_array_unref(b2);
}

static void resp_case(const uint8_t *data, size_t size)
{
	kvb_vllm_xfer_resp_t r, r2;
	kvb_err_t err;
	if (kvb_vllm_xfer_resp_decode(data, size, &r, &err) != KVB_OK) {
		if (err.code != KVB_ERR_PROTOCOL || !err.msg[0] || r.ok_reqs || r.err_reqs || r.err_msg)
			abort();
		return;
	}
	GByteArray *b1 = g_byte_array_new(), *b2 = g_byte_array_new();
	if (kvb_vllm_xfer_resp_encode(b1, &r, &err) != KVB_OK ||
	    kvb_vllm_xfer_resp_decode(b1->data, b1->len, &r2, &err) != KVB_OK)
		abort();
	if (r.status != r2.status || r.has_ok_reqs != r2.has_ok_reqs ||
	    r.has_err_reqs != r2.has_err_reqs || r.n_ok_reqs != r2.n_ok_reqs ||
	    r.n_err_reqs != r2.n_err_reqs || (r.err_msg == NULL) != (r2.err_msg == NULL) ||
	    (r.err_msg && strcmp(r.err_msg, r2.err_msg)))
		abort();
	for (uint32_t i = 0; i < r.n_ok_reqs; i++)
		if (strcmp(r.ok_reqs[i], r2.ok_reqs[i]))
			abort();
	for (uint32_t i = 0; i < r.n_err_reqs; i++)
		if (strcmp(r.err_reqs[i], r2.err_reqs[i]))
			abort();
	if (kvb_vllm_xfer_resp_encode(b2, &r2, &err) != KVB_OK || b1->len != b2->len ||
	    memcmp(b1->data, b2->data, b1->len))
		abort();
	kvb_vllm_xfer_resp_clear(&r);
	kvb_vllm_xfer_resp_clear(&r2);
	g_byte_array_unref(b1);
	g_byte_array_unref(b2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	kvb_vllm_xfer_profile_t p = (kvb_vllm_xfer_profile_t)(data[0] % (KVB_VLLM_XFER_PROFILE_LAST + 1));
	meta_case(p, data + 1, size - 1);
	resp_case(data + 1, size - 1);
	(void)kvb_vllm_payload_classify(data + 1, size - 1);
	return 0;
}
