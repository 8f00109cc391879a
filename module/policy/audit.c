/*
 * The audit log (see audit.h and docs/audit.md).
 *
 * One JSON object per line, keys in a fixed order, the last key "prev"
 * holding the SHA-256 (hex) of the previous line's bytes without its
 * newline, 64 zeros for the first line.  Changing, removing, inserting or
 * reordering a line therefore breaks the link of the line after it.
 *
 * Appending is serialised twice: a process-wide mutex for our own threads
 * and flock(LOCK_EX) on the file for other processes.  Under both, the last
 * line is read from the end of the file (backwards, in chunks: the log grows
 * without bound and must not be read whole), hashed, and the new line is
 * written with one write() and made durable with fsync().
 *
 * A crash in the middle of a write leaves a last line without its newline.
 * The next record then starts with a newline of its own, so it is never
 * glued to the broken one, and its prev is the hash of the partial line as
 * it is: the chain stays linked, and audit_verify() names the partial line
 * as the first broken record ("truncated line"), so the crash stays visible.
 *
 * Only metadata reaches this file (the caller decides what, audit.h says
 * what never does), and nothing of a record ever reaches kt_log(): failure
 * messages name the path and errno only.
 */
#include "audit.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "crypto.h"
#include "log.h"

#define HASH_HEX_LEN 64
/* Deferred records written together at most (see audit_append_deferred) */
#define DEFER_MAX 4096
#define DEFER_SECONDS 1
#define TAIL_CHUNK   4096

/* Threads of one process: flock() alone would also serialise them (each
 * append opens its own file description), but the mutex keeps the ordering
 * independent of how the file system implements flock. */
static pthread_mutex_t audit_mutex = PTHREAD_MUTEX_INITIALIZER;

static const char zero_hash[HASH_HEX_LEN + 1] =
    "0000000000000000000000000000000000000000000000000000000000000000";

/* --- a growable byte buffer, failure remembered until the end ---------- */

struct buf {
	char *p;
	size_t len, cap;
	bool failed;
};

