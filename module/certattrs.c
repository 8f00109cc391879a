/*
 * X.509 certificate -> PKCS#11 attributes (standard and koltamga vendor).
 *
 * Everything the law asks a certificate to name is found through one OID
 * table (oid_table below): QC statements, birth data, personal and
 * registration numbers, sign tools, powers, role EKUs.  Configuration adds
 * OIDs to a row's meaning (certattrs_add_oid), so a national profile that
 * is not published yet needs no code change.
 *
 * Parsing trusts nothing: the certificate must be exactly one DER
 * Certificate, and an extension this file claims to understand must be
 * well-formed, or the whole certificate is CKR_ATTRIBUTE_VALUE_INVALID (a
 * garbled QC statement must not turn into "not qualified").  Text that
 * cannot be shown safely (not UTF-8, control characters) is left out.
 */
#include "certattrs.h"
#include "log.h"

#include <koltamga/pkcs11v.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* ------------------------------------------------------------------------ */
/* The OID table                                                             */
/* ------------------------------------------------------------------------ */

enum meaning {
	/* extensions */
	M_QC_STATEMENTS,
	M_SUBJECT_DIRECTORY_ATTRIBUTES,
	M_SUBJECT_SIGN_TOOL,
	M_ISSUER_SIGN_TOOL,
	M_POWERS,
	/* QC statement ids and QcType values */
	M_QC_COMPLIANCE,
	M_QC_LIMIT_VALUE,
	M_QC_SSCD,
	M_QC_TYPE,
	M_QC_LEGISLATION,
	M_QC_TYPE_ESIGN,
	M_QC_TYPE_ESEAL,
	M_QC_TYPE_WEB,
	/* subject directory attributes */
	M_BIRTH_DATE,
	M_BIRTH_PLACE,
	/* name attributes (subject, and issuer for the centre's name/address) */
	M_SURNAME,
	M_GIVEN_NAME,
	M_COMMON_NAME,
	M_ORGANIZATION,
	M_TITLE,
	M_STREET,
	M_LOCALITY,
	M_STATE,
	M_COUNTRY,
	M_PERSONAL_ID,
	M_REGISTRATION_NUMBER,
	/* extended key usages that say who holds the key */
	M_ROLE_PERSON,
	M_ROLE_REPRESENTATIVE,
	M_ROLE_LEGAL_ENTITY,
	M_COUNT
};

/* CK_KT_PID_* is read from the value's prefix ("PNOKG-", "IIN..."). */
#define PID_FROM_PREFIX ((CK_ULONG)-1)

struct oid_row {
	const char *name;    /* what configuration calls it: oid.NAME = ... */
	const char *oid;     /* dotted */
	enum meaning meaning;
	CK_ULONG pid_kind;   /* M_PERSONAL_ID: CK_KT_PID_* or PID_FROM_PREFIX */
	const char *prefix;  /* the value must begin with this to count */
	bool arc;            /* OIDs below this one mean the same */
};

/* The koltamga arc: a UUID OID (X.667), needing no registration. */
#define KT_ARC "2.25.276476776255599631008025005096289209468"

static const struct oid_row oid_table[] = {
	/* ETSI EN 319 412-5 */
	{ .name = "qc_statements", .oid = "1.3.6.1.5.5.7.1.3", .meaning = M_QC_STATEMENTS },
	{ .name = "qc_compliance", .oid = "0.4.0.1862.1.1", .meaning = M_QC_COMPLIANCE },
	{ .name = "qc_limit_value", .oid = "0.4.0.1862.1.2", .meaning = M_QC_LIMIT_VALUE },
	{ .name = "qc_sscd", .oid = "0.4.0.1862.1.4", .meaning = M_QC_SSCD },
	{ .name = "qc_type", .oid = "0.4.0.1862.1.6", .meaning = M_QC_TYPE },
	{ .name = "qc_type_esign", .oid = "0.4.0.1862.1.6.1", .meaning = M_QC_TYPE_ESIGN },
	{ .name = "qc_type_eseal", .oid = "0.4.0.1862.1.6.2", .meaning = M_QC_TYPE_ESEAL },
	{ .name = "qc_type_web", .oid = "0.4.0.1862.1.6.3", .meaning = M_QC_TYPE_WEB },
	{ .name = "qc_legislation", .oid = "0.4.0.1862.1.7", .meaning = M_QC_LEGISLATION },
	/* RFC 3739 (RFC 5280 subjectDirectoryAttributes) */
	{ .name = "subject_directory_attributes", .oid = "2.5.29.9", .meaning = M_SUBJECT_DIRECTORY_ATTRIBUTES },
	{ .name = "date_of_birth", .oid = "1.3.6.1.5.5.7.9.1", .meaning = M_BIRTH_DATE },
	{ .name = "place_of_birth", .oid = "1.3.6.1.5.5.7.9.2", .meaning = M_BIRTH_PLACE },
	/* X.520 names */
	{ .name = "surname", .oid = "2.5.4.4", .meaning = M_SURNAME },
	{ .name = "given_name", .oid = "2.5.4.42", .meaning = M_GIVEN_NAME },
	{ .name = "common_name", .oid = "2.5.4.3", .meaning = M_COMMON_NAME },
	{ .name = "organization", .oid = "2.5.4.10", .meaning = M_ORGANIZATION },
	{ .name = "title", .oid = "2.5.4.12", .meaning = M_TITLE },
	{ .name = "street", .oid = "2.5.4.9", .meaning = M_STREET },
	{ .name = "locality", .oid = "2.5.4.7", .meaning = M_LOCALITY },
	{ .name = "state", .oid = "2.5.4.8", .meaning = M_STATE },
	{ .name = "country", .oid = "2.5.4.6", .meaning = M_COUNTRY },
	/* serialNumber: ETSI semantics identifiers ("PNOKG-...") and the
	 * Kazakh "IIN..." convention; the kind comes from the prefix. */
	{ .name = "personal_id", .oid = "2.5.4.5", .meaning = M_PERSONAL_ID, .pid_kind = PID_FROM_PREFIX },
	{ .name = "registration_number", .oid = "2.5.4.97", .meaning = M_REGISTRATION_NUMBER },
	/* Russian profile */
	{ .name = "snils", .oid = "1.2.643.100.3", .meaning = M_PERSONAL_ID, .pid_kind = CK_KT_PID_SNILS },
	{ .name = "inn", .oid = "1.2.643.3.131.1.1", .meaning = M_PERSONAL_ID, .pid_kind = CK_KT_PID_INN },
	{ .name = "ogrn", .oid = "1.2.643.100.1", .meaning = M_REGISTRATION_NUMBER },
	{ .name = "ogrnip", .oid = "1.2.643.100.5", .meaning = M_REGISTRATION_NUMBER },
	{ .name = "subject_sign_tool", .oid = "1.2.643.100.111", .meaning = M_SUBJECT_SIGN_TOOL },
	{ .name = "issuer_sign_tool", .oid = "1.2.643.100.112", .meaning = M_ISSUER_SIGN_TOOL },
	/* Kazakh profile: BIN in an organizationalUnitName, role EKUs */
	{ .name = "kz_bin", .oid = "2.5.4.11", .meaning = M_REGISTRATION_NUMBER, .prefix = "BIN" },
	{ .name = "kz_role_person", .oid = "1.2.398.3.3.4.1.1", .meaning = M_ROLE_PERSON, .arc = true },
	{ .name = "kz_role_legal", .oid = "1.2.398.3.3.4.1.2", .meaning = M_ROLE_REPRESENTATIVE, .arc = true },
	/* koltamga: powers to act for third parties and their term */
	{ .name = "powers", .oid = KT_ARC ".1", .meaning = M_POWERS },
	/* Meanings with no built-in OID, for configuration to fill. */
	{ .name = "role_legal_entity", .oid = NULL, .meaning = M_ROLE_LEGAL_ENTITY },
};

