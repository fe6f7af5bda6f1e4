/*
 * Mooncake Transfer Engine wire formats: handshake frames, segment
 * descriptors, HandShakeDesc, notify/probe, TCP transport headers.
 *
 * JSON goes through json-glib.  Its parser stores integers as gint64, so
 * unsigned 64-bit fields (addr, length) above INT64_MAX cannot be read
 * exactly; they are refused rather than rounded.  User-space addresses on
 * x86-64 and aarch64 stay below 2^57, so real descriptors never hit this.
 */
#include "config.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include <json-glib/json-glib.h>

#include "kvb_mc_wire.h"

/* An IPv4 or IPv6 address in numeric form. */
static bool numeric_addr(const char *t)
{
	unsigned char buf[sizeof(struct in6_addr)];
	return inet_pton(AF_INET, t, buf) == 1 || inet_pton(AF_INET6, t, buf) == 1;
}

/* ---- frames --------------------------------------------------------------- */

int kvb_mc_frame_header(const uint8_t hdr[KVB_MC_FRAME_HEADER_LEN], uint64_t max_len,
			uint64_t *body_len, kvb_err_t *err)
{
	uint64_t len = 0;
	for (int i = 7; i >= 0; i--)
		len = (len << 8) | hdr[i];
	if (len == 0)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "handshake frame length 0");
	if (len > max_len)
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "handshake frame length %" PRIu64 " exceeds the limit %" PRIu64, len,
				   max_len);
	*body_len = len;
	return KVB_OK;
}

static bool known_type(uint8_t t)
{
	return t <= KVB_MC_PROBE || (t >= KVB_MC_KVB_HELLO && t <= KVB_MC_KVB_STARTTLS);
}

int kvb_mc_frame_body(const uint8_t *body, size_t len, kvb_mc_msg_type_t *type,
		      const uint8_t **payload, size_t *payload_len, kvb_err_t *err)
{
	if (!len)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "empty handshake frame");
	uint8_t t = body[0];
	if (known_type(t)) {
		*type = (kvb_mc_msg_type_t)t;
		*payload = body + 1;
		*payload_len = len - 1;
		return KVB_OK;
	}
	if (t == '{' || t == ' ' || t == '\t' || t == '\r' || t == '\n') {
		/* a pre-0.3 peer: untyped JSON means Connection */
		*type = KVB_MC_CONNECTION;
		*payload = body;
		*payload_len = len;
		return KVB_OK;
	}
	return kvb_err_set(err, KVB_ERR_PROTOCOL, "handshake frame type 0x%02x unknown", t);
}

void kvb_mc_frame_encode(GByteArray *out, kvb_mc_msg_type_t type, const void *payload,
			 size_t payload_len)
{
	uint64_t len = (uint64_t)payload_len + 1;
	uint8_t hdr[KVB_MC_FRAME_HEADER_LEN + 1];
	for (int i = 0; i < 8; i++)
		hdr[i] = (uint8_t)(len >> (8 * i));
	hdr[8] = (uint8_t)type;
	g_byte_array_append(out, hdr, sizeof(hdr));
	if (payload_len)
		g_byte_array_append(out, payload, (guint)payload_len);
}

/* ---- names ---------------------------------------------------------------- */

int kvb_mc_parse_host_port(const char *s, char *host, size_t host_len, uint16_t *port,
			   kvb_err_t *err)
{
	const char *colon;
	const char *h = s;
	size_t hl;
	if (!s || !*s)
		return kvb_err_set(err, KVB_ERR_INVALID, "empty host:port");
	if (*s == '[') {
		const char *close = strchr(s, ']');
		if (!close || close[1] != ':')
			return kvb_err_set(err, KVB_ERR_INVALID, "'%.64s': expected [v6addr]:port",
					   s);
		h = s + 1;
		hl = (size_t)(close - h);
		colon = close + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			return kvb_err_set(err, KVB_ERR_INVALID, "'%.64s': expected host:port",
					   s);
		if (memchr(s, ':', (size_t)(colon - s)))
			return kvb_err_set(err, KVB_ERR_INVALID,
					   "'%.64s': an IPv6 address needs brackets ([addr]:port)", s);
		hl = (size_t)(colon - s);
	}
	if (!hl)
		return kvb_err_set(err, KVB_ERR_INVALID, "'%.64s': empty host", s);
	if (hl >= host_len)
		return kvb_err_set(err, KVB_ERR_INVALID, "'%.64s': host longer than %zu bytes", s,
				   host_len - 1);
	const char *p = colon + 1;
	if (!*p)
		return kvb_err_set(err, KVB_ERR_INVALID, "'%.64s': missing port", s);
	unsigned long v = 0;
	for (; *p; p++) {
		if (*p < '0' || *p > '9' || v > 65535)
			return kvb_err_set(err, KVB_ERR_INVALID,
					   "'%.64s': port is not a number in 1..65535", s);
		v = v * 10 + (unsigned long)(*p - '0');
	}
	if (v < 1 || v > 65535)
		return kvb_err_set(err, KVB_ERR_INVALID, "'%.64s': port %lu outside 1..65535", s,
				   v);
	memcpy(host, h, hl);
	host[hl] = '\0';
	*port = (uint16_t)v;
	return KVB_OK;
}

