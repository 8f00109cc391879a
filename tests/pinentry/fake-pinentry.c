/*
 * A scripted stand-in for pinentry, speaking enough Assuan for
 * module/policy/confirm.c.  Its behaviour comes from the file named by
 * KT_FAKE_PINENTRY (the tests write it; it never carries request data):
 *
 *   mode yes|no|cancel|timeout|never|crash|garbage|fromdesc
 *   log FILE        every command received, %XX-unescaped, one per entry
 *   delay_ms N      wait this long before answering CONFIRM/MESSAGE
 *
 *   yes      CONFIRM -> OK
 *   no       CONFIRM -> ERR 83886194 Not confirmed    (the NOTOK button)
 *   cancel   CONFIRM -> ERR 83886179 Operation cancelled (Cancel, Escape)
 *   timeout  CONFIRM -> ERR 83886142 Timeout
 *   never    CONFIRM and MESSAGE are never answered
 *   crash    exits without a word at CONFIRM or MESSAGE
 *   garbage  answers CONFIRM with a line that is not Assuan
 *   quit     exits right after the greeting (writes to it fail: EPIPE)
 *   fromdesc the answer is "ANSWER=yes|no|cancel" found in SETDESC, so
 *            threads sharing one environment get different answers
 * MESSAGE is answered OK except in never and crash modes.
 *
 * For the tests' checks it also appends, per run, its /proc/self/cmdline
 * to LOG.argv and its /proc/self/environ to LOG.environ (NULs as newlines),
 * and to the log the lines "FDS n" (descriptors open besides 0-2),
 * "SIGBLK hex" and "SIGIGN hex" from /proc/self/status, and "TOOLONG" for
 * a line longer than libassuan accepts (1000 bytes with its LF).  Every
 * line as received (still escaped) goes to LOG.raw.
 */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_ASSUAN 1000

static char mode[32] = "yes";
static char log_path[4096];
static long delay_ms;

static void load_config(void)
{
	const char *path = getenv("KT_FAKE_PINENTRY");
	char line[4200];
	FILE *f;

	if (!path || !(f = fopen(path, "r")))
		exit(2);
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		if (strncmp(line, "mode ", 5) == 0)
			snprintf(mode, sizeof(mode), "%.31s", line + 5);
		else if (strncmp(line, "log ", 4) == 0)
			snprintf(log_path, sizeof(log_path), "%.4000s", line + 4);
		else if (strncmp(line, "delay_ms ", 9) == 0)
			delay_ms = atol(line + 9);
	}
	fclose(f);
}

/* One write per entry: runs in parallel threads append to the same log. */
static void log_entry(const char *suffix, const char *data, size_t len)
{
	char path[4200];
	if (!log_path[0])
		return;
	snprintf(path, sizeof(path), "%s%s", log_path, suffix);
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	char *buf = malloc(len + 1);
	if (buf) {
		memcpy(buf, data, len);
		buf[len] = '\n';
		if (write(fd, buf, len + 1) < 0)
			exit(2);
		free(buf);
	}
	close(fd);
}

