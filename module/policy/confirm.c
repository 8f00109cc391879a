/*
 * Signature activation backends (confirm.h): the question to the signer
 * and the "signed" notice, asked of a program outside this process.
 *
 * Both backends run their program with posix_spawn (no shell, a fixed argv,
 * the environment unchanged) and talk to it over a socketpair: a socket
 * rather than a pipe so every write can say MSG_NOSIGNAL, because a dialog
 * that dies must never kill the application with SIGPIPE.  The child gets
 * the signal mask and dispositions reset and every descriptor but 0-2
 * closed.  Each call owns its child, its socket and its deadline, so any
 * number of sessions may ask at once; the child is always reaped by pid
 * (never waitpid(-1), never a SIGCHLD handler, which belong to the
 * application).
 *
 * pinentry (Assuan): greeting "OK", then OPTION ttyname/ttytype/lc-ctype
 * from the environment, SETTIMEOUT, SETTITLE, SETDESC (the rendered request),
 * SETOK "Sign", SETNOTOK "Do not sign", SETCANCEL "Cancel", CONFIRM, BYE.
 * The three buttons exist because pinentry reports the Cancel button, the
 * Escape key and a closed window all as GPG_ERR_CANCELED; only the NOTOK
 * button gives the distinct GPG_ERR_NOT_CONFIRMED, the one answer that is a
 * deliberate refusal.  So:
 *   OK                               -> CONFIRM_YES
 *   ERR <source 5, code 114>         -> CONFIRM_NO       (Do not sign)
 *   ERR <code 99 canceled, 62 timeout, anything else>, EOF, a garbled line,
 *   our own deadline, a program that cannot start -> CONFIRM_CANCELED
 * Assuan lines are at most 1000 bytes, so SETDESC carries as much of the
 * rendered request as fits (the header with code, digest and size comes
 * first) and ends with "[... N more bytes ...]" when the rest does not.
 * The notice is a second pinentry run with MESSAGE (one OK button).
 *
 * With req->pin the question is GETPIN instead: SETPROMPT "PIN:", SETOK
 * "Sign", SETCANCEL, then GETPIN, answered by D lines carrying the PIN
 * %XX-escaped (possibly over several lines) and OK, or by ERR as above.
 * Each PIN goes to check(); CKR_PIN_INCORRECT asks again in the same
 * window with SETERROR and a fresh SETTIMEOUT for what is left of the
 * deadline (one deadline covers the whole dialog, retries included).  An
 * empty PIN, or one longer than any PIN can be, is wrong without reaching
 * check(): like C_Login's length bound, it is not counted as a guess.
 *   check() == CKR_OK                 -> CONFIRM_YES
 *   CKR_PIN_INCORRECT on every try,
 *   any other check() value           -> CONFIRM_PIN_FAILED
 * The PIN is decoded straight into the dialog's own buffer, wiped as soon
 * as check() returns; the receive buffers it passed through are wiped as
 * each line is consumed.  It is never sent back, logged, or put in `why`.
 *
 * command: argv is { program, "confirm" } or { program, "notify" } and
 * nothing else.  stdin carries the rendered request, then EOF; for "notify"
 * the request is followed by the line "RESULT: signed".  The program's
 * stdout and stderr go to the same socket and are read and dropped, so
 * nothing it echoes can land in a file.  "confirm" exit status: 0 yes,
 * 1 no, anything else, a signal or the timeout: cancelled.  "notify"'s
 * status is ignored.  An application that sets SIGCHLD to SIG_IGN makes the
 * kernel reap the child itself; its exit status is then lost and the
 * answer is CONFIRM_CANCELED (never a yes by accident).
 *
 * Nothing from the request reaches kt_log or kt_debug: only pids, program
 * paths, protocol verbs and timings.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "policy/confirm.h"

extern char **environ;

#define DEFAULT_TIMEOUT 60     /* seconds, when the configuration says 0 */
#define NOTICE_TIMEOUT_MAX 15  /* the "signed" notice never holds C_Sign longer */
#define PINENTRY_GRACE_MS 2000 /* pinentry's own SETTIMEOUT should fire first */
#define REAP_GRACE_MS 1000     /* after EOF or SIGTERM, before the next step */
#define ASSUAN_LINE_MAX 1000   /* libassuan's limit, the final LF included */
#define CONTENT_MAX 4000       /* bytes of the document shown */
#define PIN_MAX 255            /* C_Login's bound: no PIN is longer */
#define PIN_TRIES 3            /* when confirm_pin.tries is 0 */

/* GnuPG error codes as pinentry sends them: source 5 (pinentry) << 24. */
#define GPG_ERR_CODE(e) ((e) & 0xffffu)
#define GPG_ERR_TIMEOUT 62
#define GPG_ERR_CANCELED 99
#define GPG_ERR_NOT_CONFIRMED 114
#define GPG_ERR_SYSTEM_ERROR (1u << 15) /* or'ed with libgpg-error's errno code */

/*
 * Every sentence the person reads, in one place, so that a translation is
 * a second table and nothing else.
 */
static const struct confirm_text {
	const char *question, *notice, *notice_detail;
	const char *title, *size, *bytes, *sha256, *code;
	const char *signer, *certificate, *restrictions, *key, *mechanism, *requested_by, *pid;
	const char *hash_only, *content, *more_bytes, *not_shown;
	const char *window_title, *notice_window_title, *ok, *notok, *cancel;
	const char *pin_prompt, *pin_wrong;
	const char *disclose_question, *disclose_window_title, *data, *holder, *allow, *notallow;
} text_en = {
	.question = "Sign this document?",
	.notice = "Signed.",
	.notice_detail = "The signature was created.",
	.title = "Title",
	.size = "Size",
	.bytes = "bytes",
	.sha256 = "SHA-256",
	.code = "Code",
	.signer = "Signer",
	.certificate = "Certificate",
	.restrictions = "Restrictions",
	.key = "Key",
	.mechanism = "Mechanism",
	.requested_by = "Requested by",
	.pid = "pid",
	.hash_only = "The application gave only a hash of the document: "
		     "koltamga cannot show you its content.",
	.content = "Document:",
	.more_bytes = "more bytes",
	.not_shown = "more bytes that this dialog cannot show",
	.window_title = "koltamga: confirm the signature",
	.notice_window_title = "koltamga: signed",
	.ok = "_Sign",
	.notok = "_Do not sign",
	.cancel = "_Cancel",
	.pin_prompt = "PIN:",
	/* Followed by ": <number>", which spares the table a plural form. */
	.pin_wrong = "Wrong PIN. Tries left in this dialog",
	.disclose_question = "Allow this program to read your personal data?",
	.disclose_window_title = "koltamga: personal data",
	.data = "Data",
	.holder = "Certificate of",
	.allow = "_Allow",
	.notallow = "_Do not allow",
};
static const struct confirm_text *const text = &text_en;

