/*
 * Connector configuration.
 *
 * Sources, later ones winning: built-in defaults, a GKeyFile file, then the
 * environment variables vLLM and Mooncake users already set:
 *
 *   VLLM_MOONCAKE_BOOTSTRAP_PORT         base port (default 8998); worker port
 *                                        = base + dp_rank * tp_size + tp_rank
 *   VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT  producer lease in seconds (default 480)
 *   MC_SLICE_SIZE                        slice bytes (default 65536)
 *
 * File format (every key optional; see docs/configuration.md for ranges).
 * GKeyFile has no end-of-line comments: a comment is a line of its own.
 *
 *   [connector]
 *   # kv_producer | kv_consumer | kv_both
 *   role = kv_producer
 *   engine_id = prefill-0
 *   dp_rank = 0
 *   tp_rank = 0
 *   tp_size = 1
 *   # 0 = unknown
 *   total_kv_heads = 0
 *   bootstrap_port = 8998
 *   # seconds, fractions allowed; the producer lease
 *   abort_request_timeout = 480
 *   # seconds; default lease + 60 (vLLM's RCVTIMEO)
 *   consumer_timeout = 540
 *   # finished transfer ids remembered to refuse late pulls (0 = none)
 *   tombstone_max = 65536
 *   # fixed | heartbeat | adaptive (see kvb_lease_policy_t)
 *   lease_policy = fixed
 *   heartbeat_interval = 5
 *   lease_min = 5
 *   # 0 = abort_request_timeout
 *   lease_max = 0
 *   adaptive_factor = 2
 *
 *   [transfer]
 *   slice_size = 65536
 *   fragment_limit = 16384
 *   # round_robin | random | least_loaded | topology | a registered policy
 *   nic_policy = round_robin
 *   seed = 1
 *   # slices in flight per NIC
 *   nic_queue_depth = 64
 *   # re-posts of a failed slice on another NIC
 *   slice_retries = 3
 *   # consecutive errors that mark a NIC down, and seconds before it is retried
 *   nic_error_threshold = 3
 *   nic_cooldown = 30
 *
 *   # Mooncake's priority matrix, by NIC name: location = NIC;NIC
 *   [topology.preferred]
 *   cuda:0 = mlx5_0;mlx5_1
 *   [topology.secondary]
 *   cuda:0 = mlx5_2;mlx5_3
 */
#ifndef KVBRIDGE_CONFIG_H
#define KVBRIDGE_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <glib.h>
#include <kvbridge/error.h>
#include <kvbridge/policy.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum kvb_role {
	KVB_ROLE_PRODUCER = 1, /* kv_producer: prefill side, sends */
	KVB_ROLE_CONSUMER = 2, /* kv_consumer: decode side, receives */
	KVB_ROLE_BOTH = 3,     /* kv_both: both paths */
} kvb_role_t;

/* How long a producer holds a READY request's blocks for a pull. */
typedef enum kvb_lease_policy {
	KVB_LEASE_FIXED = 1,     /* abort_request_timeout from ready (vLLM: 480 s) */
	KVB_LEASE_HEARTBEAT = 2, /* 3 heartbeat intervals from ready, renewed by each consumer
				  * heartbeat, never past lease_max from ready */
	KVB_LEASE_ADAPTIVE = 3,  /* adaptive_factor x p99 of recent ready-to-pull delays, within
				  * [lease_min, lease_max]; lease_max until 32 delays are known */
} kvb_lease_policy_t;

KVB_API const char *kvb_lease_policy_name(kvb_lease_policy_t p);
KVB_API int kvb_lease_policy_parse(const char *name, kvb_lease_policy_t *p);

#define KVB_DEFAULT_BOOTSTRAP_PORT 8998u
#define KVB_DEFAULT_ABORT_TIMEOUT_S 480u
#define KVB_CONSUMER_TIMEOUT_EXTRA_S 60u
#define KVB_ENGINE_ID_MAX 128u
#define KVB_SLICE_SIZE_MIN 4096u        /* [transfer] slice_size, bytes */
#define KVB_SLICE_SIZE_MAX (1u << 30)

/* A topology entry by NIC name, resolved to indices when the connector
 * learns the backend's NICs. */
typedef struct kvb_topology_names {
	char location[KVB_LOCATION_MAX];
	char **preferred;   /* NULL-terminated, g_strfreev */
	char **secondary;   /* NULL-terminated, g_strfreev */
} kvb_topology_names_t;

