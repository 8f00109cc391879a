/*
 * Module tests: hostile and malformed input through the real function list.
 *
 * Every entry point gets NULL pointers, absurd lengths, invalid handles,
 * broken templates and mechanism parameters; objects vanish under running
 * operations; sessions close and the library finalises under other threads;
 * random templates go to C_CreateObject; broken certificates and key
 * material are imported; the store file is damaged between calls.  The rule
 * is: an error (or CKR_OK where that is right), never a crash, never a read
 * or write outside what the caller handed over.  Every group also has a
 * positive control so that a module answering "error" to everything cannot
 * pass.
 *
 * Only lengths that match real buffers are passed wherever the module is
 * entitled to read or write that many bytes; absurd lengths are used only
 * where a correct module must refuse before touching the memory.
 *
 * KT_HOSTILE_FILTER=<glob> runs only matching tests (handy under ASan);
 * KT_HOSTILE_ITER=<n> sets the random-template iterations (default 3000).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "fixture.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#define F (fx.f)
#define F3 (fx.f3)
#define UNAVAIL CK_UNAVAILABLE_INFORMATION
#define HUGE_LEN ((CK_ULONG)1 << 40)

static CK_SLOT_ID slot;
static CK_SESSION_HANDLE s; /* R/W, user logged in */
static CK_OBJECT_HANDLE ec_pub, ec_priv; /* P-256 session key pair of s */

static CK_OBJECT_CLASS c_data = CKO_DATA, c_cert = CKO_CERTIFICATE, c_pub = CKO_PUBLIC_KEY,
		       c_priv = CKO_PRIVATE_KEY, c_secret = CKO_SECRET_KEY;
static CK_KEY_TYPE k_rsa = CKK_RSA, k_ec = CKK_EC, k_ed = CKK_EC_EDWARDS, k_aes = CKK_AES,
		   k_generic = CKK_GENERIC_SECRET;
static CK_CERTIFICATE_TYPE x509 = CKC_X_509;

static const CK_BYTE msg[] = "hostile input test message";
static const CK_BYTE hash32[32] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
				    17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32 };

/* --- helpers -------------------------------------------------------------- */

static int setup(void **state)
{
	(void)state;
	if (fixture_setup(NULL) != 0)
		return -1;
	slot = fixture_init_token();
	s = fixture_open_user_session(slot);
	assert_int_equal(fixture_gen_ec(s, fx_p256, fx_p256_len, &ec_pub, &ec_priv), CKR_OK);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	return fixture_teardown(NULL);
}

/* Positive control used everywhere: s can still make and check an ECDSA
 * signature, so the hostile calls before did not break the session. */
static void assert_session_signs(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE priv, CK_OBJECT_HANDLE pub)
{
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	CK_BYTE sig[132];
	CK_ULONG len = sizeof(sig);

	assert_int_equal(F->C_SignInit(h, &m, priv), CKR_OK);
	assert_int_equal(F->C_Sign(h, (CK_BYTE_PTR)msg, sizeof(msg), sig, &len), CKR_OK);
	assert_int_equal(len, 64);
	assert_int_equal(F->C_VerifyInit(h, &m, pub), CKR_OK);
	assert_int_equal(F->C_Verify(h, (CK_BYTE_PTR)msg, sizeof(msg), sig, len), CKR_OK);
}

static bool rv_is_error(CK_RV rv)
{
	return rv != CKR_OK;
}

static CK_OBJECT_HANDLE make_data(CK_SESSION_HANDLE h, const char *label, bool token)
{
	CK_ATTRIBUTE t[] = {
		{ CKA_CLASS, &c_data, sizeof(c_data) },
		{ CKA_TOKEN, token ? &fx_true : &fx_false, 1 },
		{ CKA_LABEL, (void *)label, strlen(label) },
		{ CKA_VALUE, (void *)msg, sizeof(msg) },
	};
	CK_OBJECT_HANDLE o = CK_INVALID_HANDLE;

	assert_int_equal(F->C_CreateObject(h, t, FX_COUNT(t), &o), CKR_OK);
	assert_int_not_equal(o, CK_INVALID_HANDLE);
	return o;
}

/* The P-256 public point (DER OCTET STRING) of the fixture key. */
static CK_BYTE *ec_point_of(CK_OBJECT_HANDLE pub, CK_ULONG *len)
{
	CK_BYTE *p = fixture_get_attr(s, pub, CKA_EC_POINT, len);
	assert_non_null(p);
	return p;
}

/* A self-signed P-256 certificate, DER. */
static CK_BYTE *make_cert(int *len)
{
	EVP_PKEY *pk = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	X509_NAME *name = X509_NAME_new();
	unsigned char *der = NULL;

	assert_non_null(pk);
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 77);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"hostile", -1, -1, 0);
	X509_set_subject_name(x, name);
	X509_set_issuer_name(x, name);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	X509_set_pubkey(x, pk);
	assert_true(X509_sign(x, pk, EVP_sha256()) > 0);
	*len = i2d_X509(x, &der);
	assert_true(*len > 0);
	X509_NAME_free(name);
	X509_free(x);
	EVP_PKEY_free(pk);
	return der;
}

static CK_RV create_cert(CK_SESSION_HANDLE h, const CK_BYTE *der, CK_ULONG len, CK_OBJECT_HANDLE *o)
{
	CK_ATTRIBUTE t[] = {
		{ CKA_CLASS, &c_cert, sizeof(c_cert) },
		{ CKA_CERTIFICATE_TYPE, &x509, sizeof(x509) },
		{ CKA_VALUE, (void *)der, len },
	};
	*o = CK_INVALID_HANDLE;
	return F->C_CreateObject(h, t, FX_COUNT(t), o);
}

/* The store file of the (only) initialised token. */
static void store_file(char *out, size_t n)
{
	DIR *d = opendir(fx.store);
	struct dirent *e;

	assert_non_null(d);
	out[0] = '\0';
	while ((e = readdir(d))) {
		size_t l = strlen(e->d_name);
		if (l > 5 && strcmp(e->d_name + l - 5, ".ktok") == 0) {
			int k = snprintf(out, n, "%s/%s", fx.store, e->d_name);
			assert_true(k > 0 && (size_t)k < n);
			break;
		}
	}
	closedir(d);
	assert_true(out[0] != '\0');
}

/* --- 1. NULL pointers in every pointer argument --------------------------- */

