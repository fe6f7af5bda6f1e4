/*
 * SimGrid platforms: descriptions, XML generation, and the map of a loaded
 * platform's NIC hosts.
 *
 * One table (platform_keys) describes every field of kvb_platform_desc_t:
 * its key, how it parses and its range.  The GKeyFile loader and
 * kvb_platform_desc_validate both check against it, so the messages read
 * the same and a value the loader accepts is one validate accepts.
 *
 * XML shapes (docs/platforms.md has a 2+2 example of each):
 *   SWITCH   <zone routing="Cluster"> (a StarZone in 3.32): per NIC a <host>,
 *            a SPLITDUPLEX <link> of the same name and a <host_link>; routes
 *            are [src_UP, dst_DOWN], computed per host, O(N) memory.
 *   RAIL     <zone routing="Full"> of K such zones (rail k holds NIC k of
 *            every node, with a router as gateway), one SPLITDUPLEX spine
 *            link per rail and K(K-1) zoneRoutes [rail_k-spine_UP,
 *            rail_l-spine_DOWN].
 *   FATTREE  <cluster topology="FAT_TREE" topo_parameters="2;H,L;1,S;1,1">.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <glib.h>
#include <simgrid/engine.h>
#include <simgrid/host.h>
#include <simgrid/link.h>
#include <xbt/dynar.h>
#include <xbt/sysdep.h>

#include "kvb_platform.h"

G_DEFINE_QUARK(kvb-platform-error-quark, kvb_platform_error)

#define FT_PREFIX "ft-nic"
#define SPINE_MAX_GBPS 1e12

/* ---- field table ---------------------------------------------------------- */

typedef enum pkey_kind {
	PK_U32 = 1,    /* decimal integer into a uint32_t */
	PK_DOUBLE = 2, /* finite decimal number into a double */
	PK_TOPO = 3,   /* kvb_topology_kind_t by name */
	PK_BOOL = 4,   /* bool: true/false/1/0 */
} pkey_kind_t;

typedef struct pkey {
	const char *key;
	pkey_kind_t kind;
	size_t off;
	double min, max;
	bool min_open; /* "> min" rather than ">= min" */
	const char *unit;
} pkey_t;

#define F(field) offsetof(kvb_platform_desc_t, field)

static const pkey_t platform_keys[] = {
	{"prefill_nodes", PK_U32, F(prefill_nodes), 1, KVB_PLATFORM_MAX_NODES, false, ""},
	{"decode_nodes", PK_U32, F(decode_nodes), 1, KVB_PLATFORM_MAX_NODES, false, ""},
	{"gpus_per_node", PK_U32, F(gpus_per_node), 1, KVB_PLATFORM_MAX_GPUS, false, ""},
	{"nics_per_node", PK_U32, F(nics_per_node), 1, KVB_PLATFORM_MAX_NICS, false, ""},
	{"nic_gbps", PK_DOUBLE, F(nic_gbps), 0, KVB_PLATFORM_MAX_GBPS, true, " Gb/s"},
	{"nic_efficiency", PK_DOUBLE, F(nic_efficiency), 0, 1, true, ""},
	{"pcie_gbytes", PK_DOUBLE, F(pcie_gbytes), 0, KVB_PLATFORM_MAX_GBPS, false,
	 " GB/s (0 = no cap)"},
	{"mem_gbytes", PK_DOUBLE, F(mem_gbytes), 0, KVB_PLATFORM_MAX_GBPS, false,
	 " GB/s (0 = no cap)"},
	{"latency_us", PK_DOUBLE, F(latency_us), 0, KVB_PLATFORM_MAX_LATENCY_US, false, " us"},
	{"topology", PK_TOPO, F(topology), 0, 0, false, ""},
	{"oversubscription", PK_DOUBLE, F(oversubscription), 1, KVB_PLATFORM_MAX_NODES, false, ""},
	{"hosts_per_leaf", PK_U32, F(hosts_per_leaf), 1, KVB_PLATFORM_MAX_NODES, false, ""},
	{"spine_gbps", PK_DOUBLE, F(spine_gbps), 0, SPINE_MAX_GBPS, false, " Gb/s (0 = auto)"},
	{"zero_link_latency", PK_BOOL, F(zero_link_latency), 0, 0, false, ""},
};

#undef F

#define N_KEYS G_N_ELEMENTS(platform_keys)

static const pkey_t *key_find(const char *key)
{
	for (size_t i = 0; i < N_KEYS; i++)
		if (strcmp(platform_keys[i].key, key) == 0)
			return &platform_keys[i];
	return NULL;
}

static double field_get(const kvb_platform_desc_t *d, const pkey_t *k)
{
	const char *p = (const char *)d + k->off;
	uint32_t u;
	double v;
	kvb_topology_kind_t t;
	bool b;

	switch (k->kind) {
	case PK_U32:
		memcpy(&u, p, sizeof(u));
		return u;
	case PK_DOUBLE:
		memcpy(&v, p, sizeof(v));
		return v;
	case PK_TOPO:
		memcpy(&t, p, sizeof(t));
		return (double)t;
	case PK_BOOL:
		memcpy(&b, p, sizeof(b));
		return b ? 1 : 0;
	}
	return 0;
}

/* "> 0 and <= 1 Gb/s", "switch, rail or fattree", ... */
static void describe_range(const pkey_t *k, char *buf, size_t len)
{
	char lo[G_ASCII_DTOSTR_BUF_SIZE], hi[G_ASCII_DTOSTR_BUF_SIZE];

	switch (k->kind) {
	case PK_TOPO:
		g_strlcpy(buf, "switch, rail or fattree", len);
		return;
	case PK_BOOL:
		g_strlcpy(buf, "true or false", len);
		return;
	case PK_U32:
	case PK_DOUBLE:
		break;
	}
	g_ascii_formatd(lo, sizeof(lo), "%.15g", k->min);
	g_ascii_formatd(hi, sizeof(hi), "%.15g", k->max);
	snprintf(buf, len, "%s %s and <= %s%s", k->min_open ? ">" : ">=", lo, hi, k->unit);
}

