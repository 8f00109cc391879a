/*
 * The pinentry backend through the real module: the scripted pinentry
 * (tests/pinentry/fake-pinentry, Assuan) answers yes, no, cancel, its own
 * timeout, or never; without a context-specific login the dialog collects
 * the PIN, which the token checks and counts like C_Login.
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

#include "certfix.h"
#include "fixture.h"

#define F (fx.f)

static CK_SLOT_ID slot;
static CK_SESSION_HANDLE s;
static char script[PATH_MAX], told[PATH_MAX];
static const char doc[] = "Act of acceptance No. 7: 40 pages translated, accepted without remarks.";

/* What the person does in the next dialogs: a mode and the PINs typed. */
static void person(const char *mode, const char *pins)
{
	FILE *fp = fopen(script, "w");
	assert_non_null(fp);
	fprintf(fp, "mode %s\nlog %s\n%s", mode, told, pins ? pins : "");
	fclose(fp);
	unlink(told);
}

static int setup(void **state)
{
	const char *b = getenv("KOLTAMGA_BUILDDIR");
	char builddir[PATH_MAX], extra[2 * PATH_MAX];
	if (fixture_setup_uninit(state) != 0 || !realpath(b && *b ? b : ".", builddir))
		return -1;
	snprintf(script, sizeof(script), "%s/person", fx.dir);
	snprintf(told, sizeof(told), "%s/pinentry.log", fx.dir);
	setenv("KT_FAKE_PINENTRY", script, 1);
	person("yes", NULL);
	snprintf(extra, sizeof(extra),
		 "sign_policy = confirm\nconfirm = pinentry\nconfirm_program = %s/tests/pinentry/fake-pinentry\n"
		 "confirm_timeout = 2\n",
		 builddir);
	if (certfix_conf(extra) != 0 || fixture_initialize() != CKR_OK)
		return -1;
	slot = fixture_init_token_label("pinentry");
	s = fixture_open_user_session(slot);
	return 0;
}

static void keypair(CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
	assert_int_equal(fixture_gen_ec(s, fx_p256, fx_p256_len, pub, priv), CKR_OK);
}

static CK_RV sign(CK_OBJECT_HANDLE priv, bool context_login, CK_BYTE *sig, CK_ULONG *len)
{
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_OK);
	if (context_login)
		assert_int_equal(F->C_Login(s, CKU_CONTEXT_SPECIFIC, FX_PIN(FX_USER_PIN)), CKR_OK);
	*len = 80;
	return F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, len);
}

static void verifies(CK_OBJECT_HANDLE pub, CK_BYTE *sig, CK_ULONG len)
{
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	assert_int_equal(F->C_VerifyInit(s, &m, pub), CKR_OK);
	assert_int_equal(F->C_Verify(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, len), CKR_OK);
}

static CK_FLAGS token_flags(void)
{
	CK_TOKEN_INFO ti;
	assert_int_equal(F->C_GetTokenInfo(slot, &ti), CKR_OK);
	return ti.flags;
}

/* Every answer of the dialog, with the application's context login. */
static void test_answers(void **state)
{
	(void)state;
	CK_OBJECT_HANDLE pub, priv;
	CK_BYTE sig[80];
	CK_ULONG len;
	keypair(&pub, &priv);

	person("yes", NULL);
	assert_int_equal(sign(priv, true, sig, &len), CKR_OK);
	verifies(pub, sig, len);
	char *t = certfix_read(told);
	assert_int_equal(certfix_count(t, "CONFIRM"), 1);
	assert_int_equal(certfix_count(t, "GETPIN"), 0);
	assert_non_null(strstr(t, doc));   /* the document was on the screen */
	assert_int_equal(certfix_count(t, "MESSAGE"), 1); /* and the notice */
	free(t);

	static const struct {
		const char *mode;
		CK_RV rv;
	} cases[] = {
		{ "no", CKR_FUNCTION_REJECTED },
		{ "cancel", CKR_FUNCTION_CANCELED },
		{ "timeout", CKR_FUNCTION_CANCELED },
		{ "crash", CKR_FUNCTION_CANCELED },
		{ "never", CKR_FUNCTION_CANCELED }, /* our own deadline */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		person(cases[i].mode, NULL);
		memset(sig, 0, sizeof(sig));
		assert_int_equal(sign(priv, true, sig, &len), cases[i].rv);
		assert_int_equal(sig[0], 0);
		t = certfix_read(told);
		assert_int_equal(certfix_count(t, "MESSAGE"), 0); /* no "signed" notice */
		free(t);
		/* The operation is over. */
		len = sizeof(sig);
		assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, 1, sig, &len), CKR_OPERATION_NOT_INITIALIZED);
	}
}

