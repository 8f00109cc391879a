/*
 * Module tests: sessions and login (PKCS#11 3.0 sections 5.6, 5.7 and the
 * session state table of the base specification, 2.6).
 */
#include "fixture.h"

#include <stdlib.h>

#define F (fx.f)
#define RW (CKF_SERIAL_SESSION | CKF_RW_SESSION)
#define RO CKF_SERIAL_SESSION

static CK_SLOT_ID slot;

/* Each test: fresh store, initialised module, initialised token. */
static int setup(void **state)
{
	if (fixture_setup(state) != 0)
		return -1;
	slot = fixture_init_token();
	return 0;
}

static CK_STATE state_of(CK_SESSION_HANDLE s)
{
	CK_SESSION_INFO si;

	assert_int_equal(F->C_GetSessionInfo(s, &si), CKR_OK);
	return si.state;
}

static void test_open_close(void **state)
{
	CK_SESSION_HANDLE s1, s2, s3;
	CK_SESSION_INFO si;
	CK_TOKEN_INFO ti;

	(void)state;
	assert_int_equal(F->C_OpenSession(slot, 0, NULL, NULL, &s1), CKR_SESSION_PARALLEL_NOT_SUPPORTED);
	assert_int_equal(F->C_OpenSession(slot, CKF_RW_SESSION, NULL, NULL, &s1),
			 CKR_SESSION_PARALLEL_NOT_SUPPORTED);
	assert_int_equal(F->C_OpenSession(slot, RO, NULL, NULL, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_OpenSession(0xdeadbeef, RO, NULL, NULL, &s1), CKR_SLOT_ID_INVALID);

	assert_int_equal(F->C_OpenSession(slot, RO, NULL, NULL, &s1), CKR_OK);
	assert_int_equal(F->C_OpenSession(slot, RW, NULL, NULL, &s2), CKR_OK);
	assert_int_equal(F->C_OpenSession(slot, RW, NULL, NULL, &s3), CKR_OK);
	assert_true(s1 != CK_INVALID_HANDLE && s2 != CK_INVALID_HANDLE && s3 != CK_INVALID_HANDLE);
	assert_true(s1 != s2 && s2 != s3 && s1 != s3);

	assert_int_equal(F->C_GetSessionInfo(s1, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GetSessionInfo(s1, &si), CKR_OK);
	assert_int_equal(si.slotID, slot);
	assert_int_equal(si.state, CKS_RO_PUBLIC_SESSION);
	assert_int_equal(si.flags, CKF_SERIAL_SESSION);
	assert_int_equal(F->C_GetSessionInfo(s2, &si), CKR_OK);
	assert_int_equal(si.state, CKS_RW_PUBLIC_SESSION);
	assert_int_equal(si.flags, CKF_SERIAL_SESSION | CKF_RW_SESSION);

	assert_int_equal(F->C_GetTokenInfo(slot, &ti), CKR_OK);
	if (ti.ulSessionCount != CK_UNAVAILABLE_INFORMATION)
		assert_int_equal(ti.ulSessionCount, 3);
	if (ti.ulRwSessionCount != CK_UNAVAILABLE_INFORMATION)
		assert_int_equal(ti.ulRwSessionCount, 2);

	assert_int_equal(F->C_CloseSession(s1), CKR_OK);
	assert_int_equal(F->C_CloseSession(s1), CKR_SESSION_HANDLE_INVALID);
	assert_int_equal(F->C_GetSessionInfo(s1, &si), CKR_SESSION_HANDLE_INVALID);
	assert_int_equal(state_of(s2), CKS_RW_PUBLIC_SESSION);

	assert_int_equal(F->C_CloseAllSessions(0xdeadbeef), CKR_SLOT_ID_INVALID);
	assert_int_equal(F->C_CloseAllSessions(slot), CKR_OK);
	assert_int_equal(F->C_GetSessionInfo(s2, &si), CKR_SESSION_HANDLE_INVALID);
	assert_int_equal(F->C_CloseSession(s3), CKR_SESSION_HANDLE_INVALID);
	assert_int_equal(F->C_CloseAllSessions(slot), CKR_OK); /* none left is fine */
}

static void test_invalid_handles(void **state)
{
	CK_SESSION_HANDLE bad[] = { CK_INVALID_HANDLE, 0xdeadbeef };
	CK_SESSION_INFO si;
	CK_MECHANISM digest = { CKM_SHA256, NULL, 0 };
	CK_BYTE buf[16];
	CK_OBJECT_HANDLE o;
	CK_ULONG n;

	(void)state;
	for (size_t i = 0; i < FX_COUNT(bad); i++) {
		CK_SESSION_HANDLE s = bad[i];

		assert_int_equal(F->C_GetSessionInfo(s, &si), CKR_SESSION_HANDLE_INVALID);
		assert_int_equal(F->C_CloseSession(s), CKR_SESSION_HANDLE_INVALID);
		assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_SESSION_HANDLE_INVALID);
		assert_int_equal(F->C_Logout(s), CKR_SESSION_HANDLE_INVALID);
		assert_int_equal(F->C_FindObjectsInit(s, NULL, 0), CKR_SESSION_HANDLE_INVALID);
		assert_int_equal(F->C_FindObjects(s, &o, 1, &n), CKR_SESSION_HANDLE_INVALID);
		assert_int_equal(F->C_DigestInit(s, &digest), CKR_SESSION_HANDLE_INVALID);
		assert_int_equal(F->C_GenerateRandom(s, buf, sizeof(buf)), CKR_SESSION_HANDLE_INVALID);
		assert_int_equal(F->C_DestroyObject(s, 1), CKR_SESSION_HANDLE_INVALID);
	}
}

static void test_states(void **state)
{
	CK_SESSION_HANDLE ro, rw;

	(void)state;
	ro = fixture_open_session(slot, false);
	rw = fixture_open_session(slot, true);
	assert_int_equal(state_of(ro), CKS_RO_PUBLIC_SESSION);
	assert_int_equal(state_of(rw), CKS_RW_PUBLIC_SESSION);

	/* Login is per application: every session of the token changes. */
	assert_int_equal(F->C_Login(ro, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
	assert_int_equal(state_of(ro), CKS_RO_USER_FUNCTIONS);
	assert_int_equal(state_of(rw), CKS_RW_USER_FUNCTIONS);
	/* A session opened now starts logged in. */
	{
		CK_SESSION_HANDLE later = fixture_open_session(slot, false);

		assert_int_equal(state_of(later), CKS_RO_USER_FUNCTIONS);
	}
	/* Logout in another session also applies to all. */
	assert_int_equal(F->C_Logout(rw), CKR_OK);
	assert_int_equal(state_of(ro), CKS_RO_PUBLIC_SESSION);
	assert_int_equal(state_of(rw), CKS_RW_PUBLIC_SESSION);
	FX_ASSERT_RV(F->C_Logout(ro), CKR_USER_NOT_LOGGED_IN, CKR_OK);

	assert_int_equal(F->C_CloseAllSessions(slot), CKR_OK);
	rw = fixture_open_session(slot, true);
	assert_int_equal(F->C_Login(rw, CKU_SO, FX_PIN(FX_SO_PIN)), CKR_OK);
	assert_int_equal(state_of(rw), CKS_RW_SO_FUNCTIONS);
	assert_int_equal(F->C_Logout(rw), CKR_OK);
	assert_int_equal(state_of(rw), CKS_RW_PUBLIC_SESSION);
}

static void test_so_and_ro_sessions(void **state)
{
	CK_SESSION_HANDLE ro, rw, rw2, s;

	(void)state;
	ro = fixture_open_session(slot, false);
	rw = fixture_open_session(slot, true);
	assert_int_equal(F->C_Login(rw, CKU_SO, FX_PIN(FX_SO_PIN)), CKR_SESSION_READ_ONLY_EXISTS);
	assert_int_equal(state_of(rw), CKS_RW_PUBLIC_SESSION);
	assert_int_equal(F->C_CloseSession(ro), CKR_OK);

	assert_int_equal(F->C_Login(rw, CKU_SO, FX_PIN(FX_SO_PIN)), CKR_OK);
	assert_int_equal(F->C_OpenSession(slot, RO, NULL, NULL, &s), CKR_SESSION_READ_WRITE_SO_EXISTS);
	rw2 = fixture_open_session(slot, true);
	assert_int_equal(state_of(rw2), CKS_RW_SO_FUNCTIONS);
	assert_int_equal(F->C_Logout(rw2), CKR_OK);
	/* Once the SO is gone, R/O sessions are allowed again. */
	ro = fixture_open_session(slot, false);
	assert_int_equal(state_of(ro), CKS_RO_PUBLIC_SESSION);
}

static void test_login_errors(void **state)
{
	CK_SESSION_HANDLE s;

	(void)state;
	s = fixture_open_session(slot, true);
	FX_ASSERT_RV(F->C_Logout(s), CKR_USER_NOT_LOGGED_IN, CKR_OK);
	assert_int_equal(F->C_Login(s, 7, FX_PIN(FX_USER_PIN)), CKR_USER_TYPE_INVALID);
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN("9999")), CKR_PIN_INCORRECT);
	assert_int_equal(F->C_Login(s, CKU_SO, FX_PIN("99999999")), CKR_PIN_INCORRECT);
	assert_int_equal(state_of(s), CKS_RW_PUBLIC_SESSION);
	/* The user PIN is not the SO PIN and vice versa. */
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_SO_PIN)), CKR_PIN_INCORRECT);
	assert_int_equal(F->C_Login(s, CKU_SO, FX_PIN(FX_USER_PIN)), CKR_PIN_INCORRECT);

	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_USER_ALREADY_LOGGED_IN);
	assert_int_equal(F->C_Login(s, CKU_SO, FX_PIN(FX_SO_PIN)), CKR_USER_ANOTHER_ALREADY_LOGGED_IN);
	assert_int_equal(F->C_Logout(s), CKR_OK);
	FX_ASSERT_RV(F->C_Logout(s), CKR_USER_NOT_LOGGED_IN, CKR_OK);

	assert_int_equal(F->C_Login(s, CKU_SO, FX_PIN(FX_SO_PIN)), CKR_OK);
	assert_int_equal(F->C_Login(s, CKU_SO, FX_PIN(FX_SO_PIN)), CKR_USER_ALREADY_LOGGED_IN);
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_USER_ANOTHER_ALREADY_LOGGED_IN);
	assert_int_equal(F->C_Logout(s), CKR_OK);

	/* Login state after logout: private objects are out of reach again. */
	{
		CK_OBJECT_CLASS cls = CKO_DATA;
		CK_ATTRIBUTE priv[] = {
			{ CKA_CLASS, &cls, sizeof(cls) },
			{ CKA_TOKEN, &fx_false, 1 },
			{ CKA_PRIVATE, &fx_true, 1 },
		};
		CK_ATTRIBUTE priv_tok[] = {
			{ CKA_CLASS, &cls, sizeof(cls) },
			{ CKA_TOKEN, &fx_true, 1 },
			{ CKA_PRIVATE, &fx_true, 1 },
		};
		CK_OBJECT_HANDLE o, t;

		assert_int_equal(F->C_CreateObject(s, priv, FX_COUNT(priv), &o), CKR_USER_NOT_LOGGED_IN);
		assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
		assert_int_equal(F->C_CreateObject(s, priv, FX_COUNT(priv), &o), CKR_OK);
		assert_int_equal(fixture_count_objects(s, NULL, 0), 1);
		assert_int_equal(F->C_CreateObject(s, priv_tok, FX_COUNT(priv_tok), &t), CKR_OK);
		assert_int_equal(fixture_count_objects(s, NULL, 0), 2);
		assert_int_equal(F->C_Logout(s), CKR_OK);
		assert_int_equal(fixture_count_objects(s, NULL, 0), 0);
		assert_int_equal(F->C_DestroyObject(s, t), CKR_OBJECT_HANDLE_INVALID);
		assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
		/* C_Logout destroyed the private session object and invalidated
		 * the handles to private objects; the token object is still there. */
		assert_int_equal(fixture_count_objects(s, NULL, 0), 1);
		assert_int_equal(F->C_DestroyObject(s, o), CKR_OBJECT_HANDLE_INVALID);
	}
}

