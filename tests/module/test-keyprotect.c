/*
 * Key protection, through the real module: no PKCS#11 path yields the value
 * of a sensitive or unextractable key, or lowers its protection.
 *
 * Every path has its negative tests and a positive control showing that the
 * path itself works where it is legitimate.  The authority is the PKCS#11
 * 3.0 base specification (pkcs11-base-v3.0-os), cited by section:
 *
 *   4.1.1-4.1.3  template rules of creation, C_SetAttributeValue, C_CopyObject
 *   4.2 Table 11 footnotes: 2/4/6 "MUST not be specified" at creation,
 *                generation, unwrap; 7 "cannot be revealed if CKA_SENSITIVE
 *                is CK_TRUE or CKA_EXTRACTABLE is CK_FALSE"; 8 modifiable;
 *                10 only the SO sets CK_TRUE; 11 read-only once CK_TRUE;
 *                12 read-only once CK_FALSE
 *   4.4          only CKA_LABEL of the storage attributes is modifiable;
 *                CKA_TOKEN/CKA_PRIVATE/CKA_MODIFIABLE change only on a copy
 *   4.7, 4.9, 4.10  key, private key, secret key attributes
 *   5.1.6        return value definitions (CKR_KEY_UNEXTRACTABLE,
 *                CKR_KEY_NOT_WRAPPABLE, CKR_FUNCTION_NOT_SUPPORTED, ...)
 *   5.7          C_CreateObject, C_CopyObject, C_GetAttributeValue,
 *                C_SetAttributeValue
 *   5.18         C_GenerateKey(Pair), C_WrapKey, C_UnwrapKey, C_DeriveKey
 *
 * Where the specification allows several codes the test accepts exactly
 * those (ASSERT_RV_IN), with the section that allows them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>

#include "certfix.h"
#include "fixture.h"
#include "koltamga/pkcs11v.h"

#define F    (fx.f)
#define FILL 0xA5 /* what an output buffer holds before a refused call */

static CK_SLOT_ID slot;
static CK_SESSION_HANDLE s; /* R/W, user logged in */

static CK_OBJECT_CLASS c_secret = CKO_SECRET_KEY, c_priv = CKO_PRIVATE_KEY;
static CK_KEY_TYPE k_aes = CKK_AES, k_generic = CKK_GENERIC_SECRET, k_ec = CKK_EC;
static const CK_BYTE aes_value[32] = "an AES-256 key of thirty-two by";

static int setup(void **state)
{
	if (fixture_setup(state) != 0)
		return -1;
	slot = fixture_init_token_label("keyprot");
	s = fixture_open_user_session(slot);
	return 0;
}

/* --- helpers ---------------------------------------------------------------- */

/* rv must be one of the codes the specification allows for this case. */
static void rv_in(CK_RV got, const CK_RV *allowed, size_t n, const char *call, const char *file, int line)
{
	char want[256] = "";
	size_t used = 0;

	for (size_t i = 0; i < n; i++) {
		if (got == allowed[i])
			return;
		used +=
		    (size_t)snprintf(want + used, sizeof(want) - used, "%s0x%lx", i ? ", " : "", allowed[i]);
		if (used >= sizeof(want))
			break;
	}
	fail_msg("%s:%d: %s = 0x%lx, expected one of { %s }", file, line, call, got, want);
}
#define ASSERT_RV_IN(call, ...)                                                                              \
	rv_in((call), (const CK_RV[]){ __VA_ARGS__ },                                                        \
	      sizeof((const CK_RV[]){ __VA_ARGS__ }) / sizeof(CK_RV), #call, __FILE__, __LINE__)

static CK_BBOOL get_bool(CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type)
{
	return fixture_get_bool(s, h, type);
}

static CK_ULONG get_ulong(CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type)
{
	CK_ULONG v = 0;
	CK_ATTRIBUTE a = { type, &v, sizeof(v) };

	assert_int_equal(F->C_GetAttributeValue(s, h, &a, 1), CKR_OK);
	assert_int_equal(a.ulValueLen, sizeof(CK_ULONG));
	return v;
}

static CK_ULONG count_objects(void)
{
	return fixture_count_objects(s, NULL, 0);
}

static bool all_fill(const CK_BYTE *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (b[i] != FILL)
			return false;
	return true;
}

/* 5.7.5 case 1: a value that cannot be revealed is CK_UNAVAILABLE_INFORMATION
 * and the call returns CKR_ATTRIBUTE_SENSITIVE, for a read and for a size
 * query; nothing of the value reaches the caller's buffer. */
static void expect_hidden(CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type)
{
	CK_BYTE buf[1024];
	CK_ATTRIBUTE a = { type, buf, sizeof(buf) };

	memset(buf, FILL, sizeof(buf));
	assert_int_equal(F->C_GetAttributeValue(s, h, &a, 1), CKR_ATTRIBUTE_SENSITIVE);
	assert_int_equal(a.ulValueLen, CK_UNAVAILABLE_INFORMATION);
	assert_true(all_fill(buf, sizeof(buf)));
	a.pValue = NULL;
	a.ulValueLen = 0;
	assert_int_equal(F->C_GetAttributeValue(s, h, &a, 1), CKR_ATTRIBUTE_SENSITIVE);
	assert_int_equal(a.ulValueLen, CK_UNAVAILABLE_INFORMATION);
}

/* --- key pairs --------------------------------------------------------------- */

enum pair_kind { K_RSA, K_EC, K_ED, N_KINDS };

static const CK_ATTRIBUTE_TYPE rsa_secrets[] = { CKA_PRIVATE_EXPONENT, CKA_PRIME_1,    CKA_PRIME_2,
						 CKA_EXPONENT_1,       CKA_EXPONENT_2, CKA_COEFFICIENT };
static const CK_ATTRIBUTE_TYPE ec_secrets[] = { CKA_VALUE };

static const struct {
	const char *name;
	CK_MECHANISM_TYPE gen, sign;
	const CK_ATTRIBUTE_TYPE *secrets;
	size_t n_secrets;
} kinds[N_KINDS] = {
	[K_RSA] = { "RSA", CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_SHA256_RSA_PKCS, rsa_secrets,
		    FX_COUNT(rsa_secrets) },
	[K_EC] = { "EC", CKM_EC_KEY_PAIR_GEN, CKM_ECDSA_SHA256, ec_secrets, FX_COUNT(ec_secrets) },
	[K_ED] = { "EdDSA", CKM_EC_EDWARDS_KEY_PAIR_GEN, CKM_EDDSA, ec_secrets, FX_COUNT(ec_secrets) },
};

static CK_ULONG rsa_bits = 2048;
static CK_BYTE rsa_e[] = { 0x01, 0x00, 0x01 };

static CK_ULONG pub_template(enum pair_kind k, CK_ATTRIBUTE *t)
{
	switch (k) {
	case K_RSA:
		t[0] = (CK_ATTRIBUTE){ CKA_MODULUS_BITS, &rsa_bits, sizeof(rsa_bits) };
		t[1] = (CK_ATTRIBUTE){ CKA_PUBLIC_EXPONENT, rsa_e, sizeof(rsa_e) };
		return 2;
	case K_EC:
		t[0] = (CK_ATTRIBUTE){ CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len };
		return 1;
	default:
		t[0] = (CK_ATTRIBUTE){ CKA_EC_PARAMS, (void *)fx_ed25519, fx_ed25519_len };
		return 1;
	}
}

/* A pair on top of the fixture's private-key defaults (session object,
 * CKA_PRIVATE, CKA_SENSITIVE, CKA_SIGN); `extra` replaces or adds. */
static CK_RV try_pair(enum pair_kind k, const CK_ATTRIBUTE *extra, CK_ULONG n, CK_OBJECT_HANDLE *pub,
		      CK_OBJECT_HANDLE *priv)
{
	CK_ATTRIBUTE pt[4];
	CK_ULONG npt = pub_template(k, pt);

	return fixture_gen_keypair(s, kinds[k].gen, pt, npt, extra, n, pub, priv);
}

static void pair(enum pair_kind k, const CK_ATTRIBUTE *extra, CK_ULONG n, CK_OBJECT_HANDLE *pub,
		 CK_OBJECT_HANDLE *priv)
{
	assert_int_equal(try_pair(k, extra, n, pub, priv), CKR_OK);
}

/* The private key signs and the public key verifies: the key still works. */
static void signs(enum pair_kind k, CK_OBJECT_HANDLE pub, CK_OBJECT_HANDLE priv)
{
	CK_MECHANISM m = { kinds[k].sign, NULL, 0 };
	static const char msg[] = "the protections did not break the key";
	CK_BYTE sig[512];
	CK_ULONG sl = sizeof(sig);

	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_OK);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg) - 1, sig, &sl), CKR_OK);
	assert_int_equal(F->C_VerifyInit(s, &m, pub), CKR_OK);
	assert_int_equal(F->C_Verify(s, (CK_BYTE_PTR)msg, sizeof(msg) - 1, sig, sl), CKR_OK);
}

/* --- secret keys --------------------------------------------------------------- */

static CK_RV try_aes(const CK_ATTRIBUTE *extra, CK_ULONG n, CK_OBJECT_HANDLE *h)
{
	return fixture_gen_aes(s, 32, extra, n, h);
}

static CK_OBJECT_HANDLE aes(const CK_ATTRIBUTE *extra, CK_ULONG n)
{
	CK_OBJECT_HANDLE h;

	assert_int_equal(try_aes(extra, n, &h), CKR_OK);
	return h;
}

static CK_OBJECT_HANDLE generic(const CK_ATTRIBUTE *extra, CK_ULONG n)
{
	CK_MECHANISM m = { CKM_GENERIC_SECRET_KEY_GEN, NULL, 0 };
	CK_ULONG len = 32;
	CK_ATTRIBUTE base[] = {
		{ CKA_TOKEN, &fx_false, 1 },
		{ CKA_VALUE_LEN, &len, sizeof(len) },
		{ CKA_SIGN, &fx_true, 1 },
	};
	CK_ATTRIBUTE t[24];
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;

	assert_true(n <= 16);
	assert_int_equal(F->C_GenerateKey(s, &m, t, fixture_merge(t, base, FX_COUNT(base), extra, n), &h), CKR_OK);
	return h;
}

static CK_RV try_import_aes(const CK_ATTRIBUTE *extra, CK_ULONG n, CK_OBJECT_HANDLE *h)
{
	CK_ATTRIBUTE base[] = {
		{ CKA_CLASS, &c_secret, sizeof(c_secret) },
		{ CKA_KEY_TYPE, &k_aes, sizeof(k_aes) },
		{ CKA_TOKEN, &fx_false, 1 },
		{ CKA_VALUE, (void *)aes_value, sizeof(aes_value) },
		{ CKA_ENCRYPT, &fx_true, 1 },
	};
	CK_ATTRIBUTE t[24];

	assert_true(n <= 16);
	*h = CK_INVALID_HANDLE;
	return F->C_CreateObject(s, t, fixture_merge(t, base, FX_COUNT(base), extra, n), h);
}

/* An imported EC P-256 private key (and its scalar, for comparisons). */
struct ec_import {
	CK_BYTE scalar[32];
	CK_BYTE point[2 + 65]; /* DER OCTET STRING of the uncompressed point */
};

