/*
 * vLLM Gen 1/2 side channel, decoding: MooncakeXferMetadata and
 * MooncakeXferResponse as a vLLM peer's msgspec Decoder reads them, then the
 * checks a P (or D) must add, and the ROUTER payload classifier
 * (kvb_vllm_xfer_wire.h).
 *
 * Two passes, as in kvb_vllm_wire.c.  Pass 1 (rd_*) walks the bytes the
 * way msgspec does, without allocating: a scalar is read whole before its
 * type is checked, a container's count before its type, elements one by
 * one, unknown values skipped; so the first fault in byte order wins and
 * its text is msgspec's own.  A container is never pre-sized from its
 * declared count (each element needs a byte that is really there), so a
 * hostile count ends as "Input data was truncated".  When pass 1 accepts,
 * the input is exactly one complete object no deeper than
 * KVB_VLLM_XFER_MAX_DEPTH, so msgpack-c can build its tree with a zone
 * bounded by the input size, and pass 2 (meta_fields, resp_fields) checks
 * and copies values from that tree.
 */
#include "config.h"

#include <inttypes.h>
#include <string.h>

#include <msgpack.h>

#include "kvb_vllm_xfer_wire.h"

/* ---- pass 1: msgspec's reading ------------------------------------------- */

enum mk { MK_NIL, MK_BOOL, MK_UINT, MK_NEG, MK_FLOAT, MK_STR, MK_BIN, MK_EXT, MK_ARRAY, MK_MAP };

/* what msgspec calls each kind in "got `...`" */
static const char *const mk_name[] = {"None", "bool", "int", "int", "float",
				      "str", "bytes", "ext", "array", "object"};

typedef struct mhead {
	enum mk kind;
	uint64_t u;          /* MK_UINT value; MK_ARRAY/MK_MAP count; str/bin length */
	int64_t i;           /* MK_NEG value */
	const uint8_t *data; /* MK_STR/MK_BIN bytes */
} mhead_t;

enum { SEG_FIELD, SEG_INDEX, SEG_VALUE };

typedef struct seg {
	int kind;
	uint32_t idx;
	const char *name;
} seg_t;

typedef struct rd {
	const uint8_t *p;
	size_t len, off;
	seg_t seg[8];
	int nseg;
	kvb_err_t *err;
} rd_t;

/* The schema of a known field: what msgspec's Decoder was built from. */
enum sk { SK_INT, SK_STR, SK_LIST, SK_TUPLE2, SK_DICT, SK_ENUM3, SK_INT_OR_LIST };

typedef struct sch {
	enum sk kind;
	bool nullable;       /* `T | None` */
	const char *name;    /* "Expected `name`" */
	const struct sch *a; /* element (list), first element (tuple), value (dict) */
	const struct sch *b; /* second element (tuple) */
} sch_t;

static const sch_t s_int = {SK_INT, false, "int", NULL, NULL};
static const sch_t s_str = {SK_STR, false, "str", NULL, NULL};
static const sch_t s_enum = {SK_ENUM3, false, "int", NULL, NULL};
static const sch_t s_list_int = {SK_LIST, false, "array", &s_int, NULL};
static const sch_t s_list_str = {SK_LIST, false, "array", &s_str, NULL};
static const sch_t s_list_list_int = {SK_LIST, false, "array", &s_list_int, NULL};
static const sch_t s_int_or_list = {SK_INT_OR_LIST, false, "int | array", &s_int, NULL};
static const sch_t s_list_any = {SK_LIST, false, "array", &s_int_or_list, NULL};
static const sch_t s_req_flat = {SK_TUPLE2, false, "array", &s_str, &s_list_int};
static const sch_t s_req_grouped = {SK_TUPLE2, false, "array", &s_str, &s_list_list_int};
static const sch_t s_req_any = {SK_TUPLE2, false, "array", &s_str, &s_list_any};
static const sch_t s_dict_flat = {SK_DICT, false, "object", &s_req_flat, NULL};
static const sch_t s_dict_grouped = {SK_DICT, false, "object", &s_req_grouped, NULL};
static const sch_t s_dict_any = {SK_DICT, false, "object", &s_req_any, NULL};
static const sch_t s_opt_list_str = {SK_LIST, true, "array | null", &s_str, NULL};
static const sch_t s_opt_str = {SK_STR, true, "str | null", NULL, NULL};

static void path_fmt(const rd_t *r, GString *s)
{
	g_string_append_c(s, '$');
	for (int i = 0; i < r->nseg; i++) {
		if (r->seg[i].kind == SEG_FIELD)
			g_string_append_printf(s, ".%s", r->seg[i].name);
		else if (r->seg[i].kind == SEG_INDEX)
			g_string_append_printf(s, "[%u]", r->seg[i].idx);
		else
			g_string_append(s, "[...]");
	}
}

/* "TEXT - at `PATH`" (no suffix at the root, as msgspec); key: "- at `key` in `PATH`" */
static int rd_fail(rd_t *r, bool key, const char *text)
{
	if (!r->nseg && !key)
		return kvb_err_set(r->err, KVB_ERR_PROTOCOL, "%s", text);
	GString *s = g_string_new(NULL);
	path_fmt(r, s);
	int rc = kvb_err_set(r->err, KVB_ERR_PROTOCOL, "%s - at `%s%s`", text, key ? "key` in `" : "",
			     s->str);
	g_string_free(s, TRUE);
	return rc;
}

static int rd_type_error(rd_t *r, bool key, const char *expected, const char *got)
{
	char text[96];
	g_snprintf(text, sizeof(text), "Expected `%s`, got `%s`", expected, got);
	return rd_fail(r, key, text);
}

static int rd_truncated(rd_t *r)
{
	return kvb_err_set(r->err, KVB_ERR_PROTOCOL, "Input data was truncated");
}

static void rd_push(rd_t *r, int kind, uint32_t idx, const char *name)
{
	r->seg[r->nseg].kind = kind;
	r->seg[r->nseg].idx = idx;
	r->seg[r->nseg].name = name;
	r->nseg++;
}

