/*
 * Who may connect, and whom we may dial: an allow-list of networks (CIDR),
 * IPv4 and IPv6.  Pure code: no sockets but getifaddrs and getaddrinfo.
 *
 *   "10.0.0.0/8,192.168.1.7,fd00::/8"   networks; a bare address is /32 or /128
 *   "*"                                 anyone (0.0.0.0/0 and ::/0)
 *
 * kvb_acl_default: loopback and the network of the interface that holds
 * host (its address and netmask); loopback alone when host is loopback or
 * on no local interface.  IPv4-mapped IPv6 peers (::ffff:a.b.c.d) match
 * the IPv4 networks.
 */
#ifndef KVB_ACL_H
#define KVB_ACL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <kvbridge/error.h>

#define KVB_ACL_MAX 64u

typedef struct kvb_acl_net {
	int family;                 /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	uint32_t prefix;            /* bits */
} kvb_acl_net_t;

typedef struct kvb_acl {
	uint32_t n;
	kvb_acl_net_t nets[KVB_ACL_MAX];
} kvb_acl_t;

/* Parse a comma-separated list; KVB_ERR_CONFIG naming the bad item. */
int kvb_acl_parse(kvb_acl_t *acl, const char *spec, kvb_err_t *err);
/* Loopback plus host's interface network (see above). */
void kvb_acl_default(kvb_acl_t *acl, const char *host);
bool kvb_acl_allows(const kvb_acl_t *acl, const struct sockaddr *sa);
/* A numeric address as text ("10.1.2.3", "fd00::1"); false for anything
 * else (no name lookups: safe on an event loop). */
bool kvb_acl_allows_ip(const kvb_acl_t *acl, const char *ip);
/* An address as text ("10.1.2.3", "fd00::1") or a name: allowed when every
 * address it resolves to is; false (why says which) otherwise or when it
 * does not resolve. */
bool kvb_acl_allows_host(const kvb_acl_t *acl, const char *host, char *why, size_t why_len);
/* "10.0.0.0/8,127.0.0.0/8" */
void kvb_acl_describe(const kvb_acl_t *acl, char *out, size_t len);
/* true when it lets any address in (0.0.0.0/0 or ::/0) */
bool kvb_acl_is_open(const kvb_acl_t *acl);

#endif /* KVB_ACL_H */
