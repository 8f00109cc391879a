/* Unit tests of certificate parsing: every attribute of the test PKI's
 * certificates (tests/pki/gen.sh), malformed DER, the OID table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "certattrs.h"
#include <koltamga/pkcs11v.h>

#define KT_ARC "2.25.276476776255599631008025005096289209468"

static char pki[256];

static int make_pki(void **state)
{
	const char *src = getenv("KOLTAMGA_SRCDIR");
	char cmd[1024];

	(void)state;
	snprintf(pki, sizeof(pki), "%s/kt-certattrs-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(pki))
		return -1;
	snprintf(cmd, sizeof(cmd), "sh '%s/tests/pki/gen.sh' '%s' >/dev/null", src ? src : ".", pki);
	return system(cmd) == 0 ? 0 : -1;
}

static int remove_pki(void **state)
{
	char cmd[512];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", pki);
	return system(cmd) == 0 ? 0 : -1;
}

static X509 *load_x509(const char *name)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s.pem", pki, name);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	assert_non_null(x);
	return x;
}

/* DER of a test certificate (free with OPENSSL_free). */
static unsigned char *load_der(const char *name, CK_ULONG *len)
{
	X509 *x = load_x509(name);
	unsigned char *der = NULL;
	int n = i2d_X509(x, &der);
	X509_free(x);
	assert_true(n > 0);
	*len = (CK_ULONG)n;
	return der;
}

static struct attrs *derive(const char *name)
{
	CK_ULONG len;
	unsigned char *der = load_der(name, &len);
	struct attrs *a = NULL;
	assert_int_equal(certattrs_derive(der, len, &a), CKR_OK);
	assert_non_null(a);
	OPENSSL_free(der);
	return a;
}

static void text_is(const struct attrs *a, CK_ATTRIBUTE_TYPE t, const char *want)
{
	const CK_ATTRIBUTE *v = attrs_get(a, t);
	if (!v)
		fail_msg("attribute 0x%lx absent, want \"%s\"", (unsigned long)t, want);
	if (v->ulValueLen != strlen(want) || memcmp(v->pValue, want, v->ulValueLen) != 0)
		fail_msg("attribute 0x%lx is \"%.*s\", want \"%s\"", (unsigned long)t,
			 (int)v->ulValueLen, (const char *)v->pValue, want);
}

static void bytes_are(const struct attrs *a, CK_ATTRIBUTE_TYPE t, const void *want, size_t n)
{
	const CK_ATTRIBUTE *v = attrs_get(a, t);
	assert_non_null(v);
	assert_int_equal(v->ulValueLen, n);
	if (n)
		assert_memory_equal(v->pValue, want, n);
}

static void ulong_is(const struct attrs *a, CK_ATTRIBUTE_TYPE t, CK_ULONG want)
{
	CK_ULONG v = 0;
	if (!attrs_get_ulong(a, t, &v))
		fail_msg("attribute 0x%lx absent or not a CK_ULONG", (unsigned long)t);
	assert_int_equal(v, want);
}

static void bool_is(const struct attrs *a, CK_ATTRIBUTE_TYPE t, bool want)
{
	CK_BBOOL v = 2;
	assert_true(attrs_get_bool(a, t, &v));
	assert_int_equal(v, want ? CK_TRUE : CK_FALSE);
}

static void date_is(const struct attrs *a, CK_ATTRIBUTE_TYPE t, const char *yyyymmdd)
{
	bytes_are(a, t, yyyymmdd, 8); /* CK_DATE is year[4] month[2] day[2] */
}

static void absent(const struct attrs *a, const CK_ATTRIBUTE_TYPE *types, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (attrs_has(a, types[i]))
			fail_msg("attribute 0x%lx present, want absent", (unsigned long)types[i]);
}

/* "YYYYMMDDhhmmssZ" straight from the certificate's UTCTime text. */
static void validity_is(const struct attrs *a, X509 *x)
{
	const ASN1_TIME *t[2] = { X509_get0_notBefore(x), X509_get0_notAfter(x) };
	CK_ATTRIBUTE_TYPE types[2] = { CKA_KT_NOT_BEFORE, CKA_KT_NOT_AFTER };
	CK_ATTRIBUTE_TYPE dates[2] = { CKA_START_DATE, CKA_END_DATE };
	for (int i = 0; i < 2; i++) {
		char want[16];
		assert_int_equal(ASN1_STRING_type(t[i]), V_ASN1_UTCTIME);
		assert_int_equal(ASN1_STRING_length(t[i]), 13);
		snprintf(want, sizeof(want), "20%.13s", (const char *)ASN1_STRING_get0_data(t[i]));
		text_is(a, types[i], want);
		date_is(a, dates[i], want);
	}
}

