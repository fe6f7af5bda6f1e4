/*
 * hw backend internals shared by its files:
 *   kvb_hw.c       instance, vtable, events, timers, memory, GSource helpers,
 *                  the handshake listener and kvbridge control streams
 *   kvb_hw_tcp.c   Mooncake TCP transport: client lanes and the data server
 *   kvb_hw_vllm.c  vLLM Gen 0 side channel: ROUTER sessions, DEALER client
 *   kvb_hw_rdma.c  RDMA verbs: devices, registrations, Mooncake-compatible
 *                  endpoints (type-0 handshake), WRITE/READ, completions
 *   kvb_hw_gpu.c   GPU memory: providers (CUDA, emulated), asynchronous
 *                  copies, the bounce pool and staged posts
 */
#ifndef KVB_HW_INT_H
#define KVB_HW_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>
#include <kvbridge/backend.h>
#include <kvbridge/hw.h>

#include "kvb_mc_wire.h"

typedef struct hw hw_t;
typedef struct hw_peer hw_peer_t;
typedef struct hw_lane hw_lane_t;
typedef struct hw_call hw_call_t;

/* ---- GSource helpers ----------------------------------------------------- */

/* A file descriptor watched on the instance's context; fn returns false to
 * stop watching (the watch is then destroyed: do not touch it again). */
typedef bool (*hw_watch_fn)(void *obj, GIOCondition cond);
typedef struct hw_watch hw_watch_t;
hw_watch_t *hw_watch_new(hw_t *hw, int fd, GIOCondition cond, hw_watch_fn fn, void *obj);
void hw_watch_set(hw_watch_t *w, GIOCondition cond);
void hw_watch_free(hw_watch_t *w); /* NULL is a no-op; safe from inside fn */

/* A one-shot deadline on the context: fn(obj) runs once after hw_deadline_arm. */
typedef struct hw_deadline hw_deadline_t;
hw_deadline_t *hw_deadline_new(hw_t *hw, void (*fn)(void *obj), void *obj);
void hw_deadline_arm(hw_deadline_t *d, uint64_t delay_ns);
void hw_deadline_disarm(hw_deadline_t *d);
void hw_deadline_free(hw_deadline_t *d); /* NULL is a no-op */

/* ---- memory -------------------------------------------------------------- */

typedef enum hw_gpu_provider {
	HW_GPU_NONE = 0,         /* host memory */
	HW_GPU_CUDA = 1,
	HW_GPU_EMULATED = 2,     /* kvb_hw_emu_gpu_alloc */
} hw_gpu_provider_t;

typedef struct hw_mr {
	uint64_t addr, len;
	uint32_t id;
	kvb_mem_kind_t kind;
	int32_t device;
	uint32_t busy;           /* data-server sessions moving bytes in or out */
	void *rdma;              /* kvb_hw_rdma.c: one ibv_mr per device */
	uint8_t gpu_provider;    /* hw_gpu_provider_t */
	uint8_t path[KVB_HW_MAX_NICS]; /* kvb_hw_gpu_path_t per local NIC */
	void *mirror;            /* GPU memory some RDMA device cannot reach: a pinned
				  * host mirror those devices expose instead */
} hw_mr_t;

/* The registration holding all of [addr, addr + len), or NULL.  Only what
 * peers may reach: the staging pool is not among them. */
hw_mr_t *hw_mr_find(hw_t *hw, uint64_t addr, uint64_t len);

/* True when [addr, addr + len) overlaps a fenced range (a cancelled vLLM
 * Gen 0 pull whose producer cannot be told to stop). */
bool hw_fenced(hw_t *hw, uint64_t addr, uint64_t len);
void hw_fence_add(hw_t *hw, uint64_t addr, uint64_t len);
void hw_fence_clear(hw_t *hw, uint64_t addr, uint64_t len);

/* ---- peers --------------------------------------------------------------- */

typedef enum hw_peer_kind {
	HW_PEER_KVB = 1,          /* kvbridge control stream */
	HW_PEER_VLLM_SESSION = 2, /* producer side: one Gen 0 message being served */
	HW_PEER_VLLM_CLIENT = 3,  /* consumer side: a Gen 0 producer's side channel */
	HW_PEER_MOONCAKE = 4,     /* a Mooncake segment: data only, no control messages */
} hw_peer_kind_t;

