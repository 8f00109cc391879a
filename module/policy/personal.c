#include "policy/personal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "certattrs.h"
#include "koltamga/pkcs11v.h"
#include "log.h"
#include "policy/audit.h"
#include "policy/confirm.h"

static const struct config *conf;

void personal_configure(const struct config *c)
{
	conf = c;
}

/* What the holder reads in the question and the auditor in the record. */
static const char *data_name(CK_ATTRIBUTE_TYPE type)
{
	switch (type) {
	case CKA_KT_BIRTH_DATE:
		return "birth date";
	case CKA_KT_BIRTH_PLACE:
		return "birth place";
	case CKA_KT_PERSONAL_ID:
		return "personal number";
	case CKA_KT_PERSONAL_ID_KIND:
		return "kind of personal number";
	case CKA_KT_PERSON_ADDRESS:
		return "address";
	default:
		return "personal data";
	}
}

bool personal_requested(const struct attrs *cert, const CK_ATTRIBUTE *tmpl, CK_ULONG n, char *names,
			size_t names_len)
{
	size_t used = 0;
	bool any = false;
	if (names_len)
		names[0] = '\0';
	for (CK_ULONG i = 0; i < n; i++) {
		if (!certattrs_is_personal(tmpl[i].type) || !attrs_has(cert, tmpl[i].type))
			continue;
		any = true;
		if (names_len > used) {
			int k = snprintf(names + used, names_len - used, "%s%s", used ? ", " : "",
					 data_name(tmpl[i].type));
			used += k > 0 ? (size_t)k : 0;
		}
	}
	return any;
}

bool personal_in_template(const CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
	for (CK_ULONG i = 0; i < n; i++)
		if (certattrs_is_personal(tmpl[i].type))
			return true;
	return false;
}

bool personal_needs_consent(void)
{
	return conf && conf->personal_consent && !consent_given(conf->consent_file, kt_program());
}

bool personal_ask(const char *holder, const char *certificate, const char *names)
{
	struct confirm_config cc = {
		.backend = (enum confirm_backend)conf->confirm_backend,
		.program = conf->confirm_program,
		.timeout = conf->confirm_timeout,
	};
	struct confirm_request req = {
		.kind = CONFIRM_DISCLOSURE,
		.title = names,
		.signer = holder,
		.certificate = certificate,
		.program = kt_program(),
		.pid = kt_program_pid(),
	};
	char why[256] = "";
	if (confirm_ask(&cc, &req, why, sizeof(why)) != CONFIRM_YES) {
		kt_log("personal data withheld from %s: %s", kt_program(), why[0] ? why : "not allowed");
		return false;
	}
	if (consent_remember(conf->consent_file, kt_program()) != CKR_OK)
		kt_log("consent for %s given but not remembered: it will be asked again", kt_program());
	return true;
}

void personal_audit(const char *token_serial, const char *cert_issuer, const char *cert_serial,
		    const char *names, bool disclosed)
{
	if (!conf || !conf->audit_log)
		return;
	struct audit_record r = {
		.token = token_serial,
		.cert_issuer = cert_issuer,
		.cert_serial = cert_serial,
		.mechanism = NULL,
		.program = kt_program(),
		.pid = kt_program_pid(),
		.decision = disclosed ? "disclosed" : "withheld",
		.reason = names,
	};
	audit_append_deferred(conf->audit_log, &r);
}

/* --- the consent file ----------------------------------------------------- */

/* A program path that fits on one line of the file. */
static bool storable(const char *program)
{
	return program && program[0] == '/' && !strchr(program, '\n');
}

bool consent_given(const char *path, const char *program)
{
	FILE *f = path && storable(program) ? fopen(path, "re") : NULL;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	bool found = false;
	if (!f)
		return false;
	while (!found && (n = getline(&line, &cap, f)) > 0) {
		if (line[n - 1] == '\n')
			line[n - 1] = '\0';
		found = strcmp(line, program) == 0;
	}
	free(line);
	fclose(f);
	return found;
}

/* mkdir -p of the file's directory, new levels 0700. */
static int make_parents(const char *path)
{
	char *dir = strdup(path);
	int err = 0;
	if (!dir)
		return ENOMEM;
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = '\0';
		for (char *p = dir + 1;; p++) {
			if (*p != '/' && *p != '\0')
				continue;
			char c = *p;
			*p = '\0';
			if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
				err = errno;
				break;
			}
			*p = c;
			if (!c)
				break;
		}
	}
	free(dir);
	return err;
}

CK_RV consent_remember(const char *path, const char *program)
{
	if (!path || !storable(program))
		return CKR_FUNCTION_FAILED;
	if (consent_given(path, program))
		return CKR_OK;
	int err = make_parents(path);
	int fd = err ? -1 : open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		kt_log("consent file %s: %s", path, strerror(err ? err : errno));
		return CKR_FUNCTION_FAILED;
	}
	flock(fd, LOCK_EX);
	size_t len = strlen(program);
	bool ok = write(fd, program, len) == (ssize_t)len && write(fd, "\n", 1) == 1 && fsync(fd) == 0;
	close(fd);
	if (!ok)
		kt_log("consent file %s: cannot write", path);
	return ok ? CKR_OK : CKR_FUNCTION_FAILED;
}

int consent_revoke(const char *path, const char *program)
{
	FILE *in = path ? fopen(path, "re") : NULL;
	char tmp[4096], *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int removed = 0;
	if (!in)
		return errno == ENOENT ? 0 : -1;
	if (snprintf(tmp, sizeof(tmp), "%s.new", path) >= (int)sizeof(tmp)) {
		fclose(in);
		return -1;
	}
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	FILE *out = fd >= 0 ? fdopen(fd, "w") : NULL;
	if (!out) {
		if (fd >= 0)
			close(fd);
		fclose(in);
		return -1;
	}
	while ((n = getline(&line, &cap, in)) > 0) {
		bool nl = line[n - 1] == '\n';
		if (nl)
			line[n - 1] = '\0';
		if (strcmp(line, program) == 0) {
			removed = 1;
			continue;
		}
		fprintf(out, "%s\n", line);
	}
	free(line);
	fclose(in);
	bool ok = fflush(out) == 0 && fsync(fileno(out)) == 0;
	ok = fclose(out) == 0 && ok;
	if (!ok || rename(tmp, path) != 0) {
		unlink(tmp);
		return -1;
	}
	return removed;
}
