/*
 * The RDMA data path of the hw backend: endpoints, posting, completions,
 * failover, and the liveness of peers that keep no stream; queue pairs
 * compatible with the Mooncake Transfer Engine's (notes:
 * ../shared/research/mooncake-te.md sections 1.5, 2, 10).  Devices and
 * memory registration are kvb_hw_rdma_dev.c's.
 *
 *  - Endpoints: one per (local device, peer NIC path), each of qp_per_ep RC
 *    QPs (Mooncake's default 2; QP i pairs with peer QP i), PSN 0 both ways,
 *    GRH always, path MTU = min(active MTU, params.mtu).  The active side
 *    sends a type-0 Connection request to the peer's handshake port; the
 *    passive side answers it in hw_rdma_handshake.  No receive is ever
 *    posted and no SEND is ever sent: one-sided WRITE and READ only.
 *  - Posting: one signalled WR per slice, round-robin over the endpoint's
 *    QPs, at most max_wr outstanding per QP; the rest waits in the
 *    endpoint's queue and goes out as completions come back.  No WR
 *    crosses a remote buffer entry (the slice must lie in one).
 *  - Errors: a failed completion fails its op with KVB_ERR_TRANSPORT (the
 *    core retries it on another NIC and counts it against this one); the
 *    endpoint is retired and rebuilt by the next post.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>
#include <infiniband/verbs.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/hw.h>

#include "events/kvb_hw_net.h"
#include "transport/kvb_hw_rdma.h"
#include "transport/kvb_hw_rdma_window.h"
#include "transport/kvb_hw_rdma_int.h"

#define R hw_rdma_of
#define POLL_BATCH 64

typedef enum ep_state { EP_CONNECTING = 1, EP_UP = 2, EP_ERROR = 3 } ep_state_t;

typedef struct rdma_op rdma_op_t;

typedef struct rdma_ep {
	hw_t *hw;
	rdma_dev_t *dev;
	char key[KVB_MC_NAME_MAX * 2];
	char local_path[KVB_MC_NAME_MAX];
	char peer_path[KVB_MC_NAME_MAX];
	ep_state_t state;
	uint32_t n_qp;
	struct ibv_qp *qp[KVB_MC_MAX_QP];
	uint32_t qp_out[KVB_MC_MAX_QP];   /* WRs outstanding per QP */
	uint32_t peer_qpn[KVB_MC_MAX_QP];
	uint32_t next_qp;
	uint64_t outstanding;             /* WRs posted, not completed */
	GQueue pending;                   /* rdma_op_t* with slices left to post */
	hw_call_t *call;
	bool passive;                     /* the peer opened it (type-0 handshake to us) */
	bool retired;                     /* out of the table, freed once drained */
	uint64_t last_progress_ns;        /* last completion, or the first post after idle */
} rdma_ep_t;

struct rdma_op {
	hw_link_t *link;                  /* NULL: the link was freed, drop the event */
	uint64_t cookie;
	uint32_t nic;
	int status;
	uint32_t n_slices, posted, done;
	uint64_t len, slice_len;
	uint64_t laddr, raddr;
	uint32_t lkey, rkey;
	int opcode;                       /* IBV_WR_RDMA_WRITE / _READ */
	rdma_ep_t *ep;
};

uint64_t hw_rdma_endpoint_count(hw_t *hw)
{
	return R(hw) ? g_hash_table_size(R(hw)->eps) : 0;
}

static bool cq_io(void *obj, GIOCondition cond);
static bool async_io(void *obj, GIOCondition cond);
static void watchdog_fire(void *obj);
static void prober_fire(void *obj);
static void prober_arm(hw_rdma_t *r);
static void probe_free(void *obj);
static void ep_free(rdma_ep_t *ep);

int hw_rdma_open(hw_t *hw, kvb_err_t *err)
{
	const kvb_hw_params_t *p = hw_params(hw);
	if (!p->rdma_devices || !*p->rdma_devices)
		return KVB_OK;
	hw_rdma_t *r = g_new0(hw_rdma_t, 1);
	r->hw = hw;
	r->eps = g_hash_table_new(g_str_hash, g_str_equal);
	r->ops = g_hash_table_new(g_direct_hash, g_direct_equal);
	g_queue_init(&r->retired);
	r->watchdog = hw_deadline_new(hw, watchdog_fire, r);
	r->prober = hw_deadline_new(hw, prober_fire, r);
	r->probes = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, probe_free);
	hw->rdma = r;
	int rc = hw_rdma_devices_open(r, err);
	if (rc != KVB_OK) {
		hw_rdma_close(hw);
		return rc;
	}
	for (uint32_t i = 0; i < r->n_devs; i++) {
		rdma_dev_t *d = &r->devs[i];
		d->w = hw_watch_new(hw, d->ch->fd, G_IO_IN, cq_io, d);
		d->async_w = hw_watch_new(hw, d->ctx->async_fd, G_IO_IN, async_io, d);
	}
	return KVB_OK;
}

void hw_rdma_close(hw_t *hw)
{
	hw_rdma_t *r = R(hw);
	if (!r)
		return;
	GList *eps = g_hash_table_get_values(r->eps);
	for (GList *l = eps; l; l = l->next)
		ep_free(l->data);
	g_list_free(eps);
	while (r->retired.head)
		ep_free(g_queue_pop_head(&r->retired));
	GList *ops = g_hash_table_get_keys(r->ops);
	g_list_free_full(ops, g_free);
	for (uint32_t i = 0; i < r->n_devs; i++) {
		rdma_dev_t *d = &r->devs[i];
		hw_watch_free(d->w);
		hw_watch_free(d->async_w);
		hw_rdma_device_close(d);
	}
	g_hash_table_destroy(r->eps);
	g_hash_table_destroy(r->ops);
	hw_deadline_free(r->watchdog);
	hw_deadline_free(r->prober);
	g_hash_table_destroy(r->probes);
	g_free(r);
	hw->rdma = NULL;
}

