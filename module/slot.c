#include "slot.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/x509.h>

#include "koltamga/pkcs11v.h"
#include "crypto.h"
#include "log.h"
#include "object.h"

#define TOKEN_SUFFIX ".ktok"

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct token **slots;
static size_t n_slots;
static CK_SLOT_ID next_slot_id;
static const struct config *config;

/* --- hashing and the object indexes ------------------------------------- */

static uint64_t hash_bytes(const void *p, size_t n)
{
	/* FNV-1a: short keys, no adversary who gains from collisions beyond
	 * a slower find in their own process. */
	uint64_t h = 0xcbf29ce484222325ULL;
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

static uint64_t hash_attr(const struct attrs *a, CK_ATTRIBUTE_TYPE type)
{
	const CK_ATTRIBUTE *at = attrs_get(a, type);
	return at ? hash_bytes(at->pValue, at->ulValueLen) : 0;
}

static size_t handle_bucket(const struct token *t, CK_OBJECT_HANDLE h)
{
	return (size_t)((h * 0x9e3779b97f4a7c15ULL) >> 20) & (t->buckets - 1);
}

static void index_link(struct token *t, struct object *o)
{
	size_t b = handle_bucket(t, o->handle);
	o->next_handle = t->by_handle[b];
	t->by_handle[b] = o;
	o->label_hash = hash_attr(o->attrs, CKA_LABEL);
	b = o->label_hash & (t->buckets - 1);
	o->next_label = t->by_label[b];
	t->by_label[b] = o;
	o->id_hash = hash_attr(o->attrs, CKA_ID);
	b = o->id_hash & (t->buckets - 1);
	o->next_id = t->by_id[b];
	t->by_id[b] = o;
}

#define UNLINK(head, o, field)                                                                     \
	do {                                                                                       \
		for (struct object **pp = (head); *pp; pp = &(*pp)->field) {                       \
			if (*pp == (o)) {                                                          \
				*pp = (o)->field;                                                  \
				break;                                                             \
			}                                                                          \
		}                                                                                  \
	} while (0)

static void index_unlink(struct token *t, struct object *o)
{
	UNLINK(&t->by_handle[handle_bucket(t, o->handle)], o, next_handle);
	UNLINK(&t->by_label[o->label_hash & (t->buckets - 1)], o, next_label);
	UNLINK(&t->by_id[o->id_hash & (t->buckets - 1)], o, next_id);
}

/* Keep about one object per bucket so every chain stays short. */
static CK_RV index_grow(struct token *t)
{
	if (t->buckets && t->n_objects < t->buckets)
		return CKR_OK;
	size_t nb = t->buckets ? t->buckets * 2 : 64;
	struct object **h = calloc(nb, sizeof(*h)), **l = calloc(nb, sizeof(*l)),
		      **d = calloc(nb, sizeof(*d));
	if (!h || !l || !d) {
		free(h);
		free(l);
		free(d);
		return CKR_HOST_MEMORY;
	}
	struct object **old = t->by_handle;
	size_t ob = t->buckets;
	t->by_handle = h;
	free(t->by_label);
	t->by_label = l;
	free(t->by_id);
	t->by_id = d;
	t->buckets = nb;
	for (size_t i = 0; i < ob; i++) {
		struct object *o = old[i];
		while (o) {
			struct object *next = o->next_handle;
			index_link(t, o);
			o = next;
		}
	}
	free(old);
	return CKR_OK;
}

static void object_free(struct object *o)
{
	if (!o)
		return;
	attrs_free(o->attrs);
	EVP_PKEY_free(o->pkey);
	free(o);
}

static CK_RV object_insert(struct token *t, CK_OBJECT_HANDLE handle, CK_SESSION_HANDLE owner,
			   struct attrs *attrs, bool complete)
{
	CK_RV rv = index_grow(t);
	struct object *o = NULL;
	if (rv != CKR_OK)
		goto fail;
	o = calloc(1, sizeof(*o));
	if (!o) {
		rv = CKR_HOST_MEMORY;
		goto fail;
	}
	o->handle = handle;
	o->owner = owner;
	o->on_device = token_is_device(t) && handle < SESSION_HANDLE_BASE;
	o->attrs = attrs;
	o->complete = complete;
	o->cls = object_class(attrs);
	o->is_private = object_is_private(attrs);
	index_link(t, o);
	t->n_objects++;
	return CKR_OK;
fail:
	attrs_free(attrs);
	return rv;
}

static void object_remove(struct token *t, struct object *o)
{
	index_unlink(t, o);
	t->n_objects--;
	object_free(o);
}

/* Drop cached objects: token objects (session == false) or the session
 * objects matched by `keep`. */
static void objects_drop(struct token *t, bool token_objects, bool private_only)
{
	for (size_t b = 0; b < t->buckets; b++) {
		struct object *o = t->by_handle[b];
		while (o) {
			struct object *next = o->next_handle;
			bool is_token_obj = o->owner == 0;
			if (is_token_obj == token_objects && (!private_only || o->is_private))
				object_remove(t, o);
			o = next;
		}
	}
}

/*
 * koltamga's marks on a device's objects.  A device cannot keep koltamga's
 * own attributes, but a key marked compromised must stay so: the marks
 * (CKA_KT_COMPROMISED, its reason) live beside the compromise reports, in
 * <compromise_reports>/.device-<token serial>.marks, one line per change:
 * "<class> <CKA_ID hex>-<CKA_LABEL hex> <reason hex>", appended and
 * synced, the last line for an object winning.  Marks are only ever set.
 */
static CK_RV make_dirs(const char *dir);

static char *marks_path(const struct token *t)
{
	char *p = NULL;
	if (!config || !config->compromise_dir || !t->state.serial[0])
		return NULL;
	if (asprintf(&p, "%s/.device-%s.marks", config->compromise_dir, t->state.serial) < 0)
		return NULL;
	return p;
}

static char *hex_of(const CK_ATTRIBUTE *a)
{
	size_t n = a ? a->ulValueLen : 0;
	char *h = malloc(2 * n + 1);
	if (h)
		kt_hex(h, n ? a->pValue : "", n);
	return h;
}

/* What a mark is found by.  "spki <SHA-256 of the SubjectPublicKeyInfo>":
 * the same for a key pair's objects and its certificate, and for a copy,
 * whatever label or CKA_ID they are given.  But a device's EC private key
 * has its public key only from the public key object with its CKA_ID, so
 * a mark is also kept by "<class> <id>-<label>", written again whenever a
 * marked object gets another CKA_ID or label.  Either key finds it. */
static char *mark_key_spki(const struct attrs *a)
{
	const CK_ATTRIBUTE *spki = attrs_get(a, CKA_PUBLIC_KEY_INFO);
	unsigned char h[32];
	char hex[65], *k = NULL;
	if (!spki || !spki->ulValueLen || !crypto_sha256(spki->pValue, spki->ulValueLen, h))
		return NULL;
	kt_hex(hex, h, sizeof(h));
	return asprintf(&k, "spki %s", hex) < 0 ? NULL : k;
}

static char *mark_key_names(const struct attrs *a)
{
	char *id = hex_of(attrs_get(a, CKA_ID)), *label = hex_of(attrs_get(a, CKA_LABEL)), *k = NULL;
	if (id && label && asprintf(&k, "%lu %s-%s", object_class(a), id, label) < 0)
		k = NULL;
	free(id);
	free(label);
	return k;
}

static CK_RV marks_save(struct token *t, const struct attrs *a, const CK_ATTRIBUTE *reason)
{
	char *path = marks_path(t), *by_spki = mark_key_spki(a), *by_names = mark_key_names(a), *why = hex_of(reason);
	CK_RV rv = CKR_HOST_MEMORY;
	if (!path) {
		rv = CKR_ATTRIBUTE_TYPE_INVALID;
		kt_log("%s: nowhere to keep a compromise mark (compromise_reports)", t->path);
	} else if (by_names && why) {
		rv = make_dirs(config->compromise_dir);
		int fd = rv == CKR_OK ? open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600) : -1;
		if (rv == CKR_OK && fd < 0)
			rv = CKR_DEVICE_ERROR;
		if (fd >= 0) {
			char *lines = NULL;
			int n = by_spki ? asprintf(&lines, "%s %s\n%s %s\n", by_spki, why, by_names, why)
					: asprintf(&lines, "%s %s\n", by_names, why);
			rv = n > 0 && write(fd, lines, (size_t)n) == n && fsync(fd) == 0 ? CKR_OK : CKR_DEVICE_ERROR;
			free(lines);
			close(fd);
		}
		if (rv != CKR_OK)
			kt_log("%s: cannot record a compromise mark in %s", t->path, path);
	}
	free(path);
	free(by_spki);
	free(by_names);
	free(why);
	return rv;
}

