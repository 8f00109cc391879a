/*
 * A scripted stand-in for pinentry, speaking enough Assuan for
 * module/policy/confirm.c.  Its behaviour comes from the file named by
 * KT_FAKE_PINENTRY (the tests write it; it never carries request data):
 *
 *   mode yes|no|cancel|timeout|never|crash|garbage|fromdesc
 *   log FILE        every command received, %XX-unescaped, one per entry
 *   delay_ms N      wait this long before answering CONFIRM/MESSAGE/GETPIN
 *   pin TEXT        a PIN the person types at GETPIN, %XX-escaped here;
 *                   one line per GETPIN, in order
 *   rawpin TEXT     the same, but sent on the D line exactly as written
 *                   (so a test can send a broken escape)
 *   dsplit N        at most N PIN bytes per D line (default 300, max 300)
 *   trickle 1       write the answer to GETPIN one byte at a time
 *   refuse VERB     answer VERB with ERR (unknown command)
 *
 *   yes      CONFIRM -> OK
 *   no       CONFIRM -> ERR 83886194 Not confirmed    (the NOTOK button)
 *   cancel   CONFIRM -> ERR 83886179 Operation cancelled (Cancel, Escape)
 *   timeout  CONFIRM -> ERR 83886142 Timeout
 *   notty    CONFIRM -> ERR 83918950 (a system error: no terminal)
 *   never    CONFIRM and MESSAGE are never answered
 *   crash    exits without a word at CONFIRM or MESSAGE
 *   garbage  answers CONFIRM with a line that is not Assuan
 *   quit     exits right after the greeting (writes to it fail: EPIPE)
 *   fromdesc the answer is "ANSWER=yes|no|cancel" found in SETDESC, so
 *            threads sharing one environment get different answers
 * MESSAGE is answered OK except in never and crash modes.
 * GETPIN sends the next configured PIN as D lines, escaped as libassuan
 * does, then OK; when no PIN is left it is answered as CONFIRM would be in
 * `mode` ("yes": OK without data, an empty PIN).  The log gets the command
 * and "DATA n" (the number of D lines sent), never the PIN itself.
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
#define PINS_MAX 16
#define REFUSE_MAX 8
#define PIN_BYTES_MAX 8192
#define DSPLIT_MAX 300 /* escaped, three times that still fits a line */

struct pin {
	char data[PIN_BYTES_MAX];
	size_t len;
	int raw;
};

static char mode[32] = "yes";
static char log_path[4096];
static long delay_ms;
static struct pin pins[PINS_MAX];
static int npins, next_pin;
static size_t dsplit = DSPLIT_MAX;
static int trickle;
static char refuse[REFUSE_MAX][32];
static int nrefuse;

static size_t unescape_n(char *s);

static void add_pin(const char *text, int raw)
{
	struct pin *p;
	if (npins == PINS_MAX || strlen(text) >= PIN_BYTES_MAX)
		exit(2);
	p = &pins[npins++];
	strcpy(p->data, text);
	p->raw = raw;
	p->len = raw ? strlen(p->data) : unescape_n(p->data);
}

static void load_config(void)
{
	const char *path = getenv("KT_FAKE_PINENTRY");
	static char line[PIN_BYTES_MAX + 64];
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
		else if (strncmp(line, "pin ", 4) == 0)
			add_pin(line + 4, 0);
		else if (strncmp(line, "rawpin ", 7) == 0)
			add_pin(line + 7, 1);
		else if (strncmp(line, "dsplit ", 7) == 0)
			dsplit = (size_t)atol(line + 7);
		else if (strncmp(line, "trickle ", 8) == 0)
			trickle = atoi(line + 8);
		else if (strncmp(line, "refuse ", 7) == 0 && nrefuse < REFUSE_MAX)
			snprintf(refuse[nrefuse++], sizeof(refuse[0]), "%.31s", line + 7);
	}
	fclose(f);
	if (dsplit == 0 || dsplit > DSPLIT_MAX)
		exit(2);
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

/* Unescape in place; returns the length (a %00 is a byte like any other). */
static size_t unescape_n(char *s)
{
	char *o = s, *start = s;
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
	return (size_t)(o - start);
}

static void unescape(char *s)
{
	unescape_n(s);
}

/* Everything GETPIN answers goes through here, so `trickle` can split it
 * over as many reads as there are bytes. */
static void send_raw(const char *s, size_t len)
{
	if (!trickle) {
		if (write(1, s, len) != (ssize_t)len)
			exit(3);
		return;
	}
	for (size_t i = 0; i < len; i++) {
		struct timespec ts = { 0, 200000 };
		if (write(1, s + i, 1) != 1)
			exit(3);
		nanosleep(&ts, NULL);
	}
}

/* The next PIN as D lines, escaped as libassuan's assuan_send_data does
 * ('%', CR, LF; other controls too, which is just as valid), then OK. */
static void send_pin(const struct pin *p)
{
	static const char hex[] = "0123456789ABCDEF";
	char line[LINE_MAX_ASSUAN + 8];
	size_t i = 0;
	int lines = 0;

	while (i < p->len) {
		size_t o = 0, end = i + dsplit < p->len ? i + dsplit : p->len;
		line[o++] = 'D';
		line[o++] = ' ';
		for (; i < end; i++) {
			unsigned char c = (unsigned char)p->data[i];
			if (!p->raw && (c == '%' || c < 0x20)) {
				line[o++] = '%';
				line[o++] = hex[c >> 4];
				line[o++] = hex[c & 15];
			} else {
				line[o++] = (char)c;
			}
		}
		line[o++] = '\n';
		send_raw(line, o);
		lines++;
	}
	char note[32];
	int n = snprintf(note, sizeof(note), "DATA %d", lines);
	log_entry("", note, (size_t)n);
	send_raw("OK\n", 3);
}

static int refused(const char *line)
{
	for (int i = 0; i < nrefuse; i++) {
		size_t n = strlen(refuse[i]);
		if (strncmp(line, refuse[i], n) == 0 && (line[n] == '\0' || line[n] == ' '))
			return 1;
	}
	return 0;
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
	else if (strcmp(how, "notty") == 0) /* no terminal to draw on (ENOTTY) */
		say("ERR 83918950 Inappropriate ioctl for device <Pinentry>");
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
		if (refused(line)) {
			say("ERR 83886355 Unknown IPC command <Pinentry>");
		} else if (strncmp(line, "SETDESC ", 8) == 0) {
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
		} else if (strcmp(line, "GETPIN") == 0) {
			wait_a_moment();
			if (next_pin < npins)
				send_pin(&pins[next_pin++]);
			else
				answer(mode);
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
