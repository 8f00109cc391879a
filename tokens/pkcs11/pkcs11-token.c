/*
 * The pkcs11 token driver: a token on a device (smart card, USB token, HSM)
 * reached through the device's own PKCS#11 module.  koltamga's rules sit in
 * front of it; the device keeps its keys and does every private-key
 * operation.  Nothing here asks the device to reveal or weaken a key: the
 * attributes read are the public ones, and the only writes are the
 * application's own object changes, which the module has already checked.
 *
 * One store per configured [token].  Each device module is loaded and
 * initialised once per process however many tokens use it.  A store holds
 * an "anchor" session on the device while the device is there, because a
 * device forgets its login when its application's last session closes;
 * operations take further sessions from a small pool, so several signatures
 * run on the device at once.
 *
 * Removal: a call that answers CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT or
 * the like marks the device lost; the next state() looks for it again (by
 * label, serial or URI, not by the device module's slot id, which may
 * change).  Found again, it has a new generation: the module then treats
 * everything from before (login, handles, sessions) as gone, as PKCS#11
 * says a removed token's sessions are.
 *
 * Locking: the module serialises calls on a store (its token lock), but
 * sign operations run outside that lock, concurrently; `lock` here guards
 * the session pool and the attachment.  It is a leaf lock, held across a
 * call into the device only by what asks whether the device is there
 * (attach, detach, state, the idle probe, C_InitToken), never by a
 * signature: a signer only takes and returns a pooled session under it.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attrs.h"
#include "config.h"
#include "log.h"
#include "token.h"

/* How often, at most, an idle entry point asks the device whether it is
 * still there (a reader round trip on real hardware). */
#define PROBE_INTERVAL_NS 1000000000LL
/* How often, at most, a device that is not there is looked for. */
#define ABSENT_RETRY_NS 200000000LL
/* Idle device sessions kept for the next operations. */
#define POOL_MAX 8
/* More objects than this on one device is not a token but an attack on
 * our memory. */
#define OBJECTS_MAX 100000

/* --- device modules, shared by their tokens ------------------------------ */

struct p11mod {
	char *path;
	void *dl;
	CK_FUNCTION_LIST_PTR f;
	unsigned refs;
	bool finalize; /* we initialised it, so we finalise it */
	struct p11mod *next;
};

static pthread_mutex_t mods_lock = PTHREAD_MUTEX_INITIALIZER;
static struct p11mod *mods;
/* In a forked child: the modules the parent had initialised, whose state
 * (sessions, a reader context) is the parent's and must be started afresh
 * here (kept, not freed: the parent's). */
static char **forked_paths;
static size_t n_forked_paths;

static bool initialised_by_parent(const char *path)
{
	for (size_t i = 0; i < n_forked_paths; i++)
		if (strcmp(forked_paths[i], path) == 0)
			return true;
	return false;
}

/* Where a function's code lives: a module that is koltamga itself would
 * re-enter our C_Initialize and wait on it for ever. */
static const void *library_of(const void *fn)
{
	Dl_info info;
	return dladdr(fn, &info) ? info.dli_fbase : NULL;
}

static CK_RV mod_get(const char *path, struct p11mod **out)
{
	CK_RV rv = CKR_OK;
	pthread_mutex_lock(&mods_lock);
	struct p11mod *m;
	for (m = mods; m; m = m->next)
		if (strcmp(m->path, path) == 0)
			break;
	if (m) {
		m->refs++;
		goto out;
	}
	rv = CKR_HOST_MEMORY;
	m = calloc(1, sizeof(*m));
	if (!m || !(m->path = strdup(path)))
		goto fail;
	rv = CKR_GENERAL_ERROR;
	/* RTLD_LOCAL: the device module's symbols must not satisfy anyone
	 * else's, nor ours theirs. */
	m->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!m->dl) {
		kt_log("pkcs11 token: cannot load %s: %s", path, dlerror());
		goto fail;
	}
	CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(m->dl, "C_GetFunctionList");
	if (get && library_of((const void *)get) == library_of((const void *)mod_get)) {
		kt_log("pkcs11 token: %s is koltamga itself", path);
		goto fail;
	}
	if (!get || get(&m->f) != CKR_OK || !m->f || m->f->version.major < 2) {
		kt_log("pkcs11 token: %s is not a PKCS#11 module", path);
		goto fail;
	}
	/* The device module gets its own threads' locks from the OS, like
	 * koltamga itself. */
	CK_C_INITIALIZE_ARGS args = { .flags = CKF_OS_LOCKING_OK };
	rv = m->f->C_Initialize(&args);
	if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED && initialised_by_parent(path)) {
		/* A forked child of ours: what the module has is the parent's
		 * (as p11-kit does, start it again). */
		m->f->C_Finalize(NULL);
		rv = m->f->C_Initialize(&args);
	}
	if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		/* The application (or a forked parent) initialised it: use it,
		 * leave finalising to them. */
		rv = CKR_OK;
	} else if (rv == CKR_OK) {
		m->finalize = true;
	} else {
		kt_log("pkcs11 token: C_Initialize of %s failed: %s", path, kt_rv_name(rv));
		rv = CKR_GENERAL_ERROR;
		goto fail;
	}
	m->refs = 1;
	m->next = mods;
	mods = m;
	goto out;
fail:
	if (m) {
		if (m->dl)
			dlclose(m->dl);
		free(m->path);
		free(m);
	}
	m = NULL;
out:
	pthread_mutex_unlock(&mods_lock);
	*out = m;
	return rv;
}

static void mod_put(struct p11mod *m)
{
	if (!m)
		return;
	pthread_mutex_lock(&mods_lock);
	if (--m->refs == 0) {
		for (struct p11mod **pp = &mods; *pp; pp = &(*pp)->next) {
			if (*pp == m) {
				*pp = m->next;
				break;
			}
		}
		if (m->finalize)
			m->f->C_Finalize(NULL);
		/* Finalised, but not unloaded: device modules leave threads,
		 * atexit handlers and C++ destructors behind (SoftHSM2, card
		 * middleware), which would run in unmapped code at exit.  A
		 * later C_Initialize gets the same mapping back from dlopen. */
		free(m->path);
		free(m);
	}
	pthread_mutex_unlock(&mods_lock);
}

void pkcs11_token_abandon(void)
{
	/* The parent's entries (its sessions, its initialisation) are not
	 * this process's: forget them, unfreed, as slot.c does its tokens. */
	pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
	mods_lock = fresh;
	for (struct p11mod *m = mods; m; m = m->next) {
		if (!m->finalize)
			continue;
		char **p = realloc(forked_paths, (n_forked_paths + 1) * sizeof(*p));
		if (!p)
			break;
		forked_paths = p;
		forked_paths[n_forked_paths++] = m->path;
	}
	mods = NULL;
}

/* --- which token: label, serial, RFC 7512 URI ----------------------------- */

struct selector {
	char token[33], serial[17], manufacturer[33], model[17];
	bool has_token, has_serial, has_manufacturer, has_model;
};

/* Percent-decode [p, end) into out (room for max bytes + NUL). */
static bool pct_decode(const char *p, const char *end, char *out, size_t max)
{
	size_t n = 0;
	while (p < end) {
		int c = (unsigned char)*p++;
		if (c == '%') {
			int hi = end - p >= 2 ? kt_hex_digit(p[0]) : -1, lo = end - p >= 2 ? kt_hex_digit(p[1]) : -1;
			if (hi < 0 || lo < 0)
				return false;
			c = hi << 4 | lo;
			p += 2;
		}
		if (n == max || c == 0)
			return false;
		out[n++] = (char)c;
	}
	out[n] = '\0';
	return true;
}

