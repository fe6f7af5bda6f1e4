/*
 * vLLM Gen 1/2 side channel: release profiles, encoding as a vLLM D (or P)
 * of a given release writes it, and building messages by hand
 * (kvb_vllm_xfer_wire.h).  Decoding is in kvb_vllm_xfer_decode.c.
 */
#include "config.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "kvb_vllm_xfer_wire.h"

#define B(f) KVB_VLLM_XF_BIT(KVB_VLLM_XF_##f)
#define HEAD6 (B(REMOTE_HOSTNAME) | B(REMOTE_PORT) | B(REMOTE_TP_SIZE) | B(REMOTE_TP_RANK) | \
	       B(REQ_BLOCKS) | B(KV_CACHES_BASE_ADDR))

typedef char xfer_id_t[KVB_VLLM_ID_MAX];
typedef char xfer_name_t[KVB_VLLM_NAME_MAX];

static const struct profile {
	const char *name;
	uint32_t fields;
	uint32_t required;
	kvb_vllm_xfer_form_t form;
} profiles[] = {
	[KVB_VLLM_XFER_ANY] = {"any", 0x3fff, HEAD6, KVB_VLLM_BLOCKS_GROUPED},
	[KVB_VLLM_XFER_V016] = {"0.16.0-0.18.1", HEAD6, HEAD6, KVB_VLLM_BLOCKS_FLAT},
	[KVB_VLLM_XFER_V019] = {"0.19.0-0.19.1", HEAD6 | B(BLOCK_LENS), HEAD6 | B(BLOCK_LENS),
				KVB_VLLM_BLOCKS_FLAT},
	[KVB_VLLM_XFER_V020] = {"0.20.0-0.23.0", HEAD6 | B(BLOCK_LENS), HEAD6 | B(BLOCK_LENS),
				KVB_VLLM_BLOCKS_GROUPED},
	[KVB_VLLM_XFER_V024] = {"0.24.0", HEAD6 | B(BLOCK_LENS) | B(LAYER_NAMES) | B(LAYER_INDICES),
				HEAD6 | B(BLOCK_LENS), KVB_VLLM_BLOCKS_GROUPED},
	[KVB_VLLM_XFER_V025] = {"0.25.0-0.29.0", 0x7ff, HEAD6 | B(BLOCK_LENS) | B(KV_BLOCK_LENS),
				KVB_VLLM_BLOCKS_GROUPED},
	[KVB_VLLM_XFER_V030] = {"0.30.0-0.31.0", 0x7ff | B(REMOTE_PP_SIZE),
				HEAD6 | B(BLOCK_LENS) | B(KV_BLOCK_LENS), KVB_VLLM_BLOCKS_GROUPED},
	[KVB_VLLM_XFER_V032] = {"0.32.0", 0x3fff, HEAD6 | B(BLOCK_LENS) | B(KV_BLOCK_LENS),
				KVB_VLLM_BLOCKS_GROUPED},
};

static const char *const field_names[KVB_VLLM_XF_COUNT] = {
	"remote_hostname", "remote_port", "remote_tp_size", "remote_tp_rank", "req_blocks",
	"kv_caches_base_addr", "block_lens", "kv_block_lens", "registered_layer_names",
	"registered_layer_indices", "registered_group_indices", "registered_shared_group_ids",
	"registered_row_offsets", "remote_pp_size",
};

static bool profile_ok(kvb_vllm_xfer_profile_t p)
{
	return (unsigned)p <= KVB_VLLM_XFER_PROFILE_LAST;
}

const char *kvb_vllm_xfer_field_name(kvb_vllm_xfer_field_t f)
{
	return (unsigned)f < KVB_VLLM_XF_COUNT ? field_names[f] : NULL;
}

uint32_t kvb_vllm_xfer_profile_fields(kvb_vllm_xfer_profile_t p)
{
	return profile_ok(p) ? profiles[p].fields : 0;
}

uint32_t kvb_vllm_xfer_profile_required(kvb_vllm_xfer_profile_t p)
{
	return profile_ok(p) ? profiles[p].required : 0;
}

kvb_vllm_xfer_form_t kvb_vllm_xfer_profile_form(kvb_vllm_xfer_profile_t p)
{
	return profile_ok(p) ? profiles[p].form : KVB_VLLM_BLOCKS_GROUPED;
}

const char *kvb_vllm_xfer_profile_name(kvb_vllm_xfer_profile_t p)
{
	return profile_ok(p) ? profiles[p].name : NULL;
}

static bool read_num(const char **s, unsigned long *v)
{
	if (**s < '0' || **s > '9')
		return false;
	char *end;
	*v = strtoul(*s, &end, 10);
	if (end - *s > 6)
		return false;
	*s = end;
	return true;
}

