/*
 * The RDMA window-keys frame (kvb_rdma_window_wire.h): encoder, decoder,
 * lookup.  Plain functions over buffers, unit-tested and fuzzed on their own.
 */
#include "config.h"

#include <inttypes.h>
#include <stdbool.h>
#include <string.h>

#include "kvb_rdma_window_wire.h"

static void put_le(GByteArray *out, uint64_t v, unsigned bytes)
{
	uint8_t b[8];
	for (unsigned i = 0; i < bytes; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	g_byte_array_append(out, b, bytes);
}

static uint64_t get_le(const uint8_t *in, unsigned bytes)
{
	uint64_t v = 0;
	for (unsigned i = bytes; i-- > 0;)
		v = (v << 8) | in[i];
	return v;
}

/* The rules both sides check; code is KVB_ERR_INVALID (ours) or
 * KVB_ERR_PROTOCOL (a peer's). */
static int check_ids(size_t tlen, size_t rlen, int code, kvb_err_t *err)
{
	if (!tlen || tlen >= KVB_WINDOW_ID_MAX)
		return kvb_err_set(err, code, "window keys: transfer id of %zu bytes (expected 1..%u)", tlen,
				   KVB_WINDOW_ID_MAX - 1);
	if (rlen >= KVB_WINDOW_ID_MAX)
		return kvb_err_set(err, code, "window keys: request id of %zu bytes (expected at most %u)",
				   rlen, KVB_WINDOW_ID_MAX - 1);
	return KVB_OK;
}

static int check_ranges(const uint64_t *r, uint32_t n, int code, kvb_err_t *err)
{
	for (uint32_t i = 0; i < n; i++) {
		uint64_t addr = r[2 * i], len = r[2 * i + 1];
		if (!len || addr + len < addr)
			return kvb_err_set(err, code, "window keys: range %u (0x%" PRIx64 " + %" PRIu64
					   ") is empty or wraps", i, addr, len);
		if (i && addr < r[2 * i - 2] + r[2 * i - 1])
			return kvb_err_set(err, code, "window keys: range %u (0x%" PRIx64
					   ") overlaps or precedes the one before", i, addr);
	}
	return KVB_OK;
}

static int check_counts(uint32_t n_devices, uint32_t n_ranges, int code, kvb_err_t *err)
{
	if (!n_devices || n_devices > KVB_WINDOW_MAX_DEVICES)
		return kvb_err_set(err, code, "window keys: %u devices (expected 1..%u)", n_devices,
				   KVB_WINDOW_MAX_DEVICES);
	if (!n_ranges || n_ranges > KVB_WINDOW_MAX_RANGES)
		return kvb_err_set(err, code, "window keys: %u ranges (expected 1..%u)", n_ranges,
				   KVB_WINDOW_MAX_RANGES);
	return KVB_OK;
}

int kvb_window_keys_encode(GByteArray *out, const kvb_window_keys_t *w, kvb_err_t *err)
{
	size_t tlen = strnlen(w->transfer_id, KVB_WINDOW_ID_MAX);
	size_t rlen = strnlen(w->request_id, KVB_WINDOW_ID_MAX);
	int rc;
	if ((rc = check_ids(tlen, rlen, KVB_ERR_INVALID, err)) != KVB_OK ||
	    (rc = check_counts(w->n_devices, w->n_ranges, KVB_ERR_INVALID, err)) != KVB_OK ||
	    (rc = check_ranges(w->ranges, w->n_ranges, KVB_ERR_INVALID, err)) != KVB_OK)
		return rc;
	put_le(out, KVB_WINDOW_VERSION, 1);
	put_le(out, w->n_devices, 1);
	put_le(out, tlen, 2);
	put_le(out, rlen, 2);
	put_le(out, w->n_ranges, 4);
	g_byte_array_append(out, (const guint8 *)w->transfer_id, (guint)tlen);
	g_byte_array_append(out, (const guint8 *)w->request_id, (guint)rlen);
	for (uint32_t i = 0; i < w->n_ranges; i++) {
		put_le(out, w->ranges[2 * i], 8);
		put_le(out, w->ranges[2 * i + 1], 8);
		for (uint32_t d = 0; d < w->n_devices; d++)
			put_le(out, w->rkeys[(size_t)i * w->n_devices + d], 4);
	}
	return KVB_OK;
}

static bool id_ok(const uint8_t *s, size_t len)
{
	return !memchr(s, 0, len) && g_utf8_validate((const char *)s, (gssize)len, NULL);
}

int kvb_window_keys_decode(const uint8_t *in, size_t len, kvb_window_keys_t *w, kvb_err_t *err)
{
	memset(w, 0, sizeof(*w));
	if (len < KVB_WINDOW_HEADER_LEN)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "window keys: %zu bytes, shorter than the "
				   "%u-byte header", len, KVB_WINDOW_HEADER_LEN);
	if (in[0] != KVB_WINDOW_VERSION)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "window keys: version %u (expected %u)", in[0],
				   KVB_WINDOW_VERSION);
	uint32_t n_devices = in[1];
	size_t tlen = (size_t)get_le(in + 2, 2), rlen = (size_t)get_le(in + 4, 2);
	uint32_t n_ranges = (uint32_t)get_le(in + 6, 4);
	int rc;
	if ((rc = check_counts(n_devices, n_ranges, KVB_ERR_PROTOCOL, err)) != KVB_OK ||
	    (rc = check_ids(tlen, rlen, KVB_ERR_PROTOCOL, err)) != KVB_OK)
		return rc;
	size_t per_range = 16 + 4 * (size_t)n_devices;
	size_t want = KVB_WINDOW_HEADER_LEN + tlen + rlen + per_range * n_ranges;
	if (len != want)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "window keys: %zu bytes for %u ranges on %u "
				   "devices (expected %zu)", len, n_ranges, n_devices, want);
	const uint8_t *p = in + KVB_WINDOW_HEADER_LEN;
	if (!id_ok(p, tlen) || !id_ok(p + tlen, rlen))
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "window keys: an id is not UTF-8 text");
	memcpy(w->transfer_id, p, tlen);
	memcpy(w->request_id, p + tlen, rlen);
	p += tlen + rlen;
	uint64_t *ranges = g_new(uint64_t, 2 * (size_t)n_ranges);
	uint32_t *rkeys = g_new(uint32_t, (size_t)n_ranges * n_devices);
	for (uint32_t i = 0; i < n_ranges; i++, p += per_range) {
		ranges[2 * i] = get_le(p, 8);
		ranges[2 * i + 1] = get_le(p + 8, 8);
		for (uint32_t d = 0; d < n_devices; d++)
			rkeys[(size_t)i * n_devices + d] = (uint32_t)get_le(p + 16 + 4 * d, 4);
	}
	if ((rc = check_ranges(ranges, n_ranges, KVB_ERR_PROTOCOL, err)) != KVB_OK) {
		g_free(ranges);
		g_free(rkeys);
		memset(w, 0, sizeof(*w));
		return rc;
	}
	w->n_devices = n_devices;
	w->n_ranges = n_ranges;
	w->ranges = ranges;
	w->rkeys = rkeys;
	return KVB_OK;
}

void kvb_window_keys_clear(kvb_window_keys_t *w)
{
	g_free(w->ranges);
	g_free(w->rkeys);
	memset(w, 0, sizeof(*w));
}

uint32_t kvb_window_keys_find(const kvb_window_keys_t *w, uint64_t addr, uint64_t len, uint32_t dev)
{
	if (dev >= w->n_devices || !len || addr + len < addr)
		return 0;
	/* ascending and disjoint: the last range starting at or below addr */
	uint32_t lo = 0, hi = w->n_ranges;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (w->ranges[2 * mid] <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (!lo)
		return 0;
	const uint64_t *r = &w->ranges[2 * (lo - 1)];
	if (addr + len > r[0] + r[1])
		return 0;
	return w->rkeys[(size_t)(lo - 1) * w->n_devices + dev];
}
