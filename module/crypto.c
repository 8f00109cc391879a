/*
 * Key material in, EVP_PKEYs and signatures out, over OpenSSL 3 EVP only
 * (no deprecated RSA_* / EC_KEY_* calls).
 *
 * Encodings are PKCS#11 3.0's: RSA integers big-endian unsigned; CKA_EC_PARAMS
 * the DER of a named curve's OID (or, for EdDSA, the PrintableString name);
 * CKA_EC_POINT a DER OCTET STRING around the uncompressed point (EC) or the
 * raw public key (EdDSA); ECDSA signatures r||s, each as long as the order.
 *
 * The signing path is the hot one (the module promises >= 0.9x raw OpenSSL):
 * digests are fetched once per process, every EVP context is set up in
 * crypto_sign_init, and a one-shot sign hands the caller's buffer straight to
 * OpenSSL.
 */
#include "crypto.h"
#include "log.h"

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

/*
 * RSA sizes.  Generation makes 2048..4096 bits.  Imported public keys may be
 * 1024..16384 bits because signatures made long ago with such keys must stay
 * verifiable; an imported private key must have at least 2048 bits because
 * nothing new should be signed with less.  16384 bounds the work a hostile
 * key can cause (and every allocation that follows from it).
 */
#define RSA_GEN_MIN_BITS  2048
#define RSA_GEN_MAX_BITS  4096
#define RSA_PUB_MIN_BITS  1024
#define RSA_PRIV_MIN_BITS 2048
#define RSA_MAX_BITS	  16384
#define RSA_MAX_BYTES	  (RSA_MAX_BITS / 8)
/* OpenSSL itself refuses public exponents above 64 bits for big moduli;
 * nothing legitimate uses them. */
#define RSA_MAX_E_BYTES 8
#define RSA_DEFAULT_E	65537

/* Single-part input is buffered up to this much; beyond, CKR_DATA_LEN_RANGE. */
#define OP_MAX_INPUT (64u * 1024 * 1024)

/* Generic secrets: 1..512 bytes (crypto.h). */
#define GENERIC_MAX_BYTES 512

/* Secret key values we wrap are small; this only bounds allocations. */
#define WRAP_MAX_INPUT 65536

/* DER ECDSA-Sig-Value for P-521: two INTEGERs of at most 67 bytes each. */
#define ECDSA_DER_MAX 160
/* An uncompressed P-521 point: 04 || x || y */
#define EC_POINT_MAX (1 + 2 * 66)

/* ---------------------------------------------------------------------- */
/* OpenSSL plumbing */

/* An OpenSSL call failed: trace why (OpenSSL's error strings carry no key
 * bytes) and empty this thread's error queue so it cannot confuse a later,
 * unrelated call. */
static CK_RV ossl_fail(const char *what)
{
	unsigned long e;
	char buf[256];
	bool any = false;

	if (!(kt_debug_mask & KT_DBG_CRYPTO))
		goto out;
	while ((e = ERR_get_error()) != 0) {
		any = true;
		ERR_error_string_n(e, buf, sizeof(buf));
		kt_debug_print(KT_DBG_CRYPTO, "%s: %s", what, buf);
	}
	if (!any)
		kt_debug_print(KT_DBG_CRYPTO, "%s failed", what);
out:
	ERR_clear_error();
	return CKR_FUNCTION_FAILED;
}

/* Fetched once per process: a name-based fetch takes locks inside OpenSSL
 * and would otherwise happen on every C_SignInit. */
/* clang-format off */
static struct {
	const char *name;
	EVP_MD *md;
} digests[] = {
	{ "SHA1", NULL }, { "SHA224", NULL }, { "SHA256", NULL }, { "SHA384", NULL }, { "SHA512", NULL },
};

static struct {
	const char *name;
	size_t key_len;
	bool pad;
	EVP_CIPHER *cipher;
} wrap_ciphers[] = {
	{ "AES-128-WRAP", 16, false, NULL },     { "AES-192-WRAP", 24, false, NULL },
	{ "AES-256-WRAP", 32, false, NULL },     { "AES-128-WRAP-PAD", 16, true, NULL },
	{ "AES-192-WRAP-PAD", 24, true, NULL },  { "AES-256-WRAP-PAD", 32, true, NULL },
};
/* clang-format on */

static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;

/* A missing algorithm (a FIPS-only configuration without SHA-1, say) stays
 * NULL and makes only the mechanisms that need it fail. */
static void fetch_all(void)
{
	for (size_t i = 0; i < KT_ARRAY_SIZE(digests); i++)
		digests[i].md = EVP_MD_fetch(NULL, digests[i].name, NULL);
	for (size_t i = 0; i < KT_ARRAY_SIZE(wrap_ciphers); i++)
		wrap_ciphers[i].cipher = EVP_CIPHER_fetch(NULL, wrap_ciphers[i].name, NULL);
	ERR_clear_error();
}

static const EVP_MD *md_get(const char *name);

bool crypto_digest(const char *name, const void *data, size_t len, unsigned char *out)
{
	const EVP_MD *md = md_get(name);
	unsigned int n = 0;
	return md && EVP_Digest(data ? data : (const void *)"", len, out, &n, md, NULL) && n > 0;
}

bool crypto_sha256(const void *data, size_t len, unsigned char out[32])
{
	return crypto_digest("SHA256", data, len, out);
}

static const EVP_MD *md_get(const char *name)
{
	pthread_once(&fetch_once, fetch_all);
	if (!name)
		return NULL;
	for (size_t i = 0; i < KT_ARRAY_SIZE(digests); i++)
		if (strcmp(digests[i].name, name) == 0)
			return digests[i].md;
	return NULL;
}

/* The digest a CKM_SHA* mechanism stands for (PSS hashAlg). */
static const EVP_MD *md_of_mech(CK_MECHANISM_TYPE type)
{
	const struct mech_info *h = mech_find(type);
	return h && (h->ops & MECH_DIGEST) ? md_get(h->digest) : NULL;
}

static const EVP_MD *md_of_mgf(CK_RSA_PKCS_MGF_TYPE mgf)
{
	switch (mgf) {
	case CKG_MGF1_SHA1:
		return md_get("SHA1");
	case CKG_MGF1_SHA224:
		return md_get("SHA224");
	case CKG_MGF1_SHA256:
		return md_get("SHA256");
	case CKG_MGF1_SHA384:
		return md_get("SHA384");
	case CKG_MGF1_SHA512:
		return md_get("SHA512");
	default:
		return NULL;
	}
}

static const EVP_CIPHER *wrap_cipher(size_t key_len, bool pad)
{
	pthread_once(&fetch_once, fetch_all);
	for (size_t i = 0; i < KT_ARRAY_SIZE(wrap_ciphers); i++)
		if (wrap_ciphers[i].key_len == key_len && wrap_ciphers[i].pad == pad)
			return wrap_ciphers[i].cipher;
	return NULL;
}

/* ---------------------------------------------------------------------- */
/* Attribute encodings */

/* A big-endian unsigned integer without its leading zero bytes. */
static void be_trim(const CK_BYTE **p, CK_ULONG *len)
{
	while (*len > 0 && **p == 0) {
		(*p)++;
		(*len)--;
	}
}

/* Bits of a trimmed big-endian integer. */
static CK_ULONG be_bits(const CK_BYTE *p, CK_ULONG len)
{
	CK_ULONG bits;
	CK_BYTE top;

	if (len == 0)
		return 0;
	bits = (len - 1) * 8;
	for (top = p[0]; top; top >>= 1)
		bits++;
	return bits;
}

/* An integer attribute as a BIGNUM; NULL when absent, zero or longer than
 * max_bytes.  Secrets go into BNs flagged secure and constant-time, which
 * OpenSSL wipes when it frees or copies them. */
static BIGNUM *attr_bn(const struct attrs *a, CK_ATTRIBUTE_TYPE type, bool secret, CK_ULONG max_bytes)
{
	const CK_ATTRIBUTE *at = attrs_get(a, type);
	const CK_BYTE *p;
	CK_ULONG len;
	BIGNUM *bn;

	if (!at)
		return NULL;
	p = at->pValue;
	len = at->ulValueLen;
	be_trim(&p, &len);
	if (len == 0 || len > max_bytes)
		return NULL;
	bn = secret ? BN_secure_new() : BN_new();
	if (!bn)
		return NULL;
	if (secret)
		BN_set_flags(bn, BN_FLG_CONSTTIME);
	if (!BN_bin2bn(p, (int)len, bn)) {
		BN_clear_free(bn);
		return NULL;
	}
	return bn;
}

/* Store a BIGNUM big-endian, at least one byte long; private components
 * in secret memory. */
static CK_RV attr_set_bn(struct attrs *a, CK_ATTRIBUTE_TYPE type, const BIGNUM *bn, bool secret)
{
	int n = BN_num_bytes(bn);
	size_t len = n > 0 ? (size_t)n : 1;
	CK_BYTE *buf = secret ? kt_alloc_secret(len) : calloc(1, len);

	if (!buf)
		return CKR_HOST_MEMORY;
	if (n > 0)
		BN_bn2bin(bn, buf);
	return attrs_take(a, type, buf, len);
}

/* Read one DER TLV at the start of p: definite lengths only, minimally
 * encoded, at most three length bytes (our objects are far smaller).
 * *used is the whole TLV's size. */
static bool der_peek(const CK_BYTE *p, size_t len, CK_BYTE *tag, const CK_BYTE **content, size_t *clen,
		     size_t *used)
{
	size_t n, hdr = 2;

	if (len < 2)
		return false;
	*tag = p[0];
	n = p[1];
	if (n & 0x80) {
		size_t nb = n & 0x7f;
		if (nb == 0 || nb > 3 || len < 2 + nb || p[2] == 0)
			return false;
		n = 0;
		for (size_t i = 0; i < nb; i++)
			n = (n << 8) | p[2 + i];
		if (n < 0x80)
			return false;
		hdr += nb;
	}
	if (n > len - hdr)
		return false;
	*content = p + hdr;
	*clen = n;
	*used = hdr + n;
	return true;
}

/* Exactly one TLV filling the buffer. */
static bool der_read(const CK_BYTE *p, size_t len, CK_BYTE *tag, const CK_BYTE **content, size_t *clen)
{
	size_t used;
	return der_peek(p, len, tag, content, clen, &used) && used == len;
}

/* Header of a DER TLV with content length n; returns its size. */
static size_t der_put_header(CK_BYTE *out, CK_BYTE tag, size_t n)
{
	out[0] = tag;
	if (n < 0x80) {
		out[1] = (CK_BYTE)n;
		return 2;
	}
	if (n <= 0xff) {
		out[1] = 0x81;
		out[2] = (CK_BYTE)n;
		return 3;
	}
	out[1] = 0x82;
	out[2] = (CK_BYTE)(n >> 8);
	out[3] = (CK_BYTE)n;
	return 4;
}

/* The DER OCTET STRING CKA_EC_POINT holds (n is at most a few hundred). */
static CK_RV attr_set_octet_string(struct attrs *a, CK_ATTRIBUTE_TYPE type, const CK_BYTE *c, size_t n)
{
	CK_BYTE *buf = malloc(n + 4);
	size_t hdr;

	if (!buf)
		return CKR_HOST_MEMORY;
	hdr = der_put_header(buf, 0x04, n);
	memcpy(buf + hdr, c, n);
	return attrs_take(a, type, buf, hdr + n);
}

/* ---------------------------------------------------------------------- */
/* Curves */

struct curve {
	const char *name; /* OpenSSL group (EC) or algorithm (EdDSA) name */
	int nid;	  /* EC: to derive a public point; 0 for EdDSA */
	CK_KEY_TYPE kt;
	CK_ULONG bits;	    /* field size, as CK_MECHANISM_INFO counts */
	size_t len;	    /* EC: bytes of a coordinate and of the order; EdDSA: raw key bytes */
	const CK_BYTE *oid; /* DER OBJECT IDENTIFIER */
	size_t oid_len;
	const CK_BYTE *printable; /* DER PrintableString alias, or NULL */
	size_t printable_len;
};

