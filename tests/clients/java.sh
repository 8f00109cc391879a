#!/usr/bin/env bash
# Java SunPKCS11 (OpenJDK 17 keytool and jarsigner) on a fresh token, as a
# Java shop uses one: keytool -genkeypair makes an EC P-256 seal key and an
# RSA-2048 signer key on the token, each with its self-signed certificate;
# keytool -list shows them; jarsigner signs a jar with the seal (no question)
# and with the signer's key (the scripted signer, tests/pinentry/fake-confirm.sh,
# says yes, then no).  The PIN comes from a file (-storepass:file).
#
# SunPKCS11 never sends C_Login(CKU_CONTEXT_SPECIFIC): on koltamga a confirm
# key's own confirmation stands in for it.  koltamga runs with
# sign_policy = confirm and the `command` backend; a [key] section makes the
# key labelled seal-ec automatic.  SunPKCS11 gives generated keys no
# CKA_LABEL (only CKA_ID = alias, set when it copies the session key to the
# token), so the SunPKCS11 configurations that generate give the private key
# its label with an attributes(generate, ...) block: that is how a [key]
# section can name a key made by Java, and the dialog show its label.
#
# keytool generates on the token only with -providername SunPKCS11-<name>:
# with -providerClass alone it takes the first provider that can generate
# (SunRsaSign for RSA), makes the key in software and imports it.
#
# On koltamga-device (lib.sh) SunPKCS11's session key pairs are koltamga's
# (a device token's session keys live in its memory), so the copy to the
# token is an import: keys-on-token then checks the device holds them,
# sensitive and not extractable, and is N/A for "generated on the token".
#
# Same scenario on SoftHSM2, which has no signing policy: the steps about
# questions, refusals and the audit log do not apply there.
set -eu
. "$(dirname "$0")/lib.sh"

kt_need_tools java keytool jarsigner jar pkcs11-tool openssl xxd timeout

LABEL=kt-java
KT_SRCDIR=$(cd "${KOLTAMGA_SRCDIR:-$(dirname "$0")/../..}" && pwd)
FAKE_CONFIRM=$KT_SRCDIR/tests/pinentry/fake-confirm.sh
[ -x "$FAKE_CONFIRM" ] || { echo "FAIL: $KT_TEST: $FAKE_CONFIRM missing or not executable"; exit 1; }

# SunPKCS11's provider is named SunPKCS11-<name of the configuration>.
P11NAME=kt
SEAL=seal-ec
SEAL_DN="CN=Tax receipts seal, O=koltamga tests, C=KG"
SIGNER=signer-rsa
SIGNER_DN="CN=Aibek Testov, SURNAME=Testov, GIVENNAME=Aibek, C=KG"
SIGNER_NAME="Aibek Testov"

# The JVM starts faster without the optimising compiler and with the serial GC.
JFLAGS=(-J-XX:TieredStopAtLevel=1 -J-XX:+UseSerialGC)

pt() { kt_client pkcs11-tool --module "$MODULE" "$@"; }
ptl() { pt --token-label "$LABEL" "$@"; }
hexof() { printf %s "$1" | xxd -p | tr -d '\n'; }

# java_client CMD...: a JVM under kt_client.  With an ASan module preloaded,
# the JVM's own SIGSEGV handling (implicit null checks) must stay the JVM's.
java_client() {
	ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}handle_segv=0:allow_user_segv_handler=1 kt_client "$@"
}
# keystore CFG ARGS...: keytool on the token through the SunPKCS11
# configuration CFG (-providerArg must follow -providerClass).
keystore() {
	local cfg=$1
	shift
	java_client keytool "${JFLAGS[@]}" "$@" -keystore NONE -storetype PKCS11 \
		-providerClass sun.security.pkcs11.SunPKCS11 -providerArg "$TDIR/$cfg" \
		-storepass:file "$TDIR/pin.txt"
}
# sign_jar ALIAS OUT.jar: jarsigner with the token key ALIAS.
sign_jar() {
	java_client jarsigner "${JFLAGS[@]}" -keystore NONE -storetype PKCS11 \
		-providerClass sun.security.pkcs11.SunPKCS11 -providerArg "$TDIR/java.cfg" \
		-storepass:file "$TDIR/pin.txt" -signedjar "$2" "$KT_TMP/in.jar" "$1"
}
# verify_jar JAR DN: jarsigner -verify says verified, by DN, hello.txt signed.
verify_jar() {
	java_client jarsigner "${JFLAGS[@]}" -verify -verbose -certs "$1" >"$1.verify" 2>&1 ||
		{ cat "$1.verify"; kt_fail "jarsigner -verify $1 failed"; }
	cat "$1.verify"
	kt_grep '^jar verified\.' "$1.verify"
	kt_grep "^- Signed by \"$2\"" "$1.verify"
	kt_grep '^sm +[0-9]+ .* hello\.txt$' "$1.verify"
}

