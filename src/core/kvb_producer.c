/*
 * The connector's producer side: requests, pulls, leases, sends
 * (state machine: kvb_connector_int.h).
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>

#include "kvb_connector_int.h"

/* ------------------------------------------------------------------------ */
/* producer side                                                            */

void pull_free(pull_t *pl)
{
	if (!pl)
		return;
	kvb_wire_pull_clear(&pl->msg);
	g_free(pl->rank_key);
	g_free(pl);
}

void rank_set(prod_req_t *r, const char *key, rank_state_t st)
{
	g_hash_table_insert(r->ranks, g_strdup(key), GINT_TO_POINTER(st));
}

static void tombstone_add(kvb_connector_t *c, const prod_req_t *r, int status, const char *reason)
{
	if (c->cfg.tombstone_max == 0)
		return;
	tombstone_t *old = g_hash_table_lookup(c->tombstones, r->id);
	if (old) {
		g_hash_table_remove(c->tombstones, r->id);
		g_queue_remove(&c->tomb_order, old);
		g_free(old);
	}
	while (c->tomb_order.length >= c->cfg.tombstone_max) {
		tombstone_t *t = g_queue_pop_head(&c->tomb_order);
		g_hash_table_remove(c->tombstones, t->id);
		g_free(t);
	}
	tombstone_t *t = g_new0(tombstone_t, 1);
	g_strlcpy(t->id, r->id, sizeof(t->id));
	t->state = r->state;
	t->status = status;
	g_strlcpy(t->reason, reason ? reason : "", sizeof(t->reason));
	g_queue_push_tail(&c->tomb_order, t);
	g_hash_table_insert(c->tombstones, t->id, t);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Adaptive lease input: the delay from ready to the first pull (0 for pulls
 * that were already waiting), over the last 256 requests. */
static void delay_record(kvb_connector_t *c, uint64_t delay)
{
	c->delays[c->n_delays % G_N_ELEMENTS(c->delays)] = delay;
	c->n_delays++;
	if (c->n_delays % 16 == 0 || c->n_delays == 32) {
		uint32_t n = MIN(c->n_delays, (uint32_t)G_N_ELEMENTS(c->delays));
		uint64_t sorted[G_N_ELEMENTS(c->delays)];
		memcpy(sorted, c->delays, n * sizeof(uint64_t));
		qsort(sorted, n, sizeof(uint64_t), cmp_u64);
		c->delay_p99 = sorted[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1];
	}
}

/* How long a request that just became READY holds its blocks. */
static uint64_t lease_duration(const kvb_connector_t *c)
{
	uint64_t lmax = kvb_config_lease_max(&c->cfg);
	switch (c->cfg.lease_policy) {
	case KVB_LEASE_HEARTBEAT:
		return MIN(3 * c->cfg.heartbeat_interval_ns, lmax);
	case KVB_LEASE_ADAPTIVE:
		if (c->n_delays < 32)
			return lmax;
		return CLAMP(c->delay_p99 * c->cfg.adaptive_factor, c->cfg.lease_min_ns, lmax);
	case KVB_LEASE_FIXED:
	default:
		return c->cfg.abort_timeout_ns;
	}
}

/* Refuse a pull that will not be served: reply DONE with the reason. */
static void pull_refuse(kvb_connector_t *c, prod_req_t *r, pull_t *pl, int status, const char *reason)
{
	notice_send(c, pl->peer, KVB_WIRE_DONE, pl->msg.transfer_id, pl->msg.request_id, status, 0,
		    reason);
	if (r && pl->rank_key)
		rank_set(r, pl->rank_key, RANK_FAILED);
	count_failure(c, status);
}

void prod_req_free(prod_req_t *r)
{
	pull_t *pl;
	while ((pl = g_queue_pop_head(&r->pending)))
		pull_free(pl);
	g_hash_table_destroy(r->ranks);
	g_free(r->groups);
	g_free(r->ids);
	g_free(r);
}

static prod_req_t *prod_req_new(kvb_connector_t *c, const char *id, kvb_producer_state_t state)
{
	prod_req_t *r = g_new0(prod_req_t, 1);
	r->c = c;
	g_strlcpy(r->id, id, sizeof(r->id));
	r->state = state;
	r->ranks = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
	g_hash_table_insert(c->producers, r->id, r);
	c->counters.live_requests++;
	return r;
}

/* Drop a request from the table without reporting it (placeholders). */
void prod_req_drop(kvb_connector_t *c, prod_req_t *r)
{
	timer_stop(c, &r->lease);
	timer_stop(c, &r->pull_wait);
	c->counters.live_requests--;
	g_hash_table_remove(c->producers, r->id);
	prod_req_free(r);
}

/* Terminal transition: release the blocks, report, remember the id. */
static void prod_finish(kvb_connector_t *c, prod_req_t *r, kvb_producer_state_t state, int status,
			const char *reason)
{
	g_assert(r->sends.length == 0);
	pull_t *pl;
	while ((pl = g_queue_pop_head(&r->pending))) {
		pull_refuse(c, r, pl, status == KVB_OK ? KVB_ERR_STATE : status,
			    reason && reason[0] ? reason : "transfer already served");
		pull_free(pl);
	}
	r->state = state;
	timer_stop(c, &r->lease);
	timer_stop(c, &r->pull_wait);
	c->counters.blocks_held -= r->n_blocks;
	if (state == KVB_PRODUCER_EXPIRED)
		c->counters.leases_expired++;
	if (r->engine_known)
		finished_push(c, KVB_ROLE_PRODUCER, r->id, state, status, reason, r->bytes_sent);
	tombstone_add(c, r, status, reason);
	prod_req_drop(c, r);
}

/* Decide what a producer request is once its sends have changed. */
static void prod_settle(kvb_connector_t *c, prod_req_t *r)
{
	if (r->sends.length)
		return;
	if (r->state != KVB_PRODUCER_READY && r->state != KVB_PRODUCER_SENDING)
		return;
	if (r->need && r->served >= r->need) {
		prod_finish(c, r, KVB_PRODUCER_SENT, KVB_OK, "");
		return;
	}
	if (r->fence != KVB_OK) {
		prod_finish(c, r, r->fence == KVB_ERR_EXPIRED ? KVB_PRODUCER_EXPIRED : KVB_PRODUCER_ABORTED,
			    r->fence, r->fence_reason);
		return;
	}
	r->state = KVB_PRODUCER_READY;
}

bool send_has_work(const send_t *s)
{
	return s->retry.length || s->cursor < s->n_copies;
}

void active_add(kvb_connector_t *c, send_t *s)
{
	if (!s->in_active && !s->stopped && send_has_work(s)) {
		s->in_active = true;
		g_queue_push_tail(&c->active, s);
	}
}

void active_remove(kvb_connector_t *c, send_t *s)
{
	if (s->in_active) {
		g_queue_remove(&c->active, s);
		s->in_active = false;
	}
}

/* Stop posting a send; its first failure is the one reported. */
void send_stop(send_t *s, int status, const char *reason)
{
	if (s->status == KVB_OK && status != KVB_OK) {
		s->status = status;
		g_strlcpy(s->reason, reason, sizeof(s->reason));
	}
	s->stopped = true;
	slice_t *sl;
	while ((sl = g_queue_pop_head(&s->retry)))
		g_free(sl);
	active_remove(s->c, s);
}

static void send_finish(kvb_connector_t *c, send_t *s)
{
	prod_req_t *r = s->req;
	peer_t *p = s->pull->peer;
	active_remove(c, s);
	bool served = s->status == KVB_OK || s->cancelled;
	int status = s->cancelled && s->status == KVB_OK ? KVB_ERR_ABORTED : s->status;
	const char *reason = s->status != KVB_OK ? s->reason
			   : s->cancelled ? "cancelled by the consumer" : "";

	notice_send(c, p, KVB_WIRE_DONE, r->id, s->pull->msg.request_id, status, s->bytes_done, reason);
	if (status == KVB_OK)
		c->counters.transfers_ok++;
	else
		count_failure(c, status);

	kvb_xfer_record_t rec = {
		.role = KVB_ROLE_PRODUCER,
		.transfer_id = r->id,
		.request_id = s->pull->msg.request_id,
		.peer = p->addr,
		.bytes = s->bytes_done,
		.slices = s->slices,
		.retries = s->retries,
		.nic_mask = s->nic_mask,
		.nics_used = (uint32_t)__builtin_popcountll(s->nic_mask),
		.post_ns = s->post_ns,
		.end_ns = now_ns(c),
		.status = status,
		.fail_class = kvb_fail_class(status),
		.reason = reason,
	};
	record_emit(c, &rec);

	rank_set(r, s->pull->rank_key, served ? RANK_SERVED : RANK_FAILED);
	if (served)
		r->served++;
	r->bytes_sent += s->bytes_done;
	g_queue_remove(&r->sends, s);
	g_queue_remove(&p->sends, s);
	pull_free(s->pull);
	g_free(s->copies);
	g_free(s);
	peer_maybe_free(p);
	prod_settle(c, r);
}

/* A send ends when nothing of it is posted and nothing is left to post. */
void send_check(kvb_connector_t *c, send_t *s)
{
	if (s->outstanding == 0 && (s->stopped || !send_has_work(s)))
		send_finish(c, s);
}

/* Build the copy plan for a pull against the request's blocks.  One TP byte
 * plan per region pair (regions may differ in size); when every pair has the
 * same plan the whole layout is planned at once so runs merge across it. */
static int send_plan(kvb_connector_t *c, prod_req_t *r, const kvb_wire_pull_t *m, kvb_copy_t **copies,
		     uint32_t *n_copies, uint64_t *total, kvb_err_t *err)
{
	*copies = NULL;
	*n_copies = 0;
	*total = 0;
	if (m->n_blocks == 0)
		return KVB_OK;
	uint32_t *pair = g_new(uint32_t, c->n_regions);
	kvb_tp_plan_t *plans = g_new(kvb_tp_plan_t, c->n_regions);
	int rc = kvb_regions_pair(c->regions, c->n_regions, m->regions, m->n_regions, pair, err);
	bool uniform = true;
	for (uint32_t i = 0; rc == KVB_OK && i < c->n_regions; i++) {
		kvb_tp_side_t ps = {c->cfg.tp_size, c->cfg.tp_rank, c->regions[i].block_bytes};
		kvb_tp_side_t ds = {m->tp_size, m->tp_rank, m->regions[pair[i]].block_bytes};
		rc = kvb_tp_plan(&ps, &ds, c->cfg.total_kv_heads, &plans[i], err);
		if (rc == KVB_OK && i > 0 && memcmp(&plans[i], &plans[0], sizeof(plans[0])) != 0)
			uniform = false;
	}
	if (rc == KVB_OK && uniform) {
		rc = kvb_copy_plan_build(c->regions, c->n_regions, r->groups, m->regions, m->n_regions,
					 m->groups, c->n_groups, &plans[0], copies, n_copies, total, err);
	} else if (rc == KVB_OK) {
		GArray *all = g_array_new(FALSE, FALSE, sizeof(kvb_copy_t));
		for (uint32_t i = 0; rc == KVB_OK && i < c->n_regions; i++) {
			kvb_copy_t *part = NULL;
			uint32_t n = 0;
			uint64_t bytes = 0;
			rc = kvb_copy_plan_build(&c->regions[i], 1, r->groups, &m->regions[pair[i]], 1,
						 m->groups, c->n_groups, &plans[i], &part, &n, &bytes, err);
			for (uint32_t k = 0; rc == KVB_OK && k < n; k++) {
				part[k].src_region = i;
				part[k].dst_region = pair[i];
			}
			if (rc == KVB_OK) {
				g_array_append_vals(all, part, n);
				*total += bytes;
			}
			g_free(part);
		}
		*n_copies = all->len;
		*copies = (kvb_copy_t *)g_array_free(all, rc != KVB_OK);
		if (rc != KVB_OK) {
			*copies = NULL;
			*n_copies = 0;
			*total = 0;
		}
	}
	g_free(pair);
	g_free(plans);
	return rc;
}

/* Start serving a pull from a READY/SENDING request.  The pull is owned by
 * the send from here on (or freed on refusal). */
static void send_start(kvb_connector_t *c, prod_req_t *r, pull_t *pl)
{
	kvb_err_t e;
	kvb_err_clear(&e);
	kvb_copy_t *copies;
	uint32_t n_copies;
	uint64_t total;
	int rc = send_plan(c, r, &pl->msg, &copies, &n_copies, &total, &e);
	if (rc != KVB_OK) {
		pull_refuse(c, r, pl, rc, e.msg);
		pull_free(pl);
		return;
	}
	send_t *s = g_new0(send_t, 1);
	s->c = c;
	s->req = r;
	s->pull = pl;
	s->copies = copies;
	s->n_copies = n_copies;
	s->bytes_total = total;
	s->stream = ++c->next_stream;
	s->post_ns = now_ns(c);
	g_queue_push_tail(&r->sends, s);
	g_queue_push_tail(&pl->peer->sends, s);
	rank_set(r, pl->rank_key, RANK_SENDING);
	r->state = KVB_PRODUCER_SENDING;
	notice_send(c, pl->peer, KVB_WIRE_STARTED, r->id, pl->msg.request_id, KVB_OK, 0, NULL);
	active_add(c, s);
	send_check(c, s);
}

/* Serve the pulls that waited for ready.  Each send may end the request
 * (an empty pull can complete it), so it is looked up again every time. */
static void prod_start_pending(kvb_connector_t *c, prod_req_t *r)
{
	char id[KVB_ID_MAX];
	g_strlcpy(id, r->id, sizeof(id));
	while ((r = g_hash_table_lookup(c->producers, id)) && r->pending.length)
		send_start(c, r, g_queue_pop_head(&r->pending));
	if (r)
		prod_settle(c, r);
}

/* Reasons to refuse a pull before it is queued. */
static int pull_validate(kvb_connector_t *c, const kvb_wire_pull_t *m, kvb_err_t *err)
{
	if (!c->producer)
		return kvb_err_set(err, KVB_ERR_PEER, "this worker (role %s) does not produce KV",
				   kvb_role_name(c->cfg.role));
	if (!c->regions)
		return kvb_err_set(err, KVB_ERR_PEER, "producer has not registered its KV layout yet");
	if (!id_valid(m->transfer_id) || !id_valid(m->request_id))
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "pull without transfer or request id");
	if (m->tp_size == 0 || m->tp_rank >= m->tp_size)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "consumer tp_rank %u with tp_size %u", m->tp_rank,
				   m->tp_size);
	if (m->n_nics == 0 || m->n_nics > KVB_MAX_NICS)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "consumer announces %u NICs (1..%u)", m->n_nics,
				   KVB_MAX_NICS);
	int32_t ratio;
	int rc = kvb_tp_ratio(c->cfg.tp_size, m->tp_size, &ratio, err);
	if (rc != KVB_OK)
		return rc;
	if (!kvb_tp_pairs(c->cfg.tp_size, c->cfg.tp_rank, m->tp_size, m->tp_rank))
		return kvb_err_set(err, KVB_ERR_LAYOUT,
				   "consumer rank %u/%u does not pair with producer rank %u/%u", m->tp_rank,
				   m->tp_size, c->cfg.tp_rank, c->cfg.tp_size);
	uint32_t groups = 0;
	if (m->n_regions) {
		kvb_err_t cause;
		kvb_err_clear(&cause);
		if (kvb_layout_check(m->regions, m->n_regions, &groups, &cause) != KVB_OK)
			return kvb_err_set(err, KVB_ERR_LAYOUT, "consumer layout: %s", cause.msg);
	}
	if (m->tp_size > KVB_MAX_TP)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "consumer tp_size %u exceeds %u", m->tp_size,
				   KVB_MAX_TP);
	if (m->n_groups != c->n_groups || (m->n_regions && groups != c->n_groups))
		return kvb_err_set(err, KVB_ERR_LAYOUT, "consumer has %u KV groups, producer %u",
				   m->n_groups, c->n_groups);
	if (m->n_regions != c->n_regions && m->n_blocks)
		return kvb_err_set(err, KVB_ERR_LAYOUT, "consumer has %u regions, producer %u", m->n_regions,
				   c->n_regions);
	return KVB_OK;
}