/* The attributes every certificate has, checked against OpenSSL's view. */
static void standard_ok(const struct attrs *a, const char *name, const char *issuer)
{
	X509 *x = load_x509(name);
	unsigned char *enc = NULL, md[SHA_DIGEST_LENGTH];
	int n;

	n = i2d_X509_NAME(X509_get_subject_name(x), &enc);
	bytes_are(a, CKA_SUBJECT, enc, (size_t)n);
	OPENSSL_free(enc);
	enc = NULL;
	n = i2d_X509_NAME(X509_get_issuer_name(x), &enc);
	bytes_are(a, CKA_ISSUER, enc, (size_t)n);
	OPENSSL_free(enc);
	enc = NULL;
	n = i2d_ASN1_INTEGER(X509_get0_serialNumber(x), &enc);
	bytes_are(a, CKA_SERIAL_NUMBER, enc, (size_t)n);
	OPENSSL_free(enc);
	enc = NULL;
	n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &enc);
	bytes_are(a, CKA_PUBLIC_KEY_INFO, enc, (size_t)n);
	OPENSSL_free(enc);
	enc = NULL;
	n = i2d_X509(x, &enc);
	SHA1(enc, (size_t)n, md);
	bytes_are(a, CKA_CHECK_VALUE, md, 3);
	OPENSSL_free(enc);
	validity_is(a, x);
	ulong_is(a, CKA_NAME_HASH_ALGORITHM, CKM_SHA_1);
	/* gen.sh makes key identifiers as SHA-1 of the key (RFC 5280 method
	 * 1): exactly the PKCS#11 hashes. */
	const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(x);
	assert_non_null(ski);
	bytes_are(a, CKA_HASH_OF_SUBJECT_PUBLIC_KEY, ASN1_STRING_get0_data(ski), 20);
	if (issuer) {
		X509 *ix = load_x509(issuer);
		const ASN1_OCTET_STRING *iski = X509_get0_subject_key_id(ix);
		bytes_are(a, CKA_HASH_OF_ISSUER_PUBLIC_KEY, ASN1_STRING_get0_data(iski), 20);
		bytes_are(a, CKA_KT_ISSUER_KEY_ID, ASN1_STRING_get0_data(iski), 20);
		X509_free(ix);
	} else {
		bytes_are(a, CKA_HASH_OF_ISSUER_PUBLIC_KEY, NULL, 0);
		assert_false(attrs_has(a, CKA_KT_ISSUER_KEY_ID));
	}
	X509_free(x);
}

static const char sign_tool[] = "СКЗИ КолТамга 1.0";
static const char ca_sign_tool[] = "СКЗИ КолТамга-УЦ 2.0";
static const char ca_tool[] = "Программный комплекс УЦ КолТамга 2.0";
static const char ca_sign_tool_cert[] = "Сертификат соответствия № KG-SKZI-0042";
static const char ca_tool_cert[] = "Сертификат соответствия № KG-UC-0017";
/* DER INTEGER 0x1001: sub-ca's serial (root-ca's second issue). */
static const unsigned char sub_ca_serial[] = { 0x02, 0x02, 0x10, 0x01 };

static void sub_ca_issued(const struct attrs *a)
{
	text_is(a, CKA_KT_ISSUER_NAME, "Тест Удостоверяющий Центр");
	text_is(a, CKA_KT_ISSUER_ADDRESS, "Бишкек");
}

static void sign_tools(const struct attrs *a)
{
	text_is(a, CKA_KT_SUBJECT_SIGN_TOOL, sign_tool);
	text_is(a, CKA_KT_ISSUER_SIGN_TOOL, ca_sign_tool);
	text_is(a, CKA_KT_ISSUER_CA_TOOL, ca_tool);
	text_is(a, CKA_KT_ISSUER_SIGN_TOOL_CERT, ca_sign_tool_cert);
	text_is(a, CKA_KT_ISSUER_CA_TOOL_CERT, ca_tool_cert);
	bytes_are(a, CKA_KT_ISSUER_CERT_SERIAL, sub_ca_serial, sizeof(sub_ca_serial));
}

