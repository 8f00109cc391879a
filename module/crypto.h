/*
 * Mechanisms and the cryptography behind them, over OpenSSL 3 EVP.
 * One table row per mechanism (mech.c) feeds C_GetMechanismList/Info and
 * validation alike; crypto.c turns key attributes into EVP_PKEYs and runs
 * sign/verify/digest/wrap.  No function here checks session state, object
 * visibility or attribute permissions: module/object.c and module/pkcs11.c do.
 */
#ifndef KOLTAMGA_CRYPTO_H
#define KOLTAMGA_CRYPTO_H

#include <openssl/evp.h>

#include "common.h"
#include "attrs.h"

enum mech_op {
	MECH_SIGN = 1u << 0,
	MECH_VERIFY = 1u << 1,
	MECH_DIGEST = 1u << 2,
	MECH_GENERATE = 1u << 3,
	MECH_GENERATE_PAIR = 1u << 4,
	MECH_WRAP = 1u << 5,
	MECH_UNWRAP = 1u << 6,
};

struct mech_info {
	CK_MECHANISM_TYPE type;
	CK_KEY_TYPE key_type;  /* key the mechanism works with (CKK_VENDOR_DEFINED: none) */
	CK_ULONG min_key_size; /* as CK_MECHANISM_INFO: bits for RSA/EC, bytes for AES */
	CK_ULONG max_key_size;
	CK_FLAGS flags;        /* CK_MECHANISM_INFO flags */
	unsigned ops;          /* enum mech_op */
	bool single_part;      /* no C_*Update: the whole input at once */
	const char *digest;    /* OpenSSL digest name for hash-and-sign and digest, or NULL */
	/* Check pParameter/ulParameterLen: CKR_MECHANISM_PARAM_INVALID when
	 * wrong (never CKR_ARGUMENTS_BAD: pkcs11-tool --test stops on that). */
	CK_RV (*check_param)(const CK_MECHANISM *m);
};

const struct mech_info *mech_find(CK_MECHANISM_TYPE type);
size_t mech_count(void);
const struct mech_info *mech_at(size_t i);
/* mech_find + check_param; CKR_MECHANISM_INVALID for unknown types or a
 * mechanism that does not do `op`. */
CK_RV mech_lookup(const CK_MECHANISM *m, enum mech_op op, const struct mech_info **out);

/*
 * Key generation.  The module has already merged the caller's template and
 * its defaults into `pub`/`priv`/`key` and checked permissions; these add the
 * key material (CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_PRIVATE_EXPONENT,
 * CKA_PRIME_1.., CKA_EC_POINT, CKA_VALUE, CKA_VALUE_LEN, ...).
 *   RSA: CKA_MODULUS_BITS in pub, 2048..4096 else CKR_KEY_SIZE_RANGE;
 *        CKA_PUBLIC_EXPONENT optional (65537).
 *   EC:  CKA_EC_PARAMS (DER OID of P-256/384/521) in pub; else
 *        CKR_CURVE_NOT_SUPPORTED.  CKA_EC_POINT is a DER OCTET STRING.
 *   EdDSA: CKA_EC_PARAMS is the Ed25519/Ed448 OID or the printable names
 *        "edwards25519"/"edwards448"; CKA_EC_POINT a DER OCTET STRING.
 *   AES: CKA_VALUE_LEN 16/24/32 else CKR_KEY_SIZE_RANGE (CKR_TEMPLATE_INCOMPLETE if absent).
 *   Generic secret: CKA_VALUE_LEN 1..512 bytes.
 * The params/CKA_EC_PARAMS are copied to priv too.
 */
CK_RV crypto_generate_key_pair(const CK_MECHANISM *m, struct attrs *pub, struct attrs *priv);
/* The same checks of the templates, generating nothing (pub == NULL: a
 * secret key in `key`): a device that generates keeps the module's limits. */
CK_RV crypto_check_generate(const CK_MECHANISM *m, const struct attrs *pub, const struct attrs *key);
CK_RV crypto_generate_key(const CK_MECHANISM *m, struct attrs *key);

