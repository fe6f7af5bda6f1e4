/* kvbridge wire protocol v1: encoders and validating decoders. */
#include "config.h"

#include <string.h>

#include "kvb_wire.h"

/* ---- writer ---- */

static void put_u16(GByteArray *out, uint16_t v)
{
	uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
	g_byte_array_append(out, b, sizeof(b));
}

static void put_u32(GByteArray *out, uint32_t v)
{
	uint8_t b[4];
	for (int i = 0; i < 4; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	g_byte_array_append(out, b, sizeof(b));
}

static void put_u64(GByteArray *out, uint64_t v)
{
	uint8_t b[8];
	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	g_byte_array_append(out, b, sizeof(b));
}

static int put_str(GByteArray *out, const char *s, size_t max, const char *field, kvb_err_t *err)
{
	size_t n = strlen(s);
	if (n >= max)
		return kvb_err_set(err, KVB_ERR_INVALID, "%s is %zu bytes, the limit is %zu", field, n,
				   max - 1);
	put_u16(out, (uint16_t)n);
	g_byte_array_append(out, (const guint8 *)s, (guint)n);
	return KVB_OK;
}

/* Start a frame; the payload length is patched by frame_end. */
static guint frame_begin(GByteArray *out, kvb_wire_type_t type)
{
	guint start = out->len;
	g_byte_array_append(out, (const guint8 *)KVB_WIRE_MAGIC, 4);
	uint8_t vt[2] = {KVB_WIRE_VERSION, (uint8_t)type};
	g_byte_array_append(out, vt, 2);
	put_u16(out, 0);
	put_u32(out, 0);
	return start;
}

static int frame_end(GByteArray *out, guint start, kvb_err_t *err)
{
	size_t payload = out->len - start - KVB_WIRE_HEADER_LEN;
	if (payload + KVB_WIRE_HEADER_LEN > KVB_MSG_MAX) {
		g_byte_array_set_size(out, start);
		return kvb_err_set(err, KVB_ERR_INVALID, "message of %zu bytes exceeds KVB_MSG_MAX (%u)",
				   payload + KVB_WIRE_HEADER_LEN, KVB_MSG_MAX);
	}
	for (int i = 0; i < 4; i++)
		out->data[start + 8 + i] = (uint8_t)(payload >> (8 * i));
	return KVB_OK;
}

int kvb_wire_encode_pull(GByteArray *out, const kvb_wire_pull_t *pull, kvb_err_t *err)
{
	if (pull->n_regions > KVB_MAX_REGIONS || pull->n_groups > KVB_MAX_GROUPS)
		return kvb_err_set(err, KVB_ERR_INVALID, "pull has %u regions and %u groups (limits %u, %u)",
				   pull->n_regions, pull->n_groups, KVB_MAX_REGIONS, KVB_MAX_GROUPS);
	/* size first, so an oversized pull is refused before it is encoded */
	uint64_t size = KVB_WIRE_HEADER_LEN + 4 + strlen(pull->transfer_id) + strlen(pull->request_id) +
			16 + 4;
	for (uint32_t i = 0; i < pull->n_regions; i++)
		size += 52 + (pull->rkeys[i].len <= KVB_RKEY_MAX ? pull->rkeys[i].len : KVB_RKEY_MAX);
	for (uint32_t g = 0; g < pull->n_groups; g++)
		size += 4 + (uint64_t)pull->groups[g].count * 4;
	if (size > KVB_MSG_MAX)
		return kvb_err_set(err, KVB_ERR_INVALID, "pull of %" G_GUINT64_FORMAT
				   " bytes exceeds KVB_MSG_MAX (%u)", size, KVB_MSG_MAX);
	guint start = frame_begin(out, KVB_WIRE_PULL);
	int rc = put_str(out, pull->transfer_id, KVB_ID_MAX, "transfer_id", err);
	if (rc == KVB_OK)
		rc = put_str(out, pull->request_id, KVB_ID_MAX, "request_id", err);
	if (rc != KVB_OK) {
		g_byte_array_set_size(out, start);
		return rc;
	}
	put_u32(out, pull->tp_size);
	put_u32(out, pull->tp_rank);
	put_u32(out, pull->n_nics);
	put_u32(out, pull->n_regions);
	for (uint32_t i = 0; i < pull->n_regions; i++) {
		const kvb_region_t *r = &pull->regions[i];
		put_u64(out, r->base);
		put_u64(out, r->block_stride);
		put_u64(out, r->block_bytes);
		put_u32(out, r->num_blocks);
		put_u32(out, (uint32_t)r->layer);
		put_u32(out, (uint32_t)r->group);
		put_u32(out, (uint32_t)r->mem_kind);
		put_u32(out, (uint32_t)r->device);
		const kvb_rkey_t *k = &pull->rkeys[i];
		uint32_t klen = k->len <= KVB_RKEY_MAX ? k->len : KVB_RKEY_MAX;
		put_u32(out, klen);
		g_byte_array_append(out, k->bytes, klen);
	}
	put_u32(out, pull->n_groups);
	for (uint32_t g = 0; g < pull->n_groups; g++) {
		const kvb_block_list_t *l = &pull->groups[g];
		if (l->count > KVB_MAX_BLOCKS_PER_GROUP) {
			g_byte_array_set_size(out, start);
			return kvb_err_set(err, KVB_ERR_INVALID, "group %u lists %u blocks (limit %u)", g,
					   l->count, KVB_MAX_BLOCKS_PER_GROUP);
		}
		put_u32(out, l->count);
		for (uint32_t i = 0; i < l->count; i++)
			put_u32(out, l->ids[i]);
	}
	return frame_end(out, start, err);
}

void kvb_wire_notice_fill(kvb_wire_notice_t *n, kvb_wire_type_t type, const char *transfer_id,
			  const char *request_id, int status, uint64_t bytes, const char *reason)
{
	memset(n, 0, sizeof(*n));
	n->type = type;
	g_strlcpy(n->transfer_id, transfer_id, sizeof(n->transfer_id));
	g_strlcpy(n->request_id, request_id, sizeof(n->request_id));
	n->status = status;
	n->bytes = bytes;
	g_strlcpy(n->reason, reason ? reason : "", sizeof(n->reason));
}

int kvb_wire_encode_notice(GByteArray *out, const kvb_wire_notice_t *n, kvb_err_t *err)
{
	if (n->type != KVB_WIRE_STARTED && n->type != KVB_WIRE_DONE && n->type != KVB_WIRE_CANCEL &&
	    n->type != KVB_WIRE_HEARTBEAT)
		return kvb_err_set(err, KVB_ERR_INVALID, "type %d is not a notice", (int)n->type);
	guint start = frame_begin(out, n->type);
	int rc = put_str(out, n->transfer_id, KVB_ID_MAX, "transfer_id", err);
	if (rc == KVB_OK)
		rc = put_str(out, n->request_id, KVB_ID_MAX, "request_id", err);
	if (rc == KVB_OK && n->type == KVB_WIRE_DONE) {
		put_u32(out, (uint32_t)n->status);
		put_u64(out, n->bytes);
		char reason[KVB_REASON_MAX];
		g_strlcpy(reason, n->reason, sizeof(reason));
		rc = put_str(out, reason, KVB_REASON_MAX, "reason", err);
	}
	if (rc != KVB_OK) {
		g_byte_array_set_size(out, start);
		return rc;
	}
	return frame_end(out, start, err);
}

/* ---- reader: a bounds-checked cursor; the first failure sticks ---- */

typedef struct reader {
	const uint8_t *p;
	size_t left;
	int rc;
	kvb_err_t *err;
} reader_t;

static bool need(reader_t *r, size_t n, const char *field)
{
	if (r->rc != KVB_OK)
		return false;
	if (r->left < n) {
		r->rc = kvb_err_set(r->err, KVB_ERR_PROTOCOL,
				    "truncated message: %s needs %zu bytes, %zu left", field, n, r->left);
		return false;
	}
	return true;
}

static uint32_t get_u32(reader_t *r, const char *field)
{
	if (!need(r, 4, field))
		return 0;
	uint32_t v = 0;
	for (int i = 0; i < 4; i++)
		v |= (uint32_t)r->p[i] << (8 * i);
	r->p += 4;
	r->left -= 4;
	return v;
}

static uint64_t get_u64(reader_t *r, const char *field)
{
	if (!need(r, 8, field))
		return 0;
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v |= (uint64_t)r->p[i] << (8 * i);
	r->p += 8;
	r->left -= 8;
	return v;
}

static void get_str(reader_t *r, char *dst, size_t max, const char *field)
{
	dst[0] = '\0';
	if (!need(r, 2, field))
		return;
	size_t n = (size_t)r->p[0] | ((size_t)r->p[1] << 8);
	r->p += 2;
	r->left -= 2;
	if (n >= max) {
		r->rc = kvb_err_set(r->err, KVB_ERR_PROTOCOL, "%s is %zu bytes, the limit is %zu", field,
				    n, max - 1);
		return;
	}
	if (!need(r, n, field))
		return;
	if (memchr(r->p, '\0', n)) {
		r->rc = kvb_err_set(r->err, KVB_ERR_PROTOCOL, "%s contains a NUL byte", field);
		return;
	}
	memcpy(dst, r->p, n);
	dst[n] = '\0';
	r->p += n;
	r->left -= n;
}

static void get_bytes(reader_t *r, uint8_t *dst, size_t n, const char *field)
{
	if (!need(r, n, field))
		return;
	memcpy(dst, r->p, n);
	r->p += n;
	r->left -= n;
}

int kvb_wire_peek(const void *buf, size_t len, kvb_wire_type_t *type, kvb_err_t *err)
{
	const uint8_t *b = buf;
	if (!buf || len < KVB_WIRE_HEADER_LEN)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "frame of %zu bytes is shorter than the %u-byte header",
				   len, KVB_WIRE_HEADER_LEN);
	if (memcmp(b, KVB_WIRE_MAGIC, 4) != 0)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "bad magic %02x%02x%02x%02x (expected \"KVBW\")",
				   b[0], b[1], b[2], b[3]);
	if (b[4] != KVB_WIRE_VERSION)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "wire version %u, this side speaks %u", b[4],
				   KVB_WIRE_VERSION);
	if (b[5] < KVB_WIRE_PULL || b[5] > KVB_WIRE_HEARTBEAT)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "unknown message type %u", b[5]);
	if (b[6] != 0 || b[7] != 0)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "reserved header bytes are not zero");
	uint32_t payload = (uint32_t)b[8] | ((uint32_t)b[9] << 8) | ((uint32_t)b[10] << 16) |
			   ((uint32_t)b[11] << 24);
	if ((uint64_t)payload + KVB_WIRE_HEADER_LEN != len)
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "header announces %u payload bytes, frame carries %zu", payload,
				   len - KVB_WIRE_HEADER_LEN);
	if (type)
		*type = (kvb_wire_type_t)b[5];
	return KVB_OK;
}

