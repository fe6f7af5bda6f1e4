/*
 * vLLM MooncakeConnector side channel, Gen 0 (kvb_vllm_wire.h), as a
 * protocol adapter: the connector core sees ordinary kvbridge peers.
 *
 * Producer side.  A ZMQ ROUTER on the side-channel port takes
 * MooncakeAgentMetadata messages from vLLM decoders (REQ or DEALER).  Each
 * message becomes a session: fetch the decoder's Mooncake segment
 * descriptor (handshake type 1 to remote_hostname:remote_port), announce an
 * incoming connection to the core, and hand it one kvbridge PULL per request
 * id, with the decoder's base addresses on this producer's layout (Gen 0
 * carries no strides: both sides share them).  The core serves the pulls as
 * any other (lease, fencing, NIC policy); its slices go to the decoder's TCP
 * transport.  When every pull ended, the session answers "trans_done" (all
 * served) or "trans_error", and the connection goes down.  A message that
 * cannot be trusted gets "trans_error" at once and the ROUTER keeps serving.
 *
 * Consumer side ("vllm://host:port").  Each kvbridge PULL the core sends
 * becomes a MooncakeAgentMetadata on a fresh DEALER socket (replies carry no
 * request id, so one socket per request, as vLLM's decoder uses one REQ per
 * batch), sent REQ-style with an empty delimiter so Gen 0 producers, which
 * expect three frames, accept it.  "trans_done" becomes a DONE for the core.
 * Gen 0 has no cancel: a cancelled pull is ended at once, and the blocks it
 * named are fenced in the TCP server so that a producer still writing cannot
 * touch them once they are reused; the next pull naming them lifts the fence.
 * A socket monitor on each DEALER ends its pull when the producer cannot be
 * reached within connect_timeout, or closes the connection before its
 * reply (a producer that died), within seconds rather than at the lease.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include <glib.h>
#include <zmq.h>
#include <kvbridge/kvbridge.h>

#include "control/kvb_hw_peer.h"
#include "control/kvb_hw_vllm_gen0.h"
#include "events/kvb_hw_net.h"
#include "events/kvb_hw_zmq.h"
#include "transport/kvb_hw_mem.h"
#include "transport/kvb_hw_rdma_window.h"
#include "transport/kvb_hw_transport.h"
#include "kvb_vllm_wire.h"
#include "kvb_vllm_xfer_wire.h"
#include "kvb_wire.h"


typedef struct vsess vsess_t;

struct hw_vllm {
	hw_t *hw;
	void *zctx;
	void *router;
	int router_fd;
	hw_watch_t *router_w;
	hw_zmq_gate_t *gate;        /* shuts down connections from outside allow_peers */
	hw_deadline_t *kick;        /* re-check ZMQ_EVENTS after sends (edge-triggered fd) */
	kvb_region_t *regions;
	uint32_t n_regions;
	uint32_t tp_size, tp_rank;
	GQueue sessions;            /* vsess_t* */
};

/* One Gen 0 message being served (producer side). */
struct vsess {
	struct hw_vllm *v;
	GBytes *identity;
	kvb_vllm_envelope_t env;
	kvb_vllm_meta_t meta;
	hw_call_t *call;
	hw_peer_t *peer;
	uint32_t pending;           /* pulls not yet answered by the core */
	bool failed;
	bool replied;
};

/* One pull in flight to a Gen 0 producer (consumer side). */
typedef struct vpull {
	struct vclient *vc;
	char transfer_id[KVB_ID_MAX];
	char request_id[KVB_ID_MAX];
	uint64_t bytes;
	void *sock;
	int fd;
	hw_watch_t *w;
	void *mon;                  /* PAIR end of the DEALER's socket monitor */
	hw_watch_t *mon_w;
	bool connected;
	hw_deadline_t *connect_timer; /* no connection within connect_timeout: failed */
	GArray *ranges;             /* uint64_t pairs: destination ranges (for fences) */
} vpull_t;

typedef struct vclient {
	hw_peer_t *peer;
	char endpoint[KVB_MC_NAME_MAX + 16];
	GQueue pulls;               /* vpull_t* */
	hw_deadline_t *kick;
} vclient_t;

static const hw_peer_ops_t session_ops, client_ops;

/* ------------------------------------------------------------------------ */
/* producer side                                                            */

static void router_drain(struct hw_vllm *v);

static void router_kick_fn(void *obj)
{
	router_drain(obj);
}

