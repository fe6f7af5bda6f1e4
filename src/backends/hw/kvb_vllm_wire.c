/*
 * vLLM MooncakeConnector side channel, Gen 0: MooncakeAgentMetadata as
 * msgspec writes it, replies, and ZMQ envelopes (kvb_vllm_wire.h).
 *
 * Decoding runs in two passes.  msgpack-c allocates zone memory for every
 * array and map as soon as it reads the header, sized by the count the
 * header declares (24 bytes an element, up to 2^32 elements), before a
 * single element has arrived; a five-byte input can ask it for 96 GiB.  So
 * mp_scan first walks the bytes without allocating and proves that the
 * input is exactly one complete object, no deeper than VLLM_MAX_DEPTH, and
 * that every declared count is backed by bytes that are really there.  Only
 * then does msgpack_unpack_next build the object tree, and its zone is
 * bounded by about 24 bytes per input byte.
 */
#include "config.h"

#include <inttypes.h>
#include <string.h>

#include <msgpack.h>

#include "kvb_vllm_wire.h"

/* Gen 0 needs a depth of 3 (map, block_ids, one block list); unknown keys
 * may carry deeper values, but nothing a vLLM fork sends comes near this.
 * msgpack-c itself stops at MSGPACK_EMBED_STACK_SIZE (32). */
#define VLLM_MAX_DEPTH 16

typedef char vllm_id_t[KVB_VLLM_ID_MAX]; /* one element of meta->request_ids */

static const char *const gen0_keys[] = {
	"remote_hostname", "remote_port", "request_ids", "kv_caches_base_addr", "block_ids",
};
#define GEN0_NKEYS (sizeof(gen0_keys) / sizeof(gen0_keys[0]))

static int gen_check(kvb_vllm_gen_t gen, kvb_err_t *err)
{
	if (gen != KVB_VLLM_GEN0)
		return kvb_err_set(err, KVB_ERR_UNSUPPORTED, "vLLM side-channel generation %d unknown",
				   (int)gen);
	return KVB_OK;
}

/* ---- pass 1: structure without allocation -------------------------------- */

static uint64_t be_read(const uint8_t *p, unsigned n)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

/*
 * Walk one msgpack object at buf[0, len) iteratively (no recursion, so no
 * stack to exhaust) and refuse it unless it ends exactly at len.  A
 * container's count is checked against the bytes left before it is pushed:
 * each array element needs at least one byte and each map entry two, so
 * the counts of all containers together never exceed len.
 */
