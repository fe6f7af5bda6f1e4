/*
 * The connector's consumer side: requests, their targets (one per producer
 * rank), pulls sent, notices, deadlines (state machine: kvb_connector_int.h).
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>

#include "kvb_connector_int.h"

/* ------------------------------------------------------------------------ */
/* consumer side                                                            */

bool target_settled(const cons_target_t *t)
{
	return t->state == TARGET_DONE || t->state == TARGET_FAILED;
}

void cons_req_free(cons_req_t *r)
{
	if (r->pull_frame)
		g_byte_array_unref(r->pull_frame);
	g_free(r->targets);
	g_free(r);
}

static void cons_finish(kvb_connector_t *c, cons_req_t *r)
{
	if (r->state == KVB_CONSUMER_EXPECTED)
		c->n_expected--;
	kvb_consumer_state_t state = KVB_CONSUMER_DONE;
	int status = r->status;
	if (status == KVB_OK && r->aborting) {
		status = KVB_ERR_ABORTED;
		g_strlcpy(r->reason, "aborted by the engine", sizeof(r->reason));
	}
	if (status != KVB_OK)
		state = KVB_CONSUMER_FAILED;
	r->state = state;
	timer_stop(c, &r->deadline);
	char peer_addr[KVB_ADDR_MAX] = "";
	if (r->n_targets && r->targets[0].peer)
		g_strlcpy(peer_addr, r->targets[0].peer->addr, sizeof(peer_addr));
	uint64_t bytes = 0;
	for (uint32_t i = 0; i < r->n_targets; i++) {
		cons_target_t *t = &r->targets[i];
		bytes += t->bytes;
		if (t->peer) {
			g_queue_remove(&t->peer->targets, t);
			peer_maybe_free(t->peer);
			t->peer = NULL;
		}
	}
	if (status == KVB_OK) {
		c->counters.transfers_ok++;
		c->counters.bytes_received += bytes;
	} else {
		count_failure(c, status);
	}
	kvb_xfer_record_t rec = {
		.role = KVB_ROLE_CONSUMER,
		.transfer_id = r->transfer_id,
		.request_id = r->id,
		.peer = peer_addr,
		.bytes = bytes,
		.post_ns = r->post_ns ? r->post_ns : r->start_ns,
		.end_ns = now_ns(c),
		.status = status,
		.fail_class = kvb_fail_class(status),
		.reason = r->reason,
	};
	record_emit(c, &rec);
	c->counters.blocks_held -= r->n_blocks;
	c->counters.live_requests--;
	finished_push(c, KVB_ROLE_CONSUMER, r->id, state, status, r->reason, bytes);
	g_hash_table_remove(c->consumers, r->id);
	cons_req_free(r);
}

void target_end(cons_target_t *t, int status, uint64_t bytes, const char *reason)
{
	if (target_settled(t))
		return;
	cons_req_t *r = t->req;
	t->state = status == KVB_OK ? TARGET_DONE : TARGET_FAILED;
	t->bytes += bytes;
	if (status != KVB_OK && r->status == KVB_OK) {
		r->status = status;
		textf(r->reason, sizeof(r->reason), "producer %s: %s", t->peer ? t->peer->addr : "?",
			 reason && reason[0] ? reason : kvb_strerror(status));
	}
}

void target_send_pull(kvb_connector_t *c, cons_target_t *t)
{
	cons_req_t *r = t->req;
	int rc = msg_send(c, t->peer, r->pull_frame);
	if (rc != KVB_OK) {
		char reason[KVB_REASON_MAX];
		textf(reason, sizeof(reason), "sending the pull failed: %s (%s)", kvb_strerror(rc),
			 c->be->ops->last_error(c->be));
		target_end(t, rc == KVB_ERR_PEER ? KVB_ERR_PEER : KVB_ERR_TRANSPORT, 0, reason);
		return;
	}
	t->state = TARGET_REQUESTED;
	if (!r->post_ns)
		r->post_ns = now_ns(c);
}

/* Recompute a consumer request after a target changed; end it when every
 * target is settled.  Once failing or aborting, targets that have a pull in
 * flight are told to stop, and targets still connecting are dropped. */
