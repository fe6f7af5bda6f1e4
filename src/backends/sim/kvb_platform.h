/*
 * SimGrid platforms for the sim backend: a short description of a P/D
 * cluster (nodes, NICs, line rate, caps, latency, fabric) turned into a
 * SimGrid 3.32 XML platform, and the inspection of a platform once SimGrid
 * has loaded it (ours or a user's).
 *
 * Every NIC is a SimGrid host.  SimGrid routes by endpoint host and has no
 * per-flow path choice, so "which NIC carries this slice" is answered by
 * choosing the two endpoint hosts.  GPUs are not on the data path: GPU to
 * NIC affinity is policy (kvb_platform_gpu_nics).
 *
 * Host naming contract (SWITCH, RAIL, and user platforms that use names):
 * NIC k of prefill node i is "p<i>-nic<k>", NIC k of decode node j is
 * "d<j>-nic<k>".  Its port is the SPLITDUPLEX link of the same name
 * ("p<i>-nic<k>_UP" = egress, "_DOWN" = ingress).  FATTREE cannot follow
 * the contract: SimGrid names FAT_TREE cluster hosts prefix + integer +
 * suffix, so there NIC k of global node n (prefill nodes first, then
 * decode) is "ft-nic<n * nics_per_node + k>", and padding hosts follow.
 * kvb_platform_desc_host_name() gives the name for any topology and
 * kvb_platform_map_build() finds the hosts whatever the naming.
 *
 * Network model: every generated platform sets network/model CM02,
 * network/crosstraffic 0 and network/TCP-gamma 0 in its <config> (pure
 * max-min sharing, latency paid once, no TCP window bound).  LV08, the
 * SimGrid default, multiplies latency by 13.01, bandwidth by 0.97 and adds
 * ACK crosstraffic: constants fitted to TCP, not RDMA (docs/platforms.md).
 *
 * Threading: the description functions are pure.  kvb_platform_map_build()
 * must run in the thread that initialised SimGrid, after
 * simgrid_load_platform() and before simgrid_run() or any actor exists.
 */
#ifndef KVB_SIM_PLATFORM_H
#define KVB_SIM_PLATFORM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>
#include <simgrid/forward.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum kvb_topology_kind {
	KVB_TOPO_SWITCH = 1,  /* one non-blocking crossbar: only NIC ports contend */
	KVB_TOPO_RAIL = 2,    /* one crossbar per NIC index; rails joined by spine uplinks */
	KVB_TOPO_FATTREE = 3, /* SimGrid FAT_TREE cluster, 2 levels, d-mod-k routing */
} kvb_topology_kind_t;

/* Limits checked by kvb_platform_desc_validate (and by the loader). */
#define KVB_PLATFORM_MAX_NODES 65536u    /* per role */
#define KVB_PLATFORM_MAX_GPUS 1024u      /* per node */
#define KVB_PLATFORM_MAX_NICS 256u       /* per node */
#define KVB_PLATFORM_MAX_HOSTS 1048576u  /* NIC hosts in all, padding included */
#define KVB_PLATFORM_MAX_GBPS 1e6        /* any rate in Gb/s or GB/s */
#define KVB_PLATFORM_MAX_LATENCY_US 1e6
/* kvb_platform_map_build checks every prefill/decode NIC pair up to this
 * many pairs, a deterministic sample beyond. */
#define KVB_PLATFORM_PAIR_CHECK_MAX 4096u

/*
 * A P/D cluster.  kvb_platform_desc_defaults() fills every field; the loader
 * overrides fields by name.  Rates: Gb/s for line rates, GB/s (1e9 bytes/s)
 * for PCIe and memory, as vendors quote them.
 */
typedef struct kvb_platform_desc {
	uint32_t prefill_nodes, decode_nodes; /* >= 1 each */
	uint32_t gpus_per_node;               /* >= 1 (informational + GPU->NIC affinity map) */
	uint32_t nics_per_node;               /* >= 1 */
	double nic_gbps;                      /* NIC line rate, Gb/s (> 0) */
	double nic_efficiency;                /* goodput / line rate, (0, 1]; applies to every link */
	double pcie_gbytes;                   /* per NIC PCIe path cap, GB/s; 0 = none */
	double mem_gbytes;                    /* per node host-memory/DMA cap, GB/s, shared by the
					       * node's NICs (static per-NIC share); 0 = none */
	double latency_us;                    /* one-way NIC-to-NIC latency, microseconds (>= 0) */
	kvb_topology_kind_t topology;
	double oversubscription;              /* fat-tree: leaf down / up capacity, >= 1 (default 1) */
	uint32_t hosts_per_leaf;              /* fat-tree: NIC hosts per leaf switch (default 32) */
	double spine_gbps;                    /* rail: each rail switch's uplink to the spine, Gb/s
					       * per direction; 0 = auto: nic_gbps * (prefill_nodes +
					       * decode_nodes) / 4, at least nic_gbps (4:1) */
	bool zero_link_latency;               /* write 0 latency on every link (the simulator adds
					       * kvb_platform_route_latency_s itself); default false */
} kvb_platform_desc_t;

