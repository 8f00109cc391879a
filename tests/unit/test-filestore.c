/*
 * The file token store, through file_token_ops only, each test on a fresh
 * store in its own temporary directory.  Small scrypt parameters keep it
 * fast; nothing here depends on them beyond speed.
 */
#include "token.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

static const struct token_ops *ops = &file_token_ops;

static const struct token_params params = {
	.scrypt_n = 1024, .scrypt_r = 8, .scrypt_p = 1, .max_tries = 3
};

#define SO_PIN "so-secret-1"
#define USER_PIN "user-secret-1"
#define PIN(s) (const CK_UTF8CHAR *)(s), (CK_ULONG)strlen(s)

/* Recognisable bytes that must never appear in the file. */
static const char private_label[] = "PRIVATE-LABEL-7f3a9c51";
static const char public_label[] = "PUBLIC-LABEL-11aa0e";
static const uint8_t secret_value[32] = {
	0xde, 0xad, 0xbe, 0xef, 0x51, 0x7e, 0xc2, 0x3a, 0x99, 0x01, 0x77,
	0x42, 0x13, 0x37, 0xc0, 0xde, 0xfe, 0xed, 0xfa, 0xce, 0x0b, 0xad,
	0xf0, 0x0d, 0x55, 0xaa, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc,
};

struct fx {
	char dir[256];
	char path[300];
	char wal[310];
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR");
	if (!f)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "%s/kt-filestore-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(f->dir)) {
		free(f);
		return -1;
	}
	snprintf(f->path, sizeof(f->path), "%s/token.ktok", f->dir);
	snprintf(f->wal, sizeof(f->wal), "%s-wal", f->path);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	DIR *d = opendir(f->dir);
	struct dirent *e;
	char p[600];
	while (d && (e = readdir(d))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		snprintf(p, sizeof(p), "%s/%s", f->dir, e->d_name);
		unlink(p);
	}
	if (d)
		closedir(d);
	rmdir(f->dir);
	free(f);
	return 0;
}

/* ---- helpers ----------------------------------------------------------- */

static uint8_t *read_all(const char *path, size_t *len)
{
	FILE *fp = fopen(path, "rb");
	uint8_t *buf = NULL;
	long n;
	*len = 0;
	if (!fp)
		return NULL;
	if (fseek(fp, 0, SEEK_END) == 0 && (n = ftell(fp)) >= 0 && fseek(fp, 0, SEEK_SET) == 0) {
		buf = malloc((size_t)n + 1);
		if (buf && fread(buf, 1, (size_t)n, fp) == (size_t)n)
			*len = (size_t)n;
	}
	fclose(fp);
	return buf;
}

static void write_all(const char *path, const void *buf, size_t len)
{
	FILE *fp = fopen(path, "wb");
	assert_non_null(fp);
	assert_int_equal(fwrite(buf, 1, len, fp), len);
	assert_int_equal(fclose(fp), 0);
}

static bool file_has(const char *path, const void *needle, size_t nlen)
{
	size_t len;
	uint8_t *buf = read_all(path, &len);
	bool found = false;
	for (size_t i = 0; buf && !found && i + nlen <= len; i++)
		found = memcmp(buf + i, needle, nlen) == 0;
	free(buf);
	return found;
}

static bool exists(const char *path)
{
	struct stat sb;
	return stat(path, &sb) == 0;
}

static struct token_store *create_store(struct fx *f)
{
	struct token_store *t = NULL;
	assert_int_equal(ops->open(f->path, true, &t), CKR_OK);
	assert_non_null(t);
	return t;
}

static struct token_store *open_store(struct fx *f)
{
	struct token_store *t = NULL;
	assert_int_equal(ops->open(f->path, false, &t), CKR_OK);
	assert_non_null(t);
	return t;
}

/* A created, initialised store with a user PIN. */
static struct token_store *ready_store(struct fx *f)
{
	struct token_store *t = create_store(f);
	struct token_key *so = NULL;
	assert_int_equal(ops->initialize(t, PIN(SO_PIN), "test token", &params), CKR_OK);
	assert_int_equal(ops->login(t, CKU_SO, PIN(SO_PIN), &so), CKR_OK);
	assert_int_equal(ops->init_pin(t, so, PIN(USER_PIN)), CKR_OK);
	ops->key_free(so);
	return t;
}

static struct token_key *login_user(struct token_store *t)
{
	struct token_key *k = NULL;
	assert_int_equal(ops->login(t, CKU_USER, PIN(USER_PIN), &k), CKR_OK);
	assert_non_null(k);
	return k;
}

static struct token_state get_state(struct token_store *t)
{
	struct token_state st;
	assert_int_equal(ops->state(t, &st), CKR_OK);
	return st;
}

static struct attrs *obj_new(CK_OBJECT_CLASS cls, bool priv, const char *label, const void *value,
			     size_t vlen)
{
	struct attrs *a = attrs_new();
	assert_non_null(a);
	assert_int_equal(attrs_set_ulong(a, CKA_CLASS, cls), CKR_OK);
	assert_int_equal(attrs_set_bool(a, CKA_TOKEN, true), CKR_OK);
	assert_int_equal(attrs_set_bool(a, CKA_PRIVATE, priv), CKR_OK);
	if (label)
		assert_int_equal(attrs_set(a, CKA_LABEL, label, strlen(label)), CKR_OK);
	if (value)
		assert_int_equal(attrs_set(a, CKA_VALUE, value, vlen), CKR_OK);
	return a;
}

/* A public certificate, a private data object, a public secret key. */
static struct attrs *cert_obj(void)
{
	return obj_new(CKO_CERTIFICATE, false, public_label, "cert-der", 8);
}

static struct attrs *private_obj(void)
{
	return obj_new(CKO_DATA, true, private_label, "private-data", 12);
}

static struct attrs *secret_key_obj(void)
{
	struct attrs *a = obj_new(CKO_SECRET_KEY, false, "aes key", secret_value,
				  sizeof(secret_value));
	assert_int_equal(attrs_set_ulong(a, CKA_KEY_TYPE, CKK_AES), CKR_OK);
	return a;
}

static uint64_t add(struct token_store *t, const struct token_key *k, struct attrs *a)
{
	uint64_t id = 0;
	assert_int_equal(ops->object_add(t, k, a, &id), CKR_OK);
	assert_true(id > 0);
	attrs_free(a);
	return id;
}

#define MAX_LOADED 64
struct loaded {
	size_t n;
	uint64_t id[MAX_LOADED];
	struct attrs *a[MAX_LOADED];
	bool complete[MAX_LOADED];
};

