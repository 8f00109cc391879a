/*
 * The pkcs11 token driver (tokens/pkcs11/pkcs11-token.c) through the real
 * module: koltamga's token is a device, SoftHSM2 behind the fault-injecting
 * shim (tests/device/shim.c), which plays a card that is pulled out and put
 * back, slow, hung or failing.  What an application must see then is
 * PKCS#11's answer for a removable token (CKR_DEVICE_REMOVED for the call
 * that meets the removal, then CKR_SESSION_HANDLE_INVALID: removing a token
 * closes its sessions; CKR_TOKEN_NOT_PRESENT for the slot, a logged-out token when
 * it is back), never a hang of the other tokens, never an error that blames
 * the application's own handles, and never a key leaving the device.  The
 * configuration that names the device and picks its token is tested here
 * too, against two real SoftHSM2 tokens.
 *
 * Every test runs in device mode (KT_TEST_DRIVER=pkcs11, fixture.c) with
 * KT_DEVICE_MODULE the shim; the shim's control file and call log live in
 * the test's temporary directory.  Nothing here asserts speed, except that
 * an injected delay really happened.
 */
#ifndef _GNU_SOURCE /* pthread_timedjoin_np; configure may define it already */
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "certfix.h"
#include "fixture.h"
#include "koltamga/pkcs11v.h"

#define F (fx.f)

static char shim_path[PATH_MAX + 64];
static char control[PATH_MAX + 32], calls[PATH_MAX + 32], audit[PATH_MAX + 32];
static char answers[PATH_MAX + 32], asked[PATH_MAX + 32]; /* the scripted signer's */
static CK_SLOT_ID slot;	     /* the device's slot */
static CK_SLOT_ID file_slot; /* a file token beside it (test_hung_device_spares_file_token) */
/* SoftHSM2 initialised by the test itself (two_tokens), which teardown
 * finalises should the test fail half-way: the next test's koltamga must
 * initialise it itself. */
static CK_FUNCTION_LIST_PTR hsm_direct;
/* Text a test reads (a log, stderr) while it may still fail: a failure
 * leaves the function at once, so teardown frees it. */
static char *held;
static const char doc[] = "Act 4/2024: the Buyer accepts the 12 delivered items.";

/* p, kept until the next hold() or teardown. */
static char *hold(char *p)
{
	free(held);
	held = p;
	return p;
}

/* --- time, the watchdog ---------------------------------------------------- */

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

/* A test that hangs must fail the suite, not stall it: past the limit the
 * process ends with a message (cmocka cannot fail from a signal). */
static void watchdog_fired(int sig)
{
	static const char msg[] = "test-device: watchdog: a call did not return in time (a hang)\n";
	(void)sig;
	if (write(2, msg, sizeof(msg) - 1) < 0) {
		/* nothing more to do */
	}
	_exit(1);
}

static void watchdog_arm(unsigned seconds)
{
	signal(SIGALRM, watchdog_fired);
	alarm(seconds);
}

static void watchdog_disarm(void)
{
	alarm(0);
	signal(SIGALRM, SIG_DFL);
}

/* --- the shim: control file and call log ---------------------------------- */

/* What the device does from the next call on; NULL: nothing special.
 * Replaced with rename(), as the shim asks, so no call reads half of it. */
static void shim(const char *text)
{
	char tmp[sizeof(control) + 8];
	if (!text) {
		assert_true(unlink(control) == 0 || errno == ENOENT);
		return;
	}
	snprintf(tmp, sizeof(tmp), "%s.new", control);
	FILE *fp = fopen(tmp, "w");
	assert_non_null(fp);
	fputs(text, fp);
	assert_int_equal(fclose(fp), 0);
	assert_int_equal(rename(tmp, control), 0);
}

/* How many calls of fn the device has had (log lines "fn" or "fn ..."). */
static int calls_of(const char *fn)
{
	char *log = certfix_read(calls);
	size_t len = strlen(fn);
	int n = 0;
	for (const char *p = log; *p;) {
		const char *end = strchr(p, '\n');
		size_t line = end ? (size_t)(end - p) : strlen(p);
		if (line >= len && memcmp(p, fn, len) == 0 && (line == len || p[len] == ' '))
			n++;
		p += line + (end ? 1 : 0);
	}
	free(log);
	return n;
}

/* How many calls the device has had. */
static int device_calls(void)
{
	char *log = certfix_read(calls);
	int n = certfix_count(log, "\n");
	free(log);
	return n;
}

/* The function list of a module this process has already loaded (the shim
 * that koltamga loaded, the SoftHSM2 that the shim loaded): calls through
 * it reach the same instance without koltamga knowing. */
static CK_FUNCTION_LIST_PTR loaded_module(const char *path, void **dl)
{
	CK_FUNCTION_LIST_PTR list = NULL;
	*dl = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
	assert_non_null(*dl);
	CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(*dl, "C_GetFunctionList");
	assert_non_null(get);
	assert_int_equal(get(&list), CKR_OK);
	return list;
}

/* The card pulled out and put straight back between two of koltamga's
 * calls: the device sees the removal (the shim counts a removal only when
 * a call sees it, here one koltamga does not make), then the re-insertion
 * at its next call, which ends every session the device had. */
static void pulled_and_put_back(void)
{
	void *dl;
	CK_FUNCTION_LIST_PTR dev = loaded_module(shim_path, &dl);
	CK_INFO info;
	shim("removed\n");
	assert_int_equal(dev->C_GetInfo(&info), CKR_OK);
	shim(NULL);
	dlclose(dl);
}

/* --- setups ------------------------------------------------------------ */

/* Device mode with the shim as the device's module; everything up to, not
 * including, C_Initialize. */
static int device_env(void **state)
{
	const char *b = getenv("KOLTAMGA_BUILDDIR");
	char dir[PATH_MAX];
	/* The configuration wants an absolute module path. */
	if (!realpath(b && *b ? b : ".", dir))
		return -1;
	snprintf(shim_path, sizeof(shim_path), "%s/tests/device/.libs/libktshim.so", dir);
	if (access(shim_path, R_OK) != 0) {
		fprintf(stderr, "test-device: no shim at %s (make check TESTS= builds it)\n", shim_path);
		return -1;
	}
	setenv("KT_TEST_DRIVER", "pkcs11", 1);
	setenv("KT_DEVICE_MODULE", shim_path, 1);
	unsetenv("KT_SHIM_MODULE"); /* the shim's default: SoftHSM2 */
	unsetenv("KT_SHIM_PINPAD_PIN");
	if (fixture_setup_uninit(state) != 0)
		return -1;
	if (!fx.device) {
		fprintf(stderr,
			"test-device: KOLTAMGA_MODULE must be koltamga (these are its device tests)\n");
		return -1;
	}
	snprintf(control, sizeof(control), "%s/shim-control", fx.dir);
	snprintf(calls, sizeof(calls), "%s/shim-calls.log", fx.dir);
	snprintf(audit, sizeof(audit), "%s/audit.log", fx.dir);
	setenv("KT_SHIM_CONTROL", control, 1);
	setenv("KT_SHIM_LOG", calls, 1);
	return 0;
}

/* The device's token initialised through koltamga ("test", FX_USER_PIN). */
static int setup(void **state)
{
	if (device_env(state) != 0 || fixture_initialize() != CKR_OK)
		return -1;
	slot = fixture_init_token();
	return 0;
}

/* The same with a file token beside the device (a store directory). */
static int setup_with_file_token(void **state)
{
	char extra[PATH_MAX + 64];
	if (device_env(state) != 0)
		return -1;
	snprintf(extra, sizeof(extra), "store = %s/store\nscrypt_n = 1024\n", fx.dir);
	if (certfix_conf(extra) != 0 || fixture_initialize() != CKR_OK)
		return -1;
	/* The [token] slots come first: the device is the first empty one. */
	slot = fixture_init_token();
	file_slot = fixture_init_token_label("file");
	return 0;
}

/* A reader with a PIN pad from the start (it does not grow one). */
static int setup_pinpad(void **state)
{
	if (device_env(state) != 0)
		return -1;
	shim("pinpad\n");
	setenv("KT_SHIM_PINPAD_PIN", FX_USER_PIN, 1);
	if (fixture_initialize() != CKR_OK)
		return -1;
	slot = fixture_init_token();
	return 0;
}

static int teardown(void **state)
{
	watchdog_disarm();
	/* No fault left for C_Finalize's calls into the device. */
	if (control[0])
		unlink(control);
	unsetenv("KT_SHIM_PINPAD_PIN");
	if (hsm_direct)
		hsm_direct->C_Finalize(NULL);
	hsm_direct = NULL;
	hold(NULL);
	return fixture_teardown(state);
}

/* --- PKCS#11 helpers --------------------------------------------------- */

static CK_STATE state_of(CK_SESSION_HANDLE s)
{
	CK_SESSION_INFO info;
	assert_int_equal(F->C_GetSessionInfo(s, &info), CKR_OK);
	return info.state;
}

static CK_FLAGS slot_flags(CK_SLOT_ID id)
{
	CK_SLOT_INFO info;
	assert_int_equal(F->C_GetSlotInfo(id, &info), CKR_OK);
	return info.flags;
}

static bool listed(CK_BBOOL present, CK_SLOT_ID id)
{
	CK_SLOT_ID slots[16];
	CK_ULONG n = FX_COUNT(slots);
	assert_int_equal(F->C_GetSlotList(present, slots, &n), CKR_OK);
	for (CK_ULONG i = 0; i < n; i++)
		if (slots[i] == id)
			return true;
	return false;
}

