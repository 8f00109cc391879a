/*
 * Signature activation through the real module (law art. 12.2): a confirm
 * key signs only after the signer says yes, exactly once per yes, and what
 * was shown is what gets signed; refusals and cancellations end the
 * operation with nothing returned; automatic keys never ask; every decision
 * is in the audit log.  The signer is tests/pinentry/fake-confirm.sh (the
 * `command` backend); the pinentry backend has tests/unit/test-confirm.c and
 * tests/clients/pinentry-tty.sh.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "certfix.h"
#include "fixture.h"
#include "koltamga/pkcs11v.h"

#define F (fx.f)

static CK_SLOT_ID slot;
static CK_SESSION_HANDLE s;
static char answers[PATH_MAX], asked[PATH_MAX], audit[PATH_MAX];
static char base_conf[2 * PATH_MAX + 256]; /* the configuration setup() wrote */
static const char doc[] = "Contract 17: the Contractor translates 40 pages for 12 000 KGS.";

/* What the scripted signer answers next: 0 yes, 1 no, 2 cancelled. */
static void signer_answers(int code)
{
	FILE *fp = fopen(answers, "w");
	assert_non_null(fp);
	/* The PIN, for a device that checks it at every use (the command is
	 * then asked "confirm-pin"; a file token never asks). */
	fprintf(fp, "out=%s\ncode=%d\npin=%s\n", asked, code, FX_USER_PIN);
	fclose(fp);
}

static int questions(void)
{
	char *a = certfix_read(asked);
	int n = certfix_count(a, "=== confirm");
	free(a);
	return n;
}

/* The next signer reads the request, then waits until `gate` exists. */
static void signer_waits_for(const char *gate)
{
	FILE *fp = fopen(answers, "w");
	assert_non_null(fp);
	fprintf(fp, "out=%s\ncode=0\ngate=%s\n", asked, gate);
	fclose(fp);
}

static int setup(void **state)
{
	const char *src = getenv("KOLTAMGA_SRCDIR");
	char srcdir[PATH_MAX];
	if (fixture_setup_uninit(state) != 0 || !realpath(src && *src ? src : ".", srcdir))
		return -1;
	snprintf(answers, sizeof(answers), "%s/answers", fx.dir);
	snprintf(asked, sizeof(asked), "%s/asked", fx.dir);
	snprintf(audit, sizeof(audit), "%s/audit.log", fx.dir);
	setenv("KT_FAKE_CONFIRM", answers, 1);
	signer_answers(0);
	/* Keys are qualified unless a [key] section names them a seal. */
	snprintf(base_conf, sizeof(base_conf),
		 "sign_policy = confirm\nconfirm = command\nconfirm_program = %s/tests/pinentry/fake-confirm.sh\n"
		 "confirm_timeout = 20\n[key]\nlabel = seal\nsign_policy = automatic\n",
		 srcdir);
	if (certfix_conf(base_conf) != 0 || fixture_initialize() != CKR_OK)
		return -1;
	slot = fixture_init_token_label("activation");
	s = fixture_open_user_session(slot);
	return 0;
}

static void keypair(const char *label, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
	CK_ATTRIBUTE l[] = { { CKA_LABEL, (void *)label, strlen(label) } };
	CK_ATTRIBUTE params[] = { { CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len }, { CKA_LABEL, (void *)label, strlen(label) } };
	assert_int_equal(fixture_gen_keypair(s, CKM_EC_KEY_PAIR_GEN, params, 2, l, 1, pub, priv), CKR_OK);
}

/* C_SignInit and the per-signature PIN a qualified key asks for. */
static void sign_init(CK_OBJECT_HANDLE priv, bool context_login)
{
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_OK);
	if (context_login)
		assert_int_equal(F->C_Login(s, CKU_CONTEXT_SPECIFIC, FX_PIN(FX_USER_PIN)), CKR_OK);
}

static void verifies(CK_OBJECT_HANDLE pub, const void *data, size_t len, CK_BYTE *sig, CK_ULONG siglen)
{
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	assert_int_equal(F->C_VerifyInit(s, &m, pub), CKR_OK);
	assert_int_equal(F->C_Verify(s, (CK_BYTE_PTR)data, len, sig, siglen), CKR_OK);
}