static int mp_scan(const uint8_t *p, size_t len, kvb_err_t *err)
{
	uint64_t left[VLLM_MAX_DEPTH + 1];
	int depth = 0;
	size_t off = 0;
	left[0] = 1;
	for (;;) {
		while (depth > 0 && left[depth] == 0)
			depth--;
		if (left[depth] == 0)
			break;
		left[depth]--;
		if (off >= len)
			goto truncated;
		size_t at = off;
		uint8_t b = p[off++];
		uint64_t skip = 0, items = 0;
		unsigned lenb = 0; /* bytes of a big-endian length that follows */
		uint64_t extra = 0; /* bytes after the length (ext type byte) */
		int kind = 0;       /* 0 scalar/blob, 1 array, 2 map */
		if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
			skip = 0;
		} else if (b <= 0x8f) {
			kind = 2;
			items = b & 0x0f;
		} else if (b <= 0x9f) {
			kind = 1;
			items = b & 0x0f;
		} else if (b <= 0xbf) {
			skip = b & 0x1f;
		} else {
			switch (b) {
			case 0xc4: case 0xd9: lenb = 1; break;          /* bin8, str8 */
			case 0xc5: case 0xda: lenb = 2; break;          /* bin16, str16 */
			case 0xc6: case 0xdb: lenb = 4; break;          /* bin32, str32 */
			case 0xc7: lenb = 1; extra = 1; break;          /* ext8 */
			case 0xc8: lenb = 2; extra = 1; break;          /* ext16 */
			case 0xc9: lenb = 4; extra = 1; break;          /* ext32 */
			case 0xca: skip = 4; break;                     /* float32 */
			case 0xcb: skip = 8; break;                     /* float64 */
			case 0xcc: case 0xd0: skip = 1; break;
			case 0xcd: case 0xd1: skip = 2; break;
			case 0xce: case 0xd2: skip = 4; break;
			case 0xcf: case 0xd3: skip = 8; break;
			case 0xd4: skip = 2; break;                     /* fixext1 .. 16 */
			case 0xd5: skip = 3; break;
			case 0xd6: skip = 5; break;
			case 0xd7: skip = 9; break;
			case 0xd8: skip = 17; break;
			case 0xdc: kind = 1; lenb = 2; break;
			case 0xdd: kind = 1; lenb = 4; break;
			case 0xde: kind = 2; lenb = 2; break;
			case 0xdf: kind = 2; lenb = 4; break;
			default:
				return kvb_err_set(err, KVB_ERR_PROTOCOL,
						   "MooncakeAgentMetadata: byte 0x%02x at offset %zu is not "
						   "a msgpack type", b, at);
			}
		}
		if (lenb) {
			if (len - off < lenb)
				goto truncated;
			uint64_t n = be_read(p + off, lenb);
			off += lenb;
			if (kind)
				items = n;
			else
				skip = n + extra;
		}
		if (!kind) {
			if (len - off < skip)
				goto truncated;
			off += (size_t)skip;
			continue;
		}
		uint64_t need = kind == 2 ? items * 2 : items;
		if (need > len - off)
			return kvb_err_set(err, KVB_ERR_PROTOCOL,
					   "MooncakeAgentMetadata: %s at offset %zu declares %" PRIu64
					   " entries but only %zu bytes follow (truncated or hostile)",
					   kind == 2 ? "map" : "array", at, items, len - off);
		if (!need)
			continue;
		if (depth == VLLM_MAX_DEPTH)
			return kvb_err_set(err, KVB_ERR_PROTOCOL,
					   "MooncakeAgentMetadata: nesting deeper than %d at offset %zu",
					   VLLM_MAX_DEPTH, at);
		left[++depth] = need;
	}
	if (off != len)
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "MooncakeAgentMetadata: %zu trailing bytes after the message",
				   len - off);
	return KVB_OK;
truncated:
	return kvb_err_set(err, KVB_ERR_PROTOCOL,
			   "MooncakeAgentMetadata: truncated (%zu bytes, message incomplete)", len);
}

/* ---- pass 2: fields ------------------------------------------------------ */

static const char *mp_type_name(const msgpack_object *o)
{
	switch (o->type) {
	case MSGPACK_OBJECT_NIL: return "nil";
	case MSGPACK_OBJECT_BOOLEAN: return "bool";
	case MSGPACK_OBJECT_POSITIVE_INTEGER: return "int";
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "negative int";
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: return "float";
	case MSGPACK_OBJECT_STR: return "str";
	case MSGPACK_OBJECT_ARRAY: return "array";
	case MSGPACK_OBJECT_MAP: return "map";
	case MSGPACK_OBJECT_BIN: return "bin";
	case MSGPACK_OBJECT_EXT: return "ext";
	}
	return "unknown";
}

/* A str field into a fixed buffer: empty, too long or holding a NUL (which
 * C would silently cut) is refused.  what names the field in messages. */
static int mp_str(const msgpack_object *o, char *dst, size_t cap, const char *what, kvb_err_t *err)
{
	if (o->type != MSGPACK_OBJECT_STR)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: expected str, got %s", what,
				   mp_type_name(o));
	uint32_t n = o->via.str.size;
	if (n == 0)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "%s is empty", what);
	if (n >= cap)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "%s is %u bytes (at most %zu)", what, n,
				   cap - 1);
	if (memchr(o->via.str.ptr, '\0', n))
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "%s holds a NUL byte", what);
	memcpy(dst, o->via.str.ptr, n);
	dst[n] = '\0';
	return KVB_OK;
}

