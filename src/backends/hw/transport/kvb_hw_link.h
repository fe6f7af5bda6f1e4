/*
 * A link: the data path from this endpoint to one remote segment, as the
 * transports see it.  The control protocol that owns a peer embeds one
 * (control/kvb_hw_peer.h) and fills it from the peer's segment descriptor;
 * the transports (TCP lanes, RDMA endpoints, staged and mirrored posts)
 * keep their per-peer state in it and never look further up.
 *
 * The one thing a transport needs from a control protocol, an ordered
 * message to the peer (SYNC/SYNCED for GPU memory behind a mirror), goes
 * through the sync_send hook the owner installs: transports never call
 * control code.
 */
#ifndef KVB_HW_LINK_H
#define KVB_HW_LINK_H

#include <stdbool.h>
#include <stdint.h>

#include <kvbridge/connector.h>
#include <kvbridge/hw.h>

#include "events/kvb_hw_events.h"
#include "kvb_mc_wire.h"

typedef struct hw_link hw_link_t;
typedef struct hw_lane hw_lane_t;

/* Send one frame of type on the peer's ordered control stream; false when
 * there is none (any more). */
typedef bool (*hw_link_sync_fn)(hw_link_t *l, kvb_mc_msg_type_t type, const void *buf, size_t len);

struct hw_link {
	hw_t *hw;
	char name[KVB_ADDR_MAX];    /* the peer's address, for messages */
	bool down;                  /* the owner saw the peer go: failures are its */

	/* where our slices go: the peer's segment (Mooncake descriptor) */
	kvb_mc_segment_t seg;
	bool have_seg;
	char data_host[KVB_MC_NAME_MAX];
	uint16_t data_port;
	bool data_v2;
	uint64_t ops_outstanding;

	hw_lane_t *lanes[KVB_HW_MAX_NICS * KVB_HW_MAX_LANES]; /* TCP: [nic * lanes + k] */
	void *staging;              /* kvb_hw_staging.c: mirror syncs in flight */

	/* set by a control protocol with an ordered stream to the peer (the
	 * kvbridge stream); NULL: GPU memory behind the peer's mirror is out
	 * of reach */
	hw_link_sync_fn sync_send;

	/* kvb_hw_rdma_window.c: the RDMA keys the peer sent for its pulls in
	 * progress (kvb_window_keys_t*); NULL until one comes */
	GPtrArray *window_keys;
};

#endif /* KVB_HW_LINK_H */
