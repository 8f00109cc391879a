/*
 * kt-bench: how fast is koltamga, next to SoftHSM2 and to OpenSSL itself?
 *
 * One run measures, on the same machine and each for a fixed time:
 *   1. signatures per second (RSA-2048 PKCS#1 v1.5, ECDSA P-256, Ed25519) at
 *      1 and 2 threads, through each PKCS#11 module and through raw EVP;
 *   2. creating many token CKO_DATA objects, then finding one by label;
 *   3. C_Initialize + C_Login, and the scrypt KDF on its own;
 *   4. koltamga's pkcs11 token driver over a SoftHSM2 token against SoftHSM2
 *      directly: the same keys, signatures per second both ways.
 *
 * Every target runs in its own forked child: each module then starts from a
 * fresh process (nothing one module's OpenSSL use leaves behind can slow the
 * next), a module that crashes costs only its own column, and the parent,
 * which never touches OpenSSL or a module, just collects and prints.
 *
 * This is a measurement, not a test: targets are printed with PASS/MISS, and
 * the exit status is 0 whatever they say (2 only for bad usage).
 */
/* configure passes it on the command line; the standalone build does not. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/param_build.h>
#include <openssl/params.h>

#define SO_PIN	    "kt-bench-so-pin"
#define USER_PIN    "kt-bench-user-pin"
#define TOKEN_LABEL "kt-bench"
#define MSG_LEN	    1024

/* The targets the team set; printed, never enforced. */
#define TARGET_SIGN_RATIO      0.90  /* koltamga / raw OpenSSL, 1 thread */
#define TARGET_SCALING	       1.80  /* 2 threads / 1 thread */
#define TARGET_FIND_MS	       0.050 /* one lookup by label */
#define TARGET_DEVICE_OVERHEAD 0.05  /* koltamga over SoftHSM2 vs SoftHSM2 directly */

#define NOTE_LEN 160

enum { ALG_RSA, ALG_EC, ALG_ED, N_ALGS };
enum { T_OPENSSL, T_KOLTAMGA, T_SOFTHSM, T_DEVICE, N_TARGETS };
enum { PHASE_SIGN = 1, PHASE_OBJECTS = 2, PHASE_LOGIN = 4, PHASE_DEVICE = 8 };
/* The phases of the three separate targets; `device` has a child of its own. */
#define PHASES_SEPARATE (PHASE_SIGN | PHASE_OBJECTS | PHASE_LOGIN)

/* One row per signature algorithm: what to ask a token and OpenSSL for. */
struct alg {
	const char *name;
	const char *mech_name;
	CK_MECHANISM_TYPE gen_mech;
	CK_MECHANISM_TYPE sign_mech;
	/* Used when sign_mech is missing: the raw mechanism over a SHA-256
	 * digest the bench computes, inside the timed loop (SoftHSM2 2.6 has
	 * CKM_ECDSA but not CKM_ECDSA_SHA256). */
	CK_MECHANISM_TYPE raw_mech;
	const char *raw_mech_name;
	CK_KEY_TYPE key_type;
	CK_ULONG modulus_bits; /* RSA */
	/* CKA_EC_PARAMS encodings to try in turn: PKCS#11 3.0 allows both the
	 * OID and the curve name for Edwards curves, and modules differ. */
	const unsigned char *ec_params[2];
	size_t ec_params_len[2];
	const char *ossl_type;
	const char *ossl_group;
	const char *ossl_digest; /* NULL: the algorithm hashes by itself */
};

static const unsigned char oid_p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const unsigned char oid_ed25519[] = {0x06, 0x03, 0x2b, 0x65, 0x70};
static const unsigned char name_ed25519[] = {0x13, 0x0c, 'e', 'd', 'w', 'a', 'r',
					     'd',  's',	 '2', '5', '5', '1', '9'};

static const struct alg algs[N_ALGS] = {
    [ALG_RSA] =
	{
	    .name = "RSA-2048",
	    .mech_name = "CKM_SHA256_RSA_PKCS",
	    .gen_mech = CKM_RSA_PKCS_KEY_PAIR_GEN,
	    .sign_mech = CKM_SHA256_RSA_PKCS,
	    .key_type = CKK_RSA,
	    .modulus_bits = 2048,
	    .ossl_type = "RSA",
	    .ossl_digest = "SHA256",
	},
    [ALG_EC] =
	{
	    .name = "ECDSA P-256",
	    .mech_name = "CKM_ECDSA_SHA256",
	    .gen_mech = CKM_EC_KEY_PAIR_GEN,
	    .sign_mech = CKM_ECDSA_SHA256,
	    .raw_mech = CKM_ECDSA,
	    .raw_mech_name = "CKM_ECDSA",
	    .key_type = CKK_EC,
	    .ec_params = {oid_p256},
	    .ec_params_len = {sizeof oid_p256},
	    .ossl_type = "EC",
	    .ossl_group = "P-256",
	    .ossl_digest = "SHA256",
	},
    [ALG_ED] =
	{
	    .name = "Ed25519",
	    .mech_name = "CKM_EDDSA",
	    .gen_mech = CKM_EC_EDWARDS_KEY_PAIR_GEN,
	    .sign_mech = CKM_EDDSA,
	    .key_type = CKK_EC_EDWARDS,
	    .ec_params = {oid_ed25519, name_ed25519},
	    .ec_params_len = {sizeof oid_ed25519, sizeof name_ed25519},
	    .ossl_type = "ED25519",
	},
};

/*
 * The device part: the same SoftHSM2 keys signed through SoftHSM2 directly
 * (side SH) and through koltamga's pkcs11 driver over it (side KT).  One row
 * per mechanism and message; both sides sign the same bytes.
 */
enum { DEV_RSA_32, DEV_RSA_1K, DEV_EC_32, DEV_EC_1K, DEV_ECDSA_RAW, N_DEV };
enum { SIDE_SH, SIDE_KT, N_SIDES };

struct dev_row {
	const char *name;
	int alg;		  /* the key: algs[] index */
	CK_MECHANISM_TYPE mech;	  /* through koltamga, and directly if SoftHSM2 has it */
	CK_MECHANISM_TYPE sh_raw; /* directly otherwise: over a digest the bench makes */
	size_t msg_len;		  /* the message's length (a prefix of the 1 KiB one) */
	bool raw;		  /* the data is a 32-byte hash (CKM_ECDSA on both) */
};

/* Short names for the report: RSA-2048 is CKM_SHA256_RSA_PKCS, ECDSA-SHA256
 * is P-256 with CKM_ECDSA_SHA256 (or its equivalent), ECDSA is P-256 with
 * CKM_ECDSA over a SHA-256 of the 1 KiB message. */
static const struct dev_row dev_rows[N_DEV] = {
    [DEV_RSA_32] = {"RSA-2048, 32 B", ALG_RSA, CKM_SHA256_RSA_PKCS, 0, 32, false},
    [DEV_RSA_1K] = {"RSA-2048, 1 KiB", ALG_RSA, CKM_SHA256_RSA_PKCS, 0, MSG_LEN, false},
    [DEV_EC_32] = {"ECDSA-SHA256, 32 B", ALG_EC, CKM_ECDSA_SHA256, CKM_ECDSA, 32, false},
    [DEV_EC_1K] = {"ECDSA-SHA256, 1 KiB", ALG_EC, CKM_ECDSA_SHA256, CKM_ECDSA, MSG_LEN, false},
    [DEV_ECDSA_RAW] = {"ECDSA, 32 B hash", ALG_EC, CKM_ECDSA, 0, 32, true},
};

/*
 * What a child reports.  Plain data, under PIPE_BUF, so each write to
 * the pipe is atomic and the parent can keep the last complete copy even if
 * the child dies later (a module crashing in C_Finalize still leaves its
 * numbers).  NAN means "not measured".
 */
struct result {
	bool ran;
	char info[NOTE_LEN];	/* library description and version */
	char error[NOTE_LEN];	/* first thing that stopped a phase */
	double sign[N_ALGS][2]; /* ops/s at 1 and 2 threads */
	char sign_note[N_ALGS][NOTE_LEN];
	unsigned long n_objects;
	double create_s;
	double find_ms;
	unsigned long n_lookups;
	double init_ms, open_ms, login_ms;
	unsigned long login_runs;
	double kdf_ms; /* openssl child only */
	unsigned long kdf_runs;
	/* device child only: ops/s per row, side and thread count */
	double dev[N_DEV][N_SIDES][2];
	char dev_note[N_DEV][NOTE_LEN];
};

/* One write() per report: atomic only up to PIPE_BUF. */
_Static_assert(sizeof(struct result) <= PIPE_BUF, "struct result must fit one atomic pipe write");

struct target {
	const char *name;
	bool (*write_conf)(const char *dir);
};

static bool write_koltamga_conf(const char *dir);
static bool write_softhsm_conf(const char *dir);

static const struct target targets[N_TARGETS] = {
    [T_OPENSSL] = {.name = "openssl"},
    [T_KOLTAMGA] = {.name = "koltamga", .write_conf = write_koltamga_conf},
    [T_SOFTHSM] = {.name = "softhsm2", .write_conf = write_softhsm_conf},
    /* koltamga's pkcs11 driver over a SoftHSM2 token, next to SoftHSM2. */
    [T_DEVICE] = {.name = "device"},
};

static struct {
	double seconds;
	unsigned rounds; /* best of: a shared machine's noise only ever slows */
	unsigned round;	 /* the current one, for directory names */
	unsigned long objects[N_TARGETS];
	uint64_t scrypt_n;
	uint32_t scrypt_r, scrypt_p;
	bool scrypt_set; /* not the defaults: they go into koltamga.conf too */
	bool markdown;
	bool keep;
	unsigned phases;
	const char *path[N_TARGETS];
	char tmp_root[1024]; /* short enough for every path built under it */
} opt = {
    .seconds = 2.0,
    .rounds = 1,
    .objects = {[T_KOLTAMGA] = 10000, [T_SOFTHSM] = 2000},
    .scrypt_n = 32768,
    .scrypt_r = 8,
    .scrypt_p = 1,
    .phases = PHASE_SIGN | PHASE_OBJECTS | PHASE_LOGIN | PHASE_DEVICE,
};

static unsigned char message[MSG_LEN];
static double start_load = NAN; /* 1-minute load average before the first run */
static int result_fd = -1;	/* the child's end of its pipe */