static void person_like(const struct attrs *a)
{
	text_is(a, CKA_KT_SURNAME, "Асанов");
	text_is(a, CKA_KT_GIVEN_NAMES, "Бакыт Маратович");
	text_is(a, CKA_KT_COMMON_NAME, "Асанов Бакыт Маратович");
	text_is(a, CKA_KT_COUNTRY, "KG");
	text_is(a, CKA_KT_PERSONAL_ID, "PNOKG-12345678901234");
	ulong_is(a, CKA_KT_PERSONAL_ID_KIND, CK_KT_PID_PNO);
	date_is(a, CKA_KT_BIRTH_DATE, "19850314");
	text_is(a, CKA_KT_BIRTH_PLACE, "Bishkek");
	bool_is(a, CKA_KT_QC_COMPLIANCE, true);
	bool_is(a, CKA_KT_QC_SSCD, true);
	ulong_is(a, CKA_KT_QC_TYPE, CK_KT_QC_TYPE_ESIGN);
	text_is(a, CKA_KT_QC_LEGISLATION, "KG");
	text_is(a, CKA_KT_QC_LIMIT_VALUE, "1000000 KGS");
	ulong_is(a, CKA_KT_HOLDER_TYPE, CK_KT_HOLDER_NATURAL_PERSON);
	ulong_is(a, CKA_KT_KEY_USAGE, CK_KT_KU_DIGITAL_SIGNATURE | CK_KT_KU_NON_REPUDIATION);
	text_is(a, CKA_KT_EXT_KEY_USAGE, "1.3.6.1.5.5.7.3.4");
	text_is(a, CKA_KT_POLICIES, "0.4.0.194112.1.2," KT_ARC ".2.1");
	ulong_is(a, CKA_CERTIFICATE_CATEGORY, 0);
	sub_ca_issued(a);
	sign_tools(a);
	static const CK_ATTRIBUTE_TYPE none[] = {
		CKA_KT_ORGANIZATION, CKA_KT_ORG_ADDRESS, CKA_KT_PERSON_ADDRESS,
		CKA_KT_REGISTRATION_NUMBER, CKA_KT_TITLE, CKA_KT_POWERS, CKA_KT_POWERS_UNTIL,
		CKA_KT_ISSUER_ACCREDITATION, CKA_KT_REVOCATION_STATUS, CKA_KT_REVOCATION_CHECKED,
	};
	absent(a, none, KT_ARRAY_SIZE(none));
}

static void test_person(void **state)
{
	(void)state;
	struct attrs *a = derive("person");
	standard_ok(a, "person", "sub-ca");
	person_like(a);
	attrs_free(a);
}

static void test_rsa_person(void **state)
{
	(void)state;
	struct attrs *a = derive("rsa-person");
	standard_ok(a, "rsa-person", "sub-ca");
	person_like(a);
	const CK_ATTRIBUTE *spki = attrs_get(a, CKA_PUBLIC_KEY_INFO);
	const unsigned char *p = spki->pValue;
	EVP_PKEY *k = d2i_PUBKEY(NULL, &p, (long)spki->ulValueLen);
	assert_non_null(k);
	assert_int_equal(EVP_PKEY_get_base_id(k), EVP_PKEY_RSA);
	assert_int_equal(EVP_PKEY_get_bits(k), 2048);
	EVP_PKEY_free(k);
	attrs_free(a);
}