static void test_null_pointers(void **state)
{
	CK_MECHANISM ecdsa = { CKM_ECDSA_SHA256, NULL, 0 }, sha = { CKM_SHA256, NULL, 0 };
	CK_MECHANISM wrap = { CKM_AES_KEY_WRAP_PAD, NULL, 0 }, aes = { CKM_AES_KEY_GEN, NULL, 0 };
	CK_MECHANISM ecgen = { CKM_EC_KEY_PAIR_GEN, NULL, 0 };
	CK_ULONG n = 0, bytes = 16;
	CK_BYTE buf[256];
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE, h2 = CK_INVALID_HANDLE, aes_key;
	CK_UTF8CHAR label[32];
	CK_ATTRIBUTE one[] = { { CKA_LABEL, NULL, 0 } };
	CK_ATTRIBUTE aes_t[] = { { CKA_VALUE_LEN, &bytes, sizeof(bytes) } };
	CK_ATTRIBUTE ec_t[] = { { CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len } };
	CK_OBJECT_HANDLE data = make_data(s, "nulls", false);
	(void)state;

	memset(label, ' ', sizeof(label));
	assert_int_equal(fixture_gen_aes(s, 16, NULL, 0, &aes_key), CKR_OK);

	/* general and slot functions */
	assert_int_equal(F->C_GetFunctionList(NULL), CKR_ARGUMENTS_BAD);
	if (fx.get_interface_list) {
		assert_int_equal(fx.get_interface_list(NULL, NULL), CKR_ARGUMENTS_BAD);
		assert_int_equal(fx.get_interface((CK_UTF8CHAR_PTR) "PKCS 11", NULL, NULL, 0), CKR_ARGUMENTS_BAD);
	}
	assert_int_equal(F->C_GetInfo(NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GetSlotList(CK_TRUE, NULL, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GetSlotList(CK_FALSE, (CK_SLOT_ID_PTR)buf, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GetSlotInfo(slot, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GetTokenInfo(slot, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GetMechanismList(slot, NULL, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GetMechanismList(slot, (CK_MECHANISM_TYPE_PTR)buf, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GetMechanismInfo(slot, CKM_SHA256, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_InitToken(slot, NULL, 8, label), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_InitToken(slot, FX_PIN(FX_SO_PIN), NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_WaitForSlotEvent(CKF_DONT_BLOCK, NULL, NULL), CKR_ARGUMENTS_BAD);

	/* sessions and login */
	assert_int_equal(F->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GetSessionInfo(s, NULL), CKR_ARGUMENTS_BAD);
	assert_true(rv_is_error(F->C_GetOperationState(s, NULL, NULL)));
	assert_true(rv_is_error(F->C_SetOperationState(s, NULL, 5, 0, 0)));
	assert_int_equal(F->C_InitPIN(s, NULL, 4), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_SetPIN(s, NULL, 4, (CK_UTF8CHAR_PTR) "5678", 4), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_SetPIN(s, (CK_UTF8CHAR_PTR)FX_USER_PIN, 4, NULL, 4), CKR_ARGUMENTS_BAD);
	/* Already logged in: either answer is fine, but no crash and no login change. */
	assert_true(rv_is_error(F->C_Login(s, CKU_USER, NULL, 4)));
	assert_true(rv_is_error(F->C_Login(s, CKU_CONTEXT_SPECIFIC, NULL, 4)));

	/* objects */
	assert_int_equal(F->C_CreateObject(s, NULL, 1, &h), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_CreateObject(s, one, 1, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_CreateObject(s, NULL, 0, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_CopyObject(s, data, NULL, 1, &h2), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_CopyObject(s, data, NULL, 0, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GetObjectSize(s, data, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GetAttributeValue(s, data, NULL, 1), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_SetAttributeValue(s, data, NULL, 1), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_FindObjectsInit(s, NULL, 1), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_FindObjectsInit(s, NULL, 0), CKR_OK);
	assert_int_equal(F->C_FindObjects(s, NULL, 1, &n), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_FindObjects(s, (CK_OBJECT_HANDLE_PTR)buf, 1, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);

	/* digest */
	assert_int_equal(F->C_DigestInit(s, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_DigestInit(s, &sha), CKR_OK);
	assert_int_equal(F->C_Digest(s, NULL, 5, buf, &n), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_DigestInit(s, &sha), CKR_OK);
	assert_int_equal(F->C_Digest(s, (CK_BYTE_PTR)msg, sizeof(msg), buf, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_DigestInit(s, &sha), CKR_OK);
	assert_int_equal(F->C_DigestUpdate(s, NULL, 5), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_DigestInit(s, &sha), CKR_OK);
	assert_int_equal(F->C_DigestFinal(s, buf, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_DigestFinal(s, buf, &n), CKR_OPERATION_NOT_INITIALIZED); /* ended */

	/* sign and verify */
	assert_int_equal(F->C_SignInit(s, NULL, ec_priv), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_SignInit(s, &ecdsa, ec_priv), CKR_OK);
	n = sizeof(buf);
	assert_int_equal(F->C_Sign(s, NULL, 5, buf, &n), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_SignInit(s, &ecdsa, ec_priv), CKR_OK);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg), buf, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_SignInit(s, &ecdsa, ec_priv), CKR_OK);
	assert_int_equal(F->C_SignUpdate(s, NULL, 3), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_SignInit(s, &ecdsa, ec_priv), CKR_OK);
	assert_int_equal(F->C_SignFinal(s, buf, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_VerifyInit(s, NULL, ec_pub), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_VerifyInit(s, &ecdsa, ec_pub), CKR_OK);
	assert_int_equal(F->C_Verify(s, (CK_BYTE_PTR)msg, sizeof(msg), NULL, 64), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_VerifyInit(s, &ecdsa, ec_pub), CKR_OK);
	assert_int_equal(F->C_Verify(s, NULL, 5, buf, 64), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_VerifyInit(s, &ecdsa, ec_pub), CKR_OK);
	assert_int_equal(F->C_VerifyUpdate(s, NULL, 3), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_VerifyInit(s, &ecdsa, ec_pub), CKR_OK);
	assert_int_equal(F->C_VerifyFinal(s, NULL, 64), CKR_ARGUMENTS_BAD);

	/* keys */
	assert_int_equal(F->C_GenerateKey(s, NULL, aes_t, 1, &h), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GenerateKey(s, &aes, aes_t, 1, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GenerateKey(s, &aes, NULL, 1, &h), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GenerateKeyPair(s, NULL, ec_t, 1, NULL, 0, &h, &h2), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GenerateKeyPair(s, &ecgen, NULL, 1, NULL, 0, &h, &h2), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GenerateKeyPair(s, &ecgen, ec_t, 1, NULL, 1, &h, &h2), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GenerateKeyPair(s, &ecgen, ec_t, 1, NULL, 0, NULL, &h2), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GenerateKeyPair(s, &ecgen, ec_t, 1, NULL, 0, &h, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_WrapKey(s, NULL, aes_key, aes_key, buf, &n), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_WrapKey(s, &wrap, aes_key, aes_key, buf, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_UnwrapKey(s, NULL, aes_key, buf, 24, NULL, 0, &h), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_UnwrapKey(s, &wrap, aes_key, NULL, 24, NULL, 0, &h), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_UnwrapKey(s, &wrap, aes_key, buf, 24, NULL, 1, &h), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_UnwrapKey(s, &wrap, aes_key, buf, 24, NULL, 0, NULL), CKR_ARGUMENTS_BAD);
	assert_true(rv_is_error(F->C_DeriveKey(s, NULL, aes_key, NULL, 0, NULL)));

	/* random */
	assert_int_equal(F->C_SeedRandom(s, NULL, 5), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GenerateRandom(s, NULL, 5), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GenerateRandom(s, NULL, 0), CKR_OK);

	/* unsupported functions: an error, whatever the pointers */
	assert_true(rv_is_error(F->C_EncryptInit(s, NULL, 0)));
	assert_true(rv_is_error(F->C_Encrypt(s, NULL, 5, NULL, NULL)));
	assert_true(rv_is_error(F->C_EncryptUpdate(s, NULL, 5, NULL, NULL)));
	assert_true(rv_is_error(F->C_EncryptFinal(s, NULL, NULL)));
	assert_true(rv_is_error(F->C_DecryptInit(s, NULL, 0)));
	assert_true(rv_is_error(F->C_Decrypt(s, NULL, 5, NULL, NULL)));
	assert_true(rv_is_error(F->C_DecryptUpdate(s, NULL, 5, NULL, NULL)));
	assert_true(rv_is_error(F->C_DecryptFinal(s, NULL, NULL)));
	assert_true(rv_is_error(F->C_DigestKey(s, 0)));
	assert_true(rv_is_error(F->C_SignRecoverInit(s, NULL, 0)));
	assert_true(rv_is_error(F->C_SignRecover(s, NULL, 5, NULL, NULL)));
	assert_true(rv_is_error(F->C_VerifyRecoverInit(s, NULL, 0)));
	assert_true(rv_is_error(F->C_VerifyRecover(s, NULL, 5, NULL, NULL)));
	assert_true(rv_is_error(F->C_DigestEncryptUpdate(s, NULL, 5, NULL, NULL)));
	assert_true(rv_is_error(F->C_DecryptDigestUpdate(s, NULL, 5, NULL, NULL)));
	assert_true(rv_is_error(F->C_SignEncryptUpdate(s, NULL, 5, NULL, NULL)));
	assert_true(rv_is_error(F->C_DecryptVerifyUpdate(s, NULL, 5, NULL, NULL)));
	assert_true(rv_is_error(F->C_GetFunctionStatus(s)));
	assert_true(rv_is_error(F->C_CancelFunction(s)));

	if (F3) {
		assert_true(rv_is_error(F3->C_LoginUser(s, CKU_USER, NULL, 4, NULL, 0)));
		assert_true(rv_is_error(F3->C_LoginUser(s, CKU_USER, NULL, 4, NULL, 7)));
		assert_int_equal(F3->C_SessionCancel(s, 0), CKR_OK);
		assert_true(rv_is_error(F3->C_MessageEncryptInit(s, NULL, 0)));
		assert_true(rv_is_error(F3->C_EncryptMessage(s, NULL, 5, NULL, 5, NULL, 5, NULL, NULL)));
		assert_true(rv_is_error(F3->C_EncryptMessageBegin(s, NULL, 5, NULL, 5)));
		assert_true(rv_is_error(F3->C_EncryptMessageNext(s, NULL, 5, NULL, 5, NULL, NULL, 0)));
		assert_true(rv_is_error(F3->C_MessageEncryptFinal(s)));
		assert_true(rv_is_error(F3->C_MessageDecryptInit(s, NULL, 0)));
		assert_true(rv_is_error(F3->C_DecryptMessage(s, NULL, 5, NULL, 5, NULL, 5, NULL, NULL)));
		assert_true(rv_is_error(F3->C_MessageSignInit(s, NULL, 0)));
		assert_true(rv_is_error(F3->C_SignMessage(s, NULL, 5, NULL, 5, NULL, NULL)));
		assert_true(rv_is_error(F3->C_SignMessageBegin(s, NULL, 5)));
		assert_true(rv_is_error(F3->C_SignMessageNext(s, NULL, 5, NULL, 5, NULL, NULL)));
		assert_true(rv_is_error(F3->C_MessageSignFinal(s)));
		assert_true(rv_is_error(F3->C_MessageVerifyInit(s, NULL, 0)));
		assert_true(rv_is_error(F3->C_VerifyMessage(s, NULL, 5, NULL, 5, NULL, 5)));
		assert_true(rv_is_error(F3->C_VerifyMessageBegin(s, NULL, 5)));
		assert_true(rv_is_error(F3->C_VerifyMessageNext(s, NULL, 5, NULL, 5, NULL, 5)));
		assert_true(rv_is_error(F3->C_MessageVerifyFinal(s)));
	}

	/* Positive controls: nothing above hurt the session, the login or the object. */
	assert_session_signs(s, ec_priv, ec_pub);
	CK_SESSION_INFO si;
	assert_int_equal(F->C_GetSessionInfo(s, &si), CKR_OK);
	assert_int_equal(si.state, CKS_RW_USER_FUNCTIONS);
	CK_ULONG vlen = 0;
	void *v = fixture_get_attr(s, data, CKA_VALUE, &vlen);
	assert_non_null(v);
	assert_int_equal(vlen, sizeof(msg));
	free(v);
}

/* --- 2. lengths: zero, huge, CK_UNAVAILABLE_INFORMATION -------------------- */

static void test_lengths(void **state)
{
	CK_MECHANISM raw_ecdsa = { CKM_ECDSA, NULL, 0 }, ecdsa = { CKM_ECDSA_SHA256, NULL, 0 };
	CK_MECHANISM wrap = { CKM_AES_KEY_WRAP_PAD, NULL, 0 };
	CK_BYTE buf[256], big[64];
	CK_ULONG n;
	CK_OBJECT_HANDLE h, aes_key;
	(void)state;

	assert_int_equal(fixture_gen_aes(s, 16, NULL, 0, &aes_key), CKR_OK);
	memset(big, 'x', sizeof(big));

	/* Template values: NULL with a length, huge and unavailable lengths. */
	CK_ATTRIBUTE null_val[] = { { CKA_CLASS, &c_data, sizeof(c_data) }, { CKA_LABEL, NULL, 5 } };
	assert_int_equal(F->C_CreateObject(s, null_val, 2, &h), CKR_ATTRIBUTE_VALUE_INVALID);
	CK_ATTRIBUTE unavail[] = { { CKA_CLASS, &c_data, sizeof(c_data) }, { CKA_LABEL, big, UNAVAIL } };
	assert_true(rv_is_error(F->C_CreateObject(s, unavail, 2, &h)));
	CK_ATTRIBUTE huge[] = { { CKA_CLASS, &c_data, sizeof(c_data) }, { CKA_VALUE, big, HUGE_LEN } };
	assert_true(rv_is_error(F->C_CreateObject(s, huge, 2, &h)));
	CK_ATTRIBUTE short_class[] = { { CKA_CLASS, &c_data, 1 } };
	assert_int_equal(F->C_CreateObject(s, short_class, 1, &h), CKR_ATTRIBUTE_VALUE_INVALID);
	CK_ATTRIBUTE long_bool[] = { { CKA_CLASS, &c_data, sizeof(c_data) }, { CKA_TOKEN, big, 2 } };
	assert_int_equal(F->C_CreateObject(s, long_bool, 2, &h), CKR_ATTRIBUTE_VALUE_INVALID);
	CK_BYTE bad_bool = 2;
	CK_ATTRIBUTE two_bool[] = { { CKA_CLASS, &c_data, sizeof(c_data) }, { CKA_PRIVATE, &bad_bool, 1 } };
	assert_int_equal(F->C_CreateObject(s, two_bool, 2, &h), CKR_ATTRIBUTE_VALUE_INVALID);
	/* count 0 with a NULL template: a class is missing */
	assert_int_equal(F->C_CreateObject(s, NULL, 0, &h), CKR_TEMPLATE_INCOMPLETE);
	CK_ATTRIBUTE empty_label[] = { { CKA_CLASS, &c_data, sizeof(c_data) }, { CKA_LABEL, NULL, 0 } };
	assert_int_equal(F->C_CreateObject(s, empty_label, 2, &h), CKR_OK); /* positive */
	assert_int_equal(F->C_DestroyObject(s, h), CKR_OK);

	/* Input lengths a correct module refuses before reading the data. */
	assert_int_equal(F->C_SignInit(s, &raw_ecdsa, ec_priv), CKR_OK);
	n = sizeof(buf);
	assert_int_equal(F->C_Sign(s, big, UNAVAIL, buf, &n), CKR_DATA_LEN_RANGE);
	assert_int_equal(F->C_SignInit(s, &raw_ecdsa, ec_priv), CKR_OK);
	assert_int_equal(F->C_SignUpdate(s, big, HUGE_LEN), CKR_DATA_LEN_RANGE);
	assert_int_equal(F->C_VerifyInit(s, &ecdsa, ec_pub), CKR_OK);
	assert_int_equal(F->C_Verify(s, (CK_BYTE_PTR)msg, sizeof(msg), big, UNAVAIL), CKR_SIGNATURE_LEN_RANGE);
	assert_int_equal(F->C_VerifyInit(s, &ecdsa, ec_pub), CKR_OK);
	assert_int_equal(F->C_VerifyFinal(s, big, 0), CKR_SIGNATURE_LEN_RANGE);
	CK_ATTRIBUTE ut[] = { { CKA_CLASS, &c_secret, sizeof(c_secret) }, { CKA_KEY_TYPE, &k_aes, sizeof(k_aes) } };
	assert_int_equal(F->C_UnwrapKey(s, &wrap, aes_key, big, UNAVAIL, ut, 2, &h), CKR_WRAPPED_KEY_LEN_RANGE);
	assert_int_equal(F->C_UnwrapKey(s, &wrap, aes_key, big, 0, ut, 2, &h), CKR_WRAPPED_KEY_LEN_RANGE);
	assert_int_equal(F->C_SeedRandom(s, big, UNAVAIL), CKR_RANDOM_SEED_NOT_SUPPORTED);

	/* Zero-length data is fine for hash-and-sign. */
	assert_int_equal(F->C_SignInit(s, &ecdsa, ec_priv), CKR_OK);
	n = sizeof(buf);
	assert_int_equal(F->C_Sign(s, NULL, 0, buf, &n), CKR_OK);
	assert_int_equal(n, 64);
	/* A zero-sized output buffer: too small, operation lives on. */
	assert_int_equal(F->C_SignInit(s, &ecdsa, ec_priv), CKR_OK);
	n = 0;
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg), buf, &n), CKR_BUFFER_TOO_SMALL);
	assert_int_equal(n, 64);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg), buf, &n), CKR_OK);

	/* PINs: empty, unavailable and absurd lengths never succeed. */
	CK_SESSION_HANDLE s2 = fixture_open_session(slot, true);
	assert_int_equal(F->C_Logout(s), CKR_OK);
	assert_true(rv_is_error(F->C_Login(s2, CKU_USER, (CK_UTF8CHAR_PTR)big, 0)));
	assert_true(rv_is_error(F->C_Login(s2, CKU_USER, (CK_UTF8CHAR_PTR)big, UNAVAIL)));
	assert_true(rv_is_error(F->C_Login(s2, CKU_USER, (CK_UTF8CHAR_PTR)big, HUGE_LEN)));
	assert_int_equal(F->C_SetPIN(s2, (CK_UTF8CHAR_PTR)big, 4, (CK_UTF8CHAR_PTR)big, UNAVAIL),
			 CKR_PIN_LEN_RANGE);
	assert_int_equal(F->C_SetPIN(s2, (CK_UTF8CHAR_PTR)big, 4, (CK_UTF8CHAR_PTR)big, 0), CKR_PIN_LEN_RANGE);
	/* The right PIN still works: the hostile tries did not lock the token
	 * (at most 3 wrong tries counted, the limit is 5). */
	assert_int_equal(F->C_Login(s2, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
	assert_int_equal(F->C_CloseSession(s2), CKR_OK); /* s stays open: still logged in */
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_USER_ALREADY_LOGGED_IN);
	/* the private key died with the logout; make a new pair */
	assert_int_equal(fixture_gen_ec(s, fx_p256, fx_p256_len, &ec_pub, &ec_priv), CKR_OK);
	assert_session_signs(s, ec_priv, ec_pub);
}

/* A find template whose length is CK_UNAVAILABLE_INFORMATION (what a failed
 * C_GetAttributeValue leaves in the entry) must not be read that far: it
 * matches nothing or is refused. */
static void test_find_unavailable_length(void **state)
{
	CK_BYTE big[64];
	CK_OBJECT_HANDLE h;
	CK_ULONG n;
	(void)state;

	memset(big, 'x', sizeof(big));
	make_data(s, "xxxx", false);
	CK_ATTRIBUTE find_id[] = { { CKA_ID, big, UNAVAIL } };
	CK_RV rv = F->C_FindObjectsInit(s, find_id, 1);
	if (rv == CKR_OK) {
		assert_int_equal(F->C_FindObjects(s, &h, 1, &n), CKR_OK);
		assert_int_equal(n, 0);
		assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);
	}
	CK_ATTRIBUTE find_label[] = { { CKA_LABEL, big, UNAVAIL } };
	rv = F->C_FindObjectsInit(s, find_label, 1);
	if (rv == CKR_OK) {
		assert_int_equal(F->C_FindObjects(s, &h, 1, &n), CKR_OK);
		assert_int_equal(n, 0);
		assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);
	}
	CK_ATTRIBUTE find_value[] = { { CKA_VALUE, big, UNAVAIL } };
	rv = F->C_FindObjectsInit(s, find_value, 1);
	if (rv == CKR_OK)
		assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);

	/* positive control */
	CK_ATTRIBUTE ok[] = { { CKA_LABEL, big, 4 } };
	assert_int_equal(fixture_count_objects(s, ok, 1), 1);
}

/* An absurd PIN length is a wrong PIN, not a reason to fail the library
 * (nor to read gigabytes): C_Login answers CKR_PIN_INCORRECT or
 * CKR_PIN_LEN_RANGE, never CKR_FUNCTION_FAILED. */
static void test_login_huge_pin_len(void **state)
{
	CK_BYTE big[64];
	(void)state;
	FX_KOLTAMGA_ONLY();
	memset(big, '1', sizeof(big));
	CK_SESSION_HANDLE s2 = fixture_open_session(slot, true);
	assert_int_equal(F->C_Logout(s), CKR_OK);
	CK_RV rv = F->C_Login(s2, CKU_USER, (CK_UTF8CHAR_PTR)big, UNAVAIL);
	if (rv != CKR_PIN_INCORRECT && rv != CKR_PIN_LEN_RANGE)
		fail_msg("C_Login with ulPinLen = CK_UNAVAILABLE_INFORMATION: 0x%lx", rv);
	assert_int_equal(F->C_Login(s2, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
	assert_int_equal(F->C_CloseSession(s2), CKR_OK);
}

/* --- 3. duplicate attributes ---------------------------------------------- */

static void test_duplicates(void **state)
{
	CK_OBJECT_HANDLE h;
	CK_ATTRIBUTE dup[] = {
		{ CKA_CLASS, &c_data, sizeof(c_data) },
		{ CKA_LABEL, "a", 1 },
		{ CKA_LABEL, "b", 1 },
	};
	CK_ATTRIBUTE dup_class[] = {
		{ CKA_CLASS, &c_data, sizeof(c_data) },
		{ CKA_CLASS, &c_secret, sizeof(c_secret) },
	};
	(void)state;

	assert_int_equal(F->C_CreateObject(s, dup, FX_COUNT(dup), &h), CKR_TEMPLATE_INCONSISTENT);
	assert_int_equal(F->C_CreateObject(s, dup_class, FX_COUNT(dup_class), &h), CKR_TEMPLATE_INCONSISTENT);
	h = make_data(s, "dup", false);
	assert_int_equal(F->C_SetAttributeValue(s, h, &dup[1], 2), CKR_TEMPLATE_INCONSISTENT);
	CK_OBJECT_HANDLE c;
	assert_int_equal(F->C_CopyObject(s, h, &dup[1], 2, &c), CKR_TEMPLATE_INCONSISTENT);

	/* Reading the same attribute twice is fine. */
	CK_BYTE l1[8], l2[8];
	CK_ATTRIBUTE get[] = { { CKA_LABEL, l1, sizeof(l1) }, { CKA_LABEL, l2, sizeof(l2) } };
	assert_int_equal(F->C_GetAttributeValue(s, h, get, 2), CKR_OK);
	assert_int_equal(get[0].ulValueLen, 3);
	assert_int_equal(get[1].ulValueLen, 3);
	assert_memory_equal(l1, "dup", 3);
	/* Finding with the same attribute twice (agreeing, then disagreeing). */
	CK_ATTRIBUTE f2[] = { { CKA_LABEL, "dup", 3 }, { CKA_LABEL, "dup", 3 } };
	assert_int_equal(fixture_count_objects(s, f2, 2), 1);
	CK_ATTRIBUTE f3[] = { { CKA_LABEL, "dup", 3 }, { CKA_LABEL, "dux", 3 } };
	assert_int_equal(fixture_count_objects(s, f3, 2), 0);
	/* Key generation templates with duplicates. */
	CK_ATTRIBUTE pub_dup[] = {
		{ CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len },
		{ CKA_EC_PARAMS, (void *)fx_p384, fx_p384_len },
	};
	CK_OBJECT_HANDLE pu, pr;
	CK_MECHANISM ecgen = { CKM_EC_KEY_PAIR_GEN, NULL, 0 };
	assert_int_equal(F->C_GenerateKeyPair(s, &ecgen, pub_dup, 2, NULL, 0, &pu, &pr), CKR_TEMPLATE_INCONSISTENT);
}

/* --- 4. invalid handles ----------------------------------------------------- */

static void test_invalid_handles(void **state)
{
	FX_FILE_TOKEN_ONLY("it needs a second token, and a device token is one slot");
	CK_MECHANISM ecdsa = { CKM_ECDSA_SHA256, NULL, 0 };
	const CK_SESSION_HANDLE bad_sessions[] = { 0, ~(CK_SESSION_HANDLE)0, 0x7fffffff, 12345 };
	const CK_OBJECT_HANDLE bad_objects[] = { 0, ~(CK_OBJECT_HANDLE)0, 0x3fffffff, 0x40000000 + 100000, 99999 };
	const CK_SLOT_ID bad_slots[] = { ~(CK_SLOT_ID)0, 1000, 0x80000000UL };
	CK_BYTE buf[256];
	CK_ULONG n = sizeof(buf);
	CK_OBJECT_HANDLE h;
	CK_SESSION_INFO si;
	CK_TOKEN_INFO ti;
	CK_SLOT_INFO sli;
	CK_MECHANISM_INFO mi;
	(void)state;

	for (size_t i = 0; i < FX_COUNT(bad_sessions); i++) {
		CK_SESSION_HANDLE b = bad_sessions[i];
		assert_int_equal(F->C_CloseSession(b), CKR_SESSION_HANDLE_INVALID);
		assert_int_equal(F->C_GetSessionInfo(b, &si), CKR_SESSION_HANDLE_INVALID);
		assert_int_equal(F->C_Login(b, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_SESSION_HANDLE_INVALID);
		assert_int_equal(F->C_Logout(b), CKR_SESSION_HANDLE_INVALID);
		assert_int_equal(F->C_FindObjectsInit(b, NULL, 0), CKR_SESSION_HANDLE_INVALID);
		assert_int_equal(F->C_SignInit(b, &ecdsa, ec_priv), CKR_SESSION_HANDLE_INVALID);
		assert_int_equal(F->C_Sign(b, (CK_BYTE_PTR)msg, 4, buf, &n), CKR_SESSION_HANDLE_INVALID);
		assert_int_equal(F->C_DestroyObject(b, ec_pub), CKR_SESSION_HANDLE_INVALID);
		assert_int_equal(F->C_GenerateRandom(b, buf, 4), CKR_SESSION_HANDLE_INVALID);
		assert_int_equal(F->C_SeedRandom(b, buf, 4), CKR_SESSION_HANDLE_INVALID);
		assert_int_equal(F->C_EncryptInit(b, &ecdsa, 0), CKR_SESSION_HANDLE_INVALID);
		if (F3)
			assert_int_equal(F3->C_SessionCancel(b, CKF_SIGN), CKR_SESSION_HANDLE_INVALID);
	}
	for (size_t i = 0; i < FX_COUNT(bad_slots); i++) {
		CK_SLOT_ID b = bad_slots[i];
		CK_SESSION_HANDLE x;
		CK_UTF8CHAR label[32];
		memset(label, ' ', sizeof(label));
		assert_int_equal(F->C_GetSlotInfo(b, &sli), CKR_SLOT_ID_INVALID);
		assert_int_equal(F->C_GetTokenInfo(b, &ti), CKR_SLOT_ID_INVALID);
		assert_int_equal(F->C_GetMechanismInfo(b, CKM_SHA256, &mi), CKR_SLOT_ID_INVALID);
		n = 0;
		assert_int_equal(F->C_GetMechanismList(b, NULL, &n), CKR_SLOT_ID_INVALID);
		assert_int_equal(F->C_OpenSession(b, CKF_SERIAL_SESSION, NULL, NULL, &x), CKR_SLOT_ID_INVALID);
		assert_int_equal(F->C_CloseAllSessions(b), CKR_SLOT_ID_INVALID);
		assert_int_equal(F->C_InitToken(b, FX_PIN(FX_SO_PIN), label), CKR_SLOT_ID_INVALID);
	}
	for (size_t i = 0; i < FX_COUNT(bad_objects); i++) {
		CK_OBJECT_HANDLE b = bad_objects[i];
		CK_ATTRIBUTE a = { CKA_LABEL, NULL, 0 };
		CK_ULONG sz;
		assert_int_equal(F->C_GetAttributeValue(s, b, &a, 1), CKR_OBJECT_HANDLE_INVALID);
		assert_int_equal(F->C_SetAttributeValue(s, b, &a, 1), CKR_OBJECT_HANDLE_INVALID);
		assert_int_equal(F->C_DestroyObject(s, b), CKR_OBJECT_HANDLE_INVALID);
		assert_int_equal(F->C_GetObjectSize(s, b, &sz), CKR_OBJECT_HANDLE_INVALID);
		assert_int_equal(F->C_CopyObject(s, b, NULL, 0, &h), CKR_OBJECT_HANDLE_INVALID);
		assert_int_equal(F->C_SignInit(s, &ecdsa, b), CKR_KEY_HANDLE_INVALID);
		assert_int_equal(F->C_VerifyInit(s, &ecdsa, b), CKR_KEY_HANDLE_INVALID);
		CK_MECHANISM wrap = { CKM_AES_KEY_WRAP_PAD, NULL, 0 };
		n = sizeof(buf);
		assert_int_equal(F->C_WrapKey(s, &wrap, b, b, buf, &n), CKR_WRAPPING_KEY_HANDLE_INVALID);
		CK_ATTRIBUTE ut[] = { { CKA_CLASS, &c_secret, sizeof(c_secret) }, { CKA_KEY_TYPE, &k_aes, sizeof(k_aes) } };
		assert_int_equal(F->C_UnwrapKey(s, &wrap, b, buf, 24, ut, 2, &h), CKR_UNWRAPPING_KEY_HANDLE_INVALID);
	}

	/* A closed session's handle. */
	CK_SESSION_HANDLE closed = fixture_open_session(slot, false);
	assert_int_equal(F->C_CloseSession(closed), CKR_OK);
	assert_int_equal(F->C_CloseSession(closed), CKR_SESSION_HANDLE_INVALID);
	assert_int_equal(F->C_GetSessionInfo(closed, &si), CKR_SESSION_HANDLE_INVALID);
	assert_int_equal(F->C_SignInit(closed, &ecdsa, ec_priv), CKR_SESSION_HANDLE_INVALID);

	/* A session object of a closed session is gone. */
	CK_SESSION_HANDLE tmp = fixture_open_session(slot, true);
	CK_OBJECT_HANDLE gone = make_data(tmp, "gone", false);
	assert_int_equal(F->C_CloseSession(tmp), CKR_OK);
	CK_ATTRIBUTE a = { CKA_LABEL, NULL, 0 };
	assert_int_equal(F->C_GetAttributeValue(s, gone, &a, 1), CKR_OBJECT_HANDLE_INVALID);
	assert_int_equal(F->C_DestroyObject(s, gone), CKR_OBJECT_HANDLE_INVALID);

	/* A destroyed object's handle. */
	h = make_data(s, "destroyed", false);
	assert_int_equal(F->C_DestroyObject(s, h), CKR_OK);
	assert_int_equal(F->C_DestroyObject(s, h), CKR_OBJECT_HANDLE_INVALID);
	assert_int_equal(F->C_GetAttributeValue(s, h, &a, 1), CKR_OBJECT_HANDLE_INVALID);

	/* Wrong kind of key for the call. */
	CK_OBJECT_HANDLE d = make_data(s, "not a key", false);
	assert_int_equal(F->C_SignInit(s, &ecdsa, d), CKR_KEY_TYPE_INCONSISTENT);
	assert_int_equal(F->C_SignInit(s, &ecdsa, ec_pub), CKR_KEY_TYPE_INCONSISTENT);

	/* Handles from another token: whatever they name there, the answer is
	 * about this token and nothing crashes. */
	CK_SLOT_ID other = fixture_init_token_label("other");
	CK_SESSION_HANDLE so = fixture_open_user_session(other);
	CK_OBJECT_HANDLE od = make_data(so, "other data", true);
	CK_OBJECT_HANDLE os = make_data(so, "other session data", false);
	CK_BYTE lab[64];
	CK_ATTRIBUTE al = { CKA_LABEL, lab, sizeof(lab) };
	CK_RV rv = F->C_GetAttributeValue(s, od, &al, 1);
	if (rv == CKR_OK)
		assert_false(al.ulValueLen == strlen("other data") && memcmp(lab, "other data", al.ulValueLen) == 0);
	al.ulValueLen = sizeof(lab);
	rv = F->C_GetAttributeValue(s, os, &al, 1);
	if (rv == CKR_OK)
		assert_false(al.ulValueLen == strlen("other session data") &&
			     memcmp(lab, "other session data", al.ulValueLen) == 0);
	rv = F->C_SignInit(so, &ecdsa, ec_priv);
	if (rv == CKR_OK) /* it must not be *our* key */
		fail_msg("a key handle of one token signed in a session of another");
	/* and the other token's session still works */
	assert_int_equal(F->C_DestroyObject(so, od), CKR_OK);
	assert_int_equal(F->C_CloseSession(so), CKR_OK);

	assert_session_signs(s, ec_priv, ec_pub);
}

/* --- 5. objects destroyed under running operations ------------------------- */

static void test_destroy_during_operations(void **state)
{
	CK_MECHANISM ecdsa = { CKM_ECDSA_SHA256, NULL, 0 };
	CK_OBJECT_HANDLE found[8], pub, priv;
	CK_ULONG n;
	CK_BYTE sig[128];
	(void)state;

	/* find */
	CK_OBJECT_HANDLE a = make_data(s, "find-me", false), b = make_data(s, "find-me", true);
	CK_ATTRIBUTE t[] = { { CKA_LABEL, "find-me", 7 } };
	assert_int_equal(F->C_FindObjectsInit(s, t, 1), CKR_OK);
	assert_int_equal(F->C_DestroyObject(s, a), CKR_OK);
	assert_int_equal(F->C_DestroyObject(s, b), CKR_OK);
	assert_int_equal(F->C_FindObjects(s, found, FX_COUNT(found), &n), CKR_OK);
	assert_true(n <= 2);
	for (CK_ULONG i = 0; i < n; i++) {
		CK_ATTRIBUTE x = { CKA_LABEL, NULL, 0 };
		assert_int_equal(F->C_GetAttributeValue(s, found[i], &x, 1), CKR_OBJECT_HANDLE_INVALID);
	}
	assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);
	/* a find in one session while another session closes (its objects go) */
	CK_SESSION_HANDLE s2 = fixture_open_session(slot, true);
	make_data(s2, "find-me-2", false);
	CK_ATTRIBUTE t2[] = { { CKA_LABEL, "find-me-2", 9 } };
	assert_int_equal(F->C_FindObjectsInit(s, t2, 1), CKR_OK);
	assert_int_equal(F->C_CloseSession(s2), CKR_OK);
	assert_int_equal(F->C_FindObjects(s, found, FX_COUNT(found), &n), CKR_OK);
	assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);

	/* sign: the key destroyed between init and sign */
	assert_int_equal(fixture_gen_ec(s, fx_p256, fx_p256_len, &pub, &priv), CKR_OK);
	assert_int_equal(F->C_SignInit(s, &ecdsa, priv), CKR_OK);
	assert_int_equal(F->C_SignUpdate(s, (CK_BYTE_PTR)msg, 5), CKR_OK);
	assert_int_equal(F->C_DestroyObject(s, priv), CKR_OK);
	n = sizeof(sig);
	CK_RV rv = F->C_SignFinal(s, sig, &n); /* OK or an error: no crash, op ends */
	(void)rv;
	assert_int_equal(F->C_SignFinal(s, sig, &n), CKR_OPERATION_NOT_INITIALIZED);
	/* verify: the key destroyed */
	assert_int_equal(F->C_VerifyInit(s, &ecdsa, pub), CKR_OK);
	assert_int_equal(F->C_DestroyObject(s, pub), CKR_OK);
	rv = F->C_Verify(s, (CK_BYTE_PTR)msg, sizeof(msg), sig, 64);
	assert_int_not_equal(rv, CKR_OK); /* random bytes never verify */

	/* token key destroyed, then the token reloaded, during a sign */
	CK_ATTRIBUTE tok[] = { { CKA_TOKEN, &fx_true, 1 } };
	assert_int_equal(fixture_gen_keypair(s, CKM_EC_KEY_PAIR_GEN,
					     (CK_ATTRIBUTE[]){ { CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len },
							       { CKA_TOKEN, &fx_true, 1 } },
					     2, tok, 1, &pub, &priv),
			 CKR_OK);
	assert_int_equal(F->C_SignInit(s, &ecdsa, priv), CKR_OK);
	assert_int_equal(F->C_DestroyObject(s, priv), CKR_OK);
	n = sizeof(sig);
	(void)F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg), sig, &n);
	assert_int_equal(F->C_DestroyObject(s, pub), CKR_OK);

	/* logout during a sign: the private key must not be used any more */
	assert_int_equal(fixture_gen_ec(s, fx_p256, fx_p256_len, &pub, &priv), CKR_OK);
	assert_int_equal(F->C_SignInit(s, &ecdsa, priv), CKR_OK);
	assert_int_equal(F->C_Logout(s), CKR_OK);
	n = sizeof(sig);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg), sig, &n), CKR_USER_NOT_LOGGED_IN);
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);

	/* C_SessionCancel of an operation, then a stale Sign */
	if (F3) {
		assert_int_equal(fixture_gen_ec(s, fx_p256, fx_p256_len, &pub, &priv), CKR_OK);
		assert_int_equal(F->C_SignInit(s, &ecdsa, priv), CKR_OK);
		assert_int_equal(F3->C_SessionCancel(s, CKF_SIGN), CKR_OK);
		n = sizeof(sig);
		assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg), sig, &n), CKR_OPERATION_NOT_INITIALIZED);
		assert_int_equal(F->C_FindObjectsInit(s, NULL, 0), CKR_OK);
		assert_int_equal(F3->C_SessionCancel(s, CKF_FIND_OBJECTS), CKR_OK);
		assert_int_equal(F->C_FindObjects(s, found, 1, &n), CKR_OPERATION_NOT_INITIALIZED);
		assert_session_signs(s, priv, pub);
	}
}

/* --- 6. C_CloseSession while another thread signs in it -------------------- */

struct signer {
	CK_SESSION_HANDLE session;
	CK_OBJECT_HANDLE key;
	volatile bool stop;
	unsigned ok, closed, other;
	CK_RV last_other;
};

static void *sign_loop(void *arg)
{
	struct signer *w = arg;
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	CK_BYTE sig[128];

	while (!w->stop) {
		CK_ULONG n = sizeof(sig);
		CK_RV rv = F->C_SignInit(w->session, &m, w->key);
		if (rv == CKR_OK)
			rv = F->C_SignUpdate(w->session, (CK_BYTE_PTR)msg, sizeof(msg));
		if (rv == CKR_OK)
			rv = F->C_SignFinal(w->session, sig, &n);
		if (rv == CKR_OK)
			w->ok++;
		else if (rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED)
			w->closed++;
		else if (rv != CKR_OPERATION_ACTIVE && rv != CKR_OPERATION_NOT_INITIALIZED)
			/* the two threads share the session, so they may
			 * meet each other's operation; anything else is wrong */
			w->other++, w->last_other = rv;
		if (w->closed > 3)
			break;
	}
	return NULL;
}

static void test_close_session_while_signing(void **state)
{
	(void)state;
	unsigned total_ok = 0;

	for (int round = 0; round < 30; round++) {
		struct signer w[2] = { { 0 } };
		pthread_t th[2];
		CK_SESSION_HANDLE victim = fixture_open_session(slot, true);
		for (int i = 0; i < 2; i++) {
			w[i].session = victim;
			w[i].key = ec_priv;
			assert_int_equal(pthread_create(&th[i], NULL, sign_loop, &w[i]), 0);
		}
		usleep(2000 + (round % 5) * 1000);
		if (round % 3 == 2)
			assert_int_equal(F->C_CloseAllSessions(slot), CKR_OK);
		else
			assert_int_equal(F->C_CloseSession(victim), CKR_OK);
		usleep(1000);
		for (int i = 0; i < 2; i++) {
			w[i].stop = true;
			pthread_join(th[i], NULL);
			total_ok += w[i].ok;
			if (w[i].other)
				fail_msg("signer got 0x%lx", w[i].last_other);
		}
		if (round % 3 == 2) {
			/* everything closed: log in again, new key pair */
			s = fixture_open_user_session(slot);
			assert_int_equal(fixture_gen_ec(s, fx_p256, fx_p256_len, &ec_pub, &ec_priv), CKR_OK);
		}
	}
	assert_true(total_ok > 0); /* positive control: the threads did sign */
	assert_session_signs(s, ec_priv, ec_pub);
}

/* --- 7. operations after C_Finalize -------------------------------------- */

static void test_after_finalize(void **state)
{
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	CK_INFO info;
	CK_SLOT_INFO si;
	CK_TOKEN_INFO ti;
	CK_SESSION_INFO ssi;
	CK_MECHANISM_INFO mi;
	CK_ULONG n = 4;
	CK_BYTE buf[128];
	CK_SLOT_ID slots[4], ev;
	CK_SESSION_HANDLE h;
	CK_OBJECT_HANDLE o;
	CK_UTF8CHAR label[32];
	CK_ATTRIBUTE a = { CKA_LABEL, NULL, 0 };
	(void)state;

	memset(label, ' ', sizeof(label));
	assert_int_equal(F->C_Finalize(buf), CKR_ARGUMENTS_BAD); /* pReserved must be NULL */
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
	assert_int_equal(F->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);

	const CK_RV NI = CKR_CRYPTOKI_NOT_INITIALIZED;
	assert_int_equal(F->C_GetInfo(&info), NI);
	assert_int_equal(F->C_GetSlotList(CK_FALSE, slots, &n), NI);
	assert_int_equal(F->C_GetSlotInfo(slot, &si), NI);
	assert_int_equal(F->C_GetTokenInfo(slot, &ti), NI);
	assert_int_equal(F->C_GetMechanismList(slot, NULL, &n), NI);
	assert_int_equal(F->C_GetMechanismInfo(slot, CKM_SHA256, &mi), NI);
	assert_int_equal(F->C_InitToken(slot, FX_PIN(FX_SO_PIN), label), NI);
	assert_int_equal(F->C_InitPIN(s, FX_PIN(FX_USER_PIN)), NI);
	assert_int_equal(F->C_SetPIN(s, FX_PIN(FX_USER_PIN), FX_PIN(FX_USER_PIN)), NI);
	assert_int_equal(F->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h), NI);
	assert_int_equal(F->C_CloseSession(s), NI);
	assert_int_equal(F->C_CloseAllSessions(slot), NI);
	assert_int_equal(F->C_GetSessionInfo(s, &ssi), NI);
	assert_int_equal(F->C_GetOperationState(s, NULL, &n), NI);
	assert_int_equal(F->C_SetOperationState(s, buf, 4, 0, 0), NI);
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), NI);
	assert_int_equal(F->C_Logout(s), NI);
	assert_int_equal(F->C_CreateObject(s, &a, 1, &o), NI);
	assert_int_equal(F->C_CopyObject(s, ec_pub, NULL, 0, &o), NI);
	assert_int_equal(F->C_DestroyObject(s, ec_pub), NI);
	assert_int_equal(F->C_GetObjectSize(s, ec_pub, &n), NI);
	assert_int_equal(F->C_GetAttributeValue(s, ec_pub, &a, 1), NI);
	assert_int_equal(F->C_SetAttributeValue(s, ec_pub, &a, 1), NI);
	assert_int_equal(F->C_FindObjectsInit(s, NULL, 0), NI);
	assert_int_equal(F->C_FindObjects(s, &o, 1, &n), NI);
	assert_int_equal(F->C_FindObjectsFinal(s), NI);
	assert_int_equal(F->C_EncryptInit(s, &m, ec_pub), NI);
	assert_int_equal(F->C_DigestInit(s, &m), NI);
	assert_int_equal(F->C_Digest(s, buf, 4, buf, &n), NI);
	assert_int_equal(F->C_DigestUpdate(s, buf, 4), NI);
	assert_int_equal(F->C_DigestFinal(s, buf, &n), NI);
	assert_int_equal(F->C_SignInit(s, &m, ec_priv), NI);
	assert_int_equal(F->C_Sign(s, buf, 4, buf, &n), NI);
	assert_int_equal(F->C_SignUpdate(s, buf, 4), NI);
	assert_int_equal(F->C_SignFinal(s, buf, &n), NI);
	assert_int_equal(F->C_VerifyInit(s, &m, ec_pub), NI);
	assert_int_equal(F->C_Verify(s, buf, 4, buf, 64), NI);
	assert_int_equal(F->C_VerifyUpdate(s, buf, 4), NI);
	assert_int_equal(F->C_VerifyFinal(s, buf, 64), NI);
	assert_int_equal(F->C_GenerateKey(s, &m, NULL, 0, &o), NI);
	assert_int_equal(F->C_GenerateKeyPair(s, &m, NULL, 0, NULL, 0, &o, &o), NI);
	assert_int_equal(F->C_WrapKey(s, &m, 1, 1, buf, &n), NI);
	assert_int_equal(F->C_UnwrapKey(s, &m, 1, buf, 24, NULL, 0, &o), NI);
	assert_int_equal(F->C_SeedRandom(s, buf, 4), NI);
	assert_int_equal(F->C_GenerateRandom(s, buf, 4), NI);
	assert_int_equal(F->C_GetFunctionStatus(s), NI);
	assert_int_equal(F->C_CancelFunction(s), NI);
	assert_int_equal(F->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL), NI);
	if (F3) {
		assert_int_equal(F3->C_GetInfo(&info), NI);
		assert_int_equal(F3->C_LoginUser(s, CKU_USER, FX_PIN(FX_USER_PIN), NULL, 0), NI);
		assert_int_equal(F3->C_LoginUser(s, CKU_USER, FX_PIN(FX_USER_PIN), (CK_UTF8CHAR_PTR) "u", 1), NI);
		assert_int_equal(F3->C_SessionCancel(s, CKF_SIGN), NI);
		assert_int_equal(F3->C_MessageSignInit(s, &m, 1), NI);
	}
	/* These work without initialisation. */
	CK_FUNCTION_LIST_PTR fl;
	assert_int_equal(F->C_GetFunctionList(&fl), CKR_OK);

	/* Initialise again: old handles stay invalid, the token is still there. */
	assert_int_equal(fixture_initialize(), CKR_OK);
	assert_int_equal(fixture_initialize(), CKR_CRYPTOKI_ALREADY_INITIALIZED);
	CK_C_INITIALIZE_ARGS half = { .CreateMutex = (CK_CREATEMUTEX)1 };
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
	assert_int_equal(F->C_Initialize(&half), CKR_ARGUMENTS_BAD);
	assert_int_equal(fixture_initialize(), CKR_OK);
	assert_int_equal(F->C_GetSessionInfo(s, &ssi), CKR_SESSION_HANDLE_INVALID);
	slot = fixture_slot_by_label("test");
	s = fixture_open_user_session(slot);
	assert_int_equal(fixture_gen_ec(s, fx_p256, fx_p256_len, &ec_pub, &ec_priv), CKR_OK);
	assert_session_signs(s, ec_priv, ec_pub);
}

