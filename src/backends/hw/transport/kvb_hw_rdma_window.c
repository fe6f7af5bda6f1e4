/*
 * RDMA windows: remote keys that reach one pull's destination blocks, for
 * that pull only (docs/security.md).
 *
 * A worker keeps its host-memory registrations closed to remote access
 * (IBV_ACCESS_LOCAL_WRITE only; its descriptor publishes rkey 0 for them)
 * unless params.memory_open or params.rdma_buffer_keys.  Then:
 *  - Consumer: for each pull it sends on a kvbridge stream, every range of
 *    the pull's destination blocks that lies in a closed registration is
 *    registered again on every device with IBV_ACCESS_REMOTE_WRITE (a
 *    "per-transfer registration": it works on every verbs device, rxe
 *    included, where memory windows are not universal), and the keys go to
 *    the producer in a KVB_MC_KVB_WINDOW frame just before the pull.  When
 *    the pull ends (DONE, CANCEL, the stream gone) the registrations are
 *    deregistered: the keys are dead, and a late or forged write fails at
 *    the NIC with a remote access error.
 *  - Producer: the keys a peer sent are kept on its link until the pull
 *    they belong to ends; hw_rdma_post writes with the window's key for the
 *    peer device, else the descriptor's, and refuses to post with none.
 * GPU memory keeps whole-registration keys (its mirror and dma-buf paths).
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>
#include <infiniband/verbs.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/hw.h>

#include "transport/kvb_hw_rdma_int.h"
#include "transport/kvb_hw_rdma_window.h"
#include "kvb_rdma_window_wire.h"

#define R hw_rdma_of

/* A link keeps at most this many windows of one peer (a peer that opens
 * more is broken or hostile: its stream is closed). */
#define LINK_WINDOWS_MAX 4096u

typedef struct hw_rdma_window {
	hw_t *hw;
	uint32_t n_mrs;
	struct ibv_mr **mrs;
} hw_rdma_window_t;

bool hw_rdma_mr_closed(const hw_mr_t *m)
{
	return m && m->rdma && !((const rdma_mrs_t *)m->rdma)->remote_open;
}

bool hw_rdma_ranges_closed(hw_t *hw, const GArray *ranges)
{
	const uint64_t *r = (const uint64_t *)(void *)ranges->data;
	for (guint i = 0; i + 1 < ranges->len; i += 2)
		if (hw_rdma_mr_closed(hw_mr_find(hw, r[i], r[i + 1])))
			return true;
	return false;
}

static int pair_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static void window_free(void *arg)
{
	hw_rdma_window_t *w = arg;
	if (!w)
		return;
	for (uint32_t i = 0; i < w->n_mrs; i++)
		if (w->mrs[i])
			ibv_dereg_mr(w->mrs[i]);
	if (w->hw->stats.rdma_windows_open)
		w->hw->stats.rdma_windows_open--;
	g_free(w->mrs);
	g_free(w);
}

static int window_register(hw_t *hw, const GArray *ranges, const char *transfer_id,
			    const char *request_id, hw_rdma_window_t **out, GByteArray *frame,
			    kvb_err_t *err)
{
	hw_rdma_t *r = R(hw);
	*out = NULL;
	if (!r || !ranges->len || !hw_rdma_ranges_closed(hw, ranges))
		return KVB_OK;
	/* the frame wants ascending, disjoint ranges; a pull lists blocks in
	 * its own order */
	uint32_t n = ranges->len / 2;
	uint64_t *sorted = g_memdup2(ranges->data, (gsize)n * 2 * sizeof(uint64_t));
	qsort(sorted, n, 2 * sizeof(uint64_t), pair_cmp);
	uint32_t k = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (k && sorted[2 * k - 2] + sorted[2 * k - 1] >= sorted[2 * i]) {
			uint64_t end = MAX(sorted[2 * k - 2] + sorted[2 * k - 1], sorted[2 * i] + sorted[2 * i + 1]);
			sorted[2 * k - 1] = end - sorted[2 * k - 2];
			continue;
		}
		sorted[2 * k] = sorted[2 * i];
		sorted[2 * k + 1] = sorted[2 * i + 1];
		k++;
	}
	if (k > KVB_WINDOW_MAX_RANGES) {
		g_free(sorted);
		return kvb_err_set(err, KVB_ERR_INVALID, "a pull of %u separate block runs: more than the "
				   "%u one RDMA window holds", k, KVB_WINDOW_MAX_RANGES);
	}
	hw_rdma_window_t *w = g_new0(hw_rdma_window_t, 1);
	w->hw = hw;
	w->mrs = g_new0(struct ibv_mr *, (gsize)k * r->n_devs);
	uint32_t *keys = g_new0(uint32_t, (gsize)k * r->n_devs);
	int rc = KVB_OK;
	uint64_t t0 = hw_now_ns();
	for (uint32_t i = 0; i < k && rc == KVB_OK; i++) {
		if (!hw_rdma_mr_closed(hw_mr_find(hw, sorted[2 * i], sorted[2 * i + 1])))
			continue; /* open memory: the descriptor's key serves */
		for (uint32_t d = 0; d < r->n_devs; d++) {
			struct ibv_mr *mr = ibv_reg_mr(r->devs[d].pd, (void *)(uintptr_t)sorted[2 * i],
						       sorted[2 * i + 1],
						       IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
			if (!mr) {
				int e = errno;
				rc = kvb_err_set(err, KVB_ERR_NO_RESOURCE, "ibv_reg_mr of an RDMA window "
						 "(0x%" PRIx64 " + %" PRIu64 ") on %s: %s%s", sorted[2 * i],
						 sorted[2 * i + 1], r->devs[d].name, g_strerror(e),
						 e == ENOMEM || e == EPERM ? " (raise RLIMIT_MEMLOCK: ulimit -l)" : "");
				break;
			}
			w->mrs[w->n_mrs++] = mr;
			keys[(size_t)i * r->n_devs + d] = mr->rkey;
			hw_log(hw, "window of %s: 0x%" PRIx64 " + %" PRIu64 " on %s: rkey 0x%x", transfer_id,
			       sorted[2 * i], sorted[2 * i + 1], r->devs[d].name, mr->rkey);
			hw->stats.rdma_window_registrations++;
		}
	}
	hw->stats.rdma_windows_open++;
	hw->stats.rdma_window_reg_ns += hw_now_ns() - t0;
	if (rc == KVB_OK) {
		kvb_window_keys_t wk;
		memset(&wk, 0, sizeof(wk));
		g_strlcpy(wk.transfer_id, transfer_id, sizeof(wk.transfer_id));
		g_strlcpy(wk.request_id, request_id ? request_id : "", sizeof(wk.request_id));
		wk.n_devices = r->n_devs;
		wk.n_ranges = k;
		wk.ranges = sorted;
		wk.rkeys = keys;
		rc = kvb_window_keys_encode(frame, &wk, err);
	}
	g_free(sorted);
	g_free(keys);
	if (rc != KVB_OK) {
		window_free(w);
		return rc;
	}
	*out = w;
	return KVB_OK;
}

