/*
 * Unit tests of the law's certificate checks (module/policy/certcheck.c)
 * over the test PKI of tests/pki/gen.sh: every verdict, each with the
 * certificate that must pass next to the one that must not.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "policy/certcheck.h"

static char tmp[64];  /* this run's directory */
static char pki[128]; /* gen.sh output inside it */

struct der {
	unsigned char *p;
	CK_ULONG len;
};

static void path_of(char *buf, size_t len, const char *rel)
{
	snprintf(buf, len, "%s/%s", pki, rel);
}

static X509 *load_x509(const char *rel)
{
	char path[256];
	path_of(path, sizeof(path), rel);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	assert_non_null(x);
	return x;
}

static struct der x509_der(X509 *x)
{
	struct der d = {0};
	int n = i2d_X509(x, &d.p);
	assert_true(n > 0);
	d.len = (CK_ULONG)n;
	return d;
}

/* The DER of OUTDIR/NAME.pem. */
static struct der cert(const char *name)
{
	char rel[64];
	snprintf(rel, sizeof(rel), "%s.pem", name);
	X509 *x = load_x509(rel);
	struct der d = x509_der(x);
	X509_free(x);
	return d;
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static struct certcheck *make(const char *trust_list, const char *crl_dir, const char **crl_files,
			      unsigned long max_age, bool allow)
{
	char tl[256], dir[256];
	struct certcheck_config cfg = {
	    .crl_files = crl_files,
	    .crl_max_age = max_age,
	    .allow_unknown_revocation = allow,
	};
	if (trust_list) {
		path_of(tl, sizeof(tl), trust_list);
		cfg.trust_list = trust_list[0] == '/' ? trust_list : tl;
	}
	if (crl_dir) {
		path_of(dir, sizeof(dir), crl_dir);
		cfg.crl_dir = crl_dir[0] == '/' ? crl_dir : dir;
	}
	struct certcheck *cc = NULL;
	assert_int_equal(certcheck_new(&cfg, &cc), CKR_OK);
	assert_non_null(cc);
	return cc;
}

/* The holder's name and personal number never appear in why: every entry
 * of the subject that the issuer does not share is looked for. */
static void assert_no_subject_in(const char *why, const unsigned char *der, CK_ULONG len)
{
	const unsigned char *p = der;
	X509 *x = d2i_X509(NULL, &p, (long)len);
	if (!x)
		return;
	const X509_NAME *subj = X509_get_subject_name(x);
	for (int i = 0; i < X509_NAME_entry_count(subj); i++) {
		unsigned char *u = NULL;
		const ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, i));
		assert_true(ASN1_STRING_to_UTF8(&u, s) >= 0);
		/* two-letter values (C=KG) may well occur in a centre's name */
		if (strlen((char *)u) >= 3 && strstr(why, (char *)u))
			fail_msg("why '%s' contains the subject's '%s'", why, (char *)u);
		OPENSSL_free(u);
	}
	assert_null(strstr(why, "PNOKG"));
	assert_null(strstr(why, "IIN"));
	assert_null(strchr(why, '\n'));
	X509_free(x);
}

static enum certcheck_verdict judge_at(const struct certcheck *cc, const char *name, time_t now, char *why,
				       size_t why_len)
{
	struct der d = cert(name);
	enum certcheck_verdict v = certcheck_judge(cc, d.p, d.len, now, why, why_len);
	assert_true(why[0] != '\0');
	assert_no_subject_in(why, d.p, d.len);
	OPENSSL_free(d.p);
	return v;
}

static enum certcheck_verdict judge(const struct certcheck *cc, const char *name, char *why, size_t why_len)
{
	return judge_at(cc, name, time(NULL), why, why_len);
}

static bool qualified(const struct certcheck *cc, const char *name)
{
	struct der d = cert(name);
	bool q = certcheck_is_qualified(cc, d.p, d.len);
	OPENSSL_free(d.p);
	return q;
}

static void crls_in(const char *a, const char *b, const char **files)
{
	files[0] = a;
	files[1] = b;
	files[2] = NULL;
}

/* ---- fixtures ------------------------------------------------------------ */

static int setup_pki(void **state)
{
	(void)state;
	const char *src = getenv("KOLTAMGA_SRCDIR");
	char cmd[512];
	snprintf(tmp, sizeof(tmp), "/tmp/kt-certcheck-XXXXXX");
	if (!mkdtemp(tmp))
		return -1;
	snprintf(pki, sizeof(pki), "%s/pki", tmp);
	snprintf(cmd, sizeof(cmd), "sh '%s/tests/pki/gen.sh' '%s' >/dev/null 2>&1", src ? src : ".", pki);
	return system(cmd) == 0 ? 0 : -1;
}

