/*
 * The connector: helpers, peers, connection events, the event loop and the
 * public API (the state machines: kvb_connector_int.h).
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>

#include "kvb_connector_int.h"

/* ------------------------------------------------------------------------ */
/* helpers                                                                  */

/* snprintf for reasons and names: truncation is intended (reasons are
 * bounded), so it goes through vsnprintf where the compiler does not flag it. */

void textf(char *dst, size_t len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(dst, len, fmt, ap);
	va_end(ap);
}

int api_fail(kvb_connector_t *c, kvb_err_t *err, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->last_error, sizeof(c->last_error), fmt, ap);
	va_end(ap);
	return kvb_err_set(err, code, "%s", c->last_error);
}

/* Record an error coming from a lower layer (kvb_err_t already filled). */
int api_fail_err(kvb_connector_t *c, kvb_err_t *err, const kvb_err_t *cause)
{
	g_strlcpy(c->last_error, cause->msg, sizeof(c->last_error));
	if (err)
		*err = *cause;
	return cause->code;
}

uint64_t now_ns(const kvb_connector_t *c)
{
	return c->be->ops->clock_now_ns(c->be);
}

bool id_valid(const char *id)
{
	return id && id[0] && strlen(id) < KVB_ID_MAX;
}

static gpointer serial_key(uint64_t serial)
{
	return (gpointer)(uintptr_t)serial;
}

void timer_stop(kvb_connector_t *c, ctimer_t *t)
{
	if (!t->serial)
		return;
	g_hash_table_remove(c->timers, serial_key(t->serial));
	c->be->ops->timer_cancel(c->be, t->backend_id);
	t->serial = 0;
}

int timer_start(kvb_connector_t *c, ctimer_t *t, timer_kind_t kind, void *obj,
		       uint32_t nic, uint64_t deadline)
{
	timer_stop(c, t);
	uint64_t serial = ++c->next_serial;
	uint64_t id = 0;
	int rc = c->be->ops->timer_arm(c->be, deadline, serial, &id);
	if (rc != KVB_OK)
		return rc;
	timer_ref_t *ref = g_new(timer_ref_t, 1);
	ref->kind = kind;
	ref->obj = obj;
	ref->nic = nic;
	ref->backend_id = id;
	g_hash_table_insert(c->timers, serial_key(serial), ref);
	t->serial = serial;
	t->backend_id = id;
	return KVB_OK;
}

double ns_to_s(uint64_t ns)
{
	return (double)ns / 1e9;
}

/* Copy per-group block lists into one allocation owned by the request. */
void groups_copy(const kvb_block_list_t *src, uint32_t n_groups, kvb_block_list_t **groups,
			uint32_t **ids, uint64_t *n_blocks)
{
	uint64_t total = 0;
	for (uint32_t g = 0; g < n_groups; g++)
		total += src[g].count;
	*groups = n_groups ? g_new0(kvb_block_list_t, n_groups) : NULL;
	*ids = total ? g_new(uint32_t, total) : NULL;
	uint64_t at = 0;
	for (uint32_t g = 0; g < n_groups; g++) {
		(*groups)[g].count = src[g].count;
		(*groups)[g].ids = src[g].count ? *ids + at : NULL;
		if (src[g].count)
			memcpy(*ids + at, src[g].ids, (size_t)src[g].count * sizeof(uint32_t));
		at += src[g].count;
	}
	*n_blocks = total;
}

