/* vLLM Gen 1/2 side channel: MooncakeXferMetadata and MooncakeXferResponse
 * against msgspec's own bytes and error texts (tests/fixtures/vllm, made by
 * gen_golden.py with real msgspec), the checks a P adds, the builders and
 * encoding across release profiles.  Replies, profiles and the classifier:
 * check_vllm_xfer_resp.c. */
#include "config.h"

#include <string.h>

#include <check.h>
#include <glib.h>
#include <msgpack.h>

#include "kvb_vllm_xfer_wire.h"
#include "suites.h"

#define B(f) KVB_VLLM_XF_BIT(KVB_VLLM_XF_##f)

static GBytes *fixture(const char *name)
{
	char *path = g_build_filename(KVB_FIXTURES_DIR, name, NULL);
	gchar *data;
	gsize len;
	GError *gerr = NULL;
	if (!g_file_get_contents(path, &data, &len, &gerr))
		ck_abort_msg("fixture %s: %s", path, gerr->message);
	g_free(path);
	return g_bytes_new_take(data, len);
}

/* ---- building the golden cases by hand (values as in gen_golden.py) ------ */

static const uint64_t bases2[] = {0x7f0000000000ull, 0x7f0000100000ull};
static const char *const names2[] = {"model.layers.0.self_attn.attn", "model.layers.1.self_attn.attn"};

typedef struct regs {
	uint32_t fields, n;
	const uint64_t *bases, *bl, *kv;
	const char *const *names;
	const uint32_t *li;
	const int32_t *gi;
	const uint32_t *const *shared;
	const uint32_t *nshared;
	const int64_t *rows;
} regs_t;

static void add_regions(kvb_vllm_xfer_meta_t *m, const regs_t *g)
{
	for (uint32_t i = 0; i < g->n; i++) {
		kvb_vllm_xfer_region_t r = {.fields = g->fields};
		r.base_addr = g->bases ? g->bases[i] : 0;
		r.block_len = g->bl ? g->bl[i] : 0;
		r.kv_block_len = g->kv ? g->kv[i] : 0;
		r.layer_name = g->names ? g->names[i] : NULL;
		r.layer_index = g->li ? g->li[i] : 0;
		r.group_index = g->gi ? g->gi[i] : 0;
		r.shared_group_ids = g->shared ? g->shared[i] : NULL;
		r.n_shared_group_ids = g->nshared ? g->nshared[i] : 0;
		r.row_offset = g->rows ? g->rows[i] : 0;
		kvb_err_t err;
		int rc = kvb_vllm_xfer_meta_add_region(m, &r, &err);
		ck_assert_msg(rc == KVB_OK, "add_region %u: %s", i, err.msg);
	}
}

static void add_req(kvb_vllm_xfer_meta_t *m, const char *id, const char *tid, const uint32_t *ids,
		    const uint32_t *counts, uint32_t n_lists)
{
	kvb_err_t err;
	int rc = kvb_vllm_xfer_meta_add_request(m, id, tid, ids, counts, n_lists, &err);
	ck_assert_msg(rc == KVB_OK, "add_request %s: %s", id, err.msg);
}

static void head(kvb_vllm_xfer_meta_t *m)
{
	ck_assert_int_eq(kvb_vllm_xfer_meta_init(m, "10.0.0.7", 15000, 2, 1, NULL), KVB_OK);
}

static void reqs_flat(kvb_vllm_xfer_meta_t *m)
{
	static const uint32_t a[] = {1, 2, 300, 70000}, ca[] = {4}, cb[] = {0};
	m->form = KVB_VLLM_BLOCKS_FLAT;
	add_req(m, "cmpl-a-0", "xfer-a", a, ca, 1);
	add_req(m, "cmpl-b-0", "xfer-b", NULL, cb, 1);
}

static void reqs_grouped(kvb_vllm_xfer_meta_t *m)
{
	static const uint32_t a[] = {1, 2, 3, 7}, ca[] = {3, 1};
	add_req(m, "cmpl-a-0", "xfer-a", a, ca, 2);
	add_req(m, "cmpl-b-0", "xfer-b", NULL, NULL, 0);
}

static const uint64_t bl16k[] = {16384, 16384}, bl64k[] = {65536, 65536};
static const uint32_t idx01[] = {0, 1};

static void b_v016_basic(kvb_vllm_xfer_meta_t *m)
{
	head(m);
	reqs_flat(m);
	add_regions(m, &(regs_t){.fields = B(KV_CACHES_BASE_ADDR), .n = 2, .bases = bases2});
}

static void b_v019_basic(kvb_vllm_xfer_meta_t *m)
{
	head(m);
	reqs_flat(m);
	add_regions(m, &(regs_t){.fields = B(KV_CACHES_BASE_ADDR) | B(BLOCK_LENS), .n = 2,
				 .bases = bases2, .bl = bl16k});
}

static void b_v020_groups(kvb_vllm_xfer_meta_t *m)
{
	head(m);
	reqs_grouped(m);
	add_regions(m, &(regs_t){.fields = B(KV_CACHES_BASE_ADDR) | B(BLOCK_LENS), .n = 2,
				 .bases = bases2, .bl = bl16k});
}

static void b_v024_names(kvb_vllm_xfer_meta_t *m)
{
	head(m);
	reqs_grouped(m);
	add_regions(m, &(regs_t){.fields = B(KV_CACHES_BASE_ADDR) | B(BLOCK_LENS) | B(LAYER_NAMES) |
					   B(LAYER_INDICES),
				 .n = 2, .bases = bases2, .bl = bl64k, .names = names2, .li = idx01});
}

static void b_v025_full(kvb_vllm_xfer_meta_t *m)
{
	static const uint64_t kv[] = {65536, 32768};
	static const int32_t gi[] = {0, 1};
	head(m);
	reqs_grouped(m);
	add_regions(m, &(regs_t){.fields = 0x7e0, .n = 2, .bases = bases2, .bl = bl64k, .kv = kv,
				 .names = names2, .li = idx01, .gi = gi});
}

static void b_v025_defaults(kvb_vllm_xfer_meta_t *m)
{
	head(m);
	reqs_grouped(m);
	add_regions(m, &(regs_t){.fields = B(KV_CACHES_BASE_ADDR) | B(BLOCK_LENS) | B(KV_BLOCK_LENS),
				 .n = 2, .bases = bases2, .bl = bl64k, .kv = bl64k});
}

static void b_v030_pp2(kvb_vllm_xfer_meta_t *m)
{
	static const int32_t gi[] = {0, 0};
	head(m);
	reqs_grouped(m);
	add_regions(m, &(regs_t){.fields = 0x7e0, .n = 2, .bases = bases2, .bl = bl64k, .kv = bl64k,
				 .names = names2, .li = idx01, .gi = gi});
	m->remote_pp_size = 2;
}

static const uint32_t g0[] = {0}, g01[] = {0, 1}, g2[] = {2}, g1[] = {1}, g012[] = {0, 1, 2};

static void b_v032_real(kvb_vllm_xfer_meta_t *m)
{
	static const uint64_t bases[] = {0x7f3a2c000000ull, 0x7f3a2c000000ull + 65536ull * 4096};
	static const int32_t gi[] = {0, 0};
	static const uint32_t *const sh[] = {g0, g0};
	static const uint32_t nsh[] = {1, 1};
	static const int64_t rows[] = {-1, -1};
	static const uint32_t ids[] = {110, 127}, c[] = {2};
	ck_assert_int_eq(kvb_vllm_xfer_meta_init(m, "127.0.0.1", 16743, 1, 0, NULL), KVB_OK);
	add_req(m, "cmpl-6f1c2a9e4b7d4f0a8c3e5d2b1a0f9e8d-0-1a2b3c4d",
		"xfer-6f1c2a9e4b7d4f0a8c3e5d2b1a0f9e8d", ids, c, 1);
	add_regions(m, &(regs_t){.fields = KVB_VLLM_XF_REGION_MASK, .n = 2, .bases = bases,
				 .bl = bl64k, .kv = bl64k, .names = names2, .li = idx01, .gi = gi,
				 .shared = sh, .nshared = nsh, .rows = rows});
}

