/*
 * kvbridge's own control protocol between connectors (wire version 1).
 *
 * Plain functions over buffers (UCX rc/base vs rc/verbs): no sockets, so the
 * codec is tested and fuzzed on its own.  Backends deliver whole messages;
 * this codec does not reassemble streams.
 *
 * Frame: 12-byte header, then the payload, all little-endian.
 *   magic "KVBW" | version u8 (1) | type u8 | reserved u16 (0) | payload_len u32
 * Strings: u16 length then bytes (no NUL, none inside), < KVB_ID_MAX bytes.
 *
 *   PULL (1)    consumer -> producer: "write these blocks of mine"
 *               transfer_id, request_id, tp_size u32, tp_rank u32, n_nics u32,
 *               n_regions u32, per region: base u64, stride u64, block_bytes u64,
 *               num_blocks u32, layer i32, group i32, mem_kind u32, device i32,
 *               rkey_len u32, rkey bytes;
 *               n_groups u32, per group: count u32, ids u32[count]
 *   STARTED (2) producer -> consumer: first slices are being posted
 *               transfer_id, request_id
 *   DONE (3)    producer -> consumer: this rank is finished with the pull
 *               transfer_id, request_id, status i32, bytes u64, reason string
 *   CANCEL (4)  consumer -> producer: stop (abort), or "I will not pull" (release)
 *               transfer_id, request_id
 *   HEARTBEAT (5) consumer -> producer: "this pull is still coming" (renews a
 *               heartbeat lease), transfer_id, request_id
 *
 * A decoder rejects anything it cannot trust with KVB_ERR_PROTOCOL and a
 * message naming the field: wrong magic or version, unknown type, lengths
 * that disagree with the frame, counts above the KVB_MAX_* limits, a status
 * outside the KVB_ERR_* range, trailing bytes.
 */
#ifndef KVB_WIRE_H
#define KVB_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include <glib.h>
#include <kvbridge/backend.h>
#include <kvbridge/connector.h>
#include <kvbridge/error.h>
#include <kvbridge/layout.h>

#define KVB_WIRE_MAGIC "KVBW"
#define KVB_WIRE_VERSION 1u
#define KVB_WIRE_HEADER_LEN 12u

typedef enum kvb_wire_type {
	KVB_WIRE_PULL = 1,
	KVB_WIRE_STARTED = 2,
	KVB_WIRE_DONE = 3,
	KVB_WIRE_CANCEL = 4,
	KVB_WIRE_HEARTBEAT = 5,
} kvb_wire_type_t;

/* A consumer's pull, decoded.  Owns its arrays. */
typedef struct kvb_wire_pull {
	char transfer_id[KVB_ID_MAX];
	char request_id[KVB_ID_MAX];
	uint32_t tp_size;
	uint32_t tp_rank;
	uint32_t n_nics;
	uint32_t n_regions;
	kvb_region_t *regions;
	kvb_rkey_t *rkeys;          /* one per region */
	uint32_t n_groups;
	kvb_block_list_t *groups;   /* ids point into `ids` */
	uint32_t *ids;
	uint64_t n_blocks;          /* sum of group counts */
} kvb_wire_pull_t;

/* STARTED, DONE, CANCEL and HEARTBEAT. */
typedef struct kvb_wire_notice {
	kvb_wire_type_t type;
	char transfer_id[KVB_ID_MAX];
	char request_id[KVB_ID_MAX];
	int32_t status;             /* DONE */
	uint64_t bytes;             /* DONE */
	char reason[KVB_REASON_MAX];/* DONE */
} kvb_wire_notice_t;

/* Read the header: type and payload length.  KVB_ERR_PROTOCOL when the
 * frame is short, the magic or version is wrong, or payload_len disagrees
 * with len. */
int kvb_wire_peek(const void *buf, size_t len, kvb_wire_type_t *type, kvb_err_t *err);

/* Read only the transfer and request ids that start every message's payload,
 * so that a reply can name the request even when the rest is malformed. */
int kvb_wire_peek_ids(const void *buf, size_t len, char *transfer_id, char *request_id);

/* Encoders append a whole frame to out. */
int kvb_wire_encode_pull(GByteArray *out, const kvb_wire_pull_t *pull, kvb_err_t *err);
int kvb_wire_encode_notice(GByteArray *out, const kvb_wire_notice_t *notice, kvb_err_t *err);
/* A notice of type with the fields given (strings cut to fit; reason NULL = ""). */
void kvb_wire_notice_fill(kvb_wire_notice_t *notice, kvb_wire_type_t type, const char *transfer_id,
			  const char *request_id, int status, uint64_t bytes, const char *reason);

/* Decoders fill *pull / *notice from a whole frame.  On failure nothing is
 * left allocated. */
int kvb_wire_decode_pull(const void *buf, size_t len, kvb_wire_pull_t *pull, kvb_err_t *err);
int kvb_wire_decode_notice(const void *buf, size_t len, kvb_wire_notice_t *notice,
			   kvb_err_t *err);

/* Release what a decoded pull owns (safe on a zeroed struct). */
void kvb_wire_pull_clear(kvb_wire_pull_t *pull);

const char *kvb_wire_type_name(kvb_wire_type_t type);

#endif /* KVB_WIRE_H */
