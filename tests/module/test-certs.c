/*
 * Module tests: qualified certificates through the real module (issue 3).
 *
 * The test PKI (tests/pki/gen.sh) is made once per run.  Each test gets a
 * fresh token; end-entity keys are generated on it, their public keys issued
 * a certificate by tests/pki/issue.sh, and the certificate imported with the
 * key's CKA_ID, as a certification centre's enrolment does.  Certificates
 * whose keys gen.sh made (revoked, suspended, rogue, legacy) are imported
 * with their private keys.  Then:
 *   - every standard attribute against the DER as OpenSSL reads it, and the
 *     CKA_KT_* values the law asks for;
 *   - signing under each configuration of trust list and CRLs: what signs
 *     (and verifies) and what is refused, with the verdict on stderr;
 *   - a length query never runs the checks, the real call does;
 *   - a qualified certificate with the key's id but another key refuses;
 *   - templates that contradict the DER, malformed DER, read-only CKA_KT_*;
 *   - the public key object made beside a certificate.
 * koltamga only: SoftHSM2 has none of this.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "certfix.h"
#include "fixture.h"
#include "koltamga/pkcs11v.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define F      (fx.f)
#define KT_ARC "2.25.276476776255599631008025005096289209468"

static char pki[PATH_MAX]; /* the generated test PKI */
static char srcdir[PATH_MAX], srcdir_abs[PATH_MAX];

static CK_SLOT_ID slot;
static CK_SESSION_HANDLE s; /* R/W, user logged in */

static const CK_BYTE msg[] = "Salyk deklaraciyasy 2024: signed with a qualified certificate.";

/* --- configurations -------------------------------------------------------- */

enum conf { CONF_NONE, CONF_TRUST, CONF_STALE, CONF_STALE_ALLOW, CONF_TRUST_LEGACY_CRL };
static enum conf conf_none = CONF_NONE, conf_trust = CONF_TRUST, conf_stale = CONF_STALE,
		 conf_stale_allow = CONF_STALE_ALLOW;

/* Qualified keys (confirm policy), the signer's "yes" given by the
 * scripted command backend: these tests are about the certificate checks,
 * tests/module/test-activation.c about the confirmation. */
static char *conf_text(enum conf c)
{
	static char text[4 * PATH_MAX];
	char *p = text;
	size_t room = sizeof(text);
	int n = snprintf(p, room,
			 "sign_policy = confirm\nconfirm = command\nconfirm_program = %s/tests/pinentry/fake-confirm.sh\n",
			 srcdir);
	p += n;
	room -= (size_t)n;

	switch (c) {
	case CONF_NONE:
		break;
	case CONF_TRUST:
		snprintf(p, room, "trust_list = %s/trust-list.conf\ncrl_dir = %s/crl\n", pki, pki);
		break;
	case CONF_TRUST_LEGACY_CRL:
		snprintf(p, room,
			 "trust_list = %s/trust-list.conf\ncrl_dir = %s/crl\ncrl_file = %s/legacy-ca.crl\n",
			 pki, pki, pki);
		break;
	case CONF_STALE:
		snprintf(p, room, "trust_list = %s/trust-list.conf\ncrl_dir = %s/crl-stale\n", pki,
			 pki);
		break;
	case CONF_STALE_ALLOW:
		snprintf(
		    p, room,
		    "trust_list = %s/trust-list.conf\ncrl_dir = %s/crl-stale\nrevocation_unknown = allow\n",
		    pki, pki);
		break;
	}
	return text;
}

/* --- shell ------------------------------------------------------------------- */

__attribute__((format(printf, 1, 2))) static int run(const char *fmt, ...)
{
	char cmd[8192];
	va_list ap;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	st = system(cmd);
	if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "command failed (%d): %s\n", st, cmd);
		return -1;
	}
	return 0;
}

static int group_setup(void **state)
{
	const char *tmp = getenv("TMPDIR"), *src = getenv("KOLTAMGA_SRCDIR");

	(void)state;
	fixture_load();
	if (fx.softhsm)
		return 0; /* every test skips */
	snprintf(srcdir, sizeof(srcdir), "%s", src && *src ? src : ".");
	if (!realpath(srcdir, srcdir_abs))
		return -1;
	snprintf(srcdir, sizeof(srcdir), "%s", srcdir_abs);
	snprintf(pki, sizeof(pki), "%s/kt-certs-pki-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(pki))
		return -1;
	if (run("sh '%s/tests/pki/gen.sh' '%s'", srcdir, pki) != 0)
		return -1;
	/* gen.sh makes no CRL for the legacy centre: make one here, so the
	 * legacy certificate can be checked with a known revocation status. */
	if (run("cd '%s' && KT_CADIR='%s/.ca/legacy-ca' OPENSSL_CONF='%s/tests/pki/openssl.cnf' openssl ca "
		"-config '%s/tests/pki/openssl.cnf' -cert legacy-ca.pem -keyfile legacy-ca.key -gencrl "
		"-crlexts crl_ext -crldays 7 -out legacy-ca.crl 2>/dev/null",
		pki, pki, srcdir, srcdir) != 0)
		return -1;
	/* The scripted signer says yes to every confirmation. */
	char conf[PATH_MAX + 32];
	snprintf(conf, sizeof(conf), "%s/fake-confirm.conf", pki);
	FILE *fp = fopen(conf, "w");
	if (!fp || fputs("code=0\n", fp) < 0 || fclose(fp) != 0)
		return -1;
	setenv("KT_FAKE_CONFIRM", conf, 1);
	return 0;
}

static int rm_rf(const char *dir)
{
	return dir[0] ? run("rm -rf '%s'", dir) : 0;
}

static int group_teardown(void **state)
{
	(void)state;
	if (!getenv("KT_KEEP_PKI"))
		rm_rf(pki);
	return 0;
}

static int setup(void **state)
{
	enum conf c = state && *state ? *(enum conf *)*state : CONF_NONE;
	CK_RV rv;

	if (fixture_setup_uninit(NULL) != 0)
		return -1;
	if (fx.softhsm)
		return fixture_initialize() == CKR_OK ? 0 : -1;
	if (certfix_conf(conf_text(c)) != 0)
		return -1;
	rv = fixture_initialize();
	if (rv != CKR_OK) {
		fprintf(stderr, "C_Initialize: 0x%lx\n", rv);
		return -1;
	}
	slot = fixture_init_token_label("certs");
	s = fixture_open_user_session(slot);
	return 0;
}

static int teardown(void **state)
{
	return fixture_teardown(state);
}

/* After certfix_reinit: the same token, a new session. */
static void reopen(void)
{
	slot = fixture_slot_by_label("certs");
	s = fixture_open_user_session(slot);
}

static void reconfigure(enum conf c)
{
	assert_int_equal(certfix_reinit(conf_text(c)), CKR_OK);
	reopen();
}

/* --- files and OpenSSL ------------------------------------------------------ */

static void pki_path(char *out, size_t n, const char *name)
{
	int k = snprintf(out, n, "%s/%s", pki, name);
	assert_true(k > 0 && (size_t)k < n);
}

static X509 *load_pem_cert(const char *path)
{
	FILE *fp = fopen(path, "r");
	X509 *x;

	assert_non_null(fp);
	x = PEM_read_X509(fp, NULL, NULL, NULL);
	fclose(fp);
	assert_non_null(x);
	return x;
}

static X509 *pki_cert(const char *name)
{
	char path[PATH_MAX];
	char file[256];

	snprintf(file, sizeof(file), "%s.pem", name);
	pki_path(path, sizeof(path), file);
	return load_pem_cert(path);
}

static EVP_PKEY *pki_key(const char *name)
{
	char path[PATH_MAX], file[256];
	FILE *fp;
	EVP_PKEY *k;

	snprintf(file, sizeof(file), "%s.key", name);
	pki_path(path, sizeof(path), file);
	fp = fopen(path, "r");
	assert_non_null(fp);
	k = PEM_read_PrivateKey(fp, NULL, NULL, NULL);
	fclose(fp);
	assert_non_null(k);
	return k;
}

struct der {
	unsigned char *p;
	CK_ULONG len;
};

static struct der der_of(X509 *x)
{
	struct der d = {NULL, 0};
	int n = i2d_X509(x, &d.p);

	assert_true(n > 0);
	d.len = (CK_ULONG)n;
	return d;
}

static void der_free(struct der *d)
{
	OPENSSL_free(d->p);
	d->p = NULL;
	d->len = 0;
}

/* --- attributes ------------------------------------------------------------- */

static CK_RV attr_rv(CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type)
{
	CK_ATTRIBUTE a = {type, NULL, 0};

	return F->C_GetAttributeValue(s, o, &a, 1);
}

static void bytes_are_(CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type, const void *want, size_t n,
		       const char *what)
{
	CK_ULONG len = 0;
	void *got = fixture_get_attr(s, o, type, &len);

	if (!got)
		fail_msg("%s (0x%lx): not readable (rv 0x%lx)", what, type, attr_rv(o, type));
	if (len != n || memcmp(got, want, n) != 0) {
		fprintf(stderr, "%s: got %lu bytes '%.*s', want %zu bytes '%.*s'\n", what, len, (int)len,
			(char *)got, n, (int)n, (const char *)want);
		free(got);
		fail_msg("%s (0x%lx): wrong value", what, type);
	}
	free(got);
}
#define bytes_are(o, t, w, n) bytes_are_((o), (t), (w), (n), #t)
#define text_is(o, t, str)    bytes_are_((o), (t), (str), strlen(str), #t)

static void ulong_is_(CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type, CK_ULONG want, const char *what)
{
	CK_ULONG v = 0xdeadbeef;
	CK_ATTRIBUTE a = {type, &v, sizeof(v)};
	CK_RV rv = F->C_GetAttributeValue(s, o, &a, 1);

	if (rv != CKR_OK)
		fail_msg("%s: rv 0x%lx", what, rv);
	assert_int_equal(a.ulValueLen, sizeof(CK_ULONG));
	if (v != want)
		fail_msg("%s: got 0x%lx, want 0x%lx", what, v, want);
}
#define ulong_is(o, t, w) ulong_is_((o), (t), (w), #t)

static void bool_is_(CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type, CK_BBOOL want, const char *what)
{
	CK_BBOOL b = fixture_get_bool(s, o, type);

	if (b != want)
		fail_msg("%s: got %d, want %d", what, b, want);
}
#define bool_is(o, t, w) bool_is_((o), (t), (w), #t)

/* An attribute the object does not have. */
static void absent_(CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type, const char *what)
{
	CK_ULONG v;
	CK_ATTRIBUTE a = {type, NULL, 0};
	CK_RV rv = F->C_GetAttributeValue(s, o, &a, 1);

	if (rv != CKR_ATTRIBUTE_TYPE_INVALID)
		fail_msg("%s should be absent: rv 0x%lx, length %ld", what, rv, (long)a.ulValueLen);
	assert_int_equal(a.ulValueLen, CK_UNAVAILABLE_INFORMATION);
	/* and a search on it finds nothing */
	a.pValue = &v;
	a.ulValueLen = 0;
	assert_int_equal(fixture_count_objects(s, &a, 1), 0);
}
#define absent(o, t) absent_((o), (t), #t)

static CK_ULONG count(CK_OBJECT_CLASS cls, const char *id)
{
	CK_ATTRIBUTE t[] = {
	    {CKA_CLASS, &cls, sizeof(cls)},
	    {CKA_ID, (void *)id, id ? strlen(id) : 0},
	};

	return fixture_count_objects(s, t, id ? 2 : 1);
}

static CK_OBJECT_HANDLE find_one(CK_OBJECT_CLASS cls, const char *id)
{
	CK_ATTRIBUTE t[] = {
	    {CKA_CLASS, &cls, sizeof(cls)},
	    {CKA_ID, (void *)id, strlen(id)},
	};
	CK_OBJECT_HANDLE h[2];
	CK_ULONG n = 0;

	assert_int_equal(F->C_FindObjectsInit(s, t, 2), CKR_OK);
	assert_int_equal(F->C_FindObjects(s, h, 2, &n), CKR_OK);
	assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);
	if (n != 1)
		fail_msg("%lu objects of class %lu with id %s, want 1", n, cls, id);
	return h[0];
}

