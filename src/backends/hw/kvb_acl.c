/*
 * Allow-lists of peer networks (kvb_acl.h).
 */
#include "config.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "kvb_acl.h"

static int acl_add(kvb_acl_t *acl, int family, const void *addr, uint32_t prefix)
{
	if (acl->n >= KVB_ACL_MAX)
		return -1;
	kvb_acl_net_t *n = &acl->nets[acl->n++];
	memset(n, 0, sizeof(*n));
	n->family = family;
	n->prefix = prefix;
	memcpy(n->addr, addr, family == AF_INET ? 4 : 16);
	return 0;
}

int kvb_acl_parse(kvb_acl_t *acl, const char *spec, kvb_err_t *err)
{
	memset(acl, 0, sizeof(*acl));
	if (!spec || !*spec)
		return kvb_err_set(err, KVB_ERR_CONFIG, "allowed peers: an empty list (\"*\" allows anyone)");
	gchar **items = g_strsplit(spec, ",", -1);
	int rc = KVB_OK;
	for (gchar **it = items; *it && rc == KVB_OK; it++) {
		char *item = g_strstrip(*it);
		if (!*item)
			continue;
		if (!strcmp(item, "*")) {
			uint8_t zero[16] = {0};
			acl_add(acl, AF_INET, zero, 0);
			acl_add(acl, AF_INET6, zero, 0);
			continue;
		}
		char addr_s[INET6_ADDRSTRLEN + 1];
		const char *slash = strchr(item, '/');
		size_t alen = slash ? (size_t)(slash - item) : strlen(item);
		uint8_t addr[16];
		int family = 0;
		if (alen < sizeof(addr_s)) {
			memcpy(addr_s, item, alen);
			addr_s[alen] = 0;
			if (inet_pton(AF_INET, addr_s, addr) == 1)
				family = AF_INET;
			else if (inet_pton(AF_INET6, addr_s, addr) == 1)
				family = AF_INET6;
		}
		uint32_t max = family == AF_INET ? 32 : 128, prefix = max;
		if (family && slash) {
			char *end = NULL;
			unsigned long p = strtoul(slash + 1, &end, 10);
			if (!slash[1] || *end || p > max)
				family = 0;
			else
				prefix = (uint32_t)p;
		}
		if (!family)
			rc = kvb_err_set(err, KVB_ERR_CONFIG, "allowed peers: \"%s\" is not an address or a "
					 "network (a.b.c.d[/n], an IPv6 address[/n], or *)", item);
		else if (acl_add(acl, family, addr, prefix) != 0)
			rc = kvb_err_set(err, KVB_ERR_CONFIG, "allowed peers: more than %u networks",
					 KVB_ACL_MAX);
	}
	g_strfreev(items);
	if (rc == KVB_OK && !acl->n)
		rc = kvb_err_set(err, KVB_ERR_CONFIG, "allowed peers: an empty list (\"*\" allows anyone)");
	return rc;
}

static bool prefix_match(const uint8_t *a, const uint8_t *b, uint32_t bits)
{
	uint32_t bytes = bits / 8, rest = bits % 8;
	if (memcmp(a, b, bytes))
		return false;
	if (!rest)
		return true;
	uint8_t mask = (uint8_t)(0xff << (8 - rest));
	return (a[bytes] & mask) == (b[bytes] & mask);
}

static uint32_t mask_bits(const uint8_t *m, size_t len)
{
	uint32_t bits = 0;
	for (size_t i = 0; i < len; i++)
		for (int b = 7; b >= 0; b--) {
			if (!(m[i] >> b & 1))
				return bits;
			bits++;
		}
	return bits;
}