#define DER(s) (const CK_BYTE *)(s), sizeof(s) - 1

/* clang-format off */
static const struct curve curves[] = {
	{ "P-256", NID_X9_62_prime256v1, CKK_EC, 256, 32,
	  DER("\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07"), NULL, 0 },
	{ "P-384", NID_secp384r1, CKK_EC, 384, 48, DER("\x06\x05\x2b\x81\x04\x00\x22"), NULL, 0 },
	{ "P-521", NID_secp521r1, CKK_EC, 521, 66, DER("\x06\x05\x2b\x81\x04\x00\x23"), NULL, 0 },
	/* id-Ed25519 / id-Ed448 (RFC 8410) and the 3.0 spec's curve names */
	{ "ED25519", 0, CKK_EC_EDWARDS, 255, 32, DER("\x06\x03\x2b\x65\x70"),
	  DER("\x13\x0c" "edwards25519") },
	{ "ED448", 0, CKK_EC_EDWARDS, 448, 57, DER("\x06\x03\x2b\x65\x71"),
	  DER("\x13\x0a" "edwards448") },
};
/* clang-format on */

/* CKA_EC_PARAMS to a curve of key type kt.  A well-formed encoding of
 * something we do not serve (another OID, explicit parameters,
 * implicitlyCA) is CKR_CURVE_NOT_SUPPORTED; anything else is malformed. */
static CK_RV curve_from_attr(const CK_ATTRIBUTE *at, CK_KEY_TYPE kt, const struct curve **out)
{
	CK_RV rv = CKR_TEMPLATE_INCOMPLETE;
	const CK_BYTE *p, *c;
	size_t len, clen;
	CK_BYTE tag;

	if (!at)
		goto out;
	p = at->pValue;
	len = at->ulValueLen;
	for (size_t i = 0; i < KT_ARRAY_SIZE(curves); i++) {
		const struct curve *cv = &curves[i];
		if ((len == cv->oid_len && memcmp(p, cv->oid, len) == 0) ||
		    (cv->printable && len == cv->printable_len && memcmp(p, cv->printable, len) == 0)) {
			rv = cv->kt == kt ? CKR_OK : CKR_CURVE_NOT_SUPPORTED;
			if (rv == CKR_OK)
				*out = cv;
			goto out;
		}
	}
	rv = CKR_ATTRIBUTE_VALUE_INVALID;
	if (!der_read(p, len, &tag, &c, &clen))
		goto out;
	switch (tag) {
	case 0x06: /* OBJECT IDENTIFIER: its last byte ends a sub-identifier */
		if (clen == 0 || (c[clen - 1] & 0x80))
			goto out;
		break;
	case 0x13: /* PrintableString */
		if (clen == 0)
			goto out;
		break;
	case 0x30: /* explicit ECParameters */
		break;
	case 0x05: /* NULL: implicitlyCA */
		if (clen != 0)
			goto out;
		break;
	default:
		goto out;
	}
	rv = CKR_CURVE_NOT_SUPPORTED;
out:
	return rv;
}

/* Bytes of the public key itself: 04||x||y for EC, the raw key for EdDSA. */
static size_t curve_point_len(const struct curve *c)
{
	return c->kt == CKK_EC ? 1 + 2 * c->len : c->len;
}

/* The point inside CKA_EC_POINT, pointing into the attribute.  The DER
 * OCTET STRING is the standard form; the bare point is accepted too
 * because several applications send it (*raw says which it was).  The two
 * cannot be confused: their lengths differ. */
static CK_RV ec_point_from_attr(const struct curve *c, const CK_ATTRIBUTE *at, const CK_BYTE **pt, bool *raw)
{
	CK_RV rv = CKR_TEMPLATE_INCOMPLETE;
	size_t want = curve_point_len(c), clen;
	const CK_BYTE *content;
	CK_BYTE tag;

	if (!at)
		goto out;
	rv = CKR_ATTRIBUTE_VALUE_INVALID;
	if (at->ulValueLen == want) {
		content = at->pValue;
		*raw = true;
	} else {
		if (!der_read(at->pValue, at->ulValueLen, &tag, &content, &clen) || tag != 0x04 ||
		    clen != want)
			goto out;
		*raw = false;
	}
	/* Only uncompressed points: that is what CKF_EC_UNCOMPRESS promises
	 * and what applications reading CKA_EC_POINT expect. */
	if (c->kt == CKK_EC && content[0] != 0x04)
		goto out;
	*pt = content;
	rv = CKR_OK;
out:
	return rv;
}

/* ---------------------------------------------------------------------- */
/* EVP_PKEY construction */

static CK_RV pkey_fromdata(const char *alg, int selection, OSSL_PARAM_BLD *bld, EVP_PKEY **out)
{
	CK_RV rv = CKR_HOST_MEMORY;
	OSSL_PARAM *p = NULL;
	EVP_PKEY_CTX *ctx = NULL;

	p = OSSL_PARAM_BLD_to_param(bld);
	if (!p)
		goto out;
	ctx = EVP_PKEY_CTX_new_from_name(NULL, alg, NULL);
	if (!ctx)
		goto out;
	*out = NULL;
	if (EVP_PKEY_fromdata_init(ctx) <= 0 || EVP_PKEY_fromdata(ctx, out, selection, p) <= 0) {
		rv = ossl_fail("EVP_PKEY_fromdata");
		goto out;
	}
	rv = CKR_OK;
out:
	EVP_PKEY_CTX_free(ctx);
	/* The builder put secret BNs in secure memory, which this wipes. */
	OSSL_PARAM_free(p);
	return rv;
}

enum rsa_part { RSA_N, RSA_E, RSA_D, RSA_P, RSA_Q, RSA_DP, RSA_DQ, RSA_QINV, RSA_NPARTS };

/* clang-format off */
static const struct {
	CK_ATTRIBUTE_TYPE type;
	const char *param;
	bool secret;
} rsa_parts[RSA_NPARTS] = {
	[RSA_N]    = { CKA_MODULUS,          OSSL_PKEY_PARAM_RSA_N,            false },
	[RSA_E]    = { CKA_PUBLIC_EXPONENT,  OSSL_PKEY_PARAM_RSA_E,            false },
	[RSA_D]    = { CKA_PRIVATE_EXPONENT, OSSL_PKEY_PARAM_RSA_D,            true },
	[RSA_P]    = { CKA_PRIME_1,          OSSL_PKEY_PARAM_RSA_FACTOR1,      true },
	[RSA_Q]    = { CKA_PRIME_2,          OSSL_PKEY_PARAM_RSA_FACTOR2,      true },
	[RSA_DP]   = { CKA_EXPONENT_1,       OSSL_PKEY_PARAM_RSA_EXPONENT1,    true },
	[RSA_DQ]   = { CKA_EXPONENT_2,       OSSL_PKEY_PARAM_RSA_EXPONENT2,    true },
	[RSA_QINV] = { CKA_COEFFICIENT,      OSSL_PKEY_PARAM_RSA_COEFFICIENT1, true },
};
/* clang-format on */

struct rsa_bns {
	BIGNUM *bn[RSA_NPARTS];
};

static void rsa_bns_clear(struct rsa_bns *r)
{
	for (int i = 0; i < RSA_NPARTS; i++) {
		BN_clear_free(r->bn[i]);
		r->bn[i] = NULL;
	}
}

/*
 * The RSA components of a key object.  n and e always (OpenSSL needs e for
 * blinding, so we demand it of private keys too); a private key adds d and
 * either all five CRT values or none.  Lengths are checked before anything
 * is converted, so a hostile size costs nothing.
 */
static CK_RV rsa_bns_get(const struct attrs *a, bool priv, struct rsa_bns *r)
{
	CK_RV rv = CKR_TEMPLATE_INCOMPLETE;
	int last = priv ? RSA_QINV : RSA_E;
	int crt = 0;

	memset(r, 0, sizeof(*r));
	for (int i = 0; i <= last; i++) {
		const CK_ATTRIBUTE *at = attrs_get(a, rsa_parts[i].type);
		if (!at && i < RSA_P)
			goto out;
		crt += at && i >= RSA_P;
	}
	if (crt != 0 && crt != 5)
		goto out;
	for (int i = 0; i <= last; i++) {
		const CK_ATTRIBUTE *at = attrs_get(a, rsa_parts[i].type);
		const CK_BYTE *p;
		CK_ULONG len, bits;

		if (!at)
			continue;
		p = at->pValue;
		len = at->ulValueLen;
		be_trim(&p, &len);
		bits = be_bits(p, len);
		rv = CKR_KEY_SIZE_RANGE;
		if (i == RSA_N &&
		    (bits < (priv ? RSA_PRIV_MIN_BITS : RSA_PUB_MIN_BITS) || bits > RSA_MAX_BITS))
			goto out;
		rv = CKR_ATTRIBUTE_VALUE_INVALID;
		if (len == 0 || len > (i == RSA_E ? RSA_MAX_E_BYTES : RSA_MAX_BYTES))
			goto out;
	}
	rv = CKR_HOST_MEMORY;
	for (int i = 0; i <= last; i++) {
		if (!attrs_has(a, rsa_parts[i].type))
			continue;
		r->bn[i] = attr_bn(a, rsa_parts[i].type, rsa_parts[i].secret, RSA_MAX_BYTES);
		if (!r->bn[i])
			goto out;
	}
	rv = CKR_OK;
out:
	if (rv != CKR_OK)
		rsa_bns_clear(r);
	return rv;
}

static CK_RV rsa_pkey(const struct rsa_bns *r, bool priv, EVP_PKEY **out)
{
	CK_RV rv = CKR_HOST_MEMORY;
	OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
	int last = priv ? RSA_QINV : RSA_E;

	if (!bld)
		goto out;
	for (int i = 0; i <= last; i++)
		if (r->bn[i] && !OSSL_PARAM_BLD_push_BN(bld, rsa_parts[i].param, r->bn[i]))
			goto out;
	rv = pkey_fromdata("RSA", priv ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY, bld, out);
out:
	OSSL_PARAM_BLD_free(bld);
	return rv;
}

static CK_RV ec_pkey(const struct curve *c, const CK_BYTE *pt, const BIGNUM *d, EVP_PKEY **out)
{
	CK_RV rv = CKR_HOST_MEMORY;
	OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();

	if (!bld || !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, c->name, 0))
		goto out;
	if (pt && !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, curve_point_len(c)))
		goto out;
	if (d && !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, d))
		goto out;
	rv = pkey_fromdata("EC", d ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY, bld, out);
out:
	OSSL_PARAM_BLD_free(bld);
	return rv;
}

static CK_RV ed_pkey(const struct curve *c, const CK_BYTE *raw, bool priv, EVP_PKEY **out)
{
	*out = priv ? EVP_PKEY_new_raw_private_key_ex(NULL, c->name, NULL, raw, c->len)
		    : EVP_PKEY_new_raw_public_key_ex(NULL, c->name, NULL, raw, c->len);
	return *out ? CKR_OK : ossl_fail("EVP_PKEY_new_raw_key");
}

/* CKA_PUBLIC_KEY_INFO: the DER SubjectPublicKeyInfo of the key's public half. */
static CK_RV set_spki(struct attrs *a, EVP_PKEY *pkey)
{
	CK_RV rv;
	unsigned char *der = NULL;
	int n = i2d_PUBKEY(pkey, &der);

	if (n <= 0)
		return ossl_fail("i2d_PUBKEY");
	rv = attrs_set(a, CKA_PUBLIC_KEY_INFO, der, (CK_ULONG)n);
	OPENSSL_free(der);
	return rv;
}

/* ---------------------------------------------------------------------- */
/* Key checks (C_CreateObject, C_UnwrapKey) */

