/*
 * The registered-memory table and fences (kvb_hw_mem.h).
 */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
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
	char **peers;               /* numeric addresses of the pull's peer; NULL = any */
	GArray *ranges;             /* uint64_t pairs */
	void (*release)(void *);    /* undoes what was opened with it (RDMA keys) */
	void *release_arg;
} hw_window_t;

static void window_free(gpointer data)
{
	hw_window_t *w = data;
	if (w->release)
		w->release(w->release_arg);
	g_strfreev(w->peers);
	g_free(w->key);
	g_array_free(w->ranges, TRUE);
	g_free(w);
}

/* "::ffff:1.2.3.4" and "1.2.3.4" are one peer */
static const char *plain_ip(const char *ip)
{
	return g_str_has_prefix(ip, "::ffff:") && strchr(ip + 7, '.') ? ip + 7 : ip;
}

static hw_window_t *window_add(hw_t *hw, const void *owner, const char *transfer_id,
			       const char *request_id, const GArray *ranges, const char *peer)
{
	if (!hw->windows)
		hw->windows = g_ptr_array_new_with_free_func(window_free);
	hw_window_t *w = g_new0(hw_window_t, 1);
	w->owner = owner;
	w->key = g_strconcat(transfer_id, "\n", request_id, NULL);
	if (peer && *peer) {
		w->peers = g_strsplit(peer, ",", -1);
		for (char **q = w->peers; *q; q++)
			memmove(*q, plain_ip(*q), strlen(plain_ip(*q)) + 1);
	}
	w->ranges = g_array_sized_new(FALSE, FALSE, sizeof(uint64_t), ranges->len);
	g_array_append_vals(w->ranges, ranges->data, ranges->len);
	g_ptr_array_add(hw->windows, w);
	return w;
}

void hw_window_open(hw_t *hw, const void *owner, const char *transfer_id, const char *request_id,
		    const GArray *ranges, const char *peer)
{
	window_add(hw, owner, transfer_id, request_id, ranges, peer);
}

void hw_window_open_with(hw_t *hw, const void *owner, const char *transfer_id,
			 const char *request_id, const GArray *ranges, const char *peer,
			 void (*release)(void *), void *arg)
{
	hw_window_t *w = window_add(hw, owner, transfer_id, request_id, ranges, peer);
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

hw_window_verdict_t hw_window_check(hw_t *hw, uint64_t addr, uint64_t len, const char *sender)
{
	if (hw->p.memory_open)
		return HW_WINDOW_OPEN;
	if (!len || addr + len < addr)
		return HW_WINDOW_CLOSED;
	if (hw->exposed && ranges_hold(hw->exposed, addr, len))
		return HW_WINDOW_OPEN;
	const char *from = sender && !hw->p.window_any_peer ? plain_ip(sender) : NULL;
	hw_window_verdict_t v = HW_WINDOW_CLOSED;
	for (guint i = 0; hw->windows && i < hw->windows->len; i++) {
		const hw_window_t *w = hw->windows->pdata[i];
		if (!ranges_hold(w->ranges, addr, len))
			continue;
		if (!from || !w->peers || g_strv_contains((const char *const *)w->peers, from))
			return HW_WINDOW_OPEN;
		v = HW_WINDOW_OTHER_PEER;
	}
	return v;
}

void hw_window_peer_of(const char *endpoint, char *out, size_t len)
{
	out[0] = 0;
	const char *h = g_str_has_prefix(endpoint, "tcp://") ? endpoint + 6 : endpoint;
	char host[64];
	const char *end;
	if (*h == '[') {
		h++;
		end = strchr(h, ']');
	} else {
		end = strrchr(h, ':');
	}
	if (!end || (size_t)(end - h) >= sizeof(host))
		return;
	memcpy(host, h, (size_t)(end - h));
	host[end - h] = 0;
	unsigned char buf[sizeof(struct in6_addr)];
	if (inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1)
		g_strlcpy(out, plain_ip(host), len);
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

