#!/bin/bash
# A scripted stand-in for the `command` confirmation backend
# (module/policy/confirm.c).  Its behaviour comes from the file named by
# KT_FAKE_CONFIRM (the tests write it; it never carries request data), lines
# of KEY=VALUE:
#   out=FILE     append "=== <word>" (its one argument: confirm or notify),
#                then everything read from stdin
#   code=N       exit status for "confirm" (0 yes, 1 no, other: cancelled)
#   mode=sleep   read stdin, then never answer (the timeout case)
#   mode=signal  read stdin, then die by SIGKILL
#   mode=noread  answer with `code` without reading stdin
#   mode=chatty  write a lot to stdout and stderr first (must not block)
#   mode=fromstdin  exit 0/1/2 for "ANSWER=yes|no|cancel" in the request
#   gate=FILE    after reading stdin, wait until FILE exists (a signer who
#                takes their time; the test decides when they answer)
#   pin=TEXT     the PIN the signer types when asked "confirm-pin" (a key
#                whose PIN a device checks): printed as "PIN TEXT" with a
#                yes; none configured: a yes without a PIN
# "notify" always exits 0.  Like fake-pinentry, it also appends its
# /proc/$$/cmdline to out.argv and /proc/$$/environ to out.environ.
set -u
out=/dev/null code=0 mode=plain gate= pin=
while IFS='=' read -r k v; do
	case $k in
	pin) pin=$v ;;
	out) out=$v ;;
	code) code=$v ;;
	mode) mode=$v ;;
	gate) gate=$v ;;
	esac
done <"${KT_FAKE_CONFIRM:?}"

tr '\0' '\n' </proc/$$/cmdline >>"$out.argv"
tr '\0' '\n' </proc/$$/environ >>"$out.environ"

if [ "$mode" = chatty ]; then
	head -c 300000 /dev/zero | tr '\0' x
	head -c 300000 /dev/zero | tr '\0' y >&2
fi
if [ "$mode" = noread ]; then
	exit "$code"
fi
input=$(cat; echo .)
input=${input%.}
printf '=== %s\n%s' "${1:-}" "$input" >>"$out"

[ "${1:-}" = notify ] && exit 0
if [ -n "$gate" ]; then
	while [ ! -e "$gate" ]; do sleep 0.05; done
fi
case $mode in
sleep) exec sleep 1000 ;;
signal) kill -KILL $$ ;;
fromstdin)
	case $input in
	*ANSWER=yes*) exit 0 ;;
	*ANSWER=no*) exit 1 ;;
	*) exit 2 ;;
	esac
	;;
esac
if [ "${1:-}" = confirm-pin ] && [ "$code" = 0 ] && [ -n "$pin" ]; then
	printf 'PIN %s\n' "$pin"
fi
exit "$code"