static bool in_range(const pkey_t *k, double v)
{
	switch (k->kind) {
	case PK_TOPO:
		return v == KVB_TOPO_SWITCH || v == KVB_TOPO_RAIL || v == KVB_TOPO_FATTREE;
	case PK_BOOL:
		return true;
	case PK_U32:
	case PK_DOUBLE:
		break;
	}
	if (!isfinite(v) || v > k->max)
		return false;
	return k->min_open ? v > k->min : v >= k->min;
}

/* ---- descriptions --------------------------------------------------------- */

const char *kvb_topology_name(kvb_topology_kind_t t)
{
	switch (t) {
	case KVB_TOPO_SWITCH:
		return "switch";
	case KVB_TOPO_RAIL:
		return "rail";
	case KVB_TOPO_FATTREE:
		return "fattree";
	}
	return "?";
}

gboolean kvb_topology_parse(const char *s, kvb_topology_kind_t *t)
{
	static const kvb_topology_kind_t all[] = {KVB_TOPO_SWITCH, KVB_TOPO_RAIL, KVB_TOPO_FATTREE};

	for (size_t i = 0; s && i < G_N_ELEMENTS(all); i++) {
		if (g_ascii_strcasecmp(s, kvb_topology_name(all[i])) == 0) {
			*t = all[i];
			return TRUE;
		}
	}
	return FALSE;
}

void kvb_platform_desc_defaults(kvb_platform_desc_t *d)
{
	memset(d, 0, sizeof(*d));
	d->prefill_nodes = 16;
	d->decode_nodes = 16;
	d->gpus_per_node = 8;
	d->nics_per_node = 8;
	d->nic_gbps = 200;
	d->nic_efficiency = 1;
	d->pcie_gbytes = 0;
	d->mem_gbytes = 0;
	d->latency_us = 2;
	d->topology = KVB_TOPO_SWITCH;
	d->oversubscription = 1;
	d->hosts_per_leaf = 32;
	d->spine_gbps = 0;
	d->zero_link_latency = false;
}

static uint64_t nic_hosts(const kvb_platform_desc_t *d)
{
	return ((uint64_t)d->prefill_nodes + d->decode_nodes) * d->nics_per_node;
}

double kvb_platform_nic_Bps(const kvb_platform_desc_t *d)
{
	double bps = d->nic_gbps * 1e9 / 8 * d->nic_efficiency;

	if (d->pcie_gbytes > 0)
		bps = fmin(bps, d->pcie_gbytes * 1e9);
	if (d->mem_gbytes > 0 && d->nics_per_node > 0)
		bps = fmin(bps, d->mem_gbytes * 1e9 / d->nics_per_node);
	return bps;
}

double kvb_platform_spine_gbps(const kvb_platform_desc_t *d)
{
	if (d->spine_gbps > 0)
		return d->spine_gbps;
	return fmax(d->nic_gbps, d->nic_gbps * ((double)d->prefill_nodes + d->decode_nodes) / 4);
}

uint32_t kvb_platform_fattree_leaves(const kvb_platform_desc_t *d)
{
	if (d->hosts_per_leaf == 0)
		return 0;
	return (uint32_t)((nic_hosts(d) + d->hosts_per_leaf - 1) / d->hosts_per_leaf);
}

uint32_t kvb_platform_fattree_spines(const kvb_platform_desc_t *d)
{
	if (!(d->oversubscription >= 1) || !isfinite(d->oversubscription))
		return 0;
	double s = d->hosts_per_leaf / d->oversubscription;
	double r = round(s);
	if (r < 1 || fabs(s - r) > 1e-9 * r)
		return 0;
	return (uint32_t)r;
}

double kvb_platform_route_latency_s(const kvb_platform_desc_t *d)
{
	return d->latency_us * 1e-6;
}

/*
 * Latency per link so that the NIC-to-NIC route sums to latency_us: NIC
 * links carry half each (SWITCH, RAIL; spine links 0).  A FAT_TREE cluster
 * has one latency for all its links and a cross-leaf route has 4 of them,
 * a same-leaf route 2: a quarter makes cross-leaf routes exact (prefill and
 * decode nodes fill separate leaves when hosts_per_leaf allows), a half when
 * there is a single leaf.
 */
double kvb_platform_link_latency_s(const kvb_platform_desc_t *d)
{
	if (d->zero_link_latency)
		return 0;
	double lat = kvb_platform_route_latency_s(d);
	if (d->topology == KVB_TOPO_FATTREE && kvb_platform_fattree_leaves(d) > 1)
		return lat / 4;
	return lat / 2;
}

void kvb_platform_gpu_nics(const kvb_platform_desc_t *d, uint32_t gpu, uint32_t *first,
			   uint32_t *count)
{
	uint64_t g = d->gpus_per_node ? d->gpus_per_node : 1;
	uint64_t k = d->nics_per_node ? d->nics_per_node : 1;
	uint64_t i = gpu % g;
	uint64_t lo = i * k / g;
	uint64_t hi = (i + 1) * k / g;

	*first = (uint32_t)lo;
	*count = hi > lo ? (uint32_t)(hi - lo) : 1;
}

void kvb_platform_nic_host_name(char *buf, size_t len, bool prefill, uint32_t node, uint32_t nic)
{
	snprintf(buf, len, "%c%" PRIu32 "-nic%" PRIu32, prefill ? 'p' : 'd', node, nic);
}

void kvb_platform_desc_host_name(const kvb_platform_desc_t *d, char *buf, size_t len, bool prefill,
				 uint32_t node, uint32_t nic)
{
	if (d->topology != KVB_TOPO_FATTREE) {
		kvb_platform_nic_host_name(buf, len, prefill, node, nic);
		return;
	}
	uint64_t n = prefill ? node : (uint64_t)d->prefill_nodes + node;
	snprintf(buf, len, FT_PREFIX "%" PRIu64, n * d->nics_per_node + nic);
}

/* The whole numbers that work as oversubscription for hosts_per_leaf h. */
static void append_divisors(GString *s, uint32_t h)
{
	int n = 0;
	for (uint32_t sp = h; sp >= 1 && n < 10; sp--) {
		if (h % sp == 0) {
			g_string_append_printf(s, "%s%" PRIu32, n ? ", " : "", h / sp);
			n++;
		}
	}
}