int kvb_mc_nic_path_split(const char *path, char *server, size_t server_len, char *device,
			  size_t device_len, kvb_err_t *err)
{
	const char *at = path ? strchr(path, '@') : NULL;
	if (!at)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "NIC path '%.64s': expected server@device",
				   path ? path : "");
	size_t sl = (size_t)(at - path), dl = strlen(at + 1);
	if (!sl || !dl)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "NIC path '%.64s': empty server or device",
				   path);
	if (sl >= server_len || dl >= device_len)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "NIC path '%.64s' too long", path);
	memcpy(server, path, sl);
	server[sl] = '\0';
	memcpy(device, at + 1, dl + 1);
	return KVB_OK;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int kvb_mc_gid_parse(const char *text, uint8_t gid[16], kvb_err_t *err)
{
	if (!text || strlen(text) != KVB_MC_GID_TEXT_LEN)
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "gid '%.64s': expected 16 hex bytes joined by ':'", text ? text : "");
	for (int i = 0; i < 16; i++) {
		const char *p = text + i * 3;
		int hi = hexval(p[0]), lo = hexval(p[1]);
		if (hi < 0 || lo < 0 || (i < 15 && p[2] != ':'))
			return kvb_err_set(err, KVB_ERR_PROTOCOL,
					   "gid '%.64s': byte %d is not two hex digits and a ':'", text, i);
		gid[i] = (uint8_t)(hi << 4 | lo);
	}
	return KVB_OK;
}

void kvb_mc_gid_format(const uint8_t gid[16], char text[KVB_MC_GID_TEXT_LEN + 1])
{
	static const char hx[] = "0123456789abcdef";
	for (int i = 0; i < 16; i++) {
		text[i * 3] = hx[gid[i] >> 4];
		text[i * 3 + 1] = hx[gid[i] & 15];
		if (i < 15)
			text[i * 3 + 2] = ':';
	}
	text[KVB_MC_GID_TEXT_LEN] = '\0';
}

/* ---- JSON helpers ----------------------------------------------------------- */

/* json-glib negates the saturated magnitude of a negative integer, so
 * "-18446744073709551615" reads as 1 and "-9223372036854775809" as
 * INT64_MAX: find integers below -2^63 in the text (outside strings) so
 * they are refused instead of read as some other value. */
static bool has_huge_negative(const char *json, size_t len)
{
	bool in_str = false;
	for (size_t i = 0; i < len; i++) {
		if (in_str) {
			if (json[i] == '\\')
				i++;
			else if (json[i] == '"')
				in_str = false;
			continue;
		}
		if (json[i] == '"') {
			in_str = true;
			continue;
		}
		if (json[i] != '-')
			continue;
		size_t j = i + 1, d;
		while (j < len && json[j] == '0')
			j++;
		for (d = j; d < len && json[d] >= '0' && json[d] <= '9'; d++)
			;
		bool frac = d < len && (json[d] == '.' || json[d] == 'e' || json[d] == 'E');
		size_t nd = d - j;
		if (!frac && (nd > 19 || (nd == 19 && memcmp(json + j, "9223372036854775808", 19) > 0)))
			return true;
		i = d - 1;
	}
	return false;
}

/* What json-glib accepts but JSON (and Mooncake's jsoncpp) does not: more
 * than one top-level value ("{}{}"), single-quoted strings, numbers with a
 * leading zero.  Returns a reason, or NULL when the text is one JSON value
 * as far as these go (json-glib checks the rest). */
static const char *json_text_problem(const char *json, size_t len)
{
	bool in_str = false;
	int depth = 0;
	bool seen = false; /* the top-level value has started */
	for (size_t i = 0; i < len; i++) {
		char c = json[i];
		if (in_str) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_str = false;
			continue;
		}
		if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
			continue;
		if (seen && depth == 0)
			return "data after the JSON value";
		if (c == '"') {
			in_str = true;
		} else if (c == '\'') {
			return "a single-quoted string";
		} else if (c == '{' || c == '[') {
			depth++;
		} else if (c == '}' || c == ']') {
			depth--;
		} else if ((c >= '0' && c <= '9') || c == '-') {
			/* a number token: no leading zero before another digit */
			size_t j = c == '-' ? i + 1 : i;
			if (j + 1 < len && json[j] == '0' && json[j + 1] >= '0' && json[j + 1] <= '9')
				return "a number with a leading zero";
			while (i + 1 < len && strchr("0123456789+-.eE", json[i + 1]))
				i++;
		}
		seen = true;
		if (depth < 0)
			return "unbalanced brackets";
	}
	return NULL;
}

static JsonObject *parse_object(const char *json, size_t len, JsonParser **parser, const char *what,
				kvb_err_t *err)
{
	*parser = json_parser_new_immutable();
	GError *gerr = NULL;
	/* a trailing newline (jsoncpp's FastWriter) is fine; NUL bytes are not */
	if (memchr(json, '\0', len)) {
		kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: NUL byte inside the JSON", what);
		return NULL;
	}
	if (has_huge_negative(json, len)) {
		kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: an integer below -2^63", what);
		return NULL;
	}
	const char *problem = json_text_problem(json, len);
	if (problem) {
		kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: invalid JSON: %s", what, problem);
		return NULL;
	}
	if (!json_parser_load_from_data(*parser, json, (gssize)len, &gerr)) {
		kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: invalid JSON: %s", what, gerr->message);
		g_error_free(gerr);
		return NULL;
	}
	JsonNode *root = json_parser_get_root(*parser);
	if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
		kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: not a JSON object", what);
		return NULL;
	}
	return json_node_get_object(root);
}

/* A string member; absent is allowed (*out = "") unless required. */
static int get_str(JsonObject *o, const char *name, char *out, size_t out_len, bool required,
		   const char *what, kvb_err_t *err)
{
	out[0] = '\0';
	JsonNode *n = json_object_get_member(o, name);
	if (!n || JSON_NODE_HOLDS_NULL(n)) {
		if (required)
			return kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: %s missing", what, name);
		return KVB_OK;
	}
	if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_STRING)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: %s is not a string", what, name);
	const char *s = json_node_get_string(n);
	if (strlen(s) >= out_len)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: %s longer than %zu bytes", what, name,
				   out_len - 1);
	/* json-glib turns a lone surrogate escape ("\ud800x") into bytes that
	 * are not UTF-8; written back, no JSON parser would read them */
	if (!g_utf8_validate(s, -1, NULL))
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: %s is not valid UTF-8", what, name);
	memcpy(out, s, strlen(s) + 1);
	return KVB_OK;
}