int hw_window_open_keyed(hw_t *hw, const void *owner, const char *transfer_id,
			 const char *request_id, const GArray *ranges, const char *peer, GByteArray *keys,
			 kvb_err_t *err)
{
	hw_rdma_window_t *w = NULL;
	int rc = window_register(hw, ranges, transfer_id, request_id, &w, keys, err);
	if (rc != KVB_OK)
		return rc;
	hw_window_open_with(hw, owner, transfer_id, request_id, ranges, peer, w ? window_free : NULL, w);
	return KVB_OK;
}

int hw_rdma_mr_open(hw_t *hw, hw_mr_t *m, kvb_err_t *err)
{
	hw_rdma_t *r = R(hw);
	rdma_mrs_t *mrs = m->rdma;
	if (!r || !mrs || mrs->remote_open)
		return KVB_OK;
	int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
	for (uint32_t i = 0; i < r->n_devs; i++) {
		if (!mrs->mr[i])
			continue;
		struct ibv_mr *open = ibv_reg_mr(r->devs[i].pd, (void *)(uintptr_t)m->addr, m->len, access);
		if (!open)
			return kvb_err_set(err, KVB_ERR_NO_RESOURCE, "ibv_reg_mr (opening 0x%" PRIx64 " + %"
					   PRIu64 " to peers) on %s: %s", m->addr, m->len, r->devs[i].name,
					   g_strerror(errno));
		ibv_dereg_mr(mrs->mr[i]);
		mrs->mr[i] = open;
	}
	mrs->remote_open = true;
	return KVB_OK;
}

/* ---- the producer: keys peers gave us ------------------------------------- */

static void keys_free(gpointer p)
{
	kvb_window_keys_clear(p);
	g_free(p);
}

int hw_link_window_keys_add(hw_link_t *l, const uint8_t *payload, size_t len, kvb_err_t *err)
{
	kvb_window_keys_t *w = g_new0(kvb_window_keys_t, 1);
	int rc = kvb_window_keys_decode(payload, len, w, err);
	if (rc != KVB_OK) {
		g_free(w);
		return rc;
	}
	if (!l->window_keys)
		l->window_keys = g_ptr_array_new_with_free_func(keys_free);
	if (l->window_keys->len >= LINK_WINDOWS_MAX) {
		keys_free(w);
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "more than %u RDMA windows open at once",
				   LINK_WINDOWS_MAX);
	}
	g_ptr_array_add(l->window_keys, w);
	return KVB_OK;
}

void hw_link_window_keys_drop(hw_link_t *l, const char *transfer_id, const char *request_id)
{
	if (!l->window_keys)
		return;
	if (!transfer_id) {
		g_ptr_array_free(l->window_keys, TRUE);
		l->window_keys = NULL;
		return;
	}
	for (guint i = 0; i < l->window_keys->len;) {
		kvb_window_keys_t *w = l->window_keys->pdata[i];
		if (!strcmp(w->transfer_id, transfer_id) && !strcmp(w->request_id, request_id ? request_id : ""))
			g_ptr_array_remove_index_fast(l->window_keys, i);
		else
			i++;
	}
}

uint32_t hw_link_window_rkey(const hw_link_t *l, uint64_t addr, uint64_t len, uint32_t dev)
{
	for (guint i = 0; l->window_keys && i < l->window_keys->len; i++) {
		uint32_t k = kvb_window_keys_find(l->window_keys->pdata[i], addr, len, dev);
		if (k)
			return k;
	}
	return 0;
}