static int mp_array(const msgpack_object *o, uint64_t max, const char *what, kvb_err_t *err)
{
	if (o->type != MSGPACK_OBJECT_ARRAY)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: expected array, got %s", what,
				   mp_type_name(o));
	if (o->via.array.size > max)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "%s has %u entries (at most %" PRIu64 ")",
				   what, o->via.array.size, max);
	return KVB_OK;
}

/* An int in [0, max]; a negative int, float, bool or anything else is refused. */
static int mp_uint(const msgpack_object *o, uint64_t max, uint64_t *v, const char *what,
		   kvb_err_t *err)
{
	if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "%s is negative (%" PRId64 ")", what,
				   o->via.i64);
	if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: expected int, got %s", what,
				   mp_type_name(o));
	if (o->via.u64 > max)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "%s is %" PRIu64 " (at most %" PRIu64 ")",
				   what, o->via.u64, max);
	*v = o->via.u64;
	return KVB_OK;
}

/* Fill meta from the decoded map.  Keys are matched by name in any order,
 * unknown keys are skipped (msgspec does the same), a known key twice is
 * refused (msgspec keeps the last one; a producer and a proxy that pick
 * different copies would disagree on what was asked).  Fields are checked
 * in declaration order so a message with several faults names the first. */
static int gen0_fields(const msgpack_object *root, kvb_vllm_meta_t *m, kvb_err_t *err)
{
	if (root->type != MSGPACK_OBJECT_MAP)
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "MooncakeAgentMetadata: expected a map, got %s", mp_type_name(root));
	const msgpack_object *val[GEN0_NKEYS] = {NULL};
	for (uint32_t i = 0; i < root->via.map.size; i++) {
		const msgpack_object_kv *kv = &root->via.map.ptr[i];
		if (kv->key.type != MSGPACK_OBJECT_STR)
			return kvb_err_set(err, KVB_ERR_PROTOCOL,
					   "MooncakeAgentMetadata: key %u is %s, not str", i,
					   mp_type_name(&kv->key));
		for (size_t k = 0; k < GEN0_NKEYS; k++) {
			size_t kl = strlen(gen0_keys[k]);
			if (kv->key.via.str.size != kl || memcmp(kv->key.via.str.ptr, gen0_keys[k], kl))
				continue;
			if (val[k])
				return kvb_err_set(err, KVB_ERR_PROTOCOL,
						   "MooncakeAgentMetadata: key %s appears twice",
						   gen0_keys[k]);
			val[k] = &kv->val;
		}
	}
	for (size_t k = 0; k < GEN0_NKEYS; k++)
		if (!val[k])
			return kvb_err_set(err, KVB_ERR_PROTOCOL,
					   "MooncakeAgentMetadata: missing required key %s", gen0_keys[k]);

	int rc = mp_str(val[0], m->remote_hostname, sizeof(m->remote_hostname), "remote_hostname", err);
	if (rc)
		return rc;
	uint64_t v;
	if ((rc = mp_uint(val[1], UINT16_MAX, &v, "remote_port", err)))
		return rc;
	m->remote_port = (uint16_t)v;

	const msgpack_object *rq = val[2], *ba = val[3], *bl = val[4];
	if ((rc = mp_array(rq, KVB_VLLM_MAX_REQUESTS, "request_ids", err)) ||
	    (rc = mp_array(ba, KVB_VLLM_MAX_BASES, "kv_caches_base_addr", err)) ||
	    (rc = mp_array(bl, KVB_VLLM_MAX_REQUESTS, "block_ids", err)))
		return rc;
	if (bl->via.array.size != rq->via.array.size)
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "block_ids has %u lists but request_ids has %u ids (one list per id)",
				   bl->via.array.size, rq->via.array.size);
	uint32_t nr = rq->via.array.size;
	uint64_t total = 0;
	for (uint32_t r = 0; r < nr; r++) {
		char what[48];
		g_snprintf(what, sizeof(what), "block_ids[%u]", r);
		if ((rc = mp_array(&bl->via.array.ptr[r], KVB_VLLM_MAX_BLOCKS, what, err)))
			return rc;
		total += bl->via.array.ptr[r].via.array.size;
	}
	if (total > KVB_VLLM_MAX_BLOCKS)
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "block_ids holds %" PRIu64 " ids in all (at most %u)", total,
				   KVB_VLLM_MAX_BLOCKS);

	/* the object tree bounds every count: the allocations below are at most
	 * a few times the input size */
	m->n_requests = nr;
	m->request_ids = g_new0(vllm_id_t, nr ? nr : 1);
	m->block_counts = g_new0(uint32_t, nr ? nr : 1);
	m->block_offsets = g_new0(uint32_t, nr ? nr : 1);
	m->block_ids = g_new(uint32_t, total ? total : 1);
	m->n_block_ids = total;
	m->n_bases = ba->via.array.size;
	m->kv_caches_base_addr = g_new(uint64_t, m->n_bases ? m->n_bases : 1);
	for (uint32_t r = 0; r < nr; r++) {
		char what[48];
		g_snprintf(what, sizeof(what), "request_ids[%u]", r);
		if ((rc = mp_str(&rq->via.array.ptr[r], m->request_ids[r], KVB_VLLM_ID_MAX, what, err)))
			return rc;
	}
	for (uint32_t i = 0; i < m->n_bases; i++) {
		char what[48];
		g_snprintf(what, sizeof(what), "kv_caches_base_addr[%u]", i);
		if ((rc = mp_uint(&ba->via.array.ptr[i], UINT64_MAX, &m->kv_caches_base_addr[i], what,
				  err)))
			return rc;
	}
	uint32_t at = 0;
	for (uint32_t r = 0; r < nr; r++) {
		const msgpack_object *list = &bl->via.array.ptr[r];
		m->block_offsets[r] = at;
		m->block_counts[r] = list->via.array.size;
		for (uint32_t j = 0; j < list->via.array.size; j++) {
			char what[48];
			g_snprintf(what, sizeof(what), "block_ids[%u][%u]", r, j);
			if ((rc = mp_uint(&list->via.array.ptr[j], UINT32_MAX, &v, what, err)))
				return rc;
			m->block_ids[at++] = (uint32_t)v;
		}
	}
	return KVB_OK;
}

