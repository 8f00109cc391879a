/*
 * Unit tests of module/mech.c and module/crypto.c: the mechanism table and
 * its parameter checks, key generation and import, sign/verify/digest of
 * every mechanism (against OpenSSL directly where the encoding is ours to
 * get right), AES key wrap against the RFC vectors, and hostile key
 * material.  Keys are generated once per run: RSA generation is slow under
 * valgrind.
 */
#include "common.h"
#include "crypto.h"
#include "log.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#define assert_rv(got, want)                                                                                 \
	do {                                                                                                 \
		CK_RV got_ = (got), want_ = (want);                                                          \
		if (got_ != want_)                                                                           \
			fail_msg("%s: got %s (0x%lx), want %s", #got, kt_rv_name(got_), got_,                \
				 kt_rv_name(want_));                                                         \
	} while (0)

#define DER(s) (const CK_BYTE *)(s), sizeof(s) - 1

/* CK_EDDSA_PARAMS, PKCS#11 3.0 layout */
struct eddsa_params {
	CK_BBOOL phFlag;
	CK_ULONG ulContextDataLen;
	CK_BYTE_PTR pContextData;
};

static const CK_BYTE oid_p256[] = "\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07";
static const CK_BYTE oid_p384[] = "\x06\x05\x2b\x81\x04\x00\x22";
static const CK_BYTE oid_p521[] = "\x06\x05\x2b\x81\x04\x00\x23";
static const CK_BYTE oid_ed25519[] = "\x06\x03\x2b\x65\x70";
static const CK_BYTE oid_ed448[] = "\x06\x03\x2b\x65\x71";
static const CK_BYTE name_ed25519[] = "\x13\x0c"
				      "edwards25519";
static const CK_BYTE oid_secp256k1[] = "\x06\x05\x2b\x81\x04\x00\x0a";

/* DigestInfo prefix of SHA-256 (RFC 8017 9.2 note 1) */
static const CK_BYTE di_sha256[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
				    0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};

struct kp {
	struct attrs *pub;
	struct attrs *priv;
	EVP_PKEY *kpub;
	EVP_PKEY *kpriv;
	CK_ULONG sig_len;
};

static struct kp rsa, p256, p384, p521, ed25519, ed448;

static CK_BYTE msg[1500];

/* ---------------------------------------------------------------------- */
/* helpers */

static void set(struct attrs *a, CK_ATTRIBUTE_TYPE t, const void *v, size_t len)
{
	assert_rv(attrs_set(a, t, v, len), CKR_OK);
}

static void set_ulong(struct attrs *a, CK_ATTRIBUTE_TYPE t, CK_ULONG v)
{
	assert_rv(attrs_set_ulong(a, t, v), CKR_OK);
}

/* A fresh attrs with a copy of one attribute of another. */
static void copy_attr(struct attrs *dst, const struct attrs *src, CK_ATTRIBUTE_TYPE t)
{
	const CK_ATTRIBUTE *at = attrs_get(src, t);
	assert_non_null(at);
	set(dst, t, at->pValue, at->ulValueLen);
}

static void gen_pair(struct kp *k, CK_MECHANISM_TYPE mech, const CK_BYTE *ecp, size_t ecp_len, CK_ULONG bits,
		     CK_ULONG sig_len)
{
	CK_MECHANISM m = {mech, NULL, 0};

	k->pub = attrs_new();
	k->priv = attrs_new();
	assert_non_null(k->pub);
	assert_non_null(k->priv);
	if (ecp)
		set(k->pub, CKA_EC_PARAMS, ecp, ecp_len);
	else
		set_ulong(k->pub, CKA_MODULUS_BITS, bits);
	assert_rv(crypto_generate_key_pair(&m, k->pub, k->priv), CKR_OK);
	assert_rv(crypto_load_pkey(CKO_PUBLIC_KEY, k->pub, &k->kpub), CKR_OK);
	assert_rv(crypto_load_pkey(CKO_PRIVATE_KEY, k->priv, &k->kpriv), CKR_OK);
	k->sig_len = sig_len;
}

static void free_pair(struct kp *k)
{
	attrs_free(k->pub);
	attrs_free(k->priv);
	EVP_PKEY_free(k->kpub);
	EVP_PKEY_free(k->kpriv);
	memset(k, 0, sizeof(*k));
}

static int group_setup(void **state)
{
	(void)state;
	kt_debug_init();
	for (size_t i = 0; i < sizeof(msg); i++)
		msg[i] = (CK_BYTE)(i * 7 + 3);
	gen_pair(&rsa, CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0, 2048, 256);
	gen_pair(&p256, CKM_EC_KEY_PAIR_GEN, DER(oid_p256), 0, 64);
	gen_pair(&p384, CKM_EC_KEY_PAIR_GEN, DER(oid_p384), 0, 96);
	gen_pair(&p521, CKM_EC_KEY_PAIR_GEN, DER(oid_p521), 0, 132);
	gen_pair(&ed25519, CKM_EC_EDWARDS_KEY_PAIR_GEN, DER(oid_ed25519), 0, 64);
	gen_pair(&ed448, CKM_EC_EDWARDS_KEY_PAIR_GEN, DER(oid_ed448), 0, 114);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	free_pair(&rsa);
	free_pair(&p256);
	free_pair(&p384);
	free_pair(&p521);
	free_pair(&ed25519);
	free_pair(&ed448);
	return 0;
}

/* Sign in one go (chunks == 0) or in that many updates plus final. */
static CK_RV sign_with(EVP_PKEY *key, const CK_MECHANISM *m, const CK_BYTE *data, size_t len, CK_BYTE *sig,
		       CK_ULONG *sig_len, size_t chunks)
{
	const struct mech_info *mi;
	struct crypto_op *op = NULL;
	CK_RV rv;

	rv = mech_lookup(m, MECH_SIGN, &mi);
	if (rv != CKR_OK)
		return rv;
	rv = crypto_sign_init(mi, m, key, true, &op);
	if (rv != CKR_OK)
		return rv;
	assert_true(crypto_op_out_len(op) <= *sig_len);
	if (chunks == 0) {
		rv = crypto_op_oneshot(op, data, len, sig, sig_len);
	} else {
		size_t step = len / chunks + 1, done = 0;
		/* An empty update first: it must change nothing. */
		rv = crypto_op_update(op, data, 0);
		while (rv == CKR_OK && done < len) {
			size_t n = len - done < step ? len - done : step;
			rv = crypto_op_update(op, data + done, n);
			done += n;
		}
		if (rv == CKR_OK)
			rv = crypto_op_final(op, sig, sig_len);
	}
	crypto_op_free(op);
	return rv;
}

static CK_RV verify_with(EVP_PKEY *key, const CK_MECHANISM *m, const CK_BYTE *data, size_t len,
			 const CK_BYTE *sig, CK_ULONG sig_len, size_t chunks)
{
	const struct mech_info *mi;
	struct crypto_op *op = NULL;
	CK_RV rv;

	rv = mech_lookup(m, MECH_VERIFY, &mi);
	if (rv != CKR_OK)
		return rv;
	rv = crypto_sign_init(mi, m, key, false, &op);
	if (rv != CKR_OK)
		return rv;
	if (chunks == 0) {
		rv = crypto_op_verify(op, data, len, sig, sig_len);
	} else {
		size_t step = len / chunks + 1, done = 0;
		rv = CKR_OK;
		while (rv == CKR_OK && done < len) {
			size_t n = len - done < step ? len - done : step;
			rv = crypto_op_update(op, data + done, n);
			done += n;
		}
		if (rv == CKR_OK)
			rv = crypto_op_verify(op, NULL, 0, sig, sig_len);
	}
	crypto_op_free(op);
	return rv;
}

static void sha(const char *name, const CK_BYTE *d, size_t len, CK_BYTE *out, unsigned *out_len)
{
	assert_int_equal(EVP_Digest(d, len, out, out_len, EVP_get_digestbyname(name), NULL), 1);
}

/* ---------------------------------------------------------------------- */
/* the mechanism table */

static void test_mech_table(void **state)
{
	(void)state;
	assert_true(mech_count() > 0);
	assert_null(mech_at(mech_count()));
	assert_null(mech_find(CKM_MD5));
	assert_null(mech_find(CKM_RSA_X_509));
	for (size_t i = 0; i < mech_count(); i++) {
		const struct mech_info *mi = mech_at(i);
		assert_non_null(mi);
		/* one row per type */
		assert_ptr_equal(mech_find(mi->type), mi);
		assert_non_null(mi->check_param);
		assert_true(mi->min_key_size <= mi->max_key_size);
		/* flags and ops tell the same story */
		assert_int_equal(!!(mi->flags & CKF_SIGN), !!(mi->ops & MECH_SIGN));
		assert_int_equal(!!(mi->flags & CKF_VERIFY), !!(mi->ops & MECH_VERIFY));
		assert_int_equal(!!(mi->flags & CKF_DIGEST), !!(mi->ops & MECH_DIGEST));
		assert_int_equal(!!(mi->flags & CKF_GENERATE), !!(mi->ops & MECH_GENERATE));
		assert_int_equal(!!(mi->flags & CKF_GENERATE_KEY_PAIR), !!(mi->ops & MECH_GENERATE_PAIR));
		assert_int_equal(!!(mi->flags & CKF_WRAP), !!(mi->ops & MECH_WRAP));
		assert_int_equal(!!(mi->flags & CKF_UNWRAP), !!(mi->ops & MECH_UNWRAP));
		assert_false(mi->flags & (CKF_ENCRYPT | CKF_DECRYPT | CKF_DERIVE));
		/* pkcs11-tool --test only tests signing with CKF_HW */
		if (mi->ops & MECH_SIGN)
			assert_true(mi->flags & CKF_HW);
		if (mi->ops & MECH_DIGEST)
			assert_non_null(mi->digest);
		if (mi->key_type == CKK_EC)
			assert_int_equal(mi->flags & (CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS),
					 CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS);
		/* a trace can name every mechanism */
		assert_string_not_equal(kt_mech_name(mi->type), "(unknown)");
	}
	assert_int_equal(mech_find(CKM_RSA_PKCS_KEY_PAIR_GEN)->min_key_size, 2048);
	assert_int_equal(mech_find(CKM_RSA_PKCS_KEY_PAIR_GEN)->max_key_size, 4096);
	assert_true(mech_find(CKM_RSA_PKCS)->single_part);
	assert_true(mech_find(CKM_EDDSA)->single_part);
	assert_false(mech_find(CKM_SHA256_RSA_PKCS)->single_part);
	assert_non_null(mech_find(CKM_ECDSA_SHA1));
}

