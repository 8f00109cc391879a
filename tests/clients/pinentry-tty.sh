#!/usr/bin/env bash
# The real pinentry-tty asks the signer on a terminal (law art. 12.2): a
# tmux pane plays the person's terminal, tests/pinentry/ask asks one
# question through module/policy/confirm.c with GPG_TTY set to that pane,
# and this script reads the screen (tmux capture-pane) and types the
# answer (tmux send-keys).  pinentry-tty offers the buttons as
# "[scd]?": s = Sign, c = Cancel, d = Do not sign.
#   s   -> yes, then the "Signed." notice, dismissed with Enter
#   d   -> no
#   c   -> cancelled
# Exit 77 (skip) when tmux or pinentry-tty is missing, but only outside CI.
set -eu

NAME=pinentry-tty
BUILDDIR=${KOLTAMGA_BUILDDIR:-$(pwd)}
ASK=$BUILDDIR/tests/pinentry/ask
PINENTRY=${KT_PINENTRY_TTY:-/usr/bin/pinentry-tty}
SOCK=kt-pinentry-$$
WAIT=${KT_STEP_TIMEOUT:-20}

missing() {
	if [ -n "${CI:-}" ]; then
		echo "FAIL: $NAME: $1 (with CI set a missing tool is a failure)"
		exit 1
	fi
	echo "SKIP: $NAME: $1"
	exit 77
}
command -v tmux >/dev/null 2>&1 || missing "tmux is not installed (scripts/deps.sh installs it)"
[ -x "$PINENTRY" ] || missing "$PINENTRY is not installed (package pinentry-tty)"
[ -x "$ASK" ] || missing "$ASK is not built"
# tmux's server daemonises, and daemon(3) insists on a real /dev/null.
[ -c /dev/null ] || missing "/dev/null is not a character device here, tmux cannot start"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kt-pinentry-tty.XXXXXX")
cleanup() {
	tmux -L "$SOCK" kill-server >/dev/null 2>&1 || true
	rm -rf "$TMP"
}
trap cleanup EXIT

fail() {
	echo "FAIL: $NAME: $1"
	if [ -f "$TMP/screen" ]; then
		echo "--- last screen:"
		cat "$TMP/screen"
	fi
	if [ -f "$TMP/out" ]; then
		echo "--- ask printed:"
		cat "$TMP/out"
	fi
	exit 1
}

screen() {
	tmux -L "$SOCK" capture-pane -p -t kt >"$TMP/screen" 2>/dev/null || true
}

# wait_screen TEXT...: until every TEXT is on the screen.
wait_screen() {
	local i t ok
	for ((i = 0; i < WAIT * 10; i++)); do
		screen
		ok=1
		for t in "$@"; do
			grep -qF -- "$t" "$TMP/screen" || ok=
		done
		[ -n "$ok" ] && return 0
		sleep 0.1
	done
	fail "the screen never showed: $*"
}

# wait_out TEXT: until ask printed TEXT.
wait_out() {
	local i
	for ((i = 0; i < WAIT * 10; i++)); do
		grep -qF -- "$1" "$TMP/out" 2>/dev/null && return 0
		sleep 0.1
	done
	fail "ask never printed: $1"
}

# run CODE: start ask in a fresh pane; the pane's own terminal is GPG_TTY.
run() {
	rm -f "$TMP/out" "$TMP/screen"
	tmux -L "$SOCK" kill-server >/dev/null 2>&1 || true
	# The shell in the pane expands $(tty); everything else is quoted here.
	tmux -L "$SOCK" -f /dev/null new-session -d -s kt -x 120 -y 50 \
		"export GPG_TTY=\$(tty) TERM=xterm LC_CTYPE=C.UTF-8; exec $(printf '%q %q %q' "$ASK" "$PINENTRY" "$1") >$(printf '%q' "$TMP/out") 2>&1" ||
		fail "tmux could not start"
}

key() {
	tmux -L "$SOCK" send-keys -t kt "$1"
}

# 1. Sign: the request is on the screen, s answers yes, the notice follows.
run 4821
wait_screen "Sign this document?" "Code: 4821" "Title: pinentry-tty test document" \
	"Signer: Aibek Testov" "Hello from the pinentry-tty test." "[scd]?"
grep -qF "SHA-256: 0000000000000000" "$TMP/screen" || fail "no digest on the screen"
grep -qE "Requested by: tests/pinentry/ask \(pid [0-9]+\)" "$TMP/screen" || fail "no program on the screen"
key s
wait_out "ANSWER: yes"
wait_screen "Signed." "The signature was created." "Press any key to continue."
key Enter
wait_out "NOTIFIED"
echo "PASS: $NAME: s signs, and the \"Signed.\" notice is shown"

# 2. Do not sign.
run 7305
wait_screen "Code: 7305" "[scd]?"
key d
wait_out "ANSWER: no"
grep -qF NOTIFIED "$TMP/out" && fail "a notice after a refusal"
echo "PASS: $NAME: d refuses"

# 3. Cancel.
run 1190
wait_screen "Code: 1190" "[scd]?"
key c
wait_out "ANSWER: cancelled"
echo "PASS: $NAME: c cancels"
exit 0