/* --- a growable buffer for the rendered request ------------------------- */

/* It holds the document: growing wipes the old copy, and a failed
 * allocation poisons it so the caller checks once at the end. */
struct sbuf {
	char *p;
	size_t len, cap;
	bool failed;
};

static void sbuf_reserve(struct sbuf *b, size_t more)
{
	if (b->failed)
		return;
	if (more < b->cap - b->len)
		return;
	size_t cap = b->cap ? b->cap : 1024;
	while (cap - b->len <= more) {
		if (cap > SIZE_MAX / 2) {
			b->failed = true;
			return;
		}
		cap *= 2;
	}
	char *p = malloc(cap);
	if (!p) {
		b->failed = true;
		return;
	}
	if (b->p)
		memcpy(p, b->p, b->len);
	kt_free_secret(b->p, b->cap);
	b->p = p;
	b->cap = cap;
}

static void sbuf_add(struct sbuf *b, const void *data, size_t len)
{
	sbuf_reserve(b, len + 1);
	if (b->failed)
		return;
	memcpy(b->p + b->len, data, len);
	b->len += len;
	b->p[b->len] = '\0';
}

static void sbuf_str(struct sbuf *b, const char *s)
{
	sbuf_add(b, s, strlen(s));
}

static void __attribute__((format(printf, 2, 3))) sbuf_printf(struct sbuf *b, const char *fmt, ...)
{
	char tmp[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(tmp)) {
		b->failed = true;
		return;
	}
	sbuf_add(b, tmp, (size_t)n);
}

static void sbuf_free(struct sbuf *b)
{
	kt_free_secret(b->p, b->cap);
	b->p = NULL;
	b->len = b->cap = 0;
}

/* --- making untrusted text safe to show ---------------------------------- */

/* Decode one UTF-8 sequence; returns its length, or 0 when invalid
 * (overlong, surrogate, beyond U+10FFFF, truncated). */
static size_t utf8_decode(const unsigned char *s, size_t len, uint32_t *cp)
{
	static const uint32_t min[] = { 0, 0, 0x80, 0x800, 0x10000 };
	size_t n;
	uint32_t c = s[0];

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if ((c & 0xe0) == 0xc0) {
		n = 2;
		c &= 0x1f;
	} else if ((c & 0xf0) == 0xe0) {
		n = 3;
		c &= 0x0f;
	} else if ((c & 0xf8) == 0xf0) {
		n = 4;
		c &= 0x07;
	} else {
		return 0;
	}
	if (n > len)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		c = (c << 6) | (s[i] & 0x3f);
	}
	if (c < min[n] || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return 0;
	*cp = c;
	return n;
}

/* Characters that would let the text rearrange or hide itself on the
 * person's screen: C0/C1 controls (a terminal obeys ESC and CSI), DEL,
 * and the bidirectional overrides and line separators. */
static bool cp_is_hostile(uint32_t c)
{
	return c < 0x20 || c == 0x7f || (c >= 0x80 && c <= 0x9f) || c == 0x2028 || c == 0x2029 ||
	       (c >= 0x202a && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069);
}

/*
 * Append untrusted text, stopping before `max` input bytes (at a character
 * boundary).  Newline and tab survive only in `multiline` text (the
 * document); elsewhere they become a space, so a certificate field cannot
 * draw a line of its own such as a fake "Code:".  CR before LF disappears
 * (DOS line ends); every other hostile or invalid character becomes '?',
 * visible rather than silently dropped.  Returns the input bytes consumed.
 */
static size_t sbuf_clean(struct sbuf *b, const unsigned char *s, size_t len, size_t max, bool multiline)
{
	size_t i = 0;
	while (i < len) {
		uint32_t c;
		size_t n = utf8_decode(s + i, len - i, &c);
		if (i + (n ? n : 1) > max)
			break;
		if (n == 0) {
			sbuf_add(b, "?", 1);
			i++;
			continue;
		}
		if (c == '\n' || c == '\t')
			sbuf_add(b, multiline ? (const char *)s + i : " ", 1);
		else if (c == '\r' && i + 1 < len && s[i + 1] == '\n')
			; /* the LF that follows makes the line end */
		else if (cp_is_hostile(c))
			sbuf_add(b, "?", 1);
		else
			sbuf_add(b, s + i, n);
		i += n;
	}
	return i;
}

static void render_field(struct sbuf *b, const char *label, const char *value)
{
	if (!value || !*value)
		return;
	sbuf_str(b, label);
	sbuf_str(b, ": ");
	sbuf_clean(b, (const unsigned char *)value, strlen(value), SIZE_MAX, false);
	sbuf_str(b, "\n");
}

/* The facts that identify this signature, in the order a person checks
 * them: what, how big, which digest and code, then who and with what. */
static void render_facts(struct sbuf *b, const struct confirm_request *req)
{
	render_field(b, text->title, req->title);
	sbuf_printf(b, "%s: %llu %s\n", text->size, req->size, text->bytes);
	render_field(b, text->sha256, req->sha256_hex);
	render_field(b, text->code, req->code);
	sbuf_str(b, "\n");
	render_field(b, text->signer, req->signer);
	render_field(b, text->certificate, req->certificate);
	render_field(b, text->restrictions, req->restrictions);
	render_field(b, text->key, req->key_label);
	render_field(b, text->mechanism, req->mechanism);
	if (req->program || req->pid > 0) {
		sbuf_str(b, text->requested_by);
		sbuf_str(b, ": ");
		if (req->program)
			sbuf_clean(b, (const unsigned char *)req->program, strlen(req->program), SIZE_MAX,
				   false);
		if (req->pid > 0)
			sbuf_printf(b, "%s(%s %ld)", req->program ? " " : "", text->pid, req->pid);
		sbuf_str(b, "\n");
	}
}

static char *sbuf_take(struct sbuf *b, size_t *len)
{
	char *out = NULL;
	if (b->failed || !b->p) {
		sbuf_free(b);
		goto out;
	}
	out = b->p;
	if (len)
		*len = b->len;
	b->p = NULL;
out:
	return out;
}

