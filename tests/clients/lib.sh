# tests/clients/lib.sh: shared by the real-client tests (sourced, not run).
# shellcheck shell=bash
#
# Each client test runs one scenario twice, on a fresh token each time:
#   koltamga  $KOLTAMGA_MODULE (default $KOLTAMGA_BUILDDIR/.libs/koltamga-pkcs11.so)
#             with KOLTAMGA_CONF -> a temp koltamga.conf (store = <tmp>/store,
#             scrypt_n = 1024 so key derivation is fast);
#   softhsm   SoftHSM2 with its own SOFTHSM2_CONF and token directory, as the
#             reference that keeps the scenario itself honest.
# and prints one line per step, then a table of both outcomes and every
# difference.  Exit status: 0 when every koltamga step passed (or does not
# apply) and SoftHSM only failed where it has a known limitation; 1 otherwise;
# 77 (skip) when a tool is missing, but only outside CI: with CI set a missing
# tool is a failure.
#
# Knobs: KT_CLIENT_TARGETS="koltamga softhsm" (which runs), KT_STEP_TIMEOUT
# (seconds per client command, default 180), KT_KEEP_TMP=1 (keep the temp dir),
# SOFTHSM_MODULE (default /usr/lib/softhsm/libsofthsm2.so).
#
# Only test PINs appear here; never point this at a real token.  pkcs11-spy is
# never used (it logs PINs and data).

set -eu

KT_TEST=$(basename "$0" .sh)
KT_BUILDDIR=${KOLTAMGA_BUILDDIR:-$(pwd)}
KT_MODULE=${KOLTAMGA_MODULE:-$KT_BUILDDIR/.libs/koltamga-pkcs11.so}
SOFTHSM_MODULE=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
KT_TARGETS=${KT_CLIENT_TARGETS:-koltamga softhsm}
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
# kt_target NAME: fresh token store and environment for NAME.  Sets TARGET,
# MODULE, TDIR, STRICT (1: every step must pass; 0: reference implementation).
kt_target() {
	TARGET=$1
	TDIR=$KT_TMP/$TARGET
	KT_ABORTED=""
	KT_PRELOAD=""
	mkdir -p "$TDIR"
	unset KOLTAMGA_CONF SOFTHSM2_CONF
	case $TARGET in
	koltamga)
		MODULE=$KT_MODULE
		STRICT=1
		mkdir -p "$TDIR/store"
		# Seal-like keys: these scenarios test the clients, not the
		# signer's confirmation (tests/clients/confirm.sh does).
		printf 'store = %s\nscrypt_n = 1024\nsign_policy = automatic\naudit_log = %s\n' \
			"$TDIR/store" "$TDIR/audit.log" >"$TDIR/koltamga.conf"
		KOLTAMGA_CONF=$TDIR/koltamga.conf
		export KOLTAMGA_CONF
		# An ASan build of the module needs the sanitizer runtime first in
		# the (uninstrumented) client process.  Leak checking is off: the
		# clients' own leaks would fail every run; the cmocka tests cover ours.
		if command -v ldd >/dev/null 2>&1 && [ -f "$MODULE" ]; then
			KT_PRELOAD=$(ldd "$MODULE" 2>/dev/null | awk '/libasan/ { print $3; exit }')
		fi
		;;
	softhsm)
		MODULE=$SOFTHSM_MODULE
		STRICT=0
		mkdir -p "$TDIR/tokens"
		printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
			"$TDIR/tokens" >"$TDIR/softhsm2.conf"
		SOFTHSM2_CONF=$TDIR/softhsm2.conf
		export SOFTHSM2_CONF
		;;
	*)
		echo "unknown target $TARGET" >&2
		exit 1
		;;
	esac
	echo "== $KT_TEST on $TARGET ($MODULE)"
}

# kt_for_each_target FUNCTION: run the scenario FUNCTION on every target.
kt_for_each_target() {
	local t
	for t in $KT_TARGETS; do
		case $t in
		koltamga)
			if [ ! -f "$KT_MODULE" ]; then
				# make check always builds it; a missing module is a failure.
				echo "FAIL: koltamga module not found at $KT_MODULE (set KOLTAMGA_MODULE)"
				KT_RESULT["koltamga|module-present"]=FAIL
				KT_STEPS+=(module-present)
				KT_RAN+=(koltamga)
				continue
			fi
			;;
		softhsm)
			if [ ! -f "$SOFTHSM_MODULE" ]; then
				[ -n "${CI:-}" ] && {
					echo "FAIL: SoftHSM2 module missing at $SOFTHSM_MODULE (CI installs softhsm2)"
					KT_RESULT["softhsm|module-present"]=FAIL
					KT_STEPS+=(module-present)
					KT_RAN+=(softhsm)
					continue
				}
				echo "SKIP: softhsm reference run: $SOFTHSM_MODULE missing (apt-get install softhsm2)"
				KT_SKIPPED_TARGETS="$KT_SKIPPED_TARGETS softhsm"
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
		printf '%-6s %-8s %s (after %s failed)\n' NOTRUN "$TARGET" "$name" "$KT_ABORTED"
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
	PASS) printf '%-6s %-8s %s\n' PASS "$TARGET" "$name" ;;
	N/A | KNOWN) printf '%-6s %-8s %s: %s\n' "$res" "$TARGET" "$name" \
		"$(grep -E '^(not applicable|known limitation):' "$log" | tail -n 1 | cut -d: -f2- | sed 's/^ //')" ;;
	FAIL)
		printf '%-6s %-8s %s (exit %s)\n' FAIL "$TARGET" "$name" "$rc"
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
	local s t r line bad=0 npass=0 nfail=0 nnotrun=0 nother=0 diffs=""
	echo
	echo "== $KT_TEST: outcomes"
	line=$(printf '%-28s' step)
	for t in "${KT_RAN[@]}"; do line="$line$(printf ' %-9s' "$t")"; done
	echo "$line"
	for s in "${KT_STEPS[@]}"; do
		line=$(printf '%-28s' "$s")
		local seen=""
		for t in "${KT_RAN[@]}"; do
			r=${KT_RESULT["$t|$s"]:-NOTRUN}
			line="$line$(printf ' %-9s' "$r")"
			[ -n "$seen" ] && [ "$seen" != "$r" ] && diffs="$diffs  $s:"
			seen=$r
			case $t:$r in
			*:PASS) [ "$t" = koltamga ] && npass=$((npass + 1)) ;;
			koltamga:FAIL) nfail=$((nfail + 1)); bad=1 ;;
			koltamga:NOTRUN) nnotrun=$((nnotrun + 1)); bad=1 ;;
			*:FAIL | *:NOTRUN) bad=1 ;;
			koltamga:*) nother=$((nother + 1)) ;;
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
	case " ${KT_RAN[*]-} " in
	*" koltamga "*) echo "$KT_TEST koltamga steps: $npass passed, $nfail failed, $nnotrun not run, $nother not applicable" ;;
	esac
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

# kt_spki_pem IN OUT: any public key file a client exported (DER or PEM SPKI)
# to PEM, so openssl reads it whatever the client wrote.
kt_spki_pem() {
	openssl pkey -pubin -in "$1" -out "$2"
}