/* --- keys and certificates on the token --------------------------------------- */

static void gen_key(const char *id, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
	CK_ATTRIBUTE pt[] = {
	    {CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len},
	    {CKA_TOKEN, &fx_true, 1},
	    {CKA_ID, (void *)id, strlen(id)},
	    {CKA_LABEL, (void *)id, strlen(id)},
	};
	CK_ATTRIBUTE vt[] = {
	    {CKA_TOKEN, &fx_true, 1},
	    {CKA_ID, (void *)id, strlen(id)},
	    {CKA_LABEL, (void *)id, strlen(id)},
	};

	assert_int_equal(
	    fixture_gen_keypair(s, CKM_EC_KEY_PAIR_GEN, pt, FX_COUNT(pt), vt, FX_COUNT(vt), pub, priv),
	    CKR_OK);
}

/* An EC P-256 private key from OpenSSL onto the token (CKA_EC_PARAMS and the
 * scalar as CKA_VALUE), with this id; no public key object. */
static CK_OBJECT_HANDLE import_private_key(EVP_PKEY *k, const char *id)
{
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_KEY_TYPE kt = CKK_EC;
	BIGNUM *d = NULL;
	char group[64];
	CK_BYTE value[32];
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;

	assert_int_equal(EVP_PKEY_get_base_id(k), EVP_PKEY_EC);
	assert_int_equal(
	    EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), NULL), 1);
	assert_string_equal(group, "prime256v1");
	assert_int_equal(EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_PRIV_KEY, &d), 1);
	assert_int_equal(BN_bn2binpad(d, value, sizeof(value)), (int)sizeof(value));
	BN_clear_free(d);

	CK_ATTRIBUTE t[] = {
	    {CKA_CLASS, &cls, sizeof(cls)},
	    {CKA_KEY_TYPE, &kt, sizeof(kt)},
	    {CKA_TOKEN, &fx_true, 1},
	    {CKA_PRIVATE, &fx_true, 1},
	    {CKA_SENSITIVE, &fx_true, 1},
	    {CKA_SIGN, &fx_true, 1},
	    {CKA_ID, (void *)id, strlen(id)},
	    {CKA_LABEL, (void *)id, strlen(id)},
	    {CKA_EC_PARAMS, (void *)fx_p256, fx_p256_len},
	    {CKA_VALUE, value, sizeof(value)},
	};
	assert_int_equal(F->C_CreateObject(s, t, FX_COUNT(t), &h), CKR_OK);
	OPENSSL_cleanse(value, sizeof(value));
	return h;
}

/* The brief's template: class, type, token, id, label, value; nothing else. */
static CK_RV create_cert(const char *id, const char *label, const void *der, CK_ULONG len,
			 CK_OBJECT_HANDLE *h)
{
	CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
	CK_CERTIFICATE_TYPE ct = CKC_X_509;
	CK_ATTRIBUTE t[] = {
	    {CKA_CLASS, &cls, sizeof(cls)}, {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
	    {CKA_TOKEN, &fx_true, 1},	    {CKA_LABEL, (void *)label, strlen(label)},
	    {CKA_VALUE, (void *)der, len},  {CKA_ID, (void *)id, id ? strlen(id) : 0},
	};

	*h = CK_INVALID_HANDLE;
	return F->C_CreateObject(s, t, id ? FX_COUNT(t) : FX_COUNT(t) - 1, h);
}

static CK_OBJECT_HANDLE import_cert(X509 *x, const char *id)
{
	struct der d = der_of(x);
	CK_OBJECT_HANDLE h;

	assert_int_equal(create_cert(id, id, d.p, d.len, &h), CKR_OK);
	der_free(&d);
	return h;
}

/* A key generated on the token, certified by the test PKI's sub-ca with
 * issue.sh, and the certificate imported beside it. */
struct ee {
	const char *id;
	CK_OBJECT_HANDLE pub, priv, cert;
	X509 *x;
};

static void ee_issue(struct ee *e, const char *profile, const char *id)
{
	CK_ULONG len = 0;
	unsigned char *spki;
	const unsigned char *p;
	EVP_PKEY *k;
	char pub_pem[PATH_MAX], cert_pem[PATH_MAX];
	FILE *fp;

	memset(e, 0, sizeof(*e));
	e->id = id;
	gen_key(id, &e->pub, &e->priv);
	spki = fixture_get_attr(s, e->pub, CKA_PUBLIC_KEY_INFO, &len);
	assert_non_null(spki);
	p = spki;
	k = d2i_PUBKEY(NULL, &p, (long)len);
	assert_non_null(k);
	free(spki);
	snprintf(pub_pem, sizeof(pub_pem), "%s/%s.pub.pem", fx.dir, id);
	snprintf(cert_pem, sizeof(cert_pem), "%s/%s.pem", fx.dir, id);
	fp = fopen(pub_pem, "w");
	assert_non_null(fp);
	assert_int_equal(PEM_write_PUBKEY(fp, k), 1);
	fclose(fp);
	EVP_PKEY_free(k);
	assert_int_equal(
	    run("sh '%s/tests/pki/issue.sh' '%s' %s '%s' '%s'", srcdir, pki, profile, pub_pem, cert_pem), 0);
	e->x = load_pem_cert(cert_pem);
	e->cert = import_cert(e->x, id);
}

/* A certificate and key gen.sh made (revoked, suspended, rogue, legacy...):
 * the private key imported, then the certificate. */
static void ee_import(struct ee *e, const char *name, const char *id)
{
	EVP_PKEY *k = pki_key(name);

	memset(e, 0, sizeof(*e));
	e->id = id;
	e->priv = import_private_key(k, id);
	EVP_PKEY_free(k);
	e->x = pki_cert(name);
	e->cert = import_cert(e->x, id);
	e->pub = find_one(CKO_PUBLIC_KEY, id); /* the companion */
}

static void ee_free(struct ee *e)
{
	X509_free(e->x);
	e->x = NULL;
}

/* A certificate that is not qualified: self-signed, no QC statements, made
 * here with a key then imported to the token. */
static X509 *self_signed(EVP_PKEY **key)
{
	EVP_PKEY *k = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	X509_NAME *n = X509_NAME_new();
	X509V3_CTX ctx;
	X509_EXTENSION *ext;

	assert_non_null(k);
	assert_non_null(x);
	assert_int_equal(X509_set_version(x, 2), 1);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 77);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)"Self-signed test key", -1,
				   -1, 0);
	X509_set_subject_name(x, n);
	X509_set_issuer_name(x, n);
	X509_NAME_free(n);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 365L * 86400);
	X509_set_pubkey(x, k);
	X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_key_usage, "critical,digitalSignature,nonRepudiation");
	assert_non_null(ext);
	X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	assert_true(X509_sign(x, k, EVP_sha256()) > 0);
	*key = k;
	return x;
}

