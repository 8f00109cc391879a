#!/usr/bin/env bash
# Qualified certificates seen by real clients.  On a fresh token, with the
# test PKI (tests/pki/gen.sh): pkcs11-tool generates a P-256 key, issue.sh
# issues the `person` profile over it, pkcs11-tool writes the certificate with
# the key's id; the PKI's revoked certificate is written with its own key.
# Then GnuTLS p11tool --list-all-certs, NSS certutil -L -h all (module added
# with modutil to a fresh database) and Java keytool -list (SunPKCS11) must
# see the certificates and pair them with their keys, and pkcs11-tool signs
# with the person key under the trust list, is refused for the revoked one
# and, without a trust list, for the person key too.  Same scenario on
# SoftHSM2 (which has no trust list: the policy steps do not apply there), and
# on koltamga with its token on a device (lib.sh; there, on an ASan build, the
# p11tool step is N/A: GnuTLS clients hang at exit).
set -eu
. "$(dirname "$0")/lib.sh"

kt_need_tools pkcs11-tool p11tool certutil modutil openssl xxd flock timeout

LABEL=kt-certs
KT_SRCDIR=${KOLTAMGA_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PKI=$KT_TMP/pki

pt() { kt_client pkcs11-tool --module "$MODULE" "$@"; }
ptl() { pt --token-label "$LABEL" "$@"; }
ptu() { ptl --login --pin "$USER_PIN" "$@"; }
p11() { GNUTLS_PIN=$USER_PIN kt_client p11tool --batch --provider "$MODULE" "$@"; }
qualified_checks() { kt_on_koltamga || kt_na "SoftHSM2 has no trust list or certificate checks"; }

s_init_token() {
	pt --init-token --so-pin "$SO_PIN" --label "$LABEL"
	ptl --login --login-type so --so-pin "$SO_PIN" --init-pin --pin "$USER_PIN"
	pt --list-token-slots >slots.txt
	cat slots.txt
	kt_grep "token label +: $LABEL\$" slots.txt
	kt_grep 'PIN initialized' slots.txt
}

s_trust_list() {
	qualified_checks
	kt_conf_add "$(printf 'trust_list = %s/trust-list.conf\ncrl_dir = %s/crl\n' "$PKI" "$PKI")"
	# Qualified keys ask their signer; a scripted one says yes here
	# (tests/clients/confirm.sh and pinentry-tty.sh test the asking).
	kt_conf_add "$(printf 'sign_policy = confirm\nconfirm = command\nconfirm_program = %s/tests/pinentry/fake-confirm.sh\n' \
		"$(cd "${KOLTAMGA_SRCDIR:-.}" && pwd)")"

	cat "$KOLTAMGA_CONF"
	# The module starts with it (C_Initialize would fail on a bad one).
	pt --list-token-slots >slots.txt
	kt_grep "token label +: $LABEL\$" slots.txt
}

# The P-256 public key with this id, as PEM, from the CKA_EC_POINT that
# --list-objects shows (not --read-object: pkcs11-tool 0.23 reads freed
# memory when it exports an EC public key).
ec_pub_pem() { # ID OUT.pem
	local hex
	ptl --list-objects --type pubkey >pubs.txt
	hex=$(awk -v id="$1" '/^[A-Z]/ { ec = ($0 ~ /^Public Key Object; EC /); pt = "" }
		ec && $1 == "EC_POINT:" { pt = $2 }
		ec && $1 == "ID:" && $2 == id && pt != "" { print pt; exit }' pubs.txt)
	case $hex in
	0441*) [ "${#hex}" = 134 ] || kt_fail "EC_POINT of key $1 has a bad length" ;;
	*) kt_fail "no uncompressed P-256 EC_POINT for key $1" ;;
	esac
	echo "3059301306072a8648ce3d020106082a8648ce3d030107034200${hex#0441}" | xxd -r -p >"pub-$1.der"
	openssl pkey -pubin -inform DER -in "pub-$1.der" -out "$2"
}

s_person() {
	ptu --keypairgen --key-type EC:prime256v1 --id 01 --label person
	ec_pub_pem 01 person.pub.pem
	sh "$KT_SRCDIR/tests/pki/issue.sh" "$PKI" person person.pub.pem person.pem
	# The certificate certifies the token's key.
	[ "$(openssl x509 -in person.pem -pubkey -noout | openssl pkey -pubin -outform DER | xxd -p)" = \
		"$(xxd -p "pub-01.der")" ] || kt_fail "issued certificate holds another key"
	openssl x509 -in person.pem -outform DER -out "$TDIR/person.der"
	ptu --write-object "$TDIR/person.der" --type cert --id 01 --label person
}

