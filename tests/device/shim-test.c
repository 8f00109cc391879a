/*
 * tests/device/shim-test.c: checks the device shim (tests/device/shim.c)
 * in front of SoftHSM2: that it forwards, and that every fault it injects
 * looks as a token driver's tests will rely on.  It makes its own SoftHSM2
 * token in a temporary directory (no softhsm2-util needed) and loads the
 * shim with dlopen, as the driver will.
 *
 * Environment: KT_SHIM_PATH (the shim), else KOLTAMGA_BUILDDIR (or ".")
 * plus tests/device/.libs/libktshim.so; TMPDIR; CI; KT_SHIM_TEST_SHOW_LOG
 * (set: print the shim's call log at the end).
 *
 * Exit 0 when every check passed, 1 at the first that did not (the message
 * names it), 77 when SoftHSM2 is not installed, unless CI is set: there a
 * missing SoftHSM2 is a failure.  Lines starting "note:" record what
 * SoftHSM2 itself does; they are never failures.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define SOFTHSM "/usr/lib/softhsm/libsofthsm2.so"
#define SO_PIN "so-pin-7c1e95"
#define USER_PIN "user-pin-3fa08d"
#define TOKEN_LABEL "kt-shim-test"
#define KEY_LABEL "kt-shim-key-b71d"
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static CK_FUNCTION_LIST_PTR F;
static void *shim_dl;
static char dir[PATH_MAX];
static char control_path[PATH_MAX + 32];
static char log_path[PATH_MAX + 32];
static int checks;

static CK_BBOOL yes = CK_TRUE;
static CK_BBOOL no = CK_FALSE;
static const CK_BYTE p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };

/* --- reporting ---------------------------------------------------------- */