typedef enum hw_peer_state {
	HW_PEER_CONNECTING = 1,
	HW_PEER_UP = 2,
	HW_PEER_DOWN = 3,        /* CONN_DOWN delivered (or due); waiting for conn_close */
} hw_peer_state_t;

struct hw_peer {
	hw_t *hw;
	kvb_conn_t *conn;        /* NULL after conn_close (and before conn_accept) */
	hw_peer_kind_t kind;
	hw_peer_state_t state;
	char addr[KVB_ADDR_MAX];
	char host[KVB_MC_NAME_MAX];
	uint16_t port;
	uint64_t incoming_id;

	/* kvbridge stream */
	int fd;
	hw_watch_t *w;
	hw_deadline_t *connect_deadline;
	GByteArray *rx;
	GByteArray *tx;
	size_t tx_off;
	bool hello_sent, hello_done;

	/* where our slices go: the peer's Mooncake TCP transport */
	kvb_mc_segment_t seg;
	bool have_seg;
	char data_host[KVB_MC_NAME_MAX];
	uint16_t data_port;
	bool data_v2;
	hw_lane_t *lanes[KVB_HW_MAX_NICS * KVB_HW_MAX_LANES]; /* [nic * lanes + k] */
	uint64_t ops_outstanding;

	void *vllm;              /* kvb_hw_vllm.c's per-peer state */
	void *gpu;               /* kvb_hw_gpu.c's: mirror syncs in flight */
	hw_call_t *call;         /* MOONCAKE: the descriptor fetch */
};

/* Peer events to the core. */
void hw_peer_up(hw_peer_t *p);
void hw_peer_down(hw_peer_t *p, int status, const char *why);
/* Deliver a control message (copied) from p to the core. */
void hw_peer_deliver(hw_peer_t *p, const void *data, size_t len);
/* A peer that is neither a stream nor lanes-only is freed by its kind's code. */
hw_peer_t *hw_peer_new(hw_t *hw, hw_peer_kind_t kind, const char *addr);
void hw_peer_free(hw_peer_t *p);
/* Announce an incoming peer to the core (CONN_INCOMING). */
void hw_peer_announce(hw_peer_t *p);
/* Use seg (moved in) as the peer's data target. */
int hw_peer_set_segment(hw_peer_t *p, kvb_mc_segment_t *seg, const char *fallback_host,
			kvb_err_t *err);

/* ---- events -------------------------------------------------------------- */

void hw_event_push(hw_t *hw, const kvb_event_t *ev);
void hw_xfer_done(hw_t *hw, uint64_t cookie, int status, uint32_t nic);
/* Post one op on p's transport (RDMA when both sides have it, else TCP);
 * m is the registration holding its local range (found once, by xfer_post,
 * or the staging pool). */
int hw_post_one(hw_peer_t *p, const kvb_slice_op_t *op, hw_mr_t *m);
/* Queue a frame on a kvbridge control stream (dropped when it is down). */
void hw_stream_send(hw_peer_t *p, kvb_mc_msg_type_t type, const void *buf, size_t len);
hw_t *hw_of_backend(kvb_backend_t *be);

/* ---- errors -------------------------------------------------------------- */

