/*
 * The law's checks of a qualified certificate (see certcheck.h and
 * docs/trust-and-revocation.md).
 *
 * Everything costly happens once, in certcheck_new(): the trust list is
 * parsed, its certificates become the trust anchors of one X509_STORE, and
 * every CRL is verified against its issuing centre and attached to that
 * centre (the newest one wins).  After that the struct is never written, so
 * certcheck_judge() may run in several threads at once: each call owns its
 * parsed certificate and its X509_STORE_CTX, and only reads the rest.
 */
#include "certcheck.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "crypto.h"
#include "log.h"

/* A trust list, certificate or CRL larger than this is a mistake (the
 * biggest national CRLs are a few MiB). */
#define MAX_FILE_SIZE (64u << 20)

/* Reason code certificateHold (RFC 5280 5.3.1): the law's "suspended". */
#define CRL_REASON_HOLD 6

/* DER contents of OID 0.4.0.1862.1.1 (ETSI EN 319 412-5 QcCompliance).
 * Compared as bytes: no OBJ table lookup and no allocation per judgement. */
static const unsigned char qc_compliance_der[] = {0x04, 0x00, 0x8e, 0x46, 0x01, 0x01};

struct crl {
	X509_CRL *crl; /* NULL: the centre has no usable CRL */
	char *file;
	time_t this_update;
	time_t next_update;
	bool has_next_update;
};

struct centre {
	char *name;	     /* as the trust list says: for the administrator */
	char *accreditation; /* the accreditation document's number */
	char *display;	     /* "CN=..." of its certificate, for log lines */
	X509 *cert;
	time_t from, until; /* accreditation, both inclusive */
	bool has_until;
	bool legacy;   /* art. 20: its certificates count as qualified */
	unsigned line; /* where its [centre] starts, for messages */
	struct crl crl;
};

struct certcheck {
	struct centre *centres;
	size_t n_centres;
	X509_STORE *store; /* the centres' certificates; NULL: no trust list */
	size_t n_crls;	   /* CRL files read, whether usable or not */
	unsigned long crl_max_age;
	bool allow_unknown;
	unsigned long generation; /* unique per certcheck_new, for the verdict memo */
};

static const char *const verdict_names[] = {
    [CERTCHECK_OK] = "ok",
    [CERTCHECK_NOT_QUALIFIED] = "not qualified",
    [CERTCHECK_EXPIRED] = "expired",
    [CERTCHECK_NOT_YET_VALID] = "not yet valid",
    [CERTCHECK_REVOKED] = "revoked",
    [CERTCHECK_SUSPENDED] = "suspended",
    [CERTCHECK_REVOCATION_UNKNOWN] = "revocation status unknown",
    [CERTCHECK_KEY_USAGE] = "key usage",
    [CERTCHECK_NOT_ACCREDITED] = "not accredited",
    [CERTCHECK_MALFORMED] = "malformed certificate",
};

const char *certcheck_verdict_name(enum certcheck_verdict v)
{
	if ((unsigned)v < KT_ARRAY_SIZE(verdict_names) && verdict_names[v])
		return verdict_names[v];
	return "unknown verdict";
}

/* ---- small helpers ---------------------------------------------------- */

static void say(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	if (!buf || !len)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, len, fmt, ap);
	va_end(ap);
}

static char *trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	char *end = s + strlen(s);
	while (end > s && isspace((unsigned char)end[-1]))
		*--end = '\0';
	return s;
}

static bool asn1_time_get(const ASN1_TIME *t, time_t *out)
{
	struct tm tm;
	/* ASN1_TIME_to_tm(NULL) would mean "now": never let a missing
	 * field pass as the current time. */
	if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
		return false;
	*out = timegm(&tm);
	return true;
}

static void fmt_time(char *buf, size_t len, time_t t, bool with_clock)
{
	struct tm tm;
	if (!gmtime_r(&t, &tm) || !strftime(buf, len, with_clock ? "%Y-%m-%d %H:%M:%S UTC" : "%Y-%m-%d", &tm))
		snprintf(buf, len, "(time %lld)", (long long)t);
}

/* Names come from certificates anyone can make: keep control characters
 * (a newline would forge a log line) out of what we print. */
static void sanitize(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			*s = '?';
}

/* A centre's name for log lines: "CN=<common name>", or the whole name in
 * RFC 2253 form when it has no CN.  Only ever called on issuer names:
 * the holder's name is personal data and never goes into a log line. */
static void name_display(const X509_NAME *name, char *buf, size_t len)
{
	int i = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
	unsigned char *utf8 = NULL;
	BIO *bio = NULL;

	snprintf(buf, len, "(unnamed)");
	if (i >= 0) {
		const ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
		if (ASN1_STRING_to_UTF8(&utf8, s) >= 0) {
			snprintf(buf, len, "CN=%s", (char *)utf8);
			goto out;
		}
	}
	bio = BIO_new(BIO_s_mem());
	if (bio && X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) >= 0) {
		char *p;
		long n = BIO_get_mem_data(bio, &p);
		if (n >= 0)
			snprintf(buf, len, "%.*s", (int)(n > INT_MAX ? INT_MAX : n), p);
	}
out:
	sanitize(buf);
	OPENSSL_free(utf8);
	BIO_free(bio);
	ERR_clear_error();
}

static void serial_display(const X509 *x, char *buf, size_t len)
{
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
	char *hex = bn ? BN_bn2hex(bn) : NULL;
	/* A serial is at most 20 octets (RFC 5280); a longer one is cut. */
	snprintf(buf, len, "%.40s", hex ? hex : "?");
	OPENSSL_free(hex);
	BN_free(bn);
}

