/*
 * kvbridge-serve's parts (kvbridge_serve.c: options, setup, HTTP front;
 * kvb_serve_pool.c: the KV pool; kvb_serve_kv.c: requests that produce or
 * consume KV, per vLLM protocol; kvb_serve_relay.c: the relay role).  One
 * process-wide state, one GMainContext, one thread (the relay's upstream
 * HTTP calls run on worker threads and come back through the context).
 */
#ifndef KVB_SERVE_H
#define KVB_SERVE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <glib.h>
#include <json-glib/json-glib.h>
#include <kvbridge/kvbridge.h>
#include <kvbridge/hw.h>

#include "kvb_tool_http.h"

/* An integer option nobody gave (GOption leaves its default alone). */
#define NOT_GIVEN G_MININT
#include "kvb_tool_model.h"

typedef struct serve_opts {
	gchar *role;
	gchar *config;
	gchar *model;
	gchar *dtype;
	gchar *kv_layout;
	gint blocks;
	gint block_tokens;
	gchar *host;
	gchar *bind;
	gchar *allow_peers;
	gchar *api_key;
	gchar *secret_file;
	gchar *tls_cert, *tls_key;  /* HTTPS front (else KVB_TLS_CERT, KVB_TLS_KEY) */
	gchar *tls_ca;              /* trust for https:// peers (else KVB_TLS_CA, else the system's) */
	gint http_port;
	gint rpc_port;
	gint data_port;
	gint nics;
	gchar **nic_addrs;
	gchar *pull_protocol;
	gchar *vllm_protocol;
	gchar *vllm_release;
	gchar *engine_id;
	gint bootstrap_port;        /* NOT_GIVEN: VLLM_MOONCAKE_BOOTSTRAP_PORT on tp rank 0, 0: none */
	gchar *bootstrap_server;
	gchar *verify;
	gchar *dump_dir;
	gchar *events;
	gchar *lease;               /* seconds, checked into lease_s (< 0: not given) */
	gdouble lease_s;
	gboolean verbose;
	gboolean list_models;
	gint tp_size, tp_rank, dp_rank;
	gchar *rdma_devices;
	gboolean rdma_buffer_keys;
	gchar *memory;
	gint gpu;
	/* relay */
	gchar *upstream;            /* http://host:port of the producer engine */
	gchar *upstream_protocol;
	gchar *upstream_bootstrap;
	gchar *upstream_engine_id;
	gchar *upstream_model;
	gchar *upstream_kv_layout;
	gint upstream_block_tokens;
	gint test_corrupt_block;    /* tests: flip a byte of this block of every relayed request */
} serve_opts_t;

/* A KV pool: one layout, its memory and its free blocks. */
typedef struct serve_pool {
	const char *name;           /* "pool", "ingress", "egress" */
	kvb_tool_model_t model;
	kvb_kv_layout_t kv;
	uint32_t block_tokens;
	kvb_region_t *regions;
	uint32_t n_regions;
	uint8_t *mem;
	uint64_t mem_len;
	GArray *free_blocks;        /* uint32_t stack */
	uint32_t n_blocks;
} serve_pool_t;

typedef struct prod_req {
	char id[KVB_ID_MAX];        /* transfer id */
	serve_pool_t *pool;
	uint32_t *blocks;
	uint32_t n;
	uint64_t ready_ns;
} prod_req_t;

typedef struct cons_req {
	char id[KVB_ID_MAX];        /* request id */
	char transfer_id[KVB_ID_MAX];
	serve_pool_t *pool;
	uint32_t *blocks;
	uint32_t n;
	uint64_t conn_id;           /* the HTTP client waiting for the answer; 0: none */
	uint64_t start_ns;
	uint64_t tokens;
	bool query_pending;         /* gen2: waiting for the bootstrap's /query */
	kvb_connector_t *conn;      /* the connector pulling (a relay's upstream one) */
	kvb_backend_t *be;
	void *relay;                /* kvb_serve_relay.c's request, when it is an upstream pull */
} cons_req_t;

typedef struct serve {
	kvb_config_t cfg;
	kvb_hw_vllm_protocol_t vproto;
	serve_pool_t pool;          /* the KV pool (the egress pool of a relay) */
	serve_pool_t ingress;       /* a relay whose upstream layout differs: where pulls land */
	bool has_ingress;
	kvb_backend_t *be;
	kvb_connector_t *conn;
	kvb_backend_t *up_be;       /* a relay's upstream side: a consumer instance of its */
	kvb_connector_t *up_conn;   /* own, with the upstream's layout and protocol */
	GMainContext *ctx;
	GMainLoop *loop;
	GSource *progress_idle;
	kvb_httpd_t *httpd;
	GHashTable *prod;           /* transfer id -> prod_req_t* */
	GHashTable *cons;           /* request id -> cons_req_t* */
	uint16_t side_base;         /* gen0: side-channel port of dp_rank's tp rank 0 */
	char host[128];             /* how peers reach us: --host, VLLM_HOST_IP, 127.0.0.1 */
	const char *rdma_keys;        /* said at start: how peers reach the pool over RDMA */
	char *api_key;              /* Bearer token every endpoint but /health needs, or NULL */
	kvb_tls_t *tls_server;      /* the HTTP front's credentials, NULL: plain HTTP */
	kvb_tls_t *tls_client;      /* trust for https:// peers (--upstream), NULL: none dialed */
	FILE *events;
	bool verify_pattern;
	uint64_t served_ok, served_failed, verified_bytes, mismatched_bytes;
} serve_t;

