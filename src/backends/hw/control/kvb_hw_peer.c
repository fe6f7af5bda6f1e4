/*
 * Peers: the core's connections as the control protocols implement them
 * (kvb_hw_peer.h).
 */
#include "config.h"

#include <inttypes.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>

#include "control/kvb_hw_peer.h"
#include "transport/kvb_hw_mem.h"
#include "transport/kvb_hw_transport.h"

hw_peer_t *hw_peer_new(hw_t *hw, hw_peer_kind_t kind, const hw_peer_ops_t *ops, const char *addr)
{
	hw_peer_t *p = g_new0(hw_peer_t, 1);
	p->hw = hw;
	p->kind = kind;
	p->ops = ops;
	p->state = HW_PEER_CONNECTING;
	p->fd = -1;
	g_strlcpy(p->addr, addr ? addr : "", sizeof(p->addr));
	hw_link_init(&p->link, hw, p->addr);
	p->rx = g_byte_array_new();
	p->tx = g_byte_array_new();
	g_queue_push_tail(&hw->peers, p);
	return p;
}

void hw_peer_free(hw_peer_t *p)
{
	hw_t *hw = p->hw;
	g_queue_remove(&hw->peers, p);
	if (p->incoming_id)
		g_hash_table_remove(hw->incoming, &p->incoming_id);
	if (p->ops && p->ops->detach)
		p->ops->detach(p);
	hw_window_close(hw, p, NULL, NULL); /* pulls sent through it are over */
	hw_call_cancel(p->call);
	hw_link_clear(&p->link);
	hw_watch_free(p->w);
	hw_deadline_free(p->connect_deadline);
	if (p->fd >= 0)
		close(p->fd);
	g_byte_array_unref(p->rx);
	g_byte_array_unref(p->tx);
	g_free(p);
}

void hw_peer_up(hw_peer_t *p)
{
	if (p->state != HW_PEER_CONNECTING)
		return;
	p->state = HW_PEER_UP;
	hw_deadline_disarm(p->connect_deadline);
	if (p->conn) {
		kvb_event_t ev = {.type = KVB_EV_CONN_UP, .conn = p->conn};
		hw_event_push(p->hw, &ev);
	}
}

void hw_peer_down(hw_peer_t *p, int status, const char *why)
{
	if (p->state == HW_PEER_DOWN)
		return;
	p->state = HW_PEER_DOWN;
	hw_set_error(p->hw, "peer %s: %s", p->addr, why ? why : kvb_strerror(status));
	if (status != KVB_OK)
		hw_warn(p->hw, "peer %s down: %s", p->addr, why ? why : kvb_strerror(status));
	/* a kvbridge stream that closed means the peer process is gone: its
	 * RDMA endpoints go too */
	hw_link_down(&p->link, KVB_ERR_PEER, p->kind == HW_PEER_KVB);
	hw_watch_free(p->w);
	p->w = NULL;
	hw_deadline_disarm(p->connect_deadline);
	if (p->fd >= 0) {
		close(p->fd);
		p->fd = -1;
	}
	if (p->conn) {
		kvb_event_t ev = {.type = KVB_EV_CONN_DOWN, .conn = p->conn, .status = status};
		hw_event_push(p->hw, &ev);
	} else if (!p->incoming_id) {
		/* the core already closed it (or never knew it) */
		hw_peer_free(p);
	}
}

void hw_peer_deliver(hw_peer_t *p, const void *data, size_t len)
{
	if (!p->conn || p->state != HW_PEER_UP)
		return;
	/* owned by the queued event, then held until the next event_poll */
	kvb_event_t ev = {.type = KVB_EV_MSG, .conn = p->conn, .data = g_memdup2(data, len),
			  .len = len};
	hw_event_push(p->hw, &ev);
}

void hw_peer_announce(hw_peer_t *p)
{
	hw_t *hw = p->hw;
	p->incoming_id = ++hw->incoming_seq;
	g_hash_table_insert(hw->incoming, &p->incoming_id, p);
	kvb_event_t ev = {.type = KVB_EV_CONN_INCOMING, .incoming_id = p->incoming_id};
	hw_event_push(hw, &ev);
}

hw_peer_t *hw_peer_of(kvb_conn_t *conn)
{
	return *(hw_peer_t **)conn->priv;
}

void hw_peer_bind(hw_peer_t *p, kvb_conn_t *conn)
{
	if (conn)
		*(hw_peer_t **)conn->priv = p;
	else if (p->conn)
		*(hw_peer_t **)p->conn->priv = NULL;
	p->conn = conn;
}

hw_peer_t *hw_peer_take_incoming(hw_t *hw, uint64_t id)
{
	hw_peer_t *p = g_hash_table_lookup(hw->incoming, &id);
	if (!p)
		return NULL;
	g_hash_table_remove(hw->incoming, &id);
	p->incoming_id = 0;
	return p;
}

void hw_peers_free_all(hw_t *hw)
{
	while (hw->peers.head) {
		hw_peer_t *p = hw->peers.head->data;
		if (p->conn)
			hw_peer_bind(p, NULL);
		hw_peer_free(p);
	}
}
