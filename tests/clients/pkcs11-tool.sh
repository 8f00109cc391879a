#!/usr/bin/env bash
# OpenSC pkcs11-tool (0.23) on a fresh token: init, PINs, key generation,
# listing, signatures checked by openssl, pkcs11-tool's own --test/--test-ec,
# PIN change, wrong PINs, deletion.  Same scenario on koltamga, on koltamga
# with its token on a device (koltamga-device: SoftHSM2 behind the pkcs11
# driver; there keys-on-device also checks, through the device's own module,
# that the key pairs were generated on the device, and the PIN lockout is the
# device's business, N/A) and on SoftHSM2.
set -eu
. "$(dirname "$0")/lib.sh"

kt_need_tools pkcs11-tool openssl timeout perl

LABEL=kt-pkcs11-tool

pt() { kt_client pkcs11-tool --module "$MODULE" "$@"; }
ptl() { pt --token-label "$LABEL" "$@"; }

# kt_has_mech NAME: the token lists mechanism NAME (from the mechanisms step).
has_mech() { grep -Eq "^  $1(,|$)" "$TDIR/mechanisms.txt" 2>/dev/null; }

s_init_token() {
	pt --init-token --so-pin "$SO_PIN" --label "$LABEL"
	pt --list-token-slots >slots.txt
	cat slots.txt
	kt_grep "token label +: $LABEL\$" slots.txt
	kt_grep 'token initialized' slots.txt
}

s_so_wrong_pin() {
	kt_expect_fail ptl --login --login-type so --so-pin 87654321 --init-pin --pin 1111 >out.txt 2>&1
	cat out.txt
	kt_grep 'CKR_PIN_INCORRECT' out.txt
}

s_init_pin() {
	ptl --login --login-type so --so-pin "$SO_PIN" --init-pin --pin "$USER_PIN"
	pt --list-token-slots >slots.txt
	kt_grep 'PIN initialized' slots.txt
}

s_mechanisms() {
	ptl --list-mechanisms >"$TDIR/mechanisms.txt"
	cat "$TDIR/mechanisms.txt"
	local m
	for m in RSA-PKCS-KEY-PAIR-GEN ECDSA-KEY-PAIR-GEN RSA-PKCS SHA256-RSA-PKCS ECDSA SHA256; do
		has_mech "$m" || kt_fail "mechanism $m not listed"
	done
}

s_keygen() { # id label key-type [mechanism needed]
	if [ -n "${4:-}" ] && ! has_mech "$4"; then
		kt_na "$4 not offered by the token"
	fi
	ptl --login --pin "$USER_PIN" --keypairgen --key-type "$3" --id "$1" --label "$2"
}

s_list_objects() {
	ptl --list-objects >public.txt
	cat public.txt
	kt_nogrep '^Private Key Object' public.txt
	kt_grep '^Public Key Object; RSA 2048 bits' public.txt
	kt_grep '^Public Key Object; EC ' public.txt
	ptl --login --pin "$USER_PIN" --list-objects >all.txt
	cat all.txt
	kt_grep '^Private Key Object; RSA' all.txt
	kt_grep '^Private Key Object; EC' all.txt
	# Private keys are sensitive and never extractable.
	awk '/^Private Key Object/ { p = 1; next } /^[A-Z]/ { p = 0 } p && /Access:/' all.txt >access.txt
	[ -s access.txt ] || kt_fail "no Access line for private keys"
	if grep -Ev 'sensitive.*never extractable' access.txt; then
		kt_fail "a private key is not sensitive + never extractable"
	fi
}

