/*
 * libFuzzer target: certattrs_derive() on arbitrary bytes.  Any input must
 * give CKR_OK with an attribute set, or CKR_ATTRIBUTE_VALUE_INVALID with
 * none; anything else (a crash, a leak, another rv) is a finding.
 *
 * Build and run (from the top of the source tree; clang 14 on Debian 12
 * ships libFuzzer in libclang-rt-14-dev / clang-14):
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE \
 *     -I module -I include -I /usr/include/p11-kit-1 \
 *     module/certattrs.c module/attrs.c module/common.c module/log.c \
 *     tests/fuzz/fuzz-cert.c -lcrypto -o fuzz-cert
 *   mkdir -p corpus && tests/pki/gen.sh pki && \
 *     for f in pki/[a-z]*.pem; do \
 *       openssl x509 -in $f -outform DER -out corpus/$(basename $f .pem).der; done
 *   ./fuzz-cert -max_total_time=120 -max_len=8192 corpus
 */
#include <stdint.h>
#include <stdlib.h>

#include "certattrs.h"

static void check_config(void)
{
	/* Some configured OIDs, so the extra rows are fuzzed too. */
	static int done;
	if (done)
		return;
	done = 1;
	if (certattrs_add_oid("personal_id", "1.2.3.4") != CKR_OK ||
	    certattrs_add_oid("powers", "1.3.6.1.4.1.99999.1") != CKR_OK)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct attrs *a = NULL;
	CK_RV rv;

	check_config();
	rv = certattrs_derive(data, (CK_ULONG)size, &a);
	if (rv == CKR_OK) {
		if (!a)
			abort();
		/* Touch every value, so a bad length shows under ASan. */
		volatile unsigned char sink = 0;
		for (size_t i = 0; i < attrs_count(a); i++) {
			const CK_ATTRIBUTE *at = attrs_at(a, i);
			for (CK_ULONG k = 0; k < at->ulValueLen; k++)
				sink ^= ((const unsigned char *)at->pValue)[k];
		}
		(void)sink;
	} else if (rv != CKR_ATTRIBUTE_VALUE_INVALID || a) {
		abort();
	}
	attrs_free(a);
	return 0;
}
