/*
 * Connector configuration: defaults, GKeyFile loading, environment
 * overrides, range checks and the canonical text form.
 *
 * One table (config_keys) describes every scalar key: its group, its field,
 * how it parses and its allowed range.  The file loader, the environment
 * loader and kvb_config_validate all check against that table, so a value a
 * loader accepts is one validate accepts, and the messages read the same.
 * Cross-key rules (tp_rank < tp_size, fragment_limit < slice_size, KV heads
 * against tp_size) live only in kvb_config_validate: they can be judged only
 * after every source has been applied.
 */
#include "config.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/config.h>

#define NS_PER_S UINT64_C(1000000000)
#define SECONDS_MAX UINT64_C(1000000000) /* 1e9 s, about 31.7 years */
#define SLICE_MIN ((uint64_t)KVB_SLICE_SIZE_MIN)
#define SLICE_MAX ((uint64_t)KVB_SLICE_SIZE_MAX)
#define QUEUE_DEPTH_MAX (UINT64_C(1) << 24)

#define GROUP_CONNECTOR "connector"
#define GROUP_TRANSFER "transfer"
#define GROUP_PREFERRED "topology.preferred"
#define GROUP_SECONDARY "topology.secondary"

G_DEFINE_QUARK(kvb-config-error-quark, kvb_config_error)

/* ---- key table --------------------------------------------------------- */

typedef enum key_kind {
	KEY_U32 = 1,     /* decimal integer into a uint32_t */
	KEY_U64 = 2,     /* decimal integer into a uint64_t */
	KEY_SECONDS = 3, /* decimal seconds into a uint64_t of nanoseconds */
	KEY_ROLE = 4,    /* kvb_role_t */
	KEY_ENGINE = 5,  /* char[KVB_ENGINE_ID_MAX], verbatim */
	KEY_POLICY = 6,  /* char[KVB_POLICY_NAME_MAX], whitespace stripped */
	KEY_LEASE = 7,   /* kvb_lease_policy_t */
} key_kind_t;

typedef struct key_desc {
	const char *group;
	const char *key;
	key_kind_t kind;
	size_t off;
	uint64_t min; /* KEY_SECONDS: nanoseconds; a min of 1 ns reads "> 0" */
	uint64_t max;
} key_desc_t;

#define F(field) offsetof(kvb_config_t, field)

static const key_desc_t config_keys[] = {
	{GROUP_CONNECTOR, "role", KEY_ROLE, F(role), 0, 0},
	{GROUP_CONNECTOR, "engine_id", KEY_ENGINE, F(engine_id), 1, KVB_ENGINE_ID_MAX - 1},
	{GROUP_CONNECTOR, "dp_rank", KEY_U32, F(dp_rank), 0, UINT32_MAX},
	{GROUP_CONNECTOR, "tp_rank", KEY_U32, F(tp_rank), 0, UINT32_MAX},
	{GROUP_CONNECTOR, "tp_size", KEY_U32, F(tp_size), 1, UINT32_MAX},
	{GROUP_CONNECTOR, "total_kv_heads", KEY_U32, F(total_kv_heads), 0, UINT32_MAX},
	{GROUP_CONNECTOR, "bootstrap_port", KEY_U32, F(bootstrap_port), 1, 65535},
	{GROUP_CONNECTOR, "abort_request_timeout", KEY_SECONDS, F(abort_timeout_ns), 1,
	 SECONDS_MAX * NS_PER_S},
	{GROUP_CONNECTOR, "consumer_timeout", KEY_SECONDS, F(consumer_timeout_ns), 0,
	 SECONDS_MAX * NS_PER_S},
	{GROUP_CONNECTOR, "unprefilled_wait", KEY_SECONDS, F(unprefilled_wait_ns), 0,
	 SECONDS_MAX * NS_PER_S},
	{GROUP_CONNECTOR, "tombstone_max", KEY_U32, F(tombstone_max), 0, UINT32_MAX},
	{GROUP_CONNECTOR, "lease_policy", KEY_LEASE, F(lease_policy), 0, 0},
	{GROUP_CONNECTOR, "heartbeat_interval", KEY_SECONDS, F(heartbeat_interval_ns), 1000,
	 SECONDS_MAX * NS_PER_S},
	{GROUP_CONNECTOR, "lease_min", KEY_SECONDS, F(lease_min_ns), 1, SECONDS_MAX * NS_PER_S},
	{GROUP_CONNECTOR, "lease_max", KEY_SECONDS, F(lease_max_ns), 0, SECONDS_MAX * NS_PER_S},
	{GROUP_CONNECTOR, "adaptive_factor", KEY_U32, F(adaptive_factor), 1, 1000},
	{GROUP_TRANSFER, "slice_size", KEY_U64, F(slice_size), SLICE_MIN, SLICE_MAX},
	{GROUP_TRANSFER, "fragment_limit", KEY_U64, F(fragment_limit), 0, SLICE_MAX - 1},
	{GROUP_TRANSFER, "nic_policy", KEY_POLICY, F(nic_policy), 1, KVB_POLICY_NAME_MAX - 1},
	{GROUP_TRANSFER, "seed", KEY_U64, F(seed), 0, UINT64_MAX},
	{GROUP_TRANSFER, "nic_queue_depth", KEY_U32, F(nic_queue_depth), 1, QUEUE_DEPTH_MAX},
	{GROUP_TRANSFER, "slice_retries", KEY_U32, F(slice_retries), 0, UINT32_MAX},
	{GROUP_TRANSFER, "nic_error_threshold", KEY_U32, F(nic_error_threshold), 1, UINT32_MAX},
	{GROUP_TRANSFER, "nic_cooldown", KEY_SECONDS, F(nic_cooldown_ns), 0, SECONDS_MAX * NS_PER_S},
};