int kvb_wire_peek_ids(const void *buf, size_t len, char *transfer_id, char *request_id)
{
	int rc = kvb_wire_peek(buf, len, NULL, NULL);
	if (rc != KVB_OK)
		return rc;
	reader_t r = {(const uint8_t *)buf + KVB_WIRE_HEADER_LEN, len - KVB_WIRE_HEADER_LEN, KVB_OK, NULL};
	get_str(&r, transfer_id, KVB_ID_MAX, "transfer_id");
	get_str(&r, request_id, KVB_ID_MAX, "request_id");
	return r.rc;
}

void kvb_wire_pull_clear(kvb_wire_pull_t *pull)
{
	g_free(pull->regions);
	g_free(pull->rkeys);
	g_free(pull->groups);
	g_free(pull->ids);
	memset(pull, 0, sizeof(*pull));
}

static int reader_finish(reader_t *r)
{
	if (r->rc == KVB_OK && r->left != 0)
		r->rc = kvb_err_set(r->err, KVB_ERR_PROTOCOL, "%zu trailing bytes after the message", r->left);
	return r->rc;
}

/* Decoding allocates only after each count has been checked against both
 * its limit and the bytes actually left, so a hostile count cannot make the
 * decoder allocate more than the frame could describe. */
int kvb_wire_decode_pull(const void *buf, size_t len, kvb_wire_pull_t *pull, kvb_err_t *err)
{
	memset(pull, 0, sizeof(*pull));
	kvb_wire_type_t type;
	int rc = kvb_wire_peek(buf, len, &type, err);
	if (rc != KVB_OK)
		return rc;
	if (type != KVB_WIRE_PULL)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "expected PULL, got %s", kvb_wire_type_name(type));
	reader_t r = {(const uint8_t *)buf + KVB_WIRE_HEADER_LEN, len - KVB_WIRE_HEADER_LEN, KVB_OK, err};
	get_str(&r, pull->transfer_id, sizeof(pull->transfer_id), "transfer_id");
	get_str(&r, pull->request_id, sizeof(pull->request_id), "request_id");
	pull->tp_size = get_u32(&r, "tp_size");
	pull->tp_rank = get_u32(&r, "tp_rank");
	pull->n_nics = get_u32(&r, "n_nics");
	pull->n_regions = get_u32(&r, "n_regions");
	if (r.rc == KVB_OK && pull->n_regions > KVB_MAX_REGIONS)
		r.rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "n_regions %u exceeds %u", pull->n_regions,
				   KVB_MAX_REGIONS);
	/* a region is at least 52 bytes on the wire */
	/* a region is 48 bytes before its rkey (which may be empty: TCP) */
	if (r.rc == KVB_OK && (uint64_t)pull->n_regions * 48 > r.left)
		r.rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "n_regions %u does not fit in %zu bytes",
				   pull->n_regions, r.left);
	if (r.rc == KVB_OK && pull->n_regions) {
		pull->regions = g_new0(kvb_region_t, pull->n_regions);
		pull->rkeys = g_new0(kvb_rkey_t, pull->n_regions);
	}
	for (uint32_t i = 0; r.rc == KVB_OK && i < pull->n_regions; i++) {
		kvb_region_t *reg = &pull->regions[i];
		reg->base = get_u64(&r, "region.base");
		reg->block_stride = get_u64(&r, "region.block_stride");
		reg->block_bytes = get_u64(&r, "region.block_bytes");
		reg->num_blocks = get_u32(&r, "region.num_blocks");
		reg->layer = (int32_t)get_u32(&r, "region.layer");
		reg->group = (int32_t)get_u32(&r, "region.group");
		uint32_t kind = get_u32(&r, "region.mem_kind");
		reg->device = (int32_t)get_u32(&r, "region.device");
		uint32_t klen = get_u32(&r, "region.rkey_len");
		if (r.rc != KVB_OK)
			break;
		if (kind > KVB_MEM_CUDA) {
			r.rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "region %u: unknown mem_kind %u", i, kind);
			break;
		}
		reg->mem_kind = (kvb_mem_kind_t)kind;
		if (klen > KVB_RKEY_MAX) {
			r.rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "region %u: rkey of %u bytes exceeds %u", i,
					   klen, KVB_RKEY_MAX);
			break;
		}
		pull->rkeys[i].len = klen;
		get_bytes(&r, pull->rkeys[i].bytes, klen, "region.rkey");
	}
	pull->n_groups = get_u32(&r, "n_groups");
	if (r.rc == KVB_OK && pull->n_groups > KVB_MAX_GROUPS)
		r.rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "n_groups %u exceeds %u", pull->n_groups,
				   KVB_MAX_GROUPS);
	/* Two passes: validate counts against the bytes left, then copy. */
	const uint8_t *ids_start = r.p;
	size_t ids_left = r.left;
	uint64_t total = 0;
	for (uint32_t g = 0; r.rc == KVB_OK && g < pull->n_groups; g++) {
		uint32_t count = get_u32(&r, "group.count");
		if (r.rc != KVB_OK)
			break;
		if (count > KVB_MAX_BLOCKS_PER_GROUP) {
			r.rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "group %u lists %u blocks (limit %u)", g,
					   count, KVB_MAX_BLOCKS_PER_GROUP);
			break;
		}
		if (!need(&r, (size_t)count * 4, "group.ids"))
			break;
		r.p += (size_t)count * 4;
		r.left -= (size_t)count * 4;
		total += count;
	}
	rc = reader_finish(&r);
	if (rc != KVB_OK) {
		kvb_wire_pull_clear(pull);
		return rc;
	}
	pull->n_blocks = total;
	if (pull->n_groups)
		pull->groups = g_new0(kvb_block_list_t, pull->n_groups);
	if (total)
		pull->ids = g_new(uint32_t, total);
	reader_t r2 = {ids_start, ids_left, KVB_OK, err};
	uint64_t at = 0;
	for (uint32_t g = 0; g < pull->n_groups; g++) {
		uint32_t count = get_u32(&r2, "group.count");
		pull->groups[g].count = count;
		pull->groups[g].ids = count ? pull->ids + at : NULL;
		for (uint32_t i = 0; i < count; i++)
			pull->ids[at++] = get_u32(&r2, "group.id");
	}
	return KVB_OK;
}

