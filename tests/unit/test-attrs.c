/* Unit tests of the attribute set: ordering, replacement, typed reads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "attrs.h"
#include "token.h"

static void test_set_get_replace(void **state)
{
	struct attrs *a = attrs_new();
	assert_non_null(a);
	assert_int_equal(attrs_set(a, CKA_LABEL, "abc", 3), CKR_OK);
	assert_int_equal(attrs_set_ulong(a, CKA_CLASS, CKO_DATA), CKR_OK);
	assert_int_equal(attrs_set_bool(a, CKA_TOKEN, true), CKR_OK);
	assert_int_equal(attrs_count(a), 3);
	/* Sorted by type whatever the insertion order. */
	assert_int_equal(attrs_at(a, 0)->type, CKA_CLASS);
	assert_int_equal(attrs_at(a, 1)->type, CKA_TOKEN);
	assert_int_equal(attrs_at(a, 2)->type, CKA_LABEL);
	assert_null(attrs_at(a, 3));

	assert_int_equal(attrs_set(a, CKA_LABEL, "longer label", 12), CKR_OK);
	assert_int_equal(attrs_count(a), 3);
	const CK_ATTRIBUTE *l = attrs_get(a, CKA_LABEL);
	assert_non_null(l);
	assert_int_equal(l->ulValueLen, 12);
	assert_memory_equal(l->pValue, "longer label", 12);

	attrs_remove(a, CKA_TOKEN);
	attrs_remove(a, CKA_TOKEN); /* removing what is absent is harmless */
	assert_false(attrs_has(a, CKA_TOKEN));
	assert_int_equal(attrs_count(a), 2);
	attrs_free(a);
}

static void test_typed_reads(void **state)
{
	struct attrs *a = attrs_new();
	CK_BBOOL b;
	CK_ULONG u;
	assert_false(attrs_get_bool(a, CKA_TOKEN, &b));
	assert_true(attrs_bool(a, CKA_TOKEN, true));
	assert_false(attrs_bool(a, CKA_TOKEN, false));
	/* A CK_BBOOL of the wrong size is not a boolean. */
	CK_ULONG wide = 1;
	attrs_set(a, CKA_TOKEN, &wide, sizeof(wide));
	assert_false(attrs_get_bool(a, CKA_TOKEN, &b));
	assert_false(attrs_bool(a, CKA_TOKEN, false));
	attrs_set_bool(a, CKA_TOKEN, true);
	assert_true(attrs_get_bool(a, CKA_TOKEN, &b));
	assert_int_equal(b, CK_TRUE);
	/* A CK_ULONG of the wrong size is rejected too. */
	attrs_set(a, CKA_CLASS, "x", 1);
	assert_false(attrs_get_ulong(a, CKA_CLASS, &u));
	attrs_set_ulong(a, CKA_CLASS, CKO_CERTIFICATE);
	assert_true(attrs_get_ulong(a, CKA_CLASS, &u));
	assert_int_equal(u, CKO_CERTIFICATE);
	attrs_free(a);
}

static void test_empty_value_and_match(void **state)
{
	struct attrs *a = attrs_new();
	assert_int_equal(attrs_set(a, CKA_ID, NULL, 0), CKR_OK);
	const CK_ATTRIBUTE *id = attrs_get(a, CKA_ID);
	assert_non_null(id);
	assert_non_null(id->pValue);
	assert_int_equal(id->ulValueLen, 0);

	CK_ATTRIBUTE want = { CKA_ID, NULL, 0 };
	assert_true(attrs_match(a, &want));
	want.pValue = "a";
	want.ulValueLen = 1;
	assert_false(attrs_match(a, &want));
	CK_ATTRIBUTE absent = { CKA_LABEL, NULL, 0 };
	assert_false(attrs_match(a, &absent));
	attrs_free(a);
}

static void test_dup_is_deep(void **state)
{
	struct attrs *a = attrs_new();
	attrs_set(a, CKA_VALUE, "secret", 6);
	struct attrs *d = attrs_dup(a);
	assert_non_null(d);
	attrs_set(a, CKA_VALUE, "other!", 6);
	assert_memory_equal(attrs_get(d, CKA_VALUE)->pValue, "secret", 6);
	assert_ptr_not_equal(attrs_get(d, CKA_VALUE)->pValue, attrs_get(a, CKA_VALUE)->pValue);
	attrs_free(a);
	attrs_free(d);
	attrs_free(NULL);
}

static void test_many_attributes(void **state)
{
	struct attrs *a = attrs_new();
	/* Insert in descending order: exercises every memmove path. */
	for (CK_ULONG t = 200; t > 0; t--)
		assert_int_equal(attrs_set_ulong(a, t, t * 3), CKR_OK);
	assert_int_equal(attrs_count(a), 200);
	for (CK_ULONG t = 1; t <= 200; t++) {
		CK_ULONG v;
		assert_true(attrs_get_ulong(a, t, &v));
		assert_int_equal(v, t * 3);
	}
	assert_null(attrs_get(a, 201));
	attrs_free(a);
}

static void test_secret_classification(void **state)
{
	assert_true(token_attr_is_secret(CKO_PRIVATE_KEY, CKA_PRIVATE_EXPONENT));
	assert_true(token_attr_is_secret(CKO_PRIVATE_KEY, CKA_VALUE));
	assert_true(token_attr_is_secret(CKO_SECRET_KEY, CKA_VALUE));
	assert_false(token_attr_is_secret(CKO_PRIVATE_KEY, CKA_MODULUS));
	assert_false(token_attr_is_secret(CKO_DATA, CKA_VALUE));
	assert_false(token_attr_is_secret(CKO_CERTIFICATE, CKA_VALUE));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_set_get_replace),
		cmocka_unit_test(test_typed_reads),
		cmocka_unit_test(test_empty_value_and_match),
		cmocka_unit_test(test_dup_is_deep),
		cmocka_unit_test(test_many_attributes),
		cmocka_unit_test(test_secret_classification),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
