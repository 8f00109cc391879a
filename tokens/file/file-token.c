/*
 * The built-in token: one SQLite file per token.
 *
 * Schema 1 (see SQL_* below):
 *   meta        key/value: magic, schema version, serial, label, scrypt
 *               parameters, max tries, failure counters, per-PIN salts, the
 *               token key wrapped under each PIN, the key's id, and a
 *               generation bumped by every change other than a counter.
 *   objects     id AUTOINCREMENT (ids are object handles upstairs and are
 *               never reused, not even after a re-initialisation), mac.
 *   attributes  (obj, type) -> sealed flag, value; deleted with the object.
 *
 * Keys: `initialize` makes a random 32-byte token key.  It is stored only
 * wrapped with AES-256-GCM under KEK = scrypt(PIN, per-PIN salt), once for
 * the SO and once (after init_pin) for the user; the associated data names
 * the role so one wrapping cannot stand in for the other.  A wrong PIN shows
 * as a failed GCM tag, which OpenSSL compares in constant time: that is the
 * PIN check, there is no stored PIN hash to compare.
 *
 * Sealed values: for a private object every attribute but CKA_CLASS,
 * CKA_TOKEN and CKA_PRIVATE (those three say how to read the rest, so they
 * stay readable), and on any object what token_attr_is_secret() names.
 * Stored as nonce(12) || ciphertext || tag(16) under the token key, with
 * associated data binding serial, object id, attribute type, class and
 * CKA_PRIVATE: a value cannot be moved to another object or attribute, and a
 * secret key cannot be turned into readable CKO_DATA by editing its class.
 *
 * Object tags: whenever a key is at hand when an object is written (always
 * for private objects and for objects with sealed values) `mac` holds an
 * empty-plaintext GCM tag over every stored row of the object (type, sealed
 * flag, stored bytes).  A load with the key checks it, so rows added,
 * removed or edited in the clear (CKA_SENSITIVE, CKA_EXTRACTABLE, ...) are
 * caught, not only edited ciphertext.  A load without the key cannot check
 * tags; it only returns public values, and sealed values stay sealed.
 *
 * Crash safety and processes: WAL, synchronous=FULL, every write one
 * BEGIN IMMEDIATE transaction.  PIN attempts are counted and committed
 * before the KDF runs, so killing the process mid-check never grants a free
 * guess.  The KDF runs outside any transaction: a slow PIN check does not
 * block other processes' writes.
 *
 * Choices worth knowing:
 * - open(create=true) on an existing valid store just opens it; on an
 *   existing file that is not a store it is CKR_TOKEN_NOT_RECOGNIZED and the
 *   file is left alone.  A new store is built under a temporary name and
 *   link()ed into place, so no process ever sees a half-made file.
 * - An absent or malformed CKA_PRIVATE counts as private (when unsure,
 *   seal); CKA_CLASS is required.
 * - A damaged or tampered object is logged and skipped; load goes on.
 * - `changed` reports content changes (objects, PINs, re-initialisation),
 *   not another process's PIN counter updates: those would otherwise make
 *   every process reload all objects on every login anywhere.  `state` is
 *   always read fresh, so counters never need a reload.
 * - A key from before a re-initialisation (another process may have done
 *   it) is refused for writes (CKR_USER_NOT_LOGGED_IN) and treated as no
 *   key for loads, so nothing is ever sealed under a dead key.
 */
#include "token.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <sqlite3.h>

#define STORE_MAGIC "koltamga token store"
#define STORE_SCHEMA 1
#define BUSY_TIMEOUT_MS 10000

#define KEY_LEN 32
#define KEY_ID_LEN 16
#define SALT_LEN 16
#define NONCE_LEN 12
#define TAG_LEN 16
#define SEAL_OVERHEAD (NONCE_LEN + TAG_LEN)
#define WRAP_LEN (KEY_LEN + SEAL_OVERHEAD)
#define MAC_LEN (NONCE_LEN + TAG_LEN)
#define SERIAL_LEN 16
#define LABEL_MAX 32

/* Far above any certificate or key; keeps every length an int for EVP. */
#define MAX_VALUE_LEN (64u * 1024 * 1024)

/* scrypt: N >= 1024 as koltamga.conf documents; memory capped so that a
 * hostile store cannot make a PIN check allocate without bound. */
#define KDF_MIN_N 1024
#define KDF_MAX_MEM (1024ull * 1024 * 1024)

/* Associated data layouts. */
#define WRAP_AD_LEN (4 + 1 + SERIAL_LEN)
#define ATTR_AD_LEN (4 + SERIAL_LEN + 8 + 8 + 8 + 1)
#define MAC_HDR_LEN (4 + SERIAL_LEN + 8)

static const char SQL_META[] =
	"CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value) WITHOUT ROWID";
static const char SQL_OBJECTS[] =
	"CREATE TABLE objects (id INTEGER PRIMARY KEY AUTOINCREMENT, mac BLOB)";
static const char SQL_ATTRIBUTES[] =
	"CREATE TABLE attributes (obj INTEGER NOT NULL REFERENCES objects (id) ON DELETE CASCADE, "
	"type INTEGER NOT NULL, sealed INTEGER NOT NULL CHECK (sealed IN (0, 1)), "
	"value BLOB NOT NULL, PRIMARY KEY (obj, type)) WITHOUT ROWID";

struct token_key {
	uint8_t k[KEY_LEN];
	/* Names this key in meta, so a key that a re-initialisation (maybe by
	 * another process) has replaced is recognised as stale. */
	uint8_t id[KEY_ID_LEN];
	CK_USER_TYPE who; /* the login that unlocked it: init_pin wants the SO's */
};

enum role_idx { R_SO, R_USER };

struct role {
	enum role_idx idx;
	const char *fails;
	const char *salt;
	const char *wrap;
	uint8_t ad; /* in the wrapping's associated data */
};

static const struct role role_so = { R_SO, "so_fails", "so_salt", "so_wrap", 'S' };
static const struct role role_user = { R_USER, "user_fails", "user_salt", "user_wrap", 'U' };

enum st {
	ST_BEGIN,
	ST_BEGIN_READ,
	ST_COMMIT,
	ST_ROLLBACK,
	ST_META_ALL,
	ST_META_GET,
	ST_META_SET,
	ST_META_DEL,
	ST_GEN_BUMP,
	ST_DATA_VERSION,
	ST_OBJ_INSERT,
	ST_OBJ_PRIVATE,
	ST_OBJ_SET_MAC,
	ST_OBJ_DELETE,
	ST_OBJ_WIPE,
	ST_ATTR_INSERT,
	ST_ATTR_CLEAR,
	ST_ATTR_WIPE,
	ST_LOAD,
	ST_COUNT
};

static const char *const st_sql[ST_COUNT] = {
	[ST_BEGIN] = "BEGIN IMMEDIATE",
	[ST_BEGIN_READ] = "BEGIN DEFERRED",
	[ST_COMMIT] = "COMMIT",
	[ST_ROLLBACK] = "ROLLBACK",
	[ST_META_ALL] = "SELECT key, value FROM meta",
	[ST_META_GET] = "SELECT value FROM meta WHERE key = ?1",
	[ST_META_SET] = "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
	[ST_META_DEL] = "DELETE FROM meta WHERE key = ?1",
	[ST_GEN_BUMP] = "UPDATE meta SET value = value + 1 WHERE key = 'generation'",
	[ST_DATA_VERSION] = "PRAGMA data_version",
	[ST_OBJ_INSERT] = "INSERT INTO objects (mac) VALUES (NULL)",
	[ST_OBJ_PRIVATE] = "SELECT a.value FROM objects AS o LEFT JOIN attributes AS a "
			   "ON a.obj = o.id AND a.type = ?2 WHERE o.id = ?1",
	[ST_OBJ_SET_MAC] = "UPDATE objects SET mac = ?2 WHERE id = ?1",
	[ST_OBJ_DELETE] = "DELETE FROM objects WHERE id = ?1",
	[ST_OBJ_WIPE] = "DELETE FROM objects",
	[ST_ATTR_INSERT] = "INSERT INTO attributes (obj, type, sealed, value) "
			   "VALUES (?1, ?2, ?3, ?4)",
	[ST_ATTR_CLEAR] = "DELETE FROM attributes WHERE obj = ?1",
	[ST_ATTR_WIPE] = "DELETE FROM attributes",
	[ST_LOAD] = "SELECT o.id, o.mac, a.type, a.sealed, a.value FROM objects AS o "
		    "LEFT JOIN attributes AS a ON a.obj = o.id ORDER BY o.id",
};

/* The WAL-index header (https://www.sqlite.org/walformat.html, "The
 * WAL-Index Header"): its first copy, 48 bytes at the start of the -shm
 * file, carries a counter SQLite increments with every transaction, the
 * last valid frame and the WAL salts. */
#define WAL_HEADER_LEN 48

struct token_store {
	sqlite3 *db;
	char *path;
	char serial[SERIAL_LEN + 1]; /* fixed at creation; in every associated data */
	sqlite3_stmt *st[ST_COUNT];
	EVP_CIPHER *aes;
	EVP_CIPHER_CTX *cctx; /* seal, unseal, wrap */
	EVP_CIPHER_CTX *mctx; /* object tags, interleaved with cctx while writing */
	int64_t data_version;
	/* The -shm file, for a look at its WAL-index header, and the
	 * header's bytes when data_version was last read (file_changed). */
	int shm_fd;
	uint8_t shm_seen[WAL_HEADER_LEN];
	bool shm_seen_valid;
	int64_t generation;   /* content generation last seen */
	int64_t gen_on_commit; /* what it becomes if the open write commits, or -1 */
};

/* Everything meta holds, parsed and checked. */
struct meta {
	bool magic;
	int64_t schema;
	char serial[SERIAL_LEN + 1];
	bool has_serial;
	char label[LABEL_MAX + 1];
	bool has_label;
	int64_t generation;
	bool has_generation;
	struct token_params params;
	bool has_n, has_r, has_p, has_max;
	CK_ULONG fails[2];
	bool has_fails[2];
	uint8_t salt[2][SALT_LEN];
	bool has_salt[2];
	uint8_t wrap[2][WRAP_LEN];
	bool has_wrap[2];
	uint8_t key_id[KEY_ID_LEN];
	bool has_key_id;
};

/* ---- small helpers ----------------------------------------------------- */

static void put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (uint8_t)v;
		v >>= 8;
	}
}

static const struct role *role_of(CK_USER_TYPE who)
{
	if (who == CKU_SO)
		return &role_so;
	if (who == CKU_USER)
		return &role_user;
	return NULL;
}

/* Absent or malformed CKA_PRIVATE counts as private: when unsure, seal. */
static bool obj_private(const struct attrs *a)
{
	CK_BBOOL b;
	return !(attrs_get_bool(a, CKA_PRIVATE, &b) && b == CK_FALSE);
}

