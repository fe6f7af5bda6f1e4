/*
 * The hw backend: instance, vtable and public API (include/kvbridge/hw.h).
 *
 * The backend is layered; each layer calls only the ones below it:
 *
 *   kvb_hw.c       instance and vtable: connects control protocols and
 *                  transports to the core's ops
 *   control/       protocols: the Mooncake handshake port, kvbridge's own
 *                  stream, vLLM's side channels; each makes peers (the
 *                  core's connections) and fills their links
 *   transport/     the data path behind one interface (kvb_hw_transport.h):
 *                  TCP lanes and data server, RDMA verbs, GPU memory
 *                  (providers, staging, mirrors), registered memory
 *   events/        one event and timer service: the GMainContext, GSource
 *                  helpers, the core's event queue and timers, sockets
 *   wire codecs    kvb_mc_wire, kvb_vllm_wire, kvb_http: plain functions
 *                  over buffers (libkvbridge_hw_wire)
 *
 * Everything runs on one GMainContext: listeners, sessions, data lanes and
 * timers are GSources; the vtable's ops only queue work and return.
 * event_poll dispatches the context (when nobody else is dispatching it)
 * and hands out the events the sources queued.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/random.h>

#include <glib.h>
#include <sodium.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/hw.h>

#include "control/kvb_hw_handshake.h"
#include "control/kvb_hw_peer.h"
#include "control/kvb_hw_stream.h"
#include "control/kvb_hw_vllm_bootstrap.h"
#include "control/kvb_hw_vllm_gen0.h"
#include "control/kvb_hw_vllm_gen2.h"
#include "events/kvb_hw_events.h"
#include "events/kvb_hw_net.h"
#include "transport/kvb_hw_mem.h"
#include "transport/kvb_hw_rdma.h"
#include "transport/kvb_hw_rdma_window.h"
#include "transport/kvb_hw_transport.h"
#include "kvb_tls.h"

static hw_t *hw_of(kvb_backend_t *be)
{
	return (hw_t *)be->priv;
}

/* ------------------------------------------------------------------------ */
/* vtable: environment                                                      */

/* The shared secret: a file's bytes (at least 32, trailing whitespace not
 * counted) hashed into the stream key; the bytes are wiped after. */
static int hw_auth_load(hw_t *hw, const char *path, kvb_err_t *err)
{
	if (sodium_init() < 0)
		return kvb_err_set(err, KVB_ERR_CONFIG, "libsodium could not initialise");
	gchar *data = NULL;
	gsize len = 0;
	GError *gerr = NULL;
	if (!g_file_get_contents(path, &data, &len, &gerr)) {
		int rc = kvb_err_set(err, KVB_ERR_CONFIG, "secret file: %s", gerr->message);
		g_error_free(gerr);
		return rc;
	}
	gsize n = len;
	while (n && g_ascii_isspace(data[n - 1]))
		n--;
	int rc = KVB_OK;
	if (n < 32)
		rc = kvb_err_set(err, KVB_ERR_CONFIG, "secret file %s: %zu bytes, at least 32 needed "
				 "(e.g. head -c 48 /dev/urandom | base64 > FILE)", path, (size_t)n);
	else
		crypto_generichash(hw->auth_key, sizeof(hw->auth_key), (const unsigned char *)data, n,
				   NULL, 0);
	sodium_memzero(data, len);
	g_free(data);
	hw->auth = rc == KVB_OK;
	return rc;
}

/* The control streams' TLS credentials (params.tls_*), read now; the paths
 * are not kept.  Nothing is left allocated on failure. */
static int hw_tls_load(hw_t *hw, kvb_err_t *err)
{
	kvb_hw_params_t *p = &hw->p;
	int rc = KVB_OK;
	if (!p->tls_cert != !p->tls_key)
		rc = kvb_err_set(err, KVB_ERR_CONFIG, "%s without %s: give the certificate and its key",
				 p->tls_cert ? "tls_cert" : "tls_key", p->tls_cert ? "tls_key" : "tls_cert");
	kvb_err_t e;
	if (rc == KVB_OK && p->tls_cert &&
	    !(hw->tls_server = kvb_tls_server_new(p->tls_cert, p->tls_key, &kvb_tls_param_names, &e)))
		rc = kvb_err_set(err, e.code, "%s", e.msg);
	if (rc == KVB_OK && p->tls_ca &&
	    !(hw->tls_client = kvb_tls_client_new(p->tls_ca, &kvb_tls_param_names, &e)))
		rc = kvb_err_set(err, e.code, "%s", e.msg);
	if (rc != KVB_OK) {
		kvb_tls_free(hw->tls_server);
		hw->tls_server = NULL;
	}
	p->tls_cert = p->tls_key = p->tls_ca = NULL; /* read: the credentials are kept */
	return rc;
}

