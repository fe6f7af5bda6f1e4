/*
 * Strict HTTP/1.1 heads, chunked bodies and writers (kvb_http.h).
 *
 * The parser takes a whole head or nothing: it looks for the CRLFCRLF that
 * ends the head within the first KVB_HTTP_HEAD_MAX bytes and parses only
 * then, so a caller simply re-calls it with more bytes.  Faults that no
 * later byte can repair (a bare LF or bare CR) are refused as soon as they
 * arrive, so a client speaking LF-only HTTP gets its 400 at once rather
 * than after 64 KiB.  Each call rescans from the start (the API keeps no
 * state), so a caller that re-parses after every read of a trickled head
 * does quadratic work; a head can only complete on an LF, so callers
 * should re-parse only when the new bytes hold one.
 */
#include "config.h"

#include <inttypes.h>
#include <string.h>

#include "kvb_http.h"

/* RFC 9110 5.6.2 tchar */
static bool is_tchar(unsigned char c)
{
	if (g_ascii_isalnum(c))
		return true;
	return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool is_token(const char *s, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!is_tchar((unsigned char)s[i]))
			return false;
	return true;
}

/* Controls other than HTAB, and DEL; obs-text (0x80-0xff) is allowed in
 * field values and reason phrases (RFC 9110 5.5). */
static bool is_ctl(unsigned char c)
{
	return (c < 0x20 && c != '\t') || c == 0x7f;
}

static bool is_ows(char c)
{
	return c == ' ' || c == '\t';
}

/* Printable excerpt of s[0, n) for messages. */
static const char *excerpt(char *dst, size_t cap, const char *s, size_t n)
{
	size_t k = MIN(n, cap - 4);
	for (size_t i = 0; i < k; i++) {
		unsigned char c = (unsigned char)s[i];
		dst[i] = c >= 0x20 && c < 0x7f ? (char)c : '.';
	}
	if (k < n) {
		memcpy(dst + k, "...", 3);
		k += 3;
	}
	dst[k] = '\0';
	return dst;
}

void kvb_http_msg_clear(kvb_http_msg_t *msg)
{
	if (!msg)
		return;
	for (uint32_t i = 0; i < msg->n_fields && i < KVB_HTTP_MAX_HEADERS; i++) {
		g_free(msg->fields[i].name);
		g_free(msg->fields[i].value);
	}
	memset(msg, 0, sizeof(*msg));
}

const char *kvb_http_field_get(const kvb_http_msg_t *msg, const char *name)
{
	if (!msg || !name)
		return NULL;
	for (uint32_t i = 0; i < msg->n_fields; i++)
		if (!g_ascii_strcasecmp(msg->fields[i].name, name))
			return msg->fields[i].value;
	return NULL;
}

static int parse_version(const char *s, size_t n, int *minor, kvb_err_t *err)
{
	char ex[40];
	if (n == 8 && !memcmp(s, "HTTP/1.", 7) && (s[7] == '0' || s[7] == '1')) {
		*minor = s[7] - '0';
		return KVB_OK;
	}
	return kvb_err_set(err, KVB_ERR_PROTOCOL, "HTTP version '%s' (only HTTP/1.0 and HTTP/1.1)",
			   excerpt(ex, sizeof(ex), s, n));
}

