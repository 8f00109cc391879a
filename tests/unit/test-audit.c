/*
 * Unit tests of the audit log (module/policy/audit.c): the record's exact
 * shape, the chain, appends from several threads and processes at once,
 * every kind of tampering named at the right record, hostile strings that
 * must stay inside one line, and the file's mode and directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "log.h"
#include "policy/audit.h"

static char tmp[64];   /* this run's directory */
static char path[256]; /* the log of the current test */
static unsigned test_no;

static int setup(void **state)
{
	snprintf(path, sizeof(path), "%s/log-%u/audit.log", tmp, ++test_no);
	return 0;
}

static struct audit_record sample(unsigned i)
{
	/* Constants, not a formatted buffer: the threads of test_concurrent
	 * call this at once. */
	static const char *const reasons[] = {"r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9"};
	struct audit_record r = {
	    .token = "KT0001",
	    .key_id_hex = "01ab",
	    .cert_issuer = "CN=Test CA,O=Koltamga,C=KG",
	    .cert_serial = "0a1b",
	    .mechanism = "CKM_ECDSA_SHA256",
	    .size = 1000 + i,
	    .sha256_hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
	    .program = "/usr/bin/p11tool",
	    .pid = 4242,
	    .decision = "refused",
	    .reason = reasons[i % 10],
	};
	return r;
}

static void append_n(unsigned n)
{
	for (unsigned i = 1; i <= n; i++) {
		struct audit_record r = sample(i);
		assert_int_equal(audit_append(path, &r), CKR_OK);
	}
}

/* The whole file; its length in *len. */
static char *slurp(size_t *len)
{
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	long n = ftell(f);
	assert_true(n >= 0);
	rewind(f);
	char *p = malloc((size_t)n + 1);
	assert_non_null(p);
	assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
	p[n] = '\0';
	fclose(f);
	*len = (size_t)n;
	return p;
}

static void spill(const char *p, size_t len)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(p, 1, len, f), len);
	fclose(f);
}

/* Lines of the file, each without its newline (the last may lack one). */
struct lines {
	char *buf;
	char *line[4096];
	size_t len[4096];
	size_t n;
	bool last_complete;
};

static void split(struct lines *l)
{
	size_t total;
	l->buf = slurp(&total);
	l->n = 0;
	l->last_complete = true;
	for (size_t start = 0; start < total;) {
		char *nl = memchr(l->buf + start, '\n', total - start);
		size_t end = nl ? (size_t)(nl - l->buf) : total;
		assert_true(l->n < KT_ARRAY_SIZE(l->line));
		l->line[l->n] = l->buf + start;
		l->len[l->n++] = end - start;
		l->last_complete = nl != NULL;
		start = end + 1;
	}
}

static void join(struct lines *l, const size_t *order, size_t n)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	for (size_t i = 0; i < n; i++) {
		fwrite(l->line[order[i]], 1, l->len[order[i]], f);
		fputc('\n', f);
	}
	fclose(f);
}

