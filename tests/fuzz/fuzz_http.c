/*
 * libFuzzer target: the HTTP/1.1 head parser (as a request and as a
 * response) and the chunked decoder, whole and split in two at a point the
 * input chooses.  Invariants that abort(): an accepted head fits the input
 * and its limits and has a consistent framing; a refusal leaves nothing to
 * free; a head accepted at n bytes is still INPROGRESS at n - 1 (nothing
 * is accepted early); the chunked decoder gives the same result, bytes and
 * consumed count however the input is split.
 */
// FUZZ_SOURCES: src/backends/hw/kvb_http.c src/core/kvb_error.c
// FUZZ_PKGS:
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvb_http.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void head(bool request, const char *buf, size_t size)
{
	kvb_http_msg_t m;
	kvb_err_t err;
	int rc = request ? kvb_http_parse_request(buf, size, &m, &err)
			 : kvb_http_parse_response(buf, size, &m, &err);
	if (rc == KVB_ERR_PROTOCOL) {
		if (m.n_fields || m.fields[0].name || !err.msg[0])
			abort();
		return;
	}
	if (rc == KVB_INPROGRESS) {
		if (size >= KVB_HTTP_HEAD_MAX)
			abort();
		return;
	}
	if (rc != KVB_OK)
		abort();
	if (m.head_len < 4 || m.head_len > size || m.head_len > KVB_HTTP_HEAD_MAX ||
	    memcmp(buf + m.head_len - 4, "\r\n\r\n", 4) || m.n_fields > KVB_HTTP_MAX_HEADERS ||
	    (m.chunked && m.has_content_length) || m.content_length > KVB_HTTP_BODY_MAX ||
	    m.version_minor < 0 || m.version_minor > 1 || m.is_request != request)
		abort();
	if (!request && (m.status < 100 || m.status > 599))
		abort();
	for (uint32_t i = 0; i < m.n_fields; i++)
		if (kvb_http_field_get(&m, m.fields[i].name) == NULL)
			abort();
	/* one byte less is an incomplete head, never a different message */
	kvb_http_msg_t m2;
	rc = request ? kvb_http_parse_request(buf, m.head_len - 1, &m2, NULL)
		     : kvb_http_parse_response(buf, m.head_len - 1, &m2, NULL);
	if (rc != KVB_INPROGRESS)
		abort();
	kvb_http_msg_clear(&m);
}

static void chunked(const char *buf, size_t size, size_t cut)
{
	kvb_http_chunked_t a, b;
	GByteArray *oa = g_byte_array_new(), *ob = g_byte_array_new();
	size_t ua = 0, ub1 = 0, ub2 = 0;
	kvb_http_chunked_init(&a);
	kvb_http_chunked_init(&b);
	int ra = kvb_http_chunked_feed(&a, buf, size, &ua, oa, NULL);
	int rb = kvb_http_chunked_feed(&b, buf, cut, &ub1, ob, NULL);
	if (rb == KVB_INPROGRESS) {
		if (ub1 != cut)
			abort();
		rb = kvb_http_chunked_feed(&b, buf + cut, size - cut, &ub2, ob, NULL);
	}
	if (ra != rb || ua > size || a.total != oa->len)
		abort();
	if (ra != KVB_ERR_PROTOCOL &&
	    (ua != ub1 + ub2 || oa->len != ob->len ||
	     (oa->len && memcmp(oa->data, ob->data, oa->len))))
		abort();
	if (ra == KVB_INPROGRESS && ua != size)
		abort();
	g_byte_array_unref(oa);
	g_byte_array_unref(ob);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* an exact-size heap copy so ASan sees any read past the end */
	char *buf = malloc(size ? size : 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	head(true, buf, size);
	head(false, buf, size);
	/* the body that follows a head, if one was found, and the whole input */
	kvb_http_msg_t m;
	size_t body = 0;
	if (kvb_http_parse_request(buf, size, &m, NULL) == KVB_OK) {
		body = m.head_len;
		kvb_http_msg_clear(&m);
	}
	size_t n = size - body;
	chunked(buf + body, n, n ? (size_t)data[0] % (n + 1) : 0);
	if (body)
		chunked(buf, size, size / 2);
	free(buf);
	return 0;
}
