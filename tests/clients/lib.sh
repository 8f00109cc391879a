# tests/clients/lib.sh: shared by the real-client tests (sourced, not run).
# shellcheck shell=bash
#
# Each client test runs one scenario on every target, on a fresh token each time:
#   koltamga         $KOLTAMGA_MODULE (default $KOLTAMGA_BUILDDIR/.libs/koltamga-pkcs11.so)
#                    with KOLTAMGA_CONF -> a temp koltamga.conf (store = <tmp>/store,
#                    scrypt_n = 1024 so key derivation is fast);
#   koltamga-device  the same module and settings, but no store: one
#                    [token] driver = pkcs11 over SoftHSM2 ($SOFTHSM_MODULE, with
#                    its own SOFTHSM2_CONF and token directory) playing a device
#                    (smart card, USB token, HSM): keys on the device, koltamga's
#                    rules in front of it.  The device's one token is created
#                    through koltamga's C_InitToken on koltamga's slot; the
#                    device's own PIN rules apply (SoftHSM2 never locks a PIN),
#                    so steps about koltamga's own PIN counter are N/A there.
#                    On an ASan build the GnuTLS scenarios skip it (GnuTLS
#                    clients then hang at exit: kt_gnutls_asan_na below);
#   softhsm          SoftHSM2 with its own SOFTHSM2_CONF and token directory, as
#                    the reference that keeps the scenario itself honest.
# and prints one line per step, then a table of the outcomes and every
# difference.  Exit status: 0 when every step of the koltamga targets passed
# (or does not apply) and SoftHSM only failed where it has a known limitation;
# 1 otherwise; 77 (skip) when a tool is missing, but only outside CI: with CI
# set a missing tool is a failure.
#
# Scenarios add lines to koltamga's configuration with kt_conf_add (never
# `>>`): on koltamga-device the top-level keys must come before the [token]
# section.  kt_on_koltamga is true on both koltamga targets, KT_DEVICE=1 on
# koltamga-device.
#
# Knobs: KT_CLIENT_TARGETS="koltamga koltamga-device softhsm" (which run),
# KT_STEP_TIMEOUT (seconds per client command, default 180), KT_KEEP_TMP=1
# (keep the temp dir), SOFTHSM_MODULE (default /usr/lib/softhsm/libsofthsm2.so).
#
# Only test PINs appear here; never point this at a real token.  pkcs11-spy is
# never used (it logs PINs and data).

set -eu

KT_TEST=$(basename "$0" .sh)
KT_BUILDDIR=${KOLTAMGA_BUILDDIR:-$(pwd)}
KT_MODULE=${KOLTAMGA_MODULE:-$KT_BUILDDIR/.libs/koltamga-pkcs11.so}
SOFTHSM_MODULE=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
KT_TARGETS=${KT_CLIENT_TARGETS:-koltamga koltamga-device softhsm}
KT_STEP_TIMEOUT=${KT_STEP_TIMEOUT:-180}

# Test PINs (never a real user's); used by the scenarios that source this.
# shellcheck disable=SC2034
{
	SO_PIN=12345678
	USER_PIN=1234
	NEW_PIN=5678
	BAD_PIN=0000
}

declare -A KT_RESULT=()   # "<target>|<step>" -> PASS FAIL N/A KNOWN NOTRUN
declare -a KT_STEPS=()    # step names in first-seen order
declare -a KT_RAN=()      # targets run
KT_ABORTED=""             # set when a critical step failed: the rest is NOTRUN
KT_SKIPPED_TARGETS=""

# --- missing tools --------------------------------------------------------
kt_missing() { # message
	if [ -n "${CI:-}" ]; then
		echo "FAIL: $KT_TEST: $1 (with CI set a missing tool is a failure)"
		exit 1
	fi
	echo "SKIP: $KT_TEST: $1"
	exit 77
}

kt_need_tools() { # tool...
	local t
	for t in "$@"; do
		command -v "$t" >/dev/null 2>&1 || kt_missing "'$t' is not installed (scripts/deps.sh installs it)"
	done
}

