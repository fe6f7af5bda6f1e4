/*
 * vLLM's MooncakeConnector side channel, Gen 1/2 (vLLM 0.16.0 - 0.32.0;
 * kvb_hw_vllm_gen2.h), as a protocol adapter: the connector core sees
 * ordinary kvbridge peers and pulls.
 *
 * Producer side.  A ZMQ ROUTER on a random port of params.host, registered
 * at the bootstrap (our own, or params.vllm_bootstrap_server) once the
 * layout is set.  Each message from a decoder's DEALER ([identity,
 * payload]) is decoded as any release 0.16 - 0.32 writes it and checked
 * against our layout the way vLLM's P checks it (TP pairing, regions paired
 * by layer name and occurrence, per-block lengths); what fails gets one
 * ERROR reply with the reason, as vLLM answers.  Then the decoder's Mooncake
 * segment descriptor is fetched (handshake type 1 to remote_hostname:
 * remote_port), an incoming connection is announced to the core and handed
 * one kvbridge PULL per request (transfer_id keyed; the decoder's regions in
 * our region order).  The core serves them as any other pull (lease, the
 * wait for a prefill that is not ready yet, fencing, NIC policy).  Every
 * DONE it sends becomes part of the next MooncakeXferResponse: CONTINUE
 * while requests are pending, FINISH with the last; ok_reqs for the
 * requests whose bytes landed, err_reqs and err_msg for the others ("Timeout
 * waiting for P side ready." when the prefill never came, vLLM's words).
 *
 * A decoder's descriptor and the data connections a finished message used
 * are kept (v2decoder_t): the next message from the same decoder reuses
 * both while the connections are still up (a decoder that restarted closes
 * them, and is asked for its descriptor again), so a request costs its
 * messages and its bytes, not a handshake and TCP connections each time.
 *
 * A peer of the other generation is answered in its own framing: a Gen 0
 * decoder (MooncakeAgentMetadata, REQ or DEALER) gets the raw "trans_error".
 *
 * Consumer side ("vllm2://host:port": a producer worker's ROUTER, from the
 * bootstrap's /query).  Each kvbridge PULL the core sends becomes a
 * MooncakeXferMetadata (in the encoding of params.vllm_release) on a fresh
 * DEALER, naming this endpoint's Mooncake segment (params.host:rpc_port),
 * where the producer writes.  The replies end it: the request in ok_reqs
 * -> DONE; in err_reqs, an ERROR reply, the connection lost, no connection
 * within the connect timeout, or no final reply within the abort timeout
 * + 60 s -> DONE with the reason.  Gen 1/2 has no cancel: a cancelled pull
 * ends at once and fences its blocks, as Gen 0's.
 *
 * Bootstrap queries (kvb_hw_vllm_query) are cached per engine; unlike
 * vLLM, an entry is dropped when a pull through one of its workers cannot
 * connect or loses its connection, so a producer that restarted is found
 * again on its new ports.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <zmq.h>
#include <kvbridge/kvbridge.h>

#include "control/kvb_hw_peer.h"
#include "control/kvb_hw_vllm_bootstrap.h"
#include "control/kvb_hw_vllm_gen2.h"
#include "control/kvb_hw_vllm_gen2_int.h"
#include "events/kvb_hw_net.h"
#include "events/kvb_hw_zmq.h"
#include "transport/kvb_hw_link.h"
#include "transport/kvb_hw_mem.h"
#include "transport/kvb_hw_tcp.h"
#include "transport/kvb_hw_transport.h"
#include "kvb_vllm_bootstrap_wire.h"
#include "kvb_vllm_xfer_wire.h"
#include "kvb_wire.h"


static const hw_peer_ops_t session_ops;

/* ------------------------------------------------------------------------ */
/* producer side                                                            */

typedef struct v2sess {
	struct hw_vllm2 *v;
	GBytes *identity;
	char peer_ip[64];           /* where the message came from, as ZMQ saw it */
	kvb_vllm_xfer_meta_t meta;
	uint32_t *pair;             /* our region i -> the decoder's region pair[i] */
	hw_call_t *call;
	hw_peer_t *peer;
	uint32_t pending;           /* requests not answered */
	GHashTable *open;           /* D request ids not answered yet */
	GPtrArray *ok, *err;        /* D request ids answered since the last reply */
	GString *err_msg;
	hw_deadline_t *flush;
	bool finished;
	hw_link_t *reuse;           /* idle lanes to the decoder, taken from its v2decoder_t */
} v2sess_t;

/* What we keep of a decoder ("host:port" of its transfer engine) between
 * messages: its segment descriptor, and links holding idle data
 * connections (hw_lanes_move), at most DECODER_LINKS, for DECODER_IDLE_NS. */
#define DECODER_LINKS 16u
#define DECODER_IDLE_NS (30 * G_GUINT64_CONSTANT(1000000000))

typedef struct v2decoder {
	struct hw_vllm2 *v;
	char key[KVB_VLLM_HOST_MAX + 8];
	GBytes *desc;               /* the descriptor JSON it answered */
	GQueue links;               /* hw_link_t*: lanes only */
	hw_deadline_t *idle;
} v2decoder_t;

static void holder_free(hw_link_t *l)
{
	hw_lanes_free(l);
	g_free(l);
}

static void decoder_free(gpointer data)
{
	v2decoder_t *d = data;
	hw_link_t *l;
	while ((l = g_queue_pop_head(&d->links)))
		holder_free(l);
	if (d->desc)
		g_bytes_unref(d->desc);
	hw_deadline_free(d->idle);
	g_free(d);
}

static void decoder_expired(void *obj)
{
	v2decoder_t *d = obj;
	g_hash_table_remove(d->v->decoders, d->key); /* frees d */
}