/* "0.0.0.0", "::", "[::]", "*": every interface. */
static bool hw_is_wildcard(const char *host)
{
	return !strcmp(host, "0.0.0.0") || !strcmp(host, "::") || !strcmp(host, "[::]") ||
	       !strcmp(host, "*");
}

static uint64_t op_clock_now_ns(kvb_backend_t *be)
{
	(void)be;
	return hw_now_ns();
}

static int op_timer_arm(kvb_backend_t *be, uint64_t deadline_ns, uint64_t cookie,
			uint64_t *timer_id)
{
	return hw_timer_arm(hw_of(be), deadline_ns, cookie, timer_id);
}

static int op_timer_cancel(kvb_backend_t *be, uint64_t timer_id)
{
	return hw_timer_cancel(hw_of(be), timer_id);
}

static int op_random_fill(kvb_backend_t *be, void *buf, size_t len)
{
	hw_t *hw = hw_of(be);
	uint8_t *b = buf;
	while (len) {
		ssize_t n = getrandom(b, len, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			hw_set_error(hw, "getrandom: %s", g_strerror(errno));
			return KVB_ERR_TRANSPORT;
		}
		b += n;
		len -= (size_t)n;
	}
	return KVB_OK;
}

static uint32_t op_nic_count(kvb_backend_t *be)
{
	return hw_nic_count(hw_of(be));
}

static int op_nic_query(kvb_backend_t *be, uint32_t index, kvb_nic_info_t *info)
{
	return hw_nic_query(hw_of(be), index, info);
}

static int op_mr_reg(kvb_backend_t *be, void *addr, size_t len, const kvb_mem_attr_t *attr,
		     void **mr, kvb_rkey_t *rkey)
{
	return hw_mem_register(hw_of(be), addr, len, attr, mr, rkey);
}

static int op_mr_dereg(kvb_backend_t *be, void *mr)
{
	return hw_mem_deregister(hw_of(be), mr);
}

/* ------------------------------------------------------------------------ */
/* vtable: connections, data, messages, progress                             */

/* Peer addresses name their protocol by scheme; each protocol makes the
 * peer and starts it. */
static int op_conn_connect(kvb_backend_t *be, kvb_conn_t *conn, const char *peer_address)
{
	hw_t *hw = hw_of(be);
	const char *a = peer_address;
	int (*connect)(hw_t *, kvb_conn_t *, const char *, const char *, uint16_t) = hw_stream_connect;
	if (g_str_has_prefix(a, "kvb://")) {
		a += 6;
	} else if (g_str_has_prefix(a, "vllm://")) {
		a += 7;
		connect = hw_vllm_client_connect;
	} else if (g_str_has_prefix(a, "vllm2://")) {
		a += 8;
		connect = hw_vllm2_client_connect;
	} else if (g_str_has_prefix(a, "mooncake://")) {
		a += 11;
		connect = hw_mooncake_connect;
	} else if (strstr(a, "://")) {
		hw_set_error(hw, "peer address %s: unknown scheme (kvb://, vllm://, vllm2:// or "
			     "mooncake://)", peer_address);
		return KVB_ERR_INVALID;
	}
	char host[KVB_MC_NAME_MAX];
	uint16_t port;
	kvb_err_t err;
	if (kvb_mc_parse_host_port(a, host, sizeof(host), &port, &err) != KVB_OK) {
		hw_set_error(hw, "peer address %s: %s", peer_address, err.msg);
		return KVB_ERR_INVALID;
	}
	char why[KVB_ERR_MSG_MAX];
	if (!kvb_acl_allows_host(&hw->acl, host, why, sizeof(why))) {
		/* a peer address comes from a message or a client: dial only what
		 * the configuration allows */
		hw->stats.peers_refused++;
		hw_set_error(hw, "not dialling %s: %s", peer_address, why);
		return KVB_ERR_PEER;
	}
	int rc = connect(hw, conn, peer_address, host, port);
	return rc < 0 ? rc : KVB_INPROGRESS;
}

