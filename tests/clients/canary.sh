#!/usr/bin/env bash
# Issue 5: documents, their digests, PINs, personal data and private keys do
# not leak.  tests/canary/driver runs every flow through the PKCS#11 API
# with canaries (PINs, two documents and sign-context titles, a certificate
# full of personal data, EC and AES keys with known bytes), under strace, at
# the highest debug level (KOLTAMGA_DEBUG=all and every category).  Then
# every byte that the process and its children wrote (to files, stderr, the
# audit log, the token store, temporary files, deleted or not), every file
# they opened for writing as it is at the end, and the argv and environment
# of every execve are searched for every canary in raw, hex and base64 form:
#
#   canary                     may appear only in
#   PINs (SO, user, new, wrong, an over-long one)   nowhere (not even the store)
#   documents, titles          nowhere (but the confirmation dialog)
#   SHA-256 of the document    the audit log (its non-confidential records)
#   SHA-256 of the confidential document            nowhere (but the dialog)
#   personal data of the certificate                nowhere (but the dialog): a
#                              certificate carrying it is a private object,
#                              sealed in the store like a key
#   private scalars, AES keys  nowhere (the store keeps them sealed, for
#                              CKA_PRIVATE true and false objects alike)
#
# The key compromise report is a file outside the store like any other: no
# canary at all may be in it (its own step, compromise-report).  Named
# sockets and the network (syslog, journald) may not even be contacted.
# Bytes written through mmap (SQLite's -shm) are not seen as writes; every
# file opened for writing is therefore also searched as it is at the end.
#
# "The dialog" is tests/pinentry/fake-confirm.sh, the `command` backend: the
# signer must see the document, the certificate's holder and the digest, so
# its input (a socketpair from the module: IPC, not a file) and the files it
# records that input in (SIGNER_DIR below, excluded from the search) carry
# them legitimately.  PINs and key bytes may not reach even the dialog.
#
# Positive controls, so the test cannot pass by seeing nothing: the driver
# finally writes every canary to a file of its own and spawns a child with
# canaries in argv and environment, and the search must find them there;
# a synthetic file with every canary in every form is found; the trace shows
# the writes to the audit log, the store and stderr; tracing was on; the
# signatures verify with openssl; the scripted signer did receive the
# documents; the audit log does carry the non-confidential document's digest;
# the store files are the SQLite database the module wrote.
#
# koltamga only: SoftHSM2 is the other client tests' reference for PKCS#11
# behaviour, but this test is about koltamga's own logs, audit log, store
# format and confirmation dialog, none of which SoftHSM2 has.
#
# Needs strace (and ptrace allowed), openssl, perl, xxd: missing ones skip,
# or fail with CI set (lib.sh).
set -eu
# shellcheck disable=SC2034 # read by lib.sh
KT_CLIENT_TARGETS=koltamga
. "$(dirname "$0")/lib.sh"

kt_need_tools strace openssl perl xxd od base64 sha256sum
# A container without ptrace has strace but cannot use it.
strace -f -qq -o /dev/null true 2>/dev/null || kt_missing "strace cannot trace here (ptrace not permitted)"