static bool set_field(char *field, size_t size, bool *has, const char *value)
{
	if (strlen(value) >= size)
		return false;
	strcpy(field, value);
	*has = true;
	return true;
}

/* The path attributes of a pkcs11: URI that name a token; others (object,
 * type, id, slot ids, query attributes) do not choose a token and are
 * ignored; malformed encodings are refused. */
static bool parse_uri(const char *uri, struct selector *sel)
{
	const char *p = uri + strlen("pkcs11:");
	const char *end = p + strcspn(p, "?");
	while (p < end) {
		const char *seg_end = memchr(p, ';', (size_t)(end - p));
		if (!seg_end)
			seg_end = end;
		const char *eq = memchr(p, '=', (size_t)(seg_end - p));
		if (eq) {
			size_t klen = (size_t)(eq - p);
			char *field = NULL;
			size_t size = 0;
			bool *has = NULL;
			if (klen == 5 && memcmp(p, "token", 5) == 0) {
				field = sel->token, size = sizeof(sel->token), has = &sel->has_token;
			} else if (klen == 6 && memcmp(p, "serial", 6) == 0) {
				field = sel->serial, size = sizeof(sel->serial), has = &sel->has_serial;
			} else if (klen == 12 && memcmp(p, "manufacturer", 12) == 0) {
				field = sel->manufacturer, size = sizeof(sel->manufacturer),
				has = &sel->has_manufacturer;
			} else if (klen == 5 && memcmp(p, "model", 5) == 0) {
				field = sel->model, size = sizeof(sel->model), has = &sel->has_model;
			}
			if (field) {
				if (!pct_decode(eq + 1, seg_end, field, size - 1))
					return false;
				*has = true;
			}
		}
		p = seg_end < end ? seg_end + 1 : end;
	}
	return true;
}

/* A blank-padded PKCS#11 text field as a C string. */
static void unpad(char *out, const CK_UTF8CHAR *field, size_t len)
{
	while (len && (field[len - 1] == ' ' || field[len - 1] == '\0'))
		len--;
	memcpy(out, field, len);
	out[len] = '\0';
}

static bool selector_matches(const struct selector *sel, const CK_TOKEN_INFO *ti)
{
	char buf[33];
	unpad(buf, ti->label, sizeof(ti->label));
	if (sel->has_token && strcmp(buf, sel->token) != 0)
		return false;
	unpad(buf, ti->serialNumber, sizeof(ti->serialNumber));
	if (sel->has_serial && strcmp(buf, sel->serial) != 0)
		return false;
	unpad(buf, ti->manufacturerID, sizeof(ti->manufacturerID));
	if (sel->has_manufacturer && strcmp(buf, sel->manufacturer) != 0)
		return false;
	unpad(buf, ti->model, sizeof(ti->model));
	if (sel->has_model && strcmp(buf, sel->model) != 0)
		return false;
	return true;
}

/* --- the store ------------------------------------------------------------ */

struct token_store {
	struct p11mod *mod;
	CK_FUNCTION_LIST_PTR f;
	struct selector sel;
	char *name; /* for messages: the module and what selects the token */

	pthread_mutex_t lock;
	bool attached;
	bool lost;                 /* a call saw the device go: look again */
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE anchor;
	bool anchored;             /* the anchor is open (the token is initialised) */
	bool rw;                   /* the anchor is a read-write session */
	unsigned long generation;  /* attachments so far */
	unsigned long seen;        /* the generation `changed` last reported */
	long long last_probe;      /* CLOCK_MONOTONIC ns */
	long long last_attempt;    /* when an absent device was last looked for */
	CK_SESSION_HANDLE pool[POOL_MAX];
	size_t n_pool;
	CK_MECHANISM_TYPE *mechs; /* the device's mechanisms, read at attach */
	CK_FLAGS *mech_flags;     /* and what it does with each */
	size_t n_mechs;
};

struct token_op {
	struct token_store *t;
	CK_SESSION_HANDLE s;
	unsigned long generation;
	bool done;   /* ended with a signature */
	bool failed; /* the device failed it */
};

/* The token_key a device login hands the module: the device holds the
 * real state, this only says "logged in" to slot.c. */
