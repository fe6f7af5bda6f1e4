/* Status codes, messages and failure classes. */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <kvbridge/kvbridge.h>

struct status_row {
	int code;
	const char *name;
	const char *text;
};

static const struct status_row status_rows[] = {
	{KVB_OK, "KVB_OK", "success"},
	{KVB_INPROGRESS, "KVB_INPROGRESS", "in progress"},
	{KVB_ERR_INVALID, "KVB_ERR_INVALID", "invalid argument"},
	{KVB_ERR_NOMEM, "KVB_ERR_NOMEM", "out of memory"},
	{KVB_ERR_NOT_FOUND, "KVB_ERR_NOT_FOUND", "not found"},
	{KVB_ERR_STATE, "KVB_ERR_STATE", "not allowed in the current state"},
	{KVB_ERR_RANGE, "KVB_ERR_RANGE", "outside a registered region"},
	{KVB_ERR_NO_RESOURCE, "KVB_ERR_NO_RESOURCE", "queue full, retry later"},
	{KVB_ERR_EXPIRED, "KVB_ERR_EXPIRED", "lease expired"},
	{KVB_ERR_TIMEOUT, "KVB_ERR_TIMEOUT", "timed out"},
	{KVB_ERR_TRANSPORT, "KVB_ERR_TRANSPORT", "transport error"},
	{KVB_ERR_PEER, "KVB_ERR_PEER", "peer error"},
	{KVB_ERR_PROTOCOL, "KVB_ERR_PROTOCOL", "malformed or unexpected message"},
	{KVB_ERR_ABORTED, "KVB_ERR_ABORTED", "aborted"},
	{KVB_ERR_UNSUPPORTED, "KVB_ERR_UNSUPPORTED", "not supported by this backend"},
	{KVB_ERR_ABI, "KVB_ERR_ABI", "ABI version mismatch"},
	{KVB_ERR_CONFIG, "KVB_ERR_CONFIG", "invalid configuration"},
	{KVB_ERR_EXISTS, "KVB_ERR_EXISTS", "already exists"},
	{KVB_ERR_LAYOUT, "KVB_ERR_LAYOUT", "KV layouts cannot be paired"},
};

static const struct status_row *status_row_find(int code)
{
	for (size_t i = 0; i < sizeof(status_rows) / sizeof(status_rows[0]); i++)
		if (status_rows[i].code == code)
			return &status_rows[i];
	return NULL;
}

const char *kvb_strerror(int code)
{
	const struct status_row *row = status_row_find(code);
	return row ? row->text : "unknown status code";
}

const char *kvb_status_name(int code)
{
	const struct status_row *row = status_row_find(code);
	return row ? row->name : "KVB_ERR_UNKNOWN";
}

int kvb_err_set(kvb_err_t *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		err->code = code;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return code;
}

void kvb_err_clear(kvb_err_t *err)
{
	if (err) {
		err->code = KVB_OK;
		err->msg[0] = '\0';
	}
}

kvb_fail_class_t kvb_fail_class(int code)
{
	switch (code) {
	case KVB_OK:
	case KVB_INPROGRESS:
		return KVB_FAIL_NONE;
	case KVB_ERR_TRANSPORT:
		return KVB_FAIL_TRANSPORT;
	case KVB_ERR_EXPIRED:
		return KVB_FAIL_LEASE;
	case KVB_ERR_PEER:
	case KVB_ERR_RANGE: /* in a transfer: the peer's address or key was bad */
	case KVB_ERR_PROTOCOL:
	case KVB_ERR_LAYOUT:
		return KVB_FAIL_PEER;
	case KVB_ERR_TIMEOUT:
		return KVB_FAIL_TIMEOUT;
	case KVB_ERR_ABORTED:
		return KVB_FAIL_ABORTED;
	default:
		return KVB_FAIL_LOCAL;
	}
}

const char *kvb_fail_class_name(kvb_fail_class_t cls)
{
	switch (cls) {
	case KVB_FAIL_NONE: return "none";
	case KVB_FAIL_TRANSPORT: return "transport";
	case KVB_FAIL_LEASE: return "lease";
	case KVB_FAIL_PEER: return "peer";
	case KVB_FAIL_TIMEOUT: return "timeout";
	case KVB_FAIL_ABORTED: return "aborted";
	case KVB_FAIL_LOCAL: return "local";
	}
	return "unknown";
}

const char *kvb_version(void)
{
	return PACKAGE_VERSION;
}
