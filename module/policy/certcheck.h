/*
 * The law's checks before a qualified signature (art. 11, 14.6-14.9, 20):
 * the certificate is inside its validity period now, its key usage allows
 * signing (digitalSignature or nonRepudiation), it is not revoked or
 * suspended per the configured CRLs (verified against their issuer, not
 * older than the configured maximum age), and its issuer was accredited on
 * the certificate's issue date per the configured trust list.  "Qualified"
 * means a QcCompliance statement or an issuer configured as legacy (art. 20).
 *
 * This file only judges certificates; module/pkcs11.c decides when to ask.
 */
#ifndef KOLTAMGA_CERTCHECK_H
#define KOLTAMGA_CERTCHECK_H

#include <time.h>

#include "common.h"

struct certcheck;

/* Settings, from koltamga.conf (see docs/configuration.md). */
struct certcheck_config {
	const char *trust_list;  /* file, or NULL: no trust list */
	const char *crl_dir;     /* directory of CRLs (PEM or DER), or NULL */
	const char **crl_files;  /* NULL-terminated list, or NULL */
	unsigned long crl_max_age; /* seconds; 0 = only the CRL's nextUpdate */
	bool allow_unknown_revocation; /* status unknown or stale: allow (default refuse) */
};

enum certcheck_verdict {
	CERTCHECK_OK,
	CERTCHECK_NOT_QUALIFIED, /* not a qualified certificate: the law's checks do not apply */
	CERTCHECK_EXPIRED,
	CERTCHECK_NOT_YET_VALID,
	CERTCHECK_REVOKED,
	CERTCHECK_SUSPENDED,     /* revoked with reason certificateHold */
	CERTCHECK_REVOCATION_UNKNOWN, /* no CRL, or CRL stale/invalid */
	CERTCHECK_KEY_USAGE,     /* neither digitalSignature nor nonRepudiation */
	CERTCHECK_NOT_ACCREDITED, /* issuer not accredited on the issue date */
	CERTCHECK_MALFORMED,
};

/* Load trust list and CRLs; a broken file is CKR_GENERAL_ERROR after one
 * clear kt_log line (C_Initialize fails: no silent fallback). */
CK_RV certcheck_new(const struct certcheck_config *cfg, struct certcheck **out);
void certcheck_free(struct certcheck *cc);

/* Judge a certificate at time `now`; `why` gets a short English reason for
 * the log line (static string or written into why_buf). */
enum certcheck_verdict certcheck_judge(const struct certcheck *cc, const CK_BYTE *der, CK_ULONG len,
				       time_t now, char *why_buf, size_t why_len);

/* Is the certificate qualified (QcCompliance or legacy issuer)? */
bool certcheck_is_qualified(const struct certcheck *cc, const CK_BYTE *der, CK_ULONG len);

const char *certcheck_verdict_name(enum certcheck_verdict v);

/* What the attributes CKA_KT_REVOCATION_STATUS, CKA_KT_REVOCATION_CHECKED
 * and CKA_KT_ISSUER_ACCREDITATION report: the status per the issuer's CRL
 * (a listed certificate counts even from a stale CRL, "good" needs a fresh
 * one), when that CRL was issued, and the issuer's accreditation. */
enum certcheck_revocation {
	CERTCHECK_REV_UNKNOWN,
	CERTCHECK_REV_GOOD,
	CERTCHECK_REV_REVOKED,
	CERTCHECK_REV_SUSPENDED,
};

struct certcheck_status {
	enum certcheck_revocation revocation;
	time_t established;     /* thisUpdate of the CRL that said so; 0: unknown */
	char accreditation[64]; /* "" when the issuer is not in the trust list */
};

void certcheck_status(const struct certcheck *cc, const CK_BYTE *der, CK_ULONG len, time_t now,
		      struct certcheck_status *out);

#endif