/* The marks file's marks for this object, from an open marks file
 * (rewound: one file serves a whole reload). */
static void marks_apply_from(FILE *fp, struct attrs *a)
{
	char *by_spki = mark_key_spki(a), *by_names = mark_key_names(a);
	char *line = NULL;
	size_t cap = 0;
	if (by_names)
		rewind(fp);
	while (by_names && getline(&line, &cap, fp) > 0) {
		size_t kl = 0;
		if (by_spki && strncmp(line, by_spki, strlen(by_spki)) == 0 && line[strlen(by_spki)] == ' ')
			kl = strlen(by_spki);
		else if (strncmp(line, by_names, strlen(by_names)) == 0 && line[strlen(by_names)] == ' ')
			kl = strlen(by_names);
		else
			continue;
		char *why = line + kl + 1;
		size_t wl = strcspn(why, "\n");
		CK_BYTE reason[2048];
		size_t n = 0;
		for (; n < sizeof(reason) && 2 * n + 1 < wl; n++) {
			int hi = kt_hex_digit(why[2 * n]), lo = kt_hex_digit(why[2 * n + 1]);
			if (hi < 0 || lo < 0)
				break;
			reason[n] = (CK_BYTE)(hi << 4 | lo);
		}
		attrs_set_bool(a, CKA_KT_COMPROMISED, true);
		attrs_set(a, CKA_KT_COMPROMISE_REASON, reason, (CK_ULONG)n);
	}
	free(line);
	free(by_spki);
	free(by_names);
}

static FILE *marks_open(const struct token *t)
{
	char *path = marks_path(t);
	FILE *fp = path ? fopen(path, "re") : NULL;
	free(path);
	return fp;
}

static void marks_apply(struct token *t, struct attrs *a)
{
	FILE *fp = marks_open(t);
	if (fp) {
		marks_apply_from(fp, a);
		fclose(fp);
	}
}

/* What the module adds to a device's object as it does to its own at
 * creation.  A certificate it cannot parse is still shown, underived. */
static void device_complete(struct token *t, struct attrs *attrs)
{
	CK_OBJECT_CLASS cls = object_class(attrs);
	/* Unmarked until device_marks() finds a mark: that needs the
	 * public key, which a private key may only get from its pair. */
	if (cls == CKO_PRIVATE_KEY || cls == CKO_PUBLIC_KEY || cls == CKO_CERTIFICATE)
		attrs_set_bool(attrs, CKA_KT_COMPROMISED, false);
	if (cls == CKO_CERTIFICATE && object_derive_certificate(attrs) != CKR_OK)
		kt_log("%s: a certificate on the device is not valid X.509 DER", t->path);
	/* A device cannot keep koltamga's policy attribute: its keys get
	 * the configured policy each time they are loaded. */
	if (cls == CKO_PRIVATE_KEY) {
		enum sign_policy p = config_key_policy(config, t->policy, attrs_get(attrs, CKA_ID),
						       attrs_get(attrs, CKA_LABEL));
		attrs_set_ulong(attrs, CKA_KT_SIGN_POLICY,
				p == POLICY_AUTOMATIC ? CK_KT_POLICY_AUTOMATIC : CK_KT_POLICY_CONFIRM);
	}
}

static CK_RV load_cb(void *ctx, uint64_t id, struct attrs *attrs, bool complete)
{
	struct token *t = ctx;
	if (token_is_device(t)) {
		/* The device's session objects are this module's session
		 * keys, already known by their sessions. */
		if (!object_is_token(attrs)) {
			attrs_free(attrs);
			return CKR_OK;
		}
		device_complete(t, attrs);
	}
	if (id == 0 || id >= SESSION_HANDLE_BASE) {
		/* Handles this large would collide with session objects. */
		kt_log("%s: object id %llu out of range, skipped", t->path, (unsigned long long)id);
		attrs_free(attrs);
		return CKR_OK;
	}
	return object_insert(t, (CK_OBJECT_HANDLE)id, 0, attrs, complete);
}

/* A device's key whose CKA_PUBLIC_KEY_INFO the device did not give gets
 * it from its own public half (public keys, RSA private keys) or from the
 * public key with the same CKA_ID: the module binds keys to certificates
 * by it, and applications read it. */
static void device_public_key_info(struct token *t)
{
	for (size_t b = 0; b < t->buckets; b++) {
		for (struct object *o = t->by_handle[b]; o; o = o->next_handle) {
			CK_ULONG kt;
			if ((o->cls != CKO_PRIVATE_KEY && o->cls != CKO_PUBLIC_KEY) || !o->on_device ||
			    attrs_has(o->attrs, CKA_PUBLIC_KEY_INFO) || !attrs_get_ulong(o->attrs, CKA_KEY_TYPE, &kt))
				continue;
			if (o->cls == CKO_PUBLIC_KEY || kt == CKK_RSA) {
				crypto_set_public_key_info(o->attrs, o->attrs);
				continue;
			}
			const CK_ATTRIBUTE *id = attrs_get(o->attrs, CKA_ID);
			if (!id || !id->ulValueLen)
				continue;
			uint64_t hv = hash_bytes(id->pValue, id->ulValueLen);
			for (struct object *p = t->by_id[hv & (t->buckets - 1)]; p; p = p->next_id) {
				CK_ULONG pkt;
				if (p->cls == CKO_PUBLIC_KEY && attrs_match(p->attrs, id) &&
				    attrs_get_ulong(p->attrs, CKA_KEY_TYPE, &pkt) && pkt == kt &&
				    crypto_set_public_key_info(p->attrs, o->attrs) == CKR_OK)
					break;
			}
		}
	}
}

