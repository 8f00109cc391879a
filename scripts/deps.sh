#!/usr/bin/env bash
# Install everything the build and every test need on Debian 12.
# Idempotent: when all packages are present it touches nothing (no apt at all).
# Runs as root (CI does); otherwise uses sudo when it is available.
set -euo pipefail

PACKAGES=(
	# build
	build-essential autoconf automake libtool pkg-config
	libssl-dev libsqlite3-dev libp11-kit-dev libcmocka-dev
	# the real clients and the reference token used by the tests
	p11-kit gnutls-bin opensc opensc-pkcs11 softhsm2 libnss3-tools
	openssl sqlite3
	# Java's SunPKCS11 (keytool) and the test PKI's helpers (xxd, flock)
	openjdk-17-jdk-headless xxd util-linux
	# watching what a process opens and writes (p11kit-server.sh, canary.sh)
	strace
	# the confirmation dialog: the terminal pinentry, driven through tmux
	pinentry-tty tmux
	# checkers and the tools the test scripts use
	valgrind binutils coreutils diffutils grep sed tar gzip
)

missing=()
for p in "${PACKAGES[@]}"; do
	# dpkg-query prints "install ok installed" only for a fully installed package.
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	case $status in
	*" installed") ;;
	*) missing+=("$p") ;;
	esac
done

if [ "${#missing[@]}" -eq 0 ]; then
	echo "deps: all ${#PACKAGES[@]} packages present"
	exit 0
fi

echo "deps: installing ${missing[*]}"
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		SUDO=(sudo)
	else
		echo "deps: not root and no sudo; install as root: apt-get install ${missing[*]}" >&2
		exit 1
	fi
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
echo "deps: done"
