/*
 * Platform descriptions and SimGrid platforms (src/backends/sim/kvb_platform.c).
 *
 * SimGrid can be initialised only once per process.  Every test that runs
 * it therefore forks a child of its own (sim_fork), whatever CK_FORK says:
 * the child initialises SimGrid, loads a platform, runs actors and writes
 * "key value" lines into a pipe; the parent waits for it and asserts on
 * those values.  The child never calls ck_assert (with CK_FORK=no a failed
 * assertion would longjmp into a copy of the runner): it reports "error
 * <why>" and exits 1 instead.
 *
 * Simulated times are compared with what the description promises:
 * size / kvb_platform_nic_Bps + latency, within 0.1 %.
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <glib.h>
#include <simgrid/actor.h>
#include <simgrid/engine.h>
#include <simgrid/host.h>
#include <simgrid/link.h>
#include <xbt/dynar.h>

#include "kvb_platform.h"

Suite *kvb_suite_platform(void);

#define GB 1e9
#define TOL 1e-3 /* relative: 0.1 % */

static const kvb_topology_kind_t all_topos[] = {KVB_TOPO_SWITCH, KVB_TOPO_RAIL, KVB_TOPO_FATTREE};

static void assert_close(double got, double want, const char *what)
{
	ck_assert_msg(fabs(got - want) <= TOL * fabs(want), "%s: got %.9g, expected %.9g (+-0.1%%)",
		      what, got, want);
}

static void assert_err(GError *e, GQuark domain, int code, const char *part1, const char *part2)
{
	ck_assert_msg(e != NULL, "expected an error naming '%s'", part1);
	ck_assert_msg(e->domain == domain && e->code == code, "wrong error %s/%d: %s",
		      g_quark_to_string(e->domain), e->code, e->message);
	ck_assert_msg(strstr(e->message, part1), "'%s' not in: %s", part1, e->message);
	if (part2)
		ck_assert_msg(strstr(e->message, part2), "'%s' not in: %s", part2, e->message);
}

/* ---- fork helper ---------------------------------------------------------- */

typedef void (*sim_fn_t)(const void *arg, GString *res);

static int child_fd = -1;

static void write_all(int fd, const char *s, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, s, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		s += w;
		n -= (size_t)w;
	}
}

/* In the child: report why and stop (no ck_assert here). */
static void G_GNUC_NORETURN G_GNUC_PRINTF(2, 3) child_fail(GString *res, const char *fmt, ...)
{
	va_list ap;
	g_string_append(res, "\nerror ");
	va_start(ap, fmt);
	g_string_append_vprintf(res, fmt, ap);
	va_end(ap);
	g_string_append_c(res, '\n');
	write_all(child_fd, res->str, res->len);
	g_string_free(res, TRUE);
	_exit(1);
}

#define CHILD_CHECK(res, cond, ...)                     \
	do {                                            \
		if (!(cond))                            \
			child_fail((res), __VA_ARGS__); \
	} while (0)

/*
 * Run fn in a forked child and return what it wrote (g_free).  The result
 * starts with '\n' so every key can be found as "\nkey ".
 */
static char *sim_fork(sim_fn_t fn, const void *arg)
{
	int fds[2];
	ck_assert_int_eq(pipe(fds), 0);
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(fds[0]);
		child_fd = fds[1];
		alarm(300);
		GString *res = g_string_new("\n");
		fn(arg, res);
		g_string_append(res, "end 1\n");
		write_all(child_fd, res->str, res->len);
		g_string_free(res, TRUE);
		_exit(0);
	}
	close(fds[1]);
	GString *out = g_string_new(NULL);
	char buf[4096];
	for (;;) {
		ssize_t r = read(fds[0], buf, sizeof(buf));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		g_string_append_len(out, buf, r);
	}
	close(fds[0]);
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	/* the end mark is the verdict: under valgrind a child that finished
	 * may still exit 1 for what SimGrid leaves allocated */
	ck_assert_msg(strstr(out->str, "\nend 1\n") && !strstr(out->str, "\nerror "),
		      "SimGrid child %s %d; it reported: %s",
		      WIFSIGNALED(st) ? "killed by signal" : "exited with",
		      WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), out->str);
	return g_string_free(out, FALSE);
}

static const char *res_find(const char *res, const char *key)
{
	char *pat = g_strdup_printf("\n%s ", key);
	const char *p = strstr(res, pat);
	ck_assert_msg(p != NULL, "child result has no '%s': %s", key, res);
	p += strlen(pat);
	g_free(pat);
	return p;
}

static double res_num(const char *res, const char *key)
{
	return g_ascii_strtod(res_find(res, key), NULL);
}

static char *res_str(const char *res, const char *key)
{
	const char *p = res_find(res, key);
	const char *e = strchr(p, '\n');
	return e ? g_strndup(p, (size_t)(e - p)) : g_strdup(p);
}

static void res_put(GString *res, const char *key, double v)
{
	char num[G_ASCII_DTOSTR_BUF_SIZE];
	g_string_append_printf(res, "%s %s\n", key, g_ascii_dtostr(num, sizeof(num), v));
}

/* ---- child-side SimGrid helpers ---------------------------------------- */

static void sim_init(void)
{
	char a0[] = "check_platform", a1[] = "--log=root.thres:warning";
	char *argv[] = {a0, a1, NULL};
	int argc = 2;
	simgrid_init(&argc, argv);
}

static void sim_load_text(GString *res, const char *xml)
{
	GError *e = NULL;
	char *path = NULL;
	int fd = g_file_open_tmp("kvb-platform-XXXXXX.xml", &path, &e);
	CHILD_CHECK(res, fd >= 0, "tmp file: %s", e ? e->message : "?");
	close(fd);
	CHILD_CHECK(res, g_file_set_contents(path, xml, -1, &e), "write: %s", e ? e->message : "?");
	simgrid_load_platform(path);
	unlink(path);
	g_free(path);
}

static void sim_load_desc(GString *res, const kvb_platform_desc_t *d)
{
	GError *e = NULL;
	char *xml = kvb_platform_xml(d, &e);
	CHILD_CHECK(res, xml != NULL, "kvb_platform_xml: %s", e ? e->message : "?");
	sim_load_text(res, xml);
	g_free(xml);
}

static kvb_platform_map_t *sim_map(GString *res, const char *origin)
{
	GError *e = NULL;
	kvb_platform_map_t *m = NULL;
	CHILD_CHECK(res, kvb_platform_map_build(origin, &m, &e), "map: %s", e ? e->message : "?");
	return m;
}

static sg_host_t sim_host(GString *res, const char *name)
{
	sg_host_t h = sg_host_by_name(name);
	CHILD_CHECK(res, h != NULL, "no host '%s'", name);
	return h;
}

/* One flow: sg_host_sendto(from, to, bytes) starting at simulated time `at`. */
typedef struct xfer {
	sg_host_t from, to;
	double bytes, at;
	double start, end; /* out */
} xfer_t;

static void xfer_actor(int argc, char **argv)
{
	xfer_t *x = sg_actor_self_get_data();
	sg_actor_sleep_until(x->at);
	x->start = simgrid_get_clock();
	sg_host_sendto(x->from, x->to, x->bytes);
	x->end = simgrid_get_clock();
}

static void xfers_run(xfer_t *x, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char name[32];
		snprintf(name, sizeof(name), "xfer%zu", i);
		sg_actor_t a = sg_actor_init(name, x[i].from);
		sg_actor_set_data(a, &x[i]);
		sg_actor_start(a, xfer_actor, 0, NULL);
	}
	simgrid_run();
}