static bool key_type_of(const struct attrs *a, CK_KEY_TYPE *kt)
{
	return attrs_get_ulong(a, CKA_KEY_TYPE, kt);
}

/* Cheap consistency checks of a CRT key: enough to catch components that
 * belong to different keys, without the primality tests that would let a
 * hostile 16384-bit key keep us busy for seconds. */
static CK_RV rsa_check_crt(const struct rsa_bns *r)
{
	CK_RV rv = CKR_HOST_MEMORY;
	BN_CTX *ctx = BN_CTX_secure_new();
	BIGNUM *t[6], *pm1, *qm1;
	BIGNUM *const *b = r->bn;

	if (!ctx)
		goto out;
	BN_CTX_start(ctx);
	for (int i = 0; i < 6; i++)
		t[i] = BN_CTX_get(ctx);
	pm1 = BN_CTX_get(ctx);
	qm1 = BN_CTX_get(ctx);
	if (!qm1)
		goto out;
	rv = CKR_ATTRIBUTE_VALUE_INVALID;
	if (BN_is_one(b[RSA_P]) || BN_is_one(b[RSA_Q]))
		goto out;
	/* n = p*q; dp = d mod (p-1), dq = d mod (q-1); e*dp = 1 mod (p-1)
	 * and e*dq = 1 mod (q-1), so d really inverts e; qinv*q = 1 mod p */
	rv = CKR_FUNCTION_FAILED;
	if (!BN_sub(pm1, b[RSA_P], BN_value_one()) || !BN_sub(qm1, b[RSA_Q], BN_value_one()) ||
	    !BN_mul(t[0], b[RSA_P], b[RSA_Q], ctx) || !BN_mod(t[1], b[RSA_D], pm1, ctx) ||
	    !BN_mod(t[2], b[RSA_D], qm1, ctx) || !BN_mod_mul(t[3], b[RSA_E], b[RSA_DP], pm1, ctx) ||
	    !BN_mod_mul(t[4], b[RSA_E], b[RSA_DQ], qm1, ctx) ||
	    !BN_mod_mul(t[5], b[RSA_QINV], b[RSA_Q], b[RSA_P], ctx))
		goto out;
	rv = CKR_ATTRIBUTE_VALUE_INVALID;
	if (BN_cmp(t[0], b[RSA_N]) != 0 || BN_cmp(t[1], b[RSA_DP]) != 0 || BN_cmp(t[2], b[RSA_DQ]) != 0 ||
	    !BN_is_one(t[3]) || !BN_is_one(t[4]) || !BN_is_one(t[5]))
		goto out;
	rv = CKR_OK;
out:
	if (ctx) {
		BN_CTX_end(ctx);
		BN_CTX_free(ctx);
	}
	return rv;
}

static CK_RV rsa_check(CK_OBJECT_CLASS cls, struct attrs *a)
{
	CK_RV rv;
	bool priv = cls == CKO_PRIVATE_KEY;
	struct rsa_bns r;
	EVP_PKEY *pub = NULL;

	rv = rsa_bns_get(a, priv, &r);
	if (rv != CKR_OK)
		goto out;
	rv = CKR_ATTRIBUTE_VALUE_INVALID;
	if (!BN_is_odd(r.bn[RSA_N]) || !BN_is_odd(r.bn[RSA_E]) || BN_is_one(r.bn[RSA_E]))
		goto out;
	if (priv && BN_cmp(r.bn[RSA_D], r.bn[RSA_N]) >= 0)
		goto out;
	if (priv && r.bn[RSA_P]) {
		rv = rsa_check_crt(&r);
		if (rv != CKR_OK)
			goto out;
	}
	rv = rsa_pkey(&r, false, &pub);
	if (rv != CKR_OK) {
		rv = rv == CKR_HOST_MEMORY ? rv : CKR_ATTRIBUTE_VALUE_INVALID;
		goto out;
	}
	if (!priv) {
		rv = attrs_set_ulong(a, CKA_MODULUS_BITS, (CK_ULONG)BN_num_bits(r.bn[RSA_N]));
		if (rv != CKR_OK)
			goto out;
	}
	rv = set_spki(a, pub);
out:
	EVP_PKEY_free(pub);
	rsa_bns_clear(&r);
	return rv;
}

/* Q = d*G, after checking 1 <= d < n: the public half of an EC private
 * key.  EC_GROUP and EC_POINT are not deprecated in OpenSSL 3 (only EC_KEY
 * is).  CKR_ATTRIBUTE_VALUE_INVALID for a scalar out of range. */
static CK_RV ec_public_from_scalar(const struct curve *c, const BIGNUM *d, CK_BYTE *pt)
{
	CK_RV rv = CKR_HOST_MEMORY;
	EC_GROUP *g = EC_GROUP_new_by_curve_name(c->nid);
	EC_POINT *q = NULL;
	BN_CTX *ctx = BN_CTX_secure_new();

	if (!g || !ctx || !(q = EC_POINT_new(g)))
		goto out;
	rv = CKR_ATTRIBUTE_VALUE_INVALID;
	if (BN_is_zero(d) || BN_cmp(d, EC_GROUP_get0_order(g)) >= 0)
		goto out;
	if (!EC_POINT_mul(g, q, d, NULL, NULL, ctx) ||
	    EC_POINT_point2oct(g, q, POINT_CONVERSION_UNCOMPRESSED, pt, curve_point_len(c), ctx) !=
		curve_point_len(c)) {
		rv = ossl_fail("EC_POINT_mul");
		goto out;
	}
	rv = CKR_OK;
out:
	EC_POINT_free(q);
	EC_GROUP_free(g);
	BN_CTX_free(ctx);
	return rv;
}

/* An EC or EdDSA public key: the point must decode and lie on the curve
 * (OpenSSL checks that while importing, and EVP_PKEY_public_check adds the
 * order check; for EdDSA, OpenSSL 3.0 checks nothing, and a bad point simply
 * never verifies). */
static CK_RV ecc_check_public(const struct curve *c, struct attrs *a)
{
	CK_RV rv;
	const CK_BYTE *pt;
	bool raw;
	EVP_PKEY *pkey = NULL;
	EVP_PKEY_CTX *ctx = NULL;

	rv = ec_point_from_attr(c, attrs_get(a, CKA_EC_POINT), &pt, &raw);
	if (rv != CKR_OK)
		goto out;
	rv = c->kt == CKK_EC ? ec_pkey(c, pt, NULL, &pkey) : ed_pkey(c, pt, false, &pkey);
	if (rv != CKR_OK) {
		ERR_clear_error();
		rv = rv == CKR_HOST_MEMORY ? rv : CKR_ATTRIBUTE_VALUE_INVALID;
		goto out;
	}
	if (c->kt == CKK_EC) {
		rv = CKR_HOST_MEMORY;
		ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
		if (!ctx)
			goto out;
		rv = CKR_ATTRIBUTE_VALUE_INVALID;
		if (EVP_PKEY_public_check(ctx) != 1) {
			ERR_clear_error();
			goto out;
		}
	}
	/* Store the standard form, so every reader of CKA_EC_POINT gets DER
	 * whatever the creator sent. */
	if (raw) {
		/* pt points into the old value: copied before that is freed */
		rv = attr_set_octet_string(a, CKA_EC_POINT, pt, curve_point_len(c));
		if (rv != CKR_OK)
			goto out;
	}
	rv = set_spki(a, pkey);
out:
	EVP_PKEY_CTX_free(ctx);
	EVP_PKEY_free(pkey);
	return rv;
}

static CK_RV ecc_check_private(const struct curve *c, struct attrs *a)
{
	CK_RV rv = CKR_TEMPLATE_INCOMPLETE;
	const CK_ATTRIBUTE *v = attrs_get(a, CKA_VALUE);
	const CK_BYTE *p;
	CK_ULONG len;
	BIGNUM *d = NULL;
	CK_BYTE pt[EC_POINT_MAX];
	EVP_PKEY *pkey = NULL;

	if (!v)
		goto out;
	p = v->pValue;
	len = v->ulValueLen;
	rv = CKR_ATTRIBUTE_VALUE_INVALID;
	if (c->kt == CKK_EC_EDWARDS) {
		if (len != c->len)
			goto out;
		rv = ed_pkey(c, p, true, &pkey);
		if (rv != CKR_OK) {
			rv = rv == CKR_HOST_MEMORY ? rv : CKR_ATTRIBUTE_VALUE_INVALID;
			goto out;
		}
	} else {
		be_trim(&p, &len);
		if (len == 0 || len > c->len)
			goto out;
		rv = CKR_HOST_MEMORY;
		d = attr_bn(a, CKA_VALUE, true, c->len);
		if (!d)
			goto out;
		rv = ec_public_from_scalar(c, d, pt);
		if (rv != CKR_OK)
			goto out;
		rv = ec_pkey(c, pt, NULL, &pkey);
		if (rv != CKR_OK)
			goto out;
	}
	rv = set_spki(a, pkey);
out:
	EVP_PKEY_free(pkey);
	BN_clear_free(d);
	return rv;
}

static CK_RV ecc_check(CK_OBJECT_CLASS cls, CK_KEY_TYPE kt, struct attrs *a)
{
	CK_RV rv;
	const struct curve *c;

	rv = curve_from_attr(attrs_get(a, CKA_EC_PARAMS), kt, &c);
	if (rv == CKR_OK)
		rv = cls == CKO_PUBLIC_KEY ? ecc_check_public(c, a) : ecc_check_private(c, a);
	return rv;
}

static CK_RV secret_check(CK_KEY_TYPE kt, struct attrs *a)
{
	CK_RV rv = CKR_TEMPLATE_INCOMPLETE;
	const CK_ATTRIBUTE *v = attrs_get(a, CKA_VALUE);
	CK_ULONG want;

	if (!v)
		goto out;
	rv = CKR_ATTRIBUTE_VALUE_INVALID;
	if (kt == CKK_AES) {
		/* Not an AES key at all, rather than one of a size we lack. */
		if (v->ulValueLen != 16 && v->ulValueLen != 24 && v->ulValueLen != 32)
			goto out;
	} else {
		if (v->ulValueLen == 0)
			goto out;
		rv = CKR_KEY_SIZE_RANGE;
		if (v->ulValueLen > GENERIC_MAX_BYTES)
			goto out;
	}
	/* CKA_VALUE_LEN follows from the value; a template that says
	 * otherwise contradicts itself. */
	rv = CKR_TEMPLATE_INCONSISTENT;
	if (attrs_has(a, CKA_VALUE_LEN) &&
	    (!attrs_get_ulong(a, CKA_VALUE_LEN, &want) || want != v->ulValueLen))
		goto out;
	rv = attrs_set_ulong(a, CKA_VALUE_LEN, v->ulValueLen);
out:
	return rv;
}

CK_RV crypto_check_key(CK_OBJECT_CLASS cls, CK_KEY_TYPE kt, struct attrs *a)
{
	CK_RV rv = CKR_TEMPLATE_INCONSISTENT;

	switch (kt) {
	case CKK_RSA:
		if (cls != CKO_PUBLIC_KEY && cls != CKO_PRIVATE_KEY)
			goto out;
		rv = rsa_check(cls, a);
		break;
	case CKK_EC:
	case CKK_EC_EDWARDS:
		if (cls != CKO_PUBLIC_KEY && cls != CKO_PRIVATE_KEY)
			goto out;
		rv = ecc_check(cls, kt, a);
		break;
	case CKK_AES:
	case CKK_GENERIC_SECRET:
		if (cls != CKO_SECRET_KEY)
			goto out;
		rv = secret_check(kt, a);
		break;
	default:
		rv = CKR_ATTRIBUTE_VALUE_INVALID; /* a CKA_KEY_TYPE we do not serve */
		break;
	}
out:
	if (rv != CKR_OK)
		kt_debug(KT_DBG_CRYPTO, "key check (class %lu, type %lu): %s", cls, kt, kt_rv_name(rv));
	return rv;
}

