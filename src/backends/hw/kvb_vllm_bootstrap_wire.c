/*
 * vLLM Gen 1/2 HTTP bootstrap bodies (kvb_vllm_bootstrap_wire.h).
 *
 * JSON is read with json-glib after json_check has proved the text is one
 * RFC 8259 value: json-glib accepts more than JSON (several top-level
 * values, single quotes, leading zeros), recurses without a limit, turns
 * integers beyond 64 bits into other numbers and cuts strings at a \u0000
 * escape, so all of those are refused before it sees the text; duplicate
 * keys, which it keeps silently, are caught from its object-member signal.
 * Bodies are written by hand (py_*) because they must equal what Python's
 * json.dumps writes, byte for byte.
 */
#include "config.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-glib/json-glib.h>

#include "kvb_vllm_bootstrap_wire.h"

/* ---- strict JSON text check ------------------------------------------------- */

static size_t skip_ws(const char *s, size_t len, size_t i)
{
	while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
		i++;
	return i;
}

static int hex4(const char *s)
{
	int v = 0;
	for (int k = 0; k < 4; k++) {
		char c = s[k];
		int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
			: c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
		if (d < 0)
			return -1;
		v = v * 16 + d;
	}
	return v;
}

static const char *check_string(const char *s, size_t len, size_t *i)
{
	size_t j = *i + 1;
	while (j < len) {
		unsigned char c = (unsigned char)s[j];
		if (c == '"') {
			*i = j + 1;
			return NULL;
		}
		if (c < 0x20) {
			*i = j;
			return "Invalid control character in a string";
		}
		if (c != '\\') {
			j++;
			continue;
		}
		*i = j;
		if (j + 1 >= len)
			break;
		char e = s[j + 1];
		if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' ||
		    e == 't') {
			j += 2;
			continue;
		}
		if (e != 'u' || j + 6 > len || hex4(s + j + 2) < 0)
			return "Invalid \\escape";
		int v = hex4(s + j + 2);
		if (v == 0)
			return "A \\u0000 escape (NUL) in a string, which cannot be held";
		if (v >= 0xdc00 && v <= 0xdfff)
			return "A lone surrogate \\u escape";
		if (v >= 0xd800 && v <= 0xdbff) {
			int lo = j + 12 <= len && s[j + 6] == '\\' && s[j + 7] == 'u' ? hex4(s + j + 8) : -1;
			if (lo < 0xdc00 || lo > 0xdfff)
				return "A lone surrogate \\u escape";
			j += 12;
		} else {
			j += 6;
		}
	}
	*i = j;
	return "Unterminated string";
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static const char *check_number(const char *s, size_t len, size_t *i)
{
	size_t j = *i;
	if (s[j] == '-')
		j++;
	size_t start = j;
	if (j >= len || !is_digit(s[j]))
		return "Expecting value";
	if (s[j] == '0') {
		j++;
		if (j < len && is_digit(s[j]))
			return "A number with a leading zero";
	} else {
		while (j < len && is_digit(s[j]))
			j++;
	}
	size_t ndig = j - start;
	bool integer = true;
	if (j < len && s[j] == '.') {
		integer = false;
		if (++j >= len || !is_digit(s[j]))
			return "Expecting a digit after '.'";
		while (j < len && is_digit(s[j]))
			j++;
	}
	if (j < len && (s[j] == 'e' || s[j] == 'E')) {
		integer = false;
		j++;
		if (j < len && (s[j] == '+' || s[j] == '-'))
			j++;
		if (j >= len || !is_digit(s[j]))
			return "Expecting a digit in the exponent";
		while (j < len && is_digit(s[j]))
			j++;
	}
	/* Python would read inf; JSON and the echo in a 422 cannot hold it */
	if (!integer) {
		char *tok = g_strndup(s + *i, j - *i);
		bool finite = isfinite(g_ascii_strtod(tok, NULL));
		g_free(tok);
		if (!finite)
			return "A number beyond the range of a double";
	}
	/* json-glib would not read it exactly */
	if (integer && (ndig > 19 ||
			(ndig == 19 && memcmp(s + start, s[*i] == '-' ? "9223372036854775808"
								       : "9223372036854775807", 19) > 0)))
		return "An integer beyond 64 bits";
	*i = j;
	return NULL;
}

enum { S_VALUE, S_KEY, S_AFTER };

/* NULL when s is exactly one JSON value (RFC 8259, UTF-8) nested at most
 * KVB_VLLM_BOOT_MAX_DEPTH deep; else a reason, *at its byte offset. */
