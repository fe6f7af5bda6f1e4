/*
 * kvbridge-sim: a disaggregated prefill/decode cluster in SimGrid, with the
 * kvbridge connector core moving every request's KV cache over the
 * simulated NICs.  See --help, docs/simulation.md.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>
#include <glib/gstdio.h>
#include <kvbridge/kvbridge.h>

#include "../backends/sim/kvb_study.h"
#include "kvb_cli.h"

#define PROG "kvbridge-sim"

/* The options as GOption leaves them.  Numbers stay text until
 * apply_options() checks each against its range, so that an option not
 * given leaves the default (or the study file's value) alone and any value
 * given is either in range or refused. */
typedef struct cli {
	gchar *config, *trace, *format, *model, *topology, *platform_xml;
	gchar *nic_policy, *lease_policy, *flow_model;
	gchar **faults;
	gchar *out, *transfer_bench;
	gboolean events, no_plots, quiet, list_models, no_prefill_cache, no_decode_cache;
	gchar *rate_mult, *limit, *requests, *rate;
	gchar *prefill_nodes, *decode_nodes, *gpus, *nics;
	gchar *nic_gbps, *nic_eff, *pcie, *mem, *latency_us, *oversub;
	gchar *lease_s, *heartbeat_s, *slice_size;
	gchar *abort_prob, *late_prob, *late_delay;
	gchar *seed, *kv_pool, *tpot, *concurrency;
} cli_t;

/* What the workload and transfer-bench options resolve to. */
typedef struct run_opts {
	kvb_wl_format_t format;
	double rate_mult;
	uint64_t limit;          /* 0: all requests */
	kvb_wl_gen_params_t gen; /* the built-in generator */
	uint32_t concurrency;
} run_opts_t;

/* Ranges shared by an option and its [study] key, and the largest values
 * other options take (the library's own limits where it has them). */
#define PROB_MIN 0.0
#define PROB_MAX 1.0
#define SECONDS_MAX 1e9 /* the connector config's limit on a duration */
#define GBYTES_MAX 1e6  /* a KV pool or a transfer-bench size, GB */
#define RATE_MAX 1e6    /* arrivals per second, replay speed-up */
#define BENCH_CONCURRENCY_MAX 65536

static int fail(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

static gboolean flow_model_parse(const char *s, kvb_sim_flow_model_t *fm)
{
	if (strcmp(s, "merged") == 0)
		*fm = KVB_SIM_FLOWS_MERGED;
	else if (strcmp(s, "per-slice") == 0)
		*fm = KVB_SIM_FLOWS_PER_SLICE;
	else
		return FALSE;
	return TRUE;
}

static int fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "kvbridge-sim: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	return 2;
}

static gboolean study_range(const char *path, const char *key, double v, double min, double max,
			    unsigned flags, GError **err)
{
	char why[128], val[G_ASCII_DTOSTR_BUF_SIZE];
	if (kvb_cli_range_double(v, min, max, flags, why, sizeof(why)))
		return TRUE;
	g_ascii_formatd(val, sizeof(val), "%.15g", v);
	g_set_error(err, G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_INVALID_VALUE, "%s: [study] %s = %s: %s", path, key,
		    val, why);
	return FALSE;
}

/* The config file may hold [platform], [study], [workload] and the
 * connector's own groups; the connector loader sees only its groups.  The
 * file's values go into p (and the model's name into *model), where the
 * command line, applied after, overrides them. */