static bool label_is(const CK_UTF8CHAR field[32], const char *label)
{
	size_t len = strlen(label);
	return memcmp(field, label, len) == 0 && (len == 32 || field[len] == ' ');
}

/* The device is back once the slot says so; an absent device is looked
 * for at most every 200 ms, so this takes a few calls. */
static void wait_for_device(void)
{
	double limit = now_ms() + 2000.0;
	while (!(slot_flags(slot) & CKF_TOKEN_PRESENT)) {
		if (now_ms() > limit)
			fail_msg("the device did not come back within 2 s");
		sleep_ms(20);
	}
}

/* A token key pair made on the device, labelled (CKA_ID = the label). */
static void device_keypair(CK_SESSION_HANDLE s, CK_MECHANISM_TYPE gen, const char *label,
			   CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
	static CK_BYTE e[] = { 0x01, 0x00, 0x01 };
	CK_ULONG bits = 2048;
	CK_ULONG n = (CK_ULONG)strlen(label);
	CK_ATTRIBUTE ec_pub[] = {
		{ CKA_TOKEN, &fx_true, 1 },
		{ CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len },
		{ CKA_LABEL, (void *)label, n },
		{ CKA_ID, (void *)label, n },
	};
	CK_ATTRIBUTE rsa_pub[] = {
		{ CKA_TOKEN, &fx_true, 1 },
		{ CKA_MODULUS_BITS, &bits, sizeof(bits) },
		{ CKA_PUBLIC_EXPONENT, e, sizeof(e) },
		{ CKA_LABEL, (void *)label, n },
		{ CKA_ID, (void *)label, n },
	};
	CK_ATTRIBUTE prv[] = {
		{ CKA_TOKEN, &fx_true, 1 },
		{ CKA_LABEL, (void *)label, n },
		{ CKA_ID, (void *)label, n },
	};
	bool ec = gen == CKM_EC_KEY_PAIR_GEN;
	assert_int_equal(fixture_gen_keypair(s, gen, ec ? ec_pub : rsa_pub,
					     ec ? FX_COUNT(ec_pub) : FX_COUNT(rsa_pub), prv, FX_COUNT(prv),
					     pub, priv),
			 CKR_OK);
}

/* The one object of this class and label (the test fails otherwise). */
static CK_OBJECT_HANDLE find_one(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const char *label)
{
	CK_ATTRIBUTE t[] = { { CKA_CLASS, &cls, sizeof(cls) }, { CKA_LABEL, (void *)label, strlen(label) } };
	CK_OBJECT_HANDLE h[4];
	CK_ULONG n = 0;
	assert_int_equal(F->C_FindObjectsInit(s, t, FX_COUNT(t)), CKR_OK);
	assert_int_equal(F->C_FindObjects(s, h, FX_COUNT(h), &n), CKR_OK);
	assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);
	assert_int_equal(n, 1);
	return h[0];
}

static CK_ULONG count_of(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const char *label)
{
	CK_ATTRIBUTE t[] = { { CKA_CLASS, &cls, sizeof(cls) }, { CKA_LABEL, (void *)label, strlen(label) } };
	return fixture_count_objects(s, t, FX_COUNT(t));
}

static CK_RV sign(CK_SESSION_HANDLE s, CK_MECHANISM_TYPE mech, CK_OBJECT_HANDLE key, CK_BYTE *sig,
		  CK_ULONG *len)
{
	CK_MECHANISM m = { mech, NULL, 0 };
	CK_RV rv = F->C_SignInit(s, &m, key);
	return rv == CKR_OK ? F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, len) : rv;
}

/* OpenSSL's verdict on a signature of doc, with the public key as the
 * module shows it (CKA_PUBLIC_KEY_INFO): neither the module nor the
 * device vouches for its own work. */
static int openssl_verify(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub, CK_MECHANISM_TYPE mech,
			  const CK_BYTE *sig, CK_ULONG sig_len)
{
	CK_ULONG spki_len = 0;
	unsigned char *spki = fixture_get_attr(s, pub, CKA_PUBLIC_KEY_INFO, &spki_len);
	assert_non_null(spki);
	assert_true(spki_len > 0);
	const unsigned char *p = spki;
	EVP_PKEY *pk = d2i_PUBKEY(NULL, &p, (long)spki_len);
	free(spki);
	assert_non_null(pk);
	unsigned char der[160];
	const unsigned char *what = sig;
	size_t what_len = sig_len;
	if (mech == CKM_ECDSA_SHA256) {
		/* PKCS#11 gives r || s; OpenSSL wants DER. */
		ECDSA_SIG *es = ECDSA_SIG_new();
		assert_non_null(es);
		assert_true(sig_len % 2 == 0);
		BIGNUM *r = BN_bin2bn(sig, (int)(sig_len / 2), NULL),
		       *sv = BN_bin2bn(sig + sig_len / 2, (int)(sig_len / 2), NULL);
		assert_true(r && sv && ECDSA_SIG_set0(es, r, sv) == 1);
		assert_true(i2d_ECDSA_SIG(es, NULL) <= (int)sizeof(der));
		unsigned char *q = der;
		int n = i2d_ECDSA_SIG(es, &q);
		assert_true(n > 0);
		ECDSA_SIG_free(es);
		what = der;
		what_len = (size_t)n;
	} else {
		assert_int_equal(mech, CKM_SHA256_RSA_PKCS);
	}
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	assert_non_null(ctx);
	assert_int_equal(EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pk), 1);
	int ok = EVP_DigestVerify(ctx, what, what_len, (const unsigned char *)doc, sizeof(doc) - 1);
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(pk);
	return ok;
}

/* A signature made on the device (it had the C_Sign) and checked by
 * OpenSSL; and, so that the check is known to check, the same signature
 * spoiled is refused. */
static void signs(CK_SESSION_HANDLE s, CK_MECHANISM_TYPE mech, CK_OBJECT_HANDLE priv, CK_OBJECT_HANDLE pub)
{
	CK_BYTE sig[512];
	CK_ULONG len = sizeof(sig);
	int made = calls_of("C_Sign");
	assert_int_equal(sign(s, mech, priv, sig, &len), CKR_OK);
	assert_int_equal(calls_of("C_Sign"), made + 1);
	assert_int_equal(openssl_verify(s, pub, mech, sig, len), 1);
	sig[len / 2] ^= 0x01;
	assert_int_not_equal(openssl_verify(s, pub, mech, sig, len), 1);
}

/* --- 1. removal in the middle of a session ------------------------------- */

static void test_removal_mid_session(void **state)
{
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	CK_SESSION_HANDLE s = fixture_open_user_session(slot), other = fixture_open_session(slot, false), s2;
	CK_OBJECT_HANDLE pub, priv;
	CK_TOKEN_INFO ti;
	CK_BYTE sig[128];
	CK_ULONG len = sizeof(sig);

	device_keypair(s, CKM_EC_KEY_PAIR_GEN, "removal", &pub, &priv);
	signs(s, CKM_ECDSA_SHA256, priv, pub);
	assert_true(listed(CK_TRUE, slot));

	/* Pulled out with a signature started. */
	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_OK);
	shim("removed\n");
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_DEVICE_REMOVED);
	/* Removing a token closed its sessions (PKCS#11), this one and the
	 * other alike. */
	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_SESSION_HANDLE_INVALID);
	assert_int_equal(F->C_FindObjectsInit(s, NULL, 0), CKR_SESSION_HANDLE_INVALID);
	assert_int_equal(F->C_GetSessionInfo(other, &(CK_SESSION_INFO){ 0 }), CKR_SESSION_HANDLE_INVALID);
	/* The slot stays, a reader without its card. */
	assert_int_equal(F->C_GetTokenInfo(slot, &ti), CKR_TOKEN_NOT_PRESENT);
	CK_FLAGS flags = slot_flags(slot);
	assert_false(flags & CKF_TOKEN_PRESENT);
	assert_true(flags & CKF_REMOVABLE_DEVICE);
	assert_true(flags & CKF_HW_SLOT);
	assert_false(listed(CK_TRUE, slot));
	assert_true(listed(CK_FALSE, slot));
	assert_int_equal(F->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s2), CKR_TOKEN_NOT_PRESENT);
	/* An application that closes what it had is told it is gone. */
	assert_int_equal(F->C_CloseSession(s), CKR_SESSION_HANDLE_INVALID);
	/* The failed signature is in the audit log, as failed. */
	const char *log = hold(certfix_read(audit));
	assert_int_equal(certfix_count(log, "\"decision\":\"failed\",\"reason\":\"CKR_DEVICE_REMOVED\""), 1);

	/* Back: a new insertion, nothing of the old one holds. */
	shim(NULL);
	wait_for_device();
	assert_true(listed(CK_TRUE, slot));
	assert_int_equal(F->C_GetSessionInfo(other, &(CK_SESSION_INFO){ 0 }), CKR_SESSION_HANDLE_INVALID);
	assert_int_equal(F->C_FindObjectsInit(other, NULL, 0), CKR_SESSION_HANDLE_INVALID);
	assert_int_equal(F->C_CloseSession(other), CKR_SESSION_HANDLE_INVALID);
	assert_int_equal(F->C_GetTokenInfo(slot, &ti), CKR_OK);
	assert_true(label_is(ti.label, "test"));
	s2 = fixture_open_session(slot, true);
	assert_int_equal(state_of(s2), CKS_RW_PUBLIC_SESSION);
	assert_int_equal(count_of(s2, CKO_PRIVATE_KEY, "removal"), 0);
	assert_int_equal(F->C_Login(s2, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
	priv = find_one(s2, CKO_PRIVATE_KEY, "removal");
	pub = find_one(s2, CKO_PUBLIC_KEY, "removal");
	signs(s2, CKM_ECDSA_SHA256, priv, pub);
}

/* --- 2. removal in a multi-part signature; pulled and put back ----------- */

/* Once the module has answered CKR_DEVICE_REMOVED, the session was closed
 * with the removal: whichever call comes next. */
static void session_is_gone(CK_SESSION_HANDLE s)
{
	CK_SESSION_INFO info = { 0 };
	CK_RV rv = F->C_GetSessionInfo(s, &info);
	if (rv != CKR_SESSION_HANDLE_INVALID)
		fail_msg("C_GetSessionInfo after CKR_DEVICE_REMOVED = 0x%lx (state %lu), not "
			 "CKR_SESSION_HANDLE_INVALID",
			 rv, info.state);
	CK_BYTE part[4] = { 0 };
	assert_int_equal(F->C_SignUpdate(s, part, sizeof(part)), CKR_SESSION_HANDLE_INVALID);
}

/* A signature in parts, the device pulled out before its end; the same
 * key signs once the device is back.  `streams`: the data goes to the
 * device as it comes (else the module hashes and the device gets the hash
 * at the end). */
static void removal_mid_multipart(CK_MECHANISM_TYPE mech, CK_MECHANISM_TYPE gen, const char *label, bool streams)
{
	CK_MECHANISM m = { mech, NULL, 0 };
	CK_SESSION_HANDLE s = fixture_open_user_session(slot);
	CK_OBJECT_HANDLE pub, priv;
	CK_BYTE sig[512];
	CK_ULONG len = sizeof(sig);
	const CK_ULONG half = (sizeof(doc) - 1) / 2;

	device_keypair(s, gen, label, &pub, &priv);
	int updates = calls_of("C_SignUpdate");
	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_OK);
	assert_int_equal(F->C_SignUpdate(s, (CK_BYTE_PTR)doc, half), CKR_OK);
	assert_int_equal(calls_of("C_SignUpdate"), updates + (streams ? 1 : 0));
	shim("removed\n");
	assert_int_equal(F->C_SignFinal(s, sig, &len), CKR_DEVICE_REMOVED);
	session_is_gone(s);
	shim(NULL);
	wait_for_device();
	s = fixture_open_user_session(slot);
	signs(s, mech, find_one(s, CKO_PRIVATE_KEY, label), find_one(s, CKO_PUBLIC_KEY, label));
}