static CK_RV collect(void *ctx, uint64_t id, struct attrs *a, bool complete)
{
	struct loaded *l = ctx;
	if (l->n == MAX_LOADED) {
		attrs_free(a);
		return CKR_HOST_MEMORY;
	}
	l->id[l->n] = id;
	l->a[l->n] = a;
	l->complete[l->n] = complete;
	l->n++;
	return CKR_OK;
}

static void loaded_free(struct loaded *l)
{
	for (size_t i = 0; i < l->n; i++)
		attrs_free(l->a[i]);
	memset(l, 0, sizeof(*l));
}

static void load(struct token_store *t, const struct token_key *k, struct loaded *l)
{
	memset(l, 0, sizeof(*l));
	assert_int_equal(ops->load(t, k, collect, l), CKR_OK);
}

/* Index of object `id` in l, or -1. */
static int find(const struct loaded *l, uint64_t id)
{
	for (size_t i = 0; i < l->n; i++)
		if (l->id[i] == id)
			return (int)i;
	return -1;
}

static bool has_value(const struct attrs *a, CK_ATTRIBUTE_TYPE type, const void *v, size_t len)
{
	const CK_ATTRIBUTE *at = attrs_get(a, type);
	return at && at->ulValueLen == len && memcmp(at->pValue, v, len) == 0;
}

/* Edit the file behind the store's back, as an attacker with write access
 * to it could. */
static void db_exec(const char *path, const char *sql)
{
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	sqlite3_busy_timeout(db, 5000);
	assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_changes(db) > 0 || strncmp(sql, "UPDATE", 6) != 0, 1);
	sqlite3_close(db);
}

static long long db_count(const char *path, const char *sql)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *s = NULL;
	long long n;
	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(s), SQLITE_ROW);
	n = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	sqlite3_close(db);
	return n;
}

static void flip_value_byte(const char *path, uint64_t id, CK_ATTRIBUTE_TYPE type, int offset)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *s = NULL;
	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	sqlite3_busy_timeout(db, 5000);
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT value FROM attributes "
						"WHERE obj = ?1 AND type = ?2",
					    -1, &s, NULL),
			 SQLITE_OK);
	sqlite3_bind_int64(s, 1, (sqlite3_int64)id);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)type);
	assert_int_equal(sqlite3_step(s), SQLITE_ROW);
	int n = sqlite3_column_bytes(s, 0);
	assert_true(n > offset);
	uint8_t *v = malloc((size_t)n);
	assert_non_null(v);
	memcpy(v, sqlite3_column_blob(s, 0), (size_t)n);
	sqlite3_finalize(s);
	v[offset] ^= 0x01;
	assert_int_equal(sqlite3_prepare_v2(db, "UPDATE attributes SET value = ?3 "
						"WHERE obj = ?1 AND type = ?2",
					    -1, &s, NULL),
			 SQLITE_OK);
	sqlite3_bind_int64(s, 1, (sqlite3_int64)id);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)type);
	sqlite3_bind_blob(s, 3, v, n, SQLITE_TRANSIENT);
	assert_int_equal(sqlite3_step(s), SQLITE_DONE);
	assert_int_equal(sqlite3_changes(db), 1);
	sqlite3_finalize(s);
	sqlite3_close(db);
	free(v);
}

/* Opening `path` must fail as not recognised and leave it byte for byte. */
static void assert_rejected(const char *path, bool create)
{
	size_t before_len, after_len;
	uint8_t *before = read_all(path, &before_len);
	struct token_store *t = NULL;
	assert_non_null(before);
	assert_int_equal(ops->open(path, create, &t), CKR_TOKEN_NOT_RECOGNIZED);
	assert_null(t);
	uint8_t *after = read_all(path, &after_len);
	assert_non_null(after);
	assert_int_equal(before_len, after_len);
	assert_memory_equal(before, after, before_len);
	free(before);
	free(after);
}

/* ---- open / create ----------------------------------------------------- */

static void test_create_open_roundtrip(void **state)
{
	struct fx *f = *state;
	struct token_store *t = create_store(f);
	struct token_state st = get_state(t);
	char serial[17];
	struct stat sb;

	assert_false(st.initialized);
	assert_false(st.user_pin_set);
	assert_string_equal(st.label, "");
	assert_int_equal(strlen(st.serial), 16);
	assert_int_equal(strspn(st.serial, "0123456789abcdef"), 16);
	assert_int_equal(st.so_fails, 0);
	assert_int_equal(st.user_fails, 0);
	strcpy(serial, st.serial);
	ops->close(t);

	assert_int_equal(stat(f->path, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);

	t = open_store(f);
	st = get_state(t);
	assert_string_equal(st.serial, serial);
	assert_false(st.initialized);
	ops->close(t);

	/* create on an existing store opens it (same serial), it does not
	 * replace it. */
	t = create_store(f);
	st = get_state(t);
	assert_string_equal(st.serial, serial);
	ops->close(t);

	/* No temporary file left behind. */
	DIR *d = opendir(f->dir);
	struct dirent *e;
	int n = 0;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	assert_int_equal(n, 1);

	/* Two fresh stores get different serials. */
	char other[320];
	snprintf(other, sizeof(other), "%s/other.ktok", f->dir);
	assert_int_equal(ops->open(other, true, &t), CKR_OK);
	st = get_state(t);
	assert_string_not_equal(st.serial, serial);
	ops->close(t);
}

static void test_open_missing(void **state)
{
	struct fx *f = *state;
	struct token_store *t = NULL;
	assert_int_equal(ops->open(f->path, false, &t), CKR_TOKEN_NOT_RECOGNIZED);
	assert_null(t);
	assert_false(exists(f->path));
	/* A directory is not a store either. */
	assert_int_equal(ops->open(f->dir, false, &t), CKR_TOKEN_NOT_RECOGNIZED);
}

static void test_open_garbage(void **state)
{
	struct fx *f = *state;
	uint8_t buf[8192];
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 131 + 7);
	write_all(f->path, buf, sizeof(buf));
	assert_rejected(f->path, false);
	assert_rejected(f->path, true);

	/* Text, and an empty file (which SQLite would call an empty database). */
	write_all(f->path, "hello, I am not a database\n", 27);
	assert_rejected(f->path, false);
	write_all(f->path, "", 0);
	assert_rejected(f->path, false);
	assert_rejected(f->path, true);
}

