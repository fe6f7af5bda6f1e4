/*
 * Configuration: defaults, loading every key from a file, the text form's
 * round trip, environment overrides, the worker port formula, topology
 * merging, and every kind of bad input (each rejected with a message that
 * names the key and the value, and leaving the config as it was).
 */
#include "config.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>
#include <kvbridge/config.h>

#include "suites.h"

#define S_NS UINT64_C(1000000000)

/* msg contains every string of the NULL-terminated list. */
static void assert_has(const char *msg, ...)
{
	va_list ap;
	va_start(ap, msg);
	for (const char *n = va_arg(ap, const char *); n; n = va_arg(ap, const char *))
		ck_assert_msg(strstr(msg, n) != NULL, "message '%s' lacks '%s'", msg, n);
	va_end(ap);
}

static gboolean strv_equal0(char **a, char **b)
{
	guint na = a ? g_strv_length(a) : 0, nb = b ? g_strv_length(b) : 0;
	if (na != nb)
		return FALSE;
	for (guint i = 0; i < na; i++)
		if (strcmp(a[i], b[i]) != 0)
			return FALSE;
	return TRUE;
}

/* Field-by-field equality; a NULL NIC list equals an empty one. */
static void assert_config_equal(const kvb_config_t *a, const kvb_config_t *b)
{
	ck_assert_int_eq(a->role, b->role);
	ck_assert_str_eq(a->engine_id, b->engine_id);
	ck_assert_uint_eq(a->dp_rank, b->dp_rank);
	ck_assert_uint_eq(a->tp_rank, b->tp_rank);
	ck_assert_uint_eq(a->tp_size, b->tp_size);
	ck_assert_uint_eq(a->total_kv_heads, b->total_kv_heads);
	ck_assert_uint_eq(a->bootstrap_port, b->bootstrap_port);
	ck_assert_uint_eq(a->abort_timeout_ns, b->abort_timeout_ns);
	ck_assert_uint_eq(a->consumer_timeout_ns, b->consumer_timeout_ns);
	ck_assert_uint_eq(a->slice_size, b->slice_size);
	ck_assert_uint_eq(a->fragment_limit, b->fragment_limit);
	ck_assert_str_eq(a->nic_policy, b->nic_policy);
	ck_assert_uint_eq(a->seed, b->seed);
	ck_assert_uint_eq(a->nic_queue_depth, b->nic_queue_depth);
	ck_assert_uint_eq(a->slice_retries, b->slice_retries);
	ck_assert_uint_eq(a->nic_error_threshold, b->nic_error_threshold);
	ck_assert_uint_eq(a->nic_cooldown_ns, b->nic_cooldown_ns);
	ck_assert_uint_eq(a->tombstone_max, b->tombstone_max);
	ck_assert_uint_eq(a->n_topology, b->n_topology);
	for (uint32_t i = 0; i < a->n_topology; i++) {
		ck_assert_str_eq(a->topology[i].location, b->topology[i].location);
		ck_assert_msg(strv_equal0(a->topology[i].preferred, b->topology[i].preferred),
			      "preferred NICs of %s differ", a->topology[i].location);
		ck_assert_msg(strv_equal0(a->topology[i].secondary, b->topology[i].secondary),
			      "secondary NICs of %s differ", a->topology[i].location);
	}
}

static const kvb_topology_names_t *topo_find(const kvb_config_t *cfg, const char *location)
{
	for (uint32_t i = 0; i < cfg->n_topology; i++)
		if (strcmp(cfg->topology[i].location, location) == 0)
			return &cfg->topology[i];
	return NULL;
}

/* ---- defaults and roles -------------------------------------------------- */

START_TEST(test_defaults)
{
	kvb_config_t cfg;
	kvb_err_t err;
	kvb_config_init(&cfg);
	ck_assert_int_eq(cfg.role, KVB_ROLE_BOTH);
	ck_assert_str_eq(cfg.engine_id, "kvbridge");
	ck_assert_uint_eq(cfg.dp_rank, 0);
	ck_assert_uint_eq(cfg.tp_rank, 0);
	ck_assert_uint_eq(cfg.tp_size, 1);
	ck_assert_uint_eq(cfg.total_kv_heads, 0);
	ck_assert_uint_eq(cfg.bootstrap_port, 8998);
	ck_assert_uint_eq(cfg.abort_timeout_ns, 480 * S_NS);
	ck_assert_uint_eq(cfg.consumer_timeout_ns, 0);
	ck_assert_uint_eq(kvb_config_consumer_timeout(&cfg), 540 * S_NS);
	ck_assert_uint_eq(cfg.slice_size, 65536);
	ck_assert_uint_eq(cfg.fragment_limit, 16384);
	ck_assert_str_eq(cfg.nic_policy, "round_robin");
	ck_assert_uint_eq(cfg.seed, 1);
	ck_assert_uint_eq(cfg.nic_queue_depth, 64);
	ck_assert_uint_eq(cfg.slice_retries, 3);
	ck_assert_uint_eq(cfg.nic_error_threshold, 3);
	ck_assert_uint_eq(cfg.nic_cooldown_ns, 30 * S_NS);
	ck_assert_uint_eq(cfg.tombstone_max, 65536);
	ck_assert_ptr_null(cfg.topology);
	ck_assert_uint_eq(cfg.n_topology, 0);
	ck_assert_int_eq(kvb_config_validate(&cfg, &err), KVB_OK);
	ck_assert_int_eq(err.code, KVB_OK);
	ck_assert_int_eq(kvb_config_validate(&cfg, NULL), KVB_OK);
	uint32_t port = 0;
	ck_assert_int_eq(kvb_config_worker_port(&cfg, &port, &err), KVB_OK);
	ck_assert_uint_eq(port, 8998);
	/* an explicit consumer timeout wins over lease + 60 s */
	cfg.consumer_timeout_ns = 7 * S_NS;
	ck_assert_uint_eq(kvb_config_consumer_timeout(&cfg), 7 * S_NS);
	cfg.consumer_timeout_ns = 0;
	cfg.abort_timeout_ns = UINT64_MAX - 1; /* saturates, no wrap */
	ck_assert_uint_eq(kvb_config_consumer_timeout(&cfg), UINT64_MAX);
	/* clear re-inits (and takes NULL) */
	cfg.tp_size = 9;
	kvb_config_clear(&cfg);
	ck_assert_uint_eq(cfg.tp_size, 1);
	ck_assert_uint_eq(cfg.abort_timeout_ns, 480 * S_NS);
	kvb_config_clear(NULL);
	kvb_config_clear(&cfg);
}
END_TEST