int kvb_vllm_xfer_profile_from_version(const char *version, kvb_vllm_xfer_profile_t *p,
				       kvb_err_t *err)
{
	const char *s = version;
	unsigned long major, minor, patch = 0;
	if (!s || !p || !read_num(&s, &major) || *s++ != '.' || !read_num(&s, &minor) ||
	    (*s == '.' && (s++, !read_num(&s, &patch))) || (*s >= '0' && *s <= '9'))
		return kvb_err_set(err, KVB_ERR_INVALID, "vLLM version '%.32s' is not MAJOR.MINOR[.PATCH]",
				   version ? version : "(null)");
	static const struct {
		unsigned minor_last;
		kvb_vllm_xfer_profile_t p;
	} ranges[] = {
		{18, KVB_VLLM_XFER_V016}, {19, KVB_VLLM_XFER_V019}, {23, KVB_VLLM_XFER_V020},
		{24, KVB_VLLM_XFER_V024}, {29, KVB_VLLM_XFER_V025}, {31, KVB_VLLM_XFER_V030},
		{32, KVB_VLLM_XFER_V032},
	};
	if (major == 0 && minor < 16)
		return kvb_err_set(err, KVB_ERR_UNSUPPORTED,
				   "vLLM %lu.%lu.%lu speaks Gen 0 (MooncakeAgentMetadata), not "
				   "MooncakeXferMetadata", major, minor, patch);
	for (size_t i = 0; major == 0 && i < G_N_ELEMENTS(ranges); i++)
		if (minor <= ranges[i].minor_last) {
			*p = ranges[i].p;
			return KVB_OK;
		}
	return kvb_err_set(err, KVB_ERR_UNSUPPORTED,
			   "vLLM %lu.%lu.%lu is newer than 0.32.x, whose MooncakeXferMetadata was "
			   "the last one verified", major, minor, patch);
}

/* ---- checks shared by the builders and the encoder ------------------------- */

/* An id or name in a fixed buffer: 1 .. cap-1 bytes, NUL-terminated. */
static int id_check(const char *s, size_t cap, const char *what, kvb_err_t *err)
{
	size_t n = s ? strnlen(s, cap) : 0;
	if (n == 0 || n == cap)
		return kvb_err_set(err, KVB_ERR_INVALID, "%s is %s", what,
				   n ? "not NUL-terminated (too long)" : "empty");
	if (!g_utf8_validate(s, (gssize)n, NULL))
		return kvb_err_set(err, KVB_ERR_INVALID, "%s '%.32s' is not UTF-8", what, s);
	return KVB_OK;
}

static int region_check(const kvb_vllm_xfer_region_t *r, uint32_t fields, uint32_t i,
			kvb_err_t *err)
{
	if ((fields & B(BLOCK_LENS)) && r->block_len == 0)
		return kvb_err_set(err, KVB_ERR_INVALID, "region %u: block_len 0", i);
	if ((fields & B(KV_BLOCK_LENS)) &&
	    (r->kv_block_len == 0 || ((fields & B(BLOCK_LENS)) && r->kv_block_len > r->block_len)))
		return kvb_err_set(err, KVB_ERR_INVALID,
				   "region %u: kv_block_len %" PRIu64 " outside 1..block_len %" PRIu64, i,
				   r->kv_block_len, r->block_len);
	if (fields & B(LAYER_NAMES)) {
		char what[48];
		g_snprintf(what, sizeof(what), "region %u: layer name", i);
		int rc = id_check(r->layer_name, KVB_VLLM_NAME_MAX, what, err);
		if (rc)
			return rc;
	}
	if ((fields & B(LAYER_INDICES)) && r->layer_index > INT32_MAX)
		return kvb_err_set(err, KVB_ERR_INVALID, "region %u: layer index %u above 2^31-1", i,
				   r->layer_index);
	if ((fields & B(GROUP_INDICES)) && r->group_index < -1)
		return kvb_err_set(err, KVB_ERR_INVALID, "region %u: group index %d below -1", i,
				   r->group_index);
	if (fields & B(SHARED_GROUP_IDS)) {
		if (r->n_shared_group_ids > KVB_VLLM_MAX_GROUPS ||
		    (r->n_shared_group_ids && !r->shared_group_ids))
			return kvb_err_set(err, KVB_ERR_INVALID,
					   "region %u: %u shared group ids (at most %u, not NULL)", i,
					   r->n_shared_group_ids, KVB_VLLM_MAX_GROUPS);
		for (uint32_t j = 0; j < r->n_shared_group_ids; j++)
			if (r->shared_group_ids[j] > INT32_MAX)
				return kvb_err_set(err, KVB_ERR_INVALID,
						   "region %u: shared group id %u above 2^31-1", i,
						   r->shared_group_ids[j]);
	}
	if ((fields & B(ROW_OFFSETS)) && r->row_offset < -1)
		return kvb_err_set(err, KVB_ERR_INVALID, "region %u: row offset %" PRId64 " below -1", i,
				   r->row_offset);
	return KVB_OK;
}

static int head_check(const char *host, uint16_t port, uint32_t tp_size, uint32_t tp_rank,
		      uint32_t pp_size, kvb_err_t *err)
{
	int rc = id_check(host, KVB_VLLM_HOST_MAX, "remote_hostname", err);
	if (rc)
		return rc;
	if (port == 0)
		return kvb_err_set(err, KVB_ERR_INVALID, "remote_port 0 (1..65535)");
	if (tp_size == 0 || tp_size > KVB_VLLM_MAX_RANKS || tp_rank >= tp_size)
		return kvb_err_set(err, KVB_ERR_INVALID, "remote_tp_rank %u of remote_tp_size %u (size "
				   "1..%u, rank below size)", tp_rank, tp_size, KVB_VLLM_MAX_RANKS);
	if (pp_size == 0 || pp_size > KVB_VLLM_MAX_RANKS)
		return kvb_err_set(err, KVB_ERR_INVALID, "remote_pp_size %u outside 1..%u", pp_size,
				   KVB_VLLM_MAX_RANKS);
	return KVB_OK;
}

