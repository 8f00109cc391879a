/*
 * Module tests: signing, verification and digests (PKCS#11 3.0 sections
 * 5.10-5.13; mechanisms from the current mechanisms specification).
 * Every signature made by the module is checked twice: by the module's own
 * C_Verify and by OpenSSL on the exported public key.
 */
#include "fixture.h"

#include <stdlib.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>

#define F (fx.f)

enum key_kind { RSA2048, P256, ED25519, ED448 };

struct sig_case {
	const char *name;
	CK_MECHANISM_TYPE mech;
	enum key_kind key;
	const char *md; /* the hash, OpenSSL name; NULL for EdDSA */
	bool prehashed; /* the mechanism takes a digest (or DigestInfo), not the message */
	bool pss;
	bool multipart;
};

static const struct sig_case cases[] = {
	{ "CKM_RSA_PKCS", CKM_RSA_PKCS, RSA2048, "SHA256", true, false, false },
	{ "CKM_SHA224_RSA_PKCS", CKM_SHA224_RSA_PKCS, RSA2048, "SHA224", false, false, true },
	{ "CKM_SHA256_RSA_PKCS", CKM_SHA256_RSA_PKCS, RSA2048, "SHA256", false, false, true },
	{ "CKM_SHA384_RSA_PKCS", CKM_SHA384_RSA_PKCS, RSA2048, "SHA384", false, false, true },
	{ "CKM_SHA512_RSA_PKCS", CKM_SHA512_RSA_PKCS, RSA2048, "SHA512", false, false, true },
	{ "CKM_RSA_PKCS_PSS", CKM_RSA_PKCS_PSS, RSA2048, "SHA256", true, true, false },
	{ "CKM_SHA224_RSA_PKCS_PSS", CKM_SHA224_RSA_PKCS_PSS, RSA2048, "SHA224", false, true, true },
	{ "CKM_SHA256_RSA_PKCS_PSS", CKM_SHA256_RSA_PKCS_PSS, RSA2048, "SHA256", false, true, true },
	{ "CKM_SHA384_RSA_PKCS_PSS", CKM_SHA384_RSA_PKCS_PSS, RSA2048, "SHA384", false, true, true },
	{ "CKM_SHA512_RSA_PKCS_PSS", CKM_SHA512_RSA_PKCS_PSS, RSA2048, "SHA512", false, true, true },
	{ "CKM_ECDSA", CKM_ECDSA, P256, "SHA256", true, false, false },
	{ "CKM_ECDSA_SHA224", CKM_ECDSA_SHA224, P256, "SHA224", false, false, true },
	{ "CKM_ECDSA_SHA256", CKM_ECDSA_SHA256, P256, "SHA256", false, false, true },
	{ "CKM_ECDSA_SHA384", CKM_ECDSA_SHA384, P256, "SHA384", false, false, true },
	{ "CKM_ECDSA_SHA512", CKM_ECDSA_SHA512, P256, "SHA512", false, false, true },
	{ "CKM_EDDSA Ed25519", CKM_EDDSA, ED25519, NULL, false, false, false },
	{ "CKM_EDDSA Ed448", CKM_EDDSA, ED448, NULL, false, false, false },
};

static CK_SLOT_ID slot;
static CK_SESSION_HANDLE s; /* R/W, user logged in */

static const CK_BYTE msg[] = "The quick brown fox jumps over the lazy dog, signed by a soft token.";

static int setup(void **state)
{
	(void)state; /* the case, for the tests that take one */
	if (fixture_setup(NULL) != 0)
		return -1;
	slot = fixture_init_token();
	s = fixture_open_user_session(slot);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	return fixture_teardown(NULL);
}

static bool mech_listed(CK_MECHANISM_TYPE m)
{
	CK_MECHANISM_INFO mi;

	return F->C_GetMechanismInfo(slot, m, &mi) == CKR_OK;
}

/* koltamga must have every mechanism here; SoftHSM2 2.6 lacks some. */
static void need_mech(CK_MECHANISM_TYPE m)
{
	if (!mech_listed(m)) {
		if (fx.softhsm)
			skip();
		fail_msg("mechanism 0x%lx not supported", m);
	}
}

static CK_RV gen_key(enum key_kind k, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
	switch (k) {
	case RSA2048:
		return fixture_gen_rsa(s, 2048, pub, priv);
	case P256:
		return fixture_gen_ec(s, fx_p256, fx_p256_len, pub, priv);
	case ED25519:
		return fixture_gen_eddsa(s, fx_ed25519, fx_ed25519_len, pub, priv);
	case ED448:
		return fixture_gen_eddsa(s, fx_ed448, fx_ed448_len, pub, priv);
	}
	return CKR_GENERAL_ERROR;
}

/* --- OpenSSL side --------------------------------------------------------- */

