#!/usr/bin/env bash
# The module out of the application's process: `p11-kit server` (p11-kit
# 0.24) serves the token; the clients load p11-kit-client.so (or name the
# socket in a p11-kit `remote:` module config) and never load the module.
# docs/p11kit-server.md is the text this test checks.
#
# The server's environment carries KOLTAMGA_CONF (temp store, scrypt_n =
# 1024, max_pin_tries = 3, sign_policy = confirm, confirm = command with the
# scripted signer tests/pinentry/fake-confirm.sh, an automatic "seal" key)
# and KT_FAKE_CONFIRM; every client runs with both removed.  Checked:
#   - pkcs11-tool through p11-kit-client.so initialises the token, sets the
#     PINs, generates keys, lists mechanisms (what p11-kit's RPC carries);
#   - the seal signs without a question; the person's key asks the SERVER's
#     confirmation program (its out file, its environment), yes -> the
#     signature verifies with openssl, no -> CKR_FUNCTION_REJECTED (0x200;
#     pkcs11-tool 0.23 prints "unknown PKCS11 error (0x200)"), cancel ->
#     CKR_FUNCTION_CANCELED; the client's environment and argv never name the
#     configuration or the signer's program;
#   - the secret attributes of private keys are refused through the RPC (a
#     small C probe compiled here: pkcs11-tool 0.23 --read-object refuses
#     private keys itself and never asks the token);
#   - the client never opens the store or the configuration (strace);
#   - as root: a client running as `nobody` uses the token through a second
#     server (-u nobody) but cannot read the store files, and finds the server
#     through a p11-kit `remote:` module config in its own HOME;
#   - wrong PINs from separate client processes (pkcs11-tool, p11tool) count
#     together in the server's token and lock it at max_pin_tries.
#
# koltamga-device leg (lib.sh): the server's koltamga has no store and one
# [token] on SoftHSM2 as the device (the server's environment has both
# configurations); the client must open neither configuration, the device's
# token directory, nor either module, and the PIN lockout is the device's own
# rule (SoftHSM2 never locks: N/A once wrong PINs are seen refused).
#
# SoftHSM2 reference leg: p11-kit server serves SoftHSM just as well, so the
# same scenario runs on it (SOFTHSM2_CONF in the server's environment only).
# It keeps the p11-kit side honest: what the RPC drops or passes is the same
# for both tokens.  The confirmation steps do not apply to it, and SoftHSM
# 2.6.1 never locks a PIN (a known limitation).
#
# Every server this script starts is recorded in $KT_TMP/servers/*.pid and
# stopped by PID from the EXIT trap, whatever happened; the connection
# processes it forked (p11-kit-remote) are stopped by their PIDs too.  Each
# server also exits by itself after 120 s without connections (-t).
set -eu
. "$(dirname "$0")/lib.sh"

kt_need_tools p11-kit pkcs11-tool p11tool openssl timeout strace cc pkg-config