/* Only the first len bytes (and the NUL) were ever written: the caller's
 * kt_free_secret(p, len) wipes all of the request. */
static char *render_finish(struct sbuf *b, size_t *len)
{
	return sbuf_take(b, len);
}

/* A disclosure question: who asks, for what, from whose certificate. */
static char *render_disclosure(const struct confirm_request *req, size_t *len)
{
	struct sbuf b = {0};
	sbuf_str(&b, text->disclose_question);
	sbuf_str(&b, "\n\n");
	render_field(&b, text->data, req->title);
	render_field(&b, text->holder, req->signer);
	render_field(&b, text->certificate, req->certificate);
	if (req->program || req->pid > 0) {
		sbuf_str(&b, text->requested_by);
		sbuf_str(&b, ": ");
		if (req->program)
			sbuf_clean(&b, (const unsigned char *)req->program, strlen(req->program), SIZE_MAX, false);
		if (req->pid > 0)
			sbuf_printf(&b, "%s(%s %ld)", req->program ? " " : "", text->pid, req->pid);
		sbuf_str(&b, "\n");
	}
	return render_finish(&b, len);
}

char *confirm_render(const struct confirm_request *req, size_t *len)
{
	struct sbuf b = {0};

	if (req->kind == CONFIRM_DISCLOSURE)
		return render_disclosure(req, len);
	sbuf_str(&b, text->question);
	sbuf_str(&b, "\n\n");
	render_facts(&b, req);
	if (req->hash_only) {
		sbuf_str(&b, "\n");
		sbuf_str(&b, text->hash_only);
		sbuf_str(&b, "\n");
	}
	if (req->content && req->content_len) {
		sbuf_str(&b, "\n");
		sbuf_str(&b, text->content);
		sbuf_str(&b, "\n");
		size_t used = sbuf_clean(&b, req->content, req->content_len, CONTENT_MAX, true);
		if (b.len && b.p[b.len - 1] != '\n')
			sbuf_str(&b, "\n");
		if (used < req->content_len)
			sbuf_printf(&b, "[... %zu %s]\n", req->content_len - used, text->more_bytes);
	}
	return render_finish(&b, len);
}

static char *render_notice(const struct confirm_request *req, size_t *len)
{
	struct sbuf b = {0};

	sbuf_str(&b, text->notice);
	sbuf_str(&b, "\n");
	sbuf_str(&b, text->notice_detail);
	sbuf_str(&b, "\n\n");
	render_facts(&b, req);
	return render_finish(&b, len);
}

/* --- time ----------------------------------------------------------------- */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds until `deadline`, for poll(): 0 when it has passed. */
static int ms_left(int64_t deadline)
{
	int64_t left = deadline - now_ms();
	if (left <= 0)
		return 0;
	return left > INT32_MAX ? INT32_MAX : (int)left;
}

/* --- the child process ----------------------------------------------------- */

/* The longest PIN a command may hand back ("PIN <pin>" on its output). */
#define COMMAND_PIN_MAX 256

struct child {
	pid_t pid;
	int fd; /* our end of the socketpair: its stdin, and stdout for a dialog */
	const char *name;
	/* A command asked for a PIN: its output is read for the first line
	 * "PIN <pin>" (the rest is dropped, as always); a secret buffer. */
	struct command_pin *pin;
};

struct command_pin {
	char line[COMMAND_PIN_MAX + 8]; /* the line being read */
	size_t line_len;
	bool line_too_long;
	char pin[COMMAND_PIN_MAX];
	size_t pin_len;
	bool found;
};

/* Take a command's output bytes: remember the first "PIN " line. */
static void command_pin_feed(struct command_pin *cp, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i] != '\n') {
			if (cp->line_len < sizeof(cp->line))
				cp->line[cp->line_len++] = p[i];
			else
				cp->line_too_long = true;
			continue;
		}
		size_t len = cp->line_len;
		if (len && cp->line[len - 1] == '\r')
			len--;
		if (!cp->found && !cp->line_too_long && len > 4 && memcmp(cp->line, "PIN ", 4) == 0 &&
		    len - 4 <= sizeof(cp->pin)) {
			memcpy(cp->pin, cp->line + 4, len - 4);
			cp->pin_len = len - 4;
			cp->found = true;
		}
		kt_wipe(cp->line, sizeof(cp->line));
		cp->line_len = 0;
		cp->line_too_long = false;
	}
}

/* A descriptor above 2, so the dup2 onto 0, 1 and 2 in the child can
 * never overwrite one source with another (the application may have
 * closed its stdin, and socketpair would then hand us fd 0). */
static int fd_above_stdio(int fd)
{
	if (fd < 0 || fd > 2)
		return fd;
	int nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	close(fd);
	return nfd;
}

/* /dev/null, only when it is the null device: a /dev/null replaced by a
 * regular file would collect whatever a child writes. */