/* Engine-supplied block ids must fit every region of their group. */
int groups_check(kvb_connector_t *c, const kvb_block_list_t *groups, uint32_t n_groups,
			kvb_err_t *err)
{
	if (!c->regions)
		return api_fail(c, err, KVB_ERR_STATE, "no KV layout registered (kvb_connector_register_layout)");
	if (n_groups != c->n_groups)
		return api_fail(c, err, KVB_ERR_INVALID, "%u block lists given, the layout has %u KV groups",
				n_groups, c->n_groups);
	if (n_groups && !groups)
		return api_fail(c, err, KVB_ERR_INVALID, "block lists are NULL");
	for (uint32_t g = 0; g < n_groups; g++) {
		if (groups[g].count > KVB_MAX_BLOCKS_PER_GROUP)
			return api_fail(c, err, KVB_ERR_INVALID, "group %u lists %u blocks (limit %u)", g,
					groups[g].count, KVB_MAX_BLOCKS_PER_GROUP);
		if (groups[g].count && !groups[g].ids)
			return api_fail(c, err, KVB_ERR_INVALID, "group %u: ids is NULL", g);
		for (uint32_t i = 0; i < groups[g].count; i++)
			if (groups[g].ids[i] >= c->group_blocks[g])
				return api_fail(c, err, KVB_ERR_RANGE,
						"block %u (group %u, position %u) is outside the layout's %u blocks",
						groups[g].ids[i], g, i, c->group_blocks[g]);
	}
	return KVB_OK;
}

void record_emit(kvb_connector_t *c, const kvb_xfer_record_t *rec)
{
	if (c->record_fn)
		c->record_fn(rec, c->record_user);
}

void count_failure(kvb_connector_t *c, int status)
{
	c->counters.transfers_failed++;
	switch (kvb_fail_class(status)) {
	case KVB_FAIL_TRANSPORT: c->counters.fail_transport++; break;
	case KVB_FAIL_LEASE: c->counters.fail_lease++; break;
	case KVB_FAIL_PEER: c->counters.fail_peer++; break;
	case KVB_FAIL_TIMEOUT: c->counters.fail_timeout++; break;
	case KVB_FAIL_ABORTED: c->counters.fail_aborted++; break;
	default: c->counters.fail_peer++; break;
	}
}

void finished_push(kvb_connector_t *c, kvb_role_t role, const char *id, int state, int status,
			  const char *reason, uint64_t bytes)
{
	kvb_finished_t *f = g_new0(kvb_finished_t, 1);
	f->role = role;
	g_strlcpy(f->id, id, sizeof(f->id));
	f->state = state;
	f->status = status;
	g_strlcpy(f->reason, reason ? reason : "", sizeof(f->reason));
	f->bytes = bytes;
	f->end_ns = now_ns(c);
	g_queue_push_tail(&c->finished, f);
}

/* ------------------------------------------------------------------------ */
/* peers                                                                    */

void peer_maybe_free(peer_t *p)
{
	if (p->state != PEER_DOWN || p->dead_listed || p->targets.length || p->sends.length)
		return;
	p->dead_listed = true;
	g_queue_push_tail(&p->c->dead_peers, p);
}

/* Free peers queued by peer_maybe_free; called where no event of the current
 * poll batch can still name their conn. */
static void peers_reap(kvb_connector_t *c)
{
	peer_t *p;
	while ((p = g_queue_pop_head(&c->dead_peers))) {
		g_queue_remove(&c->peers, p);
		c->be->ops->conn_close(c->be, p->conn);
		kvb_conn_free(p->conn);
		g_free(p);
	}
}

peer_t *peer_new(kvb_connector_t *c, const char *addr, bool outbound)
{
	peer_t *p = g_new0(peer_t, 1);
	p->c = c;
	p->outbound = outbound;
	g_strlcpy(p->addr, addr, sizeof(p->addr));
	p->conn = kvb_conn_alloc(c->be);
	p->conn->user = p;
	g_queue_push_tail(&c->peers, p);
	return p;
}

int msg_send(kvb_connector_t *c, peer_t *p, const GByteArray *frame)
{
	if (p->state != PEER_UP)
		return KVB_ERR_PEER;
	return c->be->ops->msg_send(c->be, p->conn, frame->data, frame->len);
}

int notice_send(kvb_connector_t *c, peer_t *p, kvb_wire_type_t type, const char *transfer_id,
		       const char *request_id, int status, uint64_t bytes, const char *reason)
{
	if (p->state != PEER_UP)
		return KVB_ERR_PEER;
	kvb_wire_notice_t n;
	kvb_wire_notice_fill(&n, type, transfer_id, request_id, status, bytes, reason);
	g_byte_array_set_size(c->scratch, 0);
	int rc = kvb_wire_encode_notice(c->scratch, &n, NULL);
	if (rc != KVB_OK)
		return rc;
	return msg_send(c, p, c->scratch);
}