LABEL=kt-p11kit
KT_SRCDIR=${KOLTAMGA_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
FAKE_CONFIRM=$(cd "$KT_SRCDIR" && pwd)/tests/pinentry/fake-confirm.sh
P11KIT_MODDIR=$(pkg-config --variable=p11_module_path p11-kit-1 2>/dev/null || true)
P11KIT_CLIENT=${P11KIT_CLIENT:-${P11KIT_MODDIR:-/usr/lib/x86_64-linux-gnu/pkcs11}/p11-kit-client.so}
[ -f "$P11KIT_CLIENT" ] || kt_missing "p11-kit-client.so not found at $P11KIT_CLIENT (package p11-kit-modules)"
SERVERS=$KT_TMP/servers
mkdir -p "$SERVERS"

# --- servers ---------------------------------------------------------------
# stop_server PIDFILE: SIGTERM the server and the connection processes it
# forked, by PID (after checking the PID is still that server), then SIGKILL
# what is left after 2 s.
stop_server() {
	local pid kids
	pid=$(cat "$1" 2>/dev/null) || return 0
	rm -f "$1"
	[ -n "$pid" ] || return 0
	case $(readlink "/proc/$pid/exe" 2>/dev/null) in
	*/p11-kit-server | */p11-kit) ;;
	*) return 0 ;; # gone (or the PID is no longer ours)
	esac
	kids=$(ps -o pid= --ppid "$pid" 2>/dev/null | tr -d ' ' || true)
	# shellcheck disable=SC2086
	kill -TERM "$pid" $kids 2>/dev/null || true
	for _ in $(seq 40); do
		kill -0 "$pid" 2>/dev/null || break
		# A zombie (exited, not yet reaped by its parent) is gone too.
		[ "$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null)" != Z ] || break
		sleep 0.05
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}
stop_servers() {
	local f
	for f in "$SERVERS"/*.pid; do
		[ -e "$f" ] && stop_server "$f"
	done
	return 0
}
trap 'stop_servers; kt_cleanup' EXIT

# start_server NAME SOCKET [p11-kit server options...]: serve $MODULE's
# tokens ($TOKEN_URI) on SOCKET, in the foreground, in the background of this
# shell; the PID goes to $SERVERS/$TARGET-NAME.pid, the output to
# $TDIR/NAME.out and .err.  The server's environment: the token's
# configuration, the scripted signer, a private XDG_RUNTIME_DIR.  An ASan
# build of the module needs the sanitizer runtime in the server (the module
# runs there, in p11-kit-remote), never in the clients.
start_server() {
	local name=$1 sock=$2 pid
	shift 2
	mkdir -p "$TDIR/xdg-run"
	chmod 700 "$TDIR/xdg-run"
	local -a envs=(XDG_RUNTIME_DIR="$TDIR/xdg-run" KT_FAKE_CONFIRM="$TDIR/fake-confirm.conf")
	case $TARGET in
	koltamga) envs+=(KOLTAMGA_CONF="$KOLTAMGA_CONF") ;;
	koltamga-device) envs+=(KOLTAMGA_CONF="$KOLTAMGA_CONF" SOFTHSM2_CONF="$SOFTHSM2_CONF") ;;
	softhsm) envs+=(SOFTHSM2_CONF="$SOFTHSM2_CONF") ;;
	esac
	if [ -n "${KT_PRELOAD:-}" ]; then
		envs+=(LD_PRELOAD="$KT_PRELOAD" ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0")
	fi
	env "${envs[@]}" p11-kit server -f -t 120 -n "$sock" --provider "$MODULE" "$@" "$TOKEN_URI" \
		</dev/null >"$TDIR/$name.out" 2>"$TDIR/$name.err" &
	pid=$!
	echo "$pid" >"$SERVERS/$TARGET-$name.pid"
	for _ in $(seq 100); do
		[ -S "$sock" ] && return 0
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	echo "server $name did not come up" >&2
	cat "$TDIR/$name.out" "$TDIR/$name.err" >&2
	return 1
}

# --- clients -----------------------------------------------------------------
# cl CMD...: a client: no stdin, a timeout, the server's address, and neither
# the token's configuration nor the scripted signer in its environment.
cl() {
	timeout "$KT_STEP_TIMEOUT" env -u KOLTAMGA_CONF -u SOFTHSM2_CONF -u KT_FAKE_CONFIRM \
		-u LD_PRELOAD P11_KIT_SERVER_ADDRESS="$ADDR" "$@" </dev/null
}
pt() { cl pkcs11-tool --module "$P11KIT_CLIENT" "$@"; }
ptl() { pt --token-label "$LABEL" "$@"; }
# The module loaded directly (the administrator's view, on the server side).
direct() { kt_client pkcs11-tool --module "$MODULE" "$@"; }

on_koltamga() { kt_on_koltamga; }
confirm_only() { on_koltamga || kt_na "SoftHSM2 has no signing confirmation"; }

# answer, questions, notices, expect_questions, audit_count, audit_new: lib.sh.
expect_audit() { # N DECISION KEY_ID
	[ "$(wc -l <new.audit)" = "$1" ] || kt_fail "expected $1 new audit record(s), got $(wc -l <new.audit)"
	[ "$(grep -c "\"key_id\":\"$3\".*\"decision\":\"$2\"" new.audit)" = "$1" ] ||
		kt_fail "audit: expected $1 x decision $2 for key $3"
	# The module names the application behind the connection process
	# (the socket's peer credentials; docs/p11kit-server.md).
	[ "$(grep -c '"program":"[^"]*/pkcs11-tool (through p11-kit-remote)"' new.audit)" = "$1" ] ||
		kt_fail "audit: the calling program is not pkcs11-tool through p11-kit-remote"
}

# pub_pem ID OUT.pem: the RSA public key, exported through the client.
pub_pem() {
	ptl --read-object --type pubkey --id "$1" -o "pub-$1.der"
	kt_spki_pem "pub-$1.der" "$2"
}