static void ec_material(struct ec_import *m)
{
	EVP_PKEY *pk = EVP_EC_gen("P-256");
	BIGNUM *bn = NULL;
	size_t pl = 0;

	assert_non_null(pk);
	assert_true(EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_PRIV_KEY, &bn));
	assert_int_equal(BN_bn2binpad(bn, m->scalar, 32), 32);
	BN_free(bn);
	m->point[0] = 0x04;
	m->point[1] = 65;
	assert_true(EVP_PKEY_get_octet_string_param(pk, OSSL_PKEY_PARAM_PUB_KEY, m->point + 2, 65, &pl));
	assert_int_equal(pl, 65);
	EVP_PKEY_free(pk);
}

static CK_RV try_import_ec(const struct ec_import *m, const CK_ATTRIBUTE *extra, CK_ULONG n,
			   CK_OBJECT_HANDLE *h)
{
	CK_ATTRIBUTE base[] = {
		{ CKA_CLASS, &c_priv, sizeof(c_priv) },
		{ CKA_KEY_TYPE, &k_ec, sizeof(k_ec) },
		{ CKA_TOKEN, &fx_false, 1 },
		{ CKA_SIGN, &fx_true, 1 },
		{ CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len },
		{ CKA_VALUE, (void *)m->scalar, sizeof(m->scalar) },
	};
	CK_ATTRIBUTE t[24];

	assert_true(n <= 16);
	*h = CK_INVALID_HANDLE;
	return F->C_CreateObject(s, t, fixture_merge(t, base, FX_COUNT(base), extra, n), h);
}

/* --- snapshots of what guards a key ----------------------------------------- */

static const CK_ATTRIBUTE_TYPE guarded[] = {
	CKA_SENSITIVE,	       CKA_EXTRACTABLE,	   CKA_ALWAYS_SENSITIVE,
	CKA_NEVER_EXTRACTABLE, CKA_LOCAL,	   CKA_KEY_GEN_MECHANISM,
	CKA_WRAP_WITH_TRUSTED, CKA_PRIVATE,	   CKA_TOKEN,
	CKA_MODIFIABLE,	       CKA_COPYABLE,	   CKA_ALWAYS_AUTHENTICATE,
	CKA_TRUSTED,	       CKA_KT_SIGN_POLICY, CKA_LABEL,
};
struct snap {
	CK_BYTE v[FX_COUNT(guarded)][64];
	CK_ULONG len[FX_COUNT(guarded)];
};

static void snap(CK_OBJECT_HANDLE h, struct snap *out)
{
	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i < FX_COUNT(guarded); i++) {
		CK_ATTRIBUTE a = { guarded[i], out->v[i], sizeof(out->v[i]) };
		CK_RV rv = F->C_GetAttributeValue(s, h, &a, 1);

		/* Attributes of another class (CKA_TRUSTED on a private key...) are absent. */
		assert_true(rv == CKR_OK || rv == CKR_ATTRIBUTE_TYPE_INVALID);
		out->len[i] = a.ulValueLen;
	}
}

static void unchanged(CK_OBJECT_HANDLE h, const struct snap *before)
{
	struct snap now;

	snap(h, &now);
	for (size_t i = 0; i < FX_COUNT(guarded); i++) {
		if (now.len[i] != before->len[i] || (now.len[i] != CK_UNAVAILABLE_INFORMATION &&
						     memcmp(now.v[i], before->v[i], now.len[i]) != 0))
			fail_msg("attribute 0x%lx of object %lu changed after a refused call", guarded[i], h);
	}
}

/* --- weakening templates -------------------------------------------------- */

/* One template entry that would lower a key's protection or falsify its
 * history. */
struct weak {
	CK_ATTRIBUTE a;
	const char *what;
};
struct weak_store {
	CK_BBOOL b[16];
	CK_ULONG u[4];
};

static size_t weakenings(CK_OBJECT_HANDLE h, struct weak *w, struct weak_store *st)
{
	size_t n = 0, nb = 0, nu = 0;
	CK_OBJECT_CLASS cls = get_ulong(h, CKA_CLASS);

#define WEAK_BOOL(type, value, text)                                                                         \
	do {                                                                                                 \
		st->b[nb] = (value);                                                                         \
		w[n++] = (struct weak){ { (type), &st->b[nb], sizeof(CK_BBOOL) }, (text) };                  \
		nb++;                                                                                        \
	} while (0)
#define WEAK_ULONG(type, value, text)                                                                        \
	do {                                                                                                 \
		st->u[nu] = (value);                                                                         \
		w[n++] = (struct weak){ { (type), &st->u[nu], sizeof(CK_ULONG) }, (text) };                  \
		nu++;                                                                                        \
	} while (0)

	/* Footnote 11: CKA_SENSITIVE and CKA_WRAP_WITH_TRUSTED cannot be changed
	 * once CK_TRUE; footnote 12: CKA_EXTRACTABLE once CK_FALSE. */
	if (get_bool(h, CKA_SENSITIVE))
		WEAK_BOOL(CKA_SENSITIVE, CK_FALSE, "CKA_SENSITIVE true->false");
	if (!get_bool(h, CKA_EXTRACTABLE))
		WEAK_BOOL(CKA_EXTRACTABLE, CK_TRUE, "CKA_EXTRACTABLE false->true");
	if (get_bool(h, CKA_WRAP_WITH_TRUSTED))
		WEAK_BOOL(CKA_WRAP_WITH_TRUSTED, CK_FALSE, "CKA_WRAP_WITH_TRUSTED true->false");
	/* Footnotes 2,4,6 and no 8: never settable.  Either direction
	 * falsifies the key's history (an imported key claiming to be local and
	 * always sensitive passes an attestation check it should fail). */
	WEAK_BOOL(CKA_ALWAYS_SENSITIVE, !get_bool(h, CKA_ALWAYS_SENSITIVE), "CKA_ALWAYS_SENSITIVE flipped");
	WEAK_BOOL(CKA_NEVER_EXTRACTABLE, !get_bool(h, CKA_NEVER_EXTRACTABLE),
		  "CKA_NEVER_EXTRACTABLE flipped");
	WEAK_BOOL(CKA_LOCAL, !get_bool(h, CKA_LOCAL), "CKA_LOCAL flipped");
	WEAK_ULONG(CKA_KEY_GEN_MECHANISM,
		   get_ulong(h, CKA_KEY_GEN_MECHANISM) == CK_UNAVAILABLE_INFORMATION
		       ? CKM_EC_KEY_PAIR_GEN
		       : CK_UNAVAILABLE_INFORMATION,
		   "CKA_KEY_GEN_MECHANISM changed");
	/* 4.4: CKA_PRIVATE is not modifiable by C_SetAttributeValue. */
	if (get_bool(h, CKA_PRIVATE))
		WEAK_BOOL(CKA_PRIVATE, CK_FALSE, "CKA_PRIVATE true->false");
	if (cls == CKO_PRIVATE_KEY) {
		/* 4.9 Table 26: CKA_ALWAYS_AUTHENTICATE has no footnote 8. */
		WEAK_BOOL(CKA_ALWAYS_AUTHENTICATE, !get_bool(h, CKA_ALWAYS_AUTHENTICATE),
			  "CKA_ALWAYS_AUTHENTICATE flipped");
		/* Vendor, read-only (include/koltamga/pkcs11v.h). */
		if (!fx.softhsm)
			WEAK_ULONG(CKA_KT_SIGN_POLICY,
				   get_ulong(h, CKA_KT_SIGN_POLICY) == CK_KT_POLICY_CONFIRM
				       ? CK_KT_POLICY_AUTOMATIC
				       : CK_KT_POLICY_CONFIRM,
				   "CKA_KT_SIGN_POLICY changed");
	}
#undef WEAK_BOOL
#undef WEAK_ULONG
	assert_true(nb <= FX_COUNT(st->b) && nu <= FX_COUNT(st->u));
	return n;
}

/* C_SetAttributeValue with each weakening: CKR_ATTRIBUTE_READ_ONLY (4.1.1
 * item 3 through 4.1.2), nothing changed; also when the weakening rides
 * along with a legitimate change, which must not happen either (section 5: a
 * failed call leaves the token as it was). */
static void set_refused(CK_OBJECT_HANDLE h)
{
	struct weak w[16];
	struct weak_store st;
	struct snap before;
	size_t n = weakenings(h, w, &st);

	snap(h, &before);
	for (size_t i = 0; i < n; i++) {
		CK_ATTRIBUTE both[] = { { CKA_LABEL, "relabelled", 10 }, w[i].a };

		CK_RV rv = F->C_SetAttributeValue(s, h, &w[i].a, 1);

		if (rv != CKR_ATTRIBUTE_READ_ONLY)
			fail_msg("C_SetAttributeValue(%s) on object %lu = 0x%lx, not CKR_ATTRIBUTE_READ_ONLY",
				 w[i].what, h, rv);
		unchanged(h, &before);
		rv = F->C_SetAttributeValue(s, h, both, 2);
		if (rv != CKR_ATTRIBUTE_READ_ONLY)
			fail_msg("C_SetAttributeValue(label, %s) on object %lu = 0x%lx, not "
				 "CKR_ATTRIBUTE_READ_ONLY",
				 w[i].what, h, rv);
		unchanged(h, &before);
	}
}

/* C_CopyObject with each weakening: refused, no object created, the
 * original unchanged (4.1.3 applies 4.1.1). */
static void copy_refused(CK_OBJECT_HANDLE h)
{
	struct weak w[16];
	struct weak_store st;
	struct snap before;
	size_t n = weakenings(h, w, &st);
	CK_ULONG objects = count_objects();

	snap(h, &before);
	for (size_t i = 0; i < n; i++) {
		CK_OBJECT_HANDLE c = CK_INVALID_HANDLE;
		CK_RV rv = F->C_CopyObject(s, h, &w[i].a, 1, &c);

		if (w[i].a.type == CKA_PRIVATE) {
			/* 4.1.3 lets a copy change CKA_PRIVATE "insofar as the
			 * specification is concerned", and lets a token refuse:
			 * read-only under the circumstances (4.1.1 item 3) or
			 * inconsistent with the object (5.7.2). */
			ASSERT_RV_IN(rv, CKR_ATTRIBUTE_READ_ONLY, CKR_TEMPLATE_INCONSISTENT);
		} else if (rv != CKR_ATTRIBUTE_READ_ONLY) {
			fail_msg("C_CopyObject(%s) of object %lu = 0x%lx, not CKR_ATTRIBUTE_READ_ONLY",
				 w[i].what, h, rv);
		}
		assert_int_equal(count_objects(), objects);
		unchanged(h, &before);
	}
}

/* ==========================================================================
 * 1. Attribute reads
 * ========================================================================== */

/* Every secret component of a protected private key is refused, and in the
 * same template the public ones still come back (5.7.5: every attribute is
 * processed even when the call returns CKR_ATTRIBUTE_SENSITIVE). */