/* ------------------------------------------------------------------------ */
/* connection events                                                        */

static void on_conn_up(kvb_connector_t *c, peer_t *p)
{
	if (p->state != PEER_CONNECTING)
		return;
	p->state = PEER_UP;
	GList *targets = g_list_copy(p->targets.head);
	for (GList *l = targets; l; l = l->next) {
		cons_target_t *t = l->data;
		if (t->state == TARGET_CONNECTING && t->req->state != KVB_CONSUMER_EXPECTED)
			target_send_pull(c, t);
	}
	/* settle each request once (a request may have been finished by now) */
	for (GList *l = targets; l; l = l->next) {
		cons_target_t *t = l->data;
		if (g_queue_find(&p->targets, t))
			cons_settle(c, t->req);
	}
	g_list_free(targets);
}

static void on_conn_down(kvb_connector_t *c, peer_t *p, int status)
{
	bool was_connecting = p->state == PEER_CONNECTING;
	p->state = PEER_DOWN;
	if (p->outbound && g_hash_table_lookup(c->peers_by_addr, p->addr) == p)
		g_hash_table_remove(c->peers_by_addr, p->addr);
	char reason[KVB_REASON_MAX];
	textf(reason, sizeof(reason), "%s %s: %s", was_connecting ? "cannot connect to" : "lost connection to",
		 p->addr, c->be->ops->last_error(c->be));

	/* consumer targets through this peer */
	GList *targets = g_list_copy(p->targets.head);
	for (GList *l = targets; l; l = l->next)
		target_end(l->data, KVB_ERR_PEER, 0, reason);
	for (GList *l = targets; l; l = l->next) {
		cons_target_t *t = l->data;
		if (g_queue_find(&p->targets, t))
			cons_settle(c, t->req);
	}
	g_list_free(targets);

	/* producer sends to this peer stop; they end when their slices drain */
	GList *sends = g_list_copy(p->sends.head);
	for (GList *l = sends; l; l = l->next)
		send_stop(l->data, KVB_ERR_PEER, reason);
	for (GList *l = sends; l; l = l->next)
		if (g_queue_find(&p->sends, l->data))
			send_check(c, l->data);
	g_list_free(sends);

	/* pulls from this peer still queued on producer requests */
	GList *reqs = g_hash_table_get_values(c->producers);
	for (GList *l = reqs; l; l = l->next) {
		prod_req_t *r = l->data;
		GList *q = r->pending.head;
		while (q) {
			GList *next = q->next;
			pull_t *pl = q->data;
			if (pl->peer == p) {
				g_queue_delete_link(&r->pending, q);
				rank_set(r, pl->rank_key, RANK_FAILED);
				pull_free(pl);
			}
			q = next;
		}
		if (r->state == KVB_PRODUCER_PLACEHOLDER && !r->pending.length)
			prod_req_drop(c, r);
	}
	g_list_free(reqs);
	(void)status;
	peer_maybe_free(p);
}

static void on_incoming(kvb_connector_t *c, uint64_t incoming_id)
{
	char name[KVB_ADDR_MAX];
	textf(name, sizeof(name), "incoming#%" G_GUINT64_FORMAT, ++c->incoming_seq);
	peer_t *p = peer_new(c, name, false);
	int rc = c->be->ops->conn_accept(c->be, p->conn, incoming_id);
	if (rc != KVB_OK) {
		/* never accepted: nothing to close */
		g_queue_remove(&c->peers, p);
		kvb_conn_free(p->conn);
		g_free(p);
		return;
	}
	p->state = PEER_UP;
}