/* ---------------------------------------------------------------------- */
/* Loading */

CK_RV crypto_load_pkey(CK_OBJECT_CLASS cls, const struct attrs *a, EVP_PKEY **out)
{
	CK_RV rv = CKR_KEY_TYPE_INCONSISTENT;
	CK_KEY_TYPE kt;
	bool priv = cls == CKO_PRIVATE_KEY;
	const struct curve *c;
	struct rsa_bns r;
	BIGNUM *d = NULL;

	memset(&r, 0, sizeof(r));
	if (!out || (cls != CKO_PUBLIC_KEY && cls != CKO_PRIVATE_KEY) || !key_type_of(a, &kt))
		goto out;
	switch (kt) {
	case CKK_RSA:
		rv = rsa_bns_get(a, priv, &r);
		if (rv == CKR_OK)
			rv = rsa_pkey(&r, priv, out);
		break;
	case CKK_EC:
	case CKK_EC_EDWARDS:
		rv = curve_from_attr(attrs_get(a, CKA_EC_PARAMS), kt, &c);
		if (rv != CKR_OK)
			break;
		if (!priv) {
			const CK_BYTE *pt;
			bool raw;
			rv = ec_point_from_attr(c, attrs_get(a, CKA_EC_POINT), &pt, &raw);
			if (rv == CKR_OK)
				rv = kt == CKK_EC ? ec_pkey(c, pt, NULL, out) : ed_pkey(c, pt, false, out);
		} else if (kt == CKK_EC) {
			/* With its public point, so the private key can verify
			 * and compare like any other; one point multiplication
			 * per load is cheap because the module keeps the loaded
			 * key with the object. */
			CK_BYTE pt[EC_POINT_MAX];
			rv = CKR_FUNCTION_FAILED;
			d = attr_bn(a, CKA_VALUE, true, c->len);
			if (d)
				rv = ec_public_from_scalar(c, d, pt);
			if (rv == CKR_OK)
				rv = ec_pkey(c, pt, d, out);
		} else {
			const CK_ATTRIBUTE *v = attrs_get(a, CKA_VALUE);
			rv = CKR_FUNCTION_FAILED;
			if (v && v->ulValueLen == c->len)
				rv = ed_pkey(c, v->pValue, true, out);
		}
		break;
	default:
		goto out;
	}
	/* The material of a stored object was checked when it was made; if it
	 * does not load now, the object is damaged. */
	if (rv != CKR_OK && rv != CKR_HOST_MEMORY)
		rv = CKR_FUNCTION_FAILED;
out:
	BN_clear_free(d);
	rsa_bns_clear(&r);
	return rv;
}

CK_RV crypto_set_public_key_info(const struct attrs *pub, struct attrs *dst)
{
	EVP_PKEY *pkey = NULL;
	CK_RV rv = crypto_load_pkey(CKO_PUBLIC_KEY, pub, &pkey);
	if (rv == CKR_OK)
		rv = set_spki(dst, pkey);
	EVP_PKEY_free(pkey);
	return rv;
}

CK_ULONG crypto_key_bits(CK_OBJECT_CLASS cls, const struct attrs *a)
{
	CK_KEY_TYPE kt;
	CK_ULONG v = 0;
	const CK_ATTRIBUTE *at;
	const struct curve *c;

	if (!key_type_of(a, &kt))
		return 0;
	switch (kt) {
	case CKK_RSA:
		at = attrs_get(a, CKA_MODULUS);
		if (at) {
			const CK_BYTE *p = at->pValue;
			CK_ULONG len = at->ulValueLen;
			be_trim(&p, &len);
			return be_bits(p, len);
		}
		return attrs_get_ulong(a, CKA_MODULUS_BITS, &v) ? v : 0;
	case CKK_EC:
	case CKK_EC_EDWARDS:
		return curve_from_attr(attrs_get(a, CKA_EC_PARAMS), kt, &c) == CKR_OK ? c->bits : 0;
	case CKK_AES:
	case CKK_GENERIC_SECRET:
		if (cls != CKO_SECRET_KEY)
			return 0;
		at = attrs_get(a, CKA_VALUE);
		if (at)
			return at->ulValueLen * 8;
		return attrs_get_ulong(a, CKA_VALUE_LEN, &v) && v <= ULONG_MAX / 8 ? v * 8 : 0;
	default:
		return 0;
	}
}

/* ---------------------------------------------------------------------- */
/* Key generation */

/* Random bytes from OpenSSL's public DRBG, or its private one for values
 * that become keys, so output an application sees never shares a generator
 * with key material. */
static CK_RV rand_fill(CK_BYTE *out, CK_ULONG len, bool priv)
{
	while (len > 0) {
		int n = len > INT_MAX ? INT_MAX : (int)len;
		if ((priv ? RAND_priv_bytes(out, n) : RAND_bytes(out, n)) != 1)
			return ossl_fail("RAND_bytes");
		out += n;
		len -= (CK_ULONG)n;
	}
	return CKR_OK;
}

/* CKA_KEY_TYPE, when the template names one, must be what the mechanism
 * makes. */
static CK_RV check_key_type(const struct attrs *a, CK_KEY_TYPE kt)
{
	CK_KEY_TYPE have;

	if (!attrs_has(a, CKA_KEY_TYPE))
		return CKR_OK;
	return attrs_get_ulong(a, CKA_KEY_TYPE, &have) && have == kt ? CKR_OK : CKR_TEMPLATE_INCONSISTENT;
}

/* Filled in only once the key exists, so a failed generation leaves the
 * template as the caller gave it. */
static CK_RV set_key_type(struct attrs *a, CK_KEY_TYPE kt)
{
	return attrs_has(a, CKA_KEY_TYPE) ? CKR_OK : attrs_set_ulong(a, CKA_KEY_TYPE, kt);
}

/* An RSA key pair's size and public exponent from the public template. */
static CK_RV rsa_gen_params(const struct attrs *pub, CK_ULONG *bits, BIGNUM **e)
{
	*e = NULL;
	if (!attrs_has(pub, CKA_MODULUS_BITS))
		return CKR_TEMPLATE_INCOMPLETE;
	if (!attrs_get_ulong(pub, CKA_MODULUS_BITS, bits))
		return CKR_ATTRIBUTE_VALUE_INVALID;
	if (*bits < RSA_GEN_MIN_BITS || *bits > RSA_GEN_MAX_BITS)
		return CKR_KEY_SIZE_RANGE;
	if (attrs_has(pub, CKA_PUBLIC_EXPONENT)) {
		*e = attr_bn(pub, CKA_PUBLIC_EXPONENT, false, RSA_MAX_E_BYTES);
		if (!*e || !BN_is_odd(*e) || BN_is_one(*e)) {
			BN_free(*e);
			*e = NULL;
			return CKR_ATTRIBUTE_VALUE_INVALID;
		}
		return CKR_OK;
	}
	*e = BN_new();
	if (!*e || !BN_set_word(*e, RSA_DEFAULT_E)) {
		BN_free(*e);
		*e = NULL;
		return CKR_HOST_MEMORY;
	}
	return CKR_OK;
}

static CK_RV rsa_generate(struct attrs *pub, struct attrs *priv)
{
	CK_RV rv;
	CK_ULONG bits;
	BIGNUM *e = NULL;
	BIGNUM *bn[RSA_NPARTS] = {NULL};
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY *pkey = NULL;

	rv = rsa_gen_params(pub, &bits, &e);
	if (rv != CKR_OK)
		goto out;
	rv = CKR_HOST_MEMORY;
	ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
	if (!ctx)
		goto out;
	if (EVP_PKEY_keygen_init(ctx) <= 0 || EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, (int)bits) <= 0 ||
	    EVP_PKEY_CTX_set1_rsa_keygen_pubexp(ctx, e) <= 0 || EVP_PKEY_generate(ctx, &pkey) <= 0) {
		rv = ossl_fail("RSA key generation");
		goto out;
	}
	for (int i = 0; i < RSA_NPARTS; i++) {
		if (!EVP_PKEY_get_bn_param(pkey, rsa_parts[i].param, &bn[i])) {
			rv = ossl_fail("EVP_PKEY_get_bn_param");
			goto out;
		}
	}
	for (int i = 0; i < RSA_NPARTS; i++) {
		if (i <= RSA_E) {
			rv = attr_set_bn(pub, rsa_parts[i].type, bn[i], false);
			if (rv != CKR_OK)
				goto out;
		}
		rv = attr_set_bn(priv, rsa_parts[i].type, bn[i], i > RSA_E);
		if (rv != CKR_OK)
			goto out;
	}
	rv = set_spki(pub, pkey);
	if (rv == CKR_OK)
		rv = set_spki(priv, pkey);
out:
	for (int i = 0; i < RSA_NPARTS; i++)
		BN_clear_free(bn[i]);
	BN_free(e);
	EVP_PKEY_free(pkey);
	EVP_PKEY_CTX_free(ctx);
	return rv;
}

static CK_RV ecc_generate(const struct curve *c, struct attrs *pub, struct attrs *priv)
{
	CK_RV rv = CKR_HOST_MEMORY;
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY *pkey = NULL;
	BIGNUM *d = NULL;
	CK_BYTE pt[EC_POINT_MAX];
	size_t pt_len = curve_point_len(c), got;
	CK_BYTE *sk = NULL;
	size_t sk_len = c->len;

	ctx = EVP_PKEY_CTX_new_from_name(NULL, c->kt == CKK_EC ? "EC" : c->name, NULL);
	if (!ctx)
		goto out;
	if (EVP_PKEY_keygen_init(ctx) <= 0 ||
	    (c->kt == CKK_EC && EVP_PKEY_CTX_set_group_name(ctx, c->name) <= 0) ||
	    EVP_PKEY_generate(ctx, &pkey) <= 0) {
		rv = ossl_fail("EC key generation");
		goto out;
	}
	rv = CKR_HOST_MEMORY;
	sk = kt_alloc_secret(sk_len);
	if (!sk)
		goto out;
	if (c->kt == CKK_EC) {
		/* The default point format of a generated key is uncompressed. */
		if (!EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof(pt), &got) ||
		    got != pt_len || pt[0] != 0x04 ||
		    !EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_PRIV_KEY, &d) ||
		    BN_bn2binpad(d, sk, (int)sk_len) < 0) {
			rv = ossl_fail("EC key export");
			goto out;
		}
	} else {
		got = pt_len;
		if (!EVP_PKEY_get_raw_public_key(pkey, pt, &got) || got != pt_len ||
		    !EVP_PKEY_get_raw_private_key(pkey, sk, &sk_len) || sk_len != c->len) {
			rv = ossl_fail("EdDSA key export");
			goto out;
		}
	}
	rv = attr_set_octet_string(pub, CKA_EC_POINT, pt, pt_len);
	if (rv != CKR_OK)
		goto out;
	rv = attrs_take(priv, CKA_VALUE, sk, c->len);
	sk = NULL; /* owned (or already freed) by priv */
	if (rv != CKR_OK)
		goto out;
	rv = set_spki(pub, pkey);
	if (rv == CKR_OK)
		rv = set_spki(priv, pkey);
out:
	kt_free_secret(sk, c->len);
	BN_clear_free(d);
	EVP_PKEY_free(pkey);
	EVP_PKEY_CTX_free(ctx);
	return rv;
}