int kvb_vllm_meta_decode(kvb_vllm_gen_t gen, const void *buf, size_t len, kvb_vllm_meta_t *meta,
			 kvb_err_t *err)
{
	if (meta)
		memset(meta, 0, sizeof(*meta));
	if (!meta || (!buf && len))
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_meta_decode: NULL argument");
	int rc = gen_check(gen, err);
	if (rc)
		return rc;
	if (len == 0)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "MooncakeAgentMetadata: empty payload");
	if ((rc = mp_scan(buf, len, err)))
		return rc;
	msgpack_unpacked up;
	msgpack_unpacked_init(&up);
	size_t off = 0;
	msgpack_unpack_return ur = msgpack_unpack_next(&up, buf, len, &off);
	if (ur != MSGPACK_UNPACK_SUCCESS || off != len) {
		/* mp_scan accepted it, so this is msgpack-c running out of memory */
		msgpack_unpacked_destroy(&up);
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "MooncakeAgentMetadata: msgpack-c could not unpack it (%d)", (int)ur);
	}
	rc = gen0_fields(&up.data, meta, err);
	msgpack_unpacked_destroy(&up);
	if (rc)
		kvb_vllm_meta_clear(meta);
	return rc;
}

/* ---- encoding ------------------------------------------------------------ */

static int gba_write(void *data, const char *buf, size_t len)
{
	g_byte_array_append(data, (const guint8 *)buf, (guint)len);
	return 0;
}

static void pack_cstr(msgpack_packer *pk, const char *s)
{
	size_t n = strlen(s);
	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s, n);
}

/* What the decoder would refuse is not written: an encoded message always
 * decodes back to the same meta. */
