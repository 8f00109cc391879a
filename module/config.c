#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "policy/confirm.h"

#define SYSTEM_CONF "/etc/koltamga/koltamga.conf"
#define MAX_CONF_SIZE (1024 * 1024)

static void config_defaults(struct config *c)
{
	c->min_pin_len = 4;
	c->max_pin_len = 64;
	c->params.scrypt_n = 32768;
	c->params.scrypt_r = 8;
	c->params.scrypt_p = 1;
	c->params.max_tries = 5;
	c->policy = POLICY_CONFIRM;
	c->confirm_backend = CONFIRM_PINENTRY;
	c->confirm_timeout = 60;
	c->secure_heap = 1024 * 1024;
}

void config_free(struct config *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->n_tokens; i++) {
		free(c->tokens[i].path);
		free(c->tokens[i].label);
		free(c->tokens[i].serial);
		free(c->tokens[i].uri);
	}
	free(c->tokens);
	for (size_t i = 0; i < c->n_crl_files; i++)
		free(c->crl_files[i]);
	free(c->crl_files);
	for (size_t i = 0; i < c->n_oids; i++) {
		free(c->oids[i].name);
		free(c->oids[i].oid);
	}
	free(c->oids);
	for (size_t i = 0; i < c->n_keys; i++) {
		free(c->keys[i].id);
		free(c->keys[i].label);
	}
	free(c->keys);
	free(c->confirm_program);
	free(c->audit_log);
	free(c->compromise_dir);
	free(c->consent_file);
	free(c->trust_list);
	free(c->crl_dir);
	free(c->store_dir);
	free(c->source);
	free(c);
}

static char *trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	char *end = s + strlen(s);
	while (end > s && isspace((unsigned char)end[-1]))
		*--end = '\0';
	return s;
}

/* A decimal number in [min, max]; anything else is an error, so a typo
 * never silently becomes 0. */
static bool parse_ulong(const char *s, unsigned long long min, unsigned long long max,
			unsigned long long *out)
{
	if (!*s || !isdigit((unsigned char)*s))
		return false;
	errno = 0;
	char *end;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return false;
	*out = v;
	return true;
}

static CK_RV add_token(struct config *c)
{
	struct config_token *t = realloc(c->tokens, (c->n_tokens + 1) * sizeof(*t));
	if (!t)
		return CKR_HOST_MEMORY;
	c->tokens = t;
	memset(&c->tokens[c->n_tokens], 0, sizeof(c->tokens[0]));
	c->tokens[c->n_tokens].driver = &file_token_ops;
	c->tokens[c->n_tokens].policy = POLICY_DEFAULT;
	c->n_tokens++;
	return CKR_OK;
}

static CK_RV set_path(char **dst, const char *val)
{
	if (val[0] != '/')
		return CKR_ARGUMENTS_BAD;
	free(*dst);
	*dst = strdup(val);
	return *dst ? CKR_OK : CKR_HOST_MEMORY;
}

/* A duration: seconds, or a number with s, m, h or d. */
static bool parse_duration(const char *s, unsigned long *out)
{
	char num[32];
	size_t n = strlen(s);
	unsigned long long v, mul = 1;
	if (n == 0 || n >= sizeof(num))
		return false;
	memcpy(num, s, n + 1);
	switch (num[n - 1]) {
	case 'd':
		mul = 86400;
		break;
	case 'h':
		mul = 3600;
		break;
	case 'm':
		mul = 60;
		break;
	case 's':
		break;
	default:
		n++;
	}
	num[n - 1] = '\0';
	if (!parse_ulong(num, 0, 10ull * 365 * 86400, &v) || v * mul > 10ull * 365 * 86400)
		return false;
	*out = v * mul;
	return true;
}

static CK_RV add_crl_file(struct config *c, const char *val)
{
	if (val[0] != '/')
		return CKR_ARGUMENTS_BAD;
	char **f = realloc(c->crl_files, (c->n_crl_files + 2) * sizeof(*f));
	if (!f)
		return CKR_HOST_MEMORY;
	c->crl_files = f;
	f[c->n_crl_files] = strdup(val);
	if (!f[c->n_crl_files])
		return CKR_HOST_MEMORY;
	f[++c->n_crl_files] = NULL;
	return CKR_OK;
}