/* An unsigned integer member within [0, max]; absent -> def unless required. */
static int get_uint(JsonObject *o, const char *name, uint64_t max, uint64_t def, bool required,
		    uint64_t *out, const char *what, kvb_err_t *err)
{
	JsonNode *n = json_object_get_member(o, name);
	if (!n || JSON_NODE_HOLDS_NULL(n)) {
		if (required)
			return kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: %s missing", what, name);
		*out = def;
		return KVB_OK;
	}
	if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_INT64)
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "%s: %s is not an integer (or is above 2^63)", what, name);
	gint64 v = json_node_get_int(n);
	if (v < 0 || (uint64_t)v > max)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: %s = %" G_GINT64_FORMAT " outside 0..%" PRIu64,
				   what, name, v, max);
	*out = (uint64_t)v;
	return KVB_OK;
}

/* An optional array member of at most max entries: *a = NULL, *n = 0 when
 * absent or null.  Refusals read "WHAT: NAME is not an array" and
 * "WHAT: N UNIT (max MAX)". */
static int get_array(JsonObject *o, const char *name, guint max, const char *unit, JsonArray **a,
		     guint *n, const char *what, kvb_err_t *err)
{
	JsonNode *node = json_object_get_member(o, name);
	*a = NULL;
	*n = 0;
	if (!node || JSON_NODE_HOLDS_NULL(node))
		return KVB_OK;
	if (!JSON_NODE_HOLDS_ARRAY(node))
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: %s is not an array", what, name);
	guint len = json_array_get_length(json_node_get_array(node));
	if (len > max)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: %u %s (max %u)", what, len, unit, max);
	*a = json_node_get_array(node);
	*n = len;
	return KVB_OK;
}

static int node_uint(JsonNode *n, uint64_t max, uint64_t *out)
{
	if (!n || !JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_INT64)
		return -1;
	gint64 v = json_node_get_int(n);
	if (v < 0 || (uint64_t)v > max)
		return -1;
	*out = (uint64_t)v;
	return 0;
}

static char *generate(JsonBuilder *b)
{
	JsonGenerator *g = json_generator_new();
	JsonNode *root = json_builder_get_root(b);
	json_generator_set_root(g, root);
	char *s = json_generator_to_data(g, NULL);
	json_node_unref(root);
	g_object_unref(g);
	return s;
}

/* ---- segment descriptor ------------------------------------------------------ */

void kvb_mc_segment_clear(kvb_mc_segment_t *seg)
{
	if (!seg)
		return;
	for (uint32_t i = 0; seg->buffers && i < seg->n_buffers; i++) {
		g_free(seg->buffers[i].rkey);
		g_free(seg->buffers[i].lkey);
		g_free(seg->buffers[i].mirror_rkey);
	}
	g_free(seg->devices);
	g_free(seg->buffers);
	g_free(seg->locations);
	memset(seg, 0, sizeof(*seg));
}

static int device_index(const kvb_mc_segment_t *seg, const char *name)
{
	for (uint32_t i = 0; i < seg->n_devices; i++)
		if (!strcmp(seg->devices[i].name, name))
			return (int)i;
	return -1;
}