struct token_key {
	char unused;
};

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Answers by which a device says it (or the session's link to it) is gone. */
static bool is_removal(CK_RV rv)
{
	switch (rv) {
	case CKR_DEVICE_REMOVED:
	case CKR_TOKEN_NOT_PRESENT:
	case CKR_SESSION_CLOSED:
	case CKR_SESSION_HANDLE_INVALID:
	case CKR_SLOT_ID_INVALID:
	case CKR_TOKEN_NOT_RECOGNIZED:
		return true;
	default:
		return false;
	}
}

/*
 * A device's answer as koltamga's.  The specification's codes pass through;
 * the session, slot and handle codes of the device's own handles (which the
 * application never saw) would blame the application's handles, so they
 * become what happened: the device went away.  Codes a device module should
 * not return at all become CKR_DEVICE_ERROR.
 */
static CK_RV map_rv(struct token_store *t, CK_RV rv)
{
	if (is_removal(rv)) {
		__atomic_store_n(&t->lost, true, __ATOMIC_RELEASE);
		return CKR_DEVICE_REMOVED;
	}
	switch (rv) {
	case CKR_CRYPTOKI_NOT_INITIALIZED:
	case CKR_CRYPTOKI_ALREADY_INITIALIZED:
	case CKR_ARGUMENTS_BAD:
	case CKR_OPERATION_ACTIVE:
	case CKR_OPERATION_NOT_INITIALIZED:
	case CKR_SESSION_COUNT:
	case CKR_SESSION_EXISTS:
		/* Our own use of the device went wrong, not the caller's. */
		kt_log("pkcs11 token %s: the device module answered %s", t->name, kt_rv_name(rv));
		return CKR_DEVICE_ERROR;
	case CKR_GENERAL_ERROR:
		kt_debug(KT_DBG_TOKEN, "pkcs11 token %s: the device module failed (CKR_GENERAL_ERROR)", t->name);
		return CKR_DEVICE_ERROR;
	default:
		return rv;
	}
}

/* map_rv for an operation's session: a session from an earlier
 * attachment says nothing about the device as it is now. */
static CK_RV map_op_rv(struct token_op *op, CK_RV rv)
{
	if (is_removal(rv)) {
		pthread_mutex_lock(&op->t->lock);
		if (op->generation == op->t->generation)
			op->t->lost = true;
		pthread_mutex_unlock(&op->t->lock);
		return CKR_DEVICE_REMOVED;
	}
	return map_rv(op->t, rv);
}

static void close_sessions(struct token_store *t)
{
	for (size_t i = 0; i < t->n_pool; i++)
		t->f->C_CloseSession(t->pool[i]);
	t->n_pool = 0;
	if (t->attached && t->anchored)
		t->f->C_CloseSession(t->anchor);
	t->attached = t->anchored = false;
}

/* The device's mechanisms, asked once per attachment: a reader round
 * trip per signature would cost more than the signature. */
static void read_mechanisms(struct token_store *t)
{
	CK_ULONG n = 0;
	free(t->mechs);
	free(t->mech_flags);
	t->mechs = NULL;
	t->mech_flags = NULL;
	t->n_mechs = 0;
	if (t->f->C_GetMechanismList(t->slot, NULL, &n) != CKR_OK || n == 0 || n > 4096)
		return;
	CK_ULONG room = n;
	CK_MECHANISM_TYPE *all = calloc(room, sizeof(*all));
	CK_FLAGS *flags = calloc(room, sizeof(*flags));
	/* A list that grew meanwhile is read at the next attachment; one
	 * longer than the room it had is a broken module. */
	if (!all || !flags || t->f->C_GetMechanismList(t->slot, all, &n) != CKR_OK || n > room) {
		free(all);
		free(flags);
		return;
	}
	for (CK_ULONG i = 0; i < n; i++) {
		CK_MECHANISM_INFO mi;
		flags[i] = t->f->C_GetMechanismInfo(t->slot, all[i], &mi) == CKR_OK ? mi.flags : 0;
	}
	t->mechs = all;
	t->mech_flags = flags;
	t->n_mechs = n;
}

static CK_FLAGS p11_mechanism_flags(struct token_store *t, CK_MECHANISM_TYPE type)
{
	pthread_mutex_lock(&t->lock);
	CK_FLAGS f = 0;
	for (size_t i = 0; i < t->n_mechs; i++)
		if (t->mechs[i] == type)
			f = t->mech_flags[i];
	pthread_mutex_unlock(&t->lock);
	return f;
}

/* Find the token and open the anchor session (lock held). */
static CK_RV attach(struct token_store *t)
{
	CK_ULONG n = 0;
	CK_SLOT_ID *slots = NULL;
	CK_RV rv = t->f->C_GetSlotList(CK_TRUE, NULL, &n);
	if (rv == CKR_OK && n) {
		/* Readers come and go between the two calls: retry on a short
		 * buffer rather than miss a token. */
		for (int tries = 0; tries < 3; tries++) {
			CK_SLOT_ID *s = realloc(slots, (n + 1) * sizeof(*s));
			if (!s) {
				rv = CKR_HOST_MEMORY;
				break;
			}
			slots = s;
			CK_ULONG room = ++n;
			rv = t->f->C_GetSlotList(CK_TRUE, slots, &n);
			if (rv == CKR_OK && n > room)
				rv = CKR_GENERAL_ERROR; /* more than it had room for: broken */
			if (rv != CKR_BUFFER_TOO_SMALL)
				break;
		}
	}
	bool found = false;
	CK_TOKEN_INFO ti;
	for (CK_ULONG i = 0; rv == CKR_OK && i < n && !found; i++) {
		if (t->f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && selector_matches(&t->sel, &ti)) {
			t->slot = slots[i];
			found = true;
		}
	}
	free(slots);
	if (rv != CKR_OK)
		return map_rv(t, rv);
	if (!found)
		return CKR_TOKEN_NOT_PRESENT;
	if (!(ti.flags & CKF_TOKEN_INITIALIZED)) {
		/* Nothing to log into or keep open yet: C_InitToken comes
		 * first, and a device opens no sessions before it. */
		t->anchored = false;
		goto attached;
	}
	rv = t->f->C_OpenSession(t->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &t->anchor);
	t->rw = rv == CKR_OK;
	if (rv == CKR_TOKEN_WRITE_PROTECTED)
		rv = t->f->C_OpenSession(t->slot, CKF_SERIAL_SESSION, NULL, NULL, &t->anchor);
	if (rv != CKR_OK)
		return is_removal(rv) ? CKR_TOKEN_NOT_PRESENT : map_rv(t, rv);
	t->anchored = true;
attached:
	read_mechanisms(t);
	t->attached = true;
	t->lost = false;
	t->generation++;
	t->last_probe = now_ns();
	kt_debug(KT_DBG_TOKEN, "pkcs11 token %s: found in slot %lu", t->name, t->slot);
	return CKR_OK;
}

/* Be attached, or say the device is not there (lock held). */
static CK_RV ensure_attached(struct token_store *t)
{
	if (t->attached && !__atomic_load_n(&t->lost, __ATOMIC_ACQUIRE))
		return CKR_OK;
	if (t->attached) {
		kt_log("pkcs11 token %s: the device went away", t->name);
	} else if (now_ns() - t->last_attempt < ABSENT_RETRY_NS) {
		/* An absent device is looked for at most this often, however
		 * many calls ask. */
		return CKR_TOKEN_NOT_PRESENT;
	}
	close_sessions(t);
	t->last_attempt = now_ns();
	return attach(t);
}

static char *describe(const struct config_token *ct)
{
	char *s = NULL;
	const char *base = strrchr(ct->path, '/');
	if (asprintf(&s, "%s%s%s%s%s", base ? base + 1 : ct->path, ct->label ? " label=" : "",
		     ct->label ? ct->label : "", ct->serial ? " serial=" : "", ct->serial ? ct->serial : "") < 0)
		return NULL;
	return s;
}

static CK_RV p11_attach(const struct config_token *ct, struct token_store **out)
{
	CK_RV rv = CKR_HOST_MEMORY;
	struct token_store *t = calloc(1, sizeof(*t));
	if (!t || !(t->name = describe(ct)))
		goto fail;
	rv = CKR_ARGUMENTS_BAD;
	if (ct->uri && !parse_uri(ct->uri, &t->sel)) {
		kt_log("pkcs11 token: malformed uri %s", ct->uri);
		goto fail;
	}
	if ((ct->label && !set_field(t->sel.token, sizeof(t->sel.token), &t->sel.has_token, ct->label)) ||
	    (ct->serial && !set_field(t->sel.serial, sizeof(t->sel.serial), &t->sel.has_serial, ct->serial)))
		goto fail;
	rv = mod_get(ct->path, &t->mod);
	if (rv != CKR_OK)
		goto fail;
	t->f = t->mod->f;
	pthread_mutex_init(&t->lock, NULL);
	pthread_mutex_lock(&t->lock);
	rv = attach(t);
	pthread_mutex_unlock(&t->lock);
	if (rv != CKR_OK)
		kt_log("pkcs11 token %s: not present now (%s); looked for again at each use", t->name,
		       kt_rv_name(rv));
	*out = t;
	return CKR_OK;
fail:
	if (t)
		free(t->name);
	free(t);
	return rv;
}

static void p11_close(struct token_store *t)
{
	if (!t)
		return;
	pthread_mutex_lock(&t->lock);
	close_sessions(t);
	pthread_mutex_unlock(&t->lock);
	pthread_mutex_destroy(&t->lock);
	mod_put(t->mod);
	free(t->mechs);
	free(t->mech_flags);
	free(t->name);
	free(t);
}

static CK_RV p11_open(const char *path, bool create, struct token_store **out)
{
	(void)path;
	(void)create;
	(void)out;
	/* Only attach makes a device store. */
	return CKR_GENERAL_ERROR;
}

static CK_RV p11_state(struct token_store *t, struct token_state *out)
{
	pthread_mutex_lock(&t->lock);
	CK_RV rv = ensure_attached(t);
	CK_TOKEN_INFO ti;
	if (rv == CKR_OK) {
		rv = t->f->C_GetTokenInfo(t->slot, &ti);
		if (is_removal(rv)) {
			/* Pulled and perhaps put back: look once more. */
			t->lost = true;
			rv = ensure_attached(t);
			if (rv == CKR_OK)
				rv = t->f->C_GetTokenInfo(t->slot, &ti);
		}
		if (rv != CKR_OK)
			rv = is_removal(rv) ? CKR_TOKEN_NOT_PRESENT : map_rv(t, rv);
	}
	if (rv == CKR_OK) {
		t->last_probe = now_ns();
		memset(out, 0, sizeof(*out));
		unpad(out->label, ti.label, sizeof(ti.label));
		unpad(out->serial, ti.serialNumber, sizeof(ti.serialNumber));
		out->initialized = ti.flags & CKF_TOKEN_INITIALIZED;
		out->user_pin_set = ti.flags & CKF_USER_PIN_INITIALIZED;
		out->device = true;
		out->info = ti;
		out->generation = t->generation;
	}
	pthread_mutex_unlock(&t->lock);
	return rv;
}

static bool p11_changed(struct token_store *t)
{
	pthread_mutex_lock(&t->lock);
	bool changed = __atomic_load_n(&t->lost, __ATOMIC_ACQUIRE) || !t->attached;
	if (!changed && now_ns() - t->last_probe > PROBE_INTERVAL_NS) {
		/* The anchor session dies with the device, and with a device
		 * pulled and put back between two probes. */
		CK_SESSION_INFO si;
		CK_TOKEN_INFO ti;
		CK_RV rv = t->anchored ? t->f->C_GetSessionInfo(t->anchor, &si) : t->f->C_GetTokenInfo(t->slot, &ti);
		t->last_probe = now_ns();
		if (rv != CKR_OK) {
			t->lost = true;
			changed = true;
		}
	}
	if (!changed && t->seen != t->generation) {
		/* Found again by a state() call since we last answered. */
		changed = true;
		t->seen = t->generation;
	}
	pthread_mutex_unlock(&t->lock);
	return changed;
}

/* The anchor session for a call made under the module's token lock. */
static CK_RV anchor(struct token_store *t, CK_SESSION_HANDLE *s)
{
	pthread_mutex_lock(&t->lock);
	CK_RV rv = t->attached && !__atomic_load_n(&t->lost, __ATOMIC_ACQUIRE) ? CKR_OK : CKR_DEVICE_REMOVED;
	if (rv == CKR_OK && !t->anchored)
		rv = CKR_USER_PIN_NOT_INITIALIZED;
	*s = t->anchor;
	pthread_mutex_unlock(&t->lock);
	return rv;
}

static CK_RV p11_initialize(struct token_store *t, const CK_UTF8CHAR *so_pin, CK_ULONG so_len,
			    const char *label, const struct token_params *params)
{
	(void)params; /* the device has its own PIN rules */
	CK_UTF8CHAR padded[32];
	kt_pad(padded, sizeof(padded), label);
	pthread_mutex_lock(&t->lock);
	CK_RV rv = ensure_attached(t);
	if (rv == CKR_OK) {
		/* A device refuses C_InitToken while its application has
		 * sessions open: ours go, and come back after. */
		CK_SLOT_ID slot = t->slot;
		close_sessions(t);
		rv = map_rv(t, t->f->C_InitToken(slot, (CK_UTF8CHAR_PTR)so_pin, so_len, padded));
		CK_TOKEN_INFO ti;
		if (rv == CKR_OK && t->f->C_GetTokenInfo(slot, &ti) == CKR_OK) {
			/* The token is now what was initialised, whatever the
			 * selection matched before (an empty label; the first
			 * token of a module that then offers a fresh empty one):
			 * this process follows it by its serial. */
			memset(&t->sel, 0, sizeof(t->sel));
			unpad(t->sel.serial, ti.serialNumber, sizeof(ti.serialNumber));
			t->sel.has_serial = true;
		}
		CK_RV again = attach(t);
		if (rv == CKR_OK)
			rv = again;
	}
	pthread_mutex_unlock(&t->lock);
	return rv;
}

static CK_RV p11_login(struct token_store *t, CK_USER_TYPE who, const CK_UTF8CHAR *pin, CK_ULONG len,
		       struct token_key **key)
{
	CK_SESSION_HANDLE s;
	CK_RV rv = anchor(t, &s);
	if (rv != CKR_OK)
		return rv;
	if (!key) {
		/* A PIN check outside an operation would need the device to
		 * log out first; the module checks per-use PINs through the
		 * operation (op_login) instead. */
		return CKR_FUNCTION_NOT_SUPPORTED;
	}
	if (who == CKU_SO) {
		/* The pool's read-only sessions are ours, not the
		 * application's: a device refuses an SO login while any
		 * read-only session is open (CKR_SESSION_READ_ONLY_EXISTS). */
		pthread_mutex_lock(&t->lock);
		size_t n = t->n_pool;
		CK_SESSION_HANDLE idle[POOL_MAX];
		memcpy(idle, t->pool, n * sizeof(idle[0]));
		t->n_pool = 0;
		pthread_mutex_unlock(&t->lock);
		for (size_t i = 0; i < n; i++)
			t->f->C_CloseSession(idle[i]);
	}
	rv = t->f->C_Login(s, who, (CK_UTF8CHAR_PTR)pin, len);
	if (rv == CKR_USER_ALREADY_LOGGED_IN) {
		/* Someone else in this process logged the device in: that
		 * is no proof this caller knows the PIN.  Ask again. */
		t->f->C_Logout(s);
		rv = t->f->C_Login(s, who, (CK_UTF8CHAR_PTR)pin, len);
	}
	if (rv != CKR_OK)
		return map_rv(t, rv);
	*key = calloc(1, sizeof(**key));
	if (!*key) {
		t->f->C_Logout(s);
		return CKR_HOST_MEMORY;
	}
	return CKR_OK;
}

static void p11_key_free(struct token_key *key)
{
	free(key);
}

static void p11_logout(struct token_store *t)
{
	CK_SESSION_HANDLE s;
	if (anchor(t, &s) == CKR_OK)
		t->f->C_Logout(s);
}

static CK_RV p11_init_pin(struct token_store *t, const struct token_key *so_key, const CK_UTF8CHAR *pin,
			  CK_ULONG len)
{
	(void)so_key;
	CK_SESSION_HANDLE s;
	CK_RV rv = anchor(t, &s);
	return rv == CKR_OK ? map_rv(t, t->f->C_InitPIN(s, (CK_UTF8CHAR_PTR)pin, len)) : rv;
}

static CK_RV p11_set_pin(struct token_store *t, CK_USER_TYPE who, const CK_UTF8CHAR *old_pin, CK_ULONG old_len,
			 const CK_UTF8CHAR *new_pin, CK_ULONG new_len)
{
	(void)who; /* the device changes the PIN of whoever its session is */
	CK_SESSION_HANDLE s;
	CK_RV rv = anchor(t, &s);
	if (rv == CKR_OK)
		rv = map_rv(t, t->f->C_SetPIN(s, (CK_UTF8CHAR_PTR)old_pin, old_len, (CK_UTF8CHAR_PTR)new_pin,
					      new_len));
	return rv;
}

/* --- objects: reading ------------------------------------------------------ */

/* The attributes read from a device object, by class.  Never a secret
 * (CKA_VALUE of a key, CKA_PRIVATE_EXPONENT...): the module has no use for
 * them, and asking would be asking the device to export a key. */
static const CK_ATTRIBUTE_TYPE common_types[] = {
	CKA_TOKEN, CKA_PRIVATE, CKA_MODIFIABLE, CKA_LABEL, CKA_COPYABLE, CKA_DESTROYABLE, CKA_UNIQUE_ID,
};
static const CK_ATTRIBUTE_TYPE key_types[] = {
	CKA_KEY_TYPE, CKA_ID, CKA_START_DATE, CKA_END_DATE, CKA_DERIVE, CKA_LOCAL, CKA_KEY_GEN_MECHANISM,
	CKA_ALLOWED_MECHANISMS,
};
static const CK_ATTRIBUTE_TYPE private_types[] = {
	CKA_SUBJECT, CKA_SENSITIVE, CKA_DECRYPT, CKA_SIGN, CKA_SIGN_RECOVER, CKA_UNWRAP, CKA_EXTRACTABLE,
	CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE, CKA_WRAP_WITH_TRUSTED, CKA_ALWAYS_AUTHENTICATE,
	CKA_PUBLIC_KEY_INFO, CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_EC_PARAMS,
};
static const CK_ATTRIBUTE_TYPE public_types[] = {
	CKA_SUBJECT, CKA_ENCRYPT, CKA_VERIFY, CKA_VERIFY_RECOVER, CKA_WRAP, CKA_TRUSTED, CKA_PUBLIC_KEY_INFO,
	CKA_MODULUS, CKA_MODULUS_BITS, CKA_PUBLIC_EXPONENT, CKA_EC_PARAMS, CKA_EC_POINT,
};
static const CK_ATTRIBUTE_TYPE secret_types[] = {
	CKA_SENSITIVE, CKA_ENCRYPT, CKA_DECRYPT, CKA_SIGN, CKA_VERIFY, CKA_WRAP, CKA_UNWRAP, CKA_EXTRACTABLE,
	CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE, CKA_CHECK_VALUE, CKA_WRAP_WITH_TRUSTED, CKA_TRUSTED,
	CKA_VALUE_LEN,
};
static const CK_ATTRIBUTE_TYPE cert_types[] = {
	CKA_CERTIFICATE_TYPE, CKA_TRUSTED, CKA_CERTIFICATE_CATEGORY, CKA_CHECK_VALUE, CKA_START_DATE,
	CKA_END_DATE, CKA_PUBLIC_KEY_INFO, CKA_SUBJECT, CKA_ID, CKA_ISSUER, CKA_SERIAL_NUMBER, CKA_VALUE,
	CKA_URL, CKA_HASH_OF_SUBJECT_PUBLIC_KEY, CKA_HASH_OF_ISSUER_PUBLIC_KEY, CKA_JAVA_MIDP_SECURITY_DOMAIN,
	CKA_NAME_HASH_ALGORITHM,
};
static const CK_ATTRIBUTE_TYPE data_types[] = {
	CKA_APPLICATION, CKA_OBJECT_ID, CKA_VALUE,
};

struct type_list {
	const CK_ATTRIBUTE_TYPE *types;
	size_t n;
};

#define LIST(a) { a, KT_ARRAY_SIZE(a) }

static size_t lists_for(CK_OBJECT_CLASS cls, struct type_list out[3])
{
	size_t n = 0;
	out[n++] = (struct type_list)LIST(common_types);
	switch (cls) {
	case CKO_PRIVATE_KEY:
		out[n++] = (struct type_list)LIST(key_types);
		out[n++] = (struct type_list)LIST(private_types);
		break;
	case CKO_PUBLIC_KEY:
		out[n++] = (struct type_list)LIST(key_types);
		out[n++] = (struct type_list)LIST(public_types);
		break;
	case CKO_SECRET_KEY:
		out[n++] = (struct type_list)LIST(key_types);
		out[n++] = (struct type_list)LIST(secret_types);
		break;
	case CKO_CERTIFICATE:
		out[n++] = (struct type_list)LIST(cert_types);
		break;
	case CKO_DATA:
		out[n++] = (struct type_list)LIST(data_types);
		break;
	default:
		/* Other classes (mechanisms, profiles, vendor objects) are
		 * not shown: the module's schema does not know them. */
		return 0;
	}
	return n;
}

static void log_template(struct token_store *t, const char *call, CK_RV rv, const CK_ATTRIBUTE *tmpl, CK_ULONG n);

/* Read one object; *out stays NULL for an object the module does not show. */
static CK_RV read_object(struct token_store *t, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, struct attrs **out)
{
	*out = NULL;
	CK_OBJECT_CLASS cls;
	CK_ATTRIBUTE ca = { CKA_CLASS, &cls, sizeof(cls) };
	CK_RV rv = t->f->C_GetAttributeValue(s, h, &ca, 1);
	if (rv != CKR_OK)
		return rv == CKR_OBJECT_HANDLE_INVALID ? CKR_OK : map_rv(t, rv);
	struct type_list lists[3];
	size_t nl = lists_for(cls, lists);
	if (!nl)
		return CKR_OK;
	size_t n = 0;
	for (size_t i = 0; i < nl; i++)
		n += lists[i].n;
	CK_ATTRIBUTE *tmpl = calloc(n, sizeof(*tmpl));
	struct attrs *a = attrs_new();
	rv = CKR_HOST_MEMORY;
	if (!tmpl || !a)
		goto out;
	n = 0;
	for (size_t i = 0; i < nl; i++)
		for (size_t j = 0; j < lists[i].n; j++)
			tmpl[n++].type = lists[i].types[j];
	/* Lengths first; attributes the object lacks come back as
	 * CK_UNAVAILABLE_INFORMATION with CKR_ATTRIBUTE_TYPE_INVALID. */
	rv = t->f->C_GetAttributeValue(s, h, tmpl, n);
	if (rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED || rv == CKR_DEVICE_ERROR) {
		/* Some devices fail a whole read over one attribute they
		 * cannot produce (SoftHSM2 does, for some objects it loaded
		 * from disk): ask one by one, and go without that one. */
		log_template(t, "C_GetAttributeValue", rv, tmpl, n);
		rv = CKR_OK;
		for (size_t i = 0; i < n && !is_removal(rv); i++) {
			tmpl[i].pValue = NULL;
			rv = t->f->C_GetAttributeValue(s, h, &tmpl[i], 1);
			if (rv != CKR_OK)
				tmpl[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
		}
		if (!is_removal(rv))
			rv = CKR_OK;
	}
	if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE) {
		rv = rv == CKR_OBJECT_HANDLE_INVALID ? CKR_OK : map_rv(t, rv);
		goto out;
	}
	size_t m = 0;
	for (size_t i = 0; i < n; i++) {
		if (tmpl[i].ulValueLen == CK_UNAVAILABLE_INFORMATION || tmpl[i].ulValueLen > ATTR_MAX_LEN)
			continue;
		tmpl[m].type = tmpl[i].type;
		tmpl[m].ulValueLen = tmpl[i].ulValueLen;
		tmpl[m].pValue = tmpl[m].ulValueLen ? malloc(tmpl[m].ulValueLen) : NULL;
		if (tmpl[m].ulValueLen && !tmpl[m].pValue) {
			rv = CKR_HOST_MEMORY;
			n = m;
			goto out;
		}
		m++;
	}
	n = m;
	CK_ULONG *room = calloc(n ? n : 1, sizeof(*room));
	if (!room) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		room[i] = tmpl[i].ulValueLen;
	rv = n ? t->f->C_GetAttributeValue(s, h, tmpl, n) : CKR_OK;
	/* A value longer than the room it was given is a broken module,
	 * not a value to read past the buffer. */
	for (size_t i = 0; i < n && rv == CKR_OK; i++)
		if (tmpl[i].ulValueLen != CK_UNAVAILABLE_INFORMATION && tmpl[i].ulValueLen > room[i])
			rv = CKR_GENERAL_ERROR;
	free(room);
	if (rv != CKR_OK) {
		/* Changed between the two reads (another application):
		 * better no object than a half-read one. */
		if (is_removal(rv)) {
			rv = map_rv(t, rv);
		} else {
			/* One object the device cannot read back is left
			 * out; the others are still shown. */
			if (rv != CKR_OBJECT_HANDLE_INVALID && rv != CKR_BUFFER_TOO_SMALL)
				kt_log("pkcs11 token %s: an object could not be read (%s); not shown", t->name,
				       kt_rv_name(rv));
			rv = CKR_OK;
		}
		goto out;
	}
	rv = attrs_set_ulong(a, CKA_CLASS, cls);
	for (size_t i = 0; i < n && rv == CKR_OK; i++)
		if (tmpl[i].ulValueLen != CK_UNAVAILABLE_INFORMATION)
			rv = attrs_set(a, tmpl[i].type, tmpl[i].pValue, tmpl[i].ulValueLen);
	/* An empty CKA_PUBLIC_KEY_INFO (devices that know the attribute
	 * but not the key's) means "unknown"; the module fills it in. */
	const CK_ATTRIBUTE *spki = attrs_get(a, CKA_PUBLIC_KEY_INFO);
	if (spki && spki->ulValueLen == 0)
		attrs_remove(a, CKA_PUBLIC_KEY_INFO);
	if (rv == CKR_OK) {
		*out = a;
		a = NULL;
	}
out:
	if (tmpl)
		for (size_t i = 0; i < n; i++)
			free(tmpl[i].pValue);
	free(tmpl);
	attrs_free(a);
	return rv;
}

static CK_RV p11_load(struct token_store *t, const struct token_key *key, token_object_cb cb, void *ctx)
{
	(void)key; /* the device shows private objects while it is logged in */
	CK_SESSION_HANDLE s;
	CK_RV rv = anchor(t, &s);
	if (rv == CKR_USER_PIN_NOT_INITIALIZED)
		return CKR_OK; /* an uninitialised token holds nothing */
	if (rv != CKR_OK)
		return rv;
	CK_OBJECT_HANDLE *hs = NULL;
	size_t n = 0, cap = 0;
	rv = t->f->C_FindObjectsInit(s, NULL, 0);
	if (rv != CKR_OK)
		return map_rv(t, rv);
	for (;;) {
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			CK_OBJECT_HANDLE *nh = cap <= OBJECTS_MAX ? realloc(hs, cap * sizeof(*nh)) : NULL;
			if (!nh) {
				rv = cap > OBJECTS_MAX ? CKR_DEVICE_MEMORY : CKR_HOST_MEMORY;
				break;
			}
			hs = nh;
		}
		CK_ULONG got = 0;
		rv = t->f->C_FindObjects(s, hs + n, cap - n, &got);
		if (rv != CKR_OK || got == 0)
			break;
		if (got > cap - n) {
			/* More than it had room for: a broken module. */
			rv = CKR_GENERAL_ERROR;
			break;
		}
		n += got;
	}
	t->f->C_FindObjectsFinal(s);
	if (rv != CKR_OK) {
		free(hs);
		return map_rv(t, rv);
	}
	for (size_t i = 0; i < n && rv == CKR_OK; i++) {
		struct attrs *a = NULL;
		rv = read_object(t, s, hs[i], &a);
		if (rv == CKR_OK && a)
			rv = cb(ctx, hs[i], a, true);
	}
	free(hs);
	return rv;
}