static const char *json_check(const char *s, size_t len, size_t *at)
{
	char stack[KVB_VLLM_BOOT_MAX_DEPTH];
	int depth = 0, st = S_VALUE;
	size_t i = 0;
	const char *why = NULL;
	const char *end;
	*at = 0;
	if (!g_utf8_validate(s, (gssize)len, &end)) {
		*at = (size_t)(end - s);
		return "Text that is not UTF-8";
	}
	for (;;) {
		i = skip_ws(s, len, i);
		*at = i;
		if (st == S_AFTER) {
			if (depth == 0)
				return i == len ? NULL : "Extra data";
			if (i >= len)
				return "Expecting ',' delimiter";
			char close = stack[depth - 1] == '{' ? '}' : ']';
			if (s[i] == ',') {
				i++;
				st = stack[depth - 1] == '{' ? S_KEY : S_VALUE;
			} else if (s[i] == close) {
				i++;
				depth--;
			} else {
				return "Expecting ',' delimiter";
			}
			continue;
		}
		if (st == S_KEY) {
			if (i >= len || s[i] != '"')
				return "Expecting property name enclosed in double quotes";
			if ((why = check_string(s, len, &i))) {
				*at = i;
				return why;
			}
			i = skip_ws(s, len, i);
			if (i >= len || s[i] != ':') {
				*at = i;
				return "Expecting ':' delimiter";
			}
			i++;
			st = S_VALUE;
			continue;
		}
		if (i >= len)
			return "Expecting value";
		char c = s[i];
		if (c == '{' || c == '[') {
			if (depth == KVB_VLLM_BOOT_MAX_DEPTH)
				return "Nesting deeper than 32 levels";
			stack[depth++] = c;
			i = skip_ws(s, len, i + 1);
			if (i < len && s[i] == (c == '{' ? '}' : ']')) {
				i++;
				depth--;
				st = S_AFTER;
			} else {
				st = c == '{' ? S_KEY : S_VALUE;
			}
			continue;
		}
		if (c == '"')
			why = check_string(s, len, &i);
		else if (c == '-' || is_digit(c))
			why = check_number(s, len, &i);
		else if (len - i >= 4 && !memcmp(s + i, "true", 4))
			i += 4;
		else if (len - i >= 5 && !memcmp(s + i, "false", 5))
			i += 5;
		else if (len - i >= 4 && !memcmp(s + i, "null", 4))
			i += 4;
		else
			why = "Expecting value";
		if (why) {
			*at = i;
			return why;
		}
		st = S_AFTER;
	}
}

typedef struct dup_watch {
	GHashTable *seen;
	char *dup;
} dup_watch_t;

static void on_member(JsonParser *p, JsonObject *o, const gchar *name, gpointer data)
{
	dup_watch_t *w = data;
	(void)p;
	char *key = g_strdup_printf("%p/%s", (void *)o, name);
	if (!g_hash_table_add(w->seen, key) && !w->dup)
		w->dup = g_strdup(name);
}

/* The root of checked JSON text, or NULL with *why set (g_free it). */
static JsonParser *json_load(const char *s, size_t len, char **why, size_t *at)
{
	*why = NULL;
	const char *problem = json_check(s, len, at);
	if (problem) {
		*why = g_strdup(problem);
		return NULL;
	}
	JsonParser *p = json_parser_new();
	dup_watch_t w = {g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL), NULL};
	gulong id = g_signal_connect(p, "object-member", G_CALLBACK(on_member), &w);
	GError *gerr = NULL;
	gboolean ok = json_parser_load_from_data(p, s, (gssize)len, &gerr);
	g_signal_handler_disconnect(p, id);
	g_hash_table_destroy(w.seen);
	if (!ok || w.dup || !json_parser_get_root(p)) {
		*why = w.dup ? g_strdup_printf("Duplicate key '%.64s'", w.dup)
			     : g_strdup(gerr ? gerr->message : "no value");
		if (gerr)
			g_error_free(gerr);
		g_free(w.dup);
		g_object_unref(p);
		return NULL;
	}
	return p;
}

/* ---- writing JSON as Python's json.dumps(ensure_ascii=False) ---------------- */

static void py_str(GString *o, const char *s)
{
	g_string_append_c(o, '"');
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		switch (*p) {
		case '"': g_string_append(o, "\\\""); break;
		case '\\': g_string_append(o, "\\\\"); break;
		case '\n': g_string_append(o, "\\n"); break;
		case '\r': g_string_append(o, "\\r"); break;
		case '\t': g_string_append(o, "\\t"); break;
		case '\b': g_string_append(o, "\\b"); break;
		case '\f': g_string_append(o, "\\f"); break;
		default:
			if (*p < 0x20)
				g_string_append_printf(o, "\\u%04x", *p);
			else
				g_string_append_c(o, (char)*p);
		}
	}
	g_string_append_c(o, '"');
}

/* Python's repr(float): the shortest digits that read back the same, in
 * fixed notation for decimal exponents -4..15, else d.ddde+XX. */