static void read_private_refused(enum pair_kind k, CK_OBJECT_HANDLE pub, CK_OBJECT_HANDLE priv)
{
	CK_BYTE secret[8][600], label[16], params[16], pub_params[16];
	CK_OBJECT_CLASS cls = 0;
	CK_KEY_TYPE kt = 0;
	CK_ATTRIBUTE t[16];
	size_t n = 0, first_secret;

	memset(secret, FILL, sizeof(secret));
	t[n++] = (CK_ATTRIBUTE){ CKA_CLASS, &cls, sizeof(cls) };
	first_secret = n;
	for (size_t i = 0; i < kinds[k].n_secrets; i++)
		t[n++] = (CK_ATTRIBUTE){ kinds[k].secrets[i], secret[i], sizeof(secret[i]) };
	t[n++] = (CK_ATTRIBUTE){ CKA_KEY_TYPE, &kt, sizeof(kt) };
	t[n++] = (CK_ATTRIBUTE){ CKA_LABEL, label, sizeof(label) };
	if (k == K_RSA) {
		static CK_BYTE mod[600], e[8];

		t[n++] = (CK_ATTRIBUTE){ CKA_MODULUS, mod, sizeof(mod) };
		t[n++] = (CK_ATTRIBUTE){ CKA_PUBLIC_EXPONENT, e, sizeof(e) };
	} else {
		t[n++] = (CK_ATTRIBUTE){ CKA_EC_PARAMS, params, sizeof(params) };
	}
	assert_int_equal(F->C_GetAttributeValue(s, priv, t, n), CKR_ATTRIBUTE_SENSITIVE);
	for (size_t i = 0; i < kinds[k].n_secrets; i++) {
		assert_int_equal(t[first_secret + i].ulValueLen, CK_UNAVAILABLE_INFORMATION);
		assert_true(all_fill(secret[i], sizeof(secret[i])));
		expect_hidden(priv, kinds[k].secrets[i]);
	}
	assert_int_equal(t[0].ulValueLen, sizeof(cls));
	assert_int_equal(cls, CKO_PRIVATE_KEY);
	assert_int_equal(t[first_secret + kinds[k].n_secrets].ulValueLen, sizeof(kt));
	assert_int_equal(kt, k == K_RSA ? CKK_RSA : k == K_EC ? CKK_EC : CKK_EC_EDWARDS);
	assert_int_equal(t[first_secret + kinds[k].n_secrets + 1].ulValueLen, 0); /* empty label */
	if (k == K_RSA) {
		CK_ULONG ml = 0;
		void *pm = fixture_get_attr(s, pub, CKA_MODULUS, &ml);

		assert_non_null(pm);
		assert_int_equal(t[n - 2].ulValueLen, ml);
		assert_memory_equal(t[n - 2].pValue, pm, ml);
		free(pm);
		assert_int_equal(t[n - 1].ulValueLen, sizeof(rsa_e));
		assert_memory_equal(t[n - 1].pValue, rsa_e, sizeof(rsa_e));
	} else {
		CK_ATTRIBUTE pa = { CKA_EC_PARAMS, pub_params, sizeof(pub_params) };

		assert_int_equal(F->C_GetAttributeValue(s, pub, &pa, 1), CKR_OK);
		assert_int_equal(t[n - 1].ulValueLen, pa.ulValueLen);
		assert_memory_equal(params, pub_params, pa.ulValueLen);
	}
	/* Several errors at once: 5.7.5 "Cryptoki may return any of them";
	 * the secret stays unavailable whichever is returned. */
	{
		CK_BYTE tiny[1];
		CK_ATTRIBUTE mixed[] = {
			{ kinds[k].secrets[0], secret[0], sizeof(secret[0]) },
			{ CKA_LABEL, tiny, 0 },		      /* empty label: fits */
			{ CKA_EC_POINT, tiny, sizeof(tiny) }, /* a private key has none */
			{ CKA_KEY_TYPE, tiny, sizeof(tiny) }, /* too small */
		};

		ASSERT_RV_IN(F->C_GetAttributeValue(s, priv, mixed, FX_COUNT(mixed)), CKR_ATTRIBUTE_SENSITIVE,
			     CKR_ATTRIBUTE_TYPE_INVALID, CKR_BUFFER_TOO_SMALL);
		assert_int_equal(mixed[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
		assert_int_equal(mixed[1].ulValueLen, 0);
		assert_int_equal(mixed[2].ulValueLen, CK_UNAVAILABLE_INFORMATION);
		assert_int_equal(mixed[3].ulValueLen, CK_UNAVAILABLE_INFORMATION);
		assert_true(all_fill(secret[0], sizeof(secret[0])));
	}
}

static void test_read_private_keys(void **state)
{
	FX_FILE_TOKEN_ONLY("SoftHSM2 keeps Ed25519 parameters in its own encoding");
	(void)state;
	for (int k = 0; k < N_KINDS; k++) {
		CK_OBJECT_HANDLE pub, priv;

		/* Sensitive and unextractable (the fixture's default template). */
		pair(k, NULL, 0, &pub, &priv);
		read_private_refused(k, pub, priv);

		/* Not sensitive but unextractable: still refused.  Table 11
		 * footnote 7 (RSA Table 27, EC/EdDSA private key tables mark the
		 * components with it) and 4.9: "If the CKA_SENSITIVE attribute is
		 * CK_TRUE, or if the CKA_EXTRACTABLE attribute is CK_FALSE, then
		 * certain attributes of the private key cannot be revealed in
		 * plaintext outside the token".  CKA_EXTRACTABLE false forbids
		 * more than wrapping. */
		{
			CK_ATTRIBUTE t[] = { { CKA_SENSITIVE, &fx_false, 1 },
					     { CKA_EXTRACTABLE, &fx_false, 1 } };

			pair(k, t, FX_COUNT(t), &pub, &priv);
			read_private_refused(k, pub, priv);
		}
		/* Sensitive but extractable: refused (the sensitive half). */
		{
			CK_ATTRIBUTE t[] = { { CKA_SENSITIVE, &fx_true, 1 },
					     { CKA_EXTRACTABLE, &fx_true, 1 } };

			pair(k, t, FX_COUNT(t), &pub, &priv);
			read_private_refused(k, pub, priv);
		}
		if (k == K_RSA)
			continue; /* one more RSA key buys nothing but time */
		/* Positive control: a key the application made non-sensitive and
		 * extractable is readable, so the read path itself works. */
		{
			CK_ATTRIBUTE t[] = { { CKA_SENSITIVE, &fx_false, 1 },
					     { CKA_EXTRACTABLE, &fx_true, 1 } };
			CK_ULONG len = 0;
			void *v;

			pair(k, t, FX_COUNT(t), &pub, &priv);
			v = fixture_get_attr(s, priv, CKA_VALUE, &len);
			assert_non_null(v);
			assert_int_equal(len, 32);
			free(v);
			signs(k, pub, priv);
		}
	}
}

static void test_read_secret_keys(void **state)
{
	CK_OBJECT_HANDLE h;
	CK_BYTE val[64];
	CK_ULONG vl = 0;
	CK_ATTRIBUTE t[] = {
		{ CKA_VALUE, val, sizeof(val) },
		{ CKA_VALUE_LEN, &vl, sizeof(vl) },
	};
	const CK_ATTRIBUTE protections[][2] = {
		{ { CKA_SENSITIVE, &fx_true, 1 }, { CKA_EXTRACTABLE, &fx_false, 1 } },
		{ { CKA_SENSITIVE, &fx_false, 1 }, { CKA_EXTRACTABLE, &fx_false, 1 } }, /* footnote 7, 4.10 */
		{ { CKA_SENSITIVE, &fx_true, 1 }, { CKA_EXTRACTABLE, &fx_true, 1 } },
	};

	(void)state;
	for (size_t i = 0; i < FX_COUNT(protections); i++) {
		CK_OBJECT_HANDLE keys[3];

		keys[0] = aes(protections[i], 2);
		keys[1] = generic(protections[i], 2);
		assert_int_equal(try_import_aes(protections[i], 2, &keys[2]), CKR_OK);
		for (size_t j = 0; j < FX_COUNT(keys); j++) {
			memset(val, FILL, sizeof(val));
			vl = 0;
			t[0].ulValueLen = sizeof(val);
			assert_int_equal(F->C_GetAttributeValue(s, keys[j], t, 2), CKR_ATTRIBUTE_SENSITIVE);
			assert_int_equal(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
			assert_true(all_fill(val, sizeof(val)));
			assert_int_equal(t[1].ulValueLen, sizeof(vl)); /* the length is not secret */
			assert_int_equal(vl, 32);
			expect_hidden(keys[j], CKA_VALUE);
		}
	}
	/* Positive control: not sensitive and extractable reads back. */
	{
		CK_ATTRIBUTE open[] = { { CKA_SENSITIVE, &fx_false, 1 }, { CKA_EXTRACTABLE, &fx_true, 1 } };

		assert_int_equal(try_import_aes(open, 2, &h), CKR_OK);
		t[0].ulValueLen = sizeof(val);
		assert_int_equal(F->C_GetAttributeValue(s, h, t, 2), CKR_OK);
		assert_int_equal(t[0].ulValueLen, sizeof(aes_value));
		assert_memory_equal(val, aes_value, sizeof(aes_value));
		h = generic(open, 2);
		t[0].ulValueLen = sizeof(val);
		assert_int_equal(F->C_GetAttributeValue(s, h, t, 2), CKR_OK);
		assert_int_equal(t[0].ulValueLen, 32);
	}
}

/* ==========================================================================
 * 2. C_SetAttributeValue cannot lower protection
 * ========================================================================== */

static void test_set_cannot_lower(void **state)
{
	FX_FILE_TOKEN_ONLY("SoftHSM2 treats CKA_WRAP_WITH_TRUSTED as fixed once the key exists");
	CK_ATTRIBUTE wwt[] = { { CKA_WRAP_WITH_TRUSTED, &fx_true, 1 } };
	CK_OBJECT_HANDLE pub, priv;
	struct ec_import m;

	(void)state;
	for (int k = 0; k < N_KINDS; k++) {
		pair(k, wwt, 1, &pub, &priv);
		set_refused(priv);
		expect_hidden(priv, kinds[k].secrets[0]);
		signs(k, pub, priv);
	}
	/* An imported key may not claim a history it does not have. */
	ec_material(&m);
	assert_int_equal(try_import_ec(&m, wwt, 1, &priv), CKR_OK);
	assert_int_equal(get_bool(priv, CKA_LOCAL), CK_FALSE);
	set_refused(priv);
	expect_hidden(priv, CKA_VALUE);

	/* Secret keys: generated and imported. */
	set_refused(aes(wwt, 1));
	set_refused(generic(wwt, 1));
	{
		CK_OBJECT_HANDLE h;
		CK_ATTRIBUTE t[] = { { CKA_SENSITIVE, &fx_true, 1 }, { CKA_WRAP_WITH_TRUSTED, &fx_true, 1 } };

		assert_int_equal(try_import_aes(t, 2, &h), CKR_OK);
		set_refused(h);
		expect_hidden(h, CKA_VALUE);

		/* Footnote 10: only the SO sets CKA_TRUSTED to CK_TRUE (the
		 * user is logged in here); a trusted key could wrap keys that
		 * demand CKA_WRAP_WITH_TRUSTED. */
		CK_ATTRIBUTE trusted = { CKA_TRUSTED, &fx_true, 1 };
		struct snap before;

		snap(h, &before);
		assert_int_equal(F->C_SetAttributeValue(s, h, &trusted, 1), CKR_ATTRIBUTE_READ_ONLY);
		unchanged(h, &before);
	}

	/* Positive controls: raising protection works, and the history
	 * attributes keep telling the truth (4.9/4.10: "always", "never"). */
	{
		CK_ATTRIBUTE open[] = { { CKA_SENSITIVE, &fx_false, 1 }, { CKA_EXTRACTABLE, &fx_true, 1 } };
		CK_ATTRIBUTE raise[] = {
			{ CKA_SENSITIVE, &fx_true, 1 },
			{ CKA_EXTRACTABLE, &fx_false, 1 },
			{ CKA_WRAP_WITH_TRUSTED, &fx_true, 1 },
			{ CKA_LABEL, "raised", 6 },
		};
		CK_OBJECT_HANDLE keys[2];

		pair(K_EC, open, 2, &pub, &keys[0]);
		keys[1] = aes(open, 2);
		for (size_t i = 0; i < FX_COUNT(keys); i++) {
			assert_int_equal(get_bool(keys[i], CKA_ALWAYS_SENSITIVE), CK_FALSE);
			assert_int_equal(get_bool(keys[i], CKA_NEVER_EXTRACTABLE), CK_FALSE);
			assert_int_equal(F->C_SetAttributeValue(s, keys[i], raise, FX_COUNT(raise)), CKR_OK);
			assert_int_equal(get_bool(keys[i], CKA_SENSITIVE), CK_TRUE);
			assert_int_equal(get_bool(keys[i], CKA_EXTRACTABLE), CK_FALSE);
			assert_int_equal(get_bool(keys[i], CKA_WRAP_WITH_TRUSTED), CK_TRUE);
			assert_int_equal(get_bool(keys[i], CKA_ALWAYS_SENSITIVE), CK_FALSE);
			assert_int_equal(get_bool(keys[i], CKA_NEVER_EXTRACTABLE), CK_FALSE);
			expect_hidden(keys[i], CKA_VALUE);
			/* ... and is one-way from now on. */
			set_refused(keys[i]);
		}
		signs(K_EC, pub, keys[0]);
	}
}

/* ==========================================================================
 * 3. C_CopyObject cannot lower protection
 * ========================================================================== */

static void test_copy_cannot_lower(void **state)
{
	CK_ATTRIBUTE wwt[] = { { CKA_WRAP_WITH_TRUSTED, &fx_true, 1 } };
	CK_OBJECT_HANDLE pub, priv, c;
	struct ec_import m;

	(void)state;
	for (int k = 0; k < N_KINDS; k++) {
		pair(k, wwt, 1, &pub, &priv);
		copy_refused(priv);
		/* Positive control: a copy that changes nothing protective is
		 * made, keeps every protection and the history (5.7.2), and
		 * signs. */
		{
			CK_ATTRIBUTE t[] = { { CKA_LABEL, "copy", 4 } };
			struct snap orig, copy;

			snap(priv, &orig);
			c = CK_INVALID_HANDLE;
			assert_int_equal(F->C_CopyObject(s, priv, t, 1, &c), CKR_OK);
			assert_true(c != CK_INVALID_HANDLE && c != priv);
			snap(c, &copy);
			for (size_t i = 0; i < FX_COUNT(guarded); i++) {
				if (guarded[i] == CKA_LABEL)
					continue;
				assert_int_equal(copy.len[i], orig.len[i]);
				if (copy.len[i] != CK_UNAVAILABLE_INFORMATION)
					assert_memory_equal(copy.v[i], orig.v[i], copy.len[i]);
			}
			expect_hidden(c, kinds[k].secrets[0]);
			copy_refused(c);
			signs(k, pub, c);
		}
	}
	ec_material(&m);
	assert_int_equal(try_import_ec(&m, wwt, 1, &priv), CKR_OK);
	copy_refused(priv);
	copy_refused(aes(wwt, 1));
	copy_refused(generic(wwt, 1));
	{
		/* Footnote 10 on a copy: the user may not make a trusted key. */
		CK_OBJECT_HANDLE h = aes(NULL, 0);
		CK_ATTRIBUTE trusted = { CKA_TRUSTED, &fx_true, 1 };
		CK_ULONG objects = count_objects();

		assert_int_equal(F->C_CopyObject(s, h, &trusted, 1, &c), CKR_ATTRIBUTE_READ_ONLY);
		assert_int_equal(count_objects(), objects);
	}

	/* Positive controls from 5.7.2: a copy may raise protection; the new
	 * key keeps the original's CKA_ALWAYS_SENSITIVE, and a copy that drops
	 * CKA_EXTRACTABLE has CKA_NEVER_EXTRACTABLE false. */
	{
		CK_ATTRIBUTE open[] = { { CKA_SENSITIVE, &fx_false, 1 }, { CKA_EXTRACTABLE, &fx_true, 1 } };
		CK_ATTRIBUTE raise[] = { { CKA_SENSITIVE, &fx_true, 1 }, { CKA_EXTRACTABLE, &fx_false, 1 } };
		CK_OBJECT_HANDLE keys[2];

		pair(K_EC, open, 2, &pub, &keys[0]);
		keys[1] = aes(open, 2);
		for (size_t i = 0; i < FX_COUNT(keys); i++) {
			assert_int_equal(F->C_CopyObject(s, keys[i], raise, 2, &c), CKR_OK);
			assert_int_equal(get_bool(c, CKA_SENSITIVE), CK_TRUE);
			assert_int_equal(get_bool(c, CKA_EXTRACTABLE), CK_FALSE);
			assert_int_equal(get_bool(c, CKA_ALWAYS_SENSITIVE), CK_FALSE);
			assert_int_equal(get_bool(c, CKA_NEVER_EXTRACTABLE), CK_FALSE);
			expect_hidden(c, CKA_VALUE);
			/* The original is untouched. */
			assert_int_equal(get_bool(keys[i], CKA_SENSITIVE), CK_FALSE);
		}
		/* A session key copied to the token keeps its protection. */
		{
			CK_ATTRIBUTE tok[] = { { CKA_TOKEN, &fx_true, 1 } };

			pair(K_EC, NULL, 0, &pub, &priv);
			assert_int_equal(F->C_CopyObject(s, priv, tok, 1, &c), CKR_OK);
			assert_int_equal(get_bool(c, CKA_TOKEN), CK_TRUE);
			assert_int_equal(get_bool(c, CKA_SENSITIVE), CK_TRUE);
			assert_int_equal(get_bool(c, CKA_ALWAYS_SENSITIVE), CK_TRUE);
			assert_int_equal(get_bool(c, CKA_NEVER_EXTRACTABLE), CK_TRUE);
			expect_hidden(c, CKA_VALUE);
			signs(K_EC, pub, c);
			assert_int_equal(F->C_DestroyObject(s, c), CKR_OK);
		}
	}
}

/* ==========================================================================
 * 2/3 continued: the signing policy and CKA_ALWAYS_AUTHENTICATE of a key
 * that asks its signer (docs/confirmation.md)
 * ========================================================================== */

static CK_RV sign_confirm(CK_OBJECT_HANDLE priv)
{
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	CK_BYTE sig[80];
	CK_ULONG len = sizeof(sig);
	CK_RV rv = F->C_SignInit(s, &m, priv);

	if (rv != CKR_OK)
		return rv;
	assert_int_equal(F->C_Login(s, CKU_CONTEXT_SPECIFIC, FX_PIN(FX_USER_PIN)), CKR_OK);
	return F->C_Sign(s, (CK_BYTE_PTR) "a contract", 10, sig, &len);
}

static void test_sign_policy_cannot_lower(void **state)
{
	CK_OBJECT_HANDLE pub, priv, c;
	CK_ULONG auto_policy = CK_KT_POLICY_AUTOMATIC;

	(void)state;
	FX_KOLTAMGA_ONLY();
	/* Under the fixture's sign_policy = automatic: the policy is read-only
	 * in both directions, and the application cannot pick it. */
	pair(K_EC, NULL, 0, &pub, &priv);
	assert_int_equal(get_ulong(priv, CKA_KT_SIGN_POLICY), CK_KT_POLICY_AUTOMATIC);
	set_refused(priv);
	copy_refused(priv);
	{
		CK_ULONG confirm = CK_KT_POLICY_CONFIRM;
		CK_ATTRIBUTE t[] = { { CKA_KT_SIGN_POLICY, &confirm, sizeof(confirm) } };
		CK_ULONG objects = count_objects();

		assert_int_equal(try_pair(K_EC, t, 1, &pub, &priv), CKR_ATTRIBUTE_READ_ONLY);
		assert_int_equal(count_objects(), objects);
	}

	/* Keys of people: every signature is confirmed, and the (deny)
	 * backend refuses them all. */
	assert_int_equal(certfix_reinit("sign_policy = confirm\nconfirm = deny\n"), CKR_OK);
	slot = fixture_slot_by_label("keyprot");
	s = fixture_open_user_session(slot);
	pair(K_EC, NULL, 0, &pub, &priv);
	assert_int_equal(get_ulong(priv, CKA_KT_SIGN_POLICY), CK_KT_POLICY_CONFIRM);
	assert_int_equal(get_bool(priv, CKA_ALWAYS_AUTHENTICATE), CK_TRUE);
	assert_int_equal(get_bool(priv, CKA_PRIVATE), CK_TRUE);
	assert_int_equal(sign_confirm(priv), CKR_FUNCTION_REJECTED);

	/* CKA_ALWAYS_AUTHENTICATE true->false and the policy confirm->automatic:
	 * CKR_ATTRIBUTE_READ_ONLY, on C_SetAttributeValue and C_CopyObject. */
	set_refused(priv);
	copy_refused(priv);
	{
		CK_ATTRIBUTE t[] = { { CKA_ALWAYS_AUTHENTICATE, &fx_false, 1 },
				     { CKA_KT_SIGN_POLICY, &auto_policy, sizeof(auto_policy) } };
		CK_ULONG objects = count_objects();

		assert_int_equal(F->C_SetAttributeValue(s, priv, t, 2), CKR_ATTRIBUTE_READ_ONLY);
		assert_int_equal(F->C_CopyObject(s, priv, t, 2, &c), CKR_ATTRIBUTE_READ_ONLY);
		assert_int_equal(count_objects(), objects);
		/* The policy cannot be chosen at generation either. */
		assert_int_equal(try_pair(K_EC, &t[1], 1, &pub, &c), CKR_ATTRIBUTE_READ_ONLY);
		assert_int_equal(count_objects(), objects);
	}
	/* A plain copy carries the policy with it: still asks, still refused. */
	assert_int_equal(F->C_CopyObject(s, priv, NULL, 0, &c), CKR_OK);
	assert_int_equal(get_ulong(c, CKA_KT_SIGN_POLICY), CK_KT_POLICY_CONFIRM);
	assert_int_equal(get_bool(c, CKA_ALWAYS_AUTHENTICATE), CK_TRUE);
	assert_int_equal(sign_confirm(c), CKR_FUNCTION_REJECTED);
	/* And the original too, after all the attempts. */
	assert_int_equal(get_ulong(priv, CKA_KT_SIGN_POLICY), CK_KT_POLICY_CONFIRM);
	assert_int_equal(get_bool(priv, CKA_ALWAYS_AUTHENTICATE), CK_TRUE);
	assert_int_equal(sign_confirm(priv), CKR_FUNCTION_REJECTED);
	expect_hidden(priv, CKA_VALUE);

	/* 4.9: "This attribute [CKA_ALWAYS_AUTHENTICATE] may only be set to
	 * CK_TRUE when CKA_PRIVATE is also CK_TRUE."  The module contributes
	 * CKA_ALWAYS_AUTHENTICATE = CK_TRUE to every confirm key, so a template
	 * asking for a public (CKA_PRIVATE false) one is inconsistent with what
	 * the function contributes (4.1.1 item 5): CKR_TEMPLATE_INCONSISTENT,
	 * no key. */
	{
		CK_ATTRIBUTE t[] = { { CKA_PRIVATE, &fx_false, 1 } };
		CK_ULONG objects = count_objects();
		struct ec_import m;
		CK_OBJECT_HANDLE imported;
		CK_RV gen, imp;

		ec_material(&m);
		gen = try_pair(K_EC, t, 1, &pub, &c);
		imp = try_import_ec(&m, t, 1, &imported);
		if (gen == CKR_OK || imp == CKR_OK)
			fail_msg("confirm key with CKA_PRIVATE false made: C_GenerateKeyPair = 0x%lx, "
				 "C_CreateObject = 0x%lx, want CKR_TEMPLATE_INCONSISTENT (4.9: no "
				 "CKA_ALWAYS_AUTHENTICATE on a public key)",
				 gen, imp);
		assert_int_equal(gen, CKR_TEMPLATE_INCONSISTENT);
		assert_int_equal(imp, CKR_TEMPLATE_INCONSISTENT);
		assert_int_equal(count_objects(), objects);
	}
}

/* Same 4.9 rule when the application itself asks for the combination. */
static void test_always_authenticate_needs_private(void **state)
{
	CK_ATTRIBUTE t[] = { { CKA_PRIVATE, &fx_false, 1 }, { CKA_ALWAYS_AUTHENTICATE, &fx_true, 1 } };
	CK_OBJECT_HANDLE pub, priv, imported;
	struct ec_import m;
	CK_ULONG objects;
	CK_RV rv, imp;

	(void)state;
	ec_material(&m);
	/* Positive control: with CKA_PRIVATE true the attribute is accepted. */
	pair(K_EC, &t[1], 1, &pub, &priv);
	assert_int_equal(get_bool(priv, CKA_ALWAYS_AUTHENTICATE), CK_TRUE);
	objects = count_objects();
	rv = try_pair(K_EC, t, 2, &pub, &priv);
	imp = try_import_ec(&m, t, 2, &imported);
	if (rv == CKR_OK || imp == CKR_OK)
		fail_msg("CKA_ALWAYS_AUTHENTICATE true with CKA_PRIVATE false: C_GenerateKeyPair = 0x%lx, "
			 "C_CreateObject = 0x%lx (want CKR_TEMPLATE_INCONSISTENT, 4.9 and 4.1.1 item 5)",
			 rv, imp);
	assert_int_equal(rv, CKR_TEMPLATE_INCONSISTENT);
	assert_int_equal(imp, CKR_TEMPLATE_INCONSISTENT);
	assert_int_equal(count_objects(), objects);
}

/* ==========================================================================
 * 4. C_WrapKey
 * ========================================================================== */

static const char trusted_label[] = "trusted kek";

/* The SO makes a trusted AES wrapping key (footnote 10: only the SO may set
 * CKA_TRUSTED to CK_TRUE).  A public token object, so the user's session
 * sees it.  Returns its handle in the user's session. */
static CK_OBJECT_HANDLE so_trusted_kek(void)
{
	CK_MECHANISM m = { CKM_AES_KEY_GEN, NULL, 0 };
	CK_ULONG len = 32;
	CK_ATTRIBUTE t[] = {
		{ CKA_TOKEN, &fx_true, 1 },
		{ CKA_PRIVATE, &fx_false, 1 },
		{ CKA_VALUE_LEN, &len, sizeof(len) },
		{ CKA_WRAP, &fx_true, 1 },
		{ CKA_UNWRAP, &fx_true, 1 },
		{ CKA_TRUSTED, &fx_true, 1 },
		{ CKA_LABEL, (void *)trusted_label, sizeof(trusted_label) - 1 },
	};
	CK_ATTRIBUTE find[] = { { CKA_LABEL, (void *)trusted_label, sizeof(trusted_label) - 1 } };
	CK_SESSION_HANDLE so;
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
	CK_ULONG n = 0;

	/* The user may not (footnote 10, 4.1.1 item 3). */
	assert_int_equal(F->C_GenerateKey(s, &m, t, FX_COUNT(t), &h), CKR_ATTRIBUTE_READ_ONLY);

	assert_int_equal(F->C_Logout(s), CKR_OK);
	so = fixture_open_session(slot, true);
	assert_int_equal(F->C_Login(so, CKU_SO, FX_PIN(FX_SO_PIN)), CKR_OK);
	assert_int_equal(F->C_GenerateKey(so, &m, t, FX_COUNT(t), &h), CKR_OK);
	assert_int_equal(F->C_Logout(so), CKR_OK);
	assert_int_equal(F->C_CloseSession(so), CKR_OK);
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);

	assert_int_equal(F->C_FindObjectsInit(s, find, 1), CKR_OK);
	assert_int_equal(F->C_FindObjects(s, &h, 1, &n), CKR_OK);
	assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);
	assert_int_equal(n, 1);
	assert_int_equal(get_bool(h, CKA_TRUSTED), CK_TRUE);
	return h;
}

/* The wrapping mechanisms the token lists (C_GetMechanismInfo, CKF_WRAP). */
static size_t wrap_mechanisms(CK_MECHANISM_TYPE *out, size_t cap)
{
	CK_MECHANISM_TYPE list[128];
	CK_ULONG n = FX_COUNT(list);
	size_t w = 0;

	assert_int_equal(F->C_GetMechanismList(slot, list, &n), CKR_OK);
	for (CK_ULONG i = 0; i < n; i++) {
		CK_MECHANISM_INFO mi;

		assert_int_equal(F->C_GetMechanismInfo(slot, list[i], &mi), CKR_OK);
		if ((mi.flags & CKF_WRAP) && w < cap)
			out[w++] = list[i];
	}
	return w;
}

/* A refused wrap, as a size query and as a real one: the expected code, and
 * nothing written to the caller's buffer (the specification lets a failed
 * call scribble on output memory, section 5; a wrapped key there would be the
 * very leak being refused). */
static void wrap_refused(CK_MECHANISM_TYPE mech, CK_OBJECT_HANDLE kek, CK_OBJECT_HANDLE key, CK_RV want,
			 const char *what)
{
	CK_MECHANISM m = { mech, NULL, 0 };
	CK_BYTE out[4096];
	CK_ULONG len = 0;
	CK_RV rv;

	rv = F->C_WrapKey(s, &m, kek, key, NULL, &len);
	if (rv != want)
		fail_msg("C_WrapKey(mech 0x%lx, %s, length query) = 0x%lx, expected 0x%lx", mech, what, rv,
			 want);
	memset(out, FILL, sizeof(out));
	len = sizeof(out);
	rv = F->C_WrapKey(s, &m, kek, key, out, &len);
	if (rv != want)
		fail_msg("C_WrapKey(mech 0x%lx, %s) = 0x%lx, expected 0x%lx", mech, what, rv, want);
	assert_true(all_fill(out, sizeof(out)));
}

static CK_ULONG wrap_ok(CK_MECHANISM_TYPE mech, CK_OBJECT_HANDLE kek, CK_OBJECT_HANDLE key, CK_BYTE *out,
			CK_ULONG cap)
{
	CK_MECHANISM m = { mech, NULL, 0 };
	CK_ULONG len = cap;

	assert_int_equal(F->C_WrapKey(s, &m, kek, key, out, &len), CKR_OK);
	assert_true(len > 0 && len <= cap);
	return len;
}

static void test_wrap_refused(void **state)
{
	CK_MECHANISM_TYPE mechs[16];
	size_t n_mechs;
	CK_OBJECT_HANDLE kek[2], pub, priv[N_KINDS], priv_ext, priv_sens_ext, locked[4], wwt_key, sens_key,
	    open_key;
	CK_ATTRIBUTE open[] = { { CKA_SENSITIVE, &fx_false, 1 }, { CKA_EXTRACTABLE, &fx_true, 1 } };

	(void)state;
	FX_KOLTAMGA_ONLY(); /* the SO's trusted key: SoftHSM2 answers differently */
	kek[1] = so_trusted_kek();
	kek[0] = aes(NULL, 0); /* CKA_WRAP true, not trusted */
	assert_int_equal(get_bool(kek[0], CKA_TRUSTED), CK_FALSE);

	n_mechs = wrap_mechanisms(mechs, FX_COUNT(mechs));
	assert_true(n_mechs > 0);

	for (int k = 0; k < N_KINDS; k++)
		pair(k, NULL, 0, &pub, &priv[k]);
	pair(K_EC, open, 2, &pub, &priv_ext);
	{
		CK_ATTRIBUTE t[] = { { CKA_EXTRACTABLE, &fx_true, 1 } };

		pair(K_EC, t, 1, &pub, &priv_sens_ext);
	}
	{
		CK_ATTRIBUTE t[] = { { CKA_SENSITIVE, &fx_false, 1 }, { CKA_EXTRACTABLE, &fx_false, 1 } };
		CK_ATTRIBUTE sens[] = { { CKA_SENSITIVE, &fx_true, 1 }, { CKA_EXTRACTABLE, &fx_false, 1 } };

		locked[0] = aes(sens, 2);
		locked[1] = aes(t, 2);
		locked[2] = generic(sens, 2);
		assert_int_equal(try_import_aes(sens, 2, &locked[3]), CKR_OK);
	}
	{
		CK_ATTRIBUTE t[] = { { CKA_SENSITIVE, &fx_true, 1 },
				     { CKA_EXTRACTABLE, &fx_true, 1 },
				     { CKA_WRAP_WITH_TRUSTED, &fx_true, 1 } };

		wwt_key = aes(t, FX_COUNT(t));
		sens_key = aes(t, 2);
	}
	open_key = aes(open, 2);

	for (size_t i = 0; i < n_mechs; i++) {
		for (size_t j = 0; j < FX_COUNT(kek); j++) {
			CK_ULONG objects = count_objects();

			/* Extractable private keys: the module never wraps them,
			 * a token-specific reason (5.18.3): CKR_KEY_NOT_WRAPPABLE. */
			wrap_refused(mechs[i], kek[j], priv_ext, CKR_KEY_NOT_WRAPPABLE, "extractable EC key");
			wrap_refused(mechs[i], kek[j], priv_sens_ext, CKR_KEY_NOT_WRAPPABLE,
				     "sensitive extractable EC key");
			/* Unextractable secret keys, sensitive or not, and the
			 * wrapping keys themselves. */
			for (size_t l = 0; l < FX_COUNT(locked); l++)
				wrap_refused(mechs[i], kek[j], locked[l], CKR_KEY_UNEXTRACTABLE,
					     "unextractable secret");
			wrap_refused(mechs[i], kek[j], kek[0], CKR_KEY_UNEXTRACTABLE, "the untrusted kek");
			wrap_refused(mechs[i], kek[j], kek[1], CKR_KEY_UNEXTRACTABLE, "the trusted kek");
			/* CKA_WRAP_WITH_TRUSTED (4.10) under an untrusted key:
			 * "can only be wrapped with a wrapping key that has
			 * CKA_TRUSTED set"; the key is extractable, so
			 * CKR_KEY_NOT_WRAPPABLE (5.1.6). */
			if (j == 0)
				wrap_refused(mechs[i], kek[j], wwt_key, CKR_KEY_NOT_WRAPPABLE,
					     "wrap-with-trusted key");
			assert_int_equal(count_objects(), objects);
		}
	}

	/* Positive controls, every mechanism: an extractable key wraps under
	 * either kek and unwraps to the same value; CKA_SENSITIVE alone does
	 * not forbid wrapping (4.10: that is CKA_EXTRACTABLE's job), and the
	 * trusted kek wraps the wrap-with-trusted key. */
	for (size_t i = 0; i < n_mechs; i++) {
		CK_MECHANISM m = { mechs[i], NULL, 0 };
		CK_BYTE wrapped[128], val[64];
		CK_ULONG wl, vl;
		CK_ATTRIBUTE ut[] = {
			{ CKA_CLASS, &c_secret, sizeof(c_secret) },
			{ CKA_KEY_TYPE, &k_aes, sizeof(k_aes) },
			{ CKA_TOKEN, &fx_false, 1 },
			{ CKA_SENSITIVE, &fx_false, 1 },
			{ CKA_EXTRACTABLE, &fx_true, 1 },
		};
		CK_OBJECT_HANDLE back;
		void *orig;

		for (size_t j = 0; j < FX_COUNT(kek); j++) {
			wl = wrap_ok(mechs[i], kek[j], open_key, wrapped, sizeof(wrapped));
			assert_int_equal(F->C_UnwrapKey(s, &m, kek[j], wrapped, wl, ut, FX_COUNT(ut), &back),
					 CKR_OK);
			orig = fixture_get_attr(s, open_key, CKA_VALUE, &vl);
			assert_non_null(orig);
			{
				CK_ATTRIBUTE a = { CKA_VALUE, val, sizeof(val) };

				assert_int_equal(F->C_GetAttributeValue(s, back, &a, 1), CKR_OK);
				assert_int_equal(a.ulValueLen, vl);
				assert_memory_equal(val, orig, vl);
			}
			free(orig);
			/* The unwrapped key was not born here (5.18.4). */
			assert_int_equal(get_bool(back, CKA_LOCAL), CK_FALSE);
			assert_int_equal(get_bool(back, CKA_ALWAYS_SENSITIVE), CK_FALSE);
			assert_int_equal(get_bool(back, CKA_NEVER_EXTRACTABLE), CK_FALSE);
		}
		for (size_t j = 0; j < FX_COUNT(kek); j++)
			(void)wrap_ok(mechs[i], kek[j], sens_key, wrapped, sizeof(wrapped));
		(void)wrap_ok(mechs[i], kek[1], wwt_key, wrapped, sizeof(wrapped));
	}
	expect_hidden(locked[0], CKA_VALUE);

	/* Unextractable private keys (last, so that a failure here leaves the
	 * checks above run): 5.18.3 "The CKA_EXTRACTABLE attribute of the key
	 * to be wrapped MUST also be CK_TRUE"; 5.1.6 CKR_KEY_UNEXTRACTABLE "can't
	 * be wrapped because its CKA_EXTRACTABLE attribute is set to CK_FALSE",
	 * whereas CKR_KEY_NOT_WRAPPABLE applies only "although the specified
	 * private or secret key does not have its CKA_EXTRACTABLE attribute set
	 * to CK_FALSE". */
	for (size_t i = 0; i < n_mechs; i++) {
		for (size_t j = 0; j < FX_COUNT(kek); j++) {
			CK_ULONG objects = count_objects();

			for (int k = 0; k < N_KINDS; k++)
				wrap_refused(mechs[i], kek[j], priv[k], CKR_KEY_UNEXTRACTABLE, kinds[k].name);
			assert_int_equal(count_objects(), objects);
		}
	}
	for (int k = 0; k < N_KINDS; k++)
		expect_hidden(priv[k], kinds[k].secrets[0]);
}

/* ==========================================================================
 * 5. Derivation and the other paths that take a key
 * ========================================================================== */

static void test_derive_refused(void **state)
{
	CK_OBJECT_HANDLE pub[N_KINDS], priv[N_KINDS], secret;
	CK_MECHANISM_TYPE list[128];
	CK_ULONG n = FX_COUNT(list);
	/* Mechanisms a token with derivation would take for these keys, and
	 * every mechanism the token lists. */
	CK_MECHANISM_TYPE extra[] = { CKM_ECDH1_DERIVE, CKM_ECDH1_COFACTOR_DERIVE, CKM_SHA256_KEY_DERIVATION,
				      CKM_CONCATENATE_BASE_AND_DATA, CKM_AES_ECB_ENCRYPT_DATA };
	CK_ULONG len = 32;
	CK_ATTRIBUTE t[] = {
		{ CKA_CLASS, &c_secret, sizeof(c_secret) }, { CKA_KEY_TYPE, &k_generic, sizeof(k_generic) },
		{ CKA_VALUE_LEN, &len, sizeof(len) },	    { CKA_SENSITIVE, &fx_false, 1 },
		{ CKA_EXTRACTABLE, &fx_true, 1 },
	};
	CK_ULONG objects;

	(void)state;
	for (int k = 0; k < N_KINDS; k++)
		pair(k, NULL, 0, &pub[k], &priv[k]);
	secret = generic(NULL, 0);
	assert_int_equal(F->C_GetMechanismList(slot, list, &n), CKR_OK);
	objects = count_objects();

	/* The token lists no mechanism that derives. */
	for (CK_ULONG i = 0; i < n; i++) {
		CK_MECHANISM_INFO mi;

		assert_int_equal(F->C_GetMechanismInfo(slot, list[i], &mi), CKR_OK);
		assert_false(mi.flags & CKF_DERIVE);
	}
	/* C_DeriveKey is a stub here: 5.1.6 CKR_FUNCTION_NOT_SUPPORTED "Even
	 * unsupported functions ... should have a stub ... return the value
	 * CKR_FUNCTION_NOT_SUPPORTED"; CKR_MECHANISM_INVALID ("cannot be used
	 * in the selected token with the selected function") applies too, and
	 * 5.1.6 lets either be returned.  Never a key. */
	for (size_t round = 0; round < 2; round++) {
		CK_ULONG count = round == 0 ? n : FX_COUNT(extra);

		for (CK_ULONG i = 0; i < count; i++) {
			CK_MECHANISM m = { round == 0 ? list[i] : extra[i], NULL, 0 };
			CK_OBJECT_HANDLE bases[N_KINDS + 1] = { priv[K_RSA], priv[K_EC], priv[K_ED], secret };

			for (size_t b = 0; b < FX_COUNT(bases); b++) {
				CK_OBJECT_HANDLE out = CK_INVALID_HANDLE;

				ASSERT_RV_IN(F->C_DeriveKey(s, &m, bases[b], t, FX_COUNT(t), &out),
					     CKR_FUNCTION_NOT_SUPPORTED, CKR_MECHANISM_INVALID);
				assert_int_equal(out, CK_INVALID_HANDLE);
			}
		}
	}
	{
		/* ECDH with a real peer point, as an application would. */
		CK_BYTE point[80];
		CK_ATTRIBUTE pa = { CKA_EC_POINT, point, sizeof(point) };
		CK_ECDH1_DERIVE_PARAMS p = { CKD_NULL, 0, NULL, 0, point + 2 };
		CK_MECHANISM m = { CKM_ECDH1_DERIVE, &p, sizeof(p) };
		CK_OBJECT_HANDLE out = CK_INVALID_HANDLE;

		assert_int_equal(F->C_GetAttributeValue(s, pub[K_EC], &pa, 1), CKR_OK);
		p.ulPublicDataLen = pa.ulValueLen - 2;
		ASSERT_RV_IN(F->C_DeriveKey(s, &m, priv[K_EC], t, FX_COUNT(t), &out),
			     CKR_FUNCTION_NOT_SUPPORTED, CKR_MECHANISM_INVALID);
		assert_int_equal(out, CK_INVALID_HANDLE);
	}
	assert_int_equal(count_objects(), objects);

	/* C_DigestKey would hash key material into a digest the caller reads:
	 * a stub here (CKR_FUNCTION_NOT_SUPPORTED), or CKR_KEY_INDIGESTIBLE
	 * for a private key (5.1.6). */
	{
		CK_MECHANISM m = { CKM_SHA256, NULL, 0 };
		CK_BYTE d[32];
		CK_ULONG dl = sizeof(d);

		assert_int_equal(F->C_DigestInit(s, &m), CKR_OK);
		ASSERT_RV_IN(F->C_DigestKey(s, priv[K_EC]), CKR_FUNCTION_NOT_SUPPORTED, CKR_KEY_INDIGESTIBLE);
		ASSERT_RV_IN(F->C_DigestKey(s, secret), CKR_FUNCTION_NOT_SUPPORTED, CKR_KEY_INDIGESTIBLE);
		ASSERT_RV_IN(F->C_DigestFinal(s, d, &dl), CKR_OK, CKR_OPERATION_NOT_INITIALIZED);
	}
	/* The state of a signing operation holds the key's use: not given out
	 * (stub, or 5.1.6 CKR_STATE_UNSAVEABLE). */
	{
		CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
		CK_BYTE st[4096], sig[80];
		CK_ULONG sl = sizeof(st);

		assert_int_equal(F->C_SignInit(s, &m, priv[K_EC]), CKR_OK);
		ASSERT_RV_IN(F->C_GetOperationState(s, NULL, &sl), CKR_FUNCTION_NOT_SUPPORTED,
			     CKR_STATE_UNSAVEABLE);
		sl = sizeof(st);
		ASSERT_RV_IN(F->C_GetOperationState(s, st, &sl), CKR_FUNCTION_NOT_SUPPORTED,
			     CKR_STATE_UNSAVEABLE);
		sl = sizeof(sig);
		assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR) "x", 1, sig, &sl), CKR_OK);
	}
	for (int k = 0; k < N_KINDS; k++) {
		expect_hidden(priv[k], kinds[k].secrets[0]);
		signs(k, pub[k], priv[k]);
	}
}

