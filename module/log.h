/*
 * Logging and tracing.  Errors the user must see (bad configuration, a
 * corrupt store) always go to stderr with a "koltamga:" prefix.  Tracing is
 * chosen by KOLTAMGA_DEBUG ("all" or a comma list of categories) and costs
 * one branch when off.  Nothing secret is ever passed to either: callers log
 * lengths and handles, never PINs, key bytes or data to be signed.
 */
#ifndef KOLTAMGA_LOG_H
#define KOLTAMGA_LOG_H

#include "common.h"

enum kt_debug_cat {
	KT_DBG_CALL = 1u << 0,    /* every C_* entry and its rv */
	KT_DBG_SESSION = 1u << 1, /* sessions and login state */
	KT_DBG_OBJECT = 1u << 2,  /* objects and templates */
	KT_DBG_TOKEN = 1u << 3,   /* token drivers and stores */
	KT_DBG_CRYPTO = 1u << 4,  /* mechanisms and OpenSSL */
	KT_DBG_CONFIG = 1u << 5,  /* configuration */
	KT_DBG_POLICY = 1u << 6,  /* the signing policy layer */
};

extern unsigned kt_debug_mask;

void kt_debug_init(void);
void kt_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void kt_debug_print(enum kt_debug_cat cat, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define kt_debug(cat, ...)                                                                         \
	do {                                                                                       \
		if (kt_debug_mask & (cat))                                                         \
			kt_debug_print((cat), __VA_ARGS__);                                        \
	} while (0)

const char *kt_rv_name(CK_RV rv);
const char *kt_attr_name(CK_ATTRIBUTE_TYPE type);
const char *kt_mech_name(CK_MECHANISM_TYPE type);

#endif