KT_SRCDIR=${KOLTAMGA_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
KT_SRCDIR=$(cd "$KT_SRCDIR" && pwd)
DRIVER=$KT_BUILDDIR/tests/canary/driver
PKI=$KT_TMP/pki
# (? : a call this architecture does not have, e.g. open on arm64, is skipped.)
TRACED_SYSCALLS="openat,?open,?creat,?rename,renameat,renameat2,?link,linkat,?symlink,symlinkat,?unlink,unlinkat"
TRACED_SYSCALLS=$TRACED_SYSCALLS,write,pwrite64,writev,pwritev,pwritev2,sendfile,copy_file_range,splice
TRACED_SYSCALLS=$TRACED_SYSCALLS,execve,execveat,connect,sendto,sendmsg,sendmmsg

# Every run has its own tag, so a hit can only come from this run.
TAG=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')

# --- the perl helpers -----------------------------------------------------
# decode.pl TRACE OUT: strace -xx -yy output to
#   OUT/w/N.bin   every byte written to destination N, in order
#   OUT/writes.idx  N <tab> file|ipc <tab> path or socket <tab> calls <tab> bytes
#   OUT/x/N.argv, N.env  argv and environment of execve N (NUL-separated)
#   OUT/execs.idx   N <tab> pid <tab> program <tab> planted(0/1) <tab> result
#   OUT/opened.idx  path <tab> syscall  (opened for writing, created, renamed or linked to)
#   OUT/contacts.idx  connect/sendto/sendmsg to a named address
#   OUT/other.idx   kernel-side copies (sendfile, splice...), lines not understood
#   OUT/truncated   strings strace cut short (must be 0)
write_perl() {
	cat >"$KT_TMP/decode.pl" <<'PERL'
use strict;
use warnings;
my ($trace, $out) = @ARGV;
mkdir "$out/w";
mkdir "$out/x";
sub unhex { my $s = shift; $s =~ s/\\x([0-9a-fA-F]{2})/chr(hex($1))/ge; return $s; }
sub printable { my $s = shift; $s =~ s/[^\x20-\x7e]/?/g; return $s; }
sub strs {
	my ($s, $trunc) = (shift, 0);
	my @r;
	while ($s =~ /"((?:\\x[0-9a-f]{2})*)"(\.\.\.)?/g) { push @r, unhex($1); $trunc++ if defined $2; }
	return (\@r, $trunc);
}
# An fd's annotation: the path (or socket/pipe name), without device info.
sub dest {
	my $a = unhex(shift);
	$a =~ s/<(?:char|block) [0-9]+:[0-9]+>$//;
	$a =~ s/ \(deleted\)$//;
	return $a;
}
my (%id, %calls, %bytes, %pids, @order);
my ($truncated, $nexec) = (0, 0);
open my $T, '<', $trace or die "$trace: $!";
open my $EX, '>', "$out/execs.idx" or die;
open my $OP, '>', "$out/opened.idx" or die;
open my $CT, '>', "$out/contacts.idx" or die;
open my $OT, '>', "$out/other.idx" or die;
sub cwd_join {
	my ($dirann, $p) = @_;
	return $p if $p =~ m{^/};
	return (defined $dirann ? dest($dirann) : '.') . "/$p";
}
while (my $line = <$T>) {
	chomp $line;
	next unless $line =~ /^(\d+)\s+(.*)$/;
	my ($pid, $rest) = ($1, $2);
	next if $rest =~ /^<\.\.\. /;   # a resumed call: its arguments were on the first line
	next if $rest =~ /^(---|\+\+\+)/;
	unless ($rest =~ /^(\w+)\((.*)$/) { print $OT "unparsed: ", printable($line), "\n"; next; }
	my ($sc, $args) = ($1, $2);
	if ($sc =~ /^(?:write|pwrite64|writev|pwritev2?|sendto|sendmsg|sendmmsg)$/) {
		unless ($args =~ /^(\d+)<(.*?)>, (.*)$/) { print $OT "unparsed: ", printable($line), "\n"; next; }
		my ($d, $data) = (dest($2), $3);
		my $kind = $d =~ m{^/} ? 'file' : 'ipc';
		my $key = "$kind\t$d";
		unless (exists $id{$key}) { $id{$key} = scalar @order; push @order, $key; }
		my $n = $id{$key};
		if ($sc =~ /^send/ && $data =~ /sun_path=|sin6?_addr|sa_family=AF_(?!UNSPEC)/) {
			print $CT "$pid\t$sc\t", printable(unhex($data)), "\n";
		}
		my ($s, $t) = strs($data);
		$truncated += $t;
		open my $W, '>>', "$out/w/$n.bin" or die;
		binmode $W;
		# sendto/sendmsg may print an address string too: harmless extra bytes.
		for my $b (@$s) { print $W $b; $bytes{$n} += length $b; }
		close $W;
		$calls{$n}++;
		$pids{$n}{$pid} = 1;
	} elsif ($sc =~ /^execve(?:at)?$/) {
		unless ($args =~ /"((?:\\x[0-9a-f]{2})*)", \[(.*?)\], \[(.*?)\]/) {
			print $OT "unparsed: ", printable($line), "\n";
			next;
		}
		my ($prog, $av, $ev) = (unhex($1), $2, $3);
		my ($a, $ta) = strs($av);
		my ($e, $te) = strs($ev);
		$truncated += $ta + $te;
		my $n = $nexec++;
		for (["argv", $a], ["env", $e]) {
			open my $X, '>', "$out/x/$n.$_->[0]" or die;
			binmode $X;
			print $X join("\0", @{$_->[1]});
			close $X;
		}
		my $planted = (grep { $_ eq 'KT-PLANTED-CONTROL' } @$a) ? 1 : 0;
		my ($res) = $line =~ /\) += (.*)$/;
		print $EX "$n\t$pid\t", printable($prog), "\t$planted\t", ($res // '?'), "\n";
	} elsif ($sc =~ /^(?:openat|open|creat)$/) {
		my ($dirann, $p, $flags);
		if ($sc eq 'openat') {
			($dirann, $p, $flags) = $args =~ /^\w+(?:<(.*?)>)?, "((?:\\x[0-9a-f]{2})*)", ([A-Z_|0-9]+)/;
		} else {
			($p, $flags) = $args =~ /^"((?:\\x[0-9a-f]{2})*)", ([A-Z_|0-9]+)/;
			$flags = 'O_CREAT' if $sc eq 'creat';
		}
		unless (defined $p) { print $OT "unparsed: ", printable($line), "\n"; next; }
		next unless $flags =~ /O_WRONLY|O_RDWR|O_CREAT|O_TRUNC/;
		my $path = cwd_join($dirann, unhex($p));
		if ($line =~ /\) = \d+<(.*)>$/) { $path = dest($1); }
		print $OP "$path\t$sc\n";
	} elsif ($sc =~ /^(?:rename|renameat2?|link|linkat|symlink|symlinkat)$/) {
		# Every path named, resolved against the cwd annotation (the
		# target is what matters; a source that is gone is skipped later).
		my @dirs = $args =~ /(?:AT_FDCWD|\d+)<(.*?)>/g;
		my ($s) = strs($args);
		for my $p (@$s) { print $OP cwd_join($dirs[0], $p), "\t$sc\n"; }
	} elsif ($sc eq 'connect') {
		print $CT "$pid\tconnect\t", printable(unhex($args)), "\n" if $args =~ /sun_path=|sin6?_addr/;
	} elsif ($sc =~ /^(?:sendfile|copy_file_range|splice)$/) {
		print $OT "$sc: ", printable($line), "\n";
	}
}
open my $IX, '>', "$out/writes.idx" or die;
for my $k (@order) {
	my $n = $id{$k};
	my ($kind, $d) = split /\t/, $k, 2;
	print $IX "$n\t$kind\t", printable($d), "\t", $calls{$n}, "\t", ($bytes{$n} // 0), "\t",
		join(',', sort keys %{$pids{$n}}), "\n";
}
open my $TR, '>', "$out/truncated" or die;
print $TR "$truncated\n";
PERL

	# scan.pl NEEDLES LIST: NEEDLES lines are "name <tab> class <tab> hex";
	# LIST lines "category <tab> path".  Prints "category <tab> path <tab>
	# name <tab> class <tab> form" for every needle form found in a file.
	# Forms: raw bytes, hex (either case), and base64 at each of the three
	# alignments (the part of the encoding that depends on the needle only).
	cat >"$KT_TMP/scan.pl" <<'PERL'
use strict;
use warnings;
# Base64 here (perl-base has no MIME::Base64).
my @B64 = ('A' .. 'Z', 'a' .. 'z', '0' .. '9', '+', '/');
sub b64 {
	my ($s, $o) = (shift, '');
	for (my $i = 0; $i < length $s; $i += 3) {
		my $c = substr($s, $i, 3);
		my $n = length $c;
		my $v = unpack('N', "\0" . $c . ("\0" x (3 - $n)));
		$o .= join '', map { $B64[($v >> (18 - 6 * $_)) & 63] } 0 .. 3;
		substr($o, -(3 - $n)) = '=' x (3 - $n) if $n < 3;
	}
	return $o;
}
my ($needles, $list) = @ARGV;
my @forms;
open my $N, '<', $needles or die "$needles: $!";
while (<$N>) {
	chomp;
	my ($name, $class, $hex) = split /\t/;
	my $raw = pack('H*', $hex);
	push @forms, [$name, $class, 'raw', $raw], [$name, $class, 'hex', lc unpack('H*', $raw)],
		[$name, $class, 'HEX', uc unpack('H*', $raw)];
	for my $k (0 .. 2) {
		my $enc = b64(("\0" x $k) . $raw);
		my $g0 = $k ? 1 : 0;
		my $g1 = int(($k + length $raw) / 3) - 1;
		next if $g1 < $g0;
		push @forms, [$name, $class, "base64/$k", substr($enc, 4 * $g0, 4 * ($g1 - $g0 + 1))];
	}
}
open my $L, '<', $list or die "$list: $!";
while (my $line = <$L>) {
	chomp $line;
	my ($cat, $path) = split /\t/, $line, 2;
	next unless -f $path;
	open my $F, '<', $path or die "$path: $!";
	binmode $F;
	local $/;
	my $data = <$F> // '';
	close $F;
	for my $f (@forms) {
		print "$cat\t$path\t$f->[0]\t$f->[1]\t$f->[2]\n" if index($data, $f->[3]) >= 0;
	}
}
PERL
}

# --- the steps --------------------------------------------------------------
hexof() { od -An -v -tx1 | tr -d ' \n'; }

s_setup() {
	mkdir -p "$IN" "$SIGNER_DIR" "$OUT" "$RUN" "$AUDIT_DIR" "$STORE" "$TDIR/home" "$TDIR/tmp" "$TDIR/reports"
	[ -x "$DRIVER" ] || kt_fail "$DRIVER not built (make check builds it)"

	# The PINs (within min_pin_len..max_pin_len, 4..64, but the long one).
	printf '%s' "SOPIN-CANARY-4M8Z-$TAG" >"$IN/so_pin"
	printf '%s' "PIN-CANARY-7Q3X-$TAG" >"$IN/user_pin"
	printf '%s' "NEWPIN-CANARY-2W6E-$TAG" >"$IN/new_pin"
	printf '%s' "BADPIN-CANARY-5T1R-$TAG" >"$IN/bad_pin"
	printf 'LONGPIN-CANARY-0Z9Y-%s-%s-%s-%s-%s-%s' "$TAG" "$TAG" "$TAG" "$TAG" "$TAG" "$TAG" >"$IN/long_pin"
	[ "$(wc -c <"$IN/long_pin")" -gt 64 ] || kt_fail "the long PIN is not too long"
	# The documents: a canary at each end, so an excerpt from either end
	# is caught; the titles the signer sees.
	printf 'DOC-CANARY-START-%s\nContract 17: the Contractor translates 40 pages for 12 000 KGS.\nDOC-CANARY-END-%s\n' \
		"$TAG" "$TAG" >"$IN/doc"
	printf 'SECRET-CANARY-START-%s\nMedical report of a test patient (test data only).\nSECRET-CANARY-END-%s\n' \
		"$TAG" "$TAG" >"$IN/secret_doc"
	printf '%s' "TITLE-CANARY-$TAG.txt" >"$IN/title"
	printf '%s' "SECRET-TITLE-CANARY-$TAG.txt" >"$IN/secret_title"
	# Known key bytes.
	printf '%s' "$KEY1_HEX" | xxd -r -p >"$IN/key1"
	printf '%s' "$KEY2_HEX" | xxd -r -p >"$IN/key2"
	printf '%s' "$AES_HEX" | xxd -r -p >"$IN/aes"
	printf '%s' "$AES2_HEX" | xxd -r -p >"$IN/aes2"

	# The holder's personal data in the certificates of key1 (issued by
	# the accredited sub-ca: qualified, signs) and key2 (the rogue centre:
	# refused).  ee_person plus a birth place and date of our own.
	{
		cat "$KT_SRCDIR/tests/pki/openssl.cnf"
		cat <<EOF

[ ee_canary ]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, nonRepudiation
extendedKeyUsage = emailProtection
certificatePolicies = 0.4.0.194112.1.2
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always, issuer:always
2.5.29.9 = ASN1:SEQUENCE:sda_canary
1.3.6.1.5.5.7.1.3 = ASN1:SEQUENCE:qcs_esign
[ sda_canary ]
dob = SEQUENCE:sda_canary_dob
pob = SEQUENCE:sda_canary_pob
[ sda_canary_dob ]
type = OID:1.3.6.1.5.5.7.9.1
values = SET:sda_canary_dob_v
[ sda_canary_dob_v ]
v = GENTIME:${BIRTH_DATE}120000Z
[ sda_canary_pob ]
type = OID:1.3.6.1.5.5.7.9.2
values = SET:sda_canary_pob_v
[ sda_canary_pob_v ]
v = UTF8:BIRTHPLACE-CANARY-$TAG
EOF
	} >"$TDIR/canary.cnf"
	local subj="/C=KG/street=STREET-CANARY-$TAG/SN=SURNAME-CANARY-$TAG/GN=GIVEN-CANARY-$TAG"
	subj="$subj/CN=FULLNAME-CANARY-$TAG/serialNumber=PNOKG-CANARY-$TAG"
	local k ca serial
	for k in key1:sub-ca:5a01 key2:rogue-ca:5a02; do
		IFS=: read -r name ca serial <<<"$k"
		local hx
		hx=$(hexof <"$IN/$name")
		printf '30310201010420%sa00a06082a8648ce3d030107' "$hx" | xxd -r -p >"$TDIR/$name.sec1"
		openssl ec -inform DER -in "$TDIR/$name.sec1" -out "$TDIR/$name.pem" 2>/dev/null
		openssl pkey -in "$TDIR/$name.pem" -pubout -out "$TDIR/$name.pub.pem"
		KT_CADIR=$PKI/.ca/$ca OPENSSL_CONF=$TDIR/canary.cnf \
			openssl req -new -utf8 -key "$TDIR/$name.pem" -subj "$subj" -out "$TDIR/$name.req"
		KT_CADIR=$PKI/.ca/$ca OPENSSL_CONF=$TDIR/canary.cnf \
			openssl x509 -req -in "$TDIR/$name.req" -CA "$PKI/$ca.pem" -CAkey "$PKI/$ca.key" \
			-set_serial "0x$serial" -days 730 -sha256 -extfile "$TDIR/canary.cnf" -extensions ee_canary \
			-outform DER -out "$TDIR/$name.der"
	done
	cp "$TDIR/key1.der" "$IN/person.der"
	cp "$TDIR/key2.der" "$IN/rogue.der"
	openssl x509 -inform DER -in "$IN/person.der" -noout -subject -issuer -serial

	# The scripted signer: yes, no, cancel; what it is shown goes to
	# SIGNER_DIR, which the search excludes (the dialog shows the signer
	# the document: that is its job).
	printf 'out=%s/asked\ncode=0\n' "$SIGNER_DIR" >"$SIGNER_DIR/yes.conf"
	printf 'out=%s/asked\ncode=1\n' "$SIGNER_DIR" >"$SIGNER_DIR/no.conf"
	printf 'out=%s/asked\ncode=2\n' "$SIGNER_DIR" >"$SIGNER_DIR/cancel.conf"

	cat >"$KOLTAMGA_CONF" <<EOF
store = $STORE
scrypt_n = 1024
audit_log = $AUDIT
compromise_reports = $TDIR/reports
trust_list = $PKI/trust-list.conf
crl_dir = $PKI/crl
sign_policy = confirm
confirm = command
confirm_program = $KT_SRCDIR/tests/pinentry/fake-confirm.sh
confirm_timeout = 20
[key]
label = seal
sign_policy = automatic
# key2 goes in as CKA_PRIVATE false, which a confirm key (always
# authenticate) cannot be (PKCS#11 4.9)
[key]
label = rogue person
sign_policy = automatic
EOF
	cat "$KOLTAMGA_CONF"

	# The needles: name, class, bytes in hex.
	{
		local f
		for f in so_pin user_pin new_pin bad_pin long_pin; do
			printf '%s\tpin\t%s\n' "$f" "$(hexof <"$IN/$f")"
		done
		for f in DOC-CANARY-START DOC-CANARY-END SECRET-CANARY-START SECRET-CANARY-END \
			TITLE-CANARY SECRET-TITLE-CANARY; do
			printf '%s\tdoc\t%s\n' "$f" "$(printf '%s-%s' "$f" "$TAG" | hexof)"
		done
		printf 'sha256(doc)\tdocdigest\t%s\n' "$(sha256sum "$IN/doc" | cut -d' ' -f1)"
		printf 'sha256(secret_doc)\tsecretdigest\t%s\n' "$(sha256sum "$IN/secret_doc" | cut -d' ' -f1)"
		for f in SURNAME GIVEN FULLNAME STREET BIRTHPLACE; do
			printf '%s\tpersonal\t%s\n' "$f-CANARY" "$(printf '%s-CANARY-%s' "$f" "$TAG" | hexof)"
		done
		printf 'PNOKG-CANARY\tpersonal\t%s\n' "$(printf 'PNOKG-CANARY-%s' "$TAG" | hexof)"
		printf 'birth date\tpersonal\t%s\n' "$(printf '%s' "$BIRTH_DATE" | hexof)"
		printf 'key1\tkey\t%s\n' "$KEY1_HEX"
		printf 'key2\tkey\t%s\n' "$KEY2_HEX"
		printf 'aes\tkey\t%s\n' "$AES_HEX"
		printf 'aes2\tkey\t%s\n' "$AES2_HEX"
	} >"$NEEDLES"
	cut -f1,2 "$NEEDLES" | tr '\t' ' '
}

# The driver under strace, at the highest debug level.
s_run() {
	local rc=0
	# -yy: the path (or socket) behind every fd; -xx: every string byte in
	# hex (nothing is lost to escaping); -s: whole buffers; -v: whole
	# environments.  stdout and stderr are files in RUN.  LeakSanitizer
	# cannot work under ptrace: leak checking is off (the cmocka tests do it).
	# SHELL and HOME are set because the scripted dialog is a bash script,
	# and bash started without either asks getpwuid(), which glibc first
	# tries to answer through nscd's socket: an attempt by the test's own
	# helper, seen on a CI runner whose environment has no SHELL, that would
	# fail no-named-sockets for something the module never did.
	timeout "$KT_STEP_TIMEOUT" strace -f -qq -yy -xx -v -s 1048576 -e signal=none \
		-e trace="$TRACED_SYSCALLS" -o "$TRACE" \
		env HOME="$TDIR/home" SHELL=/bin/sh TMPDIR="$TDIR/tmp" XDG_DATA_HOME="$TDIR/home/data" \
		XDG_STATE_HOME="$TDIR/home/state" KOLTAMGA_CONF="$KOLTAMGA_CONF" \
		KOLTAMGA_DEBUG=all,call,session,object,token,crypto,config,policy \
		KT_FAKE_CONFIRM="$SIGNER_DIR/yes.conf" \
		${KT_PRELOAD:+LD_PRELOAD=$KT_PRELOAD} ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
		"$DRIVER" "$MODULE" "$IN" "$SIGNER_DIR" "$OUT" >"$RUN/driver.out" 2>"$RUN/stderr.txt" </dev/null || rc=$?
	cat "$RUN/driver.out"
	echo "driver exit $rc; trace $(wc -l <"$TRACE") lines; stderr $(wc -l <"$RUN/stderr.txt") lines"
	grep -E '^(FAIL|FATAL)' "$RUN/driver.out" && kt_fail "the driver saw unexpected results"
	kt_grep '^driver: done, 0 failure' "$RUN/driver.out"
	[ "$rc" -eq 0 ] || kt_fail "driver exit $rc"
}

s_signatures() {
	local name pub data n=0
	# The module's public key for key1 is the one of the known scalar.
	openssl pkey -pubin -inform DER -in "$OUT/key1.spki" -out key1.mod.pem
	cmp key1.mod.pem "$TDIR/key1.pub.pem" || kt_fail "key1's public key is not that of the imported scalar"
	while read -r _ name pub data; do
		if [ "$pub" = key1 ]; then
			cp "$TDIR/key1.pub.pem" "$name.pub.pem"
		else
			openssl pkey -pubin -inform DER -in "$OUT/$pub.spki" -out "$name.pub.pem"
		fi
		openssl dgst -sha256 -verify "$name.pub.pem" -signature "$OUT/$name.sig" "$IN/$data" ||
			kt_fail "signature $name does not verify"
		n=$((n + 1))
	done < <(grep '^signature ' "$RUN/driver.out")
	echo "$n signatures verified"
	[ "$n" -eq 10 ] || kt_fail "expected 10 signatures, verified $n"
}

s_decode() {
	perl "$KT_TMP/decode.pl" "$TRACE" "$DEC"
	echo "== destinations written (id kind path calls bytes pids)"
	cat "$DEC/writes.idx"
	echo "== execve"
	cat "$DEC/execs.idx"
	echo "== opened for writing"
	sort -u "$DEC/opened.idx"
	echo "== other"
	cat "$DEC/other.idx"
	[ "$(cat "$DEC/truncated")" = 0 ] || kt_fail "strace cut $(cat "$DEC/truncated") strings short"
	! grep -q '^unparsed' "$DEC/other.idx" || kt_fail "trace lines the decoder did not understand"
}

# Where a path belongs.
category() {
	case $1 in
	"$SIGNER_DIR"/*) echo signer ;;
	/dev/null) echo null ;;
	"$STORE"/*) echo store ;;
	"$AUDIT") echo audit ;;
	"$OUT/planted.txt") echo planted ;;
	"$TDIR/reports"/*) echo report ;;
	*) echo file ;;
	esac
}

# The list of everything to search: "category <tab> path".
make_list() {
	local n kind path _ p
	while IFS=$'\t' read -r n kind path _; do
		if [ "$kind" = ipc ]; then
			printf 'ipc\t%s\n' "$DEC/w/$n.bin"
		else
			printf '%s\t%s\n' "$(category "$path")" "$DEC/w/$n.bin"
		fi
	done <"$DEC/writes.idx"
	# Files as they are at the end: every one opened for writing, and
	# everything in the directories the process may write to.
	{
		cut -f1 "$DEC/opened.idx"
		find "$STORE" "$RUN" "$OUT" "$AUDIT_DIR" "$TDIR/home" "$TDIR/tmp" "$TDIR/reports" -type f
	} | sort -u | while IFS= read -r p; do
		[ -f "$p" ] || continue
		case $p in "$TRACE" | "$RUN/list" | "$RUN/hits") continue ;; esac
		printf '%s\t%s\n' "$(category "$p")" "$p"
	done
	while IFS=$'\t' read -r n _ _ planted _; do
		local c=exec
		[ "$planted" = 1 ] && c='planted-exec'
		printf '%s\t%s\n%s\t%s\n' "$c" "$DEC/x/$n.argv" "$c" "$DEC/x/$n.env"
	done <"$DEC/execs.idx"
}

# Was a hit (category, class) allowed?
allowed() {
	case $1:$2 in
	planted:* | planted-exec:*) return 0 ;;
	signer:* | null:*) return 0 ;; # never scanned (make_list keeps them out)
	audit:docdigest) return 0 ;;    # a non-confidential signature's record
	ipc:pin | ipc:key) return 1 ;;  # not even the dialog gets these
	ipc:*) return 0 ;;              # the request to the dialog
	esac
	return 1
}

s_scan() {
	make_list | grep -Ev '^(signer|null)	' >"$RUN/list"
	echo "searching $(wc -l <"$RUN/list") files and buffers:"
	cut -f1 "$RUN/list" | sort | uniq -c
	perl "$KT_TMP/scan.pl" "$NEEDLES" "$RUN/list" >"$RUN/hits"
	local cat path name class form bad=0
	while IFS=$'\t' read -r cat path name class form; do
		[ "$cat" = report ] && continue # s_compromise_report
		if ! allowed "$cat" "$class"; then
			echo "LEAK: $class canary '$name' ($form) in $cat $path$(describe "$path")"
			bad=1
		fi
	done <"$RUN/hits"
	[ "$bad" = 0 ] || kt_fail "canaries found where they must not be"
	echo "no canary outside where it may be"
}

# For a dump file: what it was.
describe() {
	case $1 in
	"$DEC"/w/*.bin)
		local n=${1##*/}
		n=${n%.bin}
		awk -F'\t' -v n="$n" '$1 == n { printf " (bytes written to %s %s by pid %s)", $2, $3, $6 }' "$DEC/writes.idx"
		;;
	"$DEC"/x/*)
		local n=${1##*/}
		n=${n%.*}
		awk -F'\t' -v n="$n" '$1 == n { printf " (execve of %s by pid %s)", $3, $2 }' "$DEC/execs.idx"
		;;
	esac
}

