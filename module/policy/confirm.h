/*
 * Signature activation (law art. 12.2): before a qualified signature exists
 * the signer sees what is signed and says yes, and afterwards is told that
 * it was made.  The question goes to a backend outside this process:
 *   pinentry  the desktop's or terminal's standard dialog, over the Assuan
 *             protocol (SETTITLE, SETDESC, SETOK, SETCANCEL, CONFIRM,
 *             optionally GETPIN, MESSAGE for the notice);
 *   command   a program that reads the request on stdin; exit 0 = yes,
 *             1 = no, anything else (or a signal) = cancelled;
 *   deny      no backend: every request is refused.
 * The request travels through a pipe only: never argv, environment, a
 * temporary file or a log.  No GUI code lives in the library.
 */
#ifndef KOLTAMGA_CONFIRM_H
#define KOLTAMGA_CONFIRM_H

#include "common.h"

enum confirm_backend { CONFIRM_PINENTRY, CONFIRM_COMMAND, CONFIRM_DENY };

struct confirm_config {
	enum confirm_backend backend;
	const char *program;  /* pinentry or command path; NULL: "pinentry" from PATH */
	unsigned timeout;     /* seconds to wait for the person (default 60) */
};

/*
 * Collecting the signer's PIN in the same dialog, for applications that
 * never send a context-specific login (Java SunPKCS11, OpenSSL): pinentry
 * then asks with GETPIN (the request as its description, "Sign" on the OK
 * button) instead of CONFIRM.  Each PIN typed goes to check(), which
 * verifies it against the token (counting failures as C_Login does):
 * CKR_OK is the signer's yes; CKR_PIN_INCORRECT asks again (SETERROR)
 * while `tries` last; any other value ends the dialog.  The PIN lives in
 * wiped memory only and is never logged.  The command backend ignores
 * this: its program's yes is the signer's act (docs/confirmation.md).
 */
struct confirm_pin {
	CK_RV (*check)(void *ctx, const char *pin, size_t len);
	void *ctx;
	unsigned tries; /* PIN attempts in one dialog; 0 means 3 */
};

/* What is asked: a signature (the default), or the disclosure of the
 * holder's personal data to a program (issue: personal_data = consent). */
enum confirm_kind { CONFIRM_SIGNATURE = 0, CONFIRM_DISCLOSURE };

/* Everything the person is shown.  Strings are UTF-8, NUL-terminated; any
 * may be NULL when unknown. */
struct confirm_request {
	enum confirm_kind kind;
	const char *title;        /* document title from a sign context, or NULL;
				   * for a disclosure: the data asked for */
	const char *signer;       /* holder name from the certificate, or the key label */
	const char *certificate;  /* issuer and serial, validity */
	const char *restrictions; /* usage restrictions worth showing */
	const char *key_label;
	const char *mechanism;    /* e.g. "ECDSA with SHA-256" */
	const char *program;      /* calling program (from /proc/self/exe) */
	long pid;
	unsigned long long size;  /* bytes to be signed */
	const char *sha256_hex;   /* SHA-256 of the data as passed to C_Sign, hex */
	const char *code;         /* 4-digit verification code derived from the digest */
	bool hash_only;           /* the mechanism receives only a hash: say so plainly */
	const unsigned char *content; /* the document when it is text worth showing, or NULL */
	size_t content_len;
	const struct confirm_pin *pin; /* non-NULL: pinentry collects the PIN too */
	/* The PIN is not optional (a device checks it): the command backend
	 * is then run with "confirm-pin" and must print "PIN <pin>". */
	bool pin_required;
};

enum confirm_answer {
	CONFIRM_YES,
	CONFIRM_NO,          /* the person refused: CKR_FUNCTION_REJECTED */
	CONFIRM_CANCELED,    /* cancel, timeout, or no backend reachable: CKR_FUNCTION_CANCELED */
	CONFIRM_PIN_FAILED,  /* wrong PIN every try, or check() refused: CKR_USER_NOT_LOGGED_IN */
};

/* Ask, and wait (at most the timeout).  `why` gets a one-line reason for
 * the log when the answer is not YES (never request content). */
enum confirm_answer confirm_ask(const struct confirm_config *cfg, const struct confirm_request *req,
				char *why, size_t why_len);

/* Tell the person the signature was made ("signed", with the code).
 * Best effort: a failure is logged, never turns the signature into an error. */
void confirm_notify(const struct confirm_config *cfg, const struct confirm_request *req);

/* Render the request as the text the person reads (for pinentry SETDESC
 * and the command backend's stdin).  Caller frees with kt_free_secret. */
char *confirm_render(const struct confirm_request *req, size_t *len);

#endif