static void on_msg(kvb_connector_t *c, peer_t *p, const void *data, size_t len)
{
	kvb_wire_type_t type;
	if (kvb_wire_peek(data, len, &type, NULL) != KVB_OK) {
		c->counters.malformed_messages++;
		return;
	}
	if (type == KVB_WIRE_PULL) {
		on_pull(c, p, data, len);
		return;
	}
	kvb_wire_notice_t n;
	if (kvb_wire_decode_notice(data, len, &n, NULL) != KVB_OK) {
		c->counters.malformed_messages++;
		return;
	}
	if (type == KVB_WIRE_CANCEL || type == KVB_WIRE_HEARTBEAT) {
		if (!c->producer)
			c->counters.unknown_messages++;
		else if (type == KVB_WIRE_CANCEL)
			on_cancel(c, p, &n);
		else
			on_heartbeat(c, &n);
	} else if (c->consumer) {
		on_notice(c, p, &n);
	} else {
		c->counters.unknown_messages++;
	}
}

void heartbeat_arm(kvb_connector_t *c)
{
	if (c->n_expected && !c->heartbeat.serial)
		timer_start(c, &c->heartbeat, TIMER_HEARTBEAT, NULL, 0,
			    now_ns(c) + c->cfg.heartbeat_interval_ns);
}

/* Every heartbeat interval: one HEARTBEAT per expected request and
 * connected target. */
static void on_heartbeat_tick(kvb_connector_t *c)
{
	GHashTableIter it;
	gpointer v;
	g_hash_table_iter_init(&it, c->consumers);
	while (g_hash_table_iter_next(&it, NULL, &v)) {
		cons_req_t *r = v;
		if (r->state != KVB_CONSUMER_EXPECTED)
			continue;
		for (uint32_t i = 0; i < r->n_targets; i++) {
			cons_target_t *t = &r->targets[i];
			if (t->peer && t->peer->state == PEER_UP && !target_settled(t) &&
			    notice_send(c, t->peer, KVB_WIRE_HEARTBEAT, r->transfer_id, r->id, KVB_OK, 0,
					NULL) == KVB_OK)
				c->counters.heartbeats_sent++;
		}
	}
	heartbeat_arm(c);
}

static void on_timer(kvb_connector_t *c, uint64_t serial)
{
	timer_ref_t *ref = g_hash_table_lookup(c->timers, serial_key(serial));
	if (!ref)
		return; /* cancelled, or its owner is gone */
	timer_ref_t copy = *ref;
	g_hash_table_remove(c->timers, serial_key(serial));
	switch (copy.kind) {
	case TIMER_LEASE:
		on_lease(c, copy.obj);
		break;
	case TIMER_PULL_WAIT:
		on_pull_wait(c, copy.obj);
		break;
	case TIMER_DEADLINE:
		on_deadline(c, copy.obj);
		break;
	case TIMER_HEARTBEAT:
		c->heartbeat.serial = 0;
		on_heartbeat_tick(c);
		break;
	case TIMER_NIC_COOLDOWN:
		c->nic_cooldown[copy.nic].serial = 0;
		c->nic_down[copy.nic] = false;
		c->nic_errors[copy.nic] = 0;
		break;
	}
}

static void dispatch(kvb_connector_t *c, const kvb_event_t *ev)
{
	peer_t *p = ev->conn ? ev->conn->user : NULL;
	switch (ev->type) {
	case KVB_EV_XFER_DONE:
		on_xfer_done(c, ev);
		break;
	case KVB_EV_MSG:
		if (p)
			on_msg(c, p, ev->data, ev->len);
		break;
	case KVB_EV_TIMER:
		on_timer(c, ev->cookie);
		break;
	case KVB_EV_CONN_UP:
		if (p)
			on_conn_up(c, p);
		break;
	case KVB_EV_CONN_DOWN:
		if (p && p->state != PEER_DOWN)
			on_conn_down(c, p, ev->status);
		break;
	case KVB_EV_CONN_INCOMING:
		on_incoming(c, ev->incoming_id);
		break;
	}
}

/* ------------------------------------------------------------------------ */
/* public API                                                               */

int kvb_connector_progress(kvb_connector_t *c)
{
	kvb_event_t evs[EVENT_BATCH];
	int handled = 0;
	for (;;) {
		int n = c->be->ops->event_poll(c->be, evs, EVENT_BATCH);
		if (n < 0) {
			textf(c->last_error, sizeof(c->last_error), "event_poll failed: %s (%s)",
				 kvb_strerror(n), c->be->ops->last_error(c->be));
			return n;
		}
		for (int i = 0; i < n; i++)
			dispatch(c, &evs[i]);
		handled += n;
		peers_reap(c);
		if (n < EVENT_BATCH)
			break;
	}
	handled += post_work(c);
	peers_reap(c);
	return handled;
}

