#!/bin/sh
# Issue a certificate of a test profile over an existing public key, signed
# by sub-ca of a PKI made by gen.sh (for keys generated on the token: export
# the public key, issue, import the certificate).
#
#   issue.sh OUTDIR PROFILE PUBKEY.pem OUT.pem [SUBJECT-CN]
#   PROFILE: person | representative | seal | nosign | expired
#
# OpenSSL 3.0 has no `x509 -not_before`; `openssl ca` (which sets any dates)
# signs only requests signed by their own key, and `x509 -CA -preserve_dates`
# only certificates self-signed by the key they carry.  So the certificate is
# made with `x509 -req -force_pubkey` (valid from now), and for `expired` its
# validity is then rewritten in place (same lengths) and the TBSCertificate
# re-signed with `openssl dgst -sign` (needs xxd).
set -eu

if [ $# -lt 4 ] || [ $# -gt 5 ]; then
	echo "usage: $0 OUTDIR PROFILE PUBKEY.pem OUT.pem [SUBJECT-CN]" >&2
	exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
out=$(cd "$1" && pwd)
profile=$2 pubkey=$3 cert=$4
cnf=$here/openssl.cnf
OPENSSL_CONF=$cnf
KT_CADIR=$out/.ca/sub-ca
export OPENSSL_CONF KT_CADIR
when() { date -u -d "$1" +%Y%m%d%H%M%SZ; }

redate=
person='/C=KG/SN=Асанов/GN=Бакыт Маратович/CN=%s/serialNumber=PNOKG-12345678901234'
case $profile in
person) ext=ee_person dn=$person cn='Асанов Бакыт Маратович' ;;
nosign) ext=ee_nosign dn=$person cn='No Sign Person' ;;
expired)
	ext=ee_person dn=$person cn='Expired Person'
	start=$(when '-1 year') end=$(when 'yesterday') redate=yes
	;;
representative)
	ext=ee_representative cn='Асанова Айгуль'
	dn='/C=KG/ST=Чуйская область/L=Бишкек/street=ул. Киевская 96/O=ОсОО Тест Компани/organizationIdentifier=NTRKG-1234567/title=Директор/SN=Асанова/GN=Айгуль/CN=%s/serialNumber=PNOKG-22345678901234'
	;;
seal)
	ext=ee_seal cn='Tax receipts system'
	dn='/C=KG/O=Государственная налоговая служба/organizationIdentifier=NTRKG-7654321/CN=%s'
	;;
*)
	echo "$0: unknown profile '$profile'" >&2
	exit 2
	;;
esac
[ $# -eq 5 ] && cn=$5
# '/' would split the name, '%' and '\\' would be read by printf: refuse
# rather than issue a wrong one.
case $cn in */* | *%* | *\\*) echo "$0: '/', '%' or '\\' in the subject CN" >&2; exit 2 ;; esac
subj=$(printf "$dn" "$cn")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Tests may issue in parallel from one PKI: the centre's serial is shared.
exec 9>"$KT_CADIR/lock"
flock 9
serial=$(cat "$KT_CADIR/serial")
printf '%04X\n' $((0x$serial + 1)) >"$KT_CADIR/serial"

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/k"
openssl req -new -utf8 -key "$tmp/k" -subj "$subj" -out "$tmp/req"
openssl x509 -req -in "$tmp/req" -CA "$out/sub-ca.pem" -CAkey "$out/sub-ca.key" \
	-force_pubkey "$pubkey" -set_serial "0x$serial" -days 730 -sha256 \
	-extfile "$cnf" -extensions "$ext" -outform DER -out "$tmp/c" 2>"$tmp/err" ||
	{ cat "$tmp/err" >&2; exit 1; }
[ -n "$redate" ] || { openssl x509 -inform DER -in "$tmp/c" -out "$cert"; exit 0; }

# DER length octets of $1 bytes, as hex.
der_len() {
	if [ "$1" -lt 128 ]; then printf '%02x' "$1"
	elif [ "$1" -lt 256 ]; then printf '81%02x' "$1"
	else printf '82%04x' "$1"; fi
}
hex() { xxd -p "$1" | tr -d '\n'; }
# The three parts of the certificate: TBSCertificate, algorithm, signature.
openssl asn1parse -inform DER -in "$tmp/c" | awk -F: '/d=1 / { gsub(/ /, "", $1); print $1 }' >"$tmp/offs"
tbs_at=$(sed -n 1p "$tmp/offs") alg_at=$(sed -n 2p "$tmp/offs") sig_at=$(sed -n 3p "$tmp/offs")
dd if="$tmp/c" of="$tmp/tbs" bs=1 skip="$tbs_at" count=$((alg_at - tbs_at)) 2>/dev/null
dd if="$tmp/c" of="$tmp/alg" bs=1 skip="$alg_at" count=$((sig_at - alg_at)) 2>/dev/null
# Validity ::= SEQUENCE { UTCTime, UTCTime }: 13 characters each either way.
nb=$(printf "%s" "${start#??}" | xxd -p) na=$(printf "%s" "${end#??}" | xxd -p)
hex "$tmp/tbs" | sed -E "s/301e170d[0-9a-f]{26}170d[0-9a-f]{26}/301e170d${nb}170d${na}/" |
	xxd -r -p >"$tmp/tbs2"
openssl dgst -sha256 -sign "$out/sub-ca.key" -out "$tmp/sig" "$tmp/tbs2"
siglen=$(($(wc -c <"$tmp/sig") + 1))
body="$(hex "$tmp/tbs2")$(hex "$tmp/alg")03$(der_len $siglen)00$(hex "$tmp/sig")"
printf '30%s%s' "$(der_len $((${#body} / 2)))" "$body" | xxd -r -p >"$tmp/c2"
openssl x509 -inform DER -in "$tmp/c2" -out "$cert"
