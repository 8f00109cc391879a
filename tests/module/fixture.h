/*
 * Module-test fixture: load the PKCS#11 module named by $KOLTAMGA_MODULE the
 * way applications do (dlopen), give every test a fresh temporary token store,
 * and a few helpers for the steps every test repeats.
 *
 * The tests check the PKCS#11 specification's behaviour, so they also run
 * against SoftHSM2 (KOLTAMGA_MODULE=/usr/lib/softhsm/libsofthsm2.so); then the
 * fixture writes a softhsm2.conf instead of a koltamga.conf.
 */
#ifndef KOLTAMGA_TEST_FIXTURE_H
#define KOLTAMGA_TEST_FIXTURE_H

#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "pkcs11-3.h"

#ifndef CKF_FIND_OBJECTS /* 3.0: C_SessionCancel of a search; not in pkcs11-3.h yet */
#define CKF_FIND_OBJECTS 0x00000040UL
#endif

#define FX_SO_PIN "12345678"
#define FX_USER_PIN "1234"
#define FX_MAX_PIN_TRIES 5 /* koltamga's default max_pin_tries */

/* A PIN literal as the (pointer, length) pair the C_* calls take. */
#define FX_PIN(p) (CK_UTF8CHAR_PTR)(p), (CK_ULONG)strlen(p)
#define FX_COUNT(a) (sizeof(a) / sizeof((a)[0]))

struct fixture {
	void *dl;
	CK_FUNCTION_LIST_PTR f; /* the 2.40 list from C_GetFunctionList */
	CK_C_GetInterfaceList get_interface_list; /* NULL: a 2.40-only module */
	CK_C_GetInterface get_interface;
	CK_FUNCTION_LIST_3_0_PTR f3; /* "PKCS 11" 3.0, NULL for a 2.40 module */
	bool softhsm; /* testing against SoftHSM2, not koltamga */
	bool device;  /* koltamga, its token on a device (KT_TEST_DRIVER=pkcs11) */
	char dir[1024]; /* this test's temporary directory */
	char conf[PATH_MAX]; /* the configuration file written there */
	char store[PATH_MAX]; /* koltamga: the store directory */
	/* The configuration's [token] sections (device mode), which stay
	 * last when tests add keys of their own (certfix_conf). */
	char conf_tail[PATH_MAX + 64];
};
extern struct fixture fx;

/* Curve parameters (DER) for CKA_EC_PARAMS. */
extern const CK_BYTE fx_p256[];
extern const size_t fx_p256_len;
extern const CK_BYTE fx_p384[];
extern const size_t fx_p384_len;
extern const CK_BYTE fx_ed25519[];
extern const size_t fx_ed25519_len;
extern const CK_BYTE fx_ed448[];
extern const size_t fx_ed448_len;

extern CK_BBOOL fx_true;
extern CK_BBOOL fx_false;

/* dlopen the module once per process; fails the test when it cannot. */
void fixture_load(void);
/* A fresh temporary directory with a configuration file, exported through
 * KOLTAMGA_CONF (or SOFTHSM2_CONF).  0 on success. */
int fixture_tmpdir_new(void);
/* Remove this test's temporary directory and everything in it. */
void fixture_tmpdir_free(void);
/* C_Initialize with CKF_OS_LOCKING_OK. */
CK_RV fixture_initialize(void);

/* cmocka setup/teardown: load, new temp dir, C_Initialize / C_Finalize, rm. */
int fixture_setup(void **state);
int fixture_teardown(void **state);
/* Same, but without C_Initialize (tests of initialisation itself). */
int fixture_setup_uninit(void **state);

/* Skip a test that checks koltamga's own configuration or policy, which
 * SoftHSM2 does not share (not a deviation from the specification). */
#define FX_KOLTAMGA_ONLY()                                                                         \
	do {                                                                                       \
		if (fx.softhsm)                                                                    \
			skip();                                                                    \
	} while (0)

/* Skip, in the suite matrix's device run, a test of the file token's own
 * workings (its store, the empty slot, koltamga's PIN counters, key
 * material in this process) or of what a device decides for itself; the
 * reason says which (docs/integration.md lists the differences). */
#define FX_FILE_TOKEN_ONLY(reason)                                                                 \
	do {                                                                                       \
		if (fx.device) {                                                                   \
			fprintf(stderr, "skipped on a device token: %s\n", reason);               \
			skip();                                                                    \
		}                                                                                  \
	} while (0)

