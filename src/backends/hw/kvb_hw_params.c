/*
 * The hw backend's parameters: defaults and Mooncake's MC_* environment
 * variables (include/kvbridge/hw.h).
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/hw.h>

#include "kvb_mc_wire.h"

void kvb_hw_params_default(kvb_hw_params_t *p)
{
	memset(p, 0, sizeof(*p));
	p->host = "127.0.0.1";
	p->bind_host = NULL; /* = host: listen only where peers are told to connect */
	p->rpc_port_min = 15000;
	p->rpc_port_max = 17000;
	p->n_nics = 1;
	p->handshake_max = KVB_MC_HANDSHAKE_MAX_DEFAULT;
	p->tcp_proto_version = 2;
	p->connect_timeout_ns = 5 * G_GUINT64_CONSTANT(1000000000);
	p->status_timeout_ns = 30 * G_GUINT64_CONSTANT(1000000000);
	p->lane_depth = 4096;
	p->tcp_lanes = 4;
	p->ib_port = 1;
	p->gid_index = -1;
	p->mtu = 4096;
	p->qp_per_ep = 2;
	p->max_wr = 256;
	p->rdma_stall_timeout_ns = 10 * G_GUINT64_CONSTANT(1000000000);
	p->rdma_peer_probe_ns = 30 * G_GUINT64_CONSTANT(1000000000);
	p->staging_bytes = 64u << 20;
	p->staging_chunk = 4u << 20;
	p->vllm_protocol = KVB_HW_VLLM_AUTO;
	p->vllm_bootstrap_default_port = 8998;
	p->vllm_release = "0.32.0";
	p->vllm_connector_timeout_ns = 30 * G_GUINT64_CONSTANT(1000000000);
	p->vllm_abort_timeout_ns = 480 * G_GUINT64_CONSTANT(1000000000);
}

static const char *const vllm_protocol_names[] = {
	[KVB_HW_VLLM_AUTO] = "auto", [KVB_HW_VLLM_NONE] = "none",
	[KVB_HW_VLLM_GEN0] = "gen0", [KVB_HW_VLLM_GEN2] = "gen2",
};

const char *kvb_hw_vllm_protocol_name(kvb_hw_vllm_protocol_t p)
{
	return (unsigned)p < G_N_ELEMENTS(vllm_protocol_names) ? vllm_protocol_names[p] : NULL;
}

int kvb_hw_vllm_protocol_parse(const char *name, kvb_hw_vllm_protocol_t *p)
{
	if (!name)
		return KVB_ERR_INVALID;
	if (!g_ascii_strcasecmp(name, "gen1") || !g_ascii_strcasecmp(name, "gen2")) {
		*p = KVB_HW_VLLM_GEN2; /* one wire from vLLM 0.16 on: Gen 1 and Gen 2 */
		return KVB_OK;
	}
	for (unsigned i = 0; i < G_N_ELEMENTS(vllm_protocol_names); i++)
		if (!g_ascii_strcasecmp(name, vllm_protocol_names[i])) {
			*p = (kvb_hw_vllm_protocol_t)i;
			return KVB_OK;
		}
	return KVB_ERR_INVALID;
}

static bool env_u64(char **envp, const char *name, uint64_t min, uint64_t max, uint64_t *out,
		    kvb_err_t *err, int *rc)
{
	const char *v = envp ? g_environ_getenv(envp, name) : g_getenv(name);
	if (!v)
		return false;
	char *end = NULL;
	errno = 0;
	guint64 x = g_ascii_strtoull(v, &end, 10);
	if (!*v || *end || errno || x < min || x > max) {
		*rc = kvb_err_set(err, KVB_ERR_CONFIG,
				  "%s=%s: expected an integer in %" PRIu64 "..%" PRIu64, name, v, min,
				  max);
		return false;
	}
	*out = x;
	return true;
}