# fake_confirm NAME CODE: the scripted signer answers CODE (0 yes, 1 no) and
# writes every request it gets to $TDIR/NAME.confirm.  Asked "confirm-pin"
# (koltamga-device: the device checks the key's PIN at every use, and
# SunPKCS11 never logs in per signature), a yes comes with the PIN.
fake_confirm() {
	printf 'out=%s\ncode=%s\npin=%s\n' "$TDIR/$1.confirm" "$2" "$USER_PIN" >"$TDIR/fake-confirm.conf"
}
# count WORD NAME: how many "=== WORD" requests NAME.confirm holds (0 if
# none); "confirm" counts "confirm-pin" requests too.
count() {
	if [ -f "$TDIR/$2.confirm" ]; then grep -cE "^=== $1(-pin)?\$" "$TDIR/$2.confirm" || true; else echo 0; fi
}
# request NAME OUT: the first confirmation request in NAME.confirm.
request() {
	awk '/^=== / { n++; next } n == 1' "$TDIR/$1.confirm" >"$2"
	cat "$2"
}
# audit DECISION KEY_ID PROGRAM: the audit records of that decision, key_id
# (a JSON value: "hex" or null) and calling program (a basename).
audit() {
	[ -f "$TDIR/audit.log" ] || return 0
	grep -F "\"key_id\":$2," "$TDIR/audit.log" | grep -F "\"decision\":\"$1\"" |
		grep -E "\"program\":\"[^\"]*/$3\"" || true
}
policy_only() { kt_on_koltamga || kt_na "SoftHSM2 has no signing policy"; }

