#include "common.h"

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

void kt_pad(CK_UTF8CHAR *field, size_t field_len, const char *text)
{
	size_t n = strlen(text);
	if (n > field_len)
		n = field_len;
	memset(field, ' ', field_len);
	memcpy(field, text, n);
}

void kt_wipe(void *p, size_t len)
{
	if (p && len)
		OPENSSL_cleanse(p, len);
}

/*
 * Secrets too big for the secure heap (a document of some megabytes being
 * signed) get pages of their own: excluded from core dumps, locked when
 * RLIMIT_MEMLOCK allows.  Few live at once, so a list finds them again.
 */
#define BIG_SECRET (64 * 1024)

struct big_secret {
	void *p;
	size_t len;
	struct big_secret *next;
};

static pthread_mutex_t big_lock = PTHREAD_MUTEX_INITIALIZER;
static struct big_secret *bigs;

static void *big_alloc(size_t len)
{
	struct big_secret *b = malloc(sizeof(*b));
	void *p = b ? mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) : MAP_FAILED;
	if (p == MAP_FAILED) {
		free(b);
		return NULL;
	}
	madvise(p, len, MADV_DONTDUMP);
	mlock(p, len); /* best effort */
	b->p = p;
	b->len = len;
	pthread_mutex_lock(&big_lock);
	b->next = bigs;
	bigs = b;
	pthread_mutex_unlock(&big_lock);
	return p; /* anonymous pages come zeroed */
}

/* Unmapped and true when p is one of ours. */
static bool big_free(void *p)
{
	struct big_secret *b = NULL;
	pthread_mutex_lock(&big_lock);
	for (struct big_secret **pp = &bigs; *pp; pp = &(*pp)->next) {
		if ((*pp)->p == p) {
			b = *pp;
			*pp = b->next;
			break;
		}
	}
	pthread_mutex_unlock(&big_lock);
	if (!b)
		return false;
	OPENSSL_cleanse(b->p, b->len);
	munlock(b->p, b->len);
	munmap(b->p, b->len);
	free(b);
	return true;
}

void *kt_alloc_secret(size_t len)
{
	if (!len)
		len = 1;
	void *p = CRYPTO_secure_malloc_initialized() ? OPENSSL_secure_zalloc(len) : NULL;
	if (!p && len >= BIG_SECRET)
		p = big_alloc(len);
	return p ? p : calloc(1, len);
}

void kt_free_secret(void *p, size_t len)
{
	if (!p)
		return;
	if (CRYPTO_secure_allocated(p)) {
		OPENSSL_secure_clear_free(p, len);
		return;
	}
	if (big_free(p))
		return;
	kt_wipe(p, len);
	free(p);
}

void kt_secure_heap_init(size_t bytes)
{
	static pthread_mutex_t once = PTHREAD_MUTEX_INITIALIZER;
	pthread_mutex_lock(&once);
	/* Once per process and never undone: the heap may hold the
	 * application's own secrets by then.  mlock may be refused
	 * (RLIMIT_MEMLOCK): the heap still keeps secrets out of core dumps
	 * and away from ordinary allocations. */
	if (bytes && !CRYPTO_secure_malloc_initialized())
		CRYPTO_secure_malloc_init(bytes, 16);
	pthread_mutex_unlock(&once);
}

void kt_hex(char *out, const void *p, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[b[i] >> 4];
		out[2 * i + 1] = digits[b[i] & 15];
	}
	out[2 * n] = '\0';
}

static char exe_path[PATH_MAX + 64];
static long relay_pid; /* the client's pid behind p11-kit-remote, else 0 */

/*
 * Behind p11-kit's server the module runs in p11-kit-remote, one process
 * per client connection with the client's socket as standard input; the
 * signer should read the application's name, not that relay's.  The
 * socket's peer credentials name the client; its executable is readable
 * when it runs as our user (or we are root).
 */
static bool relay_client(char *out, size_t len, long *pid)
{
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	char link[64], exe[PATH_MAX];
	const char *base = strrchr(exe_path, '/');
	if (!base || strcmp(base + 1, "p11-kit-remote") != 0)
		return false;
	if (getsockopt(0, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0 || cred.pid <= 0)
		return false;
	snprintf(link, sizeof(link), "/proc/%ld/exe", (long)cred.pid);
	ssize_t n = readlink(link, exe, sizeof(exe) - 1);
	if (n <= 0)
		snprintf(exe, sizeof(exe), "unknown program");
	else
		exe[n] = '\0';
	snprintf(out, len, "%s (through p11-kit-remote)", exe);
	*pid = (long)cred.pid;
	return true;
}

/* This process's pid, kept rather than asked for every audit record (a
 * system call per signature); a forked child puts its own in. */
static volatile long own_pid;

static void own_pid_after_fork(void)
{
	own_pid = (long)getpid();
}

static void read_exe(void)
{
	char relay[sizeof(exe_path)];
	own_pid = (long)getpid();
	pthread_atfork(NULL, NULL, own_pid_after_fork);
	ssize_t n = readlink("/proc/self/exe", exe_path, PATH_MAX - 1);
	exe_path[n > 0 ? n : 0] = '\0';
	if (relay_client(relay, sizeof(relay), &relay_pid))
		memcpy(exe_path, relay, sizeof(exe_path));
}

static pthread_once_t program_once = PTHREAD_ONCE_INIT;

/* Read once per process: a seal may sign thousands of times a second and
 * the answer does not change (exec reloads us; fork keeps the program,
 * and a forked child's pid is asked afresh below). */
const char *kt_program(void)
{
	pthread_once(&program_once, read_exe);
	return exe_path[0] ? exe_path : "unknown program";
}

long kt_program_pid(void)
{
	pthread_once(&program_once, read_exe);
	return relay_pid ? relay_pid : own_pid;
}

int kt_hex_digit(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}
