/*
 * The one-way compromise mark (CKA_KT_COMPROMISED) and the imported-key
 * policy, through the real module: a marked key never signs again, the
 * mark cannot be cleared or copied away, survives restarts, may be set by
 * the SO through the pair's public key, and leaves a report for the
 * certification centre that carries no secret.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "certfix.h"
#include "fixture.h"
#include "koltamga/pkcs11v.h"

#define F (fx.f)

static CK_SLOT_ID slot;
static CK_SESSION_HANDLE s;
static char reports[PATH_MAX];
static const CK_BYTE key_id[] = { 0xc0, 0xff, 0xee, 0x01 };
static const char reason[] = "token lost on 2026-11-21";

static int setup(void **state)
{
	char extra[PATH_MAX + 64];
	if (fixture_setup_uninit(state) != 0)
		return -1;
	snprintf(reports, sizeof(reports), "%s/reports", fx.dir);
	snprintf(extra, sizeof(extra), "compromise_reports = %s\n", reports);
	if (certfix_conf(extra) != 0 || fixture_initialize() != CKR_OK)
		return -1;
	slot = fixture_init_token_label("compromise");
	s = fixture_open_user_session(slot);
	return 0;
}

/* A token key pair with key_id. */
static void token_pair(CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
	CK_ATTRIBUTE pub_t[] = { { CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len },
				 { CKA_TOKEN, &fx_true, sizeof(fx_true) },
				 { CKA_ID, (void *)key_id, sizeof(key_id) } };
	CK_ATTRIBUTE priv_t[] = { { CKA_TOKEN, &fx_true, sizeof(fx_true) }, { CKA_ID, (void *)key_id, sizeof(key_id) } };
	assert_int_equal(fixture_gen_keypair(s, CKM_EC_KEY_PAIR_GEN, pub_t, 3, priv_t, 2, pub, priv), CKR_OK);
}

static CK_RV sign_in(CK_SESSION_HANDLE in, CK_OBJECT_HANDLE priv, CK_BYTE *sig, CK_ULONG *len)
{
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	CK_RV rv = F->C_SignInit(in, &m, priv);
	if (rv != CKR_OK)
		return rv;
	return F->C_Sign(in, (CK_BYTE_PTR) "receipt 42", 10, sig, len);
}

static CK_RV mark(CK_SESSION_HANDLE in, CK_OBJECT_HANDLE o, CK_BBOOL value)
{
	CK_ATTRIBUTE t[] = { { CKA_KT_COMPROMISE_REASON, (void *)reason, sizeof(reason) - 1 },
			     { CKA_KT_COMPROMISED, &value, sizeof(value) } };
	return F->C_SetAttributeValue(in, o, t, 2);
}

/* The reports written so far, concatenated (NULL when there are none). */
static char *read_reports(int *count)
{
	DIR *d = opendir(reports);
	char *all = calloc(1, 1);
	size_t len = 0;
	struct dirent *e;
	*count = 0;
	if (!d)
		return all;
	while ((e = readdir(d))) {
		char path[2 * PATH_MAX];
		if (e->d_name[0] == '.')
			continue;
		assert_null(strstr(e->d_name, ".part")); /* complete or not at all */
		snprintf(path, sizeof(path), "%s/%s", reports, e->d_name);
		FILE *fp = fopen(path, "r");
		assert_non_null(fp);
		char buf[4096];
		size_t n = fread(buf, 1, sizeof(buf), fp);
		fclose(fp);
		all = realloc(all, len + n + 1);
		memcpy(all + len, buf, n);
		len += n;
		all[len] = '\0';
		(*count)++;
	}
	closedir(d);
	return all;
}