/* CKA_EC_POINT is a DER OCTET STRING; accept the raw point too. */
static const CK_BYTE *ec_point(const CK_BYTE *v, CK_ULONG len, size_t *out_len)
{
	if (len >= 2 && v[0] == 0x04 && v[1] < 0x80 && (CK_ULONG)v[1] + 2 == len) {
		*out_len = v[1];
		return v + 2;
	}
	if (len >= 3 && v[0] == 0x04 && v[1] == 0x81 && (CK_ULONG)v[2] + 3 == len) {
		*out_len = v[2];
		return v + 3;
	}
	*out_len = len;
	return v;
}

static EVP_PKEY *export_public(CK_OBJECT_HANDLE pub, enum key_kind k)
{
	EVP_PKEY *pk = NULL;
	EVP_PKEY_CTX *ctx;
	OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
	OSSL_PARAM *params;
	CK_ULONG l1, l2;

	assert_non_null(bld);
	if (k == RSA2048) {
		CK_BYTE *n = fixture_get_attr(s, pub, CKA_MODULUS, &l1);
		CK_BYTE *e = fixture_get_attr(s, pub, CKA_PUBLIC_EXPONENT, &l2);
		BIGNUM *bn = BN_bin2bn(n, (int)l1, NULL), *be = BN_bin2bn(e, (int)l2, NULL);

		assert_non_null(n);
		assert_non_null(e);
		OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn);
		OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be);
		params = OSSL_PARAM_BLD_to_param(bld);
		ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
		assert_true(EVP_PKEY_fromdata_init(ctx) > 0);
		assert_true(EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) > 0);
		EVP_PKEY_CTX_free(ctx);
		OSSL_PARAM_free(params);
		BN_free(bn);
		BN_free(be);
		free(n);
		free(e);
	} else {
		CK_BYTE *v = fixture_get_attr(s, pub, CKA_EC_POINT, &l1);
		size_t pl;
		const CK_BYTE *p;

		assert_non_null(v);
		p = ec_point(v, l1, &pl);
		if (k == P256) {
			OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0);
			OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, p, pl);
			params = OSSL_PARAM_BLD_to_param(bld);
			ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
			assert_true(EVP_PKEY_fromdata_init(ctx) > 0);
			assert_true(EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) > 0);
			EVP_PKEY_CTX_free(ctx);
			OSSL_PARAM_free(params);
		} else {
			pk = EVP_PKEY_new_raw_public_key(k == ED25519 ? EVP_PKEY_ED25519 : EVP_PKEY_ED448, NULL, p,
							 pl);
		}
		free(v);
	}
	OSSL_PARAM_BLD_free(bld);
	assert_non_null(pk);
	return pk;
}

/* PKCS#11 ECDSA signatures are r || s; OpenSSL wants DER. */
static unsigned char *ecdsa_der(const CK_BYTE *sig, CK_ULONG len, size_t *der_len)
{
	ECDSA_SIG *es = ECDSA_SIG_new();
	unsigned char *der = NULL;
	int n;

	ECDSA_SIG_set0(es, BN_bin2bn(sig, (int)len / 2, NULL), BN_bin2bn(sig + len / 2, (int)len / 2, NULL));
	n = i2d_ECDSA_SIG(es, &der);
	ECDSA_SIG_free(es);
	assert_true(n > 0);
	*der_len = (size_t)n;
	return der;
}

static void set_pss(EVP_PKEY_CTX *pctx, const EVP_MD *md)
{
	assert_true(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0);
	assert_true(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, EVP_MD_get_size(md)) > 0);
	assert_true(EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) > 0);
}

/* Verify a module signature of `msg` with OpenSSL. */
static bool openssl_verify(const struct sig_case *c, EVP_PKEY *pk, const CK_BYTE *sig, CK_ULONG sig_len)
{
	const EVP_MD *md = c->md ? EVP_get_digestbyname(c->md) : NULL;
	unsigned char *der = NULL;
	const unsigned char *sp = sig;
	size_t sl = sig_len;
	int ok;

	if (c->key == P256) {
		der = ecdsa_der(sig, sig_len, &sl);
		sp = der;
	}
	if (c->prehashed) {
		unsigned char h[EVP_MAX_MD_SIZE];
		unsigned int hl;
		EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pk, NULL);

		assert_true(EVP_Digest(msg, sizeof(msg), h, &hl, md, NULL));
		assert_true(EVP_PKEY_verify_init(ctx) > 0);
		if (c->key == RSA2048) {
			assert_true(EVP_PKEY_CTX_set_signature_md(ctx, md) > 0);
			if (c->pss)
				set_pss(ctx, md);
			else
				assert_true(EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) > 0);
		}
		ok = EVP_PKEY_verify(ctx, sp, sl, h, hl);
		EVP_PKEY_CTX_free(ctx);
	} else {
		EVP_MD_CTX *mctx = EVP_MD_CTX_new();
		EVP_PKEY_CTX *pctx = NULL;

		assert_true(EVP_DigestVerifyInit(mctx, &pctx, md, NULL, pk) > 0);
		if (c->pss)
			set_pss(pctx, md);
		ok = EVP_DigestVerify(mctx, sp, sl, msg, sizeof(msg));
		EVP_MD_CTX_free(mctx);
	}
	OPENSSL_free(der);
	return ok == 1;
}

/* --- the module side ------------------------------------------------------ */