static int open_null(void)
{
	struct stat st;
	int fd = fd_above_stdio(open("/dev/null", O_RDWR | O_CLOEXEC));
	if (fd < 0)
		return -1;
	if (fstat(fd, &st) != 0 || !S_ISCHR(st.st_mode) || st.st_rdev != makedev(1, 3)) {
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * Start `program` with argv { program, arg } (arg may be NULL).  A dialog
 * (pinentry) reads and writes the socket on stdin and stdout; its stderr
 * goes to /dev/null unless policy tracing is on, when the person debugging
 * wants to see why a pinentry fails.  A command reads its input from the
 * socket on stdin and writes stdout and stderr back into it, to be dropped.
 */
static bool child_spawn(struct child *c, const char *program, const char *arg, bool dialog, char *why,
			size_t why_len)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	bool fa_ok = false, attr_ok = false, ok = false;
	int sv[2] = { -1, -1 }, null_fd = -1, err;
	sigset_t none, all;

	c->pid = -1;
	c->fd = -1;
	c->name = program;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
		snprintf(why, why_len, "cannot start %s: socketpair: %s", program, strerror(errno));
		goto out;
	}
	sv[0] = fd_above_stdio(sv[0]);
	sv[1] = fd_above_stdio(sv[1]);
	if (sv[0] < 0 || sv[1] < 0) {
		snprintf(why, why_len, "cannot start %s: %s", program, strerror(errno));
		goto out;
	}
	if (dialog && !(kt_debug_mask & KT_DBG_POLICY))
		null_fd = open_null();

	if ((err = posix_spawn_file_actions_init(&fa)) != 0)
		goto spawn_err;
	fa_ok = true;
	if ((err = posix_spawn_file_actions_adddup2(&fa, sv[1], 0)) != 0 ||
	    (err = posix_spawn_file_actions_adddup2(&fa, sv[1], 1)) != 0)
		goto spawn_err;
	if (!dialog)
		err = posix_spawn_file_actions_adddup2(&fa, sv[1], 2);
	else if (null_fd >= 0)
		err = posix_spawn_file_actions_adddup2(&fa, null_fd, 2);
	if (err != 0)
		goto spawn_err;
	/* Descriptors the application opened without O_CLOEXEC (other
	 * sessions' files, sockets) are none of the dialog's business. */
	if ((err = posix_spawn_file_actions_addclosefrom_np(&fa, 3)) != 0)
		goto spawn_err;

	if ((err = posix_spawnattr_init(&attr)) != 0)
		goto spawn_err;
	attr_ok = true;
	sigemptyset(&none);
	sigfillset(&all);
	if ((err = posix_spawnattr_setsigmask(&attr, &none)) != 0 ||
	    (err = posix_spawnattr_setsigdefault(&attr, &all)) != 0 ||
	    (err = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)) != 0)
		goto spawn_err;

	char *argv[] = { (char *)program, (char *)arg, NULL };
	err = posix_spawnp(&c->pid, program, &fa, &attr, argv, environ);
	if (err != 0) {
		c->pid = -1;
		goto spawn_err;
	}
	c->fd = sv[0];
	sv[0] = -1;
	if (fcntl(c->fd, F_SETFL, O_NONBLOCK) != 0) {
		snprintf(why, why_len, "%s: %s", program, strerror(errno));
		goto out;
	}
	kt_debug(KT_DBG_POLICY, "confirm: started %s, pid %ld", program, (long)c->pid);
	ok = true;
	goto out;

spawn_err:
	snprintf(why, why_len, "cannot start %s: %s", program, strerror(err));
out:
	if (fa_ok)
		posix_spawn_file_actions_destroy(&fa);
	if (attr_ok)
		posix_spawnattr_destroy(&attr);
	if (sv[0] >= 0)
		close(sv[0]);
	if (sv[1] >= 0)
		close(sv[1]);
	if (null_fd >= 0)
		close(null_fd);
	return ok;
}

/*
 * Wait for the child to exit, until `deadline`.  A pidfd lets poll() wake
 * exactly when it exits; without one (old kernels, seccomp) a short sleep
 * loop does.  While waiting, whatever a command writes is read and
 * dropped, so it never blocks on a full socket.  Returns true when the
 * child is gone; *status is its wait status, or -1 when someone else
 * (SIGCHLD set to SIG_IGN, a waitpid(-1) elsewhere) reaped it first.
 */
static bool child_wait(struct child *c, int64_t deadline, int *status)
{
	bool gone = false;
	int pidfd = -1;

#ifdef SYS_pidfd_open
	pidfd = (int)syscall(SYS_pidfd_open, c->pid, 0);
#endif
	for (;;) {
		pid_t r = waitpid(c->pid, status, WNOHANG);
		if (r == c->pid || (r < 0 && errno == ECHILD)) {
			if (r < 0)
				*status = -1;
			c->pid = -1;
			gone = true;
			/* A PIN it printed just before it exited is still in
			 * the socket: read to the end, a last line without its
			 * newline included. */
			if (c->pin && c->fd >= 0) {
				char rest[512];
				ssize_t got;
				while ((got = recv(c->fd, rest, sizeof(rest), MSG_DONTWAIT)) > 0)
					command_pin_feed(c->pin, rest, (size_t)got);
				command_pin_feed(c->pin, "\n", 1);
				kt_wipe(rest, sizeof(rest));
			}
			break;
		}
		if (r < 0 && errno != EINTR)
			break;
		int left = ms_left(deadline);
		if (left == 0)
			break;
		struct pollfd pfd[2];
		nfds_t n = 0;
		if (pidfd >= 0)
			pfd[n++] = (struct pollfd){ .fd = pidfd, .events = POLLIN };
		if (c->fd >= 0)
			pfd[n++] = (struct pollfd){ .fd = c->fd, .events = POLLIN };
		if (pidfd < 0 && left > 20)
			left = 20;
		if (poll(pfd, n, left) > 0 && c->fd >= 0) {
			char drop[512];
			ssize_t got = recv(c->fd, drop, sizeof(drop), 0);
			if (got > 0 && c->pin)
				command_pin_feed(c->pin, drop, (size_t)got);
			kt_wipe(drop, sizeof(drop));
			if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
				close(c->fd);
				c->fd = -1;
			}
		}
	}
	if (pidfd >= 0)
		close(pidfd);
	return gone;
}

/*
 * End the child for good: close our end (a pinentry exits on EOF), give it
 * a moment, then SIGTERM, then SIGKILL, and reap it.  The pid cannot have
 * been reused: it is our own unreaped child until waitpid returns it.
 */
static void child_end(struct child *c, bool kill_now)
{
	int status;

	if (c->fd >= 0) {
		close(c->fd);
		c->fd = -1;
	}
	if (c->pid <= 0)
		return;
	if (!kill_now && child_wait(c, now_ms() + REAP_GRACE_MS, &status))
		return;
	kt_debug(KT_DBG_POLICY, "confirm: stopping %s, pid %ld", c->name, (long)c->pid);
	kill(c->pid, SIGTERM);
	if (child_wait(c, now_ms() + REAP_GRACE_MS, &status))
		return;
	kill(c->pid, SIGKILL);
	while (waitpid(c->pid, &status, 0) < 0 && errno == EINTR)
		;
	c->pid = -1;
}

/* Send everything before the deadline.  0, or -errno (-ETIMEDOUT). */
static int child_send(struct child *c, const char *data, size_t len, int64_t deadline)
{
	while (len) {
		ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
		if (n > 0) {
			data += n;
			len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno != EAGAIN)
			return -errno;
		struct pollfd pfd = { .fd = c->fd, .events = POLLOUT };
		int left = ms_left(deadline);
		if (left == 0 || poll(&pfd, 1, left) == 0)
			return -ETIMEDOUT;
	}
	return 0;
}

/* --- the pinentry dialog (Assuan) ----------------------------------------- */

/* The PIN as typed, unescaped; `overflow` once more than PIN_MAX bytes
 * came (the rest is dropped, the PIN is wrong anyway).  The NUL after the
 * last byte spares check() a surprise should it treat the PIN as a string. */