static void test_representative(void **state)
{
	(void)state;
	struct attrs *a = derive("representative");
	standard_ok(a, "representative", "sub-ca");
	text_is(a, CKA_KT_SURNAME, "Асанова");
	text_is(a, CKA_KT_GIVEN_NAMES, "Айгуль");
	text_is(a, CKA_KT_COMMON_NAME, "Асанова Айгуль");
	text_is(a, CKA_KT_ORGANIZATION, "ОсОО Тест Компани");
	text_is(a, CKA_KT_REGISTRATION_NUMBER, "NTRKG-1234567");
	text_is(a, CKA_KT_TITLE, "Директор");
	text_is(a, CKA_KT_ORG_ADDRESS, "ул. Киевская 96, Бишкек, Чуйская область");
	text_is(a, CKA_KT_PERSONAL_ID, "PNOKG-22345678901234");
	ulong_is(a, CKA_KT_PERSONAL_ID_KIND, CK_KT_PID_PNO);
	ulong_is(a, CKA_KT_HOLDER_TYPE, CK_KT_HOLDER_REPRESENTATIVE);
	text_is(a, CKA_KT_POWERS,
		"Подписывать договоры и налоговую отчётность от имени ОсОО Тест Компани");
	text_is(a, CKA_KT_POWERS_UNTIL, "20301231235959Z");
	bool_is(a, CKA_KT_QC_COMPLIANCE, true);
	ulong_is(a, CKA_KT_QC_TYPE, CK_KT_QC_TYPE_ESIGN);
	ulong_is(a, CKA_KT_KEY_USAGE, CK_KT_KU_DIGITAL_SIGNATURE | CK_KT_KU_NON_REPUDIATION);
	sub_ca_issued(a);
	sign_tools(a);
	static const CK_ATTRIBUTE_TYPE none[] = { CKA_KT_PERSON_ADDRESS, CKA_KT_BIRTH_DATE,
						  CKA_KT_BIRTH_PLACE };
	absent(a, none, KT_ARRAY_SIZE(none));
	attrs_free(a);
}

static void test_seal(void **state)
{
	(void)state;
	struct attrs *a = derive("seal");
	standard_ok(a, "seal", "sub-ca");
	text_is(a, CKA_KT_ORGANIZATION, "Государственная налоговая служба");
	text_is(a, CKA_KT_REGISTRATION_NUMBER, "NTRKG-7654321");
	text_is(a, CKA_KT_COMMON_NAME, "Tax receipts system");
	ulong_is(a, CKA_KT_HOLDER_TYPE, CK_KT_HOLDER_LEGAL_ENTITY);
	ulong_is(a, CKA_KT_QC_TYPE, CK_KT_QC_TYPE_ESEAL);
	bool_is(a, CKA_KT_QC_COMPLIANCE, true);
	bool_is(a, CKA_KT_QC_SSCD, true);
	text_is(a, CKA_KT_QC_LEGISLATION, "KG");
	text_is(a, CKA_KT_POLICIES, KT_ARC ".2.1");
	sub_ca_issued(a);
	sign_tools(a);
	static const CK_ATTRIBUTE_TYPE none[] = {
		CKA_KT_SURNAME, CKA_KT_GIVEN_NAMES, CKA_KT_BIRTH_DATE, CKA_KT_BIRTH_PLACE,
		CKA_KT_PERSONAL_ID, CKA_KT_PERSONAL_ID_KIND, CKA_KT_TITLE, CKA_KT_POWERS,
		CKA_KT_QC_LIMIT_VALUE, CKA_KT_EXT_KEY_USAGE, CKA_KT_ORG_ADDRESS, CKA_KT_PERSON_ADDRESS,
	};
	absent(a, none, KT_ARRAY_SIZE(none));
	attrs_free(a);
}

static void test_kz_person(void **state)
{
	(void)state;
	struct attrs *a = derive("kz-person");
	standard_ok(a, "kz-person", "sub-ca");
	text_is(a, CKA_KT_SURNAME, "ИВАНОВ");
	text_is(a, CKA_KT_GIVEN_NAMES, "ИВАН");
	text_is(a, CKA_KT_COMMON_NAME, "ИВАНОВ ИВАН");
	text_is(a, CKA_KT_COUNTRY, "KZ");
	text_is(a, CKA_KT_PERSONAL_ID, "IIN123456789012");
	ulong_is(a, CKA_KT_PERSONAL_ID_KIND, CK_KT_PID_IIN);
	text_is(a, CKA_KT_REGISTRATION_NUMBER, "BIN123456789012");
	/* The role EKU says "individual", although a BIN is present. */
	ulong_is(a, CKA_KT_HOLDER_TYPE, CK_KT_HOLDER_NATURAL_PERSON);
	text_is(a, CKA_KT_PERSON_ADDRESS, "Алматы");
	text_is(a, CKA_KT_EXT_KEY_USAGE, "1.3.6.1.5.5.7.3.4,1.2.398.3.3.4.1.1");
	text_is(a, CKA_KT_POLICIES, "1.2.398.3.3.2.1");
	text_is(a, CKA_KT_QC_LEGISLATION, "KZ");
	ulong_is(a, CKA_KT_QC_TYPE, CK_KT_QC_TYPE_ESIGN);
	bool_is(a, CKA_KT_QC_COMPLIANCE, true);
	bool_is(a, CKA_KT_QC_SSCD, false);
	sub_ca_issued(a);
	static const CK_ATTRIBUTE_TYPE none[] = {
		CKA_KT_ORGANIZATION, CKA_KT_ORG_ADDRESS, CKA_KT_SUBJECT_SIGN_TOOL,
		CKA_KT_ISSUER_SIGN_TOOL, CKA_KT_ISSUER_CERT_SERIAL, CKA_KT_BIRTH_DATE,
		CKA_KT_QC_LIMIT_VALUE, CKA_KT_POWERS,
	};
	absent(a, none, KT_ARRAY_SIZE(none));
	attrs_free(a);
}

