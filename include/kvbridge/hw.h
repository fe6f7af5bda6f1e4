/*
 * The hw backend: real bytes between real processes.
 *
 * The control plane and a TCP data path wire-compatible with the Mooncake
 * Transfer Engine (classic TE, P2PHANDSHAKE) and with vLLM's
 * MooncakeConnector side channel (Gen 0), so that a kvbridge endpoint can
 * sit on either side of a real vLLM or Mooncake peer, and an RDMA verbs data
 * path over many NICs with Mooncake-compatible queue pairs:
 *
 *  - A handshake listener (the Mooncake "RPC port") answers Connection
 *    (type 0: RDMA queue pairs), Metadata (1, this endpoint's segment
 *    descriptor), Notify (2) and Probe (3).  kvbridge peers open a
 *    persistent control stream on the same port (type 0x10).
 *  - A Mooncake TCP transport server (the descriptor's tcp_data_port)
 *    serves READ and WRITE into registered memory, v1 and v2 (acknowledged);
 *    every range is checked against the registrations before a byte moves.
 *    Slices this endpoint posts travel the same protocol to the peer's data
 *    port, over tcp_lanes persistent connections per local NIC.
 *  - With rdma_devices, slices are one-sided RDMA WRITE/READ on RC queue
 *    pairs, striped over the devices by the core's policies.
 *  - GPU memory (KVB_MEM_CUDA): GPUDirect where a NIC reaches it, pinned
 *    staging where it does not (see kvb_hw_mr_paths below).
 *  - vLLM's MooncakeConnector control plane, one generation per instance
 *    (params.vllm_protocol):
 *      gen0 (vLLM 0.13.0 - 0.15.1): a ZMQ ROUTER on side_channel_port serves
 *        decoders' MooncakeAgentMetadata; "trans_done" / "trans_error" out.
 *      gen2 (vLLM 0.16.0 - 0.32.0, "Gen 1/2"): an HTTP bootstrap
 *        (POST /register, GET /query) served on vllm_bootstrap_port or
 *        joined at vllm_bootstrap_server, and a ZMQ ROUTER on a random port
 *        of params.host registered under the worker's dp/tp/pp ranks; it
 *        serves MooncakeXferMetadata (requests keyed by transfer_id) with a
 *        stream of MooncakeXferResponse (CONTINUE, FINISH, ERROR).
 *    Each request becomes a pull of the connector core, so leases, fencing
 *    and NIC policies are the core's; the bytes go to the decoder's Mooncake
 *    segment as one-sided writes.  A peer of the other generation gets an
 *    error in its own framing.  Consumers pull from vLLM producers through
 *    the peer addresses below.
 *
 * Peer addresses for kvb_consumer_pull / conn_connect:
 *   "host:port", "kvb://host:port"   a kvbridge peer's handshake port
 *   "vllm://host:port"               a vLLM Gen 0 producer's side channel
 *   "vllm2://host:port"              a vLLM Gen 1/2 producer worker's ROUTER
 *                                    (from the bootstrap: kvb_hw_vllm_query)
 *   "mooncake://host:port"           a Mooncake Transfer Engine (data only)
 *
 * Event loop: every socket and timer is a GSource on one GMainContext (the
 * caller's, or the instance's own).  event_poll dispatches that context
 * without blocking unless the context is already being dispatched; an
 * application running a GMainLoop on it calls kvb_connector_progress from the
 * notify callback (kvb_hw_set_notify), and a plain loop calls kvb_hw_wait.
 * One thread per instance; no threads are created.
 *
 * Environment (applied by kvb_hw_params_apply_env, Mooncake's names):
 *   MC_HANDSHAKE_MAX_LENGTH, MC_MIN_RPC_PORT, MC_MAX_RPC_PORT,
 *   MC_HANDSHAKE_CONNECT_TIMEOUT (s), MC_TCP_PROTO (1 = legacy),
 *   MC_TCP_STATUS_TIMEOUT_SEC, MC_TCP_BIND_ADDRESS, MC_TCP_LANES_PER_PEER; RDMA: MC_GID_INDEX,
 *   MC_IB_PORT, MC_MTU, MC_NUM_QP_PER_EP, MC_MAX_WR, MC_TE_FILTERS (device
 *   whitelist), MC_FORCE_TCP=1 (no RDMA), KVB_RDMA_DEVICES (the device list);
 *   GPU staging: KVB_STAGING_BYTES, KVB_STAGING_CHUNK.  kvbridge's own
 *   streams: KVB_SECRET_FILE, KVB_TLS_CERT, KVB_TLS_KEY, KVB_TLS_CA.
 */
