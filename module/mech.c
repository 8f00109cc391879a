/*
 * The mechanism table: one row per mechanism.  C_GetMechanismList/Info read
 * it as is, and every operation finds its row here before it starts, so what
 * a client is told and what the module does cannot drift apart.
 *
 * CKF_HW on the signing rows is not a claim about hardware: pkcs11-tool
 * --test only exercises signing for mechanisms flagged CKF_HW, and we want
 * those tests to run against us.
 */
#include "crypto.h"

#include <string.h>

/* CK_EDDSA_PARAMS (PKCS#11 3.0, 2.3.14) is not in p11-kit's 2.40 header. */
typedef struct {
	CK_BBOOL phFlag;
	CK_ULONG ulContextDataLen;
	CK_BYTE_PTR pContextData;
} kt_eddsa_params;

/* Largest RSA modulus any key may have (crypto.c refuses bigger ones), so the
 * largest salt a PSS parameter can sensibly ask for.  The exact bound needs
 * the key and is checked again when the operation starts. */
#define PSS_MAX_EM_BYTES (16384 / 8)

/* Bit sizes of the curves we serve, as CK_MECHANISM_INFO counts them
 * (field size): P-256..P-521, Ed25519 (255) and Ed448. */
#define EC_MIN_BITS 256
#define EC_MAX_BITS 521
#define ED_MIN_BITS 255
#define ED_MAX_BITS 448

/* RSA keys from 1024 bits work for verification (old signatures must stay
 * checkable); generation and private keys start at 2048 (crypto.c). */
#define RSA_MIN_BITS 1024
#define RSA_MAX_BITS 16384

#define EC_FLAGS   (CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS)
#define SIGN_FLAGS (CKF_HW | CKF_SIGN | CKF_VERIFY)

static CK_RV param_none(const CK_MECHANISM *m);
static CK_RV param_pss(const CK_MECHANISM *m);
static CK_RV param_pss_hashed(const CK_MECHANISM *m);
static CK_RV param_eddsa(const CK_MECHANISM *m);
static CK_RV param_wrap(const CK_MECHANISM *m);

/* One row per mechanism reads best laid out by hand. */
/* clang-format off */
#define DIGEST_ROW(mech, name)                                                                      \
	{                                                                                           \
		.type = (mech), .key_type = CKK_VENDOR_DEFINED, .flags = CKF_DIGEST,                \
		.ops = MECH_DIGEST, .digest = (name), .check_param = param_none,                    \
	}

#define RSA_SIGN_ROW(mech, name, check)                                                             \
	{                                                                                           \
		.type = (mech), .key_type = CKK_RSA, .min_key_size = RSA_MIN_BITS,                  \
		.max_key_size = RSA_MAX_BITS, .flags = SIGN_FLAGS,                                  \
		.ops = MECH_SIGN | MECH_VERIFY, .digest = (name), .check_param = (check),           \
	}

#define ECDSA_ROW(mech, name)                                                                       \
	{                                                                                           \
		.type = (mech), .key_type = CKK_EC, .min_key_size = EC_MIN_BITS,                    \
		.max_key_size = EC_MAX_BITS, .flags = SIGN_FLAGS | EC_FLAGS,                        \
		.ops = MECH_SIGN | MECH_VERIFY, .digest = (name), .check_param = param_none,        \
	}

