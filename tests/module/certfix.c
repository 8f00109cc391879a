/* Helpers for module tests with extra configuration; see certfix.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "certfix.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char base_dir[sizeof(fx.dir)]; /* the fx.dir whose text `base` is */
static char *base;

static char *slurp(const char *path)
{
	FILE *fp = fopen(path, "rb");
	char *buf = NULL;
	size_t len = 0, cap = 0, got;

	if (!fp)
		return NULL;
	do {
		if (cap - len < 4096) {
			char *n = realloc(buf, cap + 8192);
			if (!n) {
				free(buf);
				fclose(fp);
				return NULL;
			}
			buf = n;
			cap += 8192;
		}
		got = fread(buf + len, 1, cap - len - 1, fp);
		len += got;
	} while (got > 0);
	fclose(fp);
	buf[len] = '\0';
	return buf;
}

int certfix_conf(const char *extra)
{
	FILE *fp;

	if (!fx.dir[0] || !fx.conf[0])
		return -1;
	if (!base || strcmp(base_dir, fx.dir) != 0) {
		free(base);
		base = slurp(fx.conf);
		if (!base)
			return -1;
		/* Module-wide keys must come before any section: the
		 * fixture's [token] sections go after the extra text. */
		size_t tail = strlen(fx.conf_tail), len = strlen(base);
		if (tail && len >= tail && strcmp(base + len - tail, fx.conf_tail) == 0)
			base[len - tail] = '\0';
		snprintf(base_dir, sizeof(base_dir), "%s", fx.dir);
	}
	fp = fopen(fx.conf, "w");
	if (!fp)
		return -1;
	fputs(base, fp);
	if (base[0] && base[strlen(base) - 1] != '\n')
		fputc('\n', fp);
	if (extra)
		fputs(extra, fp);
	if (extra && extra[0] && extra[strlen(extra) - 1] != '\n')
		fputc('\n', fp);
	fputs(fx.conf_tail, fp);
	return fclose(fp) == 0 ? 0 : -1;
}

char *certfix_read(const char *path)
{
	char *text = slurp(path);
	return text ? text : strdup("");
}

int certfix_count(const char *hay, const char *needle)
{
	int n = 0;
	for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

CK_RV certfix_reinit(const char *extra)
{
	fx.f->C_Finalize(NULL);
	if (certfix_conf(extra) != 0)
		return CKR_GENERAL_ERROR;
	return fixture_initialize();
}

static int saved_fd = -1;
static char cap_path[PATH_MAX];

void certfix_stderr_begin(void)
{
	int fd;

	assert_true(saved_fd < 0);
	snprintf(cap_path, sizeof(cap_path), "%s/stderr.txt", fx.dir);
	fd = open(cap_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	fflush(stderr);
	saved_fd = dup(2);
	assert_true(saved_fd >= 0);
	assert_true(dup2(fd, 2) == 2);
	close(fd);
}

char *certfix_stderr_end(void)
{
	char *text;

	assert_true(saved_fd >= 0);
	fflush(stderr);
	assert_true(dup2(saved_fd, 2) == 2);
	close(saved_fd);
	saved_fd = -1;
	text = slurp(cap_path);
	assert_non_null(text);
	unlink(cap_path);
	fputs(text, stderr);
	return text;
}