/* SoftHSM2 has no CKM_ECDSA_SHA256: the module hashes, the device signs
 * the hash at C_SignFinal. */
static void test_removal_mid_multipart_hashed(void **state)
{
	(void)state;
	removal_mid_multipart(CKM_ECDSA_SHA256, CKM_EC_KEY_PAIR_GEN, "multi-ec", false);
}

/* CKM_SHA256_RSA_PKCS: the data streams to the device itself. */
static void test_removal_mid_multipart_streamed(void **state)
{
	(void)state;
	removal_mid_multipart(CKM_SHA256_RSA_PKCS, CKM_RSA_PKCS_KEY_PAIR_GEN, "multi-rsa", true);
}

static void test_pulled_and_put_back(void **state)
{
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	CK_SESSION_HANDLE s = fixture_open_user_session(slot);
	CK_OBJECT_HANDLE pub, priv;

	device_keypair(s, CKM_EC_KEY_PAIR_GEN, "blip", &pub, &priv);
	signs(s, CKM_ECDSA_SHA256, priv, pub);

	/* A signature on a session from before meets the device's new
	 * insertion: removed, not an invalid handle of ours; after that
	 * the session is closed, as removal closes them. */
	pulled_and_put_back();
	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_DEVICE_REMOVED);
	assert_int_equal(F->C_FindObjectsInit(s, NULL, 0), CKR_SESSION_HANDLE_INVALID);
	assert_int_equal(F->C_GetSessionInfo(s, &(CK_SESSION_INFO){ 0 }), CKR_SESSION_HANDLE_INVALID);
	/* The device's login went with the insertion, so koltamga's did. */
	s = fixture_open_session(slot, true);
	assert_int_equal(state_of(s), CKS_RW_PUBLIC_SESSION);
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
	priv = find_one(s, CKO_PRIVATE_KEY, "blip");
	pub = find_one(s, CKO_PUBLIC_KEY, "blip");
	signs(s, CKM_ECDSA_SHA256, priv, pub);

	/* Without a signature to run into it, the idle probe (at most one a
	 * second) notices. */
	pulled_and_put_back();
	sleep_ms(1100);
	assert_int_equal(F->C_FindObjectsInit(s, NULL, 0), CKR_DEVICE_REMOVED);
	s = fixture_open_user_session(slot);
	signs(s, CKM_ECDSA_SHA256, find_one(s, CKO_PRIVATE_KEY, "blip"), find_one(s, CKO_PUBLIC_KEY, "blip"));
}

/* --- 3. the device's errors as the application sees them ---------------- */

static void test_device_errors(void **state)
{
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	CK_SESSION_HANDLE s = fixture_open_session(slot, true);
	CK_OBJECT_HANDLE pub, priv;
	CK_BYTE sig[128];
	CK_ULONG len = sizeof(sig);
	int logins = calls_of("C_Login");

	/* PINs are the device's: its answers pass through. */
	shim("fail C_Login 0xA4\n");
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_PIN_LOCKED);
	assert_int_equal(calls_of("C_Login"), logins + 1);
	shim(NULL);
	assert_int_equal(state_of(s), CKS_RW_PUBLIC_SESSION);
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN("98765")), CKR_PIN_INCORRECT);
	assert_int_equal(calls_of("C_Login"), logins + 2);
	assert_int_equal(state_of(s), CKS_RW_PUBLIC_SESSION);
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
	device_keypair(s, CKM_EC_KEY_PAIR_GEN, "errors", &pub, &priv);
	signs(s, CKM_ECDSA_SHA256, priv, pub);

	/* A device error ends the operation. */
	shim("fail C_Sign 0x30\n");
	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_OK);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_DEVICE_ERROR);
	len = sizeof(sig);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len),
			 CKR_OPERATION_NOT_INITIALIZED);
	/* A device module's CKR_GENERAL_ERROR is the device's failure, not
	 * koltamga's. */
	shim("fail C_Sign 0x5\n");
	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_OK);
	len = sizeof(sig);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_DEVICE_ERROR);
	/* A code about the request passes through, and the session goes on. */
	shim("fail C_SignInit 0x70\n");
	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_MECHANISM_INVALID);
	shim(NULL);
	signs(s, CKM_ECDSA_SHA256, priv, pub);
	assert_int_equal(state_of(s), CKS_RW_USER_FUNCTIONS);

	/* The audit log: the two failed signatures as failed, the two made
	 * as signed (C_Finalize writes the batched seal records). */
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
	const char *log = hold(certfix_read(audit));
	assert_int_equal(certfix_count(log, "\"decision\":\"failed\",\"reason\":\"CKR_DEVICE_ERROR\""), 2);
	assert_int_equal(certfix_count(log, "\"decision\":\"failed\""), 2);
	assert_int_equal(certfix_count(log, "\"decision\":\"signed\""), 2);
}

/* The device losing its own session (which the application never saw) is
 * the device going away, never a complaint about the application's
 * handle; and from then on the session is one from before the removal. */
static void test_device_lost_its_session(void **state)
{
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	CK_SESSION_HANDLE s = fixture_open_user_session(slot);
	CK_OBJECT_HANDLE pub, priv;

	device_keypair(s, CKM_EC_KEY_PAIR_GEN, "lost", &pub, &priv);
	shim("fail C_SignInit 0xB3\n");
	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_DEVICE_REMOVED);
	shim(NULL);
	session_is_gone(s);
	assert_int_equal(F->C_FindObjectsInit(s, NULL, 0), CKR_SESSION_HANDLE_INVALID);
	s = fixture_open_session(slot, true);
	assert_int_equal(state_of(s), CKS_RW_PUBLIC_SESSION);
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
	signs(s, CKM_ECDSA_SHA256, find_one(s, CKO_PRIVATE_KEY, "lost"), find_one(s, CKO_PUBLIC_KEY, "lost"));
}

/* --- 4. a slow device ------------------------------------------------------ */

static void test_slow_device(void **state)
{
	CK_SESSION_HANDLE s = fixture_open_user_session(slot);
	CK_OBJECT_HANDLE pub, priv;
	CK_BYTE sig[128];
	CK_ULONG len = sizeof(sig);

	device_keypair(s, CKM_EC_KEY_PAIR_GEN, "slow", &pub, &priv);
	shim("delay_ms 300\n");
	double t0 = now_ms();
	assert_int_equal(sign(s, CKM_ECDSA_SHA256, priv, sig, &len), CKR_OK);
	double ms = now_ms() - t0;
	shim(NULL);
	/* Proof the delay was there, not a speed requirement. */
	assert_true(ms >= 300.0);
	assert_int_equal(openssl_verify(s, pub, CKM_ECDSA_SHA256, sig, len), 1);
}