/* --- 8. C_Finalize while other threads are in calls ---------------------- */

struct busy {
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE session;
	CK_OBJECT_HANDLE key, pub;
	volatile bool stop;
	unsigned calls, not_init;
	int kind;
};

static void *busy_loop(void *arg)
{
	struct busy *b = arg;
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	CK_BYTE sig[128];
	CK_TOKEN_INFO ti;
	CK_OBJECT_HANDLE h[8];

	while (!b->stop) {
		CK_ULONG n = sizeof(sig);
		CK_RV rv;
		switch (b->kind) {
		case 0:
			rv = F->C_SignInit(b->session, &m, b->key);
			if (rv == CKR_OK)
				rv = F->C_Sign(b->session, (CK_BYTE_PTR)msg, sizeof(msg), sig, &n);
			break;
		case 1:
			rv = F->C_GetTokenInfo(b->slot, &ti);
			break;
		case 2:
			rv = F->C_FindObjectsInit(b->session, NULL, 0);
			if (rv == CKR_OK)
				rv = F->C_FindObjects(b->session, h, 8, &n);
			if (rv == CKR_OK)
				rv = F->C_FindObjectsFinal(b->session);
			break;
		default: {
			CK_SESSION_HANDLE x;
			rv = F->C_OpenSession(b->slot, CKF_SERIAL_SESSION, NULL, NULL, &x);
			if (rv == CKR_OK)
				rv = F->C_CloseSession(x);
			break;
		}
		}
		b->calls++;
		if (rv == CKR_CRYPTOKI_NOT_INITIALIZED && ++b->not_init > 50)
			break;
	}
	return NULL;
}

