/*
 * A peer: what the core calls a connection (kvb_conn_t), as a control
 * protocol implements it.  Every protocol (the kvbridge stream, Mooncake
 * data-only segments, vLLM's side channels) makes its peers here, fills
 * their link from the remote segment descriptor, and says what the core's
 * calls mean for it through a table of ops; kvb_hw.c's vtable dispatches
 * through that table and knows no protocol's internals.
 *
 * Life of a peer:
 *   outgoing: conn_connect -> hw_peer_new, the protocol connects ->
 *             hw_peer_up (CONN_UP) or hw_peer_down (CONN_DOWN)
 *   incoming: the protocol makes it and hw_peer_announce (CONN_INCOMING) ->
 *             conn_accept -> ops->accepted
 *   messages: hw_peer_deliver (MSG) in, ops->msg_send out
 *   end:      hw_peer_down (CONN_DOWN) -> the core's conn_close ->
 *             ops->closed; hw_peer_free releases the link and calls
 *             ops->detach for the protocol's own state
 */
#ifndef KVB_HW_PEER_H
#define KVB_HW_PEER_H

#include <stdbool.h>
#include <stdint.h>

#include <kvbridge/backend.h>

#include "events/kvb_hw_events.h"
#include "events/kvb_hw_net.h"
#include "transport/kvb_hw_link.h"

typedef struct hw_peer hw_peer_t;

typedef enum hw_peer_kind {
	HW_PEER_KVB = 1,          /* kvbridge control stream */
	HW_PEER_VLLM_SESSION = 2, /* producer side: one vLLM request message being served */
	HW_PEER_VLLM_CLIENT = 3,  /* consumer side: a vLLM producer's side channel */
	HW_PEER_MOONCAKE = 4,     /* a Mooncake segment: data only, no control messages */
} hw_peer_kind_t;

typedef enum hw_peer_state {
	HW_PEER_CONNECTING = 1,
	HW_PEER_UP = 2,
	HW_PEER_DOWN = 3,        /* CONN_DOWN delivered (or due); waiting for conn_close */
} hw_peer_state_t;

typedef struct hw_peer_ops {
	const char *protocol;    /* for messages: "kvbridge", "mooncake", "vllm gen0" */
	/* conn_accept of an announced peer: start serving it */
	void (*accepted)(hw_peer_t *p);
	/* msg_send: a kvbridge wire message from the core (translated or
	 * dropped by protocols that speak another language) */
	int (*msg_send)(hw_peer_t *p, const void *buf, size_t len);
	/* conn_close: the core let go; the protocol frees the peer now or when
	 * it has finished (e.g. after a last reply) */
	void (*closed)(hw_peer_t *p);
	/* hw_peer_free: drop the protocol's state (NULL: none) */
	void (*detach)(hw_peer_t *p);
} hw_peer_ops_t;

struct hw_peer {
	hw_t *hw;
	kvb_conn_t *conn;        /* NULL after conn_close (and before conn_accept) */
	const hw_peer_ops_t *ops;
	hw_peer_kind_t kind;
	hw_peer_state_t state;
	char addr[KVB_ADDR_MAX];
	char host[KVB_MC_NAME_MAX];
	uint16_t port;
	uint64_t incoming_id;
	hw_link_t link;          /* the data path to the peer's segment */

	/* a stream to the peer (kvbridge) */
	int fd;
	hw_watch_t *w;
	hw_deadline_t *connect_deadline;
	GByteArray *rx;
	GByteArray *tx;
	size_t tx_off;
	bool hello_sent, hello_done;
	uint8_t auth_step;       /* shared secret: the last challenge-response step done */
	struct kvb_tls_session *tls; /* TLS on the stream (params.tls_*); NULL: plaintext */
	bool tls_ready;          /* its handshake is over: every byte goes through it */
	bool hello_awaited;      /* a TLS listener: the connector's hello comes inside TLS */
	uint8_t nonce_s[32], nonce_c[32];

	void *proto;             /* the protocol's own per-peer state */
	hw_call_t *call;         /* a handshake call the peer waits for */
};

hw_peer_t *hw_peer_new(hw_t *hw, hw_peer_kind_t kind, const hw_peer_ops_t *ops, const char *addr);
/* Release the peer, its link and its socket; ops->detach first. */
void hw_peer_free(hw_peer_t *p);
/* The peer of a conn (NULL after conn_close). */
hw_peer_t *hw_peer_of(kvb_conn_t *conn);
void hw_peer_bind(hw_peer_t *p, kvb_conn_t *conn);

/* Peer events to the core. */
void hw_peer_up(hw_peer_t *p);
void hw_peer_down(hw_peer_t *p, int status, const char *why);
/* Deliver a control message (copied) from p to the core. */
void hw_peer_deliver(hw_peer_t *p, const void *data, size_t len);
/* Announce an incoming peer to the core (CONN_INCOMING). */
void hw_peer_announce(hw_peer_t *p);
/* The peer announced under id (conn_accept), taken out of the table. */
hw_peer_t *hw_peer_take_incoming(hw_t *hw, uint64_t id);
/* Instance close: free every peer, whatever its state. */
void hw_peers_free_all(hw_t *hw);

#endif /* KVB_HW_PEER_H */
