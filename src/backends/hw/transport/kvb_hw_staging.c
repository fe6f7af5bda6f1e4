/*
 * GPU memory through NICs that cannot reach it, posting side
 * (kvb_hw_staging.h).
 *
 * Staged posts: an op whose local range is device memory on a staging NIC
 * is cut into pieces of at most one bounce chunk (pinned host memory,
 * registered on every RDMA device for local access only).  The pool is
 * carved in 64 KiB units, so a small piece (one 16 KiB block) takes one
 * unit and many of them fly at once, while a long op moves a chunk per
 * piece.  A WRITE copies device -> chunk, then the transport posts from the
 * chunk; a READ lands in the chunk, then copies chunk -> device.  The op
 * completes when all its pieces have, with the first failure's status.  The
 * pool is fixed (params.staging_bytes); ops wait for room in order.
 *
 * Mirrored posts: one-sided RDMA never tells the target that bytes landed,
 * so an RDMA device that cannot reach a GPU registration exposes a pinned
 * host mirror of it, registered at the GPU addresses (ibv_reg_mr_iova),
 * under the descriptor extension kvb_mirror_rkey (its plain rkey stays 0: a
 * Mooncake peer fails instead of writing where nothing reads).  A kvbridge
 * peer writing there sends SYNC (mirror -> GPU) on the control stream after
 * its WRITE and completes the op when SYNCED comes back; before a READ it
 * asks for GPU -> mirror first.  The peer's DONE notice follows its
 * completions on the same ordered stream, so the consumer's core never sees
 * DONE before the bytes are in GPU memory.  The stream is the link owner's
 * (hw_link_t.sync_send); this file never sees a control protocol.
 *
 * Completions of pieces and mirrored ops come back from the transports
 * through the instance's xfer_filter, which this file installs.
 */
#include "config.h"

#include <inttypes.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>

#include "transport/kvb_hw_gpu.h"
#include "transport/kvb_hw_rdma.h"
#include "transport/kvb_hw_staging.h"
#include "transport/kvb_hw_tcp.h"

#define STAGE_RETRY_NS (1000u * 1000u) /* a transport queue was full: try again */

typedef struct stage_op stage_op_t;

typedef struct stage_piece {
	stage_op_t *so;
	uint64_t off, len;
	uint32_t unit, n_units;  /* where in the pool */
	uint32_t nic;
	bool posted;           /* handed to the transport: its completion is ours */
} stage_piece_t;

struct stage_op {
	hw_link_t *link;
	hw_mr_t *mr;
	kvb_slice_op_t op;
	uint64_t next;         /* first byte not yet cut into a piece */
	uint32_t live;         /* pieces started, not finished */
	int status;
	uint32_t nic;
};

typedef struct hw_staging {
	hw_t *hw;
	/* the bounce pool */
	uint8_t *pool;
	size_t pool_len, chunk_len, unit_len;
	uint32_t n_units;
	uint32_t units_free;
	uint32_t cursor;       /* where the next first-fit search starts */
	hw_mr_t pool_mr;
	uint8_t *unit_used;    /* n_units flags */
	GQueue waiting;        /* stage_op_t* with bytes not yet cut into pieces */
	GQueue parked;         /* stage_piece_t* whose post found a full queue */
	hw_deadline_t *retry;
	GHashTable *pieces;    /* every live stage_piece_t* (a transport completion's
				* cookie is one of these while it is posted) */
	GHashTable *ops;       /* every live stage_op_t* */
	GHashTable *mirrored;  /* every live mirrored_op_t* (cookies as for pieces) */
	uint64_t sync_seq;
} hw_staging_t;

static hw_staging_t *G(hw_t *hw)
{
	return hw->staging;
}

static bool xfer_filter(hw_t *hw, uint64_t cookie, int status, uint32_t nic);
static void pool_free(hw_staging_t *g);

int hw_staging_open(hw_t *hw, kvb_err_t *err)
{
	(void)err;
	hw_staging_t *g = g_new0(hw_staging_t, 1);
	g->hw = hw;
	g->pieces = g_hash_table_new(g_direct_hash, g_direct_equal);
	g->ops = g_hash_table_new(g_direct_hash, g_direct_equal);
	g->mirrored = g_hash_table_new(g_direct_hash, g_direct_equal);
	hw->staging = g;
	hw->xfer_filter = xfer_filter;
	return KVB_OK;
}