/* ------------------------------------------------------------------ util */

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void __attribute__((format(printf, 1, 2))) progress(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("kt-bench: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static const char *rv_name(CK_RV rv)
{
	/* Only the values a benchmark can plausibly meet; others print as hex. */
	static const struct {
		CK_RV rv;
		const char *name;
	} names[] = {
#define N(x) {x, #x}
	    N(CKR_OK),
	    N(CKR_HOST_MEMORY),
	    N(CKR_SLOT_ID_INVALID),
	    N(CKR_GENERAL_ERROR),
	    N(CKR_FUNCTION_FAILED),
	    N(CKR_ARGUMENTS_BAD),
	    N(CKR_ATTRIBUTE_READ_ONLY),
	    N(CKR_ATTRIBUTE_TYPE_INVALID),
	    N(CKR_ATTRIBUTE_VALUE_INVALID),
	    N(CKR_DATA_LEN_RANGE),
	    N(CKR_DEVICE_ERROR),
	    N(CKR_DEVICE_MEMORY),
	    N(CKR_FUNCTION_CANCELED),
	    N(CKR_FUNCTION_NOT_SUPPORTED),
	    N(CKR_KEY_HANDLE_INVALID),
	    N(CKR_KEY_TYPE_INCONSISTENT),
	    N(CKR_KEY_FUNCTION_NOT_PERMITTED),
	    N(CKR_MECHANISM_INVALID),
	    N(CKR_MECHANISM_PARAM_INVALID),
	    N(CKR_OBJECT_HANDLE_INVALID),
	    N(CKR_OPERATION_ACTIVE),
	    N(CKR_OPERATION_NOT_INITIALIZED),
	    N(CKR_PIN_INCORRECT),
	    N(CKR_PIN_INVALID),
	    N(CKR_PIN_LEN_RANGE),
	    N(CKR_PIN_LOCKED),
	    N(CKR_SESSION_COUNT),
	    N(CKR_SESSION_HANDLE_INVALID),
	    N(CKR_SESSION_READ_ONLY),
	    N(CKR_SIGNATURE_INVALID),
	    N(CKR_TEMPLATE_INCOMPLETE),
	    N(CKR_TEMPLATE_INCONSISTENT),
	    N(CKR_TOKEN_NOT_PRESENT),
	    N(CKR_TOKEN_NOT_RECOGNIZED),
	    N(CKR_TOKEN_WRITE_PROTECTED),
	    N(CKR_USER_ALREADY_LOGGED_IN),
	    N(CKR_USER_NOT_LOGGED_IN),
	    N(CKR_USER_PIN_NOT_INITIALIZED),
	    N(CKR_USER_TYPE_INVALID),
	    N(CKR_DOMAIN_PARAMS_INVALID),
	    N(CKR_CURVE_NOT_SUPPORTED),
	    N(CKR_BUFFER_TOO_SMALL),
	    N(CKR_CRYPTOKI_NOT_INITIALIZED),
	    N(CKR_CRYPTOKI_ALREADY_INITIALIZED),
	    N(CKR_FUNCTION_REJECTED),
#undef N
	};
	static __thread char buf[32];
	size_t i;

	for (i = 0; i < sizeof names / sizeof names[0]; i++)
		if (names[i].rv == rv)
			return names[i].name;
	snprintf(buf, sizeof buf, "CKR_0x%lx", (unsigned long)rv);
	return buf;
}

/* Keep the first error of a child: later ones are usually its echo. */
static void __attribute__((format(printf, 2, 3))) fail(struct result *r, const char *fmt, ...)
{
	char buf[NOTE_LEN];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (!r->error[0])
		snprintf(r->error, sizeof r->error, "%s", buf);
	progress("%s", buf);
}

/* Append to a NOTE_LEN note, "; " between parts. */
static void __attribute__((format(printf, 2, 3))) note_add(char *buf, const char *fmt, ...)
{
	size_t n = strlen(buf);
	va_list ap;

	if (n > 0 && n + 2 < NOTE_LEN) {
		memcpy(buf + n, "; ", 3);
		n += 2;
	}
	va_start(ap, fmt);
	vsnprintf(buf + n, NOTE_LEN - n, fmt, ap);
	va_end(ap);
}

static void publish(const struct result *r)
{
	ssize_t n;

	if (result_fd < 0)
		return;
	do
		n = write(result_fd, r, sizeof *r);
	while (n < 0 && errno == EINTR);
}

static void pad32(CK_UTF8CHAR out[32], const char *s)
{
	size_t n = strlen(s);

	memset(out, ' ', 32);
	memcpy(out, s, n < 32 ? n : 32);
}

static void unpad(char *out, size_t outlen, const CK_UTF8CHAR *in, size_t inlen)
{
	while (inlen > 0 && (in[inlen - 1] == ' ' || in[inlen - 1] == '\0'))
		inlen--;
	snprintf(out, outlen, "%.*s", (int)inlen, (const char *)in);
}

/* xorshift64: lookups only need labels spread over the whole set, and the
 * same sequence every run makes runs comparable. */
static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static bool write_file(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");
	bool ok;

	if (!fp)
		return false;
	ok = fputs(text, fp) >= 0;
	return (fclose(fp) == 0) && ok;
}

/* ------------------------------------------------------ timed signing */

/* What one signature needs, for either side.  Read-only while threads run. */
struct sign_job {
	/* PKCS#11 side (f != NULL) */
	CK_FUNCTION_LIST_PTR f;
	CK_SLOT_ID slot;
	CK_MECHANISM mech;
	CK_OBJECT_HANDLE key;
	bool context_login;    /* key has CKA_ALWAYS_AUTHENTICATE */
	const EVP_MD *prehash; /* hash here, sign the digest with a raw mechanism */
	/* OpenSSL side */
	EVP_PKEY *pkey;
	const EVP_MD *md;
	/* What is signed (or hashed first); NULL: the 1 KiB message. */
	const unsigned char *msg;
	size_t msg_len;
};

struct sign_thread {
	const struct sign_job *job;
	pthread_barrier_t *go;
	unsigned long ops;
	double elapsed;
	char err[NOTE_LEN];
};

/* The job's message: its own, or the 1 KiB one. */
static const unsigned char *job_msg(const struct sign_job *job, size_t *len)
{
	*len = job->msg ? job->msg_len : sizeof message;
	return job->msg ? job->msg : message;
}

/* What the token is given to sign: the message, or its digest. */
static bool job_data(const struct sign_job *job, unsigned char *dgst, const unsigned char **data,
		     CK_ULONG *len)
{
	unsigned int dlen = 0;
	size_t mlen;
	const unsigned char *msg = job_msg(job, &mlen);

	*data = msg;
	*len = mlen;
	if (!job->prehash)
		return true;
	if (EVP_Digest(msg, mlen, dgst, &dlen, job->prehash, NULL) != 1)
		return false;
	*data = dgst;
	*len = dlen;
	return true;
}

static bool sign_once(const struct sign_job *job, CK_SESSION_HANDLE s, unsigned char *sig, size_t *siglen,
		      char *err, size_t errlen)
{
	if (job->f) {
		CK_MECHANISM mech = job->mech;
		CK_ULONG len = *siglen, dlen;
		unsigned char dgst[EVP_MAX_MD_SIZE];
		const unsigned char *data;
		CK_RV rv;

		if (!job_data(job, dgst, &data, &dlen)) {
			snprintf(err, errlen, "EVP_Digest failed");
			return false;
		}
		rv = job->f->C_SignInit(s, &mech, job->key);
		if (rv != CKR_OK) {
			snprintf(err, errlen, "C_SignInit: %s", rv_name(rv));
			return false;
		}
		if (job->context_login) {
			rv = job->f->C_Login(s, CKU_CONTEXT_SPECIFIC, (CK_UTF8CHAR_PTR)USER_PIN,
					     strlen(USER_PIN));
			if (rv != CKR_OK) {
				snprintf(err, errlen, "C_Login(CKU_CONTEXT_SPECIFIC): %s", rv_name(rv));
				return false;
			}
		}
		/* One call with a big enough buffer: a size query first would
		 * measure an extra round trip that real callers often skip. */
		rv = job->f->C_Sign(s, (CK_BYTE_PTR)data, dlen, sig, &len);
		if (rv != CKR_OK) {
			snprintf(err, errlen, "C_Sign: %s", rv_name(rv));
			return false;
		}
		*siglen = len;
		return true;
	} else {
		/* A fresh context per signature, as a server signing unrelated
		 * requests does; the digest is fetched once, outside. */
		EVP_MD_CTX *ctx = EVP_MD_CTX_new();
		size_t mlen;
		const unsigned char *msg = job_msg(job, &mlen);
		bool ok = ctx && EVP_DigestSignInit(ctx, NULL, job->md, NULL, job->pkey) == 1 &&
			  EVP_DigestSign(ctx, sig, siglen, msg, mlen) == 1;

		if (!ok)
			snprintf(err, errlen, "EVP_DigestSign: %s", ERR_reason_error_string(ERR_get_error()));
		EVP_MD_CTX_free(ctx);
		return ok;
	}
}

static void *sign_thread_main(void *arg)
{
	struct sign_thread *t = arg;
	const struct sign_job *job = t->job;
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	unsigned char sig[1024];
	size_t len;
	double t0;
	CK_RV rv;

	/* Each thread has its own session, opened before the clock starts:
	 * that is how a threaded server uses a token (one shared session
	 * would serialise by definition). */
	if (job->f) {
		rv = job->f->C_OpenSession(job->slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
		if (rv != CKR_OK)
			snprintf(t->err, sizeof t->err, "C_OpenSession: %s", rv_name(rv));
	}
	/* Wait even after an error, or the other threads would wait forever. */
	pthread_barrier_wait(t->go);
	t0 = now_s();
	while (!t->err[0]) {
		len = sizeof sig;
		if (!sign_once(job, s, sig, &len, t->err, sizeof t->err))
			break;
		t->ops++;
		t->elapsed = now_s() - t0;
		if (t->elapsed >= opt.seconds)
			break;
	}
	if (job->f && s != CK_INVALID_HANDLE)
		job->f->C_CloseSession(s);
	return NULL;
}

/* Signatures per second over all threads; NAN and a note on failure. */
static double run_sign(const struct sign_job *job, unsigned nthreads, char *note, size_t notelen)
{
	struct sign_thread t[2];
	pthread_t tid[2];
	pthread_barrier_t go;
	double total = 0;
	unsigned i, started = 0;

	memset(t, 0, sizeof t);
	pthread_barrier_init(&go, NULL, nthreads);
	for (i = 0; i < nthreads; i++) {
		t[i].job = job;
		t[i].go = &go;
		if (pthread_create(&tid[i], NULL, sign_thread_main, &t[i]) != 0)
			break;
		started++;
	}
	if (started < nthreads) {
		/* Stand in for the missing threads so the started ones run. */
		snprintf(note, notelen, "pthread_create failed");
		for (i = started; i < nthreads; i++)
			pthread_barrier_wait(&go);
	}
	for (i = 0; i < started; i++)
		pthread_join(tid[i], NULL);
	pthread_barrier_destroy(&go);
	if (started < nthreads)
		return NAN;
	for (i = 0; i < nthreads; i++) {
		if (t[i].err[0]) {
			snprintf(note, notelen, "%s", t[i].err);
			return NAN;
		}
		if (t[i].elapsed > 0)
			total += (double)t[i].ops / t[i].elapsed;
	}
	return total;
}

static void run_sign_both(const struct sign_job *job, struct result *r, int a)
{
	unsigned n;

	for (n = 1; n <= 2; n++) {
		r->sign[a][n - 1] = run_sign(job, n, r->sign_note[a], sizeof r->sign_note[a]);
		progress("  %-12s %u thread%s %10.1f ops/s", algs[a].name, n, n > 1 ? "s" : "",
			 r->sign[a][n - 1]);
		if (isnan(r->sign[a][n - 1]))
			break;
	}
}

/* ------------------------------------------------------------- OpenSSL */

static EVP_PKEY *ossl_keygen(const struct alg *al)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, al->ossl_type, NULL);
	EVP_PKEY *pkey = NULL;
	OSSL_PARAM params[2], *p = params;
	size_t bits = al->modulus_bits;

	if (al->modulus_bits)
		*p++ = OSSL_PARAM_construct_size_t(OSSL_PKEY_PARAM_RSA_BITS, &bits);
	if (al->ossl_group)
		*p++ =
		    OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)al->ossl_group, 0);
	*p = OSSL_PARAM_construct_end();
	if (!ctx || EVP_PKEY_keygen_init(ctx) != 1 || EVP_PKEY_CTX_set_params(ctx, params) != 1 ||
	    EVP_PKEY_generate(ctx, &pkey) != 1)
		pkey = NULL;
	EVP_PKEY_CTX_free(ctx);
	return pkey;
}

/* The cost of the PIN KDF alone: what every koltamga C_Login pays before any
 * token work.  A new KDF context per run, as a login makes one. */
static void ossl_kdf(struct result *r)
{
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "SCRYPT", NULL);
	unsigned char salt[16] = {0}, out[32];
	uint64_t n = opt.scrypt_n;
	uint32_t sr = opt.scrypt_r, sp = opt.scrypt_p;
	/* OpenSSL refuses unless maxmem covers B (128*r*p) and V (128*r*(N+2)). */
	uint64_t maxmem = 128ull * sr * (n + 2 + sp) + (1u << 20);
	double t0, total = 0;

	if (!kdf) {
		fail(r, "EVP_KDF_fetch(SCRYPT) failed");
		return;
	}
	progress("openssl: scrypt N=%llu r=%u p=%u", (unsigned long long)n, sr, sp);
	for (r->kdf_runs = 0; r->kdf_runs < 1000; r->kdf_runs++) {
		EVP_KDF_CTX *kctx = EVP_KDF_CTX_new(kdf);
		OSSL_PARAM params[] = {
		    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD, USER_PIN, strlen(USER_PIN)),
		    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, salt, sizeof salt),
		    OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_N, &n),
		    OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_R, &sr),
		    OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_P, &sp),
		    OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_MAXMEM, &maxmem),
		    OSSL_PARAM_construct_end(),
		};
		bool ok;

		t0 = now_s();
		ok = kctx && EVP_KDF_derive(kctx, out, sizeof out, params) == 1;
		total += now_s() - t0;
		EVP_KDF_CTX_free(kctx);
		if (!ok) {
			fail(r, "scrypt: %s", ERR_reason_error_string(ERR_get_error()));
			break;
		}
		/* A few runs at least, however slow: one run is an anecdote. */
		if (r->kdf_runs >= 2 && total >= opt.seconds) {
			r->kdf_runs++;
			break;
		}
	}
	if (r->kdf_runs > 0 && !r->error[0])
		r->kdf_ms = total * 1e3 / (double)r->kdf_runs;
	EVP_KDF_free(kdf);
	publish(r);
}