/* What the mechanism is fed: the message, or its digest (DigestInfo for
 * CKM_RSA_PKCS). */
static CK_ULONG sign_input(const struct sig_case *c, CK_BYTE *out)
{
	static const CK_BYTE sha256_info[] = { 0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
					       0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20 };
	unsigned int hl = 0;
	CK_ULONG off = 0;

	if (!c->prehashed) {
		memcpy(out, msg, sizeof(msg));
		return sizeof(msg);
	}
	if (c->mech == CKM_RSA_PKCS) {
		memcpy(out, sha256_info, sizeof(sha256_info));
		off = sizeof(sha256_info);
	}
	assert_true(EVP_Digest(msg, sizeof(msg), out + off, &hl, EVP_get_digestbyname(c->md), NULL));
	return off + hl;
}

static CK_MECHANISM_TYPE hash_mech(const char *md)
{
	if (strcmp(md, "SHA224") == 0)
		return CKM_SHA224;
	if (strcmp(md, "SHA384") == 0)
		return CKM_SHA384;
	if (strcmp(md, "SHA512") == 0)
		return CKM_SHA512;
	return CKM_SHA256;
}

static CK_RSA_PKCS_MGF_TYPE mgf_of(const char *md)
{
	if (strcmp(md, "SHA224") == 0)
		return CKG_MGF1_SHA224;
	if (strcmp(md, "SHA384") == 0)
		return CKG_MGF1_SHA384;
	if (strcmp(md, "SHA512") == 0)
		return CKG_MGF1_SHA512;
	return CKG_MGF1_SHA256;
}

static CK_ULONG sig_size(enum key_kind k)
{
	switch (k) {
	case RSA2048:
		return 256;
	case P256:
	case ED25519:
		return 64;
	case ED448:
		return 114;
	}
	return 0;
}

static void test_mechanism(void **state)
{
	const struct sig_case *c = *state;
	CK_RSA_PKCS_PSS_PARAMS pss;
	CK_MECHANISM m = { c->mech, NULL, 0 };
	CK_OBJECT_HANDLE pub, priv;
	CK_BYTE in[1024], sig[512], sig2[512];
	CK_ULONG in_len, len, len2, want = sig_size(c->key);
	EVP_PKEY *pk;

	need_mech(c->mech);
	if (c->pss) {
		pss.hashAlg = hash_mech(c->md);
		pss.mgf = mgf_of(c->md);
		pss.sLen = (CK_ULONG)EVP_MD_get_size(EVP_get_digestbyname(c->md));
		m.pParameter = &pss;
		m.ulParameterLen = sizeof(pss);
	}
	assert_int_equal(gen_key(c->key, &pub, &priv), CKR_OK);
	pk = export_public(pub, c->key);
	in_len = sign_input(c, in);

	/* Single part, with the length query and a too-small buffer first:
	 * neither ends the operation. */
	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_OK);
	len = 0;
	assert_int_equal(F->C_Sign(s, in, in_len, NULL, &len), CKR_OK);
	assert_int_equal(len, want);
	len = want - 1;
	assert_int_equal(F->C_Sign(s, in, in_len, sig, &len), CKR_BUFFER_TOO_SMALL);
	assert_int_equal(len, want);
	len = sizeof(sig);
	assert_int_equal(F->C_Sign(s, in, in_len, sig, &len), CKR_OK);
	assert_int_equal(len, want);
	/* Success ended it. */
	len2 = sizeof(sig2);
	assert_int_equal(F->C_Sign(s, in, in_len, sig2, &len2), CKR_OPERATION_NOT_INITIALIZED);

	assert_true(openssl_verify(c, pk, sig, len));
	assert_int_equal(F->C_VerifyInit(s, &m, pub), CKR_OK);
	assert_int_equal(F->C_Verify(s, in, in_len, sig, len), CKR_OK);

	/* A changed message, a changed signature, a wrong length. */
	in[in_len / 2] ^= 0x01;
	assert_int_equal(F->C_VerifyInit(s, &m, pub), CKR_OK);
	assert_int_equal(F->C_Verify(s, in, in_len, sig, len), CKR_SIGNATURE_INVALID);
	in[in_len / 2] ^= 0x01;
	sig[len - 1] ^= 0x01;
	assert_int_equal(F->C_VerifyInit(s, &m, pub), CKR_OK);
	assert_int_equal(F->C_Verify(s, in, in_len, sig, len), CKR_SIGNATURE_INVALID);
	sig[len - 1] ^= 0x01;
	assert_int_equal(F->C_VerifyInit(s, &m, pub), CKR_OK);
	assert_int_equal(F->C_Verify(s, in, in_len, sig, len - 1), CKR_SIGNATURE_LEN_RANGE);
	/* C_Verify ended each of those. */
	assert_int_equal(F->C_Verify(s, in, in_len, sig, len), CKR_OPERATION_NOT_INITIALIZED);

	if (c->multipart) {
		size_t half = sizeof(msg) / 2;

		assert_int_equal(F->C_SignInit(s, &m, priv), CKR_OK);
		assert_int_equal(F->C_SignUpdate(s, (CK_BYTE_PTR)msg, half), CKR_OK);
		assert_int_equal(F->C_SignUpdate(s, (CK_BYTE_PTR)msg + half, sizeof(msg) - half), CKR_OK);
		len2 = 0;
		assert_int_equal(F->C_SignFinal(s, NULL, &len2), CKR_OK);
		assert_int_equal(len2, want);
		len2 = 1;
		assert_int_equal(F->C_SignFinal(s, sig2, &len2), CKR_BUFFER_TOO_SMALL);
		assert_int_equal(len2, want);
		len2 = sizeof(sig2);
		assert_int_equal(F->C_SignFinal(s, sig2, &len2), CKR_OK);
		assert_int_equal(len2, want);
		assert_int_equal(F->C_SignFinal(s, sig2, &len2), CKR_OPERATION_NOT_INITIALIZED);
		assert_true(openssl_verify(c, pk, sig2, len2));

		/* Multi-part verify of the single-part signature, and of a bad one. */
		assert_int_equal(F->C_VerifyInit(s, &m, pub), CKR_OK);
		assert_int_equal(F->C_VerifyUpdate(s, (CK_BYTE_PTR)msg, half), CKR_OK);
		assert_int_equal(F->C_VerifyUpdate(s, (CK_BYTE_PTR)msg + half, sizeof(msg) - half), CKR_OK);
		assert_int_equal(F->C_VerifyFinal(s, sig, len), CKR_OK);
		assert_int_equal(F->C_VerifyInit(s, &m, pub), CKR_OK);
		assert_int_equal(F->C_VerifyUpdate(s, (CK_BYTE_PTR)msg, half), CKR_OK);
		assert_int_equal(F->C_VerifyFinal(s, sig, len), CKR_SIGNATURE_INVALID);
	} else if (c->prehashed) {
		/* Mechanisms on a digest are single-part only. */
		CK_RV rv;

		assert_int_equal(F->C_SignInit(s, &m, priv), CKR_OK);
		rv = F->C_SignUpdate(s, in, in_len);
		assert_true(rv == CKR_FUNCTION_NOT_SUPPORTED || rv == CKR_OPERATION_NOT_INITIALIZED ||
			    rv == CKR_OK);
		if (rv == CKR_OK) /* some tokens buffer; the op must still finish */
			F->C_SignFinal(s, sig2, &len2);
	}
	EVP_PKEY_free(pk);
}