static void test_open_truncated(void **state)
{
	struct fx *f = *state;
	struct token_store *t = ready_store(f);
	struct token_key *k = login_user(t);
	for (int i = 0; i < 40; i++) {
		char label[32];
		snprintf(label, sizeof(label), "object %d", i);
		add(t, k, obj_new(CKO_DATA, i % 2, label, "some value bytes", 16));
	}
	ops->key_free(k);
	ops->close(t);
	assert_false(exists(f->wal)); /* checkpointed into the main file */

	size_t len;
	uint8_t *full = read_all(f->path, &len);
	assert_non_null(full);
	assert_true(len > 3 * 4096);
	const size_t cuts[] = { 50, 100, 4096, 4096 + 100, 2 * 4096, len / 2, len - 4096, len - 1 };
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
		write_all(f->path, full, cuts[i]);
		assert_rejected(f->path, false);
	}
	/* And the whole file is still fine. */
	write_all(f->path, full, len);
	t = open_store(f);
	ops->close(t);
	free(full);
}

static void test_open_foreign_sqlite(void **state)
{
	struct fx *f = *state;
	sqlite3 *db = NULL;

	/* Some other application's database. */
	assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db,
				      "CREATE TABLE moz_cookies (id INTEGER PRIMARY KEY, v TEXT);"
				      "INSERT INTO moz_cookies (v) VALUES ('x');",
				      NULL, NULL, NULL),
			 SQLITE_OK);
	sqlite3_close(db);
	assert_rejected(f->path, false);
	assert_rejected(f->path, true);
	unlink(f->path);

	/* Same table names, no magic. */
	assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db,
				      "CREATE TABLE meta (key TEXT PRIMARY KEY, value);"
				      "INSERT INTO meta VALUES ('schema', 1);"
				      "CREATE TABLE objects (id INTEGER PRIMARY KEY);",
				      NULL, NULL, NULL),
			 SQLITE_OK);
	sqlite3_close(db);
	assert_rejected(f->path, false);
	unlink(f->path);

	/* A real store with a trigger added: not accepted either. */
	struct token_store *t = create_store(f);
	ops->close(t);
	db_exec(f->path, "CREATE TRIGGER t AFTER UPDATE ON meta BEGIN SELECT 1; END;");
	assert_rejected(f->path, false);
	unlink(f->path);

	/* A store from a future schema. */
	t = create_store(f);
	ops->close(t);
	db_exec(f->path, "UPDATE meta SET value = 2 WHERE key = 'schema'");
	assert_rejected(f->path, false);
	unlink(f->path);

	/* Damaged metadata: a wrapped key of the wrong length. */
	t = ready_store(f);
	ops->close(t);
	db_exec(f->path, "UPDATE meta SET value = x'0102' WHERE key = 'so_wrap'");
	assert_rejected(f->path, false);
}

/* ---- PINs -------------------------------------------------------------- */

static void test_initialize_and_so_login(void **state)
{
	struct fx *f = *state;
	struct token_store *t = create_store(f);
	struct token_key *k = NULL;
	struct token_state st;

	/* Nothing to log in to yet. */
	assert_int_equal(ops->login(t, CKU_SO, PIN(SO_PIN), &k), CKR_USER_PIN_NOT_INITIALIZED);
	assert_int_equal(ops->login(t, CKU_USER, PIN(USER_PIN), &k), CKR_USER_PIN_NOT_INITIALIZED);
	assert_null(k);

	assert_int_equal(ops->initialize(t, PIN(SO_PIN), "my label", &params), CKR_OK);
	st = get_state(t);
	assert_true(st.initialized);
	assert_false(st.user_pin_set);
	assert_string_equal(st.label, "my label");
	assert_int_equal(st.max_tries, 3);
	assert_int_equal(st.params.scrypt_n, 1024);
	assert_int_equal(st.params.scrypt_r, 8);
	assert_int_equal(st.params.scrypt_p, 1);
	assert_int_equal(st.params.max_tries, 3);

	assert_int_equal(ops->login(t, CKU_SO, PIN("wrong"), &k), CKR_PIN_INCORRECT);
	assert_null(k);
	assert_int_equal(get_state(t).so_fails, 1);
	assert_int_equal(ops->login(t, CKU_SO, PIN(SO_PIN), &k), CKR_OK);
	assert_non_null(k);
	ops->key_free(k);
	assert_int_equal(get_state(t).so_fails, 0);
	/* The caller may not want the key. */
	assert_int_equal(ops->login(t, CKU_SO, PIN(SO_PIN), NULL), CKR_OK);

	/* No user PIN yet. */
	assert_int_equal(ops->login(t, CKU_USER, PIN(USER_PIN), &k), CKR_USER_PIN_NOT_INITIALIZED);
	assert_int_equal(get_state(t).user_fails, 0);
	assert_int_equal(ops->login(t, CKU_CONTEXT_SPECIFIC, PIN(USER_PIN), &k),
			 CKR_USER_TYPE_INVALID);

	/* Bad parameters are refused before anything changes. */
	struct token_params bad = params;
	bad.scrypt_n = 1000;
	assert_int_equal(ops->initialize(t, PIN(SO_PIN), "x", &bad), CKR_ARGUMENTS_BAD);
	bad = params;
	bad.scrypt_n = 512;
	assert_int_equal(ops->initialize(t, PIN(SO_PIN), "x", &bad), CKR_ARGUMENTS_BAD);
	bad = params;
	bad.max_tries = 0;
	assert_int_equal(ops->initialize(t, PIN(SO_PIN), "x", &bad), CKR_ARGUMENTS_BAD);
	bad = params;
	bad.scrypt_n = 1ull << 40;
	assert_int_equal(ops->initialize(t, PIN(SO_PIN), "x", &bad), CKR_ARGUMENTS_BAD);
	assert_int_equal(ops->initialize(t, PIN(SO_PIN), "a label that is longer than 32 bytes",
					 &params),
			 CKR_ARGUMENTS_BAD);
	assert_string_equal(get_state(t).label, "my label");
	assert_int_equal(get_state(t).so_fails, 0);
	ops->close(t);
}

