/*
 * koltamga-audit: check and read the audit log (docs/audit.md).
 *
 *   koltamga-audit verify FILE   "intact: N records" and the last line's
 *                                hash (exit 0), or "broken at record K:
 *                                WHY" (exit 1)
 *   koltamga-audit show FILE     one human-readable line per record
 *
 * Exit 2 for usage errors and a file that cannot be opened: a typing
 * mistake in the path must not read as "intact".
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>

#include <openssl/evp.h>

#include "policy/audit.h"

#define MAX_PAIRS 24

struct pair {
	const char *key, *val;
	size_t key_len, val_len;
	bool is_string;
};

static int usage(void)
{
	fprintf(stderr, "usage: koltamga-audit verify FILE\n"
			"       koltamga-audit show FILE\n");
	return 2;
}

/* Bytes a terminal would act on never reach it: the log is escaped, but a
 * tampered one need not be. */
static void put_safe(const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)p[i];
		putchar(c < 0x20 || c == 0x7f ? '?' : c);
	}
}

/* Split one of our records into key/value pairs without decoding: string
 * values keep their JSON escapes, which `show` prints as they are.  Returns
 * the number of pairs, or -1 when the line is not shaped like a record. */
static int split_record(const char *p, const char *end, struct pair *pairs)
{
	int n = 0;

	if (p >= end || *p++ != '{')
		return -1;
	while (p < end && *p != '}') {
		if (n == MAX_PAIRS)
			return -1;
		if (n > 0 && *p++ != ',')
			return -1;
		if (p >= end || *p++ != '"')
			return -1;
		pairs[n].key = p;
		while (p < end && *p != '"')
			p++;
		if (p >= end)
			return -1;
		pairs[n].key_len = (size_t)(p - pairs[n].key);
		p++;
		if (p >= end || *p++ != ':')
			return -1;
		pairs[n].is_string = p < end && *p == '"';
		if (pairs[n].is_string) {
			pairs[n].val = ++p;
			while (p < end && *p != '"')
				p += *p == '\\' && p + 1 < end ? 2 : 1;
			if (p >= end)
				return -1;
			pairs[n].val_len = (size_t)(p - pairs[n].val);
			p++;
		} else {
			pairs[n].val = p;
			while (p < end && *p != ',' && *p != '}')
				p++;
			pairs[n].val_len = (size_t)(p - pairs[n].val);
		}
		n++;
	}
	return p < end && p + 1 == end ? n : -1;
}

static const struct pair *find(const struct pair *pairs, int n, const char *key)
{
	for (int i = 0; i < n; i++)
		if (pairs[i].key_len == strlen(key) && memcmp(pairs[i].key, key, pairs[i].key_len) == 0)
			return &pairs[i];
	return NULL;
}

static bool is_null(const struct pair *p)
{
	return !p->is_string && p->val_len == 4 && memcmp(p->val, "null", 4) == 0;
}

static void show_line(unsigned long no, const char *line, size_t len)
{
	struct pair pairs[MAX_PAIRS];
	int n = split_record(line, line + len, pairs);

	printf("%6lu  ", no);
	if (n < 0) {
		printf("(not a record; `koltamga-audit verify` says why)\n");
		return;
	}
	/* Time and decision first: what a reader scans for. */
	static const char *const lead[] = {"time", "decision"};
	for (size_t i = 0; i < 2; i++) {
		const struct pair *p = find(pairs, n, lead[i]);
		if (p && !is_null(p))
			put_safe(p->val, p->val_len);
		else
			putchar('-');
		if (i == 0)
			printf("  ");
	}
	for (int i = 0; i < n; i++) {
		const struct pair *p = &pairs[i];
		static const char *const skip[] = {"v", "time", "decision", "prev"};
		bool skipped = is_null(p);
		for (size_t k = 0; k < sizeof(skip) / sizeof(skip[0]); k++)
			skipped |= p->key_len == strlen(skip[k]) && memcmp(p->key, skip[k], p->key_len) == 0;
		if (skipped)
			continue;
		putchar(' ');
		put_safe(p->key, p->key_len);
		putchar('=');
		bool quote = p->is_string && memchr(p->val, ' ', p->val_len);
		if (quote)
			putchar('"');
		put_safe(p->val, p->val_len);
		if (quote)
			putchar('"');
	}
	putchar('\n');
}

static int show(FILE *f)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	unsigned long no = 0;

	while ((len = getline(&line, &cap, f)) > 0) {
		if (line[len - 1] == '\n')
			len--;
		show_line(++no, line, (size_t)len);
	}
	free(line);
	return 0;
}

static int verify(FILE *f, const char *path)
{
	char why[256], hex[65] = "";
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	unsigned long n = 0, broken;
	int rc = 1;

	/* Our shared lock keeps appends out while audit_verify() and the
	 * count below read, so both see the same file. */
	while (flock(fileno(f), LOCK_SH) < 0 && errno == EINTR)
		;
	broken = audit_verify(path, why, sizeof(why));
	if (broken) {
		printf("broken at record %lu: %s\n", broken, why);
		goto out;
	}
	while ((len = getline(&line, &cap, f)) > 0) {
		unsigned char md[EVP_MAX_MD_SIZE];
		unsigned int md_len = 0;
		n++;
		if (!EVP_Digest(line, (size_t)len - 1, md, &md_len, EVP_sha256(), NULL))
			goto out;
		for (unsigned i = 0; i < md_len && i < 32; i++)
			snprintf(hex + 2 * i, 3, "%02x", md[i]);
	}
	printf("intact: %lu records\n", n);
	/* What to note down when rotating, or to keep elsewhere: it is the
	 * only thing that reveals a change to the last record. */
	if (n)
		printf("last: %s\n", hex);
	rc = 0;
out:
	free(line);
	return rc;
}

int main(int argc, char **argv)
{
	FILE *f;
	int rc;

	if (argc != 3 || (strcmp(argv[1], "verify") != 0 && strcmp(argv[1], "show") != 0))
		return usage();
	f = fopen(argv[2], "re");
	if (!f) {
		fprintf(stderr, "koltamga-audit: %s: %s\n", argv[2], strerror(errno));
		return 2;
	}
	rc = strcmp(argv[1], "verify") == 0 ? verify(f, argv[2]) : show(f);
	fclose(f);
	return rc;
}