/* Rows added by configuration: copies of a named row with another OID. */
static struct oid_row *extra_rows;
static size_t n_extra_rows;

static const struct oid_row *row_at(size_t i)
{
	if (i < KT_ARRAY_SIZE(oid_table))
		return &oid_table[i];
	i -= KT_ARRAY_SIZE(oid_table);
	return i < n_extra_rows ? &extra_rows[i] : NULL;
}

static bool row_matches(const struct oid_row *r, const char *dotted)
{
	if (!r->oid)
		return false;
	size_t n = strlen(r->oid);
	if (strncmp(r->oid, dotted, n) != 0)
		return false;
	return dotted[n] == '\0' || (r->arc && dotted[n] == '.');
}

/* The first row whose OID matches and whose meaning is in [lo, hi]. */
static const struct oid_row *row_find(const char *dotted, enum meaning lo, enum meaning hi)
{
	const struct oid_row *r;
	for (size_t i = 0; (r = row_at(i)) != NULL; i++)
		if (r->meaning >= lo && r->meaning <= hi && row_matches(r, dotted))
			return r;
	return NULL;
}

/* Dotted text of an OID; false when it does not fit (no row is that long). */
static bool oid_text(const ASN1_OBJECT *o, char *buf, size_t n)
{
	int r = OBJ_obj2txt(buf, (int)n, o, 1);
	return r > 0 && (size_t)r < n;
}

/* Strictly dotted-decimal, canonical (no leading zeros), X.660 first arcs. */
static bool oid_well_formed(const char *oid)
{
	size_t arcs = 0;
	unsigned long first = 0, second = 0;
	const char *p = oid;

	if (strlen(oid) >= 128)
		return false;
	for (;;) {
		const char *start = p;
		unsigned long v = 0;
		while (*p >= '0' && *p <= '9') {
			if (v > (ULONG_MAX - 9) / 10)
				return false;
			v = v * 10 + (unsigned long)(*p - '0');
			p++;
		}
		if (p == start || (*start == '0' && p - start > 1))
			return false;
		if (arcs == 0)
			first = v;
		else if (arcs == 1)
			second = v;
		arcs++;
		if (*p == '\0')
			break;
		if (*p != '.')
			return false;
		p++;
	}
	return arcs >= 2 && first <= 2 && (first == 2 || second < 40);
}

CK_RV certattrs_add_oid(const char *name, const char *oid)
{
	CK_RV rv = CKR_ARGUMENTS_BAD;
	const struct oid_row *model = NULL;
	ASN1_OBJECT *obj = NULL;
	char *copy = NULL;

	if (!name || !oid || !oid_well_formed(oid))
		goto out;
	for (size_t i = 0; i < KT_ARRAY_SIZE(oid_table); i++) {
		if (strcmp(oid_table[i].name, name) == 0) {
			model = &oid_table[i];
			break;
		}
	}
	if (!model)
		goto out;
	/* OpenSSL must agree that it is an OID, or certificates could never
	 * match it. */
	obj = OBJ_txt2obj(oid, 1);
	if (!obj)
		goto out;
	rv = CKR_HOST_MEMORY;
	copy = strdup(oid);
	if (!copy)
		goto out;
	struct oid_row *rows = realloc(extra_rows, (n_extra_rows + 1) * sizeof(*rows));
	if (!rows)
		goto out;
	extra_rows = rows;
	rows[n_extra_rows] = *model;
	rows[n_extra_rows].oid = copy;
	n_extra_rows++;
	copy = NULL;
	kt_debug(KT_DBG_CONFIG, "certattrs: %s also means %s", oid, name);
	rv = CKR_OK;
out:
	free(copy);
	ASN1_OBJECT_free(obj);
	ERR_clear_error();
	return rv;
}

void certattrs_reset(void)
{
	for (size_t i = 0; i < n_extra_rows; i++)
		free((char *)extra_rows[i].oid);
	free(extra_rows);
	extra_rows = NULL;
	n_extra_rows = 0;
}

/* ------------------------------------------------------------------------ */
/* Attribute classes                                                         */
/* ------------------------------------------------------------------------ */

static const CK_ATTRIBUTE_TYPE standard_derived[] = {
	CKA_SUBJECT,
	CKA_ISSUER,
	CKA_SERIAL_NUMBER,
	CKA_START_DATE,
	CKA_END_DATE,
	CKA_PUBLIC_KEY_INFO,
	CKA_HASH_OF_SUBJECT_PUBLIC_KEY,
	CKA_HASH_OF_ISSUER_PUBLIC_KEY,
	CKA_NAME_HASH_ALGORITHM,
	CKA_CHECK_VALUE,
	CKA_CERTIFICATE_CATEGORY,
};

bool certattrs_is_derived(CK_ATTRIBUTE_TYPE type)
{
	if (type > CKA_KT_BASE && type <= CKA_KT_LAST)
		return true;
	for (size_t i = 0; i < KT_ARRAY_SIZE(standard_derived); i++)
		if (standard_derived[i] == type)
			return true;
	return false;
}

bool certattrs_is_personal(CK_ATTRIBUTE_TYPE type)
{
	switch (type) {
	case CKA_KT_BIRTH_DATE:
	case CKA_KT_BIRTH_PLACE:
	case CKA_KT_PERSONAL_ID:
	case CKA_KT_PERSONAL_ID_KIND:
	case CKA_KT_PERSON_ADDRESS:
		return true;
	default:
		return false;
	}
}

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

/* What one certificate says, before it becomes attributes. */
struct found {
	struct attrs *a;
	CK_ULONG qc_type;
	bool qc_compliance, qc_sscd;
	bool has_names, has_org;
	CK_ULONG role_holder; /* CK_KT_HOLDER_*, from a role EKU */
	char *address;        /* subject street, locality, state */
};