static void test_user_pin(void **state)
{
	struct fx *f = *state;
	struct token_store *t = ready_store(f);
	struct token_key *k = NULL;

	assert_true(get_state(t).user_pin_set);
	assert_int_equal(ops->login(t, CKU_USER, PIN("wrong"), &k), CKR_PIN_INCORRECT);
	assert_null(k);
	assert_int_equal(get_state(t).user_fails, 1);
	assert_int_equal(get_state(t).so_fails, 0);
	k = login_user(t);
	assert_int_equal(get_state(t).user_fails, 0);
	/* The SO PIN is not the user PIN and vice versa. */
	assert_int_equal(ops->login(t, CKU_USER, PIN(SO_PIN), NULL), CKR_PIN_INCORRECT);
	assert_int_equal(ops->login(t, CKU_SO, PIN(USER_PIN), NULL), CKR_PIN_INCORRECT);
	assert_int_equal(ops->login(t, CKU_SO, PIN(SO_PIN), NULL), CKR_OK);
	assert_int_equal(ops->login(t, CKU_USER, PIN(USER_PIN), NULL), CKR_OK);

	/* User and SO keys unseal the same objects. */
	uint64_t id = add(t, k, private_obj());
	struct token_key *so = NULL;
	assert_int_equal(ops->login(t, CKU_SO, PIN(SO_PIN), &so), CKR_OK);
	struct loaded l;
	load(t, so, &l);
	assert_int_equal(l.n, 1);
	assert_int_equal(l.id[0], id);
	assert_true(has_value(l.a[0], CKA_LABEL, private_label, strlen(private_label)));
	loaded_free(&l);

	/* An empty PIN is a PIN like any other here (length rules are the
	 * module's). */
	assert_int_equal(ops->init_pin(t, so, NULL, 0), CKR_OK);
	assert_int_equal(ops->login(t, CKU_USER, NULL, 0, NULL), CKR_OK);
	assert_int_equal(ops->login(t, CKU_USER, PIN(USER_PIN), NULL), CKR_PIN_INCORRECT);
	assert_int_equal(ops->init_pin(t, NULL, PIN(USER_PIN)), CKR_USER_NOT_LOGGED_IN);
	/* Only the SO sets the user PIN: a user's key will not do. */
	assert_int_equal(ops->init_pin(t, k, PIN("mine")), CKR_USER_NOT_LOGGED_IN);
	assert_int_equal(ops->login(t, CKU_USER, NULL, 0, NULL), CKR_OK);
	ops->key_free(so);
	ops->key_free(k);
	ops->close(t);
}

static void test_lockout(void **state)
{
	struct fx *f = *state;
	struct token_store *t = ready_store(f);
	struct token_key *so = NULL;

	assert_int_equal(ops->login(t, CKU_USER, PIN("bad1"), NULL), CKR_PIN_INCORRECT);
	assert_int_equal(ops->login(t, CKU_USER, PIN("bad2"), NULL), CKR_PIN_INCORRECT);
	assert_int_equal(get_state(t).user_fails, 2);
	/* The failure that reaches max_tries locks. */
	assert_int_equal(ops->login(t, CKU_USER, PIN("bad3"), NULL), CKR_PIN_LOCKED);
	assert_int_equal(get_state(t).user_fails, 3);
	/* Locked means locked, even for the right PIN, and no more counting. */
	assert_int_equal(ops->login(t, CKU_USER, PIN(USER_PIN), NULL), CKR_PIN_LOCKED);
	assert_int_equal(ops->set_pin(t, CKU_USER, PIN(USER_PIN), PIN("new")), CKR_PIN_LOCKED);
	assert_int_equal(get_state(t).user_fails, 3);
	/* The SO is not affected. */
	assert_int_equal(get_state(t).so_fails, 0);

	/* The SO unlocks by setting a new user PIN. */
	assert_int_equal(ops->login(t, CKU_SO, PIN(SO_PIN), &so), CKR_OK);
	assert_int_equal(ops->init_pin(t, so, PIN("fresh-pin")), CKR_OK);
	ops->key_free(so);
	assert_int_equal(get_state(t).user_fails, 0);
	assert_int_equal(ops->login(t, CKU_USER, PIN(USER_PIN), NULL), CKR_PIN_INCORRECT);
	assert_int_equal(ops->login(t, CKU_USER, PIN("fresh-pin"), NULL), CKR_OK);

	/* SO lockout: nothing unlocks it but... nothing; re-initialisation
	 * needs the SO PIN too. */
	for (int i = 0; i < 2; i++)
		assert_int_equal(ops->login(t, CKU_SO, PIN("bad"), NULL), CKR_PIN_INCORRECT);
	assert_int_equal(ops->login(t, CKU_SO, PIN("bad"), NULL), CKR_PIN_LOCKED);
	assert_int_equal(ops->login(t, CKU_SO, PIN(SO_PIN), NULL), CKR_PIN_LOCKED);
	assert_int_equal(ops->initialize(t, PIN(SO_PIN), "again", &params), CKR_PIN_LOCKED);
	assert_int_equal(get_state(t).so_fails, 3);
	assert_string_equal(get_state(t).label, "test token");
	ops->close(t);
}

static void test_set_pin(void **state)
{
	struct fx *f = *state;
	struct token_store *t = ready_store(f);
	struct token_key *k = login_user(t);
	uint64_t id = add(t, k, private_obj());
	ops->key_free(k);

	/* User. */
	assert_int_equal(ops->set_pin(t, CKU_USER, PIN("wrong"), PIN("user-2")), CKR_PIN_INCORRECT);
	assert_int_equal(get_state(t).user_fails, 1);
	assert_int_equal(ops->set_pin(t, CKU_USER, PIN(USER_PIN), PIN("user-2")), CKR_OK);
	assert_int_equal(get_state(t).user_fails, 0);
	assert_int_equal(ops->login(t, CKU_USER, PIN(USER_PIN), NULL), CKR_PIN_INCORRECT);
	assert_int_equal(ops->login(t, CKU_USER, PIN("user-2"), &k), CKR_OK);
	/* Same token key: the object still opens. */
	struct loaded l;
	load(t, k, &l);
	assert_int_equal(l.n, 1);
	assert_int_equal(l.id[0], id);
	assert_true(l.complete[0]);
	loaded_free(&l);
	ops->key_free(k);

	/* SO. */
	assert_int_equal(ops->set_pin(t, CKU_SO, PIN("wrong"), PIN("so-2")), CKR_PIN_INCORRECT);
	assert_int_equal(get_state(t).so_fails, 1);
	assert_int_equal(ops->set_pin(t, CKU_SO, PIN(SO_PIN), PIN("so-2")), CKR_OK);
	assert_int_equal(get_state(t).so_fails, 0);
	assert_int_equal(ops->login(t, CKU_SO, PIN(SO_PIN), NULL), CKR_PIN_INCORRECT);
	assert_int_equal(ops->login(t, CKU_SO, PIN("so-2"), NULL), CKR_OK);
	/* The user PIN is untouched by the SO's change. */
	assert_int_equal(ops->login(t, CKU_USER, PIN("user-2"), NULL), CKR_OK);
	assert_int_equal(ops->set_pin(t, CKU_CONTEXT_SPECIFIC, PIN("a"), PIN("b")),
			 CKR_USER_TYPE_INVALID);
	ops->close(t);

	/* And all of it survives a reopen. */
	t = open_store(f);
	assert_int_equal(ops->login(t, CKU_SO, PIN("so-2"), NULL), CKR_OK);
	assert_int_equal(ops->login(t, CKU_USER, PIN("user-2"), NULL), CKR_OK);
	ops->close(t);
}