/* ==========================================================================
 * 6. Template tricks at creation and generation
 * ========================================================================== */

/* Conflicting duplicates: 4.1.1 item 5, "One example of an inconsistent
 * template would be using a template which specifies two different values
 * for the same attribute": CKR_TEMPLATE_INCONSISTENT, no object. */
static void test_duplicate_attributes(void **state)
{
	const struct {
		CK_ATTRIBUTE_TYPE type;
		CK_BBOOL first, second;
	} dups[] = {
		{ CKA_SENSITIVE, CK_FALSE, CK_TRUE },	      { CKA_SENSITIVE, CK_TRUE, CK_FALSE },
		{ CKA_EXTRACTABLE, CK_FALSE, CK_TRUE },	      { CKA_EXTRACTABLE, CK_TRUE, CK_FALSE },
		{ CKA_WRAP_WITH_TRUSTED, CK_TRUE, CK_FALSE }, { CKA_PRIVATE, CK_TRUE, CK_FALSE },
	};
	struct ec_import m;
	CK_OBJECT_HANDLE pub, priv, h, kek;
	CK_BYTE wrapped[64];
	CK_ULONG wl = sizeof(wrapped), objects;

	(void)state;
	ec_material(&m);
	{
		CK_ATTRIBUTE open[] = { { CKA_SENSITIVE, &fx_false, 1 }, { CKA_EXTRACTABLE, &fx_true, 1 } };
		CK_MECHANISM kw = { CKM_AES_KEY_WRAP, NULL, 0 };

		kek = aes(NULL, 0);
		h = aes(open, 2);
		assert_int_equal(F->C_WrapKey(s, &kw, kek, h, wrapped, &wl), CKR_OK);
	}
	objects = count_objects();
	for (size_t i = 0; i < FX_COUNT(dups); i++) {
		CK_BBOOL a = dups[i].first, b = dups[i].second;
		CK_ATTRIBUTE t[] = { { dups[i].type, &a, 1 }, { dups[i].type, &b, 1 } };
		CK_MECHANISM kw = { CKM_AES_KEY_WRAP, NULL, 0 };
		CK_ATTRIBUTE ut[] = {
			{ CKA_CLASS, &c_secret, sizeof(c_secret) },
			{ CKA_KEY_TYPE, &k_aes, sizeof(k_aes) },
			{ CKA_TOKEN, &fx_false, 1 },
			t[0],
			t[1],
		};

		for (int k = 0; k < N_KINDS; k++)
			if (k != K_RSA || i == 0) /* RSA once: generation is slow */
				assert_int_equal(try_pair(k, t, 2, &pub, &priv), CKR_TEMPLATE_INCONSISTENT);
		assert_int_equal(try_aes(t, 2, &h), CKR_TEMPLATE_INCONSISTENT);
		assert_int_equal(try_import_aes(t, 2, &h), CKR_TEMPLATE_INCONSISTENT);
		assert_int_equal(try_import_ec(&m, t, 2, &h), CKR_TEMPLATE_INCONSISTENT);
		assert_int_equal(F->C_UnwrapKey(s, &kw, kek, wrapped, wl, ut, FX_COUNT(ut), &h),
				 CKR_TEMPLATE_INCONSISTENT);
		assert_int_equal(count_objects(), objects);
	}

	/* The same on C_SetAttributeValue and C_CopyObject (4.1.2, 4.1.3 apply
	 * 4.1.1).  Lowering a protected key this way is also a read-only
	 * change (item 3); "the error code returned ... can be any of the error
	 * codes from above that applies". */
	pair(K_EC, NULL, 0, &pub, &priv);
	objects = count_objects();
	{
		struct snap before;
		CK_ATTRIBUTE lower[][2] = {
			{ { CKA_SENSITIVE, &fx_true, 1 }, { CKA_SENSITIVE, &fx_false, 1 } },
			{ { CKA_SENSITIVE, &fx_false, 1 }, { CKA_SENSITIVE, &fx_true, 1 } },
			{ { CKA_EXTRACTABLE, &fx_false, 1 }, { CKA_EXTRACTABLE, &fx_true, 1 } },
			{ { CKA_EXTRACTABLE, &fx_true, 1 }, { CKA_EXTRACTABLE, &fx_false, 1 } },
		};

		snap(priv, &before);
		for (size_t i = 0; i < FX_COUNT(lower); i++) {
			CK_OBJECT_HANDLE c = CK_INVALID_HANDLE;

			ASSERT_RV_IN(F->C_SetAttributeValue(s, priv, lower[i], 2), CKR_TEMPLATE_INCONSISTENT,
				     CKR_ATTRIBUTE_READ_ONLY);
			unchanged(priv, &before);
			ASSERT_RV_IN(F->C_CopyObject(s, priv, lower[i], 2, &c), CKR_TEMPLATE_INCONSISTENT,
				     CKR_ATTRIBUTE_READ_ONLY);
			assert_int_equal(count_objects(), objects);
		}
		expect_hidden(priv, CKA_VALUE);
	}
	/* On a key where both values are allowed, only item 5 applies. */
	{
		CK_ATTRIBUTE open[] = { { CKA_SENSITIVE, &fx_false, 1 }, { CKA_EXTRACTABLE, &fx_true, 1 } };
		CK_ATTRIBUTE t[] = { { CKA_SENSITIVE, &fx_false, 1 }, { CKA_SENSITIVE, &fx_true, 1 } };
		CK_OBJECT_HANDLE c;

		h = aes(open, 2);
		objects = count_objects();
		assert_int_equal(F->C_SetAttributeValue(s, h, t, 2), CKR_TEMPLATE_INCONSISTENT);
		assert_int_equal(get_bool(h, CKA_SENSITIVE), CK_FALSE);
		assert_int_equal(F->C_CopyObject(s, h, t, 2, &c), CKR_TEMPLATE_INCONSISTENT);
		assert_int_equal(count_objects(), objects);
	}
	/* The same value twice: 4.1.1 item 6 allows success (as if given once)
	 * or CKR_TEMPLATE_INCONSISTENT. */
	{
		CK_ATTRIBUTE t[] = { { CKA_SENSITIVE, &fx_true, 1 }, { CKA_SENSITIVE, &fx_true, 1 } };
		CK_RV rv = try_aes(t, 2, &h);

		ASSERT_RV_IN(rv, CKR_OK, CKR_TEMPLATE_INCONSISTENT);
		if (rv == CKR_OK) {
			assert_int_equal(get_bool(h, CKA_SENSITIVE), CK_TRUE);
			expect_hidden(h, CKA_VALUE);
		}
	}
}

