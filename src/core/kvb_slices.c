/*
 * The connector's slices: a send's copies cut into slices and posted over
 * the NICs, completions, retries on another NIC, NIC errors.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>

#include "kvb_connector_int.h"

/* ------------------------------------------------------------------------ */
/* slices                                                                   */

static void inflight_link(kvb_connector_t *c, slice_t *sl)
{
	sl->prev = NULL;
	sl->next = c->inflight;
	if (c->inflight)
		c->inflight->prev = sl;
	c->inflight = sl;
}

void inflight_unlink(kvb_connector_t *c, slice_t *sl)
{
	if (sl->prev)
		sl->prev->next = sl->next;
	else
		c->inflight = sl->next;
	if (sl->next)
		sl->next->prev = sl->prev;
	sl->prev = sl->next = NULL;
}

static bool any_nic_up(const kvb_connector_t *c)
{
	for (uint32_t i = 0; i < c->n_nics; i++)
		if (!c->nic_down[i])
			return true;
	return false;
}

/* Account a posted op: it is in flight until its completion. */
static void op_posted(kvb_connector_t *c, send_t *s, slice_t *op)
{
	if (s->slices == 0 && s->retries == 0)
		s->post_ns = now_ns(c);
	s->outstanding++;
	s->slices += op->n_slices;
	s->nic_mask |= UINT64_C(1) << op->nic;
	c->nic_inflight_bytes[op->nic] += op->len;
	c->nic_inflight_slices[op->nic] += op->n_slices;
	c->counters.slices_posted += op->n_slices;
	inflight_link(c, op);
}

/* An op the backend refused at post time: no completion will come. */
static void op_refused(kvb_connector_t *c, send_t *s, slice_t *op, int rc)
{
	char reason[KVB_REASON_MAX];
	textf(reason, sizeof(reason), "post on NIC %u failed: %s (%s)", op->nic, kvb_strerror(rc),
	      c->be->ops->last_error(c->be));
	c->counters.slices_failed += op->n_slices;
	g_free(op);
	send_stop(s, rc == KVB_ERR_RANGE || rc == KVB_ERR_PEER ? rc : KVB_ERR_TRANSPORT, reason);
}

static void op_fill(const kvb_connector_t *c, const send_t *s, const slice_t *op, kvb_slice_op_t *wr)
{
	*wr = (kvb_slice_op_t){
		.opcode = KVB_XFER_WRITE,
		.local_nic = op->nic,
		.remote_nic = op->remote_nic,
		.local_addr = op->src,
		.local_mr = c->mrs[op->src_region],
		.remote_addr = op->dst,
		.remote_key = &s->pull->msg.rkeys[op->dst_region],
		.len = op->len,
		.cookie = (uint64_t)(uintptr_t)op,
		.n_slices = op->n_slices,
		.slice_len = op->slice_len,
		.stream = s->stream,
	};
}

/* Room per NIC for new slices: queue depth minus what is in flight, 0 for
 * NICs that are down. */
static uint32_t nic_rooms(const kvb_connector_t *c, uint32_t *room, bool *up)
{
	uint32_t total = 0;
	for (uint32_t i = 0; i < c->n_nics; i++) {
		uint32_t used = c->nic_inflight_slices[i];
		room[i] = c->nic_down[i] || used >= c->cfg.nic_queue_depth ? 0 : c->cfg.nic_queue_depth - used;
		up[i] = room[i] > 0;
		total += room[i];
	}
	return total;
}