/* Text fit for a dialog: no NUL, no C0/C1 controls (a newline in a name
 * could fake a line of the confirmation dialog). */
static bool text_is_clean(const unsigned char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (s[i] < 0x20 || s[i] == 0x7f)
			return false;
		/* U+0080..U+009F are C2 80..C2 9F in UTF-8. */
		if (s[i] == 0xc2 && i + 1 < n && s[i + 1] >= 0x80 && s[i + 1] <= 0x9f)
			return false;
	}
	return true;
}

/* A string as clean UTF-8 (malloc'd, *len set), or NULL. */
static char *string_utf8(const ASN1_STRING *s, size_t *len)
{
	unsigned char *u = NULL;
	char *copy = NULL;
	int n = ASN1_STRING_to_UTF8(&u, s);

	if (n < 0 || !text_is_clean(u, (size_t)n))
		goto out;
	copy = malloc((size_t)n + 1);
	if (!copy)
		goto out;
	memcpy(copy, u, (size_t)n);
	copy[n] = '\0';
	*len = (size_t)n;
out:
	OPENSSL_free(u);
	return copy;
}

static bool is_string_type(int type)
{
	switch (type) {
	case V_ASN1_UTF8STRING:
	case V_ASN1_PRINTABLESTRING:
	case V_ASN1_IA5STRING:
	case V_ASN1_T61STRING:
	case V_ASN1_BMPSTRING:
	case V_ASN1_UNIVERSALSTRING:
	case V_ASN1_VISIBLESTRING:
	case V_ASN1_NUMERICSTRING:
		return true;
	default:
		return false;
	}
}

/* Set a text attribute unless one is already there (first one wins). */
static CK_RV set_text(struct attrs *a, CK_ATTRIBUTE_TYPE type, const ASN1_STRING *s)
{
	size_t n = 0;
	char *t;
	CK_RV rv;

	if (attrs_has(a, type))
		return CKR_OK;
	t = string_utf8(s, &n);
	if (!t) {
		kt_debug(KT_DBG_OBJECT, "certattrs: %s left out: not clean text", kt_attr_name(type));
		return CKR_OK;
	}
	rv = attrs_set(a, type, t, (CK_ULONG)n);
	free(t);
	return rv;
}

static CK_RV set_cstr(struct attrs *a, CK_ATTRIBUTE_TYPE type, const char *s)
{
	return attrs_set(a, type, s, (CK_ULONG)strlen(s));
}

static bool time_tm(const ASN1_TIME *t, struct tm *tm)
{
	memset(tm, 0, sizeof(*tm));
	return t && ASN1_TIME_to_tm(t, tm) == 1;
}

static CK_RV set_date(struct attrs *a, CK_ATTRIBUTE_TYPE type, const struct tm *tm)
{
	char buf[16];
	CK_DATE d;

	if (tm->tm_year + 1900 > 9999 || tm->tm_year + 1900 < 0)
		return CKR_ATTRIBUTE_VALUE_INVALID;
	snprintf(buf, sizeof(buf), "%04u%02u%02u", (unsigned)(tm->tm_year + 1900) % 10000u,
		 (unsigned)(tm->tm_mon + 1) % 100u, (unsigned)tm->tm_mday % 100u);
	memcpy(d.year, buf, 4);
	memcpy(d.month, buf + 4, 2);
	memcpy(d.day, buf + 6, 2);
	return attrs_set(a, type, &d, sizeof(d));
}

/* "YYYYMMDDhhmmssZ" */
static CK_RV set_time_text(struct attrs *a, CK_ATTRIBUTE_TYPE type, const struct tm *tm)
{
	char buf[32];

	if (tm->tm_year + 1900 > 9999 || tm->tm_year + 1900 < 0)
		return CKR_ATTRIBUTE_VALUE_INVALID;
	snprintf(buf, sizeof(buf), "%04u%02u%02u%02u%02u%02uZ", (unsigned)(tm->tm_year + 1900) % 10000u,
		 (unsigned)(tm->tm_mon + 1) % 100u, (unsigned)tm->tm_mday % 100u,
		 (unsigned)tm->tm_hour % 100u, (unsigned)tm->tm_min % 100u, (unsigned)tm->tm_sec % 100u);
	return set_cstr(a, type, buf);
}

/* A growing ", "-or-","-joined text. */
struct text {
	char *s;
	size_t len;
	bool oom;
};

static void text_add(struct text *t, const char *sep, const char *part, size_t n)
{
	size_t sl = t->len ? strlen(sep) : 0;
	char *s;

	if (t->oom)
		return;
	s = realloc(t->s, t->len + sl + n + 1);
	if (!s) {
		t->oom = true;
		return;
	}
	memcpy(s + t->len, sep, sl);
	memcpy(s + t->len + sl, part, n);
	t->len += sl + n;
	s[t->len] = '\0';
	t->s = s;
}

/* A SEQUENCE (or SET) OF ANY filling exactly len bytes, or NULL. */
static STACK_OF(ASN1_TYPE) *any_list(const unsigned char *der, long len, bool set)
{
	const unsigned char *p = der;
	STACK_OF(ASN1_TYPE) *sk;

	if (!der || len <= 0)
		return NULL;
	sk = set ? d2i_ASN1_SET_ANY(NULL, &p, len) : d2i_ASN1_SEQUENCE_ANY(NULL, &p, len);
	if (sk && p != der + len) {
		sk_ASN1_TYPE_pop_free(sk, ASN1_TYPE_free);
		sk = NULL;
	}
	return sk;
}

/* The elements of an ASN1_TYPE that is a SEQUENCE (or SET). */
static STACK_OF(ASN1_TYPE) *type_list(const ASN1_TYPE *t, bool set)
{
	if (!t || t->type != (set ? V_ASN1_SET : V_ASN1_SEQUENCE))
		return NULL;
	const ASN1_STRING *s = t->value.sequence;
	return any_list(ASN1_STRING_get0_data(s), ASN1_STRING_length(s), set);
}

static void free_list(STACK_OF(ASN1_TYPE) *sk)
{
	sk_ASN1_TYPE_pop_free(sk, ASN1_TYPE_free);
}

/* ------------------------------------------------------------------------ */
/* Names                                                                     */
/* ------------------------------------------------------------------------ */

static CK_ULONG pid_kind_from_prefix(const unsigned char *v, int n)
{
	static const struct {
		const char *tag;
		CK_ULONG kind;
	} etsi[] = {
		{ "PNO", CK_KT_PID_PNO }, { "PAS", CK_KT_PID_PAS }, { "IDC", CK_KT_PID_IDC },
		{ "TIN", CK_KT_PID_TIN }, { "TAX", CK_KT_PID_TIN },
	};

	/* ETSI EN 319 412-1 5.1.3: 3 letters, a 2-letter country, '-'. */
	if (n >= 6 && v[3] >= 'A' && v[3] <= 'Z' && v[4] >= 'A' && v[4] <= 'Z' && v[5] == '-') {
		for (size_t i = 0; i < KT_ARRAY_SIZE(etsi); i++)
			if (memcmp(v, etsi[i].tag, 3) == 0)
				return etsi[i].kind;
	}
	if (n > 3 && memcmp(v, "IIN", 3) == 0 && v[3] >= '0' && v[3] <= '9')
		return CK_KT_PID_IIN;
	return CK_KT_PID_OTHER;
}