static CK_RV p11_object_read(struct token_store *t, uint64_t id, struct attrs **out)
{
	CK_SESSION_HANDLE s;
	CK_RV rv = anchor(t, &s);
	if (rv == CKR_OK)
		rv = read_object(t, s, (CK_OBJECT_HANDLE)id, out);
	if (rv == CKR_OK && !*out)
		rv = CKR_OBJECT_HANDLE_INVALID;
	return rv;
}

/* --- objects: writing ------------------------------------------------------ */

/* What the device decides for itself (or cannot be told): left out of
 * the templates the device gets.  Vendor attributes are koltamga's own
 * (the module derives or keeps them); a device would refuse them. */
static bool device_decides(CK_ATTRIBUTE_TYPE type, bool generate)
{
	if (type & CKA_VENDOR_DEFINED)
		return true;
	switch (type) {
	case CKA_CLASS:
	case CKA_KEY_TYPE:
		/* Given for creation, implied by the mechanism for generation. */
		return generate;
	case CKA_LOCAL:
	case CKA_ALWAYS_SENSITIVE:
	case CKA_NEVER_EXTRACTABLE:
	case CKA_KEY_GEN_MECHANISM:
	case CKA_UNIQUE_ID:
	case CKA_NAME_HASH_ALGORITHM:
		return true;
	case CKA_PUBLIC_KEY_INFO:
		/* An imported private key's public half: the device could not
		 * work it out from an EC scalar without computing. */
		return generate;
	case CKA_CHECK_VALUE:
		/* Derived from the value by whoever holds it. */
		return true;
	case CKA_MODULUS:
	case CKA_EC_POINT:
	case CKA_VALUE:
	case CKA_HASH_OF_SUBJECT_PUBLIC_KEY:
	case CKA_HASH_OF_ISSUER_PUBLIC_KEY:
		/* Material: made by the device when it generates. */
		return generate;
	case CKA_MODULUS_BITS:
	case CKA_VALUE_LEN:
		/* Inputs of generation, outputs of creation. */
		return !generate;
	default:
		return false;
	}
}