static void test_mech_lookup(void **state)
{
	(void)state;
	const struct mech_info *mi = NULL;
	CK_BYTE junk[64] = {0};
	CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA256, 32};
	struct eddsa_params ed = {CK_FALSE, 0, NULL};
	CK_BYTE ctx[3] = {1, 2, 3};
	CK_BYTE iv8[8] = {0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6};
	static const struct {
		CK_MECHANISM_TYPE type;
		enum mech_op op;
		CK_ULONG len; /* of junk, 0: no parameter */
		CK_RV want;
	} cases[] = {
	    {CKM_SHA256_RSA_PKCS, MECH_SIGN, 0, CKR_OK},
	    {CKM_SHA256_RSA_PKCS, MECH_VERIFY, 0, CKR_OK},
	    {CKM_SHA256_RSA_PKCS, MECH_DIGEST, 0, CKR_MECHANISM_INVALID},
	    {CKM_SHA256, MECH_SIGN, 0, CKR_MECHANISM_INVALID},
	    {CKM_SHA256, MECH_DIGEST, 0, CKR_OK},
	    {CKM_MD5, MECH_DIGEST, 0, CKR_MECHANISM_INVALID},
	    {CKM_VENDOR_DEFINED, MECH_SIGN, 0, CKR_MECHANISM_INVALID},
	    {CKM_AES_KEY_GEN, MECH_GENERATE, 0, CKR_OK},
	    {CKM_AES_KEY_GEN, MECH_GENERATE_PAIR, 0, CKR_MECHANISM_INVALID},
	    {CKM_AES_KEY_WRAP, MECH_WRAP, 0, CKR_OK},
	    {CKM_AES_KEY_WRAP, MECH_SIGN, 0, CKR_MECHANISM_INVALID},
	    /* a parameter where none belongs */
	    {CKM_SHA256_RSA_PKCS, MECH_SIGN, 8, CKR_MECHANISM_PARAM_INVALID},
	    {CKM_RSA_PKCS, MECH_SIGN, 1, CKR_MECHANISM_PARAM_INVALID},
	    {CKM_ECDSA, MECH_SIGN, 16, CKR_MECHANISM_PARAM_INVALID},
	    {CKM_SHA256, MECH_DIGEST, 4, CKR_MECHANISM_PARAM_INVALID},
	    {CKM_EC_KEY_PAIR_GEN, MECH_GENERATE_PAIR, 10, CKR_MECHANISM_PARAM_INVALID},
	    /* PSS without or with a malformed parameter */
	    {CKM_RSA_PKCS_PSS, MECH_SIGN, 0, CKR_MECHANISM_PARAM_INVALID},
	    {CKM_SHA256_RSA_PKCS_PSS, MECH_SIGN, 0, CKR_MECHANISM_PARAM_INVALID},
	    {CKM_RSA_PKCS_PSS, MECH_SIGN, 7, CKR_MECHANISM_PARAM_INVALID},
	    /* EdDSA: junk of the wrong size */
	    {CKM_EDDSA, MECH_SIGN, 5, CKR_MECHANISM_PARAM_INVALID},
	    {CKM_AES_KEY_WRAP, MECH_WRAP, 7, CKR_MECHANISM_PARAM_INVALID},
	    {CKM_AES_KEY_WRAP_PAD, MECH_WRAP, 8, CKR_MECHANISM_PARAM_INVALID},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		CK_MECHANISM m = {cases[i].type, cases[i].len ? junk : NULL, cases[i].len};
		mi = NULL;
		assert_rv(mech_lookup(&m, cases[i].op, &mi), cases[i].want);
		if (cases[i].want == CKR_OK)
			assert_ptr_equal(mi, mech_find(cases[i].type));
	}
	assert_rv(mech_lookup(NULL, MECH_SIGN, &mi), CKR_ARGUMENTS_BAD);

	/* A non-NULL pointer with length 0 is "no parameter". */
	CK_MECHANISM m0 = {CKM_SHA256_RSA_PKCS, junk, 0};
	assert_rv(mech_lookup(&m0, MECH_SIGN, &mi), CKR_OK);
	/* A length without a pointer is not a parameter either. */
	CK_MECHANISM mnull = {CKM_RSA_PKCS_PSS, NULL, sizeof(pss)};
	assert_rv(mech_lookup(&mnull, MECH_SIGN, &mi), CKR_MECHANISM_PARAM_INVALID);

	/* PSS */
	CK_MECHANISM mp = {CKM_RSA_PKCS_PSS, &pss, sizeof(pss)};
	assert_rv(mech_lookup(&mp, MECH_SIGN, &mi), CKR_OK);
	pss.hashAlg = CKM_SHA_1;
	pss.mgf = CKG_MGF1_SHA1;
	assert_rv(mech_lookup(&mp, MECH_SIGN, &mi), CKR_OK);
	pss.hashAlg = CKM_MD5;
	assert_rv(mech_lookup(&mp, MECH_SIGN, &mi), CKR_MECHANISM_PARAM_INVALID);
	pss.hashAlg = CKM_SHA256_RSA_PKCS; /* a mechanism, but not a digest */
	assert_rv(mech_lookup(&mp, MECH_SIGN, &mi), CKR_MECHANISM_PARAM_INVALID);
	pss.hashAlg = CKM_SHA512;
	pss.mgf = 0;
	assert_rv(mech_lookup(&mp, MECH_SIGN, &mi), CKR_MECHANISM_PARAM_INVALID);
	pss.mgf = 42;
	assert_rv(mech_lookup(&mp, MECH_SIGN, &mi), CKR_MECHANISM_PARAM_INVALID);
	pss.mgf = CKG_MGF1_SHA384; /* a different MGF hash is allowed */
	assert_rv(mech_lookup(&mp, MECH_SIGN, &mi), CKR_OK);
	pss.sLen = (CK_ULONG)-1;
	assert_rv(mech_lookup(&mp, MECH_SIGN, &mi), CKR_MECHANISM_PARAM_INVALID);
	pss.sLen = 100000;
	assert_rv(mech_lookup(&mp, MECH_SIGN, &mi), CKR_MECHANISM_PARAM_INVALID);
	pss.sLen = 0;
	assert_rv(mech_lookup(&mp, MECH_SIGN, &mi), CKR_OK);
	mp.ulParameterLen = sizeof(pss) + 1;
	assert_rv(mech_lookup(&mp, MECH_SIGN, &mi), CKR_MECHANISM_PARAM_INVALID);

	/* SHAx_RSA_PKCS_PSS: hashAlg must be the mechanism's own hash */
	CK_RSA_PKCS_PSS_PARAMS pss2 = {CKM_SHA384, CKG_MGF1_SHA384, 48};
	CK_MECHANISM mh = {CKM_SHA384_RSA_PKCS_PSS, &pss2, sizeof(pss2)};
	assert_rv(mech_lookup(&mh, MECH_SIGN, &mi), CKR_OK);
	mh.mechanism = CKM_SHA256_RSA_PKCS_PSS;
	assert_rv(mech_lookup(&mh, MECH_SIGN, &mi), CKR_MECHANISM_PARAM_INVALID);
	mh.mechanism = CKM_SHA512_RSA_PKCS_PSS;
	assert_rv(mech_lookup(&mh, MECH_VERIFY, &mi), CKR_MECHANISM_PARAM_INVALID);
	pss2.hashAlg = CKM_SHA512;
	assert_rv(mech_lookup(&mh, MECH_VERIFY, &mi), CKR_OK);

	/* EdDSA: pure only */
	CK_MECHANISM me = {CKM_EDDSA, &ed, sizeof(ed)};
	assert_rv(mech_lookup(&me, MECH_SIGN, &mi), CKR_OK);
	ed.phFlag = CK_TRUE;
	assert_rv(mech_lookup(&me, MECH_SIGN, &mi), CKR_MECHANISM_PARAM_INVALID);
	ed.phFlag = CK_FALSE;
	ed.ulContextDataLen = sizeof(ctx);
	ed.pContextData = ctx;
	assert_rv(mech_lookup(&me, MECH_SIGN, &mi), CKR_MECHANISM_PARAM_INVALID);
	me.pParameter = NULL;
	me.ulParameterLen = 0;
	assert_rv(mech_lookup(&me, MECH_VERIFY, &mi), CKR_OK);

	/* AES key wrap: an optional IV of the right size */
	CK_MECHANISM mw = {CKM_AES_KEY_WRAP, iv8, 8};
	assert_rv(mech_lookup(&mw, MECH_WRAP, &mi), CKR_OK);
	mw.mechanism = CKM_AES_KEY_WRAP_PAD;
	mw.ulParameterLen = 4;
	assert_rv(mech_lookup(&mw, MECH_UNWRAP, &mi), CKR_OK);
}

/* ---------------------------------------------------------------------- */
/* key generation */

static CK_RV try_gen(CK_MECHANISM_TYPE mech, struct attrs *pub, struct attrs *priv)
{
	CK_MECHANISM m = {mech, NULL, 0};
	return crypto_generate_key_pair(&m, pub, priv);
}

static void test_generate_rsa(void **state)
{
	(void)state;
	const CK_ATTRIBUTE *n, *e, *spki_pub, *spki_priv;
	CK_ULONG bits = 0;
	EVP_PKEY *parsed;
	const unsigned char *p;
	static const CK_ATTRIBUTE_TYPE priv_parts[] = {
	    CKA_MODULUS,    CKA_PUBLIC_EXPONENT, CKA_PRIVATE_EXPONENT, CKA_PRIME_1,	    CKA_PRIME_2,
	    CKA_EXPONENT_1, CKA_EXPONENT_2,	 CKA_COEFFICIENT,      CKA_PUBLIC_KEY_INFO,
	};

	n = attrs_get(rsa.pub, CKA_MODULUS);
	e = attrs_get(rsa.pub, CKA_PUBLIC_EXPONENT);
	assert_non_null(n);
	assert_non_null(e);
	assert_int_equal(n->ulValueLen, 256);
	assert_true(((CK_BYTE *)n->pValue)[0] & 0x80);
	assert_int_equal(e->ulValueLen, 3);
	assert_memory_equal(e->pValue, "\x01\x00\x01", 3);
	assert_true(attrs_get_ulong(rsa.pub, CKA_MODULUS_BITS, &bits));
	assert_int_equal(bits, 2048);
	assert_false(attrs_has(rsa.pub, CKA_PRIVATE_EXPONENT));
	for (size_t i = 0; i < sizeof(priv_parts) / sizeof(priv_parts[0]); i++)
		assert_true(attrs_has(rsa.priv, priv_parts[i]));
	assert_true(attrs_match(rsa.priv, n));
	CK_ULONG kt = 0;
	assert_true(attrs_get_ulong(rsa.pub, CKA_KEY_TYPE, &kt));
	assert_int_equal(kt, CKK_RSA);
	assert_true(attrs_get_ulong(rsa.priv, CKA_KEY_TYPE, &kt));
	assert_int_equal(kt, CKK_RSA);

	/* CKA_PUBLIC_KEY_INFO is the same SPKI on both halves, and it is
	 * the key OpenSSL loaded */
	spki_pub = attrs_get(rsa.pub, CKA_PUBLIC_KEY_INFO);
	spki_priv = attrs_get(rsa.priv, CKA_PUBLIC_KEY_INFO);
	assert_non_null(spki_pub);
	assert_non_null(spki_priv);
	assert_true(attrs_match(rsa.priv, spki_pub));
	p = spki_pub->pValue;
	parsed = d2i_PUBKEY(NULL, &p, (long)spki_pub->ulValueLen);
	assert_non_null(parsed);
	assert_int_equal(EVP_PKEY_eq(parsed, rsa.kpub), 1);
	assert_int_equal(EVP_PKEY_eq(parsed, rsa.kpriv), 1);
	EVP_PKEY_free(parsed);

	assert_int_equal(crypto_key_bits(CKO_PUBLIC_KEY, rsa.pub), 2048);
	assert_int_equal(crypto_key_bits(CKO_PRIVATE_KEY, rsa.priv), 2048);
}

static void test_generate_rsa_errors(void **state)
{
	(void)state;
	static const struct {
		CK_ULONG bits;
		CK_RV want;
	} sizes[] = {{0, CKR_KEY_SIZE_RANGE},		{512, CKR_KEY_SIZE_RANGE},
		     {1024, CKR_KEY_SIZE_RANGE},	{2047, CKR_KEY_SIZE_RANGE},
		     {4097, CKR_KEY_SIZE_RANGE},	{8192, CKR_KEY_SIZE_RANGE},
		     {(CK_ULONG)-1, CKR_KEY_SIZE_RANGE}};
	static const struct {
		const char *e;
		size_t len;
		CK_RV want;
	} exps[] = {
	    {"\x01\x00\x00", 3, CKR_ATTRIBUTE_VALUE_INVALID},			      /* even */
	    {"\x01", 1, CKR_ATTRIBUTE_VALUE_INVALID},				      /* 1 */
	    {"\x00\x00", 2, CKR_ATTRIBUTE_VALUE_INVALID},			      /* 0 */
	    {"", 0, CKR_ATTRIBUTE_VALUE_INVALID},				      /* empty */
	    {"\x01\x01\x01\x01\x01\x01\x01\x01\x01", 9, CKR_ATTRIBUTE_VALUE_INVALID}, /* huge */
	};

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		struct attrs *pub = attrs_new(), *priv = attrs_new();
		set_ulong(pub, CKA_MODULUS_BITS, sizes[i].bits);
		assert_rv(try_gen(CKM_RSA_PKCS_KEY_PAIR_GEN, pub, priv), sizes[i].want);
		assert_false(attrs_has(priv, CKA_PRIVATE_EXPONENT));
		attrs_free(pub);
		attrs_free(priv);
	}
	for (size_t i = 0; i < sizeof(exps) / sizeof(exps[0]); i++) {
		struct attrs *pub = attrs_new(), *priv = attrs_new();
		set_ulong(pub, CKA_MODULUS_BITS, 2048);
		set(pub, CKA_PUBLIC_EXPONENT, exps[i].e, exps[i].len);
		assert_rv(try_gen(CKM_RSA_PKCS_KEY_PAIR_GEN, pub, priv), exps[i].want);
		attrs_free(pub);
		attrs_free(priv);
	}

	struct attrs *pub = attrs_new(), *priv = attrs_new();
	/* no CKA_MODULUS_BITS */
	assert_rv(try_gen(CKM_RSA_PKCS_KEY_PAIR_GEN, pub, priv), CKR_TEMPLATE_INCOMPLETE);
	/* CKA_MODULUS_BITS of the wrong size */
	set(pub, CKA_MODULUS_BITS, "\x08\x00", 2);
	assert_rv(try_gen(CKM_RSA_PKCS_KEY_PAIR_GEN, pub, priv), CKR_ATTRIBUTE_VALUE_INVALID);
	/* a key type that is not RSA */
	set_ulong(pub, CKA_MODULUS_BITS, 2048);
	set_ulong(priv, CKA_KEY_TYPE, CKK_EC);
	assert_rv(try_gen(CKM_RSA_PKCS_KEY_PAIR_GEN, pub, priv), CKR_TEMPLATE_INCONSISTENT);
	/* not a key pair mechanism */
	assert_rv(try_gen(CKM_RSA_PKCS, pub, priv), CKR_MECHANISM_INVALID);
	assert_rv(try_gen(CKM_AES_KEY_GEN, pub, priv), CKR_MECHANISM_INVALID);
	/* a parameter the mechanism does not take */
	CK_MECHANISM m = {CKM_RSA_PKCS_KEY_PAIR_GEN, pub, 4};
	assert_rv(crypto_generate_key_pair(&m, pub, priv), CKR_MECHANISM_PARAM_INVALID);
	attrs_free(pub);
	attrs_free(priv);
}

static void check_ec_pair(const struct kp *k, const CK_BYTE *point_hdr, size_t hdr_len, size_t point_len,
			  size_t value_len, CK_ULONG bits)
{
	const CK_ATTRIBUTE *pt = attrs_get(k->pub, CKA_EC_POINT);
	const CK_ATTRIBUTE *v = attrs_get(k->priv, CKA_VALUE);
	const CK_ATTRIBUTE *spki = attrs_get(k->pub, CKA_PUBLIC_KEY_INFO);
	const unsigned char *p;
	EVP_PKEY *parsed;

	assert_non_null(pt);
	assert_non_null(v);
	assert_non_null(spki);
	assert_int_equal(pt->ulValueLen, hdr_len + point_len);
	assert_memory_equal(pt->pValue, point_hdr, hdr_len);
	assert_int_equal(v->ulValueLen, value_len);
	assert_true(attrs_match(k->priv, attrs_get(k->pub, CKA_EC_PARAMS)));
	assert_true(attrs_match(k->priv, spki));
	assert_false(attrs_has(k->pub, CKA_VALUE));
	p = spki->pValue;
	parsed = d2i_PUBKEY(NULL, &p, (long)spki->ulValueLen);
	assert_non_null(parsed);
	assert_int_equal(EVP_PKEY_eq(parsed, k->kpub), 1);
	assert_int_equal(EVP_PKEY_eq(parsed, k->kpriv), 1);
	EVP_PKEY_free(parsed);
	assert_int_equal(crypto_key_bits(CKO_PUBLIC_KEY, k->pub), bits);
	assert_int_equal(crypto_key_bits(CKO_PRIVATE_KEY, k->priv), bits);
}