/* ------------------------------------------------------------------------ */
/* endpoints                                                                */

static struct ibv_qp *qp_create(rdma_dev_t *d, uint32_t max_wr)
{
	struct ibv_qp_init_attr a = {
		.send_cq = d->cq, .recv_cq = d->cq, .qp_type = IBV_QPT_RC, .sq_sig_all = 0,
		.cap = {.max_send_wr = max_wr, .max_recv_wr = 1, .max_send_sge = 1, .max_recv_sge = 1,
			.max_inline_data = 64},
	};
	struct ibv_qp *qp = ibv_create_qp(d->pd, &a);
	if (!qp) { /* providers that refuse inline data */
		a.cap.max_inline_data = 0;
		qp = ibv_create_qp(d->pd, &a);
	}
	if (!qp)
		return NULL;
	struct ibv_qp_attr at = {
		.qp_state = IBV_QPS_INIT, .pkey_index = 0, .port_num = d->port,
		.qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ |
				   IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC,
	};
	if (ibv_modify_qp(qp, &at, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) {
		ibv_destroy_qp(qp);
		return NULL;
	}
	return qp;
}

/* INIT -> RTR -> RTS against the peer's QP, with Mooncake's attributes. */
static int qp_connect(rdma_dev_t *d, struct ibv_qp *qp, uint32_t peer_qpn, const uint8_t gid[16],
		      uint16_t lid, char *why, size_t why_len)
{
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTR;
	a.path_mtu = d->mtu;
	a.dest_qp_num = peer_qpn;
	a.rq_psn = 0;
	a.max_dest_rd_atomic = 16;
	a.min_rnr_timer = 12;
	a.ah_attr.is_global = 1;
	memcpy(a.ah_attr.grh.dgid.raw, gid, 16);
	a.ah_attr.grh.sgid_index = (uint8_t)d->gid_index;
	a.ah_attr.grh.hop_limit = 16;
	a.ah_attr.dlid = lid;
	a.ah_attr.sl = 0;
	a.ah_attr.port_num = d->port;
	int rc = ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
				       IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
	if (rc) {
		g_snprintf(why, why_len, "%s: QP %u to RTR (peer QP %u): %s", d->name, qp->qp_num, peer_qpn,
			   g_strerror(rc));
		return KVB_ERR_TRANSPORT;
	}
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTS;
	a.timeout = 14;
	a.retry_cnt = 7;
	a.rnr_retry = 7;
	a.sq_psn = 0;
	a.max_rd_atomic = 16;
	rc = ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
				       IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC);
	if (rc) {
		g_snprintf(why, why_len, "%s: QP %u to RTS: %s", d->name, qp->qp_num, g_strerror(rc));
		return KVB_ERR_TRANSPORT;
	}
	return KVB_OK;
}

static void ep_retire(hw_rdma_t *r, rdma_ep_t *ep, int status, const char *why);

static void watchdog_arm(hw_rdma_t *r)
{
	if (!r->watchdog_armed) {
		r->watchdog_armed = true;
		hw_deadline_arm(r->watchdog, G_GUINT64_CONSTANT(1000000000));
	}
}

/* An endpoint with work posted and no completion for stall_timeout is
 * retired: its QPs go to ERROR, every WR flushes back failed, and the core
 * retries the slices on another NIC.  (A link that died under an RC QP, or
 * a peer that vanished, can otherwise hold WRs for a long time.) */
static void watchdog_fire(void *obj)
{
	hw_rdma_t *r = obj;
	r->watchdog_armed = false;
	uint64_t now = hw_now_ns(), limit = hw_params(r->hw)->rdma_stall_timeout_ns;
	bool busy = false;
	GList *eps = g_hash_table_get_values(r->eps);
	for (GList *l = eps; l; l = l->next) {
		rdma_ep_t *ep = l->data;
		if (!ep->outstanding && ep->state != EP_CONNECTING)
			continue;
		busy = true;
		if (ep->outstanding && limit && now - ep->last_progress_ns > limit) {
			char why[96];
			g_snprintf(why, sizeof(why), "no completion for %.1f s (%" PRIu64 " work requests posted)",
				   (double)(now - ep->last_progress_ns) / 1e9, ep->outstanding);
			ep_retire(r, ep, KVB_ERR_TRANSPORT, why);
		}
	}
	g_list_free(eps);
	if (busy || r->retired.length)
		watchdog_arm(r);
}

/* Port state from the device's async events: a port going down retires its
 * endpoints at once (their WRs flush back failed) and fails new posts on it
 * until the port is ACTIVE again. */
static bool async_io(void *obj, GIOCondition cond)
{
	(void)cond;
	rdma_dev_t *d = obj;
	hw_rdma_t *r = d->r;
	struct ibv_async_event ev;
	while (ibv_get_async_event(d->ctx, &ev) == 0) {
		enum ibv_event_type t = ev.event_type;
		ibv_ack_async_event(&ev);
		if (t == IBV_EVENT_PORT_ERR || t == IBV_EVENT_DEVICE_FATAL) {
			hw_warn(r->hw, "%s: %s", d->name, ibv_event_type_str(t));
			d->port_down = true;
			GList *eps = g_hash_table_get_values(r->eps);
			for (GList *l = eps; l; l = l->next)
				if (((rdma_ep_t *)l->data)->dev == d)
					ep_retire(r, l->data, KVB_ERR_TRANSPORT, "port down");
			g_list_free(eps);
		} else if (t == IBV_EVENT_PORT_ACTIVE) {
			hw_warn(r->hw, "%s: port active again", d->name);
			d->port_down = false;
		} else {
			hw_log(r->hw, "%s: async event %s", d->name, ibv_event_type_str(t));
		}
	}
	return true;
}

