/*
 * kvbridge-demo: move a realistic KV layout from a producer to a consumer
 * through the connector core and the in-process loop backend, verify every
 * byte, and print a summary.
 *
 * The producer and consumer are two connectors on one loop fabric (virtual
 * clock, NICs with a line rate), so the transfer times it prints are those
 * of the modelled NICs, not of this machine's memcpy.  Wall time and the
 * memcpy rate are printed separately.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/loop.h>

#include "kvb_cli.h"
#include "kvb_pattern.h"

#define PROG "kvbridge-demo"
#define TOKENS_MAX (1u << 24)     /* per request, as the simulator's workloads */
#define REQUESTS_MAX 65536
#define BLOCK_TOKENS_MAX 65536
#define NIC_GBPS_MAX 1e6
#define INTERVAL_MS_MAX 1e6

/* Numbers as typed (checked by demo_options) */
typedef struct demo_args {
	gchar *tokens, *requests, *block_tokens, *nics, *nic_gbps, *slice_size, *seed, *interval_ms;
} demo_args_t;

typedef struct demo_opts {
	gchar *model;
	gint tokens;
	gint requests;
	gint block_tokens;
	gint nics;
	gdouble nic_gbps;
	gchar *policy;
	uint64_t slice_size;      /* 0: the config's */
	uint64_t seed;
	bool seed_set;            /* false: the config's */
	gdouble interval_ms;
	gchar *config;
	gchar *events;
	gboolean list_models;
	gboolean quiet;
} demo_opts_t;

typedef struct side {
	kvb_backend_t *be;
	kvb_connector_t *conn;
	uint8_t *mem;
	size_t mem_len;
	kvb_region_t *regions;
} side_t;

typedef struct request {
	char tid[32], rid[32];
	uint32_t n_blocks;
	uint32_t *p_ids, *d_ids;
	uint64_t issue_ns;
	bool done;
	int status;
	uint64_t end_ns;
} request_t;

static int side_open(kvb_loop_fabric_t *fab, const char *name, kvb_role_t role, const kvb_config_t *base,
		     const kvb_loop_params_t *lp, const kvb_model_t *model, uint32_t block_tokens,
		     uint32_t num_blocks, side_t *s)
{
	kvb_err_t err;
	kvb_err_clear(&err);
	memset(s, 0, sizeof(*s));
	s->regions = g_new0(kvb_region_t, model->layers);
	uint64_t span = kvb_model_layout(model, 1, block_tokens, num_blocks, 0, s->regions, &err);
	if (!span) {
		fprintf(stderr, "kvbridge-demo: layout: %s\n", err.msg);
		return 1;
	}
	s->mem_len = span;
	s->mem = g_try_malloc(span);
	if (!s->mem) {
		fprintf(stderr, "kvbridge-demo: cannot allocate %.1f MiB for the %s KV cache\n",
			(double)span / 1048576.0, name);
		return 1;
	}
	memset(s->mem, 0xEE, span);
	for (uint32_t i = 0; i < model->layers; i++)
		s->regions[i].base += (uint64_t)(uintptr_t)s->mem;
	if (kvb_loop_open(fab, name, lp, &s->be, &err) != KVB_OK) {
		fprintf(stderr, "kvbridge-demo: %s\n", err.msg);
		return 1;
	}
	kvb_config_t cfg;
	kvb_config_init(&cfg);
	kvb_config_copy(&cfg, base);
	cfg.role = role;
	int rc = kvb_connector_new(&cfg, s->be, &s->conn, &err);
	kvb_config_clear(&cfg);
	if (rc == KVB_OK)
		rc = kvb_connector_register_layout(s->conn, s->regions, model->layers, &err);
	if (rc != KVB_OK) {
		fprintf(stderr, "kvbridge-demo: %s connector: %s\n", name, err.msg);
		return 1;
	}
	return 0;
}

static void side_close(side_t *s)
{
	kvb_connector_free(s->conn);
	kvb_backend_close(s->be);
	g_free(s->mem);
	g_free(s->regions);
}

static FILE *events_file;

