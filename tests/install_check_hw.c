/* Built by scripts/test.sh against the *installed* hw backend (pkg-config
 * kvbridge-hw): two endpoints in one process move four blocks over a real
 * loopback TCP connection through the public API alone. */
#include <stdio.h>
#include <string.h>

#include <kvbridge/kvbridge.h>
#include <kvbridge/hw.h>

int main(void)
{
	static unsigned char src[4][4096], dst[4][4096];
	memset(src, 0xCD, sizeof(src));
	kvb_hw_params_t hp;
	kvb_hw_params_default(&hp);
	hp.bind_host = "127.0.0.1";
	hp.context = g_main_context_new();
	kvb_backend_t *pb, *db;
	kvb_connector_t *p, *d;
	kvb_config_t cfg;
	kvb_err_t err;
	kvb_config_init(&cfg);
	if (kvb_hw_open(&hp, &pb, &err) || kvb_hw_open(&hp, &db, &err) ||
	    kvb_connector_new(&cfg, pb, &p, &err) || kvb_connector_new(&cfg, db, &d, &err)) {
		fprintf(stderr, "setup: %s\n", err.msg);
		return 1;
	}
	kvb_region_t rs = {(uint64_t)(uintptr_t)src, 4096, 4096, 4, 0, 0, KVB_MEM_HOST, -1};
	kvb_region_t rd = {(uint64_t)(uintptr_t)dst, 4096, 4096, 4, 0, 0, KVB_MEM_HOST, -1};
	uint32_t ids[4] = {0, 1, 2, 3};
	kvb_block_list_t l = {ids, 4};
	const char *addr = kvb_hw_segment_name(pb);
	kvb_pull_params_t pp = {"r", "x", &addr, 1, 0, &l, 1};
	if (kvb_connector_register_layout(p, &rs, 1, &err) || kvb_connector_register_layout(d, &rd, 1, &err) ||
	    kvb_producer_begin(p, "x", &err) || kvb_producer_ready(p, "x", &l, 1, &err) ||
	    kvb_consumer_pull(d, &pp, &err)) {
		fprintf(stderr, "transfer: %s\n", err.msg);
		return 1;
	}
	kvb_finished_t f;
	int n = 0;
	for (int i = 0; i < 5000 && n == 0; i++) {
		kvb_connector_progress(p);
		kvb_connector_progress(d);
		n = kvb_connector_poll_finished(d, &f, 1);
		kvb_hw_wait(db, 1000000);
	}
	int ok = n == 1 && f.status == KVB_OK && memcmp(src, dst, sizeof(src)) == 0;
	printf("install check (hw): %s, %s\n", addr, ok ? "bytes verified over TCP" : "FAILED");
	kvb_connector_free(p);
	kvb_connector_free(d);
	kvb_backend_close(pb);
	kvb_backend_close(db);
	kvb_config_clear(&cfg);
	g_main_context_unref(hp.context);
	return ok ? 0 : 1;
}
