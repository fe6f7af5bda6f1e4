/*
 * libFuzzer target: the Mooncake handshake socket.  The input is what a
 * peer sends: an 8-byte length, then the body.  The header and the body
 * split are checked against their rules (an accepted length is 1..cap, a
 * typed body's payload follows the type byte, a legacy one is the whole
 * body), re-framing the payload gives the same bytes, and the payload goes
 * to the decoder of its type (Connection: HandShakeDesc, Metadata:
 * descriptor, Notify, kvbridge's RDMA window keys).  Whatever decodes must encode, decode again to the
 * same value, and encode to the same text; any difference abort()s.
 * Refusals must be KVB_ERR_PROTOCOL with a message and nothing allocated.
 */
// FUZZ_SOURCES: src/backends/hw/kvb_mc_wire.c src/backends/hw/kvb_rdma_window_wire.c src/core/kvb_error.c
// FUZZ_PKGS: json-glib-1.0
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvb_mc_wire.h"
#include "kvb_rdma_window_wire.h"
#include "seg_check.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void refused(int rc, const kvb_err_t *err)
{
	if (rc != KVB_ERR_PROTOCOL || err->code != KVB_ERR_PROTOCOL || !err->msg[0])
		abort();
}

/* ---- Connection ---------------------------------------------------------- */

static void check_hs_same(const kvb_mc_handshake_t *a, const kvb_mc_handshake_t *b)
{
	if (strcmp(a->local_nic_path, b->local_nic_path) ||
	    strcmp(a->peer_nic_path, b->peer_nic_path) || a->n_qp != b->n_qp ||
	    memcmp(a->qp_num, b->qp_num, a->n_qp * sizeof(uint32_t)) || a->has_gid != b->has_gid ||
	    a->ready_ack != b->ready_ack || strcmp(a->reply_msg, b->reply_msg) ||
	    strcmp(a->payload, b->payload))
		abort();
	if (a->has_gid && (memcmp(a->local_gid, b->local_gid, 16) || a->local_lid != b->local_lid))
		abort();
}

static void connection(const char *json, size_t len)
{
	kvb_mc_handshake_t a, b;
	kvb_err_t err;
	kvb_err_clear(&err);
	int rc = kvb_mc_handshake_from_json(json, len, &a, &err);
	if (rc != KVB_OK) {
		refused(rc, &err);
		return;
	}
	if (a.n_qp > KVB_MC_MAX_QP || a.ready_ack < -1 || a.ready_ack > 1 || a.local_lid > 65535 ||
	    (!a.has_gid && a.local_lid))
		abort();
	for (uint32_t i = 0; i < a.n_qp; i++)
		if (a.qp_num[i] > 0xffffff)
			abort();
	GString *j1 = g_string_new(NULL), *j2 = g_string_new(NULL);
	if (kvb_mc_handshake_to_json(&a, j1, NULL) != KVB_OK ||
	    kvb_mc_handshake_from_json(j1->str, j1->len, &b, NULL) != KVB_OK)
		abort();
	check_hs_same(&a, &b);
	if (kvb_mc_handshake_to_json(&b, j2, NULL) != KVB_OK || strcmp(j1->str, j2->str))
		abort();
	g_string_free(j1, TRUE);
	g_string_free(j2, TRUE);
}

/* ---- Metadata -------------------------------------------------------------- */

