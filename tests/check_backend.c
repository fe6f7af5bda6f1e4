/*
 * Backend registry and instances: abi and size checks, stubs for absent
 * ops (NULL or past an older table's size), kvb_backend_has, failed opens,
 * the registry, and the private areas sized by instance_size and conn_size
 * (written end to end, so ASan and valgrind see any short allocation).
 */
#include "config.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <glib.h>
#include <kvbridge/backend.h>

#include "suites.h"

#define FAKE_INSTANCE_SIZE 200 /* not a multiple of 16 on purpose */
#define FAKE_CONN_SIZE 72

/* What the fake backend's ops saw; reset by each test. */
static struct {
	int opens, closes, ext_gets, last_errors;
	int open_rc;              /* what instance_open returns */
	bool open_sets_message;   /* instance_open fills err itself */
	size_t priv_size;         /* bytes instance_open writes into be->priv */
	const void *args;
} fake;

static void fake_reset(void)
{
	memset(&fake, 0, sizeof(fake));
	fake.open_rc = KVB_OK;
	fake.priv_size = FAKE_INSTANCE_SIZE;
}

static int fake_open(kvb_backend_t *be, const void *args, kvb_err_t *err)
{
	fake.opens++;
	fake.args = args;
	ck_assert_ptr_null(be->user);
	ck_assert_uint_eq((uintptr_t)be->priv % 16, 0);
	if (fake.open_rc != KVB_OK) {
		if (fake.open_sets_message)
			return kvb_err_set(err, fake.open_rc, "fake: device %d is gone", 7);
		return fake.open_rc;
	}
	memset(be->priv, 0xa5, fake.priv_size);
	return KVB_OK;
}

static void fake_close(kvb_backend_t *be)
{
	fake.closes++;
	/* the private area is intact and still ours */
	for (size_t i = 0; i < fake.priv_size; i++)
		ck_assert_uint_eq(be->priv[i], 0xa5);
}

static uint64_t fake_now(kvb_backend_t *be)
{
	return 1234;
}

static int fake_timer_arm(kvb_backend_t *be, uint64_t deadline_ns, uint64_t cookie, uint64_t *id)
{
	*id = cookie + 1;
	return KVB_OK;
}

static int fake_poll(kvb_backend_t *be, kvb_event_t *events, int max)
{
	return 0;
}

static const char *fake_last_error(kvb_backend_t *be)
{
	fake.last_errors++;
	return "fake: nothing went wrong";
}

static int fake_ext_get(kvb_backend_t *be, const char *name, const void **ext)
{
	fake.ext_gets++;
	*ext = &fake;
	return KVB_OK;
}

/* Only the mandatory ops. */
static const kvb_backend_ops_t min_ops = {
	.abi = KVB_BACKEND_ABI,
	.size = sizeof(kvb_backend_ops_t),
	.name = "test_minimal",
	.instance_size = FAKE_INSTANCE_SIZE,
	.conn_size = FAKE_CONN_SIZE,
	.instance_open = fake_open,
	.clock_now_ns = fake_now,
	.timer_arm = fake_timer_arm,
	.event_poll = fake_poll,
};

/* The op slots after instance_open, by offset. */
static const size_t optional_ops[] = {
	offsetof(kvb_backend_ops_t, instance_close),
	offsetof(kvb_backend_ops_t, timer_cancel),
	offsetof(kvb_backend_ops_t, random_fill),
	offsetof(kvb_backend_ops_t, nic_count),
	offsetof(kvb_backend_ops_t, nic_query),
	offsetof(kvb_backend_ops_t, mr_reg),
	offsetof(kvb_backend_ops_t, mr_dereg),
	offsetof(kvb_backend_ops_t, conn_connect),
	offsetof(kvb_backend_ops_t, conn_accept),
	offsetof(kvb_backend_ops_t, conn_close),
	offsetof(kvb_backend_ops_t, xfer_post),
	offsetof(kvb_backend_ops_t, msg_send),
	offsetof(kvb_backend_ops_t, last_error),
	offsetof(kvb_backend_ops_t, ext_get),
};

static const size_t mandatory_ops[] = {
	offsetof(kvb_backend_ops_t, instance_open),
	offsetof(kvb_backend_ops_t, clock_now_ns),
	offsetof(kvb_backend_ops_t, timer_arm),
	offsetof(kvb_backend_ops_t, event_poll),
};

