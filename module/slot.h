/*
 * Slots, their tokens, and each token's objects as this process sees them.
 *
 * Every configured token is a slot; with a store directory there is also one
 * empty slot where C_InitToken creates a new token (after which another empty
 * slot appears).  A token keeps an in-memory copy of its objects, indexed by
 * handle, label and id so finds stay fast with many objects, and reloads it
 * when another process has changed the store.  Login state is per token and
 * per process, as PKCS#11 says.
 *
 * Locking: slot_table_lock() guards the slot list; each token has its own
 * mutex (token_lock) guarding its objects, login state and store handle.
 * Order: table before token.  Nothing here blocks on a person.
 */
#ifndef KOLTAMGA_SLOT_H
#define KOLTAMGA_SLOT_H

#include <pthread.h>
#include <openssl/evp.h>

#include "common.h"
#include "attrs.h"
#include "config.h"
#include "crypto.h"
#include "token.h"

#define USER_NONE ((CK_USER_TYPE)-1)

/* Session-object handles start here; token objects use their store ids,
 * which stay far below. */
#define SESSION_HANDLE_BASE 0x40000000UL

struct object {
	CK_OBJECT_HANDLE handle;
	CK_SESSION_HANDLE owner; /* session objects: the creating session; 0 for token objects */
	struct attrs *attrs;
	bool complete;           /* sealed attributes present (see token_object_cb) */
	bool on_device;          /* a device's object: its handle is the device's */
	bool is_private;
	CK_OBJECT_CLASS cls;
	EVP_PKEY *pkey;          /* built on first use, for key objects */
	uint64_t label_hash, id_hash;
	struct object *next_handle, *next_label, *next_id;
};

struct token {
	pthread_mutex_t lock;
	CK_SLOT_ID slot_id;
	const struct token_ops *ops;
	char *path;
	enum sign_policy policy; /* for keys created here; POLICY_DEFAULT: the module's */
	struct token_store *store; /* NULL: empty slot, or unrecognised store */
	bool recognized;
	struct token_state state; /* cached by token_refresh_state */
	/* Devices (tokens/pkcs11): not there now; the device generation the
	 * objects and login are from; bumped each time the device goes, so
	 * sessions opened before know they are gone (CKR_DEVICE_REMOVED). */
	bool absent;
	bool reported_absent;    /* as C_WaitForSlotEvent last told it */
	unsigned long reported_insertion;
	unsigned long generation;
	volatile unsigned long insertion;

	CK_USER_TYPE login; /* USER_NONE, CKU_USER or CKU_SO */
	struct token_key *key;
	/* Bumped at every logout: operations started under an earlier login
	 * see the change and stop using private keys. */
	volatile unsigned long login_epoch;

	unsigned long sessions, rw_sessions;

	struct object **by_handle, **by_label, **by_id;
	size_t buckets, n_objects;
	CK_OBJECT_HANDLE next_session_handle;
};

CK_RV slot_table_init(const struct config *cfg);
void slot_table_free(void);
/* In a forked child: forget the parent's table without touching it. */
void slot_table_abandon(void);
/* Look for tokens created by other processes in the store directory. */
void slot_table_rescan(void);
size_t slot_count(void);
struct token *slot_at(size_t i);
/* The token behind a slot id, or NULL (CKR_SLOT_ID_INVALID). */
struct token *slot_get(CK_SLOT_ID id);
const struct config *slot_config(void);

void token_lock(struct token *t);
void token_unlock(struct token *t);
/* token_lock if nobody holds it; false otherwise. */
bool token_trylock(struct token *t);

/* The rest expect the token lock held. */
CK_RV token_refresh_state(struct token *t);
bool token_present(const struct token *t);
CK_RV token_sync(struct token *t);
CK_RV token_init(struct token *t, const CK_UTF8CHAR *so_pin, CK_ULONG so_len, const char *label);
CK_RV token_login(struct token *t, CK_USER_TYPE who, const CK_UTF8CHAR *pin, CK_ULONG len);
CK_RV token_check_pin(struct token *t, CK_USER_TYPE who, const CK_UTF8CHAR *pin, CK_ULONG len);
void token_logout(struct token *t);
CK_RV token_init_pin(struct token *t, const CK_UTF8CHAR *pin, CK_ULONG len);
CK_RV token_set_pin(struct token *t, CK_USER_TYPE who, const CK_UTF8CHAR *old_pin, CK_ULONG old_len,
		    const CK_UTF8CHAR *new_pin, CK_ULONG new_len);

