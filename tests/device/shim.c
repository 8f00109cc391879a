/*
 * tests/device/shim.c: a PKCS#11 (2.40) module that plays a smart card or
 * USB token in tests of the "pkcs11" token driver.  It forwards every call
 * to a real module (SoftHSM2 in the tests) and injects the faults a
 * physical device has: being pulled out, being slow, hanging, failing.
 * Test code only; never installed.
 *
 * Environment, read at every call (so a test may change it between runs):
 *   KT_SHIM_MODULE   the real module (default /usr/lib/softhsm/libsofthsm2.so),
 *                    loaded at C_GetFunctionList or C_Initialize and unloaded
 *                    by C_Finalize
 *   KT_SHIM_CONTROL  a text file re-read at the start of every call; no file,
 *                    no faults.  Replace it with rename() rather than
 *                    rewriting it in place, or a call may see half of it.
 *   KT_SHIM_LOG      a file to which one line per call is appended
 *   KT_SHIM_PINPAD_PIN  the PIN the holder "types on the PIN pad" (see
 *                    pinpad below)
 *
 * Control lines (anything else is ignored):
 *   removed        the token is out.  C_GetSlotList(CK_TRUE) lists no slot,
 *                  C_GetSlotInfo lacks CKF_TOKEN_PRESENT, the calls about a
 *                  token (C_GetTokenInfo, C_OpenSession, C_InitToken,
 *                  C_GetMechanismList/Info) give CKR_TOKEN_NOT_PRESENT and
 *                  every call with a session handle CKR_DEVICE_REMOVED.  On
 *                  the first call that no longer sees the line, every
 *                  session of the real module is closed, as re-inserting a
 *                  card does: old handles become invalid, the login is gone.
 *                  A removal no call saw is no removal.
 *   delay_ms N     every call first sleeps N ms
 *   hang           every call but C_Finalize and C_GetFunctionList waits
 *                  while the line is there (polled every 10 ms)
 *   fail C_Name RV that function returns RV (0x... hex, else decimal)
 *                  without forwarding.  When C_Name continues or finishes a
 *                  cryptographic operation, the real module's operation is
 *                  ended too (unless RV is CKR_BUFFER_TOO_SMALL), since a
 *                  device's error ends it; else the next C_*Init would meet
 *                  CKR_OPERATION_ACTIVE.  Not done for the dual-function and
 *                  recover calls.
 *   pinpad         the reader has a PIN pad: C_GetTokenInfo adds
 *                  CKF_PROTECTED_AUTHENTICATION_PATH, and a C_Login with a
 *                  NULL PIN logs in with $KT_SHIM_PINPAD_PIN (unset: the
 *                  holder cancels, CKR_FUNCTION_CANCELED), as if typed on
 *                  the pad.  A C_Login with a PIN is forwarded as it is.
 * Order: hang, delay, the re-insertion, fail, removed.
 *
 * Log lines: the function's name, then for a C_*Init with a mechanism
 * "mechanism=0xTYPE", for the calls with templates "template=" (and
 * "public=" "private=" for C_GenerateKeyPair) with the attribute types in
 * hex, comma-separated, a CK_BBOOL one followed by "=0" or "=1" except in
 * C_GetAttributeValue; C_GetAttributeValue and C_SetAttributeValue name
 * the object first ("object=0xHANDLE template=..."), so that a test can
 * tell which object was asked for what.  Never PINs, other attribute
 * values or data.  The calls the shim makes on its own (ending an
 * operation, re-insertion) are not logged.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include "koltamga/pkcs11v.h"

#define SHIM_EXPORT __attribute__((visibility("default")))
#define DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#define CONTROL_MAX 4096
#define LOG_LINE_MAX 4096
#define HANG_POLL_MS 10

/* What the function being called belongs to, which decides what a removed
 * token does to it. */
enum kind {
	KIND_LIST,    /* C_GetFunctionList: never hangs, needs no module */
	KIND_INIT,    /* C_Initialize: loads the module */
	KIND_FINAL,   /* C_Finalize: never hangs */
	KIND_MODULE,  /* module and slot calls: the function itself handles removal */
	KIND_TOKEN,   /* about a slot's token: CKR_TOKEN_NOT_PRESENT when removed */
	KIND_SESSION, /* takes a session handle: CKR_DEVICE_REMOVED when removed */
};

/* The operation a call continues or finishes, to end it on an injected
 * failure. */
enum op { OP_NONE, OP_ENCRYPT, OP_DECRYPT, OP_DIGEST, OP_SIGN, OP_VERIFY };

struct call {
	const char *fn;
	enum kind kind;
	enum op op;
	CK_SLOT_ID slot;          /* KIND_TOKEN */
	CK_SESSION_HANDLE session; /* op != OP_NONE */
	const char *detail;       /* rest of the log line, or NULL */
	/* set by enter() */
	CK_FUNCTION_LIST_PTR f;
	bool removed;
	bool pinpad;
};

struct control {
	bool removed;
	bool hang;
	unsigned long delay_ms;
	bool fail;
	CK_RV fail_rv;
	bool pinpad;
};

/* lock guards everything below it.  It is never held while the caller's
 * call runs in the real module, only around loading, unloading and the
 * re-insertion, so a hanging or slow call never blocks another. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *real_dl;
static CK_FUNCTION_LIST_PTR real;
static bool initialized;  /* the real C_Initialize succeeded */
static bool seen_removed; /* some call saw "removed" since the last re-insertion */

