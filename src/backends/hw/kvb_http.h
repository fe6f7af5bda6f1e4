/*
 * A small HTTP/1.1 message parser and writer for kvbridge-serve's front end
 * and kvbridge-proxy: request and response heads, Content-Length and chunked
 * bodies.  Plain functions over buffers, so the parser is unit-tested and
 * fuzzed without sockets.  It is deliberately strict (RFC 9112): what it
 * cannot trust is refused with KVB_ERR_PROTOCOL and a message naming the
 * offending part, and the caller answers 400 and closes.
 *
 * Refused: a head larger than KVB_HTTP_HEAD_MAX or with more than
 * KVB_HTTP_MAX_HEADERS fields; bare LF line ends; a request line or status
 * line that does not split into exactly three parts; a method that is not a
 * token; a target with controls or spaces; versions other than HTTP/1.0 and
 * HTTP/1.1; obsolete line folding; a field name that is not a token or a
 * value with controls; Content-Length that is not all digits, above
 * KVB_HTTP_BODY_MAX, or repeated with different values; Transfer-Encoding
 * other than exactly "chunked"; Transfer-Encoding together with
 * Content-Length (request smuggling); chunk sizes that are not hex or
 * overflow, and chunk data not followed by CRLF.
 */
#ifndef KVB_HTTP_H
#define KVB_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>
#include <kvbridge/error.h>

#define KVB_HTTP_HEAD_MAX (64u * 1024u)
#define KVB_HTTP_MAX_HEADERS 64u
#define KVB_HTTP_BODY_MAX (64u * 1024u * 1024u)
#define KVB_HTTP_METHOD_MAX 16u
#define KVB_HTTP_TARGET_MAX 2048u
#define KVB_HTTP_REASON_MAX 128u

typedef struct kvb_http_field {
	char *name;   /* as received (compare case-insensitively) */
	char *value;  /* leading and trailing whitespace removed */
} kvb_http_field_t;

typedef struct kvb_http_msg {
	bool is_request;
	char method[KVB_HTTP_METHOD_MAX];  /* request */
	char target[KVB_HTTP_TARGET_MAX];  /* request: origin form, e.g. "/v1/completions" */
	int status;                        /* response: 100..599 */
	char reason[KVB_HTTP_REASON_MAX];  /* response */
	int version_minor;                 /* 0 or 1 */
	uint32_t n_fields;
	kvb_http_field_t fields[KVB_HTTP_MAX_HEADERS];
	bool has_content_length;
	uint64_t content_length;
	bool chunked;                      /* Transfer-Encoding: chunked */
	bool keep_alive;                   /* HTTP/1.1 without "Connection: close", or 1.0 with keep-alive */
	size_t head_len;                   /* bytes of the head, final CRLFCRLF included */
} kvb_http_msg_t;

/* Parse the head at the start of buf[0, len).  KVB_INPROGRESS: the head is
 * not complete yet (and still under KVB_HTTP_HEAD_MAX); KVB_OK: msg is
 * filled and the body starts at buf + msg->head_len; KVB_ERR_PROTOCOL:
 * refused (msg holds nothing to free).  Call kvb_http_msg_clear after OK. */
int kvb_http_parse_request(const char *buf, size_t len, kvb_http_msg_t *msg, kvb_err_t *err);
int kvb_http_parse_response(const char *buf, size_t len, kvb_http_msg_t *msg, kvb_err_t *err);

void kvb_http_msg_clear(kvb_http_msg_t *msg);

/* First field of that name (case-insensitive), or NULL. */
const char *kvb_http_field_get(const kvb_http_msg_t *msg, const char *name);

/* Incremental chunked-body decoder. */
typedef struct kvb_http_chunked {
	int state;          /* private */
	uint64_t remaining; /* private: bytes left in the current chunk */
	uint64_t total;     /* body bytes decoded so far */
	size_t line_len;    /* private: bytes of the current size or trailer line */
} kvb_http_chunked_t;

void kvb_http_chunked_init(kvb_http_chunked_t *d);

/* Feed in[0, len): decoded data is appended to out (may be NULL to only
 * validate), *consumed says how much of in was used.  KVB_OK when the last
 * chunk and trailers ended (bytes after it are not consumed),
 * KVB_INPROGRESS when more input is needed, KVB_ERR_PROTOCOL when refused
 * (also when the body would exceed KVB_HTTP_BODY_MAX). */
int kvb_http_chunked_feed(kvb_http_chunked_t *d, const char *in, size_t len, size_t *consumed,
			  GByteArray *out, kvb_err_t *err);

/* ---- writers ------------------------------------------------------------ */

/* "METHOD target HTTP/1.1", Host, Content-Type (when body != NULL),
 * Content-Length, any extra fields ("Name: value" strings, NULL-terminated
 * array, may be NULL), blank line, body. */
void kvb_http_write_request(GString *out, const char *method, const char *target,
			    const char *host, const char *const *extra_fields,
			    const char *content_type, const void *body, size_t body_len);

/* "HTTP/1.1 status reason", Content-Type, Content-Length, Connection:
 * keep-alive or close, blank line, body. */
void kvb_http_write_response(GString *out, int status, const char *content_type,
			     const void *body, size_t body_len, bool keep_alive);

/* Standard reason phrase ("OK", "Bad Request", ...; "Unknown" otherwise). */
const char *kvb_http_reason(int status);

#endif /* KVB_HTTP_H */
