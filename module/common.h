/* Definitions every koltamga source file shares. */
#ifndef KOLTAMGA_COMMON_H
#define KOLTAMGA_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pkcs11-3.h"

#define KT_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Fill a blank-padded PKCS#11 text field (labels, manufacturer ids). */
void kt_pad(CK_UTF8CHAR *field, size_t field_len, const char *text);

/* Wipe memory the compiler may not optimise away (OPENSSL_cleanse). */
void kt_wipe(void *p, size_t len);

/* Memory for a secret (key material, a PIN, a document being signed):
 * zeroed, from OpenSSL's secure heap when there is room there (locked,
 * excluded from core dumps, guard pages), else from the ordinary heap.
 * Free it with kt_free_secret. */
void *kt_alloc_secret(size_t len);

/* Free memory that held a secret, from either heap: wiped first, NULL is
 * fine.  `len` is the size asked for at allocation (or less: the part that
 * held anything). */
void kt_free_secret(void *p, size_t len);

/* Set up OpenSSL's secure heap of `bytes` for this process, unless the
 * application or an earlier initialisation did. */
void kt_secure_heap_init(size_t bytes);

/* The value of one hex digit (either case), or -1. */
int kt_hex_digit(int c);

/* Lowercase hex of n bytes into out (2n + 1 bytes, NUL-terminated). */
void kt_hex(char *out, const void *p, size_t n);

/* The calling program's path (/proc/self/exe), for requests, the audit log
 * and reports; "unknown program" when it cannot be read.  Behind p11-kit's
 * server: the client application, "... (through p11-kit-remote)". */
const char *kt_program(void);
/* Its pid (the client's, behind p11-kit's server). */
long kt_program_pid(void);

#endif