static rdma_ep_t *ep_new(hw_rdma_t *r, rdma_dev_t *d, const char *local_path, const char *peer_path)
{
	const kvb_hw_params_t *p = hw_params(r->hw);
	rdma_ep_t *ep = g_new0(rdma_ep_t, 1);
	ep->hw = r->hw;
	ep->dev = d;
	g_strlcpy(ep->local_path, local_path, sizeof(ep->local_path));
	g_strlcpy(ep->peer_path, peer_path, sizeof(ep->peer_path));
	g_snprintf(ep->key, sizeof(ep->key), "%u|%s", d->index, peer_path);
	ep->n_qp = p->qp_per_ep ? p->qp_per_ep : 2;
	g_queue_init(&ep->pending);
	uint32_t max_wr = MIN(p->max_wr ? p->max_wr : 256, d->max_qp_wr);
	for (uint32_t i = 0; i < ep->n_qp; i++) {
		ep->qp[i] = qp_create(d, max_wr);
		if (!ep->qp[i]) {
			hw_set_error(r->hw, "%s: ibv_create_qp: %s", d->name, g_strerror(errno));
			ep_free(ep);
			return NULL;
		}
	}
	g_hash_table_insert(r->eps, ep->key, ep);
	return ep;
}

static void op_finish(hw_rdma_t *r, rdma_op_t *op)
{
	g_hash_table_remove(r->ops, op);
	if (op->link) {
		if (op->link->ops_outstanding)
			op->link->ops_outstanding--;
		if (op->status == KVB_OK) {
			hw_stats(r->hw)->rdma_bytes_posted += op->len;
			hw_stats(r->hw)->nic_bytes[op->nic] += op->len;
		}
		hw_xfer_done(r->hw, op->cookie, op->status, op->nic);
	}
	g_free(op);
}

/* Fail the ops still waiting to be posted; those posted come back flushed. */
static void ep_fail_pending(hw_rdma_t *r, rdma_ep_t *ep, int status)
{
	rdma_op_t *op;
	while ((op = g_queue_pop_head(&ep->pending))) {
		if (op->status == KVB_OK)
			op->status = status;
		op->n_slices = op->posted; /* nothing more goes out */
		if (op->done == op->posted)
			op_finish(r, op);
	}
}

static void ep_free(rdma_ep_t *ep)
{
	hw_call_cancel(ep->call);
	for (uint32_t i = 0; i < ep->n_qp; i++)
		if (ep->qp[i])
			ibv_destroy_qp(ep->qp[i]);
	/* ops left here belong to an instance being closed: no events */
	rdma_op_t *op;
	while ((op = g_queue_pop_head(&ep->pending)))
		op->ep = NULL;
	g_free(ep);
}

/* Take ep out of service: new posts build a fresh endpoint; ep is freed
 * once every WR it carries has come back. */
static void ep_retire(hw_rdma_t *r, rdma_ep_t *ep, int status, const char *why)
{
	if (ep->retired)
		return;
	hw_set_error(r->hw, "rdma endpoint %s -> %s: %s", ep->local_path, ep->peer_path, why);
	hw_warn(r->hw, "rdma endpoint %s -> %s retired: %s", ep->local_path, ep->peer_path, why);
	ep->state = EP_ERROR;
	ep->retired = true;
	g_hash_table_remove(r->eps, ep->key);
	hw_call_cancel(ep->call);
	ep->call = NULL;
	ep_fail_pending(r, ep, status);
	/* move the QPs to ERROR so posted WRs flush back now */
	for (uint32_t i = 0; i < ep->n_qp; i++) {
		struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};
		if (ep->qp[i])
			ibv_modify_qp(ep->qp[i], &a, IBV_QP_STATE);
	}
	if (ep->outstanding == 0)
		ep_free(ep);
	else
		g_queue_push_tail(&r->retired, ep);
}

/* Post as many slices of ep's pending ops as the QPs have room for. */
static void ep_drain(hw_rdma_t *r, rdma_ep_t *ep)
{
	const kvb_hw_params_t *p = hw_params(r->hw);
	uint32_t max_wr = MIN(p->max_wr ? p->max_wr : 256, ep->dev->max_qp_wr);
	while (ep->state == EP_UP && ep->pending.head) {
		rdma_op_t *op = ep->pending.head->data;
		uint32_t q = ep->next_qp, tries = 0;
		while (ep->qp_out[q] >= max_wr && tries++ < ep->n_qp)
			q = (q + 1) % ep->n_qp;
		if (ep->qp_out[q] >= max_wr)
			return; /* every QP full: completions will call us again */
		uint64_t off = (uint64_t)op->posted * op->slice_len;
		uint64_t len = op->posted + 1 == op->n_slices ? op->len - off : op->slice_len;
		struct ibv_sge sge = {.addr = op->laddr + off, .length = (uint32_t)len, .lkey = op->lkey};
		struct ibv_send_wr wr = {
			.wr_id = (uint64_t)(uintptr_t)op, .sg_list = &sge, .num_sge = 1,
			.opcode = op->opcode, .send_flags = IBV_SEND_SIGNALED,
			.wr.rdma = {.remote_addr = op->raddr + off, .rkey = op->rkey},
		};
		struct ibv_send_wr *bad = NULL;
		int rc = ibv_post_send(ep->qp[q], &wr, &bad);
		if (rc) {
			char why[128];
			g_snprintf(why, sizeof(why), "ibv_post_send: %s", g_strerror(rc));
			ep_retire(r, ep, KVB_ERR_TRANSPORT, why);
			return;
		}
		ep->qp_out[q]++;
		if (ep->outstanding++ == 0)
			ep->last_progress_ns = hw_now_ns();
		watchdog_arm(r);
		ep->next_qp = (q + 1) % ep->n_qp;
		if (++op->posted == op->n_slices)
			g_queue_pop_head(&ep->pending);
	}
}