static void py_float(GString *o, double d)
{
	char buf[40], digits[24];
	int exp10 = 0;
	for (int prec = 0; prec < 17; prec++) {
		g_snprintf(buf, sizeof(buf), "%.*e", prec, d);
		if (g_ascii_strtod(buf, NULL) == d)
			break;
	}
	/* buf: [-]D[.DDD]e[+-]XX */
	const char *p = buf;
	if (*p == '-') {
		g_string_append_c(o, '-');
		p++;
	}
	size_t n = 0;
	for (; *p && *p != 'e'; p++)
		if (*p != '.')
			digits[n++] = *p;
	digits[n] = '\0';
	exp10 = atoi(p + 1);
	while (n > 1 && digits[n - 1] == '0')
		digits[--n] = '\0';
	int decpt = exp10 + 1;
	if (decpt > -4 && decpt <= 16) {
		if (decpt <= 0) {
			g_string_append(o, "0.");
			for (int k = 0; k < -decpt; k++)
				g_string_append_c(o, '0');
			g_string_append(o, digits);
		} else if ((size_t)decpt >= n) {
			g_string_append(o, digits);
			for (size_t k = n; k < (size_t)decpt; k++)
				g_string_append_c(o, '0');
			g_string_append(o, ".0");
		} else {
			g_string_append_len(o, digits, decpt);
			g_string_append_c(o, '.');
			g_string_append(o, digits + decpt);
		}
		return;
	}
	g_string_append_c(o, digits[0]);
	if (n > 1) {
		g_string_append_c(o, '.');
		g_string_append(o, digits + 1);
	}
	g_string_append_printf(o, "e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
}

static void py_node(GString *o, JsonNode *n)
{
	if (!n || JSON_NODE_HOLDS_NULL(n)) {
		g_string_append(o, "null");
	} else if (JSON_NODE_HOLDS_OBJECT(n)) {
		JsonObject *obj = json_node_get_object(n);
		GList *members = json_object_get_members(obj);
		g_string_append_c(o, '{');
		for (GList *l = members; l; l = l->next) {
			if (l != members)
				g_string_append_c(o, ',');
			py_str(o, l->data);
			g_string_append_c(o, ':');
			py_node(o, json_object_get_member(obj, l->data));
		}
		g_string_append_c(o, '}');
		g_list_free(members);
	} else if (JSON_NODE_HOLDS_ARRAY(n)) {
		JsonArray *a = json_node_get_array(n);
		g_string_append_c(o, '[');
		for (guint i = 0; i < json_array_get_length(a); i++) {
			if (i)
				g_string_append_c(o, ',');
			py_node(o, json_array_get_element(a, i));
		}
		g_string_append_c(o, ']');
	} else {
		GType t = json_node_get_value_type(n);
		if (t == G_TYPE_STRING)
			py_str(o, json_node_get_string(n));
		else if (t == G_TYPE_INT64)
			g_string_append_printf(o, "%" G_GINT64_FORMAT, json_node_get_int(n));
		else if (t == G_TYPE_DOUBLE)
			py_float(o, json_node_get_double(n));
		else
			g_string_append(o, json_node_get_boolean(n) ? "true" : "false");
	}
}

/* ---- worker addresses --------------------------------------------------------- */

static bool host_char(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       c == '_' || c == '.' || c == '-';
}

int kvb_vllm_worker_addr_parse(const char *addr, kvb_vllm_worker_addr_t *out, kvb_err_t *err)
{
	if (!addr || !out)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_worker_addr_parse: NULL argument");
	memset(out, 0, sizeof(*out));
	const char *s = addr, *h, *he, *colon;
	if (strncmp(s, "tcp://", 6))
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "worker address '%.64s' is not tcp://host:port",
				   addr);
	s += 6;
	if (*s == '[') {
		h = s + 1;
		he = strchr(h, ']');
		if (!he || he[1] != ':')
			return kvb_err_set(err, KVB_ERR_PROTOCOL,
					   "worker address '%.64s': expected [IPv6]:port", addr);
		colon = he + 1;
		const char *zone = memchr(h, '%', (size_t)(he - h));
		size_t al = (size_t)((zone ? zone : he) - h);
		char a[64];
		if (al == 0 || al >= sizeof(a))
			return kvb_err_set(err, KVB_ERR_PROTOCOL, "worker address '%.64s': bad IPv6 address",
					   addr);
		memcpy(a, h, al);
		a[al] = '\0';
		struct in6_addr in6;
		if (inet_pton(AF_INET6, a, &in6) != 1)
			return kvb_err_set(err, KVB_ERR_PROTOCOL,
					   "worker address '%.64s': '%s' is not an IPv6 address", addr, a);
		if (zone) {
			if (zone + 1 == he)
				return kvb_err_set(err, KVB_ERR_PROTOCOL,
						   "worker address '%.64s': empty IPv6 zone", addr);
			for (const char *z = zone + 1; z < he; z++)
				if (!host_char(*z))
					return kvb_err_set(err, KVB_ERR_PROTOCOL,
							   "worker address '%.64s': bad IPv6 zone", addr);
		}
		out->ipv6 = true;
	} else {
		h = s;
		he = s;
		while (host_char(*he))
			he++;
		colon = he;
		if (he == h || *colon != ':')
			return kvb_err_set(err, KVB_ERR_PROTOCOL,
					   "worker address '%.64s': expected host:port (IPv6 in brackets)",
					   addr);
	}
	size_t hl = (size_t)(he - h);
	if (hl >= sizeof(out->host))
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "worker address '%.64s': host longer than %zu "
				   "bytes", addr, sizeof(out->host) - 1);
	const char *p = colon + 1;
	unsigned long port = 0;
	size_t nd = 0;
	for (; is_digit(*p) && nd < 6; p++, nd++)
		port = port * 10 + (unsigned long)(*p - '0');
	if (*p || nd == 0 || (nd > 1 && colon[1] == '0') || port < 1 || port > 65535)
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "worker address '%.64s': port is not 1..65535 in decimal", addr);
	memcpy(out->host, h, hl);
	out->host[hl] = '\0';
	out->port = (uint16_t)port;
	return KVB_OK;
}