# The store the server's token lives in (the client must never touch it):
# koltamga's files, or the device's (SoftHSM2's token directory).
store_dir() { if [ "$TARGET" = koltamga ]; then echo "$TDIR/store"; else echo "$TDIR/tokens"; fi; }
# The configuration files the server's token reads.
conf_files() {
	on_koltamga && echo "$KOLTAMGA_CONF"
	[ "$TARGET" = koltamga ] || echo "$SOFTHSM2_CONF"
}

strace_usable() {
	strace -o /dev/null true >/dev/null 2>&1 && return 0
	[ -n "${CI:-}" ] && kt_fail "strace cannot trace here (ptrace not permitted?); with CI set this is a failure"
	kt_na "strace cannot trace here (ptrace not permitted)"
}

# --- the secret-attribute probe ---------------------------------------------
# pkcs11-tool 0.23 --read-object --type privkey stops with "reading private
# keys not (yet) supported" before it asks the token, so it proves nothing
# about the module.  This asks for CKA_VALUE and the RSA CRT components of
# every private key, once as a length query and once with a buffer.
PROBE=$KT_TMP/attr-probe
cat >"$KT_TMP/attr-probe.c" <<'EOF'
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <p11-kit/pkcs11.h>

int main(int argc, char **argv)
{
	CK_C_GetFunctionList gfl;
	CK_FUNCTION_LIST_PTR f;
	CK_SLOT_ID slots[64], slot = (CK_SLOT_ID)-1;
	CK_ULONG ns = 64, nk = 0, i;
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE keys[32];
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE q = { CKA_CLASS, &cls, sizeof cls };
	CK_RV rv;
	int leaked = 0;
	static const struct { CK_ATTRIBUTE_TYPE t; const char *n; } secret[] = {
		{ CKA_VALUE, "CKA_VALUE" }, { CKA_PRIVATE_EXPONENT, "CKA_PRIVATE_EXPONENT" },
		{ CKA_PRIME_1, "CKA_PRIME_1" }, { CKA_PRIME_2, "CKA_PRIME_2" },
		{ CKA_EXPONENT_1, "CKA_EXPONENT_1" }, { CKA_EXPONENT_2, "CKA_EXPONENT_2" },
		{ CKA_COEFFICIENT, "CKA_COEFFICIENT" },
	};
	void *h;

	if (argc != 4) {
		fprintf(stderr, "usage: %s MODULE TOKEN-LABEL PIN\n", argv[0]);
		return 2;
	}
	h = dlopen(argv[1], RTLD_NOW);
	gfl = h ? (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList") : NULL;
	if (!gfl || gfl(&f) != CKR_OK || f->C_Initialize(NULL) != CKR_OK) {
		fprintf(stderr, "cannot load and initialise %s\n", argv[1]);
		return 2;
	}
	f->C_GetSlotList(CK_TRUE, slots, &ns);
	for (i = 0; i < ns; i++) {
		CK_TOKEN_INFO ti;
		char label[33];
		int k;
		if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
			continue;
		memcpy(label, ti.label, 32);
		label[32] = 0;
		for (k = 31; k >= 0 && label[k] == ' '; k--)
			label[k] = 0;
		if (strcmp(label, argv[2]) == 0)
			slot = slots[i];
	}
	if (slot == (CK_SLOT_ID)-1) {
		fprintf(stderr, "no token labelled %s\n", argv[2]);
		return 2;
	}
	rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
	if (rv == CKR_OK)
		rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)argv[3], strlen(argv[3]));
	if (rv != CKR_OK) {
		fprintf(stderr, "C_OpenSession/C_Login: rv 0x%lx\n", (unsigned long)rv);
		return 2;
	}
	f->C_FindObjectsInit(s, &q, 1);
	f->C_FindObjects(s, keys, 32, &nk);
	f->C_FindObjectsFinal(s);
	printf("private keys: %lu\n", (unsigned long)nk);
	for (i = 0; i < nk; i++) {
		char label[65] = "";
		CK_BBOOL sens = 0, extr = 1;
		CK_ATTRIBUTE a[3] = { { CKA_LABEL, label, 64 }, { CKA_SENSITIVE, &sens, 1 },
				      { CKA_EXTRACTABLE, &extr, 1 } };
		size_t j;
		f->C_GetAttributeValue(s, keys[i], a, 3);
		if (a[0].ulValueLen < 65)
			label[a[0].ulValueLen] = 0;
		printf("key %s: CKA_SENSITIVE=%d CKA_EXTRACTABLE=%d\n", label, sens, extr);
		for (j = 0; j < sizeof secret / sizeof secret[0]; j++) {
			CK_ATTRIBUTE one = { secret[j].t, NULL, 0 };
			unsigned char buf[8192];
			unsigned long len1;
			CK_RV r1, r2;
			int written = 0;
			size_t k;
			r1 = f->C_GetAttributeValue(s, keys[i], &one, 1);
			len1 = one.ulValueLen;
			memset(buf, 0, sizeof buf);
			one.pValue = buf;
			one.ulValueLen = sizeof buf;
			r2 = f->C_GetAttributeValue(s, keys[i], &one, 1);
			for (k = 0; k < sizeof buf; k++)
				written |= buf[k];
			printf("  %s: length query rv 0x%lx len %s; with buffer rv 0x%lx len %s%s\n",
			       secret[j].n, (unsigned long)r1,
			       len1 == CK_UNAVAILABLE_INFORMATION ? "unavailable" : "GIVEN",
			       (unsigned long)r2,
			       one.ulValueLen == CK_UNAVAILABLE_INFORMATION ? "unavailable" : "GIVEN",
			       written ? ", BYTES WRITTEN" : "");
			if (r1 == CKR_OK || r2 == CKR_OK || len1 != CK_UNAVAILABLE_INFORMATION ||
			    one.ulValueLen != CK_UNAVAILABLE_INFORMATION || written)
				leaked = 1;
		}
	}
	f->C_Logout(s);
	f->C_CloseSession(s);
	f->C_Finalize(NULL);
	printf("%s\n", leaked ? "A SECRET ATTRIBUTE WAS RETURNED" : "no secret attribute returned");
	return leaked;
}
EOF
# shellcheck disable=SC2046
cc -Wall -o "$PROBE" $(pkg-config --cflags p11-kit-1) "$KT_TMP/attr-probe.c" -ldl >"$KT_TMP/attr-probe.log" 2>&1 ||
	: # the private-key step reports it

