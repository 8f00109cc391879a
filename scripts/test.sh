#!/usr/bin/env bash
# scripts/test.sh: run every test of koltamga, as CI does.
#
#   bash scripts/test.sh                 all phases, in this order:
#     deps       scripts/deps.sh (installs what is missing, no-op otherwise)
#     autoreconf autoreconf -fi
#     build      build/:      ../configure && make -j2
#     check      build/:      make check (unit, module and real-client tests)
#     valgrind   build/:      the cmocka test programs under valgrind
#     asan       build-asan/: ../configure --enable-asan && make -j2 && make check
#     distcheck  build/:      make distcheck
#   bash scripts/test.sh check asan      only the phases named
#
# Builds are out of tree (build/, build-asan/).  A source tree that a developer
# configured in place is used as it is instead of build/ (not reconfigured, so
# their configure flags stay), and the ASan build then starts from a 'make
# distdir' copy, since a configured source tree cannot host a VPATH build.
# Environment: JOBS (default 2), KT_CONFIGURE_FLAGS (extra configure flags for
# both builds), KT_PHASE_TIMEOUT (seconds per make check/distcheck, default
# 1200), KT_VALGRIND_SUPP (a valgrind suppression file), CI (missing client
# tools fail instead of skipping).
# Exits non-zero when any phase failed; ends with a "N passed, N failed" line
# summing every test-suite.log.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
JOBS=${JOBS:-2}
ASAN_BUILD=$ROOT/build-asan
if [ -f "$ROOT/config.status" ]; then
	IN_PLACE=1
	BUILD=$ROOT
else
	IN_PLACE=""
	BUILD=$ROOT/build
fi
ALL_PHASES=(deps autoreconf build check valgrind asan distcheck)
if [ "$#" -gt 0 ]; then PHASES=("$@"); else PHASES=("${ALL_PHASES[@]}"); fi
read -r -a CONFIGURE_FLAGS <<<"${KT_CONFIGURE_FLAGS:-}"

FAILED=()
START=$SECONDS
# Phases run in subshells (so that set -e holds inside them); they append
# their test counts here.
COUNTS=$(mktemp)
trap 'rm -f "$COUNTS"' EXIT

say() { printf '\n=== %s (%s, %ds)\n' "$*" "$(date +%T)" "$((SECONDS - START))"; }

# count_suite LOG NAME: add a test-suite.log's (or make output's) counts.
count_suite() {
	local f=$1 name=$2 total pass fail skip xfail xpass error
	[ -f "$f" ] || return 0
	get() { sed -n "s/^# $1: *\\([0-9][0-9]*\\).*/\\1/p" "$f" | tail -n 1; }
	total=$(get TOTAL); pass=$(get PASS); fail=$(get FAIL); skip=$(get SKIP)
	xfail=$(get XFAIL); xpass=$(get XPASS); error=$(get ERROR)
	[ -n "$total" ] || return 0
	pass=$((${pass:-0} + ${xfail:-0}))
	fail=$((${fail:-0} + ${xpass:-0} + ${error:-0}))
	skip=${skip:-0}
	echo "$name: $total tests, $pass passed, $fail failed, $skip skipped"
	echo "$name $pass $fail $skip" >>"$COUNTS"
}

# show_logs BUILDDIR [SUITE_LOG]: the log of every failed test in BUILDDIR
# (first 150 lines each; the whole is in the file named), then the summary of
# the suite log.
show_logs() {
	local dir=$1 suite=${2:-test-suite.log} trs log
	find "$dir" \( -name build-asan -o -name 'koltamga-[0-9]*' \) -prune -o -name '*.trs' -print 2>/dev/null |
		sort | while read -r trs; do
		grep -Eq '^:test-result: (FAIL|ERROR|XPASS)' "$trs" || continue
		log=${trs%.trs}.log
		echo "----- $log (first 150 lines)"
		head -n 150 "$log"
	done
	[ -f "$dir/$suite" ] && sed -n '1,/^\.\. contents/p' "$dir/$suite"
	return 0
}

# tmake ARGS...: make with a time limit (KT_PHASE_TIMEOUT seconds, default
# 1200), so that a hanging test ends the run with a message, not CI's cap.
tmake() {
	local rc=0 limit=${KT_PHASE_TIMEOUT:-1200}
	timeout --kill-after=30 "$limit" make "$@" || rc=$?
	if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
		echo "*** make $* did not finish within ${limit}s (KT_PHASE_TIMEOUT); a test hangs?"
		ps -eo pid,etimes,pcpu,args --sort=-etimes | grep -E 'tests/(unit|module|clients)/' | grep -v grep | head -n 5 || true
	fi
	return "$rc"
}

phase_deps() { bash "$ROOT/scripts/deps.sh"; }

phase_autoreconf() {
	autoreconf -fi
}

configure_in() { # dir flags...
	local dir=$1
	shift
	mkdir -p "$dir"
	(cd "$dir" && "$ROOT/configure" "$@" "${CONFIGURE_FLAGS[@]}")
}

phase_build() {
	[ -x "$ROOT/configure" ] || phase_autoreconf
	if [ -n "$IN_PLACE" ]; then
		echo "using the in-place build in $ROOT (configured: $(sed -n 's/^ac_cs_config=//p' "$ROOT/config.status"))"
	else
		configure_in "$BUILD"
	fi
	make -C "$BUILD" -j"$JOBS"
}

phase_check() {
	[ -f "$BUILD/Makefile" ] || phase_build
	local rc=0
	tmake -C "$BUILD" check || rc=$?
	count_suite "$BUILD/test-suite.log" check
	[ "$rc" -eq 0 ] || { show_logs "$BUILD"; return "$rc"; }
}

