#!/bin/sh
# The suite matrix (issue 6): a module test program again, with koltamga's
# token on a device instead of a file: SoftHSM2 behind the pkcs11 token
# driver (tests/module/fixture.c, KT_TEST_DRIVER=pkcs11).  The test names
# are tests/device/<program>.device files (automake's TEST_EXTENSIONS), each
# naming its program; the program's own tests say where a device differs
# (FX_FILE_TOKEN_ONLY).
#
# Usage, as automake's DEVICE_LOG_COMPILER: on-device.sh tests/device/X.device
set -eu
name=$(basename "$1" .device)
prog=${KOLTAMGA_BUILDDIR:-.}/tests/module/$name
if [ ! -f /usr/lib/softhsm/libsofthsm2.so ] && [ -z "${KT_DEVICE_MODULE:-}" ]; then
	if [ -n "${CI:-}" ]; then
		echo "FAIL: SoftHSM2 is missing (scripts/deps.sh installs softhsm2)"
		exit 1
	fi
	echo "SKIP: SoftHSM2 is missing (apt-get install softhsm2)"
	exit 77
fi
KT_TEST_DRIVER=pkcs11
export KT_TEST_DRIVER
# Under ASan (scripts/test.sh), SoftHSM2's own leaks are suppressed by
# module name (tests/lsan.supp); that takes full allocation stacks, which
# the fast unwinder cannot give through libcrypto (no frame pointers).
if [ -n "${ASAN_OPTIONS:-}" ]; then
	ASAN_OPTIONS=$ASAN_OPTIONS:fast_unwind_on_malloc=0
	export ASAN_OPTIONS
fi
exec "$prog"