/* 16 prefill + 16 decode nodes, 8 GPUs and 8 NICs each, 200 Gb/s, efficiency 1,
 * no PCIe or memory cap, 2 us, SWITCH; fat-tree 32 hosts per leaf, oversubscription
 * 1; spine auto; link latencies written. */
void kvb_platform_desc_defaults(kvb_platform_desc_t *d);

/*
 * Override d from the keys of one GKeyFile group.  Keys are the field names;
 * topology is "switch", "rail" or "fattree"; zero_link_latency is a GKeyFile
 * boolean.  Unknown or repeated keys, unparsable values and values outside a
 * field's range are errors naming origin, group and key (KVB_PLATFORM_ERROR);
 * a missing group is G_KEY_FILE_ERROR.  On failure d is unchanged.  Rules
 * between fields (fat-tree spine count, host total) are left to
 * kvb_platform_desc_validate, which kvb_platform_xml also runs.
 */
gboolean kvb_platform_desc_load(kvb_platform_desc_t *d, GKeyFile *kf, const char *group,
				const char *origin, GError **err);

/* Every range, then the rules between fields.  The message names the field
 * ("nics_per_node = 0: out of range, expected >= 1 and <= 256"). */
gboolean kvb_platform_desc_validate(const kvb_platform_desc_t *d, GError **err);

/* The SimGrid XML platform (g_free), or NULL and err when d is invalid. */
char *kvb_platform_xml(const kvb_platform_desc_t *d, GError **err);

/* kvb_platform_xml written to path (atomically, g_file_set_contents). */
gboolean kvb_platform_write(const kvb_platform_desc_t *d, const char *path, GError **err);

/* The contract name "p<node>-nic<nic>" / "d<node>-nic<nic>" (truncated to len). */
void kvb_platform_nic_host_name(char *buf, size_t len, bool prefill, uint32_t node, uint32_t nic);

/* The name d's platform gives that NIC: the contract, or "ft-nic<g>" for FATTREE. */
void kvb_platform_desc_host_name(const kvb_platform_desc_t *d, char *buf, size_t len, bool prefill,
				 uint32_t node, uint32_t nic);

/*
 * Effective per-NIC data rate in bytes/s, the bandwidth of each NIC link:
 * min(nic_gbps * 1e9 / 8 * nic_efficiency, pcie_gbytes * 1e9 (if set),
 *     mem_gbytes * 1e9 / nics_per_node (if set)).
 * The memory cap is a static per-NIC share: exact when all of a node's NICs
 * are busy, pessimistic when some are idle (a busy NIC cannot borrow an idle
 * one's share).  A link shared by a node's NICs would need a route per NIC
 * pair ([nic up, node mem, ..., node mem, nic down] differs for every pair),
 * which a flat cluster cannot express without N^2 routes.
 */
double kvb_platform_nic_Bps(const kvb_platform_desc_t *d);

/* spine_gbps with auto resolved (RAIL), Gb/s. */
double kvb_platform_spine_gbps(const kvb_platform_desc_t *d);

/* Fat-tree shape: leaves = ceil(NIC hosts / hosts_per_leaf), spines =
 * hosts_per_leaf / oversubscription (0 when not a positive integer). */
uint32_t kvb_platform_fattree_leaves(const kvb_platform_desc_t *d);
uint32_t kvb_platform_fattree_spines(const kvb_platform_desc_t *d);

/*
 * Nominal one-way NIC-to-NIC latency in seconds (latency_us * 1e-6).  With
 * zero_link_latency false, SimGrid's route latency equals it for every pair
 * in SWITCH and RAIL, and for cross-leaf pairs in FATTREE (same-leaf pairs
 * cross 2 of the 4 hops: half).  With zero_link_latency true every route
 * latency is 0 and the simulator adds this value itself (uniform, exact).
 */
double kvb_platform_route_latency_s(const kvb_platform_desc_t *d);

/* Latency written on one link in seconds (0 with zero_link_latency). */
double kvb_platform_link_latency_s(const kvb_platform_desc_t *d);

