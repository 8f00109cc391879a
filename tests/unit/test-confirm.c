/*
 * Unit tests of the signature activation backends (module/policy/confirm.c)
 * against the scripted stand-ins tests/pinentry/fake-pinentry (Assuan) and
 * tests/pinentry/fake-confirm.sh (command): every answer of both backends,
 * what the person would have read, the Assuan escaping and line limit, the
 * "signed" notice, two questions at once, and the child processes' hygiene:
 * reaped, no inherited descriptors or signal settings, and the request
 * never in their argv or environment.  Then the PIN typed into pinentry's
 * GETPIN: unescaped exactly, retried in the same window, refused, cancelled,
 * bounded in length and time, and never written anywhere.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"
#include "policy/confirm.h"

static char tmp[64];
static char fake_pinentry[PATH_MAX];
static char fake_confirm[PATH_MAX];
static char pe_conf[128], pe_log[128];
static char cmd_conf[128], cmd_out[128];

#define CODE "4821"
#define SHA "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
#define MARK_TITLE "MARKER-TITLE-51c2"
#define MARK_CONTENT "MARKER-CONTENT-7f3a"

static const char doc[] = "Contract 17\n\tThe parties agree: 100% of the fee.\r\n" MARK_CONTENT "\n";

static struct confirm_request sample(void)
{
	return (struct confirm_request){
		.title = "Contract 17 " MARK_TITLE,
		.signer = "Aibek Testov",
		.certificate = "Test CA, serial 01, valid to 2030-01-01",
		.restrictions = "up to 1000 KGS",
		.key_label = "sign key",
		.mechanism = "ECDSA with SHA-256",
		.program = "/usr/bin/test-app",
		.pid = 4242,
		.size = sizeof(doc) - 1,
		.sha256_hex = SHA,
		.code = CODE,
		.content = (const unsigned char *)doc,
		.content_len = sizeof(doc) - 1,
	};
}

/* --- files ---------------------------------------------------------------- */

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return strdup("");
	char *buf = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&buf, &len);
	assert_non_null(m);
	char chunk[4096];
	size_t n;
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		fwrite(chunk, 1, n, m);
	fclose(f);
	fclose(m);
	return buf;
}

static void write_file(const char *path, const char *fmt, ...)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	va_list ap;
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	fclose(f);
}

static void remove_logs(const char *base)
{
	static const char *const sfx[] = { "", ".raw", ".argv", ".environ" };
	char p[256];
	for (size_t i = 0; i < KT_ARRAY_SIZE(sfx); i++) {
		snprintf(p, sizeof(p), "%s%s", base, sfx[i]);
		unlink(p);
	}
}

static char *log_file(const char *base, const char *sfx)
{
	char p[256];
	snprintf(p, sizeof(p), "%s%s", base, sfx);
	return slurp(p);
}

static void pinentry_mode(const char *mode, int delay_ms)
{
	remove_logs(pe_log);
	write_file(pe_conf, "mode %s\nlog %s\ndelay_ms %d\n", mode, pe_log, delay_ms);
}

static void command_mode(const char *mode, int code)
{
	remove_logs(cmd_out);
	write_file(cmd_conf, "out=%s\ncode=%d\nmode=%s\n", cmd_out, code, mode);
}

static double seconds_since(const struct timespec *t0)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

/* --- fixtures ---------------------------------------------------------------- */

static int group_setup(void **state)
{
	(void)state;
	const char *builddir = getenv("KOLTAMGA_BUILDDIR");
	const char *srcdir = getenv("KOLTAMGA_SRCDIR");
	snprintf(fake_pinentry, sizeof(fake_pinentry), "%s/tests/pinentry/fake-pinentry",
		 builddir ? builddir : ".");
	snprintf(fake_confirm, sizeof(fake_confirm), "%s/tests/pinentry/fake-confirm.sh", srcdir ? srcdir : ".");
	if (access(fake_pinentry, X_OK) != 0 || access(fake_confirm, X_OK) != 0) {
		fprintf(stderr, "fake programs missing: %s %s\n", fake_pinentry, fake_confirm);
		return -1;
	}
	/* Absolute, for the symlink test_pinentry_missing puts in another
	 * directory: run by hand (no KOLTAMGA_BUILDDIR), "./tests/..." would
	 * make it dangle. */
	char abs[PATH_MAX];
	if (!realpath(fake_pinentry, abs))
		return -1;
	snprintf(fake_pinentry, sizeof(fake_pinentry), "%s", abs);
	if (!realpath(fake_confirm, abs))
		return -1;
	snprintf(fake_confirm, sizeof(fake_confirm), "%s", abs);
	snprintf(tmp, sizeof(tmp), "/tmp/kt-confirm-XXXXXX");
	if (!mkdtemp(tmp))
		return -1;
	snprintf(pe_conf, sizeof(pe_conf), "%s/pinentry.conf", tmp);
	snprintf(pe_log, sizeof(pe_log), "%s/pinentry.log", tmp);
	snprintf(cmd_conf, sizeof(cmd_conf), "%s/command.conf", tmp);
	snprintf(cmd_out, sizeof(cmd_out), "%s/command.out", tmp);
	setenv("KT_FAKE_PINENTRY", pe_conf, 1);
	setenv("KT_FAKE_CONFIRM", cmd_conf, 1);
	kt_debug_init();
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
	return system(cmd) == 0 ? 0 : -1;
}

/* After every test: every child the module started has been reaped. */
static int no_zombies(void **state)
{
	(void)state;
	int status;
	errno = 0;
	assert_int_equal(waitpid(-1, &status, WNOHANG), -1);
	assert_int_equal(errno, ECHILD);
	return 0;
}

static struct confirm_config pinentry_cfg(unsigned timeout)
{
	return (struct confirm_config){ .backend = CONFIRM_PINENTRY, .program = fake_pinentry, .timeout = timeout };
}

static struct confirm_config command_cfg(unsigned timeout)
{
	return (struct confirm_config){ .backend = CONFIRM_COMMAND, .program = fake_confirm, .timeout = timeout };
}

/* The SETDESC text the fake received (unescaped), or "" */
static char *received_desc(void)
{
	char *log = log_file(pe_log, "");
	char *d = strstr(log, "\nSETDESC ");
	char *out;
	if (!d) {
		out = strdup("");
	} else {
		d += strlen("\nSETDESC ");
		char *end = strstr(d, "\nSETOK ");
		char *prompt = strstr(d, "\nSETPROMPT ");
		if (prompt && (!end || prompt < end))
			end = prompt;
		if (!end)
			end = strstr(d, "\nMESSAGE\n");
		out = strndup(d, end ? (size_t)(end - d) : strlen(d));
	}
	free(log);
	return out;
}

/* --- rendering ----------------------------------------------------------------- */

