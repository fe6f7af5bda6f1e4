/*
 * libFuzzer target: the vLLM bootstrap bodies.  The first byte picks what
 * the rest is: a POST /register body (decoded; what decodes is encoded and
 * decoded again to the same registration, and fed to two registries, one
 * per release rule), a GET /query body (decoded; every worker found must be
 * reachable by its engine id, tp and pp, and re-registering what was
 * decoded must serve a body that decodes to the same workers), or a worker
 * address.  A refusal must come with a message (and, for /register, a 422
 * body that is itself a valid /query-style JSON object); anything else
 * abort()s.
 */
// FUZZ_SOURCES: src/backends/hw/kvb_vllm_bootstrap_wire.c src/core/kvb_error.c
// FUZZ_PKGS: json-glib-1.0
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <json-glib/json-glib.h>

#include "kvb_vllm_bootstrap_wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool json_ok(const GString *s)
{
	JsonParser *p = json_parser_new();
	bool ok = json_parser_load_from_data(p, s->str, (gssize)s->len, NULL);
	g_object_unref(p);
	return ok;
}

static void register_case(const char *body, size_t len)
{
	kvb_vllm_register_t r, r2;
	kvb_err_t err;
	GString *reply = g_string_new(NULL);
	if (kvb_vllm_register_decode(body, len, &r, reply, &err) != KVB_OK) {
		if (err.code != KVB_ERR_PROTOCOL || !err.msg[0] ||
		    !g_str_has_prefix(reply->str, "{\"detail\":[{\"type\":") || !json_ok(reply) ||
		    r.engine_id[0] || r.addr[0])
			abort();
		g_string_free(reply, TRUE);
		return;
	}
	GString *enc = g_string_new(NULL);
	if (kvb_vllm_register_encode(&r, enc, &err) != KVB_OK ||
	    kvb_vllm_register_decode(enc->str, enc->len, &r2, NULL, &err) != KVB_OK ||
	    memcmp(&r, &r2, sizeof(r)))
		abort();
	kvb_vllm_registry_t *a = kvb_vllm_registry_new(0), *b = kvb_vllm_registry_new(KVB_VLLM_REGISTRY_IDENTICAL_OK);
	unsigned st;
	g_string_truncate(reply, 0);
	if (kvb_vllm_registry_handle(a, body, len, &st, reply, &err) != KVB_OK || st != 200 ||
	    strcmp(reply->str, "{\"status\":\"ok\"}"))
		abort();
	if (kvb_vllm_registry_handle(a, enc->str, enc->len, &st, NULL, &err) != KVB_ERR_EXISTS ||
	    st != 400)
		abort();
	if (kvb_vllm_registry_add(b, &r, NULL, &err) != KVB_OK ||
	    kvb_vllm_registry_add(b, &r2, NULL, &err) != KVB_OK || kvb_vllm_registry_size(b) != 1)
		abort();
	GString *q = g_string_new(NULL);
	kvb_vllm_registry_query_json(b, q);
	kvb_vllm_boot_query_t bq;
	int qrc = kvb_vllm_query_decode(q->str, q->len, &bq, &err);
	if (r.tp_rank != 0) {
		/* a lone worker of tp rank > 0: a D refuses it (tp keys must be 0..n-1) */
		if (qrc != KVB_ERR_PROTOCOL)
			abort();
	} else {
		const kvb_vllm_boot_engine_t *e = qrc ? NULL : kvb_vllm_query_engine(&bq, r.engine_id);
		const kvb_vllm_boot_worker_t *w = e ? kvb_vllm_query_worker(&bq, e, 0, r.pp_rank) : NULL;
		if (!w || strcmp(w->addr, r.addr) || e->dp_rank != r.dp_rank)
			abort();
		kvb_vllm_query_clear(&bq);
	}
	g_string_free(q, TRUE);
	kvb_vllm_registry_free(a);
	kvb_vllm_registry_free(b);
	g_string_free(enc, TRUE);
	g_string_free(reply, TRUE);
}

static void query_case(const char *body, size_t len)
{
	kvb_vllm_boot_query_t q, q2;
	kvb_err_t err;
	memset(&q, 0x5a, sizeof(q));
	if (kvb_vllm_query_decode(body, len, &q, &err) != KVB_OK) {
		if (err.code != KVB_ERR_PROTOCOL || !err.msg[0] || q.engines || q.workers)
			abort();
		return;
	}
	kvb_vllm_registry_t *reg = kvb_vllm_registry_new(0);
	uint32_t total = 0;
	for (uint32_t i = 0; i < q.n_engines; i++) {
		const kvb_vllm_boot_engine_t *e = &q.engines[i];
		if (kvb_vllm_query_engine(&q, e->engine_id) != e)
			abort();
		for (uint32_t j = 0; j < e->n_workers; j++) {
			const kvb_vllm_boot_worker_t *w = &q.workers[e->first_worker + j];
			if (w->tp_rank >= e->tp_size ||
			    kvb_vllm_query_worker(&q, e, w->tp_rank, w->pp_rank) != w)
				abort();
			kvb_vllm_register_t r = {.dp_rank = e->dp_rank, .tp_rank = w->tp_rank,
						 .pp_rank = w->pp_rank};
			g_strlcpy(r.engine_id, e->engine_id, sizeof(r.engine_id));
			g_strlcpy(r.addr, w->addr, sizeof(r.addr));
			if (kvb_vllm_registry_add(reg, &r, NULL, &err) != KVB_OK)
				abort();
			total++;
		}
	}
	if (total != q.n_workers)
		abort();
	GString *s = g_string_new(NULL);
	kvb_vllm_registry_query_json(reg, s);
	if (kvb_vllm_query_decode(s->str, s->len, &q2, &err) != KVB_OK || q2.n_engines != q.n_engines ||
	    q2.n_workers != q.n_workers)
		abort();
	for (uint32_t i = 0; i < q.n_workers; i++)
		if (strcmp(q.workers[i].addr, q2.workers[i].addr) ||
		    q.workers[i].tp_rank != q2.workers[i].tp_rank)
			abort();
	kvb_vllm_query_clear(&q2);
	g_string_free(s, TRUE);
	kvb_vllm_registry_free(reg);
	kvb_vllm_query_clear(&q);
}

static void addr_case(const char *s, size_t len)
{
	char *z = g_strndup(s, len);
	kvb_vllm_worker_addr_t a, b;
	kvb_err_t err;
	if (strlen(z) == len && kvb_vllm_worker_addr_parse(z, &a, &err) == KVB_OK) {
		char back[KVB_VLLM_ADDR_MAX];
		if (kvb_vllm_worker_addr_format(a.host, a.port, back, sizeof(back), &err) != KVB_OK ||
		    kvb_vllm_worker_addr_parse(back, &b, &err) != KVB_OK || memcmp(&a, &b, sizeof(a)))
			abort();
	}
	g_free(z);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	const char *body = (const char *)data + 1;
	size_t len = size - 1;
	switch (data[0] % 3) {
	case 0: register_case(body, len); break;
	case 1: query_case(body, len); break;
	default: addr_case(body, len); break;
	}
	return 0;
}