int kvb_mc_segment_to_json(const kvb_mc_segment_t *seg, GString *out, kvb_err_t *err)
{
	bool tcp = !strcmp(seg->protocol, "tcp");
	for (uint32_t i = 0; i < seg->n_buffers; i++) {
		const kvb_mc_buffer_t *b = &seg->buffers[i];
		if (b->addr > (uint64_t)G_MAXINT64 || b->length > (uint64_t)G_MAXINT64)
			return kvb_err_set(err, KVB_ERR_INVALID,
					   "buffer %u: addr or length above 2^63 cannot be written", i);
		if (!tcp && b->n_keys != seg->n_devices)
			return kvb_err_set(err, KVB_ERR_INVALID, "buffer %u has %u keys for %u devices", i,
					   b->n_keys, seg->n_devices);
	}
	if (seg->n_tcp_sources > KVB_MC_MAX_SOURCES)
		return kvb_err_set(err, KVB_ERR_INVALID, "%u kvb_tcp_sources (at most %u)",
				   seg->n_tcp_sources, KVB_MC_MAX_SOURCES);
	for (uint32_t i = 0; i < seg->n_tcp_sources; i++)
		if (!numeric_addr(seg->tcp_sources[i]))
			return kvb_err_set(err, KVB_ERR_INVALID, "kvb_tcp_sources[%u] is not a numeric address", i);
	JsonBuilder *jb = json_builder_new();
	json_builder_begin_object(jb);
	json_builder_set_member_name(jb, "name");
	json_builder_add_string_value(jb, seg->name);
	if (seg->n_tcp_sources) {
		json_builder_set_member_name(jb, "kvb_tcp_sources");
		json_builder_begin_array(jb);
		for (uint32_t i = 0; i < seg->n_tcp_sources; i++)
			json_builder_add_string_value(jb, seg->tcp_sources[i]);
		json_builder_end_array(jb);
	}
	json_builder_set_member_name(jb, "protocol");
	json_builder_add_string_value(jb, seg->protocol);
	json_builder_set_member_name(jb, "tcp_data_port");
	json_builder_add_int_value(jb, seg->tcp_data_port);
	if (tcp && seg->tcp_data_host[0]) {
		json_builder_set_member_name(jb, "tcp_data_host");
		json_builder_add_string_value(jb, seg->tcp_data_host);
	}
	json_builder_set_member_name(jb, "tcp_proto_version");
	json_builder_add_int_value(jb, seg->tcp_proto_version ? seg->tcp_proto_version : 1);
	json_builder_set_member_name(jb, "timestamp");
	json_builder_add_string_value(jb, seg->timestamp);
	if (seg->rdma_server_name[0]) {
		json_builder_set_member_name(jb, "rdma_server_name");
		json_builder_add_string_value(jb, seg->rdma_server_name);
	}
	if (!tcp) {
		json_builder_set_member_name(jb, "devices");
		json_builder_begin_array(jb);
		for (uint32_t i = 0; i < seg->n_devices; i++) {
			char gid[KVB_MC_GID_TEXT_LEN + 1];
			kvb_mc_gid_format(seg->devices[i].gid, gid);
			json_builder_begin_object(jb);
			json_builder_set_member_name(jb, "name");
			json_builder_add_string_value(jb, seg->devices[i].name);
			json_builder_set_member_name(jb, "lid");
			json_builder_add_int_value(jb, seg->devices[i].lid);
			json_builder_set_member_name(jb, "gid");
			json_builder_add_string_value(jb, gid);
			json_builder_end_object(jb);
		}
		json_builder_end_array(jb);
	}
	json_builder_set_member_name(jb, "buffers");
	json_builder_begin_array(jb);
	for (uint32_t i = 0; i < seg->n_buffers; i++) {
		const kvb_mc_buffer_t *b = &seg->buffers[i];
		json_builder_begin_object(jb);
		json_builder_set_member_name(jb, "name");
		json_builder_add_string_value(jb, b->name);
		json_builder_set_member_name(jb, "addr");
		json_builder_add_int_value(jb, (gint64)b->addr);
		json_builder_set_member_name(jb, "length");
		json_builder_add_int_value(jb, (gint64)b->length);
		if (!tcp) {
			json_builder_set_member_name(jb, "rkey");
			json_builder_begin_array(jb);
			for (uint32_t k = 0; k < b->n_keys; k++)
				json_builder_add_int_value(jb, b->rkey[k]);
			json_builder_end_array(jb);
			json_builder_set_member_name(jb, "lkey");
			json_builder_begin_array(jb);
			for (uint32_t k = 0; k < b->n_keys; k++)
				json_builder_add_int_value(jb, b->lkey[k]);
			json_builder_end_array(jb);
			if (b->mirror_rkey) {
				json_builder_set_member_name(jb, "kvb_mirror_rkey");
				json_builder_begin_array(jb);
				for (uint32_t k = 0; k < b->n_keys; k++)
					json_builder_add_int_value(jb, b->mirror_rkey[k]);
				json_builder_end_array(jb);
			}
		}
		json_builder_end_object(jb);
	}
	json_builder_end_array(jb);
	if (!tcp) {
		json_builder_set_member_name(jb, "priority_matrix");
		json_builder_begin_object(jb);
		for (uint32_t i = 0; i < seg->n_locations; i++) {
			const kvb_mc_location_t *l = &seg->locations[i];
			json_builder_set_member_name(jb, l->name);
			json_builder_begin_array(jb);
			json_builder_begin_array(jb);
			for (uint32_t k = 0; k < l->n_preferred; k++)
				json_builder_add_string_value(jb, seg->devices[l->preferred[k]].name);
			json_builder_end_array(jb);
			json_builder_begin_array(jb);
			for (uint32_t k = 0; k < l->n_available; k++)
				json_builder_add_string_value(jb, seg->devices[l->available[k]].name);
			json_builder_end_array(jb);
			json_builder_end_array(jb);
		}
		json_builder_end_object(jb);
	}
	json_builder_end_object(jb);
	char *s = generate(jb);
	g_object_unref(jb);
	g_string_append(out, s);
	g_free(s);
	return KVB_OK;
}

static int parse_keys(JsonObject *bo, const char *name, uint32_t **out, uint32_t *n, uint32_t idx,
		      kvb_err_t *err)
{
	JsonNode *kn = json_object_get_member(bo, name);
	*n = 0;
	*out = NULL;
	if (!kn || JSON_NODE_HOLDS_NULL(kn))
		return KVB_OK;
	if (!JSON_NODE_HOLDS_ARRAY(kn))
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "descriptor: buffers[%u].%s is not an array", idx,
				   name);
	JsonArray *a = json_node_get_array(kn);
	guint len = json_array_get_length(a);
	if (len > KVB_MC_MAX_DEVICES)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "descriptor: buffers[%u].%s has %u keys (max %u)",
				   idx, name, len, KVB_MC_MAX_DEVICES);
	*out = g_new0(uint32_t, len ? len : 1);
	for (guint k = 0; k < len; k++) {
		uint64_t v;
		if (node_uint(json_array_get_element(a, k), UINT32_MAX, &v)) {
			g_free(*out);
			*out = NULL;
			return kvb_err_set(err, KVB_ERR_PROTOCOL,
					   "descriptor: buffers[%u].%s[%u] is not a 32-bit key", idx, name, k);
		}
		(*out)[k] = (uint32_t)v;
	}
	*n = len;
	return KVB_OK;
}

static int parse_name_list(const kvb_mc_segment_t *seg, JsonNode *n, uint32_t *out, uint32_t *count,
			   const char *loc, const char *which, kvb_err_t *err)
{
	if (!n || !JSON_NODE_HOLDS_ARRAY(n))
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "descriptor: priority_matrix[%.64s] %s list is not an array", loc, which);
	JsonArray *a = json_node_get_array(n);
	guint len = json_array_get_length(a);
	if (len > KVB_MC_MAX_DEVICES)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "descriptor: priority_matrix[%.64s] lists %u NICs",
				   loc, len);
	for (guint i = 0; i < len; i++) {
		JsonNode *e = json_array_get_element(a, i);
		if (!JSON_NODE_HOLDS_VALUE(e) || json_node_get_value_type(e) != G_TYPE_STRING)
			return kvb_err_set(err, KVB_ERR_PROTOCOL,
					   "descriptor: priority_matrix[%.64s] %s[%u] is not a NIC name", loc,
					   which, i);
		int idx = device_index(seg, json_node_get_string(e));
		if (idx < 0)
			return kvb_err_set(err, KVB_ERR_PROTOCOL,
					   "descriptor: priority_matrix[%.64s] names unknown NIC '%.64s'", loc,
					   json_node_get_string(e));
		out[i] = (uint32_t)idx;
	}
	*count = len;
	return KVB_OK;
}