static gboolean load_config(const char *path, kvb_study_params_t *p, gchar **model, GError **err)
{
	GKeyFile *kf = g_key_file_new();
	if (!g_key_file_load_from_file(kf, path, G_KEY_FILE_NONE, err)) {
		g_key_file_free(kf);
		return FALSE;
	}
	gboolean ok = TRUE;
	if (g_key_file_has_group(kf, "platform"))
		ok = kvb_platform_desc_load(&p->platform, kf, "platform", path, err);
	if (ok && g_key_file_has_group(kf, "study")) {
		gchar **keys = g_key_file_get_keys(kf, "study", NULL, NULL);
		for (gchar **k = keys; ok && k && *k; k++) {
			GError *e = NULL;
			if (strcmp(*k, "model") == 0) {
				g_free(*model);
				*model = g_key_file_get_string(kf, "study", *k, &e);
			} else if (strcmp(*k, "kv_pool_gbytes") == 0) {
				p->kv_pool_gbytes = g_key_file_get_double(kf, "study", *k, &e);
				if (!e)
					ok = study_range(path, *k, p->kv_pool_gbytes, 0, GBYTES_MAX,
							 KVB_CLI_ABOVE_MIN, err);
			} else if (strcmp(*k, "decode_tpot") == 0) {
				p->decode_tpot_s = g_key_file_get_double(kf, "study", *k, &e);
				if (!e)
					ok = study_range(path, *k, p->decode_tpot_s, 0, SECONDS_MAX, 0, err);
			} else if (strcmp(*k, "abort_prob") == 0) {
				p->abort_prob = g_key_file_get_double(kf, "study", *k, &e);
				if (!e)
					ok = study_range(path, *k, p->abort_prob, PROB_MIN, PROB_MAX, 0, err);
			} else if (strcmp(*k, "late_prob") == 0) {
				p->late_prob = g_key_file_get_double(kf, "study", *k, &e);
				if (!e)
					ok = study_range(path, *k, p->late_prob, PROB_MIN, PROB_MAX, 0, err);
			} else if (strcmp(*k, "late_delay") == 0) {
				p->late_delay_mean_s = g_key_file_get_double(kf, "study", *k, &e);
				if (!e)
					ok = study_range(path, *k, p->late_delay_mean_s, 0, SECONDS_MAX, 0, err);
			} else if (strcmp(*k, "flow_model") == 0) {
				gchar *fm = g_key_file_get_string(kf, "study", *k, &e);
				if (fm && !flow_model_parse(fm, &p->flow_model)) {
					g_set_error(err, G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_INVALID_VALUE,
						    "%s: [study] flow_model = '%s': expected merged or per-slice", path, fm);
					ok = FALSE;
				}
				g_free(fm);
			} else {
				g_set_error(err, G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_KEY_NOT_FOUND,
					    "%s: [study] unknown key '%s' (model, kv_pool_gbytes, decode_tpot, "
					    "abort_prob, late_prob, late_delay, flow_model)", path, *k);
				ok = FALSE;
			}
			if (e) {
				g_propagate_prefixed_error(err, e, "%s: [study] %s: ", path, *k);
				ok = FALSE;
			}
		}
		g_strfreev(keys);
	}
	if (ok) {
		g_key_file_remove_group(kf, "platform", NULL);
		g_key_file_remove_group(kf, "study", NULL);
		gsize len;
		gchar *rest = g_key_file_to_data(kf, &len, NULL);
		ok = kvb_config_load_data(&p->conn, rest, len, path, err);
		g_free(rest);
	}
	g_key_file_free(kf);
	return ok;
}

static void list_models(void)
{
	printf("%-16s %7s %9s %9s %10s %12s\n", "model", "layers", "kv_heads", "head_dim", "params(B)", "KiB/token");
	for (const kvb_model_t *m = kvb_model_presets(); m->name; m++)
		printf("%-16s %7u %9u %9u %10.2f %12.1f\n", m->name, m->layers, m->kv_heads, m->head_dim,
		       m->active_params_b, (double)kvb_model_kv_bytes_per_token(m) / 1024.0);
}

