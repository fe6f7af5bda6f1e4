/*
 * The hw test runner: the wire codecs of the hw backend (Mooncake handshake,
 * descriptors and TCP transport, the vLLM side channel of every generation, HTTP) and the
 * backend itself over loopback sockets.
 */
#include "config.h"

#include <stdlib.h>

#include "suites.h"

int main(void)
{
	SRunner *sr = srunner_create(kvb_suite_mc_wire());
	srunner_add_suite(sr, kvb_suite_vllm_wire());
	srunner_add_suite(sr, kvb_suite_vllm_xfer_wire());
	srunner_add_suite(sr, kvb_suite_vllm_xfer_resp());
	srunner_add_suite(sr, kvb_suite_vllm_bootstrap_wire());
	srunner_add_suite(sr, kvb_suite_http());
	srunner_add_suite(sr, kvb_suite_acl());
	srunner_add_suite(sr, kvb_suite_rdma_window_wire());
	srunner_add_suite(sr, kvb_suite_tls());
	srunner_add_suite(sr, kvb_suite_proxy_vllm());
	srunner_set_tap(sr, "-");
	srunner_run_all(sr, CK_ENV);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