/* The compromise marks of a device's objects (marks_apply), once every
 * object has its public key. */
static void device_marks(struct token *t)
{
	FILE *fp = marks_open(t);
	if (!fp)
		return;
	for (size_t b = 0; b < t->buckets; b++)
		for (struct object *o = t->by_handle[b]; o; o = o->next_handle)
			if (o->on_device &&
			    (o->cls == CKO_PRIVATE_KEY || o->cls == CKO_PUBLIC_KEY || o->cls == CKO_CERTIFICATE))
				marks_apply_from(fp, o->attrs);
	fclose(fp);
}

static CK_RV token_reload(struct token *t)
{
	objects_drop(t, true, false);
	if (!t->store || t->absent)
		return CKR_OK;
	CK_RV rv = t->ops->load(t->store, t->key, load_cb, t);
	if (rv != CKR_OK)
		kt_log("%s: cannot load objects: %s", t->path, kt_rv_name(rv));
	else if (token_is_device(t)) {
		device_public_key_info(t);
		device_marks(t);
	}
	return rv;
}

bool token_is_device(const struct token *t)
{
	return t->ops->attach != NULL;
}

/* --- tokens and the slot table ------------------------------------------ */

static struct token *token_new(const struct token_ops *ops, const char *path)
{
	struct token *t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	if (path) {
		t->path = strdup(path);
		if (!t->path) {
			free(t);
			return NULL;
		}
	}
	pthread_mutex_init(&t->lock, NULL);
	t->ops = ops;
	t->login = USER_NONE;
	t->next_session_handle = SESSION_HANDLE_BASE;
	return t;
}

