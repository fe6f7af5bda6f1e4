/* TLS sessions for the control plane, on GnuTLS (kvb_tls.h). */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

#include <glib.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "kvb_tls.h"
/* TLS 1.2 and 1.3, GnuTLS's vetted defaults within them */
#define KVB_TLS_PRIORITY "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"

struct kvb_tls {
	bool server;
	gnutls_certificate_credentials_t cred;
	gnutls_priority_t prio;
};

struct kvb_tls_session {
	gnutls_session_t s;
	int fd;
	char *peer_host;    /* a client's: what the certificate must name */
	GByteArray *preread; /* read from fd before the session began; consumed first */
	size_t preread_off;
	bool send_sealed;   /* a record was sealed but not all sent (EAGAIN) */
};

const kvb_tls_names_t kvb_tls_option_names = {"--tls-cert", "--tls-key", "--tls-ca"};
const kvb_tls_names_t kvb_tls_param_names = {"tls_cert", "tls_key", "tls_ca"};

/* GnuTLS's words for rc, without their closing period (they go mid-sentence) */
static const char *tls_why(int rc, char *buf, size_t len)
{
	g_strlcpy(buf, gnutls_strerror(rc), len);
	size_t n = strlen(buf);
	if (n && buf[n - 1] == '.')
		buf[n - 1] = 0;
	return buf;
}

static kvb_tls_t *tls_new(bool server, kvb_err_t *err)
{
	kvb_tls_t *t = g_new0(kvb_tls_t, 1);
	t->server = server;
	int rc = gnutls_certificate_allocate_credentials(&t->cred);
	if (rc == GNUTLS_E_SUCCESS)
		rc = gnutls_priority_init2(&t->prio, KVB_TLS_PRIORITY, NULL, 0);
	if (rc != GNUTLS_E_SUCCESS) {
		kvb_err_set(err, KVB_ERR_NOMEM, "TLS: %s", gnutls_strerror(rc));
		kvb_tls_free(t);
		return NULL;
	}
	return t;
}

static bool readable_file(const char *opt, const char *file, kvb_err_t *err)
{
	if (!g_file_test(file, G_FILE_TEST_EXISTS)) {
		kvb_err_set(err, KVB_ERR_CONFIG, "%s %s: file not found", opt, file);
		return false;
	}
	if (!g_file_test(file, G_FILE_TEST_IS_REGULAR)) {
		kvb_err_set(err, KVB_ERR_CONFIG, "%s %s: not a regular file", opt, file);
		return false;
	}
	return true;
}

kvb_tls_t *kvb_tls_server_new(const char *cert_file, const char *key_file,
			      const kvb_tls_names_t *names, kvb_err_t *err)
{
	const kvb_tls_names_t *nm = names ? names : &kvb_tls_option_names;
	if (!readable_file(nm->cert, cert_file, err) || !readable_file(nm->key, key_file, err))
		return NULL;
	kvb_tls_t *t = tls_new(true, err);
	if (!t)
		return NULL;
	int rc = gnutls_certificate_set_x509_key_file(t->cred, cert_file, key_file, GNUTLS_X509_FMT_PEM);
	if (rc < 0) {
		if (rc == GNUTLS_E_CERTIFICATE_KEY_MISMATCH)
			kvb_err_set(err, KVB_ERR_CONFIG, "%s %s does not match %s %s", nm->key, key_file,
				    nm->cert, cert_file);
		else if (rc == GNUTLS_E_FILE_ERROR)
			kvb_err_set(err, KVB_ERR_CONFIG, "%s %s / %s %s: cannot be read", nm->cert,
				    cert_file, nm->key, key_file);
		else
			kvb_err_set(err, KVB_ERR_CONFIG, "%s %s / %s %s: not a PEM certificate and key: %s",
				    nm->cert, cert_file, nm->key, key_file, gnutls_strerror(rc));
		kvb_tls_free(t);
		return NULL;
	}
	return t;
}

kvb_tls_t *kvb_tls_client_new(const char *ca_file, const kvb_tls_names_t *names, kvb_err_t *err)
{
	const kvb_tls_names_t *nm = names ? names : &kvb_tls_option_names;
	if (ca_file && !readable_file(nm->ca, ca_file, err))
		return NULL;
	kvb_tls_t *t = tls_new(false, err);
	if (!t)
		return NULL;
	int rc = ca_file ? gnutls_certificate_set_x509_trust_file(t->cred, ca_file, GNUTLS_X509_FMT_PEM)
			 : gnutls_certificate_set_x509_system_trust(t->cred);
	if (rc <= 0) {
		if (ca_file)
			kvb_err_set(err, KVB_ERR_CONFIG, "%s %s: no PEM certificate in it%s%s", nm->ca,
				    ca_file, rc < 0 ? ": " : "", rc < 0 ? gnutls_strerror(rc) : "");
		else
			kvb_err_set(err, KVB_ERR_CONFIG, "TLS: the system's trust store holds no CA "
				    "certificate (give %s)", nm->ca);
		kvb_tls_free(t);
		return NULL;
	}
	return t;
}