static bool parse_policy(const char *val, enum sign_policy *out)
{
	if (strcmp(val, "confirm") == 0)
		*out = POLICY_CONFIRM;
	else if (strcmp(val, "automatic") == 0)
		*out = POLICY_AUTOMATIC;
	else
		return false;
	return true;
}

static bool parse_yes_no(const char *val, bool *out)
{
	if (strcmp(val, "yes") == 0)
		*out = true;
	else if (strcmp(val, "no") == 0)
		*out = false;
	else
		return false;
	return true;
}

static CK_RV set_module_key(struct config *c, const char *key, const char *val, bool *known)
{
	unsigned long long v;
	*known = true;
	if (strcmp(key, "sign_policy") == 0)
		return parse_policy(val, &c->policy) ? CKR_OK : CKR_ARGUMENTS_BAD;
	if (strcmp(key, "strict") == 0)
		return parse_yes_no(val, &c->strict) ? CKR_OK : CKR_ARGUMENTS_BAD;
	if (strcmp(key, "imported_keys") == 0) {
		if (strcmp(val, "allow") != 0 && strcmp(val, "refuse") != 0)
			return CKR_ARGUMENTS_BAD;
		c->refuse_imported = strcmp(val, "refuse") == 0;
		return CKR_OK;
	}
	if (strcmp(key, "secure_heap") == 0) {
		char *end;
		errno = 0;
		unsigned long kib = strtoul(val, &end, 10);
		/* a power of two (OpenSSL's buddy allocator), at most 64 MiB */
		if (errno || *end || val[0] == '-' || kib > 65536 || (kib & (kib - 1)))
			return CKR_ARGUMENTS_BAD;
		c->secure_heap = kib * 1024;
		return CKR_OK;
	}
	if (strcmp(key, "personal_data") == 0) {
		if (strcmp(val, "login") != 0 && strcmp(val, "consent") != 0)
			return CKR_ARGUMENTS_BAD;
		c->personal_consent = strcmp(val, "consent") == 0;
		return CKR_OK;
	}
	if (strcmp(key, "personal_data_certificates") == 0) {
		if (strcmp(val, "private") != 0 && strcmp(val, "public") != 0)
			return CKR_ARGUMENTS_BAD;
		c->public_personal_certs = strcmp(val, "public") == 0;
		return CKR_OK;
	}
	if (strcmp(key, "consent_file") == 0)
		return set_path(&c->consent_file, val);
	if (strcmp(key, "compromise_reports") == 0)
		return set_path(&c->compromise_dir, val);
	if (strcmp(key, "confirm") == 0) {
		if (strcmp(val, "pinentry") == 0)
			c->confirm_backend = CONFIRM_PINENTRY;
		else if (strcmp(val, "command") == 0)
			c->confirm_backend = CONFIRM_COMMAND;
		else if (strcmp(val, "deny") == 0)
			c->confirm_backend = CONFIRM_DENY;
		else
			return CKR_ARGUMENTS_BAD;
		return CKR_OK;
	}
	if (strcmp(key, "confirm_program") == 0)
		return set_path(&c->confirm_program, val);
	if (strcmp(key, "audit_log") == 0)
		return set_path(&c->audit_log, val);
	if (strcmp(key, "confirm_timeout") == 0) {
		if (!parse_ulong(val, 1, 3600, &v))
			return CKR_ARGUMENTS_BAD;
		c->confirm_timeout = v;
		return CKR_OK;
	}
	if (strcmp(key, "store") == 0)
		return set_path(&c->store_dir, val);
	if (strcmp(key, "trust_list") == 0)
		return set_path(&c->trust_list, val);
	if (strcmp(key, "crl_dir") == 0)
		return set_path(&c->crl_dir, val);
	if (strcmp(key, "crl_file") == 0)
		return add_crl_file(c, val);
	if (strcmp(key, "crl_max_age") == 0)
		return parse_duration(val, &c->crl_max_age) ? CKR_OK : CKR_ARGUMENTS_BAD;
	if (strcmp(key, "revocation_unknown") == 0) {
		if (strcmp(val, "refuse") == 0)
			c->allow_unknown_revocation = false;
		else if (strcmp(val, "allow") == 0)
			c->allow_unknown_revocation = true;
		else
			return CKR_ARGUMENTS_BAD;
		return CKR_OK;
	}
	if (strcmp(key, "max_pin_tries") == 0) {
		if (!parse_ulong(val, 1, 100, &v))
			return CKR_ARGUMENTS_BAD;
		c->params.max_tries = v;
	} else if (strcmp(key, "min_pin_len") == 0) {
		if (!parse_ulong(val, 1, 255, &v))
			return CKR_ARGUMENTS_BAD;
		c->min_pin_len = v;
	} else if (strcmp(key, "max_pin_len") == 0) {
		if (!parse_ulong(val, 1, 255, &v))
			return CKR_ARGUMENTS_BAD;
		c->max_pin_len = v;
	} else if (strcmp(key, "scrypt_n") == 0) {
		/* scrypt needs a power of two; below 1024 a PIN is not protected. */
		if (!parse_ulong(val, 1024, 1ull << 24, &v) || (v & (v - 1)))
			return CKR_ARGUMENTS_BAD;
		c->params.scrypt_n = v;
	} else if (strcmp(key, "scrypt_r") == 0) {
		if (!parse_ulong(val, 1, 64, &v))
			return CKR_ARGUMENTS_BAD;
		c->params.scrypt_r = v;
	} else if (strcmp(key, "scrypt_p") == 0) {
		if (!parse_ulong(val, 1, 16, &v))
			return CKR_ARGUMENTS_BAD;
		c->params.scrypt_p = v;
	} else {
		*known = false;
	}
	return CKR_OK;
}