static const char *rv_name(CK_RV rv)
{
	static const struct {
		CK_RV rv;
		const char *name;
	} names[] = {
		{ CKR_OK, "CKR_OK" },
		{ CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR" },
		{ CKR_FUNCTION_FAILED, "CKR_FUNCTION_FAILED" },
		{ CKR_ARGUMENTS_BAD, "CKR_ARGUMENTS_BAD" },
		{ CKR_NO_EVENT, "CKR_NO_EVENT" },
		{ CKR_ATTRIBUTE_SENSITIVE, "CKR_ATTRIBUTE_SENSITIVE" },
		{ CKR_ATTRIBUTE_TYPE_INVALID, "CKR_ATTRIBUTE_TYPE_INVALID" },
		{ CKR_ATTRIBUTE_VALUE_INVALID, "CKR_ATTRIBUTE_VALUE_INVALID" },
		{ CKR_DATA_LEN_RANGE, "CKR_DATA_LEN_RANGE" },
		{ CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR" },
		{ CKR_DEVICE_REMOVED, "CKR_DEVICE_REMOVED" },
		{ CKR_FUNCTION_NOT_SUPPORTED, "CKR_FUNCTION_NOT_SUPPORTED" },
		{ CKR_KEY_TYPE_INCONSISTENT, "CKR_KEY_TYPE_INCONSISTENT" },
		{ CKR_MECHANISM_INVALID, "CKR_MECHANISM_INVALID" },
		{ CKR_OPERATION_ACTIVE, "CKR_OPERATION_ACTIVE" },
		{ CKR_OPERATION_NOT_INITIALIZED, "CKR_OPERATION_NOT_INITIALIZED" },
		{ CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT" },
		{ CKR_PIN_LOCKED, "CKR_PIN_LOCKED" },
		{ CKR_FUNCTION_CANCELED, "CKR_FUNCTION_CANCELED" },
		{ CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID" },
		{ CKR_SIGNATURE_INVALID, "CKR_SIGNATURE_INVALID" },
		{ CKR_SIGNATURE_LEN_RANGE, "CKR_SIGNATURE_LEN_RANGE" },
		{ CKR_SLOT_ID_INVALID, "CKR_SLOT_ID_INVALID" },
		{ CKR_TEMPLATE_INCONSISTENT, "CKR_TEMPLATE_INCONSISTENT" },
		{ CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT" },
		{ CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN" },
		{ CKR_USER_ALREADY_LOGGED_IN, "CKR_USER_ALREADY_LOGGED_IN" },
		{ CKR_CRYPTOKI_NOT_INITIALIZED, "CKR_CRYPTOKI_NOT_INITIALIZED" },
		{ CKR_CRYPTOKI_ALREADY_INITIALIZED, "CKR_CRYPTOKI_ALREADY_INITIALIZED" },
	};
	size_t i;

	for (i = 0; i < COUNT(names); i++)
		if (names[i].rv == rv)
			return names[i].name;
	return "?";
}

__attribute__((format(printf, 2, 3), noreturn)) static void fail_at(int line, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "shim-test: FAIL (shim-test.c:%d): ", line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

#define CHECK(cond, ...)                            \
	do {                                        \
		if (!(cond))                        \
			fail_at(__LINE__, __VA_ARGS__); \
		checks++;                           \
	} while (0)

#define CHECK_RV(call, want)                                                                                \
	do {                                                                                                \
		CK_RV rv_ = (call);                                                                         \
		CK_RV want_ = (want);                                                                       \
		if (rv_ != want_)                                                                           \
			fail_at(__LINE__, "%s returned %s (0x%lx), expected %s (0x%lx)", #call, rv_name(rv_), \
				rv_, rv_name(want_), want_);                                                \
		checks++;                                                                                   \
	} while (0)

static void step(const char *what)
{
	printf("# %s\n", what);
	fflush(stdout);
}

__attribute__((format(printf, 1, 2))) static void note(const char *fmt, ...)
{
	va_list ap;

	fputs("note: ", stdout);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	fflush(stdout);
}

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

/* --- files -------------------------------------------------------------- */

static void write_file(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");

	CHECK(fp, "cannot create %s: %s", path, strerror(errno));
	fputs(text, fp);
	CHECK(fclose(fp) == 0, "cannot write %s: %s", path, strerror(errno));
}

/* Replaced with rename(), so that the shim never reads half a file. */
static void control(const char *text)
{
	char tmp[sizeof(control_path) + 8];

	if (!text) {
		CHECK(unlink(control_path) == 0 || errno == ENOENT, "unlink %s: %s", control_path, strerror(errno));
		return;
	}
	snprintf(tmp, sizeof(tmp), "%s.new", control_path);
	write_file(tmp, text);
	CHECK(rename(tmp, control_path) == 0, "rename to %s: %s", control_path, strerror(errno));
}

static char *read_file(const char *path)
{
	FILE *fp = fopen(path, "r");
	char *buf = NULL;
	size_t size = 0, len = 0, n;

	CHECK(fp, "cannot open %s: %s", path, strerror(errno));
	do {
		if (len + 4096 + 1 > size) {
			size = size * 2 + 4096 + 1;
			buf = realloc(buf, size);
			CHECK(buf, "out of memory");
		}
		n = fread(buf + len, 1, size - len - 1, fp);
		len += n;
	} while (n > 0);
	fclose(fp);
	buf[len] = '\0';
	return buf;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)type;
	(void)ftw;
	if (remove(path) != 0)
		fprintf(stderr, "shim-test: cannot remove %s: %s\n", path, strerror(errno));
	return 0;
}

static void remove_dir(void)
{
	if (dir[0])
		nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void make_softhsm_dir(void)
{
	const char *tmp = getenv("TMPDIR");
	char path[PATH_MAX + 32], text[2 * PATH_MAX];

	if (!tmp || !*tmp)
		tmp = "/tmp";
	snprintf(dir, sizeof(dir), "%s/kt-shim-test-XXXXXX", tmp);
	CHECK(mkdtemp(dir), "mkdtemp %s: %s", dir, strerror(errno));
	atexit(remove_dir);

	snprintf(path, sizeof(path), "%s/tokens", dir);
	CHECK(mkdir(path, 0700) == 0, "mkdir %s: %s", path, strerror(errno));
	snprintf(text, sizeof(text),
		 "directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n", dir);
	snprintf(path, sizeof(path), "%s/softhsm2.conf", dir);
	write_file(path, text);
	setenv("SOFTHSM2_CONF", path, 1);

	snprintf(control_path, sizeof(control_path), "%s/control", dir);
	snprintf(log_path, sizeof(log_path), "%s/calls.log", dir);
	setenv("KT_SHIM_CONTROL", control_path, 1);
	setenv("KT_SHIM_LOG", log_path, 1);
}

/* --- PKCS#11 helpers ---------------------------------------------------- */

static CK_ULONG slot_count(CK_BBOOL present)
{
	CK_ULONG n = 0;

	CHECK_RV(F->C_GetSlotList(present, NULL, &n), CKR_OK);
	return n;
}

static bool token_label_is(CK_SLOT_ID slot, const char *label)
{
	CK_TOKEN_INFO info;
	size_t len = strlen(label);

	if (F->C_GetTokenInfo(slot, &info) != CKR_OK)
		return false;
	return memcmp(info.label, label, len) == 0 && info.label[len] == ' ';
}

/* SoftHSM2 gives an initialised token another slot id at the next
 * C_Initialize: look it up by label. */
static CK_SLOT_ID find_token(void)
{
	CK_SLOT_ID slots[16];
	CK_ULONG n = COUNT(slots), i;

	CHECK_RV(F->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
	for (i = 0; i < n; i++)
		if (token_label_is(slots[i], TOKEN_LABEL))
			return slots[i];
	fail_at(__LINE__, "no token labelled %s", TOKEN_LABEL);
}

static CK_SESSION_HANDLE open_session(CK_SLOT_ID slot)
{
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;

	CHECK_RV(F->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
	return s;
}

static CK_ULONG find_objects(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *out)
{
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_LABEL, KEY_LABEL, strlen(KEY_LABEL) },
	};
	CK_OBJECT_HANDLE found[4];
	CK_ULONG n = 0;

	CHECK_RV(F->C_FindObjectsInit(s, tmpl, COUNT(tmpl)), CKR_OK);
	CHECK_RV(F->C_FindObjects(s, found, COUNT(found), &n), CKR_OK);
	CHECK_RV(F->C_FindObjectsFinal(s), CKR_OK);
	if (n > 0 && out)
		*out = found[0];
	return n;
}

static void generate_ec_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
	CK_MECHANISM mech = { CKM_EC_KEY_PAIR_GEN, NULL, 0 };
	CK_BYTE id[] = { 0x4b, 0x54, 0x01 };
	CK_ATTRIBUTE pub_tmpl[] = {
		{ CKA_TOKEN, &yes, sizeof(yes) },
		{ CKA_EC_PARAMS, (void *)p256, sizeof(p256) },
		{ CKA_VERIFY, &yes, sizeof(yes) },
		{ CKA_LABEL, KEY_LABEL, strlen(KEY_LABEL) },
		{ CKA_ID, id, sizeof(id) },
	};
	CK_ATTRIBUTE priv_tmpl[] = {
		{ CKA_TOKEN, &yes, sizeof(yes) },   { CKA_PRIVATE, &yes, sizeof(yes) },
		{ CKA_SENSITIVE, &yes, sizeof(yes) }, { CKA_EXTRACTABLE, &no, sizeof(no) },
		{ CKA_SIGN, &yes, sizeof(yes) },    { CKA_LABEL, KEY_LABEL, strlen(KEY_LABEL) },
		{ CKA_ID, id, sizeof(id) },
	};

	CHECK_RV(F->C_GenerateKeyPair(s, &mech, pub_tmpl, COUNT(pub_tmpl), priv_tmpl, COUNT(priv_tmpl), pub, priv),
		 CKR_OK);
}

/* A session RSA key pair: SoftHSM2 2.6 has no hash-and-sign ECDSA
 * mechanism, so multi-part signing needs RSA. */
static void generate_rsa_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
	CK_MECHANISM mech = { CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0 };
	CK_ULONG bits = 2048;
	CK_BYTE e[] = { 0x01, 0x00, 0x01 };
	CK_ATTRIBUTE pub_tmpl[] = {
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_MODULUS_BITS, &bits, sizeof(bits) },
		{ CKA_PUBLIC_EXPONENT, e, sizeof(e) },
		{ CKA_VERIFY, &yes, sizeof(yes) },
	};
	CK_ATTRIBUTE priv_tmpl[] = {
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_SENSITIVE, &yes, sizeof(yes) },
		{ CKA_SIGN, &yes, sizeof(yes) },
	};

	CHECK_RV(F->C_GenerateKeyPair(s, &mech, pub_tmpl, COUNT(pub_tmpl), priv_tmpl, COUNT(priv_tmpl), pub, priv),
		 CKR_OK);
}

static const CK_BYTE hash[32] = "shim-test: a SHA-256 sized hash";

static CK_RV try_sign(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv, CK_BYTE *sig, CK_ULONG *sig_len)
{
	CK_MECHANISM mech = { CKM_ECDSA, NULL, 0 };
	CK_RV rv = F->C_SignInit(s, &mech, priv);

	if (rv != CKR_OK)
		return rv;
	return F->C_Sign(s, (CK_BYTE_PTR)hash, sizeof(hash), sig, sig_len);
}

/* A signature made and verified, and a spoiled one refused. */
static void sign_and_verify(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv, CK_OBJECT_HANDLE pub)
{
	CK_MECHANISM mech = { CKM_ECDSA, NULL, 0 };
	CK_BYTE sig[128];
	CK_ULONG sig_len = sizeof(sig);

	CHECK_RV(try_sign(s, priv, sig, &sig_len), CKR_OK);
	CHECK(sig_len == 64, "a P-256 signature is 64 bytes, not %lu", sig_len);
	CHECK_RV(F->C_VerifyInit(s, &mech, pub), CKR_OK);
	CHECK_RV(F->C_Verify(s, (CK_BYTE_PTR)hash, sizeof(hash), sig, sig_len), CKR_OK);
	sig[10] ^= 0x01;
	CHECK_RV(F->C_VerifyInit(s, &mech, pub), CKR_OK);
	CHECK_RV(F->C_Verify(s, (CK_BYTE_PTR)hash, sizeof(hash), sig, sig_len), CKR_SIGNATURE_INVALID);
}

static CK_STATE session_state(CK_SESSION_HANDLE s)
{
	CK_SESSION_INFO info;

	CHECK_RV(F->C_GetSessionInfo(s, &info), CKR_OK);
	return info.state;
}

/* A call run in a thread, to watch it block; joined with a time limit so a
 * broken shim fails the test instead of hanging it. */
struct watched {
	pthread_t thread;
	CK_RV (*call)(void);
	CK_RV rv;
	double ms;
	atomic_bool done;
};

static void *watched_run(void *arg)
{
	struct watched *w = arg;
	double t0 = now_ms();

	w->rv = w->call();
	w->ms = now_ms() - t0;
	atomic_store(&w->done, true);
	return NULL;
}

static void watch_start(struct watched *w, CK_RV (*call)(void))
{
	w->call = call;
	atomic_store(&w->done, false);
	CHECK(pthread_create(&w->thread, NULL, watched_run, w) == 0, "pthread_create");
}

static void watch_join(struct watched *w, int limit_s, const char *what)
{
	struct timespec limit;

	clock_gettime(CLOCK_REALTIME, &limit);
	limit.tv_sec += limit_s;
	CHECK(pthread_timedjoin_np(w->thread, NULL, &limit) == 0, "%s did not return within %d s", what, limit_s);
}

static CK_RV call_get_info(void)
{
	CK_INFO info;

	return F->C_GetInfo(&info);
}

static CK_RV call_get_function_list(void)
{
	CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(shim_dl, "C_GetFunctionList");
	CK_FUNCTION_LIST_PTR list = NULL;

	return get(&list);
}

/* --- the checks --------------------------------------------------------- */

static CK_C_GetFunctionList load_shim(void)
{
	const char *path = getenv("KT_SHIM_PATH");
	const char *builddir = getenv("KOLTAMGA_BUILDDIR");
	char buf[PATH_MAX + 64];
	void *get;

	if (!path || !*path) {
		snprintf(buf, sizeof(buf), "%s/tests/device/.libs/libktshim.so",
			 builddir && *builddir ? builddir : ".");
		path = buf;
	}
	shim_dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	CHECK(shim_dl, "dlopen %s: %s", path, dlerror());
	get = dlsym(shim_dl, "C_GetFunctionList");
	CHECK(get, "the shim does not export C_GetFunctionList");
	CHECK(!dlsym(shim_dl, "C_Initialize") && !dlsym(shim_dl, "enter") && !dlsym(shim_dl, "real"),
	      "the shim exports more than C_GetFunctionList");
	return (CK_C_GetFunctionList)get;
}

static void check_function_list(void)
{
	CK_VOID_PTR *fn = (CK_VOID_PTR *)&F->C_Initialize;
	size_t i, n = (sizeof(*F) - offsetof(CK_FUNCTION_LIST, C_Initialize)) / sizeof(CK_VOID_PTR);

	CHECK(F->version.major == 2 && F->version.minor == 40, "function list version %d.%d", F->version.major,
	      F->version.minor);
	CHECK(n == 68, "the 2.40 function list has 68 functions, not %zu", n);
	for (i = 0; i < n; i++)
		CHECK(fn[i], "function %zu of the list is NULL", i);
}

static void check_load_failure(CK_C_GetFunctionList get)
{
	char bad[PATH_MAX + 32];

	step("a module that cannot be loaded: C_Initialize fails, nothing crashes");
	snprintf(bad, sizeof(bad), "%s/no-such-module.so", dir);
	setenv("KT_SHIM_MODULE", bad, 1);
	printf("# (a \"ktshim: cannot load\" message or two is expected here)\n");
	fflush(stdout);
	CHECK_RV(get(&F), CKR_OK);
	check_function_list();
	CHECK_RV(F->C_Initialize(NULL), CKR_GENERAL_ERROR);
	CHECK_RV(call_get_info(), CKR_CRYPTOKI_NOT_INITIALIZED);
	CHECK_RV(F->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
	unsetenv("KT_SHIM_MODULE"); /* from here on the default, SoftHSM2 */
}

static CK_SLOT_ID init_token(void)
{
	CK_SLOT_ID slots[16];
	CK_ULONG n = COUNT(slots);
	CK_UTF8CHAR label[32];
	CK_SESSION_HANDLE s;
	CK_SLOT_ID slot;

	step("a token made through the shim (C_InitToken, C_InitPIN)");
	CHECK_RV(F->C_GetSlotList(CK_FALSE, slots, &n), CKR_OK);
	CHECK(n >= 1, "SoftHSM2 shows no slot");
	memset(label, ' ', sizeof(label));
	memcpy(label, TOKEN_LABEL, strlen(TOKEN_LABEL));
	CHECK_RV(F->C_InitToken(slots[0], (CK_UTF8CHAR_PTR)SO_PIN, strlen(SO_PIN), label), CKR_OK);
	slot = find_token();
	note("SoftHSM2 slot id of the new token: before C_InitToken %lu, after %lu", slots[0], slot);

	s = open_session(slot);
	CHECK_RV(F->C_Login(s, CKU_SO, (CK_UTF8CHAR_PTR)SO_PIN, strlen(SO_PIN)), CKR_OK);
	CHECK_RV(F->C_InitPIN(s, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN)), CKR_OK);
	CHECK_RV(F->C_Logout(s), CKR_OK);
	CHECK_RV(F->C_CloseSession(s), CKR_OK);
	return slot;
}

static void check_forwarding(CK_SLOT_ID slot, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
	CK_SLOT_INFO si;
	CK_INFO info;

	step("forwarding: login, EC P-256 key pair, ECDSA sign and verify");
	CHECK_RV(F->C_GetInfo(&info), CKR_OK);
	CHECK(memcmp(info.manufacturerID, "SoftHSM", 7) == 0, "C_GetInfo is not SoftHSM2's");
	CHECK_RV(F->C_GetSlotInfo(slot, &si), CKR_OK);
	CHECK(si.flags & CKF_TOKEN_PRESENT, "token not present");
	CHECK(si.flags & CKF_REMOVABLE_DEVICE, "the shim's slot must say CKF_REMOVABLE_DEVICE");
	CHECK_RV(F->C_GetSlotInfo(0xdeadbeef, &si), CKR_SLOT_ID_INVALID);

	CHECK_RV(F->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) "wrong-pin", 9), CKR_PIN_INCORRECT);
	CHECK(session_state(s) == CKS_RW_PUBLIC_SESSION, "not a public session before login");
	CHECK_RV(F->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN)), CKR_OK);
	CHECK(session_state(s) == CKS_RW_USER_FUNCTIONS, "not a user session after login");
	generate_ec_key(s, pub, priv);
	sign_and_verify(s, *priv, *pub);
}