int kvb_hw_params_apply_env(kvb_hw_params_t *p, char **envp, kvb_err_t *err)
{
	int rc = KVB_OK;
	uint64_t v;
	if (env_u64(envp, "MC_HANDSHAKE_MAX_LENGTH", KVB_MC_HANDSHAKE_MAX_DEFAULT,
		    KVB_MC_HANDSHAKE_MAX_LIMIT, &v, err, &rc))
		p->handshake_max = (uint32_t)v;
	if (env_u64(envp, "MC_MIN_RPC_PORT", 1024, 65535, &v, err, &rc))
		p->rpc_port_min = (uint16_t)v;
	if (env_u64(envp, "MC_MAX_RPC_PORT", 1024, 65535, &v, err, &rc))
		p->rpc_port_max = (uint16_t)v;
	if (env_u64(envp, "MC_HANDSHAKE_CONNECT_TIMEOUT", 1, 3600, &v, err, &rc))
		p->connect_timeout_ns = v * G_GUINT64_CONSTANT(1000000000);
	if (env_u64(envp, "MC_TCP_PROTO", 1, 2, &v, err, &rc))
		p->tcp_proto_version = (uint32_t)v;
	if (env_u64(envp, "MC_TCP_LANES_PER_PEER", 1, KVB_HW_MAX_LANES, &v, err, &rc))
		p->tcp_lanes = (uint32_t)v;
	if (env_u64(envp, "KVB_STAGING_BYTES", 4096, UINT64_C(1) << 40, &v, err, &rc))
		p->staging_bytes = v;
	if (env_u64(envp, "KVB_STAGING_CHUNK", 4096, UINT64_C(1) << 30, &v, err, &rc))
		p->staging_chunk = v;
	if (env_u64(envp, "MC_TCP_STATUS_TIMEOUT_SEC", 1, 3600, &v, err, &rc))
		p->status_timeout_ns = v * G_GUINT64_CONSTANT(1000000000);
	if (env_u64(envp, "MC_IB_PORT", 1, 255, &v, err, &rc))
		p->ib_port = (uint8_t)v;
	if (env_u64(envp, "MC_GID_INDEX", 0, 1023, &v, err, &rc))
		p->gid_index = (int32_t)v;
	if (env_u64(envp, "MC_MTU", 512, 4096, &v, err, &rc)) {
		if (v != 512 && v != 1024 && v != 2048 && v != 4096)
			rc = kvb_err_set(err, KVB_ERR_CONFIG, "MC_MTU=%" PRIu64 ": expected 512, 1024, 2048 or 4096", v);
		else
			p->mtu = (uint32_t)v;
	}
	if (env_u64(envp, "MC_NUM_QP_PER_EP", 1, KVB_MC_MAX_QP, &v, err, &rc))
		p->qp_per_ep = (uint32_t)v;
	if (env_u64(envp, "MC_MAX_WR", 1, 65536, &v, err, &rc))
		p->max_wr = (uint32_t)v;
	if (env_u64(envp, "MC_SLICE_TIMEOUT", 0, 3600, &v, err, &rc))
		p->rdma_stall_timeout_ns = v * G_GUINT64_CONSTANT(1000000000);
	if (env_u64(envp, "KVB_RDMA_PEER_PROBE", 0, 86400, &v, err, &rc))
		p->rdma_peer_probe_ns = v * G_GUINT64_CONSTANT(1000000000);
	if (env_u64(envp, "VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT", 1, 86400 * 30, &v, err, &rc))
		p->vllm_abort_timeout_ns = v * G_GUINT64_CONSTANT(1000000000);
	if (env_u64(envp, "VLLM_MOONCAKE_BOOTSTRAP_PORT", 1, 65535, &v, err, &rc))
		p->vllm_bootstrap_default_port = (uint16_t)v;
	const char *ct = envp ? g_environ_getenv(envp, "VLLM_MOONCAKE_CONNECTOR_TIMEOUT")
			      : g_getenv("VLLM_MOONCAKE_CONNECTOR_TIMEOUT");
	if (ct) {
		char *end = NULL;
		double sec = g_ascii_strtod(ct, &end);
		if (!*ct || *end || !(sec > 0 && sec <= 3600))
			rc = kvb_err_set(err, KVB_ERR_CONFIG, "VLLM_MOONCAKE_CONNECTOR_TIMEOUT=%s: expected "
					 "seconds in (0, 3600]", ct);
		else
			p->vllm_connector_timeout_ns = (uint64_t)(sec * 1e9);
	}
	const char *secret = envp ? g_environ_getenv(envp, "KVB_SECRET_FILE") : g_getenv("KVB_SECRET_FILE");
	if (secret && *secret)
		p->secret_file = secret; /* borrowed from the environment, read at open */
	const char *tls[3] = {"KVB_TLS_CERT", "KVB_TLS_KEY", "KVB_TLS_CA"};
	const char **tls_param[3] = {&p->tls_cert, &p->tls_key, &p->tls_ca};
	for (int i = 0; i < 3; i++) {
		const char *file = envp ? g_environ_getenv(envp, tls[i]) : g_getenv(tls[i]);
		if (file && *file)
			*tls_param[i] = file; /* borrowed from the environment, read at open */
	}
	const char *open_mem = envp ? g_environ_getenv(envp, "KVB_OPEN_MEMORY") : g_getenv("KVB_OPEN_MEMORY");
	if (open_mem && *open_mem)
		p->memory_open = !strcmp(open_mem, "1") || !g_ascii_strcasecmp(open_mem, "true");
	const char *anyp = envp ? g_environ_getenv(envp, "KVB_WINDOW_ANY_PEER")
				: g_getenv("KVB_WINDOW_ANY_PEER");
	if (anyp && *anyp)
		p->window_any_peer = !strcmp(anyp, "1") || !g_ascii_strcasecmp(anyp, "true");
	const char *bkeys = envp ? g_environ_getenv(envp, "KVB_RDMA_BUFFER_KEYS")
				 : g_getenv("KVB_RDMA_BUFFER_KEYS");
	if (bkeys && *bkeys)
		p->rdma_buffer_keys = !strcmp(bkeys, "1") || !g_ascii_strcasecmp(bkeys, "true");
	const char *allow = envp ? g_environ_getenv(envp, "KVB_ALLOW_PEERS") : g_getenv("KVB_ALLOW_PEERS");
	if (allow && *allow)
		p->allow_peers = allow; /* borrowed from the environment, parsed at open */
	const char *devs = envp ? g_environ_getenv(envp, "KVB_RDMA_DEVICES") : g_getenv("KVB_RDMA_DEVICES");
	if (devs)
		p->rdma_devices = devs; /* borrowed, copied at open */
	const char *force_tcp = envp ? g_environ_getenv(envp, "MC_FORCE_TCP") : g_getenv("MC_FORCE_TCP");
	if (force_tcp && (!strcmp(force_tcp, "1") || !g_ascii_strcasecmp(force_tcp, "true")))
		p->rdma_devices = NULL;
	/* vLLM's address of this node, then Mooncake's, more specific */
	const char *vhost = envp ? g_environ_getenv(envp, "VLLM_HOST_IP") : g_getenv("VLLM_HOST_IP");
	if (vhost && *vhost)
		p->host = vhost; /* borrowed from the environment, copied at open */
	const char *bind = envp ? g_environ_getenv(envp, "MC_TCP_BIND_ADDRESS")
				: g_getenv("MC_TCP_BIND_ADDRESS");
	if (bind && *bind)
		p->host = bind; /* borrowed from the environment, copied at open */
	if (rc == KVB_OK && p->rpc_port_min > p->rpc_port_max)
		rc = kvb_err_set(err, KVB_ERR_CONFIG, "MC_MIN_RPC_PORT %u > MC_MAX_RPC_PORT %u",
				 p->rpc_port_min, p->rpc_port_max);
	return rc;
}