static v2decoder_t *decoder_get(struct hw_vllm2 *v, const char *host, uint16_t port, bool create)
{
	char key[KVB_VLLM_HOST_MAX + 8];
	g_snprintf(key, sizeof(key), "%s:%u", host, port);
	v2decoder_t *d = g_hash_table_lookup(v->decoders, key);
	if (!d && create) {
		d = g_new0(v2decoder_t, 1);
		d->v = v;
		g_strlcpy(d->key, key, sizeof(d->key));
		g_queue_init(&d->links);
		d->idle = hw_deadline_new(v->hw, decoder_expired, d);
		g_hash_table_insert(v->decoders, d->key, d);
	}
	if (d)
		hw_deadline_arm(d->idle, DECODER_IDLE_NS);
	return d;
}

/* A link of d whose lanes are still up and idle (the others are closed), or
 * NULL; then d's descriptor may be stale too and is dropped. */
static hw_link_t *decoder_take_link(v2decoder_t *d)
{
	hw_link_t *l;
	while ((l = g_queue_pop_head(&d->links))) {
		if (hw_lanes_idle(l))
			return l;
		holder_free(l);
	}
	if (d->desc) {
		g_bytes_unref(d->desc);
		d->desc = NULL;
	}
	return NULL;
}

/* A session ended cleanly: keep its idle lanes for the next message. */
static void decoder_park(struct hw_vllm2 *v, v2sess_t *s, hw_link_t *from)
{
	v2decoder_t *d = decoder_get(v, s->meta.remote_hostname, s->meta.remote_port, false);
	if (!d || !d->desc || d->links.length >= DECODER_LINKS || !hw_lanes_idle(from))
		return;
	hw_link_t *l = g_new0(hw_link_t, 1);
	l->hw = v->hw;
	g_strlcpy(l->name, from->name, sizeof(l->name));
	g_strlcpy(l->data_host, from->data_host, sizeof(l->data_host));
	l->data_port = from->data_port;
	l->data_v2 = from->data_v2;
	hw_lanes_move(from, l);
	g_queue_push_tail(&d->links, l);
}

static void router_drain(struct hw_vllm2 *v);

static void router_kick_fn(void *obj)
{
	router_drain(obj);
}

