/*
 * Registered memory of the hw backend: the table every transport checks a
 * range against before a byte moves, and the fences of cancelled pulls.
 * Registration itself (GPU path choice, RDMA keys) is kvb_hw_transport.c's;
 * this file only keeps the table.
 */
#ifndef KVB_HW_MEM_H
#define KVB_HW_MEM_H

#include <stdbool.h>
#include <stdint.h>

#include <kvbridge/hw.h>
#include <kvbridge/layout.h>

#include "events/kvb_hw_events.h"

struct kvb_wire_pull;

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

/* Data-plane windows: what a remote peer may read or write of our memory
 * (unless params.memory_open).  A consumer opens one for each pull it sends
 * (its destination blocks, until the pull ends: owner, then key "transfer
 * id / request id"), bound to the addresses of the peer the pull went to
 * (peer: numeric addresses, comma-separated; NULL or "" = any, where the
 * pull's peer is known only by a name); kvb_hw_expose opens ranges for good, to anyone
 * allowed.  A READ or WRITE must lie inside one range of an open window of
 * its sender (params.window_any_peer: of anyone) or of an exposed range. */
void hw_window_open(hw_t *hw, const void *owner, const char *transfer_id, const char *request_id,
		    const GArray *ranges, const char *peer);
/* The same, with release(arg) run when the window closes (what was opened
 * with it: kvb_hw_rdma_window.c's keys). */
void hw_window_open_with(hw_t *hw, const void *owner, const char *transfer_id,
			 const char *request_id, const GArray *ranges, const char *peer,
			 void (*release)(void *), void *arg);
/* Close owner's window for that pull; transfer_id NULL: all of owner's. */
void hw_window_close(hw_t *hw, const void *owner, const char *transfer_id, const char *request_id);
typedef enum hw_window_verdict {
	HW_WINDOW_OPEN = 0,         /* inside a window of this sender, or exposed */
	HW_WINDOW_CLOSED = 1,       /* inside no window */
	HW_WINDOW_OTHER_PEER = 2,   /* inside a window of another peer only */
} hw_window_verdict_t;
/* sender: the numeric address the READ or WRITE came from; NULL = any. */
hw_window_verdict_t hw_window_check(hw_t *hw, uint64_t addr, uint64_t len, const char *sender);
static inline bool hw_window_allows(hw_t *hw, uint64_t addr, uint64_t len)
{
	return hw_window_check(hw, addr, len, NULL) == HW_WINDOW_OPEN;
}
/* The host of "tcp://HOST:PORT" (or "[v6]:PORT", "HOST:PORT") when it is a
 * numeric address, else "" (a name: the window then takes any sender). */
void hw_window_peer_of(const char *endpoint, char *out, size_t len);
void hw_windows_free(hw_t *hw);
/* Destination byte ranges of a pull (uint64_t pairs, block runs merged). */
GArray *hw_pull_ranges(const struct kvb_wire_pull *pull);

#endif /* KVB_HW_MEM_H */
