#include "object.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "certattrs.h"
#include "koltamga/pkcs11v.h"
#include "crypto.h"
#include "log.h"
#include "token.h"

/* Classes and key types an attribute row applies to. */
enum {
	C_DATA = 1u << 0,
	C_CERT = 1u << 1,
	C_PUB = 1u << 2,
	C_PRIV = 1u << 3,
	C_SECRET = 1u << 4,
	C_KEY = C_PUB | C_PRIV | C_SECRET,
	C_ALL = C_DATA | C_CERT | C_KEY,
};
enum {
	K_RSA = 1u << 0,
	K_EC = 1u << 1,
	K_ED = 1u << 2,
	K_AES = 1u << 3,
	K_GENERIC = 1u << 4,
	K_ANY = 0x1f,
};

enum value_kind { V_BYTES, V_BOOL, V_ULONG, V_DATE };

/* What may be done with an attribute, and by whom. */
enum {
	F_CREATE = 1u << 0,   /* may be given to C_CreateObject */
	F_GENERATE = 1u << 1, /* may be given to key generation / unwrap */
	F_MODIFY = 1u << 2,   /* may change later (C_SetAttributeValue, C_CopyObject) */
	F_COPY = 1u << 3,     /* may change in C_CopyObject only */
	F_REQ_CREATE = 1u << 4,
	F_REQ_GENERATE = 1u << 5,
	F_SECRET = 1u << 6,      /* key material: unreadable when sensitive or unextractable */
	F_ONLY_TRUE = 1u << 7,   /* may only change from CK_FALSE to CK_TRUE */
	F_ONLY_FALSE = 1u << 8,  /* may only change from CK_TRUE to CK_FALSE */
	F_SO_TRUE = 1u << 9,     /* only the SO may set it to CK_TRUE */
	F_GEN_OUTPUT = 1u << 10, /* made by generation, never given */
};

struct attr_rule {
	CK_ATTRIBUTE_TYPE type;
	unsigned classes;
	unsigned key_types; /* for key classes; K_ANY otherwise */
	enum value_kind kind;
	unsigned flags;
};

#define CG (F_CREATE | F_GENERATE)
#define CGM (F_CREATE | F_GENERATE | F_MODIFY)

