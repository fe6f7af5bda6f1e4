/*
 * The hw backend's event and timer service: the bottom layer every other
 * file of the backend stands on (transports, then control protocols, then
 * the vtable in kvb_hw.c).  Nothing here calls upward.
 *
 *  - the instance state all layers share (hw_t): parameters, the
 *    GMainContext, the event queue the core polls, the core's timers,
 *    counters, the last error;
 *  - GSource helpers: a watched file descriptor, a one-shot deadline;
 *  - errors, debug log lines (KVB_HW_DEBUG=1) and warnings (params.warn_fn).
 *
 * Layers above keep their own state behind the opaque module pointers in
 * hw_t; each module's header declares what it offers.
 */
#ifndef KVB_HW_EVENTS_H
#define KVB_HW_EVENTS_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>
#include <kvbridge/backend.h>
#include <kvbridge/hw.h>

#include "kvb_acl.h"
#include "kvb_mc_wire.h"

typedef struct hw hw_t;

/* Module state, each owned by one file (forward declarations only). */
struct hw_tcp_server;   /* transport/kvb_hw_tcp.c */
struct hw_rdma;         /* transport/kvb_hw_rdma.c */
struct hw_gpu;          /* transport/kvb_hw_gpu.c */
struct hw_staging;      /* transport/kvb_hw_staging.c */
struct hw_handshake;    /* control/kvb_hw_handshake.c */
struct hw_vllm;         /* control/kvb_hw_vllm_gen0.c */
struct hw_vllm2;        /* control/kvb_hw_vllm_gen2.c */
struct hw_vllm_boot;    /* control/kvb_hw_vllm_bootstrap.c */

/* A transport completion about to become KVB_EV_XFER_DONE: a layer that
 * posted the op for itself (a staged piece) claims it by returning true. */
typedef bool (*hw_xfer_filter_fn)(hw_t *hw, uint64_t cookie, int status, uint32_t nic);

struct hw {
	kvb_backend_t *be;
	kvb_hw_params_t p;          /* strings point at the copies below */
	char host[KVB_MC_NAME_MAX];
	char bind_host[KVB_MC_NAME_MAX];
	char side_host[KVB_MC_NAME_MAX];
	char nic_addrs[KVB_HW_MAX_NICS][KVB_MC_NAME_MAX];
	char rdma_devices[512];
	char vllm_bootstrap_server[KVB_MC_NAME_MAX];
	char vllm_release[32];
	char segment[KVB_MC_NAME_MAX]; /* host:rpc_port */
	uint16_t rpc_port;
	GMainContext *ctx;
	bool own_ctx;
	bool debug;
	char last_error[256];
	kvb_hw_stats_t stats;

	/* events for the core, and the core's timers */
	GArray *events;             /* kvb_event_t ready for event_poll */
	GPtrArray *held;            /* message buffers handed out by the last event_poll */
	GSequence *timers;          /* hw_timer_t* by (deadline, id) */
	GHashTable *timer_by_id;
	uint64_t timer_seq;
	GSource *timer_src;
	void (*notify)(void *user);
	void *notify_user;
	hw_xfer_filter_fn xfer_filter;

	/* transports (transport/) */
	GPtrArray *mrs;             /* hw_mr_t*: registered memory */
	uint32_t mr_seq;
	GArray *fences;             /* uint64_t pairs: addr, len */
	GPtrArray *windows;         /* transport/kvb_hw_mem.c: pulls in progress */
	GArray *exposed;            /* uint64_t pairs: kvb_hw_expose */
	struct hw_tcp_server *tcp;
	struct hw_rdma *rdma;
	struct hw_gpu *gpu;
	struct hw_staging *staging;

