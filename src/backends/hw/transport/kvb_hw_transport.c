/*
 * The transport interface (kvb_hw_transport.h): what control protocols and
 * the vtable ask of the data path, routed to the TCP lanes, RDMA, or the
 * staging layer for GPU memory.
 */
#include "config.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>

#include "transport/kvb_hw_gpu.h"
#include "transport/kvb_hw_rdma.h"
#include "transport/kvb_hw_rdma_window.h"
#include "transport/kvb_hw_staging.h"
#include "transport/kvb_hw_tcp.h"
#include "transport/kvb_hw_transport.h"

/* ------------------------------------------------------------------------ */
/* open and close                                                           */

int hw_transport_open(hw_t *hw, kvb_err_t *err)
{
	kvb_hw_params_t *p = &hw->p;
	if (hw_tcp_server_start(hw, err) != KVB_OK)
		return err->code;
	if (hw_gpu_open(hw, err) != KVB_OK || hw_staging_open(hw, err) != KVB_OK)
		return err->code;
	if (p->rdma_devices && *p->rdma_devices) {
		g_strlcpy(hw->rdma_devices, p->rdma_devices, sizeof(hw->rdma_devices));
		p->rdma_devices = hw->rdma_devices;
		if (p->mtu && p->mtu != 512 && p->mtu != 1024 && p->mtu != 2048 && p->mtu != 4096)
			return kvb_err_set(err, KVB_ERR_CONFIG, "mtu %u: expected 512, 1024, 2048 or 4096",
					   p->mtu);
		if (p->qp_per_ep > KVB_MC_MAX_QP)
			return kvb_err_set(err, KVB_ERR_CONFIG, "qp_per_ep %u out of range 1..%u",
					   p->qp_per_ep, KVB_MC_MAX_QP);
		if (hw_rdma_open(hw, err) != KVB_OK)
			return err->code;
	} else {
		p->rdma_devices = NULL;
	}
	return KVB_OK;
}

void hw_transport_close(hw_t *hw)
{
	hw_tcp_server_stop(hw);
	/* copies into or out of registrations (and their mirrors) end first;
	 * mirrors are freed by the GPU code, the pool deregistered by RDMA */
	if (hw->mrs)
		for (guint i = 0; i < hw->mrs->len; i++) {
			hw_gpu_quiesce(hw, hw->mrs->pdata[i]);
			hw_rdma_mr_dereg(hw, hw->mrs->pdata[i]);
			g_free(hw->mrs->pdata[i]); /* left registered by the owner */
		}
	if (hw->mrs)
		g_ptr_array_set_size(hw->mrs, 0);
	hw_gpu_drain(hw);
	hw_staging_close(hw);
	hw_gpu_close(hw);
	hw_rdma_close(hw);
}

uint16_t hw_transport_data_port(hw_t *hw)
{
	return hw_tcp_server_port(hw);
}

/* ------------------------------------------------------------------------ */
/* NICs and memory                                                          */

uint32_t hw_nic_count(hw_t *hw)
{
	return hw->rdma ? hw_rdma_n_devices(hw) : hw->p.n_nics;
}

int hw_nic_query(hw_t *hw, uint32_t index, kvb_nic_info_t *info)
{
	if (index >= hw_nic_count(hw))
		return KVB_ERR_NOT_FOUND;
	memset(info, 0, sizeof(*info));
	if (hw->rdma)
		g_strlcpy(info->name, hw_rdma_device_name(hw, index), sizeof(info->name));
	else if (hw->nic_addrs[index][0])
		g_snprintf(info->name, sizeof(info->name), "tcp%u@%s", index, hw->nic_addrs[index]);
	else
		g_snprintf(info->name, sizeof(info->name), "tcp%u", index);
	info->bandwidth_bps = hw->p.nic_bandwidth_bps;
	info->numa_node = -1;
	return KVB_OK;
}