/* One row per attribute per class group (PKCS#11 3.0, section 4). */
static const struct attr_rule rules[] = {
	/* Common to all objects */
	{ CKA_CLASS, C_ALL, K_ANY, V_ULONG, CG | F_REQ_CREATE },
	{ CKA_TOKEN, C_ALL, K_ANY, V_BOOL, CG | F_COPY },
	{ CKA_PRIVATE, C_ALL, K_ANY, V_BOOL, CG | F_COPY },
	{ CKA_MODIFIABLE, C_ALL, K_ANY, V_BOOL, CG },
	{ CKA_COPYABLE, C_ALL, K_ANY, V_BOOL, CGM | F_ONLY_FALSE },
	{ CKA_DESTROYABLE, C_ALL, K_ANY, V_BOOL, CGM },
	{ CKA_LABEL, C_ALL, K_ANY, V_BYTES, CGM },
	/* Data */
	{ CKA_APPLICATION, C_DATA, K_ANY, V_BYTES, CGM },
	{ CKA_OBJECT_ID, C_DATA, K_ANY, V_BYTES, CGM },
	{ CKA_VALUE, C_DATA, K_ANY, V_BYTES, CGM },
	{ CKA_KT_CONFIDENTIAL, C_DATA, K_ANY, V_BOOL, CGM },
	/* Certificates (X.509 only) */
	{ CKA_CERTIFICATE_TYPE, C_CERT, K_ANY, V_ULONG, F_CREATE | F_REQ_CREATE },
	{ CKA_TRUSTED, C_CERT | C_PUB | C_SECRET, K_ANY, V_BOOL, CGM | F_SO_TRUE },
	{ CKA_CERTIFICATE_CATEGORY, C_CERT, K_ANY, V_ULONG, F_CREATE },
	{ CKA_CHECK_VALUE, C_CERT, K_ANY, V_BYTES, F_CREATE },
	{ CKA_START_DATE, C_CERT | C_KEY, K_ANY, V_DATE, CGM },
	{ CKA_END_DATE, C_CERT | C_KEY, K_ANY, V_DATE, CGM },
	{ CKA_PUBLIC_KEY_INFO, C_CERT | C_PUB | C_PRIV, K_RSA | K_EC | K_ED, V_BYTES, F_CREATE },
	{ CKA_SUBJECT, C_CERT, K_ANY, V_BYTES, F_CREATE },
	{ CKA_ID, C_CERT | C_KEY, K_ANY, V_BYTES, CGM },
	{ CKA_ISSUER, C_CERT, K_ANY, V_BYTES, F_CREATE | F_MODIFY },
	{ CKA_SERIAL_NUMBER, C_CERT, K_ANY, V_BYTES, F_CREATE | F_MODIFY },
	{ CKA_VALUE, C_CERT, K_ANY, V_BYTES, F_CREATE | F_REQ_CREATE },
	{ CKA_URL, C_CERT, K_ANY, V_BYTES, F_CREATE },
	{ CKA_HASH_OF_SUBJECT_PUBLIC_KEY, C_CERT, K_ANY, V_BYTES, F_CREATE },
	{ CKA_HASH_OF_ISSUER_PUBLIC_KEY, C_CERT, K_ANY, V_BYTES, F_CREATE },
	{ CKA_JAVA_MIDP_SECURITY_DOMAIN, C_CERT, K_ANY, V_ULONG, F_CREATE },
	{ CKA_NAME_HASH_ALGORITHM, C_CERT, K_ANY, V_ULONG, F_CREATE },
	/* Keys */
	{ CKA_KEY_TYPE, C_KEY, K_ANY, V_ULONG, CG | F_REQ_CREATE },
	{ CKA_DERIVE, C_KEY, K_ANY, V_BOOL, CGM },
	{ CKA_LOCAL, C_KEY, K_ANY, V_BOOL, 0 },
	{ CKA_KEY_GEN_MECHANISM, C_KEY, K_ANY, V_ULONG, 0 },
	{ CKA_ALLOWED_MECHANISMS, C_KEY, K_ANY, V_BYTES, CG },
	{ CKA_SUBJECT, C_PUB | C_PRIV, K_ANY, V_BYTES, CGM },
	{ CKA_ENCRYPT, C_PUB | C_SECRET, K_ANY, V_BOOL, CGM },
	{ CKA_VERIFY, C_PUB | C_SECRET, K_ANY, V_BOOL, CGM },
	{ CKA_VERIFY_RECOVER, C_PUB, K_ANY, V_BOOL, CGM },
	{ CKA_WRAP, C_PUB | C_SECRET, K_ANY, V_BOOL, CGM },
	{ CKA_DECRYPT, C_PRIV | C_SECRET, K_ANY, V_BOOL, CGM },
	{ CKA_SIGN, C_PRIV | C_SECRET, K_ANY, V_BOOL, CGM },
	{ CKA_SIGN_RECOVER, C_PRIV, K_ANY, V_BOOL, CGM },
	{ CKA_UNWRAP, C_PRIV | C_SECRET, K_ANY, V_BOOL, CGM },
	{ CKA_SENSITIVE, C_PRIV | C_SECRET, K_ANY, V_BOOL, CGM | F_ONLY_TRUE },
	{ CKA_EXTRACTABLE, C_PRIV | C_SECRET, K_ANY, V_BOOL, CGM | F_ONLY_FALSE },
	{ CKA_ALWAYS_SENSITIVE, C_PRIV | C_SECRET, K_ANY, V_BOOL, 0 },
	{ CKA_NEVER_EXTRACTABLE, C_PRIV | C_SECRET, K_ANY, V_BOOL, 0 },
	{ CKA_WRAP_WITH_TRUSTED, C_PRIV | C_SECRET, K_ANY, V_BOOL, CGM | F_ONLY_TRUE },
	/* Once a key demands per-use authentication it keeps demanding it:
	 * the signing policy of later issues relies on that. */
	{ CKA_ALWAYS_AUTHENTICATE, C_PRIV, K_ANY, V_BOOL, CG },
	/* Decided by the module's configuration when the key is made; the
	 * application reads it, never sets it. */
	{ CKA_KT_SIGN_POLICY, C_PRIV, K_ANY, V_ULONG, 0 },
	{ CKA_KT_COMPROMISED, C_PRIV | C_PUB | C_CERT, K_ANY, V_BOOL, F_MODIFY | F_ONLY_TRUE },
	{ CKA_KT_COMPROMISE_REASON, C_PRIV | C_PUB | C_CERT, K_ANY, V_BYTES, F_MODIFY },
	/* RSA */
	{ CKA_MODULUS, C_PUB | C_PRIV, K_RSA, V_BYTES, F_CREATE | F_REQ_CREATE | F_GEN_OUTPUT },
	{ CKA_MODULUS_BITS, C_PUB, K_RSA, V_ULONG, F_GENERATE | F_REQ_GENERATE },
	{ CKA_PUBLIC_EXPONENT, C_PUB, K_RSA, V_BYTES, CG | F_REQ_CREATE },
	{ CKA_PUBLIC_EXPONENT, C_PRIV, K_RSA, V_BYTES, F_CREATE | F_GEN_OUTPUT },
	{ CKA_PRIVATE_EXPONENT, C_PRIV, K_RSA, V_BYTES, F_CREATE | F_REQ_CREATE | F_SECRET | F_GEN_OUTPUT },
	{ CKA_PRIME_1, C_PRIV, K_RSA, V_BYTES, F_CREATE | F_SECRET | F_GEN_OUTPUT },
	{ CKA_PRIME_2, C_PRIV, K_RSA, V_BYTES, F_CREATE | F_SECRET | F_GEN_OUTPUT },
	{ CKA_EXPONENT_1, C_PRIV, K_RSA, V_BYTES, F_CREATE | F_SECRET | F_GEN_OUTPUT },
	{ CKA_EXPONENT_2, C_PRIV, K_RSA, V_BYTES, F_CREATE | F_SECRET | F_GEN_OUTPUT },
	{ CKA_COEFFICIENT, C_PRIV, K_RSA, V_BYTES, F_CREATE | F_SECRET | F_GEN_OUTPUT },
	/* EC and EdDSA */
	{ CKA_EC_PARAMS, C_PUB, K_EC | K_ED, V_BYTES, CG | F_REQ_CREATE | F_REQ_GENERATE },
	{ CKA_EC_PARAMS, C_PRIV, K_EC | K_ED, V_BYTES, CG | F_REQ_CREATE },
	{ CKA_EC_POINT, C_PUB, K_EC | K_ED, V_BYTES, F_CREATE | F_REQ_CREATE | F_GEN_OUTPUT },
	{ CKA_VALUE, C_PRIV, K_EC | K_ED, V_BYTES, F_CREATE | F_REQ_CREATE | F_SECRET | F_GEN_OUTPUT },
	/* Secret keys */
	{ CKA_VALUE, C_SECRET, K_AES | K_GENERIC, V_BYTES, F_CREATE | F_REQ_CREATE | F_SECRET | F_GEN_OUTPUT },
	{ CKA_VALUE_LEN, C_SECRET, K_AES | K_GENERIC, V_ULONG, F_GENERATE },
	{ CKA_CHECK_VALUE, C_SECRET, K_AES | K_GENERIC, V_BYTES, F_CREATE | F_GEN_OUTPUT },
};

