/*
 * The one interface between the module and a token driver.  A driver stores
 * objects and checks PINs; it never decides whether an operation is allowed
 * (that is the module's, and later the policy layer's, job).
 *
 * Concurrency: the module serialises calls on one `struct token_store`
 * (it holds that token's lock), but several processes may open the same
 * store at once; the driver makes their writes atomic and lets each notice
 * the others' changes (`changed`).
 */
#ifndef KOLTAMGA_TOKEN_H
#define KOLTAMGA_TOKEN_H

#include "common.h"
#include "attrs.h"

struct token_store; /* a driver's open token */
struct token_key;   /* the unlocked secret that unseals private data */
struct token_op;    /* a device driver's private-key operation under way */
struct config_token;

/* Parameters fixed when a token is (re)initialised. */
struct token_params {
	uint64_t scrypt_n; /* scrypt cost: a power of two */
	uint32_t scrypt_r;
	uint32_t scrypt_p;
	CK_ULONG max_tries; /* wrong PINs before lockout */
};

struct token_state {
	char label[33];      /* NUL-terminated, not padded */
	char serial[17];     /* 16 hex digits, NUL-terminated */
	bool initialized;    /* C_InitToken has run: an SO PIN exists */
	bool user_pin_set;   /* C_InitPIN has run */
	CK_ULONG user_fails; /* consecutive wrong user PINs */
	CK_ULONG so_fails;
	CK_ULONG max_tries;
	struct token_params params;
	/* Device drivers (tokens/pkcs11): the device's own token information,
	 * passed through to C_GetTokenInfo (PIN counter flags, protected
	 * authentication path, manufacturer); `generation` changes whenever
	 * the device was found again after it went away. */
	bool device;
	CK_TOKEN_INFO info;
	unsigned long generation;
};

/* Called once per object by `load`; the callback takes ownership of attrs.
 * `complete` is false for a public object whose sealed attributes (secret
 * key material) could not be opened because no key was given. */
typedef CK_RV (*token_object_cb)(void *ctx, uint64_t id, struct attrs *attrs, bool complete);

struct token_ops {
	const char *name;
	/* Open an existing store (create == false) or create an empty,
	 * uninitialised one.  A file that is not a valid store is
	 * CKR_TOKEN_NOT_RECOGNIZED and is left untouched. */
	CK_RV (*open)(const char *path, bool create, struct token_store **out);
	void (*close)(struct token_store *t);
	CK_RV (*state)(struct token_store *t, struct token_state *out);
	/* C_InitToken.  On an initialised token the SO PIN is verified
	 * (counting failures) and every object is destroyed; then a new token
	 * key is made, wrapped under the SO PIN; the user PIN becomes unset. */
	CK_RV (*initialize)(struct token_store *t, const CK_UTF8CHAR *so_pin, CK_ULONG so_len,
			    const char *label, const struct token_params *params);
	/* Verify a PIN (CKU_USER or CKU_SO).  Counts the attempt before
	 * checking so a crash cannot grant a free guess, resets on success.
	 * CKR_PIN_INCORRECT, CKR_PIN_LOCKED, CKR_USER_PIN_NOT_INITIALIZED.
	 * On success *key (may be NULL if not wanted) unseals private data. */
	CK_RV (*login)(struct token_store *t, CK_USER_TYPE who, const CK_UTF8CHAR *pin, CK_ULONG len,
		       struct token_key **key);
	void (*key_free)(struct token_key *key);
	/* C_InitPIN: set the user PIN; `so_key` is from an SO login. */
	CK_RV (*init_pin)(struct token_store *t, const struct token_key *so_key,
			  const CK_UTF8CHAR *pin, CK_ULONG len);
	/* C_SetPIN for `who`: the old PIN is verified like a login. */
	CK_RV (*set_pin)(struct token_store *t, CK_USER_TYPE who, const CK_UTF8CHAR *old_pin,
			 CK_ULONG old_len, const CK_UTF8CHAR *new_pin, CK_ULONG new_len);
	/* True when another process committed a change of content (objects,
	 * PINs, re-initialisation) since the last `load` or `changed` call.
	 * Other processes' PIN counter updates do not count: `state` always
	 * reads them fresh, and counting them would make every login anywhere
	 * reload every process's objects. */
	bool (*changed)(struct token_store *t);
	/* Every object.  Private objects only when key != NULL.  The callback
	 * runs inside a read transaction and must not call into the store.  A
	 * key from before another process re-initialised the token opens
	 * nothing (public objects only) and cannot write
	 * (CKR_USER_NOT_LOGGED_IN). */
	CK_RV (*load)(struct token_store *t, const struct token_key *key, token_object_cb cb,
		      void *ctx);
	CK_RV (*object_add)(struct token_store *t, const struct token_key *key,
			    const struct attrs *attrs, uint64_t *id);
	/* Replace an object's attributes in one transaction. */
	CK_RV (*object_update)(struct token_store *t, const struct token_key *key, uint64_t id,
			       const struct attrs *attrs);
	CK_RV (*object_delete)(struct token_store *t, uint64_t id);