/* --- errors ----------------------------------------------------------------- */

static void test_operation_state_errors(void **state)
{
	CK_MECHANISM ecdsa = { CKM_ECDSA, NULL, 0 };
	CK_MECHANISM rsa = { CKM_SHA256_RSA_PKCS, NULL, 0 };
	CK_OBJECT_HANDLE pub, priv, rpub, rpriv;
	CK_BYTE h[32] = { 1 }, sig[256];
	CK_ULONG len = sizeof(sig);

	(void)state;
	assert_int_equal(F->C_Sign(s, h, sizeof(h), sig, &len), CKR_OPERATION_NOT_INITIALIZED);
	assert_int_equal(F->C_SignUpdate(s, h, sizeof(h)), CKR_OPERATION_NOT_INITIALIZED);
	assert_int_equal(F->C_SignFinal(s, sig, &len), CKR_OPERATION_NOT_INITIALIZED);
	assert_int_equal(F->C_Verify(s, h, sizeof(h), sig, 64), CKR_OPERATION_NOT_INITIALIZED);
	assert_int_equal(F->C_VerifyFinal(s, sig, 64), CKR_OPERATION_NOT_INITIALIZED);

	assert_int_equal(fixture_gen_ec(s, fx_p256, fx_p256_len, &pub, &priv), CKR_OK);
	assert_int_equal(fixture_gen_rsa(s, 2048, &rpub, &rpriv), CKR_OK);
	assert_int_equal(F->C_SignInit(s, NULL, priv), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_SignInit(s, &ecdsa, priv), CKR_OK);
	assert_int_equal(F->C_SignInit(s, &rsa, rpriv), CKR_OPERATION_ACTIVE);
	/* The first operation is untouched. */
	len = sizeof(sig);
	assert_int_equal(F->C_Sign(s, h, sizeof(h), sig, &len), CKR_OK);
	assert_int_equal(len, 64);

	/* Sign and verify at once in one session: a token may allow it or
	 * answer CKR_OPERATION_ACTIVE; either way the signing still works. */
	assert_int_equal(F->C_SignInit(s, &ecdsa, priv), CKR_OK);
	{
		CK_RV rv = F->C_VerifyInit(s, &ecdsa, pub);

		assert_true(rv == CKR_OK || rv == CKR_OPERATION_ACTIVE);
		len = sizeof(sig);
		assert_int_equal(F->C_Sign(s, h, sizeof(h), sig, &len), CKR_OK);
		if (rv == CKR_OK)
			assert_int_equal(F->C_Verify(s, h, sizeof(h), sig, len), CKR_OK);
	}

	/* NULL pulSignatureLen. */
	assert_int_equal(F->C_SignInit(s, &ecdsa, priv), CKR_OK);
	assert_int_equal(F->C_Sign(s, h, sizeof(h), sig, NULL), CKR_ARGUMENTS_BAD);
}

