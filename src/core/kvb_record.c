/*
 * Transfer records as JSON lines: the event-log format every backend writes
 * (loop, sim and hw alike), one object per finished transfer:
 *
 *   {"event":"transfer","role":"kv_producer","transfer_id":"...","request_id":"...",
 *    "peer":"...","bytes":N,"slices":N,"retries":N,"nics":N,"nic_mask":N,
 *    "post_ns":N,"end_ns":N,"duration_ns":N,"status":"KVB_OK","fail_class":"none",
 *    "reason":"..."}
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/connector.h>

/* Append s to out as a JSON string literal (quotes included). */
static void json_string(GString *out, const char *s)
{
	g_string_append_c(out, '"');
	for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
		switch (*p) {
		case '"': g_string_append(out, "\\\""); break;
		case '\\': g_string_append(out, "\\\\"); break;
		case '\n': g_string_append(out, "\\n"); break;
		case '\r': g_string_append(out, "\\r"); break;
		case '\t': g_string_append(out, "\\t"); break;
		default:
			if (*p < 0x20)
				g_string_append_printf(out, "\\u%04x", *p);
			else
				g_string_append_c(out, (char)*p);
		}
	}
	g_string_append_c(out, '"');
}

int kvb_xfer_record_json(const kvb_xfer_record_t *r, char *buf, size_t len)
{
	GString *out = g_string_sized_new(256);
	g_string_append(out, "{\"event\":\"transfer\",\"role\":");
	json_string(out, kvb_role_name(r->role));
	g_string_append(out, ",\"transfer_id\":");
	json_string(out, r->transfer_id);
	g_string_append(out, ",\"request_id\":");
	json_string(out, r->request_id);
	g_string_append(out, ",\"peer\":");
	json_string(out, r->peer);
	uint64_t duration = r->end_ns >= r->post_ns ? r->end_ns - r->post_ns : 0;
	g_string_append_printf(out,
			       ",\"bytes\":%" G_GUINT64_FORMAT ",\"slices\":%" G_GUINT64_FORMAT
			       ",\"retries\":%" G_GUINT64_FORMAT ",\"nics\":%u,\"nic_mask\":%" G_GUINT64_FORMAT
			       ",\"post_ns\":%" G_GUINT64_FORMAT ",\"end_ns\":%" G_GUINT64_FORMAT
			       ",\"duration_ns\":%" G_GUINT64_FORMAT ",\"status\":",
			       r->bytes, r->slices, r->retries, r->nics_used, r->nic_mask, r->post_ns,
			       r->end_ns, duration);
	json_string(out, kvb_status_name(r->status));
	g_string_append(out, ",\"fail_class\":");
	json_string(out, kvb_fail_class_name(r->fail_class));
	g_string_append(out, ",\"reason\":");
	json_string(out, r->reason);
	g_string_append_c(out, '}');
	int need = (int)out->len;
	if (buf && len) {
		size_t n = out->len < len - 1 ? out->len : len - 1;
		memcpy(buf, out->str, n);
		buf[n] = '\0';
	}
	g_string_free(out, TRUE);
	return need;
}