START_TEST(test_roles)
{
	static const struct {
		const char *name;
		kvb_role_t role;
	} ok[] = {
		{"kv_producer", KVB_ROLE_PRODUCER}, {"producer", KVB_ROLE_PRODUCER},
		{"kv_consumer", KVB_ROLE_CONSUMER}, {"consumer", KVB_ROLE_CONSUMER},
		{"kv_both", KVB_ROLE_BOTH},         {"both", KVB_ROLE_BOTH},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(ok); i++) {
		kvb_role_t r = 0;
		ck_assert_int_eq(kvb_role_parse(ok[i].name, &r), KVB_OK);
		ck_assert_int_eq(r, ok[i].role);
	}
	kvb_role_t r = KVB_ROLE_CONSUMER;
	ck_assert_int_eq(kvb_role_parse("kv_prod", &r), KVB_ERR_CONFIG);
	ck_assert_int_eq(kvb_role_parse("KV_PRODUCER", &r), KVB_ERR_CONFIG);
	ck_assert_int_eq(kvb_role_parse("", &r), KVB_ERR_CONFIG);
	ck_assert_int_eq(kvb_role_parse(NULL, &r), KVB_ERR_CONFIG);
	ck_assert_int_eq(kvb_role_parse("both", NULL), KVB_ERR_INVALID);
	ck_assert_int_eq(r, KVB_ROLE_CONSUMER); /* untouched on failure */
	ck_assert_str_eq(kvb_role_name(KVB_ROLE_PRODUCER), "kv_producer");
	ck_assert_str_eq(kvb_role_name(KVB_ROLE_CONSUMER), "kv_consumer");
	ck_assert_str_eq(kvb_role_name(KVB_ROLE_BOTH), "kv_both");
	ck_assert_str_eq(kvb_role_name((kvb_role_t)0), "unknown");
}
END_TEST

/* ---- loading ---------------------------------------------------------------- */

static const char full_file[] =
	"# every key, none at its default\n"
	"[connector]\n"
	"role = kv_producer\n"
	"engine_id = prefill-0\n"
	"dp_rank = 2\n"
	"tp_rank = 3\n"
	"tp_size = 4\n"
	"# comments sit on their own line\n"
	"total_kv_heads = 8\n"
	"bootstrap_port = 9100\n"
	"abort_request_timeout = 0.25\n"
	"consumer_timeout = 600.5\n"
	"tombstone_max = 100\n"
	"\n"
	"[transfer]\n"
	"slice_size = 131072\n"
	"fragment_limit = 0\n"
	"nic_policy = topology\n"
	"seed = 18446744073709551615\n"
	"nic_queue_depth = 65536\n"
	"slice_retries = 0\n"
	"nic_error_threshold = 1\n"
	"nic_cooldown = 0.000000001\n"
	"\n"
	"[topology.preferred]\n"
	"cuda:0 = mlx5_0;mlx5_1\n"
	"cpu:* = mlx5_4;\n"
	"* = mlx5_0 ; mlx5_2\n"
	"[topology.secondary]\n"
	"cuda:0 = mlx5_2;mlx5_3\n"
	"cpu:1 = eth0\n";

static void check_full(const kvb_config_t *cfg)
{
	ck_assert_int_eq(cfg->role, KVB_ROLE_PRODUCER);
	ck_assert_str_eq(cfg->engine_id, "prefill-0");
	ck_assert_uint_eq(cfg->dp_rank, 2);
	ck_assert_uint_eq(cfg->tp_rank, 3);
	ck_assert_uint_eq(cfg->tp_size, 4);
	ck_assert_uint_eq(cfg->total_kv_heads, 8);
	ck_assert_uint_eq(cfg->bootstrap_port, 9100);
	ck_assert_uint_eq(cfg->abort_timeout_ns, 250000000);
	ck_assert_uint_eq(cfg->consumer_timeout_ns, 600 * S_NS + 500000000);
	ck_assert_uint_eq(kvb_config_consumer_timeout(cfg), 600 * S_NS + 500000000);
	ck_assert_uint_eq(cfg->tombstone_max, 100);
	ck_assert_uint_eq(cfg->slice_size, 131072);
	ck_assert_uint_eq(cfg->fragment_limit, 0);
	ck_assert_str_eq(cfg->nic_policy, "topology");
	ck_assert_uint_eq(cfg->seed, UINT64_MAX);
	ck_assert_uint_eq(cfg->nic_queue_depth, 65536);
	ck_assert_uint_eq(cfg->slice_retries, 0);
	ck_assert_uint_eq(cfg->nic_error_threshold, 1);
	ck_assert_uint_eq(cfg->nic_cooldown_ns, 1);
	/* preferred entries first, in file order, then secondary-only ones */
	ck_assert_uint_eq(cfg->n_topology, 4);
	ck_assert_str_eq(cfg->topology[0].location, "cuda:0");
	ck_assert_str_eq(cfg->topology[1].location, "cpu:*");
	ck_assert_str_eq(cfg->topology[2].location, "*");
	ck_assert_str_eq(cfg->topology[3].location, "cpu:1");
	const char *p0[] = {"mlx5_0", "mlx5_1", NULL}, *s0[] = {"mlx5_2", "mlx5_3", NULL};
	const char *p1[] = {"mlx5_4", NULL}, *p2[] = {"mlx5_0", "mlx5_2", NULL};
	const char *s3[] = {"eth0", NULL}, *none[] = {NULL};
	ck_assert(strv_equal0(cfg->topology[0].preferred, (char **)p0));
	ck_assert(strv_equal0(cfg->topology[0].secondary, (char **)s0));
	ck_assert(strv_equal0(cfg->topology[1].preferred, (char **)p1));
	ck_assert(strv_equal0(cfg->topology[2].preferred, (char **)p2));
	ck_assert(strv_equal0(cfg->topology[3].preferred, (char **)none));
	ck_assert(strv_equal0(cfg->topology[3].secondary, (char **)s3));
	/* lists a file did not give are empty, never NULL */
	for (uint32_t i = 0; i < cfg->n_topology; i++) {
		ck_assert_ptr_nonnull(cfg->topology[i].preferred);
		ck_assert_ptr_nonnull(cfg->topology[i].secondary);
	}
}

