/*
 * libFuzzer target: the Mooncake TCP transport header (24 bytes) and v2
 * status frame (8 bytes), read from the input at every offset a short
 * input allows.  A decode must agree with the rules computed here (opcode
 * READ/WRITE with or without the v2 bit, size > 0, no wrap; the MCTV magic),
 * an accepted header re-encodes to the same bytes with zero padding, and a
 * header built from the input's fields survives encode and decode.  Also
 * the kvbridge GPU mirror sync frames (SYNC, SYNCED) over the whole input:
 * an accepted frame re-encodes to the input's bytes.  Any difference
 * abort()s.
 */
// FUZZ_SOURCES: src/backends/hw/kvb_mc_wire.c src/core/kvb_error.c
// FUZZ_PKGS: json-glib-1.0
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvb_mc_wire.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static void header(const uint8_t *in)
{
	uint64_t size = le64(in), addr = le64(in + 8);
	uint8_t op = in[16] & 0x7f;
	bool want = (op == KVB_MC_TCP_OP_READ || op == KVB_MC_TCP_OP_WRITE) && size &&
		    addr + size >= addr;
	kvb_mc_tcp_header_t h = {.size = 1, .addr = 2, .opcode = 3, .v2 = false};
	kvb_err_t err;
	kvb_err_clear(&err);
	int rc = kvb_mc_tcp_header_decode(in, &h, &err);
	if ((rc == KVB_OK) != want)
		abort();
	if (rc != KVB_OK) {
		if (rc != KVB_ERR_PROTOCOL || err.code != rc || !err.msg[0] || h.size != 1 ||
		    h.addr != 2 || h.opcode != 3 || h.v2)
			abort();
		return;
	}
	if (h.size != size || h.addr != addr || h.opcode != op || h.v2 != ((in[16] & 0x80) != 0))
		abort();
	uint8_t out[KVB_MC_TCP_HEADER_LEN];
	static const uint8_t zero[7];
	memset(out, 0xcc, sizeof(out));
	kvb_mc_tcp_header_encode(out, &h);
	if (memcmp(out, in, 17) || memcmp(out + 17, zero, 7))
		abort();
}

static void status(const uint8_t *in)
{
	uint64_t v = le64(in);
	uint32_t code = 0xabad1dea;
	kvb_err_t err;
	kvb_err_clear(&err);
	int rc = kvb_mc_tcp_status_decode(in, &code, &err);
	if ((rc == KVB_OK) != ((v >> 32) == KVB_MC_TCP_STATUS_MAGIC))
		abort();
	if (rc != KVB_OK) {
		if (rc != KVB_ERR_PROTOCOL || err.code != rc || !err.msg[0] || code != 0xabad1dea)
			abort();
		return;
	}
	if (code != (uint32_t)v)
		abort();
	uint8_t out[KVB_MC_TCP_STATUS_LEN];
	kvb_mc_tcp_status_encode(out, code);
	if (memcmp(out, in, KVB_MC_TCP_STATUS_LEN))
		abort();
}

/* A header made of the input's values: encode then decode. */
static void build(const uint8_t *in)
{
	kvb_mc_tcp_header_t h = {.size = le64(in), .addr = le64(in + 8), .opcode = in[16] & 1,
				 .v2 = (in[16] & 2) != 0},
			    back;
	uint8_t out[KVB_MC_TCP_HEADER_LEN];
	kvb_mc_tcp_header_encode(out, &h);
	int rc = kvb_mc_tcp_header_decode(out, &back, NULL);
	bool want = h.size && h.addr + h.size >= h.addr;
	if ((rc == KVB_OK) != want)
		abort();
	if (rc == KVB_OK && (back.size != h.size || back.addr != h.addr ||
			     back.opcode != h.opcode || back.v2 != h.v2))
		abort();
	uint8_t st[KVB_MC_TCP_STATUS_LEN];
	uint32_t code = (uint32_t)le64(in + 4), got = 0;
	kvb_mc_tcp_status_encode(st, code);
	if (kvb_mc_tcp_status_decode(st, &got, NULL) != KVB_OK || got != code)
		abort();
}

static void sync_frames(const uint8_t *data, size_t size)
{
	uint8_t *in = malloc(size ? size : 1);
	if (!in)
		return;
	memcpy(in, data, size);
	kvb_mc_sync_t s;
	kvb_err_t err;
	if (kvb_mc_sync_decode(in, size, &s, &err) == KVB_OK) {
		uint8_t out[KVB_MC_SYNC_LEN];
		kvb_mc_sync_encode(out, &s);
		if (size != KVB_MC_SYNC_LEN || memcmp(out, in, size) || !s.len || s.addr + s.len < s.addr)
			abort();
	} else if (err.code != KVB_ERR_PROTOCOL || !err.msg[0]) {
		abort();
	}
	kvb_mc_synced_t r;
	if (kvb_mc_synced_decode(in, size, &r, &err) == KVB_OK) {
		GByteArray *b = g_byte_array_new();
		kvb_mc_synced_encode(b, &r);
		if (b->len != size || memcmp(b->data, in, size) || r.status > 0)
			abort();
		g_byte_array_unref(b);
	} else if (err.code != KVB_ERR_PROTOCOL || !err.msg[0]) {
		abort();
	}
	free(in);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	sync_frames(data, size);
	if (size < KVB_MC_TCP_STATUS_LEN)
		return 0;
	/* exact-size heap copies so ASan sees any read past the end */
	uint8_t *st = malloc(KVB_MC_TCP_STATUS_LEN);
	if (!st)
		return 0;
	memcpy(st, data, KVB_MC_TCP_STATUS_LEN);
	status(st);
	free(st);
	if (size < KVB_MC_TCP_HEADER_LEN)
		return 0;
	/* a header, and a stream: header then status at every offset */
	for (size_t off = 0; off + KVB_MC_TCP_HEADER_LEN <= size && off < 64; off += 8) {
		uint8_t *h = malloc(KVB_MC_TCP_HEADER_LEN);
		if (!h)
			return 0;
		memcpy(h, data + off, KVB_MC_TCP_HEADER_LEN);
		header(h);
		build(h);
		free(h);
		if (off + KVB_MC_TCP_HEADER_LEN + KVB_MC_TCP_STATUS_LEN <= size) {
			st = malloc(KVB_MC_TCP_STATUS_LEN);
			if (!st)
				return 0;
			memcpy(st, data + off + KVB_MC_TCP_HEADER_LEN, KVB_MC_TCP_STATUS_LEN);
			status(st);
			free(st);
		}
	}
	return 0;
}