static void b_v032_shared(kvb_vllm_xfer_meta_t *m)
{
	static const uint64_t bases[] = {4096, 8192}, bl[] = {8192, 8192}, kv[] = {4096, 8192};
	static const char *const names[] = {"model.layers.0.attn", "model.layers.0.attn"};
	static const uint32_t li[] = {0, 0}, nsh[] = {2, 1};
	static const int32_t gi[] = {-1, 2};
	static const uint32_t *const sh[] = {g01, g2};
	static const int64_t rows[] = {0, 4096};
	static const uint32_t ids[] = {5, 6, 7}, c[] = {1, 2};
	ck_assert_int_eq(kvb_vllm_xfer_meta_init(m, "fd00::17", 65535, 8, 7, NULL), KVB_OK);
	add_req(m, "r", "t", ids, c, 2);
	add_regions(m, &(regs_t){.fields = KVB_VLLM_XF_REGION_MASK, .n = 2, .bases = bases, .bl = bl,
				 .kv = kv, .names = names, .li = li, .gi = gi, .shared = sh,
				 .nshared = nsh, .rows = rows});
	m->remote_pp_size = 2;
}

static void b_v032_empty(kvb_vllm_xfer_meta_t *m)
{
	ck_assert_int_eq(kvb_vllm_xfer_meta_init(m, "h", 1, 1, 0, NULL), KVB_OK);
}

static void b_v019_release(kvb_vllm_xfer_meta_t *m)
{
	static const uint32_t c[] = {0};
	head(m);
	m->form = KVB_VLLM_BLOCKS_FLAT;
	add_req(m, "cmpl-z-0", "xfer-z", NULL, c, 1);
	add_regions(m, &(regs_t){.fields = B(KV_CACHES_BASE_ADDR) | B(BLOCK_LENS), .n = 2,
				 .bases = bases2, .bl = bl16k});
}

static void b_v032_release(kvb_vllm_xfer_meta_t *m)
{
	static const uint32_t c[] = {0};
	head(m);
	add_req(m, "q0", "x0", NULL, NULL, 0);
	add_req(m, "q1", "x1", NULL, c, 1);
	add_regions(m, &(regs_t){.fields = B(KV_CACHES_BASE_ADDR) | B(BLOCK_LENS) | B(KV_BLOCK_LENS),
				 .n = 2, .bases = bases2, .bl = bl64k, .kv = bl64k});
}