/* Read a whole file: 0, or an errno value for strerror(). */
static int slurp(const char *path, unsigned char **out, size_t *out_len)
{
	int err = 0;
	unsigned char *buf = NULL;
	struct stat st;
	FILE *f = fopen(path, "rb");
	if (!f) {
		err = errno;
		goto out;
	}
	if (fstat(fileno(f), &st) != 0) {
		err = errno;
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		err = EINVAL;
		goto out;
	}
	if (st.st_size > (off_t)MAX_FILE_SIZE) {
		err = EFBIG;
		goto out;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		err = ENOMEM;
		goto out;
	}
	size_t n = fread(buf, 1, (size_t)st.st_size, f);
	if (n != (size_t)st.st_size || ferror(f)) {
		err = EIO;
		goto out;
	}
	buf[n] = '\0';
	*out = buf;
	*out_len = n;
	buf = NULL;
out:
	free(buf);
	if (f)
		fclose(f);
	return err;
}

/* A DER blob must be exactly one object: trailing bytes mean corruption. */
static X509 *cert_from_der(const unsigned char *der, size_t len)
{
	const unsigned char *p = der;
	X509 *x;
	if (!der || !len || len > LONG_MAX)
		return NULL;
	x = d2i_X509(NULL, &p, (long)len);
	if (x && p != der + len) {
		X509_free(x);
		x = NULL;
	}
	if (x) {
		/* Decode and cache the extensions now, so later reads are
		 * lock-free, and refuse what OpenSSL finds inconsistent
		 * (duplicate extensions, undecodable key usage, ...). */
		X509_check_purpose(x, -1, 0);
		if (X509_get_extension_flags(x) & EXFLAG_INVALID) {
			X509_free(x);
			x = NULL;
		}
	}
	return x;
}

/* PEM (the first certificate; a second one is an error) or DER. */
static X509 *cert_from_file_data(const unsigned char *buf, size_t len, const char **why)
{
	X509 *x = NULL, *extra = NULL;
	BIO *bio = NULL;
	*why = "neither a PEM nor a DER certificate";
	if (len && buf[0] == 0x30) {
		x = cert_from_der(buf, len);
		goto out;
	}
	if (len > INT_MAX || !(bio = BIO_new_mem_buf(buf, (int)len)))
		goto out;
	x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
	if (!x)
		goto out;
	extra = PEM_read_bio_X509(bio, NULL, NULL, NULL);
	if (extra) {
		*why = "more than one certificate in the file";
		X509_free(x);
		x = NULL;
		goto out;
	}
	X509_check_purpose(x, -1, 0);
	if (X509_get_extension_flags(x) & EXFLAG_INVALID) {
		*why = "the certificate has invalid extensions";
		X509_free(x);
		x = NULL;
	}
out:
	X509_free(extra);
	BIO_free(bio);
	ERR_clear_error();
	return x;
}

static X509_CRL *crl_from_file_data(const unsigned char *buf, size_t len)
{
	X509_CRL *crl = NULL;
	BIO *bio = NULL;
	if (len && buf[0] == 0x30) {
		const unsigned char *p = buf;
		if (len > LONG_MAX)
			goto out;
		crl = d2i_X509_CRL(NULL, &p, (long)len);
		if (crl && p != buf + len) {
			X509_CRL_free(crl);
			crl = NULL;
		}
		goto out;
	}
	if (len > INT_MAX || !(bio = BIO_new_mem_buf(buf, (int)len)))
		goto out;
	crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL);
out:
	BIO_free(bio);
	ERR_clear_error();
	return crl;
}

/* ---- the trust list ------------------------------------------------------ */

/* "YYYY-MM-DD", a real calendar day; start of that day, UTC. */
static bool parse_date(const char *s, time_t *out)
{
	static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int y, m, d;
	struct tm tm = {0};
	if (strlen(s) != 10 || s[4] != '-' || s[7] != '-')
		return false;
	for (int i = 0; i < 10; i++)
		if (i != 4 && i != 7 && !isdigit((unsigned char)s[i]))
			return false;
	y = atoi(s);
	m = atoi(s + 5);
	d = atoi(s + 8);
	if (y < 1970 || m < 1 || m > 12 || d < 1)
		return false;
	bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
	if (d > mdays[m - 1] + (m == 2 && leap))
		return false;
	tm.tm_year = y - 1900;
	tm.tm_mon = m - 1;
	tm.tm_mday = d;
	*out = timegm(&tm);
	return true;
}

struct tl_parse {
	const char *path; /* the trust list, for messages */
	char *dir;	  /* its directory: relative certificate paths */
	unsigned lineno;
	struct centre *cur;
	unsigned seen; /* bit per key of the current [centre] */
};

enum tl_key { TL_NAME, TL_CERTIFICATE, TL_FROM, TL_UNTIL, TL_ACCREDITATION, TL_LEGACY };
static const char *const tl_keys[] = {
    [TL_NAME] = "name",
    [TL_CERTIFICATE] = "certificate",
    [TL_FROM] = "accredited_from",
    [TL_UNTIL] = "accredited_until",
    [TL_ACCREDITATION] = "accreditation",
    [TL_LEGACY] = "legacy",
};
#define TL_REQUIRED ((1u << TL_NAME) | (1u << TL_CERTIFICATE) | (1u << TL_FROM) | (1u << TL_ACCREDITATION))