/* The device's storage taken away under it (SoftHSM2's token directory
 * deleted): whatever the device then answers, koltamga passes on an error
 * of the specification's and never a crash, and the key that can no longer
 * be read is not shown as signing. */
static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void test_storage_gone(void **state)
{
	CK_SESSION_HANDLE s = fixture_open_user_session(slot);
	CK_OBJECT_HANDLE pub, priv;
	CK_BYTE sig[128];
	CK_ULONG len = sizeof(sig);
	CK_TOKEN_INFO ti;

	device_keypair(s, CKM_EC_KEY_PAIR_GEN, "storage", &pub, &priv);
	assert_int_equal(sign(s, CKM_ECDSA_SHA256, priv, sig, &len), CKR_OK);
	assert_int_equal(nftw(fx.store, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
	len = sizeof(sig);
	/* SoftHSM2 no longer has the key: gone for the application too. */
	assert_int_equal(sign(s, CKM_ECDSA_SHA256, priv, sig, &len), CKR_KEY_HANDLE_INVALID);
	/* SoftHSM2's CKR_GENERAL_ERROR, as the device's failure. */
	CK_RV rv = F->C_GetTokenInfo(slot, &ti);
	assert_true(rv == CKR_DEVICE_ERROR || rv == CKR_TOKEN_NOT_PRESENT);
	/* Everything else still answers. */
	CK_ULONG n = 0;
	rv = F->C_FindObjectsInit(s, NULL, 0);
	assert_true(rv == CKR_OK || rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_REMOVED);
	if (rv == CKR_OK) {
		CK_OBJECT_HANDLE h[8];
		assert_int_equal(F->C_FindObjects(s, h, 8, &n), CKR_OK);
		assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);
	}
	rv = F->C_CloseSession(s);
	assert_true(rv == CKR_OK || rv == CKR_SESSION_HANDLE_INVALID);
}

/* --- review fixes: what a device cannot keep, koltamga keeps ------------ */

/* [key] label = keeper is a confirm key on an automatic token: renaming it,
 * or copying it under another label, would make it a seal.  Refused. */
/* Compromise reports and device marks in the test's directory. */
static int setup_marks(void **state)
{
	char extra[PATH_MAX + 64];
	if (device_env(state) != 0)
		return -1;
	snprintf(extra, sizeof(extra), "compromise_reports = %s/reports\n", fx.dir);
	if (certfix_conf(extra) != 0 || fixture_initialize() != CKR_OK)
		return -1;
	slot = fixture_init_token();
	return 0;
}

static int setup_keeper(void **state)
{
	if (device_env(state) != 0 || certfix_conf("[key]\nlabel = keeper\nsign_policy = confirm\n") != 0 ||
	    fixture_initialize() != CKR_OK)
		return -1;
	slot = fixture_init_token();
	return 0;
}

static void test_rename_keeps_policy(void **state)
{
	(void)state;
	CK_SESSION_HANDLE s = fixture_open_user_session(slot);
	CK_OBJECT_HANDLE pub, priv, copy;
	CK_ULONG policy = 0;
	CK_ATTRIBUTE pa = { CKA_KT_SIGN_POLICY, &policy, sizeof(policy) };

	device_keypair(s, CKM_EC_KEY_PAIR_GEN, "keeper", &pub, &priv);
	assert_int_equal(F->C_GetAttributeValue(s, priv, &pa, 1), CKR_OK);
	assert_int_equal(policy, CK_KT_POLICY_CONFIRM);
	CK_ATTRIBUTE rename[] = { { CKA_LABEL, "seal", 4 } };
	assert_int_equal(F->C_SetAttributeValue(s, priv, rename, 1), CKR_ATTRIBUTE_READ_ONLY);
	assert_int_equal(F->C_CopyObject(s, priv, rename, 1, &copy), CKR_ATTRIBUTE_READ_ONLY);
	assert_int_equal(count_of(s, CKO_PRIVATE_KEY, "seal"), 0);
	/* A change that keeps the policy is fine. */
	CK_ATTRIBUTE id[] = { { CKA_ID, "k2", 2 } };
	assert_int_equal(F->C_SetAttributeValue(s, priv, id, 1), CKR_OK);
	assert_int_equal(F->C_GetAttributeValue(s, priv, &pa, 1), CKR_OK);
	assert_int_equal(policy, CK_KT_POLICY_CONFIRM);
	/* A seal may be renamed into a confirm key, the stricter way. */
	device_keypair(s, CKM_EC_KEY_PAIR_GEN, "plain-seal", &pub, &priv);
	CK_ATTRIBUTE to_keeper[] = { { CKA_LABEL, "keeper", 6 } };
	assert_int_equal(F->C_SetAttributeValue(s, priv, to_keeper, 1), CKR_OK);
	assert_int_equal(F->C_GetAttributeValue(s, priv, &pa, 1), CKR_OK);
	assert_int_equal(policy, CK_KT_POLICY_CONFIRM);
}

/* A compromise mark goes by the key itself: renaming the key, copying it,
 * restarting, none of it unmarks it. */
static void test_mark_follows_key(void **state)
{
	(void)state;
	CK_SESSION_HANDLE s = fixture_open_user_session(slot);
	CK_OBJECT_HANDLE pub, priv, copy;
	CK_BYTE sig[128];
	CK_ULONG len = sizeof(sig);
	CK_BBOOL yes = CK_TRUE;
	const char why[] = "card lost";
	CK_ATTRIBUTE mark[] = { { CKA_KT_COMPROMISE_REASON, (void *)why, sizeof(why) - 1 },
				{ CKA_KT_COMPROMISED, &yes, sizeof(yes) } };

	device_keypair(s, CKM_EC_KEY_PAIR_GEN, "marked", &pub, &priv);
	assert_int_equal(F->C_SetAttributeValue(s, priv, mark, 2), CKR_OK);
	assert_int_equal(sign(s, CKM_ECDSA_SHA256, priv, sig, &len), CKR_KEY_FUNCTION_NOT_PERMITTED);
	CK_ATTRIBUTE rename[] = { { CKA_LABEL, "innocent", 8 }, { CKA_ID, "zz", 2 } };
	assert_int_equal(F->C_SetAttributeValue(s, priv, rename, 2), CKR_OK);
	assert_int_equal(F->C_CopyObject(s, priv, NULL, 0, &copy), CKR_OK);
	assert_true(fixture_get_bool(s, copy, CKA_KT_COMPROMISED));
	len = sizeof(sig);
	assert_int_equal(sign(s, CKM_ECDSA_SHA256, copy, sig, &len), CKR_KEY_FUNCTION_NOT_PERMITTED);
	/* A restart reads the device afresh: still marked, both. */
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
	assert_int_equal(fixture_initialize(), CKR_OK);
	slot = fixture_slot_by_label("test");
	s = fixture_open_user_session(slot);
	CK_OBJECT_CLASS pc = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE find[] = { { CKA_CLASS, &pc, sizeof(pc) }, { CKA_LABEL, "innocent", 8 } };
	CK_OBJECT_HANDLE found[4];
	CK_ULONG n = 0;
	assert_int_equal(F->C_FindObjectsInit(s, find, 2), CKR_OK);
	assert_int_equal(F->C_FindObjects(s, found, 4, &n), CKR_OK);
	assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);
	assert_int_equal(n, 2);
	for (CK_ULONG i = 0; i < n; i++) {
		assert_true(fixture_get_bool(s, found[i], CKA_KT_COMPROMISED));
		len = sizeof(sig);
		assert_int_equal(sign(s, CKM_ECDSA_SHA256, found[i], sig, &len), CKR_KEY_FUNCTION_NOT_PERMITTED);
	}
}

/* Our pooled read-only device sessions are not the application's: an SO
 * login after a signature is not refused for them. */
static void test_so_login_after_signing(void **state)
{
	(void)state;
	CK_SESSION_HANDLE s = fixture_open_user_session(slot);
	CK_OBJECT_HANDLE pub, priv;
	device_keypair(s, CKM_EC_KEY_PAIR_GEN, "before-so", &pub, &priv);
	signs(s, CKM_ECDSA_SHA256, priv, pub);
	assert_int_equal(F->C_Logout(s), CKR_OK);
	assert_int_equal(F->C_Login(s, CKU_SO, FX_PIN(FX_SO_PIN)), CKR_OK);
	assert_int_equal(F->C_Logout(s), CKR_OK);
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
	/* Handles of private objects died with the logout (PKCS#11). */
	signs(s, CKM_ECDSA_SHA256, find_one(s, CKO_PRIVATE_KEY, "before-so"), pub);
}

/* A per-use PIN is the device's to check, for a device operation that
 * wants one: during a verification (the module's own) there is none. */
static void test_context_login_without_device_operation(void **state)
{
	(void)state;
	CK_SESSION_HANDLE s = fixture_open_user_session(slot);
	CK_OBJECT_HANDLE pub, priv;
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	device_keypair(s, CKM_EC_KEY_PAIR_GEN, "verifier", &pub, &priv);
	assert_int_equal(F->C_Login(s, CKU_CONTEXT_SPECIFIC, FX_PIN(FX_USER_PIN)), CKR_OPERATION_NOT_INITIALIZED);
	assert_int_equal(F->C_VerifyInit(s, &m, pub), CKR_OK);
	assert_int_equal(F->C_Login(s, CKU_CONTEXT_SPECIFIC, FX_PIN(FX_USER_PIN)), CKR_OPERATION_NOT_INITIALIZED);
	int logins = calls_of("C_Login");
	assert_int_equal(F->C_Login(s, CKU_CONTEXT_SPECIFIC, FX_PIN("0000")), CKR_OPERATION_NOT_INITIALIZED);
	assert_int_equal(calls_of("C_Login"), logins); /* the device was not asked */
}