# --- temp dir -------------------------------------------------------------
KT_TMP=$(mktemp -d "${TMPDIR:-/tmp}/kt-$KT_TEST.XXXXXX")
kt_cleanup() {
	if [ -n "${KT_KEEP_TMP:-}" ]; then
		echo "kept temp dir $KT_TMP"
	else
		rm -rf "$KT_TMP"
	fi
}
trap kt_cleanup EXIT
trap 'exit 130' INT TERM

# --- targets --------------------------------------------------------------
# kt_softhsm_conf DIR: a SoftHSM2 configuration with its own (empty) token
# directory DIR/tokens, exported as SOFTHSM2_CONF.
kt_softhsm_conf() {
	mkdir -p "$1/tokens"
	printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
		"$1/tokens" >"$1/softhsm2.conf"
	SOFTHSM2_CONF=$1/softhsm2.conf
	export SOFTHSM2_CONF
}

# kt_asan_runtime: the sanitizer runtime an ASan build of $KT_MODULE needs
# preloaded in the client (empty for a normal build).
kt_asan_runtime() {
	if command -v ldd >/dev/null 2>&1 && [ -f "$KT_MODULE" ]; then
		ldd "$KT_MODULE" 2>/dev/null | awk '/libasan/ { print $3; exit }'
	fi
}

# GnuTLS clients (p11tool, certtool) under the ASan preload on koltamga-device
# hang in exit(), so a scenario that is mostly GnuTLS sets KT_GNUTLS_SCENARIO=1
# (kt_for_each_target then skips koltamga-device on an ASan build) and a
# single GnuTLS step calls kt_gnutls_asan_na.  Why: p11-kit's ELF constructor
# runs before the preloaded ASan runtime's, its newlocale() mallocs, ASan
# initialises inside that and calls dlerror(), whose gettext takes and drops
# the setlocale lock newlocale holds: the lock is left corrupt.  The next
# gettext in the process (SoftHSM2's OpenSSL probing for an engine, the
# device's module being in the process here) makes p11-kit's freelocale() at
# exit wait forever.  Client-side (SoftHSM2 loaded directly hangs the same
# way), the same hang as certtool's in p11tool.sh.
KT_GNUTLS_ASAN_HANG="GnuTLS clients hang in exit() under the ASan preload with the device's module in the process (p11-kit's constructor runs before ASan's and leaves the setlocale lock corrupt; lib.sh)"
kt_gnutls_asan_na() {
	if [ "${KT_DEVICE:-0}" = 1 ] && [ -n "${KT_PRELOAD:-}" ]; then
		kt_na "$KT_GNUTLS_ASAN_HANG"
	fi
	return 0
}

# kt_target NAME: fresh token store and environment for NAME.  Sets TARGET,
# MODULE, TDIR, STRICT (1: every step must pass; 0: reference implementation),
# KT_DEVICE (1: koltamga's token is on a device).
kt_target() {
	TARGET=$1
	TDIR=$KT_TMP/$TARGET
	KT_ABORTED=""
	KT_PRELOAD=""
	KT_DEVICE=0
	mkdir -p "$TDIR"
	unset KOLTAMGA_CONF SOFTHSM2_CONF
	case $TARGET in
	koltamga | koltamga-device)
		MODULE=$KT_MODULE
		STRICT=1
		# Seal-like keys: these scenarios test the clients, not the
		# signer's confirmation (tests/clients/confirm.sh does).
		if [ "$TARGET" = koltamga ]; then
			mkdir -p "$TDIR/store"
			printf 'store = %s\nscrypt_n = 1024\nsign_policy = automatic\naudit_log = %s\n' \
				"$TDIR/store" "$TDIR/audit.log" >"$TDIR/koltamga.conf"
		else
			# No store: the one token is SoftHSM2's, behind the
			# pkcs11 driver; SoftHSM2's files are its own.
			# shellcheck disable=SC2034 # read by the scenarios
			KT_DEVICE=1
			kt_softhsm_conf "$TDIR"
			printf 'scrypt_n = 1024\nsign_policy = automatic\naudit_log = %s\n[token]\ndriver = pkcs11\nmodule = %s\n' \
				"$TDIR/audit.log" "$SOFTHSM_MODULE" >"$TDIR/koltamga.conf"
		fi
		KOLTAMGA_CONF=$TDIR/koltamga.conf
		export KOLTAMGA_CONF
		# An ASan build of the module needs the sanitizer runtime first in
		# the (uninstrumented) client process.  Leak checking is off: the
		# clients' own leaks would fail every run; the cmocka tests cover ours.
		KT_PRELOAD=$(kt_asan_runtime)
		;;
	softhsm)
		MODULE=$SOFTHSM_MODULE
		STRICT=0
		kt_softhsm_conf "$TDIR"
		;;
	*)
		echo "unknown target $TARGET" >&2
		exit 1
		;;
	esac
	echo "== $KT_TEST on $TARGET ($MODULE)"
}