int kvb_mc_segment_from_json(const char *json, size_t len, kvb_mc_segment_t *seg, kvb_err_t *err)
{
	memset(seg, 0, sizeof(*seg));
	JsonParser *jp;
	const char *W = "descriptor";
	JsonObject *o = parse_object(json, len, &jp, W, err);
	int rc = KVB_OK;
	uint64_t v;
	if (!o) {
		rc = KVB_ERR_PROTOCOL;
		goto out;
	}
	if ((rc = get_str(o, "name", seg->name, sizeof(seg->name), true, W, err)) != KVB_OK)
		goto out;
	/* protocol: a string, or an array (multi-protocol builds): take the first */
	JsonNode *pn = json_object_get_member(o, "protocol");
	if (pn && JSON_NODE_HOLDS_ARRAY(pn)) {
		JsonArray *pa = json_node_get_array(pn);
		JsonNode *first = json_array_get_length(pa) ? json_array_get_element(pa, 0) : NULL;
		if (!first || !JSON_NODE_HOLDS_VALUE(first) ||
		    json_node_get_value_type(first) != G_TYPE_STRING ||
		    strlen(json_node_get_string(first)) >= sizeof(seg->protocol) ||
		    !g_utf8_validate(json_node_get_string(first), -1, NULL)) {
			rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "descriptor: protocol array is empty or bad");
			goto out;
		}
		g_strlcpy(seg->protocol, json_node_get_string(first), sizeof(seg->protocol));
	} else if ((rc = get_str(o, "protocol", seg->protocol, sizeof(seg->protocol), true, W, err)) !=
		   KVB_OK) {
		goto out;
	}
	if ((rc = get_uint(o, "tcp_data_port", 65535, 0, false, &v, W, err)) != KVB_OK)
		goto out;
	seg->tcp_data_port = (uint32_t)v;
	if ((rc = get_str(o, "tcp_data_host", seg->tcp_data_host, sizeof(seg->tcp_data_host), false, W,
			  err)) != KVB_OK)
		goto out;
	if ((rc = get_uint(o, "tcp_proto_version", 255, 1, false, &v, W, err)) != KVB_OK)
		goto out;
	seg->tcp_proto_version = (uint32_t)v;
	if ((rc = get_str(o, "timestamp", seg->timestamp, sizeof(seg->timestamp), false, W, err)) !=
	    KVB_OK)
		goto out;
	if ((rc = get_str(o, "rdma_server_name", seg->rdma_server_name, sizeof(seg->rdma_server_name),
			  false, W, err)) != KVB_OK)
		goto out;
	JsonArray *sa;
	guint ns;
	if ((rc = get_array(o, "kvb_tcp_sources", KVB_MC_MAX_SOURCES, "kvb_tcp_sources", &sa, &ns, W, err)) !=
	    KVB_OK)
		goto out;
	for (guint i = 0; sa && i < ns; i++) {
		JsonNode *e = json_array_get_element(sa, i);
		const char *t = e && JSON_NODE_HOLDS_VALUE(e) && json_node_get_value_type(e) == G_TYPE_STRING
					? json_node_get_string(e) : NULL;
		if (!t || strlen(t) >= KVB_MC_ADDR_TEXT_MAX || !numeric_addr(t)) {
			rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: kvb_tcp_sources[%u] is not a numeric address",
					 W, i);
			goto out;
		}
		g_strlcpy(seg->tcp_sources[i], t, KVB_MC_ADDR_TEXT_MAX);
		seg->n_tcp_sources = i + 1;
	}

	/* devices */
	JsonArray *da;
	guint nd;
	if ((rc = get_array(o, "devices", KVB_MC_MAX_DEVICES, "devices", &da, &nd, W, err)) != KVB_OK)
		goto out;
	if (da) {
		seg->devices = g_new0(kvb_mc_device_t, nd ? nd : 1);
		seg->n_devices = nd;
		for (guint i = 0; i < nd; i++) {
			JsonNode *e = json_array_get_element(da, i);
			char what[48], gid[64];
			g_snprintf(what, sizeof(what), "descriptor: devices[%u]", i);
			if (!JSON_NODE_HOLDS_OBJECT(e)) {
				rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "%s is not an object", what);
				goto out;
			}
			JsonObject *eo = json_node_get_object(e);
			if ((rc = get_str(eo, "name", seg->devices[i].name, sizeof(seg->devices[i].name), true,
					  what, err)) != KVB_OK ||
			    (rc = get_str(eo, "gid", gid, sizeof(gid), true, what, err)) != KVB_OK ||
			    (rc = get_uint(eo, "lid", 65535, 0, false, &v, what, err)) != KVB_OK)
				goto out;
			if (!seg->devices[i].name[0]) {
				rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: empty name", what);
				goto out;
			}
			seg->devices[i].lid = (uint32_t)v;
			if ((rc = kvb_mc_gid_parse(gid, seg->devices[i].gid, err)) != KVB_OK) {
				kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: gid '%s' is not 16 hex bytes", what, gid);
				goto out;
			}
		}
	}

	/* buffers */
	JsonArray *ba;
	guint nb;
	if ((rc = get_array(o, "buffers", KVB_MC_MAX_BUFFERS, "buffers", &ba, &nb, W, err)) != KVB_OK)
		goto out;
	if (ba) {
		seg->buffers = g_new0(kvb_mc_buffer_t, nb ? nb : 1);
		seg->n_buffers = nb;
		for (guint i = 0; i < nb; i++) {
			JsonNode *e = json_array_get_element(ba, i);
			kvb_mc_buffer_t *b = &seg->buffers[i];
			char what[48];
			g_snprintf(what, sizeof(what), "descriptor: buffers[%u]", i);
			if (!JSON_NODE_HOLDS_OBJECT(e)) {
				rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "%s is not an object", what);
				goto out;
			}
			JsonObject *eo = json_node_get_object(e);
			if ((rc = get_str(eo, "name", b->name, sizeof(b->name), true, what, err)) != KVB_OK ||
			    (rc = get_uint(eo, "addr", G_MAXINT64, 0, true, &b->addr, what, err)) != KVB_OK ||
			    (rc = get_uint(eo, "length", G_MAXINT64, 0, true, &b->length, what, err)) != KVB_OK)
				goto out;
			if (!b->name[0] || !b->addr || !b->length) {
				rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: empty name, addr 0 or length 0", what);
				goto out;
			}
			if (b->addr + b->length < b->addr) {
				rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "%s: addr + length wraps", what);
				goto out;
			}
			uint32_t nr, nl, nm;
			if ((rc = parse_keys(eo, "rkey", &b->rkey, &nr, i, err)) != KVB_OK ||
			    (rc = parse_keys(eo, "lkey", &b->lkey, &nl, i, err)) != KVB_OK ||
			    (rc = parse_keys(eo, "kvb_mirror_rkey", &b->mirror_rkey, &nm, i, err)) != KVB_OK)
				goto out;
			if (nr && (nr != nl || nr != seg->n_devices)) {
				rc = kvb_err_set(err, KVB_ERR_PROTOCOL,
						 "%s: %u rkeys, %u lkeys for %u devices (they must match)", what,
						 nr, nl, seg->n_devices);
				goto out;
			}
			if (b->mirror_rkey && nm != nr) {
				rc = kvb_err_set(err, KVB_ERR_PROTOCOL,
						 "%s: %u kvb_mirror_rkey entries for %u rkeys (they must match)",
						 what, nm, nr);
				goto out;
			}
			b->n_keys = nr;
		}
	}

	/* priority matrix: {location: [[preferred], [available]]} */
	JsonNode *mn = json_object_get_member(o, "priority_matrix");
	if (mn && !JSON_NODE_HOLDS_NULL(mn)) {
		if (!JSON_NODE_HOLDS_OBJECT(mn)) {
			rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "descriptor: priority_matrix is not an object");
			goto out;
		}
		JsonObject *mo = json_node_get_object(mn);
		GList *names = json_object_get_members(mo);
		guint nl = g_list_length(names);
		if (nl > KVB_MC_MAX_LOCATIONS) {
			g_list_free(names);
			rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "descriptor: %u priority_matrix entries (max %u)",
					 nl, KVB_MC_MAX_LOCATIONS);
			goto out;
		}
		seg->locations = g_new0(kvb_mc_location_t, nl ? nl : 1);
		uint32_t i = 0;
		for (GList *l = names; l; l = l->next, i++) {
			kvb_mc_location_t *loc = &seg->locations[i];
			const char *name = l->data;
			if (strlen(name) >= sizeof(loc->name) || !g_utf8_validate(name, -1, NULL)) {
				rc = kvb_err_set(err, KVB_ERR_PROTOCOL,
						 "descriptor: location name too long or not UTF-8");
				break;
			}
			g_strlcpy(loc->name, name, sizeof(loc->name));
			seg->n_locations = i + 1;
			JsonNode *en = json_object_get_member(mo, name);
			if (!JSON_NODE_HOLDS_ARRAY(en) || json_array_get_length(json_node_get_array(en)) != 2) {
				rc = kvb_err_set(err, KVB_ERR_PROTOCOL,
						 "descriptor: priority_matrix[%.64s] is not [[preferred], [available]]",
						 name);
				break;
			}
			JsonArray *ea = json_node_get_array(en);
			if ((rc = parse_name_list(seg, json_array_get_element(ea, 0), loc->preferred,
						  &loc->n_preferred, name, "preferred", err)) != KVB_OK ||
			    (rc = parse_name_list(seg, json_array_get_element(ea, 1), loc->available,
						  &loc->n_available, name, "available", err)) != KVB_OK)
				break;
		}
		g_list_free(names);
	}