static void test_policy_attributes(void **state)
{
	CK_OBJECT_HANDLE pub, priv, seal_pub, seal;
	keypair("person key", &pub, &priv);
	keypair("seal", &seal_pub, &seal);
	CK_ULONG policy = 0;
	CK_BBOOL always = CK_FALSE;
	CK_ATTRIBUTE a[] = { { CKA_KT_SIGN_POLICY, &policy, sizeof(policy) },
			     { CKA_ALWAYS_AUTHENTICATE, &always, sizeof(always) } };
	assert_int_equal(F->C_GetAttributeValue(s, priv, a, 2), CKR_OK);
	assert_int_equal(policy, CK_KT_POLICY_CONFIRM);
	assert_true(always);
	assert_int_equal(F->C_GetAttributeValue(s, seal, a, 2), CKR_OK);
	assert_int_equal(policy, CK_KT_POLICY_AUTOMATIC);
	assert_false(always);
	/* The policy is the module's to decide, and fixed. */
	policy = CK_KT_POLICY_AUTOMATIC;
	assert_int_equal(F->C_SetAttributeValue(s, priv, a, 1), CKR_ATTRIBUTE_READ_ONLY);
	CK_BBOOL no = CK_FALSE;
	CK_ATTRIBUTE off[] = { { CKA_ALWAYS_AUTHENTICATE, &no, 1 } };
	assert_int_equal(F->C_SetAttributeValue(s, priv, off, 1), CKR_ATTRIBUTE_READ_ONLY);
	CK_OBJECT_HANDLE copy;
	assert_int_equal(F->C_CopyObject(s, priv, a, 1, &copy), CKR_ATTRIBUTE_READ_ONLY);
	CK_ATTRIBUTE gen[] = { { CKA_KT_SIGN_POLICY, &policy, sizeof(policy) } };
	CK_ATTRIBUTE params[] = { { CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len } };
	assert_int_equal(fixture_gen_keypair(s, CKM_EC_KEY_PAIR_GEN, params, 1, gen, 1, &pub, &copy),
			 CKR_ATTRIBUTE_READ_ONLY);
}

static void test_confirmed_signature(void **state)
{
	CK_OBJECT_HANDLE pub, priv;
	CK_BYTE sig[80];
	CK_ULONG len = 0;
	keypair("person key", &pub, &priv);
	sign_init(priv, true);
	/* A length query neither asks nor signs. */
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, NULL, &len), CKR_OK);
	assert_int_equal(len, 64);
	assert_int_equal(questions(), 0);
	len = sizeof(sig);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_OK);
	assert_int_equal(questions(), 1);
	verifies(pub, doc, sizeof(doc) - 1, sig, len);

	/* The signer saw the document, its digest and the code; and was told. */
	char *a = certfix_read(asked);
	assert_non_null(strstr(a, doc));
	assert_non_null(strstr(a, "SHA-256: "));
	assert_non_null(strstr(a, "Code: "));
	assert_non_null(strstr(a, "RESULT: signed"));
	free(a);
	/* One confirmation, one signature. */
	len = sizeof(sig);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_OPERATION_NOT_INITIALIZED);
	char *log = certfix_read(audit);
	assert_int_equal(certfix_count(log, "\"decision\":\"signed\""), 1);
	assert_null(strstr(log, "translates")); /* no document content in the audit */
	free(log);
}

static void test_refused_and_canceled(void **state)
{
	CK_OBJECT_HANDLE pub, priv;
	CK_BYTE sig[80];
	CK_ULONG len;
	keypair("person key", &pub, &priv);

	signer_answers(1);
	sign_init(priv, true);
	len = sizeof(sig);
	memset(sig, 0, sizeof(sig));
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_FUNCTION_REJECTED);
	assert_int_equal(sig[0], 0);
	/* The operation is over. */
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_OPERATION_NOT_INITIALIZED);

	signer_answers(2);
	sign_init(priv, true);
	len = sizeof(sig);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_FUNCTION_CANCELED);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_OPERATION_NOT_INITIALIZED);

	char *log = certfix_read(audit);
	assert_int_equal(certfix_count(log, "\"decision\":\"rejected\""), 1);
	assert_int_equal(certfix_count(log, "\"decision\":\"canceled\""), 1);
	assert_int_equal(certfix_count(log, "\"decision\":\"signed\""), 0);
	free(log);
}

static void test_multi_part_asks_once(void **state)
{
	CK_OBJECT_HANDLE pub, priv;
	CK_BYTE sig[80];
	CK_ULONG len = sizeof(sig);
	keypair("person key", &pub, &priv);
	sign_init(priv, true);
	assert_int_equal(F->C_SignUpdate(s, (CK_BYTE_PTR)doc, 20), CKR_OK);
	assert_int_equal(F->C_SignUpdate(s, (CK_BYTE_PTR)doc + 20, sizeof(doc) - 1 - 20), CKR_OK);
	assert_int_equal(questions(), 0);
	assert_int_equal(F->C_SignFinal(s, sig, &len), CKR_OK);
	assert_int_equal(questions(), 1);
	verifies(pub, doc, sizeof(doc) - 1, sig, len);
	char *a = certfix_read(asked);
	assert_non_null(strstr(a, doc)); /* the whole document, gathered */
	free(a);
}