static unsigned class_bit(CK_OBJECT_CLASS cls)
{
	switch (cls) {
	case CKO_DATA:
		return C_DATA;
	case CKO_CERTIFICATE:
		return C_CERT;
	case CKO_PUBLIC_KEY:
		return C_PUB;
	case CKO_PRIVATE_KEY:
		return C_PRIV;
	case CKO_SECRET_KEY:
		return C_SECRET;
	default:
		return 0;
	}
}

static unsigned key_bit(CK_KEY_TYPE kt)
{
	switch (kt) {
	case CKK_RSA:
		return K_RSA;
	case CKK_EC:
		return K_EC;
	case CKK_EC_EDWARDS:
		return K_ED;
	case CKK_AES:
		return K_AES;
	case CKK_GENERIC_SECRET:
		return K_GENERIC;
	default:
		return 0;
	}
}

static bool kt_fits_class(unsigned cbit, unsigned kbit)
{
	if (cbit == C_SECRET)
		return kbit & (K_AES | K_GENERIC);
	if (cbit & (C_PUB | C_PRIV))
		return kbit & (K_RSA | K_EC | K_ED);
	return true;
}

static const struct attr_rule *rule_find(CK_ATTRIBUTE_TYPE type, unsigned cbit, unsigned kbit)
{
	for (size_t i = 0; i < KT_ARRAY_SIZE(rules); i++) {
		const struct attr_rule *r = &rules[i];
		if (r->type != type || !(r->classes & cbit))
			continue;
		if ((cbit & C_KEY) && !(r->key_types & kbit))
			continue;
		return r;
	}
	return NULL;
}

/* Is `type` an attribute PKCS#11 defines at all (for any class)?  Tells
 * CKR_ATTRIBUTE_TYPE_INVALID from CKR_TEMPLATE_INCONSISTENT. */
static bool rule_known(CK_ATTRIBUTE_TYPE type)
{
	for (size_t i = 0; i < KT_ARRAY_SIZE(rules); i++)
		if (rules[i].type == type)
			return true;
	return false;
}

