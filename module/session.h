/*
 * Sessions and the operations they carry.  Each session owns at most one
 * find and one cryptographic operation; ending one (by *Final, an error,
 * C_CloseSession or C_Finalize) goes through one function that frees and
 * wipes its state, so no path can forget.
 *
 * A session is found by handle under the table's read lock, referenced,
 * and returned with its own mutex held (session_get/session_put), the
 * mutex taken after the table lock is released; closing takes the write
 * lock to unlink, then the session mutex to wait for any call still inside
 * it, and the last reference frees it.  Lock order: session table,
 * session, token.
 */
#ifndef KOLTAMGA_SESSION_H
#define KOLTAMGA_SESSION_H

#include <pthread.h>

#include "common.h"
#include "crypto.h"
#include "slot.h"

enum op_kind { OP_NONE, OP_SIGN, OP_VERIFY, OP_DIGEST };

/* A document the application handed over for the signature under way (a
 * sign-context object, copied at C_SignInit). */
struct sign_doc {
	char *title;
	CK_BYTE *value;
	CK_ULONG len;
};

struct crypto_state {
	enum op_kind kind;
	struct crypto_op *op;
	const struct mech_info *mech;
	CK_OBJECT_HANDLE key;
	bool uses_private_key;
	unsigned long login_epoch;  /* token login epoch at init */
	bool needs_context_login;   /* key has CKA_ALWAYS_AUTHENTICATE */
	bool context_logged_in;
	/* The certificate bound to the signing key (same CKA_ID, same public
	 * key), copied at C_SignInit for the checks before the signature. */
	CK_BYTE *cert;
	CK_ULONG cert_len;
	bool cert_mismatch;         /* a qualified certificate with the key's CKA_ID names another key */
	/* The signing policy (module/policy/signing.c): what the request and
	 * the audit record say, and the data a confirm key signs, copied. */
	unsigned long policy;       /* CK_KT_POLICY_* */
	bool hash_only;             /* the mechanism gets a hash, not the document */
	CK_ULONG holder_type;       /* CK_KT_HOLDER_* of the bound certificate */
	char *signer, *cert_issuer, *cert_serial, *key_label, *key_id, *token_serial;
	char *restrictions;         /* the certificate's limits worth showing the signer */
	CK_BYTE *data;
	CK_ULONG data_len, data_cap;
	unsigned long long streamed; /* bytes given to a streaming op (automatic keys) */
	struct sign_doc *docs;      /* the sign context, if the application gave one */
	size_t n_docs;
	bool confidential;          /* a document is marked CKA_KT_CONFIDENTIAL */
	char reason[256];           /* why it was refused, for the audit record */
};

struct find_state {
	bool active;
	CK_OBJECT_HANDLE *handles;
	size_t count, pos;
};

struct session {
	CK_SESSION_HANDLE handle;
	struct token *token;
	unsigned long insertion; /* the token's device insertion it was opened on */
	CK_FLAGS flags;
	pthread_mutex_t lock;
	/* Held by the table and by every call that found the session; the
	 * last one frees it.  closed (under lock) turns away calls that
	 * found the session just before C_CloseSession unlinked it. */
	unsigned refs;
	bool closed;
	struct crypto_state crypto;
	struct find_state find;
	struct session *next;
};

void session_table_init(void);
/* Close every session (C_Finalize). */
void session_table_free(void);
/* In a forked child: forget the parent's sessions without touching them. */
void session_table_abandon(void);

CK_RV session_open(struct token *t, CK_FLAGS flags, CK_SESSION_HANDLE *out);
CK_RV session_close(CK_SESSION_HANDLE h);
void session_close_all(struct token *t);

/* The session, locked; CKR_SESSION_HANDLE_INVALID if there is none or
 * it was closed while this call waited for it.  A call that waits for a
 * busy session (one whose signer is reading a confirmation dialog, say)
 * holds no table lock meanwhile, so opening and closing other sessions
 * goes on. */
CK_RV session_get(CK_SESSION_HANDLE h, struct session **out);
void session_put(struct session *s);

void session_end_crypto(struct session *s);
void session_end_find(struct session *s);

/* CKS_* for this session given its token's login state (token locked). */
CK_STATE session_state(const struct session *s);
bool session_is_rw(const struct session *s);

#endif