START_TEST(test_load_full)
{
	kvb_config_t cfg;
	kvb_err_t err;
	GError *gerr = NULL;
	kvb_config_init(&cfg);
	ck_assert_msg(kvb_config_load_data(&cfg, full_file, (gsize)-1, "full.ini", &gerr), "%s",
		      gerr ? gerr->message : "");
	check_full(&cfg);
	ck_assert_int_eq(kvb_config_validate(&cfg, &err), KVB_OK);
	kvb_config_clear(&cfg);
	ck_assert_ptr_null(cfg.topology);

	/* the same through a real file, and an explicit length */
	char *path = NULL;
	int fd = g_file_open_tmp("kvb-config-XXXXXX.ini", &path, &gerr);
	ck_assert_msg(fd >= 0, "%s", gerr ? gerr->message : "");
	close(fd);
	ck_assert(g_file_set_contents(path, full_file, -1, NULL));
	ck_assert_msg(kvb_config_load_file(&cfg, path, &gerr), "%s", gerr ? gerr->message : "");
	check_full(&cfg);
	kvb_config_clear(&cfg);
	ck_assert(kvb_config_load_data(&cfg, full_file, strlen(full_file), NULL, NULL));
	check_full(&cfg);
	kvb_config_clear(&cfg);
	g_unlink(path);
	g_free(path);

	/* an empty file and a comment-only file change nothing */
	kvb_config_t def;
	kvb_config_init(&def);
	ck_assert(kvb_config_load_data(&cfg, "", 0, "empty", NULL));
	ck_assert(kvb_config_load_data(&cfg, NULL, 0, "null", NULL));
	ck_assert(kvb_config_load_data(&cfg, "# nothing\n\n", (gsize)-1, "comments", NULL));
	assert_config_equal(&cfg, &def);

	/* a later file overrides per key; GKeyFile escapes apply to engine_id;
	 * numbers tolerate surrounding blanks */
	ck_assert(kvb_config_load_data(&cfg, "[connector]\ntp_size = 2\n", (gsize)-1, "a", NULL));
	ck_assert(kvb_config_load_data(&cfg,
				       "[connector]\nengine_id = \\sdecode #1\\t\n"
				       "role = consumer\ndp_rank = 07  \n",
				       (gsize)-1, "b", &gerr));
	ck_assert_uint_eq(cfg.tp_size, 2);
	ck_assert_uint_eq(cfg.dp_rank, 7);
	ck_assert_int_eq(cfg.role, KVB_ROLE_CONSUMER);
	ck_assert_str_eq(cfg.engine_id, " decode #1\t");
	/* repeated groups merge */
	ck_assert(kvb_config_load_data(&cfg, "[transfer]\nseed = 5\n[connector]\ntp_rank = 1\n"
					     "[transfer]\nslice_retries = 9\n",
				       (gsize)-1, "c", NULL));
	ck_assert_uint_eq(cfg.seed, 5);
	ck_assert_uint_eq(cfg.tp_rank, 1);
	ck_assert_uint_eq(cfg.slice_retries, 9);
	kvb_config_clear(&cfg);
	kvb_config_clear(&def);
}
END_TEST

START_TEST(test_seconds)
{
	static const struct {
		const char *text;
		uint64_t ns;
	} ok[] = {
		{"480", 480 * S_NS},
		{"0.5", 500000000},
		{".25", 250000000},
		{"2.", 2 * S_NS},
		{"0.1", 100000000},
		{"1.000000001", S_NS + 1},
		{"1.0000000010000", S_NS + 1}, /* zeros past 1 ns are fine */
		{"0.000000001", 1},
		{"1000000000", 1000000000 * S_NS},
		{"0001.50", S_NS + 500000000},
		{"  3  ", 3 * S_NS},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(ok); i++) {
		kvb_config_t cfg;
		GError *gerr = NULL;
		kvb_config_init(&cfg);
		char *data = g_strdup_printf("[connector]\nabort_request_timeout = %s\n", ok[i].text);
		ck_assert_msg(kvb_config_load_data(&cfg, data, (gsize)-1, "s", &gerr), "%s: %s",
			      ok[i].text, gerr ? gerr->message : "");
		ck_assert_uint_eq(cfg.abort_timeout_ns, ok[i].ns);
		/* and back: the text form is exact */
		char *text = kvb_config_to_string(&cfg);
		kvb_config_t back;
		kvb_config_init(&back);
		ck_assert(kvb_config_load_data(&back, text, (gsize)-1, "back", NULL));
		ck_assert_uint_eq(back.abort_timeout_ns, ok[i].ns);
		g_free(text);
		g_free(data);
		kvb_config_clear(&back);
		kvb_config_clear(&cfg);
	}
}
END_TEST

/* ---- round trip ---------------------------------------------------------- */

static void round_trip(const kvb_config_t *cfg)
{
	kvb_config_t back;
	GError *gerr = NULL;
	char *text = kvb_config_to_string(cfg);
	ck_assert_ptr_nonnull(text);
	kvb_config_init(&back);
	ck_assert_msg(kvb_config_load_data(&back, text, (gsize)-1, "to_string", &gerr), "%s\n%s",
		      gerr ? gerr->message : "", text);
	assert_config_equal(cfg, &back);
	/* and the text form is a fixed point */
	char *again = kvb_config_to_string(&back);
	ck_assert_str_eq(text, again);
	g_free(again);
	g_free(text);
	kvb_config_clear(&back);
}

START_TEST(test_round_trip)
{
	kvb_config_t cfg;
	kvb_config_init(&cfg);
	round_trip(&cfg);
	char *text = kvb_config_to_string(&cfg);
	assert_has(text, "[connector]", "role=kv_both", "engine_id=kvbridge", "bootstrap_port=8998",
		   "abort_request_timeout=480", "consumer_timeout=0", "[transfer]",
		   "slice_size=65536", "nic_policy=round_robin", "nic_cooldown=30", NULL);
	ck_assert_ptr_null(strstr(text, "topology"));
	g_free(text);

	ck_assert(kvb_config_load_data(&cfg, full_file, (gsize)-1, "full", NULL));
	round_trip(&cfg);

	/* awkward but valid strings, built by hand, with NULL lists and an
	 * entry that has only secondary NICs ahead of one with preferred */
	kvb_config_clear(&cfg);
	g_strlcpy(cfg.engine_id, "  lead;trail \\ #x=y\n[z] ", sizeof(cfg.engine_id));
	cfg.abort_timeout_ns = 1;
	cfg.nic_cooldown_ns = 123456789012;
	cfg.topology = g_new0(kvb_topology_names_t, 3);
	cfg.n_topology = 3;
	g_strlcpy(cfg.topology[0].location, "cpu:0", KVB_LOCATION_MAX);
	cfg.topology[0].secondary = g_strsplit("eth0,eth1", ",", -1);
	g_strlcpy(cfg.topology[1].location, "cuda:7", KVB_LOCATION_MAX);
	cfg.topology[1].preferred = g_strsplit("mlx5_7", ",", -1);
	g_strlcpy(cfg.topology[2].location, "*", KVB_LOCATION_MAX);
	ck_assert_int_eq(kvb_config_validate(&cfg, NULL), KVB_OK);
	round_trip(&cfg);
	kvb_config_clear(&cfg);
}
END_TEST

START_TEST(test_copy)
{
	kvb_config_t a, b, c;
	kvb_config_init(&a);
	kvb_config_init(&b);
	kvb_config_init(&c);
	ck_assert(kvb_config_load_data(&a, full_file, (gsize)-1, "full", NULL));
	kvb_config_copy(&b, &a);
	assert_config_equal(&a, &b);
	ck_assert_ptr_ne(a.topology, b.topology);
	ck_assert_ptr_ne(a.topology[0].preferred, b.topology[0].preferred);
	ck_assert_ptr_ne(a.topology[0].preferred[0], b.topology[0].preferred[0]);
	/* copying into a config that owns a topology frees the old one */
	kvb_config_copy(&b, &a);
	kvb_config_copy(&b, &b);
	assert_config_equal(&a, &b);
	kvb_config_copy(&b, &c);
	assert_config_equal(&b, &c);
	ck_assert_ptr_null(b.topology);
	/* the copy is independent */
	kvb_config_copy(&b, &a);
	kvb_config_clear(&a);
	check_full(&b);
	kvb_config_copy(&a, &b);
	g_free(b.topology[0].preferred[0]);
	b.topology[0].preferred[0] = g_strdup("changed");
	ck_assert_str_eq(a.topology[0].preferred[0], "mlx5_0");
	/* a zero-filled destination is fine too */
	kvb_config_t z;
	memset(&z, 0, sizeof(z));
	kvb_config_copy(&z, &a);
	assert_config_equal(&a, &z);
	kvb_config_clear(&z);
	kvb_config_clear(&a);
	kvb_config_clear(&b);
	kvb_config_clear(&c);
}
END_TEST

