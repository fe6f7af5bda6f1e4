/*
 * Status codes: names and texts of every code, unknown codes, kvb_err_set
 * and kvb_err_clear, failure classes.
 */
#include "config.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>

#include "suites.h"

/* Every code the header declares, KVB_STATUS_MIN .. KVB_INPROGRESS. */
#define N_CODES (KVB_INPROGRESS - KVB_STATUS_MIN + 1)

START_TEST(test_every_code_named)
{
	const char *names[N_CODES], *texts[N_CODES];

	for (int code = KVB_STATUS_MIN, i = 0; code <= KVB_INPROGRESS; code++, i++) {
		names[i] = kvb_status_name(code);
		texts[i] = kvb_strerror(code);
		ck_assert_ptr_nonnull(names[i]);
		ck_assert_ptr_nonnull(texts[i]);
		ck_assert_msg(texts[i][0] != '\0', "code %d has an empty text", code);
		ck_assert_msg(strcmp(names[i], "KVB_ERR_UNKNOWN") != 0, "code %d has no name", code);
		ck_assert_msg(strcmp(texts[i], "unknown status code") != 0, "code %d has no text", code);
		ck_assert_msg(g_str_has_prefix(names[i], code < 0 ? "KVB_ERR_" : "KVB_"),
			      "code %d is named %s", code, names[i]);
		for (int j = 0; j < i; j++) {
			ck_assert_msg(strcmp(names[i], names[j]) != 0, "name %s used twice", names[i]);
			ck_assert_msg(strcmp(texts[i], texts[j]) != 0, "text '%s' used twice", texts[i]);
		}
	}
	/* a few spot checks that names match their codes */
	ck_assert_str_eq(kvb_status_name(KVB_OK), "KVB_OK");
	ck_assert_str_eq(kvb_status_name(KVB_INPROGRESS), "KVB_INPROGRESS");
	ck_assert_str_eq(kvb_status_name(KVB_ERR_EXPIRED), "KVB_ERR_EXPIRED");
	ck_assert_str_eq(kvb_status_name(KVB_ERR_NO_RESOURCE), "KVB_ERR_NO_RESOURCE");
	ck_assert_str_eq(kvb_status_name(KVB_ERR_LAYOUT), "KVB_ERR_LAYOUT");
	ck_assert_str_eq(kvb_strerror(KVB_OK), "success");
	ck_assert_str_eq(kvb_strerror(KVB_ERR_EXPIRED), "lease expired");
}
END_TEST

START_TEST(test_unknown_code)
{
	static const int unknown[] = {KVB_INPROGRESS + 1, KVB_STATUS_MIN - 1, 100, -100, INT_MAX, INT_MIN};

	for (size_t i = 0; i < G_N_ELEMENTS(unknown); i++) {
		ck_assert_str_eq(kvb_strerror(unknown[i]), "unknown status code");
		ck_assert_str_eq(kvb_status_name(unknown[i]), "KVB_ERR_UNKNOWN");
		ck_assert_int_eq(kvb_fail_class(unknown[i]), KVB_FAIL_LOCAL);
	}
}
END_TEST

START_TEST(test_err_set)
{
	kvb_err_t err;

	memset(&err, 0x55, sizeof(err));
	ck_assert_int_eq(kvb_err_set(&err, KVB_ERR_RANGE, "block %u outside region %d (%s)", 4097u, 3,
				     "4096 blocks"),
			 KVB_ERR_RANGE);
	ck_assert_int_eq(err.code, KVB_ERR_RANGE);
	ck_assert_str_eq(err.msg, "block 4097 outside region 3 (4096 blocks)");

	/* overwrite: the previous message does not leak through */
	ck_assert_int_eq(kvb_err_set(&err, KVB_ERR_PEER, "x"), KVB_ERR_PEER);
	ck_assert_str_eq(err.msg, "x");
	ck_assert_int_eq(err.code, KVB_ERR_PEER);

	/* a message longer than the buffer is cut and terminated */
	char *big = g_strnfill(3 * KVB_ERR_MSG_MAX, 'm');
	ck_assert_int_eq(kvb_err_set(&err, KVB_ERR_CONFIG, "%s!", big), KVB_ERR_CONFIG);
	ck_assert_uint_eq(strlen(err.msg), KVB_ERR_MSG_MAX - 1);
	ck_assert_int_eq(strspn(err.msg, "m"), KVB_ERR_MSG_MAX - 1);
	g_free(big);

	/* any int is stored as is, also KVB_OK and unknown codes */
	ck_assert_int_eq(kvb_err_set(&err, KVB_OK, "fine"), KVB_OK);
	ck_assert_int_eq(err.code, KVB_OK);
	ck_assert_int_eq(kvb_err_set(&err, -1000, "odd"), -1000);
	ck_assert_int_eq(err.code, -1000);

	/* NULL err: still returns the code */
	ck_assert_int_eq(kvb_err_set(NULL, KVB_ERR_TIMEOUT, "no one listens %d", 1), KVB_ERR_TIMEOUT);

	kvb_err_clear(&err);
	ck_assert_int_eq(err.code, KVB_OK);
	ck_assert_str_eq(err.msg, "");
	kvb_err_clear(NULL);
}
END_TEST