static void check_fail(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv, CK_OBJECT_HANDLE pub)
{
	CK_MECHANISM rsa_sha256 = { CKM_SHA256_RSA_PKCS, NULL, 0 };
	CK_MECHANISM sha256 = { CKM_SHA256, NULL, 0 };
	CK_MECHANISM ecdsa = { CKM_ECDSA, NULL, 0 };
	CK_OBJECT_HANDLE rsa_pub, rsa_priv;
	CK_BYTE sig[512];
	CK_ULONG sig_len = sizeof(sig);

	step("fail: C_Sign answers the injected CK_RV, then signs again once the line is gone");
	control("fail C_Sign 0x30\nsome line the shim does not know\nfail C_Logout 164\n");
	CHECK_RV(try_sign(s, priv, sig, &sig_len), CKR_DEVICE_ERROR);
	CHECK_RV(F->C_Logout(s), CKR_PIN_LOCKED); /* decimal 164 = 0xA4 */
	CHECK(session_state(s) == CKS_RW_USER_FUNCTIONS, "an injected failure was forwarded");
	control(NULL);
	/* The failed C_Sign ended the operation in SoftHSM2 too: no
	 * CKR_OPERATION_ACTIVE here. */
	sign_and_verify(s, priv, pub);

	step("fail: multi-part C_SignFinal, C_DigestFinal and a C_Verify end their operations too");
	generate_rsa_key(s, &rsa_pub, &rsa_priv);
	control("fail C_SignFinal 0x30\nfail C_DigestFinal 0x30\nfail C_Verify 0x30\n");
	CHECK_RV(F->C_SignInit(s, &rsa_sha256, rsa_priv), CKR_OK);
	CHECK_RV(F->C_SignUpdate(s, (CK_BYTE_PTR)hash, sizeof(hash)), CKR_OK);
	CHECK_RV(F->C_SignFinal(s, sig, &sig_len), CKR_DEVICE_ERROR);
	CHECK_RV(F->C_DigestInit(s, &sha256), CKR_OK);
	CHECK_RV(F->C_DigestUpdate(s, (CK_BYTE_PTR)hash, sizeof(hash)), CKR_OK);
	CHECK_RV(F->C_DigestFinal(s, sig, &sig_len), CKR_DEVICE_ERROR);
	CHECK_RV(F->C_VerifyInit(s, &ecdsa, pub), CKR_OK);
	CHECK_RV(F->C_Verify(s, (CK_BYTE_PTR)hash, sizeof(hash), sig, 64), CKR_DEVICE_ERROR);
	control(NULL);
	sig_len = sizeof(sig);
	CHECK_RV(F->C_SignInit(s, &rsa_sha256, rsa_priv), CKR_OK);
	CHECK_RV(F->C_SignUpdate(s, (CK_BYTE_PTR)hash, sizeof(hash)), CKR_OK);
	CHECK_RV(F->C_SignFinal(s, sig, &sig_len), CKR_OK);
	CHECK_RV(F->C_VerifyInit(s, &rsa_sha256, rsa_pub), CKR_OK);
	CHECK_RV(F->C_Verify(s, (CK_BYTE_PTR)hash, sizeof(hash), sig, sig_len), CKR_OK);
	sig_len = sizeof(sig);
	CHECK_RV(F->C_DigestInit(s, &sha256), CKR_OK);
	CHECK_RV(F->C_DigestUpdate(s, (CK_BYTE_PTR)hash, sizeof(hash)), CKR_OK);
	CHECK_RV(F->C_DigestFinal(s, sig, &sig_len), CKR_OK);
	CHECK(sig_len == 32, "SHA-256 gives 32 bytes, not %lu", sig_len);
	sign_and_verify(s, priv, pub);
}

