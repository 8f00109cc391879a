#!/usr/bin/env bash
# GnuTLS p11tool --test-sign (3.7.9) under koltamga's signing confirmation.
# On a fresh token: a person's ECDSA key (sign_policy = confirm, the module
# default here) with a certificate from a test CA, and an RSA seal that a
# [key] section makes automatic.  GnuTLS sends C_Login(CKU_CONTEXT_SPECIFIC)
# for the always-authenticate key with the PIN it has (GNUTLS_PIN or
# --set-pin); then the scripted signer (tests/pinentry/fake-confirm.sh,
# confirm = command) answers: yes -> --test-sign passes after exactly one
# question; no / cancel -> it fails with nothing signed; the seal signs
# without a question.  Every decision is checked in the audit log.  Same
# scenario on koltamga with its token on a device (koltamga-device; skipped on
# an ASan build, where GnuTLS clients hang at exit: lib.sh) and on SoftHSM2,
# where the confirmation steps do not apply.
set -eu
. "$(dirname "$0")/lib.sh"

kt_need_tools p11tool openssl timeout

LABEL=kt-p11confirm
URL="pkcs11:token=$LABEL"
KT_SRCDIR=${KOLTAMGA_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
FAKE_CONFIRM=$(cd "$KT_SRCDIR" && pwd)/tests/pinentry/fake-confirm.sh
CA=$KT_TMP/ca
TEST_DATA='Test data to sign' # what p11tool --test-sign signs (GnuTLS src/pkcs11.c)
DIGESTINFO_SHA256='\x30\x31\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01\x05\x00\x04\x20'

# PINs reach p11tool through its environment (clients.md) or --set-pin.
p11() {
	GNUTLS_SO_PIN=$SO_PIN GNUTLS_PIN=$USER_PIN kt_client p11tool --batch --provider "$MODULE" "$@"
}
p11_set_pin() {
	kt_client env -u GNUTLS_PIN -u GNUTLS_SO_PIN p11tool --batch --provider "$MODULE" --set-pin "$USER_PIN" "$@"
}
on_koltamga() { kt_on_koltamga; }
confirm_only() { on_koltamga || kt_na "SoftHSM2 has no signing confirmation"; }

# answer, questions, notices, expect_questions, audit_count, audit_new: lib.sh.
expect_audit() { # N DECISION [SHA256]
	[ "$(wc -l <new.audit)" = "$1" ] || kt_fail "expected $1 new audit record(s), got $(wc -l <new.audit)"
	[ "$(grep -c "\"decision\":\"$2\"" new.audit)" = "$1" ] || kt_fail "audit: expected decision $2"
	kt_grep '"program":"[^"]*/p11tool"' new.audit
	if [ -n "${3:-}" ]; then
		kt_grep "\"sha256\":\"$3\"" new.audit
	fi
}

# What the token is handed for SHA-256 signatures of TEST_DATA, as the
# SHA-256 the request and the audit show: ECDSA gets the hash, RSA PKCS#1
# v1.5 the DigestInfo.
ec_request_sha256() { printf '%s' "$TEST_DATA" | openssl dgst -sha256 -binary | openssl dgst -sha256 -r | cut -d' ' -f1; }
rsa_request_sha256() {
	{
		printf '%b' "$DIGESTINFO_SHA256"
		printf '%s' "$TEST_DATA" | openssl dgst -sha256 -binary
	} | openssl dgst -sha256 -r | cut -d' ' -f1
}

s_initialize() {
	if on_koltamga; then
		# People's keys ask (the module default); the key labelled "seal"
		# is an automatic seal.
		sed -i 's/^sign_policy = automatic$/sign_policy = confirm/' "$KOLTAMGA_CONF"
		kt_conf_add "$(printf 'confirm = command\nconfirm_program = %s\n[key]\nlabel = seal\nsign_policy = automatic\n' \
			"$FAKE_CONFIRM")"
		cat "$KOLTAMGA_CONF"
		kt_grep '^sign_policy = confirm$' "$KOLTAMGA_CONF"
	fi
	answer 1
	GNUTLS_NEW_SO_PIN=$SO_PIN p11 --initialize --label "$LABEL" "pkcs11:token="
	p11 --initialize-pin "$URL"
	p11 --list-tokens >tokens.txt
	cat tokens.txt
	kt_grep "Label: $LABEL\$" tokens.txt
	kt_nogrep 'uPIN uninitialized' tokens.txt
}

# obj_of LABEL: the block of keys.txt (p11tool --list-*) with that label.
obj_of() {
	awk -v l="$1" '/^Object [0-9]+:/ { if (f) printf "%s", b; b = ""; f = 0 }
		{ b = b $0 "\n" } $1 == "Label:" && $2 == l { f = 1 } END { if (f) printf "%s", b }' keys.txt
}

s_generate() {
	p11 --login --generate-privkey ecdsa --curve secp256r1 --label signer --outfile signer.pub.pem "$URL"
	p11 --login --generate-privkey rsa --bits 2048 --label seal --outfile seal.pub.pem "$URL"
	p11 --login --list-privkeys "$URL" >keys.txt
	cat keys.txt
	obj_of signer | grep -q 'Type: Private key (EC/ECDSA-SECP256R1)' || kt_fail "no ECDSA key 'signer'"
	obj_of seal | grep -q 'Type: Private key (RSA-2048)' || kt_fail "no RSA key 'seal'"
	kt_grep 'Label: seal$' keys.txt
	[ "$(grep -c '^Object [0-9]*:' keys.txt)" = 2 ] || kt_fail "expected 2 private keys"
	if on_koltamga; then
		# The policy shows as CKA_ALWAYS_AUTHENTICATE on the person's key only.
		obj_of signer | grep -q 'Flags:.*CKA_ALWAYS_AUTH' || kt_fail "signer: no CKA_ALWAYS_AUTHENTICATE"
		! obj_of seal | grep -q 'CKA_ALWAYS_AUTH' || kt_fail "seal: CKA_ALWAYS_AUTHENTICATE although automatic"
	fi
}

# The test CA certifies the signer's token key; p11tool stores the
# certificate beside the key (same CKA_ID).
s_certificate() {
	local id
	openssl x509 -new -subj "/C=KG/SN=Testov/GN=Aibek/CN=Aibek Testov" -force_pubkey signer.pub.pem \
		-CA "$CA/ca.pem" -CAkey "$CA/ca.key" -set_serial 0x2001 -days 30 -extfile "$CA/ext.cnf" -out signer.pem
	p11 --login --list-privkeys "$URL;object=signer" >key.txt
	id=$(sed -n 's/^[[:space:]]*ID: //p' key.txt | head -n 1 | tr -d ':')
	[ -n "$id" ] || kt_fail "signer has no CKA_ID"
	p11 --login --write --load-certificate signer.pem --label signer --id "$id" "$URL"
	p11 --list-all-certs "$URL" >certs.txt
	cat certs.txt
	kt_grep 'Label: signer$' certs.txt
	kt_grep "ID: $(echo "$id" | sed 's/../&:/g; s/:$//')\$" certs.txt
}

# test_sign_ok OBJECT ALGORITHM [how]: --test-sign passes; how = set-pin
# gives the PIN with --set-pin instead of GNUTLS_PIN.
test_sign_ok() {
	local rc=0
	if [ "${3:-}" = set-pin ]; then
		KOLTAMGA_DEBUG=session p11_set_pin --login --test-sign "$URL;object=$1" >sign.txt 2>&1 || rc=$?
	else
		KOLTAMGA_DEBUG=session p11 --login --test-sign "$URL;object=$1" >sign.txt 2>&1 || rc=$?
	fi
	cat sign.txt
	[ "$rc" = 0 ] || kt_fail "--test-sign failed (exit $rc)"
	# p11tool ends its "Signing using ..." line only after the signature;
	# the module's trace lands in between: p11tool's own text, in one line.
	sed -E 's/koltamga\[[a-z]+\]: .*//' sign.txt | tr -d '\n' >flat.txt
	echo >>flat.txt
	kt_grep "Signing using $2\.\.\. ok" flat.txt
	kt_grep 'Verifying against private key parameters\.\.\. ok' flat.txt
	kt_grep 'Verifying against public key in the token\.\.\. ok' flat.txt
}

confirmed() { # [set-pin]
	local n0 want
	n0=$(audit_count)
	answer 0
	test_sign_ok signer ECDSA-SHA256 "${1:-}"
	on_koltamga || return 0
	# GnuTLS re-authenticated for the always-authenticate key, and the
	# signer was asked once, about exactly what was signed.
	kt_grep 'C_Login\(2\) = CKR_OK' sign.txt
	want=$(ec_request_sha256)
	expect_questions 1 1
	cat fc.out
	kt_grep '^Size: 32 bytes$' fc.out
	kt_grep "^SHA-256: $want\$" fc.out
	kt_grep '^Signer: Aibek Testov$' fc.out
	kt_grep '^Key: signer$' fc.out
	kt_grep '^Mechanism: CKM_ECDSA$' fc.out
	kt_grep '^Requested by: [^ ]*/p11tool \(pid [0-9]+\)$' fc.out
	kt_grep '^RESULT: signed$' fc.out
	audit_new "$n0"
	expect_audit 1 signed "$want"
	kt_grep '"mechanism":"CKM_ECDSA","size":32,' new.audit
}
s_confirm_yes() { confirmed; }
s_confirm_yes_set_pin() { confirmed set-pin; }

# refused_test_sign OBJECT: a --test-sign expected to fail, its output in
# out.txt and the log.  Under an ASan preload p11tool then hangs in exit(),
# in p11-kit's ELF destructor (freelocale() waiting for the setlocale lock;
# SoftHSM too, as certtool in p11tool.sh): there, wait for its last
# message, then end it.
refused_test_sign() {
	local pid _ rc=0
	if [ -z "${KT_PRELOAD:-}" ]; then
		p11 --login --test-sign "$URL;object=$1" >out.txt 2>&1 || rc=$?
		cat out.txt
		return "$rc"
	fi
	GNUTLS_PIN=$USER_PIN LD_PRELOAD=$KT_PRELOAD ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
		timeout "$KT_STEP_TIMEOUT" p11tool --batch --provider "$MODULE" --login --test-sign "$URL;object=$1" \
		</dev/null >out.txt 2>&1 &
	pid=$!
	for _ in $(seq 1 "$((KT_STEP_TIMEOUT * 10))"); do
		kill -0 "$pid" 2>/dev/null || break
		if grep -q 'Cannot sign data' out.txt; then
			sleep 2
			if kill -0 "$pid" 2>/dev/null; then
				echo "(p11tool hangs at exit under the ASan preload, in p11-kit's destructor; ended it)"
				kill "$pid"
				wait "$pid" || true
				cat out.txt
				return 1
			fi
			break
		fi
		sleep 0.1
	done
	wait "$pid" || rc=$?
	cat out.txt
	return "$rc"
}

refused() { # CODE DECISION
	local n0
	confirm_only
	n0=$(audit_count)
	answer "$1"
	kt_expect_fail refused_test_sign signer
	kt_grep 'Signing using ECDSA-SHA256\.\.\. ' out.txt
	kt_grep 'Cannot sign data' out.txt
	kt_nogrep 'Verifying against' out.txt
	kt_grep "koltamga: signature $2: " out.txt
	expect_questions 1 0
	audit_new "$n0"
	expect_audit 1 "$2" "$(ec_request_sha256)"
	kt_grep '"reason":"[^"]+"' new.audit
}
s_confirm_no() { refused 1 rejected; }
s_confirm_cancel() { refused 2 canceled; }

# After a refusal the key is not stuck: the next yes signs.
s_yes_after_refusal() {
	confirm_only
	answer 1
	kt_expect_fail refused_test_sign signer
	expect_questions 1 0
	confirmed
}

s_seal() {
	local n0
	n0=$(audit_count)
	# Any question would be answered "no" and fail the signature.
	answer 1
	test_sign_ok seal RSA-SHA256
	on_koltamga || return 0
	expect_questions 0 0
	kt_nogrep 'C_Login\(2\)' sign.txt
	audit_new "$n0"
	expect_audit 1 signed "$(rsa_request_sha256)"
	kt_grep '"mechanism":"CKM_RSA_PKCS","size":51,' new.audit
}

make_ca() {
	mkdir -p "$CA"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$CA/ca.key" \
		-out "$CA/ca.pem" -days 30 -subj "/C=KG/O=koltamga tests/CN=koltamga p11tool test CA" \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
	printf 'keyUsage = critical,digitalSignature,nonRepudiation\n' >"$CA/ext.cnf"
}

scenario() {
	export KT_FAKE_CONFIRM=$TDIR/fake-confirm.conf
	kt_step -c initialize s_initialize
	kt_step -c generate-keys s_generate
	kt_step -c signer-certificate s_certificate
	kt_step test-sign-confirm-yes s_confirm_yes
	kt_step test-sign-yes-set-pin s_confirm_yes_set_pin
	kt_step test-sign-confirm-no s_confirm_no
	kt_step test-sign-confirm-cancel s_confirm_cancel
	kt_step test-sign-yes-after-refusal s_yes_after_refusal
	kt_step test-sign-seal-automatic s_seal
}

make_ca || { echo "FAIL: $KT_TEST: cannot make the test CA"; exit 1; }
KT_GNUTLS_SCENARIO=1 # no koltamga-device run on an ASan build (lib.sh)
kt_for_each_target scenario
kt_finish
