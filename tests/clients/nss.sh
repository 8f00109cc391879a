#!/usr/bin/env bash
# NSS (certutil, modutil, cmsutil 3.87) signs documents with token keys, as
# Thunderbird and LibreOffice do through NSS.  On a fresh token: the module
# is added to a fresh NSS database, certutil -R generates two key pairs on
# the token and a test CA (openssl) issues their certificates, certutil -A
# stores them on the token; certutil -L/-K list them; cmsutil -S makes CMS
# signatures (attached and detached) that cmsutil -D and openssl cms verify.
# On koltamga the first key is a seal (sign_policy = automatic: no question)
# and the second a person's key (sign_policy = confirm; on koltamga-device,
# whose keys take their policy from the configuration at every use, a [key]
# section names the seal's CKA_ID to keep it automatic): a scripted signer
# (tests/pinentry/fake-confirm.sh, confirm = command) says yes, no, cancel;
# each answer must give exactly one question, the right request, the right
# audit record, and a signature only after yes.  Same scenario on SoftHSM2,
# where the confirmation steps do not apply.
set -eu
. "$(dirname "$0")/lib.sh"

kt_need_tools certutil modutil cmsutil pkcs11-tool openssl timeout

LABEL=kt-nss
KT_SRCDIR=${KOLTAMGA_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
FAKE_CONFIRM=$(cd "$KT_SRCDIR" && pwd)/tests/pinentry/fake-confirm.sh
CA=$KT_TMP/ca
SEAL_DN="CN=Receipts Seal,O=Koltamga Test Registry,C=KG"
SIGNER_DN="CN=Aibek Testov,givenName=Aibek,SN=Testov,C=KG"
# DER prefix of a SHA-256 DigestInfo: what NSS hands CKM_RSA_PKCS before the hash.
DIGESTINFO_SHA256='\x30\x31\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01\x05\x00\x04\x20'

pt() { kt_client pkcs11-tool --module "$MODULE" --token-label "$LABEL" "$@"; }
# NSS tools on the database that has the module; the PIN file serves the
# token login and NSS's context-specific login alike.
nss() {
	local tool=$1
	shift
	kt_client "$tool" -d "sql:$TDIR/db" "$@"
}
on_koltamga() { kt_on_koltamga; }
# logged CMD...: CMD's output to out.txt and the log; CMD's status.
logged() {
	local rc=0
	"$@" >out.txt 2>&1 || rc=$?
	cat out.txt
	return "$rc"
}
confirm_only() { on_koltamga || kt_na "SoftHSM2 has no signing confirmation"; }

# answer, questions, notices, expect_questions, audit_count, audit_new: lib.sh.
expect_audit() {
	[ "$(wc -l <new.audit)" = "$1" ] || kt_fail "expected $1 new audit record(s), got $(wc -l <new.audit)"
	[ "$(grep -c "\"decision\":\"$2\"" new.audit)" = "$1" ] || kt_fail "audit: expected decision $2"
	if [ -n "${3:-}" ]; then
		kt_grep "\"sha256\":\"$3\"" new.audit
	fi
}

# The signed attributes of an NSS CMS signature (the last definite-length
# [0] of the message), re-tagged as the SET OF that the signature covers.
signed_attrs_der() {
	local line off hl len
	line=$(openssl asn1parse -inform DER -in "$1" | awk '/cons: cont \[ 0 \]/ && !/l=inf/ { l = $0 } END { print l }')
	off=$(echo "$line" | sed -n 's/^ *\([0-9]*\):.*/\1/p')
	hl=$(echo "$line" | sed -n 's/.*hl=\([0-9]*\).*/\1/p')
	len=$(echo "$line" | sed -n 's/.* l= *\([0-9]*\) .*/\1/p')
	if [ -z "$off" ] || [ -z "$hl" ] || [ -z "$len" ]; then
		kt_fail "no signed attributes in $1"
	fi
	printf '\061'
	tail -c "+$((off + 2))" "$1" | head -c "$((hl + len - 1))"
}
# What koltamga was asked to sign, as the SHA-256 the request and the
# audit show: ECDSA gets the attributes' SHA-256, RSA its DigestInfo.
ec_request_sha256() {
	signed_attrs_der "$1" >attrs.der
	openssl dgst -sha256 -binary attrs.der | openssl dgst -sha256 -r | cut -d' ' -f1
}
rsa_request_sha256() {
	signed_attrs_der "$1" >attrs.der
	{
		printf '%b' "$DIGESTINFO_SHA256"
		openssl dgst -sha256 -binary attrs.der
	} | openssl dgst -sha256 -r | cut -d' ' -f1
}

# verify P7S SIGNER [detached content]: two verifiers that never load the
# module: cmsutil with a database that trusts only the test CA, and openssl.
verify() {
	local p7s=$1 who=$2 content=${3:-}
	if [ -n "$content" ]; then
		kt_client cmsutil -D -d "sql:$TDIR/vdb" -i "$p7s" -c "$content" -h 1 -n >status.txt ||
			{ cat status.txt; kt_fail "cmsutil -D failed"; }
		openssl cms -verify -inform DER -in "$p7s" -content "$content" -binary -CAfile "$CA/ca.pem" \
			-purpose any -out /dev/null
	else
		kt_client cmsutil -D -d "sql:$TDIR/vdb" -i "$p7s" -h 1 -n >status.txt ||
			{ cat status.txt; kt_fail "cmsutil -D failed"; }
		kt_client cmsutil -D -d "sql:$TDIR/vdb" -i "$p7s" -o content.out
		cmp content.out doc.txt || kt_fail "cmsutil -D: the content is not the document"
		openssl cms -verify -inform DER -in "$p7s" -CAfile "$CA/ca.pem" -purpose any -out content2.out
		cmp content2.out doc.txt || kt_fail "openssl cms -verify: the content is not the document"
	fi
	cat status.txt
	kt_grep "signer0.id=\"$who\"; signer0.status=GoodSignature;" status.txt
}

s_init_token() {
	kt_client pkcs11-tool --module "$MODULE" --init-token --so-pin "$SO_PIN" --label "$LABEL"
	pt --login --login-type so --so-pin "$SO_PIN" --init-pin --pin "$USER_PIN"
	kt_client pkcs11-tool --module "$MODULE" --list-token-slots >slots.txt
	cat slots.txt
	kt_grep "token label +: $LABEL\$" slots.txt
	kt_grep 'PIN initialized' slots.txt
}

s_nss_database() {
	if on_koltamga; then
		# Keys made from now on are seals (the harness default) until
		# the signer's key; the scripted signer says no meanwhile, so a
		# question where none belongs fails the signature.
		kt_conf_add "$(printf 'confirm = command\nconfirm_program = %s\n' "$FAKE_CONFIRM")"
		cat "$KOLTAMGA_CONF"
	fi
	answer 1
	mkdir -p db vdb
	printf '%s\n' "$USER_PIN" >pw
	head -c 2048 /dev/urandom >noise
	kt_client certutil -N -d "sql:$TDIR/db" --empty-password
	kt_client modutil -add kt-target -libfile "$MODULE" -dbdir "sql:$TDIR/db" -force
	kt_client modutil -list -dbdir "sql:$TDIR/db" >modules.txt
	cat modules.txt
	kt_grep "library name: $MODULE\$" modules.txt
	kt_grep "token: $LABEL\$" modules.txt
	# The verifiers' database trusts the test CA and has no module.
	kt_client certutil -N -d "sql:$TDIR/vdb" --empty-password
	kt_client certutil -A -d "sql:$TDIR/vdb" -n test-ca -t C,C,C -a -i "$CA/ca.pem"
	nss certutil -A -n test-ca -t C,C,C -a -i "$CA/ca.pem"
}

# new_key NAME SERIAL DN KEYOPTS...: certutil -R makes the key pair on the
# token and a request signed with it; the test CA issues the certificate
# (SERIAL in hex) and certutil -A stores it on the token under NAME.
new_key() {
	local name=$1 serial=0x$2 dn=$3
	shift 3
	nss certutil -R -h "$LABEL" -f pw -z noise -s "$dn" "$@" -a -o "$name.csr"
	# The request's signature is the new token key's first signature.
	openssl req -in "$name.csr" -verify -noout -subject
	openssl x509 -req -in "$name.csr" -CA "$CA/ca.pem" -CAkey "$CA/ca.key" -set_serial "$serial" \
		-days 30 -extfile "$CA/ext.cnf" -out "$TDIR/$name.pem"
	nss certutil -A -h "$LABEL" -f pw -n "$name" -t u,u,u -a -i "$TDIR/$name.pem"
}

s_seal_key() {
	local n0
	n0=$(audit_count)
	answer 1
	new_key seal 1001 "$SEAL_DN" -k rsa -g 2048
	if on_koltamga; then
		expect_questions 0 0
		audit_new "$n0"
		expect_audit 1 signed
		kt_grep '"program":"[^"]*/certutil"' new.audit
		kt_grep '"mechanism":"CKM_RSA_PKCS"' new.audit
	fi
}

s_signer_key() {
	local n0 id
	if on_koltamga; then
		# Keys of people ask; the seal made before keeps its policy.
		sed -i 's/^sign_policy = automatic$/sign_policy = confirm/' "$KOLTAMGA_CONF"
		kt_grep '^sign_policy = confirm$' "$KOLTAMGA_CONF"
		if [ "$KT_DEVICE" = 1 ]; then
			# A device cannot keep koltamga's policy attribute: its
			# keys' policy comes from the configuration at every use,
			# so the seal keeps its own through a [key] section.
			pt --login --pin "$USER_PIN" --list-objects --type privkey >seal-key.txt
			cat seal-key.txt
			id=$(awk '/^Private Key Object; RSA/ { p = 1; next } /^[A-Z]/ { p = 0 }
				p && $1 == "ID:" { print $2; exit }' seal-key.txt)
			[ -n "$id" ] || kt_fail "the seal key has no CKA_ID"
			kt_conf_add "$(printf '[key]\nid = %s\nsign_policy = automatic\n' "$id")"
			cat "$KOLTAMGA_CONF"
		fi
	fi
	n0=$(audit_count)
	answer 0
	new_key signer 1002 "$SIGNER_DN" -k ec -q nistp256
	if on_koltamga; then
		# The request's signature was asked about, once.
		expect_questions 1 1
		kt_grep '^Mechanism: CKM_ECDSA$' fc.out
		kt_grep '^Requested by: [^ ]*/certutil \(pid [0-9]+\)$' fc.out
		audit_new "$n0"
		expect_audit 1 signed
	fi
}

s_key_policies() {
	on_koltamga || kt_na "SoftHSM2 has no signing policies"
	pt --login --pin "$USER_PIN" --list-objects --type privkey >keys.txt
	cat keys.txt
	# The person's EC key asks for its PIN at every use; the seal does not.
	awk '/^Private Key Object; EC/ { p = 1; next } /^[A-Z]/ { p = 0 } p && /Access:/' keys.txt | grep -q 'always authenticate' ||
		kt_fail "the signer's key is not always-authenticate"
	if awk '/^Private Key Object; RSA/ { p = 1; next } /^[A-Z]/ { p = 0 } p && /Access:/' keys.txt | grep 'always authenticate'; then
		kt_fail "the seal key is always-authenticate"
	fi
}

s_certutil_list() {
	nss certutil -L -h "$LABEL" -f pw >certs.txt
	cat certs.txt
	kt_grep "^$LABEL:seal +u,u,u\$" certs.txt
	kt_grep "^$LABEL:signer +u,u,u\$" certs.txt
	[ "$(grep -c "^$LABEL:" certs.txt)" = 2 ] || kt_fail "expected 2 certificates on the token"
	# The token holds exactly the certificates the CA issued.
	for n in seal signer; do
		nss certutil -L -h "$LABEL" -f pw -n "$LABEL:$n" -r >"$n.der"
		cmp "$n.der" <(openssl x509 -in "$TDIR/$n.pem" -outform DER) || kt_fail "$n: stored certificate differs"
	done
	nss certutil -L -h "$LABEL" -f pw -n "$LABEL:signer" >signer.txt
	cat signer.txt
	kt_grep 'Subject: "CN=Aibek Testov,' signer.txt
	kt_grep 'Issuer: "CN=koltamga NSS test CA,O=koltamga tests,C=KG"' signer.txt
	nss certutil -K -h "$LABEL" -f pw >keys.txt
	cat keys.txt
	kt_grep "^< ?[0-9]+> rsa +[0-9a-f]{40} +$LABEL:seal\$" keys.txt
	kt_grep "^< ?[0-9]+> ec +[0-9a-f]{40} +$LABEL:signer\$" keys.txt
	[ "$(grep -c '^< *[0-9]*>' keys.txt)" = 2 ] || kt_fail "expected 2 private keys"
}

# cms NICK OUT [cmsutil options]: sign doc.txt the way S/MIME and office
# clients do: signed attributes (-G: signing time) and no encryption
# preference.  (Without signed attributes NSS 3.87 writes a raw r||s
# ECDSA value into the SignerInfo, with its own soft token too.)
cms() {
	local nick=$1 out=$2
	shift 2
	kt_doc doc.txt
	nss cmsutil -S -N "$LABEL:$nick" -G -Y NONE -f pw -i doc.txt -o "$out" "$@"
}

s_cms_seal() {
	local n0 want
	n0=$(audit_count)
	answer 1
	cms seal seal.p7s
	verify seal.p7s "Receipts Seal"
	want=$(rsa_request_sha256 seal.p7s)
	echo "DigestInfo SHA-256: $want"
	if on_koltamga; then
		expect_questions 0 0
		audit_new "$n0"
		expect_audit 1 signed "$want"
		kt_grep '"program":"[^"]*/cmsutil"' new.audit
		kt_grep '"mechanism":"CKM_RSA_PKCS","size":51,' new.audit
		kt_grep '"cert_issuer":"[^"]+"' new.audit
	fi
}

s_cms_seal_detached() {
	local n0
	n0=$(audit_count)
	answer 1
	cms seal detached.p7s -T
	verify detached.p7s "Receipts Seal" doc.txt
	# Detached: the document is not inside, and a changed document fails
	# both verifiers (they are not lenient).
	kt_nogrep 'Tax return' detached.p7s
	sed 's/1000 KGS/9000 KGS/' doc.txt >changed.txt
	kt_client cmsutil -D -d "sql:$TDIR/vdb" -i detached.p7s -c changed.txt -h 1 -n >changed-status.txt || true
	cat changed-status.txt
	kt_grep 'signer0.status=(BadSignature|DigestMismatch);' changed-status.txt
	kt_expect_fail openssl cms -verify -inform DER -in detached.p7s -content changed.txt -binary \
		-CAfile "$CA/ca.pem" -purpose any -out /dev/null
	if on_koltamga; then
		expect_questions 0 0
		audit_new "$n0"
		expect_audit 1 signed "$(rsa_request_sha256 detached.p7s)"
	fi
}

s_cms_confirm_yes() {
	local n0 want
	n0=$(audit_count)
	answer 0
	# The session trace shows the context-specific login (C_Login(2)).
	KOLTAMGA_DEBUG=session cms signer signer.p7s 2>trace.txt || { cat trace.txt; kt_fail "cmsutil -S failed"; }
	cat trace.txt
	verify signer.p7s "Aibek Testov"
	want=$(ec_request_sha256 signer.p7s)
	echo "SHA-256 of the hash NSS signs: $want"
	if on_koltamga; then
		# NSS supplied the PIN again for the always-authenticate key.
		kt_grep '^koltamga\[session\]: C_Login\(2\) = CKR_OK$' trace.txt
		expect_questions 1 1
		cat fc.out
		kt_grep '^Sign this document\?$' fc.out
		kt_grep '^Size: 32 bytes$' fc.out
		kt_grep "^SHA-256: $want\$" fc.out
		kt_grep '^Code: [0-9]{4}$' fc.out
		kt_grep '^Signer: Aibek Testov$' fc.out
		kt_grep '^Mechanism: CKM_ECDSA$' fc.out
		kt_grep '^Requested by: [^ ]*/cmsutil \(pid [0-9]+\)$' fc.out
		kt_grep '^The application gave only a hash of the document' fc.out
		kt_grep '^RESULT: signed$' fc.out
		cp fc.out "$TDIR/yes.request"
		audit_new "$n0"
		expect_audit 1 signed "$want"
		kt_grep '"program":"[^"]*/cmsutil"' new.audit
		kt_grep '"mechanism":"CKM_ECDSA","size":32,' new.audit
	fi
}

# refused CODE DECISION: the signer does not say yes; cmsutil must fail and
# write no signature.
refused() {
	local n0
	confirm_only
	n0=$(audit_count)
	answer "$1"
	rm -f refused.p7s
	kt_expect_fail logged cms signer refused.p7s
	[ ! -s refused.p7s ] || kt_fail "cmsutil wrote $(wc -c <refused.p7s) bytes after a refusal"
	kt_grep 'cmsutil: failed to encode data' out.txt
	kt_grep "^koltamga: signature $2: " out.txt
	expect_questions 1 0
	kt_grep '^Signer: Aibek Testov$' fc.out
	audit_new "$n0"
	expect_audit 1 "$2"
	kt_grep '"program":"[^"]*/cmsutil"' new.audit
	kt_grep '"sha256":"[0-9a-f]{64}"' new.audit
	kt_grep '"reason":"[^"]+"' new.audit
}

s_cms_confirm_no() { refused 1 rejected; }
s_cms_confirm_cancel() { refused 2 canceled; }

# The PIN file is wrong: no login, no question, no signature.
s_cms_wrong_pin() {
	local n0
	n0=$(audit_count)
	answer 0
	printf '%s\n' "$BAD_PIN" >badpw
	kt_doc doc.txt
	kt_expect_fail logged nss cmsutil -S -N "$LABEL:signer" -G -Y NONE -f badpw -i doc.txt -o wrong.p7s
	kt_grep 'SEC_ERROR_BAD_PASSWORD' out.txt
	[ ! -s wrong.p7s ] || kt_fail "a signature was written with a wrong PIN"
	if on_koltamga; then
		expect_questions 0 0
		audit_new "$n0"
		[ ! -s new.audit ] || kt_fail "an audit record without a signing attempt"
	fi
	# The right PIN still works afterwards (one wrong try, no lockout).
	nss certutil -K -h "$LABEL" -f pw >keys.txt
	kt_grep "$LABEL:signer\$" keys.txt
}

# The audit record and the request name the certificate NSS signed with by
# its issuer and serial number (docs/audit.md: "issuer ... RFC 2253 text",
# "the certificate's serial number in hex"; the CA's DN and the serials
# 0x1001/0x1002 are fixed here).
s_audit_names_certificate() {
	local bad=""
	on_koltamga || kt_na "SoftHSM2 has no audit log"
	grep '"program":"[^"]*/cmsutil"' "$TDIR/audit.log" | grep '"decision":"signed"' >signed.audit || true
	cat signed.audit
	grep '"mechanism":"CKM_RSA_PKCS"' signed.audit >seal.audit || kt_fail "no seal signature by cmsutil in the audit log"
	grep '"mechanism":"CKM_ECDSA"' signed.audit >signer.audit || kt_fail "no signer signature by cmsutil in the audit log"
	[ -f "$TDIR/yes.request" ] || kt_fail "no request from cms-sign-confirm-yes"
	grep '^Certificate:' "$TDIR/yes.request"
	# Every failed check is reported, not only the first.
	grep -vq '"cert_serial":"1001"' seal.audit && bad="$bad; seal: cert_serial is not 1001"
	grep -vq '"cert_serial":"1002"' signer.audit && bad="$bad; signer: cert_serial is not 1002"
	grep -vq '"cert_issuer":"CN=koltamga NSS test CA,O=koltamga tests,C=KG"' signed.audit &&
		bad="$bad; cert_issuer is not the issuer's RFC 2253 name"
	grep -q '^Certificate: .*serial 1002$' "$TDIR/yes.request" || bad="$bad; the request does not show serial 1002"
	[ -z "$bad" ] || kt_fail "${bad#; }"
}

make_ca() {
	mkdir -p "$CA"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$CA/ca.key" \
		-out "$CA/ca.pem" -days 30 -subj "/C=KG/O=koltamga tests/CN=koltamga NSS test CA" \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
	printf 'keyUsage = critical,digitalSignature,nonRepudiation\nextendedKeyUsage = emailProtection\n' >"$CA/ext.cnf"
}

scenario() {
	export KT_FAKE_CONFIRM=$TDIR/fake-confirm.conf
	kt_step -c init-token s_init_token
	kt_step -c nss-database s_nss_database
	kt_step -c seal-key-and-cert s_seal_key
	kt_step -c signer-key-and-cert s_signer_key
	kt_step key-policies s_key_policies
	kt_step certutil-list s_certutil_list
	kt_step cms-sign-seal s_cms_seal
	kt_step cms-sign-seal-detached s_cms_seal_detached
	kt_step cms-sign-confirm-yes s_cms_confirm_yes
	kt_step cms-sign-confirm-no s_cms_confirm_no
	kt_step cms-sign-confirm-cancel s_cms_confirm_cancel
	kt_step audit-names-certificate s_audit_names_certificate
	kt_step cms-sign-wrong-pin s_cms_wrong_pin
}

make_ca || { echo "FAIL: $KT_TEST: cannot make the test CA"; exit 1; }
kt_for_each_target scenario
kt_finish