static int op_conn_accept(kvb_backend_t *be, kvb_conn_t *conn, uint64_t incoming_id)
{
	hw_t *hw = hw_of(be);
	hw_peer_t *p = hw_peer_take_incoming(hw, incoming_id);
	if (!p) {
		hw_set_error(hw, "conn_accept: unknown incoming id %" PRIu64, incoming_id);
		return KVB_ERR_NOT_FOUND;
	}
	hw_peer_bind(p, conn);
	if (p->state == HW_PEER_DOWN) {
		/* went away between the announcement and the accept */
		kvb_event_t ev = {.type = KVB_EV_CONN_DOWN, .conn = conn, .status = KVB_ERR_PEER};
		hw_event_push(hw, &ev);
		return KVB_OK;
	}
	p->ops->accepted(p);
	return KVB_OK;
}

static void op_conn_close(kvb_backend_t *be, kvb_conn_t *conn)
{
	hw_t *hw = hw_of(be);
	hw_events_drop_conn(hw, conn); /* no later event names the conn */
	hw_peer_t *p = hw_peer_of(conn);
	if (!p)
		return;
	hw_peer_bind(p, NULL);
	p->ops->closed(p);
}

static int op_xfer_post(kvb_backend_t *be, kvb_conn_t *conn, const kvb_slice_op_t *ops, size_t n,
			size_t *n_posted)
{
	hw_t *hw = hw_of(be);
	hw_peer_t *p = hw_peer_of(conn);
	*n_posted = 0;
	if (!p || p->state != HW_PEER_UP) {
		hw_set_error(hw, "xfer_post: connection %s is not up", p ? p->addr : "?");
		return KVB_ERR_PEER;
	}
	return hw_link_post(&p->link, ops, n, n_posted);
}

static int op_msg_send(kvb_backend_t *be, kvb_conn_t *conn, const void *buf, size_t len)
{
	hw_t *hw = hw_of(be);
	hw_peer_t *p = hw_peer_of(conn);
	if (!p || p->state != HW_PEER_UP) {
		hw_set_error(hw, "msg_send: connection %s is down", p ? p->addr : "?");
		return KVB_ERR_PEER;
	}
	if (len > KVB_MSG_MAX) {
		hw_set_error(hw, "msg_send: %zu bytes exceed %u", len, KVB_MSG_MAX);
		return KVB_ERR_INVALID;
	}
	return p->ops->msg_send(p, buf, len);
}

static int op_event_poll(kvb_backend_t *be, kvb_event_t *events, int max)
{
	return hw_events_poll(hw_of(be), events, max);
}

static const char *op_last_error(kvb_backend_t *be)
{
	return hw_of(be)->last_error;
}

static int op_ext_get(kvb_backend_t *be, const char *name, const void **ext)
{
	(void)be;
	(void)ext;
	(void)name;
	return KVB_ERR_NOT_FOUND;
}

/* ------------------------------------------------------------------------ */
/* lifecycle                                                                */

static void hw_free_all(hw_t *hw)
{
	hw_vllm_stop(hw);
	hw_vllm2_stop(hw);
	hw_handshake_stop(hw);
	hw_peers_free_all(hw);
	hw_transport_close(hw);
	/* after their owners (peers, sessions, endpoints, probes) have cancelled
	 * theirs: what is left has no owner (fire-and-forget acks) */
	hw_calls_free_all(hw);
	hw_windows_free(hw);
	hw_warn_fini(hw);
	sodium_memzero(hw->auth_key, sizeof(hw->auth_key));
	kvb_tls_free(hw->tls_server);
	kvb_tls_free(hw->tls_client);
	hw->tls_server = hw->tls_client = NULL;
	hw_events_fini(hw);
}