/* C_SignInit in a new session of its own, closed again. */
static CK_RV sign_init_fresh(CK_MECHANISM *m, CK_OBJECT_HANDLE key)
{
	CK_SESSION_HANDLE s2 = fixture_open_session(slot, false);
	CK_RV rv = F->C_SignInit(s2, m, key);

	assert_int_equal(F->C_CloseSession(s2), CKR_OK);
	return rv;
}

static void test_key_errors(void **state)
{
	CK_MECHANISM ecdsa = { CKM_ECDSA, NULL, 0 };
	CK_MECHANISM rsa = { CKM_SHA256_RSA_PKCS, NULL, 0 };
	CK_MECHANISM eddsa = { CKM_EDDSA, NULL, 0 };
	CK_MECHANISM unknown = { 0x7ffffff0UL, NULL, 0 };
	CK_OBJECT_HANDLE pub, priv, rpub, rpriv, npub, npriv, aes;
	CK_ATTRIBUTE nosign[] = { { CKA_SIGN, &fx_false, 1 } };
	CK_ATTRIBUTE ec[] = { { CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len } };
	CK_RV rv;

	(void)state;
	assert_int_equal(fixture_gen_ec(s, fx_p256, fx_p256_len, &pub, &priv), CKR_OK);
	assert_int_equal(fixture_gen_rsa(s, 2048, &rpub, &rpriv), CKR_OK);
	assert_int_equal(fixture_gen_keypair(s, CKM_EC_KEY_PAIR_GEN, ec, 1, nosign, 1, &npub, &npriv), CKR_OK);

	/* Each refusal in a fresh session, so that a token that wrongly
	 * accepts one does not spoil the next check. */
	FX_ASSERT_RV(sign_init_fresh(&ecdsa, npriv), CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_OK);
	FX_ASSERT_RV(sign_init_fresh(&rsa, priv), CKR_KEY_TYPE_INCONSISTENT, CKR_OK);
	FX_ASSERT_RV(sign_init_fresh(&ecdsa, rpriv), CKR_KEY_TYPE_INCONSISTENT, CKR_OK);
	{
		CK_SESSION_HANDLE s2 = fixture_open_session(slot, false);

		FX_ASSERT_RV(F->C_VerifyInit(s2, &ecdsa, rpub), CKR_KEY_TYPE_INCONSISTENT, CKR_OK);
		assert_int_equal(F->C_CloseSession(s2), CKR_OK);
	}
	if (mech_listed(CKM_EDDSA))
		FX_ASSERT_RV(sign_init_fresh(&eddsa, priv), CKR_KEY_TYPE_INCONSISTENT, CKR_OK);
	assert_int_equal(sign_init_fresh(&unknown, priv), CKR_MECHANISM_INVALID);
	/* A public key cannot sign. */
	rv = sign_init_fresh(&ecdsa, pub);
	assert_true(rv == CKR_KEY_TYPE_INCONSISTENT || rv == CKR_KEY_FUNCTION_NOT_PERMITTED);
	/* A secret key is not an ECDSA key. */
	assert_int_equal(fixture_gen_aes(s, 32, NULL, 0, &aes), CKR_OK);
	rv = sign_init_fresh(&ecdsa, aes); /* it has no CKA_SIGN either: both answers fit */
	if (rv != CKR_KEY_FUNCTION_NOT_PERMITTED)
		FX_ASSERT_RV(rv, CKR_KEY_TYPE_INCONSISTENT, CKR_OK);
	/* Still no operation after all those refusals. */
	assert_int_equal(F->C_SignInit(s, &ecdsa, priv), CKR_OK);
}

