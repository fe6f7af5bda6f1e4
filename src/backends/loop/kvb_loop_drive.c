/*
 * kvb_loop_drive(): the event loop of a process whose connectors all sit on
 * one loop fabric (tests, the demo).  Kept apart from kvb_loop.c because it
 * is the only piece of the loop backend that calls into the connector.
 */
#include "config.h"

#include <kvbridge/connector.h>
#include <kvbridge/loop.h>

/* Progress every connector until all are idle, then move virtual time to
 * the next event; never advance time while a connector still has work at
 * the current instant, so everything due at t is handled at t.  The clock
 * never passes start + max_ns: a caller that runs "for 1 ms" finds the clock
 * 1 ms later, not at the next far-away timer. */
int kvb_loop_drive(kvb_loop_fabric_t *fabric, struct kvb_connector *const *conns, uint32_t n,
		   bool (*done)(void *user), void *user, uint64_t max_ns)
{
	if (!fabric || (n && !conns))
		return KVB_ERR_INVALID;
	uint64_t start = kvb_loop_fabric_now(fabric);
	uint64_t limit = max_ns && start <= UINT64_MAX - max_ns ? start + max_ns : UINT64_MAX;
	for (;;) {
		int any = 0;
		for (uint32_t i = 0; i < n; i++) {
			int rc = kvb_connector_progress(conns[i]);
			if (rc < 0)
				return rc;
			any += rc;
		}
		if (done && done(user))
			return KVB_OK;
		if (any)
			continue;
		uint64_t next;
		if (!kvb_loop_fabric_next(fabric, &next))
			return done ? KVB_ERR_STATE : KVB_OK;
		if (next > limit) {
			kvb_loop_fabric_advance_to(fabric, limit);
			return KVB_ERR_TIMEOUT;
		}
		kvb_loop_fabric_advance(fabric);
	}
}
