#include "policy/signing.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "koltamga/pkcs11v.h"
#include "crypto.h"
#include "log.h"
#include "object.h"
#include "policy/audit.h"
#include "policy/confirm.h"
#include "slot.h"

/* A confirm key's data is copied so that what the signer saw is what gets
 * signed; beyond this it is more than a person can check anyway. */
#define KEEP_MAX ((CK_ULONG)64 * 1024 * 1024)
/* Shown to the person when it is text and no longer than this. */
#define SHOW_MAX (64 * 1024)

static const struct config *conf;

void signing_configure(const struct config *c)
{
	conf = c;
}

void signing_flush(void)
{
	audit_shutdown();
}

/* The configured policy for a key (config.c). */
static enum sign_policy policy_for(enum sign_policy token_policy, const struct attrs *priv)
{
	return config_key_policy(conf, token_policy, attrs_get(priv, CKA_ID), attrs_get(priv, CKA_LABEL));
}

CK_RV signing_assign(enum sign_policy token_policy, struct attrs *priv)
{
	enum sign_policy p = policy_for(token_policy, priv);
	CK_RV rv = attrs_set_ulong(priv, CKA_KT_SIGN_POLICY,
				   p == POLICY_AUTOMATIC ? CK_KT_POLICY_AUTOMATIC : CK_KT_POLICY_CONFIRM);
	/* A qualified key asks for its PIN at every use too, so applications
	 * that cache PINs still make the person act (the module's own
	 * confirmation comes on top). */
	if (rv == CKR_OK && p != POLICY_AUTOMATIC)
		rv = attrs_set_bool(priv, CKA_ALWAYS_AUTHENTICATE, true);
	/* A qualified key asked to be a public object cannot be one. */
	if (rv == CKR_OK)
		rv = object_check_always_authenticate(priv);
	return rv;
}

static char *hex(const void *p, size_t n)
{
	char *s = malloc(2 * n + 1);
	if (s)
		kt_hex(s, p, n);
	return s;
}

static char *text_of(const struct attrs *a, CK_ATTRIBUTE_TYPE type)
{
	const CK_ATTRIBUTE *at = attrs_get(a, type);
	if (!at || at->ulValueLen == 0 || at->ulValueLen > 4096)
		return NULL;
	char *s = malloc(at->ulValueLen + 1);
	if (s) {
		memcpy(s, at->pValue, at->ulValueLen);
		s[at->ulValueLen] = '\0';
	}
	return s;
}

/* Mechanisms that receive a hash (or a DigestInfo) instead of the
 * document: the person can only be shown the hash. */
static bool mechanism_hash_only(CK_MECHANISM_TYPE m)
{
	return m == CKM_RSA_PKCS || m == CKM_RSA_PKCS_PSS || m == CKM_ECDSA || m == CKM_RSA_X_509;
}

static int handle_order(const void *a, const void *b)
{
	CK_OBJECT_HANDLE x = *(const CK_OBJECT_HANDLE *)a, y = *(const CK_OBJECT_HANDLE *)b;
	return x < y ? -1 : x > y;
}

/* Copy the sign context: the documents this session handed over
 * (KT_SIGN_CONTEXT_APPLICATION objects it created), in creation order.
 * Objects of other sessions never count: what a dialog shows must come
 * from the application asking for this signature. */
static CK_RV context_gather(struct crypto_state *c, struct token *t, CK_SESSION_HANDLE session)
{
	CK_OBJECT_CLASS data = CKO_DATA;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &data, sizeof(data) },
		{ CKA_APPLICATION, (void *)KT_SIGN_CONTEXT_APPLICATION, sizeof(KT_SIGN_CONTEXT_APPLICATION) - 1 },
	};
	CK_OBJECT_HANDLE *h = NULL;
	size_t n = 0;
	CK_RV rv = token_find(t, tmpl, KT_ARRAY_SIZE(tmpl), &h, &n);
	if (rv != CKR_OK)
		return rv;
	qsort(h, n, sizeof(*h), handle_order);
	for (size_t i = 0; i < n && rv == CKR_OK; i++) {
		const struct object *o = token_object_get(t, h[i]);
		if (!o || o->owner != session)
			continue;
		if (!c->docs && !(c->docs = calloc(n, sizeof(*c->docs)))) {
			rv = CKR_HOST_MEMORY;
			break;
		}
		struct sign_doc *d = &c->docs[c->n_docs];
		const CK_ATTRIBUTE *v = attrs_get(o->attrs, CKA_VALUE);
		d->title = text_of(o->attrs, CKA_LABEL);
		d->len = v ? v->ulValueLen : 0;
		d->value = kt_alloc_secret(d->len);
		if (!d->value) {
			rv = CKR_HOST_MEMORY;
			break;
		}
		if (d->len)
			memcpy(d->value, v->pValue, d->len);
		c->n_docs++;
		if (attrs_bool(o->attrs, CKA_KT_CONFIDENTIAL, false))
			c->confidential = true;
	}
	free(h);
	return rv;
}

