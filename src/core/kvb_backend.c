/*
 * Backend registry and instances.
 *
 * kvb_backend_open() checks a backend's abi and size, copies its ops into the
 * instance with every absent slot (NULL, or past the backend's size) filled
 * by a stub that returns KVB_ERR_UNSUPPORTED (rdma-core's dummy_ops), and
 * allocates the instance with the private size the backend declared.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/backend.h>

#define KVB_BACKEND_REGISTRY_MAX 16

static const kvb_backend_ops_t *backend_registry[KVB_BACKEND_REGISTRY_MAX];
static unsigned backend_registry_len;

/* ---- stubs ---- */

static void stub_instance_close(kvb_backend_t *be) { (void)be; }
static uint64_t stub_clock_now_ns(kvb_backend_t *be) { (void)be; return 0; }
static int stub_timer_arm(kvb_backend_t *be, uint64_t deadline_ns, uint64_t cookie, uint64_t *id)
{
	(void)be; (void)deadline_ns; (void)cookie; (void)id;
	return KVB_ERR_UNSUPPORTED;
}
static int stub_timer_cancel(kvb_backend_t *be, uint64_t id) { (void)be; (void)id; return KVB_ERR_UNSUPPORTED; }
static int stub_random_fill(kvb_backend_t *be, void *buf, size_t len)
{
	(void)be; (void)buf; (void)len;
	return KVB_ERR_UNSUPPORTED;
}
static uint32_t stub_nic_count(kvb_backend_t *be) { (void)be; return 0; }
static int stub_nic_query(kvb_backend_t *be, uint32_t index, kvb_nic_info_t *info)
{
	(void)be; (void)index; (void)info;
	return KVB_ERR_UNSUPPORTED;
}
static int stub_mr_reg(kvb_backend_t *be, void *addr, size_t len, const kvb_mem_attr_t *attr,
		       void **mr, kvb_rkey_t *rkey)
{
	(void)be; (void)addr; (void)len; (void)attr; (void)mr; (void)rkey;
	return KVB_ERR_UNSUPPORTED;
}
static int stub_mr_dereg(kvb_backend_t *be, void *mr) { (void)be; (void)mr; return KVB_ERR_UNSUPPORTED; }
static int stub_conn_connect(kvb_backend_t *be, kvb_conn_t *conn, const char *addr)
{
	(void)be; (void)conn; (void)addr;
	return KVB_ERR_UNSUPPORTED;
}
static int stub_conn_accept(kvb_backend_t *be, kvb_conn_t *conn, uint64_t id)
{
	(void)be; (void)conn; (void)id;
	return KVB_ERR_UNSUPPORTED;
}
static void stub_conn_close(kvb_backend_t *be, kvb_conn_t *conn) { (void)be; (void)conn; }
static int stub_xfer_post(kvb_backend_t *be, kvb_conn_t *conn, const kvb_slice_op_t *ops,
			  size_t n, size_t *n_posted)
{
	(void)be; (void)conn; (void)ops; (void)n;
	if (n_posted)
		*n_posted = 0;
	return KVB_ERR_UNSUPPORTED;
}
static int stub_msg_send(kvb_backend_t *be, kvb_conn_t *conn, const void *buf, size_t len)
{
	(void)be; (void)conn; (void)buf; (void)len;
	return KVB_ERR_UNSUPPORTED;
}
static int stub_event_poll(kvb_backend_t *be, kvb_event_t *events, int max)
{
	(void)be; (void)events; (void)max;
	return 0;
}
static const char *stub_last_error(kvb_backend_t *be) { (void)be; return ""; }
static int stub_ext_get(kvb_backend_t *be, const char *name, const void **ext)
{
	(void)be; (void)name; (void)ext;
	return KVB_ERR_NOT_FOUND;
}

static const kvb_backend_ops_t stub_ops = {
	.abi = KVB_BACKEND_ABI,
	.size = sizeof(kvb_backend_ops_t),
	.name = "stub",
	.instance_close = stub_instance_close,
	.clock_now_ns = stub_clock_now_ns,
	.timer_arm = stub_timer_arm,
	.timer_cancel = stub_timer_cancel,
	.random_fill = stub_random_fill,
	.nic_count = stub_nic_count,
	.nic_query = stub_nic_query,
	.mr_reg = stub_mr_reg,
	.mr_dereg = stub_mr_dereg,
	.conn_connect = stub_conn_connect,
	.conn_accept = stub_conn_accept,
	.conn_close = stub_conn_close,
	.xfer_post = stub_xfer_post,
	.msg_send = stub_msg_send,
	.event_poll = stub_event_poll,
	.last_error = stub_last_error,
	.ext_get = stub_ext_get,
};

/* The op slots, by offset, that a backend must provide itself. */
static const size_t mandatory_ops[] = {
	offsetof(kvb_backend_ops_t, instance_open),
	offsetof(kvb_backend_ops_t, clock_now_ns),
	offsetof(kvb_backend_ops_t, timer_arm),
	offsetof(kvb_backend_ops_t, event_poll),
};

typedef void (*op_fn)(void);

static op_fn ops_slot(const kvb_backend_ops_t *ops, size_t offset)
{
	op_fn fn;
	memcpy(&fn, (const char *)ops + offset, sizeof(fn));
	return fn;
}

/* First offset of the function-pointer slots. */
#define OPS_FIRST_SLOT offsetof(kvb_backend_ops_t, instance_open)

