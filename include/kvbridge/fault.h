/*
 * The fault backend: wraps another backend instance and injects failures
 * (SQLite's syscall overrides, libfabric's hook providers), so error paths
 * are tested without hardware.
 *
 * Rules count the wrapped operations one by one (1-based) per instance:
 *   FAIL_POST        the nth slice posted (and the next count - 1) fails:
 *                    either xfer_post returns the error, or the slice is
 *                    accepted and completes with it
 *   DROP_MSG         the nth control message received is lost
 *   DELAY_MSG        the nth message received is held for delay_ns
 *   DUP_MSG          the nth message received is delivered twice
 *   REORDER_MSG      the nth message received is delivered after the next one
 *   STALL_COMPLETIONS completions from the nth onwards are held for delay_ns
 *                    (0 = until kvb_fault_release())
 *   FAIL_CONNECT     the nth conn_connect fails with KVB_ERR_PEER
 * Held items are released through timers armed on the wrapped backend
 * (cookies with KVB_COOKIE_RESERVED set), so virtual clocks keep working.
 */
#ifndef KVBRIDGE_FAULT_H
#define KVBRIDGE_FAULT_H

#include <stdint.h>
#include <kvbridge/backend.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum kvb_fault_kind {
	KVB_FAULT_FAIL_POST = 1,
	KVB_FAULT_DROP_MSG = 2,
	KVB_FAULT_DELAY_MSG = 3,
	KVB_FAULT_DUP_MSG = 4,
	KVB_FAULT_REORDER_MSG = 5,
	KVB_FAULT_STALL_COMPLETIONS = 6,
	KVB_FAULT_FAIL_CONNECT = 7,
} kvb_fault_kind_t;

typedef enum kvb_fault_post_mode {
	KVB_FAULT_AT_POST = 0,       /* xfer_post returns the error */
	KVB_FAULT_AT_COMPLETION = 1, /* accepted, completes with the error */
} kvb_fault_post_mode_t;

typedef struct kvb_fault_rule {
	kvb_fault_kind_t kind;
	uint64_t nth;                /* 1-based index of the first affected operation */
	uint64_t count;              /* how many consecutive operations (0 = 1;
				      * for STALL_COMPLETIONS 0 = every later one) */
	uint64_t delay_ns;           /* DELAY_MSG, STALL_COMPLETIONS */
	kvb_fault_post_mode_t mode;  /* FAIL_POST */
	int status;                  /* FAIL_POST error (0 = KVB_ERR_TRANSPORT) */
} kvb_fault_rule_t;

/* Arguments of kvb_backend_open(kvb_fault_backend_ops(), &args, ...).  The
 * fault instance owns inner from then on and closes it. */
typedef struct kvb_fault_args {
	kvb_backend_t *inner;
} kvb_fault_args_t;

typedef struct kvb_fault_stats {
	uint64_t posts, posts_failed;
	uint64_t msgs, msgs_dropped, msgs_delayed, msgs_duplicated, msgs_reordered;
	uint64_t completions, completions_stalled;
	uint64_t connects, connects_failed;
} kvb_fault_stats_t;

KVB_API const kvb_backend_ops_t *kvb_fault_backend_ops(void);

/* Convenience: wrap inner (taking ownership, also on failure). */
KVB_API int kvb_fault_wrap(kvb_backend_t *inner, kvb_backend_t **out, kvb_err_t *err);

/* Add a rule to a fault instance (at most 32). */
KVB_API int kvb_fault_add(kvb_backend_t *be, const kvb_fault_rule_t *rule);

/* Deliver every held completion and message now. */
KVB_API int kvb_fault_release(kvb_backend_t *be);

KVB_API int kvb_fault_stats(kvb_backend_t *be, kvb_fault_stats_t *out);

/* The wrapped instance (for backend-specific calls such as kvb_loop_kill). */
KVB_API kvb_backend_t *kvb_fault_inner(kvb_backend_t *be);

#ifdef __cplusplus
}
#endif
#endif /* KVBRIDGE_FAULT_H */