/* [identity, payload]: how a vLLM P answers a DEALER. */
static void router_send(struct hw_vllm2 *v, GBytes *identity, const void *payload, size_t len,
			bool req_envelope)
{
	size_t idlen;
	const void *id = g_bytes_get_data(identity, &idlen);
	/* a vanished decoder makes these fail (ROUTER_MANDATORY): nothing to do */
	if (zmq_send(v->router, id, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0) {
		if (req_envelope)
			zmq_send(v->router, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT);
		zmq_send(v->router, payload, len, ZMQ_DONTWAIT);
	}
	hw_deadline_arm(v->kick, 0);
}

static void router_reply(struct hw_vllm2 *v, GBytes *identity, const kvb_vllm_xfer_resp_t *resp)
{
	GByteArray *out = g_byte_array_new();
	kvb_err_t err;
	if (kvb_vllm_xfer_resp_encode(out, resp, &err) == KVB_OK) {
		router_send(v, identity, out->data, out->len, false);
		v->hw->stats.vllm_replies++;
	} else {
		hw_set_error(v->hw, "vLLM reply not encodable: %s", err.msg);
	}
	if (resp->status == KVB_VLLM_XFER_ERROR || resp->n_err_reqs)
		v->hw->stats.vllm_errors++;
	g_byte_array_unref(out);
}

/* The whole message refused: one ERROR reply naming no request, as a vLLM
 * P answers decode and validation errors. */
static void router_error(struct hw_vllm2 *v, GBytes *identity, const char *peer_ip, const char *from,
			 const char *why)
{
	hw_warn_from(v->hw, peer_ip, "vLLM request %s (%s) answered ERROR: %s", from,
		     *peer_ip ? peer_ip : "address unknown", why);
	hw_set_error(v->hw, "vLLM request %s: %s", from, why);
	kvb_vllm_xfer_resp_t resp;
	kvb_vllm_xfer_resp_init(&resp, KVB_VLLM_XFER_ERROR);
	char msg[KVB_ERR_MSG_MAX + 64];
	g_strlcpy(msg, why, sizeof(msg));
	kvb_vllm_xfer_resp_set_err_msg(&resp, g_utf8_validate(msg, -1, NULL) ? msg : "invalid request",
				       NULL);
	router_reply(v, identity, &resp);
	kvb_vllm_xfer_resp_clear(&resp);
}

static void sess_free(v2sess_t *s)
{
	g_queue_remove(&s->v->sessions, s);
	if (s->reuse)
		holder_free(s->reuse);
	hw_call_cancel(s->call);
	hw_deadline_free(s->flush);
	if (s->peer)
		s->peer->proto = NULL;
	g_bytes_unref(s->identity);
	kvb_vllm_xfer_meta_clear(&s->meta);
	g_free(s->pair);
	g_hash_table_destroy(s->open);
	g_ptr_array_unref(s->ok);
	g_ptr_array_unref(s->err);
	g_string_free(s->err_msg, TRUE);
	g_free(s);
}

/* Every request answered (or the session failed as a whole): end it. */
static void sess_end(v2sess_t *s)
{
	s->finished = true;
	hw_peer_t *p = s->peer;
	if (p && !s->err->len && !s->err_msg->len)
		decoder_park(s->v, s, &p->link);
	if (p && (p->conn || p->incoming_id)) {
		/* the core closes the conn, then session_closed frees the session */
		hw_peer_down(p, KVB_OK, "vLLM session finished");
		return;
	}
	if (p) {
		p->proto = NULL;
		s->peer = NULL;
		hw_peer_free(p);
	}
	sess_free(s);
}

static void sess_fail(v2sess_t *s, const char *why)
{
	char from[KVB_VLLM_HOST_MAX + 32];
	g_snprintf(from, sizeof(from), "from %s:%u", s->meta.remote_hostname, s->meta.remote_port);
	router_error(s->v, s->identity, s->peer_ip, from, why);
	sess_end(s);
}

/* One MooncakeXferResponse with what was answered since the last. */
static void sess_reply(v2sess_t *s)
{
	kvb_vllm_xfer_resp_t resp;
	kvb_vllm_xfer_resp_init(&resp, s->pending ? KVB_VLLM_XFER_CONTINUE : KVB_VLLM_XFER_FINISH);
	for (guint i = 0; i < s->ok->len; i++)
		kvb_vllm_xfer_resp_add_ok(&resp, s->ok->pdata[i], NULL);
	for (guint i = 0; i < s->err->len; i++)
		kvb_vllm_xfer_resp_add_err(&resp, s->err->pdata[i], NULL);
	if (s->err->len)
		kvb_vllm_xfer_resp_set_err_msg(&resp, s->err_msg->str, NULL);
	router_reply(s->v, s->identity, &resp);
	kvb_vllm_xfer_resp_clear(&resp);
	g_ptr_array_set_size(s->ok, 0);
	g_ptr_array_set_size(s->err, 0);
	g_string_truncate(s->err_msg, 0);
}

static void sess_flush(void *obj)
{
	v2sess_t *s = obj;
	if (s->finished || (!s->ok->len && !s->err->len))
		return;
	sess_reply(s);
	if (!s->pending)
		sess_end(s);
}

/* Pair our regions with the decoder's the way vLLM's P does: by (layer
 * name, occurrence) when it sent names, else by position.  Layer and group
 * indices must agree where sent.  A decoder region of a layer we do not
 * hold is another pipeline stage's when the PP sizes differ, an error
 * otherwise. */
static bool sess_pair(v2sess_t *s, char *why, size_t why_len)
{
	struct hw_vllm2 *v = s->v;
	const kvb_vllm_xfer_meta_t *m = &s->meta;
	s->pair = g_new0(uint32_t, v->n_regions);
	bool named = m->region_fields & KVB_VLLM_XF_BIT(KVB_VLLM_XF_LAYER_NAMES);
	if (!named) {
		if (m->n_regions != v->n_regions) {
			g_snprintf(why, why_len,
				   "decoder sent %u regions without layer names, this producer has %u "
				   "(regions are paired by position before vLLM 0.24)", m->n_regions,
				   v->n_regions);
			return false;
		}
		for (uint32_t i = 0; i < v->n_regions; i++)
			s->pair[i] = i;
	} else {
		bool *used = g_new0(bool, m->n_regions ? m->n_regions : 1);
		for (uint32_t i = 0; i < v->n_regions; i++) {
			uint32_t occ = 0;
			bool found = false;
			for (uint32_t j = 0; j < m->n_regions && !found; j++) {
				if (strcmp(m->layer_names[j], v->regions[i].name))
					continue;
				if (occ++ == v->regions[i].occurrence) {
					s->pair[i] = j;
					used[j] = true;
					found = true;
				}
			}
			if (!found) {
				g_snprintf(why, why_len,
					   "Mooncake producer registered layer has no matching consumer "
					   "occurrence: %s occurrence %u.", v->regions[i].name,
					   v->regions[i].occurrence);
				g_free(used);
				return false;
			}
		}
		uint32_t unused = 0;
		for (uint32_t j = 0; j < m->n_regions; j++)
			unused += !used[j];
		g_free(used);
		if (unused && m->remote_pp_size == v->pp_size && v->pp_size == 1) {
			g_snprintf(why, why_len,
				   "decoder has %u regions, this producer %u: %u of the decoder's have no "
				   "producer region (same pipeline size, so the layouts differ)",
				   m->n_regions, v->n_regions, unused);
			return false;
		}
	}
	for (uint32_t i = 0; i < v->n_regions; i++) {
		uint32_t j = s->pair[i];
		const kvb_region_t *r = &v->regions[i].r;
		if ((m->region_fields & KVB_VLLM_XF_BIT(KVB_VLLM_XF_LAYER_INDICES)) &&
		    m->layer_indices[j] != (uint32_t)r->layer) {
			g_snprintf(why, why_len, "region %s: decoder's layer index %u, producer's %d",
				   v->regions[i].name, m->layer_indices[j], r->layer);
			return false;
		}
		if ((m->region_fields & KVB_VLLM_XF_BIT(KVB_VLLM_XF_GROUP_INDICES)) &&
		    m->group_indices[j] >= 0 && m->group_indices[j] != r->group) {
			g_snprintf(why, why_len, "region %s: decoder's KV group %d, producer's %d",
				   v->regions[i].name, m->group_indices[j], r->group);
			return false;
		}
	}
	return true;
}

/* The decoder's per-block lengths against ours under the TP byte plan. */
static bool sess_check_lengths(v2sess_t *s, char *why, size_t why_len)
{
	struct hw_vllm2 *v = s->v;
	const kvb_vllm_xfer_meta_t *m = &s->meta;
	for (uint32_t i = 0; i < v->n_regions; i++) {
		uint32_t j = s->pair[i];
		const kvb_region_t *r = &v->regions[i].r;
		uint64_t d_bytes = r->block_bytes;
		if (m->region_fields & KVB_VLLM_XF_BIT(KVB_VLLM_XF_KV_BLOCK_LENS))
			d_bytes = m->kv_block_lens[j];
		else if (m->region_fields & KVB_VLLM_XF_BIT(KVB_VLLM_XF_BLOCK_LENS))
			d_bytes = m->block_lens[j];
		kvb_tp_side_t p = {v->tp_size, v->tp_rank, r->block_bytes};
		kvb_tp_side_t d = {m->remote_tp_size, m->remote_tp_rank, d_bytes};
		kvb_tp_plan_t plan;
		kvb_err_t err;
		if (kvb_tp_plan(&p, &d, 0, &plan, &err) != KVB_OK) {
			g_snprintf(why, why_len, "region %s: %s", v->regions[i].name, err.msg);
			return false;
		}
	}
	return true;
}

/* Blocks the decoder's registered memory holds from a base: to the end of
 * its buffer, or to the next region that starts past this one's first block
 * (vLLM's layers are views of one storage, each a run of blocks). */
static uint32_t decoder_room(const kvb_mc_segment_t *seg, const kvb_vllm_xfer_meta_t *m, uint64_t base,
			     uint64_t stride)
{
	const kvb_mc_buffer_t *b = kvb_mc_segment_find(seg, base, 1);
	if (!b || !stride)
		return 0;
	uint64_t end = b->addr + b->length;
	for (uint32_t j = 0; j < m->n_regions; j++) {
		uint64_t o = m->kv_caches_base_addr[j];
		if (o > base && o - base >= stride && o < end)
			end = o;
	}
	return (uint32_t)MIN((end - base) / stride, (uint64_t)UINT32_MAX);
}

/* One kvbridge PULL per request: the decoder's regions in our order, its
 * block lists per group. */
static int sess_pulls(v2sess_t *s, GPtrArray *frames, char *why, size_t why_len)
{
	struct hw_vllm2 *v = s->v;
	const kvb_vllm_xfer_meta_t *m = &s->meta;
	const kvb_mc_segment_t *seg = &s->peer->link.seg;
	kvb_region_t *regions = g_new0(kvb_region_t, v->n_regions);
	kvb_rkey_t *rkeys = g_new0(kvb_rkey_t, v->n_regions);
	int rc = KVB_OK;
	for (uint32_t i = 0; i < v->n_regions && rc == KVB_OK; i++) {
		uint32_t j = s->pair[i];
		kvb_region_t *r = &regions[i];
		*r = v->regions[i].r;
		r->base = m->kv_caches_base_addr[j];
		if (m->region_fields & KVB_VLLM_XF_BIT(KVB_VLLM_XF_BLOCK_LENS))
			r->block_stride = m->block_lens[j];
		if (m->region_fields & KVB_VLLM_XF_BIT(KVB_VLLM_XF_KV_BLOCK_LENS))
			r->block_bytes = m->kv_block_lens[j];
		else if (m->region_fields & KVB_VLLM_XF_BIT(KVB_VLLM_XF_BLOCK_LENS))
			r->block_bytes = m->block_lens[j];
		r->mem_kind = KVB_MEM_HOST;
		r->device = -1;
		r->num_blocks = decoder_room(seg, m, r->base, r->block_stride);
		if (!r->num_blocks) {
			g_snprintf(why, why_len,
				   "kv_caches_base_addr[%u] = 0x%" PRIx64 " (%s) is outside the decoder's "
				   "registered memory", j, r->base, v->regions[i].name);
			rc = KVB_ERR_RANGE;
		}
	}
	uint32_t *counts = g_new0(uint32_t, v->n_groups ? v->n_groups : 1);
	kvb_block_list_t *groups = g_new0(kvb_block_list_t, v->n_groups ? v->n_groups : 1);
	for (uint32_t q = 0; q < m->n_reqs && rc == KVB_OK; q++) {
		const kvb_vllm_xfer_req_t *rq = &m->reqs[q];
		/* a request with no lists is a release notification: empty groups */
		if (rq->n_lists && rq->n_lists != v->n_groups) {
			g_snprintf(why, why_len, "KV group count mismatch: request %s has %u block lists, "
				   "this producer %u KV groups", rq->req_id, rq->n_lists, v->n_groups);
			rc = KVB_ERR_LAYOUT;
			break;
		}
		for (uint32_t g = 0; g < v->n_groups; g++) {
			uint32_t n = 0;
			const uint32_t *ids = rq->n_lists ? kvb_vllm_xfer_meta_blocks(m, q, g, &n) : NULL;
			groups[g].ids = ids;
			groups[g].count = n;
		}
		kvb_wire_pull_t pull;
		memset(&pull, 0, sizeof(pull));
		g_strlcpy(pull.transfer_id, rq->transfer_id, sizeof(pull.transfer_id));
		g_strlcpy(pull.request_id, rq->req_id, sizeof(pull.request_id));
		pull.tp_size = m->remote_tp_size;
		pull.tp_rank = m->remote_tp_rank;
		pull.n_nics = 1;
		pull.n_regions = v->n_regions;
		pull.regions = regions;
		pull.rkeys = rkeys;
		pull.n_groups = v->n_groups;
		pull.groups = groups;
		GByteArray *out = g_byte_array_new();
		kvb_err_t err;
		rc = kvb_wire_encode_pull(out, &pull, &err);
		if (rc == KVB_OK) {
			g_ptr_array_add(frames, out);
		} else {
			g_snprintf(why, why_len, "request %s: %s", rq->req_id, err.msg);
			g_byte_array_unref(out);
		}
	}
	g_free(counts);
	g_free(groups);
	g_free(regions);
	g_free(rkeys);
	return rc;
}

/* KVB_HW_DEBUG=1: where a decoder wants a request (bases in our region
 * order, strides, block ids), one line, for operators and the tests that
 * read a real decoder's memory back. */
static void sess_log_request(v2sess_t *s, uint32_t q)
{
	hw_t *hw = s->v->hw;
	if (!hw->debug)
		return;
	const kvb_vllm_xfer_meta_t *m = &s->meta;
	GString *l = g_string_new(NULL);
	g_string_append_printf(l, "vllm pull: request=%s transfer=%s decoder=%s:%u bases=",
			       m->reqs[q].req_id, m->reqs[q].transfer_id, m->remote_hostname, m->remote_port);
	for (uint32_t i = 0; i < s->v->n_regions; i++)
		g_string_append_printf(l, "%s%" PRIu64, i ? "," : "", m->kv_caches_base_addr[s->pair[i]]);
	g_string_append(l, " strides=");
	for (uint32_t i = 0; i < s->v->n_regions; i++)
		g_string_append_printf(l, "%s%" PRIu64, i ? "," : "",
				       (m->region_fields & KVB_VLLM_XF_BIT(KVB_VLLM_XF_BLOCK_LENS))
					       ? m->block_lens[s->pair[i]] : s->v->regions[i].r.block_stride);
	g_string_append(l, " blocks=");
	for (uint32_t g = 0; g < m->reqs[q].n_lists; g++) {
		uint32_t n = 0;
		const uint32_t *ids = kvb_vllm_xfer_meta_blocks(m, q, g, &n);
		for (uint32_t i = 0; i < n; i++)
			g_string_append_printf(l, "%s%u", g || i ? "," : "", ids[i]);
	}
	hw_log(hw, "%s", l->str);
	g_string_free(l, TRUE);
}

static void sess_descriptor(void *obj, int status, const char *why, kvb_mc_msg_type_t type,
			    const uint8_t *payload, size_t len)
{
	v2sess_t *s = obj;
	hw_t *hw = s->v->hw;
	s->call = NULL;
	char reason[KVB_ERR_MSG_MAX + 64];
	if (status != KVB_OK) {
		g_snprintf(reason, sizeof(reason), "decoder's transfer engine: %s", why);
		sess_fail(s, reason);
		return;
	}
	kvb_mc_segment_t seg;
	kvb_err_t err;
	if (type != KVB_MC_METADATA ||
	    kvb_mc_segment_from_json((const char *)payload, len, &seg, &err) != KVB_OK) {
		g_snprintf(reason, sizeof(reason), "decoder's segment descriptor: %s",
			   type != KVB_MC_METADATA ? "wrong reply type" : err.msg);
		sess_fail(s, reason);
		return;
	}
	char addr[KVB_ADDR_MAX];
	g_snprintf(addr, sizeof(addr), "vllm-decoder:%s:%u", s->meta.remote_hostname,
		   s->meta.remote_port);
	hw_peer_t *p = hw_peer_new(hw, HW_PEER_VLLM_SESSION, &session_ops, addr);
	p->proto = s;
	s->peer = p;
	g_strlcpy(p->host, s->meta.remote_hostname, sizeof(p->host));
	if (hw_link_set_segment(&p->link, &seg, s->meta.remote_hostname, &err) != KVB_OK) {
		sess_fail(s, err.msg);
		return;
	}
	v2decoder_t *d = decoder_get(s->v, s->meta.remote_hostname, s->meta.remote_port, true);
	if (s->reuse) {
		hw_lanes_move(s->reuse, &p->link);
		holder_free(s->reuse);
		s->reuse = NULL;
	} else {
		/* a fresh descriptor: connections made for an older one go */
		hw_link_t *old;
		while ((old = g_queue_pop_head(&d->links)))
			holder_free(old);
		if (d->desc)
			g_bytes_unref(d->desc);
		d->desc = g_bytes_new(payload, len);
	}
	GPtrArray *frames = g_ptr_array_new_with_free_func((GDestroyNotify)g_byte_array_unref);
	if (sess_pulls(s, frames, reason, sizeof(reason)) != KVB_OK) {
		g_ptr_array_free(frames, TRUE);
		sess_fail(s, reason);
		return;
	}
	s->pending = frames->len;
	for (uint32_t q = 0; q < s->meta.n_reqs; q++) {
		g_hash_table_add(s->open, g_strdup(s->meta.reqs[q].req_id));
		sess_log_request(s, q);
	}
	/* the pulls wait in the peer until the core accepts the connection */
	for (guint i = 0; i < frames->len; i++) {
		GByteArray *f = frames->pdata[i];
		kvb_mc_frame_encode(p->rx, KVB_MC_KVB_FRAME, f->data, f->len);
	}
	g_ptr_array_free(frames, TRUE);
	if (!s->pending) {
		/* no request in the message: nothing to wait for */
		kvb_vllm_xfer_resp_t resp;
		kvb_vllm_xfer_resp_init(&resp, KVB_VLLM_XFER_FINISH);
		router_reply(s->v, s->identity, &resp);
		kvb_vllm_xfer_resp_clear(&resp);
		sess_end(s);
		return;
	}
	hw_peer_announce(p);
}

/* The core accepted a session's connection: deliver its pulls. */
static void session_accepted(hw_peer_t *p)
{
	p->state = HW_PEER_UP;
	size_t off = 0;
	while (p->rx->len - off >= KVB_MC_FRAME_HEADER_LEN) {
		uint64_t body;
		kvb_mc_frame_header(p->rx->data + off, UINT32_MAX, &body, NULL);
		hw_peer_deliver(p, p->rx->data + off + KVB_MC_FRAME_HEADER_LEN + 1, body - 1);
		off += KVB_MC_FRAME_HEADER_LEN + body;
	}
	g_byte_array_set_size(p->rx, 0);
}

/* vLLM's words for what the core reports, where vLLM has words. */
static void sess_error_text(GString *msg, const kvb_wire_notice_t *n)
{
	if (msg->len)
		return; /* one err_msg per reply: the first failure's */
	if (n->status == KVB_ERR_TIMEOUT && g_str_has_prefix(n->reason, "producer request not ready"))
		g_string_assign(msg, TIMEOUT_TEXT);
	else
		g_string_printf(msg, "kvbridge producer: %s (%s)", n->reason[0] ? n->reason : "failed",
				kvb_strerror(n->status));
}

static int session_msg_send(hw_peer_t *p, const void *buf, size_t len)
{
	v2sess_t *s = p->proto;
	kvb_wire_type_t type;
	kvb_err_t err;
	if (kvb_wire_peek(buf, len, &type, &err) != KVB_OK) {
		hw_set_error(p->hw, "msg_send: %s", err.msg);
		return KVB_ERR_INVALID;
	}
	if (!s || type != KVB_WIRE_DONE)
		return KVB_OK; /* STARTED: vLLM has no such reply */
	kvb_wire_notice_t n;
	if (kvb_wire_decode_notice(buf, len, &n, &err) != KVB_OK)
		return KVB_ERR_INVALID;
	if (!g_hash_table_remove(s->open, n.request_id))
		return KVB_OK; /* answered already */
	if (n.status == KVB_OK) {
		g_ptr_array_add(s->ok, g_strdup(n.request_id));
	} else {
		g_ptr_array_add(s->err, g_strdup(n.request_id));
		sess_error_text(s->err_msg, &n);
		hw_warn(p->hw, "vLLM request %s (transfer %s) failed: %s (%s)", n.request_id, n.transfer_id,
			kvb_strerror(n.status), n.reason);
	}
	if (s->pending)
		s->pending--;
	/* DONEs of one dispatch share a reply */
	hw_deadline_arm(s->flush, 0);
	return KVB_OK;
}

static void session_closed(hw_peer_t *p)
{
	v2sess_t *s = p->proto;
	p->proto = NULL;
	if (s) {
		s->peer = NULL;
		if (!s->finished) {
			/* the core let go before every request was answered: the
			 * others failed (the instance is closing, or the core dropped
			 * the connection) */
			GHashTableIter it;
			gpointer key;
			g_hash_table_iter_init(&it, s->open);
			while (g_hash_table_iter_next(&it, &key, NULL))
				g_ptr_array_add(s->err, g_strdup(key));
			g_hash_table_remove_all(s->open);
			s->pending = 0;
			if (!s->err_msg->len)
				g_string_assign(s->err_msg, "kvbridge producer: the transfer was dropped");
			if (s->ok->len || s->err->len)
				sess_reply(s);
		}
		sess_free(s);
	}
	hw_peer_free(p);
}

static void session_detach(hw_peer_t *p)
{
	v2sess_t *s = p->proto;
	if (s)
		s->peer = NULL;
	p->proto = NULL;
}

/* A message a Gen 0 decoder sent here: answer in its framing. */
static void router_wrong_generation(struct hw_vllm2 *v, GBytes *identity, bool req_envelope)
{
	v->hw->stats.vllm_wrong_generation++;
	v->hw->stats.vllm_errors++;
	hw_warn(v->hw, "vLLM side channel: a Gen 0 decoder (MooncakeAgentMetadata, vLLM 0.13-0.15) "
		"reached this Gen 1/2 port (vLLM 0.16+); answered trans_error "
		"(run this worker with --vllm-protocol gen0 for such decoders)");
	size_t n;
	const char *bytes = kvb_vllm_reply_bytes(KVB_VLLM_GEN0, KVB_VLLM_REPLY_ERROR, &n);
	router_send(v, identity, bytes, n, req_envelope);
}

static void router_message(struct hw_vllm2 *v, zmq_msg_t *frames, int n, size_t n_total)
{
	hw_t *hw = v->hw;
	hw->stats.vllm_messages++;
	if (n < 1 || !zmq_msg_size(&frames[0]))
		return; /* no identity: nobody to answer */
	if (!hw_zmq_sender_allowed(hw, &frames[n - 1]))
		return; /* nothing for a peer that may not be here: no answer, no session */
	GBytes *identity = g_bytes_new(zmq_msg_data(&frames[0]), zmq_msg_size(&frames[0]));
	bool req_env = n == 3 && zmq_msg_size(&frames[1]) == 0;
	if (n_total > (size_t)n || n < 2 || (n > 2 && !req_env)) {
		char why[96];
		g_snprintf(why, sizeof(why), "message of %zu frames (a vLLM decoder's DEALER sends one)",
			   n_total - 1);
		router_error(v, identity, hw_zmq_peer(&frames[n - 1]), "(unframed)", why);
		g_bytes_unref(identity);
		return;
	}
	zmq_msg_t *pl = &frames[n - 1];
	const void *payload = zmq_msg_data(pl);
	size_t plen = zmq_msg_size(pl);
	if (kvb_vllm_payload_classify(payload, plen) == KVB_VLLM_PAYLOAD_AGENT_META) {
		router_wrong_generation(v, identity, req_env);
		g_bytes_unref(identity);
		return;
	}
	v2sess_t *s = g_new0(v2sess_t, 1);
	s->v = v;
	s->identity = identity;
	g_strlcpy(s->peer_ip, hw_zmq_peer(&frames[n - 1]), sizeof(s->peer_ip));
	s->open = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
	s->ok = g_ptr_array_new_with_free_func(g_free);
	s->err = g_ptr_array_new_with_free_func(g_free);
	s->err_msg = g_string_new(NULL);
	s->flush = hw_deadline_new(hw, sess_flush, s);
	g_queue_push_tail(&v->sessions, s);
	kvb_err_t err;
	char why[KVB_ERR_MSG_MAX + 128];
	if (kvb_vllm_xfer_meta_decode(KVB_VLLM_XFER_ANY, payload, plen, &s->meta, &err) != KVB_OK) {
		router_error(v, identity, s->peer_ip, req_env ? "(REQ envelope)" : "(undecodable)", err.msg);
		sess_free(s);
		return;
	}
	if (req_env) {
		/* a REQ client would break a vLLM P's ROUTER; we answer it */
		hw_warn(hw, "vLLM request from %s:%u came from a REQ socket (vLLM's D uses a DEALER)",
			s->meta.remote_hostname, s->meta.remote_port);
	}
	if (!v->have_layout) {
		sess_fail(s, "this producer has no KV layout for vLLM decoders yet");
		return;
	}
	if (!kvb_tp_pairs(v->tp_size, v->tp_rank, s->meta.remote_tp_size, s->meta.remote_tp_rank)) {
		/* vLLM's words, with the D ranks this P rank serves */
		uint32_t ranks[64], nr = 0;
		GString *list = g_string_new("[");
		if (s->meta.remote_tp_size / v->tp_size <= 64 &&
		    kvb_tp_targets(v->tp_size, v->tp_rank, s->meta.remote_tp_size, ranks, &nr, NULL) == KVB_OK)
			for (uint32_t i = 0; i < nr && i < 64; i++)
				g_string_append_printf(list, "%s%u", i ? ", " : "", ranks[i]);
		g_string_append_c(list, ']');
		g_snprintf(why, sizeof(why), "This D tp_rank %u is not paired with P tp_rank %u; expected "
			   "one of %s.", s->meta.remote_tp_rank, v->tp_rank, list->str);
		g_string_free(list, TRUE);
		sess_fail(s, why);
		return;
	}
	if (!sess_pair(s, why, sizeof(why)) || !sess_check_lengths(s, why, sizeof(why))) {
		sess_fail(s, why);
		return;
	}
	v2decoder_t *d = decoder_get(v, s->meta.remote_hostname, s->meta.remote_port, false);
	if (d && d->desc && (s->reuse = decoder_take_link(d))) {
		/* the decoder we wrote to last time, its connections still up */
		hw->stats.vllm_descriptors_reused++;
		GBytes *desc = g_bytes_ref(d->desc);
		gsize len;
		const uint8_t *json = g_bytes_get_data(desc, &len);
		sess_descriptor(s, KVB_OK, NULL, KVB_MC_METADATA, json, len);
		g_bytes_unref(desc);
		return;
	}
	char *desc = hw_segment_json(hw);
	s->call = hw_call_start(hw, s->meta.remote_hostname, s->meta.remote_port, KVB_MC_METADATA, desc,
				strlen(desc), sess_descriptor, s);
	g_free(desc);
}

static void router_drain(struct hw_vllm2 *v)
{
	for (int i = 0; i < 256 && hw_zmq_readable(v->router); i++) {
		zmq_msg_t frames[HW_ZMQ_MAX_FRAMES];
		size_t total;
		int n = hw_zmq_recv(v->router, frames, &total);
		if (n <= 0)
			break;
		router_message(v, frames, n, total);
		hw_zmq_frames_close(frames, n);
	}
	if (hw_zmq_readable(v->router))
		hw_deadline_arm(v->kick, 0);
}

static bool router_io(void *obj, GIOCondition cond)
{
	(void)cond;
	router_drain(obj);
	return true;
}

static const hw_peer_ops_t session_ops = {
	.protocol = "vllm gen2 (producer session)",
	.accepted = session_accepted,
	.msg_send = session_msg_send,
	.closed = session_closed,
	.detach = session_detach,
};

/* ------------------------------------------------------------------------ */
/* layout and registration                                                  */

static void registered(void *obj, int status, const char *why)
{
	struct hw_vllm2 *v = obj;
	v->reg_call = NULL;
	if (status != KVB_OK) {
		hw_set_error(v->hw, "vLLM bootstrap registration: %s", why);
		hw_warn(v->hw, "vLLM bootstrap: this worker could not register (%s); decoders will not "
			"find it", why);
		return;
	}
	hw_log(v->hw, "vLLM bootstrap: registered %s as engine %s dp %u tp %u pp %u", v->worker_addr,
	       v->engine_id, v->dp_rank, v->tp_rank, v->pp_rank);
}

int hw_vllm2_set_layout(hw_t *hw, const kvb_hw_vllm_layout_t *l, kvb_err_t *err)
{
	struct hw_vllm2 *v = hw->vllm2;
	if (!v)
		return kvb_err_set(err, KVB_ERR_STATE, "this instance does not speak vLLM Gen 1/2");
	uint32_t pp_size = l->pp_size ? l->pp_size : 1;
	if (!l->n_regions || !l->regions || !l->tp_size || l->tp_rank >= l->tp_size ||
	    l->pp_rank >= pp_size || l->n_regions > KVB_VLLM_MAX_REGIONS)
		return kvb_err_set(err, KVB_ERR_INVALID, "vLLM layout: %u regions, tp %u of %u, pp %u of %u",
				   l->n_regions, l->tp_rank, l->tp_size, l->pp_rank, pp_size);
	uint32_t n_groups = 0;
	if (kvb_layout_check(l->regions, l->n_regions, &n_groups, err) != KVB_OK)
		return err->code;
	const char *engine = l->engine_id && *l->engine_id ? l->engine_id : "kvbridge";
	if (strlen(engine) >= KVB_VLLM_ENGINE_ID_MAX)
		return kvb_err_set(err, KVB_ERR_INVALID, "engine id of %zu bytes (at most %u)",
				   strlen(engine), KVB_VLLM_ENGINE_ID_MAX - 1);
	v2region_t *regs = g_new0(v2region_t, l->n_regions);
	for (uint32_t i = 0; i < l->n_regions; i++) {
		regs[i].r = l->regions[i];
		if (l->layer_names && l->layer_names[i])
			g_strlcpy(regs[i].name, l->layer_names[i], sizeof(regs[i].name));
		else
			g_snprintf(regs[i].name, sizeof(regs[i].name), "model.layers.%d.self_attn.attn",
				   l->regions[i].layer);
		for (uint32_t j = 0; j < i; j++)
			regs[i].occurrence += !strcmp(regs[j].name, regs[i].name);
	}
	g_free(v->regions);
	v->regions = regs;
	v->n_regions = l->n_regions;
	v->n_groups = n_groups;
	v->tp_size = l->tp_size;
	v->tp_rank = l->tp_rank;
	v->pp_size = pp_size;
	v->pp_rank = l->pp_rank;
	v->dp_rank = l->dp_rank;
	g_strlcpy(v->engine_id, engine, sizeof(v->engine_id));
	v->have_layout = true;
	if (v->router && (hw_vllm_bootstrap_port(hw) || hw->p.vllm_bootstrap_server)) {
		/* vLLM registers in register_kv_caches, right after binding (a
		 * worker that neither serves nor names a bootstrap is a consumer,
		 * which vLLM never registers) */
		kvb_vllm_register_t w;
		memset(&w, 0, sizeof(w));
		g_strlcpy(w.engine_id, v->engine_id, sizeof(w.engine_id));
		w.dp_rank = v->dp_rank;
		w.tp_rank = v->tp_rank;
		w.pp_rank = v->pp_rank;
		g_strlcpy(w.addr, v->worker_addr, sizeof(w.addr));
		kvb_vllm_worker_addr_parse(w.addr, &w.where, NULL);
		hw_vllm_boot_call_cancel(v->reg_call);
		const char *server = hw_vllm_bootstrap_port(hw) && !hw->p.vllm_bootstrap_server
					     ? NULL : hw->p.vllm_bootstrap_server;
		v->reg_call = hw_vllm_bootstrap_register(hw, server, &w, registered, v);
	}
	return KVB_OK;
}

const char *hw_vllm2_worker_addr(hw_t *hw)
{
	return hw->vllm2 ? hw->vllm2->worker_addr : "";
}

/* ------------------------------------------------------------------------ */
/* start and stop                                                           */

int hw_vllm2_start(hw_t *hw, kvb_err_t *err)
{
	struct hw_vllm2 *v = g_new0(struct hw_vllm2, 1);
	v->hw = hw;
	g_queue_init(&v->sessions);
	v->decoders = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, decoder_free);
	hw_vllm2_client_init(v);
	hw->vllm2 = v;
	const char *rel = hw->p.vllm_release ? hw->p.vllm_release : "0.32.0";
	if (kvb_vllm_xfer_profile_from_version(rel, &v->profile, err) != KVB_OK)
		return kvb_err_set(err, KVB_ERR_CONFIG, "vllm_release %s: %s", rel, err->msg);
	if (hw->p.vllm_bootstrap_port && hw_vllm_bootstrap_serve(hw, hw->p.vllm_bootstrap_port, err) != KVB_OK)
		return err->code;
	/* vLLM: bind_to_random_port("tcp://<VLLM_HOST_IP>") */
	v->router = zmq_socket(hw_zmq_ctx(), ZMQ_ROUTER);
	int zero = 0, one = 1;
	zmq_setsockopt(v->router, ZMQ_LINGER, &zero, sizeof(zero));
	zmq_setsockopt(v->router, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
	int64_t maxmsg = HW_ZMQ_MAX_MSG;
	zmq_setsockopt(v->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg));
	bool v6 = strchr(hw->host, ':') != NULL;
	if (v6)
		zmq_setsockopt(v->router, ZMQ_IPV6, &one, sizeof(one));
	char ep[KVB_VLLM_ADDR_MAX + 8];
	g_snprintf(ep, sizeof(ep), v6 ? "tcp://[%s]:*" : "tcp://%s:*", hw->host);
	if (zmq_bind(v->router, ep) != 0)
		return kvb_err_set(err, KVB_ERR_CONFIG, "vLLM side channel: cannot bind %s: %s", ep,
				   zmq_strerror(errno));
	char last[KVB_VLLM_ADDR_MAX + 8] = "";
	size_t sz = sizeof(last);
	zmq_getsockopt(v->router, ZMQ_LAST_ENDPOINT, last, &sz);
	const char *colon = strrchr(last, ':');
	v->router_port = colon ? (uint16_t)atoi(colon + 1) : 0;
	kvb_vllm_worker_addr_format(hw->host, v->router_port, v->worker_addr, sizeof(v->worker_addr), NULL);
	v->router_fd = hw_zmq_fd(v->router);
	v->router_w = hw_watch_new(hw, v->router_fd, G_IO_IN, router_io, v);
	v->kick = hw_deadline_new(hw, router_kick_fn, v);
	v->gate = hw_zmq_gate_open(hw, v->router, "vLLM side channel");
	hw_log(hw, "vLLM Gen 1/2 side channel on %s (bootstrap %s)", v->worker_addr,
	       hw->p.vllm_bootstrap_port ? "served here" : "elsewhere");
	return KVB_OK;
}

void hw_vllm2_stop(hw_t *hw)
{
	struct hw_vllm2 *v = hw->vllm2;
	if (!v) {
		hw_vllm_bootstrap_stop(hw);
		return;
	}
	while (v->sessions.head)
		sess_free(v->sessions.head->data); /* peers are freed by the instance */
	g_hash_table_destroy(v->decoders);
	hw_vllm2_client_fini(v);
	hw_vllm_boot_call_cancel(v->reg_call);
	hw_vllm_bootstrap_stop(hw);
	hw_watch_free(v->router_w);
	hw_deadline_free(v->kick);
	hw_zmq_gate_close(v->gate);
	if (v->router)
		zmq_close(v->router);
	g_free(v->regions);
	g_free(v);
	hw->vllm2 = NULL;
}
