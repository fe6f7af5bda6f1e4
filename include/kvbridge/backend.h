/*
 * The backend vtable: everything the connector core needs from the world.
 *
 * The core never reads a clock, sleeps, spawns a thread or touches a socket:
 * time, timers, randomness, memory registration, connections, data movement
 * and control messages are all backend operations (SQLite's VFS owns
 * xCurrentTime and xRandomness the same way).  That is what lets the same
 * core run over real NICs (hw), inside SimGrid (sim), in-process (loop), or
 * wrapped by a fault injector (fault).
 *
 * Rules every op follows (NCCL net plugin, UCX):
 *  - No op blocks.  Long operations return KVB_INPROGRESS and report their
 *    end as an event from event_poll.
 *  - KVB_ERR_NO_RESOURCE means "queue full": the core parks the work and
 *    retries after the next event.
 *  - Raw causes (errno, ibv_wc_status, cudaError_t) stay in the backend;
 *    last_error describes the most recent failure in words.
 *  - Ops are called from one thread at a time per backend instance.
 *
 * Versioning (SQLite iVersion, libfabric FI_CHECK_OP): ops tables start with
 * abi and size; new ops are only appended.  kvb_backend_open() copies the
 * table and fills absent slots (NULL, or beyond size) with stubs that return
 * KVB_ERR_UNSUPPORTED, so the hot path never tests for NULL.
 *
 * Memory: the core allocates each backend instance and connection with the
 * sizes the ops declare (instance_size, conn_size); the backend keeps its
 * state in the `priv` area.  A failed open leaves nothing to close.
 */
#ifndef KVBRIDGE_BACKEND_H
#define KVBRIDGE_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <kvbridge/error.h>
#include <kvbridge/layout.h>
#include <kvbridge/policy.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ABI 1: the first published table.  A backend built for ABI n works with
 * a core of ABI >= n. */
#define KVB_BACKEND_ABI 1u

typedef struct kvb_backend kvb_backend_t;
typedef struct kvb_conn kvb_conn_t;
typedef struct kvb_backend_ops kvb_backend_ops_t;

/* A backend instance: one endpoint (one worker process, one simulated host,
 * one loop endpoint). */
struct kvb_backend {
	kvb_backend_ops_t *ops;  /* complete table (stubs filled in) */
	void *user;              /* owner's pointer; the core stores its connector here */
	_Alignas(16) unsigned char priv[]; /* ops->instance_size bytes for the backend */
};

/* A connection to one peer endpoint, for control messages and data. */
struct kvb_conn {
	kvb_backend_t *backend;
	void *user;              /* owner's pointer; the core stores its peer record here */
	_Alignas(16) unsigned char priv[]; /* ops->conn_size bytes for the backend */
};

/* Remote key: what a peer needs to write into or read from a registered
 * region (an rkey per NIC on RDMA, a buffer id in loop).  Opaque to the core,
 * carried in control messages as bytes. */
#define KVB_RKEY_MAX 256u
typedef struct kvb_rkey {
	uint32_t len;
	uint8_t bytes[KVB_RKEY_MAX];
} kvb_rkey_t;

/* What the core registers. */
typedef struct kvb_mem_attr {
	kvb_mem_kind_t kind;
	int32_t device;          /* GPU ordinal or NUMA node, -1 unknown */
} kvb_mem_attr_t;

/* A NIC as the backend sees it. */
typedef struct kvb_nic_info {
	char name[KVB_NIC_NAME_MAX]; /* e.g. "mlx5_0", "rxe1", "loop0" */
	uint64_t bandwidth_bps;      /* nominal line rate in bit/s, 0 unknown */
	int32_t numa_node;           /* -1 unknown */
} kvb_nic_info_t;

typedef enum kvb_xfer_opcode {
	KVB_XFER_WRITE = 1, /* local -> remote */
	KVB_XFER_READ = 2,  /* remote -> local */
} kvb_xfer_opcode_t;

/* One post: n_slices consecutive slices of one copy on one NIC pair.  The
 * local range [local_addr, local_addr + len) goes to [remote_addr, ...):
 * slices 0 .. n_slices - 2 are slice_len bytes each and the last one is the
 * rest (the core's slicing; a verbs backend posts one work request per
 * slice, a simulator may model the op as one flow).  One completion per op.
 * Ops of one stream on one (local, remote) NIC pair are served in order, as
 * work requests on one queue pair are; distinct streams share the NICs
 * fairly.  The array holding ops is borrowed for the call only; the local
 * buffer stays registered until its completion is reported. */
