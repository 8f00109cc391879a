#!/bin/sh
# Build what is missing, then run kt-bench against the built koltamga module,
# SoftHSM2 and raw OpenSSL.  Arguments go to kt-bench unchanged, e.g.
#   bench/run.sh --time 5
#   bench/run.sh --markdown > /tmp/perf.md
#
# Environment:
#   KOLTAMGA_BUILDDIR  the build tree (default: the source tree)
#   KOLTAMGA_MODULE    a module to use instead of the built one
#   SOFTHSM2_MODULE    libsofthsm2.so, when not in one of the usual places
#
# Build output goes to stderr so that stdout is the report alone.
set -eu

srcdir=$(cd "$(dirname "$0")/.." && pwd)
builddir=${KOLTAMGA_BUILDDIR:-$srcdir}
jobs=$(nproc 2>/dev/null || echo 2)

say() {
	echo "run.sh: $*" >&2
}

# The tree may not configure or link while the module is being written; the
# bench itself needs only OpenSSL and the PKCS#11 header, so build it alone
# then rather than measure nothing.
build_standalone() {
	out=$builddir/bench/kt-bench-standalone
	mkdir -p "$builddir/bench"
	say "building $out without the build system"
	# shellcheck disable=SC2046 # pkg-config output is meant to split
	${CC:-cc} -O2 -Wall -Wextra $(pkg-config --cflags p11-kit-1 libcrypto) \
		"$srcdir/bench/kt-bench.c" $(pkg-config --libs libcrypto) -ldl -lpthread \
		-o "$out" >&2
	bench=$out
}

configured=no
if [ -f "$builddir/Makefile" ]; then
	configured=yes
elif {
	{ [ -x "$srcdir/configure" ] || (cd "$srcdir" && autoreconf -fi); } &&
		mkdir -p "$builddir" && (cd "$builddir" && "$srcdir/configure")
} >&2; then
	configured=yes
else
	say "configure failed"
fi

bench=
if [ "$configured" = yes ]; then
	if ! make -C "$builddir" -j"$jobs" koltamga-pkcs11.la >&2; then
		say "the module did not build: benchmarking without it"
	fi
	if make -C "$builddir" -j"$jobs" bench/kt-bench >&2; then
		bench=$builddir/bench/kt-bench
	fi
fi
[ -n "$bench" ] || build_standalone

# An absolute path, so the report names exactly what was measured.
if [ -z "${KOLTAMGA_MODULE:-}" ] && [ -f "$builddir/.libs/koltamga-pkcs11.so" ]; then
	KOLTAMGA_MODULE=$builddir/.libs/koltamga-pkcs11.so
	export KOLTAMGA_MODULE
fi
[ -n "${KOLTAMGA_MODULE:-}" ] || say "no koltamga module yet: SoftHSM2 and OpenSSL only"

exec "$bench" "$@"
