/*
 * The registered-memory table and fences (kvb_hw_mem.h).
 */
#include "config.h"

#include <glib.h>

#include "transport/kvb_hw_mem.h"

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

