/*
 * Mooncake Transfer Engine wire formats (classic TE, v0.3.x), as plain
 * functions over buffers: no sockets, so each parser is unit-tested and
 * fuzzed on its own (UCX rc/base vs rc/verbs).  Notes:
 * ../shared/research/mooncake-te.md sections 1.3, 1.4, 3.3, 10.
 *
 * Handshake socket ("RPC"), one request per TCP connection:
 *   u64 length (little-endian, counts the type byte) | u8 type | JSON
 * The reply echoes the type.  A body whose first byte is > 3 is a pre-0.3
 * untyped JSON request and means Connection.  Lengths of 0 and above the cap
 * (1 MiB by default, MC_HANDSHAKE_MAX_LENGTH) are refused.
 *
 * kvbridge extension, never sent to Mooncake peers: type KVB_MC_KVB_HELLO
 * opens a persistent kvbridge control stream on the same port; after it both
 * sides exchange frames of type KVB_MC_KVB_FRAME (same framing) carrying
 * kvbridge wire messages (src/core/kvb_wire.h), and KVB_MC_KVB_SYNC /
 * KVB_MC_KVB_SYNCED, which keep GPU memory behind a NIC without GPUDirect in
 * step with its pinned host mirror (see kvb_hw_gpu.c).  KVB_MC_KVB_STARTTLS
 * (payload: version byte 1), sent instead of the hello by a worker with
 * TLS on its streams, says that a TLS handshake follows on the same
 * connection; the hello and everything after travel inside it.
 *
 * Descriptor extension "kvb_mirror_rkey" (per buffer, one per device, 0 =
 * none): where a device cannot reach a GPU buffer, the key of the buffer's
 * pinned host mirror, registered at the buffer's own addresses.  Its "rkey"
 * entry for that device is 0, so a peer that does not know the extension
 * (Mooncake) fails cleanly instead of writing where nothing reads.
 *
 * Descriptor extension "kvb_tcp_sources" (kvbridge, optional): the numeric
 * addresses this worker's TCP data connections come from (its NICs' source
 * addresses), so that a consumer admits writes into a pull's blocks from
 * those and no other (at most KVB_MC_MAX_SOURCES; Mooncake ignores it).
 *
 * TCP transport data port: 24-byte header
 *   u64 size LE | u64 addr LE | u8 opcode (READ 0, WRITE 1; | 0x80 = v2) | 7 zero bytes
 * then the payload (WRITE) or the reply (READ).  v2 adds an 8-byte LE status
 * frame: high 32 bits "MCTV" (0x4D435456), low 32 bits 0 OK / 1 rejected;
 * sent after a WRITE is applied and before READ data.
 *
 * Every decoder rejects what it cannot trust with KVB_ERR_PROTOCOL and a
 * message naming the field (kvb_err_t); on failure nothing stays allocated.
 */
#ifndef KVB_MC_WIRE_H
#define KVB_MC_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>
#include <kvbridge/error.h>

/* ---- limits ------------------------------------------------------------- */

#define KVB_MC_HANDSHAKE_MAX_DEFAULT (1u << 20) /* MC_HANDSHAKE_MAX_LENGTH default */
#define KVB_MC_HANDSHAKE_MAX_LIMIT (128u << 20) /* largest cap Mooncake accepts */
#define KVB_MC_NAME_MAX 256u      /* segment names, NIC paths, buffer names (bytes incl. NUL) */
#define KVB_MC_DEVICE_NAME_MAX 64u
#define KVB_MC_GID_TEXT_LEN 47u   /* "xx:" * 15 + "xx" */
#define KVB_MC_MAX_DEVICES 64u
#define KVB_MC_MAX_BUFFERS 65536u
#define KVB_MC_MAX_QP 64u
#define KVB_MC_MAX_LOCATIONS 256u
#define KVB_MC_TEXT_MAX 1024u     /* reply_msg, payload, notify strings */
#define KVB_MC_MAX_SOURCES 16u    /* kvb_tcp_sources entries */
#define KVB_MC_ADDR_TEXT_MAX 64u  /* a numeric IPv4 or IPv6 address, NUL included */

