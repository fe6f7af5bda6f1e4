/* Mooncake Transfer Engine wire codec: handshake framing, names and GIDs,
 * segment descriptors as Mooncake writes them, HandShakeDesc, notify and
 * probe, the TCP transport header and status frame. */
#include "config.h"

#include <stdint.h>
#include <string.h>

#include <check.h>
#include <glib.h>
#include <json-glib/json-glib.h>

#include "kvb_mc_wire.h"
#include "suites.h"

static void check_refusal(const char *what, int rc, int want, const kvb_err_t *err,
			  const char *needle)
{
	ck_assert_msg(rc == want, "%s: rc %d, want %d ('%s')", what, rc, want, err->msg);
	ck_assert_msg(err->code == want, "%s: err.code %d, want %d", what, err->code, want);
	ck_assert_msg(err->msg[0] != '\0', "%s: refusal without a message", what);
	if (needle)
		ck_assert_msg(strstr(err->msg, needle) != NULL, "%s: message '%s' lacks '%s'", what,
			      err->msg, needle);
}

/* expr, called with the in-scope kvb_err_t err, is refused with code want;
 * err carries the same code and a message, holding needle when given. */
#define ck_refused(expr, want, needle)                                      \
	do {                                                                \
		kvb_err_clear(&err);                                        \
		int rc_ = (expr);                                           \
		check_refusal(#expr, rc_, (want), &err, (needle));          \
	} while (0)

static void put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* ---- frames ------------------------------------------------------------- */

START_TEST(test_frame_header_lengths)
{
	static const struct {
		uint64_t len, max;
		bool ok;
	} cases[] = {
		{0, KVB_MC_HANDSHAKE_MAX_DEFAULT, false},
		{1, KVB_MC_HANDSHAKE_MAX_DEFAULT, true},
		{2, KVB_MC_HANDSHAKE_MAX_DEFAULT, true},
		{KVB_MC_HANDSHAKE_MAX_DEFAULT - 1, KVB_MC_HANDSHAKE_MAX_DEFAULT, true},
		{KVB_MC_HANDSHAKE_MAX_DEFAULT, KVB_MC_HANDSHAKE_MAX_DEFAULT, true},
		{KVB_MC_HANDSHAKE_MAX_DEFAULT + 1, KVB_MC_HANDSHAKE_MAX_DEFAULT, false},
		{KVB_MC_HANDSHAKE_MAX_LIMIT, KVB_MC_HANDSHAKE_MAX_LIMIT, true},
		{KVB_MC_HANDSHAKE_MAX_LIMIT + 1, KVB_MC_HANDSHAKE_MAX_LIMIT, false},
		{UINT64_C(1) << 32, KVB_MC_HANDSHAKE_MAX_LIMIT, false},
		{UINT64_C(1) << 63, KVB_MC_HANDSHAKE_MAX_DEFAULT, false},
		{UINT64_C(1) << 63, KVB_MC_HANDSHAKE_MAX_LIMIT, false},
		{UINT64_MAX, KVB_MC_HANDSHAKE_MAX_LIMIT, false},
		/* the cap is the caller's: a huge cap lets huge lengths through */
		{UINT64_C(1) << 63, UINT64_MAX, true},
		{0, UINT64_MAX, false},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
		uint8_t hdr[KVB_MC_FRAME_HEADER_LEN];
		put_le64(hdr, cases[i].len);
		uint64_t body = 12345;
		kvb_err_t err;
		kvb_err_clear(&err);
		int rc = kvb_mc_frame_header(hdr, cases[i].max, &body, &err);
		if (cases[i].ok) {
			ck_assert_msg(rc == KVB_OK, "case %zu refused: %s", i, err.msg);
			ck_assert_uint_eq(body, cases[i].len);
		} else {
			ck_assert_msg(rc == KVB_ERR_PROTOCOL, "case %zu: rc %d", i, rc);
			ck_assert_int_eq(err.code, KVB_ERR_PROTOCOL);
			ck_assert_msg(err.msg[0], "case %zu: no message", i);
			ck_assert_uint_eq(body, 12345); /* untouched */
			/* a NULL err is allowed */
			ck_assert_int_eq(kvb_mc_frame_header(hdr, cases[i].max, &body, NULL),
					 KVB_ERR_PROTOCOL);
		}
	}
	/* little-endian: 01 00 .. 00 is 1, 00 .. 00 01 is 2^56 */
	uint8_t le[8] = {1, 0, 0, 0, 0, 0, 0, 0}, be[8] = {0, 0, 0, 0, 0, 0, 0, 1};
	uint64_t body = 0;
	kvb_err_t err;
	ck_assert_int_eq(kvb_mc_frame_header(le, KVB_MC_HANDSHAKE_MAX_DEFAULT, &body, NULL), KVB_OK);
	ck_assert_uint_eq(body, 1);
	ck_refused(kvb_mc_frame_header(be, KVB_MC_HANDSHAKE_MAX_DEFAULT, &body, &err),
		   KVB_ERR_PROTOCOL, "72057594037927936");
	uint8_t mib[8] = {0x00, 0x00, 0x10, 0, 0, 0, 0, 0};
	ck_assert_int_eq(kvb_mc_frame_header(mib, KVB_MC_HANDSHAKE_MAX_DEFAULT, &body, NULL), KVB_OK);
	ck_assert_uint_eq(body, 1u << 20);
	uint8_t zero[8] = {0};
	ck_refused(kvb_mc_frame_header(zero, KVB_MC_HANDSHAKE_MAX_DEFAULT, &body, &err),
		   KVB_ERR_PROTOCOL, "length 0");
}
END_TEST

START_TEST(test_frame_body_typed)
{
	static const uint8_t types[] = {KVB_MC_CONNECTION, KVB_MC_METADATA, KVB_MC_NOTIFY,
					KVB_MC_PROBE,      KVB_MC_KVB_HELLO, KVB_MC_KVB_FRAME};
	for (size_t i = 0; i < G_N_ELEMENTS(types); i++) {
		uint8_t body[] = {types[i], '{', '}'};
		kvb_mc_msg_type_t t = (kvb_mc_msg_type_t)0x7f;
		const uint8_t *p = NULL;
		size_t pl = 99;
		ck_assert_int_eq(kvb_mc_frame_body(body, sizeof(body), &t, &p, &pl, NULL), KVB_OK);
		ck_assert_int_eq(t, types[i]);
		ck_assert_ptr_eq(p, body + 1);
		ck_assert_uint_eq(pl, 2);
		/* a type byte alone: empty payload */
		ck_assert_int_eq(kvb_mc_frame_body(body, 1, &t, &p, &pl, NULL), KVB_OK);
		ck_assert_int_eq(t, types[i]);
		ck_assert_ptr_eq(p, body + 1);
		ck_assert_uint_eq(pl, 0);
	}
}
END_TEST

START_TEST(test_frame_body_legacy)
{
	/* a pre-0.3 peer sends bare JSON: the whole body is a Connection request */
	static const uint8_t firsts[] = {'{', ' ', '\t', '\r', '\n'};
	for (size_t i = 0; i < G_N_ELEMENTS(firsts); i++) {
		uint8_t body[] = {firsts[i], '{', '}', '\n'};
		kvb_mc_msg_type_t t = KVB_MC_PROBE;
		const uint8_t *p = NULL;
		size_t pl = 0;
		ck_assert_int_eq(kvb_mc_frame_body(body, sizeof(body), &t, &p, &pl, NULL), KVB_OK);
		ck_assert_int_eq(t, KVB_MC_CONNECTION);
		ck_assert_ptr_eq(p, body);
		ck_assert_uint_eq(pl, sizeof(body));
	}
}
END_TEST

START_TEST(test_frame_body_refused)
{
	static const uint8_t bad[] = {4, 5, 8, 0x0b, 0x0c, 0x0f, 0x17, 0x1f, '[', '"', 'a', '0',
				      0x7b + 1, 0x7f, 0x80, 0xfe, 0xff};
	kvb_err_t err;
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
		uint8_t body[] = {bad[i], '{', '}'};
		kvb_mc_msg_type_t t = KVB_MC_PROBE;
		const uint8_t *p = NULL;
		size_t pl = 7;
		char hex[8];
		g_snprintf(hex, sizeof(hex), "0x%02x", bad[i]);
		ck_refused(kvb_mc_frame_body(body, sizeof(body), &t, &p, &pl, &err), KVB_ERR_PROTOCOL,
			   hex);
		ck_assert_int_eq(t, KVB_MC_PROBE);
		ck_assert_ptr_null(p);
		ck_assert_uint_eq(pl, 7);
		ck_assert_int_eq(kvb_mc_frame_body(body, sizeof(body), &t, &p, &pl, NULL),
				 KVB_ERR_PROTOCOL);
	}
	/* every byte value: accepted exactly for the types, '{' and whitespace */
	for (unsigned v = 0; v < 256; v++) {
		uint8_t body[] = {(uint8_t)v};
		kvb_mc_msg_type_t t;
		const uint8_t *p;
		size_t pl;
		bool want = v <= 3 || (v >= 0x10 && v <= 0x16) || v == '{' || v == ' ' || v == '\t' ||
			    v == '\r' || v == '\n';
		int rc = kvb_mc_frame_body(body, 1, &t, &p, &pl, NULL);
		ck_assert_msg((rc == KVB_OK) == want, "first byte 0x%02x: rc %d", v, rc);
	}
	uint8_t one = 0;
	kvb_mc_msg_type_t t;
	const uint8_t *p;
	size_t pl;
	ck_refused(kvb_mc_frame_body(&one, 0, &t, &p, &pl, &err), KVB_ERR_PROTOCOL, "empty");
}
END_TEST

START_TEST(test_frame_encode_bytes)
{
	GByteArray *b = g_byte_array_new();
	kvb_mc_frame_encode(b, KVB_MC_NOTIFY, "{}", 2);
	static const uint8_t want[] = {3, 0, 0, 0, 0, 0, 0, 0, 2, '{', '}'};
	ck_assert_uint_eq(b->len, sizeof(want));
	ck_assert_mem_eq(b->data, want, sizeof(want));
	/* appends; an empty payload is the type byte alone (length 1) */
	kvb_mc_frame_encode(b, KVB_MC_PROBE, NULL, 0);
	static const uint8_t want2[] = {1, 0, 0, 0, 0, 0, 0, 0, 3};
	ck_assert_uint_eq(b->len, sizeof(want) + sizeof(want2));
	ck_assert_mem_eq(b->data, want, sizeof(want));
	ck_assert_mem_eq(b->data + sizeof(want), want2, sizeof(want2));
	/* a multi-byte length: 0x1233 bytes of payload -> 0x1234 */
	g_byte_array_set_size(b, 0);
	char *big = g_malloc(0x1233);
	memset(big, 'x', 0x1233);
	kvb_mc_frame_encode(b, KVB_MC_KVB_FRAME, big, 0x1233);
	static const uint8_t want3[] = {0x34, 0x12, 0, 0, 0, 0, 0, 0, 0x11};
	ck_assert_uint_eq(b->len, 9 + 0x1233);
	ck_assert_mem_eq(b->data, want3, sizeof(want3));
	ck_assert_mem_eq(b->data + 9, big, 0x1233);
	g_free(big);
	g_byte_array_unref(b);
}
END_TEST

START_TEST(test_frame_roundtrip)
{
	static const kvb_mc_msg_type_t types[] = {KVB_MC_CONNECTION, KVB_MC_METADATA, KVB_MC_NOTIFY,
						  KVB_MC_PROBE, KVB_MC_KVB_HELLO, KVB_MC_KVB_FRAME};
#define P_NOTIFY "{\"name\":\"a\",\"notify_msg\":\"b\"}"
	static const char *const payloads[] = {"", "{}", P_NOTIFY, "\x00\x01\x02"};
	static const size_t lens[] = {0, 2, sizeof(P_NOTIFY) - 1, 3};
#undef P_NOTIFY
	for (size_t i = 0; i < G_N_ELEMENTS(types); i++) {
		for (size_t j = 0; j < G_N_ELEMENTS(payloads); j++) {
			GByteArray *b = g_byte_array_new();
			kvb_mc_frame_encode(b, types[i], payloads[j], lens[j]);
			uint64_t body_len;
			ck_assert_int_eq(kvb_mc_frame_header(b->data, KVB_MC_HANDSHAKE_MAX_DEFAULT,
							     &body_len, NULL),
					 KVB_OK);
			ck_assert_uint_eq(body_len, lens[j] + 1);
			ck_assert_uint_eq(b->len, KVB_MC_FRAME_HEADER_LEN + body_len);
			kvb_mc_msg_type_t t;
			const uint8_t *p;
			size_t pl;
			ck_assert_int_eq(kvb_mc_frame_body(b->data + KVB_MC_FRAME_HEADER_LEN,
							   (size_t)body_len, &t, &p, &pl, NULL),
					 KVB_OK);
			ck_assert_int_eq(t, types[i]);
			ck_assert_uint_eq(pl, lens[j]);
			if (lens[j])
				ck_assert_mem_eq(p, payloads[j], lens[j]);
			g_byte_array_unref(b);
		}
	}
}
END_TEST

/* ---- names -------------------------------------------------------------- */

START_TEST(test_host_port_accepted)
{
	static const struct {
		const char *in, *host;
		uint16_t port;
	} ok[] = {
		{"127.0.0.1:15123", "127.0.0.1", 15123},
		{"node-1.prefill.example.com:1", "node-1.prefill.example.com", 1},
		{"h:65535", "h", 65535},
		{"[::1]:17000", "::1", 17000},
		{"[fe80::1:2]:80", "fe80::1:2", 80},
		{"[::ffff:10.0.0.1]:15000", "::ffff:10.0.0.1", 15000},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(ok); i++) {
		char host[KVB_MC_NAME_MAX];
		uint16_t port = 0;
		kvb_err_t err;
		kvb_err_clear(&err);
		int rc = kvb_mc_parse_host_port(ok[i].in, host, sizeof(host), &port, &err);
		ck_assert_msg(rc == KVB_OK, "'%s' refused: %s", ok[i].in, err.msg);
		ck_assert_str_eq(host, ok[i].host);
		ck_assert_uint_eq(port, ok[i].port);
	}
	/* a host that exactly fills the buffer */
	char host[8];
	uint16_t port = 0;
	ck_assert_int_eq(kvb_mc_parse_host_port("abcdefg:9", host, sizeof(host), &port, NULL), KVB_OK);
	ck_assert_str_eq(host, "abcdefg");
	ck_assert_uint_eq(port, 9);
	ck_assert_int_eq(kvb_mc_parse_host_port("[a:b:c:d]:9", host, sizeof(host), &port, NULL),
			 KVB_OK);
	ck_assert_str_eq(host, "a:b:c:d");
}
END_TEST