static CK_RV check_value(const struct attr_rule *r, const CK_ATTRIBUTE *a)
{
	switch (r->kind) {
	case V_BOOL:
		if (a->ulValueLen != sizeof(CK_BBOOL))
			return CKR_ATTRIBUTE_VALUE_INVALID;
		if (*(const CK_BBOOL *)a->pValue != CK_TRUE && *(const CK_BBOOL *)a->pValue != CK_FALSE)
			return CKR_ATTRIBUTE_VALUE_INVALID;
		return CKR_OK;
	case V_ULONG:
		return a->ulValueLen == sizeof(CK_ULONG) ? CKR_OK : CKR_ATTRIBUTE_VALUE_INVALID;
	case V_DATE:
		/* Empty means "no date"; otherwise YYYYMMDD in ASCII digits. */
		if (a->ulValueLen == 0)
			return CKR_OK;
		if (a->ulValueLen != sizeof(CK_DATE))
			return CKR_ATTRIBUTE_VALUE_INVALID;
		for (CK_ULONG i = 0; i < a->ulValueLen; i++) {
			CK_BYTE c = ((const CK_BYTE *)a->pValue)[i];
			if (c < '0' || c > '9')
				return CKR_ATTRIBUTE_VALUE_INVALID;
		}
		return CKR_OK;
	case V_BYTES:
		return CKR_OK;
	}
	return CKR_ATTRIBUTE_VALUE_INVALID;
}

CK_RV object_template_read(const CK_ATTRIBUTE *tmpl, CK_ULONG count, struct attrs **out)
{
	CK_RV rv = CKR_HOST_MEMORY;
	struct attrs *a = NULL;

	if (count && !tmpl)
		return CKR_ARGUMENTS_BAD;
	a = attrs_new();
	if (!a)
		goto out;
	for (CK_ULONG i = 0; i < count; i++) {
		const CK_ATTRIBUTE *t = &tmpl[i];
		if (!t->pValue && t->ulValueLen) {
			rv = CKR_ATTRIBUTE_VALUE_INVALID;
			goto out;
		}
		/* A value longer than any attribute could be is a hostile or
		 * broken template; refuse before copying it. */
		if (t->ulValueLen > ATTR_MAX_LEN) {
			rv = CKR_ATTRIBUTE_VALUE_INVALID;
			goto out;
		}
		if (attrs_has(a, t->type)) {
			rv = CKR_TEMPLATE_INCONSISTENT;
			goto out;
		}
		rv = attrs_set(a, t->type, t->pValue, t->ulValueLen);
		if (rv != CKR_OK)
			goto out;
	}
	*out = a;
	a = NULL;
	rv = CKR_OK;
out:
	attrs_free(a);
	return rv;
}

CK_OBJECT_CLASS object_class(const struct attrs *a)
{
	CK_ULONG cls = CKO_VENDOR_DEFINED;
	attrs_get_ulong(a, CKA_CLASS, &cls);
	return cls;
}

bool object_is_token(const struct attrs *a)
{
	return attrs_bool(a, CKA_TOKEN, false);
}

bool object_is_private(const struct attrs *a)
{
	return attrs_bool(a, CKA_PRIVATE, false);
}

static CK_RV set_default_bool(struct attrs *a, CK_ATTRIBUTE_TYPE type, bool v)
{
	return attrs_has(a, type) ? CKR_OK : attrs_set_bool(a, type, v);
}

static CK_RV set_default_empty(struct attrs *a, CK_ATTRIBUTE_TYPE type)
{
	return attrs_has(a, type) ? CKR_OK : attrs_set(a, type, NULL, 0);
}