#undef F

#define N_KEYS (sizeof(config_keys) / sizeof(config_keys[0]))

/* Environment variables, each an alias of one file key. */
static const struct {
	const char *var;
	const char *key;
} config_env[] = {
	{"VLLM_MOONCAKE_BOOTSTRAP_PORT", "bootstrap_port"},
	{"VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT", "abort_request_timeout"},
	{"MC_SLICE_SIZE", "slice_size"},
};

static const key_desc_t *key_find(const char *group, const char *key)
{
	for (size_t i = 0; i < N_KEYS; i++)
		if ((!group || strcmp(config_keys[i].group, group) == 0) &&
		    strcmp(config_keys[i].key, key) == 0)
			return &config_keys[i];
	return NULL;
}

static uint64_t field_get(const kvb_config_t *cfg, const key_desc_t *d)
{
	const char *p = (const char *)cfg + d->off;
	if (d->kind == KEY_U32) {
		uint32_t v;
		memcpy(&v, p, sizeof(v));
		return v;
	}
	uint64_t v;
	memcpy(&v, p, sizeof(v));
	return v;
}

static void field_set(kvb_config_t *cfg, const key_desc_t *d, uint64_t v)
{
	char *p = (char *)cfg + d->off;
	if (d->kind == KEY_U32) {
		uint32_t v32 = (uint32_t)v;
		memcpy(p, &v32, sizeof(v32));
	} else {
		memcpy(p, &v, sizeof(v));
	}
}

/* ---- number parsing and printing ---------------------------------------- */

/* Strict decimal: digits only (no sign, no space, no base prefix), no
 * overflow.  strtoull would take "-1", " 12" and "0x10". */
static gboolean parse_u64(const char *s, uint64_t *out)
{
	uint64_t v = 0;
	if (!*s)
		return FALSE;
	for (; *s; s++) {
		if (!g_ascii_isdigit(*s))
			return FALSE;
		unsigned d = (unsigned)(*s - '0');
		if (v > (UINT64_MAX - d) / 10)
			return FALSE;
		v = v * 10 + d;
	}
	*out = v;
	return TRUE;
}

/*
 * Seconds as exact decimal: "480", "0.5", ".25", "2." with at most nine
 * significant fraction digits (nanoseconds).  No float is involved, so
 * "0.1" is exactly 100000000 ns and NaN, inf, exponents and signs cannot get
 * in.  Values above SECONDS_MAX are rejected here so the multiply below
 * cannot overflow.
 */
static gboolean parse_seconds(const char *s, uint64_t *ns, gboolean *too_big)
{
	uint64_t whole = 0, frac = 0;
	unsigned n_digits = 0, n_frac = 0;
	*too_big = FALSE;
	for (; g_ascii_isdigit(*s); s++, n_digits++) {
		if (whole <= SECONDS_MAX)
			whole = whole * 10 + (uint64_t)(*s - '0');
	}
	if (*s == '.') {
		for (s++; g_ascii_isdigit(*s); s++, n_digits++) {
			if (n_frac < 9) {
				frac = frac * 10 + (uint64_t)(*s - '0');
				n_frac++;
			} else if (*s != '0') {
				return FALSE; /* finer than a nanosecond */
			}
		}
	}
	if (*s || n_digits == 0)
		return FALSE;
	for (; n_frac < 9; n_frac++)
		frac *= 10;
	if (whole > SECONDS_MAX || (whole == SECONDS_MAX && frac)) {
		*too_big = TRUE;
		return FALSE;
	}
	*ns = whole * NS_PER_S + frac;
	return TRUE;
}

/* Nanoseconds as the shortest exact decimal seconds ("0.5", "480"). */
static void format_seconds(uint64_t ns, char *buf, size_t len)
{
	uint64_t frac = ns % NS_PER_S;
	if (!frac) {
		snprintf(buf, len, "%" PRIu64, ns / NS_PER_S);
		return;
	}
	int digits = 9;
	while (frac % 10 == 0) {
		frac /= 10;
		digits--;
	}
	snprintf(buf, len, "%" PRIu64 ".%0*" PRIu64, ns / NS_PER_S, digits, frac);
}

/* The allowed range of a key, as put in error messages. */
static void describe_range(const key_desc_t *d, char *buf, size_t len)
{
	char lo[32], hi[32];
	switch (d->kind) {
	case KEY_U32:
	case KEY_U64:
		snprintf(buf, len, "an integer in [%" PRIu64 ", %" PRIu64 "]", d->min, d->max);
		break;
	case KEY_SECONDS:
		format_seconds(d->min, lo, sizeof(lo));
		format_seconds(d->max, hi, sizeof(hi));
		if (d->min == 1)
			snprintf(buf, len, "seconds in (0, %s], at most 9 decimals", hi);
		else
			snprintf(buf, len, "seconds in [%s, %s], at most 9 decimals", lo, hi);
		if (d->off == offsetof(kvb_config_t, consumer_timeout_ns))
			g_strlcat(buf, " (0 = abort_request_timeout + 60)", len);
		break;
	case KEY_ROLE:
		snprintf(buf, len, "kv_producer, kv_consumer or kv_both");
		break;
	case KEY_LEASE:
		snprintf(buf, len, "fixed, heartbeat or adaptive");
		break;
	case KEY_ENGINE:
		snprintf(buf, len, "%" PRIu64 " to %" PRIu64 " bytes", d->min, d->max);
		break;
	case KEY_POLICY:
		snprintf(buf, len, "%" PRIu64 " to %" PRIu64 " printable characters without space",
			 d->min, d->max);
		break;
	}
}