static bool attr_sealed(CK_OBJECT_CLASS cls, bool priv, CK_ATTRIBUTE_TYPE type)
{
	/* These three decide how the rest is stored, so they must be readable
	 * before anything is unsealed. */
	if (type == CKA_CLASS || type == CKA_TOKEN || type == CKA_PRIVATE)
		return false;
	return priv || token_attr_is_secret(cls, type);
}

static struct token_key *key_new(void)
{
	return OPENSSL_secure_zalloc(sizeof(struct token_key));
}

static void file_key_free(struct token_key *key)
{
	if (key)
		OPENSSL_secure_clear_free(key, sizeof(*key));
}

static bool is_pow2(uint64_t n)
{
	return n && !(n & (n - 1));
}

/* Bytes scrypt needs, as OpenSSL counts them; false when out of bounds. */
static bool kdf_mem(const struct token_params *p, uint64_t *mem)
{
	uint64_t v, b, np2;
	if (!is_pow2(p->scrypt_n) || p->scrypt_n < KDF_MIN_N || p->scrypt_r == 0 ||
	    p->scrypt_p == 0)
		return false;
	/* RFC 7914: p * r < 2^30. */
	if ((uint64_t)p->scrypt_r * p->scrypt_p >= (1ull << 30))
		return false;
	if (__builtin_add_overflow(p->scrypt_n, 2, &np2) ||
	    __builtin_mul_overflow(np2, 128ull * p->scrypt_r, &v) ||
	    __builtin_mul_overflow(128ull * p->scrypt_r, (uint64_t)p->scrypt_p, &b) ||
	    __builtin_add_overflow(v, b, mem))
		return false;
	return *mem <= KDF_MAX_MEM;
}

static bool params_ok(const struct token_params *p)
{
	uint64_t mem;
	return kdf_mem(p, &mem) && p->max_tries >= 1 && p->max_tries <= INT32_MAX;
}

/* ---- SQLite plumbing --------------------------------------------------- */

static CK_RV db_rv(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_NOMEM:
		return CKR_HOST_MEMORY;
	case SQLITE_FULL:
	case SQLITE_TOOBIG:
		return CKR_DEVICE_MEMORY;
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
	case SQLITE_IOERR:
	case SQLITE_CANTOPEN:
	case SQLITE_READONLY:
	case SQLITE_PERM:
	case SQLITE_PROTOCOL:
		return CKR_DEVICE_ERROR;
	default:
		/* SQLITE_BUSY/LOCKED after the busy timeout: another process
		 * holds the store; trying again later may work. */
		return CKR_FUNCTION_FAILED;
	}
}

static CK_RV db_fail(struct token_store *t, int rc, const char *what)
{
	kt_log("%s: %s: %s", t->path, what, t->db ? sqlite3_errmsg(t->db) : sqlite3_errstr(rc));
	return db_rv(rc);
}

/* A cached statement, ready to bind. */
static sqlite3_stmt *st_get(struct token_store *t, enum st id, CK_RV *rv)
{
	if (!t->st[id]) {
		int rc = sqlite3_prepare_v3(t->db, st_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
					    &t->st[id], NULL);
		if (rc != SQLITE_OK) {
			t->st[id] = NULL;
			*rv = db_fail(t, rc, "prepare statement");
			return NULL;
		}
	}
	return t->st[id];
}

/* Reset after every use: a statement left mid-step holds a read snapshot,
 * which would hide other processes' commits and stall WAL checkpoints. */
static void st_put(sqlite3_stmt *s)
{
	if (s) {
		sqlite3_reset(s);
		sqlite3_clear_bindings(s);
	}
}

/* Step a statement that returns no rows, then reset it. */
static CK_RV st_exec(struct token_store *t, sqlite3_stmt *s, const char *what)
{
	int rc = sqlite3_step(s);
	CK_RV rv = rc == SQLITE_DONE ? CKR_OK : db_fail(t, rc, what);
	st_put(s);
	return rv;
}

static CK_RV st_run(struct token_store *t, enum st id, const char *what)
{
	CK_RV rv = CKR_FUNCTION_FAILED;
	sqlite3_stmt *s = st_get(t, id, &rv);
	if (!s)
		return rv;
	return st_exec(t, s, what);
}

static CK_RV bind_fail(struct token_store *t, sqlite3_stmt *s, int rc)
{
	st_put(s);
	return db_fail(t, rc, "bind value");
}

static CK_RV tx_begin(struct token_store *t)
{
	return st_run(t, ST_BEGIN, "begin transaction");
}

static CK_RV tx_begin_read(struct token_store *t)
{
	return st_run(t, ST_BEGIN_READ, "begin read transaction");
}

/* Commit when rv is CKR_OK, else roll back; returns the final verdict. */
static CK_RV tx_end(struct token_store *t, CK_RV rv)
{
	if (rv == CKR_OK)
		rv = st_run(t, ST_COMMIT, "commit");
	if (rv == CKR_OK && t->gen_on_commit >= 0)
		t->generation = t->gen_on_commit;
	t->gen_on_commit = -1;
	/* Some errors (I/O, full disk) end the transaction themselves. */
	if (!sqlite3_get_autocommit(t->db)) {
		CK_RV ignored;
		sqlite3_stmt *s = st_get(t, ST_ROLLBACK, &ignored);
		if (s) {
			sqlite3_step(s);
			st_put(s);
		}
	}
	return rv;
}

static CK_RV meta_set_int(struct token_store *t, const char *key, int64_t v)
{
	CK_RV rv = CKR_FUNCTION_FAILED;
	int rc;
	sqlite3_stmt *s = st_get(t, ST_META_SET, &rv);
	if (!s)
		return rv;
	if ((rc = sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC)) != SQLITE_OK ||
	    (rc = sqlite3_bind_int64(s, 2, v)) != SQLITE_OK)
		return bind_fail(t, s, rc);
	return st_exec(t, s, "write token metadata");
}

static CK_RV meta_set_blob(struct token_store *t, const char *key, const void *v, size_t len)
{
	CK_RV rv = CKR_FUNCTION_FAILED;
	int rc;
	sqlite3_stmt *s = st_get(t, ST_META_SET, &rv);
	if (!s)
		return rv;
	if ((rc = sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC)) != SQLITE_OK ||
	    (rc = sqlite3_bind_blob64(s, 2, v, len, SQLITE_STATIC)) != SQLITE_OK)
		return bind_fail(t, s, rc);
	return st_exec(t, s, "write token metadata");
}

static CK_RV meta_set_text(struct token_store *t, const char *key, const char *v)
{
	CK_RV rv = CKR_FUNCTION_FAILED;
	int rc;
	sqlite3_stmt *s = st_get(t, ST_META_SET, &rv);
	if (!s)
		return rv;
	if ((rc = sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC)) != SQLITE_OK ||
	    (rc = sqlite3_bind_text(s, 2, v, -1, SQLITE_STATIC)) != SQLITE_OK)
		return bind_fail(t, s, rc);
	return st_exec(t, s, "write token metadata");
}

static CK_RV meta_del(struct token_store *t, const char *key)
{
	CK_RV rv = CKR_FUNCTION_FAILED;
	int rc;
	sqlite3_stmt *s = st_get(t, ST_META_DEL, &rv);
	if (!s)
		return rv;
	if ((rc = sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC)) != SQLITE_OK)
		return bind_fail(t, s, rc);
	return st_exec(t, s, "write token metadata");
}

static CK_RV meta_get_int(struct token_store *t, const char *key, int64_t *out)
{
	CK_RV rv = CKR_FUNCTION_FAILED;
	int rc;
	sqlite3_stmt *s = st_get(t, ST_META_GET, &rv);
	if (!s)
		return rv;
	if ((rc = sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC)) != SQLITE_OK)
		return bind_fail(t, s, rc);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW && sqlite3_column_type(s, 0) == SQLITE_INTEGER) {
		*out = sqlite3_column_int64(s, 0);
		rv = CKR_OK;
	} else if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
		kt_log("%s: token metadata '%s' is missing or malformed", t->path, key);
		rv = CKR_DEVICE_ERROR;
	} else {
		rv = db_fail(t, rc, "read token metadata");
	}
	st_put(s);
	return rv;
}

/* Inside a write transaction: mark a content change for other handles.
 * When nothing changed since this handle last looked, its own change need
 * not be reported back to it; otherwise the older value stays, so the
 * other process's change is still reported. */
static CK_RV gen_bump(struct token_store *t)
{
	int64_t g;
	CK_RV rv = meta_get_int(t, "generation", &g);
	if (rv == CKR_OK)
		rv = st_run(t, ST_GEN_BUMP, "bump generation");
	if (rv == CKR_OK && g == t->generation && g < INT64_MAX)
		t->gen_on_commit = g + 1;
	return rv;
}

/* ---- meta parsing (shared by open's check and every later read) -------- */

#define META_INVALID (-1)

static bool col_int(sqlite3_stmt *s, int64_t *out)
{
	if (sqlite3_column_type(s, 1) != SQLITE_INTEGER)
		return false;
	*out = sqlite3_column_int64(s, 1);
	return true;
}

/* An integer in [min, max]. */
static bool col_range(sqlite3_stmt *s, int64_t min, int64_t max, int64_t *out)
{
	int64_t v;
	if (!col_int(s, &v) || v < min || v > max)
		return false;
	*out = v;
	return true;
}

static bool col_ulong(sqlite3_stmt *s, CK_ULONG *out)
{
	int64_t v;
	if (!col_range(s, 0, INT64_MAX, &v) || (uint64_t)v > (CK_ULONG)-1)
		return false;
	*out = (CK_ULONG)v;
	return true;
}

static bool col_u32(sqlite3_stmt *s, uint32_t *out)
{
	int64_t v;
	if (!col_range(s, 1, UINT32_MAX, &v))
		return false;
	*out = (uint32_t)v;
	return true;
}

static bool col_blob(sqlite3_stmt *s, uint8_t *out, size_t len)
{
	const void *v;
	if (sqlite3_column_type(s, 1) != SQLITE_BLOB)
		return false;
	v = sqlite3_column_blob(s, 1);
	if (!v || (size_t)sqlite3_column_bytes(s, 1) != len)
		return false;
	memcpy(out, v, len);
	return true;
}

/* Text of at most `max` bytes without embedded NULs, copied NUL-terminated. */
static bool col_text(sqlite3_stmt *s, char *out, size_t max)
{
	const unsigned char *v;
	int n;
	if (sqlite3_column_type(s, 1) != SQLITE_TEXT)
		return false;
	v = sqlite3_column_text(s, 1);
	n = sqlite3_column_bytes(s, 1);
	if (!v || n < 0 || (size_t)n > max || memchr(v, 0, (size_t)n))
		return false;
	memcpy(out, v, (size_t)n);
	out[n] = 0;
	return true;
}