CK_RV crypto_generate_key_pair(const CK_MECHANISM *m, struct attrs *pub, struct attrs *priv)
{
	CK_RV rv;
	const struct mech_info *mi;
	const struct curve *c;
	const CK_ATTRIBUTE *params, *priv_params;

	rv = mech_lookup(m, MECH_GENERATE_PAIR, &mi);
	if (rv != CKR_OK)
		goto out;
	rv = check_key_type(pub, mi->key_type);
	if (rv == CKR_OK)
		rv = check_key_type(priv, mi->key_type);
	if (rv != CKR_OK)
		goto out;
	if (mi->key_type == CKK_RSA) {
		rv = rsa_generate(pub, priv);
	} else {
		params = attrs_get(pub, CKA_EC_PARAMS);
		rv = curve_from_attr(params, mi->key_type, &c);
		if (rv != CKR_OK)
			goto out;
		/* The private template may repeat the parameters, but not
		 * differ from them. */
		priv_params = attrs_get(priv, CKA_EC_PARAMS);
		rv = CKR_TEMPLATE_INCONSISTENT;
		if (priv_params && (priv_params->ulValueLen != params->ulValueLen ||
				    memcmp(priv_params->pValue, params->pValue, params->ulValueLen) != 0))
			goto out;
		rv = ecc_generate(c, pub, priv);
		if (rv != CKR_OK)
			goto out;
		/* Adding to pub moved its attributes: look the parameters up
		 * again rather than trust the old pointer. */
		params = attrs_get(pub, CKA_EC_PARAMS);
		rv = attrs_set(priv, CKA_EC_PARAMS, params->pValue, params->ulValueLen);
	}
	if (rv == CKR_OK)
		rv = set_key_type(pub, mi->key_type);
	if (rv == CKR_OK)
		rv = set_key_type(priv, mi->key_type);
out:
	if (rv != CKR_OK)
		kt_debug(KT_DBG_CRYPTO, "key pair generation (%s): %s", m ? kt_mech_name(m->mechanism) : "-",
			 kt_rv_name(rv));
	return rv;
}

/* A secret key's length from its template. */
static CK_RV secret_gen_len(const struct mech_info *mi, const struct attrs *key, CK_ULONG *len)
{
	if (!attrs_has(key, CKA_VALUE_LEN))
		return CKR_TEMPLATE_INCOMPLETE;
	if (!attrs_get_ulong(key, CKA_VALUE_LEN, len))
		return CKR_ATTRIBUTE_VALUE_INVALID;
	if (mi->key_type == CKK_AES ? (*len != 16 && *len != 24 && *len != 32)
				    : (*len < 1 || *len > GENERIC_MAX_BYTES))
		return CKR_KEY_SIZE_RANGE;
	return CKR_OK;
}

CK_RV crypto_check_generate(const CK_MECHANISM *m, const struct attrs *pub, const struct attrs *key)
{
	const struct mech_info *mi;
	CK_RV rv = mech_lookup(m, pub ? MECH_GENERATE_PAIR : MECH_GENERATE, &mi);
	if (rv == CKR_OK && pub)
		rv = check_key_type(pub, mi->key_type);
	if (rv == CKR_OK)
		rv = check_key_type(key, mi->key_type);
	if (rv != CKR_OK)
		return rv;
	if (!pub) {
		CK_ULONG len;
		return secret_gen_len(mi, key, &len);
	}
	if (mi->key_type == CKK_RSA) {
		CK_ULONG bits;
		BIGNUM *e = NULL;
		rv = rsa_gen_params(pub, &bits, &e);
		BN_free(e);
		return rv;
	}
	const struct curve *c;
	const CK_ATTRIBUTE *params = attrs_get(pub, CKA_EC_PARAMS), *priv_params = attrs_get(key, CKA_EC_PARAMS);
	rv = curve_from_attr(params, mi->key_type, &c);
	if (rv == CKR_OK && priv_params && !attrs_match(pub, priv_params))
		rv = CKR_TEMPLATE_INCONSISTENT;
	return rv;
}

CK_RV crypto_generate_key(const CK_MECHANISM *m, struct attrs *key)
{
	CK_RV rv;
	const struct mech_info *mi;
	CK_ULONG len;
	CK_BYTE *v = NULL;

	rv = mech_lookup(m, MECH_GENERATE, &mi);
	if (rv != CKR_OK)
		goto out;
	rv = check_key_type(key, mi->key_type);
	if (rv != CKR_OK)
		goto out;
	rv = secret_gen_len(mi, key, &len);
	if (rv != CKR_OK)
		goto out;
	rv = CKR_HOST_MEMORY;
	v = kt_alloc_secret(len);
	if (!v)
		goto out;
	rv = rand_fill(v, len, true);
	if (rv != CKR_OK)
		goto out;
	rv = attrs_take(key, CKA_VALUE, v, len);
	v = NULL;
	if (rv == CKR_OK)
		rv = set_key_type(key, mi->key_type);
out:
	kt_free_secret(v, v ? len : 0);
	return rv;
}

/* ---------------------------------------------------------------------- */
/* Sign, verify, digest */

enum op_path {
	PATH_DIGEST,	/* EVP_Digest*: streams */
	PATH_HASH_SIGN, /* EVP_DigestSign/Verify with a digest: streams */
	PATH_MSG_SIGN,	/* EVP_DigestSign/Verify of the whole message (EdDSA): buffers */
	PATH_RAW_SIGN,	/* EVP_PKEY_sign/verify of the caller's hash: buffers */
	PATH_REMOTE_STREAM, /* a device signs, the data streams to it */
	PATH_REMOTE_BUF,    /* a device signs the whole input at once: buffers */
	PATH_REMOTE_HASH,   /* we hash, a device signs the hash: streams */
};

enum op_kind { OP_SIGN, OP_VERIFY, OP_DIGEST };

struct crypto_op {
	const struct mech_info *mi;
	enum op_kind kind;
	enum op_path path;
	EVP_MD_CTX *mctx;   /* PATH_DIGEST, PATH_HASH_SIGN, PATH_MSG_SIGN */
	EVP_PKEY_CTX *pctx; /* PATH_RAW_SIGN (owned) */
	size_t out_len;	    /* exact signature or digest length */
	size_t ec_len;	    /* ECDSA: bytes of r and of s; 0 otherwise */
	size_t in_max;	    /* buffering paths: most input accepted */
	size_t in_exact;    /* raw PSS: the input is a hash of exactly this size */
	bool started;	    /* update has been called */
	bool done;	    /* the signature, digest or verdict was produced */
	CK_BYTE *buf;	    /* buffered input, wiped on free */
	size_t buf_len;
	size_t buf_cap;
	/* A SHA-256 hash-and-sign signature whose context is made only when
	 * needed: a one-shot signature of a digest the caller already has
	 * (crypto_op_sign_sha256) needs none. */
	EVP_PKEY *lazy_key;
	const EVP_MD *lazy_md;
	struct crypto_remote remote; /* PATH_REMOTE_*: the device's operation */
};

static const CK_BYTE empty_input[1];

static bool is_pss(CK_MECHANISM_TYPE type)
{
	switch (type) {
	case CKM_RSA_PKCS_PSS:
	case CKM_SHA224_RSA_PKCS_PSS:
	case CKM_SHA256_RSA_PKCS_PSS:
	case CKM_SHA384_RSA_PKCS_PSS:
	case CKM_SHA512_RSA_PKCS_PSS:
		return true;
	default:
		return false;
	}
}

static bool key_fits(const struct mech_info *mi, EVP_PKEY *key)
{
	switch (mi->key_type) {
	case CKK_RSA:
		return EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA;
	case CKK_EC:
		return EVP_PKEY_get_base_id(key) == EVP_PKEY_EC;
	case CKK_EC_EDWARDS:
		return EVP_PKEY_get_base_id(key) == EVP_PKEY_ED25519 ||
		       EVP_PKEY_get_base_id(key) == EVP_PKEY_ED448;
	default:
		return false;
	}
}

/* PSS padding on a context (sign or verify, raw or hash-and-sign).  The
 * salt must leave room in the encoded message: emLen >= hLen + sLen + 2
 * (RFC 8017 9.1.1), which only the key can tell. */
static CK_RV pss_setup(EVP_PKEY_CTX *pctx, const CK_MECHANISM *m, EVP_PKEY *key, bool raw, size_t *hash_len)
{
	CK_RV rv = CKR_MECHANISM_PARAM_INVALID;
	const CK_RSA_PKCS_PSS_PARAMS *p = m->pParameter;
	const EVP_MD *md = md_of_mech(p->hashAlg), *mgf = md_of_mgf(p->mgf);
	size_t em_len = ((size_t)EVP_PKEY_get_bits(key) - 1 + 7) / 8;
	size_t h_len;

	if (!md || !mgf)
		goto out;
	h_len = (size_t)EVP_MD_get_size(md);
	if (p->sLen > em_len || h_len + 2 > em_len - p->sLen)
		goto out;
	if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
	    (raw && EVP_PKEY_CTX_set_signature_md(pctx, md) <= 0) ||
	    EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, mgf) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, (int)p->sLen) <= 0) {
		rv = ossl_fail("PSS setup");
		goto out;
	}
	*hash_len = h_len;
	rv = CKR_OK;
out:
	return rv;
}

/* Mechanisms whose signature of a SHA-256 digest needs nothing but the
 * digest: ECDSA, and PKCS#1 v1.5 over the digest's DigestInfo. */
static bool prehash_capable(const struct mech_info *mi)
{
	return mi->type == CKM_ECDSA_SHA256 || mi->type == CKM_SHA256_RSA_PKCS;
}

/* The deferred hash-and-sign context, made now that data streams in. */
static CK_RV op_materialize(struct crypto_op *op)
{
	if (!op->lazy_key || op->mctx)
		return CKR_OK;
	op->mctx = EVP_MD_CTX_new();
	if (!op->mctx)
		return CKR_HOST_MEMORY;
	EVP_MD_CTX_set_flags(op->mctx, EVP_MD_CTX_FLAG_FINALISE);
	if (EVP_DigestSignInit(op->mctx, NULL, op->lazy_md, NULL, op->lazy_key) <= 0)
		return ossl_fail("EVP_DigestSignInit");
	return CKR_OK;
}

CK_RV crypto_sign_init(const struct mech_info *mi, const CK_MECHANISM *m, EVP_PKEY *key, bool sign,
		       struct crypto_op **out)
{
	CK_RV rv = CKR_ARGUMENTS_BAD;
	struct crypto_op *op = NULL;
	EVP_PKEY_CTX *pctx = NULL; /* borrowed from mctx on the hash path */
	size_t h_len = 0;
	int r;

	if (!mi || !m || !key || !out || m->mechanism != mi->type)
		goto out;
	rv = CKR_MECHANISM_INVALID;
	if (!(mi->ops & (sign ? MECH_SIGN : MECH_VERIFY)))
		goto out;
	rv = mi->check_param(m);
	if (rv != CKR_OK)
		goto out;
	rv = CKR_KEY_TYPE_INCONSISTENT;
	if (!key_fits(mi, key))
		goto out;
	rv = CKR_HOST_MEMORY;
	op = calloc(1, sizeof(*op));
	if (!op)
		goto out;
	op->mi = mi;
	op->kind = sign ? OP_SIGN : OP_VERIFY;
	op->in_max = OP_MAX_INPUT;
	if (mi->key_type == CKK_EC) {
		op->ec_len = ((size_t)EVP_PKEY_get_bits(key) + 7) / 8;
		op->out_len = 2 * op->ec_len;
		/* Our r||s <-> DER buffers are sized for P-521 at most, and
		 * crypto_load_pkey makes nothing bigger. */
		rv = CKR_KEY_SIZE_RANGE;
		if (op->ec_len == 0 || op->ec_len > 66)
			goto out;
	} else {
		/* RSA: modulus bytes; EdDSA: 64 or 114 */
		op->out_len = (size_t)EVP_PKEY_get_size(key);
	}

