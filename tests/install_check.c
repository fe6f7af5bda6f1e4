/* Built by scripts/test.sh against the *installed* headers and libraries
 * (pkg-config kvbridge kvbridge-loop): proves the public API is complete
 * enough to move bytes without any internal header. */
#include <stdio.h>
#include <string.h>

#include <kvbridge/kvbridge.h>
#include <kvbridge/loop.h>

int main(void)
{
	static unsigned char src[4][4096], dst[4][4096];
	memset(src, 0xAB, sizeof(src));
	kvb_loop_fabric_t *fab = kvb_loop_fabric_new(1);
	kvb_backend_t *pb, *db;
	kvb_connector_t *p, *d;
	kvb_config_t cfg;
	kvb_err_t err;
	kvb_config_init(&cfg);
	if (kvb_loop_open(fab, "p", NULL, &pb, &err) || kvb_loop_open(fab, "d", NULL, &db, &err) ||
	    kvb_connector_new(&cfg, pb, &p, &err) || kvb_connector_new(&cfg, db, &d, &err)) {
		fprintf(stderr, "setup: %s\n", err.msg);
		return 1;
	}
	kvb_region_t rs = {(uint64_t)(uintptr_t)src, 4096, 4096, 4, 0, 0, KVB_MEM_HOST, -1};
	kvb_region_t rd = {(uint64_t)(uintptr_t)dst, 4096, 4096, 4, 0, 0, KVB_MEM_HOST, -1};
	uint32_t ids[4] = {0, 1, 2, 3};
	kvb_block_list_t l = {ids, 4};
	const char *addr = "p";
	kvb_pull_params_t pp = {"r", "x", &addr, 1, 0, &l, 1};
	if (kvb_connector_register_layout(p, &rs, 1, &err) || kvb_connector_register_layout(d, &rd, 1, &err) ||
	    kvb_producer_begin(p, "x", &err) || kvb_producer_ready(p, "x", &l, 1, &err) ||
	    kvb_consumer_pull(d, &pp, &err)) {
		fprintf(stderr, "transfer: %s\n", err.msg);
		return 1;
	}
	kvb_connector_t *conns[2] = {p, d};
	int rc = kvb_loop_drive(fab, conns, 2, NULL, NULL, 0);
	kvb_finished_t f;
	int n = kvb_connector_poll_finished(d, &f, 1);
	int ok = rc == KVB_OK && n == 1 && f.status == KVB_OK && memcmp(src, dst, sizeof(src)) == 0;
	printf("install check: kvbridge %s, %s\n", kvb_version(), ok ? "bytes verified" : "FAILED");
	kvb_connector_free(p);
	kvb_connector_free(d);
	kvb_backend_close(pb);
	kvb_backend_close(db);
	kvb_loop_fabric_free(fab);
	kvb_config_clear(&cfg);
	return ok ? 0 : 1;
}