/* An application that polls sees the device go and come back: slot
 * events, and the slot list with tokenPresent. */
static void test_slot_events(void **state)
{
	(void)state;
	CK_SLOT_ID ev = 0xdead;
	assert_int_equal(F->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL), CKR_NO_EVENT);
	assert_int_equal(F->C_WaitForSlotEvent(0, &ev, NULL), CKR_FUNCTION_NOT_SUPPORTED);
	shim("removed\n");
	double t0 = now_ms();
	CK_RV rv;
	while ((rv = F->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL)) == CKR_NO_EVENT && now_ms() - t0 < 3000)
		sleep_ms(50);
	assert_int_equal(rv, CKR_OK);
	assert_int_equal(ev, slot);
	assert_int_equal(F->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL), CKR_NO_EVENT);
	assert_false(listed(CK_TRUE, slot));
	shim(NULL);
	/* The slot list alone finds it back (no C_GetSlotInfo first). */
	t0 = now_ms();
	while (!listed(CK_TRUE, slot) && now_ms() - t0 < 3000)
		sleep_ms(50);
	assert_true(listed(CK_TRUE, slot));
	ev = 0xdead;
	assert_int_equal(F->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL), CKR_OK);
	assert_int_equal(ev, slot);
	assert_int_equal(F->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL), CKR_NO_EVENT);
	assert_int_equal(F->C_WaitForSlotEvent(CKF_DONT_BLOCK, NULL, NULL), CKR_ARGUMENTS_BAD);
}

/* --- 5. a hung device and the other tokens --------------------------------- */

struct signer {
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE key;
	pthread_t thread;
	CK_RV rv;
	CK_BYTE sig[128];
	CK_ULONG len;
	atomic_bool done;
};

static void *signer_run(void *arg)
{
	struct signer *w = arg;
	w->len = sizeof(w->sig);
	w->rv = sign(w->s, CKM_ECDSA_SHA256, w->key, w->sig, &w->len);
	atomic_store(&w->done, true);
	return NULL;
}

static void test_hung_device_spares_file_token(void **state)
{
	CK_SESSION_HANDLE ds = fixture_open_user_session(slot), fs = fixture_open_user_session(file_slot),
			  fs2;
	CK_OBJECT_HANDLE dpub, dpriv, fpub, fpriv;
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	CK_TOKEN_INFO ti;
	CK_BYTE sig[128];
	CK_ULONG len = sizeof(sig), n = 0;
	/* Static: should the test fail with the signer still blocked, its
	 * results must not land in a stack frame that is gone. */
	static struct signer w;

	device_keypair(ds, CKM_EC_KEY_PAIR_GEN, "hung", &dpub, &dpriv);
	assert_int_equal(fixture_gen_ec(fs, fx_p256, fx_p256_len, &fpub, &fpriv), CKR_OK);

	memset(&w, 0, sizeof(w));
	int before = device_calls();
	shim("hang\n");
	/* Generous for valgrind; a hang is forever. */
	watchdog_arm(60);
	w.s = ds;
	w.key = dpriv;
	assert_int_equal(pthread_create(&w.thread, NULL, signer_run, &w), 0);
	/* The signer is inside the device once the device has a call (its
	 * C_SignInit, or first the idle probe of whether it is there). */
	double limit = now_ms() + 10000.0;
	while (device_calls() == before) {
		if (now_ms() > limit)
			fail_msg("the signer never reached the device");
		sleep_ms(10);
	}

	/* Meanwhile the file token is all there. */
	assert_int_equal(F->C_GetSlotList(CK_TRUE, NULL, &n), CKR_OK);
	assert_true(n >= 2);
	assert_true(listed(CK_TRUE, file_slot));
	assert_true(slot_flags(file_slot) & CKF_TOKEN_PRESENT);
	assert_int_equal(F->C_GetTokenInfo(file_slot, &ti), CKR_OK);
	assert_true(label_is(ti.label, "file"));
	assert_int_equal(F->C_OpenSession(file_slot, CKF_SERIAL_SESSION, NULL, NULL, &fs2), CKR_OK);
	assert_int_equal(state_of(fs2), CKS_RO_USER_FUNCTIONS);
	assert_int_equal(sign(fs2, CKM_ECDSA_SHA256, fpriv, sig, &len), CKR_OK);
	assert_int_equal(F->C_VerifyInit(fs2, &m, fpub), CKR_OK);
	assert_int_equal(F->C_Verify(fs2, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, len), CKR_OK);
	assert_int_equal(F->C_CloseSession(fs2), CKR_OK);
	/* ...while the device's signer still waits. */
	assert_false(atomic_load(&w.done));

	shim(NULL);
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 30;
	assert_int_equal(pthread_timedjoin_np(w.thread, NULL, &until), 0);
	watchdog_disarm();
	assert_int_equal(w.rv, CKR_OK);
	assert_int_equal(openssl_verify(ds, dpub, CKM_ECDSA_SHA256, w.sig, w.len), 1);
}

/* --- 6. keys never leave the device ----------------------------------------- */

/* One call of the shim's log: the function, the object it was about
 * ("object=0x..."), and the attribute types of its templates with their
 * CK_BBOOL values (-1: none logged). */
struct call_line {
	char fn[64];
	bool has_object;
	CK_OBJECT_HANDLE object;
	size_t n;
	CK_ATTRIBUTE_TYPE type[512];
	int value[512];
};

static void parse_call(const char *line, size_t len, struct call_line *c)
{
	char buf[8192];
	char *save = NULL;
	memset(c, 0, sizeof(*c));
	assert_true(len < sizeof(buf));
	memcpy(buf, line, len);
	buf[len] = '\0';
	char *word = strtok_r(buf, " ", &save);
	assert_non_null(word);
	snprintf(c->fn, sizeof(c->fn), "%s", word);
	while ((word = strtok_r(NULL, " ", &save))) {
		char *eq = strchr(word, '=');
		assert_non_null(eq);
		*eq = '\0';
		char *val = eq + 1;
		if (strcmp(word, "object") == 0) {
			c->has_object = true;
			c->object = strtoul(val, NULL, 16);
		} else if (strcmp(word, "template") == 0 || strcmp(word, "public") == 0 ||
			   strcmp(word, "private") == 0) {
			char *isave = NULL;
			for (char *item = strtok_r(val, ",", &isave); item;
			     item = strtok_r(NULL, ",", &isave)) {
				char *end;
				/* A template too long for the line ends in "...":
				 * what is left out is left unchecked, so fail. */
				assert_true(strcmp(item, "...") != 0);
				assert_true(c->n < FX_COUNT(c->type));
				c->type[c->n] = strtoul(item, &end, 16);
				c->value[c->n] = *end == '=' ? end[1] - '0' : -1;
				c->n++;
			}
		}
	}
}

static bool is_secret_part(CK_ATTRIBUTE_TYPE type)
{
	switch (type) {
	case CKA_VALUE:
	case CKA_PRIVATE_EXPONENT:
	case CKA_PRIME_1:
	case CKA_PRIME_2:
	case CKA_EXPONENT_1:
	case CKA_EXPONENT_2:
	case CKA_COEFFICIENT:
		return true;
	default:
		return false;
	}
}

