/*
 * The RDMA transport's devices and memory (kvb_hw_rdma_int.h): opening
 * the devices params.rdma_devices names, GID choice, registrations on every
 * device (GPU memory: dma-buf, peer memory, or a pinned host mirror) and
 * the descriptor's rdma part.  Endpoints and posting are kvb_hw_rdma.c's.
 *
 *  - Devices: the names in params.rdma_devices (comma list; "auto" = every
 *    device with an ACTIVE port), filtered by MC_TE_FILTERS.  Per device one
 *    PD, one completion channel and one CQ.
 *  - GID: params.gid_index (MC_GID_INDEX), or the first RoCE v2 entry with
 *    an IPv4-mapped address, then any RoCE v2 entry, then index 0.
 *  - Memory: every registration on every device; the descriptor publishes
 *    one rkey/lkey per device, in devices[] order.  Host memory is
 *    registered without remote access unless params.memory_open or
 *    rdma_buffer_keys: its rkey is published as 0, and peers write through
 *    per-pull windows (kvb_hw_rdma_window.c).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>
#include <infiniband/verbs.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/hw.h>

#include "transport/kvb_hw_gpu.h"
#include "transport/kvb_hw_rdma_dev.h"
#include "transport/kvb_hw_rdma_int.h"

#define R hw_rdma_of

static void hw_rdma_mr_dereg_keys(hw_rdma_t *r, rdma_mrs_t *mrs)
{
	for (uint32_t i = 0; i < r->n_devs; i++) {
		if (mrs->mr[i])
			ibv_dereg_mr(mrs->mr[i]);
		if (mrs->mirror[i])
			ibv_dereg_mr(mrs->mirror[i]);
	}
	g_free(mrs);
}

uint32_t hw_rdma_n_devices(hw_t *hw)
{
	return R(hw) ? R(hw)->n_devs : 0;
}

const char *hw_rdma_device_name(hw_t *hw, uint32_t i)
{
	return R(hw) && i < R(hw)->n_devs ? R(hw)->devs[i].name : NULL;
}

/* ------------------------------------------------------------------------ */
/* devices                                                                  */

static enum ibv_mtu mtu_enum(uint32_t bytes)
{
	switch (bytes) {
	case 256: return IBV_MTU_256;
	case 512: return IBV_MTU_512;
	case 1024: return IBV_MTU_1024;
	case 2048: return IBV_MTU_2048;
	default: return IBV_MTU_4096;
	}
}

/* Mooncake's auto rule, simplified: RoCE v2 with an IPv4-mapped address
 * first, then any RoCE v2 (or IB) entry, then the first non-null one. */