# kt_on_koltamga: the target is koltamga (its token in files or on a device).
kt_on_koltamga() {
	case $TARGET in koltamga | koltamga-device) return 0 ;; esac
	return 1
}

# kt_conf_add TEXT: add TEXT's lines to $KOLTAMGA_CONF.  Its top-level lines
# (those before its first [section]) go before the file's first section, where
# top-level keys must be (a [token] section runs to the end of the file or the
# next section); its sections go at the end.  Without sections in the file,
# that is a plain append.
kt_conf_add() {
	local f=$KOLTAMGA_CONF
	printf '%s\n' "$1" | awk -v f="$f" '
		!sec && /^[ \t]*\[/ { sec = 1 }
		{ if (sec) tail = tail $0 "\n"; else head = head $0 "\n" }
		END {
			done = 0
			while ((getline line < f) > 0) {
				if (!done && line ~ /^[ \t]*\[/) { printf "%s", head; done = 1 }
				print line
			}
			if (!done) printf "%s", head
			printf "%s", tail
		}' >"$f.new"
	mv "$f.new" "$f"
}

# kt_module_missing TARGET: TARGET's module-present step failed; it ran no more.
kt_module_missing() {
	KT_RESULT["$1|module-present"]=FAIL
	case " ${KT_STEPS[*]-} " in *" module-present "*) ;; *) KT_STEPS+=(module-present) ;; esac
	KT_RAN+=("$1")
}

# kt_for_each_target FUNCTION: run the scenario FUNCTION on every target.
kt_for_each_target() {
	local t
	for t in $KT_TARGETS; do
		case $t in
		koltamga | koltamga-device)
			if [ ! -f "$KT_MODULE" ]; then
				# make check always builds it; a missing module is a failure.
				echo "FAIL: koltamga module not found at $KT_MODULE (set KOLTAMGA_MODULE)"
				kt_module_missing "$t"
				continue
			fi
			;;
		esac
		if [ "$t" = koltamga-device ] && [ -n "${KT_GNUTLS_SCENARIO:-}" ] && [ -n "$(kt_asan_runtime)" ]; then
			echo "SKIP: koltamga-device run: $KT_GNUTLS_ASAN_HANG"
			KT_SKIPPED_TARGETS="$KT_SKIPPED_TARGETS $t"
			continue
		fi
		case $t in
		softhsm | koltamga-device)
			if [ ! -f "$SOFTHSM_MODULE" ]; then
				[ -n "${CI:-}" ] && {
					echo "FAIL: SoftHSM2 module missing at $SOFTHSM_MODULE (CI installs softhsm2)"
					kt_module_missing "$t"
					continue
				}
				echo "SKIP: $t run: $SOFTHSM_MODULE missing (apt-get install softhsm2)"
				KT_SKIPPED_TARGETS="$KT_SKIPPED_TARGETS $t"
				continue
			fi
			;;
		esac
		kt_target "$t"
		KT_RAN+=("$t")
		"$1"
	done
}

# --- running clients ------------------------------------------------------
# Every client call goes through kt_client: no stdin (nothing may prompt),
# a timeout, and for an ASan module the sanitizer runtime preloaded.
kt_client() {
	if [ -n "${KT_PRELOAD:-}" ]; then
		LD_PRELOAD=$KT_PRELOAD ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
			timeout "$KT_STEP_TIMEOUT" "$@" </dev/null
	else
		timeout "$KT_STEP_TIMEOUT" "$@" </dev/null
	fi
}