static void openssl_child(struct result *r)
{
	EVP_MD *sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	int a;

	snprintf(r->info, sizeof r->info, "%s (EVP, default provider)", OpenSSL_version(OPENSSL_VERSION));
	publish(r);
	if (opt.phases & PHASE_SIGN) {
		progress("openssl: signing");
		for (a = 0; a < N_ALGS; a++) {
			struct sign_job job = {0};

			job.pkey = ossl_keygen(&algs[a]);
			job.md = algs[a].ossl_digest ? sha256 : NULL;
			if (!job.pkey) {
				snprintf(r->sign_note[a], NOTE_LEN, "key generation failed");
				continue;
			}
			run_sign_both(&job, r, a);
			EVP_PKEY_free(job.pkey);
			publish(r);
		}
	}
	if (opt.phases & PHASE_LOGIN)
		ossl_kdf(r);
	EVP_MD_free(sha256);
}

/* ------------------------------------------------------------ PKCS#11 */

struct module {
	int target;
	CK_FUNCTION_LIST_PTR f;
	CK_SLOT_ID slot;
	char dir[1100];
	struct result *r;
	EVP_MD *sha256; /* for a raw mechanism's digest */
};

static bool write_koltamga_conf(const char *dir)
{
	char conf[PATH_MAX + 16], store[PATH_MAX + 16], text[2 * PATH_MAX];
	int n;

	snprintf(store, sizeof store, "%s/store", dir);
	snprintf(conf, sizeof conf, "%s/koltamga.conf", dir);
	if (mkdir(store, 0700) != 0)
		return false;
	/* No scrypt_* lines unless asked: login is measured at the defaults a
	 * real token gets. */
	/* Seal keys (automatic policy): the benchmark measures the signing
	 * path an information system uses, audit record included. */
	n = snprintf(text, sizeof text,
		     "# written by kt-bench\nstore = %s\nsign_policy = automatic\naudit_log = %s/audit.log\n", store,
		     store);
	if (opt.scrypt_set)
		snprintf(text + n, sizeof text - (size_t)n, "scrypt_n = %llu\nscrypt_r = %u\nscrypt_p = %u\n",
			 (unsigned long long)opt.scrypt_n, opt.scrypt_r, opt.scrypt_p);
	return write_file(conf, text) && setenv("KOLTAMGA_CONF", conf, 1) == 0;
}

static bool write_softhsm_conf(const char *dir)
{
	char conf[PATH_MAX + 16], tokens[PATH_MAX + 16], text[2 * PATH_MAX];

	snprintf(tokens, sizeof tokens, "%s/tokens", dir);
	snprintf(conf, sizeof conf, "%s/softhsm2.conf", dir);
	if (mkdir(tokens, 0700) != 0)
		return false;
	snprintf(text, sizeof text,
		 "# written by kt-bench\ndirectories.tokendir = %s\n"
		 "objectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
		 tokens);
	return write_file(conf, text) && setenv("SOFTHSM2_CONF", conf, 1) == 0;
}

static CK_RV p11_initialize(struct module *m)
{
	/* Threads sign concurrently: ask for the module's own locking. */
	CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};

	return m->f->C_Initialize(&args);
}

/*
 * The slot to use: with `label`, the initialised token carrying it; without,
 * a slot whose token is not initialised yet (SoftHSM2's spare slot), else a
 * slot with no token at all (koltamga's "empty slot" for a new store file).
 */
static CK_RV p11_find_slot(struct module *m, const char *label, CK_SLOT_ID *out)
{
	CK_SLOT_ID *slots = NULL;
	CK_ULONG n = 0, i;
	bool found = false, have_empty = false;
	CK_SLOT_ID empty = 0;
	CK_RV rv;

	rv = m->f->C_GetSlotList(CK_FALSE, NULL, &n);
	if (rv != CKR_OK)
		goto out;
	slots = calloc(n ? n : 1, sizeof *slots);
	rv = CKR_HOST_MEMORY;
	if (!slots)
		goto out;
	rv = m->f->C_GetSlotList(CK_FALSE, slots, &n);
	if (rv != CKR_OK)
		goto out;
	for (i = 0; i < n && !found; i++) {
		CK_SLOT_INFO si;
		CK_TOKEN_INFO ti;
		char tl[33];

		if (m->f->C_GetSlotInfo(slots[i], &si) != CKR_OK)
			continue;
		if (!(si.flags & CKF_TOKEN_PRESENT)) {
			if (!have_empty)
				empty = slots[i];
			have_empty = true;
			continue;
		}
		if (m->f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
			continue;
		unpad(tl, sizeof tl, ti.label, sizeof ti.label);
		if (label ? ((ti.flags & CKF_TOKEN_INITIALIZED) && strcmp(tl, label) == 0)
			  : !(ti.flags & CKF_TOKEN_INITIALIZED)) {
			*out = slots[i];
			found = true;
		}
	}
	if (!found && !label && have_empty) {
		*out = empty;
		found = true;
	}
	rv = found ? CKR_OK : CKR_TOKEN_NOT_PRESENT;
out:
	free(slots);
	return rv;
}

/* Open a session on the bench token and log the user in. */
static CK_RV p11_open_user(struct module *m, CK_SESSION_HANDLE *s)
{
	CK_RV rv;

	rv = m->f->C_OpenSession(m->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, s);
	if (rv != CKR_OK) {
		fail(m->r, "%s: C_OpenSession(RW): %s", targets[m->target].name, rv_name(rv));
		return rv;
	}
	rv = m->f->C_Login(*s, CKU_USER, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN));
	if (rv != CKR_OK) {
		fail(m->r, "%s: C_Login(CKU_USER): %s", targets[m->target].name, rv_name(rv));
		m->f->C_CloseSession(*s);
	}
	return rv;
}

/* C_Initialize, find the bench token; on failure the module is finalised. */
static bool p11_start(struct module *m)
{
	const char *name = targets[m->target].name;
	CK_RV rv;

	rv = p11_initialize(m);
	if (rv != CKR_OK) {
		fail(m->r, "%s: C_Initialize: %s", name, rv_name(rv));
		return false;
	}
	rv = p11_find_slot(m, TOKEN_LABEL, &m->slot);
	if (rv != CKR_OK) {
		fail(m->r, "%s: no initialised token labelled %s: %s", name, TOKEN_LABEL, rv_name(rv));
		m->f->C_Finalize(NULL);
		return false;
	}
	return true;
}

/* A fresh token: C_InitToken on a spare slot, C_InitPIN as the SO. */
static bool p11_setup_token(struct module *m)
{
	const char *name = targets[m->target].name;
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	CK_UTF8CHAR label[32];
	CK_SLOT_ID slot;
	CK_INFO info;
	char manuf[33], desc[33];
	bool ok = false;
	CK_RV rv;

	rv = p11_initialize(m);
	if (rv != CKR_OK) {
		fail(m->r, "%s: C_Initialize: %s", name, rv_name(rv));
		return false;
	}
	if (m->f->C_GetInfo(&info) == CKR_OK) {
		unpad(manuf, sizeof manuf, info.manufacturerID, sizeof info.manufacturerID);
		unpad(desc, sizeof desc, info.libraryDescription, sizeof info.libraryDescription);
		snprintf(m->r->info, sizeof m->r->info, "%s, %s %u.%u", manuf, desc,
			 info.libraryVersion.major, info.libraryVersion.minor);
	}
	rv = p11_find_slot(m, NULL, &slot);
	if (rv != CKR_OK) {
		fail(m->r, "%s: no slot without an initialised token: %s", name, rv_name(rv));
		goto out;
	}
	pad32(label, TOKEN_LABEL);
	rv = m->f->C_InitToken(slot, (CK_UTF8CHAR_PTR)SO_PIN, strlen(SO_PIN), label);
	if (rv != CKR_OK) {
		fail(m->r, "%s: C_InitToken(slot %lu): %s", name, (unsigned long)slot, rv_name(rv));
		goto out;
	}
	/* Both modules may move the new token to another slot id (SoftHSM2
	 * derives it from the serial): look it up by label again. */
	rv = p11_find_slot(m, TOKEN_LABEL, &m->slot);
	if (rv != CKR_OK) {
		fail(m->r, "%s: token not found after C_InitToken: %s", name, rv_name(rv));
		goto out;
	}
	rv = m->f->C_OpenSession(m->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
	if (rv != CKR_OK) {
		fail(m->r, "%s: C_OpenSession(RW): %s", name, rv_name(rv));
		goto out;
	}
	rv = m->f->C_Login(s, CKU_SO, (CK_UTF8CHAR_PTR)SO_PIN, strlen(SO_PIN));
	if (rv != CKR_OK) {
		fail(m->r, "%s: C_Login(CKU_SO): %s", name, rv_name(rv));
		goto out;
	}
	rv = m->f->C_InitPIN(s, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN));
	if (rv != CKR_OK) {
		fail(m->r, "%s: C_InitPIN: %s", name, rv_name(rv));
		goto out;
	}
	m->f->C_Logout(s);
	ok = true;
out:
	if (s != CK_INVALID_HANDLE)
		m->f->C_CloseSession(s);
	m->f->C_Finalize(NULL);
	publish(m->r);
	return ok;
}

/* A bounded template builder: keeps the key templates readable. */
struct tmpl {
	CK_ATTRIBUTE a[16];
	CK_ULONG n;
};

static void tmpl_add(struct tmpl *t, CK_ATTRIBUTE_TYPE type, const void *value, CK_ULONG len)
{
	if (t->n < sizeof t->a / sizeof t->a[0])
		t->a[t->n++] = (CK_ATTRIBUTE){type, (void *)value, len};
}

static CK_RV p11_generate(struct module *m, CK_SESSION_HANDLE s, int a, CK_OBJECT_HANDLE *pub,
			  CK_OBJECT_HANDLE *priv)
{
	static const CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	static const CK_BYTE e65537[] = {0x01, 0x00, 0x01};
	const struct alg *al = &algs[a];
	CK_MECHANISM mech = {al->gen_mech, NULL, 0};
	CK_ULONG bits = al->modulus_bits;
	CK_RV rv = CKR_GENERAL_ERROR;
	char label[32];
	unsigned i;

	snprintf(label, sizeof label, "kt-bench %s", al->name);
	for (i = 0; i < 2; i++) {
		struct tmpl pt = {.n = 0}, kt = {.n = 0};

		tmpl_add(&pt, CKA_TOKEN, &yes, sizeof yes);
		tmpl_add(&pt, CKA_VERIFY, &yes, sizeof yes);
		tmpl_add(&pt, CKA_LABEL, label, strlen(label));
		tmpl_add(&pt, CKA_ID, &a, sizeof a);
		if (al->modulus_bits) {
			tmpl_add(&pt, CKA_MODULUS_BITS, &bits, sizeof bits);
			tmpl_add(&pt, CKA_PUBLIC_EXPONENT, e65537, sizeof e65537);
		} else {
			tmpl_add(&pt, CKA_EC_PARAMS, al->ec_params[i], al->ec_params_len[i]);
		}
		tmpl_add(&kt, CKA_TOKEN, &yes, sizeof yes);
		tmpl_add(&kt, CKA_PRIVATE, &yes, sizeof yes);
		tmpl_add(&kt, CKA_SENSITIVE, &yes, sizeof yes);
		tmpl_add(&kt, CKA_EXTRACTABLE, &no, sizeof no);
		tmpl_add(&kt, CKA_SIGN, &yes, sizeof yes);
		tmpl_add(&kt, CKA_LABEL, label, strlen(label));
		tmpl_add(&kt, CKA_ID, &a, sizeof a);
		rv = m->f->C_GenerateKeyPair(s, &mech, pt.a, pt.n, kt.a, kt.n, pub, priv);
		/* Only another curve encoding is worth a second try. */
		if (rv == CKR_OK || !al->ec_params[1] ||
		    (rv != CKR_ATTRIBUTE_VALUE_INVALID && rv != CKR_CURVE_NOT_SUPPORTED &&
		     rv != CKR_DOMAIN_PARAMS_INVALID && rv != CKR_TEMPLATE_INCONSISTENT))
			break;
	}
	return rv;
}

