/*
 * koltamga vendor-defined PKCS#11 attributes and constants.
 *
 * Certificate objects (CKO_CERTIFICATE, CKC_X_509) served by koltamga carry,
 * besides the standard attributes, one read-only attribute per item the
 * e-signature law asks a qualified certificate to name.  They are derived
 * from the certificate (see docs/attributes.md for the field or OID behind
 * each one) and are absent when the certificate does not carry the item,
 * except the CK_BBOOL flags and CKA_KT_HOLDER_TYPE, which are always there.
 *
 * Text values are UTF-8 and, as everywhere in PKCS#11, not NUL-terminated:
 * use ulValueLen.  Times are "YYYYMMDDhhmmssZ" (15 characters, UTC).
 * Personal data (birth date and place, personal identification number and
 * its kind, a natural person's address) is returned only when the session
 * is allowed to see it; otherwise the attribute is absent.
 *
 * Include after a pkcs11.h (p11-kit's, OASIS', NSS's...); nothing else is
 * needed.  C and C++.
 */
#ifndef KOLTAMGA_PKCS11V_H
#define KOLTAMGA_PKCS11V_H

#ifdef __cplusplus
extern "C" {
#endif

/* "KT" in the vendor range. */
#define CKA_KT_BASE (0x80000000UL | 0x4B540000UL)

/* --- qualified status (ETSI EN 319 412-5 QC statements) ------------------ */
#define CKA_KT_QC_COMPLIANCE (CKA_KT_BASE + 0x01UL)   /* CK_BBOOL: QcCompliance present */
#define CKA_KT_QC_LEGISLATION (CKA_KT_BASE + 0x02UL)  /* UTF-8: "KG" or "KG,KZ" (QcCClegislation) */
#define CKA_KT_QC_TYPE (CKA_KT_BASE + 0x03UL)         /* CK_ULONG: CK_KT_QC_TYPE_* bits */
#define CKA_KT_QC_SSCD (CKA_KT_BASE + 0x04UL)         /* CK_BBOOL: QcSSCD, key on a qualified device */
#define CKA_KT_QC_LIMIT_VALUE (CKA_KT_BASE + 0x05UL)  /* UTF-8: "1000000 KGS" (amount x 10^exp, currency) */

/* --- holder ---------------------------------------------------------------- */
#define CKA_KT_HOLDER_TYPE (CKA_KT_BASE + 0x06UL)     /* CK_ULONG: CK_KT_HOLDER_* */
#define CKA_KT_SURNAME (CKA_KT_BASE + 0x07UL)         /* UTF-8, subject surname */
#define CKA_KT_GIVEN_NAMES (CKA_KT_BASE + 0x08UL)     /* UTF-8, subject givenName */
#define CKA_KT_COMMON_NAME (CKA_KT_BASE + 0x09UL)     /* UTF-8, subject commonName */
#define CKA_KT_BIRTH_DATE (CKA_KT_BASE + 0x0AUL)      /* CK_DATE; personal data */
#define CKA_KT_BIRTH_PLACE (CKA_KT_BASE + 0x0BUL)     /* UTF-8; personal data */
#define CKA_KT_PERSONAL_ID (CKA_KT_BASE + 0x0CUL)     /* UTF-8, as written ("PNOKG-..."); personal */
#define CKA_KT_PERSONAL_ID_KIND (CKA_KT_BASE + 0x0DUL) /* CK_ULONG: CK_KT_PID_*; personal data */
#define CKA_KT_ORGANIZATION (CKA_KT_BASE + 0x0EUL)    /* UTF-8, subject organizationName */
#define CKA_KT_ORG_ADDRESS (CKA_KT_BASE + 0x0FUL)     /* UTF-8, an organisation's address */
#define CKA_KT_PERSON_ADDRESS (CKA_KT_BASE + 0x10UL)  /* UTF-8, a natural person's address; personal */
#define CKA_KT_REGISTRATION_NUMBER (CKA_KT_BASE + 0x11UL) /* UTF-8 ("NTRKG-...", OGRN, "BIN...") */
#define CKA_KT_TITLE (CKA_KT_BASE + 0x12UL)           /* UTF-8, the representative's title */
#define CKA_KT_COUNTRY (CKA_KT_BASE + 0x13UL)         /* UTF-8, subject countryName */

/* --- signature tools and their conformity documents ----------------------- */
#define CKA_KT_SUBJECT_SIGN_TOOL (CKA_KT_BASE + 0x14UL)      /* UTF-8, subjectSignTool */
#define CKA_KT_ISSUER_SIGN_TOOL (CKA_KT_BASE + 0x15UL)       /* UTF-8, issuerSignTool.signTool */
#define CKA_KT_ISSUER_CA_TOOL (CKA_KT_BASE + 0x16UL)         /* UTF-8, issuerSignTool.cATool */
#define CKA_KT_ISSUER_SIGN_TOOL_CERT (CKA_KT_BASE + 0x17UL)  /* UTF-8, ...signToolCert */
#define CKA_KT_ISSUER_CA_TOOL_CERT (CKA_KT_BASE + 0x18UL)    /* UTF-8, ...cAToolCert */

/* --- issuing centre --------------------------------------------------------- */
#define CKA_KT_ISSUER_NAME (CKA_KT_BASE + 0x19UL)     /* UTF-8, issuer O (else CN) */
#define CKA_KT_ISSUER_ADDRESS (CKA_KT_BASE + 0x1AUL)  /* UTF-8, issuer street, L, ST */
#define CKA_KT_ISSUER_KEY_ID (CKA_KT_BASE + 0x1BUL)   /* bytes, authorityKeyIdentifier keyIdentifier */
#define CKA_KT_ISSUER_CERT_SERIAL (CKA_KT_BASE + 0x1CUL) /* DER INTEGER, AKI authorityCertSerialNumber */
#define CKA_KT_ISSUER_ACCREDITATION (CKA_KT_BASE + 0x1DUL) /* UTF-8, from the trust list (dynamic) */

/* --- restrictions, powers, validity ----------------------------------------- */
#define CKA_KT_KEY_USAGE (CKA_KT_BASE + 0x1EUL)       /* CK_ULONG: CK_KT_KU_* bits */
#define CKA_KT_EXT_KEY_USAGE (CKA_KT_BASE + 0x1FUL)   /* UTF-8: dotted OIDs, comma-separated */
#define CKA_KT_POLICIES (CKA_KT_BASE + 0x20UL)        /* UTF-8: dotted OIDs, comma-separated */
#define CKA_KT_POWERS (CKA_KT_BASE + 0x21UL)          /* UTF-8, powers to act for third parties */
#define CKA_KT_POWERS_UNTIL (CKA_KT_BASE + 0x22UL)    /* "YYYYMMDDhhmmssZ", end of those powers */
#define CKA_KT_NOT_BEFORE (CKA_KT_BASE + 0x23UL)      /* "YYYYMMDDhhmmssZ" */
#define CKA_KT_NOT_AFTER (CKA_KT_BASE + 0x24UL)       /* "YYYYMMDDhhmmssZ" */

/* --- dynamic: filled by the module's checks, not by the certificate -------- */
#define CKA_KT_REVOCATION_STATUS (CKA_KT_BASE + 0x25UL)  /* CK_ULONG: CK_KT_REVOCATION_* */
#define CKA_KT_REVOCATION_CHECKED (CKA_KT_BASE + 0x26UL) /* "YYYYMMDDhhmmssZ", when established */

#define CKA_KT_LAST CKA_KT_REVOCATION_CHECKED

/* --- private keys: the signing policy, fixed when the key is created ------ */
#define CKA_KT_SIGN_POLICY (CKA_KT_BASE + 0x40UL) /* CK_ULONG: CK_KT_POLICY_*; read-only */
#define CK_KT_POLICY_CONFIRM 1UL   /* the signer confirms every signature (law art. 12.2) */
#define CK_KT_POLICY_AUTOMATIC 2UL /* a seal of an information system (art. 12.4): no prompt */

/* Private and public keys, certificates: a one-way mark that the key is
 * compromised (settable to CK_TRUE by whoever may modify the object, the
 * SO through the public key or certificate; never cleared).  Every later
 * signature with the key, or with a key sharing its CKA_ID, is refused,
 * and a report for the certification centre is written
 * (docs/security.md). */
#define CKA_KT_COMPROMISED (CKA_KT_BASE + 0x42UL)       /* CK_BBOOL */
#define CKA_KT_COMPROMISE_REASON (CKA_KT_BASE + 0x43UL) /* UTF-8 text for that report */

/* CKA_APPLICATION of a session CKO_DATA object that hands the module the
 * document being signed (CKA_LABEL its title, CKA_VALUE its bytes),
 * created in the signing session before C_SignInit; several such objects
 * for a package of documents.  docs/confirmation.md says how they must
 * match what is signed. */
#define KT_SIGN_CONTEXT_APPLICATION "koltamga sign context"
/* CK_BBOOL on a sign-context object: the document is confidential, so the
 * audit record of its signature carries no digest of it. */
#define CKA_KT_CONFIDENTIAL (CKA_KT_BASE + 0x41UL)

/* CKA_KT_QC_TYPE bits (QcType 0.4.0.1862.1.6.x); 0 when QcType is absent. */
#define CK_KT_QC_TYPE_ESIGN 0x1UL /* .1 */
#define CK_KT_QC_TYPE_ESEAL 0x2UL /* .2 */
#define CK_KT_QC_TYPE_WEB 0x4UL   /* .3 */

/* CKA_KT_HOLDER_TYPE */
#define CK_KT_HOLDER_UNKNOWN 0UL
#define CK_KT_HOLDER_NATURAL_PERSON 1UL
#define CK_KT_HOLDER_REPRESENTATIVE 2UL /* a person acting for a legal entity */
#define CK_KT_HOLDER_LEGAL_ENTITY 3UL   /* a seal: legal entity / information system */

/* CKA_KT_PERSONAL_ID_KIND */
#define CK_KT_PID_OTHER 0UL
#define CK_KT_PID_PNO 1UL   /* ETSI EN 319 412-1 "PNOxx-": national personal number */
#define CK_KT_PID_PAS 2UL   /* "PASxx-": passport number */
#define CK_KT_PID_IDC 3UL   /* "IDCxx-": identity card number */
#define CK_KT_PID_TIN 4UL   /* "TINxx-" (or "TAXxx-"): tax identification number */
#define CK_KT_PID_IIN 5UL   /* Kazakh "IIN" + 12 digits */
#define CK_KT_PID_SNILS 6UL /* Russian SNILS, 1.2.643.100.3 */
#define CK_KT_PID_INN 7UL   /* Russian INN of a person, 1.2.643.3.131.1.1 */

/* CKA_KT_KEY_USAGE: X.509 KeyUsage bit n is (1UL << n); absent when the
 * certificate has no keyUsage extension (no restriction). */
#define CK_KT_KU_DIGITAL_SIGNATURE 0x001UL
#define CK_KT_KU_NON_REPUDIATION 0x002UL /* contentCommitment */
#define CK_KT_KU_KEY_ENCIPHERMENT 0x004UL
#define CK_KT_KU_DATA_ENCIPHERMENT 0x008UL
#define CK_KT_KU_KEY_AGREEMENT 0x010UL
#define CK_KT_KU_KEY_CERT_SIGN 0x020UL
#define CK_KT_KU_CRL_SIGN 0x040UL
#define CK_KT_KU_ENCIPHER_ONLY 0x080UL
#define CK_KT_KU_DECIPHER_ONLY 0x100UL

/* CKA_KT_REVOCATION_STATUS */
#define CK_KT_REVOCATION_UNKNOWN 0UL
#define CK_KT_REVOCATION_GOOD 1UL
#define CK_KT_REVOCATION_REVOKED 2UL
#define CK_KT_REVOCATION_SUSPENDED 3UL /* certificateHold */

#ifdef __cplusplus
}
#endif

#endif