/* After hw_gpu_drain: no copy uses the pool any more. */
void hw_staging_close(hw_t *hw)
{
	hw_staging_t *g = G(hw);
	if (!g)
		return;
	GHashTableIter it;
	gpointer key;
	g_hash_table_iter_init(&it, g->pieces);
	while (g_hash_table_iter_next(&it, &key, NULL))
		g_free(key);
	g_hash_table_destroy(g->pieces);
	g_hash_table_iter_init(&it, g->ops);
	while (g_hash_table_iter_next(&it, &key, NULL))
		g_free(key);
	g_hash_table_destroy(g->ops);
	g_hash_table_iter_init(&it, g->mirrored);
	while (g_hash_table_iter_next(&it, &key, NULL))
		g_free(key);
	g_hash_table_destroy(g->mirrored);
	g_queue_clear(&g->waiting);
	g_queue_clear(&g->parked);
	hw_deadline_free(g->retry);
	pool_free(g);
	g_free(g);
	hw->staging = NULL;
	hw->xfer_filter = NULL;
}

/* ------------------------------------------------------------------------ */
/* the bounce pool                                                          */

static void pool_free(hw_staging_t *g)
{
	if (g->pool) { /* a pool exists only registered */
		hw_rdma_mr_dereg(g->hw, &g->pool_mr);
		hw_gpu_host_free(g->hw, g->pool);
	}
	g->pool = NULL;
	g_free(g->unit_used);
	g->unit_used = NULL;
}

static int pool_ensure(hw_staging_t *g, kvb_err_t *err)
{
	if (g->pool)
		return KVB_OK;
	const kvb_hw_params_t *prm = hw_params(g->hw);
	g->chunk_len = prm->staging_chunk ? prm->staging_chunk : (4u << 20);
	g->unit_len = MIN(g->chunk_len, (size_t)64 << 10);
	g->chunk_len = g->chunk_len / g->unit_len * g->unit_len;
	uint64_t chunks = MAX((uint64_t)1, prm->staging_bytes / g->chunk_len);
	g->pool_len = (size_t)chunks * g->chunk_len;
	g->n_units = (uint32_t)(g->pool_len / g->unit_len);
	g->pool = hw_gpu_host_alloc(g->hw, g->pool_len);
	if (!g->pool)
		return kvb_err_set(err, KVB_ERR_NO_RESOURCE, "staging pool of %zu bytes: out of pinned memory",
				   g->pool_len);
	g->pool_mr.addr = (uint64_t)(uintptr_t)g->pool;
	g->pool_mr.len = g->pool_len;
	g->pool_mr.kind = KVB_MEM_HOST;
	g->pool_mr.device = -1;
	if (hw_rdma_mr_reg_local(g->hw, &g->pool_mr, err) != KVB_OK) {
		hw_gpu_host_free(g->hw, g->pool);
		g->pool = NULL;
		return err->code;
	}
	g->unit_used = g_new0(uint8_t, g->n_units);
	g->units_free = g->n_units;
	hw_log(g->hw, "staging pool: %zu bytes, pieces of up to %zu bytes in %zu-byte units",
	       g->pool_len, g->chunk_len, g->unit_len);
	return KVB_OK;
}

/* ------------------------------------------------------------------------ */
/* staged posts                                                             */

static void stage_pump(hw_staging_t *g);

static void stage_op_finish_piece(hw_staging_t *g, stage_piece_t *pc, int status, uint32_t nic)
{
	stage_op_t *so = pc->so;
	memset(g->unit_used + pc->unit, 0, pc->n_units);
	g->units_free += pc->n_units;
	g_hash_table_remove(g->pieces, pc);
	g_free(pc);
	if (status != KVB_OK && so->status == KVB_OK) {
		so->status = status;
		/* pieces not started yet will not be */
		if (so->next < so->op.len) {
			so->next = so->op.len;
			g_queue_remove(&g->waiting, so);
		}
	}
	so->nic = nic;
	so->live--;
	if (!so->live && so->next >= so->op.len) {
		g_hash_table_remove(g->ops, so);
		hw_xfer_done(g->hw, so->op.cookie, so->status, so->nic);
		g_free(so);
	}
	stage_pump(g);
}

static uint8_t *unit_ptr(hw_staging_t *g, uint32_t unit)
{
	return g->pool + (size_t)unit * g->unit_len;
}