static void buf_add(struct buf *b, const void *data, size_t n)
{
	if (b->failed)
		return;
	if (n > b->cap - b->len) {
		size_t cap = b->cap ? b->cap : 512;
		while (n > cap - b->len) {
			if (cap > SIZE_MAX / 2) {
				b->failed = true;
				return;
			}
			cap *= 2;
		}
		char *p = realloc(b->p, cap);
		if (!p) {
			b->failed = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
}

static void buf_adds(struct buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

static void buf_addc(struct buf *b, char c)
{
	buf_add(b, &c, 1);
}

/* --- UTF-8 and JSON strings -------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at p (at most avail bytes), or 0
 * when it is not one: overlong forms, surrogates and code points above
 * U+10FFFF count as malformed (RFC 3629). */
static size_t utf8_len(const unsigned char *p, size_t avail)
{
	unsigned char c = p[0];
	unsigned char lo = 0x80, hi = 0xbf;
	size_t n;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return 0;
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (avail < n || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (p[i] < 0x80 || p[i] > 0xbf)
			return 0;
	return n;
}

/* A C string as a JSON string (NULL as null).  Control characters become
 * \u00XX so that a record can never contain a newline of its own; DEL too,
 * so that `show` and a plain `cat` never pass it to a terminal.  Malformed
 * UTF-8 becomes U+FFFD: the log stays valid UTF-8 for every JSON reader. */
static void buf_add_json(struct buf *b, const char *s)
{
	if (!s) {
		buf_adds(b, "null");
		return;
	}
	const unsigned char *p = (const unsigned char *)s;
	size_t left = strlen(s);

	buf_addc(b, '"');
	while (left) {
		/* Runs of plain printable ASCII, the whole of most values, go in
		 * with one copy (a seal writes thousands of records a second). */
		size_t run = 0;
		while (run < left && p[run] >= 0x20 && p[run] < 0x7f && p[run] != '"' && p[run] != '\\')
			run++;
		if (run) {
			buf_add(b, p, run);
			p += run;
			left -= run;
			continue;
		}
		size_t n = utf8_len(p, left);
		if (n == 0) {
			buf_adds(b, "\xef\xbf\xbd");
			n = 1;
		} else if (n > 1) {
			buf_add(b, p, n);
		} else if (*p == '"' || *p == '\\') {
			char esc[2] = { '\\', (char)*p };
			buf_add(b, esc, 2);
		} else {
			char esc[8];
			snprintf(esc, sizeof(esc), "\\u%04x", *p);
			buf_adds(b, esc);
		}
		p += n;
		left -= n;
	}
	buf_addc(b, '"');
}

static bool sha256_hex(const void *data, size_t len, char hex[HASH_HEX_LEN + 1])
{
	unsigned char md[32];
	if (!crypto_sha256(data, len, md))
		return false;
	kt_hex(hex, md, sizeof(md));
	return true;
}

/* --- appending --------------------------------------------------------- */

/* pread() until len bytes or an error: 0, or an errno value. */
static int pread_full(int fd, void *p, size_t len, off_t off)
{
	while (len) {
		ssize_t n = pread(fd, p, len, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno;
		if (n == 0)
			return EIO; /* shrank under our lock: someone ignored it */
		p = (char *)p + n;
		len -= (size_t)n;
		off += n;
	}
	return 0;
}

/* The hash of the file's last line (64 zeros for an empty file) and whether
 * that line lacks its newline.  Reads backwards from the end in chunks to
 * find the line's start, then hashes it forwards, so memory stays constant
 * however long the file or the line.  0, or an errno value. */
static int tail_hash(int fd, off_t size, char hex[HASH_HEX_LEN + 1], bool *partial)
{
	unsigned char chunk[TAIL_CHUNK];
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;
	EVP_MD_CTX *ctx = NULL;
	off_t start = 0, end, pos;
	int err;

	*partial = false;
	if (size == 0) {
		memcpy(hex, zero_hash, sizeof(zero_hash));
		return 0;
	}
	err = pread_full(fd, chunk, 1, size - 1);
	if (err)
		goto out;
	*partial = chunk[0] != '\n';
	end = *partial ? size : size - 1;

	for (pos = end; pos > 0;) {
		size_t n = pos > TAIL_CHUNK ? TAIL_CHUNK : (size_t)pos;
		err = pread_full(fd, chunk, n, pos - (off_t)n);
		if (err)
			goto out;
		unsigned char *nl = memrchr(chunk, '\n', n);
		if (nl) {
			start = pos - (off_t)n + (nl - chunk) + 1;
			break;
		}
		pos -= (off_t)n;
	}

	err = ENOMEM;
	ctx = EVP_MD_CTX_new();
	if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL))
		goto out;
	for (pos = start; pos < end;) {
		size_t n = end - pos > TAIL_CHUNK ? TAIL_CHUNK : (size_t)(end - pos);
		err = pread_full(fd, chunk, n, pos);
		if (err)
			goto out;
		err = ENOMEM;
		if (!EVP_DigestUpdate(ctx, chunk, n))
			goto out;
		pos += (off_t)n;
	}
	err = ENOMEM;
	if (!EVP_DigestFinal_ex(ctx, md, &md_len) || md_len != HASH_HEX_LEN / 2)
		goto out;
	kt_hex(hex, md, HASH_HEX_LEN / 2);
	err = 0;
out:
	EVP_MD_CTX_free(ctx);
	return err;
}

/* mkdir -p of the directory holding path, each new level 0700: the log
 * says who signed what and when, which is nobody else's business. */
static int make_parents(const char *path)
{
	int err = 0;
	char *dir = strdup(path);
	if (!dir)
		return ENOMEM;
	char *slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		goto out;
	*slash = '\0';
	for (char *p = dir + 1;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char c = *p;
		*p = '\0';
		if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
			err = errno;
			goto out;
		}
		*p = c;
		if (!c)
			break;
	}
out:
	free(dir);
	return err;
}

/* Open for appending, creating the file (0600) and its directory when
 * missing.  O_RDWR rather than O_WRONLY: the previous line is read through
 * the same descriptor that holds the lock, so a log rotated (renamed) in
 * between cannot make us chain to the wrong file. */
static int open_log(const char *path)
{
	const int flags = O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC;
	int fd = open(path, flags, 0600);
	if (fd < 0 && errno == ENOENT) {
		int err = make_parents(path);
		if (err) {
			errno = err;
			return -1;
		}
		fd = open(path, flags, 0600);
	}
	return fd;
}

/* The record's body; *hash_at gets the offset of a digest placeholder to
 * fill in at writing time (hash_data), or SIZE_MAX. */
static void record_body(struct buf *b, const struct audit_record *rec, const char *when, size_t *hash_at)
{
	char num[32];

	buf_adds(b, "{\"v\":1,\"time\":");
	buf_add_json(b, when);
	buf_adds(b, ",\"token\":");
	buf_add_json(b, rec->token);
	buf_adds(b, ",\"key_id\":");
	buf_add_json(b, rec->key_id_hex);
	buf_adds(b, ",\"cert_issuer\":");
	buf_add_json(b, rec->cert_issuer);
	buf_adds(b, ",\"cert_serial\":");
	buf_add_json(b, rec->cert_serial);
	buf_adds(b, ",\"mechanism\":");
	buf_add_json(b, rec->mechanism);
	snprintf(num, sizeof(num), "%llu", rec->size);
	buf_adds(b, ",\"size\":");
	buf_adds(b, num);
	/* Absent rather than null: a confidential document leaves no trace
	 * of its digest, not even a placeholder that invites filling in. */
	*hash_at = SIZE_MAX;
	if (rec->sha256_hex) {
		buf_adds(b, ",\"sha256\":");
		buf_add_json(b, rec->sha256_hex);
	} else if (rec->hash_data) {
		buf_adds(b, ",\"sha256\":\"");
		*hash_at = b->len;
		buf_add(b, zero_hash, HASH_HEX_LEN);
		buf_addc(b, '"');
	}
	buf_adds(b, ",\"program\":");
	buf_add_json(b, rec->program);
	snprintf(num, sizeof(num), "%ld", rec->pid);
	buf_adds(b, ",\"pid\":");
	buf_adds(b, num);
	buf_adds(b, ",\"decision\":");
	buf_add_json(b, rec->decision);
	buf_adds(b, ",\"reason\":");
	buf_add_json(b, rec->reason);
	buf_adds(b, ",\"prev\":\"");
}

/* Records waiting to be written: their bodies (each up to and including
 * `"prev":"`) one after another in `text`, record i ending at ends[i]. */
struct batch {
	struct buf text;
	size_t ends[DEFER_MAX];
	/* Digests still to compute: where they go in text, and the data. */
	size_t hash_at[DEFER_MAX];
	void *hash_data[DEFER_MAX];
	size_t hash_len[DEFER_MAX];
	size_t n;
	char *path;
	time_t since;
	struct batch *next; /* in the queue of batches ready to write */
};

static void batch_clear(struct batch *bt)
{
	for (size_t i = 0; i < bt->n; i++) {
		kt_free_secret(bt->hash_data[i], bt->hash_len[i]);
		bt->hash_data[i] = NULL;
	}
	free(bt->text.p);
	free(bt->path);
	bt->text = (struct buf){0};
	bt->n = 0;
	bt->path = NULL;
	bt->since = 0;
}

/* "YYYY-MM-DDTHH:MM:SSZ" for now; formatted once a second per thread. */
static bool time_text(time_t now, char when[32])
{
	static __thread time_t cached_at = (time_t)-1;
	static __thread char cached[32];
	struct tm tm;
	if (now != cached_at) {
		if (!gmtime_r(&now, &tm) || !strftime(cached, sizeof(cached), "%Y-%m-%dT%H:%M:%SZ", &tm))
			return false;
		cached_at = now;
	}
	memcpy(when, cached, sizeof(cached));
	return true;
}

/* Append the batch's records in order: each gets the hash of the line
 * before it, all go out in one write() under the lock, then fsync(). */
static CK_RV write_batch(struct batch *bt)
{
	CK_RV rv = CKR_FUNCTION_FAILED;
	struct buf out = {0};
	const char *path = bt->path, *what = "cannot open";
	int fd = -1, err = 0;
	struct stat st;
	char prev[HASH_HEX_LEN + 1];
	bool partial = false;

	if (!path || !*path) {
		what = "no path";
		err = EINVAL;
		goto out;
	}
	pthread_mutex_lock(&audit_mutex);
	fd = open_log(path);
	if (fd < 0) {
		err = errno;
		goto unlock;
	}
	what = "not a regular file";
	err = EINVAL;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		goto unlock;
	what = "cannot lock";
	while ((err = flock(fd, LOCK_EX) < 0 ? errno : 0) == EINTR)
		;
	if (err)
		goto unlock;

	/* Everything from here on sees the file as no one else can change
	 * it: its size and its last line. */
	what = "cannot read";
	if (fstat(fd, &st) < 0) {
		err = errno;
		goto unlock;
	}
	err = tail_hash(fd, st.st_size, prev, &partial);
	if (err)
		goto unlock;
	if (partial)
		buf_addc(&out, '\n');
	/* The deferred digests, before anything is chained. */
	for (size_t i = 0; i < bt->n; i++) {
		char hex[HASH_HEX_LEN + 1];
		if (!bt->hash_data[i])
			continue;
		if (!sha256_hex(bt->hash_data[i], bt->hash_len[i], hex)) {
			what = "cannot build the record";
			err = ENOMEM;
			goto unlock;
		}
		memcpy(bt->text.p + bt->hash_at[i], hex, HASH_HEX_LEN);
	}
	for (size_t i = 0, from = 0; i < bt->n; from = bt->ends[i++]) {
		size_t start = out.len;
		buf_add(&out, bt->text.p + from, bt->ends[i] - from);
		buf_add(&out, prev, HASH_HEX_LEN);
		buf_adds(&out, "\"}");
		if (out.failed || !sha256_hex(out.p + start, out.len - start, prev)) {
			what = "cannot build the record";
			err = ENOMEM;
			goto unlock;
		}
		buf_addc(&out, '\n');
	}
	if (out.failed) {
		what = "cannot build the record";
		err = ENOMEM;
		goto unlock;
	}

	/* One write() for all the lines.  Should a regular file take less
	 * (a signal, a nearly full disk), the rest follows under the same
	 * lock, so no other writer can come between the parts. */
	what = "cannot write";
	for (size_t off = 0; off < out.len;) {
		ssize_t k = write(fd, out.p + off, out.len - off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			err = k < 0 ? errno : EIO;
			goto unlock;
		}
		off += (size_t)k;
	}
	/* A signature without its durable record is what the log exists to
	 * prevent: a failed fsync fails the append. */
	what = "cannot sync";
	if (fsync(fd) < 0) {
		err = errno;
		goto unlock;
	}
	rv = CKR_OK;
unlock:
	if (fd >= 0)
		close(fd); /* also drops the flock */
	pthread_mutex_unlock(&audit_mutex);
out:
	if (rv != CKR_OK)
		kt_log("audit log %s: %s: %s", path ? path : "(none)", what, strerror(err));
	free(out.p);
	return rv;
}

/* Add a record's body to the batch; false (batch unchanged) without
 * memory. */
static bool batch_add(struct batch *bt, const struct audit_record *rec, const char *path)
{
	char when[32];
	time_t now = time(NULL);
	size_t start = bt->text.len;
	if (bt->n == DEFER_MAX || !time_text(now, when))
		return false;
	if (!bt->path && !(bt->path = strdup(path)))
		return false;
	void *copy = NULL;
	if (!rec->sha256_hex && rec->hash_data) {
		/* Ordinary heap, wiped when freed: thousands of these must
		 * not crowd keys out of the small secure heap. */
		if (rec->hash_len > AUDIT_HASH_LATER_MAX || !(copy = malloc(rec->hash_len ? rec->hash_len : 1)))
			return false;
		if (rec->hash_len)
			memcpy(copy, rec->hash_data, rec->hash_len);
	}
	size_t hash_at;
	record_body(&bt->text, rec, when, &hash_at);
	if (bt->text.failed) {
		/* realloc failure leaves the earlier records intact */
		bt->text.len = start;
		bt->text.failed = false;
		kt_free_secret(copy, rec->hash_len);
		return false;
	}
	bt->hash_at[bt->n] = hash_at;
	bt->hash_data[bt->n] = copy;
	bt->hash_len[bt->n] = copy ? rec->hash_len : 0;
	if (bt->n == 0)
		bt->since = now;
	bt->ends[bt->n++] = bt->text.len;
	return true;
}

CK_RV audit_append(const char *path, const struct audit_record *rec)
{
	struct batch *bt = calloc(1, sizeof(*bt));
	CK_RV rv = CKR_FUNCTION_FAILED;
	if (!rec)
		kt_log("audit log %s: no record", path ? path : "(none)");
	else if (!path || !*path)
		kt_log("audit log: no path");
	else if (!bt || !batch_add(bt, rec, path))
		kt_log("audit log %s: cannot build the record", path);
	else
		rv = write_batch(bt);
	if (bt)
		batch_clear(bt);
	free(bt);
	return rv;
}

/*
 * Deferred records (seals signing thousands of times a second): kept in
 * memory and written together, with one fsync, when DEFER_MAX have
 * gathered, when the oldest is DEFER_SECONDS old, or at audit_shutdown()
 * (C_Finalize, and the module's unloading or the process's exit: Java's
 * SunPKCS11 never calls C_Finalize).  A crash loses at most that much of
 * the seal's record; the chain stays verifiable.
 *
 * The age limit needs someone awake when no signature comes: a flusher
 * thread, started with the first deferred record, sleeps until the
 * oldest pending record is due.  An application that forbids our threads
 * (CKF_LIBRARY_CANT_CREATE_OS_THREADS) gets the check at each record
 * instead.
 *
 * The thread that writes a batch takes it whole and writes it without
 * holding defer_mutex, so signing threads go on filling the next batch
 * during the write and fsync; flush_mutex keeps the batches in the file in
 * the order they were filled.
 */
static pthread_mutex_t defer_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t flush_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t defer_cond = PTHREAD_COND_INITIALIZER;
static struct batch *pending;
/* Batches handed to the flusher (full, or old enough), oldest first: a
 * signer whose batch fills starts the next at once instead of waiting for
 * the write.  Bounded: beyond READY_MAX the signer writes (backpressure). */
#define READY_MAX 4
static struct batch *ready, **ready_tail = &ready;
static unsigned n_ready;
/* A forked child keeps its parent's batches referenced here (leak checkers
 * would otherwise call them the child's). */
static struct batch *volatile abandoned_batch, *volatile abandoned_ready;
static bool threads_allowed = true;
static bool flusher_running, flusher_stop;
static pthread_t flusher;

/* With defer_mutex held: the pending batch joins the ready queue. */
static void pending_to_ready(void)
{
	if (!pending)
		return;
	pending->next = NULL;
	*ready_tail = pending;
	ready_tail = &pending->next;
	n_ready++;
	pending = NULL;
}

/* Write the ready batches and the pending one, in order; with flush_mutex
 * held (which keeps batches in the file in the order they were filled). */
static CK_RV flush_pending(void)
{
	pthread_mutex_lock(&defer_mutex);
	pending_to_ready();
	struct batch *bt = ready;
	ready = NULL;
	ready_tail = &ready;
	n_ready = 0;
	pthread_mutex_unlock(&defer_mutex);
	CK_RV rv = CKR_OK;
	while (bt) {
		struct batch *next = bt->next;
		CK_RV r = write_batch(bt);
		if (rv == CKR_OK)
			rv = r;
		batch_clear(bt);
		free(bt);
		bt = next;
	}
	return rv;
}

static CK_RV flush(void)
{
	pthread_mutex_lock(&flush_mutex);
	CK_RV rv = flush_pending();
	pthread_mutex_unlock(&flush_mutex);
	return rv;
}

static bool batch_due(const struct batch *bt, time_t now)
{
	return bt && bt->n && (bt->n == DEFER_MAX || now - bt->since >= DEFER_SECONDS);
}

static void *flusher_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&defer_mutex);
	while (!flusher_stop) {
		if (ready || batch_due(pending, time(NULL))) {
			pthread_mutex_unlock(&defer_mutex);
			flush();
			pthread_mutex_lock(&defer_mutex);
		} else if (pending && pending->n) {
			struct timespec until = { .tv_sec = pending->since + DEFER_SECONDS };
			pthread_cond_timedwait(&defer_cond, &defer_mutex, &until);
		} else {
			pthread_cond_wait(&defer_cond, &defer_mutex);
		}
	}
	pthread_mutex_unlock(&defer_mutex);
	return NULL;
}