/* Re-post the head of the retry queue on another NIC (one op, whole). */
static int send_post_retry(kvb_connector_t *c, send_t *s, int *posted)
{
	slice_t *op = g_queue_peek_head(&s->retry);
	uint32_t room[KVB_MAX_NICS];
	bool up[KVB_MAX_NICS];
	if (nic_rooms(c, room, up) == 0)
		return KVB_ERR_NO_RESOURCE;
	kvb_nic_view_t view = {c->n_nics, c->nic_inflight_bytes, up};
	kvb_pick_ctx_t ctx = {c->locations[op->src_region], op->len, op->attempts, op->avoid, s->stream};
	int nic = kvb_nic_policy_pick(c->policy, &ctx, &view);
	if (nic < 0)
		return KVB_ERR_NO_RESOURCE;
	op->nic = (uint32_t)nic;
	op->remote_nic = (uint32_t)nic % s->pull->msg.n_nics;
	kvb_slice_op_t wr;
	op_fill(c, s, op, &wr);
	size_t n_posted = 0;
	int rc = c->be->ops->xfer_post(c->be, s->pull->peer->conn, &wr, 1, &n_posted);
	if (rc == KVB_ERR_NO_RESOURCE || (rc == KVB_OK && n_posted == 0)) {
		c->counters.post_backpressure++;
		return KVB_ERR_NO_RESOURCE;
	}
	g_queue_pop_head(&s->retry);
	if (rc != KVB_OK) {
		op_refused(c, s, op, rc);
		return KVB_OK;
	}
	op_posted(c, s, op);
	(*posted)++;
	return KVB_INPROGRESS;
}

/* Slice the rest of the current copy and place its slices on the NICs with
 * the policy's bulk placement: every NIC that got slices gets one op with a
 * contiguous part of the copy (the counts per NIC are the policy's; which
 * bytes ride on which NIC is not a policy decision).  The last op carries
 * the copy's final, possibly longer, slice. */
static int send_post_copy(kvb_connector_t *c, send_t *s, int *posted)
{
	const kvb_copy_t *cp = &s->copies[s->cursor];
	uint64_t remaining = cp->len - s->cursor_off;
	uint64_t slice = c->cfg.slice_size, frag = c->cfg.fragment_limit;
	uint64_t n_total = kvb_slice_count(remaining, slice, frag);
	uint32_t room[KVB_MAX_NICS], counts[KVB_MAX_NICS];
	bool up[KVB_MAX_NICS];
	if (nic_rooms(c, room, up) == 0)
		return KVB_ERR_NO_RESOURCE;
	kvb_nic_view_t view = {c->n_nics, c->nic_inflight_bytes, up};
	kvb_pick_ctx_t ctx = {c->locations[cp->src_region], slice, 0, KVB_NIC_NONE, s->stream};
	uint32_t want = n_total > UINT32_MAX ? UINT32_MAX : (uint32_t)n_total;
	int placed = kvb_nic_policy_pick_bulk(c->policy, &ctx, &view, room, want, counts);
	if (placed <= 0)
		return KVB_ERR_NO_RESOURCE;

	kvb_slice_op_t wr[KVB_MAX_NICS];
	slice_t *ops[KVB_MAX_NICS];
	size_t n_ops = 0;
	uint64_t off = s->cursor_off, left = n_total;
	for (uint32_t nic = 0; nic < c->n_nics; nic++) {
		if (!counts[nic])
			continue;
		uint32_t cnt = counts[nic];
		/* the copy's last slice absorbs the tail (kvb_slice_next_len) */
		uint64_t len = cnt == left ? cp->len - off : (uint64_t)cnt * slice;
		slice_t *op = g_new0(slice_t, 1);
		op->send = s;
		op->src = cp->src_addr + off;
		op->dst = cp->dst_addr + off;
		op->len = len;
		op->n_slices = cnt;
		op->slice_len = slice;
		op->src_region = cp->src_region;
		op->dst_region = cp->dst_region;
		op->nic = nic;
		op->remote_nic = nic % s->pull->msg.n_nics;
		op->avoid = KVB_NIC_NONE;
		op_fill(c, s, op, &wr[n_ops]);
		ops[n_ops++] = op;
		off += len;
		left -= cnt;
	}
	size_t n_posted = 0;
	int rc = c->be->ops->xfer_post(c->be, s->pull->peer->conn, wr, n_ops, &n_posted);
	for (size_t i = 0; i < n_posted; i++) {
		op_posted(c, s, ops[i]);
		s->cursor_off += ops[i]->len;
		(*posted)++;
	}
	if (s->cursor_off == cp->len) {
		s->cursor++;
		s->cursor_off = 0;
	}
	if (n_posted < n_ops && rc != KVB_OK && rc != KVB_ERR_NO_RESOURCE) {
		/* the op at n_posted was refused; the ops after it were never tried */
		op_refused(c, s, ops[n_posted], rc);
		n_posted++;
	}
	for (size_t i = n_posted; i < n_ops; i++)
		g_free(ops[i]);
	if (rc == KVB_ERR_NO_RESOURCE || (rc == KVB_OK && n_posted < n_ops)) {
		c->counters.post_backpressure++;
		return KVB_ERR_NO_RESOURCE;
	}
	return KVB_INPROGRESS;
}

