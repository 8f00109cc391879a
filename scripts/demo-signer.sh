#!/bin/sh
# The demo's stand-in for a person at koltamga's `command` confirmation
# backend: it keeps what the module asked (the request arrives on stdin,
# never in argv or the environment) in the file named by DEMO_SIGNER_SAW,
# so the demo can show it, and answers "yes" (exit 0).  A real deployment
# uses pinentry, or a command that really asks someone.
saw=${DEMO_SIGNER_SAW:?}
{
	echo "=== koltamga asked ($1):"
	cat
	echo
} >>"$saw"
exit 0