static int teardown_pki(void **state)
{
	(void)state;
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
	return system(cmd) == 0 ? 0 : -1;
}

/* A self-signed end-entity certificate: no QcStatements, no centre. */
static struct der make_plain_cert(void)
{
	EVP_PKEY *k = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	assert_non_null(k);
	assert_non_null(x);
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 77);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	X509_NAME *n = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)"Plain Holder", -1, -1, 0);
	X509_set_issuer_name(x, n);
	X509_set_pubkey(x, k);
	assert_true(X509_sign(x, k, EVP_sha256()) > 0);
	struct der d = x509_der(x);
	X509_free(x);
	EVP_PKEY_free(k);
	return d;
}

/* A CRL in the name of sub-ca, listing nothing and newer than the real
 * one, but signed by a key of our own: it must be ignored. */
static void write_forged_crl(const char *path)
{
	X509 *sub = load_x509("sub-ca.pem");
	EVP_PKEY *k = EVP_EC_gen("P-256");
	X509_CRL *crl = X509_CRL_new();
	ASN1_TIME *t1 = X509_time_adj_ex(NULL, 0, 60, NULL), *t2 = X509_time_adj_ex(NULL, 30, 0, NULL);
	assert_non_null(crl);
	X509_CRL_set_version(crl, 1);
	X509_CRL_set_issuer_name(crl, X509_get_subject_name(sub));
	X509_CRL_set1_lastUpdate(crl, t1);
	X509_CRL_set1_nextUpdate(crl, t2);
	assert_true(X509_CRL_sign(crl, k, EVP_sha256()) > 0);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	PEM_write_X509_CRL(f, crl);
	fclose(f);
	ASN1_TIME_free(t1);
	ASN1_TIME_free(t2);
	X509_CRL_free(crl);
	EVP_PKEY_free(k);
	X509_free(sub);
}

/* ---- verdicts ------------------------------------------------------------ */

static void test_good_certificates(void **state)
{
	(void)state;
	static const char *good[] = {"person", "representative", "seal", "kz-person", "rsa-person"};
	char why[256];
	struct certcheck *cc = make("trust-list.conf", "crl", NULL, 0, false);
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		assert_int_equal(judge(cc, good[i], why, sizeof(why)), CERTCHECK_OK);
		assert_true(qualified(cc, good[i]));
	}
	certcheck_free(cc);
}

static void test_person_ok_why(void **state)
{
	(void)state;
	char why[256];
	struct certcheck *cc = make("trust-list.conf", "crl", NULL, 0, false);
	assert_int_equal(judge(cc, "person", why, sizeof(why)), CERTCHECK_OK);
	assert_non_null(strstr(why, "not revoked per CRL of CN=Test Accredited Sub CA"));
	certcheck_free(cc);
}

static void test_dates(void **state)
{
	(void)state;
	char why[256];
	struct certcheck *cc = make("trust-list.conf", "crl", NULL, 0, false);
	assert_int_equal(judge(cc, "expired", why, sizeof(why)), CERTCHECK_EXPIRED);
	assert_non_null(strstr(why, "expired on "));
	assert_non_null(strstr(why, " UTC"));
	assert_int_equal(judge(cc, "notyet", why, sizeof(why)), CERTCHECK_NOT_YET_VALID);
	/* The same certificates inside their validity: a year from now the
	 * "not yet" one is valid (the CRL is stale by then, which is
	 * allowed here) and a day ago... the expired one is judged by its
	 * own dates only. */
	certcheck_free(cc);
	cc = make("trust-list.conf", "crl", NULL, 0, true);
	assert_int_equal(judge_at(cc, "notyet", time(NULL) + 400 * 86400, why, sizeof(why)), CERTCHECK_OK);
	assert_int_equal(judge_at(cc, "expired", time(NULL) - 2 * 86400, why, sizeof(why)), CERTCHECK_OK);
	assert_int_equal(judge_at(cc, "person", time(NULL) + 3 * 365 * 86400, why, sizeof(why)),
			 CERTCHECK_EXPIRED);
	certcheck_free(cc);
}