/* --- signing ------------------------------------------------------------------ */

static bool verifies(X509 *x, const CK_BYTE *sig, CK_ULONG siglen)
{
	EVP_PKEY *k = X509_get0_pubkey(x);
	ECDSA_SIG *es = ECDSA_SIG_new();
	unsigned char *der = NULL;
	int n, ok;
	EVP_MD_CTX *md = EVP_MD_CTX_new();

	assert_int_equal(siglen, 64);
	assert_non_null(k);
	ECDSA_SIG_set0(es, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL));
	n = i2d_ECDSA_SIG(es, &der);
	assert_true(n > 0);
	ok = EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, k) == 1 &&
	     EVP_DigestVerify(md, der, (size_t)n, msg, sizeof(msg) - 1) == 1;
	EVP_MD_CTX_free(md);
	OPENSSL_free(der);
	ECDSA_SIG_free(es);
	return ok;
}

/* C_SignInit plus the per-signature PIN every qualified key asks for. */
static CK_RV sign_init(CK_SESSION_HANDLE h, CK_MECHANISM *m, CK_OBJECT_HANDLE key)
{
	CK_RV rv = F->C_SignInit(h, m, key); /* the real one */
	CK_BBOOL always = CK_FALSE;
	CK_ATTRIBUTE a = { CKA_ALWAYS_AUTHENTICATE, &always, sizeof(always) };
	if (rv == CKR_OK && F->C_GetAttributeValue(h, key, &a, 1) == CKR_OK && always)
		rv = F->C_Login(h, CKU_CONTEXT_SPECIFIC, FX_PIN(FX_USER_PIN));
	return rv;
}

/* C_SignInit, a length query (always answered, no checks), the real call.
 * Returns the real call's answer; stderr of the whole in *log. */
static CK_RV try_sign(CK_OBJECT_HANDLE priv, CK_BYTE *sig, CK_ULONG *siglen, char **log)
{
	CK_MECHANISM m = {CKM_ECDSA_SHA256, NULL, 0};
	CK_ULONG len = 0;
	CK_RV rv;

	certfix_stderr_begin();
	assert_int_equal(sign_init(s, &m, priv), CKR_OK);
	rv = F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg) - 1, NULL, &len);
	if (rv != CKR_OK) {
		*log = certfix_stderr_end();
		fail_msg("length query: rv 0x%lx", rv);
	}
	assert_int_equal(len, 64);
	*siglen = len;
	rv = F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg) - 1, sig, siglen);
	*log = certfix_stderr_end();
	if (rv != CKR_OK) {
		/* A refusal ends the operation like any other error. */
		CK_ULONG l2 = 64;
		assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg) - 1, sig, &l2),
				 CKR_OPERATION_NOT_INITIALIZED);
	}
	return rv;
}

static void signs_(CK_OBJECT_HANDLE priv, X509 *x, const char *what)
{
	CK_BYTE sig[80];
	CK_ULONG siglen = sizeof(sig);
	char *log = NULL;
	CK_RV rv = try_sign(priv, sig, &siglen, &log);

	if (rv != CKR_OK)
		fail_msg("%s: C_Sign = 0x%lx, want CKR_OK (%s)", what, rv, log);
	if (strstr(log, "signature refused"))
		fail_msg("%s: signed, but a refusal was logged: %s", what, log);
	free(log);
	if (x && !verifies(x, sig, siglen))
		fail_msg("%s: the signature does not verify with the certificate's key", what);
}
#define signs(priv, x) signs_((priv), (x), #priv)

/* Refused with CKR_KEY_FUNCTION_NOT_PERMITTED and this text in the log line. */
static void refused_(CK_OBJECT_HANDLE priv, const char *why, const char *what)
{
	CK_BYTE sig[80];
	CK_ULONG siglen = sizeof(sig);
	char *log = NULL;
	CK_RV rv = try_sign(priv, sig, &siglen, &log);

	if (rv != CKR_KEY_FUNCTION_NOT_PERMITTED)
		fail_msg("%s: C_Sign = 0x%lx, want CKR_KEY_FUNCTION_NOT_PERMITTED (%s)", what, rv, log);
	if (!strstr(log, why))
		fail_msg("%s: refused, but no '%s' in the log: '%s'", what, why, log);
	free(log);
}
#define refused(priv, why) refused_((priv), (why), #priv)

/* --- (a) attributes ------------------------------------------------------------- */

static void date_of(const ASN1_TIME *t, char out[9], char full[16])
{
	struct tm tm;

	assert_int_equal(ASN1_TIME_to_tm(t, &tm), 1);
	strftime(out, 9, "%Y%m%d", &tm);
	strftime(full, 16, "%Y%m%d%H%M%SZ", &tm);
}

static void sha1_of(const void *p, size_t n, unsigned char out[20])
{
	assert_non_null(SHA1(p, n, out));
}

/* Every standard attribute against the DER as OpenSSL reads it. */
static void standard_ok(const struct ee *e, const char *issuer_name)
{
	X509 *x = e->x, *issuer = pki_cert(issuer_name);
	struct der d = der_of(x);
	unsigned char *enc = NULL, h[20];
	int n;
	char nb[9], na[9], nbf[16], naf[16];
	const ASN1_BIT_STRING *bits;
	const ASN1_OCTET_STRING *akid;

	ulong_is(e->cert, CKA_CLASS, CKO_CERTIFICATE);
	ulong_is(e->cert, CKA_CERTIFICATE_TYPE, CKC_X_509);
	bytes_are(e->cert, CKA_VALUE, d.p, d.len);
	text_is(e->cert, CKA_ID, e->id);
	text_is(e->cert, CKA_LABEL, e->id);
	bool_is(e->cert, CKA_TOKEN, CK_TRUE);

	n = i2d_X509_NAME(X509_get_subject_name(x), &enc);
	assert_true(n > 0);
	bytes_are(e->cert, CKA_SUBJECT, enc, (size_t)n);
	OPENSSL_free(enc);
	enc = NULL;
	n = i2d_X509_NAME(X509_get_issuer_name(x), &enc);
	assert_true(n > 0);
	bytes_are(e->cert, CKA_ISSUER, enc, (size_t)n);
	/* the issuer's own subject, byte for byte */
	{
		unsigned char *isub = NULL;
		int in = i2d_X509_NAME(X509_get_subject_name(issuer), &isub);
		assert_int_equal(in, n);
		assert_memory_equal(isub, enc, (size_t)n);
		OPENSSL_free(isub);
	}
	OPENSSL_free(enc);
	enc = NULL;
	n = i2d_ASN1_INTEGER(X509_get0_serialNumber(x), &enc);
	assert_true(n > 0);
	assert_int_equal(enc[0], 0x02); /* DER INTEGER with tag and length */
	bytes_are(e->cert, CKA_SERIAL_NUMBER, enc, (size_t)n);
	OPENSSL_free(enc);
	enc = NULL;

	date_of(X509_get0_notBefore(x), nb, nbf);
	date_of(X509_get0_notAfter(x), na, naf);
	bytes_are(e->cert, CKA_START_DATE, nb, 8);
	bytes_are(e->cert, CKA_END_DATE, na, 8);
	text_is(e->cert, CKA_KT_NOT_BEFORE, nbf);
	text_is(e->cert, CKA_KT_NOT_AFTER, naf);

	n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &enc);
	assert_true(n > 0);
	bytes_are(e->cert, CKA_PUBLIC_KEY_INFO, enc, (size_t)n);
	/* the key's own CKA_PUBLIC_KEY_INFO, on both halves */
	bytes_are(e->pub, CKA_PUBLIC_KEY_INFO, enc, (size_t)n);
	bytes_are(e->priv, CKA_PUBLIC_KEY_INFO, enc, (size_t)n);
	OPENSSL_free(enc);
	enc = NULL;

	bits = X509_get0_pubkey_bitstr(x);
	sha1_of(bits->data, (size_t)bits->length, h);
	bytes_are(e->cert, CKA_HASH_OF_SUBJECT_PUBLIC_KEY, h, 20);
	/* The issuer's: the AKI keyIdentifier, here SHA-1 of sub-ca's key. */
	bits = X509_get0_pubkey_bitstr(issuer);
	sha1_of(bits->data, (size_t)bits->length, h);
	akid = X509_get0_authority_key_id(x);
	assert_non_null(akid);
	assert_int_equal(akid->length, 20);
	assert_memory_equal(akid->data, h, 20);
	bytes_are(e->cert, CKA_HASH_OF_ISSUER_PUBLIC_KEY, h, 20);
	ulong_is(e->cert, CKA_NAME_HASH_ALGORITHM, CKM_SHA_1);
	sha1_of(d.p, d.len, h);
	bytes_are(e->cert, CKA_CHECK_VALUE, h, 3);
	ulong_is(e->cert, CKA_CERTIFICATE_CATEGORY, 0);
	bytes_are(e->cert, CKA_KT_ISSUER_KEY_ID, akid->data, 20);

	/* One certificate with this id, one key of each half, found by the
	 * derived attributes too. */
	assert_int_equal(count(CKO_CERTIFICATE, e->id), 1);
	{
		unsigned char *sub = NULL;
		int sn = i2d_X509_NAME(X509_get_subject_name(x), &sub);
		CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
		CK_ATTRIBUTE t[] = {
		    {CKA_CLASS, &cls, sizeof(cls)},
		    {CKA_SUBJECT, sub, (CK_ULONG)sn},
		    {CKA_ID, (void *)e->id, strlen(e->id)},
		};
		assert_int_equal(fixture_count_objects(s, t, FX_COUNT(t)), 1);
		sub[sn - 1] ^= 1; /* another name: no match */
		assert_int_equal(fixture_count_objects(s, t, FX_COUNT(t)), 0);
		OPENSSL_free(sub);
	}
	der_free(&d);
	X509_free(issuer);
}