# --- steps -------------------------------------------------------------------
s_server_up() {
	cat "$TDIR/server.out" "$TDIR/server.err"
	[ -S "$SOCK" ] || kt_fail "no socket at $SOCK"
	# Only the owner may connect: connect(2) needs write permission.
	ls -l "$SOCK"
	[ -z "$(find "$SOCK" -perm /022)" ] || kt_fail "socket writable by group or others"
	# p11-kit 0.24 prints the address and its PID even with -f.
	if grep -q '^P11_KIT_SERVER_ADDRESS=' "$TDIR/server.out"; then
		kt_grep "^P11_KIT_SERVER_ADDRESS=$ADDR; export P11_KIT_SERVER_ADDRESS;\$" "$TDIR/server.out"
		kt_grep "^P11_KIT_SERVER_PID=$(cat "$SERVERS/$TARGET-server.pid"); " "$TDIR/server.out"
	fi
	pt --list-token-slots >slots.txt
	cat slots.txt
	kt_grep '^Slot 0 ' slots.txt
}

s_init_token() {
	pt --init-token --so-pin "$SO_PIN" --label "$LABEL"
	ptl --login --login-type so --so-pin "$SO_PIN" --init-pin --pin "$USER_PIN"
	pt --list-token-slots >slots.txt
	cat slots.txt
	kt_grep "token label +: $LABEL\$" slots.txt
	kt_grep 'PIN initialized' slots.txt
}

# What the client is offered, against what the module offers when loaded
# directly: p11-kit 0.24's RPC passes only mechanisms whose parameters it
# knows how to carry.
s_mechanisms() {
	ptl --list-mechanisms >client.txt
	direct --token-label "$LABEL" --list-mechanisms >direct.txt
	cat client.txt
	local m
	for m in RSA-PKCS-KEY-PAIR-GEN RSA-PKCS SHA256-RSA-PKCS; do
		grep -Eq "^  $m(,|\$)" client.txt || kt_fail "mechanism $m not offered through the server"
	done
	echo "offered by the module but not through p11-kit's RPC:"
	awk -F, '/^  / { print $1 }' direct.txt | sort >d.txt
	awk -F, '/^  / { print $1 }' client.txt | sort >c.txt
	comm -23 d.txt c.txt | sed 's/^ */  /'
	[ -z "$(comm -13 d.txt c.txt)" ] || kt_fail "the client lists mechanisms the module does not"
}