/* With defer_mutex held.  The thread takes no signals: they are the
 * application's. */
static void flusher_start(void)
{
	sigset_t all, old;
	if (flusher_running || !threads_allowed)
		return;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	flusher_stop = false;
	flusher_running = pthread_create(&flusher, NULL, flusher_main, NULL) == 0;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* A forked child must not write its parent's pending records a second
 * time: they are the parent's to write.  Nor has it the parent's flusher. */
static void defer_atfork_child(void)
{
	pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
	pthread_cond_t fresh_cond = PTHREAD_COND_INITIALIZER;
	defer_mutex = fresh;
	flush_mutex = fresh;
	defer_cond = fresh_cond;
	abandoned_batch = pending;
	abandoned_ready = ready;
	pending = NULL;
	ready = NULL;
	ready_tail = &ready;
	n_ready = 0;
	flusher_running = false;
	flusher_stop = false;
}

static pthread_once_t defer_once = PTHREAD_ONCE_INIT;

static void audit_at_exit(void)
{
	audit_shutdown();
}

/*
 * At the first deferred record.  The exit handler, registered from here
 * (a shared object's atexit also runs at its dlclose), writes a seal's
 * last records when the application never calls C_Finalize (Java's
 * SunPKCS11) and stops the flusher before its code goes away.  Registered
 * now, after OpenSSL has registered its own cleanup, so it runs before
 * that: exit handlers run last-registered first, and the records' hashes
 * need OpenSSL.
 */
static void defer_register(void)
{
	pthread_atfork(NULL, NULL, defer_atfork_child);
	atexit(audit_at_exit);
}

void audit_allow_threads(bool allowed)
{
	pthread_mutex_lock(&defer_mutex);
	threads_allowed = allowed;
	pthread_mutex_unlock(&defer_mutex);
}

CK_RV audit_append_deferred(const char *path, const struct audit_record *rec)
{
	CK_RV rv = CKR_OK;
	if (!path || !*path || !rec)
		return audit_append(path, rec);
	pthread_once(&defer_once, defer_register);
	for (;;) {
		pthread_mutex_lock(&defer_mutex);
		if (!pending)
			pending = calloc(1, sizeof(*pending));
		bool other_path = pending && pending->path && strcmp(pending->path, path) != 0;
		if (pending && !other_path && batch_add(pending, rec, path)) {
			bool due = batch_due(pending, time(NULL));
			if (pending->n == 1)
				flusher_start();
			/* A new batch tells the flusher its deadline; a due one
			 * goes to it whole, and the signer goes back to signing
			 * while another core hashes, writes and syncs. */
			if (flusher_running && due && n_ready < READY_MAX) {
				pending_to_ready();
				due = false;
			}
			if (flusher_running && (!pending || pending->n == 1))
				pthread_cond_signal(&defer_cond);
			pthread_mutex_unlock(&defer_mutex);
			if (due) {
				CK_RV r2 = flush();
				if (rv == CKR_OK)
					rv = r2;
			}
			return rv;
		}
		bool full = pending && pending->n == DEFER_MAX;
		pthread_mutex_unlock(&defer_mutex);
		if (!other_path && !full)
			/* No memory to defer it: write it now rather than
			 * lose it. */
			return audit_append(path, rec);
		/* Another log's records, or a full batch someone else is
		 * about to write: out with them first, then try again. */
		CK_RV r2 = flush();
		if (rv == CKR_OK)
			rv = r2;
	}
}

CK_RV audit_flush(void)
{
	return flush();
}

CK_RV audit_shutdown(void)
{
	pthread_mutex_lock(&defer_mutex);
	bool running = flusher_running;
	flusher_stop = true;
	pthread_cond_signal(&defer_cond);
	pthread_mutex_unlock(&defer_mutex);
	if (running)
		pthread_join(flusher, NULL);
	pthread_mutex_lock(&defer_mutex);
	flusher_running = false;
	flusher_stop = false;
	pthread_mutex_unlock(&defer_mutex);
	return flush();
}

/* --- verifying ---------------------------------------------------------- */

enum field_type {
	F_VERSION, /* the number 1 */
	F_TIME,	   /* "YYYY-MM-DDTHH:MM:SSZ" */
	F_STRING,  /* any string, or null */
	F_NUMBER,  /* a JSON integer */
	F_HASH,	   /* 64 lowercase hex digits */
};

/* The record's shape, in the order audit_append() writes it.  A strict
 * reader of exactly this shape, not a general JSON parser: anything our
 * writer cannot have produced is a sign of tampering. */
static const struct field {
	const char *name;
	enum field_type type;
	bool optional;
} fields[] = {
    {"v", F_VERSION, false},	    {"time", F_TIME, false},	      {"token", F_STRING, false},
    {"key_id", F_STRING, false},    {"cert_issuer", F_STRING, false}, {"cert_serial", F_STRING, false},
    {"mechanism", F_STRING, false}, {"size", F_NUMBER, false},	      {"sha256", F_STRING, true},
    {"program", F_STRING, false},   {"pid", F_NUMBER, false},	      {"decision", F_STRING, false},
    {"reason", F_STRING, false},    {"prev", F_HASH, false},
};

struct reader {
	const unsigned char *start, *p, *end;
	char *why;
	size_t why_len;
};

static void say(char *why, size_t why_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void say(char *why, size_t why_len, const char *fmt, ...)
{
	va_list ap;
	if (!why || !why_len)
		return;
	va_start(ap, fmt);
	vsnprintf(why, why_len, fmt, ap);
	va_end(ap);
}

/* Every failure of the reader goes through here: running out of line is a
 * record cut short, anything else is malformed JSON. */
static bool bad(struct reader *r, const char *what)
{
	if (r->p >= r->end)
		say(r->why, r->why_len, "truncated line (the record ends early)");
	else
		say(r->why, r->why_len, "bad JSON: %s at byte %td", what, r->p - r->start + 1);
	return false;
}

static bool expect(struct reader *r, char c)
{
	if (r->p >= r->end || *r->p != (unsigned char)c) {
		char what[32];
		snprintf(what, sizeof(what), "expected '%c'", c);
		return bad(r, what);
	}
	r->p++;
	return true;
}

/* A JSON string: escapes and UTF-8 checked.  When out is given, the plain
 * bytes are copied there (escapes are refused: the only strings we need
 * back, keys, the time and prev, never contain any). */
static bool read_string(struct reader *r, char *out, size_t out_len)
{
	size_t n = 0;

	if (!expect(r, '"'))
		return false;
	while (r->p < r->end && *r->p != '"') {
		if (*r->p == '\\') {
			if (out)
				return bad(r, "escape where none belongs");
			if (++r->p >= r->end)
				return bad(r, "bad escape");
			unsigned char c = *r->p++;
			if (c == 'u') {
				unsigned cp = 0;
				for (int i = 0; i < 4; i++) {
					int v = r->p < r->end ? kt_hex_digit(*r->p) : -1;
					if (v < 0)
						return bad(r, "bad \\u escape");
					cp = cp << 4 | (unsigned)v;
					r->p++;
				}
				/* Lone surrogates are not text; a high one must
				 * pair with a low one. */
				if (cp >= 0xdc00 && cp <= 0xdfff)
					return bad(r, "lone surrogate");
				if (cp >= 0xd800 && cp <= 0xdbff) {
					unsigned lo = 0;
					if (r->end - r->p < 6 || r->p[0] != '\\' || r->p[1] != 'u')
						return bad(r, "lone surrogate");
					r->p += 2;
					for (int i = 0; i < 4; i++) {
						int v = kt_hex_digit(*r->p);
						if (v < 0)
							return bad(r, "bad \\u escape");
						lo = lo << 4 | (unsigned)v;
						r->p++;
					}
					if (lo < 0xdc00 || lo > 0xdfff)
						return bad(r, "lone surrogate");
				}
			} else if (!strchr("\"\\/bfnrt", c) || c == '\0') {
				r->p--;
				return bad(r, "bad escape");
			}
			continue;
		}
		if (*r->p < 0x20)
			return bad(r, "control character in a string");
		size_t len = utf8_len(r->p, (size_t)(r->end - r->p));
		if (len == 0)
			return bad(r, "invalid UTF-8");
		if (out) {
			if (n + len >= out_len)
				return bad(r, "string too long");
			memcpy(out + n, r->p, len);
			n += len;
		}
		r->p += len;
	}
	if (out)
		out[n] = '\0';
	return expect(r, '"');
}

/* A JSON integer (-?(0|[1-9][0-9]*)), at most 20 digits: size and pid. */
static bool read_number(struct reader *r, bool *is_one)
{
	const unsigned char *start = r->p;
	size_t digits = 0;

	if (r->p < r->end && *r->p == '-')
		r->p++;
	if (r->p < r->end && *r->p == '0') {
		r->p++;
		digits = 1;
	} else {
		while (r->p < r->end && *r->p >= '0' && *r->p <= '9') {
			r->p++;
			digits++;
		}
	}
	if (digits == 0 || digits > 20)
		return bad(r, "bad number");
	if (r->p < r->end && (*r->p == '.' || *r->p == 'e' || *r->p == 'E' || (*r->p >= '0' && *r->p <= '9')))
		return bad(r, "bad number");
	if (is_one)
		*is_one = r->p - start == 1 && *start == '1';
	return true;
}

static bool is_time(const char *s)
{
	static const char shape[] = "dddd-dd-ddTdd:dd:ddZ";
	if (strlen(s) != sizeof(shape) - 1)
		return false;
	for (size_t i = 0; shape[i]; i++)
		if (shape[i] == 'd' ? s[i] < '0' || s[i] > '9' : s[i] != shape[i])
			return false;
	return true;
}

static bool read_value(struct reader *r, const struct field *f, char prev[HASH_HEX_LEN + 1])
{
	char text[HASH_HEX_LEN + 2];
	bool one = false;

	switch (f->type) {
	case F_VERSION:
		if (!read_number(r, &one))
			return false;
		if (!one) {
			say(r->why, r->why_len, "unknown record version (\"v\" is not 1)");
			return false;
		}
		return true;
	case F_NUMBER:
		return read_number(r, NULL);
	case F_STRING:
		if (r->end - r->p >= 4 && memcmp(r->p, "null", 4) == 0) {
			r->p += 4;
			return true;
		}
		return read_string(r, NULL, 0);
	case F_TIME:
		if (!read_string(r, text, sizeof(text)))
			return false;
		if (!is_time(text)) {
			say(r->why, r->why_len, "bad value of \"time\"");
			return false;
		}
		return true;
	case F_HASH:
		if (!read_string(r, text, sizeof(text)))
			return false;
		if (strlen(text) != HASH_HEX_LEN || strspn(text, "0123456789abcdef") != HASH_HEX_LEN) {
			say(r->why, r->why_len, "bad value of \"prev\" (not 64 hex digits)");
			return false;
		}
		memcpy(prev, text, HASH_HEX_LEN + 1);
		return true;
	}
	return false;
}

static int field_index(const char *name, size_t from)
{
	for (size_t i = from; i < KT_ARRAY_SIZE(fields); i++)
		if (strcmp(fields[i].name, name) == 0)
			return (int)i;
	return -1;
}

/* One line (without its newline) against our shape; its prev is returned. */
static bool read_record(const char *line, size_t len, char prev[HASH_HEX_LEN + 1], char *why, size_t why_len)
{
	const unsigned char *start = (const unsigned char *)line;
	struct reader r = {start, start, start + len, why, why_len};
	size_t i = 0;

	if (len == 0) {
		say(why, why_len, "bad JSON: empty line");
		return false;
	}
	if (!expect(&r, '{'))
		return false;
	while (i < KT_ARRAY_SIZE(fields)) {
		char key[32];
		if (r.p < r.end && *r.p == '}') {
			while (fields[i].optional)
				i++;
			say(why, why_len, "missing field \"%s\"", fields[i].name);
			return false;
		}
		if (i > 0 && !expect(&r, ','))
			return false;
		if (!read_string(&r, key, sizeof(key)))
			return false;
		int j = field_index(key, i);
		if (j < 0) {
			if (field_index(key, 0) >= 0)
				say(why, why_len, "field \"%s\" repeated or out of order", key);
			else
				say(why, why_len, "unexpected field \"%s\"", key);
			return false;
		}
		for (; i < (size_t)j; i++) {
			if (!fields[i].optional) {
				say(why, why_len, "missing field \"%s\"", fields[i].name);
				return false;
			}
		}
		if (!expect(&r, ':') || !read_value(&r, &fields[i], prev))
			return false;
		i++;
	}
	if (r.p < r.end && *r.p == ',') {
		say(why, why_len, "unexpected field after \"prev\"");
		return false;
	}
	if (!expect(&r, '}'))
		return false;
	if (r.p != r.end) {
		say(why, why_len, "bad JSON: text after the record");
		return false;
	}
	return true;
}

unsigned long audit_verify(const char *path, char *why, size_t why_len)
{
	unsigned long broken = 0, n = 0;
	char expected[HASH_HEX_LEN + 1], prev[HASH_HEX_LEN + 1];
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	FILE *f = NULL;

	memcpy(expected, zero_hash, sizeof(zero_hash));
	say(why, why_len, "empty");
	f = path ? fopen(path, "re") : NULL;
	if (!f) {
		if (path && errno == ENOENT) {
			say(why, why_len, "missing (no such file)");
		} else {
			/* Not readable is not intact: nothing could be checked. */
			say(why, why_len, "cannot read: %s", path ? strerror(errno) : "no path");
			broken = 1;
		}
		goto out;
	}
	/* Shared lock: no append is half-visible while we read.  Best effort
	 * (a file system without flock still gets verified). */
	while (flock(fileno(f), LOCK_SH) < 0 && errno == EINTR)
		;

	while ((len = getline(&line, &cap, f)) > 0) {
		n++;
		if (line[len - 1] != '\n') {
			say(why, why_len, "truncated line (no newline at the end of the file)");
			broken = n;
			goto out;
		}
		len--;
		if (!read_record(line, (size_t)len, prev, why, why_len)) {
			broken = n;
			goto out;
		}
		if (strcmp(prev, expected) != 0) {
			if (n == 1)
				say(why, why_len,
				    "prev mismatch: the first record's prev is not 64 zeros "
				    "(records removed from the start?)");
			else
				say(why, why_len,
				    "prev mismatch: not the SHA-256 of record %lu (that record was changed, "
				    "or records were removed, inserted or reordered here)",
				    n - 1);
			broken = n;
			goto out;
		}
		if (!sha256_hex(line, (size_t)len, expected)) {
			say(why, why_len, "cannot compute SHA-256");
			broken = n;
			goto out;
		}
	}
	if (ferror(f)) {
		say(why, why_len, "cannot read: %s", strerror(errno));
		broken = n + 1;
		goto out;
	}
	if (n)
		say(why, why_len, "intact: %lu records", n);
out:
	if (f)
		fclose(f);
	free(line);
	return broken;
}