static void test_reinitialize(void **state)
{
	struct fx *f = *state;
	struct token_store *t = ready_store(f);
	struct token_key *k = login_user(t);
	struct loaded l;
	char serial[17];

	strcpy(serial, get_state(t).serial);
	add(t, k, cert_obj());
	uint64_t last = add(t, k, private_obj());

	/* Wrong SO PIN: counted, nothing destroyed. */
	assert_int_equal(ops->initialize(t, PIN("wrong"), "new", &params), CKR_PIN_INCORRECT);
	assert_int_equal(get_state(t).so_fails, 1);
	load(t, k, &l);
	assert_int_equal(l.n, 2);
	loaded_free(&l);

	struct token_params p2 = params;
	p2.scrypt_n = 2048;
	p2.max_tries = 5;
	assert_int_equal(ops->initialize(t, PIN(SO_PIN), "renewed", &p2), CKR_OK);
	assert_int_equal(db_count(f->path, "SELECT count(*) FROM attributes"), 0);
	assert_int_equal(db_count(f->path, "SELECT count(*) FROM objects"), 0);
	struct token_state st = get_state(t);
	assert_true(st.initialized);
	assert_false(st.user_pin_set);
	assert_int_equal(st.so_fails, 0);
	assert_int_equal(st.user_fails, 0);
	assert_int_equal(st.max_tries, 5);
	assert_int_equal(st.params.scrypt_n, 2048);
	assert_string_equal(st.label, "renewed");
	assert_string_equal(st.serial, serial); /* the token is the same token */
	load(t, NULL, &l);
	assert_int_equal(l.n, 0);
	loaded_free(&l);
	assert_int_equal(ops->login(t, CKU_USER, PIN(USER_PIN), NULL),
			 CKR_USER_PIN_NOT_INITIALIZED);

	/* A key from before is dead: no writes with it, loads see only
	 * public objects. */
	uint64_t id = 0;
	struct attrs *a = private_obj();
	assert_int_equal(ops->object_add(t, k, a, &id), CKR_USER_NOT_LOGGED_IN);
	attrs_free(a);
	uint64_t pub = add(t, NULL, cert_obj());
	assert_true(pub > last); /* ids are never reused */
	load(t, k, &l);
	assert_int_equal(l.n, 1);
	assert_int_equal(l.id[0], pub);
	loaded_free(&l);
	ops->key_free(k);

	/* The new SO PIN works, and so does a new user PIN. */
	struct token_key *so = NULL;
	assert_int_equal(ops->login(t, CKU_SO, PIN(SO_PIN), &so), CKR_OK);
	assert_int_equal(ops->init_pin(t, so, PIN(USER_PIN)), CKR_OK);
	ops->key_free(so);
	k = login_user(t);
	add(t, k, private_obj());
	ops->key_free(k);
	ops->close(t);
}

/* ---- objects ----------------------------------------------------------- */

static void test_objects(void **state)
{
	struct fx *f = *state;
	struct token_store *t = ready_store(f);
	struct token_key *k = login_user(t);
	struct loaded l;
	struct attrs *a;
	uint64_t id;
	int i;

	/* What needs the key. */
	a = private_obj();
	assert_int_equal(ops->object_add(t, NULL, a, &id), CKR_USER_NOT_LOGGED_IN);
	attrs_free(a);
	a = secret_key_obj();
	assert_int_equal(ops->object_add(t, NULL, a, &id), CKR_USER_NOT_LOGGED_IN);
	attrs_free(a);
	a = attrs_new();
	assert_int_equal(attrs_set(a, CKA_LABEL, "x", 1), CKR_OK);
	assert_int_equal(ops->object_add(t, k, a, &id), CKR_TEMPLATE_INCOMPLETE);
	attrs_free(a);
	load(t, k, &l);
	assert_int_equal(l.n, 0);
	loaded_free(&l);

	uint64_t cert = add(t, NULL, cert_obj()); /* public, no key needed */
	uint64_t cert2 = add(t, k, cert_obj());   /* public, tagged */
	uint64_t priv = add(t, k, private_obj());
	uint64_t skey = add(t, k, secret_key_obj());
	assert_true(cert < cert2 && cert2 < priv && priv < skey);

	/* Without the key: no private objects, the public secret key without
	 * its value and marked incomplete. */
	load(t, NULL, &l);
	assert_int_equal(l.n, 3);
	assert_int_equal(find(&l, priv), -1);
	i = find(&l, cert);
	assert_true(i >= 0 && l.complete[i]);
	assert_true(has_value(l.a[i], CKA_LABEL, public_label, strlen(public_label)));
	assert_true(has_value(l.a[i], CKA_VALUE, "cert-der", 8));
	i = find(&l, cert2);
	assert_true(i >= 0 && l.complete[i]);
	i = find(&l, skey);
	assert_true(i >= 0);
	assert_false(l.complete[i]);
	assert_false(attrs_has(l.a[i], CKA_VALUE));
	assert_true(has_value(l.a[i], CKA_LABEL, "aes key", 7));
	CK_ULONG kt;
	assert_true(attrs_get_ulong(l.a[i], CKA_KEY_TYPE, &kt) && kt == CKK_AES);
	loaded_free(&l);

	/* With it: everything, whole. */
	load(t, k, &l);
	assert_int_equal(l.n, 4);
	for (size_t j = 0; j < l.n; j++)
		assert_true(l.complete[j]);
	i = find(&l, priv);
	assert_true(i >= 0);
	assert_true(has_value(l.a[i], CKA_LABEL, private_label, strlen(private_label)));
	assert_true(has_value(l.a[i], CKA_VALUE, "private-data", 12));
	assert_int_equal(attrs_count(l.a[i]), 5);
	i = find(&l, skey);
	assert_true(has_value(l.a[i], CKA_VALUE, secret_value, sizeof(secret_value)));
	loaded_free(&l);

	/* Update replaces every attribute. */
	a = obj_new(CKO_DATA, true, "renamed", NULL, 0);
	assert_int_equal(attrs_set(a, CKA_APPLICATION, "", 0), CKR_OK); /* empty value */
	assert_int_equal(ops->object_update(t, NULL, priv, a), CKR_USER_NOT_LOGGED_IN);
	assert_int_equal(ops->object_update(t, k, priv, a), CKR_OK);
	attrs_free(a);
	/* A private object cannot be made public without the key. */
	a = cert_obj();
	assert_int_equal(ops->object_update(t, NULL, priv, a), CKR_USER_NOT_LOGGED_IN);
	/* ... while a public one can be rewritten without it. */
	assert_int_equal(ops->object_update(t, NULL, cert, a), CKR_OK);
	assert_int_equal(ops->object_update(t, k, 999999, a), CKR_OBJECT_HANDLE_INVALID);
	assert_int_equal(ops->object_update(t, k, UINT64_MAX, a), CKR_OBJECT_HANDLE_INVALID);
	attrs_free(a);
	load(t, k, &l);
	i = find(&l, priv);
	assert_true(i >= 0 && l.complete[i]);
	assert_true(has_value(l.a[i], CKA_LABEL, "renamed", 7));
	assert_false(attrs_has(l.a[i], CKA_VALUE));
	assert_true(attrs_has(l.a[i], CKA_APPLICATION));
	assert_int_equal(attrs_get(l.a[i], CKA_APPLICATION)->ulValueLen, 0);
	loaded_free(&l);

	/* Delete, attributes and all. */
	char sql[128];
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM attributes WHERE obj = %llu",
		 (unsigned long long)skey);
	assert_int_equal(db_count(f->path, sql), 6);
	assert_int_equal(ops->object_delete(t, skey), CKR_OK);
	assert_int_equal(db_count(f->path, sql), 0);
	assert_int_equal(ops->object_delete(t, skey), CKR_OBJECT_HANDLE_INVALID);
	assert_int_equal(ops->object_delete(t, 424242), CKR_OBJECT_HANDLE_INVALID);
	assert_int_equal(ops->object_delete(t, UINT64_MAX), CKR_OBJECT_HANDLE_INVALID);
	load(t, k, &l);
	assert_int_equal(l.n, 3);
	assert_int_equal(find(&l, skey), -1);
	loaded_free(&l);
	/* The highest id, once deleted, is not handed out again. */
	id = add(t, k, cert_obj());
	assert_true(id > skey);
	ops->key_free(k);
	ops->close(t);

	/* Persisted. */
	t = open_store(f);
	k = login_user(t);
	load(t, k, &l);
	assert_int_equal(l.n, 4);
	loaded_free(&l);
	ops->key_free(k);
	ops->close(t);
}

