#!/bin/sh
# Make the koltamga test PKI in OUTDIR with the openssl command line only
# (OpenSSL 3.0 or later; no faketime: `openssl ca -startdate/-enddate` sets
# any validity).  Keys are EC P-256 except rsa-person (RSA-2048).  Serial
# numbers and names are fixed; keys and dates follow the clock.
#
#   gen.sh OUTDIR
#
# Writes: root-ca, sub-ca, rogue-ca, legacy-ca (.pem/.key), the end-entity
# certificates and PKCS#8 keys listed in END_ENTITIES below, crl/sub-ca.crl,
# crl/root-ca.crl, crl-stale/sub-ca.crl, trust-list.conf, and .ca/ (the
# centres' state that issue.sh continues from).
set -eu

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)
cnf=$here/openssl.cnf
# Quiet and independent of the caller's configuration.
OPENSSL_CONF=$cnf
export OPENSSL_CONF

when() { date -u -d "$1" +%Y%m%d%H%M%SZ; }
now_minus_hour=$(when '-1 hour')
in_two_years=$(when '+2 years')

key() { # NAME [rsa]
	if [ "${2:-}" = rsa ]; then
		openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$out/$1.key" 2>/dev/null
	else
		openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$out/$1.key"
	fi
	chmod 600 "$out/$1.key"
}

# A centre's state: index, serial (first serial given), CRL number.
centre() { # NAME FIRST-SERIAL
	d=$out/.ca/$1
	mkdir -p "$d/new"
	: >"$d/index.txt"
	echo "unique_subject = no" >"$d/index.txt.attr"
	echo "$2" >"$d/serial"
	echo 01 >"$d/crlnumber"
}

# sign CA-NAME PROFILE SUBJECT KEY-NAME OUT START END [selfsign]
sign() {
	ca=$1 profile=$2 subj=$3 keyname=$4 outfile=$5 start=$6 end=$7
	KT_CADIR=$out/.ca/$ca
	export KT_CADIR
	openssl req -new -utf8 -key "$out/$keyname.key" -subj "$subj" -out "$KT_CADIR/req.pem"
	if [ "${8:-}" = selfsign ]; then
		cakey=$out/$keyname.key
		set -- -selfsign
	else
		cakey=$out/$ca.key
		set -- -cert "$out/$ca.pem"
	fi
	openssl ca -batch -notext -utf8 -preserveDN -config "$cnf" "$@" -keyfile "$cakey" \
		-extensions "$profile" -startdate "$start" -enddate "$end" \
		-in "$KT_CADIR/req.pem" -out "$outfile" 2>/dev/null
	rm -f "$KT_CADIR/req.pem"
}

# --- centres ---------------------------------------------------------------
centre root-ca 1000
centre sub-ca 2000
centre rogue-ca 3000
centre legacy-ca 4000
for c in root-ca sub-ca rogue-ca legacy-ca; do key "$c"; done
# The centres exist long before and after anything they issue, so a chain
# check never fails on a centre's own dates.
sign root-ca v3_root '/C=KG/L=Bishkek/O=Test Accreditation Root/CN=Test Accredited Root CA' \
	root-ca "$out/root-ca.pem" 20200101000000Z 20401231235959Z selfsign
sign root-ca v3_sub '/C=KG/L=Бишкек/O=Тест Удостоверяющий Центр/CN=Test Accredited Sub CA' \
	sub-ca "$out/sub-ca.pem" 20200101000000Z 20401231235959Z
sign rogue-ca v3_root '/C=KG/O=Rogue Centre/CN=Rogue CA' \
	rogue-ca "$out/rogue-ca.pem" 20200101000000Z 20401231235959Z selfsign
sign legacy-ca v3_root '/C=KG/L=Bishkek/O=Old Law Centre/CN=Test Legacy CA' \
	legacy-ca "$out/legacy-ca.pem" 20100101000000Z 20401231235959Z selfsign

# --- end entities ----------------------------------------------------------
person_dn() { # CN
	echo "/C=KG/SN=Асанов/GN=Бакыт Маратович/CN=$1/serialNumber=PNOKG-12345678901234"
}

ee() { # NAME CA PROFILE SUBJECT START END [rsa]
	key "$1" "${7:-}"
	sign "$2" "$3" "$4" "$1" "$out/$1.pem" "$5" "$6"
}

