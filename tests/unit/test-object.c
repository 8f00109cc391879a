/* Unit tests of the attribute schema: who may set what, when. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "object.h"

static const struct object_actor user = { .so = false };
static const struct object_actor so = { .so = true };

static struct attrs *tmpl(const CK_ATTRIBUTE *t, CK_ULONG n)
{
	struct attrs *a = NULL;
	assert_int_equal(object_template_read(t, n, &a), CKR_OK);
	return a;
}

static CK_OBJECT_CLASS data_class = CKO_DATA;
static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;

static void test_template_shape(void **state)
{
	struct attrs *a = NULL;
	CK_ATTRIBUTE dup[] = { { CKA_LABEL, "a", 1 }, { CKA_LABEL, "b", 1 } };
	assert_int_equal(object_template_read(dup, 2, &a), CKR_TEMPLATE_INCONSISTENT);
	CK_ATTRIBUTE null_value[] = { { CKA_LABEL, NULL, 4 } };
	assert_int_equal(object_template_read(null_value, 1, &a), CKR_ATTRIBUTE_VALUE_INVALID);
	CK_ATTRIBUTE huge[] = { { CKA_LABEL, "x", (CK_ULONG)1 << 40 } };
	assert_int_equal(object_template_read(huge, 1, &a), CKR_ATTRIBUTE_VALUE_INVALID);
	assert_int_equal(object_template_read(NULL, 3, &a), CKR_ARGUMENTS_BAD);
	assert_int_equal(object_template_read(NULL, 0, &a), CKR_OK);
	attrs_free(a);
}

static void test_data_object_defaults(void **state)
{
	CK_ATTRIBUTE t[] = { { CKA_CLASS, &data_class, sizeof(data_class) }, { CKA_LABEL, "doc", 3 } };
	struct attrs *a = tmpl(t, 2);
	assert_int_equal(object_build(a, ORIGIN_CREATE, 0, 0, 0, &user), CKR_OK);
	assert_false(attrs_bool(a, CKA_TOKEN, true));
	assert_false(attrs_bool(a, CKA_PRIVATE, true));
	assert_true(attrs_bool(a, CKA_MODIFIABLE, false));
	assert_true(attrs_bool(a, CKA_COPYABLE, false));
	assert_true(attrs_bool(a, CKA_DESTROYABLE, false));
	assert_true(attrs_has(a, CKA_APPLICATION));
	assert_true(attrs_has(a, CKA_VALUE));
	/* Key attributes have no business on a data object. */
	assert_false(attrs_has(a, CKA_LOCAL));
	attrs_free(a);
}