/* Which attributes a device refused an object with (types only: the
 * values may be key material). */
static void log_template(struct token_store *t, const char *call, CK_RV rv, const CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
	char types[512];
	size_t used = 0;
	types[0] = '\0';
	for (CK_ULONG i = 0; i < n && used < sizeof(types) - 24; i++)
		used += (size_t)snprintf(types + used, sizeof(types) - used, " 0x%lx", tmpl[i].type);
	kt_debug(KT_DBG_TOKEN, "pkcs11 token %s: %s = %s, template types:%s", t->name, call, kt_rv_name(rv), types);
}

/* The module's attribute set as a device template (values borrowed). */
static CK_RV to_template(const struct attrs *a, bool generate, CK_ATTRIBUTE **out, CK_ULONG *n_out)
{
	size_t n = attrs_count(a), m = 0;
	CK_ATTRIBUTE *tmpl = calloc(n ? n : 1, sizeof(*tmpl));
	if (!tmpl)
		return CKR_HOST_MEMORY;
	for (size_t i = 0; i < n; i++) {
		const CK_ATTRIBUTE *at = attrs_at(a, i);
		/* An empty value is every attribute's default (the module
		 * spells defaults out; devices refuse some of them). */
		if (at->ulValueLen && !device_decides(at->type, generate))
			tmpl[m++] = *at;
	}
	*out = tmpl;
	*n_out = m;
	return CKR_OK;
}