/* ---- defaults, copy, clear ------------------------------------------------ */

void kvb_config_init(kvb_config_t *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->role = KVB_ROLE_BOTH;
	g_strlcpy(cfg->engine_id, "kvbridge", sizeof(cfg->engine_id));
	cfg->dp_rank = 0;
	cfg->tp_rank = 0;
	cfg->tp_size = 1;
	cfg->total_kv_heads = 0;
	cfg->bootstrap_port = KVB_DEFAULT_BOOTSTRAP_PORT;
	cfg->abort_timeout_ns = (uint64_t)KVB_DEFAULT_ABORT_TIMEOUT_S * NS_PER_S;
	cfg->consumer_timeout_ns = 0;
	cfg->slice_size = 65536;
	cfg->fragment_limit = 16384;
	g_strlcpy(cfg->nic_policy, "round_robin", sizeof(cfg->nic_policy));
	cfg->seed = 1;
	cfg->nic_queue_depth = 64;
	cfg->slice_retries = 3;
	cfg->nic_error_threshold = 3;
	cfg->nic_cooldown_ns = 30 * NS_PER_S;
	cfg->tombstone_max = 65536;
	cfg->lease_policy = KVB_LEASE_FIXED;
	cfg->heartbeat_interval_ns = 5 * NS_PER_S;
	cfg->lease_min_ns = 5 * NS_PER_S;
	cfg->lease_max_ns = 0;
	cfg->adaptive_factor = 2;
	cfg->topology = NULL;
	cfg->n_topology = 0;
}

static void topology_free(kvb_config_t *cfg)
{
	for (uint32_t i = 0; i < cfg->n_topology && cfg->topology; i++) {
		g_strfreev(cfg->topology[i].preferred);
		g_strfreev(cfg->topology[i].secondary);
	}
	g_free(cfg->topology);
	cfg->topology = NULL;
	cfg->n_topology = 0;
}

void kvb_config_clear(kvb_config_t *cfg)
{
	if (!cfg)
		return;
	topology_free(cfg);
	kvb_config_init(cfg);
}

/* dst must hold a config (kvb_config_init or all zero): what it owns is
 * freed before the copy, so copying into a used config does not leak. */
void kvb_config_copy(kvb_config_t *dst, const kvb_config_t *src)
{
	if (!dst || !src || dst == src)
		return;
	topology_free(dst);
	*dst = *src;
	dst->topology = NULL;
	dst->n_topology = 0;
	if (!src->n_topology || !src->topology)
		return;
	dst->topology = g_new0(kvb_topology_names_t, src->n_topology);
	for (uint32_t i = 0; i < src->n_topology; i++) {
		memcpy(dst->topology[i].location, src->topology[i].location, KVB_LOCATION_MAX);
		dst->topology[i].preferred = g_strdupv(src->topology[i].preferred);
		dst->topology[i].secondary = g_strdupv(src->topology[i].secondary);
	}
	dst->n_topology = src->n_topology;
}

uint64_t kvb_config_consumer_timeout(const kvb_config_t *cfg)
{
	if (cfg->consumer_timeout_ns)
		return cfg->consumer_timeout_ns;
	uint64_t extra = (uint64_t)KVB_CONSUMER_TIMEOUT_EXTRA_S * NS_PER_S;
	if (cfg->abort_timeout_ns > UINT64_MAX - extra)
		return UINT64_MAX;
	return cfg->abort_timeout_ns + extra;
}

/* ---- roles ----------------------------------------------------------------- */

const char *kvb_role_name(kvb_role_t role)
{
	switch (role) {
	case KVB_ROLE_PRODUCER: return "kv_producer";
	case KVB_ROLE_CONSUMER: return "kv_consumer";
	case KVB_ROLE_BOTH: return "kv_both";
	}
	return "unknown";
}

int kvb_role_parse(const char *name, kvb_role_t *role)
{
	static const struct {
		const char *name;
		kvb_role_t role;
	} names[] = {
		{"kv_producer", KVB_ROLE_PRODUCER}, {"producer", KVB_ROLE_PRODUCER},
		{"kv_consumer", KVB_ROLE_CONSUMER}, {"consumer", KVB_ROLE_CONSUMER},
		{"kv_both", KVB_ROLE_BOTH},         {"both", KVB_ROLE_BOTH},
	};
	if (!role)
		return KVB_ERR_INVALID;
	if (!name)
		return KVB_ERR_CONFIG;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcmp(names[i].name, name) == 0) {
			*role = names[i].role;
			return KVB_OK;
		}
	}
	return KVB_ERR_CONFIG;
}

/* ---- names in the topology ------------------------------------------------ */

