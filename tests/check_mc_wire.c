/* placeholder: being written */
#include "config.h"
#include "suites.h"

Suite *kvb_suite_mc_wire(void)
{
	Suite *s = suite_create("mc_wire");
	return s;
}