void kvb_tls_free(kvb_tls_t *t)
{
	if (!t)
		return;
	if (t->prio)
		gnutls_priority_deinit(t->prio);
	if (t->cred)
		gnutls_certificate_free_credentials(t->cred);
	g_free(t);
}

bool kvb_tls_from_options(const char *cert, const char *key, const char *ca, kvb_tls_t **server,
			  kvb_tls_t **client, kvb_err_t *err)
{
	*server = NULL;
	*client = NULL;
	cert = cert && *cert ? cert : g_getenv("KVB_TLS_CERT");
	key = key && *key ? key : g_getenv("KVB_TLS_KEY");
	ca = ca && *ca ? ca : g_getenv("KVB_TLS_CA");
	cert = cert && *cert ? cert : NULL;
	key = key && *key ? key : NULL;
	ca = ca && *ca ? ca : NULL;
	if (!cert != !key) {
		kvb_err_set(err, KVB_ERR_CONFIG, "%s: give --tls-cert and --tls-key together",
			    cert ? "--tls-cert without --tls-key" : "--tls-key without --tls-cert");
		return false;
	}
	if (cert && !(*server = kvb_tls_server_new(cert, key, NULL, err)))
		return false;
	if (ca && !(*client = kvb_tls_client_new(ca, NULL, err))) {
		kvb_tls_free(*server);
		*server = NULL;
		return false;
	}
	return true;
}

/* The transport: the preread bytes first, then the socket. */
static ssize_t tls_pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
	kvb_tls_session_t *s = ptr;
	if (s->preread && s->preread_off < s->preread->len) {
		size_t n = MIN(len, s->preread->len - s->preread_off);
		memcpy(buf, s->preread->data + s->preread_off, n);
		s->preread_off += n;
		return (ssize_t)n;
	}
	ssize_t n = recv(s->fd, buf, len, 0);
	if (n < 0)
		gnutls_transport_set_errno(s->s, errno);
	return n;
}

static int tls_pull_timeout(gnutls_transport_ptr_t ptr, unsigned int ms)
{
	kvb_tls_session_t *s = ptr;
	if (s->preread && s->preread_off < s->preread->len)
		return 1;
	struct pollfd p = {.fd = s->fd, .events = POLLIN};
	return poll(&p, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : (int)ms);
}

static ssize_t tls_push(gnutls_transport_ptr_t ptr, const void *buf, size_t len)
{
	kvb_tls_session_t *s = ptr;
	ssize_t n = send(s->fd, buf, len, MSG_NOSIGNAL);
	if (n < 0)
		gnutls_transport_set_errno(s->s, errno);
	return n;
}