static const char sign_tool[] = "СКЗИ КолТамга 1.0";
static const char ca_sign_tool[] = "СКЗИ КолТамга-УЦ 2.0";
static const char ca_tool[] = "Программный комплекс УЦ КолТамга 2.0";
static const char ca_sign_tool_cert[] = "Сертификат соответствия № KG-SKZI-0042";
static const char ca_tool_cert[] = "Сертификат соответствия № KG-UC-0017";
static const CK_BYTE sub_ca_serial[] = {0x02, 0x02, 0x10, 0x01}; /* sub-ca's serial 0x1001 */

static void from_sub_ca(CK_OBJECT_HANDLE c)
{
	text_is(c, CKA_KT_ISSUER_NAME, "Тест Удостоверяющий Центр");
	text_is(c, CKA_KT_ISSUER_ADDRESS, "Бишкек");
	text_is(c, CKA_KT_SUBJECT_SIGN_TOOL, sign_tool);
	text_is(c, CKA_KT_ISSUER_SIGN_TOOL, ca_sign_tool);
	text_is(c, CKA_KT_ISSUER_CA_TOOL, ca_tool);
	text_is(c, CKA_KT_ISSUER_SIGN_TOOL_CERT, ca_sign_tool_cert);
	text_is(c, CKA_KT_ISSUER_CA_TOOL_CERT, ca_tool_cert);
	bytes_are(c, CKA_KT_ISSUER_CERT_SERIAL, sub_ca_serial, sizeof(sub_ca_serial));
}

static void person_fields(CK_OBJECT_HANDLE c, const char *cn)
{
	CK_ULONG len = 0;
	CK_DATE *bd;

	text_is(c, CKA_KT_SURNAME, "Асанов");
	text_is(c, CKA_KT_GIVEN_NAMES, "Бакыт Маратович");
	text_is(c, CKA_KT_COMMON_NAME, cn);
	text_is(c, CKA_KT_COUNTRY, "KG");
	text_is(c, CKA_KT_PERSONAL_ID, "PNOKG-12345678901234");
	ulong_is(c, CKA_KT_PERSONAL_ID_KIND, CK_KT_PID_PNO);
	bd = fixture_get_attr(s, c, CKA_KT_BIRTH_DATE, &len);
	assert_non_null(bd);
	assert_int_equal(len, sizeof(CK_DATE));
	assert_memory_equal(bd, "19850314", 8);
	free(bd);
	text_is(c, CKA_KT_BIRTH_PLACE, "Bishkek");
	bool_is(c, CKA_KT_QC_COMPLIANCE, CK_TRUE);
	bool_is(c, CKA_KT_QC_SSCD, CK_TRUE);
	ulong_is(c, CKA_KT_QC_TYPE, CK_KT_QC_TYPE_ESIGN);
	text_is(c, CKA_KT_QC_LEGISLATION, "KG");
	text_is(c, CKA_KT_QC_LIMIT_VALUE, "1000000 KGS");
	ulong_is(c, CKA_KT_HOLDER_TYPE, CK_KT_HOLDER_NATURAL_PERSON);
	text_is(c, CKA_KT_EXT_KEY_USAGE, "1.3.6.1.5.5.7.3.4");
	text_is(c, CKA_KT_POLICIES, "0.4.0.194112.1.2," KT_ARC ".2.1");
	from_sub_ca(c);
	absent(c, CKA_KT_ORGANIZATION);
	absent(c, CKA_KT_ORG_ADDRESS);
	absent(c, CKA_KT_PERSON_ADDRESS);
	absent(c, CKA_KT_REGISTRATION_NUMBER);
	absent(c, CKA_KT_TITLE);
	absent(c, CKA_KT_POWERS);
	absent(c, CKA_KT_POWERS_UNTIL);
}

/* With no trust list: no accreditation, status unknown, never checked. */
static void status_unknown(CK_OBJECT_HANDLE c)
{
	ulong_is(c, CKA_KT_REVOCATION_STATUS, CK_KT_REVOCATION_UNKNOWN);
	absent(c, CKA_KT_ISSUER_ACCREDITATION);
}

static void test_attrs_person(void **state)
{
	struct ee e;
	char nb[16], na[16];
	time_t now;
	struct tm tm;

	(void)state;
	FX_KOLTAMGA_ONLY();
	ee_issue(&e, "person", "person");
	now = time(NULL);
	standard_ok(&e, "sub-ca");
	person_fields(e.cert, "Асанов Бакыт Маратович");
	ulong_is(e.cert, CKA_KT_KEY_USAGE, CK_KT_KU_DIGITAL_SIGNATURE | CK_KT_KU_NON_REPUDIATION);
	status_unknown(e.cert);
	/* issue.sh: valid from now, for 730 days */
	gmtime_r(&now, &tm);
	strftime(nb, sizeof(nb), "%Y%m%d%H%M%SZ", &tm);
	{
		CK_ULONG len;
		char *v = fixture_get_attr(s, e.cert, CKA_KT_NOT_BEFORE, &len);
		assert_int_equal(len, 15);
		assert_true(memcmp(v, nb, 15) <= 0);
		free(v);
		v = fixture_get_attr(s, e.cert, CKA_KT_NOT_AFTER, &len);
		assert_int_equal(len, 15);
		strftime(na, sizeof(na), "%Y%m%d%H%M%SZ", &tm);
		assert_true(memcmp(v, na, 15) > 0);
		free(v);
	}
	/* The same values in one call, as applications ask. */
	{
		CK_BBOOL qc = 0, sscd = 0;
		CK_ULONG holder = 0, kind = 0;
		char surname[64];
		CK_ATTRIBUTE t[] = {
		    {CKA_KT_QC_COMPLIANCE, &qc, 1},
		    {CKA_KT_QC_SSCD, &sscd, 1},
		    {CKA_KT_HOLDER_TYPE, &holder, sizeof(holder)},
		    {CKA_KT_PERSONAL_ID_KIND, &kind, sizeof(kind)},
		    {CKA_KT_SURNAME, surname, sizeof(surname)},
		    {CKA_KT_ORGANIZATION, NULL, 0},
		};
		assert_int_equal(F->C_GetAttributeValue(s, e.cert, t, FX_COUNT(t)),
				 CKR_ATTRIBUTE_TYPE_INVALID);
		assert_int_equal(qc, CK_TRUE);
		assert_int_equal(sscd, CK_TRUE);
		assert_int_equal(holder, CK_KT_HOLDER_NATURAL_PERSON);
		assert_int_equal(kind, CK_KT_PID_PNO);
		assert_int_equal(t[4].ulValueLen, strlen("Асанов"));
		assert_memory_equal(surname, "Асанов", strlen("Асанов"));
		assert_int_equal(t[5].ulValueLen, CK_UNAVAILABLE_INFORMATION);
	}
	/* Found by a vendor attribute. */
	{
		CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
		CK_ULONG holder = CK_KT_HOLDER_NATURAL_PERSON;
		CK_ATTRIBUTE t[] = {
		    {CKA_CLASS, &cls, sizeof(cls)},
		    {CKA_KT_HOLDER_TYPE, &holder, sizeof(holder)},
		};
		assert_int_equal(fixture_count_objects(s, t, FX_COUNT(t)), 1);
		holder = CK_KT_HOLDER_LEGAL_ENTITY;
		assert_int_equal(fixture_count_objects(s, t, FX_COUNT(t)), 0);
	}
	ee_free(&e);
}

static void test_attrs_seal(void **state)
{
	struct ee e;

	(void)state;
	FX_KOLTAMGA_ONLY();
	ee_issue(&e, "seal", "seal");
	standard_ok(&e, "sub-ca");
	text_is(e.cert, CKA_KT_ORGANIZATION, "Государственная налоговая служба");
	text_is(e.cert, CKA_KT_REGISTRATION_NUMBER, "NTRKG-7654321");
	text_is(e.cert, CKA_KT_COMMON_NAME, "Tax receipts system");
	text_is(e.cert, CKA_KT_COUNTRY, "KG");
	ulong_is(e.cert, CKA_KT_HOLDER_TYPE, CK_KT_HOLDER_LEGAL_ENTITY);
	ulong_is(e.cert, CKA_KT_QC_TYPE, CK_KT_QC_TYPE_ESEAL);
	bool_is(e.cert, CKA_KT_QC_COMPLIANCE, CK_TRUE);
	bool_is(e.cert, CKA_KT_QC_SSCD, CK_TRUE);
	text_is(e.cert, CKA_KT_QC_LEGISLATION, "KG");
	text_is(e.cert, CKA_KT_POLICIES, KT_ARC ".2.1");
	ulong_is(e.cert, CKA_KT_KEY_USAGE, CK_KT_KU_DIGITAL_SIGNATURE | CK_KT_KU_NON_REPUDIATION);
	from_sub_ca(e.cert);
	absent(e.cert, CKA_KT_SURNAME);
	absent(e.cert, CKA_KT_GIVEN_NAMES);
	absent(e.cert, CKA_KT_BIRTH_DATE);
	absent(e.cert, CKA_KT_BIRTH_PLACE);
	absent(e.cert, CKA_KT_PERSONAL_ID);
	absent(e.cert, CKA_KT_PERSONAL_ID_KIND);
	absent(e.cert, CKA_KT_TITLE);
	absent(e.cert, CKA_KT_POWERS);
	absent(e.cert, CKA_KT_QC_LIMIT_VALUE);
	absent(e.cert, CKA_KT_EXT_KEY_USAGE);
	absent(e.cert, CKA_KT_PERSON_ADDRESS);
	status_unknown(e.cert);
	ee_free(&e);
}