START_TEST(test_host_port_refused)
{
	static const struct {
		const char *in, *needle;
	} bad[] = {
		{"", "empty"},
		{"127.0.0.1", "host:port"},
		{"127.0.0.1:", "missing port"},
		{"h:0", "port 0"},
		{"h:00", "outside"},
		{"h:65536", "65536"},
		{"h:99999", "port"},
		{"h:99999999999999999999999", "port"},
		{"h:80x", "port"},
		{"h:80 ", "port"},
		{"h: 80", "port"},
		{"h:-1", "port"},
		{"h:+80", "port"},
		{"h:0x50", "port"},
		{":80", "empty host"},
		{"[]:80", "empty host"},
		{"[::1]", "[v6addr]:port"},
		{"[::1]80", "[v6addr]:port"},
		{"[::1", "[v6addr]:port"},
		{"[::1]:", "missing port"},
		{"[::1]:99999", "port"},
		{"::1:80", "brackets"},
		{"fe80::1:80", "brackets"},
		{"h:80:", "brackets"},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
		char host[KVB_MC_NAME_MAX] = "unchanged";
		uint16_t port = 4242;
		kvb_err_t err;
		kvb_err_clear(&err);
		int rc = kvb_mc_parse_host_port(bad[i].in, host, sizeof(host), &port, &err);
		ck_assert_msg(rc < 0 && err.code == rc, "'%s' accepted (rc %d)", bad[i].in, rc);
		ck_assert_int_eq(rc, KVB_ERR_INVALID);
		ck_assert_msg(strstr(err.msg, bad[i].needle), "'%s': message '%s' lacks '%s'",
			      bad[i].in, err.msg, bad[i].needle);
		ck_assert_str_eq(host, "unchanged");
		ck_assert_uint_eq(port, 4242);
		ck_assert_int_eq(kvb_mc_parse_host_port(bad[i].in, host, sizeof(host), &port, NULL), rc);
	}
	char host[8];
	uint16_t port;
	kvb_err_t err;
	ck_refused(kvb_mc_parse_host_port(NULL, host, sizeof(host), &port, &err), KVB_ERR_INVALID,
		   "empty");
	/* one byte too long for the buffer, plain and bracketed */
	ck_refused(kvb_mc_parse_host_port("abcdefgh:9", host, sizeof(host), &port, &err),
		   KVB_ERR_INVALID, "longer than 7");
	ck_refused(kvb_mc_parse_host_port("[a:b:c:dd]:9", host, sizeof(host), &port, &err),
		   KVB_ERR_INVALID, "longer than 7");
	/* the reason survives an input longer than the message */
	char big_host[KVB_MC_NAME_MAX];
	char *big = g_strnfill(2 * KVB_ERR_MSG_MAX, 'h');
	char *in = g_strdup_printf("%s:80", big);
	ck_refused(kvb_mc_parse_host_port(in, big_host, sizeof(big_host), &port, &err),
		   KVB_ERR_INVALID, "host longer than 255 bytes");
	g_free(in);
	in = g_strdup_printf("h:%s", big);
	ck_refused(kvb_mc_parse_host_port(in, big_host, sizeof(big_host), &port, &err),
		   KVB_ERR_INVALID, "port is not a number");
	g_free(in);
	g_free(big);
}
END_TEST

START_TEST(test_nic_path_split)
{
	char server[KVB_MC_NAME_MAX], device[KVB_MC_DEVICE_NAME_MAX];
	kvb_err_t err;
	ck_assert_int_eq(kvb_mc_nic_path_split("10.0.0.1:15123@mlx5_0", server, sizeof(server),
					       device, sizeof(device), NULL),
			 KVB_OK);
	ck_assert_str_eq(server, "10.0.0.1:15123");
	ck_assert_str_eq(device, "mlx5_0");
	/* split at the first '@' */
	ck_assert_int_eq(kvb_mc_nic_path_split("a@b@c", server, sizeof(server), device,
					       sizeof(device), NULL),
			 KVB_OK);
	ck_assert_str_eq(server, "a");
	ck_assert_str_eq(device, "b@c");
	ck_assert_int_eq(kvb_mc_nic_path_split("[::1]:1@x", server, sizeof(server), device,
					       sizeof(device), NULL),
			 KVB_OK);
	ck_assert_str_eq(server, "[::1]:1");
	ck_assert_str_eq(device, "x");

	ck_refused(kvb_mc_nic_path_split("10.0.0.1:15123", server, sizeof(server), device,
					 sizeof(device), &err),
		   KVB_ERR_PROTOCOL, "server@device");
	ck_refused(kvb_mc_nic_path_split("", server, sizeof(server), device, sizeof(device), &err),
		   KVB_ERR_PROTOCOL, "server@device");
	ck_refused(kvb_mc_nic_path_split(NULL, server, sizeof(server), device, sizeof(device), &err),
		   KVB_ERR_PROTOCOL, "server@device");
	ck_refused(kvb_mc_nic_path_split("@mlx5_0", server, sizeof(server), device, sizeof(device),
					 &err),
		   KVB_ERR_PROTOCOL, "empty");
	ck_refused(kvb_mc_nic_path_split("srv@", server, sizeof(server), device, sizeof(device),
					 &err),
		   KVB_ERR_PROTOCOL, "empty");
	ck_refused(kvb_mc_nic_path_split("@", server, sizeof(server), device, sizeof(device), &err),
		   KVB_ERR_PROTOCOL, "empty");

	/* lengths: a device of DEVICE_NAME_MAX - 1 bytes fits, one more does not */
	char path[2 * KVB_MC_NAME_MAX + 8];
	char dev_ok[KVB_MC_DEVICE_NAME_MAX];
	memset(dev_ok, 'd', sizeof(dev_ok) - 1);
	dev_ok[sizeof(dev_ok) - 1] = '\0';
	g_snprintf(path, sizeof(path), "s@%s", dev_ok);
	ck_assert_int_eq(kvb_mc_nic_path_split(path, server, sizeof(server), device, sizeof(device),
					       NULL),
			 KVB_OK);
	ck_assert_str_eq(device, dev_ok);
	g_snprintf(path, sizeof(path), "s@%sd", dev_ok);
	ck_refused(kvb_mc_nic_path_split(path, server, sizeof(server), device, sizeof(device), &err),
		   KVB_ERR_PROTOCOL, "too long");
	char srv_ok[KVB_MC_NAME_MAX];
	memset(srv_ok, 's', sizeof(srv_ok) - 1);
	srv_ok[sizeof(srv_ok) - 1] = '\0';
	g_snprintf(path, sizeof(path), "%s@d", srv_ok);
	ck_assert_int_eq(kvb_mc_nic_path_split(path, server, sizeof(server), device, sizeof(device),
					       NULL),
			 KVB_OK);
	ck_assert_str_eq(server, srv_ok);
	g_snprintf(path, sizeof(path), "%ss@d", srv_ok);
	ck_refused(kvb_mc_nic_path_split(path, server, sizeof(server), device, sizeof(device), &err),
		   KVB_ERR_PROTOCOL, "too long");
}
END_TEST

#define GID_TEXT "00:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:00:01"

START_TEST(test_gid_roundtrip)
{
	uint8_t gid[16], back[16];
	char text[KVB_MC_GID_TEXT_LEN + 1];
	kvb_err_t err;
	ck_assert_int_eq(kvb_mc_gid_parse(GID_TEXT, gid, NULL), KVB_OK);
	static const uint8_t want[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1};
	ck_assert_mem_eq(gid, want, 16);
	kvb_mc_gid_format(gid, text);
	ck_assert_str_eq(text, GID_TEXT);
	ck_assert_uint_eq(strlen(text), KVB_MC_GID_TEXT_LEN);
	/* every byte value, sixteen at a time */
	for (int r = 0; r < 16; r++) {
		for (int i = 0; i < 16; i++)
			gid[i] = (uint8_t)(r * 16 + i);
		memset(text, '#', sizeof(text));
		kvb_mc_gid_format(gid, text);
		ck_assert_uint_eq(strlen(text), KVB_MC_GID_TEXT_LEN);
		for (size_t k = 0; k < KVB_MC_GID_TEXT_LEN; k++)
			ck_assert_msg((text[k] >= '0' && text[k] <= '9') ||
					      (text[k] >= 'a' && text[k] <= 'f') ||
					      (text[k] == ':' && k % 3 == 2),
				      "'%s': char %zu", text, k);
		ck_assert_int_eq(kvb_mc_gid_parse(text, back, NULL), KVB_OK);
		ck_assert_mem_eq(back, gid, 16);
	}
	/* upper case parses to the same bytes; the formatter writes lower case */
	ck_assert_int_eq(kvb_mc_gid_parse("FE:80:00:00:00:00:00:00:Ab:cD:eF:FF:FE:00:00:01", gid, &err),
			 KVB_OK);
	kvb_mc_gid_format(gid, text);
	ck_assert_str_eq(text, "fe:80:00:00:00:00:00:00:ab:cd:ef:ff:fe:00:00:01");
}
END_TEST

START_TEST(test_gid_refused)
{
	static const char *const bad[] = {
		"",
		"00:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:00:0",    /* 46 */
		"00:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:00:011",  /* 48 */
		"00:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:00:01:",  /* trailing ':' */
		"00:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:00:01\n", /* trailing newline */
		"00-00-00-00-00-00-00-00-00-00-ff-ff-0a-00-00-01",
		"00:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:00:0g",
		"g0:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:00:01",
		" 0:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:00:01",
		"000:0:00:00:00:00:00:00:00:00:ff:ff:0a:00:00:01",
		"00:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:00::1",
		"0x:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:00:01",
		"00000000000000000000000000000000000000000000000",  /* 47, no ':' */
		"::::::::::::::::::::::::::::::::::::::::::::::::",
		"fe80::1",
	};
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
		uint8_t gid[16];
		kvb_err_t err;
		kvb_err_clear(&err);
		ck_assert_msg(kvb_mc_gid_parse(bad[i], gid, &err) == KVB_ERR_PROTOCOL, "'%s' accepted",
			      bad[i]);
		ck_assert_int_eq(err.code, KVB_ERR_PROTOCOL);
		ck_assert_msg(strstr(err.msg, "gid"), "'%s': message '%s'", bad[i], err.msg);
		ck_assert_int_eq(kvb_mc_gid_parse(bad[i], gid, NULL), KVB_ERR_PROTOCOL);
	}
	uint8_t gid[16];
	kvb_err_t err;
	ck_refused(kvb_mc_gid_parse(NULL, gid, &err), KVB_ERR_PROTOCOL, "gid");
	char *big = g_strnfill(2 * KVB_ERR_MSG_MAX, 'f');
	ck_refused(kvb_mc_gid_parse(big, gid, &err), KVB_ERR_PROTOCOL, "expected 16 hex bytes");
	g_free(big);
}
END_TEST

/* ---- segment descriptor ------------------------------------------------- */

static void assert_seg_eq(const kvb_mc_segment_t *a, const kvb_mc_segment_t *b)
{
	ck_assert_str_eq(a->name, b->name);
	ck_assert_str_eq(a->protocol, b->protocol);
	ck_assert_uint_eq(a->tcp_data_port, b->tcp_data_port);
	ck_assert_str_eq(a->tcp_data_host, b->tcp_data_host);
	ck_assert_uint_eq(a->tcp_proto_version, b->tcp_proto_version);
	ck_assert_str_eq(a->timestamp, b->timestamp);
	ck_assert_str_eq(a->rdma_server_name, b->rdma_server_name);
	ck_assert_uint_eq(a->n_devices, b->n_devices);
	for (uint32_t i = 0; i < a->n_devices; i++) {
		ck_assert_str_eq(a->devices[i].name, b->devices[i].name);
		ck_assert_uint_eq(a->devices[i].lid, b->devices[i].lid);
		ck_assert_mem_eq(a->devices[i].gid, b->devices[i].gid, 16);
	}
	ck_assert_uint_eq(a->n_buffers, b->n_buffers);
	for (uint32_t i = 0; i < a->n_buffers; i++) {
		const kvb_mc_buffer_t *x = &a->buffers[i], *y = &b->buffers[i];
		ck_assert_str_eq(x->name, y->name);
		ck_assert_uint_eq(x->addr, y->addr);
		ck_assert_uint_eq(x->length, y->length);
		ck_assert_uint_eq(x->n_keys, y->n_keys);
		for (uint32_t k = 0; k < x->n_keys; k++) {
			ck_assert_uint_eq(x->rkey[k], y->rkey[k]);
			ck_assert_uint_eq(x->lkey[k], y->lkey[k]);
		}
		ck_assert((x->mirror_rkey == NULL) == (y->mirror_rkey == NULL));
		for (uint32_t k = 0; x->mirror_rkey && k < x->n_keys; k++)
			ck_assert_uint_eq(x->mirror_rkey[k], y->mirror_rkey[k]);
	}
	ck_assert_uint_eq(a->n_locations, b->n_locations);
	for (uint32_t i = 0; i < a->n_locations; i++) {
		const kvb_mc_location_t *x = &a->locations[i], *y = &b->locations[i];
		ck_assert_str_eq(x->name, y->name);
		ck_assert_uint_eq(x->n_preferred, y->n_preferred);
		ck_assert_uint_eq(x->n_available, y->n_available);
		for (uint32_t k = 0; k < x->n_preferred; k++)
			ck_assert_uint_eq(x->preferred[k], y->preferred[k]);
		for (uint32_t k = 0; k < x->n_available; k++)
			ck_assert_uint_eq(x->available[k], y->available[k]);
	}
}

static void assert_seg_empty(const kvb_mc_segment_t *s)
{
	ck_assert_ptr_null(s->devices);
	ck_assert_ptr_null(s->buffers);
	ck_assert_ptr_null(s->locations);
	ck_assert_uint_eq(s->n_devices, 0);
	ck_assert_uint_eq(s->n_buffers, 0);
	ck_assert_uint_eq(s->n_locations, 0);
}

/* to_json, from_json gives in back, and to_json of that is the same text
 * (a fixed point); returns the JSON (g_free it). */
static char *seg_roundtrip(const kvb_mc_segment_t *in)
{
	GString *j = g_string_new("prefix:");
	kvb_err_t err;
	kvb_err_clear(&err);
	int rc = kvb_mc_segment_to_json(in, j, &err);
	ck_assert_msg(rc == KVB_OK, "to_json: %s", err.msg);
	ck_assert(g_str_has_prefix(j->str, "prefix:{")); /* appended */
	const char *json = j->str + 7;
	ck_assert_msg(!strchr(json, '\n'), "compact JSON expected: %s", json);
	kvb_mc_segment_t out;
	rc = kvb_mc_segment_from_json(json, strlen(json), &out, &err);
	ck_assert_msg(rc == KVB_OK, "from_json: %s in %s", err.msg, json);
	assert_seg_eq(in, &out);
	GString *j2 = g_string_new(NULL);
	ck_assert_int_eq(kvb_mc_segment_to_json(&out, j2, NULL), KVB_OK);
	ck_assert_str_eq(j2->str, json);
	kvb_mc_segment_clear(&out);
	g_string_free(j2, TRUE);
	char *s = g_strdup(json);
	g_string_free(j, TRUE);
	return s;
}

static int count_substr(const char *h, const char *n)
{
	int c = 0;
	for (const char *p = strstr(h, n); p; p = strstr(p + 1, n))
		c++;
	return c;
}