s_keygen() {
	ptl --login --pin "$USER_PIN" --keypairgen --key-type rsa:2048 --id 01 --label seal
	ptl --login --pin "$USER_PIN" --keypairgen --key-type rsa:2048 --id 02 --label signer
	# Only for its CKA_VALUE (private-value-refused): RSA keys have none.
	ptl --login --pin "$USER_PIN" --keypairgen --key-type EC:prime256v1 --id 03 --label ec-key
	ptl --login --pin "$USER_PIN" --list-objects --type privkey >keys.txt
	cat keys.txt
	[ "$(grep -c '^Private Key Object; RSA' keys.txt)" = 2 ] || kt_fail "expected 2 private RSA keys"
	[ "$(grep -c '^Private Key Object; EC' keys.txt)" = 1 ] || kt_fail "expected 1 private EC key"
	if on_koltamga; then
		# The policy shows as CKA_ALWAYS_AUTHENTICATE on the person's key only.
		awk '/label:/ { l = $2 } /Access:/ { print l ": " $0 }' keys.txt >access.txt
		kt_grep '^signer: .*always authenticate' access.txt
		kt_nogrep '^seal: .*always authenticate' access.txt
	fi
}

s_sign_seal() {
	local n0
	answer 1 # a question would be refused
	n0=$(audit_count)
	kt_doc doc.txt
	ptl --login --pin "$USER_PIN" --sign --mechanism SHA256-RSA-PKCS --id 01 -i doc.txt -o seal.sig
	pub_pem 01 seal.pub.pem
	openssl dgst -sha256 -verify seal.pub.pem -signature seal.sig doc.txt
	if on_koltamga; then
		expect_questions 0 0
		audit_new "$n0"
		expect_audit 1 signed 01
	fi
}

s_confirm_yes() {
	confirm_only
	local n0 client_pid want
	answer 0
	n0=$(audit_count)
	kt_doc doc.txt
	# The client records its own environment and argv, then becomes
	# pkcs11-tool (exec keeps both).
	cl sh -c 'tr "\0" "\n" </proc/$$/environ >client.environ; printf "%s\n" "$$" "$@" >client.argv; exec "$@"' \
		sh pkcs11-tool --module "$P11KIT_CLIENT" --token-label "$LABEL" --login --pin "$USER_PIN" \
		--sign --mechanism SHA256-RSA-PKCS --id 02 -i doc.txt -o signer.sig >sign.txt 2>&1
	cat sign.txt
	pub_pem 02 signer.pub.pem
	openssl dgst -sha256 -verify signer.pub.pem -signature signer.sig doc.txt
	expect_questions 1 1
	cat "$TDIR/fc.out"
	# The question, asked by the program the server runs.
	want=$(openssl dgst -sha256 -r doc.txt | cut -d' ' -f1)
	kt_grep "^SHA-256: $want\$" "$TDIR/fc.out"
	kt_grep '^Mechanism: CKM_SHA256_RSA_PKCS$' "$TDIR/fc.out"
	kt_grep '^Income: 1000 KGS$' "$TDIR/fc.out"
	# The application and its pid (the shell above exec'd it: same pid).
	client_pid=$(head -n 1 client.argv)
	kt_grep "^Requested by: [^ ]*/pkcs11-tool \\(through p11-kit-remote\\) \\(pid $client_pid\\)\$" "$TDIR/fc.out"
	kt_grep '^RESULT: signed$' "$TDIR/fc.out"
	# Its environment is the server's; the client's has neither variable.
	kt_grep "^KOLTAMGA_CONF=$KOLTAMGA_CONF\$" "$TDIR/fc.out.environ"
	kt_grep '^KT_FAKE_CONFIRM=' "$TDIR/fc.out.environ"
	kt_grep '^P11_KIT_SERVER_ADDRESS=' client.environ
	kt_nogrep 'KOLTAMGA_CONF|KT_FAKE_CONFIRM' client.environ
	kt_nogrep 'KOLTAMGA_CONF|KT_FAKE_CONFIRM|koltamga\.conf|fake-confirm' client.argv
	audit_new "$n0"
	expect_audit 1 signed 02
}