# The scanner finds what was planted: every needle in the driver's
# planted.txt (as written, and as it is on disk), the planted child's argv
# and environment, a synthetic file with every form of every needle, and
# the driver's own input.
s_controls_scanner() {
	local name class
	while IFS=$'\t' read -r name class _; do
		case $class in
		docdigest) continue ;; # not in planted.txt (the secret one is)
		esac
		grep -qF "planted	$OUT/planted.txt	$name	$class	raw" "$RUN/hits" ||
			kt_fail "the scan missed $name in the planted file"
		awk -F'\t' -v n="$name" '$1 == "planted" && $2 ~ /\/w\/[0-9]+\.bin$/ && $3 == n && $5 == "raw" { f = 1 } END { exit !f }' \
			"$RUN/hits" || kt_fail "the scan missed $name in the bytes written to the planted file"
	done <"$NEEDLES"
	grep -qF "planted	$OUT/planted.txt	sha256(secret_doc)	secretdigest	hex" "$RUN/hits" ||
		kt_fail "the scan missed the hex digest in the planted file"
	awk -F'\t' '$1 == "planted-exec" && $3 == "user_pin" && $2 ~ /\.argv$/ { a = 1 }
		$1 == "planted-exec" && $3 == "DOC-CANARY-START" && $2 ~ /\.env$/ { e = 1 } END { exit !(a && e) }' \
		"$RUN/hits" || kt_fail "the scan missed the canaries in the planted child's argv and environment"

	# Every form of every needle, embedded at odd offsets; the base64 and
	# hex made by coreutils, not by the scanner's own code.
	local hex k pad
	while IFS=$'\t' read -r _ _ hex; do
		for k in 0 1 2; do
			pad=$(head -c "$k" /dev/zero | tr '\0' z)
			printf 'x%s' "$pad"
			printf '%s' "$hex" | xxd -r -p
			printf '\ny%s' "$pad"
			{ printf '%s' "$pad"; printf '%s' "$hex" | xxd -r -p; } | base64 -w0
			printf '\n'
		done
		printf '<%s> <%s>\n' "$(printf '%s' "$hex" | tr 'A-F' 'a-f')" "$(printf '%s' "$hex" | tr 'a-f' 'A-F')"
	done <"$NEEDLES" >synthetic.bin
	printf 'synthetic\t%s\n' "$TDIR/synthetic.bin" >synthetic.list
	perl "$KT_TMP/scan.pl" "$NEEDLES" synthetic.list >synthetic.hits
	local want have
	want=$(($(wc -l <"$NEEDLES") * 6))
	have=$(cut -f3,5 synthetic.hits | sort -u | wc -l)
	[ "$have" -eq "$want" ] || kt_fail "the scan found $have of $want forms in the synthetic file"
	# The driver's own input (never written by it, so not in the search).
	printf 'input\t%s\n' "$IN/key1" "$IN/user_pin" "$IN/person.der" >input.list
	perl "$KT_TMP/scan.pl" "$NEEDLES" input.list >input.hits
	for name in key1 user_pin SURNAME-CANARY BIRTHPLACE-CANARY; do
		grep -qP "\t\Q$name\E\t[a-z]+\traw\$" input.hits || kt_fail "the scan missed $name in the driver's input"
	done
	echo "the scanner finds every planted canary ($have forms in the synthetic file)"
}