static void test_revoked_and_suspended(void **state)
{
	(void)state;
	char why[256];
	struct certcheck *cc = make("trust-list.conf", "crl", NULL, 0, false);
	assert_int_equal(judge(cc, "revoked", why, sizeof(why)), CERTCHECK_REVOKED);
	assert_non_null(strstr(why, "revoked (keyCompromise) per CRL of CN=Test Accredited Sub CA, issued "));
	assert_non_null(strstr(why, "serial 2005"));
	assert_int_equal(judge(cc, "suspended", why, sizeof(why)), CERTCHECK_SUSPENDED);
	assert_non_null(strstr(why, "certificateHold"));
	/* allow_unknown does not soften a known revocation */
	certcheck_free(cc);
	cc = make("trust-list.conf", "crl", NULL, 0, true);
	assert_int_equal(judge(cc, "revoked", why, sizeof(why)), CERTCHECK_REVOKED);
	assert_int_equal(judge(cc, "suspended", why, sizeof(why)), CERTCHECK_SUSPENDED);
	certcheck_free(cc);
}

static void test_key_usage(void **state)
{
	(void)state;
	char why[256];
	struct certcheck *cc = make("trust-list.conf", "crl", NULL, 0, false);
	assert_int_equal(judge(cc, "nosign", why, sizeof(why)), CERTCHECK_KEY_USAGE);
	assert_non_null(strstr(why, "digitalSignature"));
	certcheck_free(cc);
}

static void test_rogue_not_accredited(void **state)
{
	(void)state;
	char why[256];
	struct certcheck *cc = make("trust-list.conf", "crl", NULL, 0, true);
	assert_true(qualified(cc, "rogue")); /* it claims QcCompliance */
	assert_int_equal(judge(cc, "rogue", why, sizeof(why)), CERTCHECK_NOT_ACCREDITED);
	assert_non_null(strstr(why, "CN=Rogue CA is not in the trust list"));
	certcheck_free(cc);

	/* Without a trust list nobody is checked for accreditation... */
	cc = make(NULL, NULL, NULL, 0, true);
	assert_int_equal(judge(cc, "rogue", why, sizeof(why)), CERTCHECK_OK);
	/* ...and nobody is a legacy centre. */
	assert_false(qualified(cc, "legacy"));
	assert_int_equal(judge(cc, "legacy", why, sizeof(why)), CERTCHECK_NOT_QUALIFIED);
	certcheck_free(cc);
}

static void test_legacy(void **state)
{
	(void)state;
	char why[256], path[256];
	struct certcheck *cc = make("trust-list.conf", NULL, NULL, 0, true);
	assert_true(qualified(cc, "legacy"));
	assert_int_equal(judge(cc, "legacy", why, sizeof(why)), CERTCHECK_OK);
	certcheck_free(cc);

	/* The same centre not marked legacy: its certificates, which carry
	 * no QcCompliance, are not qualified. */
	path_of(path, sizeof(path), "tl-nolegacy.conf");
	char text[512];
	snprintf(text, sizeof(text),
		 "[centre]\nname = L\ncertificate = legacy-ca.pem\naccredited_from = 2010-01-01\n"
		 "accreditation = X\nlegacy = no\n");
	write_file(path, text);
	cc = make(path, NULL, NULL, 0, true);
	assert_false(qualified(cc, "legacy"));
	assert_int_equal(judge(cc, "legacy", why, sizeof(why)), CERTCHECK_NOT_QUALIFIED);
	certcheck_free(cc);
}

static void test_not_qualified(void **state)
{
	(void)state;
	char why[256];
	struct der d = make_plain_cert();
	struct certcheck *cc = make("trust-list.conf", "crl", NULL, 0, false);
	assert_false(certcheck_is_qualified(cc, d.p, d.len));
	assert_int_equal(certcheck_judge(cc, d.p, d.len, time(NULL), why, sizeof(why)),
			 CERTCHECK_NOT_QUALIFIED);
	assert_null(strstr(why, "Plain Holder"));
	/* A centre's own certificate is not a qualified certificate either. */
	assert_int_equal(judge(cc, "rogue-ca", why, sizeof(why)), CERTCHECK_NOT_QUALIFIED);
	assert_true(qualified(cc, "person"));
	certcheck_free(cc);
	OPENSSL_free(d.p);
}