gboolean kvb_platform_desc_validate(const kvb_platform_desc_t *d, GError **err)
{
	char range[128], val[G_ASCII_DTOSTR_BUF_SIZE];

	g_return_val_if_fail(d != NULL, FALSE);
	for (size_t i = 0; i < N_KEYS; i++) {
		const pkey_t *k = &platform_keys[i];
		double v = field_get(d, k);
		if (in_range(k, v))
			continue;
		describe_range(k, range, sizeof(range));
		g_ascii_formatd(val, sizeof(val), "%.15g", v);
		g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_INVALID,
			    "%s = %s: out of range, expected %s", k->key, val, range);
		return FALSE;
	}
	uint64_t hosts = nic_hosts(d);
	if (hosts > KVB_PLATFORM_MAX_HOSTS) {
		g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_INVALID,
			    "(prefill_nodes %" PRIu32 " + decode_nodes %" PRIu32 ") * nics_per_node %" PRIu32
			    " = %" PRIu64 " NIC hosts: more than %u",
			    d->prefill_nodes, d->decode_nodes, d->nics_per_node, hosts,
			    KVB_PLATFORM_MAX_HOSTS);
		return FALSE;
	}
	if (d->topology == KVB_TOPO_FATTREE) {
		uint32_t spines = kvb_platform_fattree_spines(d);
		if (spines == 0) {
			GString *ok = g_string_new(NULL);
			append_divisors(ok, d->hosts_per_leaf);
			g_ascii_formatd(val, sizeof(val), "%.15g", d->oversubscription);
			g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_INVALID,
				    "oversubscription = %s: hosts_per_leaf %" PRIu32
				    " / oversubscription must be a whole number of spines >= 1 "
				    "(with hosts_per_leaf %" PRIu32 ", oversubscription may be %s)",
				    val, d->hosts_per_leaf, d->hosts_per_leaf, ok->str);
			g_string_free(ok, TRUE);
			return FALSE;
		}
		uint64_t padded = (uint64_t)kvb_platform_fattree_leaves(d) * d->hosts_per_leaf;
		if (padded > KVB_PLATFORM_MAX_HOSTS || padded > INT32_MAX) {
			g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_INVALID,
				    "hosts_per_leaf = %" PRIu32 ": %" PRIu64
				    " fat-tree hosts with padding, more than %u",
				    d->hosts_per_leaf, padded, KVB_PLATFORM_MAX_HOSTS);
			return FALSE;
		}
	}
	return TRUE;
}

/* ---- GKeyFile loading ----------------------------------------------------- */

static gboolean parse_bool(const char *s, bool *b)
{
	if (g_ascii_strcasecmp(s, "true") == 0 || strcmp(s, "1") == 0)
		*b = true;
	else if (g_ascii_strcasecmp(s, "false") == 0 || strcmp(s, "0") == 0)
		*b = false;
	else
		return FALSE;
	return TRUE;
}

/* Parse text for key k into d.  `where` names the source in messages. */
static gboolean apply_value(kvb_platform_desc_t *d, const pkey_t *k, const char *text,
			    const char *where, GError **err)
{
	char range[128];
	const char *why = "out of range";
	char *s = g_strstrip(g_strdup(text));
	char *p = (char *)d + k->off;
	gboolean ok = FALSE;

	switch (k->kind) {
	case PK_U32: {
		guint64 u = 0;
		if (!g_ascii_string_to_unsigned(s, 10, 0, UINT32_MAX, &u, NULL)) {
			gboolean digits = *s != '\0';
			for (const char *c = s; *c; c++)
				digits = digits && g_ascii_isdigit(*c);
			why = digits ? "out of range" : "not a decimal integer";
			break;
		}
		ok = in_range(k, (double)u);
		if (ok) {
			uint32_t v = (uint32_t)u;
			memcpy(p, &v, sizeof(v));
		}
		break;
	}
	case PK_DOUBLE: {
		char *end = NULL;
		errno = 0;
		double v = *s ? g_ascii_strtod(s, &end) : 0;
		if (!*s || !end || *end || errno == ERANGE || !isfinite(v)) {
			why = "not a finite decimal number";
			break;
		}
		ok = in_range(k, v);
		if (ok)
			memcpy(p, &v, sizeof(v));
		break;
	}
	case PK_TOPO: {
		kvb_topology_kind_t t;
		why = "unknown topology";
		ok = kvb_topology_parse(s, &t);
		if (ok)
			memcpy(p, &t, sizeof(t));
		break;
	}
	case PK_BOOL: {
		bool b;
		why = "not a boolean";
		ok = parse_bool(s, &b);
		if (ok)
			memcpy(p, &b, sizeof(b));
		break;
	}
	}
	if (!ok) {
		describe_range(k, range, sizeof(range));
		g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_INVALID,
			    "%s = '%s': %s, expected %s%s", where, text, why, range,
			    strchr(text, '#') ? " (GKeyFile has no end-of-line comments: put '#' "
						"comments on their own line)"
					      : "");
	}
	g_free(s);
	return ok;
}