/* A CKA_EC_POINT is a DER OCTET STRING by the standard, raw bytes in some
 * modules: accept both. */
static const unsigned char *ec_point(const unsigned char *p, CK_ULONG len, size_t *out)
{
	if (len >= 2 && p[0] == 0x04 && p[1] < 0x80 && (CK_ULONG)p[1] + 2 == len) {
		*out = p[1];
		return p + 2;
	}
	if (len >= 3 && p[0] == 0x04 && p[1] == 0x81 && (CK_ULONG)p[2] + 3 == len) {
		*out = p[2];
		return p + 3;
	}
	*out = len;
	return p;
}

/*
 * Check one token signature with OpenSSL and the token's public key: the
 * module's own C_Verify would accept a signature over the wrong bytes if its
 * sign and verify shared the mistake, and a fast wrong signature is no result.
 * msg is what was signed: the message for hash-and-sign, or with `raw` the
 * digest itself (CKM_ECDSA over a hash).
 */
static const char *ossl_check(struct module *m, CK_SESSION_HANDLE s, int a, CK_OBJECT_HANDLE pub,
			      const unsigned char *sig, size_t siglen, const unsigned char *msg,
			      size_t msglen, bool raw)
{
	const struct alg *al = &algs[a];
	unsigned char v1[1024], v2[16];
	CK_ATTRIBUTE at[2] = {
	    {al->modulus_bits ? CKA_MODULUS : CKA_EC_POINT, v1, sizeof v1},
	    {CKA_PUBLIC_EXPONENT, v2, sizeof v2},
	};
	OSSL_PARAM_BLD *bld = NULL;
	OSSL_PARAM *params = NULL;
	EVP_PKEY_CTX *pctx = NULL, *pctx2 = NULL;
	EVP_PKEY *pkey = NULL;
	EVP_MD_CTX *mctx = NULL;
	BIGNUM *n = NULL, *e = NULL, *r = NULL, *sv = NULL;
	ECDSA_SIG *esig = NULL;
	unsigned char der[128], *dp = der;
	const unsigned char *pt;
	size_t ptlen;
	const char *why = "cannot read the public key";

	if (m->f->C_GetAttributeValue(s, pub, at, al->modulus_bits ? 2 : 1) != CKR_OK)
		goto out;
	why = "cannot rebuild the public key in OpenSSL";
	if (al->key_type == CKK_EC_EDWARDS) {
		pt = ec_point(v1, at[0].ulValueLen, &ptlen);
		pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pt, ptlen);
	} else {
		bld = OSSL_PARAM_BLD_new();
		if (!bld)
			goto out;
		if (al->modulus_bits) {
			n = BN_bin2bn(v1, (int)at[0].ulValueLen, NULL);
			e = BN_bin2bn(v2, (int)at[1].ulValueLen, NULL);
			if (!n || !e || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
			    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e))
				goto out;
		} else {
			pt = ec_point(v1, at[0].ulValueLen, &ptlen);
			if (!OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, al->ossl_group,
							     0) ||
			    !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, ptlen))
				goto out;
		}
		params = OSSL_PARAM_BLD_to_param(bld);
		pctx = EVP_PKEY_CTX_new_from_name(NULL, al->ossl_type, NULL);
		if (!params || !pctx || EVP_PKEY_fromdata_init(pctx) != 1 ||
		    EVP_PKEY_fromdata(pctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
			goto out;
	}
	if (!pkey)
		goto out;
	/* PKCS#11 ECDSA signatures are r || s; OpenSSL verifies DER. */
	if (al->key_type == CKK_EC) {
		why = "ECDSA signature has an odd length";
		if (siglen != 64)
			goto out;
		esig = ECDSA_SIG_new();
		r = BN_bin2bn(sig, 32, NULL);
		sv = BN_bin2bn(sig + 32, 32, NULL);
		if (!esig || !r || !sv || !ECDSA_SIG_set0(esig, r, sv))
			goto out;
		r = sv = NULL;
		siglen = (size_t)i2d_ECDSA_SIG(esig, &dp);
		sig = der;
	}
	why = "OpenSSL rejects the token's signature";
	if (raw) {
		pctx2 = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
		if (pctx2 && EVP_PKEY_verify_init(pctx2) == 1 &&
		    EVP_PKEY_verify(pctx2, sig, siglen, msg, msglen) == 1)
			why = NULL;
		goto out;
	}
	mctx = EVP_MD_CTX_new();
	if (mctx && EVP_DigestVerifyInit(mctx, NULL, al->ossl_digest ? m->sha256 : NULL, NULL, pkey) == 1 &&
	    EVP_DigestVerify(mctx, sig, siglen, msg, msglen) == 1)
		why = NULL;
out:
	EVP_PKEY_CTX_free(pctx2);
	EVP_MD_CTX_free(mctx);
	ECDSA_SIG_free(esig);
	BN_free(r);
	BN_free(sv);
	BN_free(n);
	BN_free(e);
	EVP_PKEY_free(pkey);
	EVP_PKEY_CTX_free(pctx);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	ERR_clear_error();
	return why;
}

static bool p11_mech_ok(struct module *m, CK_MECHANISM_TYPE type, CK_FLAGS need)
{
	CK_MECHANISM_INFO mi;

	return m->f->C_GetMechanismInfo(m->slot, type, &mi) == CKR_OK && (mi.flags & need) == need;
}

static void p11_sign_alg(struct module *m, CK_SESSION_HANDLE s, int a)
{
	const struct alg *al = &algs[a];
	struct result *r = m->r;
	struct sign_job job = {
	    .f = m->f,
	    .slot = m->slot,
	    .mech = {al->sign_mech, NULL, 0},
	};
	CK_OBJECT_HANDLE pub, priv;
	CK_BBOOL always = CK_FALSE;
	CK_ATTRIBUTE aa = {CKA_ALWAYS_AUTHENTICATE, &always, sizeof always};
	CK_MECHANISM vmech;
	unsigned char sig[1024], dgst[EVP_MAX_MD_SIZE];
	const unsigned char *data;
	CK_ULONG dlen;
	size_t siglen = sizeof sig;
	const char *why;
	CK_RV rv;

	/* A module without the mechanism gets a note, not an error: SoftHSM2
	 * builds without EdDSA exist, and that is a fact to report. */
	if (!p11_mech_ok(m, al->sign_mech, CKF_SIGN) && al->raw_mech &&
	    p11_mech_ok(m, al->raw_mech, CKF_SIGN)) {
		job.mech.mechanism = al->raw_mech;
		job.prehash = m->sha256;
		snprintf(r->sign_note[a], NOTE_LEN,
			 "no %s: %s over a SHA-256 digest made by the bench (timed)", al->mech_name,
			 al->raw_mech_name);
		progress("  %-12s %s", al->name, r->sign_note[a]);
	} else if (!p11_mech_ok(m, al->sign_mech, CKF_SIGN)) {
		snprintf(r->sign_note[a], NOTE_LEN, "%s not supported: skipped", al->mech_name);
		progress("  %-12s %s", al->name, r->sign_note[a]);
		return;
	}
	if (!p11_mech_ok(m, al->gen_mech, CKF_GENERATE_KEY_PAIR)) {
		snprintf(r->sign_note[a], NOTE_LEN, "key pair generation not supported: skipped");
		progress("  %-12s %s", al->name, r->sign_note[a]);
		return;
	}
	vmech = job.mech;
	rv = p11_generate(m, s, a, &pub, &priv);
	if (rv != CKR_OK) {
		snprintf(r->sign_note[a], NOTE_LEN, "C_GenerateKeyPair: %s", rv_name(rv));
		progress("  %-12s %s", al->name, r->sign_note[a]);
		return;
	}
	/* A qualified-key policy may force a PIN per signature; measure what
	 * a caller then really pays, and say so. */
	if (m->f->C_GetAttributeValue(s, priv, &aa, 1) == CKR_OK && always == CK_TRUE) {
		job.context_login = true;
		note_add(r->sign_note[a], "key has CKA_ALWAYS_AUTHENTICATE: "
					  "C_Login(CKU_CONTEXT_SPECIFIC) per signature");
	}
	job.key = priv;
	/* One signature checked by the module itself, so a fast number can
	 * never come from a broken operation. */
	if (!sign_once(&job, s, sig, &siglen, r->sign_note[a], NOTE_LEN)) {
		progress("  %-12s %s", al->name, r->sign_note[a]);
		return;
	}
	rv = m->f->C_VerifyInit(s, &vmech, pub);
	if (rv == CKR_OK && job_data(&job, dgst, &data, &dlen))
		rv = m->f->C_Verify(s, (CK_BYTE_PTR)data, dlen, sig, siglen);
	if (rv == CKR_SIGNATURE_INVALID || rv == CKR_SIGNATURE_LEN_RANGE) {
		snprintf(r->sign_note[a], NOTE_LEN, "signature does not verify (C_Verify: %s)", rv_name(rv));
		progress("  %-12s %s", al->name, r->sign_note[a]);
		return;
	}
	if (rv != CKR_OK)
		progress("  %-12s C_Verify: %s (OpenSSL still checks)", al->name, rv_name(rv));
	why = ossl_check(m, s, a, pub, sig, siglen, message, sizeof message, false);
	if (why) {
		note_add(r->sign_note[a], "%s: not measured", why);
		progress("  %-12s %s", al->name, r->sign_note[a]);
		return;
	}
	run_sign_both(&job, r, a);
}

static void p11_sign_phase(struct module *m)
{
	CK_SESSION_HANDLE s;
	int a;

	if (!p11_start(m))
		return;
	progress("%s: signing", targets[m->target].name);
	/* This session stays logged in while the threads sign in their own
	 * sessions: the login state belongs to the application. */
	if (p11_open_user(m, &s) == CKR_OK) {
		for (a = 0; a < N_ALGS; a++) {
			p11_sign_alg(m, s, a);
			publish(m->r);
		}
		m->f->C_Logout(s);
		m->f->C_CloseSession(s);
	}
	m->f->C_Finalize(NULL);
}

static void data_label(char *buf, size_t len, unsigned long i)
{
	snprintf(buf, len, "kt-bench data %06lu", i);
}