static CK_FLAGS token_flags(CK_SLOT_ID slot)
{
	CK_TOKEN_INFO info;

	CHECK_RV(F->C_GetTokenInfo(slot, &info), CKR_OK);
	return info.flags;
}

static void check_pinpad(CK_SLOT_ID slot, CK_SESSION_HANDLE s)
{
	step("pinpad: CKF_PROTECTED_AUTHENTICATION_PATH, and a NULL PIN typed on the pad");
	CHECK(!(token_flags(slot) & CKF_PROTECTED_AUTHENTICATION_PATH), "a PIN pad without the pinpad line");
	CHECK_RV(F->C_Logout(s), CKR_OK);
	control("pinpad\n");
	CHECK(token_flags(slot) & CKF_PROTECTED_AUTHENTICATION_PATH, "no CKF_PROTECTED_AUTHENTICATION_PATH");
	unsetenv("KT_SHIM_PINPAD_PIN");
	CHECK_RV(F->C_Login(s, CKU_USER, NULL, 0), CKR_FUNCTION_CANCELED);
	setenv("KT_SHIM_PINPAD_PIN", "wrong-pin", 1);
	CHECK_RV(F->C_Login(s, CKU_USER, NULL, 0), CKR_PIN_INCORRECT);
	CHECK(session_state(s) == CKS_RW_PUBLIC_SESSION, "logged in with a wrong PIN from the pad");
	setenv("KT_SHIM_PINPAD_PIN", USER_PIN, 1);
	CHECK_RV(F->C_Login(s, CKU_USER, NULL, 0), CKR_OK);
	CHECK(session_state(s) == CKS_RW_USER_FUNCTIONS, "not a user session after a PIN pad login");
	CHECK_RV(F->C_Logout(s), CKR_OK);
	/* A PIN given with a PIN pad present is the application's. */
	CHECK_RV(F->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) "wrong-pin", 9), CKR_PIN_INCORRECT);
	CHECK_RV(F->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN)), CKR_OK);
	control(NULL);
	unsetenv("KT_SHIM_PINPAD_PIN");
	CHECK(!(token_flags(slot) & CKF_PROTECTED_AUTHENTICATION_PATH), "the PIN pad stayed");
}