/* A location is a GKeyFile key that round-trips: printable ASCII without
 * space, '=', '[' or ']' (']' and '[' would read as a locale suffix), not
 * starting with '#' (a comment line), shorter than KVB_LOCATION_MAX. */
static gboolean location_ok(const char *s)
{
	size_t n = strnlen(s, KVB_LOCATION_MAX);
	if (n == 0 || n >= KVB_LOCATION_MAX || s[0] == '#')
		return FALSE;
	for (size_t i = 0; i < n; i++)
		if (s[i] <= ' ' || s[i] > '~' || s[i] == '=' || s[i] == '[' || s[i] == ']')
			return FALSE;
	return TRUE;
}

/* A name: 1 .. max - 1 printable ASCII characters, none of them a blank
 * or in `forbid`.  The text form writes it as it is and reads it back the
 * same (surrounding blanks would be stripped). */
static gboolean name_ok(const char *s, size_t max, const char *forbid)
{
	size_t n = strnlen(s, max);
	if (n == 0 || n >= max)
		return FALSE;
	for (size_t i = 0; i < n; i++)
		if (s[i] <= ' ' || s[i] > '~' || strchr(forbid, s[i]))
			return FALSE;
	return TRUE;
}

/* A NIC name ("mlx5_0", "erdma_1", "eth0"); ';' separates the list. */
static gboolean nic_name_ok(const char *s)
{
	return name_ok(s, KVB_NIC_NAME_MAX, ";");
}

static gboolean policy_name_ok(const char *s)
{
	return name_ok(s, KVB_POLICY_NAME_MAX, "");
}

static const char nic_name_rule[] = "1 to 63 printable characters without space or ';'";

/* ---- validation ---------------------------------------------------------- */

static int check_nic_list(char **names, const char *location, const char *which, kvb_err_t *err)
{
	uint32_t n = 0;
	for (char **p = names; p && *p; p++, n++) {
		if (n == KVB_MAX_NICS)
			return kvb_err_set(err, KVB_ERR_CONFIG,
					   "[%s] %s lists more than %u NICs", which, location,
					   KVB_MAX_NICS);
		if (!nic_name_ok(*p))
			return kvb_err_set(err, KVB_ERR_CONFIG,
					   "[%s] %s: NIC name '%s' invalid (%s)", which, location,
					   *p, nic_name_rule);
		for (char **q = names; q != p; q++)
			if (strcmp(*q, *p) == 0)
				return kvb_err_set(err, KVB_ERR_CONFIG,
						   "[%s] %s lists NIC '%s' twice", which, location,
						   *p);
	}
	return KVB_OK;
}

int kvb_config_validate(const kvb_config_t *cfg, kvb_err_t *err)
{
	char range[128];
	if (!cfg)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_config_validate: config is NULL");
	if (cfg->role != KVB_ROLE_PRODUCER && cfg->role != KVB_ROLE_CONSUMER &&
	    cfg->role != KVB_ROLE_BOTH)
		return kvb_err_set(err, KVB_ERR_CONFIG,
				   "role = %d: expected kv_producer, kv_consumer or kv_both",
				   (int)cfg->role);
	size_t n = strnlen(cfg->engine_id, KVB_ENGINE_ID_MAX);
	if (n == 0 || n >= KVB_ENGINE_ID_MAX || !g_utf8_validate(cfg->engine_id, -1, NULL))
		return kvb_err_set(err, KVB_ERR_CONFIG,
				   "engine_id = '%.*s': expected 1 to %u bytes of UTF-8",
				   (int)(n < 64 ? n : 64), cfg->engine_id, KVB_ENGINE_ID_MAX - 1);
	n = strnlen(cfg->nic_policy, KVB_POLICY_NAME_MAX);
	if (!policy_name_ok(cfg->nic_policy))
		return kvb_err_set(err, KVB_ERR_CONFIG,
				   "nic_policy = '%.*s': expected 1 to %u printable characters without space",
				   (int)n, cfg->nic_policy, KVB_POLICY_NAME_MAX - 1);
	for (size_t i = 0; i < N_KEYS; i++) {
		const key_desc_t *d = &config_keys[i];
		if (d->kind != KEY_U32 && d->kind != KEY_U64 && d->kind != KEY_SECONDS)
			continue;
		uint64_t v = field_get(cfg, d);
		if (v >= d->min && v <= d->max)
			continue;
		describe_range(d, range, sizeof(range));
		if (d->kind == KEY_SECONDS) {
			char s[48];
			if (v / NS_PER_S > SECONDS_MAX)
				snprintf(s, sizeof(s), "%" PRIu64 " ns", v);
			else
				format_seconds(v, s, sizeof(s));
			return kvb_err_set(err, KVB_ERR_CONFIG, "%s = %s: out of range, expected %s",
					   d->key, s, range);
		}
		return kvb_err_set(err, KVB_ERR_CONFIG, "%s = %" PRIu64 ": out of range, expected %s",
				   d->key, v, range);
	}
	if (cfg->tp_rank >= cfg->tp_size)
		return kvb_err_set(err, KVB_ERR_CONFIG, "tp_rank = %u: must be < tp_size = %u",
				   cfg->tp_rank, cfg->tp_size);
	if (cfg->lease_policy < KVB_LEASE_FIXED || cfg->lease_policy > KVB_LEASE_ADAPTIVE)
		return kvb_err_set(err, KVB_ERR_CONFIG,
				   "lease_policy = %d: expected fixed, heartbeat or adaptive",
				   (int)cfg->lease_policy);
	if (cfg->lease_policy == KVB_LEASE_ADAPTIVE && cfg->lease_min_ns > kvb_config_lease_max(cfg))
		return kvb_err_set(err, KVB_ERR_CONFIG,
				   "lease_min = %.3f s: must be <= lease_max = %.3f s for the adaptive lease",
				   (double)cfg->lease_min_ns / 1e9, (double)kvb_config_lease_max(cfg) / 1e9);
	if (cfg->fragment_limit >= cfg->slice_size)
		return kvb_err_set(err, KVB_ERR_CONFIG,
				   "fragment_limit = %" PRIu64 ": must be < slice_size = %" PRIu64,
				   cfg->fragment_limit, cfg->slice_size);
	if (cfg->total_kv_heads && cfg->total_kv_heads % cfg->tp_size &&
	    cfg->tp_size % cfg->total_kv_heads)
		return kvb_err_set(err, KVB_ERR_CONFIG,
				   "total_kv_heads = %u: must divide tp_size = %u or be a multiple of it",
				   cfg->total_kv_heads, cfg->tp_size);
	if (cfg->n_topology && !cfg->topology)
		return kvb_err_set(err, KVB_ERR_CONFIG, "topology: %u entries but no array",
				   cfg->n_topology);
	for (uint32_t i = 0; i < cfg->n_topology; i++) {
		const kvb_topology_names_t *t = &cfg->topology[i];
		if (!location_ok(t->location))
			return kvb_err_set(err, KVB_ERR_CONFIG,
					   "topology location '%.*s' invalid (1 to %u printable characters "
					   "without space, '=', '[' or ']', not starting with '#')",
					   (int)strnlen(t->location, KVB_LOCATION_MAX), t->location,
					   KVB_LOCATION_MAX - 1);
		for (uint32_t j = 0; j < i; j++)
			if (strcmp(cfg->topology[j].location, t->location) == 0)
				return kvb_err_set(err, KVB_ERR_CONFIG,
						   "topology location '%s' appears twice", t->location);
		int rc = check_nic_list(t->preferred, t->location, GROUP_PREFERRED, err);
		if (rc == KVB_OK)
			rc = check_nic_list(t->secondary, t->location, GROUP_SECONDARY, err);
		if (rc != KVB_OK)
			return rc;
	}
	kvb_err_clear(err);
	return KVB_OK;
}