static void test_render_request(void **state)
{
	(void)state;
	struct confirm_request req = sample();
	size_t len = 0;
	char *t = confirm_render(&req, &len);
	assert_non_null(t);
	assert_int_equal(strlen(t), len);
	assert_true(strncmp(t, "Sign this document?\n", 20) == 0);
	assert_non_null(strstr(t, "\nCode: " CODE "\n"));
	assert_non_null(strstr(t, "\nSHA-256: " SHA "\n"));
	char size_line[64];
	snprintf(size_line, sizeof(size_line), "\nSize: %zu bytes\n", sizeof(doc) - 1);
	assert_non_null(strstr(t, size_line));
	assert_non_null(strstr(t, "\nTitle: Contract 17 " MARK_TITLE "\n"));
	assert_non_null(strstr(t, "\nSigner: Aibek Testov\n"));
	assert_non_null(strstr(t, "\nCertificate: Test CA, serial 01"));
	assert_non_null(strstr(t, "\nRestrictions: up to 1000 KGS\n"));
	assert_non_null(strstr(t, "\nKey: sign key\n"));
	assert_non_null(strstr(t, "\nMechanism: ECDSA with SHA-256\n"));
	assert_non_null(strstr(t, "\nRequested by: /usr/bin/test-app (pid 4242)\n"));
	/* The document, tab kept, CRLF made LF. */
	assert_non_null(strstr(t, "\n\tThe parties agree: 100% of the fee.\n" MARK_CONTENT "\n"));
	assert_null(strchr(t, '\r'));
	assert_null(strstr(t, "only a hash"));
	kt_free_secret(t, len);

	/* Hash only: said plainly, and nothing pretends to be the document. */
	req.hash_only = true;
	req.content = NULL;
	req.content_len = 0;
	req.title = NULL;
	t = confirm_render(&req, &len);
	assert_non_null(strstr(t, "The application gave only a hash of the document: "
				  "koltamga cannot show you its content."));
	assert_null(strstr(t, "Title:"));
	assert_null(strstr(t, MARK_CONTENT));
	kt_free_secret(t, len);
}

static void test_render_hostile_text(void **state)
{
	(void)state;
	struct confirm_request req = sample();
	/* A certificate field trying to draw its own "Code:" line, clear the
	 * terminal, or reverse the text; a document with escapes, a C1 CSI,
	 * invalid UTF-8, and real Cyrillic that must survive. */
	req.signer = "Mallory\nCode: 0000\x1b[2J\t";
	req.certificate = "CA \xe2\x80\xae" "gnp.exe";
	static const char bad[] = "ok \x1b[31mred\x07 \xc2\x9b" "1m \xff\xfe \xc0\xaf end\n"
				  "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82\n";
	req.content = (const unsigned char *)bad;
	req.content_len = sizeof(bad) - 1;
	size_t len;
	char *t = confirm_render(&req, &len);
	assert_non_null(t);
	assert_null(strstr(t, "\nCode: 0000"));
	assert_non_null(strstr(t, "\nSigner: Mallory Code: 0000?[2J \n"));
	assert_non_null(strstr(t, "\nCertificate: CA ?gnp.exe\n"));
	assert_non_null(strstr(t, "ok ?[31mred? ?1m ?? ?? end\n"));
	assert_non_null(strstr(t, "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82\n"));
	for (size_t i = 0; i < len; i++)
		assert_true((unsigned char)t[i] >= 0x20 || t[i] == '\n' || t[i] == '\t');
	kt_free_secret(t, len);
}

static void test_render_long_content(void **state)
{
	(void)state;
	struct confirm_request req = sample();
	size_t n = 10000;
	unsigned char *big = malloc(n);
	/* Two-byte characters, so the cap must fall on a boundary. */
	for (size_t i = 0; i < n; i += 2) {
		big[i] = 0xd0;
		big[i + 1] = 0x96;
	}
	req.content = big;
	req.content_len = n;
	req.size = n;
	size_t len;
	char *t = confirm_render(&req, &len);
	assert_non_null(strstr(t, "\n[... 6000 more bytes]\n"));
	assert_true(len < 4000 + 1000);
	kt_free_secret(t, len);

	/* Shifted by one byte: the character at 3999-4000 straddles the cap
	 * and is left out whole. */
	big[0] = 'a';
	for (size_t i = 1; i + 1 < n; i += 2) {
		big[i] = 0xd0;
		big[i + 1] = 0x96;
	}
	big[n - 1] = 'z';
	t = confirm_render(&req, &len);
	assert_non_null(strstr(t, "\n[... 6001 more bytes]\n"));
	char *body = strstr(t, "\nDocument:\n");
	assert_non_null(body);
	assert_null(strchr(body, '?'));
	kt_free_secret(t, len);
	free(big);
}

/* --- pinentry -------------------------------------------------------------------- */

static enum confirm_answer ask_pinentry(const char *mode, char *why, size_t why_len)
{
	struct confirm_config cfg = pinentry_cfg(10);
	struct confirm_request req = sample();
	pinentry_mode(mode, 0);
	return confirm_ask(&cfg, &req, why, why_len);
}

static void test_pinentry_answers(void **state)
{
	(void)state;
	char why[256];
	assert_int_equal(ask_pinentry("yes", why, sizeof(why)), CONFIRM_YES);
	assert_int_equal(ask_pinentry("no", why, sizeof(why)), CONFIRM_NO);
	assert_non_null(strstr(why, "not to sign"));
	assert_int_equal(ask_pinentry("cancel", why, sizeof(why)), CONFIRM_CANCELED);
	assert_non_null(strstr(why, "cancelled"));
	assert_int_equal(ask_pinentry("timeout", why, sizeof(why)), CONFIRM_CANCELED);
	assert_non_null(strstr(why, "did not answer"));
	/* A system error (here ENOTTY): the log says what to look at. */
	assert_int_equal(ask_pinentry("notty", why, sizeof(why)), CONFIRM_CANCELED);
	assert_non_null(strstr(why, "could not show the dialog"));
	assert_non_null(strstr(why, "GPG_TTY"));
	assert_int_equal(ask_pinentry("crash", why, sizeof(why)), CONFIRM_CANCELED);
	assert_non_null(strstr(why, "end of file"));
	assert_int_equal(ask_pinentry("garbage", why, sizeof(why)), CONFIRM_CANCELED);
	assert_non_null(strstr(why, "garbled"));
	/* Gone after the greeting: our writes meet EPIPE, never SIGPIPE. */
	signal(SIGPIPE, SIG_DFL);
	assert_int_equal(ask_pinentry("quit", why, sizeof(why)), CONFIRM_CANCELED);
}

static void test_pinentry_missing(void **state)
{
	(void)state;
	char why[256];
	struct confirm_config cfg = pinentry_cfg(5);
	struct confirm_request req = sample();
	cfg.program = "/nonexistent/pinentry";
	assert_int_equal(confirm_ask(&cfg, &req, why, sizeof(why)), CONFIRM_CANCELED);
	/* Under valgrind posix_spawn cannot report the failed exec: the
	 * child exits 127 instead, and the answer is the same. */
	assert_true(strstr(why, "cannot start /nonexistent/pinentry") || strstr(why, "end of file"));

	/* No program configured: "pinentry" from PATH. */
	char dir[128], link[160];
	snprintf(dir, sizeof(dir), "%s/bin", tmp);
	mkdir(dir, 0700);
	snprintf(link, sizeof(link), "%s/pinentry", dir);
	unlink(link);
	assert_int_equal(symlink(fake_pinentry, link), 0);
	char *old_path = strdup(getenv("PATH") ? getenv("PATH") : "/usr/bin:/bin");
	setenv("PATH", dir, 1);
	cfg.program = NULL;
	pinentry_mode("yes", 0);
	assert_int_equal(confirm_ask(&cfg, &req, why, sizeof(why)), CONFIRM_YES);
	setenv("PATH", "/nonexistent", 1);
	assert_int_equal(confirm_ask(&cfg, &req, why, sizeof(why)), CONFIRM_CANCELED);
	assert_true(strstr(why, "cannot start pinentry") || strstr(why, "end of file"));
	setenv("PATH", old_path, 1);
	free(old_path);
}