void hw_set_error(hw_t *hw, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
void hw_log(hw_t *hw, const char *fmt, ...) G_GNUC_PRINTF(2, 3); /* KVB_HW_DEBUG=1 */
/* A peer-caused problem worth a line in the application's log (params.warn_fn). */
void hw_warn(hw_t *hw, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/* ---- sockets ------------------------------------------------------------- */

/* Non-blocking TCP connect to host:port (IPv4/IPv6 by getaddrinfo), bound to
 * src (NULL or "" = any).  Returns the fd (connect may be in progress) or -1
 * with the reason in err. */
int hw_tcp_connect(const char *host, uint16_t port, const char *src, kvb_err_t *err);
/* After POLLOUT on a connecting socket: 0, or the connect's errno. */
int hw_tcp_connect_result(int fd);
/* Listening socket on bind_host:port (port 0 = try [min, max] at random,
 * as Mooncake's P2P mode does).  Returns the fd and the bound port, or -1. */
int hw_tcp_listen(const char *bind_host, uint16_t port, uint16_t min, uint16_t max,
		  uint16_t *bound, kvb_err_t *err);

/* ---- the TCP transport (kvb_hw_tcp.c) ------------------------------------ */

int hw_tcp_server_start(hw_t *hw, kvb_err_t *err);
uint16_t hw_tcp_server_port(hw_t *hw);
void hw_tcp_server_stop(hw_t *hw);
/* Close data-server sessions moving bytes in or out of mr (deregistration). */
void hw_tcp_server_drop_mr(hw_t *hw, hw_mr_t *mr);
int hw_lane_post(hw_peer_t *p, const kvb_slice_op_t *op, hw_mr_t *m);
/* Fail every op of p's lanes with status and close them. */
void hw_lanes_fail(hw_peer_t *p, int status);
void hw_lanes_free(hw_peer_t *p);

/* ---- the vLLM side channel (kvb_hw_vllm.c) ------------------------------- */

int hw_vllm_start(hw_t *hw, kvb_err_t *err);
void hw_vllm_stop(hw_t *hw);
int hw_vllm_client_connect(hw_peer_t *p, const char *host, uint16_t port, kvb_err_t *err);
/* A control message the core sends on a vLLM peer (translated or dropped). */
int hw_vllm_msg_send(hw_peer_t *p, const void *buf, size_t len);
/* The core closed the conn of a vLLM peer (frees it). */
void hw_vllm_peer_closed(hw_peer_t *p);
/* The core accepted a producer-side session: deliver its pulls. */
void hw_vllm_accepted(hw_peer_t *p);
/* Release a vLLM peer's state (from hw_peer_free). */
void hw_vllm_peer_detach(hw_peer_t *p);
int hw_vllm_set_layout(hw_t *hw, const kvb_region_t *regions, uint32_t n, uint32_t tp_size,
		       uint32_t tp_rank, kvb_err_t *err);

/* ---- the handshake client (kvb_hw.c) ------------------------------------- */

/* One Mooncake request: connect, send a frame, read the reply, close.  cb
 * runs once with KVB_OK and the reply payload, or an error and a reason. */
typedef void (*hw_call_fn)(void *obj, int status, const char *why, kvb_mc_msg_type_t type,
			   const uint8_t *payload, size_t len);
hw_call_t *hw_call_start(hw_t *hw, const char *host, uint16_t port, kvb_mc_msg_type_t type,
			 const void *payload, size_t len, hw_call_fn cb, void *obj);
void hw_call_cancel(hw_call_t *c); /* cb will not run; NULL is a no-op */

/* This endpoint's descriptor as JSON (g_free). */
char *hw_descriptor_json(hw_t *hw);

/* Accessors used by the other files. */
const kvb_hw_params_t *hw_params(hw_t *hw);
const char *hw_host(hw_t *hw);
uint16_t hw_rpc_port_of(hw_t *hw);
kvb_hw_stats_t *hw_stats(hw_t *hw);
uint64_t hw_now_ns(void);

/* State the TCP and vLLM files keep in the instance. */
typedef struct hw_tcp_server hw_tcp_server_t;
typedef struct hw_vllm hw_vllm_t;
typedef struct hw_rdma hw_rdma_t;
hw_tcp_server_t **hw_tcp_server_slot(hw_t *hw);
hw_vllm_t **hw_vllm_slot(hw_t *hw);
hw_rdma_t **hw_rdma_slot(hw_t *hw);
typedef struct hw_gpu hw_gpu_t;
hw_gpu_t **hw_gpu_slot(hw_t *hw);
const char *hw_segment(hw_t *hw);

/* ---- the RDMA data path (kvb_hw_rdma.c) ---------------------------------- */

/* Open params.rdma_devices (no-op when empty). */
int hw_rdma_open(hw_t *hw, kvb_err_t *err);
void hw_rdma_close(hw_t *hw);
uint32_t hw_rdma_n_devices(hw_t *hw); /* 0: no RDMA, TCP only */
uint64_t hw_rdma_endpoint_count(hw_t *hw);
const char *hw_rdma_device_name(hw_t *hw, uint32_t i);
/* Register m on every device; GPU memory picks its path per device (dma-buf,
 * peer memory, staging) and records it in m->path. */
int hw_rdma_mr_reg(hw_t *hw, hw_mr_t *m, kvb_err_t *err);
/* Host memory for local access only (the staging pool): no remote rights. */
int hw_rdma_mr_reg_local(hw_t *hw, hw_mr_t *m, kvb_err_t *err);
void hw_rdma_mr_dereg(hw_t *hw, hw_mr_t *m);
/* Turn a tcp descriptor (buffers filled) into an rdma one: devices, keys, matrix. */
void hw_rdma_describe(hw_t *hw, kvb_mc_segment_t *seg);
/* Passive type-0 handshake: the reply JSON (g_free); a refusal has reply_msg. */
char *hw_rdma_handshake(hw_t *hw, const kvb_mc_handshake_t *req);
/* This instance has RDMA and the peer published an rdma descriptor. */
bool hw_rdma_peer_usable(hw_peer_t *p);
/* m: the local registration.  A remote range behind a mirror on the chosen
 * peer device goes to hw_gpu_post_mirrored, which posts it back here with
 * to_mirror (the remote buffer's kvb_mirror_rkey) around its SYNCs. */
int hw_rdma_post(hw_peer_t *p, const kvb_slice_op_t *op, hw_mr_t *m, bool to_mirror);
void hw_rdma_peer_detach(hw_peer_t *p);
/* A kvbridge peer's control stream went down: retire the endpoints (ours
 * and the ones it connected to us) of its segment, so its queue pairs do
 * not outlive it. */
void hw_rdma_peer_gone(hw_peer_t *p);

/* ---- GPU memory (kvb_hw_gpu.c) ------------------------------------------ */

int hw_gpu_open(hw_t *hw, kvb_err_t *err);
void hw_gpu_close(hw_t *hw);
/* m (kind KVB_MEM_CUDA) is device memory of a provider: fill gpu_provider
 * and device, or say why not. */
int hw_gpu_mr_check(hw_t *hw, hw_mr_t *m, kvb_err_t *err);
/* A dma-buf fd for all of m (the caller closes it), or why there is none. */
int hw_gpu_dmabuf(hw_t *hw, const hw_mr_t *m, int *fd, char *why, size_t why_len);
/* An op whose local range is device memory on a staging NIC. */
int hw_gpu_post(hw_peer_t *p, hw_mr_t *m, const kvb_slice_op_t *op);
/* A transport completion: true when cookie was a staged piece (consumed). */
bool hw_gpu_piece_done(hw_t *hw, uint64_t cookie, int status, uint32_t nic);
/* An RDMA op whose remote range is a peer's GPU memory seen through its
 * mirror on the remote device: a WRITE is followed, a READ preceded, by a
 * SYNC on the control stream, and completes once the peer answers. */
int hw_gpu_post_mirrored(hw_peer_t *p, const kvb_slice_op_t *op, hw_mr_t *m);
/* Stream frames: a peer asks us to sync (serve), or answers our SYNC.
 * false: the frame is malformed (the stream goes down, reason in err). */
bool hw_gpu_sync_frame(hw_peer_t *p, kvb_mc_msg_type_t type, const uint8_t *payload, size_t len,
		       kvb_err_t *err);
/* p's stream is down: our syncs waiting on it fail with KVB_ERR_PEER. */
void hw_gpu_peer_down(hw_peer_t *p);
/* p is being freed: drop its state (copies it asked for are cancelled). */
void hw_gpu_peer_detach(hw_peer_t *p);

/* Asynchronous copy between pinned host memory and m's device memory; fn
 * runs later from the context with the status and, on failure, a reason. */
typedef void (*hw_gpu_copy_fn)(void *arg, int status, const char *why);
typedef struct hw_gpu_copy hw_gpu_copy_t;
hw_gpu_copy_t *hw_gpu_copy(hw_t *hw, const hw_mr_t *m, void *host, uint64_t dev_addr, size_t len,
			   bool to_device, hw_gpu_copy_fn fn, void *arg);
/* fn will not run; orphan (a hw_gpu_host_alloc buffer the copy uses, or
 * NULL) is freed when the copy is over. */
void hw_gpu_copy_cancel(hw_gpu_copy_t *c, void *orphan);
/* Wait for copies into or out of m's device (deregistration). */
void hw_gpu_quiesce(hw_t *hw, const hw_mr_t *m);
/* Pinned host memory when CUDA is there, else page-aligned. */
void *hw_gpu_host_alloc(hw_t *hw, size_t len);
void hw_gpu_host_free(hw_t *hw, void *p);

#endif /* KVB_HW_INT_H */