static CK_RV fill_defaults(struct attrs *a, unsigned cbit, enum object_origin origin,
			   CK_MECHANISM_TYPE gen_mech)
{
	CK_RV rv = CKR_OK;
	bool is_key = cbit & C_KEY;
	bool secretish = cbit & (C_PRIV | C_SECRET);

#define TRY(x)                                                                                     \
	do {                                                                                       \
		rv = (x);                                                                          \
		if (rv != CKR_OK)                                                                  \
			return rv;                                                                 \
	} while (0)
	TRY(set_default_bool(a, CKA_TOKEN, false));
	/* Private and secret keys are private objects unless asked otherwise:
	 * the safe default for a signing token. */
	TRY(set_default_bool(a, CKA_PRIVATE, secretish));
	TRY(set_default_bool(a, CKA_MODIFIABLE, true));
	TRY(set_default_bool(a, CKA_COPYABLE, true));
	TRY(set_default_bool(a, CKA_DESTROYABLE, true));
	TRY(set_default_empty(a, CKA_LABEL));
	if (cbit == C_DATA) {
		TRY(set_default_empty(a, CKA_APPLICATION));
		TRY(set_default_empty(a, CKA_OBJECT_ID));
		TRY(set_default_empty(a, CKA_VALUE));
	}
	if (cbit == C_CERT) {
		TRY(set_default_bool(a, CKA_TRUSTED, false));
		if (!attrs_has(a, CKA_CERTIFICATE_CATEGORY))
			TRY(attrs_set_ulong(a, CKA_CERTIFICATE_CATEGORY, 0));
		TRY(set_default_empty(a, CKA_ID));
		TRY(set_default_empty(a, CKA_START_DATE));
		TRY(set_default_empty(a, CKA_END_DATE));
		TRY(set_default_empty(a, CKA_URL));
		TRY(set_default_empty(a, CKA_HASH_OF_SUBJECT_PUBLIC_KEY));
		TRY(set_default_empty(a, CKA_HASH_OF_ISSUER_PUBLIC_KEY));
	}
	if (is_key) {
		bool local = origin == ORIGIN_GENERATE;
		TRY(set_default_empty(a, CKA_ID));
		TRY(set_default_empty(a, CKA_START_DATE));
		TRY(set_default_empty(a, CKA_END_DATE));
		TRY(set_default_bool(a, CKA_DERIVE, false));
		TRY(attrs_set_bool(a, CKA_LOCAL, local));
		TRY(attrs_set_ulong(a, CKA_KEY_GEN_MECHANISM, local ? gen_mech : CK_UNAVAILABLE_INFORMATION));
	}
	if (cbit & (C_PUB | C_PRIV))
		TRY(set_default_empty(a, CKA_SUBJECT));
	if (cbit & (C_PUB | C_PRIV | C_CERT))
		TRY(set_default_bool(a, CKA_KT_COMPROMISED, false));
	if (cbit & (C_PUB | C_SECRET)) {
		TRY(set_default_bool(a, CKA_ENCRYPT, cbit == C_PUB));
		TRY(set_default_bool(a, CKA_VERIFY, true));
		TRY(set_default_bool(a, CKA_WRAP, false));
		TRY(set_default_bool(a, CKA_TRUSTED, false));
	}
	if (cbit == C_PUB)
		TRY(set_default_bool(a, CKA_VERIFY_RECOVER, false));
	if (secretish) {
		TRY(set_default_bool(a, CKA_DECRYPT, cbit == C_PRIV));
		TRY(set_default_bool(a, CKA_SIGN, true));
		TRY(set_default_bool(a, CKA_UNWRAP, false));
		TRY(set_default_bool(a, CKA_SENSITIVE, true));
		TRY(set_default_bool(a, CKA_EXTRACTABLE, false));
		TRY(set_default_bool(a, CKA_WRAP_WITH_TRUSTED, false));
		/* "Always"/"never" describe the key's whole life: only a key
		 * born here can claim them. */
		bool sensitive = attrs_bool(a, CKA_SENSITIVE, true);
		bool extractable = attrs_bool(a, CKA_EXTRACTABLE, false);
		TRY(attrs_set_bool(a, CKA_ALWAYS_SENSITIVE, origin == ORIGIN_GENERATE && sensitive));
		TRY(attrs_set_bool(a, CKA_NEVER_EXTRACTABLE, origin == ORIGIN_GENERATE && !extractable));
	}
	if (cbit == C_PRIV) {
		TRY(set_default_bool(a, CKA_SIGN_RECOVER, false));
		TRY(set_default_bool(a, CKA_ALWAYS_AUTHENTICATE, false));
	}
#undef TRY
	return rv;
}

static bool personal_private = true;

void object_set_personal_private(bool yes)
{
	personal_private = yes;
}

static bool carries_personal_data(const struct attrs *a)
{
	for (size_t i = 0; i < attrs_count(a); i++)
		if (certattrs_is_personal(attrs_at(a, i)->type))
			return true;
	return false;
}

/*
 * CKA_SERIAL_NUMBER is the DER encoding of the serial (PKCS#11 4.6.3), but
 * Java's SunPKCS11 stores BigInteger.toByteArray(): the INTEGER's content
 * without tag and length.  The same number, so it is accepted and stored
 * in the specification's form.
 */
static bool serial_content_matches(const CK_ATTRIBUTE *derived, const CK_ATTRIBUTE *given)
{
	const CK_BYTE *d = derived->pValue;
	CK_ULONG n = derived->ulValueLen, hdr;
	if (derived->type != CKA_SERIAL_NUMBER || n < 3 || d[0] != 0x02)
		return false;
	if (d[1] < 0x80)
		hdr = 2;
	else if (d[1] == 0x81)
		hdr = 3;
	else
		return false; /* serials are at most 20 octets (RFC 5280) */
	return n > hdr && given->ulValueLen == n - hdr && memcmp(given->pValue, d + hdr, n - hdr) == 0;
}

/* A certificate's DER must be one whole X.509 certificate.  What it says
 * (names, serial, dates, key, the law's fields) becomes attributes; a value
 * the template gives must agree with it.  Runs before the defaults are
 * filled, so "given" means given by the application. */