START_TEST(test_topology_merge)
{
	kvb_config_t cfg;
	kvb_config_init(&cfg);
	ck_assert(kvb_config_load_data(&cfg,
				       "[topology.preferred]\ncuda:0 = a;b\ncuda:1 = c\n"
				       "[topology.secondary]\ncuda:1 = d\n",
				       (gsize)-1, "one", NULL));
	ck_assert_uint_eq(cfg.n_topology, 2);
	/* a later source replaces one list of one location, nothing else */
	ck_assert(kvb_config_load_data(&cfg,
				       "[topology.secondary]\ncuda:0 = e\n"
				       "[topology.preferred]\ncuda:1 = f;g\ncpu:0 =\n",
				       (gsize)-1, "two", NULL));
	ck_assert_uint_eq(cfg.n_topology, 3);
	const char *ab[] = {"a", "b", NULL}, *e[] = {"e", NULL}, *fg[] = {"f", "g", NULL};
	const char *d[] = {"d", NULL}, *none[] = {NULL};
	const kvb_topology_names_t *t = topo_find(&cfg, "cuda:0");
	ck_assert_ptr_nonnull(t);
	ck_assert(strv_equal0(t->preferred, (char **)ab));
	ck_assert(strv_equal0(t->secondary, (char **)e));
	t = topo_find(&cfg, "cuda:1");
	ck_assert_ptr_nonnull(t);
	ck_assert(strv_equal0(t->preferred, (char **)fg));
	ck_assert(strv_equal0(t->secondary, (char **)d));
	t = topo_find(&cfg, "cpu:0");
	ck_assert_ptr_nonnull(t);
	ck_assert(strv_equal0(t->preferred, (char **)none));
	ck_assert_int_eq(kvb_config_validate(&cfg, NULL), KVB_OK);
	round_trip(&cfg);

	/* exactly KVB_MAX_NICS names are fine (a trailing ';' is allowed) */
	GString *many = g_string_new("[topology.preferred]\ncuda:0 = ");
	for (unsigned i = 0; i < KVB_MAX_NICS; i++)
		g_string_append_printf(many, "mlx5_%u;", i);
	g_string_append_c(many, '\n');
	ck_assert(kvb_config_load_data(&cfg, many->str, many->len, "many", NULL));
	ck_assert_uint_eq(g_strv_length(topo_find(&cfg, "cuda:0")->preferred), KVB_MAX_NICS);
	g_string_free(many, TRUE);
	/* a 31-character location is the longest */
	ck_assert(kvb_config_load_data(&cfg, "[topology.secondary]\nabcdefghijklmnopqrstuvwxyz:1234 = x\n",
				       (gsize)-1, "long", NULL));
	ck_assert_ptr_nonnull(topo_find(&cfg, "abcdefghijklmnopqrstuvwxyz:1234"));
	kvb_config_clear(&cfg);
}
END_TEST

/* ---- environment -------------------------------------------------------- */

START_TEST(test_env)
{
	kvb_config_t cfg;
	GError *gerr = NULL;
	kvb_config_init(&cfg);
	ck_assert(kvb_config_load_data(&cfg,
				       "[connector]\nbootstrap_port = 9000\nabort_request_timeout = 100\n"
				       "[transfer]\nslice_size = 8192\nfragment_limit = 1024\n",
				       (gsize)-1, "file", NULL));
	char *env[] = {"PATH=/bin", "VLLM_MOONCAKE_BOOTSTRAP_PORT=7000",
		       "VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT=0.5", "MC_SLICE_SIZE=1048576", NULL};
	ck_assert_msg(kvb_config_apply_env(&cfg, env, &gerr), "%s", gerr ? gerr->message : "");
	ck_assert_uint_eq(cfg.bootstrap_port, 7000);
	ck_assert_uint_eq(cfg.abort_timeout_ns, 500000000);
	ck_assert_uint_eq(cfg.slice_size, 1048576);
	ck_assert_uint_eq(cfg.fragment_limit, 1024); /* no variable: the file's value */
	ck_assert_uint_eq(kvb_config_consumer_timeout(&cfg), 60 * S_NS + 500000000);

	/* an environment without the variables changes nothing */
	char *empty[] = {NULL};
	kvb_config_t before;
	kvb_config_init(&before);
	kvb_config_copy(&before, &cfg);
	ck_assert(kvb_config_apply_env(&cfg, empty, NULL));
	assert_config_equal(&cfg, &before);

	/* bad values: FALSE, the variable and value named, nothing applied
	 * (the good port in front of the bad value is not kept either) */
	static const struct {
		const char *var, *value, *need;
	} bad[] = {
		{"VLLM_MOONCAKE_BOOTSTRAP_PORT", "0", "[1, 65535]"},
		{"VLLM_MOONCAKE_BOOTSTRAP_PORT", "70000", "[1, 65535]"},
		{"VLLM_MOONCAKE_BOOTSTRAP_PORT", "12abc", "not a decimal integer"},
		{"VLLM_MOONCAKE_BOOTSTRAP_PORT", "-1", "not a decimal integer"},
		{"VLLM_MOONCAKE_BOOTSTRAP_PORT", "", "not a decimal integer"},
		{"VLLM_MOONCAKE_BOOTSTRAP_PORT", "0x2000", "not a decimal integer"},
		{"VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT", "0", "(0, 1000000000]"},
		{"VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT", "-1", "not a decimal number"},
		{"VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT", "nan", "not a decimal number"},
		{"VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT", "inf", "not a decimal number"},
		{"VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT", "1e3", "not a decimal number"},
		{"VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT", "1000000001", "out of range"},
		{"VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT", "99999999999999999999999", "out of range"},
		{"MC_SLICE_SIZE", "100", "[4096, 1073741824]"},
		{"MC_SLICE_SIZE", "0", "[4096, 1073741824]"},
		{"MC_SLICE_SIZE", "18446744073709551616", "out of range"},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
		char *kv = g_strdup_printf("%s=%s", bad[i].var, bad[i].value);
		char *e2[] = {"VLLM_MOONCAKE_BOOTSTRAP_PORT=1234", kv, NULL};
		char *quoted = g_strdup_printf("'%s'", bad[i].value);
		if (strcmp(bad[i].var, "VLLM_MOONCAKE_BOOTSTRAP_PORT") == 0)
			e2[0] = "MC_SLICE_SIZE=4096"; /* good value, other variable */
		ck_assert_msg(!kvb_config_apply_env(&cfg, e2, &gerr), "%s accepted", kv);
		ck_assert_msg(g_error_matches(gerr, KVB_CONFIG_ERROR, KVB_CONFIG_ERROR_INVALID), "%s",
			      gerr->message);
		assert_has(gerr->message, bad[i].var, quoted, bad[i].need, NULL);
		assert_config_equal(&cfg, &before);
		g_clear_error(&gerr);
		g_free(quoted);
		g_free(kv);
	}

	/* NULL: the process environment */
	g_setenv("VLLM_MOONCAKE_BOOTSTRAP_PORT", "6000", TRUE);
	ck_assert(kvb_config_apply_env(&cfg, NULL, NULL));
	ck_assert_uint_eq(cfg.bootstrap_port, 6000);
	g_setenv("VLLM_MOONCAKE_BOOTSTRAP_PORT", "six", TRUE);
	ck_assert(!kvb_config_apply_env(&cfg, NULL, &gerr));
	assert_has(gerr->message, "VLLM_MOONCAKE_BOOTSTRAP_PORT", "'six'", NULL);
	g_clear_error(&gerr);
	g_unsetenv("VLLM_MOONCAKE_BOOTSTRAP_PORT");
	ck_assert_uint_eq(cfg.bootstrap_port, 6000);
	kvb_config_clear(&before);
	kvb_config_clear(&cfg);
}
END_TEST