/* The attribute a name meaning becomes, or 0. */
static CK_ATTRIBUTE_TYPE subject_attr(enum meaning m)
{
	switch (m) {
	case M_SURNAME: return CKA_KT_SURNAME;
	case M_GIVEN_NAME: return CKA_KT_GIVEN_NAMES;
	case M_COMMON_NAME: return CKA_KT_COMMON_NAME;
	case M_ORGANIZATION: return CKA_KT_ORGANIZATION;
	case M_TITLE: return CKA_KT_TITLE;
	case M_COUNTRY: return CKA_KT_COUNTRY;
	case M_PERSONAL_ID: return CKA_KT_PERSONAL_ID;
	case M_REGISTRATION_NUMBER: return CKA_KT_REGISTRATION_NUMBER;
	default: return 0;
	}
}

/* Street, locality, state of a name, in that order, ", "-joined. */
static CK_RV name_address(const X509_NAME *name, char **out)
{
	static const enum meaning parts[] = { M_STREET, M_LOCALITY, M_STATE };
	struct text t = { 0 };
	char oid[128];

	*out = NULL;
	for (size_t k = 0; k < KT_ARRAY_SIZE(parts); k++) {
		for (int i = 0; i < X509_NAME_entry_count(name); i++) {
			const X509_NAME_ENTRY *e = X509_NAME_get_entry(name, i);
			if (!oid_text(X509_NAME_ENTRY_get_object(e), oid, sizeof(oid)) ||
			    !row_find(oid, parts[k], parts[k]))
				continue;
			size_t n = 0;
			char *v = string_utf8(X509_NAME_ENTRY_get_data(e), &n);
			if (v)
				text_add(&t, ", ", v, n);
			free(v);
			break;
		}
	}
	if (t.oom) {
		free(t.s);
		return CKR_HOST_MEMORY;
	}
	*out = t.s;
	return CKR_OK;
}

static CK_RV derive_subject(X509 *x, struct found *f)
{
	const X509_NAME *name = X509_get_subject_name(x);
	char oid[128];
	CK_RV rv = CKR_OK;

	/* In subject order, the first value of each meaning wins. */
	for (int i = 0; i < X509_NAME_entry_count(name) && rv == CKR_OK; i++) {
		const X509_NAME_ENTRY *e = X509_NAME_get_entry(name, i);
		const ASN1_STRING *v = X509_NAME_ENTRY_get_data(e);
		const struct oid_row *r;
		if (!oid_text(X509_NAME_ENTRY_get_object(e), oid, sizeof(oid)))
			continue;
		for (size_t k = 0; (r = row_at(k)) != NULL; k++) {
			CK_ATTRIBUTE_TYPE type = subject_attr(r->meaning);
			if (!type || !row_matches(r, oid))
				continue;
			int n = ASN1_STRING_length(v);
			const unsigned char *d = ASN1_STRING_get0_data(v);
			size_t pl = r->prefix ? strlen(r->prefix) : 0;
			if (pl && (n < (int)pl || memcmp(d, r->prefix, pl) != 0))
				continue;
			if (attrs_has(f->a, type))
				break;
			rv = set_text(f->a, type, v);
			if (rv == CKR_OK && type == CKA_KT_PERSONAL_ID && attrs_has(f->a, type)) {
				CK_ULONG kind = r->pid_kind;
				if (kind == PID_FROM_PREFIX)
					kind = pid_kind_from_prefix(d, n);
				rv = attrs_set_ulong(f->a, CKA_KT_PERSONAL_ID_KIND, kind);
			}
			break;
		}
	}
	if (rv != CKR_OK)
		return rv;
	f->has_names = attrs_has(f->a, CKA_KT_SURNAME) || attrs_has(f->a, CKA_KT_GIVEN_NAMES);
	f->has_org = attrs_has(f->a, CKA_KT_ORGANIZATION) ||
		     attrs_has(f->a, CKA_KT_REGISTRATION_NUMBER);
	return name_address(name, &f->address);
}

/* The centre: its name (organisation, else common name) and location. */
static CK_RV derive_issuer(X509 *x, struct attrs *a)
{
	const X509_NAME *name = X509_get_issuer_name(x);
	static const enum meaning pick[] = { M_ORGANIZATION, M_COMMON_NAME };
	char oid[128];
	char *addr = NULL;
	CK_RV rv;

	for (size_t k = 0; k < KT_ARRAY_SIZE(pick) && !attrs_has(a, CKA_KT_ISSUER_NAME); k++) {
		for (int i = 0; i < X509_NAME_entry_count(name); i++) {
			const X509_NAME_ENTRY *e = X509_NAME_get_entry(name, i);
			if (!oid_text(X509_NAME_ENTRY_get_object(e), oid, sizeof(oid)) ||
			    !row_find(oid, pick[k], pick[k]))
				continue;
			rv = set_text(a, CKA_KT_ISSUER_NAME, X509_NAME_ENTRY_get_data(e));
			if (rv != CKR_OK)
				return rv;
			break;
		}
	}
	rv = name_address(name, &addr);
	if (rv == CKR_OK && addr)
		rv = set_cstr(a, CKA_KT_ISSUER_ADDRESS, addr);
	free(addr);
	return rv;
}

/* ------------------------------------------------------------------------ */
/* Extensions                                                                */
/* ------------------------------------------------------------------------ */

/* MonetaryValue ::= SEQUENCE { currency CHOICE { PrintableString (SIZE 3),
 * INTEGER }, amount INTEGER, exponent INTEGER }, value = amount * 10^exp.
 * Written as "<decimal> <currency>". */