static void check_delay_and_hang(void)
{
	struct watched w, list;
	double t0, ms;

	step("delay_ms 200: a call takes at least 200 ms");
	control("delay_ms 200\n");
	t0 = now_ms();
	CHECK_RV(call_get_info(), CKR_OK);
	ms = now_ms() - t0;
	CHECK(ms >= 200.0, "C_GetInfo took %.1f ms under delay_ms 200", ms);
	control(NULL);

	step("hang: a call blocks until the line is removed; C_GetFunctionList does not");
	control("hang\n");
	watch_start(&w, call_get_info);
	watch_start(&list, call_get_function_list);
	watch_join(&list, 5, "C_GetFunctionList under hang");
	CHECK_RV(list.rv, CKR_OK);
	sleep_ms(300);
	CHECK(!atomic_load(&w.done), "C_GetInfo returned under hang");
	control(NULL);
	watch_join(&w, 10, "C_GetInfo after hang was removed");
	CHECK_RV(w.rv, CKR_OK);
	CHECK(w.ms >= 300.0, "the hanging call took only %.1f ms", w.ms);
}

static void check_removed(CK_SLOT_ID slot, CK_SESSION_HANDLE *s, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
	CK_ULONG present = slot_count(CK_TRUE), all = slot_count(CK_FALSE), n;
	CK_MECHANISM mech = { CKM_ECDSA, NULL, 0 };
	CK_SESSION_HANDLE old = *s, s2;
	CK_TOKEN_INFO ti;
	CK_SLOT_INFO si;
	CK_SLOT_ID ev;
	CK_BYTE sig[128];
	CK_ULONG sig_len = sizeof(sig);

	step("removed: the token is gone");
	CHECK(present >= 1, "no slot with a token before removal");
	control("removed\n");
	CHECK(slot_count(CK_TRUE) == 0, "C_GetSlotList(CK_TRUE) still lists slots");
	CHECK(slot_count(CK_FALSE) == all, "the slots themselves must stay");
	CHECK_RV(F->C_GetSlotList(CK_TRUE, NULL, NULL), CKR_ARGUMENTS_BAD);
	CHECK_RV(F->C_GetSlotInfo(slot, &si), CKR_OK);
	CHECK(!(si.flags & CKF_TOKEN_PRESENT), "CKF_TOKEN_PRESENT while removed");
	CHECK(si.flags & CKF_REMOVABLE_DEVICE, "CKF_REMOVABLE_DEVICE lost while removed");
	CHECK_RV(F->C_GetTokenInfo(slot, &ti), CKR_TOKEN_NOT_PRESENT);
	CHECK_RV(F->C_GetTokenInfo(0xdeadbeef, &ti), CKR_SLOT_ID_INVALID);
	CHECK_RV(F->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s2), CKR_TOKEN_NOT_PRESENT);
	CHECK_RV(F->C_GetMechanismList(slot, NULL, &n), CKR_TOKEN_NOT_PRESENT);
	CHECK_RV(F->C_SignInit(old, &mech, *priv), CKR_DEVICE_REMOVED);
	CHECK_RV(F->C_Sign(old, (CK_BYTE_PTR)hash, sizeof(hash), sig, &sig_len), CKR_DEVICE_REMOVED);
	CHECK_RV(F->C_GetSessionInfo(old, &(CK_SESSION_INFO){ 0 }), CKR_DEVICE_REMOVED);
	CHECK_RV(F->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL), CKR_NO_EVENT);

	step("re-inserted: old sessions invalid, logged out, objects still there");
	control(NULL);
	CHECK(slot_count(CK_TRUE) == present, "C_GetSlotList(CK_TRUE) did not come back");
	CHECK_RV(F->C_GetSessionInfo(old, &(CK_SESSION_INFO){ 0 }), CKR_SESSION_HANDLE_INVALID);
	CHECK_RV(F->C_SignInit(old, &mech, *priv), CKR_SESSION_HANDLE_INVALID);
	CHECK_RV(F->C_CloseSession(old), CKR_SESSION_HANDLE_INVALID);
	CHECK(token_label_is(slot, TOKEN_LABEL), "the slot id changed");
	*s = open_session(slot);
	CHECK(session_state(*s) == CKS_RW_PUBLIC_SESSION, "a new session after re-insertion is still logged in");
	CHECK(find_objects(*s, CKO_PRIVATE_KEY, NULL) == 0, "private key visible without login");
	CHECK_RV(F->C_Login(*s, CKU_USER, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN)), CKR_OK);
	CHECK(find_objects(*s, CKO_PRIVATE_KEY, priv) == 1, "the private key is gone");
	CHECK(find_objects(*s, CKO_PUBLIC_KEY, pub) == 1, "the public key is gone");
	sign_and_verify(*s, *priv, *pub);
}

