/*
 * Internals shared by the RDMA transport's two files: kvb_hw_rdma_dev.c
 * (devices, GIDs, memory registration, the descriptor) and kvb_hw_rdma.c
 * (endpoints, posting, completions, probes), which builds on it.
 */
#ifndef KVB_HW_RDMA_INT_H
#define KVB_HW_RDMA_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>
#include <infiniband/verbs.h>

#include "events/kvb_hw_events.h"
#include "transport/kvb_hw_mem.h"

#define RDMA_MAX_DEVICES KVB_HW_MAX_NICS

typedef struct hw_rdma hw_rdma_t;

typedef struct rdma_dev {
	hw_rdma_t *r;
	uint32_t index;
	char name[KVB_MC_DEVICE_NAME_MAX];
	struct ibv_context *ctx;
	struct ibv_pd *pd;
	struct ibv_comp_channel *ch;
	struct ibv_cq *cq;
	int cqe;
	hw_watch_t *w;
	uint8_t port;
	int gid_index;
	union ibv_gid gid;
	uint16_t lid;
	enum ibv_mtu mtu;            /* min(active, configured) */
	uint32_t max_qp_wr;
	hw_watch_t *async_w;
	bool port_down;              /* IBV_EVENT_PORT_ERR seen, no PORT_ACTIVE since */
} rdma_dev_t;


struct hw_rdma {
	hw_t *hw;
	uint32_t n_devs;
	rdma_dev_t devs[RDMA_MAX_DEVICES];
	/* kvb_hw_rdma.c */
	GHashTable *eps;                  /* key -> rdma_ep_t* */
	GQueue retired;                   /* rdma_ep_t* draining */
	GHashTable *ops;                  /* rdma_op_t* in flight (set) */
	hw_deadline_t *watchdog;          /* stalled endpoints, every second while busy */
	bool watchdog_armed;
	hw_deadline_t *prober;            /* liveness of peers with passive endpoints */
	bool prober_armed;
	GHashTable *probes;               /* peer server name -> peer_probe_t* */
};

/* mr->rdma: one ibv_mr* per device */
typedef struct rdma_mrs {
	struct ibv_mr *mr[RDMA_MAX_DEVICES];
	struct ibv_mr *mirror[RDMA_MAX_DEVICES]; /* GPU memory on a staging device */
	bool remote_open;            /* registered with remote access (else: windows) */
} rdma_mrs_t;

/* Deregister every key of mrs and free it. */

static inline hw_rdma_t *hw_rdma_of(hw_t *hw)
{
	return hw->rdma;
}

static inline int hw_rdma_mtu_bytes(enum ibv_mtu m)
{
	return m >= IBV_MTU_256 && m <= IBV_MTU_4096 ? 128 << m : 0;
}

/* Open the devices params.rdma_devices names ("auto": every one with an
 * ACTIVE port), filtered by MC_TE_FILTERS, into r->devs (PD, completion
 * channel, CQ; the caller watches their fds).  On failure the devices
 * opened so far stay in r->devs for hw_rdma_device_close. */
int hw_rdma_devices_open(hw_rdma_t *r, kvb_err_t *err);
void hw_rdma_device_close(rdma_dev_t *d);

#endif /* KVB_HW_RDMA_INT_H */