START_TEST(test_segment_rdma_roundtrip)
{
	kvb_mc_device_t devs[2] = {{.name = "mlx5_0", .lid = 0}, {.name = "mlx5_1", .lid = 65535}};
	ck_assert_int_eq(kvb_mc_gid_parse(GID_TEXT, devs[0].gid, NULL), KVB_OK);
	ck_assert_int_eq(kvb_mc_gid_parse("fe:80:00:00:00:00:00:00:ab:cd:ef:ff:fe:00:00:01",
					  devs[1].gid, NULL),
			 KVB_OK);
	uint32_t rk0[2] = {12345, UINT32_MAX}, lk0[2] = {23456, 0};
	uint32_t rk1[2] = {1, 0}, lk1[2] = {3, 0}, mk1[2] = {0, 77};
	uint32_t rk2[2] = {7, 8}, lk2[2] = {9, 10};
	kvb_mc_buffer_t bufs[3] = {
		{.name = "cpu:0", .addr = 0x7f8a00000000ull, .length = 1ull << 30, .n_keys = 2,
		 .rkey = rk0, .lkey = lk0},
		{.name = "cuda:1", .addr = 1, .length = 1, .n_keys = 2, .rkey = rk1, .lkey = lk1,
		 .mirror_rkey = mk1},
		{.name = "*", .addr = (uint64_t)INT64_MAX - 4095, .length = 4096, .n_keys = 2,
		 .rkey = rk2, .lkey = lk2},
	};
	kvb_mc_location_t locs[2] = {
		{.name = "cpu:0", .n_preferred = 1, .preferred = {0}, .n_available = 1, .available = {1}},
		{.name = "cuda:1", .n_preferred = 2, .preferred = {1, 0}, .n_available = 0},
	};
	kvb_mc_segment_t seg = {
		.name = "10.0.0.1:15123",
		.protocol = "rdma",
		.tcp_proto_version = 1,
		.timestamp = "2026-08-22 13:12:18.123456",
		.rdma_server_name = "192.168.0.1:15123",
		.n_devices = 2,
		.devices = devs,
		.n_buffers = 3,
		.buffers = bufs,
		.n_locations = 2,
		.locations = locs,
	};
	char *json = seg_roundtrip(&seg);
	/* what a Mooncake decoder needs: tcp_data_port present, lower-case gids,
	 * keys per device in devices[] order, the matrix by NIC name */
	ck_assert_ptr_nonnull(strstr(json, "\"tcp_data_port\":0"));
	ck_assert_ptr_nonnull(strstr(json, "\"gid\":\"fe:80:00:00:00:00:00:00:ab:cd:ef:ff:fe:00:00:01\""));
	ck_assert_ptr_nonnull(strstr(json, "\"rkey\":[12345,4294967295],\"lkey\":[23456,0]"));
	/* GPU memory mlx5_1 cannot reach: key 0 for Mooncake, the mirror's for kvbridge */
	ck_assert_ptr_nonnull(strstr(json, "\"rkey\":[1,0],\"lkey\":[3,0],\"kvb_mirror_rkey\":[0,77]"));
	ck_assert_int_eq(count_substr(json, "kvb_mirror_rkey"), 1);
	ck_assert_ptr_nonnull(strstr(json, "\"addr\":140230682214400"));
	ck_assert_ptr_nonnull(strstr(json, "\"cuda:1\":[[\"mlx5_1\",\"mlx5_0\"],[]]"));
	ck_assert_ptr_nonnull(strstr(json, "\"rdma_server_name\":\"192.168.0.1:15123\""));
	ck_assert_ptr_null(strstr(json, "tcp_data_host"));
	g_free(json);

	/* no devices, buffers or matrix entries at all */
	kvb_mc_segment_t bare = {.name = "h:1", .protocol = "rdma", .tcp_proto_version = 1};
	json = seg_roundtrip(&bare);
	ck_assert_ptr_nonnull(strstr(json, "\"devices\":[]"));
	ck_assert_ptr_nonnull(strstr(json, "\"buffers\":[]"));
	ck_assert_ptr_nonnull(strstr(json, "\"priority_matrix\":{}"));
	g_free(json);
}
END_TEST

START_TEST(test_segment_tcp_roundtrip)
{
	kvb_mc_buffer_t bufs[2] = {
		{.name = "127.0.0.1:15123", .addr = 140000000000000ull, .length = 1048576},
		{.name = "127.0.0.1:15123", .addr = 140000001048576ull, .length = 4096},
	};
	kvb_mc_segment_t seg = {
		.name = "127.0.0.1:15123",
		.protocol = "tcp",
		.tcp_data_port = 15124,
		.tcp_data_host = "10.0.0.2",
		.tcp_proto_version = 2,
		.timestamp = "2026-08-22 13:12:18",
		.n_buffers = 2,
		.buffers = bufs,
	};
	char *json = seg_roundtrip(&seg);
	/* the whole text, byte for byte */
	ck_assert_str_eq(json, "{\"name\":\"127.0.0.1:15123\",\"protocol\":\"tcp\","
			       "\"tcp_data_port\":15124,\"tcp_data_host\":\"10.0.0.2\","
			       "\"tcp_proto_version\":2,\"timestamp\":\"2026-08-22 13:12:18\","
			       "\"buffers\":[{\"name\":\"127.0.0.1:15123\",\"addr\":140000000000000,"
			       "\"length\":1048576},{\"name\":\"127.0.0.1:15123\","
			       "\"addr\":140000001048576,\"length\":4096}]}");
	g_free(json);

	/* no tcp_data_host: the field is left out; version 0 is written as 1 */
	seg.tcp_data_host[0] = '\0';
	seg.tcp_proto_version = 0;
	GString *j = g_string_new(NULL);
	ck_assert_int_eq(kvb_mc_segment_to_json(&seg, j, NULL), KVB_OK);
	ck_assert_ptr_null(strstr(j->str, "tcp_data_host"));
	ck_assert_ptr_nonnull(strstr(j->str, "\"tcp_proto_version\":1"));
	kvb_mc_segment_t out;
	ck_assert_int_eq(kvb_mc_segment_from_json(j->str, j->len, &out, NULL), KVB_OK);
	ck_assert_str_eq(out.tcp_data_host, "");
	ck_assert_uint_eq(out.tcp_proto_version, 1);
	kvb_mc_segment_clear(&out);
	g_string_free(j, TRUE);

	/* kvbridge's kvb_tcp_sources: written after the name, read back; an
	 * entry that is not a numeric address is refused both ways */
	seg.n_tcp_sources = 2;
	g_strlcpy(seg.tcp_sources[0], "10.0.0.2", KVB_MC_ADDR_TEXT_MAX);
	g_strlcpy(seg.tcp_sources[1], "fd00::7", KVB_MC_ADDR_TEXT_MAX);
	j = g_string_new(NULL);
	ck_assert_int_eq(kvb_mc_segment_to_json(&seg, j, NULL), KVB_OK);
	ck_assert_ptr_nonnull(strstr(j->str, "\"kvb_tcp_sources\":[\"10.0.0.2\",\"fd00::7\"]"));
	ck_assert_int_eq(kvb_mc_segment_from_json(j->str, j->len, &out, NULL), KVB_OK);
	ck_assert_uint_eq(out.n_tcp_sources, 2);
	ck_assert_str_eq(out.tcp_sources[1], "fd00::7");
	kvb_mc_segment_clear(&out);
	g_string_free(j, TRUE);
	kvb_err_t err;
	g_strlcpy(seg.tcp_sources[1], "host.example", KVB_MC_ADDR_TEXT_MAX);
	j = g_string_new(NULL);
	ck_assert_int_eq(kvb_mc_segment_to_json(&seg, j, &err), KVB_ERR_INVALID);
	g_string_free(j, TRUE);
	const char *bad = "{\"name\":\"a:1\",\"protocol\":\"tcp\",\"tcp_data_port\":1,"
			  "\"kvb_tcp_sources\":[\"10.0.0.2\",\"host.example\"],\"buffers\":[]}";
	ck_assert_int_eq(kvb_mc_segment_from_json(bad, strlen(bad), &out, &err), KVB_ERR_PROTOCOL);
	ck_assert_ptr_nonnull(strstr(err.msg, "kvb_tcp_sources[1]"));
}
END_TEST

START_TEST(test_segment_to_json_refused)
{
	kvb_err_t err;
	uint32_t k[1] = {5};
	kvb_mc_device_t dev = {.name = "mlx5_0"};
	kvb_mc_buffer_t buf = {.name = "cpu:0", .addr = 4096, .length = 4096, .n_keys = 1,
			       .rkey = k, .lkey = k};
	kvb_mc_segment_t seg = {.name = "h:1", .protocol = "rdma", .n_devices = 1, .devices = &dev,
				.n_buffers = 1, .buffers = &buf};
	GString *j = g_string_new(NULL);
	ck_assert_int_eq(kvb_mc_segment_to_json(&seg, j, NULL), KVB_OK);
	/* a key count that is not the device count */
	g_string_truncate(j, 0);
	seg.n_devices = 0;
	ck_refused(kvb_mc_segment_to_json(&seg, j, &err), KVB_ERR_INVALID, "keys");
	ck_assert_uint_eq(j->len, 0);
	seg.n_devices = 1;
	/* numbers JSON (as json-glib reads it) cannot carry */
	buf.addr = (uint64_t)INT64_MAX + 1;
	ck_refused(kvb_mc_segment_to_json(&seg, j, &err), KVB_ERR_INVALID, "2^63");
	buf.addr = 4096;
	buf.length = UINT64_MAX;
	ck_refused(kvb_mc_segment_to_json(&seg, j, &err), KVB_ERR_INVALID, "2^63");
	ck_assert_uint_eq(j->len, 0);
	g_string_free(j, TRUE);
}
END_TEST

/* The tcp descriptor as the Mooncake wheel writes it (encodeSegmentDesc
 * fields plus tcp_proto_version and tcp_data_host), in the order of the
 * brief, and as jsoncpp's FastWriter puts it on the wire: keys sorted, one
 * trailing newline. */
static const char mc_tcp_desc[] =
	"{\"name\":\"127.0.0.1:15123\",\"protocol\":\"tcp\",\"tcp_data_port\":15124,"
	"\"tcp_proto_version\":2,\"tcp_data_host\":\"127.0.0.1\","
	"\"timestamp\":\"2026-08-22 13:12:18.123456\","
	"\"buffers\":[{\"name\":\"127.0.0.1:15123\",\"addr\":140000000000000,\"length\":1048576}], "
	"\"devices\":[], \"priority_matrix\":{}}";

static const char mc_tcp_desc_fastwriter[] =
	"{\"buffers\":[{\"addr\":140000000000000,\"length\":1048576,\"name\":\"127.0.0.1:15123\"}],"
	"\"name\":\"127.0.0.1:15123\",\"protocol\":\"tcp\",\"tcp_data_port\":15124,"
	"\"tcp_proto_version\":2,\"timestamp\":\"2026-08-22 13:12:18.123456\"}\n";

/* An rdma descriptor in jsoncpp's StyledWriter shape (sorted keys, three
 * spaces, newlines), with fields from other builds that must be ignored. */
static const char mc_rdma_desc_styled[] =
	"{\n"
	"   \"buffers\" : [\n"
	"      {\n"
	"         \"addr\" : 140230566494208,\n"
	"         \"length\" : 1073741824,\n"
	"         \"lkey\" : [ 2100, 2200 ],\n"
	"         \"name\" : \"cpu:0\",\n"
	"         \"protocol\" : \"rdma\",\n"
	"         \"rkey\" : [ 1100, 1200 ],\n"
	"         \"shm_name\" : \"\"\n"
	"      },\n"
	"      {\n"
	"         \"addr\" : 140231640236032,\n"
	"         \"length\" : 65536,\n"
	"         \"lkey\" : [ 2101, 2201 ],\n"
	"         \"name\" : \"*\",\n"
	"         \"rkey\" : [ 1101, 1201 ]\n"
	"      }\n"
	"   ],\n"
	"   \"cxl_name\" : \"\",\n"
	"   \"devices\" : [\n"
	"      {\n"
	"         \"gid\" : \"00:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:00:01\",\n"
	"         \"lid\" : 0,\n"
	"         \"name\" : \"mlx5_0\"\n"
	"      },\n"
	"      {\n"
	"         \"gid\" : \"FE:80:00:00:00:00:00:00:02:00:00:FF:FE:00:00:02\",\n"
	"         \"lid\" : 7,\n"
	"         \"name\" : \"mlx5_1\",\n"
	"         \"port\" : 1\n"
	"      }\n"
	"   ],\n"
	"   \"name\" : \"10.0.0.1:15123\",\n"
	"   \"priority_matrix\" : {\n"
	"      \"cpu:0\" : [ [ \"mlx5_0\" ], [ \"mlx5_1\" ] ],\n"
	"      \"cpu:1\" : [ [ \"mlx5_1\" ], [ \"mlx5_0\" ] ]\n"
	"   },\n"
	"   \"protocol\" : \"rdma\",\n"
	"   \"rank_info\" : { \"rankId\" : 3 },\n"
	"   \"tcp_data_port\" : 0,\n"
	"   \"timestamp\" : \"2026-08-22 13:12:18.123456\"\n"
	"}\n";

static void check_mc_tcp(const kvb_mc_segment_t *s)
{
	ck_assert_str_eq(s->name, "127.0.0.1:15123");
	ck_assert_str_eq(s->protocol, "tcp");
	ck_assert_uint_eq(s->tcp_data_port, 15124);
	ck_assert_uint_eq(s->tcp_proto_version, 2);
	ck_assert_str_eq(s->timestamp, "2026-08-22 13:12:18.123456");
	ck_assert_str_eq(s->rdma_server_name, "");
	ck_assert_uint_eq(s->n_devices, 0);
	ck_assert_uint_eq(s->n_locations, 0);
	ck_assert_uint_eq(s->n_buffers, 1);
	ck_assert_str_eq(s->buffers[0].name, "127.0.0.1:15123");
	ck_assert_uint_eq(s->buffers[0].addr, 140000000000000ull);
	ck_assert_uint_eq(s->buffers[0].length, 1048576);
	ck_assert_uint_eq(s->buffers[0].n_keys, 0);
}

