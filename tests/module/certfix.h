/*
 * Helpers for module tests that need more than fixture.c gives: extra
 * configuration lines (trust list, CRLs, ...) on top of the fixture's
 * koltamga.conf, reinitialising the module under another configuration, and
 * capturing what the module writes to stderr (its refusal lines).
 */
#ifndef KOLTAMGA_TEST_CERTFIX_H
#define KOLTAMGA_TEST_CERTFIX_H

#include "fixture.h"

/* Rewrite this test's configuration file (fx.conf) as the fixture's own text
 * followed by `extra` (whole lines, may be "" or NULL).  The fixture's text
 * is remembered on the first call for a temporary directory, so repeated
 * calls replace the extra lines instead of piling them up.  0 on success. */
int certfix_conf(const char *extra);

/* C_Finalize, certfix_conf(extra), C_Initialize: the same token store seen
 * under another configuration.  Returns C_Initialize's answer.  Session and
 * object handles (and slot ids) of before are gone. */
CK_RV certfix_reinit(const char *extra);

/* A whole text file (the audit log, what a scripted signer was asked), ""
 * when it does not exist; free it.  And how often needle occurs in hay. */
char *certfix_read(const char *path);
int certfix_count(const char *hay, const char *needle);

/* Send fd 2 to a file in fx.dir until certfix_stderr_end(), which returns
 * what was written (NUL-terminated, free it) and also copies it to the real
 * stderr so it stays in the test log. */
void certfix_stderr_begin(void);
char *certfix_stderr_end(void);

#endif