/* What kvb_vllm_xfer_meta_decode would refuse (in a meta of any origin). */
static int meta_check(const kvb_vllm_xfer_meta_t *m, kvb_err_t *err)
{
	int rc = head_check(m->remote_hostname, m->remote_port, m->remote_tp_size, m->remote_tp_rank,
			    m->remote_pp_size, err);
	if (rc)
		return rc;
	if (m->form != KVB_VLLM_BLOCKS_FLAT && m->form != KVB_VLLM_BLOCKS_GROUPED)
		return kvb_err_set(err, KVB_ERR_INVALID, "block-list form %d unknown", (int)m->form);
	if (m->n_reqs > KVB_VLLM_MAX_REQUESTS || m->n_block_ids > KVB_VLLM_MAX_BLOCKS ||
	    m->n_regions > KVB_VLLM_MAX_REGIONS)
		return kvb_err_set(err, KVB_ERR_INVALID,
				   "%u requests, %u block ids, %u regions (limits %u, %u, %u)", m->n_reqs,
				   m->n_block_ids, m->n_regions, KVB_VLLM_MAX_REQUESTS,
				   KVB_VLLM_MAX_BLOCKS, KVB_VLLM_MAX_REGIONS);
	if ((m->n_reqs && !m->reqs) || (m->n_lists && !m->lists) || (m->n_block_ids && !m->block_ids))
		return kvb_err_set(err, KVB_ERR_INVALID, "meta has counts but NULL arrays");
	GHashTable *ids = g_hash_table_new(g_str_hash, g_str_equal);
	GHashTable *tids = g_hash_table_new(g_str_hash, g_str_equal);
	for (uint32_t i = 0; i < m->n_reqs && !rc; i++) {
		const kvb_vllm_xfer_req_t *r = &m->reqs[i];
		char what[48];
		g_snprintf(what, sizeof(what), "request %u: id", i);
		if ((rc = id_check(r->req_id, KVB_VLLM_ID_MAX, what, err)))
			break;
		g_snprintf(what, sizeof(what), "request %u: transfer id", i);
		if ((rc = id_check(r->transfer_id, KVB_VLLM_ID_MAX, what, err)))
			break;
		if (!g_hash_table_add(ids, (gpointer)r->req_id) ||
		    !g_hash_table_add(tids, (gpointer)r->transfer_id)) {
			rc = kvb_err_set(err, KVB_ERR_INVALID, "request %u: id %s or transfer id %s repeats",
					 i, r->req_id, r->transfer_id);
			break;
		}
		if ((m->form == KVB_VLLM_BLOCKS_FLAT && r->n_lists != 1) ||
		    r->n_lists > KVB_VLLM_MAX_GROUPS || (uint64_t)r->first_list + r->n_lists > m->n_lists) {
			rc = kvb_err_set(err, KVB_ERR_INVALID,
					 "request %s: lists [%u, +%u) of %u (flat form: exactly 1, at most %u)",
					 r->req_id, r->first_list, r->n_lists, m->n_lists,
					 KVB_VLLM_MAX_GROUPS);
			break;
		}
		for (uint32_t g = 0; g < r->n_lists; g++) {
			const kvb_vllm_xfer_list_t *l = &m->lists[r->first_list + g];
			if ((uint64_t)l->offset + l->count > m->n_block_ids) {
				rc = kvb_err_set(err, KVB_ERR_INVALID,
						 "request %s: list %u ids [%u, +%u) outside %u ids", r->req_id,
						 g, l->offset, l->count, m->n_block_ids);
				break;
			}
		}
	}
	g_hash_table_destroy(ids);
	g_hash_table_destroy(tids);
	if (rc)
		return rc;
	if ((m->region_fields & ~(uint32_t)KVB_VLLM_XF_REGION_MASK) || (m->region_fields && !m->n_regions))
		return kvb_err_set(err, KVB_ERR_INVALID, "region_fields 0x%x with %u regions",
				   m->region_fields, m->n_regions);
	for (uint32_t i = 0; i < m->n_regions; i++) {
		kvb_vllm_xfer_region_t r;
		if (kvb_vllm_xfer_meta_get_region(m, i, &r) != KVB_OK)
			return kvb_err_set(err, KVB_ERR_INVALID, "region %u: NULL list", i);
		if (m->shared_lists &&
		    (uint64_t)m->shared_lists[i].offset + m->shared_lists[i].count > m->n_shared_ids)
			return kvb_err_set(err, KVB_ERR_INVALID, "region %u: shared ids outside %u", i,
					   m->n_shared_ids);
		if ((rc = region_check(&r, m->region_fields, i, err)))
			return rc;
	}
	return KVB_OK;
}

