/*
 * Personal data in certificates through the real module: certificates that
 * carry it are private objects; its attributes are read only by a logged-in
 * user (personal_data = login) and, under personal_data = consent, only by
 * a program the holder allowed (asked through the command backend,
 * remembered, revocable); hidden means CKR_ATTRIBUTE_SENSITIVE and no find
 * matches; every disclosure is an audit record without the values.
 */
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
#include <openssl/x509.h>

#include "certfix.h"
#include "fixture.h"
#include "koltamga/pkcs11v.h"

#define F (fx.f)

static CK_SLOT_ID slot;
static CK_SESSION_HANDLE s;
static char answers[PATH_MAX], asked[PATH_MAX], audit[PATH_MAX], consents[PATH_MAX], srcdir[PATH_MAX];
static const char pid[] = "PNOKG-22345678901234";
static unsigned char *der;
static int der_len;

/* A self-signed certificate of a person, with a personal number. */
static void make_cert(void)
{
	EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	X509 *x = X509_new();
	X509_NAME *n = X509_NAME_new();
	assert_non_null(k);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)"Test Person", -1, -1, 0);
	X509_NAME_add_entry_by_txt(n, "serialNumber", MBSTRING_UTF8, (const unsigned char *)pid, -1, -1, 0);
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 0x4242);
	X509_set_subject_name(x, n);
	X509_set_issuer_name(x, n);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	X509_set_pubkey(x, k);
	assert_true(X509_sign(x, k, EVP_sha256()) > 0);
	der = NULL;
	der_len = i2d_X509(x, &der);
	assert_true(der_len > 0);
	X509_NAME_free(n);
	X509_free(x);
	EVP_PKEY_free(k);
}

static void signer_answers(int code)
{
	FILE *fp = fopen(answers, "w");
	assert_non_null(fp);
	fprintf(fp, "out=%s\ncode=%d\n", asked, code);
	fclose(fp);
}

static int reinit(const char *policy)
{
	char extra[3 * PATH_MAX];
	snprintf(extra, sizeof(extra),
		 "confirm = command\nconfirm_program = %s/tests/pinentry/fake-confirm.sh\nconsent_file = %s\n%s",
		 srcdir, consents, policy);
	if (certfix_reinit(extra) != CKR_OK)
		return -1;
	slot = fixture_slot_by_label("personal");
	s = fixture_open_user_session(slot);
	return 0;
}

static int setup(void **state)
{
	const char *src = getenv("KOLTAMGA_SRCDIR");
	if (fixture_setup(state) != 0 || !realpath(src && *src ? src : ".", srcdir))
		return -1;
	snprintf(answers, sizeof(answers), "%s/answers", fx.dir);
	snprintf(asked, sizeof(asked), "%s/asked", fx.dir);
	snprintf(audit, sizeof(audit), "%s/audit.log", fx.dir);
	snprintf(consents, sizeof(consents), "%s/state/consents", fx.dir);
	setenv("KT_FAKE_CONFIRM", answers, 1);
	signer_answers(0);
	fixture_init_token_label("personal");
	make_cert();
	return reinit("");
}

static int teardown(void **state)
{
	OPENSSL_free(der);
	return fixture_teardown(state);
}

static CK_OBJECT_HANDLE store_cert(CK_BBOOL private)
{
	CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
	CK_CERTIFICATE_TYPE ct = CKC_X_509;
	CK_ATTRIBUTE t[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_CERTIFICATE_TYPE, &ct, sizeof(ct) },
		{ CKA_TOKEN, &fx_true, sizeof(fx_true) },
		{ CKA_VALUE, der, (CK_ULONG)der_len },
		{ CKA_LABEL, "person", 6 },
		{ CKA_PRIVATE, &private, sizeof(private) },
	};
	CK_OBJECT_HANDLE h;
	assert_int_equal(F->C_CreateObject(s, t, 6, &h), CKR_OK);
	return h;
}

static CK_ULONG find_by_pid(CK_SESSION_HANDLE in)
{
	CK_ATTRIBUTE t[] = { { CKA_KT_PERSONAL_ID, (void *)pid, strlen(pid) } };
	return fixture_count_objects(in, t, 1);
}

static CK_ULONG find_certs(CK_SESSION_HANDLE in)
{
	CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
	CK_ATTRIBUTE t[] = { { CKA_CLASS, &cls, sizeof(cls) } };
	return fixture_count_objects(in, t, 1);
}

/* Read the personal number and the label in one template. */
static CK_RV read_pid(CK_SESSION_HANDLE in, CK_OBJECT_HANDLE h, char *out, CK_ULONG *out_len, char *label)
{
	CK_ATTRIBUTE t[] = { { CKA_KT_PERSONAL_ID, out, 64 }, { CKA_LABEL, label, 16 } };
	CK_RV rv = F->C_GetAttributeValue(in, h, t, 2);
	*out_len = t[0].ulValueLen;
	assert_int_equal(t[1].ulValueLen, 6); /* the rest of the template is answered */
	label[6] = '\0';
	return rv;
}