void cons_settle(kvb_connector_t *c, cons_req_t *r)
{
	bool failing = r->status != KVB_OK || r->aborting;
	uint32_t settled = 0, receiving = 0, requested = 0;
	for (uint32_t i = 0; i < r->n_targets; i++) {
		cons_target_t *t = &r->targets[i];
		if (failing && t->state == TARGET_CONNECTING)
			target_end(t, r->aborting ? KVB_ERR_ABORTED : r->status, 0, "not started");
		if (failing && (t->state == TARGET_REQUESTED || t->state == TARGET_RECEIVING) && !t->cancel_sent) {
			t->cancel_sent = true;
			if (notice_send(c, t->peer, KVB_WIRE_CANCEL, r->transfer_id, r->id, KVB_OK, 0, NULL) != KVB_OK)
				target_end(t, KVB_ERR_PEER, 0, "connection lost while cancelling");
		}
		if (target_settled(t))
			settled++;
		else if (t->state == TARGET_RECEIVING)
			receiving++;
		else if (t->state == TARGET_REQUESTED)
			requested++;
	}
	if (settled == r->n_targets) {
		cons_finish(c, r);
		return;
	}
	if (r->state == KVB_CONSUMER_EXPECTED)
		return;
	if (receiving)
		r->state = KVB_CONSUMER_RECEIVING;
	else if (requested && r->state == KVB_CONSUMER_WAITING)
		r->state = KVB_CONSUMER_REQUESTED;
}

static cons_target_t *target_for(cons_req_t *r, const peer_t *p)
{
	for (uint32_t i = 0; i < r->n_targets; i++)
		if (r->targets[i].peer == p)
			return &r->targets[i];
	return NULL;
}

void on_notice(kvb_connector_t *c, peer_t *p, const kvb_wire_notice_t *n)
{
	cons_req_t *r = g_hash_table_lookup(c->consumers, n->request_id);
	cons_target_t *t = r ? target_for(r, p) : NULL;
	if (!t || strcmp(r->transfer_id, n->transfer_id) != 0) {
		c->counters.unknown_messages++;
		return;
	}
	if (n->type == KVB_WIRE_STARTED) {
		if (t->state != TARGET_REQUESTED) {
			c->counters.stale_messages++;
			return;
		}
		t->state = TARGET_RECEIVING;
	} else {
		if (target_settled(t)) {
			c->counters.stale_messages++;
			return;
		}
		target_end(t, n->status, n->bytes, n->reason);
	}
	cons_settle(c, r);
}

void on_deadline(kvb_connector_t *c, cons_req_t *r)
{
	r->deadline.serial = 0;
	uint32_t done = 0;
	for (uint32_t i = 0; i < r->n_targets; i++)
		done += r->targets[i].state == TARGET_DONE;
	if (r->status == KVB_OK) {
		r->status = KVB_ERR_TIMEOUT;
		textf(r->reason, sizeof(r->reason),
			 "no complete answer within %.3f s (%u of %u producers done)",
			 ns_to_s(kvb_config_consumer_timeout(&c->cfg)), done, r->n_targets);
	}
	for (uint32_t i = 0; i < r->n_targets; i++) {
		cons_target_t *t = &r->targets[i];
		if ((t->state == TARGET_REQUESTED || t->state == TARGET_RECEIVING) && !t->cancel_sent) {
			t->cancel_sent = true;
			notice_send(c, t->peer, KVB_WIRE_CANCEL, r->transfer_id, r->id, KVB_OK, 0, NULL);
		}
		if (!target_settled(t))
			t->state = TARGET_FAILED;
	}
	cons_finish(c, r);
}

static peer_t *peer_get(kvb_connector_t *c, const char *addr, kvb_err_t *err)
{
	peer_t *p = g_hash_table_lookup(c->peers_by_addr, addr);
	if (p)
		return p;
	p = peer_new(c, addr, true);
	p->state = PEER_CONNECTING;
	int rc = c->be->ops->conn_connect(c->be, p->conn, addr);
	if (rc != KVB_OK && rc != KVB_INPROGRESS) {
		kvb_err_set(err, rc, "connect to %s failed: %s (%s)", addr, kvb_strerror(rc),
			    c->be->ops->last_error(c->be));
		g_queue_remove(&c->peers, p);
		kvb_conn_free(p->conn);
		g_free(p);
		return NULL;
	}
	if (rc == KVB_OK)
		p->state = PEER_UP;
	g_hash_table_insert(c->peers_by_addr, p->addr, p);
	return p;
}