/* ---- encoding -------------------------------------------------------------- */

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

static void pack_ids(msgpack_packer *pk, const kvb_vllm_xfer_meta_t *m, const kvb_vllm_xfer_list_t *l)
{
	msgpack_pack_array(pk, l ? l->count : 0);
	for (uint32_t j = 0; l && j < l->count; j++)
		msgpack_pack_uint32(pk, m->block_ids[l->offset + j]);
}

static void pack_req_blocks(msgpack_packer *pk, const kvb_vllm_xfer_meta_t *m,
			    kvb_vllm_xfer_form_t form)
{
	msgpack_pack_map(pk, m->n_reqs);
	for (uint32_t i = 0; i < m->n_reqs; i++) {
		const kvb_vllm_xfer_req_t *r = &m->reqs[i];
		const kvb_vllm_xfer_list_t *first = r->n_lists ? &m->lists[r->first_list] : NULL;
		pack_cstr(pk, r->req_id);
		msgpack_pack_array(pk, 2);
		pack_cstr(pk, r->transfer_id);
		if (form == KVB_VLLM_BLOCKS_FLAT) {
			pack_ids(pk, m, first); /* at most one list (checked) */
		} else if (m->form == KVB_VLLM_BLOCKS_FLAT) {
			msgpack_pack_array(pk, 1); /* a flat list is one group's */
			pack_ids(pk, m, first);
		} else {
			msgpack_pack_array(pk, r->n_lists);
			for (uint32_t g = 0; g < r->n_lists; g++)
				pack_ids(pk, m, &m->lists[r->first_list + g]);
		}
	}
}

static void pack_region_list(msgpack_packer *pk, const kvb_vllm_xfer_meta_t *m, int f)
{
	uint32_t n = m->region_fields & KVB_VLLM_XF_BIT(f) ? m->n_regions : 0;
	msgpack_pack_array(pk, n);
	for (uint32_t i = 0; i < n; i++) {
		switch (f) {
		case KVB_VLLM_XF_KV_CACHES_BASE_ADDR:
			msgpack_pack_uint64(pk, m->kv_caches_base_addr[i]);
			break;
		case KVB_VLLM_XF_BLOCK_LENS:
			msgpack_pack_uint64(pk, m->block_lens[i]);
			break;
		case KVB_VLLM_XF_KV_BLOCK_LENS:
			msgpack_pack_uint64(pk, m->kv_block_lens[i]);
			break;
		case KVB_VLLM_XF_LAYER_NAMES:
			pack_cstr(pk, m->layer_names[i]);
			break;
		case KVB_VLLM_XF_LAYER_INDICES:
			msgpack_pack_uint32(pk, m->layer_indices[i]);
			break;
		case KVB_VLLM_XF_GROUP_INDICES:
			msgpack_pack_int64(pk, m->group_indices[i]);
			break;
		case KVB_VLLM_XF_SHARED_GROUP_IDS: {
			const kvb_vllm_xfer_list_t *l = &m->shared_lists[i];
			msgpack_pack_array(pk, l->count);
			for (uint32_t j = 0; j < l->count; j++)
				msgpack_pack_uint32(pk, m->shared_ids[l->offset + j]);
			break;
		}
		case KVB_VLLM_XF_ROW_OFFSETS:
			msgpack_pack_int64(pk, m->row_offsets[i]);
			break;
		}
	}
}

int kvb_vllm_xfer_meta_encode(kvb_vllm_xfer_profile_t p, GByteArray *out,
			      const kvb_vllm_xfer_meta_t *m, kvb_err_t *err)
{
	if (!out || !m)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_xfer_meta_encode: NULL argument");
	if (p == KVB_VLLM_XFER_ANY || !profile_ok(p))
		return kvb_err_set(err, KVB_ERR_INVALID,
				   "MooncakeXferMetadata profile %d is not a release to encode as", (int)p);
	int rc = meta_check(m, err);
	if (rc)
		return rc;
	const struct profile *pr = &profiles[p];
	if (m->remote_pp_size != 1 && !(pr->fields & B(REMOTE_PP_SIZE)))
		return kvb_err_set(err, KVB_ERR_INVALID,
				   "remote_pp_size %u: a vLLM %s P has no such field and would pair the "
				   "wrong stages", m->remote_pp_size, pr->name);
	if (pr->form == KVB_VLLM_BLOCKS_FLAT && m->form == KVB_VLLM_BLOCKS_GROUPED)
		for (uint32_t i = 0; i < m->n_reqs; i++)
			if (m->reqs[i].n_lists > 1)
				return kvb_err_set(err, KVB_ERR_INVALID,
						   "request %s has %u KV-group lists; vLLM %s sends one "
						   "flat list", m->reqs[i].req_id, m->reqs[i].n_lists,
						   pr->name);
	/* msgspec's omit_defaults: a field equal to its default is left out */
	uint32_t write = 0;
	for (int f = 0; f < KVB_VLLM_XF_COUNT; f++) {
		uint32_t bit = KVB_VLLM_XF_BIT(f);
		if (!(pr->fields & bit))
			continue;
		if ((pr->required & bit) || (m->region_fields & bit) ||
		    (f == KVB_VLLM_XF_REMOTE_PP_SIZE && m->remote_pp_size != 1))
			write |= bit;
	}
	msgpack_packer pk;
	msgpack_packer_init(&pk, out, gba_write);
	msgpack_pack_map(&pk, (size_t)__builtin_popcount(write));
	for (int f = 0; f < KVB_VLLM_XF_COUNT; f++) {
		if (!(write & KVB_VLLM_XF_BIT(f)))
			continue;
		pack_cstr(&pk, field_names[f]);
		switch (f) {
		case KVB_VLLM_XF_REMOTE_HOSTNAME:
			pack_cstr(&pk, m->remote_hostname);
			break;
		case KVB_VLLM_XF_REMOTE_PORT:
			msgpack_pack_uint16(&pk, m->remote_port);
			break;
		case KVB_VLLM_XF_REMOTE_TP_SIZE:
			msgpack_pack_uint32(&pk, m->remote_tp_size);
			break;
		case KVB_VLLM_XF_REMOTE_TP_RANK:
			msgpack_pack_uint32(&pk, m->remote_tp_rank);
			break;
		case KVB_VLLM_XF_REQ_BLOCKS:
			pack_req_blocks(&pk, m, pr->form);
			break;
		case KVB_VLLM_XF_REMOTE_PP_SIZE:
			msgpack_pack_uint32(&pk, m->remote_pp_size);
			break;
		default:
			pack_region_list(&pk, m, f);
		}
	}
	return KVB_OK;
}