static CK_RV tl_load_cert(struct tl_parse *tp, const char *val)
{
	CK_RV rv = CKR_GENERAL_ERROR;
	char *path = NULL;
	unsigned char *buf = NULL;
	size_t len = 0;
	const char *why;
	struct centre *c = tp->cur;
	char disp[256];

	if (val[0] == '/')
		path = strdup(val);
	else if (asprintf(&path, "%s/%s", tp->dir, val) < 0)
		path = NULL;
	if (!path) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	int err = slurp(path, &buf, &len);
	if (err) {
		kt_log("%s: line %u: certificate %s: %s", tp->path, tp->lineno, path, strerror(err));
		goto out;
	}
	c->cert = cert_from_file_data(buf, len, &why);
	if (!c->cert) {
		kt_log("%s: line %u: certificate %s: %s", tp->path, tp->lineno, path, why);
		goto out;
	}
	if (!X509_check_ca(c->cert)) {
		kt_log("%s: line %u: certificate %s is not a CA certificate", tp->path, tp->lineno, path);
		goto out;
	}
	if (!X509_get0_pubkey(c->cert)) {
		kt_log("%s: line %u: certificate %s: unsupported public key", tp->path, tp->lineno, path);
		goto out;
	}
	name_display(X509_get_subject_name(c->cert), disp, sizeof(disp));
	c->display = strdup(disp);
	if (!c->display) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	rv = CKR_OK;
out:
	ERR_clear_error();
	free(buf);
	free(path);
	return rv;
}

static CK_RV tl_set(struct tl_parse *tp, const char *key, const char *val)
{
	struct centre *c = tp->cur;
	size_t k;
	for (k = 0; k < KT_ARRAY_SIZE(tl_keys); k++)
		if (strcmp(key, tl_keys[k]) == 0)
			break;
	if (k == KT_ARRAY_SIZE(tl_keys)) {
		kt_log("%s: line %u: unknown key '%s'", tp->path, tp->lineno, key);
		return CKR_GENERAL_ERROR;
	}
	if (tp->seen & (1u << k)) {
		kt_log("%s: line %u: '%s' given twice in one [centre]", tp->path, tp->lineno, key);
		return CKR_GENERAL_ERROR;
	}
	tp->seen |= 1u << k;
	if (!*val) {
		kt_log("%s: line %u: '%s' has no value", tp->path, tp->lineno, key);
		return CKR_GENERAL_ERROR;
	}
	switch ((enum tl_key)k) {
	case TL_NAME:
		return (c->name = strdup(val)) ? CKR_OK : CKR_HOST_MEMORY;
	case TL_ACCREDITATION:
		return (c->accreditation = strdup(val)) ? CKR_OK : CKR_HOST_MEMORY;
	case TL_CERTIFICATE:
		return tl_load_cert(tp, val);
	case TL_FROM:
	case TL_UNTIL:
		if (!parse_date(val, k == TL_FROM ? &c->from : &c->until)) {
			kt_log("%s: line %u: '%s' is not a date (YYYY-MM-DD): '%s'", tp->path, tp->lineno,
			       key, val);
			return CKR_GENERAL_ERROR;
		}
		if (k == TL_UNTIL) {
			/* The last day of accreditation counts in full. */
			c->until += 86399;
			c->has_until = true;
		}
		return CKR_OK;
	case TL_LEGACY:
		if (strcmp(val, "yes") == 0)
			c->legacy = true;
		else if (strcmp(val, "no") == 0)
			c->legacy = false;
		else {
			kt_log("%s: line %u: 'legacy' must be yes or no, not '%s'", tp->path, tp->lineno,
			       val);
			return CKR_GENERAL_ERROR;
		}
		return CKR_OK;
	}
	return CKR_GENERAL_ERROR;
}

/* The [centre] just ended: is it complete and coherent? */
static CK_RV tl_finish_centre(struct tl_parse *tp)
{
	struct centre *c = tp->cur;
	if (!c)
		return CKR_OK;
	for (size_t k = 0; k < KT_ARRAY_SIZE(tl_keys); k++) {
		if ((TL_REQUIRED & (1u << k)) && !(tp->seen & (1u << k))) {
			kt_log("%s: [centre] at line %u: '%s' is missing", tp->path, c->line, tl_keys[k]);
			return CKR_GENERAL_ERROR;
		}
	}
	if (c->has_until && c->until < c->from) {
		kt_log("%s: [centre] at line %u: accredited_until is before accredited_from", tp->path,
		       c->line);
		return CKR_GENERAL_ERROR;
	}
	tp->cur = NULL;
	tp->seen = 0;
	return CKR_OK;
}

static CK_RV tl_new_centre(struct certcheck *cc, struct tl_parse *tp)
{
	struct centre *n = realloc(cc->centres, (cc->n_centres + 1) * sizeof(*n));
	if (!n)
		return CKR_HOST_MEMORY;
	cc->centres = n;
	tp->cur = &n[cc->n_centres++];
	memset(tp->cur, 0, sizeof(*tp->cur));
	tp->cur->line = tp->lineno;
	return CKR_OK;
}