int kvb_vllm_worker_addr_format(const char *host, uint16_t port, char *out, size_t cap,
				kvb_err_t *err)
{
	if (!host || !out)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_worker_addr_format: NULL argument");
	int n = snprintf(out, cap, strchr(host, ':') ? "tcp://[%s]:%u" : "tcp://%s:%u", host,
			 (unsigned)port);
	kvb_vllm_worker_addr_t check;
	if (n < 0 || (size_t)n >= cap)
		return kvb_err_set(err, KVB_ERR_INVALID, "worker address for '%.64s' does not fit %zu "
				   "bytes", host, cap);
	int rc = kvb_vllm_worker_addr_parse(out, &check, err);
	if (rc)
		out[0] = '\0';
	return rc ? KVB_ERR_INVALID : KVB_OK;
}

/* ---- POST /register ------------------------------------------------------------ */

#define RANK_MAX_TEXT "65535"
static const char addr_pattern[] =
	"^tcp://(\\[[0-9A-Fa-f:.]+(%[0-9A-Za-z_.-]+)?\\]|[0-9A-Za-z_.-]+):([1-9][0-9]{0,3}|"
	"[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$";
static const char *const reg_fields[] = {"engine_id", "dp_rank", "tp_rank", "pp_rank", "addr"};

/* One pydantic error: {"type","loc":["body"(,field|,pos)],"msg","input"(,"ctx")}. */
static void err_item(GString *d, const char *type, const char *field, long pos, const char *msg,
		     JsonNode *input, const char *input_raw, const char *ctx_raw)
{
	if (d->len)
		g_string_append_c(d, ',');
	g_string_append(d, "{\"type\":");
	py_str(d, type);
	g_string_append(d, ",\"loc\":[\"body\"");
	if (field) {
		g_string_append_c(d, ',');
		py_str(d, field);
	} else if (pos >= 0) {
		g_string_append_printf(d, ",%ld", pos);
	}
	g_string_append(d, "],\"msg\":");
	py_str(d, msg);
	g_string_append(d, ",\"input\":");
	if (input_raw)
		g_string_append(d, input_raw);
	else
		py_node(d, input);
	if (ctx_raw)
		g_string_append_printf(d, ",\"ctx\":%s", ctx_raw);
	g_string_append_c(d, '}');
}

static void pattern_item(GString *d, const char *field, const char *pattern, JsonNode *input)
{
	GString *msg = g_string_new("String should match pattern '");
	g_string_append(msg, pattern);
	g_string_append_c(msg, '\'');
	GString *ctx = g_string_new("{\"pattern\":");
	py_str(ctx, pattern);
	g_string_append_c(ctx, '}');
	err_item(d, "string_pattern_mismatch", field, -1, msg->str, input, NULL, ctx->str);
	g_string_free(msg, TRUE);
	g_string_free(ctx, TRUE);
}

/* Check one field; on a fault add its item and, for the first, set err. */
static void reg_field(int f, JsonNode *root, kvb_vllm_register_t *reg, GString *d, int *nerr,
		      kvb_err_t *err)
{
	JsonObject *o = json_node_get_object(root);
	const char *name = reg_fields[f];
	JsonNode *n = json_object_get_member(o, name);
	const char *why = NULL;
	if (!n) {
		err_item(d, "missing", name, -1, "Field required", root, NULL, NULL);
		why = "missing";
	} else if (f == 0 || f == 4) {
		if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_STRING) {
			err_item(d, "string_type", name, -1, "Input should be a valid string", n, NULL,
				 NULL);
			why = "not a string";
		} else if (f == 0) {
			const char *s = json_node_get_string(n);
			size_t l = strlen(s);
			if (l == 0) {
				err_item(d, "string_too_short", name, -1,
					 "String should have at least 1 character", n, NULL,
					 "{\"min_length\":1}");
				why = "empty";
			} else if (l >= KVB_VLLM_ENGINE_ID_MAX) {
				err_item(d, "string_too_long", name, -1,
					 "String should have at most 127 characters", n, NULL,
					 "{\"max_length\":127}");
				why = "longer than 127 bytes";
			} else {
				memcpy(reg->engine_id, s, l + 1);
			}
		} else {
			const char *s = json_node_get_string(n);
			if (strlen(s) >= KVB_VLLM_ADDR_MAX ||
			    kvb_vllm_worker_addr_parse(s, &reg->where, NULL) != KVB_OK) {
				pattern_item(d, name, addr_pattern, n);
				why = "not tcp://host:port";
			} else {
				g_strlcpy(reg->addr, s, sizeof(reg->addr));
			}
		}
	} else {
		if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_INT64) {
			err_item(d, "int_type", name, -1, "Input should be a valid integer", n, NULL,
				 NULL);
			why = "not an integer";
		} else if (json_node_get_int(n) < 0) {
			err_item(d, "greater_than_equal", name, -1,
				 "Input should be greater than or equal to 0", n, NULL, "{\"ge\":0}");
			why = "negative";
		} else if (json_node_get_int(n) > KVB_VLLM_BOOT_MAX_RANK) {
			err_item(d, "less_than_equal", name, -1,
				 "Input should be less than or equal to " RANK_MAX_TEXT, n, NULL,
				 "{\"le\":" RANK_MAX_TEXT "}");
			why = "above " RANK_MAX_TEXT;
		} else {
			uint32_t v = (uint32_t)json_node_get_int(n);
			*(f == 1 ? &reg->dp_rank : f == 2 ? &reg->tp_rank : &reg->pp_rank) = v;
		}
	}
	if (why && !(*nerr)++) {
		GString *shown = g_string_new(NULL);
		if (n)
			py_node(shown, n);
		kvb_err_set(err, KVB_ERR_PROTOCOL, "POST /register: %s %s%s%.64s", name, why,
			    n ? ": " : "", shown->str);
		g_string_free(shown, TRUE);
	}
}