static void test_stale_crl(void **state)
{
	(void)state;
	char why[256];
	struct certcheck *cc = make("trust-list.conf", "crl-stale", NULL, 0, false);
	assert_int_equal(judge(cc, "person", why, sizeof(why)), CERTCHECK_REVOCATION_UNKNOWN);
	assert_non_null(strstr(why, "stale"));
	/* but what a stale CRL lists stays refused, even when unknown
	 * status is allowed: revocation is final */
	assert_int_equal(judge(cc, "revoked", why, sizeof(why)), CERTCHECK_REVOKED);
	assert_non_null(strstr(why, "(stale)"));
	certcheck_free(cc);

	cc = make("trust-list.conf", "crl-stale", NULL, 0, true);
	assert_int_equal(judge(cc, "person", why, sizeof(why)), CERTCHECK_OK);
	assert_non_null(strstr(why, "allowed"));
	assert_int_equal(judge(cc, "revoked", why, sizeof(why)), CERTCHECK_REVOKED);
	assert_int_equal(judge(cc, "suspended", why, sizeof(why)), CERTCHECK_SUSPENDED);
	certcheck_free(cc);

	/* Fresh CRL, but older than crl_max_age. */
	cc = make("trust-list.conf", "crl", NULL, 600, false);
	assert_int_equal(judge(cc, "person", why, sizeof(why)), CERTCHECK_OK);
	assert_int_equal(judge_at(cc, "person", time(NULL) + 3600, why, sizeof(why)),
			 CERTCHECK_REVOCATION_UNKNOWN);
	assert_non_null(strstr(why, "crl_max_age"));
	/* and a CRL past its nextUpdate (7 days) without a max age */
	certcheck_free(cc);
	cc = make("trust-list.conf", "crl", NULL, 0, false);
	assert_int_equal(judge_at(cc, "person", time(NULL) + 8 * 86400, why, sizeof(why)),
			 CERTCHECK_REVOCATION_UNKNOWN);
	/* a CRL dated after the moment judged is not evidence for it */
	assert_int_equal(judge_at(cc, "person", time(NULL) - 1800, why, sizeof(why)),
			 CERTCHECK_REVOCATION_UNKNOWN);
	certcheck_free(cc);
}

static void test_newest_crl_wins(void **state)
{
	(void)state;
	char why[256], fresh[256], stale[256];
	const char *files[3];
	path_of(fresh, sizeof(fresh), "crl/sub-ca.crl");
	path_of(stale, sizeof(stale), "crl-stale/sub-ca.crl");
	/* both orders: the stale copy never hides the fresh one */
	crls_in(stale, fresh, files);
	struct certcheck *cc = make("trust-list.conf", NULL, files, 0, false);
	assert_int_equal(judge(cc, "person", why, sizeof(why)), CERTCHECK_OK);
	assert_int_equal(judge(cc, "revoked", why, sizeof(why)), CERTCHECK_REVOKED);
	certcheck_free(cc);
	crls_in(fresh, stale, files);
	cc = make("trust-list.conf", NULL, files, 0, false);
	assert_int_equal(judge(cc, "person", why, sizeof(why)), CERTCHECK_OK);
	certcheck_free(cc);
}

static void test_no_crls(void **state)
{
	(void)state;
	char why[256];
	struct certcheck *cc = make("trust-list.conf", NULL, NULL, 0, false);
	assert_int_equal(judge(cc, "person", why, sizeof(why)), CERTCHECK_REVOCATION_UNKNOWN);
	assert_non_null(strstr(why, "no CRLs are configured"));
	certcheck_free(cc);
	cc = make("trust-list.conf", NULL, NULL, 0, true);
	assert_int_equal(judge(cc, "person", why, sizeof(why)), CERTCHECK_OK);
	certcheck_free(cc);

	/* Zero configuration: nothing to check revocation against. */
	cc = make(NULL, NULL, NULL, 0, false);
	assert_int_equal(judge(cc, "person", why, sizeof(why)), CERTCHECK_REVOCATION_UNKNOWN);
	certcheck_free(cc);
	struct certcheck *none = NULL;
	assert_int_equal(certcheck_new(NULL, &none), CKR_OK);
	assert_int_equal(judge(none, "person", why, sizeof(why)), CERTCHECK_REVOCATION_UNKNOWN);
	certcheck_free(none);
	/* and a NULL checker judges like an empty one */
	assert_int_equal(judge(NULL, "person", why, sizeof(why)), CERTCHECK_REVOCATION_UNKNOWN);

	/* CRLs of other centres only: this issuer's status is unknown. */
	char root[256];
	const char *files[3];
	path_of(root, sizeof(root), "crl/root-ca.crl");
	crls_in(root, NULL, files);
	cc = make("trust-list.conf", NULL, files, 0, false);
	assert_int_equal(judge(cc, "person", why, sizeof(why)), CERTCHECK_REVOCATION_UNKNOWN);
	assert_non_null(strstr(why, "no usable CRL of CN=Test Accredited Sub CA"));
	certcheck_free(cc);
}