/* C_CreateObject / C_UnwrapKey of a key: check the material the template
 * carries is complete and well formed for its CKA_KEY_TYPE (RSA private keys
 * need all CRT components or at least modulus+private exponent; EC
 * points must lie on the curve), fill what follows from it (CKA_MODULUS_BITS,
 * CKA_VALUE_LEN, CKA_EC_POINT of an EC private key when derivable is not
 * required).  CKR_TEMPLATE_INCOMPLETE, CKR_ATTRIBUTE_VALUE_INVALID,
 * CKR_KEY_SIZE_RANGE, CKR_CURVE_NOT_SUPPORTED. */
CK_RV crypto_check_key(CK_OBJECT_CLASS cls, CK_KEY_TYPE kt, struct attrs *a);

/* The public-key attributes (CKA_KEY_TYPE, CKA_MODULUS, CKA_PUBLIC_EXPONENT,
 * or CKA_EC_PARAMS, CKA_EC_POINT; CKA_PUBLIC_KEY_INFO) of a
 * DER SubjectPublicKeyInfo, e.g. a certificate's.  CKR_KEY_TYPE_INCONSISTENT
 * for key types this token does not serve, CKR_ATTRIBUTE_VALUE_INVALID for
 * malformed DER. */
CK_RV crypto_public_from_spki(const CK_BYTE *der, CK_ULONG len, struct attrs *a);

/* Build the EVP_PKEY for a public or private key object (caller frees).
 * CKR_KEY_TYPE_INCONSISTENT for a key type not handled, CKR_FUNCTION_FAILED
 * for damaged material.  Import policy: RSA public keys 1024..16384 bits,
 * private 2048..16384 and with CKA_PUBLIC_EXPONENT (OpenSSL blinds with
 * it); EC private keys load with their derived public point. */
CK_RV crypto_load_pkey(CK_OBJECT_CLASS cls, const struct attrs *a, EVP_PKEY **out);

/* Set CKA_PUBLIC_KEY_INFO in dst from the public-key attributes of `pub`
 * (a public key object, or an RSA private key's modulus and exponent). */
CK_RV crypto_set_public_key_info(const struct attrs *pub, struct attrs *dst);

/* Size in bits of a key object (RSA modulus, EC order, 8*AES length), 0 if unknown. */
CK_ULONG crypto_key_bits(CK_OBJECT_CLASS cls, const struct attrs *a);

/*
 * One active sign, verify or digest operation.  For single-part mechanisms
 * `update` buffers the input (capped, CKR_DATA_LEN_RANGE beyond) and `final`
 * signs it at once; hash-and-sign mechanisms stream.
 */
struct crypto_op;

/* The op takes its own reference to `key`. */
CK_RV crypto_sign_init(const struct mech_info *mi, const CK_MECHANISM *m, EVP_PKEY *key,
		       bool sign, struct crypto_op **out);
CK_RV crypto_digest_init(const struct mech_info *mi, struct crypto_op **out);

/* A signature made elsewhere (a device, tokens/pkcs11): the op checks
 * mechanism, parameters, input lengths and output buffers as for a key of
 * its own, and hands the data to these.  `final` gets the whole input when
 * `oneshot`, else ends what `update` streamed. */
struct crypto_remote {
	CK_RV (*update)(void *ctx, const CK_BYTE *data, CK_ULONG len);
	CK_RV (*final)(void *ctx, const CK_BYTE *data, CK_ULONG len, bool oneshot, CK_BYTE *out,
		       CK_ULONG *out_len);
	CK_RV (*login)(void *ctx, const CK_UTF8CHAR *pin, CK_ULONG len);
	void (*free)(void *ctx);
	void *ctx;
};
/* `kt` and `bits` are the key's type and size (crypto_key_bits).  With host_hash the module
 * hashes and the device signs the hash (`remote` was started with
 * crypto_sign_hash_counterpart's mechanism).  The op owns `remote` from
 * here on, also when this fails. */
CK_RV crypto_sign_init_remote(const struct mech_info *mi, const CK_MECHANISM *m, CK_KEY_TYPE kt, CK_ULONG bits,
			      const struct crypto_remote *remote, bool host_hash, struct crypto_op **out);
/* The mechanism that signs a hash-and-sign mechanism's hash (CKM_ECDSA,
 * CKM_RSA_PKCS, CKM_RSA_PKCS_PSS with the same parameters), for devices
 * that sign hashes only (host_hash above); CKM_VENDOR_DEFINED if none. */