gboolean kvb_platform_desc_load(kvb_platform_desc_t *d, GKeyFile *kf, const char *group,
				const char *origin, GError **err)
{
	g_return_val_if_fail(d != NULL && kf != NULL && group != NULL, FALSE);
	g_return_val_if_fail(err == NULL || *err == NULL, FALSE);
	if (!origin)
		origin = "platform description";

	char **keys = g_key_file_get_keys(kf, group, NULL, err);
	if (!keys) {
		g_prefix_error(err, "%s: ", origin);
		return FALSE;
	}
	kvb_platform_desc_t tmp = *d;
	GHashTable *seen = g_hash_table_new(g_str_hash, g_str_equal);
	gboolean ok = TRUE;
	for (char **key = keys; ok && *key; key++) {
		const pkey_t *k = key_find(*key);
		if (!g_hash_table_add(seen, *key)) {
			/* GKeyFile keeps both and reads the last: say so */
			g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_INVALID,
				    "%s: [%s] %s given more than once", origin, group, *key);
			ok = FALSE;
		} else if (!k) {
			GString *known = g_string_new(NULL);
			for (size_t i = 0; i < N_KEYS; i++)
				g_string_append_printf(known, "%s%s", i ? ", " : "",
						       platform_keys[i].key);
			g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_UNKNOWN_KEY,
				    "%s: [%s] unknown key '%s' (known keys: %s)", origin, group, *key,
				    known->str);
			g_string_free(known, TRUE);
			ok = FALSE;
		} else {
			GError *e = NULL;
			char *text = g_key_file_get_value(kf, group, *key, &e);
			if (!text) {
				if (!e)
					g_set_error(&e, KVB_PLATFORM_ERROR,
						    KVB_PLATFORM_ERROR_INVALID, "unreadable");
				g_propagate_prefixed_error(err, e, "%s: [%s] %s: ", origin, group,
							   *key);
				ok = FALSE;
			} else {
				char *where = g_strdup_printf("%s: [%s] %s", origin, group, *key);
				ok = apply_value(&tmp, k, text, where, err);
				g_free(where);
				g_free(text);
			}
		}
	}
	g_hash_table_destroy(seen);
	g_strfreev(keys);
	if (ok)
		*d = tmp;
	return ok;
}

/* ---- XML ------------------------------------------------------------------ */

/* Shortest text that reads back as v (locale independent). */
static void fmt_num(char *buf, size_t len, double v)
{
	static const char *const formats[] = {"%.15g", "%.16g", "%.17g"};
	for (size_t i = 0; i < G_N_ELEMENTS(formats); i++) {
		g_ascii_formatd(buf, len, formats[i], v);
		if (g_ascii_strtod(buf, NULL) == v)
			return;
	}
}

static void xml_nic(GString *x, const char *indent, const char *name, const char *bw,
		    const char *lat)
{
	g_string_append_printf(x,
			       "%s<host id=\"%s\" speed=\"1Gf\"/>\n"
			       "%s<link id=\"%s\" bandwidth=\"%sBps\" latency=\"%ss\" "
			       "sharing_policy=\"SPLITDUPLEX\"/>\n"
			       "%s<host_link id=\"%s\" up=\"%s_UP\" down=\"%s_DOWN\"/>\n",
			       indent, name, indent, name, bw, lat, indent, name, name, name);
}

static void xml_switch(GString *x, const kvb_platform_desc_t *d, const char *bw, const char *lat)
{
	char name[64];

	g_string_append(x, "  <zone id=\"kvb-switch\" routing=\"Cluster\">\n"
			   "    <prop id=\"kvb_topology\" value=\"switch\"/>\n");
	for (int r = 0; r < 2; r++) {
		uint32_t nodes = r == 0 ? d->prefill_nodes : d->decode_nodes;
		for (uint32_t n = 0; n < nodes; n++) {
			for (uint32_t k = 0; k < d->nics_per_node; k++) {
				kvb_platform_nic_host_name(name, sizeof(name), r == 0, n, k);
				xml_nic(x, "    ", name, bw, lat);
			}
		}
	}
	g_string_append(x, "  </zone>\n");
}

static void xml_rail(GString *x, const kvb_platform_desc_t *d, const char *bw, const char *lat)
{
	char name[64], spine[G_ASCII_DTOSTR_BUF_SIZE];

	fmt_num(spine, sizeof(spine), kvb_platform_spine_gbps(d) * 1e9 / 8 * d->nic_efficiency);
	g_string_append(x, "  <zone id=\"kvb-rail\" routing=\"Full\">\n"
			   "    <prop id=\"kvb_topology\" value=\"rail\"/>\n");
	for (uint32_t k = 0; k < d->nics_per_node; k++) {
		g_string_append_printf(x,
				       "    <zone id=\"rail%" PRIu32 "\" routing=\"Cluster\">\n"
				       "      <router id=\"rail%" PRIu32 "-switch\"/>\n",
				       k, k);
		for (int r = 0; r < 2; r++) {
			uint32_t nodes = r == 0 ? d->prefill_nodes : d->decode_nodes;
			for (uint32_t n = 0; n < nodes; n++) {
				kvb_platform_nic_host_name(name, sizeof(name), r == 0, n, k);
				xml_nic(x, "      ", name, bw, lat);
			}
		}
		g_string_append(x, "    </zone>\n");
	}
	/* UP = rail switch to spine, DOWN = spine to rail switch */
	for (uint32_t k = 0; k < d->nics_per_node; k++)
		g_string_append_printf(x,
				       "    <link id=\"rail%" PRIu32 "-spine\" bandwidth=\"%sBps\" "
				       "latency=\"0s\" sharing_policy=\"SPLITDUPLEX\"/>\n",
				       k, spine);
	for (uint32_t k = 0; k < d->nics_per_node; k++) {
		for (uint32_t l = 0; l < d->nics_per_node; l++) {
			if (k == l)
				continue;
			g_string_append_printf(
				x,
				"    <zoneRoute src=\"rail%" PRIu32 "\" dst=\"rail%" PRIu32
				"\" gw_src=\"rail%" PRIu32 "-switch\" gw_dst=\"rail%" PRIu32
				"-switch\" symmetrical=\"NO\">\n"
				"      <link_ctn id=\"rail%" PRIu32 "-spine\" direction=\"UP\"/>\n"
				"      <link_ctn id=\"rail%" PRIu32 "-spine\" direction=\"DOWN\"/>\n"
				"    </zoneRoute>\n",
				k, l, k, l, k, l);
		}
	}
	g_string_append(x, "  </zone>\n");
}