static uint64_t be_read(const uint8_t *p, unsigned n)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

/* Read one object's header, and a scalar's whole payload. */
static int rd_head(rd_t *r, mhead_t *h)
{
	if (r->off >= r->len)
		return rd_truncated(r);
	size_t at = r->off;
	uint8_t b = r->p[r->off++];
	unsigned lenb = 0, valb = 0; /* bytes of a length, of a fixed-size payload */
	bool sign = false;
	uint64_t extra = 0;          /* ext type byte */
	memset(h, 0, sizeof(*h));
	if (b <= 0x7f) {
		h->kind = MK_UINT;
		h->u = b;
		return KVB_OK;
	}
	if (b >= 0xe0) {
		h->kind = MK_NEG;
		h->i = (int8_t)b;
		return KVB_OK;
	}
	if (b <= 0x8f) {
		h->kind = MK_MAP;
		h->u = b & 0x0f;
		return KVB_OK;
	}
	if (b <= 0x9f) {
		h->kind = MK_ARRAY;
		h->u = b & 0x0f;
		return KVB_OK;
	}
	if (b <= 0xbf) {
		h->kind = MK_STR;
		h->u = b & 0x1f;
	} else {
		switch (b) {
		case 0xc0: h->kind = MK_NIL; return KVB_OK;
		case 0xc2: case 0xc3: h->kind = MK_BOOL; return KVB_OK;
		case 0xc4: h->kind = MK_BIN; lenb = 1; break;
		case 0xc5: h->kind = MK_BIN; lenb = 2; break;
		case 0xc6: h->kind = MK_BIN; lenb = 4; break;
		case 0xc7: h->kind = MK_EXT; lenb = 1; extra = 1; break;
		case 0xc8: h->kind = MK_EXT; lenb = 2; extra = 1; break;
		case 0xc9: h->kind = MK_EXT; lenb = 4; extra = 1; break;
		case 0xca: h->kind = MK_FLOAT; valb = 4; break;
		case 0xcb: h->kind = MK_FLOAT; valb = 8; break;
		case 0xcc: h->kind = MK_UINT; valb = 1; break;
		case 0xcd: h->kind = MK_UINT; valb = 2; break;
		case 0xce: h->kind = MK_UINT; valb = 4; break;
		case 0xcf: h->kind = MK_UINT; valb = 8; break;
		case 0xd0: h->kind = MK_NEG; valb = 1; sign = true; break;
		case 0xd1: h->kind = MK_NEG; valb = 2; sign = true; break;
		case 0xd2: h->kind = MK_NEG; valb = 4; sign = true; break;
		case 0xd3: h->kind = MK_NEG; valb = 8; sign = true; break;
		case 0xd4: h->kind = MK_EXT; valb = 2; break;
		case 0xd5: h->kind = MK_EXT; valb = 3; break;
		case 0xd6: h->kind = MK_EXT; valb = 5; break;
		case 0xd7: h->kind = MK_EXT; valb = 9; break;
		case 0xd8: h->kind = MK_EXT; valb = 17; break;
		case 0xd9: h->kind = MK_STR; lenb = 1; break;
		case 0xda: h->kind = MK_STR; lenb = 2; break;
		case 0xdb: h->kind = MK_STR; lenb = 4; break;
		case 0xdc: h->kind = MK_ARRAY; lenb = 2; break;
		case 0xdd: h->kind = MK_ARRAY; lenb = 4; break;
		case 0xde: h->kind = MK_MAP; lenb = 2; break;
		case 0xdf: h->kind = MK_MAP; lenb = 4; break;
		default: /* 0xc1, never used */
			return kvb_err_set(r->err, KVB_ERR_PROTOCOL,
					   "MessagePack data is malformed: invalid opcode '\\x%02x' (byte %zu)",
					   b, at);
		}
	}
	if (lenb) {
		if (r->len - r->off < lenb)
			return rd_truncated(r);
		h->u = be_read(r->p + r->off, lenb);
		r->off += lenb;
		if (h->kind == MK_ARRAY || h->kind == MK_MAP)
			return KVB_OK;
		valb = 0;
		if (r->len - r->off < h->u + extra)
			return rd_truncated(r);
		h->data = r->p + r->off;
		r->off += (size_t)(h->u + extra);
		return KVB_OK;
	}
	if (valb) {
		if (r->len - r->off < valb)
			return rd_truncated(r);
		uint64_t v = be_read(r->p + r->off, valb);
		r->off += valb;
		if (h->kind == MK_UINT) {
			h->u = v;
		} else if (sign) {
			/* sign-extend; a signed form may hold a positive value */
			int64_t s = valb == 8 ? (int64_t)v
					      : (int64_t)(v ^ (1ull << (valb * 8 - 1))) -
						(int64_t)(1ull << (valb * 8 - 1));
			if (s >= 0) {
				h->kind = MK_UINT;
				h->u = (uint64_t)s;
			} else {
				h->i = s;
			}
		}
		return KVB_OK;
	}
	/* fixstr */
	if (r->len - r->off < h->u)
		return rd_truncated(r);
	h->data = r->p + r->off;
	r->off += (size_t)h->u;
	return KVB_OK;
}

/* msgspec decodes str with Python's UTF-8 codec: NUL is valid, surrogates,
 * overlong forms and code points above U+10FFFF are not.  g_utf8_validate
 * agrees except that it stops at NUL, so validate between NULs. */
static bool utf8_ok(const uint8_t *s, size_t n)
{
	while (n) {
		const uint8_t *z = memchr(s, 0, n);
		size_t seg = z ? (size_t)(z - s) : n;
		if (seg && !g_utf8_validate((const char *)s, (gssize)seg, NULL))
			return false;
		if (!z)
			break;
		n -= seg + 1;
		s += seg + 1;
	}
	return true;
}