static void test_legacy(void **state)
{
	(void)state;
	struct attrs *a = derive("legacy");
	standard_ok(a, "legacy", "legacy-ca");
	text_is(a, CKA_KT_SURNAME, "Old");
	text_is(a, CKA_KT_GIVEN_NAMES, "Legacy");
	text_is(a, CKA_KT_COMMON_NAME, "Legacy Person");
	text_is(a, CKA_KT_PERSONAL_ID, "PNOKG-99999999999999");
	text_is(a, CKA_KT_ISSUER_NAME, "Old Law Centre");
	text_is(a, CKA_KT_ISSUER_ADDRESS, "Bishkek");
	ulong_is(a, CKA_KT_HOLDER_TYPE, CK_KT_HOLDER_NATURAL_PERSON);
	bool_is(a, CKA_KT_QC_COMPLIANCE, false);
	bool_is(a, CKA_KT_QC_SSCD, false);
	ulong_is(a, CKA_KT_KEY_USAGE, CK_KT_KU_DIGITAL_SIGNATURE | CK_KT_KU_NON_REPUDIATION);
	static const CK_ATTRIBUTE_TYPE none[] = {
		CKA_KT_QC_TYPE, CKA_KT_QC_LEGISLATION, CKA_KT_QC_LIMIT_VALUE, CKA_KT_BIRTH_DATE,
		CKA_KT_BIRTH_PLACE, CKA_KT_SUBJECT_SIGN_TOOL, CKA_KT_ISSUER_SIGN_TOOL,
		CKA_KT_ISSUER_CA_TOOL, CKA_KT_ISSUER_SIGN_TOOL_CERT, CKA_KT_ISSUER_CA_TOOL_CERT,
		CKA_KT_ISSUER_CERT_SERIAL, CKA_KT_EXT_KEY_USAGE, CKA_KT_POLICIES, CKA_KT_POWERS,
		CKA_KT_ORGANIZATION,
	};
	absent(a, none, KT_ARRAY_SIZE(none));
	attrs_free(a);
}

static void test_others(void **state)
{
	(void)state;
	struct attrs *a = derive("nosign");
	ulong_is(a, CKA_KT_KEY_USAGE, CK_KT_KU_KEY_ENCIPHERMENT);
	attrs_free(a);
	a = derive("root-ca");
	standard_ok(a, "root-ca", NULL);
	ulong_is(a, CKA_CERTIFICATE_CATEGORY, 2);
	ulong_is(a, CKA_KT_KEY_USAGE, CK_KT_KU_KEY_CERT_SIGN | CK_KT_KU_CRL_SIGN);
	ulong_is(a, CKA_KT_HOLDER_TYPE, CK_KT_HOLDER_LEGAL_ENTITY);
	attrs_free(a);
	a = derive("sub-ca");
	ulong_is(a, CKA_CERTIFICATE_CATEGORY, 2);
	text_is(a, CKA_KT_ORG_ADDRESS, "Бишкек");
	attrs_free(a);
	/* Expired, not yet valid, revoked: parsing does not judge. */
	const char *more[] = { "expired", "notyet", "revoked", "suspended", "rogue" };
	for (size_t i = 0; i < KT_ARRAY_SIZE(more); i++) {
		a = derive(more[i]);
		bool_is(a, CKA_KT_QC_COMPLIANCE, true);
		attrs_free(a);
	}
}

