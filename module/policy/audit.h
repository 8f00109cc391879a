/*
 * The audit log: one JSON line per signing decision, append-only, each
 * carrying the SHA-256 of the previous line so that removing or changing a
 * record breaks the chain.  Metadata only: never document content, never
 * a PIN; no digest when the document is marked confidential.
 */
#ifndef KOLTAMGA_AUDIT_H
#define KOLTAMGA_AUDIT_H

#include "common.h"

struct audit_record {
	const char *token;        /* token serial */
	const char *key_id_hex;   /* CKA_ID, hex */
	const char *cert_issuer;  /* certificate issuer (RFC 2253 text), or NULL */
	const char *cert_serial;  /* hex, or NULL */
	const char *mechanism;
	unsigned long long size;
	const char *sha256_hex;   /* NULL when confidential */
	/* Instead of sha256_hex: the data itself, hashed when the record is
	 * written (by the flusher, for deferred records), so a seal's signer
	 * does not wait for it.  At most AUDIT_HASH_LATER_MAX bytes; copied. */
	const void *hash_data;
	size_t hash_len;
	const char *program;
	long pid;
	const char *decision;     /* "signed", "refused", "rejected", "canceled", "failed" */
	const char *reason;       /* why, for anything but "signed" */
};

#define AUDIT_HASH_LATER_MAX 4096

/* Append a record to `path` (created 0600 with its directory when missing).
 * Serialised across threads and processes (flock); the previous record's
 * hash is read from the file's last line.  CKR_OK or CKR_FUNCTION_FAILED
 * after one log line. */
CK_RV audit_append(const char *path, const struct audit_record *rec);

/* The same, for records that may wait: kept in memory and written with
 * others (one fsync for up to 4096 records, at most about a second later,
 * or at audit_shutdown).  For automatic (seal) signatures, whose volume would
 * otherwise cost an fsync each.  A failure to write earlier records is
 * reported here. */
CK_RV audit_append_deferred(const char *path, const struct audit_record *rec);
/* Write the deferred records now. */
CK_RV audit_flush(void);
/* Stop the flusher thread and write what is left (C_Finalize; also when the
 * module unloads or the process exits without C_Finalize). */
CK_RV audit_shutdown(void);
/* May the module start its flusher thread?  Not when the application said
 * CKF_LIBRARY_CANT_CREATE_OS_THREADS: records then wait for the next one,
 * a full batch, or audit_shutdown. */
void audit_allow_threads(bool allowed);

/* Verify a log's chain: 0 when intact; otherwise the 1-based number of the
 * first broken record (and `why` says what is wrong). */
unsigned long audit_verify(const char *path, char *why, size_t why_len);

#endif
