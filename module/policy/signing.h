/*
 * The signing policy: what happens around every signature with a private
 * key, between the application's C_Sign and the key (law art. 12.2-12.4).
 *
 *   confirm    (the default) the data is copied, shown to the signer through
 *              the confirmation backend, signed only after "yes", the signer
 *              is told it is done; multi-part data is gathered and shown at
 *              C_SignFinal.  One confirmation, one signature.
 *   automatic  a seal: no prompt, but never with a certificate that names a
 *              natural person.
 * Both: the certificate checks (before any prompt) and an audit record of
 * every decision.  A key's policy is fixed when the key is created
 * (CKA_KT_SIGN_POLICY).
 */
#ifndef KOLTAMGA_SIGNING_H
#define KOLTAMGA_SIGNING_H

#include "common.h"
#include "config.h"
#include "session.h"

/* Remember the configuration (it outlives every call until C_Finalize). */
void signing_configure(const struct config *c);

/* Write the audit records still waiting (C_Finalize). */
void signing_flush(void);

/* The policy for a new private key on token `t`: from a [key] section
 * matching its CKA_ID or CKA_LABEL, else the token's, else the module's.
 * Sets CKA_KT_SIGN_POLICY, and CKA_ALWAYS_AUTHENTICATE for confirm keys. */
CK_RV signing_assign(enum sign_policy token_policy, struct attrs *priv);

/* At C_SignInit (token locked): what the request and the audit need, and
 * for confirm keys the sign context of `session` (KT_SIGN_CONTEXT_APPLICATION
 * objects it created).  CKR_KEY_FUNCTION_NOT_PERMITTED under the strict
 * policy for a hash-only mechanism without a context. */
CK_RV signing_begin(struct crypto_state *c, struct token *t, CK_SESSION_HANDLE session, const struct attrs *key,
		    CK_MECHANISM_TYPE mech);

/* Does this operation keep the data itself (confirm keys)? */
bool signing_keeps_data(const struct crypto_state *c);
/* Append to the kept data (C_SignUpdate, or the private copy of C_Sign). */
CK_RV signing_keep(struct crypto_state *c, const CK_BYTE *p, CK_ULONG n);

/* Right before the key signs `data` (NULL when streamed): ask the signer
 * for confirm keys, refuse automatic keys of natural persons.
 * A sign context must match what is signed (CKR_DATA_INVALID otherwise).
 * CKR_OK, CKR_FUNCTION_REJECTED, CKR_FUNCTION_CANCELED, CKR_DATA_INVALID,
 * CKR_USER_NOT_LOGGED_IN (the dialog's PIN was wrong) or
 * CKR_KEY_FUNCTION_NOT_PERMITTED (with c->reason set). */
CK_RV signing_activate(struct session *s, const CK_BYTE *data, CK_ULONG len);

/* After: the "signed" notice (confirm keys) and the audit record of the
 * decision `rv` (refusals too).  `sha256`: the data's digest when the
 * caller has it already, else NULL. */
void signing_finish(struct session *s, CK_RV rv, const CK_BYTE *data, CK_ULONG len,
		    const unsigned char *sha256);

#endif