s_revoked() {
	ptu --write-object "$PKI/revoked.key" --type privkey --id 02 --label revoked
	openssl x509 -in "$PKI/revoked.pem" -outform DER -out "$TDIR/revoked.der"
	ptu --write-object "$TDIR/revoked.der" --type cert --id 02 --label revoked
	ptu --list-objects --type cert >certs.txt
	cat certs.txt
	[ "$(grep -c '^Certificate Object' certs.txt)" = 2 ] || kt_fail "expected 2 certificates"
	# Both carry a personal number: on koltamga they are private objects
	# (personal_data_certificates = private, the default), unseen before
	# login; SoftHSM2 keeps what the application asked for.
	ptl --list-objects --type cert >public-certs.txt
	if kt_on_koltamga; then
		[ "$(grep -c '^Certificate Object' public-certs.txt)" = 0 ] ||
			kt_fail "certificates with personal data visible without login"
	fi
}

s_p11tool() {
	kt_gnutls_asan_na
	p11 --login --list-all-certs "pkcs11:token=$LABEL" >certs.txt
	cat certs.txt
	kt_grep 'Type: X\.509 Certificate \(EC/ECDSA-SECP256R1\)' certs.txt
	kt_grep 'Label: person$' certs.txt
	kt_grep 'Label: revoked$' certs.txt
	kt_grep 'ID: 01$' certs.txt
	[ "$(grep -c '^Object [0-9]*:' certs.txt)" = 2 ] || kt_fail "expected exactly 2 certificates"
	# The same bytes come back.
	p11 --login --export "pkcs11:token=$LABEL;object=person;type=cert" >exported.pem
	openssl x509 -in exported.pem -outform DER -out exported.der
	cmp exported.der "$TDIR/person.der" || kt_fail "exported certificate differs from the one written"
	# The key beside it, by id.
	p11 --login --list-privkeys "pkcs11:token=$LABEL" >keys.txt
	cat keys.txt
	awk '/^Object/ { p = 0 } /Label: person$/ { p = 1 } p && /ID: 01$/ { f = 1 } END { exit !f }' keys.txt ||
		kt_fail "no private key 'person' with ID 01"
}

s_nss() {
	mkdir -p nss
	printf '%s\n' "$USER_PIN" >nss/pw
	kt_client certutil -N -d sql:nss --empty-password
	kt_client modutil -add kt-target -libfile "$MODULE" -dbdir sql:nss -force
	kt_client modutil -list -dbdir sql:nss >modules.txt
	cat modules.txt
	kt_grep "token: $LABEL" modules.txt
	kt_client certutil -L -h all -d sql:nss -f nss/pw >certs.txt
	cat certs.txt
	# "u,u,u": a user certificate, paired with its private key.
	kt_grep "^$LABEL:person +u,u,u\$" certs.txt
	kt_grep "^$LABEL:revoked +u,u,u\$" certs.txt
	kt_client certutil -L -h "$LABEL" -d sql:nss -f nss/pw -n "$LABEL:person" >person.txt
	cat person.txt
	kt_grep 'serialNumber=PNOKG-12345678901234' person.txt
	kt_grep 'Issuer: "CN=Test Accredited Sub CA' person.txt
	kt_client certutil -K -h "$LABEL" -d sql:nss -f nss/pw >keys.txt
	cat keys.txt
	kt_grep 'ec +01 +person' keys.txt
	kt_grep 'ec +02 +revoked' keys.txt
}

