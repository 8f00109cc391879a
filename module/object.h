/*
 * Objects: the attribute schema per class (who may set what, when) and the
 * template rules of C_CreateObject, C_CopyObject, C_SetAttributeValue,
 * C_GetAttributeValue and key generation.  Storage and visibility belong to
 * slot.c; this file only decides what a template may do to an object.
 */
#ifndef KOLTAMGA_OBJECT_H
#define KOLTAMGA_OBJECT_H

#include "common.h"
#include "attrs.h"

/* Who is asking, for attributes only some users may set (CKA_TRUSTED). */
struct object_actor {
	bool so;
};

enum object_origin {
	ORIGIN_CREATE,   /* C_CreateObject: imported, CKA_LOCAL false */
	ORIGIN_GENERATE, /* C_GenerateKey(Pair): made here, CKA_LOCAL true */
	ORIGIN_UNWRAP,   /* C_UnwrapKey: CKA_LOCAL false, never "always sensitive" */
};

/* Copy a caller's template into a new attribute set, checking each entry's
 * shape (NULL values, CK_BBOOL/CK_ULONG lengths, duplicates).  Nothing
 * about classes yet. */
CK_RV object_template_read(const CK_ATTRIBUTE *tmpl, CK_ULONG count, struct attrs **out);

/*
 * Turn a template into a complete object for `origin`: every attribute must
 * belong to the class (and key type), be settable at that origin and by that
 * actor; required ones present; defaults filled; CKA_LOCAL,
 * CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE, CKA_KEY_GEN_MECHANISM set
 * honestly.  For generation, `cls`/`kt` say what the mechanism makes and a
 * contradicting CKA_CLASS/CKA_KEY_TYPE is CKR_TEMPLATE_INCONSISTENT.
 * Key material and certificates are checked here too (crypto_check_key,
 * X.509 DER) for ORIGIN_CREATE.
 */
CK_RV object_build(struct attrs *a, enum object_origin origin, CK_OBJECT_CLASS cls, CK_KEY_TYPE kt,
		   CK_MECHANISM_TYPE gen_mech, const struct object_actor *who);

/* C_SetAttributeValue (copy == false) or the template of C_CopyObject
 * (copy == true: CKA_TOKEN and CKA_PRIVATE may change too): apply `tmpl`
 * to `a` in place, or change nothing and return the error. */
CK_RV object_modify(struct attrs *a, const struct attrs *tmpl, bool copy,
		    const struct object_actor *who);

/* Is this attribute's value hidden (key material of a sensitive or
 * unextractable key)?  Also what a find must not match on: a template
 * holding a guessed key value would otherwise confirm the guess. */
bool object_value_hidden(const struct attrs *a, CK_ATTRIBUTE_TYPE type);

/* CKR_TEMPLATE_INCONSISTENT for a private key with CKA_ALWAYS_AUTHENTICATE
 * but not CKA_PRIVATE (PKCS#11 4.9). */
CK_RV object_check_always_authenticate(const struct attrs *a);

/* Certificates that carry personal data become private objects (the
 * default; personal_data_certificates = public turns it off). */
void object_set_personal_private(bool yes);

/* A certificate made elsewhere (on a device): what the module derives
 * from its DER at creation (the CKA_KT_* attributes, missing standard
 * ones) is added; one that carries personal data is private to the
 * module, as at creation.  Malformed DER: CKR_ATTRIBUTE_VALUE_INVALID. */
CK_RV object_derive_certificate(struct attrs *a);

/* C_GetAttributeValue over one object, with the specification's per-entry
 * semantics (CK_UNAVAILABLE_INFORMATION, sensitive values, short buffers). */
CK_RV object_get_attributes(const struct attrs *a, bool complete, CK_ATTRIBUTE *tmpl,
			    CK_ULONG count);

/* Approximate size in bytes, for C_GetObjectSize. */
CK_ULONG object_size(const struct attrs *a);

/* Values of the common header attributes (defaults when absent). */
CK_OBJECT_CLASS object_class(const struct attrs *a);
bool object_is_token(const struct attrs *a);
bool object_is_private(const struct attrs *a);

#endif