static kvb_backend_t *open_ok(const kvb_backend_ops_t *ops, const void *args)
{
	kvb_backend_t *be = NULL;
	kvb_err_t err;
	int rc = kvb_backend_open(ops, args, &be, &err);
	ck_assert_msg(rc == KVB_OK, "open %s: %s (%s)", ops->name, kvb_status_name(rc), err.msg);
	ck_assert_ptr_nonnull(be);
	return be;
}

/* Open fails with want; out stays NULL, err names needle; nothing leaks. */
static void open_fails(const kvb_backend_ops_t *ops, int want, const char *needle)
{
	kvb_backend_t *be = (kvb_backend_t *)&fake;
	kvb_err_t err;

	kvb_err_set(&err, KVB_ERR_PEER, "stale");
	ck_assert_int_eq(kvb_backend_open(ops, NULL, &be, &err), want);
	ck_assert_ptr_null(be);
	ck_assert_int_eq(err.code, want);
	ck_assert_msg(strstr(err.msg, needle) != NULL, "message '%s' lacks '%s'", err.msg, needle);
	be = (kvb_backend_t *)&fake;
	ck_assert_int_eq(kvb_backend_open(ops, NULL, &be, NULL), want);
	ck_assert_ptr_null(be);
}

START_TEST(test_minimal_backend)
{
	fake_reset();
	int args = 42;
	kvb_backend_t *be = open_ok(&min_ops, &args);
	ck_assert_int_eq(fake.opens, 1);
	ck_assert_ptr_eq(fake.args, &args);
	ck_assert_ptr_null(be->user);

	/* the table is a complete copy */
	ck_assert_ptr_ne(be->ops, &min_ops);
	ck_assert_uint_eq(be->ops->abi, KVB_BACKEND_ABI);
	ck_assert_uint_eq(be->ops->size, sizeof(kvb_backend_ops_t));
	ck_assert_str_eq(be->ops->name, "test_minimal");
	ck_assert_uint_eq(be->ops->instance_size, FAKE_INSTANCE_SIZE);
	ck_assert_uint_eq(be->ops->conn_size, FAKE_CONN_SIZE);

	/* provided ops are the backend's */
	ck_assert_uint_eq(be->ops->clock_now_ns(be), 1234);
	uint64_t id = 0;
	ck_assert_int_eq(be->ops->timer_arm(be, 10, 41, &id), KVB_OK);
	ck_assert_uint_eq(id, 42);
	kvb_event_t ev[4];
	ck_assert_int_eq(be->ops->event_poll(be, ev, 4), 0);
	for (size_t i = 0; i < G_N_ELEMENTS(mandatory_ops); i++)
		ck_assert_msg(kvb_backend_has(be, mandatory_ops[i]), "offset %zu", mandatory_ops[i]);

	/* every other op is a stub, callable without a NULL test */
	for (size_t i = 0; i < G_N_ELEMENTS(optional_ops); i++) {
		ck_assert_msg(!kvb_backend_has(be, optional_ops[i]), "offset %zu", optional_ops[i]);
		void (*fn)(void);
		memcpy(&fn, (const char *)be->ops + optional_ops[i], sizeof(fn));
		ck_assert_ptr_nonnull(fn);
	}
	ck_assert_int_eq(be->ops->timer_cancel(be, id), KVB_ERR_UNSUPPORTED);
	uint8_t buf[8];
	ck_assert_int_eq(be->ops->random_fill(be, buf, sizeof(buf)), KVB_ERR_UNSUPPORTED);
	ck_assert_uint_eq(be->ops->nic_count(be), 0);
	kvb_nic_info_t info;
	ck_assert_int_eq(be->ops->nic_query(be, 0, &info), KVB_ERR_UNSUPPORTED);
	void *mr = NULL;
	kvb_rkey_t rkey;
	kvb_mem_attr_t attr = {KVB_MEM_HOST, -1};
	ck_assert_int_eq(be->ops->mr_reg(be, buf, sizeof(buf), &attr, &mr, &rkey), KVB_ERR_UNSUPPORTED);
	ck_assert_int_eq(be->ops->mr_dereg(be, mr), KVB_ERR_UNSUPPORTED);
	kvb_conn_t *conn = kvb_conn_alloc(be);
	ck_assert_ptr_nonnull(conn);
	ck_assert_int_eq(be->ops->conn_connect(be, conn, "127.0.0.1:1"), KVB_ERR_UNSUPPORTED);
	ck_assert_int_eq(be->ops->conn_accept(be, conn, 3), KVB_ERR_UNSUPPORTED);
	kvb_slice_op_t op;
	memset(&op, 0, sizeof(op));
	size_t n_posted = 99;
	ck_assert_int_eq(be->ops->xfer_post(be, conn, &op, 1, &n_posted), KVB_ERR_UNSUPPORTED);
	ck_assert_uint_eq(n_posted, 0);
	ck_assert_int_eq(be->ops->xfer_post(be, conn, &op, 1, NULL), KVB_ERR_UNSUPPORTED);
	ck_assert_int_eq(be->ops->msg_send(be, conn, "hi", 2), KVB_ERR_UNSUPPORTED);
	be->ops->conn_close(be, conn);
	kvb_conn_free(conn);
	ck_assert_str_eq(be->ops->last_error(be), "");
	const void *ext = &args;
	ck_assert_int_eq(be->ops->ext_get(be, "cuda", &ext), KVB_ERR_NOT_FOUND);
	kvb_backend_close(be); /* stub instance_close */
	ck_assert_int_eq(fake.closes, 0);
}
END_TEST