# koltamga-device: the key pairs were generated on the device itself (the
# device's own view, through its module), and koltamga shows the device's
# public keys.  Private keys that never left the device make every signature
# below one the device made.
s_keys_on_device() {
	[ "$KT_DEVICE" = 1 ] || kt_na "the token is not on a device here"
	local id n=0
	kt_client pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$LABEL" --login --pin "$USER_PIN" \
		--list-objects >device.txt
	cat device.txt
	for id in 01 02 03; do
		[ "$id" = 03 ] && [ "${KT_RESULT["$TARGET|keygen-ed25519"]:-}" != PASS ] && continue
		awk -v id="$id" '/^[A-Z]/ { p = ($0 ~ /^Private Key Object/) } p && $1 == "ID:" && $2 == id { f = 1 }
			f && /Access:/ { print; exit }' device.txt >access.txt
		[ -s access.txt ] || kt_fail "no private key $id on the device"
		kt_grep 'sensitive, always sensitive, never extractable, local' access.txt
		n=$((n + 1))
	done
	ptl --list-objects --type pubkey >kt-pubs.txt
	kt_client pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$LABEL" --list-objects --type pubkey >dev-pubs.txt
	cmp <(grep -E '^ +(EC_POINT|ID):' kt-pubs.txt | sort) <(grep -E '^ +(EC_POINT|ID):' dev-pubs.txt | sort) ||
		kt_fail "koltamga shows other public keys than the device"
	echo "$n private keys on the device"
}

# ec_pub_pem ID OUT.pem: the P-256 public key, built from the CKA_EC_POINT
# that --list-objects shows (a DER OCTET STRING holding the uncompressed
# point).  Not --read-object: pkcs11-tool 0.23 reads freed memory when it
# exports an EC public key (seen with ASan on SoftHSM too).
ec_pub_pem() {
	local hex
	ptl --list-objects --type pubkey >pubs.txt
	hex=$(awk -v id="$1" '/^[A-Z]/ { ec = ($0 ~ /^Public Key Object; EC /); pt = "" }
		ec && $1 == "EC_POINT:" { pt = $2 }
		ec && $1 == "ID:" && $2 == id && pt != "" { print pt; exit }' pubs.txt)
	echo "CKA_EC_POINT of $1: $hex"
	case $hex in
	0441*) [ "${#hex}" = 134 ] || kt_fail "EC_POINT of key $1 has a bad length" ;;
	*) kt_fail "EC_POINT of key $1 is not a DER OCTET STRING with an uncompressed P-256 point" ;;
	esac
	# SubjectPublicKeyInfo prefix for id-ecPublicKey, prime256v1.
	perl -e 'print pack("H*", $ARGV[0])' "3059301306072a8648ce3d020106082a8648ce3d030107034200${hex#0441}" >"pub-$1.der"
	openssl pkey -pubin -inform DER -in "pub-$1.der" -out "$2"
}

# export_pub ID OUT.pem
export_pub() {
	ptl --read-object --type pubkey --id "$1" -o "pub-$1.raw"
	kt_spki_pem "pub-$1.raw" "$2"
}

s_sign_rsa() {
	kt_doc doc.txt
	ptl --login --pin "$USER_PIN" --sign --mechanism SHA256-RSA-PKCS --id 01 -i doc.txt -o rsa.sig
	export_pub 01 rsa.pub.pem
	openssl dgst -sha256 -verify rsa.pub.pem -signature rsa.sig doc.txt
	cp doc.txt doc-changed.txt
	echo "Income: 1000000 KGS" >>doc-changed.txt
	kt_expect_fail openssl dgst -sha256 -verify rsa.pub.pem -signature rsa.sig doc-changed.txt
}

s_sign_ecdsa_sha256() {
	if ! has_mech ECDSA-SHA256; then
		[ "$STRICT" = 1 ] && kt_fail "ECDSA-SHA256 not offered by the token"
		kt_na "ECDSA-SHA256 not offered (SoftHSM 2.6.1 has only CKM_ECDSA)"
	fi
	kt_doc doc.txt
	ptl --login --pin "$USER_PIN" --sign --mechanism ECDSA-SHA256 --signature-format openssl \
		--id 02 -i doc.txt -o ec256.sig
	ec_pub_pem 02 ec.pub.pem
	openssl dgst -sha256 -verify ec.pub.pem -signature ec256.sig doc.txt
	echo x >>doc.txt
	kt_expect_fail openssl dgst -sha256 -verify ec.pub.pem -signature ec256.sig doc.txt
}