/* Java and OpenSSL send no context login: the dialog asks for the PIN. */
static void test_dialog_collects_pin(void **state)
{
	(void)state;
	CK_OBJECT_HANDLE pub, priv;
	CK_BYTE sig[80];
	CK_ULONG len;
	keypair(&pub, &priv);

	person("yes", "pin " FX_USER_PIN "\n");
	assert_int_equal(sign(priv, false, sig, &len), CKR_OK);
	verifies(pub, sig, len);
	char *t = certfix_read(told);
	assert_int_equal(certfix_count(t, "GETPIN"), 1);
	assert_int_equal(certfix_count(t, "CONFIRM"), 0);
	assert_null(strstr(t, FX_USER_PIN "\n")); /* the log never has the PIN */
	free(t);

	/* A typo, then the right PIN: signed; the failure was counted and
	 * the success reset the counter, as C_Login would. */
	person("yes", "pin 9999\npin " FX_USER_PIN "\n");
	assert_int_equal(sign(priv, false, sig, &len), CKR_OK);
	verifies(pub, sig, len);
	t = certfix_read(told);
	assert_int_equal(certfix_count(t, "GETPIN"), 2);
	assert_int_equal(certfix_count(t, "SETERROR"), 1);
	free(t);
	assert_false(token_flags() & CKF_USER_PIN_COUNT_LOW);

	/* Cancel at the PIN prompt: cancelled, nothing counted. */
	person("cancel", NULL);
	assert_int_equal(sign(priv, false, sig, &len), CKR_FUNCTION_CANCELED);
	assert_false(token_flags() & (CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_LOCKED));
}

/* Wrong PINs in the dialog count against the token's lockout. */
static void test_dialog_pin_lockout(void **state)
{
	FX_FILE_TOKEN_ONLY("a device counts wrong PINs itself (SoftHSM2 never locks)");
	(void)state;
	CK_OBJECT_HANDLE pub, priv;
	CK_BYTE sig[80];
	CK_ULONG len;
	keypair(&pub, &priv);

	person("yes", "pin 0000\npin 0001\npin 0002\npin " FX_USER_PIN "\n");
	assert_int_equal(sign(priv, false, sig, &len), CKR_USER_NOT_LOGGED_IN);
	char *t = certfix_read(told);
	assert_int_equal(certfix_count(t, "GETPIN"), 3); /* three tries, the fourth PIN never asked */
	free(t);
	assert_true(token_flags() & CKF_USER_PIN_COUNT_LOW);

	/* Two more wrong (5 is the default limit): locked; nothing signs. */
	person("yes", "pin 0003\npin 0004\npin " FX_USER_PIN "\n");
	assert_int_equal(sign(priv, false, sig, &len), CKR_USER_NOT_LOGGED_IN);
	assert_true(token_flags() & CKF_USER_PIN_LOCKED);
	person("yes", "pin " FX_USER_PIN "\n");
	assert_int_equal(sign(priv, false, sig, &len), CKR_USER_NOT_LOGGED_IN);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_answers, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_dialog_collects_pin, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_dialog_pin_lockout, setup, fixture_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
