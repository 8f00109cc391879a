/*
 * X.509 certificates as attributes: the standard CKA_* a certificate object
 * carries, and the vendor attributes (include/koltamga/pkcs11v.h) for every
 * item the e-signature law names (holder, birth data, personal number,
 * organisation, sign tools, issuer, restrictions, powers, validity).
 * Parsed with OpenSSL; the OIDs behind the vendor attributes live in one
 * table (certattrs.c) that configuration can extend.
 */
#ifndef KOLTAMGA_CERTATTRS_H
#define KOLTAMGA_CERTATTRS_H

#include "common.h"
#include "attrs.h"

/*
 * Everything derivable from a DER certificate, as a fresh attribute set:
 * CKA_SUBJECT, CKA_ISSUER, CKA_SERIAL_NUMBER, CKA_START_DATE, CKA_END_DATE,
 * CKA_PUBLIC_KEY_INFO, CKA_HASH_OF_SUBJECT_PUBLIC_KEY,
 * CKA_HASH_OF_ISSUER_PUBLIC_KEY (SHA-1 per PKCS#11; empty when the
 * certificate has no authority key identifier), CKA_NAME_HASH_ALGORITHM
 * (CKM_SHA_1), CKA_CHECK_VALUE (first 3 bytes of SHA-1 of the DER),
 * CKA_CERTIFICATE_CATEGORY (2, authority, for a CA; 0, unspecified, otherwise),
 * and
 * every vendor attribute that applies.
 * Malformed DER (truncated, trailing bytes, garbage, absurd lengths, wrong
 * version) is CKR_ATTRIBUTE_VALUE_INVALID.
 */
CK_RV certattrs_derive(const CK_BYTE *der, CK_ULONG len, struct attrs **out);

/* Is this a vendor attribute that carries personal data (birth date and
 * place, personal identification number, passport data, a person's
 * address)?  Used by the disclosure policy. */
bool certattrs_is_personal(CK_ATTRIBUTE_TYPE type);

/* Is this a derived, read-only certificate attribute (standard or vendor)? */
bool certattrs_is_derived(CK_ATTRIBUTE_TYPE type);

/*
 * Extend the OID table from configuration: `name` is a row name of the
 * table (e.g. "personal_id", "powers"), `oid` a dotted OID that also means
 * it.  CKR_ARGUMENTS_BAD for an unknown name or a malformed OID.  Called at
 * C_Initialize; certattrs_reset() restores the built-in table at C_Finalize.
 */
CK_RV certattrs_add_oid(const char *name, const char *oid);
void certattrs_reset(void);

#endif