/* "METHOD SP target SP HTTP/1.x": exactly two single spaces, no empty part. */
static int parse_request_line(const char *s, size_t n, kvb_http_msg_t *m, kvb_err_t *err)
{
	char ex[64];
	const char *sp1 = memchr(s, ' ', n);
	const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', n - (size_t)(sp1 + 1 - s)) : NULL;
	const char *end = s + n;
	if (!sp1 || !sp2 || sp1 == s || sp2 == sp1 + 1 || sp2 + 1 == end ||
	    memchr(sp2 + 1, ' ', (size_t)(end - sp2 - 1)))
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "request line '%s' does not split into method, target and version",
				   excerpt(ex, sizeof(ex), s, n));
	size_t ml = (size_t)(sp1 - s), tl = (size_t)(sp2 - sp1 - 1);
	if (!is_token(s, ml))
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "method '%s' is not a token",
				   excerpt(ex, sizeof(ex), s, ml));
	if (ml >= KVB_HTTP_METHOD_MAX)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "method '%s' is longer than %u bytes",
				   excerpt(ex, sizeof(ex), s, ml), KVB_HTTP_METHOD_MAX - 1);
	for (size_t i = 0; i < tl; i++) {
		unsigned char c = (unsigned char)sp1[1 + i];
		if (c <= 0x20 || c >= 0x7f)
			return kvb_err_set(err, KVB_ERR_PROTOCOL,
					   "request target has byte 0x%02x at %zu (controls, spaces "
					   "and non-ASCII are refused)", c, i);
	}
	if (tl >= KVB_HTTP_TARGET_MAX)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "request target is %zu bytes (at most %u)",
				   tl, KVB_HTTP_TARGET_MAX - 1);
	int rc = parse_version(sp2 + 1, (size_t)(end - sp2 - 1), &m->version_minor, err);
	if (rc)
		return rc;
	memcpy(m->method, s, ml);
	m->method[ml] = '\0';
	memcpy(m->target, sp1 + 1, tl);
	m->target[tl] = '\0';
	return KVB_OK;
}

/* "HTTP/1.x SP 3DIGIT SP reason": the reason may be empty or hold spaces;
 * one longer than the buffer is cut (it carries no meaning). */
static int parse_status_line(const char *s, size_t n, kvb_http_msg_t *m, kvb_err_t *err)
{
	char ex[64];
	const char *sp1 = memchr(s, ' ', n);
	if (!sp1 || (size_t)(sp1 - s) + 5 > n || sp1[4] != ' ')
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "status line '%s' does not split into version, status and reason",
				   excerpt(ex, sizeof(ex), s, n));
	int rc = parse_version(s, (size_t)(sp1 - s), &m->version_minor, err);
	if (rc)
		return rc;
	const char *st = sp1 + 1;
	if (!g_ascii_isdigit(st[0]) || !g_ascii_isdigit(st[1]) || !g_ascii_isdigit(st[2]))
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "status code '%s' is not three digits",
				   excerpt(ex, sizeof(ex), st, 3));
	int status = (st[0] - '0') * 100 + (st[1] - '0') * 10 + (st[2] - '0');
	if (status < 100 || status > 599)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "status code %d outside 100..599", status);
	const char *r = st + 4;
	size_t rl = n - (size_t)(r - s);
	for (size_t i = 0; i < rl; i++)
		if (is_ctl((unsigned char)r[i]))
			return kvb_err_set(err, KVB_ERR_PROTOCOL, "reason phrase has control byte 0x%02x",
					   (unsigned char)r[i]);
	m->status = status;
	rl = MIN(rl, (size_t)KVB_HTTP_REASON_MAX - 1);
	memcpy(m->reason, r, rl);
	m->reason[rl] = '\0';
	return KVB_OK;
}

/* One field line into m->fields (name as received, value trimmed). */
static int parse_field_line(const char *s, size_t n, kvb_http_msg_t *m, kvb_err_t *err)
{
	char ex[64];
	if (is_ows(s[0]))
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "obsolete line folding (field line '%s' starts with whitespace)",
				   excerpt(ex, sizeof(ex), s, n));
	const char *colon = memchr(s, ':', n);
	size_t nl = colon ? (size_t)(colon - s) : n;
	if (!colon || !is_token(s, nl))
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "field name '%s' is not a token%s",
				   excerpt(ex, sizeof(ex), s, nl), colon ? "" : " followed by ':'");
	const char *v = colon + 1, *ve = s + n;
	while (v < ve && is_ows(*v))
		v++;
	while (ve > v && is_ows(ve[-1]))
		ve--;
	for (const char *p = v; p < ve; p++)
		if (is_ctl((unsigned char)*p))
			return kvb_err_set(err, KVB_ERR_PROTOCOL, "field %s: value has control byte 0x%02x",
					   excerpt(ex, sizeof(ex), s, nl), (unsigned char)*p);
	if (m->n_fields >= KVB_HTTP_MAX_HEADERS)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "more than %u header fields",
				   KVB_HTTP_MAX_HEADERS);
	kvb_http_field_t *f = &m->fields[m->n_fields++];
	f->name = g_strndup(s, nl);
	f->value = g_strndup(v, (size_t)(ve - v));
	return KVB_OK;
}