static void test_attrs_representative(void **state)
{
	struct ee e;

	(void)state;
	FX_KOLTAMGA_ONLY();
	ee_issue(&e, "representative", "representative");
	standard_ok(&e, "sub-ca");
	text_is(e.cert, CKA_KT_SURNAME, "Асанова");
	text_is(e.cert, CKA_KT_GIVEN_NAMES, "Айгуль");
	text_is(e.cert, CKA_KT_ORGANIZATION, "ОсОО Тест Компани");
	text_is(e.cert, CKA_KT_REGISTRATION_NUMBER, "NTRKG-1234567");
	text_is(e.cert, CKA_KT_TITLE, "Директор");
	text_is(e.cert, CKA_KT_ORG_ADDRESS, "ул. Киевская 96, Бишкек, Чуйская область");
	text_is(e.cert, CKA_KT_PERSONAL_ID, "PNOKG-22345678901234");
	ulong_is(e.cert, CKA_KT_HOLDER_TYPE, CK_KT_HOLDER_REPRESENTATIVE);
	text_is(e.cert, CKA_KT_POWERS,
		"Подписывать договоры и налоговую отчётность от имени ОсОО Тест Компани");
	text_is(e.cert, CKA_KT_POWERS_UNTIL, "20301231235959Z");
	from_sub_ca(e.cert);
	absent(e.cert, CKA_KT_BIRTH_DATE);
	absent(e.cert, CKA_KT_PERSON_ADDRESS);
	ee_free(&e);
}

static void test_attrs_nosign_expired(void **state)
{
	struct ee e;
	CK_ULONG len;
	char *v, now_s[16];
	time_t now = time(NULL);
	struct tm tm;

	(void)state;
	FX_KOLTAMGA_ONLY();
	gmtime_r(&now, &tm);
	strftime(now_s, sizeof(now_s), "%Y%m%d%H%M%SZ", &tm);

	ee_issue(&e, "nosign", "nosign");
	standard_ok(&e, "sub-ca");
	person_fields(e.cert, "No Sign Person");
	ulong_is(e.cert, CKA_KT_KEY_USAGE, CK_KT_KU_KEY_ENCIPHERMENT);
	ee_free(&e);

	ee_issue(&e, "expired", "expired");
	standard_ok(&e, "sub-ca");
	person_fields(e.cert, "Expired Person");
	ulong_is(e.cert, CKA_KT_KEY_USAGE, CK_KT_KU_DIGITAL_SIGNATURE | CK_KT_KU_NON_REPUDIATION);
	v = fixture_get_attr(s, e.cert, CKA_KT_NOT_AFTER, &len);
	assert_non_null(v);
	assert_int_equal(len, 15);
	assert_true(memcmp(v, now_s, 15) < 0); /* in the past */
	free(v);
	ee_free(&e);
}

/* --- (b) signing under each configuration -------------------------------------- */

/* The audit log names a signature's certificate as a certification
 * centre does: the issuer's DN in RFC 2253 text, the serial in hex
 * (reconfigure's C_Finalize has written the seal records). */