START_TEST(test_full_backend)
{
	fake_reset();
	kvb_backend_ops_t ops = min_ops;
	ops.name = "test_full";
	ops.instance_close = fake_close;
	ops.last_error = fake_last_error;
	ops.ext_get = fake_ext_get;
	kvb_backend_t *be = open_ok(&ops, NULL);

	/* the instance keeps its own table: later edits to ours do not reach it */
	ops.ext_get = NULL;
	ck_assert(kvb_backend_has(be, offsetof(kvb_backend_ops_t, instance_close)));
	ck_assert(kvb_backend_has(be, offsetof(kvb_backend_ops_t, last_error)));
	ck_assert(kvb_backend_has(be, offsetof(kvb_backend_ops_t, ext_get)));
	ck_assert(!kvb_backend_has(be, offsetof(kvb_backend_ops_t, xfer_post)));
	const void *ext = NULL;
	ck_assert_int_eq(be->ops->ext_get(be, "fake", &ext), KVB_OK);
	ck_assert_ptr_eq(ext, &fake);
	ck_assert_str_eq(be->ops->last_error(be), "fake: nothing went wrong");
	ck_assert_int_eq(fake.ext_gets, 1);

	/* offsets that name no op slot */
	ck_assert(!kvb_backend_has(be, 0));
	ck_assert(!kvb_backend_has(be, offsetof(kvb_backend_ops_t, name)));
	ck_assert(!kvb_backend_has(be, offsetof(kvb_backend_ops_t, conn_size)));
	ck_assert(!kvb_backend_has(be, offsetof(kvb_backend_ops_t, ext_get) + 1));
	ck_assert(!kvb_backend_has(be, offsetof(kvb_backend_ops_t, last_error) + 4));
	ck_assert(!kvb_backend_has(be, sizeof(kvb_backend_ops_t)));
	ck_assert(!kvb_backend_has(be, SIZE_MAX));
	ck_assert(!kvb_backend_has(NULL, offsetof(kvb_backend_ops_t, ext_get)));

	kvb_backend_close(be);
	ck_assert_int_eq(fake.closes, 1);
	kvb_backend_close(NULL);
}
END_TEST

/* A table from an older header: size ends before ext_get, so whatever
 * lies there is not an op. */
START_TEST(test_older_table)
{
	fake_reset();
	kvb_backend_ops_t ops = min_ops;
	ops.name = "test_older";
	ops.size = offsetof(kvb_backend_ops_t, ext_get);
	ops.last_error = fake_last_error; /* the last slot within size */
	ops.ext_get = fake_ext_get;       /* past size */
	kvb_backend_t *be = open_ok(&ops, NULL);

	ck_assert(!kvb_backend_has(be, offsetof(kvb_backend_ops_t, ext_get)));
	ck_assert(kvb_backend_has(be, offsetof(kvb_backend_ops_t, last_error)));
	const void *ext = NULL;
	ck_assert_int_eq(be->ops->ext_get(be, "fake", &ext), KVB_ERR_NOT_FOUND);
	ck_assert_int_eq(fake.ext_gets, 0);
	ck_assert_str_eq(be->ops->last_error(be), "fake: nothing went wrong");
	ck_assert_uint_eq(be->ops->size, sizeof(kvb_backend_ops_t));
	kvb_backend_close(be);

	/* a slot cut in half by size is absent too */
	ops.size = offsetof(kvb_backend_ops_t, last_error) + 4;
	be = open_ok(&ops, NULL);
	ck_assert(!kvb_backend_has(be, offsetof(kvb_backend_ops_t, last_error)));
	ck_assert_str_eq(be->ops->last_error(be), "");
	kvb_backend_close(be);

	/* just the mandatory ops (event_poll is the last of them) */
	ops.size = offsetof(kvb_backend_ops_t, event_poll) + sizeof(ops.event_poll);
	be = open_ok(&ops, NULL);
	ck_assert(kvb_backend_has(be, offsetof(kvb_backend_ops_t, event_poll)));
	ck_assert(!kvb_backend_has(be, offsetof(kvb_backend_ops_t, last_error)));
	kvb_backend_close(be);
	ck_assert_int_eq(fake.ext_gets, 0);
	ck_assert_int_eq(fake.last_errors, 1);
}
END_TEST