/* Java and OpenSSL never send the context-specific login a qualified key
 * asks for: the module's own dialog stands in for it (the command
 * backend's yes; pinentry collects the PIN, tests/unit/test-confirm.c).  On
 * a device, which checks the PIN itself, the command is asked for the PIN
 * with its yes ("confirm-pin", tests/module/test-device.c). */
static void test_dialog_stands_in_for_context_login(void **state)
{
	CK_OBJECT_HANDLE pub, priv;
	CK_BYTE sig[80];
	CK_ULONG len = sizeof(sig);
	keypair("person key", &pub, &priv);
	sign_init(priv, false);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_OK);
	assert_int_equal(questions(), 1);
	verifies(pub, doc, sizeof(doc) - 1, sig, len);

	/* ... and a "no" still means no signature. */
	signer_answers(1);
	sign_init(priv, false);
	len = sizeof(sig);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_FUNCTION_REJECTED);
	assert_int_equal(questions(), 2);
}

/* A seal that its owner made demand per-use authentication gets it the
 * specification's way: without the context-specific login it does not
 * sign, and nobody is asked. */
static void test_automatic_key_context_login(void **state)
{
	CK_OBJECT_HANDLE pub, seal;
	CK_BBOOL yes = CK_TRUE;
	CK_BYTE sig[80];
	CK_ULONG len = sizeof(sig);
	const char *label = "seal";
	CK_ATTRIBUTE priv_t[] = { { CKA_LABEL, (void *)label, strlen(label) }, { CKA_ALWAYS_AUTHENTICATE, &yes, sizeof(yes) } };
	CK_ATTRIBUTE params[] = { { CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len } };
	assert_int_equal(fixture_gen_keypair(s, CKM_EC_KEY_PAIR_GEN, params, 1, priv_t, 2, &pub, &seal), CKR_OK);
	sign_init(seal, false);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_USER_NOT_LOGGED_IN);
	sign_init(seal, true);
	len = sizeof(sig);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_OK);
	verifies(pub, doc, sizeof(doc) - 1, sig, len);
	assert_int_equal(questions(), 0);
}

static void test_automatic_never_asks(void **state)
{
	CK_OBJECT_HANDLE pub, seal;
	CK_BYTE sig[80];
	keypair("seal", &pub, &seal);
	for (int i = 0; i < 3; i++) {
		CK_ULONG len = sizeof(sig);
		sign_init(seal, false);
		assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_OK);
		verifies(pub, doc, sizeof(doc) - 1, sig, len);
	}
	assert_int_equal(questions(), 0);
	/* A seal's routine records may wait for their batch; C_Finalize
	 * writes them. */
	assert_int_equal(F->C_Finalize(NULL), CKR_OK);
	char *log = certfix_read(audit);
	assert_int_equal(certfix_count(log, "\"decision\":\"signed\""), 3);
	free(log);
	assert_int_equal(fixture_initialize(), CKR_OK);
}

static void test_deny_backend(void **state)
{
	CK_OBJECT_HANDLE pub, priv;
	CK_BYTE sig[80];
	CK_ULONG len = sizeof(sig);
	keypair("person key", &pub, &priv);
	assert_int_equal(certfix_reinit("sign_policy = confirm\nconfirm = deny\n"), CKR_OK);
	slot = fixture_slot_by_label("activation");
	s = fixture_open_user_session(slot);
	/* Token key objects survive; this session key is gone: make another. */
	keypair("person key", &pub, &priv);
	sign_init(priv, true);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_FUNCTION_REJECTED);
}

struct waiting_signer {
	CK_SESSION_HANDLE session;
	CK_BYTE sig[80];
	CK_ULONG len;
	CK_RV rv;
	bool done;
};

static void *sign_doc(void *arg)
{
	struct waiting_signer *w = arg;
	w->len = sizeof(w->sig);
	w->rv = F->C_Sign(w->session, (CK_BYTE_PTR)doc, sizeof(doc) - 1, w->sig, &w->len);
	__atomic_store_n(&w->done, true, __ATOMIC_RELEASE);
	return NULL;
}

static void *close_session(void *arg)
{
	struct waiting_signer *w = arg;
	w->rv = F->C_CloseSession(w->session);
	__atomic_store_n(&w->done, true, __ATOMIC_RELEASE);
	return NULL;
}