static void xml_fattree(GString *x, const kvb_platform_desc_t *d, const char *bw, const char *lat)
{
	uint32_t leaves = kvb_platform_fattree_leaves(d);
	uint32_t spines = kvb_platform_fattree_spines(d);
	uint64_t padded = (uint64_t)leaves * d->hosts_per_leaf;

	g_string_append_printf(
		x,
		"  <cluster id=\"kvb-fattree\" prefix=\"" FT_PREFIX "\" suffix=\"\" radical=\"0-%" PRIu64
		"\" speed=\"1Gf\" bw=\"%sBps\" lat=\"%ss\" sharing_policy=\"SPLITDUPLEX\" "
		"topology=\"FAT_TREE\" topo_parameters=\"2;%" PRIu32 ",%" PRIu32 ";1,%" PRIu32
		";1,1\">\n"
		"    <prop id=\"kvb_topology\" value=\"fattree\"/>\n"
		"    <prop id=\"kvb_host_prefix\" value=\"" FT_PREFIX "\"/>\n"
		"    <prop id=\"kvb_prefill_nodes\" value=\"%" PRIu32 "\"/>\n"
		"    <prop id=\"kvb_decode_nodes\" value=\"%" PRIu32 "\"/>\n"
		"    <prop id=\"kvb_nics_per_node\" value=\"%" PRIu32 "\"/>\n"
		"  </cluster>\n",
		padded - 1, bw, lat, d->hosts_per_leaf, leaves, spines, d->prefill_nodes,
		d->decode_nodes, d->nics_per_node);
}

char *kvb_platform_xml(const kvb_platform_desc_t *d, GError **err)
{
	char bw[G_ASCII_DTOSTR_BUF_SIZE], lat[G_ASCII_DTOSTR_BUF_SIZE];
	char rate[G_ASCII_DTOSTR_BUF_SIZE], us[G_ASCII_DTOSTR_BUF_SIZE];

	g_return_val_if_fail(d != NULL, NULL);
	if (!kvb_platform_desc_validate(d, err))
		return NULL;
	fmt_num(bw, sizeof(bw), kvb_platform_nic_Bps(d));
	fmt_num(lat, sizeof(lat), kvb_platform_link_latency_s(d));
	fmt_num(rate, sizeof(rate), d->nic_gbps);
	fmt_num(us, sizeof(us), d->latency_us);

	uint64_t hosts = nic_hosts(d);
	GString *x = g_string_sized_new(256 * hosts + 4096);
	g_string_append(x, "<?xml version='1.0'?>\n"
			   "<!DOCTYPE platform SYSTEM \"https://simgrid.org/simgrid.dtd\">\n");
	char fabric[160] = "";
	if (d->topology == KVB_TOPO_RAIL) {
		char sp[G_ASCII_DTOSTR_BUF_SIZE];
		fmt_num(sp, sizeof(sp), kvb_platform_spine_gbps(d));
		snprintf(fabric, sizeof(fabric), " (spine uplink %s Gb/s per rail)", sp);
	} else if (d->topology == KVB_TOPO_FATTREE) {
		char os[G_ASCII_DTOSTR_BUF_SIZE];
		fmt_num(os, sizeof(os), d->oversubscription);
		snprintf(fabric, sizeof(fabric),
			 " (%" PRIu32 " leaves x %" PRIu32 " hosts, %" PRIu32
			 " spines, oversubscription %s)",
			 kvb_platform_fattree_leaves(d), d->hosts_per_leaf,
			 kvb_platform_fattree_spines(d), os);
	}
	g_string_append_printf(x,
			       "<!-- kvbridge: %" PRIu32 " prefill + %" PRIu32
			       " decode nodes x %" PRIu32 " NICs (%" PRIu64
			       " NIC hosts), %s%s; NIC %s Gb/s, link %s B/s; %s us NIC to NIC%s -->\n",
			       d->prefill_nodes, d->decode_nodes, d->nics_per_node, hosts,
			       kvb_topology_name(d->topology), fabric, rate, bw, us,
			       d->zero_link_latency ? " (added by the simulator, links at 0)" : "");
	/* CM02 without crosstraffic or TCP window bound: pure max-min (RDMA) */
	g_string_append(x, "<platform version=\"4.1\">\n"
			   "  <config>\n"
			   "    <prop id=\"network/model\" value=\"CM02\"/>\n"
			   "    <prop id=\"network/crosstraffic\" value=\"0\"/>\n"
			   "    <prop id=\"network/TCP-gamma\" value=\"0\"/>\n"
			   "  </config>\n");
	switch (d->topology) {
	case KVB_TOPO_SWITCH:
		xml_switch(x, d, bw, lat);
		break;
	case KVB_TOPO_RAIL:
		xml_rail(x, d, bw, lat);
		break;
	case KVB_TOPO_FATTREE:
		xml_fattree(x, d, bw, lat);
		break;
	}
	g_string_append(x, "</platform>\n");
	return g_string_free(x, FALSE);
}

gboolean kvb_platform_write(const kvb_platform_desc_t *d, const char *path, GError **err)
{
	g_return_val_if_fail(path != NULL, FALSE);
	char *xml = kvb_platform_xml(d, err);
	if (!xml)
		return FALSE;
	gboolean ok = g_file_set_contents(path, xml, -1, err);
	g_free(xml);
	return ok;
}

/* ---- the map of a loaded platform ---------------------------------------- */

typedef struct nic_entry {
	sg_host_t host;
	const char *name;
	uint32_t role, node, nic;
} nic_entry_t;

static const char *role_name(uint32_t r)
{
	return r == KVB_PLATFORM_PREFILL ? "prefill" : "decode";
}

/* A decimal uint32 < max, the whole string. */
static gboolean parse_index(const char *s, uint32_t max, uint32_t *out)
{
	guint64 v;
	if (!s || !g_ascii_string_to_unsigned(s, 10, 0, max - 1, &v, NULL))
		return FALSE;
	*out = (uint32_t)v;
	return TRUE;
}

static gboolean host_prop_index(const char *origin, sg_host_t h, const char *prop, uint32_t max,
				uint32_t *out, GError **err)
{
	const char *v = sg_host_get_property_value(h, prop);
	if (parse_index(v, max, out))
		return TRUE;
	g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_MAP,
		    "%s: host '%s': property %s = '%s': expected a decimal integer below %" PRIu32,
		    origin, sg_host_get_name(h), prop, v ? v : "", max);
	return FALSE;
}