START_TEST(test_bad_tables)
{
	fake_reset();
	kvb_backend_ops_t ops = min_ops;

	ops.abi = 0;
	open_fails(&ops, KVB_ERR_ABI, "'test_minimal' built for ABI 0");
	ops.abi = KVB_BACKEND_ABI + 1;
	open_fails(&ops, KVB_ERR_ABI, "ABI 2");
	ops.abi = UINT32_MAX;
	open_fails(&ops, KVB_ERR_ABI, "4294967295");

	for (size_t i = 0; i < G_N_ELEMENTS(mandatory_ops); i++) {
		ops = min_ops;
		void (*none)(void) = NULL;
		memcpy((char *)&ops + mandatory_ops[i], &none, sizeof(none));
		open_fails(&ops, KVB_ERR_ABI, "lacks a mandatory op");
		ck_assert_int_eq(kvb_backend_register(&ops), KVB_ERR_ABI);
	}
	/* present but past size */
	ops = min_ops;
	ops.size = offsetof(kvb_backend_ops_t, event_poll);
	open_fails(&ops, KVB_ERR_ABI, "lacks a mandatory op");
	ops.size = 0;
	open_fails(&ops, KVB_ERR_ABI, "table size 0");

	/* sizes that would wrap the allocation */
	ops = min_ops;
	ops.instance_size = SIZE_MAX;
	open_fails(&ops, KVB_ERR_INVALID, "instance_size");
	ops = min_ops;
	ops.conn_size = SIZE_MAX - 8;
	open_fails(&ops, KVB_ERR_INVALID, "conn_size");

	ops = min_ops;
	ops.name = NULL;
	open_fails(&ops, KVB_ERR_INVALID, "name");
	open_fails(NULL, KVB_ERR_INVALID, "missing");
	kvb_err_t err;
	ck_assert_int_eq(kvb_backend_open(&min_ops, NULL, NULL, &err), KVB_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "out is NULL"));
	ck_assert_int_eq(fake.opens, 0);
}
END_TEST

START_TEST(test_open_failure)
{
	fake_reset();
	kvb_backend_ops_t ops = min_ops;
	ops.name = "test_failing";
	ops.instance_close = fake_close;

	/* no message of its own: the core writes one (over a stale one) */
	fake.open_rc = KVB_ERR_TRANSPORT;
	open_fails(&ops, KVB_ERR_TRANSPORT, "'test_failing' failed to open");
	/* its own message is kept */
	fake.open_sets_message = true;
	fake.open_rc = KVB_ERR_NOT_FOUND;
	open_fails(&ops, KVB_ERR_NOT_FOUND, "fake: device 7 is gone");
	/* a failed open is never closed */
	ck_assert_int_eq(fake.opens, 4);
	ck_assert_int_eq(fake.closes, 0);
}
END_TEST

/* The private areas are as large as declared: written end to end (an
 * overrun is an ASan or valgrind error), aligned, and zeroed for conns. */