int kvb_vllm_register_decode(const char *body, size_t len, kvb_vllm_register_t *reg,
			     GString *reply_422, kvb_err_t *err)
{
	if (reg)
		memset(reg, 0, sizeof(*reg));
	if (!reg || (!body && len))
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_register_decode: NULL argument");
	GString *d = g_string_new(NULL);
	int nerr = 0;
	if (len == 0) {
		err_item(d, "missing", NULL, -1, "Field required", NULL, "null", NULL);
		kvb_err_set(err, KVB_ERR_PROTOCOL, "POST /register: empty body");
		nerr = 1;
	} else if (len > KVB_VLLM_BOOT_BODY_MAX) {
		char why[96];
		g_snprintf(why, sizeof(why), "A body of %zu bytes (at most %u)", len, KVB_VLLM_BOOT_BODY_MAX);
		GString *ctx = g_string_new("{\"error\":");
		py_str(ctx, why);
		g_string_append_c(ctx, '}');
		err_item(d, "json_invalid", NULL, 0, "JSON decode error", NULL, "{}", ctx->str);
		g_string_free(ctx, TRUE);
		kvb_err_set(err, KVB_ERR_PROTOCOL, "POST /register: %s", why);
		nerr = 1;
	} else {
		char *why;
		size_t at;
		JsonParser *p = json_load(body, len, &why, &at);
		if (!p) {
			GString *ctx = g_string_new("{\"error\":");
			py_str(ctx, why);
			g_string_append_c(ctx, '}');
			err_item(d, "json_invalid", NULL, (long)at, "JSON decode error", NULL, "{}",
				 ctx->str);
			g_string_free(ctx, TRUE);
			kvb_err_set(err, KVB_ERR_PROTOCOL, "POST /register: invalid JSON at byte %zu: %s",
				    at, why);
			g_free(why);
			nerr = 1;
		} else {
			JsonNode *root = json_parser_get_root(p);
			if (!JSON_NODE_HOLDS_OBJECT(root)) {
				err_item(d, "model_attributes_type", NULL, -1,
					 "Input should be a valid dictionary or object to extract "
					 "fields from", root, NULL, NULL);
				kvb_err_set(err, KVB_ERR_PROTOCOL, "POST /register: body is not an object");
				nerr = 1;
			} else {
				for (int f = 0; f < 5; f++)
					reg_field(f, root, reg, d, &nerr, err);
			}
			g_object_unref(p);
		}
	}
	if (nerr) {
		if (reply_422)
			g_string_append_printf(reply_422, "{\"detail\":[%s]}", d->str);
		memset(reg, 0, sizeof(*reg));
	}
	g_string_free(d, TRUE);
	return nerr ? KVB_ERR_PROTOCOL : KVB_OK;
}

int kvb_vllm_register_encode(const kvb_vllm_register_t *reg, GString *out, kvb_err_t *err)
{
	if (!reg || !out)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_register_encode: NULL argument");
	kvb_vllm_worker_addr_t w;
	size_t el = strnlen(reg->engine_id, sizeof(reg->engine_id));
	if (el == 0 || el == sizeof(reg->engine_id) || !g_utf8_validate(reg->engine_id, -1, NULL) ||
	    reg->dp_rank > KVB_VLLM_BOOT_MAX_RANK || reg->tp_rank > KVB_VLLM_BOOT_MAX_RANK ||
	    reg->pp_rank > KVB_VLLM_BOOT_MAX_RANK || !memchr(reg->addr, '\0', sizeof(reg->addr)) ||
	    kvb_vllm_worker_addr_parse(reg->addr, &w, NULL) != KVB_OK)
		return kvb_err_set(err, KVB_ERR_INVALID,
				   "registration %.32s dp %u tp %u pp %u addr %.64s: not what /register "
				   "accepts", reg->engine_id, reg->dp_rank, reg->tp_rank, reg->pp_rank,
				   reg->addr);
	g_string_append(out, "{\"engine_id\":");
	py_str(out, reg->engine_id);
	g_string_append_printf(out, ",\"dp_rank\":%u,\"tp_rank\":%u,\"pp_rank\":%u,\"addr\":",
			       reg->dp_rank, reg->tp_rank, reg->pp_rank);
	py_str(out, reg->addr);
	g_string_append_c(out, '}');
	return KVB_OK;
}

/* ---- the registry ----------------------------------------------------------------- */

typedef struct reg_pp {
	uint32_t pp;
	char addr[KVB_VLLM_ADDR_MAX];
} reg_pp_t;