ee person sub-ca ee_person "$(person_dn 'Асанов Бакыт Маратович')" "$now_minus_hour" "$in_two_years"
ee representative sub-ca ee_representative \
	'/C=KG/ST=Чуйская область/L=Бишкек/street=ул. Киевская 96/O=ОсОО Тест Компани/organizationIdentifier=NTRKG-1234567/title=Директор/SN=Асанова/GN=Айгуль/CN=Асанова Айгуль/serialNumber=PNOKG-22345678901234' \
	"$now_minus_hour" "$in_two_years"
ee seal sub-ca ee_seal \
	'/C=KG/O=Государственная налоговая служба/organizationIdentifier=NTRKG-7654321/CN=Tax receipts system' \
	"$now_minus_hour" "$in_two_years"
ee expired sub-ca ee_person "$(person_dn 'Expired Person')" "$(when '-1 year')" "$(when 'yesterday')"
ee notyet sub-ca ee_person "$(person_dn 'Not Yet Person')" "$(when '+1 year')" "$(when '+3 years')"
ee revoked sub-ca ee_person "$(person_dn 'Revoked Person')" "$now_minus_hour" "$in_two_years"
ee suspended sub-ca ee_person "$(person_dn 'Suspended Person')" "$now_minus_hour" "$in_two_years"
ee nosign sub-ca ee_nosign "$(person_dn 'No Sign Person')" "$now_minus_hour" "$in_two_years"
ee rogue rogue-ca ee_person "$(person_dn 'Rogue Person')" "$now_minus_hour" "$in_two_years"
ee legacy legacy-ca ee_legacy '/C=KG/SN=Old/GN=Legacy/CN=Legacy Person/serialNumber=PNOKG-99999999999999' \
	"$(when '-1 year')" "$in_two_years"
ee kz-person sub-ca ee_kz \
	'/C=KZ/L=Алматы/SN=ИВАНОВ/GN=ИВАН/CN=ИВАНОВ ИВАН/serialNumber=IIN123456789012/OU=BIN123456789012' \
	"$now_minus_hour" "$in_two_years"
ee rsa-person sub-ca ee_person "$(person_dn 'Асанов Бакыт Маратович')" "$now_minus_hour" "$in_two_years" rsa

# --- revocation ----------------------------------------------------------
KT_CADIR=$out/.ca/sub-ca
export KT_CADIR
subca="-config $cnf -cert $out/sub-ca.pem -keyfile $out/sub-ca.key"
openssl ca $subca -revoke "$out/revoked.pem" -crl_reason keyCompromise 2>/dev/null
openssl ca $subca -revoke "$out/suspended.pem" -crl_hold holdInstructionReject 2>/dev/null
mkdir -p "$out/crl" "$out/crl-stale"
openssl ca $subca -gencrl -crlexts crl_ext -crldays 7 -out "$out/crl/sub-ca.crl" 2>/dev/null
openssl ca $subca -gencrl -crlexts crl_ext -crl_lastupdate "$(when '-10 days')" \
	-crl_nextupdate "$(when '-3 days')" -out "$out/crl-stale/sub-ca.crl" 2>/dev/null
KT_CADIR=$out/.ca/root-ca
openssl ca -config "$cnf" -cert "$out/root-ca.pem" -keyfile "$out/root-ca.key" -gencrl \
	-crlexts crl_ext -crldays 7 -out "$out/crl/root-ca.crl" 2>/dev/null

# --- trust list ----------------------------------------------------------
cat >"$out/trust-list.conf" <<'TL'
# koltamga trust list: accredited certification centres
[centre]
name = Test Accredited Root CA
certificate = root-ca.pem
accredited_from = 2020-01-01
accredited_until = 2040-12-31
accreditation = KG-ACC-0001
legacy = no

[centre]
name = Test Accredited Sub CA
certificate = sub-ca.pem
accredited_from = 2020-01-01
accredited_until = 2040-12-31
accreditation = KG-ACC-0002
legacy = no

[centre]
name = Test Legacy CA
certificate = legacy-ca.pem
accredited_from = 2010-01-01
accreditation = KG-LEGACY-0001
legacy = yes
TL