static bool serial_ok(const char *s)
{
	if (strlen(s) != SERIAL_LEN)
		return false;
	for (size_t i = 0; i < SERIAL_LEN; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

static bool meta_row(sqlite3_stmt *s, struct meta *m)
{
	const char *key = (const char *)sqlite3_column_text(s, 0);
	char magic[sizeof(STORE_MAGIC)];
	int64_t v;

	if (!key || sqlite3_column_type(s, 0) != SQLITE_TEXT)
		return false;
	if (strcmp(key, "magic") == 0) {
		m->magic = col_text(s, magic, sizeof(magic) - 1) && strcmp(magic, STORE_MAGIC) == 0;
		return m->magic;
	}
	if (strcmp(key, "schema") == 0)
		return col_int(s, &m->schema);
	if (strcmp(key, "serial") == 0) {
		m->has_serial = col_text(s, m->serial, SERIAL_LEN) && serial_ok(m->serial);
		return m->has_serial;
	}
	if (strcmp(key, "label") == 0)
		return (m->has_label = col_text(s, m->label, LABEL_MAX));
	if (strcmp(key, "generation") == 0)
		return (m->has_generation = col_range(s, 0, INT64_MAX, &m->generation));
	if (strcmp(key, "scrypt_n") == 0) {
		m->has_n = col_range(s, 1, INT64_MAX, &v);
		m->params.scrypt_n = m->has_n ? (uint64_t)v : 0;
		return m->has_n;
	}
	if (strcmp(key, "scrypt_r") == 0)
		return (m->has_r = col_u32(s, &m->params.scrypt_r));
	if (strcmp(key, "scrypt_p") == 0)
		return (m->has_p = col_u32(s, &m->params.scrypt_p));
	if (strcmp(key, "max_tries") == 0)
		return (m->has_max = col_ulong(s, &m->params.max_tries));
	for (int r = R_SO; r <= R_USER; r++) {
		const struct role *ro = r == R_SO ? &role_so : &role_user;
		if (strcmp(key, ro->fails) == 0)
			return (m->has_fails[r] = col_ulong(s, &m->fails[r]));
		if (strcmp(key, ro->salt) == 0)
			return (m->has_salt[r] = col_blob(s, m->salt[r], SALT_LEN));
		if (strcmp(key, ro->wrap) == 0)
			return (m->has_wrap[r] = col_blob(s, m->wrap[r], WRAP_LEN));
	}
	if (strcmp(key, "key_id") == 0)
		return (m->has_key_id = col_blob(s, m->key_id, KEY_ID_LEN));
	/* Unknown keys are ignored: incompatible changes bump the schema. */
	return true;
}

/* Read and check all of meta.  0, an SQLite error code, or META_INVALID
 * with *why saying what is wrong (never quoting a value). */
static int meta_parse(sqlite3_stmt *s, struct meta *m, const char **why)
{
	int rc;
	memset(m, 0, sizeof(*m));
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		if (!meta_row(s, m)) {
			*why = "malformed metadata row";
			return META_INVALID;
		}
	}
	if (rc != SQLITE_DONE)
		return rc;
	if (!m->magic) {
		*why = "no koltamga magic";
		return META_INVALID;
	}
	if (m->schema != STORE_SCHEMA) {
		*why = m->schema > STORE_SCHEMA ? "written by a newer koltamga (schema too new)"
						: "bad schema version";
		return META_INVALID;
	}
	if (!m->has_serial || !m->has_label || !m->has_generation || !m->has_fails[R_SO] ||
	    !m->has_fails[R_USER]) {
		*why = "metadata incomplete";
		return META_INVALID;
	}
	if (m->has_wrap[R_SO] && (!m->has_salt[R_SO] || !m->has_key_id || !m->has_n || !m->has_r ||
				  !m->has_p || !m->has_max || !params_ok(&m->params))) {
		*why = "initialised token with incomplete or out-of-range key parameters";
		return META_INVALID;
	}
	if (m->has_wrap[R_USER] && (!m->has_wrap[R_SO] || !m->has_salt[R_USER])) {
		*why = "user PIN data without SO PIN data";
		return META_INVALID;
	}
	return SQLITE_OK;
}

static CK_RV meta_get(struct token_store *t, struct meta *m)
{
	CK_RV rv = CKR_FUNCTION_FAILED;
	const char *why = NULL;
	int rc;
	sqlite3_stmt *s = st_get(t, ST_META_ALL, &rv);
	if (!s)
		return rv;
	rc = meta_parse(s, m, &why);
	if (rc == META_INVALID) {
		kt_log("%s: token metadata damaged (%s)", t->path, why);
		rv = CKR_DEVICE_ERROR;
	} else if (rc != SQLITE_OK) {
		rv = db_fail(t, rc, "read token metadata");
	} else if (strcmp(m->serial, t->serial) != 0) {
		/* Every sealed value is bound to the serial it was made with. */
		kt_log("%s: token serial changed under us", t->path);
		rv = CKR_DEVICE_ERROR;
	} else {
		rv = CKR_OK;
	}
	st_put(s);
	return rv;
}

/* ---- crypto ------------------------------------------------------------ */

/* Drop the AES key schedules the contexts keep between calls. */
static void crypto_scrub(struct token_store *t)
{
	EVP_CIPHER_CTX_reset(t->cctx);
	EVP_CIPHER_CTX_reset(t->mctx);
}

/* Keep the provider context once made: re-fetching it per value would
 * dominate the cost of loading thousands of objects. */
static const EVP_CIPHER *ctx_cipher(struct token_store *t, EVP_CIPHER_CTX *c)
{
	return EVP_CIPHER_CTX_get0_cipher(c) ? NULL : t->aes;
}

/* AES-256-GCM: out = nonce || ciphertext || tag (in_len + SEAL_OVERHEAD). */
static CK_RV gcm_seal(struct token_store *t, const uint8_t *key, const uint8_t *ad, size_t ad_len,
		      const uint8_t *in, size_t in_len, uint8_t *out)
{
	CK_RV rv = CKR_FUNCTION_FAILED;
	EVP_CIPHER_CTX *c = t->cctx;
	int n;

	if (in_len > MAX_VALUE_LEN || ad_len > INT_MAX)
		return CKR_DEVICE_MEMORY;
	if (RAND_bytes(out, NONCE_LEN) != 1)
		goto out;
	if (!EVP_EncryptInit_ex2(c, ctx_cipher(t, c), key, out, NULL))
		goto out;
	if (ad_len && !EVP_EncryptUpdate(c, NULL, &n, ad, (int)ad_len))
		goto out;
	if (in_len && !EVP_EncryptUpdate(c, out + NONCE_LEN, &n, in, (int)in_len))
		goto out;
	if (!EVP_EncryptFinal_ex(c, out + NONCE_LEN + in_len, &n))
		goto out;
	if (!EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, out + NONCE_LEN + in_len))
		goto out;
	rv = CKR_OK;
out:
	if (rv != CKR_OK)
		kt_log("%s: AES-GCM sealing failed", t->path);
	return rv;
}

/* Inverse of gcm_seal; out holds in_len - SEAL_OVERHEAD bytes.
 * CKR_ENCRYPTED_DATA_INVALID when the tag does not match (wrong key,
 * tampering), with out wiped. */
static CK_RV gcm_open(struct token_store *t, const uint8_t *key, const uint8_t *ad, size_t ad_len,
		      const uint8_t *in, size_t in_len, uint8_t *out)
{
	CK_RV rv = CKR_FUNCTION_FAILED;
	EVP_CIPHER_CTX *c = t->cctx;
	uint8_t tag[TAG_LEN];
	size_t ct_len;
	int n;

	if (in_len < SEAL_OVERHEAD || in_len - SEAL_OVERHEAD > MAX_VALUE_LEN || ad_len > INT_MAX)
		return CKR_ENCRYPTED_DATA_INVALID;
	ct_len = in_len - SEAL_OVERHEAD;
	memcpy(tag, in + NONCE_LEN + ct_len, TAG_LEN);
	if (!EVP_DecryptInit_ex2(c, ctx_cipher(t, c), key, in, NULL))
		goto out;
	if (ad_len && !EVP_DecryptUpdate(c, NULL, &n, ad, (int)ad_len))
		goto out;
	if (ct_len && !EVP_DecryptUpdate(c, out, &n, in + NONCE_LEN, (int)ct_len))
		goto out;
	if (!EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, tag))
		goto out;
	/* The constant-time tag comparison is here. */
	if (EVP_DecryptFinal_ex(c, out + ct_len, &n) <= 0) {
		kt_wipe(out, ct_len);
		rv = CKR_ENCRYPTED_DATA_INVALID;
		goto out;
	}
	rv = CKR_OK;
out:
	if (rv == CKR_FUNCTION_FAILED)
		kt_log("%s: AES-GCM unsealing failed", t->path);
	return rv;
}

static void wrap_ad(uint8_t ad[WRAP_AD_LEN], const struct token_store *t, const struct role *r)
{
	memcpy(ad, "KTW1", 4);
	ad[4] = r->ad;
	memcpy(ad + 5, t->serial, SERIAL_LEN);
}

static void attr_ad(uint8_t ad[ATTR_AD_LEN], const struct token_store *t, uint64_t id,
		    CK_ATTRIBUTE_TYPE type, CK_OBJECT_CLASS cls, bool priv)
{
	memcpy(ad, "KTA1", 4);
	memcpy(ad + 4, t->serial, SERIAL_LEN);
	put_be64(ad + 4 + SERIAL_LEN, id);
	put_be64(ad + 12 + SERIAL_LEN, type);
	put_be64(ad + 20 + SERIAL_LEN, cls);
	ad[28 + SERIAL_LEN] = priv;
}

/* Object tags: GCM over no plaintext, everything in the associated data.
 * Written rows and loaded rows are fed in the same (type) order. */
static CK_RV mac_begin(struct token_store *t, const uint8_t *key, uint64_t id,
		       const uint8_t nonce[NONCE_LEN])
{
	EVP_CIPHER_CTX *c = t->mctx;
	uint8_t hdr[MAC_HDR_LEN];
	int n;

	memcpy(hdr, "KTO1", 4);
	memcpy(hdr + 4, t->serial, SERIAL_LEN);
	put_be64(hdr + 4 + SERIAL_LEN, id);
	if (!EVP_EncryptInit_ex2(c, ctx_cipher(t, c), key, nonce, NULL) ||
	    !EVP_EncryptUpdate(c, NULL, &n, hdr, sizeof(hdr))) {
		kt_log("%s: AES-GCM object tag failed", t->path);
		return CKR_FUNCTION_FAILED;
	}
	return CKR_OK;
}