/* Footnotes 2, 4, 6 of Table 11: CKA_LOCAL, CKA_KEY_GEN_MECHANISM (4.7),
 * CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE (4.9, 4.10) "MUST not be
 * specified" when the object is created, generated or unwrapped: the
 * application cannot write the key's history.  4.1.1 item 3:
 * CKR_ATTRIBUTE_READ_ONLY, no object. */
static void test_history_not_settable_at_creation(void **state)
{
	CK_ULONG gen_mech = CKM_EC_KEY_PAIR_GEN, aes_mech = CKM_AES_KEY_GEN;
	const struct {
		CK_ATTRIBUTE a;
		const char *what;
	} claims[] = {
		{ { CKA_LOCAL, &fx_true, 1 }, "CKA_LOCAL true" },
		{ { CKA_LOCAL, &fx_false, 1 }, "CKA_LOCAL false" },
		{ { CKA_ALWAYS_SENSITIVE, &fx_true, 1 }, "CKA_ALWAYS_SENSITIVE true" },
		{ { CKA_ALWAYS_SENSITIVE, &fx_false, 1 }, "CKA_ALWAYS_SENSITIVE false" },
		{ { CKA_NEVER_EXTRACTABLE, &fx_true, 1 }, "CKA_NEVER_EXTRACTABLE true" },
		{ { CKA_NEVER_EXTRACTABLE, &fx_false, 1 }, "CKA_NEVER_EXTRACTABLE false" },
		{ { CKA_KEY_GEN_MECHANISM, &gen_mech, sizeof(gen_mech) }, "CKA_KEY_GEN_MECHANISM (EC)" },
		{ { CKA_KEY_GEN_MECHANISM, &aes_mech, sizeof(aes_mech) }, "CKA_KEY_GEN_MECHANISM (AES)" },
	};
	struct ec_import m;
	CK_OBJECT_HANDLE pub, priv, h, kek, open_key;
	CK_BYTE wrapped[64];
	CK_ULONG wl = sizeof(wrapped), objects;
	CK_MECHANISM kw = { CKM_AES_KEY_WRAP, NULL, 0 };

	(void)state;
	ec_material(&m);
	{
		CK_ATTRIBUTE open[] = { { CKA_SENSITIVE, &fx_false, 1 }, { CKA_EXTRACTABLE, &fx_true, 1 } };

		kek = aes(NULL, 0);
		open_key = aes(open, 2);
		assert_int_equal(F->C_WrapKey(s, &kw, kek, open_key, wrapped, &wl), CKR_OK);
	}
	objects = count_objects();
	for (size_t i = 0; i < FX_COUNT(claims); i++) {
		CK_ATTRIBUTE sens[] = { { CKA_SENSITIVE, &fx_true, 1 }, claims[i].a };
		CK_ATTRIBUTE ut[] = {
			{ CKA_CLASS, &c_secret, sizeof(c_secret) },
			{ CKA_KEY_TYPE, &k_aes, sizeof(k_aes) },
			{ CKA_TOKEN, &fx_false, 1 },
			{ CKA_SENSITIVE, &fx_true, 1 },
			claims[i].a,
		};
		CK_RV rv;

#define CLAIM(call)                                                                                          \
	do {                                                                                                 \
		rv = (call);                                                                                 \
		if (rv != CKR_ATTRIBUTE_READ_ONLY)                                                           \
			fail_msg("%s with %s = 0x%lx, expected CKR_ATTRIBUTE_READ_ONLY", #call,              \
				 claims[i].what, rv);                                                        \
	} while (0)
		CLAIM(try_pair(K_EC, sens, 2, &pub, &priv));
		CLAIM(try_pair(K_ED, sens, 2, &pub, &priv));
		CLAIM(try_aes(sens, 2, &h));
		CLAIM(try_import_aes(sens, 2, &h));
		CLAIM(try_import_ec(&m, sens, 2, &h));
		CLAIM(F->C_UnwrapKey(s, &kw, kek, wrapped, wl, ut, FX_COUNT(ut), &h));
#undef CLAIM
		assert_int_equal(count_objects(), objects);
	}
	/* The vendor policy is the module's to set, not the application's. */
	if (!fx.softhsm) {
		CK_ULONG p = CK_KT_POLICY_AUTOMATIC;
		CK_ATTRIBUTE t[] = { { CKA_KT_SIGN_POLICY, &p, sizeof(p) } };

		assert_int_equal(try_import_ec(&m, t, 1, &h), CKR_ATTRIBUTE_READ_ONLY);
		assert_int_equal(count_objects(), objects);
	}
}