/* 64-bit arithmetic: dp_rank * tp_size + tp_rank + base is at most
 * (2^32 - 1)^2 + 2 * (2^32 - 1) < 2^64, so only the 65535 check can fail. */
int kvb_config_worker_port(const kvb_config_t *cfg, uint32_t *port, kvb_err_t *err)
{
	if (!cfg || !port)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_config_worker_port: NULL argument");
	if (cfg->bootstrap_port < 1 || cfg->bootstrap_port > 65535)
		return kvb_err_set(err, KVB_ERR_CONFIG,
				   "bootstrap_port = %u: out of range, expected an integer in [1, 65535]",
				   cfg->bootstrap_port);
	uint64_t p = (uint64_t)cfg->bootstrap_port + (uint64_t)cfg->dp_rank * cfg->tp_size +
		     cfg->tp_rank;
	if (p > 65535)
		return kvb_err_set(err, KVB_ERR_CONFIG,
				   "worker port = bootstrap_port %u + dp_rank %u * tp_size %u + tp_rank %u "
				   "= %" PRIu64 ": exceeds 65535",
				   cfg->bootstrap_port, cfg->dp_rank, cfg->tp_size, cfg->tp_rank, p);
	*port = (uint32_t)p;
	kvb_err_clear(err);
	return KVB_OK;
}

/* ---- applying one value --------------------------------------------------- */

/*
 * Parse text for key d and store it in cfg.  `where` names the source
 * ("cfg.ini: [connector] tp_size" or "environment variable MC_SLICE_SIZE").
 * Numbers and names are whitespace-stripped (GKeyFile keeps trailing
 * blanks); engine_id is taken verbatim.
 */
static gboolean apply_value(kvb_config_t *cfg, const key_desc_t *d, const char *text,
			    const char *where, GError **error)
{
	char range[128];
	const char *why = "out of range";
	char *s = g_strstrip(g_strdup(text));
	uint64_t v = 0;
	gboolean ok = FALSE;
	size_t n;

	switch (d->kind) {
	case KEY_U32:
	case KEY_U64:
		if (!parse_u64(s, &v)) {
			gboolean digits = *s != '\0';
			for (const char *p = s; *p; p++)
				digits = digits && g_ascii_isdigit(*p);
			why = digits ? "out of range" : "not a decimal integer";
			break;
		}
		ok = v >= d->min && v <= d->max;
		if (ok)
			field_set(cfg, d, v);
		break;
	case KEY_SECONDS: {
		gboolean too_big;
		if (!parse_seconds(s, &v, &too_big)) {
			why = too_big ? "out of range" : "not a decimal number of seconds";
			break;
		}
		ok = v >= d->min && v <= d->max;
		if (ok)
			field_set(cfg, d, v);
		break;
	}
	case KEY_ROLE:
		why = "unknown role";
		ok = kvb_role_parse(s, &cfg->role) == KVB_OK;
		break;
	case KEY_LEASE:
		why = "unknown lease policy";
		ok = kvb_lease_policy_parse(s, &cfg->lease_policy) == KVB_OK;
		break;
	case KEY_ENGINE:
		n = strlen(text);
		why = "wrong length";
		ok = n >= d->min && n <= d->max;
		if (ok)
			g_strlcpy(cfg->engine_id, text, sizeof(cfg->engine_id));
		break;
	case KEY_POLICY:
		why = strlen(s) > d->max || !*s ? "wrong length" : "bad character";
		ok = policy_name_ok(s);
		if (ok)
			g_strlcpy(cfg->nic_policy, s, sizeof(cfg->nic_policy));
		break;
	}
	if (!ok) {
		describe_range(d, range, sizeof(range));
		g_set_error(error, KVB_CONFIG_ERROR, KVB_CONFIG_ERROR_INVALID,
			    "%s = '%s': %s, expected %s%s", where, text, why, range,
			    d->kind != KEY_ENGINE && strchr(text, '#')
				    ? " (GKeyFile has no end-of-line comments: put '#' comments on "
				      "their own line)"
				    : "");
	}
	g_free(s);
	return ok;
}

