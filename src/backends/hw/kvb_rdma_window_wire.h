/*
 * kvbridge stream frame KVB_MC_KVB_WINDOW (0x15): the RDMA keys of one
 * pull's destination blocks.  A consumer that keeps its registrations closed
 * to remote access (the default; docs/security.md) registers the blocks of
 * each pull it sends on each of its RDMA devices and sends their keys just
 * before the pull, on the same ordered stream; the producer writes with
 * them, and the consumer deregisters them when the pull ends, so a key is
 * good for those blocks during that pull only.  Never sent to Mooncake or
 * vLLM peers.  All integers little-endian:
 *
 *   u8 version (1) | u8 n_devices (1..64) | u16 transfer id length (1..127)
 *   | u16 request id length (0..127) | u32 n_ranges (1..KVB_WINDOW_MAX_RANGES)
 *   | transfer id | request id
 *   | n_ranges x (u64 addr | u64 len | n_devices x u32 rkey)
 *
 * Ranges are non-empty, do not wrap and are given in ascending, disjoint
 * order; an rkey of 0 means "no key on that device" (the producer then uses
 * the descriptor's).  The decoder refuses anything else with
 * KVB_ERR_PROTOCOL and a message naming the field, and leaves nothing
 * allocated.
 */
#ifndef KVB_RDMA_WINDOW_WIRE_H
#define KVB_RDMA_WINDOW_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include <glib.h>
#include <kvbridge/error.h>

#define KVB_WINDOW_VERSION 1u
#define KVB_WINDOW_MAX_DEVICES 64u
#define KVB_WINDOW_ID_MAX 128u          /* bytes including NUL (KVB_ID_MAX) */
#define KVB_WINDOW_MAX_RANGES 65536u
#define KVB_WINDOW_HEADER_LEN 10u

typedef struct kvb_window_keys {
	char transfer_id[KVB_WINDOW_ID_MAX];
	char request_id[KVB_WINDOW_ID_MAX];
	uint32_t n_devices;
	uint32_t n_ranges;
	uint64_t *ranges;   /* n_ranges pairs: addr, len */
	uint32_t *rkeys;    /* n_ranges x n_devices, range by range */
} kvb_window_keys_t;

/* Appends the frame payload to out; KVB_ERR_INVALID when w breaks a rule
 * above (nothing appended). */
int kvb_window_keys_encode(GByteArray *out, const kvb_window_keys_t *w, kvb_err_t *err);
int kvb_window_keys_decode(const uint8_t *in, size_t len, kvb_window_keys_t *w, kvb_err_t *err);
void kvb_window_keys_clear(kvb_window_keys_t *w);

/* The rkey that covers [addr, addr + len) on device dev, or 0. */
uint32_t kvb_window_keys_find(const kvb_window_keys_t *w, uint64_t addr, uint64_t len, uint32_t dev);

#endif /* KVB_RDMA_WINDOW_WIRE_H */