extern serve_opts_t o;
extern serve_t S;

void serve_log(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
uint64_t serve_now_ns(void);
void schedule_progress(void);

/* ---- kvb_serve_pool.c ---- */

/* Lay out and allocate a pool (--memory), every block free.  2: bad
 * options, 1: no memory; the reason is printed. */
int pool_init(serve_pool_t *p, const char *name, const kvb_tool_model_t *model, kvb_kv_layout_t kv,
	      uint32_t block_tokens, uint32_t n_blocks);
void pool_fini(serve_pool_t *p);
bool pool_alloc(serve_pool_t *p, uint32_t n, uint32_t **out);
void pool_free(serve_pool_t *p, uint32_t *b, uint32_t n);
uint8_t *block_ptr(serve_pool_t *p, uint32_t region, uint32_t id);
/* The request's blocks get the pattern of transfer id (what every receiver
 * checks), or are poisoned so that stale bytes cannot pass a check. */
void pool_fill_pattern(serve_pool_t *p, const char *transfer_id, const uint32_t *b, uint32_t n);
void pool_poison(serve_pool_t *p, const uint32_t *b, uint32_t n);
/* Bytes of the request's blocks that differ from the pattern, of *bytes. */
uint64_t pool_check_pattern(serve_pool_t *p, const char *transfer_id, const uint32_t *b, uint32_t n,
			    uint64_t *bytes);
/* DIR/<id>.kv: every region's bytes of every block, region after region,
 * blocks in request order.  false with the reason printed. */
bool pool_dump(serve_pool_t *p, const char *dir, const char *id, const uint32_t *b, uint32_t n);
/* Copy a request's tokens between two pools that hold the same model in
 * other block sizes or K/V packing (kvb_serve_relay.c). */
void pool_copy_block_bytes(serve_pool_t *p, uint32_t region, uint32_t id, uint64_t off, void *host,
			   uint64_t len, bool to_pool);
/* "2 layers x 16 heads x 32 dims, float32, 32 tokens a block, K|V packed". */
char *pool_describe(const serve_pool_t *p);
/* vLLM's layer name of region i. */
const char *pool_layer_name(const serve_pool_t *p, uint32_t i);
/* The blocks a prompt of tokens needs (at least 1). */
uint32_t pool_blocks_for(const serve_pool_t *p, uint64_t tokens);

/* ---- kvb_serve_kv.c ---- */

void handle_produce(uint64_t cid, const char *rid, const char *endpoint, uint64_t tokens,
		    JsonObject *params);
void handle_consume(uint64_t cid, const char *rid, const char *endpoint, uint64_t tokens,
		    JsonObject *params);
void collect_finished(void);
/* The transfer id a Gen 0 pair uses for a request: vLLM's internal id. */
void gen0_transfer_id(const char *rid, const char *endpoint, char *out, size_t len);
const char *param_str(JsonObject *params, const char *name);
bool param_true(JsonObject *params, const char *name);
bool param_int(JsonObject *params, const char *name, int64_t *out);
/* An integer member in [min, max]: 1 when there (*out set), 0 when absent,
 * -1 when it is anything else (why says what was expected). */
int param_count(JsonObject *params, const char *name, int64_t min, int64_t max, int64_t *out,
		char *why, size_t why_len);
/* Start a gen2 pull of transfer_id into blocks of pool (the consumer's
 * side; also the relay's upstream).  false with the reason in why. */
bool pull_gen2(cons_req_t *r, const char *bootstrap, const char *engine_id, char *why, size_t why_len);
bool pull_start(cons_req_t *r, const char *const *producers, uint32_t n, uint32_t producer_tp,
		char *why, size_t why_len);

/* ---- kvb_serve_stats.c ---- */

void respond_stats(uint64_t cid);
void respond_layout(uint64_t cid);
/* "rxe0 staging, rxe1 dma-buf": the path each NIC takes to the pool. */
char *gpu_paths_text(void);

/* ---- kvb_serve_relay.c ---- */

int relay_setup(void);
/* The upstream instance and connector (after the downstream ones). */
int relay_open_upstream(void (*warn)(void *, const char *), void (*notify)(void *),
			kvb_record_fn record);
void relay_fini(void);
bool relay_is(void);
/* ",\"relay\":{...}" for /stats ("" unless a relay). */
void relay_stats(char *buf, size_t len);
void relay_handle(uint64_t cid, const kvb_http_msg_t *req, const char *body, size_t body_len,
		  JsonObject *root, JsonObject *params, const char *rid);
/* The upstream pull of a relayed request ended. */
void relay_pulled(cons_req_t *r, const kvb_finished_t *f);
/* A relayed transfer the downstream consumer finished (or that expired). */
void relay_served(prod_req_t *r, const kvb_finished_t *f);

#endif /* KVB_SERVE_H */