static void test_user_marks_key(void **state)
{
	(void)state;
	CK_OBJECT_HANDLE pub, priv, copy;
	CK_BYTE sig[80];
	CK_ULONG len = sizeof(sig);
	token_pair(&pub, &priv);
	assert_int_equal(sign_in(s, priv, sig, &len), CKR_OK);
	assert_false(fixture_get_bool(s, priv, CKA_KT_COMPROMISED));
	/* Setting "not compromised" on a clean key changes nothing. */
	assert_int_equal(mark(s, priv, CK_FALSE), CKR_OK);

	assert_int_equal(mark(s, priv, CK_TRUE), CKR_OK);
	assert_true(fixture_get_bool(s, priv, CKA_KT_COMPROMISED));
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_KEY_FUNCTION_NOT_PERMITTED);
	/* One way: no clearing, no copy without the mark. */
	assert_int_equal(mark(s, priv, CK_FALSE), CKR_ATTRIBUTE_READ_ONLY);
	CK_BBOOL no = CK_FALSE;
	CK_ATTRIBUTE clean[] = { { CKA_KT_COMPROMISED, &no, sizeof(no) } };
	assert_int_equal(F->C_CopyObject(s, priv, clean, 1, &copy), CKR_ATTRIBUTE_READ_ONLY);
	assert_int_equal(F->C_CopyObject(s, priv, NULL, 0, &copy), CKR_OK);
	assert_int_equal(F->C_SignInit(s, &m, copy), CKR_KEY_FUNCTION_NOT_PERMITTED);
	/* Signatures made before still verify. */
	assert_int_equal(F->C_VerifyInit(s, &m, pub), CKR_OK);
	assert_int_equal(F->C_Verify(s, (CK_BYTE_PTR) "receipt 42", 10, sig, len), CKR_OK);

	/* The report names the key, the reason and who marked it. */
	int n;
	char *r = read_reports(&n);
	assert_int_equal(n, 1);
	assert_non_null(strstr(r, "key id: c0ffee01"));
	assert_non_null(strstr(r, reason));
	assert_non_null(strstr(r, "marked by: user"));
	assert_non_null(strstr(r, "marked object: private key"));
	assert_null(strstr(r, FX_USER_PIN));
	free(r);

	/* The mark is on the token (a device's: beside the reports): it
	 * survives a restart with the same configuration. */
	char again[PATH_MAX + 64];
	snprintf(again, sizeof(again), "compromise_reports = %s\n", reports);
	assert_int_equal(certfix_reinit(again), CKR_OK);
	slot = fixture_slot_by_label("compromise");
	s = fixture_open_user_session(slot);
	CK_OBJECT_CLASS pc = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE find[] = { { CKA_CLASS, &pc, sizeof(pc) }, { CKA_ID, (void *)key_id, sizeof(key_id) } };
	CK_ULONG found = 0;
	assert_int_equal(F->C_FindObjectsInit(s, find, 2), CKR_OK);
	assert_int_equal(F->C_FindObjects(s, &priv, 1, &found), CKR_OK);
	assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);
	assert_int_equal(found, 1);
	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_KEY_FUNCTION_NOT_PERMITTED);
}

/* The SO cannot see private keys, but marks the pair's public key. */
static void test_so_marks_public_key(void **state)
{
	(void)state;
	CK_OBJECT_HANDLE pub, priv, so_pub;
	CK_BYTE sig[80];
	CK_ULONG len = sizeof(sig), found = 0;
	token_pair(&pub, &priv);
	assert_int_equal(F->C_Logout(s), CKR_OK);
	CK_SESSION_HANDLE so;
	assert_int_equal(F->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &so), CKR_OK);
	assert_int_equal(F->C_CloseSession(s), CKR_OK);
	assert_int_equal(F->C_Login(so, CKU_SO, FX_PIN(FX_SO_PIN)), CKR_OK);
	CK_OBJECT_CLASS pc = CKO_PUBLIC_KEY;
	CK_ATTRIBUTE find[] = { { CKA_CLASS, &pc, sizeof(pc) }, { CKA_ID, (void *)key_id, sizeof(key_id) } };
	assert_int_equal(F->C_FindObjectsInit(so, find, 2), CKR_OK);
	assert_int_equal(F->C_FindObjects(so, &so_pub, 1, &found), CKR_OK);
	assert_int_equal(F->C_FindObjectsFinal(so), CKR_OK);
	assert_int_equal(found, 1);
	assert_int_equal(mark(so, so_pub, CK_TRUE), CKR_OK);
	assert_int_equal(F->C_Logout(so), CKR_OK);
	assert_int_equal(F->C_CloseSession(so), CKR_OK);

	s = fixture_open_user_session(slot);
	CK_OBJECT_CLASS kc = CKO_PRIVATE_KEY;
	find[0].pValue = &kc;
	assert_int_equal(F->C_FindObjectsInit(s, find, 2), CKR_OK);
	assert_int_equal(F->C_FindObjects(s, &priv, 1, &found), CKR_OK);
	assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);
	assert_int_equal(found, 1);
	assert_int_equal(sign_in(s, priv, sig, &len), CKR_KEY_FUNCTION_NOT_PERMITTED);
	int n;
	char *r = read_reports(&n);
	assert_int_equal(n, 1);
	assert_non_null(strstr(r, "marked by: security officer"));
	assert_non_null(strstr(r, "marked object: public key"));
	free(r);
}