/* First fit of n contiguous free units from the cursor on; false when
 * there is no such run now. */
static bool units_take(hw_staging_t *g, uint32_t n, uint32_t *start)
{
	if (n > g->units_free)
		return false;
	for (uint32_t tried = 0, i = g->cursor % g->n_units; tried < g->n_units;) {
		if (i + n > g->n_units) {
			tried += g->n_units - i;
			i = 0;
			continue;
		}
		uint32_t run = 0;
		while (run < n && !g->unit_used[i + run])
			run++;
		if (run == n) {
			memset(g->unit_used + i, 1, n);
			g->units_free -= n;
			g->cursor = i + n;
			*start = i;
			return true;
		}
		tried += run + 1;
		i += run + 1;
	}
	return false;
}

static void piece_post(hw_staging_t *g, stage_piece_t *pc)
{
	stage_op_t *so = pc->so;
	kvb_slice_op_t op = so->op;
	op.local_addr = (uint64_t)(uintptr_t)unit_ptr(g, pc->unit);
	op.local_mr = &g->pool_mr;
	op.remote_addr = so->op.remote_addr + pc->off;
	op.len = pc->len;
	op.cookie = (uint64_t)(uintptr_t)pc;
	uint64_t sl = so->op.n_slices > 1 ? so->op.slice_len : so->op.len;
	op.slice_len = MIN(sl, pc->len);
	op.n_slices = (uint32_t)((pc->len + op.slice_len - 1) / op.slice_len);
	pc->posted = true;
	int rc = hw_staging_post_host(so->link, &op, &g->pool_mr);
	if (rc == KVB_OK)
		return;
	pc->posted = false;
	if (rc == KVB_ERR_NO_RESOURCE) {
		g_queue_push_tail(&g->parked, pc);
		hw_deadline_arm(g->retry, STAGE_RETRY_NS);
		return;
	}
	stage_op_finish_piece(g, pc, rc, so->op.local_nic);
}

static void retry_parked(void *obj)
{
	hw_staging_t *g = obj;
	GQueue q = g->parked;
	g_queue_init(&g->parked);
	stage_piece_t *pc;
	while ((pc = g_queue_pop_head(&q)))
		piece_post(g, pc);
}

/* device -> chunk finished (WRITE): post the chunk. */
static void write_copied(void *arg, int status, const char *why)
{
	stage_piece_t *pc = arg;
	hw_staging_t *g = G(pc->so->link->hw);
	if (status != KVB_OK) {
		hw_set_error(g->hw, "staging: %s", why);
		stage_op_finish_piece(g, pc, status, pc->so->op.local_nic);
		return;
	}
	piece_post(g, pc);
}

/* chunk -> device finished (READ): the piece is done. */
static void read_copied(void *arg, int status, const char *why)
{
	stage_piece_t *pc = arg;
	hw_staging_t *g = G(pc->so->link->hw);
	if (status != KVB_OK)
		hw_set_error(g->hw, "staging: %s", why);
	stage_op_finish_piece(g, pc, status, pc->nic);
}

static bool mirrored_done(hw_staging_t *g, uint64_t cookie, int status, uint32_t nic);

static bool xfer_filter(hw_t *hw, uint64_t cookie, int status, uint32_t nic)
{
	hw_staging_t *g = G(hw);
	if (!g)
		return false;
	if (mirrored_done(g, cookie, status, nic))
		return true;
	stage_piece_t *pc = (stage_piece_t *)(uintptr_t)cookie;
	if (!g_hash_table_contains(g->pieces, pc) || !pc->posted)
		return false;
	pc->posted = false;
	pc->nic = nic;
	stage_op_t *so = pc->so;
	if (status == KVB_OK && so->op.opcode == KVB_XFER_READ) {
		hw_gpu_copy(hw, so->mr, unit_ptr(g, pc->unit), so->op.local_addr + pc->off, pc->len, true,
			    read_copied, pc);
		return true;
	}
	stage_op_finish_piece(g, pc, status, nic);
	return true;
}