static const struct mech_info mechs[] = {
	/* Key generation */
	{
		.type = CKM_RSA_PKCS_KEY_PAIR_GEN,
		.key_type = CKK_RSA,
		.min_key_size = 2048,
		.max_key_size = 4096,
		.flags = CKF_GENERATE_KEY_PAIR,
		.ops = MECH_GENERATE_PAIR,
		.check_param = param_none,
	},
	{
		.type = CKM_EC_KEY_PAIR_GEN,
		.key_type = CKK_EC,
		.min_key_size = EC_MIN_BITS,
		.max_key_size = EC_MAX_BITS,
		.flags = CKF_GENERATE_KEY_PAIR | EC_FLAGS,
		.ops = MECH_GENERATE_PAIR,
		.check_param = param_none,
	},
	{
		.type = CKM_EC_EDWARDS_KEY_PAIR_GEN,
		.key_type = CKK_EC_EDWARDS,
		.min_key_size = ED_MIN_BITS,
		.max_key_size = ED_MAX_BITS,
		.flags = CKF_GENERATE_KEY_PAIR,
		.ops = MECH_GENERATE_PAIR,
		.check_param = param_none,
	},
	{
		.type = CKM_AES_KEY_GEN,
		.key_type = CKK_AES,
		.min_key_size = 16,
		.max_key_size = 32,
		.flags = CKF_GENERATE,
		.ops = MECH_GENERATE,
		.check_param = param_none,
	},
	{
		/* The spec counts generic secret sizes in bits: 1..512 bytes. */
		.type = CKM_GENERIC_SECRET_KEY_GEN,
		.key_type = CKK_GENERIC_SECRET,
		.min_key_size = 8,
		.max_key_size = 4096,
		.flags = CKF_GENERATE,
		.ops = MECH_GENERATE,
		.check_param = param_none,
	},

	/* RSA: raw PKCS#1 v1.5 and PSS take what the caller hashed, so they
	 * cannot stream; the hash-and-sign variants do. */
	{
		.type = CKM_RSA_PKCS,
		.key_type = CKK_RSA,
		.min_key_size = RSA_MIN_BITS,
		.max_key_size = RSA_MAX_BITS,
		.flags = SIGN_FLAGS,
		.ops = MECH_SIGN | MECH_VERIFY,
		.single_part = true,
		.check_param = param_none,
	},
	RSA_SIGN_ROW(CKM_SHA224_RSA_PKCS, "SHA224", param_none),
	RSA_SIGN_ROW(CKM_SHA256_RSA_PKCS, "SHA256", param_none),
	RSA_SIGN_ROW(CKM_SHA384_RSA_PKCS, "SHA384", param_none),
	RSA_SIGN_ROW(CKM_SHA512_RSA_PKCS, "SHA512", param_none),
	{
		.type = CKM_RSA_PKCS_PSS,
		.key_type = CKK_RSA,
		.min_key_size = RSA_MIN_BITS,
		.max_key_size = RSA_MAX_BITS,
		.flags = SIGN_FLAGS,
		.ops = MECH_SIGN | MECH_VERIFY,
		.single_part = true,
		.check_param = param_pss,
	},
	RSA_SIGN_ROW(CKM_SHA224_RSA_PKCS_PSS, "SHA224", param_pss_hashed),
	RSA_SIGN_ROW(CKM_SHA256_RSA_PKCS_PSS, "SHA256", param_pss_hashed),
	RSA_SIGN_ROW(CKM_SHA384_RSA_PKCS_PSS, "SHA384", param_pss_hashed),
	RSA_SIGN_ROW(CKM_SHA512_RSA_PKCS_PSS, "SHA512", param_pss_hashed),

	/* ECDSA: the raw form signs a hash of any length (OpenSSL truncates
	 * it to the order, as X9.62 says). */
	{
		.type = CKM_ECDSA,
		.key_type = CKK_EC,
		.min_key_size = EC_MIN_BITS,
		.max_key_size = EC_MAX_BITS,
		.flags = SIGN_FLAGS | EC_FLAGS,
		.ops = MECH_SIGN | MECH_VERIFY,
		.single_part = true,
		.check_param = param_none,
	},
	/* pkcs11-tool --test-ec insists on ECDSA with SHA-1. */
	ECDSA_ROW(CKM_ECDSA_SHA1, "SHA1"),
	ECDSA_ROW(CKM_ECDSA_SHA224, "SHA224"),
	ECDSA_ROW(CKM_ECDSA_SHA256, "SHA256"),
	ECDSA_ROW(CKM_ECDSA_SHA384, "SHA384"),
	ECDSA_ROW(CKM_ECDSA_SHA512, "SHA512"),

	/* Pure EdDSA hashes the whole message twice, so it cannot stream. */
	{
		.type = CKM_EDDSA,
		.key_type = CKK_EC_EDWARDS,
		.min_key_size = ED_MIN_BITS,
		.max_key_size = ED_MAX_BITS,
		.flags = SIGN_FLAGS,
		.ops = MECH_SIGN | MECH_VERIFY,
		.single_part = true,
		.check_param = param_eddsa,
	},

	/* Digests */
	DIGEST_ROW(CKM_SHA_1, "SHA1"),
	DIGEST_ROW(CKM_SHA224, "SHA224"),
	DIGEST_ROW(CKM_SHA256, "SHA256"),
	DIGEST_ROW(CKM_SHA384, "SHA384"),
	DIGEST_ROW(CKM_SHA512, "SHA512"),

	/* Key wrap of secret key values (RFC 3394, RFC 5649). */
	{
		.type = CKM_AES_KEY_WRAP,
		.key_type = CKK_AES,
		.min_key_size = 16,
		.max_key_size = 32,
		.flags = CKF_WRAP | CKF_UNWRAP,
		.ops = MECH_WRAP | MECH_UNWRAP,
		.check_param = param_wrap,
	},
	{
		.type = CKM_AES_KEY_WRAP_PAD,
		.key_type = CKK_AES,
		.min_key_size = 16,
		.max_key_size = 32,
		.flags = CKF_WRAP | CKF_UNWRAP,
		.ops = MECH_WRAP | MECH_UNWRAP,
		.check_param = param_wrap,
	},
};
/* clang-format on */