	if (mi->digest) {
		const EVP_MD *md = md_get(mi->digest);
		rv = CKR_MECHANISM_INVALID;
		if (!md)
			goto out;
		op->path = PATH_HASH_SIGN;
		if (sign && prehash_capable(mi)) {
			rv = CKR_HOST_MEMORY;
			if (!EVP_PKEY_up_ref(key))
				goto out;
			op->lazy_key = key;
			op->lazy_md = md;
			*out = op;
			return CKR_OK;
		}
		rv = CKR_HOST_MEMORY;
		op->mctx = EVP_MD_CTX_new();
		if (!op->mctx)
			goto out;
		r = sign ? EVP_DigestSignInit(op->mctx, &pctx, md, NULL, key)
			 : EVP_DigestVerifyInit(op->mctx, &pctx, md, NULL, key);
		if (r <= 0) {
			rv = ossl_fail("EVP_DigestSignInit");
			goto out;
		}
	} else if (mi->key_type == CKK_EC_EDWARDS) {
		op->path = PATH_MSG_SIGN;
		rv = CKR_HOST_MEMORY;
		op->mctx = EVP_MD_CTX_new();
		if (!op->mctx)
			goto out;
		r = sign ? EVP_DigestSignInit(op->mctx, NULL, NULL, NULL, key)
			 : EVP_DigestVerifyInit(op->mctx, NULL, NULL, NULL, key);
		if (r <= 0) {
			rv = ossl_fail("EVP_DigestSignInit");
			goto out;
		}
	} else {
		op->path = PATH_RAW_SIGN;
		rv = CKR_HOST_MEMORY;
		op->pctx = pctx = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
		if (!pctx)
			goto out;
		r = sign ? EVP_PKEY_sign_init(pctx) : EVP_PKEY_verify_init(pctx);
		if (r <= 0) {
			rv = ossl_fail("EVP_PKEY_sign_init");
			goto out;
		}
		/* Raw PKCS#1 v1.5 pads what it is given: at most k - 11 bytes. */
		if (mi->type == CKM_RSA_PKCS)
			op->in_max = op->out_len > 11 ? op->out_len - 11 : 0;
	}

	/* PKCS#1 v1.5 is OpenSSL's default padding for RSA keys (key_fits
	 * admits no RSA-PSS-only keys), so only PSS needs setting up: one
	 * provider round trip less per signature. */
	if (is_pss(mi->type)) {
		rv = pss_setup(pctx, m, key, op->path == PATH_RAW_SIGN, &h_len);
		if (rv != CKR_OK)
			goto out;
		if (op->path == PATH_RAW_SIGN)
			op->in_max = op->in_exact = h_len;
	}
	/* Without this flag EVP_DigestSignFinal signs a copy of the whole
	 * context, to allow more updates afterwards, which we never do. */
	if (op->mctx)
		EVP_MD_CTX_set_flags(op->mctx, EVP_MD_CTX_FLAG_FINALISE);
	*out = op;
	op = NULL;
	rv = CKR_OK;
out:
	crypto_op_free(op);
	return rv;
}

CK_RV crypto_digest_init(const struct mech_info *mi, struct crypto_op **out)
{
	CK_RV rv = CKR_ARGUMENTS_BAD;
	struct crypto_op *op = NULL;
	const EVP_MD *md;

	if (!mi || !out)
		goto out;
	rv = CKR_MECHANISM_INVALID;
	md = md_get(mi->digest);
	if (!(mi->ops & MECH_DIGEST) || !md)
		goto out;
	rv = CKR_HOST_MEMORY;
	op = calloc(1, sizeof(*op));
	if (!op || !(op->mctx = EVP_MD_CTX_new()))
		goto out;
	op->mi = mi;
	op->kind = OP_DIGEST;
	op->path = PATH_DIGEST;
	op->out_len = (size_t)EVP_MD_get_size(md);
	if (!EVP_DigestInit_ex2(op->mctx, md, NULL)) {
		rv = ossl_fail("EVP_DigestInit_ex2");
		goto out;
	}
	*out = op;
	op = NULL;
	rv = CKR_OK;
out:
	crypto_op_free(op);
	return rv;
}

CK_MECHANISM_TYPE crypto_sign_hash_counterpart(const struct mech_info *mi)
{
	if (!mi->digest || !md_get(mi->digest))
		return CKM_VENDOR_DEFINED;
	if (mi->key_type == CKK_EC)
		return CKM_ECDSA;
	if (mi->key_type == CKK_RSA)
		return is_pss(mi->type) ? CKM_RSA_PKCS_PSS : CKM_RSA_PKCS;
	return CKM_VENDOR_DEFINED;
}

/* What a device's signature with this key and mechanism looks like
 * (size, input limits), checked like the module's own keys' before the
 * device is asked anything. */
struct remote_shape {
	size_t out_len, in_max, in_exact;
};

static CK_RV remote_shape(const struct mech_info *mi, const CK_MECHANISM *m, CK_KEY_TYPE kt, CK_ULONG bits,
			  struct remote_shape *sh)
{
	if (!mi || !m || m->mechanism != mi->type)
		return CKR_ARGUMENTS_BAD;
	if (!(mi->ops & MECH_SIGN))
		return CKR_MECHANISM_INVALID;
	CK_RV rv = mi->check_param(m);
	if (rv != CKR_OK)
		return rv;
	if (kt != mi->key_type)
		return CKR_KEY_TYPE_INCONSISTENT;
	/* Without its size the key's signature cannot be announced. */
	if (!bits || bits > 16384)
		return CKR_KEY_SIZE_RANGE;
	memset(sh, 0, sizeof(*sh));
	sh->out_len = kt == CKK_RSA ? (bits + 7) / 8 : kt == CKK_EC ? 2 * ((bits + 7) / 8) : bits <= 255 ? 64 : 114;
	sh->in_max = OP_MAX_INPUT;
	if (mi->type == CKM_RSA_PKCS)
		sh->in_max = sh->out_len > 11 ? sh->out_len - 11 : 0;
	if (is_pss(mi->type)) {
		const CK_RSA_PKCS_PSS_PARAMS *p = m->pParameter;
		const EVP_MD *md = md_of_mech(p->hashAlg), *mgf = md_of_mgf(p->mgf);
		size_t em_len = (bits - 1 + 7) / 8, h_len;
		if (!md || !mgf)
			return CKR_MECHANISM_PARAM_INVALID;
		h_len = (size_t)EVP_MD_get_size(md);
		if (p->sLen > em_len || h_len + 2 > em_len - p->sLen)
			return CKR_MECHANISM_PARAM_INVALID;
		if (!mi->digest)
			sh->in_max = sh->in_exact = h_len;
	}
	return CKR_OK;
}

CK_RV crypto_check_remote(const struct mech_info *mi, const CK_MECHANISM *m, CK_KEY_TYPE kt, CK_ULONG bits)
{
	struct remote_shape sh;
	return remote_shape(mi, m, kt, bits, &sh);
}

CK_RV crypto_sign_init_remote(const struct mech_info *mi, const CK_MECHANISM *m, CK_KEY_TYPE kt, CK_ULONG bits,
			      const struct crypto_remote *remote, bool host_hash, struct crypto_op **out)
{
	struct remote_shape sh;
	CK_RV rv = remote && out ? remote_shape(mi, m, kt, bits, &sh) : CKR_ARGUMENTS_BAD;
	struct crypto_op *op = NULL;
	if (rv == CKR_OK) {
		op = calloc(1, sizeof(*op));
		rv = op ? CKR_OK : CKR_HOST_MEMORY;
	}
	if (rv != CKR_OK) {
		/* The device's operation is ours to end. */
		if (remote && remote->free)
			remote->free(remote->ctx);
		return rv;
	}
	op->mi = mi;
	op->kind = OP_SIGN;
	op->out_len = sh.out_len;
	op->in_max = sh.in_max;
	op->in_exact = sh.in_exact;
	/* Hash-and-sign streams to the device (or into our hash); the rest
	 * is one input. */
	op->path = !mi->digest ? PATH_REMOTE_BUF : host_hash ? PATH_REMOTE_HASH : PATH_REMOTE_STREAM;
	op->lazy_md = mi->digest ? md_get(mi->digest) : NULL;
	op->remote = *remote;
	*out = op;
	return CKR_OK;
}

bool crypto_op_remote(const struct crypto_op *op)
{
	return op && (op->path == PATH_REMOTE_STREAM || op->path == PATH_REMOTE_BUF || op->path == PATH_REMOTE_HASH);
}

CK_RV crypto_op_login(struct crypto_op *op, const CK_UTF8CHAR *pin, CK_ULONG len)
{
	if (!crypto_op_remote(op))
		return CKR_FUNCTION_NOT_SUPPORTED;
	return op->remote.login(op->remote.ctx, pin, len);
}

void crypto_op_free(struct crypto_op *op)
{
	if (!op)
		return;
	if (crypto_op_remote(op))
		op->remote.free(op->remote.ctx);
	EVP_MD_CTX_free(op->mctx);
	EVP_PKEY_CTX_free(op->pctx);
	EVP_PKEY_free(op->lazy_key);
	kt_free_secret(op->buf, op->buf_cap);
	free(op);
}

size_t crypto_op_out_len(const struct crypto_op *op)
{
	return op->out_len;
}

/* Append to the single-part buffer.  Growth copies into a fresh block and
 * wipes the old one, because realloc would leave the data behind. */
static CK_RV op_buffer(struct crypto_op *op, const CK_BYTE *data, size_t len)
{
	CK_RV rv = CKR_DATA_LEN_RANGE;
	size_t need, cap;
	CK_BYTE *nb;

	if (len > op->in_max - op->buf_len)
		goto out;
	need = op->buf_len + len;
	if (need > op->buf_cap) {
		cap = op->buf_cap ? op->buf_cap : 256;
		while (cap < need)
			cap = cap > op->in_max / 2 ? op->in_max : cap * 2;
		rv = CKR_HOST_MEMORY;
		nb = malloc(cap);
		if (!nb)
			goto out;
		if (op->buf_len)
			memcpy(nb, op->buf, op->buf_len);
		kt_free_secret(op->buf, op->buf_cap);
		op->buf = nb;
		op->buf_cap = cap;
	}
	if (len)
		memcpy(op->buf + op->buf_len, data, len);
	op->buf_len += len;
	rv = CKR_OK;
out:
	return rv;
}

CK_RV crypto_op_update(struct crypto_op *op, const CK_BYTE *data, CK_ULONG len)
{
	CK_RV rv = CKR_OPERATION_NOT_INITIALIZED;
	int r = 1;

	if (op->done)
		goto out;
	rv = CKR_ARGUMENTS_BAD;
	if (!data && len)
		goto out;
	if (!data)
		data = empty_input;
	rv = op_materialize(op);
	if (rv != CKR_OK)
		goto out;
	switch (op->path) {
	case PATH_DIGEST:
		r = EVP_DigestUpdate(op->mctx, data, len);
		break;
	case PATH_HASH_SIGN:
		r = op->kind == OP_SIGN ? EVP_DigestSignUpdate(op->mctx, data, len)
					: EVP_DigestVerifyUpdate(op->mctx, data, len);
		break;
	case PATH_MSG_SIGN:
	case PATH_RAW_SIGN:
	case PATH_REMOTE_BUF:
		rv = op_buffer(op, data, len);
		if (rv != CKR_OK)
			goto out;
		break;
	case PATH_REMOTE_HASH:
		if (!op->mctx) {
			rv = CKR_HOST_MEMORY;
			op->mctx = EVP_MD_CTX_new();
			if (!op->mctx)
				goto out;
			if (!EVP_DigestInit_ex2(op->mctx, op->lazy_md, NULL)) {
				rv = ossl_fail("EVP_DigestInit_ex2");
				goto out;
			}
		}
		r = EVP_DigestUpdate(op->mctx, data, len);
		break;
	case PATH_REMOTE_STREAM:
		rv = op->remote.update(op->remote.ctx, data, len);
		if (rv != CKR_OK) {
			/* The device ended its operation; so do we. */
			op->done = true;
			goto out;
		}
		break;
	}
	if (r <= 0) {
		rv = ossl_fail("update");
		goto out;
	}
	op->started = true;
	rv = CKR_OK;
out:
	return rv;
}