static void test_finalize_while_busy(void **state)
{
	(void)state;
	FX_KOLTAMGA_ONLY();
	unsigned calls = 0;

	for (int round = 0; round < 10; round++) {
		struct busy b[4];
		pthread_t th[4];
		for (int i = 0; i < 4; i++) {
			memset(&b[i], 0, sizeof(b[i]));
			b[i].slot = slot;
			b[i].session = s;
			b[i].key = ec_priv;
			b[i].kind = i;
			assert_int_equal(pthread_create(&th[i], NULL, busy_loop, &b[i]), 0);
		}
		usleep(3000);
		assert_int_equal(F->C_Finalize(NULL), CKR_OK);
		usleep(2000);
		for (int i = 0; i < 4; i++) {
			b[i].stop = true;
			pthread_join(th[i], NULL);
			calls += b[i].calls;
		}
		assert_int_equal(fixture_initialize(), CKR_OK);
		slot = fixture_slot_by_label("test");
		s = fixture_open_user_session(slot);
		assert_int_equal(fixture_gen_ec(s, fx_p256, fx_p256_len, &ec_pub, &ec_priv), CKR_OK);
	}
	assert_true(calls > 0);
	assert_session_signs(s, ec_priv, ec_pub);
}

/* --- 9. malformed mechanism parameters ------------------------------------ */