/* How long pulls wait for r to be ready: the lease, or unprefilled_wait for a
 * transfer the engine has not begun here (a decoder asks every producer rank;
 * one that never prefills it should say so soon, not at the lease). */
static uint64_t pull_wait_ns(const kvb_connector_t *c, const prod_req_t *r)
{
	if (r->state == KVB_PRODUCER_PLACEHOLDER && c->cfg.unprefilled_wait_ns)
		return MIN(c->cfg.unprefilled_wait_ns, c->cfg.abort_timeout_ns);
	return c->cfg.abort_timeout_ns;
}

void on_pull(kvb_connector_t *c, peer_t *p, const void *data, size_t len)
{
	kvb_err_t e;
	kvb_err_clear(&e);
	pull_t *pl = g_new0(pull_t, 1);
	pl->peer = p;
	int rc = kvb_wire_decode_pull(data, len, &pl->msg, &e);
	if (rc == KVB_OK)
		rc = pull_validate(c, &pl->msg, &e);
	if (rc != KVB_OK) {
		if (rc == KVB_ERR_PROTOCOL)
			c->counters.malformed_messages++;
		char tid[KVB_ID_MAX], rid[KVB_ID_MAX];
		if (kvb_wire_peek_ids(data, len, tid, rid) == KVB_OK)
			notice_send(c, p, KVB_WIRE_DONE, tid, rid, rc, 0, e.msg);
		count_failure(c, rc);
		pull_free(pl);
		return;
	}
	const kvb_wire_pull_t *m = &pl->msg;
	tombstone_t *t = g_hash_table_lookup(c->tombstones, m->transfer_id);
	prod_req_t *r = g_hash_table_lookup(c->producers, m->transfer_id);
	if (!r && t) {
		/* Late pull: the blocks are gone (or reused); never serve it. */
		c->counters.late_pulls_refused++;
		char reason[KVB_REASON_MAX];
		int status = t->status != KVB_OK ? t->status : KVB_ERR_STATE;
		textf(reason, sizeof(reason), "transfer %s already %s%s%s", t->id,
			 kvb_producer_state_name(t->state), t->reason[0] ? ": " : "", t->reason);
		pull_refuse(c, NULL, pl, status, reason);
		pull_free(pl);
		return;
	}
	if (!r)
		r = prod_req_new(c, m->transfer_id, KVB_PRODUCER_PLACEHOLDER);

	if (r->d_tp == 0) {
		/* consumer ranks that pair with this rank (pull_validate checked
		 * that the sizes divide) */
		r->d_tp = m->tp_size;
		r->need = c->cfg.tp_size >= m->tp_size ? 1 : m->tp_size / c->cfg.tp_size;
	} else if (r->d_tp != m->tp_size) {
		char reason[KVB_REASON_MAX];
		textf(reason, sizeof(reason), "consumer TP size %u differs from the first pull's %u",
			 m->tp_size, r->d_tp);
		pull_refuse(c, r, pl, KVB_ERR_LAYOUT, reason);
		pull_free(pl);
		return;
	}
	pl->rank_key = g_strdup_printf("%s/%u", m->request_id, m->tp_rank);
	gpointer st = g_hash_table_lookup(r->ranks, pl->rank_key);
	if (st && GPOINTER_TO_INT(st) != RANK_FAILED) {
		/* A duplicate (network or consumer retry): the original is being
		 * handled; answering it would disturb the consumer's bookkeeping. */
		c->counters.duplicate_pulls++;
		pull_free(pl);
		return;
	}
	rank_set(r, pl->rank_key, RANK_PENDING);
	switch (r->state) {
	case KVB_PRODUCER_PLACEHOLDER:
	case KVB_PRODUCER_PREFILL:
		g_queue_push_tail(&r->pending, pl);
		if (!r->pull_wait.serial &&
		    timer_start(c, &r->pull_wait, TIMER_PULL_WAIT, r, 0, now_ns(c) + pull_wait_ns(c, r)) != KVB_OK) {
			g_queue_remove(&r->pending, pl);
			pull_refuse(c, r, pl, KVB_ERR_NO_RESOURCE, "cannot arm the pull-wait timer");
			pull_free(pl);
			if (r->state == KVB_PRODUCER_PLACEHOLDER && !r->pending.length)
				prod_req_drop(c, r);
		}
		return;
	case KVB_PRODUCER_READY:
	case KVB_PRODUCER_SENDING:
		if (r->fence != KVB_OK) {
			pull_refuse(c, r, pl, r->fence, r->fence_reason);
			pull_free(pl);
			return;
		}
		if (!r->first_pull_ns) {
			r->first_pull_ns = now_ns(c);
			delay_record(c, r->first_pull_ns - r->ready_ns);
		}
		send_start(c, r, pl); /* may end r */
		return;
	default:
		g_assert_not_reached();
	}
}