/* ---- building by hand -------------------------------------------------------- */

int kvb_vllm_xfer_meta_init(kvb_vllm_xfer_meta_t *m, const char *remote_hostname,
			    uint16_t remote_port, uint32_t tp_size, uint32_t tp_rank, kvb_err_t *err)
{
	if (!m)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_xfer_meta_init: NULL meta");
	memset(m, 0, sizeof(*m));
	if (remote_hostname && strlen(remote_hostname) >= KVB_VLLM_HOST_MAX)
		return kvb_err_set(err, KVB_ERR_INVALID, "remote_hostname is %zu bytes (at most %u)",
				   strlen(remote_hostname), KVB_VLLM_HOST_MAX - 1);
	int rc = head_check(remote_hostname, remote_port, tp_size, tp_rank, 1, err);
	if (rc)
		return rc;
	g_strlcpy(m->remote_hostname, remote_hostname, sizeof(m->remote_hostname));
	m->remote_port = remote_port;
	m->remote_tp_size = tp_size;
	m->remote_tp_rank = tp_rank;
	m->remote_pp_size = 1;
	m->form = KVB_VLLM_BLOCKS_GROUPED;
	return KVB_OK;
}

int kvb_vllm_xfer_meta_add_request(kvb_vllm_xfer_meta_t *m, const char *req_id,
				   const char *transfer_id, const uint32_t *block_ids,
				   const uint32_t *list_counts, uint32_t n_lists, kvb_err_t *err)
{
	if (!m || !req_id || !transfer_id || (n_lists && !list_counts))
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_xfer_meta_add_request: NULL argument");
	if (strlen(req_id) >= KVB_VLLM_ID_MAX || strlen(transfer_id) >= KVB_VLLM_ID_MAX)
		return kvb_err_set(err, KVB_ERR_INVALID, "request '%.32s': id or transfer id of %u "
				   "bytes or more", req_id, KVB_VLLM_ID_MAX);
	int rc = id_check(req_id, KVB_VLLM_ID_MAX, "request id", err);
	if (rc || (rc = id_check(transfer_id, KVB_VLLM_ID_MAX, "transfer id", err)))
		return rc;
	if (m->n_reqs >= KVB_VLLM_MAX_REQUESTS)
		return kvb_err_set(err, KVB_ERR_INVALID, "request %s: already %u requests (at most %u)",
				   req_id, m->n_reqs, KVB_VLLM_MAX_REQUESTS);
	if ((m->form == KVB_VLLM_BLOCKS_FLAT && n_lists != 1) || n_lists > KVB_VLLM_MAX_GROUPS)
		return kvb_err_set(err, KVB_ERR_INVALID, "request %s: %u block lists (%s)", req_id,
				   n_lists, m->form == KVB_VLLM_BLOCKS_FLAT ? "flat form: exactly 1"
									 : "at most 64");
	for (uint32_t i = 0; i < m->n_reqs; i++)
		if (!strcmp(m->reqs[i].req_id, req_id) || !strcmp(m->reqs[i].transfer_id, transfer_id))
			return kvb_err_set(err, KVB_ERR_EXISTS,
					   "request %s (transfer %s): id or transfer id already added",
					   req_id, transfer_id);
	uint64_t total = 0;
	for (uint32_t g = 0; g < n_lists; g++)
		total += list_counts[g];
	if (total && !block_ids)
		return kvb_err_set(err, KVB_ERR_INVALID, "request %s: %" PRIu64 " ids, NULL array",
				   req_id, total);
	if (m->n_block_ids + total > KVB_VLLM_MAX_BLOCKS)
		return kvb_err_set(err, KVB_ERR_INVALID,
				   "request %s: %" PRIu64 " more block ids would make %" PRIu64
				   " (at most %u)", req_id, total, m->n_block_ids + total,
				   KVB_VLLM_MAX_BLOCKS);
	m->reqs = g_renew(kvb_vllm_xfer_req_t, m->reqs, m->n_reqs + 1);
	kvb_vllm_xfer_req_t *r = &m->reqs[m->n_reqs];
	memset(r, 0, sizeof(*r));
	g_strlcpy(r->req_id, req_id, sizeof(r->req_id));
	g_strlcpy(r->transfer_id, transfer_id, sizeof(r->transfer_id));
	r->first_list = m->n_lists;
	r->n_lists = n_lists;
	m->lists = g_renew(kvb_vllm_xfer_list_t, m->lists, m->n_lists + n_lists + 1);
	m->block_ids = g_renew(uint32_t, m->block_ids, m->n_block_ids + total + 1);
	uint32_t at = m->n_block_ids;
	for (uint32_t g = 0; g < n_lists; g++) {
		m->lists[m->n_lists].offset = at;
		m->lists[m->n_lists].count = list_counts[g];
		at += list_counts[g];
		m->n_lists++;
	}
	if (total)
		memcpy(m->block_ids + m->n_block_ids, block_ids, total * sizeof(*block_ids));
	m->n_block_ids += (uint32_t)total;
	m->n_reqs++;
	return KVB_OK;
}