static void log_proc_file(const char *proc, const char *suffix)
{
	char buf[65536];
	int fd = open(proc, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	ssize_t n = read(fd, buf, sizeof(buf));
	close(fd);
	if (n <= 0)
		return;
	for (ssize_t i = 0; i < n; i++)
		if (buf[i] == '\0')
			buf[i] = '\n';
	log_entry(suffix, buf, (size_t)n);
}

static void log_process(void)
{
	char line[256];
	int fds = 0;
	DIR *d = opendir("/proc/self/fd");
	if (d) {
		struct dirent *e;
		while ((e = readdir(d)))
			if (e->d_name[0] != '.' && atoi(e->d_name) > 2 && atoi(e->d_name) != dirfd(d))
				fds++;
		closedir(d);
	}
	int n = snprintf(line, sizeof(line), "FDS %d", fds);
	log_entry("", line, (size_t)n);

	FILE *f = fopen("/proc/self/status", "r");
	if (f) {
		while (fgets(line, sizeof(line), f)) {
			unsigned long long v;
			if (sscanf(line, "SigBlk: %llx", &v) == 1) {
				n = snprintf(line, sizeof(line), "SIGBLK %llx", v);
				log_entry("", line, (size_t)n);
			} else if (sscanf(line, "SigIgn: %llx", &v) == 1) {
				n = snprintf(line, sizeof(line), "SIGIGN %llx", v);
				log_entry("", line, (size_t)n);
			}
		}
		fclose(f);
	}
	log_proc_file("/proc/self/cmdline", ".argv");
	log_proc_file("/proc/self/environ", ".environ");
}

static void say(const char *s)
{
	size_t len = strlen(s);
	if (write(1, s, len) != (ssize_t)len || write(1, "\n", 1) != 1)
		exit(3);
}

static void unescape(char *s)
{
	char *o = s;
	while (*s) {
		if (s[0] == '%' && s[1] && s[2]) {
			char hex[3] = { s[1], s[2], 0 };
			*o++ = (char)strtol(hex, NULL, 16);
			s += 3;
		} else {
			*o++ = *s++;
		}
	}
	*o = '\0';
}

static void wait_a_moment(void)
{
	struct timespec ts = { delay_ms / 1000, (delay_ms % 1000) * 1000000 };
	if (delay_ms > 0)
		nanosleep(&ts, NULL);
}

static void never(void)
{
	for (;;)
		pause();
}

static void answer(const char *how)
{
	if (strcmp(how, "yes") == 0)
		say("OK");
	else if (strcmp(how, "no") == 0)
		say("ERR 83886194 Not confirmed <Pinentry>");
	else if (strcmp(how, "cancel") == 0) {
		say("S BUTTON_INFO close");
		say("ERR 83886179 Operation cancelled <Pinentry>");
	} else if (strcmp(how, "timeout") == 0)
		say("ERR 83886142 Timeout <Pinentry>");
	else if (strcmp(how, "never") == 0)
		never();
	else if (strcmp(how, "crash") == 0)
		exit(1);
	else
		say("HELLO this is not Assuan");
}

int main(void)
{
	static char line[1 << 16];
	static char desc[1 << 16];
	size_t len = 0;

	load_config();
	log_process();
	say("# fake pinentry for the koltamga tests");
	say("OK Pleased to meet you");
	if (strcmp(mode, "quit") == 0)
		return 0;
	for (;;) {
		int c = getchar();
		if (c == EOF)
			break;
		if (c != '\n') {
			if (len < sizeof(line) - 1)
				line[len++] = (char)c;
			continue;
		}
		line[len] = '\0';
		if (len + 1 > LINE_MAX_ASSUAN) {
			log_entry("", "TOOLONG", 7);
			say("ERR 83886604 Line passed to IPC too long <Pinentry>");
			len = 0;
			continue;
		}
		len = 0;
		log_entry(".raw", line, strlen(line));
		unescape(line);
		log_entry("", line, strlen(line));
		if (strncmp(line, "SETDESC ", 8) == 0) {
			snprintf(desc, sizeof(desc), "%s", line + 8);
			say("OK");
		} else if (strcmp(line, "CONFIRM") == 0 || strncmp(line, "CONFIRM ", 8) == 0) {
			wait_a_moment();
			if (strcmp(mode, "fromdesc") == 0) {
				const char *a = strstr(desc, "ANSWER=");
				char how[16] = "garbage";
				if (a)
					sscanf(a + 7, "%15[a-z]", how);
				answer(how);
			} else {
				answer(mode);
			}
		} else if (strcmp(line, "MESSAGE") == 0) {
			wait_a_moment();
			if (strcmp(mode, "never") == 0 || strcmp(mode, "crash") == 0)
				answer(mode);
			else
				say("OK");
		} else if (strcmp(line, "BYE") == 0) {
			say("OK closing connection");
			break;
		} else {
			say("OK");
		}
	}
	return 0;
}