struct pin_buf {
	char p[PIN_MAX + 1];
	size_t len;
	bool overflow;
};

/* Freed with kt_free_secret: `in` and `line` carry the PIN on its way
 * through, and `pin` holds it while check() runs. */
struct dialog {
	struct child child;
	int64_t deadline;
	char in[ASSUAN_LINE_MAX + 1]; /* received, not yet split into lines */
	size_t in_len;
	char line[ASSUAN_LINE_MAX + 1];
	struct pin_buf pin;
};

/* REPLY_REFUSED is no pinentry answer: the GETPIN loop's verdict that
 * check() turned the PIN down for good (`why` says how). */
enum reply { REPLY_OK, REPLY_ERR, REPLY_EOF, REPLY_TIMEOUT, REPLY_BAD, REPLY_REFUSED };

static const char *reply_name(enum reply r)
{
	switch (r) {
	case REPLY_OK:
		return "OK";
	case REPLY_ERR:
		return "ERR";
	case REPLY_EOF:
		return "end of file";
	case REPLY_TIMEOUT:
		return "no answer in time";
	case REPLY_REFUSED:
		return "PIN refused";
	case REPLY_BAD:
		break;
	}
	return "a garbled line";
}

/* Read one line into d->line (without its LF).  The bytes the line
 * leaves behind at the end of d->in are wiped: a D line is a PIN. */
static enum reply dialog_read_line(struct dialog *d)
{
	for (;;) {
		char *nl = memchr(d->in, '\n', d->in_len);
		if (nl) {
			size_t n = (size_t)(nl - d->in);
			memcpy(d->line, d->in, n);
			d->line[n] = '\0';
			d->in_len -= n + 1;
			memmove(d->in, nl + 1, d->in_len);
			kt_wipe(d->in + d->in_len, n + 1);
			if (n && d->line[n - 1] == '\r')
				d->line[n - 1] = '\0';
			return REPLY_OK;
		}
		if (d->in_len >= ASSUAN_LINE_MAX)
			return REPLY_BAD;
		struct pollfd pfd = { .fd = d->child.fd, .events = POLLIN };
		int left = ms_left(d->deadline);
		if (left == 0)
			return REPLY_TIMEOUT;
		int pr = poll(&pfd, 1, left);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr == 0)
			return REPLY_TIMEOUT;
		ssize_t n = recv(d->child.fd, d->in + d->in_len, ASSUAN_LINE_MAX - d->in_len, 0);
		if (n == 0)
			return REPLY_EOF;
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return REPLY_EOF;
		}
		d->in_len += (size_t)n;
	}
}

/* Append a D line's payload to the PIN, undoing the %XX escapes.  False
 * for a '%' without two hex digits: not Assuan. */
static bool pin_append(struct pin_buf *b, const char *s)
{
	for (; *s; s++) {
		int c = (unsigned char)*s;
		if (c == '%') {
			int hi = kt_hex_digit(s[1]);
			int lo = hi < 0 ? -1 : kt_hex_digit(s[2]);
			if (lo < 0)
				return false;
			c = hi << 4 | lo;
			s += 2;
		}
		if (b->len < PIN_MAX)
			b->p[b->len++] = (char)c;
		else
			b->overflow = true;
	}
	b->p[b->len] = '\0';
	return true;
}

/*
 * The final answer to a command: status (S), comment (#) and data (D)
 * lines are skipped, except that with `data` the D lines are the PIN and
 * are collected there; an INQUIRE is a question we never invited.  A D
 * line is wiped from d->line as soon as it has been read.
 */
static enum reply dialog_reply(struct dialog *d, struct pin_buf *data, unsigned long *err)
{
	for (;;) {
		enum reply r = dialog_read_line(d);
		if (r != REPLY_OK)
			return r;
		const char *l = d->line;
		if (strncmp(l, "D ", 2) == 0) {
			bool ok = !data || pin_append(data, l + 2);
			kt_wipe(d->line, sizeof(d->line));
			if (!ok)
				return REPLY_BAD;
			continue;
		}
		if (strcmp(l, "OK") == 0 || strncmp(l, "OK ", 3) == 0)
			return REPLY_OK;
		if (strncmp(l, "ERR ", 4) == 0) {
			char *end;
			errno = 0;
			*err = strtoul(l + 4, &end, 10);
			if (errno || end == l + 4)
				return REPLY_BAD;
			return REPLY_ERR;
		}
		if (l[0] == '#' || strncmp(l, "S ", 2) == 0 || l[0] == '\0')
			continue;
		return REPLY_BAD;
	}
}

static size_t assuan_escaped_len(unsigned char c)
{
	return (c == '%' || c < 0x20) ? 3 : 1;
}

/* Escape src into dst (no NUL written) for an Assuan line: '%', CR, LF and
 * every other control byte as %XX.  Returns the bytes written. */
static size_t assuan_escape(char *dst, const char *src, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)src[i];
		if (assuan_escaped_len(c) == 3) {
			dst[o++] = '%';
			dst[o++] = hex[c >> 4];
			dst[o++] = hex[c & 15];
		} else {
			dst[o++] = (char)c;
		}
	}
	return o;
}

/* How many bytes of src fit in `room` once escaped, cut at a UTF-8
 * character boundary. */
static size_t assuan_fit(const char *src, size_t len, size_t room)
{
	size_t n = 0, used = 0;
	while (n < len && used + assuan_escaped_len((unsigned char)src[n]) <= room)
		used += assuan_escaped_len((unsigned char)src[n++]);
	if (n < len)
		while (n > 0 && ((unsigned char)src[n] & 0xc0) == 0x80)
			n--;
	return n;
}

/*
 * Send "VERB arg" (arg escaped; NULL for none) and read the answer, its D
 * lines into `data` when that is not NULL.  When the escaped arg is longer
 * than one Assuan line allows, as much as fits goes, followed by a note of
 * how many bytes were left out.  The line may carry the request: it is
 * wiped after sending.  The trace names the verb and the reply, never an
 * argument or the data.
 */
static enum reply dialog_exchange(struct dialog *d, const char *verb, const char *arg, size_t arg_len,
				  struct pin_buf *data, unsigned long *err)
{
	char line[ASSUAN_LINE_MAX];
	size_t o = strlen(verb);
	enum reply r = REPLY_BAD;