static void token_free(struct token *t)
{
	if (!t)
		return;
	objects_drop(t, true, false);
	objects_drop(t, false, false);
	if (t->key)
		t->ops->key_free(t->key);
	if (t->store)
		t->ops->close(t->store);
	free(t->by_handle);
	free(t->by_label);
	free(t->by_id);
	free(t->path);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

/* Open a token's store; an unreadable store leaves the slot showing an
 * unrecognised token rather than failing the whole module. */
static void token_open(struct token *t)
{
	CK_RV rv = t->ops->open(t->path, false, &t->store);
	if (rv != CKR_OK) {
		t->store = NULL;
		t->recognized = false;
		kt_log("token %s is not usable: %s", t->path, kt_rv_name(rv));
		return;
	}
	t->recognized = true;
	if (token_refresh_state(t) == CKR_OK)
		token_reload(t);
}

static CK_RV slot_push(struct token *t)
{
	struct token **s = realloc(slots, (n_slots + 1) * sizeof(*s));
	if (!s)
		return CKR_HOST_MEMORY;
	slots = s;
	slots[n_slots++] = t;
	return CKR_OK;
}

/* A new slot, with the next slot id. */
static CK_RV slot_append(struct token *t)
{
	CK_RV rv = slot_push(t);
	if (rv == CKR_OK)
		t->slot_id = next_slot_id++;
	return rv;
}

static bool slot_has_path(const char *path)
{
	for (size_t i = 0; i < n_slots; i++)
		if (slots[i]->path && strcmp(slots[i]->path, path) == 0)
			return true;
	return false;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Add the store directory's tokens not yet in the table, in name order
 * (names start with the creation time, so slot ids follow creation).
 * Called with the table lock held (or before anyone else can see it). */
static void scan_store(void)
{
	if (!config->store_dir)
		return;
	DIR *d = opendir(config->store_dir);
	if (!d)
		return;
	char **names = NULL;
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		size_t len = strlen(e->d_name);
		if (len <= strlen(TOKEN_SUFFIX) || e->d_name[0] == '.' ||
		    strcmp(e->d_name + len - strlen(TOKEN_SUFFIX), TOKEN_SUFFIX) != 0)
			continue;
		char **nn = realloc(names, (n + 1) * sizeof(*nn));
		if (!nn)
			break;
		names = nn;
		if (asprintf(&names[n], "%s/%s", config->store_dir, e->d_name) < 0)
			break;
		n++;
	}
	closedir(d);
	if (n)
		qsort(names, n, sizeof(*names), cmp_str);
	/* The empty slot stays last: take it out while adding, put it back
	 * after (slot_push makes room for it). */
	struct token *empty = NULL;
	if (n_slots && !slots[n_slots - 1]->path)
		empty = slots[--n_slots];
	for (size_t i = 0; i < n; i++) {
		if (!slot_has_path(names[i])) {
			struct token *t = token_new(&file_token_ops, names[i]);
			if (t && slot_append(t) == CKR_OK)
				token_open(t);
			else
				token_free(t);
		}
		free(names[i]);
	}
	free(names);
	if (empty && slot_push(empty) != CKR_OK) {
		/* Out of memory: the empty slot's id stays reserved. */
		token_free(empty);
	}
}

static CK_RV add_empty_slot(void)
{
	if (!config->store_dir)
		return CKR_OK;
	struct token *t = token_new(&file_token_ops, NULL);
	if (!t)
		return CKR_HOST_MEMORY;
	CK_RV rv = slot_append(t);
	if (rv != CKR_OK)
		token_free(t);
	return rv;
}

CK_RV slot_table_init(const struct config *cfg)
{
	config = cfg;
	next_slot_id = 0;
	for (size_t i = 0; i < cfg->n_tokens; i++) {
		struct token *t = token_new(cfg->tokens[i].driver, cfg->tokens[i].path);
		if (!t || slot_append(t) != CKR_OK) {
			token_free(t);
			return CKR_HOST_MEMORY;
		}
		t->policy = cfg->tokens[i].policy;
		if (token_is_device(t)) {
			/* An absent device still gets its slot; a module
			 * that does not load is a configuration error. */
			CK_RV rv = t->ops->attach(&cfg->tokens[i], &t->store);
			if (rv != CKR_OK)
				return CKR_GENERAL_ERROR;
			t->recognized = true;
			if (token_refresh_state(t) == CKR_OK)
				token_reload(t);
			/* What the application sees at C_Initialize is no event. */
			t->reported_absent = t->absent;
			t->reported_insertion = t->insertion;
			continue;
		}
		/* A named token whose file does not exist yet is created
		 * uninitialised, so C_InitToken can set it up. */
		if (access(t->path, F_OK) != 0 && errno == ENOENT) {
			CK_RV rv = t->ops->open(t->path, true, &t->store);
			if (rv != CKR_OK) {
				kt_log("cannot create token store %s: %s", t->path, kt_rv_name(rv));
				return CKR_GENERAL_ERROR;
			}
			t->recognized = true;
			token_refresh_state(t);
		} else {
			token_open(t);
		}
	}
	scan_store();
	return add_empty_slot();
}

void slot_table_free(void)
{
	for (size_t i = 0; i < n_slots; i++)
		token_free(slots[i]);
	free(slots);
	slots = NULL;
	n_slots = 0;
	config = NULL;
}

/* A forked child keeps its parent's state referenced here instead of
 * freeing it, so leak checkers do not report it as the child's. */
static struct token **volatile abandoned;

void slot_table_abandon(void)
{
	/* The parent's SQLite handles must not be used here (SQLite forbids
	 * carrying a connection across fork) nor closed (their locks and WAL
	 * state are the parent's), so they are simply let go. */
	/* Kept referenced, not freed: a leak checker should not take the
	 * parent's state for this child's leak. */
	pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
	table_lock = fresh;
	pkcs11_token_abandon();
	abandoned = slots;
	slots = NULL;
	n_slots = 0;
	config = NULL;
}

void slot_table_rescan(void)
{
	pthread_mutex_lock(&table_lock);
	scan_store();
	pthread_mutex_unlock(&table_lock);
}

size_t slot_count(void)
{
	pthread_mutex_lock(&table_lock);
	size_t n = n_slots;
	pthread_mutex_unlock(&table_lock);
	return n;
}

struct token *slot_at(size_t i)
{
	pthread_mutex_lock(&table_lock);
	struct token *t = i < n_slots ? slots[i] : NULL;
	pthread_mutex_unlock(&table_lock);
	return t;
}

struct token *slot_get(CK_SLOT_ID id)
{
	struct token *t = NULL;
	pthread_mutex_lock(&table_lock);
	for (size_t i = 0; i < n_slots; i++) {
		if (slots[i]->slot_id == id) {
			t = slots[i];
			break;
		}
	}
	pthread_mutex_unlock(&table_lock);
	return t;
}

const struct config *slot_config(void)
{
	return config;
}

void token_lock(struct token *t)
{
	pthread_mutex_lock(&t->lock);
}

bool token_trylock(struct token *t)
{
	return pthread_mutex_trylock(&t->lock) == 0;
}

void token_unlock(struct token *t)
{
	pthread_mutex_unlock(&t->lock);
}

/* The device this token's objects, login and sessions came from is gone
 * (pulled out, or pulled and put back): so are they. */
static void device_gone(struct token *t)
{
	if (t->key)
		t->ops->key_free(t->key);
	t->key = NULL;
	t->login = USER_NONE;
	__atomic_add_fetch(&t->login_epoch, 1, __ATOMIC_SEQ_CST);
	__atomic_add_fetch(&t->insertion, 1, __ATOMIC_SEQ_CST);
	objects_drop(t, true, false);
	objects_drop(t, false, false);
	/* Removing a token closes its sessions (PKCS#11): they no longer
	 * count, and each answers CKR_SESSION_HANDLE_INVALID from its next
	 * call on (pkcs11.c begin()). */
	t->sessions = t->rw_sessions = 0;
}

/* state() of a device: notice it going and coming back. */
static CK_RV device_refresh_state(struct token *t)
{
	struct token_state st;
	CK_RV rv = t->ops->state(t->store, &st);
	if (rv == CKR_TOKEN_NOT_PRESENT) {
		if (!t->absent) {
			/* Removed, or (never seen yet) just not there. */
			if (t->generation)
				kt_log("%s: device removed", t->path);
			device_gone(t);
			t->absent = true;
		}
		return rv;
	}
	if (rv != CKR_OK)
		return rv;
	bool back = t->absent || (t->generation && st.generation != t->generation);
	t->state = st;
	t->generation = st.generation;
	if (back) {
		kt_log("%s: device present again", t->path);
		if (!t->absent)
			device_gone(t);
		t->absent = false;
		token_reload(t);
	}
	return CKR_OK;
}

CK_RV token_refresh_state(struct token *t)
{
	if (!t->store) {
		memset(&t->state, 0, sizeof(t->state));
		return CKR_OK;
	}
	if (token_is_device(t))
		return device_refresh_state(t);
	return t->ops->state(t->store, &t->state);
}

bool token_present(const struct token *t)
{
	if (token_is_device(t))
		return !__atomic_load_n(&t->absent, __ATOMIC_ACQUIRE);
	return t->store != NULL || !t->recognized;
}

CK_RV token_sync(struct token *t)
{
	if (!t->store)
		return t->recognized || !t->path ? CKR_OK : CKR_TOKEN_NOT_RECOGNIZED;
	if (token_is_device(t)) {
		if (t->ops->changed(t->store)) {
			unsigned long before = t->insertion;
			CK_RV rv = token_refresh_state(t);
			/* Whatever the caller had from before is gone. */
			if (rv == CKR_TOKEN_NOT_PRESENT || t->insertion != before)
				return CKR_DEVICE_REMOVED;
			if (rv != CKR_OK)
				return rv;
		}
		return t->absent ? CKR_DEVICE_REMOVED : CKR_OK;
	}
	if (!t->ops->changed(t->store))
		return CKR_OK;
	kt_debug(KT_DBG_TOKEN, "%s changed by another process: reloading", t->path);
	CK_RV rv = token_refresh_state(t);
	if (rv == CKR_OK)
		rv = token_reload(t);
	return rv;
}

/* mkdir -p, private: the store holds sealed keys and PIN counters. */
/* An empty slot again (creation failed). */
static void forget_path(struct token *t)
{
	pthread_mutex_lock(&table_lock);
	char *path = t->path;
	t->path = NULL;
	pthread_mutex_unlock(&table_lock);
	if (path)
		unlink(path);
	free(path);
}

static CK_RV make_dirs(const char *dir)
{
	char path[PATH_MAX];
	if (snprintf(path, sizeof(path), "%s", dir) >= (int)sizeof(path))
		return CKR_DEVICE_ERROR;
	for (char *p = path + 1;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char saved = *p;
		*p = '\0';
		if (mkdir(path, 0700) != 0 && errno != EEXIST) {
			kt_log("cannot create store directory %s: %s", path, strerror(errno));
			return CKR_DEVICE_ERROR;
		}
		*p = saved;
		if (!saved)
			return CKR_OK;
	}
}

/* A new store file in the store directory, named so that sorting names
 * sorts by creation time.  The slot's path is set (under the table lock, as
 * scan_store reads it) before the file exists, so a concurrent rescan
 * never takes the new file for another token. */
static CK_RV create_store(struct token *t)
{
	unsigned char rnd[4];
	char *path = NULL;
	CK_RV rv = crypto_random(rnd, sizeof(rnd));
	if (rv != CKR_OK)
		return rv;
	rv = make_dirs(config->store_dir);
	if (rv != CKR_OK)
		return rv;
	if (asprintf(&path, "%s/%012llx-%02x%02x%02x%02x" TOKEN_SUFFIX, config->store_dir,
		     (unsigned long long)time(NULL), rnd[0], rnd[1], rnd[2], rnd[3]) < 0)
		return CKR_HOST_MEMORY;
	pthread_mutex_lock(&table_lock);
	t->path = path;
	pthread_mutex_unlock(&table_lock);
	rv = t->ops->open(path, true, &t->store);
	if (rv != CKR_OK) {
		t->store = NULL;
		forget_path(t);
		return rv;
	}
	t->recognized = true;
	return CKR_OK;
}

CK_RV token_init(struct token *t, const CK_UTF8CHAR *so_pin, CK_ULONG so_len, const char *label)
{
	CK_RV rv;
	bool created = false;

	if (!t->store && t->path)
		return CKR_TOKEN_NOT_RECOGNIZED;
	if (!t->store) {
		rv = create_store(t);
		if (rv != CKR_OK)
			return rv;
		created = true;
	}
	rv = t->ops->initialize(t->store, so_pin, so_len, label, &config->params);
	/* A device found again after its own C_InitToken has not been away. */
	t->generation = 0;
	if (rv != CKR_OK) {
		if (created) {
			/* Leave no half-made token behind: the slot is empty again. */
			t->ops->close(t->store);
			t->store = NULL;
			forget_path(t);
		}
		return rv;
	}
	objects_drop(t, false, false);
	token_refresh_state(t);
	rv = token_reload(t);
	if (created) {
		/* The old empty slot now holds a token: offer a new empty one. */
		pthread_mutex_lock(&table_lock);
		add_empty_slot();
		pthread_mutex_unlock(&table_lock);
	}
	return rv;
}

CK_RV token_check_pin(struct token *t, CK_USER_TYPE who, const CK_UTF8CHAR *pin, CK_ULONG len)
{
	CK_RV rv = t->ops->login(t->store, who, pin, len, NULL);
	token_refresh_state(t);
	return rv;
}

CK_RV token_login(struct token *t, CK_USER_TYPE who, const CK_UTF8CHAR *pin, CK_ULONG len)
{
	struct token_key *key = NULL;
	CK_RV rv = t->ops->login(t->store, who, pin, len, &key);
	token_refresh_state(t);
	if (rv != CKR_OK)
		return rv;
	t->login = who;
	t->key = key;
	rv = token_reload(t);
	if (rv != CKR_OK) {
		/* Not logged in after all: an error must leave no login behind,
		 * on a device either. */
		if (t->ops->logout)
			t->ops->logout(t->store);
		t->ops->key_free(t->key);
		t->key = NULL;
		t->login = USER_NONE;
		token_reload(t);
	}
	return rv;
}

void token_logout(struct token *t)
{
	if (t->ops->logout && t->login != USER_NONE) {
		/* Session keys die with the login (below); on the device they
		 * must go while it still lets us destroy them. */
		for (size_t b = 0; b < t->buckets; b++)
			for (struct object *o = t->by_handle[b]; o; o = o->next_handle)
				if (o->on_device && o->owner != 0 && o->is_private)
					t->ops->object_delete(t->store, o->handle);
		t->ops->logout(t->store);
	}
	if (t->key)
		t->ops->key_free(t->key);
	t->key = NULL;
	t->login = USER_NONE;
	__atomic_add_fetch(&t->login_epoch, 1, __ATOMIC_SEQ_CST);
	/* Handles to private session objects die with the login (PKCS#11
	 * 3.0, C_Logout); token objects are reloaded without secrets. */
	objects_drop(t, false, true);
	token_reload(t);
}

CK_RV token_init_pin(struct token *t, const CK_UTF8CHAR *pin, CK_ULONG len)
{
	CK_RV rv = t->ops->init_pin(t->store, t->key, pin, len);
	token_refresh_state(t);
	return rv;
}

CK_RV token_set_pin(struct token *t, CK_USER_TYPE who, const CK_UTF8CHAR *old_pin, CK_ULONG old_len,
		    const CK_UTF8CHAR *new_pin, CK_ULONG new_len)
{
	CK_RV rv = t->ops->set_pin(t->store, who, old_pin, old_len, new_pin, new_len);
	token_refresh_state(t);
	return rv;
}

/* --- objects ------------------------------------------------------------ */

bool token_object_visible(const struct token *t, const struct object *o)
{
	return !o->is_private || t->login == CKU_USER;
}

struct object *token_object_get(struct token *t, CK_OBJECT_HANDLE h)
{
	if (!t->buckets)
		return NULL;
	for (struct object *o = t->by_handle[handle_bucket(t, h)]; o; o = o->next_handle)
		if (o->handle == h)
			return token_object_visible(t, o) ? o : NULL;
	return NULL;
}

CK_RV token_object_add(struct token *t, CK_SESSION_HANDLE owner, struct attrs *attrs,
		       CK_OBJECT_HANDLE *handle)
{
	CK_RV rv;
	CK_OBJECT_HANDLE h;
	CK_OBJECT_CLASS cls = object_class(attrs);
	/* On a device every private and secret key lives there, session
	 * keys too: the module never holds a device token's key. */
	bool device_key = token_is_device(t) && (cls == CKO_PRIVATE_KEY || cls == CKO_SECRET_KEY);
	if (object_is_token(attrs) || device_key) {
		uint64_t id;
		rv = t->ops->object_add(t->store, t->key, attrs, &id);
		if (rv != CKR_OK) {
			attrs_free(attrs);
			return rv;
		}
		h = (CK_OBJECT_HANDLE)id;
		if (object_is_token(attrs))
			owner = 0;
		if (h == 0 || h >= SESSION_HANDLE_BASE) {
			/* Out of the range the module can show as a handle. */
			t->ops->object_delete(t->store, id);
			attrs_free(attrs);
			return CKR_DEVICE_ERROR;
		}
		if (t->ops->object_read) {
			/* The device's defaults are what the object has. */
			struct attrs *now = NULL;
			if (t->ops->object_read(t->store, id, &now) == CKR_OK) {
				device_complete(t, now);
				attrs_free(attrs);
				attrs = now;
			} else {
				/* Never keep an imported key's material here. */
				for (size_t i = attrs_count(attrs); i-- > 0;)
					if (token_attr_is_secret(cls, attrs_at(attrs, i)->type))
						attrs_remove(attrs, attrs_at(attrs, i)->type);
			}
		}
	} else {
		if (t->next_session_handle == 0)
			t->next_session_handle = SESSION_HANDLE_BASE;
		h = t->next_session_handle++;
	}
	rv = object_insert(t, h, owner, attrs, true);
	if (rv == CKR_OK)
		*handle = h;
	return rv;
}

/* A device cannot keep a key's signing policy, so the configuration gives
 * it by CKA_ID and label: a change of those (or a copy) that would turn a
 * confirm key automatic is refused, or renaming would skip the signer. */
static CK_RV device_policy_kept(struct token *t, const struct object *o, const struct attrs *now)
{
	CK_ULONG before = CK_KT_POLICY_CONFIRM;
	if (o->cls != CKO_PRIVATE_KEY)
		return CKR_OK;
	attrs_get_ulong(o->attrs, CKA_KT_SIGN_POLICY, &before);
	enum sign_policy after =
		config_key_policy(config, t->policy, attrs_get(now, CKA_ID), attrs_get(now, CKA_LABEL));
	if (before == CK_KT_POLICY_CONFIRM && after == POLICY_AUTOMATIC) {
		kt_log("%s: a new CKA_ID or label would make a confirm key sign automatically: refused", t->path);
		return CKR_ATTRIBUTE_READ_ONLY;
	}
	return CKR_OK;
}

/* Has the attribute the same value (or absence) in both sets? */
static bool same_value(const struct attrs *a, const struct attrs *b, CK_ATTRIBUTE_TYPE type)
{
	const CK_ATTRIBUTE *x = attrs_get(a, type);
	return x ? attrs_match(b, x) : !attrs_has(b, type);
}

/* Tell a device what changed between the object and its new attributes. */
static CK_RV device_set(struct token *t, struct object *o, const struct attrs *attrs)
{
	struct attrs *changes = attrs_new();
	CK_RV rv = changes ? CKR_OK : CKR_HOST_MEMORY;
	bool marked = false;
	for (size_t i = 0; i < attrs_count(attrs) && rv == CKR_OK; i++) {
		const CK_ATTRIBUTE *at = attrs_at(attrs, i);
		if (attrs_match(o->attrs, at))
			continue;
		if (at->type == CKA_KT_COMPROMISED || at->type == CKA_KT_COMPROMISE_REASON)
			marked = true;
		else
			rv = attrs_set(changes, at->type, at->pValue, at->ulValueLen);
	}
	/* The mark first, on disk and in memory: a device that then refuses
	 * the rest leaves the key marked, the safe side. */
	/* A marked object that gets another CKA_ID or label keeps its mark
	 * under those too (an EC private key is found by them alone). */
	bool renamed = !same_value(o->attrs, attrs, CKA_ID) || !same_value(o->attrs, attrs, CKA_LABEL);
	if (rv == CKR_OK && attrs_bool(attrs, CKA_KT_COMPROMISED, false) && (marked || renamed)) {
		if (marks_save(t, attrs, attrs_get(attrs, CKA_KT_COMPROMISE_REASON)) != CKR_OK)
			/* Unmarking is no option: the key stays refused in
			 * this process, and the log says the mark did not
			 * persist. */
			kt_log("%s: the compromise mark holds until this process ends only", t->path);
		attrs_set_bool(o->attrs, CKA_KT_COMPROMISED, true);
	}
	/* A reason on an unmarked object is kept in memory only: it means
	 * something once a mark comes, and the mark saves it then. */
	if (rv == CKR_OK && attrs_count(changes))
		rv = t->ops->object_set(t->store, o->handle, changes);
	attrs_free(changes);
	return rv;
}

CK_RV token_object_replace(struct token *t, struct object *o, struct attrs *attrs)
{
	if (o->owner == 0 || o->on_device) {
		CK_RV rv = o->on_device ? device_policy_kept(t, o, attrs) : CKR_OK;
		if (rv == CKR_OK)
			rv = t->ops->object_set ? device_set(t, o, attrs)
						: t->ops->object_update(t->store, t->key, o->handle, attrs);
		if (rv != CKR_OK) {
			attrs_free(attrs);
			return rv;
		}
		struct attrs *now = NULL;
		if (t->ops->object_read && t->ops->object_read(t->store, o->handle, &now) == CKR_OK) {
			device_complete(t, now);
			/* The public key the object had (a private key's comes
			 * from its pair), and the marks that go by it. */
			const CK_ATTRIBUTE *spki = attrs_get(o->attrs, CKA_PUBLIC_KEY_INFO);
			if (spki && !attrs_has(now, CKA_PUBLIC_KEY_INFO))
				attrs_set(now, spki->type, spki->pValue, spki->ulValueLen);
			marks_apply(t, now);
			/* koltamga's marks as just set, kept even where they
			 * could not be written down. */
			const CK_ATTRIBUTE *m = attrs_get(attrs, CKA_KT_COMPROMISED);
			const CK_ATTRIBUTE *why = attrs_get(attrs, CKA_KT_COMPROMISE_REASON);
			if (m)
				attrs_set(now, m->type, m->pValue, m->ulValueLen);
			if (why)
				attrs_set(now, why->type, why->pValue, why->ulValueLen);
			attrs_free(attrs);
			attrs = now;
		}
	}
	index_unlink(t, o);
	attrs_free(o->attrs);
	o->attrs = attrs;
	o->is_private = object_is_private(attrs);
	EVP_PKEY_free(o->pkey);
	o->pkey = NULL;
	index_link(t, o);
	return CKR_OK;
}

CK_RV token_object_destroy(struct token *t, struct object *o)
{
	if (o->owner == 0 || o->on_device) {
		CK_RV rv = t->ops->object_delete(t->store, o->handle);
		if (rv != CKR_OK)
			return rv;
	}
	object_remove(t, o);
	return CKR_OK;
}

void token_drop_session_objects(struct token *t, CK_SESSION_HANDLE owner)
{
	for (size_t b = 0; b < t->buckets; b++) {
		struct object *o = t->by_handle[b];
		while (o) {
			struct object *next = o->next_handle;
			if (o->owner == owner && owner != 0) {
				if (o->on_device)
					t->ops->object_delete(t->store, o->handle);
				object_remove(t, o);
			}
			o = next;
		}
	}
}

static bool object_matches(const struct token *t, const struct object *o, const CK_ATTRIBUTE *tmpl,
			   CK_ULONG count)
{
	if (!token_object_visible(t, o))
		return false;
	for (CK_ULONG i = 0; i < count; i++)
		if (object_value_hidden(o->attrs, tmpl[i].type) || !attrs_match(o->attrs, &tmpl[i]))
			return false;
	return true;
}

CK_RV token_find(struct token *t, const CK_ATTRIBUTE *tmpl, CK_ULONG count, CK_OBJECT_HANDLE **out,
		 size_t *n_out)
{
	size_t n = 0, cap = 16;
	CK_OBJECT_HANDLE *h = malloc(cap * sizeof(*h));
	if (!h)
		return CKR_HOST_MEMORY;
	for (CK_ULONG i = 0; i < count; i++) {
		if (tmpl[i].ulValueLen && !tmpl[i].pValue) {
			free(h);
			return CKR_ARGUMENTS_BAD;
		}
		/* No attribute is this long: a template reused after a failed
		 * C_GetAttributeValue carries CK_UNAVAILABLE_INFORMATION here,
		 * and we must not read that much of the caller's memory. */
		if (tmpl[i].ulValueLen > ATTR_MAX_LEN) {
			free(h);
			return CKR_ATTRIBUTE_VALUE_INVALID;
		}
	}

	/* A label or an id narrows the search to one index chain. */
	struct object **chain = NULL;
	int which = 0;
	for (CK_ULONG i = 0; i < count && !chain && t->buckets; i++) {
		if (tmpl[i].type == CKA_LABEL || tmpl[i].type == CKA_ID) {
			uint64_t hv = hash_bytes(tmpl[i].pValue, tmpl[i].ulValueLen);
			which = tmpl[i].type == CKA_LABEL ? 1 : 2;
			chain = which == 1 ? &t->by_label[hv & (t->buckets - 1)]
					   : &t->by_id[hv & (t->buckets - 1)];
		}
	}
	for (size_t b = 0; b < t->buckets; b++) {
		struct object *o = chain ? *chain : t->by_handle[b];
		while (o) {
			if (object_matches(t, o, tmpl, count)) {
				if (n == cap) {
					CK_OBJECT_HANDLE *nh = realloc(h, cap * 2 * sizeof(*nh));
					if (!nh) {
						free(h);
						return CKR_HOST_MEMORY;
					}
					h = nh;
					cap *= 2;
				}
				h[n++] = o->handle;
			}
			o = which == 1 ? o->next_label : which == 2 ? o->next_id : o->next_handle;
		}
		if (chain)
			break;
	}
	*out = h;
	*n_out = n;
	return CKR_OK;
}

CK_RV token_object_pkey(struct token *t, struct object *o, EVP_PKEY **out)
{
	if (!o->pkey && o->on_device && o->cls == CKO_PRIVATE_KEY) {
		/* The device keeps the private half; verifying with a private
		 * key object needs only the public one. */
		const CK_ATTRIBUTE *spki = attrs_get(o->attrs, CKA_PUBLIC_KEY_INFO);
		const unsigned char *p = spki ? spki->pValue : NULL;
		o->pkey = p ? d2i_PUBKEY(NULL, &p, (long)spki->ulValueLen) : NULL;
		if (!o->pkey)
			return CKR_KEY_TYPE_INCONSISTENT;
	}
	if (!o->pkey) {
		if (!o->complete)
			return CKR_USER_NOT_LOGGED_IN;
		CK_RV rv = crypto_load_pkey(o->cls, o->attrs, &o->pkey);
		if (rv != CKR_OK)
			return rv;
	}
	if (!EVP_PKEY_up_ref(o->pkey))
		return CKR_HOST_MEMORY;
	*out = o->pkey;
	return CKR_OK;
}

void token_key_certificates(struct token *t, const struct object *key, token_cert_cb cb, void *ctx)
{
	const CK_ATTRIBUTE *id = attrs_get(key->attrs, CKA_ID);
	const CK_ATTRIBUTE *spki = attrs_get(key->attrs, CKA_PUBLIC_KEY_INFO);
	if (!id || id->ulValueLen == 0 || !t->buckets)
		return;
	uint64_t hv = hash_bytes(id->pValue, id->ulValueLen);
	for (struct object *o = t->by_id[hv & (t->buckets - 1)]; o; o = o->next_id) {
		if (o->cls != CKO_CERTIFICATE || !token_object_visible(t, o) || !attrs_match(o->attrs, id))
			continue;
		const CK_ATTRIBUTE *cert_spki = attrs_get(o->attrs, CKA_PUBLIC_KEY_INFO);
		bool matches = spki && cert_spki && attrs_match(o->attrs, spki);
		cb(ctx, o, matches);
	}
}

/* --- device keys ----------------------------------------------------------- */

struct remote_ctx {
	const struct token_ops *ops;
	struct token_op *op;
};

static CK_RV remote_update(void *ctx, const CK_BYTE *data, CK_ULONG len)
{
	struct remote_ctx *r = ctx;
	return r->ops->op_update(r->op, data, len);
}

static CK_RV remote_final(void *ctx, const CK_BYTE *data, CK_ULONG len, bool oneshot, CK_BYTE *out,
			  CK_ULONG *out_len)
{
	struct remote_ctx *r = ctx;
	return r->ops->op_final(r->op, data, len, oneshot, out, out_len);
}

static CK_RV remote_login(void *ctx, const CK_UTF8CHAR *pin, CK_ULONG len)
{
	struct remote_ctx *r = ctx;
	return r->ops->op_login(r->op, pin, len);
}

static void remote_free(void *ctx)
{
	struct remote_ctx *r = ctx;
	r->ops->op_free(r->op);
	free(r);
}

CK_RV token_sign_remote(struct token *t, CK_OBJECT_HANDLE key, const CK_MECHANISM *m, const struct mech_info *mi,
			struct crypto_remote *out, bool *host_hash)
{
	if (!token_is_device(t))
		return CKR_FUNCTION_NOT_SUPPORTED;
	struct remote_ctx *r = calloc(1, sizeof(*r));
	if (!r)
		return CKR_HOST_MEMORY;
	r->ops = t->ops;
	/* Smart cards often sign hashes only (their modules hash on the
	 * host): then so do we, with the hash the audit needs anyway. */
	CK_MECHANISM dm = *m;
	*host_hash = false;
	CK_MECHANISM_TYPE raw = crypto_sign_hash_counterpart(mi);
	if (!(t->ops->mechanism_flags(t->store, m->mechanism) & CKF_SIGN) && raw != CKM_VENDOR_DEFINED &&
	    (t->ops->mechanism_flags(t->store, raw) & CKF_SIGN)) {
		dm.mechanism = raw;
		if (raw != CKM_RSA_PKCS_PSS) {
			dm.pParameter = NULL;
			dm.ulParameterLen = 0;
		}
		*host_hash = true;
	}
	CK_RV rv = t->ops->sign_init(t->store, key, &dm, &r->op);
	if (rv != CKR_OK) {
		free(r);
		return rv;
	}
	*out = (struct crypto_remote){ remote_update, remote_final, remote_login, remote_free, r };
	return CKR_OK;
}

CK_RV token_generate_remote(struct token *t, CK_SESSION_HANDLE owner, const CK_MECHANISM *m, struct attrs *pub,
			    struct attrs *priv, CK_OBJECT_HANDLE *pub_handle, CK_OBJECT_HANDLE *priv_handle)
{
	uint64_t pub_id = 0, priv_id = 0;
	struct attrs *pub_now = NULL, *priv_now = NULL;
	CK_RV rv = t->ops->generate(t->store, m, pub, priv, &pub_id, &pub_now, &priv_id, &priv_now);
	attrs_free(pub);
	attrs_free(priv);
	if (rv != CKR_OK)
		return rv;
	if (priv_id == 0 || priv_id >= SESSION_HANDLE_BASE ||
	    (pub_now && (pub_id == 0 || pub_id >= SESSION_HANDLE_BASE))) {
		attrs_free(pub_now);
		attrs_free(priv_now);
		return CKR_DEVICE_ERROR;
	}
	device_complete(t, priv_now);
	rv = object_insert(t, (CK_OBJECT_HANDLE)priv_id, object_is_token(priv_now) ? 0 : owner, priv_now, true);
	if (rv == CKR_OK && pub_now && !object_is_token(pub_now)) {
		/* A session public key: public data, kept by the module like
		 * any session object, so it goes with the session. */
		t->ops->object_delete(t->store, pub_id);
		if (t->next_session_handle == 0)
			t->next_session_handle = SESSION_HANDLE_BASE;
		pub_id = t->next_session_handle++;
		rv = object_insert(t, (CK_OBJECT_HANDLE)pub_id, owner, pub_now, true);
		pub_now = NULL;
	} else if (rv == CKR_OK && pub_now) {
		rv = object_insert(t, (CK_OBJECT_HANDLE)pub_id, 0, pub_now, true);
		pub_now = NULL;
	}
	attrs_free(pub_now);
	if (rv != CKR_OK)
		return rv;
	if (pub_handle)
		*pub_handle = (CK_OBJECT_HANDLE)pub_id;
	*priv_handle = (CK_OBJECT_HANDLE)priv_id;
	device_public_key_info(t);
	return CKR_OK;
}

/* The new object a device made (copy, unwrap): read back and shown; a
 * copy has its source's public key, and so its compromise mark. */
static CK_RV device_adopt(struct token *t, CK_SESSION_HANDLE owner, uint64_t id, const struct attrs *like,
			  CK_OBJECT_HANDLE *handle)
{
	struct attrs *now = NULL;
	if (id == 0 || id >= SESSION_HANDLE_BASE) {
		t->ops->object_delete(t->store, id);
		return CKR_DEVICE_ERROR;
	}
	CK_RV rv = t->ops->object_read(t->store, id, &now);
	if (rv != CKR_OK) {
		t->ops->object_delete(t->store, id);
		return rv;
	}
	device_complete(t, now);
	const CK_ATTRIBUTE *spki = like ? attrs_get(like, CKA_PUBLIC_KEY_INFO) : NULL;
	if (spki && !attrs_has(now, CKA_PUBLIC_KEY_INFO))
		attrs_set(now, spki->type, spki->pValue, spki->ulValueLen);
	marks_apply(t, now);
	rv = object_insert(t, (CK_OBJECT_HANDLE)id, object_is_token(now) ? 0 : owner, now, true);
	if (rv == CKR_OK)
		*handle = (CK_OBJECT_HANDLE)id;
	return rv;
}

CK_RV token_object_copy(struct token *t, CK_SESSION_HANDLE owner, const struct object *o, struct attrs *copy,
			CK_OBJECT_HANDLE *handle)
{
	if (!o->on_device)
		return token_object_add(t, owner, copy, handle);
	/* The device copies what it holds (key material included, which
	 * the module never saw); only the changes go with it. */
	CK_RV rv = device_policy_kept(t, o, copy);
	if (rv != CKR_OK) {
		attrs_free(copy);
		return rv;
	}
	struct attrs *changes = attrs_new();
	rv = changes ? CKR_OK : CKR_HOST_MEMORY;
	for (size_t i = 0; i < attrs_count(copy) && rv == CKR_OK; i++) {
		const CK_ATTRIBUTE *at = attrs_at(copy, i);
		if (!attrs_match(o->attrs, at))
			rv = attrs_set(changes, at->type, at->pValue, at->ulValueLen);
	}
	attrs_free(copy);
	uint64_t id = 0;
	if (rv == CKR_OK)
		rv = t->ops->object_copy(t->store, o->handle, changes, &id);
	attrs_free(changes);
	if (rv == CKR_OK)
		rv = device_adopt(t, owner, id, o->attrs, handle);
	/* A copy of a marked key is that key: marked under its own names
	 * too (device_adopt found it marked by the public key). */
	struct object *c = rv == CKR_OK ? token_object_get(t, *handle) : NULL;
	if (c && attrs_bool(o->attrs, CKA_KT_COMPROMISED, false)) {
		attrs_set_bool(c->attrs, CKA_KT_COMPROMISED, true);
		marks_save(t, c->attrs, attrs_get(o->attrs, CKA_KT_COMPROMISE_REASON));
	}
	return rv;
}

CK_RV token_object_view(struct token *t, const struct object *o, const CK_ATTRIBUTE *tmpl, CK_ULONG count,
			struct attrs **view)
{
	*view = NULL;
	if (!o->on_device || !t->ops->object_secret)
		return CKR_OK;
	for (CK_ULONG i = 0; i < count; i++) {
		CK_ATTRIBUTE_TYPE type = tmpl[i].type;
		if (!token_attr_is_secret(o->cls, type) || attrs_has(o->attrs, type) ||
		    object_value_hidden(o->attrs, type))
			continue;
		if (!*view && !(*view = attrs_dup(o->attrs)))
			return CKR_HOST_MEMORY;
		CK_RV rv = t->ops->object_secret(t->store, o->handle, type, *view);
		if (rv != CKR_OK && rv != CKR_ATTRIBUTE_SENSITIVE && rv != CKR_ATTRIBUTE_TYPE_INVALID) {
			attrs_free(*view);
			*view = NULL;
			return rv;
		}
	}
	return CKR_OK;
}

CK_RV token_wrap_remote(struct token *t, const CK_MECHANISM *m, const struct object *wk, const struct object *k,
			CK_BYTE *out, CK_ULONG *out_len)
{
	if (!wk->on_device || !k->on_device)
		return CKR_KEY_NOT_WRAPPABLE;
	return t->ops->wrap(t->store, m, wk->handle, k->handle, out, out_len);
}

CK_RV token_unwrap_remote(struct token *t, CK_SESSION_HANDLE owner, const CK_MECHANISM *m, const struct object *uk,
			  const CK_BYTE *in, CK_ULONG in_len, struct attrs *tmpl, CK_OBJECT_HANDLE *handle)
{
	uint64_t id = 0;
	CK_RV rv = t->ops->unwrap(t->store, m, uk->handle, in, in_len, tmpl, &id);
	attrs_free(tmpl);
	return rv == CKR_OK ? device_adopt(t, owner, id, NULL, handle) : rv;
}

CK_FLAGS token_mechanism_flags(struct token *t, const struct mech_info *mi)
{
	if (!token_is_device(t))
		return mi->flags;
	/* Verifying and hashing are the module's; what needs a key's secret
	 * half is the device's to do, so only what it can do is offered. */
	CK_FLAGS dev = t->ops->mechanism_flags(t->store, mi->type);
	CK_FLAGS own = CKF_VERIFY | CKF_DIGEST;
	CK_MECHANISM_TYPE raw = crypto_sign_hash_counterpart(mi);
	if (raw != CKM_VENDOR_DEFINED && (t->ops->mechanism_flags(t->store, raw) & CKF_SIGN))
		dev |= CKF_SIGN;
	return mi->flags & (own | dev);
}
