/*
 * kvbridge-serve's reports: GET /stats and GET /layout (kvb_serve.h).
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>

#include "kvb_serve.h"

void respond_stats(uint64_t cid)
{
	kvb_counters_t c;
	kvb_connector_counters(S.conn, &c);
	kvb_hw_stats_t h;
	kvb_hw_stats_get(S.be, &h);
	GString *nic_bytes = g_string_new(NULL);
	char relay[160];
	relay_stats(relay, sizeof(relay));
	for (uint32_t i = 0; i < S.be->ops->nic_count(S.be) && i < KVB_HW_MAX_NICS; i++)
		g_string_append_printf(nic_bytes, "%s%" PRIu64, i ? "," : "", h.nic_bytes[i]);
	GString *s = g_string_new(NULL);
	g_string_append_printf(s,
		"{\"role\":\"%s\",\"segment\":\"%s\",\"data_port\":%u,\"side_channel_port\":%u,"
		"\"pool\":{\"blocks\":%d,\"free\":%u},\"requests\":{\"producer_live\":%u,\"consumer_live\":%u,"
		"\"served_ok\":%" PRIu64 ",\"served_failed\":%" PRIu64 ",\"verified_bytes\":%" PRIu64
		",\"mismatched_bytes\":%" PRIu64 "},"
		"\"connector\":{\"transfers_ok\":%" PRIu64 ",\"transfers_failed\":%" PRIu64
		",\"bytes_sent\":%" PRIu64 ",\"leases_expired\":%" PRIu64 ",\"late_pulls_refused\":%" PRIu64
		",\"fail_transport\":%" PRIu64 ",\"fail_peer\":%" PRIu64 ",\"fail_lease\":%" PRIu64
		",\"fail_timeout\":%" PRIu64 ",\"slices_retried\":%" PRIu64 ",\"malformed_messages\":%" PRIu64
		",\"blocks_held\":%" PRIu64 ",\"live_requests\":%" PRIu64 "},"
		"\"hw\":{\"handshakes_served\":%" PRIu64 ",\"handshake_errors\":%" PRIu64
		",\"streams_opened\":%" PRIu64 ",\"tcp_requests_served\":%" PRIu64
		",\"tcp_requests_rejected\":%" PRIu64 ",\"tcp_bytes_in\":%" PRIu64 ",\"tcp_bytes_out\":%" PRIu64
		",\"tcp_bytes_posted\":%" PRIu64 ",\"vllm_messages\":%" PRIu64 ",\"vllm_errors\":%" PRIu64
		",\"fenced_writes\":%" PRIu64 ",\"rdma_bytes_posted\":%" PRIu64 ",\"rdma_endpoints\":%" PRIu64
		",\"gpu_copies\":%" PRIu64 ",\"gpu_staged_bytes\":%" PRIu64 ",\"gpu_syncs_requested\":%" PRIu64
		",\"gpu_syncs_served\":%" PRIu64 ",\"vllm_replies\":%" PRIu64 ",\"vllm_wrong_generation\":%" PRIu64
		",\"vllm_bootstrap_requests\":%" PRIu64 ",\"vllm_queries\":%" PRIu64
		",\"vllm_dealers\":%" PRIu64 ",\"vllm_dealers_reused\":%" PRIu64
		",\"vllm_descriptors_reused\":%" PRIu64 ",\"vllm_batched_pulls\":%" PRIu64 ",\"warnings_suppressed\":%" PRIu64 ",\"peers_refused\":%" PRIu64
		",\"window_refused\":%" PRIu64 ",\"auth_failures\":%" PRIu64 ",\"rdma_windows_open\":%" PRIu64
		",\"rdma_window_registrations\":%" PRIu64 ",\"rdma_window_posts\":%" PRIu64
		",\"rdma_window_reg_us\":%" PRIu64
		",\"tls_handshakes_failed\":%" PRIu64 ",\"tls_streams\":%" PRIu64
		",\"tls_stream_failures\":%" PRIu64 ",\"nic_bytes\":[%s]},\"memory\":\"%s\",\"vllm\":\"%s\",\"bootstrap_port\":%u,"
		"\"worker_addr\":\"%s\"%s}\n",
		relay_is() ? "relay" : kvb_role_name(S.cfg.role), kvb_hw_segment_name(S.be), kvb_hw_data_port(S.be),
		kvb_hw_side_channel_port(S.be), o.blocks, S.pool.free_blocks->len, g_hash_table_size(S.prod),
		g_hash_table_size(S.cons), S.served_ok, S.served_failed, S.verified_bytes, S.mismatched_bytes,
		c.transfers_ok, c.transfers_failed, c.bytes_sent, c.leases_expired, c.late_pulls_refused,
		c.fail_transport, c.fail_peer, c.fail_lease, c.fail_timeout, c.slices_retried,
		c.malformed_messages, c.blocks_held, c.live_requests, h.handshakes_served,
		h.handshake_errors, h.streams_opened, h.tcp_requests_served, h.tcp_requests_rejected,
		h.tcp_bytes_in, h.tcp_bytes_out, h.tcp_bytes_posted, h.vllm_messages, h.vllm_errors,
		h.fenced_writes, h.rdma_bytes_posted, h.rdma_endpoints, h.gpu_copies, h.gpu_staged_bytes,
		h.gpu_syncs_requested, h.gpu_syncs_served, h.vllm_replies, h.vllm_wrong_generation,
		h.vllm_bootstrap_requests, h.vllm_queries, h.vllm_dealers, h.vllm_dealers_reused,
		h.vllm_descriptors_reused, h.vllm_batched_pulls, h.warnings_suppressed, h.peers_refused + kvb_httpd_refused(S.httpd),
		h.window_refused, h.auth_failures, h.rdma_windows_open, h.rdma_window_registrations,
		h.rdma_window_posts, h.rdma_window_reg_ns / 1000, kvb_httpd_tls_failed(S.httpd), h.tls_streams, h.tls_failures, nic_bytes->str, o.memory,
		S.vproto == KVB_HW_VLLM_GEN2 ? "gen2" : "gen0", kvb_hw_vllm_bootstrap_port(S.be),
		kvb_hw_vllm_worker_addr(S.be), relay);
	g_string_free(nic_bytes, TRUE);
	kvb_httpd_respond(S.httpd, cid, 200, "application/json", s->str, s->len);
	g_string_free(s, TRUE);
}

/* "rxe0 staging, rxe1 dma-buf": the path each NIC takes to the pool. */
char *gpu_paths_text(void)
{
	kvb_hw_gpu_path_t paths[KVB_HW_MAX_NICS];
	uint32_t n = 0;
	GString *s = g_string_new(NULL);
	if (kvb_hw_mr_paths(S.be, S.pool.mem, paths, KVB_HW_MAX_NICS, &n) == KVB_OK)
		for (uint32_t i = 0; i < n && i < KVB_HW_MAX_NICS; i++) {
			kvb_nic_info_t info;
			S.be->ops->nic_query(S.be, i, &info);
			g_string_append_printf(s, "%s%s %s", i ? ", " : "", info.name,
					       kvb_hw_gpu_path_name(paths[i]));
		}
	return g_string_free(s, FALSE);
}

