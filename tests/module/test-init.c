/*
 * Module tests: library and slot/token level (PKCS#11 3.0 sections 5.4-5.6).
 * Function lists and interfaces, C_Initialize/C_Finalize, fork, slots,
 * tokens, PINs, mechanisms, configuration and the token store.
 */
#ifndef _GNU_SOURCE /* configure may define it already */
#define _GNU_SOURCE
#endif
#include "fixture.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/crypto.h>

#define F (fx.f)

static bool blank_padded(const CK_UTF8CHAR *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (s[i] == '\0')
			return false;
	return true;
}

/* --- function lists and interfaces (no C_Initialize needed) ------------- */

static void test_get_function_list(void **state)
{
	CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(fx.dl, "C_GetFunctionList");
	CK_FUNCTION_LIST_PTR list = NULL;

	(void)state;
	assert_int_equal(get(&list), CKR_OK);
	assert_ptr_equal(list, F);
	assert_int_equal(list->version.major, 2);
	assert_int_equal(list->version.minor, 40);
	assert_int_equal(get(NULL), CKR_ARGUMENTS_BAD);
	/* The list reaches C_GetFunctionList itself. */
	assert_non_null(list->C_GetFunctionList);
}

static void need_interfaces(void)
{
	if (!fx.get_interface || !fx.get_interface_list) {
		if (fx.softhsm)
			skip(); /* SoftHSM 2.6 is a 2.40 module */
		fail_msg("C_GetInterface/C_GetInterfaceList not exported");
	}
}

