/*
 * libFuzzer target: Mooncake segment descriptor JSON.  Whatever decodes
 * must encode (or be refused by the encoder only for an rdma buffer whose
 * key count is not the device count, which the tolerant decoder lets
 * through), decode again to the same descriptor (less what the encoder
 * leaves out for tcp: devices, keys, matrix; tcp_data_host for rdma; a
 * tcp_proto_version of 0 becomes 1), and encode to the same text (a fixed
 * point).  kvb_mc_segment_find must agree with a brute-force search on
 * ranges the input picks and on every buffer's edges.  Refusals must be
 * KVB_ERR_PROTOCOL with a message and nothing allocated; any difference
 * abort()s.
 */
// FUZZ_SOURCES: src/backends/hw/kvb_mc_wire.c src/core/kvb_error.c
// FUZZ_PKGS: json-glib-1.0
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvb_mc_wire.h"
#include "seg_check.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_valid(const kvb_mc_segment_t *s)
{
	if (s->n_devices > KVB_MC_MAX_DEVICES || s->n_buffers > KVB_MC_MAX_BUFFERS ||
	    s->n_locations > KVB_MC_MAX_LOCATIONS || s->tcp_data_port > 65535 ||
	    s->tcp_proto_version > 255)
		abort();
	for (uint32_t i = 0; i < s->n_devices; i++)
		if (!s->devices[i].name[0] || s->devices[i].lid > 65535)
			abort();
	for (uint32_t i = 0; i < s->n_buffers; i++) {
		const kvb_mc_buffer_t *b = &s->buffers[i];
		if (!b->name[0] || !b->addr || !b->length || b->addr + b->length < b->addr ||
		    (b->n_keys && b->n_keys != s->n_devices))
			abort();
	}
	for (uint32_t i = 0; i < s->n_locations; i++) {
		const kvb_mc_location_t *l = &s->locations[i];
		if (l->n_preferred > KVB_MC_MAX_DEVICES || l->n_available > KVB_MC_MAX_DEVICES)
			abort();
		for (uint32_t k = 0; k < l->n_preferred; k++)
			if (l->preferred[k] >= s->n_devices)
				abort();
		for (uint32_t k = 0; k < l->n_available; k++)
			if (l->available[k] >= s->n_devices)
				abort();
	}
}

static void check_find(const kvb_mc_segment_t *s, uint64_t addr, uint64_t len)
{
	const kvb_mc_buffer_t *r = kvb_mc_segment_find(s, addr, len);
	const kvb_mc_buffer_t *want = NULL;
	if (len && addr + len >= addr)
		for (uint32_t i = 0; i < s->n_buffers && !want; i++)
			if (addr >= s->buffers[i].addr &&
			    addr + len <= s->buffers[i].addr + s->buffers[i].length)
				want = &s->buffers[i];
	if (r != want)
		abort();
}

static uint64_t take64(const uint8_t *p, size_t n)
{
	uint64_t v = 0;
	for (size_t i = 0; i < n && i < 8; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* an exact-size heap copy so ASan sees any read past the end */
	char *buf = malloc(size ? size : 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	kvb_mc_segment_t a, b;
	kvb_err_t err;
	kvb_err_clear(&err);
	memset(&a, 0xa5, sizeof(a));
	if (kvb_mc_segment_from_json(buf, size, &a, &err) != KVB_OK) {
		if (err.code != KVB_ERR_PROTOCOL || !err.msg[0] || !seg_empty(&a))
			abort();
		free(buf);
		return 0;
	}
	check_valid(&a);

	GString *j1 = g_string_new(NULL), *j2 = g_string_new(NULL);
	kvb_err_clear(&err);
	if (kvb_mc_segment_to_json(&a, j1, &err) != KVB_OK) {
		/* only a keyless (or short-keyed) rdma buffer next to devices */
		bool short_keys = false;
		for (uint32_t i = 0; i < a.n_buffers; i++)
			short_keys |= a.buffers[i].n_keys != a.n_devices;
		if (err.code != KVB_ERR_INVALID || !err.msg[0] || j1->len ||
		    !strcmp(a.protocol, "tcp") || !short_keys)
			abort();
	} else {
		kvb_err_clear(&err);
		if (kvb_mc_segment_from_json(j1->str, j1->len, &b, &err) != KVB_OK)
			abort();
		check_seg_same(&a, &b);
		if (kvb_mc_segment_to_json(&b, j2, NULL) != KVB_OK || strcmp(j1->str, j2->str))
			abort();
		kvb_mc_segment_clear(&b);
	}

	/* find(): ranges from the input, then every buffer's edges */
	check_find(&a, take64(data, size), size > 8 ? take64(data + 8, size - 8) : size);
	check_find(&a, take64(data, size), size & 0xff);
	for (uint32_t i = 0; i < a.n_buffers && i < 64; i++) {
		const kvb_mc_buffer_t *x = &a.buffers[i];
		if (!kvb_mc_segment_find(&a, x->addr, x->length) ||
		    !kvb_mc_segment_find(&a, x->addr + x->length - 1, 1))
			abort();
		check_find(&a, x->addr, x->length + 1);
		check_find(&a, x->addr - 1, 1);
		check_find(&a, x->addr + x->length, 1);
		check_find(&a, x->addr, 0);
	}
	kvb_mc_segment_clear(&a);
	if (!seg_empty(&a))
		abort();
	kvb_mc_segment_clear(&a);
	g_string_free(j1, TRUE);
	g_string_free(j2, TRUE);
	free(buf);
	return 0;
}
