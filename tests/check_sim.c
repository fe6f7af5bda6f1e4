/*
 * Validation of the sim backend, asserting simulated times:
 *  - one transfer takes size / rate + latency (within 0.1%);
 *  - N transfers sharing one NIC take N times as long;
 *  - striping over k NICs gives k times the rate (within 1%);
 *  - a lease expires at exactly the configured time;
 *  - the merged flow model gives the same completion times as one flow
 *    per slice, with far fewer flows;
 *  - NIC failure mid-transfer: slices retried on the other NIC;
 *  - a crashed consumer: the producer frees at lease expiry.
 * SimGrid runs once per process, so every simulation runs in a child
 * process (sim_fork) that sends its results back through a pipe.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <check.h>
#include <glib.h>
#include <simgrid/actor.h>
#include <simgrid/engine.h>
#include <simgrid/host.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/sim.h>

#include "../src/backends/sim/kvb_platform.h"
#include "suites.h"

#define MAX_XFERS 16

/* One transfer of a scenario. */
typedef struct xfer {
	double ready_at;      /* producer ready */
	double pull_at;       /* consumer pull */
	uint64_t bytes;
	bool no_pull;         /* never pulled (lease test) */
} xfer_t;

typedef struct scenario {
	uint32_t nics;
	double nic_gbps;
	double latency_us;
	kvb_sim_flow_model_t model;
	const char *policy;
	double lease_s;
	uint32_t n;
	xfer_t x[MAX_XFERS];
	double nic_down_at;   /* producer NIC 0 down at this time (< 0: never) */
	double kill_consumer_at;
} scenario_t;

/* What a child reports. */
typedef struct outcome {
	double end[MAX_XFERS];     /* producer record end (s), -1 if none */
	double post[MAX_XFERS];
	int state[MAX_XFERS];      /* producer terminal state */
	double fin[MAX_XFERS];     /* producer finished time */
	uint64_t bytes[MAX_XFERS];
	uint64_t flows;
	uint64_t retried;
	int rc;
} outcome_t;

static scenario_t *SC;
static outcome_t *OUT;
static kvb_backend_t *PB, *DB;
static kvb_connector_t *PC, *DC;
static bool consumer_dead;

static void on_rec(const kvb_xfer_record_t *r, void *user)
{
	(void)user;
	if (r->role != KVB_ROLE_PRODUCER || r->status != KVB_OK)
		return;
	int i = atoi(r->transfer_id + 1);
	OUT->end[i] = (double)r->end_ns / 1e9;
	OUT->post[i] = (double)r->post_ns / 1e9;
	OUT->bytes[i] = r->bytes;
}

static double next_time(bool producer, const bool *done)
{
	double t = -1;
	for (uint32_t i = 0; i < SC->n; i++) {
		double at = producer ? SC->x[i].ready_at : SC->x[i].pull_at;
		if (!done[i] && (!producer ? !SC->x[i].no_pull : true) && (t < 0 || at < t))
			t = at;
	}
	return t;
}

static void drive(bool producer)
{
	kvb_backend_t *be = producer ? PB : DB;
	kvb_connector_t *c = producer ? PC : DC;
	bool done[MAX_XFERS] = {0};
	uint32_t finished = 0, expected = 0;
	for (uint32_t i = 0; i < SC->n; i++)
		expected += producer || !SC->x[i].no_pull;
	while (finished < expected) {
		if (!producer && consumer_dead)
			return;
		double now = simgrid_get_clock();
		for (uint32_t i = 0; i < SC->n; i++) {
			char tid[16], rid[16];
			snprintf(tid, sizeof(tid), "x%u", i);
			snprintf(rid, sizeof(rid), "r%u", i);
			/* transfer i is block 0 of group i (its own region) */
			uint32_t id = 0;
			kvb_block_list_t l[MAX_XFERS];
			memset(l, 0, sizeof(l));
			l[i] = (kvb_block_list_t){&id, 1};
			if (producer && !done[i] && SC->x[i].ready_at <= now) {
				done[i] = true;
				ck_assert_int_eq(kvb_producer_begin(c, tid, NULL), KVB_OK);
				ck_assert_int_eq(kvb_producer_ready(c, tid, l, SC->n, NULL), KVB_OK);
			}
			if (!producer && !done[i] && !SC->x[i].no_pull && SC->x[i].pull_at <= now) {
				done[i] = true;
				const char *a = "P";
				kvb_pull_params_t pp = {rid, tid, &a, 1, 0, l, SC->n};
				ck_assert_int_eq(kvb_consumer_pull(c, &pp, NULL), KVB_OK);
			}
		}
		while (kvb_connector_progress(c) > 0)
			;
		kvb_finished_t f;
		while (kvb_connector_poll_finished(c, &f, 1) == 1) {
			int i = atoi(f.id + 1);
			if (producer) {
				OUT->state[i] = f.state;
				OUT->fin[i] = simgrid_get_clock();
			}
			finished++;
		}
		if (finished >= expected)
			break;
		if (kvb_sim_wait(be, next_time(producer, done)) < 0)
			return;
	}
}