static void test_mechanism_params(void **state)
{
	CK_OBJECT_HANDLE rpub, rpriv, edpub, edpriv, aes_key, wrapped_key;
	CK_RSA_PKCS_PSS_PARAMS pss = { CKM_SHA256, CKG_MGF1_SHA256, 32 };
	CK_BYTE buf[600];
	CK_ULONG n;
	struct {
		CK_BBOOL ph;
		CK_ULONG ctx_len;
		CK_BYTE_PTR ctx;
	} eddsa = { CK_FALSE, 0, NULL };
	(void)state;

	assert_int_equal(fixture_gen_rsa(s, 2048, &rpub, &rpriv), CKR_OK);
	assert_int_equal(fixture_gen_eddsa(s, fx_ed25519, fx_ed25519_len, &edpub, &edpriv), CKR_OK);
	assert_int_equal(fixture_gen_aes(s, 32, NULL, 0, &aes_key), CKR_OK);
	CK_ATTRIBUTE ext[] = { { CKA_EXTRACTABLE, &fx_true, 1 }, { CKA_SENSITIVE, &fx_false, 1 } };
	assert_int_equal(fixture_gen_aes(s, 16, ext, 2, &wrapped_key), CKR_OK);

	const CK_MECHANISM_TYPE pss_mechs[] = { CKM_RSA_PKCS_PSS, CKM_SHA256_RSA_PKCS_PSS };
	for (size_t i = 0; i < FX_COUNT(pss_mechs); i++) {
		CK_MECHANISM m = { pss_mechs[i], NULL, sizeof(pss) };
		assert_int_equal(F->C_SignInit(s, &m, rpriv), CKR_MECHANISM_PARAM_INVALID); /* NULL, len */
		m.pParameter = &pss;
		m.ulParameterLen = 0;
		assert_int_equal(F->C_SignInit(s, &m, rpriv), CKR_MECHANISM_PARAM_INVALID);
		m.ulParameterLen = sizeof(pss) - 1;
		assert_int_equal(F->C_SignInit(s, &m, rpriv), CKR_MECHANISM_PARAM_INVALID);
		m.ulParameterLen = sizeof(pss) + 8;
		assert_int_equal(F->C_SignInit(s, &m, rpriv), CKR_MECHANISM_PARAM_INVALID);
		m.ulParameterLen = UNAVAIL;
		assert_int_equal(F->C_SignInit(s, &m, rpriv), CKR_MECHANISM_PARAM_INVALID);
		m.ulParameterLen = sizeof(pss);
		CK_RSA_PKCS_PSS_PARAMS bad = pss;
		m.pParameter = &bad;
		bad.hashAlg = CKM_SHA256_RSA_PKCS; /* not a digest */
		assert_int_equal(F->C_SignInit(s, &m, rpriv), CKR_MECHANISM_PARAM_INVALID);
		bad = pss;
		bad.mgf = 0xdeadbeef;
		assert_int_equal(F->C_SignInit(s, &m, rpriv), CKR_MECHANISM_PARAM_INVALID);
		bad = pss;
		bad.sLen = ~(CK_ULONG)0;
		assert_int_equal(F->C_SignInit(s, &m, rpriv), CKR_MECHANISM_PARAM_INVALID);
		bad.sLen = 250; /* fits 2048/8 but leaves no room for the hash */
		assert_int_equal(F->C_SignInit(s, &m, rpriv), CKR_MECHANISM_PARAM_INVALID);
		assert_int_equal(F->C_VerifyInit(s, &m, rpub), CKR_MECHANISM_PARAM_INVALID);
		/* positive control */
		m.pParameter = &pss;
		assert_int_equal(F->C_SignInit(s, &m, rpriv), CKR_OK);
		n = sizeof(buf);
		if (pss_mechs[i] == CKM_RSA_PKCS_PSS) {
			assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)hash32, 31, buf, &n), CKR_DATA_LEN_RANGE);
			assert_int_equal(F->C_SignInit(s, &m, rpriv), CKR_OK);
			n = sizeof(buf);
			assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)hash32, 32, buf, &n), CKR_OK);
		} else {
			assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg), buf, &n), CKR_OK);
		}
		assert_int_equal(n, 256);
	}
	/* SHA384-PSS with a SHA256 hashAlg contradicts itself */
	CK_MECHANISM m384 = { CKM_SHA384_RSA_PKCS_PSS, &pss, sizeof(pss) };
	assert_int_equal(F->C_SignInit(s, &m384, rpriv), CKR_MECHANISM_PARAM_INVALID);

	/* A parameter where none belongs */
	CK_MECHANISM p1 = { CKM_SHA256_RSA_PKCS, buf, 4 };
	assert_int_equal(F->C_SignInit(s, &p1, rpriv), CKR_MECHANISM_PARAM_INVALID);
	CK_MECHANISM p2 = { CKM_SHA256_RSA_PKCS, NULL, 4 };
	assert_int_equal(F->C_SignInit(s, &p2, rpriv), CKR_MECHANISM_PARAM_INVALID);
	CK_MECHANISM p3 = { CKM_SHA256, NULL, 8 };
	assert_int_equal(F->C_DigestInit(s, &p3), CKR_MECHANISM_PARAM_INVALID);
	CK_MECHANISM p4 = { CKM_SHA256_RSA_PKCS, buf, 0 }; /* pointer, no length: accepted */
	assert_int_equal(F->C_SignInit(s, &p4, rpriv), CKR_OK);
	n = sizeof(buf);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg), buf, &n), CKR_OK);

	/* Unknown and misused mechanisms */
	CK_MECHANISM unk = { 0x8000beef, NULL, 0 };
	assert_int_equal(F->C_SignInit(s, &unk, rpriv), CKR_MECHANISM_INVALID);
	assert_int_equal(F->C_DigestInit(s, &unk), CKR_MECHANISM_INVALID);
	CK_MECHANISM digest_as_sign = { CKM_SHA256, NULL, 0 };
	assert_int_equal(F->C_SignInit(s, &digest_as_sign, rpriv), CKR_MECHANISM_INVALID);
	CK_MECHANISM ec_on_rsa = { CKM_ECDSA_SHA256, NULL, 0 };
	assert_int_equal(F->C_SignInit(s, &ec_on_rsa, rpriv), CKR_KEY_TYPE_INCONSISTENT);

	/* EdDSA */
	CK_MECHANISM ed = { CKM_EDDSA, NULL, sizeof(eddsa) };
	assert_int_equal(F->C_SignInit(s, &ed, edpriv), CKR_MECHANISM_PARAM_INVALID);
	ed.pParameter = &eddsa;
	ed.ulParameterLen = sizeof(eddsa) - 1;
	assert_int_equal(F->C_SignInit(s, &ed, edpriv), CKR_MECHANISM_PARAM_INVALID);
	ed.ulParameterLen = 1;
	assert_int_equal(F->C_SignInit(s, &ed, edpriv), CKR_MECHANISM_PARAM_INVALID);
	ed.ulParameterLen = UNAVAIL;
	assert_int_equal(F->C_SignInit(s, &ed, edpriv), CKR_MECHANISM_PARAM_INVALID);
	ed.ulParameterLen = sizeof(eddsa);
	eddsa.ph = 5;
	assert_int_equal(F->C_SignInit(s, &ed, edpriv), CKR_MECHANISM_PARAM_INVALID);
	eddsa.ph = CK_FALSE;
	eddsa.ctx_len = 100; /* context with a NULL pointer */
	assert_int_equal(F->C_SignInit(s, &ed, edpriv), CKR_MECHANISM_PARAM_INVALID);
	eddsa.ctx_len = 0;
	assert_int_equal(F->C_SignInit(s, &ed, edpriv), CKR_OK); /* positive */
	n = sizeof(buf);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg), buf, &n), CKR_OK);
	assert_int_equal(n, 64);

	/* AES key wrap */
	const CK_MECHANISM_TYPE wraps[] = { CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD };
	for (size_t i = 0; i < FX_COUNT(wraps); i++) {
		CK_ULONG iv_len = wraps[i] == CKM_AES_KEY_WRAP ? 8 : 4;
		CK_MECHANISM w = { wraps[i], NULL, iv_len };
		CK_OBJECT_HANDLE h;
		CK_ATTRIBUTE ut[] = { { CKA_CLASS, &c_secret, sizeof(c_secret) },
				      { CKA_KEY_TYPE, &k_aes, sizeof(k_aes) } };
		n = sizeof(buf);
		assert_int_equal(F->C_WrapKey(s, &w, aes_key, wrapped_key, buf, &n), CKR_MECHANISM_PARAM_INVALID);
		assert_int_equal(F->C_UnwrapKey(s, &w, aes_key, buf, 24, ut, 2, &h), CKR_MECHANISM_PARAM_INVALID);
		w.pParameter = buf;
		w.ulParameterLen = iv_len + 1;
		n = sizeof(buf);
		assert_int_equal(F->C_WrapKey(s, &w, aes_key, wrapped_key, buf, &n), CKR_MECHANISM_PARAM_INVALID);
		w.ulParameterLen = UNAVAIL;
		n = sizeof(buf);
		assert_int_equal(F->C_WrapKey(s, &w, aes_key, wrapped_key, buf, &n), CKR_MECHANISM_PARAM_INVALID);
		w.ulParameterLen = 3;
		assert_int_equal(F->C_UnwrapKey(s, &w, aes_key, buf, 24, ut, 2, &h), CKR_MECHANISM_PARAM_INVALID);
		/* positive: wrap and unwrap with no IV */
		CK_MECHANISM ok = { wraps[i], NULL, 0 };
		CK_BYTE wrapped[64];
		n = sizeof(wrapped);
		assert_int_equal(F->C_WrapKey(s, &ok, aes_key, wrapped_key, wrapped, &n), CKR_OK);
		assert_int_equal(F->C_UnwrapKey(s, &ok, aes_key, wrapped, n, ut, 2, &h), CKR_OK);
		/* tampered wrapped key */
		wrapped[3] ^= 1;
		/* SoftHSM2 as a device answers CKR_GENERAL_ERROR, passed on as
		 * CKR_DEVICE_ERROR. */
		CK_RV tampered = F->C_UnwrapKey(s, &ok, aes_key, wrapped, n, ut, 2, &h);
		if (fx.device && tampered == CKR_DEVICE_ERROR)
			tampered = CKR_WRAPPED_KEY_INVALID;
		assert_int_equal(tampered, CKR_WRAPPED_KEY_INVALID);
		/* lengths that are no wrapping */
		assert_int_equal(F->C_UnwrapKey(s, &ok, aes_key, wrapped, n - 1, ut, 2, &h),
				 CKR_WRAPPED_KEY_LEN_RANGE);
		assert_int_equal(F->C_UnwrapKey(s, &ok, aes_key, wrapped, 8, ut, 2, &h), CKR_WRAPPED_KEY_LEN_RANGE);
	}
	/* Key generation with parameters where none belong */
	CK_MECHANISM gen = { CKM_AES_KEY_GEN, buf, 16 };
	CK_ULONG sixteen = 16;
	CK_ATTRIBUTE gt[] = { { CKA_VALUE_LEN, &sixteen, sizeof(sixteen) } };
	CK_OBJECT_HANDLE h;
	assert_int_equal(F->C_GenerateKey(s, &gen, gt, 1, &h), CKR_MECHANISM_PARAM_INVALID);
	CK_ULONG zero = 0, huge_bits = ~(CK_ULONG)0;
	CK_ATTRIBUTE gz[] = { { CKA_VALUE_LEN, &zero, sizeof(zero) } };
	gen.pParameter = NULL;
	gen.ulParameterLen = 0;
	assert_int_equal(F->C_GenerateKey(s, &gen, gz, 1, &h), CKR_KEY_SIZE_RANGE);
	CK_ATTRIBUTE gh[] = { { CKA_VALUE_LEN, &huge_bits, sizeof(huge_bits) } };
	assert_int_equal(F->C_GenerateKey(s, &gen, gh, 1, &h), CKR_KEY_SIZE_RANGE);
	CK_MECHANISM gg = { CKM_GENERIC_SECRET_KEY_GEN, NULL, 0 };
	assert_int_equal(F->C_GenerateKey(s, &gg, gh, 1, &h), CKR_KEY_SIZE_RANGE);
	CK_OBJECT_HANDLE pu, pr;
	CK_ATTRIBUTE rb[] = { { CKA_MODULUS_BITS, &huge_bits, sizeof(huge_bits) } };
	assert_int_equal(fixture_gen_keypair(s, CKM_RSA_PKCS_KEY_PAIR_GEN, rb, 1, NULL, 0, &pu, &pr),
			 CKR_KEY_SIZE_RANGE);
	CK_ATTRIBUTE rz[] = { { CKA_MODULUS_BITS, &zero, sizeof(zero) } };
	assert_int_equal(fixture_gen_keypair(s, CKM_RSA_PKCS_KEY_PAIR_GEN, rz, 1, NULL, 0, &pu, &pr),
			 CKR_KEY_SIZE_RANGE);
	CK_BYTE even_e[] = { 0x01, 0x00, 0x00 }, big_e[16];
	memset(big_e, 0xff, sizeof(big_e));
	CK_ULONG bits = 2048;
	CK_ATTRIBUTE re[] = { { CKA_MODULUS_BITS, &bits, sizeof(bits) }, { CKA_PUBLIC_EXPONENT, even_e, 3 } };
	assert_true(rv_is_error(fixture_gen_keypair(s, CKM_RSA_PKCS_KEY_PAIR_GEN, re, 2, NULL, 0, &pu, &pr)));
	re[1].pValue = big_e;
	re[1].ulValueLen = sizeof(big_e);
	assert_true(rv_is_error(fixture_gen_keypair(s, CKM_RSA_PKCS_KEY_PAIR_GEN, re, 2, NULL, 0, &pu, &pr)));
	re[1].ulValueLen = 0;
	assert_true(rv_is_error(fixture_gen_keypair(s, CKM_RSA_PKCS_KEY_PAIR_GEN, re, 2, NULL, 0, &pu, &pr)));
	/* EC generation with garbage and mismatched parameters */
	CK_BYTE garbage[] = { 0x06, 0x80, 0x01 };
	assert_true(rv_is_error(fixture_gen_ec(s, garbage, sizeof(garbage), &pu, &pr)));
	assert_true(rv_is_error(fixture_gen_ec(s, garbage, 0, &pu, &pr)));
	assert_true(rv_is_error(fixture_gen_ec(s, fx_ed25519, fx_ed25519_len, &pu, &pr)));
	assert_true(rv_is_error(fixture_gen_eddsa(s, fx_p256, fx_p256_len, &pu, &pr)));
	CK_ATTRIBUTE pubp[] = { { CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len } };
	CK_ATTRIBUTE privp[] = { { CKA_EC_PARAMS, (void *)fx_p384, fx_p384_len } };
	assert_int_equal(fixture_gen_keypair(s, CKM_EC_KEY_PAIR_GEN, pubp, 1, privp, 1, &pu, &pr),
			 CKR_TEMPLATE_INCONSISTENT);
	assert_session_signs(s, ec_priv, ec_pub);
}

/* --- 10. random templates for C_CreateObject ------------------------------ */

static uint64_t rng_state;

static uint32_t rnd(void)
{
	/* xorshift64*: reproducible from the seed printed on failure */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (uint32_t)((rng_state * 0x2545F4914F6CDD1DULL) >> 32);
}

static const CK_ATTRIBUTE_TYPE attr_pool[] = {
	CKA_CLASS, CKA_TOKEN, CKA_PRIVATE, CKA_LABEL, CKA_APPLICATION, CKA_VALUE, CKA_OBJECT_ID,
	CKA_CERTIFICATE_TYPE, CKA_ISSUER, CKA_SERIAL_NUMBER, CKA_TRUSTED, CKA_CERTIFICATE_CATEGORY,
	CKA_CHECK_VALUE, CKA_KEY_TYPE, CKA_SUBJECT, CKA_ID, CKA_SENSITIVE, CKA_ENCRYPT, CKA_DECRYPT,
	CKA_WRAP, CKA_UNWRAP, CKA_SIGN, CKA_SIGN_RECOVER, CKA_VERIFY, CKA_VERIFY_RECOVER, CKA_DERIVE,
	CKA_START_DATE, CKA_END_DATE, CKA_MODULUS, CKA_MODULUS_BITS, CKA_PUBLIC_EXPONENT,
	CKA_PRIVATE_EXPONENT, CKA_PRIME_1, CKA_PRIME_2, CKA_EXPONENT_1, CKA_EXPONENT_2, CKA_COEFFICIENT,
	CKA_PUBLIC_KEY_INFO, CKA_VALUE_LEN, CKA_EXTRACTABLE, CKA_LOCAL, CKA_NEVER_EXTRACTABLE,
	CKA_ALWAYS_SENSITIVE, CKA_KEY_GEN_MECHANISM, CKA_MODIFIABLE, CKA_COPYABLE, CKA_DESTROYABLE,
	CKA_EC_PARAMS, CKA_EC_POINT, CKA_ALWAYS_AUTHENTICATE, CKA_WRAP_WITH_TRUSTED,
	CKA_ALLOWED_MECHANISMS, CKA_URL, CKA_HASH_OF_SUBJECT_PUBLIC_KEY, CKA_HASH_OF_ISSUER_PUBLIC_KEY,
	CKA_NAME_HASH_ALGORITHM, CKA_JAVA_MIDP_SECURITY_DOMAIN, CKA_UNIQUE_ID, 0x12345, CKA_VENDOR_DEFINED | 7,
	~(CK_ATTRIBUTE_TYPE)0,
};

static bool is_bool_attr(CK_ATTRIBUTE_TYPE t)
{
	switch (t) {
	case CKA_TOKEN: case CKA_PRIVATE: case CKA_TRUSTED: case CKA_SENSITIVE: case CKA_ENCRYPT:
	case CKA_DECRYPT: case CKA_WRAP: case CKA_UNWRAP: case CKA_SIGN: case CKA_SIGN_RECOVER:
	case CKA_VERIFY: case CKA_VERIFY_RECOVER: case CKA_DERIVE: case CKA_EXTRACTABLE: case CKA_LOCAL:
	case CKA_NEVER_EXTRACTABLE: case CKA_ALWAYS_SENSITIVE: case CKA_MODIFIABLE: case CKA_COPYABLE:
	case CKA_DESTROYABLE: case CKA_ALWAYS_AUTHENTICATE: case CKA_WRAP_WITH_TRUSTED:
		return true;
	default:
		return false;
	}
}

static bool is_ulong_attr(CK_ATTRIBUTE_TYPE t)
{
	switch (t) {
	case CKA_CLASS: case CKA_CERTIFICATE_TYPE: case CKA_CERTIFICATE_CATEGORY: case CKA_KEY_TYPE:
	case CKA_MODULUS_BITS: case CKA_VALUE_LEN: case CKA_KEY_GEN_MECHANISM:
	case CKA_NAME_HASH_ALGORITHM: case CKA_JAVA_MIDP_SECURITY_DOMAIN:
		return true;
	default:
		return false;
	}
}

struct rtmpl {
	CK_ATTRIBUTE a[24];
	CK_BYTE store[24][512];
	CK_ULONG n;
};

static bool rt_has(const struct rtmpl *t, CK_ATTRIBUTE_TYPE type)
{
	for (CK_ULONG i = 0; i < t->n; i++)
		if (t->a[i].type == type)
			return true;
	return false;
}

/* Add an attribute with a value of the given bytes (copied). */
static void rt_add(struct rtmpl *t, CK_ATTRIBUTE_TYPE type, const void *v, CK_ULONG len)
{
	if (t->n >= FX_COUNT(t->a))
		return;
	assert_true(len <= sizeof(t->store[0]));
	memcpy(t->store[t->n], v, len);
	t->a[t->n].type = type;
	t->a[t->n].pValue = t->store[t->n];
	t->a[t->n].ulValueLen = len;
	t->n++;
}

static void rt_add_random(struct rtmpl *t, CK_ATTRIBUTE_TYPE type)
{
	CK_BYTE v[96];
	CK_ULONG len;
	uint32_t mode = rnd() % 8;

	if (is_bool_attr(type) && mode < 5) {
		v[0] = mode < 4 ? (CK_BYTE)(rnd() & 1) : (CK_BYTE)rnd();
		len = 1;
	} else if (is_ulong_attr(type) && mode < 5) {
		static const CK_ULONG vals[] = { CKO_DATA, CKO_CERTIFICATE, CKO_PUBLIC_KEY, CKO_PRIVATE_KEY,
						 CKO_SECRET_KEY, CKK_RSA, CKK_EC, CKK_EC_EDWARDS, CKK_AES,
						 CKK_GENERIC_SECRET, 16, 32, 2048, 0, ~(CK_ULONG)0 };
		CK_ULONG x = mode < 4 ? vals[rnd() % FX_COUNT(vals)] : ((CK_ULONG)rnd() << 32 | rnd());
		memcpy(v, &x, sizeof(x));
		len = sizeof(x);
	} else {
		len = rnd() % (mode == 7 ? 96 : 40);
		for (CK_ULONG i = 0; i < len; i++)
			v[i] = (CK_BYTE)rnd();
	}
	if (rnd() % 50 == 0) {
		/* NULL pValue with a length */
		if (t->n < FX_COUNT(t->a)) {
			t->a[t->n].type = type;
			t->a[t->n].pValue = NULL;
			t->a[t->n].ulValueLen = len ? len : 1;
			t->n++;
		}
		return;
	}
	rt_add(t, type, v, len);
}