/* This side's half of a Connection message: our QPs, GID and LID. */
static void ep_describe(const rdma_ep_t *ep, kvb_mc_handshake_t *hs)
{
	hs->n_qp = ep->n_qp;
	for (uint32_t i = 0; i < ep->n_qp; i++)
		hs->qp_num[i] = ep->qp[i]->qp_num;
	hs->has_gid = true;
	memcpy(hs->local_gid, ep->dev->gid.raw, 16);
	hs->local_lid = ep->dev->lid;
	hs->kvb_path_mtu = (uint32_t)hw_rdma_mtu_bytes(ep->dev->mtu);
}

static bool ep_reply_ok(rdma_ep_t *ep, const kvb_mc_handshake_t *hs, char *why, size_t why_len)
{
	if (hs->reply_msg[0]) {
		g_snprintf(why, why_len, "the peer refused the connection: %s", hs->reply_msg);
		return false;
	}
	if (strcmp(hs->local_nic_path, ep->peer_path) || strcmp(hs->peer_nic_path, ep->local_path)) {
		g_snprintf(why, why_len, "reply names %s -> %s, expected %s -> %s", hs->local_nic_path,
			   hs->peer_nic_path, ep->peer_path, ep->local_path);
		return false;
	}
	if (hs->kvb_path_mtu && hs->kvb_path_mtu != (uint32_t)hw_rdma_mtu_bytes(ep->dev->mtu)) {
		g_snprintf(why, why_len, "path MTU mismatch: the peer's %s uses %u, %s here uses %d (RC "
			   "needs the same on both sides: set MC_MTU equal)", hs->local_nic_path,
			   hs->kvb_path_mtu, ep->dev->name, hw_rdma_mtu_bytes(ep->dev->mtu));
		return false;
	}
	if (hs->n_qp != ep->n_qp) {
		g_snprintf(why, why_len, "QP count mismatch: the peer has %u per endpoint, we have %u "
			   "(MC_NUM_QP_PER_EP must agree)", hs->n_qp, ep->n_qp);
		return false;
	}
	return true;
}

static void ack_done(void *obj, int status, const char *why, kvb_mc_msg_type_t type,
		     const uint8_t *payload, size_t len)
{
	(void)obj; (void)status; (void)why; (void)type; (void)payload; (void)len;
}

static void ep_handshake_reply(void *obj, int status, const char *why, kvb_mc_msg_type_t type,
			       const uint8_t *payload, size_t len)
{
	rdma_ep_t *ep = obj;
	hw_rdma_t *r = R(ep->hw);
	ep->call = NULL;
	char reason[KVB_ERR_MSG_MAX + 128];
	if (status != KVB_OK) {
		g_snprintf(reason, sizeof(reason), "handshake: %s", why);
		ep_retire(r, ep, status == KVB_ERR_TIMEOUT ? KVB_ERR_TRANSPORT : KVB_ERR_PEER, reason);
		return;
	}
	kvb_mc_handshake_t hs;
	kvb_err_t err;
	if (type != KVB_MC_CONNECTION ||
	    kvb_mc_handshake_from_json((const char *)payload, len, &hs, &err) != KVB_OK) {
		g_snprintf(reason, sizeof(reason), "handshake reply: %s",
			   type != KVB_MC_CONNECTION ? "wrong type" : err.msg);
		ep_retire(r, ep, KVB_ERR_PEER, reason);
		return;
	}
	if (!ep_reply_ok(ep, &hs, reason, sizeof(reason)) || !hs.has_gid) {
		if (!hs.has_gid)
			g_strlcpy(reason, "reply carries no local_gid (Mooncake < 0.3.11 is not supported)",
				  sizeof(reason));
		ep_retire(r, ep, KVB_ERR_PEER, reason);
		return;
	}
	for (uint32_t i = 0; i < ep->n_qp; i++) {
		ep->peer_qpn[i] = hs.qp_num[i];
		if (qp_connect(ep->dev, ep->qp[i], hs.qp_num[i], hs.local_gid, (uint16_t)hs.local_lid, reason,
			       sizeof(reason)) != KVB_OK) {
			ep_retire(r, ep, KVB_ERR_TRANSPORT, reason);
			return;
		}
	}
	ep->state = EP_UP;
	hw_log(ep->hw, "rdma endpoint %s -> %s up (%u QPs)", ep->local_path, ep->peer_path, ep->n_qp);
	if (hs.ready_ack >= 0) {
		/* the peer waits for our ack before it posts on this endpoint */
		kvb_mc_handshake_t ack;
		memset(&ack, 0, sizeof(ack));
		g_strlcpy(ack.local_nic_path, ep->local_path, sizeof(ack.local_nic_path));
		g_strlcpy(ack.peer_nic_path, ep->peer_path, sizeof(ack.peer_nic_path));
		ep_describe(ep, &ack);
		ack.ready_ack = 1;
		GString *js = g_string_new(NULL);
		if (kvb_mc_handshake_to_json(&ack, js, NULL) == KVB_OK) {
			char host[KVB_MC_NAME_MAX], dev[KVB_MC_NAME_MAX];
			uint16_t port;
			if (kvb_mc_nic_path_split(ep->peer_path, host, sizeof(host), dev, sizeof(dev), NULL) ==
				    KVB_OK &&
			    kvb_mc_parse_host_port(host, host, sizeof(host), &port, NULL) == KVB_OK)
				hw_call_start(ep->hw, host, port, KVB_MC_CONNECTION, js->str, js->len, ack_done, NULL);
		}
		g_string_free(js, TRUE);
	}
	ep_drain(r, ep);
}