static void b_v032_big(kvb_vllm_xfer_meta_t *m)
{
	static const uint32_t ids[] = {0, 1, 127, 128, 255, 256, 65535, 65536, 4294967295u, 2,
				       3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
	static const uint32_t c20[] = {20}, c11[] = {1, 1};
	static const uint64_t bases[] = {UINT64_MAX, 1ull << 63, 1ull << 32, 0};
	static const uint64_t bl[] = {1, 1ull << 32, 1ull << 40, 255};
	static const uint64_t kv[] = {1, 1ull << 31, 1ull << 40, 255};
	static const char *const names[] = {"層.0", "model.layers.1",
					    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "y"};
	static const uint32_t li[] = {0, 1, INT32_MAX, 3}, nsh[] = {1, 1, 1, 3};
	static const int32_t gi[] = {0, 0, 1, -1};
	static const uint32_t *const sh[] = {g0, g0, g1, g012};
	static const int64_t rows[] = {-1, 0, 1ll << 40, INT64_MAX};
	ck_assert_int_eq(kvb_vllm_xfer_meta_init(m, "décodeur-0.example", 128, 4, 3, NULL), KVB_OK);
	add_req(m, "réq-ü-😀", "xfer-日本", ids, c20, 1);
	for (uint32_t i = 0; i < 16; i++) {
		char id[16], tid[16];
		uint32_t two[] = {i, i + 100};
		g_snprintf(id, sizeof(id), "cmpl-%02u", i);
		g_snprintf(tid, sizeof(tid), "xfer-%02u", i);
		add_req(m, id, tid, two, c11, 2);
	}
	add_regions(m, &(regs_t){.fields = KVB_VLLM_XF_REGION_MASK, .n = 4, .bases = bases, .bl = bl,
				 .kv = kv, .names = names, .li = li, .gi = gi, .shared = sh,
				 .nshared = nsh, .rows = rows});
}

typedef void (*build_fn)(kvb_vllm_xfer_meta_t *m);

static const struct golden {
	const char *name;
	kvb_vllm_xfer_profile_t p;
	build_fn build;
	uint32_t present; /* the keys msgspec wrote */
} goldens[] = {
	{"meta_v016_basic", KVB_VLLM_XFER_V016, b_v016_basic, 0x3f},
	{"meta_v019_basic", KVB_VLLM_XFER_V019, b_v019_basic, 0x7f},
	{"meta_v020_groups", KVB_VLLM_XFER_V020, b_v020_groups, 0x7f},
	{"meta_v024_names", KVB_VLLM_XFER_V024, b_v024_names, 0x37f},
	{"meta_v025_full", KVB_VLLM_XFER_V025, b_v025_full, 0x7ff},
	{"meta_v025_defaults", KVB_VLLM_XFER_V025, b_v025_defaults, 0xff},
	{"meta_v030_pp2", KVB_VLLM_XFER_V030, b_v030_pp2, 0x27ff},
	{"meta_v032_real", KVB_VLLM_XFER_V032, b_v032_real, 0x1fff},
	{"meta_v032_shared", KVB_VLLM_XFER_V032, b_v032_shared, 0x3fff},
	{"meta_v032_empty", KVB_VLLM_XFER_V032, b_v032_empty, 0xff},
	{"meta_v019_release", KVB_VLLM_XFER_V019, b_v019_release, 0x7f},
	{"meta_v032_release", KVB_VLLM_XFER_V032, b_v032_release, 0xff},
	{"meta_v032_big", KVB_VLLM_XFER_V032, b_v032_big, 0x1fff},
};

/* a and b describe the same message (present bits aside) */
static void assert_meta_eq(const kvb_vllm_xfer_meta_t *a, const kvb_vllm_xfer_meta_t *b)
{
	ck_assert_str_eq(a->remote_hostname, b->remote_hostname);
	ck_assert_uint_eq(a->remote_port, b->remote_port);
	ck_assert_uint_eq(a->remote_tp_size, b->remote_tp_size);
	ck_assert_uint_eq(a->remote_tp_rank, b->remote_tp_rank);
	ck_assert_uint_eq(a->remote_pp_size, b->remote_pp_size);
	ck_assert_int_eq(a->form, b->form);
	ck_assert_uint_eq(a->n_reqs, b->n_reqs);
	for (uint32_t i = 0; i < a->n_reqs; i++) {
		ck_assert_str_eq(a->reqs[i].req_id, b->reqs[i].req_id);
		ck_assert_str_eq(a->reqs[i].transfer_id, b->reqs[i].transfer_id);
		ck_assert_uint_eq(a->reqs[i].n_lists, b->reqs[i].n_lists);
		for (uint32_t g = 0; g < a->reqs[i].n_lists; g++) {
			uint32_t na, nb;
			const uint32_t *la = kvb_vllm_xfer_meta_blocks(a, i, g, &na);
			const uint32_t *lb = kvb_vllm_xfer_meta_blocks(b, i, g, &nb);
			ck_assert_uint_eq(na, nb);
			if (na)
				ck_assert_mem_eq(la, lb, na * sizeof(uint32_t));
		}
	}
	ck_assert_uint_eq(a->n_regions, b->n_regions);
	ck_assert_uint_eq(a->region_fields, b->region_fields);
	for (uint32_t i = 0; i < a->n_regions; i++) {
		kvb_vllm_xfer_region_t ra, rb;
		ck_assert_int_eq(kvb_vllm_xfer_meta_get_region(a, i, &ra), KVB_OK);
		ck_assert_int_eq(kvb_vllm_xfer_meta_get_region(b, i, &rb), KVB_OK);
		ck_assert_uint_eq(ra.base_addr, rb.base_addr);
		ck_assert_uint_eq(ra.block_len, rb.block_len);
		ck_assert_uint_eq(ra.kv_block_len, rb.kv_block_len);
		if (ra.layer_name || rb.layer_name)
			ck_assert_str_eq(ra.layer_name, rb.layer_name);
		ck_assert_uint_eq(ra.layer_index, rb.layer_index);
		ck_assert_int_eq(ra.group_index, rb.group_index);
		ck_assert_uint_eq(ra.n_shared_group_ids, rb.n_shared_group_ids);
		if (ra.n_shared_group_ids)
			ck_assert_mem_eq(ra.shared_group_ids, rb.shared_group_ids,
					 ra.n_shared_group_ids * sizeof(uint32_t));
		ck_assert_int_eq(ra.row_offset, rb.row_offset);
	}
}

static void assert_meta_empty(const kvb_vllm_xfer_meta_t *m)
{
	ck_assert_ptr_null(m->reqs);
	ck_assert_ptr_null(m->lists);
	ck_assert_ptr_null(m->block_ids);
	ck_assert_ptr_null(m->kv_caches_base_addr);
	ck_assert_ptr_null(m->block_lens);
	ck_assert_ptr_null(m->kv_block_lens);
	ck_assert_ptr_null(m->layer_names);
	ck_assert_ptr_null(m->layer_indices);
	ck_assert_ptr_null(m->group_indices);
	ck_assert_ptr_null(m->shared_lists);
	ck_assert_ptr_null(m->shared_ids);
	ck_assert_ptr_null(m->row_offsets);
	ck_assert_uint_eq(m->n_reqs, 0);
}

START_TEST(test_golden_encode)
{
	const struct golden *g = &goldens[_i];
	char fname[64];
	g_snprintf(fname, sizeof(fname), "%s.msgpack", g->name);
	GBytes *ref = fixture(fname);
	kvb_vllm_xfer_meta_t m;
	g->build(&m);
	GByteArray *out = g_byte_array_new();
	kvb_err_t err;
	int rc = kvb_vllm_xfer_meta_encode(g->p, out, &m, &err);
	ck_assert_msg(rc == KVB_OK, "%s: %s", g->name, err.msg);
	ck_assert_msg(out->len == g_bytes_get_size(ref), "%s: %u bytes, msgspec wrote %zu", g->name,
		      out->len, g_bytes_get_size(ref));
	ck_assert_mem_eq(out->data, g_bytes_get_data(ref, NULL), out->len);
	kvb_vllm_xfer_meta_clear(&m);
	g_byte_array_unref(out);
	g_bytes_unref(ref);
}
END_TEST

START_TEST(test_golden_decode)
{
	const struct golden *g = &goldens[_i];
	char fname[64];
	g_snprintf(fname, sizeof(fname), "%s.msgpack", g->name);
	GBytes *ref = fixture(fname);
	kvb_vllm_xfer_meta_t want, got;
	g->build(&want);
	/* as the P of that release, and as a P that takes any release */
	kvb_vllm_xfer_profile_t ps[] = {g->p, KVB_VLLM_XFER_ANY};
	for (int k = 0; k < 2; k++) {
		kvb_err_t err;
		gsize len;
		const void *data = g_bytes_get_data(ref, &len);
		int rc = kvb_vllm_xfer_meta_decode(ps[k], data, len, &got, &err);
		ck_assert_msg(rc == KVB_OK, "%s as %d: %s", g->name, ps[k], err.msg);
		ck_assert_uint_eq(got.present, g->present);
		if (ps[k] == KVB_VLLM_XFER_ANY && want.form == KVB_VLLM_BLOCKS_FLAT &&
		    got.form != want.form) {
			/* ANY calls a message without one block id GROUPED */
			ck_assert_uint_eq(got.n_block_ids, 0);
		} else {
			assert_meta_eq(&got, &want);
		}
		kvb_vllm_xfer_meta_clear(&got);
	}
	kvb_vllm_xfer_meta_clear(&want);
	g_bytes_unref(ref);
}
END_TEST

static bool profile_by_name(const char *s, kvb_vllm_xfer_profile_t *p)
{
	static const char *const n[] = {"any", "v016", "v019", "v020", "v024", "v025", "v030", "v032"};
	for (int i = 0; i < 8; i++)
		if (!strcmp(s, n[i])) {
			*p = (kvb_vllm_xfer_profile_t)i;
			return true;
		}
	return false;
}

START_TEST(test_golden_cross_releases)
{
	/* every input through every release's decoder: what msgspec said, to the letter */
	GBytes *tsv = fixture("cross.tsv");
	char *text = g_strndup(g_bytes_get_data(tsv, NULL), g_bytes_get_size(tsv));
	char **lines = g_strsplit(text, "\n", -1);
	unsigned rows = 0, refused = 0;
	for (char **l = lines; *l && **l; l++) {
		char **f = g_strsplit(*l, "\t", 3);
		ck_assert_ptr_nonnull(f[2]);
		kvb_vllm_xfer_profile_t p;
		ck_assert(profile_by_name(f[1], &p));
		char fname[80];
		g_snprintf(fname, sizeof(fname), "%s.msgpack", f[0]);
		GBytes *in = fixture(fname);
		gsize len;
		const void *data = g_bytes_get_data(in, &len);
		kvb_vllm_xfer_meta_t m;
		kvb_err_t err;
		kvb_err_clear(&err);
		int rc = kvb_vllm_xfer_meta_decode(p, data, len, &m, &err);
		if (!strcmp(f[2], "OK")) {
			ck_assert_msg(rc == KVB_OK, "%s as %s: msgspec accepts, we said '%s'", f[0], f[1],
				      err.msg);
		} else {
			ck_assert_msg(rc == KVB_ERR_PROTOCOL && !strcmp(err.msg, f[2]),
				      "%s as %s: msgspec says '%s', we said '%s'", f[0], f[1], f[2],
				      err.msg);
			assert_meta_empty(&m);
			refused++;
		}
		kvb_vllm_xfer_meta_clear(&m);
		g_bytes_unref(in);
		g_strfreev(f);
		rows++;
	}
	ck_assert_uint_ge(rows, 300);
	ck_assert_uint_ge(refused, 150);
	g_strfreev(lines);
	g_free(text);
	g_bytes_unref(tsv);
}
END_TEST

/* ---- hand-made messages: the checks msgspec does not make ----------------- */

static int gba_write(void *data, const char *buf, size_t len)
{
	g_byte_array_append(data, (const guint8 *)buf, (guint)len);
	return 0;
}

static void pstr(msgpack_packer *pk, const char *s)
{
	msgpack_pack_str_with_body(pk, s, strlen(s));
}

typedef void (*value_fn)(msgpack_packer *pk);

static void v_host(msgpack_packer *pk) { pstr(pk, "10.0.0.7"); }
static void v_port(msgpack_packer *pk) { msgpack_pack_uint32(pk, 15000); }
static void v_tp_size(msgpack_packer *pk) { msgpack_pack_uint32(pk, 2); }
static void v_tp_rank(msgpack_packer *pk) { msgpack_pack_uint32(pk, 1); }
static void v_req_blocks(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 1);
	pstr(pk, "r");
	msgpack_pack_array(pk, 2);
	pstr(pk, "t");
	msgpack_pack_array(pk, 1);
	msgpack_pack_array(pk, 2);
	msgpack_pack_uint32(pk, 1);
	msgpack_pack_uint32(pk, 2);
}
static void v_pair_u64(msgpack_packer *pk, uint64_t a, uint64_t b)
{
	msgpack_pack_array(pk, 2);
	msgpack_pack_uint64(pk, a);
	msgpack_pack_uint64(pk, b);
}
static void v_pair_i64(msgpack_packer *pk, int64_t a, int64_t b)
{
	msgpack_pack_array(pk, 2);
	msgpack_pack_int64(pk, a);
	msgpack_pack_int64(pk, b);
}
static void v_bases(msgpack_packer *pk) { v_pair_u64(pk, 4096, 8192); }
static void v_block_lens(msgpack_packer *pk) { v_pair_u64(pk, 8192, 8192); }
static void v_kv_block_lens(msgpack_packer *pk) { v_pair_u64(pk, 8192, 4096); }
static void v_names(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	pstr(pk, "a");
	pstr(pk, "b");
}
static void v_indices(msgpack_packer *pk) { v_pair_u64(pk, 0, 1); }
static void v_groups(msgpack_packer *pk) { v_pair_i64(pk, 0, -1); }
static void v_shared(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	msgpack_pack_array(pk, 1);
	msgpack_pack_uint32(pk, 0);
	msgpack_pack_array(pk, 2);
	msgpack_pack_uint32(pk, 0);
	msgpack_pack_uint32(pk, 1);
}
static void v_rows(msgpack_packer *pk) { v_pair_i64(pk, -1, 4096); }
static void v_pp(msgpack_packer *pk) { msgpack_pack_uint32(pk, 2); }