static int meta_check(const kvb_vllm_meta_t *m, kvb_err_t *err)
{
	size_t hl = strnlen(m->remote_hostname, sizeof(m->remote_hostname));
	if (hl == 0 || hl == sizeof(m->remote_hostname))
		return kvb_err_set(err, KVB_ERR_INVALID, "remote_hostname is %s",
				   hl ? "not NUL-terminated" : "empty");
	if (m->n_requests > KVB_VLLM_MAX_REQUESTS || m->n_bases > KVB_VLLM_MAX_BASES ||
	    m->n_block_ids > KVB_VLLM_MAX_BLOCKS)
		return kvb_err_set(err, KVB_ERR_INVALID,
				   "meta has %u requests, %u bases, %" PRIu64 " block ids (limits %u, %u, %u)",
				   m->n_requests, m->n_bases, m->n_block_ids, KVB_VLLM_MAX_REQUESTS,
				   KVB_VLLM_MAX_BASES, KVB_VLLM_MAX_BLOCKS);
	if ((m->n_requests && (!m->request_ids || !m->block_counts || !m->block_offsets)) ||
	    (m->n_bases && !m->kv_caches_base_addr) || (m->n_block_ids && !m->block_ids))
		return kvb_err_set(err, KVB_ERR_INVALID, "meta has counts but NULL arrays");
	for (uint32_t r = 0; r < m->n_requests; r++) {
		size_t il = strnlen(m->request_ids[r], KVB_VLLM_ID_MAX);
		if (il == 0 || il == KVB_VLLM_ID_MAX)
			return kvb_err_set(err, KVB_ERR_INVALID, "request_ids[%u] is %s", r,
					   il ? "not NUL-terminated" : "empty");
		if ((uint64_t)m->block_offsets[r] + m->block_counts[r] > m->n_block_ids)
			return kvb_err_set(err, KVB_ERR_INVALID,
					   "request %u: blocks [%u, +%u) outside %" PRIu64 " ids", r,
					   m->block_offsets[r], m->block_counts[r], m->n_block_ids);
	}
	return KVB_OK;
}

int kvb_vllm_meta_encode(kvb_vllm_gen_t gen, GByteArray *out, const kvb_vllm_meta_t *meta,
			 kvb_err_t *err)
{
	if (!out || !meta)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_meta_encode: NULL argument");
	int rc = gen_check(gen, err);
	if (rc || (rc = meta_check(meta, err)))
		return rc;
	msgpack_packer pk;
	msgpack_packer_init(&pk, out, gba_write);
	/* msgspec writes a Struct as a map in declaration order; msgpack-c, like
	 * msgspec, picks the shortest int and str forms */
	msgpack_pack_map(&pk, GEN0_NKEYS);
	pack_cstr(&pk, gen0_keys[0]);
	pack_cstr(&pk, meta->remote_hostname);
	pack_cstr(&pk, gen0_keys[1]);
	msgpack_pack_uint16(&pk, meta->remote_port);
	pack_cstr(&pk, gen0_keys[2]);
	msgpack_pack_array(&pk, meta->n_requests);
	for (uint32_t r = 0; r < meta->n_requests; r++)
		pack_cstr(&pk, meta->request_ids[r]);
	pack_cstr(&pk, gen0_keys[3]);
	msgpack_pack_array(&pk, meta->n_bases);
	for (uint32_t i = 0; i < meta->n_bases; i++)
		msgpack_pack_uint64(&pk, meta->kv_caches_base_addr[i]);
	pack_cstr(&pk, gen0_keys[4]);
	msgpack_pack_array(&pk, meta->n_requests);
	for (uint32_t r = 0; r < meta->n_requests; r++) {
		const uint32_t *ids = meta->block_ids + meta->block_offsets[r];
		msgpack_pack_array(&pk, meta->block_counts[r]);
		for (uint32_t j = 0; j < meta->block_counts[r]; j++)
			msgpack_pack_uint32(&pk, ids[j]);
	}
	return KVB_OK;
}

/* ---- building by hand ---------------------------------------------------- */

