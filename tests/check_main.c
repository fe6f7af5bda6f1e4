/*
 * The core test runner: every suite in one SRunner (libnl check-all.c), TAP
 * on stdout for automake's tap-driver.  CK_RUN_SUITE=layout and
 * CK_RUN_CASE=... select a subset (srunner_run_all with CK_ENV).
 */
#include "config.h"

#include <stdlib.h>

#include "suites.h"

int main(void)
{
	SRunner *sr = srunner_create(kvb_suite_error());
	srunner_add_suite(sr, kvb_suite_layout());
	srunner_add_suite(sr, kvb_suite_tp());
	srunner_add_suite(sr, kvb_suite_model());
	srunner_add_suite(sr, kvb_suite_policy());
	srunner_add_suite(sr, kvb_suite_backend());
	srunner_add_suite(sr, kvb_suite_config());
	srunner_add_suite(sr, kvb_suite_wire());
	srunner_add_suite(sr, kvb_suite_loop());
	srunner_add_suite(sr, kvb_suite_fault());
	srunner_add_suite(sr, kvb_suite_producer());
	srunner_add_suite(sr, kvb_suite_consumer());
	srunner_add_suite(sr, kvb_suite_lifecycle());
	srunner_add_suite(sr, kvb_suite_misuse());
	srunner_add_suite(sr, kvb_suite_lease());
	srunner_add_suite(sr, kvb_suite_e2e());
	srunner_set_tap(sr, "-");
	srunner_run_all(sr, CK_ENV);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