/* Checks shared by expect and pull: role, ids and producer addresses. */
static int pull_params_check(kvb_connector_t *c, const kvb_pull_params_t *pp, kvb_err_t *err)
{
	if (!c->consumer)
		return api_fail(c, err, KVB_ERR_STATE, "role %s cannot consume", kvb_role_name(c->cfg.role));
	if (!pp)
		return api_fail(c, err, KVB_ERR_INVALID, "pull parameters are NULL");
	if (!id_valid(pp->request_id) || !id_valid(pp->transfer_id))
		return api_fail(c, err, KVB_ERR_INVALID, "request and transfer ids must be 1..%u bytes",
				KVB_ID_MAX - 1);
	if (pp->n_producers == 0 || pp->n_producers > 64 || !pp->producers)
		return api_fail(c, err, KVB_ERR_INVALID, "%u producer addresses given (1..64)", pp->n_producers);
	for (uint32_t i = 0; i < pp->n_producers; i++) {
		const char *a = pp->producers[i];
		if (!a || !a[0] || strlen(a) >= KVB_ADDR_MAX)
			return api_fail(c, err, KVB_ERR_INVALID, "producer address %u is empty or too long", i);
		for (uint32_t k = 0; k < i; k++)
			if (strcmp(pp->producers[k], a) == 0)
				return api_fail(c, err, KVB_ERR_INVALID, "producer address %s is listed twice", a);
	}
	return KVB_OK;
}

/* Encode the PULL frame a request sends to every target. */
static int pull_frame_build(kvb_connector_t *c, cons_req_t *r, const kvb_pull_params_t *pp, kvb_err_t *e)
{
	kvb_wire_pull_t m;
	memset(&m, 0, sizeof(m));
	g_strlcpy(m.transfer_id, pp->transfer_id, sizeof(m.transfer_id));
	g_strlcpy(m.request_id, pp->request_id, sizeof(m.request_id));
	m.tp_size = c->cfg.tp_size;
	m.tp_rank = c->cfg.tp_rank;
	m.n_nics = c->n_nics;
	m.n_regions = c->n_regions;
	m.regions = c->regions;
	m.rkeys = c->rkeys;
	m.n_groups = pp->n_groups;
	m.groups = (kvb_block_list_t *)pp->groups;
	r->pull_frame = g_byte_array_new();
	return kvb_wire_encode_pull(r->pull_frame, &m, e);
}

/* Create a consumer request (EXPECTED or WAITING) and start connecting to
 * its producers. */
static int cons_req_start(kvb_connector_t *c, const kvb_pull_params_t *pp, bool expected,
			  kvb_err_t *err)
{
	cons_req_t *r = g_new0(cons_req_t, 1);
	r->c = c;
	g_strlcpy(r->id, pp->request_id, sizeof(r->id));
	g_strlcpy(r->transfer_id, pp->transfer_id, sizeof(r->transfer_id));
	r->state = expected ? KVB_CONSUMER_EXPECTED : KVB_CONSUMER_WAITING;
	r->start_ns = now_ns(c);
	kvb_err_t e;
	kvb_err_clear(&e);
	int rc = expected ? KVB_OK : pull_frame_build(c, r, pp, &e);
	if (rc == KVB_OK)
		rc = timer_start(c, &r->deadline, TIMER_DEADLINE, r, 0,
				 r->start_ns + kvb_config_consumer_timeout(&c->cfg));
	if (rc != KVB_OK) {
		cons_req_free(r);
		return e.code ? api_fail_err(c, err, &e)
			      : api_fail(c, err, rc, "cannot arm the deadline timer: %s", kvb_strerror(rc));
	}
	for (uint32_t g = 0; !expected && g < pp->n_groups; g++)
		r->n_blocks += pp->groups[g].count;
	r->n_targets = pp->n_producers;
	r->targets = g_new0(cons_target_t, r->n_targets);
	g_hash_table_insert(c->consumers, r->id, r);
	c->counters.consumer_requests++;
	c->counters.live_requests++;
	c->counters.blocks_held += r->n_blocks;
	if (expected) {
		c->n_expected++;
		heartbeat_arm(c);
	}

	for (uint32_t i = 0; i < r->n_targets; i++) {
		cons_target_t *t = &r->targets[i];
		t->req = r;
		t->state = TARGET_CONNECTING;
		kvb_err_clear(&e);
		peer_t *p = peer_get(c, pp->producers[i], &e);
		if (!p) {
			target_end(t, KVB_ERR_PEER, 0, e.msg);
			continue;
		}
		t->peer = p;
		g_queue_push_tail(&p->targets, t);
		if (p->state == PEER_UP && !expected)
			target_send_pull(c, t);
	}
	cons_settle(c, r);
	return KVB_OK;
}