static void test_create_errors(void **state)
{
	struct attrs *a;
	/* No class. */
	CK_ATTRIBUTE t1[] = { { CKA_LABEL, "x", 1 } };
	a = tmpl(t1, 1);
	assert_int_equal(object_build(a, ORIGIN_CREATE, 0, 0, 0, &user), CKR_TEMPLATE_INCOMPLETE);
	attrs_free(a);
	/* Unknown class. */
	CK_OBJECT_CLASS weird = 0x1234;
	CK_ATTRIBUTE t2[] = { { CKA_CLASS, &weird, sizeof(weird) } };
	a = tmpl(t2, 1);
	assert_int_equal(object_build(a, ORIGIN_CREATE, 0, 0, 0, &user), CKR_ATTRIBUTE_VALUE_INVALID);
	attrs_free(a);
	/* A CK_BBOOL of the wrong size, and of a value neither true nor false. */
	CK_ULONG wide = 1;
	CK_BYTE two = 2;
	CK_ATTRIBUTE t3[] = { { CKA_CLASS, &data_class, sizeof(data_class) }, { CKA_TOKEN, &wide, sizeof(wide) } };
	a = tmpl(t3, 2);
	assert_int_equal(object_build(a, ORIGIN_CREATE, 0, 0, 0, &user), CKR_ATTRIBUTE_VALUE_INVALID);
	attrs_free(a);
	CK_ATTRIBUTE t4[] = { { CKA_CLASS, &data_class, sizeof(data_class) }, { CKA_TOKEN, &two, 1 } };
	a = tmpl(t4, 2);
	assert_int_equal(object_build(a, ORIGIN_CREATE, 0, 0, 0, &user), CKR_ATTRIBUTE_VALUE_INVALID);
	attrs_free(a);
	/* An attribute no class has, and one another class has. */
	CK_ATTRIBUTE t5[] = { { CKA_CLASS, &data_class, sizeof(data_class) }, { 0x7fff0000UL, "x", 1 } };
	a = tmpl(t5, 2);
	assert_int_equal(object_build(a, ORIGIN_CREATE, 0, 0, 0, &user), CKR_ATTRIBUTE_TYPE_INVALID);
	attrs_free(a);
	CK_ATTRIBUTE t6[] = { { CKA_CLASS, &data_class, sizeof(data_class) }, { CKA_SIGN, &yes, 1 } };
	a = tmpl(t6, 2);
	assert_int_equal(object_build(a, ORIGIN_CREATE, 0, 0, 0, &user), CKR_TEMPLATE_INCONSISTENT);
	attrs_free(a);
	/* Dates are 8 digits or nothing. */
	CK_OBJECT_CLASS cert = CKO_CERTIFICATE;
	CK_ATTRIBUTE t7[] = { { CKA_CLASS, &cert, sizeof(cert) }, { CKA_START_DATE, "2026", 4 } };
	a = tmpl(t7, 2);
	assert_int_equal(object_build(a, ORIGIN_CREATE, 0, 0, 0, &user), CKR_ATTRIBUTE_VALUE_INVALID);
	attrs_free(a);
}

static void test_certificate_needs_der(void **state)
{
	CK_OBJECT_CLASS cert = CKO_CERTIFICATE;
	CK_CERTIFICATE_TYPE x509 = CKC_X_509;
	CK_ATTRIBUTE t[] = { { CKA_CLASS, &cert, sizeof(cert) },
			     { CKA_CERTIFICATE_TYPE, &x509, sizeof(x509) },
			     { CKA_VALUE, "\x30\x82\x01\x00garbage", 11 } };
	struct attrs *a = tmpl(t, 3);
	assert_int_equal(object_build(a, ORIGIN_CREATE, 0, 0, 0, &user), CKR_ATTRIBUTE_VALUE_INVALID);
	attrs_free(a);
	/* Without a value it is incomplete. */
	a = tmpl(t, 2);
	assert_int_equal(object_build(a, ORIGIN_CREATE, 0, 0, 0, &user), CKR_TEMPLATE_INCOMPLETE);
	attrs_free(a);
	/* CKA_TRUSTED true is the SO's to set. */
	CK_ATTRIBUTE tr[] = { { CKA_CLASS, &cert, sizeof(cert) },
			      { CKA_CERTIFICATE_TYPE, &x509, sizeof(x509) },
			      { CKA_TRUSTED, &yes, 1 },
			      { CKA_VALUE, "x", 1 } };
	a = tmpl(tr, 4);
	assert_int_equal(object_build(a, ORIGIN_CREATE, 0, 0, 0, &user), CKR_ATTRIBUTE_READ_ONLY);
	attrs_free(a);
	a = tmpl(tr, 4);
	/* ... and then the DER is still checked. */
	assert_int_equal(object_build(a, ORIGIN_CREATE, 0, 0, 0, &so), CKR_ATTRIBUTE_VALUE_INVALID);
	attrs_free(a);
}

static struct attrs *generated_secret_key(bool sensitive, bool extractable)
{
	CK_ATTRIBUTE t[] = { { CKA_SENSITIVE, sensitive ? &yes : &no, 1 },
			     { CKA_EXTRACTABLE, extractable ? &yes : &no, 1 } };
	struct attrs *a = tmpl(t, 2);
	assert_int_equal(object_build(a, ORIGIN_GENERATE, CKO_SECRET_KEY, CKK_AES, CKM_AES_KEY_GEN, &user),
			 CKR_OK);
	attrs_set(a, CKA_VALUE, "0123456789abcdef", 16);
	return a;
}