/* "p12-nic3" / "d0-nic0" */
static gboolean parse_contract(const char *name, uint32_t *role, const char **node_s,
			       size_t *node_len, const char **nic_s)
{
	if (name[0] != 'p' && name[0] != 'd')
		return FALSE;
	const char *p = name + 1;
	const char *n0 = p;
	while (g_ascii_isdigit(*p))
		p++;
	if (p == n0 || strncmp(p, "-nic", 4) != 0)
		return FALSE;
	const char *k0 = p + 4;
	if (!*k0)
		return FALSE;
	for (const char *c = k0; *c; c++)
		if (!g_ascii_isdigit(*c))
			return FALSE;
	*role = name[0] == 'p' ? KVB_PLATFORM_PREFILL : KVB_PLATFORM_DECODE;
	*node_s = n0;
	*node_len = (size_t)(p - n0);
	*nic_s = k0;
	return TRUE;
}

/*
 * Is h a NIC, and which?  1: *e filled; 0: not a NIC (or fat-tree padding);
 * -1: error set (a host that means to be a NIC but says it wrongly).
 */
static int classify_host(const char *origin, sg_host_t h, nic_entry_t *e, GError **err)
{
	const char *name = sg_host_get_name(h);
	const char *role = sg_host_get_property_value(h, "kvb_role");
	const char *node = sg_host_get_property_value(h, "kvb_node");
	const char *nic = sg_host_get_property_value(h, "kvb_nic");
	const char *prefix = sg_host_get_property_value(h, "kvb_host_prefix");

	e->host = h;
	e->name = name;
	if (role || node || nic) {
		if (!role || !node || !nic) {
			g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_MAP,
				    "%s: host '%s' has %s%s%s but not %s%s%s: a NIC host needs all "
				    "three of kvb_role, kvb_node and kvb_nic",
				    origin, name, role ? "kvb_role " : "", node ? "kvb_node " : "",
				    nic ? "kvb_nic" : "", role ? "" : "kvb_role ",
				    node ? "" : "kvb_node ", nic ? "" : "kvb_nic");
			return -1;
		}
		if (strcmp(role, "prefill") == 0) {
			e->role = KVB_PLATFORM_PREFILL;
		} else if (strcmp(role, "decode") == 0) {
			e->role = KVB_PLATFORM_DECODE;
		} else {
			g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_MAP,
				    "%s: host '%s': property kvb_role = '%s': expected prefill or "
				    "decode",
				    origin, name, role);
			return -1;
		}
		if (!host_prop_index(origin, h, "kvb_node", KVB_PLATFORM_MAX_NODES, &e->node, err) ||
		    !host_prop_index(origin, h, "kvb_nic", KVB_PLATFORM_MAX_NICS, &e->nic, err))
			return -1;
		return 1;
	}
	if (prefix) {
		uint32_t np, nd, k, g;
		if (!host_prop_index(origin, h, "kvb_prefill_nodes", KVB_PLATFORM_MAX_NODES + 1, &np,
				     err) ||
		    !host_prop_index(origin, h, "kvb_decode_nodes", KVB_PLATFORM_MAX_NODES + 1, &nd,
				     err) ||
		    !host_prop_index(origin, h, "kvb_nics_per_node", KVB_PLATFORM_MAX_NICS + 1, &k,
				     err))
			return -1;
		size_t plen = strlen(prefix);
		if (k == 0 || strncmp(name, prefix, plen) != 0 ||
		    !parse_index(name + plen, KVB_PLATFORM_MAX_HOSTS, &g)) {
			g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_MAP,
				    "%s: host '%s' has kvb_host_prefix '%s' but is not named "
				    "%s<index> (or kvb_nics_per_node is 0)",
				    origin, name, prefix, prefix);
			return -1;
		}
		uint64_t node_g = g / k;
		e->nic = g % k;
		if (node_g < np) {
			e->role = KVB_PLATFORM_PREFILL;
			e->node = (uint32_t)node_g;
		} else if (node_g < (uint64_t)np + nd) {
			e->role = KVB_PLATFORM_DECODE;
			e->node = (uint32_t)(node_g - np);
		} else {
			return 0; /* padding */
		}
		return 1;
	}
	const char *node_s, *nic_s;
	size_t node_len;
	if (!parse_contract(name, &e->role, &node_s, &node_len, &nic_s))
		return 0;
	char *ns = g_strndup(node_s, node_len);
	gboolean ok = parse_index(ns, KVB_PLATFORM_MAX_NODES, &e->node) &&
		      parse_index(nic_s, KVB_PLATFORM_MAX_NICS, &e->nic);
	g_free(ns);
	if (!ok) {
		g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_MAP,
			    "%s: host '%s': node index must be below %u and NIC index below %u",
			    origin, name, KVB_PLATFORM_MAX_NODES, KVB_PLATFORM_MAX_NICS);
		return -1;
	}
	return 1;
}

static int entry_cmp(const void *a, const void *b)
{
	const nic_entry_t *x = a, *y = b;
	if (x->role != y->role)
		return x->role < y->role ? -1 : 1;
	if (x->node != y->node)
		return x->node < y->node ? -1 : 1;
	if (x->nic != y->nic)
		return x->nic < y->nic ? -1 : 1;
	return strcmp(x->name, y->name);
}

/*
 * v[0..n) are role r's entries, sorted: check that its nodes are 0..n-1,
 * each with NICs 0..k-1, the same k for all, and fill the map.
 */