/* 5.7.1: an imported secret or private key has CKA_LOCAL, CKA_ALWAYS_SENSITIVE
 * and CKA_NEVER_EXTRACTABLE false, however it is protected now; 4.7:
 * CKA_KEY_GEN_MECHANISM is CK_UNAVAILABLE_INFORMATION.  5.18.4: the same
 * for an unwrapped key. */
static void test_imported_keys_are_not_local(void **state)
{
	CK_ATTRIBUTE locked[] = { { CKA_SENSITIVE, &fx_true, 1 }, { CKA_EXTRACTABLE, &fx_false, 1 } };
	struct ec_import m;
	CK_OBJECT_HANDLE keys[3];

	(void)state;
	ec_material(&m);
	assert_int_equal(try_import_ec(&m, locked, 2, &keys[0]), CKR_OK);
	assert_int_equal(try_import_aes(locked, 2, &keys[1]), CKR_OK);
	{
		CK_ATTRIBUTE open[] = { { CKA_SENSITIVE, &fx_false, 1 }, { CKA_EXTRACTABLE, &fx_true, 1 } };
		CK_MECHANISM kw = { CKM_AES_KEY_WRAP_PAD, NULL, 0 };
		CK_OBJECT_HANDLE kek = aes(NULL, 0), src = aes(open, 2);
		CK_BYTE wrapped[64];
		CK_ULONG wl = sizeof(wrapped);
		CK_ATTRIBUTE ut[] = {
			{ CKA_CLASS, &c_secret, sizeof(c_secret) },
			{ CKA_KEY_TYPE, &k_aes, sizeof(k_aes) },
			{ CKA_TOKEN, &fx_false, 1 },
			locked[0],
			locked[1],
		};

		assert_int_equal(F->C_WrapKey(s, &kw, kek, src, wrapped, &wl), CKR_OK);
		assert_int_equal(F->C_UnwrapKey(s, &kw, kek, wrapped, wl, ut, FX_COUNT(ut), &keys[2]),
				 CKR_OK);
	}
	for (size_t i = 0; i < FX_COUNT(keys); i++) {
		assert_int_equal(get_bool(keys[i], CKA_SENSITIVE), CK_TRUE);
		assert_int_equal(get_bool(keys[i], CKA_EXTRACTABLE), CK_FALSE);
		assert_int_equal(get_bool(keys[i], CKA_LOCAL), CK_FALSE);
		assert_int_equal(get_bool(keys[i], CKA_ALWAYS_SENSITIVE), CK_FALSE);
		assert_int_equal(get_bool(keys[i], CKA_NEVER_EXTRACTABLE), CK_FALSE);
		assert_int_equal(get_ulong(keys[i], CKA_KEY_GEN_MECHANISM), CK_UNAVAILABLE_INFORMATION);
		expect_hidden(keys[i], CKA_VALUE);
	}
	/* The imported EC key works (and the history stays honest after use). */
	{
		CK_MECHANISM mech = { CKM_ECDSA, NULL, 0 };
		CK_BYTE hash[32] = "thirty-two bytes of a digest....", sig[80];
		CK_ULONG sl = sizeof(sig);

		assert_int_equal(F->C_SignInit(s, &mech, keys[0]), CKR_OK);
		assert_int_equal(F->C_Sign(s, hash, sizeof(hash), sig, &sl), CKR_OK);
		assert_int_equal(get_bool(keys[0], CKA_LOCAL), CK_FALSE);
	}
}