static void test_generate_ec(void **state)
{
	(void)state;
	check_ec_pair(&p256, (const CK_BYTE *)"\x04\x41\x04", 3, 64, 32, 256);
	check_ec_pair(&p384, (const CK_BYTE *)"\x04\x61\x04", 3, 96, 48, 384);
	check_ec_pair(&p521, (const CK_BYTE *)"\x04\x81\x85\x04", 4, 132, 66, 521);
	check_ec_pair(&ed25519, (const CK_BYTE *)"\x04\x20", 2, 32, 32, 255);
	check_ec_pair(&ed448, (const CK_BYTE *)"\x04\x39", 2, 57, 57, 448);

	/* the printable curve name works as well as the OID */
	struct kp k = {0};
	gen_pair(&k, CKM_EC_EDWARDS_KEY_PAIR_GEN, DER(name_ed25519), 0, 64);
	check_ec_pair(&k, (const CK_BYTE *)"\x04\x20", 2, 32, 32, 255);
	assert_memory_equal(attrs_get(k.priv, CKA_EC_PARAMS)->pValue, name_ed25519, sizeof(name_ed25519) - 1);
	free_pair(&k);
}

static void test_generate_ec_errors(void **state)
{
	(void)state;
	static const struct {
		CK_MECHANISM_TYPE mech;
		const CK_BYTE *ecp;
		size_t len;
		CK_RV want;
	} cases[] = {
	    {CKM_EC_KEY_PAIR_GEN, DER(oid_secp256k1), CKR_CURVE_NOT_SUPPORTED},
	    {CKM_EC_KEY_PAIR_GEN, DER(oid_ed25519), CKR_CURVE_NOT_SUPPORTED},
	    {CKM_EC_KEY_PAIR_GEN, DER(name_ed25519), CKR_CURVE_NOT_SUPPORTED},
	    {CKM_EC_EDWARDS_KEY_PAIR_GEN, DER(oid_p256), CKR_CURVE_NOT_SUPPORTED},
	    /* "prime256v1" as a PrintableString: well formed, not served */
	    {CKM_EC_KEY_PAIR_GEN, DER("\x13\x0aprime256v1"), CKR_CURVE_NOT_SUPPORTED},
	    /* explicit parameters, implicitlyCA */
	    {CKM_EC_KEY_PAIR_GEN, DER("\x30\x03\x02\x01\x01"), CKR_CURVE_NOT_SUPPORTED},
	    {CKM_EC_KEY_PAIR_GEN, DER("\x05\x00"), CKR_CURVE_NOT_SUPPORTED},
	    /* malformed */
	    {CKM_EC_KEY_PAIR_GEN, DER("\x06\x08\x2a\x86\x48"), CKR_ATTRIBUTE_VALUE_INVALID},
	    {CKM_EC_KEY_PAIR_GEN, DER("\x06\x03\x2b\x65\xf0"), CKR_ATTRIBUTE_VALUE_INVALID},
	    {CKM_EC_KEY_PAIR_GEN, DER("\x06\x00"), CKR_ATTRIBUTE_VALUE_INVALID},
	    {CKM_EC_KEY_PAIR_GEN, DER("\x06"), CKR_ATTRIBUTE_VALUE_INVALID},
	    {CKM_EC_KEY_PAIR_GEN, DER("\x06\x84\xff\xff\xff\xff"), CKR_ATTRIBUTE_VALUE_INVALID},
	    {CKM_EC_KEY_PAIR_GEN, DER("\x06\x81\x05\x2b\x81\x04\x00\x22"), CKR_ATTRIBUTE_VALUE_INVALID},
	    {CKM_EC_KEY_PAIR_GEN, DER("\x05\x01\x00"), CKR_ATTRIBUTE_VALUE_INVALID},
	    {CKM_EC_KEY_PAIR_GEN, DER("\x04\x03\x2b\x65\x70"), CKR_ATTRIBUTE_VALUE_INVALID},
	    {CKM_EC_KEY_PAIR_GEN, DER("\x06\x05\x2b\x81\x04\x00\x22\x00"), CKR_ATTRIBUTE_VALUE_INVALID},
	    {CKM_EC_KEY_PAIR_GEN, DER(""), CKR_ATTRIBUTE_VALUE_INVALID},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct attrs *pub = attrs_new(), *priv = attrs_new();
		set(pub, CKA_EC_PARAMS, cases[i].ecp, cases[i].len);
		assert_rv(try_gen(cases[i].mech, pub, priv), cases[i].want);
		/* a failure leaves the templates as they were */
		assert_int_equal(attrs_count(pub), 1);
		assert_int_equal(attrs_count(priv), 0);
		attrs_free(pub);
		attrs_free(priv);
	}

	struct attrs *pub = attrs_new(), *priv = attrs_new();
	assert_rv(try_gen(CKM_EC_KEY_PAIR_GEN, pub, priv), CKR_TEMPLATE_INCOMPLETE);
	assert_rv(try_gen(CKM_EC_EDWARDS_KEY_PAIR_GEN, pub, priv), CKR_TEMPLATE_INCOMPLETE);
	/* the parameters belong in the public template */
	set(priv, CKA_EC_PARAMS, DER(oid_p256));
	assert_rv(try_gen(CKM_EC_KEY_PAIR_GEN, pub, priv), CKR_TEMPLATE_INCOMPLETE);
	/* and may be repeated in the private one, but not differ */
	set(pub, CKA_EC_PARAMS, DER(oid_p384));
	assert_rv(try_gen(CKM_EC_KEY_PAIR_GEN, pub, priv), CKR_TEMPLATE_INCONSISTENT);
	set(priv, CKA_EC_PARAMS, DER(oid_p384));
	assert_rv(try_gen(CKM_EC_KEY_PAIR_GEN, pub, priv), CKR_OK);
	attrs_free(pub);
	attrs_free(priv);
}

static void test_generate_secret(void **state)
{
	(void)state;
	static const struct {
		CK_MECHANISM_TYPE mech;
		CK_ULONG len;
		CK_RV want;
	} cases[] = {
	    {CKM_AES_KEY_GEN, 16, CKR_OK},
	    {CKM_AES_KEY_GEN, 24, CKR_OK},
	    {CKM_AES_KEY_GEN, 32, CKR_OK},
	    {CKM_AES_KEY_GEN, 0, CKR_KEY_SIZE_RANGE},
	    {CKM_AES_KEY_GEN, 15, CKR_KEY_SIZE_RANGE},
	    {CKM_AES_KEY_GEN, 64, CKR_KEY_SIZE_RANGE},
	    {CKM_GENERIC_SECRET_KEY_GEN, 1, CKR_OK},
	    {CKM_GENERIC_SECRET_KEY_GEN, 512, CKR_OK},
	    {CKM_GENERIC_SECRET_KEY_GEN, 0, CKR_KEY_SIZE_RANGE},
	    {CKM_GENERIC_SECRET_KEY_GEN, 513, CKR_KEY_SIZE_RANGE},
	    {CKM_GENERIC_SECRET_KEY_GEN, (CK_ULONG)-1, CKR_KEY_SIZE_RANGE},
	};
	CK_BYTE first[32];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		CK_MECHANISM m = {cases[i].mech, NULL, 0};
		struct attrs *k = attrs_new();
		set_ulong(k, CKA_VALUE_LEN, cases[i].len);
		assert_rv(crypto_generate_key(&m, k), cases[i].want);
		if (cases[i].want == CKR_OK) {
			CK_ULONG kt = 0;
			assert_int_equal(attrs_get(k, CKA_VALUE)->ulValueLen, cases[i].len);
			assert_true(attrs_get_ulong(k, CKA_KEY_TYPE, &kt));
			assert_int_equal(kt, cases[i].mech == CKM_AES_KEY_GEN ? CKK_AES : CKK_GENERIC_SECRET);
			assert_int_equal(crypto_key_bits(CKO_SECRET_KEY, k), cases[i].len * 8);
		} else {
			assert_false(attrs_has(k, CKA_VALUE));
		}
		attrs_free(k);
	}

	/* two keys differ */
	CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
	for (int i = 0; i < 2; i++) {
		struct attrs *k = attrs_new();
		set_ulong(k, CKA_VALUE_LEN, 32);
		assert_rv(crypto_generate_key(&m, k), CKR_OK);
		if (i == 0)
			memcpy(first, attrs_get(k, CKA_VALUE)->pValue, 32);
		else
			assert_memory_not_equal(first, attrs_get(k, CKA_VALUE)->pValue, 32);
		attrs_free(k);
	}

	struct attrs *k = attrs_new();
	assert_rv(crypto_generate_key(&m, k), CKR_TEMPLATE_INCOMPLETE);
	set(k, CKA_VALUE_LEN, "\x10", 1);
	assert_rv(crypto_generate_key(&m, k), CKR_ATTRIBUTE_VALUE_INVALID);
	set_ulong(k, CKA_VALUE_LEN, 16);
	set_ulong(k, CKA_KEY_TYPE, CKK_DES3);
	assert_rv(crypto_generate_key(&m, k), CKR_TEMPLATE_INCONSISTENT);
	m.mechanism = CKM_EC_KEY_PAIR_GEN;
	assert_rv(crypto_generate_key(&m, k), CKR_MECHANISM_INVALID);
	attrs_free(k);
}

/* ---------------------------------------------------------------------- */
/* sign and verify */

static bool deterministic(CK_MECHANISM_TYPE t)
{
	return t == CKM_RSA_PKCS || t == CKM_SHA224_RSA_PKCS || t == CKM_SHA256_RSA_PKCS ||
	       t == CKM_SHA384_RSA_PKCS || t == CKM_SHA512_RSA_PKCS || t == CKM_EDDSA;
}

/* Everything the module promises about one mechanism and one key. */
static void round_trip(const struct mech_info *mi, const struct kp *k, const CK_MECHANISM *m,
		       const CK_BYTE *data, size_t len)
{
	CK_BYTE sig[600], sig2[600], bad[600], data2[2000];
	CK_ULONG sig_len = sizeof(sig), sig2_len = sizeof(sig2);

	assert_true(len <= sizeof(data2));
	/* one-shot and multi-part signatures both verify both ways */
	assert_rv(sign_with(k->kpriv, m, data, len, sig, &sig_len, 0), CKR_OK);
	assert_int_equal(sig_len, k->sig_len);
	assert_rv(verify_with(k->kpub, m, data, len, sig, sig_len, 0), CKR_OK);
	assert_rv(verify_with(k->kpub, m, data, len, sig, sig_len, 3), CKR_OK);
	assert_rv(sign_with(k->kpriv, m, data, len, sig2, &sig2_len, 4), CKR_OK);
	assert_int_equal(sig2_len, k->sig_len);
	assert_rv(verify_with(k->kpub, m, data, len, sig2, sig2_len, 0), CKR_OK);
	if (deterministic(mi->type))
		assert_memory_equal(sig, sig2, sig_len);
	/* the private key verifies too (it holds the public half) */
	assert_rv(verify_with(k->kpriv, m, data, len, sig, sig_len, 0), CKR_OK);

	/* a flipped bit anywhere */
	memcpy(bad, sig, sig_len);
	bad[sig_len / 2] ^= 0x01;
	assert_rv(verify_with(k->kpub, m, data, len, bad, sig_len, 0), CKR_SIGNATURE_INVALID);
	memcpy(bad, sig, sig_len);
	bad[sig_len - 1] ^= 0x80;
	assert_rv(verify_with(k->kpub, m, data, len, bad, sig_len, 2), CKR_SIGNATURE_INVALID);
	/* garbage of the right length: zero (r = s = 0), all ones (>= n) */
	memset(bad, 0, sig_len);
	assert_rv(verify_with(k->kpub, m, data, len, bad, sig_len, 0), CKR_SIGNATURE_INVALID);
	memset(bad, 0xff, sig_len);
	assert_rv(verify_with(k->kpub, m, data, len, bad, sig_len, 0), CKR_SIGNATURE_INVALID);
	/* wrong lengths */
	assert_rv(verify_with(k->kpub, m, data, len, sig, sig_len - 1, 0), CKR_SIGNATURE_LEN_RANGE);
	assert_rv(verify_with(k->kpub, m, data, len, sig, sig_len + 1, 0), CKR_SIGNATURE_LEN_RANGE);
	assert_rv(verify_with(k->kpub, m, data, len, sig, 0, 2), CKR_SIGNATURE_LEN_RANGE);
	/* other data */
	memcpy(data2, data, len);
	data2[0] ^= 0x01;
	assert_rv(verify_with(k->kpub, m, data2, len, sig, sig_len, 0), CKR_SIGNATURE_INVALID);
}

static void pss_params_for(CK_MECHANISM_TYPE type, CK_RSA_PKCS_PSS_PARAMS *p)
{
	switch (type) {
	case CKM_SHA224_RSA_PKCS_PSS:
		*p = (CK_RSA_PKCS_PSS_PARAMS){CKM_SHA224, CKG_MGF1_SHA224, 28};
		break;
	case CKM_SHA384_RSA_PKCS_PSS:
		*p = (CK_RSA_PKCS_PSS_PARAMS){CKM_SHA384, CKG_MGF1_SHA384, 48};
		break;
	case CKM_SHA512_RSA_PKCS_PSS:
		*p = (CK_RSA_PKCS_PSS_PARAMS){CKM_SHA512, CKG_MGF1_SHA512, 64};
		break;
	default:
		*p = (CK_RSA_PKCS_PSS_PARAMS){CKM_SHA256, CKG_MGF1_SHA256, 32};
		break;
	}
}