static void test_generated_key_honesty(void **state)
{
	struct attrs *a = generated_secret_key(true, false);
	assert_true(attrs_bool(a, CKA_LOCAL, false));
	assert_true(attrs_bool(a, CKA_ALWAYS_SENSITIVE, false));
	assert_true(attrs_bool(a, CKA_NEVER_EXTRACTABLE, false));
	assert_true(attrs_bool(a, CKA_PRIVATE, false));
	CK_ULONG m;
	assert_true(attrs_get_ulong(a, CKA_KEY_GEN_MECHANISM, &m));
	assert_int_equal(m, CKM_AES_KEY_GEN);
	attrs_free(a);

	a = generated_secret_key(false, true);
	assert_false(attrs_bool(a, CKA_ALWAYS_SENSITIVE, true));
	assert_false(attrs_bool(a, CKA_NEVER_EXTRACTABLE, true));
	attrs_free(a);

	/* Generation may not claim what only the module decides. */
	CK_ATTRIBUTE t[] = { { CKA_LOCAL, &no, 1 } };
	a = tmpl(t, 1);
	assert_int_equal(object_build(a, ORIGIN_GENERATE, CKO_SECRET_KEY, CKK_AES, CKM_AES_KEY_GEN, &user),
			 CKR_ATTRIBUTE_READ_ONLY);
	attrs_free(a);
	/* Nor contradict the mechanism. */
	CK_OBJECT_CLASS priv = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE t2[] = { { CKA_CLASS, &priv, sizeof(priv) } };
	a = tmpl(t2, 1);
	assert_int_equal(object_build(a, ORIGIN_GENERATE, CKO_SECRET_KEY, CKK_AES, CKM_AES_KEY_GEN, &user),
			 CKR_TEMPLATE_INCONSISTENT);
	attrs_free(a);
}

static void test_modify_rules(void **state)
{
	struct attrs *a = generated_secret_key(false, true), *t;

	/* sensitive: false -> true only */
	CK_ATTRIBUTE s_on[] = { { CKA_SENSITIVE, &yes, 1 } };
	t = tmpl(s_on, 1);
	assert_int_equal(object_modify(a, t, false, &user), CKR_OK);
	attrs_free(t);
	CK_ATTRIBUTE s_off[] = { { CKA_SENSITIVE, &no, 1 } };
	t = tmpl(s_off, 1);
	assert_int_equal(object_modify(a, t, false, &user), CKR_ATTRIBUTE_READ_ONLY);
	attrs_free(t);
	/* ... and "always sensitive" does not become true after the fact. */
	assert_false(attrs_bool(a, CKA_ALWAYS_SENSITIVE, true));

	/* extractable: true -> false only */
	CK_ATTRIBUTE x_off[] = { { CKA_EXTRACTABLE, &no, 1 } };
	t = tmpl(x_off, 1);
	assert_int_equal(object_modify(a, t, false, &user), CKR_OK);
	attrs_free(t);
	CK_ATTRIBUTE x_on[] = { { CKA_EXTRACTABLE, &yes, 1 } };
	t = tmpl(x_on, 1);
	assert_int_equal(object_modify(a, t, false, &user), CKR_ATTRIBUTE_READ_ONLY);
	attrs_free(t);

	/* read-only attributes */
	CK_KEY_TYPE other = CKK_GENERIC_SECRET;
	CK_ATTRIBUTE kt[] = { { CKA_KEY_TYPE, &other, sizeof(other) } };
	t = tmpl(kt, 1);
	assert_int_equal(object_modify(a, t, false, &user), CKR_ATTRIBUTE_READ_ONLY);
	attrs_free(t);
	/* CKA_TOKEN only changes on a copy */
	CK_ATTRIBUTE tok[] = { { CKA_TOKEN, &yes, 1 } };
	t = tmpl(tok, 1);
	assert_int_equal(object_modify(a, t, false, &user), CKR_ATTRIBUTE_READ_ONLY);
	assert_int_equal(object_modify(a, t, true, &user), CKR_OK);
	attrs_free(t);

	/* A failed change changes nothing, even the valid part. */
	CK_ATTRIBUTE mixed[] = { { CKA_LABEL, "new", 3 }, { CKA_EXTRACTABLE, &yes, 1 } };
	t = tmpl(mixed, 2);
	assert_int_equal(object_modify(a, t, false, &user), CKR_ATTRIBUTE_READ_ONLY);
	assert_int_equal(attrs_get(a, CKA_LABEL)->ulValueLen, 0);
	attrs_free(t);

	/* Not modifiable: nothing changes through C_SetAttributeValue. */
	CK_ATTRIBUTE lock[] = { { CKA_MODIFIABLE, &no, 1 } };
	attrs_set_bool(a, CKA_MODIFIABLE, false);
	CK_ATTRIBUTE label[] = { { CKA_LABEL, "x", 1 } };
	t = tmpl(label, 1);
	assert_int_equal(object_modify(a, t, false, &user), CKR_ATTRIBUTE_READ_ONLY);
	attrs_free(t);
	(void)lock;
	attrs_free(a);
}