/* ---- GKeyFile loading ------------------------------------------------------ */

static kvb_topology_names_t *topology_entry(kvb_config_t *cfg, const char *location)
{
	for (uint32_t i = 0; i < cfg->n_topology; i++)
		if (strcmp(cfg->topology[i].location, location) == 0)
			return &cfg->topology[i];
	cfg->topology = g_renew(kvb_topology_names_t, cfg->topology, cfg->n_topology + 1);
	kvb_topology_names_t *t = &cfg->topology[cfg->n_topology++];
	memset(t, 0, sizeof(*t));
	g_strlcpy(t->location, location, sizeof(t->location));
	t->preferred = g_new0(char *, 1);
	t->secondary = g_new0(char *, 1);
	return t;
}

/* One topology key: location = NIC;NIC;...  Replaces that location's list. */
static gboolean load_topology_key(kvb_config_t *cfg, GKeyFile *kf, const char *origin,
				  const char *group, const char *location, gboolean preferred,
				  GError **error)
{
	if (!location_ok(location)) {
		g_set_error(error, KVB_CONFIG_ERROR, KVB_CONFIG_ERROR_INVALID,
			    "%s: [%s] location '%s' invalid: expected 1 to %u printable characters "
			    "without space, '=', '[' or ']' (e.g. cuda:0, cpu:1, *)",
			    origin, group, location, KVB_LOCATION_MAX - 1);
		return FALSE;
	}
	gsize n = 0;
	GError *e = NULL;
	/* GKeyFile may return a value and set an error (bad escape) */
	char **names = g_key_file_get_string_list(kf, group, location, &n, &e);
	if (e || !names) {
		g_strfreev(names);
		if (!e)
			g_set_error(&e, KVB_CONFIG_ERROR, KVB_CONFIG_ERROR_INVALID, "unreadable");
		g_propagate_prefixed_error(error, e, "%s: [%s] %s: ", origin, group, location);
		return FALSE;
	}
	char *raw = g_key_file_get_value(kf, group, location, NULL);
	gboolean ok = TRUE;
	if (n > KVB_MAX_NICS) {
		g_set_error(error, KVB_CONFIG_ERROR, KVB_CONFIG_ERROR_INVALID,
			    "%s: [%s] %s = '%s': %" G_GSIZE_FORMAT " NICs, expected at most %u",
			    origin, group, location, raw ? raw : "", n, KVB_MAX_NICS);
		ok = FALSE;
	}
	for (gsize i = 0; ok && i < n; i++) {
		g_strstrip(names[i]);
		if (!nic_name_ok(names[i])) {
			g_set_error(error, KVB_CONFIG_ERROR, KVB_CONFIG_ERROR_INVALID,
				    "%s: [%s] %s = '%s': NIC name '%s' invalid, expected %s", origin,
				    group, location, raw ? raw : "", names[i], nic_name_rule);
			ok = FALSE;
		}
		for (gsize j = 0; ok && j < i; j++) {
			if (strcmp(names[i], names[j]) == 0) {
				g_set_error(error, KVB_CONFIG_ERROR, KVB_CONFIG_ERROR_INVALID,
					    "%s: [%s] %s = '%s': NIC '%s' listed twice", origin, group,
					    location, raw ? raw : "", names[i]);
				ok = FALSE;
			}
		}
	}
	g_free(raw);
	if (!ok) {
		g_strfreev(names);
		return FALSE;
	}
	kvb_topology_names_t *t = topology_entry(cfg, location);
	char ***slot = preferred ? &t->preferred : &t->secondary;
	g_strfreev(*slot);
	*slot = names;
	return TRUE;
}

static gboolean load_scalar_key(kvb_config_t *cfg, GKeyFile *kf, const char *origin,
				const char *group, const key_desc_t *d, GError **error)
{
	/* engine_id is a string: GKeyFile escapes (\s, \n, \\) apply; the
	 * rest are read raw so that an escape is just a bad value. */
	GError *e = NULL;
	char *text = d->kind == KEY_ENGINE ? g_key_file_get_string(kf, group, d->key, &e)
					   : g_key_file_get_value(kf, group, d->key, &e);
	if (e || !text) {
		/* GKeyFile may return a value and set an error (bad escape) */
		g_free(text);
		if (!e)
			g_set_error(&e, KVB_CONFIG_ERROR, KVB_CONFIG_ERROR_INVALID, "unreadable");
		g_propagate_prefixed_error(error, e, "%s: [%s] %s: ", origin, group, d->key);
		return FALSE;
	}
	char *where = g_strdup_printf("%s: [%s] %s", origin, group, d->key);
	gboolean ok = apply_value(cfg, d, text, where, error);
	g_free(where);
	g_free(text);
	return ok;
}