static kvb_sim_world_t *W;
static int alive;

/* The last worker to end stops the listeners so the simulation ends. */
static void worker_end(void)
{
	if (--alive == 0)
		kvb_sim_world_shutdown(W);
}

static void producer_main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	drive(true);
	worker_end();
}

static void consumer_main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	drive(false);
	worker_end();
}

static void faults_main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	kvb_sim_world_t *w = sg_actor_self_get_data();
	sg_actor_daemonize(sg_actor_self());
	if (SC->nic_down_at >= 0) {
		sg_actor_sleep_until(SC->nic_down_at);
		kvb_sim_nic_set_up(w, sg_host_by_name("p0-nic0"), false);
	}
	if (SC->kill_consumer_at >= 0) {
		sg_actor_sleep_until(SC->kill_consumer_at);
		consumer_dead = true;
		kvb_sim_kill(DB);
	}
}

/* One simulation of sc in this (child) process. */
static void simulate(const scenario_t *sc, outcome_t *out)
{
	SC = (scenario_t *)sc;
	OUT = out;
	for (int i = 0; i < MAX_XFERS; i++)
		out->end[i] = out->post[i] = out->fin[i] = -1;
	char *argv0[] = {"check_sim", "--log=root.thres:critical", NULL};
	int argc0 = 2;
	simgrid_init(&argc0, argv0);
	kvb_platform_desc_t d;
	kvb_platform_desc_defaults(&d);
	d.prefill_nodes = d.decode_nodes = 1;
	d.nics_per_node = sc->nics;
	d.gpus_per_node = 1;
	d.nic_gbps = sc->nic_gbps;
	d.latency_us = sc->latency_us;
	d.zero_link_latency = true;
	char path[] = "/tmp/kvb-sim-XXXXXX.xml";
	int fd = mkstemps(path, 4);
	ck_assert_int_ge(fd, 0);
	close(fd);
	GError *err = NULL;
	ck_assert_msg(kvb_platform_write(&d, path, &err), "%s", err ? err->message : "");
	simgrid_load_platform(path);
	unlink(path);
	kvb_platform_map_t *map;
	ck_assert_msg(kvb_platform_map_build("test", &map, &err), "%s", err ? err->message : "");
	kvb_sim_world_params_t wp = {sc->model, kvb_platform_route_latency_s(&d), d.nic_gbps * 1e9};
	kvb_sim_world_t *w = kvb_sim_world_new(&wp);
	W = w;
	alive = 2;
	sg_host_t pn[KVB_MAX_NICS], dn[KVB_MAX_NICS];
	for (uint32_t k = 0; k < sc->nics; k++) {
		pn[k] = kvb_platform_map_host(map, KVB_PLATFORM_PREFILL, 0, k);
		dn[k] = kvb_platform_map_host(map, KVB_PLATFORM_DECODE, 0, k);
	}
	kvb_sim_args_t pa = {w, "P", pn, sc->nics, 1}, da = {w, "D", dn, sc->nics, 2};
	kvb_err_t e;
	ck_assert_int_eq(kvb_backend_open(kvb_sim_backend_ops(), &pa, &PB, &e), KVB_OK);
	ck_assert_int_eq(kvb_backend_open(kvb_sim_backend_ops(), &da, &DB, &e), KVB_OK);
	kvb_config_t cfg;
	kvb_config_init(&cfg);
	cfg.nic_queue_depth = 1u << 20;
	cfg.abort_timeout_ns = (uint64_t)(sc->lease_s * 1e9);
	cfg.consumer_timeout_ns = (uint64_t)(sc->lease_s * 2e9);
	if (sc->policy)
		g_strlcpy(cfg.nic_policy, sc->policy, sizeof(cfg.nic_policy));
	ck_assert_int_eq(kvb_connector_new(&cfg, PB, &PC, &e), KVB_OK);
	ck_assert_int_eq(kvb_connector_new(&cfg, DB, &DC, &e), KVB_OK);
	kvb_connector_set_record_fn(PC, on_rec, NULL);
	/* transfer i moves the one block of region i (group i), whose size is
	 * the transfer's (the simulator moves no bytes) */
	kvb_region_t pr[MAX_XFERS], dr[MAX_XFERS];
	for (uint32_t i = 0; i < sc->n; i++) {
		pr[i] = (kvb_region_t){0x100000000000ull + (uint64_t)i * (1ull << 36), sc->x[i].bytes,
				       sc->x[i].bytes, 1, 0, (int32_t)i, KVB_MEM_HOST, -1};
		dr[i] = pr[i];
		dr[i].base += 1ull << 44;
	}
	ck_assert_int_eq(kvb_connector_register_layout(PC, pr, sc->n, &e), KVB_OK);
	ck_assert_int_eq(kvb_connector_register_layout(DC, dr, sc->n, &e), KVB_OK);
	sg_actor_t a = sg_actor_init("producer", pn[0]);
	sg_actor_start(a, producer_main, 0, NULL);
	a = sg_actor_init("consumer", dn[0]);
	sg_actor_start(a, consumer_main, 0, NULL);
	a = sg_actor_init("faults", pn[0]);
	sg_actor_set_data(a, w);
	sg_actor_start(a, faults_main, 0, NULL);
	simgrid_run();
	kvb_sim_stats_t st;
	kvb_sim_world_stats(w, &st);
	out->flows = st.flows_started;
	kvb_counters_t pc;
	kvb_connector_counters(PC, &pc);
	out->retried = pc.slices_retried;
	kvb_connector_free(PC);
	kvb_connector_free(DC);
	kvb_backend_close(PB);
	kvb_backend_close(DB);
	kvb_sim_world_free(w);
	kvb_platform_map_free(map);
	kvb_config_clear(&cfg);
}

