/*
 * Workloads: trace loaders (Mooncake JSONL, Azure CSV), the seeded
 * generator and the prefill time model.  See kvb_workload.h and
 * docs/workloads.md.
 *
 * The JSON reader is a strict hand-rolled one for exactly the Mooncake line
 * shape (the simulator must not depend on json-glib): it validates every
 * byte of a line, decodes only keys, and skips unknown values.
 */
#include "config.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <kvbridge/policy.h>

#include "kvb_workload.h"

G_DEFINE_QUARK(kvb-wl-error-quark, kvb_wl_error)

struct kvb_workload {
	kvb_wl_request_t *req; /* n, sorted by (arrival_s, id) */
	uint64_t n;
	uint32_t *hashes;      /* every request's hash_ids, back to back */
	uint64_t n_hashes;
	char *source;
};

/* ---- builder: growing arrays, then sort and freeze ------------------------ */

typedef struct builder {
	kvb_wl_request_t *req;
	double *raw;       /* per request: raw time (ms, or 100 ns ticks after the first row) */
	uint64_t *hoff;    /* per request: offset of its hashes in `hashes` */
	uint64_t n, cap;
	uint32_t *hashes;
	uint64_t nh, caph;
} builder_t;

static void builder_clear(builder_t *b)
{
	g_free(b->req);
	g_free(b->raw);
	g_free(b->hoff);
	g_free(b->hashes);
	memset(b, 0, sizeof(*b));
}

/* Append one request whose hashes start at hoff in b->hashes. */
static kvb_wl_request_t *builder_add(builder_t *b, double raw, uint64_t hoff)
{
	if (b->n == b->cap) {
		b->cap = b->cap ? 2 * b->cap : 1024;
		b->req = g_renew(kvb_wl_request_t, b->req, b->cap);
		b->raw = g_renew(double, b->raw, b->cap);
		b->hoff = g_renew(uint64_t, b->hoff, b->cap);
	}
	kvb_wl_request_t *r = &b->req[b->n];
	memset(r, 0, sizeof(*r));
	r->id = b->n;
	b->raw[b->n] = raw;
	b->hoff[b->n] = hoff;
	b->n++;
	return r;
}

static void builder_push_hash(builder_t *b, uint32_t h)
{
	if (b->nh == b->caph) {
		b->caph = b->caph ? 2 * b->caph : 16384;
		b->hashes = g_renew(uint32_t, b->hashes, b->caph);
	}
	b->hashes[b->nh++] = h;
}

static int req_cmp(const void *pa, const void *pb)
{
	const kvb_wl_request_t *a = pa, *b = pb;
	if (a->arrival_s != b->arrival_s)
		return a->arrival_s < b->arrival_s ? -1 : 1;
	return a->id < b->id ? -1 : a->id > b->id;
}

/*
 * Turn raw times into arrival seconds (raw - min) / scale / rate_mult (min is
 * the earliest raw time when rebase, else 0), trim the arrays, point each
 * request at its hashes (the hash array no longer moves) and sort.  Subtracting before
 * scaling keeps Azure's tick differences exact.
 */
static kvb_workload_t *builder_finish(builder_t *b, double scale, double rate_mult,
				      gboolean rebase, const char *source)
{
	if (b->n < b->cap)
		b->req = g_renew(kvb_wl_request_t, b->req, b->n ? b->n : 1);
	if (b->nh < b->caph)
		b->hashes = g_renew(uint32_t, b->hashes, b->nh ? b->nh : 1);
	double min = 0;
	for (uint64_t i = 0; rebase && i < b->n; i++)
		if (i == 0 || b->raw[i] < min)
			min = b->raw[i];
	for (uint64_t i = 0; i < b->n; i++) {
		kvb_wl_request_t *r = &b->req[i];
		r->arrival_s = (b->raw[i] - min) / scale / rate_mult;
		r->hash_ids = r->n_hash ? b->hashes + b->hoff[i] : NULL;
	}
	qsort(b->req, b->n, sizeof(*b->req), req_cmp);

	kvb_workload_t *w = g_new0(kvb_workload_t, 1);
	w->req = b->req;
	w->n = b->n;
	w->hashes = b->hashes;
	w->n_hashes = b->nh;
	w->source = g_strdup(source);
	b->req = NULL;
	b->hashes = NULL;
	builder_clear(b);
	return w;
}

/* ---- shared line helpers ---------------------------------------------------- */

/* C-escaped copy of [s, e), at most 40 bytes.  g_free the result. */
static char *span_text(const char *s, const char *e)
{
	size_t len = (size_t)(e - s);
	char *raw = g_strndup(s, MIN(len, 40));
	char *esc = g_strescape(raw, NULL);
	g_free(raw);
	if (len > 40) {
		char *t = g_strconcat(esc, "...", NULL);
		g_free(esc);
		esc = t;
	}
	return esc;
}

/* A printable excerpt of the token at p: a whole JSON string, or bytes up to
 * a delimiter; at most 40 bytes, C-escaped.  g_free the result. */
static char *excerpt(const char *p, const char *end)
{
	const char *q = p;
	if (q < end && *q == '"') {
		for (q++; q < end && *q != '"'; q++)
			if (*q == '\\' && q + 1 < end)
				q++;
		if (q < end)
			q++;
	} else {
		while (q < end && !strchr(",}] \t\r\n", *q) && *q != '\0')
			q++;
		if (q == p && q < end)
			q++; /* show at least the offending delimiter */
	}
	return span_text(p, q);
}

static gboolean is_blank(const char *p, const char *end)
{
	for (; p < end; p++)
		if (*p != ' ' && *p != '\t' && *p != '\r')
			return FALSE;
	return TRUE;
}

/* Split off the next line [*ls, *le), advancing *p past its newline.
 * Fails when the line exceeds KVB_WL_MAX_LINE. */
static gboolean next_line(const char **p, const char *end, const char **ls, const char **le,
			  const char *path, uint64_t line, GError **err)
{
	const char *nl = memchr(*p, '\n', (size_t)(end - *p));
	*ls = *p;
	*le = nl ? nl : end;
	if ((size_t)(*le - *ls) > KVB_WL_MAX_LINE) {
		g_set_error(err, KVB_WL_ERROR, KVB_WL_ERROR_PARSE,
			    "%s:%" PRIu64 ": line is %zu bytes long, the limit is %u", path, line,
			    (size_t)(*le - *ls), KVB_WL_MAX_LINE);
		return FALSE;
	}
	*p = nl ? nl + 1 : end;
	return TRUE;
}