static const char *const known_groups[] = {GROUP_CONNECTOR, GROUP_TRANSFER, GROUP_PREFERRED,
					   GROUP_SECONDARY};

static gboolean load_group(kvb_config_t *cfg, GKeyFile *kf, const char *origin, const char *group,
			   GError **error)
{
	gboolean topo = strcmp(group, GROUP_PREFERRED) == 0 || strcmp(group, GROUP_SECONDARY) == 0;
	char **keys = g_key_file_get_keys(kf, group, NULL, error);
	if (!keys) {
		g_prefix_error(error, "%s: ", origin);
		return FALSE;
	}
	GHashTable *seen = g_hash_table_new(g_str_hash, g_str_equal);
	gboolean ok = TRUE;
	for (char **k = keys; ok && *k; k++) {
		/* GKeyFile keeps a repeated key twice and reads the last one:
		 * say so instead of silently dropping the first. */
		if (!g_hash_table_add(seen, *k)) {
			g_set_error(error, KVB_CONFIG_ERROR, KVB_CONFIG_ERROR_INVALID,
				    "%s: [%s] %s given more than once", origin, group, *k);
			ok = FALSE;
		} else if (topo) {
			ok = load_topology_key(cfg, kf, origin, group, *k,
					       strcmp(group, GROUP_PREFERRED) == 0, error);
		} else {
			const key_desc_t *d = key_find(group, *k);
			if (!d) {
				GString *known = g_string_new(NULL);
				for (size_t i = 0; i < N_KEYS; i++)
					if (strcmp(config_keys[i].group, group) == 0)
						g_string_append_printf(known, "%s%s",
								       known->len ? ", " : "",
								       config_keys[i].key);
				g_set_error(error, KVB_CONFIG_ERROR, KVB_CONFIG_ERROR_UNKNOWN_KEY,
					    "%s: [%s] unknown key '%s' (known keys: %s)", origin, group,
					    *k, known->str);
				g_string_free(known, TRUE);
				ok = FALSE;
			} else {
				ok = load_scalar_key(cfg, kf, origin, group, d, error);
			}
		}
	}
	g_hash_table_destroy(seen);
	g_strfreev(keys);
	return ok;
}

/*
 * Everything is applied to a copy and committed only when the whole file
 * was good, so a failed load leaves cfg exactly as it was.  Groups are
 * applied in a fixed order (topology.preferred before topology.secondary),
 * so the topology entries come out in the same order whatever the order of
 * groups in the file; kvb_config_to_string relies on this.
 */
gboolean kvb_config_load_data(kvb_config_t *cfg, const char *data, gsize len, const char *origin,
			      GError **error)
{
	g_return_val_if_fail(cfg != NULL, FALSE);
	g_return_val_if_fail(data != NULL || len == 0, FALSE);
	g_return_val_if_fail(error == NULL || *error == NULL, FALSE);
	if (!origin)
		origin = "configuration data";
	if (!data)
		data = "";
	gsize n = len == (gsize)-1 ? strlen(data) : len;
	if (memchr(data, '\0', n)) {
		g_set_error(error, KVB_CONFIG_ERROR, KVB_CONFIG_ERROR_INVALID,
			    "%s: contains a NUL byte at offset %" G_GSIZE_FORMAT, origin,
			    (gsize)((const char *)memchr(data, '\0', n) - data));
		return FALSE;
	}

	GKeyFile *kf = g_key_file_new();
	/* KEEP_TRANSLATIONS: without it "tp_size[de] = 4" would vanish
	 * silently; with it, it is an unknown key. */
	if (!g_key_file_load_from_data(kf, data, n, G_KEY_FILE_KEEP_TRANSLATIONS, error)) {
		g_prefix_error(error, "%s: ", origin);
		g_key_file_free(kf);
		return FALSE;
	}
	gboolean ok = TRUE;
	char **groups = g_key_file_get_groups(kf, NULL);
	for (char **g = groups; ok && *g; g++) {
		gboolean known = FALSE;
		for (size_t i = 0; i < G_N_ELEMENTS(known_groups); i++)
			known = known || strcmp(*g, known_groups[i]) == 0;
		if (!known) {
			g_set_error(error, KVB_CONFIG_ERROR, KVB_CONFIG_ERROR_UNKNOWN_KEY,
				    "%s: unknown group [%s] (known groups: connector, transfer, "
				    "topology.preferred, topology.secondary)",
				    origin, *g);
			ok = FALSE;
		}
	}
	g_strfreev(groups);

	kvb_config_t tmp;
	kvb_config_init(&tmp);
	kvb_config_copy(&tmp, cfg);
	for (size_t i = 0; ok && i < G_N_ELEMENTS(known_groups); i++)
		if (g_key_file_has_group(kf, known_groups[i]))
			ok = load_group(&tmp, kf, origin, known_groups[i], error);
	g_key_file_free(kf);
	if (!ok) {
		topology_free(&tmp);
		return FALSE;
	}
	topology_free(cfg);
	*cfg = tmp;
	return TRUE;
}