static CK_RV qc_limit(const ASN1_TYPE *info, struct attrs *a)
{
	CK_RV rv = CKR_ATTRIBUTE_VALUE_INVALID;
	STACK_OF(ASN1_TYPE) *sk = type_list(info, false);
	BIGNUM *bn = NULL;
	char *amount = NULL, *cur = NULL, *out = NULL;
	int64_t exp;

	if (!sk || sk_ASN1_TYPE_num(sk) != 3)
		goto out;
	const ASN1_TYPE *c = sk_ASN1_TYPE_value(sk, 0);
	const ASN1_TYPE *m = sk_ASN1_TYPE_value(sk, 1);
	const ASN1_TYPE *e = sk_ASN1_TYPE_value(sk, 2);
	if (m->type != V_ASN1_INTEGER || e->type != V_ASN1_INTEGER ||
	    !ASN1_INTEGER_get_int64(&exp, e->value.integer) || exp < -64 || exp > 64)
		goto out;
	if (c->type == V_ASN1_PRINTABLESTRING) {
		size_t n = 0;
		cur = string_utf8(c->value.printablestring, &n);
		if (!cur || n != 3)
			goto out;
	} else if (c->type == V_ASN1_INTEGER) {
		/* Kept in malloc'd memory like the string case. */
		bn = ASN1_INTEGER_to_BN(c->value.integer, NULL);
		char *dec = bn ? BN_bn2dec(bn) : NULL;
		cur = dec ? strdup(dec) : NULL;
		OPENSSL_free(dec);
		BN_free(bn);
		bn = NULL;
		if (!cur)
			goto out;
	} else {
		goto out;
	}
	bn = ASN1_INTEGER_to_BN(m->value.integer, NULL);
	amount = bn ? BN_bn2dec(bn) : NULL;
	if (!amount)
		goto out;

	/* Place the decimal point: amount 15, exponent -1 is "1.5". */
	bool neg = amount[0] == '-';
	const char *digits = amount + neg;
	size_t nd = strlen(digits);
	size_t cap = nd + 64 + 8 + strlen(cur);
	out = malloc(cap);
	if (!out) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	size_t o = 0;
	if (neg)
		out[o++] = '-';
	if (exp >= 0) {
		memcpy(out + o, digits, nd);
		o += nd;
		for (int64_t i = 0; i < exp && strcmp(digits, "0") != 0; i++)
			out[o++] = '0';
	} else {
		size_t frac = (size_t)-exp;
		if (nd <= frac) {
			out[o++] = '0';
			out[o++] = '.';
			for (size_t i = nd; i < frac; i++)
				out[o++] = '0';
			memcpy(out + o, digits, nd);
			o += nd;
		} else {
			memcpy(out + o, digits, nd - frac);
			o += nd - frac;
			out[o++] = '.';
			memcpy(out + o, digits + nd - frac, frac);
			o += frac;
		}
	}
	snprintf(out + o, cap - o, " %s", cur);
	rv = set_cstr(a, CKA_KT_QC_LIMIT_VALUE, out);
out:
	free(out);
	OPENSSL_free(amount);
	free(cur);
	BN_free(bn);
	free_list(sk);
	return rv;
}

/* QCStatements ::= SEQUENCE OF SEQUENCE { statementId OID, statementInfo ANY OPTIONAL } */
static CK_RV qc_statements(const unsigned char *der, long len, struct found *f)
{
	CK_RV rv = CKR_ATTRIBUTE_VALUE_INVALID;
	STACK_OF(ASN1_TYPE) *list = any_list(der, len, false), *st = NULL, *sub = NULL;
	struct text legislation = { 0 };
	char oid[128];

	if (!list)
		goto out;
	for (int i = 0; i < sk_ASN1_TYPE_num(list); i++) {
		free_list(st);
		st = type_list(sk_ASN1_TYPE_value(list, i), false);
		if (!st || sk_ASN1_TYPE_num(st) < 1 || sk_ASN1_TYPE_num(st) > 2)
			goto out;
		const ASN1_TYPE *id = sk_ASN1_TYPE_value(st, 0);
		const ASN1_TYPE *info = sk_ASN1_TYPE_num(st) == 2 ? sk_ASN1_TYPE_value(st, 1) : NULL;
		if (id->type != V_ASN1_OBJECT)
			goto out;
		if (!oid_text(id->value.object, oid, sizeof(oid)))
			continue;
		const struct oid_row *r = row_find(oid, M_QC_COMPLIANCE, M_QC_LEGISLATION);
		if (!r)
			continue; /* a statement we do not know: no meaning to report */
		switch (r->meaning) {
		case M_QC_COMPLIANCE:
			f->qc_compliance = true;
			break;
		case M_QC_SSCD:
			f->qc_sscd = true;
			break;
		case M_QC_LIMIT_VALUE:
			if (attrs_has(f->a, CKA_KT_QC_LIMIT_VALUE))
				break;
			rv = qc_limit(info, f->a);
			if (rv != CKR_OK)
				goto out;
			rv = CKR_ATTRIBUTE_VALUE_INVALID;
			break;
		case M_QC_TYPE:
			/* QcType ::= SEQUENCE OF OBJECT IDENTIFIER */
			free_list(sub);
			sub = type_list(info, false);
			if (!sub)
				goto out;
			for (int k = 0; k < sk_ASN1_TYPE_num(sub); k++) {
				const ASN1_TYPE *t = sk_ASN1_TYPE_value(sub, k);
				if (t->type != V_ASN1_OBJECT)
					goto out;
				if (!oid_text(t->value.object, oid, sizeof(oid)))
					continue;
				const struct oid_row *tr = row_find(oid, M_QC_TYPE_ESIGN, M_QC_TYPE_WEB);
				if (tr)
					f->qc_type |= tr->meaning == M_QC_TYPE_ESIGN   ? CK_KT_QC_TYPE_ESIGN
						      : tr->meaning == M_QC_TYPE_ESEAL ? CK_KT_QC_TYPE_ESEAL
										       : CK_KT_QC_TYPE_WEB;
			}
			break;
		case M_QC_LEGISLATION:
			/* QcCClegislation ::= SEQUENCE OF CountryName (PrintableString) */
			free_list(sub);
			sub = type_list(info, false);
			if (!sub || sk_ASN1_TYPE_num(sub) < 1)
				goto out;
			for (int k = 0; k < sk_ASN1_TYPE_num(sub); k++) {
				const ASN1_TYPE *t = sk_ASN1_TYPE_value(sub, k);
				size_t n = 0;
				if (t->type != V_ASN1_PRINTABLESTRING)
					goto out;
				char *c = string_utf8(t->value.printablestring, &n);
				if (!c || n != 2) {
					free(c);
					goto out;
				}
				text_add(&legislation, ",", c, n);
				free(c);
			}
			break;
		default:
			break;
		}
	}
	rv = CKR_HOST_MEMORY;
	if (legislation.oom)
		goto out;
	rv = CKR_OK;
	if (legislation.s && !attrs_has(f->a, CKA_KT_QC_LEGISLATION))
		rv = set_cstr(f->a, CKA_KT_QC_LEGISLATION, legislation.s);
out:
	free(legislation.s);
	free_list(sub);
	free_list(st);
	free_list(list);
	return rv;
}

/* SubjectDirectoryAttributes ::= SEQUENCE OF Attribute;
 * Attribute ::= SEQUENCE { type OID, values SET OF ANY } */