static void expect_invalid(const unsigned char *der, CK_ULONG len)
{
	struct attrs *a = (struct attrs *)1;
	assert_int_equal(certattrs_derive(der, len, &a), CKR_ATTRIBUTE_VALUE_INVALID);
	assert_null(a);
}

static void test_malformed(void **state)
{
	(void)state;
	CK_ULONG len;
	unsigned char *der = load_der("person", &len);
	unsigned char *buf = malloc(len + 16);
	assert_non_null(buf);
	struct attrs *a = NULL;

	/* Every truncation, in a buffer of exactly that size so ASan sees any
	 * read past it. */
	for (CK_ULONG n = 0; n < len; n++) {
		unsigned char *t = malloc(n ? n : 1);
		memcpy(t, der, n);
		expect_invalid(t, n);
		free(t);
	}
	/* Trailing garbage, even a single zero byte. */
	memcpy(buf, der, len);
	buf[len] = 0;
	expect_invalid(buf, len + 1);
	memcpy(buf + len, der, 16);
	expect_invalid(buf, len + 16);
	/* Version: 30 82 xx xx 30 82 xx xx a0 03 02 01 <v>. */
	assert_memory_equal(der + 8, "\xa0\x03\x02\x01\x02", 5);
	memcpy(buf, der, len);
	buf[12] = 3; /* "v4" */
	expect_invalid(buf, len);
	buf[12] = 0; /* v1 with extensions */
	expect_invalid(buf, len);
	buf[12] = 0xff; /* negative */
	expect_invalid(buf, len);
	/* BER, not DER: the outer length in a longer form than needed. */
	assert_int_equal(der[1], 0x82);
	buf[0] = 0x30;
	buf[1] = 0x83;
	buf[2] = 0;
	memcpy(buf + 3, der + 2, len - 2);
	expect_invalid(buf, len + 1);
	/* Absurd lengths. */
	memcpy(buf, der, len);
	buf[2] = 0xff;
	buf[3] = 0xff;
	expect_invalid(buf, len);
	static const unsigned char huge[] = { 0x30, 0x84, 0x7f, 0xff, 0xff, 0xff, 0x30, 0x00 };
	expect_invalid(huge, sizeof(huge));
	static const unsigned char over[] = { 0x30, 0x88, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	expect_invalid(over, sizeof(over));
	/* Nothing at all, and an impossible length. */
	expect_invalid(NULL, 10);
	expect_invalid(der, 0);
	expect_invalid(der, (CK_ULONG)1 << 62);
	assert_int_equal(certattrs_derive(der, len, NULL), CKR_ARGUMENTS_BAD);

	/* Random bytes, and random damage to a real certificate: an error or
	 * a result, never a crash (ASan/valgrind watch this). */
	srand(12345);
	for (int i = 0; i < 2000; i++) {
		CK_ULONG n = 1 + (CK_ULONG)rand() % (len + 8);
		unsigned char *r = malloc(n);
		for (CK_ULONG k = 0; k < n; k++)
			r[k] = (unsigned char)rand();
		if (i % 2) {
			r[0] = 0x30;
			if (n > 1)
				r[1] = 0x82;
		}
		expect_invalid(r, n);
		free(r);
	}
	for (int i = 0; i < 3000; i++) {
		memcpy(buf, der, len);
		int flips = 1 + rand() % 4;
		for (int k = 0; k < flips; k++)
			buf[(CK_ULONG)rand() % len] ^= (unsigned char)(1u << (rand() % 8));
		a = NULL;
		CK_RV rv = certattrs_derive(buf, len, &a);
		assert_true(rv == CKR_OK || rv == CKR_ATTRIBUTE_VALUE_INVALID);
		assert_true((rv == CKR_OK) == (a != NULL));
		attrs_free(a);
	}
	free(buf);
	OPENSSL_free(der);
}

static void test_add_oid(void **state)
{
	(void)state;
	static const char *bad[] = {
		"", "1", "1.", ".1", "1..2", "3.1", "1.40", "01.2", "1.02", "1.2a", "1.2.-3",
		"1.2 .3", "a.b", "1.2.99999999999999999999999999",
	};
	char longoid[200];

	for (size_t i = 0; i < KT_ARRAY_SIZE(bad); i++)
		assert_int_equal(certattrs_add_oid("personal_id", bad[i]), CKR_ARGUMENTS_BAD);
	memset(longoid, 0, sizeof(longoid));
	strcpy(longoid, "1.2");
	while (strlen(longoid) < sizeof(longoid) - 3)
		strcat(longoid, ".1");
	assert_int_equal(certattrs_add_oid("personal_id", longoid), CKR_ARGUMENTS_BAD);
	assert_int_equal(certattrs_add_oid("no_such_row", "1.2.3"), CKR_ARGUMENTS_BAD);
	assert_int_equal(certattrs_add_oid(NULL, "1.2.3"), CKR_ARGUMENTS_BAD);
	assert_int_equal(certattrs_add_oid("powers", NULL), CKR_ARGUMENTS_BAD);

	/* A configured OID takes the row's meaning: emailProtection as a
	 * "legal entity" role makes the person's certificate a seal's... */
	struct attrs *a = derive("person");
	ulong_is(a, CKA_KT_HOLDER_TYPE, CK_KT_HOLDER_NATURAL_PERSON);
	attrs_free(a);
	assert_int_equal(certattrs_add_oid("role_legal_entity", "1.3.6.1.5.5.7.3.4"), CKR_OK);
	/* One name entry has one meaning, and built-in rows come first:
	 * kz-person's OU "BIN..." stays a registration number. */
	assert_int_equal(certattrs_add_oid("organization", "2.5.4.11"), CKR_OK);
	assert_int_equal(certattrs_add_oid("personal_id", "2.999.1"), CKR_OK);
	a = derive("person");
	ulong_is(a, CKA_KT_HOLDER_TYPE, CK_KT_HOLDER_LEGAL_ENTITY);
	attrs_free(a);
	a = derive("kz-person");
	text_is(a, CKA_KT_REGISTRATION_NUMBER, "BIN123456789012");
	assert_false(attrs_has(a, CKA_KT_ORGANIZATION));
	attrs_free(a);
	/* Reset restores the built-in table. */
	certattrs_reset();
	a = derive("person");
	ulong_is(a, CKA_KT_HOLDER_TYPE, CK_KT_HOLDER_NATURAL_PERSON);
	attrs_free(a);
	a = derive("kz-person");
	assert_false(attrs_has(a, CKA_KT_ORGANIZATION));
	attrs_free(a);
	certattrs_reset();
}

static void test_classes(void **state)
{
	(void)state;
	static const CK_ATTRIBUTE_TYPE personal[] = { CKA_KT_BIRTH_DATE, CKA_KT_BIRTH_PLACE,
						      CKA_KT_PERSONAL_ID, CKA_KT_PERSONAL_ID_KIND,
						      CKA_KT_PERSON_ADDRESS };
	for (size_t i = 0; i < KT_ARRAY_SIZE(personal); i++) {
		assert_true(certattrs_is_personal(personal[i]));
		assert_true(certattrs_is_derived(personal[i]));
	}
	assert_false(certattrs_is_personal(CKA_KT_ORG_ADDRESS));
	assert_false(certattrs_is_personal(CKA_KT_SURNAME));
	assert_false(certattrs_is_personal(CKA_SUBJECT));
	assert_true(certattrs_is_derived(CKA_SUBJECT));
	assert_true(certattrs_is_derived(CKA_HASH_OF_ISSUER_PUBLIC_KEY));
	assert_true(certattrs_is_derived(CKA_KT_REVOCATION_STATUS));
	assert_false(certattrs_is_derived(CKA_KT_LAST + 1));
	assert_false(certattrs_is_derived(CKA_KT_BASE));
	assert_false(certattrs_is_derived(CKA_LABEL));
	assert_false(certattrs_is_derived(CKA_ID));
	assert_false(certattrs_is_derived(CKA_VALUE));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_person),
		cmocka_unit_test(test_rsa_person),
		cmocka_unit_test(test_representative),
		cmocka_unit_test(test_seal),
		cmocka_unit_test(test_kz_person),
		cmocka_unit_test(test_legacy),
		cmocka_unit_test(test_others),
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_add_oid),
		cmocka_unit_test(test_classes),
	};
	return cmocka_run_group_tests(tests, make_pki, remove_pki);
}