# refuse CODE CKR-PATTERN DECISION: the signer does not say yes.  pkcs11-tool
# 0.23 retries a failed C_Sign as C_SignUpdate + C_SignFinal, so the signer
# is asked twice (the same happens with the module loaded directly).
refuse() {
	confirm_only
	local n0 rc=0
	answer "$1"
	n0=$(audit_count)
	kt_doc doc.txt
	rm -f refused.sig
	ptl --login --pin "$USER_PIN" --sign --mechanism SHA256-RSA-PKCS --id 02 -i doc.txt -o refused.sig \
		>out.txt 2>&1 || rc=$?
	cat out.txt
	[ "$rc" -ne 0 ] || kt_fail "pkcs11-tool signed although the signer said no"
	[ "$rc" -lt 124 ] || kt_fail "pkcs11-tool timed out or crashed (exit $rc)"
	kt_grep "$2" out.txt
	[ ! -s refused.sig ] || kt_fail "a signature was written"
	expect_questions 2 0
	# The module's own message goes to the server's stderr, not the client's.
	kt_nogrep '^koltamga:' out.txt
	audit_new "$n0"
	expect_audit 2 "$3" 02
}
s_confirm_no() {
	refuse 1 'C_Sign(Final)? failed: rv = (CKR_FUNCTION_REJECTED|unknown PKCS11 error) \(0x200\)' rejected
	kt_grep 'koltamga: signature rejected' "$TDIR/server.err"
}
s_confirm_cancel() {
	refuse 2 'C_Sign(Final)? failed: rv = CKR_FUNCTION_CANCELED \(0x50\)' canceled
}

s_private_value() {
	rm -f priv.der
	ptl --login --pin "$USER_PIN" --read-object --type privkey --id 01 -o priv.der >read.txt 2>&1 || true
	cat read.txt
	[ ! -s priv.der ] || kt_fail "pkcs11-tool wrote a private key"
	[ -x "$PROBE" ] || { cat "$KT_TMP/attr-probe.log"; kt_fail "the probe did not compile"; }
	cl "$PROBE" "$P11KIT_CLIENT" "$LABEL" "$USER_PIN" >probe.txt 2>&1 || { cat probe.txt; kt_fail "probe failed"; }
	cat probe.txt
	kt_grep '^private keys: 3$' probe.txt
	kt_grep '^no secret attribute returned$' probe.txt
	# The EC key's CKA_VALUE (its private scalar): CKR_ATTRIBUTE_SENSITIVE.
	awk '/^key / { k = $2 } /CKA_VALUE:/ { print k $0 }' probe.txt >value.txt
	kt_grep '^ec-key:  CKA_VALUE: length query rv 0x11 len unavailable; with buffer rv 0x11 len unavailable$' value.txt
	kt_nogrep 'CKA_SENSITIVE=0|CKA_EXTRACTABLE=1' probe.txt
}

# The client's every file system call and connect, traced: it reaches the
# token through the socket only.
s_no_store_access() {
	strace_usable
	local store conf f
	local -a files
	store=$(store_dir)
	# What only the server may open: the store, the configuration, the
	# module (and on koltamga-device the device's module too).
	files=("$store" "$MODULE")
	while IFS= read -r conf; do files+=("$conf"); done < <(conf_files)
	[ "$KT_DEVICE" = 1 ] && files+=("$SOFTHSM_MODULE")
	kt_doc doc.txt
	answer 1
	cl strace -f -s 1024 -e trace=%file,connect -o list.strace \
		pkcs11-tool --module "$P11KIT_CLIENT" --token-label "$LABEL" --login --pin "$USER_PIN" --list-objects >/dev/null
	cl strace -f -s 1024 -e trace=%file,connect -o sign.strace \
		pkcs11-tool --module "$P11KIT_CLIENT" --token-label "$LABEL" --login --pin "$USER_PIN" \
		--sign --mechanism SHA256-RSA-PKCS --id 01 -i doc.txt -o traced.sig
	openssl dgst -sha256 -verify seal.pub.pem -signature traced.sig doc.txt
	cat list.strace sign.strace >all.strace
	echo "traced $(wc -l <all.strace) calls; the token's:"
	printf '  %s\n' "${files[@]}"
	for f in "${files[@]}"; do grep -F -e "$f" all.strace || true; done
	kt_grep 'p11-kit-client\.so' all.strace
	kt_grep "connect\\(.*sun_path=\"$SOCK\"" all.strace
	for f in "${files[@]}"; do kt_nogrep "$f" all.strace; done
	kt_nogrep 'fake-confirm' all.strace
	# The server's processes did open the store.
	[ -n "$(ls -A "$store")" ] || kt_fail "the store is empty"
}