static void audit_names_certificate(X509 *x)
{
	char path[PATH_MAX], want[1024], *dn = NULL, *hex;
	BIO *bio = BIO_new(BIO_s_mem());
	long n;
	snprintf(path, sizeof(path), "%s/audit.log", fx.dir);
	FILE *fp = fopen(path, "r");
	assert_non_null(fp);
	static char log[1 << 20];
	size_t got = fread(log, 1, sizeof(log) - 1, fp);
	log[got] = '\0';
	fclose(fp);
	assert_true(X509_NAME_print_ex(bio, X509_get_issuer_name(x), 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) >= 0);
	n = BIO_get_mem_data(bio, &dn);
	snprintf(want, sizeof(want), "\"cert_issuer\":\"%.*s\"", (int)n, dn);
	if (!strstr(log, want))
		fail_msg("audit log lacks %s:\n%s", want, log);
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
	hex = BN_bn2hex(bn);
	for (char *p = hex; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	snprintf(want, sizeof(want), "\"cert_serial\":\"%s\"", hex);
	if (!strstr(log, want))
		fail_msg("audit log lacks %s:\n%s", want, log);
	OPENSSL_free(hex);
	BN_free(bn);
	BIO_free(bio);
}

static void test_sign_trust(void **state)
{
	struct ee person, expired, nosign, revoked, suspended, rogue, legacy;
	CK_ULONG len;
	char *v;

	(void)state;
	FX_KOLTAMGA_ONLY();
	ee_issue(&person, "person", "person");
	ee_issue(&expired, "expired", "expired");
	ee_issue(&nosign, "nosign", "nosign");
	ee_import(&revoked, "revoked", "revoked");
	ee_import(&suspended, "suspended", "suspended");
	ee_import(&rogue, "rogue", "rogue");
	ee_import(&legacy, "legacy", "legacy");

	signs(person.priv, person.x);
	refused(expired.priv, "signature refused (expired)");
	refused(nosign.priv, "signature refused (key usage)");
	refused(revoked.priv, "signature refused (revoked)");
	refused(suspended.priv, "signature refused (suspended)");
	refused(rogue.priv, "signature refused (not accredited)");
	/* The log names no holder. */
	{
		CK_BYTE sig[80];
		CK_ULONG sl = sizeof(sig);
		char *log = NULL;
		assert_int_equal(try_sign(revoked.priv, sig, &sl, &log), CKR_KEY_FUNCTION_NOT_PERMITTED);
		assert_null(strstr(log, "Revoked Person"));
		assert_null(strstr(log, "PNOKG"));
		free(log);
	}

	/* gen.sh makes no CRL for the legacy centre: its status is unknown,
	 * refused by default. */
	refused(legacy.priv, "signature refused (revocation status unknown)");

	/* What the certificate objects say now. */
	ulong_is(person.cert, CKA_KT_REVOCATION_STATUS, CK_KT_REVOCATION_GOOD);
	text_is(person.cert, CKA_KT_ISSUER_ACCREDITATION, "KG-ACC-0002");
	v = fixture_get_attr(s, person.cert, CKA_KT_REVOCATION_CHECKED, &len);
	assert_non_null(v);
	assert_int_equal(len, 15);
	assert_int_equal(v[14], 'Z');
	free(v);
	ulong_is(revoked.cert, CKA_KT_REVOCATION_STATUS, CK_KT_REVOCATION_REVOKED);
	ulong_is(suspended.cert, CKA_KT_REVOCATION_STATUS, CK_KT_REVOCATION_SUSPENDED);
	absent(rogue.cert, CKA_KT_ISSUER_ACCREDITATION);

	/* With the legacy centre's CRL as well: the legacy certificate
	 * (no QC statements, qualified by the trust list) signs. */
	reconfigure(CONF_TRUST_LEGACY_CRL);
	legacy.priv = find_one(CKO_PRIVATE_KEY, "legacy");
	person.priv = find_one(CKO_PRIVATE_KEY, "person");
	revoked.priv = find_one(CKO_PRIVATE_KEY, "revoked");
	rogue.priv = find_one(CKO_PRIVATE_KEY, "rogue");
	legacy.cert = find_one(CKO_CERTIFICATE, "legacy");
	bool_is(legacy.cert, CKA_KT_QC_COMPLIANCE, CK_FALSE);
	signs(legacy.priv, legacy.x);
	text_is(legacy.cert, CKA_KT_ISSUER_ACCREDITATION, "KG-LEGACY-0001");
	audit_names_certificate(person.x);
	signs(person.priv, person.x);
	refused(revoked.priv, "signature refused (revoked)");
	refused(rogue.priv, "signature refused (not accredited)");

	ee_free(&person);
	ee_free(&expired);
	ee_free(&nosign);
	ee_free(&revoked);
	ee_free(&suspended);
	ee_free(&rogue);
	ee_free(&legacy);
}

/* The signer reads what the certificate limits before saying yes: the
 * transaction limit, a representative's powers and their end. */
static void test_dialog_shows_restrictions(void **state)
{
	struct ee person, rep;
	char conf[PATH_MAX], out[PATH_MAX];

	(void)state;
	FX_KOLTAMGA_ONLY();
	snprintf(conf, sizeof(conf), "%s/fake-confirm-out.conf", fx.dir);
	snprintf(out, sizeof(out), "%s/asked", fx.dir);
	FILE *fp = fopen(conf, "w");
	assert_non_null(fp);
	fprintf(fp, "out=%s\ncode=0\n", out);
	fclose(fp);
	char *saved = strdup(getenv("KT_FAKE_CONFIRM"));
	setenv("KT_FAKE_CONFIRM", conf, 1);

	ee_issue(&person, "person", "person");
	ee_issue(&rep, "representative", "representative");
	signs(person.priv, person.x);
	signs(rep.priv, rep.x);

	fp = fopen(out, "r");
	assert_non_null(fp);
	static char asked[1 << 16];
	asked[fread(asked, 1, sizeof(asked) - 1, fp)] = '\0';
	fclose(fp);
	assert_non_null(strstr(asked, "Restrictions: transactions up to 1000000 KGS"));
	assert_non_null(strstr(asked, "; acts for others: Подписывать договоры и налоговую "
				      "отчётность от имени ОсОО Тест Компани until 2030-12-31"));
	assert_non_null(strstr(asked, "Signer: "));

	setenv("KT_FAKE_CONFIRM", saved, 1);
	free(saved);
	ee_free(&person);
	ee_free(&rep);
}

static void test_sign_stale(void **state)
{
	struct ee person, revoked;
	enum conf c = *(enum conf *)*state;

	FX_KOLTAMGA_ONLY();
	ee_issue(&person, "person", "person");
	ee_import(&revoked, "revoked", "revoked");
	if (c == CONF_STALE) {
		refused(person.priv, "signature refused (revocation status unknown)");
		ulong_is(person.cert, CKA_KT_REVOCATION_STATUS, CK_KT_REVOCATION_UNKNOWN);
	} else {
		signs(person.priv, person.x);
	}
	/* Revocation is final: listed in a stale CRL is still refused. */
	refused(revoked.priv, "signature refused (revoked)");
	ulong_is(revoked.cert, CKA_KT_REVOCATION_STATUS, CK_KT_REVOCATION_REVOKED);
	ee_free(&person);
	ee_free(&revoked);
}

static void test_sign_no_trust_list(void **state)
{
	struct ee person, expired, legacy;
	CK_OBJECT_HANDLE pub, priv, ss_priv;
	EVP_PKEY *k;
	X509 *ss;

	(void)state;
	FX_KOLTAMGA_ONLY();
	ee_issue(&person, "person", "person");
	ee_issue(&expired, "expired", "expired");
	ee_import(&legacy, "legacy", "legacy");
	refused(person.priv, "signature refused (revocation status unknown)");
	refused(person.priv, "no CRLs are configured");
	refused(expired.priv, "signature refused (expired)");
	status_unknown(person.cert);

	/* Not qualified: no checks at all. */
	gen_key("nocert", &pub, &priv);
	signs(priv, NULL);
	ss = self_signed(&k);
	ss_priv = import_private_key(k, "selfsigned");
	import_cert(ss, "selfsigned");
	bool_is(find_one(CKO_CERTIFICATE, "selfsigned"), CKA_KT_QC_COMPLIANCE, CK_FALSE);
	signs(ss_priv, ss);
	/* Without a trust list nothing marks the legacy centre: not qualified. */
	signs(legacy.priv, legacy.x);
	X509_free(ss);
	EVP_PKEY_free(k);

	/* The same token under the trust list: person signs. */
	reconfigure(CONF_TRUST);
	signs(find_one(CKO_PRIVATE_KEY, "person"), person.x);
	signs(find_one(CKO_PRIVATE_KEY, "nocert"), NULL);
	refused(find_one(CKO_PRIVATE_KEY, "expired"), "signature refused (expired)");
	ee_free(&person);
	ee_free(&expired);
	ee_free(&legacy);
}

/* --- (c) length queries ----------------------------------------------------------- */

static void test_length_query(void **state)
{
	struct ee revoked, person;
	CK_MECHANISM m = {CKM_ECDSA_SHA256, NULL, 0};
	CK_BYTE sig[80];
	CK_ULONG len;
	char *log;

	(void)state;
	FX_KOLTAMGA_ONLY();
	ee_import(&revoked, "revoked", "revoked");
	ee_issue(&person, "person", "person");

	/* C_Sign: the length query answers, without a refusal line; the
	 * real call refuses and ends the operation. */
	certfix_stderr_begin();
	assert_int_equal(sign_init(s, &m, revoked.priv), CKR_OK);
	len = 0;
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg) - 1, NULL, &len), CKR_OK);
	assert_int_equal(len, 64);
	len = 0;
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg) - 1, NULL, &len), CKR_OK);
	assert_int_equal(len, 64);
	log = certfix_stderr_end();
	assert_null(strstr(log, "signature refused"));
	free(log);
	/* Too small a buffer: CKR_BUFFER_TOO_SMALL, still no check needed. */
	len = 10;
	certfix_stderr_begin();
	CK_RV small = F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg) - 1, sig, &len);
	log = certfix_stderr_end();
	assert_true(small == CKR_BUFFER_TOO_SMALL || small == CKR_KEY_FUNCTION_NOT_PERMITTED);
	if (small == CKR_BUFFER_TOO_SMALL) {
		assert_int_equal(len, 64);
		len = sizeof(sig);
		certfix_stderr_begin();
		assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg) - 1, sig, &len),
				 CKR_KEY_FUNCTION_NOT_PERMITTED);
		free(log);
		log = certfix_stderr_end();
	}
	assert_non_null(strstr(log, "signature refused (revocation status unknown)"));
	free(log);
	len = sizeof(sig);
	assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg) - 1, sig, &len),
			 CKR_OPERATION_NOT_INITIALIZED);

	/* Multi-part: C_SignFinal the same way. */
	assert_int_equal(sign_init(s, &m, revoked.priv), CKR_OK);
	assert_int_equal(F->C_SignUpdate(s, (CK_BYTE_PTR)msg, 10), CKR_OK);
	assert_int_equal(F->C_SignUpdate(s, (CK_BYTE_PTR)msg + 10, sizeof(msg) - 11), CKR_OK);
	len = 0;
	certfix_stderr_begin();
	assert_int_equal(F->C_SignFinal(s, NULL, &len), CKR_OK);
	assert_int_equal(len, 64);
	log = certfix_stderr_end();
	assert_null(strstr(log, "signature refused"));
	free(log);
	len = sizeof(sig);
	certfix_stderr_begin();
	assert_int_equal(F->C_SignFinal(s, sig, &len), CKR_KEY_FUNCTION_NOT_PERMITTED);
	log = certfix_stderr_end();
	assert_non_null(strstr(log, "signature refused (revocation status unknown)"));
	free(log);
	len = sizeof(sig);
	assert_int_equal(F->C_SignFinal(s, sig, &len), CKR_OPERATION_NOT_INITIALIZED);

	/* Under the trust list: revoked (not unknown) is refused, the
	 * length query still answers; person signs after its length query,
	 * in one part and in several. */
	reconfigure(CONF_TRUST);
	revoked.priv = find_one(CKO_PRIVATE_KEY, "revoked");
	person.priv = find_one(CKO_PRIVATE_KEY, "person");
	refused(revoked.priv, "signature refused (revoked)");
	signs(person.priv, person.x);
	assert_int_equal(sign_init(s, &m, person.priv), CKR_OK);
	assert_int_equal(F->C_SignUpdate(s, (CK_BYTE_PTR)msg, 10), CKR_OK);
	assert_int_equal(F->C_SignUpdate(s, (CK_BYTE_PTR)msg + 10, sizeof(msg) - 11), CKR_OK);
	len = 0;
	assert_int_equal(F->C_SignFinal(s, NULL, &len), CKR_OK);
	assert_int_equal(len, 64);
	assert_int_equal(F->C_SignFinal(s, sig, &len), CKR_OK);
	assert_true(verifies(person.x, sig, len));
	ee_free(&revoked);
	ee_free(&person);
}

/* --- (d) a certificate with the key's id and another key ---------------------------- */

static void test_mismatch(void **state)
{
	CK_OBJECT_HANDLE pub, priv, pub2, priv2;
	X509 *other = pki_cert("person"); /* gen.sh's key, not on the token */
	X509 *ss;
	EVP_PKEY *k;
	struct ee person;

	(void)state;
	FX_KOLTAMGA_ONLY();
	/* Before any certificate: the key signs. */
	gen_key("mismatch", &pub, &priv);
	signs(priv, NULL);
	import_cert(other, "mismatch");
	assert_int_equal(count(CKO_PUBLIC_KEY, "mismatch"), 1); /* no companion: the key has one */
	refused(priv,
		"signature refused: a qualified certificate with the key's CKA_ID holds another public key");

	/* A non-qualified certificate with another key: not refused. */
	gen_key("other-nq", &pub2, &priv2);
	ss = self_signed(&k);
	import_cert(ss, "other-nq");
	signs(priv2, NULL);

	/* The key's own certificate plus a qualified one of another key
	 * under the same id: refused too, a certificate cannot be chosen. */
	ee_issue(&person, "person", "person");
	signs(person.priv, person.x);
	import_cert(other, "person");
	refused(person.priv, "holds another public key");
	/* Remove the stranger: the key signs again. */
	{
		CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
		struct der d = der_of(other);
		CK_ATTRIBUTE t[] = {
		    {CKA_CLASS, &cls, sizeof(cls)},
		    {CKA_ID, "person", 6},
		    {CKA_VALUE, d.p, d.len},
		};
		CK_OBJECT_HANDLE h[2];
		CK_ULONG n = 0;
		assert_int_equal(F->C_FindObjectsInit(s, t, FX_COUNT(t)), CKR_OK);
		assert_int_equal(F->C_FindObjects(s, h, 2, &n), CKR_OK);
		assert_int_equal(F->C_FindObjectsFinal(s), CKR_OK);
		assert_int_equal(n, 1);
		assert_int_equal(F->C_DestroyObject(s, h[0]), CKR_OK);
		der_free(&d);
	}
	signs(person.priv, person.x);

	X509_free(ss);
	EVP_PKEY_free(k);
	X509_free(other);
	ee_free(&person);
}

/* --- (e) templates ---------------------------------------------------------------- */