static int rd_utf8(rd_t *r, const mhead_t *h)
{
	if (!utf8_ok(h->data, (size_t)h->u))
		return kvb_err_set(r->err, KVB_ERR_PROTOCOL, "Invalid UTF-8 encoded string");
	return KVB_OK;
}

/* Skip one value of an unknown key, checking only its structure.  depth is
 * the nesting level of the container holding it. */
static int rd_skip(rd_t *r, int depth)
{
	uint64_t left[KVB_VLLM_XFER_MAX_DEPTH + 1];
	int d = 0;
	left[0] = 1;
	for (;;) {
		while (d > 0 && left[d] == 0)
			d--;
		if (left[d] == 0)
			return KVB_OK;
		left[d]--;
		size_t at = r->off;
		mhead_t h;
		int rc = rd_head(r, &h);
		if (rc)
			return rc;
		if ((h.kind != MK_ARRAY && h.kind != MK_MAP) || h.u == 0)
			continue;
		if (depth + d + 1 > KVB_VLLM_XFER_MAX_DEPTH)
			return kvb_err_set(r->err, KVB_ERR_PROTOCOL,
					   "MessagePack data nests deeper than %d levels (byte %zu)",
					   KVB_VLLM_XFER_MAX_DEPTH, at);
		left[++d] = h.kind == MK_MAP ? h.u * 2 : h.u;
	}
}

/* Read one value of schema s at the current path. */
static int rd_value(rd_t *r, const sch_t *s)
{
	mhead_t h;
	int rc = rd_head(r, &h);
	if (rc)
		return rc;
	if (h.kind == MK_NIL && s->nullable)
		return KVB_OK;
	switch (s->kind) {
	case SK_INT:
		if (h.kind == MK_UINT || h.kind == MK_NEG)
			return KVB_OK;
		break;
	case SK_ENUM3:
		if (h.kind == MK_UINT && h.u <= 2)
			return KVB_OK;
		if (h.kind == MK_UINT || h.kind == MK_NEG) {
			char text[64];
			if (h.kind == MK_UINT)
				g_snprintf(text, sizeof(text), "Invalid enum value %" PRIu64, h.u);
			else
				g_snprintf(text, sizeof(text), "Invalid enum value %" PRId64, h.i);
			return rd_fail(r, false, text);
		}
		break;
	case SK_STR:
		if (h.kind == MK_STR)
			return rd_utf8(r, &h);
		break;
	case SK_INT_OR_LIST:
		if (h.kind == MK_UINT || h.kind == MK_NEG)
			return KVB_OK;
		/* fall through */
	case SK_LIST:
		if (h.kind != MK_ARRAY)
			break;
		for (uint64_t i = 0; i < h.u; i++) {
			rd_push(r, SEG_INDEX, (uint32_t)i, NULL);
			rc = rd_value(r, s->a);
			r->nseg--;
			if (rc)
				return rc;
		}
		return KVB_OK;
	case SK_TUPLE2:
		if (h.kind != MK_ARRAY)
			break;
		if (h.u != 2) {
			char text[80];
			g_snprintf(text, sizeof(text), "Expected `array` of length 2, got %" PRIu64, h.u);
			return rd_fail(r, false, text);
		}
		for (uint32_t i = 0; i < 2; i++) {
			rd_push(r, SEG_INDEX, i, NULL);
			rc = rd_value(r, i ? s->b : s->a);
			r->nseg--;
			if (rc)
				return rc;
		}
		return KVB_OK;
	case SK_DICT:
		if (h.kind != MK_MAP)
			break;
		for (uint64_t i = 0; i < h.u; i++) {
			mhead_t k;
			if ((rc = rd_head(r, &k)))
				return rc;
			if (k.kind != MK_STR)
				return rd_type_error(r, true, "str", mk_name[k.kind]);
			if ((rc = rd_utf8(r, &k)))
				return rc;
			rd_push(r, SEG_VALUE, 0, NULL);
			rc = rd_value(r, s->a);
			r->nseg--;
			if (rc)
				return rc;
		}
		return KVB_OK;
	}
	return rd_type_error(r, false, s->name, mk_name[h.kind]);
}

/* A Struct's key: msgspec looks at the first byte only before refusing a
 * key that is not a str, and names nil and 0xc1 differently there. */
static int rd_struct_key(rd_t *r, mhead_t *k)
{
	if (r->off >= r->len)
		return rd_truncated(r);
	uint8_t b = r->p[r->off];
	if ((b >= 0xa0 && b <= 0xbf) || (b >= 0xd9 && b <= 0xdb))
		return rd_head(r, k);
	const char *got;
	if (b == 0xc0)
		got = "null";
	else if (b == 0xc1)
		got = "unknown";
	else if (b <= 0x7f || b >= 0xe0 || (b >= 0xcc && b <= 0xd3))
		got = "int";
	else if (b <= 0x8f || b == 0xde || b == 0xdf)
		got = "object";
	else if (b <= 0x9f || b == 0xdc || b == 0xdd)
		got = "array";
	else if (b == 0xc2 || b == 0xc3)
		got = "bool";
	else if (b == 0xca || b == 0xcb)
		got = "float";
	else if (b >= 0xc4 && b <= 0xc6)
		got = "bytes";
	else
		got = "ext";
	return rd_type_error(r, true, "str", got);
}

static const char *const field_names[KVB_VLLM_XF_COUNT] = {
	"remote_hostname", "remote_port", "remote_tp_size", "remote_tp_rank", "req_blocks",
	"kv_caches_base_addr", "block_lens", "kv_block_lens", "registered_layer_names",
	"registered_layer_indices", "registered_group_indices", "registered_shared_group_ids",
	"registered_row_offsets", "remote_pp_size",
};

/* The known field named by key (a mask of KVB_VLLM_XF_BIT), or -1. */
static int field_lookup(const uint8_t *key, size_t n, uint32_t known)
{
	for (int f = 0; f < KVB_VLLM_XF_COUNT; f++) {
		if (!(known & KVB_VLLM_XF_BIT(f)))
			continue;
		if (strlen(field_names[f]) == n && !memcmp(field_names[f], key, n))
			return f;
	}
	return -1;
}