static void test_pinentry_never_times_out(void **state)
{
	(void)state;
	char why[256];
	struct confirm_config cfg = pinentry_cfg(2);
	struct confirm_request req = sample();
	struct timespec t0;
	pinentry_mode("never", 0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	assert_int_equal(confirm_ask(&cfg, &req, why, sizeof(why)), CONFIRM_CANCELED);
	double s = seconds_since(&t0);
	assert_true(s >= 2.0);
	assert_true(s < 8.0);
	assert_non_null(strstr(why, "no answer within 2 s"));
	char *log = log_file(pe_log, "");
	assert_non_null(strstr(log, "\nSETTIMEOUT 2\n"));
	free(log);
}

static void test_pinentry_dialog_text(void **state)
{
	(void)state;
	char why[256];
	struct confirm_config cfg = pinentry_cfg(10);
	struct confirm_request req = sample();
	setenv("GPG_TTY", "/dev/pts/77", 1);
	setenv("TERM", "xterm-test", 1);
	pinentry_mode("yes", 0);
	assert_int_equal(confirm_ask(&cfg, &req, why, sizeof(why)), CONFIRM_YES);
	unsetenv("GPG_TTY");

	char *log = log_file(pe_log, "");
	assert_non_null(strstr(log, "\nOPTION ttyname=/dev/pts/77\n"));
	assert_non_null(strstr(log, "\nOPTION ttytype=xterm-test\n"));
	assert_non_null(strstr(log, "\nSETTITLE koltamga: confirm the signature\n"));
	assert_non_null(strstr(log, "\nSETOK _Sign\n"));
	assert_non_null(strstr(log, "\nSETNOTOK _Do not sign\n"));
	assert_non_null(strstr(log, "\nSETCANCEL _Cancel\n"));
	assert_non_null(strstr(log, "\nCONFIRM\n"));
	assert_non_null(strstr(log, "\nBYE\n"));
	assert_null(strstr(log, "TOOLONG"));
	free(log);

	/* What the person read is exactly the rendered request. */
	size_t len;
	char *want = confirm_render(&req, &len);
	char *desc = received_desc();
	assert_string_equal(desc, want);
	assert_non_null(strstr(desc, "Code: " CODE));
	assert_non_null(strstr(desc, SHA));
	char size_line[64];
	snprintf(size_line, sizeof(size_line), "\nSize: %zu bytes\n", sizeof(doc) - 1);
	assert_non_null(strstr(desc, size_line));
	assert_non_null(strstr(desc, "/usr/bin/test-app (pid 4242)"));
	assert_non_null(strstr(desc, MARK_CONTENT));
	kt_free_secret(want, len);
	free(desc);

	/* On the wire: one line, %, LF and tab escaped. */
	char *raw = log_file(pe_log, ".raw");
	char *line = strstr(raw, "\nSETDESC ");
	assert_non_null(line);
	char *end = strchr(line + 1, '\n');
	assert_non_null(strstr(line, "Sign this document?%0A%0ATitle:"));
	assert_non_null(strstr(line, "%0A%09The parties agree: 100%25 of the fee.%0A"));
	for (char *p = line + 1; p < end; p++) {
		assert_true(*p != '\r');
		if (*p == '%')
			assert_true(strchr("0123456789ABCDEF", p[1]) && strchr("0123456789ABCDEF", p[2]));
	}
	free(raw);

	/* Hash only: the warning reaches the dialog. */
	req.hash_only = true;
	req.content = NULL;
	req.content_len = 0;
	pinentry_mode("yes", 0);
	assert_int_equal(confirm_ask(&cfg, &req, why, sizeof(why)), CONFIRM_YES);
	desc = received_desc();
	assert_non_null(strstr(desc, "only a hash of the document"));
	free(desc);
}

static void test_pinentry_line_limit(void **state)
{
	(void)state;
	char why[256];
	struct confirm_config cfg = pinentry_cfg(10);
	struct confirm_request req = sample();
	/* '%' costs three bytes on the wire, Cyrillic two bytes a character:
	 * the description must be cut to one Assuan line, on a boundary. */
	size_t n = 3000;
	unsigned char *big = malloc(n);
	for (size_t i = 0; i < n; i += 3) {
		big[i] = '%';
		big[i + 1] = 0xd0;
		big[i + 2] = 0x96;
	}
	req.content = big;
	req.content_len = n;
	pinentry_mode("yes", 0);
	assert_int_equal(confirm_ask(&cfg, &req, why, sizeof(why)), CONFIRM_YES);
	free(big);

	char *log = log_file(pe_log, "");
	assert_null(strstr(log, "TOOLONG"));
	free(log);
	char *raw = log_file(pe_log, ".raw");
	char *line = strstr(raw, "\nSETDESC ");
	assert_non_null(line);
	size_t line_len = strcspn(line + 1, "\n");
	assert_true(line_len <= 999);
	assert_true(line_len >= 990);
	free(raw);
	char *desc = received_desc();
	assert_non_null(strstr(desc, "Code: " CODE "\n"));
	assert_non_null(strstr(desc, "more bytes that this dialog cannot show]"));
	/* Cut between characters: only whole "Ж" before the note. */
	char *note = strstr(desc, "\n[... ");
	assert_non_null(note);
	assert_true(note[-1] == '%' || (unsigned char)note[-1] == 0x96);
	free(desc);
}

static void test_pinentry_notify(void **state)
{
	(void)state;
	struct confirm_config cfg = pinentry_cfg(10);
	struct confirm_request req = sample();
	pinentry_mode("yes", 0);
	confirm_notify(&cfg, &req);
	char *log = log_file(pe_log, "");
	assert_non_null(strstr(log, "\nSETTITLE koltamga: signed\n"));
	assert_non_null(strstr(log, "\nMESSAGE\n"));
	assert_null(strstr(log, "\nCONFIRM"));
	free(log);
	char *desc = received_desc();
	assert_true(strncmp(desc, "Signed.\nThe signature was created.\n", 35) == 0);
	assert_non_null(strstr(desc, "Code: " CODE "\n"));
	assert_null(strstr(desc, MARK_CONTENT));
	free(desc);

	/* Best effort: a missing or dead pinentry is only logged. */
	cfg.program = "/nonexistent/pinentry";
	confirm_notify(&cfg, &req);
	cfg.program = fake_pinentry;
	pinentry_mode("crash", 0);
	confirm_notify(&cfg, &req);
}

/* The child starts clean: no descriptors of ours, nothing blocked or
 * ignored, and neither argv nor the environment carries the request. */
static void test_pinentry_child_hygiene(void **state)
{
	(void)state;
	char why[256];
	struct confirm_config cfg = pinentry_cfg(10);
	struct confirm_request req = sample();
	sigset_t set, old;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	void (*old_usr2)(int) = signal(SIGUSR2, SIG_IGN);
	int leak = open("/proc/self/status", O_RDONLY); /* no O_CLOEXEC on purpose */
	assert_true(leak >= 0);

	pinentry_mode("yes", 0);
	assert_int_equal(confirm_ask(&cfg, &req, why, sizeof(why)), CONFIRM_YES);
	close(leak);
	signal(SIGUSR2, old_usr2);
	pthread_sigmask(SIG_SETMASK, &old, NULL);

	char *log = log_file(pe_log, "");
	assert_non_null(strstr(log, "FDS 0\n"));
	assert_non_null(strstr(log, "SIGBLK 0\n"));
	/* glibc's posix_spawn leaves its two internal signals (32, 33)
	 * ignored; every signal a program uses comes back to default. */
	char *ign = strstr(log, "SIGIGN ");
	assert_non_null(ign);
	unsigned long long mask = strtoull(ign + 7, NULL, 16);
	assert_int_equal(mask & ~0x180000000ull, 0);
	free(log);
	char *argv = log_file(pe_log, ".argv");
	char want[PATH_MAX + 4];
	snprintf(want, sizeof(want), "%s\n\n", fake_pinentry);
	assert_string_equal(argv, want);
	free(argv);
	char *env = log_file(pe_log, ".environ");
	assert_true(strlen(env) > 0);
	assert_null(strstr(env, MARK_CONTENT));
	assert_null(strstr(env, MARK_TITLE));
	assert_null(strstr(env, SHA));
	free(env);
}

/* --- command ------------------------------------------------------------------------ */

static enum confirm_answer ask_command(const char *mode, int code, unsigned timeout, char *why, size_t why_len)
{
	struct confirm_config cfg = command_cfg(timeout);
	struct confirm_request req = sample();
	command_mode(mode, code);
	return confirm_ask(&cfg, &req, why, why_len);
}

static void test_command_answers(void **state)
{
	(void)state;
	char why[256];
	assert_int_equal(ask_command("plain", 0, 10, why, sizeof(why)), CONFIRM_YES);
	assert_int_equal(ask_command("plain", 1, 10, why, sizeof(why)), CONFIRM_NO);
	assert_non_null(strstr(why, "not to sign"));
	assert_int_equal(ask_command("plain", 3, 10, why, sizeof(why)), CONFIRM_CANCELED);
	assert_non_null(strstr(why, "exit status 3"));
	assert_int_equal(ask_command("plain", 127, 10, why, sizeof(why)), CONFIRM_CANCELED);
	assert_int_equal(ask_command("signal", 0, 10, why, sizeof(why)), CONFIRM_CANCELED);
	assert_non_null(strstr(why, "signal 9"));
	/* Decides without reading: our write may meet EPIPE, never SIGPIPE. */
	signal(SIGPIPE, SIG_DFL);
	assert_int_equal(ask_command("noread", 0, 10, why, sizeof(why)), CONFIRM_YES);
	/* Writes far more than a socket buffer: drained, never blocks. */
	assert_int_equal(ask_command("chatty", 0, 10, why, sizeof(why)), CONFIRM_YES);

	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	assert_int_equal(ask_command("sleep", 0, 2, why, sizeof(why)), CONFIRM_CANCELED);
	double s = seconds_since(&t0);
	assert_true(s >= 2.0 && s < 6.0);
	assert_non_null(strstr(why, "no answer within 2 s"));
}

static void test_command_missing(void **state)
{
	(void)state;
	char why[256];
	struct confirm_config cfg = command_cfg(5);
	struct confirm_request req = sample();
	cfg.program = "/nonexistent/confirm";
	assert_int_equal(confirm_ask(&cfg, &req, why, sizeof(why)), CONFIRM_CANCELED);
	assert_true(strstr(why, "cannot start") || strstr(why, "exit status 127"));
	cfg.program = NULL;
	assert_int_equal(confirm_ask(&cfg, &req, why, sizeof(why)), CONFIRM_CANCELED);
	assert_non_null(strstr(why, "not configured"));
}

static void test_command_input(void **state)
{
	(void)state;
	char why[256];
	struct confirm_request req = sample();
	assert_int_equal(ask_command("plain", 0, 10, why, sizeof(why)), CONFIRM_YES);
	size_t len;
	char *text = confirm_render(&req, &len);
	char *out = log_file(cmd_out, "");
	assert_true(strncmp(out, "=== confirm\n", 12) == 0);
	assert_string_equal(out + 12, text);
	free(out);
	kt_free_secret(text, len);

	char *argv = log_file(cmd_out, ".argv");
	char want[PATH_MAX + 32];
	/* bash names itself and the script; the one argument is the word. */
	assert_non_null(strstr(argv, fake_confirm));
	snprintf(want, sizeof(want), "%s\nconfirm\n", fake_confirm);
	size_t al = strlen(argv), wl = strlen(want);
	assert_true(al >= wl && strcmp(argv + al - wl, want) == 0);
	assert_null(strstr(argv, CODE));
	free(argv);
	char *env = log_file(cmd_out, ".environ");
	assert_true(strlen(env) > 0);
	assert_null(strstr(env, MARK_CONTENT));
	assert_null(strstr(env, SHA));
	free(env);
}

static void test_command_notify(void **state)
{
	(void)state;
	struct confirm_config cfg = command_cfg(10);
	struct confirm_request req = sample();
	command_mode("plain", 1); /* notify ignores the code anyway */
	confirm_notify(&cfg, &req);
	char *out = log_file(cmd_out, "");
	assert_true(strncmp(out, "=== notify\nSign this document?\n", 31) == 0);
	assert_non_null(strstr(out, "Code: " CODE "\n"));
	size_t n = strlen(out);
	assert_true(n > 15 && strcmp(out + n - 15, "RESULT: signed\n") == 0);
	free(out);

	/* A notify that never ends is stopped, and only logged. */
	command_mode("sleep", 0);
	cfg.timeout = 1;
	confirm_notify(&cfg, &req);
}

static void test_deny(void **state)
{
	(void)state;
	char why[256];
	struct confirm_config cfg = { .backend = CONFIRM_DENY };
	struct confirm_request req = sample();
	assert_int_equal(confirm_ask(&cfg, &req, why, sizeof(why)), CONFIRM_NO);
	assert_string_equal(why, "confirmation backend is deny");
	confirm_notify(&cfg, &req);
	/* A why buffer is optional. */
	assert_int_equal(confirm_ask(&cfg, &req, NULL, 0), CONFIRM_NO);
}

/* --- two questions at once ------------------------------------------------------------ */

struct asker {
	struct confirm_config cfg;
	const char *title;
	enum confirm_answer answer;
};

static void *ask_thread(void *arg)
{
	struct asker *a = arg;
	struct confirm_request req = sample();
	char why[256];
	req.title = a->title;
	a->answer = confirm_ask(&a->cfg, &req, why, sizeof(why));
	return NULL;
}

static void ask_two_at_once(struct confirm_config cfg, bool timed)
{
	struct asker a[] = {
		{ cfg, "first ANSWER=yes", -1 },
		{ cfg, "second ANSWER=no", -1 },
		{ cfg, "third ANSWER=cancel", -1 },
	};
	pthread_t t[KT_ARRAY_SIZE(a)];
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (size_t i = 0; i < KT_ARRAY_SIZE(a); i++)
		assert_int_equal(pthread_create(&t[i], NULL, ask_thread, &a[i]), 0);
	for (size_t i = 0; i < KT_ARRAY_SIZE(a); i++)
		pthread_join(t[i], NULL);
	assert_int_equal(a[0].answer, CONFIRM_YES);
	assert_int_equal(a[1].answer, CONFIRM_NO);
	assert_int_equal(a[2].answer, CONFIRM_CANCELED);
	/* Each waits 700 ms: together well under the 2.1 s of one by one. */
	if (timed)
		assert_true(seconds_since(&t0) < 1.9);
}

static void test_concurrent_pinentry(void **state)
{
	(void)state;
	pinentry_mode("fromdesc", 700);
	ask_two_at_once(pinentry_cfg(10), true);
}

static void test_concurrent_command(void **state)
{
	(void)state;
	/* Only the answers must not cross: the shell's start-up time makes
	 * a timing bound here meaningless (the pinentry test has one). */
	command_mode("fromstdin", 0);
	ask_two_at_once(command_cfg(10), false);
}

/* --- the PIN in the pinentry dialog ------------------------------------------------------- */

/* '%' (escaped on the wire), non-ASCII UTF-8 (sent as raw bytes) and a
 * space: what comes out of the unescaping must be exactly this. */
#define RIGHT_PIN "Zq%8 \xd0\x96\xc3\xa9!"
#define WRONG_PIN "Wx%7\xd1\x84-wrong"
#define CHECK_CALLS_MAX 8

/* What check() was given, call by call, and what it answers. */
struct pin_check {
	const char *right;
	size_t right_len;
	CK_RV forced; /* when not CKR_OK: the answer to any PIN */
	int calls;
	size_t len[CHECK_CALLS_MAX];
	char got[CHECK_CALLS_MAX][512];
};

static CK_RV check_pin(void *ctx, const char *pin, size_t len)
{
	struct pin_check *pc = ctx;
	if (pc->calls < CHECK_CALLS_MAX) {
		pc->len[pc->calls] = len;
		memcpy(pc->got[pc->calls], pin, len < sizeof(pc->got[0]) ? len : sizeof(pc->got[0]));
	}
	pc->calls++;
	if (pc->forced != CKR_OK)
		return pc->forced;
	if (len == pc->right_len && memcmp(pin, pc->right, len) == 0)
		return CKR_OK;
	return CKR_PIN_INCORRECT;
}

static struct pin_check right_is(const char *pin, size_t len)
{
	return (struct pin_check){ .right = pin, .right_len = len };
}

static void assert_checked(const struct pin_check *pc, int call, const char *pin, size_t len)
{
	assert_true(call < pc->calls);
	assert_int_equal(pc->len[call], len);
	assert_memory_equal(pc->got[call], pin, len);
}

/* A config line's PIN: every byte %XX, so any byte (LF, NUL) survives. */
static char *conf_pin(const char *verb, const char *pin, size_t len)
{
	size_t vl = strlen(verb);
	char *out = malloc(vl + 1 + 3 * len + 2);
	assert_non_null(out);
	char *o = out + sprintf(out, "%s ", verb);
	for (size_t i = 0; i < len; i++)
		o += sprintf(o, "%%%02X", (unsigned char)pin[i]);
	strcpy(o, "\n");
	return out;
}

/* A letter n times, written plainly (escaped it would not fit the
 * fake's config line). */
static char *conf_repeat(char c, size_t n)
{
	char *line = malloc(n + 6);
	assert_non_null(line);
	memcpy(line, "pin ", 4);
	memset(line + 4, c, n);
	strcpy(line + 4 + n, "\n");
	return line;
}

/* The fake in `mode` once its PINs (config lines, NULL-terminated) run
 * out, with `extra` config lines. */
static void pinentry_pins(const char *mode, int delay_ms, const char *extra, ...)
{
	FILE *f;
	va_list ap;
	remove_logs(pe_log);
	f = fopen(pe_conf, "w");
	assert_non_null(f);
	fprintf(f, "mode %s\nlog %s\ndelay_ms %d\n%s", mode, pe_log, delay_ms, extra ? extra : "");
	va_start(ap, extra);
	for (const char *l; (l = va_arg(ap, const char *));)
		fputs(l, f);
	va_end(ap);
	fclose(f);
}

/* A key whose PIN a device checks: the command is asked "confirm-pin" and
 * its yes must come with a line "PIN <pin>" for the device. */
static enum confirm_answer ask_command_pin(const char *extra, int code, struct pin_check *pc, char *why,
					   size_t why_len)
{
	struct confirm_config cfg = command_cfg(10);
	struct confirm_request req = sample();
	struct confirm_pin pin = { .check = check_pin, .ctx = pc, .tries = 3 };
	req.pin = &pin;
	req.pin_required = true;
	remove_logs(cmd_out);
	write_file(cmd_conf, "out=%s\ncode=%d\nmode=plain\n%s", cmd_out, code, extra);
	return confirm_ask(&cfg, &req, why, why_len);
}

static void test_command_pin(void **state)
{
	(void)state;
	char why[256];
	struct pin_check pc = right_is("4321", 4);
	assert_int_equal(ask_command_pin("pin=4321\n", 0, &pc, why, sizeof(why)), CONFIRM_YES);
	assert_int_equal(pc.calls, 1);
	assert_checked(&pc, 0, "4321", 4);
	char *out = slurp(cmd_out);
	assert_non_null(strstr(out, "=== confirm-pin\n"));
	free(out);
	/* A wrong PIN: refused by check(), no yes. */
	pc = right_is("4321", 4);
	assert_int_equal(ask_command_pin("pin=0000\n", 0, &pc, why, sizeof(why)), CONFIRM_PIN_FAILED);
	assert_int_equal(pc.calls, 1);
	/* A yes without a PIN: nothing to check, no yes either. */
	pc = right_is("4321", 4);
	assert_int_equal(ask_command_pin("", 0, &pc, why, sizeof(why)), CONFIRM_PIN_FAILED);
	assert_int_equal(pc.calls, 0);
	assert_non_null(strstr(why, "gave no PIN"));
	/* A no stays a no, the PIN unused. */
	pc = right_is("4321", 4);
	assert_int_equal(ask_command_pin("pin=4321\n", 1, &pc, why, sizeof(why)), CONFIRM_NO);
	assert_int_equal(pc.calls, 0);
	/* A PIN that is not a line of its own (after 300 KB of output with
	 * no newline) is not taken. */
	pc = right_is("4321", 4);
	assert_int_equal(ask_command_pin("pin=4321\nmode=chatty\n", 0, &pc, why, sizeof(why)), CONFIRM_PIN_FAILED);
	assert_int_equal(pc.calls, 0);
	/* Without pin_required the command is asked "confirm" as before. */
	struct confirm_config cfg = command_cfg(10);
	struct confirm_request req = sample();
	struct confirm_pin pin = { .check = check_pin, .ctx = &pc, .tries = 3 };
	req.pin = &pin;
	command_mode("plain", 0);
	assert_int_equal(confirm_ask(&cfg, &req, why, sizeof(why)), CONFIRM_YES);
	out = slurp(cmd_out);
	assert_non_null(strstr(out, "=== confirm\n"));
	free(out);
}

static enum confirm_answer ask_pin(struct pin_check *pc, unsigned tries, unsigned timeout, char *why,
				   size_t why_len)
{
	struct confirm_config cfg = pinentry_cfg(timeout);
	struct confirm_request req = sample();
	struct confirm_pin pin = { .check = check_pin, .ctx = pc, .tries = tries };
	req.pin = &pin;
	return confirm_ask(&cfg, &req, why, why_len);
}

static int count(const char *hay, const char *needle)
{
	int n = 0;
	for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

static bool mem_in(const char *hay, size_t hay_len, const char *needle, size_t len)
{
	return memmem(hay, hay_len, needle, len) != NULL;
}

/* Nothing the fake saw or recorded about itself carries the PIN. */
static void assert_pin_nowhere(const char *pin, size_t len)
{
	static const char *const sfx[] = { "", ".raw", ".argv", ".environ" };
	for (size_t i = 0; i < KT_ARRAY_SIZE(sfx); i++) {
		char *f = log_file(pe_log, sfx[i]);
		assert_false(mem_in(f, strlen(f), pin, len));
		free(f);
	}
}

static void test_pin_right_first_time(void **state)
{
	(void)state;
	char why[256];
	struct pin_check pc = right_is(RIGHT_PIN, strlen(RIGHT_PIN));
	char *line = conf_pin("pin", RIGHT_PIN, strlen(RIGHT_PIN));
	pinentry_pins("cancel", 0, NULL, line, NULL);
	assert_int_equal(ask_pin(&pc, 0, 10, why, sizeof(why)), CONFIRM_YES);
	free(line);
	assert_int_equal(pc.calls, 1);
	assert_checked(&pc, 0, RIGHT_PIN, strlen(RIGHT_PIN));
	assert_string_equal(why, "");

	char *log = log_file(pe_log, "");
	assert_int_equal(count(log, "FDS "), 1);
	assert_non_null(strstr(log, "\nSETTITLE koltamga: confirm the signature\n"));
	assert_non_null(strstr(log, "\nSETPROMPT PIN:\n"));
	assert_non_null(strstr(log, "\nSETOK _Sign\n"));
	assert_non_null(strstr(log, "\nSETCANCEL _Cancel\n"));
	assert_int_equal(count(log, "\nGETPIN\n"), 1);
	assert_non_null(strstr(log, "\nDATA 1\n"));
	assert_null(strstr(log, "\nCONFIRM"));
	assert_null(strstr(log, "\nSETNOTOK"));
	assert_null(strstr(log, "\nSETERROR"));
	assert_non_null(strstr(log, "\nBYE\n"));
	free(log);
	/* The person read the same request as with CONFIRM. */
	struct confirm_request req = sample();
	size_t len;
	char *want = confirm_render(&req, &len);
	char *desc = received_desc();
	assert_string_equal(desc, want);
	kt_free_secret(want, len);
	free(desc);
	assert_pin_nowhere(RIGHT_PIN, strlen(RIGHT_PIN));
}

/* A PIN with LF, NUL and '%' sent one byte per D line, and the answer
 * trickling in one byte per read: reassembled byte for byte. */
static void test_pin_split_lines(void **state)
{
	(void)state;
	static const char pin[] = "a%\n\0b\xd0\x96%25";
	size_t n = sizeof(pin) - 1;
	char why[256];
	struct pin_check pc = right_is(pin, n);
	char *line = conf_pin("pin", pin, n);
	pinentry_pins("cancel", 0, "dsplit 1\ntrickle 1\n", line, NULL);
	assert_int_equal(ask_pin(&pc, 0, 10, why, sizeof(why)), CONFIRM_YES);
	free(line);
	assert_int_equal(pc.calls, 1);
	assert_checked(&pc, 0, pin, n);
	char *log = log_file(pe_log, "");
	char want[32];
	snprintf(want, sizeof(want), "\nDATA %zu\n", n);
	assert_non_null(strstr(log, want));
	free(log);
}

static void test_pin_wrong_then_right(void **state)
{
	(void)state;
	char why[256];
	struct pin_check pc = right_is(RIGHT_PIN, strlen(RIGHT_PIN));
	char *wrong = conf_pin("pin", WRONG_PIN, strlen(WRONG_PIN));
	char *right = conf_pin("pin", RIGHT_PIN, strlen(RIGHT_PIN));
	pinentry_pins("cancel", 0, NULL, wrong, right, NULL);
	assert_int_equal(ask_pin(&pc, 0, 10, why, sizeof(why)), CONFIRM_YES);
	assert_int_equal(pc.calls, 2);
	assert_checked(&pc, 0, WRONG_PIN, strlen(WRONG_PIN));
	assert_checked(&pc, 1, RIGHT_PIN, strlen(RIGHT_PIN));

	/* One process; the error is on screen before the second prompt,
	 * with what is left of the timeout. */
	char *log = log_file(pe_log, "");
	assert_int_equal(count(log, "FDS "), 1);
	assert_int_equal(count(log, "\nGETPIN\n"), 2);
	char *first = strstr(log, "\nGETPIN\n");
	char *err = strstr(log, "\nSETERROR Wrong PIN. Tries left in this dialog: 2\n");
	char *second = strstr(first + 1, "\nGETPIN\n");
	assert_non_null(err);
	assert_true(first < err && err < second);
	char *settimeout = strstr(first, "\nSETTIMEOUT ");
	assert_non_null(settimeout);
	assert_true(settimeout < second);
	int secs = atoi(settimeout + strlen("\nSETTIMEOUT "));
	assert_true(secs >= 1 && secs <= 10);
	assert_int_equal(count(log, "\nSETERROR"), 1);
	free(log);
	assert_pin_nowhere(RIGHT_PIN, strlen(RIGHT_PIN));
	assert_pin_nowhere(WRONG_PIN, strlen(WRONG_PIN));

	/* More tries than the default when the caller says so. */
	pc = right_is(RIGHT_PIN, strlen(RIGHT_PIN));
	pinentry_pins("cancel", 0, NULL, wrong, wrong, wrong, wrong, right, NULL);
	assert_int_equal(ask_pin(&pc, 5, 10, why, sizeof(why)), CONFIRM_YES);
	assert_int_equal(pc.calls, 5);
	log = log_file(pe_log, "");
	assert_non_null(strstr(log, "\nSETERROR Wrong PIN. Tries left in this dialog: 4\n"));
	assert_non_null(strstr(log, "\nSETERROR Wrong PIN. Tries left in this dialog: 1\n"));
	free(log);
	free(wrong);
	free(right);
}

static void test_pin_wrong_every_time(void **state)
{
	(void)state;
	char why[256];
	struct pin_check pc = right_is(RIGHT_PIN, strlen(RIGHT_PIN));
	char *wrong = conf_pin("pin", WRONG_PIN, strlen(WRONG_PIN));
	char *right = conf_pin("pin", RIGHT_PIN, strlen(RIGHT_PIN));
	/* The right PIN comes fourth: a fourth prompt would be a bug. */
	pinentry_pins("cancel", 0, NULL, wrong, wrong, wrong, right, NULL);
	assert_int_equal(ask_pin(&pc, 0, 10, why, sizeof(why)), CONFIRM_PIN_FAILED);
	assert_int_equal(pc.calls, 3);
	for (int i = 0; i < 3; i++)
		assert_checked(&pc, i, WRONG_PIN, strlen(WRONG_PIN));
	assert_string_equal(why, "the PIN was wrong 3 times");
	char *log = log_file(pe_log, "");
	assert_int_equal(count(log, "FDS "), 1);
	assert_int_equal(count(log, "\nGETPIN\n"), 3);
	assert_int_equal(count(log, "\nSETERROR"), 2);
	assert_non_null(strstr(log, "\nSETERROR Wrong PIN. Tries left in this dialog: 1\n"));
	assert_non_null(strstr(log, "\nBYE\n"));
	free(log);

	/* tries = 1: the first wrong PIN ends it, without a SETERROR. */
	pc = right_is(RIGHT_PIN, strlen(RIGHT_PIN));
	pinentry_pins("cancel", 0, NULL, wrong, right, NULL);
	assert_int_equal(ask_pin(&pc, 1, 10, why, sizeof(why)), CONFIRM_PIN_FAILED);
	assert_int_equal(pc.calls, 1);
	assert_string_equal(why, "the PIN was wrong 1 time");
	log = log_file(pe_log, "");
	assert_int_equal(count(log, "\nGETPIN\n"), 1);
	assert_null(strstr(log, "\nSETERROR"));
	free(log);
	free(wrong);
	free(right);
}

/* Anything but "incorrect" ends the dialog at once: no second guess at
 * a locked PIN, or after the login went away. */
static void test_pin_check_refuses(void **state)
{
	(void)state;
	static const CK_RV rvs[] = { CKR_PIN_LOCKED, CKR_USER_NOT_LOGGED_IN, CKR_GENERAL_ERROR };
	static const char *const names[] = { "CKR_PIN_LOCKED", "CKR_USER_NOT_LOGGED_IN", "CKR_GENERAL_ERROR" };
	char *right = conf_pin("pin", RIGHT_PIN, strlen(RIGHT_PIN));
	for (size_t i = 0; i < KT_ARRAY_SIZE(rvs); i++) {
		char why[256];
		struct pin_check pc = right_is(RIGHT_PIN, strlen(RIGHT_PIN));
		pc.forced = rvs[i];
		pinentry_pins("cancel", 0, NULL, right, right, right, NULL);
		assert_int_equal(ask_pin(&pc, 0, 10, why, sizeof(why)), CONFIRM_PIN_FAILED);
		assert_int_equal(pc.calls, 1);
		assert_non_null(strstr(why, names[i]));
		assert_null(strstr(why, RIGHT_PIN));
		char *log = log_file(pe_log, "");
		assert_int_equal(count(log, "\nGETPIN\n"), 1);
		assert_null(strstr(log, "\nSETERROR"));
		free(log);
	}
	free(right);
}

static void test_pin_cancel(void **state)
{
	(void)state;
	char why[256];
	struct pin_check pc = right_is(RIGHT_PIN, strlen(RIGHT_PIN));
	pinentry_pins("cancel", 0, NULL, NULL);
	assert_int_equal(ask_pin(&pc, 0, 10, why, sizeof(why)), CONFIRM_CANCELED);
	assert_int_equal(pc.calls, 0);
	assert_string_equal(why, "the signer cancelled the dialog");

	/* Cancelled at the second prompt, after one wrong PIN. */
	char *wrong = conf_pin("pin", WRONG_PIN, strlen(WRONG_PIN));
	pinentry_pins("cancel", 0, NULL, wrong, NULL);
	assert_int_equal(ask_pin(&pc, 0, 10, why, sizeof(why)), CONFIRM_CANCELED);
	assert_int_equal(pc.calls, 1);
	assert_string_equal(why, "the signer cancelled the dialog");
	free(wrong);

	pc.calls = 0;
	pinentry_pins("timeout", 0, NULL, NULL);
	assert_int_equal(ask_pin(&pc, 0, 10, why, sizeof(why)), CONFIRM_CANCELED);
	assert_non_null(strstr(why, "did not answer within 10 s"));
	pinentry_pins("crash", 0, NULL, NULL);
	assert_int_equal(ask_pin(&pc, 0, 10, why, sizeof(why)), CONFIRM_CANCELED);
	assert_non_null(strstr(why, "end of file"));
	assert_int_equal(pc.calls, 0);
}

/* Longer than any PIN: never reaches check() (not even cut short), and
 * costs a try; 255 bytes is still a PIN; an empty one is not. */
static void test_pin_length(void **state)
{
	(void)state;
	char why[256];
	struct pin_check pc = right_is(RIGHT_PIN, strlen(RIGHT_PIN));
	char *huge = conf_repeat('A', 5000); /* 17 D lines */
	char *over = conf_repeat('B', 256);
	char *max = conf_repeat('C', 255);
	char *right = conf_pin("pin", RIGHT_PIN, strlen(RIGHT_PIN));
	pinentry_pins("cancel", 0, NULL, huge, over, max, right, NULL);
	assert_int_equal(ask_pin(&pc, 4, 10, why, sizeof(why)), CONFIRM_YES);
	assert_int_equal(pc.calls, 2);
	char c255[255];
	memset(c255, 'C', sizeof(c255));
	assert_checked(&pc, 0, c255, sizeof(c255));
	assert_checked(&pc, 1, RIGHT_PIN, strlen(RIGHT_PIN));
	char *log = log_file(pe_log, "");
	assert_non_null(strstr(log, "\nDATA 17\n"));
	assert_int_equal(count(log, "\nSETERROR"), 3);
	free(log);

	/* Only too-long PINs: the dialog's tries run out, nothing checked. */
	pc.calls = 0;
	pinentry_pins("cancel", 0, NULL, huge, over, huge, right, NULL);
	assert_int_equal(ask_pin(&pc, 0, 10, why, sizeof(why)), CONFIRM_PIN_FAILED);
	assert_int_equal(pc.calls, 0);
	assert_string_equal(why, "the PIN was wrong 3 times");

	/* OK with no D line: an empty PIN. */
	pinentry_pins("yes", 0, NULL, NULL);
	assert_int_equal(ask_pin(&pc, 2, 10, why, sizeof(why)), CONFIRM_PIN_FAILED);
	assert_int_equal(pc.calls, 0);
	log = log_file(pe_log, "");
	assert_int_equal(count(log, "\nGETPIN\n"), 2);
	free(log);
	free(huge);
	free(over);
	free(max);
	free(right);
}

/* A D line that is not valid Assuan ends the dialog; nothing of it is
 * taken for a PIN. */
static void test_pin_broken_escape(void **state)
{
	(void)state;
	static const char *const bad[] = { "rawpin 12%G4\n", "rawpin 12%4\n", "rawpin 12%\n" };
	for (size_t i = 0; i < KT_ARRAY_SIZE(bad); i++) {
		char why[256];
		struct pin_check pc = right_is("12", 2);
		pinentry_pins("cancel", 0, NULL, bad[i], NULL);
		assert_int_equal(ask_pin(&pc, 0, 10, why, sizeof(why)), CONFIRM_CANCELED);
		assert_int_equal(pc.calls, 0);
		assert_non_null(strstr(why, "garbled"));
	}
}

/* A pinentry that cannot show why it asks again: the wrong PIN stands;
 * one without a prompt text is as broken as one without SETOK. */
static void test_pin_refused_commands(void **state)
{
	(void)state;
	char why[256];
	struct pin_check pc = right_is(RIGHT_PIN, strlen(RIGHT_PIN));
	char *wrong = conf_pin("pin", WRONG_PIN, strlen(WRONG_PIN));
	char *right = conf_pin("pin", RIGHT_PIN, strlen(RIGHT_PIN));
	pinentry_pins("cancel", 0, "refuse SETERROR\n", wrong, right, NULL);
	assert_int_equal(ask_pin(&pc, 0, 10, why, sizeof(why)), CONFIRM_PIN_FAILED);
	assert_int_equal(pc.calls, 1);
	assert_non_null(strstr(why, "SETERROR"));

	pc.calls = 0;
	pinentry_pins("cancel", 0, "refuse SETPROMPT\n", right, NULL);
	assert_int_equal(ask_pin(&pc, 0, 10, why, sizeof(why)), CONFIRM_CANCELED);
	assert_int_equal(pc.calls, 0);
	char *log = log_file(pe_log, "");
	assert_null(strstr(log, "\nGETPIN"));
	free(log);
	free(wrong);
	free(right);
}

/* One deadline for the whole dialog: retries do not extend it, and each
 * retry's SETTIMEOUT is what is left of it. */
static void test_pin_deadline(void **state)
{
	(void)state;
	char why[256];
	struct pin_check pc = right_is(RIGHT_PIN, strlen(RIGHT_PIN));
	char *wrong = conf_pin("pin", WRONG_PIN, strlen(WRONG_PIN));
	struct timespec t0;
	pinentry_pins("never", 1000, NULL, wrong, wrong, wrong, wrong, wrong, wrong, NULL);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	assert_int_equal(ask_pin(&pc, 8, 3, why, sizeof(why)), CONFIRM_CANCELED);
	double s = seconds_since(&t0);
	free(wrong);
	assert_true(s >= 2.0);
	assert_true(s < 7.0);
	assert_non_null(strstr(why, "no answer within 3 s"));
	assert_true(pc.calls >= 2 && pc.calls <= 3);
	char *log = log_file(pe_log, "");
	char *first = strstr(log, "\nSETTIMEOUT 3\n");
	assert_non_null(first);
	char *retry = strstr(first + 1, "\nSETTIMEOUT ");
	assert_non_null(retry);
	int secs = atoi(retry + strlen("\nSETTIMEOUT "));
	assert_true(secs >= 1 && secs <= 2);
	free(log);
}

/* With policy tracing on, the trace names GETPIN and the check's result,
 * and neither PIN; `why` of a failure names no PIN either. */
static void test_pin_not_logged(void **state)
{
	(void)state;
	char why[256], path[160];
	struct pin_check pc = right_is(RIGHT_PIN, strlen(RIGHT_PIN));
	char *wrong = conf_pin("pin", WRONG_PIN, strlen(WRONG_PIN));
	char *right = conf_pin("pin", RIGHT_PIN, strlen(RIGHT_PIN));
	snprintf(path, sizeof(path), "%s/trace", tmp);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	fflush(stderr);
	int saved = dup(2);
	dup2(fd, 2);
	close(fd);
	unsigned old_mask = kt_debug_mask;
	kt_debug_mask |= KT_DBG_POLICY;

	pinentry_pins("cancel", 0, NULL, wrong, right, NULL);
	enum confirm_answer yes = ask_pin(&pc, 0, 10, why, sizeof(why));
	pinentry_pins("cancel", 0, NULL, wrong, wrong, NULL);
	enum confirm_answer failed = ask_pin(&pc, 2, 10, why, sizeof(why));

	kt_debug_mask = old_mask;
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	free(wrong);
	free(right);
	assert_int_equal(yes, CONFIRM_YES);
	assert_int_equal(failed, CONFIRM_PIN_FAILED);
	assert_null(strstr(why, WRONG_PIN));

	char *trace = slurp(path);
	assert_non_null(strstr(trace, ": GETPIN -> OK"));
	assert_non_null(strstr(trace, "PIN check -> CKR_PIN_INCORRECT"));
	assert_non_null(strstr(trace, "PIN check -> CKR_OK"));
	assert_non_null(strstr(trace, "answer PIN failed"));
	assert_null(strstr(trace, RIGHT_PIN));
	assert_null(strstr(trace, WRONG_PIN));
	/* Nor escaped as on the wire. */
	assert_null(strstr(trace, "Zq%258"));
	assert_null(strstr(trace, "Wx%257"));
	free(trace);
	assert_pin_nowhere(RIGHT_PIN, strlen(RIGHT_PIN));
	assert_pin_nowhere(WRONG_PIN, strlen(WRONG_PIN));
}

/* The command backend's yes is the signer's act: req->pin changes
 * nothing, check() is never called; deny and the notice ignore it too. */
static void test_pin_other_backends(void **state)
{
	(void)state;
	char why[256];
	struct pin_check pc = right_is(RIGHT_PIN, strlen(RIGHT_PIN));
	struct confirm_pin pin = { .check = check_pin, .ctx = &pc };
	struct confirm_request req = sample();
	req.pin = &pin;
	struct confirm_config cfg = command_cfg(10);

	command_mode("plain", 0);
	assert_int_equal(confirm_ask(&cfg, &req, why, sizeof(why)), CONFIRM_YES);
	command_mode("plain", 1);
	assert_int_equal(confirm_ask(&cfg, &req, why, sizeof(why)), CONFIRM_NO);
	command_mode("plain", 3);
	assert_int_equal(confirm_ask(&cfg, &req, why, sizeof(why)), CONFIRM_CANCELED);
	assert_non_null(strstr(why, "exit status 3"));
	/* Its input is the request as without a PIN. */
	size_t len;
	char *text = confirm_render(&req, &len);
	char *out = log_file(cmd_out, "");
	assert_string_equal(out + strlen("=== confirm\n"), text);
	free(out);
	kt_free_secret(text, len);

	cfg = (struct confirm_config){ .backend = CONFIRM_DENY };
	assert_int_equal(confirm_ask(&cfg, &req, why, sizeof(why)), CONFIRM_NO);
	assert_string_equal(why, "confirmation backend is deny");

	cfg = pinentry_cfg(10);
	pinentry_pins("yes", 0, NULL, NULL);
	confirm_notify(&cfg, &req);
	char *log = log_file(pe_log, "");
	assert_non_null(strstr(log, "\nMESSAGE\n"));
	assert_null(strstr(log, "GETPIN"));
	assert_null(strstr(log, "SETPROMPT"));
	free(log);
	assert_int_equal(pc.calls, 0);

	/* And without req->pin pinentry still only asks CONFIRM. */
	req.pin = NULL;
	pinentry_pins("yes", 0, NULL, NULL);
	assert_int_equal(confirm_ask(&cfg, &req, why, sizeof(why)), CONFIRM_YES);
	log = log_file(pe_log, "");
	assert_non_null(strstr(log, "\nCONFIRM\n"));
	assert_non_null(strstr(log, "\nSETNOTOK _Do not sign\n"));
	assert_null(strstr(log, "GETPIN"));
	assert_null(strstr(log, "SETPROMPT"));
	free(log);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_render_request),
		cmocka_unit_test(test_render_hostile_text),
		cmocka_unit_test(test_render_long_content),
		cmocka_unit_test_teardown(test_pinentry_answers, no_zombies),
		cmocka_unit_test_teardown(test_pinentry_missing, no_zombies),
		cmocka_unit_test_teardown(test_pinentry_never_times_out, no_zombies),
		cmocka_unit_test_teardown(test_pinentry_dialog_text, no_zombies),
		cmocka_unit_test_teardown(test_pinentry_line_limit, no_zombies),
		cmocka_unit_test_teardown(test_pinentry_notify, no_zombies),
		cmocka_unit_test_teardown(test_pinentry_child_hygiene, no_zombies),
		cmocka_unit_test_teardown(test_command_answers, no_zombies),
		cmocka_unit_test_teardown(test_command_missing, no_zombies),
		cmocka_unit_test_teardown(test_command_input, no_zombies),
		cmocka_unit_test_teardown(test_command_notify, no_zombies),
		cmocka_unit_test_teardown(test_command_pin, no_zombies),
		cmocka_unit_test_teardown(test_deny, no_zombies),
		cmocka_unit_test_teardown(test_concurrent_pinentry, no_zombies),
		cmocka_unit_test_teardown(test_concurrent_command, no_zombies),
		cmocka_unit_test_teardown(test_pin_right_first_time, no_zombies),
		cmocka_unit_test_teardown(test_pin_split_lines, no_zombies),
		cmocka_unit_test_teardown(test_pin_wrong_then_right, no_zombies),
		cmocka_unit_test_teardown(test_pin_wrong_every_time, no_zombies),
		cmocka_unit_test_teardown(test_pin_check_refuses, no_zombies),
		cmocka_unit_test_teardown(test_pin_cancel, no_zombies),
		cmocka_unit_test_teardown(test_pin_length, no_zombies),
		cmocka_unit_test_teardown(test_pin_broken_escape, no_zombies),
		cmocka_unit_test_teardown(test_pin_refused_commands, no_zombies),
		cmocka_unit_test_teardown(test_pin_deadline, no_zombies),
		cmocka_unit_test_teardown(test_pin_not_logged, no_zombies),
		cmocka_unit_test_teardown(test_pin_other_backends, no_zombies),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