static gboolean map_role(kvb_platform_map_t *m, uint32_t r, const nic_entry_t *v, size_t n,
			 GError **err)
{
	const char *o = m->origin;
	if (n == 0) {
		g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_MAP,
			    "%s: no %s NIC host (expected hosts named %c<node>-nic<k>, or with "
			    "properties kvb_role=%s, kvb_node, kvb_nic)",
			    o, role_name(r), r == KVB_PLATFORM_PREFILL ? 'p' : 'd', role_name(r));
		return FALSE;
	}
	uint32_t nodes = v[n - 1].node + 1;
	uint32_t nics = 0;
	size_t i = 0;
	for (uint32_t node = 0; node < nodes; node++) {
		size_t start = i;
		while (i < n && v[i].node == node)
			i++;
		if (i == start) {
			g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_MAP,
				    "%s: %s node %" PRIu32 " has no NIC host (%s nodes 0 to %" PRIu32
				    " are expected, node %" PRIu32 " has host '%s')",
				    o, role_name(r), node, role_name(r), nodes - 1, nodes - 1,
				    v[n - 1].name);
			return FALSE;
		}
		for (size_t j = start; j < i; j++) {
			uint32_t want = (uint32_t)(j - start);
			if (j > start && v[j].nic == v[j - 1].nic) {
				g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_MAP,
					    "%s: hosts '%s' and '%s' are both %s node %" PRIu32
					    " NIC %" PRIu32,
					    o, v[j - 1].name, v[j].name, role_name(r), node, v[j].nic);
				return FALSE;
			}
			if (v[j].nic != want) {
				g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_MAP,
					    "%s: %s node %" PRIu32 " has no NIC %" PRIu32
					    " (host '%s' is its NIC %" PRIu32 ")",
					    o, role_name(r), node, want, v[j].name, v[j].nic);
				return FALSE;
			}
		}
		uint32_t cnt = (uint32_t)(i - start);
		if (node == 0) {
			nics = cnt;
		} else if (cnt != nics) {
			g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_MAP,
				    "%s: %s node %" PRIu32 " has %" PRIu32 " NIC hosts (last '%s'), "
				    "node 0 has %" PRIu32 ": NIC counts must be equal within a role",
				    o, role_name(r), node, cnt, v[i - 1].name, nics);
			return FALSE;
		}
	}
	m->nodes[r] = nodes;
	m->nics[r] = nics;
	m->hosts[r] = g_new(sg_host_t, (size_t)nodes * nics);
	for (size_t j = 0; j < n; j++)
		m->hosts[r][(size_t)v[j].node * nics + v[j].nic] = v[j].host;
	return TRUE;
}

static uint64_t splitmix64(uint64_t x)
{
	x += UINT64_C(0x9E3779B97F4A7C15);
	x = (x ^ (x >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	x = (x ^ (x >> 27)) * UINT64_C(0x94D049BB133111EB);
	return x ^ (x >> 31);
}

/* Pairs to check: all when few, else every prefill NIC once, every decode
 * NIC once, then pseudo-random pairs (fixed seed) up to the maximum. */
static size_t pair_count(size_t np, size_t nd)
{
	if (np * nd <= KVB_PLATFORM_PAIR_CHECK_MAX)
		return np * nd;
	return MAX((size_t)KVB_PLATFORM_PAIR_CHECK_MAX, np + nd);
}

static void pair_at(size_t s, size_t np, size_t nd, size_t *i, size_t *j)
{
	if (np * nd <= KVB_PLATFORM_PAIR_CHECK_MAX) {
		*i = s / nd;
		*j = s % nd;
	} else if (s < np) {
		*i = s;
		*j = splitmix64(s) % nd;
	} else if (s < np + nd) {
		*i = splitmix64(s) % np;
		*j = s - np;
	} else {
		*i = splitmix64(2 * (uint64_t)s) % np;
		*j = splitmix64(2 * (uint64_t)s + 1) % nd;
	}
}

#define MARK "\x1fkvb-route "

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

/* The links every route out of (or into) one NIC host has used so far. */
typedef struct port_set {
	sg_link_t *v;
	unsigned n;
	bool seen;
} port_set_t;

static void port_intersect(port_set_t *p, xbt_dynar_t links)
{
	unsigned n = (unsigned)xbt_dynar_length(links);
	sg_link_t *l = xbt_dynar_get_ptr(links, 0);
	if (!p->seen) {
		p->v = g_memdup2(l, n * sizeof(*l));
		p->n = n;
		p->seen = true;
		return;
	}
	unsigned keep = 0;
	for (unsigned i = 0; i < p->n; i++) {
		for (unsigned j = 0; j < n; j++) {
			if (p->v[i] == l[j]) {
				p->v[keep++] = p->v[i];
				break;
			}
		}
	}
	p->n = keep;
}

/*
 * In the forked child: resolve every sampled route both ways, announcing
 * each before asking SimGrid, which aborts on a pair it cannot route.  A
 * NIC's own port is on every route out of (into) it: when the routes out of
 * a host share no link, it has no egress link of its own and would send at
 * unlimited rate.
 */
static void G_GNUC_NORETURN route_child(const kvb_platform_map_t *m, int fd)
{
	struct rlimit no_core = {0, 0};
	setrlimit(RLIMIT_CORE, &no_core);
	dup2(fd, STDERR_FILENO);
	size_t np = (size_t)m->nodes[0] * m->nics[0], nd = (size_t)m->nodes[1] * m->nics[1];
	size_t count = pair_count(np, nd);
	port_set_t *out = g_new0(port_set_t, np + nd), *in = g_new0(port_set_t, np + nd);
	xbt_dynar_t links = xbt_dynar_new(sizeof(sg_link_t), NULL);
	char line[96];
	int len;
	for (size_t s = 0; s < count; s++) {
		size_t i, j;
		pair_at(s, np, nd, &i, &j);
		for (int dir = 0; dir < 2; dir++) {
			size_t a = dir ? np + j : i, b = dir ? i : np + j;
			len = snprintf(line, sizeof(line), MARK "try %zu %zu %d\n", i, j, dir);
			write_all(fd, line, (size_t)len);
			xbt_dynar_reset(links);
			sg_host_get_route(dir ? m->hosts[1][j] : m->hosts[0][i],
					  dir ? m->hosts[0][i] : m->hosts[1][j], links);
			if (xbt_dynar_is_empty(links)) {
				len = snprintf(line, sizeof(line), MARK "empty\n");
				write_all(fd, line, (size_t)len);
				_exit(3);
			}
			port_intersect(&out[a], links);
			port_intersect(&in[b], links);
		}
	}
	for (size_t h = 0; h < np + nd; h++) {
		int bad = out[h].seen && out[h].n == 0 ? 0 : in[h].seen && in[h].n == 0 ? 1 : -1;
		if (bad >= 0) {
			len = snprintf(line, sizeof(line), MARK "noport %zu %d\n", h, bad);
			write_all(fd, line, (size_t)len);
			_exit(4);
		}
	}
	len = snprintf(line, sizeof(line), MARK "done %zu\n", count);
	write_all(fd, line, (size_t)len);
	for (size_t h = 0; h < np + nd; h++) {
		g_free(out[h].v);
		g_free(in[h].v);
	}
	g_free(out);
	g_free(in);
	xbt_dynar_free(&links);
	_exit(0);
}

/* SimGrid's own words from the child's stderr: the first CRITICAL line. */
static char *simgrid_message(const char *text)
{
	const char *c = strstr(text, "CRITICAL] ");
	if (!c)
		return NULL;
	c += strlen("CRITICAL] ");
	const char *e = strchr(c, '\n');
	return g_strstrip(e ? g_strndup(c, (size_t)(e - c)) : g_strdup(c));
}

static gboolean check_routes(kvb_platform_map_t *m, GError **err)
{
	int fds[2];
	if (pipe(fds) != 0) {
		g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_SYSTEM,
			    "%s: route check: pipe: %s", m->origin, g_strerror(errno));
		return FALSE;
	}
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		close(fds[0]);
		close(fds[1]);
		g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_SYSTEM,
			    "%s: route check: fork: %s", m->origin, g_strerror(e));
		return FALSE;
	}
	if (pid == 0) {
		close(fds[0]);
		route_child(m, fds[1]);
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
	int status = 0;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;

	/* the last pair announced, and how the child ended */
	size_t np = (size_t)m->nodes[0] * m->nics[0];
	size_t nd = (size_t)m->nodes[1] * m->nics[1];
	size_t i = 0, j = 0, done = 0, noport = 0;
	int dir = 0;
	gboolean tried = FALSE, empty = FALSE, finished = FALSE, no_port = FALSE;
	for (const char *p = strstr(out->str, MARK); p; p = strstr(p + 1, MARK)) {
		const char *a = p + strlen(MARK);
		if (sscanf(a, "try %zu %zu %d", &i, &j, &dir) == 3)
			tried = TRUE;
		else if (strncmp(a, "empty", 5) == 0)
			empty = TRUE;
		else if (sscanf(a, "noport %zu %d", &noport, &dir) == 2)
			no_port = noport < np + nd;
		else if (sscanf(a, "done %zu", &done) == 1)
			finished = TRUE;
	}
	/* "done" is the verdict: a checker under valgrind or ASan may still exit
	 * non-zero afterwards for what SimGrid leaves allocated */
	gboolean ok = finished;
	if (ok) {
		m->pairs_checked = done;
	} else if (no_port) {
		sg_host_t h = noport < np ? m->hosts[0][noport] : m->hosts[1][noport - np];
		g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_ROUTE,
			    "%s: the routes %s host '%s' share no link: it has no %s link of its "
			    "own (its %s would be unlimited)",
			    m->origin, dir ? "into" : "out of", sg_host_get_name(h),
			    dir ? "ingress" : "egress", dir ? "ingress" : "egress");
	} else if (!tried) {
		g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_SYSTEM,
			    "%s: route check died before the first pair (status 0x%x)", m->origin,
			    (unsigned)status);
	} else {
		if (i >= np || j >= nd) {
			i = 0;
			j = 0;
		}
		const char *a = sg_host_get_name(dir ? m->hosts[1][j] : m->hosts[0][i]);
		const char *b = sg_host_get_name(dir ? m->hosts[0][i] : m->hosts[1][j]);
		if (empty) {
			g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_ROUTE,
				    "%s: the route from host '%s' to host '%s' has no link (data "
				    "would move instantly): give every NIC host a link",
				    m->origin, a, b);
		} else {
			char *why = simgrid_message(out->str);
			g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_ROUTE,
				    "%s: no route from host '%s' to host '%s' (SimGrid: %s)", m->origin,
				    a, b, why ? why : "aborted while resolving it");
			g_free(why);
		}
	}
	g_string_free(out, TRUE);
	return ok;
}