/* A consumer says its pull is still coming: a heartbeat lease moves its
 * deadline to three intervals from now, never past lease_max from ready. */
void on_heartbeat(kvb_connector_t *c, const kvb_wire_notice_t *n)
{
	c->counters.heartbeats_received++;
	prod_req_t *r = g_hash_table_lookup(c->producers, n->transfer_id);
	if (!r || r->state != KVB_PRODUCER_READY || c->cfg.lease_policy != KVB_LEASE_HEARTBEAT)
		return;
	uint64_t deadline = MIN(now_ns(c) + 3 * c->cfg.heartbeat_interval_ns,
				r->ready_ns + kvb_config_lease_max(&c->cfg));
	if (deadline <= r->lease_deadline)
		return;
	if (timer_start(c, &r->lease, TIMER_LEASE, r, 0, deadline) == KVB_OK) {
		r->lease_deadline = deadline;
		c->counters.lease_renewals++;
	}
}

void on_cancel(kvb_connector_t *c, peer_t *p, const kvb_wire_notice_t *n)
{
	prod_req_t *r = g_hash_table_lookup(c->producers, n->transfer_id);
	if (!r) {
		if (g_hash_table_contains(c->tombstones, n->transfer_id))
			c->counters.stale_messages++;
		else
			c->counters.unknown_messages++;
		return;
	}
	for (GList *l = r->pending.head; l; l = l->next) {
		pull_t *pl = l->data;
		if (pl->peer == p && strcmp(pl->msg.request_id, n->request_id) == 0) {
			g_queue_delete_link(&r->pending, l);
			notice_send(c, p, KVB_WIRE_DONE, r->id, pl->msg.request_id, KVB_ERR_ABORTED, 0,
				    "cancelled by the consumer");
			count_failure(c, KVB_ERR_ABORTED);
			rank_set(r, pl->rank_key, RANK_SERVED);
			r->served++;
			pull_free(pl);
			if (r->state == KVB_PRODUCER_PLACEHOLDER && !r->pending.length)
				prod_req_drop(c, r);
			else if (!r->pending.length)
				timer_stop(c, &r->pull_wait);
			return;
		}
	}
	for (GList *l = r->sends.head; l; l = l->next) {
		send_t *s = l->data;
		if (s->pull->peer == p && strcmp(s->pull->msg.request_id, n->request_id) == 0) {
			if (s->cancelled) {
				c->counters.stale_messages++;
				return;
			}
			s->cancelled = true;
			if (send_has_work(s))
				send_stop(s, KVB_ERR_ABORTED, "cancelled by the consumer");
			send_check(c, s);
			return;
		}
	}
	c->counters.stale_messages++;
}