static CK_RV trust_list_load(struct certcheck *cc, const char *path)
{
	CK_RV rv = CKR_GENERAL_ERROR;
	unsigned char *buf = NULL;
	size_t len = 0;
	struct tl_parse tp = {.path = path};
	char *slash;

	int err = slurp(path, &buf, &len);
	if (err) {
		kt_log("trust list %s: %s", path, strerror(err));
		goto out;
	}
	if (memchr(buf, '\0', len)) {
		kt_log("trust list %s is not a text file", path);
		goto out;
	}
	tp.dir = strdup(path);
	if (!tp.dir) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	slash = strrchr(tp.dir, '/');
	if (slash)
		*(slash == tp.dir ? slash + 1 : slash) = '\0';
	else
		strcpy(tp.dir, ".");

	char *save = NULL;
	for (char *p = (char *)buf, *line; p; p = save) {
		/* strtok would swallow empty lines and miscount. */
		save = strchr(p, '\n');
		if (save)
			*save++ = '\0';
		line = p;
		tp.lineno++;
		char *hash = strchr(line, '#');
		if (hash)
			*hash = '\0';
		line = trim(line);
		if (!*line)
			continue;
		if (line[0] == '[') {
			if (strcmp(line, "[centre]") != 0) {
				kt_log("%s: line %u: unknown section '%s'", path, tp.lineno, line);
				goto out;
			}
			if ((rv = tl_finish_centre(&tp)) != CKR_OK || (rv = tl_new_centre(cc, &tp)) != CKR_OK)
				goto out;
			rv = CKR_GENERAL_ERROR;
			continue;
		}
		char *eq = strchr(line, '=');
		if (!eq) {
			kt_log("%s: line %u: expected 'key = value'", path, tp.lineno);
			goto out;
		}
		*eq = '\0';
		char *key = trim(line), *val = trim(eq + 1);
		if (!tp.cur) {
			kt_log("%s: line %u: '%s' outside a [centre] section", path, tp.lineno, key);
			goto out;
		}
		if ((rv = tl_set(&tp, key, val)) != CKR_OK)
			goto out;
		rv = CKR_GENERAL_ERROR;
	}
	if ((rv = tl_finish_centre(&tp)) != CKR_OK)
		goto out;
	rv = CKR_GENERAL_ERROR;
	if (!cc->n_centres) {
		/* An empty list would refuse every qualified signature, which
		 * is surely not what whoever configured it meant. */
		kt_log("trust list %s names no [centre]", path);
		goto out;
	}

	cc->store = X509_STORE_new();
	if (!cc->store) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	/* Every centre is an anchor: an accredited intermediate is enough,
	 * its root need not be listed (or accredited). */
	X509_STORE_set_flags(cc->store, X509_V_FLAG_PARTIAL_CHAIN);
	for (size_t i = 0; i < cc->n_centres; i++) {
		if (X509_STORE_add_cert(cc->store, cc->centres[i].cert) != 1) {
			kt_log("%s: [centre] at line %u: its certificate cannot be added to the trust store",
			       path, cc->centres[i].line);
			goto out;
		}
	}
	rv = CKR_OK;
out:
	ERR_clear_error();
	free(tp.dir);
	free(buf);
	return rv;
}

/* ---- CRLs ---------------------------------------------------------------- */

static void crl_clear(struct crl *c)
{
	X509_CRL_free(c->crl);
	free(c->file);
	memset(c, 0, sizeof(*c));
}

/* Why a verified CRL cannot be used as a full CRL of the centre's
 * end-entity certificates; NULL when it can. */
static const char *crl_scope_problem(X509_CRL *crl)
{
	const char *why = NULL;
	int crit = 0;
	ISSUING_DIST_POINT *idp = NULL;
	ASN1_INTEGER *delta = X509_CRL_get_ext_d2i(crl, NID_delta_crl, &crit, NULL);
	if (delta) {
		why = "it is a delta CRL";
		goto out;
	}
	if (crit != -1) {
		why = "its delta CRL indicator is malformed";
		goto out;
	}
	idp = X509_CRL_get_ext_d2i(crl, NID_issuing_distribution_point, &crit, NULL);
	if (!idp && crit != -1) {
		why = "its issuing distribution point is malformed";
		goto out;
	}
	/* A CRL that covers only CA certificates, only some reasons or other
	 * issuers' certificates does not say an end entity is in good
	 * standing.  (onlyContainsUserCerts is fine: that is us.) */
	if (idp && (idp->onlyCA > 0 || idp->onlysomereasons || idp->indirectCRL > 0 || idp->onlyattr > 0))
		why = "its issuing distribution point limits its scope";
out:
	ISSUING_DIST_POINT_free(idp);
	ASN1_INTEGER_free(delta);
	ERR_clear_error();
	return why;
}

/* Attach a CRL to the trust-list centre that signed it, or drop it with a
 * log line.  Takes ownership of crl. */