/* ---- handshake framing -------------------------------------------------- */

typedef enum kvb_mc_msg_type {
	KVB_MC_CONNECTION = 0,   /* QP handshake (HandShakeDesc) */
	KVB_MC_METADATA = 1,     /* P2P segment descriptor exchange */
	KVB_MC_NOTIFY = 2,       /* {"name", "notify_msg"} */
	KVB_MC_PROBE = 3,        /* {} -> {"status":"success"} */
	KVB_MC_KVB_HELLO = 0x10, /* kvbridge: open a control stream (JSON hello) */
	KVB_MC_KVB_FRAME = 0x11, /* kvbridge: one control message (binary) */
	KVB_MC_KVB_SYNC = 0x12,  /* kvbridge: copy a GPU range to or from its mirror */
	KVB_MC_KVB_SYNCED = 0x13,/* kvbridge: that copy's end */
	KVB_MC_KVB_AUTH = 0x14,  /* kvbridge: a step of the shared-secret challenge-response */
	KVB_MC_KVB_WINDOW = 0x15,/* kvbridge: RDMA keys of one pull's blocks (kvb_rdma_window_wire.h) */
	KVB_MC_KVB_STARTTLS = 0x16, /* kvbridge: the stream continues in TLS (before the hello) */
} kvb_mc_msg_type_t;

#define KVB_MC_FRAME_HEADER_LEN 8u

/* Validate the 8-byte length prefix: 1 <= length <= max_len.  *body_len is
 * the number of bytes that follow (type byte included). */
int kvb_mc_frame_header(const uint8_t hdr[KVB_MC_FRAME_HEADER_LEN], uint64_t max_len,
			uint64_t *body_len, kvb_err_t *err);

/* Split a body into type and payload.  A first byte <= 3 or one of the
 * kvbridge types is the type; a first byte of '{' or whitespace makes the
 * whole body a legacy untyped JSON Connection request; anything else is
 * refused.  *payload points into body. */
int kvb_mc_frame_body(const uint8_t *body, size_t len, kvb_mc_msg_type_t *type,
		      const uint8_t **payload, size_t *payload_len, kvb_err_t *err);

/* Append a whole frame (length, type, payload) to out. */
void kvb_mc_frame_encode(GByteArray *out, kvb_mc_msg_type_t type, const void *payload,
			 size_t payload_len);

/* ---- names -------------------------------------------------------------- */

/* "host:port", "[v6addr]:port" -> host (without brackets) and port (1..65535). */
int kvb_mc_parse_host_port(const char *s, char *host, size_t host_len, uint16_t *port,
			   kvb_err_t *err);

/* NIC path "server_name@device": split at the first '@'; both parts non-empty. */
int kvb_mc_nic_path_split(const char *path, char *server, size_t server_len, char *device,
			  size_t device_len, kvb_err_t *err);

/* GID text (16 lowercase hex bytes joined by ':') <-> raw bytes.  The parser
 * accepts upper case; the formatter writes lower case. */
int kvb_mc_gid_parse(const char *text, uint8_t gid[16], kvb_err_t *err);
void kvb_mc_gid_format(const uint8_t gid[16], char text[KVB_MC_GID_TEXT_LEN + 1]);

/* ---- segment descriptor (type 1 reply, etcd/http value) ----------------- */

typedef struct kvb_mc_device {
	char name[KVB_MC_DEVICE_NAME_MAX];
	uint32_t lid;
	uint8_t gid[16];
} kvb_mc_device_t;

typedef struct kvb_mc_buffer {
	char name[KVB_MC_NAME_MAX];  /* location "cpu:0", "cuda:1", "*", or the server name (tcp) */
	uint64_t addr;               /* > 0 */
	uint64_t length;             /* > 0; addr + length does not wrap */
	uint32_t n_keys;             /* 0 (tcp) or n_devices */
	uint32_t *rkey;              /* n_keys entries, in devices[] order */
	uint32_t *lkey;
	uint32_t *mirror_rkey;       /* kvbridge: n_keys entries or NULL (see above) */
} kvb_mc_buffer_t;