static void test_mechanism_params(void **state)
{
	CK_RSA_PKCS_PSS_PARAMS good = { CKM_SHA256, CKG_MGF1_SHA256, 32 };
	CK_RSA_PKCS_PSS_PARAMS bad_hash = { CKM_SHA384, CKG_MGF1_SHA256, 32 };
	CK_RSA_PKCS_PSS_PARAMS bad_mgf = { CKM_SHA256, 0x99, 32 };
	CK_RSA_PKCS_PSS_PARAMS bad_salt = { CKM_SHA256, CKG_MGF1_SHA256, 1000 };
	CK_MECHANISM m = { CKM_SHA256_RSA_PKCS_PSS, NULL, 0 };
	CK_MECHANISM ecdsa_p = { CKM_ECDSA, &good, sizeof(good) };
	CK_OBJECT_HANDLE pub, priv, epub, epriv;

	(void)state;
	assert_int_equal(fixture_gen_rsa(s, 2048, &pub, &priv), CKR_OK);
	assert_int_equal(fixture_gen_ec(s, fx_p256, fx_p256_len, &epub, &epriv), CKR_OK);

	/* CKR_MECHANISM_PARAM_INVALID, never CKR_ARGUMENTS_BAD (pkcs11-tool
	 * --test stops on the latter, clients.md). */
	FX_ASSERT_RV(sign_init_fresh(&m, priv), CKR_MECHANISM_PARAM_INVALID, CKR_ARGUMENTS_BAD);
	m.pParameter = &good;
	m.ulParameterLen = sizeof(good) - 1;
	FX_ASSERT_RV(sign_init_fresh(&m, priv), CKR_MECHANISM_PARAM_INVALID, CKR_ARGUMENTS_BAD);
	m.ulParameterLen = sizeof(good);
	m.pParameter = &bad_hash;
	FX_ASSERT_RV(sign_init_fresh(&m, priv), CKR_MECHANISM_PARAM_INVALID, CKR_ARGUMENTS_BAD);
	m.pParameter = &bad_mgf;
	FX_ASSERT_RV(sign_init_fresh(&m, priv), CKR_MECHANISM_PARAM_INVALID, CKR_ARGUMENTS_BAD);
	m.pParameter = &bad_salt;
	FX_ASSERT_RV(sign_init_fresh(&m, priv), CKR_MECHANISM_PARAM_INVALID, CKR_MECHANISM_INVALID);
	m.mechanism = CKM_RSA_PKCS_PSS;
	m.pParameter = &bad_mgf;
	FX_ASSERT_RV(sign_init_fresh(&m, priv), CKR_MECHANISM_PARAM_INVALID, CKR_ARGUMENTS_BAD);
	/* A parameter where none belongs. */
	FX_ASSERT_RV(sign_init_fresh(&ecdsa_p, epriv), CKR_MECHANISM_PARAM_INVALID, CKR_OK);

	/* And the good one works after all the refusals. */
	m.mechanism = CKM_SHA256_RSA_PKCS_PSS;
	m.pParameter = &good;
	{
		CK_SESSION_HANDLE s2 = fixture_open_session(slot, false);
		CK_BYTE sig[256];
		CK_ULONG len = sizeof(sig);

		assert_int_equal(F->C_SignInit(s2, &m, priv), CKR_OK);
		assert_int_equal(F->C_Sign(s2, (CK_BYTE_PTR)msg, sizeof(msg), sig, &len), CKR_OK);
		assert_int_equal(len, 256);
	}
}

static void test_rsa_key_size(void **state)
{
	CK_MECHANISM_INFO mi;
	CK_OBJECT_HANDLE pub, priv;

	(void)state;
	assert_int_equal(F->C_GetMechanismInfo(slot, CKM_RSA_PKCS_KEY_PAIR_GEN, &mi), CKR_OK);
	if (!fx.softhsm)
		assert_int_equal(mi.ulMinKeySize, 2048);
	if (mi.ulMinKeySize > 1024)
		assert_int_equal(fixture_gen_rsa(s, 1024, &pub, &priv), CKR_KEY_SIZE_RANGE);
	FX_ASSERT_RV(fixture_gen_rsa(s, mi.ulMaxKeySize + 8, &pub, &priv), CKR_KEY_SIZE_RANGE, CKR_GENERAL_ERROR);
	assert_int_equal(fixture_gen_rsa(s, 3072, &pub, &priv), CKR_OK);
	{
		CK_ULONG bits = 0;
		CK_ATTRIBUTE a = { CKA_MODULUS_BITS, &bits, sizeof(bits) };

		assert_int_equal(F->C_GetAttributeValue(s, pub, &a, 1), CKR_OK);
		assert_int_equal(bits, 3072);
	}
	/* An unsupported curve. */
	{
		static const CK_BYTE secp256k1[] = { 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a };
		static const CK_BYTE unknown[] = { 0x06, 0x03, 0x2a, 0x03, 0x04 }; /* OID 1.2.3.4 */
		static const CK_BYTE garbage[] = { 0x06, 0x03, 0x01, 0x02 };	    /* bad DER */
		CK_RV rv = fixture_gen_ec(s, unknown, sizeof(unknown), &pub, &priv);

		if (rv != CKR_ATTRIBUTE_VALUE_INVALID && rv != CKR_DOMAIN_PARAMS_INVALID)
			FX_ASSERT_RV(rv, CKR_CURVE_NOT_SUPPORTED, CKR_GENERAL_ERROR);
		rv = fixture_gen_ec(s, garbage, sizeof(garbage), &pub, &priv);
		if (rv != CKR_DOMAIN_PARAMS_INVALID && rv != CKR_CURVE_NOT_SUPPORTED)
			FX_ASSERT_RV(rv, CKR_ATTRIBUTE_VALUE_INVALID, CKR_GENERAL_ERROR);
		if (!fx.softhsm) {
			rv = fixture_gen_ec(s, secp256k1, sizeof(secp256k1), &pub, &priv);
			assert_true(rv == CKR_OK || rv == CKR_CURVE_NOT_SUPPORTED);
		}
	}
}

/* --- digests ---------------------------------------------------------------- */