/* A template that is valid or close to it for a random class, then
 * mutated; or pure noise. */
static void rt_make(struct rtmpl *t, const CK_BYTE *ec_point, CK_ULONG ec_point_len, const CK_BYTE *cert,
		    CK_ULONG cert_len)
{
	uint32_t shape = rnd() % 8;
	CK_BBOOL token = rnd() % 25 == 0 ? CK_TRUE : CK_FALSE;
	CK_BYTE aes16[16], rnd_value[32];

	memset(t, 0, sizeof(*t));
	for (size_t i = 0; i < sizeof(aes16); i++)
		aes16[i] = (CK_BYTE)rnd();
	for (size_t i = 0; i < sizeof(rnd_value); i++)
		rnd_value[i] = (CK_BYTE)rnd();
	switch (shape) {
	case 0: /* data */
	case 1:
		rt_add(t, CKA_CLASS, &c_data, sizeof(c_data));
		rt_add(t, CKA_VALUE, rnd_value, rnd() % sizeof(rnd_value));
		break;
	case 2: /* AES or generic secret */
		rt_add(t, CKA_CLASS, &c_secret, sizeof(c_secret));
		rt_add(t, CKA_KEY_TYPE, rnd() & 1 ? &k_aes : &k_generic, sizeof(CK_KEY_TYPE));
		rt_add(t, CKA_VALUE, aes16, rnd() % 4 ? 16 : rnd() % 17);
		break;
	case 3: /* EC public key */
		rt_add(t, CKA_CLASS, &c_pub, sizeof(c_pub));
		rt_add(t, CKA_KEY_TYPE, &k_ec, sizeof(k_ec));
		rt_add(t, CKA_EC_PARAMS, fx_p256, fx_p256_len);
		rt_add(t, CKA_EC_POINT, ec_point, rnd() % 4 ? ec_point_len : rnd() % ec_point_len);
		break;
	case 4: /* EC private key: random scalar */
		rt_add(t, CKA_CLASS, &c_priv, sizeof(c_priv));
		rt_add(t, CKA_KEY_TYPE, rnd() % 8 ? &k_ec : &k_ed, sizeof(k_ec));
		if (rnd() % 4)
			rt_add(t, CKA_EC_PARAMS, fx_p256, fx_p256_len);
		else
			rt_add(t, CKA_EC_PARAMS, fx_ed25519, fx_ed25519_len);
		rt_add(t, CKA_VALUE, rnd_value, rnd() % 4 ? 32 : rnd() % 33);
		break;
	case 5: /* certificate */
		rt_add(t, CKA_CLASS, &c_cert, sizeof(c_cert));
		rt_add(t, CKA_CERTIFICATE_TYPE, &x509, sizeof(x509));
		if (cert_len <= sizeof(t->store[0]))
			rt_add(t, CKA_VALUE, cert, cert_len);
		break;
	case 6: /* RSA public key with random numbers */
		rt_add(t, CKA_CLASS, &c_pub, sizeof(c_pub));
		rt_add(t, CKA_KEY_TYPE, &k_rsa, sizeof(k_rsa));
		rt_add(t, CKA_MODULUS, rnd_value, rnd() % sizeof(rnd_value));
		rt_add(t, CKA_PUBLIC_EXPONENT, "\x01\x00\x01", 3);
		break;
	default: /* noise */
		break;
	}
	if (rnd() % 3)
		rt_add(t, CKA_TOKEN, &token, 1);
	if (rnd() % 2) {
		char label[24];
		int l = snprintf(label, sizeof(label), "fuzz-%u", rnd() % 1000);
		rt_add(t, CKA_LABEL, label, (CK_ULONG)l);
	}
	/* mutate: add a few random attributes, maybe repeat one */
	unsigned extra = shape == 7 ? 1 + rnd() % 12 : rnd() % 4;
	for (unsigned i = 0; i < extra; i++) {
		CK_ATTRIBUTE_TYPE type = attr_pool[rnd() % FX_COUNT(attr_pool)];
		if (rt_has(t, type) && rnd() % 4)
			continue;
		rt_add_random(t, type);
	}
	/* sometimes drop one (the class, say) */
	if (t->n > 1 && rnd() % 10 == 0) {
		CK_ULONG k = rnd() % t->n;
		t->a[k] = t->a[t->n - 1];
		t->n--;
	}
}

static void test_random_templates(void **state)
{
	const char *env = getenv("KT_HOSTILE_ITER");
	const char *seed_env = getenv("KT_HOSTILE_SEED");
	unsigned iters = env ? (unsigned)strtoul(env, NULL, 10) : 3000;
	uint64_t seed = seed_env ? strtoull(seed_env, NULL, 0) : 0x6b6f6c74616d6761ULL;
	unsigned ok = 0, per_class_ok[8] = { 0 };
	CK_ULONG point_len;
	CK_BYTE *point = ec_point_of(ec_pub, &point_len);
	int cert_len;
	CK_BYTE *cert = make_cert(&cert_len);
	(void)state;

	rng_state = seed ? seed : 1;
	for (unsigned it = 0; it < iters; it++) {
		struct rtmpl t;
		CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;

		rt_make(&t, point, point_len, cert, (CK_ULONG)cert_len);
		CK_RV rv = F->C_CreateObject(s, t.a, t.n, &h);
		if (rv != CKR_OK)
			continue;
		ok++;
		if (h == CK_INVALID_HANDLE)
			fail_msg("seed 0x%llx iteration %u: CKR_OK without a handle", (unsigned long long)seed, it);

		/* Read back every attribute the pool knows: the length pass,
		 * then the value pass. */
		CK_ATTRIBUTE rd[FX_COUNT(attr_pool)];
		for (size_t i = 0; i < FX_COUNT(attr_pool); i++) {
			rd[i].type = attr_pool[i];
			rd[i].pValue = NULL;
			rd[i].ulValueLen = 0;
		}
		rv = F->C_GetAttributeValue(s, h, rd, FX_COUNT(rd));
		assert_true(rv == CKR_OK || rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID);
		for (size_t i = 0; i < FX_COUNT(rd); i++) {
			if (rd[i].ulValueLen == UNAVAIL)
				continue;
			assert_true(rd[i].ulValueLen < 1024 * 1024);
			rd[i].pValue = malloc(rd[i].ulValueLen + 1);
			assert_non_null(rd[i].pValue);
		}
		rv = F->C_GetAttributeValue(s, h, rd, FX_COUNT(rd));
		assert_true(rv == CKR_OK || rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID);
		CK_OBJECT_CLASS cls = ~(CK_ULONG)0;
		for (size_t i = 0; i < FX_COUNT(rd); i++) {
			if (rd[i].type == CKA_CLASS && rd[i].ulValueLen == sizeof(cls))
				memcpy(&cls, rd[i].pValue, sizeof(cls));
			/* the label reads back exactly as given */
			if (rd[i].type == CKA_LABEL) {
				for (CK_ULONG j = 0; j < t.n; j++) {
					if (t.a[j].type == CKA_LABEL) {
						assert_int_equal(rd[i].ulValueLen, t.a[j].ulValueLen);
						if (rd[i].ulValueLen)
							assert_memory_equal(rd[i].pValue, t.a[j].pValue, rd[i].ulValueLen);
					}
				}
			}
			free(rd[i].pValue);
		}
		/* Secrets never read back from a private or secret key. */
		if (cls == CKO_PRIVATE_KEY || cls == CKO_SECRET_KEY) {
			CK_BBOOL sens = CK_TRUE, extr = CK_FALSE;
			CK_ATTRIBUTE q[] = { { CKA_SENSITIVE, &sens, 1 }, { CKA_EXTRACTABLE, &extr, 1 } };
			assert_int_equal(F->C_GetAttributeValue(s, h, q, 2), CKR_OK);
			if (sens || !extr) {
				CK_ATTRIBUTE v = { CKA_VALUE, NULL, 0 };
				assert_int_equal(F->C_GetAttributeValue(s, h, &v, 1), CKR_ATTRIBUTE_SENSITIVE);
				assert_int_equal(v.ulValueLen, UNAVAIL);
			}
		}
		if (cls < 8)
			per_class_ok[cls]++;
		CK_ULONG size;
		assert_int_equal(F->C_GetObjectSize(s, h, &size), CKR_OK);

		rv = F->C_DestroyObject(s, h);
		if (rv == CKR_ACTION_PROHIBITED) {
			CK_BBOOL d = CK_TRUE;
			CK_ATTRIBUTE q = { CKA_DESTROYABLE, &d, 1 };
			assert_int_equal(F->C_GetAttributeValue(s, h, &q, 1), CKR_OK);
			assert_false(d);
		} else if (rv != CKR_OK) {
			fail_msg("seed 0x%llx iteration %u: destroy = 0x%lx", (unsigned long long)seed, it, rv);
		}
	}
	OPENSSL_free(cert);
	free(point);
	print_message("random templates: %u of %u created\n", ok, iters);
	/* Positive control: the generator does make valid objects of every kind. */
	if (iters >= 1000) {
		assert_true(ok > iters / 20);
		assert_true(per_class_ok[CKO_DATA] > 0);
		assert_true(per_class_ok[CKO_CERTIFICATE] > 0);
		assert_true(per_class_ok[CKO_PUBLIC_KEY] > 0);
		assert_true(per_class_ok[CKO_PRIVATE_KEY] > 0);
		assert_true(per_class_ok[CKO_SECRET_KEY] > 0);
	}
	assert_session_signs(s, ec_priv, ec_pub);
}

/* --- 11. malformed certificates ----------------------------------------- */

static void test_malformed_certificates(void **state)
{
	int len;
	CK_BYTE *cert = make_cert(&len);
	CK_OBJECT_HANDLE h;
	(void)state;

	/* positive control */
	assert_int_equal(create_cert(s, cert, (CK_ULONG)len, &h), CKR_OK);
	assert_int_equal(F->C_DestroyObject(s, h), CKR_OK);

	/* every truncation */
	for (int l = 0; l < len; l++) {
		CK_BYTE *copy = malloc(l ? (size_t)l : 1); /* exact size: ASan sees over-reads */
		memcpy(copy, cert, (size_t)l);
		CK_RV rv = create_cert(s, copy, (CK_ULONG)l, &h);
		if (rv == CKR_OK)
			fail_msg("certificate truncated to %d of %d bytes was accepted", l, len);
		free(copy);
	}
	/* trailing bytes */
	CK_BYTE *longer = malloc((size_t)len + 1);
	memcpy(longer, cert, (size_t)len);
	longer[len] = 0;
	assert_true(rv_is_error(create_cert(s, longer, (CK_ULONG)len + 1, &h)));
	free(longer);
	/* every single-byte corruption of the header and some inside: no crash */
	for (int i = 0; i < len; i += (i < 32 ? 1 : 7)) {
		CK_BYTE *copy = malloc((size_t)len);
		memcpy(copy, cert, (size_t)len);
		copy[i] ^= 0x80;
		if (create_cert(s, copy, (CK_ULONG)len, &h) == CKR_OK)
			assert_int_equal(F->C_DestroyObject(s, h), CKR_OK);
		free(copy);
	}
	/* garbage */
	rng_state = 42;
	for (int i = 0; i < 200; i++) {
		CK_ULONG gl = 1 + rnd() % 600;
		CK_BYTE *g = malloc(gl);
		for (CK_ULONG j = 0; j < gl; j++)
			g[j] = (CK_BYTE)rnd();
		if (i % 2) { /* plausible SEQUENCE header */
			g[0] = 0x30;
			if (gl > 4) {
				g[1] = 0x82;
				g[2] = (CK_BYTE)((gl - 4) >> 8);
				g[3] = (CK_BYTE)(gl - 4);
			}
		}
		assert_true(rv_is_error(create_cert(s, g, gl, &h)));
		free(g);
	}
	/* a certificate whose template names a different subject */
	CK_ATTRIBUTE t[] = {
		{ CKA_CLASS, &c_cert, sizeof(c_cert) },
		{ CKA_CERTIFICATE_TYPE, &x509, sizeof(x509) },
		{ CKA_VALUE, cert, (CK_ULONG)len },
		{ CKA_SUBJECT, "\x30\x00", 2 },
	};
	assert_int_equal(F->C_CreateObject(s, t, FX_COUNT(t), &h), CKR_TEMPLATE_INCONSISTENT);
	CK_CERTIFICATE_TYPE other = CKC_WTLS;
	CK_ATTRIBUTE t2[] = {
		{ CKA_CLASS, &c_cert, sizeof(c_cert) },
		{ CKA_CERTIFICATE_TYPE, &other, sizeof(other) },
		{ CKA_VALUE, cert, (CK_ULONG)len },
	};
	assert_true(rv_is_error(F->C_CreateObject(s, t2, FX_COUNT(t2), &h)));
	OPENSSL_free(cert);
}

/* --- 12. malformed key material ----------------------------------------- */

static CK_RV create_rsa_pub(const CK_BYTE *n, CK_ULONG nlen, const CK_BYTE *e, CK_ULONG elen, CK_OBJECT_HANDLE *h)
{
	CK_ATTRIBUTE t[] = {
		{ CKA_CLASS, &c_pub, sizeof(c_pub) },
		{ CKA_KEY_TYPE, &k_rsa, sizeof(k_rsa) },
		{ CKA_MODULUS, (void *)n, nlen },
		{ CKA_PUBLIC_EXPONENT, (void *)e, elen },
	};
	return F->C_CreateObject(s, t, FX_COUNT(t), h);
}

static CK_RV create_ec_pub(const CK_BYTE *params, CK_ULONG plen, CK_KEY_TYPE kt, const CK_BYTE *pt, CK_ULONG ptlen,
			   CK_OBJECT_HANDLE *h)
{
	CK_ATTRIBUTE t[] = {
		{ CKA_CLASS, &c_pub, sizeof(c_pub) },
		{ CKA_KEY_TYPE, &kt, sizeof(kt) },
		{ CKA_EC_PARAMS, (void *)params, plen },
		{ CKA_EC_POINT, (void *)pt, ptlen },
	};
	return F->C_CreateObject(s, t, FX_COUNT(t), h);
}

static CK_RV create_ec_priv(const CK_BYTE *params, CK_ULONG plen, CK_KEY_TYPE kt, const CK_BYTE *v, CK_ULONG vlen,
			    CK_OBJECT_HANDLE *h)
{
	CK_ATTRIBUTE t[] = {
		{ CKA_CLASS, &c_priv, sizeof(c_priv) },
		{ CKA_KEY_TYPE, &kt, sizeof(kt) },
		{ CKA_EC_PARAMS, (void *)params, plen },
		{ CKA_VALUE, (void *)v, vlen },
	};
	return F->C_CreateObject(s, t, FX_COUNT(t), h);
}

