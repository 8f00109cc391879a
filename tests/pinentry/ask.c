/*
 * Asks one signature question through module/policy/confirm.c, as the
 * module would, for tests/clients/pinentry-tty.sh: the real pinentry-tty
 * then draws on the terminal named by GPG_TTY, and the script answers it
 * with tmux send-keys.
 *   ask PINENTRY CODE   prints "ANSWER: yes|no|cancelled (why)"; after a
 *                       yes it shows the "signed" notice, then "NOTIFIED"
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "policy/confirm.h"

int main(int argc, char **argv)
{
	static const char doc[] = "Hello from the pinentry-tty test.\nSecond line of the document.\n";
	char why[256] = "";

	if (argc != 3) {
		fprintf(stderr, "usage: ask PINENTRY CODE\n");
		return 2;
	}
	kt_debug_init();
	struct confirm_config cfg = { .backend = CONFIRM_PINENTRY, .program = argv[1], .timeout = 30 };
	struct confirm_request req = {
		.title = "pinentry-tty test document",
		.signer = "Aibek Testov",
		.certificate = "koltamga test CA, serial 01",
		.key_label = "test key",
		.mechanism = "ECDSA with SHA-256",
		.program = "tests/pinentry/ask",
		.pid = (long)getpid(),
		.size = sizeof(doc) - 1,
		.sha256_hex = "0000000000000000000000000000000000000000000000000000000000000000",
		.code = argv[2],
		.content = (const unsigned char *)doc,
		.content_len = sizeof(doc) - 1,
	};
	enum confirm_answer a = confirm_ask(&cfg, &req, why, sizeof(why));
	printf("ANSWER: %s (%s)\n", a == CONFIRM_YES ? "yes" : a == CONFIRM_NO ? "no" : "cancelled", why);
	fflush(stdout);
	if (a == CONFIRM_YES) {
		confirm_notify(&cfg, &req);
		printf("NOTIFIED\n");
	}
	return 0;
}