int kvb_vllm_meta_init(kvb_vllm_meta_t *meta, const char *remote_hostname, uint16_t remote_port,
		       const uint64_t *bases, uint32_t n_bases, kvb_err_t *err)
{
	if (!meta)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_meta_init: NULL meta");
	memset(meta, 0, sizeof(*meta));
	if (!remote_hostname || !*remote_hostname)
		return kvb_err_set(err, KVB_ERR_INVALID, "remote_hostname is empty");
	if (strlen(remote_hostname) >= sizeof(meta->remote_hostname))
		return kvb_err_set(err, KVB_ERR_INVALID, "remote_hostname is %zu bytes (at most %u)",
				   strlen(remote_hostname), KVB_VLLM_HOST_MAX - 1);
	if (n_bases > KVB_VLLM_MAX_BASES)
		return kvb_err_set(err, KVB_ERR_INVALID, "%u kv_caches_base_addr entries (at most %u)",
				   n_bases, KVB_VLLM_MAX_BASES);
	if (n_bases && !bases)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_meta_init: %u bases, NULL array",
				   n_bases);
	g_strlcpy(meta->remote_hostname, remote_hostname, sizeof(meta->remote_hostname));
	meta->remote_port = remote_port;
	meta->n_bases = n_bases;
	meta->kv_caches_base_addr = g_new(uint64_t, n_bases ? n_bases : 1);
	if (n_bases)
		memcpy(meta->kv_caches_base_addr, bases, n_bases * sizeof(*bases));
	return KVB_OK;
}

int kvb_vllm_meta_add_request(kvb_vllm_meta_t *meta, const char *request_id,
			      const uint32_t *block_ids, uint32_t n_blocks, kvb_err_t *err)
{
	if (!meta || !request_id || (n_blocks && !block_ids))
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_meta_add_request: NULL argument");
	size_t il = strlen(request_id);
	if (il == 0 || il >= KVB_VLLM_ID_MAX)
		return kvb_err_set(err, KVB_ERR_INVALID, "request id '%.32s' is %zu bytes (1 to %u)",
				   request_id, il, KVB_VLLM_ID_MAX - 1);
	if (meta->n_requests >= KVB_VLLM_MAX_REQUESTS)
		return kvb_err_set(err, KVB_ERR_INVALID, "request %s: already %u requests (at most %u)",
				   request_id, meta->n_requests, KVB_VLLM_MAX_REQUESTS);
	if (meta->n_block_ids + n_blocks > KVB_VLLM_MAX_BLOCKS)
		return kvb_err_set(err, KVB_ERR_INVALID,
				   "request %s: %u more block ids would make %" PRIu64 " (at most %u)",
				   request_id, n_blocks, meta->n_block_ids + n_blocks,
				   KVB_VLLM_MAX_BLOCKS);
	uint32_t r = meta->n_requests;
	meta->request_ids = g_renew(vllm_id_t, meta->request_ids, r + 1);
	meta->block_counts = g_renew(uint32_t, meta->block_counts, r + 1);
	meta->block_offsets = g_renew(uint32_t, meta->block_offsets, r + 1);
	memset(meta->request_ids[r], 0, KVB_VLLM_ID_MAX);
	memcpy(meta->request_ids[r], request_id, il);
	meta->block_counts[r] = n_blocks;
	meta->block_offsets[r] = (uint32_t)meta->n_block_ids;
	if (n_blocks) {
		meta->block_ids = g_renew(uint32_t, meta->block_ids, meta->n_block_ids + n_blocks);
		memcpy(meta->block_ids + meta->n_block_ids, block_ids, n_blocks * sizeof(*block_ids));
		meta->n_block_ids += n_blocks;
	}
	meta->n_requests = r + 1;
	return KVB_OK;
}

void kvb_vllm_meta_clear(kvb_vllm_meta_t *meta)
{
	if (!meta)
		return;
	g_free(meta->request_ids);
	g_free(meta->block_counts);
	g_free(meta->block_offsets);
	g_free(meta->block_ids);
	g_free(meta->kv_caches_base_addr);
	memset(meta, 0, sizeof(*meta));
}