/* Lease ran out: a READY request ends now; a SENDING one is fenced. */
void on_lease(kvb_connector_t *c, prod_req_t *r)
{
	r->lease.serial = 0;
	char reason[KVB_REASON_MAX];
	textf(reason, sizeof(reason), "lease of %.3f s (%s) expired with %u of %u consumer ranks served",
	      ns_to_s(r->lease_deadline - r->ready_ns), kvb_lease_policy_name(c->cfg.lease_policy),
	      r->served, r->need);
	if (r->state == KVB_PRODUCER_READY) {
		prod_finish(c, r, KVB_PRODUCER_EXPIRED, KVB_ERR_EXPIRED, reason);
		return;
	}
	if (r->state != KVB_PRODUCER_SENDING || r->fence != KVB_OK)
		return;
	r->fence = KVB_ERR_EXPIRED;
	g_strlcpy(r->fence_reason, reason, sizeof(r->fence_reason));
	GList *sends = g_list_copy(r->sends.head);
	for (GList *l = sends; l; l = l->next) {
		send_t *s = l->data;
		if (send_has_work(s))
			send_stop(s, KVB_ERR_EXPIRED, "lease expired mid-transfer");
	}
	/* send_check may end the request; check membership before each call */
	for (GList *l = sends; l; l = l->next) {
		if (g_hash_table_lookup(c->producers, r->id) != r || !g_queue_find(&r->sends, l->data))
			continue;
		send_check(c, l->data);
	}
	g_list_free(sends);
}