struct worker {
	CK_SLOT_ID slot;
	CK_OBJECT_HANDLE pub, priv;
	pthread_t thread;
	CK_RV rv;
};

static void *worker_run(void *arg)
{
	struct worker *w = arg;
	CK_MECHANISM mech = { CKM_ECDSA, NULL, 0 };
	CK_SESSION_HANDLE s;
	int i;

	w->rv = F->C_OpenSession(w->slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
	for (i = 0; i < 10 && w->rv == CKR_OK; i++) {
		CK_BYTE sig[128];
		CK_ULONG sig_len = sizeof(sig);

		w->rv = try_sign(s, w->priv, sig, &sig_len);
		if (w->rv == CKR_OK)
			w->rv = F->C_VerifyInit(s, &mech, w->pub);
		if (w->rv == CKR_OK)
			w->rv = F->C_Verify(s, (CK_BYTE_PTR)hash, sizeof(hash), sig, sig_len);
	}
	if (w->rv == CKR_OK)
		w->rv = F->C_CloseSession(s);
	return NULL;
}

static void check_threads(CK_SLOT_ID slot, CK_OBJECT_HANDLE pub, CK_OBJECT_HANDLE priv)
{
	struct worker w[4];
	size_t i;

	step("threads: four sessions signing at once under delay_ms 1");
	control("delay_ms 1\nfail C_GetInfo 0x6\n");
	for (i = 0; i < COUNT(w); i++) {
		w[i] = (struct worker){ .slot = slot, .pub = pub, .priv = priv };
		CHECK(pthread_create(&w[i].thread, NULL, worker_run, &w[i]) == 0, "pthread_create");
	}
	for (i = 0; i < 5; i++)
		CHECK_RV(call_get_info(), CKR_FUNCTION_FAILED);
	for (i = 0; i < COUNT(w); i++) {
		pthread_join(w[i].thread, NULL);
		CHECK_RV(w[i].rv, CKR_OK);
	}
	control(NULL);
}

static void check_wrap(CK_SESSION_HANDLE s)
{
	CK_MECHANISM gen = { CKM_AES_KEY_GEN, NULL, 0 };
	CK_MECHANISM wrap = { CKM_AES_KEY_WRAP_PAD, NULL, 0 };
	CK_ULONG len = 32;
	CK_ATTRIBUTE kek_tmpl[] = {
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_VALUE_LEN, &len, sizeof(len) },
		{ CKA_WRAP, &yes, sizeof(yes) },
	};
	CK_ATTRIBUTE key_tmpl[] = {
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_VALUE_LEN, &len, sizeof(len) },
		{ CKA_EXTRACTABLE, &yes, sizeof(yes) },
	};
	CK_OBJECT_HANDLE kek, key;
	CK_BYTE wrapped[64];
	CK_ULONG wrapped_len = sizeof(wrapped);

	step("C_GenerateKey and C_WrapKey go through (and into the log)");
	CHECK_RV(F->C_GenerateKey(s, &gen, kek_tmpl, COUNT(kek_tmpl), &kek), CKR_OK);
	CHECK_RV(F->C_GenerateKey(s, &gen, key_tmpl, COUNT(key_tmpl), &key), CKR_OK);
	CHECK_RV(F->C_WrapKey(s, &wrap, kek, key, wrapped, &wrapped_len), CKR_OK);
	CHECK(wrapped_len == 40, "AES key wrap of 32 bytes gives 40, not %lu", wrapped_len);
}