/* Whether the comma-separated list holds token (case-insensitive). */
static bool list_has(const char *list, const char *token)
{
	size_t tl = strlen(token);
	const char *p = list;
	while (*p) {
		while (*p == ',' || is_ows(*p))
			p++;
		const char *e = p;
		while (*e && *e != ',')
			e++;
		const char *t = e;
		while (t > p && is_ows(t[-1]))
			t--;
		if ((size_t)(t - p) == tl && !g_ascii_strncasecmp(p, token, tl))
			return true;
		p = e;
	}
	return false;
}

/* Framing and persistence from the parsed fields (RFC 9112 6, 9.3). */
static int parse_framing(kvb_http_msg_t *m, kvb_err_t *err)
{
	bool te = false, close = false, ka = false;
	for (uint32_t i = 0; i < m->n_fields; i++) {
		const char *name = m->fields[i].name, *val = m->fields[i].value;
		char ex[40];
		if (!g_ascii_strcasecmp(name, "Content-Length")) {
			uint64_t v = 0;
			if (!*val)
				return kvb_err_set(err, KVB_ERR_PROTOCOL, "Content-Length is empty");
			for (const char *p = val; *p; p++) {
				if (!g_ascii_isdigit(*p))
					return kvb_err_set(err, KVB_ERR_PROTOCOL,
							   "Content-Length '%s' is not all digits",
							   excerpt(ex, sizeof(ex), val, strlen(val)));
				v = v * 10 + (uint64_t)(*p - '0');
				if (v > KVB_HTTP_BODY_MAX)
					return kvb_err_set(err, KVB_ERR_PROTOCOL,
							   "Content-Length '%s' above %u",
							   excerpt(ex, sizeof(ex), val, strlen(val)),
							   KVB_HTTP_BODY_MAX);
			}
			if (m->has_content_length && m->content_length != v)
				return kvb_err_set(err, KVB_ERR_PROTOCOL,
						   "Content-Length repeated with different values (%" PRIu64
						   " and %" PRIu64 ")", m->content_length, v);
			m->has_content_length = true;
			m->content_length = v;
		} else if (!g_ascii_strcasecmp(name, "Transfer-Encoding")) {
			/* a second field would make the coding list "chunked, chunked" */
			if (te || g_ascii_strcasecmp(val, "chunked"))
				return kvb_err_set(err, KVB_ERR_PROTOCOL,
						   "Transfer-Encoding '%s'%s (only a single \"chunked\")",
						   excerpt(ex, sizeof(ex), val, strlen(val)),
						   te ? " repeated" : "");
			te = true;
		} else if (!g_ascii_strcasecmp(name, "Connection")) {
			close = close || list_has(val, "close");
			ka = ka || list_has(val, "keep-alive");
		}
	}
	if (te && m->has_content_length)
		return kvb_err_set(err, KVB_ERR_PROTOCOL,
				   "Transfer-Encoding together with Content-Length (request smuggling)");
	/* RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing */
	if (te && m->version_minor == 0)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "Transfer-Encoding in an HTTP/1.0 message");
	m->chunked = te;
	m->keep_alive = m->version_minor == 1 ? !close : (ka && !close);
	return KVB_OK;
}

