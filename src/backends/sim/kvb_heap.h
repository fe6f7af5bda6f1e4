/*
 * kvbridge sim backend: a binary min-heap over a GPtrArray, shared by the
 * backend's timer/event queue (kvb_sim.c) and the study's per-node event
 * queue (kvb_study.c).  Header-only so that each user's comparator inlines.
 *
 * before(a, b) is a strict weak order ("a fires first"); both users order
 * by (time, sequence number), which makes ties deterministic.
 */
#ifndef KVB_SIM_HEAP_H
#define KVB_SIM_HEAP_H

#include <glib.h>
#include <stdbool.h>

typedef bool (*kvb_heap_before_fn)(gconstpointer a, gconstpointer b);

static inline void kvb_heap_swap(GPtrArray *h, size_t i, size_t j)
{
	gpointer tmp = h->pdata[i];
	h->pdata[i] = h->pdata[j];
	h->pdata[j] = tmp;
}

static inline void kvb_heap_push(GPtrArray *h, gpointer item, kvb_heap_before_fn before)
{
	g_ptr_array_add(h, item);
	for (size_t i = h->len - 1; i > 0;) {
		size_t parent = (i - 1) / 2;
		if (!before(h->pdata[i], h->pdata[parent]))
			break;
		kvb_heap_swap(h, i, parent);
		i = parent;
	}
}

/* The first item, or NULL when h is empty. */
static inline gpointer kvb_heap_peek(const GPtrArray *h)
{
	return h->len ? h->pdata[0] : NULL;
}

/* Remove and return the first item, or NULL when h is empty. */
static inline gpointer kvb_heap_pop(GPtrArray *h, kvb_heap_before_fn before)
{
	if (!h->len)
		return NULL;
	gpointer top = h->pdata[0];
	h->pdata[0] = h->pdata[h->len - 1];
	g_ptr_array_set_size(h, h->len - 1);
	for (size_t i = 0;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < h->len && before(h->pdata[l], h->pdata[m]))
			m = l;
		if (r < h->len && before(h->pdata[r], h->pdata[m]))
			m = r;
		if (m == i)
			break;
		kvb_heap_swap(h, i, m);
		i = m;
	}
	return top;
}

#endif /* KVB_SIM_HEAP_H */