#ifndef KVBRIDGE_HW_H
#define KVBRIDGE_HW_H

#include <stdbool.h>
#include <stdint.h>
#include <glib.h>
#include <kvbridge/backend.h>
#include <kvbridge/layout.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KVB_HW_MAX_NICS 16u
#define KVB_HW_MAX_LANES 16u

typedef struct kvb_hw_params {
	const char *host;           /* how peers reach this endpoint; the segment name is
				     * host:rpc_port.  Default "127.0.0.1". */
	const char *bind_host;      /* listen address of every listener (handshake, data,
				     * bootstrap, Gen 0 side channel); NULL or "" = host,
				     * so loopback unless host is set.  "0.0.0.0" or "::"
				     * listens on every interface, with a warning. */
	const char *allow_peers;    /* who may connect to any port, and whom this worker may
				     * dial (peer addresses come from messages and clients):
				     * "10.0.0.0/8,fd00::/8,1.2.3.4", "*" = anyone (warned).
				     * NULL = loopback and the network of host's interface.
				     * KVB_ALLOW_PEERS.  Connections from elsewhere are closed
				     * at accept (vLLM ZMQ messages dropped), dials refused. */
	const char *secret_file;    /* a file of at least 32 bytes shared by the kvbridge workers
				     * that may open control streams to each other: both sides
				     * prove they hold it (challenge-response, HMAC-SHA-256 with
				     * libsodium) before a stream carries a message; a peer
				     * without it is refused.  NULL = none (KVB_SECRET_FILE).
				     * Mooncake and vLLM peers cannot, and are not asked. */
	bool memory_open;           /* every registered byte readable and writable by allowed
				     * peers over TCP, as Mooncake's TCP transport allows.
				     * Default false: only the blocks of a pull this worker has
				     * in progress (until it ends) and kvb_hw_expose'd ranges.
				     * KVB_OPEN_MEMORY=1 (also opens RDMA registrations). */
	bool window_any_peer;       /* TCP: any allowed peer may write into the blocks of a
				     * pull in progress, not only the one it went to (a
				     * producer whose data connections come from another
				     * address than the one the pull reached).
				     * KVB_WINDOW_ANY_PEER=1. */
	bool rdma_buffer_keys;      /* RDMA: register host memory with remote access and
				     * publish its keys in the descriptor, as Mooncake does,
				     * for peers that write with them: vLLM producers over
				     * RDMA (their side channels carry no per-pull keys).
				     * Default false: host memory is closed to remote access,
				     * and each pull a kvbridge stream carries opens its own
				     * keys for its blocks (docs/security.md).
				     * KVB_RDMA_BUFFER_KEYS=1. */
	uint16_t rpc_port;          /* handshake port; 0 = random free port in
				     * [rpc_port_min, rpc_port_max], as Mooncake P2P */
	uint16_t data_port;         /* TCP transport port; 0 = random in the same range */
	uint16_t rpc_port_min, rpc_port_max; /* default 15000, 17000 */
	uint32_t n_nics;            /* TCP "NICs": one data connection per peer each;
				     * default 1 */
	const char *nic_addrs[KVB_HW_MAX_NICS]; /* local source address per NIC; NULL or ""
				     * = any */
	uint64_t nic_bandwidth_bps; /* reported by nic_query; default 0 (unknown) */
	uint32_t handshake_max;     /* largest handshake frame; default 1 MiB */
	uint32_t tcp_proto_version; /* 2 (acknowledged, default) or 1 */
	uint64_t connect_timeout_ns;/* handshake and data connects; default 5 s */
	uint64_t status_timeout_ns; /* wait for a v2 status frame; default 30 s */
	uint32_t lane_depth;        /* ops queued per data connection; default 4096 */
	uint32_t tcp_lanes;         /* TCP data connections per peer per NIC, each op on
				     * the least loaded; default 4 (MC_TCP_LANES_PER_PEER,
				     * Mooncake's default pool) */
	uint16_t side_channel_port; /* vLLM Gen 0 ROUTER port; 0 = none */
	const char *side_channel_host; /* bind address for it; default bind_host */
	GMainContext *context;      /* NULL = a context of the instance's own */
	/* Warnings about peers (a vLLM request answered trans_error and why, a
	 * connection dropped): one line each, without a newline.  NULL = silent
	 * (KVB_HW_DEBUG=1 prints them and more on stderr). */
	void (*warn_fn)(void *arg, const char *line);
	void *warn_arg;
	/* RDMA (libibverbs).  rdma_devices: comma list of device names ("mlx5_0,
	 * mlx5_1", "rxe0,rxe1"), "auto" = every device with an ACTIVE port, NULL
	 * or "" = TCP only.  With devices, they are the NICs (n_nics and
	 * nic_addrs are ignored) and the descriptor says protocol "rdma". */
	const char *rdma_devices;
	uint8_t ib_port;            /* MC_IB_PORT; default 1 */
	int32_t gid_index;          /* MC_GID_INDEX; -1 = auto (RoCE v2 IPv4 first) */
	uint32_t mtu;               /* MC_MTU: 512..4096; path MTU = min(active, this) */
	uint32_t qp_per_ep;         /* MC_NUM_QP_PER_EP; default 2, must equal the peer's */
	uint32_t max_wr;            /* MC_MAX_WR: WRs in flight per QP; default 256 */
	uint64_t rdma_stall_timeout_ns; /* MC_SLICE_TIMEOUT (s): an endpoint with work posted
				     * and no completion this long is rebuilt and its slices
				     * fail over; default 10 s, 0 = never */
	uint64_t rdma_peer_probe_ns;/* KVB_RDMA_PEER_PROBE (s): how often the handshake port of
				     * a peer that opened endpoints to us is probed (type 3);
				     * two failed probes in a row retire its endpoints (a
				     * Mooncake peer keeps no stream that would say it died).
				     * Default 30 s, 0 = never */
	/* GPU memory through NICs that cannot reach it (and TCP): pinned host
	 * bounce chunks.  KVB_STAGING_BYTES, KVB_STAGING_CHUNK. */
	uint64_t staging_bytes;     /* pool size; default 64 MiB */
	uint64_t staging_chunk;     /* bytes per chunk (and per staged piece); default 4 MiB */
	/* vLLM's control plane (appended; see the top of this file) */
	uint32_t vllm_protocol;     /* kvb_hw_vllm_protocol_t; KVB_HW_VLLM_AUTO: gen0 when
				     * side_channel_port is set, else none */
	uint16_t vllm_bootstrap_port; /* gen2: serve the HTTP bootstrap on bind_host:this
				     * (VLLM_MOONCAKE_BOOTSTRAP_PORT; vLLM's TP 0 / PP 0
				     * worker does); 0 = do not serve */
	const char *vllm_bootstrap_server; /* gen2, not serving: "host:port" of the bootstrap
				     * this worker registers into (vLLM's
				     * bootstrap_server_address).  A worker that neither
				     * serves a bootstrap nor names one registers nowhere
				     * (a consumer) */
	uint16_t vllm_bootstrap_default_port; /* default 8998 */
	const char *vllm_release;   /* the vLLM release of the peers ("0.32.0"): how a
				     * consumer encodes its requests; default 0.32.0 */
	uint64_t vllm_connector_timeout_ns; /* VLLM_MOONCAKE_CONNECTOR_TIMEOUT: bootstrap
				     * register and query; default 30 s */
	uint64_t vllm_abort_timeout_ns; /* VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT: a consumer
				     * waits this + 60 s for a producer's reply; default
				     * 480 s */
	/* TLS 1.2+ (GnuTLS) on kvbridge's own control streams (appended); PEM
	 * files, read at open.  NULL = off, the default (KVB_TLS_CERT,
	 * KVB_TLS_KEY, KVB_TLS_CA).  Mooncake and vLLM peers are never asked
	 * for it: their handshake frames, side channels and bootstrap stay
	 * plaintext, as they speak them. */
	const char *tls_ca;         /* streams this worker opens start TLS and check the
				     * peer's certificate against these CAs and the host of
				     * the kvb:// address (name or IP in subjectAltName) */
	const char *tls_cert;       /* with tls_key: this worker's certificate chain; streams
				     * opened to it must start TLS (a plaintext hello is
				     * refused) */
	const char *tls_key;
} kvb_hw_params_t;