const struct mech_info *mech_find(CK_MECHANISM_TYPE type)
{
	for (size_t i = 0; i < KT_ARRAY_SIZE(mechs); i++)
		if (mechs[i].type == type)
			return &mechs[i];
	return NULL;
}

size_t mech_count(void)
{
	return KT_ARRAY_SIZE(mechs);
}

const struct mech_info *mech_at(size_t i)
{
	return i < KT_ARRAY_SIZE(mechs) ? &mechs[i] : NULL;
}

CK_RV mech_lookup(const CK_MECHANISM *m, enum mech_op op, const struct mech_info **out)
{
	CK_RV rv = CKR_ARGUMENTS_BAD;
	const struct mech_info *mi;

	if (!m || !out)
		goto out;
	rv = CKR_MECHANISM_INVALID;
	mi = mech_find(m->mechanism);
	if (!mi || !(mi->ops & op))
		goto out;
	rv = mi->check_param(m);
	if (rv != CKR_OK)
		goto out;
	*out = mi;
	rv = CKR_OK;
out:
	return rv;
}

/* Some applications pass a non-NULL pointer with a zero length for "no
 * parameter"; only a length says that a parameter was really given. */
static CK_RV param_none(const CK_MECHANISM *m)
{
	return m->ulParameterLen == 0 ? CKR_OK : CKR_MECHANISM_PARAM_INVALID;
}

static bool mgf_valid(CK_RSA_PKCS_MGF_TYPE mgf)
{
	switch (mgf) {
	case CKG_MGF1_SHA1:
	case CKG_MGF1_SHA224:
	case CKG_MGF1_SHA256:
	case CKG_MGF1_SHA384:
	case CKG_MGF1_SHA512:
		return true;
	default:
		return false;
	}
}

/* The PSS parameter of CKM_RSA_PKCS_PSS: hashAlg names one of our digest
 * mechanisms (that is the hash the caller computed), mgf is MGF1 with any
 * of those hashes (OpenSSL allows them to differ, and so does the spec),
 * and the salt fits the largest key we accept. */
static CK_RV pss_params(const CK_MECHANISM *m, const struct mech_info **hash)
{
	CK_RV rv = CKR_MECHANISM_PARAM_INVALID;
	const CK_RSA_PKCS_PSS_PARAMS *p = m->pParameter;
	const struct mech_info *h;

	if (!p || m->ulParameterLen != sizeof(*p))
		goto out;
	h = mech_find(p->hashAlg);
	if (!h || !(h->ops & MECH_DIGEST) || !mgf_valid(p->mgf))
		goto out;
	if (p->sLen > PSS_MAX_EM_BYTES)
		goto out;
	*hash = h;
	rv = CKR_OK;
out:
	return rv;
}

static CK_RV param_pss(const CK_MECHANISM *m)
{
	const struct mech_info *h;
	return pss_params(m, &h);
}

/* CKM_SHAx_RSA_PKCS_PSS hashes itself, so a different hashAlg would be a
 * contradiction, not a choice. */
static CK_RV param_pss_hashed(const CK_MECHANISM *m)
{
	CK_RV rv;
	const struct mech_info *h, *self = mech_find(m->mechanism);

	rv = pss_params(m, &h);
	if (rv != CKR_OK)
		goto out;
	rv = CKR_MECHANISM_PARAM_INVALID;
	if (!self || !self->digest || strcmp(self->digest, h->digest) != 0)
		goto out;
	rv = CKR_OK;
out:
	return rv;
}

/* Only pure Ed25519/Ed448 without a context: prehashed (phFlag) and the
 * context variants are different signature schemes that OpenSSL 3.0
 * cannot produce, so we refuse them instead of signing something else. */
static CK_RV param_eddsa(const CK_MECHANISM *m)
{
	CK_RV rv = CKR_MECHANISM_PARAM_INVALID;
	const kt_eddsa_params *p = m->pParameter;

	if (m->ulParameterLen == 0) {
		rv = CKR_OK;
		goto out;
	}
	if (!p || m->ulParameterLen != sizeof(*p))
		goto out;
	if (p->phFlag != CK_FALSE || p->ulContextDataLen != 0)
		goto out;
	rv = CKR_OK;
out:
	return rv;
}

/* The optional parameter of AES key wrap is the initial value: 8 bytes for
 * RFC 3394, 4 for RFC 5649 (the alternative IV's high half). */
static CK_RV param_wrap(const CK_MECHANISM *m)
{
	CK_RV rv = CKR_MECHANISM_PARAM_INVALID;
	CK_ULONG iv_len = m->mechanism == CKM_AES_KEY_WRAP_PAD ? 4 : 8;

	if (m->ulParameterLen != 0 && (!m->pParameter || m->ulParameterLen != iv_len))
		goto out;
	rv = CKR_OK;
out:
	return rv;
}
