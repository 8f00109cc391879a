/*
 * Key compromise reports (law art. 10: the holder must report a
 * compromised key to the certification centre).  When CKA_KT_COMPROMISED
 * is set, the module writes what the centre needs to revoke the
 * certificate: which key and certificate, when, why, who marked it.
 * Never a secret: no key material, no PIN, no document.
 */
#ifndef KOLTAMGA_COMPROMISE_H
#define KOLTAMGA_COMPROMISE_H

#include "common.h"

struct compromise_report {
	const char *token_serial, *token_label;
	const char *object_class; /* of the object that was marked */
	const char *key_id_hex;   /* CKA_ID, hex */
	const char *key_label;
	/* The certificate by issuer and serial, as the centre knows it; never
	 * the holder's name (personal data). NULL when there is none. */
	const char *cert_issuer, *cert_serial_hex;
	const char *reason;       /* CKA_KT_COMPROMISE_REASON, or NULL */
	const char *marked_by;    /* "user" or "security officer" */
	const char *program;
	long pid;
};

/* Write one report as a new file in `dir` (created 0700 when missing), the
 * file 0600, complete or not at all (written aside, synced, renamed).  On
 * success `path` (if not NULL) names it.  CKR_OK or CKR_FUNCTION_FAILED
 * after a log line. */
CK_RV compromise_write(const char *dir, const struct compromise_report *r, char *path, size_t path_len);

#endif