static const sch_t *meta_schema(kvb_vllm_xfer_profile_t p, int f)
{
	switch (f) {
	case KVB_VLLM_XF_REMOTE_HOSTNAME:
		return &s_str;
	case KVB_VLLM_XF_REQ_BLOCKS:
		if (p == KVB_VLLM_XFER_ANY)
			return &s_dict_any;
		return kvb_vllm_xfer_profile_form(p) == KVB_VLLM_BLOCKS_FLAT ? &s_dict_flat
									  : &s_dict_grouped;
	case KVB_VLLM_XF_LAYER_NAMES:
		return &s_list_str;
	case KVB_VLLM_XF_SHARED_GROUP_IDS:
		return &s_list_list_int;
	case KVB_VLLM_XF_REMOTE_PORT:
	case KVB_VLLM_XF_REMOTE_TP_SIZE:
	case KVB_VLLM_XF_REMOTE_TP_RANK:
	case KVB_VLLM_XF_REMOTE_PP_SIZE:
		return &s_int;
	default:
		return &s_list_int;
	}
}

/* Pass 1 over a Struct: the top-level map, each known key's value by its
 * schema, unknown values skipped, then missing fields in declaration order,
 * then trailing bytes: msgspec's order. */
static int struct_scan(rd_t *r, const char *const *names, int nfields, uint32_t known,
		       uint32_t required, const sch_t *(*schema)(int f, void *ctx), void *ctx)
{
	mhead_t h;
	int rc = rd_head(r, &h);
	if (rc)
		return rc;
	if (h.kind != MK_MAP)
		return rd_type_error(r, false, "object", mk_name[h.kind]);
	uint32_t seen = 0;
	for (uint64_t i = 0; i < h.u; i++) {
		mhead_t k;
		if ((rc = rd_struct_key(r, &k)))
			return rc;
		int f = -1;
		for (int j = 0; j < nfields; j++)
			if ((known & (1u << j)) && strlen(names[j]) == k.u &&
			    !memcmp(names[j], k.data, (size_t)k.u))
				f = j;
		if (f < 0) {
			rc = rd_skip(r, 1);
		} else {
			seen |= 1u << f;
			rd_push(r, SEG_FIELD, 0, names[f]);
			rc = rd_value(r, schema(f, ctx));
			r->nseg--;
		}
		if (rc)
			return rc;
	}
	for (int f = 0; f < nfields; f++)
		if ((required & (1u << f)) && !(seen & (1u << f)))
			return kvb_err_set(r->err, KVB_ERR_PROTOCOL,
					   "Object missing required field `%s`", names[f]);
	if (r->off != r->len)
		return kvb_err_set(r->err, KVB_ERR_PROTOCOL,
				   "MessagePack data is malformed: trailing characters (byte %zu)",
				   r->off);
	return KVB_OK;
}

static const sch_t *meta_schema_cb(int f, void *ctx)
{
	return meta_schema(*(const kvb_vllm_xfer_profile_t *)ctx, f);
}

/* ---- pass 2: the checks a peer must add ---------------------------------- */

/* "TEXT - at `PATH`" with " (request `ID`)" when req is not NULL. */
static int KVB_PRINTF(5, 6) bad(kvb_err_t *err, const char *path, bool key, const char *req,
				const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *text = g_strdup_vprintf(fmt, ap);
	va_end(ap);
	int rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "%s - at `%s%s`%s%.64s%s", text,
			     key ? "key` in `" : "", path, req ? " (request `" : "", req ? req : "",
			     req ? "`)" : "");
	g_free(text);
	return rc;
}

/* An int in [min, max] (pass 1 proved it is an int). */
static int b_int(const msgpack_object *o, int64_t min, uint64_t max, int64_t *sv, uint64_t *uv,
		 const char *path, const char *req, kvb_err_t *err)
{
	if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
		if (o->via.i64 < min)
			return bad(err, path, false, req,
				   "value %" PRId64 " is outside %" PRId64 "..%" PRIu64, o->via.i64, min,
				   max);
		if (sv)
			*sv = o->via.i64;
		return KVB_OK;
	}
	if (o->via.u64 > max || (min > 0 && o->via.u64 < (uint64_t)min))
		return bad(err, path, false, req, "value %" PRIu64 " is outside %" PRId64 "..%" PRIu64,
			   o->via.u64, min, max);
	if (sv)
		*sv = (int64_t)o->via.u64;
	if (uv)
		*uv = o->via.u64;
	return KVB_OK;
}

/* A str (pass 1 proved it is UTF-8) into dst: 1 .. cap-1 bytes, no NUL. */
static int b_str(const msgpack_object *o, char *dst, size_t cap, const char *path, bool key,
		 const char *req, kvb_err_t *err)
{
	uint32_t n = o->via.str.size;
	if (n == 0)
		return bad(err, path, key, req, "str is empty (1 to %zu bytes)", cap - 1);
	if (n >= cap)
		return bad(err, path, key, req, "str '%.32s...' is %u bytes (at most %zu)",
			   o->via.str.ptr, n, cap - 1);
	if (memchr(o->via.str.ptr, '\0', n))
		return bad(err, path, key, req, "str holds a NUL byte");
	memcpy(dst, o->via.str.ptr, n);
	dst[n] = '\0';
	return KVB_OK;
}

static int b_count(const msgpack_object *o, uint32_t max, const char *path, const char *req,
		   kvb_err_t *err)
{
	if (o->via.array.size > max)
		return bad(err, path, false, req, "%u entries (at most %u)", o->via.array.size, max);
	return KVB_OK;
}

typedef char id_t_[KVB_VLLM_ID_MAX];
typedef char name_t_[KVB_VLLM_NAME_MAX];