static void stage_pump(hw_staging_t *g)
{
	while (g->waiting.length && g->units_free) {
		stage_op_t *so = g->waiting.head->data;
		/* whole slices per piece where a slice fits in a chunk */
		uint64_t sl = so->op.n_slices > 1 ? so->op.slice_len : so->op.len;
		uint64_t take = g->chunk_len;
		if (sl <= g->chunk_len)
			take = g->chunk_len / sl * sl;
		uint64_t len = MIN(take, so->op.len - so->next);
		uint32_t n = (uint32_t)((len + g->unit_len - 1) / g->unit_len), unit;
		if (!units_take(g, n, &unit))
			break; /* in order: the head waits for room */
		stage_piece_t *pc = g_new0(stage_piece_t, 1);
		g_hash_table_add(g->pieces, pc);
		pc->so = so;
		pc->unit = unit;
		pc->n_units = n;
		pc->off = so->next;
		pc->len = len;
		pc->nic = so->op.local_nic;
		so->next += pc->len;
		so->live++;
		if (so->next >= so->op.len)
			g_queue_pop_head(&g->waiting);
		if (so->op.opcode == KVB_XFER_WRITE)
			hw_gpu_copy(g->hw, so->mr, unit_ptr(g, unit), so->op.local_addr + pc->off, pc->len,
				    false, write_copied, pc);
		else
			piece_post(g, pc);
	}
}

int hw_staging_post(hw_link_t *p, hw_mr_t *m, const kvb_slice_op_t *op)
{
	hw_t *hw = p->hw;
	hw_staging_t *g = G(hw);
	kvb_err_t err;
	if (!op->len || (op->opcode != KVB_XFER_WRITE && op->opcode != KVB_XFER_READ)) {
		hw_set_error(hw, "xfer_post: empty op or unknown opcode %d", (int)op->opcode);
		return KVB_ERR_INVALID;
	}
	if (pool_ensure(g, &err) != KVB_OK) {
		hw_set_error(hw, "xfer_post: %s", err.msg);
		return err.code;
	}
	if (!g->retry)
		g->retry = hw_deadline_new(hw, retry_parked, g);
	stage_op_t *so = g_new0(stage_op_t, 1);
	so->link = p;
	so->mr = m;
	so->op = *op;
	so->nic = op->local_nic;
	g_hash_table_add(g->ops, so);
	g_queue_push_tail(&g->waiting, so);
	stage_pump(g);
	return KVB_OK;
}

/* ------------------------------------------------------------------------ */
/* a peer's GPU memory through its mirror                                   */

typedef enum mphase {
	M_SYNC_OUT = 1,   /* READ: waiting for the peer's GPU -> mirror copy */
	M_POSTED = 2,     /* on the RDMA transport */
	M_SYNC_IN = 3,    /* WRITE done: waiting for the peer's mirror -> GPU copy */
} mphase_t;

typedef struct mirrored_op {
	hw_link_t *link;
	hw_mr_t *mr;           /* the local registration (or the staging pool) */
	kvb_slice_op_t op;     /* remote_key borrowed until completion, as the core promises */
	uint64_t sync_id;
	mphase_t phase;
	uint32_t nic;
} mirrored_op_t;

/* Per link: the mirrored ops waiting for its SYNCED, and the copies it
 * asked us for. */
typedef struct link_syncs {
	GHashTable *waiting;   /* sync id -> mirrored_op_t* */
	GQueue serving;        /* sync_serve_t* */
} link_syncs_t;

typedef struct sync_serve {
	hw_link_t *link;
	uint64_t id;
	hw_gpu_copy_t *copy;
} sync_serve_t;

static link_syncs_t *link_syncs(hw_link_t *l)
{
	if (!l->staging) {
		link_syncs_t *ls = g_new0(link_syncs_t, 1);
		ls->waiting = g_hash_table_new(g_int64_hash, g_int64_equal);
		l->staging = ls;
	}
	return l->staging;
}

static void mirrored_finish(hw_staging_t *g, mirrored_op_t *m, int status)
{
	g_hash_table_remove(g->mirrored, m);
	uint64_t cookie = m->op.cookie;
	uint32_t nic = m->nic;
	g_free(m);
	hw_xfer_done(g->hw, cookie, status, nic);
}

static void mirrored_sync(hw_staging_t *g, mirrored_op_t *m, bool to_device)
{
	hw_link_t *l = m->link;
	kvb_mc_sync_t s = {.id = ++g->sync_seq, .addr = m->op.remote_addr, .len = m->op.len,
			   .to_device = to_device};
	uint8_t buf[KVB_MC_SYNC_LEN];
	kvb_mc_sync_encode(buf, &s);
	m->sync_id = s.id;
	m->phase = to_device ? M_SYNC_IN : M_SYNC_OUT;
	if (l->down || !l->sync_send || !l->sync_send(l, KVB_MC_KVB_SYNC, buf, sizeof(buf))) {
		hw_set_error(g->hw, "%s: GPU memory behind its mirror needs the kvbridge control stream, "
				    "which is down", l->name);
		mirrored_finish(g, m, KVB_ERR_PEER);
		return;
	}
	g_hash_table_insert(link_syncs(l)->waiting, &m->sync_id, m);
	hw_stats(g->hw)->gpu_syncs_requested++;
}