/* ---- worker port ---------------------------------------------------------- */

START_TEST(test_worker_port)
{
	kvb_config_t cfg;
	kvb_err_t err;
	uint32_t port = 0;
	kvb_config_init(&cfg);
	cfg.dp_rank = 1;
	cfg.tp_size = 4;
	cfg.tp_rank = 2;
	ck_assert_int_eq(kvb_config_worker_port(&cfg, &port, &err), KVB_OK);
	ck_assert_uint_eq(port, 9004); /* 8998 + 1 * 4 + 2 */
	ck_assert_int_eq(kvb_config_worker_port(&cfg, &port, NULL), KVB_OK);

	/* the last port is 65535 */
	cfg.bootstrap_port = 65535 - 6;
	ck_assert_int_eq(kvb_config_worker_port(&cfg, &port, &err), KVB_OK);
	ck_assert_uint_eq(port, 65535);
	cfg.bootstrap_port = 65535 - 5;
	port = 1;
	ck_assert_int_eq(kvb_config_worker_port(&cfg, &port, &err), KVB_ERR_CONFIG);
	ck_assert_int_eq(err.code, KVB_ERR_CONFIG);
	assert_has(err.msg, "65536", "65535", "dp_rank 1", "tp_size 4", "tp_rank 2", NULL);
	ck_assert_uint_eq(port, 1); /* untouched */

	/* huge ranks neither wrap nor pass */
	cfg.bootstrap_port = 8998;
	cfg.dp_rank = UINT32_MAX;
	cfg.tp_size = UINT32_MAX;
	cfg.tp_rank = UINT32_MAX - 1;
	ck_assert_int_eq(kvb_config_worker_port(&cfg, &port, &err), KVB_ERR_CONFIG);
	assert_has(err.msg, "18446744069414593317", NULL); /* exact, no wrap */
	cfg.dp_rank = 16384;
	cfg.tp_size = 4;
	cfg.tp_rank = 0;
	ck_assert_int_eq(kvb_config_worker_port(&cfg, &port, &err), KVB_ERR_CONFIG);

	cfg.dp_rank = 0;
	cfg.bootstrap_port = 0;
	ck_assert_int_eq(kvb_config_worker_port(&cfg, &port, &err), KVB_ERR_CONFIG);
	assert_has(err.msg, "bootstrap_port", "0", NULL);
	cfg.bootstrap_port = 70000;
	ck_assert_int_eq(kvb_config_worker_port(&cfg, &port, &err), KVB_ERR_CONFIG);
	assert_has(err.msg, "bootstrap_port", "70000", NULL);
	ck_assert_int_eq(kvb_config_worker_port(&cfg, NULL, &err), KVB_ERR_INVALID);
	ck_assert_int_eq(kvb_config_worker_port(NULL, &port, &err), KVB_ERR_INVALID);
	kvb_config_clear(&cfg);
}
END_TEST

/* ---- bad files ------------------------------------------------------------ */

typedef struct bad_case {
	const char *data;
	int code;            /* KVB_CONFIG_ERROR_*, or -1 for G_KEY_FILE_ERROR */
	const char *need[4]; /* substrings of the message besides the origin */
} bad_case_t;