/* req_blocks: ids unique, block ids in 0..2^32-1, one form per message. */
static int req_blocks_fields(kvb_vllm_xfer_profile_t p, const msgpack_object *o,
			     kvb_vllm_xfer_meta_t *m, kvb_err_t *err)
{
	const char *P = "$.req_blocks";
	uint32_t n = o->via.map.size;
	if (n > KVB_VLLM_MAX_REQUESTS)
		return bad(err, P, false, NULL, "%u requests (at most %u)", n, KVB_VLLM_MAX_REQUESTS);
	/* the form: the profile's, or (ANY) the first block entry's */
	int form = p == KVB_VLLM_XFER_ANY ? -1 : (int)kvb_vllm_xfer_profile_form(p);
	uint64_t nlists = 0, nids = 0;
	for (uint32_t i = 0; i < n; i++) {
		const msgpack_object_kv *kv = &o->via.map.ptr[i];
		const msgpack_object *blocks = &kv->val.via.array.ptr[1];
		char req[KVB_VLLM_ID_MAX];
		g_snprintf(req, sizeof(req), "%.*s", (int)MIN(kv->key.via.str.size, 64u),
			   kv->key.via.str.ptr);
		for (uint32_t j = 0; j < blocks->via.array.size; j++) {
			const msgpack_object *e = &blocks->via.array.ptr[j];
			int f = e->type == MSGPACK_OBJECT_ARRAY ? KVB_VLLM_BLOCKS_GROUPED
								 : KVB_VLLM_BLOCKS_FLAT;
			if (form < 0)
				form = f;
			if (f != form) {
				char path[48];
				g_snprintf(path, sizeof(path), "$.req_blocks[...][1][%u]", j);
				return bad(err, path, false, req,
					   "%s where earlier entries are %s (one block-list form per "
					   "message)", f ? "a per-group list" : "a flat block id",
					   form ? "per-group lists" : "flat block ids");
			}
		}
	}
	/* no block entry anywhere: [] reads the same in either form */
	m->form = form < 0 ? KVB_VLLM_BLOCKS_GROUPED : (kvb_vllm_xfer_form_t)form;
	for (uint32_t i = 0; i < n; i++) {
		const msgpack_object_kv *kv = &o->via.map.ptr[i];
		const msgpack_object *blocks = &kv->val.via.array.ptr[1];
		char req[KVB_VLLM_ID_MAX];
		g_snprintf(req, sizeof(req), "%.*s", (int)MIN(kv->key.via.str.size, 64u),
			   kv->key.via.str.ptr);
		if (m->form == KVB_VLLM_BLOCKS_FLAT) {
			nlists++;
			nids += blocks->via.array.size;
			continue;
		}
		if (blocks->via.array.size > KVB_VLLM_MAX_GROUPS)
			return bad(err, "$.req_blocks[...][1]", false, req,
				   "%u KV-group lists (at most %u)", blocks->via.array.size,
				   KVB_VLLM_MAX_GROUPS);
		nlists += blocks->via.array.size;
		for (uint32_t j = 0; j < blocks->via.array.size; j++)
			nids += blocks->via.array.ptr[j].via.array.size;
	}
	if (nids > KVB_VLLM_MAX_BLOCKS)
		return bad(err, P, false, NULL, "%" PRIu64 " block ids in all (at most %u)", nids,
			   KVB_VLLM_MAX_BLOCKS);

	m->reqs = g_new0(kvb_vllm_xfer_req_t, n ? n : 1);
	m->lists = g_new0(kvb_vllm_xfer_list_t, nlists ? nlists : 1);
	m->block_ids = g_new(uint32_t, nids ? nids : 1);
	GHashTable *ids = g_hash_table_new(g_str_hash, g_str_equal);
	GHashTable *tids = g_hash_table_new(g_str_hash, g_str_equal);
	int rc = KVB_OK;
	for (uint32_t i = 0; i < n && !rc; i++) {
		const msgpack_object_kv *kv = &o->via.map.ptr[i];
		kvb_vllm_xfer_req_t *r = &m->reqs[i];
		if ((rc = b_str(&kv->key, r->req_id, sizeof(r->req_id), P, true, NULL, err)))
			break;
		if (!g_hash_table_add(ids, r->req_id)) {
			rc = bad(err, P, true, NULL, "request id `%.64s` appears twice", r->req_id);
			break;
		}
		if ((rc = b_str(&kv->val.via.array.ptr[0], r->transfer_id, sizeof(r->transfer_id),
				"$.req_blocks[...][0]", false, r->req_id, err)))
			break;
		const char *other = g_hash_table_lookup(tids, r->transfer_id);
		if (other) {
			rc = bad(err, "$.req_blocks[...][0]", false, r->req_id,
				 "transfer id `%.64s` is also request `%.64s`'s", r->transfer_id, other);
			break;
		}
		g_hash_table_insert(tids, r->transfer_id, r->req_id);
		const msgpack_object *blocks = &kv->val.via.array.ptr[1];
		r->first_list = m->n_lists;
		r->n_lists = m->form == KVB_VLLM_BLOCKS_FLAT ? 1 : blocks->via.array.size;
		for (uint32_t g = 0; g < r->n_lists && !rc; g++) {
			const msgpack_object *list =
				m->form == KVB_VLLM_BLOCKS_FLAT ? blocks : &blocks->via.array.ptr[g];
			kvb_vllm_xfer_list_t *l = &m->lists[m->n_lists++];
			l->offset = m->n_block_ids;
			l->count = list->via.array.size;
			for (uint32_t j = 0; j < l->count; j++) {
				char path[64];
				if (m->form == KVB_VLLM_BLOCKS_FLAT)
					g_snprintf(path, sizeof(path), "$.req_blocks[...][1][%u]", j);
				else
					g_snprintf(path, sizeof(path), "$.req_blocks[...][1][%u][%u]", g,
						   j);
				uint64_t v;
				if ((rc = b_int(&list->via.array.ptr[j], 0, UINT32_MAX, NULL, &v, path,
						r->req_id, err)))
					break;
				m->block_ids[m->n_block_ids++] = (uint32_t)v;
			}
		}
		m->n_reqs = i + 1;
	}
	g_hash_table_destroy(ids);
	g_hash_table_destroy(tids);
	return rc;
}