int kvb_vllm_xfer_meta_add_region(kvb_vllm_xfer_meta_t *m, const kvb_vllm_xfer_region_t *r,
				  kvb_err_t *err)
{
	if (!m || !r)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_xfer_meta_add_region: NULL argument");
	uint32_t i = m->n_regions;
	if (r->fields & ~(uint32_t)KVB_VLLM_XF_REGION_MASK || !r->fields)
		return kvb_err_set(err, KVB_ERR_INVALID, "region %u: fields 0x%x (a non-empty subset of "
				   "0x%x)", i, r->fields, KVB_VLLM_XF_REGION_MASK);
	if (i && r->fields != m->region_fields)
		return kvb_err_set(err, KVB_ERR_INVALID,
				   "region %u: fields 0x%x, but earlier regions gave 0x%x", i, r->fields,
				   m->region_fields);
	if (i >= KVB_VLLM_MAX_REGIONS)
		return kvb_err_set(err, KVB_ERR_INVALID, "region %u: at most %u regions", i,
				   KVB_VLLM_MAX_REGIONS);
	int rc = region_check(r, r->fields, i, err);
	if (rc)
		return rc;
	uint32_t f = r->fields, n = i + 1;
	m->region_fields = f;
	if (f & B(KV_CACHES_BASE_ADDR)) {
		m->kv_caches_base_addr = g_renew(uint64_t, m->kv_caches_base_addr, n);
		m->kv_caches_base_addr[i] = r->base_addr;
	}
	if (f & B(BLOCK_LENS)) {
		m->block_lens = g_renew(uint64_t, m->block_lens, n);
		m->block_lens[i] = r->block_len;
	}
	if (f & B(KV_BLOCK_LENS)) {
		m->kv_block_lens = g_renew(uint64_t, m->kv_block_lens, n);
		m->kv_block_lens[i] = r->kv_block_len;
	}
	if (f & B(LAYER_NAMES)) {
		m->layer_names = g_renew(xfer_name_t, m->layer_names, n);
		memset(m->layer_names[i], 0, KVB_VLLM_NAME_MAX);
		g_strlcpy(m->layer_names[i], r->layer_name, KVB_VLLM_NAME_MAX);
	}
	if (f & B(LAYER_INDICES)) {
		m->layer_indices = g_renew(uint32_t, m->layer_indices, n);
		m->layer_indices[i] = r->layer_index;
	}
	if (f & B(GROUP_INDICES)) {
		m->group_indices = g_renew(int32_t, m->group_indices, n);
		m->group_indices[i] = r->group_index;
	}
	if (f & B(SHARED_GROUP_IDS)) {
		m->shared_lists = g_renew(kvb_vllm_xfer_list_t, m->shared_lists, n);
		m->shared_lists[i].offset = m->n_shared_ids;
		m->shared_lists[i].count = r->n_shared_group_ids;
		m->shared_ids = g_renew(uint32_t, m->shared_ids, m->n_shared_ids + r->n_shared_group_ids + 1);
		if (r->n_shared_group_ids)
			memcpy(m->shared_ids + m->n_shared_ids, r->shared_group_ids,
			       r->n_shared_group_ids * sizeof(uint32_t));
		m->n_shared_ids += r->n_shared_group_ids;
	}
	if (f & B(ROW_OFFSETS)) {
		m->row_offsets = g_renew(int64_t, m->row_offsets, n);
		m->row_offsets[i] = r->row_offset;
	}
	m->n_regions = n;
	return KVB_OK;
}

