#!/usr/bin/env bash
# scripts/demo.sh: the main job, end to end, on a fresh Debian 12 machine.
#
#   1. install what is missing (scripts/deps.sh) and build the module;
#   2. create a token in a temporary store (KOLTAMGA_CONF -> a temp config);
#   3. generate a signing key on the token;
#   4. sign a real document with a real application (OpenSC pkcs11-tool)
#      through the module;
#   5. verify the signature with openssl and the exported public key, and show
#      that a changed document no longer verifies.
#
# Demo PINs only (never type a real PIN into a demo).  KEEP=1 keeps the temp
# directory; KOLTAMGA_MODULE uses an already built module and skips the build.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SO_PIN=12345678 # demo values
USER_PIN=1234

if [ -t 1 ]; then B=$'\033[1m' N=$'\033[0m'; else B="" N=""; fi
step() { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }
# show+run a command, with PINs masked in what is printed.
run() {
	local shown="" a prev=""
	for a in "$@"; do
		case $prev in --pin | --so-pin | --new-pin | -p) a='****' ;; esac
		shown="$shown ${a// /\\ }"
		prev=$a
	done
	printf '  $%s\n' "$shown"
	"$@" 2>&1 | sed 's/^/    /'
	return "${PIPESTATUS[0]}"
}

# --- 1. dependencies and build -------------------------------------------
if [ -z "${KOLTAMGA_MODULE:-}" ]; then
	step "Installing what is missing"
	bash "$ROOT/scripts/deps.sh"

	step "Building koltamga-pkcs11.so"
	cd "$ROOT"
	if [ -f "$ROOT/config.status" ]; then
		BUILD=$ROOT # configured in place by a developer: use that build
	else
		BUILD=$ROOT/build
		[ -x "$ROOT/configure" ] || autoreconf -fi
		mkdir -p "$BUILD"
		[ -f "$BUILD/Makefile" ] || (cd "$BUILD" && "$ROOT/configure" --quiet)
	fi
	make -C "$BUILD" -j"${JOBS:-2}" --no-print-directory koltamga-pkcs11.la tools/koltamga-audit >/dev/null
	KOLTAMGA_MODULE=$BUILD/.libs/koltamga-pkcs11.so
fi
MODULE=$KOLTAMGA_MODULE
# A module given from outside: its build tree holds the audit tool.
BUILD=${BUILD:-$(cd "$(dirname "$MODULE")/.." && pwd)}
[ -f "$MODULE" ] || { echo "module not found: $MODULE" >&2; exit 1; }
echo "  module: $MODULE"

# --- 2. a token in a temporary store -------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/koltamga-demo.XXXXXX")
cleanup() {
	if [ -n "${KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
mkdir -p "$WORK/store"
# Keys are qualified (policy "confirm", the default): every signature is
# shown to the signer and made only after "yes".  On a terminal with
# pinentry-tty the real dialog asks you; otherwise scripts/demo-signer.sh
# stands in for the person and keeps what it was shown.
SIGNER=$ROOT/scripts/demo-signer.sh
if [ -t 0 ] && [ -t 1 ] && command -v pinentry-tty >/dev/null 2>&1 && [ -z "${CI:-}" ]; then
	CONFIRM="confirm = pinentry
confirm_program = $(command -v pinentry-tty)"
	export GPG_TTY=$(tty)
else
	CONFIRM="confirm = command
confirm_program = $SIGNER"
fi
export DEMO_SIGNER_SAW=$WORK/what-the-signer-saw.txt
cat >"$WORK/koltamga.conf" <<EOF
# koltamga demo configuration: one store directory, qualified keys.
store = $WORK/store
sign_policy = confirm
$CONFIRM
audit_log = $WORK/audit.log
EOF
export KOLTAMGA_CONF=$WORK/koltamga.conf
cd "$WORK"

step "Configuration (KOLTAMGA_CONF=$KOLTAMGA_CONF)"
sed 's/^/    /' "$KOLTAMGA_CONF"

P=(pkcs11-tool --module "$MODULE")
step "Slots before: an empty store offers one slot for a new token"
run "${P[@]}" --list-slots

step "Creating the token 'Demo signer' (SO PIN is a demo value)"
run "${P[@]}" --init-token --label "Demo signer" --so-pin "$SO_PIN"
run "${P[@]}" --token-label "Demo signer" --login --login-type so --so-pin "$SO_PIN" \
	--init-pin --pin "$USER_PIN"
run "${P[@]}" --list-token-slots

# --- 3. a key generated on the token -------------------------------------
step "Generating an RSA-2048 signing key on the token"
T=(--token-label "Demo signer")
run "${P[@]}" "${T[@]}" --login --pin "$USER_PIN" --keypairgen --key-type rsa:2048 \
	--id 01 --label "signing key"
run "${P[@]}" "${T[@]}" --login --pin "$USER_PIN" --list-objects

# --- 4. sign a real document ---------------------------------------------
step "The document"
cat >contract.txt <<'EOF'
SERVICE CONTRACT No. 2024/017

Bishkek, 1 March 2024

The Customer, Demo Company LLC, and the Contractor, Test Person, agree:
1. The Contractor translates 40 pages of technical documentation.
2. The Customer pays 12 000 KGS within 10 days of delivery.
3. This contract is signed with qualified electronic signatures.
EOF
sed 's/^/    | /' contract.txt
echo "    SHA-256: $(sha256sum contract.txt | cut -d' ' -f1)"

step "Signing it with pkcs11-tool through koltamga (SHA256-RSA-PKCS): the signer confirms"
run "${P[@]}" "${T[@]}" --login --pin "$USER_PIN" --sign --mechanism SHA256-RSA-PKCS \
	--id 01 -i contract.txt -o contract.sig
echo "    signature: $(wc -c <contract.sig) bytes, $(head -c 16 contract.sig | od -An -tx1 | tr -d ' \n')..."
if [ -f "$DEMO_SIGNER_SAW" ]; then
	step "What the signer was shown before the signature existed, and the notice after"
	sed 's/^/    | /' "$DEMO_SIGNER_SAW"
fi

step "The audit record (metadata only: no document, no PIN), and its hash chain"
sed 's/^/    /' "$WORK/audit.log"
if [ -x "$BUILD/tools/koltamga-audit" ]; then
	run "$BUILD/tools/koltamga-audit" verify "$WORK/audit.log"
fi

# --- 5. verify with openssl ----------------------------------------------
step "Exporting the public key and verifying with openssl"
run "${P[@]}" "${T[@]}" --read-object --type pubkey --id 01 -o signer.pub.der
openssl pkey -pubin -in signer.pub.der -out signer.pub.pem
run openssl dgst -sha256 -verify signer.pub.pem -signature contract.sig contract.txt

step "A changed document no longer verifies"
sed 's/12 000 KGS/120 000 KGS/' contract.txt >contract-changed.txt
if run openssl dgst -sha256 -verify signer.pub.pem -signature contract.sig contract-changed.txt; then
	echo "ERROR: a changed document verified" >&2
	exit 1
fi

step "Done: the document was signed on the token and the signature verifies"