/* The endpoint from local device d to the peer NIC path, connecting it
 * (type-0 handshake to the peer's handshake port) if it is new. */
static rdma_ep_t *ep_get(hw_rdma_t *r, hw_link_t *p, rdma_dev_t *d, uint32_t peer_dev)
{
	const char *server = p->seg.rdma_server_name[0] ? p->seg.rdma_server_name : p->seg.name;
	char peer_path[KVB_MC_NAME_MAX], local_path[KVB_MC_NAME_MAX], key[KVB_MC_NAME_MAX * 2];
	g_snprintf(peer_path, sizeof(peer_path), "%s@%s", server, p->seg.devices[peer_dev].name);
	g_snprintf(local_path, sizeof(local_path), "%s@%s", r->hw->segment, d->name);
	g_snprintf(key, sizeof(key), "%u|%s", d->index, peer_path);
	rdma_ep_t *ep = g_hash_table_lookup(r->eps, key);
	if (ep)
		return ep;
	ep = ep_new(r, d, local_path, peer_path);
	if (!ep)
		return NULL;
	ep->state = EP_CONNECTING;
	kvb_mc_handshake_t hs;
	memset(&hs, 0, sizeof(hs));
	g_strlcpy(hs.local_nic_path, local_path, sizeof(hs.local_nic_path));
	g_strlcpy(hs.peer_nic_path, peer_path, sizeof(hs.peer_nic_path));
	ep_describe(ep, &hs);
	hs.ready_ack = -1; /* a legacy-style active side: ready once we reach RTS */
	GString *js = g_string_new(NULL);
	kvb_err_t err;
	char host[KVB_MC_NAME_MAX];
	uint16_t port;
	if (kvb_mc_handshake_to_json(&hs, js, &err) != KVB_OK ||
	    kvb_mc_parse_host_port(server, host, sizeof(host), &port, &err) != KVB_OK) {
		g_string_free(js, TRUE);
		ep_retire(r, ep, KVB_ERR_PEER, err.msg);
		return NULL;
	}
	ep->call = hw_call_start(r->hw, host, port, KVB_MC_CONNECTION, js->str, js->len,
				 ep_handshake_reply, ep);
	g_string_free(js, TRUE);
	return ep;
}

/* Passive side of the type-0 handshake: the reply JSON (g_free), always one
 * (a refusal carries reply_msg). */
char *hw_rdma_handshake(hw_t *hw, const kvb_mc_handshake_t *req)
{
	hw_rdma_t *r = R(hw);
	kvb_mc_handshake_t rep;
	memset(&rep, 0, sizeof(rep));
	g_strlcpy(rep.local_nic_path, req->peer_nic_path, sizeof(rep.local_nic_path));
	g_strlcpy(rep.peer_nic_path, req->local_nic_path, sizeof(rep.peer_nic_path));
	rep.ready_ack = req->ready_ack >= 0 ? 0 : -1;
	char server[KVB_MC_NAME_MAX], devname[KVB_MC_NAME_MAX];
	rdma_dev_t *d = NULL;
	if (!r) {
		g_strlcpy(rep.reply_msg, "kvbridge: this endpoint has no RDMA devices (tcp only)",
			  sizeof(rep.reply_msg));
	} else if (kvb_mc_nic_path_split(req->peer_nic_path, server, sizeof(server), devname,
					 sizeof(devname), NULL) != KVB_OK || strcmp(server, hw->segment)) {
		g_snprintf(rep.reply_msg, sizeof(rep.reply_msg), "peer_nic_path %s is not a NIC of %s",
			   req->peer_nic_path, hw->segment);
	} else {
		for (uint32_t i = 0; i < r->n_devs && !d; i++)
			if (!strcmp(r->devs[i].name, devname))
				d = &r->devs[i];
		if (!d)
			g_snprintf(rep.reply_msg, sizeof(rep.reply_msg), "no RDMA device %s here", devname);
	}
	if (d && !req->has_gid)
		g_strlcpy(rep.reply_msg, "no local_gid in the request", sizeof(rep.reply_msg));
	const kvb_hw_params_t *p = hw_params(hw);
	uint32_t n_qp = p->qp_per_ep ? p->qp_per_ep : 2;
	if (d && !rep.reply_msg[0] && req->kvb_path_mtu && req->kvb_path_mtu != (uint32_t)hw_rdma_mtu_bytes(d->mtu))
		g_snprintf(rep.reply_msg, sizeof(rep.reply_msg), "path MTU mismatch: %s uses %u, %s here "
			   "uses %d (RC needs the same on both sides: set MC_MTU equal)", req->local_nic_path,
			   req->kvb_path_mtu, d->name, hw_rdma_mtu_bytes(d->mtu));
	if (d && !rep.reply_msg[0] && req->n_qp != n_qp)
		g_snprintf(rep.reply_msg, sizeof(rep.reply_msg), "QP count mismatch: %u requested, %u here "
			   "(MC_NUM_QP_PER_EP must agree)", req->n_qp, n_qp);
	if (!rep.reply_msg[0]) {
		char key[KVB_MC_NAME_MAX * 2];
		g_snprintf(key, sizeof(key), "%u|%s", d->index, req->local_nic_path);
		rdma_ep_t *ep = g_hash_table_lookup(r->eps, key);
		bool same = ep && ep->state == EP_UP && ep->n_qp == req->n_qp;
		for (uint32_t i = 0; same && i < ep->n_qp; i++)
			same = ep->peer_qpn[i] == req->qp_num[i];
		if (req->ready_ack == 1) {
			/* the active side's ack: nothing to change, QPNs must match */
			if (!same)
				g_strlcpy(rep.reply_msg, "ready ack for an unknown endpoint", sizeof(rep.reply_msg));
			else
				rep.ready_ack = -1;
		} else if (!same) {
			if (ep) /* a restarted peer (new QPNs) or a crossing connect: rebuild */
				ep_retire(r, ep, KVB_ERR_TRANSPORT, "the peer reconnected with new queue pairs");
			ep = ep_new(r, d, req->peer_nic_path, req->local_nic_path);
			char why[256] = "cannot create queue pairs";
			bool ok = ep != NULL;
			for (uint32_t i = 0; ok && i < ep->n_qp; i++) {
				ep->peer_qpn[i] = req->qp_num[i];
				ok = qp_connect(d, ep->qp[i], req->qp_num[i], req->local_gid, (uint16_t)req->local_lid,
						why, sizeof(why)) == KVB_OK;
			}
			if (!ok) {
				if (ep)
					ep_retire(r, ep, KVB_ERR_TRANSPORT, why);
				g_strlcpy(rep.reply_msg, why, sizeof(rep.reply_msg));
			} else {
				ep->state = EP_UP;
				ep->passive = true;
				prober_arm(r);
				hw_log(hw, "rdma endpoint %s -> %s up (passive)", ep->local_path, ep->peer_path);
			}
		}
		if (!rep.reply_msg[0] && req->ready_ack != 1)
			ep_describe(ep, &rep);
	}
	if (rep.reply_msg[0])
		hw_warn(hw, "rdma handshake from %s refused: %s", req->local_nic_path, rep.reply_msg);
	GString *out = g_string_new(NULL);
	kvb_mc_handshake_to_json(&rep, out, NULL);
	return g_string_free(out, FALSE);
}

