/* Unit tests of configuration parsing: every error is an error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <fcntl.h>
#include <unistd.h>

#include "config.h"
#include "policy/confirm.h"

static void test_defaults(void **state)
{
	struct config *c;
	assert_int_equal(config_parse("", "test", &c), CKR_OK);
	assert_null(c->store_dir);
	assert_int_equal(c->params.max_tries, 5);
	assert_int_equal(c->params.scrypt_n, 32768);
	assert_int_equal(c->params.scrypt_r, 8);
	assert_int_equal(c->params.scrypt_p, 1);
	assert_int_equal(c->min_pin_len, 4);
	assert_int_equal(c->n_tokens, 0);
	config_free(c);
}

static void test_full_file(void **state)
{
	struct config *c;
	const char *text = "# a comment\n"
			   "store = /var/lib/kt   # trailing comment\n"
			   "max_pin_tries = 3\n"
			   "scrypt_n = 1024\n"
			   "min_pin_len=6\n"
			   "[token]\n"
			   "driver = file\n"
			   "path = /srv/seal.ktok\n"
			   "[token]\n"
			   "path = /srv/two.ktok\n";
	assert_int_equal(config_parse(text, "test", &c), CKR_OK);
	assert_string_equal(c->store_dir, "/var/lib/kt");
	assert_int_equal(c->params.max_tries, 3);
	assert_int_equal(c->params.scrypt_n, 1024);
	assert_int_equal(c->min_pin_len, 6);
	assert_int_equal(c->n_tokens, 2);
	assert_string_equal(c->tokens[0].path, "/srv/seal.ktok");
	assert_ptr_equal(c->tokens[0].driver, &file_token_ops);
	assert_string_equal(c->tokens[1].path, "/srv/two.ktok");
	config_free(c);
}

static void test_reserved_string_semicolons(void **state)
{
	struct config *c;
	assert_int_equal(config_parse("store=/tmp/x; scrypt_n=2048", "x-init-reserved", &c), CKR_OK);
	assert_string_equal(c->store_dir, "/tmp/x");
	assert_int_equal(c->params.scrypt_n, 2048);
	config_free(c);
}

static void test_certificate_checks(void **state)
{
	struct config *c;
	const char *text = "trust_list = /etc/koltamga/trust.conf\n"
			   "crl_dir = /var/lib/koltamga/crl\n"
			   "crl_file = /a.crl\n"
			   "crl_file = /b.crl\n"
			   "crl_max_age = 7d\n"
			   "revocation_unknown = allow\n"
			   "[profile]\n"
			   "oid.personal_id = 1.2.3.4\n";
	assert_int_equal(config_parse(text, "test", &c), CKR_OK);
	assert_string_equal(c->trust_list, "/etc/koltamga/trust.conf");
	assert_string_equal(c->crl_dir, "/var/lib/koltamga/crl");
	assert_int_equal(c->n_crl_files, 2);
	assert_string_equal(c->crl_files[1], "/b.crl");
	assert_null(c->crl_files[2]);
	assert_int_equal(c->crl_max_age, 7 * 86400);
	assert_true(c->allow_unknown_revocation);
	assert_int_equal(c->n_oids, 1);
	assert_string_equal(c->oids[0].name, "personal_id");
	assert_string_equal(c->oids[0].oid, "1.2.3.4");
	config_free(c);

	static const struct {
		const char *text;
		unsigned long seconds;
	} ages[] = { { "crl_max_age = 90", 90 }, { "crl_max_age = 90s", 90 }, { "crl_max_age = 2m", 120 },
		     { "crl_max_age = 3h", 10800 }, { "crl_max_age = 0", 0 } };
	for (size_t i = 0; i < sizeof(ages) / sizeof(ages[0]); i++) {
		assert_int_equal(config_parse(ages[i].text, "test", &c), CKR_OK);
		assert_int_equal(c->crl_max_age, ages[i].seconds);
		config_free(c);
	}
	/* Refusing an unknown status is the default. */
	assert_int_equal(config_parse("", "test", &c), CKR_OK);
	assert_false(c->allow_unknown_revocation);
	config_free(c);
}

static void test_signing_policy(void **state)
{
	struct config *c;
	const char *text = "sign_policy = automatic\n"
			   "strict = yes\n"
			   "confirm = command\n"
			   "confirm_program = /usr/bin/true\n"
			   "confirm_timeout = 5\n"
			   "audit_log = /var/log/kt.log\n"
			   "[token]\npath = /t.ktok\nsign_policy = confirm\n"
			   "[key]\nid = 0A1b\nsign_policy = confirm\n"
			   "[key]\nlabel = seal key\nsign_policy = automatic\n";
	assert_int_equal(config_parse(text, "test", &c), CKR_OK);
	assert_int_equal(c->policy, POLICY_AUTOMATIC);
	assert_true(c->strict);
	assert_int_equal(c->confirm_backend, CONFIRM_COMMAND);
	assert_string_equal(c->confirm_program, "/usr/bin/true");
	assert_int_equal(c->confirm_timeout, 5);
	assert_string_equal(c->audit_log, "/var/log/kt.log");
	assert_int_equal(c->tokens[0].policy, POLICY_CONFIRM);
	assert_int_equal(c->n_keys, 2);
	assert_int_equal(c->keys[0].id_len, 2);
	assert_memory_equal(c->keys[0].id, "\x0a\x1b", 2);
	assert_string_equal(c->keys[1].label, "seal key");
	assert_int_equal(c->keys[1].policy, POLICY_AUTOMATIC);
	config_free(c);

	/* Defaults: confirm through pinentry, a minute to answer. */
	assert_int_equal(config_parse("", "test", &c), CKR_OK);
	assert_int_equal(c->policy, POLICY_CONFIRM);
	assert_int_equal(c->confirm_backend, CONFIRM_PINENTRY);
	assert_int_equal(c->confirm_timeout, 60);
	assert_false(c->strict);
	config_free(c);
}