# The cmocka programs (unit and module tests) under valgrind, through the
# automake harness so they get the same environment as in 'make check'; each
# runs as 'libtool --mode=execute valgrind ... PROGRAM'.
# Suppressions: tests/valgrind.supp (SQLite's WAL internals; each entry says
# why), or another file named by KT_VALGRIND_SUPP.  Forked children are not
# checked: they abandon the parent's module state by design.
phase_valgrind() {
	[ -f "$BUILD/Makefile" ] || phase_build
	local progs rc=0 supp="--suppressions=${KT_VALGRIND_SUPP:-$ROOT/tests/valgrind.supp}"
	progs=$(make -s --no-print-directory -C "$BUILD" -f Makefile \
		-f <(printf 'kt-print-check-programs:\n\t@echo $(check_PROGRAMS)\n') kt-print-check-programs |
		tr ' ' '\n' | grep -E '^tests/(unit|module)/test-' | tr '\n' ' ')
	# (Only the test programs: tests/pinentry/* are helpers the tests run.)
	if [ -z "$progs" ]; then
		echo "no cmocka test programs (is libcmocka-dev installed?)"
		return 1
	fi
	echo "under valgrind: $progs"
	# The random-template loop is as thorough with fewer rounds here:
	# ASan and the plain run do the full 3000.
	KT_HOSTILE_ITER=${KT_HOSTILE_ITER:-300} \
	tmake -C "$BUILD" check TESTS="$progs" TEST_SUITE_LOG=test-suite-valgrind.log \
		LOG_COMPILER="$BUILD/libtool" \
		LOG_FLAGS="--mode=execute valgrind --error-exitcode=1 --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect --child-silent-after-fork=yes --num-callers=30 $supp --quiet" ||
		rc=$?
	count_suite "$BUILD/test-suite-valgrind.log" valgrind
	[ "$rc" -eq 0 ] || { show_logs "$BUILD" test-suite-valgrind.log; return "$rc"; }
}

phase_asan() {
	[ -x "$ROOT/configure" ] || phase_autoreconf
	local rc=0 src=$ROOT
	if [ -n "$IN_PLACE" ]; then
		# A configured source tree refuses VPATH builds: build from a copy.
		rm -rf "$ASAN_BUILD"
		mkdir -p "$ASAN_BUILD"
		make -C "$BUILD" distdir distdir="$ASAN_BUILD/src"
		src=$ASAN_BUILD/src
		ASAN_BUILD=$ASAN_BUILD/obj
	fi
	mkdir -p "$ASAN_BUILD"
	(cd "$ASAN_BUILD" && "$src/configure" --enable-asan "${CONFIGURE_FLAGS[@]}")
	make -C "$ASAN_BUILD" -j"$JOBS"
	# tests/lsan.supp: leaks inside SoftHSM2, which plays the device.
	ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1} \
		LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$ROOT/tests/lsan.supp} \
		UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
		tmake -C "$ASAN_BUILD" check || rc=$?
	count_suite "$ASAN_BUILD/test-suite.log" asan
	[ "$rc" -eq 0 ] || { show_logs "$ASAN_BUILD"; return "$rc"; }
}

phase_distcheck() {
	[ -f "$BUILD/Makefile" ] || phase_build
	local rc=0 out=$BUILD/distcheck.out
	tmake -C "$BUILD" -j"$JOBS" distcheck >"$out" 2>&1 || rc=$?
	# The output is long; show its end, and the whole of it on failure.
	if [ "$rc" -eq 0 ]; then tail -n 15 "$out"; else cat "$out"; fi
	count_suite "$out" distcheck
	if [ "$rc" -ne 0 ]; then
		local d
		for d in "$BUILD"/koltamga-*/_build/sub; do [ -d "$d" ] && show_logs "$d"; done
		return "$rc"
	fi
}

for p in "${PHASES[@]}"; do
	case " ${ALL_PHASES[*]} " in *" $p "*) ;; *)
		echo "unknown phase '$p' (phases: ${ALL_PHASES[*]})" >&2
		exit 2
		;;
	esac
done

BUILD_FAILED=""
for p in "${PHASES[@]}"; do
	say "$p"
	case $p in check | valgrind | distcheck)
		if [ -n "$BUILD_FAILED" ]; then
			echo "not run: the build failed"
			FAILED+=("$p")
			continue
		fi
		;;
	esac
	set +e
	(
		set -e
		"phase_$p"
	)
	rc=$?
	set -e
	if [ "$rc" -ne 0 ]; then
		echo "*** phase $p FAILED (exit $rc)"
		FAILED+=("$p")
		# Nothing after a failed install or autoreconf can be meaningful.
		case $p in deps | autoreconf) break ;; build) BUILD_FAILED=1 ;; esac
	fi
done

say "summary"
if [ "${#FAILED[@]}" -eq 0 ]; then
	echo "all phases passed: ${PHASES[*]}"
else
	echo "FAILED phases: ${FAILED[*]}"
fi
read -r TOTAL_PASS TOTAL_FAIL TOTAL_SKIP < <(awk '{ p += $2; f += $3; s += $4 } END { print p + 0, f + 0, s + 0 }' "$COUNTS")
cat "$COUNTS" | while read -r name pass fail skip; do
	echo "  $name: $pass passed, $fail failed, $skip skipped"
done
# One plain line so the CI log says how many tests ran.
echo "tests: $TOTAL_PASS passed, $TOTAL_FAIL failed, $TOTAL_SKIP skipped"
[ "${#FAILED[@]}" -eq 0 ]