int kvb_vllm_xfer_meta_get_region(const kvb_vllm_xfer_meta_t *m, uint32_t i,
				  kvb_vllm_xfer_region_t *r)
{
	if (!m || !r || i >= m->n_regions)
		return KVB_ERR_RANGE;
	uint32_t f = m->region_fields;
	memset(r, 0, sizeof(*r));
	r->fields = f;
	if (((f & B(KV_CACHES_BASE_ADDR)) && !m->kv_caches_base_addr) ||
	    ((f & B(BLOCK_LENS)) && !m->block_lens) || ((f & B(KV_BLOCK_LENS)) && !m->kv_block_lens) ||
	    ((f & B(LAYER_NAMES)) && !m->layer_names) ||
	    ((f & B(LAYER_INDICES)) && !m->layer_indices) ||
	    ((f & B(GROUP_INDICES)) && !m->group_indices) ||
	    ((f & B(SHARED_GROUP_IDS)) && (!m->shared_lists || (m->n_shared_ids && !m->shared_ids))) ||
	    ((f & B(ROW_OFFSETS)) && !m->row_offsets))
		return KVB_ERR_INVALID;
	if (f & B(KV_CACHES_BASE_ADDR))
		r->base_addr = m->kv_caches_base_addr[i];
	if (f & B(BLOCK_LENS))
		r->block_len = m->block_lens[i];
	if (f & B(KV_BLOCK_LENS))
		r->kv_block_len = m->kv_block_lens[i];
	if (f & B(LAYER_NAMES))
		r->layer_name = m->layer_names[i];
	if (f & B(LAYER_INDICES))
		r->layer_index = m->layer_indices[i];
	if (f & B(GROUP_INDICES))
		r->group_index = m->group_indices[i];
	if (f & B(SHARED_GROUP_IDS)) {
		r->n_shared_group_ids = m->shared_lists[i].count;
		r->shared_group_ids = m->shared_ids ? m->shared_ids + m->shared_lists[i].offset : NULL;
	}
	if (f & B(ROW_OFFSETS))
		r->row_offset = m->row_offsets[i];
	return KVB_OK;
}

const uint32_t *kvb_vllm_xfer_meta_blocks(const kvb_vllm_xfer_meta_t *m, uint32_t req,
					  uint32_t list, uint32_t *count)
{
	if (count)
		*count = 0;
	if (!m || req >= m->n_reqs || list >= m->reqs[req].n_lists)
		return NULL;
	const kvb_vllm_xfer_list_t *l = &m->lists[m->reqs[req].first_list + list];
	if (count)
		*count = l->count;
	return m->block_ids + l->offset;
}

void kvb_vllm_xfer_meta_clear(kvb_vllm_xfer_meta_t *m)
{
	if (!m)
		return;
	g_free(m->reqs);
	g_free(m->lists);
	g_free(m->block_ids);
	g_free(m->kv_caches_base_addr);
	g_free(m->block_lens);
	g_free(m->kv_block_lens);
	g_free(m->layer_names);
	g_free(m->layer_indices);
	g_free(m->group_indices);
	g_free(m->shared_lists);
	g_free(m->shared_ids);
	g_free(m->row_offsets);
	memset(m, 0, sizeof(*m));
}

/* ---- MooncakeXferResponse ------------------------------------------------------ */

void kvb_vllm_xfer_resp_init(kvb_vllm_xfer_resp_t *resp, kvb_vllm_xfer_status_t status)
{
	if (!resp)
		return;
	memset(resp, 0, sizeof(*resp));
	resp->status = status;
}

static bool resp_names_id(const kvb_vllm_xfer_resp_t *rs, const char *id)
{
	for (uint32_t i = 0; i < rs->n_ok_reqs; i++)
		if (!strcmp(rs->ok_reqs[i], id))
			return true;
	for (uint32_t i = 0; i < rs->n_err_reqs; i++)
		if (!strcmp(rs->err_reqs[i], id))
			return true;
	return false;
}

static int resp_add(kvb_vllm_xfer_resp_t *rs, bool ok, const char *id, kvb_err_t *err)
{
	if (!rs || !id)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_xfer_resp_add: NULL argument");
	if (strlen(id) >= KVB_VLLM_ID_MAX)
		return kvb_err_set(err, KVB_ERR_INVALID, "request id '%.32s...' of %zu bytes (at most %u)",
				   id, strlen(id), KVB_VLLM_ID_MAX - 1);
	int rc = id_check(id, KVB_VLLM_ID_MAX, "request id", err);
	if (rc)
		return rc;
	uint32_t *n = ok ? &rs->n_ok_reqs : &rs->n_err_reqs;
	char (**list)[KVB_VLLM_ID_MAX] = ok ? &rs->ok_reqs : &rs->err_reqs;
	if (*n >= KVB_VLLM_MAX_REQUESTS)
		return kvb_err_set(err, KVB_ERR_INVALID, "request %s: already %u ids (at most %u)", id,
				   *n, KVB_VLLM_MAX_REQUESTS);
	if (resp_names_id(rs, id))
		return kvb_err_set(err, KVB_ERR_EXISTS, "request %s is already in the reply", id);
	*list = g_renew(xfer_id_t, *list, *n + 1);
	memset((*list)[*n], 0, KVB_VLLM_ID_MAX);
	g_strlcpy((*list)[*n], id, KVB_VLLM_ID_MAX);
	(*n)++;
	if (ok)
		rs->has_ok_reqs = true;
	else
		rs->has_err_reqs = true;
	return KVB_OK;
}