	*err = 0;
	memcpy(line, verb, o);
	if (arg) {
		size_t room = sizeof(line) - 1 - o - 1; /* the space, the LF */
		line[o++] = ' ';
		size_t fit = assuan_fit(arg, arg_len, room);
		if (fit < arg_len) {
			char note[96];
			int nn = snprintf(note, sizeof(note), "\n[... %zu %s]", arg_len - fit, text->not_shown);
			size_t note_esc = 0;
			for (int i = 0; i < nn; i++)
				note_esc += assuan_escaped_len((unsigned char)note[i]);
			fit = assuan_fit(arg, arg_len, room - note_esc);
			nn = snprintf(note, sizeof(note), "\n[... %zu %s]", arg_len - fit, text->not_shown);
			o += assuan_escape(line + o, arg, fit);
			o += assuan_escape(line + o, note, (size_t)nn);
		} else {
			o += assuan_escape(line + o, arg, arg_len);
		}
	}
	line[o++] = '\n';
	int e = child_send(&d->child, line, o, d->deadline);
	kt_wipe(line, sizeof(line));
	if (e == -ETIMEDOUT) {
		r = REPLY_TIMEOUT;
		goto out;
	}
	if (e != 0) {
		r = REPLY_EOF;
		goto out;
	}
	r = dialog_reply(d, data, err);
out:
	kt_debug(KT_DBG_POLICY, "confirm: pinentry pid %ld: %s -> %s %lu", (long)d->child.pid, verb,
		 reply_name(r), *err);
	return r;
}

static enum reply dialog_cmd(struct dialog *d, const char *verb, const char *arg, size_t arg_len,
			     unsigned long *err)
{
	return dialog_exchange(d, verb, arg, arg_len, NULL, err);
}

static bool dialog_set(struct dialog *d, const char *verb, const char *arg)
{
	unsigned long err;
	return dialog_cmd(d, verb, arg, arg ? strlen(arg) : 0, &err) == REPLY_OK;
}

/* OPTION name=value from an environment variable; a pinentry that does not
 * know the option says ERR, which changes nothing. */
static bool dialog_option(struct dialog *d, const char *name, const char *value)
{
	char opt[512];
	unsigned long err;
	if (!value || !*value)
		return true;
	int n = snprintf(opt, sizeof(opt), "%s=%s", name, value);
	if (n < 0 || (size_t)n >= sizeof(opt))
		return true;
	enum reply r = dialog_cmd(d, "OPTION", opt, (size_t)n, &err);
	return r == REPLY_OK || r == REPLY_ERR;
}

/* The terminal a terminal pinentry (tty, curses) draws on: GPG_TTY as for
 * gpg-agent, else the terminal the application itself runs in. */
static const char *dialog_tty(char *buf, size_t len)
{
	const char *t = secure_getenv("GPG_TTY");
	if (t && *t)
		return t;
	for (int fd = 0; fd <= 2; fd++)
		if (isatty(fd) && ttyname_r(fd, buf, len) == 0)
			return buf;
	return NULL;
}

/*
 * GETPIN until check() says yes, or says no for good, or the tries run
 * out.  REPLY_OK: the PIN was right; REPLY_ERR: pinentry's own answer
 * (cancel, its timeout); REPLY_REFUSED: the PIN failed, `why` says how.
 */
static enum reply dialog_getpin(struct dialog *d, const struct confirm_pin *pin, unsigned long *err,
				char *why, size_t why_len)
{
	unsigned tries = pin->tries ? pin->tries : PIN_TRIES;
	enum reply r;

	for (unsigned left = tries;;) {
		r = dialog_exchange(d, "GETPIN", NULL, 0, &d->pin, err);
		bool plausible = d->pin.len > 0 && !d->pin.overflow;
		CK_RV rv = CKR_PIN_INCORRECT;
		if (r == REPLY_OK && plausible)
			rv = pin->check(pin->ctx, d->pin.p, d->pin.len);
		/* Wiped is not necessarily zeroed: the next GETPIN starts empty. */
		kt_wipe(&d->pin, sizeof(d->pin));
		d->pin.len = 0;
		d->pin.overflow = false;
		if (r != REPLY_OK)
			return r;
		kt_debug(KT_DBG_POLICY, "confirm: pinentry pid %ld: PIN check -> %s", (long)d->child.pid,
			 plausible ? kt_rv_name(rv) : "empty or too long, not checked");
		if (rv == CKR_OK)
			return REPLY_OK;
		if (rv != CKR_PIN_INCORRECT) {
			snprintf(why, why_len, "the PIN was not accepted: %s", kt_rv_name(rv));
			return REPLY_REFUSED;
		}
		if (--left == 0) {
			snprintf(why, why_len, "the PIN was wrong %u time%s", tries, tries == 1 ? "" : "s");
			return REPLY_REFUSED;
		}

		/* pinentry restarts its timeout with every GETPIN: it gets
		 * what is left of ours, so it still closes first. */
		int ms = ms_left(d->deadline) - PINENTRY_GRACE_MS;
		if (ms <= 0)
			return REPLY_TIMEOUT;
		char msg[128];
		snprintf(msg, sizeof(msg), "%d", (ms + 999) / 1000);
		dialog_set(d, "SETTIMEOUT", msg);
		snprintf(msg, sizeof(msg), "%s: %u", text->pin_wrong, left);
		r = dialog_cmd(d, "SETERROR", msg, strlen(msg), err);
		if (r == REPLY_ERR) {
			/* Asking again without saying why would look like a
			 * glitch: the wrong PIN ends it here. */
			snprintf(why, why_len, "wrong PIN, and pinentry refused SETERROR (error %lu)", *err);
			return REPLY_REFUSED;
		}
		if (r != REPLY_OK)
			return r;
	}
}

/*
 * One pinentry run: the greeting, the options, the texts, then `verb`
 * (CONFIRM or MESSAGE), or with `pin` the GETPIN dialog.  Returns the
 * reply to `verb` (or dialog_getpin's verdict); *err its code.
 */