static void small_desc(kvb_platform_desc_t *d, kvb_topology_kind_t t)
{
	kvb_platform_desc_defaults(d);
	d->prefill_nodes = 3;
	d->decode_nodes = 2;
	d->nics_per_node = 4;
	d->gpus_per_node = 4;
	d->nic_gbps = 100;
	d->nic_efficiency = 0.8; /* 1e10 B/s */
	d->latency_us = 2;
	d->topology = t;
	d->hosts_per_leaf = 8; /* fat-tree: 20 NICs -> 3 leaves, 4 padding hosts */
	d->oversubscription = 2;
}

/* ---- descriptions (no SimGrid) -------------------------------------------- */

START_TEST(test_defaults)
{
	kvb_platform_desc_t d;
	GError *e = NULL;

	kvb_platform_desc_defaults(&d);
	ck_assert_uint_eq(d.prefill_nodes, 16);
	ck_assert_uint_eq(d.decode_nodes, 16);
	ck_assert_uint_eq(d.gpus_per_node, 8);
	ck_assert_uint_eq(d.nics_per_node, 8);
	ck_assert(d.nic_gbps == 200 && d.nic_efficiency == 1);
	ck_assert(d.pcie_gbytes == 0 && d.mem_gbytes == 0);
	ck_assert(d.latency_us == 2);
	ck_assert_int_eq(d.topology, KVB_TOPO_SWITCH);
	ck_assert(d.oversubscription == 1);
	ck_assert_uint_eq(d.hosts_per_leaf, 32);
	ck_assert(d.spine_gbps == 0 && !d.zero_link_latency);
	ck_assert_msg(kvb_platform_desc_validate(&d, &e), "%s", e ? e->message : "");

	ck_assert(kvb_platform_nic_Bps(&d) == 25e9);
	ck_assert(kvb_platform_route_latency_s(&d) == 2e-6);
	ck_assert(kvb_platform_link_latency_s(&d) == 1e-6);
	/* auto spine: 4:1 against the rail's 32 NIC ports */
	ck_assert(kvb_platform_spine_gbps(&d) == 200.0 * 32 / 4);
	d.spine_gbps = 300;
	ck_assert(kvb_platform_spine_gbps(&d) == 300);
	d.spine_gbps = 0;
	d.prefill_nodes = d.decode_nodes = 1; /* 2 nodes: never below one NIC */
	ck_assert(kvb_platform_spine_gbps(&d) == 200);

	kvb_platform_desc_defaults(&d);
	d.topology = KVB_TOPO_FATTREE;
	ck_assert_uint_eq(kvb_platform_fattree_leaves(&d), 8);
	ck_assert_uint_eq(kvb_platform_fattree_spines(&d), 32);
	ck_assert(kvb_platform_link_latency_s(&d) == 0.5e-6);
	d.oversubscription = 4;
	ck_assert_uint_eq(kvb_platform_fattree_spines(&d), 8);
	d.zero_link_latency = true;
	ck_assert(kvb_platform_link_latency_s(&d) == 0);
	ck_assert(kvb_platform_route_latency_s(&d) == 2e-6);
	ck_assert_str_eq(kvb_topology_name(KVB_TOPO_RAIL), "rail");
	kvb_topology_kind_t t;
	ck_assert(kvb_topology_parse("FatTree", &t) && t == KVB_TOPO_FATTREE);
	ck_assert(!kvb_topology_parse("torus", &t));
}
END_TEST

START_TEST(test_rates_and_names)
{
	kvb_platform_desc_t d;
	char buf[64];
	uint32_t first, count;

	kvb_platform_desc_defaults(&d);
	d.nic_efficiency = 0.9;
	ck_assert(fabs(kvb_platform_nic_Bps(&d) - 22.5e9) < 1);
	d.pcie_gbytes = 20; /* below 22.5 GB/s */
	ck_assert(kvb_platform_nic_Bps(&d) == 20e9);
	d.mem_gbytes = 100; /* 100 / 8 NICs = 12.5 GB/s each */
	ck_assert(kvb_platform_nic_Bps(&d) == 12.5e9);
	d.mem_gbytes = 1000;
	ck_assert(kvb_platform_nic_Bps(&d) == 20e9);

	kvb_platform_nic_host_name(buf, sizeof(buf), true, 3, 7);
	ck_assert_str_eq(buf, "p3-nic7");
	kvb_platform_nic_host_name(buf, sizeof(buf), false, 0, 0);
	ck_assert_str_eq(buf, "d0-nic0");
	kvb_platform_desc_host_name(&d, buf, sizeof(buf), false, 12, 5);
	ck_assert_str_eq(buf, "d12-nic5");
	d.topology = KVB_TOPO_FATTREE; /* 16 prefill nodes first: (16 + 1) * 8 + 2 */
	kvb_platform_desc_host_name(&d, buf, sizeof(buf), false, 1, 2);
	ck_assert_str_eq(buf, "ft-nic138");
	kvb_platform_desc_host_name(&d, buf, sizeof(buf), true, 0, 3);
	ck_assert_str_eq(buf, "ft-nic3");

	/* GPU -> NIC affinity */
	kvb_platform_gpu_nics(&d, 3, &first, &count);
	ck_assert(first == 3 && count == 1);
	d.nics_per_node = 4; /* 2 GPUs per NIC */
	kvb_platform_gpu_nics(&d, 3, &first, &count);
	ck_assert(first == 1 && count == 1);
	kvb_platform_gpu_nics(&d, 7, &first, &count);
	ck_assert(first == 3 && count == 1);
	d.gpus_per_node = 3;
	d.nics_per_node = 8; /* 8 NICs over 3 GPUs: 2, 3, 3 */
	kvb_platform_gpu_nics(&d, 0, &first, &count);
	ck_assert(first == 0 && count == 2);
	kvb_platform_gpu_nics(&d, 1, &first, &count);
	ck_assert(first == 2 && count == 3);
	kvb_platform_gpu_nics(&d, 2, &first, &count);
	ck_assert(first == 5 && count == 3);
}
END_TEST

typedef struct bad_case {
	const char *field; /* the message must name it */
	void (*set)(kvb_platform_desc_t *d);
} bad_case_t;

static void bad_nics(kvb_platform_desc_t *d) { d->nics_per_node = 0; }
static void bad_prefill(kvb_platform_desc_t *d) { d->prefill_nodes = 0; }
static void bad_decode(kvb_platform_desc_t *d) { d->decode_nodes = 0; }
static void bad_gpus(kvb_platform_desc_t *d) { d->gpus_per_node = 0; }
static void bad_bw(kvb_platform_desc_t *d) { d->nic_gbps = -100; }
static void bad_eff(kvb_platform_desc_t *d) { d->nic_efficiency = 1.5; }
static void bad_eff0(kvb_platform_desc_t *d) { d->nic_efficiency = 0; }
static void bad_pcie(kvb_platform_desc_t *d) { d->pcie_gbytes = -1; }
static void bad_mem(kvb_platform_desc_t *d) { d->mem_gbytes = INFINITY; }
static void bad_lat(kvb_platform_desc_t *d) { d->latency_us = NAN; }
static void bad_topo(kvb_platform_desc_t *d) { d->topology = (kvb_topology_kind_t)7; }
static void bad_over(kvb_platform_desc_t *d) { d->oversubscription = 0.5; }
static void bad_spine(kvb_platform_desc_t *d) { d->spine_gbps = -1; }
static void bad_leaf(kvb_platform_desc_t *d) { d->hosts_per_leaf = 0; }
static void bad_ft_spines(kvb_platform_desc_t *d)
{
	d->topology = KVB_TOPO_FATTREE;
	d->oversubscription = 3; /* 32 / 3 spines */
}
static void bad_hosts(kvb_platform_desc_t *d)
{
	d->prefill_nodes = d->decode_nodes = KVB_PLATFORM_MAX_NODES;
	d->nics_per_node = KVB_PLATFORM_MAX_NICS;
}