static void test_malformed_key_material(void **state)
{
	CK_OBJECT_HANDLE h;
	CK_BYTE e[] = { 1, 0, 1 };
	CK_BYTE one = 1;
	(void)state;

	/* RSA modulus: empty, one zero byte, tiny, 100 KB, even */
	CK_BYTE *big = malloc(100 * 1024);
	memset(big, 0xc3, 100 * 1024);
	assert_true(rv_is_error(create_rsa_pub(big, 0, e, 3, &h)));
	CK_BYTE zero = 0;
	assert_true(rv_is_error(create_rsa_pub(&zero, 1, e, 3, &h)));
	assert_true(rv_is_error(create_rsa_pub(big, 16, e, 3, &h)));
	assert_true(rv_is_error(create_rsa_pub(big, 100 * 1024, e, 3, &h)));
	big[255] = 0xc2; /* even */
	assert_true(rv_is_error(create_rsa_pub(big, 256, e, 3, &h)));
	big[255] = 0xc3;
	/* exponent: empty, 1, even, huge */
	assert_true(rv_is_error(create_rsa_pub(big, 256, e, 0, &h)));
	assert_true(rv_is_error(create_rsa_pub(big, 256, &one, 1, &h)));
	CK_BYTE even[] = { 1, 0, 0 };
	assert_true(rv_is_error(create_rsa_pub(big, 256, even, 3, &h)));
	assert_true(rv_is_error(create_rsa_pub(big, 256, big, 1024, &h)));
	/* positive: the real public key of a generated pair imports */
	CK_OBJECT_HANDLE rpub, rpriv;
	assert_int_equal(fixture_gen_rsa(s, 2048, &rpub, &rpriv), CKR_OK);
	CK_ULONG nlen, elen;
	CK_BYTE *n = fixture_get_attr(s, rpub, CKA_MODULUS, &nlen), *ee = fixture_get_attr(s, rpub, CKA_PUBLIC_EXPONENT, &elen);
	assert_int_equal(create_rsa_pub(n, nlen, ee, elen, &h), CKR_OK);
	assert_int_equal(F->C_DestroyObject(s, h), CKR_OK);
	/* RSA private: d >= n, mismatched CRT parts, missing parts */
	memset(big, 0xff, nlen); /* d = 2^bits - 1 >= n */
	{
		CK_ATTRIBUTE t[] = {
			{ CKA_CLASS, &c_priv, sizeof(c_priv) },
			{ CKA_KEY_TYPE, &k_rsa, sizeof(k_rsa) },
			{ CKA_MODULUS, n, nlen },
			{ CKA_PUBLIC_EXPONENT, ee, elen },
			{ CKA_PRIVATE_EXPONENT, big, nlen },
		};
		assert_true(rv_is_error(F->C_CreateObject(s, t, FX_COUNT(t), &h)));
		t[4].ulValueLen = 0;
		assert_true(rv_is_error(F->C_CreateObject(s, t, FX_COUNT(t), &h)));
		CK_ATTRIBUTE crt[] = {
			t[0], t[1], t[2], t[3],
			{ CKA_PRIVATE_EXPONENT, big + 1, nlen - 1 },
			{ CKA_PRIME_1, big, nlen / 2 },
			{ CKA_PRIME_2, big, nlen / 2 },
			{ CKA_EXPONENT_1, big, 8 },
			{ CKA_EXPONENT_2, big, 8 },
			{ CKA_COEFFICIENT, big, 8 },
		};
		assert_true(rv_is_error(F->C_CreateObject(s, crt, FX_COUNT(crt), &h)));
		assert_true(rv_is_error(F->C_CreateObject(s, crt, FX_COUNT(crt) - 1, &h))); /* 4 of 5 */
		crt[5].pValue = &one;
		crt[5].ulValueLen = 1; /* p = 1 */
		assert_true(rv_is_error(F->C_CreateObject(s, crt, FX_COUNT(crt), &h)));
		crt[5].pValue = &zero; /* p = 0: division by zero in a naive check */
		assert_true(rv_is_error(F->C_CreateObject(s, crt, FX_COUNT(crt), &h)));
		crt[5].pValue = big;
		crt[5].ulValueLen = nlen / 2;
		crt[6].pValue = &zero;
		crt[6].ulValueLen = 1; /* q = 0 */
		assert_true(rv_is_error(F->C_CreateObject(s, crt, FX_COUNT(crt), &h)));
	}
	free(n);
	free(ee);
	free(big);

	/* EC points */
	CK_ULONG plen;
	CK_BYTE *pt = ec_point_of(ec_pub, &plen); /* 04 41 04 x y */
	assert_int_equal(plen, 67);
	assert_int_equal(create_ec_pub(fx_p256, fx_p256_len, CKK_EC, pt, plen, &h), CKR_OK); /* positive */
	assert_int_equal(F->C_DestroyObject(s, h), CKR_OK);
	assert_int_equal(create_ec_pub(fx_p256, fx_p256_len, CKK_EC, pt + 2, plen - 2, &h), CKR_OK); /* raw form */
	assert_int_equal(F->C_DestroyObject(s, h), CKR_OK);
	CK_BYTE off[67];
	memcpy(off, pt, 67);
	off[66] ^= 1; /* y off the curve */
	assert_true(rv_is_error(create_ec_pub(fx_p256, fx_p256_len, CKK_EC, off, 67, &h)));
	memcpy(off, pt, 67);
	off[2] = 0x02; /* compressed marker on an uncompressed-length point */
	assert_true(rv_is_error(create_ec_pub(fx_p256, fx_p256_len, CKK_EC, off, 67, &h)));
	memset(off + 3, 0, 64); /* the point (0, 0) */
	off[2] = 0x04;
	assert_true(rv_is_error(create_ec_pub(fx_p256, fx_p256_len, CKK_EC, off, 67, &h)));
	memset(off + 3, 0xff, 64); /* coordinates >= p */
	assert_true(rv_is_error(create_ec_pub(fx_p256, fx_p256_len, CKK_EC, off, 67, &h)));
	for (CK_ULONG l = 0; l < plen; l++) /* every truncation */
		assert_true(rv_is_error(create_ec_pub(fx_p256, fx_p256_len, CKK_EC, pt, l, &h)));
	CK_BYTE der_long[] = { 0x04, 0x84, 0xff, 0xff, 0xff, 0xff };
	assert_true(rv_is_error(create_ec_pub(fx_p256, fx_p256_len, CKK_EC, der_long, sizeof(der_long), &h)));
	CK_BYTE der_lie[] = { 0x04, 0x82, 0x01, 0x00, 0x04 };
	assert_true(rv_is_error(create_ec_pub(fx_p256, fx_p256_len, CKK_EC, der_lie, sizeof(der_lie), &h)));
	/* P-256 point under P-384 parameters */
	assert_true(rv_is_error(create_ec_pub(fx_p384, fx_p384_len, CKK_EC, pt, plen, &h)));
	/* EC parameters: garbage, truncated, unknown OID, explicit, NULL, edwards for EC */
	const struct {
		const CK_BYTE *p;
		CK_ULONG l;
	} params[] = {
		{ (const CK_BYTE *)"", 0 },
		{ (const CK_BYTE *)"\x06", 1 },
		{ (const CK_BYTE *)"\x06\x08\x2a\x86\x48\xce\x3d\x03\x01", 9 },
		{ (const CK_BYTE *)"\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x08", 10 },
		{ (const CK_BYTE *)"\x06\x84\xff\xff\xff\xff", 6 },
		{ (const CK_BYTE *)"\x30\x03\x02\x01\x01", 5 },
		{ (const CK_BYTE *)"\x05\x00", 2 },
		{ (const CK_BYTE *)"\x13\x0c" "edwards25519", 14 },
		{ (const CK_BYTE *)"\x13\x00", 2 },
		{ (const CK_BYTE *)"\xff\xff\xff\xff", 4 },
		{ (const CK_BYTE *)"\x06\x03\x2b\x65\x70", 5 },
	};
	for (size_t i = 0; i < FX_COUNT(params); i++) {
		CK_BYTE *copy = malloc(params[i].l ? params[i].l : 1); /* exact size */
		memcpy(copy, params[i].p, params[i].l);
		assert_true(rv_is_error(create_ec_pub(copy, params[i].l, CKK_EC, pt, plen, &h)));
		CK_BYTE d[32];
		memset(d, 0x11, sizeof(d));
		assert_true(rv_is_error(create_ec_priv(copy, params[i].l, CKK_EC, d, sizeof(d), &h)));
		free(copy);
	}
	free(pt);
	/* EC private scalars: 0, n, too long, empty */
	CK_BYTE d[40];
	memset(d, 0, sizeof(d));
	assert_true(rv_is_error(create_ec_priv(fx_p256, fx_p256_len, CKK_EC, d, 32, &h)));
	assert_true(rv_is_error(create_ec_priv(fx_p256, fx_p256_len, CKK_EC, d, 0, &h)));
	memset(d, 0xff, sizeof(d));
	assert_true(rv_is_error(create_ec_priv(fx_p256, fx_p256_len, CKK_EC, d, 32, &h)));
	assert_true(rv_is_error(create_ec_priv(fx_p256, fx_p256_len, CKK_EC, d, 40, &h)));
	memset(d, 0x11, sizeof(d));
	assert_int_equal(create_ec_priv(fx_p256, fx_p256_len, CKK_EC, d, 32, &h), CKR_OK); /* positive */
	assert_int_equal(F->C_DestroyObject(s, h), CKR_OK);
	/* EdDSA: wrong lengths, EC params on an Edwards key */
	assert_true(rv_is_error(create_ec_priv(fx_ed25519, fx_ed25519_len, CKK_EC_EDWARDS, d, 31, &h)));
	assert_true(rv_is_error(create_ec_priv(fx_ed25519, fx_ed25519_len, CKK_EC_EDWARDS, d, 33, &h)));
	assert_true(rv_is_error(create_ec_priv(fx_p256, fx_p256_len, CKK_EC_EDWARDS, d, 32, &h)));
	assert_true(rv_is_error(create_ec_pub(fx_ed25519, fx_ed25519_len, CKK_EC_EDWARDS, d, 31, &h)));
	assert_true(rv_is_error(create_ec_pub(fx_ed448, fx_ed448_len, CKK_EC_EDWARDS, d, 32, &h)));
	assert_int_equal(create_ec_priv(fx_ed25519, fx_ed25519_len, CKK_EC_EDWARDS, d, 32, &h), CKR_OK);
	assert_int_equal(F->C_DestroyObject(s, h), CKR_OK);
	/* secret keys: AES of odd size, generic of 0 and 100 KB */
	CK_BYTE *huge = calloc(1, 100 * 1024);
	CK_ATTRIBUTE sk[] = {
		{ CKA_CLASS, &c_secret, sizeof(c_secret) },
		{ CKA_KEY_TYPE, &k_aes, sizeof(k_aes) },
		{ CKA_VALUE, huge, 17 },
	};
	assert_true(rv_is_error(F->C_CreateObject(s, sk, 3, &h)));
	sk[2].ulValueLen = 0;
	assert_true(rv_is_error(F->C_CreateObject(s, sk, 3, &h)));
	sk[1].pValue = &k_generic;
	assert_true(rv_is_error(F->C_CreateObject(s, sk, 3, &h)));
	sk[2].ulValueLen = 100 * 1024;
	assert_true(rv_is_error(F->C_CreateObject(s, sk, 3, &h)));
	free(huge);
	/* a key type the class cannot have */
	CK_ATTRIBUTE kc[] = {
		{ CKA_CLASS, &c_secret, sizeof(c_secret) },
		{ CKA_KEY_TYPE, &k_rsa, sizeof(k_rsa) },
		{ CKA_VALUE, d, 16 },
	};
	assert_true(rv_is_error(F->C_CreateObject(s, kc, 3, &h)));
	CK_KEY_TYPE weird = 0x7777;
	kc[1].pValue = &weird;
	assert_true(rv_is_error(F->C_CreateObject(s, kc, 3, &h)));
	assert_session_signs(s, ec_priv, ec_pub);
}

/* --- 13. the store file changed on disk between two calls ---------------- */

enum damage { DAMAGE_OVERWRITE, DAMAGE_TRUNCATE, DAMAGE_DELETE, DAMAGE_ZERO, DAMAGE_GARBAGE };

static void damage_store(const char *path, enum damage how)
{
	struct stat st;
	char wal[PATH_MAX + 8];
	assert_int_equal(stat(path, &st), 0);
	switch (how) {
	case DAMAGE_OVERWRITE: {
		int fd = open(path, O_WRONLY);
		assert_true(fd >= 0);
		CK_BYTE junk[512];
		memset(junk, 0xa5, sizeof(junk));
		/* a page in the middle and the header */
		assert_int_equal(pwrite(fd, junk, sizeof(junk), st.st_size / 2), (ssize_t)sizeof(junk));
		assert_int_equal(pwrite(fd, junk, 64, 0), 64);
		close(fd);
		break;
	}
	case DAMAGE_TRUNCATE:
		assert_int_equal(truncate(path, st.st_size / 3), 0);
		break;
	case DAMAGE_ZERO:
		assert_int_equal(truncate(path, 0), 0);
		break;
	case DAMAGE_DELETE:
		assert_int_equal(unlink(path), 0);
		snprintf(wal, sizeof(wal), "%s-wal", path);
		unlink(wal);
		snprintf(wal, sizeof(wal), "%s-shm", path);
		unlink(wal);
		break;
	case DAMAGE_GARBAGE: {
		FILE *f = fopen(path, "w");
		assert_non_null(f);
		for (int i = 0; i < 8192; i++)
			fputc((i * 7919) & 0xff, f);
		fclose(f);
		break;
	}
	}
	/* the WAL may hold the newest pages: damage it too (not for delete) */
	snprintf(wal, sizeof(wal), "%s-wal", path);
	if (how != DAMAGE_DELETE && stat(wal, &st) == 0 && st.st_size > 0)
		assert_int_equal(truncate(wal, st.st_size / 2), 0);
}

/* Everything a client does with a token; answers may be errors. */
static void poke_token(CK_SLOT_ID sl, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj, CK_OBJECT_HANDLE key)
{
	CK_TOKEN_INFO ti;
	CK_OBJECT_HANDLE found[16], x;
	CK_ULONG n;
	CK_BYTE buf[128] = { 0 }; /* set back as a label below: all of it defined */
	CK_ATTRIBUTE a = { CKA_LABEL, buf, sizeof(buf) };
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	CK_SLOT_ID slots[16];

	(void)F->C_GetTokenInfo(sl, &ti);
	n = FX_COUNT(slots);
	(void)F->C_GetSlotList(CK_TRUE, NULL, &n);
	n = FX_COUNT(slots);
	(void)F->C_GetSlotList(CK_TRUE, slots, &n);
	if (F->C_FindObjectsInit(h, NULL, 0) == CKR_OK) {
		(void)F->C_FindObjects(h, found, FX_COUNT(found), &n);
		(void)F->C_FindObjectsFinal(h);
	}
	(void)F->C_GetAttributeValue(h, obj, &a, 1);
	a.ulValueLen = sizeof(buf);
	(void)F->C_SetAttributeValue(h, obj, &a, 1);
	CK_ATTRIBUTE t[] = { { CKA_CLASS, &c_data, sizeof(c_data) }, { CKA_TOKEN, &fx_true, 1 } };
	if (F->C_CreateObject(h, t, 2, &x) == CKR_OK)
		(void)F->C_DestroyObject(h, x);
	if (F->C_SignInit(h, &m, key) == CKR_OK) {
		n = sizeof(buf);
		(void)F->C_Sign(h, (CK_BYTE_PTR)msg, sizeof(msg), buf, &n);
	}
	(void)F->C_Logout(h);
	(void)F->C_Login(h, CKU_USER, FX_PIN("0000"));
	(void)F->C_Login(h, CKU_USER, FX_PIN(FX_USER_PIN));
	(void)F->C_DestroyObject(h, obj);
}