# Inside a step: "not applicable here" (exit 77) and "known limitation of the
# reference implementation" (exit 78, only honoured on a non-strict target).
kt_na() {
	echo "not applicable: $*"
	exit 77
}
kt_known() {
	echo "known limitation: $*"
	exit 78
}
# kt_fail MESSAGE: fail the step with a reason.
kt_fail() {
	echo "check failed: $*"
	exit 1
}
# kt_expect_fail CMD...: CMD must fail (exit non-zero, not a timeout or crash).
kt_expect_fail() {
	local rc=0
	"$@" || rc=$?
	if [ "$rc" -eq 0 ]; then
		kt_fail "expected '$*' to fail, it succeeded"
	elif [ "$rc" -ge 124 ]; then
		kt_fail "'$*' timed out or crashed (exit $rc)"
	fi
	echo "(failed as expected, exit $rc)"
}
# kt_grep PATTERN FILE: extended regex must match in FILE.
kt_grep() {
	grep -Eq -- "$1" "$2" || kt_fail "no line matching '$1' in $(basename "$2")"
}
kt_nogrep() {
	! grep -Eq -- "$1" "$2" || kt_fail "unexpected line matching '$1' in $(basename "$2")"
}

# kt_step [-c] NAME FUNCTION [ARGS...]: run FUNCTION in a subshell with set -e
# (its output goes to $TDIR/NAME.log), record and print the outcome.  With -c
# the step is critical: when it fails, the target's remaining steps do not run.
kt_step() {
	local critical="" name rc=0 res log
	if [ "$1" = -c ]; then
		critical=1
		shift
	fi
	name=$1
	shift
	case " ${KT_STEPS[*]-} " in *" $name "*) ;; *) KT_STEPS+=("$name") ;; esac
	log=$TDIR/$name.log
	if [ -n "$KT_ABORTED" ]; then
		KT_RESULT["$TARGET|$name"]=NOTRUN
		printf '%-6s %-15s %s (after %s failed)\n' NOTRUN "$TARGET" "$name" "$KT_ABORTED"
		return 0
	fi
	set +e
	(
		set -eu
		cd "$TDIR"
		"$@"
	) >"$log" 2>&1
	rc=$?
	set -e
	case $rc in
	0) res=PASS ;;
	77) res=N/A ;;
	78) if [ "$STRICT" = 1 ]; then res=FAIL; else res=KNOWN; fi ;;
	*) res=FAIL ;;
	esac
	KT_RESULT["$TARGET|$name"]=$res
	case $res in
	PASS) printf '%-6s %-15s %s\n' PASS "$TARGET" "$name" ;;
	N/A | KNOWN) printf '%-6s %-15s %s: %s\n' "$res" "$TARGET" "$name" \
		"$(grep -E '^(not applicable|known limitation):' "$log" | tail -n 1 | cut -d: -f2- | sed 's/^ //')" ;;
	FAIL)
		printf '%-6s %-15s %s (exit %s)\n' FAIL "$TARGET" "$name" "$rc"
		if grep -Eq 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$log"; then
			# A sanitizer report: its start says what and where.
			grep -Em1 -A40 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$log" | sed 's/^/        | /'
		else
			tail -n 25 "$log" | sed 's/^/        | /'
		fi
		if [ -n "$critical" ]; then KT_ABORTED=$name; fi
		;;
	esac
	return 0
}