static void test_no_plaintext_on_disk(void **state)
{
	struct fx *f = *state;
	struct token_store *t = ready_store(f);
	struct token_key *k = login_user(t);
	uint64_t priv, skey;

	add(t, NULL, cert_obj());
	priv = add(t, k, private_obj());
	skey = add(t, k, secret_key_obj());
	/* Rewrite them so that old versions would be in the file too. */
	struct attrs *a = private_obj();
	assert_int_equal(ops->object_update(t, k, priv, a), CKR_OK);
	attrs_free(a);
	a = secret_key_obj();
	assert_int_equal(ops->object_update(t, k, skey, a), CKR_OK);
	attrs_free(a);

	/* While open, the data sits in the WAL; the positive control shows the
	 * scan can see stored text at all. */
	assert_true(exists(f->wal));
	assert_true(file_has(f->path, public_label, strlen(public_label)) ||
		    file_has(f->wal, public_label, strlen(public_label)));
	assert_false(file_has(f->path, private_label, strlen(private_label)));
	assert_false(file_has(f->wal, private_label, strlen(private_label)));
	assert_false(file_has(f->path, secret_value, sizeof(secret_value)));
	assert_false(file_has(f->wal, secret_value, sizeof(secret_value)));
	assert_false(file_has(f->path, USER_PIN, strlen(USER_PIN)));
	assert_false(file_has(f->wal, USER_PIN, strlen(USER_PIN)));
	ops->key_free(k);
	ops->close(t);

	/* After the checkpoint on close, the main file. */
	assert_true(file_has(f->path, public_label, strlen(public_label)));
	assert_false(file_has(f->path, private_label, strlen(private_label)));
	assert_false(file_has(f->path, secret_value, sizeof(secret_value)));
	assert_false(file_has(f->path, SO_PIN, strlen(SO_PIN)));
}