static int region_fields(const msgpack_object *const *val, kvb_vllm_xfer_meta_t *m, kvb_err_t *err)
{
	/* which lists are non-empty, and their common length */
	int first = -1;
	for (int f = KVB_VLLM_XF_KV_CACHES_BASE_ADDR; f <= KVB_VLLM_XF_ROW_OFFSETS; f++) {
		if (!val[f] || !val[f]->via.array.size)
			continue;
		char path[48];
		g_snprintf(path, sizeof(path), "$.%s", field_names[f]);
		int rc = b_count(val[f], KVB_VLLM_MAX_REGIONS, path, NULL, err);
		if (rc)
			return rc;
		if (first < 0) {
			first = f;
			m->n_regions = val[f]->via.array.size;
		} else if (val[f]->via.array.size != m->n_regions) {
			return bad(err, path, false, NULL,
				   "%u entries but %s has %u (one per region in every non-empty list)",
				   val[f]->via.array.size, field_names[first], m->n_regions);
		}
		m->region_fields |= KVB_VLLM_XF_BIT(f);
	}
	uint32_t nr = m->n_regions ? m->n_regions : 1;
	uint32_t rf = m->region_fields;
	if (rf & KVB_VLLM_XF_BIT(KVB_VLLM_XF_KV_CACHES_BASE_ADDR))
		m->kv_caches_base_addr = g_new(uint64_t, nr);
	if (rf & KVB_VLLM_XF_BIT(KVB_VLLM_XF_BLOCK_LENS))
		m->block_lens = g_new(uint64_t, nr);
	if (rf & KVB_VLLM_XF_BIT(KVB_VLLM_XF_KV_BLOCK_LENS))
		m->kv_block_lens = g_new(uint64_t, nr);
	if (rf & KVB_VLLM_XF_BIT(KVB_VLLM_XF_LAYER_NAMES))
		m->layer_names = g_new0(name_t_, nr);
	if (rf & KVB_VLLM_XF_BIT(KVB_VLLM_XF_LAYER_INDICES))
		m->layer_indices = g_new(uint32_t, nr);
	if (rf & KVB_VLLM_XF_BIT(KVB_VLLM_XF_GROUP_INDICES))
		m->group_indices = g_new(int32_t, nr);
	if (rf & KVB_VLLM_XF_BIT(KVB_VLLM_XF_SHARED_GROUP_IDS)) {
		uint64_t total = 0;
		const msgpack_object *sg = val[KVB_VLLM_XF_SHARED_GROUP_IDS];
		for (uint32_t i = 0; i < m->n_regions; i++) {
			char path[64];
			g_snprintf(path, sizeof(path), "$.registered_shared_group_ids[%u]", i);
			int rc = b_count(&sg->via.array.ptr[i], KVB_VLLM_MAX_GROUPS, path, NULL, err);
			if (rc)
				return rc;
			total += sg->via.array.ptr[i].via.array.size;
		}
		m->shared_lists = g_new0(kvb_vllm_xfer_list_t, nr);
		m->shared_ids = g_new(uint32_t, total ? total : 1);
	}
	if (rf & KVB_VLLM_XF_BIT(KVB_VLLM_XF_ROW_OFFSETS))
		m->row_offsets = g_new(int64_t, nr);

	for (uint32_t i = 0; i < m->n_regions; i++) {
		char path[64];
		int64_t sv;
		uint64_t uv;
		int rc;
#define RPATH(f) g_snprintf(path, sizeof(path), "$.%s[%u]", field_names[f], i)
#define RVAL(f) (&val[f]->via.array.ptr[i])
		if (m->kv_caches_base_addr) {
			RPATH(KVB_VLLM_XF_KV_CACHES_BASE_ADDR);
			if ((rc = b_int(RVAL(KVB_VLLM_XF_KV_CACHES_BASE_ADDR), 0, UINT64_MAX, NULL,
					&m->kv_caches_base_addr[i], path, NULL, err)))
				return rc;
		}
		if (m->block_lens) {
			RPATH(KVB_VLLM_XF_BLOCK_LENS);
			if ((rc = b_int(RVAL(KVB_VLLM_XF_BLOCK_LENS), 1, UINT64_MAX, NULL,
					&m->block_lens[i], path, NULL, err)))
				return rc;
		}
		if (m->kv_block_lens) {
			RPATH(KVB_VLLM_XF_KV_BLOCK_LENS);
			if ((rc = b_int(RVAL(KVB_VLLM_XF_KV_BLOCK_LENS), 1, UINT64_MAX, NULL,
					&m->kv_block_lens[i], path, NULL, err)))
				return rc;
			if (m->block_lens && m->kv_block_lens[i] > m->block_lens[i])
				return bad(err, path, false, NULL,
					   "kv_block_len %" PRIu64 " exceeds block_lens[%u] %" PRIu64,
					   m->kv_block_lens[i], i, m->block_lens[i]);
		}
		if (m->layer_names) {
			RPATH(KVB_VLLM_XF_LAYER_NAMES);
			if ((rc = b_str(RVAL(KVB_VLLM_XF_LAYER_NAMES), m->layer_names[i],
					KVB_VLLM_NAME_MAX, path, false, NULL, err)))
				return rc;
		}
		if (m->layer_indices) {
			RPATH(KVB_VLLM_XF_LAYER_INDICES);
			if ((rc = b_int(RVAL(KVB_VLLM_XF_LAYER_INDICES), 0, INT32_MAX, NULL, &uv, path,
					NULL, err)))
				return rc;
			m->layer_indices[i] = (uint32_t)uv;
		}
		if (m->group_indices) {
			RPATH(KVB_VLLM_XF_GROUP_INDICES);
			if ((rc = b_int(RVAL(KVB_VLLM_XF_GROUP_INDICES), -1, INT32_MAX, &sv, NULL, path,
					NULL, err)))
				return rc;
			m->group_indices[i] = (int32_t)sv;
		}
		if (m->shared_lists) {
			const msgpack_object *l = RVAL(KVB_VLLM_XF_SHARED_GROUP_IDS);
			m->shared_lists[i].offset = m->n_shared_ids;
			m->shared_lists[i].count = l->via.array.size;
			for (uint32_t j = 0; j < l->via.array.size; j++) {
				g_snprintf(path, sizeof(path), "$.registered_shared_group_ids[%u][%u]",
					   i, j);
				if ((rc = b_int(&l->via.array.ptr[j], 0, INT32_MAX, NULL, &uv, path,
						NULL, err)))
					return rc;
				m->shared_ids[m->n_shared_ids++] = (uint32_t)uv;
			}
		}
		if (m->row_offsets) {
			RPATH(KVB_VLLM_XF_ROW_OFFSETS);
			if ((rc = b_int(RVAL(KVB_VLLM_XF_ROW_OFFSETS), -1, INT64_MAX, &sv, NULL, path,
					NULL, err)))
				return rc;
			m->row_offsets[i] = sv;
		}
#undef RPATH
#undef RVAL
	}
	return KVB_OK;
}