out:
	g_object_unref(jp);
	if (rc != KVB_OK)
		kvb_mc_segment_clear(seg);
	return rc;
}

const kvb_mc_buffer_t *kvb_mc_segment_find(const kvb_mc_segment_t *seg, uint64_t addr, uint64_t len)
{
	if (!len || addr + len < addr)
		return NULL;
	for (uint32_t i = 0; i < seg->n_buffers; i++) {
		const kvb_mc_buffer_t *b = &seg->buffers[i];
		if (addr >= b->addr && addr + len <= b->addr + b->length)
			return b;
	}
	return NULL;
}

/* ---- HandShakeDesc ------------------------------------------------------------ */

int kvb_mc_handshake_to_json(const kvb_mc_handshake_t *hs, GString *out, kvb_err_t *err)
{
	if (hs->n_qp > KVB_MC_MAX_QP)
		return kvb_err_set(err, KVB_ERR_INVALID, "handshake: %u QPs (max %u)", hs->n_qp,
				   KVB_MC_MAX_QP);
	JsonBuilder *jb = json_builder_new();
	json_builder_begin_object(jb);
	json_builder_set_member_name(jb, "local_nic_path");
	json_builder_add_string_value(jb, hs->local_nic_path);
	if (hs->has_gid) {
		char gid[KVB_MC_GID_TEXT_LEN + 1];
		kvb_mc_gid_format(hs->local_gid, gid);
		json_builder_set_member_name(jb, "local_lid");
		json_builder_add_int_value(jb, hs->local_lid);
		json_builder_set_member_name(jb, "local_gid");
		json_builder_add_string_value(jb, gid);
	}
	json_builder_set_member_name(jb, "peer_nic_path");
	json_builder_add_string_value(jb, hs->peer_nic_path);
	json_builder_set_member_name(jb, "qp_num");
	json_builder_begin_array(jb);
	for (uint32_t i = 0; i < hs->n_qp; i++)
		json_builder_add_int_value(jb, hs->qp_num[i]);
	json_builder_end_array(jb);
	if (hs->ready_ack >= 0) {
		json_builder_set_member_name(jb, "ready_ack");
		json_builder_add_boolean_value(jb, hs->ready_ack != 0);
	}
	if (hs->kvb_path_mtu) {
		json_builder_set_member_name(jb, "kvb_path_mtu");
		json_builder_add_int_value(jb, hs->kvb_path_mtu);
	}
	json_builder_set_member_name(jb, "reply_msg");
	json_builder_add_string_value(jb, hs->reply_msg);
	json_builder_set_member_name(jb, "payload");
	json_builder_add_string_value(jb, hs->payload);
	json_builder_end_object(jb);
	char *s = generate(jb);
	g_object_unref(jb);
	g_string_append(out, s);
	g_free(s);
	return KVB_OK;
}