static void test_forged_crl_ignored(void **state)
{
	(void)state;
	char why[256], forged[256], real[256];
	const char *files[3];
	path_of(forged, sizeof(forged), "forged-sub-ca.crl");
	path_of(real, sizeof(real), "crl/sub-ca.crl");
	write_forged_crl(forged);

	crls_in(forged, NULL, files);
	struct certcheck *cc = make("trust-list.conf", NULL, files, 0, false);
	assert_int_equal(judge(cc, "person", why, sizeof(why)), CERTCHECK_REVOCATION_UNKNOWN);
	certcheck_free(cc);

	/* newer than the real one, listing nothing: must not clear "revoked" */
	crls_in(real, forged, files);
	cc = make("trust-list.conf", NULL, files, 0, false);
	assert_int_equal(judge(cc, "revoked", why, sizeof(why)), CERTCHECK_REVOKED);
	assert_int_equal(judge(cc, "person", why, sizeof(why)), CERTCHECK_OK);
	certcheck_free(cc);
}

static void test_accreditation_period(void **state)
{
	(void)state;
	char why[256], path[256];
	static const char *const lists[] = {
	    /* accredited only after the certificates were issued */
	    "[centre]\nname = S\ncertificate = sub-ca.pem\naccredited_from = 2099-01-01\naccreditation = A\n",
	    /* accreditation ended before */
	    "[centre]\nname = S\ncertificate = sub-ca.pem\naccredited_from = 2020-01-01\n"
	    "accredited_until = 2021-12-31\naccreditation = A\n",
	};
	path_of(path, sizeof(path), "tl-period.conf");
	for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
		write_file(path, lists[i]);
		struct certcheck *cc = make(path, "crl", NULL, 0, false);
		assert_int_equal(judge(cc, "person", why, sizeof(why)), CERTCHECK_NOT_ACCREDITED);
		assert_non_null(strstr(why, "was not accredited on the issue date"));
		certcheck_free(cc);
	}
	/* The accredited intermediate alone is enough (partial chain), and
	 * its root's CRL in the directory is ignored with a log line. */
	write_file(path, "[centre]\nname = S\ncertificate = sub-ca.pem\naccredited_from = 2020-01-01\n"
			 "accreditation = A\n");
	struct certcheck *cc = make(path, "crl", NULL, 0, false);
	assert_int_equal(judge(cc, "person", why, sizeof(why)), CERTCHECK_OK);
	assert_int_equal(judge(cc, "revoked", why, sizeof(why)), CERTCHECK_REVOKED);
	certcheck_free(cc);
	/* Only the root listed: sub-ca, which signed the certificate, is not
	 * an accredited centre. */
	write_file(path, "[centre]\nname = R\ncertificate = root-ca.pem\naccredited_from = 2020-01-01\n"
			 "accreditation = A\n");
	cc = make(path, "crl", NULL, 0, true);
	assert_int_equal(judge(cc, "person", why, sizeof(why)), CERTCHECK_NOT_ACCREDITED);
	certcheck_free(cc);
}

static void test_malformed(void **state)
{
	(void)state;
	char why[256];
	static const unsigned char garbage[] = {0x30, 0x82, 0xff, 0xff, 0x01, 0x02, 0x03};
	static const unsigned char text[] = "-----BEGIN CERTIFICATE-----";
	struct certcheck *cc = make("trust-list.conf", "crl", NULL, 0, false);
	assert_int_equal(certcheck_judge(cc, garbage, sizeof(garbage), time(NULL), why, sizeof(why)),
			 CERTCHECK_MALFORMED);
	assert_int_equal(certcheck_judge(cc, text, sizeof(text), time(NULL), why, sizeof(why)),
			 CERTCHECK_MALFORMED);
	assert_int_equal(certcheck_judge(cc, NULL, 0, time(NULL), why, sizeof(why)), CERTCHECK_MALFORMED);
	assert_false(certcheck_is_qualified(cc, garbage, sizeof(garbage)));

	struct der d = cert("person");
	/* truncated */
	assert_int_equal(certcheck_judge(cc, d.p, d.len - 1, time(NULL), why, sizeof(why)),
			 CERTCHECK_MALFORMED);
	/* trailing bytes */
	unsigned char *longer = malloc(d.len + 1);
	assert_non_null(longer);
	memcpy(longer, d.p, d.len);
	longer[d.len] = 0;
	assert_int_equal(certcheck_judge(cc, longer, d.len + 1, time(NULL), why, sizeof(why)),
			 CERTCHECK_MALFORMED);
	assert_false(certcheck_is_qualified(cc, longer, d.len + 1));
	free(longer);
	/* every single-byte corruption is a verdict, never a crash, and only
	 * an intact certificate passes */
	for (CK_ULONG i = 0; i < d.len; i += 7) {
		unsigned char *c = malloc(d.len);
		assert_non_null(c);
		memcpy(c, d.p, d.len);
		c[i] ^= 0x5a;
		enum certcheck_verdict v = certcheck_judge(cc, c, d.len, time(NULL), why, sizeof(why));
		assert_int_not_equal(v, CERTCHECK_OK);
		free(c);
	}
	/* tiny or absent why buffers are fine */
	assert_int_equal(certcheck_judge(cc, d.p, d.len, time(NULL), why, 1), CERTCHECK_OK);
	assert_int_equal(why[0], '\0');
	assert_int_equal(certcheck_judge(cc, d.p, d.len, time(NULL), NULL, 0), CERTCHECK_OK);
	OPENSSL_free(d.p);
	certcheck_free(cc);
}