static CK_RV mac_feed(struct token_store *t, CK_ATTRIBUTE_TYPE type, bool sealed, const void *val,
		      size_t len)
{
	EVP_CIPHER_CTX *c = t->mctx;
	uint8_t h[17];
	int n;

	put_be64(h, type);
	h[8] = sealed;
	put_be64(h + 9, len);
	if (len > MAX_VALUE_LEN + SEAL_OVERHEAD || !EVP_EncryptUpdate(c, NULL, &n, h, sizeof(h)) ||
	    (len && !EVP_EncryptUpdate(c, NULL, &n, val, (int)len))) {
		kt_log("%s: AES-GCM object tag failed", t->path);
		return CKR_FUNCTION_FAILED;
	}
	return CKR_OK;
}

static CK_RV mac_end(struct token_store *t, uint8_t tag[TAG_LEN])
{
	uint8_t dummy[16];
	int n;
	if (!EVP_EncryptFinal_ex(t->mctx, dummy, &n) ||
	    !EVP_CIPHER_CTX_ctrl(t->mctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, tag)) {
		kt_log("%s: AES-GCM object tag failed", t->path);
		return CKR_FUNCTION_FAILED;
	}
	return CKR_OK;
}

/* KEK = scrypt(PIN, salt).  `out` is KEY_LEN bytes of secure heap. */
static CK_RV kdf_derive(struct token_store *t, const struct token_params *p,
			const CK_UTF8CHAR *pin, CK_ULONG len, const uint8_t salt[SALT_LEN],
			uint8_t *out)
{
	CK_RV rv = CKR_FUNCTION_FAILED;
	static const unsigned char empty[1];
	EVP_KDF *kdf = NULL;
	EVP_KDF_CTX *kctx = NULL;
	uint64_t n = p->scrypt_n, maxmem;
	uint32_t r = p->scrypt_r, pp = p->scrypt_p;
	OSSL_PARAM params[7];

	if (!kdf_mem(p, &maxmem)) {
		rv = CKR_ARGUMENTS_BAD;
		goto out;
	}
	params[0] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD,
						      (void *)(len ? pin : empty), len);
	params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, SALT_LEN);
	params[2] = OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_N, &n);
	params[3] = OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_R, &r);
	params[4] = OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_P, &pp);
	params[5] = OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_MAXMEM, &maxmem);
	params[6] = OSSL_PARAM_construct_end();

	kdf = EVP_KDF_fetch(NULL, "SCRYPT", NULL);
	if (!kdf || !(kctx = EVP_KDF_CTX_new(kdf)))
		goto out;
	/* The context copies the password and wipes it when freed. */
	if (EVP_KDF_derive(kctx, out, KEY_LEN, params) <= 0)
		goto out;
	rv = CKR_OK;
out:
	if (rv != CKR_OK)
		kt_log("%s: scrypt key derivation failed", t->path);
	EVP_KDF_CTX_free(kctx);
	EVP_KDF_free(kdf);
	return rv;
}

/* wrap = GCM(scrypt(pin, salt), token key). */
static CK_RV pin_wrap(struct token_store *t, const struct role *r, const struct token_params *p,
		      const CK_UTF8CHAR *pin, CK_ULONG len, const uint8_t salt[SALT_LEN],
		      const struct token_key *key, uint8_t wrap[WRAP_LEN])
{
	CK_RV rv = CKR_HOST_MEMORY;
	uint8_t ad[WRAP_AD_LEN];
	uint8_t *kek = OPENSSL_secure_malloc(KEY_LEN);

	if (!kek)
		goto out;
	rv = kdf_derive(t, p, pin, len, salt, kek);
	if (rv != CKR_OK)
		goto out;
	wrap_ad(ad, t, r);
	rv = gcm_seal(t, kek, ad, sizeof(ad), key->k, KEY_LEN, wrap);
out:
	if (kek)
		OPENSSL_secure_clear_free(kek, KEY_LEN);
	EVP_CIPHER_CTX_reset(t->cctx);
	return rv;
}

/* CKR_OK with key->k filled, or CKR_PIN_INCORRECT. */
static CK_RV pin_unwrap(struct token_store *t, const struct role *r, const struct meta *m,
			const CK_UTF8CHAR *pin, CK_ULONG len, struct token_key *key)
{
	CK_RV rv = CKR_HOST_MEMORY;
	uint8_t ad[WRAP_AD_LEN];
	uint8_t *kek = OPENSSL_secure_malloc(KEY_LEN);

	if (!kek)
		goto out;
	rv = kdf_derive(t, &m->params, pin, len, m->salt[r->idx], kek);
	if (rv != CKR_OK)
		goto out;
	wrap_ad(ad, t, r);
	rv = gcm_open(t, kek, ad, sizeof(ad), m->wrap[r->idx], WRAP_LEN, key->k);
	if (rv == CKR_ENCRYPTED_DATA_INVALID)
		rv = CKR_PIN_INCORRECT;
	if (rv == CKR_OK) {
		memcpy(key->id, m->key_id, KEY_ID_LEN);
		key->who = r->idx == R_SO ? CKU_SO : CKU_USER;
	}
out:
	if (kek)
		OPENSSL_secure_clear_free(kek, KEY_LEN);
	EVP_CIPHER_CTX_reset(t->cctx);
	return rv;
}

/* ---- open / create / close --------------------------------------------- */

/* Is this our schema and nothing else?  Triggers or views in a store could
 * undo counter updates or run code on our writes, so nothing unexpected is
 * accepted. */
static int schema_check(sqlite3 *db, const char **why)
{
	sqlite3_stmt *s = NULL;
	int rc, found = 0;

	rc = sqlite3_prepare_v2(db, "SELECT type, name, sql FROM sqlite_master", -1, &s, NULL);
	if (rc != SQLITE_OK)
		return rc;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		const char *type = (const char *)sqlite3_column_text(s, 0);
		const char *name = (const char *)sqlite3_column_text(s, 1);
		const char *sql = (const char *)sqlite3_column_text(s, 2);
		if (!type || !name) {
			rc = META_INVALID;
			break;
		}
		if (strcmp(type, "table") == 0 && strcmp(name, "sqlite_sequence") == 0)
			continue;
		if (strcmp(type, "table") == 0 && sql &&
		    ((strcmp(name, "meta") == 0 && strcmp(sql, SQL_META) == 0) ||
		     (strcmp(name, "objects") == 0 && strcmp(sql, SQL_OBJECTS) == 0) ||
		     (strcmp(name, "attributes") == 0 && strcmp(sql, SQL_ATTRIBUTES) == 0))) {
			found++;
			continue;
		}
		rc = META_INVALID;
		break;
	}
	sqlite3_finalize(s);
	if (rc == SQLITE_DONE && found == 3)
		return SQLITE_OK;
	if (rc == SQLITE_DONE || rc == META_INVALID) {
		*why = found ? "unexpected database schema" : "not a koltamga token store";
		return META_INVALID;
	}
	return rc;
}

/* Check a store through its own connection.  `deep` adds SQLite's
 * structural check (catches truncated or corrupted files before any write). */
static int store_validate(sqlite3 *db, bool deep, struct meta *m, const char **why)
{
	sqlite3_stmt *s = NULL;
	int rc;

	if (deep) {
		rc = sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &s, NULL);
		if (rc != SQLITE_OK)
			return rc;
		rc = sqlite3_step(s);
		if (rc == SQLITE_ROW) {
			const char *res = (const char *)sqlite3_column_text(s, 0);
			rc = res && strcmp(res, "ok") == 0 ? SQLITE_OK : META_INVALID;
			*why = "SQLite integrity check failed (corrupt or truncated file)";
		}
		sqlite3_finalize(s);
		if (rc != SQLITE_OK)
			return rc;
	}
	rc = schema_check(db, why);
	if (rc != SQLITE_OK)
		return rc;
	rc = sqlite3_prepare_v2(db, st_sql[ST_META_ALL], -1, &s, NULL);
	if (rc != SQLITE_OK)
		return rc;
	rc = meta_parse(s, m, why);
	sqlite3_finalize(s);
	return rc;
}

/* Limit what a hostile file can make SQLite do on our behalf. */
static void db_harden(sqlite3 *db)
{
	sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
	sqlite3_db_config(db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL);
	sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_TRIGGER, 0, NULL);
#ifdef SQLITE_DBCONFIG_ENABLE_VIEW /* 3.35 */
	sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_VIEW, 0, NULL);
#endif
	sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
}

/* Map a validation failure: content problems are "not a store", anything
 * else (permissions, I/O, busy) is reported as what it is. */