# The trace saw the writes that matter, so the search looked at them.
s_controls_trace() {
	local store_writes
	awk -F'\t' -v p="$AUDIT" '$2 == "file" && $3 == p { f = 1 } END { exit !f }' "$DEC/writes.idx" ||
		kt_fail "no write to the audit log in the trace"
	store_writes=$(awk -F'\t' -v p="$STORE/" '$2 == "file" && index($3, p) == 1 { n += $5 } END { print n + 0 }' "$DEC/writes.idx")
	[ "$store_writes" -gt 10000 ] || kt_fail "only $store_writes bytes written to the store in the trace"
	awk -F'\t' -v p="$RUN/stderr.txt" '$2 == "file" && $3 == p && $5 > 1000 { f = 1 } END { exit !f }' "$DEC/writes.idx" ||
		kt_fail "no debug output written to stderr in the trace"
	awk -F'\t' -v p="$KT_SRCDIR/tests/pinentry/fake-confirm.sh" '$3 == p { f = 1 } END { exit !f }' "$DEC/execs.idx" ||
		kt_fail "the confirm program was never executed"
	grep -q "\.ktok-wal	" "$DEC/opened.idx" || kt_fail "no WAL file of the store opened"
	echo "audit log, store ($store_writes bytes), stderr and the confirm program are in the trace"
}