/* Which generation of vLLM's MooncakeConnector side channel an instance
 * speaks. */
typedef enum kvb_hw_vllm_protocol {
	KVB_HW_VLLM_AUTO = 0,       /* gen0 when side_channel_port is set, else none */
	KVB_HW_VLLM_NONE = 1,
	KVB_HW_VLLM_GEN0 = 2,       /* vLLM 0.13.0 - 0.15.1 */
	KVB_HW_VLLM_GEN2 = 3,       /* vLLM 0.16.0 - 0.32.0 (Gen 1/2) */
} kvb_hw_vllm_protocol_t;

/* "gen0", "gen2", "none"; NULL for values out of range. */
KVB_API const char *kvb_hw_vllm_protocol_name(kvb_hw_vllm_protocol_t p);
/* "gen0", "gen1" and "gen2" (the same wire), "none".  KVB_ERR_INVALID
 * otherwise. */
KVB_API int kvb_hw_vllm_protocol_parse(const char *name, kvb_hw_vllm_protocol_t *p);

/* Arguments of kvb_backend_open(kvb_hw_backend_ops(), &args, ...). */
typedef struct kvb_hw_args {
	const kvb_hw_params_t *params; /* NULL = defaults */
} kvb_hw_args_t;

KVB_API const kvb_backend_ops_t *kvb_hw_backend_ops(void);