/* ------------------------------------------------------------------------ */
/* posting and completions                                                  */

bool hw_rdma_link_usable(hw_link_t *p)
{
	return R(p->hw) && p->have_seg && !strcmp(p->seg.protocol, "rdma") && p->seg.n_devices > 0;
}

bool hw_rdma_remote_mirrored(hw_link_t *p, const kvb_slice_op_t *op)
{
	if (!p->seg.n_devices)
		return false;
	const kvb_mc_buffer_t *b = kvb_mc_segment_find(&p->seg, op->remote_addr, op->len);
	uint32_t peer_dev = op->remote_nic % p->seg.n_devices;
	return b && b->mirror_rkey && b->n_keys == p->seg.n_devices && b->mirror_rkey[peer_dev];
}

int hw_rdma_post(hw_link_t *p, const kvb_slice_op_t *op, hw_mr_t *m, bool to_mirror)
{
	hw_t *hw = p->hw;
	hw_rdma_t *r = R(hw);
	if (op->local_nic >= r->n_devs) {
		hw_set_error(hw, "xfer_post: local nic %u of %u", op->local_nic, r->n_devs);
		return KVB_ERR_INVALID;
	}
	if (!op->len || op->len > UINT32_MAX * (uint64_t)op->n_slices || !op->n_slices ||
	    (op->n_slices > 1 && op->slice_len > UINT32_MAX) ||
	    (op->opcode != KVB_XFER_WRITE && op->opcode != KVB_XFER_READ)) {
		hw_set_error(hw, "xfer_post: bad op (len %" PRIu64 ", %u slices)", op->len, op->n_slices);
		return KVB_ERR_INVALID;
	}
	if (!m->rdma) {
		hw_set_error(hw, "xfer_post: local range 0x%" PRIx64 " + %" PRIu64 " is not registered memory",
			     op->local_addr, op->len);
		return KVB_ERR_RANGE;
	}
	if (!((rdma_mrs_t *)m->rdma)->mr[op->local_nic]) {
		hw_set_error(hw, "xfer_post: %s cannot reach the GPU memory at 0x%" PRIx64 " (staging path)",
			     r->devs[op->local_nic].name, op->local_addr);
		return KVB_ERR_INVALID;
	}
	/* the whole op must lie in one remote buffer entry: no WR crosses one */
	const kvb_mc_buffer_t *b = kvb_mc_segment_find(&p->seg, op->remote_addr, op->len);
	if (!b) {
		hw_set_error(hw, "xfer_post: remote range 0x%" PRIx64 " + %" PRIu64 " is outside %s's "
			     "registered buffers", op->remote_addr, op->len, p->seg.name);
		return KVB_ERR_RANGE;
	}
	uint32_t peer_dev = op->remote_nic % p->seg.n_devices;
	if (b->n_keys != p->seg.n_devices) {
		hw_set_error(hw, "xfer_post: %s's buffer has %u keys for %u devices", p->seg.name, b->n_keys,
			     p->seg.n_devices);
		return KVB_ERR_PROTOCOL;
	}
	if (!to_mirror && b->mirror_rkey && b->mirror_rkey[peer_dev]) {
		/* kvb_hw_staging.c routes these (hw_rdma_remote_mirrored) */
		hw_set_error(hw, "xfer_post: 0x%" PRIx64 " is GPU memory behind %s's mirror", op->remote_addr,
			     p->seg.name);
		return KVB_ERR_INVALID;
	}
	rdma_dev_t *d = &r->devs[op->local_nic];
	if (d->port_down) {
		/* fail it the way a completion would: the core retries it on another NIC */
		hw_set_error(hw, "%s: port %u is down", d->name, d->port);
		p->ops_outstanding++;
		rdma_op_t *o = g_new0(rdma_op_t, 1);
		o->link = p;
		o->cookie = op->cookie;
		o->nic = op->local_nic;
		o->status = KVB_ERR_TRANSPORT;
		g_hash_table_add(r->ops, o);
		op_finish(r, o);
		return KVB_OK;
	}
	rdma_ep_t *ep = ep_get(r, p, d, peer_dev);
	if (!ep)
		return KVB_ERR_TRANSPORT;
	rdma_op_t *o = g_new0(rdma_op_t, 1);
	o->link = p;
	o->cookie = op->cookie;
	o->nic = op->local_nic;
	o->n_slices = op->n_slices;
	o->len = op->len;
	o->slice_len = op->n_slices > 1 ? op->slice_len : op->len;
	o->laddr = op->local_addr;
	o->raddr = op->remote_addr;
	o->lkey = ((rdma_mrs_t *)m->rdma)->mr[op->local_nic]->lkey;
	/* a key the caller names, a window the peer opened for this pull, else
	 * the descriptor's key */
	uint32_t wkey = 0;
	const kvb_rkey_t *k = op->remote_key;
	if (k && k->len == HW_RKEY_EXPLICIT_LEN && !memcmp(k->bytes, HW_RKEY_EXPLICIT_TAG, 4))
		memcpy(&o->rkey, k->bytes + 4, 4);
	else if (!to_mirror)
		wkey = hw_link_window_rkey(p, op->remote_addr, op->len, peer_dev);
	if (!o->rkey)
		o->rkey = wkey ? wkey : to_mirror ? b->mirror_rkey[peer_dev] : b->rkey[peer_dev];
	if (!o->rkey) {
		g_free(o);
		if (to_mirror)
			hw_set_error(hw, "xfer_post: %s's device %s cannot reach its buffer at 0x%" PRIx64
					 " (GPU memory without a key on that device)",
				     p->seg.name, p->seg.devices[peer_dev].name, op->remote_addr);
		else
			hw_set_error(hw, "xfer_post: no key for %s's 0x%" PRIx64 " + %" PRIu64 " on %s: "
					 "its memory is closed and no window of a pull in progress covers it",
				     p->seg.name, op->remote_addr, op->len, p->seg.devices[peer_dev].name);
		return KVB_ERR_RANGE;
	}
	if (wkey)
		hw->stats.rdma_window_posts++;
	o->opcode = op->opcode == KVB_XFER_WRITE ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ;
	o->ep = ep;
	g_hash_table_add(r->ops, o);
	p->ops_outstanding++;
	g_queue_push_tail(&ep->pending, o);
	ep_drain(r, ep);
	return KVB_OK;
}