/* Post m's op to the peer's mirror; its completion comes back as m.  A
 * refusal means no completion will come. */
static int mirrored_post(mirrored_op_t *m)
{
	kvb_slice_op_t op = m->op;
	op.cookie = (uint64_t)(uintptr_t)m;
	m->phase = M_POSTED;
	return hw_rdma_post(m->link, &op, m->mr, true);
}

/* An RDMA op whose remote range is a peer's GPU memory seen through its
 * mirror on the remote device: a WRITE is followed, a READ preceded, by a
 * SYNC on the link's stream, and completes once the peer answers. */
static int mirrored_start(hw_link_t *l, const kvb_slice_op_t *op, hw_mr_t *mr)
{
	hw_staging_t *g = G(l->hw);
	if (!l->sync_send) {
		hw_set_error(l->hw, "xfer_post: 0x%" PRIx64 " is GPU memory %s exposes through a host "
				    "mirror; only a kvbridge peer (control stream) can keep it in step",
			     op->remote_addr, l->name);
		return KVB_ERR_RANGE;
	}
	mirrored_op_t *m = g_new0(mirrored_op_t, 1);
	m->link = l;
	m->mr = mr;
	m->op = *op;
	m->nic = op->local_nic;
	g_hash_table_add(g->mirrored, m);
	if (op->opcode == KVB_XFER_READ) {
		mirrored_sync(g, m, false);
		return KVB_OK;
	}
	int rc = mirrored_post(m);
	if (rc != KVB_OK) {
		/* not accepted: no completion for it */
		g_hash_table_remove(g->mirrored, m);
		g_free(m);
	}
	return rc;
}

int hw_staging_post_host(hw_link_t *l, const kvb_slice_op_t *op, hw_mr_t *m)
{
	if (l->down || !l->have_seg) {
		hw_set_error(l->hw, "xfer_post: connection %s is not up", l->name);
		return KVB_ERR_PEER;
	}
	if (!hw_rdma_link_usable(l))
		return hw_lane_post(l, op, m);
	if (hw_rdma_remote_mirrored(l, op))
		return mirrored_start(l, op, m); /* GPU memory the peer device cannot reach */
	return hw_rdma_post(l, op, m, false);
}

static bool mirrored_done(hw_staging_t *g, uint64_t cookie, int status, uint32_t nic)
{
	mirrored_op_t *m = (mirrored_op_t *)(uintptr_t)cookie;
	if (!g_hash_table_contains(g->mirrored, m) || m->phase != M_POSTED)
		return false;
	m->nic = nic;
	if (status == KVB_OK && m->op.opcode == KVB_XFER_WRITE)
		mirrored_sync(g, m, true);
	else
		mirrored_finish(g, m, status);
	return true;
}

static void synced(hw_staging_t *g, hw_link_t *l, const kvb_mc_synced_t *s)
{
	link_syncs_t *ls = l->staging;
	mirrored_op_t *m = ls ? g_hash_table_lookup(ls->waiting, &s->id) : NULL;
	if (!m) {
		hw_warn(g->hw, "peer %s answered sync %" PRIu64 ", which is not waiting", l->name, s->id);
		return;
	}
	g_hash_table_remove(ls->waiting, &s->id);
	if (s->status != KVB_OK) {
		hw_set_error(g->hw, "peer %s could not sync its GPU memory at 0x%" PRIx64 ": %s", l->name,
			     m->op.remote_addr, s->why);
		mirrored_finish(g, m, s->status == KVB_ERR_TRANSPORT ? KVB_ERR_PEER : s->status);
		return;
	}
	if (m->phase != M_SYNC_OUT) {
		mirrored_finish(g, m, KVB_OK);
		return;
	}
	int rc = mirrored_post(m); /* a READ, now that the mirror holds the GPU's bytes */
	if (rc != KVB_OK)
		mirrored_finish(g, m, rc);
}