static void test_sign_verify_all(void **state)
{
	(void)state;
	CK_BYTE hash[64], di[sizeof(di_sha256) + 32];
	unsigned hlen;
	size_t tested = 0;

	sha("SHA256", msg, sizeof(msg), hash, &hlen);
	memcpy(di, di_sha256, sizeof(di_sha256));
	memcpy(di + sizeof(di_sha256), hash, 32);

	for (size_t i = 0; i < mech_count(); i++) {
		const struct mech_info *mi = mech_at(i);
		CK_RSA_PKCS_PSS_PARAMS pss;
		CK_MECHANISM m = {mi->type, NULL, 0};
		const struct kp *keys[3] = {NULL};
		const CK_BYTE *data = msg;
		size_t len = sizeof(msg);

		if (!(mi->ops & MECH_SIGN))
			continue;
		switch (mi->key_type) {
		case CKK_RSA:
			keys[0] = &rsa;
			break;
		case CKK_EC:
			keys[0] = &p256;
			keys[1] = &p384;
			keys[2] = &p521;
			break;
		case CKK_EC_EDWARDS:
			keys[0] = &ed25519;
			keys[1] = &ed448;
			break;
		default:
			fail_msg("signing mechanism 0x%lx with key type 0x%lx", mi->type, mi->key_type);
		}
		/* only the PSS rows insist on a parameter */
		if (mi->check_param(&m) != CKR_OK) {
			pss_params_for(mi->type, &pss);
			m.pParameter = &pss;
			m.ulParameterLen = sizeof(pss);
		}
		if (mi->type == CKM_RSA_PKCS) {
			data = di;
			len = sizeof(di);
		} else if (mi->type == CKM_RSA_PKCS_PSS || mi->type == CKM_ECDSA) {
			data = hash;
			len = 32;
		}
		for (int j = 0; j < 3 && keys[j]; j++) {
			round_trip(mi, keys[j], &m, data, len);
			tested++;
		}
	}
	/* 5 RSA PKCS + 5 PSS + 6 ECDSA x 3 curves + EdDSA x 2 */
	assert_int_equal(tested, 5 + 5 + 6 * 3 + 2);
}

/* Empty input is data like any other. */
static void test_sign_empty(void **state)
{
	(void)state;
	CK_MECHANISM types[] = {{CKM_SHA256_RSA_PKCS, NULL, 0},
				{CKM_ECDSA_SHA384, NULL, 0},
				{CKM_EDDSA, NULL, 0},
				{CKM_ECDSA, NULL, 0}};
	const struct kp *keys[] = {&rsa, &p384, &ed25519, &p256};
	CK_BYTE sig[600];

	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		CK_ULONG sig_len = sizeof(sig);
		assert_rv(sign_with(keys[i]->kpriv, &types[i], NULL, 0, sig, &sig_len, 0), CKR_OK);
		assert_rv(verify_with(keys[i]->kpub, &types[i], (const CK_BYTE *)"", 0, sig, sig_len, 0),
			  CKR_OK);
		assert_rv(verify_with(keys[i]->kpub, &types[i], NULL, 0, sig, sig_len, 1), CKR_OK);
		assert_rv(verify_with(keys[i]->kpub, &types[i], msg, 1, sig, sig_len, 0),
			  CKR_SIGNATURE_INVALID);
	}
}

static void test_raw_pss_hashes(void **state)
{
	(void)state;
	static const struct {
		CK_MECHANISM_TYPE hash;
		CK_RSA_PKCS_MGF_TYPE mgf;
		const char *name;
	} hs[] = {
	    {CKM_SHA_1, CKG_MGF1_SHA1, "SHA1"},	     {CKM_SHA224, CKG_MGF1_SHA224, "SHA224"},
	    {CKM_SHA256, CKG_MGF1_SHA256, "SHA256"}, {CKM_SHA384, CKG_MGF1_SHA384, "SHA384"},
	    {CKM_SHA512, CKG_MGF1_SHA512, "SHA512"},
	};
	CK_BYTE hash[64], sig[256];

	for (size_t i = 0; i < sizeof(hs) / sizeof(hs[0]); i++) {
		unsigned hlen;
		CK_ULONG sig_len = sizeof(sig);
		CK_RSA_PKCS_PSS_PARAMS pss = {hs[i].hash, hs[i].mgf, 0};
		CK_MECHANISM m = {CKM_RSA_PKCS_PSS, &pss, sizeof(pss)};

		sha(hs[i].name, msg, 100, hash, &hlen);
		pss.sLen = hlen;
		assert_rv(sign_with(rsa.kpriv, &m, hash, hlen, sig, &sig_len, 0), CKR_OK);
		assert_rv(verify_with(rsa.kpub, &m, hash, hlen, sig, sig_len, 0), CKR_OK);
		/* the salt length is part of what is verified */
		pss.sLen = hlen - 1;
		assert_rv(verify_with(rsa.kpub, &m, hash, hlen, sig, sig_len, 0), CKR_SIGNATURE_INVALID);
		pss.sLen = hlen;
		/* the input must be a hash of exactly hashAlg's size */
		sig_len = sizeof(sig);
		assert_rv(sign_with(rsa.kpriv, &m, hash, hlen - 1, sig, &sig_len, 0), CKR_DATA_LEN_RANGE);
		sig_len = sizeof(sig);
		assert_rv(sign_with(rsa.kpriv, &m, hash, hlen + 1, sig, &sig_len, 0), CKR_DATA_LEN_RANGE);
		sig_len = sizeof(sig);
		assert_rv(sign_with(rsa.kpriv, &m, hash, hlen - 1, sig, &sig_len, 2), CKR_DATA_LEN_RANGE);
		assert_rv(verify_with(rsa.kpub, &m, hash, hlen - 1, sig, 256, 0), CKR_DATA_LEN_RANGE);
		/* an MGF hash different from hashAlg */
		pss.mgf = CKG_MGF1_SHA1;
		sig_len = sizeof(sig);
		assert_rv(sign_with(rsa.kpriv, &m, hash, hlen, sig, &sig_len, 0), CKR_OK);
		assert_rv(verify_with(rsa.kpub, &m, hash, hlen, sig, sig_len, 0), CKR_OK);
	}
}

static void test_sign_init_errors(void **state)
{
	(void)state;
	const struct mech_info *mi;
	struct crypto_op *op = NULL;
	CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA256, 0};
	struct eddsa_params ed = {CK_TRUE, 0, NULL};
	static const struct {
		CK_MECHANISM_TYPE mech;
		const struct kp *key;
	} wrong[] = {
	    {CKM_ECDSA, &rsa},	   {CKM_ECDSA_SHA256, &ed25519},  {CKM_EDDSA, &p256},
	    {CKM_RSA_PKCS, &p256}, {CKM_SHA256_RSA_PKCS, &ed448},
	};

	for (size_t i = 0; i < sizeof(wrong) / sizeof(wrong[0]); i++) {
		CK_MECHANISM m = {wrong[i].mech, NULL, 0};
		mi = mech_find(wrong[i].mech);
		assert_rv(crypto_sign_init(mi, &m, wrong[i].key->kpriv, true, &op),
			  CKR_KEY_TYPE_INCONSISTENT);
		assert_rv(crypto_sign_init(mi, &m, wrong[i].key->kpub, false, &op),
			  CKR_KEY_TYPE_INCONSISTENT);
	}
	assert_null(op);

	/* the salt must fit the key: emLen 256 >= hLen 32 + sLen + 2 */
	CK_MECHANISM mp = {CKM_SHA256_RSA_PKCS_PSS, &pss, sizeof(pss)};
	mi = mech_find(CKM_SHA256_RSA_PKCS_PSS);
	pss.sLen = 256 - 32 - 2 + 1;
	assert_rv(crypto_sign_init(mi, &mp, rsa.kpriv, true, &op), CKR_MECHANISM_PARAM_INVALID);
	assert_rv(crypto_sign_init(mi, &mp, rsa.kpub, false, &op), CKR_MECHANISM_PARAM_INVALID);
	pss.sLen = 256 - 32 - 2;
	assert_rv(crypto_sign_init(mi, &mp, rsa.kpriv, true, &op), CKR_OK);
	CK_BYTE sig[256];
	CK_ULONG sig_len = sizeof(sig);
	assert_rv(crypto_op_oneshot(op, msg, 10, sig, &sig_len), CKR_OK);
	crypto_op_free(op);
	op = NULL;
	assert_rv(verify_with(rsa.kpub, &mp, msg, 10, sig, sig_len, 0), CKR_OK);

	/* parameters are checked here too, not only by mech_lookup */
	CK_MECHANISM me = {CKM_EDDSA, &ed, sizeof(ed)};
	assert_rv(crypto_sign_init(mech_find(CKM_EDDSA), &me, ed25519.kpriv, true, &op),
		  CKR_MECHANISM_PARAM_INVALID);
	/* a mechanism that does not sign */
	CK_MECHANISM md = {CKM_SHA256, NULL, 0};
	assert_rv(crypto_sign_init(mech_find(CKM_SHA256), &md, rsa.kpriv, true, &op), CKR_MECHANISM_INVALID);
	/* mi and m disagree */
	assert_rv(crypto_sign_init(mech_find(CKM_ECDSA), &md, p256.kpriv, true, &op), CKR_ARGUMENTS_BAD);
	assert_null(op);
	/* an EC key bigger than any curve we serve (not one we would load) */
	EVP_PKEY *big = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "sect571k1");
	if (big) {
		CK_MECHANISM mec = {CKM_ECDSA, NULL, 0};
		assert_rv(crypto_sign_init(mech_find(CKM_ECDSA), &mec, big, true, &op), CKR_KEY_SIZE_RANGE);
		EVP_PKEY_free(big);
	}
	/* digest init with a signing mechanism */
	assert_rv(crypto_digest_init(mech_find(CKM_ECDSA), &op), CKR_MECHANISM_INVALID);
	assert_null(op);
}

/* The op takes what it needs from the key: the caller may drop its own
 * reference right after init. */
static void test_sign_key_lifetime(void **state)
{
	(void)state;
	CK_MECHANISM m = {CKM_ECDSA_SHA256, NULL, 0};
	EVP_PKEY *k = NULL;
	struct crypto_op *op = NULL;
	CK_BYTE sig[64];
	CK_ULONG sig_len = sizeof(sig);

	assert_rv(crypto_load_pkey(CKO_PRIVATE_KEY, p256.priv, &k), CKR_OK);
	assert_rv(crypto_sign_init(mech_find(CKM_ECDSA_SHA256), &m, k, true, &op), CKR_OK);
	EVP_PKEY_free(k);
	assert_rv(crypto_op_oneshot(op, msg, 100, sig, &sig_len), CKR_OK);
	crypto_op_free(op);
	assert_rv(verify_with(p256.kpub, &m, msg, 100, sig, sig_len, 0), CKR_OK);
}

static void test_out_buffer(void **state)
{
	(void)state;
	CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, NULL, 0};
	const struct mech_info *mi = mech_find(m.mechanism);
	struct crypto_op *op = NULL;
	CK_BYTE sig[256], sig2[256];
	CK_ULONG sig_len;

	assert_rv(crypto_sign_init(mi, &m, rsa.kpriv, true, &op), CKR_OK);
	assert_int_equal(crypto_op_out_len(op), 256);
	/* a length query and a short buffer leave the operation running */
	sig_len = 0;
	assert_rv(crypto_op_oneshot(op, msg, 100, NULL, &sig_len), CKR_OK);
	assert_int_equal(sig_len, 256);
	sig_len = 255;
	assert_rv(crypto_op_oneshot(op, msg, 100, sig, &sig_len), CKR_BUFFER_TOO_SMALL);
	assert_int_equal(sig_len, 256);
	sig_len = 1000;
	assert_rv(crypto_op_oneshot(op, msg, 100, sig, &sig_len), CKR_OK);
	assert_int_equal(sig_len, 256);
	/* and then it is over */
	assert_rv(crypto_op_oneshot(op, msg, 100, sig, &sig_len), CKR_OPERATION_NOT_INITIALIZED);
	assert_rv(crypto_op_final(op, sig, &sig_len), CKR_OPERATION_NOT_INITIALIZED);
	assert_rv(crypto_op_update(op, msg, 1), CKR_OPERATION_NOT_INITIALIZED);
	crypto_op_free(op);

	/* the same through update + final */
	assert_rv(crypto_sign_init(mi, &m, rsa.kpriv, true, &op), CKR_OK);
	assert_rv(crypto_op_update(op, msg, 60), CKR_OK);
	assert_rv(crypto_op_update(op, msg + 60, 40), CKR_OK);
	sig_len = 10;
	assert_rv(crypto_op_final(op, sig2, &sig_len), CKR_BUFFER_TOO_SMALL);
	assert_rv(crypto_op_final(op, NULL, &sig_len), CKR_OK);
	assert_int_equal(sig_len, 256);
	assert_rv(crypto_op_final(op, sig2, &sig_len), CKR_OK);
	assert_memory_equal(sig, sig2, 256);
	assert_rv(crypto_op_verify(op, msg, 100, sig, 256), CKR_OPERATION_NOT_INITIALIZED);
	crypto_op_free(op);

	/* one-shot after updates means "the rest" */
	assert_rv(crypto_sign_init(mi, &m, rsa.kpriv, true, &op), CKR_OK);
	assert_rv(crypto_op_update(op, msg, 30), CKR_OK);
	sig_len = sizeof(sig2);
	assert_rv(crypto_op_oneshot(op, msg + 30, 70, sig2, &sig_len), CKR_OK);
	assert_memory_equal(sig, sig2, 256);
	crypto_op_free(op);

	/* a verify op does not sign */
	assert_rv(crypto_sign_init(mi, &m, rsa.kpub, false, &op), CKR_OK);
	sig_len = sizeof(sig2);
	assert_rv(crypto_op_final(op, sig2, &sig_len), CKR_OPERATION_NOT_INITIALIZED);
	assert_rv(crypto_op_update(op, msg, 30), CKR_OK);
	assert_rv(crypto_op_verify(op, msg + 30, 70, sig, 256), CKR_OK);
	assert_rv(crypto_op_verify(op, msg, 100, sig, 256), CKR_OPERATION_NOT_INITIALIZED);
	crypto_op_free(op);
	crypto_op_free(NULL);
}