static CK_RV crl_attach(struct certcheck *cc, X509_CRL *crl, const char *file)
{
	CK_RV rv = CKR_HOST_MEMORY;
	struct centre *by = NULL;
	bool name_known = false;
	struct crl c = {0};
	const char *why;
	X509_REVOKED *rev;

	for (size_t i = 0; i < cc->n_centres && !by; i++) {
		struct centre *ce = &cc->centres[i];
		if (X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(ce->cert)) != 0)
			continue;
		name_known = true;
		if (X509_CRL_verify(crl, X509_get0_pubkey(ce->cert)) == 1)
			by = ce;
	}
	ERR_clear_error();
	if (!by) {
		kt_log("CRL %s ignored: %s", file,
		       name_known ? "its signature does not verify with its issuer's key from the trust list"
				  : "its issuer is not in the trust list");
		rv = CKR_OK;
		goto out;
	}
	if ((X509_get_extension_flags(by->cert) & EXFLAG_KUSAGE) &&
	    !(X509_get_key_usage(by->cert) & KU_CRL_SIGN)) {
		kt_log("CRL %s ignored: the key usage of %s does not allow signing CRLs", file, by->display);
		rv = CKR_OK;
		goto out;
	}
	if ((why = crl_scope_problem(crl))) {
		kt_log("CRL %s ignored: %s", file, why);
		rv = CKR_OK;
		goto out;
	}
	if (!asn1_time_get(X509_CRL_get0_lastUpdate(crl), &c.this_update) ||
	    (X509_CRL_get0_nextUpdate(crl) &&
	     !asn1_time_get(X509_CRL_get0_nextUpdate(crl), &c.next_update))) {
		kt_log("CRL %s ignored: its dates cannot be read", file);
		rv = CKR_OK;
		goto out;
	}
	c.has_next_update = X509_CRL_get0_nextUpdate(crl) != NULL;
	/* The newest CRL is the truth; an older one (a forgotten copy, a
	 * replayed file) must not hide a later revocation. */
	if (by->crl.crl && by->crl.this_update >= c.this_update) {
		kt_debug(KT_DBG_POLICY, "CRL %s: %s has a newer one (%s)", file, by->display, by->crl.file);
		rv = CKR_OK;
		goto out;
	}
	c.file = strdup(file);
	if (!c.file)
		goto out;
	/* OpenSSL sorts the revoked list on first lookup (under a lock);
	 * do it now so concurrent judgements only ever read. */
	X509_CRL_get0_by_serial(crl, &rev, X509_get0_serialNumber(by->cert));
	ERR_clear_error();
	c.crl = crl;
	crl = NULL;
	crl_clear(&by->crl);
	by->crl = c;
	memset(&c, 0, sizeof(c));
	kt_debug(KT_DBG_POLICY, "CRL %s: of %s", file, by->display);
	rv = CKR_OK;
out:
	crl_clear(&c);
	X509_CRL_free(crl);
	return rv;
}

static CK_RV crl_load_file(struct certcheck *cc, const char *file)
{
	CK_RV rv = CKR_GENERAL_ERROR;
	unsigned char *buf = NULL;
	size_t len = 0;
	X509_CRL *crl = NULL;
	int err = slurp(file, &buf, &len);
	if (err) {
		kt_log("CRL %s: %s", file, strerror(err));
		goto out;
	}
	crl = crl_from_file_data(buf, len);
	if (!crl) {
		/* Loud: a certificate or a half-downloaded file where a CRL
		 * should be means revocation is not what the admin thinks. */
		kt_log("CRL %s: not a CRL (PEM or DER)", file);
		goto out;
	}
	cc->n_crls++;
	rv = crl_attach(cc, crl, file);
	crl = NULL;
out:
	X509_CRL_free(crl);
	free(buf);
	return rv;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every regular file of the directory, in name order so that the same
 * files always give the same log lines.  Hidden files are skipped: that
 * is where a download in progress lives before it is renamed in place. */
static CK_RV crl_load_dir(struct certcheck *cc, const char *dir)
{
	CK_RV rv = CKR_GENERAL_ERROR;
	DIR *d = opendir(dir);
	char **names = NULL;
	size_t n = 0;
	struct dirent *e;

	if (!d) {
		kt_log("CRL directory %s: %s", dir, strerror(errno));
		goto out;
	}
	errno = 0;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char **nn = realloc(names, (n + 1) * sizeof(*nn));
		if (!nn) {
			rv = CKR_HOST_MEMORY;
			goto out;
		}
		names = nn;
		if (asprintf(&names[n], "%s/%s", dir, e->d_name) < 0) {
			rv = CKR_HOST_MEMORY;
			goto out;
		}
		n++;
	}
	if (errno) {
		kt_log("CRL directory %s: %s", dir, strerror(errno));
		goto out;
	}
	if (n)
		qsort(names, n, sizeof(*names), cmp_names);
	for (size_t i = 0; i < n; i++) {
		struct stat st;
		if (stat(names[i], &st) != 0) {
			kt_log("CRL %s: %s", names[i], strerror(errno));
			goto out;
		}
		if (S_ISDIR(st.st_mode))
			continue;
		if ((rv = crl_load_file(cc, names[i])) != CKR_OK)
			goto out;
	}
	rv = CKR_OK;
out:
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	if (d)
		closedir(d);
	return rv;
}

/* ---- life cycle ---------------------------------------------------------- */

void certcheck_free(struct certcheck *cc)
{
	if (!cc)
		return;
	for (size_t i = 0; i < cc->n_centres; i++) {
		struct centre *c = &cc->centres[i];
		free(c->name);
		free(c->accreditation);
		free(c->display);
		X509_free(c->cert);
		crl_clear(&c->crl);
	}
	free(cc->centres);
	X509_STORE_free(cc->store);
	free(cc);
}