static int http_parse(const char *buf, size_t len, bool is_request, kvb_http_msg_t *m,
		      kvb_err_t *err)
{
	if (!m)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_http_parse: NULL msg");
	memset(m, 0, sizeof(*m));
	if (!buf && len)
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_http_parse: NULL buffer");
	size_t scan = MIN(len, (size_t)KVB_HTTP_HEAD_MAX), end = 0;
	for (size_t i = 0; i < scan; i++) {
		if (buf[i] == '\n') {
			if (i == 0 || buf[i - 1] != '\r')
				return kvb_err_set(err, KVB_ERR_PROTOCOL, "bare LF at byte %zu of the head", i);
			if (i >= 3 && buf[i - 2] == '\n') {
				end = i + 1;
				break;
			}
		} else if (buf[i] == '\r' && i + 1 < scan && buf[i + 1] != '\n') {
			return kvb_err_set(err, KVB_ERR_PROTOCOL, "bare CR at byte %zu of the head", i);
		}
	}
	if (!end) {
		if (len >= KVB_HTTP_HEAD_MAX)
			return kvb_err_set(err, KVB_ERR_PROTOCOL, "head larger than %u bytes",
					   KVB_HTTP_HEAD_MAX);
		return KVB_INPROGRESS;
	}
	m->is_request = is_request;
	/* lines end in CRLF (a lone CR was refused above); the head ends with an
	 * empty one, so there is at least the start line before stop */
	const char *p = buf, *stop = buf + end - 2;
	int rc = KVB_OK;
	bool first = true;
	while (p < stop && rc == KVB_OK) {
		const char *e = memchr(p, '\r', (size_t)(stop - p));
		size_t n = (size_t)(e - p); /* found: the head has CRLF before stop */
		if (first)
			rc = is_request ? parse_request_line(p, n, m, err) : parse_status_line(p, n, m, err);
		else
			rc = parse_field_line(p, n, m, err);
		first = false;
		p = e + 2;
	}
	if (rc == KVB_OK)
		rc = parse_framing(m, err);
	if (rc != KVB_OK) {
		kvb_http_msg_clear(m);
		return rc;
	}
	m->is_request = is_request;
	m->head_len = end;
	return KVB_OK;
}

int kvb_http_parse_request(const char *buf, size_t len, kvb_http_msg_t *msg, kvb_err_t *err)
{
	return http_parse(buf, len, true, msg, err);
}

int kvb_http_parse_response(const char *buf, size_t len, kvb_http_msg_t *msg, kvb_err_t *err)
{
	return http_parse(buf, len, false, msg, err);
}

/* ---- chunked bodies ------------------------------------------------------ */

enum chunk_state {
	CH_SIZE = 0,     /* hex digits of a chunk size */
	CH_SIZE_BWS = 1, /* whitespace after the size, before ';' */
	CH_EXT = 2,      /* chunk extension after ';' (ignored) */
	CH_SIZE_LF = 3,  /* LF ending the size line */
	CH_DATA = 4,     /* chunk data, remaining bytes left */
	CH_DATA_CR = 5,  /* CR after the data */
	CH_DATA_LF = 6,  /* LF after the data */
	CH_TR_START = 7, /* start of a trailer line or the final CRLF */
	CH_TR_NAME = 8,  /* trailer field name */
	CH_TR_VALUE = 9, /* trailer field value (ignored) */
	CH_TR_LF = 10,   /* LF ending a trailer line */
	CH_END_LF = 11,  /* LF of the final empty line */
	CH_DONE = 12,    /* body complete */
	CH_FAILED = 13,  /* refused; every later call is refused too */
};

/* Size line bytes (digits and extension) and trailer bytes accepted. */
#define CH_SIZE_LINE_MAX 4096u
#define CH_TRAILER_MAX KVB_HTTP_HEAD_MAX

void kvb_http_chunked_init(kvb_http_chunked_t *d)
{
	memset(d, 0, sizeof(*d));
	d->state = CH_SIZE;
}

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (unsigned char)g_ascii_tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/*
 * A byte-at-a-time state machine except for chunk data, which is copied in
 * runs, so a body split at any byte boundary decodes the same.  In the
 * trailer states `remaining` counts trailer bytes (it is free there), which
 * bounds trailers as the head is bounded.
 */