static void test_keys_stay_on_device(void **state)
{
	CK_SESSION_HANDLE s = fixture_open_user_session(slot);
	CK_OBJECT_HANDLE ec_pub, ec_priv, rsa_pub, rsa_priv, aes, data;
	CK_MECHANISM aes_gen = { CKM_AES_KEY_GEN, NULL, 0 };
	CK_ULONG aes_len = 32;
	CK_ATTRIBUTE aes_t[] = {
		{ CKA_TOKEN, &fx_true, 1 },
		{ CKA_SENSITIVE, &fx_true, 1 },
		{ CKA_VALUE_LEN, &aes_len, sizeof(aes_len) },
		{ CKA_ENCRYPT, &fx_true, 1 },
		{ CKA_LABEL, "secret", 6 },
	};
	CK_OBJECT_CLASS data_class = CKO_DATA;
	CK_ATTRIBUTE data_t[] = {
		{ CKA_CLASS, &data_class, sizeof(data_class) },
		{ CKA_TOKEN, &fx_true, 1 },
		{ CKA_LABEL, "note", 4 },
		{ CKA_VALUE, "a public note", 13 },
	};

	device_keypair(s, CKM_EC_KEY_PAIR_GEN, "ec", &ec_pub, &ec_priv);
	device_keypair(s, CKM_RSA_PKCS_KEY_PAIR_GEN, "rsa", &rsa_pub, &rsa_priv);
	assert_int_equal(F->C_GenerateKey(s, &aes_gen, aes_t, FX_COUNT(aes_t), &aes), CKR_OK);
	assert_int_equal(F->C_CreateObject(s, data_t, FX_COUNT(data_t), &data), CKR_OK);
	const CK_OBJECT_HANDLE secret[] = { ec_priv, rsa_priv, aes };

	/* Listed, used. */
	CK_OBJECT_HANDLE all[32];
	CK_ULONG n = 0;
	assert_int_equal(F->C_FindObjectsInit(s, NULL, 0), CKR_OK);
	assert_int_equal(F->C_FindObjects(s, all, FX_COUNT(all), &n), CKR_OK);
	assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);
	assert_int_equal(n, 6);
	signs(s, CKM_ECDSA_SHA256, ec_priv, ec_pub);
	signs(s, CKM_SHA256_RSA_PKCS, rsa_priv, rsa_pub);

	/* Asked for, refused. */
	static const CK_ATTRIBUTE_TYPE rsa_parts[] = {
		CKA_PRIVATE_EXPONENT, CKA_PRIME_1, CKA_PRIME_2, CKA_EXPONENT_1, CKA_EXPONENT_2, CKA_COEFFICIENT,
	};
	CK_BYTE buf[1024];
	CK_ATTRIBUTE a = { CKA_VALUE, buf, sizeof(buf) };
	assert_int_equal(F->C_GetAttributeValue(s, ec_priv, &a, 1), CKR_ATTRIBUTE_SENSITIVE);
	assert_int_equal(a.ulValueLen, CK_UNAVAILABLE_INFORMATION);
	a = (CK_ATTRIBUTE){ CKA_VALUE, buf, sizeof(buf) };
	assert_int_equal(F->C_GetAttributeValue(s, aes, &a, 1), CKR_ATTRIBUTE_SENSITIVE);
	for (size_t i = 0; i < FX_COUNT(rsa_parts); i++) {
		a = (CK_ATTRIBUTE){ rsa_parts[i], buf, sizeof(buf) };
		assert_int_equal(F->C_GetAttributeValue(s, rsa_priv, &a, 1), CKR_ATTRIBUTE_SENSITIVE);
	}
	/* Not to be weakened either (only true -> false is allowed for
	 * CKA_EXTRACTABLE, only false -> true for CKA_SENSITIVE). */
	CK_ATTRIBUTE extractable = { CKA_EXTRACTABLE, &fx_true, 1 },
		     unsensitive = { CKA_SENSITIVE, &fx_false, 1 };
	for (size_t i = 0; i < FX_COUNT(secret); i++) {
		assert_int_equal(F->C_SetAttributeValue(s, secret[i], &extractable, 1),
				 CKR_ATTRIBUTE_READ_ONLY);
		assert_int_equal(F->C_SetAttributeValue(s, secret[i], &unsensitive, 1),
				 CKR_ATTRIBUTE_READ_ONLY);
		assert_false(fixture_get_bool(s, secret[i], CKA_EXTRACTABLE));
		assert_true(fixture_get_bool(s, secret[i], CKA_SENSITIVE));
		assert_true(fixture_get_bool(s, secret[i], CKA_NEVER_EXTRACTABLE));
	}
	CK_OBJECT_HANDLE copy;
	assert_int_not_equal(F->C_CopyObject(s, ec_priv, &extractable, 1, &copy), CKR_OK);
	CK_MECHANISM wrap = { CKM_AES_KEY_WRAP_PAD, NULL, 0 };
	CK_ULONG wrapped_len = sizeof(buf);
	assert_int_not_equal(F->C_WrapKey(s, &wrap, aes, ec_priv, buf, &wrapped_len), CKR_OK);

	/* The device itself says so too (asked directly, past koltamga and
	 * the shim: its handles are koltamga's for a device's objects). */
	void *dl;
	CK_FUNCTION_LIST_PTR hsm = loaded_module(FX_SOFTHSM_MODULE, &dl);
	CK_SLOT_ID hsm_slots[8];
	CK_ULONG hsm_n = FX_COUNT(hsm_slots);
	CK_SESSION_HANDLE hs = CK_INVALID_HANDLE;
	assert_int_equal(hsm->C_GetSlotList(CK_TRUE, hsm_slots, &hsm_n), CKR_OK);
	for (CK_ULONG i = 0; i < hsm_n && hs == CK_INVALID_HANDLE; i++) {
		CK_TOKEN_INFO ti;
		if (hsm->C_GetTokenInfo(hsm_slots[i], &ti) == CKR_OK && label_is(ti.label, "test"))
			assert_int_equal(
			    hsm->C_OpenSession(hsm_slots[i], CKF_SERIAL_SESSION, NULL, NULL, &hs), CKR_OK);
	}
	assert_int_not_equal(hs, CK_INVALID_HANDLE);
	for (size_t i = 0; i < FX_COUNT(secret); i++) {
		CK_BBOOL sens = CK_FALSE, ext = CK_TRUE, never = CK_FALSE;
		CK_ATTRIBUTE t[] = { { CKA_SENSITIVE, &sens, 1 },
				    { CKA_EXTRACTABLE, &ext, 1 },
				    { CKA_NEVER_EXTRACTABLE, &never, 1 } };
		assert_int_equal(hsm->C_GetAttributeValue(hs, secret[i], t, FX_COUNT(t)), CKR_OK);
		assert_true(sens && !ext && never);
	}
	assert_int_equal(hsm->C_CloseSession(hs), CKR_OK);
	dlclose(dl);

	/* And what koltamga asked of the device, call by call. */
	const char *log = hold(certfix_read(calls));
	int reads_of[3] = { 0 }, note_value_reads = 0;
	if (getenv("KT_DEVICE_TEST_SHOW_LOG"))
		fputs(log, stderr);
	for (const char *p = log; *p;) {
		const char *end = strchr(p, '\n');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		struct call_line c;
		parse_call(p, len, &c);
		if (strcmp(c.fn, "C_WrapKey") == 0)
			fail_msg("koltamga called C_WrapKey");
		for (size_t i = 0; i < c.n; i++) {
			if (c.type[i] == CKA_EXTRACTABLE && c.value[i] == 1)
				fail_msg("%s sent CKA_EXTRACTABLE=1 to the device", c.fn);
			if (c.type[i] == CKA_SENSITIVE && c.value[i] == 0)
				fail_msg("%s sent CKA_SENSITIVE=0 to the device", c.fn);
		}
		if (strcmp(c.fn, "C_GetAttributeValue") == 0) {
			assert_true(c.has_object);
			for (size_t k = 0; k < FX_COUNT(secret); k++) {
				if (c.object != secret[k])
					continue;
				reads_of[k]++;
				for (size_t i = 0; i < c.n; i++)
					if (is_secret_part(c.type[i]))
						fail_msg("koltamga asked the device for attribute 0x%lx of "
							 "key 0x%lx",
							 c.type[i], c.object);
			}
			for (size_t i = 0; i < c.n && c.object == data; i++)
				note_value_reads += c.type[i] == CKA_VALUE;
		}
		p += len + (end ? 1 : 0);
	}
	/* The parse saw what it checks: every key's public attributes read,
	 * and the data object's CKA_VALUE (not secret) asked for. */
	for (size_t k = 0; k < FX_COUNT(secret); k++)
		assert_true(reads_of[k] > 0);
	assert_true(note_value_reads > 0);
}

/* What the application asked for is what the device is told: a public key
 * that must not verify (CKA_VERIFY false) does not verify, on the device
 * or through koltamga. */
static void test_template_reaches_device(void **state)
{
	CK_SESSION_HANDLE s = fixture_open_user_session(slot);
	CK_OBJECT_HANDLE pub, priv;
	CK_ATTRIBUTE pt[] = {
		{ CKA_TOKEN, &fx_true, 1 },
		{ CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len },
		{ CKA_VERIFY, &fx_false, 1 },
		{ CKA_LABEL, "no-verify", 9 },
	};
	CK_ATTRIBUTE kt[] = { { CKA_TOKEN, &fx_true, 1 }, { CKA_LABEL, "no-verify", 9 } };
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };

	assert_int_equal(
	    fixture_gen_keypair(s, CKM_EC_KEY_PAIR_GEN, pt, FX_COUNT(pt), kt, FX_COUNT(kt), &pub, &priv),
	    CKR_OK);
	/* The device got CKA_VERIFY false in the public template. */
	const char *log = hold(certfix_read(calls));
	const char *line = strstr(log, "C_GenerateKeyPair public=");
	assert_non_null(line);
	const char *priv_part = strstr(line, " private=");
	assert_non_null(priv_part);
	struct call_line c;
	parse_call(line, (size_t)(priv_part - line), &c);
	int verify = -2;
	for (size_t i = 0; i < c.n; i++)
		if (c.type[i] == CKA_VERIFY)
			verify = c.value[i];
	if (verify != 0)
		fail_msg("CKA_VERIFY false did not reach the device: %.*s", (int)(priv_part - line), line);
	assert_false(fixture_get_bool(s, pub, CKA_VERIFY));
	assert_int_equal(F->C_VerifyInit(s, &m, pub), CKR_KEY_FUNCTION_NOT_PERMITTED);
}

/* --- the signer's confirmation for a key on the device -------------------- */

/* What the scripted signer (tests/pinentry/fake-confirm.sh) answers next:
 * 0 yes, 1 no. */
/* The scripted signer's answer, and the PIN it types when asked for one
 * (NULL: none). */
static void signer_answers_pin(int code, const char *pin)
{
	FILE *fp = fopen(answers, "w");
	assert_non_null(fp);
	fprintf(fp, "out=%s\ncode=%d\n", asked, code);
	if (pin)
		fprintf(fp, "pin=%s\n", pin);
	assert_int_equal(fclose(fp), 0);
}

static void signer_answers(int code)
{
	signer_answers_pin(code, NULL);
}

/* The device's keys are the signer's (sign_policy = confirm for the
 * [token]): each signature needs the signer's yes, asked by command. */
