/*
 * Sockets on the event service (kvb_hw_net.h).
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <glib.h>
#include <kvbridge/kvbridge.h>

#include "events/kvb_hw_net.h"
#include "kvb_tls.h"

void hw_sock_tune(int fd)
{
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	int fl = fcntl(fd, F_GETFL, 0);
	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	fcntl(fd, F_SETFD, FD_CLOEXEC);
}

int hw_tcp_connect(const char *host, uint16_t port, const char *src, const kvb_acl_t *acl,
		   kvb_err_t *err)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC};
	struct addrinfo *res = NULL;
	char portstr[8];
	g_snprintf(portstr, sizeof(portstr), "%u", port);
	int rc = getaddrinfo(host, portstr, &hints, &res);
	if (rc != 0) {
		kvb_err_set(err, KVB_ERR_PEER, "cannot resolve %s: %s", host, gai_strerror(rc));
		return -1;
	}
	int fd = -1, last = 0;
	bool refused = false;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		if (acl && !kvb_acl_allows(acl, ai->ai_addr)) {
			refused = true; /* never dialled: a peer named it, configuration did not */
			continue;
		}
		fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
		if (fd < 0) {
			last = errno;
			continue;
		}
		hw_sock_tune(fd);
		if (src && *src) {
			struct addrinfo *sres = NULL;
			struct addrinfo sh = {.ai_socktype = SOCK_STREAM, .ai_family = ai->ai_family,
					      .ai_flags = AI_NUMERICHOST};
			if (getaddrinfo(src, NULL, &sh, &sres) != 0 ||
			    bind(fd, sres->ai_addr, sres->ai_addrlen) != 0) {
				last = errno ? errno : EADDRNOTAVAIL;
				if (sres)
					freeaddrinfo(sres);
				close(fd);
				fd = -1;
				continue;
			}
			freeaddrinfo(sres);
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 || errno == EINPROGRESS)
			break;
		last = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0 && refused && !last) {
		char nets[256];
		kvb_acl_describe(acl, nets, sizeof(nets));
		kvb_err_set(err, KVB_ERR_PEER, "not dialling %s:%u: not among the allowed peers (%s)", host,
			    port, nets);
		errno = EACCES;
		return -1;
	}
	if (fd < 0) {
		kvb_err_set(err, KVB_ERR_PEER, "cannot connect to %s:%u%s%s: %s", host, port,
			    src && *src ? " from " : "", src && *src ? src : "", g_strerror(last));
		errno = last; /* callers classify the failure */
	}
	return fd;
}

int hw_tcp_connect_result(int fd)
{
	int e = 0;
	socklen_t l = sizeof(e);
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l) != 0)
		return errno;
	return e;
}

static int listen_on(const char *bind_host, uint16_t port, kvb_err_t *err)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC,
				 .ai_flags = AI_PASSIVE};
	struct addrinfo *res = NULL;
	char portstr[8];
	g_snprintf(portstr, sizeof(portstr), "%u", port);
	int rc = getaddrinfo(bind_host && *bind_host ? bind_host : NULL, portstr, &hints, &res);
	if (rc != 0) {
		kvb_err_set(err, KVB_ERR_CONFIG, "cannot resolve bind address %s: %s", bind_host,
			    gai_strerror(rc));
		return -1;
	}
	int fd = -1, last = 0;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
		if (fd < 0) {
			last = errno;
			continue;
		}
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 128) == 0) {
			hw_sock_tune(fd);
			break;
		}
		last = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		kvb_err_set(err, KVB_ERR_CONFIG, "cannot listen on %s:%u: %s",
			    bind_host && *bind_host ? bind_host : "*", port, g_strerror(last));
	return fd;
}

int hw_tcp_listen(const char *bind_host, uint16_t port, uint16_t min, uint16_t max,
		  uint16_t *bound, kvb_err_t *err)
{
	int fd = -1;
	if (port || (!min && !max)) {
		fd = listen_on(bind_host, port, err); /* port 0: the kernel picks */
	} else {
		/* Mooncake P2P: a random free port in [min, max], 500 tries */
		for (int i = 0; i < 500 && fd < 0; i++) {
			uint16_t p = (uint16_t)g_random_int_range(min, (gint32)max + 1);
			fd = listen_on(bind_host, p, err);
		}
	}
	if (fd < 0)
		return -1;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	getsockname(fd, (struct sockaddr *)&ss, &sl);
	*bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						: ((struct sockaddr_in *)&ss)->sin_port);
	kvb_err_clear(err);
	return fd;
}