CK_RV signing_begin(struct crypto_state *c, struct token *t, CK_SESSION_HANDLE session, const struct attrs *key,
		    CK_MECHANISM_TYPE mech)
{
	CK_ULONG policy = CK_KT_POLICY_CONFIRM;
	/* A key from before policies existed is treated as the law's default. */
	attrs_get_ulong(key, CKA_KT_SIGN_POLICY, &policy);
	c->policy = policy;
	c->hash_only = mechanism_hash_only(mech);
	c->key_label = text_of(key, CKA_LABEL);
	const CK_ATTRIBUTE *id = attrs_get(key, CKA_ID);
	if (id && id->ulValueLen)
		c->key_id = hex(id->pValue, id->ulValueLen);
	c->token_serial = strdup(t->state.serial);
	if (!c->token_serial)
		return CKR_HOST_MEMORY;
	if (policy != CK_KT_POLICY_CONFIRM)
		return CKR_OK;
	CK_RV rv = context_gather(c, t, session);
	if (rv != CKR_OK)
		return rv;
	/* strict: a person signs only what they can see.  A hash alone shows
	 * them nothing, unless the document behind it came along. */
	if (conf->strict && c->hash_only && c->n_docs == 0) {
		kt_log("signature refused: strict policy: %s receives only a hash and no sign context was given",
		       kt_mech_name(mech));
		return CKR_KEY_FUNCTION_NOT_PERMITTED;
	}
	return CKR_OK;
}

bool signing_keeps_data(const struct crypto_state *c)
{
	return c->policy == CK_KT_POLICY_CONFIRM;
}

CK_RV signing_keep(struct crypto_state *c, const CK_BYTE *p, CK_ULONG n)
{
	if (n > KEEP_MAX - c->data_len)
		return CKR_DATA_LEN_RANGE;
	if (c->data_len + n > c->data_cap) {
		CK_ULONG cap = c->data_cap ? c->data_cap : 4096;
		while (cap < c->data_len + n)
			cap *= 2;
		/* No realloc: the old buffer holds document bytes and must be
		 * wiped, not left behind in the heap. */
		CK_BYTE *d = kt_alloc_secret(cap);
		if (!d)
			return CKR_HOST_MEMORY;
		if (c->data_len)
			memcpy(d, c->data, c->data_len);
		kt_free_secret(c->data, c->data_cap);
		c->data = d;
		c->data_cap = cap;
	}
	if (n)
		memcpy(c->data + c->data_len, p, n);
	c->data_len += n;
	return CKR_OK;
}

/* The document's SHA-256 (hex) and the 4-digit code both screens can
 * show: the first 16 bits of that digest. */
static void digest_of(const CK_BYTE *data, CK_ULONG len, char hex[65], char code[5])
{
	unsigned char digest[32];
	if (!crypto_sha256(data, len, digest)) {
		snprintf(hex, 65, "unavailable");
		snprintf(code, 5, "----");
		return;
	}
	kt_hex(hex, digest, sizeof(digest));
	snprintf(code, 5, "%04u", ((unsigned)digest[0] << 8 | digest[1]) % 10000);
}

/* Text a person can read: valid UTF-8 without control characters other
 * than line breaks and tabs. */
static bool is_text(const CK_BYTE *p, CK_ULONG n)
{
	if (n == 0 || n > SHOW_MAX)
		return false;
	for (CK_ULONG i = 0; i < n;) {
		unsigned char b = p[i];
		if (b < 0x20 && b != '\n' && b != '\r' && b != '\t')
			return false;
		if (b < 0x80) {
			i++;
			continue;
		}
		int more = (b & 0xe0) == 0xc0 ? 1 : (b & 0xf0) == 0xe0 ? 2 : (b & 0xf8) == 0xf0 ? 3 : -1;
		if (more < 0 || i + more >= n || b == 0xc0 || b == 0xc1)
			return false;
		for (int k = 1; k <= more; k++)
			if ((p[i + k] & 0xc0) != 0x80)
				return false;
		i += more + 1;
	}
	return true;
}