static const char *const keys[KVB_VLLM_XF_COUNT] = {
	"remote_hostname", "remote_port", "remote_tp_size", "remote_tp_rank", "req_blocks",
	"kv_caches_base_addr", "block_lens", "kv_block_lens", "registered_layer_names",
	"registered_layer_indices", "registered_group_indices", "registered_shared_group_ids",
	"registered_row_offsets", "remote_pp_size",
};
static const value_fn defaults[KVB_VLLM_XF_COUNT] = {
	v_host, v_port, v_tp_size, v_tp_rank, v_req_blocks, v_bases, v_block_lens, v_kv_block_lens,
	v_names, v_indices, v_groups, v_shared, v_rows, v_pp,
};

/* The default 0.32 message (every field) with `key` given value fn (NULL: left out). */
static GByteArray *build(const char *key, value_fn fn)
{
	GByteArray *b = g_byte_array_new();
	msgpack_packer pk;
	msgpack_packer_init(&pk, b, gba_write);
	msgpack_pack_map(&pk, KVB_VLLM_XF_COUNT - (key && !fn ? 1 : 0));
	for (int k = 0; k < KVB_VLLM_XF_COUNT; k++) {
		bool mine = key && !strcmp(key, keys[k]);
		if (mine && !fn)
			continue;
		pstr(&pk, keys[k]);
		(mine ? fn : defaults[k])(&pk);
	}
	return b;
}

static void expect_refused_as(kvb_vllm_xfer_profile_t p, const void *buf, size_t len,
			      const char *needle)
{
	kvb_vllm_xfer_meta_t m;
	kvb_err_t err;
	kvb_err_clear(&err);
	memset(&m, 0xa5, sizeof(m));
	int rc = kvb_vllm_xfer_meta_decode(p, buf, len, &m, &err);
	ck_assert_msg(rc == KVB_ERR_PROTOCOL, "expected a refusal holding '%s', got %d '%s'", needle,
		      rc, err.msg);
	ck_assert_int_eq(err.code, KVB_ERR_PROTOCOL);
	ck_assert_msg(strstr(err.msg, needle), "message '%s' lacks '%s'", err.msg, needle);
	assert_meta_empty(&m);
}

static void expect_refused(GByteArray *b, const char *needle)
{
	expect_refused_as(KVB_VLLM_XFER_V032, b->data, b->len, needle);
	expect_refused_as(KVB_VLLM_XFER_ANY, b->data, b->len, needle);
	g_byte_array_unref(b);
}