/* [profile]: oid.NAME = DOTTED.OID lines; certattrs checks the names. */
static CK_RV set_profile_key(struct config *c, const char *key, const char *val, bool *known)
{
	*known = strncmp(key, "oid.", 4) == 0 && key[4];
	if (!*known)
		return CKR_OK;
	for (const char *p = val; *p; p++)
		if (!(*p == '.' || (*p >= '0' && *p <= '9')))
			return CKR_ARGUMENTS_BAD;
	if (!*val)
		return CKR_ARGUMENTS_BAD;
	struct config_oid *o = realloc(c->oids, (c->n_oids + 1) * sizeof(*o));
	if (!o)
		return CKR_HOST_MEMORY;
	c->oids = o;
	o[c->n_oids].name = strdup(key + 4);
	o[c->n_oids].oid = strdup(val);
	c->n_oids++;
	if (!o[c->n_oids - 1].name || !o[c->n_oids - 1].oid)
		return CKR_HOST_MEMORY;
	return CKR_OK;
}

static CK_RV set_key_key(struct config_key *k, const char *key, const char *val, bool *known)
{
	*known = true;
	if (strcmp(key, "sign_policy") == 0)
		return parse_policy(val, &k->policy) ? CKR_OK : CKR_ARGUMENTS_BAD;
	if (strcmp(key, "label") == 0) {
		free(k->label);
		k->label = strdup(val);
		return k->label ? CKR_OK : CKR_HOST_MEMORY;
	}
	if (strcmp(key, "id") == 0) {
		size_t n = strlen(val);
		if (n == 0 || n % 2)
			return CKR_ARGUMENTS_BAD;
		free(k->id);
		k->id = malloc(n / 2);
		if (!k->id)
			return CKR_HOST_MEMORY;
		k->id_len = n / 2;
		for (size_t i = 0; i < n / 2; i++) {
			unsigned int byte;
			if (!isxdigit((unsigned char)val[2 * i]) || !isxdigit((unsigned char)val[2 * i + 1]) ||
			    sscanf(val + 2 * i, "%2x", &byte) != 1)
				return CKR_ARGUMENTS_BAD;
			k->id[i] = (unsigned char)byte;
		}
		return CKR_OK;
	}
	*known = false;
	return CKR_OK;
}