static const bad_case_t bad_files[] = {
	{"[conector]\nrole = kv_producer\n",
	 KVB_CONFIG_ERROR_UNKNOWN_KEY, {"[conector]", "unknown group"}},
	{"[connector]\ntp_szie = 4\n",
	 KVB_CONFIG_ERROR_UNKNOWN_KEY, {"[connector]", "tp_szie", "tp_size"}},
	{"[transfer]\nrole = kv_both\n", KVB_CONFIG_ERROR_UNKNOWN_KEY, {"[transfer]", "'role'"}},
	{"[connector]\ntp_size[de] = 4\n",
	 KVB_CONFIG_ERROR_UNKNOWN_KEY, {"[connector]", "tp_size[de]"}},
	{"[connector]\ntp_size = 12abc\n",
	 KVB_CONFIG_ERROR_INVALID, {"[connector] tp_size", "'12abc'", "[1, 4294967295]"}},
	{"[connector]\ndp_rank = -1\n",
	 KVB_CONFIG_ERROR_INVALID, {"[connector] dp_rank", "'-1'", "[0, 4294967295]"}},
	{"[connector]\ndp_rank = +1\n", KVB_CONFIG_ERROR_INVALID, {"dp_rank", "'+1'"}},
	{"[connector]\ntp_rank = 4294967296\n",
	 KVB_CONFIG_ERROR_INVALID, {"tp_rank", "'4294967296'", "out of range"}},
	{"[transfer]\nseed = 18446744073709551616\n",
	 KVB_CONFIG_ERROR_INVALID, {"[transfer] seed", "'18446744073709551616'", "[0, 18446744073709551615]"}},
	{"[transfer]\nseed = \n",
	 KVB_CONFIG_ERROR_INVALID, {"[transfer] seed", "''", "not a decimal integer"}},
	{"[connector]\nbootstrap_port = 0\n",
	 KVB_CONFIG_ERROR_INVALID, {"bootstrap_port", "'0'", "[1, 65535]"}},
	{"[connector]\nbootstrap_port = 70000\n",
	 KVB_CONFIG_ERROR_INVALID, {"bootstrap_port", "'70000'", "[1, 65535]"}},
	{"[connector]\nabort_request_timeout = 0\n",
	 KVB_CONFIG_ERROR_INVALID, {"abort_request_timeout", "'0'", "(0, 1000000000]"}},
	{"[connector]\nabort_request_timeout = -1\n",
	 KVB_CONFIG_ERROR_INVALID, {"abort_request_timeout", "'-1'", "seconds"}},
	{"[connector]\nabort_request_timeout = nan\n",
	 KVB_CONFIG_ERROR_INVALID, {"abort_request_timeout", "'nan'"}},
	{"[connector]\nabort_request_timeout = -inf\n",
	 KVB_CONFIG_ERROR_INVALID, {"abort_request_timeout", "'-inf'"}},
	{"[connector]\nabort_request_timeout = 1e9\n",
	 KVB_CONFIG_ERROR_INVALID, {"abort_request_timeout", "'1e9'"}},
	{"[connector]\nabort_request_timeout = 1000000000.5\n",
	 KVB_CONFIG_ERROR_INVALID, {"'1000000000.5'", "out of range"}},
	{"[connector]\nabort_request_timeout = 0.0000000001\n",
	 KVB_CONFIG_ERROR_INVALID, {"'0.0000000001'", "9 decimals"}},
	{"[connector]\nabort_request_timeout = .\n",
	 KVB_CONFIG_ERROR_INVALID, {"abort_request_timeout", "'.'"}},
	{"[connector]\nconsumer_timeout = 1.2.3\n",
	 KVB_CONFIG_ERROR_INVALID, {"consumer_timeout", "'1.2.3'", "[0, 1000000000]"}},
	{"[transfer]\nnic_cooldown = 0x10\n", KVB_CONFIG_ERROR_INVALID, {"nic_cooldown", "'0x10'"}},
	{"[transfer]\nslice_size = 100\n",
	 KVB_CONFIG_ERROR_INVALID, {"[transfer] slice_size", "'100'", "[4096, 1073741824]"}},
	{"[transfer]\nslice_size = 1073741825\n",
	 KVB_CONFIG_ERROR_INVALID, {"slice_size", "'1073741825'"}},
	{"[transfer]\nnic_queue_depth = 0\n",
	 KVB_CONFIG_ERROR_INVALID, {"nic_queue_depth", "'0'", "[1, 16777216]"}},
	{"[transfer]\nnic_queue_depth = 16777217\n",
	 KVB_CONFIG_ERROR_INVALID, {"nic_queue_depth", "'16777217'"}},
	{"[transfer]\nnic_error_threshold = 0\n",
	 KVB_CONFIG_ERROR_INVALID, {"nic_error_threshold", "'0'"}},
	{"[transfer]\nnic_policy = \n",
	 KVB_CONFIG_ERROR_INVALID, {"nic_policy", "''", "1 to 31 printable characters"}},
	{"[transfer]\nnic_policy = round robin\n",
	 KVB_CONFIG_ERROR_INVALID, {"[transfer] nic_policy", "'round robin'", "bad character"}},
	{"[transfer]\nnic_policy = abcdefghijabcdefghijabcdefghijab\n",
	 KVB_CONFIG_ERROR_INVALID, {"nic_policy", "abcdefghijabcdefghijabcdefghijab"}},
	{"[connector]\nengine_id =\n",
	 KVB_CONFIG_ERROR_INVALID, {"engine_id", "''", "1 to 127 bytes"}},
	{"[connector]\nrole = kv_prod\n",
	 KVB_CONFIG_ERROR_INVALID, {"[connector] role", "'kv_prod'", "kv_producer, kv_consumer or kv_both"}},
	{"[connector]\ntotal_kv_heads = 0   # 0 = unknown\n",
	 KVB_CONFIG_ERROR_INVALID, {"total_kv_heads", "'0   # 0 = unknown'", "no end-of-line comments"}},
	{"[connector]\ntp_size = 4\ntp_size = 8\n",
	 KVB_CONFIG_ERROR_INVALID, {"[connector] tp_size", "more than once"}},
	{"[connector\ntp_size = 4\n", -1, {"[connector"}},
	{"tp_size = 4\n", -1, {"group"}},
	{"[connector]\nnot a pair\n", -1, {"not a pair"}},
	{"[topology.preferred]   # comment\ncuda:0 = a\n", -1, {"# comment"}},
	{"[connector]\nengine_id = bad\\qescape\n", -1, {"[connector] engine_id"}},
	{"[connector]\nengine_id = trailing\\\n", -1, {"[connector] engine_id"}},
	{"[topology.preferred]\ncuda:0 = a\\qb\n", -1, {"[topology.preferred] cuda:0"}},
	{"[topology.preferred]\nabcdefghijklmnopqrstuvwxyz:12345 = x\n",
	 KVB_CONFIG_ERROR_INVALID, {"[topology.preferred]", "abcdefghijklmnopqrstuvwxyz:12345", "1 to 31"}},
	{"[topology.secondary]\ncuda:0[x] = a\n",
	 KVB_CONFIG_ERROR_INVALID, {"[topology.secondary]", "cuda:0[x]"}},
	{"[topology.preferred]\ncuda:0 = a;;b\n",
	 KVB_CONFIG_ERROR_INVALID, {"[topology.preferred] cuda:0", "'a;;b'", "NIC name ''"}},
	{"[topology.preferred]\ncuda:0 = a;a\n",
	 KVB_CONFIG_ERROR_INVALID, {"cuda:0", "'a;a'", "listed twice"}},
	{"[topology.preferred]\ncuda:0 = a\\;b\n",
	 KVB_CONFIG_ERROR_INVALID, {"cuda:0", "'a;b'", "without space or ';'"}},
	{"[topology.secondary]\ncpu:0 = mlx5 0\n",
	 KVB_CONFIG_ERROR_INVALID, {"[topology.secondary] cpu:0", "'mlx5 0'"}},
	{"[topology.preferred]\ncuda:0 = a\ncuda:0 = b\n",
	 KVB_CONFIG_ERROR_INVALID, {"cuda:0", "more than once"}},
};

/* A good file, then a bad one: the bad one fails with a message that names
 * the origin and the key and value, and the config is exactly as before
 * (including topology, which the bad files also try to touch). */
START_TEST(test_bad_files)
{
	const bad_case_t *bc = &bad_files[_i];
	kvb_config_t cfg, before;
	GError *gerr = NULL;
	kvb_config_init(&cfg);
	kvb_config_init(&before);
	ck_assert(kvb_config_load_data(&cfg, full_file, (gsize)-1, "full", NULL));
	kvb_config_copy(&before, &cfg);

	/* good keys ahead of the bad input must not be applied either */
	char *data = g_strdup_printf("[transfer]\nslice_retries = 77\n[topology.preferred]\ncuda:9 = z\n%s",
				     bc->data);
	if (bc->data[0] != '[')
		strcpy(data, bc->data); /* a file that must start with its own line */
	ck_assert_msg(!kvb_config_load_data(&cfg, data, (gsize)-1, "bad.ini", &gerr), "accepted: %s",
		      bc->data);
	ck_assert_ptr_nonnull(gerr);
	if (bc->code < 0)
		ck_assert_msg(gerr->domain == G_KEY_FILE_ERROR, "%s", gerr->message);
	else
		ck_assert_msg(g_error_matches(gerr, KVB_CONFIG_ERROR, bc->code), "%s", gerr->message);
	assert_has(gerr->message, "bad.ini", NULL);
	for (size_t i = 0; i < G_N_ELEMENTS(bc->need) && bc->need[i]; i++)
		assert_has(gerr->message, bc->need[i], NULL);
	assert_config_equal(&cfg, &before);
	check_full(&cfg);
	/* and cfg is still usable */
	ck_assert_int_eq(kvb_config_validate(&cfg, NULL), KVB_OK);
	ck_assert(kvb_config_load_data(&cfg, "[transfer]\nseed = 3\n", (gsize)-1, "ok", NULL));
	ck_assert_uint_eq(cfg.seed, 3);
	g_clear_error(&gerr);
	g_free(data);
	kvb_config_clear(&before);
	kvb_config_clear(&cfg);
}
END_TEST