static void nic_table_load(kvb_connector_t *c)
{
	c->n_nics = c->be->ops->nic_count(c->be);
	if (c->n_nics > KVB_MAX_NICS)
		c->n_nics = KVB_MAX_NICS;
	for (uint32_t i = 0; i < c->n_nics; i++) {
		if (c->be->ops->nic_query(c->be, i, &c->nics[i]) != KVB_OK)
			textf(c->nics[i].name, sizeof(c->nics[i].name), "nic%u", i);
	}
}

/* Resolve the configured priority matrix (NIC names) to indices. */
static int topology_resolve(kvb_connector_t *c, kvb_topology_entry_t **out, kvb_err_t *err)
{
	*out = NULL;
	if (!c->cfg.n_topology)
		return KVB_OK;
	kvb_topology_entry_t *t = g_new0(kvb_topology_entry_t, c->cfg.n_topology);
	for (uint32_t e = 0; e < c->cfg.n_topology; e++) {
		const kvb_topology_names_t *src = &c->cfg.topology[e];
		g_strlcpy(t[e].location, src->location, sizeof(t[e].location));
		for (int pass = 0; pass < 2; pass++) {
			char **names = pass == 0 ? src->preferred : src->secondary;
			uint32_t *dst = pass == 0 ? t[e].preferred : t[e].secondary;
			uint32_t *n = pass == 0 ? &t[e].n_preferred : &t[e].n_secondary;
			for (char **name = names; name && *name; name++) {
				uint32_t idx = KVB_NIC_NONE;
				for (uint32_t i = 0; i < c->n_nics; i++)
					if (strcmp(c->nics[i].name, *name) == 0)
						idx = i;
				if (idx == KVB_NIC_NONE) {
					g_free(t);
					return kvb_err_set(err, KVB_ERR_CONFIG,
							   "topology entry %s names NIC '%s', which the %s backend does not have",
							   src->location, *name, c->be->ops->name);
				}
				if (*n < KVB_MAX_NICS)
					dst[(*n)++] = idx;
			}
		}
	}
	*out = t;
	return KVB_OK;
}

int kvb_connector_new(const kvb_config_t *cfg, kvb_backend_t *be, kvb_connector_t **out,
		      kvb_err_t *err)
{
	if (!out)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_connector_new: out is NULL");
	*out = NULL;
	if (!cfg || !be)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_connector_new: config and backend are required");
	int rc = kvb_config_validate(cfg, err);
	if (rc != KVB_OK)
		return rc;
	if (be->user)
		return kvb_err_set(err, KVB_ERR_STATE, "backend instance already has an owner");
	kvb_connector_t *c = g_new0(kvb_connector_t, 1);
	kvb_config_copy(&c->cfg, cfg);
	c->be = be;
	c->producer = cfg->role == KVB_ROLE_PRODUCER || cfg->role == KVB_ROLE_BOTH;
	c->consumer = cfg->role == KVB_ROLE_CONSUMER || cfg->role == KVB_ROLE_BOTH;
	nic_table_load(c);
	if (c->n_nics == 0) {
		kvb_config_clear(&c->cfg);
		g_free(c);
		return kvb_err_set(err, KVB_ERR_CONFIG, "backend '%s' reports no NICs", be->ops->name);
	}
	kvb_topology_entry_t *topo = NULL;
	rc = topology_resolve(c, &topo, err);
	if (rc == KVB_OK) {
		kvb_policy_params_t pp = {c->n_nics, cfg->seed, topo, topo ? cfg->n_topology : 0};
		rc = kvb_nic_policy_new(cfg->nic_policy, &pp, &c->policy, err);
		g_free(topo);
	}
	if (rc != KVB_OK) {
		kvb_config_clear(&c->cfg);
		g_free(c);
		return rc;
	}
	c->producers = g_hash_table_new(g_str_hash, g_str_equal);
	c->consumers = g_hash_table_new(g_str_hash, g_str_equal);
	c->tombstones = g_hash_table_new(g_str_hash, g_str_equal);
	c->timers = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
	c->peers_by_addr = g_hash_table_new(g_str_hash, g_str_equal);
	c->scratch = g_byte_array_new();
	be->user = c;
	*out = c;
	return KVB_OK;
}