START_TEST(test_default_message)
{
	/* the builder's message is valid: each refusal below changes one field */
	GByteArray *b = build(NULL, NULL);
	kvb_vllm_xfer_meta_t m;
	kvb_err_t err;
	int rc = kvb_vllm_xfer_meta_decode(KVB_VLLM_XFER_V032, b->data, b->len, &m, &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	ck_assert_uint_eq(m.present, 0x3fff);
	ck_assert_uint_eq(m.n_regions, 2);
	ck_assert_uint_eq(m.region_fields, KVB_VLLM_XF_REGION_MASK);
	ck_assert_int_eq(m.group_indices[1], -1);
	ck_assert_int_eq(m.row_offsets[0], -1);
	ck_assert_uint_eq(m.shared_lists[1].count, 2);
	ck_assert_uint_eq(m.remote_pp_size, 2);
	kvb_vllm_xfer_meta_clear(&m);
	/* a 0.16 P ignores what its Struct lacks, whatever it holds */
	g_byte_array_unref(b);
}
END_TEST

static void v_empty_str(msgpack_packer *pk) { pstr(pk, ""); }
static void v_long_host(msgpack_packer *pk)
{
	char h[KVB_VLLM_HOST_MAX + 1];
	memset(h, 'h', KVB_VLLM_HOST_MAX);
	h[KVB_VLLM_HOST_MAX] = '\0';
	pstr(pk, h);
}
static void v_nul_host(msgpack_packer *pk) { msgpack_pack_str_with_body(pk, "a\0b", 3); }
static void v_zero(msgpack_packer *pk) { msgpack_pack_uint32(pk, 0); }
static void v_neg1(msgpack_packer *pk) { msgpack_pack_int32(pk, -1); }
static void v_65536(msgpack_packer *pk) { msgpack_pack_uint32(pk, 65536); }
static void v_two(msgpack_packer *pk) { msgpack_pack_uint32(pk, 2); }
static void v_huge(msgpack_packer *pk) { msgpack_pack_uint64(pk, UINT64_MAX); }

START_TEST(test_refuse_head)
{
	expect_refused(build("remote_hostname", v_empty_str), "str is empty (1 to 255 bytes) - at `$.remote_hostname`");
	expect_refused(build("remote_hostname", v_long_host), "is 256 bytes (at most 255) - at `$.remote_hostname`");
	expect_refused(build("remote_hostname", v_nul_host), "str holds a NUL byte - at `$.remote_hostname`");
	expect_refused(build("remote_port", v_zero), "value 0 is outside 1..65535 - at `$.remote_port`");
	expect_refused(build("remote_port", v_neg1), "value -1 is outside 1..65535 - at `$.remote_port`");
	expect_refused(build("remote_port", v_65536), "value 65536 is outside 1..65535 - at `$.remote_port`");
	expect_refused(build("remote_tp_size", v_zero), "value 0 is outside 1..65536 - at `$.remote_tp_size`");
	expect_refused(build("remote_tp_size", v_huge), "value 18446744073709551615 is outside 1..65536");
	/* rank 1 of size 1 */
	GByteArray *b = build("remote_tp_rank", v_two);
	expect_refused(b, "remote_tp_rank 2 is not below remote_tp_size 2 - at `$.remote_tp_rank`");
	expect_refused(build("remote_pp_size", v_zero), "value 0 is outside 1..65536 - at `$.remote_pp_size`");
}
END_TEST

static void v_req_ids(msgpack_packer *pk, const char *id1, size_t l1, const char *t1,
		      const char *id2, const char *t2)
{
	msgpack_pack_map(pk, 2);
	msgpack_pack_str_with_body(pk, id1, l1);
	msgpack_pack_array(pk, 2);
	pstr(pk, t1);
	msgpack_pack_array(pk, 0);
	pstr(pk, id2);
	msgpack_pack_array(pk, 2);
	pstr(pk, t2);
	msgpack_pack_array(pk, 0);
}
static void v_req_empty_id(msgpack_packer *pk) { v_req_ids(pk, "", 0, "t1", "b", "t2"); }
static void v_req_nul_id(msgpack_packer *pk) { v_req_ids(pk, "a\0", 2, "t1", "b", "t2"); }
static void v_req_long_id(msgpack_packer *pk)
{
	char id[KVB_VLLM_ID_MAX];
	memset(id, 'x', sizeof(id));
	v_req_ids(pk, id, sizeof(id), "t1", "b", "t2");
}
static void v_req_dup_id(msgpack_packer *pk) { v_req_ids(pk, "a", 1, "t1", "a", "t2"); }
static void v_req_dup_tid(msgpack_packer *pk) { v_req_ids(pk, "a", 1, "t", "b", "t"); }
static void v_req_empty_tid(msgpack_packer *pk) { v_req_ids(pk, "a", 1, "", "b", "t"); }

static void v_req_one(msgpack_packer *pk, int64_t id)
{
	msgpack_pack_map(pk, 1);
	pstr(pk, "r");
	msgpack_pack_array(pk, 2);
	pstr(pk, "t");
	msgpack_pack_array(pk, 2);
	msgpack_pack_array(pk, 0);
	msgpack_pack_array(pk, 2);
	msgpack_pack_uint32(pk, 3);
	msgpack_pack_int64(pk, id);
}
static void v_req_neg_block(msgpack_packer *pk) { v_req_one(pk, -1); }
static void v_req_big_block(msgpack_packer *pk) { v_req_one(pk, 1ll << 32); }
static void v_req_many_groups(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 1);
	pstr(pk, "r");
	msgpack_pack_array(pk, 2);
	pstr(pk, "t");
	msgpack_pack_array(pk, KVB_VLLM_MAX_GROUPS + 1);
	for (unsigned i = 0; i <= KVB_VLLM_MAX_GROUPS; i++)
		msgpack_pack_array(pk, 0);
}
static void v_req_many(msgpack_packer *pk)
{
	msgpack_pack_map(pk, KVB_VLLM_MAX_REQUESTS + 1);
	for (unsigned i = 0; i <= KVB_VLLM_MAX_REQUESTS; i++) {
		char id[16];
		g_snprintf(id, sizeof(id), "r%u", i);
		pstr(pk, id);
		msgpack_pack_array(pk, 2);
		g_snprintf(id, sizeof(id), "t%u", i);
		pstr(pk, id);
		msgpack_pack_array(pk, 0);
	}
}
static void v_req_many_blocks(msgpack_packer *pk)
{
	/* two requests, each within the limit, together one over it */
	uint32_t half = KVB_VLLM_MAX_BLOCKS / 2;
	msgpack_pack_map(pk, 2);
	for (int r = 0; r < 2; r++) {
		pstr(pk, r ? "b" : "a");
		msgpack_pack_array(pk, 2);
		pstr(pk, r ? "tb" : "ta");
		msgpack_pack_array(pk, 1);
		msgpack_pack_array(pk, half + (uint32_t)r);
		for (uint32_t i = 0; i < half + (uint32_t)r; i++)
			msgpack_pack_uint32(pk, 0);
	}
}

START_TEST(test_refuse_req_blocks)
{
	expect_refused(build("req_blocks", v_req_empty_id), "str is empty (1 to 127 bytes) - at `key` in `$.req_blocks`");
	expect_refused(build("req_blocks", v_req_nul_id), "str holds a NUL byte - at `key` in `$.req_blocks`");
	expect_refused(build("req_blocks", v_req_long_id), "is 128 bytes (at most 127) - at `key` in `$.req_blocks`");
	expect_refused(build("req_blocks", v_req_dup_id), "request id `a` appears twice - at `key` in `$.req_blocks`");
	expect_refused(build("req_blocks", v_req_dup_tid),
		       "transfer id `t` is also request `a`'s - at `$.req_blocks[...][0]` (request `b`)");
	expect_refused(build("req_blocks", v_req_empty_tid), "str is empty (1 to 127 bytes) - at `$.req_blocks[...][0]` (request `a`)");
	expect_refused(build("req_blocks", v_req_neg_block),
		       "value -1 is outside 0..4294967295 - at `$.req_blocks[...][1][1][1]` (request `r`)");
	expect_refused(build("req_blocks", v_req_big_block), "value 4294967296 is outside 0..4294967295");
	expect_refused(build("req_blocks", v_req_many_groups), "65 KV-group lists (at most 64) - at `$.req_blocks[...][1]` (request `r`)");
	expect_refused(build("req_blocks", v_req_many), "4097 requests (at most 4096) - at `$.req_blocks`");
	expect_refused(build("req_blocks", v_req_many_blocks), "4194305 block ids in all (at most 4194304)");
}
END_TEST

static void v_three(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 3);
	for (int i = 0; i < 3; i++)
		msgpack_pack_uint32(pk, 4096);
}
static void v_empty_list(msgpack_packer *pk) { msgpack_pack_array(pk, 0); }
static void v_bl_zero(msgpack_packer *pk) { v_pair_u64(pk, 8192, 0); }
static void v_kv_over(msgpack_packer *pk) { v_pair_u64(pk, 8192, 8193); }
static void v_name_empty(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	pstr(pk, "a");
	pstr(pk, "");
}
static void v_name_long(msgpack_packer *pk)
{
	char n[KVB_VLLM_NAME_MAX + 1];
	memset(n, 'n', KVB_VLLM_NAME_MAX);
	n[KVB_VLLM_NAME_MAX] = '\0';
	msgpack_pack_array(pk, 2);
	pstr(pk, n);
	pstr(pk, "b");
}
static void v_idx_neg(msgpack_packer *pk) { v_pair_i64(pk, 0, -1); }
static void v_idx_big(msgpack_packer *pk) { v_pair_u64(pk, 0, 1ull << 31); }
static void v_group_neg2(msgpack_packer *pk) { v_pair_i64(pk, -2, 0); }
static void v_row_neg2(msgpack_packer *pk) { v_pair_i64(pk, 0, -2); }
static void v_shared_neg(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	msgpack_pack_array(pk, 0);
	msgpack_pack_array(pk, 1);
	msgpack_pack_int32(pk, -1);
}
static void v_shared_many(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	msgpack_pack_array(pk, 0);
	msgpack_pack_array(pk, KVB_VLLM_MAX_GROUPS + 1);
	for (unsigned i = 0; i <= KVB_VLLM_MAX_GROUPS; i++)
		msgpack_pack_uint32(pk, i);
}
static void v_many_regions(msgpack_packer *pk)
{
	msgpack_pack_array(pk, KVB_VLLM_MAX_REGIONS + 1);
	for (unsigned i = 0; i <= KVB_VLLM_MAX_REGIONS; i++)
		msgpack_pack_uint32(pk, i);
}