/* OpenSSL's DER ECDSA-Sig-Value to r||s, each left-padded to n bytes. */
static bool ecdsa_der_to_raw(const CK_BYTE *der, size_t der_len, CK_BYTE *out, size_t n)
{
	const CK_BYTE *seq, *v;
	size_t seq_len, v_len, used;
	CK_BYTE tag;

	if (!der_read(der, der_len, &tag, &seq, &seq_len) || tag != 0x30)
		return false;
	for (int i = 0; i < 2; i++) {
		if (!der_peek(seq, seq_len, &tag, &v, &v_len, &used) || tag != 0x02)
			return false;
		while (v_len > 0 && v[0] == 0) {
			v++;
			v_len--;
		}
		if (v_len > n)
			return false;
		memset(out + i * n, 0, n - v_len);
		memcpy(out + i * n + n - v_len, v, v_len);
		seq += used;
		seq_len -= used;
	}
	return seq_len == 0;
}

/* r||s (n bytes each) to DER for OpenSSL's verifier; out holds
 * ECDSA_DER_MAX bytes, n is at most 66. */
static size_t ecdsa_raw_to_der(const CK_BYTE *raw, size_t n, CK_BYTE *out)
{
	CK_BYTE ints[2][2 + 67];
	size_t ilen[2], hdr, total = 0;

	for (int i = 0; i < 2; i++) {
		const CK_BYTE *v = raw + i * n;
		size_t len = n, pos = 2;
		while (len > 1 && v[0] == 0) {
			v++;
			len--;
		}
		/* INTEGER is signed: a set top bit needs a zero byte first. */
		ints[i][0] = 0x02;
		ints[i][1] = (CK_BYTE)(len + (v[0] & 0x80 ? 1 : 0));
		if (v[0] & 0x80)
			ints[i][pos++] = 0;
		memcpy(&ints[i][pos], v, len);
		ilen[i] = pos + len;
		total += ilen[i];
	}
	hdr = der_put_header(out, 0x30, total);
	memcpy(out + hdr, ints[0], ilen[0]);
	memcpy(out + hdr + ilen[0], ints[1], ilen[1]);
	return hdr + total;
}

/* A device signs a hash we computed: as PKCS#1 v1.5 DigestInfo for the
 * RSA PKCS mechanisms, as it is for ECDSA and PSS. */
static CK_RV remote_sign_hash(struct crypto_op *op, const unsigned char *h, size_t hl, CK_BYTE *out)
{
	CK_BYTE in[CRYPTO_DIGEST_INFO_PREFIX + EVP_MAX_MD_SIZE];
	size_t n = 0, want = 0;
	const CK_BYTE *info = crypto_digest_info(op->mi->digest, &want);
	if (op->mi->key_type == CKK_RSA && !is_pss(op->mi->type)) {
		if (!info || want != hl)
			return CKR_MECHANISM_INVALID;
		memcpy(in, info, CRYPTO_DIGEST_INFO_PREFIX);
		n = CRYPTO_DIGEST_INFO_PREFIX;
	}
	memcpy(in + n, h, hl);
	n += hl;
	CK_ULONG sl = op->out_len;
	CK_RV rv = op->remote.final(op->remote.ctx, in, n, true, out, &sl);
	if (rv == CKR_OK && sl != op->out_len)
		rv = CKR_DEVICE_ERROR;
	kt_wipe(in, sizeof(in));
	return rv;
}

/* Length checks of the raw paths' input (the hash the caller computed). */
static CK_RV op_check_input(const struct crypto_op *op, size_t len)
{
	if (op->path != PATH_RAW_SIGN && op->path != PATH_MSG_SIGN && op->path != PATH_REMOTE_BUF)
		return CKR_OK;
	if (len > op->in_max || (op->in_exact && len != op->in_exact))
		return CKR_DATA_LEN_RANGE;
	return CKR_OK;
}

/*
 * Produce the signature or digest into out (op->out_len bytes).  data is
 * the whole input for a one-shot call, or NULL for "what update gave".
 */
static CK_RV op_produce(struct crypto_op *op, const CK_BYTE *data, size_t len, CK_BYTE *out)
{
	CK_RV rv;
	CK_BYTE der[ECDSA_DER_MAX];
	CK_BYTE *sig = op->ec_len ? der : out;
	size_t sig_len = op->ec_len ? sizeof(der) : op->out_len;
	unsigned int md_len;
	int r = 0;

	if (!data && op->path != PATH_DIGEST && op->path != PATH_HASH_SIGN && op->path != PATH_REMOTE_STREAM &&
	    op->path != PATH_REMOTE_HASH) {
		data = op->buf ? op->buf : empty_input;
		len = op->buf_len;
	}
	rv = op_check_input(op, len);
	if (rv == CKR_OK)
		rv = op_materialize(op);
	if (rv != CKR_OK)
		goto out;
	if (op->path == PATH_REMOTE_HASH) {
		unsigned char h[EVP_MAX_MD_SIZE];
		unsigned int hl = 0;
		r = data || !op->mctx ? EVP_Digest(data ? data : empty_input, data ? len : 0, h, &hl, op->lazy_md, NULL)
				      : EVP_DigestFinal_ex(op->mctx, h, &hl);
		rv = r ? remote_sign_hash(op, h, hl, out) : ossl_fail("digest");
		kt_wipe(h, sizeof(h));
		goto out;
	}
	if (op->path == PATH_REMOTE_STREAM || op->path == PATH_REMOTE_BUF) {
		CK_ULONG n = op->out_len;
		rv = op->remote.final(op->remote.ctx, data, len, data != NULL, out, &n);
		/* Every mechanism here has one signature length; a device
		 * that disagrees has not made the signature we announced. */
		if (rv == CKR_OK && n != op->out_len)
			rv = CKR_DEVICE_ERROR;
		goto out;
	}
	switch (op->path) {
	case PATH_DIGEST:
		r = (!data || EVP_DigestUpdate(op->mctx, data, len)) &&
		    EVP_DigestFinal_ex(op->mctx, out, &md_len);
		break;
	case PATH_HASH_SIGN:
		r = data ? EVP_DigestSign(op->mctx, sig, &sig_len, data, len)
			 : EVP_DigestSignFinal(op->mctx, sig, &sig_len);
		break;
	case PATH_MSG_SIGN:
		r = EVP_DigestSign(op->mctx, sig, &sig_len, data, len);
		break;
	case PATH_RAW_SIGN:
		r = EVP_PKEY_sign(op->pctx, sig, &sig_len, data, len);
		break;
	default:
		break;
	}
	if (r <= 0) {
		rv = ossl_fail("sign");
		goto out;
	}
	rv = CKR_FUNCTION_FAILED;
	if (op->ec_len) {
		if (!ecdsa_der_to_raw(der, sig_len, out, op->ec_len))
			goto out;
	} else if (op->path != PATH_DIGEST && sig_len != op->out_len) {
		goto out;
	}
	rv = CKR_OK;
out:
	return rv;
}

/* Shared front of final and oneshot.  *out_len is in/out as in C_Sign: the
 * room in out, then the length written.  A length query (*query set) or a
 * short buffer leaves the operation as it was. */
static CK_RV op_out_ready(const struct crypto_op *op, CK_BYTE *out, CK_ULONG *out_len, bool *query)
{
	CK_RV rv = CKR_ARGUMENTS_BAD;

	*query = false;
	if (!out_len)
		goto out;
	rv = CKR_OPERATION_NOT_INITIALIZED;
	if (op->kind == OP_VERIFY || op->done)
		goto out;
	rv = CKR_OK;
	if (!out || *out_len < op->out_len) {
		*query = !out;
		*out_len = op->out_len;
		rv = out ? CKR_BUFFER_TOO_SMALL : CKR_OK;
	}
out:
	return rv;
}

CK_RV crypto_op_final(struct crypto_op *op, CK_BYTE *out, CK_ULONG *out_len)
{
	CK_RV rv;
	bool query;

	rv = op_out_ready(op, out, out_len, &query);
	if (rv != CKR_OK || query)
		goto out;
	op->done = true;
	rv = op_produce(op, NULL, 0, out);
	if (rv == CKR_OK)
		*out_len = op->out_len;
out:
	return rv;
}

CK_RV crypto_op_oneshot(struct crypto_op *op, const CK_BYTE *data, CK_ULONG len, CK_BYTE *out,
			CK_ULONG *out_len)
{
	CK_RV rv;
	bool query;

	rv = op_out_ready(op, out, out_len, &query);
	if (rv != CKR_OK || query)
		goto out;
	rv = CKR_ARGUMENTS_BAD;
	if (!data && len)
		goto out;
	if (!data)
		data = empty_input;
	/* After updates, "everything at once" means the rest of it. */
	if (op->started) {
		rv = crypto_op_update(op, data, len);
		if (rv != CKR_OK)
			goto out;
		data = NULL;
		len = 0;
	}
	op->done = true;
	rv = op_produce(op, data, len, out);
	if (rv == CKR_OK)
		*out_len = op->out_len;
out:
	return rv;
}

/* DigestInfo prefixes (RFC 8017 9.2, note 1): PKCS#1 v1.5 signs one of
 * these followed by the hash. */
static const struct {
	const char *md;
	size_t hash_len;
	CK_BYTE prefix[CRYPTO_DIGEST_INFO_PREFIX];
} digest_infos[] = {
	{ "SHA224", 28, { 0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04, 0x05, 0x00, 0x04, 0x1c } },
	{ "SHA256", 32, { 0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20 } },
	{ "SHA384", 48, { 0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30 } },
	{ "SHA512", 64, { 0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40 } },
};

const CK_BYTE *crypto_digest_info(const char *md, size_t *hash_len)
{
	for (size_t i = 0; i < KT_ARRAY_SIZE(digest_infos); i++) {
		if (strcmp(digest_infos[i].md, md) == 0) {
			*hash_len = digest_infos[i].hash_len;
			return digest_infos[i].prefix;
		}
	}
	return NULL;
}

bool crypto_op_prehashable(const struct crypto_op *op)
{
	if (op->path == PATH_REMOTE_HASH)
		return prehash_capable(op->mi) && !op->mctx && !op->started && !op->done;
	return op->lazy_key && !op->mctx && !op->started && !op->done;
}

CK_RV crypto_op_sign_sha256(struct crypto_op *op, const unsigned char digest[32], CK_BYTE *out,
			    CK_ULONG *out_len)
{
	size_t hl;
	const CK_BYTE *info = crypto_digest_info("SHA256", &hl);
	CK_BYTE in[CRYPTO_DIGEST_INFO_PREFIX + 32], der[ECDSA_DER_MAX];
	const CK_BYTE *tbs = digest;
	size_t tbs_len = 32;
	CK_BYTE *sig = op->ec_len ? der : out;
	size_t sig_len = op->ec_len ? sizeof(der) : op->out_len;
	bool query;
	CK_RV rv = op_out_ready(op, out, out_len, &query);
	if (rv != CKR_OK || query)
		return rv;
	if (!crypto_op_prehashable(op))
		return CKR_OPERATION_NOT_INITIALIZED;
	op->done = true;
	if (op->path == PATH_REMOTE_HASH) {
		rv = remote_sign_hash(op, digest, 32, out);
		if (rv == CKR_OK)
			*out_len = op->out_len;
		return rv;
	}
	if (op->mi->type == CKM_SHA256_RSA_PKCS) {
		memcpy(in, info, CRYPTO_DIGEST_INFO_PREFIX);
		memcpy(in + CRYPTO_DIGEST_INFO_PREFIX, digest, 32);
		tbs = in;
		tbs_len = sizeof(in);
	}
	/* PKCS#1 v1.5 is the default padding of an RSA key's context. */
	EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_from_pkey(NULL, op->lazy_key, NULL);
	rv = CKR_HOST_MEMORY;
	if (!pctx)
		goto out;
	if (EVP_PKEY_sign_init(pctx) <= 0 || EVP_PKEY_sign(pctx, sig, &sig_len, tbs, tbs_len) <= 0) {
		rv = ossl_fail("sign");
		goto out;
	}
	rv = CKR_FUNCTION_FAILED;
	if (op->ec_len ? !ecdsa_der_to_raw(der, sig_len, out, op->ec_len) : sig_len != op->out_len)
		goto out;
	*out_len = op->out_len;
	rv = CKR_OK;
out:
	EVP_PKEY_CTX_free(pctx);
	return rv;
}