START_TEST(test_private_areas)
{
	static const size_t sizes[] = {0, 1, 15, 16, 17, FAKE_INSTANCE_SIZE, 4096};

	for (size_t i = 0; i < G_N_ELEMENTS(sizes); i++) {
		fake_reset();
		kvb_backend_ops_t ops = min_ops;
		ops.instance_close = fake_close;
		ops.instance_size = sizes[i];
		ops.conn_size = sizes[G_N_ELEMENTS(sizes) - 1 - i];
		fake.priv_size = sizes[i];
		kvb_backend_t *be = open_ok(&ops, NULL);
		/* the copied table lies after the private area, intact */
		ck_assert_uint_eq(be->ops->instance_size, sizes[i]);
		ck_assert(be->ops->clock_now_ns == fake_now);
		ck_assert((const char *)be->ops >= (const char *)be->priv + sizes[i]);

		kvb_conn_t *c[3];
		for (int k = 0; k < 3; k++) {
			c[k] = kvb_conn_alloc(be);
			ck_assert_ptr_nonnull(c[k]);
			ck_assert_ptr_eq(c[k]->backend, be);
			ck_assert_ptr_null(c[k]->user);
			ck_assert_uint_eq((uintptr_t)c[k]->priv % 16, 0);
			for (size_t b = 0; b < ops.conn_size; b++)
				ck_assert_uint_eq(c[k]->priv[b], 0);
			memset(c[k]->priv, 0x3c + k, ops.conn_size);
		}
		for (int k = 0; k < 3; k++) {
			for (size_t b = 0; b < ops.conn_size; b++)
				ck_assert_uint_eq(c[k]->priv[b], 0x3c + k);
			kvb_conn_free(c[k]);
		}
		kvb_backend_close(be); /* fake_close checks priv is still 0xa5 */
		ck_assert_int_eq(fake.closes, 1);
	}
	kvb_conn_free(NULL);
}
END_TEST

START_TEST(test_registry)
{
	fake_reset();
	/* distinct static tables: the registry keeps the pointers */
	static kvb_backend_ops_t reg_a, reg_b, reg_c;
	reg_a = min_ops;
	reg_a.name = "test_registry_a";
	reg_b = min_ops;
	reg_b.name = "test_registry_b";
	reg_c = min_ops;
	reg_c.name = "test_registry_a"; /* a's name, another table */

	ck_assert_ptr_null(kvb_backend_find("test_registry_a"));
	ck_assert_int_eq(kvb_backend_register(&reg_a), KVB_OK);
	ck_assert_int_eq(kvb_backend_register(&reg_b), KVB_OK);
	ck_assert_ptr_eq(kvb_backend_find("test_registry_a"), &reg_a);
	ck_assert_ptr_eq(kvb_backend_find("test_registry_b"), &reg_b);
	/* the same table again is fine; the same name from another is not */
	ck_assert_int_eq(kvb_backend_register(&reg_a), KVB_OK);
	ck_assert_int_eq(kvb_backend_register(&reg_c), KVB_ERR_EXISTS);
	ck_assert_ptr_eq(kvb_backend_find("test_registry_a"), &reg_a);

	ck_assert_ptr_null(kvb_backend_find("test_registry"));
	ck_assert_ptr_null(kvb_backend_find(""));
	ck_assert_ptr_null(kvb_backend_find(NULL));

	/* bad tables are refused */
	kvb_backend_ops_t bad = min_ops;
	bad.name = "test_registry_bad";
	bad.abi = KVB_BACKEND_ABI + 1;
	ck_assert_int_eq(kvb_backend_register(&bad), KVB_ERR_ABI);
	bad.abi = 0;
	ck_assert_int_eq(kvb_backend_register(&bad), KVB_ERR_ABI);
	bad = min_ops;
	bad.name = "test_registry_bad";
	bad.size = offsetof(kvb_backend_ops_t, timer_arm);
	ck_assert_int_eq(kvb_backend_register(&bad), KVB_ERR_ABI);
	ck_assert_int_eq(kvb_backend_register(NULL), KVB_ERR_INVALID);
	ck_assert_ptr_null(kvb_backend_find("test_registry_bad"));

	/* a found table opens */
	kvb_backend_t *be = open_ok(kvb_backend_find("test_registry_b"), NULL);
	ck_assert_str_eq(be->ops->name, "test_registry_b");
	kvb_backend_close(be);
}
END_TEST

Suite *kvb_suite_backend(void)
{
	Suite *s = suite_create("backend");
	TCase *tc = tcase_create("vtable");

	tcase_add_test(tc, test_minimal_backend);
	tcase_add_test(tc, test_full_backend);
	tcase_add_test(tc, test_older_table);
	tcase_add_test(tc, test_bad_tables);
	tcase_add_test(tc, test_open_failure);
	tcase_add_test(tc, test_private_areas);
	tcase_add_test(tc, test_registry);
	suite_add_tcase(s, tc);
	return s;
}