s_sign_ecdsa_hash() {
	kt_doc doc.txt
	openssl dgst -sha256 -binary doc.txt >doc.sha256
	ptl --login --pin "$USER_PIN" --sign --mechanism ECDSA --signature-format openssl \
		--id 02 -i doc.sha256 -o ec.sig
	ec_pub_pem 02 ec.pub.pem
	openssl dgst -sha256 -verify ec.pub.pem -signature ec.sig doc.txt
}

s_sign_ed25519() {
	[ -n "${KT_RESULT["$TARGET|keygen-ed25519"]:-}" ] && [ "${KT_RESULT["$TARGET|keygen-ed25519"]}" = PASS ] ||
		kt_na "no Ed25519 key"
	kt_doc doc.txt
	ptl --login --pin "$USER_PIN" --sign --mechanism EDDSA --id 03 -i doc.txt -o ed.sig
	export_pub 03 ed.pub.pem
	openssl pkeyutl -verify -pubin -inkey ed.pub.pem -rawin -in doc.txt -sigfile ed.sig
}

s_verify_on_token() {
	kt_doc doc.txt
	ptl --login --pin "$USER_PIN" --sign --mechanism SHA256-RSA-PKCS --id 01 -i doc.txt -o v.sig
	ptl --verify --mechanism SHA256-RSA-PKCS --id 01 -i doc.txt --signature-file v.sig >ok.txt 2>&1
	cat ok.txt
	kt_grep 'Signature is valid' ok.txt
	echo x >>doc.txt
	ptl --verify --mechanism SHA256-RSA-PKCS --id 01 -i doc.txt --signature-file v.sig >bad.txt 2>&1 || true
	cat bad.txt
	kt_grep 'Invalid signature|CKR_SIGNATURE_INVALID' bad.txt
}

s_test() {
	local rc=0
	ptl --login --pin "$USER_PIN" --test >test.txt 2>&1 || rc=$?
	cat test.txt
	if [ "$rc" -ne 0 ]; then
		# SoftHSM 2.6.1 answers the OAEP-with-label probe with
		# CKR_ARGUMENTS_BAD, which makes pkcs11-tool abort (clients.md).
		if grep -q 'C_DecryptInit failed: rv = CKR_ARGUMENTS_BAD' test.txt; then
			kt_known "C_DecryptInit(RSA-PKCS-OAEP with a label) answers CKR_ARGUMENTS_BAD, --test aborts"
		fi
		kt_fail "pkcs11-tool --test exit $rc"
	fi
	kt_nogrep 'Aborting|failed' test.txt
	kt_grep 'C_SeedRandom\(\) and C_GenerateRandom\(\):' test.txt
}

s_test_ec() {
	has_mech ECDSA-SHA1 || kt_na "ECDSA-SHA1 not offered (pkcs11-tool --test-ec needs it)"
	ptl --login --pin "$USER_PIN" --session-rw --test-ec --id 04 --key-type EC:prime256v1 >testec.txt 2>&1 ||
		{ cat testec.txt; kt_fail "--test-ec failed"; }
	cat testec.txt
	kt_nogrep 'Aborting|failed' testec.txt
}

s_change_pin() {
	ptl --login --pin "$USER_PIN" --change-pin --new-pin "$NEW_PIN"
	kt_expect_fail ptl --login --pin "$USER_PIN" --list-objects >old.txt 2>&1
	cat old.txt
	kt_grep 'CKR_PIN_INCORRECT' old.txt
	ptl --login --pin "$NEW_PIN" --list-objects >new.txt
	kt_grep '^Private Key Object' new.txt
}

s_wrong_pin() {
	kt_expect_fail ptl --login --pin "$BAD_PIN" --list-objects >bad.txt 2>&1
	cat bad.txt
	kt_grep 'CKR_PIN_INCORRECT' bad.txt
	kt_nogrep '^Private Key Object' bad.txt
	# One wrong PIN does not lock the token; the right one still works.
	ptl --login --pin "$NEW_PIN" --list-objects >good.txt
	kt_grep '^Private Key Object' good.txt
}