static void serve_reply(hw_link_t *l, uint64_t id, int status, const char *why)
{
	kvb_mc_synced_t r = {.id = id, .status = status};
	g_strlcpy(r.why, why ? why : "", sizeof(r.why));
	GByteArray *b = g_byte_array_new();
	kvb_mc_synced_encode(b, &r);
	if (l->sync_send)
		l->sync_send(l, KVB_MC_KVB_SYNCED, b->data, b->len);
	g_byte_array_unref(b);
}

static void serve_copied(void *arg, int status, const char *why)
{
	sync_serve_t *sv = arg;
	hw_link_t *l = sv->link;
	g_queue_remove(&link_syncs(l)->serving, sv);
	if (status != KVB_OK)
		hw_set_error(l->hw, "sync for %s: %s", l->name, why);
	serve_reply(l, sv->id, status, status == KVB_OK ? NULL : why);
	g_free(sv);
}

static void serve(hw_staging_t *g, hw_link_t *l, const kvb_mc_sync_t *s)
{
	hw_t *hw = g->hw;
	hw_mr_t *mr = hw_mr_find(hw, s->addr, s->len);
	char why[KVB_MC_SYNC_WHY_MAX];
	if (!mr || !mr->mirror) {
		g_snprintf(why, sizeof(why), "0x%" PRIx64 " + %" PRIu64 " is not mirrored GPU memory",
			   s->addr, s->len);
		hw_stats(hw)->tcp_requests_rejected++;
		serve_reply(l, s->id, KVB_ERR_RANGE, why);
		return;
	}
	if (s->to_device && hw_fenced(hw, s->addr, s->len)) {
		hw_stats(hw)->fenced_writes++;
		serve_reply(l, s->id, KVB_ERR_RANGE, "the range belongs to a cancelled pull");
		return;
	}
	if (!hw_window_allows(hw, s->addr, s->len)) {
		hw_stats(hw)->window_refused++;
		serve_reply(l, s->id, KVB_ERR_RANGE, "outside every transfer in progress");
		return;
	}
	sync_serve_t *sv = g_new0(sync_serve_t, 1);
	sv->link = l;
	sv->id = s->id;
	g_queue_push_tail(&link_syncs(l)->serving, sv);
	hw_stats(hw)->gpu_syncs_served++;
	sv->copy = hw_gpu_copy(hw, mr, (uint8_t *)mr->mirror + (s->addr - mr->addr), s->addr,
			       (size_t)s->len, s->to_device, serve_copied, sv);
}

bool hw_staging_sync_frame(hw_link_t *l, kvb_mc_msg_type_t type, const uint8_t *payload,
			   size_t len, kvb_err_t *err)
{
	hw_staging_t *g = G(l->hw);
	if (type == KVB_MC_KVB_SYNC) {
		kvb_mc_sync_t s;
		if (kvb_mc_sync_decode(payload, len, &s, err) != KVB_OK)
			return false;
		serve(g, l, &s);
		return true;
	}
	kvb_mc_synced_t r;
	if (kvb_mc_synced_decode(payload, len, &r, err) != KVB_OK)
		return false;
	synced(g, l, &r);
	return true;
}

void hw_staging_link_down(hw_link_t *l)
{
	link_syncs_t *ls = l->staging;
	hw_staging_t *g = G(l->hw);
	if (!ls || !g)
		return;
	GList *ms = g_hash_table_get_values(ls->waiting);
	g_hash_table_remove_all(ls->waiting);
	for (GList *it = ms; it; it = it->next)
		mirrored_finish(g, it->data, KVB_ERR_PEER);
	g_list_free(ms);
}

void hw_staging_link_clear(hw_link_t *l)
{
	link_syncs_t *ls = l->staging;
	hw_staging_t *g = G(l->hw);
	if (!ls)
		return;
	/* instance close: ops still waiting are discarded without events */
	GList *ms = g_hash_table_get_values(ls->waiting);
	for (GList *it = ms; it; it = it->next) {
		if (g)
			g_hash_table_remove(g->mirrored, it->data);
		g_free(it->data);
	}
	g_list_free(ms);
	g_hash_table_destroy(ls->waiting);
	sync_serve_t *sv;
	while ((sv = g_queue_pop_head(&ls->serving))) {
		hw_gpu_copy_cancel(sv->copy, NULL);
		g_free(sv);
	}
	g_free(ls);
	l->staging = NULL;
}