static void test_tamper(void **state)
{
	struct fx *f = *state;
	struct token_store *t = ready_store(f);
	struct token_key *k = login_user(t);
	struct loaded l;
	char sql[256];

	uint64_t cert = add(t, k, cert_obj());
	uint64_t priv = add(t, k, private_obj());
	uint64_t priv2 = add(t, k, private_obj());
	uint64_t skey = add(t, k, secret_key_obj());
	uint64_t plain = add(t, NULL, cert_obj()); /* written without key: untagged */

	/* 1. A flipped byte in a sealed value: that object is dropped, the
	 * others load. */
	flip_value_byte(f->path, priv, CKA_LABEL, 20);
	load(t, k, &l);
	assert_int_equal(l.n, 4);
	assert_int_equal(find(&l, priv), -1);
	assert_true(find(&l, priv2) >= 0);
	loaded_free(&l);
	/* Without the key it was never visible anyway. */
	load(t, NULL, &l);
	assert_int_equal(l.n, 3);
	loaded_free(&l);
	assert_int_equal(ops->object_delete(t, priv), CKR_OK);

	/* 2. A sealed value moved to another object (same type). */
	snprintf(sql, sizeof(sql),
		 "UPDATE attributes SET value = (SELECT value FROM attributes WHERE obj = %llu "
		 "AND type = %lu) WHERE obj = %llu AND type = %lu",
		 (unsigned long long)skey, (unsigned long)CKA_VALUE, (unsigned long long)priv2,
		 (unsigned long)CKA_VALUE);
	db_exec(f->path, sql);
	load(t, k, &l);
	assert_int_equal(find(&l, priv2), -1);
	assert_true(find(&l, skey) >= 0);
	loaded_free(&l);
	assert_int_equal(ops->object_delete(t, priv2), CKR_OK);

	/* 3. A clear attribute edited on a tagged public object: caught with
	 * the key; without it there is nothing to check against. */
	snprintf(sql, sizeof(sql),
		 "UPDATE attributes SET value = x'414141' WHERE obj = %llu AND type = %lu",
		 (unsigned long long)cert, (unsigned long)CKA_LABEL);
	db_exec(f->path, sql);
	load(t, k, &l);
	assert_int_equal(find(&l, cert), -1);
	assert_true(find(&l, plain) >= 0);
	loaded_free(&l);
	load(t, NULL, &l);
	assert_true(find(&l, cert) >= 0);
	loaded_free(&l);

	/* 4. A secret key relabelled as plain data: its sealed CKA_VALUE no
	 * longer fits the class, so it is refused with or without the key. */
	snprintf(sql, sizeof(sql),
		 "UPDATE attributes SET value = x'%02x00000000000000' "
		 "WHERE obj = %llu AND type = %lu",
		 (unsigned)CKO_DATA, (unsigned long long)skey, (unsigned long)CKA_CLASS);
	db_exec(f->path, sql);
	load(t, k, &l);
	assert_int_equal(find(&l, skey), -1);
	loaded_free(&l);
	load(t, NULL, &l);
	assert_int_equal(find(&l, skey), -1);
	loaded_free(&l);

	/* 5. A sealed flag cleared and a value planted in the clear. */
	uint64_t skey2 = add(t, k, secret_key_obj());
	snprintf(sql, sizeof(sql),
		 "UPDATE attributes SET sealed = 0, value = x'00' WHERE obj = %llu AND type = %lu",
		 (unsigned long long)skey2, (unsigned long)CKA_VALUE);
	db_exec(f->path, sql);
	load(t, NULL, &l);
	assert_int_equal(find(&l, skey2), -1);
	loaded_free(&l);

	/* 6. A row deleted from a private object, and an object's tag removed. */
	uint64_t priv3 = add(t, k, private_obj());
	uint64_t priv4 = add(t, k, private_obj());
	snprintf(sql, sizeof(sql), "DELETE FROM attributes WHERE obj = %llu AND type = %lu",
		 (unsigned long long)priv3, (unsigned long)CKA_VALUE);
	db_exec(f->path, sql);
	snprintf(sql, sizeof(sql), "UPDATE objects SET mac = NULL WHERE id = %llu",
		 (unsigned long long)priv4);
	db_exec(f->path, sql);
	load(t, k, &l);
	assert_int_equal(find(&l, priv3), -1);
	assert_int_equal(find(&l, priv4), -1);
	assert_true(find(&l, plain) >= 0);
	loaded_free(&l);

	/* 7. A private object flipped to public: still no label without the
	 * key (all its values are sealed), and caught with it. */
	uint64_t priv5 = add(t, k, private_obj());
	snprintf(sql, sizeof(sql),
		 "UPDATE attributes SET value = x'00' WHERE obj = %llu AND type = %lu",
		 (unsigned long long)priv5, (unsigned long)CKA_PRIVATE);
	db_exec(f->path, sql);
	load(t, NULL, &l);
	assert_int_equal(find(&l, priv5), -1);
	loaded_free(&l);
	load(t, k, &l);
	assert_int_equal(find(&l, priv5), -1);
	loaded_free(&l);

	ops->key_free(k);
	ops->close(t);
}

/* ---- several handles, persistence ------------------------------------- */

static void test_changed_between_handles(void **state)
{
	struct fx *f = *state;
	struct token_store *a = ready_store(f);
	struct token_store *b = open_store(f);
	struct token_key *ka = login_user(a);
	struct token_key *kb = login_user(b);
	struct loaded l;

	load(a, ka, &l);
	loaded_free(&l);
	load(b, kb, &l);
	loaded_free(&l);
	assert_false(ops->changed(a));
	assert_false(ops->changed(b));

	uint64_t id = add(b, kb, private_obj());
	assert_true(ops->changed(a));
	assert_false(ops->changed(a)); /* reported once */
	assert_false(ops->changed(b)); /* its own write */
	load(a, ka, &l);
	assert_int_equal(l.n, 1);
	assert_int_equal(l.id[0], id);
	loaded_free(&l);

	assert_int_equal(ops->object_delete(a, id), CKR_OK);
	assert_true(ops->changed(b));
	assert_false(ops->changed(a));

	/* Counters are shared at once (state reads fresh), without making
	 * every handle reload its objects. */
	assert_int_equal(ops->login(b, CKU_USER, PIN("wrong"), NULL), CKR_PIN_INCORRECT);
	assert_int_equal(get_state(a).user_fails, 1);
	assert_false(ops->changed(a));
	/* A PIN change is a change. */
	assert_int_equal(ops->set_pin(b, CKU_USER, PIN(USER_PIN), PIN("u2")), CKR_OK);
	assert_true(ops->changed(a));
	assert_int_equal(get_state(a).user_fails, 0);
	assert_int_equal(ops->login(a, CKU_USER, PIN("u2"), NULL), CKR_OK);

	ops->key_free(ka);
	ops->key_free(kb);
	ops->close(a);
	ops->close(b);
}

static void test_counters_persist(void **state)
{
	struct fx *f = *state;
	struct token_store *t = ready_store(f);

	assert_int_equal(ops->login(t, CKU_USER, PIN("bad"), NULL), CKR_PIN_INCORRECT);
	assert_int_equal(ops->login(t, CKU_USER, PIN("bad"), NULL), CKR_PIN_INCORRECT);
	assert_int_equal(ops->login(t, CKU_SO, PIN("bad"), NULL), CKR_PIN_INCORRECT);
	ops->close(t);

	t = open_store(f);
	struct token_state st = get_state(t);
	assert_int_equal(st.user_fails, 2);
	assert_int_equal(st.so_fails, 1);
	/* One more is the third: locked, across the restart. */
	assert_int_equal(ops->login(t, CKU_USER, PIN("bad"), NULL), CKR_PIN_LOCKED);
	ops->close(t);

	t = open_store(f);
	assert_int_equal(ops->login(t, CKU_USER, PIN(USER_PIN), NULL), CKR_PIN_LOCKED);
	assert_int_equal(ops->login(t, CKU_SO, PIN(SO_PIN), NULL), CKR_OK);
	assert_int_equal(get_state(t).so_fails, 0);
	ops->close(t);
}

/* ---- several processes ------------------------------------------------ */

/* Children never use cmocka (its failure path would run on in the child):
 * they report through their exit status.  No store is open in the parent
 * across fork(), as SQLite requires. */
