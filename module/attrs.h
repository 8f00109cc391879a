/*
 * An owned set of PKCS#11 attributes: one value per type, kept sorted by
 * type so lookups are a binary search.  Values are copied in and wiped when
 * replaced or freed, because key material and private fields pass through
 * here.
 */
#ifndef KOLTAMGA_ATTRS_H
#define KOLTAMGA_ATTRS_H

#include "common.h"

struct attrs;

/* No attribute value is longer: larger lengths in a caller's template are
 * errors (or CK_UNAVAILABLE_INFORMATION left over from a failed read). */
#define ATTR_MAX_LEN ((CK_ULONG)64 * 1024 * 1024)

struct attrs *attrs_new(void);
void attrs_free(struct attrs *a);
/* A deep copy; NULL when memory runs out. */
struct attrs *attrs_dup(const struct attrs *a);

size_t attrs_count(const struct attrs *a);
/* Pointers returned by attrs_at/attrs_get stay valid only until the next
 * attrs_set/attrs_take/attrs_remove on the same set (the array moves).
 * The i-th attribute in type order; its pValue is owned by the set. */
const CK_ATTRIBUTE *attrs_at(const struct attrs *a, size_t i);
const CK_ATTRIBUTE *attrs_get(const struct attrs *a, CK_ATTRIBUTE_TYPE type);
bool attrs_has(const struct attrs *a, CK_ATTRIBUTE_TYPE type);

/* Typed readers: false when absent or of the wrong length. */
bool attrs_get_bool(const struct attrs *a, CK_ATTRIBUTE_TYPE type, CK_BBOOL *out);
bool attrs_get_ulong(const struct attrs *a, CK_ATTRIBUTE_TYPE type, CK_ULONG *out);
/* CK_TRUE/CK_FALSE value, or dflt when absent or malformed. */
bool attrs_bool(const struct attrs *a, CK_ATTRIBUTE_TYPE type, bool dflt);

/* Copy a value in, replacing any previous one.  CKR_HOST_MEMORY on failure. */
CK_RV attrs_set(struct attrs *a, CK_ATTRIBUTE_TYPE type, const void *value, CK_ULONG len);
CK_RV attrs_set_bool(struct attrs *a, CK_ATTRIBUTE_TYPE type, bool value);
CK_RV attrs_set_ulong(struct attrs *a, CK_ATTRIBUTE_TYPE type, CK_ULONG value);
/* Take ownership of a malloc'd value (wiped and freed with the set). */
CK_RV attrs_take(struct attrs *a, CK_ATTRIBUTE_TYPE type, void *value, CK_ULONG len);
void attrs_remove(struct attrs *a, CK_ATTRIBUTE_TYPE type);

/* Compare one attribute against a caller's template entry. */
bool attrs_match(const struct attrs *a, const CK_ATTRIBUTE *want);

#endif