/* priority_matrix entry: location -> [[preferred], [available]], as device indices. */
typedef struct kvb_mc_location {
	char name[KVB_MC_NAME_MAX];
	uint32_t n_preferred, n_available;
	uint32_t preferred[KVB_MC_MAX_DEVICES];
	uint32_t available[KVB_MC_MAX_DEVICES];
} kvb_mc_location_t;

typedef struct kvb_mc_segment {
	char name[KVB_MC_NAME_MAX];          /* "host:port" */
	char protocol[16];                   /* "rdma", "tcp" (first entry of an array form) */
	uint32_t tcp_data_port;              /* 0 for rdma */
	char tcp_data_host[KVB_MC_NAME_MAX]; /* optional ("" when absent) */
	uint32_t tcp_proto_version;          /* absent -> 1 */
	char timestamp[64];                  /* informational */
	char rdma_server_name[KVB_MC_NAME_MAX]; /* optional */
	uint32_t n_devices;
	kvb_mc_device_t *devices;
	uint32_t n_buffers;
	kvb_mc_buffer_t *buffers;
	uint32_t n_locations;
	kvb_mc_location_t *locations;
	uint32_t n_tcp_sources;              /* kvbridge: kvb_tcp_sources (see above) */
	char tcp_sources[KVB_MC_MAX_SOURCES][KVB_MC_ADDR_TEXT_MAX];
} kvb_mc_segment_t;

/* Compact JSON of a descriptor, appended to out (no trailing newline).  rdma
 * descriptors carry devices, per-device rkey/lkey and the priority matrix;
 * tcp descriptors carry name/addr/length buffers only. */
int kvb_mc_segment_to_json(const kvb_mc_segment_t *seg, GString *out, kvb_err_t *err);

/* Parse a descriptor the way Mooncake's decoder does, tolerantly: unknown
 * fields ignored, protocol as a string or an array, a trailing newline
 * accepted.  Refused: a device with an empty name or a bad gid; a buffer
 * with an empty name, addr or length 0, a wrapping range, or rkey/lkey
 * counts that differ from each other or from the devices; matrix entries
 * that are not [[names], [names]] or name unknown devices; counts above the
 * KVB_MC_MAX_* limits. */
int kvb_mc_segment_from_json(const char *json, size_t len, kvb_mc_segment_t *seg,
			     kvb_err_t *err);

/* Release the arrays of a descriptor (safe on a zeroed or cleared struct). */
void kvb_mc_segment_clear(kvb_mc_segment_t *seg);

/* The buffer holding all of [addr, addr + len), or NULL (len 0 never matches). */
const kvb_mc_buffer_t *kvb_mc_segment_find(const kvb_mc_segment_t *seg, uint64_t addr,
					   uint64_t len);

/* ---- Connection (type 0): HandShakeDesc ---------------------------------- */

typedef struct kvb_mc_handshake {
	char local_nic_path[KVB_MC_NAME_MAX];
	char peer_nic_path[KVB_MC_NAME_MAX];
	uint32_t n_qp;
	uint32_t qp_num[KVB_MC_MAX_QP];
	bool has_gid;                /* local_gid / local_lid present (v0.3.11+) */
	uint8_t local_gid[16];
	uint32_t local_lid;
	int ready_ack;               /* -1 field absent, 0 false, 1 true */
	char reply_msg[KVB_MC_TEXT_MAX]; /* non-empty = rejection */
	char payload[KVB_MC_TEXT_MAX];
	/* kvbridge extension "kvb_path_mtu": the sender's path MTU in bytes, so
	 * kvbridge peers refuse a disagreement up front (Mooncake exchanges no
	 * MTU and ignores the field); 0 = absent */
	uint32_t kvb_path_mtu;
} kvb_mc_handshake_t;

int kvb_mc_handshake_to_json(const kvb_mc_handshake_t *hs, GString *out, kvb_err_t *err);
int kvb_mc_handshake_from_json(const char *json, size_t len, kvb_mc_handshake_t *hs,
			       kvb_err_t *err);

/* ---- Notify (type 2) and Probe (type 3) ---------------------------------- */