int kvb_wire_decode_notice(const void *buf, size_t len, kvb_wire_notice_t *n, kvb_err_t *err)
{
	memset(n, 0, sizeof(*n));
	kvb_wire_type_t type;
	int rc = kvb_wire_peek(buf, len, &type, err);
	if (rc != KVB_OK)
		return rc;
	if (type == KVB_WIRE_PULL)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "expected a notice, got PULL");
	n->type = type;
	reader_t r = {(const uint8_t *)buf + KVB_WIRE_HEADER_LEN, len - KVB_WIRE_HEADER_LEN, KVB_OK, err};
	get_str(&r, n->transfer_id, sizeof(n->transfer_id), "transfer_id");
	get_str(&r, n->request_id, sizeof(n->request_id), "request_id");
	if (type == KVB_WIRE_DONE) {
		n->status = (int32_t)get_u32(&r, "status");
		n->bytes = get_u64(&r, "bytes");
		get_str(&r, n->reason, sizeof(n->reason), "reason");
		if (r.rc == KVB_OK && (n->status > KVB_OK || n->status < KVB_STATUS_MIN))
			r.rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "DONE status %d is not a kvbridge status",
					   (int)n->status);
	}
	return reader_finish(&r);
}

const char *kvb_wire_type_name(kvb_wire_type_t type)
{
	switch (type) {
	case KVB_WIRE_PULL: return "PULL";
	case KVB_WIRE_STARTED: return "STARTED";
	case KVB_WIRE_DONE: return "DONE";
	case KVB_WIRE_CANCEL: return "CANCEL";
	case KVB_WIRE_HEARTBEAT: return "HEARTBEAT";
	}
	return "UNKNOWN";
}