int hw_mem_register(hw_t *hw, void *addr, size_t len, const kvb_mem_attr_t *attr, void **mr,
		    kvb_rkey_t *rkey)
{
	if (!addr || !len || (uint64_t)(uintptr_t)addr + len < (uint64_t)(uintptr_t)addr) {
		hw_set_error(hw, "mr_reg: empty or wrapping range %p + %zu", addr, len);
		return KVB_ERR_INVALID;
	}
	if (attr && attr->kind != KVB_MEM_HOST && attr->kind != KVB_MEM_CUDA) {
		hw_set_error(hw, "mr_reg: unknown memory kind %d", (int)attr->kind);
		return KVB_ERR_INVALID;
	}
	hw_mr_t *m = g_new0(hw_mr_t, 1);
	m->addr = (uint64_t)(uintptr_t)addr;
	m->len = len;
	m->kind = attr ? attr->kind : KVB_MEM_HOST;
	m->device = attr ? attr->device : -1;
	kvb_err_t rerr;
	if (m->kind == KVB_MEM_CUDA) {
		if (hw_gpu_mr_check(hw, m, &rerr) != KVB_OK) {
			hw_set_error(hw, "mr_reg: %s", rerr.msg);
			g_free(m);
			return rerr.code;
		}
		/* TCP cannot reach device memory: staged; RDMA devices decide below */
		for (uint32_t i = 0; i < KVB_HW_MAX_NICS; i++)
			m->path[i] = KVB_HW_PATH_STAGING;
	}
	if (hw_rdma_mr_reg(hw, m, &rerr) != KVB_OK) {
		hw_set_error(hw, "mr_reg: %s", rerr.msg);
		g_free(m);
		return rerr.code;
	}
	m->id = ++hw->mr_seq;
	g_ptr_array_add(hw->mrs, m);
	if (m->kind == KVB_MEM_CUDA) {
		GString *line = g_string_new(NULL);
		for (uint32_t i = 0; i < hw_nic_count(hw); i++) {
			kvb_nic_info_t info;
			hw_nic_query(hw, i, &info);
			g_string_append_printf(line, "%s%s %s", i ? ", " : "", info.name,
					       kvb_hw_gpu_path_name((kvb_hw_gpu_path_t)m->path[i]));
		}
		hw_log(hw, "GPU memory 0x%" PRIx64 " + %" PRIu64 " (%s %d): %s", m->addr, m->len,
		       m->gpu_provider == HW_GPU_CUDA ? "cuda" : "emulated", m->device, line->str);
		g_string_free(line, TRUE);
	}
	*mr = m;
	if (rkey) {
		/* TCP needs no key: the peer's server checks ranges.  Carry the id so
		 * a mismatch shows in logs. */
		memset(rkey, 0, sizeof(*rkey));
		rkey->len = 4;
		memcpy(rkey->bytes, &m->id, 4);
	}
	return KVB_OK;
}

int hw_mem_deregister(hw_t *hw, void *mr)
{
	if (!mr || !g_ptr_array_remove(hw->mrs, mr)) {
		hw_set_error(hw, "mr_dereg: unknown registration");
		return KVB_ERR_NOT_FOUND;
	}
	/* peers writing into or reading from it lose their connection: no byte
	 * lands in memory that is no longer ours to serve */
	hw_tcp_server_drop_mr(hw, mr);
	hw_gpu_quiesce(hw, mr);
	hw_rdma_mr_dereg(hw, mr);
	g_free(mr);
	return KVB_OK;
}

char *hw_segment_json(hw_t *hw)
{
	kvb_mc_segment_t seg;
	memset(&seg, 0, sizeof(seg));
	g_strlcpy(seg.name, hw->segment, sizeof(seg.name));
	g_strlcpy(seg.protocol, "tcp", sizeof(seg.protocol));
	seg.tcp_data_port = hw_tcp_server_port(hw);
	g_strlcpy(seg.tcp_data_host, hw->host, sizeof(seg.tcp_data_host));
	seg.tcp_proto_version = hw->p.tcp_proto_version;
	/* where our TCP lanes come from, when we choose it: a consumer's windows
	 * for our pulls admit those addresses */
	for (uint32_t i = 0; i < hw_nic_count(hw) && i < KVB_HW_MAX_NICS; i++) {
		const char *a = hw->nic_addrs[i];
		unsigned char buf[sizeof(struct in6_addr)];
		if (*a && seg.n_tcp_sources < KVB_MC_MAX_SOURCES &&
		    (inet_pton(AF_INET, a, buf) == 1 || inet_pton(AF_INET6, a, buf) == 1))
			g_strlcpy(seg.tcp_sources[seg.n_tcp_sources++], a, KVB_MC_ADDR_TEXT_MAX);
	}
	GDateTime *now = g_date_time_new_now_local();
	char *ts = g_date_time_format(now, "%Y-%m-%d %H:%M:%S.%f");
	g_strlcpy(seg.timestamp, ts, sizeof(seg.timestamp));
	g_free(ts);
	g_date_time_unref(now);
	seg.n_buffers = hw->mrs->len;
	seg.buffers = g_new0(kvb_mc_buffer_t, seg.n_buffers ? seg.n_buffers : 1);
	for (guint i = 0; i < hw->mrs->len; i++) {
		hw_mr_t *m = hw->mrs->pdata[i];
		g_strlcpy(seg.buffers[i].name, hw->segment, sizeof(seg.buffers[i].name));
		seg.buffers[i].addr = m->addr;
		seg.buffers[i].length = m->len;
	}
	hw_rdma_describe(hw, &seg);
	GString *out = g_string_new(NULL);
	kvb_err_t err;
	if (kvb_mc_segment_to_json(&seg, out, &err) != KVB_OK) {
		hw_set_error(hw, "descriptor: %s", err.msg);
		g_string_assign(out, "{}");
	}
	kvb_mc_segment_clear(&seg);
	return g_string_free(out, FALSE);
}