/* Run simulate() in a child; the parent gets the outcome. */
static void sim_fork(const scenario_t *sc, outcome_t *out)
{
	int fds[2];
	ck_assert_int_eq(pipe(fds), 0);
	fflush(NULL);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(fds[0]);
		outcome_t o;
		memset(&o, 0, sizeof(o));
		simulate(sc, &o);
		ssize_t n = write(fds[1], &o, sizeof(o));
		_exit(n == (ssize_t)sizeof(o) ? 0 : 3);
	}
	close(fds[1]);
	memset(out, 0, sizeof(*out));
	ssize_t got = read(fds[0], out, sizeof(*out));
	close(fds[0]);
	int status = 0;
	waitpid(pid, &status, 0);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0 && got == (ssize_t)sizeof(*out),
		      "simulation child failed (status %d, %zd bytes)", status, got);
}

static void scenario_init(scenario_t *sc, uint32_t nics, double gbps)
{
	memset(sc, 0, sizeof(*sc));
	sc->nics = nics;
	sc->nic_gbps = gbps;
	sc->latency_us = 2;
	sc->model = KVB_SIM_FLOWS_MERGED;
	sc->policy = "round_robin";
	sc->lease_s = 60;
	sc->nic_down_at = -1;
	sc->kill_consumer_at = -1;
}

static void add(scenario_t *sc, double ready, double pull, uint64_t bytes)
{
	sc->x[sc->n++] = (xfer_t){ready, pull, bytes, false};
}

/* size / rate + latency within 0.1% */
START_TEST(test_one_transfer_time)
{
	scenario_t sc;
	scenario_init(&sc, 1, 100);
	add(&sc, 0, 0.001, 1000000000ull);
	outcome_t o;
	sim_fork(&sc, &o);
	double dur = o.end[0] - o.post[0];
	double want = 1e9 / 12.5e9 + 2e-6;
	ck_assert_msg(fabs(dur - want) / want < 0.001, "took %.9f s, expected %.9f s", dur, want);
	ck_assert_uint_eq(o.bytes[0], 1000000000ull);
	ck_assert_int_eq(o.state[0], KVB_PRODUCER_SENT);
	ck_assert_uint_eq(o.flows, 1);
}
END_TEST

/* N transfers sharing one NIC each take N times as long */
START_TEST(test_nic_sharing)
{
	for (uint32_t n = 1; n <= 4; n *= 2) {
		scenario_t sc;
		scenario_init(&sc, 1, 100);
		for (uint32_t i = 0; i < n; i++)
			add(&sc, 0, 0.001, 250000000ull);
		outcome_t o;
		sim_fork(&sc, &o);
		double want = n * 250e6 / 12.5e9 + 2e-6;
		for (uint32_t i = 0; i < n; i++) {
			double dur = o.end[i] - o.post[i];
			ck_assert_msg(fabs(dur - want) / want < 0.001, "%u sharing: transfer %u took %.9f s, expected %.9f",
				      n, i, dur, want);
		}
	}
}
END_TEST