static void metadata(const char *json, size_t len)
{
	kvb_mc_segment_t a, b;
	kvb_err_t err;
	kvb_err_clear(&err);
	memset(&a, 0xa5, sizeof(a));
	int rc = kvb_mc_segment_from_json(json, len, &a, &err);
	if (rc != KVB_OK) {
		refused(rc, &err);
		if (!seg_empty(&a))
			abort();
		return;
	}
	GString *j1 = g_string_new(NULL), *j2 = g_string_new(NULL);
	kvb_err_clear(&err);
	if (kvb_mc_segment_to_json(&a, j1, &err) != KVB_OK) {
		/* the tolerant decoder lets keyless rdma buffers through; the
		 * encoder wants one key per device */
		bool short_keys = false;
		for (uint32_t i = 0; i < a.n_buffers; i++)
			short_keys |= a.buffers[i].n_keys != a.n_devices;
		if (err.code != KVB_ERR_INVALID || !err.msg[0] || !short_keys ||
		    !strcmp(a.protocol, "tcp"))
			abort();
	} else {
		if (kvb_mc_segment_from_json(j1->str, j1->len, &b, NULL) != KVB_OK)
			abort();
		check_seg_same(&a, &b);
		if (kvb_mc_segment_to_json(&b, j2, NULL) != KVB_OK || strcmp(j1->str, j2->str))
			abort();
		kvb_mc_segment_clear(&b);
	}
	kvb_mc_segment_clear(&a);
	g_string_free(j1, TRUE);
	g_string_free(j2, TRUE);
}

/* ---- Notify ---------------------------------------------------------------- */

static void notify(const char *json, size_t len)
{
	kvb_mc_notify_t a, b;
	kvb_err_t err;
	kvb_err_clear(&err);
	int rc = kvb_mc_notify_from_json(json, len, &a, &err);
	if (rc != KVB_OK) {
		refused(rc, &err);
		return;
	}
	GString *j1 = g_string_new(NULL), *j2 = g_string_new(NULL);
	if (kvb_mc_notify_to_json(&a, j1, NULL) != KVB_OK ||
	    kvb_mc_notify_from_json(j1->str, j1->len, &b, NULL) != KVB_OK ||
	    strcmp(a.name, b.name) || strcmp(a.notify_msg, b.notify_msg) ||
	    kvb_mc_notify_to_json(&b, j2, NULL) != KVB_OK || strcmp(j1->str, j2->str))
		abort();
	g_string_free(j1, TRUE);
	g_string_free(j2, TRUE);
}

/* ---- framing ---------------------------------------------------------------- */

/* ---- kvbridge RDMA window keys ---------------------------------------------- */

static void window_keys(const uint8_t *in, size_t len)
{
	kvb_window_keys_t a, b;
	kvb_err_t err;
	kvb_err_clear(&err);
	int rc = kvb_window_keys_decode(in, len, &a, &err);
	if (rc != KVB_OK) {
		refused(rc, &err);
		if (a.ranges || a.rkeys || a.n_ranges)
			abort();
		return;
	}
	if (!a.n_devices || a.n_devices > KVB_WINDOW_MAX_DEVICES || !a.n_ranges ||
	    a.n_ranges > KVB_WINDOW_MAX_RANGES || !a.transfer_id[0])
		abort();
	for (uint32_t i = 0; i < a.n_ranges; i++) {
		uint64_t lo = a.ranges[2 * i], n = a.ranges[2 * i + 1];
		if (!n || lo + n < lo || (i && lo < a.ranges[2 * i - 2] + a.ranges[2 * i - 1]))
			abort();
		/* each range finds its own keys, and one byte past it none of them */
		for (uint32_t d = 0; d < a.n_devices; d++)
			if (kvb_window_keys_find(&a, lo, n, d) != a.rkeys[(size_t)i * a.n_devices + d] ||
			    kvb_window_keys_find(&a, lo, n + 1, d) != 0)
				abort();
	}
	/* the same bytes back */
	GByteArray *out = g_byte_array_new();
	if (kvb_window_keys_encode(out, &a, NULL) != KVB_OK || out->len != len ||
	    memcmp(out->data, in, len) || kvb_window_keys_decode(out->data, out->len, &b, NULL) != KVB_OK ||
	    strcmp(a.transfer_id, b.transfer_id) || strcmp(a.request_id, b.request_id))
		abort();
	g_byte_array_unref(out);
	kvb_window_keys_clear(&a);
	kvb_window_keys_clear(&b);
}