typedef struct kvb_slice_op {
	kvb_xfer_opcode_t opcode;
	uint32_t local_nic;      /* index < nic_count */
	uint32_t remote_nic;     /* peer NIC index (its own numbering) */
	uint64_t local_addr;
	void *local_mr;          /* from mr_reg */
	uint64_t remote_addr;
	const kvb_rkey_t *remote_key; /* borrowed until completion */
	uint64_t len;            /* bytes of the whole op */
	uint64_t cookie;         /* returned in the completion */
	uint32_t n_slices;       /* >= 1 */
	uint64_t slice_len;      /* bytes of every slice but the last; (n_slices - 1) * slice_len < len */
	uint64_t stream;         /* ordering and fairness unit (the core: one per transfer) */
} kvb_slice_op_t;

typedef enum kvb_event_type {
	KVB_EV_XFER_DONE = 1,     /* a posted slice finished: cookie, status */
	KVB_EV_MSG = 2,           /* control message: conn, data, len */
	KVB_EV_TIMER = 3,         /* armed timer fired: cookie */
	KVB_EV_CONN_UP = 4,       /* outbound conn_connect finished: conn */
	KVB_EV_CONN_DOWN = 5,     /* connect failed or peer went away: conn, status */
	KVB_EV_CONN_INCOMING = 6, /* a peer connected: incoming_id for conn_accept */
} kvb_event_type_t;

typedef struct kvb_event {
	kvb_event_type_t type;
	int status;              /* KVB_OK or the failure (XFER_DONE, CONN_DOWN) */
	kvb_conn_t *conn;        /* MSG, CONN_UP, CONN_DOWN */
	uint64_t cookie;         /* XFER_DONE, TIMER */
	uint64_t incoming_id;    /* CONN_INCOMING */
	const void *data;        /* MSG: valid until the next event_poll call */
	size_t len;              /* MSG */
	uint32_t nic;            /* XFER_DONE: local NIC the slice used */
} kvb_event_t;

/* Cookies with this bit set are reserved for wrapping backends (fault),
 * which arm timers of their own through the wrapped backend. */
#define KVB_COOKIE_RESERVED (UINT64_C(1) << 63)

/* Largest control message the core sends; backends must carry at least this. */
#define KVB_MSG_MAX (16u * 1024u * 1024u)

struct kvb_backend_ops {
	uint32_t abi;            /* KVB_BACKEND_ABI the backend was built against */
	uint32_t size;           /* sizeof(kvb_backend_ops_t) at build time */
	const char *name;        /* "loop", "fault", "hw", "sim" */
	size_t instance_size;    /* bytes of kvb_backend_t.priv */
	size_t conn_size;        /* bytes of kvb_conn_t.priv */

	/* Lifecycle.  instance_open initializes be->priv from args (backend
	 * specific, documented in the backend's header).  On failure it releases
	 * whatever it took; instance_close is then not called.  instance_close
	 * must complete or discard every outstanding operation: no event is
	 * delivered after it. */
	int (*instance_open)(kvb_backend_t *be, const void *args, kvb_err_t *err);
	void (*instance_close)(kvb_backend_t *be);

	/* Environment.  clock_now_ns is monotonic (virtual in loop and sim).
	 * timer_arm schedules one KVB_EV_TIMER carrying cookie at or after
	 * deadline_ns and returns an id for timer_cancel.  A cancelled timer may
	 * still be delivered if it was already due, and cancelling a timer that
	 * already fired may return KVB_ERR_NOT_FOUND; the core tolerates both.
	 * random_fill writes len random bytes (seeded in loop and sim). */
	uint64_t (*clock_now_ns)(kvb_backend_t *be);
	int (*timer_arm)(kvb_backend_t *be, uint64_t deadline_ns, uint64_t cookie,
			 uint64_t *timer_id);
	int (*timer_cancel)(kvb_backend_t *be, uint64_t timer_id);
	int (*random_fill)(kvb_backend_t *be, void *buf, size_t len);

	/* NICs: indices 0 .. nic_count - 1. */
	uint32_t (*nic_count)(kvb_backend_t *be);
	int (*nic_query)(kvb_backend_t *be, uint32_t index, kvb_nic_info_t *info);

	/* Memory registration.  mr_reg registers [addr, addr + len) on every
	 * NIC, returns a handle for posts and fills the remote key a peer needs.
	 * The memory must stay valid until mr_dereg.  mr_dereg must not be
	 * called while a posted slice uses the region. */
	int (*mr_reg)(kvb_backend_t *be, void *addr, size_t len, const kvb_mem_attr_t *attr,
		      void **mr, kvb_rkey_t *rkey);
	int (*mr_dereg)(kvb_backend_t *be, void *mr);