static int meta_fields(kvb_vllm_xfer_profile_t p, const msgpack_object *root,
		       kvb_vllm_xfer_meta_t *m, kvb_err_t *err)
{
	const msgpack_object *val[KVB_VLLM_XF_COUNT] = {NULL};
	uint32_t known = kvb_vllm_xfer_profile_fields(p);
	for (uint32_t i = 0; i < root->via.map.size; i++) {
		const msgpack_object_kv *kv = &root->via.map.ptr[i];
		int f = field_lookup((const uint8_t *)kv->key.via.str.ptr, kv->key.via.str.size, known);
		if (f < 0)
			continue;
		/* msgspec keeps the last copy; a P and a proxy that pick
		 * different copies would disagree on what was asked */
		if (val[f])
			return bad(err, "$", true, NULL, "field `%s` appears twice", field_names[f]);
		val[f] = &kv->val;
		m->present |= KVB_VLLM_XF_BIT(f);
	}
	uint64_t v;
	int rc = b_str(val[KVB_VLLM_XF_REMOTE_HOSTNAME], m->remote_hostname,
		       sizeof(m->remote_hostname), "$.remote_hostname", false, NULL, err);
	if (rc || (rc = b_int(val[KVB_VLLM_XF_REMOTE_PORT], 1, 65535, NULL, &v, "$.remote_port", NULL,
			      err)))
		return rc;
	m->remote_port = (uint16_t)v;
	if ((rc = b_int(val[KVB_VLLM_XF_REMOTE_TP_SIZE], 1, KVB_VLLM_MAX_RANKS, NULL, &v,
			"$.remote_tp_size", NULL, err)))
		return rc;
	m->remote_tp_size = (uint32_t)v;
	if ((rc = b_int(val[KVB_VLLM_XF_REMOTE_TP_RANK], 0, KVB_VLLM_MAX_RANKS, NULL, &v,
			"$.remote_tp_rank", NULL, err)))
		return rc;
	if (v >= m->remote_tp_size)
		return bad(err, "$.remote_tp_rank", false, NULL,
			   "remote_tp_rank %" PRIu64 " is not below remote_tp_size %u", v,
			   m->remote_tp_size);
	m->remote_tp_rank = (uint32_t)v;
	if ((rc = req_blocks_fields(p, val[KVB_VLLM_XF_REQ_BLOCKS], m, err)) ||
	    (rc = region_fields(val, m, err)))
		return rc;
	m->remote_pp_size = 1;
	if (val[KVB_VLLM_XF_REMOTE_PP_SIZE]) {
		if ((rc = b_int(val[KVB_VLLM_XF_REMOTE_PP_SIZE], 1, KVB_VLLM_MAX_RANKS, NULL, &v,
				"$.remote_pp_size", NULL, err)))
			return rc;
		m->remote_pp_size = (uint32_t)v;
	}
	return KVB_OK;
}

/* msgpack-c builds the tree of what pass 1 accepted (no failure but memory). */
static int unpack(const void *buf, size_t len, msgpack_unpacked *up, const char *what,
		  kvb_err_t *err)
{
	size_t off = 0;
	msgpack_unpacked_init(up);
	msgpack_unpack_return ur = msgpack_unpack_next(up, buf, len, &off);
	if (ur != MSGPACK_UNPACK_SUCCESS || off != len) {
		msgpack_unpacked_destroy(up);
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: msgpack-c could not unpack it (%d)", what,
				   (int)ur);
	}
	return KVB_OK;
}

int kvb_vllm_xfer_meta_decode(kvb_vllm_xfer_profile_t p, const void *buf, size_t len,
			      kvb_vllm_xfer_meta_t *meta, kvb_err_t *err)
{
	if (meta)
		memset(meta, 0, sizeof(*meta));
	if (!meta || (!buf && len))
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_xfer_meta_decode: NULL argument");
	if (!kvb_vllm_xfer_profile_name(p))
		return kvb_err_set(err, KVB_ERR_UNSUPPORTED, "MooncakeXferMetadata profile %d unknown",
				   (int)p);
	rd_t r = {.p = buf, .len = len, .err = err};
	int rc = struct_scan(&r, field_names, KVB_VLLM_XF_COUNT, kvb_vllm_xfer_profile_fields(p),
			     kvb_vllm_xfer_profile_required(p), meta_schema_cb, &p);
	if (rc)
		return rc;
	msgpack_unpacked up;
	if ((rc = unpack(buf, len, &up, "MooncakeXferMetadata", err)))
		return rc;
	rc = meta_fields(p, &up.data, meta, err);
	msgpack_unpacked_destroy(&up);
	if (rc)
		kvb_vllm_xfer_meta_clear(meta);
	return rc;
}

/* ---- MooncakeXferResponse -------------------------------------------------- */