static enum reply dialog_run(const struct confirm_config *cfg, const char *window_title, const char *desc,
			     size_t desc_len, const char *verb, const struct confirm_pin *pin, bool disclosure,
			     unsigned timeout, unsigned long *err, char *why, size_t why_len)
{
	struct dialog *d = kt_alloc_secret(sizeof(*d));
	const char *program = cfg->program && *cfg->program ? cfg->program : "pinentry";
	char tty[256], num[32];
	enum reply r = REPLY_BAD;
	bool killed = false;

	*err = 0;
	if (!d) {
		snprintf(why, why_len, "out of memory");
		goto out;
	}
	d->child.pid = -1;
	d->child.fd = -1;
	d->deadline = now_ms() + (int64_t)timeout * 1000 + PINENTRY_GRACE_MS;
	if (!child_spawn(&d->child, program, NULL, true, why, why_len))
		goto out;

	r = dialog_reply(d, NULL, err);
	if (r != REPLY_OK)
		goto fail;
	snprintf(num, sizeof(num), "%u", timeout);
	if (!dialog_option(d, "ttyname", dialog_tty(tty, sizeof(tty))) ||
	    !dialog_option(d, "ttytype", secure_getenv("TERM")) ||
	    !dialog_option(d, "lc-ctype", secure_getenv("LC_CTYPE")) ||
	    !dialog_option(d, "lc-messages", secure_getenv("LC_MESSAGES")))
		goto fail_quiet;
	/* Optional: an old pinentry without a timeout or a NOTOK button
	 * still asks correctly, our deadline and Cancel cover the rest. */
	dialog_set(d, "SETTIMEOUT", num);
	if (!dialog_set(d, "SETTITLE", window_title))
		goto fail_quiet;
	r = dialog_cmd(d, "SETDESC", desc, desc_len, err);
	if (r != REPLY_OK)
		goto fail;
	if (pin) {
		/* No NOTOK: a PIN prompt has no "Do not sign", Cancel is
		 * the way out. */
		if (!dialog_set(d, "SETPROMPT", text->pin_prompt) || !dialog_set(d, "SETOK", text->ok) ||
		    !dialog_set(d, "SETCANCEL", text->cancel))
			goto fail_quiet;
		r = dialog_getpin(d, pin, err, why, why_len);
	} else {
		if (strcmp(verb, "CONFIRM") == 0) {
			if (!dialog_set(d, "SETOK", disclosure ? text->allow : text->ok) ||
			    !dialog_set(d, "SETCANCEL", text->cancel))
				goto fail_quiet;
			dialog_set(d, "SETNOTOK", disclosure ? text->notallow : text->notok);
		}
		r = dialog_cmd(d, verb, NULL, 0, err);
	}
	if (r == REPLY_OK || r == REPLY_ERR || r == REPLY_REFUSED) {
		unsigned long ignored;
		dialog_cmd(d, "BYE", NULL, 0, &ignored);
		goto out;
	}
	goto fail;

fail_quiet:
	r = REPLY_BAD;
fail:
	if (r == REPLY_ERR)
		snprintf(why, why_len, "pinentry %s: refused the dialog setup (error %lu)", program, *err);
	else if (r == REPLY_TIMEOUT)
		snprintf(why, why_len, "pinentry %s: no answer within %u s", program, timeout);
	else
		snprintf(why, why_len, "pinentry %s: %s during the dialog", program, reply_name(r));
	r = r == REPLY_TIMEOUT ? REPLY_TIMEOUT : REPLY_BAD;
	killed = true;
out:
	if (d) {
		child_end(&d->child, killed);
		kt_free_secret(d, sizeof(*d));
	}
	return r;
}

static enum confirm_answer ask_pinentry(const struct confirm_config *cfg, const struct confirm_request *req,
					unsigned timeout, char *why, size_t why_len)
{
	enum confirm_answer answer = CONFIRM_CANCELED;
	unsigned long err = 0;
	size_t len = 0;
	char *desc = confirm_render(req, &len);

	if (!desc) {
		snprintf(why, why_len, "out of memory");
		goto out;
	}
	bool disclosure = req->kind == CONFIRM_DISCLOSURE;
	enum reply r = dialog_run(cfg, disclosure ? text->disclose_window_title : text->window_title, desc, len,
				  req->pin && !disclosure ? "GETPIN" : "CONFIRM", disclosure ? NULL : req->pin,
				  disclosure, timeout, &err, why, why_len);
	if (r == REPLY_OK) {
		answer = CONFIRM_YES;
	} else if (r == REPLY_REFUSED) {
		answer = CONFIRM_PIN_FAILED;
	} else if (r == REPLY_ERR) {
		switch (GPG_ERR_CODE(err)) {
		case GPG_ERR_NOT_CONFIRMED:
			answer = CONFIRM_NO;
			snprintf(why, why_len, "%s", req->kind == CONFIRM_DISCLOSURE ? "the holder did not allow it" : "the signer chose not to sign");
			break;
		case GPG_ERR_CANCELED:
			snprintf(why, why_len, "the signer cancelled the dialog");
			break;
		case GPG_ERR_TIMEOUT:
			snprintf(why, why_len, "the signer did not answer within %u s", timeout);
			break;
		default:
			/* libgpg-error's system errors (its errno codes) mostly
			 * mean pinentry found nowhere to draw the dialog. */
			if (GPG_ERR_CODE(err) & GPG_ERR_SYSTEM_ERROR)
				snprintf(why, why_len,
					 "pinentry could not show the dialog (system error %lu): no display or "
					 "terminal? (DISPLAY, WAYLAND_DISPLAY or GPG_TTY)",
					 (unsigned long)(GPG_ERR_CODE(err) & ~GPG_ERR_SYSTEM_ERROR));
			else
				snprintf(why, why_len, "pinentry answered error %lu", err);
			break;
		}
	}
out:
	kt_free_secret(desc, len);
	return answer;
}

/* --- the command backend --------------------------------------------------- */

/* Run the command with `input` on stdin.  Returns true when it exited
 * before the deadline, with *status its wait status (-1: unknown). */
static bool command_run(const struct confirm_config *cfg, const char *arg, const char *input, size_t len,
			unsigned timeout, int *status, struct command_pin *pin, char *why, size_t why_len)
{
	struct child c = { .pid = -1, .fd = -1, .pin = pin };
	int64_t deadline = now_ms() + (int64_t)timeout * 1000;
	bool done = false;

	if (!cfg->program || !*cfg->program) {
		snprintf(why, why_len, "confirmation command not configured");
		goto out;
	}
	if (!child_spawn(&c, cfg->program, arg, false, why, why_len))
		goto out;
	/* A command may decide without reading all of it: EPIPE is its
	 * business, only the deadline is ours. */
	int e = child_send(&c, input, len, deadline);
	if (e != -ETIMEDOUT)
		shutdown(c.fd, SHUT_WR);
	if (e != -ETIMEDOUT)
		done = child_wait(&c, deadline, status);
	if (!done)
		snprintf(why, why_len, "command %s: no answer within %u s", cfg->program, timeout);
	child_end(&c, !done);
out:
	return done;
}