START_TEST(test_refuse_regions)
{
	expect_refused(build("block_lens", v_three),
		       "3 entries but kv_caches_base_addr has 2 (one per region in every non-empty list) - at `$.block_lens`");
	expect_refused(build("registered_row_offsets", v_three), "at `$.registered_row_offsets`");
	expect_refused(build("block_lens", v_bl_zero), "value 0 is outside 1..18446744073709551615 - at `$.block_lens[1]`");
	expect_refused(build("kv_block_lens", v_kv_over), "kv_block_len 8193 exceeds block_lens[1] 8192 - at `$.kv_block_lens[1]`");
	expect_refused(build("kv_block_lens", v_bl_zero), "value 0 is outside 1.");
	expect_refused(build("registered_layer_names", v_name_empty), "str is empty (1 to 255 bytes) - at `$.registered_layer_names[1]`");
	expect_refused(build("registered_layer_names", v_name_long), "is 256 bytes (at most 255) - at `$.registered_layer_names[0]`");
	expect_refused(build("registered_layer_indices", v_idx_neg), "value -1 is outside 0..2147483647 - at `$.registered_layer_indices[1]`");
	expect_refused(build("registered_layer_indices", v_idx_big), "value 2147483648 is outside 0..2147483647");
	expect_refused(build("registered_group_indices", v_group_neg2), "value -2 is outside -1..2147483647 - at `$.registered_group_indices[0]`");
	expect_refused(build("registered_row_offsets", v_row_neg2), "value -2 is outside -1..9223372036854775807 - at `$.registered_row_offsets[1]`");
	expect_refused(build("registered_shared_group_ids", v_shared_neg), "value -1 is outside 0..2147483647 - at `$.registered_shared_group_ids[1][0]`");
	expect_refused(build("registered_shared_group_ids", v_shared_many), "65 entries (at most 64) - at `$.registered_shared_group_ids[1]`");
	expect_refused(build("kv_caches_base_addr", v_many_regions), "4097 entries (at most 4096) - at `$.kv_caches_base_addr`");
	/* an empty list is "not sent" and may stand beside non-empty ones */
	GByteArray *b = build("registered_layer_names", v_empty_list);
	kvb_vllm_xfer_meta_t m;
	kvb_err_t err;
	ck_assert_msg(kvb_vllm_xfer_meta_decode(KVB_VLLM_XFER_V032, b->data, b->len, &m, &err) == KVB_OK,
		      "%s", err.msg);
	ck_assert_uint_eq(m.region_fields, KVB_VLLM_XF_REGION_MASK & ~B(LAYER_NAMES));
	ck_assert(m.present & B(LAYER_NAMES));
	ck_assert_ptr_null(m.layer_names);
	kvb_vllm_xfer_meta_clear(&m);
	g_byte_array_unref(b);
}
END_TEST

START_TEST(test_refuse_duplicate_and_structure)
{
	/* a known key twice (msgspec keeps the last) */
	GByteArray *b = build(NULL, NULL);
	b->data[0] = 0xde; /* map16 of 15 entries: rewrite the header */
	g_byte_array_remove_index(b, 0);
	static const uint8_t hdr[] = {0xde, 0x00, 0x0f};
	g_byte_array_prepend(b, hdr, 3);
	msgpack_packer pk;
	msgpack_packer_init(&pk, b, gba_write);
	pstr(&pk, "remote_port");
	msgpack_pack_uint32(&pk, 1);
	expect_refused(b, "field `remote_port` appears twice - at `key` in `$`");
	/* an array32 that claims 4 G entries, a map32 likewise: no allocation, msgspec's text */
	static const uint8_t huge[] = {0x81, 0xaa, 'r', 'e', 'q', '_', 'b', 'l', 'o', 'c', 'k', 's',
				       0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'x'};
	expect_refused_as(KVB_VLLM_XFER_V032, huge, sizeof(huge), "Input data was truncated");
	static const uint8_t huge_unknown[] = {0x81, 0xa1, 'x', 0xdd, 0xff, 0xff, 0xff, 0xff, 0x00};
	expect_refused_as(KVB_VLLM_XFER_V032, huge_unknown, sizeof(huge_unknown),
			  "Input data was truncated");
	/* deep nesting in an unknown value */
	GByteArray *d = build(NULL, NULL);
	d->data[0]++;
	msgpack_packer_init(&pk, d, gba_write);
	pstr(&pk, "zz");
	for (int i = 0; i < 40; i++)
		msgpack_pack_array(&pk, 1);
	msgpack_pack_nil(&pk);
	expect_refused(d, "MessagePack data nests deeper than 16 levels");
	/* every proper prefix of a golden message is truncated */
	GBytes *g = fixture("meta_v032_real.msgpack");
	gsize len;
	const uint8_t *data = g_bytes_get_data(g, &len);
	for (size_t n = 0; n < len; n++)
		expect_refused_as(KVB_VLLM_XFER_V032, data, n, "Input data was truncated");
	g_bytes_unref(g);
}
END_TEST

START_TEST(test_unknown_keys_any_order)
{
	/* keys reversed, unknown keys of every type between them: same meta */
	GByteArray *b = g_byte_array_new();
	msgpack_packer pk;
	msgpack_packer_init(&pk, b, gba_write);
	msgpack_pack_map(&pk, KVB_VLLM_XF_COUNT + 3);
	for (int k = KVB_VLLM_XF_COUNT - 1; k >= 0; k--) {
		if (k == 7) {
			pstr(&pk, "prefix_replay_checkpoints");
			msgpack_pack_map(&pk, 1);
			pstr(&pk, "r");
			msgpack_pack_array(&pk, 3);
			msgpack_pack_int(&pk, -5);
			msgpack_pack_double(&pk, 1.5);
			msgpack_pack_bin_with_body(&pk, "\xff\xfe", 2);
			pstr(&pk, "prefix_replay_layout");
			msgpack_pack_nil(&pk);
			msgpack_pack_str_with_body(&pk, "\xc3\x28", 2); /* not UTF-8, never looked at */
			msgpack_pack_ext_with_body(&pk, "abc", 3, 7);
		}
		pstr(&pk, keys[k]);
		defaults[k](&pk);
	}
	kvb_vllm_xfer_meta_t m, ref;
	kvb_err_t err;
	int rc = kvb_vllm_xfer_meta_decode(KVB_VLLM_XFER_V032, b->data, b->len, &m, &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	GByteArray *d = build(NULL, NULL);
	ck_assert_int_eq(kvb_vllm_xfer_meta_decode(KVB_VLLM_XFER_V032, d->data, d->len, &ref, NULL),
			 KVB_OK);
	assert_meta_eq(&m, &ref);
	kvb_vllm_xfer_meta_clear(&m);
	/* a 0.20 P knows only fields 0-6: the rest are unknown keys to it */
	rc = kvb_vllm_xfer_meta_decode(KVB_VLLM_XFER_V020, d->data, d->len, &m, &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	ck_assert_uint_eq(m.present, 0x7f);
	ck_assert_uint_eq(m.region_fields, B(KV_CACHES_BASE_ADDR) | B(BLOCK_LENS));
	ck_assert_uint_eq(m.remote_pp_size, 1);
	kvb_vllm_xfer_meta_clear(&m);
	kvb_vllm_xfer_meta_clear(&ref);
	g_byte_array_unref(b);
	g_byte_array_unref(d);
}
END_TEST

static void v_req_mixed(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 2);
	pstr(pk, "a");
	msgpack_pack_array(pk, 2);
	pstr(pk, "ta");
	msgpack_pack_array(pk, 1);
	msgpack_pack_uint32(pk, 4);
	pstr(pk, "b");
	msgpack_pack_array(pk, 2);
	pstr(pk, "tb");
	msgpack_pack_array(pk, 1);
	msgpack_pack_array(pk, 0);
}

static void v_req_late_form(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 2);
	pstr(pk, "q0");
	msgpack_pack_array(pk, 2);
	pstr(pk, "x0");
	msgpack_pack_array(pk, 0);
	pstr(pk, "q1");
	msgpack_pack_array(pk, 2);
	pstr(pk, "x1");
	msgpack_pack_array(pk, 1);
	msgpack_pack_uint32(pk, 114);
}