static void *poll_session(void *arg)
{
	struct waiting_signer *w = arg;
	CK_SESSION_INFO info;
	w->rv = F->C_GetSessionInfo(w->session, &info);
	__atomic_store_n(&w->done, true, __ATOMIC_RELEASE);
	return NULL;
}

/*
 * While one signer reads the dialog, the rest of the process goes on: a
 * second thread that touches the waiting session (NSS polls session info)
 * queues behind it without blocking anyone else, and other sessions open,
 * sign with a seal, find and close.  Regression: the queued call used to
 * hold the session table, so opening or closing any session waited for
 * the person (here: until the dialog timed out).
 */
static void test_others_work_while_signer_waits(void **state)
{
	CK_OBJECT_HANDLE pub, priv, seal_pub, seal;
	char gate[PATH_MAX];
	pthread_t signer, poller;
	struct waiting_signer w = { .session = s }, p = { .session = s };
	keypair("person key", &pub, &priv);
	keypair("seal", &seal_pub, &seal);
	snprintf(gate, sizeof(gate), "%s/answer-now", fx.dir);
	signer_waits_for(gate);

	sign_init(priv, true);
	assert_int_equal(pthread_create(&signer, NULL, sign_doc, &w), 0);
	for (int i = 0; i < 2000 && questions() == 0; i++)
		usleep(10000);
	assert_int_equal(questions(), 1); /* the signer has the dialog now */
	assert_int_equal(pthread_create(&poller, NULL, poll_session, &p), 0);
	usleep(100000); /* let the poller queue on the busy session */

	for (int round = 0; round < 3; round++) {
		CK_SESSION_HANDLE other = fixture_open_session(slot, false);
		CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
		CK_BYTE sig[80];
		CK_ULONG len = sizeof(sig), found = 0;
		CK_OBJECT_HANDLE h;
		assert_int_equal(F->C_SignInit(other, &m, seal), CKR_OK);
		assert_int_equal(F->C_Sign(other, (CK_BYTE_PTR)doc, 10, sig, &len), CKR_OK);
		assert_int_equal(F->C_FindObjectsInit(other, NULL, 0), CKR_OK);
		assert_int_equal(F->C_FindObjects(other, &h, 1, &found), CKR_OK);
		assert_int_equal(found, 1);
		assert_int_equal(F->C_FindObjectsFinal(other), CKR_OK);
		assert_int_equal(F->C_CloseSession(other), CKR_OK);
	}
	/* All that happened while the person still looked at the dialog. */
	assert_false(__atomic_load_n(&w.done, __ATOMIC_ACQUIRE));
	assert_false(__atomic_load_n(&p.done, __ATOMIC_ACQUIRE));

	FILE *fp = fopen(gate, "w");
	assert_non_null(fp);
	fclose(fp);
	assert_int_equal(pthread_join(signer, NULL), 0);
	assert_int_equal(pthread_join(poller, NULL), 0);
	assert_int_equal(w.rv, CKR_OK);
	assert_int_equal(p.rv, CKR_OK);
	verifies(pub, doc, sizeof(doc) - 1, w.sig, w.len);
}

/* A call queued behind a busy session that C_CloseSession then closes is
 * turned away cleanly, and the signature in flight is not disturbed. */
static void test_close_while_signer_waits(void **state)
{
	CK_OBJECT_HANDLE pub, priv;
	char gate[PATH_MAX];
	pthread_t signer, poller, closer;
	CK_SESSION_HANDLE victim = fixture_open_session(slot, false);
	struct waiting_signer w = { .session = victim }, p = { .session = victim };
	keypair("person key", &pub, &priv);
	snprintf(gate, sizeof(gate), "%s/answer-now", fx.dir);
	signer_waits_for(gate);

	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	assert_int_equal(F->C_SignInit(victim, &m, priv), CKR_OK);
	assert_int_equal(F->C_Login(victim, CKU_CONTEXT_SPECIFIC, FX_PIN(FX_USER_PIN)), CKR_OK);
	assert_int_equal(pthread_create(&signer, NULL, sign_doc, &w), 0);
	for (int i = 0; i < 2000 && questions() == 0; i++)
		usleep(10000);
	assert_int_equal(questions(), 1);
	assert_int_equal(pthread_create(&poller, NULL, poll_session, &p), 0);
	usleep(100000);
	struct waiting_signer c = { .session = victim };
	assert_int_equal(pthread_create(&closer, NULL, close_session, &c), 0);
	usleep(300000); /* the closer unlinks at once, then waits for the signer */
	/* The session is gone for new calls at once ... */
	CK_SESSION_INFO info;
	assert_int_equal(F->C_GetSessionInfo(victim, &info), CKR_SESSION_HANDLE_INVALID);
	/* ... and the rest of the token still works. */
	CK_SESSION_HANDLE other = fixture_open_session(slot, false);
	assert_int_equal(F->C_CloseSession(other), CKR_OK);

	FILE *fp = fopen(gate, "w");
	assert_non_null(fp);
	fclose(fp);
	assert_int_equal(pthread_join(signer, NULL), 0);
	assert_int_equal(pthread_join(poller, NULL), 0);
	assert_int_equal(pthread_join(closer, NULL), 0);
	assert_int_equal(w.rv, CKR_OK); /* the signer said yes before the close ended it */
	verifies(pub, doc, sizeof(doc) - 1, w.sig, w.len);
	/* The queued call ran before the close or was turned away by it. */
	assert_true(p.rv == CKR_OK || p.rv == CKR_SESSION_HANDLE_INVALID);
	assert_int_equal(c.rv, CKR_OK);
}

