/* Module-test fixture; see fixture.h. */
#ifndef _GNU_SOURCE /* configure may define it already */
#define _GNU_SOURCE
#endif
#include "fixture.h"

#include <dlfcn.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

struct fixture fx;

/* id-ecPublicKey curve OIDs and the RFC 8410 identifiers (PKCS#11 3.0
 * accepts the OID form for the Edwards curves). */
const CK_BYTE fx_p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
const size_t fx_p256_len = sizeof(fx_p256);
const CK_BYTE fx_p384[] = { 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22 };
const size_t fx_p384_len = sizeof(fx_p384);
const CK_BYTE fx_ed25519[] = { 0x06, 0x03, 0x2b, 0x65, 0x70 };
const size_t fx_ed25519_len = sizeof(fx_ed25519);
const CK_BYTE fx_ed448[] = { 0x06, 0x03, 0x2b, 0x65, 0x71 };
const size_t fx_ed448_len = sizeof(fx_ed448);

CK_BBOOL fx_true = CK_TRUE;
CK_BBOOL fx_false = CK_FALSE;

void fixture_load(void)
{
	const char *path = getenv("KOLTAMGA_MODULE");
	CK_C_GetFunctionList get_list;

	if (fx.dl)
		return;
	if (!path || !*path)
		fail_msg("KOLTAMGA_MODULE is not set");
	fx.dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!fx.dl)
		fail_msg("dlopen %s: %s", path, dlerror());
	fx.softhsm = strstr(path, "softhsm") != NULL;
	/* The suite matrix: koltamga with its token on a device (SoftHSM2
	 * behind the pkcs11 driver) instead of a file. */
	const char *driver = getenv("KT_TEST_DRIVER");
	fx.device = !fx.softhsm && driver && strcmp(driver, "pkcs11") == 0;

	get_list = (CK_C_GetFunctionList)dlsym(fx.dl, "C_GetFunctionList");
	assert_non_null(get_list);
	assert_int_equal(get_list(&fx.f), CKR_OK);
	assert_non_null(fx.f);

	fx.get_interface_list = (CK_C_GetInterfaceList)dlsym(fx.dl, "C_GetInterfaceList");
	fx.get_interface = (CK_C_GetInterface)dlsym(fx.dl, "C_GetInterface");
	if (fx.get_interface) {
		CK_VERSION v = { 3, 0 };
		CK_INTERFACE_PTR iface = NULL;

		if (fx.get_interface((CK_UTF8CHAR_PTR) "PKCS 11", &v, &iface, 0) == CKR_OK && iface)
			fx.f3 = iface->pFunctionList;
	}
}

static int write_file(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");

	if (!fp)
		return -1;
	fputs(text, fp);
	return fclose(fp);
}