START_TEST(test_any_profile)
{
	/* flat in one request, per group in another: refused by ANY; the 0.32
	 * P says what msgspec says */
	GByteArray *b = build("req_blocks", v_req_mixed);
	expect_refused_as(KVB_VLLM_XFER_ANY, b->data, b->len,
			  "a per-group list where earlier entries are flat block ids (one block-list "
			  "form per message) - at `$.req_blocks[...][1][0]` (request `b`)");
	expect_refused_as(KVB_VLLM_XFER_V032, b->data, b->len,
			  "Expected `array`, got `int` - at `$.req_blocks[...][1][0]`");
	expect_refused_as(KVB_VLLM_XFER_V019, b->data, b->len,
			  "Expected `int`, got `array` - at `$.req_blocks[...][1][0]`");
	g_byte_array_unref(b);
	/* ANY learns the form from the first block entry, wherever it is (a
	 * request with [] before it once overflowed the list array) */
	GByteArray *late = build("req_blocks", v_req_late_form);
	kvb_vllm_xfer_meta_t lm;
	kvb_err_t lerr;
	int lrc = kvb_vllm_xfer_meta_decode(KVB_VLLM_XFER_ANY, late->data, late->len, &lm, &lerr);
	ck_assert_msg(lrc == KVB_OK, "%s", lerr.msg);
	ck_assert_int_eq(lm.form, KVB_VLLM_BLOCKS_FLAT);
	ck_assert_uint_eq(lm.n_lists, 2);
	ck_assert_uint_eq(lm.reqs[0].n_lists, 1);
	ck_assert_uint_eq(lm.lists[0].count, 0);
	ck_assert_uint_eq(lm.block_ids[0], 114);
	kvb_vllm_xfer_meta_clear(&lm);
	g_byte_array_unref(late);
	/* ANY needs only fields 0-5 */
	GBytes *g = fixture("meta_v016_basic.msgpack");
	gsize len;
	const void *data = g_bytes_get_data(g, &len);
	kvb_vllm_xfer_meta_t m;
	ck_assert_int_eq(kvb_vllm_xfer_meta_decode(KVB_VLLM_XFER_ANY, data, len, &m, NULL), KVB_OK);
	ck_assert_int_eq(m.form, KVB_VLLM_BLOCKS_FLAT);
	ck_assert_uint_eq(m.reqs[0].n_lists, 1);
	kvb_vllm_xfer_meta_clear(&m);
	g_bytes_unref(g);
	kvb_err_t err;
	ck_assert_int_eq(kvb_vllm_xfer_meta_decode((kvb_vllm_xfer_profile_t)99, "\x80", 1, &m, &err),
			 KVB_ERR_UNSUPPORTED);
	ck_assert_ptr_nonnull(strstr(err.msg, "profile 99 unknown"));
	assert_meta_empty(&m);
}
END_TEST

/* ---- encoding across profiles -------------------------------------------- */

START_TEST(test_encode_projection)
{
	kvb_vllm_xfer_meta_t m, back;
	kvb_err_t err;
	b_v032_shared(&m);
	GByteArray *out = g_byte_array_new();
	/* pp 2 cannot be told to a release without remote_pp_size */
	ck_assert_int_eq(kvb_vllm_xfer_meta_encode(KVB_VLLM_XFER_V025, out, &m, &err), KVB_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "remote_pp_size 2"));
	ck_assert_uint_eq(out->len, 0);
	m.remote_pp_size = 1;
	/* two KV-group lists cannot be sent flat */
	ck_assert_int_eq(kvb_vllm_xfer_meta_encode(KVB_VLLM_XFER_V019, out, &m, &err), KVB_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "2 KV-group lists"));
	/* a release without a field does not send it */
	for (kvb_vllm_xfer_profile_t p = KVB_VLLM_XFER_V020; p <= KVB_VLLM_XFER_V032; p++) {
		g_byte_array_set_size(out, 0);
		ck_assert_int_eq(kvb_vllm_xfer_meta_encode(p, out, &m, &err), KVB_OK);
		ck_assert_int_eq(kvb_vllm_xfer_meta_decode(p, out->data, out->len, &back, &err), KVB_OK);
		ck_assert_uint_eq(back.present, kvb_vllm_xfer_profile_fields(p) & ~B(REMOTE_PP_SIZE));
		ck_assert_uint_eq(back.region_fields, kvb_vllm_xfer_profile_fields(p) & KVB_VLLM_XF_REGION_MASK);
		ck_assert_uint_eq(back.n_block_ids, 3);
		kvb_vllm_xfer_meta_clear(&back);
	}
	kvb_vllm_xfer_meta_clear(&m);
	/* a flat meta goes per group as one list; a per-group meta of one list goes flat */
	b_v016_basic(&m);
	g_byte_array_set_size(out, 0);
	ck_assert_int_eq(kvb_vllm_xfer_meta_encode(KVB_VLLM_XFER_V020, out, &m, &err), KVB_OK);
	ck_assert_int_eq(kvb_vllm_xfer_meta_decode(KVB_VLLM_XFER_V020, out->data, out->len, &back, &err),
			 KVB_OK);
	ck_assert_int_eq(back.form, KVB_VLLM_BLOCKS_GROUPED);
	ck_assert_uint_eq(back.reqs[0].n_lists, 1);
	ck_assert_uint_eq(back.reqs[1].n_lists, 1);
	uint32_t n;
	const uint32_t *ids = kvb_vllm_xfer_meta_blocks(&back, 0, 0, &n);
	ck_assert_uint_eq(n, 4);
	ck_assert_uint_eq(ids[3], 70000);
	g_byte_array_set_size(out, 0);
	ck_assert_int_eq(kvb_vllm_xfer_meta_encode(KVB_VLLM_XFER_V016, out, &back, &err), KVB_OK);
	GBytes *ref = fixture("meta_v016_basic.msgpack");
	ck_assert_uint_eq(out->len, g_bytes_get_size(ref));
	ck_assert_mem_eq(out->data, g_bytes_get_data(ref, NULL), out->len);
	g_bytes_unref(ref);
	kvb_vllm_xfer_meta_clear(&back);
	/* ANY is not a release */
	ck_assert_int_eq(kvb_vllm_xfer_meta_encode(KVB_VLLM_XFER_ANY, out, &m, &err), KVB_ERR_INVALID);
	kvb_vllm_xfer_meta_clear(&m);
	g_byte_array_unref(out);
}
END_TEST