CK_RV certcheck_new(const struct certcheck_config *cfg, struct certcheck **out)
{
	CK_RV rv = CKR_HOST_MEMORY;
	struct certcheck *cc = calloc(1, sizeof(*cc));
	bool want_crls = cfg && (cfg->crl_dir || (cfg->crl_files && cfg->crl_files[0]));

	if (!cc)
		goto out;
	static unsigned long generations;
	cc->generation = __atomic_add_fetch(&generations, 1, __ATOMIC_RELAXED);
	if (!cfg)
		goto done;
	cc->crl_max_age = cfg->crl_max_age;
	cc->allow_unknown = cfg->allow_unknown_revocation;
	if (cfg->trust_list && (rv = trust_list_load(cc, cfg->trust_list)) != CKR_OK)
		goto out;
	if (want_crls && !cfg->trust_list) {
		/* A CRL is only as good as the check of its signature, and the
		 * issuer's key comes from the trust list. */
		kt_log("CRLs are configured but no trust_list: CRLs cannot be verified without it");
		rv = CKR_GENERAL_ERROR;
		goto out;
	}
	if (cfg->crl_dir && (rv = crl_load_dir(cc, cfg->crl_dir)) != CKR_OK)
		goto out;
	for (const char **f = cfg->crl_files; f && *f; f++)
		if ((rv = crl_load_file(cc, *f)) != CKR_OK)
			goto out;
done:
	kt_debug(KT_DBG_POLICY, "certcheck: %zu centre(s), %zu CRL file(s), unknown revocation %s",
		 cc->n_centres, cc->n_crls, cc->allow_unknown ? "allowed" : "refused");
	*out = cc;
	cc = NULL;
	rv = CKR_OK;
out:
	certcheck_free(cc);
	ERR_clear_error();
	return rv;
}

/* ---- judging ------------------------------------------------------------- */

/* 1: a QcCompliance statement; 0: none; -1: the extension is malformed. */
static int has_qc_compliance(const X509 *x)
{
	int found = -1;
	ASN1_SEQUENCE_ANY *stmts = NULL;
	int idx = X509_get_ext_by_NID(x, NID_qcStatements, -1);
	if (idx < 0)
		return 0;
	const ASN1_OCTET_STRING *data = X509_EXTENSION_get_data(X509_get_ext(x, idx));
	const unsigned char *p = ASN1_STRING_get0_data(data);
	long n = ASN1_STRING_length(data);
	const unsigned char *end = p + n;
	/* QCStatements ::= SEQUENCE OF SEQUENCE { statementId OID,
	 * statementInfo ANY OPTIONAL } (RFC 3739) */
	stmts = d2i_ASN1_SEQUENCE_ANY(NULL, &p, n);
	if (!stmts || p != end)
		goto out;
	found = 0;
	for (int i = 0; i < sk_ASN1_TYPE_num(stmts) && found >= 0; i++) {
		const ASN1_TYPE *t = sk_ASN1_TYPE_value(stmts, i);
		if (t->type != V_ASN1_SEQUENCE) {
			found = -1;
			break;
		}
		const unsigned char *q = t->value.sequence->data;
		const unsigned char *qend = q + t->value.sequence->length;
		ASN1_SEQUENCE_ANY *st = d2i_ASN1_SEQUENCE_ANY(NULL, &q, t->value.sequence->length);
		const ASN1_TYPE *id = st && sk_ASN1_TYPE_num(st) > 0 ? sk_ASN1_TYPE_value(st, 0) : NULL;
		if (!id || q != qend || sk_ASN1_TYPE_num(st) > 2 || id->type != V_ASN1_OBJECT)
			found = -1;
		else if ((size_t)OBJ_length(id->value.object) == sizeof(qc_compliance_der) &&
			 memcmp(OBJ_get0_data(id->value.object), qc_compliance_der,
				sizeof(qc_compliance_der)) == 0)
			found = 1;
		sk_ASN1_TYPE_pop_free(st, ASN1_TYPE_free);
	}
out:
	sk_ASN1_TYPE_pop_free(stmts, ASN1_TYPE_free);
	ERR_clear_error();
	return found;
}

/* The trust-list centre whose key signed x, or NULL. */
static const struct centre *issuing_centre(const struct certcheck *cc, const X509 *x)
{
	const struct centre *found = NULL;
	for (size_t i = 0; cc && i < cc->n_centres && !found; i++) {
		const struct centre *c = &cc->centres[i];
		if (X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(c->cert)) == 0 &&
		    X509_verify((X509 *)x, X509_get0_pubkey(c->cert)) == 1)
			found = c;
	}
	ERR_clear_error();
	return found;
}

/* 1 qualified, 0 not, -1 malformed. */
static int qualified(const struct certcheck *cc, const X509 *x, const struct centre **issuer)
{
	int q = has_qc_compliance(x);
	*issuer = issuing_centre(cc, x);
	if (q == 0 && *issuer && (*issuer)->legacy)
		q = 1;
	return q;
}

bool certcheck_is_qualified(const struct certcheck *cc, const CK_BYTE *der, CK_ULONG len)
{
	const struct centre *issuer;
	X509 *x = cert_from_der(der, len);
	bool q = x && qualified(cc, x, &issuer) == 1;
	X509_free(x);
	ERR_clear_error();
	return q;
}

/* Chain to a trust-list anchor, verified as of the issue date: the law asks
 * whether the centre was accredited (and its certificate valid) then. */