static const bad_case_t bad_cases[] = {
	{"nics_per_node", bad_nics},
	{"prefill_nodes", bad_prefill},
	{"decode_nodes", bad_decode},
	{"gpus_per_node", bad_gpus},
	{"nic_gbps", bad_bw},
	{"nic_efficiency", bad_eff},
	{"nic_efficiency", bad_eff0},
	{"pcie_gbytes", bad_pcie},
	{"mem_gbytes", bad_mem},
	{"latency_us", bad_lat},
	{"topology", bad_topo},
	{"oversubscription", bad_over},
	{"spine_gbps", bad_spine},
	{"hosts_per_leaf", bad_leaf},
	{"oversubscription", bad_ft_spines},
	{"nics_per_node", bad_hosts},
};

START_TEST(test_validate_bad)
{
	const bad_case_t *c = &bad_cases[_i];
	kvb_platform_desc_t d;
	GError *e = NULL;

	kvb_platform_desc_defaults(&d);
	c->set(&d);
	ck_assert(!kvb_platform_desc_validate(&d, &e));
	assert_err(e, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_INVALID, c->field, NULL);
	g_clear_error(&e);
	ck_assert(kvb_platform_xml(&d, &e) == NULL);
	assert_err(e, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_INVALID, c->field, NULL);
	g_clear_error(&e);
}
END_TEST

START_TEST(test_validate_fattree_hint)
{
	kvb_platform_desc_t d;
	GError *e = NULL;

	kvb_platform_desc_defaults(&d);
	bad_ft_spines(&d);
	ck_assert(!kvb_platform_desc_validate(&d, &e));
	/* names both fields and the values that would work */
	assert_err(e, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_INVALID, "hosts_per_leaf 32",
		   "1, 2, 4, 8, 16, 32");
	g_clear_error(&e);
	d.topology = KVB_TOPO_SWITCH; /* the rule is the fat-tree's only */
	ck_assert(kvb_platform_desc_validate(&d, NULL));
}
END_TEST

static GKeyFile *keyfile(const char *text)
{
	GKeyFile *kf = g_key_file_new();
	GError *e = NULL;
	ck_assert_msg(g_key_file_load_from_data(kf, text, (gsize)-1, G_KEY_FILE_KEEP_TRANSLATIONS,
						&e),
		      "%s", e ? e->message : "");
	return kf;
}

START_TEST(test_load)
{
	kvb_platform_desc_t d;
	GError *e = NULL;
	GKeyFile *kf = keyfile("[platform]\n"
			       "prefill_nodes = 4\n"
			       "decode_nodes = 2\n"
			       "gpus_per_node = 4\n"
			       "nics_per_node = 2\n"
			       "nic_gbps = 400\n"
			       "nic_efficiency = 0.9\n"
			       "pcie_gbytes = 50\n"
			       "mem_gbytes = 80\n"
			       "latency_us = 3.5\n"
			       "topology = FatTree\n"
			       "oversubscription = 2\n"
			       "hosts_per_leaf = 4\n"
			       "spine_gbps = 800\n"
			       "zero_link_latency = true\n"
			       "[other]\n"
			       "unrelated = 1\n");

	kvb_platform_desc_defaults(&d);
	ck_assert_msg(kvb_platform_desc_load(&d, kf, "platform", "cfg.ini", &e), "%s",
		      e ? e->message : "");
	ck_assert(d.prefill_nodes == 4 && d.decode_nodes == 2);
	ck_assert(d.gpus_per_node == 4 && d.nics_per_node == 2);
	ck_assert(d.nic_gbps == 400 && d.nic_efficiency == 0.9);
	ck_assert(d.pcie_gbytes == 50 && d.mem_gbytes == 80 && d.latency_us == 3.5);
	ck_assert_int_eq(d.topology, KVB_TOPO_FATTREE);
	ck_assert(d.oversubscription == 2 && d.hosts_per_leaf == 4);
	ck_assert(d.spine_gbps == 800 && d.zero_link_latency);
	ck_assert(kvb_platform_desc_validate(&d, NULL));
	/* min(400/8 * 0.9 = 45, pcie 50, mem 80 / 2 = 40) GB/s */
	ck_assert(kvb_platform_nic_Bps(&d) == 40e9);
	g_key_file_free(kf);
}
END_TEST

typedef struct load_bad {
	const char *text;
	int code;
	const char *part; /* besides "cfg.ini: [platform]" */
} load_bad_t;

static const load_bad_t load_bads[] = {
	{"nic_speed = 100\n", KVB_PLATFORM_ERROR_UNKNOWN_KEY, "unknown key 'nic_speed'"},
	{"nic_efficiency = 1.5\n", KVB_PLATFORM_ERROR_INVALID, "nic_efficiency = '1.5'"},
	{"nics_per_node = 0\n", KVB_PLATFORM_ERROR_INVALID, "nics_per_node = '0'"},
	{"nics_per_node = two\n", KVB_PLATFORM_ERROR_INVALID, "not a decimal integer"},
	{"prefill_nodes = -1\n", KVB_PLATFORM_ERROR_INVALID, "prefill_nodes"},
	{"nic_gbps = -5\n", KVB_PLATFORM_ERROR_INVALID, "nic_gbps = '-5'"},
	{"nic_gbps = fast\n", KVB_PLATFORM_ERROR_INVALID, "not a finite decimal number"},
	{"latency_us = 2 # us\n", KVB_PLATFORM_ERROR_INVALID, "end-of-line comments"},
	{"topology = torus\n", KVB_PLATFORM_ERROR_INVALID, "switch, rail or fattree"},
	{"zero_link_latency = maybe\n", KVB_PLATFORM_ERROR_INVALID, "zero_link_latency"},
	{"nic_gbps = 100\nnic_gbps = 200\n", KVB_PLATFORM_ERROR_INVALID, "more than once"},
};

START_TEST(test_load_bad)
{
	const load_bad_t *c = &load_bads[_i];
	kvb_platform_desc_t d, before;
	GError *e = NULL;
	char *text = g_strdup_printf("[platform]\nprefill_nodes = 2\n%s", c->text);
	GKeyFile *kf = keyfile(text);

	kvb_platform_desc_defaults(&d);
	before = d;
	ck_assert(!kvb_platform_desc_load(&d, kf, "platform", "cfg.ini", &e));
	assert_err(e, KVB_PLATFORM_ERROR, c->code, "cfg.ini: [platform]", c->part);
	ck_assert_msg(memcmp(&d, &before, sizeof(d)) == 0, "a failed load changed the desc");
	g_clear_error(&e);
	g_key_file_free(kf);
	g_free(text);
}
END_TEST

START_TEST(test_load_no_group)
{
	kvb_platform_desc_t d;
	GError *e = NULL;
	GKeyFile *kf = keyfile("[other]\nx = 1\n");

	kvb_platform_desc_defaults(&d);
	ck_assert(!kvb_platform_desc_load(&d, kf, "platform", "cfg.ini", &e));
	assert_err(e, G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_GROUP_NOT_FOUND, "cfg.ini", "platform");
	g_clear_error(&e);
	g_key_file_free(kf);
}
END_TEST

static int count_of(const char *s, const char *needle)
{
	int n = 0;
	for (const char *p = strstr(s, needle); p; p = strstr(p + 1, needle))
		n++;
	return n;
}