static CK_RV validate_rv(const char *path, sqlite3 *db, int rc, const char *why)
{
	switch (rc == META_INVALID ? SQLITE_NOTADB : rc & 0xff) {
	case SQLITE_NOTADB:
	case SQLITE_CORRUPT:
	case SQLITE_ERROR: /* e.g. "no such table" */
	case SQLITE_FORMAT:
	case SQLITE_SCHEMA:
	case SQLITE_RANGE:
		kt_log("%s: not a usable koltamga token store (%s); file left untouched", path,
		       rc == META_INVALID ? why : db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
		return CKR_TOKEN_NOT_RECOGNIZED;
	default:
		kt_log("%s: cannot read token store: %s", path,
		       db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
		return db_rv(rc);
	}
}

/* SQLite reads a short last page as zeros, so a file cut inside its last
 * page can pass every SQLite check.  Without a WAL (which would redo an
 * interrupted checkpoint) a store is always a whole number of pages. */
static bool whole_pages(const char *path, off_t size)
{
	uint8_t hdr[100];
	char *wal;
	struct stat sb;
	unsigned page;
	bool ok = true;
	int fd;

	if (size == 0)
		return true; /* SQLite's empty database; the schema check refuses it */
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return true; /* let SQLite report it */
	if (read(fd, hdr, sizeof(hdr)) != (ssize_t)sizeof(hdr) ||
	    memcmp(hdr, "SQLite format 3", 16) != 0) {
		close(fd);
		return true; /* not SQLite at all: SQLite says so more clearly */
	}
	close(fd);
	page = (unsigned)hdr[16] << 8 | hdr[17];
	if (page == 1)
		page = 65536;
	wal = malloc(strlen(path) + sizeof("-wal"));
	if (!wal)
		return true;
	strcpy(wal, path);
	strcat(wal, "-wal");
	if (page >= 512 && size % page != 0 && (stat(wal, &sb) != 0 || sb.st_size == 0))
		ok = false;
	free(wal);
	return ok;
}

/* Read-only look at the file before we change anything in it (journal
 * mode, schema): a file we do not recognise must stay byte for byte. */
static CK_RV store_check(const char *path)
{
	CK_RV rv = CKR_TOKEN_NOT_RECOGNIZED;
	sqlite3 *db = NULL;
	struct meta m;
	const char *why = "unknown";
	struct stat sb;
	int rc;

	if (stat(path, &sb) != 0) {
		kt_log("%s: not a usable koltamga token store (%s)", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(sb.st_mode)) {
		kt_log("%s: not a usable koltamga token store (not a regular file)", path);
		goto out;
	}
	if (!whole_pages(path, sb.st_size)) {
		kt_log("%s: not a usable koltamga token store (truncated: not a whole number of "
		       "pages); file left untouched",
		       path);
		goto out;
	}
	/* No SQLITE_OPEN_CREATE: a file that vanished is not recreated. */
	rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
	if (rc == SQLITE_OK) {
		db_harden(db);
		rc = store_validate(db, true, &m, &why);
	}
	rv = rc == SQLITE_OK ? CKR_OK : validate_rv(path, db, rc, why);
out:
	sqlite3_close(db);
	return rv;
}

static CK_RV exec_sql(sqlite3 *db, const char *path, const char *sql)
{
	int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
	if (rc != SQLITE_OK) {
		kt_log("%s: %s", path, sqlite3_errmsg(db));
		return db_rv(rc);
	}
	return CKR_OK;
}

static CK_RV fsync_dir(const char *path)
{
	CK_RV rv = CKR_DEVICE_ERROR;
	char *dir = strdup(path);
	char *slash;
	int fd = -1;

	if (!dir)
		return CKR_HOST_MEMORY;
	slash = strrchr(dir, '/');
	if (!slash)
		strcpy(dir, ".");
	else if (slash == dir)
		slash[1] = 0;
	else
		*slash = 0;
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0 && fsync(fd) == 0)
		rv = CKR_OK;
	else
		kt_log("%s: cannot sync directory: %s", path, strerror(errno));
	if (fd >= 0)
		close(fd);
	free(dir);
	return rv;
}

/* Build an empty store under a temporary name, then link it into place:
 * link() never replaces, so a concurrent creator or an existing file wins
 * and nobody sees a half-built store.  CKR_OK also when `path` exists (the
 * caller then opens and checks it like any store). */
static CK_RV store_create(const char *path)
{
	CK_RV rv = CKR_FUNCTION_FAILED;
	sqlite3 *db = NULL;
	char *tmp = NULL;
	char *sql = NULL;
	uint8_t rnd[SERIAL_LEN / 2];
	char serial[SERIAL_LEN + 1];
	bool made = false;
	struct stat sb;
	int fd, rc;

	if (lstat(path, &sb) == 0)
		return CKR_OK;
	tmp = malloc(strlen(path) + sizeof(".XXXXXX"));
	if (!tmp) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	strcpy(tmp, path);
	strcat(tmp, ".XXXXXX");
	fd = mkstemp(tmp); /* mode 0600 */
	if (fd < 0) {
		kt_log("%s: cannot create token store: %s", path, strerror(errno));
		rv = CKR_DEVICE_ERROR;
		goto out;
	}
	made = true;
	close(fd);

	if (RAND_bytes(rnd, sizeof(rnd)) != 1)
		goto out;
	for (size_t i = 0; i < sizeof(rnd); i++)
		snprintf(serial + 2 * i, 3, "%02x", rnd[i]);

	rc = sqlite3_open_v2(tmp, &db, SQLITE_OPEN_READWRITE, NULL);
	if (rc != SQLITE_OK) {
		kt_log("%s: cannot create token store: %s", path,
		       db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
		rv = db_rv(rc);
		goto out;
	}
	db_harden(db);
	sql = sqlite3_mprintf("PRAGMA synchronous = FULL; PRAGMA secure_delete = ON; "
			      "BEGIN IMMEDIATE; %s; %s; %s; "
			      "INSERT INTO meta (key, value) VALUES ('magic', %Q), ('schema', %d), "
			      "('serial', %Q), ('label', ''), ('generation', 0), "
			      "('so_fails', 0), ('user_fails', 0); "
			      "COMMIT; PRAGMA journal_mode = WAL;",
			      SQL_META, SQL_OBJECTS, SQL_ATTRIBUTES, STORE_MAGIC, STORE_SCHEMA,
			      serial);
	if (!sql) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	rv = exec_sql(db, path, sql);
	if (rv != CKR_OK)
		goto out;
	rc = sqlite3_close(db);
	db = NULL;
	if (rc != SQLITE_OK) {
		kt_log("%s: cannot create token store: %s", path, sqlite3_errstr(rc));
		rv = db_rv(rc);
		goto out;
	}
	if (link(tmp, path) != 0 && errno != EEXIST) {
		kt_log("%s: cannot create token store: %s", path, strerror(errno));
		rv = CKR_DEVICE_ERROR;
		goto out;
	}
	rv = fsync_dir(path);
out:
	if (db)
		sqlite3_close(db);
	if (made)
		unlink(tmp);
	sqlite3_free(sql);
	free(tmp);
	return rv;
}

/* Open the -shm file for reading its header.  Read with pread, not
 * mapped: SQLite may truncate the file (a connection that finds itself
 * alone resets it), and a mapping would then fault.  Without it: no fast
 * path, every check reads data_version. */
static void shm_open_header(struct token_store *t)
{
	char *path = NULL;
	struct stat st;
	t->shm_fd = -1;
	if (asprintf(&path, "%s-shm", t->path) < 0)
		return;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	free(path);
	if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
		t->shm_fd = fd;
	else if (fd >= 0)
		close(fd);
}

static void file_close(struct token_store *t)
{
	if (!t)
		return;
	if (t->shm_fd >= 0)
		close(t->shm_fd);
	for (int i = 0; i < ST_COUNT; i++)
		sqlite3_finalize(t->st[i]);
	/* The last connection checkpoints the WAL into the main file. */
	if (t->db && sqlite3_close(t->db) != SQLITE_OK)
		kt_log("%s: closing token store: %s", t->path, sqlite3_errmsg(t->db));
	EVP_CIPHER_CTX_free(t->cctx);
	EVP_CIPHER_CTX_free(t->mctx);
	EVP_CIPHER_free(t->aes);
	free(t->path);
	free(t);
}

static CK_RV read_data_version(struct token_store *t, int64_t *out)
{
	CK_RV rv = CKR_FUNCTION_FAILED;
	sqlite3_stmt *s = st_get(t, ST_DATA_VERSION, &rv);
	int rc;
	if (!s)
		return rv;
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*out = sqlite3_column_int64(s, 0);
		rv = CKR_OK;
	} else {
		rv = db_fail(t, rc, "read data version");
	}
	st_put(s);
	return rv;
}

/* The read-write connection: pragmas, then a second (cheap) validation in
 * case the file changed since store_check. */
static CK_RV store_connect(struct token_store *t)
{
	CK_RV rv = CKR_FUNCTION_FAILED;
	struct meta m;
	const char *why = "unknown", *mode;
	sqlite3_stmt *s = NULL;
	int rc;

	rc = sqlite3_open_v2(t->path, &t->db, SQLITE_OPEN_READWRITE, NULL);
	if (rc != SQLITE_OK) {
		rv = db_fail(t, rc, "open token store");
		goto out;
	}
	db_harden(t->db);
	if (sqlite3_db_readonly(t->db, "main") == 1) {
		kt_log("%s: token store is not writable (PIN counters must be); check permissions",
		       t->path);
		rv = CKR_DEVICE_ERROR;
		goto out;
	}
	rc = store_validate(t->db, false, &m, &why);
	if (rc != SQLITE_OK) {
		rv = validate_rv(t->path, t->db, rc, why);
		goto out;
	}
	memcpy(t->serial, m.serial, sizeof(t->serial));
	t->generation = m.generation;

	/* foreign_keys is per connection and ignored inside a transaction;
	 * synchronous=FULL makes each COMMIT durable in WAL mode too. */
	rv = exec_sql(t->db, t->path,
		      "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; "
		      "PRAGMA secure_delete = ON;");
	if (rv != CKR_OK)
		goto out;
	rc = sqlite3_prepare_v2(t->db, "PRAGMA journal_mode = WAL", -1, &s, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc != SQLITE_ROW) {
		rv = db_fail(t, rc, "switch to WAL journal");
		goto out;
	}
	mode = (const char *)sqlite3_column_text(s, 0);
	if (!mode || strcmp(mode, "wal") != 0)
		/* Still correct (and durable), only less concurrent. */
		kt_log("%s: WAL journal unavailable on this file system; using a rollback journal",
		       t->path);
	rv = read_data_version(t, &t->data_version);
out:
	sqlite3_finalize(s);
	return rv;
}

static CK_RV file_open(const char *path, bool create, struct token_store **out)
{
	CK_RV rv = CKR_ARGUMENTS_BAD;
	struct token_store *t = NULL;

	if (!path || !out)
		goto out;
	*out = NULL;
	if (create) {
		rv = store_create(path);
		if (rv != CKR_OK)
			goto out;
	}
	rv = store_check(path);
	if (rv != CKR_OK)
		goto out;

	rv = CKR_HOST_MEMORY;
	t = calloc(1, sizeof(*t));
	if (!t || !(t->path = strdup(path)))
		goto out;
	t->gen_on_commit = -1;
	t->shm_fd = -1;
	t->aes = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
	t->cctx = EVP_CIPHER_CTX_new();
	t->mctx = EVP_CIPHER_CTX_new();
	if (!t->aes || !t->cctx || !t->mctx) {
		kt_log("%s: OpenSSL has no AES-256-GCM", path);
		rv = CKR_FUNCTION_FAILED;
		goto out;
	}
	rv = store_connect(t);
	if (rv != CKR_OK)
		goto out;
	shm_open_header(t);
	kt_debug(KT_DBG_TOKEN, "%s: opened token store, serial %s", path, t->serial);
	*out = t;
	t = NULL;
out:
	file_close(t);
	return rv;
}

/* ---- state and PINs ---------------------------------------------------- */

static CK_RV file_state(struct token_store *t, struct token_state *out)
{
	CK_RV rv = CKR_ARGUMENTS_BAD;
	struct meta m;

	if (!out)
		goto out;
	rv = meta_get(t, &m);
	if (rv != CKR_OK)
		goto out;
	memset(out, 0, sizeof(*out));
	memcpy(out->label, m.label, sizeof(out->label));
	memcpy(out->serial, m.serial, sizeof(out->serial));
	out->initialized = m.has_wrap[R_SO];
	out->user_pin_set = m.has_wrap[R_USER];
	out->so_fails = m.fails[R_SO];
	out->user_fails = m.fails[R_USER];
	if (out->initialized) {
		out->params = m.params;
		out->max_tries = m.params.max_tries;
	}
out:
	return rv;
}

/*
 * Verify `pin` for role `r`.  The attempt is counted and committed before
 * the KDF runs (a crash or kill mid-check costs the guess); success resets
 * the counter in a second commit.  On success *key_out, when asked for,
 * receives the token key.  The slow KDF runs with no transaction open.
 */
static CK_RV pin_check(struct token_store *t, const struct role *r, const CK_UTF8CHAR *pin,
		       CK_ULONG len, struct token_key **key_out)
{
	CK_RV rv = CKR_FUNCTION_FAILED;
	struct token_key *key = NULL;
	struct meta m;
	CK_ULONG tries;

	rv = tx_begin(t);
	if (rv != CKR_OK)
		goto out;
	rv = meta_get(t, &m);
	if (rv == CKR_OK && (!m.has_wrap[R_SO] || !m.has_wrap[r->idx]))
		rv = CKR_USER_PIN_NOT_INITIALIZED;
	if (rv == CKR_OK && m.fails[r->idx] >= m.params.max_tries)
		rv = CKR_PIN_LOCKED;
	tries = rv == CKR_OK ? m.fails[r->idx] + 1 : 0;
	if (rv == CKR_OK)
		rv = meta_set_int(t, r->fails, (int64_t)tries);
	rv = tx_end(t, rv);
	if (rv != CKR_OK)
		goto out;

	key = key_new();
	if (!key) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	rv = pin_unwrap(t, r, &m, pin, len, key);
	if (rv == CKR_PIN_INCORRECT) {
		kt_debug(KT_DBG_TOKEN, "%s: wrong %s PIN (%lu of %lu)", t->path,
			 r == &role_so ? "SO" : "user", tries, m.params.max_tries);
		if (tries >= m.params.max_tries)
			rv = CKR_PIN_LOCKED;
		goto out;
	}
	if (rv != CKR_OK)
		goto out;

	rv = tx_begin(t);
	if (rv != CKR_OK)
		goto out;
	rv = tx_end(t, meta_set_int(t, r->fails, 0));
	if (rv != CKR_OK)
		goto out;
	if (key_out) {
		*key_out = key;
		key = NULL;
	}
out:
	file_key_free(key);
	return rv;
}

/* Is `key` the token's current key (by the meta just read)? */
static CK_RV key_current(struct token_store *t, const struct meta *m, const struct token_key *key)
{
	if (m->has_wrap[R_SO] && m->has_key_id &&
	    CRYPTO_memcmp(m->key_id, key->id, KEY_ID_LEN) == 0)
		return CKR_OK;
	kt_log("%s: the token was re-initialised since this login; log in again", t->path);
	return CKR_USER_NOT_LOGGED_IN;
}

/* Best effort: after a rekey, drop WAL frames that still hold the old
 * wrapping (secure_delete already zeroes freed space in the main file).  A
 * truncating checkpoint waits for other processes' readers, so it gets a
 * short timeout of its own: a PIN change must not stall for it. */
static void wal_scrub(struct token_store *t)
{
	int rc;
	sqlite3_busy_timeout(t->db, 200);
	rc = sqlite3_wal_checkpoint_v2(t->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
	sqlite3_busy_timeout(t->db, BUSY_TIMEOUT_MS);
	if (rc != SQLITE_OK)
		kt_debug(KT_DBG_TOKEN, "%s: WAL checkpoint deferred: %s", t->path,
			 sqlite3_errmsg(t->db));
}

/* Wrap `key` under a new PIN for role `r` and reset that role's counter. */
static CK_RV pin_store(struct token_store *t, const struct role *r, const struct token_key *key,
		       const CK_UTF8CHAR *pin, CK_ULONG len)
{
	CK_RV rv = CKR_FUNCTION_FAILED;
	uint8_t salt[SALT_LEN], wrap[WRAP_LEN];
	struct meta m;

	rv = meta_get(t, &m);
	if (rv != CKR_OK)
		goto out;
	rv = key_current(t, &m, key);
	if (rv != CKR_OK)
		goto out;
	if (RAND_bytes(salt, sizeof(salt)) != 1) {
		rv = CKR_FUNCTION_FAILED;
		goto out;
	}
	rv = pin_wrap(t, r, &m.params, pin, len, salt, key, wrap);
	if (rv != CKR_OK)
		goto out;

	rv = tx_begin(t);
	if (rv != CKR_OK)
		goto out;
	/* Check again: a re-initialisation may have slipped in during the KDF. */
	rv = meta_get(t, &m);
	if (rv == CKR_OK)
		rv = key_current(t, &m, key);
	if (rv == CKR_OK)
		rv = meta_set_blob(t, r->salt, salt, SALT_LEN);
	if (rv == CKR_OK)
		rv = meta_set_blob(t, r->wrap, wrap, WRAP_LEN);
	if (rv == CKR_OK)
		rv = meta_set_int(t, r->fails, 0);
	if (rv == CKR_OK)
		rv = gen_bump(t);
	rv = tx_end(t, rv);
	if (rv == CKR_OK)
		wal_scrub(t);
out:
	return rv;
}

static CK_RV file_login(struct token_store *t, CK_USER_TYPE who, const CK_UTF8CHAR *pin,
			CK_ULONG len, struct token_key **key)
{
	const struct role *r = role_of(who);
	if (key)
		*key = NULL;
	if (!r)
		return CKR_USER_TYPE_INVALID;
	if (!pin && len)
		return CKR_ARGUMENTS_BAD;
	return pin_check(t, r, pin, len, key);
}

static CK_RV file_init_pin(struct token_store *t, const struct token_key *so_key,
			   const CK_UTF8CHAR *pin, CK_ULONG len)
{
	if (!so_key || so_key->who != CKU_SO)
		return CKR_USER_NOT_LOGGED_IN;
	if (!pin && len)
		return CKR_ARGUMENTS_BAD;
	return pin_store(t, &role_user, so_key, pin, len);
}

static CK_RV file_set_pin(struct token_store *t, CK_USER_TYPE who, const CK_UTF8CHAR *old_pin,
			  CK_ULONG old_len, const CK_UTF8CHAR *new_pin, CK_ULONG new_len)
{
	CK_RV rv = CKR_ARGUMENTS_BAD;
	const struct role *r = role_of(who);
	struct token_key *key = NULL;

	if (!r) {
		rv = CKR_USER_TYPE_INVALID;
		goto out;
	}
	if ((!old_pin && old_len) || (!new_pin && new_len))
		goto out;
	rv = pin_check(t, r, old_pin, old_len, &key);
	if (rv != CKR_OK)
		goto out;
	rv = pin_store(t, r, key, new_pin, new_len);
out:
	file_key_free(key);
	return rv;
}

static CK_RV file_initialize(struct token_store *t, const CK_UTF8CHAR *so_pin, CK_ULONG so_len,
			     const char *label, const struct token_params *params)
{
	CK_RV rv = CKR_ARGUMENTS_BAD;
	struct token_key *key = NULL;
	uint8_t salt[SALT_LEN], wrap[WRAP_LEN];
	struct meta before, m;

	if (!params || (!so_pin && so_len))
		goto out;
	if (!label)
		label = "";
	if (strlen(label) > LABEL_MAX) {
		kt_log("%s: token label longer than %d bytes", t->path, LABEL_MAX);
		goto out;
	}
	if (!params_ok(params)) {
		kt_log("%s: bad token parameters (scrypt N must be a power of two >= %d, "
		       "r and p >= 1, memory <= %llu MiB; max tries >= 1)",
		       t->path, KDF_MIN_N, KDF_MAX_MEM >> 20);
		goto out;
	}
	rv = meta_get(t, &before);
	if (rv != CKR_OK)
		goto out;
	if (before.has_wrap[R_SO]) {
		rv = pin_check(t, &role_so, so_pin, so_len, NULL);
		if (rv != CKR_OK)
			goto out;
	}

	key = key_new();
	if (!key) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	key->who = CKU_SO;
	if (RAND_priv_bytes(key->k, KEY_LEN) != 1 || RAND_bytes(key->id, KEY_ID_LEN) != 1 ||
	    RAND_bytes(salt, SALT_LEN) != 1) {
		rv = CKR_FUNCTION_FAILED;
		goto out;
	}
	rv = pin_wrap(t, &role_so, params, so_pin, so_len, salt, key, wrap);
	if (rv != CKR_OK)
		goto out;

	rv = tx_begin(t);
	if (rv != CKR_OK)
		goto out;
	rv = meta_get(t, &m);
	/* The SO PIN we checked (or the absence of one) must still be the
	 * token's: else another process got there first. */
	if (rv == CKR_OK && (m.has_wrap[R_SO] != before.has_wrap[R_SO] ||
			     memcmp(m.wrap[R_SO], before.wrap[R_SO], WRAP_LEN) != 0)) {
		kt_log("%s: token changed by another process during initialisation", t->path);
		rv = CKR_FUNCTION_FAILED;
	}
	if (rv == CKR_OK)
		rv = st_run(t, ST_ATTR_WIPE, "destroy objects");
	if (rv == CKR_OK)
		rv = st_run(t, ST_OBJ_WIPE, "destroy objects");
	if (rv == CKR_OK)
		rv = meta_del(t, role_user.wrap);
	if (rv == CKR_OK)
		rv = meta_del(t, role_user.salt);
	if (rv == CKR_OK)
		rv = meta_set_blob(t, role_so.salt, salt, SALT_LEN);
	if (rv == CKR_OK)
		rv = meta_set_blob(t, role_so.wrap, wrap, WRAP_LEN);
	if (rv == CKR_OK)
		rv = meta_set_blob(t, "key_id", key->id, KEY_ID_LEN);
	if (rv == CKR_OK)
		rv = meta_set_int(t, "scrypt_n", (int64_t)params->scrypt_n);
	if (rv == CKR_OK)
		rv = meta_set_int(t, "scrypt_r", params->scrypt_r);
	if (rv == CKR_OK)
		rv = meta_set_int(t, "scrypt_p", params->scrypt_p);
	if (rv == CKR_OK)
		rv = meta_set_int(t, "max_tries", (int64_t)params->max_tries);
	if (rv == CKR_OK)
		rv = meta_set_text(t, "label", label);
	if (rv == CKR_OK)
		rv = meta_set_int(t, role_so.fails, 0);
	if (rv == CKR_OK)
		rv = meta_set_int(t, role_user.fails, 0);
	if (rv == CKR_OK)
		rv = gen_bump(t);
	rv = tx_end(t, rv);
	if (rv == CKR_OK) {
		wal_scrub(t);
		kt_debug(KT_DBG_TOKEN, "%s: token initialised", t->path);
	}
out:
	file_key_free(key);
	return rv;
}

/* ---- objects ----------------------------------------------------------- */

/* What an object's attributes mean for storage; CKA_CLASS is required
 * because which values are secret depends on it. */
static CK_RV obj_shape(const struct attrs *a, CK_OBJECT_CLASS *cls, bool *priv, bool *needs_key)
{
	if (!attrs_has(a, CKA_CLASS))
		return CKR_TEMPLATE_INCOMPLETE;
	if (!attrs_get_ulong(a, CKA_CLASS, cls))
		return CKR_ATTRIBUTE_VALUE_INVALID;
	*priv = obj_private(a);
	*needs_key = *priv;
	for (size_t i = 0; i < attrs_count(a); i++) {
		const CK_ATTRIBUTE *at = attrs_at(a, i);
		if (at->ulValueLen > MAX_VALUE_LEN)
			return CKR_DEVICE_MEMORY;
		if (attr_sealed(*cls, *priv, at->type))
			*needs_key = true;
	}
	return CKR_OK;
}

/* Store every attribute of object `id` (its row exists, it has no
 * attribute rows) and its tag.  Inside the caller's transaction. */
static CK_RV object_write(struct token_store *t, const struct token_key *key, uint64_t id,
			  const struct attrs *a, CK_OBJECT_CLASS cls, bool priv)
{
	CK_RV rv = CKR_FUNCTION_FAILED;
	sqlite3_stmt *s;
	uint8_t *sealed = NULL;
	uint8_t mac[MAC_LEN];
	uint8_t ad[ATTR_AD_LEN];
	int rc;

	if (key) {
		if (RAND_bytes(mac, NONCE_LEN) != 1) {
			rv = CKR_FUNCTION_FAILED;
			goto out;
		}
		rv = mac_begin(t, key->k, id, mac);
		if (rv != CKR_OK)
			goto out;
	}
	for (size_t i = 0; i < attrs_count(a); i++) {
		const CK_ATTRIBUTE *at = attrs_at(a, i);
		bool seal = attr_sealed(cls, priv, at->type);
		const void *val = at->pValue ? at->pValue : "";
		size_t len = at->ulValueLen;

		if (seal) {
			if (!key) {
				rv = CKR_USER_NOT_LOGGED_IN;
				goto out;
			}
			sealed = malloc(len + SEAL_OVERHEAD);
			if (!sealed) {
				rv = CKR_HOST_MEMORY;
				goto out;
			}
			attr_ad(ad, t, id, at->type, cls, priv);
			rv = gcm_seal(t, key->k, ad, sizeof(ad), at->pValue, len, sealed);
			if (rv != CKR_OK)
				goto out;
			val = sealed;
			len += SEAL_OVERHEAD;
		}
		if (key) {
			rv = mac_feed(t, at->type, seal, val, len);
			if (rv != CKR_OK)
				goto out;
		}
		s = st_get(t, ST_ATTR_INSERT, &rv);
		if (!s)
			goto out;
		if ((rc = sqlite3_bind_int64(s, 1, (sqlite3_int64)id)) != SQLITE_OK ||
		    (rc = sqlite3_bind_int64(s, 2, (sqlite3_int64)at->type)) != SQLITE_OK ||
		    (rc = sqlite3_bind_int(s, 3, seal)) != SQLITE_OK ||
		    (rc = sqlite3_bind_blob64(s, 4, val, len, SQLITE_STATIC)) != SQLITE_OK) {
			rv = bind_fail(t, s, rc);
			goto out;
		}
		rv = st_exec(t, s, "store attribute");
		if (rv != CKR_OK)
			goto out;
		free(sealed);
		sealed = NULL;
	}

	s = st_get(t, ST_OBJ_SET_MAC, &rv);
	if (!s)
		goto out;
	if (key) {
		rv = mac_end(t, mac + NONCE_LEN);
		if (rv != CKR_OK)
			goto out;
		rc = sqlite3_bind_blob(s, 2, mac, MAC_LEN, SQLITE_STATIC);
	} else {
		rc = sqlite3_bind_null(s, 2);
	}
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 1, (sqlite3_int64)id);
	if (rc != SQLITE_OK) {
		rv = bind_fail(t, s, rc);
		goto out;
	}
	rv = st_exec(t, s, "store object tag");
out:
	free(sealed);
	return rv;
}

/* Inside a write transaction: the key, when given, must be current. */
static CK_RV write_key_check(struct token_store *t, const struct token_key *key)
{
	struct meta m;
	CK_RV rv;
	if (!key)
		return CKR_OK;
	rv = meta_get(t, &m);
	if (rv == CKR_OK)
		rv = key_current(t, &m, key);
	return rv;
}

static CK_RV file_object_add(struct token_store *t, const struct token_key *key,
			     const struct attrs *a, uint64_t *id)
{
	CK_RV rv = CKR_ARGUMENTS_BAD;
	CK_OBJECT_CLASS cls;
	bool priv, needs_key, in_tx = false;
	sqlite3_int64 row = 0;

	if (!a || !id)
		goto out;
	rv = obj_shape(a, &cls, &priv, &needs_key);
	if (rv != CKR_OK)
		goto out;
	if (needs_key && !key) {
		rv = CKR_USER_NOT_LOGGED_IN;
		goto out;
	}
	rv = tx_begin(t);
	if (rv != CKR_OK)
		goto out;
	in_tx = true;
	rv = write_key_check(t, key);
	if (rv != CKR_OK)
		goto out;
	rv = st_run(t, ST_OBJ_INSERT, "create object");
	if (rv != CKR_OK)
		goto out;
	/* The id is only known now; it goes into every value's associated
	 * data, so sealing happens after the insert, in this transaction. */
	row = sqlite3_last_insert_rowid(t->db);
	rv = object_write(t, key, (uint64_t)row, a, cls, priv);
	if (rv != CKR_OK)
		goto out;
	rv = gen_bump(t);
out:
	if (in_tx) {
		rv = tx_end(t, rv);
		crypto_scrub(t);
	}
	if (rv == CKR_OK) {
		*id = (uint64_t)row;
		kt_debug(KT_DBG_TOKEN, "%s: stored object %llu (%zu attributes)", t->path,
			 (unsigned long long)row, attrs_count(a));
	}
	return rv;
}

/* Does object `id` exist, and is it private?  CKR_OBJECT_HANDLE_INVALID. */
static CK_RV object_lookup(struct token_store *t, uint64_t id, bool *priv)
{
	CK_RV rv = CKR_FUNCTION_FAILED;
	sqlite3_stmt *s;
	int rc;

	if (id > INT64_MAX)
		return CKR_OBJECT_HANDLE_INVALID;
	s = st_get(t, ST_OBJ_PRIVATE, &rv);
	if (!s)
		return rv;
	if ((rc = sqlite3_bind_int64(s, 1, (sqlite3_int64)id)) != SQLITE_OK ||
	    (rc = sqlite3_bind_int64(s, 2, CKA_PRIVATE)) != SQLITE_OK)
		return bind_fail(t, s, rc);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		const uint8_t *v = sqlite3_column_blob(s, 0);
		*priv = !(v && sqlite3_column_bytes(s, 0) == 1 && v[0] == CK_FALSE);
		rv = CKR_OK;
	} else if (rc == SQLITE_DONE) {
		rv = CKR_OBJECT_HANDLE_INVALID;
	} else {
		rv = db_fail(t, rc, "look up object");
	}
	st_put(s);
	return rv;
}

static CK_RV file_object_update(struct token_store *t, const struct token_key *key, uint64_t id,
				const struct attrs *a)
{
	CK_RV rv = CKR_ARGUMENTS_BAD;
	CK_OBJECT_CLASS cls;
	bool priv, was_priv = true, needs_key, in_tx = false;
	sqlite3_stmt *s;
	int rc;

	if (!a)
		goto out;
	rv = obj_shape(a, &cls, &priv, &needs_key);
	if (rv != CKR_OK)
		goto out;
	if (needs_key && !key) {
		rv = CKR_USER_NOT_LOGGED_IN;
		goto out;
	}
	rv = tx_begin(t);
	if (rv != CKR_OK)
		goto out;
	in_tx = true;
	rv = write_key_check(t, key);
	if (rv != CKR_OK)
		goto out;
	rv = object_lookup(t, id, &was_priv);
	if (rv != CKR_OK)
		goto out;
	/* Without the key a private object cannot be read, so it must not be
	 * rewritten (say, as a public one) either. */
	if (was_priv && !key) {
		rv = CKR_USER_NOT_LOGGED_IN;
		goto out;
	}
	s = st_get(t, ST_ATTR_CLEAR, &rv);
	if (!s)
		goto out;
	if ((rc = sqlite3_bind_int64(s, 1, (sqlite3_int64)id)) != SQLITE_OK) {
		rv = bind_fail(t, s, rc);
		goto out;
	}
	rv = st_exec(t, s, "replace attributes");
	if (rv != CKR_OK)
		goto out;
	rv = object_write(t, key, id, a, cls, priv);
	if (rv != CKR_OK)
		goto out;
	rv = gen_bump(t);
out:
	if (in_tx) {
		rv = tx_end(t, rv);
		crypto_scrub(t);
	}
	return rv;
}

static CK_RV file_object_delete(struct token_store *t, uint64_t id)
{
	CK_RV rv = CKR_OBJECT_HANDLE_INVALID;
	sqlite3_stmt *s;
	bool in_tx = false;
	int rc;

	if (id > INT64_MAX)
		goto out;
	rv = tx_begin(t);
	if (rv != CKR_OK)
		goto out;
	in_tx = true;
	s = st_get(t, ST_OBJ_DELETE, &rv);
	if (!s)
		goto out;
	if ((rc = sqlite3_bind_int64(s, 1, (sqlite3_int64)id)) != SQLITE_OK) {
		rv = bind_fail(t, s, rc);
		goto out;
	}
	rv = st_exec(t, s, "destroy object");
	if (rv != CKR_OK)
		goto out;
	if (sqlite3_changes(t->db) != 1) {
		rv = CKR_OBJECT_HANDLE_INVALID;
		goto out;
	}
	rv = gen_bump(t);
out:
	if (in_tx)
		rv = tx_end(t, rv);
	return rv;
}

/* ---- load -------------------------------------------------------------- */

/* The rows of one object while load collects them. */
struct pending {
	uint64_t id;
	struct attrs *clear;  /* stored in the clear: delivered as they are */
	struct attrs *sealed; /* stored sealed: nonce || ciphertext || tag */
	uint8_t mac[MAC_LEN];
	bool has_mac;
	const char *bad; /* why these rows cannot be a valid object */
};

static void pending_reset(struct pending *p)
{
	attrs_free(p->clear);
	attrs_free(p->sealed);
	memset(p, 0, sizeof(*p));
}

static CK_RV pending_start(struct pending *p, sqlite3_stmt *s)
{
	const void *mac;

	p->id = (uint64_t)sqlite3_column_int64(s, 0);
	p->clear = attrs_new();
	p->sealed = attrs_new();
	if (!p->clear || !p->sealed)
		return CKR_HOST_MEMORY;
	switch (sqlite3_column_type(s, 1)) {
	case SQLITE_NULL:
		break;
	case SQLITE_BLOB:
		mac = sqlite3_column_blob(s, 1);
		if (mac && sqlite3_column_bytes(s, 1) == MAC_LEN) {
			memcpy(p->mac, mac, MAC_LEN);
			p->has_mac = true;
			break;
		}
		/* fall through */
	default:
		p->bad = "malformed integrity tag";
	}
	return CKR_OK;
}

static CK_RV pending_add(struct pending *p, sqlite3_stmt *s)
{
	CK_ATTRIBUTE_TYPE type;
	int64_t sealed;
	const void *v;
	int n;

	if (p->bad)
		return CKR_OK;
	if (sqlite3_column_type(s, 2) != SQLITE_INTEGER ||
	    sqlite3_column_type(s, 3) != SQLITE_INTEGER ||
	    sqlite3_column_type(s, 4) != SQLITE_BLOB) {
		p->bad = "malformed attribute row";
		return CKR_OK;
	}
	type = (CK_ATTRIBUTE_TYPE)(sqlite3_uint64)sqlite3_column_int64(s, 2);
	sealed = sqlite3_column_int64(s, 3);
	v = sqlite3_column_blob(s, 4);
	n = sqlite3_column_bytes(s, 4);
	if (n > 0 && !v)
		return CKR_HOST_MEMORY;
	if ((sealed != 0 && sealed != 1) || n < 0 || (size_t)n > MAX_VALUE_LEN + SEAL_OVERHEAD ||
	    attrs_has(p->clear, type) || attrs_has(p->sealed, type)) {
		p->bad = "malformed attribute row";
		return CKR_OK;
	}
	return attrs_set(sealed ? p->sealed : p->clear, type, v, (CK_ULONG)n);
}

/* Sealed exactly where the rules say, no more, no less: a flag flipped in
 * the file would otherwise pass off a planted clear value as the real one. */
static bool layout_ok(const struct pending *p, CK_OBJECT_CLASS cls, bool priv)
{
	for (size_t i = 0; i < attrs_count(p->clear); i++)
		if (attr_sealed(cls, priv, attrs_at(p->clear, i)->type))
			return false;
	for (size_t i = 0; i < attrs_count(p->sealed); i++)
		if (!attr_sealed(cls, priv, attrs_at(p->sealed, i)->type))
			return false;
	return true;
}

/* Recompute the object's tag over clear and sealed rows merged in type
 * order (the order object_write fed them). */
static CK_RV mac_check(struct token_store *t, const struct token_key *key, const struct pending *p)
{
	CK_RV rv;
	size_t i = 0, j = 0, nc = attrs_count(p->clear), ns = attrs_count(p->sealed);
	uint8_t tag[TAG_LEN];

	rv = mac_begin(t, key->k, p->id, p->mac);
	while (rv == CKR_OK && (i < nc || j < ns)) {
		const CK_ATTRIBUTE *c = i < nc ? attrs_at(p->clear, i) : NULL;
		const CK_ATTRIBUTE *s = j < ns ? attrs_at(p->sealed, j) : NULL;
		bool from_sealed = !c || (s && s->type < c->type);
		const CK_ATTRIBUTE *at = from_sealed ? s : c;
		if (!at)
			return CKR_GENERAL_ERROR; /* cannot happen: i < nc or j < ns */
		if (from_sealed)
			j++;
		else
			i++;
		rv = mac_feed(t, at->type, from_sealed, at->pValue, at->ulValueLen);
	}
	if (rv == CKR_OK)
		rv = mac_end(t, tag);
	if (rv == CKR_OK && CRYPTO_memcmp(tag, p->mac + NONCE_LEN, TAG_LEN) != 0)
		rv = CKR_ENCRYPTED_DATA_INVALID;
	return rv;
}

static CK_RV unseal_all(struct token_store *t, const struct token_key *key, struct pending *p,
			CK_OBJECT_CLASS cls, bool priv)
{
	CK_RV rv = CKR_OK;
	uint8_t ad[ATTR_AD_LEN];

	for (size_t i = 0; rv == CKR_OK && i < attrs_count(p->sealed); i++) {
		const CK_ATTRIBUTE *at = attrs_at(p->sealed, i);
		size_t len;
		uint8_t *plain;

		if (at->ulValueLen < SEAL_OVERHEAD)
			return CKR_ENCRYPTED_DATA_INVALID;
		len = at->ulValueLen - SEAL_OVERHEAD;
		plain = kt_alloc_secret(len);
		if (!plain)
			return CKR_HOST_MEMORY;
		attr_ad(ad, t, p->id, at->type, cls, priv);
		rv = gcm_open(t, key->k, ad, sizeof(ad), at->pValue, at->ulValueLen, plain);
		/* attrs_take frees `plain` itself when it fails. */
		if (rv == CKR_OK)
			rv = attrs_take(p->clear, at->type, plain, (CK_ULONG)len);
		else
			kt_free_secret(plain, len);
	}
	return rv;
}

/* Deliver one collected object, or log and skip it when it does not hold
 * together.  Only a callback or memory failure stops the load. */
static CK_RV object_finish(struct token_store *t, const struct token_key *key, struct pending *p,
			   token_object_cb cb, void *ctx)
{
	CK_RV rv = CKR_OK;
	const char *why = p->bad;
	CK_OBJECT_CLASS cls = 0;
	bool priv, complete;

	if (why)
		goto skip;
	if (!attrs_get_ulong(p->clear, CKA_CLASS, &cls)) {
		why = "no readable CKA_CLASS";
		goto skip;
	}
	priv = obj_private(p->clear);
	if (!layout_ok(p, cls, priv)) {
		why = "values stored in the clear that must be sealed, or the reverse";
		goto skip;
	}
	if (!key) {
		if (priv)
			goto out; /* not visible before login */
		complete = attrs_count(p->sealed) == 0;
	} else {
		if ((priv || attrs_count(p->sealed)) && !p->has_mac) {
			why = "integrity tag missing";
			goto skip;
		}
		if (p->has_mac) {
			rv = mac_check(t, key, p);
			if (rv == CKR_ENCRYPTED_DATA_INVALID) {
				why = "integrity tag does not match";
				goto skip;
			}
			if (rv != CKR_OK)
				goto out;
		}
		rv = unseal_all(t, key, p, cls, priv);
		if (rv == CKR_ENCRYPTED_DATA_INVALID) {
			why = "a sealed value failed authentication";
			goto skip;
		}
		if (rv != CKR_OK)
			goto out;
		complete = true;
	}
	/* Public values only without the key: the sealed ones stay out. */
	rv = cb(ctx, p->id, p->clear, complete);
	p->clear = NULL;
	goto out;
skip:
	kt_log("%s: object %llu is damaged or was tampered with (%s); not loaded", t->path,
	       (unsigned long long)p->id, why);
	rv = CKR_OK;
out:
	pending_reset(p);
	return rv;
}

static CK_RV file_load(struct token_store *t, const struct token_key *key, token_object_cb cb,
		       void *ctx)
{
	CK_RV rv = CKR_ARGUMENTS_BAD;
	struct pending p = { 0 };
	sqlite3_stmt *s = NULL;
	struct meta m;
	int64_t dv;
	bool in_tx = false, started = false;
	size_t n = 0;
	int rc;

	if (!cb)
		goto out;
	/* data_version before the snapshot: a commit in between is then seen
	 * as a change once more, never missed. */
	rv = read_data_version(t, &dv);
	if (rv != CKR_OK)
		goto out;
	rv = tx_begin_read(t);
	if (rv != CKR_OK)
		goto out;
	in_tx = true;
	rv = meta_get(t, &m);
	if (rv != CKR_OK)
		goto out;
	if (key && (!m.has_key_id || CRYPTO_memcmp(m.key_id, key->id, KEY_ID_LEN) != 0)) {
		kt_log("%s: the token was re-initialised since this login; "
		       "loading public objects only",
		       t->path);
		key = NULL;
	}
	s = st_get(t, ST_LOAD, &rv);
	if (!s)
		goto out;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		uint64_t id = (uint64_t)sqlite3_column_int64(s, 0);
		if (!started || id != p.id) {
			if (started) {
				rv = object_finish(t, key, &p, cb, ctx);
				if (rv != CKR_OK)
					goto out;
				n++;
			}
			started = true;
			rv = pending_start(&p, s);
			if (rv != CKR_OK)
				goto out;
		}
		if (sqlite3_column_type(s, 2) == SQLITE_NULL)
			continue; /* an object without attributes */
		rv = pending_add(&p, s);
		if (rv != CKR_OK)
			goto out;
	}
	if (rc != SQLITE_DONE) {
		rv = db_fail(t, rc, "load objects");
		goto out;
	}
	if (started) {
		rv = object_finish(t, key, &p, cb, ctx);
		if (rv != CKR_OK)
			goto out;
		n++;
	}
	t->data_version = dv;
	t->generation = m.generation;
	kt_debug(KT_DBG_TOKEN, "%s: read %zu objects (%s)", t->path, n, key ? "all" : "public");
out:
	st_put(s);
	pending_reset(&p);
	if (in_tx)
		rv = tx_end(t, rv);
	crypto_scrub(t);
	return rv;
}

