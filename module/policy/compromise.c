#include "policy/compromise.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

/* mkdir -p, each new level 0700: reports name people's keys. */
static int make_dirs(const char *dir)
{
	char *p = strdup(dir);
	int err = 0;
	if (!p)
		return ENOMEM;
	for (char *s = p + 1;; s++) {
		if (*s != '/' && *s != '\0')
			continue;
		char c = *s;
		*s = '\0';
		if (mkdir(p, 0700) < 0 && errno != EEXIST) {
			err = errno;
			break;
		}
		*s = c;
		if (!c)
			break;
	}
	free(p);
	return err;
}

/* One "name: value" line.  Values come from certificates and applications:
 * control characters become '?', so a value can never forge a line. */
static void field(FILE *f, const char *name, const char *value)
{
	fprintf(f, "%s: ", name);
	if (!value || !*value) {
		fputs("(none)\n", f);
		return;
	}
	for (const unsigned char *p = (const unsigned char *)value; *p; p++)
		fputc(*p < 0x20 || *p == 0x7f ? '?' : *p, f);
	fputc('\n', f);
}

CK_RV compromise_write(const char *dir, const struct compromise_report *r, char *path, size_t path_len)
{
	static unsigned long counter;
	char name[PATH_MAX], tmp[PATH_MAX] = "", when[32], stamp[32];
	time_t now = time(NULL);
	struct tm tm;
	FILE *f = NULL;
	int fd = -1, err = 0;
	const char *what = "no directory configured";

	if (!dir || dir[0] != '/' || !r) {
		err = EINVAL;
		goto fail;
	}
	if (!gmtime_r(&now, &tm)) {
		what = "no time";
		err = EINVAL;
		goto fail;
	}
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
	unsigned long n = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
	/* A file name from fixed characters only: the key id is hex. */
	char id[17] = "";
	if (r->key_id_hex)
		for (size_t i = 0; i < 16 && r->key_id_hex[i]; i++)
			id[i] = strchr("0123456789abcdef", r->key_id_hex[i]) ? r->key_id_hex[i] : 'x';
	int k = snprintf(name, sizeof(name), "%s/compromise-%s-%s-%ld-%lu.txt", dir, stamp, id[0] ? id : "noid",
			 r->pid, n);
	if (k < 0 || (size_t)k >= sizeof(name) || snprintf(tmp, sizeof(tmp), "%s.part", name) >= (int)sizeof(tmp)) {
		what = "path too long";
		err = ENAMETOOLONG;
		goto fail;
	}
	what = "cannot create the directory";
	if ((err = make_dirs(dir)) != 0)
		goto fail;
	what = "cannot create";
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 || !(f = fdopen(fd, "w"))) {
		err = errno;
		goto fail;
	}
	fd = -1;
	fputs("koltamga key compromise report\n", f);
	field(f, "time", when);
	field(f, "token serial", r->token_serial);
	field(f, "token label", r->token_label);
	field(f, "marked object", r->object_class);
	field(f, "key id", r->key_id_hex);
	field(f, "key label", r->key_label);
	field(f, "certificate issuer", r->cert_issuer);
	field(f, "certificate serial", r->cert_serial_hex);
	field(f, "reason", r->reason);
	field(f, "marked by", r->marked_by);
	field(f, "program", r->program);
	fprintf(f, "pid: %ld\n", r->pid);
	fputs("action: ask the certification centre to revoke this certificate; "
	      "every signature with this key is refused from now on\n", f);
	what = "cannot write";
	if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
		err = errno;
		goto fail;
	}
	if (fclose(f) != 0) {
		f = NULL;
		err = errno;
		goto fail;
	}
	f = NULL;
	what = "cannot rename";
	if (rename(tmp, name) != 0) {
		err = errno;
		goto fail;
	}
	if (path && path_len)
		snprintf(path, path_len, "%s", name);
	kt_log("key compromise report written to %s", name);
	return CKR_OK;
fail:
	if (f)
		fclose(f);
	if (fd >= 0)
		close(fd);
	if (tmp[0] && err != EINVAL && err != ENAMETOOLONG)
		unlink(tmp);
	kt_log("key compromise report in %s: %s: %s", dir ? dir : "(none)", what, strerror(err));
	return CKR_FUNCTION_FAILED;
}