# Nothing went to a named socket or the network (syslog, journald...), even
# an attempt: every byte left through a file, a pipe or the dialog's
# socketpair, and all of those were searched.
s_no_sockets() {
	if [ -s "$DEC/contacts.idx" ]; then
		cat "$DEC/contacts.idx"
		kt_fail "connections to named sockets or the network"
	fi
	echo "no named socket or network address was contacted"
}

# Tracing was at its highest level: every category that the flows reach
# printed something.
s_controls_debug() {
	local c
	for c in call session object crypto config policy; do
		kt_grep "^koltamga\\[$c\\]: " "$RUN/stderr.txt"
	done
	grep -c '^koltamga' "$RUN/stderr.txt"
	# The module's refusal of the rogue certificate is on stderr too.
	kt_grep '^koltamga: signature refused' "$RUN/stderr.txt"
	kt_grep '^koltamga: key marked compromised' "$RUN/stderr.txt"
}

# The scripted signer was shown the documents, titles and holder (so the
# flows ran and the canaries went where they should).
s_controls_signer() {
	local asked=$SIGNER_DIR/asked
	kt_grep "DOC-CANARY-START-$TAG" "$asked"
	kt_grep "DOC-CANARY-END-$TAG" "$asked"
	kt_grep "SECRET-CANARY-START-$TAG" "$asked"
	kt_grep "TITLE-CANARY-$TAG" "$asked"
	kt_grep "SECRET-TITLE-CANARY-$TAG" "$asked"
	kt_grep "SURNAME-CANARY-$TAG|FULLNAME-CANARY-$TAG" "$asked"
	kt_grep 'RESULT: signed' "$asked"
	echo "the signer was asked $(grep -c '^=== confirm' "$asked") times"
	kt_nogrep "PIN-CANARY|NEWPIN-CANARY|BADPIN-CANARY|SOPIN-CANARY" "$asked"
	kt_nogrep "PIN-CANARY|NEWPIN-CANARY|BADPIN-CANARY|SOPIN-CANARY" "$SIGNER_DIR/asked.argv"
	kt_nogrep "PIN-CANARY|NEWPIN-CANARY|BADPIN-CANARY|SOPIN-CANARY" "$SIGNER_DIR/asked.environ"
}