int kvb_vllm_xfer_resp_add_ok(kvb_vllm_xfer_resp_t *resp, const char *req_id, kvb_err_t *err)
{
	return resp_add(resp, true, req_id, err);
}

int kvb_vllm_xfer_resp_add_err(kvb_vllm_xfer_resp_t *resp, const char *req_id, kvb_err_t *err)
{
	return resp_add(resp, false, req_id, err);
}

int kvb_vllm_xfer_resp_set_err_msg(kvb_vllm_xfer_resp_t *resp, const char *msg, kvb_err_t *err)
{
	if (!resp)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_xfer_resp_set_err_msg: NULL reply");
	if (msg && (strlen(msg) >= KVB_VLLM_ERR_MSG_MAX || !g_utf8_validate(msg, -1, NULL)))
		return kvb_err_set(err, KVB_ERR_INVALID, "err_msg of %zu bytes: not UTF-8 or %u bytes "
				   "or more", strlen(msg), KVB_VLLM_ERR_MSG_MAX);
	g_free(resp->err_msg);
	resp->err_msg = g_strdup(msg);
	return KVB_OK;
}

static int resp_check(const kvb_vllm_xfer_resp_t *rs, kvb_err_t *err)
{
	if ((unsigned)rs->status > KVB_VLLM_XFER_ERROR)
		return kvb_err_set(err, KVB_ERR_INVALID, "status %d unknown", (int)rs->status);
	if (rs->n_ok_reqs > KVB_VLLM_MAX_REQUESTS || rs->n_err_reqs > KVB_VLLM_MAX_REQUESTS ||
	    (rs->n_ok_reqs && (!rs->ok_reqs || !rs->has_ok_reqs)) ||
	    (rs->n_err_reqs && (!rs->err_reqs || !rs->has_err_reqs)))
		return kvb_err_set(err, KVB_ERR_INVALID, "reply lists: %u ok, %u err (inconsistent)",
				   rs->n_ok_reqs, rs->n_err_reqs);
	if (rs->status == KVB_VLLM_XFER_ERROR && rs->n_ok_reqs)
		return kvb_err_set(err, KVB_ERR_INVALID, "an ERROR reply names %u request(s) as done",
				   rs->n_ok_reqs);
	GHashTable *seen = g_hash_table_new(g_str_hash, g_str_equal);
	int rc = KVB_OK;
	for (uint32_t i = 0; i < rs->n_ok_reqs + rs->n_err_reqs && !rc; i++) {
		const char *id = i < rs->n_ok_reqs ? rs->ok_reqs[i] : rs->err_reqs[i - rs->n_ok_reqs];
		if ((rc = id_check(id, KVB_VLLM_ID_MAX, "reply request id", err)))
			break;
		if (!g_hash_table_add(seen, (gpointer)id))
			rc = kvb_err_set(err, KVB_ERR_INVALID, "request %s is named twice", id);
	}
	g_hash_table_destroy(seen);
	if (rc)
		return rc;
	if (rs->err_msg && (strlen(rs->err_msg) >= KVB_VLLM_ERR_MSG_MAX ||
			    !g_utf8_validate(rs->err_msg, -1, NULL)))
		return kvb_err_set(err, KVB_ERR_INVALID, "err_msg: not UTF-8 or %u bytes or more",
				   KVB_VLLM_ERR_MSG_MAX);
	return KVB_OK;
}

int kvb_vllm_xfer_resp_encode(GByteArray *out, const kvb_vllm_xfer_resp_t *rs, kvb_err_t *err)
{
	if (!out || !rs)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_xfer_resp_encode: NULL argument");
	int rc = resp_check(rs, err);
	if (rc)
		return rc;
	msgpack_packer pk;
	msgpack_packer_init(&pk, out, gba_write);
	msgpack_pack_map(&pk, 1 + (size_t)rs->has_ok_reqs + (size_t)rs->has_err_reqs +
				      (size_t)(rs->err_msg != NULL));
	pack_cstr(&pk, "status");
	msgpack_pack_uint32(&pk, (uint32_t)rs->status);
	if (rs->has_ok_reqs) {
		pack_cstr(&pk, "ok_reqs");
		msgpack_pack_array(&pk, rs->n_ok_reqs);
		for (uint32_t i = 0; i < rs->n_ok_reqs; i++)
			pack_cstr(&pk, rs->ok_reqs[i]);
	}
	if (rs->has_err_reqs) {
		pack_cstr(&pk, "err_reqs");
		msgpack_pack_array(&pk, rs->n_err_reqs);
		for (uint32_t i = 0; i < rs->n_err_reqs; i++)
			pack_cstr(&pk, rs->err_reqs[i]);
	}
	if (rs->err_msg) {
		pack_cstr(&pk, "err_msg");
		pack_cstr(&pk, rs->err_msg);
	}
	return KVB_OK;
}

void kvb_vllm_xfer_resp_clear(kvb_vllm_xfer_resp_t *resp)
{
	if (!resp)
		return;
	g_free(resp->ok_reqs);
	g_free(resp->err_reqs);
	g_free(resp->err_msg);
	memset(resp, 0, sizeof(*resp));
}