static CK_RV create_with(const struct der *d, const char *id, CK_ATTRIBUTE *extra, CK_ULONG n_extra,
			 CK_OBJECT_HANDLE *h)
{
	CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
	CK_CERTIFICATE_TYPE ct = CKC_X_509;
	CK_ATTRIBUTE t[16] = {
	    {CKA_CLASS, &cls, sizeof(cls)},
	    {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
	    {CKA_TOKEN, &fx_true, 1},
	    {CKA_ID, (void *)id, strlen(id)},
	    {CKA_LABEL, (void *)id, strlen(id)},
	    {CKA_VALUE, d->p, d->len},
	};
	CK_ULONG n = 6;

	for (CK_ULONG i = 0; i < n_extra; i++)
		t[n++] = extra[i];
	*h = CK_INVALID_HANDLE;
	return F->C_CreateObject(s, t, n, h);
}

static void expect_create(const struct der *d, CK_ATTRIBUTE *extra, CK_ULONG n_extra, CK_RV want,
			  const char *what)
{
	CK_OBJECT_HANDLE h;
	CK_ULONG before = count(CKO_CERTIFICATE, NULL);
	CK_RV rv = create_with(d, "tmpl", extra, n_extra, &h);

	if (rv != want)
		fail_msg("%s: C_CreateObject = 0x%lx, want 0x%lx", what, rv, want);
	if (rv == CKR_OK) {
		assert_int_equal(count(CKO_CERTIFICATE, NULL), before + 1);
		assert_int_equal(F->C_DestroyObject(s, h), CKR_OK);
	} else {
		assert_int_equal(h, CK_INVALID_HANDLE);
		assert_int_equal(count(CKO_CERTIFICATE, NULL), before);
	}
}

static void test_template(void **state)
{
	struct ee person;
	struct der d, bad;
	X509 *sub = pki_cert("sub-ca");
	unsigned char *subject = NULL, *issuer = NULL, *serial = NULL, *spki = NULL, *other = NULL;
	int nsub, niss, nser, nspki, nother;
	char nb[9], na[9], full[16];
	CK_DATE start, end, wrong_date;
	CK_OBJECT_HANDLE h;

	(void)state;
	FX_KOLTAMGA_ONLY();
	ee_issue(&person, "person", "person");
	d = der_of(person.x);
	nsub = i2d_X509_NAME(X509_get_subject_name(person.x), &subject);
	niss = i2d_X509_NAME(X509_get_issuer_name(person.x), &issuer);
	nser = i2d_ASN1_INTEGER(X509_get0_serialNumber(person.x), &serial);
	nspki = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(person.x), &spki);
	nother = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(sub), &other);
	assert_true(nsub > 0 && niss > 0 && nser > 0 && nspki > 0 && nother > 0);
	date_of(X509_get0_notBefore(person.x), nb, full);
	date_of(X509_get0_notAfter(person.x), na, full);
	memcpy(&start, nb, 8);
	memcpy(&end, na, 8);
	memcpy(&wrong_date, "20990101", 8);
	CK_BYTE wrong_serial[] = {0x02, 0x01, 0x05};
	CK_BYTE wrong_check[3] = {0, 0, 0};
	CK_ULONG category_other = 3; /* the application's call: not checked */

	/* Right values given: accepted. */
	{
		CK_ATTRIBUTE t[] = {
		    {CKA_SUBJECT, subject, (CK_ULONG)nsub},
		    {CKA_ISSUER, issuer, (CK_ULONG)niss},
		    {CKA_SERIAL_NUMBER, serial, (CK_ULONG)nser},
		    {CKA_START_DATE, &start, sizeof(start)},
		    {CKA_END_DATE, &end, sizeof(end)},
		    {CKA_PUBLIC_KEY_INFO, spki, (CK_ULONG)nspki},
		    {CKA_CERTIFICATE_CATEGORY, &category_other, sizeof(category_other)},
		};
		expect_create(&d, t, FX_COUNT(t), CKR_OK, "all standard attributes right");
	}
	/* Each wrong one: inconsistent. */
	{
		CK_ATTRIBUTE t = {CKA_SUBJECT, issuer, (CK_ULONG)niss};
		expect_create(&d, &t, 1, CKR_TEMPLATE_INCONSISTENT, "wrong CKA_SUBJECT");
	}
	{
		CK_ATTRIBUTE t = {CKA_ISSUER, subject, (CK_ULONG)nsub};
		expect_create(&d, &t, 1, CKR_TEMPLATE_INCONSISTENT, "wrong CKA_ISSUER");
	}
	{
		CK_ATTRIBUTE t = {CKA_SERIAL_NUMBER, wrong_serial, sizeof(wrong_serial)};
		expect_create(&d, &t, 1, CKR_TEMPLATE_INCONSISTENT, "wrong CKA_SERIAL_NUMBER");
	}
	/* Java's SunPKCS11 gives the INTEGER's content bytes (no tag, no
	 * length): the same number, stored in the specification's DER form;
	 * another number in that form is still inconsistent. */
	{
		CK_ATTRIBUTE t = {CKA_SERIAL_NUMBER, serial + 2, (CK_ULONG)nser - 2};
		assert_true(nser > 2 && serial[1] == nser - 2);
		assert_int_equal(create_with(&d, "java", &t, 1, &h), CKR_OK);
		bytes_are(h, CKA_SERIAL_NUMBER, serial, (size_t)nser);
		assert_int_equal(F->C_DestroyObject(s, h), CKR_OK);
		CK_ATTRIBUTE u = {CKA_SERIAL_NUMBER, wrong_serial + 2, 1};
		expect_create(&d, &u, 1, CKR_TEMPLATE_INCONSISTENT, "another serial as content bytes");
	}
	{
		CK_ATTRIBUTE t = {CKA_END_DATE, &wrong_date, sizeof(wrong_date)};
		expect_create(&d, &t, 1, CKR_TEMPLATE_INCONSISTENT, "wrong CKA_END_DATE");
	}
	{
		CK_ATTRIBUTE t = {CKA_PUBLIC_KEY_INFO, other, (CK_ULONG)nother};
		expect_create(&d, &t, 1, CKR_TEMPLATE_INCONSISTENT, "wrong CKA_PUBLIC_KEY_INFO");
	}
	{
		CK_ATTRIBUTE t = {CKA_CHECK_VALUE, wrong_check, sizeof(wrong_check)};
		expect_create(&d, &t, 1, CKR_TEMPLATE_INCONSISTENT, "wrong CKA_CHECK_VALUE");
	}

	/* Malformed DER: invalid, never a crash. */
	bad.p = malloc(d.len + 16);
	assert_non_null(bad.p);
	memcpy(bad.p, d.p, d.len);
	bad.len = d.len - 1;
	expect_create(&bad, NULL, 0, CKR_ATTRIBUTE_VALUE_INVALID, "truncated by one byte");
	bad.len = d.len / 2;
	expect_create(&bad, NULL, 0, CKR_ATTRIBUTE_VALUE_INVALID, "truncated by half");
	bad.p[d.len] = 0x00;
	bad.len = d.len + 1;
	expect_create(&bad, NULL, 0, CKR_ATTRIBUTE_VALUE_INVALID, "a trailing byte");
	{
		static const char garbage[] = "this is not a certificate at all";
		struct der g = {(unsigned char *)garbage, sizeof(garbage) - 1};
		expect_create(&g, NULL, 0, CKR_ATTRIBUTE_VALUE_INVALID, "garbage");
	}
	/* An absurd outer length: 30 84 7f ff ff ff + the content. */
	{
		struct der a;
		assert_int_equal(d.p[0], 0x30);
		assert_int_equal(d.p[1], 0x82);
		a.len = d.len + 2;
		a.p = malloc(a.len);
		assert_non_null(a.p);
		memcpy(a.p, "\x30\x84\x7f\xff\xff\xff", 6);
		memcpy(a.p + 6, d.p + 4, d.len - 4);
		expect_create(&a, NULL, 0, CKR_ATTRIBUTE_VALUE_INVALID, "absurd length");
		free(a.p);
	}
	/* Version v4 (INTEGER 3): [0] EXPLICIT version at the start of the TBS. */
	{
		unsigned char *v = NULL;
		memcpy(bad.p, d.p, d.len);
		bad.len = d.len;
		for (CK_ULONG i = 0; i + 5 < 16; i++)
			if (memcmp(bad.p + i, "\xa0\x03\x02\x01\x02", 5) == 0) {
				v = bad.p + i + 4;
				break;
			}
		assert_non_null(v);
		*v = 0x03;
		expect_create(&bad, NULL, 0, CKR_ATTRIBUTE_VALUE_INVALID, "version v4");
		*v = 0x02; /* and back: the same bytes are fine */
		expect_create(&bad, NULL, 0, CKR_OK, "version v3");
	}
	free(bad.p);

	/* Vendor attributes are the certificate's: never given or set. */
	{
		CK_ATTRIBUTE t = {CKA_KT_SURNAME, "Асанов", strlen("Асанов")};
		expect_create(&d, &t, 1, CKR_ATTRIBUTE_READ_ONLY, "CKA_KT_SURNAME given (same value)");
	}
	{
		CK_BBOOL f = CK_FALSE;
		CK_ATTRIBUTE t = {CKA_KT_QC_COMPLIANCE, &f, 1};
		expect_create(&d, &t, 1, CKR_ATTRIBUTE_READ_ONLY, "CKA_KT_QC_COMPLIANCE given");
	}
	{
		CK_ULONG good = CK_KT_REVOCATION_GOOD;
		CK_ATTRIBUTE t = {CKA_KT_REVOCATION_STATUS, &good, sizeof(good)};
		expect_create(&d, &t, 1, CKR_ATTRIBUTE_READ_ONLY, "CKA_KT_REVOCATION_STATUS given");
	}
	h = person.cert;
	{
		CK_ATTRIBUTE t = {CKA_KT_SURNAME, "Иванов", strlen("Иванов")};
		assert_int_equal(F->C_SetAttributeValue(s, h, &t, 1), CKR_ATTRIBUTE_READ_ONLY);
		text_is(h, CKA_KT_SURNAME, "Асанов");
	}
	{
		CK_BBOOL f = CK_FALSE;
		CK_ATTRIBUTE t = {CKA_KT_QC_COMPLIANCE, &f, 1};
		assert_int_equal(F->C_SetAttributeValue(s, h, &t, 1), CKR_ATTRIBUTE_READ_ONLY);
		bool_is(h, CKA_KT_QC_COMPLIANCE, CK_TRUE);
	}
	{
		CK_ULONG good = CK_KT_REVOCATION_GOOD;
		CK_ATTRIBUTE t = {CKA_KT_REVOCATION_STATUS, &good, sizeof(good)};
		assert_int_equal(F->C_SetAttributeValue(s, h, &t, 1), CKR_ATTRIBUTE_READ_ONLY);
		ulong_is(h, CKA_KT_REVOCATION_STATUS, CK_KT_REVOCATION_UNKNOWN);
	}
	{
		CK_ATTRIBUTE t[] = {
		    {CKA_LABEL, "renamed", 7},
		    {CKA_KT_PERSONAL_ID, "PNOKG-00000000000000", 20},
		};
		/* One read-only attribute fails the whole call: the label stays. */
		assert_int_equal(F->C_SetAttributeValue(s, h, t, 2), CKR_ATTRIBUTE_READ_ONLY);
		text_is(h, CKA_LABEL, "person");
		/* The label alone may change. */
		assert_int_equal(F->C_SetAttributeValue(s, h, t, 1), CKR_OK);
		text_is(h, CKA_LABEL, "renamed");
	}
	/* A copy may not change them either. */
	{
		CK_OBJECT_HANDLE c;
		CK_ATTRIBUTE t = {CKA_KT_SURNAME, "Иванов", strlen("Иванов")};
		CK_ATTRIBUTE l = {CKA_LABEL, "copy", 4};
		assert_int_equal(F->C_CopyObject(s, h, &t, 1, &c), CKR_ATTRIBUTE_READ_ONLY);
		assert_int_equal(F->C_CopyObject(s, h, &l, 1, &c), CKR_OK);
		text_is(c, CKA_KT_SURNAME, "Асанов");
		assert_int_equal(F->C_DestroyObject(s, c), CKR_OK);
	}

	OPENSSL_free(subject);
	OPENSSL_free(issuer);
	OPENSSL_free(serial);
	OPENSSL_free(spki);
	OPENSSL_free(other);
	X509_free(sub);
	der_free(&d);
	ee_free(&person);
}