static CK_RV add_key(struct config *c)
{
	struct config_key *k = realloc(c->keys, (c->n_keys + 1) * sizeof(*k));
	if (!k)
		return CKR_HOST_MEMORY;
	c->keys = k;
	memset(&c->keys[c->n_keys], 0, sizeof(*k));
	c->n_keys++;
	return CKR_OK;
}

static CK_RV set_token_key(struct config_token *t, const char *key, const char *val, bool *known)
{
	*known = true;
	if (strcmp(key, "sign_policy") == 0)
		return parse_policy(val, &t->policy) ? CKR_OK : CKR_ARGUMENTS_BAD;
	if (strcmp(key, "driver") == 0) {
		if (strcmp(val, "file") == 0)
			t->driver = &file_token_ops;
		else if (strcmp(val, "pkcs11") == 0)
			t->driver = &pkcs11_token_ops;
		else
			return CKR_ARGUMENTS_BAD;
	} else if (strcmp(key, "path") == 0 || strcmp(key, "module") == 0) {
		/* Both name a file: the store, or the device's module. */
		if (val[0] != '/')
			return CKR_ARGUMENTS_BAD;
		free(t->path);
		t->path = strdup(val);
		if (!t->path)
			return CKR_HOST_MEMORY;
	} else if (strcmp(key, "label") == 0 || strcmp(key, "serial") == 0 || strcmp(key, "uri") == 0) {
		char **field = key[0] == 'l' ? &t->label : key[0] == 's' ? &t->serial : &t->uri;
		/* A label is at most 32 bytes and a serial 16 on any token. */
		if (!*val || (key[0] == 'l' && strlen(val) > 32) || (key[0] == 's' && strlen(val) > 16) ||
		    (key[0] == 'u' && strncmp(val, "pkcs11:", 7) != 0))
			return CKR_ARGUMENTS_BAD;
		free(*field);
		*field = strdup(val);
		if (!*field)
			return CKR_HOST_MEMORY;
	} else {
		*known = false;
	}
	return CKR_OK;
}

/* `separators` end lines: '\n' in a file; also ';' in p11-kit's
 * x-init-reserved, which is one line (so a value there cannot hold ';',
 * as an RFC 7512 URI with several attributes does: that needs a file). */