void kvb_connector_free(kvb_connector_t *c)
{
	if (!c)
		return;
	/* posted slices: the backend discards them when it is closed */
	while (c->inflight) {
		slice_t *sl = c->inflight;
		inflight_unlink(c, sl);
		g_free(sl);
	}
	GHashTableIter it;
	gpointer v;
	g_hash_table_iter_init(&it, c->producers);
	while (g_hash_table_iter_next(&it, NULL, &v)) {
		prod_req_t *r = v;
		send_t *s;
		while ((s = g_queue_pop_head(&r->sends))) {
			slice_t *sl;
			while ((sl = g_queue_pop_head(&s->retry)))
				g_free(sl);
			pull_free(s->pull);
			g_free(s->copies);
			g_free(s);
		}
		prod_req_free(r);
	}
	g_hash_table_destroy(c->producers);
	g_hash_table_iter_init(&it, c->consumers);
	while (g_hash_table_iter_next(&it, NULL, &v))
		cons_req_free(v);
	g_hash_table_destroy(c->consumers);
	g_hash_table_destroy(c->tombstones);
	g_queue_clear_full(&c->tomb_order, g_free);
	g_hash_table_iter_init(&it, c->timers);
	while (g_hash_table_iter_next(&it, NULL, &v))
		c->be->ops->timer_cancel(c->be, ((timer_ref_t *)v)->backend_id);
	g_hash_table_destroy(c->timers);
	peer_t *p;
	while ((p = g_queue_pop_head(&c->peers))) {
		c->be->ops->conn_close(c->be, p->conn);
		kvb_conn_free(p->conn);
		g_queue_clear(&p->targets);
		g_queue_clear(&p->sends);
		g_free(p);
	}
	g_queue_clear(&c->dead_peers);
	g_hash_table_destroy(c->peers_by_addr);
	g_queue_clear(&c->active);
	for (uint32_t i = 0; i < c->n_regions; i++)
		if (c->mrs[i])
			c->be->ops->mr_dereg(c->be, c->mrs[i]);
	g_free(c->mrs);
	g_free(c->rkeys);
	g_free(c->regions);
	g_free(c->locations);
	g_free(c->group_blocks);
	kvb_finished_t *f;
	while ((f = g_queue_pop_head(&c->finished)))
		g_free(f);
	kvb_nic_policy_free(c->policy);
	g_byte_array_unref(c->scratch);
	c->be->user = NULL;
	kvb_config_clear(&c->cfg);
	g_free(c);
}