/* Write what is left of tx (from *off).  Returns 1 when all was written, 0
 * when the socket is full, -errno on failure. */
int hw_flush_tx(int fd, GByteArray *tx, size_t *off)
{
	while (*off < tx->len) {
		ssize_t n = send(fd, tx->data + *off, tx->len - *off, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -errno;
		}
		*off += (size_t)n;
	}
	g_byte_array_set_size(tx, 0);
	*off = 0;
	return 1;
}

/* Read what is available into rx (at most cap bytes held).  Returns the
 * bytes read (> 0), 0 on EAGAIN, -1 on EOF, -errno on failure. */
ssize_t hw_fill_rx(int fd, GByteArray *rx, size_t cap)
{
	ssize_t total = 0;
	for (;;) {
		if (rx->len >= cap)
			return total;
		size_t room = MIN((size_t)65536, cap - rx->len);
		guint old = rx->len;
		g_byte_array_set_size(rx, old + (guint)room);
		ssize_t n = recv(fd, rx->data + old, room, 0);
		if (n <= 0) {
			g_byte_array_set_size(rx, old);
			if (n == 0)
				return total ? total : -1;
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return total;
			return -errno;
		}
		g_byte_array_set_size(rx, old + (guint)n);
		total += n;
	}
}

int hw_flush_tx_tls(int fd, struct kvb_tls_session *tls, GByteArray *tx, size_t *off)
{
	if (!tls)
		return hw_flush_tx(fd, tx, off);
	while (*off < tx->len) {
		ssize_t n = kvb_tls_send(tls, tx->data + *off, tx->len - *off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return 0;
			return -errno;
		}
		*off += (size_t)n;
	}
	g_byte_array_set_size(tx, 0);
	*off = 0;
	return 1;
}

ssize_t hw_fill_rx_tls(int fd, struct kvb_tls_session *tls, GByteArray *rx, size_t cap)
{
	if (!tls)
		return hw_fill_rx(fd, rx, cap);
	ssize_t total = 0;
	for (;;) {
		if (rx->len >= cap)
			return total;
		size_t room = MIN((size_t)65536, cap - rx->len);
		guint old = rx->len;
		g_byte_array_set_size(rx, old + (guint)room);
		ssize_t n = kvb_tls_recv(tls, rx->data + old, room);
		if (n <= 0) {
			g_byte_array_set_size(rx, old);
			if (n == 0)
				return total ? total : -1;
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return total;
			return -errno;
		}
		g_byte_array_set_size(rx, old + (guint)n);
		total += n;
	}
}

/* ------------------------------------------------------------------------ */
/* the handshake client: one request per connection                          */

struct hw_call {
	hw_t *hw;
	int fd;
	hw_watch_t *w;
	hw_deadline_t *deadline;
	GByteArray *tx;
	size_t tx_off;
	GByteArray *rx;
	bool connected;
	hw_call_fn cb;
	void *obj;
	char what[KVB_MC_NAME_MAX + 16];
};

static void call_free(hw_call_t *c)
{
	g_queue_remove(&c->hw->calls, c);
	hw_watch_free(c->w);
	hw_deadline_free(c->deadline);
	if (c->fd >= 0)
		close(c->fd);
	g_byte_array_unref(c->tx);
	g_byte_array_unref(c->rx);
	g_free(c);
}

static void call_finish(hw_call_t *c, int status, const char *why, kvb_mc_msg_type_t type,
			const uint8_t *payload, size_t len)
{
	hw_call_fn cb = c->cb;
	void *obj = c->obj;
	c->cb = NULL;
	if (cb)
		cb(obj, status, why, type, payload, len);
}

static void call_timeout(void *obj)
{
	hw_call_t *c = obj;
	char why[KVB_MC_NAME_MAX + 64];
	g_snprintf(why, sizeof(why), "%s: no reply within the timeout", c->what);
	call_finish(c, KVB_ERR_TIMEOUT, why, 0, NULL, 0);
	call_free(c);
}