static void on_record(const kvb_xfer_record_t *r, void *user)
{
	(void)user;
	if (!events_file)
		return;
	char line[2048];
	kvb_xfer_record_json(r, line, sizeof(line));
	fprintf(events_file, "%s\n", line);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static double percentile(uint64_t *v, size_t n, double p)
{
	if (!n)
		return 0;
	size_t i = (size_t)(p * (double)(n - 1) + 0.5);
	return (double)v[i];
}

static void list_models(void)
{
	printf("%-16s %7s %9s %9s %12s\n", "model", "layers", "kv_heads", "head_dim", "KiB/token");
	for (const kvb_model_t *m = kvb_model_presets(); m->name; m++)
		printf("%-16s %7u %9u %9u %12.1f\n", m->name, m->layers, m->kv_heads, m->head_dim,
		       (double)kvb_model_kv_bytes_per_token(m) / 1024.0);
}

static int demo_run(demo_opts_t *o);

/* Check every number against its range and the policy against the
 * registry's names; false when refused (the reason printed). */
static bool demo_options(const demo_args_t *a, demo_opts_t *o)
{
	if (!kvb_cli_parse_int(PROG, "--tokens", a->tokens, 1, TOKENS_MAX, &o->tokens) ||
	    !kvb_cli_parse_int(PROG, "--requests", a->requests, 1, REQUESTS_MAX, &o->requests) ||
	    !kvb_cli_parse_int(PROG, "--block-tokens", a->block_tokens, 1, BLOCK_TOKENS_MAX, &o->block_tokens) ||
	    !kvb_cli_parse_int(PROG, "--nics", a->nics, 1, KVB_MAX_NICS, &o->nics) ||
	    !kvb_cli_parse_double(PROG, "--nic-gbps", a->nic_gbps, 0, NIC_GBPS_MAX, KVB_CLI_ABOVE_MIN, &o->nic_gbps) ||
	    !kvb_cli_parse_uint64(PROG, "--slice-size", a->slice_size, KVB_SLICE_SIZE_MIN, KVB_SLICE_SIZE_MAX,
				  &o->slice_size) ||
	    !kvb_cli_parse_uint64(PROG, "--seed", a->seed, 0, UINT64_MAX, &o->seed) ||
	    !kvb_cli_parse_double(PROG, "--interval-ms", a->interval_ms, 0, INTERVAL_MS_MAX, 0, &o->interval_ms))
		return false;
	o->seed_set = a->seed != NULL;
	if (o->policy && !kvb_nic_policy_find(o->policy))
		return kvb_cli_bad_choice(PROG, "--policy", o->policy, kvb_nic_policy_names());
	/* the block ids of all requests are uint32_t */
	uint64_t blocks = (uint64_t)((o->tokens + o->block_tokens - 1) / o->block_tokens) * (uint64_t)o->requests;
	if (blocks > UINT32_MAX) {
		fprintf(stderr, PROG ": --tokens %d --block-tokens %d --requests %d: %" G_GUINT64_FORMAT
			" blocks, more than %u\n", o->tokens, o->block_tokens, o->requests, blocks, UINT32_MAX);
		return false;
	}
	return true;
}

int main(int argc, char **argv)
{
	demo_opts_t o = {
		.model = NULL, /* GOption does not free a default it replaces */
		.tokens = 2048,
		.requests = 8,
		.block_tokens = 16,
		.nics = 2,
		.nic_gbps = 200,
		.policy = NULL,
		.slice_size = 0,
		.interval_ms = 1.0,
	};
	demo_args_t a = {0};
	char *policies = kvb_cli_choices(kvb_nic_policy_names());
	char *policy_help = g_strdup_printf("NIC policy: %s (default: the config's, round_robin)", policies);
	GOptionEntry entries[] = {
		{"model", 'm', 0, G_OPTION_ARG_STRING, &o.model, "Model preset (default qwen2.5-0.5b; see --list-models)", "NAME"},
		{"list-models", 0, 0, G_OPTION_ARG_NONE, &o.list_models, "List model presets and exit", NULL},
		{"tokens", 't', 0, G_OPTION_ARG_STRING, &a.tokens, "Prompt tokens per request (default 2048)", "N"},
		{"requests", 'n', 0, G_OPTION_ARG_STRING, &a.requests, "Requests (default 8)", "N"},
		{"block-tokens", 0, 0, G_OPTION_ARG_STRING, &a.block_tokens, "Tokens per KV block (default 16)", "N"},
		{"nics", 0, 0, G_OPTION_ARG_STRING, &a.nics, "NICs per side, 1 to 64 (default 2)", "N"},
		{"nic-gbps", 0, 0, G_OPTION_ARG_STRING, &a.nic_gbps, "Line rate of each modelled NIC in Gb/s (default 200)", "GBPS"},
		{"policy", 'p', 0, G_OPTION_ARG_STRING, &o.policy, policy_help, "NAME"},
		{"slice-size", 0, 0, G_OPTION_ARG_STRING, &a.slice_size, "Slice bytes, 4096 to 1 GiB (default: the config's, 65536; the fragment limit becomes a quarter of it)", "BYTES"},
		{"seed", 's', 0, G_OPTION_ARG_STRING, &a.seed, "Seed for data and policies (default: the config's, 1)", "N"},
		{"interval-ms", 0, 0, G_OPTION_ARG_STRING, &a.interval_ms, "Gap between request arrivals, ms, 0 or more (default 1)", "MS"},
		{"config", 'c', 0, G_OPTION_ARG_FILENAME, &o.config, "Connector configuration file (GKeyFile)", "FILE"},
		{"events", 'e', 0, G_OPTION_ARG_FILENAME, &o.events, "Write one JSON line per transfer to FILE", "FILE"},
		{"quiet", 'q', 0, G_OPTION_ARG_NONE, &o.quiet, "Print only the summary", NULL},
		{NULL, 0, 0, 0, NULL, NULL, NULL},
	};
	GOptionContext *ctx = g_option_context_new("- move a KV cache producer -> consumer and verify it");
	g_option_context_add_main_entries(ctx, entries, NULL);
	g_option_context_set_description(ctx,
		"Two kvbridge connectors (kv_producer and kv_consumer) on the in-process loop backend\n"
		"move the KV blocks of N requests of a real model's shape, striped over modelled NICs,\n"
		"then every byte is compared.  Times are virtual (the NIC model), except 'wall'.\n\n"
		"A value out of range or an unknown name stops it with exit status 2 before it runs.\n\n"
		"Example: kvbridge-demo --model llama-3-8b --tokens 4096 --requests 4 --nics 4\n");
	GError *gerr = NULL;
	int rc = KVB_CLI_USAGE;
	if (!g_option_context_parse(ctx, &argc, &argv, &gerr)) {
		fprintf(stderr, "kvbridge-demo: %s (try --help)\n", gerr->message);
		g_error_free(gerr);
	} else if (argc > 1) {
		fprintf(stderr, "kvbridge-demo: unexpected argument '%s' (try --help)\n", argv[1]);
	} else if (demo_options(&a, &o)) {
		rc = demo_run(&o);
	}
	g_option_context_free(ctx);
	kvb_cli_free_strings(entries);
	g_free(policy_help);
	g_free(policies);
	return rc;
}

/* Everything after option parsing; returns the exit status (0 ok, 1 failed
 * transfer or setup, 2 usage). */
static int demo_run(demo_opts_t *o)
{
	if (o->list_models) {
		list_models();
		return 0;
	}
	const char *model_name = o->model ? o->model : "qwen2.5-0.5b";
	const kvb_model_t *model = kvb_model_find(model_name);
	if (!model) {
		fprintf(stderr, "kvbridge-demo: unknown model '%s'; known presets:\n", model_name);
		list_models();
		return 2;
	}
	kvb_config_t cfg;
	kvb_config_init(&cfg);
	GError *gerr = NULL;
	if ((o->config && !kvb_config_load_file(&cfg, o->config, &gerr)) ||
	    !kvb_config_apply_env(&cfg, NULL, &gerr)) {
		fprintf(stderr, "kvbridge-demo: %s\n", gerr->message);
		g_error_free(gerr);
		kvb_config_clear(&cfg);
		return 2;
	}
	if (o->policy)
		g_strlcpy(cfg.nic_policy, o->policy, sizeof(cfg.nic_policy));
	if (o->slice_size) {
		cfg.slice_size = o->slice_size;
		cfg.fragment_limit = cfg.slice_size / 4;
	}
	if (o->seed_set)
		cfg.seed = o->seed;
	kvb_err_t err;
	if (kvb_config_validate(&cfg, &err) != KVB_OK) {
		fprintf(stderr, "kvbridge-demo: %s\n", err.msg);
		kvb_config_clear(&cfg);
		return 2;
	}
	if (o->events) {
		events_file = fopen(o->events, "w");
		if (!events_file) {
			fprintf(stderr, "kvbridge-demo: cannot write %s: %s\n", o->events, g_strerror(errno));
			kvb_config_clear(&cfg);
			return 2;
		}
	}
	int status = 1;
	side_t prod = {0}, cons = {0};
	request_t *reqs = NULL;
	uint32_t *perm = NULL;
	uint64_t *lat = NULL;
	GRand *rng = NULL;

	uint32_t per_req = (uint32_t)((o->tokens + o->block_tokens - 1) / o->block_tokens);
	uint32_t num_blocks = per_req * (uint32_t)o->requests;
	kvb_loop_params_t lp;
	kvb_loop_params_default(&lp);
	lp.n_nics = (uint32_t)o->nics;
	lp.nic_bandwidth_Bps = (uint64_t)(o->nic_gbps * 1e9 / 8);
	kvb_loop_fabric_t *fab = kvb_loop_fabric_new(cfg.seed);
	if (side_open(fab, "prefill-0", KVB_ROLE_PRODUCER, &cfg, &lp, model, (uint32_t)o->block_tokens,
		      num_blocks, &prod) ||
	    side_open(fab, "decode-0", KVB_ROLE_CONSUMER, &cfg, &lp, model, (uint32_t)o->block_tokens,
		      num_blocks, &cons))
		goto out;
	kvb_connector_set_record_fn(prod.conn, on_record, NULL);
	kvb_connector_set_record_fn(cons.conn, on_record, NULL);

	uint64_t block_bytes = prod.regions[0].block_bytes;
	uint64_t req_bytes = (uint64_t)per_req * block_bytes * model->layers;
	if (!o->quiet) {
		printf("kvbridge-demo: %s, %u layers x %u KV heads x %u, %.1f KiB/token\n", model->name,
		       model->layers, model->kv_heads, model->head_dim,
		       (double)kvb_model_kv_bytes_per_token(model) / 1024.0);
		printf("  %d requests x %d tokens = %u blocks of %u tokens (%.1f KiB per block per layer), "
		       "%.2f MiB per request\n", o->requests, o->tokens, per_req, o->block_tokens,
		       (double)block_bytes / 1024.0, (double)req_bytes / 1048576.0);
		printf("  %d NICs x %.0f Gb/s per side, policy %s, %" G_GUINT64_FORMAT " B slices\n", o->nics,
		       o->nic_gbps, cfg.nic_policy, cfg.slice_size);
	}

	/* Blocks: the producer's in order, the consumer's in a seeded shuffle of
	 * runs of 4 (a free list after some churn), so the copy plan coalesces
	 * some runs and breaks others. */
	rng = g_rand_new_with_seed((guint32)cfg.seed);
	uint32_t n_runs = (num_blocks + 3) / 4;
	uint32_t *runs = g_new(uint32_t, n_runs);
	for (uint32_t i = 0; i < n_runs; i++)
		runs[i] = i;
	for (uint32_t i = n_runs; i > 1; i--) {
		uint32_t j = (uint32_t)g_rand_int_range(rng, 0, (gint32)i);
		uint32_t t = runs[i - 1];
		runs[i - 1] = runs[j];
		runs[j] = t;
	}
	perm = g_new(uint32_t, num_blocks);
	uint32_t at = 0;
	for (uint32_t i = 0; i < n_runs; i++)
		for (uint32_t k = 0; k < 4 && runs[i] * 4 + k < num_blocks; k++)
			perm[at++] = runs[i] * 4 + k;
	g_free(runs);
	reqs = g_new0(request_t, (gsize)o->requests);
	for (int r = 0; r < o->requests; r++) {
		request_t *q = &reqs[r];
		snprintf(q->tid, sizeof(q->tid), "xfer-%d", r);
		snprintf(q->rid, sizeof(q->rid), "req-%d", r);
		q->n_blocks = per_req;
		q->p_ids = g_new(uint32_t, per_req);
		q->d_ids = g_new(uint32_t, per_req);
		for (uint32_t k = 0; k < per_req; k++) {
			q->p_ids[k] = (uint32_t)r * per_req + k;
			q->d_ids[k] = perm[(uint32_t)r * per_req + k];
			for (uint32_t l = 0; l < model->layers; l++)
				kvb_pattern_fill((uint8_t *)(uintptr_t)(prod.regions[l].base +
								  (uint64_t)q->p_ids[k] * prod.regions[l].block_stride),
					   block_bytes, kvb_pattern_mix(cfg.seed ^ ((uint64_t)r << 40) ^ ((uint64_t)l << 20) ^ k));
		}
	}

	gint64 wall0 = g_get_monotonic_time();
	kvb_connector_t *conns[2] = {prod.conn, cons.conn};
	const char *producer_addr = "prefill-0";
	int issued = 0, finished = 0;
	uint64_t interval = (uint64_t)(o->interval_ms * 1e6);
	while (finished < o->requests) {
		uint64_t now = kvb_loop_fabric_now(fab);
		while (issued < o->requests && now >= (uint64_t)issued * interval) {
			request_t *q = &reqs[issued];
			kvb_block_list_t pl = {q->p_ids, q->n_blocks}, dl = {q->d_ids, q->n_blocks};
			kvb_pull_params_t pp = {q->rid, q->tid, &producer_addr, 1, 0, &dl, 1};
			if (kvb_producer_begin(prod.conn, q->tid, &err) != KVB_OK ||
			    kvb_producer_ready(prod.conn, q->tid, &pl, 1, &err) != KVB_OK ||
			    kvb_consumer_pull(cons.conn, &pp, &err) != KVB_OK) {
				fprintf(stderr, "kvbridge-demo: request %d: %s\n", issued, err.msg);
				goto out;
			}
			q->issue_ns = now;
			issued++;
		}
		uint64_t until = issued < o->requests ? (uint64_t)issued * interval - now : 0;
		int rc = kvb_loop_drive(fab, conns, 2, NULL, NULL, until);
		if (rc < 0 && rc != KVB_ERR_TIMEOUT) {
			fprintf(stderr, "kvbridge-demo: drive: %s\n", kvb_strerror(rc));
			goto out;
		}
		kvb_finished_t f[16];
		int n;
		while ((n = kvb_connector_poll_finished(cons.conn, f, 16)) > 0) {
			for (int i = 0; i < n; i++) {
				int r = atoi(f[i].id + 4);
				reqs[r].done = true;
				reqs[r].status = f[i].status;
				reqs[r].end_ns = f[i].end_ns;
				finished++;
				if (f[i].status != KVB_OK)
					fprintf(stderr, "kvbridge-demo: %s failed: %s\n", f[i].id, f[i].reason);
				if (!o->quiet && (finished % (o->requests / 4 ? o->requests / 4 : 1) == 0 ||
						 finished == o->requests))
					fprintf(stderr, "  %d/%d requests done\n", finished, o->requests);
			}
		}
		while (kvb_connector_poll_finished(prod.conn, f, 16) > 0)
			;
		if (rc == KVB_OK && issued < o->requests) /* idle until the next arrival */
			kvb_loop_fabric_advance_to(fab, (uint64_t)issued * interval);
		if (rc == KVB_OK && issued == o->requests && finished < o->requests) {
			fprintf(stderr, "kvbridge-demo: the fabric ran dry with %d requests unfinished\n",
				o->requests - finished);
			goto out;
		}
	}
	double wall_s = (double)(g_get_monotonic_time() - wall0) / 1e6;

	/* verify every byte of every request */
	uint64_t verified = 0, mismatched = 0;
	int failed = 0;
	lat = g_new(uint64_t, (gsize)o->requests);
	for (int r = 0; r < o->requests; r++) {
		request_t *q = &reqs[r];
		failed += q->status != KVB_OK;
		lat[r] = q->end_ns - q->issue_ns;
		for (uint32_t k = 0; k < q->n_blocks; k++)
			for (uint32_t l = 0; l < model->layers; l++) {
				const uint8_t *a = (const uint8_t *)(uintptr_t)(prod.regions[l].base +
						(uint64_t)q->p_ids[k] * prod.regions[l].block_stride);
				const uint8_t *b = (const uint8_t *)(uintptr_t)(cons.regions[l].base +
						(uint64_t)q->d_ids[k] * cons.regions[l].block_stride);
				if (memcmp(a, b, block_bytes) == 0)
					verified += block_bytes;
				else
					mismatched += block_bytes;
			}
	}
	qsort(lat, (size_t)o->requests, sizeof(uint64_t), cmp_u64);
	kvb_counters_t pc, cc;
	kvb_connector_counters(prod.conn, &pc);
	kvb_connector_counters(cons.conn, &cc);
	uint64_t total = req_bytes * (uint64_t)o->requests;
	double span_s = (double)kvb_loop_fabric_now(fab) / 1e9;
	double line_GBps = (double)o->nics * o->nic_gbps / 8.0;
	printf("\nsummary\n");
	printf("  requests            %d done, %d failed\n", o->requests - failed, failed);
	printf("  bytes moved         %.2f MiB in %" G_GUINT64_FORMAT " slices (%" G_GUINT64_FORMAT " retried)\n",
	       (double)pc.bytes_sent / 1048576.0, pc.slices_posted, pc.slices_retried);
	printf("  transfer time       p50 %.3f ms, p99 %.3f ms (virtual, issue to done)\n",
	       percentile(lat, (size_t)o->requests, 0.5) / 1e6, percentile(lat, (size_t)o->requests, 0.99) / 1e6);
	double p50 = percentile(lat, (size_t)o->requests, 0.5);
	printf("  per-request rate    %.2f GB/s at p50 (%.2f MiB / p50; line rate %.1f GB/s)\n",
	       p50 > 0 ? (double)req_bytes / p50 : 0.0, (double)req_bytes / 1048576.0, line_GBps);
	printf("  virtual span        %.3f ms for all requests (arrivals every %.3f ms)\n", span_s * 1e3,
	       o->interval_ms);
	printf("  wall                %.3f s (%.2f GB/s of real memcpy and bookkeeping)\n", wall_s,
	       wall_s > 0 ? (double)pc.bytes_sent / wall_s / 1e9 : 0.0);
	printf("  blocks held at end  producer %" G_GUINT64_FORMAT ", consumer %" G_GUINT64_FORMAT "\n",
	       pc.blocks_held, cc.blocks_held);
	printf("  verified            %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT " bytes, %" G_GUINT64_FORMAT
	       " mismatched\n", verified, total, mismatched);
	if (o->events)
		printf("  events              %s\n", o->events);
	bool ok = failed == 0 && mismatched == 0 && verified == total && pc.blocks_held == 0 &&
		  cc.blocks_held == 0;
	printf("  result              %s\n", ok ? "OK" : "FAILED");

	status = ok ? 0 : 1;
out:
	for (int r = 0; reqs && r < o->requests; r++) {
		g_free(reqs[r].p_ids);
		g_free(reqs[r].d_ids);
	}
	g_free(reqs);
	g_free(perm);
	g_free(lat);
	if (rng)
		g_rand_free(rng);
	side_close(&prod);
	side_close(&cons);
	kvb_loop_fabric_free(fab);
	kvb_config_clear(&cfg);
	if (events_file)
		fclose(events_file);
	events_file = NULL;
	return status;
}