static void test_rsa_pkcs_data_len(void **state)
{
	(void)state;
	CK_MECHANISM m = {CKM_RSA_PKCS, NULL, 0};
	const struct mech_info *mi = mech_find(CKM_RSA_PKCS);
	struct crypto_op *op = NULL;
	CK_BYTE sig[256];
	CK_ULONG sig_len = sizeof(sig);

	/* k - 11 bytes is the most PKCS#1 v1.5 can pad */
	assert_rv(sign_with(rsa.kpriv, &m, msg, 245, sig, &sig_len, 0), CKR_OK);
	assert_rv(verify_with(rsa.kpub, &m, msg, 245, sig, sig_len, 0), CKR_OK);
	sig_len = sizeof(sig);
	assert_rv(sign_with(rsa.kpriv, &m, msg, 246, sig, &sig_len, 0), CKR_DATA_LEN_RANGE);
	sig_len = sizeof(sig);
	assert_rv(sign_with(rsa.kpriv, &m, msg, 246, sig, &sig_len, 3), CKR_DATA_LEN_RANGE);
	assert_rv(verify_with(rsa.kpub, &m, msg, 246, sig, 256, 0), CKR_DATA_LEN_RANGE);
	/* the update refuses the byte too many, and the rest stays usable */
	assert_rv(crypto_sign_init(mi, &m, rsa.kpriv, true, &op), CKR_OK);
	assert_rv(crypto_op_update(op, msg, 200), CKR_OK);
	assert_rv(crypto_op_update(op, msg + 200, 46), CKR_DATA_LEN_RANGE);
	assert_rv(crypto_op_update(op, msg + 200, 45), CKR_OK);
	sig_len = sizeof(sig);
	assert_rv(crypto_op_final(op, sig, &sig_len), CKR_OK);
	crypto_op_free(op);
	assert_rv(verify_with(rsa.kpub, &m, msg, 245, sig, sig_len, 0), CKR_OK);
	/* a short input is what it is (no padding check on the DigestInfo) */
	sig_len = sizeof(sig);
	assert_rv(sign_with(rsa.kpriv, &m, msg, 1, sig, &sig_len, 0), CKR_OK);
	assert_rv(verify_with(rsa.kpub, &m, msg, 1, sig, sig_len, 0), CKR_OK);
}

/* Single-part input is buffered only up to a cap. */
static void test_update_cap(void **state)
{
	(void)state;
	size_t cap = 64u * 1024 * 1024;
	CK_BYTE *big = calloc(1, cap + 1); /* never touched: calloc maps zero pages */
	CK_MECHANISM m = {CKM_EDDSA, NULL, 0};
	struct crypto_op *op = NULL;

	assert_non_null(big);
	assert_rv(crypto_sign_init(mech_find(CKM_EDDSA), &m, ed25519.kpriv, true, &op), CKR_OK);
	assert_rv(crypto_op_update(op, big, cap + 1), CKR_DATA_LEN_RANGE);
	assert_rv(crypto_op_update(op, big, 1000), CKR_OK);
	assert_rv(crypto_op_update(op, big, cap - 999), CKR_DATA_LEN_RANGE);
	assert_rv(crypto_op_update(op, NULL, 1), CKR_ARGUMENTS_BAD);
	assert_rv(crypto_op_update(op, NULL, 0), CKR_OK);
	crypto_op_free(op);
	free(big);
}

/* ---------------------------------------------------------------------- */
/* against OpenSSL directly */

/* r||s to a DER ECDSA-Sig-Value, the way anyone would with OpenSSL. */
static unsigned char *rs_to_der(const CK_BYTE *rs, size_t n, int *der_len)
{
	ECDSA_SIG *s = ECDSA_SIG_new();
	BIGNUM *r = BN_bin2bn(rs, (int)n, NULL), *sv = BN_bin2bn(rs + n, (int)n, NULL);
	unsigned char *der = NULL;

	assert_non_null(s);
	assert_int_equal(ECDSA_SIG_set0(s, r, sv), 1);
	*der_len = i2d_ECDSA_SIG(s, &der);
	assert_true(*der_len > 0);
	ECDSA_SIG_free(s);
	return der;
}

static void test_ecdsa_openssl(void **state)
{
	(void)state;
	const struct kp *keys[] = {&p256, &p384, &p521};
	CK_MECHANISM m = {CKM_ECDSA_SHA256, NULL, 0}, raw = {CKM_ECDSA, NULL, 0};

	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		const struct kp *k = keys[i];
		size_t n = k->sig_len / 2;
		CK_BYTE sig[132], hash[64];
		CK_ULONG sig_len = sizeof(sig);
		unsigned char *der, osig[200];
		int der_len;
		size_t olen = sizeof(osig);
		unsigned hlen;
		EVP_MD_CTX *md = EVP_MD_CTX_new();
		EVP_PKEY_CTX *pc;
		const BIGNUM *r, *s;
		ECDSA_SIG *es;
		const unsigned char *p;

		/* ours -> OpenSSL */
		assert_rv(sign_with(k->kpriv, &m, msg, sizeof(msg), sig, &sig_len, 0), CKR_OK);
		assert_int_equal(sig_len, 2 * n);
		der = rs_to_der(sig, n, &der_len);
		assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, k->kpub), 1);
		assert_int_equal(EVP_DigestVerify(md, der, (size_t)der_len, msg, sizeof(msg)), 1);
		OPENSSL_free(der);
		EVP_MD_CTX_free(md);

		/* OpenSSL -> ours, with r or s short enough to need padding
		 * now and then: try a few signatures */
		for (int t = 0; t < 8; t++) {
			md = EVP_MD_CTX_new();
			olen = sizeof(osig);
			assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, k->kpriv), 1);
			assert_int_equal(EVP_DigestSign(md, osig, &olen, msg, 100 + t), 1);
			EVP_MD_CTX_free(md);
			p = osig;
			es = d2i_ECDSA_SIG(NULL, &p, (long)olen);
			assert_non_null(es);
			ECDSA_SIG_get0(es, &r, &s);
			assert_int_equal(BN_bn2binpad(r, sig, (int)n), (int)n);
			assert_int_equal(BN_bn2binpad(s, sig + n, (int)n), (int)n);
			ECDSA_SIG_free(es);
			assert_rv(verify_with(k->kpub, &m, msg, 100 + t, sig, 2 * n, 0), CKR_OK);
		}

		/* raw ECDSA of a hash longer than the order is truncated, as
		 * OpenSSL does it */
		sha("SHA512", msg, 77, hash, &hlen);
		sig_len = sizeof(sig);
		assert_rv(sign_with(k->kpriv, &raw, hash, hlen, sig, &sig_len, 0), CKR_OK);
		der = rs_to_der(sig, n, &der_len);
		pc = EVP_PKEY_CTX_new_from_pkey(NULL, k->kpub, NULL);
		assert_int_equal(EVP_PKEY_verify_init(pc), 1);
		assert_int_equal(EVP_PKEY_verify(pc, der, (size_t)der_len, hash, hlen), 1);
		EVP_PKEY_CTX_free(pc);
		OPENSSL_free(der);
	}
}

static void test_rsa_openssl(void **state)
{
	(void)state;
	CK_BYTE sig[256], hash[32], di[sizeof(di_sha256) + 32];
	CK_ULONG sig_len = sizeof(sig);
	unsigned hlen;
	size_t olen;
	EVP_MD_CTX *md;
	EVP_PKEY_CTX *pc;
	CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, NULL, 0}, raw = {CKM_RSA_PKCS, NULL, 0};
	CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA256, 32};
	CK_MECHANISM mp = {CKM_SHA256_RSA_PKCS_PSS, &pss, sizeof(pss)};

	/* hash-and-sign verifies with EVP */
	assert_rv(sign_with(rsa.kpriv, &m, msg, sizeof(msg), sig, &sig_len, 0), CKR_OK);
	md = EVP_MD_CTX_new();
	assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, rsa.kpub), 1);
	assert_int_equal(EVP_DigestVerify(md, sig, sig_len, msg, sizeof(msg)), 1);
	EVP_MD_CTX_free(md);

	/* raw PKCS#1 over a DigestInfo is the same signature */
	CK_BYTE sig2[256];
	CK_ULONG sig2_len = sizeof(sig2);
	sha("SHA256", msg, sizeof(msg), hash, &hlen);
	memcpy(di, di_sha256, sizeof(di_sha256));
	memcpy(di + sizeof(di_sha256), hash, 32);
	assert_rv(sign_with(rsa.kpriv, &raw, di, sizeof(di), sig2, &sig2_len, 0), CKR_OK);
	assert_memory_equal(sig, sig2, 256);
	pc = EVP_PKEY_CTX_new_from_pkey(NULL, rsa.kpub, NULL);
	assert_int_equal(EVP_PKEY_verify_init(pc), 1);
	assert_int_equal(EVP_PKEY_CTX_set_signature_md(pc, EVP_sha256()), 1);
	assert_int_equal(EVP_PKEY_verify(pc, sig2, sig2_len, hash, 32), 1);
	EVP_PKEY_CTX_free(pc);

	/* PSS both ways */
	sig_len = sizeof(sig);
	assert_rv(sign_with(rsa.kpriv, &mp, msg, 300, sig, &sig_len, 2), CKR_OK);
	md = EVP_MD_CTX_new();
	assert_int_equal(EVP_DigestVerifyInit(md, &pc, EVP_sha256(), NULL, rsa.kpub), 1);
	assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING), 1);
	assert_int_equal(EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, 32), 1);
	assert_int_equal(EVP_DigestVerify(md, sig, sig_len, msg, 300), 1);
	EVP_MD_CTX_free(md);

	md = EVP_MD_CTX_new();
	olen = sizeof(sig);
	assert_int_equal(EVP_DigestSignInit(md, &pc, EVP_sha256(), NULL, rsa.kpriv), 1);
	assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING), 1);
	assert_int_equal(EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, 32), 1);
	assert_int_equal(EVP_DigestSign(md, sig, &olen, msg, 300), 1);
	EVP_MD_CTX_free(md);
	assert_rv(verify_with(rsa.kpub, &mp, msg, 300, sig, olen, 0), CKR_OK);
}

static void test_eddsa_openssl(void **state)
{
	(void)state;
	const struct kp *keys[] = {&ed25519, &ed448};
	CK_MECHANISM m = {CKM_EDDSA, NULL, 0};
	struct eddsa_params ed = {CK_FALSE, 0, NULL};
	CK_MECHANISM mp = {CKM_EDDSA, &ed, sizeof(ed)};

	for (size_t i = 0; i < 2; i++) {
		CK_BYTE sig[114], osig[114];
		CK_ULONG sig_len = sizeof(sig);
		size_t olen = sizeof(osig);
		EVP_MD_CTX *md = EVP_MD_CTX_new();

		assert_rv(sign_with(keys[i]->kpriv, &m, msg, 500, sig, &sig_len, 0), CKR_OK);
		assert_int_equal(EVP_DigestSignInit(md, NULL, NULL, NULL, keys[i]->kpriv), 1);
		assert_int_equal(EVP_DigestSign(md, osig, &olen, msg, 500), 1);
		EVP_MD_CTX_free(md);
		assert_int_equal(olen, sig_len);
		assert_memory_equal(sig, osig, olen);
		/* an explicit "pure, no context" parameter is the same */
		sig_len = sizeof(sig);
		assert_rv(sign_with(keys[i]->kpriv, &mp, msg, 500, sig, &sig_len, 0), CKR_OK);
		assert_memory_equal(sig, osig, olen);
	}
}

static void test_digest(void **state)
{
	(void)state;
	static const CK_BYTE abc256[32] = {
	    0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
	    0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad,
	};
	size_t tested = 0;

	for (size_t i = 0; i < mech_count(); i++) {
		const struct mech_info *mi = mech_at(i);
		struct crypto_op *op = NULL;
		CK_BYTE a[64], b[64], c[64];
		CK_ULONG alen = sizeof(a), blen = sizeof(b);
		unsigned clen;

		if (!(mi->ops & MECH_DIGEST))
			continue;
		sha(mi->digest, msg, sizeof(msg), c, &clen);
		assert_rv(crypto_digest_init(mi, &op), CKR_OK);
		assert_int_equal(crypto_op_out_len(op), clen);
		assert_rv(crypto_op_oneshot(op, msg, sizeof(msg), a, &alen), CKR_OK);
		crypto_op_free(op);
		assert_rv(crypto_digest_init(mi, &op), CKR_OK);
		assert_rv(crypto_op_update(op, msg, 1), CKR_OK);
		assert_rv(crypto_op_update(op, msg + 1, 0), CKR_OK);
		assert_rv(crypto_op_update(op, msg + 1, 700), CKR_OK);
		assert_rv(crypto_op_update(op, msg + 701, sizeof(msg) - 701), CKR_OK);
		blen = 1;
		assert_rv(crypto_op_final(op, b, &blen), CKR_BUFFER_TOO_SMALL);
		assert_rv(crypto_op_final(op, b, &blen), CKR_OK);
		crypto_op_free(op);
		assert_int_equal(alen, clen);
		assert_int_equal(blen, clen);
		assert_memory_equal(a, c, clen);
		assert_memory_equal(b, c, clen);
		/* digests never verify */
		assert_rv(crypto_digest_init(mi, &op), CKR_OK);
		assert_rv(crypto_op_verify(op, msg, 1, a, alen), CKR_OPERATION_NOT_INITIALIZED);
		crypto_op_free(op);
		tested++;
	}
	assert_int_equal(tested, 5);

	struct crypto_op *op = NULL;
	CK_BYTE out[32];
	CK_ULONG out_len = sizeof(out);
	assert_rv(crypto_digest_init(mech_find(CKM_SHA256), &op), CKR_OK);
	assert_rv(crypto_op_oneshot(op, (const CK_BYTE *)"abc", 3, out, &out_len), CKR_OK);
	assert_memory_equal(out, abc256, 32);
	crypto_op_free(op);
}