static enum confirm_answer ask_command(const struct confirm_config *cfg, const struct confirm_request *req,
				       unsigned timeout, char *why, size_t why_len)
{
	enum confirm_answer answer = CONFIRM_CANCELED;
	size_t len = 0;
	int status;
	char *input = confirm_render(req, &len);

	if (!input) {
		snprintf(why, why_len, "out of memory");
		goto out;
	}
	/* A key whose PIN the device checks: a yes alone makes no
	 * signature, so the command is asked for the PIN too. */
	bool want_pin = req->pin && req->pin_required && req->kind != CONFIRM_DISCLOSURE;
	struct command_pin *cp = want_pin ? kt_alloc_secret(sizeof(*cp)) : NULL;
	if (want_pin && !cp) {
		snprintf(why, why_len, "out of memory");
		goto out;
	}
	const char *arg = req->kind == CONFIRM_DISCLOSURE ? "disclose" : want_pin ? "confirm-pin" : "confirm";
	bool ran = command_run(cfg, arg, input, len, timeout, &status, cp, why, why_len);
	if (!ran) {
		kt_free_secret(cp, cp ? sizeof(*cp) : 0);
		goto out;
	}
	if (status == -1)
		snprintf(why, why_len, "command %s: exit status lost (SIGCHLD ignored?)", cfg->program);
	else if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && want_pin) {
		CK_RV rv = cp->found ? req->pin->check(req->pin->ctx, cp->pin, cp->pin_len) : CKR_PIN_INCORRECT;
		answer = rv == CKR_OK ? CONFIRM_YES : CONFIRM_PIN_FAILED;
		if (!cp->found)
			snprintf(why, why_len, "command %s said yes but gave no PIN, which the device needs", cfg->program);
		else if (rv != CKR_OK)
			snprintf(why, why_len, "the PIN from command %s was refused (%s)", cfg->program, kt_rv_name(rv));
	} else if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		answer = CONFIRM_YES;
	else if (WIFEXITED(status) && WEXITSTATUS(status) == 1) {
		answer = CONFIRM_NO;
		snprintf(why, why_len, "%s", req->kind == CONFIRM_DISCLOSURE ? "the holder did not allow it" : "the signer chose not to sign");
	} else if (WIFEXITED(status))
		snprintf(why, why_len, "command %s: exit status %d", cfg->program, WEXITSTATUS(status));
	else
		snprintf(why, why_len, "command %s: killed by signal %d", cfg->program,
			 WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	kt_free_secret(cp, cp ? sizeof(*cp) : 0);
out:
	kt_free_secret(input, len);
	return answer;
}

/* --- the interface ------------------------------------------------------------ */

static unsigned timeout_of(const struct confirm_config *cfg)
{
	return cfg->timeout ? cfg->timeout : DEFAULT_TIMEOUT;
}

static const char *answer_name(enum confirm_answer a)
{
	switch (a) {
	case CONFIRM_YES:
		return "yes";
	case CONFIRM_NO:
		return "no";
	case CONFIRM_PIN_FAILED:
		return "PIN failed";
	case CONFIRM_CANCELED:
		break;
	}
	return "cancelled";
}

enum confirm_answer confirm_ask(const struct confirm_config *cfg, const struct confirm_request *req,
				char *why, size_t why_len)
{
	enum confirm_answer answer = CONFIRM_CANCELED;
	char scratch[1];
	int64_t start = now_ms();

	if (!why || !why_len) {
		why = scratch;
		why_len = sizeof(scratch);
	}
	why[0] = '\0';
	if (!cfg || !req) {
		snprintf(why, why_len, "no confirmation configured");
		goto out;
	}
	switch (cfg->backend) {
	case CONFIRM_PINENTRY:
		answer = ask_pinentry(cfg, req, timeout_of(cfg), why, why_len);
		break;
	case CONFIRM_COMMAND:
		answer = ask_command(cfg, req, timeout_of(cfg), why, why_len);
		break;
	case CONFIRM_DENY:
		answer = CONFIRM_NO;
		snprintf(why, why_len, "confirmation backend is deny");
		break;
	default:
		snprintf(why, why_len, "unknown confirmation backend %d", (int)cfg->backend);
		break;
	}
out:
	kt_debug(KT_DBG_POLICY, "confirm: answer %s after %" PRId64 " ms", answer_name(answer), now_ms() - start);
	return answer;
}

void confirm_notify(const struct confirm_config *cfg, const struct confirm_request *req)
{
	char why[256] = "";
	size_t len = 0;
	char *input = NULL;
	unsigned timeout;

	if (!cfg || !req || cfg->backend == CONFIRM_DENY)
		goto out;
	/* The notice waits for the person's OK, and the application waits
	 * for C_Sign: bounded more tightly than the question. */
	timeout = timeout_of(cfg);
	if (timeout > NOTICE_TIMEOUT_MAX)
		timeout = NOTICE_TIMEOUT_MAX;

	if (cfg->backend == CONFIRM_PINENTRY) {
		unsigned long err;
		input = render_notice(req, &len);
		if (!input) {
			snprintf(why, sizeof(why), "out of memory");
			goto fail;
		}
		enum reply r = dialog_run(cfg, text->notice_window_title, input, len, "MESSAGE", NULL, false,
					  timeout, &err, why, sizeof(why));
		/* MESSAGE's ERR (the person closed it, or its timeout) still
		 * means the notice was on the screen. */
		if (r != REPLY_OK && r != REPLY_ERR)
			goto fail;
	} else {
		static const char result[] = "RESULT: signed\n";
		struct sbuf b = {0};
		char *req_text = confirm_render(req, &len);
		if (req_text) {
			sbuf_add(&b, req_text, len);
			sbuf_add(&b, result, sizeof(result) - 1);
		} else {
			b.failed = true;
		}
		kt_free_secret(req_text, len);
		input = render_finish(&b, &len);
		if (!input) {
			snprintf(why, sizeof(why), "out of memory");
			goto fail;
		}
		int status;
		if (!command_run(cfg, "notify", input, len, timeout, &status, NULL, why, sizeof(why)))
			goto fail;
	}
	goto out;
fail:
	kt_log("the \"signed\" notice could not be shown: %s", why);
out:
	kt_free_secret(input, len);
}