# The audit log: intact, every decision there, and the confidential
# signatures' records without a digest.
s_audit() {
	local audit_tool=$KT_BUILDDIR/tools/koltamga-audit secret_hex doc_hex
	if [ -x "$audit_tool" ]; then
		"$audit_tool" verify "$AUDIT"
	fi
	cat "$AUDIT"
	secret_hex=$(sha256sum "$IN/secret_doc" | cut -d' ' -f1)
	doc_hex=$(sha256sum "$IN/doc" | cut -d' ' -f1)
	kt_nogrep "$secret_hex" "$AUDIT"
	# Positive: the non-confidential signatures of the same kind carry it.
	kt_grep "\"sha256\":\"$doc_hex\"" "$AUDIT"
	local n
	n=$(grep -c '"decision":"signed"' "$AUDIT")
	# 10 signatures the script verifies, one more for C_Verify.
	[ "$n" -eq 11 ] || kt_fail "$n signed records, expected 11"
	kt_grep '"decision":"rejected"' "$AUDIT"
	kt_grep '"decision":"canceled"' "$AUDIT"
	kt_grep '"decision":"refused"' "$AUDIT"
	# The confidential signatures (with the key generated on the token:
	# 676574 is "gen"; with key1: c1): no sha256 key at all.  Their
	# records are the ones whose size is that of the secret document.
	local size
	size=$(wc -c <"$IN/secret_doc")
	n=$(grep -c "\"size\":$size," "$AUDIT" || true)
	[ "$n" -ge 2 ] || kt_fail "only $n records of the confidential document"
	! grep "\"size\":$size," "$AUDIT" | grep -q '"sha256"' || kt_fail "a confidential record has a sha256"
	grep '"mechanism":"CKM_ECDSA"' "$AUDIT" | grep '"size":32,' | grep -q '"decision":"signed"' ||
		kt_fail "no record of the hash-only confidential signature"
	grep '"mechanism":"CKM_ECDSA"' "$AUDIT" | grep '"decision":"signed"' | grep -v '"sha256"' | grep -q . ||
		kt_fail "the hash-only confidential signature's record has a sha256"
	echo "audit log: $(wc -l <"$AUDIT") records; no digest of the confidential document"
}