/* One line of the log, whole. */
static bool has_line(const char *log, const char *line)
{
	size_t len = strlen(line);
	const char *p = log;

	while ((p = strstr(p, line)) != NULL) {
		if ((p == log || p[-1] == '\n') && p[len] == '\n')
			return true;
		p++;
	}
	return false;
}

/* The first line that starts with prefix, up to its newline, in buf. */
static bool find_line(const char *log, const char *prefix, char *buf, size_t size)
{
	size_t plen = strlen(prefix);
	const char *p = log;

	while (*p) {
		const char *end = strchr(p, '\n');
		size_t len = end ? (size_t)(end - p) : strlen(p);

		if (len >= plen && memcmp(p, prefix, plen) == 0 && len < size) {
			memcpy(buf, p, len);
			buf[len] = '\0';
			return true;
		}
		p += len + (end ? 1 : 0);
	}
	return false;
}

static void check_log(void)
{
	char *log = read_file(log_path);
	char line[4096];
	const char *secrets[] = { USER_PIN, SO_PIN, "wrong-pin", KEY_LABEL, TOKEN_LABEL, "SHA-256 sized" };
	size_t i;

	step("the call log: names, attribute types, booleans, never secrets");
	if (getenv("KT_SHIM_TEST_SHOW_LOG"))
		fputs(log, stdout);
	CHECK(has_line(log, "C_GetFunctionList"), "no C_GetFunctionList line");
	CHECK(has_line(log, "C_Login"), "no C_Login line");
	CHECK(has_line(log, "C_WrapKey"), "no C_WrapKey line");
	CHECK(has_line(log, "C_SignInit mechanism=0x1041"), "no C_SignInit line with CKM_ECDSA");
	CHECK(has_line(log, "C_FindObjectsInit template=0x0,0x3"), "no C_FindObjectsInit line with CLASS, LABEL");
	CHECK(has_line(log, "C_GenerateKeyPair public=0x1=1,0x180,0x10a=1,0x3,0x102 "
			    "private=0x1=1,0x2=1,0x103=1,0x162=0,0x108=1,0x3,0x102"),
	      "no C_GenerateKeyPair line with both templates");
	CHECK(has_line(log, "C_GenerateKey template=0x1=0,0x161,0x106=1"), "no C_GenerateKey line");
	CHECK(find_line(log, "C_GetAttributeValue object=0x", line, sizeof(line)), "no C_GetAttributeValue line");
	CHECK(strstr(line, " template=0x"), "no template in a C_GetAttributeValue line: %s", line);
	CHECK(!strchr(strstr(line, " template=") + 10, '='), "values in a C_GetAttributeValue line: %s", line);
	for (i = 0; i < COUNT(secrets); i++)
		CHECK(!strstr(log, secrets[i]), "the log contains \"%s\"", secrets[i]);
	free(log);
}

/* What SoftHSM2 does with the things a token driver may meet; recorded, not
 * required. */