static int op_instance_open(kvb_backend_t *be, const void *args, kvb_err_t *err)
{
	hw_t *hw = hw_of(be);
	memset(hw, 0, sizeof(*hw));
	hw->be = be;
	const kvb_hw_args_t *a = args;
	kvb_hw_params_default(&hw->p);
	if (a && a->params)
		hw->p = *a->params;
	kvb_hw_params_t *p = &hw->p;
	if (!p->n_nics || p->n_nics > KVB_HW_MAX_NICS)
		return kvb_err_set(err, KVB_ERR_CONFIG, "n_nics %u out of range 1..%u", p->n_nics,
				   KVB_HW_MAX_NICS);
	if (p->handshake_max < 1024 || p->handshake_max > KVB_MC_HANDSHAKE_MAX_LIMIT)
		return kvb_err_set(err, KVB_ERR_CONFIG, "handshake_max %u out of range 1024..%u",
				   p->handshake_max, KVB_MC_HANDSHAKE_MAX_LIMIT);
	if (p->tcp_proto_version < 1 || p->tcp_proto_version > 2)
		return kvb_err_set(err, KVB_ERR_CONFIG, "tcp_proto_version %u: expected 1 or 2",
				   p->tcp_proto_version);
	if (p->rpc_port_min < 1024 || p->rpc_port_min > p->rpc_port_max)
		return kvb_err_set(err, KVB_ERR_CONFIG, "rpc port range %u..%u invalid",
				   p->rpc_port_min, p->rpc_port_max);
	if (!p->lane_depth)
		return kvb_err_set(err, KVB_ERR_CONFIG, "lane_depth must be >= 1");
	if (p->staging_chunk < 4096 || p->staging_chunk > (UINT64_C(1) << 30) ||
	    p->staging_bytes < p->staging_chunk)
		return kvb_err_set(err, KVB_ERR_CONFIG, "staging: chunk %" PRIu64 " bytes (4 KiB..1 GiB) "
				   "and pool %" PRIu64 " bytes (at least one chunk)", p->staging_chunk,
				   p->staging_bytes);
	if (p->tcp_lanes > KVB_HW_MAX_LANES)
		return kvb_err_set(err, KVB_ERR_CONFIG, "tcp_lanes %u out of range 1..%u", p->tcp_lanes,
				   KVB_HW_MAX_LANES);
	/* own copies of the strings */
	g_strlcpy(hw->host, p->host && *p->host ? p->host : "127.0.0.1", sizeof(hw->host));
	g_strlcpy(hw->bind_host, p->bind_host && *p->bind_host ? p->bind_host : hw->host,
		  sizeof(hw->bind_host));
	g_strlcpy(hw->side_host, p->side_channel_host ? p->side_channel_host : hw->bind_host,
		  sizeof(hw->side_host));
	p->host = hw->host;
	p->bind_host = hw->bind_host;
	p->side_channel_host = hw->side_host;
	for (uint32_t i = 0; i < KVB_HW_MAX_NICS; i++) {
		if (i < p->n_nics && p->nic_addrs[i])
			g_strlcpy(hw->nic_addrs[i], p->nic_addrs[i], sizeof(hw->nic_addrs[i]));
		p->nic_addrs[i] = hw->nic_addrs[i];
	}
	if (p->vllm_bootstrap_server) {
		g_strlcpy(hw->vllm_bootstrap_server, p->vllm_bootstrap_server,
			  sizeof(hw->vllm_bootstrap_server));
		p->vllm_bootstrap_server = hw->vllm_bootstrap_server;
	}
	g_strlcpy(hw->vllm_release, p->vllm_release ? p->vllm_release : "0.32.0",
		  sizeof(hw->vllm_release));
	p->vllm_release = hw->vllm_release;
	if (p->vllm_protocol == KVB_HW_VLLM_AUTO)
		p->vllm_protocol = p->side_channel_port ? KVB_HW_VLLM_GEN0 : KVB_HW_VLLM_NONE;
	if (!kvb_hw_vllm_protocol_name(p->vllm_protocol))
		return kvb_err_set(err, KVB_ERR_CONFIG, "vllm_protocol %u unknown", p->vllm_protocol);
	if (p->vllm_protocol == KVB_HW_VLLM_GEN0 && !p->side_channel_port)
		return kvb_err_set(err, KVB_ERR_CONFIG, "vLLM gen0 needs a side-channel port "
				   "(VLLM_MOONCAKE_BOOTSTRAP_PORT + dp_rank * tp_size + tp_rank)");
	if (p->allow_peers) {
		int rc = kvb_acl_parse(&hw->acl, p->allow_peers, err);
		if (rc != KVB_OK)
			return rc;
	} else {
		kvb_acl_default(&hw->acl, hw->host);
	}
	p->allow_peers = NULL; /* parsed: the caller's string is not kept */
	int trc = hw_tls_load(hw, err);
	if (trc != KVB_OK)
		return trc;
	if (p->secret_file) {
		int rc = hw_auth_load(hw, p->secret_file, err);
		if (rc != KVB_OK) {
			kvb_tls_free(hw->tls_server);
			kvb_tls_free(hw->tls_client);
			return rc;
		}
	}
	p->secret_file = NULL; /* read: the key is kept, not the path */
	hw_events_init(hw);
	if (hw_handshake_start(hw, err) != KVB_OK || hw_transport_open(hw, err) != KVB_OK)
		goto fail;
	if (p->vllm_protocol == KVB_HW_VLLM_GEN0 && hw_vllm_start(hw, err) != KVB_OK)
		goto fail;
	if (p->vllm_protocol == KVB_HW_VLLM_GEN2 && hw_vllm2_start(hw, err) != KVB_OK)
		goto fail;
	hw_log(hw, "up: handshake port %u, data port %u", hw->rpc_port, hw_transport_data_port(hw));
	if (kvb_acl_is_open(&hw->acl))
		hw_warn(hw, "allowed peers include every address: anyone who can reach a port may use it, "
			    "and peers may make this worker dial anywhere");
	if (hw_is_wildcard(hw->bind_host))
		hw_warn(hw, "listening on every interface (%s): anyone who can reach this host can "
			    "connect to the handshake, data and vLLM ports; bind the address peers use "
			    "(the host setting) unless that is meant", hw->bind_host);
	return KVB_OK;
fail:
	hw_free_all(hw);
	return err ? err->code : KVB_ERR_CONFIG;
}