/*
 * Did another connection change the store?  Asked before every C_SignInit,
 * so the common answer, "no", must be cheap: when the WAL-index header
 * reads as it did at the last real check, nothing was committed since
 * (SQLite bumps it with every transaction) and no read transaction (with
 * its fcntl locks) is needed.  The header is read before data_version, so
 * a commit in between makes the next read differ and check again; a torn
 * read (a writer mid-update) or a reset file differ too.  Either way the
 * error is a needless check, never a missed change.
 */
static bool file_changed(struct token_store *t)
{
	int64_t dv, gen;
	bool changed;
	uint8_t hdr[WAL_HEADER_LEN];

	bool have_hdr = t->shm_fd >= 0 && pread(t->shm_fd, hdr, WAL_HEADER_LEN, 0) == WAL_HEADER_LEN;
	if (have_hdr && t->shm_seen_valid && memcmp(hdr, t->shm_seen, WAL_HEADER_LEN) == 0)
		return false;
	/* On any error say "changed": a needless reload is harmless. */
	if (read_data_version(t, &dv) != CKR_OK) {
		t->shm_seen_valid = false;
		return true;
	}
	t->shm_seen_valid = have_hdr;
	if (have_hdr)
		memcpy(t->shm_seen, hdr, WAL_HEADER_LEN);
	if (dv == t->data_version)
		return false;
	if (meta_get_int(t, "generation", &gen) != CKR_OK)
		return true;
	changed = gen != t->generation;
	t->data_version = dv;
	t->generation = gen;
	return changed;
}

const struct token_ops file_token_ops = {
	.name = "file",
	.open = file_open,
	.close = file_close,
	.state = file_state,
	.initialize = file_initialize,
	.login = file_login,
	.key_free = file_key_free,
	.init_pin = file_init_pin,
	.set_pin = file_set_pin,
	.changed = file_changed,
	.load = file_load,
	.object_add = file_object_add,
	.object_update = file_object_update,
	.object_delete = file_object_delete,
};
