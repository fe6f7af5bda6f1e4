/*
 * The registered-memory table and fences (kvb_hw_mem.h).
 */
#include "config.h"

#include <string.h>

#include <glib.h>

#include "transport/kvb_hw_mem.h"
#include "kvb_wire.h"

hw_mr_t *hw_mr_find(hw_t *hw, uint64_t addr, uint64_t len)
{
	if (!len || addr + len < addr)
		return NULL;
	for (guint i = 0; i < hw->mrs->len; i++) {
		hw_mr_t *m = hw->mrs->pdata[i];
		if (addr >= m->addr && addr + len <= m->addr + m->len)
			return m;
	}
	return NULL;
}

bool hw_fenced(hw_t *hw, uint64_t addr, uint64_t len)
{
	const uint64_t *f = (const uint64_t *)(void *)hw->fences->data;
	for (guint i = 0; i + 1 < hw->fences->len; i += 2)
		if (addr < f[i] + f[i + 1] && f[i] < addr + len)
			return true;
	return false;
}

void hw_fence_add(hw_t *hw, uint64_t addr, uint64_t len)
{
	if (!len)
		return;
	uint64_t pair[2] = {addr, len};
	g_array_append_vals(hw->fences, pair, 2);
}

typedef struct hw_window {
	const void *owner;
	char *key;                  /* "transfer\nrequest" */
	GArray *ranges;             /* uint64_t pairs */
	void (*release)(void *);    /* undoes what was opened with it (RDMA keys) */
	void *release_arg;
} hw_window_t;

static void window_free(gpointer data)
{
	hw_window_t *w = data;
	if (w->release)
		w->release(w->release_arg);
	g_free(w->key);
	g_array_free(w->ranges, TRUE);
	g_free(w);
}

static hw_window_t *window_add(hw_t *hw, const void *owner, const char *transfer_id,
			       const char *request_id, const GArray *ranges)
{
	if (!hw->windows)
		hw->windows = g_ptr_array_new_with_free_func(window_free);
	hw_window_t *w = g_new0(hw_window_t, 1);
	w->owner = owner;
	w->key = g_strconcat(transfer_id, "\n", request_id, NULL);
	w->ranges = g_array_sized_new(FALSE, FALSE, sizeof(uint64_t), ranges->len);
	g_array_append_vals(w->ranges, ranges->data, ranges->len);
	g_ptr_array_add(hw->windows, w);
	return w;
}

void hw_window_open(hw_t *hw, const void *owner, const char *transfer_id, const char *request_id,
		    const GArray *ranges)
{
	window_add(hw, owner, transfer_id, request_id, ranges);
}

void hw_window_open_with(hw_t *hw, const void *owner, const char *transfer_id,
			 const char *request_id, const GArray *ranges, void (*release)(void *), void *arg)
{
	hw_window_t *w = window_add(hw, owner, transfer_id, request_id, ranges);
	w->release = release;
	w->release_arg = arg;
}

void hw_window_close(hw_t *hw, const void *owner, const char *transfer_id, const char *request_id)
{
	if (!hw->windows)
		return;
	char *key = transfer_id ? g_strconcat(transfer_id, "\n", request_id, NULL) : NULL;
	for (guint i = 0; i < hw->windows->len;) {
		hw_window_t *w = hw->windows->pdata[i];
		if (w->owner == owner && (!key || !strcmp(w->key, key)))
			g_ptr_array_remove_index_fast(hw->windows, i);
		else
			i++;
	}
	g_free(key);
}

static bool ranges_hold(const GArray *a, uint64_t addr, uint64_t len)
{
	const uint64_t *r = (const uint64_t *)(void *)a->data;
	for (guint i = 0; i + 1 < a->len; i += 2)
		if (addr >= r[i] && addr + len <= r[i] + r[i + 1])
			return true;
	return false;
}

bool hw_window_allows(hw_t *hw, uint64_t addr, uint64_t len)
{
	if (hw->p.memory_open)
		return true;
	if (!len || addr + len < addr)
		return false;
	if (hw->exposed && ranges_hold(hw->exposed, addr, len))
		return true;
	for (guint i = 0; hw->windows && i < hw->windows->len; i++)
		if (ranges_hold(((hw_window_t *)hw->windows->pdata[i])->ranges, addr, len))
			return true;
	return false;
}

void hw_windows_free(hw_t *hw)
{
	if (hw->windows)
		g_ptr_array_free(hw->windows, TRUE);
	if (hw->exposed)
		g_array_free(hw->exposed, TRUE);
	hw->windows = NULL;
	hw->exposed = NULL;
}

GArray *hw_pull_ranges(const kvb_wire_pull_t *pull)
{
	GArray *a = g_array_new(FALSE, FALSE, sizeof(uint64_t));
	for (uint32_t r = 0; r < pull->n_regions; r++) {
		const kvb_region_t *rg = &pull->regions[r];
		const kvb_block_list_t *gl = rg->group >= 0 && (uint32_t)rg->group < pull->n_groups
						     ? &pull->groups[rg->group] : NULL;
		for (uint32_t i = 0; gl && i < gl->count; i++) {
			uint64_t lo = rg->base + (uint64_t)gl->ids[i] * rg->block_stride;
			uint64_t len = rg->block_bytes;
			if (a->len >= 2) {
				uint64_t *last = &g_array_index(a, uint64_t, a->len - 2);
				if (last[0] + last[1] == lo) {
					last[1] += len;
					continue;
				}
			}
			uint64_t pair[2] = {lo, len};
			g_array_append_vals(a, pair, 2);
		}
	}
	return a;
}

void hw_fence_clear(hw_t *hw, uint64_t addr, uint64_t len)
{
	uint64_t *f = (uint64_t *)(void *)hw->fences->data;
	for (guint i = 0; i + 1 < hw->fences->len;) {
		if (addr < f[i] + f[i + 1] && f[i] < addr + len) {
			g_array_remove_range(hw->fences, i, 2);
			f = (uint64_t *)(void *)hw->fences->data;
		} else {
			i += 2;
		}
	}
}