void kvb_platform_map_free(kvb_platform_map_t *m)
{
	if (!m)
		return;
	g_free(m->hosts[0]);
	g_free(m->hosts[1]);
	g_free(m->origin);
	g_free(m);
}

gboolean kvb_platform_map_build(const char *origin, kvb_platform_map_t **out, GError **err)
{
	g_return_val_if_fail(out != NULL, FALSE);
	*out = NULL;
	if (!origin)
		origin = "platform";

	if (sg_host_count() == 0) {
		g_set_error(err, KVB_PLATFORM_ERROR, KVB_PLATFORM_ERROR_MAP,
			    "%s: SimGrid has no host: load the platform first", origin);
		return FALSE;
	}
	/* routes through routers exist only once the platform is sealed */
	simgrid_run_until(0.0);

	size_t n_hosts = sg_host_count();
	sg_host_t *hosts = sg_host_list();
	nic_entry_t *v = g_new(nic_entry_t, n_hosts ? n_hosts : 1);
	kvb_platform_map_t *m = g_new0(kvb_platform_map_t, 1);
	m->origin = g_strdup(origin);
	size_t n = 0;
	gboolean ok = TRUE;
	for (size_t h = 0; ok && h < n_hosts; h++) {
		int c = classify_host(origin, hosts[h], &v[n], err);
		if (c < 0)
			ok = FALSE;
		else if (c > 0)
			n++;
		else
			m->ignored_hosts++;
	}
	xbt_free(hosts);
	if (ok) {
		qsort(v, n, sizeof(*v), entry_cmp);
		size_t split = 0;
		while (split < n && v[split].role == KVB_PLATFORM_PREFILL)
			split++;
		ok = map_role(m, KVB_PLATFORM_PREFILL, v, split, err) &&
		     map_role(m, KVB_PLATFORM_DECODE, v + split, n - split, err);
	}
	g_free(v);
	if (ok)
		ok = check_routes(m, err);
	if (!ok) {
		kvb_platform_map_free(m);
		return FALSE;
	}
	*out = m;
	return TRUE;
}
