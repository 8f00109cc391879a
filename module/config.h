/*
 * koltamga.conf: where tokens live and how they behave.
 *
 * Sources, first found wins (never merged, so what is in force is always one
 * file a person can read):
 *   1. the file named by $KOLTAMGA_CONF (a missing file is an error);
 *   2. the string p11-kit passes as pReserved from a module file's
 *      `x-init-reserved:` (';' separates lines there, and only there);
 *   3. /etc/koltamga/koltamga.conf when it exists;
 *   4. nothing: defaults (one store under $XDG_DATA_HOME/koltamga).
 *
 * Syntax: `key = value` lines, `#` comments, `[token]` starts a token section.
 * Module-wide keys (before any section):
 *   store = DIR         directory of file tokens: every *.ktok in it is a slot,
 *                       plus one empty slot where C_InitToken creates a new one
 *                       (default $XDG_DATA_HOME/koltamga, else ~/.local/share/koltamga)
 *   max_pin_tries = N   wrong PINs before lockout, 1..100 (default 5)
 *   min_pin_len = N     (default 4)          max_pin_len = N (default 64)
 *   scrypt_n = N        KDF cost for tokens initialised from now on: a power of
 *   scrypt_r = N        two >= 1024 (default 32768, r 8, p 1); stored per token
 *   scrypt_p = N
 *   trust_list = FILE   accredited certification centres (docs/trust-and-revocation.md)
 *   crl_dir = DIR       CRLs (PEM or DER) read at C_Initialize
 *   crl_file = FILE     one CRL; may be repeated
 *   crl_max_age = T     a CRL older than this is stale: seconds, or with s/m/h/d
 *   revocation_unknown = refuse|allow   no fresh CRL for an issuer (default refuse)
 *   sign_policy = confirm|automatic  for keys created from now on (default confirm)
 *   strict = yes|no     refuse hash-only mechanisms on confirm keys without a
 *                       sign context (default no)
 *   confirm = pinentry|command|deny  how the signer is asked (default pinentry)
 *   confirm_program = FILE  the pinentry or command (default: pinentry in PATH)
 *   confirm_timeout = N  seconds to wait for the signer, 1..3600 (default 60)
 *   imported_keys = allow|refuse  may a confirm key that was imported (not
 *                       generated on the token, CKA_LOCAL false) sign? (allow)
 *   secure_heap = N     KiB of locked memory for keys, PINs and documents
 *                       (OpenSSL's secure heap; default 1024, 0 = off)
 *   personal_data = login|consent  who reads birth date, personal number,
 *                       a person's address (default login)
 *   personal_data_certificates = private|public  certificates carrying
 *                       them are private objects (default private)
 *   consent_file = FILE the programs the holder allowed (default
 *                       $XDG_STATE_HOME/koltamga/consents)
 *   compromise_reports = DIR  key compromise reports for the certification
 *                       centre (default $XDG_STATE_HOME/koltamga/compromise)
 *   audit_log = FILE    (default $XDG_STATE_HOME/koltamga/audit.log, else
 *                       ~/.local/state/koltamga/audit.log)
 * [key] keys (a per-key signing policy, fixed when the key is created):
 *   id = HEX            the key's CKA_ID, or
 *   label = TEXT        its CKA_LABEL
 *   sign_policy = confirm|automatic
 * [profile] keys:
 *   oid.NAME = 1.2.3.4  one more OID meaning NAME in the certificate
 *                       attribute table (docs/attributes.md)
 * [token] keys:
 *   driver = file|pkcs11  (default file)
 *   path = FILE         file: the token's store file (created by C_InitToken if absent)
 *   module = FILE       pkcs11: the device's PKCS#11 module (absolute path)
 *   label = TEXT        pkcs11: the device token's label, and/or
 *   serial = TEXT       its serial number, and/or
 *   uri = pkcs11:...    an RFC 7512 URI (token, serial, manufacturer, model)
 *   sign_policy = confirm|automatic  for keys created on this token (pkcs11:
 *                       for every key on the device without a [key] section)
 * Unknown keys, bad numbers or a missing path are errors: C_Initialize fails
 * with CKR_ARGUMENTS_BAD (a bad pReserved) or CKR_GENERAL_ERROR, after one
 * clear line on stderr; nothing falls back to weaker defaults silently.
 */
#ifndef KOLTAMGA_CONFIG_H
#define KOLTAMGA_CONFIG_H

#include "common.h"
#include "token.h"

enum sign_policy { POLICY_DEFAULT = 0, POLICY_CONFIRM = 1, POLICY_AUTOMATIC = 2 };

struct config_token {
	const struct token_ops *driver;
	char *path;              /* file: the store; pkcs11: the device's module */
	enum sign_policy policy; /* POLICY_DEFAULT: the module's */
	/* pkcs11: which of the module's tokens (all given must match; none:
	 * its first token present) */
	char *label, *serial, *uri;
};

struct config_key {
	unsigned char *id; /* CKA_ID, or NULL */
	size_t id_len;
	char *label;       /* CKA_LABEL, or NULL */
	enum sign_policy policy;
};

struct config_oid {
	char *name;
	char *oid;
};

struct config {
	char *store_dir; /* NULL: no store directory (only [token]s) */
	char *trust_list;
	char *crl_dir;
	char **crl_files; /* NULL-terminated */
	size_t n_crl_files;
	unsigned long crl_max_age;
	bool allow_unknown_revocation;
	struct config_oid *oids;
	size_t n_oids;
	enum sign_policy policy; /* for keys on store tokens */
	bool strict;
	bool refuse_imported;    /* imported_keys = refuse: confirm keys must be CKA_LOCAL */
	bool personal_consent;   /* personal_data = consent (else login) */
	unsigned long secure_heap; /* bytes of OpenSSL's secure heap; 0: none */
	bool public_personal_certs; /* personal_data_certificates = public */
	char *consent_file;      /* remembered consents */
	char *compromise_dir;    /* where key compromise reports go */
	int confirm_backend;     /* enum confirm_backend */
	char *confirm_program;
	unsigned confirm_timeout;
	char *audit_log;
	struct config_key *keys;
	size_t n_keys;
	CK_ULONG min_pin_len;
	CK_ULONG max_pin_len;
	struct token_params params;
	struct config_token *tokens;
	size_t n_tokens;
	char *source; /* where it came from, for messages */
};

/* The signing policy configured for a key with this CKA_ID and CKA_LABEL
 * (either may be NULL): its [key] section, else its token's, else the
 * module's. */
enum sign_policy config_key_policy(const struct config *c, enum sign_policy token_policy, const CK_ATTRIBUTE *id,
				   const CK_ATTRIBUTE *label);

/* Parse text; `origin` names the source in messages. */
CK_RV config_parse(const char *text, const char *origin, struct config **out);
/* Find and parse per the order above.  pReserved may be NULL. */
CK_RV config_load(const char *reserved, struct config **out);
void config_free(struct config *c);

#endif