typedef struct reg_tp {
	uint32_t tp;
	GArray *pps; /* reg_pp_t, registration order */
} reg_tp_t;

typedef struct reg_dp {
	uint32_t dp;
	char engine_id[KVB_VLLM_ENGINE_ID_MAX];
	GArray *tps; /* reg_tp_t */
} reg_dp_t;

struct kvb_vllm_registry {
	unsigned flags;
	GArray *dps; /* reg_dp_t */
	uint32_t n_workers;
};

kvb_vllm_registry_t *kvb_vllm_registry_new(unsigned flags)
{
	kvb_vllm_registry_t *r = g_new0(kvb_vllm_registry_t, 1);
	r->flags = flags;
	r->dps = g_array_new(FALSE, TRUE, sizeof(reg_dp_t));
	return r;
}

void kvb_vllm_registry_free(kvb_vllm_registry_t *r)
{
	if (!r)
		return;
	for (guint i = 0; i < r->dps->len; i++) {
		reg_dp_t *d = &g_array_index(r->dps, reg_dp_t, i);
		for (guint j = 0; j < d->tps->len; j++)
			g_array_free(g_array_index(d->tps, reg_tp_t, j).pps, TRUE);
		g_array_free(d->tps, TRUE);
	}
	g_array_free(r->dps, TRUE);
	g_free(r);
}

uint32_t kvb_vllm_registry_size(const kvb_vllm_registry_t *r)
{
	return r ? r->n_workers : 0;
}

static int reply_detail(GString *reply, int code, kvb_err_t *err, const char *fmt, ...)
	KVB_PRINTF(4, 5);
static int reply_detail(GString *reply, int code, kvb_err_t *err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *detail = g_strdup_vprintf(fmt, ap);
	va_end(ap);
	if (reply) {
		g_string_append(reply, "{\"detail\":");
		py_str(reply, detail);
		g_string_append_c(reply, '}');
	}
	kvb_err_set(err, code, "POST /register: %s", detail);
	g_free(detail);
	return code;
}

/* vLLM's register_worker: the dp entry is made on first sight; a different
 * engine id for it, or a (tp, pp) slot held by another addr, is a 400;
 * the same addr again is 200 from 0.31 on. */
int kvb_vllm_registry_add(kvb_vllm_registry_t *r, const kvb_vllm_register_t *w, GString *reply,
			  kvb_err_t *err)
{
	if (!r || !w)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_registry_add: NULL argument");
	reg_dp_t *d = NULL;
	for (guint i = 0; i < r->dps->len && !d; i++)
		if (g_array_index(r->dps, reg_dp_t, i).dp == w->dp_rank)
			d = &g_array_index(r->dps, reg_dp_t, i);
	if (d && strcmp(d->engine_id, w->engine_id))
		return reply_detail(reply, KVB_ERR_EXISTS, err,
				    "Engine ID mismatch for dp_rank=%u: expected %s, got %s", w->dp_rank,
				    d->engine_id, w->engine_id);
	reg_tp_t *t = NULL;
	for (guint j = 0; d && j < d->tps->len && !t; j++)
		if (g_array_index(d->tps, reg_tp_t, j).tp == w->tp_rank)
			t = &g_array_index(d->tps, reg_tp_t, j);
	for (guint k = 0; t && k < t->pps->len; k++) {
		const reg_pp_t *p = &g_array_index(t->pps, reg_pp_t, k);
		if (p->pp != w->pp_rank)
			continue;
		if ((r->flags & KVB_VLLM_REGISTRY_IDENTICAL_OK) && !strcmp(p->addr, w->addr)) {
			if (reply)
				g_string_append(reply, "{\"status\":\"ok\"}");
			return KVB_OK;
		}
		return reply_detail(reply, KVB_ERR_EXISTS, err,
				    "Worker with dp_rank=%u, tp_rank=%u, pp_rank=%u is already "
				    "registered at %s, but still want to register at %s",
				    w->dp_rank, w->tp_rank, w->pp_rank, p->addr, w->addr);
	}
	if (r->n_workers >= KVB_VLLM_BOOT_MAX_WORKERS)
		return reply_detail(reply, KVB_ERR_NO_RESOURCE, err,
				    "Registry full: %u workers registered (kvbridge's limit)",
				    r->n_workers);
	if (!d) {
		reg_dp_t nd = {.dp = w->dp_rank, .tps = g_array_new(FALSE, TRUE, sizeof(reg_tp_t))};
		g_strlcpy(nd.engine_id, w->engine_id, sizeof(nd.engine_id));
		g_array_append_val(r->dps, nd);
		d = &g_array_index(r->dps, reg_dp_t, r->dps->len - 1);
	}
	if (!t) {
		reg_tp_t nt = {.tp = w->tp_rank, .pps = g_array_new(FALSE, TRUE, sizeof(reg_pp_t))};
		g_array_append_val(d->tps, nt);
		t = &g_array_index(d->tps, reg_tp_t, d->tps->len - 1);
	}
	reg_pp_t np = {.pp = w->pp_rank};
	g_strlcpy(np.addr, w->addr, sizeof(np.addr));
	g_array_append_val(t->pps, np);
	r->n_workers++;
	if (reply)
		g_string_append(reply, "{\"status\":\"ok\"}");
	return KVB_OK;
}