void hw_rdma_peer_gone(hw_link_t *p)
{
	hw_rdma_t *r = R(p->hw);
	if (!r || !p->have_seg || !p->seg.name[0])
		return;
	char prefix[KVB_MC_NAME_MAX + 2];
	g_snprintf(prefix, sizeof(prefix), "%s@", p->seg.rdma_server_name[0] ? p->seg.rdma_server_name
										 : p->seg.name);
	GList *eps = g_hash_table_get_values(r->eps);
	for (GList *l = eps; l; l = l->next) {
		rdma_ep_t *ep = l->data;
		if (g_str_has_prefix(ep->peer_path, prefix))
			ep_retire(r, ep, KVB_ERR_PEER, "the peer's control stream closed");
	}
	g_list_free(eps);
}

/* ---- peers that keep no stream ---------------------------------------------
 * A Mooncake engine that connected queue pairs to us keeps no control
 * stream, so nothing says when it dies; its QPs would live as long as this
 * instance.  Every rdma_peer_probe_ns the handshake port of each peer with
 * passive endpoints gets a Probe (type 3, which Mooncake answers); two
 * failures in a row retire that peer's endpoints.  A live peer that lost
 * them reconnects on its next post, as after any endpoint error. */

typedef struct peer_probe {
	hw_rdma_t *r;
	char server[KVB_MC_NAME_MAX];
	hw_call_t *call;
	uint32_t failures;
	bool seen;                        /* still has endpoints (this round) */
} peer_probe_t;

static void probe_free(void *obj)
{
	peer_probe_t *pp = obj;
	hw_call_cancel(pp->call);
	g_free(pp);
}

static void prober_arm(hw_rdma_t *r)
{
	uint64_t every = hw_params(r->hw)->rdma_peer_probe_ns;
	if (every && !r->prober_armed) {
		r->prober_armed = true;
		hw_deadline_arm(r->prober, every);
	}
}

static void retire_server(hw_rdma_t *r, const char *server, int status, const char *why)
{
	char prefix[KVB_MC_NAME_MAX + 2];
	g_snprintf(prefix, sizeof(prefix), "%s@", server);
	GList *eps = g_hash_table_get_values(r->eps);
	for (GList *l = eps; l; l = l->next) {
		rdma_ep_t *ep = l->data;
		if (g_str_has_prefix(ep->peer_path, prefix))
			ep_retire(r, ep, status, why);
	}
	g_list_free(eps);
}