/* ---- configuration errors ----------------------------------------------- */

static void test_trust_list_errors(void **state)
{
	(void)state;
	static const char *const bad[] = {
	    "", /* no centre */
	    "# only a comment\n",
	    "name = x\n", /* outside a section */
	    "[centres]\n",
	    "[centre]\nname = S\ncertificate = sub-ca.pem\naccredited_from = 2020-01-01\naccreditation = A\n"
	    "colour = blue\n", /* unknown key */
	    "[centre]\nname = S\ncertificate = sub-ca.pem\naccredited_from = 2020-02-30\naccreditation = A\n",
	    "[centre]\nname = S\ncertificate = sub-ca.pem\naccredited_from = 2020-1-1\naccreditation = A\n",
	    "[centre]\nname = S\ncertificate = sub-ca.pem\naccredited_from = yesterday\naccreditation = A\n",
	    "[centre]\nname = S\ncertificate = sub-ca.pem\naccredited_from = 2020-01-01x\naccreditation = "
	    "A\n",
	    "[centre]\nname = S\ncertificate = nothere.pem\naccredited_from = 2020-01-01\naccreditation = "
	    "A\n",
	    "[centre]\nname = S\ncertificate = person.pem\naccredited_from = 2020-01-01\naccreditation = A\n",
	    "[centre]\nname = S\ncertificate = crl/sub-ca.crl\naccredited_from = 2020-01-01\naccreditation = "
	    "A\n",
	    "[centre]\nname = S\ncertificate = sub-ca.key\naccredited_from = 2020-01-01\naccreditation = A\n",
	    "[centre]\nname = S\naccredited_from = 2020-01-01\naccreditation = A\n", /* no certificate */
	    "[centre]\ncertificate = sub-ca.pem\naccredited_from = 2020-01-01\naccreditation = A\n",
	    "[centre]\nname = S\ncertificate = sub-ca.pem\naccreditation = A\n",
	    "[centre]\nname = S\ncertificate = sub-ca.pem\naccredited_from = 2020-01-01\n",
	    "[centre]\nname = S\nname = T\ncertificate = sub-ca.pem\naccredited_from = "
	    "2020-01-01\naccreditation = A\n",
	    "[centre]\nname = S\ncertificate = sub-ca.pem\naccredited_from = 2020-01-01\naccreditation = A\n"
	    "legacy = maybe\n",
	    "[centre]\nname = S\ncertificate = sub-ca.pem\naccredited_from = 2020-01-01\naccreditation = A\n"
	    "accredited_until = 2019-12-31\n",
	    "[centre]\nname =\ncertificate = sub-ca.pem\naccredited_from = 2020-01-01\naccreditation = A\n",
	    "[centre]\nname S\n",
	    /* the second centre is broken */
	    "[centre]\nname = S\ncertificate = sub-ca.pem\naccredited_from = 2020-01-01\naccreditation = A\n"
	    "[centre]\nname = R\n",
	};
	char path[256];
	path_of(path, sizeof(path), "tl-bad.conf");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		write_file(path, bad[i]);
		struct certcheck_config cfg = {.trust_list = path};
		struct certcheck *cc = (struct certcheck *)1;
		if (certcheck_new(&cfg, &cc) != CKR_GENERAL_ERROR)
			fail_msg("trust list %zu accepted: %s", i, bad[i]);
		assert_ptr_equal(cc, (struct certcheck *)1);
	}
	/* the good form, with every optional key and comments */
	write_file(path, "# comment\n\n[centre]   # trailing\n  name = Sub # the sub CA\n"
			 "certificate = sub-ca.pem\r\naccredited_from = 2020-02-29\n"
			 "accredited_until = 2040-12-31\naccreditation = KG-1\nlegacy = no\n");
	struct certcheck *cc = make(path, NULL, NULL, 0, true);
	certcheck_free(cc);
	/* a missing trust list file is an error too */
	struct certcheck_config cfg = {.trust_list = "/nonexistent/trust-list.conf"};
	assert_int_equal(certcheck_new(&cfg, &cc), CKR_GENERAL_ERROR);
}