/* Keys generated with no protection attributes in the template. */
static void test_generated_defaults(void **state)
{
	CK_BYTE e[] = { 0x01, 0x00, 0x01 };
	const struct {
		enum pair_kind k;
		CK_ATTRIBUTE pub[2];
		CK_ULONG npub;
	} gens[] = {
		{ K_RSA,
		  { { CKA_MODULUS_BITS, &rsa_bits, sizeof(rsa_bits) },
		    { CKA_PUBLIC_EXPONENT, e, sizeof(e) } },
		  2 },
		{ K_EC, { { CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len } }, 1 },
		{ K_ED, { { CKA_EC_PARAMS, (void *)fx_ed25519, fx_ed25519_len } }, 1 },
	};
	CK_ATTRIBUTE priv_t[] = { { CKA_SIGN, &fx_true, 1 } };

	(void)state;
	for (size_t i = 0; i < FX_COUNT(gens); i++) {
		CK_MECHANISM m = { kinds[gens[i].k].gen, NULL, 0 };
		CK_OBJECT_HANDLE pub, priv;

		assert_int_equal(F->C_GenerateKeyPair(s, &m, (CK_ATTRIBUTE_PTR)gens[i].pub, gens[i].npub,
						      priv_t, 1, &pub, &priv),
				 CKR_OK);
		/* 4.9: the defaults of CKA_SENSITIVE and CKA_EXTRACTABLE are
		 * token-specific (footnote 9); koltamga's are the protective
		 * ones, and the history says so (5.18.2, 4.9). */
		assert_int_equal(get_bool(priv, CKA_SENSITIVE), CK_TRUE);
		assert_int_equal(get_bool(priv, CKA_EXTRACTABLE), CK_FALSE);
		assert_int_equal(get_bool(priv, CKA_ALWAYS_SENSITIVE), CK_TRUE);
		assert_int_equal(get_bool(priv, CKA_NEVER_EXTRACTABLE), CK_TRUE);
		assert_int_equal(get_bool(priv, CKA_LOCAL), CK_TRUE);
		assert_int_equal(get_ulong(priv, CKA_KEY_GEN_MECHANISM), kinds[gens[i].k].gen);
		assert_int_equal(get_bool(priv, CKA_PRIVATE), CK_TRUE);
		assert_int_equal(get_bool(priv, CKA_WRAP_WITH_TRUSTED), CK_FALSE); /* 4.9: default CK_FALSE */
		expect_hidden(priv, kinds[gens[i].k].secrets[0]);
		signs(gens[i].k, pub, priv);
	}
	/* Secret keys: CKA_EXTRACTABLE's default is token-specific (footnote
	 * 9) and here CK_FALSE, so the value is unreadable whatever
	 * CKA_SENSITIVE says (footnote 7); the history matches what the key
	 * has been since birth. */
	{
		CK_MECHANISM m = { CKM_AES_KEY_GEN, NULL, 0 };
		CK_MECHANISM g = { CKM_GENERIC_SECRET_KEY_GEN, NULL, 0 };
		CK_ULONG len = 32;
		CK_ATTRIBUTE t[] = { { CKA_VALUE_LEN, &len, sizeof(len) } };
		CK_OBJECT_HANDLE keys[2];

		assert_int_equal(F->C_GenerateKey(s, &m, t, 1, &keys[0]), CKR_OK);
		assert_int_equal(F->C_GenerateKey(s, &g, t, 1, &keys[1]), CKR_OK);
		for (size_t i = 0; i < FX_COUNT(keys); i++) {
			assert_int_equal(get_bool(keys[i], CKA_EXTRACTABLE), CK_FALSE);
			assert_int_equal(get_bool(keys[i], CKA_NEVER_EXTRACTABLE), CK_TRUE);
			assert_int_equal(get_bool(keys[i], CKA_ALWAYS_SENSITIVE),
					 get_bool(keys[i], CKA_SENSITIVE));
			assert_int_equal(get_bool(keys[i], CKA_LOCAL), CK_TRUE);
			assert_int_equal(get_ulong(keys[i], CKA_KEY_GEN_MECHANISM),
					 i == 0 ? CKM_AES_KEY_GEN : CKM_GENERIC_SECRET_KEY_GEN);
			expect_hidden(keys[i], CKA_VALUE);
		}
	}
}