static int setup_confirm(void **state)
{
	const char *src = getenv("KOLTAMGA_SRCDIR");
	char srcdir[PATH_MAX];
	if (device_env(state) != 0 || !realpath(src && *src ? src : ".", srcdir))
		return -1;
	snprintf(answers, sizeof(answers), "%s/answers", fx.dir);
	snprintf(asked, sizeof(asked), "%s/asked", fx.dir);
	setenv("KT_FAKE_CONFIRM", answers, 1);
	signer_answers(0);
	FILE *fp = fopen(fx.conf, "w");
	if (!fp)
		return -1;
	fprintf(fp,
		"audit_log = %s\nconfirm = command\nconfirm_program = %s/tests/pinentry/fake-confirm.sh\n"
		"confirm_timeout = 20\n%ssign_policy = confirm\n",
		audit, srcdir, fx.conf_tail);
	if (fclose(fp) != 0 || fixture_initialize() != CKR_OK)
		return -1;
	slot = fixture_init_token();
	return 0;
}

static void test_confirm_key_on_device(void **state)
{
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	CK_SESSION_HANDLE s = fixture_open_user_session(slot);
	CK_OBJECT_HANDLE pub, priv;
	CK_BYTE sig[128];
	CK_ULONG len = sizeof(sig);

	device_keypair(s, CKM_EC_KEY_PAIR_GEN, "signer", &pub, &priv);
	/* A qualified key asks for its PIN at every use too. */
	assert_true(fixture_get_bool(s, priv, CKA_ALWAYS_AUTHENTICATE));
	/* The per-signature PIN given, and the signer says no: the device
	 * is not asked to sign. */
	signer_answers(1);
	int made = calls_of("C_Sign");
	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_OK);
	assert_int_equal(F->C_Login(s, CKU_CONTEXT_SPECIFIC, FX_PIN(FX_USER_PIN)), CKR_OK);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_FUNCTION_REJECTED);
	assert_int_equal(calls_of("C_Sign"), made);
	const char *text = hold(certfix_read(asked));
	assert_int_equal(certfix_count(text, "=== confirm"), 1);
	/* The per-signature PIN given, and the signer's yes: the device
	 * checks the PIN itself and signs. */
	signer_answers(0);
	int logins = calls_of("C_Login");
	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_OK);
	assert_int_equal(F->C_Login(s, CKU_CONTEXT_SPECIFIC, FX_PIN(FX_USER_PIN)), CKR_OK);
	assert_int_equal(calls_of("C_Login"), logins + 1);
	len = sizeof(sig);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_OK);
	assert_int_equal(calls_of("C_Sign"), made + 1);
	assert_int_equal(openssl_verify(s, pub, CKM_ECDSA_SHA256, sig, len), 1);
	text = hold(certfix_read(asked));
	assert_int_equal(certfix_count(text, "=== confirm"), 2);
	/* No per-signature PIN from the application (Java, NSS never send
	 * one): on a file token the dialog's yes stands in for it
	 * (test-activation.c), but this device checks the PIN itself, so the
	 * dialog asks for it: the command backend with "confirm-pin".  A yes
	 * without a PIN makes no signature, and the device is not asked. */
	len = sizeof(sig);
	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_OK);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_USER_NOT_LOGGED_IN);
	assert_int_equal(calls_of("C_Sign"), made + 1);
	text = hold(certfix_read(asked));
	assert_int_equal(certfix_count(text, "=== confirm-pin"), 1);
	/* A wrong PIN typed: the device refuses it, no signature. */
	signer_answers_pin(0, "0000");
	len = sizeof(sig);
	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_OK);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_USER_NOT_LOGGED_IN);
	assert_int_equal(calls_of("C_Sign"), made + 1);
	/* The yes and the right PIN: the device checks it and signs. */
	signer_answers_pin(0, FX_USER_PIN);
	signs(s, CKM_ECDSA_SHA256, priv, pub);
	assert_int_equal(calls_of("C_Sign"), made + 2);
	text = hold(certfix_read(asked));
	assert_int_equal(certfix_count(text, "=== confirm-pin"), 3);
	assert_int_equal(F->C_Finalize(NULL), CKR_OK); /* the audit records, written */
	text = hold(certfix_read(audit));
	assert_int_equal(certfix_count(text, "\"decision\":\"rejected\""), 1);
	assert_int_equal(certfix_count(text, "\"decision\":\"signed\""), 2);
	assert_int_equal(certfix_count(text, "\"decision\":\"refused\""), 2);
}

/* --- 7. configuration errors ---------------------------------------------- */

/* koltamga.conf with one device [token] of these lines; C_Initialize with
 * what it wrote on stderr in *err (free it).  A successful C_Initialize
 * stays initialised. */
static CK_RV init_with_token(const char *lines, char **err)
{
	FILE *fp = fopen(fx.conf, "w");
	assert_non_null(fp);
	fprintf(fp, "sign_policy = automatic\naudit_log = %s\n[token]\ndriver = pkcs11\n%s", audit, lines);
	assert_int_equal(fclose(fp), 0);
	certfix_stderr_begin();
	CK_RV rv = fixture_initialize();
	char *text = certfix_stderr_end();
	if (err)
		*err = text;
	else
		free(text);
	return rv;
}

/* C_Initialize fails with CKR_GENERAL_ERROR and one line naming `what`. */
static void refused(const char *lines, const char *what)
{
	char *err;
	CK_RV rv = init_with_token(lines, &err);
	hold(err);
	assert_int_equal(rv, CKR_GENERAL_ERROR);
	if (!strstr(err, what))
		fail_msg("stderr does not name \"%s\": %s", what, err);
	/* Nothing half-initialised stays behind. */
	CK_ULONG n;
	assert_int_equal(F->C_GetSlotList(CK_FALSE, NULL, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
}

static void test_configuration_errors(void **state)
{
	char lines[PATH_MAX + 128], path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/nonexistent.so", fx.dir);
	snprintf(lines, sizeof(lines), "module = %s\n", path);
	refused(lines, path);

	/* A file, but no shared object. */
	snprintf(path, sizeof(path), "%s/not-a-module.so", fx.dir);
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	fputs("this is a text file, not a PKCS#11 module\n", fp);
	assert_int_equal(fclose(fp), 0);
	snprintf(lines, sizeof(lines), "module = %s\n", path);
	refused(lines, path);

	/* A shared object, but no PKCS#11 module: OpenSSL's libcrypto. */
	Dl_info info;
	assert_true(dladdr((void *)EVP_sha256, &info) != 0 && info.dli_fname && info.dli_fname[0] == '/');
	snprintf(lines, sizeof(lines), "module = %s\n", info.dli_fname);
	refused(lines, "not a PKCS#11 module");

	refused("module = libsofthsm2.so\n", "module");
	refused("label = test\n", "no module");
	snprintf(lines, sizeof(lines), "module = %s\nuri = notauri\n", shim_path);
	refused(lines, "uri");
	snprintf(lines, sizeof(lines), "module = %s\nuri = pkcs11:token=%%4\n", shim_path);
	refused(lines, "uri");
	snprintf(lines, sizeof(lines), "module = %s\nlabel = 123456789012345678901234567890123\n", shim_path);
	refused(lines, "label");
	snprintf(lines, sizeof(lines), "module = %s\nserial = 12345678901234567\n", shim_path);
	refused(lines, "serial");

	/* A selector that matches nothing: a reader without the card. */
	snprintf(lines, sizeof(lines), "module = %s\nlabel = 12345678901234567890123456789012\n", shim_path);
	assert_int_equal(init_with_token(lines, NULL), CKR_OK);
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
	snprintf(lines, sizeof(lines), "module = %s\nlabel = nosuch\n", shim_path);
	assert_int_equal(init_with_token(lines, NULL), CKR_OK);
	CK_SLOT_ID slots[4];
	CK_ULONG n = FX_COUNT(slots);
	CK_TOKEN_INFO ti;
	CK_SESSION_HANDLE s;
	assert_int_equal(F->C_GetSlotList(CK_FALSE, slots, &n), CKR_OK);
	assert_int_equal(n, 1);
	assert_false(listed(CK_TRUE, slots[0]));
	CK_FLAGS flags = slot_flags(slots[0]);
	assert_false(flags & CKF_TOKEN_PRESENT);
	assert_true(flags & CKF_REMOVABLE_DEVICE);
	assert_int_equal(F->C_GetTokenInfo(slots[0], &ti), CKR_TOKEN_NOT_PRESENT);
	assert_int_equal(F->C_OpenSession(slots[0], CKF_SERIAL_SESSION, NULL, NULL, &s),
			 CKR_TOKEN_NOT_PRESENT);
}

/* --- 8. which token: label, serial, URI --------------------------------- */

#define PIN_A "1111aaaa"
#define PIN_B "2222bbbb"

/* Tokens "A" and "B" made in SoftHSM2 itself, before koltamga loads it;
 * their serials (blank-padded fields made C strings). */
static void two_tokens(char serial_a[17], char serial_b[17])
{
	void *dl = dlopen(FX_SOFTHSM_MODULE, RTLD_NOW | RTLD_LOCAL);
	assert_non_null(dl);
	CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
	CK_FUNCTION_LIST_PTR hsm = NULL;
	assert_non_null(get);
	assert_int_equal(get(&hsm), CKR_OK);
	CK_C_INITIALIZE_ARGS args = { .flags = CKF_OS_LOCKING_OK };
	const char *labels[] = { "A", "B" }, *pins[] = { PIN_A, PIN_B };
	char *serials[] = { serial_a, serial_b };
	for (int k = 0; k < 2; k++) {
		/* SoftHSM2 offers a new empty token only at its next
		 * C_Initialize. */
		assert_int_equal(hsm->C_Initialize(&args), CKR_OK);
		hsm_direct = hsm;
		CK_SLOT_ID slots[8], empty = (CK_SLOT_ID)-1;
		CK_ULONG n = FX_COUNT(slots);
		CK_TOKEN_INFO ti;
		assert_int_equal(hsm->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
		for (CK_ULONG i = 0; i < n; i++)
			if (hsm->C_GetTokenInfo(slots[i], &ti) == CKR_OK &&
			    !(ti.flags & CKF_TOKEN_INITIALIZED))
				empty = slots[i];
		assert_true(empty != (CK_SLOT_ID)-1);
		CK_UTF8CHAR label[32];
		memset(label, ' ', sizeof(label));
		label[0] = (CK_UTF8CHAR)labels[k][0];
		assert_int_equal(hsm->C_InitToken(empty, FX_PIN(FX_SO_PIN), label), CKR_OK);
		/* SoftHSM2 gives an initialised token a new slot id. */
		n = FX_COUNT(slots);
		assert_int_equal(hsm->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
		CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
		for (CK_ULONG i = 0; i < n && s == CK_INVALID_HANDLE; i++) {
			if (hsm->C_GetTokenInfo(slots[i], &ti) != CKR_OK || !label_is(ti.label, labels[k]))
				continue;
			size_t len = sizeof(ti.serialNumber);
			while (len && ti.serialNumber[len - 1] == ' ')
				len--;
			memcpy(serials[k], ti.serialNumber, len);
			serials[k][len] = '\0';
			assert_int_equal(
			    hsm->C_OpenSession(slots[i], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s),
			    CKR_OK);
		}
		assert_int_not_equal(s, CK_INVALID_HANDLE);
		assert_int_equal(hsm->C_Login(s, CKU_SO, FX_PIN(FX_SO_PIN)), CKR_OK);
		assert_int_equal(hsm->C_InitPIN(s, FX_PIN(pins[k])), CKR_OK);
		assert_int_equal(hsm->C_Logout(s), CKR_OK);
		assert_int_equal(hsm->C_CloseSession(s), CKR_OK);
		assert_int_equal(hsm->C_Finalize(NULL), CKR_OK);
		hsm_direct = NULL;
	}
	dlclose(dl);
	assert_true(serial_a[0] && serial_b[0] && strcmp(serial_a, serial_b) != 0);
}

/* Under this selection koltamga's one slot holds token `label` with
 * `serial`, and only that token's user PIN opens it; NULL: no token. */
static void selects(const char *selection, const char *label, const char *serial, const char *pin,
		    const char *other_pin)
{
	char lines[PATH_MAX + 256];
	CK_SLOT_ID slots[4];
	CK_ULONG n = FX_COUNT(slots);
	CK_TOKEN_INFO ti;
	snprintf(lines, sizeof(lines), "module = %s\n%s", shim_path, selection);
	char *err;
	CK_RV rv = init_with_token(lines, &err);
	hold(err);
	if (rv != CKR_OK)
		fail_msg("C_Initialize with \"%s\" = 0x%lx: %s", selection, rv, err);
	assert_int_equal(F->C_GetSlotList(CK_FALSE, slots, &n), CKR_OK);
	assert_int_equal(n, 1);
	if (!label) {
		assert_int_equal(F->C_GetTokenInfo(slots[0], &ti), CKR_TOKEN_NOT_PRESENT);
	} else {
		assert_int_equal(F->C_GetTokenInfo(slots[0], &ti), CKR_OK);
		if (!label_is(ti.label, label))
			fail_msg("\"%s\" picked %.32s, not %s", selection, (const char *)ti.label, label);
		assert_memory_equal(ti.serialNumber, serial, strlen(serial));
		CK_SESSION_HANDLE s = fixture_open_session(slots[0], false);
		assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(other_pin)), CKR_PIN_INCORRECT);
		assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(pin)), CKR_OK);
	}
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
}