static void test_close_last_session_logs_out(void **state)
{
	CK_SESSION_HANDLE s1, s2;

	(void)state;
	s1 = fixture_open_user_session(slot);
	s2 = fixture_open_session(slot, false);
	assert_int_equal(state_of(s2), CKS_RO_USER_FUNCTIONS);
	assert_int_equal(F->C_CloseSession(s1), CKR_OK);
	/* One session is left: still logged in. */
	assert_int_equal(state_of(s2), CKS_RO_USER_FUNCTIONS);
	assert_int_equal(F->C_CloseSession(s2), CKR_OK);

	s1 = fixture_open_session(slot, true);
	assert_int_equal(state_of(s1), CKS_RW_PUBLIC_SESSION);
	FX_ASSERT_RV(F->C_Logout(s1), CKR_USER_NOT_LOGGED_IN, CKR_OK);

	/* C_CloseAllSessions too. */
	assert_int_equal(F->C_Login(s1, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
	assert_int_equal(F->C_CloseAllSessions(slot), CKR_OK);
	s1 = fixture_open_session(slot, true);
	assert_int_equal(state_of(s1), CKS_RW_PUBLIC_SESSION);
	assert_int_equal(F->C_Login(s1, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
}

static void test_context_specific_without_operation(void **state)
{
	CK_SESSION_HANDLE s;

	(void)state;
	s = fixture_open_user_session(slot);
	assert_int_equal(F->C_Login(s, CKU_CONTEXT_SPECIFIC, FX_PIN(FX_USER_PIN)), CKR_OPERATION_NOT_INITIALIZED);
	assert_int_equal(state_of(s), CKS_RW_USER_FUNCTIONS);
}

static void test_operation_state(void **state)
{
	CK_SESSION_HANDLE s;
	CK_MECHANISM digest = { CKM_SHA256, NULL, 0 };
	CK_BYTE buf[64], out[32];
	CK_ULONG len = sizeof(buf);
	CK_RV rv;

	(void)state;
	s = fixture_open_session(slot, false);
	assert_int_equal(F->C_DigestInit(s, &digest), CKR_OK);
	assert_int_equal(F->C_DigestUpdate(s, (CK_BYTE_PTR) "abc", 3), CKR_OK);
	rv = F->C_GetOperationState(s, buf, &len);
	assert_true(rv == CKR_FUNCTION_NOT_SUPPORTED || rv == CKR_STATE_UNSAVEABLE);
	/* The refusal did not end the digest. */
	len = sizeof(out);
	assert_int_equal(F->C_DigestFinal(s, out, &len), CKR_OK);
	assert_int_equal(len, 32);

	rv = F->C_SetOperationState(s, buf, 8, CK_INVALID_HANDLE, CK_INVALID_HANDLE);
	assert_int_not_equal(rv, CKR_OK);
}

static void test_legacy_parallel(void **state)
{
	CK_SESSION_HANDLE s = fixture_open_session(slot, false);

	(void)state;
	assert_int_equal(F->C_GetFunctionStatus(s), CKR_FUNCTION_NOT_PARALLEL);
	assert_int_equal(F->C_CancelFunction(s), CKR_FUNCTION_NOT_PARALLEL);
}

static void test_session_cancel(void **state)
{
	CK_SESSION_HANDLE s;
	CK_MECHANISM digest = { CKM_SHA256, NULL, 0 };
	CK_MECHANISM ecdsa = { CKM_ECDSA, NULL, 0 };
	CK_OBJECT_HANDLE pub, priv;
	CK_BYTE out[128];
	CK_ULONG len = sizeof(out);

	(void)state;
	if (!fx.f3) {
		if (fx.softhsm)
			skip(); /* 2.40 module */
		fail_msg("no PKCS 11 3.0 interface");
	}
	s = fixture_open_user_session(slot);
	assert_int_equal(fx.f3->C_SessionCancel(0xdeadbeef, CKF_DIGEST), CKR_SESSION_HANDLE_INVALID);

	assert_int_equal(fx.f3->C_DigestInit(s, &digest), CKR_OK);
	assert_int_equal(fx.f3->C_SessionCancel(s, CKF_DIGEST), CKR_OK);
	assert_int_equal(fx.f3->C_Digest(s, (CK_BYTE_PTR) "abc", 3, out, &len), CKR_OPERATION_NOT_INITIALIZED);
	assert_int_equal(fx.f3->C_DigestInit(s, &digest), CKR_OK); /* not CKR_OPERATION_ACTIVE */

	assert_int_equal(fixture_gen_ec(s, fx_p256, fx_p256_len, &pub, &priv), CKR_OK);
	assert_int_equal(fx.f3->C_SessionCancel(s, CKF_DIGEST), CKR_OK);
	assert_int_equal(fx.f3->C_SignInit(s, &ecdsa, priv), CKR_OK);
	assert_int_equal(fx.f3->C_SessionCancel(s, CKF_SIGN), CKR_OK);
	len = sizeof(out);
	assert_int_equal(fx.f3->C_Sign(s, out, 32, out, &len), CKR_OPERATION_NOT_INITIALIZED);
	assert_int_equal(fx.f3->C_SignInit(s, &ecdsa, priv), CKR_OK);
	len = sizeof(out);
	memset(out, 1, 32);
	assert_int_equal(fx.f3->C_Sign(s, out, 32, out, &len), CKR_OK);
	assert_int_equal(len, 64);

	/* Cancelling what is not active is not an error. */
	assert_int_equal(fx.f3->C_SessionCancel(s, CKF_SIGN), CKR_OK);
	/* Find is cancelled too. */
	assert_int_equal(fx.f3->C_FindObjectsInit(s, NULL, 0), CKR_OK);
	assert_int_equal(fx.f3->C_SessionCancel(s, CKF_FIND_OBJECTS), CKR_OK);
	assert_int_equal(fx.f3->C_FindObjectsInit(s, NULL, 0), CKR_OK);
	assert_int_equal(fx.f3->C_FindObjectsFinal(s), CKR_OK);
}

static void test_login_user_3_0(void **state)
{
	CK_SESSION_HANDLE s;

	(void)state;
	if (!fx.f3) {
		if (fx.softhsm)
			skip();
		fail_msg("no PKCS 11 3.0 interface");
	}
	s = fixture_open_session(slot, true);
	/* Without user names, C_LoginUser is C_Login. */
	assert_int_equal(fx.f3->C_LoginUser(s, CKU_USER, FX_PIN("9999"), NULL, 0), CKR_PIN_INCORRECT);
	assert_int_equal(fx.f3->C_LoginUser(s, CKU_USER, FX_PIN(FX_USER_PIN), NULL, 0), CKR_OK);
	assert_int_equal(state_of(s), CKS_RW_USER_FUNCTIONS);
	assert_int_equal(fx.f3->C_Logout(s), CKR_OK);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_open_close, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_invalid_handles, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_states, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_so_and_ro_sessions, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_login_errors, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_close_last_session_logs_out, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_context_specific_without_operation, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_operation_state, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_legacy_parallel, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_session_cancel, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_login_user_3_0, setup, fixture_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