int kvb_http_chunked_feed(kvb_http_chunked_t *d, const char *in, size_t len, size_t *consumed,
			  GByteArray *out, kvb_err_t *err)
{
	size_t i = 0;
	int rc = KVB_INPROGRESS;
	const char *why = NULL;
	unsigned char c = 0;
	if (consumed)
		*consumed = 0;
	if (!d || (!in && len))
		return kvb_err_set(err, KVB_ERR_INVALID, "kvb_http_chunked_feed: NULL argument");
	if (d->state == CH_DONE)
		return KVB_OK;
	if (d->state == CH_FAILED)
		return kvb_err_set(err, KVB_ERR_PROTOCOL, "chunked body was already refused");
	while (i < len && rc == KVB_INPROGRESS) {
		if (d->state == CH_DATA) {
			size_t n = (size_t)MIN(d->remaining, (uint64_t)(len - i));
			if (out)
				g_byte_array_append(out, (const guint8 *)in + i, (guint)n);
			d->remaining -= n;
			d->total += n;
			i += n;
			if (!d->remaining)
				d->state = CH_DATA_CR;
			continue;
		}
		c = (unsigned char)in[i++];
		switch (d->state) {
		case CH_SIZE: {
			int h = hexval(c);
			if (h >= 0) {
				if (d->remaining > (UINT64_MAX >> 4)) {
					why = "chunk size overflows";
					goto refuse;
				}
				d->remaining = (d->remaining << 4) | (uint64_t)h;
				if (++d->line_len > CH_SIZE_LINE_MAX)
					goto too_long;
				break;
			}
			if (c == '\n') {
				why = "chunk size line not ended by CRLF";
				goto refuse;
			}
			if (d->line_len == 0) {
				why = "chunk size is not hex";
				goto refuse;
			}
			if (c == '\r')
				d->state = CH_SIZE_LF;
			else if (c == ';')
				d->state = CH_EXT;
			else if (is_ows((char)c))
				d->state = CH_SIZE_BWS;
			else {
				why = "chunk size is not hex";
				goto refuse;
			}
			break;
		}
		case CH_SIZE_BWS:
			if (c == ';')
				d->state = CH_EXT;
			else if (!is_ows((char)c)) {
				why = "chunk size followed by something other than ';'";
				goto refuse;
			}
			if (++d->line_len > CH_SIZE_LINE_MAX)
				goto too_long;
			break;
		case CH_EXT:
			if (c == '\r')
				d->state = CH_SIZE_LF;
			else if (is_ctl(c)) {
				why = "chunk extension has a control byte";
				goto refuse;
			} else if (++d->line_len > CH_SIZE_LINE_MAX)
				goto too_long;
			break;
		case CH_SIZE_LF:
			if (c != '\n') {
				why = "chunk size line not ended by CRLF";
				goto refuse;
			}
			d->line_len = 0;
			if (d->remaining == 0) {
				d->state = CH_TR_START; /* remaining now counts trailer bytes */
				break;
			}
			if (d->remaining > KVB_HTTP_BODY_MAX - d->total) {
				kvb_err_set(err, KVB_ERR_PROTOCOL,
					    "chunk of %" PRIu64 " bytes after %" PRIu64
					    " would make the body exceed %u bytes",
					    d->remaining, d->total, KVB_HTTP_BODY_MAX);
				goto failed;
			}
			d->state = CH_DATA;
			break;
		case CH_DATA_CR:
		case CH_DATA_LF:
			if (c != (d->state == CH_DATA_CR ? '\r' : '\n')) {
				why = "chunk data not followed by CRLF";
				goto refuse;
			}
			if (d->state == CH_DATA_CR) {
				d->state = CH_DATA_LF;
			} else {
				d->state = CH_SIZE;
				d->remaining = 0;
				d->line_len = 0;
			}
			break;
		case CH_TR_START:
		case CH_TR_NAME:
		case CH_TR_VALUE:
		case CH_TR_LF:
		case CH_END_LF:
			if (++d->remaining > CH_TRAILER_MAX) {
				kvb_err_set(err, KVB_ERR_PROTOCOL, "trailers larger than %u bytes",
					    CH_TRAILER_MAX);
				goto failed;
			}
			if (d->state == CH_TR_START) {
				if (c == '\r')
					d->state = CH_END_LF;
				else if (is_ows((char)c)) {
					why = "obsolete line folding in the trailers";
					goto refuse;
				} else if (is_tchar(c))
					d->state = CH_TR_NAME;
				else {
					why = "trailer field name is not a token";
					goto refuse;
				}
			} else if (d->state == CH_TR_NAME) {
				if (c == ':')
					d->state = CH_TR_VALUE;
				else if (!is_tchar(c)) {
					why = "trailer field name is not a token";
					goto refuse;
				}
			} else if (d->state == CH_TR_VALUE) {
				if (c == '\r')
					d->state = CH_TR_LF;
				else if (is_ctl(c)) {
					why = "trailer field value has a control byte";
					goto refuse;
				}
			} else if (c != '\n') {
				why = "bare CR in the trailers";
				goto refuse;
			} else if (d->state == CH_TR_LF) {
				d->state = CH_TR_START;
			} else {
				d->state = CH_DONE;
				rc = KVB_OK;
			}
			break;
		default:
			kvb_err_set(err, KVB_ERR_PROTOCOL, "chunked decoder in unknown state %d", d->state);
			goto failed;
		}
	}
	if (consumed)
		*consumed = i;
	return rc;
too_long:
	kvb_err_set(err, KVB_ERR_PROTOCOL, "chunk size line longer than %u bytes", CH_SIZE_LINE_MAX);
	goto failed;
refuse:
	kvb_err_set(err, KVB_ERR_PROTOCOL, "%s (byte 0x%02x after %" PRIu64 " body bytes)", why, c,
		    d->total);
failed:
	d->state = CH_FAILED;
	if (consumed)
		*consumed = i;
	return KVB_ERR_PROTOCOL;
}