gboolean kvb_config_load_file(kvb_config_t *cfg, const char *path, GError **error)
{
	g_return_val_if_fail(cfg != NULL, FALSE);
	g_return_val_if_fail(path != NULL, FALSE);
	char *data = NULL;
	gsize len = 0;
	if (!g_file_get_contents(path, &data, &len, error))
		return FALSE; /* G_FILE_ERROR; its message names the path */
	gboolean ok = kvb_config_load_data(cfg, data, len, path, error);
	g_free(data);
	return ok;
}

/* ---- environment ------------------------------------------------------------- */

gboolean kvb_config_apply_env(kvb_config_t *cfg, char **envp, GError **error)
{
	g_return_val_if_fail(cfg != NULL, FALSE);
	g_return_val_if_fail(error == NULL || *error == NULL, FALSE);
	char **own = envp ? NULL : g_get_environ();
	char **env = envp ? envp : own;
	/* scalars only: a struct copy is a complete, commit-or-drop copy */
	kvb_config_t tmp = *cfg;
	gboolean ok = TRUE;
	for (size_t i = 0; ok && i < G_N_ELEMENTS(config_env); i++) {
		const char *val = g_environ_getenv(env, config_env[i].var);
		if (!val)
			continue;
		char *where = g_strdup_printf("environment variable %s", config_env[i].var);
		ok = apply_value(&tmp, key_find(NULL, config_env[i].key), val, where, error);
		g_free(where);
	}
	g_strfreev(own);
	if (ok)
		*cfg = tmp;
	return ok;
}

/* ---- text form --------------------------------------------------------------- */

char *kvb_config_to_string(const kvb_config_t *cfg)
{
	g_return_val_if_fail(cfg != NULL, NULL);
	GKeyFile *kf = g_key_file_new();
	char buf[48];
	for (size_t i = 0; i < N_KEYS; i++) {
		const key_desc_t *d = &config_keys[i];
		switch (d->kind) {
		case KEY_U32:
		case KEY_U64:
			snprintf(buf, sizeof(buf), "%" PRIu64, field_get(cfg, d));
			g_key_file_set_value(kf, d->group, d->key, buf);
			break;
		case KEY_SECONDS:
			format_seconds(field_get(cfg, d), buf, sizeof(buf));
			g_key_file_set_value(kf, d->group, d->key, buf);
			break;
		case KEY_ROLE:
			g_key_file_set_value(kf, d->group, d->key, kvb_role_name(cfg->role));
			break;
		case KEY_LEASE:
			g_key_file_set_value(kf, d->group, d->key, kvb_lease_policy_name(cfg->lease_policy));
			break;
		case KEY_ENGINE: {
			char *id = g_strndup(cfg->engine_id, KVB_ENGINE_ID_MAX - 1);
			g_key_file_set_string(kf, d->group, d->key, id);
			g_free(id);
			break;
		}
		case KEY_POLICY: {
			char *p = g_strndup(cfg->nic_policy, KVB_POLICY_NAME_MAX - 1);
			g_key_file_set_string(kf, d->group, d->key, p);
			g_free(p);
			break;
		}
		}
	}
	/* Every entry goes into [topology.preferred] (an empty list when it has
	 * no preferred NICs), so reloading gives the entries in this order. */
	for (uint32_t i = 0; cfg->topology && i < cfg->n_topology; i++) {
		const kvb_topology_names_t *t = &cfg->topology[i];
		if (!location_ok(t->location))
			continue; /* not representable; kvb_config_validate rejects it */
		const char *const empty[] = {NULL};
		const char *const *p = t->preferred ? (const char *const *)t->preferred : empty;
		g_key_file_set_string_list(kf, GROUP_PREFERRED, t->location, p, g_strv_length((char **)p));
		if (t->secondary && t->secondary[0])
			g_key_file_set_string_list(kf, GROUP_SECONDARY, t->location,
						   (const char *const *)t->secondary,
						   g_strv_length(t->secondary));
	}
	g_key_file_set_comment(kf, GROUP_CONNECTOR, NULL,
			       " kvbridge " PACKAGE_VERSION " configuration (docs/configuration.md)",
			       NULL);
	char *text = g_key_file_to_data(kf, NULL, NULL);
	g_key_file_free(kf);
	return text;
}

uint64_t kvb_config_lease_max(const kvb_config_t *cfg)
{
	return cfg->lease_max_ns ? cfg->lease_max_ns : cfg->abort_timeout_ns;
}

static const char *const lease_names[] = {NULL, "fixed", "heartbeat", "adaptive"};

const char *kvb_lease_policy_name(kvb_lease_policy_t p)
{
	return p >= KVB_LEASE_FIXED && p <= KVB_LEASE_ADAPTIVE ? lease_names[p] : "unknown";
}

int kvb_lease_policy_parse(const char *name, kvb_lease_policy_t *p)
{
	for (int i = KVB_LEASE_FIXED; name && i <= KVB_LEASE_ADAPTIVE; i++)
		if (strcmp(name, lease_names[i]) == 0) {
			*p = (kvb_lease_policy_t)i;
			return KVB_OK;
		}
	return KVB_ERR_CONFIG;
}