void on_pull_wait(kvb_connector_t *c, prod_req_t *r)
{
	r->pull_wait.serial = 0;
	char reason[KVB_REASON_MAX];
	int status = KVB_ERR_TIMEOUT;
	if (r->state == KVB_PRODUCER_PLACEHOLDER && c->cfg.unprefilled_wait_ns) {
		status = KVB_ERR_NOT_FOUND;
		textf(reason, sizeof(reason), "transfer %s was never prefilled on this producer (tp rank "
			 "%u of %u) within %.3f s; a decoder pulls from every producer rank, so each must "
			 "prefill it", r->id, c->cfg.tp_rank, c->cfg.tp_size, ns_to_s(pull_wait_ns(c, r)));
	} else {
		textf(reason, sizeof(reason), "producer request not ready within %.3f s",
			 ns_to_s(c->cfg.abort_timeout_ns));
	}
	pull_t *pl;
	while ((pl = g_queue_pop_head(&r->pending))) {
		pull_refuse(c, r, pl, status, reason);
		pull_free(pl);
	}
	if (r->state == KVB_PRODUCER_PLACEHOLDER)
		prod_req_drop(c, r);
}

int kvb_producer_begin(kvb_connector_t *c, const char *transfer_id, kvb_err_t *err)
{
	if (!c->producer)
		return api_fail(c, err, KVB_ERR_STATE, "role %s cannot produce", kvb_role_name(c->cfg.role));
	if (!id_valid(transfer_id))
		return api_fail(c, err, KVB_ERR_INVALID, "transfer id is empty or longer than %u bytes",
				KVB_ID_MAX - 1);
	prod_req_t *r = g_hash_table_lookup(c->producers, transfer_id);
	if (r && r->engine_known)
		return api_fail(c, err, KVB_ERR_EXISTS, "transfer %s is already live (%s)", transfer_id,
				kvb_producer_state_name(r->state));
	if (!r && g_hash_table_contains(c->tombstones, transfer_id))
		return api_fail(c, err, KVB_ERR_STATE, "transfer %s already ended; ids must not be reused",
				transfer_id);
	if (!r)
		r = prod_req_new(c, transfer_id, KVB_PRODUCER_PREFILL);
	bool was_placeholder = r->state == KVB_PRODUCER_PLACEHOLDER;
	r->engine_known = true;
	r->state = KVB_PRODUCER_PREFILL;
	if (was_placeholder && r->pull_wait.serial && c->cfg.unprefilled_wait_ns) {
		/* begun after all: its waiting pulls get the whole lease */
		timer_stop(c, &r->pull_wait);
		if (timer_start(c, &r->pull_wait, TIMER_PULL_WAIT, r, 0,
				now_ns(c) + c->cfg.abort_timeout_ns) != KVB_OK)
			return api_fail(c, err, KVB_ERR_NO_RESOURCE, "cannot arm the pull-wait timer");
	}
	c->counters.producer_requests++;
	return KVB_OK;
}