void kvb_acl_default(kvb_acl_t *acl, const char *host)
{
	memset(acl, 0, sizeof(*acl));
	const uint8_t lo4[4] = {127, 0, 0, 0};
	uint8_t lo6[16] = {0};
	lo6[15] = 1;
	acl_add(acl, AF_INET, lo4, 8);
	acl_add(acl, AF_INET6, lo6, 128);
	uint8_t h[16];
	int family = 0;
	if (host && inet_pton(AF_INET, host, h) == 1)
		family = AF_INET;
	else if (host && inet_pton(AF_INET6, host, h) == 1)
		family = AF_INET6;
	struct ifaddrs *ifs = NULL;
	if (!family || getifaddrs(&ifs) != 0)
		return;
	for (struct ifaddrs *i = ifs; i; i = i->ifa_next) {
		if (!i->ifa_addr || !i->ifa_netmask || i->ifa_addr->sa_family != family)
			continue;
		const uint8_t *a = family == AF_INET
			? (const uint8_t *)&((struct sockaddr_in *)i->ifa_addr)->sin_addr
			: (const uint8_t *)&((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr;
		const uint8_t *m = family == AF_INET
			? (const uint8_t *)&((struct sockaddr_in *)i->ifa_netmask)->sin_addr
			: (const uint8_t *)&((struct sockaddr_in6 *)i->ifa_netmask)->sin6_addr;
		size_t len = family == AF_INET ? 4 : 16;
		if (memcmp(a, h, len))
			continue;
		uint32_t bits = mask_bits(m, len);
		uint8_t net[16] = {0};
		for (size_t k = 0; k < len; k++)
			net[k] = a[k] & m[k];
		if (!(family == AF_INET && h[0] == 127))
			acl_add(acl, family, net, bits);
		break;
	}
	freeifaddrs(ifs);
}

bool kvb_acl_allows(const kvb_acl_t *acl, const struct sockaddr *sa)
{
	int family = sa->sa_family;
	const uint8_t *a;
	if (family == AF_INET) {
		a = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
	} else if (family == AF_INET6) {
		a = (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
		static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
		if (!memcmp(a, mapped, 12)) {
			family = AF_INET;
			a += 12;
		}
	} else {
		return false; /* AF_UNIX and the rest: not ours to judge here */
	}
	for (uint32_t i = 0; i < acl->n; i++)
		if (acl->nets[i].family == family && prefix_match(a, acl->nets[i].addr, acl->nets[i].prefix))
			return true;
	return false;
}

bool kvb_acl_allows_ip(const kvb_acl_t *acl, const char *ip)
{
	struct sockaddr_in6 s6 = {.sin6_family = AF_INET6};
	struct sockaddr_in s4 = {.sin_family = AF_INET};
	if (ip && inet_pton(AF_INET, ip, &s4.sin_addr) == 1)
		return kvb_acl_allows(acl, (struct sockaddr *)&s4);
	if (ip && inet_pton(AF_INET6, ip, &s6.sin6_addr) == 1)
		return kvb_acl_allows(acl, (struct sockaddr *)&s6);
	return false;
}

bool kvb_acl_allows_host(const kvb_acl_t *acl, const char *host, char *why, size_t why_len)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
	struct addrinfo *res = NULL;
	char h[256];
	size_t n = strlen(host);
	/* "[fd00::1]" as URLs write it */
	if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n - 2 < sizeof(h)) {
		memcpy(h, host + 1, n - 2);
		h[n - 2] = 0;
	} else {
		g_strlcpy(h, host, sizeof(h));
	}
	int rc = getaddrinfo(h, NULL, &hints, &res);
	if (rc != 0) {
		g_snprintf(why, why_len, "%s does not resolve: %s", h, gai_strerror(rc));
		return false;
	}
	bool ok = res != NULL;
	for (struct addrinfo *ai = res; ai && ok; ai = ai->ai_next) {
		if (!kvb_acl_allows(acl, ai->ai_addr)) {
			char ip[INET6_ADDRSTRLEN] = "?";
			const void *a = ai->ai_family == AF_INET6
				? (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr
				: (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr;
			inet_ntop(ai->ai_family, a, ip, sizeof(ip));
			char nets[512];
			kvb_acl_describe(acl, nets, sizeof(nets));
			g_snprintf(why, why_len, "%s (%s) is not among the allowed peers (%s)", h, ip, nets);
			ok = false;
		}
	}
	freeaddrinfo(res);
	return ok;
}

void kvb_acl_describe(const kvb_acl_t *acl, char *out, size_t len)
{
	GString *s = g_string_new(NULL);
	for (uint32_t i = 0; i < acl->n; i++) {
		char ip[INET6_ADDRSTRLEN] = "?";
		inet_ntop(acl->nets[i].family, acl->nets[i].addr, ip, sizeof(ip));
		g_string_append_printf(s, "%s%s/%u", i ? "," : "", ip, acl->nets[i].prefix);
	}
	g_strlcpy(out, s->str, len);
	g_string_free(s, TRUE);
}

bool kvb_acl_is_open(const kvb_acl_t *acl)
{
	for (uint32_t i = 0; i < acl->n; i++)
		if (acl->nets[i].prefix == 0)
			return true;
	return false;
}