/* Two threads signing with one shared EVP_PKEY, as sessions do. */
struct thread_arg {
	const struct kp *k;
	CK_MECHANISM_TYPE mech;
	int ok;
};

static void *sign_thread(void *p)
{
	struct thread_arg *a = p;
	CK_MECHANISM m = {a->mech, NULL, 0};
	for (int i = 0; i < 50; i++) {
		CK_BYTE sig[132];
		CK_ULONG sig_len = sizeof(sig);
		if (sign_with(a->k->kpriv, &m, msg, 64 + i, sig, &sig_len, 0) == CKR_OK &&
		    verify_with(a->k->kpub, &m, msg, 64 + i, sig, sig_len, 0) == CKR_OK)
			a->ok++;
	}
	return NULL;
}

static void test_threads(void **state)
{
	(void)state;
	struct thread_arg args[4] = {{&p256, CKM_ECDSA_SHA256, 0},
				     {&p256, CKM_ECDSA_SHA256, 0},
				     {&ed25519, CKM_EDDSA, 0},
				     {&ed25519, CKM_EDDSA, 0}};
	pthread_t t[4];

	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&t[i], NULL, sign_thread, &args[i]), 0);
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(args[i].ok, 50);
	}
}

/* ---------------------------------------------------------------------- */
/* AES key wrap */

static struct attrs *aes_key(const CK_BYTE *v, size_t len)
{
	struct attrs *a = attrs_new();
	assert_non_null(a);
	set_ulong(a, CKA_KEY_TYPE, CKK_AES);
	set(a, CKA_VALUE, v, len);
	return a;
}

static void hex(const char *s, CK_BYTE *out, size_t *len)
{
	size_t n = 0;
	for (; s[0] && s[1]; s += 2)
		sscanf(s, "%2hhx", &out[n++]);
	*len = n;
}

static void wrap_vector(CK_MECHANISM_TYPE mech, const char *kek_hex, const char *key_hex,
			const char *wrapped_hex)
{
	CK_BYTE kek[32], key[64], want[80], out[80], *un = NULL;
	size_t kek_len, key_len, want_len;
	CK_ULONG out_len, un_len = 0;
	CK_MECHANISM m = {mech, NULL, 0};
	struct attrs *w;

	hex(kek_hex, kek, &kek_len);
	hex(key_hex, key, &key_len);
	hex(wrapped_hex, want, &want_len);
	w = aes_key(kek, kek_len);

	out_len = 0;
	assert_rv(crypto_wrap(&m, w, key, key_len, NULL, &out_len), CKR_OK);
	assert_int_equal(out_len, want_len);
	out_len = want_len - 1;
	assert_rv(crypto_wrap(&m, w, key, key_len, out, &out_len), CKR_BUFFER_TOO_SMALL);
	assert_int_equal(out_len, want_len);
	out_len = sizeof(out);
	assert_rv(crypto_wrap(&m, w, key, key_len, out, &out_len), CKR_OK);
	assert_int_equal(out_len, want_len);
	assert_memory_equal(out, want, want_len);

	assert_rv(crypto_unwrap(&m, w, out, out_len, &un, &un_len), CKR_OK);
	assert_int_equal(un_len, key_len);
	assert_memory_equal(un, key, key_len);
	kt_free_secret(un, un_len);

	/* any change breaks the integrity check */
	for (size_t i = 0; i < out_len; i += 7) {
		un = NULL;
		out[i] ^= 0x10;
		assert_rv(crypto_unwrap(&m, w, out, out_len, &un, &un_len), CKR_WRAPPED_KEY_INVALID);
		assert_null(un);
		out[i] ^= 0x10;
	}
	attrs_free(w);
}

static void test_wrap_vectors(void **state)
{
	(void)state;
	/* RFC 3394 4.1 and 4.6 */
	wrap_vector(CKM_AES_KEY_WRAP, "000102030405060708090A0B0C0D0E0F", "00112233445566778899AABBCCDDEEFF",
		    "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5");
	wrap_vector(CKM_AES_KEY_WRAP, "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
		    "00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F",
		    "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21");
	/* RFC 5649 section 6 */
	wrap_vector(CKM_AES_KEY_WRAP_PAD, "5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8",
		    "c37b7e6492584340bed12207808941155068f738",
		    "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a");
	wrap_vector(CKM_AES_KEY_WRAP_PAD, "5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8",
		    "466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f");
}

static void test_wrap_errors(void **state)
{
	(void)state;
	CK_BYTE kek[32] = {1}, key[64] = {2}, out[100], *un = NULL;
	CK_BYTE iv[8] = {0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6}, out2[100];
	CK_ULONG out_len, un_len = 0;
	CK_MECHANISM m = {CKM_AES_KEY_WRAP, NULL, 0}, mpad = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
	struct attrs *w = aes_key(kek, 16), *bad;

	/* RFC 3394 wraps whole blocks, two or more */
	static const CK_ULONG bad_lens[] = {0, 8, 15, 17, 23};
	for (size_t i = 0; i < sizeof(bad_lens) / sizeof(bad_lens[0]); i++) {
		out_len = sizeof(out);
		assert_rv(crypto_wrap(&m, w, key, bad_lens[i], out, &out_len), CKR_KEY_SIZE_RANGE);
	}
	out_len = sizeof(out);
	assert_rv(crypto_wrap(&mpad, w, key, 0, out, &out_len), CKR_KEY_SIZE_RANGE);
	out_len = sizeof(out);
	assert_rv(crypto_wrap(&mpad, w, key, 1, out, &out_len), CKR_OK);
	assert_int_equal(out_len, 16);
	assert_rv(crypto_unwrap(&mpad, w, out, out_len, &un, &un_len), CKR_OK);
	assert_int_equal(un_len, 1);
	assert_int_equal(un[0], 2);
	kt_free_secret(un, un_len);
	un = NULL;
	out_len = sizeof(out);
	assert_rv(crypto_wrap(&m, w, key, 1u << 20, out, &out_len), CKR_KEY_SIZE_RANGE);

	/* unwrap lengths */
	static const CK_ULONG bad_wrapped[] = {0, 8, 16, 20, 25};
	for (size_t i = 0; i < sizeof(bad_wrapped) / sizeof(bad_wrapped[0]); i++)
		assert_rv(crypto_unwrap(&m, w, out, bad_wrapped[i], &un, &un_len), CKR_WRAPPED_KEY_LEN_RANGE);
	assert_rv(crypto_unwrap(&mpad, w, out, 12, &un, &un_len), CKR_WRAPPED_KEY_LEN_RANGE);
	assert_null(un);

	/* the wrapping key itself */
	bad = aes_key(kek, 15);
	out_len = sizeof(out);
	assert_rv(crypto_wrap(&m, bad, key, 16, out, &out_len), CKR_WRAPPING_KEY_SIZE_RANGE);
	assert_rv(crypto_unwrap(&m, bad, out, 24, &un, &un_len), CKR_UNWRAPPING_KEY_SIZE_RANGE);
	attrs_free(bad);
	bad = attrs_new();
	set_ulong(bad, CKA_KEY_TYPE, CKK_AES);
	assert_rv(crypto_wrap(&m, bad, key, 16, out, &out_len), CKR_WRAPPING_KEY_SIZE_RANGE);
	set_ulong(bad, CKA_KEY_TYPE, CKK_GENERIC_SECRET);
	set(bad, CKA_VALUE, kek, 16);
	assert_rv(crypto_wrap(&m, bad, key, 16, out, &out_len), CKR_WRAPPING_KEY_TYPE_INCONSISTENT);
	assert_rv(crypto_unwrap(&m, bad, out, 24, &un, &un_len), CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT);
	attrs_free(bad);

	/* mechanism checks */
	CK_MECHANISM ms = {CKM_SHA256_RSA_PKCS, NULL, 0};
	assert_rv(crypto_wrap(&ms, w, key, 16, out, &out_len), CKR_MECHANISM_INVALID);
	CK_MECHANISM mbad = {CKM_AES_KEY_WRAP, iv, 7};
	assert_rv(crypto_wrap(&mbad, w, key, 16, out, &out_len), CKR_MECHANISM_PARAM_INVALID);

	/* the default IV given explicitly changes nothing; another IV
	 * changes the result and must be given again to unwrap */
	CK_MECHANISM miv = {CKM_AES_KEY_WRAP, iv, 8};
	out_len = sizeof(out);
	assert_rv(crypto_wrap(&m, w, key, 32, out, &out_len), CKR_OK);
	CK_ULONG out2_len = sizeof(out2);
	assert_rv(crypto_wrap(&miv, w, key, 32, out2, &out2_len), CKR_OK);
	assert_int_equal(out_len, out2_len);
	assert_memory_equal(out, out2, out_len);
	iv[0] = 0x00;
	out2_len = sizeof(out2);
	assert_rv(crypto_wrap(&miv, w, key, 32, out2, &out2_len), CKR_OK);
	assert_memory_not_equal(out, out2, out_len);
	assert_rv(crypto_unwrap(&m, w, out2, out2_len, &un, &un_len), CKR_WRAPPED_KEY_INVALID);
	assert_rv(crypto_unwrap(&miv, w, out2, out2_len, &un, &un_len), CKR_OK);
	assert_int_equal(un_len, 32);
	assert_memory_equal(un, key, 32);
	kt_free_secret(un, un_len);
	un = NULL;

	/* the wrong KEK */
	struct attrs *w2 = aes_key(kek, 32);
	assert_rv(crypto_unwrap(&m, w2, out, out_len, &un, &un_len), CKR_WRAPPED_KEY_INVALID);
	attrs_free(w2);
	attrs_free(w);
}

/* ---------------------------------------------------------------------- */
/* importing keys */

static CK_RV check(CK_OBJECT_CLASS cls, CK_KEY_TYPE kt, struct attrs *a)
{
	if (!attrs_has(a, CKA_KEY_TYPE))
		set_ulong(a, CKA_KEY_TYPE, kt);
	return crypto_check_key(cls, kt, a);
}

/* An attrs holding the listed attributes of src. */
static struct attrs *subset(const struct attrs *src, const CK_ATTRIBUTE_TYPE *types, size_t n)
{
	struct attrs *a = attrs_new();
	assert_non_null(a);
	for (size_t i = 0; i < n; i++)
		copy_attr(a, src, types[i]);
	return a;
}

static const CK_ATTRIBUTE_TYPE rsa_pub_types[] = {CKA_MODULUS, CKA_PUBLIC_EXPONENT};
static const CK_ATTRIBUTE_TYPE rsa_priv_types[] = {
    CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_PRIVATE_EXPONENT, CKA_PRIME_1,
    CKA_PRIME_2, CKA_EXPONENT_1,      CKA_EXPONENT_2,	    CKA_COEFFICIENT,
};

/* Sign with an imported private key, verify with the generated public one. */
static void sign_check(const struct attrs *priv, EVP_PKEY *pub, CK_MECHANISM_TYPE mech)
{
	EVP_PKEY *k = NULL;
	CK_MECHANISM m = {mech, NULL, 0};
	CK_BYTE sig[600];
	CK_ULONG sig_len = sizeof(sig);

	assert_rv(crypto_load_pkey(CKO_PRIVATE_KEY, priv, &k), CKR_OK);
	assert_rv(sign_with(k, &m, msg, 123, sig, &sig_len, 0), CKR_OK);
	assert_rv(verify_with(pub, &m, msg, 123, sig, sig_len, 0), CKR_OK);
	EVP_PKEY_free(k);
}