static gint cmp_double(gconstpointer a, gconstpointer b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* gnuplot: transfer-time CDF, TTFT over time, NIC utilisation; PNG + SVG. */
static void write_plots(const char *dir, bool quiet)
{
	static const char *script =
		"set datafile separator ','\n"
		"set key outside top center horizontal\n"
		"set grid\n"
		"do for [fmt in 'png svg'] {\n"
		"  if (fmt eq 'png') { set terminal png size 1000,600 } else { set terminal svg size 1000,600 }\n"
		"  set output 'transfer_cdf.'.fmt\n"
		"  set title 'KV transfer time, CDF over completed requests'\n"
		"  set xlabel 'transfer time (ms)'; set ylabel 'fraction of requests'; set logscale x\n"
		"  plot 'transfer_sorted.dat' using 1:2 with lines lw 2 title 'transfer'\n"
		"  unset logscale x\n"
		"  set output 'ttft.'.fmt\n"
		"  set title 'Time to first token by arrival (log scale)'\n"
		"  set logscale y\n"
		"  set xlabel 'arrival (s)'; set ylabel 'TTFT (s)'\n"
		"  plot 'requests.csv' every ::1 using 2:(strcol(17) eq 'done' ? $13 : 1/0) with points pt 7 ps 0.3 title 'TTFT', "
		"'' every ::1 using 2:(strcol(17) eq 'done' ? $14 : 1/0) with points pt 7 ps 0.3 title 'of which transfer'\n"
		"  unset logscale y\n"
		"  set output 'nic_util.'.fmt\n"
		"  set title 'NIC utilisation (mean and max over NICs, per sample)'\n"
		"  set xlabel 'time (s)'; set ylabel 'utilisation'; set yrange [0:1.05]\n"
		"  plot 'nic_util.dat' using 1:2 with lines lw 2 title 'mean prefill NIC', '' using 1:3 with lines title 'max prefill NIC'\n"
		"  unset yrange\n"
		"}\n";
	char *gp = g_build_filename(dir, "plots.gp", NULL);
	g_file_set_contents(gp, script, -1, NULL);
	/* derived data: sorted transfer times and per-sample NIC utilisation */
	char *path = g_build_filename(dir, "requests.csv", NULL), *text = NULL;
	if (g_file_get_contents(path, &text, NULL, NULL)) {
		GArray *xs = g_array_new(FALSE, FALSE, sizeof(double));
		char **lines = g_strsplit(text, "\n", -1);
		for (char **l = lines + 1; *l && **l; l++) {
			char **f = g_strsplit(*l, ",", -1);
			if (g_strv_length(f) > 16 && strcmp(f[16], "done") == 0) {
				double x = g_ascii_strtod(f[13], NULL) * 1e3;
				if (x > 0)
					g_array_append_val(xs, x);
			}
			g_strfreev(f);
		}
		g_strfreev(lines);
		g_array_sort(xs, cmp_double);
		double *v = (double *)(void *)xs->data;
		GString *out = g_string_new(NULL);
		for (guint i = 0; i < xs->len; i++)
			g_string_append_printf(out, "%.6f,%.6f\n", v[i], (double)(i + 1) / xs->len);
		char *dat = g_build_filename(dir, "transfer_sorted.dat", NULL);
		g_file_set_contents(dat, out->str, -1, NULL);
		g_free(dat);
		g_string_free(out, TRUE);
		g_array_free(xs, TRUE);
		g_free(text);
	}
	g_free(path);
	path = g_build_filename(dir, "nics.csv", NULL);
	if (g_file_get_contents(path, &text, NULL, NULL)) {
		GString *out = g_string_new(NULL);
		char **lines = g_strsplit(text, "\n", -1);
		double t = -1, sum = 0, mx = 0;
		int cnt = 0;
		for (char **l = lines + 1;; l++) {
			char **f = *l && **l ? g_strsplit(*l, ",", -1) : NULL;
			double tt = f ? g_ascii_strtod(f[0], NULL) : -2;
			if (tt != t && t >= 0 && cnt)
				g_string_append_printf(out, "%.6f,%.4f,%.4f\n", t, sum / cnt, mx);
			if (!f)
				break;
			if (tt != t) {
				t = tt;
				sum = mx = 0;
				cnt = 0;
			}
			if (strcmp(f[2], "prefill") == 0) {
				double u = g_ascii_strtod(f[6], NULL);
				sum += u;
				mx = MAX(mx, u);
				cnt++;
			}
			g_strfreev(f);
		}
		g_strfreev(lines);
		char *dat = g_build_filename(dir, "nic_util.dat", NULL);
		g_file_set_contents(dat, out->str, -1, NULL);
		g_free(dat);
		g_string_free(out, TRUE);
		g_free(text);
	}
	g_free(path);
	char *gnuplot = g_find_program_in_path("gnuplot");
	if (!gnuplot) {
		if (!quiet)
			fprintf(stderr, "kvbridge-sim: gnuplot not found; plot script left in %s\n", gp);
		g_free(gp);
		return;
	}
	char *argv[] = {gnuplot, "plots.gp", NULL};
	gint status = 0;
	GError *e = NULL;
	if (!g_spawn_sync(dir, argv, NULL, G_SPAWN_STDOUT_TO_DEV_NULL | G_SPAWN_STDERR_TO_DEV_NULL, NULL, NULL,
			  NULL, NULL, &status, &e) || status != 0) {
		fprintf(stderr, "kvbridge-sim: gnuplot failed (%s); script in %s\n", e ? e->message : "exit status",
			gp);
		g_clear_error(&e);
	}
	g_free(gnuplot);
	g_free(gp);
}

/* --transfer-bench: latency and bandwidth of one transfer per size. */
static int run_transfer_bench(kvb_study_params_t *p, const cli_t *c, const run_opts_t *r)
{
	gchar **parts = g_strsplit(c->transfer_bench, ",", -1);
	guint n = g_strv_length(parts);
	double *sizes = g_new0(double, n ? n : 1), *secs = g_new0(double, n ? n : 1);
	int rc = n ? 0 : fail("--transfer-bench '': expected sizes in GB, such as 1,10,40");
	for (guint i = 0; i < n && !rc; i++)
		if (!kvb_cli_parse_double(PROG, "--transfer-bench", parts[i], 0, GBYTES_MAX, KVB_CLI_ABOVE_MIN,
					  &sizes[i]))
			rc = KVB_CLI_USAGE;
	GError *err = NULL;
	uint32_t conc = r->concurrency;
	kvb_sim_stats_t st;
	memset(&st, 0, sizeof(st));
	gint64 t0 = g_get_monotonic_time();
	if (!rc && !kvb_study_transfer_bench(p, sizes, n, conc, secs, &st, &err))
		rc = fail("%s", err->message);
	double wall = (double)(g_get_monotonic_time() - t0) / 1e6;
	if (!rc) {
		const char *dir = c->out ? c->out : "sim-out";
		g_mkdir_with_parents(dir, 0755);
		GString *csv = g_string_new("size_gb,seconds,gbytes_per_s\n");
		printf("transfer bench: %u+%u NICs of %.0f Gb/s (efficiency %.2f, memory cap %.0f GB/s), policy %s, "
		       "%u concurrent requests, %s flows\n",
		       p->platform.nics_per_node, p->platform.nics_per_node, p->platform.nic_gbps,
		       p->platform.nic_efficiency, p->platform.mem_gbytes, p->conn.nic_policy, conc,
		       p->flow_model == KVB_SIM_FLOWS_MERGED ? "merged" : "per-slice");
		printf("  %10s %12s %12s\n", "size (GB)", "latency (s)", "GB/s");
		for (guint i = 0; i < n; i++) {
			printf("  %10.2f %12.4f %12.2f\n", sizes[i], secs[i], sizes[i] / secs[i]);
			g_string_append_printf(csv, "%.6f,%.9f,%.6f\n", sizes[i], secs[i], sizes[i] / secs[i]);
		}
		printf("  flows %" PRIu64 " (peak %" PRIu64 " in flight), wall %.3f s\n", st.flows_started, st.flows_peak,
		       wall);
		char *stats = g_strdup_printf("flows,flows_peak,wall_s\n%" PRIu64 ",%" PRIu64 ",%.6f\n",
					      st.flows_started, st.flows_peak, wall);
		char *spath = g_build_filename(dir, "transfer_bench_stats.csv", NULL);
		g_file_set_contents(spath, stats, -1, NULL);
		g_free(spath);
		g_free(stats);
		char *path = g_build_filename(dir, "transfer_bench.csv", NULL);
		g_file_set_contents(path, csv->str, -1, NULL);
		g_free(path);
		g_string_free(csv, TRUE);
	}
	g_clear_error(&err);
	g_strfreev(parts);
	g_free(sizes);
	g_free(secs);
	return rc;
}

/* Apply the command line over the defaults and the study file: every
 * number checked against its range, every name against the names its
 * parser accepts.  False: refused, the reason printed. */
static bool apply_options(const cli_t *c, kvb_study_params_t *p, run_opts_t *r)
{
	static const char *const formats[] = {"auto", "mooncake", "azure", NULL};
	static const kvb_wl_format_t format_of[] = {KVB_WL_AUTO, KVB_WL_MOONCAKE, KVB_WL_AZURE};
	static const char *const flow_models[] = {"merged", "per-slice", NULL};
	const char *topologies[] = {kvb_topology_name(KVB_TOPO_SWITCH), kvb_topology_name(KVB_TOPO_RAIL),
				    kvb_topology_name(KVB_TOPO_FATTREE), NULL};
	const char *lease_policies[] = {kvb_lease_policy_name(KVB_LEASE_FIXED),
					kvb_lease_policy_name(KVB_LEASE_HEARTBEAT),
					kvb_lease_policy_name(KVB_LEASE_ADAPTIVE), NULL};
	kvb_platform_desc_t *pl = &p->platform;
	double lease_s = 0, heartbeat_s = 0;
	int fmt = 0, flows = 0;

	if (!kvb_cli_parse_double(PROG, "--rate-mult", c->rate_mult, 0, RATE_MAX, KVB_CLI_ABOVE_MIN, &r->rate_mult) ||
	    !kvb_cli_parse_uint64(PROG, "--limit", c->limit, 1, UINT64_MAX, &r->limit) ||
	    !kvb_cli_parse_uint64(PROG, "--requests", c->requests, 1, KVB_WL_MAX_REQUESTS, &r->gen.n_requests) ||
	    !kvb_cli_parse_double(PROG, "--rate", c->rate, 0, RATE_MAX, KVB_CLI_ABOVE_MIN, &r->gen.rate_per_s) ||
	    !kvb_cli_parse_uint32(PROG, "--prefill-nodes", c->prefill_nodes, 1, KVB_PLATFORM_MAX_NODES,
				  &pl->prefill_nodes) ||
	    !kvb_cli_parse_uint32(PROG, "--decode-nodes", c->decode_nodes, 1, KVB_PLATFORM_MAX_NODES,
				  &pl->decode_nodes) ||
	    !kvb_cli_parse_uint32(PROG, "--gpus", c->gpus, 1, KVB_PLATFORM_MAX_GPUS, &pl->gpus_per_node) ||
	    !kvb_cli_parse_uint32(PROG, "--nics", c->nics, 1, KVB_PLATFORM_MAX_NICS, &pl->nics_per_node) ||
	    !kvb_cli_parse_double(PROG, "--nic-gbps", c->nic_gbps, 0, KVB_PLATFORM_MAX_GBPS, KVB_CLI_ABOVE_MIN,
				  &pl->nic_gbps) ||
	    !kvb_cli_parse_double(PROG, "--nic-efficiency", c->nic_eff, 0, 1, KVB_CLI_ABOVE_MIN,
				  &pl->nic_efficiency) ||
	    !kvb_cli_parse_double(PROG, "--pcie-gbytes", c->pcie, 0, KVB_PLATFORM_MAX_GBPS, 0, &pl->pcie_gbytes) ||
	    !kvb_cli_parse_double(PROG, "--mem-gbytes", c->mem, 0, KVB_PLATFORM_MAX_GBPS, 0, &pl->mem_gbytes) ||
	    !kvb_cli_parse_double(PROG, "--latency-us", c->latency_us, 0, KVB_PLATFORM_MAX_LATENCY_US, 0,
				  &pl->latency_us) ||
	    !kvb_cli_parse_double(PROG, "--oversubscription", c->oversub, 1, KVB_PLATFORM_MAX_NODES, 0,
				  &pl->oversubscription) ||
	    !kvb_cli_parse_double(PROG, "--lease", c->lease_s, 0, SECONDS_MAX, KVB_CLI_ABOVE_MIN, &lease_s) ||
	    !kvb_cli_parse_double(PROG, "--heartbeat", c->heartbeat_s, 1e-6, SECONDS_MAX, 0, &heartbeat_s) ||
	    !kvb_cli_parse_uint64(PROG, "--slice-size", c->slice_size, KVB_SLICE_SIZE_MIN, KVB_SLICE_SIZE_MAX,
				  &p->conn.slice_size) ||
	    !kvb_cli_parse_double(PROG, "--abort-prob", c->abort_prob, PROB_MIN, PROB_MAX, 0, &p->abort_prob) ||
	    !kvb_cli_parse_double(PROG, "--late-prob", c->late_prob, PROB_MIN, PROB_MAX, 0, &p->late_prob) ||
	    !kvb_cli_parse_double(PROG, "--late-delay", c->late_delay, 0, SECONDS_MAX, 0, &p->late_delay_mean_s) ||
	    !kvb_cli_parse_double(PROG, "--kv-pool", c->kv_pool, 0, GBYTES_MAX, KVB_CLI_ABOVE_MIN,
				  &p->kv_pool_gbytes) ||
	    !kvb_cli_parse_double(PROG, "--tpot", c->tpot, 0, SECONDS_MAX, 0, &p->decode_tpot_s) ||
	    !kvb_cli_parse_uint64(PROG, "--seed", c->seed, 0, UINT64_MAX, &p->seed) ||
	    !kvb_cli_parse_uint32(PROG, "--concurrency", c->concurrency, 1, BENCH_CONCURRENCY_MAX,
				  &r->concurrency) ||
	    !kvb_cli_parse_choice(PROG, "--format", c->format, formats, &fmt) ||
	    !kvb_cli_parse_choice(PROG, "--flow-model", c->flow_model, flow_models, &flows))
		return false;
	r->format = format_of[fmt];
	if (c->flow_model)
		p->flow_model = flows ? KVB_SIM_FLOWS_PER_SLICE : KVB_SIM_FLOWS_MERGED;
	if (c->lease_s)
		p->conn.abort_timeout_ns = (uint64_t)(lease_s * 1e9);
	if (c->heartbeat_s)
		p->conn.heartbeat_interval_ns = (uint64_t)(heartbeat_s * 1e9);
	if (c->slice_size)
		p->conn.fragment_limit = p->conn.slice_size / 4;
	if (c->seed)
		p->conn.seed = p->seed;
	if (c->topology && !kvb_topology_parse(c->topology, &pl->topology))
		return kvb_cli_bad_choice(PROG, "--topology", c->topology, topologies);
	if (c->nic_policy) {
		if (!kvb_nic_policy_find(c->nic_policy))
			return kvb_cli_bad_choice(PROG, "--nic-policy", c->nic_policy, kvb_nic_policy_names());
		g_strlcpy(p->conn.nic_policy, c->nic_policy, sizeof(p->conn.nic_policy));
	}
	if (c->lease_policy && kvb_lease_policy_parse(c->lease_policy, &p->conn.lease_policy) != KVB_OK)
		return kvb_cli_bad_choice(PROG, "--lease-policy", c->lease_policy, lease_policies);
	if (c->no_prefill_cache)
		p->prefill_prefix_cache = false;
	if (c->no_decode_cache)
		p->decode_prefix_cache = false;
	if (c->platform_xml)
		p->platform_xml = g_strdup(c->platform_xml);
	return true;
}

int main(int argc, char **argv)
{
	cli_t c = {0};
	char *policies = kvb_cli_choices(kvb_nic_policy_names());
	char *nic_policy_help = g_strdup_printf("NIC policy: %s (default round_robin; docs/configuration.md)",
						policies);
	GOptionEntry entries[] = {
		{"config", 'c', 0, G_OPTION_ARG_FILENAME, &c.config, "Study file: [platform], [study], [connector], [transfer] groups", "FILE"},
		{"trace", 't', 0, G_OPTION_ARG_FILENAME, &c.trace, "Replay a Mooncake JSONL or Azure CSV trace (default: built-in generator)", "FILE"},
		{"format", 0, 0, G_OPTION_ARG_STRING, &c.format, "Trace format: auto (default), mooncake, azure", "FMT"},
		{"rate-mult", 0, 0, G_OPTION_ARG_STRING, &c.rate_mult, "Replay speed, > 0: 2 = twice as fast (default 1)", "X"},
		{"limit", 'n', 0, G_OPTION_ARG_STRING, &c.limit, "Use only the first N requests (default: all)", "N"},
		{"requests", 0, 0, G_OPTION_ARG_STRING, &c.requests, "Generator: number of requests (default 2000)", "N"},
		{"rate", 0, 0, G_OPTION_ARG_STRING, &c.rate, "Generator: arrivals per second (default 3.4, the conversation trace)", "R"},
		{"model", 'm', 0, G_OPTION_ARG_STRING, &c.model, "Model preset (default llama-3-70b; --list-models)", "NAME"},
		{"list-models", 0, 0, G_OPTION_ARG_NONE, &c.list_models, "List model presets and exit", NULL},
		{"prefill-nodes", 'P', 0, G_OPTION_ARG_STRING, &c.prefill_nodes, "Prefill nodes (default 16)", "N"},
		{"decode-nodes", 'D', 0, G_OPTION_ARG_STRING, &c.decode_nodes, "Decode nodes (default 16)", "N"},
		{"gpus", 0, 0, G_OPTION_ARG_STRING, &c.gpus, "GPUs per node (default 8)", "N"},
		{"nics", 0, 0, G_OPTION_ARG_STRING, &c.nics, "NICs per node (default 8)", "N"},
		{"nic-gbps", 0, 0, G_OPTION_ARG_STRING, &c.nic_gbps, "NIC line rate, Gb/s (default 200)", "G"},
		{"nic-efficiency", 0, 0, G_OPTION_ARG_STRING, &c.nic_eff, "Goodput / line rate, in (0, 1] (default 1)", "F"},
		{"pcie-gbytes", 0, 0, G_OPTION_ARG_STRING, &c.pcie, "PCIe cap per NIC path, GB/s (default 0 = none)", "G"},
		{"mem-gbytes", 0, 0, G_OPTION_ARG_STRING, &c.mem, "Host memory cap per node, GB/s (default 0 = none)", "G"},
		{"latency-us", 0, 0, G_OPTION_ARG_STRING, &c.latency_us, "NIC-to-NIC latency, us (default 2)", "US"},
		{"topology", 0, 0, G_OPTION_ARG_STRING, &c.topology, "switch (default), rail or fattree", "T"},
		{"oversubscription", 0, 0, G_OPTION_ARG_STRING, &c.oversub, "Fat-tree oversubscription, >= 1 (default 1)", "X"},
		{"platform", 0, 0, G_OPTION_ARG_FILENAME, &c.platform_xml, "Use a SimGrid XML platform instead (see docs/platforms.md)", "XML"},
		{"nic-policy", 0, 0, G_OPTION_ARG_STRING, &c.nic_policy, nic_policy_help, "P"},
		{"lease-policy", 0, 0, G_OPTION_ARG_STRING, &c.lease_policy, "fixed (default, vLLM), heartbeat, adaptive", "P"},
		{"lease", 0, 0, G_OPTION_ARG_STRING, &c.lease_s, "Lease / VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT, s (default 480)", "S"},
		{"heartbeat", 0, 0, G_OPTION_ARG_STRING, &c.heartbeat_s, "Heartbeat interval, s (default 5)", "S"},
		{"slice-size", 0, 0, G_OPTION_ARG_STRING, &c.slice_size, "Slice bytes, 4096 to 1 GiB (default 65536)", "B"},
		{"flow-model", 0, 0, G_OPTION_ARG_STRING, &c.flow_model, "merged (default) or per-slice (the naive reference)", "M"},
		{"abort-prob", 0, 0, G_OPTION_ARG_STRING, &c.abort_prob,
		 "Fraction of requests, 0 to 1, that their client aborts, each an exponential delay (mean 5 s) after "
		 "its arrival unless its KV cache has arrived by then: the decode node drops it and cancels its "
		 "pull; its prefill still runs, and the prefill node frees its blocks when a cancel reaches a "
		 "prefill that has begun, else only when the lease expires (default 0)", "F"},
		{"late-prob", 0, 0, G_OPTION_ARG_STRING, &c.late_prob,
		 "Fraction of requests, 0 to 1, whose decoder pulls late, an exponential delay (--late-delay) "
		 "after arrival (default 0)", "F"},
		{"late-delay", 0, 0, G_OPTION_ARG_STRING, &c.late_delay, "Mean extra delay of a late decoder, s (default 10)", "S"},
		{"fault", 'f', 0, G_OPTION_ARG_STRING_ARRAY, &c.faults, "crash:decode:3@120, nic-down:prefill:0:2@60, nic-degrade:decode:1:0:0.5@30, rail-down:3@100, ... (repeatable)", "SPEC"},
		{"transfer-bench", 0, 0, G_OPTION_ARG_STRING, &c.transfer_bench, "Instead of a workload: time one transfer of each size (GB, comma list) between two nodes (Mooncake Fig. 12)", "SIZES"},
		{"concurrency", 0, 0, G_OPTION_ARG_STRING, &c.concurrency, "Transfer bench: concurrent requests per transfer (default 64)", "N"},
		{"no-prefill-cache", 0, 0, G_OPTION_ARG_NONE, &c.no_prefill_cache, "No prefill prefix cache: every prompt token is computed", NULL},
		{"no-decode-cache", 0, 0, G_OPTION_ARG_NONE, &c.no_decode_cache, "No decode prefix cache: every block moves", NULL},
		{"kv-pool", 0, 0, G_OPTION_ARG_STRING, &c.kv_pool, "KV pool per node, GB (default 400)", "G"},
		{"tpot", 0, 0, G_OPTION_ARG_STRING, &c.tpot, "Decode time per output token, s (default 0.03)", "S"},
		{"out", 'o', 0, G_OPTION_ARG_FILENAME, &c.out, "Output directory (default sim-out)", "DIR"},
		{"events", 'e', 0, G_OPTION_ARG_NONE, &c.events, "Write events.jsonl (one line per transfer)", NULL},
		{"no-plots", 0, 0, G_OPTION_ARG_NONE, &c.no_plots, "Do not run gnuplot", NULL},
		{"seed", 's', 0, G_OPTION_ARG_STRING, &c.seed, "Seed for workload, policies and faults (default 1)", "N"},
		{"quiet", 'q', 0, G_OPTION_ARG_NONE, &c.quiet, "No progress lines", NULL},
		{NULL, 0, 0, 0, NULL, NULL, NULL},
	};
	GOptionContext *ctx = g_option_context_new("- simulate KV-cache transfers in a disaggregated LLM cluster");
	g_option_context_add_main_entries(ctx, entries, NULL);
	g_option_context_set_description(ctx,
		"Prefill and decode nodes of a P/D-disaggregated serving cluster run in SimGrid; every\n"
		"request's KV cache moves from its prefill node to its decode node through the kvbridge\n"
		"connector core (state machines, leases, slicing, NIC policies: the deployment code).\n"
		"Each NIC is a simulated host; flows share links by max-min fairness (CM02).\n\n"
		"Outputs in --out: requests.csv (per request), nics.csv (per NIC and sample), summary.txt,\n"
		"metrics.csv (the summary for scripts), "
		"events.jsonl (--events), and transfer_cdf, ttft, nic_util as PNG and SVG (gnuplot).\n\n"
		"Every value is checked: one out of range (--requests 0, --abort-prob 1.5, a NaN) or an\n"
		"unknown name stops the program with exit status 2 before anything runs.\n\n"
		"Examples:\n"
		"  kvbridge-sim                                    built-in workload, 16P+16D x 8 x 200G\n"
		"  kvbridge-sim -t conversation_trace.jsonl -m llama-3-70b --nics 4\n"
		"  kvbridge-sim --nic-policy random --abort-prob 0.05 --fault crash:decode:2@300\n"
		"  kvbridge-sim -P 2 -D 2 --nics 4 --requests 60 --rate 8 --no-plots   a small study, < 1 s\n"
		"  kvbridge-sim -c study.ini                       see docs/simulation.md\n");
	GError *err = NULL;
	kvb_study_params_t p;
	kvb_study_params_defaults(&p);
	run_opts_t r = {.format = KVB_WL_AUTO, .rate_mult = 1.0, .limit = 0, .concurrency = 64};
	kvb_wl_gen_defaults(&r.gen);
	r.gen.n_requests = 2000;
	int rc = 0;
	kvb_workload_t *wl = NULL;
	gchar *file_model = NULL;
	if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
		rc = fail("%s (try --help)", err->message);
		goto out;
	}
	if (argc > 1) {
		rc = fail("unexpected argument '%s' (try --help)", argv[1]);
		goto out;
	}
	if (c.list_models) {
		list_models();
		goto out;
	}

	if (c.config && !load_config(c.config, &p, &file_model, &err)) {
		rc = fail("%s", err->message);
		goto out;
	}
	/* command line over file */
	const char *model = c.model ? c.model : file_model;
	if (model && !(p.model = kvb_model_find(model))) {
		fprintf(stderr, "kvbridge-sim: unknown model '%s'; known presets:\n", model);
		list_models();
		rc = KVB_CLI_USAGE;
		goto out;
	}
	if (!apply_options(&c, &p, &r)) {
		rc = KVB_CLI_USAGE;
		goto out;
	}
	r.gen.seed = p.seed;
	for (gchar **f = c.faults; f && *f; f++) {
		p.faults = g_renew(kvb_study_fault_t, p.faults, p.n_faults + 1);
		if (!kvb_study_fault_parse(*f, &p.faults[p.n_faults], &err)) {
			rc = fail("%s", err->message);
			goto out;
		}
		p.n_faults++;
	}
	if (!p.platform_xml && !kvb_platform_desc_validate(&p.platform, &err)) {
		rc = fail("platform: %s", err->message);
		goto out;
	}
	kvb_err_t ke;
	if (kvb_config_validate(&p.conn, &ke) != KVB_OK) {
		rc = fail("connector: %s", ke.msg);
		goto out;
	}

	if (c.transfer_bench) {
		rc = run_transfer_bench(&p, &c, &r);
		goto out;
	}
	/* workload: a trace, or the built-in generator */
	if (c.trace) {
		if (!kvb_workload_load(c.trace, r.format, r.rate_mult, r.limit, &wl, &err)) {
			rc = fail("%s", err->message);
			goto out;
		}
	} else {
		if (r.limit && r.limit < r.gen.n_requests)
			r.gen.n_requests = r.limit;
		r.gen.rate_per_s *= r.rate_mult;
		if (!kvb_workload_generate(&r.gen, &wl, &err)) {
			rc = fail("%s", err->message);
			goto out;
		}
	}
	const char *out_dir = c.out ? c.out : "sim-out";
	p.out_dir = out_dir;
	p.events = c.events;
	p.progress = !c.quiet;
	if (!c.quiet) {
		kvb_wl_stats_t st;
		kvb_workload_stats(wl, &st);
		fprintf(stderr, "kvbridge-sim: %s: %" PRIu64 " requests over %.1f s, mean input %.0f tokens "
				"(%.2f GB of %s KV each)\n",
			kvb_workload_source(wl), st.count, st.duration_s, st.mean_input,
			st.mean_input * (double)kvb_model_kv_bytes_per_token(p.model) / 1e9, p.model->name);
	}
	kvb_study_result_t res;
	if (!kvb_study_run(&p, wl, &res, &err)) {
		rc = fail("%s", err->message);
		goto out;
	}
	char *summary = kvb_study_summary(&p, &res);
	printf("%s", summary);
	char *path = g_build_filename(out_dir, "summary.txt", NULL);
	g_file_set_contents(path, summary, -1, NULL);
	g_free(path);
	/* the same numbers for scripts: one header line, one value line */
	char *metrics = g_strdup_printf(
		"requests,done,failed,aborted,crashed,xfer_p50_ms,xfer_p90_ms,xfer_p99_ms,xfer_mean_ms,"
		"ttft_mean_s,ttft_p50_s,ttft_p99_s,ttft_share,block_s_held,block_s_leaked,leases_expired,"
		"stale_reads,nic_imbalance,bytes_moved,avg_rate_GBps,sim_end_s,wall_s,flows,flows_peak,rss_mib\n"
		"%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,"
		"%.6g,%.6g,%" PRIu64 ",%" PRIu64 ",%.6f,%.6g,%.6f,%.6f,%.3f,%" PRIu64 ",%" PRIu64 ",%.1f\n",
		res.requests, res.done, res.failed, res.aborted, res.crashed, res.xfer_p50_s * 1e3,
		res.xfer_p90_s * 1e3, res.xfer_p99_s * 1e3, res.xfer_mean_s * 1e3, res.ttft_mean_s,
		res.ttft_p50_s, res.ttft_p99_s, res.ttft_share_mean, res.block_seconds_held,
		res.block_seconds_leaked, res.leases_expired, res.stale_reads, res.nic_imbalance,
		res.bytes_moved, res.avg_rate_GBps, res.sim_end_s, res.wall_s, res.sim.flows_started,
		res.sim.flows_peak, (double)res.peak_rss_kb / 1024.0);
	path = g_build_filename(out_dir, "metrics.csv", NULL);
	g_file_set_contents(path, metrics, -1, NULL);
	g_free(path);
	g_free(metrics);
	g_free(summary);
	if (!c.no_plots)
		write_plots(out_dir, c.quiet);
	printf("  outputs                %s/{requests.csv,nics.csv,summary.txt,metrics.csv%s%s}\n", out_dir,
	       c.events ? ",events.jsonl" : "",
	       c.no_plots ? "" : ",transfer_cdf.png,ttft.png,nic_util.png,*.svg");
	rc = res.stale_reads ? 1 : 0;
out:
	kvb_workload_free(wl);
	kvb_study_params_clear(&p);
	g_clear_error(&err);
	g_free(file_model);
	kvb_cli_free_strings(entries);
	g_option_context_free(ctx);
	g_free(nic_policy_help);
	g_free(policies);
	return rc;
}