s_init_token() {
	if kt_on_koltamga; then
		# Keys of people ask (through the scripted signer); the key
		# labelled seal-ec is a seal.  A later sign_policy line wins.
		kt_conf_add "$(printf 'sign_policy = confirm\nconfirm = command\nconfirm_program = %s\nconfirm_timeout = 30\n[key]\nlabel = %s\nsign_policy = automatic\n' \
			"$FAKE_CONFIRM" "$SEAL")"
		cat "$KOLTAMGA_CONF"
	fi
	pt --init-token --so-pin "$SO_PIN" --label "$LABEL"
	ptl --login --login-type so --so-pin "$SO_PIN" --init-pin --pin "$USER_PIN"
	pt --list-slots >slots.txt
	cat slots.txt
	kt_grep "token label +: $LABEL\$" slots.txt
	kt_grep 'PIN initialized' slots.txt
	local hex
	hex=$(awk -v l="$LABEL" '/^Slot [0-9]+ \(0x[0-9a-f]+\)/ { s = $3; gsub(/[():]/, "", s) }
		$1 == "token" && $2 == "label" && $4 == l { print s; exit }' slots.txt)
	[ -n "$hex" ] || kt_fail "no slot with token $LABEL"
	# SunPKCS11 configurations: java.cfg for everything; for generating,
	# one per key that also labels the new private key.
	printf 'name = %s\nlibrary = %s\nslot = %d\n' "$P11NAME" "$MODULE" "$hex" >"$TDIR/java.cfg"
	local k
	for k in "$SEAL" "$SIGNER"; do
		{
			cat "$TDIR/java.cfg"
			printf 'attributes(generate, CKO_PRIVATE_KEY, *) = {\n  CKA_LABEL = 0h%s\n}\n' "$(hexof "$k")"
		} >"$TDIR/gen-$k.cfg"
	done
	cat "$TDIR/gen-$SEAL.cfg"
	printf '%s\n' "$USER_PIN" >"$TDIR/pin.txt"
}

s_genkeypair() { # step alias keytool-options...
	local step=$1 alias=$2
	shift 2
	fake_confirm "$step" 0
	keystore "gen-$alias.cfg" -genkeypair -providername "SunPKCS11-$P11NAME" -alias "$alias" -validity 30 "$@" \
		>"$step.txt" 2>&1 || { cat "$step.txt"; kt_fail "keytool -genkeypair $alias failed"; }
	cat "$step.txt"
	kt_grep '^Generating .* key pair and self-signed certificate' "$step.txt"
}

s_keytool_list() {
	keystore java.cfg -list -v >"$TDIR/list.txt" 2>&1 || { cat "$TDIR/list.txt"; kt_fail "keytool -list failed"; }
	cat "$TDIR/list.txt"
	kt_grep '^Your keystore contains 2 entries' "$TDIR/list.txt"
	local a
	for a in "$SEAL" "$SIGNER"; do
		awk -v a="$a" '$0 == "Alias name: " a { p = 1; next } /^Alias name: / { p = 0 } p' \
			"$TDIR/list.txt" >"entry-$a.txt"
		kt_grep '^Entry type: PrivateKeyEntry$' "entry-$a.txt"
		kt_grep '^Serial number: [0-9a-f]+$' "entry-$a.txt"
	done
	kt_grep "^Owner: $SEAL_DN\$" "entry-$SEAL.txt"
	kt_grep '^Subject Public Key Algorithm: 256-bit EC \(secp256r1\) key$' "entry-$SEAL.txt"
	kt_grep "^Owner: $SIGNER_DN\$" "entry-$SIGNER.txt"
	kt_grep '^Subject Public Key Algorithm: 2048-bit RSA key$' "entry-$SIGNER.txt"
}

# Both keys were generated on the token (not made in software and imported),
# are sensitive, and carry the alias as CKA_ID and the label we gave.
s_keys_on_token() {
	ptl --login --pin "$USER_PIN" --list-objects >"$TDIR/objects.txt"
	cat "$TDIR/objects.txt"
	awk '/^[A-Z]/ { if (k) print k "|" l "|" i "|" a; k = ($0 ~ /^Private Key Object/); l = i = a = "" }
		$1 == "label:" { l = $2 } $1 == "ID:" { i = $2 } $1 == "Access:" { a = $0 }
		END { if (k) print k "|" l "|" i "|" a }' "$TDIR/objects.txt" | cut -d'|' -f2- >"$TDIR/privkeys.txt"
	cat "$TDIR/privkeys.txt"
	[ "$(wc -l <"$TDIR/privkeys.txt")" = 2 ] || kt_fail "expected 2 private keys"
	local a line dev imported=""
	for a in "$SEAL" "$SIGNER"; do
		line=$(grep "^$a|$(hexof "$a")|" "$TDIR/privkeys.txt") || kt_fail "no private key $a with CKA_ID $(hexof "$a")"
		case $line in
		*"never extractable, local"*) ;;
		*)
			[ "$KT_DEVICE" = 1 ] || kt_fail "private key $a was not generated on the token: $line"
			imported="$imported $a"
			;;
		esac
	done
	[ "$(grep -c '^Certificate Object' "$TDIR/objects.txt")" = 2 ] || kt_fail "expected 2 certificates"
	if [ -n "$imported" ]; then
		# koltamga-device: SunPKCS11 generates a session key pair and
		# copies it to the token (C_CopyObject).  A device token's session
		# keys live in koltamga's memory, so the copy is an import.  The
		# device itself must hold the key, sensitive and not extractable,
		# and koltamga show what the device says.
		kt_client pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$LABEL" --login --pin "$USER_PIN" \
			--list-objects --type privkey >device.txt
		cat device.txt
		for a in $imported; do
			dev=$(awk -v l="$a" '/^[A-Z]/ { p = 0 } /^Private Key Object/ { p = 1 }
				p && $1 == "label:" && $2 == l { f = 1 } f && /Access:/ { sub(/.*Access: */, ""); print; exit }' device.txt)
			echo "on the device, $a: $dev"
			case ", $dev," in *", sensitive,"*) ;; *) kt_fail "$a is not sensitive on the device" ;; esac
			case $dev in *extractable*) kt_fail "$a: extractable on the device, or never so" ;; esac
			[ "$(grep "^$a|" "$TDIR/privkeys.txt" | sed 's/.*Access: *//')" = "$dev" ] ||
				kt_fail "koltamga shows other access flags for $a than the device"
		done
		kt_na "SunPKCS11 copies its session keys to the token, and a device token's session keys are koltamga's (in memory): the device holds imported keys (checked: on the device, sensitive, not extractable)"
	fi
	# SunPKCS11 does not ask for CKA_SENSITIVE: the token decides.
	if grep -v 'Access: .*sensitive, always sensitive' "$TDIR/privkeys.txt"; then
		[ "$TARGET" = softhsm ] && kt_known "SoftHSM2 makes keys generated without CKA_SENSITIVE not sensitive"
		kt_fail "a private key that is not sensitive"
	fi
}