CK_RV crypto_op_verify(struct crypto_op *op, const CK_BYTE *data, CK_ULONG len, const CK_BYTE *sig,
		       CK_ULONG sig_len)
{
	CK_RV rv = CKR_OPERATION_NOT_INITIALIZED;
	CK_BYTE der[ECDSA_DER_MAX];
	const CK_BYTE *s = sig;
	size_t s_len = sig_len;
	int r = 0;

	if (op->kind != OP_VERIFY || op->done)
		goto out;
	rv = CKR_ARGUMENTS_BAD;
	if (!sig && sig_len)
		goto out;
	/* After updates, "in one go" means the rest of it. */
	if (data && op->started) {
		rv = crypto_op_update(op, data, len);
		if (rv != CKR_OK)
			goto out;
		data = NULL;
	}
	/* Whatever the verdict, this operation has given it. */
	op->done = true;
	rv = CKR_SIGNATURE_LEN_RANGE;
	if (sig_len != op->out_len)
		goto out;
	if (!data && op->path != PATH_HASH_SIGN) {
		data = op->buf ? op->buf : empty_input;
		len = op->buf_len;
	}
	rv = op_check_input(op, len);
	if (rv != CKR_OK)
		goto out;
	if (op->ec_len) {
		s_len = ecdsa_raw_to_der(sig, op->ec_len, der);
		s = der;
	}
	switch (op->path) {
	case PATH_HASH_SIGN:
		r = data ? EVP_DigestVerify(op->mctx, s, s_len, data, len)
			 : EVP_DigestVerifyFinal(op->mctx, s, s_len);
		break;
	case PATH_MSG_SIGN:
		r = EVP_DigestVerify(op->mctx, s, s_len, data, len);
		break;
	case PATH_RAW_SIGN:
		r = EVP_PKEY_verify(op->pctx, s, s_len, data, len);
		break;
	case PATH_DIGEST:
	case PATH_REMOTE_STREAM:
	case PATH_REMOTE_BUF:
	case PATH_REMOTE_HASH:
		/* Not verify operations (op->kind said so above). */
		break;
	}
	/* 0 is a wrong signature, < 0 one OpenSSL could not even parse: both
	 * are the caller's bad signature, not our failure. */
	rv = r == 1 ? CKR_OK : CKR_SIGNATURE_INVALID;
	ERR_clear_error();
out:
	return rv;
}

/* ---------------------------------------------------------------------- */
/* Key wrap */

/* The AES key value of a wrapping or unwrapping key and the cipher for it. */
static CK_RV wrap_setup(const CK_MECHANISM *m, const struct attrs *key, bool wrap, const EVP_CIPHER **cipher,
			const CK_BYTE **kek, const CK_BYTE **iv)
{
	CK_RV rv;
	const struct mech_info *mi;
	const CK_ATTRIBUTE *v;
	CK_KEY_TYPE kt;

	rv = mech_lookup(m, wrap ? MECH_WRAP : MECH_UNWRAP, &mi);
	if (rv != CKR_OK)
		goto out;
	rv = wrap ? CKR_WRAPPING_KEY_TYPE_INCONSISTENT : CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT;
	if (!key || (key_type_of(key, &kt) && kt != CKK_AES))
		goto out;
	v = attrs_get(key, CKA_VALUE);
	rv = wrap ? CKR_WRAPPING_KEY_SIZE_RANGE : CKR_UNWRAPPING_KEY_SIZE_RANGE;
	if (!v || (v->ulValueLen != 16 && v->ulValueLen != 24 && v->ulValueLen != 32))
		goto out;
	rv = CKR_MECHANISM_INVALID;
	*cipher = wrap_cipher(v->ulValueLen, m->mechanism == CKM_AES_KEY_WRAP_PAD);
	if (!*cipher)
		goto out;
	*kek = v->pValue;
	*iv = m->ulParameterLen ? m->pParameter : NULL;
	rv = CKR_OK;
out:
	return rv;
}

/* One pass of the wrap cipher; the whole input in a single update is how
 * OpenSSL's wrap modes work. */
static CK_RV wrap_run(const EVP_CIPHER *cipher, const CK_BYTE *kek, const CK_BYTE *iv, bool enc,
		      const CK_BYTE *in, size_t in_len, CK_BYTE *out, size_t *out_len)
{
	CK_RV rv = CKR_HOST_MEMORY;
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int n = 0, fin = 0;

	if (!ctx)
		goto out;
	EVP_CIPHER_CTX_set_flags(ctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
	if (EVP_CipherInit_ex2(ctx, cipher, kek, iv, enc ? 1 : 0, NULL) <= 0) {
		rv = ossl_fail("EVP_CipherInit_ex2");
		goto out;
	}
	rv = enc ? CKR_FUNCTION_FAILED : CKR_WRAPPED_KEY_INVALID;
	if (EVP_CipherUpdate(ctx, out, &n, in, (int)in_len) <= 0 ||
	    EVP_CipherFinal_ex(ctx, out + n, &fin) <= 0) {
		/* On unwrap this is the integrity check failing: not news. */
		if (enc)
			ossl_fail("key wrap");
		ERR_clear_error();
		goto out;
	}
	*out_len = (size_t)n + (size_t)fin;
	rv = CKR_OK;
out:
	EVP_CIPHER_CTX_free(ctx);
	return rv;
}

CK_RV crypto_wrap(const CK_MECHANISM *m, const struct attrs *wrapping_key, const CK_BYTE *in, CK_ULONG in_len,
		  CK_BYTE *out, CK_ULONG *out_len)
{
	CK_RV rv;
	const EVP_CIPHER *cipher;
	const CK_BYTE *kek, *iv;
	size_t need, got;

	rv = wrap_setup(m, wrapping_key, true, &cipher, &kek, &iv);
	if (rv != CKR_OK)
		goto out;
	rv = CKR_ARGUMENTS_BAD;
	if (!out_len || (!in && in_len))
		goto out;
	/* RFC 3394 wraps whole 64-bit blocks, at least two; RFC 5649 pads
	 * any non-empty key to them. */
	rv = CKR_KEY_SIZE_RANGE;
	if (in_len > WRAP_MAX_INPUT)
		goto out;
	if (m->mechanism == CKM_AES_KEY_WRAP) {
		if (in_len < 16 || in_len % 8)
			goto out;
		need = in_len + 8;
	} else {
		if (in_len == 0)
			goto out;
		need = (in_len + 7) / 8 * 8 + 8;
	}
	rv = CKR_OK;
	if (!out) {
		*out_len = need;
		goto out;
	}
	rv = CKR_BUFFER_TOO_SMALL;
	if (*out_len < need) {
		*out_len = need;
		goto out;
	}
	rv = wrap_run(cipher, kek, iv, true, in, in_len, out, &got);
	if (rv != CKR_OK)
		goto out;
	rv = CKR_FUNCTION_FAILED;
	if (got != need)
		goto out;
	*out_len = got;
	rv = CKR_OK;
out:
	return rv;
}

CK_RV crypto_unwrap(const CK_MECHANISM *m, const struct attrs *unwrapping_key, const CK_BYTE *in,
		    CK_ULONG in_len, CK_BYTE **out, CK_ULONG *out_len)
{
	CK_RV rv;
	const EVP_CIPHER *cipher;
	const CK_BYTE *kek, *iv;
	CK_BYTE *buf = NULL;
	size_t got = 0;

	rv = wrap_setup(m, unwrapping_key, false, &cipher, &kek, &iv);
	if (rv != CKR_OK)
		goto out;
	rv = CKR_ARGUMENTS_BAD;
	if (!out || !out_len || (!in && in_len))
		goto out;
	rv = CKR_WRAPPED_KEY_LEN_RANGE;
	if (in_len % 8 || in_len > WRAP_MAX_INPUT + 16 ||
	    in_len < (m->mechanism == CKM_AES_KEY_WRAP ? 24u : 16u))
		goto out;
	rv = CKR_HOST_MEMORY;
	buf = kt_alloc_secret(in_len);
	if (!buf)
		goto out;
	rv = wrap_run(cipher, kek, iv, false, in, in_len, buf, &got);
	if (rv != CKR_OK)
		goto out;
	*out = buf;
	*out_len = got;
	buf = NULL;
	rv = CKR_OK;
out:
	kt_free_secret(buf, in_len);
	return rv;
}

/* ---------------------------------------------------------------------- */

CK_RV crypto_random(CK_BYTE *out, CK_ULONG len)
{
	return rand_fill(out, len, false);
}

/* ---------------------------------------------------------------------- */
/* Public keys from certificates */

CK_RV crypto_public_from_spki(const CK_BYTE *der, CK_ULONG len, struct attrs *a)
{
	CK_RV rv = CKR_ATTRIBUTE_VALUE_INVALID;
	const unsigned char *p = der;
	EVP_PKEY *pkey = NULL;
	BIGNUM *n = NULL, *e = NULL;
	char group[32];
	CK_BYTE pt[EC_POINT_MAX];
	size_t got = 0;

	if (!der || len == 0 || len > LONG_MAX)
		goto out;
	pkey = d2i_PUBKEY(NULL, &p, (long)len);
	if (!pkey || p != der + len)
		goto out;
	if (EVP_PKEY_is_a(pkey, "RSA")) {
		if (!EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &n) ||
		    !EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &e))
			goto out;
		rv = attrs_set_ulong(a, CKA_KEY_TYPE, CKK_RSA);
		if (rv == CKR_OK)
			rv = attr_set_bn(a, CKA_MODULUS, n, false);
		if (rv == CKR_OK)
			rv = attr_set_bn(a, CKA_PUBLIC_EXPONENT, e, false);
		goto spki;
	}
	/* EC and EdDSA: find our curve row by OpenSSL's name for it. */
	const struct curve *c = NULL;
	if (EVP_PKEY_is_a(pkey, "EC")) {
		if (!EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), NULL))
			goto out;
		int nid = OBJ_sn2nid(group);
		if (nid == NID_undef)
			nid = EC_curve_nist2nid(group);
		for (size_t i = 0; i < KT_ARRAY_SIZE(curves); i++)
			if (curves[i].kt == CKK_EC && curves[i].nid == nid)
				c = &curves[i];
		if (c && (!EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof(pt), &got) ||
			  got != curve_point_len(c) || pt[0] != 0x04))
			c = NULL;
	} else {
		for (size_t i = 0; i < KT_ARRAY_SIZE(curves); i++) {
			if (curves[i].kt == CKK_EC_EDWARDS && EVP_PKEY_is_a(pkey, curves[i].name)) {
				got = sizeof(pt);
				if (EVP_PKEY_get_raw_public_key(pkey, pt, &got) && got == curves[i].len)
					c = &curves[i];
			}
		}
	}
	if (!c) {
		/* A key type this token does not serve (GOST, DSA, ...). */
		rv = CKR_KEY_TYPE_INCONSISTENT;
		goto out;
	}
	rv = attrs_set_ulong(a, CKA_KEY_TYPE, c->kt);
	if (rv == CKR_OK)
		rv = attrs_set(a, CKA_EC_PARAMS, c->oid, c->oid_len);
	if (rv == CKR_OK)
		rv = attr_set_octet_string(a, CKA_EC_POINT, pt, got);
spki:
	if (rv == CKR_OK)
		rv = attrs_set(a, CKA_PUBLIC_KEY_INFO, der, len);
out:
	BN_free(n);
	BN_free(e);
	EVP_PKEY_free(pkey);
	return rv;
}