# A client running as another user (nobody) than the server (root): the
# separation that also keeps the store files out of the application's reach.
s_other_user() {
	[ "$(id -u)" = 0 ] || kt_na "needs root to run the client as another user"
	command -v runuser >/dev/null 2>&1 || kt_na "runuser missing"
	if ! id nobody >/dev/null 2>&1 || ! getent group nogroup >/dev/null; then
		kt_na "no user nobody / group nogroup"
	fi
	local sock2=$TDIR/run-other/pkcs11 nb=$TDIR/nobody f n=0 rc
	chmod 711 "$KT_TMP" "$TDIR"
	mkdir -p "$TDIR/run-other" "$nb/home/.config/pkcs11/modules"
	chmod 711 "$TDIR/run-other"
	# The application's own p11-kit configuration: the server's socket as a
	# module (no p11-kit-client.so, no variable).  p11-kit reads it for
	# non-root users only.
	printf 'remote: unix:path=%s\n' "$sock2" >"$nb/home/.config/pkcs11/modules/kt-remote.module"
	kt_doc "$nb/doc.txt"
	chown -R nobody:nogroup "$nb"
	start_server server-other "$sock2" -u nobody -g nogroup
	cat "$TDIR/server-other.out"
	ls -l "$sock2"
	nob() { timeout "$KT_STEP_TIMEOUT" runuser -u nobody -- env -i PATH=/usr/bin:/bin HOME="$nb/home" "$@" </dev/null; }
	nob p11tool --list-tokens >tokens.txt 2>&1 || true
	cat tokens.txt
	kt_grep "URL: pkcs11:.*token=$LABEL\$" tokens.txt
	nob env P11_KIT_SERVER_ADDRESS="unix:path=$sock2" pkcs11-tool --module "$P11KIT_CLIENT" \
		--token-label "$LABEL" --login --pin "$USER_PIN" --sign --mechanism SHA256-RSA-PKCS --id 01 \
		-i "$nb/doc.txt" -o "$nb/seal.sig"
	openssl dgst -sha256 -verify seal.pub.pem -signature "$nb/seal.sig" "$nb/doc.txt"
	# The store's files exist and nobody cannot read one.
	while IFS= read -r f; do
		n=$((n + 1))
		rc=0
		nob cat "$f" >/dev/null 2>>denied.txt || rc=$?
		[ "$rc" -ne 0 ] || kt_fail "nobody read $f"
	done < <(find "$(store_dir)" -type f)
	cat denied.txt
	[ "$n" -gt 0 ] || kt_fail "no store files"
	kt_grep 'Permission denied' denied.txt
	# The server serves that user only: root is turned away.
	P11_KIT_SERVER_ADDRESS="unix:path=$sock2" timeout "$KT_STEP_TIMEOUT" \
		env -u KOLTAMGA_CONF -u SOFTHSM2_CONF pkcs11-tool --module "$P11KIT_CLIENT" -L >root.txt 2>&1 </dev/null || true
	cat root.txt
	kt_nogrep "$LABEL" root.txt
	stop_server "$SERVERS/$TARGET-server-other.pid"
	cat "$TDIR/server-other.err"
	kt_grep "connecting uid \\(0\\) doesn't match expected" "$TDIR/server-other.err"
}