static void p11_objects_phase(struct module *m)
{
	static const CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	static const CK_OBJECT_CLASS data = CKO_DATA;
	static const char app[] = "kt-bench";
	const char *name = targets[m->target].name;
	struct result *r = m->r;
	unsigned long n = opt.objects[m->target], i;
	unsigned char value[32];
	uint64_t seed = 0x9e3779b97f4a7c15ull;
	double t0, total = 0;
	CK_SESSION_HANDLE s;
	char label[40];
	CK_RV rv;

	if (!p11_start(m))
		return;
	if (p11_open_user(m, &s) != CKR_OK)
		goto out;
	progress("%s: creating %lu data objects", name, n);
	memset(value, 0xa5, sizeof value);
	t0 = now_s();
	for (i = 0; i < n; i++) {
		CK_OBJECT_HANDLE h;
		CK_ATTRIBUTE t[] = {
		    {CKA_CLASS, (void *)&data, sizeof data},
		    {CKA_TOKEN, (void *)&yes, sizeof yes},
		    {CKA_PRIVATE, (void *)&no, sizeof no},
		    {CKA_APPLICATION, (void *)app, sizeof app - 1},
		    {CKA_LABEL, label, 0},
		    {CKA_VALUE, value, sizeof value},
		};

		data_label(label, sizeof label, i);
		t[4].ulValueLen = strlen(label);
		rv = m->f->C_CreateObject(s, t, sizeof t / sizeof t[0], &h);
		if (rv != CKR_OK) {
			fail(r, "%s: C_CreateObject(CKO_DATA #%lu): %s", name, i, rv_name(rv));
			goto logout;
		}
	}
	r->create_s = now_s() - t0;
	r->n_objects = n;
	progress("%s: %lu objects in %.2f s", name, n, r->create_s);
	publish(r);

	progress("%s: finding by label", name);
	for (r->n_lookups = 0;; r->n_lookups++) {
		CK_OBJECT_HANDLE h[2];
		CK_ULONG found = 0;
		CK_ATTRIBUTE t[] = {
		    {CKA_CLASS, (void *)&data, sizeof data},
		    {CKA_LABEL, label, 0},
		};

		data_label(label, sizeof label, (unsigned long)(rng_next(&seed) % n));
		t[1].ulValueLen = strlen(label);
		t0 = now_s();
		rv = m->f->C_FindObjectsInit(s, t, 2);
		if (rv == CKR_OK) {
			/* Ask for two: a second match would be a bug worth seeing. */
			rv = m->f->C_FindObjects(s, h, 2, &found);
			m->f->C_FindObjectsFinal(s);
		}
		total += now_s() - t0;
		if (rv != CKR_OK || found != 1) {
			fail(r, "%s: find \"%s\": %s, %lu found", name, label, rv_name(rv),
			     (unsigned long)found);
			break;
		}
		if (total >= opt.seconds) {
			r->n_lookups++;
			r->find_ms = total * 1e3 / (double)r->n_lookups;
			break;
		}
	}
	publish(r);
logout:
	m->f->C_Logout(s);
	m->f->C_CloseSession(s);
out:
	m->f->C_Finalize(NULL);
}

/*
 * What an application pays to start: C_Initialize, find its token, open a
 * session, log in; C_Finalize between runs so each starts cold (as far as a
 * module can be cold inside one process: the page cache stays warm).
 */
static void p11_login_phase(struct module *m)
{
	const char *name = targets[m->target].name;
	struct result *r = m->r;
	double t[4], init = 0, open = 0, login = 0, start = now_s();
	CK_SESSION_HANDLE s;
	CK_RV rv;

	progress("%s: C_Initialize + C_Login", name);
	for (r->login_runs = 0; r->login_runs < 1000;) {
		CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};

		t[0] = now_s();
		rv = m->f->C_Initialize(&args);
		t[1] = now_s();
		if (rv != CKR_OK) {
			fail(r, "%s: C_Initialize: %s", name, rv_name(rv));
			return;
		}
		rv = p11_find_slot(m, TOKEN_LABEL, &m->slot);
		if (rv == CKR_OK)
			rv = m->f->C_OpenSession(m->slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
		t[2] = now_s();
		if (rv != CKR_OK) {
			fail(r, "%s: token lookup/C_OpenSession: %s", name, rv_name(rv));
			m->f->C_Finalize(NULL);
			return;
		}
		rv = m->f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN));
		t[3] = now_s();
		m->f->C_Logout(s);
		m->f->C_CloseSession(s);
		m->f->C_Finalize(NULL);
		if (rv != CKR_OK) {
			fail(r, "%s: C_Login(CKU_USER): %s", name, rv_name(rv));
			return;
		}
		init += t[1] - t[0];
		open += t[2] - t[1];
		login += t[3] - t[2];
		r->login_runs++;
		if (r->login_runs >= 3 && now_s() - start >= opt.seconds)
			break;
	}
	r->init_ms = init * 1e3 / (double)r->login_runs;
	r->open_ms = open * 1e3 / (double)r->login_runs;
	r->login_ms = login * 1e3 / (double)r->login_runs;
	publish(r);
}

/* dlopen a module and get its function list into m->f. */
static bool p11_load(struct module *m, const char *path)
{
	const char *name = targets[m->target].name;
	CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR);
	void *dl;
	CK_RV rv;

	/* RTLD_LOCAL: the modules must not resolve each other's symbols. */
	dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!dl) {
		fail(m->r, "%s: dlopen: %s", name, dlerror());
		return false;
	}
	*(void **)&get_list = dlsym(dl, "C_GetFunctionList");
	if (!get_list) {
		fail(m->r, "%s: no C_GetFunctionList in %s", name, path);
		return false;
	}
	rv = get_list(&m->f);
	if (rv != CKR_OK) {
		fail(m->r, "%s: C_GetFunctionList: %s", name, rv_name(rv));
		return false;
	}
	return true;
}

static void p11_child(int target, struct result *r)
{
	struct module m = {.target = target, .r = r};
	const char *name = targets[target].name;

	snprintf(m.dir, sizeof m.dir, "%s/%s.%u", opt.tmp_root, name, opt.round);
	if (mkdir(m.dir, 0700) != 0 || !targets[target].write_conf(m.dir)) {
		fail(r, "%s: cannot set up %s: %s", name, m.dir, strerror(errno));
		return;
	}
	if (!p11_load(&m, opt.path[target]))
		return;
	m.sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	if (!p11_setup_token(&m))
		return;
	/* Login before objects: start-up is measured on a token holding only
	 * the bench keys, not 10,000 data objects. */
	if (opt.phases & PHASE_SIGN)
		p11_sign_phase(&m);
	if (opt.phases & PHASE_LOGIN)
		p11_login_phase(&m);
	if (opt.phases & PHASE_OBJECTS)
		p11_objects_phase(&m);
	/* No dlclose: the child exits right away, and some modules' unload
	 * paths are less tested than their work paths. */
}

/* ------------------------------------------------ koltamga over SoftHSM2 */

/*
 * The device part.  One process, both modules: SoftHSM2 is loaded and
 * initialised first, its token made and the keys generated on it directly;
 * then koltamga is loaded with a koltamga.conf whose only token is that
 * SoftHSM2 token (driver = pkcs11).  koltamga dlopens the same SoftHSM2
 * object (dlopen of a loaded library only counts a reference), gets
 * CKR_CRYPTOKI_ALREADY_INITIALIZED from it and uses it without finalising
 * it; so SoftHSM2 is finalised last, after koltamga.  A login is per
 * application in PKCS#11: koltamga's C_Login (which logs the device out and
 * in again) leaves the direct sessions logged in too, and nothing logs out
 * until both sides are measured.
 */

static bool write_device_conf(const char *dir, const char *softhsm)
{
	char conf[PATH_MAX + 16], text[3 * PATH_MAX];

	snprintf(conf, sizeof conf, "%s/koltamga.conf", dir);
	/* No store: the device token is the only one.  Seal keys (automatic
	 * policy), audit record per signature, as in the sign part. */
	snprintf(text, sizeof text,
		 "# written by kt-bench: SoftHSM2's token behind koltamga\n"
		 "sign_policy = automatic\naudit_log = %s/audit.log\n\n"
		 "[token]\ndriver = pkcs11\nmodule = %s\nlabel = %s\n",
		 dir, softhsm, TOKEN_LABEL);
	return write_file(conf, text) && setenv("KOLTAMGA_CONF", conf, 1) == 0;
}

/* The one object of this class with the bench's CKA_ID and label for algs[a]. */
static CK_RV p11_find_key(struct module *m, CK_SESSION_HANDLE s, int a, CK_OBJECT_CLASS cls,
			  CK_OBJECT_HANDLE *out)
{
	char label[32];
	CK_ATTRIBUTE t[] = {
	    {CKA_CLASS, &cls, sizeof cls},
	    {CKA_ID, &a, sizeof a},
	    {CKA_LABEL, label, 0},
	};
	CK_OBJECT_HANDLE h[2];
	CK_ULONG n = 0;
	CK_RV rv;

	snprintf(label, sizeof label, "kt-bench %s", algs[a].name);
	t[2].ulValueLen = strlen(label);
	rv = m->f->C_FindObjectsInit(s, t, 3);
	if (rv != CKR_OK)
		return rv;
	rv = m->f->C_FindObjects(s, h, 2, &n);
	m->f->C_FindObjectsFinal(s);
	if (rv == CKR_OK && n != 1)
		rv = CKR_KEY_HANDLE_INVALID; /* none, or not one: either is a bug */
	if (rv == CKR_OK)
		*out = h[0];
	return rv;
}

/* The keys of one algorithm: handles on each side, the public key SoftHSM2's. */
struct dev_keys {
	CK_OBJECT_HANDLE priv[N_SIDES];
	CK_OBJECT_HANDLE pub; /* on SoftHSM2, for OpenSSL's check of both sides */
};

static const char *const side_name[N_SIDES] = {[SIDE_SH] = "SoftHSM2", [SIDE_KT] = "koltamga"};

/* One row: check a signature of each side, then time both, alternating. */
static void dev_row_run(struct module *mod[N_SIDES], CK_SESSION_HANDLE sess[N_SIDES], int d,
			const struct dev_keys *k, struct result *r)
{
	const struct dev_row *row = &dev_rows[d];
	struct sign_job job[N_SIDES];
	unsigned char hash[32], sig[1024];
	const unsigned char *msg = message;
	size_t msg_len = row->msg_len, siglen;
	char note[NOTE_LEN];
	int side, order[N_SIDES];
	unsigned n, i;

	if (row->raw) {
		/* CKM_ECDSA's input: a SHA-256, made once here (both sides are
		 * given the same hash, nothing hashes in the loop). */
		if (EVP_Digest(message, sizeof message, hash, NULL, mod[SIDE_SH]->sha256, NULL) != 1) {
			snprintf(r->dev_note[d], NOTE_LEN, "EVP_Digest failed");
			return;
		}
		msg = hash;
		msg_len = sizeof hash;
	}
	for (side = 0; side < N_SIDES; side++) {
		struct module *m = mod[side];
		CK_BBOOL always = CK_FALSE;
		CK_ATTRIBUTE aa = {CKA_ALWAYS_AUTHENTICATE, &always, sizeof always};

		job[side] = (struct sign_job){
		    .f = m->f,
		    .slot = m->slot,
		    .mech = {row->mech, NULL, 0},
		    .key = k->priv[side],
		    .msg = msg,
		    .msg_len = msg_len,
		};
		if (!p11_mech_ok(m, row->mech, CKF_SIGN)) {
			if (side == SIDE_SH && row->sh_raw && p11_mech_ok(m, row->sh_raw, CKF_SIGN)) {
				/* SoftHSM2 2.6 has no CKM_ECDSA_SHA256: what an
				 * application does then is hash with OpenSSL and
				 * sign the digest; timed, like koltamga's hashing. */
				job[side].mech.mechanism = row->sh_raw;
				job[side].prehash = m->sha256;
				note_add(r->dev_note[d], "SoftHSM2: bench's SHA-256 + %s",
					 row->sh_raw == CKM_ECDSA ? "CKM_ECDSA" : "raw mechanism");
			} else {
				note_add(r->dev_note[d], "%s lacks the mechanism: skipped", side_name[side]);
				progress("  %-30s %s", row->name, r->dev_note[d]);
				return;
			}
		}
		if (m->f->C_GetAttributeValue(sess[side], k->priv[side], &aa, 1) == CKR_OK &&
		    always == CK_TRUE) {
			job[side].context_login = true;
			note_add(r->dev_note[d], "%s: CKA_ALWAYS_AUTHENTICATE, C_Login per signature",
				 side_name[side]);
		}
		/* Both sides' signatures are checked against SoftHSM2's public
		 * key: the same key, and the right bytes signed. */
		siglen = sizeof sig;
		if (!sign_once(&job[side], sess[side], sig, &siglen, note, sizeof note)) {
			note_add(r->dev_note[d], "%s: %s", side_name[side], note);
			progress("  %-30s %s", row->name, r->dev_note[d]);
			return;
		}
		const char *why = ossl_check(mod[SIDE_SH], sess[SIDE_SH], row->alg, k->pub, sig, siglen, msg,
					     msg_len, row->raw);
		if (why) {
			note_add(r->dev_note[d], "%s: %s: not measured", side_name[side], why);
			progress("  %-30s %s", row->name, r->dev_note[d]);
			return;
		}
	}
	/* Alternate which side goes first from round to round: a machine
	 * that warms up or cools down during a pair then favours neither. */
	order[0] = opt.round % 2 ? SIDE_SH : SIDE_KT;
	order[1] = 1 - order[0];
	for (n = 1; n <= 2; n++) {
		for (i = 0; i < N_SIDES; i++) {
			side = order[i];
			note[0] = '\0';
			r->dev[d][side][n - 1] = run_sign(&job[side], n, note, sizeof note);
			if (note[0])
				note_add(r->dev_note[d], "%s, %u thread%s: %s", side_name[side], n,
					 n > 1 ? "s" : "", note);
			progress("  %-30s %u thread%s %-8s %10.1f ops/s", row->name, n, n > 1 ? "s" : " ",
				 side_name[side], r->dev[d][side][n - 1]);
		}
		publish(r);
	}
}