START_TEST(test_fail_class)
{
	static const struct {
		int code;
		kvb_fail_class_t cls;
	} rows[] = {
		{KVB_OK, KVB_FAIL_NONE},
		{KVB_INPROGRESS, KVB_FAIL_NONE},
		{KVB_ERR_TRANSPORT, KVB_FAIL_TRANSPORT},
		{KVB_ERR_EXPIRED, KVB_FAIL_LEASE},
		{KVB_ERR_PEER, KVB_FAIL_PEER},
		{KVB_ERR_PROTOCOL, KVB_FAIL_PEER},
		{KVB_ERR_LAYOUT, KVB_FAIL_PEER},
		/* kvb_error.c counts RANGE as the peer's: in a transfer it means the
		 * peer's address or key was bad (error.h lists it under "any other") */
		{KVB_ERR_RANGE, KVB_FAIL_PEER},
		{KVB_ERR_TIMEOUT, KVB_FAIL_TIMEOUT},
		{KVB_ERR_ABORTED, KVB_FAIL_ABORTED},
		{KVB_ERR_INVALID, KVB_FAIL_LOCAL},
		{KVB_ERR_NOMEM, KVB_FAIL_LOCAL},
		{KVB_ERR_NOT_FOUND, KVB_FAIL_LOCAL},
		{KVB_ERR_STATE, KVB_FAIL_LOCAL},
		{KVB_ERR_NO_RESOURCE, KVB_FAIL_LOCAL},
		{KVB_ERR_UNSUPPORTED, KVB_FAIL_LOCAL},
		{KVB_ERR_ABI, KVB_FAIL_LOCAL},
		{KVB_ERR_CONFIG, KVB_FAIL_LOCAL},
		{KVB_ERR_EXISTS, KVB_FAIL_LOCAL},
	};
	bool seen[N_CODES] = {false};

	for (size_t i = 0; i < G_N_ELEMENTS(rows); i++) {
		ck_assert_msg(kvb_fail_class(rows[i].code) == rows[i].cls, "%s: class %s, want %s",
			      kvb_status_name(rows[i].code), kvb_fail_class_name(kvb_fail_class(rows[i].code)),
			      kvb_fail_class_name(rows[i].cls));
		seen[rows[i].code - KVB_STATUS_MIN] = true;
	}
	/* the table covers every code (a new code needs a row) */
	for (int i = 0; i < N_CODES; i++)
		ck_assert_msg(seen[i], "no class row for %s", kvb_status_name(i + KVB_STATUS_MIN));

	/* class names: distinct, non-empty; unknown classes have a name too */
	const char *names[KVB_FAIL_LOCAL + 1];
	for (int c = KVB_FAIL_NONE; c <= KVB_FAIL_LOCAL; c++) {
		names[c] = kvb_fail_class_name((kvb_fail_class_t)c);
		ck_assert_ptr_nonnull(names[c]);
		ck_assert(names[c][0] != '\0');
		ck_assert_str_ne(names[c], "unknown");
		for (int j = 0; j < c; j++)
			ck_assert_str_ne(names[c], names[j]);
	}
	ck_assert_str_eq(kvb_fail_class_name(KVB_FAIL_LEASE), "lease");
	ck_assert_str_eq(kvb_fail_class_name((kvb_fail_class_t)99), "unknown");
}
END_TEST

START_TEST(test_version)
{
	ck_assert_str_eq(kvb_version(), PACKAGE_VERSION);
	unsigned major, minor, patch;
	ck_assert_int_eq(sscanf(kvb_version(), "%u.%u.%u", &major, &minor, &patch), 3);
}
END_TEST

Suite *kvb_suite_error(void)
{
	Suite *s = suite_create("error");
	TCase *tc = tcase_create("status");

	tcase_add_test(tc, test_every_code_named);
	tcase_add_test(tc, test_unknown_code);
	tcase_add_test(tc, test_err_set);
	tcase_add_test(tc, test_fail_class);
	tcase_add_test(tc, test_version);
	suite_add_tcase(s, tc);
	return s;
}