/* --- the sign context ------------------------------------------------------ */

static CK_OBJECT_HANDLE context_object(CK_SESSION_HANDLE in, const char *title, const void *value, size_t len,
				       bool confidential)
{
	CK_OBJECT_CLASS data = CKO_DATA;
	CK_BBOOL no = CK_FALSE, conf = confidential ? CK_TRUE : CK_FALSE;
	CK_ATTRIBUTE t[] = {
		{ CKA_CLASS, &data, sizeof(data) },
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_APPLICATION, (void *)KT_SIGN_CONTEXT_APPLICATION, strlen(KT_SIGN_CONTEXT_APPLICATION) },
		{ CKA_LABEL, (void *)title, strlen(title) },
		{ CKA_VALUE, (void *)value, len },
		{ CKA_KT_CONFIDENTIAL, &conf, sizeof(conf) },
	};
	CK_OBJECT_HANDLE h;
	assert_int_equal(F->C_CreateObject(in, t, sizeof(t) / sizeof(t[0]), &h), CKR_OK);
	return h;
}

static void sha256(const void *p, size_t n, CK_BYTE out[32])
{
	unsigned int len = 0;
	assert_true(EVP_Digest(p, n, out, &len, EVP_sha256(), NULL));
}

static CK_RV sign_with(CK_OBJECT_HANDLE priv, CK_MECHANISM_TYPE mech, const void *data, size_t len)
{
	CK_MECHANISM m = { mech, NULL, 0 };
	CK_BYTE sig[600];
	CK_ULONG n = sizeof(sig);
	CK_RV rv = F->C_SignInit(s, &m, priv);
	if (rv != CKR_OK)
		return rv;
	assert_int_equal(F->C_Login(s, CKU_CONTEXT_SPECIFIC, FX_PIN(FX_USER_PIN)), CKR_OK);
	return F->C_Sign(s, (CK_BYTE_PTR)data, len, sig, &n);
}

/* The person sees the title and the document an application hands over,
 * also when the key only receives its hash; a hash of something else is
 * refused before anyone is asked. */