# Wrong PINs from separate client processes, and two programs, count
# together: the counter is in the server's token.  max_pin_tries = 3.  On
# koltamga-device the device's own PIN rules apply (koltamga keeps no counter
# for it; SoftHSM2 never locks): every wrong PIN must still be refused through
# the server and the right one work after them, and the lockout does not apply.
s_pin_lockout() {
	local rc=0
	ptl --login --pin "$BAD_PIN" --list-objects >try1.txt 2>&1 || true
	cat try1.txt
	kt_grep 'CKR_PIN_INCORRECT' try1.txt
	pt --list-token-slots >slots1.txt
	grep 'token flags' slots1.txt
	if [ "$TARGET" = koltamga ]; then kt_grep 'token flags.*user PIN count low' slots1.txt; fi
	cl p11tool --batch --provider "$P11KIT_CLIENT" --login --set-pin "$BAD_PIN" \
		--list-privkeys "pkcs11:token=$LABEL" >try2.txt 2>&1 || rc=$?
	cat try2.txt
	if [ "$rc" -eq 0 ] || [ "$rc" -ge 124 ]; then
		kt_fail "p11tool with a wrong PIN: exit $rc"
	fi
	kt_grep 'Wrong PIN' try2.txt
	pt --list-token-slots >slots2.txt
	grep 'token flags' slots2.txt
	if [ "$TARGET" = koltamga ]; then kt_grep 'token flags.*final user PIN try' slots2.txt; fi
	ptl --login --pin "$BAD_PIN" --list-objects >try3.txt 2>&1 || true
	cat try3.txt
	ptl --login --pin "$USER_PIN" --list-objects >right.txt 2>&1 || true
	cat right.txt
	if [ "$KT_DEVICE" = 1 ]; then
		kt_grep 'CKR_PIN_INCORRECT' try3.txt
		kt_grep '^Private Key Object' right.txt
		pt --list-token-slots >slots.txt
		cat slots.txt
		kt_nogrep 'user PIN locked' slots.txt
		kt_na "the device's own PIN rules apply, not koltamga's max_pin_tries (SoftHSM2 never locks a PIN)"
	fi
	if grep -q '^Private Key Object' right.txt; then
		on_koltamga && kt_fail "the right PIN still works after max_pin_tries wrong ones"
		kt_known "the user PIN never locks (SoftHSM 2.6.1 counts no wrong PINs)"
	fi
	# koltamga answers the wrong PIN that locks the token with CKR_PIN_LOCKED.
	kt_grep 'CKR_PIN_LOCKED' try3.txt
	kt_grep 'CKR_PIN_LOCKED' right.txt
	# Not p11tool --list-tokens: GnuTLS 3.7.9 never prints the locked flag
	# (it tests the final-try flag twice).
	pt --list-token-slots >slots.txt
	cat slots.txt
	kt_grep 'token flags.*user PIN locked' slots.txt
	# The SO unlocks it through the server.
	ptl --login --login-type so --so-pin "$SO_PIN" --init-pin --pin "$NEW_PIN"
	ptl --login --pin "$NEW_PIN" --list-objects >unlocked.txt
	kt_grep '^Private Key Object' unlocked.txt
	pt --list-token-slots >slots.txt
	kt_nogrep 'user PIN locked' slots.txt
}

s_server_log() {
	cat "$TDIR/server.err"
	kt_nogrep 'ERROR: (Address|Leak)Sanitizer|runtime error:|died with' "$TDIR/server.err"
	stop_server "$SERVERS/$TARGET-server.pid"
	[ ! -e "$SOCK" ] || kt_fail "the socket outlived the server"
}

scenario() {
	SOCK=$TDIR/run/pkcs11
	ADDR=unix:path=$SOCK
	mkdir -p "$TDIR/run"
	chmod 700 "$TDIR/run"
	answer 1
	case $TARGET in
	koltamga | koltamga-device)
		# People's keys ask (the module default), the key labelled seal
		# is automatic; 3 wrong PINs lock (fixed at C_InitToken).  On
		# koltamga-device: no store, the device's [token] (lib.sh), whose
		# token information (its manufacturer too) is the device's, and
		# the device's PIN rules.
		local store_line="store = $TDIR/store" device=()
		TOKEN_URI=pkcs11:manufacturer=koltamga
		if [ "$KT_DEVICE" = 1 ]; then
			store_line="# no store: the token is on the device"
			device=('[token]' 'driver = pkcs11' "module = $SOFTHSM_MODULE")
			TOKEN_URI='pkcs11:manufacturer=SoftHSM%20project'
		fi
		printf '%s\n' "$store_line" 'scrypt_n = 1024' 'max_pin_tries = 3' \
			'sign_policy = confirm' 'confirm = command' "confirm_program = $FAKE_CONFIRM" \
			'confirm_timeout = 30' "audit_log = $TDIR/audit.log" \
			'[key]' 'label = seal' 'sign_policy = automatic' "${device[@]}" >"$KOLTAMGA_CONF"
		;;
	softhsm) TOKEN_URI='pkcs11:manufacturer=SoftHSM%20project' ;;
	esac
	start_server server "$SOCK" || true # server-up says what went wrong
	kt_step -c server-up s_server_up
	kt_step -c init-token s_init_token
	kt_step mechanisms s_mechanisms
	kt_step -c keygen s_keygen
	kt_step -c sign-seal s_sign_seal
	kt_step confirm-yes s_confirm_yes
	kt_step confirm-no s_confirm_no
	kt_step confirm-cancel s_confirm_cancel
	kt_step private-value-refused s_private_value
	kt_step client-no-store-access s_no_store_access
	kt_step other-user-client s_other_user
	kt_step pin-lockout s_pin_lockout
	kt_step server-log s_server_log
	stop_servers
}

kt_for_each_target scenario
kt_finish