typedef struct kvb_mc_notify {
	char name[KVB_MC_NAME_MAX];
	char notify_msg[KVB_MC_TEXT_MAX];
} kvb_mc_notify_t;

int kvb_mc_notify_to_json(const kvb_mc_notify_t *n, GString *out, kvb_err_t *err);
int kvb_mc_notify_from_json(const char *json, size_t len, kvb_mc_notify_t *n, kvb_err_t *err);

/* The fixed replies: {"name":"","notify_msg":"success"} and {"status":"success"}. */
const char *kvb_mc_notify_reply_json(void);
const char *kvb_mc_probe_reply_json(void);

/* ---- TCP transport ------------------------------------------------------- */

#define KVB_MC_TCP_HEADER_LEN 24u
#define KVB_MC_TCP_STATUS_LEN 8u
#define KVB_MC_TCP_OP_READ 0u
#define KVB_MC_TCP_OP_WRITE 1u
#define KVB_MC_TCP_OP_V2 0x80u
#define KVB_MC_TCP_STATUS_MAGIC UINT32_C(0x4D435456) /* "MCTV" */
#define KVB_MC_TCP_STATUS_OK 0u
#define KVB_MC_TCP_STATUS_REJECTED 1u

typedef struct kvb_mc_tcp_header {
	uint64_t size;      /* > 0 */
	uint64_t addr;      /* remote virtual address */
	uint8_t opcode;     /* KVB_MC_TCP_OP_READ or _WRITE */
	bool v2;            /* acknowledged mode */
} kvb_mc_tcp_header_t;

void kvb_mc_tcp_header_encode(uint8_t out[KVB_MC_TCP_HEADER_LEN], const kvb_mc_tcp_header_t *h);

/* Refused: size 0, addr + size wrapping, an opcode other than READ/WRITE
 * (with or without the v2 bit).  Padding bytes are ignored, as Mooncake does. */
int kvb_mc_tcp_header_decode(const uint8_t in[KVB_MC_TCP_HEADER_LEN], kvb_mc_tcp_header_t *h,
			     kvb_err_t *err);

void kvb_mc_tcp_status_encode(uint8_t out[KVB_MC_TCP_STATUS_LEN], uint32_t code);

/* Refused: a frame without the magic. */
int kvb_mc_tcp_status_decode(const uint8_t in[KVB_MC_TCP_STATUS_LEN], uint32_t *code,
			     kvb_err_t *err);

/* ---- kvbridge GPU mirror sync (stream frames 0x12, 0x13) ------------------
 * SYNC:   u64 id | u64 addr | u64 len | u8 direction (1 mirror -> GPU after
 *         the sender's writes, 0 GPU -> mirror before its reads)   = 25 bytes
 * SYNCED: u64 id | i32 status (KVB_OK or a kvb error code) | reason (UTF-8,
 *         no NUL, at most 159 bytes; empty when OK)                = 12 + n */

#define KVB_MC_SYNC_LEN 25u
#define KVB_MC_SYNCED_MIN 12u
#define KVB_MC_SYNC_WHY_MAX 160u

typedef struct kvb_mc_sync {
	uint64_t id;
	uint64_t addr, len; /* len > 0, addr + len does not wrap */
	bool to_device;
} kvb_mc_sync_t;

typedef struct kvb_mc_synced {
	uint64_t id;
	int32_t status;     /* KVB_OK or negative */
	char why[KVB_MC_SYNC_WHY_MAX];
} kvb_mc_synced_t;

void kvb_mc_sync_encode(uint8_t out[KVB_MC_SYNC_LEN], const kvb_mc_sync_t *s);
int kvb_mc_sync_decode(const uint8_t *in, size_t len, kvb_mc_sync_t *s, kvb_err_t *err);
/* Appends the frame body to out; the reason is cut to fit. */
void kvb_mc_synced_encode(GByteArray *out, const kvb_mc_synced_t *s);
int kvb_mc_synced_decode(const uint8_t *in, size_t len, kvb_mc_synced_t *s, kvb_err_t *err);

#endif /* KVB_MC_WIRE_H */