static const char *calling_program(void)
{
	return kt_program();
}

static struct confirm_config confirm_settings(void)
{
	struct confirm_config cc = {
		.backend = (enum confirm_backend)conf->confirm_backend,
		.program = conf->confirm_program,
		.timeout = conf->confirm_timeout,
	};
	return cc;
}

struct request_buf {
	struct confirm_request req;
	char digest_hex[65];
	char code[5];
	char certificate[512];
	char mechanism[64];
};

static void request_build(const struct session *s, const CK_BYTE *data, CK_ULONG len,
			  struct request_buf *b)
{
	const struct crypto_state *c = &s->crypto;
	memset(b, 0, sizeof(*b));
	digest_of(data, len, b->digest_hex, b->code);
	if (c->cert_issuer || c->cert_serial)
		snprintf(b->certificate, sizeof(b->certificate), "issued by %s, serial %s",
			 c->cert_issuer ? c->cert_issuer : "?", c->cert_serial ? c->cert_serial : "?");
	snprintf(b->mechanism, sizeof(b->mechanism), "%s", kt_mech_name(c->mech ? c->mech->type : 0));
	/* Only a certificate names the signer; a key's label, shown on the
	 * Key line, could read like a person's name and mislead. */
	b->req.signer = c->signer;
	b->req.certificate = b->certificate[0] ? b->certificate : NULL;
	b->req.key_label = c->key_label;
	b->req.restrictions = c->restrictions;
	b->req.mechanism = b->mechanism;
	b->req.program = calling_program();
	b->req.pid = kt_program_pid();
	b->req.size = len;
	b->req.sha256_hex = b->digest_hex;
	b->req.code = b->code;
	b->req.hash_only = c->hash_only;
	if (!c->hash_only && is_text(data, len)) {
		b->req.content = data;
		b->req.content_len = len;
	}
}

/* The SHA-2 hashes a document may be signed by. */
static const char *const sha2_names[] = { "SHA224", "SHA256", "SHA384", "SHA512" };

/*
 * Is document `d` what these `data` bytes sign?  Either the data is the
 * document itself; or, for a mechanism that receives a hash, the data is
 * the document's SHA-2 hash (in a DigestInfo for CKM_RSA_PKCS); or, for one
 * that hashes its input, the data carries the document's SHA-2 hash, raw
 * (CMS signed attributes' messageDigest) or in base64 (an XML signature's
 * DigestValue).  Anything else is a mismatch: the person would see one
 * document while the key signs another.
 */
static bool document_covered(const struct sign_doc *d, const CK_BYTE *data, CK_ULONG len, bool hash_only,
			     CK_MECHANISM_TYPE mech)
{
	if (!data)
		data = (const CK_BYTE *)"";
	if (!hash_only && d->len == len && (len == 0 || memcmp(d->value, data, len) == 0))
		return true;
	for (size_t i = 0; i < KT_ARRAY_SIZE(sha2_names); i++) {
		unsigned char h[64];
		unsigned char b64[4 * ((64 + 2) / 3) + 1];
		size_t hl;
		const CK_BYTE *prefix = crypto_digest_info(sha2_names[i], &hl);
		if (!prefix || !crypto_digest(sha2_names[i], d->value, d->len, h))
			continue;
		if (hash_only) {
			size_t pl = mech == CKM_RSA_PKCS ? CRYPTO_DIGEST_INFO_PREFIX : 0;
			if (len == pl + hl && memcmp(data, prefix, pl) == 0 && memcmp(data + pl, h, hl) == 0)
				return true;
			continue;
		}
		if (memmem(data, len, h, hl))
			return true;
		int bl = EVP_EncodeBlock(b64, h, (int)hl);
		if (bl > 0 && memmem(data, len, b64, (size_t)bl))
			return true;
	}
	return false;
}