static void body(const uint8_t *data, size_t len)
{
	kvb_mc_msg_type_t type = (kvb_mc_msg_type_t)0xee;
	const uint8_t *payload = NULL;
	size_t plen = 0;
	kvb_err_t err;
	kvb_err_clear(&err);
	int rc = kvb_mc_frame_body(data, len, &type, &payload, &plen, &err);
	if (rc != KVB_OK) {
		refused(rc, &err);
		if (payload || plen || type != (kvb_mc_msg_type_t)0xee)
			abort();
		return;
	}
	bool typed = data[0] <= KVB_MC_PROBE || data[0] == KVB_MC_KVB_HELLO ||
		     data[0] == KVB_MC_KVB_FRAME || data[0] == KVB_MC_KVB_SYNC ||
		     data[0] == KVB_MC_KVB_SYNCED || data[0] == KVB_MC_KVB_AUTH ||
		     data[0] == KVB_MC_KVB_WINDOW || data[0] == KVB_MC_KVB_STARTTLS;
	if (typed ? (type != data[0] || payload != data + 1 || plen != len - 1)
		  : (type != KVB_MC_CONNECTION || payload != data || plen != len))
		abort();
	/* framing the payload again gives the frame back (a legacy body comes
	 * back typed as Connection) */
	GByteArray *f = g_byte_array_new();
	kvb_mc_frame_encode(f, type, payload, plen);
	uint64_t blen;
	kvb_mc_msg_type_t t2;
	const uint8_t *p2;
	size_t l2;
	if (kvb_mc_frame_header(f->data, UINT64_MAX, &blen, NULL) != KVB_OK || blen != plen + 1 ||
	    f->len != KVB_MC_FRAME_HEADER_LEN + blen || f->data[KVB_MC_FRAME_HEADER_LEN] != type ||
	    kvb_mc_frame_body(f->data + KVB_MC_FRAME_HEADER_LEN, (size_t)blen, &t2, &p2, &l2, NULL) !=
		    KVB_OK ||
	    t2 != type || l2 != plen || (plen && memcmp(p2, payload, plen)))
		abort();
	if (typed && memcmp(f->data + KVB_MC_FRAME_HEADER_LEN, data, len))
		abort();
	g_byte_array_unref(f);

	switch (type) {
	case KVB_MC_CONNECTION:
		connection((const char *)payload, plen);
		break;
	case KVB_MC_METADATA:
		metadata((const char *)payload, plen);
		break;
	case KVB_MC_NOTIFY:
		notify((const char *)payload, plen);
		break;
	case KVB_MC_KVB_WINDOW:
		window_keys(payload, plen);
		break;
	default:
		break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* an exact-size heap copy so ASan sees any read past the end */
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	if (size < KVB_MC_FRAME_HEADER_LEN) {
		body(buf, size);
		free(buf);
		return 0;
	}
	uint64_t want = 0, blen = 0xdead;
	for (int i = 7; i >= 0; i--)
		want = (want << 8) | buf[i];
	kvb_err_t err;
	kvb_err_clear(&err);
	int rc = kvb_mc_frame_header(buf, KVB_MC_HANDSHAKE_MAX_DEFAULT, &blen, &err);
	if ((rc == KVB_OK) != (want >= 1 && want <= KVB_MC_HANDSHAKE_MAX_DEFAULT))
		abort();
	if (rc != KVB_OK) {
		refused(rc, &err);
		if (blen != 0xdead)
			abort();
	} else if (blen != want) {
		abort();
	}
	size_t rest = size - KVB_MC_FRAME_HEADER_LEN;
	uint8_t *b = buf + KVB_MC_FRAME_HEADER_LEN;
	if (rc == KVB_OK && blen <= rest) {
		/* the frame as a server reads it: exactly blen bytes */
		uint8_t *exact = malloc((size_t)blen);
		if (exact) {
			memcpy(exact, b, (size_t)blen);
			body(exact, (size_t)blen);
			free(exact);
		}
	} else {
		/* a length that does not match: fuzz the body split anyway */
		body(b, rest);
	}
	free(buf);
	return 0;
}