static void test_store_damaged(void **state)
{
	FX_FILE_TOKEN_ONLY("the store file is the file token's");
	(void)state;
	FX_KOLTAMGA_ONLY();
	const enum damage all[] = { DAMAGE_OVERWRITE, DAMAGE_TRUNCATE, DAMAGE_ZERO, DAMAGE_DELETE, DAMAGE_GARBAGE };

	assert_int_equal(F->C_CloseAllSessions(slot), CKR_OK);
	for (size_t i = 0; i < FX_COUNT(all); i++) {
		char path[PATH_MAX];
		/* a fresh module state with one token holding some objects */
		assert_int_equal(F->C_Finalize(NULL), CKR_OK);
		fixture_tmpdir_free();
		assert_int_equal(fixture_tmpdir_new(), 0);
		assert_int_equal(fixture_initialize(), CKR_OK);
		CK_SLOT_ID sl = fixture_init_token();
		CK_SESSION_HANDLE h = fixture_open_user_session(sl);
		CK_OBJECT_HANDLE pub, priv, d[20];
		CK_ATTRIBUTE pt[] = { { CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len }, { CKA_TOKEN, &fx_true, 1 } };
		CK_ATTRIBUTE vt[] = { { CKA_TOKEN, &fx_true, 1 } };
		assert_int_equal(fixture_gen_keypair(h, CKM_EC_KEY_PAIR_GEN, pt, 2, vt, 1, &pub, &priv), CKR_OK);
		for (int k = 0; k < 20; k++)
			d[k] = make_data(h, "on disk", true);
		/* positive control before the damage */
		assert_session_signs(h, priv, pub);
		store_file(path, sizeof(path));

		damage_store(path, all[i]);
		/* the same process, handles still open */
		poke_token(sl, h, d[3], priv);
		poke_token(sl, h, d[4], priv);
		/* another session, then the whole library again */
		CK_SESSION_HANDLE h2;
		if (F->C_OpenSession(sl, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h2) == CKR_OK)
			poke_token(sl, h2, d[5], priv);
		assert_int_equal(F->C_Finalize(NULL), CKR_OK);
		assert_int_equal(fixture_initialize(), CKR_OK);
		CK_SLOT_ID slots[16];
		CK_ULONG n = FX_COUNT(slots);
		assert_int_equal(F->C_GetSlotList(CK_FALSE, slots, &n), CKR_OK);
		for (CK_ULONG k = 0; k < n; k++) {
			CK_TOKEN_INFO ti;
			CK_RV rv = F->C_GetTokenInfo(slots[k], &ti);
			if (rv == CKR_OK && (ti.flags & CKF_TOKEN_INITIALIZED) &&
			    F->C_OpenSession(slots[k], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h2) == CKR_OK)
				poke_token(slots[k], h2, d[6], priv);
			if (rv == CKR_OK && !(ti.flags & CKF_TOKEN_INITIALIZED)) {
				/* An unrecognised store is never re-initialised over. */
				CK_UTF8CHAR label[32];
				memset(label, ' ', sizeof(label));
				(void)F->C_InitToken(slots[k], FX_PIN(FX_SO_PIN), label);
			}
		}
	}
	/* positive control: a fresh token in a fresh store works */
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
	fixture_tmpdir_free();
	assert_int_equal(fixture_tmpdir_new(), 0);
	assert_int_equal(fixture_initialize(), CKR_OK);
	slot = fixture_init_token();
	s = fixture_open_user_session(slot);
	assert_int_equal(fixture_gen_ec(s, fx_p256, fx_p256_len, &ec_pub, &ec_priv), CKR_OK);
	assert_session_signs(s, ec_priv, ec_pub);
}

/* --- 14. C_GetAttributeValue with 1000 entries ------------------------- */

static void test_get_attribute_1000(void **state)
{
	enum { N = 1000 };
	CK_ATTRIBUTE *t = calloc(N, sizeof(*t));
	CK_BYTE (*bufs)[80] = calloc(N, 80);
	(void)state;

	/* all entries valid: a data object's label */
	CK_OBJECT_HANDLE h = make_data(s, "thousand", false);
	for (int i = 0; i < N; i++) {
		t[i].type = CKA_LABEL;
		t[i].pValue = bufs[i];
		t[i].ulValueLen = 80;
	}
	assert_int_equal(F->C_GetAttributeValue(s, h, t, N), CKR_OK);
	for (int i = 0; i < N; i++) {
		assert_int_equal(t[i].ulValueLen, 8);
		assert_memory_equal(bufs[i], "thousand", 8);
	}
	/* a mixture on a private key: lengths, sensitive, unknown, short buffers */
	for (int i = 0; i < N; i++) {
		t[i].type = attr_pool[i % FX_COUNT(attr_pool)];
		t[i].pValue = i % 3 == 0 ? NULL : bufs[i];
		t[i].ulValueLen = i % 5 == 0 ? 1 : 80;
	}
	CK_RV rv = F->C_GetAttributeValue(s, ec_priv, t, N);
	assert_true(rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_BUFFER_TOO_SMALL);
	for (int i = 0; i < N; i++) {
		if (t[i].type == CKA_VALUE)
			assert_int_equal(t[i].ulValueLen, UNAVAIL);
		if (t[i].type == CKA_CLASS && t[i].pValue && i % 5) {
			assert_int_equal(t[i].ulValueLen, sizeof(CK_ULONG));
			assert_memory_equal(t[i].pValue, &c_priv, sizeof(CK_ULONG));
		}
		assert_true(t[i].ulValueLen == UNAVAIL || t[i].ulValueLen <= 1024);
	}
	/* 1000 unknown types */
	for (int i = 0; i < N; i++) {
		t[i].type = CKA_VENDOR_DEFINED + 0x1000 + (CK_ULONG)i;
		t[i].pValue = bufs[i];
		t[i].ulValueLen = 80;
	}
	assert_int_equal(F->C_GetAttributeValue(s, h, t, N), CKR_ATTRIBUTE_TYPE_INVALID);
	for (int i = 0; i < N; i++)
		assert_int_equal(t[i].ulValueLen, UNAVAIL);
	/* count 0 with NULL and non-NULL templates */
	assert_int_equal(F->C_GetAttributeValue(s, h, NULL, 0), CKR_OK);
	assert_int_equal(F->C_GetAttributeValue(s, h, t, 0), CKR_OK);
	/* a 1000-entry find template that matches (all the same label) */
	for (int i = 0; i < N; i++) {
		t[i].type = CKA_LABEL;
		t[i].pValue = (void *)"thousand";
		t[i].ulValueLen = 8;
	}
	assert_int_equal(fixture_count_objects(s, t, N), 1);
	/* a 1000-entry C_SetAttributeValue with one attribute repeated */
	assert_int_equal(F->C_SetAttributeValue(s, h, t, N), CKR_TEMPLATE_INCONSISTENT);
	free(bufs);
	free(t);
}

/* --- 15. C_FindObjects with ulMaxCount 0 and huge ---------------------- */

static void test_find_counts(void **state)
{
	CK_OBJECT_HANDLE found[16];
	CK_ULONG n = 99;
	(void)state;

	for (int i = 0; i < 3; i++)
		make_data(s, "counted", false);
	CK_ATTRIBUTE t[] = { { CKA_LABEL, "counted", 7 } };
	assert_int_equal(F->C_FindObjectsInit(s, t, 1), CKR_OK);
	assert_int_equal(F->C_FindObjects(s, NULL, 0, &n), CKR_OK);
	assert_int_equal(n, 0);
	n = 99;
	assert_int_equal(F->C_FindObjects(s, found, 0, &n), CKR_OK);
	assert_int_equal(n, 0);
	/* huge max: only as many as there are (3), into a 16-entry array */
	memset(found, 0xee, sizeof(found));
	assert_int_equal(F->C_FindObjects(s, found, ~(CK_ULONG)0, &n), CKR_OK);
	assert_int_equal(n, 3);
	for (int i = 3; i < 16; i++)
		assert_int_equal(found[i], (CK_OBJECT_HANDLE)0xeeeeeeeeeeeeeeeeULL);
	assert_int_equal(F->C_FindObjects(s, found, ~(CK_ULONG)0, &n), CKR_OK);
	assert_int_equal(n, 0);
	assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);
	assert_int_equal(F->C_FindObjectsFinal(s), CKR_OPERATION_NOT_INITIALIZED);
	assert_int_equal(F->C_FindObjects(s, found, 1, &n), CKR_OPERATION_NOT_INITIALIZED);
	/* one at a time */
	assert_int_equal(F->C_FindObjectsInit(s, t, 1), CKR_OK);
	assert_int_equal(F->C_FindObjectsInit(s, t, 1), CKR_OPERATION_ACTIVE);
	CK_ULONG total = 0;
	do {
		assert_int_equal(F->C_FindObjects(s, found, 1, &n), CKR_OK);
		total += n;
	} while (n);
	assert_int_equal(total, 3);
	assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);
	/* C_GetMechanismList with a zero count */
	CK_MECHANISM_TYPE ml[1];
	n = 0;
	assert_int_equal(F->C_GetMechanismList(slot, ml, &n), CKR_BUFFER_TOO_SMALL);
	assert_true(n > 1);
	CK_SLOT_ID sl[1];
	n = 0;
	/* The token and the store's empty slot; a device is one slot. */
	assert_int_equal(F->C_GetSlotList(CK_FALSE, sl, &n), CKR_BUFFER_TOO_SMALL);
	assert_true(n >= (fx.device ? 1 : 2));
}

/* --- 16. private keys must not become usable without a login ------------- */

/* C_CopyObject may change CKA_PRIVATE (PKCS#11 allows it), but a copy of a
 * private key that is no longer CKA_PRIVATE would sign after C_Logout,
 * without any PIN.  Either the copy is refused or it cannot sign unlogged. */
static void test_copy_private_key_public(void **state)
{
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
	CK_ATTRIBUTE t[] = { { CKA_PRIVATE, &fx_false, 1 } };
	CK_BYTE sig[128];
	CK_ULONG n = sizeof(sig);
	(void)state;

	CK_RV rv = F->C_CopyObject(s, ec_priv, t, 1, &copy);
	if (rv != CKR_OK)
		return; /* refused: fine */
	assert_int_equal(F->C_Logout(s), CKR_OK);
	rv = F->C_SignInit(s, &m, copy);
	if (rv == CKR_OK)
		rv = F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg), sig, &n);
	assert_int_not_equal(rv, CKR_OK);
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
}

/* An imported private key with CKA_PRIVATE false: signing needs a login all
 * the same (a private key is the user's, whatever its visibility). */
static void test_public_private_key_needs_login(void **state)
{
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	CK_BYTE d[32], sig[128];
	CK_ULONG n = sizeof(sig);
	CK_OBJECT_HANDLE h;
	(void)state;
	FX_KOLTAMGA_ONLY(); /* koltamga's policy; PKCS#11 itself lets public keys be used unlogged */

	memset(d, 0x22, sizeof(d));
	CK_ATTRIBUTE t[] = {
		{ CKA_CLASS, &c_priv, sizeof(c_priv) },
		{ CKA_KEY_TYPE, &k_ec, sizeof(k_ec) },
		{ CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len },
		{ CKA_VALUE, d, sizeof(d) },
		{ CKA_PRIVATE, &fx_false, 1 },
	};
	assert_int_equal(F->C_CreateObject(s, t, FX_COUNT(t), &h), CKR_OK);
	assert_int_equal(F->C_Logout(s), CKR_OK);
	CK_RV rv = F->C_SignInit(s, &m, h);
	if (rv == CKR_OK)
		rv = F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg), sig, &n);
	assert_int_equal(rv, CKR_USER_NOT_LOGGED_IN);
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
}

/* A token created by another process shows up at the next slot-list size
 * query (docs/architecture.md).  Copying a store file into the directory
 * stands in for the other process. */
static void test_rescan_new_store_file(void **state)
{
	FX_FILE_TOKEN_ONLY("the store directory is the file token's");
	char path[PATH_MAX], copy[PATH_MAX + 32];
	CK_SLOT_ID slots[16];
	CK_ULONG n = 0, before;
	(void)state;
	FX_KOLTAMGA_ONLY();

	assert_int_equal(F->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK);
	before = n;
	store_file(path, sizeof(path));
	snprintf(copy, sizeof(copy), "%s/ffffffffffff-00000000.ktok", fx.store);
	FILE *in = fopen(path, "rb"), *out = fopen(copy, "wb");
	assert_non_null(in);
	assert_non_null(out);
	int c;
	while ((c = fgetc(in)) != EOF)
		fputc(c, out);
	fclose(in);
	fclose(out);
	n = 0;
	assert_int_equal(F->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK);
	assert_int_equal(n, before + 1);
	n = FX_COUNT(slots);
	assert_int_equal(F->C_GetSlotList(CK_FALSE, slots, &n), CKR_OK);
	/* the empty slot is still last */
	CK_TOKEN_INFO ti;
	assert_int_equal(F->C_GetTokenInfo(slots[n - 1], &ti), CKR_OK);
	assert_false(ti.flags & CKF_TOKEN_INITIALIZED);
}

/* --- 17. C_InitToken on the empty slot while another thread rescans -------- */

struct rescanner {
	volatile bool stop;
	unsigned scans;
};

static void *rescan_loop(void *arg)
{
	struct rescanner *r = arg;
	while (!r->stop) {
		CK_ULONG n = 0;
		(void)F->C_GetSlotList(CK_FALSE, NULL, &n); /* a size query rescans the store */
		r->scans++;
	}
	return NULL;
}

/* Every token must appear in exactly one slot: a rescan that runs while
 * C_InitToken creates the store file must not add the file a second time. */
static void test_init_token_while_rescanning(void **state)
{
	FX_FILE_TOKEN_ONLY("a device token has no empty slot for new tokens");
	enum { TOKENS = 12 };
	struct rescanner r = { 0 };
	pthread_t th[2];
	(void)state;
	FX_KOLTAMGA_ONLY();

	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&th[i], NULL, rescan_loop, &r), 0);
	for (int i = 0; i < TOKENS; i++) {
		CK_UTF8CHAR label[32];
		memset(label, ' ', sizeof(label));
		memcpy(label, "race", 4);
		CK_SLOT_ID empty = fixture_empty_slot();
		assert_int_equal(F->C_InitToken(empty, FX_PIN(FX_SO_PIN), label), CKR_OK);
	}
	r.stop = true;
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	assert_true(r.scans > 0);

	CK_SLOT_ID slots[128];
	CK_ULONG n = FX_COUNT(slots);
	unsigned race = 0;
	assert_int_equal(F->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
	for (CK_ULONG i = 0; i < n; i++) {
		CK_TOKEN_INFO ti;
		if (F->C_GetTokenInfo(slots[i], &ti) == CKR_OK && (ti.flags & CKF_TOKEN_INITIALIZED) &&
		    memcmp(ti.label, "race ", 5) == 0)
			race++;
	}
	if (race != TOKENS)
		fail_msg("%u slots show the %d tokens made during rescans", race, TOKENS);
}

int main(void)
{
	const char *filter = getenv("KT_HOSTILE_FILTER");
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_null_pointers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lengths, setup, teardown),
		cmocka_unit_test_setup_teardown(test_find_unavailable_length, setup, teardown),
		cmocka_unit_test_setup_teardown(test_login_huge_pin_len, setup, teardown),
		cmocka_unit_test_setup_teardown(test_duplicates, setup, teardown),
		cmocka_unit_test_setup_teardown(test_invalid_handles, setup, teardown),
		cmocka_unit_test_setup_teardown(test_destroy_during_operations, setup, teardown),
		cmocka_unit_test_setup_teardown(test_close_session_while_signing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_after_finalize, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mechanism_params, setup, teardown),
		cmocka_unit_test_setup_teardown(test_random_templates, setup, teardown),
		cmocka_unit_test_setup_teardown(test_malformed_certificates, setup, teardown),
		cmocka_unit_test_setup_teardown(test_malformed_key_material, setup, teardown),
		cmocka_unit_test_setup_teardown(test_store_damaged, setup, teardown),
		cmocka_unit_test_setup_teardown(test_get_attribute_1000, setup, teardown),
		cmocka_unit_test_setup_teardown(test_find_counts, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_private_key_public, setup, teardown),
		cmocka_unit_test_setup_teardown(test_public_private_key_needs_login, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rescan_new_store_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_init_token_while_rescanning, setup, teardown),
		/* last: on an unfixed module this one may take the process down */
		cmocka_unit_test_setup_teardown(test_finalize_while_busy, setup, teardown),
	};

	if (filter && *filter)
		cmocka_set_test_filter(filter);
	return cmocka_run_group_tests_name("hostile input", tests, NULL, NULL);
}