	/* Connections.  conn_connect starts connecting conn (allocated by the core
	 * with conn_size bytes of priv) to a peer address and returns
	 * KVB_INPROGRESS; the end is KVB_EV_CONN_UP or KVB_EV_CONN_DOWN.  A peer's
	 * connection shows up as KVB_EV_CONN_INCOMING; the core allocates a conn
	 * and calls conn_accept with the event's incoming_id (immediately, in the
	 * same poll round).  The core calls conn_close exactly once for every
	 * conn it connected or accepted, also after KVB_EV_CONN_DOWN, and only
	 * once every slice posted on it has completed; it frees the conn right
	 * after.  conn_close starts an orderly close (the peer sees
	 * KVB_EV_CONN_DOWN) and no later event names the conn. */
	int (*conn_connect)(kvb_backend_t *be, kvb_conn_t *conn, const char *peer_address);
	int (*conn_accept)(kvb_backend_t *be, kvb_conn_t *conn, uint64_t incoming_id);
	void (*conn_close)(kvb_backend_t *be, kvb_conn_t *conn);

	/* Data path.  Post up to n slices on conn; *n_posted receives how many
	 * were accepted (a prefix).  Returns KVB_OK when all were taken,
	 * KVB_ERR_NO_RESOURCE when a queue filled (retry the rest later), or
	 * another error for the slice at index *n_posted (not posted, no
	 * completion will come).  Every accepted slice produces exactly one
	 * KVB_EV_XFER_DONE, also when the connection fails.  Its status says whom
	 * to blame: KVB_ERR_TRANSPORT for a NIC or path failure (the core retries
	 * on another NIC and counts it against the local NIC), KVB_ERR_PEER when
	 * the peer or the connection is gone (no retry), KVB_ERR_RANGE when the
	 * remote address or key was refused (no retry).  The event's conn is
	 * not set for XFER_DONE.
	 *
	 * Wrapping backends (fault) pass the core's conn objects to the wrapped
	 * backend: the core allocates conns with the outermost backend's
	 * conn_size, which must cover the wrapped one's, and a backend must not
	 * read conn->backend. */
	int (*xfer_post)(kvb_backend_t *be, kvb_conn_t *conn, const kvb_slice_op_t *ops,
			 size_t n, size_t *n_posted);

	/* Control messages: ordered, reliable while the conn is up, at most
	 * KVB_MSG_MAX bytes, copied before return.  KVB_ERR_PEER when the conn
	 * is down. */
	int (*msg_send)(kvb_backend_t *be, kvb_conn_t *conn, const void *buf, size_t len);

	/* Progress: return up to max ready events (0 when none).  Never waits. */
	int (*event_poll)(kvb_backend_t *be, kvb_event_t *events, int max);

	/* Words for the most recent failure (never NULL; "" when none). */
	const char *(*last_error)(kvb_backend_t *be);

	/* Named extensions (libfabric ops_open): a backend-specific ops table,
	 * e.g. "cuda", "loop", "fault".  KVB_ERR_NOT_FOUND when unknown. */
	int (*ext_get)(kvb_backend_t *be, const char *name, const void **ext);
};

/* ---- registry and instances (implemented by the core) ------------------ */

/* Add a backend to the process-wide registry (explicit, like
 * sqlite3_vfs_register; call at start-up).  KVB_ERR_ABI for an abi newer than
 * this core or a size too small to hold the mandatory ops. */
KVB_API int kvb_backend_register(const kvb_backend_ops_t *ops);
KVB_API const kvb_backend_ops_t *kvb_backend_find(const char *name);

/* Open an instance of a backend: checks abi and size, copies the table with
 * stubs filled in, allocates instance_size bytes and calls instance_open. */
KVB_API int kvb_backend_open(const kvb_backend_ops_t *ops, const void *args,
			     kvb_backend_t **out, kvb_err_t *err);
KVB_API void kvb_backend_close(kvb_backend_t *be);

/* Allocate and free a connection object sized for the backend (no I/O). */
KVB_API kvb_conn_t *kvb_conn_alloc(kvb_backend_t *be);
KVB_API void kvb_conn_free(kvb_conn_t *conn);

/* True when the backend's table has a real (non-stub) implementation of op,
 * e.g. kvb_backend_has(be, offsetof(kvb_backend_ops_t, ext_get)). */
KVB_API bool kvb_backend_has(const kvb_backend_t *be, size_t op_offset);

#ifdef __cplusplus
}
#endif
#endif /* KVBRIDGE_BACKEND_H */