s_keygen_policy() {
	policy_only
	# The seal's self-signed certificate: nobody was asked.
	[ "$(count confirm genkeypair-ec-seal)" = 0 ] || kt_fail "generating the seal asked a question"
	# The signer's key signed its own certificate in keytool: asked once.
	[ "$(count confirm genkeypair-rsa-signer)" = 1 ] || kt_fail "expected exactly one question for the signer's certificate"
	[ "$(count notify genkeypair-rsa-signer)" = 1 ] || kt_fail "expected one \"signed\" notice"
	request genkeypair-rsa-signer req.txt
	kt_grep '^Sign this document\?$' req.txt
	kt_grep "^Key: $SIGNER\$" req.txt
	kt_grep '^Mechanism: CKM_SHA256_RSA_PKCS$' req.txt
	kt_grep '^Requested by: .*/keytool \(pid [0-9]+\)$' req.txt
	audit signed null keytool | grep -qF '"mechanism":"CKM_SHA256_RSA_PKCS"' ||
		kt_fail "no \"signed\" audit record for the signer's certificate"
	# The policies as the keys carry them.
	grep "^$SIGNER|" "$TDIR/privkeys.txt" | grep -q 'always authenticate' ||
		kt_fail "the confirm key lacks CKA_ALWAYS_AUTHENTICATE"
	! grep "^$SEAL|" "$TDIR/privkeys.txt" | grep -q 'always authenticate' ||
		kt_fail "the seal key has CKA_ALWAYS_AUTHENTICATE"
}

s_jar_seal() {
	fake_confirm jarsigner-seal 1 # a question would be refused
	sign_jar "$SEAL" seal.jar >sign.txt 2>&1 || { cat sign.txt; kt_fail "jarsigner failed"; }
	cat sign.txt
	kt_grep '^jar signed\.' sign.txt
	verify_jar seal.jar "$SEAL_DN"
}

s_seal_no_question() {
	policy_only
	[ -f "$TDIR/seal.jar" ] || kt_fail "no seal.jar (jarsigner-seal failed)"
	[ "$(count confirm jarsigner-seal)" = 0 ] || kt_fail "the seal's signature asked a question"
	[ "$(count notify jarsigner-seal)" = 0 ] || kt_fail "the seal's signature sent a notice"
}

# Java never calls C_Finalize: the seal's record must be in the log once
# jarsigner has exited all the same.
s_seal_audit() {
	policy_only
	[ -f "$TDIR/seal.jar" ] || kt_fail "no seal.jar (jarsigner-seal failed)"
	[ -f "$TDIR/audit.log" ] && cat "$TDIR/audit.log"
	[ "$(audit signed "\"$(hexof "$SEAL")\"" jarsigner | wc -l)" = 1 ] ||
		kt_fail "expected one \"signed\" audit record of jarsigner for key $SEAL"
}