static enum certcheck_verdict check_accreditation(const struct certcheck *cc, X509 *x,
						  const struct centre *issuer, time_t issued, char *why,
						  size_t why_len)
{
	enum certcheck_verdict v = CERTCHECK_NOT_ACCREDITED;
	X509_STORE_CTX *ctx = NULL;
	char name[256], when[40], a[40], b[40];

	if (!issuer) {
		/* A self-signed certificate's issuer is its holder, whose name
		 * belongs in no log line. */
		if (X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(x)) == 0)
			snprintf(name, sizeof(name), "(self-signed certificate)");
		else
			name_display(X509_get_issuer_name(x), name, sizeof(name));
		say(why, why_len, "issuer %s is not in the trust list (or did not sign this certificate)",
		    name);
		goto out;
	}
	ctx = X509_STORE_CTX_new();
	if (!ctx || X509_STORE_CTX_init(ctx, cc->store, x, NULL) != 1) {
		say(why, why_len, "out of memory while verifying the chain");
		goto out;
	}
	X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(ctx), issued);
	if (X509_verify_cert(ctx) != 1) {
		fmt_time(when, sizeof(when), issued, true);
		say(why, why_len, "chain to %s does not verify as of the issue date %s: %s", issuer->display,
		    when, X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
		goto out;
	}
	if (issued < issuer->from || (issuer->has_until && issued > issuer->until)) {
		fmt_time(when, sizeof(when), issued, true);
		fmt_time(a, sizeof(a), issuer->from, false);
		if (issuer->has_until)
			fmt_time(b, sizeof(b), issuer->until, false);
		else
			snprintf(b, sizeof(b), "open end");
		say(why, why_len,
		    "issuer %s (accreditation %s, %s to %s) was not accredited on the issue date %s",
		    issuer->display, issuer->accreditation, a, b, when);
		goto out;
	}
	v = CERTCHECK_OK;
out:
	X509_STORE_CTX_free(ctx);
	ERR_clear_error();
	return v;
}

/* Revocation per the issuer's CRL.  On CERTCHECK_REVOCATION_UNKNOWN the
 * caller decides whether configuration allows it. */
static enum certcheck_verdict check_revocation(const struct certcheck *cc, X509 *x,
					       const struct centre *issuer, time_t now, const char *serial,
					       char *why, size_t why_len)
{
	enum certcheck_verdict v = CERTCHECK_REVOCATION_UNKNOWN;
	const struct crl *c = issuer ? &issuer->crl : NULL;
	X509_REVOKED *rev = NULL;
	ASN1_ENUMERATED *reason = NULL;
	char name[256], t1[40], t2[40], stale[384] = "";

	if (!cc || !cc->n_crls) {
		say(why, why_len, "serial %s: no CRLs are configured", serial);
		goto out;
	}
	if (!c || !c->crl) {
		name_display(X509_get_issuer_name(x), name, sizeof(name));
		say(why, why_len, "serial %s: no usable CRL of %s", serial, name);
		goto out;
	}
	fmt_time(t1, sizeof(t1), c->this_update, false);
	/* Staleness first, but a stale CRL still counts against a listed
	 * certificate: revocation is final, and a suspension we cannot see
	 * lifted is no reason to sign.  Only "not listed" needs fresh news. */
	if (c->this_update > now) {
		snprintf(stale, sizeof(stale), "CRL of %s is dated in the future (%s)", issuer->display, t1);
	} else if (c->has_next_update && c->next_update < now) {
		fmt_time(t2, sizeof(t2), c->next_update, true);
		snprintf(stale, sizeof(stale), "CRL of %s, issued %s, is stale (next update was due %s)",
			 issuer->display, t1, t2);
	} else if (cc->crl_max_age && (unsigned long long)(now - c->this_update) > cc->crl_max_age) {
		snprintf(stale, sizeof(stale), "CRL of %s, issued %s, is older than crl_max_age (%lus)",
			 issuer->display, t1, cc->crl_max_age);
	}
	/* 2 is an entry with reason removeFromCRL: not revoked. */
	if (X509_CRL_get0_by_serial(c->crl, &rev, X509_get0_serialNumber(x)) != 1) {
		if (stale[0]) {
			say(why, why_len, "serial %s: %s", serial, stale);
			goto out;
		}
		say(why, why_len, "serial %s not revoked per CRL of %s, issued %s", serial, issuer->display,
		    t1);
		v = CERTCHECK_OK;
		goto out;
	}
	int crit;
	long code = -1;
	reason = X509_REVOKED_get_ext_d2i(rev, NID_crl_reason, &crit, NULL);
	if (reason)
		code = ASN1_ENUMERATED_get(reason);
	if (code == CRL_REASON_HOLD) {
		say(why, why_len, "serial %s suspended (certificateHold) per CRL of %s, issued %s%s", serial,
		    issuer->display, t1, stale[0] ? " (stale)" : "");
		v = CERTCHECK_SUSPENDED;
		goto out;
	}
	static const char *const reasons[] = {
	    "unspecified",   "keyCompromise",	     "cACompromise",	"affiliationChanged",
	    "superseded",    "cessationOfOperation", "certificateHold", "(7)",
	    "removeFromCRL", "privilegeWithdrawn",   "aACompromise",
	};
	say(why, why_len, "serial %s revoked (%s) per CRL of %s, issued %s%s", serial,
	    code >= 0 && code < (long)KT_ARRAY_SIZE(reasons) ? reasons[code] : "no reason given",
	    issuer->display, t1, stale[0] ? " (stale)" : "");
	v = CERTCHECK_REVOKED;
out:
	ASN1_ENUMERATED_free(reason);
	ERR_clear_error();
	return v;
}