static CK_RV check_certificate(struct attrs *a)
{
	CK_RV rv;
	CK_ULONG ctype;
	struct attrs *derived = NULL;

	if (!attrs_get_ulong(a, CKA_CERTIFICATE_TYPE, &ctype))
		return CKR_TEMPLATE_INCOMPLETE;
	if (ctype != CKC_X_509)
		return CKR_ATTRIBUTE_VALUE_INVALID;
	const CK_ATTRIBUTE *v = attrs_get(a, CKA_VALUE);
	if (!v)
		return CKR_TEMPLATE_INCOMPLETE;
	rv = certattrs_derive(v->pValue, v->ulValueLen, &derived);
	if (rv != CKR_OK)
		return rv;
	for (size_t i = 0; i < attrs_count(derived) && rv == CKR_OK; i++) {
		const CK_ATTRIBUTE *d = attrs_at(derived, i);
		const CK_ATTRIBUTE *given = attrs_get(a, d->type);
		/* The category says how the application uses the certificate
		 * (its own, an authority's, another party's): its call. */
		if (given && d->type == CKA_CERTIFICATE_CATEGORY)
			continue;
		if (!given || given->ulValueLen == 0 || serial_content_matches(d, given))
			rv = attrs_set(a, d->type, d->pValue, d->ulValueLen);
		else if (!attrs_match(derived, given))
			rv = CKR_TEMPLATE_INCONSISTENT;
	}
	/* Birth date, personal number, a person's address: not for anyone
	 * who merely lists the token's certificates.  Whatever the template
	 * says (the law's rule; the configuration may lift it). */
	if (rv == CKR_OK && personal_private && carries_personal_data(derived) && !attrs_bool(a, CKA_PRIVATE, false)) {
		if (attrs_has(a, CKA_PRIVATE))
			kt_log("a certificate carrying personal data is stored as a private object "
			       "(personal_data_certificates = public allows otherwise)");
		rv = attrs_set_bool(a, CKA_PRIVATE, true);
	}
	attrs_free(derived);
	return rv;
}

CK_RV object_derive_certificate(struct attrs *a)
{
	const CK_ATTRIBUTE *v = attrs_get(a, CKA_VALUE);
	struct attrs *derived = NULL;
	CK_ULONG ctype;
	if (!v || !attrs_get_ulong(a, CKA_CERTIFICATE_TYPE, &ctype) || ctype != CKC_X_509)
		return CKR_OK;
	CK_RV rv = certattrs_derive(v->pValue, v->ulValueLen, &derived);
	if (rv != CKR_OK)
		return rv;
	for (size_t i = 0; i < attrs_count(derived) && rv == CKR_OK; i++) {
		const CK_ATTRIBUTE *d = attrs_at(derived, i);
		if (!attrs_has(a, d->type))
			rv = attrs_set(a, d->type, d->pValue, d->ulValueLen);
	}
	if (rv == CKR_OK && personal_private && carries_personal_data(derived))
		rv = attrs_set_bool(a, CKA_PRIVATE, true);
	attrs_free(derived);
	return rv;
}

/* PKCS#11 4.9: CKA_ALWAYS_AUTHENTICATE may only be true on a private
 * object (a key anyone can find without logging in cannot ask for a PIN
 * at every use). */
CK_RV object_check_always_authenticate(const struct attrs *a)
{
	if (object_class(a) == CKO_PRIVATE_KEY && attrs_bool(a, CKA_ALWAYS_AUTHENTICATE, false) &&
	    !attrs_bool(a, CKA_PRIVATE, true))
		return CKR_TEMPLATE_INCONSISTENT;
	return CKR_OK;
}

