/*
 * Personal data in certificates (the personal-data law; docs/security.md):
 * birth date and place, personal number, a person's address.  Who may read
 * them:
 *   login    (default) a session logged in as the user;
 *   consent  that, and the holder allowed the calling program through the
 *            confirmation backend; remembered per program, revocable.
 * Not allowed means hidden: CKR_ATTRIBUTE_SENSITIVE, and a find never
 * matches on them.  Every disclosure is an audit record (metadata only).
 */
#ifndef KOLTAMGA_PERSONAL_H
#define KOLTAMGA_PERSONAL_H

#include "common.h"
#include "attrs.h"
#include "config.h"

void personal_configure(const struct config *c);

/* Does the template ask for a personal attribute this certificate has?
 * `names` gets their names, comma-separated, for the dialog and audit. */
bool personal_requested(const struct attrs *cert, const CK_ATTRIBUTE *tmpl, CK_ULONG n, char *names,
			size_t names_len);

/* Does the template match on personal attributes at all (for finds)? */
bool personal_in_template(const CK_ATTRIBUTE *tmpl, CK_ULONG n);

/* Under the consent policy: has the holder allowed this program already? */
bool personal_needs_consent(void);

/* Ask the holder (no lock held: it waits for a person).  `holder` and
 * `certificate` describe whose data; true when allowed, then remembered. */
bool personal_ask(const char *holder, const char *certificate, const char *names);

/* An audit record of a disclosure ("disclosed") or a refusal to disclose
 * ("withheld"), naming the attributes, never their values. */
void personal_audit(const char *token_serial, const char *cert_issuer, const char *cert_serial,
		    const char *names, bool disclosed);

/* The remembered consents: one program path per line in `path`. */
bool consent_given(const char *path, const char *program);
CK_RV consent_remember(const char *path, const char *program);
/* 1 when removed, 0 when there was none, -1 on error. */
int consent_revoke(const char *path, const char *program);

#endif