s_delete() {
	ptl --login --pin "$NEW_PIN" --delete-object --type privkey --id 02
	ptl --login --pin "$NEW_PIN" --delete-object --type pubkey --id 02
	ptl --login --pin "$NEW_PIN" --list-objects >after.txt
	cat after.txt
	kt_nogrep '^ +ID: +02$' after.txt
	kt_grep '^ +ID: +01$' after.txt
	kt_expect_fail ptl --read-object --type pubkey --id 02 -o gone.der
	# Deleting what is not there is an error, not a crash.
	kt_expect_fail ptl --login --pin "$NEW_PIN" --delete-object --type privkey --id 02
}

# Five wrong PINs (koltamga's default max_pin_tries) lock the user PIN, even
# for the right one; the SO unlocks it by setting a new one.  On
# koltamga-device the device's own PIN rules apply (koltamga keeps no counter
# for it): SoftHSM2 answers every wrong PIN with CKR_PIN_INCORRECT and never
# locks, which is checked, and the lockout itself does not apply.
s_pin_lockout() {
	local i
	for i in 1 2 3 4 5; do
		ptl --login --pin "$BAD_PIN" --list-objects >try$i.txt 2>&1 || true
		grep -o 'CKR_[A-Z_]*' try$i.txt || kt_fail "wrong PIN $i: no error"
		if [ "$KT_DEVICE" = 1 ]; then kt_grep 'CKR_PIN_INCORRECT' try$i.txt; fi
	done
	ptl --login --pin "$NEW_PIN" --list-objects >locked.txt 2>&1 || true
	cat locked.txt
	if [ "$KT_DEVICE" = 1 ]; then
		kt_grep '^Private Key Object' locked.txt
		pt --list-token-slots >slots.txt
		cat slots.txt
		kt_nogrep 'user PIN locked' slots.txt
		kt_na "the device's own PIN rules apply, not koltamga's max_pin_tries (SoftHSM2 never locks a PIN)"
	fi
	if grep -q '^Private Key Object' locked.txt; then
		kt_known "the user PIN never locks (SoftHSM 2.6.1 counts no wrong PINs)"
	fi
	kt_grep 'CKR_PIN_LOCKED' locked.txt
	pt --list-token-slots >slots.txt
	kt_grep 'token flags.*user PIN locked' slots.txt
	ptl --login --login-type so --so-pin "$SO_PIN" --init-pin --pin 4321
	ptl --login --pin 4321 --list-objects >unlocked.txt
	kt_grep '^Private Key Object' unlocked.txt
	pt --list-token-slots >slots.txt
	cat slots.txt
	kt_nogrep 'user PIN locked' slots.txt
}

scenario() {
	kt_step -c init-token s_init_token
	kt_step so-wrong-pin s_so_wrong_pin
	kt_step -c init-pin s_init_pin
	kt_step -c mechanisms s_mechanisms
	kt_step -c keygen-rsa2048 s_keygen 01 rsa-key rsa:2048
	kt_step -c keygen-ec-p256 s_keygen 02 ec-key EC:prime256v1
	kt_step keygen-ed25519 s_keygen 03 ed-key EC:edwards25519 EC-EDWARDS-KEY-PAIR-GEN
	kt_step list-objects s_list_objects
	kt_step keys-on-device s_keys_on_device
	kt_step sign-sha256-rsa-pkcs s_sign_rsa
	kt_step sign-ecdsa-sha256 s_sign_ecdsa_sha256
	kt_step sign-ecdsa-prehashed s_sign_ecdsa_hash
	kt_step sign-eddsa s_sign_ed25519
	kt_step verify-on-token s_verify_on_token
	kt_step test s_test
	kt_step test-ec s_test_ec
	kt_step -c change-pin s_change_pin
	kt_step wrong-pin s_wrong_pin
	kt_step delete-object s_delete
	kt_step pin-lockout s_pin_lockout
}

kt_for_each_target scenario
kt_finish
