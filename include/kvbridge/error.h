/*
 * kvbridge status codes.
 *
 * Every kvbridge call returns an int: KVB_OK (0), KVB_INPROGRESS (1, "call
 * again / completion comes later"), or a negative KVB_ERR_* code (UCX style).
 * Raw causes (errno, ibv_wc_status, cudaError_t, SimGrid errors) stay inside
 * the backend and are read through its last_error op.
 *
 * Calls that can fail for more than one reason also take an optional
 * kvb_err_t *; when it is not NULL they store the code and a one-line
 * message naming the offending value ("block 4097 outside region 3 (4096
 * blocks)").  A NULL kvb_err_t is always allowed.
 */
#ifndef KVBRIDGE_ERROR_H
#define KVBRIDGE_ERROR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define KVB_API __attribute__((visibility("default")))
#define KVB_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define KVB_API
#define KVB_PRINTF(f, a)
#endif

typedef enum kvb_status {
	KVB_OK = 0,                 /* success */
	KVB_INPROGRESS = 1,         /* started; completion is reported by an event */
	KVB_ERR_INVALID = -1,       /* invalid argument or API misuse */
	KVB_ERR_NOMEM = -2,         /* allocation failed */
	KVB_ERR_NOT_FOUND = -3,     /* unknown request, peer, NIC or name */
	KVB_ERR_STATE = -4,         /* not allowed in the object's current state */
	KVB_ERR_RANGE = -5,         /* address or block id outside a registered region */
	KVB_ERR_NO_RESOURCE = -6,   /* queue full: park the work and retry from progress */
	KVB_ERR_EXPIRED = -7,       /* the producer's lease on the blocks ran out */
	KVB_ERR_TIMEOUT = -8,       /* a deadline passed (consumer wait, producer not ready) */
	KVB_ERR_TRANSPORT = -9,     /* data-path failure (completion error, NIC down) */
	KVB_ERR_PEER = -10,         /* peer refused, unreachable, or went away */
	KVB_ERR_PROTOCOL = -11,     /* malformed, truncated or unexpected message */
	KVB_ERR_ABORTED = -12,      /* cancelled by the engine or by the peer */
	KVB_ERR_UNSUPPORTED = -13,  /* operation not implemented by this backend */
	KVB_ERR_ABI = -14,          /* backend or policy built against an unknown ABI */
	KVB_ERR_CONFIG = -15,       /* configuration value unparsable or out of range */
	KVB_ERR_EXISTS = -16,       /* duplicate id or name */
	KVB_ERR_LAYOUT = -17,       /* KV layouts of the two sides cannot be paired */
} kvb_status_t;

/* The most negative status code (update when appending codes). */
#define KVB_STATUS_MIN KVB_ERR_LAYOUT

/* Short, constant description of a status code ("lease expired"). */
KVB_API const char *kvb_strerror(int code);

/* Symbolic name of a status code ("KVB_ERR_EXPIRED"). */
KVB_API const char *kvb_status_name(int code);

#define KVB_ERR_MSG_MAX 256

/* A status code with a message that names what went wrong. */
typedef struct kvb_err {
	int code;
	char msg[KVB_ERR_MSG_MAX];
} kvb_err_t;

/* Store code and a printf-formatted message in err (if not NULL); returns
 * code so callers can write `return kvb_err_set(err, KVB_ERR_RANGE, ...)`. */
KVB_API int kvb_err_set(kvb_err_t *err, int code, const char *fmt, ...) KVB_PRINTF(3, 4);

/* Reset err to KVB_OK with an empty message. */
KVB_API void kvb_err_clear(kvb_err_t *err);

/* How a failed transfer is counted: transport, lease, peer, timeout,
 * abort, or local (validation, API misuse). */
typedef enum kvb_fail_class {
	KVB_FAIL_NONE = 0,      /* not a failure */
	KVB_FAIL_TRANSPORT = 1, /* KVB_ERR_TRANSPORT: NIC, completion error */
	KVB_FAIL_LEASE = 2,     /* KVB_ERR_EXPIRED: producer lease ran out */
	KVB_FAIL_PEER = 3,      /* KVB_ERR_PEER, _PROTOCOL, _LAYOUT, _RANGE: the other side
				 * (in a transfer, RANGE means the peer's address or key was bad) */
	KVB_FAIL_TIMEOUT = 4,   /* KVB_ERR_TIMEOUT */
	KVB_FAIL_ABORTED = 5,   /* KVB_ERR_ABORTED */
	KVB_FAIL_LOCAL = 6,     /* any other error */
} kvb_fail_class_t;

KVB_API kvb_fail_class_t kvb_fail_class(int code);
KVB_API const char *kvb_fail_class_name(kvb_fail_class_t cls);

#ifdef __cplusplus
}
#endif
#endif /* KVBRIDGE_ERROR_H */