int kvb_vllm_registry_handle(kvb_vllm_registry_t *r, const char *body, size_t len,
			     unsigned *http_status, GString *reply, kvb_err_t *err)
{
	if (!r || !http_status)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_registry_handle: NULL argument");
	kvb_vllm_register_t w;
	int rc = kvb_vllm_register_decode(body, len, &w, reply, err);
	if (rc) {
		*http_status = rc == KVB_ERR_PROTOCOL ? 422 : 500;
		return rc;
	}
	rc = kvb_vllm_registry_add(r, &w, reply, err);
	*http_status = rc == KVB_OK ? 200 : 400;
	return rc;
}

void kvb_vllm_registry_query_json(const kvb_vllm_registry_t *r, GString *out)
{
	if (!r || !out)
		return;
	g_string_append_c(out, '{');
	for (guint i = 0; i < r->dps->len; i++) {
		const reg_dp_t *d = &g_array_index(r->dps, reg_dp_t, i);
		g_string_append_printf(out, "%s\"%u\":{\"engine_id\":", i ? "," : "", d->dp);
		py_str(out, d->engine_id);
		g_string_append(out, ",\"worker_addr\":{");
		for (guint j = 0; j < d->tps->len; j++) {
			const reg_tp_t *t = &g_array_index(d->tps, reg_tp_t, j);
			g_string_append_printf(out, "%s\"%u\":{", j ? "," : "", t->tp);
			for (guint k = 0; k < t->pps->len; k++) {
				const reg_pp_t *p = &g_array_index(t->pps, reg_pp_t, k);
				g_string_append_printf(out, "%s\"%u\":", k ? "," : "", p->pp);
				py_str(out, p->addr);
			}
			g_string_append_c(out, '}');
		}
		g_string_append(out, "}}");
	}
	g_string_append_c(out, '}');
}

/* ---- GET /query, as a D reads it ----------------------------------------------------- */

/* "0" or [1-9][0-9]* up to KVB_VLLM_BOOT_MAX_RANK. */
static bool rank_key(const char *s, uint32_t *v)
{
	size_t n = strlen(s);
	if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
		return false;
	uint32_t x = 0;
	for (size_t i = 0; i < n; i++) {
		if (!is_digit(s[i]))
			return false;
		x = x * 10 + (uint32_t)(s[i] - '0');
	}
	if (x > KVB_VLLM_BOOT_MAX_RANK)
		return false;
	*v = x;
	return true;
}

typedef char engine_id_t[KVB_VLLM_ENGINE_ID_MAX];

static int query_engine(JsonObject *root, const char *dpkey, kvb_vllm_boot_query_t *q,
			GArray *workers, kvb_err_t *err)
{
	kvb_vllm_boot_engine_t *e = &q->engines[q->n_engines];
	if (!rank_key(dpkey, &e->dp_rank))
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "/query: dp key \"%.32s\" is not a rank in 0..%u (canonical decimal)",
				   dpkey, KVB_VLLM_BOOT_MAX_RANK);
	JsonNode *en = json_object_get_member(root, dpkey);
	if (!JSON_NODE_HOLDS_OBJECT(en))
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "/query: dp %u is not an object", e->dp_rank);
	JsonObject *eo = json_node_get_object(en);
	JsonNode *id = json_object_get_member(eo, "engine_id");
	if (!id || !JSON_NODE_HOLDS_VALUE(id) || json_node_get_value_type(id) != G_TYPE_STRING)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "/query: dp %u: engine_id missing or not a str",
				   e->dp_rank);
	const char *ids = json_node_get_string(id);
	if (!*ids || strlen(ids) >= KVB_VLLM_ENGINE_ID_MAX)
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "/query: dp %u: engine_id of %zu bytes (1..127)", e->dp_rank,
				   strlen(ids));
	for (uint32_t i = 0; i < q->n_engines; i++)
		if (!strcmp(q->engines[i].engine_id, ids))
			return kvb_err_set(err, KVB_ERR_PROTOCOL,
					   "/query: engine_id %.64s names dp %u and dp %u", ids,
					   q->engines[i].dp_rank, e->dp_rank);
	g_strlcpy(e->engine_id, ids, sizeof(e->engine_id));
	JsonNode *wn = json_object_get_member(eo, "worker_addr");
	if (!wn || !JSON_NODE_HOLDS_OBJECT(wn))
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "/query: dp %u: worker_addr missing or not an "
				   "object", e->dp_rank);
	JsonObject *wo = json_node_get_object(wn);
	uint32_t ntp = json_object_get_size(wo);
	/* vLLM never serves one; a D would take TP size 0 and divide by it */
	if (ntp == 0)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "/query: dp %u: worker_addr is empty",
				   e->dp_rank);
	GList *tps = json_object_get_members(wo);
	int rc = KVB_OK;
	e->first_worker = workers->len;
	e->tp_size = ntp;
	for (GList *l = tps; l && !rc; l = l->next) {
		uint32_t tp;
		if (!rank_key(l->data, &tp) || tp >= ntp) {
			rc = kvb_err_set(err, KVB_ERR_PROTOCOL,
					 "/query: dp %u: tp key \"%.32s\" is not one of 0..%u (a vLLM D "
					 "takes len(worker_addr) as the TP size)", e->dp_rank,
					 (const char *)l->data, ntp - 1);
			break;
		}
		JsonNode *tn = json_object_get_member(wo, l->data);
		if (!JSON_NODE_HOLDS_OBJECT(tn) || !json_object_get_size(json_node_get_object(tn))) {
			rc = kvb_err_set(err, KVB_ERR_PROTOCOL,
					 "/query: dp %u tp %u: not a non-empty object", e->dp_rank, tp);
			break;
		}
		JsonObject *to = json_node_get_object(tn);
		GList *pps = json_object_get_members(to);
		for (GList *m = pps; m && !rc; m = m->next) {
			kvb_vllm_boot_worker_t w = {.tp_rank = tp};
			JsonNode *an = json_object_get_member(to, m->data);
			if (!rank_key(m->data, &w.pp_rank)) {
				rc = kvb_err_set(err, KVB_ERR_PROTOCOL,
						 "/query: dp %u tp %u: pp key \"%.32s\" is not a rank",
						 e->dp_rank, tp, (const char *)m->data);
			} else if (!JSON_NODE_HOLDS_VALUE(an) ||
				   json_node_get_value_type(an) != G_TYPE_STRING ||
				   strlen(json_node_get_string(an)) >= sizeof(w.addr)) {
				rc = kvb_err_set(err, KVB_ERR_PROTOCOL,
						 "/query: dp %u tp %u pp %u: addr is not a str of at most "
						 "%zu bytes", e->dp_rank, tp, w.pp_rank, sizeof(w.addr) - 1);
			} else if (workers->len >= KVB_VLLM_BOOT_MAX_WORKERS) {
				rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "/query: more than %u workers",
						 KVB_VLLM_BOOT_MAX_WORKERS);
			} else if ((rc = kvb_vllm_worker_addr_parse(json_node_get_string(an), &w.where,
								    err)) == KVB_OK) {
				g_strlcpy(w.addr, json_node_get_string(an), sizeof(w.addr));
				g_array_append_val(workers, w);
			}
		}
		g_list_free(pps);
	}
	g_list_free(tps);
	if (rc)
		return rc;
	/* tp keys are distinct (no duplicate keys) and each below ntp: all of 0..ntp-1 */
	e->n_workers = workers->len - e->first_worker;
	q->n_engines++;
	return KVB_OK;
}

