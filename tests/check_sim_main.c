/*
 * The sim test runner: workload, platform and sim-backend suites.  Every
 * SimGrid simulation runs in a child process of its own (SimGrid can be
 * initialised once per process), so this runner forks per test whatever
 * CK_FORK says.
 */
#include "config.h"

#include <stdlib.h>

#include "suites.h"

int main(void)
{
	SRunner *sr = srunner_create(kvb_suite_workload());
	srunner_add_suite(sr, kvb_suite_platform());
	srunner_add_suite(sr, kvb_suite_sim());
	srunner_set_fork_status(sr, CK_FORK);
	srunner_set_tap(sr, "-");
	srunner_run_all(sr, CK_ENV);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
