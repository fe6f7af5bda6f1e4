/*
 * Segment descriptor checks shared by the fuzz targets that decode
 * descriptors (fuzz_mc_descriptor, fuzz_mc_frame): abort() on any difference.
 */
#ifndef KVB_FUZZ_SEG_CHECK_H
#define KVB_FUZZ_SEG_CHECK_H

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kvb_mc_wire.h"

static inline bool seg_empty(const kvb_mc_segment_t *s)
{
	return !s->devices && !s->buffers && !s->locations && !s->n_devices && !s->n_buffers &&
	       !s->n_locations;
}

/* b is a after to_json and from_json: the same, less what a tcp (or rdma)
 * descriptor does not carry. */
static inline void check_seg_same(const kvb_mc_segment_t *a, const kvb_mc_segment_t *b)
{
	bool tcp = !strcmp(a->protocol, "tcp");
	if (strcmp(a->name, b->name) || strcmp(a->protocol, b->protocol) ||
	    a->tcp_data_port != b->tcp_data_port || strcmp(a->timestamp, b->timestamp) ||
	    strcmp(a->rdma_server_name, b->rdma_server_name) ||
	    b->tcp_proto_version != (a->tcp_proto_version ? a->tcp_proto_version : 1) ||
	    strcmp(b->tcp_data_host, tcp ? a->tcp_data_host : "") || a->n_buffers != b->n_buffers)
		abort();
	for (uint32_t i = 0; i < a->n_buffers; i++) {
		const kvb_mc_buffer_t *x = &a->buffers[i], *y = &b->buffers[i];
		if (strcmp(x->name, y->name) || x->addr != y->addr || x->length != y->length ||
		    y->n_keys != (tcp ? 0 : x->n_keys))
			abort();
		if (!tcp && x->n_keys &&
		    (memcmp(x->rkey, y->rkey, x->n_keys * sizeof(uint32_t)) ||
		     memcmp(x->lkey, y->lkey, x->n_keys * sizeof(uint32_t))))
			abort();
		/* kvbridge's mirror keys travel with the rdma keys, never alone */
		bool mirrored = !tcp && x->mirror_rkey;
		if ((y->mirror_rkey != NULL) != mirrored ||
		    (mirrored && memcmp(x->mirror_rkey, y->mirror_rkey, x->n_keys * sizeof(uint32_t))))
			abort();
	}
	if (b->n_devices != (tcp ? 0 : a->n_devices) || b->n_locations != (tcp ? 0 : a->n_locations))
		abort();
	if (a->n_tcp_sources != b->n_tcp_sources)
		abort();
	for (uint32_t i = 0; i < a->n_tcp_sources; i++)
		if (strcmp(a->tcp_sources[i], b->tcp_sources[i]))
			abort();
	for (uint32_t i = 0; i < b->n_devices; i++)
		if (strcmp(a->devices[i].name, b->devices[i].name) ||
		    a->devices[i].lid != b->devices[i].lid ||
		    memcmp(a->devices[i].gid, b->devices[i].gid, 16))
			abort();
	for (uint32_t i = 0; i < b->n_locations; i++) {
		const kvb_mc_location_t *x = &a->locations[i], *y = &b->locations[i];
		if (strcmp(x->name, y->name) || x->n_preferred != y->n_preferred ||
		    x->n_available != y->n_available ||
		    memcmp(x->preferred, y->preferred, x->n_preferred * sizeof(uint32_t)) ||
		    memcmp(x->available, y->available, x->n_available * sizeof(uint32_t)))
			abort();
	}
}

#endif /* KVB_FUZZ_SEG_CHECK_H */