int fixture_tmpdir_new(void)
{
	const char *tmp = getenv("TMPDIR");
	char text[2 * PATH_MAX];

	if (!tmp || !*tmp)
		tmp = "/tmp";
	snprintf(fx.dir, sizeof(fx.dir), "%s/kt-module-test-XXXXXX", tmp);
	if (!mkdtemp(fx.dir))
		return -1;

	fx.conf_tail[0] = '\0';
	if (fx.softhsm) {
		snprintf(fx.store, sizeof(fx.store), "%s/tokens", fx.dir);
		snprintf(fx.conf, sizeof(fx.conf), "%s/softhsm2.conf", fx.dir);
		snprintf(text, sizeof(text),
			 "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n",
			 fx.store);
	} else if (fx.device) {
		/* SoftHSM2 plays the device: its token directory here, its
		 * one empty token the slot koltamga shows. */
		char hsm_conf[PATH_MAX + 32];
		const char *module = getenv("KT_DEVICE_MODULE");
		snprintf(fx.store, sizeof(fx.store), "%s/tokens", fx.dir);
		snprintf(hsm_conf, sizeof(hsm_conf), "%s/softhsm2.conf", fx.dir);
		snprintf(text, sizeof(text),
			 "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", fx.store);
		if (write_file(hsm_conf, text) != 0)
			return -1;
		setenv("SOFTHSM2_CONF", hsm_conf, 1);
		snprintf(fx.conf, sizeof(fx.conf), "%s/koltamga.conf", fx.dir);
		snprintf(fx.conf_tail, sizeof(fx.conf_tail), "[token]\ndriver = pkcs11\nmodule = %s\n",
			 module && *module ? module : FX_SOFTHSM_MODULE);
		snprintf(text, sizeof(text), "sign_policy = automatic\naudit_log = %s/audit.log\n%s", fx.dir,
			 fx.conf_tail);
	} else {
		snprintf(fx.store, sizeof(fx.store), "%s/store", fx.dir);
		snprintf(fx.conf, sizeof(fx.conf), "%s/koltamga.conf", fx.dir);
		/* Keys sign without a person here: the confirmation has tests
		 * of its own (test-activation). */
		snprintf(text, sizeof(text),
			 "store = %s\nscrypt_n = 1024\nsign_policy = automatic\naudit_log = %s/audit.log\n",
			 fx.store, fx.dir);
	}
	if (mkdir(fx.store, 0700) != 0 || write_file(fx.conf, text) != 0)
		return -1;
	setenv(fx.softhsm ? "SOFTHSM2_CONF" : "KOLTAMGA_CONF", fx.conf, 1);

	return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

void fixture_tmpdir_free(void)
{
	if (fx.dir[0])
		nftw(fx.dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	fx.dir[0] = '\0';
}

CK_RV fixture_initialize(void)
{
	CK_C_INITIALIZE_ARGS args = { .flags = CKF_OS_LOCKING_OK };

	return fx.f->C_Initialize(&args);
}

int fixture_setup_uninit(void **state)
{
	(void)state;
	fixture_load();
	return fixture_tmpdir_new();
}

int fixture_setup(void **state)
{
	CK_RV rv;

	if (fixture_setup_uninit(state) != 0)
		return -1;
	rv = fixture_initialize();
	if (rv != CKR_OK) {
		fprintf(stderr, "C_Initialize: 0x%lx\n", rv);
		return -1;
	}
	return 0;
}

int fixture_teardown(void **state)
{
	(void)state;
	if (fx.f)
		fx.f->C_Finalize(NULL); /* CKR_CRYPTOKI_NOT_INITIALIZED is fine */
	fixture_tmpdir_free();
	return 0;
}

bool fixture_tolerated(CK_RV got, CK_RV softhsm_rv)
{
	const char *env = getenv("KT_SOFTHSM_DEVIATIONS");

	return fx.softhsm && env && strcmp(env, "1") == 0 && got == softhsm_rv;
}

void fixture_note_deviation(const char *call, CK_RV want, CK_RV got, const char *file, int line)
{
	fprintf(stderr, "softhsm2 deviation: %s:%d: %s: spec 0x%lx, got 0x%lx\n", file, line, call, want, got);
}

CK_SLOT_ID fixture_empty_slot(void)
{
	CK_SLOT_ID slots[64];
	CK_ULONG n = FX_COUNT(slots);
	CK_TOKEN_INFO ti;

	assert_int_equal(fx.f->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
	for (CK_ULONG i = 0; i < n; i++) {
		if (fx.f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && !(ti.flags & CKF_TOKEN_INITIALIZED))
			return slots[i];
	}
	fail_msg("no slot with an uninitialised token");
	return 0;
}

CK_SLOT_ID fixture_init_token_label(const char *label)
{
	CK_UTF8CHAR padded[32];
	CK_SLOT_ID slot = fixture_empty_slot();
	CK_SESSION_HANDLE s;
	size_t len = strlen(label);

	memset(padded, ' ', sizeof(padded));
	memcpy(padded, label, len < sizeof(padded) ? len : sizeof(padded));
	assert_int_equal(fx.f->C_InitToken(slot, FX_PIN(FX_SO_PIN), padded), CKR_OK);
	assert_int_equal(fx.f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s),
			 CKR_OK);
	assert_int_equal(fx.f->C_Login(s, CKU_SO, FX_PIN(FX_SO_PIN)), CKR_OK);
	assert_int_equal(fx.f->C_InitPIN(s, FX_PIN(FX_USER_PIN)), CKR_OK);
	assert_int_equal(fx.f->C_Logout(s), CKR_OK);
	assert_int_equal(fx.f->C_CloseSession(s), CKR_OK);
	return slot;
}

CK_SLOT_ID fixture_init_token(void)
{
	return fixture_init_token_label("test");
}

CK_SLOT_ID fixture_slot_by_label(const char *label)
{
	CK_SLOT_ID slots[64];
	CK_ULONG n = FX_COUNT(slots);
	CK_TOKEN_INFO ti;
	size_t len = strlen(label);

	assert_int_equal(fx.f->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
	for (CK_ULONG i = 0; i < n; i++) {
		if (fx.f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && (ti.flags & CKF_TOKEN_INITIALIZED) &&
		    memcmp(ti.label, label, len) == 0 && ti.label[len] == ' ')
			return slots[i];
	}
	fail_msg("no token labelled %s", label);
	return 0;
}

CK_SESSION_HANDLE fixture_open_session(CK_SLOT_ID slot, bool rw)
{
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	CK_FLAGS flags = CKF_SERIAL_SESSION | (rw ? CKF_RW_SESSION : 0);

	assert_int_equal(fx.f->C_OpenSession(slot, flags, NULL, NULL, &s), CKR_OK);
	return s;
}

CK_SESSION_HANDLE fixture_open_user_session(CK_SLOT_ID slot)
{
	CK_SESSION_HANDLE s = fixture_open_session(slot, true);
	CK_RV rv = fx.f->C_Login(s, CKU_USER, FX_PIN(FX_USER_PIN));

	/* Another session of this application may already be logged in. */
	if (rv != CKR_USER_ALREADY_LOGGED_IN)
		assert_int_equal(rv, CKR_OK);
	return s;
}

CK_ULONG fixture_merge(CK_ATTRIBUTE *out, const CK_ATTRIBUTE *base, CK_ULONG nbase, const CK_ATTRIBUTE *extra,
		      CK_ULONG nextra)
{
	CK_ULONG n = 0;

	for (CK_ULONG i = 0; i < nbase; i++) {
		bool replaced = false;

		for (CK_ULONG j = 0; j < nextra; j++)
			replaced |= extra[j].type == base[i].type;
		if (!replaced)
			out[n++] = base[i];
	}
	for (CK_ULONG j = 0; j < nextra; j++)
		out[n++] = extra[j];
	return n;
}

CK_RV fixture_gen_keypair(CK_SESSION_HANDLE s, CK_MECHANISM_TYPE mech, const CK_ATTRIBUTE *pub_extra,
			  CK_ULONG n_pub_extra, const CK_ATTRIBUTE *priv_extra, CK_ULONG n_priv_extra,
			  CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
	CK_MECHANISM m = { mech, NULL, 0 };
	CK_ATTRIBUTE pub_base[] = {
		{ CKA_TOKEN, &fx_false, 1 },
		{ CKA_VERIFY, &fx_true, 1 },
	};
	CK_ATTRIBUTE priv_base[] = {
		{ CKA_TOKEN, &fx_false, 1 },
		{ CKA_PRIVATE, &fx_true, 1 },
		{ CKA_SENSITIVE, &fx_true, 1 },
		{ CKA_SIGN, &fx_true, 1 },
	};
	CK_ATTRIBUTE pub_t[32], priv_t[32];
	CK_ULONG npub, npriv;

	assert_true(n_pub_extra <= 16 && n_priv_extra <= 16);
	npub = fixture_merge(pub_t, pub_base, FX_COUNT(pub_base), pub_extra, n_pub_extra);
	npriv = fixture_merge(priv_t, priv_base, FX_COUNT(priv_base), priv_extra, n_priv_extra);
	*pub = *priv = CK_INVALID_HANDLE;
	return fx.f->C_GenerateKeyPair(s, &m, pub_t, npub, priv_t, npriv, pub, priv);
}

CK_RV fixture_gen_rsa(CK_SESSION_HANDLE s, CK_ULONG bits, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
	static CK_BYTE e[] = { 0x01, 0x00, 0x01 };
	CK_ATTRIBUTE pt[] = {
		{ CKA_MODULUS_BITS, &bits, sizeof(bits) },
		{ CKA_PUBLIC_EXPONENT, e, sizeof(e) },
	};

	return fixture_gen_keypair(s, CKM_RSA_PKCS_KEY_PAIR_GEN, pt, FX_COUNT(pt), NULL, 0, pub, priv);
}

CK_RV fixture_gen_ec(CK_SESSION_HANDLE s, const CK_BYTE *params, size_t params_len, CK_OBJECT_HANDLE *pub,
		     CK_OBJECT_HANDLE *priv)
{
	CK_ATTRIBUTE pt[] = { { CKA_EC_PARAMS, (void *)params, params_len } };

	return fixture_gen_keypair(s, CKM_EC_KEY_PAIR_GEN, pt, 1, NULL, 0, pub, priv);
}

CK_RV fixture_gen_eddsa(CK_SESSION_HANDLE s, const CK_BYTE *params, size_t params_len, CK_OBJECT_HANDLE *pub,
			CK_OBJECT_HANDLE *priv)
{
	CK_ATTRIBUTE pt[] = { { CKA_EC_PARAMS, (void *)params, params_len } };

	return fixture_gen_keypair(s, CKM_EC_EDWARDS_KEY_PAIR_GEN, pt, 1, NULL, 0, pub, priv);
}

CK_RV fixture_gen_aes(CK_SESSION_HANDLE s, CK_ULONG bytes, const CK_ATTRIBUTE *extra, CK_ULONG n_extra,
		      CK_OBJECT_HANDLE *key)
{
	CK_MECHANISM m = { CKM_AES_KEY_GEN, NULL, 0 };
	CK_ATTRIBUTE base[] = {
		{ CKA_TOKEN, &fx_false, 1 },	 { CKA_VALUE_LEN, &bytes, sizeof(bytes) },
		{ CKA_ENCRYPT, &fx_true, 1 },	 { CKA_DECRYPT, &fx_true, 1 },
		{ CKA_WRAP, &fx_true, 1 },	 { CKA_UNWRAP, &fx_true, 1 },
	};
	CK_ATTRIBUTE t[32];
	CK_ULONG n;

	assert_true(n_extra <= 16);
	n = fixture_merge(t, base, FX_COUNT(base), extra, n_extra);
	*key = CK_INVALID_HANDLE;
	return fx.f->C_GenerateKey(s, &m, t, n, key);
}

void *fixture_get_attr(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type, CK_ULONG *len)
{
	CK_ATTRIBUTE a = { type, NULL, 0 };

	if (fx.f->C_GetAttributeValue(s, o, &a, 1) != CKR_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
		return NULL;
	a.pValue = malloc(a.ulValueLen ? a.ulValueLen : 1);
	assert_non_null(a.pValue);
	assert_int_equal(fx.f->C_GetAttributeValue(s, o, &a, 1), CKR_OK);
	if (len)
		*len = a.ulValueLen;
	return a.pValue;
}

CK_BBOOL fixture_get_bool(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type)
{
	CK_BBOOL b = 0xff;
	CK_ATTRIBUTE a = { type, &b, sizeof(b) };

	assert_int_equal(fx.f->C_GetAttributeValue(s, o, &a, 1), CKR_OK);
	assert_int_equal(a.ulValueLen, sizeof(CK_BBOOL));
	assert_true(b == CK_TRUE || b == CK_FALSE);
	return b;
}

CK_ULONG fixture_count_objects(CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
	CK_OBJECT_HANDLE h[16];
	CK_ULONG got, total = 0;

	assert_int_equal(fx.f->C_FindObjectsInit(s, tmpl, n), CKR_OK);
	do {
		assert_int_equal(fx.f->C_FindObjects(s, h, FX_COUNT(h), &got), CKR_OK);
		total += got;
	} while (got > 0);
	assert_int_equal(fx.f->C_FindObjectsFinal(s), CKR_OK);
	return total;
}