static void op_instance_close(kvb_backend_t *be)
{
	hw_free_all(hw_of(be));
}

static kvb_backend_ops_t hw_ops = {
	.abi = KVB_BACKEND_ABI,
	.size = sizeof(kvb_backend_ops_t),
	.name = "hw",
	.instance_size = sizeof(hw_t),
	.conn_size = sizeof(hw_peer_t *),
	.instance_open = op_instance_open,
	.instance_close = op_instance_close,
	.clock_now_ns = op_clock_now_ns,
	.timer_arm = op_timer_arm,
	.timer_cancel = op_timer_cancel,
	.random_fill = op_random_fill,
	.nic_count = op_nic_count,
	.nic_query = op_nic_query,
	.mr_reg = op_mr_reg,
	.mr_dereg = op_mr_dereg,
	.conn_connect = op_conn_connect,
	.conn_accept = op_conn_accept,
	.conn_close = op_conn_close,
	.xfer_post = op_xfer_post,
	.msg_send = op_msg_send,
	.event_poll = op_event_poll,
	.last_error = op_last_error,
	.ext_get = op_ext_get,
};

/* ------------------------------------------------------------------------ */
/* public API                                                               */

const kvb_backend_ops_t *kvb_hw_backend_ops(void)
{
	return &hw_ops;
}

int kvb_hw_open(const kvb_hw_params_t *params, kvb_backend_t **out, kvb_err_t *err)
{
	kvb_hw_args_t args = {.params = params};
	return kvb_backend_open(kvb_hw_backend_ops(), &args, out, err);
}

GMainContext *kvb_hw_context(kvb_backend_t *be)
{
	return hw_of(be)->ctx;
}

const char *kvb_hw_segment_name(kvb_backend_t *be)
{
	return hw_of(be)->segment;
}

const char *kvb_hw_bind_host(kvb_backend_t *be)
{
	return hw_of(be)->bind_host;
}

int kvb_hw_expose(kvb_backend_t *be, const void *addr, size_t len)
{
	hw_t *hw = hw_of(be);
	hw_mr_t *m = hw_mr_find(hw, (uint64_t)(uintptr_t)addr, len);
	if (!m) {
		hw_set_error(hw, "expose: %zu bytes at %p are not inside one registration", len, addr);
		return KVB_ERR_RANGE;
	}
	/* over RDMA a key covers a whole registration: it is opened, all of it */
	kvb_err_t err;
	if (hw_rdma_mr_open(hw, m, &err) != KVB_OK) {
		hw_set_error(hw, "expose: %s", err.msg);
		return err.code;
	}
	if (!hw->exposed)
		hw->exposed = g_array_new(FALSE, FALSE, sizeof(uint64_t));
	uint64_t pair[2] = {(uint64_t)(uintptr_t)addr, len};
	g_array_append_vals(hw->exposed, pair, 2);
	return KVB_OK;
}

void kvb_hw_rkey_explicit(kvb_rkey_t *key, uint32_t rkey)
{
	memset(key, 0, sizeof(*key));
	key->len = HW_RKEY_EXPLICIT_LEN;
	memcpy(key->bytes, HW_RKEY_EXPLICIT_TAG, 4);
	memcpy(key->bytes + 4, &rkey, 4);
}

void kvb_hw_allowed_peers(kvb_backend_t *be, char *out, size_t len)
{
	kvb_acl_describe(&hw_of(be)->acl, out, len);
}