START_TEST(test_segment_mooncake_shapes)
{
	kvb_mc_segment_t s;
	kvb_err_t err;
	kvb_err_clear(&err);
	int rc = kvb_mc_segment_from_json(mc_tcp_desc, strlen(mc_tcp_desc), &s, &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	check_mc_tcp(&s);
	ck_assert_str_eq(s.tcp_data_host, "127.0.0.1");
	kvb_mc_segment_clear(&s);

	rc = kvb_mc_segment_from_json(mc_tcp_desc_fastwriter, strlen(mc_tcp_desc_fastwriter), &s,
				      &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	check_mc_tcp(&s);
	ck_assert_str_eq(s.tcp_data_host, "");
	/* a buffer range check against what the peer published */
	ck_assert_ptr_eq(kvb_mc_segment_find(&s, 140000000000000ull, 1048576), &s.buffers[0]);
	ck_assert_ptr_null(kvb_mc_segment_find(&s, 140000000000000ull, 1048577));
	kvb_mc_segment_clear(&s);

	rc = kvb_mc_segment_from_json(mc_rdma_desc_styled, strlen(mc_rdma_desc_styled), &s, &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	ck_assert_str_eq(s.name, "10.0.0.1:15123");
	ck_assert_str_eq(s.protocol, "rdma");
	ck_assert_uint_eq(s.tcp_data_port, 0);
	ck_assert_uint_eq(s.tcp_proto_version, 1); /* absent: v1 */
	ck_assert_uint_eq(s.n_devices, 2);
	ck_assert_str_eq(s.devices[0].name, "mlx5_0");
	ck_assert_str_eq(s.devices[1].name, "mlx5_1");
	ck_assert_uint_eq(s.devices[1].lid, 7);
	static const uint8_t g1[16] = {0xfe, 0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0xff, 0xfe, 0, 0, 2};
	ck_assert_mem_eq(s.devices[1].gid, g1, 16);
	ck_assert_uint_eq(s.n_buffers, 2);
	ck_assert_str_eq(s.buffers[0].name, "cpu:0");
	ck_assert_uint_eq(s.buffers[0].addr, 140230566494208ull);
	ck_assert_uint_eq(s.buffers[0].length, 1ull << 30);
	ck_assert_uint_eq(s.buffers[0].n_keys, 2);
	ck_assert_uint_eq(s.buffers[0].rkey[0], 1100);
	ck_assert_uint_eq(s.buffers[0].rkey[1], 1200);
	ck_assert_uint_eq(s.buffers[0].lkey[0], 2100);
	ck_assert_uint_eq(s.buffers[0].lkey[1], 2200);
	ck_assert_uint_eq(s.buffers[1].rkey[1], 1201);
	ck_assert_uint_eq(s.n_locations, 2);
	for (uint32_t i = 0; i < 2; i++) {
		const kvb_mc_location_t *l = &s.locations[i];
		uint32_t pref = !strcmp(l->name, "cpu:0") ? 0 : 1;
		ck_assert_msg(!strcmp(l->name, "cpu:0") || !strcmp(l->name, "cpu:1"), "%s", l->name);
		ck_assert_uint_eq(l->n_preferred, 1);
		ck_assert_uint_eq(l->n_available, 1);
		ck_assert_uint_eq(l->preferred[0], pref);
		ck_assert_uint_eq(l->available[0], 1 - pref);
	}
	/* and it writes back in a shape it reads again to the same descriptor */
	char *json = seg_roundtrip(&s);
	g_free(json);
	kvb_mc_segment_clear(&s);
}
END_TEST

START_TEST(test_segment_tolerant)
{
	kvb_mc_segment_t s;
	kvb_err_t err;
	/* protocol as an array (multi-protocol builds): the first entry */
	static const char arr[] = "{\"name\":\"h:1\",\"protocol\":[\"rdma\",\"tcp\"]}";
	ck_assert_int_eq(kvb_mc_segment_from_json(arr, strlen(arr), &s, NULL), KVB_OK);
	ck_assert_str_eq(s.protocol, "rdma");
	assert_seg_empty(&s);
	kvb_mc_segment_clear(&s);
	/* the smallest descriptor: absent optional fields take their defaults,
	 * null members count as absent, a trailing newline (or CRLF) is fine */
	static const char *const minimal[] = {
		"{\"name\":\"h:1\",\"protocol\":\"tcp\"}",
		"{\"name\":\"h:1\",\"protocol\":\"tcp\"}\n",
		"{\"name\":\"h:1\",\"protocol\":\"tcp\"}\r\n",
		"  {\"protocol\":\"tcp\",\"name\":\"h:1\"}  \n",
		"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"tcp_data_port\":null,\"timestamp\":null,"
		"\"devices\":null,\"buffers\":null,\"priority_matrix\":null,\"tcp_data_host\":null}",
	};
	for (size_t i = 0; i < G_N_ELEMENTS(minimal); i++) {
		memset(&s, 0x5a, sizeof(s));
		kvb_err_clear(&err);
		int rc = kvb_mc_segment_from_json(minimal[i], strlen(minimal[i]), &s, &err);
		ck_assert_msg(rc == KVB_OK, "case %zu: %s", i, err.msg);
		ck_assert_str_eq(s.name, "h:1");
		ck_assert_str_eq(s.protocol, "tcp");
		ck_assert_uint_eq(s.tcp_data_port, 0);
		ck_assert_uint_eq(s.tcp_proto_version, 1);
		ck_assert_str_eq(s.timestamp, "");
		ck_assert_str_eq(s.tcp_data_host, "");
		ck_assert_str_eq(s.rdma_server_name, "");
		assert_seg_empty(&s);
		kvb_mc_segment_clear(&s);
	}
	/* unknown fields of every JSON type, at every level */
	static const char unk[] =
		"{\"x\":{\"y\":[1,2.5,null,true]},\"name\":\"h:1\",\"protocol\":\"rdma\","
		"\"future\":-1,\"devices\":[{\"name\":\"mlx5_0\",\"gid\":\"" GID_TEXT "\","
		"\"extra\":[{}],\"efa_addr\":\"00ff\"}],\"buffers\":[{\"name\":\"cpu:0\",\"addr\":1,"
		"\"length\":2,\"rkey\":[3],\"lkey\":[4],\"cxi\":1.5,\"shm_name\":\"s\"}],"
		"\"priority_matrix\":{\"cpu:0\":[[\"mlx5_0\"],[]]},\"version\":\"0.3.13\"}";
	kvb_err_clear(&err);
	int rc = kvb_mc_segment_from_json(unk, strlen(unk), &s, &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	ck_assert_uint_eq(s.n_devices, 1);
	ck_assert_uint_eq(s.devices[0].lid, 0); /* lid absent: 0 */
	ck_assert_uint_eq(s.n_buffers, 1);
	ck_assert_uint_eq(s.buffers[0].rkey[0], 3);
	ck_assert_uint_eq(s.buffers[0].lkey[0], 4);
	ck_assert_uint_eq(s.n_locations, 1);
	ck_assert_uint_eq(s.locations[0].n_preferred, 1);
	ck_assert_uint_eq(s.locations[0].n_available, 0);
	kvb_mc_segment_clear(&s);
	/* negative numbers the decoder never reads, and digits in strings */
	static const char negs[] =
		"{\"name\":\"h:-99999999999999999999\",\"protocol\":\"tcp\",\"a\":-9223372036854775808,"
		"\"b\":-1e30,\"c\":-99999999999999999999.5,\"d\":[-0,-1],\"e\":\"\\\"-99999999999999999999\"}";
	kvb_err_clear(&err);
	rc = kvb_mc_segment_from_json(negs, strlen(negs), &s, &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	ck_assert_str_eq(s.name, "h:-99999999999999999999");
	kvb_mc_segment_clear(&s);
	/* keys are optional (Mooncake's rdma decoder refuses them empty, but a
	 * buffer without keys is a tcp buffer and the range is still usable) */
	static const char nokeys[] =
		"{\"name\":\"h:1\",\"protocol\":\"rdma\",\"devices\":[{\"name\":\"mlx5_0\",\"gid\":\"" GID_TEXT
		"\"}],\"buffers\":[{\"name\":\"cpu:0\",\"addr\":1,\"length\":2,\"rkey\":[],\"lkey\":[]}]}";
	ck_assert_int_eq(kvb_mc_segment_from_json(nokeys, strlen(nokeys), &s, NULL), KVB_OK);
	ck_assert_uint_eq(s.buffers[0].n_keys, 0);
	kvb_mc_segment_clear(&s);
	/* the largest values each field allows */
	static const char maxv[] =
		"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"tcp_data_port\":65535,\"tcp_proto_version\":255,"
		"\"buffers\":[{\"name\":\"b\",\"addr\":9223372036854775807,\"length\":1},"
		"{\"name\":\"c\",\"addr\":1,\"length\":9223372036854775807}]}";
	kvb_err_clear(&err);
	rc = kvb_mc_segment_from_json(maxv, strlen(maxv), &s, &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	ck_assert_uint_eq(s.tcp_data_port, 65535);
	ck_assert_uint_eq(s.tcp_proto_version, 255);
	ck_assert_uint_eq(s.buffers[0].addr, (uint64_t)INT64_MAX);
	ck_assert_uint_eq(s.buffers[1].length, (uint64_t)INT64_MAX);
	kvb_mc_segment_clear(&s);
}
END_TEST

/* Decoding json is refused with KVB_ERR_PROTOCOL, a message holding needle
 * (when given), and nothing left allocated. */
static void refuse_desc_len(const char *json, size_t len, const char *needle)
{
	kvb_mc_segment_t s;
	kvb_err_t err;
	kvb_err_clear(&err);
	memset(&s, 0xa5, sizeof(s));
	int rc = kvb_mc_segment_from_json(json, len, &s, &err);
	ck_assert_msg(rc == KVB_ERR_PROTOCOL, "rc %d for %.*s", rc, (int)MIN(len, 400), json);
	ck_assert_int_eq(err.code, KVB_ERR_PROTOCOL);
	ck_assert_msg(err.msg[0], "no message for %.*s", (int)MIN(len, 400), json);
	if (needle)
		ck_assert_msg(strstr(err.msg, needle), "message '%s' lacks '%s' for %.*s", err.msg,
			      needle, (int)MIN(len, 400), json);
	assert_seg_empty(&s);
	ck_assert_int_eq(kvb_mc_segment_from_json(json, len, &s, NULL), KVB_ERR_PROTOCOL);
	assert_seg_empty(&s);
}

static void refuse_desc(const char *json, const char *needle)
{
	refuse_desc_len(json, strlen(json), needle);
}

#define D_HEAD "{\"name\":\"10.0.0.1:15123\",\"protocol\":\"rdma\",\"tcp_data_port\":0,"
#define D_DEV0 "{\"name\":\"mlx5_0\",\"lid\":0,\"gid\":\"" GID_TEXT "\"}"
#define D_DEV1 "{\"name\":\"mlx5_1\",\"lid\":1,\"gid\":\"" GID_TEXT "\"}"
#define D_DEVS "\"devices\":[" D_DEV0 "," D_DEV1 "]"
#define D_BUF(name, addr, len, keys) \
	"{\"name\":\"" name "\",\"addr\":" addr ",\"length\":" len keys "}"
#define D_KEYS2 ",\"rkey\":[1,2],\"lkey\":[3,4]"

START_TEST(test_segment_refused_fields)
{
	/* the template every case below breaks in one place is valid */
	static const char good[] = D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "4096", "4096",
									 D_KEYS2) "],"
				   "\"priority_matrix\":{\"cpu:0\":[[\"mlx5_0\"],[\"mlx5_1\"]]}}";
	kvb_mc_segment_t s;
	ck_assert_int_eq(kvb_mc_segment_from_json(good, strlen(good), &s, NULL), KVB_OK);
	kvb_mc_segment_clear(&s);

	static const struct {
		const char *json, *needle;
	} bad[] = {
		/* top level */
		{"{\"protocol\":\"rdma\"}", "name missing"},
		{"{\"name\":1,\"protocol\":\"rdma\"}", "name is not a string"},
		{"{\"name\":\"h:1\"}", "protocol missing"},
		{"{\"name\":\"h:1\",\"protocol\":5}", "protocol is not a string"},
		{"{\"name\":\"h:1\",\"protocol\":[]}", "protocol"},
		{"{\"name\":\"h:1\",\"protocol\":[7]}", "protocol"},
		{"{\"name\":\"h:1\",\"protocol\":[\"sixteen-chars-xx\"]}", "protocol"},
		{"{\"name\":\"h:1\",\"protocol\":\"sixteen-chars-xx\"}", "protocol longer"},
		{"{\"name\":\"h:1\",\"protocol\":{}}", "protocol"},
		{"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"tcp_data_port\":\"15124\"}", "tcp_data_port"},
		{"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"tcp_data_port\":65536}", "tcp_data_port"},
		{"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"tcp_data_port\":-1}", "tcp_data_port"},
		{"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"tcp_data_port\":1.5}", "tcp_data_port"},
		{"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"tcp_data_port\":true}", "tcp_data_port"},
		{"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"tcp_proto_version\":256}", "tcp_proto_version"},
		{"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"tcp_proto_version\":\"2\"}",
		 "tcp_proto_version"},
		{"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"tcp_data_host\":[]}", "tcp_data_host"},
		{"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"timestamp\":20260822}", "timestamp"},
		{"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"timestamp\":"
		 "\"0123456789012345678901234567890123456789012345678901234567890123\"}",
		 "timestamp longer"},
		{"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"rdma_server_name\":false}", "rdma_server_name"},
		/* devices */
		{D_HEAD "\"devices\":{}}", "devices is not an array"},
		{D_HEAD "\"devices\":[1]}", "devices[0] is not an object"},
		{D_HEAD "\"devices\":[" D_DEV0 ",[]]}", "devices[1] is not an object"},
		{D_HEAD "\"devices\":[{\"name\":\"\",\"lid\":0,\"gid\":\"" GID_TEXT "\"}]}", "empty name"},
		{D_HEAD "\"devices\":[{\"lid\":0,\"gid\":\"" GID_TEXT "\"}]}", "name missing"},
		{D_HEAD "\"devices\":[{\"name\":\"mlx5_0\",\"lid\":0}]}", "gid missing"},
		{D_HEAD "\"devices\":[{\"name\":\"mlx5_0\",\"lid\":0,\"gid\":\"\"}]}", "gid"},
		{D_HEAD "\"devices\":[{\"name\":\"mlx5_0\",\"lid\":0,\"gid\":\"fe80::1\"}]}", "gid"},
		{D_HEAD "\"devices\":[{\"name\":\"mlx5_0\",\"lid\":0,\"gid\":"
			"\"00:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:00:zz\"}]}",
		 "gid"},
		{D_HEAD "\"devices\":[{\"name\":\"mlx5_0\",\"lid\":0,\"gid\":0}]}", "gid"},
		{D_HEAD "\"devices\":[{\"name\":\"mlx5_0\",\"lid\":65536,\"gid\":\"" GID_TEXT "\"}]}",
		 "lid"},
		{D_HEAD "\"devices\":[{\"name\":\"mlx5_0\",\"lid\":-1,\"gid\":\"" GID_TEXT "\"}]}", "lid"},
		{D_HEAD "\"devices\":[{\"name\":"
			"\"0123456789012345678901234567890123456789012345678901234567890123\","
			"\"gid\":\"" GID_TEXT "\"}]}",
		 "name longer"},
		/* buffers */
		{D_HEAD "\"buffers\":{}}", "buffers is not an array"},
		{D_HEAD "\"buffers\":[\"cpu:0\"]}", "buffers[0] is not an object"},
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("", "4096", "4096", D_KEYS2) "]}", "empty name"},
		{D_HEAD D_DEVS ",\"buffers\":[{\"addr\":4096,\"length\":4096" D_KEYS2 "}]}",
		 "name missing"},
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "0", "4096", D_KEYS2) "]}", "addr 0"},
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "4096", "0", D_KEYS2) "]}", "length 0"},
		{D_HEAD D_DEVS ",\"buffers\":[{\"name\":\"cpu:0\",\"length\":4096" D_KEYS2 "}]}",
		 "addr missing"},
		{D_HEAD D_DEVS ",\"buffers\":[{\"name\":\"cpu:0\",\"addr\":4096" D_KEYS2 "}]}",
		 "length missing"},
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "\"4096\"", "4096", D_KEYS2) "]}", "addr"},
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "4096.0", "4096", D_KEYS2) "]}", "addr"},
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "-4096", "4096", D_KEYS2) "]}", "addr"},
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "4096", "true", D_KEYS2) "]}", "length"},
		/* a range that wraps: above 2^63, which JSON numbers here cannot carry */
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "18446744073709547520", "8192",
						      D_KEYS2) "]}",
		 "addr"},
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "4096", "18446744073709551615",
						      D_KEYS2) "]}",
		 "length"},
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "9223372036854775808", "1", D_KEYS2) "]}",
		 "addr"},
		/* json-glib reads these as 1, 65535 and INT64_MAX */
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "-18446744073709551615", "1",
						      D_KEYS2) "]}",
		 "below -2^63"},
		{"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"tcp_data_port\":-18446744073709486081}",
		 "below -2^63"},
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "4096", "-9223372036854775809",
						      D_KEYS2) "]}",
		 "below -2^63"},
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "4096", "-00009223372036854775809",
						      D_KEYS2) "]}",
		 "below -2^63"},
		/* keys */
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "4096", "4096",
						      ",\"rkey\":[1,2],\"lkey\":[3]") "]}",
		 "2 rkeys, 1 lkeys for 2 devices"},
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "4096", "4096", ",\"rkey\":[1,2]") "]}",
		 "2 rkeys, 0 lkeys"},
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "4096", "4096",
						      ",\"rkey\":[1],\"lkey\":[3]") "]}",
		 "1 rkeys, 1 lkeys for 2 devices"},
		{D_HEAD "\"buffers\":[" D_BUF("cpu:0", "4096", "4096", D_KEYS2) "]}",
		 "2 rkeys, 2 lkeys for 0 devices"},
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "4096", "4096",
						      ",\"rkey\":[1,-2],\"lkey\":[3,4]") "]}",
		 "rkey[1]"},
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "4096", "4096",
						      ",\"rkey\":[1,2],\"lkey\":[3,4294967296]") "]}",
		 "lkey[1]"},
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "4096", "4096",
						      ",\"rkey\":[\"1\",2],\"lkey\":[3,4]") "]}",
		 "rkey[0]"},
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "4096", "4096",
						      ",\"rkey\":1,\"lkey\":[3,4]") "]}",
		 "rkey is not an array"},
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "4096", "4096",
						      ",\"rkey\":[1,2],\"lkey\":{}") "]}",
		 "lkey is not an array"},
		/* the second buffer is the bad one: the first one's keys are freed */
		{D_HEAD D_DEVS ",\"buffers\":[" D_BUF("cpu:0", "4096", "4096", D_KEYS2) ","
			D_BUF("cpu:1", "8192", "4096", ",\"rkey\":[1,2],\"lkey\":[3,\"x\"]") "]}",
		 "buffers[1].lkey[1]"},
		/* priority matrix */
		{D_HEAD D_DEVS ",\"priority_matrix\":[]}", "priority_matrix is not an object"},
		{D_HEAD D_DEVS ",\"priority_matrix\":\"cpu:0\"}", "priority_matrix is not an object"},
		{D_HEAD D_DEVS ",\"priority_matrix\":{\"cpu:0\":{}}}", "[[preferred], [available]]"},
		{D_HEAD D_DEVS ",\"priority_matrix\":{\"cpu:0\":null}}", "[[preferred], [available]]"},
		{D_HEAD D_DEVS ",\"priority_matrix\":{\"cpu:0\":[]}}", "[[preferred], [available]]"},
		{D_HEAD D_DEVS ",\"priority_matrix\":{\"cpu:0\":[[\"mlx5_0\"]]}}",
		 "[[preferred], [available]]"},
		{D_HEAD D_DEVS ",\"priority_matrix\":{\"cpu:0\":[[\"mlx5_0\"],[],[]]}}",
		 "[[preferred], [available]]"},
		{D_HEAD D_DEVS ",\"priority_matrix\":{\"cpu:0\":[\"mlx5_0\",[]]}}",
		 "preferred list is not an array"},
		{D_HEAD D_DEVS ",\"priority_matrix\":{\"cpu:0\":[[],\"mlx5_1\"]}}",
		 "available list is not an array"},
		{D_HEAD D_DEVS ",\"priority_matrix\":{\"cpu:0\":[[0],[]]}}", "is not a NIC name"},
		{D_HEAD D_DEVS ",\"priority_matrix\":{\"cpu:0\":[[\"mlx5_0\"],[\"mlx5_9\"]]}}",
		 "unknown NIC 'mlx5_9'"},
		{D_HEAD "\"priority_matrix\":{\"cpu:0\":[[\"mlx5_0\"],[]]}}", "unknown NIC"},
		{D_HEAD D_DEVS ",\"priority_matrix\":{\"cpu:0\":[[\"mlx5_0\"],[]],"
			"\"cpu:1\":[[\"MLX5_0\"],[]]}}",
		 "unknown NIC"},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++)
		refuse_desc(bad[i].json, bad[i].needle);
}
END_TEST