static const char *skip_bom(const char *p, const char *end)
{
	if (end - p >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
		return p + 3;
	return p;
}

/* ---- Mooncake JSONL --------------------------------------------------------- */

typedef struct jctx {
	const char *path;
	uint64_t line;
	const char *p, *end;
	const char *field; /* the key whose value is being read, or NULL */
	GError **err;
} jctx_t;

static gboolean jfail(jctx_t *c, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static gboolean jfail(jctx_t *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *msg = g_strdup_vprintf(fmt, ap);
	va_end(ap);
	if (c->field)
		g_set_error(c->err, KVB_WL_ERROR, KVB_WL_ERROR_PARSE, "%s:%" PRIu64 ": field %s: %s",
			    c->path, c->line, c->field, msg);
	else
		g_set_error(c->err, KVB_WL_ERROR, KVB_WL_ERROR_PARSE, "%s:%" PRIu64 ": %s", c->path,
			    c->line, msg);
	g_free(msg);
	return FALSE;
}

/* "expected X, got "<excerpt>"" at the cursor ("end of line" at the end). */
static gboolean jexpect(jctx_t *c, const char *what)
{
	if (c->p >= c->end)
		return jfail(c, "expected %s, got end of line", what);
	char *ex = excerpt(c->p, c->end);
	jfail(c, "expected %s, got \"%s\"", what, ex);
	g_free(ex);
	return FALSE;
}

static void jws(jctx_t *c)
{
	while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\r' || *c->p == '\n'))
		c->p++;
}

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* Four hex digits after "\u" at c->p. */
static gboolean jhex4(jctx_t *c, uint32_t *out)
{
	uint32_t v = 0;
	for (int i = 0; i < 4; i++) {
		int h = c->p + i < c->end ? hexval(c->p[i]) : -1;
		if (h < 0)
			return jfail(c, "bad \\u escape in string: expected 4 hex digits");
		v = v * 16 + (uint32_t)h;
	}
	c->p += 4;
	*out = v;
	return TRUE;
}

/*
 * Read one JSON string at c->p (which is '"').  When buf is not NULL the
 * decoded UTF-8 goes there (cap bytes with a NUL after it; \u0000 may sit
 * inside, so *out_len gives the length); *fits says whether it all fit.
 * Rejects control bytes, unknown escapes, lone surrogates and invalid
 * UTF-8: a skipped value must still be JSON.
 */
static gboolean jstring(jctx_t *c, char *buf, size_t cap, size_t *out_len, gboolean *fits)
{
	size_t len = 0;
	gboolean ok_fit = TRUE;
	c->p++; /* opening quote */
	for (;;) {
		if (c->p >= c->end)
			return jfail(c, "unterminated string");
		unsigned char ch = (unsigned char)*c->p;
		if (ch == '"') {
			c->p++;
			break;
		}
		if (ch < 0x20)
			return jfail(c, "control byte 0x%02x in string", ch);
		char enc[8];
		size_t n = 0;
		if (ch == '\\') {
			if (c->p + 1 >= c->end)
				return jfail(c, "unterminated string");
			char e = c->p[1];
			c->p += 2;
			switch (e) {
			case '"': enc[n++] = '"'; break;
			case '\\': enc[n++] = '\\'; break;
			case '/': enc[n++] = '/'; break;
			case 'b': enc[n++] = '\b'; break;
			case 'f': enc[n++] = '\f'; break;
			case 'n': enc[n++] = '\n'; break;
			case 'r': enc[n++] = '\r'; break;
			case 't': enc[n++] = '\t'; break;
			case 'u': {
				uint32_t cp, lo;
				if (!jhex4(c, &cp))
					return FALSE;
				if (cp >= 0xDC00 && cp <= 0xDFFF)
					return jfail(c, "lone low surrogate \\u%04X in string", cp);
				if (cp >= 0xD800 && cp <= 0xDBFF) {
					if (c->end - c->p < 2 || c->p[0] != '\\' || c->p[1] != 'u')
						return jfail(c, "high surrogate \\u%04X without its pair", cp);
					c->p += 2;
					if (!jhex4(c, &lo))
						return FALSE;
					if (lo < 0xDC00 || lo > 0xDFFF)
						return jfail(c, "high surrogate \\u%04X followed by \\u%04X", cp,
							     lo);
					cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
				}
				n = (size_t)g_unichar_to_utf8((gunichar)cp, enc);
				break;
			}
			default:
				return jfail(c, "unknown escape \\%c in string", g_ascii_isprint(e) ? e : '?');
			}
		} else if (ch < 0x80) {
			enc[n++] = (char)ch;
			c->p++;
		} else {
			/* one UTF-8 sequence, validated */
			const char *s = c->p;
			size_t left = (size_t)(c->end - s);
			size_t want = ch >= 0xF0 ? 4 : ch >= 0xE0 ? 3 : 2;
			if (want > left || !g_utf8_validate_len(s, want, NULL))
				return jfail(c, "invalid UTF-8 in string");
			memcpy(enc, s, want);
			n = want;
			c->p += want;
		}
		if (buf) {
			if (len + n < cap) {
				memcpy(buf + len, enc, n);
				len += n;
			} else {
				ok_fit = FALSE;
			}
		}
	}
	if (buf)
		buf[len] = '\0';
	if (out_len)
		*out_len = len;
	if (fits)
		*fits = ok_fit;
	return TRUE;
}

/* Span of a JSON number at c->p per the JSON grammar; *is_int when it has
 * neither fraction nor exponent.  Leaves c->p at its end.  FALSE (no error
 * set) when no number starts here. */
static gboolean jnumber_span(jctx_t *c, gboolean *is_int)
{
	const char *q = c->p, *e = c->end;
	*is_int = TRUE;
	if (q < e && *q == '-')
		q++;
	if (q >= e || !g_ascii_isdigit(*q))
		return FALSE;
	if (*q == '0')
		q++;
	else
		while (q < e && g_ascii_isdigit(*q))
			q++;
	if (q < e && *q == '.') {
		*is_int = FALSE;
		q++;
		if (q >= e || !g_ascii_isdigit(*q))
			return FALSE;
		while (q < e && g_ascii_isdigit(*q))
			q++;
	}
	if (q < e && (*q == 'e' || *q == 'E')) {
		*is_int = FALSE;
		q++;
		if (q < e && (*q == '+' || *q == '-'))
			q++;
		if (q >= e || !g_ascii_isdigit(*q))
			return FALSE;
		while (q < e && g_ascii_isdigit(*q))
			q++;
	}
	/* a number must end at a delimiter: "12abc" and "012" are not numbers */
	if (q < e && (g_ascii_isalnum(*q) || *q == '.' || *q == '-' || *q == '+' || *q == '"'))
		return FALSE;
	c->p = q;
	return TRUE;
}

/* A non-negative JSON integer <= max.  what prefixes the message ("element 3: "). */
static gboolean juint(jctx_t *c, uint64_t max, uint64_t *out, const char *what)
{
	const char *start = c->p;
	gboolean is_int;
	if (!jnumber_span(c, &is_int) || !is_int || *start == '-') {
		c->p = start;
		char *ex = c->p < c->end ? excerpt(c->p, c->end) : g_strdup("");
		jfail(c, "%sexpected a non-negative integer, got %s%s%s", what,
		      c->p < c->end ? "\"" : "end of line", ex, c->p < c->end ? "\"" : "");
		g_free(ex);
		return FALSE;
	}
	uint64_t v = 0;
	gboolean over = FALSE;
	for (const char *q = start; q < c->p; q++) {
		uint64_t d = (uint64_t)(*q - '0');
		if (v > (UINT64_MAX - d) / 10)
			over = TRUE;
		else
			v = v * 10 + d;
	}
	if (over || v > max) {
		char *ex = g_strndup(start, (size_t)MIN(c->p - start, 40));
		jfail(c, "%svalue %s%s exceeds the limit %" PRIu64, what, ex,
		      c->p - start > 40 ? "..." : "", max);
		g_free(ex);
		return FALSE;
	}
	*out = v;
	return TRUE;
}

/* A finite, non-negative JSON number (any form). */
static gboolean jnonneg_number(jctx_t *c, double *out)
{
	const char *start = c->p;
	gboolean is_int;
	if (!jnumber_span(c, &is_int) || *start == '-') {
		c->p = start;
		return jexpect(c, "a non-negative number");
	}
	size_t len = (size_t)(c->p - start);
	if (len > 64) {
		c->p = start;
		return jfail(c, "number of %zu characters is too long (limit 64)", len);
	}
	char tmp[65];
	memcpy(tmp, start, len);
	tmp[len] = '\0';
	double v = g_ascii_strtod(tmp, NULL);
	if (!isfinite(v)) {
		c->p = start;
		return jfail(c, "number \"%s\" is out of range", tmp);
	}
	*out = v;
	return TRUE;
}

/* Validate and skip any JSON value (unknown keys). */
static gboolean jskip(jctx_t *c, unsigned depth)
{
	if (c->p >= c->end)
		return jexpect(c, "a value");
	char ch = *c->p;
	if (ch == '"')
		return jstring(c, NULL, 0, NULL, NULL);
	if (ch == '{' || ch == '[') {
		char close = ch == '{' ? '}' : ']';
		if (depth >= KVB_WL_MAX_DEPTH)
			return jfail(c, "value nested deeper than %u levels", KVB_WL_MAX_DEPTH);
		c->p++;
		jws(c);
		if (c->p < c->end && *c->p == close) {
			c->p++;
			return TRUE;
		}
		for (;;) {
			if (ch == '{') {
				if (c->p >= c->end || *c->p != '"')
					return jexpect(c, "'\"' to start a key");
				if (!jstring(c, NULL, 0, NULL, NULL))
					return FALSE;
				jws(c);
				if (c->p >= c->end || *c->p != ':')
					return jexpect(c, "':'");
				c->p++;
				jws(c);
			}
			if (!jskip(c, depth + 1))
				return FALSE;
			jws(c);
			if (c->p < c->end && *c->p == ',') {
				c->p++;
				jws(c);
				continue;
			}
			if (c->p < c->end && *c->p == close) {
				c->p++;
				return TRUE;
			}
			return jexpect(c, close == '}' ? "',' or '}'" : "',' or ']'");
		}
	}
	static const char *const lits[] = {"true", "false", "null"};
	for (size_t i = 0; i < G_N_ELEMENTS(lits); i++) {
		size_t n = strlen(lits[i]);
		if ((size_t)(c->end - c->p) >= n && memcmp(c->p, lits[i], n) == 0 &&
		    (c->p + n == c->end || !g_ascii_isalnum(c->p[n]))) {
			c->p += n;
			return TRUE;
		}
	}
	gboolean is_int;
	if (jnumber_span(c, &is_int))
		return TRUE;
	return jexpect(c, "a JSON value");
}

static gboolean jhash_ids(jctx_t *c, builder_t *b, uint32_t *n_hash)
{
	if (c->p >= c->end || *c->p != '[')
		return jexpect(c, "an array of non-negative integers");
	c->p++;
	jws(c);
	uint32_t n = 0;
	if (c->p < c->end && *c->p == ']') {
		c->p++;
		*n_hash = 0;
		return TRUE;
	}
	for (;;) {
		char what[40];
		uint64_t v;
		if (n == KVB_WL_MAX_HASHES)
			return jfail(c, "more than %u elements", KVB_WL_MAX_HASHES);
		g_snprintf(what, sizeof(what), "element %u: ", n);
		if (!juint(c, UINT32_MAX, &v, what))
			return FALSE;
		builder_push_hash(b, (uint32_t)v);
		n++;
		jws(c);
		if (c->p < c->end && *c->p == ',') {
			c->p++;
			jws(c);
			continue;
		}
		if (c->p < c->end && *c->p == ']') {
			c->p++;
			break;
		}
		return jexpect(c, "',' or ']'");
	}
	*n_hash = n;
	return TRUE;
}

enum { F_TS = 1, F_IN = 2, F_OUT = 4, F_HASH = 8 };
static const struct {
	unsigned bit;
	const char *name;
} fields[] = {
	{F_TS, "timestamp"}, {F_IN, "input_length"}, {F_OUT, "output_length"}, {F_HASH, "hash_ids"},
};

/* One Mooncake line: an object with the four fields (any order) and
 * possibly other keys. */
static gboolean jline(jctx_t *c, builder_t *b)
{
	unsigned have = 0;
	double ts = 0;
	uint64_t in = 0, out = 0;
	uint32_t n_hash = 0;
	uint64_t hash_start = b->nh;

	jws(c);
	if (c->p >= c->end || *c->p != '{')
		return jexpect(c, "'{' to start an object");
	c->p++;
	jws(c);
	if (c->p < c->end && *c->p == '}') {
		c->p++;
	} else {
		for (;;) {
			char key[32];
			size_t klen;
			gboolean fits;
			if (c->p >= c->end || *c->p != '"')
				return jexpect(c, "'\"' to start a key");
			if (!jstring(c, key, sizeof(key), &klen, &fits))
				return FALSE;
			unsigned bit = 0;
			for (size_t k = 0; fits && k < G_N_ELEMENTS(fields); k++)
				if (klen == strlen(fields[k].name) &&
				    memcmp(key, fields[k].name, klen) == 0)
					bit = fields[k].bit;
			/* the key as messages show it: printable ASCII only */
			for (size_t k = 0; fits && k < klen; k++)
				if (!g_ascii_isprint(key[k]))
					key[k] = '?';
			c->field = fits ? key : "(long key)";
			if (bit & have)
				return jfail(c, "duplicate key");
			have |= bit;
			jws(c);
			if (c->p >= c->end || *c->p != ':')
				return jexpect(c, "':' after the key");
			c->p++;
			jws(c);
			gboolean ok;
			switch (bit) {
			case F_TS: ok = jnonneg_number(c, &ts); break;
			case F_IN: ok = juint(c, KVB_WL_MAX_TOKENS, &in, ""); break;
			case F_OUT: ok = juint(c, KVB_WL_MAX_TOKENS, &out, ""); break;
			case F_HASH: ok = jhash_ids(c, b, &n_hash); break;
			default: ok = jskip(c, 0); break;
			}
			if (!ok)
				return FALSE;
			jws(c);
			if (c->p < c->end && *c->p == ',') {
				c->p++;
				jws(c);
				continue;
			}
			if (c->p < c->end && *c->p == '}') {
				c->p++;
				break;
			}
			return jexpect(c, "',' or '}' after the value");
		}
	}
	c->field = NULL;
	jws(c);
	if (c->p < c->end)
		return jexpect(c, "end of line after the object");
	for (size_t i = 0; i < G_N_ELEMENTS(fields); i++)
		if (!(have & fields[i].bit)) {
			c->field = fields[i].name;
			return jfail(c, "missing");
		}
	kvb_wl_request_t *r = builder_add(b, ts, hash_start);
	r->input_tokens = (uint32_t)in;
	r->output_tokens = (uint32_t)out;
	r->n_hash = n_hash;
	return TRUE;
}

static gboolean load_mooncake(const char *path, const char *data, size_t len, uint64_t limit,
			      builder_t *b, uint64_t *lines, GError **err)
{
	const char *end = data + len, *p = skip_bom(data, end);
	uint64_t line = 0;
	while (p < end && (!limit || b->n < limit)) {
		const char *ls, *le;
		if (!next_line(&p, end, &ls, &le, path, ++line, err))
			return FALSE;
		if (is_blank(ls, le))
			continue;
		jctx_t c = {.path = path, .line = line, .p = ls, .end = le, .err = err};
		if (!jline(&c, b))
			return FALSE;
	}
	*lines = line;
	return TRUE;
}

/* ---- Azure CSV ------------------------------------------------------------- */

enum { COL_TS = 0, COL_CTX = 1, COL_GEN = 2, N_COLS = 3 };
static const char *const azure_cols[N_COLS] = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"};

static gboolean cfail(GError **err, const char *path, uint64_t line, size_t col, const char *field,
		      const char *fmt, ...) G_GNUC_PRINTF(6, 7);
static gboolean cfail(GError **err, const char *path, uint64_t line, size_t col, const char *field,
		      const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *msg = g_strdup_vprintf(fmt, ap);
	va_end(ap);
	if (field)
		g_set_error(err, KVB_WL_ERROR, KVB_WL_ERROR_PARSE, "%s:%" PRIu64 ":%zu: field %s: %s",
			    path, line, col, field, msg);
	else
		g_set_error(err, KVB_WL_ERROR, KVB_WL_ERROR_PARSE, "%s:%" PRIu64 ":%zu: %s", path, line,
			    col, msg);
	g_free(msg);
	return FALSE;
}

/* Split [ls, le) at commas into at most N_COLS fields.  Returns the number of
 * fields, or N_COLS + 1 when there are more (*extra: where the first extra
 * one starts). */
static unsigned csv_split(const char *ls, const char *le, const char *fs[N_COLS],
			  const char *fe[N_COLS], const char **extra)
{
	unsigned n = 0;
	const char *p = ls;
	for (;;) {
		const char *comma = memchr(p, ',', (size_t)(le - p));
		const char *stop = comma ? comma : le;
		if (n == N_COLS) {
			*extra = p;
			return N_COLS + 1;
		}
		fs[n] = p;
		fe[n] = stop;
		n++;
		if (!comma)
			return n;
		p = comma + 1;
	}
}

static gboolean csv_header(const char *path, uint64_t line, const char *ls, const char *le,
			   unsigned which[N_COLS], GError **err)
{
	const char *fs[N_COLS], *fe[N_COLS], *extra = NULL;
	unsigned n = csv_split(ls, le, fs, fe, &extra);
	gboolean seen[N_COLS] = {FALSE, FALSE, FALSE};
	/* names left to right first: a wrong name says more than a wrong count */
	for (unsigned k = 0; k < MIN(n, N_COLS); k++) {
		size_t len = (size_t)(fe[k] - fs[k]);
		unsigned c = 0;
		while (c < N_COLS && !(strlen(azure_cols[c]) == len &&
				       memcmp(azure_cols[c], fs[k], len) == 0))
			c++;
		char *t = span_text(fs[k], fe[k]);
		if (c == N_COLS) {
			cfail(err, path, line, (size_t)(fs[k] - ls) + 1, NULL,
			      "header column %u: expected one of TIMESTAMP, ContextTokens, "
			      "GeneratedTokens, got \"%s\"", k + 1, t);
			g_free(t);
			return FALSE;
		}
		if (seen[c]) {
			cfail(err, path, line, (size_t)(fs[k] - ls) + 1, NULL,
			      "header column %u: duplicate column \"%s\"", k + 1, t);
			g_free(t);
			return FALSE;
		}
		g_free(t);
		seen[c] = TRUE;
		which[k] = c;
	}
	if (n > N_COLS)
		return cfail(err, path, line, (size_t)(extra - ls) + 1, NULL,
			     "header has more than 3 columns (expected TIMESTAMP, ContextTokens, "
			     "GeneratedTokens)");
	if (n < N_COLS)
		return cfail(err, path, line, (size_t)(le - ls) + 1, NULL,
			     "header has %u column%s, expected 3: TIMESTAMP, ContextTokens, "
			     "GeneratedTokens", n, n == 1 ? "" : "s");
	return TRUE;
}

static gboolean csv_uint(const char *path, uint64_t line, const char *ls, const char *s,
			 const char *e, const char *field, uint32_t *out, GError **err)
{
	uint64_t v = 0;
	gboolean digits = s < e;
	for (const char *q = s; q < e; q++)
		if (!g_ascii_isdigit(*q))
			digits = FALSE;
	if (!digits) {
		char *t = span_text(s, e);
		cfail(err, path, line, (size_t)(s - ls) + 1, field,
		      "expected a non-negative integer, got \"%s\"", t);
		g_free(t);
		return FALSE;
	}
	for (const char *q = s; q < e && v <= KVB_WL_MAX_TOKENS; q++)
		v = v * 10 + (uint64_t)(*q - '0');
	if (v > KVB_WL_MAX_TOKENS) {
		char *t = span_text(s, e);
		cfail(err, path, line, (size_t)(s - ls) + 1, field,
		      "value %s exceeds the limit %u", t, KVB_WL_MAX_TOKENS);
		g_free(t);
		return FALSE;
	}
	*out = (uint32_t)v;
	return TRUE;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (153 * (m + (m > 2 ? (unsigned)-3 : 9)) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

static unsigned days_in_month(unsigned y, unsigned m)
{
	static const unsigned dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	gboolean leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
	return m == 2 && leap ? 29 : dim[m - 1];
}

/*
 * "YYYY-MM-DD HH:MM:SS[.f{1,7}]" to 100 ns ticks since 1970 (7 digits is
 * .NET's DateTime resolution, what the Azure trace prints).  Integer ticks
 * keep differences exact; doubles would lose the last digits at 1.7e16.
 */
static gboolean csv_timestamp(const char *path, uint64_t line, const char *ls, const char *s,
			      const char *e, int64_t *ticks, GError **err)
{
	static const char shape[] = "dddd-dd-dd dd:dd:dd";
	size_t len = (size_t)(e - s), n = sizeof(shape) - 1;
	gboolean ok = len >= n;
	for (size_t i = 0; ok && i < n; i++)
		ok = shape[i] == 'd' ? g_ascii_isdigit(s[i]) : s[i] == shape[i];
	size_t frac_digits = 0;
	if (ok && len > n) {
		ok = s[n] == '.' && len > n + 1;
		for (size_t i = n + 1; ok && i < len; i++)
			ok = g_ascii_isdigit(s[i]);
		frac_digits = ok ? len - n - 1 : 0;
	}
	char *t = span_text(s, e);
	if (!ok) {
		cfail(err, path, line, (size_t)(s - ls) + 1, "TIMESTAMP",
		      "expected YYYY-MM-DD HH:MM:SS[.fffffff], got \"%s\"", t);
		g_free(t);
		return FALSE;
	}
	if (frac_digits > 7) {
		cfail(err, path, line, (size_t)(s - ls) + 1, "TIMESTAMP",
		      "%zu fractional digits in \"%s\", at most 7", frac_digits, t);
		g_free(t);
		return FALSE;
	}
#define NUM2(i) ((unsigned)(s[i] - '0') * 10 + (unsigned)(s[(i) + 1] - '0'))
	unsigned y = NUM2(0) * 100 + NUM2(2), mo = NUM2(5), d = NUM2(8);
	unsigned hh = NUM2(11), mi = NUM2(14), ss = NUM2(17);
#undef NUM2
	const char *bad = mo < 1 || mo > 12 ? "month"
		: d < 1 || d > days_in_month(y, mo) ? "day"
		: hh > 23 ? "hour" : mi > 59 ? "minute" : ss > 59 ? "second" : NULL;
	if (bad) {
		cfail(err, path, line, (size_t)(s - ls) + 1, "TIMESTAMP", "%s out of range in \"%s\"",
		      bad, t);
		g_free(t);
		return FALSE;
	}
	g_free(t);
	int64_t frac = 0;
	for (size_t i = 0; i < 7; i++)
		frac = frac * 10 + (i < frac_digits ? s[n + 1 + i] - '0' : 0);
	int64_t secs = ((days_from_civil(y, mo, d) * 24 + hh) * 60 + mi) * 60 + ss;
	*ticks = secs * 10000000 + frac;
	return TRUE;
}

static gboolean load_azure(const char *path, const char *data, size_t len, uint64_t limit,
			   builder_t *b, uint64_t *lines, GError **err)
{
	const char *end = data + len, *p = skip_bom(data, end);
	uint64_t line = 0;
	gboolean header = FALSE;
	unsigned which[N_COLS] = {0, 1, 2};
	int64_t first = 0;
	while (p < end && (!limit || b->n < limit)) {
		const char *ls, *le;
		if (!next_line(&p, end, &ls, &le, path, ++line, err))
			return FALSE;
		if (le > ls && le[-1] == '\r')
			le--;
		if (is_blank(ls, le))
			continue;
		if (!header) {
			if (!csv_header(path, line, ls, le, which, err))
				return FALSE;
			header = TRUE;
			continue;
		}
		const char *fs[N_COLS], *fe[N_COLS], *extra = NULL;
		unsigned n = csv_split(ls, le, fs, fe, &extra);
		if (n > N_COLS)
			return cfail(err, path, line, (size_t)(extra - ls) + 1, NULL,
				     "row has more than 3 columns");
		if (n < N_COLS)
			return cfail(err, path, line, (size_t)(le - ls) + 1, azure_cols[which[n]],
				     "missing: row has %u column%s, expected 3", n, n == 1 ? "" : "s");
		int64_t ticks = 0;
		uint32_t ctx = 0, gen = 0;
		for (unsigned k = 0; k < N_COLS; k++) {
			gboolean ok = which[k] == COL_TS
				? csv_timestamp(path, line, ls, fs[k], fe[k], &ticks, err)
				: csv_uint(path, line, ls, fs[k], fe[k], azure_cols[which[k]],
					   which[k] == COL_CTX ? &ctx : &gen, err);
			if (!ok)
				return FALSE;
		}
		if (b->n == 0)
			first = ticks;
		kvb_wl_request_t *r = builder_add(b, (double)(ticks - first), b->nh);
		r->input_tokens = ctx;
		r->output_tokens = gen;
	}
	*lines = line;
	return TRUE;
}

/* ---- loading ----------------------------------------------------------------- */

/* Mooncake when the first non-blank byte is '{'; Azure when the first
 * non-blank line is a CSV header with a TIMESTAMP column. */
static gboolean detect_format(const char *path, const char *data, size_t len,
			      kvb_wl_format_t *fmt, GError **err)
{
	const char *end = data + len, *p = skip_bom(data, end);
	uint64_t line = 1;
	for (; p < end && strchr(" \t\r\n", *p) && *p; p++)
		if (*p == '\n')
			line++;
	if (p == end) {
		g_set_error(err, KVB_WL_ERROR, KVB_WL_ERROR_EMPTY,
			    "%s:%" PRIu64 ": empty file: cannot detect the trace format", path, line);
		return FALSE;
	}
	if (*p == '{') {
		*fmt = KVB_WL_MOONCAKE;
		return TRUE;
	}
	const char *le = memchr(p, '\n', (size_t)(end - p));
	le = le ? le : end;
	if (le > p && le[-1] == '\r')
		le--;
	for (const char *f = p; f <= le;) {
		const char *comma = memchr(f, ',', (size_t)(le - f));
		const char *fe = comma ? comma : le;
		if (fe - f == 9 && memcmp(f, "TIMESTAMP", 9) == 0) {
			*fmt = KVB_WL_AZURE;
			return TRUE;
		}
		if (!comma)
			break;
		f = comma + 1;
	}
	char *t = span_text(p, le);
	g_set_error(err, KVB_WL_ERROR, KVB_WL_ERROR_FORMAT,
		    "%s:%" PRIu64 ": cannot detect the trace format: expected '{' (Mooncake JSONL) "
		    "or a CSV header with a TIMESTAMP column (Azure), got \"%s\"", path, line, t);
	g_free(t);
	return FALSE;
}

gboolean kvb_workload_load(const char *path, kvb_wl_format_t fmt, double rate_mult,
			   uint64_t limit, kvb_workload_t **out, GError **err)
{
	g_return_val_if_fail(path != NULL, FALSE);
	g_return_val_if_fail(out != NULL, FALSE);
	g_return_val_if_fail(err == NULL || *err == NULL, FALSE);
	if (!(rate_mult > 0) || !isfinite(rate_mult)) {
		g_set_error(err, KVB_WL_ERROR, KVB_WL_ERROR_INVALID,
			    "%s: rate multiplier %g must be a finite number > 0", path, rate_mult);
		return FALSE;
	}
	if (fmt != KVB_WL_AUTO && fmt != KVB_WL_MOONCAKE && fmt != KVB_WL_AZURE) {
		g_set_error(err, KVB_WL_ERROR, KVB_WL_ERROR_INVALID, "%s: unknown trace format %d",
			    path, (int)fmt);
		return FALSE;
	}
	char *data = NULL;
	gsize len = 0;
	if (!g_file_get_contents(path, &data, &len, err))
		return FALSE; /* G_FILE_ERROR; its message names the path */
	builder_t b = {0};
	uint64_t lines = 0;
	gboolean ok = fmt != KVB_WL_AUTO || detect_format(path, data, len, &fmt, err);
	if (ok)
		ok = fmt == KVB_WL_MOONCAKE ? load_mooncake(path, data, len, limit, &b, &lines, err)
					    : load_azure(path, data, len, limit, &b, &lines, err);
	g_free(data);
	if (ok && b.n == 0) {
		g_set_error(err, KVB_WL_ERROR, KVB_WL_ERROR_EMPTY,
			    "%s:%" PRIu64 ": end of file and no request in it", path,
			    lines ? lines : 1);
		ok = FALSE;
	}
	if (!ok) {
		builder_clear(&b);
		return FALSE;
	}
	*out = builder_finish(&b, fmt == KVB_WL_MOONCAKE ? 1e3 : 1e7, rate_mult, TRUE, path);
	return TRUE;
}

gboolean kvb_workload_from_array(const kvb_wl_request_t *reqs, uint64_t n, const char *source,
				 kvb_workload_t **out, GError **err)
{
	g_return_val_if_fail(out != NULL, FALSE);
	g_return_val_if_fail(reqs != NULL || n == 0, FALSE);
	g_return_val_if_fail(err == NULL || *err == NULL, FALSE);
	const char *src = source ? source : "(array)";
	if (n == 0) {
		g_set_error(err, KVB_WL_ERROR, KVB_WL_ERROR_EMPTY, "%s: no requests", src);
		return FALSE;
	}
	builder_t b = {0};
	for (uint64_t i = 0; i < n; i++) {
		const kvb_wl_request_t *q = &reqs[i];
		const char *bad = !(q->arrival_s >= 0) || !isfinite(q->arrival_s) ? "arrival_s"
			: q->input_tokens > KVB_WL_MAX_TOKENS ? "input_tokens"
			: q->output_tokens > KVB_WL_MAX_TOKENS ? "output_tokens"
			: q->n_hash > KVB_WL_MAX_HASHES ? "n_hash"
			: q->n_hash && !q->hash_ids ? "hash_ids" : NULL;
		if (bad) {
			g_set_error(err, KVB_WL_ERROR, KVB_WL_ERROR_INVALID,
				    "%s: request %" PRIu64 " (id %" PRIu64 "): field %s out of range "
				    "(arrival_s %g, input %u, output %u, n_hash %u, hash_ids %s)",
				    src, i, q->id, bad, q->arrival_s, q->input_tokens,
				    q->output_tokens, q->n_hash, q->hash_ids ? "set" : "NULL");
			builder_clear(&b);
			return FALSE;
		}
		uint64_t hoff = b.nh;
		for (uint32_t k = 0; k < q->n_hash; k++)
			builder_push_hash(&b, q->hash_ids[k]);
		kvb_wl_request_t *r = builder_add(&b, q->arrival_s, hoff);
		r->id = q->id;
		r->input_tokens = q->input_tokens;
		r->output_tokens = q->output_tokens;
		r->n_hash = q->n_hash;
	}
	*out = builder_finish(&b, 1, 1, FALSE, src);
	return TRUE;
}

/* ---- generator ------------------------------------------------------------------ */

/* The core's xoshiro256** (kvb_rng_t, seeded through splitmix64): the same
 * seed gives the same workload on every platform. */
typedef kvb_rng_t rng_t;

static double rng_unit(rng_t *r)
{
	return kvb_rng_uniform(r);
}

/* Standard normal by Box-Muller (one of the pair; always two draws). */
static double rng_normal(rng_t *r)
{
	double u1 = 1.0 - rng_unit(r); /* (0, 1]: log is finite */
	double u2 = rng_unit(r);
	return sqrt(-2.0 * log(u1)) * cos(2.0 * G_PI * u2);
}

static double std_normal_cdf(double x)
{
	return 0.5 * erfc(-x / G_SQRT2);
}

/* E[clamp(X, 1, max)] for X = exp(mu + s Z), s > 0: the two clamped tails
 * plus the partial mean exp(mu + s^2/2) [Phi(b - s) - Phi(a - s)] between. */
static double clamped_lognormal_mean(double mu, double s, double max)
{
	double a = (0.0 - mu) / s, b = (log(max) - mu) / s;
	return std_normal_cdf(a) +
	       exp(mu + s * s / 2) * (std_normal_cdf(b - s) - std_normal_cdf(a - s)) +
	       max * std_normal_cdf(-b);
}

/* mu such that the clamped mean is `mean` (monotone in mu: bisection). */
static double lognormal_mu(double mean, double s, double max)
{
	if (s == 0)
		return log(mean);
	double lo = -40 - 40 * s, hi = log(max) + 40 * s;
	for (int i = 0; i < 200 && hi - lo > 1e-13; i++) {
		double mid = 0.5 * (lo + hi);
		if (clamped_lognormal_mean(mid, s, max) < mean)
			lo = mid;
		else
			hi = mid;
	}
	return 0.5 * (lo + hi);
}

static uint32_t lognormal_tokens(double mu, double s, double z, uint32_t max)
{
	double x = exp(mu + s * z);
	if (!(x < (double)max))
		return max;
	long long v = llround(x);
	return v < 1 ? 1 : (uint32_t)v;
}

static gboolean gen_check(const kvb_wl_gen_params_t *p, GError **err)
{
	const char *bad = NULL;
	char val[64] = "";
#define BAD(name, fmt, v) \
	do { bad = name; g_snprintf(val, sizeof(val), fmt, v); } while (0)
	if (p->n_requests < 1 || p->n_requests > KVB_WL_MAX_REQUESTS)
		BAD("n_requests", "%" PRIu64, p->n_requests);
	else if (!(p->rate_per_s > 0) || !isfinite(p->rate_per_s))
		BAD("rate_per_s", "%g", p->rate_per_s);
	else if (p->max_tokens < 1 || p->max_tokens > KVB_WL_MAX_TOKENS)
		BAD("max_tokens", "%u", p->max_tokens);
	else if (!(p->input_mean >= 1 && p->input_mean <= p->max_tokens))
		BAD("input_mean", "%g", p->input_mean);
	else if (!(p->output_mean >= 1 && p->output_mean <= p->max_tokens))
		BAD("output_mean", "%g", p->output_mean);
	else if (!(p->input_sigma >= 0 && p->input_sigma <= 4))
		BAD("input_sigma", "%g", p->input_sigma);
	else if (!(p->output_sigma >= 0 && p->output_sigma <= 4))
		BAD("output_sigma", "%g", p->output_sigma);
	else if (p->block_tokens < 1 ||
		 ((uint64_t)p->max_tokens + p->block_tokens - 1) / p->block_tokens > KVB_WL_MAX_HASHES)
		BAD("block_tokens", "%u", p->block_tokens);
	else if (!(p->reuse_prob >= 0 && p->reuse_prob <= 1))
		BAD("reuse_prob", "%g", p->reuse_prob);
	else if (p->window < 1)
		BAD("window", "%u", p->window);
#undef BAD
	if (!bad)
		return TRUE;
	g_set_error(err, KVB_WL_ERROR, KVB_WL_ERROR_INVALID,
		    "generator: %s = %s is out of range (see kvb_workload.h: n_requests 1..%u, "
		    "rate > 0, 1 <= mean <= max_tokens <= %u, sigma 0..4, "
		    "ceil(max_tokens / block_tokens) <= %u, reuse_prob 0..1, window >= 1)",
		    bad, val, KVB_WL_MAX_REQUESTS, KVB_WL_MAX_TOKENS, KVB_WL_MAX_HASHES);
	return FALSE;
}

void kvb_wl_gen_defaults(kvb_wl_gen_params_t *p)
{
	*p = (kvb_wl_gen_params_t){
		.seed = 1,
		.n_requests = 12031,
		.rate_per_s = 3.4,
		.input_mean = 12035,
		.input_sigma = 1.05,
		.output_mean = 343,
		.output_sigma = 0.65,
		.max_tokens = 131072,
		.block_tokens = KVB_WL_BLOCK_TOKENS,
		.reuse_prob = 0.92,
		.window = 1024,
	};
}

/*
 * Every request consumes exactly seven 64-bit draws in a fixed order (gap,
 * input normal x2, output normal x2, reuse coin, parent pick), so each
 * stream is independent of the other parameters' values.
 */
gboolean kvb_workload_generate(const kvb_wl_gen_params_t *p, kvb_workload_t **out, GError **err)
{
	g_return_val_if_fail(p != NULL, FALSE);
	g_return_val_if_fail(out != NULL, FALSE);
	g_return_val_if_fail(err == NULL || *err == NULL, FALSE);
	if (!gen_check(p, err))
		return FALSE;
	double mu_in = lognormal_mu(p->input_mean, p->input_sigma, p->max_tokens);
	double mu_out = lognormal_mu(p->output_mean, p->output_sigma, p->max_tokens);
	rng_t rng;
	kvb_rng_seed(&rng, p->seed);
	builder_t b = {0};
	uint64_t next_id = 0;
	double t = 0;
	for (uint64_t i = 0; i < p->n_requests; i++) {
		double gap = -log1p(-rng_unit(&rng)) / p->rate_per_s;
		double z_in = rng_normal(&rng), z_out = rng_normal(&rng);
		double coin = rng_unit(&rng);
		uint64_t pick = kvb_rng_next(&rng);
		if (i > 0)
			t += gap;
		uint32_t in = lognormal_tokens(mu_in, p->input_sigma, z_in, p->max_tokens);
		uint32_t outt = lognormal_tokens(mu_out, p->output_sigma, z_out, p->max_tokens);
		uint32_t nb = (uint32_t)(((uint64_t)in + p->block_tokens - 1) / p->block_tokens);
		uint32_t shared = 0;
		uint64_t hoff = b.nh;
		if (i > 0 && coin < p->reuse_prob) {
			uint64_t w = MIN(i, (uint64_t)p->window);
			uint64_t parent = i - 1 - (((pick >> 32) * w) >> 32);
			const kvb_wl_request_t *pr = &b.req[parent];
			shared = MIN(pr->input_tokens / p->block_tokens, in / p->block_tokens);
			uint64_t poff = b.hoff[parent];
			for (uint32_t k = 0; k < shared; k++) {
				uint32_t h = b.hashes[poff + k]; /* read before a push may move it */
				builder_push_hash(&b, h);
			}
		}
		if (next_id + (nb - shared) > (uint64_t)UINT32_MAX + 1) {
			g_set_error(err, KVB_WL_ERROR, KVB_WL_ERROR_INVALID,
				    "generator: request %" PRIu64 " needs hash id %" PRIu64
				    ", beyond 32 bits: fewer requests or larger blocks", i,
				    next_id + (nb - shared) - 1);
			builder_clear(&b);
			return FALSE;
		}
		for (uint32_t k = shared; k < nb; k++)
			builder_push_hash(&b, (uint32_t)next_id++);
		kvb_wl_request_t *r = builder_add(&b, t, hoff);
		r->input_tokens = in;
		r->output_tokens = outt;
		r->n_hash = nb;
	}
	char *src = g_strdup_printf("generated: seed %" PRIu64 ", %" PRIu64 " requests", p->seed,
				    p->n_requests);
	*out = builder_finish(&b, 1, 1, FALSE, src);
	g_free(src);
	return TRUE;
}

/* ---- access and statistics ------------------------------------------------------ */

uint64_t kvb_workload_count(const kvb_workload_t *w)
{
	return w ? w->n : 0;
}

const kvb_wl_request_t *kvb_workload_get(const kvb_workload_t *w, uint64_t i)
{
	return w && i < w->n ? &w->req[i] : NULL;
}

const char *kvb_workload_source(const kvb_workload_t *w)
{
	return w ? w->source : NULL;
}

static int u32_cmp(const void *pa, const void *pb)
{
	uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;
	return a < b ? -1 : a > b;
}

/* Nearest rank: the smallest value with at least q% of the data at or below it. */
static uint32_t rank_pct(const uint32_t *sorted, uint64_t n, unsigned q)
{
	uint64_t k = (n * q + 99) / 100;
	return sorted[k ? k - 1 : 0];
}

void kvb_workload_stats(const kvb_workload_t *w, kvb_wl_stats_t *st)
{
	memset(st, 0, sizeof(*st));
	if (!w || w->n == 0)
		return;
	uint64_t n = w->n;
	uint32_t *in = g_new(uint32_t, n), *out = g_new(uint32_t, n);
	st->count = n;
	st->duration_s = w->req[n - 1].arrival_s - w->req[0].arrival_s;
	for (uint64_t i = 0; i < n; i++) {
		in[i] = w->req[i].input_tokens;
		out[i] = w->req[i].output_tokens;
		st->total_input_tokens += in[i];
		st->total_output_tokens += out[i];
		st->total_blocks += w->req[i].n_hash;
	}
	st->mean_input = (double)st->total_input_tokens / (double)n;
	st->mean_output = (double)st->total_output_tokens / (double)n;
	qsort(in, n, sizeof(*in), u32_cmp);
	qsort(out, n, sizeof(*out), u32_cmp);
	st->p50_input = rank_pct(in, n, 50);
	st->p99_input = rank_pct(in, n, 99);
	st->max_input = in[n - 1];
	st->p50_output = rank_pct(out, n, 50);
	st->p99_output = rank_pct(out, n, 99);
	st->max_output = out[n - 1];
	g_free(in);
	g_free(out);

	/* unbounded cache: each distinct id misses once, so hits = total - distinct */
	if (st->total_blocks) {
		uint32_t *h = g_memdup2(w->hashes, w->n_hashes * sizeof(*h));
		qsort(h, w->n_hashes, sizeof(*h), u32_cmp);
		uint64_t distinct = 1;
		for (uint64_t i = 1; i < w->n_hashes; i++)
			distinct += h[i] != h[i - 1];
		g_free(h);
		st->hit_blocks = st->total_blocks - distinct;
		st->cache_ratio = (double)st->hit_blocks / (double)st->total_blocks;
	}
}

void kvb_workload_free(kvb_workload_t *w)
{
	if (!w)
		return;
	g_free(w->req);
	g_free(w->hashes);
	g_free(w->source);
	g_free(w);
}

/* ---- prefill time model ---------------------------------------------------------- */

void kvb_gpu_params_defaults(kvb_gpu_params_t *g)
{
	*g = (kvb_gpu_params_t){
		.tflops_per_gpu = 312,
		.gpus = 8,
		.mfu = 0.45,
		.overhead_s = 0.02,
	};
}

double kvb_prefill_flops(const kvb_model_t *m, uint32_t new_tokens, uint32_t cached_tokens)
{
	if (!m || !(m->active_params_b >= 0) || !isfinite(m->active_params_b))
		return -1;
	double n = new_tokens, c = cached_tokens;
	double dense = 2.0 * m->active_params_b * 1e9 * n;
	double attn = 2.0 * (double)m->layers * (double)m->hidden * n * (2.0 * c + n);
	return dense + attn;
}

double kvb_prefill_seconds(const kvb_model_t *m, uint32_t new_tokens, uint32_t cached_tokens,
			   const kvb_gpu_params_t *g)
{
	kvb_gpu_params_t def;
	if (!g) {
		kvb_gpu_params_defaults(&def);
		g = &def;
	}
	if (!(g->tflops_per_gpu > 0) || !isfinite(g->tflops_per_gpu) || g->gpus == 0 ||
	    !(g->mfu > 0 && g->mfu <= 1) || !(g->overhead_s >= 0) || !isfinite(g->overhead_s))
		return -1;
	double flops = kvb_prefill_flops(m, new_tokens, cached_tokens);
	if (flops < 0)
		return -1;
	return g->overhead_s + flops / (g->tflops_per_gpu * 1e12 * (double)g->gpus * g->mfu);
}
