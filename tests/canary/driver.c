/*
 * tests/canary/driver.c: every flow of koltamga with canaries in it, for
 * tests/clients/canary.sh, which runs this under strace and then searches
 * everything the process and its children wrote (issue 5).
 *
 *   driver MODULE INDIR SIGNERDIR OUTDIR     (MODULE "" or "-": $KOLTAMGA_MODULE)
 *
 * INDIR holds what the script made, read and never written here: so_pin,
 * user_pin, new_pin, bad_pin, long_pin (the PINs, no newline), doc and
 * secret_doc (the documents), title and secret_title (sign-context titles),
 * key1 and key2 (32-byte P-256 scalars; key2, a seal by configuration, goes in
 * as CKA_PRIVATE false),
 * aes and aes2 (32 key bytes each; aes2 CKA_PRIVATE false), person.der and
 * rogue.der (certificates for key1 and key2, carrying personal data).  The
 * canaries come from files, never from argv or the environment, so that the
 * only execve that may carry them is the planted one at the end.
 *
 * SIGNERDIR holds yes.conf, no.conf and cancel.conf for the `command`
 * confirmation backend (tests/pinentry/fake-confirm.sh); KT_FAKE_CONFIRM is
 * pointed at one of them before each confirmed signature.
 *
 * OUTDIR receives NAME.sig (DER ECDSA-Sig-Value), PUB.spki (DER
 * SubjectPublicKeyInfo) and planted.txt.  stdout says what ran, one line per
 * step, and "signature NAME PUB DATA" for each signature the script must
 * verify with openssl; the last line is "driver: done".  Exit status 0 only
 * when every call returned what it should.
 *
 * Only the PKCS#11 API is used (the module is dlopen()ed as applications
 * do); nothing here links OpenSSL, so the process's own writes are the
 * module's writes plus the few files named above.
 *
 * The planted controls (last): planted.txt gets every canary and a child is
 * spawned with canaries in its argv and environment.  The script requires
 * its scanner to find exactly those, which proves it would have seen a leak
 * anywhere else.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include "koltamga/pkcs11v.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static CK_FUNCTION_LIST_PTR F;
static const char *indir, *signerdir, *outdir;
static int failures;

struct blob {
	CK_BYTE *p;
	CK_ULONG len;
};

/* The inputs. */
static struct blob so_pin, user_pin, new_pin, bad_pin, long_pin, doc, secret_doc, title, secret_title, key1,
    key2, aes, aes2, person_der, rogue_der;

static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const CK_BYTE id_seal[] = {'s', 'e', 'a', 'l'}, id_gen[] = {'g', 'e', 'n'}, id_key1[] = {0xc1},
		     id_key2[] = {0xc2}, id_aes[] = {0xae}, id_aes2[] = {0xaf};

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

/* A call's rv against the expected one; the run goes on either way, so one
 * surprise does not hide the rest of the flows from the scan. */
static bool expect(const char *what, CK_RV got, CK_RV want)
{
	if (got == want) {
		say("ok   %s", what);
		return true;
	}
	say("FAIL %s: rv 0x%lx, expected 0x%lx", what, (unsigned long)got, (unsigned long)want);
	failures++;
	return false;
}

static void fatal(const char *what)
{
	say("FATAL %s", what);
	exit(1);
}

static struct blob slurp(const char *name)
{
	char path[4096];
	struct blob b = {NULL, 0};
	size_t cap = 0;
	FILE *fp;

	snprintf(path, sizeof(path), "%s/%s", indir, name);
	fp = fopen(path, "rb");
	if (!fp)
		fatal(path);
	for (;;) {
		if (cap - b.len < 4096) {
			cap += 65536;
			b.p = realloc(b.p, cap);
			if (!b.p)
				fatal("out of memory");
		}
		size_t got = fread(b.p + b.len, 1, cap - b.len, fp);
		if (got == 0)
			break;
		b.len += got;
	}
	fclose(fp);
	return b;
}

static void put(const char *name, const void *p, size_t len)
{
	char path[4096];
	FILE *fp;

	snprintf(path, sizeof(path), "%s/%s", outdir, name);
	fp = fopen(path, "wb");
	if (!fp || fwrite(p, 1, len, fp) != len || fclose(fp) != 0)
		fatal(path);
}

static void signer_says(const char *answer)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s.conf", signerdir, answer);
	setenv("KT_FAKE_CONFIRM", path, 1);
}

/* --- DER helpers (no OpenSSL here) ------------------------------------------ */

static size_t der_uint(CK_BYTE *o, const CK_BYTE *v, size_t n)
{
	while (n > 1 && v[0] == 0) {
		v++;
		n--;
	}
	size_t pad = (v[0] & 0x80) ? 1 : 0;
	o[0] = 0x02;
	o[1] = (CK_BYTE)(n + pad);
	if (pad)
		o[2] = 0;
	memcpy(o + 2 + pad, v, n);
	return 2 + pad + n;
}