static CK_RV directory_attributes(const unsigned char *der, long len, struct attrs *a)
{
	CK_RV rv = CKR_ATTRIBUTE_VALUE_INVALID;
	STACK_OF(ASN1_TYPE) *list = any_list(der, len, false), *at = NULL, *vals = NULL;
	char oid[128];
	struct tm tm;

	if (!list)
		goto out;
	for (int i = 0; i < sk_ASN1_TYPE_num(list); i++) {
		free_list(at);
		free_list(vals);
		vals = NULL;
		at = type_list(sk_ASN1_TYPE_value(list, i), false);
		if (!at || sk_ASN1_TYPE_num(at) != 2)
			goto out;
		const ASN1_TYPE *type = sk_ASN1_TYPE_value(at, 0);
		vals = type_list(sk_ASN1_TYPE_value(at, 1), true);
		if (type->type != V_ASN1_OBJECT || !vals || sk_ASN1_TYPE_num(vals) < 1)
			goto out;
		if (!oid_text(type->value.object, oid, sizeof(oid)))
			continue;
		const struct oid_row *r = row_find(oid, M_BIRTH_DATE, M_BIRTH_PLACE);
		const ASN1_TYPE *v = sk_ASN1_TYPE_value(vals, 0);
		if (!r)
			continue;
		if (r->meaning == M_BIRTH_DATE) {
			/* RFC 3739: GeneralizedTime, midnight GMT of that day. */
			if (v->type != V_ASN1_GENERALIZEDTIME ||
			    !time_tm((const ASN1_TIME *)v->value.generalizedtime, &tm))
				goto out;
			if (attrs_has(a, CKA_KT_BIRTH_DATE))
				continue;
			rv = set_date(a, CKA_KT_BIRTH_DATE, &tm);
		} else {
			/* placeOfBirth is a DirectoryString. */
			if (!is_string_type(v->type))
				goto out;
			rv = set_text(a, CKA_KT_BIRTH_PLACE, v->value.asn1_string);
		}
		if (rv != CKR_OK)
			goto out;
		rv = CKR_ATTRIBUTE_VALUE_INVALID;
	}
	rv = CKR_OK;
out:
	free_list(vals);
	free_list(at);
	free_list(list);
	return rv;
}

/* subjectSignTool ::= UTF8String (any DirectoryString is accepted). */
static CK_RV subject_sign_tool(const unsigned char *der, long len, struct attrs *a)
{
	CK_RV rv = CKR_ATTRIBUTE_VALUE_INVALID;
	const unsigned char *p = der;
	ASN1_TYPE *t = d2i_ASN1_TYPE(NULL, &p, len);

	if (!t || p != der + len || !is_string_type(t->type))
		goto out;
	rv = set_text(a, CKA_KT_SUBJECT_SIGN_TOOL, t->value.asn1_string);
out:
	ASN1_TYPE_free(t);
	return rv;
}

/* IssuerSignTool ::= SEQUENCE { signTool, cATool, signToolCert, cAToolCert
 * UTF8String } (the Russian profile's order; all four required). */
static CK_RV issuer_sign_tool(const unsigned char *der, long len, struct attrs *a)
{
	static const CK_ATTRIBUTE_TYPE order[] = {
		CKA_KT_ISSUER_SIGN_TOOL,
		CKA_KT_ISSUER_CA_TOOL,
		CKA_KT_ISSUER_SIGN_TOOL_CERT,
		CKA_KT_ISSUER_CA_TOOL_CERT,
	};
	CK_RV rv = CKR_ATTRIBUTE_VALUE_INVALID;
	STACK_OF(ASN1_TYPE) *sk = any_list(der, len, false);

	if (!sk || sk_ASN1_TYPE_num(sk) != (int)KT_ARRAY_SIZE(order))
		goto out;
	for (size_t i = 0; i < KT_ARRAY_SIZE(order); i++)
		if (!is_string_type(sk_ASN1_TYPE_value(sk, (int)i)->type))
			goto out;
	rv = CKR_OK;
	for (size_t i = 0; i < KT_ARRAY_SIZE(order) && rv == CKR_OK; i++)
		rv = set_text(a, order[i], sk_ASN1_TYPE_value(sk, (int)i)->value.asn1_string);
out:
	free_list(sk);
	return rv;
}

/* KoltamgaPowers ::= SEQUENCE { powers UTF8String, term GeneralizedTime OPTIONAL } */
static CK_RV powers(const unsigned char *der, long len, struct attrs *a)
{
	CK_RV rv = CKR_ATTRIBUTE_VALUE_INVALID;
	STACK_OF(ASN1_TYPE) *sk = any_list(der, len, false);
	struct tm tm;

	if (!sk || sk_ASN1_TYPE_num(sk) < 1 || sk_ASN1_TYPE_num(sk) > 2)
		goto out;
	const ASN1_TYPE *text = sk_ASN1_TYPE_value(sk, 0);
	const ASN1_TYPE *term = sk_ASN1_TYPE_num(sk) == 2 ? sk_ASN1_TYPE_value(sk, 1) : NULL;
	if (!is_string_type(text->type))
		goto out;
	if (term && (term->type != V_ASN1_GENERALIZEDTIME ||
		     !time_tm((const ASN1_TIME *)term->value.generalizedtime, &tm)))
		goto out;
	if (attrs_has(a, CKA_KT_POWERS)) {
		rv = CKR_OK;
		goto out;
	}
	rv = set_text(a, CKA_KT_POWERS, text->value.asn1_string);
	if (rv == CKR_OK && term)
		rv = set_time_text(a, CKA_KT_POWERS_UNTIL, &tm);
out:
	free_list(sk);
	return rv;
}

static CK_RV derive_extensions(X509 *x, struct found *f)
{
	char oid[128];
	bool seen[M_COUNT] = { false };

	for (int i = 0; i < X509_get_ext_count(x); i++) {
		X509_EXTENSION *ext = X509_get_ext(x, i);
		const ASN1_OCTET_STRING *data = X509_EXTENSION_get_data(ext);
		const unsigned char *der = ASN1_STRING_get0_data(data);
		long len = ASN1_STRING_length(data);
		CK_RV rv = CKR_OK;

		if (!oid_text(X509_EXTENSION_get_object(ext), oid, sizeof(oid)))
			continue;
		const struct oid_row *r = row_find(oid, M_QC_STATEMENTS, M_POWERS);
		if (!r)
			continue;
		/* Two extensions with one meaning (a configured OID next to the
		 * built-in one) cannot both be believed: the first counts. */
		if (seen[r->meaning])
			continue;
		seen[r->meaning] = true;
		switch (r->meaning) {
		case M_QC_STATEMENTS:
			rv = qc_statements(der, len, f);
			break;
		case M_SUBJECT_DIRECTORY_ATTRIBUTES:
			rv = directory_attributes(der, len, f->a);
			break;
		case M_SUBJECT_SIGN_TOOL:
			rv = subject_sign_tool(der, len, f->a);
			break;
		case M_ISSUER_SIGN_TOOL:
			rv = issuer_sign_tool(der, len, f->a);
			break;
		case M_POWERS:
			rv = powers(der, len, f->a);
			break;
		default:
			break;
		}
		if (rv != CKR_OK) {
			kt_debug(KT_DBG_OBJECT, "certattrs: extension %s (%s) malformed", oid, r->name);
			return rv;
		}
	}
	return CKR_OK;
}