KVB_API void kvb_hw_params_default(kvb_hw_params_t *params);

/* Apply Mooncake's MC_* variables from envp (NULL: the process environment).
 * KVB_ERR_CONFIG naming the variable when a value is unparsable or out of range. */
KVB_API int kvb_hw_params_apply_env(kvb_hw_params_t *params, char **envp, kvb_err_t *err);

/* Convenience: open an instance (listeners bound before it returns). */
KVB_API int kvb_hw_open(const kvb_hw_params_t *params, kvb_backend_t **out, kvb_err_t *err);

KVB_API GMainContext *kvb_hw_context(kvb_backend_t *be);

/* "host:rpc_port": the segment name Mooncake peers and vLLM decoders use. */
KVB_API const char *kvb_hw_segment_name(kvb_backend_t *be);
KVB_API uint16_t kvb_hw_rpc_port(kvb_backend_t *be);
/* The address the listeners are bound to (params.bind_host, else host). */
KVB_API const char *kvb_hw_bind_host(kvb_backend_t *be);
/* Make [addr, addr + len) of registered memory readable and writable by
 * allowed peers for good (a benchmark target, a buffer shared on purpose);
 * without it only the blocks of pulls in progress are (params.memory_open).
 * Over RDMA a key covers a whole registration: the one holding the range is
 * opened to remote access, all of it, and its keys published. */
KVB_API int kvb_hw_expose(kvb_backend_t *be, const void *addr, size_t len);
/* The allowed peers (params.allow_peers) as "net/bits,net/bits". */
KVB_API void kvb_hw_allowed_peers(kvb_backend_t *be, char *out, size_t len);
/* Whether host (an address or a name; every address it resolves to) is
 * among them; why says otherwise. */
KVB_API bool kvb_hw_peer_allowed(kvb_backend_t *be, const char *host, char *why, size_t why_len);
KVB_API uint16_t kvb_hw_data_port(kvb_backend_t *be);
KVB_API uint16_t kvb_hw_side_channel_port(kvb_backend_t *be);

/* The KV layout vLLM Gen 0 decoders share with this producer (Gen 0 sends
 * only base addresses: strides, block sizes, layers and groups are assumed
 * equal on both sides).  Needed before the side channel can serve; regions
 * are copied. */
KVB_API int kvb_hw_set_vllm_layout(kvb_backend_t *be, const kvb_region_t *regions, uint32_t n,
				   uint32_t tp_size, uint32_t tp_rank, kvb_err_t *err);

/* The KV layout and identity vLLM peers see (either generation).  Gen 1/2
 * pairs regions by layer name (and occurrence: two regions of one layer
 * are its K and V), so each region has one; with gen2, setting the layout
 * also registers this worker's ROUTER at the bootstrap it serves or names
 * (engine_id, ranks). */
typedef struct kvb_hw_vllm_layout {
	const kvb_region_t *regions;
	uint32_t n_regions;
	const char *const *layer_names; /* one per region; NULL = vLLM's
					 * "model.layers.<layer>.self_attn.attn" */
	uint32_t tp_size, tp_rank;
	uint32_t pp_size, pp_rank;      /* 0 = 1, 0 */
	uint32_t dp_rank;
	const char *engine_id;          /* gen2; NULL = "kvbridge" */
} kvb_hw_vllm_layout_t;

/* Copied.  KVB_ERR_STATE when the instance speaks no vLLM protocol. */
KVB_API int kvb_hw_vllm_set_layout(kvb_backend_t *be, const kvb_hw_vllm_layout_t *layout,
				   kvb_err_t *err);