	/*
	 * Device drivers only (NULL for a store whose keys the module holds):
	 * the keys stay on a device and every private-key operation happens
	 * there.  `attach` replaces `open`: it finds the configured device,
	 * and a device that is absent still gives a store (state() then
	 * answers CKR_TOKEN_NOT_PRESENT until it comes back).  A device's
	 * login state is the device's: `logout` ends it.
	 */
	CK_RV (*attach)(const struct config_token *ct, struct token_store **out);
	void (*logout)(struct token_store *t);
	/* C_SignInit on the device with its key `id`; then the operation
	 * takes data (update), ends with the signature (final: `data` is
	 * the whole input when `oneshot`), or re-authenticates
	 * (CKU_CONTEXT_SPECIFIC).  op_free of an unfinished operation makes
	 * sure no signature can come out of it. */
	CK_RV (*sign_init)(struct token_store *t, uint64_t id, const CK_MECHANISM *m, struct token_op **op);
	/* What the device does with this mechanism (CK_MECHANISM_INFO
	 * flags; 0: nothing). */
	CK_FLAGS (*mechanism_flags)(struct token_store *t, CK_MECHANISM_TYPE type);
	CK_RV (*op_update)(struct token_op *op, const CK_BYTE *data, CK_ULONG len);
	CK_RV (*op_final)(struct token_op *op, const CK_BYTE *data, CK_ULONG len, bool oneshot, CK_BYTE *out,
			  CK_ULONG *out_len);
	CK_RV (*op_login)(struct token_op *op, const CK_UTF8CHAR *pin, CK_ULONG len);
	void (*op_free)(struct token_op *op);
	/* Key generation on the device (pub == NULL: a secret key).  The
	 * templates are the module's, already checked; the driver passes
	 * what the device may be told and returns the ids and the objects'
	 * attributes as the device reports them. */
	/* Device drivers replace object_update (NULL there) with this: only the
	 * attributes that change, as C_SetAttributeValue gives them (the
	 * device keeps the rest, and refuses koltamga's own attributes). */
	CK_RV (*object_set)(struct token_store *t, uint64_t id, const struct attrs *changes);
	/* C_CopyObject on the device, with the attributes that change. */
	CK_RV (*object_copy)(struct token_store *t, uint64_t id, const struct attrs *changes, uint64_t *new_id);
	/* One key-material attribute of a key the module's rules let the
	 * caller read (not sensitive, extractable): asked of the device for
	 * this read only, never kept. */
	CK_RV (*object_secret)(struct token_store *t, uint64_t id, CK_ATTRIBUTE_TYPE type, struct attrs *into);
	/* C_WrapKey / C_UnwrapKey with the device's keys (the module has
	 * checked both keys' attributes); unwrap returns the new key's id. */
	CK_RV (*wrap)(struct token_store *t, const CK_MECHANISM *m, uint64_t wrapping, uint64_t key, CK_BYTE *out,
		      CK_ULONG *out_len);
	CK_RV (*unwrap)(struct token_store *t, const CK_MECHANISM *m, uint64_t unwrapping, const CK_BYTE *in,
			CK_ULONG in_len, const struct attrs *tmpl, uint64_t *id);
	/* An object's attributes as the device has them now. */
	CK_RV (*object_read)(struct token_store *t, uint64_t id, struct attrs **out);
	CK_RV (*generate)(struct token_store *t, const CK_MECHANISM *m, const struct attrs *pub,
			  const struct attrs *priv, uint64_t *pub_id, struct attrs **pub_out, uint64_t *priv_id,
			  struct attrs **priv_out);
};

/* Which attributes are sealed even on a public object: key material. */
bool token_attr_is_secret(CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE type);

extern const struct token_ops file_token_ops;
extern const struct token_ops pkcs11_token_ops;
/* In a forked child: forget the devices' modules as the parent set them
 * up; the child's C_Initialize initialises them afresh. */
void pkcs11_token_abandon(void);

#endif