int kvb_producer_ready(kvb_connector_t *c, const char *transfer_id, const kvb_block_list_t *groups,
		       uint32_t n_groups, kvb_err_t *err)
{
	if (!c->producer)
		return api_fail(c, err, KVB_ERR_STATE, "role %s cannot produce", kvb_role_name(c->cfg.role));
	prod_req_t *r = id_valid(transfer_id) ? g_hash_table_lookup(c->producers, transfer_id) : NULL;
	if (!r || !r->engine_known)
		return api_fail(c, err, KVB_ERR_NOT_FOUND, "unknown transfer %s (call kvb_producer_begin first)",
				transfer_id ? transfer_id : "(null)");
	if (r->state != KVB_PRODUCER_PREFILL)
		return api_fail(c, err, KVB_ERR_STATE, "transfer %s is %s, not prefill", transfer_id,
				kvb_producer_state_name(r->state));
	int rc = groups_check(c, groups, n_groups, err);
	if (rc != KVB_OK)
		return rc;
	uint64_t now = now_ns(c);
	uint64_t lease = lease_duration(c);
	rc = timer_start(c, &r->lease, TIMER_LEASE, r, 0, now + lease);
	if (rc != KVB_OK)
		return api_fail(c, err, rc, "cannot arm the lease timer: %s (%s)", kvb_strerror(rc),
				c->be->ops->last_error(c->be));
	groups_copy(groups, n_groups, &r->groups, &r->ids, &r->n_blocks);
	r->n_groups = n_groups;
	r->ready_ns = now;
	r->lease_deadline = now + lease;
	c->counters.last_lease_ns = lease;
	r->state = KVB_PRODUCER_READY;
	if (r->pending.length) {
		r->first_pull_ns = now;
		delay_record(c, 0);
	}
	c->counters.blocks_held += r->n_blocks;
	timer_stop(c, &r->pull_wait);
	prod_start_pending(c, r);
	post_work(c);
	return KVB_OK;
}