static int child_work(const char *path, int go_fd, int wrong_logins, int adds)
{
	struct token_store *t = NULL;
	struct token_key *k = NULL;
	char c;
	int bad = 0;

	if (read(go_fd, &c, 1) != 1)
		return 10;
	if (ops->open(path, false, &t) != CKR_OK)
		return 11;
	for (int i = 0; i < wrong_logins; i++)
		if (ops->login(t, CKU_USER, PIN("nope"), NULL) != CKR_PIN_INCORRECT)
			bad = 12;
	if (!bad && ops->login(t, CKU_USER, PIN(USER_PIN), &k) != CKR_OK)
		bad = 13;
	for (int i = 0; !bad && i < adds; i++) {
		struct attrs *a = attrs_new();
		uint64_t id;
		if (!a || attrs_set_ulong(a, CKA_CLASS, CKO_DATA) != CKR_OK ||
		    attrs_set_bool(a, CKA_PRIVATE, i % 2) != CKR_OK ||
		    attrs_set(a, CKA_LABEL, "from a child", 12) != CKR_OK ||
		    ops->object_add(t, k, a, &id) != CKR_OK)
			bad = 14;
		attrs_free(a);
	}
	ops->key_free(k);
	ops->close(t);
	return bad;
}

static void test_processes(void **state)
{
	struct fx *f = *state;
	struct token_params p = params;
	struct token_store *t = create_store(f);
	struct token_key *so = NULL, *k;
	enum { KIDS = 4, WRONG = 5, ADDS = 15 };
	pid_t pid[KIDS];
	int go[2];
	struct loaded l;

	p.max_tries = 100;
	assert_int_equal(ops->initialize(t, PIN(SO_PIN), "shared", &p), CKR_OK);
	assert_int_equal(ops->login(t, CKU_SO, PIN(SO_PIN), &so), CKR_OK);
	assert_int_equal(ops->init_pin(t, so, PIN(USER_PIN)), CKR_OK);
	ops->key_free(so);
	ops->close(t);

	assert_int_equal(pipe(go), 0);
	for (int i = 0; i < KIDS; i++) {
		pid[i] = fork();
		assert_true(pid[i] >= 0);
		if (pid[i] == 0) {
			close(go[1]);
			_exit(child_work(f->path, go[0], WRONG, ADDS));
		}
	}
	close(go[0]);
	t = open_store(f);
	load(t, NULL, &l);
	loaded_free(&l);
	assert_false(ops->changed(t));
	/* Let them all loose at once. */
	assert_int_equal(write(go[1], "gggg", KIDS), KIDS);
	close(go[1]);
	for (int i = 0; i < KIDS; i++) {
		int status;
		assert_int_equal(waitpid(pid[i], &status, 0), pid[i]);
		assert_true(WIFEXITED(status));
		assert_int_equal(WEXITSTATUS(status), 0);
	}

	/* Every write landed, every object whole; the successful logins
	 * reset the counter, but each wrong guess was counted in between. */
	assert_true(ops->changed(t));
	k = login_user(t);
	load(t, k, &l);
	assert_int_equal(l.n, KIDS * ADDS);
	for (size_t i = 0; i < l.n; i++)
		assert_true(l.complete[i]);
	loaded_free(&l);
	ops->key_free(k);
	assert_int_equal(get_state(t).user_fails, 0);
	ops->close(t);

	/* Counting is exact under contention: only wrong guesses this time. */
	assert_int_equal(pipe(go), 0);
	for (int i = 0; i < KIDS; i++) {
		pid[i] = fork();
		assert_true(pid[i] >= 0);
		if (pid[i] == 0) {
			struct token_store *c = NULL;
			char ch;
			int bad = 0;
			close(go[1]);
			if (read(go[0], &ch, 1) != 1 || ops->open(f->path, false, &c) != CKR_OK)
				_exit(20);
			for (int j = 0; j < WRONG; j++)
				if (ops->login(c, CKU_USER, PIN("nope"), NULL) != CKR_PIN_INCORRECT)
					bad = 21;
			ops->close(c);
			_exit(bad);
		}
	}
	close(go[0]);
	assert_int_equal(write(go[1], "gggg", KIDS), KIDS);
	close(go[1]);
	for (int i = 0; i < KIDS; i++) {
		int status;
		assert_int_equal(waitpid(pid[i], &status, 0), pid[i]);
		assert_true(WIFEXITED(status));
		assert_int_equal(WEXITSTATUS(status), 0);
	}
	t = open_store(f);
	assert_int_equal(get_state(t).user_fails, KIDS * WRONG);
	ops->close(t);
}

/* A PIN check killed during the KDF has already been counted, even when
 * the PIN was right: killing the process is no way to get free guesses. */
static void test_kill_during_pin_check(void **state)
{
	struct fx *f = *state;
	struct token_params p = params;
	struct token_store *t = create_store(f);
	struct token_key *so = NULL;
	struct timespec ms = { 0, 1000000 };
	bool seen = false;
	pid_t pid;
	int status;

	p.scrypt_n = 1u << 16; /* slow enough (64 MiB) to be caught in the act */
	assert_int_equal(ops->initialize(t, PIN(SO_PIN), "slow", &p), CKR_OK);
	assert_int_equal(ops->login(t, CKU_SO, PIN(SO_PIN), &so), CKR_OK);
	assert_int_equal(ops->init_pin(t, so, PIN(USER_PIN)), CKR_OK);
	ops->key_free(so);
	ops->close(t);

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct token_store *c = NULL;
		if (ops->open(f->path, false, &c) != CKR_OK)
			_exit(30);
		_exit(ops->login(c, CKU_USER, PIN(USER_PIN), NULL) == CKR_OK ? 0 : 31);
	}
	t = open_store(f);
	for (int i = 0; i < 20000 && !seen; i++) {
		seen = get_state(t).user_fails == 1;
		if (!seen)
			nanosleep(&ms, NULL);
	}
	assert_true(seen);
	kill(pid, SIGKILL);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(get_state(t).user_fails, 1);
	ops->close(t);

	/* The store is fine afterwards, and the count persisted. */
	t = open_store(f);
	assert_int_equal(get_state(t).user_fails, 1);
	assert_int_equal(ops->login(t, CKU_USER, PIN(USER_PIN), NULL), CKR_OK);
	assert_int_equal(get_state(t).user_fails, 0);
	ops->close(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_create_open_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_missing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_garbage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_truncated, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_foreign_sqlite, setup, teardown),
		cmocka_unit_test_setup_teardown(test_initialize_and_so_login, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_pin, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lockout, setup, teardown),
		cmocka_unit_test_setup_teardown(test_set_pin, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reinitialize, setup, teardown),
		cmocka_unit_test_setup_teardown(test_objects, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_plaintext_on_disk, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tamper, setup, teardown),
		cmocka_unit_test_setup_teardown(test_changed_between_handles, setup, teardown),
		cmocka_unit_test_setup_teardown(test_counters_persist, setup, teardown),
		cmocka_unit_test_setup_teardown(test_processes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_kill_during_pin_check, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