static void test_login_policy(void **state)
{
	(void)state;
	char v[64], label[16];
	CK_ULONG n;
	/* Private whatever the template says. */
	CK_OBJECT_HANDLE h = store_cert(CK_FALSE);
	assert_true(fixture_get_bool(s, h, CKA_PRIVATE));
	/* A copy cannot make it public. */
	CK_OBJECT_HANDLE copy;
	CK_ATTRIBUTE pub[] = { { CKA_PRIVATE, &fx_false, sizeof(fx_false) } };
	assert_int_equal(F->C_CopyObject(s, h, pub, 1, &copy), CKR_ATTRIBUTE_READ_ONLY);

	assert_int_equal(read_pid(s, h, v, &n, label), CKR_OK);
	assert_int_equal(n, strlen(pid));
	assert_memory_equal(v, pid, n);
	assert_int_equal(find_by_pid(s), 1);
	/* The disclosure is recorded; the value is not. */
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
	char *log = certfix_read(audit);
	assert_int_equal(certfix_count(log, "\"decision\":\"disclosed\""), 1);
	assert_non_null(strstr(log, "\"reason\":\"personal number\""));
	assert_null(strstr(log, "22345678901234"));
	free(log);
	assert_int_equal(fixture_initialize(), CKR_OK);
	slot = fixture_slot_by_label("personal");

	/* Before login the certificate is not there at all. */
	CK_SESSION_HANDLE anon = fixture_open_session(slot, false);
	assert_int_equal(find_certs(anon), 0);
	/* Nobody was asked under the login policy. */
	char *a = certfix_read(asked);
	assert_int_equal(certfix_count(a, "=== disclose"), 0);
	free(a);
}

static void test_public_certificates(void **state)
{
	(void)state;
	char v[64], label[16];
	CK_ULONG n;
	assert_int_equal(reinit("personal_data_certificates = public\n"), 0);
	CK_OBJECT_HANDLE h = store_cert(CK_FALSE);
	assert_false(fixture_get_bool(s, h, CKA_PRIVATE));
	assert_int_equal(F->C_Logout(s), CKR_OK);

	/* Listed before login, but its personal data hidden. */
	assert_int_equal(find_certs(s), 1);
	assert_int_equal(read_pid(s, h, v, &n, label), CKR_ATTRIBUTE_SENSITIVE);
	assert_int_equal(n, CK_UNAVAILABLE_INFORMATION);
	assert_string_equal(label, "person");
	assert_int_equal(find_by_pid(s), 0); /* no search oracle */

	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
	assert_int_equal(read_pid(s, h, v, &n, label), CKR_OK);
	assert_int_equal(find_by_pid(s), 1);
}

static void test_consent_policy(void **state)
{
	(void)state;
	char v[64], label[16], *a;
	CK_ULONG n;
	assert_int_equal(reinit("personal_data = consent\n"), 0);
	CK_OBJECT_HANDLE h = store_cert(CK_TRUE);

	/* No consent yet: a find does not ask and does not match. */
	assert_int_equal(find_by_pid(s), 0);
	/* The holder says no: hidden, and asked again next time. */
	signer_answers(1);
	assert_int_equal(read_pid(s, h, v, &n, label), CKR_ATTRIBUTE_SENSITIVE);
	assert_int_equal(n, CK_UNAVAILABLE_INFORMATION);
	a = certfix_read(asked);
	assert_int_equal(certfix_count(a, "=== disclose"), 1);
	assert_non_null(strstr(a, "Data: personal number"));
	assert_non_null(strstr(a, "Test Person"));
	assert_null(strstr(a, "22345678901234")); /* the question names the data, not its value */
	free(a);

	/* Yes: disclosed and remembered for this program. */
	signer_answers(0);
	assert_int_equal(read_pid(s, h, v, &n, label), CKR_OK);
	assert_memory_equal(v, pid, strlen(pid));
	assert_int_equal(read_pid(s, h, v, &n, label), CKR_OK);
	assert_int_equal(find_by_pid(s), 1);
	a = certfix_read(asked);
	assert_int_equal(certfix_count(a, "=== disclose"), 2);
	free(a);
	char *c = certfix_read(consents);
	char exe[PATH_MAX];
	ssize_t k = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	assert_true(k > 0);
	exe[k] = '\0';
	assert_non_null(strstr(c, exe));
	free(c);

	/* Revoked (the file is one program per line; docs/security.md):
	 * asked again. */
	FILE *fp = fopen(consents, "w");
	assert_non_null(fp);
	fclose(fp);
	signer_answers(1);
	assert_int_equal(read_pid(s, h, v, &n, label), CKR_ATTRIBUTE_SENSITIVE);
	a = certfix_read(asked);
	assert_int_equal(certfix_count(a, "=== disclose"), 3);
	free(a);

	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
	char *log = certfix_read(audit);
	assert_int_equal(certfix_count(log, "\"decision\":\"withheld\""), 2);
	assert_int_equal(certfix_count(log, "\"decision\":\"disclosed\""), 2);
	assert_null(strstr(log, "22345678901234"));
	free(log);
	assert_int_equal(fixture_initialize(), CKR_OK);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_login_policy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_public_certificates, setup, teardown),
		cmocka_unit_test_setup_teardown(test_consent_policy, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