static const char *const resp_names[] = {"status", "ok_reqs", "err_reqs", "err_msg"};

static const sch_t *resp_schema_cb(int f, void *ctx)
{
	(void)ctx;
	return f == 0 ? &s_enum : f == 3 ? &s_opt_str : &s_opt_list_str;
}

static int resp_ids(const msgpack_object *o, const char *name, GHashTable *seen, char (**out)[KVB_VLLM_ID_MAX],
		    uint32_t *n, kvb_err_t *err)
{
	char path[48];
	g_snprintf(path, sizeof(path), "$.%s", name);
	int rc = b_count(o, KVB_VLLM_MAX_REQUESTS, path, NULL, err);
	if (rc)
		return rc;
	*out = g_new0(id_t_, o->via.array.size ? o->via.array.size : 1);
	for (uint32_t i = 0; i < o->via.array.size; i++) {
		g_snprintf(path, sizeof(path), "$.%s[%u]", name, i);
		if ((rc = b_str(&o->via.array.ptr[i], (*out)[i], KVB_VLLM_ID_MAX, path, false, NULL,
				err)))
			return rc;
		if (!g_hash_table_add(seen, (*out)[i]))
			return bad(err, path, false, NULL, "request id `%.64s` is named twice",
				   (*out)[i]);
		*n = i + 1;
	}
	return KVB_OK;
}

static int resp_fields(const msgpack_object *root, kvb_vllm_xfer_resp_t *rs, kvb_err_t *err)
{
	const msgpack_object *val[4] = {NULL};
	for (uint32_t i = 0; i < root->via.map.size; i++) {
		const msgpack_object_kv *kv = &root->via.map.ptr[i];
		for (int f = 0; f < 4; f++) {
			if (strlen(resp_names[f]) != kv->key.via.str.size ||
			    memcmp(resp_names[f], kv->key.via.str.ptr, kv->key.via.str.size))
				continue;
			if (val[f])
				return bad(err, "$", true, NULL, "field `%s` appears twice",
					   resp_names[f]);
			val[f] = &kv->val;
		}
	}
	rs->status = (kvb_vllm_xfer_status_t)val[0]->via.u64;
	GHashTable *seen = g_hash_table_new(g_str_hash, g_str_equal);
	int rc = KVB_OK;
	if (val[1] && val[1]->type != MSGPACK_OBJECT_NIL) {
		rs->has_ok_reqs = true;
		rc = resp_ids(val[1], "ok_reqs", seen, &rs->ok_reqs, &rs->n_ok_reqs, err);
	}
	if (!rc && val[2] && val[2]->type != MSGPACK_OBJECT_NIL) {
		rs->has_err_reqs = true;
		rc = resp_ids(val[2], "err_reqs", seen, &rs->err_reqs, &rs->n_err_reqs, err);
	}
	g_hash_table_destroy(seen);
	if (rc)
		return rc;
	if (val[3] && val[3]->type != MSGPACK_OBJECT_NIL) {
		uint32_t n = val[3]->via.str.size;
		if (n >= KVB_VLLM_ERR_MSG_MAX)
			return bad(err, "$.err_msg", false, NULL, "str of %u bytes (at most %u)", n,
				   KVB_VLLM_ERR_MSG_MAX - 1);
		if (memchr(val[3]->via.str.ptr, '\0', n))
			return bad(err, "$.err_msg", false, NULL, "str holds a NUL byte");
		rs->err_msg = g_strndup(val[3]->via.str.ptr, n);
	}
	if (rs->status == KVB_VLLM_XFER_ERROR && rs->n_ok_reqs)
		return bad(err, "$.ok_reqs", false, NULL,
			   "an ERROR reply names %u request(s) as done", rs->n_ok_reqs);
	return KVB_OK;
}

int kvb_vllm_xfer_resp_decode(const void *buf, size_t len, kvb_vllm_xfer_resp_t *resp,
			      kvb_err_t *err)
{
	if (resp)
		memset(resp, 0, sizeof(*resp));
	if (!resp || (!buf && len))
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_xfer_resp_decode: NULL argument");
	rd_t r = {.p = buf, .len = len, .err = err};
	int rc = struct_scan(&r, resp_names, 4, 0xf, 0x1, resp_schema_cb, NULL);
	if (rc)
		return rc;
	msgpack_unpacked up;
	if ((rc = unpack(buf, len, &up, "MooncakeXferResponse", err)))
		return rc;
	rc = resp_fields(&up.data, resp, err);
	msgpack_unpacked_destroy(&up);
	if (rc)
		kvb_vllm_xfer_resp_clear(resp);
	return rc;
}

/* ---- classifier ------------------------------------------------------------- */

kvb_vllm_payload_t kvb_vllm_payload_classify(const void *buf, size_t len)
{
	if (!buf)
		return KVB_VLLM_PAYLOAD_OTHER;
	rd_t r = {.p = buf, .len = len, .err = NULL};
	mhead_t h;
	if (rd_head(&r, &h) || h.kind != MK_MAP)
		return KVB_VLLM_PAYLOAD_OTHER;
	bool gen0 = false, gen1 = false;
	for (uint64_t i = 0; i < h.u; i++) {
		mhead_t k;
		if (rd_head(&r, &k) || k.kind != MK_STR)
			return KVB_VLLM_PAYLOAD_OTHER;
		if (k.u == 10 && !memcmp(k.data, "req_blocks", 10))
			gen1 = true;
		else if ((k.u == 11 && !memcmp(k.data, "request_ids", 11)) ||
			 (k.u == 9 && !memcmp(k.data, "block_ids", 9)))
			gen0 = true;
		if (rd_skip(&r, 1))
			return KVB_VLLM_PAYLOAD_OTHER;
	}
	if (r.off != len || gen0 == gen1)
		return KVB_VLLM_PAYLOAD_OTHER;
	return gen1 ? KVB_VLLM_PAYLOAD_XFER_META : KVB_VLLM_PAYLOAD_AGENT_META;
}