static CK_FUNCTION_LIST function_list;

/* --- helpers --------------------------------------------------------------- */

static void sleep_ms(unsigned long ms)
{
	struct timespec ts = { .tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static bool parse_ulong(const char *s, unsigned long *out)
{
	int base = 10;
	char *end;

	if (!s || !*s)
		return false;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	if (*s == '-' || *s == '+' || *s == ' ')
		return false;
	errno = 0;
	*out = strtoul(s, &end, base);
	return errno == 0 && end != s && *end == '\0';
}

static void parse_line(char *line, const char *fn, struct control *ctl)
{
	char *save = NULL;
	char *word = strtok_r(line, " \t\r", &save);
	char *arg1 = word ? strtok_r(NULL, " \t\r", &save) : NULL;
	char *arg2 = arg1 ? strtok_r(NULL, " \t\r", &save) : NULL;
	unsigned long n;

	if (!word)
		return;
	if (strcmp(word, "removed") == 0 && !arg1) {
		ctl->removed = true;
	} else if (strcmp(word, "hang") == 0 && !arg1) {
		ctl->hang = true;
	} else if (strcmp(word, "pinpad") == 0 && !arg1) {
		ctl->pinpad = true;
	} else if (strcmp(word, "delay_ms") == 0 && parse_ulong(arg1, &n)) {
		ctl->delay_ms = n;
	} else if (strcmp(word, "fail") == 0 && arg1 && strcmp(arg1, fn) == 0 && parse_ulong(arg2, &n)) {
		ctl->fail = true;
		ctl->fail_rv = n;
	}
}

/* Only the lines about fn are kept: fail lines for other functions do not
 * matter to this call. */
static void read_control(const char *fn, struct control *ctl)
{
	const char *path = getenv("KT_SHIM_CONTROL");
	char buf[CONTROL_MAX];
	size_t len = 0;
	char *line, *save = NULL;
	int fd;

	memset(ctl, 0, sizeof(*ctl));
	if (!path || !*path)
		return;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	while (len < sizeof(buf) - 1) {
		ssize_t n = read(fd, buf + len, sizeof(buf) - 1 - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	buf[len] = '\0';
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		parse_line(line, fn, ctl);
}

static bool log_enabled(void)
{
	const char *path = getenv("KT_SHIM_LOG");

	return path && *path;
}

/* One write() on an O_APPEND descriptor, so lines from several threads
 * (and processes) never interleave. */
static void log_call(const char *fn, const char *detail)
{
	const char *path = getenv("KT_SHIM_LOG");
	char line[LOG_LINE_MAX + 2];
	int n, fd;
	size_t len;

	if (!path || !*path)
		return;
	n = snprintf(line, LOG_LINE_MAX, "%s%s%s", fn, detail ? " " : "", detail ? detail : "");
	if (n < 0)
		return;
	len = (size_t)n < LOG_LINE_MAX ? (size_t)n : LOG_LINE_MAX - 1;
	line[len++] = '\n';
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	if (write(fd, line, len) < 0) {
		/* nothing to do: a test that needs the log will miss the line */
	}
	close(fd);
}

/* A bounded string builder: a description too long for the log line ends
 * in "..." (size must be at least 4). */
struct text {
	char *buf;
	size_t size, len;
	bool full;
};

__attribute__((format(printf, 2, 3))) static void text_add(struct text *t, const char *fmt, ...)
{
	size_t room = t->size - t->len;
	va_list ap;
	int n;

	if (t->full)
		return;
	va_start(ap, fmt);
	n = vsnprintf(t->buf + t->len, room, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	/* Keep room for the marker, so that truncating later can add it. */
	if ((size_t)n + 4 <= room) {
		t->len += (size_t)n;
		return;
	}
	memcpy(t->buf + t->size - 4, "...", 4);
	t->len = t->size - 1;
	t->full = true;
}

static bool is_bool_attribute(CK_ATTRIBUTE_TYPE type)
{
	switch (type) {
	case CKA_TOKEN:
	case CKA_PRIVATE:
	case CKA_TRUSTED:
	case CKA_SENSITIVE:
	case CKA_ENCRYPT:
	case CKA_DECRYPT:
	case CKA_WRAP:
	case CKA_UNWRAP:
	case CKA_SIGN:
	case CKA_SIGN_RECOVER:
	case CKA_VERIFY:
	case CKA_VERIFY_RECOVER:
	case CKA_DERIVE:
	case CKA_EXTRACTABLE:
	case CKA_LOCAL:
	case CKA_NEVER_EXTRACTABLE:
	case CKA_ALWAYS_SENSITIVE:
	case CKA_MODIFIABLE:
	case CKA_COPYABLE:
	case CKA_DESTROYABLE:
	case CKA_ALWAYS_AUTHENTICATE:
	case CKA_WRAP_WITH_TRUSTED:
	case CKA_RESET_ON_INIT:
	case CKA_HAS_RESET:
	case CKA_KT_QC_COMPLIANCE:
	case CKA_KT_QC_SSCD:
	case CKA_KT_COMPROMISED:
	case CKA_KT_CONFIDENTIAL:
		return true;
	default:
		return false;
	}
}

static void describe_template(struct text *t, const char *label, const CK_ATTRIBUTE *tmpl, CK_ULONG count,
			      bool with_bools)
{
	CK_ULONG i;

	text_add(t, "%s%s=", t->len ? " " : "", label);
	if (!tmpl) {
		if (count)
			text_add(t, "(null)");
		return;
	}
	for (i = 0; i < count; i++) {
		text_add(t, "%s0x%lx", i ? "," : "", tmpl[i].type);
		if (with_bools && is_bool_attribute(tmpl[i].type) && tmpl[i].pValue &&
		    tmpl[i].ulValueLen == sizeof(CK_BBOOL))
			text_add(t, "=%d", *(const CK_BBOOL *)tmpl[i].pValue ? 1 : 0);
	}
}

static const char *describe_mechanism(char *buf, size_t size, const CK_MECHANISM *mech)
{
	if (!log_enabled())
		return NULL;
	if (mech)
		snprintf(buf, size, "mechanism=0x%lx", mech->mechanism);
	else
		snprintf(buf, size, "mechanism=(null)");
	return buf;
}

/* --- the real module ------------------------------------------------------- */

/* Called with lock held. */
static CK_RV load_real(void)
{
	const char *path = getenv("KT_SHIM_MODULE");
	CK_C_GetFunctionList get_list;
	CK_FUNCTION_LIST_PTR list = NULL;
	void *dl;

	if (!path || !*path)
		path = DEFAULT_MODULE;
	dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!dl) {
		fprintf(stderr, "ktshim: cannot load %s: %s\n", path, dlerror());
		return CKR_GENERAL_ERROR;
	}
	get_list = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
	/* Pointed at itself, the shim would recurse until the stack ends. */
	if (!get_list || get_list == C_GetFunctionList || get_list(&list) != CKR_OK || !list) {
		fprintf(stderr, "ktshim: %s is not a usable PKCS#11 module\n", path);
		dlclose(dl);
		return CKR_GENERAL_ERROR;
	}
	real_dl = dl;
	real = list;
	return CKR_OK;
}

/* Called with lock held, when the real module is initialised.  The slot
 * ids stay what they were: only the sessions go. */
static void reinsert(void)
{
	CK_SLOT_ID *slots;
	CK_ULONG count = 0, i;

	if (real->C_GetSlotList(CK_FALSE, NULL, &count) != CKR_OK || count == 0)
		return;
	slots = calloc(count, sizeof(*slots));
	if (!slots)
		return;
	if (real->C_GetSlotList(CK_FALSE, slots, &count) == CKR_OK) {
		for (i = 0; i < count; i++)
			real->C_CloseAllSessions(slots[i]);
	}
	free(slots);
}

static CK_RV end_call(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE h, enum op op, bool single, CK_BYTE_PTR out,
		      CK_ULONG_PTR out_len)
{
	/* Zero bytes of a length every mechanism in use takes (a SHA-256 hash,
	 * an AES block); where the input is wrong the call fails, which ends
	 * the operation just as well. */
	CK_BYTE in[32] = { 0 };

	switch (op) {
	case OP_ENCRYPT:
		return single ? f->C_Encrypt(h, in, 16, out, out_len) : f->C_EncryptFinal(h, out, out_len);
	case OP_DECRYPT:
		return single ? f->C_Decrypt(h, in, 16, out, out_len) : f->C_DecryptFinal(h, out, out_len);
	case OP_DIGEST:
		return single ? f->C_Digest(h, in, sizeof(in), out, out_len) : f->C_DigestFinal(h, out, out_len);
	case OP_SIGN:
		return single ? f->C_Sign(h, in, sizeof(in), out, out_len) : f->C_SignFinal(h, out, out_len);
	case OP_VERIFY:
		return single ? f->C_Verify(h, in, sizeof(in), in, 1) : f->C_VerifyFinal(h, in, 1);
	case OP_NONE:
		break;
	}
	return CKR_OK;
}

/* PKCS#11 ends an operation on any error but CKR_BUFFER_TOO_SMALL.  The
 * single-part call ends one that is still single-part; a module may refuse
 * it to one already in multi-part mode, which the final call then ends.
 * Whichever comes second finds nothing to end. */
static void end_operation(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE h, enum op op)
{
	CK_BYTE out[1024];
	int pass;

	for (pass = 0; pass < 2; pass++) {
		CK_ULONG len = sizeof(out);
		CK_RV rv = end_call(f, h, op, pass == 0, out, &len);

		if (rv == CKR_BUFFER_TOO_SMALL && len > 0) {
			CK_BYTE_PTR big = malloc(len);

			if (big) {
				end_call(f, h, op, pass == 0, big, &len);
				free(big);
			}
		}
	}
}

/* The start of every call: log, faults, and the module to forward to.
 * CKR_OK means go on with c->f; anything else is the call's answer. */
static CK_RV enter(struct call *c)
{
	struct control ctl;
	bool live;
	CK_RV rv = CKR_OK;

	log_call(c->fn, c->detail);

	read_control(c->fn, &ctl);
	while (ctl.hang && c->kind != KIND_LIST && c->kind != KIND_FINAL) {
		sleep_ms(HANG_POLL_MS);
		read_control(c->fn, &ctl);
	}
	sleep_ms(ctl.delay_ms);

	/* Read again under the lock so that calls see "removed" come and go in
	 * one order, and exactly one of them does the re-insertion. */
	pthread_mutex_lock(&lock);
	read_control(c->fn, &ctl);
	if (!real && (c->kind == KIND_INIT || c->kind == KIND_LIST))
		rv = load_real();
	c->f = real;
	live = initialized;
	if (live) {
		if (ctl.removed) {
			seen_removed = true;
		} else if (seen_removed) {
			seen_removed = false;
			reinsert();
		}
	}
	pthread_mutex_unlock(&lock);

	if (c->kind == KIND_LIST)
		return ctl.fail ? ctl.fail_rv : CKR_OK;
	if (rv != CKR_OK || !c->f)
		return c->kind == KIND_INIT ? CKR_GENERAL_ERROR : CKR_CRYPTOKI_NOT_INITIALIZED;

	if (ctl.fail) {
		if (live && c->op != OP_NONE && ctl.fail_rv != CKR_BUFFER_TOO_SMALL)
			end_operation(c->f, c->session, c->op);
		return ctl.fail_rv;
	}

	c->removed = live && ctl.removed;
	c->pinpad = ctl.pinpad;
	if (c->removed && c->kind == KIND_TOKEN) {
		CK_SLOT_INFO info;

		/* A wrong slot id stays the caller's error. */
		rv = c->f->C_GetSlotInfo(c->slot, &info);
		return rv != CKR_OK ? rv : CKR_TOKEN_NOT_PRESENT;
	}
	if (c->removed && c->kind == KIND_SESSION)
		return CKR_DEVICE_REMOVED;
	return CKR_OK;
}

/* --- module and slot calls ------------------------------------------------ */

SHIM_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
	struct call c = { .fn = "C_GetFunctionList", .kind = KIND_LIST };
	CK_RV rv = enter(&c);

	if (rv != CKR_OK)
		return rv;
	if (!list)
		return CKR_ARGUMENTS_BAD;
	*list = &function_list;
	return CKR_OK;
}

static CK_RV shim_C_Initialize(CK_VOID_PTR args)
{
	struct call c = { .fn = "C_Initialize", .kind = KIND_INIT };
	CK_RV rv = enter(&c);

	if (rv != CKR_OK)
		return rv;
	rv = c.f->C_Initialize(args);
	if (rv == CKR_OK) {
		pthread_mutex_lock(&lock);
		initialized = true;
		seen_removed = false;
		pthread_mutex_unlock(&lock);
	}
	return rv;
}

/* Unloads the real module, so a following C_Initialize starts from scratch
 * (and honours a changed KT_SHIM_MODULE). */
static CK_RV shim_C_Finalize(CK_VOID_PTR reserved)
{
	struct call c = { .fn = "C_Finalize", .kind = KIND_FINAL };
	CK_RV rv = enter(&c);

	if (rv != CKR_OK)
		return rv;
	rv = c.f->C_Finalize(reserved);
	if (rv == CKR_OK) {
		pthread_mutex_lock(&lock);
		initialized = false;
		seen_removed = false;
		if (real_dl)
			dlclose(real_dl);
		real_dl = NULL;
		real = NULL;
		pthread_mutex_unlock(&lock);
	}
	return rv;
}

static CK_RV shim_C_GetInfo(CK_INFO_PTR info)
{
	struct call c = { .fn = "C_GetInfo", .kind = KIND_MODULE };
	CK_RV rv = enter(&c);

	return rv != CKR_OK ? rv : c.f->C_GetInfo(info);
}

static CK_RV shim_C_GetSlotList(CK_BBOOL token_present, CK_SLOT_ID_PTR slots, CK_ULONG_PTR count)
{
	struct call c = { .fn = "C_GetSlotList", .kind = KIND_MODULE };
	CK_RV rv = enter(&c);

	if (rv != CKR_OK)
		return rv;
	if (!c.removed || !token_present)
		return c.f->C_GetSlotList(token_present, slots, count);
	/* Asked only for the argument checks; no slot has a token. */
	rv = c.f->C_GetSlotList(CK_FALSE, NULL, count);
	if (rv == CKR_OK)
		*count = 0;
	return rv;
}

static CK_RV shim_C_GetSlotInfo(CK_SLOT_ID slot, CK_SLOT_INFO_PTR info)
{
	struct call c = { .fn = "C_GetSlotInfo", .kind = KIND_MODULE };
	CK_RV rv = enter(&c);

	if (rv != CKR_OK)
		return rv;
	rv = c.f->C_GetSlotInfo(slot, info);
	if (rv == CKR_OK) {
		/* A reader or token that can go away says so. */
		info->flags |= CKF_REMOVABLE_DEVICE;
		if (c.removed)
			info->flags &= ~(CK_FLAGS)CKF_TOKEN_PRESENT;
	}
	return rv;
}

static CK_RV shim_C_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR slot, CK_VOID_PTR reserved)
{
	struct call c = { .fn = "C_WaitForSlotEvent", .kind = KIND_MODULE };
	CK_RV rv = enter(&c);

	if (rv != CKR_OK)
		return rv;
	if (c.removed && (flags & CKF_DONT_BLOCK))
		return CKR_NO_EVENT;
	return c.f->C_WaitForSlotEvent(flags, slot, reserved);
}

static CK_RV shim_C_CloseAllSessions(CK_SLOT_ID slot)
{
	struct call c = { .fn = "C_CloseAllSessions", .kind = KIND_MODULE };
	CK_RV rv = enter(&c);

	return rv != CKR_OK ? rv : c.f->C_CloseAllSessions(slot);
}

/* The forwarding functions with nothing special about them.  The
 * parameter naming the slot must be `slot`, the session one `h`. */
#define TOKEN_CALL(name, params, args)                                                     \
	static CK_RV shim_##name params                                                    \
	{                                                                                  \
		struct call c = { .fn = #name, .kind = KIND_TOKEN, .slot = slot };         \
		CK_RV rv = enter(&c);                                                      \
		return rv != CKR_OK ? rv : c.f->name args;                                 \
	}

#define SESSION_CALL(name, op_, params, args)                                              \
	static CK_RV shim_##name params                                                    \
	{                                                                                  \
		struct call c = { .fn = #name, .kind = KIND_SESSION, .op = op_, .session = h }; \
		CK_RV rv = enter(&c);                                                      \
		return rv != CKR_OK ? rv : c.f->name args;                                 \
	}

/* The C_*Init calls whose log line names the mechanism. */
#define MECH_INIT_CALL(name)                                                               \
	static CK_RV shim_##name(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key) \
	{                                                                                  \
		char detail[64];                                                           \
		struct call c = { .fn = #name, .kind = KIND_SESSION, .session = h };       \
		CK_RV rv;                                                                  \
		c.detail = describe_mechanism(detail, sizeof(detail), mech);               \
		rv = enter(&c);                                                            \
		return rv != CKR_OK ? rv : c.f->name(h, mech, key);                        \
	}

static CK_RV shim_C_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info)
{
	struct call c = { .fn = "C_GetTokenInfo", .kind = KIND_TOKEN, .slot = slot };
	CK_RV rv = enter(&c);

	if (rv != CKR_OK)
		return rv;
	rv = c.f->C_GetTokenInfo(slot, info);
	/* A reader with a PIN pad says so in its token's flags. */
	if (rv == CKR_OK && c.pinpad)
		info->flags |= CKF_PROTECTED_AUTHENTICATION_PATH;
	return rv;
}
TOKEN_CALL(C_GetMechanismList, (CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count),
	   (slot, list, count))
TOKEN_CALL(C_GetMechanismInfo, (CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info),
	   (slot, type, info))
TOKEN_CALL(C_InitToken, (CK_SLOT_ID slot, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len, CK_UTF8CHAR_PTR label),
	   (slot, pin, pin_len, label))
TOKEN_CALL(C_OpenSession,
	   (CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify, CK_SESSION_HANDLE_PTR session),
	   (slot, flags, app, notify, session))

/* --- session calls -------------------------------------------------------- */

SESSION_CALL(C_InitPIN, OP_NONE, (CK_SESSION_HANDLE h, CK_UTF8CHAR_PTR pin, CK_ULONG len), (h, pin, len))
SESSION_CALL(C_SetPIN, OP_NONE,
	     (CK_SESSION_HANDLE h, CK_UTF8CHAR_PTR old_pin, CK_ULONG old_len, CK_UTF8CHAR_PTR new_pin,
	      CK_ULONG new_len),
	     (h, old_pin, old_len, new_pin, new_len))
SESSION_CALL(C_CloseSession, OP_NONE, (CK_SESSION_HANDLE h), (h))
SESSION_CALL(C_GetSessionInfo, OP_NONE, (CK_SESSION_HANDLE h, CK_SESSION_INFO_PTR info), (h, info))
SESSION_CALL(C_GetOperationState, OP_NONE, (CK_SESSION_HANDLE h, CK_BYTE_PTR state, CK_ULONG_PTR len),
	     (h, state, len))
SESSION_CALL(C_SetOperationState, OP_NONE,
	     (CK_SESSION_HANDLE h, CK_BYTE_PTR state, CK_ULONG len, CK_OBJECT_HANDLE enc_key,
	      CK_OBJECT_HANDLE auth_key),
	     (h, state, len, enc_key, auth_key))
static CK_RV shim_C_Login(CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
	struct call c = { .fn = "C_Login", .kind = KIND_SESSION, .session = h };
	CK_RV rv = enter(&c);
	const char *typed;

	if (rv != CKR_OK)
		return rv;
	if (!c.pinpad || pin)
		return c.f->C_Login(h, user, pin, len);
	/* No PIN from the application: the holder types it on the pad. */
	typed = getenv("KT_SHIM_PINPAD_PIN");
	if (!typed)
		return CKR_FUNCTION_CANCELED;
	return c.f->C_Login(h, user, (CK_UTF8CHAR_PTR)typed, (CK_ULONG)strlen(typed));
}
SESSION_CALL(C_Logout, OP_NONE, (CK_SESSION_HANDLE h), (h))
SESSION_CALL(C_DestroyObject, OP_NONE, (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj), (h, obj))
SESSION_CALL(C_GetObjectSize, OP_NONE, (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj, CK_ULONG_PTR size),
	     (h, obj, size))
SESSION_CALL(C_FindObjects, OP_NONE,
	     (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE_PTR objs, CK_ULONG max, CK_ULONG_PTR count),
	     (h, objs, max, count))
SESSION_CALL(C_FindObjectsFinal, OP_NONE, (CK_SESSION_HANDLE h), (h))

MECH_INIT_CALL(C_EncryptInit)
SESSION_CALL(C_Encrypt, OP_ENCRYPT,
	     (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len),
	     (h, in, in_len, out, out_len))
SESSION_CALL(C_EncryptUpdate, OP_ENCRYPT,
	     (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len),
	     (h, in, in_len, out, out_len))
SESSION_CALL(C_EncryptFinal, OP_ENCRYPT, (CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG_PTR out_len),
	     (h, out, out_len))
MECH_INIT_CALL(C_DecryptInit)
SESSION_CALL(C_Decrypt, OP_DECRYPT,
	     (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len),
	     (h, in, in_len, out, out_len))
SESSION_CALL(C_DecryptUpdate, OP_DECRYPT,
	     (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len),
	     (h, in, in_len, out, out_len))
SESSION_CALL(C_DecryptFinal, OP_DECRYPT, (CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG_PTR out_len),
	     (h, out, out_len))

static CK_RV shim_C_DigestInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech)
{
	char detail[64];
	struct call c = { .fn = "C_DigestInit", .kind = KIND_SESSION, .session = h };
	CK_RV rv;

	c.detail = describe_mechanism(detail, sizeof(detail), mech);
	rv = enter(&c);
	return rv != CKR_OK ? rv : c.f->C_DigestInit(h, mech);
}

SESSION_CALL(C_Digest, OP_DIGEST,
	     (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len),
	     (h, in, in_len, out, out_len))
SESSION_CALL(C_DigestUpdate, OP_DIGEST, (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len),
	     (h, in, in_len))
SESSION_CALL(C_DigestKey, OP_DIGEST, (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE key), (h, key))
SESSION_CALL(C_DigestFinal, OP_DIGEST, (CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG_PTR out_len),
	     (h, out, out_len))

MECH_INIT_CALL(C_SignInit)
SESSION_CALL(C_Sign, OP_SIGN,
	     (CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len),
	     (h, data, len, sig, sig_len))
SESSION_CALL(C_SignUpdate, OP_SIGN, (CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG len), (h, data, len))
SESSION_CALL(C_SignFinal, OP_SIGN, (CK_SESSION_HANDLE h, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len),
	     (h, sig, sig_len))
MECH_INIT_CALL(C_SignRecoverInit)
SESSION_CALL(C_SignRecover, OP_NONE,
	     (CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len),
	     (h, data, len, sig, sig_len))

MECH_INIT_CALL(C_VerifyInit)
SESSION_CALL(C_Verify, OP_VERIFY,
	     (CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig, CK_ULONG sig_len),
	     (h, data, len, sig, sig_len))
SESSION_CALL(C_VerifyUpdate, OP_VERIFY, (CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG len),
	     (h, data, len))
SESSION_CALL(C_VerifyFinal, OP_VERIFY, (CK_SESSION_HANDLE h, CK_BYTE_PTR sig, CK_ULONG sig_len),
	     (h, sig, sig_len))
MECH_INIT_CALL(C_VerifyRecoverInit)
SESSION_CALL(C_VerifyRecover, OP_NONE,
	     (CK_SESSION_HANDLE h, CK_BYTE_PTR sig, CK_ULONG sig_len, CK_BYTE_PTR data, CK_ULONG_PTR len),
	     (h, sig, sig_len, data, len))

SESSION_CALL(C_DigestEncryptUpdate, OP_NONE,
	     (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len),
	     (h, in, in_len, out, out_len))
SESSION_CALL(C_DecryptDigestUpdate, OP_NONE,
	     (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len),
	     (h, in, in_len, out, out_len))
SESSION_CALL(C_SignEncryptUpdate, OP_NONE,
	     (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len),
	     (h, in, in_len, out, out_len))
SESSION_CALL(C_DecryptVerifyUpdate, OP_NONE,
	     (CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len),
	     (h, in, in_len, out, out_len))

SESSION_CALL(C_WrapKey, OP_NONE,
	     (CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE wrapping_key, CK_OBJECT_HANDLE key,
	      CK_BYTE_PTR out, CK_ULONG_PTR out_len),
	     (h, mech, wrapping_key, key, out, out_len))
SESSION_CALL(C_SeedRandom, OP_NONE, (CK_SESSION_HANDLE h, CK_BYTE_PTR seed, CK_ULONG len), (h, seed, len))
SESSION_CALL(C_GenerateRandom, OP_NONE, (CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG len), (h, out, len))
SESSION_CALL(C_GetFunctionStatus, OP_NONE, (CK_SESSION_HANDLE h), (h))
SESSION_CALL(C_CancelFunction, OP_NONE, (CK_SESSION_HANDLE h), (h))

/* --- session calls with templates ------------------------------------------ */

/* The log line of a call with one template; NULL when nobody logs. */
static const char *describe_one(char *buf, size_t size, const CK_ATTRIBUTE *tmpl, CK_ULONG count,
				bool with_bools)
{
	struct text t = { .buf = buf, .size = size };

	if (!log_enabled())
		return NULL;
	buf[0] = '\0';
	describe_template(&t, "template", tmpl, count, with_bools);
	return buf;
}

/* The same for a call about one object: the object first. */
static const char *describe_object(char *buf, size_t size, CK_OBJECT_HANDLE obj, const CK_ATTRIBUTE *tmpl,
				   CK_ULONG count, bool with_bools)
{
	struct text t = { .buf = buf, .size = size };

	if (!log_enabled())
		return NULL;
	buf[0] = '\0';
	text_add(&t, "object=0x%lx", obj);
	describe_template(&t, "template", tmpl, count, with_bools);
	return buf;
}

static CK_RV shim_C_CreateObject(CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR tmpl, CK_ULONG count,
				 CK_OBJECT_HANDLE_PTR obj)
{
	char detail[LOG_LINE_MAX];
	struct call c = { .fn = "C_CreateObject", .kind = KIND_SESSION, .session = h };
	CK_RV rv;

	c.detail = describe_one(detail, sizeof(detail), tmpl, count, true);
	rv = enter(&c);
	return rv != CKR_OK ? rv : c.f->C_CreateObject(h, tmpl, count, obj);
}

static CK_RV shim_C_CopyObject(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR tmpl,
			       CK_ULONG count, CK_OBJECT_HANDLE_PTR new_obj)
{
	char detail[LOG_LINE_MAX];
	struct call c = { .fn = "C_CopyObject", .kind = KIND_SESSION, .session = h };
	CK_RV rv;

	c.detail = describe_one(detail, sizeof(detail), tmpl, count, true);
	rv = enter(&c);
	return rv != CKR_OK ? rv : c.f->C_CopyObject(h, obj, tmpl, count, new_obj);
}

static CK_RV shim_C_GetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR tmpl,
				      CK_ULONG count)
{
	char detail[LOG_LINE_MAX];
	struct call c = { .fn = "C_GetAttributeValue", .kind = KIND_SESSION, .session = h };
	CK_RV rv;

	/* Whatever the caller's buffers hold is not the token's: no values. */
	c.detail = describe_object(detail, sizeof(detail), obj, tmpl, count, false);
	rv = enter(&c);
	return rv != CKR_OK ? rv : c.f->C_GetAttributeValue(h, obj, tmpl, count);
}

static CK_RV shim_C_SetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR tmpl,
				      CK_ULONG count)
{
	char detail[LOG_LINE_MAX];
	struct call c = { .fn = "C_SetAttributeValue", .kind = KIND_SESSION, .session = h };
	CK_RV rv;

	c.detail = describe_object(detail, sizeof(detail), obj, tmpl, count, true);
	rv = enter(&c);
	return rv != CKR_OK ? rv : c.f->C_SetAttributeValue(h, obj, tmpl, count);
}

static CK_RV shim_C_FindObjectsInit(CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR tmpl, CK_ULONG count)
{
	char detail[LOG_LINE_MAX];
	struct call c = { .fn = "C_FindObjectsInit", .kind = KIND_SESSION, .session = h };
	CK_RV rv;

	c.detail = describe_one(detail, sizeof(detail), tmpl, count, true);
	rv = enter(&c);
	return rv != CKR_OK ? rv : c.f->C_FindObjectsInit(h, tmpl, count);
}

static CK_RV shim_C_GenerateKey(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_ATTRIBUTE_PTR tmpl,
				CK_ULONG count, CK_OBJECT_HANDLE_PTR key)
{
	char detail[LOG_LINE_MAX];
	struct call c = { .fn = "C_GenerateKey", .kind = KIND_SESSION, .session = h };
	CK_RV rv;

	c.detail = describe_one(detail, sizeof(detail), tmpl, count, true);
	rv = enter(&c);
	return rv != CKR_OK ? rv : c.f->C_GenerateKey(h, mech, tmpl, count, key);
}

static CK_RV shim_C_GenerateKeyPair(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_ATTRIBUTE_PTR pub_tmpl,
				    CK_ULONG pub_count, CK_ATTRIBUTE_PTR priv_tmpl, CK_ULONG priv_count,
				    CK_OBJECT_HANDLE_PTR pub, CK_OBJECT_HANDLE_PTR priv)
{
	char detail[LOG_LINE_MAX];
	struct text t = { .buf = detail, .size = sizeof(detail) };
	struct call c = { .fn = "C_GenerateKeyPair", .kind = KIND_SESSION, .session = h };
	CK_RV rv;

	if (log_enabled()) {
		detail[0] = '\0';
		describe_template(&t, "public", pub_tmpl, pub_count, true);
		describe_template(&t, "private", priv_tmpl, priv_count, true);
		c.detail = detail;
	}
	rv = enter(&c);
	return rv != CKR_OK ? rv
			    : c.f->C_GenerateKeyPair(h, mech, pub_tmpl, pub_count, priv_tmpl, priv_count, pub, priv);
}

static CK_RV shim_C_UnwrapKey(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE unwrapping_key,
			      CK_BYTE_PTR wrapped, CK_ULONG wrapped_len, CK_ATTRIBUTE_PTR tmpl, CK_ULONG count,
			      CK_OBJECT_HANDLE_PTR key)
{
	char detail[LOG_LINE_MAX];
	struct call c = { .fn = "C_UnwrapKey", .kind = KIND_SESSION, .session = h };
	CK_RV rv;

	c.detail = describe_one(detail, sizeof(detail), tmpl, count, true);
	rv = enter(&c);
	return rv != CKR_OK ? rv : c.f->C_UnwrapKey(h, mech, unwrapping_key, wrapped, wrapped_len, tmpl, count, key);
}

static CK_RV shim_C_DeriveKey(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE base_key,
			      CK_ATTRIBUTE_PTR tmpl, CK_ULONG count, CK_OBJECT_HANDLE_PTR key)
{
	char detail[LOG_LINE_MAX];
	struct call c = { .fn = "C_DeriveKey", .kind = KIND_SESSION, .session = h };
	CK_RV rv;

	c.detail = describe_one(detail, sizeof(detail), tmpl, count, true);
	rv = enter(&c);
	return rv != CKR_OK ? rv : c.f->C_DeriveKey(h, mech, base_key, tmpl, count, key);
}

static CK_FUNCTION_LIST function_list = {
	.version = { 2, 40 },
	.C_Initialize = shim_C_Initialize,
	.C_Finalize = shim_C_Finalize,
	.C_GetInfo = shim_C_GetInfo,
	.C_GetFunctionList = C_GetFunctionList,
	.C_GetSlotList = shim_C_GetSlotList,
	.C_GetSlotInfo = shim_C_GetSlotInfo,
	.C_GetTokenInfo = shim_C_GetTokenInfo,
	.C_GetMechanismList = shim_C_GetMechanismList,
	.C_GetMechanismInfo = shim_C_GetMechanismInfo,
	.C_InitToken = shim_C_InitToken,
	.C_InitPIN = shim_C_InitPIN,
	.C_SetPIN = shim_C_SetPIN,
	.C_OpenSession = shim_C_OpenSession,
	.C_CloseSession = shim_C_CloseSession,
	.C_CloseAllSessions = shim_C_CloseAllSessions,
	.C_GetSessionInfo = shim_C_GetSessionInfo,
	.C_GetOperationState = shim_C_GetOperationState,
	.C_SetOperationState = shim_C_SetOperationState,
	.C_Login = shim_C_Login,
	.C_Logout = shim_C_Logout,
	.C_CreateObject = shim_C_CreateObject,
	.C_CopyObject = shim_C_CopyObject,
	.C_DestroyObject = shim_C_DestroyObject,
	.C_GetObjectSize = shim_C_GetObjectSize,
	.C_GetAttributeValue = shim_C_GetAttributeValue,
	.C_SetAttributeValue = shim_C_SetAttributeValue,
	.C_FindObjectsInit = shim_C_FindObjectsInit,
	.C_FindObjects = shim_C_FindObjects,
	.C_FindObjectsFinal = shim_C_FindObjectsFinal,
	.C_EncryptInit = shim_C_EncryptInit,
	.C_Encrypt = shim_C_Encrypt,
	.C_EncryptUpdate = shim_C_EncryptUpdate,
	.C_EncryptFinal = shim_C_EncryptFinal,
	.C_DecryptInit = shim_C_DecryptInit,
	.C_Decrypt = shim_C_Decrypt,
	.C_DecryptUpdate = shim_C_DecryptUpdate,
	.C_DecryptFinal = shim_C_DecryptFinal,
	.C_DigestInit = shim_C_DigestInit,
	.C_Digest = shim_C_Digest,
	.C_DigestUpdate = shim_C_DigestUpdate,
	.C_DigestKey = shim_C_DigestKey,
	.C_DigestFinal = shim_C_DigestFinal,
	.C_SignInit = shim_C_SignInit,
	.C_Sign = shim_C_Sign,
	.C_SignUpdate = shim_C_SignUpdate,
	.C_SignFinal = shim_C_SignFinal,
	.C_SignRecoverInit = shim_C_SignRecoverInit,
	.C_SignRecover = shim_C_SignRecover,
	.C_VerifyInit = shim_C_VerifyInit,
	.C_Verify = shim_C_Verify,
	.C_VerifyUpdate = shim_C_VerifyUpdate,
	.C_VerifyFinal = shim_C_VerifyFinal,
	.C_VerifyRecoverInit = shim_C_VerifyRecoverInit,
	.C_VerifyRecover = shim_C_VerifyRecover,
	.C_DigestEncryptUpdate = shim_C_DigestEncryptUpdate,
	.C_DecryptDigestUpdate = shim_C_DecryptDigestUpdate,
	.C_SignEncryptUpdate = shim_C_SignEncryptUpdate,
	.C_DecryptVerifyUpdate = shim_C_DecryptVerifyUpdate,
	.C_GenerateKey = shim_C_GenerateKey,
	.C_GenerateKeyPair = shim_C_GenerateKeyPair,
	.C_WrapKey = shim_C_WrapKey,
	.C_UnwrapKey = shim_C_UnwrapKey,
	.C_DeriveKey = shim_C_DeriveKey,
	.C_SeedRandom = shim_C_SeedRandom,
	.C_GenerateRandom = shim_C_GenerateRandom,
	.C_GetFunctionStatus = shim_C_GetFunctionStatus,
	.C_CancelFunction = shim_C_CancelFunction,
	.C_WaitForSlotEvent = shim_C_WaitForSlotEvent,
};