START_TEST(test_bad_sources)
{
	kvb_config_t cfg;
	GError *gerr = NULL;
	kvb_config_init(&cfg);

	/* too many NICs for one location */
	GString *many = g_string_new("[topology.secondary]\ncuda:0 = ");
	for (unsigned i = 0; i <= KVB_MAX_NICS; i++)
		g_string_append_printf(many, "%smlx5_%u", i ? ";" : "", i);
	g_string_append_c(many, '\n');
	ck_assert(!kvb_config_load_data(&cfg, many->str, many->len, "many.ini", &gerr));
	assert_has(gerr->message, "many.ini", "[topology.secondary] cuda:0", "'mlx5_0;mlx5_1;", "65 NICs",
		   "at most 64", NULL);
	g_clear_error(&gerr);
	g_string_free(many, TRUE);
	ck_assert_uint_eq(cfg.n_topology, 0);

	/* a NUL byte inside the given length */
	static const char nul[] = "[connector]\ntp_size = 4\0\n";
	ck_assert(!kvb_config_load_data(&cfg, nul, sizeof(nul) - 1, "nul.ini", &gerr));
	ck_assert(g_error_matches(gerr, KVB_CONFIG_ERROR, KVB_CONFIG_ERROR_INVALID));
	assert_has(gerr->message, "nul.ini", "NUL byte", "23", NULL);
	g_clear_error(&gerr);

	/* an engine id of KVB_ENGINE_ID_MAX bytes does not fit */
	char id[KVB_ENGINE_ID_MAX + 1];
	memset(id, 'e', KVB_ENGINE_ID_MAX);
	id[KVB_ENGINE_ID_MAX] = '\0';
	char *data = g_strdup_printf("[connector]\nengine_id = %s\n", id);
	ck_assert(!kvb_config_load_data(&cfg, data, (gsize)-1, "id.ini", &gerr));
	assert_has(gerr->message, "id.ini", "engine_id", id, "1 to 127 bytes", NULL);
	g_clear_error(&gerr);
	id[KVB_ENGINE_ID_MAX - 1] = '\0';
	g_free(data);
	data = g_strdup_printf("[connector]\nengine_id = %s\n", id);
	ck_assert(kvb_config_load_data(&cfg, data, (gsize)-1, "id.ini", NULL));
	ck_assert_str_eq(cfg.engine_id, id);
	g_free(data);

	/* a missing file: G_FILE_ERROR naming the path */
	ck_assert(!kvb_config_load_file(&cfg, "/nonexistent/kvbridge.ini", &gerr));
	ck_assert(g_error_matches(gerr, G_FILE_ERROR, G_FILE_ERROR_NOENT));
	assert_has(gerr->message, "/nonexistent/kvbridge.ini", NULL);
	g_clear_error(&gerr);

	/* no origin: a generic one */
	ck_assert(!kvb_config_load_data(&cfg, "[x]\n", (gsize)-1, NULL, &gerr));
	assert_has(gerr->message, "configuration data", "[x]", NULL);
	g_clear_error(&gerr);
	/* a NULL GError ** is allowed */
	ck_assert(!kvb_config_load_data(&cfg, "[x]\n", (gsize)-1, NULL, NULL));
	kvb_config_clear(&cfg);
}
END_TEST

/* ---- validate --------------------------------------------------------------- */

typedef void (*mutate_fn)(kvb_config_t *cfg);

static void m_tp_size0(kvb_config_t *c) { c->tp_size = 0; }
static void m_tp_rank(kvb_config_t *c) { c->tp_size = 4; c->tp_rank = 4; }
static void m_port0(kvb_config_t *c) { c->bootstrap_port = 0; }
static void m_port70000(kvb_config_t *c) { c->bootstrap_port = 70000; }
static void m_lease0(kvb_config_t *c) { c->abort_timeout_ns = 0; }
static void m_lease_huge(kvb_config_t *c) { c->abort_timeout_ns = UINT64_MAX; }
static void m_consumer_huge(kvb_config_t *c) { c->consumer_timeout_ns = 1000000000 * S_NS + 1; }
static void m_slice100(kvb_config_t *c) { c->slice_size = 100; c->fragment_limit = 10; }
static void m_slice_big(kvb_config_t *c) { c->slice_size = (UINT64_C(1) << 30) + 1; }
static void m_fragment(kvb_config_t *c) { c->fragment_limit = 65536; }
static void m_depth0(kvb_config_t *c) { c->nic_queue_depth = 0; }
static void m_depth_big(kvb_config_t *c) { c->nic_queue_depth = 16777217; }
static void m_policy(kvb_config_t *c) { c->nic_policy[0] = '\0'; }
static void m_policy_blank(kvb_config_t *c) { strcpy(c->nic_policy, " random"); }
static void m_threshold(kvb_config_t *c) { c->nic_error_threshold = 0; }
static void m_heads(kvb_config_t *c) { c->tp_size = 4; c->total_kv_heads = 6; }
static void m_role(kvb_config_t *c) { c->role = (kvb_role_t)7; }
static void m_engine(kvb_config_t *c) { c->engine_id[0] = '\0'; }
static void m_engine_utf8(kvb_config_t *c) { strcpy(c->engine_id, "id\xff"); }
static void m_engine_unterminated(kvb_config_t *c) { memset(c->engine_id, 'x', KVB_ENGINE_ID_MAX); }

static void topo1(kvb_config_t *c, const char *loc, const char *pref)
{
	c->topology = g_renew(kvb_topology_names_t, c->topology, c->n_topology + 1);
	kvb_topology_names_t *t = &c->topology[c->n_topology++];
	memset(t, 0, sizeof(*t));
	g_strlcpy(t->location, loc, KVB_LOCATION_MAX);
	t->preferred = pref ? g_strsplit(pref, ",", -1) : NULL;
}