static void test_check_rsa(void **state)
{
	(void)state;
	struct attrs *a;
	CK_ULONG bits = 0;
	CK_BYTE *big;
	const CK_ATTRIBUTE *n = attrs_get(rsa.pub, CKA_MODULUS);

	/* the generated key, imported */
	a = subset(rsa.pub, rsa_pub_types, 2);
	assert_rv(check(CKO_PUBLIC_KEY, CKK_RSA, a), CKR_OK);
	assert_true(attrs_get_ulong(a, CKA_MODULUS_BITS, &bits));
	assert_int_equal(bits, 2048);
	assert_true(attrs_match(a, attrs_get(rsa.pub, CKA_PUBLIC_KEY_INFO)));
	attrs_free(a);

	a = subset(rsa.priv, rsa_priv_types, 8);
	assert_rv(check(CKO_PRIVATE_KEY, CKK_RSA, a), CKR_OK);
	assert_true(attrs_match(a, attrs_get(rsa.pub, CKA_PUBLIC_KEY_INFO)));
	sign_check(a, rsa.kpub, CKM_SHA256_RSA_PKCS);
	attrs_free(a);

	/* without CRT values */
	a = subset(rsa.priv, rsa_priv_types, 3);
	assert_rv(check(CKO_PRIVATE_KEY, CKK_RSA, a), CKR_OK);
	sign_check(a, rsa.kpub, CKM_SHA512_RSA_PKCS);
	attrs_free(a);

	/* some CRT values but not all */
	a = subset(rsa.priv, rsa_priv_types, 7);
	assert_rv(check(CKO_PRIVATE_KEY, CKK_RSA, a), CKR_TEMPLATE_INCOMPLETE);
	attrs_free(a);
	/* no public exponent (we need it for blinding) */
	a = subset(rsa.priv, rsa_priv_types + 2, 6);
	copy_attr(a, rsa.priv, CKA_MODULUS);
	assert_rv(check(CKO_PRIVATE_KEY, CKK_RSA, a), CKR_TEMPLATE_INCOMPLETE);
	attrs_free(a);
	/* no private exponent */
	a = subset(rsa.priv, rsa_pub_types, 2);
	assert_rv(check(CKO_PRIVATE_KEY, CKK_RSA, a), CKR_TEMPLATE_INCOMPLETE);
	attrs_free(a);
	/* no modulus */
	a = subset(rsa.priv, rsa_priv_types + 1, 7);
	assert_rv(check(CKO_PRIVATE_KEY, CKK_RSA, a), CKR_TEMPLATE_INCOMPLETE);
	attrs_free(a);
	a = attrs_new();
	copy_attr(a, rsa.pub, CKA_PUBLIC_EXPONENT);
	assert_rv(check(CKO_PUBLIC_KEY, CKK_RSA, a), CKR_TEMPLATE_INCOMPLETE);
	attrs_free(a);

	/* components that belong to different keys */
	static const CK_ATTRIBUTE_TYPE tamper[] = {CKA_PRIME_1,	   CKA_PRIME_2,	    CKA_EXPONENT_1,
						   CKA_EXPONENT_2, CKA_COEFFICIENT, CKA_PRIVATE_EXPONENT};
	for (size_t i = 0; i < sizeof(tamper) / sizeof(tamper[0]); i++) {
		const CK_ATTRIBUTE *at = attrs_get(rsa.priv, tamper[i]);
		CK_BYTE v[512];
		a = subset(rsa.priv, rsa_priv_types, 8);
		memcpy(v, at->pValue, at->ulValueLen);
		v[at->ulValueLen - 1] ^= 0x02; /* keeps odd numbers odd */
		set(a, tamper[i], v, at->ulValueLen);
		assert_rv(check(CKO_PRIVATE_KEY, CKK_RSA, a), CKR_ATTRIBUTE_VALUE_INVALID);
		attrs_free(a);
	}
	/* d >= n */
	a = subset(rsa.priv, rsa_priv_types, 3);
	set(a, CKA_PRIVATE_EXPONENT, n->pValue, n->ulValueLen);
	assert_rv(check(CKO_PRIVATE_KEY, CKK_RSA, a), CKR_ATTRIBUTE_VALUE_INVALID);
	attrs_free(a);

	/* leading zeros are fine */
	CK_BYTE padded[300] = {0};
	memcpy(padded + 3, n->pValue, 256);
	a = subset(rsa.pub, rsa_pub_types, 2);
	set(a, CKA_MODULUS, padded, 259);
	set(a, CKA_PUBLIC_EXPONENT, "\x00\x00\x01\x00\x01", 5);
	assert_rv(check(CKO_PUBLIC_KEY, CKK_RSA, a), CKR_OK);
	assert_true(attrs_get_ulong(a, CKA_MODULUS_BITS, &bits));
	assert_int_equal(bits, 2048);
	assert_int_equal(crypto_key_bits(CKO_PUBLIC_KEY, a), 2048);
	attrs_free(a);

	/* hostile moduli: 1 bit, zero, 100000 bits, 1 MiB, even */
	big = malloc(1u << 20);
	assert_non_null(big);
	memset(big, 0xff, 1u << 20);
	static const struct {
		size_t len;
		int fill; /* -1: 0x01 in the last byte only */
		CK_RV want;
	} mods[] = {
	    {1, -1, CKR_KEY_SIZE_RANGE},	  {0, 0, CKR_KEY_SIZE_RANGE},
	    {1000, 0, CKR_KEY_SIZE_RANGE},	  {12500, 0xff, CKR_KEY_SIZE_RANGE},
	    {1u << 20, 0xff, CKR_KEY_SIZE_RANGE}, {2049, -1, CKR_KEY_SIZE_RANGE},
	    {127, 0xff, CKR_KEY_SIZE_RANGE},	  {2048, 0xff, CKR_OK /* 16384 bits, odd */},
	};
	for (size_t i = 0; i < sizeof(mods) / sizeof(mods[0]); i++) {
		a = attrs_new();
		if (mods[i].fill >= 0)
			memset(big, mods[i].fill, mods[i].len);
		else
			memset(big, 0, mods[i].len);
		if (mods[i].fill < 0)
			big[mods[i].len - 1] = 0x01;
		set(a, CKA_MODULUS, big, mods[i].len);
		set(a, CKA_PUBLIC_EXPONENT, "\x01\x00\x01", 3);
		CK_RV rv = check(CKO_PUBLIC_KEY, CKK_RSA, a);
		/* an all-ones modulus is odd and in range: OpenSSL takes it */
		if (mods[i].want == CKR_OK)
			assert_true(rv == CKR_OK || rv == CKR_ATTRIBUTE_VALUE_INVALID);
		else
			assert_rv(rv, mods[i].want);
		attrs_free(a);
	}
	free(big);

	static const struct {
		const char *e;
		size_t len;
	} bad_e[] = {{"\x01\x00\x00", 3},
		     {"\x01", 1},
		     {"", 0},
		     {"\x00", 1},
		     {"\x01\x00\x00\x00\x00\x00\x00\x00\x01", 9}};
	for (size_t i = 0; i < sizeof(bad_e) / sizeof(bad_e[0]); i++) {
		a = subset(rsa.pub, rsa_pub_types, 2);
		set(a, CKA_PUBLIC_EXPONENT, bad_e[i].e, bad_e[i].len);
		assert_rv(check(CKO_PUBLIC_KEY, CKK_RSA, a), CKR_ATTRIBUTE_VALUE_INVALID);
		attrs_free(a);
	}
	a = subset(rsa.pub, rsa_pub_types, 2);
	CK_BYTE even[256];
	memcpy(even, n->pValue, 256);
	even[255] &= 0xfe;
	set(a, CKA_MODULUS, even, 256);
	assert_rv(check(CKO_PUBLIC_KEY, CKK_RSA, a), CKR_ATTRIBUTE_VALUE_INVALID);
	/* class and key type disagree */
	assert_rv(crypto_check_key(CKO_SECRET_KEY, CKK_RSA, a), CKR_TEMPLATE_INCONSISTENT);
	assert_rv(crypto_check_key(CKO_CERTIFICATE, CKK_RSA, a), CKR_TEMPLATE_INCONSISTENT);
	attrs_free(a);
}

/* 1024-bit keys: fine for verifying, refused for signing. */
static void test_check_rsa_1024(void **state)
{
	(void)state;
	EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024), *loaded = NULL;
	struct attrs *pub = attrs_new(), *priv = attrs_new();
	static const char *params[] = {OSSL_PKEY_PARAM_RSA_N, OSSL_PKEY_PARAM_RSA_E, OSSL_PKEY_PARAM_RSA_D};
	static const CK_ATTRIBUTE_TYPE types[] = {CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_PRIVATE_EXPONENT};
	CK_BYTE sig[128];

	assert_non_null(k);
	for (int i = 0; i < 3; i++) {
		BIGNUM *bn = NULL;
		CK_BYTE buf[128];
		assert_int_equal(EVP_PKEY_get_bn_param(k, params[i], &bn), 1);
		int len = BN_bn2bin(bn, buf);
		if (i < 2)
			set(pub, types[i], buf, (size_t)len);
		set(priv, types[i], buf, (size_t)len);
		BN_clear_free(bn);
	}
	assert_rv(check(CKO_PUBLIC_KEY, CKK_RSA, pub), CKR_OK);
	assert_rv(check(CKO_PRIVATE_KEY, CKK_RSA, priv), CKR_KEY_SIZE_RANGE);

	/* a signature OpenSSL made verifies through the imported key */
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	size_t olen = sizeof(sig);
	assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, k), 1);
	assert_int_equal(EVP_DigestSign(md, sig, &olen, msg, 50), 1);
	EVP_MD_CTX_free(md);
	assert_rv(crypto_load_pkey(CKO_PUBLIC_KEY, pub, &loaded), CKR_OK);
	CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, NULL, 0};
	assert_rv(verify_with(loaded, &m, msg, 50, sig, olen, 0), CKR_OK);
	assert_rv(verify_with(loaded, &m, msg, 51, sig, olen, 0), CKR_SIGNATURE_INVALID);
	EVP_PKEY_free(loaded);
	EVP_PKEY_free(k);
	attrs_free(pub);
	attrs_free(priv);
}

static void test_check_ec(void **state)
{
	(void)state;
	const struct kp *keys[] = {&p256, &p384, &p521, &ed25519, &ed448};
	CK_BYTE buf[200];

	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		const struct kp *k = keys[i];
		CK_KEY_TYPE kt = i < 3 ? CKK_EC : CKK_EC_EDWARDS;
		const CK_ATTRIBUTE *pt = attrs_get(k->pub, CKA_EC_POINT);
		const CK_ATTRIBUTE *spki = attrs_get(k->pub, CKA_PUBLIC_KEY_INFO);
		size_t hdr = pt->ulValueLen - (i < 3 ? 1 + k->sig_len : k->sig_len / 2);
		size_t raw_len = pt->ulValueLen - hdr;
		const CK_BYTE *raw = (const CK_BYTE *)pt->pValue + hdr;
		struct attrs *a;

		/* DER point */
		a = attrs_new();
		copy_attr(a, k->pub, CKA_EC_PARAMS);
		copy_attr(a, k->pub, CKA_EC_POINT);
		assert_rv(check(CKO_PUBLIC_KEY, kt, a), CKR_OK);
		assert_true(attrs_match(a, spki));
		assert_true(attrs_match(a, pt));
		attrs_free(a);

		/* the bare point is accepted and stored as DER */
		a = attrs_new();
		copy_attr(a, k->pub, CKA_EC_PARAMS);
		set(a, CKA_EC_POINT, raw, raw_len);
		assert_rv(check(CKO_PUBLIC_KEY, kt, a), CKR_OK);
		assert_true(attrs_match(a, pt));
		assert_true(attrs_match(a, spki));
		attrs_free(a);

		/* the private key, and the public half it implies */
		a = attrs_new();
		copy_attr(a, k->priv, CKA_EC_PARAMS);
		copy_attr(a, k->priv, CKA_VALUE);
		assert_rv(check(CKO_PRIVATE_KEY, kt, a), CKR_OK);
		assert_true(attrs_match(a, spki));
		sign_check(a, k->kpub, i < 3 ? CKM_ECDSA_SHA384 : CKM_EDDSA);
		attrs_free(a);

		/* wrong lengths, truncated and overlong DER */
		static const int deltas[] = {-1, 1, -(int)1000, 5};
		for (size_t d = 0; d < sizeof(deltas) / sizeof(deltas[0]); d++) {
			size_t len = pt->ulValueLen + (size_t)deltas[d];
			if (deltas[d] < 0 && (size_t)-deltas[d] >= pt->ulValueLen)
				len = 0;
			memset(buf, 0x04, sizeof(buf));
			memcpy(buf, pt->pValue, len < pt->ulValueLen ? len : pt->ulValueLen);
			a = attrs_new();
			copy_attr(a, k->pub, CKA_EC_PARAMS);
			set(a, CKA_EC_POINT, buf, len);
			assert_rv(check(CKO_PUBLIC_KEY, kt, a), CKR_ATTRIBUTE_VALUE_INVALID);
			attrs_free(a);
		}
		/* a DER length that lies */
		memcpy(buf, pt->pValue, pt->ulValueLen);
		buf[1] ^= 0x01;
		a = attrs_new();
		copy_attr(a, k->pub, CKA_EC_PARAMS);
		set(a, CKA_EC_POINT, buf, pt->ulValueLen);
		assert_rv(check(CKO_PUBLIC_KEY, kt, a), CKR_ATTRIBUTE_VALUE_INVALID);
		/* no point at all */
		attrs_remove(a, CKA_EC_POINT);
		assert_rv(check(CKO_PUBLIC_KEY, kt, a), CKR_TEMPLATE_INCOMPLETE);
		/* no parameters */
		attrs_remove(a, CKA_EC_PARAMS);
		copy_attr(a, k->pub, CKA_EC_POINT);
		assert_rv(check(CKO_PUBLIC_KEY, kt, a), CKR_TEMPLATE_INCOMPLETE);
		/* parameters of the other family */
		set(a, CKA_EC_PARAMS, i < 3 ? oid_ed25519 : oid_p256, i < 3 ? 5 : 10);
		assert_rv(check(CKO_PUBLIC_KEY, kt, a), CKR_CURVE_NOT_SUPPORTED);
		attrs_free(a);

		/* private values of the wrong size */
		a = attrs_new();
		copy_attr(a, k->priv, CKA_EC_PARAMS);
		memset(buf, 0x01, sizeof(buf));
		set(a, CKA_VALUE, buf, raw_len / (i < 3 ? 2 : 1) + 1);
		assert_rv(check(CKO_PRIVATE_KEY, kt, a), CKR_ATTRIBUTE_VALUE_INVALID);
		set(a, CKA_VALUE, buf, 0);
		assert_rv(check(CKO_PRIVATE_KEY, kt, a), CKR_ATTRIBUTE_VALUE_INVALID);
		attrs_remove(a, CKA_VALUE);
		assert_rv(check(CKO_PRIVATE_KEY, kt, a), CKR_TEMPLATE_INCOMPLETE);
		attrs_free(a);
	}
}

