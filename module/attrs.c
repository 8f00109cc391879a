#include "attrs.h"
#include "token.h"

#include <stdlib.h>
#include <string.h>

struct attrs {
	CK_ATTRIBUTE *v; /* sorted by type, no duplicates */
	size_t n;
	size_t cap;
};

struct attrs *attrs_new(void)
{
	return calloc(1, sizeof(struct attrs));
}

void attrs_free(struct attrs *a)
{
	if (!a)
		return;
	for (size_t i = 0; i < a->n; i++)
		kt_free_secret(a->v[i].pValue, a->v[i].ulValueLen);
	free(a->v);
	free(a);
}

struct attrs *attrs_dup(const struct attrs *a)
{
	struct attrs *d = attrs_new();
	if (!d)
		return NULL;
	for (size_t i = 0; i < a->n; i++) {
		if (attrs_set(d, a->v[i].type, a->v[i].pValue, a->v[i].ulValueLen) != CKR_OK) {
			attrs_free(d);
			return NULL;
		}
	}
	return d;
}

size_t attrs_count(const struct attrs *a)
{
	return a->n;
}

const CK_ATTRIBUTE *attrs_at(const struct attrs *a, size_t i)
{
	return i < a->n ? &a->v[i] : NULL;
}

/* Index of `type`, or of where it would go (with *found false). */
static size_t attrs_find(const struct attrs *a, CK_ATTRIBUTE_TYPE type, bool *found)
{
	size_t lo = 0, hi = a->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (a->v[mid].type == type) {
			*found = true;
			return mid;
		}
		if (a->v[mid].type < type)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = false;
	return lo;
}

const CK_ATTRIBUTE *attrs_get(const struct attrs *a, CK_ATTRIBUTE_TYPE type)
{
	bool found;
	size_t i = attrs_find(a, type, &found);
	return found ? &a->v[i] : NULL;
}

bool attrs_has(const struct attrs *a, CK_ATTRIBUTE_TYPE type)
{
	return attrs_get(a, type) != NULL;
}

bool attrs_get_bool(const struct attrs *a, CK_ATTRIBUTE_TYPE type, CK_BBOOL *out)
{
	const CK_ATTRIBUTE *at = attrs_get(a, type);
	if (!at || at->ulValueLen != sizeof(CK_BBOOL))
		return false;
	*out = *(const CK_BBOOL *)at->pValue;
	return true;
}

bool attrs_get_ulong(const struct attrs *a, CK_ATTRIBUTE_TYPE type, CK_ULONG *out)
{
	const CK_ATTRIBUTE *at = attrs_get(a, type);
	if (!at || at->ulValueLen != sizeof(CK_ULONG))
		return false;
	memcpy(out, at->pValue, sizeof(CK_ULONG));
	return true;
}

bool attrs_bool(const struct attrs *a, CK_ATTRIBUTE_TYPE type, bool dflt)
{
	CK_BBOOL b;
	if (!attrs_get_bool(a, type, &b))
		return dflt;
	return b == CK_TRUE;
}

CK_RV attrs_take(struct attrs *a, CK_ATTRIBUTE_TYPE type, void *value, CK_ULONG len)
{
	bool found;
	size_t i = attrs_find(a, type, &found);
	if (found) {
		kt_free_secret(a->v[i].pValue, a->v[i].ulValueLen);
		a->v[i].pValue = value;
		a->v[i].ulValueLen = len;
		return CKR_OK;
	}
	if (a->n == a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 8;
		CK_ATTRIBUTE *v = realloc(a->v, cap * sizeof(*v));
		if (!v) {
			kt_free_secret(value, len);
			return CKR_HOST_MEMORY;
		}
		a->v = v;
		a->cap = cap;
	}
	memmove(&a->v[i + 1], &a->v[i], (a->n - i) * sizeof(*a->v));
	a->v[i].type = type;
	a->v[i].pValue = value;
	a->v[i].ulValueLen = len;
	a->n++;
	return CKR_OK;
}

CK_RV attrs_set(struct attrs *a, CK_ATTRIBUTE_TYPE type, const void *value, CK_ULONG len)
{
	/* Always allocate at least one byte so an empty value is distinguishable
	 * from an absent one and pValue is never NULL. */
	void *copy = malloc(len ? len : 1);
	if (!copy)
		return CKR_HOST_MEMORY;
	if (len)
		memcpy(copy, value, len);
	return attrs_take(a, type, copy, len);
}

CK_RV attrs_set_bool(struct attrs *a, CK_ATTRIBUTE_TYPE type, bool value)
{
	CK_BBOOL b = value ? CK_TRUE : CK_FALSE;
	return attrs_set(a, type, &b, sizeof(b));
}

CK_RV attrs_set_ulong(struct attrs *a, CK_ATTRIBUTE_TYPE type, CK_ULONG value)
{
	return attrs_set(a, type, &value, sizeof(value));
}

void attrs_remove(struct attrs *a, CK_ATTRIBUTE_TYPE type)
{
	bool found;
	size_t i = attrs_find(a, type, &found);
	if (!found)
		return;
	kt_free_secret(a->v[i].pValue, a->v[i].ulValueLen);
	memmove(&a->v[i], &a->v[i + 1], (a->n - i - 1) * sizeof(*a->v));
	a->n--;
}

bool attrs_match(const struct attrs *a, const CK_ATTRIBUTE *want)
{
	const CK_ATTRIBUTE *have = attrs_get(a, want->type);
	if (!have || have->ulValueLen != want->ulValueLen)
		return false;
	return want->ulValueLen == 0 || memcmp(have->pValue, want->pValue, want->ulValueLen) == 0;
}

bool token_attr_is_secret(CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE type)
{
	/* Key material is sealed in the store even on a public (CKA_PRIVATE
	 * false) key: the public/private object distinction governs
	 * visibility, not whether a secret may sit on disk in the clear. */
	if (cls == CKO_SECRET_KEY)
		return type == CKA_VALUE;
	if (cls != CKO_PRIVATE_KEY)
		return false;
	switch (type) {
	case CKA_VALUE:
	case CKA_PRIVATE_EXPONENT:
	case CKA_PRIME_1:
	case CKA_PRIME_2:
	case CKA_EXPONENT_1:
	case CKA_EXPONENT_2:
	case CKA_COEFFICIENT:
		return true;
	default:
		return false;
	}
}