#define FX_SOFTHSM_MODULE "/usr/lib/softhsm/libsofthsm2.so"

/* A known SoftHSM2 deviation from the specification.  The test keeps the
 * specification's answer, so it fails against SoftHSM2; with
 * KT_SOFTHSM_DEVIATIONS=1 SoftHSM2's answer is noted on stderr and accepted,
 * so the rest of the test still runs.  koltamga always gets the strict check. */
#define FX_ASSERT_RV(call, spec_rv, softhsm_rv)                                                    \
	do {                                                                                       \
		CK_RV fx_rv_ = (call);                                                             \
		if (fx_rv_ != (spec_rv) && fixture_tolerated(fx_rv_, (softhsm_rv)))               \
			fixture_note_deviation(#call, (spec_rv), fx_rv_, __FILE__, __LINE__);      \
		else                                                                               \
			assert_int_equal(fx_rv_, (spec_rv));                                       \
	} while (0)
bool fixture_tolerated(CK_RV got, CK_RV softhsm_rv);
void fixture_note_deviation(const char *call, CK_RV want, CK_RV got, const char *file, int line);

/* The first slot whose token is not initialised (fails the test if none). */
CK_SLOT_ID fixture_empty_slot(void);
/* Initialise the empty token: SO PIN FX_SO_PIN, label "test", user PIN
 * FX_USER_PIN.  Returns its slot. */
CK_SLOT_ID fixture_init_token(void);
/* Same with another label. */
CK_SLOT_ID fixture_init_token_label(const char *label);
/* The slot of the initialised token with this label (slot ids need not
 * survive C_Finalize/C_Initialize). */
CK_SLOT_ID fixture_slot_by_label(const char *label);
CK_SESSION_HANDLE fixture_open_session(CK_SLOT_ID slot, bool rw);
/* A RW session with the normal user logged in. */
CK_SESSION_HANDLE fixture_open_user_session(CK_SLOT_ID slot);

/* out = base + extra, an extra attribute replacing a base one of the same
 * type; duplicates inside extra are kept (tests of hostile templates need
 * them).  out has room for nbase + nextra.  Returns the count. */
CK_ULONG fixture_merge(CK_ATTRIBUTE *out, const CK_ATTRIBUTE *base, CK_ULONG nbase, const CK_ATTRIBUTE *extra,
		       CK_ULONG nextra);

/* Key generation.  Defaults: session objects, private keys CKA_PRIVATE,
 * CKA_SENSITIVE, CKA_SIGN; public keys CKA_VERIFY.  Attributes in `extra`
 * replace a default of the same type or are added. */
CK_RV fixture_gen_keypair(CK_SESSION_HANDLE s, CK_MECHANISM_TYPE mech, const CK_ATTRIBUTE *pub_extra,
			  CK_ULONG n_pub_extra, const CK_ATTRIBUTE *priv_extra, CK_ULONG n_priv_extra,
			  CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv);
CK_RV fixture_gen_rsa(CK_SESSION_HANDLE s, CK_ULONG bits, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv);
/* EC (CKM_EC_KEY_PAIR_GEN) or, for the Edwards curves, CKM_EC_EDWARDS_KEY_PAIR_GEN. */
CK_RV fixture_gen_ec(CK_SESSION_HANDLE s, const CK_BYTE *params, size_t params_len, CK_OBJECT_HANDLE *pub,
		     CK_OBJECT_HANDLE *priv);
CK_RV fixture_gen_eddsa(CK_SESSION_HANDLE s, const CK_BYTE *params, size_t params_len, CK_OBJECT_HANDLE *pub,
			CK_OBJECT_HANDLE *priv);
/* AES key of `bytes` length (CKA_ENCRYPT/DECRYPT/WRAP/UNWRAP true, session object). */
CK_RV fixture_gen_aes(CK_SESSION_HANDLE s, CK_ULONG bytes, const CK_ATTRIBUTE *extra, CK_ULONG n_extra,
		      CK_OBJECT_HANDLE *key);

/* Read one attribute into a fresh buffer (free it); NULL when not readable. */
void *fixture_get_attr(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type, CK_ULONG *len);
/* Read a CK_BBOOL attribute; fails the test when it cannot. */
CK_BBOOL fixture_get_bool(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type);
/* Number of objects C_FindObjects returns for the template. */
CK_ULONG fixture_count_objects(CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n);

#endif