	/* sockets and control protocols (events/kvb_hw_net.c, control/) */
	GQueue calls;               /* hw_call_t* in flight */
	GQueue peers;               /* hw_peer_t* */
	GHashTable *incoming;       /* incoming id -> hw_peer_t* awaiting conn_accept */
	uint64_t incoming_seq;
	struct hw_handshake *handshake;
	struct hw_vllm *vllm;
	struct hw_vllm2 *vllm2;
	struct hw_vllm_boot *vllm_boot;
	struct hw_warn_state *warn; /* events/kvb_hw_warn.c; NULL until a warning */
	kvb_acl_t acl;              /* who may connect, whom we may dial */
	bool auth;                  /* params.secret_file given: streams authenticate */
	uint8_t auth_key[32];       /* derived from the secret file's bytes */
	struct kvb_tls *tls_server; /* params.tls_cert/key: incoming streams must start TLS */
	struct kvb_tls *tls_client; /* params.tls_ca: the streams we open start TLS */
};

/* ---- instance ------------------------------------------------------------ */

/* Containers, the context (params.context or a new one) and the timer
 * source; hw->p must be filled.  hw_events_fini releases them (safe after a
 * partial init). */
void hw_events_init(hw_t *hw);
void hw_events_fini(hw_t *hw);

uint64_t hw_now_ns(void);
static inline const kvb_hw_params_t *hw_params(hw_t *hw)
{
	return &hw->p;
}
static inline kvb_hw_stats_t *hw_stats(hw_t *hw)
{
	return &hw->stats;
}

void hw_set_error(hw_t *hw, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
void hw_log(hw_t *hw, const char *fmt, ...) G_GNUC_PRINTF(2, 3); /* KVB_HW_DEBUG=1 */
/* A problem worth a line in the application's log (params.warn_fn), rate-
 * limited per call site and peer (events/kvb_hw_warn.c); peer: the address
 * the problem came from, NULL or "" when unknown. */
void hw_warn(hw_t *hw, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
void hw_warn_from(hw_t *hw, const char *peer, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
void hw_warn_fini(hw_t *hw); /* says what is still held back */

/* ---- GSource helpers ----------------------------------------------------- */

/* A file descriptor watched on the instance's context; fn returns false to
 * stop watching (the watch is then destroyed: do not touch it again). */
typedef bool (*hw_watch_fn)(void *obj, GIOCondition cond);
typedef struct hw_watch hw_watch_t;
hw_watch_t *hw_watch_new(hw_t *hw, int fd, GIOCondition cond, hw_watch_fn fn, void *obj);
void hw_watch_set(hw_watch_t *w, GIOCondition cond);
void hw_watch_free(hw_watch_t *w); /* NULL is a no-op; safe from inside fn */
/* True when w was destroyed (from inside a callback that may free it). */
bool hw_watch_gone(hw_watch_t *w);
void hw_watch_ref(hw_watch_t *w);
void hw_watch_unref(hw_watch_t *w);

/* A one-shot deadline on the context: fn(obj) runs once after hw_deadline_arm. */
typedef struct hw_deadline hw_deadline_t;
hw_deadline_t *hw_deadline_new(hw_t *hw, void (*fn)(void *obj), void *obj);
void hw_deadline_arm(hw_deadline_t *d, uint64_t delay_ns);
void hw_deadline_disarm(hw_deadline_t *d);
void hw_deadline_free(hw_deadline_t *d); /* NULL is a no-op */

/* ---- events for the core ------------------------------------------------- */

void hw_event_push(hw_t *hw, const kvb_event_t *ev);
/* A transport finished the op of cookie (through xfer_filter first). */
void hw_xfer_done(hw_t *hw, uint64_t cookie, int status, uint32_t nic);
/* Drop queued events that name conn (the core closed it). */
void hw_events_drop_conn(hw_t *hw, kvb_conn_t *conn);
/* The vtable's event_poll: dispatch the context when nobody else is, then
 * hand out up to max events. */
int hw_events_poll(hw_t *hw, kvb_event_t *events, int max);
/* kvb_hw_wait: dispatch until an event is ready or timeout_ns passed. */
bool hw_events_wait(hw_t *hw, uint64_t timeout_ns);

/* The core's timers (timer_arm / timer_cancel). */
int hw_timer_arm(hw_t *hw, uint64_t deadline_ns, uint64_t cookie, uint64_t *timer_id);
int hw_timer_cancel(hw_t *hw, uint64_t timer_id);

#endif /* KVB_HW_EVENTS_H */