static void device_child(struct result *r)
{
	struct module sh = {.target = T_SOFTHSM, .r = r}, kt = {.target = T_KOLTAMGA, .r = r};
	struct module *mod[N_SIDES] = {[SIDE_SH] = &sh, [SIDE_KT] = &kt};
	CK_SESSION_HANDLE sess[N_SIDES] = {CK_INVALID_HANDLE, CK_INVALID_HANDLE};
	struct dev_keys keys[N_ALGS];
	char dir[1100], shpath[PATH_MAX], shinfo[NOTE_LEN], ktinfo[NOTE_LEN] = "?";
	bool sh_up = false, kt_up = false;
	static const int gen[] = {ALG_RSA, ALG_EC};
	CK_INFO info;
	CK_RV rv;
	size_t g;
	int d;

	memset(keys, 0, sizeof keys);
	snprintf(dir, sizeof dir, "%s/%s.%u", opt.tmp_root, targets[T_DEVICE].name, opt.round);
	if (mkdir(dir, 0700) != 0 || !write_softhsm_conf(dir)) {
		fail(r, "device: cannot set up %s: %s", dir, strerror(errno));
		return;
	}
	/* koltamga.conf wants an absolute module path. */
	if (!realpath(opt.path[T_SOFTHSM], shpath))
		snprintf(shpath, sizeof shpath, "%s", opt.path[T_SOFTHSM]);
	sh.sha256 = kt.sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);

	/* 1. SoftHSM2 directly: a fresh token (initialised, finalised), then
	 * initialised again for good, logged in, the keys generated. */
	progress("device: SoftHSM2 token and keys");
	if (!p11_load(&sh, shpath) || !p11_setup_token(&sh))
		goto out;
	snprintf(shinfo, sizeof shinfo, "%s", r->info);
	if (!p11_start(&sh))
		goto out;
	sh_up = true;
	if (p11_open_user(&sh, &sess[SIDE_SH]) != CKR_OK)
		goto out;
	for (g = 0; g < sizeof gen / sizeof gen[0]; g++) {
		CK_OBJECT_HANDLE pub, priv;

		rv = p11_generate(&sh, sess[SIDE_SH], gen[g], &pub, &priv);
		if (rv != CKR_OK) {
			fail(r, "softhsm2: C_GenerateKeyPair(%s): %s", algs[gen[g]].name, rv_name(rv));
			goto out;
		}
	}

	/* 2. koltamga over that token: the same keys, found by CKA_ID and
	 * label. */
	progress("device: koltamga over SoftHSM2");
	if (!write_device_conf(dir, shpath)) {
		fail(r, "device: cannot write %s/koltamga.conf: %s", dir, strerror(errno));
		goto out;
	}
	if (!p11_load(&kt, opt.path[T_KOLTAMGA]) || !p11_start(&kt))
		goto out;
	kt_up = true;
	if (kt.f->C_GetInfo(&info) == CKR_OK) {
		char manuf[33], desc[33];

		unpad(manuf, sizeof manuf, info.manufacturerID, sizeof info.manufacturerID);
		unpad(desc, sizeof desc, info.libraryDescription, sizeof info.libraryDescription);
		snprintf(ktinfo, sizeof ktinfo, "%s %u.%u", desc, info.libraryVersion.major,
			 info.libraryVersion.minor);
	}
	snprintf(r->info, sizeof r->info, "%.70s over %.80s", ktinfo, shinfo);
	publish(r);
	if (p11_open_user(&kt, &sess[SIDE_KT]) != CKR_OK)
		goto out;
	/* Both sides find the keys now, by CKA_ID and label: koltamga's
	 * C_Login logged SoftHSM2 out and in again, and SoftHSM2 forgets the
	 * handles of private objects at a logout. */
	for (g = 0; g < sizeof gen / sizeof gen[0]; g++) {
		struct dev_keys *k = &keys[gen[g]];

		rv = p11_find_key(&sh, sess[SIDE_SH], gen[g], CKO_PUBLIC_KEY, &k->pub);
		if (rv == CKR_OK)
			rv = p11_find_key(&sh, sess[SIDE_SH], gen[g], CKO_PRIVATE_KEY, &k->priv[SIDE_SH]);
		if (rv != CKR_OK) {
			fail(r, "softhsm2: the %s key (by CKA_ID and label): %s", algs[gen[g]].name,
			     rv_name(rv));
			goto out;
		}
		rv = p11_find_key(&kt, sess[SIDE_KT], gen[g], CKO_PRIVATE_KEY, &k->priv[SIDE_KT]);
		if (rv != CKR_OK) {
			fail(r, "koltamga: the %s key from SoftHSM2 (by CKA_ID and label): %s",
			     algs[gen[g]].name, rv_name(rv));
			goto out;
		}
	}

	/* 3. The same keys, both ways. */
	progress("device: signing, SoftHSM2 directly and through koltamga");
	for (d = 0; d < N_DEV; d++) {
		dev_row_run(mod, sess, d, &keys[dev_rows[d].alg], r);
		publish(r);
	}
out:
	/* koltamga first (it leaves SoftHSM2 initialised: not its own), then
	 * SoftHSM2. */
	if (kt_up) {
		if (sess[SIDE_KT] != CK_INVALID_HANDLE) {
			kt.f->C_Logout(sess[SIDE_KT]);
			kt.f->C_CloseSession(sess[SIDE_KT]);
		}
		rv = kt.f->C_Finalize(NULL);
		if (rv != CKR_OK)
			fail(r, "koltamga: C_Finalize: %s", rv_name(rv));
	}
	if (sh_up) {
		if (sess[SIDE_SH] != CK_INVALID_HANDLE)
			sh.f->C_CloseSession(sess[SIDE_SH]);
		rv = sh.f->C_Finalize(NULL);
		if (rv != CKR_OK)
			fail(r, "softhsm2: C_Finalize after koltamga's: %s", rv_name(rv));
	}
	publish(r);
}

/* ------------------------------------------------------------- parent */

/* Does a phase asked for need this target? */
static bool target_wanted(int t)
{
	return t == T_DEVICE ? (opt.phases & PHASE_DEVICE) != 0 : (opt.phases & PHASES_SEPARATE) != 0;
}

/* Are its modules there? */
static bool target_possible(int t)
{
	if (t == T_DEVICE)
		return opt.path[T_KOLTAMGA] && opt.path[T_SOFTHSM];
	return t == T_OPENSSL || opt.path[t];
}

static void result_init(struct result *r)
{
	int a;

	memset(r, 0, sizeof *r);
	for (a = 0; a < N_ALGS; a++)
		r->sign[a][0] = r->sign[a][1] = NAN;
	for (a = 0; a < N_DEV; a++)
		r->dev[a][SIDE_SH][0] = r->dev[a][SIDE_SH][1] = r->dev[a][SIDE_KT][0] =
		    r->dev[a][SIDE_KT][1] = NAN;
	r->create_s = r->find_ms = NAN;
	r->init_ms = r->open_ms = r->login_ms = r->kdf_ms = NAN;
}