int kvb_connector_register_layout(kvb_connector_t *c, const kvb_region_t *regions,
				  uint32_t n_regions, kvb_err_t *err)
{
	if (c->regions)
		return api_fail(c, err, KVB_ERR_STATE, "a KV layout is already registered");
	if (!regions || n_regions == 0)
		return api_fail(c, err, KVB_ERR_INVALID, "empty KV layout (0 regions)");
	if (n_regions > KVB_MAX_REGIONS)
		return api_fail(c, err, KVB_ERR_INVALID, "%u regions exceed the limit of %u", n_regions,
				KVB_MAX_REGIONS);
	kvb_err_t e;
	kvb_err_clear(&e);
	uint32_t n_groups = 0;
	int rc = kvb_layout_check(regions, n_regions, &n_groups, &e);
	if (rc != KVB_OK)
		return api_fail_err(c, err, &e);
	void **mrs = g_new0(void *, n_regions);
	kvb_rkey_t *rkeys = g_new0(kvb_rkey_t, n_regions);
	for (uint32_t i = 0; i < n_regions; i++) {
		kvb_mem_attr_t attr = {regions[i].mem_kind, regions[i].device};
		rc = c->be->ops->mr_reg(c->be, (void *)(uintptr_t)regions[i].base,
					(size_t)kvb_region_span(&regions[i]), &attr, &mrs[i], &rkeys[i]);
		if (rc != KVB_OK) {
			api_fail(c, err, rc, "registering region %u (%" G_GUINT64_FORMAT " bytes at 0x%" G_GINT64_MODIFIER
				 "x) failed: %s (%s)", i, kvb_region_span(&regions[i]), regions[i].base,
				 kvb_strerror(rc), c->be->ops->last_error(c->be));
			for (uint32_t k = 0; k < i; k++)
				c->be->ops->mr_dereg(c->be, mrs[k]);
			g_free(mrs);
			g_free(rkeys);
			return rc;
		}
	}
	c->regions = g_memdup2(regions, sizeof(kvb_region_t) * n_regions);
	c->n_regions = n_regions;
	c->n_groups = n_groups;
	c->mrs = mrs;
	c->rkeys = rkeys;
	c->locations = g_malloc0_n(n_regions, KVB_LOCATION_MAX);
	for (uint32_t i = 0; i < n_regions; i++)
		kvb_region_location(&regions[i], c->locations[i], KVB_LOCATION_MAX);
	c->group_blocks = g_new(uint32_t, n_groups);
	for (uint32_t g = 0; g < n_groups; g++)
		c->group_blocks[g] = UINT32_MAX;
	for (uint32_t i = 0; i < n_regions; i++) {
		uint32_t g = (uint32_t)regions[i].group;
		if (regions[i].num_blocks < c->group_blocks[g])
			c->group_blocks[g] = regions[i].num_blocks;
	}
	return KVB_OK;
}

int kvb_connector_poll_finished(kvb_connector_t *c, kvb_finished_t *out, int max)
{
	int n = 0;
	while (n < max && c->finished.length) {
		kvb_finished_t *f = g_queue_pop_head(&c->finished);
		out[n++] = *f;
		g_free(f);
	}
	return n;
}

int kvb_producer_state(const kvb_connector_t *c, const char *transfer_id)
{
	prod_req_t *r = transfer_id ? g_hash_table_lookup(c->producers, transfer_id) : NULL;
	return r ? (int)r->state : KVB_ERR_NOT_FOUND;
}

int kvb_consumer_state(const kvb_connector_t *c, const char *request_id)
{
	cons_req_t *r = request_id ? g_hash_table_lookup(c->consumers, request_id) : NULL;
	return r ? (int)r->state : KVB_ERR_NOT_FOUND;
}

void kvb_connector_counters(const kvb_connector_t *c, kvb_counters_t *out)
{
	*out = c->counters;
}

void kvb_connector_set_record_fn(kvb_connector_t *c, kvb_record_fn fn, void *user)
{
	c->record_fn = fn;
	c->record_user = user;
}

const char *kvb_connector_last_error(const kvb_connector_t *c)
{
	return c->last_error;
}

const kvb_config_t *kvb_connector_config(const kvb_connector_t *c)
{
	return &c->cfg;
}

kvb_backend_t *kvb_connector_backend(const kvb_connector_t *c)
{
	return c->be;
}

const char *kvb_producer_state_name(kvb_producer_state_t state)
{
	switch (state) {
	case KVB_PRODUCER_PLACEHOLDER: return "placeholder";
	case KVB_PRODUCER_PREFILL: return "prefill";
	case KVB_PRODUCER_READY: return "ready";
	case KVB_PRODUCER_SENDING: return "sending";
	case KVB_PRODUCER_SENT: return "sent";
	case KVB_PRODUCER_EXPIRED: return "expired";
	case KVB_PRODUCER_ABORTED: return "aborted";
	}
	return "unknown";
}

const char *kvb_consumer_state_name(kvb_consumer_state_t state)
{
	switch (state) {
	case KVB_CONSUMER_EXPECTED: return "expected";
	case KVB_CONSUMER_WAITING: return "waiting";
	case KVB_CONSUMER_REQUESTED: return "requested";
	case KVB_CONSUMER_RECEIVING: return "receiving";
	case KVB_CONSUMER_DONE: return "done";
	case KVB_CONSUMER_FAILED: return "failed";
	}
	return "unknown";
}