static void test_digests(void **state)
{
	static const struct {
		CK_MECHANISM_TYPE mech;
		const char *md;
	} d[] = { { CKM_SHA224, "SHA224" }, { CKM_SHA256, "SHA256" }, { CKM_SHA384, "SHA384" },
		  { CKM_SHA512, "SHA512" } };
	CK_BYTE out[64], want[64];
	unsigned int wl;
	CK_ULONG len;

	(void)state;
	for (size_t i = 0; i < FX_COUNT(d); i++) {
		CK_MECHANISM m = { d[i].mech, NULL, 0 };

		assert_true(EVP_Digest(msg, sizeof(msg), want, &wl, EVP_get_digestbyname(d[i].md), NULL));

		assert_int_equal(F->C_DigestInit(s, &m), CKR_OK);
		assert_int_equal(F->C_DigestInit(s, &m), CKR_OPERATION_ACTIVE);
		len = 0;
		assert_int_equal(F->C_Digest(s, (CK_BYTE_PTR)msg, sizeof(msg), NULL, &len), CKR_OK);
		assert_int_equal(len, wl);
		len = 4;
		assert_int_equal(F->C_Digest(s, (CK_BYTE_PTR)msg, sizeof(msg), out, &len), CKR_BUFFER_TOO_SMALL);
		assert_int_equal(len, wl);
		len = sizeof(out);
		assert_int_equal(F->C_Digest(s, (CK_BYTE_PTR)msg, sizeof(msg), out, &len), CKR_OK);
		assert_int_equal(len, wl);
		assert_memory_equal(out, want, wl);
		assert_int_equal(F->C_Digest(s, (CK_BYTE_PTR)msg, sizeof(msg), out, &len),
				 CKR_OPERATION_NOT_INITIALIZED);

		assert_int_equal(F->C_DigestInit(s, &m), CKR_OK);
		assert_int_equal(F->C_DigestUpdate(s, (CK_BYTE_PTR)msg, 10), CKR_OK);
		assert_int_equal(F->C_DigestUpdate(s, (CK_BYTE_PTR)msg + 10, 0), CKR_OK);
		assert_int_equal(F->C_DigestUpdate(s, (CK_BYTE_PTR)msg + 10, sizeof(msg) - 10), CKR_OK);
		len = 0;
		assert_int_equal(F->C_DigestFinal(s, NULL, &len), CKR_OK);
		assert_int_equal(len, wl);
		len = sizeof(out);
		assert_int_equal(F->C_DigestFinal(s, out, &len), CKR_OK);
		assert_memory_equal(out, want, wl);
		assert_int_equal(F->C_DigestFinal(s, out, &len), CKR_OPERATION_NOT_INITIALIZED);
	}
	{
		CK_MECHANISM bad = { CKM_ECDSA, NULL, 0 };

		assert_int_equal(F->C_DigestInit(s, &bad), CKR_MECHANISM_INVALID);
		len = sizeof(out);
		assert_int_equal(F->C_Digest(s, (CK_BYTE_PTR)msg, 1, out, &len), CKR_OPERATION_NOT_INITIALIZED);
	}
	/* Digests need no login. */
	{
		CK_SESSION_HANDLE ro;
		CK_MECHANISM m = { CKM_SHA256, NULL, 0 };

		assert_int_equal(F->C_Logout(s), CKR_OK);
		ro = fixture_open_session(slot, false);
		assert_int_equal(F->C_DigestInit(ro, &m), CKR_OK);
		len = sizeof(out);
		assert_int_equal(F->C_Digest(ro, (CK_BYTE_PTR)msg, sizeof(msg), out, &len), CKR_OK);
	}
}

/* --- login and signing ------------------------------------------------------ */

static void test_sign_after_logout(void **state)
{
	CK_MECHANISM ecdsa = { CKM_ECDSA, NULL, 0 };
	CK_OBJECT_HANDLE pub, priv, tpub, tpriv;
	CK_ATTRIBUTE tok[] = { { CKA_TOKEN, &fx_true, 1 } };
	CK_ATTRIBUTE ec[] = { { CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len }, { CKA_TOKEN, &fx_true, 1 } };
	CK_BYTE h[32] = { 2 }, sig[64] = { 0 };
	CK_ULONG len = sizeof(sig);
	CK_RV rv;

	(void)state;
	assert_int_equal(fixture_gen_ec(s, fx_p256, fx_p256_len, &pub, &priv), CKR_OK);
	assert_int_equal(fixture_gen_keypair(s, CKM_EC_KEY_PAIR_GEN, ec, 2, tok, 1, &tpub, &tpriv), CKR_OK);
	assert_int_equal(F->C_Logout(s), CKR_OK);

	/* Logout invalidated the handles to private objects (and destroyed
	 * private session objects). */
	rv = F->C_SignInit(s, &ecdsa, priv);
	if (rv != CKR_USER_NOT_LOGGED_IN)
		FX_ASSERT_RV(rv, CKR_KEY_HANDLE_INVALID, CKR_OBJECT_HANDLE_INVALID);
	rv = F->C_SignInit(s, &ecdsa, tpriv);
	if (rv != CKR_USER_NOT_LOGGED_IN)
		FX_ASSERT_RV(rv, CKR_KEY_HANDLE_INVALID, CKR_OBJECT_HANDLE_INVALID);
	assert_int_equal(F->C_Sign(s, h, sizeof(h), sig, &len), CKR_OPERATION_NOT_INITIALIZED);
	/* Verification with a public key needs no login. */
	assert_int_equal(F->C_VerifyInit(s, &ecdsa, tpub), CKR_OK);
	assert_int_equal(F->C_Verify(s, h, sizeof(h), sig, 64), CKR_SIGNATURE_INVALID);
}