/* Key usage, extended key usage (and the roles it names), policies. */
static CK_RV derive_usage(X509 *x, struct found *f)
{
	static const struct {
		uint32_t ossl;
		CK_ULONG kt;
	} ku[] = {
		{ KU_DIGITAL_SIGNATURE, CK_KT_KU_DIGITAL_SIGNATURE },
		{ KU_NON_REPUDIATION, CK_KT_KU_NON_REPUDIATION },
		{ KU_KEY_ENCIPHERMENT, CK_KT_KU_KEY_ENCIPHERMENT },
		{ KU_DATA_ENCIPHERMENT, CK_KT_KU_DATA_ENCIPHERMENT },
		{ KU_KEY_AGREEMENT, CK_KT_KU_KEY_AGREEMENT },
		{ KU_KEY_CERT_SIGN, CK_KT_KU_KEY_CERT_SIGN },
		{ KU_CRL_SIGN, CK_KT_KU_CRL_SIGN },
		{ KU_ENCIPHER_ONLY, CK_KT_KU_ENCIPHER_ONLY },
		{ KU_DECIPHER_ONLY, CK_KT_KU_DECIPHER_ONLY },
	};
	CK_RV rv = CKR_OK;
	EXTENDED_KEY_USAGE *eku = NULL;
	CERTIFICATEPOLICIES *pol = NULL;
	struct text t = { 0 }, p = { 0 };
	char oid[128];
	int crit;

	if (X509_get_extension_flags(x) & EXFLAG_KUSAGE) {
		uint32_t bits = X509_get_key_usage(x);
		CK_ULONG v = 0;
		for (size_t i = 0; i < KT_ARRAY_SIZE(ku); i++)
			if (bits & ku[i].ossl)
				v |= ku[i].kt;
		rv = attrs_set_ulong(f->a, CKA_KT_KEY_USAGE, v);
		if (rv != CKR_OK)
			goto out;
	}

	eku = X509_get_ext_d2i(x, NID_ext_key_usage, &crit, NULL);
	rv = CKR_ATTRIBUTE_VALUE_INVALID;
	if (!eku && crit != -1)
		goto out; /* present but undecodable, or twice */
	for (int i = 0; eku && i < sk_ASN1_OBJECT_num(eku); i++) {
		if (!oid_text(sk_ASN1_OBJECT_value(eku, i), oid, sizeof(oid)))
			goto out;
		text_add(&t, ",", oid, strlen(oid));
		const struct oid_row *r = row_find(oid, M_ROLE_PERSON, M_ROLE_LEGAL_ENTITY);
		if (r && f->role_holder == CK_KT_HOLDER_UNKNOWN)
			f->role_holder = r->meaning == M_ROLE_PERSON	       ? CK_KT_HOLDER_NATURAL_PERSON
					 : r->meaning == M_ROLE_REPRESENTATIVE ? CK_KT_HOLDER_REPRESENTATIVE
									       : CK_KT_HOLDER_LEGAL_ENTITY;
	}

	pol = X509_get_ext_d2i(x, NID_certificate_policies, &crit, NULL);
	if (!pol && crit != -1)
		goto out;
	for (int i = 0; pol && i < sk_POLICYINFO_num(pol); i++) {
		if (!oid_text(sk_POLICYINFO_value(pol, i)->policyid, oid, sizeof(oid)))
			goto out;
		text_add(&p, ",", oid, strlen(oid));
	}
	rv = CKR_HOST_MEMORY;
	if (t.oom || p.oom)
		goto out;
	rv = CKR_OK;
	if (t.s)
		rv = set_cstr(f->a, CKA_KT_EXT_KEY_USAGE, t.s);
	if (rv == CKR_OK && p.s)
		rv = set_cstr(f->a, CKA_KT_POLICIES, p.s);
out:
	free(t.s);
	free(p.s);
	EXTENDED_KEY_USAGE_free(eku);
	CERTIFICATEPOLICIES_free(pol);
	return rv;
}

/* Who holds the key: the QC type first (a seal is a seal whatever else the
 * name says), then a role EKU, then the shape of the name. */
static CK_ULONG holder_type(const struct found *f)
{
	if ((f->qc_type & CK_KT_QC_TYPE_ESEAL) && !(f->qc_type & CK_KT_QC_TYPE_ESIGN))
		return CK_KT_HOLDER_LEGAL_ENTITY;
	if (f->role_holder != CK_KT_HOLDER_UNKNOWN)
		return f->role_holder;
	if (f->has_names)
		return f->has_org ? CK_KT_HOLDER_REPRESENTATIVE : CK_KT_HOLDER_NATURAL_PERSON;
	if (f->has_org)
		return CK_KT_HOLDER_LEGAL_ENTITY;
	return CK_KT_HOLDER_UNKNOWN;
}

/* ------------------------------------------------------------------------ */
/* The certificate                                                           */
/* ------------------------------------------------------------------------ */

/* Takes the i2d_*() output: its length first, so the call order is plain. */
static CK_RV set_der(struct attrs *a, CK_ATTRIBUTE_TYPE type, int len, unsigned char *enc)
{
	CK_RV rv = len > 0 ? attrs_set(a, type, enc, (CK_ULONG)len) : CKR_ATTRIBUTE_VALUE_INVALID;
	OPENSSL_free(enc);
	return rv;
}