static CK_RV p11_object_add(struct token_store *t, const struct token_key *key, const struct attrs *attrs,
			    uint64_t *id)
{
	(void)key;
	CK_SESSION_HANDLE s;
	CK_ATTRIBUTE *tmpl = NULL;
	CK_ULONG n = 0;
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
	CK_RV rv = anchor(t, &s);
	if (rv == CKR_OK)
		rv = to_template(attrs, false, &tmpl, &n);
	if (rv == CKR_OK) {
		CK_RV dev = t->f->C_CreateObject(s, tmpl, n, &h);
		if (dev != CKR_OK)
			log_template(t, "C_CreateObject", dev, tmpl, n);
		rv = map_rv(t, dev);
	}
	free(tmpl);
	if (rv == CKR_OK)
		*id = h;
	return rv;
}

/* A change that would make a key less protected.  The module's rules
 * never let one through; this driver never sends one either, whatever
 * the module's copy of the object lacked. */
static bool weakens(const CK_ATTRIBUTE *a)
{
	bool on = a->ulValueLen == sizeof(CK_BBOOL) && *(const CK_BBOOL *)a->pValue == CK_TRUE;
	switch (a->type) {
	case CKA_SENSITIVE:
	case CKA_WRAP_WITH_TRUSTED:
	case CKA_ALWAYS_AUTHENTICATE:
		return !on;
	case CKA_EXTRACTABLE:
		return on;
	default:
		return false;
	}
}

