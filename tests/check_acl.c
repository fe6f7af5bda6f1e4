/*
 * Allow-lists of peer networks (src/backends/hw/kvb_acl.c): parsing and its
 * refusals, matching IPv4, IPv6 and IPv4-mapped peers at prefix edges, the
 * default (loopback and the host's network), names that resolve.
 */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include <check.h>
#include <kvbridge/kvbridge.h>

#include "kvb_acl.h"
#include "suites.h"

static bool v4(const kvb_acl_t *acl, const char *ip)
{
	struct sockaddr_in s = {.sin_family = AF_INET};
	ck_assert_int_eq(inet_pton(AF_INET, ip, &s.sin_addr), 1);
	return kvb_acl_allows(acl, (struct sockaddr *)&s);
}

static bool v6(const kvb_acl_t *acl, const char *ip)
{
	struct sockaddr_in6 s = {.sin6_family = AF_INET6};
	ck_assert_int_eq(inet_pton(AF_INET6, ip, &s.sin6_addr), 1);
	return kvb_acl_allows(acl, (struct sockaddr *)&s);
}

START_TEST(test_acl_networks)
{
	kvb_acl_t acl;
	kvb_err_t err;
	ck_assert_int_eq(kvb_acl_parse(&acl, "10.1.0.0/16, 192.168.7.9,fd00::/8,10.200.0.0/13", &err), KVB_OK);
	ck_assert_uint_eq(acl.n, 4);
	ck_assert(v4(&acl, "10.1.0.0"));
	ck_assert(v4(&acl, "10.1.255.255"));
	ck_assert(!v4(&acl, "10.2.0.0"));
	ck_assert(!v4(&acl, "10.0.255.255"));
	ck_assert(v4(&acl, "192.168.7.9"));
	ck_assert(!v4(&acl, "192.168.7.10"));
	ck_assert(v4(&acl, "10.207.255.255")); /* /13: 10.200.0.0 - 10.207.255.255 */
	ck_assert(!v4(&acl, "10.208.0.0"));
	ck_assert(v6(&acl, "fd12:3456::1"));
	ck_assert(!v6(&acl, "fe80::1"));
	ck_assert(v6(&acl, "::ffff:10.1.2.3"));  /* IPv4-mapped: the IPv4 networks */
	ck_assert(!v6(&acl, "::ffff:11.1.2.3"));
	ck_assert(!v4(&acl, "127.0.0.1"));       /* nothing implied */
	ck_assert(!kvb_acl_is_open(&acl));
	ck_assert(kvb_acl_allows_ip(&acl, "10.1.2.3"));
	ck_assert(!kvb_acl_allows_ip(&acl, ""));
	ck_assert(!kvb_acl_allows_ip(&acl, "localhost")); /* no name lookups there */
	char d[256];
	kvb_acl_describe(&acl, d, sizeof(d));
	ck_assert_str_eq(d, "10.1.0.0/16,192.168.7.9/32,fd00::/8,10.200.0.0/13");

	ck_assert_int_eq(kvb_acl_parse(&acl, "*", &err), KVB_OK);
	ck_assert(kvb_acl_is_open(&acl));
	ck_assert(v4(&acl, "8.8.8.8") && v6(&acl, "2001:db8::1"));
}
END_TEST

START_TEST(test_acl_refusals)
{
	const char *bad[] = {"", " , ", "10.0.0.0/33", "fd00::/129", "10.0.0.0/", "10.0.0/8", "host.example",
			     "10.0.0.0/8x", "10.0.0.0/-1", "1.2.3.4/8/8"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		kvb_acl_t acl;
		kvb_err_t err;
		ck_assert_msg(kvb_acl_parse(&acl, bad[i], &err) == KVB_ERR_CONFIG, "\"%s\" accepted", bad[i]);
		ck_assert_msg(strstr(err.msg, "allowed peers"), "%s", err.msg);
	}
	GString *many = g_string_new(NULL);
	for (int i = 0; i < 65; i++)
		g_string_append_printf(many, "%s10.0.%d.0/24", i ? "," : "", i);
	kvb_acl_t acl;
	kvb_err_t err;
	ck_assert_int_eq(kvb_acl_parse(&acl, many->str, &err), KVB_ERR_CONFIG);
	ck_assert_msg(strstr(err.msg, "more than 64"), "%s", err.msg);
	g_string_free(many, TRUE);
}
END_TEST

START_TEST(test_acl_default_and_names)
{
	kvb_acl_t acl;
	kvb_acl_default(&acl, "127.0.0.1");
	ck_assert_uint_eq(acl.n, 2); /* loopback only */
	ck_assert(v4(&acl, "127.0.0.1") && v4(&acl, "127.9.9.9") && v6(&acl, "::1"));
	ck_assert(!v4(&acl, "10.0.0.1") && !v6(&acl, "fd00::1"));
	kvb_acl_default(&acl, "192.0.2.77"); /* on no interface: loopback only */
	ck_assert_uint_eq(acl.n, 2);
	char why[512];
	ck_assert(kvb_acl_allows_host(&acl, "127.0.0.1", why, sizeof(why)));
	ck_assert(kvb_acl_allows_host(&acl, "[::1]", why, sizeof(why)));
	ck_assert(!kvb_acl_allows_host(&acl, "192.0.2.1", why, sizeof(why)));
	ck_assert_msg(strstr(why, "192.0.2.1") && strstr(why, "not among the allowed peers") &&
		      strstr(why, "127.0.0.0/8"), "%s", why);
	ck_assert(!kvb_acl_allows_host(&acl, "no-such-host.invalid", why, sizeof(why)));
	ck_assert_msg(strstr(why, "does not resolve"), "%s", why);
}
END_TEST

Suite *kvb_suite_acl(void)
{
	Suite *s = suite_create("acl");
	TCase *tc = tcase_create("acl");
	tcase_add_test(tc, test_acl_networks);
	tcase_add_test(tc, test_acl_refusals);
	tcase_add_test(tc, test_acl_default_and_names);
	suite_add_tcase(s, tc);
	return s;
}
