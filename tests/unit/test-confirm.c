/*
 * Unit tests of the signature activation backends (module/policy/confirm.c)
 * against the scripted stand-ins tests/pinentry/fake-pinentry (Assuan) and
 * tests/pinentry/fake-confirm.sh (command): every answer of both backends,
 * what the person would have read, the Assuan escaping and line limit, the
 * "signed" notice, two questions at once, and the child processes' hygiene:
 * reaped, no inherited descriptors or signal settings, and the request
 * never in their argv or environment.
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
		cmocka_unit_test_teardown(test_deny, no_zombies),
		cmocka_unit_test_teardown(test_concurrent_pinentry, no_zombies),
		cmocka_unit_test_teardown(test_concurrent_command, no_zombies),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