/* ------------------------------------------------------------------------ */
/* links                                                                    */

void hw_link_init(hw_link_t *l, hw_t *hw, const char *name)
{
	memset(l, 0, sizeof(*l));
	l->hw = hw;
	g_strlcpy(l->name, name ? name : "", sizeof(l->name));
}

int hw_link_set_segment(hw_link_t *p, kvb_mc_segment_t *seg, const char *fallback_host,
			kvb_err_t *err)
{
	bool rdma = !strcmp(seg->protocol, "rdma");
	int rc = KVB_OK;
	if (rdma && !hw_rdma_n_devices(p->hw))
		rc = kvb_err_set(err, KVB_ERR_UNSUPPORTED,
				 "peer segment %s speaks rdma and this endpoint has no RDMA devices "
				 "(give it some: rdma_devices, KVB_RDMA_DEVICES, --rdma-devices)", seg->name);
	else if (rdma && !seg->n_devices)
		rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "peer segment %s speaks rdma but lists no devices",
				 seg->name);
	else if (!rdma && strcmp(seg->protocol, "tcp"))
		rc = kvb_err_set(err, KVB_ERR_UNSUPPORTED, "peer segment %s speaks '%s' (expected tcp or rdma)",
				 seg->name, seg->protocol);
	else if (!rdma && (!seg->tcp_data_port || seg->tcp_data_port > 65535))
		rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "peer segment %s: tcp_data_port %u", seg->name,
				 seg->tcp_data_port);
	else if (!rdma && hw_rdma_n_devices(p->hw))
		rc = kvb_err_set(err, KVB_ERR_UNSUPPORTED,
				 "peer segment %s speaks tcp and this endpoint moves data over RDMA "
				 "(run both sides with RDMA devices, or neither)", seg->name);
	if (rc != KVB_OK) {
		kvb_mc_segment_clear(seg);
		return rc;
	}
	kvb_mc_segment_clear(&p->seg);
	p->seg = *seg;
	memset(seg, 0, sizeof(*seg));
	p->have_seg = true;
	char host[KVB_MC_NAME_MAX];
	uint16_t port;
	if (p->seg.tcp_data_host[0])
		g_strlcpy(p->data_host, p->seg.tcp_data_host, sizeof(p->data_host));
	else if (kvb_mc_parse_host_port(p->seg.name, host, sizeof(host), &port, NULL) == KVB_OK)
		g_strlcpy(p->data_host, host, sizeof(p->data_host));
	else
		g_strlcpy(p->data_host, fallback_host, sizeof(p->data_host));
	p->data_port = (uint16_t)p->seg.tcp_data_port;
	p->data_v2 = p->seg.tcp_proto_version >= 2 && p->hw->p.tcp_proto_version >= 2;
	return KVB_OK;
}

int hw_link_post(hw_link_t *p, const kvb_slice_op_t *ops, size_t n, size_t *n_posted)
{
	hw_t *hw = p->hw;
	*n_posted = 0;
	if (p->down || !p->have_seg) {
		hw_set_error(hw, "xfer_post: connection %s is not up", p->name);
		return KVB_ERR_PEER;
	}
	for (size_t i = 0; i < n; i++) {
		const kvb_slice_op_t *op = &ops[i];
		hw_mr_t *m = hw_mr_find(hw, op->local_addr, op->len);
		if (!m) {
			hw_set_error(hw, "xfer_post: local range 0x%" PRIx64 " + %" PRIu64
					 " is not registered memory", op->local_addr, op->len);
			return KVB_ERR_RANGE;
		}
		int rc;
		if (m->kind == KVB_MEM_CUDA && op->local_nic < KVB_HW_MAX_NICS &&
		    m->path[op->local_nic] == KVB_HW_PATH_STAGING)
			rc = hw_staging_post(p, m, op);
		else
			rc = hw_staging_post_host(p, op, m);
		if (rc != KVB_OK)
			return rc;
		(*n_posted)++;
	}
	return KVB_OK;
}

void hw_link_down(hw_link_t *l, int status, bool retire)
{
	l->down = true;
	hw_lanes_fail(l, status);
	if (retire)
		hw_rdma_peer_gone(l);
	hw_staging_link_down(l);
}

void hw_link_clear(hw_link_t *l)
{
	hw_lanes_free(l);
	hw_rdma_link_clear(l);
	hw_link_window_keys_drop(l, NULL, NULL);
	hw_staging_link_clear(l);
	kvb_mc_segment_clear(&l->seg);
	l->have_seg = false;
}