static void test_interface_list(void **state)
{
	CK_ULONG n = 0, small;
	CK_INTERFACE *ifs;
	bool found = false;

	(void)state;
	need_interfaces();
	assert_int_equal(fx.get_interface_list(NULL, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(fx.get_interface_list(NULL, &n), CKR_OK);
	assert_true(n >= 1);
	ifs = calloc(n, sizeof(*ifs));
	assert_non_null(ifs);

	small = n - 1;
	assert_int_equal(fx.get_interface_list(ifs, &small), CKR_BUFFER_TOO_SMALL);
	assert_int_equal(small, n);

	assert_int_equal(fx.get_interface_list(ifs, &n), CKR_OK);
	for (CK_ULONG i = 0; i < n; i++) {
		CK_VERSION *v = ifs[i].pFunctionList; /* every list starts with its version */

		assert_non_null(ifs[i].pInterfaceName);
		if (strcmp((char *)ifs[i].pInterfaceName, "PKCS 11") == 0 && v->major == 3 && v->minor == 0)
			found = true;
	}
	assert_true(found);
	free(ifs);
}

static void test_get_interface(void **state)
{
	CK_INTERFACE_PTR iface = NULL;
	CK_VERSION v30 = { 3, 0 }, v29 = { 2, 99 }, v31 = { 3, 99 };
	CK_FUNCTION_LIST_3_0_PTR l;

	(void)state;
	need_interfaces();
	/* NULL name: the default interface. */
	assert_int_equal(fx.get_interface(NULL, NULL, &iface, 0), CKR_OK);
	assert_non_null(iface);
	assert_non_null(iface->pFunctionList);

	iface = NULL;
	assert_int_equal(fx.get_interface((CK_UTF8CHAR_PTR) "PKCS 11", &v30, &iface, 0), CKR_OK);
	assert_non_null(iface);
	assert_string_equal((char *)iface->pInterfaceName, "PKCS 11");
	l = iface->pFunctionList;
	assert_int_equal(l->version.major, 3);
	assert_int_equal(l->version.minor, 0);
	assert_non_null(l->C_GetInterface);
	assert_non_null(l->C_SessionCancel);
	assert_non_null(l->C_LoginUser);
	assert_non_null(l->C_SignMessage);
	/* The 2.40 part of the 3.0 list is the same module. */
	assert_non_null(l->C_Initialize);

	/* Name only: some "PKCS 11" version. */
	iface = NULL;
	assert_int_equal(fx.get_interface((CK_UTF8CHAR_PTR) "PKCS 11", NULL, &iface, 0), CKR_OK);
	assert_non_null(iface);

	assert_int_equal(fx.get_interface((CK_UTF8CHAR_PTR) "No Such Interface", NULL, &iface, 0),
			 CKR_ARGUMENTS_BAD);
	assert_int_equal(fx.get_interface((CK_UTF8CHAR_PTR) "PKCS 11", &v29, &iface, 0), CKR_ARGUMENTS_BAD);
	assert_int_equal(fx.get_interface((CK_UTF8CHAR_PTR) "PKCS 11", &v31, &iface, 0), CKR_ARGUMENTS_BAD);
	assert_int_equal(fx.get_interface((CK_UTF8CHAR_PTR) "PKCS 11", &v30, NULL, 0), CKR_ARGUMENTS_BAD);
}

/* --- C_Initialize / C_Finalize ------------------------------------------ */

static int mutex_creates;

static CK_RV m_create(void **m)
{
	pthread_mutex_t *p = malloc(sizeof(*p));

	if (!p)
		return CKR_HOST_MEMORY;
	pthread_mutex_init(p, NULL);
	__atomic_add_fetch(&mutex_creates, 1, __ATOMIC_SEQ_CST);
	*m = p;
	return CKR_OK;
}

static CK_RV m_destroy(void *m)
{
	pthread_mutex_destroy(m);
	free(m);
	return CKR_OK;
}

static CK_RV m_lock(void *m)
{
	return pthread_mutex_lock(m) == 0 ? CKR_OK : CKR_GENERAL_ERROR;
}

static CK_RV m_unlock(void *m)
{
	return pthread_mutex_unlock(m) == 0 ? CKR_OK : CKR_GENERAL_ERROR;
}

static void test_initialize_null_args(void **state)
{
	(void)state;
	assert_int_equal(F->C_Initialize(NULL), CKR_OK);
	assert_int_equal(F->C_Initialize(NULL), CKR_CRYPTOKI_ALREADY_INITIALIZED);
	assert_int_equal(fixture_initialize(), CKR_CRYPTOKI_ALREADY_INITIALIZED);
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
}

static void test_initialize_os_locking(void **state)
{
	CK_INFO info;

	(void)state;
	assert_int_equal(fixture_initialize(), CKR_OK);
	assert_int_equal(F->C_GetInfo(&info), CKR_OK);
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
	/* Zeroed arguments: no flag, no functions = no locking needed, fine. */
	CK_C_INITIALIZE_ARGS zero;
	memset(&zero, 0, sizeof(zero));
	assert_int_equal(F->C_Initialize(&zero), CKR_OK);
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
}

static void test_initialize_app_mutexes_only(void **state)
{
	CK_C_INITIALIZE_ARGS args = { m_create, m_destroy, m_lock, m_unlock, 0, NULL };
	CK_INFO info;
	CK_RV rv;

	(void)state;
	/* Spec: the library either uses the application's functions or answers
	 * CKR_CANT_LOCK; koltamga only ever uses OS locking. */
	rv = F->C_Initialize(&args);
	if (!fx.softhsm)
		assert_int_equal(rv, CKR_CANT_LOCK);
	else
		assert_true(rv == CKR_OK || rv == CKR_CANT_LOCK);
	if (rv == CKR_OK) {
		assert_int_equal(F->C_GetInfo(&info), CKR_OK);
		assert_int_equal(F->C_Finalize(NULL), CKR_OK);
	} else {
		/* Refused means not initialised. */
		assert_int_equal(F->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
	}
}

static void test_initialize_some_mutexes(void **state)
{
	CK_C_INITIALIZE_ARGS a1 = { m_create, NULL, NULL, NULL, 0, NULL };
	CK_C_INITIALIZE_ARGS a2 = { m_create, m_destroy, m_lock, NULL, CKF_OS_LOCKING_OK, NULL };
	CK_C_INITIALIZE_ARGS a3 = { NULL, NULL, NULL, m_unlock, 0, NULL };
	CK_INFO info;

	(void)state;
	assert_int_equal(F->C_Initialize(&a1), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_Initialize(&a2), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_Initialize(&a3), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
}

static void test_initialize_flag_and_mutexes(void **state)
{
	CK_C_INITIALIZE_ARGS args = { m_create, m_destroy, m_lock, m_unlock, CKF_OS_LOCKING_OK, NULL };
	CK_INFO info;

	(void)state;
	assert_int_equal(F->C_Initialize(&args), CKR_OK);
	assert_int_equal(F->C_GetInfo(&info), CKR_OK);
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
}

static void test_finalize(void **state)
{
	int dummy;

	(void)state;
	assert_int_equal(fixture_initialize(), CKR_OK);
	assert_int_equal(F->C_Finalize(&dummy), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
	assert_int_equal(F->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
	/* And it can be initialised again. */
	assert_int_equal(fixture_initialize(), CKR_OK);
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
}

static void test_not_initialized(void **state)
{
	CK_INFO info;
	CK_ULONG n = 0;
	CK_SLOT_INFO si;
	CK_TOKEN_INFO ti;
	CK_SESSION_HANDLE s;
	CK_BYTE buf[4];

	(void)state;
	assert_int_equal(F->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
	assert_int_equal(F->C_GetSlotList(CK_FALSE, NULL, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
	assert_int_equal(F->C_GetSlotInfo(0, &si), CKR_CRYPTOKI_NOT_INITIALIZED);
	assert_int_equal(F->C_GetTokenInfo(0, &ti), CKR_CRYPTOKI_NOT_INITIALIZED);
	assert_int_equal(F->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_CRYPTOKI_NOT_INITIALIZED);
	assert_int_equal(F->C_CloseAllSessions(0), CKR_CRYPTOKI_NOT_INITIALIZED);
	assert_int_equal(F->C_GenerateRandom(1, buf, sizeof(buf)), CKR_CRYPTOKI_NOT_INITIALIZED);
	assert_int_equal(F->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
}

static void test_get_info(void **state)
{
	CK_INFO info;
	CK_VERSION v;

	(void)state;
	memset(&info, 0, sizeof(info));
	assert_int_equal(F->C_GetInfo(&info), CKR_OK);
	v = info.cryptokiVersion;
	assert_true((v.major == 2 && v.minor >= 40) || v.major == 3);
	assert_true(blank_padded(info.manufacturerID, sizeof(info.manufacturerID)));
	assert_true(blank_padded(info.libraryDescription, sizeof(info.libraryDescription)));
	assert_int_equal(info.flags, 0);
	assert_int_equal(F->C_GetInfo(NULL), CKR_ARGUMENTS_BAD);
}

/* --- fork --------------------------------------------------------------- */

static int child_after_fork(void)
{
	CK_INFO info;
	CK_ULONG n = 0;

	if (F->C_GetInfo(&info) != CKR_CRYPTOKI_NOT_INITIALIZED)
		return 10;
	if (F->C_GetSlotList(CK_FALSE, NULL, &n) != CKR_CRYPTOKI_NOT_INITIALIZED)
		return 11;
	if (fixture_initialize() != CKR_OK)
		return 12;
	if (F->C_GetInfo(&info) != CKR_OK)
		return 13;
	if (F->C_GetSlotList(CK_FALSE, NULL, &n) != CKR_OK || n == 0)
		return 14;
	if (F->C_Finalize(NULL) != CKR_OK)
		return 15;
	return 0;
}

static void test_fork(void **state)
{
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE s;
	CK_SESSION_INFO si;
	CK_INFO info;
	int status;
	pid_t pid;

	(void)state;
	/* The specification leaves a child that does not call C_Initialize
	 * undefined; koltamga refuses it (architecture.md).  SoftHSM2 2.6 does
	 * not notice the fork at all. */
	FX_KOLTAMGA_ONLY();
	slot = fixture_init_token();
	s = fixture_open_user_session(slot);

	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(child_after_fork());
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);

	/* The parent is untouched by the child's C_Initialize/C_Finalize. */
	assert_int_equal(F->C_GetInfo(&info), CKR_OK);
	assert_int_equal(F->C_GetSessionInfo(s, &si), CKR_OK);
	assert_int_equal(si.state, CKS_RW_USER_FUNCTIONS);
}

/* --- slots and tokens --------------------------------------------------- */

static void test_slot_list(void **state)
{
	CK_ULONG n = 0, np = 0, small;
	CK_SLOT_ID slots[64], present[64];

	(void)state;
	assert_int_equal(F->C_GetSlotList(CK_FALSE, NULL, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK);
	assert_true(n >= 1 && n <= FX_COUNT(slots));
	small = n - 1;
	assert_int_equal(F->C_GetSlotList(CK_FALSE, slots, &small), CKR_BUFFER_TOO_SMALL);
	assert_int_equal(small, n);
	assert_int_equal(F->C_GetSlotList(CK_FALSE, slots, &n), CKR_OK);

	assert_int_equal(F->C_GetSlotList(CK_TRUE, NULL, &np), CKR_OK);
	assert_true(np <= n);
	assert_int_equal(F->C_GetSlotList(CK_TRUE, present, &np), CKR_OK);
	for (CK_ULONG i = 0; i < np; i++) {
		CK_SLOT_INFO si;
		bool listed = false;

		for (CK_ULONG j = 0; j < n; j++)
			listed |= slots[j] == present[i];
		assert_true(listed);
		assert_int_equal(F->C_GetSlotInfo(present[i], &si), CKR_OK);
		assert_true(si.flags & CKF_TOKEN_PRESENT);
	}
	/* A bigger buffer than needed: the count is set to what was written. */
	n = FX_COUNT(slots);
	assert_int_equal(F->C_GetSlotList(CK_FALSE, slots, &n), CKR_OK);
	assert_true(n < FX_COUNT(slots));
}

static void test_slot_token_info(void **state)
{
	CK_SLOT_INFO si;
	CK_TOKEN_INFO ti;
	CK_SLOT_ID slot, empty;

	(void)state;
	assert_int_equal(F->C_GetSlotInfo(0xdeadbeef, &si), CKR_SLOT_ID_INVALID);
	assert_int_equal(F->C_GetTokenInfo(0xdeadbeef, &ti), CKR_SLOT_ID_INVALID);

	empty = fixture_empty_slot();
	assert_int_equal(F->C_GetSlotInfo(empty, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GetTokenInfo(empty, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GetSlotInfo(empty, &si), CKR_OK);
	assert_true(si.flags & CKF_TOKEN_PRESENT);
	assert_true(blank_padded(si.slotDescription, sizeof(si.slotDescription)));
	assert_true(blank_padded(si.manufacturerID, sizeof(si.manufacturerID)));
	assert_int_equal(F->C_GetTokenInfo(empty, &ti), CKR_OK);
	assert_false(ti.flags & CKF_TOKEN_INITIALIZED);
	assert_false(ti.flags & CKF_USER_PIN_INITIALIZED);

	slot = fixture_init_token();
	assert_int_equal(slot, empty);
	assert_int_equal(F->C_GetTokenInfo(slot, &ti), CKR_OK);
	assert_true(ti.flags & CKF_TOKEN_INITIALIZED);
	assert_true(ti.flags & CKF_USER_PIN_INITIALIZED);
	assert_true(ti.flags & CKF_RNG);
	assert_true(ti.flags & CKF_LOGIN_REQUIRED);
	assert_false(ti.flags & (CKF_USER_PIN_LOCKED | CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY));
	assert_memory_equal(ti.label, "test                            ", 32);
	assert_true(blank_padded(ti.manufacturerID, sizeof(ti.manufacturerID)));
	assert_true(blank_padded(ti.model, sizeof(ti.model)));
	assert_true(blank_padded(ti.serialNumber, sizeof(ti.serialNumber)));
	assert_true(ti.ulMinPinLen >= 1 && ti.ulMinPinLen <= ti.ulMaxPinLen);
	if (!fx.softhsm)
		assert_int_equal(ti.ulMinPinLen, 4);
	/* Either known and zero, or not told (CK_UNAVAILABLE_INFORMATION). */
	assert_true(ti.ulSessionCount == 0 || ti.ulSessionCount == CK_UNAVAILABLE_INFORMATION);
	assert_true(ti.ulRwSessionCount == 0 || ti.ulRwSessionCount == CK_UNAVAILABLE_INFORMATION);
}

static CK_FLAGS token_flags(CK_SLOT_ID slot)
{
	CK_TOKEN_INFO ti;

	assert_int_equal(F->C_GetTokenInfo(slot, &ti), CKR_OK);
	return ti.flags;
}

static void test_pin_counter(void **state)
{
	FX_FILE_TOKEN_ONLY("a device counts wrong PINs itself (SoftHSM2 never locks)");
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE s;
	CK_RV rv;

	(void)state;
	FX_KOLTAMGA_ONLY(); /* the counter flags are optional; SoftHSM2 has none */
	slot = fixture_init_token();
	s = fixture_open_session(slot, true);

	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN("0000")), CKR_PIN_INCORRECT);
	assert_true(token_flags(slot) & CKF_USER_PIN_COUNT_LOW);
	assert_false(token_flags(slot) & (CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED));

	/* A successful login resets the counter. */
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
	assert_int_equal(F->C_Logout(s), CKR_OK);
	assert_false(token_flags(slot) & (CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY));

	for (int i = 0; i < FX_MAX_PIN_TRIES - 1; i++)
		assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN("0000")), CKR_PIN_INCORRECT);
	assert_true(token_flags(slot) & CKF_USER_PIN_FINAL_TRY);
	assert_false(token_flags(slot) & CKF_USER_PIN_LOCKED);

	rv = F->C_Login(s, CKU_USER, FX_PIN("0000"));
	assert_true(rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED);
	assert_true(token_flags(slot) & CKF_USER_PIN_LOCKED);
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_PIN_LOCKED);

	/* The SO PIN is a separate counter; the SO resets the user PIN. */
	assert_int_equal(F->C_Login(s, CKU_SO, FX_PIN(FX_SO_PIN)), CKR_OK);
	assert_int_equal(F->C_InitPIN(s, FX_PIN("5678")), CKR_OK);
	assert_int_equal(F->C_Logout(s), CKR_OK);
	assert_false(token_flags(slot) & (CKF_USER_PIN_LOCKED | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_COUNT_LOW));
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_PIN_INCORRECT);
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN("5678")), CKR_OK);
}

static void test_so_pin_counter(void **state)
{
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE s;

	(void)state;
	FX_KOLTAMGA_ONLY();
	slot = fixture_init_token();
	s = fixture_open_session(slot, true);
	assert_int_equal(F->C_Login(s, CKU_SO, FX_PIN("00000000")), CKR_PIN_INCORRECT);
	assert_true(token_flags(slot) & CKF_SO_PIN_COUNT_LOW);
	assert_false(token_flags(slot) & CKF_USER_PIN_COUNT_LOW);
	assert_int_equal(F->C_Login(s, CKU_SO, FX_PIN(FX_SO_PIN)), CKR_OK);
	assert_false(token_flags(slot) & CKF_SO_PIN_COUNT_LOW);
}

static CK_ULONG slot_count(void)
{
	CK_ULONG n = 0;

	assert_int_equal(F->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK);
	return n;
}

static void test_init_token(void **state)
{
	FX_FILE_TOKEN_ONLY("a device token has no empty slot for new tokens");
	CK_SLOT_ID slot, empty;
	CK_SESSION_HANDLE s;
	CK_UTF8CHAR label[32];
	CK_OBJECT_CLASS cls = CKO_DATA;
	CK_ATTRIBUTE data[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_TOKEN, &fx_true, 1 },
		{ CKA_PRIVATE, &fx_false, 1 },
		{ CKA_VALUE, "x", 1 },
	};
	CK_OBJECT_HANDLE o;
	CK_ULONG before;

	(void)state;
	memset(label, ' ', sizeof(label));
	memcpy(label, "again", 5);

	before = slot_count();
	slot = fixture_init_token();
	/* Initialising the empty slot makes a new empty slot. */
	assert_int_equal(slot_count(), before + 1);
	empty = fixture_empty_slot();
	assert_true(empty != slot);

	assert_int_equal(F->C_InitToken(0xdeadbeef, FX_PIN(FX_SO_PIN), label), CKR_SLOT_ID_INVALID);
	assert_int_equal(F->C_InitToken(slot, FX_PIN(FX_SO_PIN), NULL), CKR_ARGUMENTS_BAD);

	s = fixture_open_user_session(slot);
	assert_int_equal(F->C_CreateObject(s, data, FX_COUNT(data), &o), CKR_OK);
	assert_int_equal(fixture_count_objects(s, NULL, 0), 1);
	assert_int_equal(F->C_InitToken(slot, FX_PIN(FX_SO_PIN), label), CKR_SESSION_EXISTS);
	assert_int_equal(F->C_CloseSession(s), CKR_OK);

	assert_int_equal(F->C_InitToken(slot, FX_PIN("87654321"), label), CKR_PIN_INCORRECT);
	assert_int_equal(F->C_InitToken(slot, FX_PIN(FX_SO_PIN), label), CKR_OK);
	assert_memory_equal(label, "again", 5);
	{
		CK_TOKEN_INFO ti;

		assert_int_equal(F->C_GetTokenInfo(slot, &ti), CKR_OK);
		assert_memory_equal(ti.label, label, 32);
		assert_true(ti.flags & CKF_TOKEN_INITIALIZED);
		assert_false(ti.flags & CKF_USER_PIN_INITIALIZED);
	}
	/* Re-initialisation destroyed the objects. */
	s = fixture_open_session(slot, true);
	assert_int_equal(fixture_count_objects(s, NULL, 0), 0);
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_USER_PIN_NOT_INITIALIZED);
	assert_int_equal(F->C_Login(s, CKU_SO, FX_PIN(FX_SO_PIN)), CKR_OK);
	assert_int_equal(F->C_InitPIN(s, FX_PIN(FX_USER_PIN)), CKR_OK);
	assert_int_equal(F->C_Logout(s), CKR_OK);
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
	assert_int_equal(fixture_count_objects(s, NULL, 0), 0);
}

static void test_init_pin_set_pin(void **state)
{
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE rw, ro;

	(void)state;
	slot = fixture_init_token();
	rw = fixture_open_session(slot, true);
	ro = fixture_open_session(slot, false);

	/* C_InitPIN: only the SO, in a R/W session. */
	assert_int_equal(F->C_InitPIN(rw, FX_PIN("5555")), CKR_USER_NOT_LOGGED_IN);
	assert_int_equal(F->C_Login(rw, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
	assert_int_equal(F->C_InitPIN(rw, FX_PIN("5555")), CKR_USER_NOT_LOGGED_IN);

	/* C_SetPIN: never in a R/O session. */
	assert_int_equal(F->C_SetPIN(ro, FX_PIN(FX_USER_PIN), FX_PIN("5555")), CKR_SESSION_READ_ONLY);
	assert_int_equal(F->C_SetPIN(rw, FX_PIN("0000"), FX_PIN("5555")), CKR_PIN_INCORRECT);
	assert_int_equal(F->C_SetPIN(rw, FX_PIN(FX_USER_PIN), FX_PIN("12")), CKR_PIN_LEN_RANGE);
	assert_int_equal(F->C_SetPIN(rw, FX_PIN(FX_USER_PIN), FX_PIN("5555")), CKR_OK);
	assert_int_equal(F->C_Logout(rw), CKR_OK);
	assert_int_equal(F->C_Login(rw, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_PIN_INCORRECT);
	assert_int_equal(F->C_Login(rw, CKU_USER, FX_PIN("5555")), CKR_OK);
	assert_int_equal(F->C_Logout(rw), CKR_OK);

	assert_int_equal(F->C_CloseSession(ro), CKR_OK);
	assert_int_equal(F->C_Login(rw, CKU_SO, FX_PIN(FX_SO_PIN)), CKR_OK);
	assert_int_equal(F->C_InitPIN(rw, FX_PIN("12")), CKR_PIN_LEN_RANGE);
	assert_int_equal(F->C_InitPIN(rw, FX_PIN("6666")), CKR_OK);
	/* The SO changes its own PIN. */
	assert_int_equal(F->C_SetPIN(rw, FX_PIN(FX_SO_PIN), FX_PIN("87654321")), CKR_OK);
	assert_int_equal(F->C_Logout(rw), CKR_OK);
	assert_int_equal(F->C_Login(rw, CKU_SO, FX_PIN(FX_SO_PIN)), CKR_PIN_INCORRECT);
	assert_int_equal(F->C_Login(rw, CKU_SO, FX_PIN("87654321")), CKR_OK);
	assert_int_equal(F->C_Logout(rw), CKR_OK);
	assert_int_equal(F->C_Login(rw, CKU_USER, FX_PIN("6666")), CKR_OK);
}

/* --- mechanisms --------------------------------------------------------- */

static bool has_mech(const CK_MECHANISM_TYPE *list, CK_ULONG n, CK_MECHANISM_TYPE m)
{
	for (CK_ULONG i = 0; i < n; i++)
		if (list[i] == m)
			return true;
	return false;
}

static void test_mechanisms(void **state)
{
	CK_SLOT_ID slot = fixture_empty_slot();
	CK_ULONG n = 0, small;
	CK_MECHANISM_TYPE *list;
	CK_MECHANISM_INFO mi;

	(void)state;
	assert_int_equal(F->C_GetMechanismList(0xdeadbeef, NULL, &n), CKR_SLOT_ID_INVALID);
	assert_int_equal(F->C_GetMechanismList(slot, NULL, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GetMechanismList(slot, NULL, &n), CKR_OK);
	assert_true(n >= 3);
	list = calloc(n, sizeof(*list));
	assert_non_null(list);
	small = n - 1;
	assert_int_equal(F->C_GetMechanismList(slot, list, &small), CKR_BUFFER_TOO_SMALL);
	assert_int_equal(small, n);
	assert_int_equal(F->C_GetMechanismList(slot, list, &n), CKR_OK);
	assert_true(has_mech(list, n, CKM_RSA_PKCS_KEY_PAIR_GEN));
	assert_true(has_mech(list, n, CKM_ECDSA));
	assert_true(has_mech(list, n, CKM_EDDSA));
	assert_true(has_mech(list, n, CKM_SHA256_RSA_PKCS));
	free(list);

	assert_int_equal(F->C_GetMechanismInfo(slot, CKM_RSA_PKCS_KEY_PAIR_GEN, &mi), CKR_OK);
	assert_true(mi.flags & CKF_GENERATE_KEY_PAIR);
	assert_true(mi.ulMinKeySize <= 2048 && mi.ulMaxKeySize >= 4096);
	if (!fx.softhsm)
		assert_int_equal(mi.ulMinKeySize, 2048);

	assert_int_equal(F->C_GetMechanismInfo(slot, CKM_ECDSA, &mi), CKR_OK);
	assert_true(mi.flags & CKF_SIGN);
	assert_true(mi.flags & CKF_VERIFY);
	assert_true(mi.ulMinKeySize <= 256 && mi.ulMaxKeySize >= 384);

	assert_int_equal(F->C_GetMechanismInfo(slot, CKM_EDDSA, &mi), CKR_OK);
	assert_true(mi.flags & CKF_SIGN);
	assert_true(mi.flags & CKF_VERIFY);

	assert_int_equal(F->C_GetMechanismInfo(slot, 0x7ffffff0UL, &mi), CKR_MECHANISM_INVALID);
	assert_int_equal(F->C_GetMechanismInfo(slot, CKM_ECDSA, NULL), CKR_ARGUMENTS_BAD);
	assert_int_equal(F->C_GetMechanismInfo(0xdeadbeef, CKM_ECDSA, &mi), CKR_SLOT_ID_INVALID);
}

/* --- configuration ------------------------------------------------------ */

static void write_text(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");

	assert_non_null(fp);
	fputs(text, fp);
	assert_int_equal(fclose(fp), 0);
}

static void test_config_errors(void **state)
{
	const char *var = fx.softhsm ? "SOFTHSM2_CONF" : "KOLTAMGA_CONF";
	char bad[PATH_MAX + 16], text[PATH_MAX + 64];
	CK_INFO info;

	(void)state;
	snprintf(bad, sizeof(bad), "%s/missing.conf", fx.dir);
	setenv(var, bad, 1);
	assert_int_not_equal(fixture_initialize(), CKR_OK);
	assert_int_equal(F->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);

	if (!fx.softhsm) { /* SoftHSM2 ignores unknown keys */
		snprintf(bad, sizeof(bad), "%s/bad.conf", fx.dir);
		snprintf(text, sizeof(text), "store = %s\nno_such_key = 1\n", fx.store);
		write_text(bad, text);
		setenv(var, bad, 1);
		assert_int_not_equal(fixture_initialize(), CKR_OK);
		assert_int_equal(F->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);

		snprintf(text, sizeof(text), "store = %s\nmax_pin_tries = lots\n", fx.store);
		write_text(bad, text);
		assert_int_not_equal(fixture_initialize(), CKR_OK);
	}

	/* The module is not left half-initialised: a good configuration works. */
	setenv(var, fx.conf, 1);
	assert_int_equal(fixture_initialize(), CKR_OK);
	assert_int_equal(F->C_GetInfo(&info), CKR_OK);
	fixture_init_token();
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
}

/* --- persistence and the store ------------------------------------------ */

static void test_persistence(void **state)
{
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE s;
	CK_OBJECT_CLASS cls = CKO_DATA;
	CK_ATTRIBUTE pub[] = {
		{ CKA_CLASS, &cls, sizeof(cls) }, { CKA_TOKEN, &fx_true, 1 },
		{ CKA_PRIVATE, &fx_false, 1 },	  { CKA_LABEL, "public", 6 },
		{ CKA_VALUE, "public data", 11 },
	};
	CK_ATTRIBUTE priv[] = {
		{ CKA_CLASS, &cls, sizeof(cls) }, { CKA_TOKEN, &fx_true, 1 },
		{ CKA_PRIVATE, &fx_true, 1 },	  { CKA_LABEL, "private", 7 },
		{ CKA_VALUE, "private data", 12 },
	};
	CK_ATTRIBUTE sess[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_TOKEN, &fx_false, 1 },
		{ CKA_LABEL, "session", 7 },
	};
	CK_ATTRIBUTE by_label = { CKA_LABEL, NULL, 0 };
	CK_OBJECT_HANDLE o, pub_key, priv_key;
	CK_ATTRIBUTE tok[] = { { CKA_TOKEN, &fx_true, 1 } };
	CK_ATTRIBUTE pk_tok[] = { { CKA_TOKEN, &fx_true, 1 }, { CKA_LABEL, "key", 3 } };
	CK_ULONG len;
	char *v;

	(void)state;
	assert_int_equal(fixture_initialize(), CKR_OK);
	slot = fixture_init_token_label("persist");
	s = fixture_open_user_session(slot);
	assert_int_equal(F->C_CreateObject(s, pub, FX_COUNT(pub), &o), CKR_OK);
	assert_int_equal(F->C_CreateObject(s, priv, FX_COUNT(priv), &o), CKR_OK);
	assert_int_equal(F->C_CreateObject(s, sess, FX_COUNT(sess), &o), CKR_OK);
	assert_int_equal(fixture_gen_keypair(s, CKM_EC_KEY_PAIR_GEN,
					     (CK_ATTRIBUTE[]){ { CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len },
							       pk_tok[0], pk_tok[1] },
					     3, pk_tok, 2, &pub_key, &priv_key),
			 CKR_OK);
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);

	assert_int_equal(fixture_initialize(), CKR_OK);
	slot = fixture_slot_by_label("persist");
	s = fixture_open_session(slot, false);
	/* Before login only the public objects. */
	assert_int_equal(fixture_count_objects(s, tok, 1), 2); /* data + public key */
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
	assert_int_equal(fixture_count_objects(s, tok, 1), 4);
	assert_int_equal(fixture_count_objects(s, NULL, 0), 4); /* the session object is gone */

	by_label.pValue = "private";
	by_label.ulValueLen = 7;
	assert_int_equal(F->C_FindObjectsInit(s, &by_label, 1), CKR_OK);
	assert_int_equal(F->C_FindObjects(s, &o, 1, &len), CKR_OK);
	assert_int_equal(len, 1);
	assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);
	v = fixture_get_attr(s, o, CKA_VALUE, &len);
	assert_non_null(v);
	assert_int_equal(len, 12);
	assert_memory_equal(v, "private data", 12);
	free(v);
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
}

static bool file_equals(const char *path, const unsigned char *want, size_t len)
{
	unsigned char buf[4096];
	FILE *fp = fopen(path, "rb");
	size_t got;

	if (!fp)
		return false;
	got = fread(buf, 1, sizeof(buf), fp);
	fclose(fp);
	return got == len && memcmp(buf, want, len) == 0;
}

static void test_corrupt_store(void **state)
{
	FX_FILE_TOKEN_ONLY("the store file is the file token's");
	unsigned char garbage[1024];
	char path[PATH_MAX + 16];
	CK_SLOT_ID slots[64];
	CK_ULONG n = FX_COUNT(slots);
	CK_SESSION_HANDLE s;
	int not_recognized = 0;
	FILE *fp;

	(void)state;
	FX_KOLTAMGA_ONLY(); /* koltamga's store layout */
	for (size_t i = 0; i < sizeof(garbage); i++)
		garbage[i] = (unsigned char)(i * 131 + 7);
	memcpy(garbage, "SQLite format 3", 16); /* looks like SQLite, is not */
	snprintf(path, sizeof(path), "%s/x.ktok", fx.store);
	fp = fopen(path, "wb");
	assert_non_null(fp);
	assert_int_equal(fwrite(garbage, 1, sizeof(garbage), fp), sizeof(garbage));
	assert_int_equal(fclose(fp), 0);

	assert_int_equal(fixture_initialize(), CKR_OK);
	assert_int_equal(F->C_GetSlotList(CK_FALSE, slots, &n), CKR_OK);
	assert_true(n >= 2); /* x.ktok and the empty slot */
	for (CK_ULONG i = 0; i < n; i++) {
		CK_RV rv = F->C_OpenSession(slots[i], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);

		assert_int_not_equal(rv, CKR_OK);
		if (rv == CKR_TOKEN_NOT_RECOGNIZED)
			not_recognized++;
	}
	assert_true(not_recognized >= 1);
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
	assert_true(file_equals(path, garbage, sizeof(garbage)));

	/* Still no crash the second time round. */
	assert_int_equal(fixture_initialize(), CKR_OK);
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
	assert_true(file_equals(path, garbage, sizeof(garbage)));
}

/* Is there a mapping of at least `kib` KiB that core dumps leave out
 * (VmFlags "dd")?  OpenSSL's secure heap is one. */
static bool dontdump_mapping(unsigned long kib)
{
	FILE *fp = fopen("/proc/self/smaps", "r");
	char line[512];
	unsigned long size = 0;
	bool found = false;
	assert_non_null(fp);
	while (!found && fgets(line, sizeof(line), fp)) {
		if (sscanf(line, "Size: %lu kB", &size) == 1)
			continue;
		if (strncmp(line, "VmFlags:", 8) == 0 && strstr(line, " dd") && size >= kib)
			found = true;
	}
	fclose(fp);
	return found;
}

/* Keys, PINs and documents live in OpenSSL's secure heap, which the
 * module sets up (secure_heap, default 1 MiB): out of core dumps, and the
 * private key material of a new key pair is in it. */
static void test_secure_heap(void **state)
{
	FX_FILE_TOKEN_ONLY("a device's keys are never in this process's memory");
	(void)state;
	FX_KOLTAMGA_ONLY();
	assert_true(CRYPTO_secure_malloc_initialized());
	assert_true(dontdump_mapping(1024));
	CK_SLOT_ID slot = fixture_init_token();
	CK_SESSION_HANDLE s = fixture_open_user_session(slot);
	size_t before = CRYPTO_secure_used();
	CK_OBJECT_HANDLE pub, priv;
	assert_int_equal(fixture_gen_rsa(s, 2048, &pub, &priv), CKR_OK);
	/* The private exponent, primes and CRT parts: well over 600 bytes. */
	assert_true(CRYPTO_secure_used() >= before + 600);
	assert_int_equal(fx.f->C_DestroyObject(s, priv), CKR_OK);
	assert_true(CRYPTO_secure_used() < before + 600);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		/* Before C_Initialize. */
		cmocka_unit_test_setup_teardown(test_get_function_list, fixture_setup_uninit, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_interface_list, fixture_setup_uninit, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_get_interface, fixture_setup_uninit, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_initialize_null_args, fixture_setup_uninit, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_initialize_os_locking, fixture_setup_uninit, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_initialize_app_mutexes_only, fixture_setup_uninit,
						fixture_teardown),
		cmocka_unit_test_setup_teardown(test_initialize_some_mutexes, fixture_setup_uninit, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_initialize_flag_and_mutexes, fixture_setup_uninit,
						fixture_teardown),
		cmocka_unit_test_setup_teardown(test_finalize, fixture_setup_uninit, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_not_initialized, fixture_setup_uninit, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_config_errors, fixture_setup_uninit, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_persistence, fixture_setup_uninit, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_store, fixture_setup_uninit, fixture_teardown),
		/* Initialised, each on a fresh store. */
		cmocka_unit_test_setup_teardown(test_get_info, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_fork, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_slot_list, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_slot_token_info, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_pin_counter, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_so_pin_counter, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_init_token, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_init_pin_set_pin, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_mechanisms, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_secure_heap, fixture_setup, fixture_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