START_TEST(test_xml_text)
{
	kvb_platform_desc_t d;
	GError *e = NULL;

	kvb_platform_desc_defaults(&d);
	d.prefill_nodes = d.decode_nodes = 2;
	d.nics_per_node = 2;
	char *x = kvb_platform_xml(&d, &e);
	ck_assert_msg(x != NULL, "%s", e ? e->message : "");
	ck_assert(strstr(x, "<prop id=\"network/model\" value=\"CM02\"/>"));
	ck_assert(strstr(x, "<prop id=\"network/crosstraffic\" value=\"0\"/>"));
	ck_assert(strstr(x, "<prop id=\"network/TCP-gamma\" value=\"0\"/>"));
	ck_assert(strstr(x, "routing=\"Cluster\""));
	ck_assert_int_eq(count_of(x, "<host "), 8);
	ck_assert_int_eq(count_of(x, "<host_link "), 8);
	ck_assert(strstr(x, "<host id=\"d1-nic1\""));
	ck_assert(strstr(x, "bandwidth=\"25000000000Bps\" latency=\"1e-06s\""));
	ck_assert_int_eq(count_of(x, "--"), 2); /* only the comment's own */
	g_free(x);

	d.topology = KVB_TOPO_RAIL;
	d.spine_gbps = 100;
	x = kvb_platform_xml(&d, NULL);
	ck_assert_int_eq(count_of(x, "routing=\"Cluster\""), 2);
	ck_assert_int_eq(count_of(x, "<zoneRoute "), 2);
	ck_assert_int_eq(count_of(x, "<host "), 8);
	ck_assert(strstr(x, "<link id=\"rail1-spine\" bandwidth=\"12500000000Bps\" latency=\"0s\""));
	g_free(x);

	d.topology = KVB_TOPO_FATTREE;
	d.nics_per_node = 3; /* 12 NIC hosts, 4 per leaf, 2 spines */
	d.hosts_per_leaf = 4;
	d.oversubscription = 2;
	d.zero_link_latency = true;
	x = kvb_platform_xml(&d, NULL);
	ck_assert(strstr(x, "topology=\"FAT_TREE\" topo_parameters=\"2;4,3;1,2;1,1\""));
	ck_assert(strstr(x, "radical=\"0-11\""));
	ck_assert(strstr(x, "lat=\"0s\""));
	g_free(x);
	d.nics_per_node = 2;
	d.prefill_nodes = 1;
	d.decode_nodes = 2; /* 6 hosts: 2 leaves of 4, 2 padding */
	x = kvb_platform_xml(&d, NULL);
	ck_assert(strstr(x, "radical=\"0-7\""));
	ck_assert(strstr(x, "topo_parameters=\"2;4,2;1,2;1,1\""));
	g_free(x);
}
END_TEST

START_TEST(test_write)
{
	kvb_platform_desc_t d;
	GError *e = NULL;
	char *path = NULL, *back = NULL;

	kvb_platform_desc_defaults(&d);
	int fd = g_file_open_tmp("kvb-platform-XXXXXX.xml", &path, &e);
	ck_assert_int_ge(fd, 0);
	close(fd);
	ck_assert_msg(kvb_platform_write(&d, path, &e), "%s", e ? e->message : "");
	char *x = kvb_platform_xml(&d, NULL);
	ck_assert(g_file_get_contents(path, &back, NULL, NULL));
	ck_assert_str_eq(back, x);
	unlink(path);
	ck_assert(!kvb_platform_write(&d, "/nonexistent-dir/x.xml", &e));
	ck_assert(e && e->domain == G_FILE_ERROR);
	g_clear_error(&e);
	g_free(x);
	g_free(back);
	g_free(path);
}
END_TEST

/* ---- SimGrid: generated platforms ------------------------------------------ */

/* Load, map, and describe one route of a small platform of topology *arg. */
static void child_load_map(const void *arg, GString *res)
{
	kvb_platform_desc_t d;
	small_desc(&d, *(const kvb_topology_kind_t *)arg);
	sim_init();
	sim_load_desc(res, &d);
	kvb_platform_map_t *m = sim_map(res, "small.xml");
	res_put(res, "prefill_nodes", m->nodes[KVB_PLATFORM_PREFILL]);
	res_put(res, "decode_nodes", m->nodes[KVB_PLATFORM_DECODE]);
	res_put(res, "prefill_nics", m->nics[KVB_PLATFORM_PREFILL]);
	res_put(res, "decode_nics", m->nics[KVB_PLATFORM_DECODE]);
	res_put(res, "ignored", (double)m->ignored_hosts);
	res_put(res, "pairs", (double)m->pairs_checked);
	res_put(res, "hosts", (double)sg_host_count());
	/* every map entry carries the name the description gives it */
	int names_ok = 1;
	for (int r = 0; r < 2; r++) {
		for (uint32_t n = 0; n < m->nodes[r]; n++) {
			for (uint32_t k = 0; k < m->nics[r]; k++) {
				char want[64];
				kvb_platform_desc_host_name(&d, want, sizeof(want), r == 0, n, k);
				sg_host_t h = kvb_platform_map_host(m, (kvb_platform_role_t)r, n, k);
				names_ok &= h != NULL && strcmp(sg_host_get_name(h), want) == 0;
			}
		}
	}
	res_put(res, "names_ok", names_ok);
	res_put(res, "out_of_range",
		kvb_platform_map_host(m, KVB_PLATFORM_DECODE, 2, 0) == NULL &&
			kvb_platform_map_host(m, KVB_PLATFORM_PREFILL, 0, 4) == NULL);

	/* p0-nic0 -> d1-nic3: cross-rail, cross-leaf */
	sg_host_t a = kvb_platform_map_host(m, KVB_PLATFORM_PREFILL, 0, 0);
	sg_host_t b = kvb_platform_map_host(m, KVB_PLATFORM_DECODE, 1, 3);
	sg_host_t c = kvb_platform_map_host(m, KVB_PLATFORM_DECODE, 1, 0);
	xbt_dynar_t links = xbt_dynar_new(sizeof(sg_link_t), NULL);
	sg_host_get_route(a, b, links);
	res_put(res, "links_cross", (double)xbt_dynar_length(links));
	xbt_dynar_reset(links);
	sg_host_get_route(a, c, links);
	res_put(res, "links_same", (double)xbt_dynar_length(links));
	xbt_dynar_free(&links);
	res_put(res, "lat_cross", sg_host_get_route_latency(a, b));
	res_put(res, "bw_cross", sg_host_get_route_bandwidth(a, b));
	res_put(res, "nic_Bps", kvb_platform_nic_Bps(&d));
	res_put(res, "lat_want", kvb_platform_route_latency_s(&d));
	kvb_platform_map_free(m);
}

