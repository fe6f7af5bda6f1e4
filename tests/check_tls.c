/*
 * The TLS layer (src/backends/hw/kvb_tls.c) over a non-blocking socketpair,
 * both ends driven a step at a time as an event loop would: a handshake and
 * a megabyte each way (EAGAIN on a full socket included), bytes read before
 * the session began, and the refusals: another CA, another name, a
 * plaintext peer, bad files naming the option.  Certificates come from
 * tests/tls/make_certs.sh (the openssl CLI) in a temporary directory.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <check.h>
#include <glib.h>
#include <kvbridge/kvbridge.h>

#include "kvb_tls.h"
#include "suites.h"

static char *dir; /* the certificates; NULL when openssl is missing */

static void certs_make(void)
{
	char *tmp = g_dir_make_tmp("kvb-tls-XXXXXX", NULL);
	ck_assert_ptr_nonnull(tmp);
	char *argv[] = {"sh", KVB_TLS_CERTS_SCRIPT, tmp, NULL};
	int status = 0;
	if (g_spawn_sync(NULL, argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL, NULL, &status, NULL) &&
	    g_spawn_check_wait_status(status, NULL)) {
		dir = tmp;
		return;
	}
	fprintf(stderr, "# check_tls: no test certificates (is openssl installed?): TLS cases pass vacuously\n");
	g_free(tmp);
}

static void certs_remove(void)
{
	if (!dir)
		return;
	char *argv[] = {"rm", "-rf", dir, NULL};
	g_spawn_sync(NULL, argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL, NULL, NULL, NULL);
	g_free(dir);
	dir = NULL;
}

static char *path(const char *name)
{
	return g_build_filename(dir, name, NULL);
}

static kvb_tls_t *server_creds(const char *cert, const char *key)
{
	char *c = path(cert), *k = path(key);
	kvb_err_t err;
	kvb_tls_t *t = kvb_tls_server_new(c, k, NULL, &err);
	ck_assert_msg(t, "%s", err.msg);
	g_free(c);
	g_free(k);
	return t;
}

static kvb_tls_t *client_creds(const char *ca)
{
	char *c = path(ca);
	kvb_err_t err;
	kvb_tls_t *t = kvb_tls_client_new(c, NULL, &err);
	ck_assert_msg(t, "%s", err.msg);
	g_free(c);
	return t;
}

static void pair(int fds[2])
{
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
	for (int i = 0; i < 2; i++)
		fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL, 0) | O_NONBLOCK);
}

/* Both handshakes, a step each in turn; what each side ended with (1 done, -1 failed). */
static void handshake_both(kvb_tls_session_t *c, kvb_tls_session_t *s, int *crc, int *src,
			   kvb_err_t *cerr, kvb_err_t *serr)
{
	*crc = *src = 0;
	for (int i = 0; i < 1000 && (*crc == 0 || *src == 0); i++) {
		if (*crc == 0)
			*crc = kvb_tls_handshake_step(c, cerr);
		if (*src == 0)
			*src = kvb_tls_handshake_step(s, serr);
		if (*crc < 0 || *src < 0)
			break;
	}
}