static void test_sign_context_shown_and_checked(void **state)
{
	CK_OBJECT_HANDLE pub, priv, rsa_pub, rsa;
	CK_BYTE h[32], other[32], info[19 + 32];
	keypair("person key", &pub, &priv);
	context_object(s, "Contract 17.txt", doc, sizeof(doc) - 1, false);
	sha256(doc, sizeof(doc) - 1, h);
	sha256("something else", 14, other);

	/* The document itself, with a hash-and-sign mechanism. */
	assert_int_equal(sign_with(priv, CKM_ECDSA_SHA256, doc, sizeof(doc) - 1), CKR_OK);
	char *a = certfix_read(asked);
	assert_non_null(strstr(a, "Contract 17.txt"));
	assert_non_null(strstr(a, doc));
	free(a);

	/* Its hash, with a mechanism that signs a hash: the dialog still
	 * shows the document. */
	assert_int_equal(sign_with(priv, CKM_ECDSA, h, sizeof(h)), CKR_OK);
	assert_int_equal(questions(), 2);
	a = certfix_read(asked);
	assert_int_equal(certfix_count(a, doc), 4); /* question and notice, twice */
	assert_null(strstr(a, "hash")); /* no "only a hash" warning: the document was shown */
	free(a);

	/* Another hash, another document: refused, nobody asked, audited. */
	assert_int_equal(sign_with(priv, CKM_ECDSA, other, sizeof(other)), CKR_DATA_INVALID);
	assert_int_equal(sign_with(priv, CKM_ECDSA_SHA256, "Contract 18", 11), CKR_DATA_INVALID);
	assert_int_equal(questions(), 2);
	/* The operation is over after the refusal. */
	CK_BYTE sig[80];
	CK_ULONG n = sizeof(sig);
	assert_int_equal(F->C_Sign(s, h, sizeof(h), sig, &n), CKR_OPERATION_NOT_INITIALIZED);
	char *log = certfix_read(audit);
	assert_int_equal(certfix_count(log, "\"decision\":\"refused\""), 2);
	free(log);

	/* CKM_RSA_PKCS receives a DigestInfo: SHA-256's prefix, then the hash. */
	assert_int_equal(fixture_gen_rsa(s, 2048, &rsa_pub, &rsa), CKR_OK);
	static const CK_BYTE prefix[19] = { 0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
					    0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20 };
	memcpy(info, prefix, sizeof(prefix));
	memcpy(info + sizeof(prefix), h, sizeof(h));
	assert_int_equal(sign_with(rsa, CKM_RSA_PKCS, info, sizeof(info)), CKR_OK);
	info[sizeof(info) - 1] ^= 1;
	assert_int_equal(sign_with(rsa, CKM_RSA_PKCS, info, sizeof(info)), CKR_DATA_INVALID);
	/* A bare hash is not a DigestInfo. */
	assert_int_equal(sign_with(rsa, CKM_RSA_PKCS, h, sizeof(h)), CKR_DATA_INVALID);
}

/* Applications sign structures that carry the document's hash (CMS
 * signed attributes raw, XML signatures in base64); a package of
 * documents is signed when every one of them is covered. */
static void test_sign_context_package(void **state)
{
	static const char annex[] = "Annex A: schedule of payments.";
	CK_OBJECT_HANDLE pub, priv;
	CK_BYTE h1[32], h2[32];
	unsigned char b64[64];
	char signed_info[400];
	keypair("person key", &pub, &priv);
	context_object(s, "contract.txt", doc, sizeof(doc) - 1, false);
	context_object(s, "annex.txt", annex, sizeof(annex) - 1, false);
	sha256(doc, sizeof(doc) - 1, h1);
	sha256(annex, sizeof(annex) - 1, h2);

	/* An XML SignedInfo naming both documents' digests. */
	EVP_EncodeBlock(b64, h1, 32);
	int n = snprintf(signed_info, sizeof(signed_info), "<SignedInfo><DigestValue>%s</DigestValue>", b64);
	EVP_EncodeBlock(b64, h2, 32);
	n += snprintf(signed_info + n, sizeof(signed_info) - (size_t)n, "<DigestValue>%s</DigestValue></SignedInfo>", b64);
	assert_int_equal(sign_with(priv, CKM_ECDSA_SHA256, signed_info, (size_t)n), CKR_OK);
	char *a = certfix_read(asked);
	assert_non_null(strstr(a, "2 documents: contract.txt"));
	assert_non_null(strstr(a, "annex.txt"));
	free(a);

	/* CMS-like signed attributes carrying the raw hash of one only. */
	CK_BYTE attrs[64] = { 0x31, 0x2f, 0x04, 0x20 };
	memcpy(attrs + 4, h1, 32);
	assert_int_equal(sign_with(priv, CKM_ECDSA_SHA256, attrs, 36), CKR_DATA_INVALID);
	assert_int_equal(questions(), 1);
}

/* Only the signing session's own context counts: another session's
 * documents never reach this dialog. */
static void test_sign_context_other_session(void **state)
{
	CK_OBJECT_HANDLE pub, priv;
	CK_SESSION_HANDLE other = fixture_open_session(slot, false);
	keypair("person key", &pub, &priv);
	context_object(other, "not mine.txt", "some other text", 15, false);
	assert_int_equal(sign_with(priv, CKM_ECDSA_SHA256, doc, sizeof(doc) - 1), CKR_OK);
	char *a = certfix_read(asked);
	assert_null(strstr(a, "not mine"));
	assert_non_null(strstr(a, doc));
	free(a);
}