/* Can the current login state see this object at all? */
bool token_object_visible(const struct token *t, const struct object *o);
struct object *token_object_get(struct token *t, CK_OBJECT_HANDLE h);
/* Add a new object (attrs taken, also on failure); token objects are
 * written to the store first. */
CK_RV token_object_add(struct token *t, CK_SESSION_HANDLE owner, struct attrs *attrs,
		       CK_OBJECT_HANDLE *handle);
/* Replace an object's attributes (taken, also on failure). */
CK_RV token_object_replace(struct token *t, struct object *o, struct attrs *attrs);
CK_RV token_object_destroy(struct token *t, struct object *o);
/* Destroy the session objects a closing session owns. */
void token_drop_session_objects(struct token *t, CK_SESSION_HANDLE owner);
/* The objects visible now that match the template, as handles. */
CK_RV token_find(struct token *t, const CK_ATTRIBUTE *tmpl, CK_ULONG count,
		 CK_OBJECT_HANDLE **out, size_t *n_out);
/*
 * The certificates a private key belongs to: those with the key's CKA_ID
 * (non-empty).  For each, `cb` learns whether its public key is the key's.
 * Certificates are public objects, so this works in any login state.
 */
typedef void (*token_cert_cb)(void *ctx, const struct object *cert, bool matches);
void token_key_certificates(struct token *t, const struct object *key, token_cert_cb cb, void *ctx);

/* The EVP_PKEY of a key object, built once and cached; a new reference. */
CK_RV token_object_pkey(struct token *t, struct object *o, EVP_PKEY **out);

/* A mechanism's CK_MECHANISM_INFO flags on this token: a device's token
 * offers only what the device can do with its keys. */
CK_FLAGS token_mechanism_flags(struct token *t, const struct mech_info *mi);
/* Is this a device token, whose keys the module never holds? */
bool token_is_device(const struct token *t);
/* A device's private key (its handle) starts signing with `m` on the
 * device; for a device that only signs hashes, *host_hash says the module
 * hashes.  Called without the token lock: the driver's own locking holds,
 * and a device gone meanwhile answers CKR_DEVICE_REMOVED. */
CK_RV token_sign_remote(struct token *t, CK_OBJECT_HANDLE key, const CK_MECHANISM *m, const struct mech_info *mi,
			struct crypto_remote *out, bool *host_hash);
/* C_CopyObject: on a device the device copies (`copy` is the new object's
 * attributes as the module worked them out; taken). */
CK_RV token_object_copy(struct token *t, CK_SESSION_HANDLE owner, const struct object *o, struct attrs *copy,
			CK_OBJECT_HANDLE *handle);
/* For a read of a device key's material that the module's rules allow
 * (not sensitive, extractable): *view is a copy of the object's
 * attributes with those values, asked of the device now (free it); NULL
 * when nothing needs asking. */
CK_RV token_object_view(struct token *t, const struct object *o, const CK_ATTRIBUTE *tmpl, CK_ULONG count,
			struct attrs **view);
/* Key wrapping with a device's keys, on the device. */
CK_RV token_wrap_remote(struct token *t, const CK_MECHANISM *m, const struct object *wk, const struct object *k,
			CK_BYTE *out, CK_ULONG *out_len);
CK_RV token_unwrap_remote(struct token *t, CK_SESSION_HANDLE owner, const CK_MECHANISM *m, const struct object *uk,
			  const CK_BYTE *in, CK_ULONG in_len, struct attrs *tmpl, CK_OBJECT_HANDLE *handle);
/* Generate a key (pub == NULL) or key pair on a device, the private or
 * secret key a token object (a session public key is kept by the module
 * for `owner`); the attribute sets are taken (also on failure). */
CK_RV token_generate_remote(struct token *t, CK_SESSION_HANDLE owner, const CK_MECHANISM *m, struct attrs *pub,
			    struct attrs *priv, CK_OBJECT_HANDLE *pub_handle, CK_OBJECT_HANDLE *priv_handle);

#endif