START_TEST(test_segment_refused_syntax)
{
	/* not an object, not JSON, not UTF-8, NUL bytes */
	static const char *const bad[] = {
		"", " ", "\n", "null", "true", "1", "\"desc\"", "[]",
		"[{\"name\":\"h:1\",\"protocol\":\"tcp\"}]", "{", "}", "{\"name\":",
		"{\"name\":\"h:1\",\"protocol\":\"tcp\",}", "{\"name\":\"h:1\" \"protocol\":\"tcp\"}",
		"{\"name\":\"h:1\",\"protocol\":\"tcp\"} x",
		"{\"name\":\"h\xff:1\",\"protocol\":\"tcp\"}",
		"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"timestamp\":\"\\ud800\"}",
	};
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++)
		refuse_desc(bad[i], NULL);
	static const char nul[] = "{\"name\":\"h:1\",\"protocol\":\"tcp\"}\0";
	refuse_desc_len(nul, sizeof(nul) - 1, "NUL");
	static const char nul2[] = "{\"name\":\"h\0:1\",\"protocol\":\"tcp\"}";
	refuse_desc_len(nul2, sizeof(nul2) - 1, "NUL");
	refuse_desc("[]", "not a JSON object");
	refuse_desc("{\"name\":", "invalid JSON");
	/* a lone surrogate escape: json-glib makes non-UTF-8 bytes of it */
	refuse_desc("{\"name\":\"h\\ud800x\",\"protocol\":\"tcp\"}", "name is not valid UTF-8");
	refuse_desc("{\"name\":\"h:1\",\"protocol\":\"tcp\",\"timestamp\":\"\\udbffx\"}",
		    "timestamp is not valid UTF-8");
	refuse_desc("{\"name\":\"h:1\",\"protocol\":[\"\\ud800x\"]}", "protocol");
	refuse_desc("{\"name\":\"h:1\",\"protocol\":\"rdma\",\"priority_matrix\":{\"\\ud800x\":[[],[]]}}",
		    "not UTF-8");
	refuse_desc("{\"name\":\"h:1\",\"protocol\":\"tcp\",\"buffers\":[{\"name\":\"\\ud800x\","
		    "\"addr\":1,\"length\":1}]}",
		    "buffers[0]: name is not valid UTF-8");
	/* a surrogate pair is one character, and comes back as it went in */
	static const char pair[] = "{\"name\":\"h\\ud83d\\ude00:1\",\"protocol\":\"tcp\"}";
	kvb_mc_segment_t ps;
	ck_assert_int_eq(kvb_mc_segment_from_json(pair, strlen(pair), &ps, NULL), KVB_OK);
	ck_assert_str_eq(ps.name, "h\xf0\x9f\x98\x80:1");
	g_free(seg_roundtrip(&ps));
	kvb_mc_segment_clear(&ps);

	/* every strict prefix of a valid descriptor is refused (and so is
	 * every prefix the trailing newline does not finish) */
	static const char *const full[] = {mc_rdma_desc_styled, mc_tcp_desc};
	for (size_t f = 0; f < G_N_ELEMENTS(full); f++) {
		const char *j = full[f];
		size_t n = strlen(j);
		while (n && (j[n - 1] == '\n' || j[n - 1] == ' '))
			n--;
		kvb_mc_segment_t s;
		ck_assert_int_eq(kvb_mc_segment_from_json(j, n, &s, NULL), KVB_OK);
		kvb_mc_segment_clear(&s);
		for (size_t len = 0; len < n; len++)
			refuse_desc_len(j, len, NULL);
	}
}
END_TEST

/* A descriptor JSON with n_dev devices, n_buf tcp-style buffers (no keys)
 * and n_loc matrix entries listing n_names NIC names each. */
static GString *gen_desc(uint32_t n_dev, uint32_t n_buf, uint32_t n_loc, uint32_t n_names)
{
	GString *j = g_string_new("{\"name\":\"h:1\",\"protocol\":\"rdma\",\"devices\":[");
	for (uint32_t i = 0; i < n_dev; i++)
		g_string_append_printf(j, "%s{\"name\":\"d%u\",\"gid\":\"" GID_TEXT "\"}", i ? "," : "",
				       i);
	g_string_append(j, "],\"buffers\":[");
	for (uint32_t i = 0; i < n_buf; i++)
		g_string_append_printf(j, "%s{\"name\":\"b\",\"addr\":%u,\"length\":1}", i ? "," : "",
				       i + 1);
	g_string_append(j, "],\"priority_matrix\":{");
	for (uint32_t i = 0; i < n_loc; i++) {
		g_string_append_printf(j, "%s\"cpu:%u\":[[", i ? "," : "", i);
		for (uint32_t k = 0; k < n_names; k++)
			g_string_append_printf(j, "%s\"d%u\"", k ? "," : "", k % (n_dev ? n_dev : 1));
		g_string_append(j, "],[]]");
	}
	g_string_append(j, "}}");
	return j;
}

/* What json-glib would take but JSON and Mooncake's jsoncpp do not. */
START_TEST(test_segment_not_json)
{
	static const char *bad[] = {
		"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"tcp_data_port\":2}{}",
		"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"tcp_data_port\":2} []",
		"{'name':'h:1','protocol':'tcp','tcp_data_port':2}",
		"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"tcp_data_port\":02}",
		"{\"name\":\"h:1\",\"protocol\":\"tcp\",\"tcp_data_port\":-01}",
	};
	static const char *why[] = {"after the JSON value", "after the JSON value", "single-quoted",
				    "leading zero", "leading zero"};
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
		kvb_mc_segment_t seg;
		kvb_err_t err;
		kvb_err_clear(&err);
		ck_assert_int_eq(kvb_mc_segment_from_json(bad[i], strlen(bad[i]), &seg, &err),
				 KVB_ERR_PROTOCOL);
		ck_assert_msg(strstr(err.msg, why[i]), "%zu: %s", i, err.msg);
	}
	/* still fine: whitespace after the value, zeros that are whole numbers,
	 * brackets and quotes inside strings */
	static const char ok[] = "{\"name\":\"h:1\",\"protocol\":\"tcp\",\"tcp_data_port\":2,"
				 "\"tcp_proto_version\":0,\"timestamp\":\"{'x'} [01]\",\"buffers\":[]}\n \t";
	kvb_mc_segment_t seg;
	kvb_err_t err;
	ck_assert_msg(kvb_mc_segment_from_json(ok, strlen(ok), &seg, &err) == KVB_OK, "%s", err.msg);
	kvb_mc_segment_clear(&seg);
}
END_TEST