int kvb_vllm_query_decode(const char *json, size_t len, kvb_vllm_boot_query_t *q, kvb_err_t *err)
{
	if (q)
		memset(q, 0, sizeof(*q));
	if (!q || (!json && len))
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_vllm_query_decode: NULL argument");
	if (len > KVB_VLLM_BOOT_QUERY_MAX)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "/query: a body of %zu bytes (at most %u)", len,
				   KVB_VLLM_BOOT_QUERY_MAX);
	char *why;
	size_t at;
	JsonParser *p = json_load(json ? json : "", len, &why, &at);
	if (!p) {
		int rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "/query: invalid JSON at byte %zu: %s", at,
				     why);
		g_free(why);
		return rc;
	}
	JsonNode *root = json_parser_get_root(p);
	int rc = KVB_OK;
	if (!JSON_NODE_HOLDS_OBJECT(root)) {
		rc = kvb_err_set(err, KVB_ERR_PROTOCOL, "/query: not a JSON object");
	} else {
		JsonObject *o = json_node_get_object(root);
		uint32_t n = json_object_get_size(o);
		q->engines = g_new0(kvb_vllm_boot_engine_t, n ? n : 1);
		GArray *workers = g_array_new(FALSE, TRUE, sizeof(kvb_vllm_boot_worker_t));
		GList *dps = json_object_get_members(o);
		for (GList *l = dps; l && !rc; l = l->next)
			rc = query_engine(o, l->data, q, workers, err);
		g_list_free(dps);
		q->n_workers = workers->len;
		q->workers = (kvb_vllm_boot_worker_t *)(void *)g_array_free(workers, FALSE);
	}
	g_object_unref(p);
	if (rc)
		kvb_vllm_query_clear(q);
	return rc;
}

const kvb_vllm_boot_engine_t *kvb_vllm_query_engine(const kvb_vllm_boot_query_t *q,
						    const char *engine_id)
{
	for (uint32_t i = 0; q && engine_id && i < q->n_engines; i++)
		if (!strcmp(q->engines[i].engine_id, engine_id))
			return &q->engines[i];
	return NULL;
}

const kvb_vllm_boot_worker_t *kvb_vllm_query_worker(const kvb_vllm_boot_query_t *q,
						    const kvb_vllm_boot_engine_t *e, uint32_t tp_rank,
						    uint32_t pp_rank)
{
	if (!q || !e)
		return NULL;
	for (uint32_t i = 0; i < e->n_workers; i++) {
		const kvb_vllm_boot_worker_t *w = &q->workers[e->first_worker + i];
		if (w->tp_rank == tp_rank && w->pp_rank == pp_rank)
			return w;
	}
	return NULL;
}

void kvb_vllm_query_clear(kvb_vllm_boot_query_t *q)
{
	if (!q)
		return;
	g_free(q->engines);
	g_free(q->workers);
	memset(q, 0, sizeof(*q));
}