/* r || s (P-256) as a DER ECDSA-Sig-Value. */
static void put_sig(const char *name, const CK_BYTE *sig, CK_ULONG len)
{
	CK_BYTE der[80];
	char file[256];
	size_t n;

	if (len != 64) {
		say("FAIL %s: signature of %lu bytes", name, (unsigned long)len);
		failures++;
		return;
	}
	n = 2;
	n += der_uint(der + n, sig, 32);
	n += der_uint(der + n, sig + 32, 32);
	der[0] = 0x30;
	der[1] = (CK_BYTE)(n - 2);
	snprintf(file, sizeof(file), "%s.sig", name);
	put(file, der, n);
}

/* --- small PKCS#11 helpers ------------------------------------------------- */

static CK_RV get_attr(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type, struct blob *out)
{
	CK_ATTRIBUTE a = {type, NULL, 0};
	CK_RV rv = F->C_GetAttributeValue(s, o, &a, 1);

	out->p = NULL;
	out->len = 0;
	if (rv != CKR_OK)
		return rv;
	if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
		return CKR_ATTRIBUTE_SENSITIVE;
	a.pValue = malloc(a.ulValueLen ? a.ulValueLen : 1);
	if (!a.pValue)
		fatal("out of memory");
	rv = F->C_GetAttributeValue(s, o, &a, 1);
	out->p = a.pValue;
	out->len = a.ulValueLen;
	return rv;
}

/* The one object of `cls` with `id` (CK_INVALID_HANDLE when not exactly one). */
static CK_OBJECT_HANDLE find_one(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const CK_BYTE *id, size_t id_len)
{
	CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, (void *)id, id_len}};
	CK_OBJECT_HANDLE h[4];
	CK_ULONG n = 0;

	if (F->C_FindObjectsInit(s, t, COUNT(t)) != CKR_OK)
		return CK_INVALID_HANDLE;
	F->C_FindObjects(s, h, COUNT(h), &n);
	F->C_FindObjectsFinal(s);
	return n == 1 ? h[0] : CK_INVALID_HANDLE;
}

/* A public key's CKA_EC_POINT (DER OCTET STRING of 04||X||Y) as an SPKI file. */
static void put_spki(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub, const char *name)
{
	static const CK_BYTE head[] = {0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48,
				       0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
				       0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00};
	CK_BYTE spki[sizeof(head) + 65];
	struct blob pt;
	char file[256];

	if (!expect("C_GetAttributeValue(CKA_EC_POINT)", get_attr(s, pub, CKA_EC_POINT, &pt), CKR_OK))
		return;
	if (pt.len != 67 || pt.p[0] != 0x04 || pt.p[1] != 65 || pt.p[2] != 0x04) {
		say("FAIL %s: unexpected CKA_EC_POINT of %lu bytes", name, (unsigned long)pt.len);
		failures++;
	} else {
		memcpy(spki, head, sizeof(head));
		memcpy(spki + sizeof(head), pt.p + 2, 65);
		snprintf(file, sizeof(file), "%s.spki", name);
		put(file, spki, sizeof(spki));
	}
	free(pt.p);
}