static void probe_softhsm(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE ec_pub, CK_OBJECT_HANDLE ec_priv)
{
	CK_OBJECT_CLASS data_class = CKO_DATA;
	CK_ULONG vendor_type = CKA_VENDOR_DEFINED | 0x4B540042UL; /* CKA_KT_COMPROMISED */
	CK_ATTRIBUTE data_tmpl[] = {
		{ CKA_CLASS, &data_class, sizeof(data_class) },
		{ CKA_TOKEN, &no, sizeof(no) },
		{ vendor_type, &yes, sizeof(yes) },
	};
	CK_ATTRIBUTE vendor_attr = { vendor_type, &yes, sizeof(yes) };
	CK_MECHANISM ec_gen = { CKM_EC_KEY_PAIR_GEN, NULL, 0 };
	CK_ATTRIBUTE ec_pub_tmpl[] = {
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_EC_PARAMS, (void *)p256, sizeof(p256) },
	};
	CK_ATTRIBUTE ec_priv_tmpl[] = {
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_SIGN, &yes, sizeof(yes) },
		{ vendor_type, &yes, sizeof(yes) },
	};
	static const struct {
		CK_ATTRIBUTE_TYPE type;
		const char *name;
	} ec_attrs[] = { { CKA_EC_PARAMS, "CKA_EC_PARAMS" },
			 { CKA_EC_POINT, "CKA_EC_POINT" },
			 { CKA_PUBLIC_KEY_INFO, "CKA_PUBLIC_KEY_INFO" },
			 { CKA_VALUE, "CKA_VALUE" } },
	  rsa_attrs[] = { { CKA_MODULUS, "CKA_MODULUS" },
			  { CKA_PUBLIC_EXPONENT, "CKA_PUBLIC_EXPONENT" },
			  { CKA_PUBLIC_KEY_INFO, "CKA_PUBLIC_KEY_INFO" },
			  { CKA_PRIVATE_EXPONENT, "CKA_PRIVATE_EXPONENT" } };
	CK_OBJECT_HANDLE obj, rsa_pub_h, rsa_priv_h, pub_h, priv_h;
	CK_SLOT_ID ev;
	CK_RV rv;
	size_t i;

	step("SoftHSM2's own behaviour (notes only)");
	rv = F->C_CreateObject(s, data_tmpl, COUNT(data_tmpl), &obj);
	note("C_CreateObject(CKO_DATA with CKA_VENDOR_DEFINED|0x4B540042) = %s (0x%lx)", rv_name(rv), rv);
	if (rv == CKR_OK) {
		CK_BBOOL back = CK_FALSE;
		CK_ATTRIBUTE get = { vendor_type, &back, sizeof(back) };

		rv = F->C_GetAttributeValue(s, obj, &get, 1);
		note("  reading it back: %s, ulValueLen %ld", rv_name(rv), (long)get.ulValueLen);
	}
	rv = F->C_SetAttributeValue(s, ec_priv, &vendor_attr, 1);
	note("C_SetAttributeValue(EC private key, CKA_VENDOR_DEFINED|0x4B540042) = %s (0x%lx)", rv_name(rv), rv);

	rv = F->C_GenerateKeyPair(s, &ec_gen, ec_pub_tmpl, COUNT(ec_pub_tmpl), ec_priv_tmpl, COUNT(ec_priv_tmpl),
				  &pub_h, &priv_h);
	note("C_GenerateKeyPair(EC, CKA_VENDOR_DEFINED|0x4B540042 in the private template) = %s (0x%lx)",
	     rv_name(rv), rv);

	for (i = 0; i < COUNT(ec_attrs); i++) {
		CK_ATTRIBUTE a = { ec_attrs[i].type, NULL, 0 };

		rv = F->C_GetAttributeValue(s, ec_priv, &a, 1);
		note("EC private key %s: %s, ulValueLen %ld", ec_attrs[i].name, rv_name(rv), (long)a.ulValueLen);
		a.ulValueLen = 0;
		rv = F->C_GetAttributeValue(s, ec_pub, &a, 1);
		note("EC public key %s: %s, ulValueLen %ld", ec_attrs[i].name, rv_name(rv), (long)a.ulValueLen);
	}
	generate_rsa_key(s, &rsa_pub_h, &rsa_priv_h);
	for (i = 0; i < COUNT(rsa_attrs); i++) {
		CK_ATTRIBUTE a = { rsa_attrs[i].type, NULL, 0 };

		rv = F->C_GetAttributeValue(s, rsa_priv_h, &a, 1);
		note("RSA private key %s: %s, ulValueLen %ld", rsa_attrs[i].name, rv_name(rv), (long)a.ulValueLen);
	}
	rv = F->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL);
	note("C_WaitForSlotEvent(CKF_DONT_BLOCK), token present: %s (0x%lx)", rv_name(rv), rv);
}

static void check_finalize(void)
{
	CK_C_INITIALIZE_ARGS args = { .flags = CKF_OS_LOCKING_OK };
	CK_OBJECT_HANDLE priv, pub;
	CK_SESSION_HANDLE s;
	CK_SLOT_ID slot;

	step("C_Finalize unloads; a second C_Initialize finds the token on disk");
	control("removed\n");
	(void)slot_count(CK_TRUE); /* the shim has seen the removal */
	CHECK_RV(F->C_Finalize(NULL), CKR_OK);
	CHECK_RV(call_get_info(), CKR_CRYPTOKI_NOT_INITIALIZED);
	control(NULL);
	CHECK_RV(F->C_Initialize(&args), CKR_OK);
	slot = find_token();
	note("SoftHSM2 slot id of the token after the second C_Initialize: %lu (0x%lx)", slot, slot);
	s = open_session(slot);
	CHECK_RV(F->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN)), CKR_OK);
	CHECK(find_objects(s, CKO_PRIVATE_KEY, &priv) == 1, "the private key did not persist");
	CHECK(find_objects(s, CKO_PUBLIC_KEY, &pub) == 1, "the public key did not persist");
	sign_and_verify(s, priv, pub);
	CHECK_RV(F->C_Finalize(NULL), CKR_OK);
}

int main(void)
{
	CK_C_INITIALIZE_ARGS args = { .flags = CKF_OS_LOCKING_OK };
	CK_OBJECT_HANDLE pub, priv;
	CK_C_GetFunctionList get;
	CK_SESSION_HANDLE s;
	CK_SLOT_ID slot;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (access(SOFTHSM, R_OK) != 0) {
		const char *ci = getenv("CI");

		if (!ci || !*ci) {
			printf("SKIP: %s is not installed\n", SOFTHSM);
			return 77;
		}
		fail_at(__LINE__, "%s is missing and CI is set", SOFTHSM);
	}

	make_softhsm_dir();
	get = load_shim();
	check_load_failure(get);

	step("C_Initialize with CKF_OS_LOCKING_OK reaches SoftHSM2");
	CHECK_RV(F->C_Initialize(&args), CKR_OK);
	CHECK_RV(F->C_Initialize(&args), CKR_CRYPTOKI_ALREADY_INITIALIZED);

	slot = init_token();
	s = open_session(slot);
	check_forwarding(slot, s, &pub, &priv);
	check_fail(s, priv, pub);
	check_pinpad(slot, s);
	check_delay_and_hang();
	check_removed(slot, &s, &pub, &priv);
	check_threads(slot, pub, priv);
	check_wrap(s);
	probe_softhsm(s, pub, priv);
	check_finalize();
	check_log();

	dlclose(shim_dl);
	printf("shim-test: all %d checks passed\n", checks);
	return 0;
}