static void run_target(int target, struct result *r)
{
	struct result tmp;
	int fd[2], status;
	ssize_t got;
	size_t have = 0;
	pid_t pid;

	result_init(r);
	if (pipe(fd) != 0) {
		snprintf(r->error, sizeof r->error, "pipe: %s", strerror(errno));
		return;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		snprintf(r->error, sizeof r->error, "fork: %s", strerror(errno));
		close(fd[0]);
		close(fd[1]);
		return;
	}
	if (pid == 0) {
		close(fd[0]);
		result_fd = fd[1];
		r->ran = true;
		if (target == T_OPENSSL)
			openssl_child(r);
		else if (target == T_DEVICE)
			device_child(r);
		else
			p11_child(target, r);
		publish(r);
		fflush(NULL);
		/* _exit: module and OpenSSL destructors add nothing to measure. */
		_exit(0);
	}
	close(fd[1]);
	/* Keep the last whole report; a partial one means the child died
	 * mid-write, which an atomic pipe write rules out. */
	for (;;) {
		got = read(fd[0], (char *)&tmp + have, sizeof tmp - have);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		have += (size_t)got;
		if (have == sizeof tmp) {
			*r = tmp;
			have = 0;
		}
	}
	close(fd[0]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (WIFSIGNALED(status))
		note_add(r->error, "%s: child died of signal %d (%s)", targets[target].name, WTERMSIG(status),
			 strsignal(WTERMSIG(status)));
}

static double best_max(double a, double b)
{
	/* No fmax: the bench links without libm. */
	return isnan(a) ? b : isnan(b) ? a : a > b ? a : b;
}

/* Fold one round into the best so far: highest rate, lowest time.  Counts
 * come with the time they belong to; the first note or error stays. */
static void result_merge(struct result *best, const struct result *r)
{
	int a, n;

	for (a = 0; a < N_ALGS; a++) {
		for (n = 0; n < 2; n++)
			best->sign[a][n] = best_max(best->sign[a][n], r->sign[a][n]);
		if (!best->sign_note[a][0])
			memcpy(best->sign_note[a], r->sign_note[a], NOTE_LEN);
	}
	for (a = 0; a < N_DEV; a++) {
		int side;

		/* Each side's best on its own: rounds alternate which goes
		 * first, and noise only ever slows either down. */
		for (side = 0; side < N_SIDES; side++)
			for (n = 0; n < 2; n++)
				best->dev[a][side][n] = best_max(best->dev[a][side][n], r->dev[a][side][n]);
		if (!best->dev_note[a][0])
			memcpy(best->dev_note[a], r->dev_note[a], NOTE_LEN);
	}
	if (!best->error[0])
		memcpy(best->error, r->error, NOTE_LEN);
	if (!best->info[0])
		memcpy(best->info, r->info, NOTE_LEN);
	best->ran |= r->ran;
	if (!isnan(r->create_s) && !(r->create_s >= best->create_s)) {
		best->create_s = r->create_s;
		best->n_objects = r->n_objects;
	}
	if (!isnan(r->find_ms) && !(r->find_ms >= best->find_ms)) {
		best->find_ms = r->find_ms;
		best->n_lookups = r->n_lookups;
	}
	if (!isnan(r->login_ms) &&
	    !(r->init_ms + r->open_ms + r->login_ms >= best->init_ms + best->open_ms + best->login_ms)) {
		best->init_ms = r->init_ms;
		best->open_ms = r->open_ms;
		best->login_ms = r->login_ms;
		best->login_runs = r->login_runs;
	}
	if (!isnan(r->kdf_ms) && !(r->kdf_ms >= best->kdf_ms)) {
		best->kdf_ms = r->kdf_ms;
		best->kdf_runs = r->kdf_runs;
	}
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

/* A fraction as a signed percentage, "-" for what was not measured. */
static const char *pct(char *buf, size_t len, double v)
{
	if (isnan(v) || isinf(v))
		snprintf(buf, len, "-");
	else
		snprintf(buf, len, "%+.1f%%", 100 * v);
	return buf;
}

/* Number formatting that prints "-" for what was not measured. */
static const char *num(char *buf, size_t len, double v, int decimals, const char *suffix)
{
	if (isnan(v) || isinf(v))
		snprintf(buf, len, "-");
	else
		snprintf(buf, len, "%.*f%s", decimals, v, suffix);
	return buf;
}

static double ratio(double a, double b)
{
	return (isnan(a) || isnan(b) || b <= 0) ? NAN : a / b;
}

static const char *verdict(double v, double target, bool at_least)
{
	if (isnan(v))
		return "n/a";
	return (at_least ? v >= target : v < target) ? "PASS" : "MISS";
}

static void cpu_model(char *out, size_t len)
{
	FILE *fp = fopen("/proc/cpuinfo", "r");
	char line[256];

	snprintf(out, len, "unknown CPU");
	if (!fp)
		return;
	while (fgets(line, sizeof line, fp)) {
		char *colon = strchr(line, ':');

		if (strncmp(line, "model name", 10) == 0 && colon) {
			colon += 1 + strspn(colon + 1, " \t");
			colon[strcspn(colon, "\n")] = '\0';
			snprintf(out, len, "%s", colon);
			break;
		}
	}
	fclose(fp);
}

/* Token stores sync to disk on commit; on tmpfs that costs nothing, so the
 * object numbers mean something different there and the report says which. */
static const char *fs_name(const char *path)
{
	static const struct {
		unsigned long magic;
		const char *name;
	} fs[] = {
	    {0x01021994, "tmpfs"},     {0xef53, "ext2/3/4"}, {0x58465342, "xfs"}, {0x9123683e, "btrfs"},
	    {0x794c7630, "overlayfs"}, {0x2fc12fc1, "zfs"},  {0x6969, "nfs"},
	};
	struct statfs st;
	size_t i;

	if (statfs(path, &st) != 0)
		return "unknown file system";
	for (i = 0; i < sizeof fs / sizeof fs[0]; i++)
		if ((unsigned long)st.f_type == fs[i].magic)
			return fs[i].name;
	return "other file system";
}

/*
 * The report.  One code path for both formats: a row is cells, and the
 * format decides the separators, so text and Markdown never disagree.
 */
static bool md;

static void row(int ncells, ...)
{
	va_list ap;
	int i;

	va_start(ap, ncells);
	for (i = 0; i < ncells; i++) {
		const char *cell = va_arg(ap, const char *);

		if (md)
			printf("| %s ", cell);
		else if (i == 0)
			printf("  %-40s", cell);
		else
			printf(" %11s", cell);
	}
	printf(md ? "|\n" : "\n");
	va_end(ap);
}

static void rule(int ncells)
{
	int i;

	if (!md)
		return;
	for (i = 0; i < ncells; i++)
		printf(i == 0 ? "|---" : "|---:");
	printf("|\n");
}

static void heading(const char *title)
{
	printf(md ? "\n### %s\n\n" : "\n%s\n", title);
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	printf(md ? "\n" : "  ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
}

static void report(const struct result res[N_TARGETS])
{
	const struct result *ko = &res[T_KOLTAMGA], *sh = &res[T_SOFTHSM], *os = &res[T_OPENSSL];
	char b[8][32], cpu[128], title[160], day[16], rounds[32];
	time_t date;
	int a, t, n;

	cpu_model(cpu, sizeof cpu);
	date = time(NULL);
	strftime(day, sizeof day, "%Y-%m-%d", gmtime(&date));
	printf(md ? "### kt-bench, %s\n\n" : "kt-bench, %s\n", day);
	snprintf(rounds, sizeof rounds, ", best of %u rounds", opt.rounds);
	printf(md ? "%.1f s per measurement%s, %ld CPUs (%s, load %.2f at start), "
		    "1 KiB message, tokens on %s.\n\n"
		  : "  %.1f s per measurement%s, %ld CPUs (%s, load %.2f at start),\n"
		    "  1 KiB message, tokens on %s\n",
	       opt.seconds, opt.rounds > 1 ? rounds : "", sysconf(_SC_NPROCESSORS_ONLN), cpu, start_load,
	       fs_name(opt.tmp_root));
	for (t = 0; t < N_TARGETS; t++) {
		const struct result *r = &res[t];

		if (!target_wanted(t))
			continue;
		printf(md ? "- %s: " : "  %-9s ", targets[t].name);
		if (!r->ran && !r->error[0])
			printf("not run%s\n", t == T_KOLTAMGA  ? " (no module: build it, or --koltamga PATH)"
					      : t == T_SOFTHSM ? " (no module: --softhsm PATH)"
					      : t == T_DEVICE  ? " (needs both koltamga and SoftHSM2)"
							       : "");
		else if (t == T_OPENSSL)
			printf("%s\n", r->info);
		else if (t == T_DEVICE)
			printf("%s over a SoftHSM2 token, %s (%s)\n", opt.path[T_KOLTAMGA],
			       opt.path[T_SOFTHSM], r->info[0] ? r->info : "?");
		else
			printf("%s (%s)\n", opt.path[t], r->info[0] ? r->info : "?");
	}

	if (opt.phases & PHASE_SIGN) {
		heading("Signing, operations per second");
		row(6, "mechanism", "OpenSSL", "koltamga", "SoftHSM2", "kt/OpenSSL", "SH/OpenSSL");
		rule(6);
		for (a = 0; a < N_ALGS; a++) {
			for (n = 0; n < 2; n++) {
				snprintf(title, sizeof title, "%s, %d thread%s", algs[a].name, n + 1,
					 n ? "s" : "");
				row(6, title, num(b[0], 32, os->sign[a][n], 0, ""),
				    num(b[1], 32, ko->sign[a][n], 0, ""),
				    num(b[2], 32, sh->sign[a][n], 0, ""),
				    num(b[3], 32, ratio(ko->sign[a][n], os->sign[a][n]), 2, "x"),
				    num(b[4], 32, ratio(sh->sign[a][n], os->sign[a][n]), 2, "x"));
			}
			snprintf(title, sizeof title, "%s, scaling 2/1 threads", algs[a].name);
			row(6, title, num(b[0], 32, ratio(os->sign[a][1], os->sign[a][0]), 2, "x"),
			    num(b[1], 32, ratio(ko->sign[a][1], ko->sign[a][0]), 2, "x"),
			    num(b[2], 32, ratio(sh->sign[a][1], sh->sign[a][0]), 2, "x"), "", "");
		}
		note("Token: C_SignInit + C_Sign per signature, one session per thread, key "
		     "generated on the token (private, sensitive). OpenSSL: EVP_MD_CTX_new + "
		     "EVP_DigestSignInit + EVP_DigestSign + free per signature.");
		for (t = 0; t < N_TARGETS; t++)
			for (a = 0; a < N_ALGS; a++)
				if (res[t].sign_note[a][0])
					note("%s, %s: %s", targets[t].name, algs[a].name,
					     res[t].sign_note[a]);
	}

	if (opt.phases & PHASE_OBJECTS) {
		heading("Token data objects");
		row(3, "", "koltamga", "SoftHSM2");
		rule(3);
		snprintf(b[0], 32, "%lu", ko->n_objects);
		snprintf(b[1], 32, "%lu", sh->n_objects);
		row(3, "objects created", ko->n_objects ? b[0] : "-", sh->n_objects ? b[1] : "-");
		row(3, "C_CreateObject, objects/s",
		    num(b[2], 32, ratio((double)ko->n_objects, ko->create_s), 0, ""),
		    num(b[3], 32, ratio((double)sh->n_objects, sh->create_s), 0, ""));
		row(3, "C_CreateObject, total s", num(b[4], 32, ko->create_s, 2, ""),
		    num(b[5], 32, sh->create_s, 2, ""));
		row(3, "find by CKA_CLASS+CKA_LABEL, ms", num(b[6], 32, ko->find_ms, 4, ""),
		    num(b[7], 32, sh->find_ms, 4, ""));
		note("Public CKO_DATA token objects with distinct labels; a lookup is "
		     "C_FindObjectsInit + C_FindObjects + C_FindObjectsFinal for a random existing "
		     "label, in a logged-in session. koltamga gets %lu objects, SoftHSM2 %lu "
		     "(it writes a file per object and searches linearly, so it gets fewer by "
		     "default).",
		     opt.objects[T_KOLTAMGA], opt.objects[T_SOFTHSM]);
	}

	if (opt.phases & PHASE_LOGIN) {
		heading("Start-up and login, ms (mean; C_Finalize between runs)");
		row(3, "", "koltamga", "SoftHSM2");
		rule(3);
		row(3, "C_Initialize", num(b[0], 32, ko->init_ms, 2, ""), num(b[1], 32, sh->init_ms, 2, ""));
		row(3, "find token + C_OpenSession", num(b[2], 32, ko->open_ms, 2, ""),
		    num(b[3], 32, sh->open_ms, 2, ""));
		row(3, "C_Login(CKU_USER)", num(b[4], 32, ko->login_ms, 2, ""),
		    num(b[5], 32, sh->login_ms, 2, ""));
		row(3, "total", num(b[6], 32, ko->init_ms + ko->open_ms + ko->login_ms, 2, ""),
		    num(b[7], 32, sh->init_ms + sh->open_ms + sh->login_ms, 2, ""));
		snprintf(b[0], 32, "%lu", ko->login_runs);
		snprintf(b[1], 32, "%lu", sh->login_runs);
		row(3, "runs", ko->login_runs ? b[0] : "-", sh->login_runs ? b[1] : "-");
		note("scrypt alone (N=%llu r=%u p=%u, OpenSSL EVP_KDF \"SCRYPT\", mean of %lu): "
		     "%s ms%s%s%s",
		     (unsigned long long)opt.scrypt_n, opt.scrypt_r, opt.scrypt_p, os->kdf_runs,
		     num(b[0], 32, os->kdf_ms, 2, ""), isnan(ratio(os->kdf_ms, ko->login_ms)) ? "" : ", ",
		     isnan(ratio(os->kdf_ms, ko->login_ms))
			 ? ""
			 : num(b[1], 32, 100 * ratio(os->kdf_ms, ko->login_ms), 0, "%"),
		     isnan(ratio(os->kdf_ms, ko->login_ms)) ? "" : " of koltamga's C_Login");
		note("%s", opt.scrypt_set ? "koltamga.conf sets these scrypt parameters."
					  : "These are koltamga's defaults; the bench's "
					    "koltamga.conf sets no scrypt_* key.");
	}

	if (opt.phases & PHASE_DEVICE) {
		const struct result *dv = &res[T_DEVICE];

		heading("koltamga over SoftHSM2 (driver = pkcs11), same keys, operations per second");
		row(5, "mechanism, message", "SoftHSM2", "koltamga", "kt/SH", "overhead");
		rule(5);
		for (a = 0; a < N_DEV; a++) {
			for (n = 0; n < 2; n++) {
				double sh_ops = dv->dev[a][SIDE_SH][n], kt_ops = dv->dev[a][SIDE_KT][n];

				snprintf(title, sizeof title, "%s, %d thread%s", dev_rows[a].name, n + 1,
					 n ? "s" : "");
				row(5, title, num(b[0], 32, sh_ops, 0, ""), num(b[1], 32, kt_ops, 0, ""),
				    num(b[2], 32, ratio(kt_ops, sh_ops), 3, "x"),
				    pct(b[3], 32, ratio(sh_ops, kt_ops) - 1));
			}
		}
		note("One process, one SoftHSM2 token, the same two keys (generated on SoftHSM2 "
		     "directly; koltamga finds them by CKA_ID and label). koltamga.conf: only a "
		     "[token] with driver = pkcs11, sign_policy = automatic (an audit record per "
		     "signature).");
		note("Per signature, C_SignInit + C_Sign in a session of the thread's own: "
		     "SoftHSM2 directly signs CKM_SHA256_RSA_PKCS itself; for ECDSA-SHA256 it has "
		     "no CKM_ECDSA_SHA256, so the bench hashes with OpenSSL (EVP_Digest, timed) and "
		     "signs the digest with CKM_ECDSA. koltamga takes a pooled SoftHSM2 session and "
		     "forwards CKM_SHA256_RSA_PKCS as it is (hashing the message once more for the "
		     "audit record), and for CKM_ECDSA_SHA256 hashes the message once (for the "
		     "record and the signature) and has SoftHSM2 sign it with CKM_ECDSA. Raw: "
		     "CKM_ECDSA over the same 32-byte hash on both.");
		note("kt/SH: koltamga's rate over SoftHSM2's; overhead: the extra time per "
		     "signature, SoftHSM2's rate / koltamga's - 1 (negative: noise). Every "
		     "signature of both sides was checked by OpenSSL against SoftHSM2's public key "
		     "before timing.");
		for (a = 0; a < N_DEV; a++)
			if (dv->dev_note[a][0])
				note("%s: %s", dev_rows[a].name, dv->dev_note[a]);
	}

	if (opt.phases & (PHASE_SIGN | PHASE_OBJECTS | PHASE_DEVICE)) {
		heading("Targets for koltamga (measured, not enforced)");
		/* SoftHSM2 and OpenSSL alongside: on a busy or small machine
		 * even OpenSSL may not scale, and the goal should be read so. */
		row(6, "target", "goal", "koltamga", "result", "SoftHSM2", "OpenSSL");
		rule(6);
	}
	if (opt.phases & PHASE_SIGN) {
		for (a = 0; a < N_ALGS; a++) {
			double v = ratio(ko->sign[a][0], os->sign[a][0]);

			snprintf(title, sizeof title, "%s 1 thread vs OpenSSL", algs[a].name);
			snprintf(b[0], 32, ">= %.2fx", TARGET_SIGN_RATIO);
			row(6, title, b[0], num(b[1], 32, v, 2, "x"), verdict(v, TARGET_SIGN_RATIO, true),
			    num(b[2], 32, ratio(sh->sign[a][0], os->sign[a][0]), 2, "x"), "");
		}
		for (a = 0; a < N_ALGS; a++) {
			double v = ratio(ko->sign[a][1], ko->sign[a][0]);

			snprintf(title, sizeof title, "%s 2 threads / 1", algs[a].name);
			snprintf(b[0], 32, ">= %.2fx", TARGET_SCALING);
			row(6, title, b[0], num(b[1], 32, v, 2, "x"), verdict(v, TARGET_SCALING, true),
			    num(b[2], 32, ratio(sh->sign[a][1], sh->sign[a][0]), 2, "x"),
			    num(b[3], 32, ratio(os->sign[a][1], os->sign[a][0]), 2, "x"));
		}
	}
	if (opt.phases & PHASE_DEVICE) {
		const struct result *dv = &res[T_DEVICE];

		for (a = 0; a < N_DEV; a++) {
			for (n = 0; n < 2; n++) {
				double v = ratio(dv->dev[a][SIDE_SH][n], dv->dev[a][SIDE_KT][n]) - 1;

				snprintf(title, sizeof title, "device %s, %d thr", dev_rows[a].name, n + 1);
				snprintf(b[0], 32, "<= +%.0f%%", 100 * TARGET_DEVICE_OVERHEAD);
				/* Judged as printed (0.1 %): a "+5.0%" passes. */
				row(6, title, b[0], pct(b[1], 32, v),
				    verdict(-v, -(TARGET_DEVICE_OVERHEAD + 0.0005), true), "", "");
			}
		}
	}
	if (opt.phases & PHASE_OBJECTS) {
		snprintf(title, sizeof title, "find by label (%lu/%lu objects)", opt.objects[T_KOLTAMGA],
			 opt.objects[T_SOFTHSM]);
		snprintf(b[0], 32, "< %.3f ms", TARGET_FIND_MS);
		row(6, title, b[0], num(b[1], 32, ko->find_ms, 4, " ms"),
		    verdict(ko->find_ms, TARGET_FIND_MS, false), num(b[2], 32, sh->find_ms, 4, " ms"), "");
	}

	for (t = 0; t < N_TARGETS; t++)
		if (res[t].error[0])
			note("%sstopped%s %s", md ? "**" : "", md ? ":**" : ":", res[t].error);
	if (md)
		printf("\n");
}

static void usage(FILE *fp)
{
	fprintf(fp, "usage: kt-bench [options]\n"
		    "  --koltamga PATH       koltamga module\n"
		    "                        ($KOLTAMGA_MODULE, else ./.libs/koltamga-pkcs11.so)\n"
		    "  --softhsm PATH        SoftHSM2 module\n"
		    "                        ($SOFTHSM2_MODULE, else the usual places)\n"
		    "  --no-koltamga, --no-softhsm   leave that module out\n"
		    "  -t, --time SECONDS    length of each measurement (default 2)\n"
		    "  --objects N           data objects on koltamga (default 10000)\n"
		    "  --softhsm-objects N   data objects on SoftHSM2 (default 2000)\n"
		    "  --only LIST           parts to run: sign,objects,login,device (default all)\n"
		    "                        (device: koltamga's pkcs11 driver over a SoftHSM2\n"
		    "                        token against SoftHSM2 directly, same keys)\n"
		    "  --rounds N            run everything N times, report the best of each\n"
		    "                        (default 1; use 3 or more on a shared machine)\n"
		    "  --scrypt N,R,P        scrypt parameters for koltamga.conf and the KDF\n"
		    "                        measurement (default: koltamga's, 32768,8,1)\n"
		    "  --markdown            print the report as Markdown (for docs/performance.md)\n"
		    "  --keep                keep the temporary token directories\n"
		    "Progress goes to stderr, the report to stdout.  Exit status is 0 whatever\n"
		    "the numbers: targets are reported as PASS/MISS, not enforced.\n");
}

static bool parse_ulong(const char *s, unsigned long *out)
{
	char *end;

	errno = 0;
	*out = strtoul(s, &end, 10);
	return errno == 0 && end != s && *end == '\0' && *out > 0 && s[0] != '-';
}

static bool parse_phases(const char *s, unsigned *out)
{
	char buf[64], *tok, *save;

	snprintf(buf, sizeof buf, "%s", s);
	*out = 0;
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (strcmp(tok, "sign") == 0)
			*out |= PHASE_SIGN;
		else if (strcmp(tok, "objects") == 0)
			*out |= PHASE_OBJECTS;
		else if (strcmp(tok, "login") == 0)
			*out |= PHASE_LOGIN;
		else if (strcmp(tok, "device") == 0)
			*out |= PHASE_DEVICE;
		else
			return false;
	}
	return *out != 0;
}

static const char *find_softhsm(void)
{
	static const char *const places[] = {
	    "/usr/lib/softhsm/libsofthsm2.so",
	    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	    "/usr/lib64/pkcs11/libsofthsm2.so",
	    "/usr/local/lib/softhsm/libsofthsm2.so",
	};
	const char *env = getenv("SOFTHSM2_MODULE");
	size_t i;

	if (env && *env)
		return env;
	for (i = 0; i < sizeof places / sizeof places[0]; i++)
		if (access(places[i], R_OK) == 0)
			return places[i];
	return NULL;
}

int main(int argc, char **argv)
{
	enum {
		O_KOLTAMGA = 256,
		O_SOFTHSM,
		O_NO_KOLTAMGA,
		O_NO_SOFTHSM,
		O_OBJECTS,
		O_SH_OBJECTS,
		O_ONLY,
		O_SCRYPT,
		O_MARKDOWN,
		O_KEEP,
		O_ROUNDS
	};
	static const struct option longopts[] = {
	    {"koltamga", required_argument, NULL, O_KOLTAMGA},
	    {"softhsm", required_argument, NULL, O_SOFTHSM},
	    {"no-koltamga", no_argument, NULL, O_NO_KOLTAMGA},
	    {"no-softhsm", no_argument, NULL, O_NO_SOFTHSM},
	    {"time", required_argument, NULL, 't'},
	    {"objects", required_argument, NULL, O_OBJECTS},
	    {"softhsm-objects", required_argument, NULL, O_SH_OBJECTS},
	    {"only", required_argument, NULL, O_ONLY},
	    {"scrypt", required_argument, NULL, O_SCRYPT},
	    {"markdown", no_argument, NULL, O_MARKDOWN},
	    {"keep", no_argument, NULL, O_KEEP},
	    {"rounds", required_argument, NULL, O_ROUNDS},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct result res[N_TARGETS];
	bool no_kt = false, no_sh = false;
	const char *env;
	const char *tmpdir = getenv("TMPDIR");
	unsigned long long sn;
	unsigned long ul;
	unsigned sr, sp;
	char *end;
	int c, t;

	while ((c = getopt_long(argc, argv, "t:h", longopts, NULL)) != -1) {
		switch (c) {
		case O_KOLTAMGA:
			opt.path[T_KOLTAMGA] = optarg;
			break;
		case O_SOFTHSM:
			opt.path[T_SOFTHSM] = optarg;
			break;
		case O_NO_KOLTAMGA:
			no_kt = true;
			break;
		case O_NO_SOFTHSM:
			no_sh = true;
			break;
		case 't':
			opt.seconds = strtod(optarg, &end);
			if (*end || !(opt.seconds > 0 && opt.seconds <= 3600)) {
				fprintf(stderr, "kt-bench: bad --time: %s\n", optarg);
				return 2;
			}
			break;
		case O_OBJECTS:
		case O_SH_OBJECTS:
			t = c == O_OBJECTS ? T_KOLTAMGA : T_SOFTHSM;
			if (!parse_ulong(optarg, &opt.objects[t])) {
				fprintf(stderr, "kt-bench: bad object count: %s\n", optarg);
				return 2;
			}
			break;
		case O_ONLY:
			if (!parse_phases(optarg, &opt.phases)) {
				fprintf(stderr, "kt-bench: bad --only (sign,objects,login,device): %s\n",
					optarg);
				return 2;
			}
			break;
		case O_SCRYPT:
			if (sscanf(optarg, "%llu,%u,%u", &sn, &sr, &sp) != 3 || sn < 1024 ||
			    (sn & (sn - 1)) || !sr || !sp) {
				fprintf(stderr,
					"kt-bench: bad --scrypt (N,r,p; N a power of two >= 1024): %s\n",
					optarg);
				return 2;
			}
			opt.scrypt_n = sn;
			opt.scrypt_r = sr;
			opt.scrypt_p = sp;
			opt.scrypt_set = true;
			break;
		case O_ROUNDS:
			if (!parse_ulong(optarg, &ul) || ul > 100) {
				fprintf(stderr, "kt-bench: bad --rounds (1..100): %s\n", optarg);
				return 2;
			}
			opt.rounds = (unsigned)ul;
			break;
		case O_MARKDOWN:
			opt.markdown = true;
			break;
		case O_KEEP:
			opt.keep = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}

	if (!opt.path[T_KOLTAMGA]) {
		env = getenv("KOLTAMGA_MODULE");
		if (env && *env)
			opt.path[T_KOLTAMGA] = env;
		else if (access(".libs/koltamga-pkcs11.so", R_OK) == 0)
			opt.path[T_KOLTAMGA] = ".libs/koltamga-pkcs11.so";
	}
	if (!opt.path[T_SOFTHSM])
		opt.path[T_SOFTHSM] = find_softhsm();
	if (no_kt)
		opt.path[T_KOLTAMGA] = NULL;
	if (no_sh)
		opt.path[T_SOFTHSM] = NULL;

	snprintf(opt.tmp_root, sizeof opt.tmp_root, "%s/kt-bench.XXXXXX",
		 tmpdir && *tmpdir ? tmpdir : "/tmp");
	if (!mkdtemp(opt.tmp_root)) {
		fprintf(stderr, "kt-bench: mkdtemp %s: %s\n", opt.tmp_root, strerror(errno));
		return 1;
	}
	/* Same message for every target and thread; content does not matter,
	 * length does (1 KiB: a small document or a TLS transcript). */
	for (c = 0; c < MSG_LEN; c++)
		message[c] = (unsigned char)(c * 131 + 7);

	/* One target at a time: running them side by side would measure the
	 * scheduler.  Rounds interleave the targets, so a burst of load
	 * elsewhere hurts one round of each rather than all of one. */
	for (t = 0; t < N_TARGETS; t++)
		result_init(&res[t]);
	if (getloadavg(&start_load, 1) != 1)
		start_load = NAN;
	for (opt.round = 1; opt.round <= opt.rounds; opt.round++) {
		if (opt.rounds > 1)
			progress("round %u of %u", opt.round, opt.rounds);
		for (t = 0; t < N_TARGETS; t++) {
			struct result r;

			if (!target_wanted(t) || !target_possible(t))
				continue;
			run_target(t, &r);
			result_merge(&res[t], &r);
		}
	}

	md = opt.markdown;
	report(res);

	if (opt.keep)
		fprintf(stderr, "kt-bench: tokens kept in %s\n", opt.tmp_root);
	else
		nftw(opt.tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}
