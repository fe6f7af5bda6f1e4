/*
 * vLLM MooncakeConnector Gen 1/2 HTTP bootstrap (vLLM 0.16.0 - 0.32.0), as
 * plain functions over buffers: the JSON bodies of POST /register and GET
 * /query, the registry behind them, and tcp://host:port worker addresses.
 * The HTTP framing is kvb_http.h's; the side channel is kvb_vllm_xfer_wire.h.
 * Notes: ../shared/research/vllm-mooncake-connector.md 2.2, 2.3, 6, 9.
 *
 * The server (MooncakeBootstrapServer in mooncake_utils.py, FastAPI +
 * pydantic) is the same in every release from 0.16.0 to 0.32.0 except one
 * rule: an identical re-registration (same dp, tp, pp and addr) is answered
 * 200 from 0.31.0 on, 400 before (0.16.0 - 0.30.0; KVB_VLLM_REGISTRY_IDENTICAL_OK).
 *
 *   POST /register {"engine_id": str, "dp_rank": int, "tp_rank": int,
 *                   "pp_rank": int, "addr": "tcp://ip:port"}
 *     200 {"status":"ok"}
 *     400 {"detail":"Engine ID mismatch for dp_rank=D: expected E, got F"}
 *     400 {"detail":"Worker with dp_rank=D, tp_rank=T, pp_rank=P is already
 *          registered at A, but still want to register at B"}
 *     422 {"detail":[{"type", "loc": ["body", field], "msg", "input"[, "ctx"]}, ...]}
 *   GET /query
 *     200 {"<dp>": {"engine_id": E, "worker_addr": {"<tp>": {"<pp>": addr}}}}
 *     (keys in registration order; compact JSON, non-ASCII as UTF-8)
 *
 * Bodies are written byte for byte as FastAPI writes them (Python's
 * json.dumps, separators "," and ":", ensure_ascii off).  /register is
 * parsed more strictly than vLLM's lax pydantic model, which takes "3",
 * 4.0 and true for ranks, negative ranks, empty engine ids and any addr:
 * here ranks are JSON integers in 0..KVB_VLLM_BOOT_MAX_RANK, engine ids
 * 1..127 bytes without NUL, addr a tcp:// address kvb_vllm_worker_addr_parse
 * accepts, keys unique.  Refusals get the 422 body pydantic itself writes
 * for a strict model with those constraints (tests/fixtures/vllm/
 * gen_bootstrap.py), every error in field order, the input echoed.  Not
 * matched: Python's own json error texts (json_invalid's ctx), integers
 * beyond 64 bits (refused as invalid JSON), and lengths of non-ASCII engine
 * ids (pydantic counts characters, this code bytes).
 */
#ifndef KVB_VLLM_BOOTSTRAP_WIRE_H
#define KVB_VLLM_BOOTSTRAP_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>
#include <kvbridge/error.h>

#include "kvb_vllm_wire.h" /* KVB_VLLM_HOST_MAX */

#define KVB_VLLM_ENGINE_ID_MAX 128u       /* engine id bytes incl. NUL */
#define KVB_VLLM_ADDR_MAX (KVB_VLLM_HOST_MAX + 16u) /* "tcp://[host]:port" incl. NUL */
#define KVB_VLLM_BOOT_MAX_RANK 65535u     /* dp, tp, pp ranks */
#define KVB_VLLM_BOOT_MAX_WORKERS 4096u   /* registered workers (all dp, tp, pp) */
#define KVB_VLLM_BOOT_BODY_MAX (64u << 10) /* a /register body */
#define KVB_VLLM_BOOT_QUERY_MAX (2u << 20) /* a /query body (4096 workers of the longest addr fit) */
#define KVB_VLLM_BOOT_MAX_DEPTH 32        /* JSON nesting */

/* ---- worker addresses ------------------------------------------------------ */

typedef struct kvb_vllm_worker_addr {
	char host[KVB_VLLM_HOST_MAX]; /* without brackets; an IPv6 zone ("%eth0") kept */
	uint16_t port;
	bool ipv6;
} kvb_vllm_worker_addr_t;

/* "tcp://HOST:PORT" as vLLM's make_zmq_path writes it: HOST an IPv4
 * address or host name ([0-9A-Za-z_.-]+) or a bracketed IPv6 address
 * (inet_pton must take it; an optional %zone of [0-9A-Za-z_.-]+), PORT
 * 1..65535 in decimal without leading zeros.  KVB_ERR_PROTOCOL otherwise. */
int kvb_vllm_worker_addr_parse(const char *addr, kvb_vllm_worker_addr_t *out, kvb_err_t *err);

/* The reverse (brackets added when host holds a ':'). */
int kvb_vllm_worker_addr_format(const char *host, uint16_t port, char *out, size_t cap,
				kvb_err_t *err);

/* ---- POST /register ---------------------------------------------------------- */