START_TEST(test_builder_refusals)
{
	kvb_vllm_xfer_meta_t m;
	kvb_err_t err;
	ck_assert_int_eq(kvb_vllm_xfer_meta_init(&m, "", 1, 1, 0, &err), KVB_ERR_INVALID);
	ck_assert_int_eq(kvb_vllm_xfer_meta_init(&m, "h", 0, 1, 0, &err), KVB_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "remote_port 0"));
	ck_assert_int_eq(kvb_vllm_xfer_meta_init(&m, "h", 1, 2, 2, &err), KVB_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "remote_tp_rank 2 of remote_tp_size 2"));
	ck_assert_int_eq(kvb_vllm_xfer_meta_init(&m, "h", 1, 0, 0, &err), KVB_ERR_INVALID);
	ck_assert_int_eq(kvb_vllm_xfer_meta_init(&m, "h", 1, 1, 0, &err), KVB_OK);
	uint32_t c1 = 1, ids[2] = {1, 2};
	ck_assert_int_eq(kvb_vllm_xfer_meta_add_request(&m, "", "t", NULL, NULL, 0, &err), KVB_ERR_INVALID);
	ck_assert_int_eq(kvb_vllm_xfer_meta_add_request(&m, "a", "t", ids, &c1, 1, &err), KVB_OK);
	ck_assert_int_eq(kvb_vllm_xfer_meta_add_request(&m, "a", "u", NULL, NULL, 0, &err), KVB_ERR_EXISTS);
	ck_assert_int_eq(kvb_vllm_xfer_meta_add_request(&m, "b", "t", NULL, NULL, 0, &err), KVB_ERR_EXISTS);
	m.form = KVB_VLLM_BLOCKS_FLAT;
	ck_assert_int_eq(kvb_vllm_xfer_meta_add_request(&m, "b", "u", NULL, NULL, 0, &err), KVB_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "flat form: exactly 1"));
	m.form = KVB_VLLM_BLOCKS_GROUPED;
	kvb_vllm_xfer_region_t r = {.fields = B(BLOCK_LENS) | B(KV_BLOCK_LENS), .block_len = 10,
				    .kv_block_len = 11};
	ck_assert_int_eq(kvb_vllm_xfer_meta_add_region(&m, &r, &err), KVB_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "kv_block_len 11 outside 1..block_len 10"));
	r.kv_block_len = 10;
	ck_assert_int_eq(kvb_vllm_xfer_meta_add_region(&m, &r, &err), KVB_OK);
	r.fields |= B(ROW_OFFSETS);
	ck_assert_int_eq(kvb_vllm_xfer_meta_add_region(&m, &r, &err), KVB_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "earlier regions gave"));
	r.fields = B(KV_CACHES_BASE_ADDR) | (1u << 20);
	ck_assert_int_eq(kvb_vllm_xfer_meta_add_region(&m, &r, &err), KVB_ERR_INVALID);
	kvb_vllm_xfer_region_t got;
	ck_assert_int_eq(kvb_vllm_xfer_meta_get_region(&m, 1, &got), KVB_ERR_RANGE);
	ck_assert_int_eq(kvb_vllm_xfer_meta_get_region(&m, 0, &got), KVB_OK);
	ck_assert_uint_eq(got.kv_block_len, 10);
	ck_assert_ptr_null(kvb_vllm_xfer_meta_blocks(&m, 0, 1, &c1));
	ck_assert_uint_eq(c1, 0);
	/* what the decoder would refuse is not encoded */
	GByteArray *out = g_byte_array_new();
	m.remote_tp_rank = 5;
	ck_assert_int_eq(kvb_vllm_xfer_meta_encode(KVB_VLLM_XFER_V032, out, &m, &err), KVB_ERR_INVALID);
	ck_assert_uint_eq(out->len, 0);
	m.remote_tp_rank = 0;
	m.reqs[0].transfer_id[0] = '\0';
	ck_assert_int_eq(kvb_vllm_xfer_meta_encode(KVB_VLLM_XFER_V032, out, &m, &err), KVB_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "transfer id is empty"));
	kvb_vllm_xfer_meta_clear(&m);
	kvb_vllm_xfer_meta_clear(&m);
	g_byte_array_unref(out);
}
END_TEST

START_TEST(test_roundtrip_at_limits)
{
	/* the most requests and regions the limits allow */
	kvb_vllm_xfer_meta_t m, back;
	ck_assert_int_eq(kvb_vllm_xfer_meta_init(&m, "10.1.2.3", 17000, 4, 2, NULL), KVB_OK);
	uint32_t ids[40], counts[3] = {10, 0, 30};
	for (uint32_t j = 0; j < 40; j++)
		ids[j] = j * 7919;
	for (uint32_t r = 0; r < KVB_VLLM_MAX_REQUESTS; r++) {
		char id[32], tid[32];
		g_snprintf(id, sizeof(id), "cmpl-%u-0-deadbeef", r);
		g_snprintf(tid, sizeof(tid), "xfer-%u", r);
		add_req(&m, id, tid, ids, counts, r % 4);
	}
	for (uint32_t i = 0; i < KVB_VLLM_MAX_REGIONS; i++) {
		char name[48];
		g_snprintf(name, sizeof(name), "model.layers.%u.self_attn.attn", i);
		uint32_t sh[2] = {i % 3, 7};
		kvb_vllm_xfer_region_t r = {.fields = KVB_VLLM_XF_REGION_MASK,
					    .base_addr = 0x7f0000000000ull + (uint64_t)i * 0x100000,
					    .block_len = 65536, .kv_block_len = 32768,
					    .layer_name = name, .layer_index = i, .group_index = -1,
					    .shared_group_ids = sh, .n_shared_group_ids = 2,
					    .row_offset = (int64_t)i - 1};
		ck_assert_int_eq(kvb_vllm_xfer_meta_add_region(&m, &r, NULL), KVB_OK);
	}
	kvb_vllm_xfer_region_t r = {.fields = KVB_VLLM_XF_REGION_MASK, .block_len = 1, .kv_block_len = 1,
				    .layer_name = "x"};
	kvb_err_t err;
	ck_assert_int_eq(kvb_vllm_xfer_meta_add_region(&m, &r, &err), KVB_ERR_INVALID);
	ck_assert_int_eq(kvb_vllm_xfer_meta_add_request(&m, "one-more", "t-one-more", NULL, NULL, 0, &err),
			 KVB_ERR_INVALID);
	GByteArray *out = g_byte_array_new();
	ck_assert_int_eq(kvb_vllm_xfer_meta_encode(KVB_VLLM_XFER_V032, out, &m, &err), KVB_OK);
	int rc = kvb_vllm_xfer_meta_decode(KVB_VLLM_XFER_V032, out->data, out->len, &back, &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	assert_meta_eq(&m, &back);
	GByteArray *again = g_byte_array_new();
	ck_assert_int_eq(kvb_vllm_xfer_meta_encode(KVB_VLLM_XFER_V032, again, &back, &err), KVB_OK);
	ck_assert_uint_eq(again->len, out->len);
	ck_assert_mem_eq(again->data, out->data, out->len);
	kvb_vllm_xfer_meta_clear(&m);
	kvb_vllm_xfer_meta_clear(&back);
	g_byte_array_unref(out);
	g_byte_array_unref(again);
}
END_TEST

Suite *kvb_suite_vllm_xfer_wire(void)
{
	Suite *s = suite_create("vllm_xfer_wire");
	TCase *tc = tcase_create("golden");
	tcase_add_loop_test(tc, test_golden_encode, 0, G_N_ELEMENTS(goldens));
	tcase_add_loop_test(tc, test_golden_decode, 0, G_N_ELEMENTS(goldens));
	tcase_add_test(tc, test_golden_cross_releases);
	suite_add_tcase(s, tc);
	tc = tcase_create("refusals");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_default_message);
	tcase_add_test(tc, test_refuse_head);
	tcase_add_test(tc, test_refuse_req_blocks);
	tcase_add_test(tc, test_refuse_regions);
	tcase_add_test(tc, test_refuse_duplicate_and_structure);
	tcase_add_test(tc, test_unknown_keys_any_order);
	tcase_add_test(tc, test_any_profile);
	suite_add_tcase(s, tc);
	tc = tcase_create("build");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_encode_projection);
	tcase_add_test(tc, test_builder_refusals);
	tcase_add_test(tc, test_roundtrip_at_limits);
	suite_add_tcase(s, tc);
	return s;
}