static CK_RV parse(const char *text, const char *origin, const char *separators, struct config **out)
{
	CK_RV rv = CKR_HOST_MEMORY;
	struct config *c = calloc(1, sizeof(*c));
	char *copy = strdup(text);
	unsigned lineno = 0;
	if (!c || !copy)
		goto out;
	config_defaults(c);
	c->source = strdup(origin);
	if (!c->source)
		goto out;

	enum { SEC_MODULE, SEC_TOKEN, SEC_PROFILE, SEC_KEY } section = SEC_MODULE;
	char *save = NULL;
	for (char *line = strtok_r(copy, separators, &save); line; line = strtok_r(NULL, separators, &save)) {
		lineno++;
		char *hash = strchr(line, '#');
		if (hash)
			*hash = '\0';
		line = trim(line);
		if (!*line)
			continue;
		if (line[0] == '[') {
			if (strcmp(line, "[profile]") == 0) {
				section = SEC_PROFILE;
				continue;
			}
			if (strcmp(line, "[key]") == 0) {
				rv = add_key(c);
				if (rv != CKR_OK)
					goto out;
				section = SEC_KEY;
				continue;
			}
			if (strcmp(line, "[token]") != 0) {
				kt_log("%s: line %u: unknown section '%s'", origin, lineno, line);
				rv = CKR_ARGUMENTS_BAD;
				goto out;
			}
			rv = add_token(c);
			if (rv != CKR_OK)
				goto out;
			section = SEC_TOKEN;
			continue;
		}
		char *eq = strchr(line, '=');
		if (!eq) {
			kt_log("%s: line %u: expected 'key = value'", origin, lineno);
			rv = CKR_ARGUMENTS_BAD;
			goto out;
		}
		*eq = '\0';
		char *key = trim(line), *val = trim(eq + 1);
		bool known;
		if (section == SEC_TOKEN)
			rv = set_token_key(&c->tokens[c->n_tokens - 1], key, val, &known);
		else if (section == SEC_PROFILE)
			rv = set_profile_key(c, key, val, &known);
		else if (section == SEC_KEY)
			rv = set_key_key(&c->keys[c->n_keys - 1], key, val, &known);
		else
			rv = set_module_key(c, key, val, &known);
		if (rv == CKR_OK && !known) {
			kt_log("%s: line %u: unknown key '%s'", origin, lineno, key);
			rv = CKR_ARGUMENTS_BAD;
		} else if (rv == CKR_ARGUMENTS_BAD) {
			kt_log("%s: line %u: invalid value for '%s'", origin, lineno, key);
		}
		if (rv != CKR_OK)
			goto out;
	}
	for (size_t i = 0; i < c->n_tokens; i++) {
		const struct config_token *t = &c->tokens[i];
		bool device = t->driver == &pkcs11_token_ops;
		if (!t->path) {
			kt_log("%s: [token] number %zu has no %s", origin, i + 1, device ? "module" : "path");
			rv = CKR_ARGUMENTS_BAD;
			goto out;
		}
		if (!device && (t->label || t->serial || t->uri)) {
			kt_log("%s: [token] number %zu: label, serial and uri are for driver = pkcs11", origin,
			       i + 1);
			rv = CKR_ARGUMENTS_BAD;
			goto out;
		}
	}
	for (size_t i = 0; i < c->n_keys; i++) {
		const struct config_key *k = &c->keys[i];
		if ((!k->id == !k->label) || k->policy == POLICY_DEFAULT) {
			kt_log("%s: [key] number %zu needs one of id or label, and sign_policy", origin, i + 1);
			rv = CKR_ARGUMENTS_BAD;
			goto out;
		}
	}
	if (c->min_pin_len > c->max_pin_len) {
		kt_log("%s: min_pin_len is larger than max_pin_len", origin);
		rv = CKR_ARGUMENTS_BAD;
		goto out;
	}
	*out = c;
	c = NULL;
	rv = CKR_OK;
out:
	free(copy);
	config_free(c);
	return rv;
}

CK_RV config_parse(const char *text, const char *origin, struct config **out)
{
	return parse(text, origin, "\n;", out);
}

static CK_RV read_file(const char *path, char **out)
{
	CK_RV rv = CKR_GENERAL_ERROR;
	char *buf = NULL;
	FILE *f = fopen(path, "re");
	if (!f) {
		kt_log("cannot read configuration %s: %s", path, strerror(errno));
		return CKR_GENERAL_ERROR;
	}
	buf = malloc(MAX_CONF_SIZE + 1);
	if (!buf) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	size_t n = fread(buf, 1, MAX_CONF_SIZE + 1, f);
	if (ferror(f) || n > MAX_CONF_SIZE) {
		kt_log("cannot read configuration %s: %s", path, n > MAX_CONF_SIZE ? "too large" : "read error");
		goto out;
	}
	if (memchr(buf, '\0', n)) {
		kt_log("configuration %s is not a text file", path);
		goto out;
	}
	buf[n] = '\0';
	*out = buf;
	buf = NULL;
	rv = CKR_OK;
out:
	free(buf);
	fclose(f);
	return rv;
}

/* The per-user default store: $XDG_DATA_HOME/koltamga, else
 * ~/.local/share/koltamga (XDG Base Directory specification). */