static int pick_gid(rdma_dev_t *d, int gid_tbl_len, int forced, kvb_err_t *err)
{
	if (forced >= 0) {
		if (forced >= gid_tbl_len || ibv_query_gid(d->ctx, d->port, forced, &d->gid))
			return kvb_err_set(err, KVB_ERR_CONFIG, "%s: gid index %d is not in its table (%d entries)",
					   d->name, forced, gid_tbl_len);
		d->gid_index = forced;
		return KVB_OK;
	}
	int best = -1, best_rank = 99;
	for (int i = 0; i < gid_tbl_len; i++) {
		struct ibv_gid_entry e;
		if (ibv_query_gid_ex(d->ctx, d->port, (uint32_t)i, &e, 0))
			continue;
		static const uint8_t zero[16];
		if (!memcmp(e.gid.raw, zero, 16))
			continue;
		static const uint8_t v4map[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
		int rank;
		if (e.gid_type == IBV_GID_TYPE_ROCE_V2 && !memcmp(e.gid.raw, v4map, 12))
			rank = 0;
		else if (e.gid_type == IBV_GID_TYPE_ROCE_V2 || e.gid_type == IBV_GID_TYPE_IB)
			rank = 1;
		else
			rank = 2;
		if (rank < best_rank) {
			best_rank = rank;
			best = i;
		}
	}
	if (best < 0)
		return kvb_err_set(err, KVB_ERR_TRANSPORT, "%s port %u: no usable GID (is the netdev up "
				   "with an address?)", d->name, d->port);
	d->gid_index = best;
	ibv_query_gid(d->ctx, d->port, best, &d->gid);
	return KVB_OK;
}

static int dev_open(hw_rdma_t *r, struct ibv_device *ibdev, kvb_err_t *err)
{
	const kvb_hw_params_t *p = hw_params(r->hw);
	rdma_dev_t *d = &r->devs[r->n_devs];
	memset(d, 0, sizeof(*d));
	d->r = r;
	d->index = r->n_devs;
	g_strlcpy(d->name, ibv_get_device_name(ibdev), sizeof(d->name));
	d->port = (uint8_t)(p->ib_port ? p->ib_port : 1);
	d->ctx = ibv_open_device(ibdev);
	if (!d->ctx)
		return kvb_err_set(err, KVB_ERR_TRANSPORT, "%s: ibv_open_device: %s", d->name, g_strerror(errno));
	struct ibv_device_attr da;
	struct ibv_port_attr pa;
	if (ibv_query_device(d->ctx, &da) || ibv_query_port(d->ctx, d->port, &pa)) {
		kvb_err_set(err, KVB_ERR_TRANSPORT, "%s: query device/port %u: %s", d->name, d->port,
			    g_strerror(errno));
		goto fail;
	}
	if (pa.state != IBV_PORT_ACTIVE) {
		kvb_err_set(err, KVB_ERR_TRANSPORT, "%s port %u is %s, not ACTIVE", d->name, d->port,
			    ibv_port_state_str(pa.state));
		goto fail;
	}
	d->lid = pa.lid;
	d->mtu = MIN(pa.active_mtu, mtu_enum(p->mtu ? p->mtu : 4096));
	d->max_qp_wr = (uint32_t)da.max_qp_wr;
	if (pick_gid(d, pa.gid_tbl_len, p->gid_index, err) != KVB_OK)
		goto fail;
	d->pd = ibv_alloc_pd(d->ctx);
	d->ch = d->pd ? ibv_create_comp_channel(d->ctx) : NULL;
	d->cqe = MIN(da.max_cqe, 4096);
	d->cq = d->ch ? ibv_create_cq(d->ctx, d->cqe, d, d->ch, 0) : NULL;
	if (!d->cq || ibv_req_notify_cq(d->cq, 0)) {
		kvb_err_set(err, KVB_ERR_TRANSPORT, "%s: PD/CQ setup: %s", d->name, g_strerror(errno));
		goto fail;
	}
	int fl = fcntl(d->ch->fd, F_GETFL);
	fcntl(d->ch->fd, F_SETFL, fl | O_NONBLOCK);
	fl = fcntl(d->ctx->async_fd, F_GETFL);
	fcntl(d->ctx->async_fd, F_SETFL, fl | O_NONBLOCK);
	char gid[KVB_MC_GID_TEXT_LEN + 1];
	kvb_mc_gid_format(d->gid.raw, gid);
	hw_log(r->hw, "rdma device %s: port %u, gid[%d] %s, lid %u, mtu %d", d->name, d->port,
	       d->gid_index, gid, d->lid, hw_rdma_mtu_bytes(d->mtu));
	r->n_devs++;
	return KVB_OK;
fail:
	if (d->cq)
		ibv_destroy_cq(d->cq);
	if (d->ch)
		ibv_destroy_comp_channel(d->ch);
	if (d->pd)
		ibv_dealloc_pd(d->pd);
	ibv_close_device(d->ctx);
	memset(d, 0, sizeof(*d));
	return err ? err->code : KVB_ERR_TRANSPORT;
}

static bool name_listed(const char *list, const char *name)
{
	if (!list || !*list)
		return true;
	gchar **v = g_strsplit(list, ",", -1);
	bool found = false;
	for (gchar **s = v; *s && !found; s++)
		found = !strcmp(g_strstrip(*s), name);
	g_strfreev(v);
	return found;
}

int hw_rdma_devices_open(hw_rdma_t *r, kvb_err_t *err)
{
	hw_t *hw = r->hw;
	const kvb_hw_params_t *p = hw_params(hw);
	int n = 0;
	struct ibv_device **list = ibv_get_device_list(&n);
	if (!list) {
		return kvb_err_set(err, KVB_ERR_TRANSPORT, "ibv_get_device_list: %s (no RDMA devices "
				   "or no rdma-core provider)", g_strerror(errno));
	}
	bool all = !strcmp(p->rdma_devices, "auto");
	const char *filters = g_getenv("MC_TE_FILTERS");
	int rc = KVB_OK;
	/* in the order given (devices[] order is the NIC numbering) */
	gchar **want = all ? NULL : g_strsplit(p->rdma_devices, ",", -1);
	for (guint k = 0; rc == KVB_OK && (all ? k < (guint)n : want[k] != NULL); k++) {
		struct ibv_device *dev = NULL;
		if (all) {
			dev = list[k];
		} else {
			const char *nm = g_strstrip(want[k]);
			for (int i = 0; i < n && !dev; i++)
				if (!strcmp(ibv_get_device_name(list[i]), nm))
					dev = list[i];
			if (!dev) {
				GString *have = g_string_new(NULL);
				for (int i = 0; i < n; i++)
					g_string_append_printf(have, "%s%s", i ? ", " : "", ibv_get_device_name(list[i]));
				rc = kvb_err_set(err, KVB_ERR_CONFIG, "RDMA device %s not found (have: %s)", nm,
						 have->len ? have->str : "none");
				g_string_free(have, TRUE);
				break;
			}
		}
		if (!name_listed(filters, ibv_get_device_name(dev)))
			continue;
		if (r->n_devs == RDMA_MAX_DEVICES) {
			rc = kvb_err_set(err, KVB_ERR_CONFIG, "more than %u RDMA devices", RDMA_MAX_DEVICES);
			break;
		}
		kvb_err_t e2;
		int drc = dev_open(r, dev, &e2);
		if (drc != KVB_OK) {
			if (all) { /* auto: skip devices that cannot serve */
				hw_log(hw, "skipping %s: %s", ibv_get_device_name(dev), e2.msg);
				continue;
			}
			rc = kvb_err_set(err, drc, "%s", e2.msg);
		}
	}
	g_strfreev(want);
	ibv_free_device_list(list);
	if (rc == KVB_OK && r->n_devs == 0)
		rc = kvb_err_set(err, KVB_ERR_TRANSPORT, "no usable RDMA device (%s%s)",
				 all ? "none has an ACTIVE port" : "all filtered out by MC_TE_FILTERS",
				 n == 0 ? "; ibv_get_device_list found none" : "");
	return rc;
}

void hw_rdma_device_close(rdma_dev_t *d)
{
	ibv_destroy_cq(d->cq);
	ibv_destroy_comp_channel(d->ch);
	ibv_dealloc_pd(d->pd);
	ibv_close_device(d->ctx);
}

/* ------------------------------------------------------------------------ */
/* memory                                                                   */

/* Device memory on one device: dma-buf, then peer memory; NULL (and the
 * reasons in why) when the NIC cannot reach it and the path is staging. */
static struct ibv_mr *reg_gpu(hw_t *hw, rdma_dev_t *d, hw_mr_t *m, int access, uint8_t *path,
			      char *why, size_t why_len)
{
	char dmabuf_why[160];
	int fd = -1;
	if (hw_gpu_dmabuf(hw, m, &fd, dmabuf_why, sizeof(dmabuf_why)) == KVB_OK) {
		struct ibv_mr *mr = ibv_reg_dmabuf_mr(d->pd, 0, m->len, m->addr, fd, access);
		int e = errno;
		close(fd);
		if (mr) {
			*path = KVB_HW_PATH_DMABUF;
			return mr;
		}
		g_snprintf(dmabuf_why, sizeof(dmabuf_why), "ibv_reg_dmabuf_mr: %s", g_strerror(e));
	}
	if (m->gpu_provider == HW_GPU_CUDA) {
		struct ibv_mr *mr = ibv_reg_mr(d->pd, (void *)(uintptr_t)m->addr, m->len, access);
		if (mr) {
			*path = KVB_HW_PATH_PEERMEM;
			return mr;
		}
		g_snprintf(why, why_len, "%s; ibv_reg_mr on device memory: %s (no peer memory client)",
			   dmabuf_why, g_strerror(errno));
	} else {
		g_snprintf(why, why_len, "%s", dmabuf_why);
	}
	*path = KVB_HW_PATH_STAGING;
	return NULL;
}

int hw_rdma_mr_reg(hw_t *hw, hw_mr_t *m, kvb_err_t *err)
{
	hw_rdma_t *r = R(hw);
	if (!r)
		return KVB_OK;
	rdma_mrs_t *mrs = g_new0(rdma_mrs_t, 1);
	/* host memory is closed to remote access unless asked: peers reach the
	 * blocks of a pull through its window (kvb_hw_rdma_window.c) */
	mrs->remote_open = hw->p.memory_open || hw->p.rdma_buffer_keys || m->kind == KVB_MEM_CUDA;
	int access = IBV_ACCESS_LOCAL_WRITE;
	if (mrs->remote_open)
		access |= IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
	if (m->kind == KVB_MEM_CUDA) {
		for (uint32_t i = 0; i < r->n_devs; i++) {
			char why[400];
			mrs->mr[i] = reg_gpu(hw, &r->devs[i], m, access, &m->path[i], why, sizeof(why));
			if (mrs->mr[i])
				continue;
			hw_log(hw, "%s cannot reach GPU memory at 0x%" PRIx64 ": staging (%s)",
			       r->devs[i].name, m->addr, why);
			/* peers write and read a pinned mirror at the GPU addresses */
			if (!m->mirror && !(m->mirror = hw_gpu_host_alloc(hw, m->len))) {
				hw_rdma_mr_dereg_keys(r, mrs);
				return kvb_err_set(err, KVB_ERR_NO_RESOURCE,
						   "no pinned host memory for the %" PRIu64 "-byte mirror %s "
						   "needs to reach GPU memory (staging)", m->len, r->devs[i].name);
			}
			mrs->mirror[i] = ibv_reg_mr_iova(r->devs[i].pd, m->mirror, m->len, m->addr, access);
			if (!mrs->mirror[i]) {
				int e = errno;
				hw_rdma_mr_dereg_keys(r, mrs);
				hw_gpu_host_free(hw, m->mirror);
				m->mirror = NULL;
				return kvb_err_set(err, KVB_ERR_NO_RESOURCE,
						   "ibv_reg_mr_iova of the GPU mirror on %s: %s", r->devs[i].name,
						   g_strerror(e));
			}
		}
		m->rdma = mrs;
		return KVB_OK;
	}
	for (uint32_t i = 0; i < r->n_devs; i++) {
		mrs->mr[i] = ibv_reg_mr(r->devs[i].pd, (void *)(uintptr_t)m->addr, m->len, access);
		if (!mrs->mr[i]) {
			int e = errno;
			for (uint32_t j = 0; j < i; j++)
				ibv_dereg_mr(mrs->mr[j]);
			g_free(mrs);
			return kvb_err_set(err, KVB_ERR_NO_RESOURCE, "ibv_reg_mr on %s (%" PRIu64 " bytes): %s%s",
					   r->devs[i].name, m->len, g_strerror(e),
					   e == ENOMEM || e == EPERM ? " (raise RLIMIT_MEMLOCK: ulimit -l)" : "");
		}
		hw_log(hw, "registered 0x%" PRIx64 " + %" PRIu64 " on %s: rkey 0x%x lkey 0x%x (%s)", m->addr,
		       m->len, r->devs[i].name, mrs->mr[i]->rkey, mrs->mr[i]->lkey,
		       mrs->remote_open ? "open to peers" : "closed to remote access");
	}
	m->rdma = mrs;
	return KVB_OK;
}

int hw_rdma_mr_reg_local(hw_t *hw, hw_mr_t *m, kvb_err_t *err)
{
	hw_rdma_t *r = R(hw);
	if (!r)
		return KVB_OK;
	rdma_mrs_t *mrs = g_new0(rdma_mrs_t, 1);
	for (uint32_t i = 0; i < r->n_devs; i++) {
		mrs->mr[i] = ibv_reg_mr(r->devs[i].pd, (void *)(uintptr_t)m->addr, m->len,
					IBV_ACCESS_LOCAL_WRITE);
		if (!mrs->mr[i]) {
			int e = errno;
			for (uint32_t j = 0; j < i; j++)
				ibv_dereg_mr(mrs->mr[j]);
			g_free(mrs);
			return kvb_err_set(err, KVB_ERR_NO_RESOURCE, "ibv_reg_mr (staging pool) on %s: %s",
					   r->devs[i].name, g_strerror(e));
		}
	}
	m->rdma = mrs;
	return KVB_OK;
}

void hw_rdma_mr_dereg(hw_t *hw, hw_mr_t *m)
{
	hw_rdma_t *r = R(hw);
	rdma_mrs_t *mrs = m->rdma;
	if (!r || !mrs)
		return;
	hw_rdma_mr_dereg_keys(r, mrs);
	m->rdma = NULL;
	if (m->mirror) {
		hw_gpu_host_free(hw, m->mirror);
		m->mirror = NULL;
	}
}

void hw_rdma_describe(hw_t *hw, kvb_mc_segment_t *seg)
{
	hw_rdma_t *r = R(hw);
	if (!r)
		return;
	g_strlcpy(seg->protocol, "rdma", sizeof(seg->protocol));
	seg->tcp_data_port = 0;
	seg->n_devices = r->n_devs;
	seg->devices = g_new0(kvb_mc_device_t, r->n_devs);
	for (uint32_t i = 0; i < r->n_devs; i++) {
		g_strlcpy(seg->devices[i].name, r->devs[i].name, sizeof(seg->devices[i].name));
		seg->devices[i].lid = r->devs[i].lid;
		memcpy(seg->devices[i].gid, r->devs[i].gid.raw, 16);
	}
	for (uint32_t b = 0; b < seg->n_buffers; b++) {
		hw_mr_t *m = hw_mr_find(hw, seg->buffers[b].addr, seg->buffers[b].length);
		rdma_mrs_t *mrs = m ? m->rdma : NULL;
		g_strlcpy(seg->buffers[b].name, "cpu:0", sizeof(seg->buffers[b].name));
		seg->buffers[b].n_keys = r->n_devs;
		seg->buffers[b].rkey = g_new0(uint32_t, r->n_devs);
		seg->buffers[b].lkey = g_new0(uint32_t, r->n_devs);
		for (uint32_t i = 0; mrs && i < r->n_devs; i++) {
			if (mrs->mirror[i]) {
				/* GPU memory this NIC cannot reach: key 0 for Mooncake, the
				 * mirror's for kvbridge peers */
				if (!seg->buffers[b].mirror_rkey)
					seg->buffers[b].mirror_rkey = g_new0(uint32_t, r->n_devs);
				seg->buffers[b].mirror_rkey[i] = mrs->mirror[i]->rkey;
			}
			if (!mrs->mr[i])
				continue;
			seg->buffers[b].rkey[i] = mrs->remote_open ? mrs->mr[i]->rkey : 0;
			seg->buffers[b].lkey[i] = mrs->mr[i]->lkey;
		}
	}
	seg->n_locations = 1;
	seg->locations = g_new0(kvb_mc_location_t, 1);
	g_strlcpy(seg->locations[0].name, "cpu:0", sizeof(seg->locations[0].name));
	seg->locations[0].n_preferred = r->n_devs;
	for (uint32_t i = 0; i < r->n_devs; i++)
		seg->locations[0].preferred[i] = i;
}