static void router_reply(struct hw_vllm *v, GBytes *identity, kvb_vllm_envelope_t env,
			 kvb_vllm_reply_t reply)
{
	size_t len;
	const char *bytes = kvb_vllm_reply_bytes(KVB_VLLM_GEN0, reply, &len);
	size_t idlen;
	const void *id = g_bytes_get_data(identity, &idlen);
	/* a vanished decoder makes these fail (ROUTER_MANDATORY): nothing to do */
	if (zmq_send(v->router, id, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0) {
		if (env == KVB_VLLM_ENV_REQ)
			zmq_send(v->router, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT);
		zmq_send(v->router, bytes, len, ZMQ_DONTWAIT);
	}
	if (reply == KVB_VLLM_REPLY_ERROR)
		hw_stats(v->hw)->vllm_errors++;
	hw_deadline_arm(v->kick, 0);
}

static void vsess_free(vsess_t *s)
{
	g_queue_remove(&s->v->sessions, s);
	hw_call_cancel(s->call);
	if (s->peer)
		s->peer->proto = NULL;
	g_bytes_unref(s->identity);
	kvb_vllm_meta_clear(&s->meta);
	g_free(s);
}

/* Answer the decoder and end the session. */
static void vsess_finish(vsess_t *s, bool ok, const char *why)
{
	hw_t *hw = s->v->hw;
	if (!ok) {
		char from[KVB_ADDR_MAX];
		if (s->meta.remote_hostname[0])
			g_snprintf(from, sizeof(from), "from %s:%u", s->meta.remote_hostname,
				   s->meta.remote_port);
		else
			g_strlcpy(from, "(unreadable metadata)", sizeof(from));
		hw_set_error(hw, "vLLM request %s: %s", from, why);
		hw_warn(hw, "vLLM request %s answered trans_error: %s", from, why);
	}
	if (!s->replied) {
		s->replied = true;
		router_reply(s->v, s->identity, s->env, ok ? KVB_VLLM_REPLY_DONE : KVB_VLLM_REPLY_ERROR);
	}
	hw_peer_t *p = s->peer;
	if (p && (p->conn || p->incoming_id)) {
		/* the core closes the conn, then vllm_peer_closed frees the session */
		hw_peer_down(p, KVB_OK, "vLLM session finished");
		return;
	}
	if (p) {
		p->proto = NULL;
		s->peer = NULL;
		hw_peer_free(p);
	}
	vsess_free(s);
}

/* One kvbridge PULL per request id, with the decoder's bases on our layout. */
static int vsess_pulls(vsess_t *s, GPtrArray *frames, char *why, size_t why_len)
{
	struct hw_vllm *v = s->v;
	hw_peer_t *p = s->peer;
	kvb_vllm_meta_t *m = &s->meta;
	if (m->n_bases != v->n_regions) {
		g_snprintf(why, why_len,
			   "decoder sent %u kv_caches_base_addr entries, this producer has %u regions "
			   "(Gen 0 needs the same layout on both sides)", m->n_bases, v->n_regions);
		return KVB_ERR_LAYOUT;
	}
	kvb_region_t *regions = g_new0(kvb_region_t, v->n_regions);
	kvb_rkey_t *rkeys = g_new0(kvb_rkey_t, v->n_regions);
	for (uint32_t i = 0; i < v->n_regions; i++) {
		regions[i] = v->regions[i];
		regions[i].base = m->kv_caches_base_addr[i];
		regions[i].mem_kind = KVB_MEM_HOST;
		regions[i].device = -1;
		/* blocks the decoder's registered memory holds from this base */
		const kvb_mc_buffer_t *b = kvb_mc_segment_find(&p->link.seg, regions[i].base, 1);
		if (!b) {
			g_snprintf(why, why_len,
				   "kv_caches_base_addr[%u] = 0x%" PRIx64 " is outside the decoder's "
				   "registered memory", i, regions[i].base);
			g_free(regions);
			g_free(rkeys);
			return KVB_ERR_RANGE;
		}
		/* a region ends at the end of its buffer or at the next base the
		 * decoder sent, whichever comes first (vLLM allocates the layers of
		 * one engine back to back, often in a single registration) */
		uint64_t end = b->addr + b->length;
		for (uint32_t j = 0; j < m->n_bases; j++)
			if (m->kv_caches_base_addr[j] > regions[i].base && m->kv_caches_base_addr[j] < end)
				end = m->kv_caches_base_addr[j];
		uint64_t room = (end - regions[i].base) / regions[i].block_stride;
		regions[i].num_blocks = (uint32_t)MIN(room, (uint64_t)UINT32_MAX);
	}
	int rc = KVB_OK;
	for (uint32_t r = 0; r < m->n_requests && rc == KVB_OK; r++) {
		kvb_wire_pull_t pull;
		memset(&pull, 0, sizeof(pull));
		kvb_vllm_gen0_transfer_id(m->request_ids[r], pull.transfer_id, sizeof(pull.transfer_id));
		g_strlcpy(pull.request_id, m->request_ids[r], sizeof(pull.request_id));
		pull.tp_size = v->tp_size;
		pull.tp_rank = v->tp_rank;
		pull.n_nics = 1;
		pull.n_regions = v->n_regions;
		pull.regions = regions;
		pull.rkeys = rkeys;
		kvb_block_list_t group = {m->block_ids + m->block_offsets[r], m->block_counts[r]};
		if (p->hw->debug) {
			/* where the decoder wants it: for operators, and the tests that
			 * read a real decoder's memory back */
			GString *l = g_string_new(NULL);
			g_string_append_printf(l, "vllm pull: request=%s transfer=%s decoder=%s:%u bases=",
					       pull.request_id, pull.transfer_id, m->remote_hostname,
					       m->remote_port);
			for (uint32_t i = 0; i < v->n_regions; i++)
				g_string_append_printf(l, "%s%" PRIu64, i ? "," : "", regions[i].base);
			g_string_append(l, " strides=");
			for (uint32_t i = 0; i < v->n_regions; i++)
				g_string_append_printf(l, "%s%" PRIu64, i ? "," : "", regions[i].block_stride);
			g_string_append(l, " blocks=");
			for (uint32_t i = 0; i < group.count; i++)
				g_string_append_printf(l, "%s%u", i ? "," : "", group.ids[i]);
			hw_log(p->hw, "%s", l->str);
			g_string_free(l, TRUE);
		}
		pull.n_groups = 1;
		pull.groups = &group;
		GByteArray *out = g_byte_array_new();
		kvb_err_t err;
		rc = kvb_wire_encode_pull(out, &pull, &err);
		if (rc == KVB_OK)
			g_ptr_array_add(frames, out);
		else {
			g_snprintf(why, why_len, "request %s: %s", m->request_ids[r], err.msg);
			g_byte_array_unref(out);
		}
	}
	g_free(regions);
	g_free(rkeys);
	return rc;
}

static void vsess_descriptor(void *obj, int status, const char *why, kvb_mc_msg_type_t type,
			     const uint8_t *payload, size_t len)
{
	vsess_t *s = obj;
	hw_t *hw = s->v->hw;
	s->call = NULL;
	char reason[KVB_ERR_MSG_MAX + 64];
	if (status != KVB_OK) {
		g_snprintf(reason, sizeof(reason), "decoder's transfer engine: %s", why);
		vsess_finish(s, false, reason);
		return;
	}
	kvb_mc_segment_t seg;
	kvb_err_t err;
	if (type != KVB_MC_METADATA ||
	    kvb_mc_segment_from_json((const char *)payload, len, &seg, &err) != KVB_OK) {
		g_snprintf(reason, sizeof(reason), "decoder's segment descriptor: %s",
			   type != KVB_MC_METADATA ? "wrong reply type" : err.msg);
		vsess_finish(s, false, reason);
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
		vsess_finish(s, false, err.msg);
		return;
	}
	GPtrArray *frames = g_ptr_array_new_with_free_func((GDestroyNotify)g_byte_array_unref);
	int rc = vsess_pulls(s, frames, reason, sizeof(reason));
	if (rc != KVB_OK) {
		g_ptr_array_free(frames, TRUE);
		vsess_finish(s, false, reason);
		return;
	}
	s->pending = frames->len;
	/* the pulls wait in the peer until the core accepts the connection */
	for (guint i = 0; i < frames->len; i++) {
		GByteArray *f = frames->pdata[i];
		kvb_mc_frame_encode(p->rx, KVB_MC_KVB_FRAME, f->data, f->len);
	}
	g_ptr_array_free(frames, TRUE);
	if (!s->pending) {
		vsess_finish(s, true, NULL);
		return;
	}
	hw_peer_announce(p);
}

/* The core accepted a session's connection: deliver its pulls. */
static void vsess_accepted(hw_peer_t *p)
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

/* A Gen 1/2 decoder (MooncakeXferMetadata from a DEALER, vLLM 0.16+) on this
 * Gen 0 port: an ERROR MooncakeXferResponse, which it can decode and report,
 * instead of "trans_error", which it cannot. */
static void router_wrong_generation(struct hw_vllm *v, GBytes *identity)
{
	hw_t *hw = v->hw;
	static const char why[] =
		"this kvbridge port speaks vLLM's Gen 0 side channel (vLLM 0.13-0.15) and the "
		"decoder speaks Gen 1/2 (vLLM 0.16+): run the producer with --vllm-protocol gen2";
	hw_stats(hw)->vllm_wrong_generation++;
	hw_stats(hw)->vllm_errors++;
	hw_warn(hw, "vLLM side channel: a Gen 1/2 decoder reached this Gen 0 port; answered ERROR");
	kvb_vllm_xfer_resp_t resp;
	kvb_vllm_xfer_resp_init(&resp, KVB_VLLM_XFER_ERROR);
	kvb_vllm_xfer_resp_set_err_msg(&resp, why, NULL);
	GByteArray *out = g_byte_array_new();
	if (kvb_vllm_xfer_resp_encode(out, &resp, NULL) == KVB_OK) {
		size_t idlen;
		const void *id = g_bytes_get_data(identity, &idlen);
		if (zmq_send(v->router, id, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0)
			zmq_send(v->router, out->data, out->len, ZMQ_DONTWAIT);
	}
	g_byte_array_unref(out);
	kvb_vllm_xfer_resp_clear(&resp);
	hw_deadline_arm(v->kick, 0);
}

static void router_message(struct hw_vllm *v, zmq_msg_t *frames, int n, size_t n_total)
{
	hw_t *hw = v->hw;
	hw_stats(hw)->vllm_messages++;
	size_t sizes[HW_ZMQ_MAX_FRAMES + 1];
	for (int i = 0; i < n; i++)
		sizes[i] = zmq_msg_size(&frames[i]);
	kvb_vllm_envelope_t env;
	size_t pi;
	kvb_err_t err;
	if (n < 1 || !sizes[0])
		return; /* no identity: nobody to answer */
	if (!hw_zmq_sender_allowed(hw, &frames[n - 1]))
		return; /* nothing for a peer that may not be here: no answer, no session */
	GBytes *identity = g_bytes_new(zmq_msg_data(&frames[0]), sizes[0]);
	if (n_total > (size_t)n || kvb_vllm_envelope_classify(sizes, (size_t)n, &env, &pi, &err) != KVB_OK) {
		hw_set_error(hw, "vLLM side channel: %s",
			     n_total > (size_t)n ? "too many frames" : err.msg);
		hw_warn_from(hw, hw_zmq_peer(&frames[n - 1]), "vLLM side channel: message from %s refused "
			     "with trans_error: %s", hw_zmq_peer(&frames[n - 1]),
			     n_total > (size_t)n ? "too many frames" : err.msg);
		router_reply(v, identity, n == 3 ? KVB_VLLM_ENV_REQ : KVB_VLLM_ENV_DEALER,
			     KVB_VLLM_REPLY_ERROR);
		g_bytes_unref(identity);
		return;
	}
	if (env == KVB_VLLM_ENV_DEALER &&
	    kvb_vllm_payload_classify(zmq_msg_data(&frames[pi]), sizes[pi]) == KVB_VLLM_PAYLOAD_XFER_META) {
		router_wrong_generation(v, identity);
		g_bytes_unref(identity);
		return;
	}
	vsess_t *s = g_new0(vsess_t, 1);
	s->v = v;
	s->identity = identity;
	s->env = env;
	g_queue_push_tail(&v->sessions, s);
	if (kvb_vllm_meta_decode(KVB_VLLM_GEN0, zmq_msg_data(&frames[pi]), sizes[pi], &s->meta,
				 &err) != KVB_OK) {
		vsess_finish(s, false, err.msg);
		return;
	}
	if (!v->regions) {
		vsess_finish(s, false, "this producer has no KV layout for vLLM decoders yet");
		return;
	}
	char *desc = hw_segment_json(hw);
	s->call = hw_call_start(hw, s->meta.remote_hostname, s->meta.remote_port, KVB_MC_METADATA,
				desc, strlen(desc), vsess_descriptor, s);
	g_free(desc);
}

static void router_drain(struct hw_vllm *v)
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

int hw_vllm_start(hw_t *hw, kvb_err_t *err)
{
	const kvb_hw_params_t *prm = hw_params(hw);
	struct hw_vllm *v = g_new0(struct hw_vllm, 1);
	v->hw = hw;
	g_queue_init(&v->sessions);
	hw->vllm = v;
	v->zctx = hw_zmq_ctx();
	v->router = zmq_socket(v->zctx, ZMQ_ROUTER);
	int zero = 0, one = 1;
	zmq_setsockopt(v->router, ZMQ_LINGER, &zero, sizeof(zero));
	zmq_setsockopt(v->router, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
	int64_t maxmsg = HW_ZMQ_MAX_MSG;
	zmq_setsockopt(v->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg));
	const char *h = prm->side_channel_host;
	char ep[KVB_MC_NAME_MAX + 32];
	g_snprintf(ep, sizeof(ep), strchr(h, ':') ? "tcp://[%s]:%u" : "tcp://%s:%u",
		   strcmp(h, "0.0.0.0") == 0 ? "*" : h, prm->side_channel_port);
	if (strchr(h, ':')) {
		zmq_setsockopt(v->router, ZMQ_IPV6, &one, sizeof(one));
	}
	if (zmq_bind(v->router, ep) != 0)
		return kvb_err_set(err, KVB_ERR_CONFIG, "vLLM side channel: cannot bind %s: %s", ep,
				   zmq_strerror(errno));
	size_t sz = sizeof(v->router_fd);
	zmq_getsockopt(v->router, ZMQ_FD, &v->router_fd, &sz);
	v->router_w = hw_watch_new(hw, v->router_fd, G_IO_IN, router_io, v);
	v->kick = hw_deadline_new(hw, router_kick_fn, v);
	v->gate = hw_zmq_gate_open(hw, v->router, "vLLM Gen 0 side channel");
	return KVB_OK;
}

int hw_vllm_set_layout(hw_t *hw, const kvb_region_t *regions, uint32_t n, uint32_t tp_size,
		       uint32_t tp_rank, kvb_err_t *err)
{
	struct hw_vllm *v = hw->vllm;
	if (!v)
		return kvb_err_set(err, KVB_ERR_STATE, "no vLLM side channel (side_channel_port is 0)");
	if (!n || !regions || !tp_size || tp_rank >= tp_size)
		return kvb_err_set(err, KVB_ERR_INVALID, "vLLM layout: %u regions, tp %u of %u", n,
				   tp_rank, tp_size);
	for (uint32_t i = 0; i < n; i++)
		if (!regions[i].block_stride)
			return kvb_err_set(err, KVB_ERR_INVALID, "vLLM layout: region %u has stride 0", i);
	g_free(v->regions);
	v->regions = g_memdup2(regions, sizeof(*regions) * n);
	v->n_regions = n;
	v->tp_size = tp_size;
	v->tp_rank = tp_rank;
	return KVB_OK;
}

/* ------------------------------------------------------------------------ */
/* consumer side                                                            */

static void vpull_free(vpull_t *vp)
{
	g_queue_remove(&vp->vc->pulls, vp);
	hw_watch_free(vp->w);
	hw_watch_free(vp->mon_w);
	hw_deadline_free(vp->connect_timer);
	hw_zmq_monitor_close(vp->sock, vp->mon);
	if (vp->sock)
		zmq_close(vp->sock);
	if (vp->ranges)
		g_array_free(vp->ranges, TRUE);
	hw_window_close(vp->vc->peer->hw, vp, NULL, NULL);
	g_free(vp);
}

static void vclient_done(vclient_t *vc, const char *transfer_id, const char *request_id, int status,
			 uint64_t bytes, const char *reason)
{
	kvb_wire_notice_t n;
	kvb_wire_notice_fill(&n, KVB_WIRE_DONE, transfer_id, request_id, status, bytes, reason);
	GByteArray *out = g_byte_array_new();
	if (kvb_wire_encode_notice(out, &n, NULL) == KVB_OK)
		hw_peer_deliver(vc->peer, out->data, out->len);
	g_byte_array_unref(out);
}

/* End vp with a failure; its blocks fenced, as the producer may be alive. */
static void vpull_fail(vpull_t *vp, int status, const char *why)
{
	hw_t *hw = vp->vc->peer->hw;
	for (guint i = 0; i + 1 < vp->ranges->len; i += 2)
		hw_fence_add(hw, g_array_index(vp->ranges, uint64_t, i),
			     g_array_index(vp->ranges, uint64_t, i + 1));
	hw_set_error(hw, "vLLM producer %s: %s", vp->vc->endpoint, why);
	vclient_done(vp->vc, vp->transfer_id, vp->request_id, status, 0, why);
	vpull_free(vp);
}

/* true when vp ended (freed) */
static bool vpull_check(vpull_t *vp)
{
	vclient_t *vc = vp->vc;
	for (int i = 0; i < 16 && hw_zmq_readable(vp->sock); i++) {
		zmq_msg_t frames[HW_ZMQ_MAX_FRAMES];
		size_t total;
		int n = hw_zmq_recv(vp->sock, frames, &total);
		if (n <= 0)
			return false;
		/* REQ-style: ["", reply] */
		zmq_msg_t *last = &frames[n - 1];
		kvb_vllm_reply_t reply;
		kvb_err_t err;
		int rc = kvb_vllm_reply_decode(KVB_VLLM_GEN0, zmq_msg_data(last), zmq_msg_size(last), &reply,
					       &err);
		if (rc != KVB_OK)
			vclient_done(vc, vp->transfer_id, vp->request_id, KVB_ERR_PROTOCOL, 0, err.msg);
		else if (reply == KVB_VLLM_REPLY_DONE)
			vclient_done(vc, vp->transfer_id, vp->request_id, KVB_OK, vp->bytes, NULL);
		else
			vclient_done(vc, vp->transfer_id, vp->request_id, KVB_ERR_PEER, 0,
				     "the vLLM producer answered trans_error (see its log)");
		hw_zmq_frames_close(frames, n);
		vpull_free(vp);
		return true;
	}
	return false;
}

/* Monitor events (u16 event first); true when vp ended (freed). */
static bool vpull_monitor(vpull_t *vp)
{
	unsigned ev;
	while (vp->mon && (ev = hw_zmq_monitor_next(vp->mon))) {
		if (ev == ZMQ_EVENT_CONNECTED) {
			vp->connected = true;
			hw_deadline_disarm(vp->connect_timer);
		} else if (ev == ZMQ_EVENT_DISCONNECTED && vp->connected) {
			if (vpull_check(vp)) /* the reply came before the close */
				return true;
			vpull_fail(vp, KVB_ERR_PEER, "the vLLM producer closed the side channel before its "
				   "reply (did it exit?)");
			return true;
		}
	}
	return false;
}

static bool vpull_mon_io(void *obj, GIOCondition cond)
{
	(void)cond;
	vpull_t *vp = obj;
	hw_watch_t *w = vp->mon_w;
	hw_watch_ref(w);
	vpull_monitor(vp);
	bool alive = !hw_watch_gone(w);
	hw_watch_unref(w);
	return alive;
}

static void vpull_connect_timeout(void *obj)
{
	vpull_t *vp = obj;
	char why[160];
	g_snprintf(why, sizeof(why), "no connection to the vLLM producer's side channel within %.1f s",
		   (double)vp->vc->peer->hw->p.connect_timeout_ns / 1e9);
	vpull_fail(vp, KVB_ERR_PEER, why);
}

static bool vpull_io(void *obj, GIOCondition cond)
{
	(void)cond;
	vpull_t *vp = obj;
	hw_watch_t *w = vp->w;
	hw_watch_ref(w);
	vpull_check(vp);
	bool alive = !hw_watch_gone(w);
	hw_watch_unref(w);
	return alive;
}

static void vclient_kick(void *obj)
{
	vclient_t *vc = obj;
	GList *l = vc->pulls.head;
	while (l) {
		GList *next = l->next;
		if (!vpull_monitor(l->data))
			vpull_check(l->data);
		l = next;
	}
}

int hw_vllm_client_connect(hw_t *hw, kvb_conn_t *conn, const char *addr, const char *host,
			   uint16_t port)
{
	hw_peer_t *p = hw_peer_new(hw, HW_PEER_VLLM_CLIENT, &client_ops, addr);
	hw_peer_bind(p, conn);
	vclient_t *vc = g_new0(vclient_t, 1);
	vc->peer = p;
	g_queue_init(&vc->pulls);
	g_snprintf(vc->endpoint, sizeof(vc->endpoint), strchr(host, ':') ? "tcp://[%s]:%u" : "tcp://%s:%u",
		   host, port);
	vc->kick = hw_deadline_new(p->hw, vclient_kick, vc);
	p->proto = vc;
	g_strlcpy(p->host, host, sizeof(p->host));
	p->port = port;
	/* ZMQ connects lazily; the peer is up at once (errors show per pull) */
	p->link.have_seg = true;
	hw_peer_up(p);
	return KVB_INPROGRESS;
}

static int vclient_pull(vclient_t *vc, const void *buf, size_t len)
{
	hw_peer_t *p = vc->peer;
	hw_t *hw = p->hw;
	kvb_wire_pull_t pull;
	kvb_err_t err;
	if (kvb_wire_decode_pull(buf, len, &pull, &err) != KVB_OK) {
		hw_set_error(hw, "vllm client: %s", err.msg);
		return KVB_ERR_INVALID;
	}
	if (pull.n_groups > 1) {
		hw_set_error(hw, "vllm client: request %s has %u KV groups; Gen 0 carries one block list",
			     pull.request_id, pull.n_groups);
		kvb_wire_pull_clear(&pull);
		return KVB_ERR_UNSUPPORTED;
	}
	kvb_vllm_meta_t m;
	memset(&m, 0, sizeof(m));
	uint64_t *bases = g_new0(uint64_t, pull.n_regions ? pull.n_regions : 1);
	uint64_t per_block = 0;
	for (uint32_t i = 0; i < pull.n_regions; i++) {
		bases[i] = pull.regions[i].base;
		per_block += pull.regions[i].block_bytes;
	}
	int rc = kvb_vllm_meta_init(&m, hw->host, hw->rpc_port, bases, pull.n_regions, &err);
	g_free(bases);
	uint32_t nb = pull.n_groups ? pull.groups[0].count : 0;
	if (rc == KVB_OK)
		rc = kvb_vllm_meta_add_request(&m, pull.transfer_id, nb ? pull.groups[0].ids : NULL, nb,
					       &err);
	GByteArray *payload = g_byte_array_new();
	if (rc == KVB_OK)
		rc = kvb_vllm_meta_encode(KVB_VLLM_GEN0, payload, &m, &err);
	kvb_vllm_meta_clear(&m);
	if (rc != KVB_OK) {
		hw_set_error(hw, "vllm client: %s", err.msg);
		g_byte_array_unref(payload);
		kvb_wire_pull_clear(&pull);
		return rc;
	}
	vpull_t *vp = g_new0(vpull_t, 1);
	vp->vc = vc;
	g_strlcpy(vp->transfer_id, pull.transfer_id, sizeof(vp->transfer_id));
	g_strlcpy(vp->request_id, pull.request_id, sizeof(vp->request_id));
	vp->bytes = (uint64_t)nb * per_block;
	vp->ranges = hw_pull_ranges(&pull);
	if (hw_rdma_ranges_closed(hw, vp->ranges)) {
		hw_set_error(hw, "vllm client: request %s: %s", vp->request_id, "vLLM's side channel carries no per-pull RDMA keys, and this worker's memory is closed to "
			     "remote access: start it with KVB_RDMA_BUFFER_KEYS=1 (kvbridge-serve --rdma-buffer-keys) "
			     "to let vLLM producers write with the descriptor's keys (docs/security.md)");
		g_byte_array_unref(payload);
		kvb_wire_pull_clear(&pull);
		g_array_free(vp->ranges, TRUE);
		g_free(vp);
		return KVB_ERR_INVALID;
	}
	/* the producer may write these blocks, and only these, until the pull ends */
	char peer[64];
	hw_window_peer_of(vc->endpoint, peer, sizeof(peer));
	hw_window_open(hw, vp, vp->transfer_id, vp->request_id, vp->ranges, peer);
	/* the blocks are ours for this pull again: lift old fences on them */
	for (guint i = 0; i + 1 < vp->ranges->len; i += 2)
		hw_fence_clear(hw, g_array_index(vp->ranges, uint64_t, i),
			       g_array_index(vp->ranges, uint64_t, i + 1));
	kvb_wire_pull_clear(&pull);
	g_queue_push_tail(&vc->pulls, vp);
	vp->sock = zmq_socket(hw_zmq_ctx(), ZMQ_DEALER);
	int zero = 0;
	zmq_setsockopt(vp->sock, ZMQ_LINGER, &zero, sizeof(zero));
	vp->mon = hw_zmq_monitor_open(vp->sock); /* without one, the timeouts still end the pull */
	if (zmq_connect(vp->sock, vc->endpoint) != 0 ||
	    zmq_send(vp->sock, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
	    zmq_send(vp->sock, payload->data, payload->len, ZMQ_DONTWAIT) < 0) {
		hw_set_error(hw, "vllm client: %s: %s", vc->endpoint, zmq_strerror(errno));
		g_byte_array_unref(payload);
		vpull_free(vp);
		return KVB_ERR_PEER;
	}
	g_byte_array_unref(payload);
	size_t sz = sizeof(vp->fd);
	zmq_getsockopt(vp->sock, ZMQ_FD, &vp->fd, &sz);
	vp->w = hw_watch_new(hw, vp->fd, G_IO_IN, vpull_io, vp);
	if (vp->mon)
		vp->mon_w = hw_watch_new(hw, hw_zmq_fd(vp->mon), G_IO_IN, vpull_mon_io, vp);
	vp->connect_timer = hw_deadline_new(hw, vpull_connect_timeout, vp);
	hw_deadline_arm(vp->connect_timer, hw->p.connect_timeout_ns);
	hw_deadline_arm(vc->kick, 0);
	return KVB_OK;
}

static void vclient_cancel(vclient_t *vc, const kvb_wire_notice_t *n)
{
	hw_t *hw = vc->peer->hw;
	for (GList *l = vc->pulls.head; l; l = l->next) {
		vpull_t *vp = l->data;
		if (strcmp(vp->transfer_id, n->transfer_id) != 0 || strcmp(vp->request_id, n->request_id) != 0)
			continue;
		for (guint i = 0; i + 1 < vp->ranges->len; i += 2)
			hw_fence_add(hw, g_array_index(vp->ranges, uint64_t, i),
				     g_array_index(vp->ranges, uint64_t, i + 1));
		vclient_done(vc, vp->transfer_id, vp->request_id, KVB_ERR_ABORTED, 0,
			     "cancelled; a vLLM Gen 0 producer cannot be told to stop, so its late "
			     "writes into these blocks are refused");
		vpull_free(vp);
		return;
	}
}

static int vllm_msg_send(hw_peer_t *p, const void *buf, size_t len)
{
	hw_t *hw = p->hw;
	kvb_wire_type_t type;
	kvb_err_t err;
	if (kvb_wire_peek(buf, len, &type, &err) != KVB_OK) {
		hw_set_error(hw, "msg_send: %s", err.msg);
		return KVB_ERR_INVALID;
	}
	if (p->kind == HW_PEER_VLLM_CLIENT) {
		vclient_t *vc = p->proto;
		if (type == KVB_WIRE_PULL)
			return vclient_pull(vc, buf, len);
		if (type == KVB_WIRE_CANCEL) {
			kvb_wire_notice_t n;
			if (kvb_wire_decode_notice(buf, len, &n, NULL) == KVB_OK)
				vclient_cancel(vc, &n);
		}
		return KVB_OK; /* HEARTBEAT: Gen 0 has none */
	}
	/* producer session: STARTED is ignored, DONE answers a request */
	vsess_t *s = p->proto;
	if (!s || type != KVB_WIRE_DONE)
		return KVB_OK;
	kvb_wire_notice_t n;
	if (kvb_wire_decode_notice(buf, len, &n, &err) != KVB_OK)
		return KVB_ERR_INVALID;
	if (n.status != KVB_OK) {
		s->failed = true;
		hw_set_error(hw, "vLLM request %s: %s (%s)", n.request_id, kvb_strerror(n.status),
			     n.reason);
		hw_warn(hw, "vLLM request %s failed: %s (%s)", n.request_id, kvb_strerror(n.status),
			n.reason);
	}
	if (s->pending && --s->pending == 0) {
		bool ok = !s->failed;
		vsess_finish(s, ok, ok ? NULL : "a request of the message failed");
	}
	return KVB_OK;
}

static void vllm_peer_detach(hw_peer_t *p)
{
	if (p->kind == HW_PEER_VLLM_CLIENT) {
		vclient_t *vc = p->proto;
		if (vc) {
			while (vc->pulls.head)
				vpull_free(vc->pulls.head->data);
			hw_deadline_free(vc->kick);
			g_free(vc);
		}
	} else if (p->proto) {
		((vsess_t *)p->proto)->peer = NULL;
	}
	p->proto = NULL;
}

static void vllm_peer_closed(hw_peer_t *p)
{
	vsess_t *s = p->kind == HW_PEER_VLLM_SESSION ? p->proto : NULL;
	if (s) {
		if (!s->replied) {
			/* the core let go before every request was answered */
			s->replied = true;
			router_reply(s->v, s->identity, s->env, KVB_VLLM_REPLY_ERROR);
		}
		vsess_free(s);
	}
	hw_peer_free(p); /* detaches a client's pulls */
}

static const hw_peer_ops_t session_ops = {
	.protocol = "vllm gen0 (producer session)",
	.accepted = vsess_accepted,
	.msg_send = vllm_msg_send,
	.closed = vllm_peer_closed,
	.detach = vllm_peer_detach,
};

static void client_accepted(hw_peer_t *p)
{
	(void)p; /* never announced: clients are only dialled */
}

static const hw_peer_ops_t client_ops = {
	.protocol = "vllm gen0 (consumer)",
	.accepted = client_accepted,
	.msg_send = vllm_msg_send,
	.closed = vllm_peer_closed,
	.detach = vllm_peer_detach,
};

void hw_vllm_stop(hw_t *hw)
{
	struct hw_vllm *v = hw->vllm;
	if (v) {
		while (v->sessions.head)
			vsess_free(v->sessions.head->data); /* peers are freed by the instance */
		hw_watch_free(v->router_w);
		hw_deadline_free(v->kick);
		hw_zmq_gate_close(v->gate);
		if (v->router)
			zmq_close(v->router);
		g_free(v->regions);
		g_free(v);
		hw->vllm = NULL;
	}
}