int kvb_producer_abort(kvb_connector_t *c, const char *transfer_id, kvb_err_t *err)
{
	prod_req_t *r = id_valid(transfer_id) ? g_hash_table_lookup(c->producers, transfer_id) : NULL;
	if (!r || !r->engine_known)
		return api_fail(c, err, KVB_ERR_NOT_FOUND, "unknown transfer %s",
				transfer_id ? transfer_id : "(null)");
	const char *reason = "aborted by the engine";
	switch (r->state) {
	case KVB_PRODUCER_PREFILL:
	case KVB_PRODUCER_READY:
		prod_finish(c, r, KVB_PRODUCER_ABORTED, KVB_ERR_ABORTED, reason);
		return KVB_OK;
	case KVB_PRODUCER_SENDING:
		if (r->fence != KVB_OK)
			return api_fail(c, err, KVB_ERR_STATE, "transfer %s is already being %s", transfer_id,
					r->fence == KVB_ERR_EXPIRED ? "expired" : "aborted");
		r->fence = KVB_ERR_ABORTED;
		g_strlcpy(r->fence_reason, reason, sizeof(r->fence_reason));
		timer_stop(c, &r->lease);
		GList *sends = g_list_copy(r->sends.head);
		for (GList *l = sends; l; l = l->next)
			if (send_has_work(l->data))
				send_stop(l->data, KVB_ERR_ABORTED, "producer aborted mid-transfer");
		for (GList *l = sends; l; l = l->next) {
			if (g_hash_table_lookup(c->producers, transfer_id) != r || !g_queue_find(&r->sends, l->data))
				continue;
			send_check(c, l->data);
		}
		g_list_free(sends);
		return KVB_OK;
	default:
		return api_fail(c, err, KVB_ERR_STATE, "transfer %s is %s", transfer_id,
				kvb_producer_state_name(r->state));
	}
}