void respond_layout(uint64_t cid)
{
	GString *s = g_string_new(NULL);
	char *paths = gpu_paths_text();
	const serve_pool_t *p = &S.pool;
	g_string_append_printf(s, "{\"model\":\"%s\",\"layers\":%u,\"kv_heads\":%u,\"head_dim\":%u,"
				  "\"dtype_bytes\":%u,\"kv_layout\":\"%s\",\"block_tokens\":%u,"
				  "\"num_blocks\":%u,\"tp_size\":%u,\"tp_rank\":%u,\"memory\":\"%s\","
				  "\"nic_paths\":\"%s\",\"regions\":[",
			       p->model.name, p->model.m.layers, p->model.m.kv_heads, p->model.m.head_dim,
			       p->model.m.dtype_bytes, kvb_kv_layout_name(p->kv), p->block_tokens, p->n_blocks,
			       S.cfg.tp_size, S.cfg.tp_rank, o.memory, paths);
	g_free(paths);
	for (uint32_t i = 0; i < p->n_regions; i++)
		g_string_append_printf(s, "%s{\"base\":%" PRIu64 ",\"block_stride\":%" PRIu64
					  ",\"block_bytes\":%" PRIu64 ",\"num_blocks\":%u,\"layer\":%d,"
					  "\"name\":\"%s\"}",
				       i ? "," : "", p->regions[i].base, p->regions[i].block_stride,
				       p->regions[i].block_bytes, p->regions[i].num_blocks, p->regions[i].layer,
				       pool_layer_name(p, i));
	g_string_append(s, "]}\n");
	kvb_httpd_respond(S.httpd, cid, 200, "application/json", s->str, s->len);
	g_string_free(s, TRUE);
}