static void test_errors(void **state)
{
	static const char *bad[] = {
		"unknown = 1",
		"store = relative/path",
		"max_pin_tries = 0",
		"max_pin_tries = 101",
		"max_pin_tries = 5x",
		"max_pin_tries = -1",
		"max_pin_tries =",
		"scrypt_n = 3000",  /* not a power of two */
		"scrypt_n = 512",   /* too weak */
		"scrypt_n = 99999999999999999999999",
		"no equals sign",
		"[tokens]",
		"[token]\ndriver = tpm\npath = /x",
		"[token]\ndriver = file",  /* no path */
		"[token]\npath = x.ktok", /* relative */
		"[token]\nstore = /x",     /* module key in a token section */
		"min_pin_len = 10\nmax_pin_len = 5",
		"trust_list = relative.conf",
		"crl_file = x.crl",
		"crl_max_age = 7w",
		"crl_max_age = d",
		"crl_max_age = 99999999999d",
		"revocation_unknown = maybe",
		"[profile]\noid.x = 1.2.a",
		"[profile]\noid.x =",
		"[profile]\nname = 1.2.3",
		"[profile]\noid. = 1.2.3",
		"sign_policy = sometimes",
		"strict = maybe",
		"confirm = gui",
		"confirm_timeout = 0",
		"confirm_program = pinentry",
		"[key]\nsign_policy = automatic",
		"[key]\nid = 01\nlabel = x\nsign_policy = automatic",
		"[key]\nid = 0g\nsign_policy = automatic",
		"[key]\nid = 012\nsign_policy = automatic",
		"[key]\nid = 01",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct config *c = NULL;
		CK_RV rv = config_parse(bad[i], "test", &c);
		if (rv == CKR_OK)
			fail_msg("accepted bad configuration: %s", bad[i]);
		assert_int_equal(rv, CKR_ARGUMENTS_BAD);
		assert_null(c);
	}
}

static void test_load_env_file(void **state)
{
	char path[] = "/tmp/kt-conf-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	const char *text = "store = /tmp/kt-store-test\n";
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);

	struct config *c;
	setenv("KOLTAMGA_CONF", path, 1);
	/* The environment wins over pReserved. */
	assert_int_equal(config_load("store = /elsewhere", &c), CKR_OK);
	assert_string_equal(c->store_dir, "/tmp/kt-store-test");
	config_free(c);

	/* A broken file is a general error, not the application's bad args. */
	fd = open(path, O_WRONLY | O_TRUNC);
	assert_int_equal(write(fd, "bogus\n", 6), 6);
	close(fd);
	assert_int_equal(config_load(NULL, &c), CKR_GENERAL_ERROR);

	unlink(path);
	assert_int_equal(config_load(NULL, &c), CKR_GENERAL_ERROR);
	unsetenv("KOLTAMGA_CONF");

	/* pReserved when there is no KOLTAMGA_CONF; errors there are the
	 * caller's arguments. */
	assert_int_equal(config_load("store = /from/reserved", &c), CKR_OK);
	assert_string_equal(c->store_dir, "/from/reserved");
	config_free(c);
	assert_int_equal(config_load("store = nope", &c), CKR_ARGUMENTS_BAD);
}

static void test_default_store_from_xdg(void **state)
{
	struct config *c;
	unsetenv("KOLTAMGA_CONF");
	setenv("XDG_DATA_HOME", "/tmp/xdg-test", 1);
	if (access("/etc/koltamga/koltamga.conf", F_OK) == 0)
		skip();
	assert_int_equal(config_load(NULL, &c), CKR_OK);
	assert_string_equal(c->store_dir, "/tmp/xdg-test/koltamga");
	config_free(c);
	unsetenv("XDG_DATA_HOME");
	setenv("HOME", "/home/someone", 1);
	assert_int_equal(config_load(NULL, &c), CKR_OK);
	assert_string_equal(c->store_dir, "/home/someone/.local/share/koltamga");
	config_free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_full_file),
		cmocka_unit_test(test_reserved_string_semicolons),
		cmocka_unit_test(test_certificate_checks),
		cmocka_unit_test(test_signing_policy),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_load_env_file),
		cmocka_unit_test(test_default_store_from_xdg),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