static CK_RV default_store(struct config *c)
{
	const char *xdg = secure_getenv("XDG_DATA_HOME");
	const char *home = secure_getenv("HOME");
	char path[PATH_MAX];
	int n;
	if (xdg && xdg[0] == '/')
		n = snprintf(path, sizeof(path), "%s/koltamga", xdg);
	else if (home && home[0] == '/')
		n = snprintf(path, sizeof(path), "%s/.local/share/koltamga", home);
	else {
		kt_log("neither XDG_DATA_HOME nor HOME is set: no default token store");
		return CKR_OK;
	}
	if (n < 0 || (size_t)n >= sizeof(path))
		return CKR_GENERAL_ERROR;
	c->store_dir = strdup(path);
	return c->store_dir ? CKR_OK : CKR_HOST_MEMORY;
}

/* $XDG_STATE_HOME/koltamga/NAME, else ~/.local/state/koltamga/NAME (XDG:
 * state that should persist but is not data the user edits). */
static CK_RV default_state_path(char **out, const char *name)
{
	const char *xdg = secure_getenv("XDG_STATE_HOME");
	const char *home = secure_getenv("HOME");
	int n = -1;
	if (xdg && xdg[0] == '/')
		n = asprintf(out, "%s/koltamga/%s", xdg, name);
	else if (home && home[0] == '/')
		n = asprintf(out, "%s/.local/state/koltamga/%s", home, name);
	else
		return CKR_OK; /* no place for it: the policy layer says so when it must write */
	if (n < 0) {
		*out = NULL;
		return CKR_HOST_MEMORY;
	}
	return CKR_OK;
}

CK_RV config_load(const char *reserved, struct config **out)
{
	CK_RV rv;
	char *text = NULL;
	const char *env = secure_getenv("KOLTAMGA_CONF");
	struct config *c = NULL;

	if (env && *env) {
		rv = read_file(env, &text);
		if (rv != CKR_OK)
			return rv;
		rv = parse(text, env, "\n", &c);
		if (rv == CKR_ARGUMENTS_BAD)
			rv = CKR_GENERAL_ERROR; /* the application's arguments were fine */
	} else if (reserved) {
		rv = config_parse(reserved, "x-init-reserved", &c);
	} else if (access(SYSTEM_CONF, F_OK) == 0) {
		rv = read_file(SYSTEM_CONF, &text);
		if (rv != CKR_OK)
			return rv;
		rv = parse(text, SYSTEM_CONF, "\n", &c);
		if (rv == CKR_ARGUMENTS_BAD)
			rv = CKR_GENERAL_ERROR;
	} else {
		rv = config_parse("", "defaults", &c);
	}
	free(text);
	if (rv != CKR_OK)
		return rv;
	/* A configuration that names only [token]s has no store; one that
	 * names nothing gets the per-user store. */
	if (!c->store_dir && c->n_tokens == 0)
		rv = default_store(c);
	if (rv == CKR_OK && !c->audit_log)
		rv = default_state_path(&c->audit_log, "audit.log");
	if (rv == CKR_OK && !c->compromise_dir)
		rv = default_state_path(&c->compromise_dir, "compromise");
	if (rv == CKR_OK && !c->consent_file)
		rv = default_state_path(&c->consent_file, "consents");
	if (rv != CKR_OK) {
		config_free(c);
		return rv;
	}
	kt_debug(KT_DBG_CONFIG, "configuration from %s, store %s, %zu named tokens", c->source,
		 c->store_dir ? c->store_dir : "(none)", c->n_tokens);
	*out = c;
	return CKR_OK;
}

static bool same_bytes(const CK_ATTRIBUTE *a, const void *p, size_t n)
{
	return a && a->ulValueLen == n && (n == 0 || memcmp(a->pValue, p, n) == 0);
}

enum sign_policy config_key_policy(const struct config *c, enum sign_policy token_policy, const CK_ATTRIBUTE *id,
				   const CK_ATTRIBUTE *label)
{
	for (size_t i = 0; i < c->n_keys; i++) {
		const struct config_key *k = &c->keys[i];
		if ((k->id && same_bytes(id, k->id, k->id_len)) ||
		    (k->label && same_bytes(label, k->label, strlen(k->label))))
			return k->policy;
	}
	return token_policy != POLICY_DEFAULT ? token_policy : c->policy;
}