/* ---- writers ------------------------------------------------------------- */

/* A CR or LF in a caller's string is written as a space: a value can then
 * never start a field or a body of its own (the parser refuses what
 * results rather than reading a forged field). */
static void put_clean(GString *out, const char *s)
{
	for (; s && *s; s++)
		g_string_append_c(out, *s == '\r' || *s == '\n' ? ' ' : *s);
}

static void put_field(GString *out, const char *name, const char *value)
{
	g_string_append(out, name);
	g_string_append(out, ": ");
	put_clean(out, value);
	g_string_append(out, "\r\n");
}

void kvb_http_write_request(GString *out, const char *method, const char *target,
			    const char *host, const char *const *extra_fields,
			    const char *content_type, const void *body, size_t body_len)
{
	put_clean(out, method);
	g_string_append_c(out, ' ');
	put_clean(out, target);
	g_string_append(out, " HTTP/1.1\r\n");
	put_field(out, "Host", host ? host : "");
	if (body && content_type)
		put_field(out, "Content-Type", content_type);
	g_string_append_printf(out, "Content-Length: %zu\r\n", body ? body_len : 0);
	for (const char *const *f = extra_fields; f && *f; f++) {
		put_clean(out, *f);
		g_string_append(out, "\r\n");
	}
	g_string_append(out, "\r\n");
	if (body && body_len)
		g_string_append_len(out, body, (gssize)body_len);
}

void kvb_http_write_response(GString *out, int status, const char *content_type,
			     const void *body, size_t body_len, bool keep_alive)
{
	g_string_append_printf(out, "HTTP/1.1 %d %s\r\n", status, kvb_http_reason(status));
	if (content_type)
		put_field(out, "Content-Type", content_type);
	/* RFC 9110 8.6: no Content-Length (and no body) in 1xx and 204 */
	bool bodyless = (status >= 100 && status < 200) || status == 204;
	if (!bodyless)
		g_string_append_printf(out, "Content-Length: %zu\r\n", body ? body_len : 0);
	g_string_append_printf(out, "Connection: %s\r\n\r\n", keep_alive ? "keep-alive" : "close");
	if (!bodyless && body && body_len)
		g_string_append_len(out, body, (gssize)body_len);
}

const char *kvb_http_reason(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 101: return "Switching Protocols";
	case 200: return "OK";
	case 201: return "Created";
	case 202: return "Accepted";
	case 203: return "Non-Authoritative Information";
	case 204: return "No Content";
	case 205: return "Reset Content";
	case 206: return "Partial Content";
	case 300: return "Multiple Choices";
	case 301: return "Moved Permanently";
	case 302: return "Found";
	case 303: return "See Other";
	case 304: return "Not Modified";
	case 307: return "Temporary Redirect";
	case 308: return "Permanent Redirect";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 406: return "Not Acceptable";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 410: return "Gone";
	case 411: return "Length Required";
	case 412: return "Precondition Failed";
	case 413: return "Content Too Large";
	case 414: return "URI Too Long";
	case 415: return "Unsupported Media Type";
	case 416: return "Range Not Satisfiable";
	case 417: return "Expectation Failed";
	case 421: return "Misdirected Request";
	case 422: return "Unprocessable Content";
	case 426: return "Upgrade Required";
	case 428: return "Precondition Required";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	}
	return "Unknown";
}