static void test_crl_config_errors(void **state)
{
	(void)state;
	char dir[256], path[1024], tl[256];
	struct certcheck *cc = NULL;
	path_of(tl, sizeof(tl), "trust-list.conf");

	/* a non-CRL file in the directory */
	path_of(dir, sizeof(dir), "crl-bad");
	assert_int_equal(mkdir(dir, 0700), 0);
	snprintf(path, sizeof(path), "%s/readme.txt", dir);
	write_file(path, "not a CRL\n");
	struct certcheck_config cfg = {.trust_list = tl, .crl_dir = dir};
	assert_int_equal(certcheck_new(&cfg, &cc), CKR_GENERAL_ERROR);
	unlink(path);
	/* a certificate is not a CRL either */
	snprintf(path, sizeof(path), "cp '%s/sub-ca.pem' '%s/'", pki, dir);
	assert_int_equal(system(path), 0);
	assert_int_equal(certcheck_new(&cfg, &cc), CKR_GENERAL_ERROR);
	snprintf(path, sizeof(path), "%s/sub-ca.pem", dir);
	unlink(path);
	/* hidden files (downloads in progress) and subdirectories are skipped */
	snprintf(path, sizeof(path), "%s/.partial", dir);
	write_file(path, "half a CRL");
	snprintf(path, sizeof(path), "%s/sub", dir);
	assert_int_equal(mkdir(path, 0700), 0);
	assert_int_equal(certcheck_new(&cfg, &cc), CKR_OK);
	certcheck_free(cc);

	/* a missing directory, a missing file */
	cfg.crl_dir = "/nonexistent/crls";
	assert_int_equal(certcheck_new(&cfg, &cc), CKR_GENERAL_ERROR);
	const char *files[] = {"/nonexistent/x.crl", NULL};
	cfg.crl_dir = NULL;
	cfg.crl_files = files;
	assert_int_equal(certcheck_new(&cfg, &cc), CKR_GENERAL_ERROR);

	/* CRLs cannot be verified without the trust list */
	path_of(path, sizeof(path), "crl/sub-ca.crl");
	files[0] = path;
	cfg.trust_list = NULL;
	assert_int_equal(certcheck_new(&cfg, &cc), CKR_GENERAL_ERROR);

	/* DER CRLs and DER certificates are read too */
	char cmd[1024];
	snprintf(cmd, sizeof(cmd),
		 "openssl crl -in '%s/crl/sub-ca.crl' -outform DER -out '%s/sub.der' && "
		 "openssl x509 -in '%s/sub-ca.pem' -outform DER -out '%s/sub-ca.der'",
		 pki, pki, pki, pki);
	assert_int_equal(system(cmd), 0);
	path_of(path, sizeof(path), "tl-der.conf");
	write_file(path, "[centre]\nname = S\ncertificate = sub-ca.der\naccredited_from = 2020-01-01\n"
			 "accreditation = A\n");
	char der[256];
	path_of(der, sizeof(der), "sub.der");
	files[0] = der;
	cc = make(path, NULL, files, 0, false);
	char why[256];
	assert_int_equal(judge(cc, "revoked", why, sizeof(why)), CERTCHECK_REVOKED);
	assert_int_equal(judge(cc, "person", why, sizeof(why)), CERTCHECK_OK);
	certcheck_free(cc);
}

/* ---- the rest ------------------------------------------------------------ */

struct worker {
	const struct certcheck *cc;
	struct der person, revoked;
	int bad;
};