kvb_tls_session_t *kvb_tls_session_new(const kvb_tls_t *t, int fd, const char *peer_host,
				       kvb_err_t *err)
{
	kvb_tls_session_t *s = g_new0(kvb_tls_session_t, 1);
	s->fd = fd;
	int rc = gnutls_init(&s->s, (t->server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NONBLOCK);
	if (rc != GNUTLS_E_SUCCESS) {
		kvb_err_set(err, KVB_ERR_NOMEM, "TLS: %s", gnutls_strerror(rc));
		g_free(s);
		return NULL;
	}
	rc = gnutls_priority_set(s->s, t->prio);
	if (rc == GNUTLS_E_SUCCESS)
		rc = gnutls_credentials_set(s->s, GNUTLS_CRD_CERTIFICATE, t->cred);
	if (rc == GNUTLS_E_SUCCESS && !t->server && peer_host) {
		s->peer_host = g_strdup(peer_host);
		/* SNI carries names only, never addresses (RFC 6066) */
		if (!g_hostname_is_ip_address(peer_host))
			rc = gnutls_server_name_set(s->s, GNUTLS_NAME_DNS, peer_host, strlen(peer_host));
		/* chain and name checked during the handshake, which fails otherwise */
		if (rc == GNUTLS_E_SUCCESS)
			gnutls_session_set_verify_cert(s->s, s->peer_host, 0);
	}
	if (rc != GNUTLS_E_SUCCESS) {
		kvb_err_set(err, KVB_ERR_INVALID, "TLS: %s", gnutls_strerror(rc));
		kvb_tls_session_free(s);
		return NULL;
	}
	gnutls_transport_set_ptr(s->s, s);
	gnutls_transport_set_pull_function(s->s, tls_pull);
	gnutls_transport_set_pull_timeout_function(s->s, tls_pull_timeout);
	gnutls_transport_set_push_function(s->s, tls_push);
	return s;
}

void kvb_tls_session_preread(kvb_tls_session_t *s, const void *buf, size_t len)
{
	if (!len)
		return;
	if (!s->preread)
		s->preread = g_byte_array_new();
	g_byte_array_append(s->preread, buf, (guint)len);
}

void kvb_tls_session_free(kvb_tls_session_t *s)
{
	if (!s)
		return;
	gnutls_deinit(s->s);
	if (s->preread)
		g_byte_array_unref(s->preread);
	g_free(s->peer_host);
	g_free(s);
}

int kvb_tls_handshake_step(kvb_tls_session_t *s, kvb_err_t *err)
{
	int rc = gnutls_handshake(s->s);
	if (rc == GNUTLS_E_SUCCESS)
		return 1;
	if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED || !gnutls_error_is_fatal(rc))
		return 0;
	if (rc == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
		gnutls_datum_t why = {0};
		unsigned status = gnutls_session_get_verify_cert_status(s->s);
		gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &why, 0);
		while (why.data && why.size && g_ascii_isspace(why.data[why.size - 1]))
			why.data[--why.size] = 0;
		kvb_err_set(err, KVB_ERR_PEER, "TLS: the certificate of %s is refused: %s",
			    s->peer_host ? s->peer_host : "the peer", why.data ? (char *)why.data : "?");
		gnutls_free(why.data);
	} else {
		char why[128];
		kvb_err_set(err, KVB_ERR_PEER, "TLS handshake failed: %s", tls_why(rc, why, sizeof(why)));
	}
	return -1;
}

bool kvb_tls_wants_write(const kvb_tls_session_t *s)
{
	return gnutls_record_get_direction(s->s) == 1;
}

bool kvb_tls_handshake(kvb_tls_session_t *s, int timeout_ms, kvb_err_t *err)
{
	gint64 end = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
	for (;;) {
		int rc = kvb_tls_handshake_step(s, err);
		if (rc != 0)
			return rc > 0;
		gint64 left_ms = (end - g_get_monotonic_time()) / 1000;
		struct pollfd p = {.fd = s->fd, .events = kvb_tls_wants_write(s) ? POLLOUT : POLLIN};
		if (left_ms <= 0 || (poll(&p, 1, (int)left_ms) == 0)) {
			kvb_err_set(err, KVB_ERR_TIMEOUT, "TLS handshake: no answer within %d ms", timeout_ms);
			return false;
		}
	}
}

static ssize_t io_result(ssize_t rc)
{
	if (rc >= 0)
		return rc;
	switch (rc) {
	case GNUTLS_E_AGAIN:
		errno = EAGAIN;
		break;
	case GNUTLS_E_INTERRUPTED:
		errno = EINTR;
		break;
	case GNUTLS_E_PREMATURE_TERMINATION:
		return 0;
	default:
		errno = ECONNRESET;
		break;
	}
	return -1;
}

ssize_t kvb_tls_recv(kvb_tls_session_t *s, void *buf, size_t len)
{
	return io_result(gnutls_record_recv(s->s, buf, len));
}

ssize_t kvb_tls_send(kvb_tls_session_t *s, const void *buf, size_t len)
{
	/* a record sealed before EAGAIN goes out as it is (GnuTLS: NULL, 0) */
	ssize_t rc = s->send_sealed ? gnutls_record_send(s->s, NULL, 0) : gnutls_record_send(s->s, buf, len);
	s->send_sealed = rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED;
	return io_result(rc);
}

size_t kvb_tls_pending(const kvb_tls_session_t *s)
{
	return gnutls_record_check_pending(s->s);
}

void kvb_tls_bye(kvb_tls_session_t *s)
{
	/* one try: a full socket buffer or a gone peer is not worth waiting for */
	gnutls_bye(s->s, GNUTLS_SHUT_WR);
}

const char *kvb_tls_describe(const kvb_tls_session_t *s, char *buf, size_t len)
{
	const char *v = gnutls_protocol_get_name(gnutls_protocol_get_version(s->s));
	const char *c = gnutls_cipher_get_name(gnutls_cipher_get(s->s));
	g_snprintf(buf, len, "%s/%s", v ? v : "?", c ? c : "?");
	return buf;
}