/* Every document of the sign context must be covered by what is signed. */
static CK_RV context_check(struct crypto_state *c, const CK_BYTE *data, CK_ULONG len)
{
	CK_MECHANISM_TYPE mech = c->mech ? c->mech->type : 0;
	for (size_t i = 0; i < c->n_docs; i++) {
		if (document_covered(&c->docs[i], data, len, c->hash_only, mech))
			continue;
		snprintf(c->reason, sizeof(c->reason),
			 "sign context document %zu of %zu does not match the data to be signed", i + 1, c->n_docs);
		kt_log("signature refused: %s", c->reason);
		return CKR_DATA_INVALID;
	}
	return CKR_OK;
}

/* What the dialog calls the signature: the documents' titles and sizes. */
static char *context_title(const struct crypto_state *c)
{
	size_t cap = 64;
	for (size_t i = 0; i < c->n_docs; i++)
		cap += (c->docs[i].title ? strlen(c->docs[i].title) : 10) + 48;
	char *t = malloc(cap);
	if (!t)
		return NULL;
	size_t o = 0;
	if (c->n_docs > 1)
		o += (size_t)snprintf(t + o, cap - o, "%zu documents: ", c->n_docs);
	for (size_t i = 0; i < c->n_docs; i++)
		o += (size_t)snprintf(t + o, cap - o, "%s%s (%lu bytes)", i ? "; " : "",
				      c->docs[i].title ? c->docs[i].title : "untitled", (unsigned long)c->docs[i].len);
	return t;
}

/* The request as the person sees it: with a sign context, its titles and
 * the document itself rather than the bytes an application derived from
 * it (a hash, CMS attributes).  *title is for the caller to free. */
static void request_for(const struct session *s, const CK_BYTE *data, CK_ULONG len, struct request_buf *b,
			char **title)
{
	const struct crypto_state *c = &s->crypto;
	request_build(s, data, len, b);
	*title = NULL;
	if (!c->n_docs)
		return;
	b->req.title = *title = context_title(c);
	b->req.hash_only = false;
	b->req.content = NULL;
	b->req.content_len = 0;
	if (c->n_docs == 1 && is_text(c->docs[0].value, c->docs[0].len)) {
		b->req.content = c->docs[0].value;
		b->req.content_len = c->docs[0].len;
	}
}

/* A PIN typed into the module's own dialog stands for the
 * context-specific login the application did not send. */
static CK_RV check_dialog_pin(void *ctx, const char *pin, size_t len)
{
	struct session *s = ctx;
	struct token *t = s->token;
	CK_RV rv = CKR_USER_NOT_LOGGED_IN;
	token_lock(t);
	bool current = t->login == CKU_USER &&
		       __atomic_load_n(&t->login_epoch, __ATOMIC_ACQUIRE) == s->crypto.login_epoch;
	token_unlock(t);
	/* A device checks the PIN itself, for its operation (and outside
	 * the token lock: a slow device delays this signature only). */
	if (current && crypto_op_remote(s->crypto.op))
		rv = crypto_op_login(s->crypto.op, (const CK_UTF8CHAR *)pin, len);
	else if (current) {
		token_lock(t);
		rv = token_check_pin(t, CKU_USER, (const CK_UTF8CHAR *)pin, len);
		token_unlock(t);
	}
	if (rv == CKR_OK)
		s->crypto.context_logged_in = true;
	return rv;
}

CK_RV signing_activate(struct session *s, const CK_BYTE *data, CK_ULONG len)
{
	struct crypto_state *c = &s->crypto;
	if (c->policy == CK_KT_POLICY_AUTOMATIC) {
		/* Art. 12.4 and 14.3: only a legal entity's seal signs unattended. */
		if (c->holder_type == CK_KT_HOLDER_NATURAL_PERSON ||
		    c->holder_type == CK_KT_HOLDER_REPRESENTATIVE) {
			snprintf(c->reason, sizeof(c->reason),
				 "automatic key with a certificate naming a natural person");
			kt_log("signature refused: %s", c->reason);
			return CKR_KEY_FUNCTION_NOT_PERMITTED;
		}
		return CKR_OK;
	}
	struct request_buf b;
	struct confirm_config cc = confirm_settings();
	struct confirm_pin pin = { .check = check_dialog_pin, .ctx = s };
	char why[256] = "";
	CK_RV rv = context_check(c, data, len);
	if (rv != CKR_OK)
		return rv;
	char *title;
	request_for(s, data, len, &b, &title);
	/* The key wants its PIN at every use and the application did not
	 * give it (Java, OpenSSL never do): the dialog asks for it. */
	if (c->needs_context_login && !c->context_logged_in)
		b.req.pin = &pin;
	/* A device checks that PIN itself: the dialog cannot stand in for
	 * it with a yes alone (the command backend is asked for it too). */
	b.req.pin_required = b.req.pin && crypto_op_remote(c->op);
	enum confirm_answer a = confirm_ask(&cc, &b.req, why, sizeof(why));
	free(title);
	if (a == CONFIRM_YES)
		return CKR_OK;
	snprintf(c->reason, sizeof(c->reason), "%s", why[0] ? why : "the signer did not confirm");
	switch (a) {
	case CONFIRM_NO:
		kt_log("signature rejected: %s", c->reason);
		return CKR_FUNCTION_REJECTED;
	case CONFIRM_PIN_FAILED:
		kt_log("signature refused: %s", c->reason);
		return CKR_USER_NOT_LOGGED_IN;
	default:
		kt_log("signature canceled: %s", c->reason);
		return CKR_FUNCTION_CANCELED;
	}
}