/* strict: a hash-only mechanism on a confirm key needs a sign context. */
static void test_strict_policy(void **state)
{
	CK_OBJECT_HANDLE pub, priv, seal_pub, seal;
	CK_BYTE h[32];
	CK_MECHANISM m = { CKM_ECDSA, NULL, 0 };
	char conf[sizeof(base_conf) + 32];
	snprintf(conf, sizeof(conf), "strict = yes\n%s", base_conf);
	assert_int_equal(certfix_reinit(conf), CKR_OK);
	slot = fixture_slot_by_label("activation");
	s = fixture_open_user_session(slot);
	keypair("person key", &pub, &priv);
	keypair("seal", &seal_pub, &seal);
	sha256(doc, sizeof(doc) - 1, h);

	assert_int_equal(F->C_SignInit(s, &m, priv), CKR_KEY_FUNCTION_NOT_PERMITTED);
	/* Hash-and-sign mechanisms see the document: allowed. */
	assert_int_equal(sign_with(priv, CKM_ECDSA_SHA256, doc, sizeof(doc) - 1), CKR_OK);
	/* Seals are not persons: strict does not apply. */
	CK_BYTE sig[80];
	CK_ULONG n = sizeof(sig);
	assert_int_equal(F->C_SignInit(s, &m, seal), CKR_OK);
	assert_int_equal(F->C_Sign(s, h, sizeof(h), sig, &n), CKR_OK);
	/* With the document handed over, the hash may be signed. */
	context_object(s, "contract.txt", doc, sizeof(doc) - 1, false);
	assert_int_equal(sign_with(priv, CKM_ECDSA, h, sizeof(h)), CKR_OK);
	assert_int_equal(questions(), 2);
}

/* A confidential document leaves no digest in the audit log. */
static void test_confidential_document(void **state)
{
	CK_OBJECT_HANDLE pub, priv, ctx;
	CK_BYTE h[32];
	char hex[65];
	keypair("person key", &pub, &priv);
	sha256(doc, sizeof(doc) - 1, h);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", h[i]);

	ctx = context_object(s, "secret.txt", doc, sizeof(doc) - 1, true);
	assert_int_equal(sign_with(priv, CKM_ECDSA_SHA256, doc, sizeof(doc) - 1), CKR_OK);
	char *log = certfix_read(audit);
	assert_int_equal(certfix_count(log, "\"decision\":\"signed\""), 1);
	assert_null(strstr(log, "\"sha256\""));
	assert_null(strstr(log, hex));
	free(log);
	/* The signer still saw it. */
	char *a = certfix_read(asked);
	assert_non_null(strstr(a, doc));
	free(a);

	/* Not confidential: the digest is recorded. */
	assert_int_equal(F->C_DestroyObject(s, ctx), CKR_OK);
	assert_int_equal(sign_with(priv, CKM_ECDSA_SHA256, doc, sizeof(doc) - 1), CKR_OK);
	log = certfix_read(audit);
	assert_int_equal(certfix_count(log, hex), 1);
	free(log);
}

struct mutating_signer {
	CK_BYTE buf[sizeof(doc)];
	CK_BYTE sig[80];
	CK_ULONG len;
	CK_RV rv;
};

static void *sign_buffer(void *arg)
{
	struct mutating_signer *w = arg;
	w->len = sizeof(w->sig);
	w->rv = F->C_Sign(s, w->buf, sizeof(doc) - 1, w->sig, &w->len);
	return NULL;
}

/* What the signer saw is what gets signed: the caller's buffer changing
 * while the question is on the screen changes nothing. */
static void test_mutation_after_prompt(void **state)
{
	CK_OBJECT_HANDLE pub, priv;
	char gate[PATH_MAX];
	pthread_t th;
	struct mutating_signer w;
	keypair("person key", &pub, &priv);
	snprintf(gate, sizeof(gate), "%s/answer-now", fx.dir);
	signer_waits_for(gate);
	memcpy(w.buf, doc, sizeof(doc));

	sign_init(priv, true);
	assert_int_equal(pthread_create(&th, NULL, sign_buffer, &w), 0);
	for (int i = 0; i < 2000 && questions() == 0; i++)
		usleep(10000);
	assert_int_equal(questions(), 1);
	memcpy(w.buf, "Contract 17: the Contractor translates 40 pages for 99 999 KGS.", sizeof(doc) - 1);
	FILE *fp = fopen(gate, "w");
	assert_non_null(fp);
	fclose(fp);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(w.rv, CKR_OK);
	/* The signature is over the document shown, not the changed buffer. */
	verifies(pub, doc, sizeof(doc) - 1, w.sig, w.len);
	CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
	assert_int_equal(F->C_VerifyInit(s, &m, pub), CKR_OK);
	assert_int_equal(F->C_Verify(s, w.buf, sizeof(doc) - 1, w.sig, w.len), CKR_SIGNATURE_INVALID);
	char *a = certfix_read(asked);
	assert_non_null(strstr(a, doc));
	assert_null(strstr(a, "99 999"));
	free(a);
}