typedef struct kvb_vllm_register {
	char engine_id[KVB_VLLM_ENGINE_ID_MAX];
	uint32_t dp_rank;
	uint32_t tp_rank;
	uint32_t pp_rank;
	char addr[KVB_VLLM_ADDR_MAX];     /* as sent */
	kvb_vllm_worker_addr_t where;     /* addr parsed */
} kvb_vllm_register_t;

/* Parse a /register body (see the top).  On refusal KVB_ERR_PROTOCOL, a
 * message naming the first fault, and, when reply_422 is not NULL, the
 * body to answer with status 422 appended to it. */
int kvb_vllm_register_decode(const char *body, size_t len, kvb_vllm_register_t *reg,
			     GString *reply_422, kvb_err_t *err);

/* The body a vLLM worker posts (pydantic's model_dump through httpx,
 * compact), appended to out. */
int kvb_vllm_register_encode(const kvb_vllm_register_t *reg, GString *out, kvb_err_t *err);

/* ---- the registry ------------------------------------------------------------- */

typedef struct kvb_vllm_registry kvb_vllm_registry_t;

#define KVB_VLLM_REGISTRY_IDENTICAL_OK 0x1u /* 0.31+: the same worker again is 200 */

kvb_vllm_registry_t *kvb_vllm_registry_new(unsigned flags);
void kvb_vllm_registry_free(kvb_vllm_registry_t *reg);

/* Record a registration with vLLM's rules.  KVB_OK: answer 200; KVB_ERR_EXISTS
 * (engine id mismatch, slot held by another addr, or the same again before
 * 0.31): answer 400; KVB_ERR_NO_RESOURCE (KVB_VLLM_BOOT_MAX_WORKERS
 * reached): 400 too.  The body to answer is appended to reply if not NULL. */
int kvb_vllm_registry_add(kvb_vllm_registry_t *reg, const kvb_vllm_register_t *w, GString *reply,
			  kvb_err_t *err);

/* POST /register from body to answer: *http_status 200, 400 or 422 and its
 * body appended to reply; the return value is the kvb code behind it. */
int kvb_vllm_registry_handle(kvb_vllm_registry_t *reg, const char *body, size_t len,
			     unsigned *http_status, GString *reply, kvb_err_t *err);

/* The GET /query body, appended to out. */
void kvb_vllm_registry_query_json(const kvb_vllm_registry_t *reg, GString *out);

/* Workers registered in all. */
uint32_t kvb_vllm_registry_size(const kvb_vllm_registry_t *reg);

/* ---- GET /query, as a D reads it ------------------------------------------------ */

typedef struct kvb_vllm_boot_worker {
	uint32_t tp_rank;
	uint32_t pp_rank;
	char addr[KVB_VLLM_ADDR_MAX];
	kvb_vllm_worker_addr_t where;
} kvb_vllm_boot_worker_t;

typedef struct kvb_vllm_boot_engine {
	uint32_t dp_rank;
	char engine_id[KVB_VLLM_ENGINE_ID_MAX];
	uint32_t tp_size;      /* len(worker_addr): what a vLLM D takes as P's TP size */
	uint32_t first_worker; /* index into query->workers */
	uint32_t n_workers;    /* in reply order: tp after tp, pp after pp */
} kvb_vllm_boot_engine_t;

typedef struct kvb_vllm_boot_query {
	uint32_t n_engines;
	kvb_vllm_boot_engine_t *engines;
	uint32_t n_workers;
	kvb_vllm_boot_worker_t *workers;
} kvb_vllm_boot_query_t;

/*
 * Parse a /query reply strictly: an object of dp entries keyed by canonical
 * decimal ranks ("0", not "00" or "+0"), each an object with a str
 * engine_id (1..127 bytes, no NUL, unique across entries) and a non-empty
 * worker_addr object whose tp keys are exactly 0..n-1 (a vLLM D indexes them so), each
 * a non-empty object of pp ranks to addresses kvb_vllm_worker_addr_parse
 * accepts.  Other members of a dp entry are ignored (a later release may
 * add some); duplicate keys, more than KVB_VLLM_BOOT_MAX_WORKERS workers
 * and invalid JSON are refused.  On failure nothing stays allocated.
 */
int kvb_vllm_query_decode(const char *json, size_t len, kvb_vllm_boot_query_t *q, kvb_err_t *err);

const kvb_vllm_boot_engine_t *kvb_vllm_query_engine(const kvb_vllm_boot_query_t *q,
						    const char *engine_id);
const kvb_vllm_boot_worker_t *kvb_vllm_query_worker(const kvb_vllm_boot_query_t *q,
						    const kvb_vllm_boot_engine_t *e, uint32_t tp_rank,
						    uint32_t pp_rank);
void kvb_vllm_query_clear(kvb_vllm_boot_query_t *q);

#endif /* KVB_VLLM_BOOTSTRAP_WIRE_H */