int kvb_mc_handshake_from_json(const char *json, size_t len, kvb_mc_handshake_t *hs,
			       kvb_err_t *err)
{
	memset(hs, 0, sizeof(*hs));
	hs->ready_ack = -1;
	JsonParser *jp;
	const char *W = "handshake";
	JsonObject *o = parse_object(json, len, &jp, W, err);
	int rc = KVB_ERR_PROTOCOL;
	uint64_t v;
	if (!o) {
		rc = KVB_ERR_PROTOCOL;
		goto out;
	}
	if ((rc = get_str(o, "local_nic_path", hs->local_nic_path, sizeof(hs->local_nic_path), true, W,
			  err)) != KVB_OK ||
	    (rc = get_str(o, "peer_nic_path", hs->peer_nic_path, sizeof(hs->peer_nic_path), true, W,
			  err)) != KVB_OK ||
	    (rc = get_str(o, "reply_msg", hs->reply_msg, sizeof(hs->reply_msg), false, W, err)) !=
		    KVB_OK ||
	    (rc = get_str(o, "payload", hs->payload, sizeof(hs->payload), false, W, err)) != KVB_OK)
		goto out;
	JsonArray *qa;
	guint nq;
	if ((rc = get_array(o, "qp_num", KVB_MC_MAX_QP, "QPs", &qa, &nq, W, err)) != KVB_OK)
		goto out;
	if (qa) {
		for (guint i = 0; i < nq; i++) {
			if (node_uint(json_array_get_element(qa, i), 0xFFFFFF, &v)) {
				rc = kvb_err_set(err, KVB_ERR_PROTOCOL,
						 "handshake: qp_num[%u] is not a 24-bit QP number", i);
				goto out;
			}
			hs->qp_num[i] = (uint32_t)v;
		}
		hs->n_qp = nq;
	}
	JsonNode *gn = json_object_get_member(o, "local_gid");
	if (gn && !JSON_NODE_HOLDS_NULL(gn)) {
		char gid[64];
		if ((rc = get_str(o, "local_gid", gid, sizeof(gid), true, W, err)) != KVB_OK)
			goto out;
		if (kvb_mc_gid_parse(gid, hs->local_gid, NULL) != KVB_OK) {
			rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "handshake: local_gid '%s' is not 16 hex bytes",
					 gid);
			goto out;
		}
		if ((rc = get_uint(o, "local_lid", 65535, 0, false, &v, W, err)) != KVB_OK)
			goto out;
		hs->local_lid = (uint32_t)v;
		hs->has_gid = true;
	}
	JsonNode *an = json_object_get_member(o, "ready_ack");
	if (an && !JSON_NODE_HOLDS_NULL(an)) {
		if (!JSON_NODE_HOLDS_VALUE(an) || json_node_get_value_type(an) != G_TYPE_BOOLEAN) {
			rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "handshake: ready_ack is not a boolean");
			goto out;
		}
		hs->ready_ack = json_node_get_boolean(an) ? 1 : 0;
	}
	if ((rc = get_uint(o, "kvb_path_mtu", 65536, 0, false, &v, W, err)) != KVB_OK)
		goto out;
	hs->kvb_path_mtu = (uint32_t)v;
	rc = KVB_OK;
out:
	g_object_unref(jp);
	return rc;
}

/* ---- notify and probe ------------------------------------------------------- */

int kvb_mc_notify_to_json(const kvb_mc_notify_t *n, GString *out, kvb_err_t *err)
{
	(void)err;
	JsonBuilder *jb = json_builder_new();
	json_builder_begin_object(jb);
	json_builder_set_member_name(jb, "name");
	json_builder_add_string_value(jb, n->name);
	json_builder_set_member_name(jb, "notify_msg");
	json_builder_add_string_value(jb, n->notify_msg);
	json_builder_end_object(jb);
	char *s = generate(jb);
	g_object_unref(jb);
	g_string_append(out, s);
	g_free(s);
	return KVB_OK;
}