static void m_topo_dup(kvb_config_t *c) { topo1(c, "cuda:0", "a"); topo1(c, "cuda:0", "b"); }
static void m_topo_loc(kvb_config_t *c) { topo1(c, "cuda 0", "a"); }
static void m_topo_hash(kvb_config_t *c) { topo1(c, "#cuda", "a"); }
static void m_topo_name(kvb_config_t *c) { topo1(c, "cuda:0", "a,b c"); }
static void m_topo_twice(kvb_config_t *c) { topo1(c, "cuda:0", "a,b,a"); }
static void m_topo_many(kvb_config_t *c)
{
	GString *s = g_string_new("n0");
	for (unsigned i = 1; i <= KVB_MAX_NICS; i++)
		g_string_append_printf(s, ",n%u", i);
	topo1(c, "cpu:0", s->str);
	g_string_free(s, TRUE);
}

static const struct {
	mutate_fn mutate;
	const char *need[3];
} bad_configs[] = {
	{m_tp_size0, {"tp_size = 0", "[1, 4294967295]"}},
	{m_tp_rank, {"tp_rank = 4", "tp_size = 4"}},
	{m_port0, {"bootstrap_port = 0", "[1, 65535]"}},
	{m_port70000, {"bootstrap_port = 70000", "[1, 65535]"}},
	{m_lease0, {"abort_request_timeout = 0", "(0, 1000000000]"}},
	{m_lease_huge, {"abort_request_timeout = 18446744073709551615 ns"}},
	{m_consumer_huge, {"consumer_timeout = 1000000000.000000001"}},
	{m_slice100, {"slice_size = 100", "[4096, 1073741824]"}},
	{m_slice_big, {"slice_size = 1073741825"}},
	{m_fragment, {"fragment_limit = 65536", "slice_size = 65536"}},
	{m_depth0, {"nic_queue_depth = 0", "[1, 16777216]"}},
	{m_depth_big, {"nic_queue_depth = 16777217"}},
	{m_policy, {"nic_policy = ''"}},
	{m_policy_blank, {"nic_policy = ' random'"}},
	{m_threshold, {"nic_error_threshold = 0"}},
	{m_heads, {"total_kv_heads = 6", "tp_size = 4"}},
	{m_role, {"role = 7"}},
	{m_engine, {"engine_id = ''"}},
	{m_engine_utf8, {"engine_id", "UTF-8"}},
	{m_engine_unterminated, {"engine_id", "127"}},
	{m_topo_dup, {"cuda:0", "twice"}},
	{m_topo_loc, {"'cuda 0'"}},
	{m_topo_hash, {"'#cuda'"}},
	{m_topo_name, {"cuda:0", "'b c'"}},
	{m_topo_twice, {"cuda:0", "'a' twice"}},
	{m_topo_many, {"cpu:0", "more than 64"}},
};

START_TEST(test_validate_bad)
{
	kvb_config_t cfg;
	kvb_err_t err;
	kvb_config_init(&cfg);
	bad_configs[_i].mutate(&cfg);
	ck_assert_int_eq(kvb_config_validate(&cfg, &err), KVB_ERR_CONFIG);
	ck_assert_int_eq(err.code, KVB_ERR_CONFIG);
	for (size_t i = 0; i < G_N_ELEMENTS(bad_configs[_i].need) && bad_configs[_i].need[i]; i++)
		assert_has(err.msg, bad_configs[_i].need[i], NULL);
	ck_assert_int_eq(kvb_config_validate(&cfg, NULL), KVB_ERR_CONFIG);
	kvb_config_clear(&cfg);
}
END_TEST

START_TEST(test_validate_good)
{
	kvb_config_t cfg;
	kvb_err_t err;
	kvb_config_init(&cfg);
	ck_assert_int_eq(kvb_config_validate(NULL, &err), KVB_ERR_INVALID);
	/* KV heads: 0, a multiple of tp_size, or a divisor of it */
	static const uint32_t heads_ok[][2] = {{4, 0}, {4, 8}, {4, 4}, {4, 2}, {4, 1}, {1, 7}, {8, 32}};
	for (size_t i = 0; i < G_N_ELEMENTS(heads_ok); i++) {
		cfg.tp_size = heads_ok[i][0];
		cfg.total_kv_heads = heads_ok[i][1];
		ck_assert_msg(kvb_config_validate(&cfg, &err) == KVB_OK, "%s", err.msg);
	}
	cfg.tp_size = 8;
	cfg.total_kv_heads = 12;
	ck_assert_int_eq(kvb_config_validate(&cfg, &err), KVB_ERR_CONFIG);
	assert_has(err.msg, "total_kv_heads = 12", "tp_size = 8", NULL);
	kvb_config_clear(&cfg);
	/* edges that pass */
	cfg.tp_size = 3;
	cfg.tp_rank = 2;
	cfg.slice_size = 4096;
	cfg.fragment_limit = 4095;
	cfg.nic_queue_depth = 65536;
	cfg.abort_timeout_ns = 1;
	cfg.consumer_timeout_ns = 1000000000 * S_NS;
	cfg.nic_cooldown_ns = 0;
	cfg.slice_retries = 0;
	cfg.tombstone_max = 0;
	/* a policy the registry may not know yet is the connector's business */
	g_strlcpy(cfg.nic_policy, "my_policy", sizeof(cfg.nic_policy));
	ck_assert_msg(kvb_config_validate(&cfg, &err) == KVB_OK, "%s", err.msg);
	/* a fragment of slice_size is not */
	cfg.fragment_limit = 4096;
	ck_assert_int_eq(kvb_config_validate(&cfg, &err), KVB_ERR_CONFIG);
	/* a file can hold a tp_rank its tp_size does not allow: validate finds it */
	kvb_config_clear(&cfg);
	ck_assert(kvb_config_load_data(&cfg, "[connector]\ntp_rank = 5\ntp_size = 4\n", (gsize)-1,
				       "f", NULL));
	ck_assert_int_eq(kvb_config_validate(&cfg, &err), KVB_ERR_CONFIG);
	assert_has(err.msg, "tp_rank = 5", "tp_size = 4", NULL);
	kvb_config_clear(&cfg);
	ck_assert(kvb_config_load_data(&cfg, "[transfer]\nslice_size = 8192\nfragment_limit = 8192\n",
				       (gsize)-1, "f", NULL));
	ck_assert_int_eq(kvb_config_validate(&cfg, &err), KVB_ERR_CONFIG);
	assert_has(err.msg, "fragment_limit = 8192", "slice_size = 8192", NULL);
	kvb_config_clear(&cfg);
}
END_TEST

Suite *kvb_suite_config(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("config");
	tcase_add_test(tc, test_defaults);
	tcase_add_test(tc, test_roles);
	tcase_add_test(tc, test_load_full);
	tcase_add_test(tc, test_seconds);
	tcase_add_test(tc, test_round_trip);
	tcase_add_test(tc, test_copy);
	tcase_add_test(tc, test_topology_merge);
	tcase_add_test(tc, test_env);
	tcase_add_test(tc, test_worker_port);
	tcase_add_loop_test(tc, test_bad_files, 0, (int)G_N_ELEMENTS(bad_files));
	tcase_add_test(tc, test_bad_sources);
	tcase_add_loop_test(tc, test_validate_bad, 0, (int)G_N_ELEMENTS(bad_configs));
	tcase_add_test(tc, test_validate_good);
	suite_add_tcase(s, tc);
	return s;
}