typedef struct kvb_config {
	kvb_role_t role;
	char engine_id[KVB_ENGINE_ID_MAX];
	uint32_t dp_rank;
	uint32_t tp_rank;
	uint32_t tp_size;
	uint32_t total_kv_heads;
	uint32_t bootstrap_port;
	uint64_t abort_timeout_ns;     /* producer lease */
	uint64_t consumer_timeout_ns;  /* 0 = abort_timeout + 60 s */
	uint64_t slice_size;
	uint64_t fragment_limit;
	char nic_policy[KVB_POLICY_NAME_MAX];
	uint64_t seed;
	uint32_t nic_queue_depth;
	uint32_t slice_retries;
	uint32_t nic_error_threshold;
	uint64_t nic_cooldown_ns;
	uint32_t tombstone_max;        /* finished transfer ids remembered (late pulls) */
	kvb_lease_policy_t lease_policy;
	uint64_t heartbeat_interval_ns;/* consumer heartbeats for expected pulls */
	uint64_t lease_min_ns;         /* adaptive lower bound */
	uint64_t lease_max_ns;         /* heartbeat/adaptive upper bound; 0 = abort timeout */
	uint32_t adaptive_factor;      /* adaptive: multiple of the p99 delay */
	kvb_topology_names_t *topology;
	uint32_t n_topology;
	uint64_t unprefilled_wait_ns;  /* a pull for a transfer this worker never began waits
					* this long for its prefill; 0 = abort timeout */
} kvb_config_t;

/* Fill cfg with defaults (role kv_both, port 8998, lease 480 s, 64 KiB
 * slices, round_robin).  cfg needs kvb_config_clear() afterwards. */
KVB_API void kvb_config_init(kvb_config_t *cfg);

/* Free what the config owns (topology) and reset it to defaults. */
KVB_API void kvb_config_clear(kvb_config_t *cfg);

/* Deep copy into dst, which must be initialised (kvb_config_init) or
 * zero-filled; dst's previous topology is freed. */
KVB_API void kvb_config_copy(kvb_config_t *dst, const kvb_config_t *src);

/* Apply a GKeyFile.  Unknown groups or keys are errors (typos must not pass
 * silently).  On failure cfg is unchanged and error is G_FILE_ERROR (cannot
 * read), G_KEY_FILE_ERROR (syntax, bad escapes) or KVB_CONFIG_ERROR (value),
 * naming the file, group and key.  load_data takes len = (gsize)-1 for a
 * NUL-terminated string; origin names the source in messages. */
KVB_API gboolean kvb_config_load_file(kvb_config_t *cfg, const char *path, GError **error);
KVB_API gboolean kvb_config_load_data(kvb_config_t *cfg, const char *data, gsize len,
				      const char *origin, GError **error);

/* Apply environment overrides from envp (NULL: the process environment,
 * read through g_get_environ). */
KVB_API gboolean kvb_config_apply_env(kvb_config_t *cfg, char **envp, GError **error);

/* Range checks (tp_rank < tp_size, ports, slice sizes, timeouts).  KVB_ERR_CONFIG
 * with the offending key. */
KVB_API int kvb_config_validate(const kvb_config_t *cfg, kvb_err_t *err);

/* This worker's side-channel port: base + dp_rank * tp_size + tp_rank.
 * KVB_ERR_CONFIG when it exceeds 65535. */
KVB_API int kvb_config_worker_port(const kvb_config_t *cfg, uint32_t *port, kvb_err_t *err);

/* Effective lease_max (lease_max_ns, or abort_timeout_ns when 0). */
KVB_API uint64_t kvb_config_lease_max(const kvb_config_t *cfg);

/* Effective consumer timeout (consumer_timeout_ns or lease + 60 s). */
KVB_API uint64_t kvb_config_consumer_timeout(const kvb_config_t *cfg);

KVB_API const char *kvb_role_name(kvb_role_t role);           /* "kv_producer" */
KVB_API int kvb_role_parse(const char *name, kvb_role_t *role); /* KVB_ERR_CONFIG */

/* Write the effective configuration in the file format above (g_free). */
KVB_API char *kvb_config_to_string(const kvb_config_t *cfg);

#define KVB_CONFIG_ERROR (kvb_config_error_quark())
KVB_API GQuark kvb_config_error_quark(void);
typedef enum {
	KVB_CONFIG_ERROR_INVALID = 1, /* value out of range or unparsable */
	KVB_CONFIG_ERROR_UNKNOWN_KEY = 2,
} kvb_config_error_code_t;

#ifdef __cplusplus
}
#endif
#endif /* KVBRIDGE_CONFIG_H */