# The store, on its own: no key bytes, PINs, documents or digests in any
# file of it (final contents and every byte ever written, WAL and temporary
# files included), nor the certificate's personal data (the certificate is
# a private object, sealed).  The search reads the store: it is the SQLite
# database the module wrote, and the scanner finds planted canaries
# (controls-scanner).
s_store() {
	ls -la "$STORE"
	awk -F'\t' '$1 == "store"' "$RUN/hits" >store.hits
	if grep -q . store.hits; then
		cat store.hits
		kt_fail "secrets or personal data in the token store"
	fi
	grep -qa 'SQLite format 3' "$STORE"/* || kt_fail "no SQLite database in the store: does the search see it?"
	# The store as the key scanner sees it, plus key bytes in every form
	# appended: all found (the scanner works on these very files).
	local f
	for f in "$STORE"/*; do
		[ -f "$f" ] || continue
		{ cat "$f"; cat "$IN/key1"; printf '%s' "$KEY2_HEX"; base64 -w0 "$IN/aes"; } >"copy.${f##*/}"
		printf 'copy\t%s\n' "$TDIR/copy.${f##*/}"
	done >copy.list
	perl "$KT_TMP/scan.pl" "$NEEDLES" copy.list >copy.hits
	for f in key1:raw key2:hex aes:base64/0; do
		grep -qP "\t\Q${f%%:*}\E\tkey\t\Q${f#*:}\E\$" copy.hits || kt_fail "planted ${f%%:*} not found in a store copy"
	done
	echo "no key bytes, PIN, document or digest in the store ($(find "$STORE" -type f | wc -l) files)"
}