CK_RV object_build(struct attrs *a, enum object_origin origin, CK_OBJECT_CLASS cls, CK_KEY_TYPE kt,
		   CK_MECHANISM_TYPE gen_mech, const struct object_actor *who)
{
	CK_RV rv;
	CK_ULONG v;

	/* Class and key type: from the template at creation, from the
	 * mechanism at generation (and then the template may only agree). */
	if (origin == ORIGIN_CREATE) {
		if (!attrs_has(a, CKA_CLASS))
			return CKR_TEMPLATE_INCOMPLETE;
		if (!attrs_get_ulong(a, CKA_CLASS, &cls))
			return CKR_ATTRIBUTE_VALUE_INVALID;
	} else {
		if (attrs_has(a, CKA_CLASS)) {
			if (!attrs_get_ulong(a, CKA_CLASS, &v))
				return CKR_ATTRIBUTE_VALUE_INVALID;
			if (v != cls)
				return CKR_TEMPLATE_INCONSISTENT;
		}
		rv = attrs_set_ulong(a, CKA_CLASS, cls);
		if (rv != CKR_OK)
			return rv;
	}
	unsigned cbit = class_bit(cls);
	if (!cbit)
		return CKR_ATTRIBUTE_VALUE_INVALID;
	unsigned kbit = K_ANY;
	if (cbit & C_KEY) {
		if (origin == ORIGIN_CREATE || (origin == ORIGIN_UNWRAP && kt == CKK_VENDOR_DEFINED)) {
			if (!attrs_has(a, CKA_KEY_TYPE))
				return CKR_TEMPLATE_INCOMPLETE;
			if (!attrs_get_ulong(a, CKA_KEY_TYPE, &kt))
				return CKR_ATTRIBUTE_VALUE_INVALID;
		} else if (attrs_has(a, CKA_KEY_TYPE)) {
			if (!attrs_get_ulong(a, CKA_KEY_TYPE, &v))
				return CKR_ATTRIBUTE_VALUE_INVALID;
			if (v != kt)
				return CKR_TEMPLATE_INCONSISTENT;
		}
		kbit = key_bit(kt);
		if (!kbit || !kt_fits_class(cbit, kbit))
			return CKR_ATTRIBUTE_VALUE_INVALID;
		rv = attrs_set_ulong(a, CKA_KEY_TYPE, kt);
		if (rv != CKR_OK)
			return rv;
	}

	unsigned may = origin == ORIGIN_CREATE ? F_CREATE : F_GENERATE;
	for (size_t i = 0; i < attrs_count(a); i++) {
		const CK_ATTRIBUTE *at = attrs_at(a, i);
		const struct attr_rule *r = rule_find(at->type, cbit, kbit);
		if (!r && cbit == C_CERT && certattrs_is_derived(at->type))
			return CKR_ATTRIBUTE_READ_ONLY;
		if (!r) {
			kt_debug(KT_DBG_OBJECT, "%s (0x%lx) not valid for class 0x%lx",
				 kt_attr_name(at->type), at->type, cls);
			return rule_known(at->type) ? CKR_TEMPLATE_INCONSISTENT : CKR_ATTRIBUTE_TYPE_INVALID;
		}
		if (at->type == CKA_CLASS || at->type == CKA_KEY_TYPE)
			continue;
		if (!(r->flags & may)) {
			/* Unwrap carries the key value in the wrapped blob, not the template. */
			kt_debug(KT_DBG_OBJECT, "%s may not be given here", kt_attr_name(at->type));
			return CKR_ATTRIBUTE_READ_ONLY;
		}
		rv = check_value(r, at);
		if (rv != CKR_OK)
			return rv;
		if ((r->flags & F_SO_TRUE) && attrs_bool(a, at->type, false) && !who->so)
			return CKR_ATTRIBUTE_READ_ONLY;
	}
	unsigned req = origin == ORIGIN_CREATE ? F_REQ_CREATE : F_REQ_GENERATE;
	if (origin != ORIGIN_UNWRAP) {
		for (size_t i = 0; i < KT_ARRAY_SIZE(rules); i++) {
			const struct attr_rule *r = &rules[i];
			if (!(r->flags & req) || !(r->classes & cbit))
				continue;
			if ((cbit & C_KEY) && !(r->key_types & kbit))
				continue;
			if (!attrs_has(a, r->type))
				return CKR_TEMPLATE_INCOMPLETE;
		}
	}

	if (origin == ORIGIN_CREATE && cbit == C_CERT) {
		rv = check_certificate(a);
		if (rv != CKR_OK)
			return rv;
	}
	rv = fill_defaults(a, cbit, origin, gen_mech);
	if (rv == CKR_OK)
		rv = object_check_always_authenticate(a);
	if (rv != CKR_OK)
		return rv;
	if (origin == ORIGIN_CREATE && (cbit & C_KEY))
		return crypto_check_key(cls, kt, a);
	return CKR_OK;
}