static void test_check_ec_hostile(void **state)
{
	(void)state;
	const CK_ATTRIBUTE *pt = attrs_get(p256.pub, CKA_EC_POINT);
	CK_BYTE buf[70];
	struct attrs *a;
	/* the order of P-256 */
	static const CK_BYTE n256[32] = {
	    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
	};

	/* a point off the curve */
	memcpy(buf, pt->pValue, pt->ulValueLen);
	buf[pt->ulValueLen - 1] ^= 0x01;
	a = attrs_new();
	set(a, CKA_EC_PARAMS, DER(oid_p256));
	set(a, CKA_EC_POINT, buf, pt->ulValueLen);
	assert_rv(check(CKO_PUBLIC_KEY, CKK_EC, a), CKR_ATTRIBUTE_VALUE_INVALID);
	/* the same, bare */
	set(a, CKA_EC_POINT, buf + 2, 65);
	assert_rv(check(CKO_PUBLIC_KEY, CKK_EC, a), CKR_ATTRIBUTE_VALUE_INVALID);
	/* a compressed point in a DER wrapper of that size */
	memcpy(buf, "\x04\x21", 2);
	buf[2] = 0x02;
	memcpy(buf + 3, (const CK_BYTE *)pt->pValue + 3, 32);
	set(a, CKA_EC_POINT, buf, 35);
	assert_rv(check(CKO_PUBLIC_KEY, CKK_EC, a), CKR_ATTRIBUTE_VALUE_INVALID);
	/* a bare point with the compressed prefix */
	memcpy(buf, (const CK_BYTE *)pt->pValue + 2, 65);
	buf[0] = 0x02;
	set(a, CKA_EC_POINT, buf, 65);
	assert_rv(check(CKO_PUBLIC_KEY, CKK_EC, a), CKR_ATTRIBUTE_VALUE_INVALID);
	/* 04 but the infinity / zero coordinates */
	memset(buf, 0, sizeof(buf));
	buf[0] = 0x04;
	set(a, CKA_EC_POINT, buf, 65);
	assert_rv(check(CKO_PUBLIC_KEY, CKK_EC, a), CKR_ATTRIBUTE_VALUE_INVALID);
	/* a DER length claiming gigabytes */
	set(a, CKA_EC_POINT, "\x04\x84\x7f\xff\xff\xff\x04", 7);
	assert_rv(check(CKO_PUBLIC_KEY, CKK_EC, a), CKR_ATTRIBUTE_VALUE_INVALID);
	attrs_free(a);

	/* scalars 0, n and n+1 */
	a = attrs_new();
	set(a, CKA_EC_PARAMS, DER(oid_p256));
	memset(buf, 0, 32);
	set(a, CKA_VALUE, buf, 32);
	assert_rv(check(CKO_PRIVATE_KEY, CKK_EC, a), CKR_ATTRIBUTE_VALUE_INVALID);
	set(a, CKA_VALUE, n256, 32);
	assert_rv(check(CKO_PRIVATE_KEY, CKK_EC, a), CKR_ATTRIBUTE_VALUE_INVALID);
	memcpy(buf, n256, 32);
	buf[31]++;
	set(a, CKA_VALUE, buf, 32);
	assert_rv(check(CKO_PRIVATE_KEY, CKK_EC, a), CKR_ATTRIBUTE_VALUE_INVALID);
	/* n-1 is the largest valid one, 1 the smallest (short and padded) */
	buf[31] -= 2;
	set(a, CKA_VALUE, buf, 32);
	assert_rv(check(CKO_PRIVATE_KEY, CKK_EC, a), CKR_OK);
	set(a, CKA_VALUE, "\x01", 1);
	assert_rv(check(CKO_PRIVATE_KEY, CKK_EC, a), CKR_OK);
	memset(buf, 0, 40);
	buf[39] = 1;
	set(a, CKA_VALUE, buf, 40);
	assert_rv(check(CKO_PRIVATE_KEY, CKK_EC, a), CKR_OK);
	attrs_free(a);

	/* random garbage as parameters and points: errors, never a crash */
	unsigned seed = 12345;
	for (int i = 0; i < 3000; i++) {
		CK_BYTE g[140];
		size_t len = (size_t)(rand_r(&seed) % (int)sizeof(g));
		for (size_t j = 0; j < len; j++)
			g[j] = (CK_BYTE)rand_r(&seed);
		/* make it look like DER half of the time */
		if (len >= 2 && (i & 1)) {
			g[0] = (CK_BYTE[]){0x04, 0x06, 0x13, 0x30}[i % 4];
			g[1] = (CK_BYTE)(len - 2);
		}
		a = attrs_new();
		if (i % 3 == 0) {
			set(a, CKA_EC_PARAMS, g, len);
			copy_attr(a, p256.pub, CKA_EC_POINT);
		} else {
			set(a, CKA_EC_PARAMS, i % 3 == 1 ? oid_p256 : oid_ed25519, i % 3 == 1 ? 10 : 5);
			set(a, CKA_EC_POINT, g, len);
		}
		CK_RV rv = check(CKO_PUBLIC_KEY, i % 3 == 2 ? CKK_EC_EDWARDS : CKK_EC, a);
		/* a random 32-byte Ed25519 key is "valid" (OpenSSL 3.0 does
		 * not check Ed points); for EC nothing random is */
		if (i % 3 != 2)
			assert_int_not_equal(rv, CKR_OK);
		attrs_free(a);
	}
}

static void test_check_secret(void **state)
{
	(void)state;
	CK_BYTE v[600] = {0};
	CK_ULONG len = 0;
	static const struct {
		CK_KEY_TYPE kt;
		size_t len;
		CK_RV want;
	} cases[] = {
	    {CKK_AES, 16, CKR_OK},
	    {CKK_AES, 24, CKR_OK},
	    {CKK_AES, 32, CKR_OK},
	    {CKK_AES, 0, CKR_ATTRIBUTE_VALUE_INVALID},
	    {CKK_AES, 17, CKR_ATTRIBUTE_VALUE_INVALID},
	    {CKK_AES, 64, CKR_ATTRIBUTE_VALUE_INVALID},
	    {CKK_GENERIC_SECRET, 1, CKR_OK},
	    {CKK_GENERIC_SECRET, 512, CKR_OK},
	    {CKK_GENERIC_SECRET, 0, CKR_ATTRIBUTE_VALUE_INVALID},
	    {CKK_GENERIC_SECRET, 513, CKR_KEY_SIZE_RANGE},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct attrs *a = attrs_new();
		set(a, CKA_VALUE, v, cases[i].len);
		assert_rv(check(CKO_SECRET_KEY, cases[i].kt, a), cases[i].want);
		if (cases[i].want == CKR_OK) {
			assert_true(attrs_get_ulong(a, CKA_VALUE_LEN, &len));
			assert_int_equal(len, cases[i].len);
		}
		attrs_free(a);
	}
	struct attrs *a = attrs_new();
	assert_rv(check(CKO_SECRET_KEY, CKK_AES, a), CKR_TEMPLATE_INCOMPLETE);
	set(a, CKA_VALUE, v, 16);
	set_ulong(a, CKA_VALUE_LEN, 32);
	assert_rv(check(CKO_SECRET_KEY, CKK_AES, a), CKR_TEMPLATE_INCONSISTENT);
	set_ulong(a, CKA_VALUE_LEN, 16);
	assert_rv(check(CKO_SECRET_KEY, CKK_AES, a), CKR_OK);
	assert_rv(crypto_check_key(CKO_PRIVATE_KEY, CKK_AES, a), CKR_TEMPLATE_INCONSISTENT);
	assert_rv(crypto_check_key(CKO_SECRET_KEY, CKK_DES3, a), CKR_ATTRIBUTE_VALUE_INVALID);
	assert_rv(crypto_check_key(CKO_SECRET_KEY, CKK_VENDOR_DEFINED, a), CKR_ATTRIBUTE_VALUE_INVALID);
	attrs_free(a);
}

static void test_load_pkey(void **state)
{
	(void)state;
	EVP_PKEY *k = NULL;
	struct attrs *a;

	/* not an asymmetric key */
	assert_rv(crypto_load_pkey(CKO_SECRET_KEY, rsa.priv, &k), CKR_KEY_TYPE_INCONSISTENT);
	a = aes_key((const CK_BYTE *)"0123456789abcdef", 16);
	assert_rv(crypto_load_pkey(CKO_PRIVATE_KEY, a, &k), CKR_KEY_TYPE_INCONSISTENT);
	attrs_free(a);
	/* no key type */
	a = subset(rsa.pub, rsa_pub_types, 2);
	assert_rv(crypto_load_pkey(CKO_PUBLIC_KEY, a, &k), CKR_KEY_TYPE_INCONSISTENT);
	set_ulong(a, CKA_KEY_TYPE, CKK_RSA);
	assert_rv(crypto_load_pkey(CKO_PUBLIC_KEY, a, &k), CKR_OK);
	assert_int_equal(EVP_PKEY_eq(k, rsa.kpub), 1);
	EVP_PKEY_free(k);
	k = NULL;
	/* damaged material */
	assert_rv(crypto_load_pkey(CKO_PRIVATE_KEY, a, &k), CKR_FUNCTION_FAILED);
	attrs_free(a);
	a = attrs_new();
	set_ulong(a, CKA_KEY_TYPE, CKK_EC);
	set(a, CKA_EC_PARAMS, DER(oid_p256));
	assert_rv(crypto_load_pkey(CKO_PUBLIC_KEY, a, &k), CKR_FUNCTION_FAILED);
	assert_rv(crypto_load_pkey(CKO_PRIVATE_KEY, a, &k), CKR_FUNCTION_FAILED);
	set(a, CKA_EC_POINT, "\x04\x41\x04", 3);
	assert_rv(crypto_load_pkey(CKO_PUBLIC_KEY, a, &k), CKR_FUNCTION_FAILED);
	set(a, CKA_VALUE, "\x00\x00", 2);
	assert_rv(crypto_load_pkey(CKO_PRIVATE_KEY, a, &k), CKR_FUNCTION_FAILED);
	set_ulong(a, CKA_KEY_TYPE, CKK_EC_EDWARDS);
	set(a, CKA_VALUE, "abc", 3);
	assert_rv(crypto_load_pkey(CKO_PRIVATE_KEY, a, &k), CKR_FUNCTION_FAILED);
	assert_null(k);
	attrs_free(a);
	/* the key bits of nothing */
	a = attrs_new();
	assert_int_equal(crypto_key_bits(CKO_PUBLIC_KEY, a), 0);
	set_ulong(a, CKA_KEY_TYPE, CKK_RSA);
	assert_int_equal(crypto_key_bits(CKO_PUBLIC_KEY, a), 0);
	set_ulong(a, CKA_MODULUS_BITS, 3072);
	assert_int_equal(crypto_key_bits(CKO_PUBLIC_KEY, a), 3072);
	attrs_free(a);
}

static void test_random(void **state)
{
	(void)state;
	CK_BYTE a[64] = {0}, b[64] = {0}, zero[64] = {0};

	assert_rv(crypto_random(a, 0), CKR_OK);
	assert_memory_equal(a, zero, 64);
	assert_rv(crypto_random(a, sizeof(a)), CKR_OK);
	assert_rv(crypto_random(b, sizeof(b)), CKR_OK);
	assert_memory_not_equal(a, zero, 64);
	assert_memory_not_equal(a, b, 64);
}

/* Does a mapping of exactly `kib` KiB exist that core dumps leave out? */
static bool dontdump_of(unsigned long kib)
{
	FILE *fp = fopen("/proc/self/smaps", "r");
	char line[512];
	unsigned long size = 0;
	bool found = false;
	assert_non_null(fp);
	while (!found && fgets(line, sizeof(line), fp)) {
		if (sscanf(line, "Size: %lu kB", &size) == 1)
			continue;
		if (strncmp(line, "VmFlags:", 8) == 0 && strstr(line, " dd") && size == kib)
			found = true;
	}
	fclose(fp);
	return found;
}

/* A secret too big for the secure heap (a document of megabytes) still
 * stays out of core dumps, and its pages go when it is freed. */
static void test_big_secret(void **state)
{
	(void)state;
	size_t len = 3 * 1024 * 1024 + 4096; /* 3076 KiB, unlike anything else here */
	unsigned char *p = kt_alloc_secret(len);
	assert_non_null(p);
	assert_int_equal(p[0] | p[len - 1], 0);
	memset(p, 0x5a, len);
	assert_true(dontdump_of(len / 1024));
	kt_free_secret(p, len);
	assert_false(dontdump_of(len / 1024));
	/* Small ones from the ordinary heap (no secure heap in this test). */
	unsigned char *q = kt_alloc_secret(32);
	assert_non_null(q);
	kt_free_secret(q, 32);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_mech_table),	     cmocka_unit_test(test_mech_lookup),
	    cmocka_unit_test(test_generate_rsa),     cmocka_unit_test(test_generate_rsa_errors),
	    cmocka_unit_test(test_generate_ec),	     cmocka_unit_test(test_generate_ec_errors),
	    cmocka_unit_test(test_generate_secret),  cmocka_unit_test(test_sign_verify_all),
	    cmocka_unit_test(test_sign_empty),	     cmocka_unit_test(test_raw_pss_hashes),
	    cmocka_unit_test(test_sign_init_errors), cmocka_unit_test(test_sign_key_lifetime),
	    cmocka_unit_test(test_out_buffer),	     cmocka_unit_test(test_rsa_pkcs_data_len),
	    cmocka_unit_test(test_update_cap),	     cmocka_unit_test(test_ecdsa_openssl),
	    cmocka_unit_test(test_rsa_openssl),	     cmocka_unit_test(test_eddsa_openssl),
	    cmocka_unit_test(test_digest),	     cmocka_unit_test(test_threads),
	    cmocka_unit_test(test_wrap_vectors),     cmocka_unit_test(test_wrap_errors),
	    cmocka_unit_test(test_check_rsa),	     cmocka_unit_test(test_check_rsa_1024),
	    cmocka_unit_test(test_check_ec),	     cmocka_unit_test(test_check_ec_hostile),
	    cmocka_unit_test(test_check_secret),     cmocka_unit_test(test_load_pkey),
	    cmocka_unit_test(test_random),
	    cmocka_unit_test(test_big_secret),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