static void probe_done(void *obj, int status, const char *why, kvb_mc_msg_type_t type,
		       const uint8_t *payload, size_t len)
{
	peer_probe_t *pp = obj;
	(void)type;
	(void)payload;
	(void)len;
	pp->call = NULL;
	if (status == KVB_OK) {
		pp->failures = 0;
		return;
	}
	if (++pp->failures < 2)
		return;
	char msg[KVB_MC_NAME_MAX + 200];
	g_snprintf(msg, sizeof(msg), "peer %s no longer answers its handshake port (%s)", pp->server, why);
	hw_warn(pp->r->hw, "rdma: %s: retiring its endpoints", msg);
	hw_rdma_t *r = pp->r;
	char server[KVB_MC_NAME_MAX];
	g_strlcpy(server, pp->server, sizeof(server));
	g_hash_table_remove(r->probes, server); /* frees pp */
	retire_server(r, server, KVB_ERR_PEER, msg);
}

static void prober_fire(void *obj)
{
	hw_rdma_t *r = obj;
	r->prober_armed = false;
	GHashTableIter it;
	gpointer v;
	g_hash_table_iter_init(&it, r->probes);
	while (g_hash_table_iter_next(&it, NULL, &v))
		((peer_probe_t *)v)->seen = false;
	g_hash_table_iter_init(&it, r->eps);
	while (g_hash_table_iter_next(&it, NULL, &v)) {
		rdma_ep_t *ep = v;
		char server[KVB_MC_NAME_MAX], dev[KVB_MC_NAME_MAX];
		if (!ep->passive || ep->state != EP_UP ||
		    kvb_mc_nic_path_split(ep->peer_path, server, sizeof(server), dev, sizeof(dev), NULL) != KVB_OK)
			continue;
		peer_probe_t *pp = g_hash_table_lookup(r->probes, server);
		if (!pp) {
			pp = g_new0(peer_probe_t, 1);
			pp->r = r;
			g_strlcpy(pp->server, server, sizeof(pp->server));
			g_hash_table_insert(r->probes, pp->server, pp);
		}
		pp->seen = true;
	}
	/* peers without endpoints any more are forgotten; the others probed */
	g_hash_table_iter_init(&it, r->probes);
	while (g_hash_table_iter_next(&it, NULL, &v)) {
		peer_probe_t *pp = v;
		if (!pp->seen) {
			g_hash_table_iter_remove(&it);
			continue;
		}
		char host[KVB_MC_NAME_MAX];
		uint16_t port;
		if (pp->call || kvb_mc_parse_host_port(pp->server, host, sizeof(host), &port, NULL) != KVB_OK)
			continue;
		pp->call = hw_call_start(r->hw, host, port, KVB_MC_PROBE, "{}", 2, probe_done, pp);
	}
	if (g_hash_table_size(r->probes))
		prober_arm(r);
}

/* The core closed p's conn: its ops still in flight complete silently. */
void hw_rdma_link_clear(hw_link_t *p)
{
	hw_rdma_t *r = R(p->hw);
	if (!r)
		return;
	GHashTableIter it;
	gpointer k;
	g_hash_table_iter_init(&it, r->ops);
	while (g_hash_table_iter_next(&it, &k, NULL)) {
		rdma_op_t *o = k;
		if (o->link == p)
			o->link = NULL;
	}
}

static void cq_poll(hw_rdma_t *r, rdma_dev_t *d)
{
	struct ibv_wc wc[POLL_BATCH];
	int n;
	while ((n = ibv_poll_cq(d->cq, POLL_BATCH, wc)) > 0) {
		for (int i = 0; i < n; i++) {
			rdma_op_t *o = (rdma_op_t *)(uintptr_t)wc[i].wr_id;
			rdma_ep_t *ep = o->ep;
			ep->last_progress_ns = hw_now_ns();
			for (uint32_t q = 0; q < ep->n_qp; q++)
				if (ep->qp[q]->qp_num == wc[i].qp_num)
					ep->qp_out[q]--;
			/* this WR still counts as outstanding while ep_retire runs, so
			 * that a retire on the endpoint's last WR queues ep instead of
			 * freeing it under us; it is freed below */
			if (wc[i].status != IBV_WC_SUCCESS) {
				/* with the peer's control stream gone, the peer is the
				 * cause, not this NIC: no retry elsewhere, no NIC blamed */
				if (o->status == KVB_OK)
					o->status = o->link && !o->link->down ? KVB_ERR_TRANSPORT
											      : KVB_ERR_PEER;
				if (wc[i].status != IBV_WC_WR_FLUSH_ERR) {
					char why[160];
					g_snprintf(why, sizeof(why), "work completion %s (vendor error 0x%x) on QP %u",
						   ibv_wc_status_str(wc[i].status), wc[i].vendor_err, wc[i].qp_num);
					ep_retire(r, ep, KVB_ERR_TRANSPORT, why);
				}
			}
			ep->outstanding--;
			/* a failed op's unposted slices were dropped (n_slices = posted) */
			if (++o->done == o->n_slices)
				op_finish(r, o);
			if (ep->retired && ep->outstanding == 0) {
				g_queue_remove(&r->retired, ep);
				ep_free(ep);
			} else if (!ep->retired) {
				ep_drain(r, ep);
			}
		}
	}
	if (n < 0)
		hw_set_error(r->hw, "%s: ibv_poll_cq failed", d->name);
}

static bool cq_io(void *obj, GIOCondition cond)
{
	(void)cond;
	rdma_dev_t *d = obj;
	hw_rdma_t *r = d->r;
	struct ibv_cq *cq;
	void *cq_ctx;
	if (ibv_get_cq_event(d->ch, &cq, &cq_ctx) == 0) {
		ibv_ack_cq_events(cq, 1);
		ibv_req_notify_cq(cq, 0);
	}
	cq_poll(r, d);
	return true;
}