# The key compromise report (module/policy/compromise.c) is a file outside
# the token store like any other: no PIN, document, digest, key bytes, and
# no personal data of the certificate either (issue 5: "every file the
# process wrote").  The certification centre finds the certificate by the
# issuer and serial number the report carries, as the audit log does
# (docs/audit.md, "What is never recorded").
s_compromise_report() {
	local f n=0 cat path name class form bad=0
	for f in "$TDIR/reports"/compromise-*.txt; do
		[ -f "$f" ] || continue
		n=$((n + 1))
		cat "$f"
		kt_grep '^koltamga key compromise report$' "$f"
		kt_grep '^certificate serial: (0x)?5[aA]02$' "$f"
		kt_grep '^certificate issuer: .*Rogue CA' "$f"
	done
	[ "$n" -eq 1 ] || kt_fail "$n compromise reports, expected 1"
	while IFS=$'\t' read -r cat path name class form; do
		[ "$cat" = report ] || continue
		echo "LEAK: $class canary '$name' ($form) in the compromise report $path$(describe "$path")"
		bad=1
	done <"$RUN/hits"
	[ "$bad" = 0 ] || kt_fail "canaries in the key compromise report"
	echo "the compromise report names the certificate by issuer and serial only"
}

scenario() {
	IN=$TDIR/in
	SIGNER_DIR=$TDIR/signer # excluded from the search: the dialog's own records
	OUT=$TDIR/out
	RUN=$TDIR/run
	AUDIT_DIR=$TDIR/audit
	AUDIT=$AUDIT_DIR/audit.log
	STORE=$TDIR/store
	TRACE=$TDIR/trace.txt
	DEC=$TDIR/decoded
	NEEDLES=$TDIR/needles.tsv
	BIRTH_DATE=19420917
	KEY1_HEX=4b1e2a3c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7a1
	KEY2_HEX=7c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9fa0b
	AES_HEX=a5c3e1f2d4b60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a
	AES2_HEX=0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff1
	mkdir -p "$DEC"
	kt_step -c setup s_setup
	kt_step -c run s_run
	kt_step signatures-verify s_signatures
	kt_step -c decode-trace s_decode
	kt_step scan s_scan
	kt_step no-named-sockets s_no_sockets
	kt_step controls-scanner s_controls_scanner
	kt_step controls-trace s_controls_trace
	kt_step controls-debug-on s_controls_debug
	kt_step controls-signer-saw-documents s_controls_signer
	kt_step audit-log s_audit
	kt_step store-sealed s_store
	kt_step compromise-report s_compromise_report
}

write_perl
mkdir -p "$PKI"
sh "$KT_SRCDIR/tests/pki/gen.sh" "$PKI" >/dev/null 2>&1 || { echo "FAIL: tests/pki/gen.sh"; exit 1; }
kt_for_each_target scenario
kt_finish