/* ---- replies ------------------------------------------------------------- */

const char *kvb_vllm_reply_bytes(kvb_vllm_gen_t gen, kvb_vllm_reply_t reply, size_t *len)
{
	const char *s = NULL;
	if (gen == KVB_VLLM_GEN0) {
		if (reply == KVB_VLLM_REPLY_DONE)
			s = KVB_VLLM_TRANS_DONE;
		else if (reply == KVB_VLLM_REPLY_ERROR)
			s = KVB_VLLM_TRANS_ERROR;
	}
	if (len)
		*len = s ? strlen(s) : 0;
	return s;
}

int kvb_vllm_reply_decode(kvb_vllm_gen_t gen, const void *buf, size_t len,
			  kvb_vllm_reply_t *reply, kvb_err_t *err)
{
	if (!reply || (!buf && len))
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_reply_decode: NULL argument");
	int rc = gen_check(gen, err);
	if (rc)
		return rc;
	static const size_t ld = sizeof(KVB_VLLM_TRANS_DONE) - 1, le = sizeof(KVB_VLLM_TRANS_ERROR) - 1;
	if (len == ld && !memcmp(buf, KVB_VLLM_TRANS_DONE, ld)) {
		*reply = KVB_VLLM_REPLY_DONE;
		return KVB_OK;
	}
	if (len == le && !memcmp(buf, KVB_VLLM_TRANS_ERROR, le)) {
		*reply = KVB_VLLM_REPLY_ERROR;
		return KVB_OK;
	}
	/* show the start of what came, printable bytes only */
	char shown[33];
	size_t n = MIN(len, sizeof(shown) - 1);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = ((const unsigned char *)buf)[i];
		shown[i] = c >= 0x20 && c < 0x7f ? (char)c : '.';
	}
	shown[n] = '\0';
	return kvb_err_set(err, KVB_ERR_PROTOCOL,
			   "reply '%s'%s (%zu bytes) is neither trans_done nor trans_error", shown,
			   len > n ? "..." : "", len);
}

/* ---- envelopes ----------------------------------------------------------- */

int kvb_vllm_envelope_classify(const size_t *frame_sizes, size_t n_frames,
			       kvb_vllm_envelope_t *env, size_t *payload_index, kvb_err_t *err)
{
	if (!env || !payload_index || (!frame_sizes && n_frames))
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_envelope_classify: NULL argument");
	if (n_frames < 2 || n_frames > 3)
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "envelope: %zu frames (a DEALER message has 2, a REQ message 3)",
				   n_frames);
	if (frame_sizes[0] == 0)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "envelope: empty identity frame");
	if (n_frames == 2) {
		*env = KVB_VLLM_ENV_DEALER;
		*payload_index = 1;
		return KVB_OK;
	}
	if (frame_sizes[1] != 0)
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "envelope: 3 frames but the delimiter frame holds %zu bytes "
				   "(a REQ message has an empty one)", frame_sizes[1]);
	*env = KVB_VLLM_ENV_REQ;
	*payload_index = 2;
	return KVB_OK;
}

void kvb_vllm_gen0_transfer_id(const char *request_id, char *out, size_t out_len)
{
	size_t n = strlen(request_id);
	/* "...-<digits>-<8 hex>" */
	bool suffix = n > 11 && request_id[n - 9] == '-';
	for (size_t i = n - 8; suffix && i < n; i++)
		suffix = g_ascii_isdigit(request_id[i]) || (request_id[i] >= 'a' && request_id[i] <= 'f');
	size_t d = n - 9; /* the index digits end before request_id[n - 9] */
	size_t k = d;
	while (suffix && k > 0 && g_ascii_isdigit(request_id[k - 1]))
		k--;
	suffix = suffix && k < d && k > 0 && request_id[k - 1] == '-';
	g_strlcpy(out, request_id, out_len);
	if (suffix && n - 9 < out_len)
		out[n - 9] = 0;
}