static CK_RV p11_object_set(struct token_store *t, uint64_t id, const struct attrs *changes)
{
	CK_SESSION_HANDLE s;
	CK_RV rv = anchor(t, &s);
	if (rv != CKR_OK)
		return rv;
	size_t n = attrs_count(changes), m = 0;
	CK_ATTRIBUTE *tmpl = calloc(n ? n : 1, sizeof(*tmpl));
	if (!tmpl)
		return CKR_HOST_MEMORY;
	for (size_t i = 0; i < n && rv == CKR_OK; i++) {
		const CK_ATTRIBUTE *at = attrs_at(changes, i);
		/* koltamga's own attributes cannot live on a device: refused
		 * rather than kept only until the next reload. */
		if (at->type & CKA_VENDOR_DEFINED)
			rv = CKR_ATTRIBUTE_TYPE_INVALID;
		else if (weakens(at))
			rv = CKR_ATTRIBUTE_READ_ONLY;
		else
			tmpl[m++] = *at;
	}
	if (rv == CKR_OK && m)
		rv = map_rv(t, t->f->C_SetAttributeValue(s, (CK_OBJECT_HANDLE)id, tmpl, m));
	free(tmpl);
	return rv;
}

static CK_RV p11_object_copy(struct token_store *t, uint64_t id, const struct attrs *changes, uint64_t *new_id)
{
	CK_SESSION_HANDLE s;
	CK_ATTRIBUTE *tmpl = NULL;
	CK_ULONG n = 0;
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
	CK_RV rv = anchor(t, &s);
	for (size_t i = 0; rv == CKR_OK && i < attrs_count(changes); i++) {
		if (attrs_at(changes, i)->type & CKA_VENDOR_DEFINED)
			rv = CKR_ATTRIBUTE_TYPE_INVALID;
		else if (weakens(attrs_at(changes, i)))
			rv = CKR_ATTRIBUTE_READ_ONLY;
	}
	if (rv == CKR_OK)
		rv = to_template(changes, false, &tmpl, &n);
	if (rv == CKR_OK)
		rv = map_rv(t, t->f->C_CopyObject(s, (CK_OBJECT_HANDLE)id, tmpl, n, &h));
	free(tmpl);
	if (rv == CKR_OK)
		*new_id = h;
	return rv;
}

static CK_RV p11_object_secret(struct token_store *t, uint64_t id, CK_ATTRIBUTE_TYPE type, struct attrs *into)
{
	CK_SESSION_HANDLE s;
	CK_ATTRIBUTE a = { type, NULL, 0 };
	CK_RV rv = anchor(t, &s);
	if (rv == CKR_OK)
		rv = t->f->C_GetAttributeValue(s, (CK_OBJECT_HANDLE)id, &a, 1);
	if (rv == CKR_OK && (a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen > ATTR_MAX_LEN))
		rv = CKR_ATTRIBUTE_SENSITIVE;
	if (rv != CKR_OK)
		return rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID ? rv : map_rv(t, rv);
	CK_ULONG room = a.ulValueLen ? a.ulValueLen : 1;
	a.pValue = kt_alloc_secret(room);
	if (!a.pValue)
		return CKR_HOST_MEMORY;
	rv = t->f->C_GetAttributeValue(s, (CK_OBJECT_HANDLE)id, &a, 1);
	if (rv == CKR_OK && a.ulValueLen > room)
		rv = CKR_GENERAL_ERROR; /* a broken module: never read past the buffer */
	if (rv == CKR_OK)
		rv = attrs_set(into, type, a.pValue, a.ulValueLen);
	else
		rv = rv == CKR_ATTRIBUTE_SENSITIVE ? rv : map_rv(t, rv);
	kt_free_secret(a.pValue, room);
	return rv;
}

static CK_RV p11_wrap(struct token_store *t, const CK_MECHANISM *m, uint64_t wrapping, uint64_t key, CK_BYTE *out,
		      CK_ULONG *out_len)
{
	CK_SESSION_HANDLE s;
	CK_RV rv = anchor(t, &s);
	if (rv == CKR_OK)
		rv = map_rv(t, t->f->C_WrapKey(s, (CK_MECHANISM_PTR)m, (CK_OBJECT_HANDLE)wrapping,
					       (CK_OBJECT_HANDLE)key, out, out_len));
	return rv;
}

static CK_RV p11_unwrap(struct token_store *t, const CK_MECHANISM *m, uint64_t unwrapping, const CK_BYTE *in,
			CK_ULONG in_len, const struct attrs *attrs, uint64_t *id)
{
	CK_SESSION_HANDLE s;
	CK_ATTRIBUTE *tmpl = NULL;
	CK_ULONG n = 0;
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
	CK_RV rv = anchor(t, &s);
	if (rv == CKR_OK)
		rv = to_template(attrs, false, &tmpl, &n);
	if (rv == CKR_OK)
		rv = map_rv(t, t->f->C_UnwrapKey(s, (CK_MECHANISM_PTR)m, (CK_OBJECT_HANDLE)unwrapping,
						 (CK_BYTE_PTR)in, in_len, tmpl, n, &h));
	free(tmpl);
	if (rv == CKR_OK)
		*id = h;
	return rv;
}

static CK_RV p11_object_delete(struct token_store *t, uint64_t id)
{
	CK_SESSION_HANDLE s;
	CK_RV rv = anchor(t, &s);
	return rv == CKR_OK ? map_rv(t, t->f->C_DestroyObject(s, (CK_OBJECT_HANDLE)id)) : rv;
}