static void *work(void *arg)
{
	struct worker *w = arg;
	char why[256];
	for (int i = 0; i < 200; i++) {
		if (certcheck_judge(w->cc, w->person.p, w->person.len, time(NULL), why, sizeof(why)) !=
		    CERTCHECK_OK)
			__atomic_add_fetch(&w->bad, 1, __ATOMIC_RELAXED);
		if (certcheck_judge(w->cc, w->revoked.p, w->revoked.len, time(NULL), why, sizeof(why)) !=
		    CERTCHECK_REVOKED)
			__atomic_add_fetch(&w->bad, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

static void test_threads(void **state)
{
	(void)state;
	pthread_t t[8];
	struct worker w = {.person = cert("person"), .revoked = cert("revoked")};
	struct certcheck *cc = make("trust-list.conf", "crl", NULL, 0, false);
	w.cc = cc;
	for (size_t i = 0; i < 8; i++)
		assert_int_equal(pthread_create(&t[i], NULL, work, &w), 0);
	for (size_t i = 0; i < 8; i++)
		pthread_join(t[i], NULL);
	assert_int_equal(w.bad, 0);
	certcheck_free(cc);
	OPENSSL_free(w.person.p);
	OPENSSL_free(w.revoked.p);
}

static void test_verdict_names(void **state)
{
	(void)state;
	for (int v = CERTCHECK_OK; v <= CERTCHECK_MALFORMED; v++) {
		const char *n = certcheck_verdict_name(v);
		assert_non_null(n);
		for (int u = CERTCHECK_OK; u < v; u++)
			assert_string_not_equal(n, certcheck_verdict_name(u));
	}
	assert_non_null(certcheck_verdict_name(99));
}

static time_t not_after_of(const char *name)
{
	struct der d = cert(name);
	const unsigned char *p = d.p;
	X509 *x = d2i_X509(NULL, &p, (long)d.len);
	struct tm tm;
	assert_non_null(x);
	assert_int_equal(ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm), 1);
	X509_free(x);
	OPENSSL_free(d.p);
	return timegm(&tm);
}

/* Verdicts are remembered per thread for the current second (a seal asks
 * thousands of times a second); never across seconds, certificates or
 * configurations, including one allocated where a freed one was. */
static void test_memo_never_stale(void **state)
{
	(void)state;
	char why[256], first[256];
	time_t end = not_after_of("person"), t = time(NULL);
	struct certcheck *crl = make("trust-list.conf", "crl", NULL, 0, true);
	struct certcheck *none = make("trust-list.conf", NULL, NULL, 0, false);

	/* The last second of validity, then the first one after it. */
	for (int round = 0; round < 2; round++) {
		assert_int_equal(judge_at(crl, "person", end, why, sizeof(why)), CERTCHECK_OK);
		assert_int_equal(judge_at(crl, "person", end + 1, why, sizeof(why)), CERTCHECK_EXPIRED);
	}
	/* One second, several certificates, two configurations. */
	for (int round = 0; round < 3; round++) {
		assert_int_equal(judge_at(crl, "revoked", t, why, sizeof(why)), CERTCHECK_REVOKED);
		assert_int_equal(judge_at(crl, "person", t, why, sizeof(why)), CERTCHECK_OK);
		if (round == 0)
			snprintf(first, sizeof(first), "%s", why);
		else
			assert_string_equal(why, first); /* a remembered verdict keeps its reason */
		assert_int_equal(judge_at(none, "person", t, why, sizeof(why)), CERTCHECK_REVOCATION_UNKNOWN);
		assert_int_equal(judge_at(crl, "suspended", t, why, sizeof(why)), CERTCHECK_SUSPENDED);
		assert_int_equal(judge_at(crl, "seal", t, why, sizeof(why)), CERTCHECK_OK);
	}
	/* A new configuration, maybe at a freed one's address, asks afresh. */
	certcheck_free(none);
	none = make("trust-list.conf", "crl", NULL, 0, true);
	assert_int_equal(judge_at(none, "person", t, why, sizeof(why)), CERTCHECK_OK);
	certcheck_free(crl);
	crl = make("trust-list.conf", NULL, NULL, 0, false);
	assert_int_equal(judge_at(crl, "person", t, why, sizeof(why)), CERTCHECK_REVOCATION_UNKNOWN);
	certcheck_free(crl);
	certcheck_free(none);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_good_certificates),
	    cmocka_unit_test(test_person_ok_why),
	    cmocka_unit_test(test_dates),
	    cmocka_unit_test(test_revoked_and_suspended),
	    cmocka_unit_test(test_key_usage),
	    cmocka_unit_test(test_rogue_not_accredited),
	    cmocka_unit_test(test_legacy),
	    cmocka_unit_test(test_not_qualified),
	    cmocka_unit_test(test_stale_crl),
	    cmocka_unit_test(test_newest_crl_wins),
	    cmocka_unit_test(test_no_crls),
	    cmocka_unit_test(test_forged_crl_ignored),
	    cmocka_unit_test(test_accreditation_period),
	    cmocka_unit_test(test_malformed),
	    cmocka_unit_test(test_trust_list_errors),
	    cmocka_unit_test(test_crl_config_errors),
	    cmocka_unit_test(test_threads),
	    cmocka_unit_test(test_verdict_names),
	    cmocka_unit_test(test_memo_never_stale),
	};
	kt_debug_init(); /* KOLTAMGA_DEBUG=policy shows every verdict's reason */
	if (system("openssl version >/dev/null 2>&1") != 0)
		return 77; /* gen.sh needs the openssl command line */
	return cmocka_run_group_tests(tests, setup_pki, teardown_pki);
}