# The slot id (decimal) of our token, from pkcs11-tool -L.
slot_id() {
	pt --list-slots >slots.txt
	local hex
	hex=$(awk -v l="$LABEL" '/^Slot [0-9]+ \(0x[0-9a-f]+\)/ { s = $3; gsub(/[():]/, "", s) }
		$1 == "token" && $2 == "label" && $4 == l { print s; exit }' slots.txt)
	[ -n "$hex" ] || kt_fail "no slot with token $LABEL"
	printf '%d' "$hex"
}

s_java() {
	if ! command -v keytool >/dev/null 2>&1; then
		[ -n "${CI:-}" ] && kt_fail "keytool is not installed (CI installs default-jdk-headless)"
		kt_na "keytool is not installed"
	fi
	printf 'name=koltamga\nlibrary=%s\nslot=%s\n' "$MODULE" "$(slot_id)" >java.cfg
	cat java.cfg
	kt_client keytool -list -keystore NONE -storetype PKCS11 -providerClass sun.security.pkcs11.SunPKCS11 \
		-providerArg java.cfg -storepass "$USER_PIN" >list.txt 2>&1 || { cat list.txt; kt_fail "keytool -list failed"; }
	cat list.txt
	kt_grep '^person, PrivateKeyEntry' list.txt
	kt_grep '^revoked, PrivateKeyEntry' list.txt
	kt_grep 'Your keystore contains 2 entries' list.txt
	kt_client keytool -list -v -alias person -keystore NONE -storetype PKCS11 \
		-providerClass sun.security.pkcs11.SunPKCS11 -providerArg java.cfg -storepass "$USER_PIN" >person.txt 2>&1 ||
		{ cat person.txt; kt_fail "keytool -list -v failed"; }
	cat person.txt
	kt_grep 'Entry type: PrivateKeyEntry' person.txt
	kt_grep 'Owner: SERIALNUMBER=PNOKG-12345678901234' person.txt
	kt_grep '256-bit EC \(secp256r1\) key' person.txt
}

# sign ID OUT: ECDSA over the document's SHA-256 (SoftHSM 2.6.1 has no
# ECDSA-SHA256), signature in openssl's DER form.
sign() {
	kt_doc doc.txt
	openssl dgst -sha256 -binary doc.txt >doc.sha256
	ptu --sign --mechanism ECDSA --signature-format openssl --id "$1" -i doc.sha256 -o "$2"
}

s_sign_person() {
	sign 01 person.sig
	openssl x509 -in "$TDIR/person.der" -inform DER -pubkey -noout >cert-pub.pem
	openssl dgst -sha256 -verify cert-pub.pem -signature person.sig doc.txt
	echo x >>doc.txt
	kt_expect_fail openssl dgst -sha256 -verify cert-pub.pem -signature person.sig doc.txt
	if kt_on_koltamga; then
		# The one-step mechanism too.
		kt_doc doc.txt
		ptu --sign --mechanism ECDSA-SHA256 --signature-format openssl --id 01 -i doc.txt -o p256.sig
		openssl dgst -sha256 -verify cert-pub.pem -signature p256.sig doc.txt
	fi
}

s_sign_revoked() {
	qualified_checks
	kt_expect_fail sign 02 revoked.sig >out.txt 2>&1
	cat out.txt
	kt_grep 'CKR_KEY_FUNCTION_NOT_PERMITTED' out.txt
	kt_grep '^koltamga: signature refused \(revoked\): serial 2005 revoked' out.txt
	kt_nogrep 'Revoked Person|PNOKG' out.txt
	[ ! -s revoked.sig ] || kt_fail "a signature was written"
}

s_sign_without_trust_list() {
	qualified_checks
	grep -Ev '^(trust_list|crl_dir) ' "$KOLTAMGA_CONF" >notrust.conf
	cat notrust.conf
	KOLTAMGA_CONF=$TDIR/notrust.conf kt_expect_fail sign 01 person.sig >out.txt 2>&1
	cat out.txt
	kt_grep 'CKR_KEY_FUNCTION_NOT_PERMITTED' out.txt
	kt_grep '^koltamga: signature refused \(revocation status unknown\)' out.txt
	# A key without a certificate is not affected.
	KOLTAMGA_CONF=$TDIR/notrust.conf ptu --keypairgen --key-type EC:prime256v1 --id 03 --label plain
	KOLTAMGA_CONF=$TDIR/notrust.conf sign 03 plain.sig
	ec_pub_pem 03 plain.pub.pem
	openssl dgst -sha256 -verify plain.pub.pem -signature plain.sig doc.txt
}

scenario() {
	# The scripted signer of the confirm keys says yes (set here: steps
	# run in subshells).
	printf 'code=0\n' >"$TDIR/fake-confirm.conf"
	export KT_FAKE_CONFIRM=$TDIR/fake-confirm.conf
	kt_step -c init-token s_init_token
	kt_step -c trust-list s_trust_list
	kt_step -c person-cert s_person
	kt_step -c revoked-cert s_revoked
	kt_step p11tool-list-all-certs s_p11tool
	kt_step nss-certutil-list s_nss
	kt_step java-keytool-list s_java
	kt_step sign-person s_sign_person
	kt_step sign-revoked-refused s_sign_revoked
	kt_step sign-without-trust-list s_sign_without_trust_list
}

mkdir -p "$PKI"
sh "$KT_SRCDIR/tests/pki/gen.sh" "$PKI" || { echo "FAIL: tests/pki/gen.sh"; exit 1; }
kt_for_each_target scenario
kt_finish