/* gen2: "tcp://host:port", where this worker's ROUTER listens ("" before). */
KVB_API const char *kvb_hw_vllm_worker_addr(kvb_backend_t *be);
/* gen2: the bootstrap port this instance serves (0: none). */
KVB_API uint16_t kvb_hw_vllm_bootstrap_port(kvb_backend_t *be);

/* A vLLM engine as a bootstrap's /query describes it (gen2, consumer side). */
typedef struct kvb_hw_vllm_engine {
	const char *engine_id;
	uint32_t dp_rank;
	uint32_t tp_size;               /* producer TP size (vLLM: len(worker_addr)) */
	uint32_t pp_size;
	/* "vllm2://host:port" of worker (tp, pp) at [tp * pp_size + pp], for
	 * kvb_pull_params_t.producers */
	const char *const *workers;
} kvb_hw_vllm_engine_t;

/* Called once, from the context's dispatch, with the engine (borrowed for
 * the call) or an error and its reason. */
typedef void (*kvb_hw_vllm_query_fn)(void *user, int status, const char *why,
				     const kvb_hw_vllm_engine_t *engine);

/* Find engine_id at the bootstrap bootstrap_addr ("http://host:port", as
 * vLLM's router puts it in remote_bootstrap_addr).  Answers come from a
 * cache of every engine a /query returned; unlike vLLM, an entry is dropped
 * (and the next call asks again) when a pull through one of its workers
 * fails to connect or loses its connection, so a producer that restarted
 * on new ports is found again.  Concurrent calls for one address share one
 * query.  Returns KVB_OK (fn will run) or an error at once. */
KVB_API int kvb_hw_vllm_query(kvb_backend_t *be, const char *bootstrap_addr, const char *engine_id,
			      kvb_hw_vllm_query_fn fn, void *user, kvb_err_t *err);

/* Called (from inside the context's dispatch) whenever an event becomes
 * ready for event_poll; the callee typically schedules
 * kvb_connector_progress.  NULL clears it. */
KVB_API void kvb_hw_set_notify(kvb_backend_t *be, void (*fn)(void *user), void *user);

/* Dispatch the context until an event is ready or timeout_ns passes (0 =
 * poll once without blocking).  Returns true when events are ready. */
KVB_API bool kvb_hw_wait(kvb_backend_t *be, uint64_t timeout_ns);

/* Buffer i of the segment descriptor a connected peer published (its
 * registered memory: where slices to it may go).  KVB_ERR_NOT_FOUND when
 * the peer has no such buffer or its descriptor is not known yet. */
KVB_API int kvb_hw_peer_buffer(kvb_backend_t *be, kvb_conn_t *conn, uint32_t i, uint64_t *addr,
			       uint64_t *len);

/* A slice op's remote_key that names an RDMA remote key itself, for one-
 * sided users that got one out of band: the op is posted with rkey on every
 * peer device instead of a window's or the descriptor's.  (Without it the
 * hw backend ignores remote_key.)  kvbridge-bench --rkey uses it to show
 * that a forged or stale key reaches nothing. */
KVB_API void kvb_hw_rkey_explicit(kvb_rkey_t *key, uint32_t rkey);