bool kvb_hw_peer_allowed(kvb_backend_t *be, const char *host, char *why, size_t why_len)
{
	return kvb_acl_allows_host(&hw_of(be)->acl, host, why, why_len);
}

uint16_t kvb_hw_rpc_port(kvb_backend_t *be)
{
	return hw_of(be)->rpc_port;
}

uint16_t kvb_hw_side_channel_port(kvb_backend_t *be)
{
	hw_t *hw = hw_of(be);
	return hw->vllm ? hw->p.side_channel_port : 0;
}

uint16_t kvb_hw_data_port(kvb_backend_t *be)
{
	return hw_transport_data_port(hw_of(be));
}

int kvb_hw_set_vllm_layout(kvb_backend_t *be, const kvb_region_t *regions, uint32_t n,
			   uint32_t tp_size, uint32_t tp_rank, kvb_err_t *err)
{
	kvb_hw_vllm_layout_t l = {.regions = regions, .n_regions = n, .tp_size = tp_size,
				  .tp_rank = tp_rank};
	return kvb_hw_vllm_set_layout(be, &l, err);
}

int kvb_hw_vllm_set_layout(kvb_backend_t *be, const kvb_hw_vllm_layout_t *layout, kvb_err_t *err)
{
	hw_t *hw = hw_of(be);
	if (!layout)
		return kvb_err_set(err, KVB_ERR_INVALID, "vLLM layout: NULL");
	if (hw->vllm)
		return hw_vllm_set_layout(hw, layout->regions, layout->n_regions, layout->tp_size,
					  layout->tp_rank, err);
	if (hw->vllm2)
		return hw_vllm2_set_layout(hw, layout, err);
	return kvb_err_set(err, KVB_ERR_STATE, "this instance speaks no vLLM protocol "
			   "(vllm_protocol gen0 with a side-channel port, or gen2)");
}

const char *kvb_hw_vllm_worker_addr(kvb_backend_t *be)
{
	return hw_vllm2_worker_addr(hw_of(be));
}

uint16_t kvb_hw_vllm_bootstrap_port(kvb_backend_t *be)
{
	return hw_vllm_bootstrap_port(hw_of(be));
}

int kvb_hw_vllm_query(kvb_backend_t *be, const char *bootstrap_addr, const char *engine_id,
		      kvb_hw_vllm_query_fn fn, void *user, kvb_err_t *err)
{
	return hw_vllm2_query(hw_of(be), bootstrap_addr, engine_id, fn, user, err);
}

void kvb_hw_set_notify(kvb_backend_t *be, void (*fn)(void *user), void *user)
{
	hw_t *hw = hw_of(be);
	hw->notify = fn;
	hw->notify_user = user;
}

bool kvb_hw_wait(kvb_backend_t *be, uint64_t timeout_ns)
{
	return hw_events_wait(hw_of(be), timeout_ns);
}

int kvb_hw_peer_buffer(kvb_backend_t *be, kvb_conn_t *conn, uint32_t i, uint64_t *addr,
		       uint64_t *len)
{
	(void)be;
	hw_peer_t *p = conn ? hw_peer_of(conn) : NULL;
	if (!p || !p->link.have_seg || i >= p->link.seg.n_buffers)
		return KVB_ERR_NOT_FOUND;
	*addr = p->link.seg.buffers[i].addr;
	*len = p->link.seg.buffers[i].length;
	return KVB_OK;
}

void kvb_hw_stats_get(kvb_backend_t *be, kvb_hw_stats_t *out)
{
	hw_t *hw = hw_of(be);
	*out = hw->stats;
	out->rdma_endpoints = hw_rdma_endpoint_count(hw);
}

/* kvb_hw_mr_paths: which path each NIC takes to the registration at addr. */
int kvb_hw_mr_paths(kvb_backend_t *be, const void *addr, kvb_hw_gpu_path_t *paths, uint32_t max,
		    uint32_t *n)
{
	hw_t *hw = hw_of(be);
	hw_mr_t *m = hw_mr_find(hw, (uint64_t)(uintptr_t)addr, 1);
	if (!m)
		return KVB_ERR_NOT_FOUND;
	uint32_t nics = hw_nic_count(hw);
	*n = nics;
	for (uint32_t i = 0; i < nics && i < max; i++)
		paths[i] = (kvb_hw_gpu_path_t)m->path[i];
	return KVB_OK;
}