int kvb_mc_notify_from_json(const char *json, size_t len, kvb_mc_notify_t *n, kvb_err_t *err)
{
	memset(n, 0, sizeof(*n));
	JsonParser *jp;
	JsonObject *o = parse_object(json, len, &jp, "notify", err);
	int rc = KVB_ERR_PROTOCOL;
	if (o && (rc = get_str(o, "name", n->name, sizeof(n->name), true, "notify", err)) == KVB_OK)
		rc = get_str(o, "notify_msg", n->notify_msg, sizeof(n->notify_msg), true, "notify", err);
	g_object_unref(jp);
	return rc;
}

const char *kvb_mc_notify_reply_json(void)
{
	return "{\"name\":\"\",\"notify_msg\":\"success\"}";
}

const char *kvb_mc_probe_reply_json(void)
{
	return "{\"status\":\"success\"}";
}

/* ---- TCP transport ------------------------------------------------------------ */

static void put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

void kvb_mc_tcp_header_encode(uint8_t out[KVB_MC_TCP_HEADER_LEN], const kvb_mc_tcp_header_t *h)
{
	memset(out, 0, KVB_MC_TCP_HEADER_LEN);
	put_le64(out, h->size);
	put_le64(out + 8, h->addr);
	out[16] = (uint8_t)(h->opcode | (h->v2 ? KVB_MC_TCP_OP_V2 : 0));
}

int kvb_mc_tcp_header_decode(const uint8_t in[KVB_MC_TCP_HEADER_LEN], kvb_mc_tcp_header_t *h,
			     kvb_err_t *err)
{
	uint64_t size = get_le64(in), addr = get_le64(in + 8);
	uint8_t op = in[16] & (uint8_t)~KVB_MC_TCP_OP_V2;
	if (op != KVB_MC_TCP_OP_READ && op != KVB_MC_TCP_OP_WRITE)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "tcp header: opcode 0x%02x unknown", in[16]);
	if (!size)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "tcp header: size 0");
	if (addr + size < addr)
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "tcp header: addr 0x%" PRIx64 " + size %" PRIu64 " wraps", addr, size);
	h->size = size;
	h->addr = addr;
	h->opcode = op;
	h->v2 = (in[16] & KVB_MC_TCP_OP_V2) != 0;
	return KVB_OK;
}

void kvb_mc_tcp_status_encode(uint8_t out[KVB_MC_TCP_STATUS_LEN], uint32_t code)
{
	put_le64(out, ((uint64_t)KVB_MC_TCP_STATUS_MAGIC << 32) | code);
}

int kvb_mc_tcp_status_decode(const uint8_t in[KVB_MC_TCP_STATUS_LEN], uint32_t *code,
			     kvb_err_t *err)
{
	uint64_t v = get_le64(in);
	if ((uint32_t)(v >> 32) != KVB_MC_TCP_STATUS_MAGIC)
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "tcp status frame without the MCTV magic (0x%016" PRIx64 ")", v);
	*code = (uint32_t)v;
	return KVB_OK;
}

/* ---- kvbridge GPU mirror sync ---------------------------------------------- */

void kvb_mc_sync_encode(uint8_t out[KVB_MC_SYNC_LEN], const kvb_mc_sync_t *s)
{
	put_le64(out, s->id);
	put_le64(out + 8, s->addr);
	put_le64(out + 16, s->len);
	out[24] = s->to_device ? 1 : 0;
}

int kvb_mc_sync_decode(const uint8_t *in, size_t len, kvb_mc_sync_t *s, kvb_err_t *err)
{
	if (len != KVB_MC_SYNC_LEN)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "sync frame of %zu bytes (expected %u)", len,
				   KVB_MC_SYNC_LEN);
	s->id = get_le64(in);
	s->addr = get_le64(in + 8);
	s->len = get_le64(in + 16);
	if (in[24] > 1)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "sync frame: direction %u unknown", in[24]);
	s->to_device = in[24] == 1;
	if (!s->len || s->addr + s->len < s->addr)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "sync frame: empty or wrapping range");
	return KVB_OK;
}

void kvb_mc_synced_encode(GByteArray *out, const kvb_mc_synced_t *s)
{
	uint8_t h[KVB_MC_SYNCED_MIN];
	put_le64(h, s->id);
	uint32_t st = (uint32_t)s->status;
	for (int i = 0; i < 4; i++)
		h[8 + i] = (uint8_t)(st >> (8 * i));
	g_byte_array_append(out, h, sizeof(h));
	size_t n = strnlen(s->why, KVB_MC_SYNC_WHY_MAX - 1);
	/* cut on a character boundary */
	while (n && !g_utf8_validate(s->why, (gssize)n, NULL))
		n--;
	g_byte_array_append(out, (const guint8 *)s->why, (guint)n);
}

int kvb_mc_synced_decode(const uint8_t *in, size_t len, kvb_mc_synced_t *s, kvb_err_t *err)
{
	if (len < KVB_MC_SYNCED_MIN || len - KVB_MC_SYNCED_MIN >= KVB_MC_SYNC_WHY_MAX)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "synced frame of %zu bytes (expected %u..%u)", len,
				   KVB_MC_SYNCED_MIN, KVB_MC_SYNCED_MIN + KVB_MC_SYNC_WHY_MAX - 1);
	s->id = get_le64(in);
	uint32_t st = 0;
	for (int i = 0; i < 4; i++)
		st |= (uint32_t)in[8 + i] << (8 * i);
	s->status = (int32_t)st;
	if (s->status > 0 || s->status < KVB_STATUS_MIN)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "synced frame: status %d unknown", s->status);
	size_t n = len - KVB_MC_SYNCED_MIN;
	if (memchr(in + KVB_MC_SYNCED_MIN, 0, n) ||
	    !g_utf8_validate((const char *)in + KVB_MC_SYNCED_MIN, (gssize)n, NULL))
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "synced frame: reason is not UTF-8 text");
	memcpy(s->why, in + KVB_MC_SYNCED_MIN, n);
	s->why[n] = 0;
	return KVB_OK;
}