static void test_always_authenticate(void **state)
{
	CK_MECHANISM ecdsa = { CKM_ECDSA, NULL, 0 };
	CK_OBJECT_HANDLE pub, priv;
	CK_ATTRIBUTE aa[] = { { CKA_ALWAYS_AUTHENTICATE, &fx_true, 1 } };
	CK_ATTRIBUTE ec[] = { { CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len } };
	CK_BYTE h[32] = "0123456789abcdef0123456789abcdef", sig[64] = { 0 };
	CK_ULONG len;
	CK_TOKEN_INFO ti;
	CK_SESSION_INFO si;
	CK_RV rv;

	(void)state;
	assert_int_equal(fixture_gen_keypair(s, CKM_EC_KEY_PAIR_GEN, ec, 1, aa, 1, &pub, &priv), CKR_OK);
	assert_int_equal(fixture_get_bool(s, priv, CKA_ALWAYS_AUTHENTICATE), CK_TRUE);

	/* Without the context login: refused. */
	assert_int_equal(F->C_SignInit(s, &ecdsa, priv), CKR_OK);
	len = sizeof(sig);
	assert_int_equal(F->C_Sign(s, h, sizeof(h), sig, &len), CKR_USER_NOT_LOGGED_IN);

	/* The operation may or may not have survived; start (again). */
	rv = F->C_SignInit(s, &ecdsa, priv);
	assert_true(rv == CKR_OK || rv == CKR_OPERATION_ACTIVE);
	/* Other calls in between do not end the operation (NSS does this). */
	assert_int_equal(F->C_GetTokenInfo(slot, &ti), CKR_OK);
	assert_int_equal(F->C_GetSessionInfo(s, &si), CKR_OK);
	assert_int_equal(F->C_Login(s, CKU_CONTEXT_SPECIFIC, FX_PIN("0000")), CKR_PIN_INCORRECT);
	assert_int_equal(F->C_GetTokenInfo(slot, &ti), CKR_OK);
	assert_int_equal(F->C_Login(s, CKU_CONTEXT_SPECIFIC, FX_PIN(FX_USER_PIN)), CKR_OK);
	len = sizeof(sig);
	assert_int_equal(F->C_Sign(s, h, sizeof(h), sig, &len), CKR_OK);
	assert_int_equal(F->C_VerifyInit(s, &ecdsa, pub), CKR_OK);
	assert_int_equal(F->C_Verify(s, h, sizeof(h), sig, len), CKR_OK);

	/* The next signature needs the PIN again. */
	assert_int_equal(F->C_SignInit(s, &ecdsa, priv), CKR_OK);
	len = sizeof(sig);
	assert_int_equal(F->C_Sign(s, h, sizeof(h), sig, &len), CKR_USER_NOT_LOGGED_IN);

	/* The context login does not change the session state. */
	rv = F->C_SignInit(s, &ecdsa, priv);
	assert_true(rv == CKR_OK || rv == CKR_OPERATION_ACTIVE);
	assert_int_equal(F->C_Login(s, CKU_CONTEXT_SPECIFIC, FX_PIN(FX_USER_PIN)), CKR_OK);
	assert_int_equal(F->C_GetSessionInfo(s, &si), CKR_OK);
	assert_int_equal(si.state, CKS_RW_USER_FUNCTIONS);
	/* Length query with the context login done: still one signature. */
	len = 0;
	assert_int_equal(F->C_Sign(s, h, sizeof(h), NULL, &len), CKR_OK);
	assert_int_equal(len, 64);
	len = sizeof(sig);
	assert_int_equal(F->C_Sign(s, h, sizeof(h), sig, &len), CKR_OK);
}

int main(void)
{
	struct CMUnitTest tests[FX_COUNT(cases) + 8];
	size_t n = 0;

	for (size_t i = 0; i < FX_COUNT(cases); i++) {
		tests[n] = (struct CMUnitTest){ cases[i].name, test_mechanism, setup, teardown, (void *)&cases[i] };
		n++;
	}
	tests[n++] = (struct CMUnitTest)cmocka_unit_test_setup_teardown(test_operation_state_errors, setup, teardown);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test_setup_teardown(test_key_errors, setup, teardown);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test_setup_teardown(test_mechanism_params, setup, teardown);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test_setup_teardown(test_rsa_key_size, setup, teardown);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test_setup_teardown(test_digests, setup, teardown);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test_setup_teardown(test_sign_after_logout, setup, teardown);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test_setup_teardown(test_always_authenticate, setup, teardown);

	return _cmocka_run_group_tests("test-sign", tests, n, NULL, NULL);
}