/* striping over k NICs: k times the rate within 1% */
START_TEST(test_striping)
{
	double t1 = 0;
	for (uint32_t k = 1; k <= 8; k *= 2) {
		scenario_t sc;
		scenario_init(&sc, k, 200);
		add(&sc, 0, 0.001, 4000000000ull);
		outcome_t o;
		sim_fork(&sc, &o);
		double dur = o.end[0] - o.post[0];
		if (k == 1)
			t1 = dur;
		double speedup = t1 / dur;
		ck_assert_msg(fabs(speedup - k) / k < 0.01, "%u NICs: speedup %.4f", k, speedup);
	}
}
END_TEST

/* a lease expires at exactly ready + lease */
START_TEST(test_lease_exact)
{
	scenario_t sc;
	scenario_init(&sc, 2, 200);
	sc.lease_s = 7.25;
	sc.x[0] = (xfer_t){1.5, 0, 1000000, true};
	sc.n = 1;
	outcome_t o;
	sim_fork(&sc, &o);
	ck_assert_int_eq(o.state[0], KVB_PRODUCER_EXPIRED);
	ck_assert_msg(fabs(o.fin[0] - (1.5 + 7.25)) < 1e-9, "expired at %.12f", o.fin[0]);
}
END_TEST

/* merged flows == one flow per slice, on cases with overlapping transfers
 * of different sizes, start times and NIC policies */
START_TEST(test_merged_equals_per_slice)
{
	static const char *policies[] = {"round_robin", "least_loaded", "random"};
	for (int c = 0; c < 6; c++) {
		scenario_t sc;
		scenario_init(&sc, 1 + (uint32_t)(c % 3), 100);
		sc.policy = policies[c % 3];
		add(&sc, 0.0, 0.0005, 64ull << 20);
		add(&sc, 0.001, 0.0002, (200ull << 20) + 12345);
		add(&sc, 0.003, 0.004, 32ull << 20);
		if (c >= 3)
			add(&sc, 0.0035, 0.0001, 500ull << 20);
		outcome_t merged, naive;
		sim_fork(&sc, &merged);
		sc.model = KVB_SIM_FLOWS_PER_SLICE;
		sim_fork(&sc, &naive);
		for (uint32_t i = 0; i < sc.n; i++) {
			ck_assert_msg(merged.end[i] > 0 && naive.end[i] > 0, "case %d transfer %u did not finish", c, i);
			ck_assert_msg(fabs(merged.end[i] - naive.end[i]) < 1e-9,
				      "case %d (%s, %u NICs) transfer %u: merged %.12f per-slice %.12f", c,
				      sc.policy, sc.nics, i, merged.end[i], naive.end[i]);
		}
		ck_assert_msg(naive.flows > 50 * merged.flows, "case %d: %lu vs %lu flows", c,
			      (unsigned long)naive.flows, (unsigned long)merged.flows);
	}
}
END_TEST

/* NIC 0 of the producer fails mid-transfer: its slices are retried on NIC 1 */
START_TEST(test_nic_failure_retry)
{
	scenario_t sc;
	scenario_init(&sc, 2, 100);
	add(&sc, 0, 0.001, 2000000000ull);
	sc.nic_down_at = 0.03;
	outcome_t o;
	sim_fork(&sc, &o);
	ck_assert_int_eq(o.state[0], KVB_PRODUCER_SENT);
	ck_assert_uint_eq(o.bytes[0], 2000000000ull);
	ck_assert_uint_gt(o.retried, 0);
	/* 1 GB per NIC at 12.5 GB/s: NIC 0 dies at 30 ms, its ~1 GB restarts on NIC 1 */
	ck_assert_msg(o.end[0] > 0.15, "ended at %.6f", o.end[0]);
}
END_TEST

/* the consumer crashes mid-transfer: the producer ends the send and frees
 * the blocks at lease expiry */
START_TEST(test_consumer_crash_lease)
{
	scenario_t sc;
	scenario_init(&sc, 2, 100);
	sc.lease_s = 3;
	add(&sc, 0, 0.001, 4000000000ull);
	sc.kill_consumer_at = 0.05;
	outcome_t o;
	sim_fork(&sc, &o);
	ck_assert_int_eq(o.state[0], KVB_PRODUCER_EXPIRED);
	ck_assert_msg(fabs(o.fin[0] - 3.0) < 1e-6, "freed at %.9f", o.fin[0]);
}
END_TEST

Suite *kvb_suite_sim(void)
{
	Suite *s = suite_create("sim");
	TCase *tc = tcase_create("validation");
	tcase_add_test(tc, test_one_transfer_time);
	tcase_add_test(tc, test_nic_sharing);
	tcase_add_test(tc, test_striping);
	tcase_add_test(tc, test_lease_exact);
	tcase_add_test(tc, test_merged_equals_per_slice);
	tcase_add_test(tc, test_nic_failure_retry);
	tcase_add_test(tc, test_consumer_crash_lease);
	tcase_set_timeout(tc, 300);
	suite_add_tcase(s, tc);
	return s;
}