START_TEST(test_sim_load_map)
{
	kvb_topology_kind_t t = all_topos[_i];
	char *r = sim_fork(child_load_map, &t);

	ck_assert(res_num(r, "prefill_nodes") == 3 && res_num(r, "decode_nodes") == 2);
	ck_assert(res_num(r, "prefill_nics") == 4 && res_num(r, "decode_nics") == 4);
	ck_assert(res_num(r, "names_ok") == 1 && res_num(r, "out_of_range") == 1);
	ck_assert(res_num(r, "pairs") == 12 * 8); /* all pairs, both ways */
	/* fat-tree: 20 NIC hosts in 3 leaves of 8: 4 padding hosts */
	double pad = t == KVB_TOPO_FATTREE ? 4 : 0;
	ck_assert(res_num(r, "ignored") == pad);
	ck_assert(res_num(r, "hosts") == 20 + pad);
	/* switch: [up, down]; rail: + 2 spine links across rails; fat-tree:
	 * 4 links across leaves (p0 in leaf 0, d1 in leaf 2), 2 within */
	ck_assert_int_eq((int)res_num(r, "links_cross"), t == KVB_TOPO_SWITCH ? 2 : 4);
	ck_assert_int_eq((int)res_num(r, "links_same"), t == KVB_TOPO_FATTREE ? 4 : 2);
	ck_assert_msg(fabs(res_num(r, "lat_cross") - res_num(r, "lat_want")) < 1e-15,
		      "route latency %g, expected %g", res_num(r, "lat_cross"),
		      res_num(r, "lat_want"));
	ck_assert(res_num(r, "bw_cross") == 1e10);
	g_free(r);
}
END_TEST

/* 1 GB and 1 kB from p0-nic0 to d0-nic0 (cross-leaf in the fat-tree), then
 * the same with zero_link_latency. */
typedef struct xfer_arg {
	kvb_topology_kind_t topo;
	bool zero_lat;
} xfer_arg_t;

static void child_one_transfer(const void *arg, GString *res)
{
	const xfer_arg_t *a = arg;
	kvb_platform_desc_t d;
	small_desc(&d, a->topo);
	d.zero_link_latency = a->zero_lat;
	sim_init();
	sim_load_desc(res, &d);
	kvb_platform_map_t *m = sim_map(res, "small.xml");
	sg_host_t p = kvb_platform_map_host(m, KVB_PLATFORM_PREFILL, 0, 0);
	sg_host_t q = kvb_platform_map_host(m, KVB_PLATFORM_DECODE, 0, 0);
	xfer_t x[2] = {
		{.from = p, .to = q, .bytes = GB, .at = 0},
		{.from = p, .to = q, .bytes = 1e3, .at = 10},
	};
	xfers_run(x, 2);
	res_put(res, "big", x[0].end - x[0].start);
	res_put(res, "small", x[1].end - x[1].start);
	res_put(res, "rate", kvb_platform_nic_Bps(&d));
	kvb_platform_map_free(m);
}

START_TEST(test_sim_transfer_time)
{
	for (int z = 0; z < 2; z++) {
		xfer_arg_t a = {all_topos[_i], z == 1};
		char *r = sim_fork(child_one_transfer, &a);
		double rate = res_num(r, "rate"), lat = z ? 0 : 2e-6;
		ck_assert(rate == 1e10);
		assert_close(res_num(r, "big"), GB / rate + lat, "1 GB");
		assert_close(res_num(r, "small"), 1e3 / rate + lat, "1 kB (latency-bound)");
		g_free(r);
	}
}
END_TEST

/* Three phases 10 s apart: two flows out of one NIC, two flows into one
 * NIC, two flows on disjoint NICs. */
static void child_shared_nic(const void *arg, GString *res)
{
	kvb_platform_desc_t d;
	small_desc(&d, *(const kvb_topology_kind_t *)arg);
	sim_init();
	sim_load_desc(res, &d);
	kvb_platform_map_t *m = sim_map(res, "small.xml");
#define H(r, n, k) kvb_platform_map_host(m, KVB_PLATFORM_##r, n, k)
	xfer_t x[6] = {
		{H(PREFILL, 0, 0), H(DECODE, 0, 0), GB, 0, 0, 0},
		{H(PREFILL, 0, 0), H(DECODE, 1, 0), GB, 0, 0, 0},
		{H(PREFILL, 0, 1), H(DECODE, 0, 1), GB, 10, 0, 0},
		{H(PREFILL, 1, 1), H(DECODE, 0, 1), GB, 10, 0, 0},
		{H(PREFILL, 0, 2), H(DECODE, 0, 2), GB, 20, 0, 0},
		{H(PREFILL, 1, 2), H(DECODE, 1, 2), GB, 20, 0, 0},
	};
#undef H
	xfers_run(x, 6);
	for (int i = 0; i < 6; i++) {
		char key[16];
		snprintf(key, sizeof(key), "t%d", i);
		res_put(res, key, x[i].end - x[i].start);
	}
	kvb_platform_map_free(m);
}

START_TEST(test_sim_shared_nic)
{
	kvb_topology_kind_t t = all_topos[_i];
	char *r = sim_fork(child_shared_nic, &t);
	double one = GB / 1e10 + 2e-6, two = 2 * GB / 1e10 + 2e-6;

	assert_close(res_num(r, "t0"), two, "egress shared, flow 0");
	assert_close(res_num(r, "t1"), two, "egress shared, flow 1");
	assert_close(res_num(r, "t2"), two, "ingress shared, flow 0");
	assert_close(res_num(r, "t3"), two, "ingress shared, flow 1");
	/* fat-tree (4 spines, d-mod-k): both go to a host = 2 mod 4 (d0-nic2
	 * is ft-nic14, d1-nic2 ft-nic18) from leaf 0, so they share leaf 0's
	 * uplink to spine 2 although their NICs are disjoint */
	double disjoint = t == KVB_TOPO_FATTREE ? two : one;
	assert_close(res_num(r, "t4"), disjoint, "disjoint NICs, flow 0");
	assert_close(res_num(r, "t5"), disjoint, "disjoint NICs, flow 1");
	g_free(r);
}
END_TEST

typedef struct cap_arg {
	double pcie, mem;
} cap_arg_t;

static void child_caps(const void *arg, GString *res)
{
	const cap_arg_t *c = arg;
	kvb_platform_desc_t d;
	small_desc(&d, KVB_TOPO_SWITCH);
	d.nic_gbps = 400;
	d.nic_efficiency = 1; /* 50 GB/s */
	d.pcie_gbytes = c->pcie;
	d.mem_gbytes = c->mem;
	sim_init();
	sim_load_desc(res, &d);
	xfer_t x = {sim_host(res, "p0-nic0"), sim_host(res, "d0-nic0"), GB, 0, 0, 0};
	xfers_run(&x, 1);
	res_put(res, "t", x.end - x.start);
	res_put(res, "link_bw", sg_link_get_bandwidth(sg_link_by_name("p0-nic0_UP")));
}

START_TEST(test_sim_caps)
{
	/* PCIe 40 GB/s under a 50 GB/s NIC */
	cap_arg_t pcie = {40, 0};
	char *r = sim_fork(child_caps, &pcie);
	ck_assert(res_num(r, "link_bw") == 40e9);
	assert_close(res_num(r, "t"), GB / 40e9 + 2e-6, "PCIe-capped");
	g_free(r);
	/* 100 GB/s of memory shared by 4 NICs: 25 GB/s each */
	cap_arg_t mem = {0, 100};
	r = sim_fork(child_caps, &mem);
	ck_assert(res_num(r, "link_bw") == 25e9);
	assert_close(res_num(r, "t"), GB / 25e9 + 2e-6, "memory-capped");
	g_free(r);
}
END_TEST

