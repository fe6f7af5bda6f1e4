/*
 * vLLM MooncakeConnector side channel, as plain functions over buffers (no
 * ZMQ here: the backend owns the sockets), so the codec is unit-tested and
 * fuzzed on its own.  Notes: ../shared/research/vllm-mooncake-connector.md
 * sections 2.5, 2.7, 6, 9.
 *
 * Versioned by generation.  Gen 0 is what this release speaks (vllm#24718,
 * the vLLM docs "MooncakeConnector Usage Guide", Dec 2025):
 *  - each producer worker binds a ZMQ ROUTER at
 *    VLLM_MOONCAKE_BOOTSTRAP_PORT + dp_rank * tp_size + tp_rank;
 *  - the decoder sends one msgpack message, a map keyed by field name in
 *    declaration order (msgspec Struct, omit_defaults):
 *      MooncakeAgentMetadata { remote_hostname: str, remote_port: int,
 *        request_ids: [str], kv_caches_base_addr: [uint64],
 *        block_ids: [[int]] }   (one block list per request id)
 *    where remote_hostname:remote_port is the decoder's Mooncake TE segment;
 *  - a REQ client's message reaches the ROUTER as [identity, "", payload],
 *    a DEALER client's as [identity, payload]; the reply is the raw bytes
 *    "trans_done" or "trans_error" with the same envelope.
 * Gen 1+ (vllm#31034: HTTP bootstrap, transfer_id, MooncakeXferMetadata and
 * MooncakeXferResponse with FINISH/CONTINUE/ERROR) slots in as another
 * kvb_vllm_gen_t; kvb_vllm_meta_decode refuses generations it does not know.
 *
 * Decoders are tolerant where msgspec is (unknown keys ignored, keys in any
 * order) and strict where the producer must be: a missing required key, a
 * wrong type, a negative or > UINT32_MAX block id, a negative port or one
 * above 65535, request_ids and block_ids of different lengths, empty or
 * over-long ids, counts above the KVB_VLLM_MAX_* limits, trailing bytes.
 * Each gets KVB_ERR_PROTOCOL with a message naming the field.
 */
#ifndef KVB_VLLM_WIRE_H
#define KVB_VLLM_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>
#include <kvbridge/error.h>

#define KVB_VLLM_HOST_MAX 256u        /* remote_hostname bytes incl. NUL */
#define KVB_VLLM_ID_MAX 128u          /* request id bytes incl. NUL (= KVB_ID_MAX) */
#define KVB_VLLM_MAX_REQUESTS 4096u   /* request ids per message */
#define KVB_VLLM_MAX_BASES 4096u      /* kv_caches_base_addr entries */
#define KVB_VLLM_MAX_BLOCKS (1u << 22) /* block ids per message, all requests */

typedef enum kvb_vllm_gen {
	KVB_VLLM_GEN0 = 0,            /* vllm#24718: MooncakeAgentMetadata over REQ/ROUTER */
} kvb_vllm_gen_t;

/* Gen 0 MooncakeAgentMetadata, decoded.  Owns its arrays. */
typedef struct kvb_vllm_meta {
	char remote_hostname[KVB_VLLM_HOST_MAX];
	uint16_t remote_port;
	uint32_t n_requests;
	char (*request_ids)[KVB_VLLM_ID_MAX]; /* n_requests ids */
	uint32_t *block_counts;               /* n_requests counts */
	uint32_t *block_offsets;              /* n_requests: index of each request's first id */
	uint32_t *block_ids;                  /* all ids, request after request */
	uint64_t n_block_ids;
	uint32_t n_bases;
	uint64_t *kv_caches_base_addr;        /* n_bases addresses */
} kvb_vllm_meta_t;

/* Decode a payload of generation gen.  On failure nothing stays allocated. */
int kvb_vllm_meta_decode(kvb_vllm_gen_t gen, const void *buf, size_t len, kvb_vllm_meta_t *meta,
			 kvb_err_t *err);

/* Encode as a vLLM decoder of generation gen would (map, declaration order). */
int kvb_vllm_meta_encode(kvb_vllm_gen_t gen, GByteArray *out, const kvb_vllm_meta_t *meta,
			 kvb_err_t *err);

/* Build a meta by hand: kvb_vllm_meta_init sets the header fields and
 * copies the bases; kvb_vllm_meta_add_request appends one request and its
 * block ids (copied). */
int kvb_vllm_meta_init(kvb_vllm_meta_t *meta, const char *remote_hostname, uint16_t remote_port,
		       const uint64_t *bases, uint32_t n_bases, kvb_err_t *err);
int kvb_vllm_meta_add_request(kvb_vllm_meta_t *meta, const char *request_id,
			      const uint32_t *block_ids, uint32_t n_blocks, kvb_err_t *err);

/* Release what a meta owns (safe on a zeroed or cleared struct). */
void kvb_vllm_meta_clear(kvb_vllm_meta_t *meta);

/*
 * The transfer a Gen 0 decoder's request id names.  Gen 0 keys transfers by
 * vLLM's internal request id, "cmpl-<X-Request-Id>-<i>" in 0.13.0; from
 * 0.14.0 each engine appends its own "-<8 hex>" (vllm#27987), so a 0.14 or
 * 0.15 decoder's "cmpl-R-0-1a2b3c4d" names what its producer knows as
 * "cmpl-R-0" (a proxy never sees either suffix).  The suffix, when there is
 * one (eight lowercase hex digits after "-<digits>-"), is dropped; any other
 * id is its own transfer id.  out gets at most out_len - 1 bytes.
 */
void kvb_vllm_gen0_transfer_id(const char *request_id, char *out, size_t out_len);

/* ---- replies (Gen 0: raw bytes) ----------------------------------------- */

#define KVB_VLLM_TRANS_DONE "trans_done"
#define KVB_VLLM_TRANS_ERROR "trans_error"

typedef enum kvb_vllm_reply {
	KVB_VLLM_REPLY_DONE = 0,
	KVB_VLLM_REPLY_ERROR = 1,
} kvb_vllm_reply_t;

/* Bytes of a reply (static, not NUL-counted in *len). */
const char *kvb_vllm_reply_bytes(kvb_vllm_gen_t gen, kvb_vllm_reply_t reply, size_t *len);

/* Parse a reply; anything but the two known byte strings is refused. */
int kvb_vllm_reply_decode(kvb_vllm_gen_t gen, const void *buf, size_t len,
			  kvb_vllm_reply_t *reply, kvb_err_t *err);

/* ---- ZMQ envelopes ------------------------------------------------------ */

typedef enum kvb_vllm_envelope {
	KVB_VLLM_ENV_DEALER = 0,  /* [identity, payload] */
	KVB_VLLM_ENV_REQ = 1,     /* [identity, "", payload] */
} kvb_vllm_envelope_t;

/* Classify the frames a ROUTER received (sizes of each frame): 2 frames is
 * a DEALER message, 3 frames with an empty second frame a REQ message;
 * *payload_index is the payload frame.  Anything else (1 frame, 3 frames
 * with a non-empty delimiter, 4 or more, an empty identity) is refused. */
int kvb_vllm_envelope_classify(const size_t *frame_sizes, size_t n_frames,
			       kvb_vllm_envelope_t *env, size_t *payload_index, kvb_err_t *err);

#endif /* KVB_VLLM_WIRE_H */