/* Other keys are not affected by one pair's mark. */
static void test_only_that_pair(void **state)
{
	(void)state;
	CK_OBJECT_HANDLE pub, priv, pub2, priv2;
	CK_BYTE sig[80];
	CK_ULONG len = sizeof(sig);
	token_pair(&pub, &priv);
	assert_int_equal(fixture_gen_ec(s, fx_p256, fx_p256_len, &pub2, &priv2), CKR_OK);
	assert_int_equal(mark(s, pub, CK_TRUE), CKR_OK);
	assert_int_equal(sign_in(s, priv, sig, &len), CKR_KEY_FUNCTION_NOT_PERMITTED);
	len = sizeof(sig);
	assert_int_equal(sign_in(s, priv2, sig, &len), CKR_OK);
}

/* A report that cannot be written does not undo the mark. */
static void test_report_unwritable(void **state)
{
	(void)state;
	CK_OBJECT_HANDLE pub, priv;
	CK_BYTE sig[80];
	CK_ULONG len = sizeof(sig);
	char extra[PATH_MAX + 64];
	FILE *fp;
	/* A file where the directory should be. */
	fp = fopen(reports, "w");
	assert_non_null(fp);
	fclose(fp);
	snprintf(extra, sizeof(extra), "compromise_reports = %s/sub\n", reports);
	assert_int_equal(certfix_reinit(extra), CKR_OK);
	slot = fixture_slot_by_label("compromise");
	s = fixture_open_user_session(slot);
	token_pair(&pub, &priv);
	assert_int_equal(mark(s, priv, CK_TRUE), CKR_OK);
	assert_int_equal(sign_in(s, priv, sig, &len), CKR_KEY_FUNCTION_NOT_PERMITTED);
}

/* imported_keys = refuse: a qualified (confirm) key must be born on the
 * token; an imported seal may still sign. */
static void test_imported_keys(void **state)
{
	(void)state;
	CK_OBJECT_HANDLE pub, gen, imported;
	CK_OBJECT_CLASS pc = CKO_PRIVATE_KEY;
	CK_KEY_TYPE kt = CKK_EC;
	CK_BYTE scalar[32] = { 0 };
	scalar[31] = 0x2a;
	const char *label = "imported seal";
	CK_ATTRIBUTE t[] = {
		{ CKA_CLASS, &pc, sizeof(pc) },
		{ CKA_KEY_TYPE, &kt, sizeof(kt) },
		{ CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len },
		{ CKA_VALUE, scalar, sizeof(scalar) },
		{ CKA_SIGN, &fx_true, sizeof(fx_true) },
		{ CKA_LABEL, (void *)label, strlen(label) },
	};
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	CK_BYTE sig[80];
	CK_ULONG len = sizeof(sig);

	assert_int_equal(certfix_reinit("sign_policy = confirm\nconfirm = deny\nimported_keys = refuse\n"
					"[key]\nlabel = imported seal\nsign_policy = automatic\n"),
			 CKR_OK);
	slot = fixture_slot_by_label("compromise");
	s = fixture_open_user_session(slot);
	assert_int_equal(fixture_gen_ec(s, fx_p256, fx_p256_len, &pub, &gen), CKR_OK);
	assert_int_equal(F->C_SignInit(s, &m, gen), CKR_OK); /* born here: may go on to ask */
	assert_int_equal(F->C_SignInit(s, &m, gen), CKR_OPERATION_ACTIVE);

	CK_SESSION_HANDLE s2 = fixture_open_session(slot, true);
	assert_int_equal(F->C_CreateObject(s2, t, 6, &imported), CKR_OK);
	assert_int_equal(sign_in(s2, imported, sig, &len), CKR_OK); /* a seal */
	CK_ATTRIBUTE other[] = { { CKA_LABEL, (void *)"imported person", 15 } };
	t[5] = other[0];
	assert_int_equal(F->C_CreateObject(s2, t, 6, &imported), CKR_OK);
	assert_false(fixture_get_bool(s2, imported, CKA_LOCAL));
	assert_int_equal(F->C_SignInit(s2, &m, imported), CKR_KEY_FUNCTION_NOT_PERMITTED);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_user_marks_key, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_so_marks_public_key, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_only_that_pair, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_report_unwritable, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_imported_keys, setup, fixture_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