START_TEST(test_segment_limits)
{
	kvb_mc_segment_t s;
	kvb_err_t err;
	/* exactly at every limit: accepted */
	GString *j = gen_desc(KVB_MC_MAX_DEVICES, 3, KVB_MC_MAX_LOCATIONS, KVB_MC_MAX_DEVICES);
	kvb_err_clear(&err);
	int rc = kvb_mc_segment_from_json(j->str, j->len, &s, &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	ck_assert_uint_eq(s.n_devices, KVB_MC_MAX_DEVICES);
	ck_assert_uint_eq(s.n_locations, KVB_MC_MAX_LOCATIONS);
	ck_assert_uint_eq(s.locations[KVB_MC_MAX_LOCATIONS - 1].n_preferred, KVB_MC_MAX_DEVICES);
	ck_assert_uint_eq(s.locations[7].preferred[KVB_MC_MAX_DEVICES - 1], KVB_MC_MAX_DEVICES - 1);
	kvb_mc_segment_clear(&s);
	g_string_free(j, TRUE);
	/* one above each */
	j = gen_desc(KVB_MC_MAX_DEVICES + 1, 1, 0, 0);
	refuse_desc_len(j->str, j->len, "65 devices");
	g_string_free(j, TRUE);
	j = gen_desc(2, 1, KVB_MC_MAX_LOCATIONS + 1, 1);
	refuse_desc_len(j->str, j->len, "257 priority_matrix entries");
	g_string_free(j, TRUE);
	j = gen_desc(2, 1, 1, KVB_MC_MAX_DEVICES + 1);
	refuse_desc_len(j->str, j->len, "lists 65 NICs");
	g_string_free(j, TRUE);
	j = gen_desc(1, KVB_MC_MAX_BUFFERS + 1, 0, 0);
	refuse_desc_len(j->str, j->len, "65537 buffers");
	g_string_free(j, TRUE);
	/* 65 keys for 64 devices */
	j = gen_desc(KVB_MC_MAX_DEVICES, 0, 0, 0);
	g_string_truncate(j, j->len - strlen("],\"priority_matrix\":{}}"));
	g_string_append(j, "{\"name\":\"b\",\"addr\":1,\"length\":1,\"rkey\":[");
	for (int k = 0; k <= (int)KVB_MC_MAX_DEVICES; k++)
		g_string_append_printf(j, "%s%d", k ? "," : "", k);
	g_string_append(j, "]}]}");
	refuse_desc_len(j->str, j->len, "65 keys");
	g_string_free(j, TRUE);
	/* names at their length limit and one byte over */
	char name[KVB_MC_NAME_MAX + 1];
	memset(name, 'n', KVB_MC_NAME_MAX - 1);
	name[KVB_MC_NAME_MAX - 1] = '\0';
	char *ok = g_strdup_printf("{\"name\":\"%s\",\"protocol\":\"rdma\",\"devices\":[" D_DEV0 "],"
				   "\"priority_matrix\":{\"%s\":[[],[]]}}",
				   name, name);
	kvb_err_clear(&err);
	rc = kvb_mc_segment_from_json(ok, strlen(ok), &s, &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	ck_assert_str_eq(s.name, name);
	ck_assert_str_eq(s.locations[0].name, name);
	kvb_mc_segment_clear(&s);
	g_free(ok);
	strcat(name, "n");
	char *bad = g_strdup_printf("{\"name\":\"%s\",\"protocol\":\"rdma\"}", name);
	refuse_desc(bad, "name longer than 255 bytes");
	g_free(bad);
	bad = g_strdup_printf("{\"name\":\"h:1\",\"protocol\":\"rdma\",\"priority_matrix\":{\"%s\":"
			      "[[],[]]}}",
			      name);
	refuse_desc(bad, "location name too long");
	g_free(bad);
	/* a location and a NIC name as long as allowed (or longer): the
	 * message still says what is wrong */
	name[KVB_MC_NAME_MAX - 1] = '\0';
	bad = g_strdup_printf("{\"name\":\"h:1\",\"protocol\":\"rdma\",\"priority_matrix\":{\"%s\":"
			      "[[\"%s%s\"],[]]}}",
			      name, name, name);
	refuse_desc(bad, "names unknown NIC");
	g_free(bad);
	bad = g_strdup_printf("{\"name\":\"h:1\",\"protocol\":\"rdma\",\"priority_matrix\":{\"%s\":"
			      "[[],[1]]}}",
			      name);
	refuse_desc(bad, "is not a NIC name");
	g_free(bad);
	bad = g_strdup_printf("{\"name\":\"h:1\",\"protocol\":\"rdma\",\"priority_matrix\":{\"%s\":"
			      "[[]]}}",
			      name);
	refuse_desc(bad, "is not [[preferred], [available]]");
	g_free(bad);
}
END_TEST

START_TEST(test_segment_many_buffers)
{
	/* KVB_MC_MAX_BUFFERS is accepted (a P2P descriptor of that size is far
	 * above 1 MiB, so this is what MC_HANDSHAKE_MAX_LENGTH is raised for) */
	GString *j = gen_desc(0, KVB_MC_MAX_BUFFERS, 0, 0);
	kvb_mc_segment_t s;
	kvb_err_t err;
	kvb_err_clear(&err);
	int rc = kvb_mc_segment_from_json(j->str, j->len, &s, &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	ck_assert_uint_eq(s.n_buffers, KVB_MC_MAX_BUFFERS);
	ck_assert_uint_eq(s.buffers[KVB_MC_MAX_BUFFERS - 1].addr, KVB_MC_MAX_BUFFERS);
	ck_assert_ptr_eq(kvb_mc_segment_find(&s, KVB_MC_MAX_BUFFERS, 1),
			 &s.buffers[KVB_MC_MAX_BUFFERS - 1]);
	kvb_mc_segment_clear(&s);
	g_string_free(j, TRUE);
}
END_TEST

START_TEST(test_segment_find)
{
	kvb_mc_buffer_t bufs[4] = {
		{.name = "a", .addr = 0x1000, .length = 0x1000},
		{.name = "b", .addr = 0x2000, .length = 0x1000}, /* adjacent to a */
		{.name = "c", .addr = 0x10000, .length = 0x100},
		{.name = "top", .addr = UINT64_MAX - 0xff, .length = 0xff}, /* ends at 2^64 - 1 */
	};
	kvb_mc_segment_t seg = {.name = "h:1", .protocol = "tcp", .n_buffers = 4, .buffers = bufs};
	const kvb_mc_buffer_t *a = &bufs[0], *b = &bufs[1], *c = &bufs[2], *top = &bufs[3];
	ck_assert_ptr_eq(kvb_mc_segment_find(&seg, 0x1000, 1), a);          /* first byte */
	ck_assert_ptr_eq(kvb_mc_segment_find(&seg, 0x1fff, 1), a);          /* last byte */
	ck_assert_ptr_eq(kvb_mc_segment_find(&seg, 0x1000, 0x1000), a);     /* all of it */
	ck_assert_ptr_eq(kvb_mc_segment_find(&seg, 0x2000, 1), b);          /* one past a */
	ck_assert_ptr_eq(kvb_mc_segment_find(&seg, 0x1800, 0x800), a);
	ck_assert_ptr_null(kvb_mc_segment_find(&seg, 0x1000, 0x1001));      /* spills into b */
	ck_assert_ptr_null(kvb_mc_segment_find(&seg, 0x1fff, 2));           /* spans a and b */
	ck_assert_ptr_null(kvb_mc_segment_find(&seg, 0x1000, 0x2000));      /* all of a and b */
	ck_assert_ptr_null(kvb_mc_segment_find(&seg, 0xfff, 1));            /* one before a */
	ck_assert_ptr_null(kvb_mc_segment_find(&seg, 0xfff, 2));
	ck_assert_ptr_null(kvb_mc_segment_find(&seg, 0x3000, 1));           /* one past b */
	ck_assert_ptr_eq(kvb_mc_segment_find(&seg, 0x100ff, 1), c);
	ck_assert_ptr_null(kvb_mc_segment_find(&seg, 0x10100, 1));          /* one past c */
	ck_assert_ptr_null(kvb_mc_segment_find(&seg, 0x10000, 0x101));
	ck_assert_ptr_null(kvb_mc_segment_find(&seg, 0x5000, 1));           /* in a gap */
	ck_assert_ptr_null(kvb_mc_segment_find(&seg, 0, 1));
	/* len 0 never matches, even inside a buffer */
	ck_assert_ptr_null(kvb_mc_segment_find(&seg, 0x1000, 0));
	ck_assert_ptr_null(kvb_mc_segment_find(&seg, 0x1800, 0));
	/* the top of the address space: up to the last byte, no wrap */
	ck_assert_ptr_eq(kvb_mc_segment_find(&seg, UINT64_MAX - 1, 1), top);
	ck_assert_ptr_eq(kvb_mc_segment_find(&seg, UINT64_MAX - 0xff, 0xff), top);
	ck_assert_ptr_null(kvb_mc_segment_find(&seg, UINT64_MAX, 1));
	ck_assert_ptr_null(kvb_mc_segment_find(&seg, UINT64_MAX - 1, 2));
	ck_assert_ptr_null(kvb_mc_segment_find(&seg, 0x1000, UINT64_MAX));  /* wraps */
	ck_assert_ptr_null(kvb_mc_segment_find(&seg, UINT64_MAX - 0x80, 0x100));
	/* no buffers at all */
	kvb_mc_segment_t empty;
	memset(&empty, 0, sizeof(empty));
	ck_assert_ptr_null(kvb_mc_segment_find(&empty, 0x1000, 1));
}
END_TEST

START_TEST(test_segment_clear)
{
	kvb_mc_segment_t s;
	memset(&s, 0, sizeof(s));
	kvb_mc_segment_clear(&s);
	kvb_mc_segment_clear(&s);
	assert_seg_empty(&s);
	kvb_mc_segment_clear(NULL);
	ck_assert_int_eq(kvb_mc_segment_from_json(mc_rdma_desc_styled, strlen(mc_rdma_desc_styled),
						  &s, NULL),
			 KVB_OK);
	ck_assert_ptr_nonnull(s.buffers[0].rkey);
	kvb_mc_segment_clear(&s);
	assert_seg_empty(&s);
	ck_assert_str_eq(s.name, "");
	kvb_mc_segment_clear(&s); /* a cleared descriptor clears again */
	assert_seg_empty(&s);
	/* decoding into a used descriptor starts afresh (the caller clears first) */
	ck_assert_int_eq(kvb_mc_segment_from_json(mc_tcp_desc, strlen(mc_tcp_desc), &s, NULL), KVB_OK);
	check_mc_tcp(&s);
	kvb_mc_segment_clear(&s);
}
END_TEST

/* ---- HandShakeDesc --------------------------------------------------------- */

static void assert_hs_eq(const kvb_mc_handshake_t *a, const kvb_mc_handshake_t *b)
{
	ck_assert_str_eq(a->local_nic_path, b->local_nic_path);
	ck_assert_str_eq(a->peer_nic_path, b->peer_nic_path);
	ck_assert_uint_eq(a->n_qp, b->n_qp);
	for (uint32_t i = 0; i < a->n_qp; i++)
		ck_assert_uint_eq(a->qp_num[i], b->qp_num[i]);
	ck_assert_int_eq(a->has_gid, b->has_gid);
	if (a->has_gid) {
		ck_assert_mem_eq(a->local_gid, b->local_gid, 16);
		ck_assert_uint_eq(a->local_lid, b->local_lid);
	}
	ck_assert_int_eq(a->ready_ack, b->ready_ack);
	ck_assert_str_eq(a->reply_msg, b->reply_msg);
	ck_assert_str_eq(a->payload, b->payload);
}

static char *hs_roundtrip(const kvb_mc_handshake_t *in)
{
	GString *j = g_string_new(NULL);
	kvb_err_t err;
	kvb_err_clear(&err);
	int rc = kvb_mc_handshake_to_json(in, j, &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	kvb_mc_handshake_t out;
	rc = kvb_mc_handshake_from_json(j->str, j->len, &out, &err);
	ck_assert_msg(rc == KVB_OK, "%s in %s", err.msg, j->str);
	assert_hs_eq(in, &out);
	GString *j2 = g_string_new(NULL);
	ck_assert_int_eq(kvb_mc_handshake_to_json(&out, j2, NULL), KVB_OK);
	ck_assert_str_eq(j2->str, j->str);
	g_string_free(j2, TRUE);
	return g_string_free(j, FALSE);
}

START_TEST(test_handshake_roundtrip)
{
	kvb_mc_handshake_t hs = {
		.local_nic_path = "10.0.0.1:15123@mlx5_0",
		.peer_nic_path = "10.0.0.2:15123@mlx5_1",
		.n_qp = 2,
		.qp_num = {0x123, 0xffffff},
		.has_gid = true,
		.local_lid = 65535,
		.ready_ack = 0,
	};
	ck_assert_int_eq(kvb_mc_gid_parse(GID_TEXT, hs.local_gid, NULL), KVB_OK);
	char *json = hs_roundtrip(&hs);
	ck_assert_ptr_nonnull(strstr(json, "\"local_gid\":\"" GID_TEXT "\""));
	ck_assert_ptr_nonnull(strstr(json, "\"local_lid\":65535"));
	ck_assert_ptr_nonnull(strstr(json, "\"qp_num\":[291,16777215]"));
	ck_assert_ptr_nonnull(strstr(json, "\"ready_ack\":false"));
	ck_assert_ptr_nonnull(strstr(json, "\"reply_msg\":\"\""));
	ck_assert_ptr_nonnull(strstr(json, "\"payload\":\"\""));
	g_free(json);
	/* the ACK: ready_ack true */
	hs.ready_ack = 1;
	json = hs_roundtrip(&hs);
	ck_assert_ptr_nonnull(strstr(json, "\"ready_ack\":true"));
	g_free(json);
	/* a pre-0.3.11 peer: no local_gid/local_lid; a legacy peer: no ready_ack */
	hs.has_gid = false;
	hs.ready_ack = -1;
	json = hs_roundtrip(&hs);
	ck_assert_ptr_null(strstr(json, "local_gid"));
	ck_assert_ptr_null(strstr(json, "local_lid"));
	ck_assert_ptr_null(strstr(json, "ready_ack"));
	g_free(json);
	/* the whole text for the smallest one */
	kvb_mc_handshake_t min = {.local_nic_path = "a@b", .peer_nic_path = "c@d", .ready_ack = -1};
	json = hs_roundtrip(&min);
	ck_assert_str_eq(json, "{\"local_nic_path\":\"a@b\",\"peer_nic_path\":\"c@d\",\"qp_num\":[],"
			       "\"reply_msg\":\"\",\"payload\":\"\"}");
	g_free(json);
	/* a rejection carries its reason; the decoder hands it over as is */
	kvb_mc_handshake_t rej = {.local_nic_path = "a@b", .peer_nic_path = "c@d", .ready_ack = -1,
				  .reply_msg = "Invalid NIC path \"x\" \\ rejected\n", .payload = "p"};
	json = hs_roundtrip(&rej);
	g_free(json);
	/* the most QPs */
	kvb_mc_handshake_t many = {.local_nic_path = "a@b", .peer_nic_path = "c@d", .ready_ack = 0,
				   .n_qp = KVB_MC_MAX_QP};
	for (uint32_t i = 0; i < KVB_MC_MAX_QP; i++)
		many.qp_num[i] = i * 1000;
	json = hs_roundtrip(&many);
	g_free(json);
	/* to_json refuses more than it can hold */
	kvb_err_t err;
	GString *j = g_string_new(NULL);
	many.n_qp = KVB_MC_MAX_QP + 1;
	ck_refused(kvb_mc_handshake_to_json(&many, j, &err), KVB_ERR_INVALID, "65 QPs");
	ck_assert_uint_eq(j->len, 0);
	g_string_free(j, TRUE);
}
END_TEST

START_TEST(test_handshake_mooncake)
{
	/* a v0.3.13 request as jsoncpp writes it (sorted keys, newline), with a
	 * build-specific extra, upper-case gid */
	static const char req[] =
		"{\"barex_port\":0,\"local_gid\":\"00:00:00:00:00:00:00:00:00:00:FF:FF:0A:00:00:01\","
		"\"local_lid\":0,\"local_nic_path\":\"10.0.0.1:15123@mlx5_0\",\"payload\":\"\","
		"\"peer_nic_path\":\"10.0.0.2:16000@mlx5_1\",\"qp_num\":[1234,1235],"
		"\"ready_ack\":false,\"reply_msg\":\"\"}\n";
	kvb_mc_handshake_t hs;
	kvb_err_t err;
	kvb_err_clear(&err);
	int rc = kvb_mc_handshake_from_json(req, strlen(req), &hs, &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	ck_assert_str_eq(hs.local_nic_path, "10.0.0.1:15123@mlx5_0");
	ck_assert_str_eq(hs.peer_nic_path, "10.0.0.2:16000@mlx5_1");
	ck_assert_uint_eq(hs.n_qp, 2);
	ck_assert_uint_eq(hs.qp_num[0], 1234);
	ck_assert_uint_eq(hs.qp_num[1], 1235);
	ck_assert(hs.has_gid);
	static const uint8_t g[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1};
	ck_assert_mem_eq(hs.local_gid, g, 16);
	ck_assert_uint_eq(hs.local_lid, 0);
	ck_assert_int_eq(hs.ready_ack, 0);
	ck_assert_str_eq(hs.reply_msg, "");
	/* an old peer: no gid, no ready_ack, no qp_num (reply_msg only) */
	static const char old[] = "{\"local_nic_path\":\"a@b\",\"peer_nic_path\":\"c@d\","
				  "\"reply_msg\":\"no such NIC\",\"local_lid\":5}";
	kvb_err_clear(&err);
	rc = kvb_mc_handshake_from_json(old, strlen(old), &hs, &err);
	ck_assert_msg(rc == KVB_OK, "%s", err.msg);
	ck_assert(!hs.has_gid);
	ck_assert_uint_eq(hs.local_lid, 0); /* lid without a gid is not read */
	ck_assert_int_eq(hs.ready_ack, -1);
	ck_assert_uint_eq(hs.n_qp, 0);
	ck_assert_str_eq(hs.reply_msg, "no such NIC");
	ck_assert_str_eq(hs.payload, "");
}
END_TEST

/* kvbridge's "kvb_path_mtu" extension: round trip, absent from Mooncake's
 * messages (0), refused when it is not a number. */
START_TEST(test_handshake_path_mtu)
{
	kvb_mc_handshake_t hs, back;
	memset(&hs, 0, sizeof(hs));
	g_strlcpy(hs.local_nic_path, "10.0.1.1:15000@rxe0", sizeof(hs.local_nic_path));
	g_strlcpy(hs.peer_nic_path, "10.0.1.2:15001@rxe2", sizeof(hs.peer_nic_path));
	hs.n_qp = 2;
	hs.qp_num[0] = 17;
	hs.qp_num[1] = 18;
	hs.ready_ack = -1;
	hs.kvb_path_mtu = 1024;
	GString *js = g_string_new(NULL);
	kvb_err_t err;
	ck_assert_int_eq(kvb_mc_handshake_to_json(&hs, js, &err), KVB_OK);
	ck_assert_ptr_nonnull(strstr(js->str, "\"kvb_path_mtu\":1024"));
	ck_assert_int_eq(kvb_mc_handshake_from_json(js->str, js->len, &back, &err), KVB_OK);
	ck_assert_uint_eq(back.kvb_path_mtu, 1024);
	hs.kvb_path_mtu = 0; /* not sent when unknown */
	g_string_truncate(js, 0);
	ck_assert_int_eq(kvb_mc_handshake_to_json(&hs, js, &err), KVB_OK);
	ck_assert_ptr_null(strstr(js->str, "kvb_path_mtu"));
	ck_assert_int_eq(kvb_mc_handshake_from_json(js->str, js->len, &back, &err), KVB_OK);
	ck_assert_uint_eq(back.kvb_path_mtu, 0);
	static const char bad[] = "{\"local_nic_path\":\"a@b\",\"peer_nic_path\":\"c@d\","
				  "\"kvb_path_mtu\":\"4096\"}";
	ck_assert_int_eq(kvb_mc_handshake_from_json(bad, strlen(bad), &back, &err), KVB_ERR_PROTOCOL);
	ck_assert_ptr_nonnull(strstr(err.msg, "kvb_path_mtu"));
	g_string_free(js, TRUE);
}
END_TEST

START_TEST(test_handshake_refused)
{
#define HS_A "\"local_nic_path\":\"a@b\",\"peer_nic_path\":\"c@d\""
	static const struct {
		const char *json, *needle;
	} bad[] = {
		{"{\"peer_nic_path\":\"c@d\"}", "local_nic_path missing"},
		{"{\"local_nic_path\":\"a@b\"}", "peer_nic_path missing"},
		{"{\"local_nic_path\":1,\"peer_nic_path\":\"c@d\"}", "local_nic_path is not a string"},
		{"{" HS_A ",\"reply_msg\":0}", "reply_msg"},
		{"{" HS_A ",\"payload\":[]}", "payload"},
		{"{" HS_A ",\"qp_num\":1}", "qp_num is not an array"},
		{"{" HS_A ",\"qp_num\":[1,-1]}", "qp_num[1]"},
		{"{" HS_A ",\"qp_num\":[16777216]}", "qp_num[0]"},
		{"{" HS_A ",\"qp_num\":[-18446744073709551615]}", "below -2^63"},
		{"{" HS_A ",\"qp_num\":[\"1\"]}", "qp_num[0]"},
		{"{" HS_A ",\"qp_num\":[1.0]}", "qp_num[0]"},
		{"{" HS_A ",\"local_gid\":\"fe80::1\"}", "local_gid"},
		{"{" HS_A ",\"local_gid\":\"\"}", "local_gid"},
		{"{" HS_A ",\"local_gid\":17}", "local_gid"},
		{"{" HS_A ",\"local_gid\":\"" GID_TEXT "\",\"local_lid\":65536}", "local_lid"},
		{"{" HS_A ",\"local_gid\":\"" GID_TEXT "\",\"local_lid\":\"0\"}", "local_lid"},
		{"{" HS_A ",\"ready_ack\":1}", "ready_ack"},
		{"{" HS_A ",\"ready_ack\":\"true\"}", "ready_ack"},
		{"[]", "not a JSON object"},
		{"", NULL},
		{"{" HS_A, "invalid JSON"},
		{"{" HS_A "}x", NULL},
		{"{" HS_A ",\"reply_msg\":\"\\ud800x\"}", "reply_msg is not valid UTF-8"},
		{"{\"local_nic_path\":\"a@\\ud800x\",\"peer_nic_path\":\"c@d\"}",
		 "local_nic_path is not valid UTF-8"},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
		kvb_mc_handshake_t hs;
		kvb_err_t err;
		kvb_err_clear(&err);
		int rc = kvb_mc_handshake_from_json(bad[i].json, strlen(bad[i].json), &hs, &err);
		ck_assert_msg(rc == KVB_ERR_PROTOCOL, "rc %d for %s", rc, bad[i].json);
		ck_assert_int_eq(err.code, KVB_ERR_PROTOCOL);
		ck_assert_msg(err.msg[0], "no message for %s", bad[i].json);
		if (bad[i].needle)
			ck_assert_msg(strstr(err.msg, bad[i].needle), "'%s' lacks '%s'", err.msg,
				      bad[i].needle);
		ck_assert_int_eq(kvb_mc_handshake_from_json(bad[i].json, strlen(bad[i].json), &hs, NULL),
				 KVB_ERR_PROTOCOL);
	}
	/* qp_num: KVB_MC_MAX_QP entries fit, one more is refused */
	for (uint32_t n = KVB_MC_MAX_QP; n <= KVB_MC_MAX_QP + 1; n++) {
		GString *j = g_string_new("{" HS_A ",\"qp_num\":[");
		for (uint32_t i = 0; i < n; i++)
			g_string_append_printf(j, "%s%u", i ? "," : "", i);
		g_string_append(j, "]}");
		kvb_mc_handshake_t hs;
		kvb_err_t err;
		if (n == KVB_MC_MAX_QP) {
			ck_assert_int_eq(kvb_mc_handshake_from_json(j->str, j->len, &hs, NULL), KVB_OK);
			ck_assert_uint_eq(hs.n_qp, n);
			ck_assert_uint_eq(hs.qp_num[n - 1], n - 1);
		} else {
			ck_refused(kvb_mc_handshake_from_json(j->str, j->len, &hs, &err), KVB_ERR_PROTOCOL,
				   "65 QPs");
		}
		g_string_free(j, TRUE);
	}
	/* reply_msg and payload up to KVB_MC_TEXT_MAX - 1 bytes */
	char *text = g_malloc(KVB_MC_TEXT_MAX + 1);
	memset(text, 'r', KVB_MC_TEXT_MAX);
	text[KVB_MC_TEXT_MAX - 1] = '\0';
	char *j = g_strdup_printf("{" HS_A ",\"reply_msg\":\"%s\",\"payload\":\"%s\"}", text, text);
	kvb_mc_handshake_t hs;
	kvb_err_t err;
	ck_assert_int_eq(kvb_mc_handshake_from_json(j, strlen(j), &hs, NULL), KVB_OK);
	ck_assert_str_eq(hs.reply_msg, text);
	g_free(j);
	text[KVB_MC_TEXT_MAX - 1] = 'r';
	text[KVB_MC_TEXT_MAX] = '\0';
	j = g_strdup_printf("{" HS_A ",\"reply_msg\":\"%s\"}", text);
	ck_refused(kvb_mc_handshake_from_json(j, strlen(j), &hs, &err), KVB_ERR_PROTOCOL,
		   "reply_msg longer");
	g_free(j);
	g_free(text);
#undef HS_A
}
END_TEST

/* ---- notify and probe ---------------------------------------------------- */

START_TEST(test_notify_roundtrip)
{
	kvb_mc_notify_t n = {.name = "10.0.0.1:15123", .notify_msg = "req-1:done"};
	GString *j = g_string_new(NULL);
	ck_assert_int_eq(kvb_mc_notify_to_json(&n, j, NULL), KVB_OK);
	ck_assert_str_eq(j->str, "{\"name\":\"10.0.0.1:15123\",\"notify_msg\":\"req-1:done\"}");
	kvb_mc_notify_t out;
	ck_assert_int_eq(kvb_mc_notify_from_json(j->str, j->len, &out, NULL), KVB_OK);
	ck_assert_str_eq(out.name, n.name);
	ck_assert_str_eq(out.notify_msg, n.notify_msg);
	/* quotes, backslashes, control characters and UTF-8 survive */
	kvb_mc_notify_t odd = {.name = "", .notify_msg = "\"q\" \\ \n\t\x01 \xc3\xa9 {}"};
	g_string_truncate(j, 0);
	ck_assert_int_eq(kvb_mc_notify_to_json(&odd, j, NULL), KVB_OK);
	ck_assert_int_eq(kvb_mc_notify_from_json(j->str, j->len, &out, NULL), KVB_OK);
	ck_assert_str_eq(out.name, "");
	ck_assert_str_eq(out.notify_msg, odd.notify_msg);
	g_string_free(j, TRUE);
	/* Mooncake's request, with a newline and in the other key order */
	static const char mc[] = "{\"notify_msg\":\"hello\",\"name\":\"h:1\"}\n";
	ck_assert_int_eq(kvb_mc_notify_from_json(mc, strlen(mc), &out, NULL), KVB_OK);
	ck_assert_str_eq(out.name, "h:1");
	ck_assert_str_eq(out.notify_msg, "hello");
}
END_TEST

START_TEST(test_notify_refused)
{
	static const struct {
		const char *json, *needle;
	} bad[] = {
		{"{\"notify_msg\":\"x\"}", "name missing"},
		{"{\"name\":\"h:1\"}", "notify_msg missing"},
		{"{\"name\":1,\"notify_msg\":\"x\"}", "name is not a string"},
		{"{\"name\":\"h:1\",\"notify_msg\":{}}", "notify_msg is not a string"},
		{"{}", "missing"},
		{"[\"h:1\",\"x\"]", "not a JSON object"},
		{"{\"name\":\"h:1\",", "invalid JSON"},
		{"{\"name\":\"h:1\",\"notify_msg\":\"\\ud800x\"}", "notify_msg is not valid UTF-8"},
		{"", NULL},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
		kvb_mc_notify_t n;
		kvb_err_t err;
		kvb_err_clear(&err);
		int rc = kvb_mc_notify_from_json(bad[i].json, strlen(bad[i].json), &n, &err);
		ck_assert_msg(rc == KVB_ERR_PROTOCOL, "rc %d for %s", rc, bad[i].json);
		ck_assert_int_eq(err.code, KVB_ERR_PROTOCOL);
		ck_assert_msg(err.msg[0], "no message for %s", bad[i].json);
		if (bad[i].needle)
			ck_assert_msg(strstr(err.msg, bad[i].needle), "'%s' lacks '%s'", err.msg,
				      bad[i].needle);
	}
	/* lengths: KVB_MC_TEXT_MAX - 1 fits, KVB_MC_TEXT_MAX does not */
	char *text = g_malloc(KVB_MC_TEXT_MAX + 1);
	memset(text, 'm', KVB_MC_TEXT_MAX);
	text[KVB_MC_TEXT_MAX - 1] = '\0';
	char *j = g_strdup_printf("{\"name\":\"h\",\"notify_msg\":\"%s\"}", text);
	kvb_mc_notify_t n;
	kvb_err_t err;
	ck_assert_int_eq(kvb_mc_notify_from_json(j, strlen(j), &n, NULL), KVB_OK);
	ck_assert_uint_eq(strlen(n.notify_msg), KVB_MC_TEXT_MAX - 1);
	g_free(j);
	text[KVB_MC_TEXT_MAX - 1] = 'm';
	text[KVB_MC_TEXT_MAX] = '\0';
	j = g_strdup_printf("{\"name\":\"h\",\"notify_msg\":\"%s\"}", text);
	ck_refused(kvb_mc_notify_from_json(j, strlen(j), &n, &err), KVB_ERR_PROTOCOL,
		   "notify_msg longer");
	g_free(j);
	text[KVB_MC_NAME_MAX] = '\0';
	j = g_strdup_printf("{\"name\":\"%s\",\"notify_msg\":\"\"}", text);
	ck_refused(kvb_mc_notify_from_json(j, strlen(j), &n, &err), KVB_ERR_PROTOCOL, "name longer");
	g_free(j);
	g_free(text);
}
END_TEST

START_TEST(test_fixed_replies)
{
	const char *nr = kvb_mc_notify_reply_json();
	ck_assert_str_eq(nr, "{\"name\":\"\",\"notify_msg\":\"success\"}");
	kvb_mc_notify_t n;
	ck_assert_int_eq(kvb_mc_notify_from_json(nr, strlen(nr), &n, NULL), KVB_OK);
	ck_assert_str_eq(n.name, "");
	ck_assert_str_eq(n.notify_msg, "success");
	/* our encoder writes the same reply */
	kvb_mc_notify_t ok = {.name = "", .notify_msg = "success"};
	GString *j = g_string_new(NULL);
	ck_assert_int_eq(kvb_mc_notify_to_json(&ok, j, NULL), KVB_OK);
	ck_assert_str_eq(j->str, nr);
	g_string_free(j, TRUE);

	const char *pr = kvb_mc_probe_reply_json();
	ck_assert_str_eq(pr, "{\"status\":\"success\"}");
	JsonParser *p = json_parser_new();
	ck_assert(json_parser_load_from_data(p, pr, -1, NULL));
	JsonNode *root = json_parser_get_root(p);
	ck_assert(JSON_NODE_HOLDS_OBJECT(root));
	ck_assert_str_eq(json_object_get_string_member(json_node_get_object(root), "status"),
			 "success");
	g_object_unref(p);
}
END_TEST

/* ---- TCP transport --------------------------------------------------------- */

/* GPU mirror sync frames: exact bytes, round trips, a long reason cut on a
 * character boundary. */
START_TEST(test_sync_frames)
{
	kvb_mc_sync_t a = {.id = 0x0102030405060708ull, .addr = 0x7f0000001000ull, .len = 4096,
			   .to_device = true};
	uint8_t buf[KVB_MC_SYNC_LEN];
	kvb_mc_sync_encode(buf, &a);
	ck_assert_uint_eq(buf[0], 0x08);
	ck_assert_uint_eq(buf[7], 0x01);
	ck_assert_uint_eq(buf[24], 1);
	kvb_mc_sync_t b;
	ck_assert_int_eq(kvb_mc_sync_decode(buf, sizeof(buf), &b, NULL), KVB_OK);
	ck_assert_uint_eq(b.id, a.id);
	ck_assert_uint_eq(b.addr, a.addr);
	ck_assert_uint_eq(b.len, a.len);
	ck_assert(b.to_device);
	a.to_device = false;
	kvb_mc_sync_encode(buf, &a);
	ck_assert_int_eq(kvb_mc_sync_decode(buf, sizeof(buf), &b, NULL), KVB_OK);
	ck_assert(!b.to_device);

	kvb_mc_synced_t r = {.id = 42, .status = KVB_ERR_RANGE};
	g_strlcpy(r.why, "not mirrored", sizeof(r.why));
	GByteArray *g = g_byte_array_new();
	kvb_mc_synced_encode(g, &r);
	ck_assert_uint_eq(g->len, KVB_MC_SYNCED_MIN + strlen("not mirrored"));
	kvb_mc_synced_t q;
	ck_assert_int_eq(kvb_mc_synced_decode(g->data, g->len, &q, NULL), KVB_OK);
	ck_assert_uint_eq(q.id, 42);
	ck_assert_int_eq(q.status, KVB_ERR_RANGE);
	ck_assert_str_eq(q.why, "not mirrored");
	/* a reason of 2-byte characters filling the field: cut whole */
	g_byte_array_set_size(g, 0);
	memset(r.why, 0, sizeof(r.why));
	for (size_t i = 0; i + 2 < sizeof(r.why); i += 2)
		memcpy(r.why + i, "\xc3\xa9", 2);
	kvb_mc_synced_encode(g, &r);
	ck_assert_int_eq(kvb_mc_synced_decode(g->data, g->len, &q, NULL), KVB_OK);
	ck_assert(g_utf8_validate(q.why, -1, NULL));
	ck_assert_uint_eq(strlen(q.why) % 2, 0);
	ck_assert_uint_ge(strlen(q.why), KVB_MC_SYNC_WHY_MAX - 3);
	g_byte_array_unref(g);
}
END_TEST

START_TEST(test_sync_frames_refused)
{
	uint8_t buf[KVB_MC_SYNC_LEN + 1];
	kvb_mc_sync_t a = {.id = 1, .addr = 4096, .len = 1, .to_device = true}, b;
	kvb_err_t err;
	kvb_mc_sync_encode(buf, &a);
	ck_assert_int_eq(kvb_mc_sync_decode(buf, KVB_MC_SYNC_LEN - 1, &b, &err), KVB_ERR_PROTOCOL);
	ck_assert_ptr_nonnull(strstr(err.msg, "24 bytes"));
	ck_assert_int_eq(kvb_mc_sync_decode(buf, KVB_MC_SYNC_LEN + 1, &b, &err), KVB_ERR_PROTOCOL);
	buf[24] = 2;
	ck_assert_int_eq(kvb_mc_sync_decode(buf, KVB_MC_SYNC_LEN, &b, &err), KVB_ERR_PROTOCOL);
	ck_assert_ptr_nonnull(strstr(err.msg, "direction 2"));
	a.len = 0;
	kvb_mc_sync_encode(buf, &a);
	ck_assert_int_eq(kvb_mc_sync_decode(buf, KVB_MC_SYNC_LEN, &b, &err), KVB_ERR_PROTOCOL);
	ck_assert_ptr_nonnull(strstr(err.msg, "wrapping"));
	a.len = 2;
	a.addr = UINT64_MAX;
	kvb_mc_sync_encode(buf, &a);
	ck_assert_int_eq(kvb_mc_sync_decode(buf, KVB_MC_SYNC_LEN, &b, &err), KVB_ERR_PROTOCOL);

	kvb_mc_synced_t r = {.id = 7, .status = KVB_OK}, q;
	GByteArray *g = g_byte_array_new();
	kvb_mc_synced_encode(g, &r);
	ck_assert_int_eq(kvb_mc_synced_decode(g->data, KVB_MC_SYNCED_MIN - 1, &q, &err), KVB_ERR_PROTOCOL);
	/* a positive status, and one below every known code */
	g->data[8] = 1;
	ck_assert_int_eq(kvb_mc_synced_decode(g->data, g->len, &q, &err), KVB_ERR_PROTOCOL);
	ck_assert_ptr_nonnull(strstr(err.msg, "status 1"));
	g->data[8] = 0x80;
	g->data[9] = g->data[10] = g->data[11] = 0xff;
	ck_assert_int_eq(kvb_mc_synced_decode(g->data, g->len, &q, &err), KVB_ERR_PROTOCOL);
	memset(g->data + 8, 0, 4);
	/* a NUL or invalid UTF-8 in the reason, a reason too long */
	g_byte_array_append(g, (const guint8 *)"a\0b", 3);
	ck_assert_int_eq(kvb_mc_synced_decode(g->data, g->len, &q, &err), KVB_ERR_PROTOCOL);
	g_byte_array_set_size(g, KVB_MC_SYNCED_MIN);
	g_byte_array_append(g, (const guint8 *)"\xff", 1);
	ck_assert_int_eq(kvb_mc_synced_decode(g->data, g->len, &q, &err), KVB_ERR_PROTOCOL);
	ck_assert_ptr_nonnull(strstr(err.msg, "UTF-8"));
	g_byte_array_set_size(g, KVB_MC_SYNCED_MIN + KVB_MC_SYNC_WHY_MAX);
	memset(g->data + KVB_MC_SYNCED_MIN, 'x', KVB_MC_SYNC_WHY_MAX);
	ck_assert_int_eq(kvb_mc_synced_decode(g->data, g->len, &q, &err), KVB_ERR_PROTOCOL);
	g_byte_array_set_size(g, KVB_MC_SYNCED_MIN + KVB_MC_SYNC_WHY_MAX - 1);
	ck_assert_int_eq(kvb_mc_synced_decode(g->data, g->len, &q, &err), KVB_OK);
	g_byte_array_unref(g);
}
END_TEST

/* kvb_mirror_rkey must have one entry per rkey. */
START_TEST(test_segment_mirror_keys_refused)
{
	const char *j = "{\"name\":\"h:1\",\"protocol\":\"rdma\",\"devices\":[{\"name\":\"rxe0\",\"lid\":0,"
			"\"gid\":\"00:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:00:01\"},{\"name\":\"rxe1\",\"lid\":0,"
			"\"gid\":\"00:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:00:02\"}],\"buffers\":[{\"name\":"
			"\"cuda:0\",\"addr\":4096,\"length\":4096,\"rkey\":[1,0],\"lkey\":[1,0],"
			"\"kvb_mirror_rkey\":[9]}]}";
	kvb_mc_segment_t s;
	kvb_err_t err;
	ck_assert_int_eq(kvb_mc_segment_from_json(j, strlen(j), &s, &err), KVB_ERR_PROTOCOL);
	ck_assert_msg(strstr(err.msg, "kvb_mirror_rkey"), "%s", err.msg);
	assert_seg_empty(&s);
}
END_TEST

START_TEST(test_tcp_header_encode_bytes)
{
	uint8_t out[KVB_MC_TCP_HEADER_LEN];
	memset(out, 0xaa, sizeof(out));
	kvb_mc_tcp_header_t h = {.size = 0x0102030405060708ull, .addr = 0x7f0011223344ull,
				 .opcode = KVB_MC_TCP_OP_WRITE, .v2 = true};
	kvb_mc_tcp_header_encode(out, &h);
	static const uint8_t want[KVB_MC_TCP_HEADER_LEN] = {
		0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, /* size LE */
		0x44, 0x33, 0x22, 0x11, 0x00, 0x7f, 0x00, 0x00, /* addr LE */
		0x81,                                           /* WRITE | v2 */
		0, 0, 0, 0, 0, 0, 0,                            /* padding */
	};
	ck_assert_mem_eq(out, want, sizeof(want));
	memset(out, 0xaa, sizeof(out));
	h = (kvb_mc_tcp_header_t){.size = 65536, .addr = 1, .opcode = KVB_MC_TCP_OP_READ};
	kvb_mc_tcp_header_encode(out, &h);
	static const uint8_t want2[KVB_MC_TCP_HEADER_LEN] = {
		0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x00, 0, 0, 0, 0, 0, 0, 0,
	};
	ck_assert_mem_eq(out, want2, sizeof(want2));
}
END_TEST

START_TEST(test_tcp_header_decode)
{
	static const uint64_t sizes[] = {1, 4096, 65536, UINT32_MAX, 1ull << 40};
	static const uint64_t addrs[] = {0, 1, 0x7f8a00000000ull, UINT64_MAX - (1ull << 40)};
	for (uint8_t op = 0; op <= 1; op++)
		for (int v2 = 0; v2 <= 1; v2++)
			for (size_t s = 0; s < G_N_ELEMENTS(sizes); s++)
				for (size_t a = 0; a < G_N_ELEMENTS(addrs); a++) {
					kvb_mc_tcp_header_t in = {.size = sizes[s], .addr = addrs[a],
								  .opcode = op, .v2 = v2 != 0},
							    out;
					uint8_t buf[KVB_MC_TCP_HEADER_LEN];
					kvb_mc_tcp_header_encode(buf, &in);
					memset(&out, 0x55, sizeof(out));
					ck_assert_int_eq(kvb_mc_tcp_header_decode(buf, &out, NULL), KVB_OK);
					ck_assert_uint_eq(out.size, in.size);
					ck_assert_uint_eq(out.addr, in.addr);
					ck_assert_uint_eq(out.opcode, op); /* v2 bit stripped */
					ck_assert_int_eq(out.v2, in.v2);
				}
	/* padding is ignored, as Mooncake does */
	uint8_t buf[KVB_MC_TCP_HEADER_LEN];
	kvb_mc_tcp_header_t in = {.size = 10, .addr = 20, .opcode = KVB_MC_TCP_OP_WRITE}, out;
	kvb_mc_tcp_header_encode(buf, &in);
	memset(buf + 17, 0xff, 7);
	ck_assert_int_eq(kvb_mc_tcp_header_decode(buf, &out, NULL), KVB_OK);
	ck_assert_uint_eq(out.size, 10);
	ck_assert_uint_eq(out.opcode, KVB_MC_TCP_OP_WRITE);
	ck_assert(!out.v2);
	/* the largest range that does not wrap ends at 2^64 - 1 */
	in = (kvb_mc_tcp_header_t){.size = 1, .addr = UINT64_MAX - 1};
	kvb_mc_tcp_header_encode(buf, &in);
	ck_assert_int_eq(kvb_mc_tcp_header_decode(buf, &out, NULL), KVB_OK);
	in = (kvb_mc_tcp_header_t){.size = UINT64_MAX, .addr = 0};
	kvb_mc_tcp_header_encode(buf, &in);
	ck_assert_int_eq(kvb_mc_tcp_header_decode(buf, &out, NULL), KVB_OK);
}
END_TEST

START_TEST(test_tcp_header_refused)
{
	kvb_err_t err;
	static const struct {
		uint64_t size, addr;
		uint8_t op;
		const char *needle;
	} bad[] = {
		{0, 4096, 0, "size 0"},
		{0, 4096, 0x81, "size 0"},
		{1, UINT64_MAX, 1, "wraps"},
		{2, UINT64_MAX - 1, 0, "wraps"},
		{4096, UINT64_MAX - 4095, 0x80, "wraps"}, /* ends exactly at 2^64 */
		{UINT64_MAX, 1, 1, "wraps"},
		{1, 0, 2, "opcode 0x02"},
		{1, 0, 3, "opcode 0x03"},
		{1, 0, 0x7f, "opcode 0x7f"},
		{1, 0, 0x82, "opcode 0x82"},
		{1, 0, 0x40, "opcode 0x40"},
		{1, 0, 0x41, "opcode 0x41"},
		{1, 0, 0xff, "opcode 0xff"},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
		uint8_t buf[KVB_MC_TCP_HEADER_LEN] = {0};
		put_le64(buf, bad[i].size);
		put_le64(buf + 8, bad[i].addr);
		buf[16] = bad[i].op;
		kvb_mc_tcp_header_t out = {.size = 77, .addr = 88, .opcode = 1, .v2 = true};
		ck_refused(kvb_mc_tcp_header_decode(buf, &out, &err), KVB_ERR_PROTOCOL, bad[i].needle);
		ck_assert_uint_eq(out.size, 77); /* untouched */
		ck_assert_uint_eq(out.addr, 88);
		ck_assert_int_eq(kvb_mc_tcp_header_decode(buf, &out, NULL), KVB_ERR_PROTOCOL);
	}
	/* every opcode byte: only 0x00, 0x01, 0x80, 0x81 pass */
	for (unsigned op = 0; op < 256; op++) {
		uint8_t buf[KVB_MC_TCP_HEADER_LEN] = {1};
		buf[16] = (uint8_t)op;
		kvb_mc_tcp_header_t out;
		bool want = op == 0 || op == 1 || op == 0x80 || op == 0x81;
		ck_assert_msg((kvb_mc_tcp_header_decode(buf, &out, NULL) == KVB_OK) == want,
			      "opcode 0x%02x", op);
	}
}
END_TEST

START_TEST(test_tcp_status)
{
	uint8_t out[KVB_MC_TCP_STATUS_LEN];
	kvb_mc_tcp_status_encode(out, KVB_MC_TCP_STATUS_OK);
	static const uint8_t ok[8] = {0, 0, 0, 0, 0x56, 0x54, 0x43, 0x4d}; /* 0x4D435456_00000000 LE */
	ck_assert_mem_eq(out, ok, 8);
	kvb_mc_tcp_status_encode(out, KVB_MC_TCP_STATUS_REJECTED);
	static const uint8_t rej[8] = {1, 0, 0, 0, 0x56, 0x54, 0x43, 0x4d};
	ck_assert_mem_eq(out, rej, 8);
	static const uint32_t codes[] = {0, 1, 2, 0xdeadbeef, UINT32_MAX};
	for (size_t i = 0; i < G_N_ELEMENTS(codes); i++) {
		uint32_t code = 12345;
		kvb_mc_tcp_status_encode(out, codes[i]);
		ck_assert_int_eq(kvb_mc_tcp_status_decode(out, &code, NULL), KVB_OK);
		ck_assert_uint_eq(code, codes[i]);
	}
	kvb_err_t err;
	static const uint8_t bad[][8] = {
		{0, 0, 0, 0, 0, 0, 0, 0},
		{0x4d, 0x43, 0x54, 0x56, 0, 0, 0, 0}, /* big-endian writer */
		{0, 0, 0, 0, 0x4d, 0x43, 0x54, 0x56}, /* "MCTV" as text */
		{0, 0, 0, 0, 0x56, 0x54, 0x43, 0x4c}, /* one bit off */
		{0x56, 0x54, 0x43, 0x4d, 0, 0, 0, 0}, /* magic in the low half */
		{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
	};
	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
		uint32_t code = 12345;
		ck_refused(kvb_mc_tcp_status_decode(bad[i], &code, &err), KVB_ERR_PROTOCOL, "MCTV");
		ck_assert_uint_eq(code, 12345);
	}
}
END_TEST

Suite *kvb_suite_mc_wire(void)
{
	Suite *s = suite_create("mc_wire");
	TCase *tc = tcase_create("frame");
	tcase_add_test(tc, test_frame_header_lengths);
	tcase_add_test(tc, test_frame_body_typed);
	tcase_add_test(tc, test_frame_body_legacy);
	tcase_add_test(tc, test_frame_body_refused);
	tcase_add_test(tc, test_frame_encode_bytes);
	tcase_add_test(tc, test_frame_roundtrip);
	suite_add_tcase(s, tc);
	tc = tcase_create("names");
	tcase_add_test(tc, test_host_port_accepted);
	tcase_add_test(tc, test_host_port_refused);
	tcase_add_test(tc, test_nic_path_split);
	tcase_add_test(tc, test_gid_roundtrip);
	tcase_add_test(tc, test_gid_refused);
	suite_add_tcase(s, tc);
	tc = tcase_create("descriptor");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_segment_rdma_roundtrip);
	tcase_add_test(tc, test_segment_tcp_roundtrip);
	tcase_add_test(tc, test_segment_to_json_refused);
	tcase_add_test(tc, test_segment_mooncake_shapes);
	tcase_add_test(tc, test_segment_tolerant);
	tcase_add_test(tc, test_segment_refused_fields);
	tcase_add_test(tc, test_segment_refused_syntax);
	tcase_add_test(tc, test_segment_not_json);
	tcase_add_test(tc, test_segment_limits);
	tcase_add_test(tc, test_segment_many_buffers);
	tcase_add_test(tc, test_segment_find);
	tcase_add_test(tc, test_segment_clear);
	suite_add_tcase(s, tc);
	tc = tcase_create("handshake");
	tcase_add_test(tc, test_handshake_roundtrip);
	tcase_add_test(tc, test_handshake_mooncake);
	tcase_add_test(tc, test_handshake_path_mtu);
	tcase_add_test(tc, test_handshake_refused);
	tcase_add_test(tc, test_notify_roundtrip);
	tcase_add_test(tc, test_notify_refused);
	tcase_add_test(tc, test_fixed_replies);
	suite_add_tcase(s, tc);
	tcase_add_test(tc, test_sync_frames);
	tcase_add_test(tc, test_sync_frames_refused);
	tcase_add_test(tc, test_segment_mirror_keys_refused);
	tc = tcase_create("tcp");
	tcase_add_test(tc, test_tcp_header_encode_bytes);
	tcase_add_test(tc, test_tcp_header_decode);
	tcase_add_test(tc, test_tcp_header_refused);
	tcase_add_test(tc, test_tcp_status);
	suite_add_tcase(s, tc);
	return s;
}