/* --- (f) the public key beside a certificate ------------------------------------------ */

static void test_companion(void **state)
{
	struct ee e, gen;
	CK_OBJECT_HANDLE pub, h, cert2;
	CK_ULONG total, len;
	unsigned char *spki = NULL;
	int nspki;
	void *v;
	CK_MECHANISM m = {CKM_ECDSA_SHA256, NULL, 0};
	CK_BYTE sig[80];

	(void)state;
	FX_KOLTAMGA_ONLY();
	/* A private key alone: no public key with its id. */
	{
		EVP_PKEY *k = pki_key("person");
		import_private_key(k, "imported");
		EVP_PKEY_free(k);
	}
	assert_int_equal(count(CKO_PUBLIC_KEY, "imported"), 0);
	total = count(CKO_PUBLIC_KEY, NULL);

	/* Its certificate arrives: one public key beside it. */
	e.x = pki_cert("person");
	e.id = "imported";
	e.cert = import_cert(e.x, "imported");
	assert_int_equal(count(CKO_PUBLIC_KEY, "imported"), 1);
	assert_int_equal(count(CKO_PUBLIC_KEY, NULL), total + 1);
	pub = find_one(CKO_PUBLIC_KEY, "imported");
	nspki = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(e.x), &spki);
	assert_true(nspki > 0);
	bytes_are(pub, CKA_PUBLIC_KEY_INFO, spki, (size_t)nspki);
	ulong_is(pub, CKA_KEY_TYPE, CKK_EC);
	bytes_are(pub, CKA_EC_PARAMS, fx_p256, fx_p256_len);
	v = fixture_get_attr(s, pub, CKA_EC_POINT, &len);
	assert_non_null(v);
	assert_int_equal(len, 67); /* OCTET STRING of the uncompressed point */
	assert_memory_equal(v, "\x04\x41\x04", 3);
	free(v);
	bool_is(pub, CKA_TOKEN, CK_TRUE);
	bool_is(pub, CKA_PRIVATE, CK_FALSE);
	text_is(pub, CKA_LABEL, "imported");

	/* It verifies what the key signs (person under the trust list). */
	{
		CK_OBJECT_HANDLE priv = find_one(CKO_PRIVATE_KEY, "imported");
		signs(priv, e.x);
		len = sizeof(sig);
		assert_int_equal(sign_init(s, &m, priv), CKR_OK);
		assert_int_equal(F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg) - 1, sig, &len), CKR_OK);
		assert_int_equal(F->C_VerifyInit(s, &m, pub), CKR_OK);
		assert_int_equal(F->C_Verify(s, (CK_BYTE_PTR)msg, sizeof(msg) - 1, sig, len), CKR_OK);
		sig[5] ^= 1;
		assert_int_equal(F->C_VerifyInit(s, &m, pub), CKR_OK);
		assert_int_equal(F->C_Verify(s, (CK_BYTE_PTR)msg, sizeof(msg) - 1, sig, len),
				 CKR_SIGNATURE_INVALID);
	}

	/* The same certificate again, and its public key is not doubled. */
	{
		struct der d = der_of(e.x);
		assert_int_equal(create_cert("imported", "again", d.p, d.len, &cert2), CKR_OK);
		der_free(&d);
	}
	assert_int_equal(count(CKO_CERTIFICATE, "imported"), 2);
	assert_int_equal(count(CKO_PUBLIC_KEY, "imported"), 1);
	assert_int_equal(find_one(CKO_PUBLIC_KEY, "imported"), pub);

	/* A key pair generated on the token: its public key stays the only one. */
	ee_issue(&gen, "person", "generated");
	assert_int_equal(count(CKO_PUBLIC_KEY, "generated"), 1);
	assert_int_equal(find_one(CKO_PUBLIC_KEY, "generated"), gen.pub);

	/* A certificate without CKA_ID gets none. */
	total = count(CKO_PUBLIC_KEY, NULL);
	{
		X509 *ca = pki_cert("legacy-ca");
		struct der d = der_of(ca);
		assert_int_equal(create_cert(NULL, "no id", d.p, d.len, &h), CKR_OK);
		der_free(&d);
		X509_free(ca);
	}
	assert_int_equal(count(CKO_PUBLIC_KEY, NULL), total);

	/* A token object: still there after C_Finalize/C_Initialize, and
	 * visible without a login. */
	assert_int_equal(certfix_reinit(conf_text(CONF_TRUST)), CKR_OK);
	slot = fixture_slot_by_label("certs");
	s = fixture_open_session(slot, false);
	assert_int_equal(count(CKO_PUBLIC_KEY, "imported"), 1);
	assert_int_equal(count(CKO_PUBLIC_KEY, "generated"), 1);
	pub = find_one(CKO_PUBLIC_KEY, "imported");
	bytes_are(pub, CKA_PUBLIC_KEY_INFO, spki, (size_t)nspki);

	OPENSSL_free(spki);
	ee_free(&e);
	ee_free(&gen);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_prestate_setup_teardown(test_attrs_person, setup, teardown, &conf_none),
	    cmocka_unit_test_prestate_setup_teardown(test_attrs_seal, setup, teardown, &conf_none),
	    cmocka_unit_test_prestate_setup_teardown(test_attrs_representative, setup, teardown, &conf_none),
	    cmocka_unit_test_prestate_setup_teardown(test_attrs_nosign_expired, setup, teardown, &conf_none),
	    cmocka_unit_test_prestate_setup_teardown(test_sign_trust, setup, teardown, &conf_trust),
	    cmocka_unit_test_prestate_setup_teardown(test_dialog_shows_restrictions, setup, teardown, &conf_trust),
	    cmocka_unit_test_prestate_setup_teardown(test_sign_stale, setup, teardown, &conf_stale),
	    cmocka_unit_test_prestate_setup_teardown(test_sign_stale, setup, teardown, &conf_stale_allow),
	    cmocka_unit_test_prestate_setup_teardown(test_sign_no_trust_list, setup, teardown, &conf_none),
	    cmocka_unit_test_prestate_setup_teardown(test_length_query, setup, teardown, &conf_none),
	    cmocka_unit_test_prestate_setup_teardown(test_mismatch, setup, teardown, &conf_trust),
	    cmocka_unit_test_prestate_setup_teardown(test_template, setup, teardown, &conf_none),
	    cmocka_unit_test_prestate_setup_teardown(test_companion, setup, teardown, &conf_trust),
	};

	return cmocka_run_group_tests_name("certs", tests, group_setup, group_teardown);
}