static CK_RV p11_generate(struct token_store *t, const CK_MECHANISM *m, const struct attrs *pub,
			  const struct attrs *priv, uint64_t *pub_id, struct attrs **pub_out, uint64_t *priv_id,
			  struct attrs **priv_out)
{
	CK_SESSION_HANDLE s;
	CK_ATTRIBUTE *pt = NULL, *kt = NULL;
	CK_ULONG pn = 0, kn = 0;
	CK_OBJECT_HANDLE ph = CK_INVALID_HANDLE, kh = CK_INVALID_HANDLE;
	CK_RV rv = anchor(t, &s);
	if (rv == CKR_OK && pub)
		rv = to_template(pub, true, &pt, &pn);
	if (rv == CKR_OK)
		rv = to_template(priv, true, &kt, &kn);
	if (rv == CKR_OK) {
		CK_RV dev = pub ? t->f->C_GenerateKeyPair(s, (CK_MECHANISM_PTR)m, pt, pn, kt, kn, &ph, &kh)
				: t->f->C_GenerateKey(s, (CK_MECHANISM_PTR)m, kt, kn, &kh);
		if (dev != CKR_OK) {
			if (pub)
				log_template(t, "C_GenerateKeyPair (public)", dev, pt, pn);
			log_template(t, "C_GenerateKey(Pair)", dev, kt, kn);
		}
		rv = map_rv(t, dev);
	}
	free(pt);
	free(kt);
	if (rv != CKR_OK)
		return rv;
	*priv_id = kh;
	rv = read_object(t, s, kh, priv_out);
	if (rv == CKR_OK && !*priv_out)
		rv = CKR_DEVICE_ERROR;
	if (rv == CKR_OK && pub) {
		*pub_id = ph;
		rv = read_object(t, s, ph, pub_out);
		if (rv == CKR_OK && !*pub_out)
			rv = CKR_DEVICE_ERROR;
	}
	if (rv != CKR_OK) {
		/* Half a key pair is worse than none. */
		attrs_free(*priv_out);
		*priv_out = NULL;
		if (pub) {
			attrs_free(*pub_out);
			*pub_out = NULL;
			t->f->C_DestroyObject(s, ph);
		}
		t->f->C_DestroyObject(s, kh);
	}
	return rv;
}

/* --- private-key operations ------------------------------------------------ */

static CK_RV session_take(struct token_store *t, CK_SESSION_HANDLE *s, unsigned long *generation)
{
	pthread_mutex_lock(&t->lock);
	CK_RV rv = t->attached && !__atomic_load_n(&t->lost, __ATOMIC_ACQUIRE) ? CKR_OK : CKR_DEVICE_REMOVED;
	CK_SLOT_ID slot = t->slot;
	*generation = t->generation;
	bool pooled = rv == CKR_OK && t->n_pool;
	if (pooled)
		*s = t->pool[--t->n_pool];
	pthread_mutex_unlock(&t->lock);
	if (rv != CKR_OK || pooled)
		return rv;
	/* Opened outside the lock: a slow device delays this signature
	 * only.  Read-only is enough to sign, and a login holds for every
	 * session of the application. */
	return map_rv(t, t->f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, s));
}

static void session_give_back(struct token_store *t, CK_SESSION_HANDLE s, unsigned long generation, bool clean)
{
	pthread_mutex_lock(&t->lock);
	bool current = t->attached && t->generation == generation;
	bool keep = clean && current && t->n_pool < POOL_MAX;
	if (keep)
		t->pool[t->n_pool++] = s;
	pthread_mutex_unlock(&t->lock);
	/* A session from before the device went is gone with it; closing
	 * its handle now could close someone else's that took its number. */
	if (!keep && current)
		t->f->C_CloseSession(s);
}

static CK_RV p11_sign_init(struct token_store *t, uint64_t id, const CK_MECHANISM *m, struct token_op **out)
{
	struct token_op *op = calloc(1, sizeof(*op));
	if (!op)
		return CKR_HOST_MEMORY;
	op->t = t;
	CK_RV rv = session_take(t, &op->s, &op->generation);
	if (rv != CKR_OK) {
		free(op);
		return rv;
	}
	rv = t->f->C_SignInit(op->s, (CK_MECHANISM_PTR)m, (CK_OBJECT_HANDLE)id);
	if (rv != CKR_OK) {
		/* Pooled again only when the device plainly refused the
		 * mechanism or key; after other failures it is closed. */
		bool clean = rv == CKR_MECHANISM_INVALID || rv == CKR_MECHANISM_PARAM_INVALID ||
			     rv == CKR_KEY_TYPE_INCONSISTENT || rv == CKR_KEY_FUNCTION_NOT_PERMITTED;
		session_give_back(t, op->s, op->generation, clean);
		free(op);
		/* The key the module showed is gone from the device. */
		if (rv == CKR_OBJECT_HANDLE_INVALID)
			rv = CKR_KEY_HANDLE_INVALID;
		return map_rv(t, rv);
	}
	*out = op;
	return CKR_OK;
}

static CK_RV p11_op_update(struct token_op *op, const CK_BYTE *data, CK_ULONG len)
{
	CK_RV rv = op->t->f->C_SignUpdate(op->s, (CK_BYTE_PTR)data, len);
	if (rv != CKR_OK)
		op->failed = true; /* a failed update ends the device's operation */
	return map_op_rv(op, rv);
}

static CK_RV p11_op_final(struct token_op *op, const CK_BYTE *data, CK_ULONG len, bool oneshot, CK_BYTE *out,
			  CK_ULONG *out_len)
{
	CK_RV rv = oneshot ? op->t->f->C_Sign(op->s, (CK_BYTE_PTR)data, len, out, out_len)
			   : op->t->f->C_SignFinal(op->s, out, out_len);
	/* The module always gives room for the whole signature; a device
	 * that still wants more keeps its operation, which op_free ends. */
	if (rv == CKR_OK)
		op->done = true;
	else if (rv != CKR_BUFFER_TOO_SMALL)
		op->failed = true;
	return map_op_rv(op, rv);
}

static CK_RV p11_op_login(struct token_op *op, const CK_UTF8CHAR *pin, CK_ULONG len)
{
	CK_RV rv = op->t->f->C_Login(op->s, CKU_CONTEXT_SPECIFIC, (CK_UTF8CHAR_PTR)pin, len);
	/* The device's key does not ask for a PIN at each use: the
	 * application's answer, not our misuse of the device. */
	return rv == CKR_OPERATION_NOT_INITIALIZED ? rv : map_op_rv(op, rv);
}

static void p11_op_free(struct token_op *op)
{
	if (!op)
		return;
	/* Only a session whose operation ended with a signature goes back
	 * to the pool: one left unfinished (refused, canceled, abandoned)
	 * must not be finishable, and one the device failed may still be
	 * busy there.  Those are closed. */
	session_give_back(op->t, op->s, op->generation, op->done && !op->failed);
	free(op);
}

const struct token_ops pkcs11_token_ops = {
	.name = "pkcs11",
	.open = p11_open,
	.close = p11_close,
	.state = p11_state,
	.initialize = p11_initialize,
	.login = p11_login,
	.key_free = p11_key_free,
	.init_pin = p11_init_pin,
	.set_pin = p11_set_pin,
	.changed = p11_changed,
	.load = p11_load,
	.object_add = p11_object_add,
	.object_delete = p11_object_delete,
	.attach = p11_attach,
	.logout = p11_logout,
	.sign_init = p11_sign_init,
	.mechanism_flags = p11_mechanism_flags,
	.op_update = p11_op_update,
	.op_final = p11_op_final,
	.op_login = p11_op_login,
	.op_free = p11_op_free,
	.object_read = p11_object_read,
	.object_set = p11_object_set,
	.object_copy = p11_object_copy,
	.object_secret = p11_object_secret,
	.wrap = p11_wrap,
	.unwrap = p11_unwrap,
	.generate = p11_generate,
};