static void sha256_hex(const void *p, size_t len, char hex[65])
{
	unsigned char md[32];
	unsigned int md_len = 0;
	assert_true(EVP_Digest(p, len, md, &md_len, EVP_sha256(), NULL));
	for (unsigned i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

/* The value of "prev" at the end of a line. */
static const char *prev_of(const char *line, size_t len)
{
	assert_true(len > 74);
	assert_memory_equal(line + len - 74, "\"prev\":\"", 8);
	assert_memory_equal(line + len - 2, "\"}", 2);
	return line + len - 66;
}

static void assert_broken(unsigned long expect_at, const char *expect_why)
{
	char why[256];
	unsigned long at = audit_verify(path, why, sizeof(why));
	if (at != expect_at || !strstr(why, expect_why))
		fail_msg("verify: %lu \"%s\", wanted %lu \"%s\"", at, why, expect_at, expect_why);
}

/* --- shape and chain ----------------------------------------------------- */

static void test_format(void **state)
{
	struct audit_record r = sample(1);
	struct lines l;
	char hex[65];

	assert_int_equal(audit_append(path, &r), CKR_OK);
	r.sha256_hex = NULL; /* confidential: no digest */
	r.cert_issuer = NULL;
	r.cert_serial = NULL;
	r.decision = "signed";
	r.reason = NULL;
	r.size = 18446744073709551615ull;
	r.pid = -1;
	assert_int_equal(audit_append(path, &r), CKR_OK);

	split(&l);
	assert_int_equal(l.n, 2);
	assert_true(l.last_complete);
	/* Everything but the time, byte for byte: the key order is fixed. */
	const char *head = "{\"v\":1,\"time\":\"";
	const char *tail1 =
	    "\",\"token\":\"KT0001\",\"key_id\":\"01ab\",\"cert_issuer\":\"CN=Test CA,O=Koltamga,C=KG\","
	    "\"cert_serial\":\"0a1b\",\"mechanism\":\"CKM_ECDSA_SHA256\",\"size\":1001,"
	    "\"sha256\":\"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\","
	    "\"program\":\"/usr/bin/p11tool\",\"pid\":4242,\"decision\":\"refused\",\"reason\":\"r1\","
	    "\"prev\":\"0000000000000000000000000000000000000000000000000000000000000000\"}";
	const char *tail2 =
	    "\",\"token\":\"KT0001\",\"key_id\":\"01ab\",\"cert_issuer\":null,"
	    "\"cert_serial\":null,\"mechanism\":\"CKM_ECDSA_SHA256\",\"size\":18446744073709551615,"
	    "\"program\":\"/usr/bin/p11tool\",\"pid\":-1,\"decision\":\"signed\",\"reason\":null,"
	    "\"prev\":\"";
	size_t hl = strlen(head), t1 = strlen(tail1), t2 = strlen(tail2);
	assert_memory_equal(l.line[0], head, hl);
	assert_int_equal(l.len[0], hl + 20 + t1);
	assert_memory_equal(l.line[0] + hl + 20, tail1, t1);
	assert_int_equal(l.line[0][hl + 4], '-');
	assert_int_equal(l.line[0][hl + 19], 'Z');
	assert_memory_equal(l.line[1], head, hl);
	assert_memory_equal(l.line[1] + hl + 20, tail2, t2);
	assert_null(strstr(l.line[1], "sha256"));

	sha256_hex(l.line[0], l.len[0], hex);
	assert_memory_equal(prev_of(l.line[1], l.len[1]), hex, 64);
	assert_broken(0, "intact: 2 records");
	free(l.buf);
}

static void test_chain_long_records(void **state)
{
	/* Lines longer than the tail reader's chunk, so finding the last
	 * line's start has to go back over several chunks. */
	size_t big = 3 * 4096 + 17;
	char *reason = malloc(big + 1);
	assert_non_null(reason);
	memset(reason, 'x', big);
	reason[big] = '\0';
	for (unsigned i = 0; i < 6; i++) {
		struct audit_record r = sample(i);
		if (i % 2 == 0)
			r.reason = reason;
		assert_int_equal(audit_append(path, &r), CKR_OK);
	}
	free(reason);

	struct lines l;
	split(&l);
	assert_int_equal(l.n, 6);
	for (size_t i = 1; i < l.n; i++) {
		char hex[65];
		sha256_hex(l.line[i - 1], l.len[i - 1], hex);
		assert_memory_equal(prev_of(l.line[i], l.len[i]), hex, 64);
	}
	assert_broken(0, "intact: 6 records");
	free(l.buf);
}

/* Deferred records wait in memory, then join the chain in order, after
 * records written directly meanwhile. */
static void test_deferred(void **state)
{
	struct audit_record r0 = sample(0), r1 = sample(1), r2 = sample(2), r3 = sample(3);
	assert_int_equal(audit_append(path, &r0), CKR_OK);
	assert_int_equal(audit_append_deferred(path, &r1), CKR_OK);
	assert_int_equal(audit_append_deferred(path, &r2), CKR_OK);
	struct lines l;
	split(&l);
	assert_int_equal(l.n, 1); /* still waiting */
	free(l.buf);
	assert_int_equal(audit_append(path, &r3), CKR_OK);
	assert_int_equal(audit_flush(), CKR_OK);
	assert_int_equal(audit_flush(), CKR_OK); /* nothing left: harmless */
	split(&l);
	assert_int_equal(l.n, 4);
	free(l.buf);
	assert_broken(0, "intact: 4 records");
}

/* A record may carry its data instead of the digest: the digest is
 * computed when the record is written, directly or from a batch, and no
 * placeholder is ever left behind. */
static void test_hash_later(void **state)
{
	static const char data[] = "receipt 000417: 12 000 KGS";
	char want[65], field[80];
	struct audit_record r1 = sample(1), r2 = sample(2), big = sample(3);
	r1.sha256_hex = r2.sha256_hex = NULL;
	r1.hash_data = r2.hash_data = data;
	r1.hash_len = r2.hash_len = sizeof(data) - 1;
	sha256_hex(data, sizeof(data) - 1, want);
	snprintf(field, sizeof(field), "\"sha256\":\"%s\"", want);

	assert_int_equal(audit_append(path, &r1), CKR_OK);
	assert_int_equal(audit_append_deferred(path, &r2), CKR_OK);
	/* Too big to copy: refused rather than silently not hashed. */
	big.sha256_hex = NULL;
	big.hash_data = data;
	big.hash_len = AUDIT_HASH_LATER_MAX + 1;
	assert_int_equal(audit_append(path, &big), CKR_FUNCTION_FAILED);
	assert_int_equal(audit_flush(), CKR_OK);

	size_t len;
	char *text = slurp(&len);
	int n = 0;
	for (const char *p = text; (p = strstr(p, field)); p++)
		n++;
	assert_int_equal(n, 2);
	assert_null(strstr(text, "\"sha256\":\"0000000000000000"));
	assert_null(strstr(text, "receipt")); /* the data itself never */
	free(text);
	assert_broken(0, "intact: 2 records");
}

static void test_mode_and_directory(void **state)
{
	struct stat st;
	char dir[160];
	mode_t old = umask(022);

	snprintf(path, sizeof(path), "%s/deep-%u/a/b/audit.log", tmp, test_no);
	snprintf(dir, sizeof(dir), "%s/deep-%u/a/b", tmp, test_no);
	assert_int_equal(stat(dir, &st), -1);
	append_n(1);
	umask(old);

	assert_int_equal(stat(path, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0600);
	assert_int_equal(stat(dir, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0700);
	assert_broken(0, "intact: 1 records");
}

static void test_empty_and_missing(void **state)
{
	char why[64];
	assert_int_equal(audit_verify(path, why, sizeof(why)), 0);
	assert_non_null(strstr(why, "missing"));

	char dir[128];
	snprintf(dir, sizeof(dir), "%s/log-%u", tmp, test_no);
	assert_int_equal(mkdir(dir, 0700), 0);
	spill("", 0);
	assert_int_equal(audit_verify(path, why, sizeof(why)), 0);
	assert_string_equal(why, "empty");
	/* No why buffer is fine too. */
	assert_int_equal(audit_verify(path, NULL, 0), 0);
}

static void test_append_fails_cleanly(void **state)
{
	struct audit_record r = sample(1);
	char file[160];

	/* A component of the directory is a regular file. */
	snprintf(file, sizeof(file), "%s/plain-%u", tmp, test_no);
	int fd = open(file, O_WRONLY | O_CREAT | O_EXCL, 0600);
	assert_true(fd >= 0);
	close(fd);
	snprintf(path, sizeof(path), "%s/sub/audit.log", file);
	assert_int_equal(audit_append(path, &r), CKR_FUNCTION_FAILED);
	assert_int_equal(audit_append(NULL, &r), CKR_FUNCTION_FAILED);
	assert_int_equal(audit_append(file, NULL), CKR_FUNCTION_FAILED);
	/* A directory is not a log. */
	assert_int_equal(audit_append(tmp, &r), CKR_FUNCTION_FAILED);
}

/* --- concurrency --------------------------------------------------------- */

#define PER_WRITER 40

static void *thread_main(void *arg)
{
	char token[16];
	snprintf(token, sizeof(token), "thread-%d", (int)(intptr_t)arg);
	for (unsigned i = 0; i < PER_WRITER; i++) {
		struct audit_record r = sample(i);
		r.token = token;
		if (audit_append(path, &r) != CKR_OK)
			return (void *)1;
	}
	return NULL;
}

static void test_concurrent(void **state)
{
	pid_t kids[2];
	pthread_t threads[4];

	append_n(1); /* the directory exists before the race starts */
	/* Fork before any thread exists: the children inherit an unlocked
	 * mutex, and they write with whole processes against the threads. */
	for (int k = 0; k < 2; k++) {
		kids[k] = fork();
		assert_true(kids[k] >= 0);
		if (kids[k] == 0) {
			char token[16];
			snprintf(token, sizeof(token), "proc-%d", k);
			for (unsigned i = 0; i < PER_WRITER; i++) {
				struct audit_record r = sample(i);
				r.token = token;
				r.pid = getpid();
				if (audit_append(path, &r) != CKR_OK)
					_exit(1);
			}
			_exit(0);
		}
	}
	for (int t = 0; t < 4; t++)
		assert_int_equal(pthread_create(&threads[t], NULL, thread_main, (void *)(intptr_t)t), 0);
	for (int t = 0; t < 4; t++) {
		void *ret = (void *)1;
		assert_int_equal(pthread_join(threads[t], &ret), 0);
		assert_null(ret);
	}
	for (int k = 0; k < 2; k++) {
		int status = -1;
		assert_int_equal(waitpid(kids[k], &status, 0), kids[k]);
		assert_true(WIFEXITED(status));
		assert_int_equal(WEXITSTATUS(status), 0);
	}

	struct lines l;
	split(&l);
	assert_int_equal(l.n, 1 + 6 * PER_WRITER);
	assert_true(l.last_complete);
	unsigned count[6] = {0};
	for (size_t i = 1; i < l.n; i++) {
		char token[32];
		const char *t = strstr(l.line[i], "\"token\":\"");
		assert_non_null(t);
		assert_true(t < l.line[i] + l.len[i]);
		int n = sscanf(t, "\"token\":\"%31[^\"]\"", token);
		assert_int_equal(n, 1);
		int w;
		if (sscanf(token, "thread-%d", &w) == 1)
			count[w]++;
		else if (sscanf(token, "proc-%d", &w) == 1)
			count[4 + w]++;
		else
			fail_msg("stray token %s", token);
	}
	for (int w = 0; w < 6; w++)
		assert_int_equal(count[w], PER_WRITER);
	char why[64];
	snprintf(why, sizeof(why), "intact: %u records", 1 + 6 * PER_WRITER);
	assert_broken(0, why);
	free(l.buf);
}

/* --- tampering ----------------------------------------------------------- */

static void test_tamper_edit(void **state)
{
	struct lines l;
	size_t len;

	append_n(5);
	/* A byte of record 3's reason: still a valid record, so it is the
	 * link from record 4 that breaks. */
	char *all = slurp(&len);
	char *r3 = strstr(all, "\"reason\":\"r3\"");
	assert_non_null(r3);
	r3[10] = 'X';
	spill(all, len);
	assert_broken(4, "prev mismatch: not the SHA-256 of record 3");
	r3[10] = 'r';
	spill(all, len);
	assert_broken(0, "intact: 5 records");

	/* A byte of record 3's own prev: record 3 is the one broken. */
	split(&l);
	size_t off = (size_t)(prev_of(l.line[2], l.len[2]) - l.buf);
	free(l.buf);
	all[off] = all[off] == 'a' ? 'b' : 'a';
	spill(all, len);
	assert_broken(3, "prev mismatch: not the SHA-256 of record 2");

	/* A byte that breaks the JSON of record 3. */
	all[off] = all[off] == 'a' ? 'b' : 'a';
	all[off - 2] = '\'';
	spill(all, len);
	assert_broken(3, "bad JSON");
	free(all);
}

static void test_tamper_delete(void **state)
{
	struct lines l;
	append_n(5);
	split(&l);
	/* The record that followed it is now record 2, and its link to
	 * record 1 is the one that breaks. */
	size_t order[] = {0, 2, 3, 4};
	join(&l, order, 4);
	assert_broken(2, "prev mismatch: not the SHA-256 of record 1");
	/* Deleting the first record breaks the new first one. */
	size_t from_second[] = {1, 2, 3, 4};
	join(&l, from_second, 4);
	assert_broken(1, "first record's prev is not 64 zeros");
	free(l.buf);
}

static void test_tamper_swap(void **state)
{
	struct lines l;
	append_n(5);
	split(&l);
	size_t order[] = {0, 2, 1, 3, 4};
	join(&l, order, 5);
	assert_broken(2, "prev mismatch: not the SHA-256 of record 1");
	free(l.buf);
}

static void test_tamper_truncate(void **state)
{
	size_t len;
	append_n(5);
	char *all = slurp(&len);
	spill(all, len - 10);
	assert_broken(5, "truncated line");
	/* Cut just before the newline: the record looks whole but the
	 * newline our writer always sends with it is missing. */
	spill(all, len - 1);
	assert_broken(5, "truncated line");
	free(all);
}

static void test_tamper_forged(void **state)
{
	size_t len;
	append_n(5);
	char *all = slurp(&len);
	struct lines l;
	split(&l);
	/* A copy of record 5 appended as record 6: well formed, wrong prev. */
	char *forged = malloc(len + l.len[4] + 2);
	assert_non_null(forged);
	memcpy(forged, all, len);
	memcpy(forged + len, l.line[4], l.len[4]);
	forged[len + l.len[4]] = '\n';
	spill(forged, len + l.len[4] + 1);
	assert_broken(6, "prev mismatch: not the SHA-256 of record 5");
	free(forged);
	free(l.buf);
	free(all);
}

static void test_tamper_shape(void **state)
{
	size_t len;
	append_n(3);
	char *all = slurp(&len);
	char *copy = malloc(len + 64);
	assert_non_null(copy);

	/* A field removed from record 2. */
	char *m = strstr(strchr(all, '\n'), ",\"mechanism\":");
	char *end = strstr(m, ",\"size\"");
	size_t cut = (size_t)(end - m);
	memcpy(copy, all, (size_t)(m - all));
	memcpy(copy + (m - all), end, len - (size_t)(end - all));
	spill(copy, len - cut);
	assert_broken(2, "missing field \"mechanism\"");

	/* A field added to record 2. */
	size_t at = (size_t)(m - all);
	const char *extra = ",\"pin\":\"1234\"";
	memcpy(copy, all, at);
	memcpy(copy + at, extra, strlen(extra));
	memcpy(copy + at + strlen(extra), all + at, len - at);
	spill(copy, len + strlen(extra));
	assert_broken(2, "unexpected field \"pin\"");

	/* A blank line between records. */
	char *nl = strchr(all, '\n');
	at = (size_t)(nl - all) + 1;
	memcpy(copy, all, at);
	copy[at] = '\n';
	memcpy(copy + at + 1, all + at, len - at);
	spill(copy, len + 1);
	assert_broken(2, "empty line");

	free(copy);
	free(all);
}

/* A crash mid-write leaves a line without its newline: the next record
 * must start on a line of its own, chain to the partial line as it is, and
 * verify must name the partial line. */
static void test_partial_line_recovery(void **state)
{
	size_t len;
	append_n(3);
	char *all = slurp(&len);
	spill(all, len - 30);
	free(all);

	struct audit_record r = sample(9);
	assert_int_equal(audit_append(path, &r), CKR_OK);
	struct lines l;
	split(&l);
	assert_int_equal(l.n, 4);
	assert_true(l.last_complete);
	char hex[65];
	sha256_hex(l.line[2], l.len[2], hex);
	assert_memory_equal(prev_of(l.line[3], l.len[3]), hex, 64);
	assert_memory_equal(l.line[3], "{\"v\":1,", 7);
	assert_broken(3, "truncated line (the record ends early)");
	free(l.buf);
}

/* --- hostile strings ----------------------------------------------------- */

static void test_hostile_strings(void **state)
{
	const char *hostile = "a\"b\\c\nd\re\tf\x01g\x1b[31mh\x7fi"
			      "\xff j \xc3 k \xc0\xaf l \xed\xa0\x80 m \xf4\x90\x80\x80 n"
			      "\xe2\x82 o \xd0\x9a\xd1\x8b\xd1\x80\xd0\xb3\xd1\x8b\xd0\xb7 \xf0\x9f\x94\x8f "
			      "\"}\n{\"v\":1,\"prev\":\"0000\"}";
	struct audit_record r = sample(1);
	r.token = hostile;
	r.program = hostile;
	r.reason = hostile;
	r.cert_issuer = "CN=\"Quoted\\, Inc\"";
	assert_int_equal(audit_append(path, &r), CKR_OK);
	append_n(2);

	struct lines l;
	split(&l);
	assert_int_equal(l.n, 3);
	const char *line = l.line[0];
	size_t len = l.len[0];
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)line[i];
		assert_true(c >= 0x20 && c != 0x7f);
		assert_true(c != 0xff && c != 0xc0);
	}
	assert_non_null(strstr(line, "a\\\"b\\\\c\\u000ad\\u000de\\u0009f\\u0001g\\u001b[31mh\\u007fi"));
	assert_non_null(strstr(line, "\xef\xbf\xbd j \xef\xbf\xbd k \xef\xbf\xbd\xef\xbf\xbd l "
				     "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd m "));
	/* Well-formed UTF-8 (Cyrillic, a 4-byte emoji) passes unchanged. */
	assert_non_null(strstr(line, "\xd0\x9a\xd1\x8b\xd1\x80\xd0\xb3\xd1\x8b\xd0\xb7 \xf0\x9f\x94\x8f"));
	assert_non_null(strstr(line, "\"cert_issuer\":\"CN=\\\"Quoted\\\\, Inc\\\"\""));
	assert_broken(0, "intact: 3 records");
	free(l.buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup(test_format, setup),
	    cmocka_unit_test_setup(test_chain_long_records, setup),
	    cmocka_unit_test_setup(test_deferred, setup),
	    cmocka_unit_test_setup(test_mode_and_directory, setup),
	    cmocka_unit_test_setup(test_empty_and_missing, setup),
	    cmocka_unit_test_setup(test_append_fails_cleanly, setup),
	    cmocka_unit_test_setup(test_concurrent, setup),
	    cmocka_unit_test_setup(test_tamper_edit, setup),
	    cmocka_unit_test_setup(test_tamper_delete, setup),
	    cmocka_unit_test_setup(test_tamper_swap, setup),
	    cmocka_unit_test_setup(test_tamper_truncate, setup),
	    cmocka_unit_test_setup(test_tamper_forged, setup),
	    cmocka_unit_test_setup(test_tamper_shape, setup),
	    cmocka_unit_test_setup(test_partial_line_recovery, setup),
	    cmocka_unit_test_setup(test_hostile_strings, setup),
	    cmocka_unit_test_setup(test_hash_later, setup),
	};
	snprintf(tmp, sizeof(tmp), "/tmp/koltamga-audit-XXXXXX");
	if (!mkdtemp(tmp))
		return 1;
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
	if (system(cmd) != 0)
		rc = rc ? rc : 1;
	return rc;
}