static const char *decision_of(CK_RV rv)
{
	switch (rv) {
	case CKR_OK:
		return "signed";
	case CKR_FUNCTION_REJECTED:
		return "rejected";
	case CKR_FUNCTION_CANCELED:
		return "canceled";
	case CKR_KEY_FUNCTION_NOT_PERMITTED:
	case CKR_USER_NOT_LOGGED_IN:
	case CKR_DATA_INVALID:
		return "refused";
	default:
		return "failed";
	}
}

void signing_finish(struct session *s, CK_RV rv, const CK_BYTE *data, CK_ULONG len,
		    const unsigned char *sha256)
{
	struct crypto_state *c = &s->crypto;
	bool have_data = data != NULL; /* NULL: streamed into the key's digest, not kept */
	char digest_hex[65];

	if (!c->uses_private_key)
		return;
	/* The caller's buffer is only known to hold `len` bytes when the key
	 * read them all (a signature was made) or when it is our own copy: a
	 * refused or failed call may come with any length at all. */
	if (rv != CKR_OK && data != c->data)
		have_data = false;
	if (rv == CKR_OK && c->policy == CK_KT_POLICY_CONFIRM) {
		struct request_buf b;
		struct confirm_config cc = confirm_settings();
		char *title;
		request_for(s, have_data ? data : NULL, have_data ? len : 0, &b, &title);
		confirm_notify(&cc, &b.req);
		kt_wipe(&b, sizeof(b));
		free(title);
	}
	if (!conf->audit_log) {
		kt_log("no audit log (no HOME or XDG_STATE_HOME, and no audit_log configured)");
		return;
	}
	/* A seal's routine record is batched: its digest can be computed
	 * when the batch is written, off the signer's path. */
	bool deferred = rv == CKR_OK && c->policy == CK_KT_POLICY_AUTOMATIC;
	bool hash_later = have_data && !c->confidential && !sha256 && deferred && len <= AUDIT_HASH_LATER_MAX;
	if (have_data && !c->confidential && sha256) {
		kt_hex(digest_hex, sha256, 32);
	} else if (have_data && !c->confidential && !hash_later) {
		char code[5];
		digest_of(data, len, digest_hex, code);
	}
	struct audit_record r = {
		.token = c->token_serial,
		.key_id_hex = c->key_id,
		.cert_issuer = c->cert_issuer,
		.cert_serial = c->cert_serial,
		.mechanism = kt_mech_name(c->mech ? c->mech->type : 0),
		.size = have_data ? len : data ? len : c->streamed,
		/* A confidential document leaves no digest behind. */
		.sha256_hex = have_data && !c->confidential && !hash_later ? digest_hex : NULL,
		.hash_data = hash_later ? data : NULL,
		.hash_len = hash_later ? len : 0,
		.program = calling_program(),
		.pid = kt_program_pid(),
		.decision = decision_of(rv),
		.reason = rv == CKR_OK ? NULL : c->reason[0] ? c->reason : kt_rv_name(rv),
	};
	/* A person's decision is written at once; a seal's routine signature
	 * may wait for the next batch (module/policy/audit.c). */
	if (deferred)
		audit_append_deferred(conf->audit_log, &r);
	else
		audit_append(conf->audit_log, &r);
}