int kvb_consumer_expect(kvb_connector_t *c, const kvb_pull_params_t *pp, kvb_err_t *err)
{
	int rc = pull_params_check(c, pp, err);
	if (rc != KVB_OK)
		return rc;
	if (g_hash_table_contains(c->consumers, pp->request_id))
		return api_fail(c, err, KVB_ERR_EXISTS, "request %s is already known", pp->request_id);
	return cons_req_start(c, pp, true, err);
}

/* An EXPECTED request gets its blocks: hold them, send the pull to every
 * target already connected (the others send it when they come up). */
static int cons_req_upgrade(kvb_connector_t *c, cons_req_t *r, const kvb_pull_params_t *pp,
			    kvb_err_t *err)
{
	if (strcmp(r->transfer_id, pp->transfer_id) != 0)
		return api_fail(c, err, KVB_ERR_INVALID, "request %s expected transfer %s, pull names %s",
				r->id, r->transfer_id, pp->transfer_id);
	kvb_err_t e;
	kvb_err_clear(&e);
	if (pull_frame_build(c, r, pp, &e) != KVB_OK) {
		g_byte_array_unref(r->pull_frame);
		r->pull_frame = NULL;
		return api_fail_err(c, err, &e);
	}
	for (uint32_t g = 0; g < pp->n_groups; g++)
		r->n_blocks += pp->groups[g].count;
	c->counters.blocks_held += r->n_blocks;
	c->n_expected--;
	r->state = KVB_CONSUMER_WAITING;
	r->start_ns = now_ns(c);
	timer_start(c, &r->deadline, TIMER_DEADLINE, r, 0,
		    r->start_ns + kvb_config_consumer_timeout(&c->cfg));
	for (uint32_t i = 0; i < r->n_targets; i++) {
		cons_target_t *t = &r->targets[i];
		if (t->state == TARGET_CONNECTING && t->peer && t->peer->state == PEER_UP)
			target_send_pull(c, t);
	}
	cons_settle(c, r);
	return KVB_OK;
}

int kvb_consumer_pull(kvb_connector_t *c, const kvb_pull_params_t *pp, kvb_err_t *err)
{
	int rc = pull_params_check(c, pp, err);
	if (rc != KVB_OK)
		return rc;
	rc = groups_check(c, pp->groups, pp->n_groups, err);
	if (rc != KVB_OK)
		return rc;
	cons_req_t *r = g_hash_table_lookup(c->consumers, pp->request_id);
	if (r && r->state == KVB_CONSUMER_EXPECTED && !r->aborting)
		return cons_req_upgrade(c, r, pp, err);
	if (r)
		return api_fail(c, err, KVB_ERR_EXISTS, "request %s is already pulling", pp->request_id);
	return cons_req_start(c, pp, false, err);
}

int kvb_consumer_abort(kvb_connector_t *c, const char *request_id, kvb_err_t *err)
{
	cons_req_t *r = id_valid(request_id) ? g_hash_table_lookup(c->consumers, request_id) : NULL;
	if (!r)
		return api_fail(c, err, KVB_ERR_NOT_FOUND, "unknown request %s",
				request_id ? request_id : "(null)");
	if (r->aborting)
		return api_fail(c, err, KVB_ERR_STATE, "request %s is already being aborted", request_id);
	r->aborting = true;
	if (r->status == KVB_OK) {
		r->status = KVB_ERR_ABORTED;
		g_strlcpy(r->reason, "aborted by the engine", sizeof(r->reason));
	}
	cons_settle(c, r);
	return KVB_OK;
}