/* Post up to budget ops of one send.  Returns KVB_OK when the send has
 * nothing more to post now, KVB_INPROGRESS when the budget ran out, or
 * KVB_ERR_NO_RESOURCE when every usable NIC queue is full. */
static int send_post(kvb_connector_t *c, send_t *s, int budget, int *posted)
{
	while (budget-- > 0) {
		if (s->stopped || s->req->fence != KVB_OK || !send_has_work(s))
			return KVB_OK;
		if (!any_nic_up(c)) {
			char reason[KVB_REASON_MAX];
			textf(reason, sizeof(reason), "all %u NICs are down", c->n_nics);
			send_stop(s, KVB_ERR_TRANSPORT, reason);
			return KVB_OK;
		}
		int rc = s->retry.length ? send_post_retry(c, s, posted) : send_post_copy(c, s, posted);
		if (rc == KVB_ERR_NO_RESOURCE)
			return rc;
	}
	return KVB_INPROGRESS;
}

/* Post queued slices, round-robin over sends, until every send is drained
 * or the NICs are full. */
int post_work(kvb_connector_t *c)
{
	int posted = 0;
	while (c->active.length) {
		send_t *s = g_queue_peek_head(&c->active);
		int rc = send_post(c, s, POST_BUDGET, &posted);
		if (rc == KVB_ERR_NO_RESOURCE)
			break;
		if (rc == KVB_OK) {
			active_remove(c, s);
			send_check(c, s);
		} else {
			g_queue_push_tail(&c->active, g_queue_pop_head(&c->active));
		}
	}
	return posted;
}

static void nic_error(kvb_connector_t *c, uint32_t nic)
{
	if (nic >= c->n_nics)
		return;
	c->nic_errors[nic]++;
	if (c->nic_down[nic] || c->nic_errors[nic] < c->cfg.nic_error_threshold)
		return;
	c->nic_down[nic] = true;
	c->counters.nic_down_events++;
	timer_start(c, &c->nic_cooldown[nic], TIMER_NIC_COOLDOWN, NULL, nic,
		    now_ns(c) + c->cfg.nic_cooldown_ns);
}

void on_xfer_done(kvb_connector_t *c, const kvb_event_t *ev)
{
	slice_t *op = (slice_t *)(uintptr_t)ev->cookie;
	send_t *s = op->send;
	inflight_unlink(c, op);
	c->nic_inflight_bytes[op->nic] -= op->len;
	c->nic_inflight_slices[op->nic] -= op->n_slices;
	s->outstanding--;
	if (ev->status == KVB_OK) {
		s->bytes_done += op->len;
		c->counters.bytes_sent += op->len;
		c->nic_errors[op->nic] = 0;
		g_free(op);
	} else {
		c->counters.slices_failed += op->n_slices;
		if (ev->status == KVB_ERR_TRANSPORT)
			nic_error(c, op->nic);
		bool retryable = ev->status == KVB_ERR_TRANSPORT && op->attempts < c->cfg.slice_retries &&
				 !s->stopped && s->req->fence == KVB_OK;
		if (retryable) {
			op->attempts++;
			op->avoid = op->nic;
			s->retries += op->n_slices;
			c->counters.slices_retried += op->n_slices;
			g_queue_push_tail(&s->retry, op);
			active_add(c, s);
		} else {
			char reason[KVB_REASON_MAX];
			textf(reason, sizeof(reason), "%u slices (%" G_GUINT64_FORMAT
			      " bytes) failed on NIC %u after %u attempts: %s (%s)", op->n_slices, op->len,
			      op->nic, op->attempts + 1, kvb_strerror(ev->status), c->be->ops->last_error(c->be));
			int st = ev->status == KVB_ERR_RANGE || ev->status == KVB_ERR_PEER ? ev->status
											 : KVB_ERR_TRANSPORT;
			g_free(op);
			send_stop(s, st, reason);
		}
	}
	send_check(c, s);
}