# kt_finish: the table, the differences, the exit status.
kt_finish() {
	local s t r line bad=0 diffs="" w
	declare -A npass=() nfail=() nnotrun=() nother=()
	echo
	echo "== $KT_TEST: outcomes"
	line=$(printf '%-28s' step)
	for t in "${KT_RAN[@]}"; do
		w=$((${#t} > 9 ? ${#t} : 9))
		line="$line$(printf ' %-*s' "$w" "$t")"
	done
	echo "$line"
	for s in "${KT_STEPS[@]}"; do
		line=$(printf '%-28s' "$s")
		local seen=""
		for t in "${KT_RAN[@]}"; do
			r=${KT_RESULT["$t|$s"]:-NOTRUN}
			w=$((${#t} > 9 ? ${#t} : 9))
			line="$line$(printf ' %-*s' "$w" "$r")"
			[ -n "$seen" ] && [ "$seen" != "$r" ] && diffs="$diffs  $s:"
			seen=$r
			case $r in
			PASS) npass[$t]=$((${npass[$t]:-0} + 1)) ;;
			FAIL) nfail[$t]=$((${nfail[$t]:-0} + 1)); bad=1 ;;
			NOTRUN) nnotrun[$t]=$((${nnotrun[$t]:-0} + 1)); bad=1 ;;
			*) nother[$t]=$((${nother[$t]:-0} + 1)) ;;
			esac
		done
		echo "$line"
	done
	if [ "${#KT_RAN[@]}" -gt 1 ]; then
		if [ -n "$diffs" ]; then
			echo "differences between the runs (step: outcomes):"
			for s in "${KT_STEPS[@]}"; do
				case " $diffs " in *" $s: "*)
					line="  $s:"
					for t in "${KT_RAN[@]}"; do line="$line $t=${KT_RESULT["$t|$s"]:-NOTRUN}"; done
					echo "$line"
					;;
				esac
			done
		else
			echo "no differences between the runs"
		fi
	fi
	[ -n "$KT_SKIPPED_TARGETS" ] && echo "skipped targets:$KT_SKIPPED_TARGETS"
	for t in "${KT_RAN[@]}"; do
		case $t in
		koltamga | koltamga-device)
			echo "$KT_TEST $t steps: ${npass[$t]:-0} passed, ${nfail[$t]:-0} failed," \
				"${nnotrun[$t]:-0} not run, ${nother[$t]:-0} not applicable"
			;;
		esac
	done
	if [ "$bad" = 0 ]; then
		echo "RESULT: $KT_TEST PASS"
		return 0
	fi
	echo "RESULT: $KT_TEST FAIL"
	return 1
}

# --- helpers shared by scenarios -----------------------------------------
# kt_doc FILE: a small "real" document to sign.
kt_doc() {
	cat >"$1" <<'EOF'
Salyk deklaraciyasy / Tax return 2024
Taxpayer: Test Person (test data only)
Income: 1000 KGS
I confirm that the information above is correct.
EOF
}

# --- the scripted signer (tests/pinentry/fake-confirm.sh, confirm = command)
# of the scenarios that check the confirmation: they write its answers to
# $TDIR/fake-confirm.conf (KT_FAKE_CONFIRM) and read what it was asked.

# answer CODE: the scripted signer's next answer (0 yes, 1 no, 2 cancel);
# forgets the questions asked so far (and the argv/environ it recorded).
answer() {
	printf 'out=%s/fc.out\ncode=%s\n' "$TDIR" "$1" >"$TDIR/fake-confirm.conf"
	: >"$TDIR/fc.out"
	: >"$TDIR/fc.out.argv"
	: >"$TDIR/fc.out.environ"
}
questions() { grep -c '^=== confirm$' "$TDIR/fc.out" || true; }
notices() { grep -c '^=== notify$' "$TDIR/fc.out" || true; }
expect_questions() { # N NOTICES
	[ "$(questions)" = "$1" ] || kt_fail "expected $1 question(s) to the signer, got $(questions)"
	[ "$(notices)" = "$2" ] || kt_fail "expected $2 'signed' notice(s), got $(notices)"
}
# audit_count: records in the audit log so far.
audit_count() { if [ -f "$TDIR/audit.log" ]; then wc -l <"$TDIR/audit.log"; else echo 0; fi; }
audit_new() { # SINCE: records appended after the first SINCE lines, to new.audit
	tail -n "+$(($1 + 1))" "$TDIR/audit.log" >new.audit 2>/dev/null || : >new.audit
	cat new.audit
}

# kt_spki_pem IN OUT: any public key file a client exported (DER or PEM SPKI)
# to PEM, so openssl reads it whatever the client wrote.
kt_spki_pem() {
	openssl pkey -pubin -in "$1" -out "$2"
}