static void test_token_selection(void **state)
{
	char a[17], b[17], sel[128];

	two_tokens(a, b);
	selects("label = B\n", "B", b, PIN_B, PIN_A);
	selects("label = A\n", "A", a, PIN_A, PIN_B);
	snprintf(sel, sizeof(sel), "serial = %s\n", b);
	selects(sel, "B", b, PIN_B, PIN_A);
	selects("uri = pkcs11:token=B\n", "B", b, PIN_B, PIN_A);
	selects("uri = pkcs11:token=%42\n", "B", b, PIN_B, PIN_A);
	snprintf(sel, sizeof(sel), "uri = pkcs11:serial=%s\n", a);
	selects(sel, "A", a, PIN_A, PIN_B);
	/* Everything given must match. */
	snprintf(sel, sizeof(sel), "label = A\nserial = %s\n", b);
	selects(sel, NULL, NULL, NULL, NULL);
	/* RFC 7512 separates path attributes with ';'. */
	selects("uri = pkcs11:manufacturer=SoftHSM%20project;token=B\n", "B", b, PIN_B, PIN_A);
	selects("uri = pkcs11:token=B;manufacturer=Nobody\n", NULL, NULL, NULL, NULL);
}

/* --- a reader's PIN pad ------------------------------------------------------ */

static void test_pinpad_login(void **state)
{
	CK_TOKEN_INFO ti;
	assert_int_equal(F->C_GetTokenInfo(slot, &ti), CKR_OK);
	assert_true(ti.flags & CKF_PROTECTED_AUTHENTICATION_PATH);
	CK_SESSION_HANDLE s = fixture_open_session(slot, true);
	int logins = calls_of("C_Login");
	/* The holder types the PIN on the pad: no PIN from the application. */
	assert_int_equal(F->C_Login(s, CKU_USER, NULL, 0), CKR_OK);
	assert_int_equal(calls_of("C_Login"), logins + 1);
	assert_int_equal(state_of(s), CKS_RW_USER_FUNCTIONS);
	CK_OBJECT_HANDLE pub, priv;
	device_keypair(s, CKM_EC_KEY_PAIR_GEN, "pinpad", &pub, &priv);
	signs(s, CKM_ECDSA_SHA256, priv, pub);
	assert_int_equal(F->C_Logout(s), CKR_OK);
	/* A wrong PIN typed, the pad cancelled: the device's answers. */
	setenv("KT_SHIM_PINPAD_PIN", "98765", 1);
	assert_int_equal(F->C_Login(s, CKU_USER, NULL, 0), CKR_PIN_INCORRECT);
	unsetenv("KT_SHIM_PINPAD_PIN");
	assert_int_equal(F->C_Login(s, CKU_USER, NULL, 0), CKR_FUNCTION_CANCELED);
	assert_int_equal(state_of(s), CKS_RW_PUBLIC_SESSION);
	/* A PIN given anyway is used. */
	assert_int_equal(F->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN)), CKR_OK);
}

static void test_no_pinpad_needs_pin(void **state)
{
	CK_TOKEN_INFO ti;
	assert_int_equal(F->C_GetTokenInfo(slot, &ti), CKR_OK);
	assert_false(ti.flags & CKF_PROTECTED_AUTHENTICATION_PATH);
	CK_SESSION_HANDLE s = fixture_open_session(slot, true);
	int logins = calls_of("C_Login");
	assert_int_equal(F->C_Login(s, CKU_USER, NULL, 0), CKR_ARGUMENTS_BAD);
	/* Refused by koltamga: the device never saw it. */
	assert_int_equal(calls_of("C_Login"), logins);
	assert_int_equal(state_of(s), CKS_RW_PUBLIC_SESSION);
}

int main(void)
{
	if (access(FX_SOFTHSM_MODULE, R_OK) != 0) {
		const char *ci = getenv("CI");
		printf("test-device: %s is not installed\n", FX_SOFTHSM_MODULE);
		return ci && *ci ? 1 : 77;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_removal_mid_session, setup, teardown),
		cmocka_unit_test_setup_teardown(test_removal_mid_multipart_hashed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_removal_mid_multipart_streamed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pulled_and_put_back, setup, teardown),
		cmocka_unit_test_setup_teardown(test_device_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_device_lost_its_session, setup, teardown),
		cmocka_unit_test_setup_teardown(test_slow_device, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hung_device_spares_file_token, setup_with_file_token, teardown),
		cmocka_unit_test_setup_teardown(test_keys_stay_on_device, setup, teardown),
		cmocka_unit_test_setup_teardown(test_template_reaches_device, setup, teardown),
		cmocka_unit_test_setup_teardown(test_confirm_key_on_device, setup_confirm, teardown),
		cmocka_unit_test_setup_teardown(test_storage_gone, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rename_keeps_policy, setup_keeper, teardown),
		cmocka_unit_test_setup_teardown(test_mark_follows_key, setup_marks, teardown),
		cmocka_unit_test_setup_teardown(test_so_login_after_signing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_slot_events, setup, teardown),
		cmocka_unit_test_setup_teardown(test_context_login_without_device_operation, setup, teardown),
		cmocka_unit_test_setup_teardown(test_configuration_errors, device_env, teardown),
		cmocka_unit_test_setup_teardown(test_token_selection, device_env, teardown),
		cmocka_unit_test_setup_teardown(test_pinpad_login, setup_pinpad, teardown),
		cmocka_unit_test_setup_teardown(test_no_pinpad_needs_pin, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