/* Counters of the wire protocols, for logs and tests. */
typedef struct kvb_hw_stats {
	uint64_t handshakes_served;     /* Mooncake frames answered (types 0-3) */
	uint64_t handshake_errors;      /* frames refused (bad length, type, JSON) */
	uint64_t streams_opened;        /* kvbridge control streams */
	uint64_t tcp_requests_served;   /* TCP transport requests applied */
	uint64_t tcp_requests_rejected; /* ranges outside registered memory, bad headers */
	uint64_t tcp_bytes_in, tcp_bytes_out;      /* served (into / out of our memory) */
	uint64_t tcp_bytes_posted;      /* our own posts, completed */
	uint64_t rdma_bytes_posted;     /* our own RDMA posts, completed */
	uint64_t rdma_endpoints;        /* live RDMA endpoints (queue pair sets), both directions */
	uint64_t nic_bytes[KVB_HW_MAX_NICS]; /* our posts per local NIC */
	uint64_t vllm_messages;         /* side-channel messages received */
	uint64_t vllm_errors;           /* answered trans_error (gen0) or ERROR / err_reqs (gen2) */
	uint64_t fenced_writes;         /* writes refused into fenced (cancelled) ranges */
	uint64_t gpu_copies;            /* host <-> device copies of the staging path */
	uint64_t gpu_staged_bytes;      /* bytes those copies moved */
	uint64_t gpu_syncs_requested;   /* SYNCs we sent for a peer's mirrored GPU memory */
	uint64_t gpu_syncs_served;      /* SYNCs peers sent us (mirror <-> GPU copies) */
	uint64_t vllm_replies;          /* gen2 MooncakeXferResponse frames sent */
	uint64_t vllm_wrong_generation; /* peers of the other generation, answered in theirs */
	uint64_t vllm_bootstrap_requests; /* HTTP requests the bootstrap served */
	uint64_t vllm_queries;          /* /query requests this consumer made */
	uint64_t vllm_dealers;          /* gen2 consumer: DEALER connections opened */
	uint64_t vllm_dealers_reused;   /* gen2 consumer: pulls sent on a kept DEALER */
	uint64_t vllm_descriptors_reused; /* gen2 producer: messages served on a decoder's kept
					 * descriptor and data connections */
	uint64_t vllm_batched_pulls;    /* gen2 consumer: pulls sent in a message with others */
	uint64_t warnings_suppressed;   /* warnings not logged (rate limit), counted */
	uint64_t peers_refused;         /* connections, messages and dials outside allow_peers */
	uint64_t window_refused;        /* TCP reads and writes outside every open window */
	uint64_t auth_failures;         /* control streams refused: no or wrong shared secret */
	uint64_t rdma_windows_open;     /* consumer: pulls whose blocks have live RDMA window keys */
	uint64_t rdma_window_registrations; /* consumer: window registrations made (per range, device) */
	uint64_t rdma_window_posts;     /* producer: RDMA ops posted with a peer's window key */
	uint64_t rdma_window_reg_ns;    /* consumer: time spent registering windows (their cost) */
	uint64_t tls_streams;           /* control streams that completed a TLS handshake */
	uint64_t tls_failures;          /* control streams refused: TLS handshake failed, or one
					 * side wanted TLS and the other did not */
} kvb_hw_stats_t;

KVB_API void kvb_hw_stats_get(kvb_backend_t *be, kvb_hw_stats_t *out);

/* ---- GPU memory ----------------------------------------------------------
 * Regions of kind KVB_MEM_CUDA (built --with-cuda: cudaMalloc'd memory) are
 * registered, per NIC, for GPUDirect RDMA when the NIC can reach GPU memory
 * (a dma-buf from the CUDA driver, else peer memory as nvidia-peermem
 * provides), and otherwise go through pinned host staging chunks: device ->
 * chunk -> NIC on the sending side, NIC -> chunk -> device on the
 * receiving side.  TCP always stages.  The choice is made when the memory
 * is registered; kvb_hw_mr_paths reports it. */
typedef enum kvb_hw_gpu_path {
	KVB_HW_PATH_HOST = 0,      /* host memory: no GPU involved */
	KVB_HW_PATH_DMABUF = 1,    /* ibv_reg_dmabuf_mr */
	KVB_HW_PATH_PEERMEM = 2,   /* ibv_reg_mr on device memory (peer memory client) */
	KVB_HW_PATH_STAGING = 3,   /* pinned host bounce chunks */
} kvb_hw_gpu_path_t;

KVB_API const char *kvb_hw_gpu_path_name(kvb_hw_gpu_path_t path);

/* The path of each NIC (0 .. *n - 1, at most max written) for the
 * registration holding addr.  KVB_ERR_NOT_FOUND when addr is not registered. */
KVB_API int kvb_hw_mr_paths(kvb_backend_t *be, const void *addr, kvb_hw_gpu_path_t *paths,
			    uint32_t max, uint32_t *n);

/* Emulated device memory, for tests on machines without a GPU: register it
 * with kind KVB_MEM_CUDA and it takes the staging path.  The pointer itself
 * is not accessible (PROT_NONE: a transport touching it faults); read and
 * fill it with kvb_hw_emu_gpu_copy, which takes emulated or host pointers
 * on either side.  NULL when len is 0 or memory is short. */
KVB_API void *kvb_hw_emu_gpu_alloc(size_t len);
KVB_API void kvb_hw_emu_gpu_free(void *dev);
KVB_API int kvb_hw_emu_gpu_copy(void *dst, const void *src, size_t len);

#ifdef __cplusplus
}
#endif
#endif /* KVBRIDGE_HW_H */