/* Rail: 12.5 GB/s NICs, 6.25 GB/s spine uplinks. */
static void child_rail(const void *arg, GString *res)
{
	kvb_platform_desc_t d;
	kvb_platform_desc_defaults(&d);
	d.prefill_nodes = d.decode_nodes = 2;
	d.nics_per_node = 2;
	d.nic_gbps = 100;
	d.spine_gbps = 50;
	d.topology = KVB_TOPO_RAIL;
	sim_init();
	sim_load_desc(res, &d);
	kvb_platform_map_t *m = sim_map(res, "rail.xml");
#define H(r, n, k) kvb_platform_map_host(m, KVB_PLATFORM_##r, n, k)
	xfer_t x[7] = {
		/* one cross-rail flow: the spine uplink limits it */
		{H(PREFILL, 0, 0), H(DECODE, 0, 1), GB, 0, 0, 0},
		/* one same-rail flow: line rate */
		{H(PREFILL, 0, 0), H(DECODE, 0, 0), GB, 10, 0, 0},
		/* two cross-rail flows up rail 0's uplink from different NICs */
		{H(PREFILL, 0, 0), H(DECODE, 0, 1), GB, 20, 0, 0},
		{H(PREFILL, 1, 0), H(DECODE, 1, 1), GB, 20, 0, 0},
		/* same-rail beside cross-rail: the spine is not on its path */
		{H(PREFILL, 0, 0), H(DECODE, 0, 0), GB, 30, 0, 0},
		{H(PREFILL, 1, 1), H(DECODE, 1, 0), GB, 30, 0, 0},
		/* the reverse direction uses the other half of the spine links */
		{H(DECODE, 0, 1), H(PREFILL, 0, 0), GB, 40, 0, 0},
	};
#undef H
	xfers_run(x, 7);
	for (int i = 0; i < 7; i++) {
		char key[16];
		snprintf(key, sizeof(key), "t%d", i);
		res_put(res, key, x[i].end - x[i].start);
	}
	kvb_platform_map_free(m);
}

START_TEST(test_sim_rail_spine)
{
	char *r = sim_fork(child_rail, NULL);
	double lat = 2e-6;

	assert_close(res_num(r, "t0"), GB / 6.25e9 + lat, "cross-rail alone");
	assert_close(res_num(r, "t1"), GB / 12.5e9 + lat, "same-rail alone");
	assert_close(res_num(r, "t2"), 2 * GB / 6.25e9 + lat, "two cross-rail, shared uplink");
	assert_close(res_num(r, "t3"), 2 * GB / 6.25e9 + lat, "two cross-rail, shared uplink");
	assert_close(res_num(r, "t4"), GB / 12.5e9 + lat, "same-rail beside cross-rail");
	assert_close(res_num(r, "t5"), GB / 6.25e9 + lat, "cross-rail beside same-rail");
	assert_close(res_num(r, "t6"), GB / 6.25e9 + lat, "cross-rail, reverse");
	g_free(r);
}
END_TEST

/* Fat-tree: one node of 4 NICs per leaf (hosts_per_leaf 4), 4 flows
 * p0-nic k -> d0-nic k at once: every flow crosses the leaf uplinks. */
static void child_fattree(const void *arg, GString *res)
{
	kvb_platform_desc_t d;
	kvb_platform_desc_defaults(&d);
	d.prefill_nodes = d.decode_nodes = 1;
	d.nics_per_node = 4;
	d.nic_gbps = 100;
	d.topology = KVB_TOPO_FATTREE;
	d.hosts_per_leaf = 4;
	d.oversubscription = *(const double *)arg;
	sim_init();
	sim_load_desc(res, &d);
	kvb_platform_map_t *m = sim_map(res, "fattree.xml");
	xfer_t x[4];
	for (uint32_t k = 0; k < 4; k++) {
		x[k] = (xfer_t){kvb_platform_map_host(m, KVB_PLATFORM_PREFILL, 0, k),
				kvb_platform_map_host(m, KVB_PLATFORM_DECODE, 0, k), GB, 0, 0, 0};
	}
	xfers_run(x, 4);
	double end = 0;
	for (int k = 0; k < 4; k++)
		end = fmax(end, x[k].end);
	res_put(res, "aggregate", 4 * GB / end);
	res_put(res, "spines", kvb_platform_fattree_spines(&d));
	kvb_platform_map_free(m);
}

START_TEST(test_sim_fattree_oversub)
{
	double o1 = 1, o2 = 2;
	char *r1 = sim_fork(child_fattree, &o1);
	char *r2 = sim_fork(child_fattree, &o2);
	double a1 = res_num(r1, "aggregate"), a2 = res_num(r2, "aggregate");

	fprintf(stderr,
		"# platform fat-tree: 4 cross-leaf flows, aggregate %.4g B/s with %g spines "
		"(oversubscription 1), %.4g B/s with %g (oversubscription 2): ratio %.4f\n",
		a1, res_num(r1, "spines"), a2, res_num(r2, "spines"), a1 / a2);
	assert_close(a1, 4 * 12.5e9 / (1 + 12.5e9 * 2e-6 / GB), "non-blocking aggregate");
	assert_close(a1 / a2, 2, "oversubscription 2 halves the cross-leaf aggregate");
	g_free(r1);
	g_free(r2);
}
END_TEST

/* ---- SimGrid: user platforms ---------------------------------------------- */

#define XML_HEAD                                                                   \
	"<?xml version='1.0'?>\n"                                                  \
	"<!DOCTYPE platform SYSTEM \"https://simgrid.org/simgrid.dtd\">\n"         \
	"<platform version=\"4.1\">\n"                                             \
	"<config><prop id=\"network/model\" value=\"CM02\"/>"                      \
	"<prop id=\"network/crosstraffic\" value=\"0\"/></config>\n"
#define NIC(id, props)                                                             \
	"<host id=\"" id "\" speed=\"1Gf\">" props "</host>"                       \
	"<link id=\"" id "\" bandwidth=\"10GBps\" latency=\"1us\" sharing_policy=\"SPLITDUPLEX\"/>" \
	"<host_link id=\"" id "\" up=\"" id "_UP\" down=\"" id "_DOWN\"/>\n"
#define PROPS(role, node, nic)                                                     \
	"<prop id=\"kvb_role\" value=\"" role "\"/><prop id=\"kvb_node\" value=\"" node \
	"\"/><prop id=\"kvb_nic\" value=\"" nic "\"/>"
#define STAR(body) "<zone id=\"z\" routing=\"Cluster\">\n" body "</zone></platform>\n"

static const char user_xml[] = XML_HEAD STAR(
	NIC("boxA-mlx5_0", PROPS("prefill", "0", "0"))
	NIC("boxA-mlx5_1", PROPS("prefill", "0", "1"))
	NIC("boxB-mlx5_0", PROPS("decode", "0", "0"))
	NIC("boxB-mlx5_1", PROPS("decode", "0", "1"))
	NIC("d1-nic0", "")
	NIC("d1-nic1", "")
	NIC("scheduler", ""));

static void child_user_xml(const void *arg, GString *res)
{
	sim_init();
	sim_load_text(res, user_xml);
	kvb_platform_map_t *m = sim_map(res, "user.xml");
	res_put(res, "prefill_nodes", m->nodes[0]);
	res_put(res, "prefill_nics", m->nics[0]);
	res_put(res, "decode_nodes", m->nodes[1]);
	res_put(res, "decode_nics", m->nics[1]);
	res_put(res, "ignored", (double)m->ignored_hosts);
	g_string_append_printf(res, "p0n1 %s\nd0n0 %s\nd1n1 %s\n",
			       sg_host_get_name(kvb_platform_map_host(m, 0, 0, 1)),
			       sg_host_get_name(kvb_platform_map_host(m, 1, 0, 0)),
			       sg_host_get_name(kvb_platform_map_host(m, 1, 1, 1)));
	xfer_t x = {kvb_platform_map_host(m, 0, 0, 0), kvb_platform_map_host(m, 1, 1, 1), GB, 0, 0,
		    0};
	xfers_run(&x, 1);
	res_put(res, "t", x.end - x.start);
	kvb_platform_map_free(m);
}