static int ops_check(const kvb_backend_ops_t *ops, kvb_err_t *err)
{
	if (!ops || !ops->name)
		return kvb_err_set(err, KVB_ERR_INVALID, "backend ops or name missing");
	if (ops->abi == 0 || ops->abi > KVB_BACKEND_ABI)
		return kvb_err_set(err, KVB_ERR_ABI,
				   "backend '%s' built for ABI %u, this core supports 1..%u",
				   ops->name, ops->abi, KVB_BACKEND_ABI);
	/* Bounds the allocation sizes below, which would otherwise wrap. */
	if (ops->instance_size > SIZE_MAX / 4 || ops->conn_size > SIZE_MAX / 4)
		return kvb_err_set(err, KVB_ERR_INVALID,
				   "backend '%s' declares instance_size %zu, conn_size %zu",
				   ops->name, ops->instance_size, ops->conn_size);
	for (size_t i = 0; i < G_N_ELEMENTS(mandatory_ops); i++) {
		if (ops->size < mandatory_ops[i] + sizeof(op_fn) || !ops_slot(ops, mandatory_ops[i]))
			return kvb_err_set(err, KVB_ERR_ABI,
					   "backend '%s' lacks a mandatory op (offset %zu, table size %u)",
					   ops->name, mandatory_ops[i], ops->size);
	}
	return KVB_OK;
}

/* Copy ops into dst, taking each slot from the backend when it lies within
 * the backend's declared size and is not NULL, else from the stubs. */
static void ops_fill(kvb_backend_ops_t *dst, const kvb_backend_ops_t *src)
{
	*dst = stub_ops;
	dst->abi = src->abi;
	dst->size = sizeof(*dst);
	dst->name = src->name;
	dst->instance_size = src->instance_size;
	dst->conn_size = src->conn_size;
	for (size_t off = OPS_FIRST_SLOT; off + sizeof(op_fn) <= sizeof(*dst); off += sizeof(op_fn)) {
		if (off + sizeof(op_fn) > src->size)
			break;
		op_fn fn = ops_slot(src, off);
		if (fn)
			memcpy((char *)dst + off, &fn, sizeof(fn));
	}
}

bool kvb_backend_has(const kvb_backend_t *be, size_t op_offset)
{
	if (!be || op_offset < OPS_FIRST_SLOT || op_offset + sizeof(op_fn) > sizeof(kvb_backend_ops_t) ||
	    (op_offset - OPS_FIRST_SLOT) % sizeof(op_fn) != 0)
		return false;
	return ops_slot(be->ops, op_offset) != ops_slot(&stub_ops, op_offset);
}

int kvb_backend_register(const kvb_backend_ops_t *ops)
{
	int rc = ops_check(ops, NULL);
	if (rc != KVB_OK)
		return rc;
	for (unsigned i = 0; i < backend_registry_len; i++) {
		if (backend_registry[i] == ops)
			return KVB_OK;
		if (strcmp(backend_registry[i]->name, ops->name) == 0)
			return KVB_ERR_EXISTS;
	}
	if (backend_registry_len == KVB_BACKEND_REGISTRY_MAX)
		return KVB_ERR_NO_RESOURCE;
	backend_registry[backend_registry_len++] = ops;
	return KVB_OK;
}

const kvb_backend_ops_t *kvb_backend_find(const char *name)
{
	if (!name)
		return NULL;
	for (unsigned i = 0; i < backend_registry_len; i++)
		if (strcmp(backend_registry[i]->name, name) == 0)
			return backend_registry[i];
	return NULL;
}

/* Instance memory: [kvb_backend_t | priv (instance_size) | filled ops]. */
static size_t instance_ops_offset(size_t instance_size)
{
	size_t off = sizeof(kvb_backend_t) + instance_size;
	return (off + 15) & ~(size_t)15;
}

int kvb_backend_open(const kvb_backend_ops_t *ops, const void *args, kvb_backend_t **out,
		     kvb_err_t *err)
{
	if (!out)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_backend_open: out is NULL");
	*out = NULL;
	int rc = ops_check(ops, err);
	if (rc != KVB_OK)
		return rc;
	size_t ops_off = instance_ops_offset(ops->instance_size);
	kvb_backend_t *be = calloc(1, ops_off + sizeof(kvb_backend_ops_t));
	if (!be)
		return kvb_err_set(err, KVB_ERR_NOMEM, "backend '%s': out of memory", ops->name);
	be->ops = (kvb_backend_ops_t *)((char *)be + ops_off);
	ops_fill(be->ops, ops);
	kvb_err_clear(err); /* so a failed open without a message of its own is seen below */
	rc = be->ops->instance_open(be, args, err);
	if (rc != KVB_OK) {
		if (rc > 0) /* instance_open may not return INPROGRESS */
			rc = KVB_ERR_INVALID;
		if (err && err->code == KVB_OK)
			kvb_err_set(err, rc, "backend '%s' failed to open: %s", ops->name, kvb_strerror(rc));
		free(be);
		return rc;
	}
	*out = be;
	return KVB_OK;
}

void kvb_backend_close(kvb_backend_t *be)
{
	if (!be)
		return;
	be->ops->instance_close(be);
	free(be);
}

kvb_conn_t *kvb_conn_alloc(kvb_backend_t *be)
{
	kvb_conn_t *conn = calloc(1, sizeof(kvb_conn_t) + be->ops->conn_size);
	if (conn)
		conn->backend = be;
	return conn;
}

void kvb_conn_free(kvb_conn_t *conn)
{
	free(conn);
}