CK_RV object_modify(struct attrs *a, const struct attrs *tmpl, bool copy,
		    const struct object_actor *who)
{
	CK_OBJECT_CLASS cls = object_class(a);
	CK_ULONG kt = CKK_VENDOR_DEFINED;
	attrs_get_ulong(a, CKA_KEY_TYPE, &kt);
	unsigned cbit = class_bit(cls), kbit = (cbit & C_KEY) ? key_bit(kt) : K_ANY;
	CK_RV rv;

	if (!copy && !attrs_bool(a, CKA_MODIFIABLE, true))
		return CKR_ATTRIBUTE_READ_ONLY;
	/* Check everything first, so a failure changes nothing. */
	for (size_t i = 0; i < attrs_count(tmpl); i++) {
		const CK_ATTRIBUTE *t = attrs_at(tmpl, i);
		const struct attr_rule *r = rule_find(t->type, cbit, kbit);
		if (!r)
			return rule_known(t->type) || (cbit == C_CERT && certattrs_is_derived(t->type))
				       ? CKR_ATTRIBUTE_READ_ONLY
				       : CKR_ATTRIBUTE_TYPE_INVALID;
		rv = check_value(r, t);
		if (rv != CKR_OK)
			return rv;
		/* Setting an attribute to the value it has is no change. */
		if (attrs_match(a, t))
			continue;
		bool allowed = (r->flags & F_MODIFY) || (copy && (r->flags & F_COPY));
		/* On a copy the read-only "modifiable" itself may be lowered. */
		if (copy && t->type == CKA_MODIFIABLE && !attrs_bool(tmpl, CKA_MODIFIABLE, true))
			allowed = true;
		if (!allowed)
			return CKR_ATTRIBUTE_READ_ONLY;
		/* A copy may not turn a private or secret key into a public
		 * object: that would outlive the login that guards it.  Nor a
		 * certificate carrying personal data. */
		if (t->type == CKA_PRIVATE &&
		    (cls == CKO_PRIVATE_KEY || cls == CKO_SECRET_KEY ||
		     (cls == CKO_CERTIFICATE && personal_private && carries_personal_data(a))) &&
		    !attrs_bool(tmpl, CKA_PRIVATE, true) && attrs_bool(a, CKA_PRIVATE, true))
			return CKR_ATTRIBUTE_READ_ONLY;
		if (r->kind == V_BOOL) {
			bool now = attrs_bool(tmpl, t->type, false);
			if ((r->flags & F_ONLY_TRUE) && !now && attrs_bool(a, t->type, false))
				return CKR_ATTRIBUTE_READ_ONLY;
			if ((r->flags & F_ONLY_FALSE) && now)
				return CKR_ATTRIBUTE_READ_ONLY;
			if ((r->flags & F_SO_TRUE) && now && !who->so)
				return CKR_ATTRIBUTE_READ_ONLY;
		}
	}
	for (size_t i = 0; i < attrs_count(tmpl); i++) {
		const CK_ATTRIBUTE *t = attrs_at(tmpl, i);
		rv = attrs_set(a, t->type, t->pValue, t->ulValueLen);
		if (rv != CKR_OK)
			return rv;
	}
	return CKR_OK;
}

bool object_value_hidden(const struct attrs *a, CK_ATTRIBUTE_TYPE type)
{
	CK_OBJECT_CLASS cls = object_class(a);
	if (cls != CKO_PRIVATE_KEY && cls != CKO_SECRET_KEY)
		return false;
	CK_ULONG kt = CKK_VENDOR_DEFINED;
	attrs_get_ulong(a, CKA_KEY_TYPE, &kt);
	const struct attr_rule *r = rule_find(type, class_bit(cls), key_bit(kt));
	if (!r || !(r->flags & F_SECRET))
		return false;
	return attrs_bool(a, CKA_SENSITIVE, true) || !attrs_bool(a, CKA_EXTRACTABLE, false);
}

CK_RV object_get_attributes(const struct attrs *a, bool complete, CK_ATTRIBUTE *tmpl,
			    CK_ULONG count)
{
	CK_RV rv = CKR_OK;

	/* Every entry is answered even after an error; the spec lets us
	 * return any one of the errors met. */
	for (CK_ULONG i = 0; i < count; i++) {
		CK_ATTRIBUTE *t = &tmpl[i];
		const CK_ATTRIBUTE *have = attrs_get(a, t->type);
		if (object_value_hidden(a, t->type) || (!have && !complete && token_attr_is_secret(object_class(a), t->type))) {
			t->ulValueLen = CK_UNAVAILABLE_INFORMATION;
			rv = CKR_ATTRIBUTE_SENSITIVE;
			continue;
		}
		if (!have) {
			t->ulValueLen = CK_UNAVAILABLE_INFORMATION;
			if (rv == CKR_OK)
				rv = CKR_ATTRIBUTE_TYPE_INVALID;
			continue;
		}
		if (!t->pValue) {
			t->ulValueLen = have->ulValueLen;
			continue;
		}
		if (t->ulValueLen < have->ulValueLen) {
			t->ulValueLen = CK_UNAVAILABLE_INFORMATION;
			if (rv == CKR_OK)
				rv = CKR_BUFFER_TOO_SMALL;
			continue;
		}
		memcpy(t->pValue, have->pValue, have->ulValueLen);
		t->ulValueLen = have->ulValueLen;
	}
	return rv;
}

CK_ULONG object_size(const struct attrs *a)
{
	CK_ULONG size = 0;
	for (size_t i = 0; i < attrs_count(a); i++)
		size += sizeof(CK_ATTRIBUTE) + attrs_at(a, i)->ulValueLen;
	return size;
}