/* GPU -> NIC affinity: the NICs that share a PCIe switch with gpu, as a range
 * [*first, *first + *count).  Blocks of gpus_per_node / nics_per_node GPUs per
 * NIC, or nics_per_node / gpus_per_node NICs per GPU (remainders spread). */
void kvb_platform_gpu_nics(const kvb_platform_desc_t *d, uint32_t gpu, uint32_t *first,
			   uint32_t *count);

const char *kvb_topology_name(kvb_topology_kind_t t);          /* "switch", or "?" */
gboolean kvb_topology_parse(const char *s, kvb_topology_kind_t *t); /* case-insensitive */

/* ---- a platform loaded into SimGrid ------------------------------------- */

typedef enum kvb_platform_role {
	KVB_PLATFORM_PREFILL = 0, /* producer side: hosts p<i>-nic<k> */
	KVB_PLATFORM_DECODE = 1,  /* consumer side: hosts d<j>-nic<k> */
} kvb_platform_role_t;

/*
 * The NIC hosts of a loaded platform by (role, node, nic): hosts[r] is a
 * row-major nodes[r] x nics[r] array, so lookup is one multiply-add.  NIC
 * counts are equal within a role (they may differ between roles).
 */
typedef struct kvb_platform_map {
	char *origin;          /* what the platform was called in messages */
	uint32_t nodes[2];     /* by kvb_platform_role_t */
	uint32_t nics[2];      /* NICs per node */
	sg_host_t *hosts[2];   /* hosts[r][node * nics[r] + nic] */
	size_t ignored_hosts;  /* hosts that are not NICs (unnamed, padding) */
	size_t pairs_checked;  /* prefill/decode NIC pairs whose routes were checked, both ways */
} kvb_platform_map_t;

static inline sg_host_t kvb_platform_map_host(const kvb_platform_map_t *m, kvb_platform_role_t r,
					      uint32_t node, uint32_t nic)
{
	if ((unsigned)r > 1 || node >= m->nodes[r] || nic >= m->nics[r])
		return NULL;
	return m->hosts[r][(size_t)node * m->nics[r] + nic];
}

/*
 * Build the map of the platform SimGrid has loaded.  A host is a NIC when
 *  1. it has properties kvb_role=prefill|decode, kvb_node=N, kvb_nic=K
 *     (all three; user XML), else
 *  2. it has properties kvb_host_prefix, kvb_prefill_nodes, kvb_decode_nodes
 *     and kvb_nics_per_node and is named <prefix><g> (our FATTREE cluster:
 *     g < (prefill+decode) * nics is a NIC, beyond is padding), else
 *  3. its name follows the contract "p<i>-nic<k>" / "d<j>-nic<k>";
 * other hosts are ignored.  Checks: each role has nodes 0..n-1, each node
 * NICs 0..k-1 (>= 1), equal NIC counts within a role, no two hosts on one
 * (role, node, nic), a route both ways between every prefill NIC and every
 * decode NIC (all pairs up to KVB_PLATFORM_PAIR_CHECK_MAX, else
 * max(KVB_PLATFORM_PAIR_CHECK_MAX, NICs) fixed pseudo-random pairs that
 * include every NIC), and that each NIC has a port: a route with no link, or
 * routes out of (into) a host that share no link, would move data at an
 * unlimited rate.  Errors name origin and the host(s) (KVB_PLATFORM_ERROR).
 *
 * It seals the platform first (simgrid_run_until(0), which runs nothing when
 * no actor exists): SimGrid completes the routes of zones with routers only
 * when sealing.  Routes are resolved in a forked child, because SimGrid
 * aborts the process on a pair it cannot route.
 */
gboolean kvb_platform_map_build(const char *origin, kvb_platform_map_t **out, GError **err);
void kvb_platform_map_free(kvb_platform_map_t *m); /* NULL is a no-op */

#define KVB_PLATFORM_ERROR (kvb_platform_error_quark())
GQuark kvb_platform_error_quark(void);
typedef enum {
	KVB_PLATFORM_ERROR_INVALID = 1,     /* a value out of range or unparsable */
	KVB_PLATFORM_ERROR_UNKNOWN_KEY = 2, /* a key the description does not have */
	KVB_PLATFORM_ERROR_MAP = 3,         /* loaded platform: NIC hosts missing or inconsistent */
	KVB_PLATFORM_ERROR_ROUTE = 4,       /* loaded platform: a NIC pair has no route */
	KVB_PLATFORM_ERROR_SYSTEM = 5,      /* fork/pipe failed */
} kvb_platform_error_code_t;

#ifdef __cplusplus
}
#endif
#endif /* KVB_SIM_PLATFORM_H */