START_TEST(test_tls_roundtrip)
{
	if (!dir)
		return;
	kvb_tls_t *st = server_creds("server.pem", "server.key");
	kvb_tls_t *ct = client_creds("ca.pem");
	int fds[2];
	pair(fds);
	kvb_err_t err, cerr, serr;
	kvb_tls_session_t *c = kvb_tls_session_new(ct, fds[0], "127.0.0.1", &err);
	kvb_tls_session_t *s = kvb_tls_session_new(st, fds[1], NULL, &err);
	ck_assert(c && s);
	int crc, src;
	handshake_both(c, s, &crc, &src, &cerr, &serr);
	ck_assert_msg(crc == 1 && src == 1, "client %d %s, server %d %s", crc, crc < 0 ? cerr.msg : "",
		      src, src < 0 ? serr.msg : "");
	char d[64];
	ck_assert_msg(g_str_has_prefix(kvb_tls_describe(c, d, sizeof(d)), "TLS1.3/") ||
		      g_str_has_prefix(d, "TLS1.2/"), "%s", d);
	/* a megabyte each way, through a socket that fills up: EAGAIN and resume */
	size_t total = 1 << 20;
	guint8 *out = g_malloc(total), *in_s = g_malloc(total), *in_c = g_malloc(total);
	for (size_t i = 0; i < total; i++)
		out[i] = (guint8)(i * 131 + 7);
	size_t c_sent = 0, s_sent = 0, s_got = 0, c_got = 0;
	int again = 0;
	for (int round = 0; round < 200000 && (s_got < total || c_got < total); round++) {
		/* each side writes until the socket is full, then both read */
		ssize_t n;
		while (c_sent < total && (n = kvb_tls_send(c, out + c_sent, total - c_sent)) > 0)
			c_sent += (size_t)n;
		if (c_sent < total) {
			ck_assert_int_eq(errno, EAGAIN);
			again++;
		}
		while (s_sent < total && (n = kvb_tls_send(s, out + s_sent, total - s_sent)) > 0)
			s_sent += (size_t)n;
		if (s_sent < total) {
			ck_assert_int_eq(errno, EAGAIN);
			again++;
		}
		while (s_got < total && (n = kvb_tls_recv(s, in_s + s_got, total - s_got)) > 0)
			s_got += (size_t)n;
		while (c_got < total && (n = kvb_tls_recv(c, in_c + c_got, total - c_got)) > 0)
			c_got += (size_t)n;
	}
	ck_assert_uint_eq(s_got, total);
	ck_assert_uint_eq(c_got, total);
	ck_assert(memcmp(in_s, out, total) == 0 && memcmp(in_c, out, total) == 0);
	ck_assert_msg(again > 0, "the socket never filled up: EAGAIN untested");
	ck_assert_uint_eq(kvb_tls_pending(s), 0);
	/* the end of the stream: close_notify reads as 0 */
	kvb_tls_bye(c);
	char b;
	ck_assert_int_eq(kvb_tls_recv(s, &b, 1), 0);
	g_free(out);
	g_free(in_s);
	g_free(in_c);
	kvb_tls_session_free(c);
	kvb_tls_session_free(s);
	close(fds[0]);
	close(fds[1]);
	kvb_tls_free(ct);
	kvb_tls_free(st);
}
END_TEST

/* A protocol that reads a plaintext frame and the ClientHello behind it in
 * one recv hands the rest to the session. */
START_TEST(test_tls_preread)
{
	if (!dir)
		return;
	kvb_tls_t *st = server_creds("server.pem", "server.key");
	kvb_tls_t *ct = client_creds("ca.pem");
	int fds[2];
	pair(fds);
	kvb_err_t err, cerr, serr;
	ck_assert_int_eq(send(fds[0], "STARTTLS", 8, 0), 8);
	kvb_tls_session_t *c = kvb_tls_session_new(ct, fds[0], "localhost", &err);
	ck_assert_int_eq(kvb_tls_handshake_step(c, &cerr), 0); /* the ClientHello is out */
	char buf[4096];
	ssize_t got = recv(fds[1], buf, sizeof(buf), 0);
	ck_assert_int_gt(got, 8);
	ck_assert(memcmp(buf, "STARTTLS", 8) == 0);
	kvb_tls_session_t *s = kvb_tls_session_new(st, fds[1], NULL, &err);
	kvb_tls_session_preread(s, buf + 8, (size_t)got - 8);
	int crc, src;
	handshake_both(c, s, &crc, &src, &cerr, &serr);
	ck_assert_msg(crc == 1 && src == 1, "client %d %s, server %d %s", crc, crc < 0 ? cerr.msg : "",
		      src, src < 0 ? serr.msg : "");
	ck_assert_int_eq(kvb_tls_send(s, "hello", 5), 5);
	ssize_t n = -1;
	for (int i = 0; i < 100 && n < 0; i++)
		n = kvb_tls_recv(c, buf, sizeof(buf));
	ck_assert_int_eq(n, 5);
	ck_assert(memcmp(buf, "hello", 5) == 0);
	kvb_tls_session_free(c);
	kvb_tls_session_free(s);
	close(fds[0]);
	close(fds[1]);
	kvb_tls_free(ct);
	kvb_tls_free(st);
}
END_TEST

/* ca: the client's trust; host: the name it dialed; the client refuses with why */
static void refused(const char *cert, const char *key, const char *ca, const char *host, const char *why)
{
	kvb_tls_t *st = server_creds(cert, key);
	kvb_tls_t *ct = client_creds(ca);
	int fds[2];
	pair(fds);
	kvb_err_t err, cerr, serr;
	kvb_tls_session_t *c = kvb_tls_session_new(ct, fds[0], host, &err);
	kvb_tls_session_t *s = kvb_tls_session_new(st, fds[1], NULL, &err);
	int crc, src;
	handshake_both(c, s, &crc, &src, &cerr, &serr);
	ck_assert_int_eq(crc, -1);
	ck_assert_int_eq(cerr.code, KVB_ERR_PEER);
	ck_assert_msg(strstr(cerr.msg, why), "%s", cerr.msg);
	kvb_tls_session_free(c);
	kvb_tls_session_free(s);
	close(fds[0]);
	close(fds[1]);
	kvb_tls_free(ct);
	kvb_tls_free(st);
}