static CK_SLOT_ID find_slot(bool initialized)
{
	CK_SLOT_ID slots[32];
	CK_ULONG n = COUNT(slots);
	CK_TOKEN_INFO ti;

	if (F->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
		fatal("C_GetSlotList");
	for (CK_ULONG i = 0; i < n; i++) {
		if (F->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
			continue;
		bool init = (ti.flags & CKF_TOKEN_INITIALIZED) != 0;
		if (init == initialized && (!init || memcmp(ti.label, "canary ", 7) == 0))
			return slots[i];
	}
	fatal(initialized ? "no token labelled canary" : "no empty slot");
	return 0;
}

static void initialize(void)
{
	CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
	if (!expect("C_Initialize", F->C_Initialize(&args), CKR_OK))
		fatal("C_Initialize");
}

static CK_SESSION_HANDLE open_rw(CK_SLOT_ID slot)
{
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	if (!expect("C_OpenSession",
		    F->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK))
		fatal("C_OpenSession");
	return s;
}

/* --- the flows -------------------------------------------------------------- */

/* C_InitToken, C_InitPIN, C_Login (right and wrong), C_SetPIN (wrong old
 * PIN, a new PIN out of range, right), login with the old PIN. */
static CK_SLOT_ID pins(void)
{
	CK_UTF8CHAR label[32];
	CK_SLOT_ID slot = find_slot(false);
	CK_SESSION_HANDLE s;

	memset(label, ' ', sizeof(label));
	memcpy(label, "canary", 6);
	expect("C_InitToken(SO PIN)", F->C_InitToken(slot, so_pin.p, so_pin.len, label), CKR_OK);
	slot = find_slot(true);
	s = open_rw(slot);
	expect("C_Login(SO, wrong PIN)", F->C_Login(s, CKU_SO, bad_pin.p, bad_pin.len), CKR_PIN_INCORRECT);
	expect("C_Login(SO)", F->C_Login(s, CKU_SO, so_pin.p, so_pin.len), CKR_OK);
	expect("C_InitPIN(user PIN)", F->C_InitPIN(s, user_pin.p, user_pin.len), CKR_OK);
	expect("C_Logout(SO)", F->C_Logout(s), CKR_OK);
	expect("C_Login(USER, wrong PIN)", F->C_Login(s, CKU_USER, bad_pin.p, bad_pin.len),
	       CKR_PIN_INCORRECT);
	expect("C_Login(USER)", F->C_Login(s, CKU_USER, user_pin.p, user_pin.len), CKR_OK);
	expect("C_SetPIN(wrong old PIN)", F->C_SetPIN(s, bad_pin.p, bad_pin.len, new_pin.p, new_pin.len),
	       CKR_PIN_INCORRECT);
	expect("C_SetPIN(new PIN too long)",
	       F->C_SetPIN(s, user_pin.p, user_pin.len, long_pin.p, long_pin.len), CKR_PIN_LEN_RANGE);
	expect("C_SetPIN", F->C_SetPIN(s, user_pin.p, user_pin.len, new_pin.p, new_pin.len), CKR_OK);
	expect("C_Logout(USER)", F->C_Logout(s), CKR_OK);
	expect("C_Login(USER, the old PIN)", F->C_Login(s, CKU_USER, user_pin.p, user_pin.len),
	       CKR_PIN_INCORRECT);
	expect("C_CloseSession", F->C_CloseSession(s), CKR_OK);
	return slot;
}

static void gen_pair(CK_SESSION_HANDLE s, const char *label, const CK_BYTE *id, size_t id_len,
		     CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
	CK_MECHANISM m = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
	CK_ATTRIBUTE pt[] = {
	    {CKA_TOKEN, &yes, 1},
	    {CKA_VERIFY, &yes, 1},
	    {CKA_EC_PARAMS, (void *)p256, sizeof(p256)},
	    {CKA_ID, (void *)id, id_len},
	    {CKA_LABEL, (void *)label, strlen(label)},
	};
	CK_ATTRIBUTE vt[] = {
	    {CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 1},	{CKA_SENSITIVE, &yes, 1},
	    {CKA_SIGN, &yes, 1},  {CKA_ID, (void *)id, id_len}, {CKA_LABEL, (void *)label, strlen(label)},
	};
	char what[128];
	snprintf(what, sizeof(what), "C_GenerateKeyPair(%s)", label);
	if (!expect(what, F->C_GenerateKeyPair(s, &m, pt, COUNT(pt), vt, COUNT(vt), pub, priv), CKR_OK))
		fatal(what);
}

/* A token EC private key with known scalar bytes: sensitive, so neither it
 * nor anything derived from it may ever be readable outside the module.
 * With CKA_PRIVATE false the store seals only the key material
 * (token_attr_is_secret), with true the whole object: both are run. */
static CK_OBJECT_HANDLE import_ec(CK_SESSION_HANDLE s, const char *label, const CK_BYTE *id, size_t id_len,
				  const struct blob *scalar, CK_BBOOL *private_obj)
{
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_KEY_TYPE kt = CKK_EC;
	CK_ATTRIBUTE t[] = {
	    {CKA_CLASS, &cls, sizeof(cls)},
	    {CKA_KEY_TYPE, &kt, sizeof(kt)},
	    {CKA_TOKEN, &yes, 1},
	    {CKA_PRIVATE, private_obj, 1},
	    {CKA_SENSITIVE, &yes, 1},
	    {CKA_EXTRACTABLE, &no, 1},
	    {CKA_SIGN, &yes, 1},
	    {CKA_ID, (void *)id, id_len},
	    {CKA_LABEL, (void *)label, strlen(label)},
	    {CKA_EC_PARAMS, (void *)p256, sizeof(p256)},
	    {CKA_VALUE, scalar->p, scalar->len},
	};
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
	char what[128];
	snprintf(what, sizeof(what), "C_CreateObject(EC private key %s)", label);
	if (!expect(what, F->C_CreateObject(s, t, COUNT(t), &h), CKR_OK))
		fatal(what);
	return h;
}

static CK_OBJECT_HANDLE import_aes(CK_SESSION_HANDLE s, const char *label, const CK_BYTE *id, size_t id_len,
				   const struct blob *value, CK_BBOOL *private_obj)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_AES;
	CK_ATTRIBUTE t[] = {
	    {CKA_CLASS, &cls, sizeof(cls)},
	    {CKA_KEY_TYPE, &kt, sizeof(kt)},
	    {CKA_TOKEN, &yes, 1},
	    {CKA_PRIVATE, private_obj, 1},
	    {CKA_SENSITIVE, &yes, 1},
	    {CKA_EXTRACTABLE, &no, 1},
	    {CKA_ENCRYPT, &yes, 1},
	    {CKA_DECRYPT, &yes, 1},
	    {CKA_ID, (void *)id, id_len},
	    {CKA_LABEL, (void *)label, strlen(label)},
	    {CKA_VALUE, value->p, value->len},
	};
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
	char what[128];
	snprintf(what, sizeof(what), "C_CreateObject(AES key %s)", label);
	if (!expect(what, F->C_CreateObject(s, t, COUNT(t), &h), CKR_OK))
		fatal(what);
	return h;
}

static CK_OBJECT_HANDLE import_cert(CK_SESSION_HANDLE s, const char *label, const CK_BYTE *id, size_t id_len,
				    const struct blob *der)
{
	CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
	CK_CERTIFICATE_TYPE ct = CKC_X_509;
	CK_ATTRIBUTE t[] = {
	    {CKA_CLASS, &cls, sizeof(cls)}, {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
	    {CKA_TOKEN, &yes, 1},	    {CKA_LABEL, (void *)label, strlen(label)},
	    {CKA_ID, (void *)id, id_len},   {CKA_VALUE, der->p, der->len},
	};
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
	char what[128];
	snprintf(what, sizeof(what), "C_CreateObject(certificate %s)", label);
	if (!expect(what, F->C_CreateObject(s, t, COUNT(t), &h), CKR_OK))
		fatal(what);
	return h;
}

/* A sign-context object (docs/confirmation.md), a session object. */
static CK_OBJECT_HANDLE sign_context(CK_SESSION_HANDLE s, const struct blob *t_title,
				     const struct blob *value, bool confidential)
{
	CK_OBJECT_CLASS cls = CKO_DATA;
	CK_BBOOL conf = confidential ? CK_TRUE : CK_FALSE;
	CK_ATTRIBUTE t[] = {
	    {CKA_CLASS, &cls, sizeof(cls)},
	    {CKA_TOKEN, &no, 1},
	    {CKA_APPLICATION, (void *)KT_SIGN_CONTEXT_APPLICATION, strlen(KT_SIGN_CONTEXT_APPLICATION)},
	    {CKA_LABEL, t_title->p, t_title->len},
	    {CKA_VALUE, value->p, value->len},
	    {CKA_KT_CONFIDENTIAL, &conf, sizeof(conf)},
	};
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
	expect(confidential ? "C_CreateObject(confidential sign context)" : "C_CreateObject(sign context)",
	       F->C_CreateObject(s, t, COUNT(t), &h), CKR_OK);
	return h;
}

/*
 * One signature: C_SignInit, an optional context-specific login (a wrong PIN
 * first when `wrong_first`), a length query, C_Sign (or C_SignUpdate in three
 * parts and C_SignFinal).  Writes NAME.sig and announces it when it signed.
 */
struct sign_req {
	const char *name; /* also the .sig file */
	CK_MECHANISM_TYPE mech;
	const struct blob *data;
	bool multi;
	const struct blob *ctx_pin; /* NULL: no CKU_CONTEXT_SPECIFIC login */
	bool wrong_first;
	CK_RV want;		     /* from C_Sign / C_SignFinal (or C_SignInit when init_want is set) */
	CK_RV init_want;	     /* 0: CKR_OK expected from C_SignInit */
	const char *pub, *data_name; /* announced for the script's openssl check */
};

static void sign(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const struct sign_req *r)
{
	CK_MECHANISM m = {r->mech, NULL, 0};
	CK_BYTE sig[128];
	CK_ULONG len = 0;
	CK_RV rv;
	char what[160];

	snprintf(what, sizeof(what), "%s: C_SignInit", r->name);
	rv = F->C_SignInit(s, &m, key);
	if (r->init_want) {
		expect(what, rv, r->init_want);
		return;
	}
	if (!expect(what, rv, CKR_OK))
		return;
	if (r->ctx_pin) {
		if (r->wrong_first) {
			snprintf(what, sizeof(what), "%s: C_Login(CONTEXT_SPECIFIC, wrong PIN)", r->name);
			expect(what, F->C_Login(s, CKU_CONTEXT_SPECIFIC, bad_pin.p, bad_pin.len),
			       CKR_PIN_INCORRECT);
		}
		snprintf(what, sizeof(what), "%s: C_Login(CONTEXT_SPECIFIC)", r->name);
		expect(what, F->C_Login(s, CKU_CONTEXT_SPECIFIC, r->ctx_pin->p, r->ctx_pin->len), CKR_OK);
	}
	if (r->multi) {
		CK_ULONG third = r->data->len / 3;
		snprintf(what, sizeof(what), "%s: C_SignUpdate", r->name);
		expect(what, F->C_SignUpdate(s, r->data->p, third), CKR_OK);
		expect(what, F->C_SignUpdate(s, r->data->p + third, third), CKR_OK);
		expect(what, F->C_SignUpdate(s, r->data->p + 2 * third, r->data->len - 2 * third), CKR_OK);
		snprintf(what, sizeof(what), "%s: C_SignFinal (length)", r->name);
		expect(what, F->C_SignFinal(s, NULL, &len), CKR_OK);
		len = sizeof(sig);
		snprintf(what, sizeof(what), "%s: C_SignFinal", r->name);
		rv = F->C_SignFinal(s, sig, &len);
	} else {
		snprintf(what, sizeof(what), "%s: C_Sign (length)", r->name);
		expect(what, F->C_Sign(s, r->data->p, r->data->len, NULL, &len), CKR_OK);
		len = sizeof(sig);
		snprintf(what, sizeof(what), "%s: C_Sign", r->name);
		rv = F->C_Sign(s, r->data->p, r->data->len, sig, &len);
	}
	if (expect(what, rv, r->want) && rv == CKR_OK) {
		put_sig(r->name, sig, len);
		say("signature %s %s %s", r->name, r->pub, r->data_name);
	}
}

static struct blob digest(CK_SESSION_HANDLE s, const struct blob *data)
{
	CK_MECHANISM m = {CKM_SHA256, NULL, 0};
	struct blob h = {malloc(32), 32};
	CK_BYTE h2[32];
	CK_ULONG n = 32, n2 = sizeof(h2);

	if (!h.p)
		fatal("out of memory");
	expect("C_DigestInit", F->C_DigestInit(s, &m), CKR_OK);
	expect("C_Digest", F->C_Digest(s, data->p, data->len, h.p, &n), CKR_OK);
	/* Multi-part: the same digest. */
	expect("C_DigestInit", F->C_DigestInit(s, &m), CKR_OK);
	expect("C_DigestUpdate", F->C_DigestUpdate(s, data->p, data->len / 2), CKR_OK);
	expect("C_DigestUpdate", F->C_DigestUpdate(s, data->p + data->len / 2, data->len - data->len / 2),
	       CKR_OK);
	expect("C_DigestFinal", F->C_DigestFinal(s, h2, &n2), CKR_OK);
	if (n != 32 || n2 != 32 || memcmp(h.p, h2, 32) != 0) {
		say("FAIL C_Digest and C_DigestUpdate/Final disagree");
		failures++;
	}
	return h;
}

/* Every object, every attribute worth reading; personal data read back. */
static void read_everything(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE cert1)
{
	static const CK_ATTRIBUTE_TYPE types[] = {
	    CKA_CLASS,		 CKA_LABEL,	     CKA_ID,
	    CKA_VALUE,		 CKA_SUBJECT,	     CKA_ISSUER,
	    CKA_SERIAL_NUMBER,	 CKA_EC_POINT,	     CKA_EC_PARAMS,
	    CKA_PUBLIC_KEY_INFO, CKA_CHECK_VALUE,    CKA_APPLICATION,
	    CKA_KT_SIGN_POLICY,	 CKA_KT_COMPROMISED,
	};
	CK_OBJECT_HANDLE h[64];
	CK_ULONG n = 0, reads = 0;
	struct blob v;

	expect("C_FindObjectsInit(all)", F->C_FindObjectsInit(s, NULL, 0), CKR_OK);
	expect("C_FindObjects(all)", F->C_FindObjects(s, h, COUNT(h), &n), CKR_OK);
	expect("C_FindObjectsFinal", F->C_FindObjectsFinal(s), CKR_OK);
	for (CK_ULONG i = 0; i < n; i++) {
		for (size_t k = 0; k < COUNT(types); k++)
			if (get_attr(s, h[i], types[k], &v) == CKR_OK) {
				reads++;
				free(v.p);
			}
		for (CK_ATTRIBUTE_TYPE t = CKA_KT_BASE + 1; t <= CKA_KT_LAST; t++)
			if (get_attr(s, h[i], t, &v) == CKR_OK) {
				reads++;
				free(v.p);
			}
	}
	say("ok   read %lu attribute values of %lu objects", (unsigned long)reads, (unsigned long)n);
	if (n < 8) {
		say("FAIL only %lu objects found", (unsigned long)n);
		failures++;
	}

	/* The certificate's personal data: parsed, readable by its owner, and
	 * usable in a search template (the template reaches the module). */
	struct blob surname, subject;
	expect("C_GetAttributeValue(CKA_KT_SURNAME)", get_attr(s, cert1, CKA_KT_SURNAME, &surname), CKR_OK);
	expect("C_GetAttributeValue(CKA_SUBJECT)", get_attr(s, cert1, CKA_SUBJECT, &subject), CKR_OK);
	if (!surname.len || !subject.len) {
		say("FAIL no surname or subject on the certificate");
		failures++;
	}
	CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
	CK_ATTRIBUTE by_subject[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_SUBJECT, subject.p, subject.len}};
	CK_ATTRIBUTE by_surname[] = {{CKA_CLASS, &cls, sizeof(cls)},
				     {CKA_KT_SURNAME, surname.p, surname.len}};
	CK_OBJECT_HANDLE found[8];
	n = 0;
	expect("C_FindObjectsInit(CKA_SUBJECT)", F->C_FindObjectsInit(s, by_subject, COUNT(by_subject)),
	       CKR_OK);
	expect("C_FindObjects(CKA_SUBJECT)", F->C_FindObjects(s, found, COUNT(found), &n), CKR_OK);
	F->C_FindObjectsFinal(s);
	/* key1's and key2's certificates name the same person. */
	if (n != 2) {
		say("FAIL %lu certificates by subject, expected 2", (unsigned long)n);
		failures++;
	}
	n = 0;
	expect("C_FindObjectsInit(CKA_KT_SURNAME)", F->C_FindObjectsInit(s, by_surname, COUNT(by_surname)),
	       CKR_OK);
	expect("C_FindObjects(CKA_KT_SURNAME)", F->C_FindObjects(s, found, COUNT(found), &n), CKR_OK);
	F->C_FindObjectsFinal(s);
	say("ok   %lu certificate(s) by surname", (unsigned long)n);
	free(surname.p);
	free(subject.p);
}

static void key_values_stay_inside(CK_SESSION_HANDLE s, const CK_OBJECT_HANDLE *keys, size_t n)
{
	struct blob v;
	for (size_t i = 0; i < n; i++) {
		if (keys[i] == CK_INVALID_HANDLE) {
			say("FAIL a key is missing");
			failures++;
			continue;
		}
		expect("C_GetAttributeValue(CKA_VALUE of a sensitive key)",
		       get_attr(s, keys[i], CKA_VALUE, &v), CKR_ATTRIBUTE_SENSITIVE);
		free(v.p);
	}
}

static void verify_in_module(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub)
{
	CK_MECHANISM m = {CKM_ECDSA_SHA256, NULL, 0};
	CK_BYTE sig[128];
	CK_ULONG len = sizeof(sig);
	CK_OBJECT_HANDLE priv = find_one(s, CKO_PRIVATE_KEY, id_seal, sizeof(id_seal));

	expect("C_SignInit(seal, for C_Verify)", F->C_SignInit(s, &m, priv), CKR_OK);
	expect("C_Sign(seal, for C_Verify)", F->C_Sign(s, doc.p, doc.len, sig, &len), CKR_OK);
	expect("C_VerifyInit", F->C_VerifyInit(s, &m, pub), CKR_OK);
	expect("C_Verify", F->C_Verify(s, doc.p, doc.len, sig, len), CKR_OK);
}

/* --- the planted controls -------------------------------------------------- */

static void plant(const struct blob *secret_hash)
{
	static const char hex[] = "0123456789abcdef";
	char path[4096], hx[65];
	FILE *fp;

	for (int i = 0; i < 32; i++) {
		hx[2 * i] = hex[secret_hash->p[i] >> 4];
		hx[2 * i + 1] = hex[secret_hash->p[i] & 15];
	}
	hx[64] = '\0';
	snprintf(path, sizeof(path), "%s/planted.txt", outdir);
	fp = fopen(path, "wb");
	if (!fp)
		fatal(path);
	fputs("KT-PLANTED-CONTROL\n", fp);
	const struct blob *all[] = {&so_pin, &user_pin,	  &new_pin, &bad_pin,	   &long_pin,
				    &doc,    &secret_doc, &title,   &secret_title, &person_der,
				    &key1,   &key2,	  &aes,	    &aes2};
	for (size_t i = 0; i < COUNT(all); i++) {
		fwrite(all[i]->p, 1, all[i]->len, fp);
		fputc('\n', fp);
	}
	fprintf(fp, "%s\n", hx);
	fwrite(secret_hash->p, 1, 32, fp);
	if (fclose(fp) != 0)
		fatal(path);

	/* A child with canaries in argv and environment. */
	char *pin = strndup((char *)user_pin.p, user_pin.len);
	char *env_doc = malloc(doc.len + 16);
	if (!pin || !env_doc)
		fatal("out of memory");
	snprintf(env_doc, doc.len + 16, "KT_PLANTED=%.*s", (int)doc.len, (char *)doc.p);
	for (char *c = env_doc; *c; c++)
		if (*c == '\n')
			*c = ' ';
	char *argv[] = {"true", "KT-PLANTED-CONTROL", pin, NULL};
	char *envp[] = {env_doc, "PATH=/usr/bin:/bin", NULL};
	pid_t pid;
	int st = 0;
	if (posix_spawnp(&pid, "true", NULL, NULL, argv, envp) != 0 || waitpid(pid, &st, 0) != pid || st != 0)
		fatal("planted child");
	free(pin);
	free(env_doc);
	say("ok   planted controls");
}

int main(int argc, char **argv)
{
	const char *module;
	void *dl;
	CK_C_GetFunctionList get_list;

	if (argc != 5) {
		fprintf(stderr, "usage: %s MODULE INDIR SIGNERDIR OUTDIR\n", argv[0]);
		return 2;
	}
	module = argv[1];
	if (!*module || strcmp(module, "-") == 0)
		module = getenv("KOLTAMGA_MODULE");
	indir = argv[2];
	signerdir = argv[3];
	outdir = argv[4];
	if (!module)
		fatal("no module (argument or KOLTAMGA_MODULE)");
	dl = dlopen(module, RTLD_NOW | RTLD_LOCAL);
	if (!dl)
		fatal(dlerror());
	get_list = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
	if (!get_list || get_list(&F) != CKR_OK)
		fatal("C_GetFunctionList");

	so_pin = slurp("so_pin");
	user_pin = slurp("user_pin");
	new_pin = slurp("new_pin");
	bad_pin = slurp("bad_pin");
	long_pin = slurp("long_pin");
	doc = slurp("doc");
	secret_doc = slurp("secret_doc");
	title = slurp("title");
	secret_title = slurp("secret_title");
	key1 = slurp("key1");
	key2 = slurp("key2");
	aes = slurp("aes");
	aes2 = slurp("aes2");
	person_der = slurp("person.der");
	rogue_der = slurp("rogue.der");

	/* --- first life of the module: everything from an empty store --- */
	initialize();
	CK_SLOT_ID slot = pins();
	CK_SESSION_HANDLE s = open_rw(slot);
	expect("C_Login(USER, new PIN)", F->C_Login(s, CKU_USER, new_pin.p, new_pin.len), CKR_OK);

	CK_OBJECT_HANDLE seal_pub, seal, gen_pub, gen;
	gen_pair(s, "seal", id_seal, sizeof(id_seal), &seal_pub, &seal);
	gen_pair(s, "person key", id_gen, sizeof(id_gen), &gen_pub, &gen);
	CK_OBJECT_HANDLE k1 = import_ec(s, "qualified person", id_key1, sizeof(id_key1), &key1, &yes);
	CK_OBJECT_HANDLE cert1 = import_cert(s, "qualified person", id_key1, sizeof(id_key1), &person_der);
	CK_OBJECT_HANDLE k2 = import_ec(s, "rogue person", id_key2, sizeof(id_key2), &key2, &no);
	import_cert(s, "rogue person", id_key2, sizeof(id_key2), &rogue_der);
	CK_OBJECT_HANDLE k_aes = import_aes(s, "aes canary", id_aes, sizeof(id_aes), &aes, &yes);
	CK_OBJECT_HANDLE k_aes2 = import_aes(s, "public aes canary", id_aes2, sizeof(id_aes2), &aes2, &no);
	put_spki(s, seal_pub, "seal");
	put_spki(s, gen_pub, "gen");
	CK_OBJECT_HANDLE k1_pub = find_one(s, CKO_PUBLIC_KEY, id_key1, sizeof(id_key1));
	if (k1_pub == CK_INVALID_HANDLE) {
		say("FAIL no public key beside key1's certificate");
		failures++;
	} else {
		put_spki(s, k1_pub, "key1");
	}

	/* C_Digest of both documents. */
	struct blob doc_hash = digest(s, &doc);
	struct blob secret_hash = digest(s, &secret_doc);

	/* Seals: no one is asked. */
	signer_says("no"); /* a seal that asked would fail here */
	sign(s, seal,
	     &(struct sign_req){.name = "seal-single",
				.mech = CKM_ECDSA_SHA256,
				.data = &doc,
				.want = CKR_OK,
				.pub = "seal",
				.data_name = "doc"});
	sign(s, seal,
	     &(struct sign_req){.name = "seal-multi",
				.mech = CKM_ECDSA_SHA256,
				.data = &doc,
				.multi = true,
				.want = CKR_OK,
				.pub = "seal",
				.data_name = "doc"});

	/* A confirm key: yes (with a wrong, then right context-specific PIN),
	 * no, cancel, and multi-part yes. */
	signer_says("yes");
	sign(s, gen,
	     &(struct sign_req){.name = "confirm-yes",
				.mech = CKM_ECDSA_SHA256,
				.data = &doc,
				.ctx_pin = &new_pin,
				.wrong_first = true,
				.want = CKR_OK,
				.pub = "gen",
				.data_name = "doc"});
	signer_says("no");
	sign(s, gen,
	     &(struct sign_req){.name = "confirm-no",
				.mech = CKM_ECDSA_SHA256,
				.data = &doc,
				.ctx_pin = &new_pin,
				.want = CKR_FUNCTION_REJECTED});
	signer_says("cancel");
	sign(s, gen,
	     &(struct sign_req){.name = "confirm-cancel",
				.mech = CKM_ECDSA_SHA256,
				.data = &doc,
				.want = CKR_FUNCTION_CANCELED});
	signer_says("yes");
	sign(s, gen,
	     &(struct sign_req){.name = "confirm-multi",
				.mech = CKM_ECDSA_SHA256,
				.data = &doc,
				.multi = true,
				.want = CKR_OK,
				.pub = "gen",
				.data_name = "doc"});

	/* The qualified key (trust list, CRL) with the personal certificate. */
	sign(s, k1,
	     &(struct sign_req){.name = "qualified",
				.mech = CKM_ECDSA_SHA256,
				.data = &doc,
				.ctx_pin = &new_pin,
				.want = CKR_OK,
				.pub = "key1",
				.data_name = "doc"});

	/* A sign context (not confidential) behind a hash-only mechanism. */
	CK_OBJECT_HANDLE ctx = sign_context(s, &title, &doc, false);
	sign(s, k1,
	     &(struct sign_req){.name = "context-hash",
				.mech = CKM_ECDSA,
				.data = &doc_hash,
				.want = CKR_OK,
				.pub = "key1",
				.data_name = "doc"});
	expect("C_DestroyObject(sign context)", F->C_DestroyObject(s, ctx), CKR_OK);

	/* The confidential document: signed (hash-only and hash-and-sign),
	 * rejected, and refused as not matching. */
	ctx = sign_context(s, &secret_title, &secret_doc, true);
	sign(s, gen,
	     &(struct sign_req){.name = "confidential-hash",
				.mech = CKM_ECDSA,
				.data = &secret_hash,
				.want = CKR_OK,
				.pub = "gen",
				.data_name = "secret_doc"});
	sign(s, k1,
	     &(struct sign_req){.name = "confidential",
				.mech = CKM_ECDSA_SHA256,
				.data = &secret_doc,
				.want = CKR_OK,
				.pub = "key1",
				.data_name = "secret_doc"});
	signer_says("no");
	sign(s, gen,
	     &(struct sign_req){.name = "confidential-no",
				.mech = CKM_ECDSA_SHA256,
				.data = &secret_doc,
				.multi = true,
				.want = CKR_FUNCTION_REJECTED});
	signer_says("yes");
	sign(s, gen,
	     &(struct sign_req){.name = "confidential-mismatch",
				.mech = CKM_ECDSA,
				.data = &doc_hash,
				.want = CKR_DATA_INVALID});
	expect("C_DestroyObject(confidential sign context)", F->C_DestroyObject(s, ctx), CKR_OK);

	/* The same person's certificate from a centre not in the trust list:
	 * refused before anyone is asked. */
	{
		CK_MECHANISM m = {CKM_ECDSA_SHA256, NULL, 0};
		CK_BYTE sig[128];
		CK_ULONG len = sizeof(sig);
		CK_RV rv = F->C_SignInit(s, &m, k2);
		if (rv == CKR_OK)
			rv = F->C_Sign(s, doc.p, doc.len, sig, &len);
		expect("rogue: refused", rv, CKR_KEY_FUNCTION_NOT_PERMITTED);

		/* Key compromise (a report file for the certification centre)
		 * of that key, then a signature with it: refused. */
		static const char reason[] = "laptop stolen";
		CK_ATTRIBUTE t[] = {{CKA_KT_COMPROMISE_REASON, (void *)reason, sizeof(reason) - 1},
				    {CKA_KT_COMPROMISED, &yes, sizeof(yes)}};
		expect("C_SetAttributeValue(CKA_KT_COMPROMISED)", F->C_SetAttributeValue(s, k2, t, COUNT(t)),
		       CKR_OK);
		len = sizeof(sig);
		rv = F->C_SignInit(s, &m, k2);
		if (rv == CKR_OK)
			rv = F->C_Sign(s, doc.p, doc.len, sig, &len);
		expect("compromised: refused", rv, CKR_KEY_FUNCTION_NOT_PERMITTED);
	}

	verify_in_module(s, seal_pub);
	read_everything(s, cert1);
	key_values_stay_inside(s, (CK_OBJECT_HANDLE[]){k1, k2, k_aes, k_aes2}, 4);

	expect("C_CloseAllSessions", F->C_CloseAllSessions(slot), CKR_OK);
	{
		CK_UTF8CHAR label[32];
		memset(label, ' ', sizeof(label));
		memcpy(label, "canary", 6);
		expect("C_InitToken(wrong SO PIN)", F->C_InitToken(slot, bad_pin.p, bad_pin.len, label),
		       CKR_PIN_INCORRECT);
	}
	expect("C_Finalize", F->C_Finalize(NULL), CKR_OK);

	/* --- second life: the store read back, sealed values unsealed --- */
	initialize();
	slot = find_slot(true);
	s = open_rw(slot);
	expect("C_Login(USER, new PIN) after reload", F->C_Login(s, CKU_USER, new_pin.p, new_pin.len),
	       CKR_OK);
	seal = find_one(s, CKO_PRIVATE_KEY, id_seal, sizeof(id_seal));
	k1 = find_one(s, CKO_PRIVATE_KEY, id_key1, sizeof(id_key1));
	k_aes = find_one(s, CKO_SECRET_KEY, id_aes, sizeof(id_aes));
	cert1 = find_one(s, CKO_CERTIFICATE, id_key1, sizeof(id_key1));
	if (seal == CK_INVALID_HANDLE || k1 == CK_INVALID_HANDLE || k_aes == CK_INVALID_HANDLE ||
	    cert1 == CK_INVALID_HANDLE)
		fatal("objects missing after reload");
	signer_says("no");
	sign(s, seal,
	     &(struct sign_req){.name = "reload-seal",
				.mech = CKM_ECDSA_SHA256,
				.data = &doc,
				.want = CKR_OK,
				.pub = "seal",
				.data_name = "doc"});
	signer_says("yes");
	sign(s, k1,
	     &(struct sign_req){.name = "reload-qualified",
				.mech = CKM_ECDSA_SHA256,
				.data = &doc,
				.multi = true,
				.ctx_pin = &new_pin,
				.want = CKR_OK,
				.pub = "key1",
				.data_name = "doc"});
	read_everything(s, cert1);
	key_values_stay_inside(
	    s,
	    (CK_OBJECT_HANDLE[]){k1, find_one(s, CKO_PRIVATE_KEY, id_key2, sizeof(id_key2)), k_aes,
				 find_one(s, CKO_SECRET_KEY, id_aes2, sizeof(id_aes2))},
	    4);
	expect("C_Logout", F->C_Logout(s), CKR_OK);
	expect("C_Finalize", F->C_Finalize(NULL), CKR_OK);

	plant(&secret_hash);
	free(doc_hash.p);
	free(secret_hash.p);
	say("driver: done, %d failure(s)", failures);
	return failures ? 1 : 0;
}