static void test_get_attributes(void **state)
{
	struct attrs *a = generated_secret_key(true, false);
	CK_BYTE buf[64];
	CK_ULONG cls;
	CK_ATTRIBUTE t[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_VALUE, buf, sizeof(buf) },
		{ CKA_MODULUS, buf, sizeof(buf) },
		{ CKA_LABEL, NULL, 0 },
	};
	CK_RV rv = object_get_attributes(a, true, t, 4);
	assert_true(rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID);
	assert_int_equal(cls, CKO_SECRET_KEY);
	assert_int_equal(t[1].ulValueLen, CK_UNAVAILABLE_INFORMATION);
	assert_int_equal(t[2].ulValueLen, CK_UNAVAILABLE_INFORMATION);
	assert_int_equal(t[3].ulValueLen, 0);

	/* Short buffer. */
	attrs_set(a, CKA_LABEL, "a long label", 12);
	CK_ATTRIBUTE s[] = { { CKA_LABEL, buf, 4 } };
	assert_int_equal(object_get_attributes(a, true, s, 1), CKR_BUFFER_TOO_SMALL);
	assert_int_equal(s[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
	/* Length query, then the value. */
	s[0].pValue = NULL;
	assert_int_equal(object_get_attributes(a, true, s, 1), CKR_OK);
	assert_int_equal(s[0].ulValueLen, 12);
	s[0].pValue = buf;
	assert_int_equal(object_get_attributes(a, true, s, 1), CKR_OK);
	assert_memory_equal(buf, "a long label", 12);
	attrs_free(a);

	/* An extractable, non-sensitive key reveals its value. */
	a = generated_secret_key(false, true);
	CK_ATTRIBUTE v[] = { { CKA_VALUE, buf, sizeof(buf) } };
	assert_int_equal(object_get_attributes(a, true, v, 1), CKR_OK);
	assert_int_equal(v[0].ulValueLen, 16);
	/* ... unless its sealed value is not loaded (logged out). */
	attrs_remove(a, CKA_VALUE);
	v[0].ulValueLen = sizeof(buf);
	assert_int_equal(object_get_attributes(a, false, v, 1), CKR_ATTRIBUTE_SENSITIVE);
	attrs_free(a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_template_shape),
		cmocka_unit_test(test_data_object_defaults),
		cmocka_unit_test(test_create_errors),
		cmocka_unit_test(test_certificate_needs_der),
		cmocka_unit_test(test_generated_key_honesty),
		cmocka_unit_test(test_modify_rules),
		cmocka_unit_test(test_get_attributes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