CK_MECHANISM_TYPE crypto_sign_hash_counterpart(const struct mech_info *mi);
/* Those checks alone, before the device is asked to start. */
CK_RV crypto_check_remote(const struct mech_info *mi, const CK_MECHANISM *m, CK_KEY_TYPE kt, CK_ULONG bits);
bool crypto_op_remote(const struct crypto_op *op);
/* CKU_CONTEXT_SPECIFIC for a remote op: the device checks the PIN. */
CK_RV crypto_op_login(struct crypto_op *op, const CK_UTF8CHAR *pin, CK_ULONG len);
void crypto_op_free(struct crypto_op *op);

/* Exact output length: the signature size (RSA modulus bytes, 2*order bytes
 * for ECDSA r||s, 64/114 for EdDSA) or the digest size. */
size_t crypto_op_out_len(const struct crypto_op *op);

CK_RV crypto_op_update(struct crypto_op *op, const CK_BYTE *data, CK_ULONG len);
/* Sign (or digest) everything given so far.  *out_len is in/out: the room
 * in `out` on entry (a short one is CKR_BUFFER_TOO_SMALL and the op lives
 * on), the real length on return.  Once an op has finished, or for the
 * wrong kind of op, CKR_OPERATION_NOT_INITIALIZED. */
CK_RV crypto_op_final(struct crypto_op *op, CK_BYTE *out, CK_ULONG *out_len);
/* Single-part in one go: equals update + final, without copying for
 * streaming mechanisms.  Same contract for out. */
CK_RV crypto_op_oneshot(struct crypto_op *op, const CK_BYTE *data, CK_ULONG len, CK_BYTE *out,
			CK_ULONG *out_len);
/* A one-shot CKM_ECDSA_SHA256 or CKM_SHA256_RSA_PKCS signature whose
 * SHA-256 the caller has computed anyway (a seal's audit record needs it):
 * is this operation one, untouched by updates?  Then crypto_op_sign_sha256
 * signs the digest, with C_Sign's length semantics for out. */
bool crypto_op_prehashable(const struct crypto_op *op);
CK_RV crypto_op_sign_sha256(struct crypto_op *op, const unsigned char digest[32], CK_BYTE *out,
			    CK_ULONG *out_len);

/* Verify everything given so far (or data+len in one go when data != NULL):
 * CKR_OK, CKR_SIGNATURE_INVALID or CKR_SIGNATURE_LEN_RANGE. */
CK_RV crypto_op_verify(struct crypto_op *op, const CK_BYTE *data, CK_ULONG len,
		       const CK_BYTE *sig, CK_ULONG sig_len);

/* AES key wrap (RFC 3394, CKM_AES_KEY_WRAP) and with padding (RFC 5649,
 * CKM_AES_KEY_WRAP_PAD) of a secret key value.  *out_len semantics as
 * C_WrapKey: with out == NULL only the length is returned. */
CK_RV crypto_wrap(const CK_MECHANISM *m, const struct attrs *wrapping_key, const CK_BYTE *in,
		  CK_ULONG in_len, CK_BYTE *out, CK_ULONG *out_len);
/* Unwrap into a newly malloc'd buffer (*out freed with kt_free_secret). */
CK_RV crypto_unwrap(const CK_MECHANISM *m, const struct attrs *unwrapping_key, const CK_BYTE *in,
		    CK_ULONG in_len, CK_BYTE **out, CK_ULONG *out_len);

CK_RV crypto_random(CK_BYTE *out, CK_ULONG len);

/* SHA-256 of len bytes (data may be NULL when len is 0), with the digest
 * fetched once per process: the policy layer hashes every signed document
 * and every audit record. */
bool crypto_sha256(const void *data, size_t len, unsigned char out[32]);
/* The same for any digest crypto.c knows ("SHA224" ... "SHA512"); out has
 * room for EVP_MAX_MD_SIZE bytes. */
bool crypto_digest(const char *name, const void *data, size_t len, unsigned char *out);
/* The DigestInfo prefix (CRYPTO_DIGEST_INFO_PREFIX bytes) PKCS#1 v1.5 puts
 * before a SHA-2 hash ("SHA224" ... "SHA512"), and that hash's length; NULL
 * for another digest. */
#define CRYPTO_DIGEST_INFO_PREFIX 19
const CK_BYTE *crypto_digest_info(const char *md, size_t *hash_len);

#endif