START_TEST(test_sim_user_xml)
{
	char *r = sim_fork(child_user_xml, NULL);
	ck_assert(res_num(r, "prefill_nodes") == 1 && res_num(r, "prefill_nics") == 2);
	ck_assert(res_num(r, "decode_nodes") == 2 && res_num(r, "decode_nics") == 2);
	ck_assert(res_num(r, "ignored") == 1); /* scheduler */
	char *s = res_str(r, "p0n1");
	ck_assert_str_eq(s, "boxA-mlx5_1");
	g_free(s);
	s = res_str(r, "d0n0");
	ck_assert_str_eq(s, "boxB-mlx5_0");
	g_free(s);
	s = res_str(r, "d1n1");
	ck_assert_str_eq(s, "d1-nic1");
	g_free(s);
	assert_close(res_num(r, "t"), GB / 10e9 + 2e-6, "user platform transfer");
	g_free(r);
}
END_TEST

typedef struct user_bad {
	const char *xml;
	int code;
	const char *part1, *part2;
} user_bad_t;

static const user_bad_t user_bads[] = {
	{XML_HEAD STAR(NIC("p0-nic0", "") NIC("p0-nic2", "") NIC("d0-nic0", "")),
	 KVB_PLATFORM_ERROR_MAP, "prefill node 0 has no NIC 1", "p0-nic2"},
	{XML_HEAD STAR(NIC("p0-nic0", "") NIC("p0-nic1", "") NIC("p1-nic0", "") NIC("d0-nic0", "")),
	 KVB_PLATFORM_ERROR_MAP, "prefill node 1 has 1 NIC hosts (last 'p1-nic0')", "equal"},
	{XML_HEAD STAR(NIC("p0-nic0", "") NIC("x", PROPS("prefill", "0", "0")) NIC("d0-nic0", "")),
	 KVB_PLATFORM_ERROR_MAP, "hosts 'p0-nic0' and 'x' are both prefill node 0 NIC 0", NULL},
	{XML_HEAD STAR(NIC("p0-nic0", "") NIC("x", "<prop id=\"kvb_role\" value=\"decode\"/>")),
	 KVB_PLATFORM_ERROR_MAP, "host 'x'", "kvb_node"},
	{XML_HEAD STAR(NIC("p0-nic0", "") NIC("x", PROPS("decoder", "0", "0"))),
	 KVB_PLATFORM_ERROR_MAP, "host 'x'", "kvb_role = 'decoder'"},
	{XML_HEAD STAR(NIC("p0-nic0", "") NIC("p1-nic0", "")), KVB_PLATFORM_ERROR_MAP,
	 "no decode NIC host", NULL},
	{XML_HEAD STAR(NIC("p0-nic0", "") NIC("p2-nic0", "") NIC("d0-nic0", "")),
	 KVB_PLATFORM_ERROR_MAP, "prefill node 1 has no NIC host", "p2-nic0"},
	{XML_HEAD STAR(NIC("p0-nic0", "") NIC("p99999999-nic0", "") NIC("d0-nic0", "")),
	 KVB_PLATFORM_ERROR_MAP, "p99999999-nic0", "below"},
	/* hosts without a link: an empty route, then a NIC with no port */
	{XML_HEAD STAR("<host id=\"p0-nic0\" speed=\"1Gf\"/><host id=\"d0-nic0\" speed=\"1Gf\"/>\n"),
	 KVB_PLATFORM_ERROR_ROUTE, "route from host 'p0-nic0' to host 'd0-nic0' has no link", NULL},
	{XML_HEAD STAR(NIC("p0-nic0", "") NIC("p1-nic0", "") "<host id=\"d0-nic0\" speed=\"1Gf\"/>\n"),
	 KVB_PLATFORM_ERROR_ROUTE, "routes out of host 'd0-nic0' share no link", "no egress link"},
	/* two zones nothing joins */
	{XML_HEAD "<zone id=\"top\" routing=\"Full\">\n"
		  "<zone id=\"a\" routing=\"Cluster\"><router id=\"ra\"/>\n" NIC("p0-nic0", "")
		  "</zone>\n"
		  "<zone id=\"b\" routing=\"Cluster\"><router id=\"rb\"/>\n" NIC("d0-nic0", "")
		  "</zone>\n"
		  "</zone></platform>\n",
	 KVB_PLATFORM_ERROR_ROUTE, "no route from host 'p0-nic0' to host 'd0-nic0'",
	 "Bad gateways"},
};

static void child_user_bad(const void *arg, GString *res)
{
	const user_bad_t *c = arg;
	GError *e = NULL;
	kvb_platform_map_t *m = NULL;
	sim_init();
	sim_load_text(res, c->xml);
	gboolean ok = kvb_platform_map_build("bad.xml", &m, &e);
	CHILD_CHECK(res, !ok && m == NULL, "map_build accepted it");
	CHILD_CHECK(res, e && e->domain == KVB_PLATFORM_ERROR, "no GError");
	res_put(res, "code", e->code);
	g_string_append_printf(res, "message %s\n", e->message);
	g_error_free(e);
}

START_TEST(test_sim_user_bad)
{
	const user_bad_t *c = &user_bads[_i];
	char *r = sim_fork(child_user_bad, c);
	char *msg = res_str(r, "message");
	ck_assert_msg(res_num(r, "code") == c->code, "code %g for: %s", res_num(r, "code"), msg);
	ck_assert_msg(strstr(msg, "bad.xml: ") == msg, "origin missing: %s", msg);
	ck_assert_msg(strstr(msg, c->part1), "'%s' not in: %s", c->part1, msg);
	if (c->part2)
		ck_assert_msg(strstr(msg, c->part2), "'%s' not in: %s", c->part2, msg);
	g_free(msg);
	g_free(r);
}
END_TEST

static void child_no_platform(const void *arg, GString *res)
{
	GError *e = NULL;
	kvb_platform_map_t *m = NULL;
	sim_init();
	CHILD_CHECK(res, !kvb_platform_map_build("none.xml", &m, &e) && m == NULL,
		    "map_build without a platform succeeded");
	g_string_append_printf(res, "message %s\n", e ? e->message : "");
	g_clear_error(&e);
}

START_TEST(test_sim_no_platform)
{
	char *r = sim_fork(child_no_platform, NULL);
	char *msg = res_str(r, "message");
	ck_assert_msg(strstr(msg, "none.xml: SimGrid has no host"), "%s", msg);
	g_free(msg);
	g_free(r);
}
END_TEST

/* ---- SimGrid: network model and scale --------------------------------------- */

typedef struct model_arg {
	bool lv08;   /* drop our <config>: SimGrid defaults (LV08, crosstraffic, TCP-gamma) */
	bool shared; /* SHARED NIC links instead of SPLITDUPLEX */
} model_arg_t;

static void child_model(const void *arg, GString *res)
{
	const model_arg_t *a = arg;
	kvb_platform_desc_t d;
	kvb_platform_desc_defaults(&d);
	d.prefill_nodes = d.decode_nodes = d.nics_per_node = 1;
	d.nic_gbps = 100;
	char *xml = kvb_platform_xml(&d, NULL);
	GString *x = g_string_new(xml);
	g_free(xml);
	if (a->lv08) {
		char *s = strstr(x->str, "  <config>"), *e = strstr(x->str, "</config>\n");
		g_string_erase(x, s - x->str, e + strlen("</config>\n") - s);
	}
	if (a->shared) {
		g_string_replace(x, "SPLITDUPLEX", "SHARED", 0);
		g_string_replace(x, "_UP\"", "\"", 0);
		g_string_replace(x, "_DOWN\"", "\"", 0);
	}
	sim_init();
	sim_load_text(res, x->str);
	g_string_free(x, TRUE);
	xfer_t t = {sim_host(res, "p0-nic0"), sim_host(res, "d0-nic0"), GB, 0, 0, 0};
	xfers_run(&t, 1);
	res_put(res, "t", t.end - t.start);
}