static CK_RV derive_standard(X509 *x, const CK_BYTE *der, CK_ULONG len, struct attrs *a)
{
	CK_RV rv;
	int n;
	unsigned char *enc = NULL;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	struct tm nb, na;

	n = i2d_X509_NAME(X509_get_subject_name(x), &enc);
	rv = set_der(a, CKA_SUBJECT, n, enc);
	if (rv != CKR_OK)
		return rv;
	enc = NULL;
	n = i2d_X509_NAME(X509_get_issuer_name(x), &enc);
	rv = set_der(a, CKA_ISSUER, n, enc);
	if (rv != CKR_OK)
		return rv;
	enc = NULL;
	n = i2d_ASN1_INTEGER(X509_get0_serialNumber(x), &enc);
	rv = set_der(a, CKA_SERIAL_NUMBER, n, enc);
	if (rv != CKR_OK)
		return rv;
	enc = NULL;
	n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &enc);
	rv = set_der(a, CKA_PUBLIC_KEY_INFO, n, enc);
	if (rv != CKR_OK)
		return rv;

	if (!time_tm(X509_get0_notBefore(x), &nb) || !time_tm(X509_get0_notAfter(x), &na))
		return CKR_ATTRIBUTE_VALUE_INVALID;
	if ((rv = set_date(a, CKA_START_DATE, &nb)) != CKR_OK ||
	    (rv = set_date(a, CKA_END_DATE, &na)) != CKR_OK ||
	    (rv = set_time_text(a, CKA_KT_NOT_BEFORE, &nb)) != CKR_OK ||
	    (rv = set_time_text(a, CKA_KT_NOT_AFTER, &na)) != CKR_OK)
		return rv;

	/* PKCS#11 3.0 4.6.3: hashes of the subjectPublicKey BIT STRING value,
	 * with the algorithm CKA_NAME_HASH_ALGORITHM names (SHA-1, its
	 * default, which is also how key identifiers are usually made). */
	if (!X509_pubkey_digest(x, EVP_sha1(), md, &mdlen))
		return CKR_ATTRIBUTE_VALUE_INVALID;
	if ((rv = attrs_set(a, CKA_HASH_OF_SUBJECT_PUBLIC_KEY, md, mdlen)) != CKR_OK ||
	    (rv = attrs_set_ulong(a, CKA_NAME_HASH_ALGORITHM, CKM_SHA_1)) != CKR_OK)
		return rv;
	/* The issuer's key is not in the certificate; its key identifier is
	 * that hash when the centre follows RFC 5280 method 1 (20 bytes).
	 * Anything else would be a wrong hash, so it stays empty. */
	const ASN1_OCTET_STRING *akid = X509_get0_authority_key_id(x);
	if (akid && ASN1_STRING_length(akid) == SHA_DIGEST_LENGTH)
		rv = attrs_set(a, CKA_HASH_OF_ISSUER_PUBLIC_KEY, ASN1_STRING_get0_data(akid),
			       SHA_DIGEST_LENGTH);
	else
		rv = attrs_set(a, CKA_HASH_OF_ISSUER_PUBLIC_KEY, NULL, 0);
	if (rv != CKR_OK)
		return rv;

	/* CKA_CHECK_VALUE of a certificate: SHA-1 of CKA_VALUE, first 3 bytes. */
	SHA1(der, len, md);
	if ((rv = attrs_set(a, CKA_CHECK_VALUE, md, 3)) != CKR_OK)
		return rv;
	/* Authority (2) for a CA; otherwise unspecified (0): whether it is the
	 * token user's own (1) depends on the keys beside it, not on the DER. */
	return attrs_set_ulong(a, CKA_CERTIFICATE_CATEGORY,
			       (X509_get_extension_flags(x) & EXFLAG_CA) ? 2 : 0);
}

static CK_RV derive_vendor(X509 *x, struct attrs *a)
{
	CK_RV rv;
	struct found f = { .a = a, .role_holder = CK_KT_HOLDER_UNKNOWN };
	unsigned char *enc = NULL;
	int n;

	if ((rv = derive_subject(x, &f)) != CKR_OK || (rv = derive_issuer(x, a)) != CKR_OK ||
	    (rv = derive_extensions(x, &f)) != CKR_OK || (rv = derive_usage(x, &f)) != CKR_OK)
		goto out;

	const ASN1_OCTET_STRING *akid = X509_get0_authority_key_id(x);
	if (akid && ASN1_STRING_length(akid) > 0 &&
	    (rv = attrs_set(a, CKA_KT_ISSUER_KEY_ID, ASN1_STRING_get0_data(akid),
			    (CK_ULONG)ASN1_STRING_length(akid))) != CKR_OK)
		goto out;
	const ASN1_INTEGER *aserial = X509_get0_authority_serial(x);
	if (aserial) {
		n = i2d_ASN1_INTEGER(aserial, &enc);
		rv = set_der(a, CKA_KT_ISSUER_CERT_SERIAL, n, enc);
		if (rv != CKR_OK)
			goto out;
	}

	CK_ULONG holder = holder_type(&f);
	if ((rv = attrs_set_ulong(a, CKA_KT_HOLDER_TYPE, holder)) != CKR_OK ||
	    (rv = attrs_set_bool(a, CKA_KT_QC_COMPLIANCE, f.qc_compliance)) != CKR_OK ||
	    (rv = attrs_set_bool(a, CKA_KT_QC_SSCD, f.qc_sscd)) != CKR_OK)
		goto out;
	if (f.qc_type && (rv = attrs_set_ulong(a, CKA_KT_QC_TYPE, f.qc_type)) != CKR_OK)
		goto out;
	/* An organisation's address is public; anyone else's is personal data,
	 * including a holder we cannot place. */
	if (f.address) {
		bool org = holder == CK_KT_HOLDER_LEGAL_ENTITY || holder == CK_KT_HOLDER_REPRESENTATIVE;
		rv = set_cstr(a, org ? CKA_KT_ORG_ADDRESS : CKA_KT_PERSON_ADDRESS, f.address);
	}
out:
	free(f.address);
	return rv;
}

CK_RV certattrs_derive(const CK_BYTE *der, CK_ULONG len, struct attrs **out)
{
	CK_RV rv = CKR_ATTRIBUTE_VALUE_INVALID;
	struct attrs *a = NULL;
	X509 *x = NULL;
	unsigned char *re = NULL;
	const unsigned char *p = der;

	if (!out) {
		rv = CKR_ARGUMENTS_BAD;
		goto out;
	}
	*out = NULL;
	if (!der || len == 0 || len > LONG_MAX)
		goto out;
	x = d2i_X509(NULL, &p, (long)len);
	if (!x || p != der + len)
		goto out;
	/* Exactly DER: what we hand out as CKA_VALUE must be the certificate
	 * every verifier sees, not one of several BER spellings of it. */
	int relen = i2d_X509(x, &re);
	if (relen <= 0 || (CK_ULONG)relen != len || memcmp(re, der, len) != 0)
		goto out;
	/* v1..v3 only; extensions only in v3.  OpenSSL marks unparsable or
	 * duplicate standard extensions invalid: so do we. */
	long version = X509_get_version(x);
	if (version < 0 || version > 2 || (version != 2 && X509_get_ext_count(x) > 0))
		goto out;
	if (X509_get_extension_flags(x) & EXFLAG_INVALID)
		goto out;

	a = attrs_new();
	if (!a) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	if ((rv = derive_standard(x, der, len, a)) != CKR_OK || (rv = derive_vendor(x, a)) != CKR_OK)
		goto out;
	*out = a;
	a = NULL;
	rv = CKR_OK;
out:
	if (rv != CKR_OK)
		kt_debug(KT_DBG_OBJECT, "certattrs: certificate of %lu bytes: %s", (unsigned long)len,
			 kt_rv_name(rv));
	attrs_free(a);
	OPENSSL_free(re);
	X509_free(x);
	/* Our failures are answered with rv; leave no stale errors behind for
	 * the next OpenSSL caller on this thread. */
	ERR_clear_error();
	return rv;
}