static enum certcheck_verdict judge(const struct certcheck *cc, const CK_BYTE *der, CK_ULONG len, time_t now,
				    char *why_buf, size_t why_len)
{
	enum certcheck_verdict v = CERTCHECK_MALFORMED;
	const struct centre *issuer = NULL;
	X509 *x = NULL;
	time_t not_before, not_after;
	char serial[48], when[40];

	say(why_buf, why_len, "%s", "");
	x = cert_from_der(der, len);
	if (!x || !asn1_time_get(X509_get0_notBefore(x), &not_before) ||
	    !asn1_time_get(X509_get0_notAfter(x), &not_after)) {
		say(why_buf, why_len, "the certificate cannot be parsed (%lu bytes)", (unsigned long)len);
		goto out;
	}
	serial_display(x, serial, sizeof(serial));
	int q = qualified(cc, x, &issuer);
	if (q < 0) {
		say(why_buf, why_len, "serial %s: malformed QcStatements extension", serial);
		goto out;
	}
	if (q == 0) {
		say(why_buf, why_len,
		    "serial %s: no QcCompliance statement and no legacy issuer: not qualified", serial);
		v = CERTCHECK_NOT_QUALIFIED;
		goto out;
	}
	if (now > not_after) {
		fmt_time(when, sizeof(when), not_after, true);
		say(why_buf, why_len, "serial %s: certificate expired on %s", serial, when);
		v = CERTCHECK_EXPIRED;
		goto out;
	}
	if (now < not_before) {
		fmt_time(when, sizeof(when), not_before, true);
		say(why_buf, why_len, "serial %s: certificate not valid before %s", serial, when);
		v = CERTCHECK_NOT_YET_VALID;
		goto out;
	}
	/* An absent extension restricts nothing (RFC 5280 4.2.1.3). */
	if ((X509_get_extension_flags(x) & EXFLAG_KUSAGE) &&
	    !(X509_get_key_usage(x) & (KU_DIGITAL_SIGNATURE | KU_NON_REPUDIATION))) {
		say(why_buf, why_len,
		    "serial %s: key usage allows neither digitalSignature nor nonRepudiation", serial);
		v = CERTCHECK_KEY_USAGE;
		goto out;
	}
	if (cc && cc->store) {
		v = check_accreditation(cc, x, issuer, not_before, why_buf, why_len);
		if (v != CERTCHECK_OK) {
			/* why names the issuer, never the holder */
			goto out;
		}
	}
	v = check_revocation(cc, x, issuer, now, serial, why_buf, why_len);
	if (v == CERTCHECK_REVOCATION_UNKNOWN && cc && cc->allow_unknown) {
		size_t n = why_buf && why_len ? strlen(why_buf) : 0;
		if (n < why_len)
			say(why_buf + n, why_len - n, "%s",
			    " (status unknown, allowed by revocation_unknown = allow)");
		v = CERTCHECK_OK;
	}
out:
	kt_debug(KT_DBG_POLICY, "certcheck: %s: %s", certcheck_verdict_name(v), why_buf ? why_buf : "");
	X509_free(x);
	ERR_clear_error();
	return v;
}

void certcheck_status(const struct certcheck *cc, const CK_BYTE *der, CK_ULONG len, time_t now,
		      struct certcheck_status *out)
{
	const struct centre *issuer = NULL;
	char serial[48], why[384];
	X509 *x = cert_from_der(der, len);

	memset(out, 0, sizeof(*out));
	out->revocation = CERTCHECK_REV_UNKNOWN;
	if (!x)
		goto out;
	issuer = issuing_centre(cc, x);
	if (issuer)
		snprintf(out->accreditation, sizeof(out->accreditation), "%s", issuer->accreditation);
	serial_display(x, serial, sizeof(serial));
	switch (check_revocation(cc, x, issuer, now, serial, why, sizeof(why))) {
	case CERTCHECK_OK:
		out->revocation = CERTCHECK_REV_GOOD;
		break;
	case CERTCHECK_REVOKED:
		out->revocation = CERTCHECK_REV_REVOKED;
		break;
	case CERTCHECK_SUSPENDED:
		out->revocation = CERTCHECK_REV_SUSPENDED;
		break;
	default:
		break;
	}
	/* A CRL that says anything establishes the status as of its issue. */
	if (out->revocation != CERTCHECK_REV_UNKNOWN)
		out->established = issuer->crl.this_update;
out:
	X509_free(x);
	ERR_clear_error();
}

/*
 * A verdict depends on the configuration, the certificate and the second
 * it is asked for, nothing else: trust list and CRLs are read once, by
 * certcheck_new.  Building and verifying the chain costs some 250 us,
 * ten times a seal's whole signature, so each thread remembers its last
 * few verdicts for the current second.  Keyed by the certificate's
 * SHA-256 and the certcheck's generation (a freed certcheck's address may
 * come back with another configuration); a new second asks afresh.
 */
#define MEMO_SLOTS 4

struct memo {
	bool used;
	unsigned long generation;
	time_t at;
	unsigned char id[32];
	enum certcheck_verdict v;
	char why[256];
};

static __thread struct memo memo[MEMO_SLOTS];
static __thread unsigned memo_next;

enum certcheck_verdict certcheck_judge(const struct certcheck *cc, const CK_BYTE *der, CK_ULONG len,
				       time_t now, char *why_buf, size_t why_len)
{
	unsigned char id[32];
	unsigned long gen = cc ? cc->generation : 0;
	bool hashed = der && crypto_sha256(der, len, id);
	for (unsigned i = 0; hashed && i < MEMO_SLOTS; i++) {
		const struct memo *m = &memo[i];
		if (m->used && m->at == now && m->generation == gen && memcmp(m->id, id, sizeof(id)) == 0) {
			say(why_buf, why_len, "%s", m->why);
			return m->v;
		}
	}
	struct memo *m = &memo[memo_next++ % MEMO_SLOTS];
	m->used = false;
	m->v = judge(cc, der, len, now, m->why, sizeof(m->why));
	say(why_buf, why_len, "%s", m->why);
	if (hashed) {
		m->used = true;
		m->generation = gen;
		m->at = now;
		memcpy(m->id, id, sizeof(id));
	}
	return m->v;
}