START_TEST(test_sim_lv08_vs_cm02)
{
	double t[2][2];
	for (int lv = 0; lv < 2; lv++) {
		for (int sh = 0; sh < 2; sh++) {
			model_arg_t a = {lv == 1, sh == 1};
			char *r = sim_fork(child_model, &a);
			t[lv][sh] = res_num(r, "t");
			g_free(r);
		}
	}
	fprintf(stderr,
		"# platform model: 1 GB over 100 Gb/s NICs, 2 us: CM02 %.6f s, LV08 %.6f s "
		"(+%.2f %%) on SPLITDUPLEX NIC links; on SHARED links CM02 %.6f s, LV08 %.6f s "
		"(+%.2f %%)\n",
		t[0][0], t[1][0], 100 * (t[1][0] / t[0][0] - 1), t[0][1], t[1][1],
		100 * (t[1][1] / t[0][1] - 1));
	assert_close(t[0][0], 0.08 + 2e-6, "CM02, SPLITDUPLEX");
	assert_close(t[0][1], 0.08 + 2e-6, "CM02 (crosstraffic 0), SHARED");
	/* LV08: bandwidth x 0.97, latency x 13.01; crosstraffic adds 5 % on SHARED */
	assert_close(t[1][0], 0.08 / 0.97 + 13.01 * 2e-6, "LV08, SPLITDUPLEX");
	ck_assert_msg(t[1][1] / t[0][1] > 1.07, "LV08 on SHARED links only %.4f x CM02",
		      t[1][1] / t[0][1]);
}
END_TEST

/* Under valgrind or ASan wall times mean nothing. */
static bool instrumented(void)
{
#if defined(__SANITIZE_ADDRESS__)
	return true;
#else
	const char *pre = getenv("LD_PRELOAD");
	return pre && strstr(pre, "vgpreload");
#endif
}

static void child_scale(const void *arg, GString *res)
{
	kvb_platform_desc_t d;
	GError *e = NULL;
	kvb_platform_desc_defaults(&d);
	d.prefill_nodes = d.decode_nodes = 512; /* 1024 nodes x 8 NICs */
	d.topology = *(const kvb_topology_kind_t *)arg;
	sim_init();
	gint64 t0 = g_get_monotonic_time();
	char *xml = kvb_platform_xml(&d, &e);
	CHILD_CHECK(res, xml != NULL, "xml: %s", e ? e->message : "");
	gint64 t1 = g_get_monotonic_time();
	res_put(res, "xml_bytes", (double)strlen(xml));
	char *path = NULL;
	int fd = g_file_open_tmp("kvb-platform-XXXXXX.xml", &path, &e);
	CHILD_CHECK(res, fd >= 0, "tmp: %s", e ? e->message : "");
	close(fd);
	CHILD_CHECK(res, g_file_set_contents(path, xml, -1, &e), "write");
	g_free(xml);
	gint64 t2 = g_get_monotonic_time();
	simgrid_load_platform(path);
	gint64 t3 = g_get_monotonic_time();
	unlink(path);
	g_free(path);
	kvb_platform_map_t *m = sim_map(res, "scale.xml");
	gint64 t4 = g_get_monotonic_time();
	res_put(res, "gen_s", (double)(t1 - t0) / 1e6);
	res_put(res, "load_s", (double)(t3 - t2) / 1e6);
	res_put(res, "map_s", (double)(t4 - t3) / 1e6);
	res_put(res, "hosts", (double)sg_host_count());
	res_put(res, "pairs", (double)m->pairs_checked);
	res_put(res, "nics", (double)m->nodes[0] * m->nics[0] + (double)m->nodes[1] * m->nics[1]);
	/* one transfer on the big platform still takes size / rate + latency */
	xfer_t x = {kvb_platform_map_host(m, KVB_PLATFORM_PREFILL, 511, 7),
		    kvb_platform_map_host(m, KVB_PLATFORM_DECODE, 0, 3), GB, 0, 0, 0};
	xfers_run(&x, 1);
	res_put(res, "t", x.end - x.start);
	kvb_platform_map_free(m);
}

START_TEST(test_sim_scale)
{
	kvb_topology_kind_t t = all_topos[_i];
	char *r = sim_fork(child_scale, &t);
	double load = res_num(r, "load_s");

	fprintf(stderr,
		"# platform %s, 1024 nodes x 8 NICs: %g NIC hosts (%g in SimGrid), XML %.0f kB "
		"generated in %.3f s, loaded in %.3f s, mapped with %g route pairs checked in "
		"%.3f s\n",
		kvb_topology_name(t), res_num(r, "nics"), res_num(r, "hosts"),
		res_num(r, "xml_bytes") / 1e3, res_num(r, "gen_s"), load, res_num(r, "pairs"),
		res_num(r, "map_s"));
	ck_assert(res_num(r, "nics") == 8192);
	ck_assert(res_num(r, "pairs") == 8192); /* every NIC once each way, then samples */
	if (instrumented())
		fprintf(stderr, "# platform %s: load time not checked under valgrind or ASan\n",
			kvb_topology_name(t));
	else
		ck_assert_msg(load < 2.0, "loading 8192 NIC hosts took %.3f s", load);
	assert_close(res_num(r, "t"), GB / 25e9 + 2e-6, "1 GB on the big platform");
	g_free(r);
}
END_TEST

Suite *kvb_suite_platform(void)
{
	Suite *s = suite_create("platform");
	TCase *tc = tcase_create("desc");
	tcase_add_test(tc, test_defaults);
	tcase_add_test(tc, test_rates_and_names);
	tcase_add_loop_test(tc, test_validate_bad, 0, (int)G_N_ELEMENTS(bad_cases));
	tcase_add_test(tc, test_validate_fattree_hint);
	tcase_add_test(tc, test_load);
	tcase_add_loop_test(tc, test_load_bad, 0, (int)G_N_ELEMENTS(load_bads));
	tcase_add_test(tc, test_load_no_group);
	tcase_add_test(tc, test_xml_text);
	tcase_add_test(tc, test_write);
	suite_add_tcase(s, tc);

	/* each test forks its own SimGrid process (sim_fork) */
	tc = tcase_create("simgrid");
	tcase_set_timeout(tc, 300);
	tcase_add_loop_test(tc, test_sim_load_map, 0, (int)G_N_ELEMENTS(all_topos));
	tcase_add_loop_test(tc, test_sim_transfer_time, 0, (int)G_N_ELEMENTS(all_topos));
	tcase_add_loop_test(tc, test_sim_shared_nic, 0, (int)G_N_ELEMENTS(all_topos));
	tcase_add_test(tc, test_sim_caps);
	tcase_add_test(tc, test_sim_rail_spine);
	tcase_add_test(tc, test_sim_fattree_oversub);
	tcase_add_test(tc, test_sim_user_xml);
	tcase_add_loop_test(tc, test_sim_user_bad, 0, (int)G_N_ELEMENTS(user_bads));
	tcase_add_test(tc, test_sim_no_platform);
	tcase_add_test(tc, test_sim_lv08_vs_cm02);
	tcase_add_loop_test(tc, test_sim_scale, 0, (int)G_N_ELEMENTS(all_topos));
	suite_add_tcase(s, tc);
	return s;
}