static bool call_io(void *obj, GIOCondition cond)
{
	hw_call_t *c = obj;
	hw_t *hw = c->hw;
	char why[KVB_MC_NAME_MAX + 160];
	if (!c->connected && (cond & (G_IO_OUT | G_IO_ERR | G_IO_HUP))) {
		int e = hw_tcp_connect_result(c->fd);
		if (e) {
			g_snprintf(why, sizeof(why), "%s: connect: %s", c->what, g_strerror(e));
			goto fail;
		}
		c->connected = true;
	}
	if (c->tx->len) {
		int r = hw_flush_tx(c->fd, c->tx, &c->tx_off);
		if (r < 0) {
			g_snprintf(why, sizeof(why), "%s: send: %s", c->what, g_strerror(-r));
			goto fail;
		}
		if (r == 0)
			return true;
		hw_watch_set(c->w, G_IO_IN);
	}
	if (cond & (G_IO_IN | G_IO_HUP | G_IO_ERR)) {
		ssize_t n = hw_fill_rx(c->fd, c->rx, KVB_MC_FRAME_HEADER_LEN + hw->p.handshake_max);
		if (n < -1) {
			g_snprintf(why, sizeof(why), "%s: recv: %s", c->what, g_strerror((int)-n));
			goto fail;
		}
		if (c->rx->len >= KVB_MC_FRAME_HEADER_LEN) {
			uint64_t body;
			kvb_err_t err;
			if (kvb_mc_frame_header(c->rx->data, hw->p.handshake_max, &body, &err) != KVB_OK) {
				g_snprintf(why, sizeof(why), "%s: reply: %s", c->what, err.msg);
				goto fail;
			}
			if (c->rx->len >= KVB_MC_FRAME_HEADER_LEN + body) {
				kvb_mc_msg_type_t type;
				const uint8_t *payload;
				size_t plen;
				if (kvb_mc_frame_body(c->rx->data + KVB_MC_FRAME_HEADER_LEN, body, &type,
						      &payload, &plen, &err) != KVB_OK) {
					g_snprintf(why, sizeof(why), "%s: reply: %s", c->what, err.msg);
					goto fail;
				}
				/* close at once: Mooncake's listener waits for it */
				call_finish(c, KVB_OK, NULL, type, payload, plen);
				call_free(c);
				return false;
			}
		}
		if (n == -1) {
			g_snprintf(why, sizeof(why), "%s: connection closed before a whole reply",
				   c->what);
			goto fail;
		}
	}
	return true;
fail:
	hw_set_error(hw, "%s", why);
	call_finish(c, KVB_ERR_PEER, why, 0, NULL, 0);
	call_free(c);
	return false;
}

hw_call_t *hw_call_start(hw_t *hw, const char *host, uint16_t port, kvb_mc_msg_type_t type,
			 const void *payload, size_t len, hw_call_fn cb, void *obj)
{
	hw_call_t *c = g_new0(hw_call_t, 1);
	c->hw = hw;
	c->cb = cb;
	c->obj = obj;
	g_snprintf(c->what, sizeof(c->what), "handshake with %s:%u", host, port);
	c->tx = g_byte_array_new();
	c->rx = g_byte_array_new();
	kvb_mc_frame_encode(c->tx, type, payload, len);
	kvb_err_t err;
	c->fd = hw_tcp_connect(host, port, NULL, &hw->acl, &err);
	g_queue_push_tail(&hw->calls, c);
	if (c->fd < 0) {
		/* report from the loop, never from inside the caller */
		c->deadline = hw_deadline_new(hw, call_timeout, c);
		g_strlcpy(c->what, err.msg, sizeof(c->what));
		hw_deadline_arm(c->deadline, 0);
		return c;
	}
	c->w = hw_watch_new(hw, c->fd, G_IO_OUT, call_io, c);
	c->deadline = hw_deadline_new(hw, call_timeout, c);
	hw_deadline_arm(c->deadline, hw->p.connect_timeout_ns);
	return c;
}

void hw_call_cancel(hw_call_t *c)
{
	if (c)
		call_free(c);
}


void hw_calls_free_all(hw_t *hw)
{
	while (hw->calls.head)
		call_free(hw->calls.head->data);
}

void hw_sock_peer_host(int fd, char *host, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char h[NI_MAXHOST] = "";
	if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0)
		getnameinfo((struct sockaddr *)&ss, sl, h, sizeof(h), NULL, 0, NI_NUMERICHOST);
	g_strlcpy(host, h, len);
}

bool hw_accept_allowed(hw_t *hw, int fd, const struct sockaddr *sa, const char *what)
{
	if (kvb_acl_allows(&hw->acl, sa))
		return true;
	char ip[INET6_ADDRSTRLEN] = "?";
	const void *a = sa->sa_family == AF_INET6 ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
						  : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
	if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6)
		inet_ntop(sa->sa_family, a, ip, sizeof(ip));
	hw->stats.peers_refused++;
	hw_warn_from(hw, ip, "connection from %s to the %s port refused: not among the allowed peers", ip,
		     what);
	close(fd);
	return false;
}