/* ==========================================================================
 * 7. After all of it, through a restart: the key signs, the value stays in
 * ========================================================================== */

static const CK_BYTE survivor_id[] = { 0x6b, 0x70, 0x01 };

static void find_survivor(CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *h)
{
	CK_ATTRIBUTE t[] = { { CKA_CLASS, &cls, sizeof(cls) },
			     { CKA_ID, (void *)survivor_id, sizeof(survivor_id) } };
	CK_ULONG n = 0;

	assert_int_equal(F->C_FindObjectsInit(s, t, 2), CKR_OK);
	assert_int_equal(F->C_FindObjects(s, h, 1, &n), CKR_OK);
	assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);
	assert_int_equal(n, 1);
}

static void test_protection_survives(void **state)
{
	CK_ATTRIBUTE pub_t[] = { { CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len },
				 { CKA_TOKEN, &fx_true, 1 },
				 { CKA_ID, (void *)survivor_id, sizeof(survivor_id) } };
	CK_ATTRIBUTE priv_t[] = { { CKA_TOKEN, &fx_true, 1 },
				  { CKA_ID, (void *)survivor_id, sizeof(survivor_id) },
				  { CKA_WRAP_WITH_TRUSTED, &fx_true, 1 } };
	CK_OBJECT_HANDLE pub, priv, kek, rsa_pub, rsa_priv;
	struct snap before;

	(void)state;
	assert_int_equal(fixture_gen_keypair(s, CKM_EC_KEY_PAIR_GEN, pub_t, 3, priv_t, 3, &pub, &priv),
			 CKR_OK);
	pair(K_RSA, NULL, 0, &rsa_pub, &rsa_priv);
	snap(priv, &before);

	/* Everything at once, on the token key and a session RSA key. */
	for (int round = 0; round < 2; round++) {
		CK_OBJECT_HANDLE k = round == 0 ? priv : rsa_priv;
		CK_MECHANISM ecdh = { CKM_ECDH1_DERIVE, NULL, 0 };
		CK_OBJECT_HANDLE d = CK_INVALID_HANDLE;

		set_refused(k);
		copy_refused(k);
		ASSERT_RV_IN(F->C_DeriveKey(s, &ecdh, k, NULL, 0, &d), CKR_FUNCTION_NOT_SUPPORTED,
			     CKR_MECHANISM_INVALID);
		assert_int_equal(d, CK_INVALID_HANDLE);
	}
	unchanged(priv, &before);
	expect_hidden(priv, CKA_VALUE);
	expect_hidden(rsa_priv, CKA_PRIVATE_EXPONENT);
	signs(K_EC, pub, priv);
	signs(K_RSA, rsa_pub, rsa_priv);

	/* A restart reads the token key back from the store: same
	 * protections, value still refused, still signs. */
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
	assert_int_equal(fixture_initialize(), CKR_OK);
	slot = fixture_slot_by_label("keyprot");
	s = fixture_open_user_session(slot);
	find_survivor(CKO_PRIVATE_KEY, &priv);
	find_survivor(CKO_PUBLIC_KEY, &pub);
	unchanged(priv, &before);
	expect_hidden(priv, CKA_VALUE);
	set_refused(priv);
	signs(K_EC, pub, priv);
	/* Logged out, the private token key is not even visible (4.4:
	 * "a user may not access the object until the user has been
	 * authenticated"). */
	assert_int_equal(F->C_Logout(s), CKR_OK);
	{
		CK_BBOOL b;
		CK_ATTRIBUTE a = { CKA_VALUE, &b, sizeof(b) };
		CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
		CK_ATTRIBUTE t[] = { { CKA_CLASS, &cls, sizeof(cls) } };

		assert_int_equal(fixture_count_objects(s, t, 1), 0);
		ASSERT_RV_IN(F->C_GetAttributeValue(s, priv, &a, 1), CKR_OBJECT_HANDLE_INVALID);
	}
	/* Back in: the restored key does not wrap (5.18.3, 5.1.6; see
	 * test_wrap_refused), under any kek. */
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
	find_survivor(CKO_PRIVATE_KEY, &priv);
	kek = aes(NULL, 0);
	{
		CK_MECHANISM kw = { CKM_AES_KEY_WRAP_PAD, NULL, 0 };
		CK_BYTE out[256];
		CK_ULONG len = sizeof(out);

		memset(out, FILL, sizeof(out));
		assert_int_equal(F->C_WrapKey(s, &kw, kek, priv, out, &len), CKR_KEY_UNEXTRACTABLE);
		assert_true(all_fill(out, sizeof(out)));
	}
}

/* A find must not confirm a guessed key value: a template holding the
 * value of a sensitive key matches nothing, while the same search on an
 * open key (whose value anyone may read) finds it. */
static void test_find_is_no_oracle(void **state)
{
	FX_FILE_TOKEN_ONLY("a device key's material is never in the module, so no find can match it at all");
	(void)state;
	static const CK_BYTE value[16] = { 0x6b, 0x6f, 0x6c, 0x74, 0x61, 0x6d, 0x67, 0x61,
					   0x2d, 0x6f, 0x72, 0x61, 0x63, 0x6c, 0x65, 0x21 };
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_AES;
	CK_OBJECT_HANDLE h;
	for (int open = 0; open <= 1; open++) {
		CK_BBOOL sens = open ? CK_FALSE : CK_TRUE, ext = open ? CK_TRUE : CK_FALSE;
		CK_ATTRIBUTE t[] = {
			{ CKA_CLASS, &cls, sizeof(cls) },     { CKA_KEY_TYPE, &kt, sizeof(kt) },
			{ CKA_VALUE, (void *)value, sizeof(value) }, { CKA_SENSITIVE, &sens, sizeof(sens) },
			{ CKA_EXTRACTABLE, &ext, sizeof(ext) },
		};
		assert_int_equal(F->C_CreateObject(s, t, 5, &h), CKR_OK);
		CK_ATTRIBUTE guess[] = { { CKA_VALUE, (void *)value, sizeof(value) } };
		assert_int_equal(fixture_count_objects(s, guess, 1), open ? 1 : 0);
		assert_int_equal(F->C_DestroyObject(s, h), CKR_OK);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_read_private_keys, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_find_is_no_oracle, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_read_secret_keys, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_set_cannot_lower, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_copy_cannot_lower, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_sign_policy_cannot_lower, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_always_authenticate_needs_private, setup,
						fixture_teardown),
		cmocka_unit_test_setup_teardown(test_wrap_refused, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_derive_refused, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_duplicate_attributes, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_history_not_settable_at_creation, setup,
						fixture_teardown),
		cmocka_unit_test_setup_teardown(test_imported_keys_are_not_local, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_generated_defaults, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_protection_survives, setup, fixture_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