s_jar_signer_yes() {
	fake_confirm jarsigner-signer-yes 0
	sign_jar "$SIGNER" signer.jar >sign.txt 2>&1 || { cat sign.txt; kt_fail "jarsigner failed"; }
	cat sign.txt
	kt_grep '^jar signed\.' sign.txt
	verify_jar signer.jar "$SIGNER_DN"
}

s_signer_question() {
	policy_only
	[ -f "$TDIR/signer.jar" ] || kt_fail "no signer.jar (jarsigner-signer-yes failed)"
	[ "$(count confirm jarsigner-signer-yes)" = 1 ] || kt_fail "expected exactly one question"
	[ "$(count notify jarsigner-signer-yes)" = 1 ] || kt_fail "expected one \"signed\" notice"
	kt_grep '^RESULT: signed$' "$TDIR/jarsigner-signer-yes.confirm"
	request jarsigner-signer-yes req.txt
	kt_grep "^Key: $SIGNER\$" req.txt
	kt_grep "^Signer: $SIGNER_NAME\$" req.txt
	kt_grep '^Mechanism: CKM_SHA256_RSA_PKCS$' req.txt
	kt_grep '^Requested by: .*/jarsigner \(pid [0-9]+\)$' req.txt
	local size sha sig digest rec
	size=$(sed -n 's/^Size: \([0-9][0-9]*\) bytes$/\1/p' req.txt)
	sha=$(sed -n 's/^SHA-256: \([0-9a-f]\{64\}\)$/\1/p' req.txt)
	[ "${size:-0}" -gt 0 ] || kt_fail "no size in the request"
	[ -n "$sha" ] || kt_fail "no SHA-256 in the request"
	# What the person was shown is what the jar's signature covers: the
	# digest inside the RSA signature (PKCS#1 v1.5 DigestInfo) is the
	# request's SHA-256.
	mkdir x
	(cd x && java_client jar xf "$TDIR/signer.jar" META-INF/)
	sig=$(ls x/META-INF/*.RSA)
	openssl pkcs7 -inform DER -in "$sig" -print_certs | openssl x509 -pubkey -noout >pub.pem
	openssl asn1parse -inform DER -in "$sig" | awk '/prim: OCTET STRING/ { h = $0 } END { print h }' |
		sed 's/.*\[HEX DUMP\]://' | xxd -r -p >sig.bin
	openssl pkeyutl -verifyrecover -pubin -inkey pub.pem -in sig.bin -out digestinfo.bin
	digest=$(xxd -p digestinfo.bin | tr -d '\n')
	echo "DigestInfo in the signature: $digest"
	[ "$digest" = "3031300d060960864801650304020105000420$sha" ] ||
		kt_fail "the signature covers another digest than the request showed ($sha)"
	# The decision is in the audit log, with the same facts.
	rec=$(audit signed "\"$(hexof "$SIGNER")\"" jarsigner)
	echo "$rec"
	[ "$(printf '%s' "$rec" | grep -c .)" = 1 ] || kt_fail "expected one \"signed\" audit record of jarsigner for $SIGNER"
	case $rec in *"\"size\":$size,\"sha256\":\"$sha\""*) ;; *) kt_fail "the audit record has another size or digest" ;; esac
}

s_jar_signer_no() {
	policy_only
	fake_confirm jarsigner-signer-no 1
	kt_expect_fail sign_jar "$SIGNER" refused.jar >sign.txt 2>&1
	cat sign.txt
	kt_grep 'CKR_FUNCTION_REJECTED' sign.txt
	[ ! -e refused.jar ] || kt_fail "a signed jar despite the refusal"
	[ "$(count confirm jarsigner-signer-no)" = 1 ] || kt_fail "expected exactly one question"
	[ "$(count notify jarsigner-signer-no)" = 0 ] || kt_fail "a \"signed\" notice after a refusal"
	request jarsigner-signer-no req.txt
	kt_grep "^Key: $SIGNER\$" req.txt
	local rec
	rec=$(audit rejected "\"$(hexof "$SIGNER")\"" jarsigner)
	echo "$rec"
	[ "$(printf '%s' "$rec" | grep -c .)" = 1 ] || kt_fail "expected one \"rejected\" audit record of jarsigner for $SIGNER"
}

# same_serial SHOWN WANT: the hex serial koltamga shows is the certificate's
# serial number (keytool's hex), leading zeros aside (a DER INTEGER may need
# a zero octet, keytool prints none).
same_serial() {
	local a=$1 b=$2
	while [ "${a#0}" != "$a" ]; do a=${a#0}; done
	while [ "${b#0}" != "$b" ]; do b=${b#0}; done
	[ -n "$a" ] && [ "$a" = "$b" ]
}

# The dialog and the audit records name the certificate by its serial
# number in hex (docs/audit.md), the one keytool shows.
s_cert_serial() {
	policy_only
	local want shown n=0 key serial alias
	want=$(sed -n 's/^Serial number: //p' "$TDIR/entry-$SIGNER.txt" 2>/dev/null || true)
	[ -n "$want" ] || kt_fail "keytool showed no serial number for $SIGNER"
	request jarsigner-signer-yes req.txt
	shown=$(sed -n 's/^Certificate: issued by .*, serial \([0-9a-f]*\)$/\1/p' req.txt)
	[ -n "$shown" ] || kt_fail "the request names no certificate serial"
	same_serial "$shown" "$want" || kt_fail "the dialog shows serial $shown, the certificate's serial number is $want"
	[ -f "$TDIR/audit.log" ] || kt_fail "no audit log"
	cat "$TDIR/audit.log"
	while IFS='|' read -r key serial; do
		alias=$(printf %s "$key" | xxd -r -p)
		want=$(sed -n 's/^Serial number: //p' "$TDIR/entry-$alias.txt" 2>/dev/null || true)
		[ -n "$want" ] || kt_fail "a record for key $key, which keytool did not list"
		same_serial "$serial" "$want" ||
			kt_fail "record of $alias: cert_serial $serial, the certificate's serial number is $want"
		n=$((n + 1))
	done < <(sed -n 's/.*"key_id":"\([0-9a-f]*\)",.*"cert_serial":"\([0-9a-f]*\)".*/\1|\2/p' "$TDIR/audit.log")
	[ "$n" -gt 0 ] || kt_fail "no audit record names a certificate"
	echo "$n records checked"
}

scenario() {
	export KT_FAKE_CONFIRM=$TDIR/fake-confirm.conf
	kt_step -c init-token s_init_token
	kt_step -c genkeypair-ec-seal s_genkeypair genkeypair-ec-seal "$SEAL" -keyalg EC -groupname secp256r1 -dname "$SEAL_DN"
	kt_step -c genkeypair-rsa-signer s_genkeypair genkeypair-rsa-signer "$SIGNER" -keyalg RSA -keysize 2048 -dname "$SIGNER_DN"
	kt_step keytool-list s_keytool_list
	kt_step keys-on-token s_keys_on_token
	kt_step keygen-policy s_keygen_policy
	kt_step jarsigner-seal s_jar_seal
	kt_step seal-no-question s_seal_no_question
	kt_step seal-audit-record s_seal_audit
	kt_step jarsigner-signer-yes s_jar_signer_yes
	kt_step signer-yes-question s_signer_question
	kt_step jarsigner-signer-no s_jar_signer_no
	kt_step cert-serial s_cert_serial
}

# The jar to sign, made once.
mkdir -p "$KT_TMP/jar"
echo 'Hello from the koltamga Java client test.' >"$KT_TMP/jar/hello.txt"
kt_client jar "${JFLAGS[@]}" cf "$KT_TMP/in.jar" -C "$KT_TMP/jar" hello.txt ||
	{ echo "FAIL: $KT_TEST: jar could not build the test jar"; exit 1; }
kt_for_each_target scenario
kt_finish