/* fixture_slot_by_label without cmocka's asserts, for a forked child. */
static CK_SLOT_ID slot_by_label_raw(const char *label)
{
	CK_SLOT_ID slots[64];
	CK_ULONG n = 64;
	CK_TOKEN_INFO ti;
	size_t len = strlen(label);
	if (F->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
		return (CK_SLOT_ID)-1;
	for (CK_ULONG i = 0; i < n; i++)
		if (F->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, label, len) == 0 &&
		    ti.label[len] == ' ')
			return slots[i];
	return (CK_SLOT_ID)-1;
}

/* A token seal key, visible to other processes using the token. */
static void token_seal(CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
	const char *label = "seal";
	CK_ATTRIBUTE pub_t[] = { { CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len },
				 { CKA_TOKEN, &fx_true, sizeof(fx_true) },
				 { CKA_LABEL, (void *)label, strlen(label) } };
	CK_ATTRIBUTE priv_t[] = { { CKA_TOKEN, &fx_true, sizeof(fx_true) },
				  { CKA_LABEL, (void *)label, strlen(label) } };
	assert_int_equal(fixture_gen_keypair(s, CKM_EC_KEY_PAIR_GEN, pub_t, 3, priv_t, 2, pub, priv), CKR_OK);
}

/* A seal's record waits for its batch, but not for ever: about a second
 * later it is in the log, with no further call into the module. */
static void test_seal_record_written_when_idle(void **state)
{
	CK_OBJECT_HANDLE pub, seal;
	CK_BYTE sig[80];
	CK_ULONG len = sizeof(sig);
	keypair("seal", &pub, &seal);
	sign_init(seal, false);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len), CKR_OK);
	int n = 0;
	for (int i = 0; i < 1000 && n == 0; i++) {
		char *log = certfix_read(audit);
		n = certfix_count(log, "\"decision\":\"signed\"");
		free(log);
		if (n == 0)
			usleep(10000);
	}
	assert_int_equal(n, 1);
}

/* Java never calls C_Finalize: a process that signs with a seal and exits
 * still leaves its record, with or without our flusher thread. */
static void test_seal_record_survives_exit_without_finalize(void **state)
{
	FX_FILE_TOKEN_ONLY("a device's object handles are not the parent's in a child that initialises again");
	CK_OBJECT_HANDLE pub, seal;
	token_seal(&pub, &seal);
	for (int threads = 1; threads >= 0; threads--) {
		pid_t child = fork();
		assert_true(child >= 0);
		if (child == 0) {
			CK_C_INITIALIZE_ARGS args = { .flags = CKF_OS_LOCKING_OK };
			if (!threads)
				args.flags |= CKF_LIBRARY_CANT_CREATE_OS_THREADS;
			CK_SESSION_HANDLE cs;
			CK_MECHANISM m = { CKM_ECDSA_SHA256, NULL, 0 };
			CK_BYTE sig[80];
			CK_ULONG len = sizeof(sig);
			if (F->C_Initialize(&args) != CKR_OK ||
			    F->C_OpenSession(slot_by_label_raw("activation"), CKF_SERIAL_SESSION, NULL, NULL, &cs) != CKR_OK ||
			    F->C_Login(cs, CKU_USER, FX_PIN(FX_USER_PIN)) != CKR_OK || F->C_SignInit(cs, &m, seal) != CKR_OK ||
			    F->C_Sign(cs, (CK_BYTE_PTR)doc, sizeof(doc) - 1, sig, &len) != CKR_OK)
				_exit(3);
			exit(0); /* no C_Finalize, atexit handlers run */
		}
		int status;
		assert_int_equal(waitpid(child, &status, 0), child);
		assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
		char pid[48];
		snprintf(pid, sizeof(pid), "\"pid\":%ld,\"decision\":\"signed\"", (long)child);
		char *log = certfix_read(audit);
		assert_int_equal(certfix_count(log, pid), 1);
		free(log);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_policy_attributes, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_confirmed_signature, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_refused_and_canceled, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_multi_part_asks_once, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_dialog_stands_in_for_context_login, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_automatic_key_context_login, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_automatic_never_asks, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_deny_backend, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_others_work_while_signer_waits, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_close_while_signer_waits, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_sign_context_shown_and_checked, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_sign_context_package, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_sign_context_other_session, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_strict_policy, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_confidential_document, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_mutation_after_prompt, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_seal_record_written_when_idle, setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_seal_record_survives_exit_without_finalize, setup, fixture_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