START_TEST(test_tls_refusals)
{
	if (!dir)
		return;
	refused("server.pem", "server.key", "other-ca.pem", "127.0.0.1", "issuer is unknown");
	refused("server.pem", "server.key", "ca.pem", "127.0.0.2", "does not match");
	refused("name.pem", "name.key", "ca.pem", "localhost", "does not match");
	/* a plaintext client: the server's handshake fails, it does not wait */
	kvb_tls_t *st = server_creds("server.pem", "server.key");
	int fds[2];
	pair(fds);
	const char *get = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
	ck_assert_int_eq(send(fds[0], get, strlen(get), 0), (ssize_t)strlen(get));
	kvb_err_t err;
	kvb_tls_session_t *s = kvb_tls_session_new(st, fds[1], NULL, &err);
	ck_assert_int_eq(kvb_tls_handshake_step(s, &err), -1);
	ck_assert_msg(strstr(err.msg, "TLS handshake failed"), "%s", err.msg);
	kvb_tls_session_free(s);
	close(fds[0]);
	close(fds[1]);
	kvb_tls_free(st);
}
END_TEST

START_TEST(test_tls_bad_files)
{
	if (!dir)
		return;
	kvb_err_t err;
	char *cert = path("server.pem"), *key = path("server.key"), *other = path("name.key");
	char *none = path("missing.pem"), *ext = path("name.ext");
	ck_assert_ptr_null(kvb_tls_server_new(none, key, NULL, &err));
	ck_assert_int_eq(err.code, KVB_ERR_CONFIG);
	ck_assert_msg(g_str_has_prefix(err.msg, "--tls-cert ") && strstr(err.msg, ": file not found"), "%s", err.msg);
	ck_assert_ptr_null(kvb_tls_server_new(cert, other, &kvb_tls_param_names, &err));
	ck_assert_msg(g_str_has_prefix(err.msg, "tls_key ") && strstr(err.msg, "does not match tls_cert"),
		      "%s", err.msg);
	ck_assert_ptr_null(kvb_tls_server_new(ext, key, NULL, &err));
	ck_assert_msg(strstr(err.msg, "not a PEM certificate and key"), "%s", err.msg);
	ck_assert_ptr_null(kvb_tls_client_new(ext, NULL, &err));
	ck_assert_msg(g_str_has_prefix(err.msg, "--tls-ca ") && strstr(err.msg, "no PEM certificate"), "%s", err.msg);
	ck_assert_ptr_null(kvb_tls_client_new(dir, NULL, &err));
	ck_assert_msg(strstr(err.msg, "not a regular file"), "%s", err.msg);
	/* the options: both halves or neither; the environment fills in */
	kvb_tls_t *s = NULL, *c = NULL;
	ck_assert(!kvb_tls_from_options(cert, NULL, NULL, &s, &c, &err));
	ck_assert_msg(strstr(err.msg, "--tls-cert without --tls-key"), "%s", err.msg);
	ck_assert(kvb_tls_from_options(NULL, NULL, NULL, &s, &c, &err) && !s && !c);
	g_setenv("KVB_TLS_KEY", key, TRUE);
	char *ca = path("ca.pem");
	g_setenv("KVB_TLS_CA", ca, TRUE);
	ck_assert_msg(kvb_tls_from_options(cert, NULL, NULL, &s, &c, &err) && s && c, "%s", err.msg);
	kvb_tls_free(s);
	kvb_tls_free(c);
	g_unsetenv("KVB_TLS_KEY");
	g_unsetenv("KVB_TLS_CA");
	g_free(ca);
	g_free(cert);
	g_free(key);
	g_free(other);
	g_free(none);
	g_free(ext);
}
END_TEST

Suite *kvb_suite_tls(void)
{
	Suite *s = suite_create("tls");
	TCase *tc = tcase_create("tls");
	tcase_add_unchecked_fixture(tc, certs_make, certs_remove);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_tls_roundtrip);
	tcase_add_test(tc, test_tls_preread);
	tcase_add_test(tc, test_tls_refusals);
	tcase_add_test(tc, test_tls_bad_files);
	suite_add_tcase(s, tc);
	return s;
}
