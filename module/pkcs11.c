/*
 * The PKCS#11 entry points.  Each C_* body is short: check the library is
 * initialised, find the session and the token, check the state the call
 * needs, call the layer below, map the result.  Lock order everywhere:
 * session table, session, token (see session.h and slot.h).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/x509.h>

#include "common.h"
#include "config.h"
#include "crypto.h"
#include "log.h"
#include "certattrs.h"
#include "koltamga/pkcs11v.h"
#include "object.h"
#include "policy/audit.h"
#include "policy/certcheck.h"
#include "policy/compromise.h"
#include "policy/personal.h"
#include "policy/signing.h"
#include "session.h"
#include "slot.h"

#define KT_EXPORT __attribute__((visibility("default")))

#define PIN_MAX_LEN 255

#define LIBRARY_VERSION_MAJOR 0
#define LIBRARY_VERSION_MINOR 1

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static bool initialized;
/* Set in a forked child: its copy of our state (locks, SQLite handles)
 * must not be used; it gets CKR_CRYPTOKI_NOT_INITIALIZED until it calls
 * C_Initialize itself, as PKCS#11 asks. */
static bool forked;
static struct config *config;
/* The law's certificate checks, read-only after C_Initialize. */
static struct certcheck *checker;

/*
 * Every call holds this shared for its whole length; C_Finalize takes it
 * exclusively, so it waits for calls in flight instead of freeing state
 * under them (PKCS#11 leaves that case undefined; applications finalize
 * from exit handlers while other threads still run).
 */
/* Writer-preferring, or a steady stream of calls from other threads
 * could keep C_Finalize waiting for ever.  No call takes it twice. */
#define CALL_GUARD_INIT PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP
static pthread_rwlock_t call_guard = CALL_GUARD_INIT;

static void atfork_child(void)
{
	/* Another thread may have held the guard at fork time; it does not
	 * exist in the child. */
	pthread_rwlock_t fresh = CALL_GUARD_INIT;
	call_guard = fresh;
	if (initialized)
		forked = true;
}

static void register_atfork(void)
{
	pthread_atfork(NULL, NULL, atfork_child);
}

static CK_RV ready(void)
{
	if (!__atomic_load_n(&initialized, __ATOMIC_ACQUIRE) || forked)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	return CKR_OK;
}

/* Every call but C_Initialize/C_Finalize runs between enter() and leave(). */
static CK_RV enter(void)
{
	pthread_rwlock_rdlock(&call_guard);
	CK_RV rv = ready();
	if (rv != CKR_OK)
		pthread_rwlock_unlock(&call_guard);
	return rv;
}

static void leave(void)
{
	pthread_rwlock_unlock(&call_guard);
}

/* Every session-based call starts here: the session comes back locked;
 * end() gives it back. */
static void end(struct session *s)
{
	session_put(s);
	leave();
}

static CK_RV begin(CK_SESSION_HANDLE h, struct session **s)
{
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	rv = session_get(h, s);
	if (rv != CKR_OK) {
		leave();
		return rv;
	}
	/* A device pulled out closed its sessions (PKCS#11): this one is
	 * gone, and its remains go now. */
	if ((*s)->insertion != __atomic_load_n(&(*s)->token->insertion, __ATOMIC_ACQUIRE)) {
		session_put(*s);
		session_close(h);
		leave();
		return CKR_SESSION_HANDLE_INVALID;
	}
	return CKR_OK;
}

/* --- state predicates (style.md 3): one per kind of need ----------------- */

static bool logged_in_user(const struct token *t)
{
	return t->login == CKU_USER;
}

/* May this session create, change or destroy an object with these
 * token/private attributes? */
static CK_RV may_write_object(const struct session *s, bool token_obj, bool private_obj)
{
	if (token_obj && !session_is_rw(s))
		return CKR_SESSION_READ_ONLY;
	if (private_obj && !logged_in_user(s->token))
		return CKR_USER_NOT_LOGGED_IN;
	return CKR_OK;
}

static struct object_actor actor_of(const struct session *s)
{
	struct object_actor a = { .so = s->token->login == CKU_SO };
	return a;
}

/* A PIN of a length no PIN can have is wrong without a KDF run (and
 * without reading that many bytes of the caller's memory).  Not counted:
 * it is not a guess.  The bounds are wider than the configured ones so a
 * PIN set under an older configuration still works. */
static bool pin_len_plausible(CK_ULONG len)
{
	return len >= 1 && len <= PIN_MAX_LEN;
}

/* A device with its own PIN pad takes PINs there: NULL PINs are for it. */
static bool pinpad(const struct token *t)
{
	return t->state.device && (t->state.info.flags & CKF_PROTECTED_AUTHENTICATION_PATH);
}

/* A device keeps its own PIN rules (its token information shows them). */
static CK_RV check_pin_len(const struct token *t, CK_ULONG len)
{
	const struct config *c = slot_config();
	if (token_is_device(t))
		return CKR_OK;
	if (len < c->min_pin_len || len > c->max_pin_len)
		return CKR_PIN_LEN_RANGE;
	return CKR_OK;
}

/* PKCS#11 output convention: NULL buffer asks for the length; a short one
 * gets CKR_BUFFER_TOO_SMALL and the length. */
static CK_RV output_fits(CK_BYTE_PTR out, CK_ULONG_PTR out_len, CK_ULONG need)
{
	if (!out) {
		*out_len = need;
		return CKR_OK;
	}
	if (*out_len < need) {
		*out_len = need;
		return CKR_BUFFER_TOO_SMALL;
	}
	return CKR_OK;
}

/* --- general ------------------------------------------------------------ */

static void state_reset(void)
{
	session_table_free();
	signing_flush();
	slot_table_free();
	certcheck_free(checker);
	checker = NULL;
	certattrs_reset();
	config_free(config);
	config = NULL;
}

/* What configuration says about certificates: extra OIDs for the attribute
 * table, the trust list and the CRLs. */
static CK_RV policy_init(const struct config *c)
{
	signing_configure(c);
	personal_configure(c);
	object_set_personal_private(!c->public_personal_certs);
	for (size_t i = 0; i < c->n_oids; i++) {
		if (certattrs_add_oid(c->oids[i].name, c->oids[i].oid) != CKR_OK) {
			kt_log("%s: [profile] oid.%s: unknown name or malformed OID", c->source,
			       c->oids[i].name);
			return CKR_GENERAL_ERROR;
		}
	}
	struct certcheck_config cc = {
		.trust_list = c->trust_list,
		.crl_dir = c->crl_dir,
		.crl_files = (const char **)c->crl_files,
		.crl_max_age = c->crl_max_age,
		.allow_unknown_revocation = c->allow_unknown_revocation,
	};
	return certcheck_new(&cc, &checker);
}

/* A forked child keeps its parent's state referenced here instead of
 * freeing it, so leak checkers do not report it as the child's. */
static struct config *volatile abandoned_config;
static struct certcheck *volatile abandoned_checker;

static CK_RV kt_Initialize(CK_VOID_PTR pInitArgs)
{
	CK_RV rv;
	const char *reserved = NULL;

	pthread_once(&atfork_once, register_atfork);
	if (pInitArgs) {
		CK_C_INITIALIZE_ARGS *args = pInitArgs;
		int given = !!args->CreateMutex + !!args->DestroyMutex + !!args->LockMutex +
			    !!args->UnlockMutex;
		if (given != 0 && given != 4)
			return CKR_ARGUMENTS_BAD;
		/* We lock with the OS's primitives; an application that
		 * insists on its own mutexes must hear that we cannot. */
		if (given == 4 && !(args->flags & CKF_OS_LOCKING_OK))
			return CKR_CANT_LOCK;
		/* p11-kit hands a module file's x-init-reserved here. */
		reserved = args->pReserved;
	}


	pthread_mutex_lock(&init_lock);
	if (forked) {
		/* A child of an initialised parent: the inherited state belongs
		 * to threads that do not exist here, so it is abandoned, not
		 * freed (freeing could take locks held at fork time). */
		initialized = false;
		forked = false;
		abandoned_config = config; /* referenced, not freed */
		abandoned_checker = checker;
		config = NULL;
		checker = NULL;
		session_table_abandon();
		slot_table_abandon();
	}
	if (initialized) {
		rv = CKR_CRYPTOKI_ALREADY_INITIALIZED;
		goto out;
	}
	kt_debug_init();
	rv = config_load(reserved, &config);
	if (rv != CKR_OK) {
		kt_log("C_Initialize failed: configuration error (%s)", kt_rv_name(rv));
		goto out;
	}
	kt_secure_heap_init(config->secure_heap);
	session_table_init();
	rv = policy_init(config);
	if (rv == CKR_OK)
		rv = slot_table_init(config);
	if (rv != CKR_OK) {
		state_reset();
		goto out;
	}
	/* The audit log's flusher is our only thread; some applications
	 * forbid them. */
	audit_allow_threads(!(pInitArgs && (((CK_C_INITIALIZE_ARGS *)pInitArgs)->flags &
					    CKF_LIBRARY_CANT_CREATE_OS_THREADS)));
	__atomic_store_n(&initialized, true, __ATOMIC_RELEASE);
out:
	pthread_mutex_unlock(&init_lock);
	kt_debug(KT_DBG_CALL, "C_Initialize = %s", kt_rv_name(rv));
	return rv;
}

static CK_RV kt_Finalize(CK_VOID_PTR pReserved)
{
	CK_RV rv;
	if (pReserved)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&init_lock);
	pthread_rwlock_wrlock(&call_guard);
	rv = ready();
	if (rv == CKR_OK) {
		__atomic_store_n(&initialized, false, __ATOMIC_RELEASE);
		state_reset();
	}
	pthread_rwlock_unlock(&call_guard);
	pthread_mutex_unlock(&init_lock);
	return rv;
}

static CK_RV get_info_entered(CK_INFO_PTR pInfo, CK_BYTE major, CK_BYTE minor)
{
	if (!pInfo)
		return CKR_ARGUMENTS_BAD;
	memset(pInfo, 0, sizeof(*pInfo));
	pInfo->cryptokiVersion.major = major;
	pInfo->cryptokiVersion.minor = minor;
	kt_pad(pInfo->manufacturerID, sizeof(pInfo->manufacturerID), "koltamga");
	kt_pad(pInfo->libraryDescription, sizeof(pInfo->libraryDescription),
	       "koltamga signature module");
	pInfo->libraryVersion.major = LIBRARY_VERSION_MAJOR;
	pInfo->libraryVersion.minor = LIBRARY_VERSION_MINOR;
	return CKR_OK;
}

static CK_RV get_info(CK_INFO_PTR pInfo, CK_BYTE major, CK_BYTE minor)
{
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	rv = get_info_entered(pInfo, major, minor);
	leave();
	return rv;
}

/* The same library answers as 2.40 through the 2.40 list and as 3.0
 * through the 3.0 interface, so each caller sees the version it asked for. */
static CK_RV kt_GetInfo_240(CK_INFO_PTR pInfo)
{
	return get_info(pInfo, 2, 40);
}

static CK_RV kt_GetInfo_30(CK_INFO_PTR pInfo)
{
	return get_info(pInfo, 3, 0);
}

/* --- slots and tokens --------------------------------------------------- */

static CK_RV kt_GetSlotList_entered(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount)
{
	CK_RV rv = CKR_OK;
	if (!pulCount)
		return CKR_ARGUMENTS_BAD;
	/* A size query is where applications expect the list to change:
	 * pick up tokens other processes created meanwhile. */
	if (!pSlotList)
		slot_table_rescan();
	size_t n = slot_count();
	CK_ULONG have = 0;
	for (size_t i = 0; i < n; i++) {
		struct token *t = slot_at(i);
		if (!t)
			break;
		/* A device that was not there is looked for (the driver does
		 * that at most every 200 ms), but only when its token is free:
		 * a device that hangs must not hold up the slot list. */
		if (tokenPresent && token_is_device(t) && !token_present(t) && token_trylock(t)) {
			token_refresh_state(t);
			token_unlock(t);
		}
		if (tokenPresent && !token_present(t))
			continue;
		if (pSlotList && have < *pulCount)
			pSlotList[have] = t->slot_id;
		have++;
	}
	if (pSlotList && have > *pulCount)
		rv = CKR_BUFFER_TOO_SMALL;
	*pulCount = have;
	return rv;
}

static CK_RV kt_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount)
{
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	rv = kt_GetSlotList_entered(tokenPresent, pSlotList, pulCount);
	leave();
	return rv;
}

static CK_RV kt_GetSlotInfo_entered(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo)
{
	if (!pInfo)
		return CKR_ARGUMENTS_BAD;
	struct token *t = slot_get(slotID);
	if (!t)
		return CKR_SLOT_ID_INVALID;
	memset(pInfo, 0, sizeof(*pInfo));
	token_lock(t);
	kt_pad(pInfo->slotDescription, sizeof(pInfo->slotDescription),
	       token_is_device(t) ? "koltamga device token" : t->path ? "koltamga file token" : "koltamga new token");
	kt_pad(pInfo->manufacturerID, sizeof(pInfo->manufacturerID), "koltamga");
	if (token_is_device(t)) {
		/* Asking about the slot is asking whether the device is in. */
		token_refresh_state(t);
		pInfo->flags = CKF_REMOVABLE_DEVICE | CKF_HW_SLOT;
	}
	pInfo->flags |= token_present(t) ? CKF_TOKEN_PRESENT : 0;
	token_unlock(t);
	pInfo->hardwareVersion.major = LIBRARY_VERSION_MAJOR;
	pInfo->hardwareVersion.minor = LIBRARY_VERSION_MINOR;
	pInfo->firmwareVersion = pInfo->hardwareVersion;
	return CKR_OK;
}

static CK_RV kt_GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo)
{
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	rv = kt_GetSlotInfo_entered(slotID, pInfo);
	leave();
	return rv;
}

static CK_FLAGS pin_flags(CK_ULONG fails, CK_ULONG max, CK_FLAGS low, CK_FLAGS final,
			  CK_FLAGS locked)
{
	if (fails == 0 || max == 0)
		return 0;
	if (fails >= max)
		return locked;
	if (max - fails == 1)
		return low | final;
	return low;
}

static CK_RV kt_GetTokenInfo_entered(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
	CK_RV rv = CKR_OK;
	if (!pInfo)
		return CKR_ARGUMENTS_BAD;
	struct token *t = slot_get(slotID);
	if (!t)
		return CKR_SLOT_ID_INVALID;
	token_lock(t);
	/* Asking about a device's token is asking whether it is in. */
	if (token_is_device(t))
		token_refresh_state(t);
	if (!token_present(t)) {
		rv = CKR_TOKEN_NOT_PRESENT;
		goto out;
	}
	if (!t->recognized && t->path) {
		rv = CKR_TOKEN_NOT_RECOGNIZED;
		goto out;
	}
	/* Counters may have moved in another process. */
	rv = token_refresh_state(t);
	if (rv != CKR_OK)
		goto out;
	const struct token_state *st = &t->state;
	const struct config *c = slot_config();
	if (st->device) {
		/* The device's own: label, serial, PIN rules and counters,
		 * protected authentication path.  Sessions are ours to
		 * count; random numbers come from the module; every key
		 * needs a login to sign, whatever the device says. */
		*pInfo = st->info;
		pInfo->flags |= CKF_RNG | CKF_LOGIN_REQUIRED;
		pInfo->ulSessionCount = t->sessions;
		pInfo->ulRwSessionCount = t->rw_sessions;
		pInfo->ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
		pInfo->ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
		goto out;
	}
	memset(pInfo, 0, sizeof(*pInfo));
	kt_pad(pInfo->label, sizeof(pInfo->label), st->initialized ? st->label : "");
	kt_pad(pInfo->manufacturerID, sizeof(pInfo->manufacturerID), "koltamga");
	kt_pad(pInfo->model, sizeof(pInfo->model), "file token");
	kt_pad(pInfo->serialNumber, sizeof(pInfo->serialNumber), st->serial);
	pInfo->flags = CKF_RNG | CKF_LOGIN_REQUIRED;
	if (st->initialized)
		pInfo->flags |= CKF_TOKEN_INITIALIZED;
	if (st->user_pin_set)
		pInfo->flags |= CKF_USER_PIN_INITIALIZED;
	pInfo->flags |= pin_flags(st->user_fails, st->max_tries, CKF_USER_PIN_COUNT_LOW,
				  CKF_USER_PIN_FINAL_TRY, CKF_USER_PIN_LOCKED);
	pInfo->flags |= pin_flags(st->so_fails, st->max_tries, CKF_SO_PIN_COUNT_LOW,
				  CKF_SO_PIN_FINAL_TRY, CKF_SO_PIN_LOCKED);
	pInfo->ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
	pInfo->ulSessionCount = t->sessions;
	pInfo->ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
	pInfo->ulRwSessionCount = t->rw_sessions;
	pInfo->ulMaxPinLen = c->max_pin_len;
	pInfo->ulMinPinLen = c->min_pin_len;
	pInfo->ulTotalPublicMemory = CK_UNAVAILABLE_INFORMATION;
	pInfo->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
	pInfo->ulTotalPrivateMemory = CK_UNAVAILABLE_INFORMATION;
	pInfo->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
	pInfo->hardwareVersion.major = LIBRARY_VERSION_MAJOR;
	pInfo->hardwareVersion.minor = LIBRARY_VERSION_MINOR;
	pInfo->firmwareVersion = pInfo->hardwareVersion;
	/* No clock on the token (CKF_CLOCK_ON_TOKEN unset): utcTime is blank. */
	memset(pInfo->utcTime, ' ', sizeof(pInfo->utcTime));
out:
	token_unlock(t);
	return rv;
}

static CK_RV kt_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	rv = kt_GetTokenInfo_entered(slotID, pInfo);
	leave();
	return rv;
}

static CK_RV kt_GetMechanismList_entered(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pList, CK_ULONG_PTR pulCount)
{
	CK_RV rv = CKR_OK;
	if (!pulCount)
		return CKR_ARGUMENTS_BAD;
	struct token *t = slot_get(slotID);
	if (!t)
		return CKR_SLOT_ID_INVALID;
	token_lock(t);
	if (token_is_device(t)) {
		token_sync(t);
		if (!token_present(t)) {
			token_unlock(t);
			return CKR_TOKEN_NOT_PRESENT;
		}
	}
	CK_ULONG n = 0;
	for (size_t i = 0; i < mech_count(); i++) {
		if (!token_mechanism_flags(t, mech_at(i)))
			continue;
		if (pList && n < *pulCount)
			pList[n] = mech_at(i)->type;
		n++;
	}
	token_unlock(t);
	if (pList && *pulCount < n)
		rv = CKR_BUFFER_TOO_SMALL;
	*pulCount = n;
	return rv;
}

static CK_RV kt_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pList, CK_ULONG_PTR pulCount)
{
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	rv = kt_GetMechanismList_entered(slotID, pList, pulCount);
	leave();
	return rv;
}

static CK_RV kt_GetMechanismInfo_entered(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo)
{
	if (!pInfo)
		return CKR_ARGUMENTS_BAD;
	struct token *t = slot_get(slotID);
	if (!t)
		return CKR_SLOT_ID_INVALID;
	const struct mech_info *mi = mech_find(type);
	if (!mi)
		return CKR_MECHANISM_INVALID;
	token_lock(t);
	if (token_is_device(t))
		token_sync(t);
	CK_RV rv = token_present(t) ? CKR_OK : CKR_TOKEN_NOT_PRESENT;
	CK_FLAGS flags = rv == CKR_OK ? token_mechanism_flags(t, mi) : 0;
	token_unlock(t);
	if (rv != CKR_OK)
		return rv;
	if (!flags)
		return CKR_MECHANISM_INVALID;
	pInfo->ulMinKeySize = mi->min_key_size;
	pInfo->ulMaxKeySize = mi->max_key_size;
	pInfo->flags = flags;
	return CKR_OK;
}

static CK_RV kt_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo)
{
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	rv = kt_GetMechanismInfo_entered(slotID, type, pInfo);
	leave();
	return rv;
}

static CK_RV kt_InitToken_entered(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel)
{
	CK_RV rv = CKR_OK;
	if (!pLabel)
		return CKR_ARGUMENTS_BAD;
	struct token *t = slot_get(slotID);
	if (!t)
		return CKR_SLOT_ID_INVALID;
	token_lock(t);
	bool pad = pinpad(t);
	token_unlock(t);
	if (!pPin && !pad)
		return CKR_ARGUMENTS_BAD;
	rv = pPin ? check_pin_len(t, ulPinLen) : CKR_OK;
	if (rv != CKR_OK)
		return rv;
	/* The label is 32 blank-padded bytes; trailing blanks or NULs go. */
	char label[33];
	memcpy(label, pLabel, 32);
	label[32] = '\0';
	for (int i = 31; i >= 0 && (label[i] == ' ' || label[i] == '\0'); i--)
		label[i] = '\0';

	token_lock(t);
	if (t->sessions)
		rv = CKR_SESSION_EXISTS;
	else
		rv = token_init(t, pPin, ulPinLen, label);
	token_unlock(t);
	return rv;
}

static CK_RV kt_InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel)
{
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	rv = kt_InitToken_entered(slotID, pPin, ulPinLen, pLabel);
	leave();
	return rv;
}

static CK_RV kt_InitPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	token_lock(s->token);
	if (!pPin && !pinpad(s->token))
		rv = CKR_ARGUMENTS_BAD;
	else if (s->token->login != CKU_SO || !session_is_rw(s))
		rv = CKR_USER_NOT_LOGGED_IN;
	else if ((rv = pPin ? check_pin_len(s->token, ulPinLen) : CKR_OK) == CKR_OK)
		rv = token_init_pin(s->token, pPin, pPin ? ulPinLen : 0);
	token_unlock(s->token);
	end(s);
	return rv;
}

static CK_RV kt_SetPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen,
		       CK_UTF8CHAR_PTR pNewPin, CK_ULONG ulNewLen)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	token_lock(s->token);
	bool pad = pinpad(s->token);
	token_unlock(s->token);
	if ((!pOldPin || !pNewPin) && !(pad && !pOldPin && !pNewPin))
		rv = CKR_ARGUMENTS_BAD;
	else if (!session_is_rw(s))
		rv = CKR_SESSION_READ_ONLY;
	else if (pOldPin && !pin_len_plausible(ulOldLen))
		rv = CKR_PIN_INCORRECT;
	else
		rv = pNewPin ? check_pin_len(s->token, ulNewLen) : CKR_OK;
	if (rv == CKR_OK) {
		struct token *t = s->token;
		token_lock(t);
		/* The SO changes the SO PIN; anyone else, the user PIN. */
		CK_USER_TYPE who = t->login == CKU_SO ? CKU_SO : CKU_USER;
		rv = token_set_pin(t, who, pOldPin, ulOldLen, pNewPin, ulNewLen);
		token_unlock(t);
	}
	end(s);
	return rv;
}

/* --- sessions ----------------------------------------------------------- */

static CK_RV kt_OpenSession_entered(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify,
			    CK_SESSION_HANDLE_PTR phSession)
{
	CK_RV rv = CKR_OK;
	if (!phSession)
		return CKR_ARGUMENTS_BAD;
	/* Legacy rule: every session is serial; parallel ones do not exist. */
	if (!(flags & CKF_SERIAL_SESSION))
		return CKR_SESSION_PARALLEL_NOT_SUPPORTED;
	struct token *t = slot_get(slotID);
	if (!t)
		return CKR_SLOT_ID_INVALID;
	token_lock(t);
	if (token_is_device(t)) {
		rv = token_sync(t);
		if (rv == CKR_DEVICE_REMOVED)
			rv = token_refresh_state(t) == CKR_OK ? CKR_OK : CKR_TOKEN_NOT_PRESENT;
	}
	/* An unreadable store and a token not yet initialised both lack a
	 * token this library can open a session on. */
	if (rv == CKR_OK && (!t->recognized || !t->state.initialized))
		rv = CKR_TOKEN_NOT_RECOGNIZED;
	token_unlock(t);
	if (rv != CKR_OK)
		return rv;
	rv = session_open(t, flags & (CKF_RW_SESSION | CKF_SERIAL_SESSION), phSession);
	kt_debug(KT_DBG_SESSION, "C_OpenSession(slot %lu, %s) = %s", slotID,
		 (flags & CKF_RW_SESSION) ? "rw" : "ro", kt_rv_name(rv));
	return rv;
}

static CK_RV kt_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify,
			    CK_SESSION_HANDLE_PTR phSession)
{
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	rv = kt_OpenSession_entered(slotID, flags, pApplication, Notify, phSession);
	leave();
	return rv;
}

static CK_RV kt_CloseSession_entered(CK_SESSION_HANDLE hSession)
{
	return session_close(hSession);
}

static CK_RV kt_CloseSession(CK_SESSION_HANDLE hSession)
{
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	rv = kt_CloseSession_entered(hSession);
	leave();
	return rv;
}

static CK_RV kt_CloseAllSessions_entered(CK_SLOT_ID slotID)
{
	struct token *t = slot_get(slotID);
	if (!t)
		return CKR_SLOT_ID_INVALID;
	session_close_all(t);
	return CKR_OK;
}

static CK_RV kt_CloseAllSessions(CK_SLOT_ID slotID)
{
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	rv = kt_CloseAllSessions_entered(slotID);
	leave();
	return rv;
}

static CK_RV kt_GetSessionInfo(CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!pInfo) {
		end(s);
		return CKR_ARGUMENTS_BAD;
	}
	token_lock(s->token);
	pInfo->slotID = s->token->slot_id;
	pInfo->state = session_state(s);
	token_unlock(s->token);
	pInfo->flags = s->flags;
	pInfo->ulDeviceError = 0;
	end(s);
	return CKR_OK;
}

static CK_RV kt_GetOperationState(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pState, CK_ULONG_PTR pulLen)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	end(s);
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV kt_SetOperationState(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pState, CK_ULONG ulLen,
				  CK_OBJECT_HANDLE hEnc, CK_OBJECT_HANDLE hAuth)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	end(s);
	return CKR_FUNCTION_NOT_SUPPORTED;
}

/* CKU_CONTEXT_SPECIFIC: re-authenticate for the operation under way. */
static CK_RV login_context(struct session *s, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
	struct token *t = s->token;
	if (s->crypto.kind == OP_NONE)
		return CKR_OPERATION_NOT_INITIALIZED;
	if (t->login != CKU_USER)
		return CKR_USER_NOT_LOGGED_IN;
	/* No device operation under way that could ask for a PIN: the
	 * module cannot check a device's PIN by itself. */
	if (token_is_device(t) && !crypto_op_remote(s->crypto.op))
		return CKR_OPERATION_NOT_INITIALIZED;
	if (crypto_op_remote(s->crypto.op)) {
		/* The device checks it, for its operation. */
		CK_RV rv = crypto_op_login(s->crypto.op, pin, len);
		if (rv == CKR_OK)
			s->crypto.context_logged_in = true;
		return rv;
	}
	if (!pin_len_plausible(len))
		return CKR_PIN_INCORRECT;
	CK_RV rv = token_check_pin(t, CKU_USER, pin, len);
	if (rv == CKR_OK)
		s->crypto.context_logged_in = true;
	return rv;
}

static CK_RV kt_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	struct token *t = s->token;
	token_lock(t);
	bool pinpad = t->state.device && (t->state.info.flags & CKF_PROTECTED_AUTHENTICATION_PATH);
	if (userType != CKU_USER && userType != CKU_SO && userType != CKU_CONTEXT_SPECIFIC)
		rv = CKR_USER_TYPE_INVALID;
	else if (!pPin && !pinpad)
		/* Only a device with its own PIN pad takes no PIN here. */
		rv = CKR_ARGUMENTS_BAD;
	else if (token_is_device(t) && (rv = token_sync(t)) != CKR_OK)
		; /* keep rv: the device is gone */
	else if (userType == CKU_CONTEXT_SPECIFIC)
		rv = login_context(s, pPin, ulPinLen);
	else if (t->login == userType)
		rv = CKR_USER_ALREADY_LOGGED_IN;
	else if (t->login != USER_NONE)
		rv = CKR_USER_ANOTHER_ALREADY_LOGGED_IN;
	else if (userType == CKU_SO && t->sessions > t->rw_sessions)
		rv = CKR_SESSION_READ_ONLY_EXISTS;
	else if (pPin && !pin_len_plausible(ulPinLen))
		rv = CKR_PIN_INCORRECT;
	else
		rv = token_login(t, userType, pPin, pPin ? ulPinLen : 0);
	token_unlock(t);
	end(s);
	kt_debug(KT_DBG_SESSION, "C_Login(%lu) = %s", userType, kt_rv_name(rv));
	return rv;
}

static CK_RV kt_Logout(CK_SESSION_HANDLE hSession)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	token_lock(s->token);
	if (s->token->login == USER_NONE)
		rv = CKR_USER_NOT_LOGGED_IN;
	else
		token_logout(s->token);
	token_unlock(s->token);
	end(s);
	return rv;
}

/* --- objects ------------------------------------------------------------ */

/* Store a finished object after the session-state checks it needs. */
static CK_RV object_store(struct session *s, struct attrs *a, CK_OBJECT_HANDLE *out)
{
	CK_RV rv = may_write_object(s, object_is_token(a), object_is_private(a));
	if (rv != CKR_OK) {
		attrs_free(a);
		return rv;
	}
	return token_object_add(s->token, s->handle, a, out);
}

/*
 * Applications look for a public key object beside a certificate and its
 * private key (p11tool --test-sign, keystores that pair entries by CKA_ID).
 * When a certificate arrives with a CKA_ID and the token has no public key
 * with that id, one is made from the certificate.  Best effort: the
 * certificate is stored whatever happens here.
 */
static void companion_public_key(struct session *s, CK_OBJECT_HANDLE cert_handle)
{
	struct token *t = s->token;
	struct object *cert = token_object_get(t, cert_handle);
	CK_OBJECT_HANDLE *found = NULL, h;
	size_t n = 0;
	struct attrs *a = NULL;
	if (!cert || cert->cls != CKO_CERTIFICATE)
		return;
	const CK_ATTRIBUTE *id = attrs_get(cert->attrs, CKA_ID);
	const CK_ATTRIBUTE *spki = attrs_get(cert->attrs, CKA_PUBLIC_KEY_INFO);
	if (!id || !id->ulValueLen || !spki || !spki->ulValueLen)
		return;
	CK_OBJECT_CLASS pub = CKO_PUBLIC_KEY;
	CK_ATTRIBUTE want[] = { { CKA_CLASS, &pub, sizeof(pub) }, { CKA_ID, id->pValue, id->ulValueLen } };
	if (token_find(t, want, KT_ARRAY_SIZE(want), &found, &n) != CKR_OK || n > 0)
		goto out;
	a = attrs_new();
	if (!a)
		goto out;
	const CK_ATTRIBUTE *label = attrs_get(cert->attrs, CKA_LABEL);
	struct object_actor who = actor_of(s);
	CK_RV rv = attrs_set_ulong(a, CKA_CLASS, CKO_PUBLIC_KEY);
	if (rv == CKR_OK)
		rv = attrs_set_bool(a, CKA_TOKEN, object_is_token(cert->attrs));
	if (rv == CKR_OK)
		rv = attrs_set_bool(a, CKA_PRIVATE, false);
	if (rv == CKR_OK)
		rv = attrs_set(a, CKA_ID, id->pValue, id->ulValueLen);
	if (rv == CKR_OK && label)
		rv = attrs_set(a, CKA_LABEL, label->pValue, label->ulValueLen);
	if (rv == CKR_OK)
		rv = crypto_public_from_spki(spki->pValue, spki->ulValueLen, a);
	if (rv == CKR_OK)
		rv = object_build(a, ORIGIN_CREATE, 0, 0, 0, &who);
	if (rv == CKR_OK) {
		rv = token_object_add(t, cert->owner ? cert->owner : s->handle, a, &h);
		a = NULL;
	}
	kt_debug(KT_DBG_OBJECT, "public key beside certificate %lu: %s", cert_handle, kt_rv_name(rv));
out:
	attrs_free(a);
	free(found);
}

static CK_RV kt_CreateObject(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
			     CK_OBJECT_HANDLE_PTR phObject)
{
	struct session *s;
	struct attrs *a = NULL;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!phObject || (!pTemplate && ulCount)) {
		rv = CKR_ARGUMENTS_BAD;
		goto out;
	}
	rv = object_template_read(pTemplate, ulCount, &a);
	if (rv != CKR_OK)
		goto out;
	token_lock(s->token);
	struct object_actor who = actor_of(s);
	rv = object_build(a, ORIGIN_CREATE, 0, 0, 0, &who);
	if (rv == CKR_OK && object_class(a) == CKO_PRIVATE_KEY)
		rv = signing_assign(s->token->policy, a);
	if (rv == CKR_OK)
		rv = token_sync(s->token);
	if (rv == CKR_OK) {
		rv = object_store(s, a, phObject);
		a = NULL;
	}
	if (rv == CKR_OK)
		companion_public_key(s, *phObject);
	token_unlock(s->token);
out:
	attrs_free(a);
	end(s);
	kt_debug(KT_DBG_OBJECT, "C_CreateObject = %s", kt_rv_name(rv));
	return rv;
}

static CK_RV kt_CopyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
			   CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phNewObject)
{
	struct session *s;
	struct attrs *tmpl = NULL, *copy = NULL;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!phNewObject || (!pTemplate && ulCount)) {
		rv = CKR_ARGUMENTS_BAD;
		goto out;
	}
	rv = object_template_read(pTemplate, ulCount, &tmpl);
	if (rv != CKR_OK)
		goto out;
	token_lock(s->token);
	rv = token_sync(s->token);
	struct object *o = rv == CKR_OK ? token_object_get(s->token, hObject) : NULL;
	if (rv != CKR_OK) {
		/* keep rv */
	} else if (!o) {
		rv = CKR_OBJECT_HANDLE_INVALID;
	} else if (!attrs_bool(o->attrs, CKA_COPYABLE, true)) {
		rv = CKR_ACTION_PROHIBITED;
	} else if (!(copy = attrs_dup(o->attrs))) {
		rv = CKR_HOST_MEMORY;
	} else {
		struct object_actor who = actor_of(s);
		rv = object_modify(copy, tmpl, true, &who);
		if (rv == CKR_OK)
			rv = may_write_object(s, object_is_token(copy), object_is_private(copy));
		if (rv == CKR_OK) {
			rv = token_object_copy(s->token, s->handle, o, copy, phNewObject);
			copy = NULL;
		}
	}
	token_unlock(s->token);
out:
	attrs_free(copy);
	attrs_free(tmpl);
	end(s);
	return rv;
}

static CK_RV kt_DestroyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	token_lock(s->token);
	rv = token_sync(s->token);
	struct object *o = rv == CKR_OK ? token_object_get(s->token, hObject) : NULL;
	if (rv == CKR_OK && !o)
		rv = CKR_OBJECT_HANDLE_INVALID;
	if (rv == CKR_OK)
		rv = may_write_object(s, o->owner == 0, o->is_private);
	if (rv == CKR_OK && !attrs_bool(o->attrs, CKA_DESTROYABLE, true))
		rv = CKR_ACTION_PROHIBITED;
	if (rv == CKR_OK)
		rv = token_object_destroy(s->token, o);
	token_unlock(s->token);
	end(s);
	return rv;
}

static CK_RV kt_GetObjectSize(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	token_lock(s->token);
	rv = token_sync(s->token);
	struct object *o = rv == CKR_OK ? token_object_get(s->token, hObject) : NULL;
	if (rv == CKR_OK && !o)
		rv = CKR_OBJECT_HANDLE_INVALID;
	else if (rv == CKR_OK && !pulSize)
		rv = CKR_ARGUMENTS_BAD;
	else if (rv == CKR_OK)
		*pulSize = object_size(o->attrs);
	token_unlock(s->token);
	end(s);
	return rv;
}

static bool asks_status(const CK_ATTRIBUTE *tmpl, CK_ULONG count)
{
	for (CK_ULONG i = 0; i < count; i++)
		if (tmpl[i].type == CKA_KT_REVOCATION_STATUS || tmpl[i].type == CKA_KT_REVOCATION_CHECKED ||
		    tmpl[i].type == CKA_KT_ISSUER_ACCREDITATION)
			return true;
	return false;
}

/* A certificate's revocation status and its issuer's accreditation change
 * with the CRLs and the trust list, not with the certificate: they are
 * worked out when asked, never stored. */
static CK_RV certificate_attributes(const struct object *o, CK_ATTRIBUTE *tmpl, CK_ULONG count)
{
	static const CK_ULONG status_of[] = {
		[CERTCHECK_REV_UNKNOWN] = CK_KT_REVOCATION_UNKNOWN,
		[CERTCHECK_REV_GOOD] = CK_KT_REVOCATION_GOOD,
		[CERTCHECK_REV_REVOKED] = CK_KT_REVOCATION_REVOKED,
		[CERTCHECK_REV_SUSPENDED] = CK_KT_REVOCATION_SUSPENDED,
	};
	struct certcheck_status st;
	const CK_ATTRIBUTE *der = attrs_get(o->attrs, CKA_VALUE);
	struct attrs *view = attrs_dup(o->attrs);
	CK_RV rv = view ? CKR_OK : CKR_HOST_MEMORY;
	if (rv == CKR_OK && der) {
		certcheck_status(checker, der->pValue, der->ulValueLen, time(NULL), &st);
		rv = attrs_set_ulong(view, CKA_KT_REVOCATION_STATUS, status_of[st.revocation]);
		if (rv == CKR_OK && st.established) {
			char when[16];
			struct tm tm;
			gmtime_r(&st.established, &tm);
			strftime(when, sizeof(when), "%Y%m%d%H%M%SZ", &tm);
			rv = attrs_set(view, CKA_KT_REVOCATION_CHECKED, when, strlen(when));
		}
		if (rv == CKR_OK && st.accreditation[0])
			rv = attrs_set(view, CKA_KT_ISSUER_ACCREDITATION, st.accreditation,
				       strlen(st.accreditation));
	}
	if (rv == CKR_OK)
		rv = object_get_attributes(view, o->complete, tmpl, count);
	attrs_free(view);
	return rv;
}

static char *attr_text(const struct attrs *a, CK_ATTRIBUTE_TYPE type);
static char *attr_hex(const struct attrs *a, CK_ATTRIBUTE_TYPE type);
static char *attr_serial_hex(const struct attrs *a);
static char *attr_dn(const struct attrs *a, CK_ATTRIBUTE_TYPE type);
static char *issuer_text(const struct attrs *cert);

/* One object's attributes, the personal ones hidden when `hide`. */
static CK_RV read_attributes(const struct object *o, CK_ATTRIBUTE *tmpl, CK_ULONG count, bool hide)
{
	if (!hide) {
		if (o->cls == CKO_CERTIFICATE && asks_status(tmpl, count))
			return certificate_attributes(o, tmpl, count);
		return object_get_attributes(o->attrs, o->complete, tmpl, count);
	}
	/* Entry by entry: the hidden ones are sensitive, the rest as usual
	 * (the specification lets any one of several errors be returned). */
	CK_RV rv = CKR_OK;
	for (CK_ULONG i = 0; i < count; i++) {
		CK_RV r;
		if (certattrs_is_personal(tmpl[i].type) && attrs_has(o->attrs, tmpl[i].type)) {
			tmpl[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
			r = CKR_ATTRIBUTE_SENSITIVE;
		} else {
			r = read_attributes(o, &tmpl[i], 1, false);
		}
		if (rv == CKR_OK)
			rv = r;
	}
	return rv;
}

/* Did the read hand out a personal value (not just a length)? */
static bool disclosed_values(const struct object *o, const CK_ATTRIBUTE *tmpl, CK_ULONG count)
{
	for (CK_ULONG i = 0; i < count; i++)
		if (certattrs_is_personal(tmpl[i].type) && attrs_has(o->attrs, tmpl[i].type) && tmpl[i].pValue &&
		    tmpl[i].ulValueLen != CK_UNAVAILABLE_INFORMATION)
			return true;
	return false;
}

/* Whose personal data, for the dialog and the audit record. */
struct holder_facts {
	char serial[17];
	char *cn, *issuer, *cert_serial, *certificate;
};

static void holder_facts_get(const struct token *t, const struct object *o, struct holder_facts *h)
{
	snprintf(h->serial, sizeof(h->serial), "%s", t->state.serial);
	h->cn = attr_text(o->attrs, CKA_KT_COMMON_NAME);
	h->issuer = issuer_text(o->attrs);
	h->cert_serial = attr_serial_hex(o->attrs);
	if (asprintf(&h->certificate, "issued by %s, serial %s", h->issuer ? h->issuer : "?",
		     h->cert_serial ? h->cert_serial : "?") < 0)
		h->certificate = NULL;
}

static void holder_facts_free(struct holder_facts *h)
{
	free(h->cn);
	free(h->issuer);
	free(h->cert_serial);
	free(h->certificate);
}

/*
 * C_GetAttributeValue.  A certificate's personal data (birth, personal
 * number, a person's address) is read only by a session logged in as the
 * user, and under personal_data = consent only by a program the holder
 * allowed; the question waits for a person, so it is asked without the
 * token lock and the object looked up again afterwards.
 */
static CK_RV kt_GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
				  CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
	struct session *s;
	struct holder_facts facts = { 0 };
	char names[512];
	bool personal = false, hide = false, asked = false;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!pTemplate && ulCount) {
		end(s);
		return CKR_ARGUMENTS_BAD;
	}
	struct token *t = s->token;
	token_lock(t);
	rv = token_sync(t);
	struct object *o = rv == CKR_OK ? token_object_get(t, hObject) : NULL;
	if (rv == CKR_OK && !o)
		rv = CKR_OBJECT_HANDLE_INVALID;
	if (rv == CKR_OK && o->cls == CKO_CERTIFICATE)
		personal = personal_requested(o->attrs, pTemplate, ulCount, names, sizeof(names));
	if (personal && !logged_in_user(t)) {
		hide = true;
	} else if (personal && personal_needs_consent()) {
		holder_facts_get(t, o, &facts);
		token_unlock(t);
		hide = !personal_ask(facts.cn, facts.certificate, names);
		asked = true;
		token_lock(t);
		rv = token_sync(t);
		o = rv == CKR_OK ? token_object_get(t, hObject) : NULL;
		if (rv == CKR_OK && !o)
			rv = CKR_OBJECT_HANDLE_INVALID;
		if (!logged_in_user(t))
			hide = true;
	}
	bool disclosed = false, found = rv == CKR_OK;
	struct attrs *view = NULL;
	if (rv == CKR_OK)
		rv = token_object_view(t, o, pTemplate, ulCount, &view);
	if (rv == CKR_OK && view) {
		/* A device key's readable material, for this read only. */
		struct object shown = *o;
		shown.attrs = view;
		rv = read_attributes(&shown, pTemplate, ulCount, hide);
		attrs_free(view);
	} else if (rv == CKR_OK) {
		rv = read_attributes(o, pTemplate, ulCount, hide);
	}
	if (found) {
		disclosed = personal && !hide && disclosed_values(o, pTemplate, ulCount);
		if (disclosed && !facts.certificate)
			holder_facts_get(t, o, &facts);
	}
	token_unlock(t);
	/* Every disclosure is recorded, and a holder's refusal too. */
	if (disclosed || (asked && hide))
		personal_audit(facts.serial, facts.issuer, facts.cert_serial, names, disclosed);
	holder_facts_free(&facts);
	end(s);
	return rv;
}

/* What a compromise report says, copied under the token lock. */
struct compromise_facts {
	struct compromise_report r;
	char serial[17], label[33];
	char *key_id, *key_label, *issuer, *cert_serial, *reason;
};

static void compromise_facts_free(struct compromise_facts *f)
{
	free(f->key_id);
	free(f->key_label);
	free(f->issuer);
	free(f->cert_serial);
	free(f->reason);
}


static const char *class_name(CK_OBJECT_CLASS c)
{
	return c == CKO_PRIVATE_KEY ? "private key" : c == CKO_PUBLIC_KEY ? "public key" : "certificate";
}

/* The marked object, and the certificate of its key pair (the object
 * itself, or a certificate with the same CKA_ID). */
static void compromise_gather(struct token *t, const struct object *o, bool so, struct compromise_facts *f)
{
	const struct attrs *cert = o->cls == CKO_CERTIFICATE ? o->attrs : NULL;
	const CK_ATTRIBUTE *id = attrs_get(o->attrs, CKA_ID);
	if (!cert && id && id->ulValueLen) {
		CK_OBJECT_CLASS cc = CKO_CERTIFICATE;
		CK_ATTRIBUTE tmpl[] = { { CKA_CLASS, &cc, sizeof(cc) }, { CKA_ID, id->pValue, id->ulValueLen } };
		CK_OBJECT_HANDLE *h = NULL;
		size_t n = 0;
		if (token_find(t, tmpl, 2, &h, &n) == CKR_OK && n) {
			const struct object *c = token_object_get(t, h[0]);
			cert = c ? c->attrs : NULL;
		}
		free(h);
	}
	snprintf(f->serial, sizeof(f->serial), "%s", t->state.serial);
	snprintf(f->label, sizeof(f->label), "%s", t->state.label);
	f->key_id = attr_hex(o->attrs, CKA_ID);
	f->key_label = attr_text(o->attrs, CKA_LABEL);
	f->reason = attr_text(o->attrs, CKA_KT_COMPROMISE_REASON);
	if (cert) {
		f->issuer = issuer_text(cert);
		f->cert_serial = attr_serial_hex(cert);
	}
	f->r = (struct compromise_report){
		.token_serial = f->serial,
		.token_label = f->label,
		.object_class = class_name(o->cls),
		.key_id_hex = f->key_id,
		.key_label = f->key_label,
		.cert_issuer = f->issuer,
		.cert_serial_hex = f->cert_serial,
		.reason = f->reason,
		.marked_by = so ? "security officer" : "user",
		.program = kt_program(),
		.pid = kt_program_pid(),
	};
}

static CK_RV kt_SetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
				  CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
	struct session *s;
	struct attrs *tmpl = NULL, *next = NULL;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!pTemplate && ulCount) {
		rv = CKR_ARGUMENTS_BAD;
		goto out;
	}
	rv = object_template_read(pTemplate, ulCount, &tmpl);
	if (rv != CKR_OK)
		goto out;
	token_lock(s->token);
	rv = token_sync(s->token);
	struct object *o = rv == CKR_OK ? token_object_get(s->token, hObject) : NULL;
	if (rv == CKR_OK && !o)
		rv = CKR_OBJECT_HANDLE_INVALID;
	if (rv == CKR_OK)
		rv = may_write_object(s, o->owner == 0, o->is_private);
	if (rv == CKR_OK && !(next = attrs_dup(o->attrs)))
		rv = CKR_HOST_MEMORY;
	bool was_compromised = rv == CKR_OK && attrs_bool(o->attrs, CKA_KT_COMPROMISED, false);
	if (rv == CKR_OK) {
		struct object_actor who = actor_of(s);
		rv = object_modify(next, tmpl, false, &who);
	}
	bool marked = rv == CKR_OK && !was_compromised && attrs_bool(next, CKA_KT_COMPROMISED, false);
	if (rv == CKR_OK) {
		rv = token_object_replace(s->token, o, next);
		next = NULL;
	}
	struct compromise_facts facts = { 0 };
	if (rv == CKR_OK && marked)
		compromise_gather(s->token, o, s->token->login == CKU_SO, &facts);
	token_unlock(s->token);
	/* The mark is what protects the signer and it is committed: a
	 * report that cannot be written is logged loudly, not undone. */
	if (rv == CKR_OK && marked) {
		kt_log("key marked compromised (%s, key id %s): signatures with it are refused from now on",
		       facts.r.object_class, facts.key_id ? facts.key_id : "none");
		compromise_write(config ? config->compromise_dir : NULL, &facts.r, NULL, 0);
	}
	compromise_facts_free(&facts);
out:
	attrs_free(next);
	attrs_free(tmpl);
	end(s);
	return rv;
}

static CK_RV kt_FindObjectsInit(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!pTemplate && ulCount)
		rv = CKR_ARGUMENTS_BAD;
	else if (s->find.active)
		rv = CKR_OPERATION_ACTIVE;
	if (rv == CKR_OK) {
		token_lock(s->token);
		rv = token_sync(s->token);
		/* Matching on personal data would disclose it: only for those
		 * who may read it (and never asks: a find is no reason to
		 * interrupt the holder). */
		if (rv == CKR_OK && personal_in_template(pTemplate, ulCount) &&
		    (!logged_in_user(s->token) || personal_needs_consent())) {
			s->find.handles = NULL;
			s->find.count = 0;
		} else if (rv == CKR_OK) {
			rv = token_find(s->token, pTemplate, ulCount, &s->find.handles, &s->find.count);
		}
		token_unlock(s->token);
		if (rv == CKR_OK) {
			s->find.active = true;
			s->find.pos = 0;
		}
	}
	end(s);
	return rv;
}

static CK_RV kt_FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMaxCount,
			    CK_ULONG_PTR pulObjectCount)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!pulObjectCount || (!phObject && ulMaxCount))
		rv = CKR_ARGUMENTS_BAD;
	else if (!s->find.active)
		rv = CKR_OPERATION_NOT_INITIALIZED;
	if (rv == CKR_OK) {
		CK_ULONG n = 0;
		while (n < ulMaxCount && s->find.pos < s->find.count)
			phObject[n++] = s->find.handles[s->find.pos++];
		*pulObjectCount = n;
	}
	end(s);
	return rv;
}

static CK_RV kt_FindObjectsFinal(CK_SESSION_HANDLE hSession)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!s->find.active)
		rv = CKR_OPERATION_NOT_INITIALIZED;
	else
		session_end_find(s);
	end(s);
	return rv;
}

/* --- encryption: not offered by this signing token ----------------------- */

static CK_RV unsupported_session_call(CK_SESSION_HANDLE hSession)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	end(s);
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV kt_EncryptInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
	return unsupported_session_call(h);
}
static CK_RV kt_Encrypt(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR o, CK_ULONG_PTR ol)
{
	return unsupported_session_call(h);
}
static CK_RV kt_EncryptUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR o, CK_ULONG_PTR ol)
{
	return unsupported_session_call(h);
}
static CK_RV kt_EncryptFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR o, CK_ULONG_PTR ol)
{
	return unsupported_session_call(h);
}
static CK_RV kt_DecryptInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
	return unsupported_session_call(h);
}
static CK_RV kt_Decrypt(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR o, CK_ULONG_PTR ol)
{
	return unsupported_session_call(h);
}
static CK_RV kt_DecryptUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR o, CK_ULONG_PTR ol)
{
	return unsupported_session_call(h);
}
static CK_RV kt_DecryptFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR o, CK_ULONG_PTR ol)
{
	return unsupported_session_call(h);
}
static CK_RV kt_DigestEncryptUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR o,
				    CK_ULONG_PTR ol)
{
	return unsupported_session_call(h);
}
static CK_RV kt_DecryptDigestUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR o,
				    CK_ULONG_PTR ol)
{
	return unsupported_session_call(h);
}
static CK_RV kt_SignEncryptUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR o,
				  CK_ULONG_PTR ol)
{
	return unsupported_session_call(h);
}
static CK_RV kt_DecryptVerifyUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR o,
				    CK_ULONG_PTR ol)
{
	return unsupported_session_call(h);
}
static CK_RV kt_SignRecoverInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
	return unsupported_session_call(h);
}
static CK_RV kt_SignRecover(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR o, CK_ULONG_PTR ol)
{
	return unsupported_session_call(h);
}
static CK_RV kt_VerifyRecoverInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
	return unsupported_session_call(h);
}
static CK_RV kt_VerifyRecover(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR o, CK_ULONG_PTR ol)
{
	return unsupported_session_call(h);
}
static CK_RV kt_DeriveKey(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k, CK_ATTRIBUTE_PTR t,
			  CK_ULONG c, CK_OBJECT_HANDLE_PTR o)
{
	return unsupported_session_call(h);
}
static CK_RV kt_DigestKey(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE k)
{
	return unsupported_session_call(h);
}

/* --- digest, sign, verify ----------------------------------------------- */

/* Begin a crypto operation: the common checks of C_*Init. */
static CK_RV crypto_begin(struct session *s, CK_MECHANISM_PTR m)
{
	if (!m)
		return CKR_ARGUMENTS_BAD;
	if (s->crypto.kind != OP_NONE)
		return CKR_OPERATION_ACTIVE;
	return CKR_OK;
}

static CK_RV kt_DigestInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism)
{
	struct session *s;
	const struct mech_info *mi;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	rv = crypto_begin(s, pMechanism);
	if (rv == CKR_OK)
		rv = mech_lookup(pMechanism, MECH_DIGEST, &mi);
	if (rv == CKR_OK)
		rv = crypto_digest_init(mi, &s->crypto.op);
	if (rv == CKR_OK) {
		s->crypto.kind = OP_DIGEST;
		s->crypto.mech = mi;
	}
	end(s);
	return rv;
}

/* The output half of C_Digest and C_DigestFinal (signing: sign_output):
 * a length query or short buffer leaves the operation alive, anything
 * else ends it.  `data` NULL means "what update gave". */
static CK_RV crypto_output(struct session *s, const CK_BYTE *data, CK_ULONG len, bool oneshot,
			   CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
	CK_RV rv = output_fits(out, out_len, crypto_op_out_len(s->crypto.op));
	if (!out || rv == CKR_BUFFER_TOO_SMALL)
		return rv;
	if (rv == CKR_OK)
		rv = oneshot ? crypto_op_oneshot(s->crypto.op, data, len, out, out_len)
			     : crypto_op_final(s->crypto.op, out, out_len);
	session_end_crypto(s);
	return rv;
}

static CK_RV sign_output(struct session *s, const CK_BYTE *data, CK_ULONG len, bool oneshot, CK_BYTE_PTR out,
			 CK_ULONG_PTR out_len);

/* A device call answered CKR_DEVICE_REMOVED: from now on every session
 * from before the removal says so (begin() compares insertions), not only
 * from the next call that happens to ask the device. */
static void device_removal_seen(struct session *s, CK_RV rv)
{
	if (rv != CKR_DEVICE_REMOVED || !token_is_device(s->token))
		return;
	token_lock(s->token);
	token_sync(s->token);
	token_unlock(s->token);
}

/* C_Digest, C_DigestFinal, C_Sign and C_SignFinal: the checks they share,
 * then the output half of their kind of operation. */
static CK_RV output_call(CK_SESSION_HANDLE hSession, enum op_kind kind, const CK_BYTE *data, CK_ULONG len,
			 bool oneshot, CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (s->crypto.kind != kind) {
		rv = CKR_OPERATION_NOT_INITIALIZED;
	} else if (!out_len || (oneshot && !data && len)) {
		rv = CKR_ARGUMENTS_BAD;
		session_end_crypto(s);
	} else if (kind == OP_SIGN) {
		rv = sign_output(s, data, len, oneshot, out, out_len);
		device_removal_seen(s, rv);
	} else {
		rv = crypto_output(s, data, len, oneshot, out, out_len);
	}
	end(s);
	return rv;
}

static CK_RV kt_Digest(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pDigest,
		       CK_ULONG_PTR pulDigestLen)
{
	return output_call(hSession, OP_DIGEST, pData, ulDataLen, true, pDigest, pulDigestLen);
}

static CK_RV crypto_update(CK_SESSION_HANDLE hSession, enum op_kind kind, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (s->crypto.kind != kind) {
		rv = CKR_OPERATION_NOT_INITIALIZED;
	} else {
		if (!pPart && ulPartLen) {
			rv = CKR_ARGUMENTS_BAD;
		} else if (kind == OP_SIGN && signing_keeps_data(&s->crypto)) {
			/* Shown to the signer and signed at C_SignFinal. */
			rv = signing_keep(&s->crypto, pPart, ulPartLen);
		} else {
			rv = crypto_op_update(s->crypto.op, pPart, ulPartLen);
			s->crypto.streamed += ulPartLen;
		}
		if (rv != CKR_OK)
			session_end_crypto(s);
		device_removal_seen(s, rv);
	}
	end(s);
	return rv;
}

static CK_RV kt_DigestUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
	return crypto_update(hSession, OP_DIGEST, pPart, ulPartLen);
}

static CK_RV kt_DigestFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen)
{
	return output_call(hSession, OP_DIGEST, NULL, 0, false, pDigest, pulDigestLen);
}

static bool mechanism_allowed(const struct attrs *key, CK_MECHANISM_TYPE type)
{
	const CK_ATTRIBUTE *am = attrs_get(key, CKA_ALLOWED_MECHANISMS);
	if (!am || am->ulValueLen == 0)
		return true;
	const CK_MECHANISM_TYPE *list = am->pValue;
	for (CK_ULONG i = 0; i < am->ulValueLen / sizeof(CK_MECHANISM_TYPE); i++)
		if (list[i] == type)
			return true;
	return false;
}

struct binding {
	struct crypto_state *c;
	CK_RV rv;
};

static char *attr_text(const struct attrs *a, CK_ATTRIBUTE_TYPE type)
{
	const CK_ATTRIBUTE *at = attrs_get(a, type);
	char *s = at && at->ulValueLen < 4096 ? malloc(at->ulValueLen + 1) : NULL;
	if (s) {
		memcpy(s, at->pValue, at->ulValueLen);
		s[at->ulValueLen] = '\0';
	}
	return s;
}

static char *attr_hex(const struct attrs *a, CK_ATTRIBUTE_TYPE type)
{
	const CK_ATTRIBUTE *at = attrs_get(a, type);
	char *s = at && at->ulValueLen < 1024 ? malloc(2 * at->ulValueLen + 1) : NULL;
	if (s)
		kt_hex(s, at->pValue, at->ulValueLen);
	return s;
}

/* The serial number's hex, from CKA_SERIAL_NUMBER's DER INTEGER (its
 * content only: what the certification centre and every viewer show). */
static char *attr_serial_hex(const struct attrs *a)
{
	const CK_ATTRIBUTE *at = attrs_get(a, CKA_SERIAL_NUMBER);
	const unsigned char *p = at ? at->pValue : NULL;
	ASN1_INTEGER *i = p ? d2i_ASN1_INTEGER(NULL, &p, (long)at->ulValueLen) : NULL;
	char *s = NULL;
	if (i && i->length > 0 && i->length < 1024 && (s = malloc(2 * (size_t)i->length + 1)))
		kt_hex(s, i->data, (size_t)i->length);
	ASN1_INTEGER_free(i);
	return s;
}

/* A DER Name attribute (CKA_ISSUER, CKA_SUBJECT) as RFC 2253 text, in
 * UTF-8 rather than \XX escapes: Cyrillic names stay readable. */
#define DN_FLAGS (XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB)
static char *attr_dn(const struct attrs *a, CK_ATTRIBUTE_TYPE type)
{
	const CK_ATTRIBUTE *at = attrs_get(a, type);
	const unsigned char *p = at ? at->pValue : NULL;
	X509_NAME *name = p ? d2i_X509_NAME(NULL, &p, (long)at->ulValueLen) : NULL;
	BIO *bio = name ? BIO_new(BIO_s_mem()) : NULL;
	char *s = NULL, *data;
	if (bio && X509_NAME_print_ex(bio, name, 0, DN_FLAGS) >= 0) {
		long n = BIO_get_mem_data(bio, &data);
		if (n >= 0 && n < 4096 && (s = malloc((size_t)n + 1))) {
			memcpy(s, data, (size_t)n);
			s[n] = '\0';
		}
	}
	BIO_free(bio);
	X509_NAME_free(name);
	return s;
}

/* The issuer as the audit log and the dialog name it: the certification
 * centre's DN.  A self-signed certificate's issuer is its holder, whose
 * name and personal number belong in neither, so it is only "self-signed". */
static char *issuer_text(const struct attrs *cert)
{
	const CK_ATTRIBUTE *iss = attrs_get(cert, CKA_ISSUER), *sub = attrs_get(cert, CKA_SUBJECT);
	if (iss && sub && iss->ulValueLen == sub->ulValueLen &&
	    memcmp(iss->pValue, sub->pValue, iss->ulValueLen) == 0)
		return strdup("self-signed");
	return attr_dn(cert, CKA_ISSUER);
}

/* What the certificate limits, in words the signer reads before saying
 * yes: the transaction limit, the powers to act for others and their end,
 * the extended key usages.  NULL when it limits none of these. */
static char *restrictions_of(const struct attrs *cert)
{
	char *limit = attr_text(cert, CKA_KT_QC_LIMIT_VALUE), *powers = attr_text(cert, CKA_KT_POWERS);
	char *until = attr_text(cert, CKA_KT_POWERS_UNTIL), *eku = attr_text(cert, CKA_KT_EXT_KEY_USAGE);
	char *out = NULL;
	size_t len = 0;
	FILE *f = limit || powers || eku ? open_memstream(&out, &len) : NULL;
	const char *sep = "";
	if (f) {
		if (limit) {
			fprintf(f, "transactions up to %s", limit);
			sep = "; ";
		}
		if (powers) {
			fprintf(f, "%sacts for others: %s", sep, powers);
			/* "YYYYMMDDhhmmssZ": the day is what a person checks */
			if (until && strlen(until) >= 8)
				fprintf(f, " until %.4s-%.2s-%.2s", until, until + 4, until + 6);
			sep = "; ";
		}
		if (eku)
			fprintf(f, "%sextended key usage %s", sep, eku);
		if (fclose(f) != 0) {
			free(out);
			out = NULL;
		}
	}
	free(limit);
	free(powers);
	free(until);
	free(eku);
	return out;
}

/* Remember the certificate a signing key belongs to, and whether a
 * qualified certificate with its CKA_ID names some other key. */
static void bind_certificate(void *ctx, const struct object *cert, bool matches)
{
	struct binding *b = ctx;
	const CK_ATTRIBUTE *der = attrs_get(cert->attrs, CKA_VALUE);
	if (!der || b->rv != CKR_OK)
		return;
	if (!matches) {
		if (certcheck_is_qualified(checker, der->pValue, der->ulValueLen))
			b->c->cert_mismatch = true;
		return;
	}
	if (b->c->cert)
		return;
	b->c->holder_type = CK_KT_HOLDER_UNKNOWN;
	attrs_get_ulong(cert->attrs, CKA_KT_HOLDER_TYPE, &b->c->holder_type);
	b->c->signer = attr_text(cert->attrs, CKA_KT_COMMON_NAME);
	b->c->cert_issuer = issuer_text(cert->attrs);
	b->c->restrictions = restrictions_of(cert->attrs);
	b->c->cert_serial = attr_serial_hex(cert->attrs);
	b->c->cert = malloc(der->ulValueLen);
	if (!b->c->cert) {
		b->rv = CKR_HOST_MEMORY;
		return;
	}
	memcpy(b->c->cert, der->pValue, der->ulValueLen);
	b->c->cert_len = der->ulValueLen;
}

/* Is an object of the key pair (same CKA_ID) marked compromised? */
static bool pair_compromised(struct token *t, const struct object *key)
{
	if (attrs_bool(key->attrs, CKA_KT_COMPROMISED, false))
		return true;
	const CK_ATTRIBUTE *id = attrs_get(key->attrs, CKA_ID);
	if (!id || !id->ulValueLen)
		return false;
	CK_BBOOL yes = CK_TRUE;
	CK_ATTRIBUTE tmpl[] = { { CKA_ID, id->pValue, id->ulValueLen }, { CKA_KT_COMPROMISED, &yes, sizeof(yes) } };
	CK_OBJECT_HANDLE *h = NULL;
	size_t n = 0;
	/* Out of memory counts as compromised: refusing is the safe side. */
	bool found = token_find(t, tmpl, 2, &h, &n) != CKR_OK || n > 0;
	free(h);
	return found;
}

/* May this private key sign at all?  Not once its pair is marked
 * compromised; not an imported key for qualified signatures when the
 * configuration says imported_keys = refuse. */
static CK_RV key_usable(struct token *t, const struct object *key)
{
	if (pair_compromised(t, key)) {
		kt_log("signature refused: the key is marked compromised (CKA_KT_COMPROMISED)");
		return CKR_KEY_FUNCTION_NOT_PERMITTED;
	}
	CK_ULONG policy = CK_KT_POLICY_CONFIRM;
	attrs_get_ulong(key->attrs, CKA_KT_SIGN_POLICY, &policy);
	if (config && config->refuse_imported && policy == CK_KT_POLICY_CONFIRM &&
	    !attrs_bool(key->attrs, CKA_LOCAL, false)) {
		kt_log("signature refused: the key was imported, not generated on the token (imported_keys = refuse)");
		return CKR_KEY_FUNCTION_NOT_PERMITTED;
	}
	return CKR_OK;
}

/* C_SignInit and C_VerifyInit: find the key, check it may do this with
 * this mechanism, and start the operation. */
static CK_RV key_op_init(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE hKey, bool sign)
{
	struct session *s;
	const struct mech_info *mi = NULL;
	EVP_PKEY *pkey = NULL;
	struct crypto_remote remote;
	bool on_device = false, host_hash = false;
	CK_OBJECT_HANDLE device_key = CK_INVALID_HANDLE;
	CK_ULONG key_bits = 0;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	rv = crypto_begin(s, m);
	if (rv != CKR_OK)
		goto out;
	rv = mech_lookup(m, sign ? MECH_SIGN : MECH_VERIFY, &mi);
	if (rv != CKR_OK)
		goto out;

	struct token *t = s->token;
	token_lock(t);
	rv = token_sync(t);
	struct object *key = rv == CKR_OK ? token_object_get(t, hKey) : NULL;
	CK_ULONG kt = CKK_VENDOR_DEFINED;
	if (rv != CKR_OK) {
		/* keep rv */
	} else if (!key) {
		rv = CKR_KEY_HANDLE_INVALID;
	} else if (sign ? key->cls != CKO_PRIVATE_KEY
			: key->cls != CKO_PUBLIC_KEY && key->cls != CKO_PRIVATE_KEY) {
		rv = CKR_KEY_TYPE_INCONSISTENT;
	} else if (!attrs_get_ulong(key->attrs, CKA_KEY_TYPE, &kt) || kt != mi->key_type) {
		rv = CKR_KEY_TYPE_INCONSISTENT;
	} else if (!attrs_bool(key->attrs, sign ? CKA_SIGN : CKA_VERIFY, false) &&
		   !(!sign && key->cls == CKO_PRIVATE_KEY && attrs_bool(key->attrs, CKA_SIGN, false))) {
		rv = CKR_KEY_FUNCTION_NOT_PERMITTED;
	} else if (!mechanism_allowed(key->attrs, m->mechanism)) {
		rv = CKR_MECHANISM_INVALID;
	} else if (sign && !logged_in_user(t)) {
		/* A private key signs for its holder only, whatever its
		 * CKA_PRIVATE says: PKCS#11 would allow a "public" private
		 * key, the law's sole control does not. */
		rv = CKR_USER_NOT_LOGGED_IN;
	} else if (sign && (rv = key_usable(t, key)) != CKR_OK) {
		/* keep rv */
	} else if (sign && key->on_device) {
		/* The device signs; the module checks and accounts.  The
		 * device is asked after the token lock is released: a
		 * device's C_SignInit is most of a signature's time, and
		 * other signers must not wait for it. */
		key_bits = crypto_key_bits(CKO_PRIVATE_KEY, key->attrs);
		rv = crypto_check_remote(mi, m, kt, key_bits);
		device_key = key->handle;
		on_device = true;
	} else {
		rv = token_object_pkey(t, key, &pkey);
	}
	if (rv == CKR_OK) {
		s->crypto.key = hKey;
		s->crypto.uses_private_key = key->cls == CKO_PRIVATE_KEY;
		s->crypto.login_epoch = t->login_epoch;
		s->crypto.needs_context_login =
			sign && attrs_bool(key->attrs, CKA_ALWAYS_AUTHENTICATE, false);
		if (sign) {
			struct binding b = { .c = &s->crypto, .rv = CKR_OK };
			token_key_certificates(t, key, bind_certificate, &b);
			rv = b.rv;
			if (rv == CKR_OK)
				rv = signing_begin(&s->crypto, t, s->handle, key->attrs, m->mechanism);
		}
	}
	token_unlock(t);
	if (rv == CKR_OK && on_device) {
		rv = token_sign_remote(t, device_key, m, mi, &remote, &host_hash);
		/* The op owns the device's operation from here, whatever
		 * happens. */
		if (rv == CKR_OK)
			rv = crypto_sign_init_remote(mi, m, kt, key_bits, &remote, host_hash, &s->crypto.op);
	} else if (rv == CKR_OK) {
		rv = crypto_sign_init(mi, m, pkey, sign, &s->crypto.op);
	}
	if (rv != CKR_OK) {
		device_removal_seen(s, rv);
		session_end_crypto(s);
		goto out;
	}
	s->crypto.kind = sign ? OP_SIGN : OP_VERIFY;
	s->crypto.mech = mi;
out:
	EVP_PKEY_free(pkey);
	end(s);
	kt_debug(KT_DBG_CRYPTO, "C_%sInit(%s, key %lu) = %s", sign ? "Sign" : "Verify",
		 m ? kt_mech_name(m->mechanism) : "NULL", hKey, kt_rv_name(rv));
	return rv;
}

static CK_RV kt_SignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
	return key_op_init(hSession, pMechanism, hKey, true);
}

/* The law's checks of the key's certificate (art. 11): a key bound to a
 * qualified certificate signs only while that certificate is valid,
 * unrevoked, allows signing and comes from an accredited centre. */
static CK_RV certificate_gate(struct session *s)
{
	struct crypto_state *c = &s->crypto;
	char why[200] = "";
	if (c->cert_mismatch) {
		snprintf(c->reason, sizeof(c->reason),
			 "a qualified certificate with the key's CKA_ID holds another public key");
		kt_log("signature refused: %s", c->reason);
		return CKR_KEY_FUNCTION_NOT_PERMITTED;
	}
	if (!c->cert)
		return CKR_OK;
	enum certcheck_verdict v = certcheck_judge(checker, c->cert, c->cert_len, time(NULL), why, sizeof(why));
	if (v == CERTCHECK_OK || v == CERTCHECK_NOT_QUALIFIED)
		return CKR_OK;
	snprintf(c->reason, sizeof(c->reason), "%s: %s", certcheck_verdict_name(v), why);
	kt_log("signature refused (%s): %s", certcheck_verdict_name(v), why);
	return CKR_KEY_FUNCTION_NOT_PERMITTED;
}

/*
 * The last step before a private key signs: everything that may refuse a
 * signature goes here, so no signing path can skip it: the login the
 * operation started under still holds, a key that demands per-use
 * authentication got it, the key's certificate passes the law's checks.
 * The signer's confirmation and the audit record plug in here too.
 */
static CK_RV sign_gate(struct session *s)
{
	struct crypto_state *c = &s->crypto;
	if (c->uses_private_key &&
	    __atomic_load_n(&s->token->login_epoch, __ATOMIC_ACQUIRE) != c->login_epoch)
		return CKR_USER_NOT_LOGGED_IN;
	/* A confirm key's own dialog stands in for a missing
	 * context-specific login (signing_activate). */
	if (c->needs_context_login && !c->context_logged_in && c->policy != CK_KT_POLICY_CONFIRM)
		return CKR_USER_NOT_LOGGED_IN;
	return certificate_gate(s);
}

/*
 * The output half of C_Sign and C_SignFinal.  A length query or a short
 * buffer neither asks nor signs and keeps the operation; otherwise the
 * gate and the signing policy decide, the key signs (a confirm key signs
 * its private copy of what the signer saw), and the operation ends.
 */
static CK_RV sign_output(struct session *s, const CK_BYTE *data, CK_ULONG len, bool oneshot, CK_BYTE_PTR out,
			 CK_ULONG_PTR out_len)
{
	struct crypto_state *c = &s->crypto;
	CK_RV rv = output_fits(out, out_len, crypto_op_out_len(c->op));
	if (!out || rv == CKR_BUFFER_TOO_SMALL)
		return rv;
	const CK_BYTE *what = oneshot ? data : NULL;
	CK_ULONG what_len = oneshot ? len : 0;
	if (signing_keeps_data(c)) {
		if (oneshot)
			rv = signing_keep(c, data, len);
		what = c->data;
		what_len = c->data_len;
		oneshot = true;
	}
	if (rv == CKR_OK)
		rv = sign_gate(s);
	if (rv == CKR_OK)
		rv = signing_activate(s, what, what_len);
	/* The dialog took its time: a logout meanwhile still ends it. */
	if (rv == CKR_OK && c->uses_private_key &&
	    __atomic_load_n(&s->token->login_epoch, __ATOMIC_ACQUIRE) != c->login_epoch)
		rv = CKR_USER_NOT_LOGGED_IN;
	/* A seal's audit record needs the data's SHA-256; for the mechanisms
	 * that sign exactly that digest, it is computed once and signed. */
	unsigned char digest[32];
	bool hashed = false;
	if (rv == CKR_OK && oneshot && crypto_op_prehashable(c->op) && (what || !what_len) &&
	    crypto_sha256(what, what_len, digest)) {
		hashed = true;
		rv = crypto_op_sign_sha256(c->op, digest, out, out_len);
	} else if (rv == CKR_OK) {
		rv = oneshot ? crypto_op_oneshot(c->op, what, what_len, out, out_len)
			     : crypto_op_final(c->op, out, out_len);
	}
	signing_finish(s, rv, what, what_len, hashed ? digest : NULL);
	kt_wipe(digest, sizeof(digest));
	session_end_crypto(s);
	return rv;
}

static CK_RV kt_Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
		     CK_ULONG_PTR pulSignatureLen)
{
	return output_call(hSession, OP_SIGN, pData, ulDataLen, true, pSignature, pulSignatureLen);
}

static CK_RV kt_SignUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
	return crypto_update(hSession, OP_SIGN, pPart, ulPartLen);
}

static CK_RV kt_SignFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
	return output_call(hSession, OP_SIGN, NULL, 0, false, pSignature, pulSignatureLen);
}

static CK_RV kt_VerifyInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
	return key_op_init(hSession, pMechanism, hKey, false);
}

static CK_RV verify_finish(CK_SESSION_HANDLE hSession, const CK_BYTE *data, CK_ULONG len, bool oneshot,
			   CK_BYTE_PTR sig, CK_ULONG sig_len)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (s->crypto.kind != OP_VERIFY) {
		rv = CKR_OPERATION_NOT_INITIALIZED;
	} else {
		if (!sig || (oneshot && !data && len))
			rv = CKR_ARGUMENTS_BAD;
		else
			/* crypto_op_verify takes data == NULL as "what update
			 * gave", so an empty one-shot message needs a non-NULL
			 * pointer. */
			rv = crypto_op_verify(s->crypto.op, oneshot ? (data ? data : (const CK_BYTE *)"") : NULL,
					      len, sig, sig_len);
		session_end_crypto(s);
	}
	end(s);
	return rv;
}

static CK_RV kt_Verify(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
		       CK_ULONG ulSignatureLen)
{
	return verify_finish(hSession, pData, ulDataLen, true, pSignature, ulSignatureLen);
}

static CK_RV kt_VerifyUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
	return crypto_update(hSession, OP_VERIFY, pPart, ulPartLen);
}

static CK_RV kt_VerifyFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen)
{
	return verify_finish(hSession, NULL, 0, false, pSignature, ulSignatureLen);
}

/* --- key management ----------------------------------------------------- */

static CK_KEY_TYPE generated_key_type(CK_MECHANISM_TYPE m)
{
	switch (m) {
	case CKM_RSA_PKCS_KEY_PAIR_GEN:
		return CKK_RSA;
	case CKM_EC_KEY_PAIR_GEN:
		return CKK_EC;
	case CKM_EC_EDWARDS_KEY_PAIR_GEN:
		return CKK_EC_EDWARDS;
	case CKM_AES_KEY_GEN:
		return CKK_AES;
	default:
		return CKK_GENERIC_SECRET;
	}
}

static CK_RV kt_GenerateKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pTemplate,
			    CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phKey)
{
	struct session *s;
	struct attrs *a = NULL;
	const struct mech_info *mi;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!pMechanism || !phKey || (!pTemplate && ulCount)) {
		rv = CKR_ARGUMENTS_BAD;
		goto out;
	}
	rv = mech_lookup(pMechanism, MECH_GENERATE, &mi);
	if (rv == CKR_OK)
		rv = object_template_read(pTemplate, ulCount, &a);
	if (rv != CKR_OK)
		goto out;
	token_lock(s->token);
	struct object_actor who = actor_of(s);
	rv = object_build(a, ORIGIN_GENERATE, CKO_SECRET_KEY, generated_key_type(mi->type), mi->type, &who);
	if (rv == CKR_OK)
		rv = may_write_object(s, object_is_token(a), object_is_private(a));
	if (rv == CKR_OK && token_is_device(s->token)) {
		rv = crypto_check_generate(pMechanism, NULL, a);
		if (rv == CKR_OK)
			rv = token_sync(s->token);
		if (rv == CKR_OK) {
			rv = token_generate_remote(s->token, s->handle, pMechanism, NULL, a, NULL, phKey);
			a = NULL;
		}
		token_unlock(s->token);
		goto out;
	}
	if (rv == CKR_OK)
		rv = crypto_generate_key(pMechanism, a);
	if (rv == CKR_OK)
		rv = token_sync(s->token);
	if (rv == CKR_OK) {
		rv = token_object_add(s->token, s->handle, a, phKey);
		a = NULL;
	}
	token_unlock(s->token);
out:
	attrs_free(a);
	end(s);
	return rv;
}

static CK_RV kt_GenerateKeyPair(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
				CK_ATTRIBUTE_PTR pPubTemplate, CK_ULONG ulPubCount,
				CK_ATTRIBUTE_PTR pPrivTemplate, CK_ULONG ulPrivCount,
				CK_OBJECT_HANDLE_PTR phPublicKey, CK_OBJECT_HANDLE_PTR phPrivateKey)
{
	struct session *s;
	struct attrs *pub = NULL, *priv = NULL;
	const struct mech_info *mi;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!pMechanism || !phPublicKey || !phPrivateKey || (!pPubTemplate && ulPubCount) ||
	    (!pPrivTemplate && ulPrivCount)) {
		rv = CKR_ARGUMENTS_BAD;
		goto out;
	}
	rv = mech_lookup(pMechanism, MECH_GENERATE_PAIR, &mi);
	if (rv == CKR_OK)
		rv = object_template_read(pPubTemplate, ulPubCount, &pub);
	if (rv == CKR_OK)
		rv = object_template_read(pPrivTemplate, ulPrivCount, &priv);
	if (rv != CKR_OK)
		goto out;

	CK_KEY_TYPE kt = generated_key_type(mi->type);
	struct token *t = s->token;
	token_lock(t);
	struct object_actor who = actor_of(s);
	rv = object_build(pub, ORIGIN_GENERATE, CKO_PUBLIC_KEY, kt, mi->type, &who);
	if (rv == CKR_OK)
		rv = object_build(priv, ORIGIN_GENERATE, CKO_PRIVATE_KEY, kt, mi->type, &who);
	if (rv == CKR_OK)
		rv = signing_assign(t->policy, priv);
	if (rv == CKR_OK)
		rv = may_write_object(s, object_is_token(pub), object_is_private(pub));
	if (rv == CKR_OK)
		rv = may_write_object(s, object_is_token(priv), object_is_private(priv));
	if (rv == CKR_OK && token_is_device(t)) {
		/* Made on the device, never seen by the module (session keys
		 * too: the device's session objects). */
		rv = crypto_check_generate(pMechanism, pub, priv);
		if (rv == CKR_OK)
			rv = token_sync(t);
		if (rv == CKR_OK) {
			rv = token_generate_remote(t, s->handle, pMechanism, pub, priv, phPublicKey, phPrivateKey);
			pub = priv = NULL;
		}
		token_unlock(t);
		goto out;
	}
	if (rv == CKR_OK)
		rv = crypto_generate_key_pair(pMechanism, pub, priv);
	if (rv == CKR_OK)
		rv = token_sync(t);
	if (rv == CKR_OK) {
		rv = token_object_add(t, s->handle, pub, phPublicKey);
		pub = NULL;
	}
	if (rv == CKR_OK) {
		rv = token_object_add(t, s->handle, priv, phPrivateKey);
		priv = NULL;
		if (rv != CKR_OK) {
			/* Half a key pair is no use to anyone. */
			struct object *o = token_object_get(t, *phPublicKey);
			if (o)
				token_object_destroy(t, o);
		}
	}
	token_unlock(t);
out:
	attrs_free(pub);
	attrs_free(priv);
	end(s);
	kt_debug(KT_DBG_CRYPTO, "C_GenerateKeyPair(%s) = %s",
		 pMechanism ? kt_mech_name(pMechanism->mechanism) : "NULL", kt_rv_name(rv));
	return rv;
}

static bool is_aes_key(const struct object *o)
{
	CK_ULONG kt;
	return o->cls == CKO_SECRET_KEY && attrs_get_ulong(o->attrs, CKA_KEY_TYPE, &kt) && kt == CKK_AES;
}

static CK_RV kt_WrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hWrappingKey,
			CK_OBJECT_HANDLE hKey, CK_BYTE_PTR pWrappedKey, CK_ULONG_PTR pulWrappedKeyLen)
{
	struct session *s;
	const struct mech_info *mi;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!pMechanism || !pulWrappedKeyLen) {
		rv = CKR_ARGUMENTS_BAD;
		goto out;
	}
	rv = mech_lookup(pMechanism, MECH_WRAP, &mi);
	if (rv != CKR_OK)
		goto out;
	struct token *t = s->token;
	token_lock(t);
	rv = token_sync(t);
	struct object *wk = token_object_get(t, hWrappingKey), *k = token_object_get(t, hKey);
	if (rv != CKR_OK) {
		/* keep rv */
	} else if (!wk) {
		rv = CKR_WRAPPING_KEY_HANDLE_INVALID;
	} else if (!is_aes_key(wk)) {
		rv = CKR_WRAPPING_KEY_TYPE_INCONSISTENT;
	} else if (!attrs_bool(wk->attrs, CKA_WRAP, false)) {
		rv = CKR_KEY_FUNCTION_NOT_PERMITTED;
	} else if (!k) {
		rv = CKR_KEY_HANDLE_INVALID;
	} else if (!attrs_bool(k->attrs, CKA_EXTRACTABLE, false)) {
		rv = CKR_KEY_UNEXTRACTABLE;
	} else if (k->cls != CKO_SECRET_KEY) {
		/* Private keys never leave the token, by any path, even
		 * one marked extractable. */
		rv = CKR_KEY_NOT_WRAPPABLE;
	} else if (attrs_bool(k->attrs, CKA_WRAP_WITH_TRUSTED, false) &&
		   !attrs_bool(wk->attrs, CKA_TRUSTED, false)) {
		rv = CKR_KEY_NOT_WRAPPABLE;
	} else if (!k->complete || !wk->complete) {
		rv = CKR_USER_NOT_LOGGED_IN;
	} else if (wk->on_device || k->on_device) {
		/* The device wraps what only it holds. */
		rv = token_wrap_remote(t, pMechanism, wk, k, pWrappedKey, pulWrappedKeyLen);
	} else {
		const CK_ATTRIBUTE *v = attrs_get(k->attrs, CKA_VALUE);
		rv = v ? crypto_wrap(pMechanism, wk->attrs, v->pValue, v->ulValueLen, pWrappedKey,
				     pulWrappedKeyLen)
		       : CKR_KEY_NOT_WRAPPABLE;
	}
	token_unlock(t);
out:
	end(s);
	return rv;
}

static CK_RV kt_UnwrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
			  CK_OBJECT_HANDLE hUnwrappingKey, CK_BYTE_PTR pWrappedKey, CK_ULONG ulWrappedKeyLen,
			  CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phKey)
{
	struct session *s;
	struct attrs *a = NULL;
	CK_BYTE *value = NULL;
	CK_ULONG value_len = 0;
	const struct mech_info *mi;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!pMechanism || !pWrappedKey || !phKey || (!pTemplate && ulCount)) {
		rv = CKR_ARGUMENTS_BAD;
		goto out;
	}
	rv = mech_lookup(pMechanism, MECH_UNWRAP, &mi);
	if (rv == CKR_OK)
		rv = object_template_read(pTemplate, ulCount, &a);
	if (rv != CKR_OK)
		goto out;
	CK_ULONG cls;
	if (!attrs_has(a, CKA_CLASS)) {
		rv = CKR_TEMPLATE_INCOMPLETE;
		goto out;
	}
	if (!attrs_get_ulong(a, CKA_CLASS, &cls) || cls != CKO_SECRET_KEY) {
		rv = CKR_TEMPLATE_INCONSISTENT;
		goto out;
	}

	struct token *t = s->token;
	token_lock(t);
	rv = token_sync(t);
	struct object *uk = token_object_get(t, hUnwrappingKey);
	if (rv != CKR_OK) {
		/* keep rv */
	} else if (!uk) {
		rv = CKR_UNWRAPPING_KEY_HANDLE_INVALID;
	} else if (!is_aes_key(uk)) {
		rv = CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT;
	} else if (!attrs_bool(uk->attrs, CKA_UNWRAP, false)) {
		rv = CKR_KEY_FUNCTION_NOT_PERMITTED;
	} else if (!uk->complete) {
		rv = CKR_USER_NOT_LOGGED_IN;
	} else {
		struct object_actor who = actor_of(s);
		rv = object_build(a, ORIGIN_UNWRAP, CKO_SECRET_KEY, CKK_VENDOR_DEFINED, 0, &who);
	}
	if (rv == CKR_OK)
		rv = may_write_object(s, object_is_token(a), object_is_private(a));
	if (rv == CKR_OK && uk->on_device) {
		/* Unwrapped on the device, into the device. */
		rv = token_unwrap_remote(t, s->handle, pMechanism, uk, pWrappedKey, ulWrappedKeyLen, a, phKey);
		a = NULL;
		token_unlock(t);
		goto out;
	}
	if (rv == CKR_OK)
		rv = crypto_unwrap(pMechanism, uk->attrs, pWrappedKey, ulWrappedKeyLen, &value, &value_len);
	if (rv == CKR_OK) {
		CK_ULONG want;
		if (attrs_get_ulong(a, CKA_VALUE_LEN, &want) && want != value_len)
			rv = CKR_TEMPLATE_INCONSISTENT;
	}
	if (rv == CKR_OK) {
		rv = attrs_take(a, CKA_VALUE, value, value_len);
		value = NULL;
	}
	if (rv == CKR_OK) {
		CK_ULONG kt = CKK_VENDOR_DEFINED;
		attrs_get_ulong(a, CKA_KEY_TYPE, &kt);
		attrs_remove(a, CKA_VALUE_LEN);
		rv = crypto_check_key(CKO_SECRET_KEY, kt, a);
	}
	if (rv == CKR_OK) {
		rv = token_object_add(t, s->handle, a, phKey);
		a = NULL;
	}
	token_unlock(t);
out:
	kt_free_secret(value, value_len);
	attrs_free(a);
	end(s);
	return rv;
}

/* --- random, legacy, events --------------------------------------------- */

static CK_RV kt_SeedRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	end(s);
	/* OpenSSL seeds itself from the OS; a caller's seed adds nothing. */
	return !pSeed && ulSeedLen ? CKR_ARGUMENTS_BAD : CKR_RANDOM_SEED_NOT_SUPPORTED;
}

static CK_RV kt_GenerateRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pRandom, CK_ULONG ulRandomLen)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	end(s);
	if (!pRandom && ulRandomLen)
		return CKR_ARGUMENTS_BAD;
	return ulRandomLen ? crypto_random(pRandom, ulRandomLen) : CKR_OK;
}

static CK_RV kt_GetFunctionStatus(CK_SESSION_HANDLE hSession)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	end(s);
	return CKR_FUNCTION_NOT_PARALLEL;
}

static CK_RV kt_CancelFunction(CK_SESSION_HANDLE hSession)
{
	return kt_GetFunctionStatus(hSession);
}

static CK_RV kt_WaitForSlotEvent_entered(CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved)
{
	if (!pSlot || pReserved)
		return CKR_ARGUMENTS_BAD;
	/* File tokens are never inserted or removed; devices are, and are
	 * looked at when asked (no thread watches them: waiting is not
	 * supported, polling with CKF_DONT_BLOCK is).  A device held by a
	 * call in progress is left for the next poll. */
	if (!(flags & CKF_DONT_BLOCK))
		return CKR_FUNCTION_NOT_SUPPORTED;
	for (size_t i = 0, n = slot_count(); i < n; i++) {
		struct token *t = slot_at(i);
		if (!t || !token_is_device(t) || !token_trylock(t))
			continue;
		token_refresh_state(t);
		bool event = t->absent != t->reported_absent || t->insertion != t->reported_insertion;
		t->reported_absent = t->absent;
		t->reported_insertion = t->insertion;
		CK_SLOT_ID id = t->slot_id;
		token_unlock(t);
		if (event) {
			*pSlot = id;
			return CKR_OK;
		}
	}
	return CKR_NO_EVENT;
}

static CK_RV kt_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved)
{
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	rv = kt_WaitForSlotEvent_entered(flags, pSlot, pReserved);
	leave();
	return rv;
}

/* --- PKCS#11 3.0 additions ---------------------------------------------- */

static CK_RV kt_LoginUser(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin,
			  CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pUsername, CK_ULONG ulUsernameLen)
{
	/* Tokens here have no user names: only the plain login exists. */
	if (pUsername && ulUsernameLen) {
		CK_RV rv = enter();
		if (rv != CKR_OK)
			return rv;
		leave();
		return CKR_FUNCTION_NOT_SUPPORTED;
	}
	return kt_Login(hSession, userType, pPin, ulPinLen);
}

static CK_RV kt_SessionCancel(CK_SESSION_HANDLE hSession, CK_FLAGS flags)
{
	struct session *s;
	CK_RV rv = begin(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (flags & CKF_FIND_OBJECTS)
		session_end_find(s);
	if (((flags & CKF_SIGN) && s->crypto.kind == OP_SIGN) ||
	    ((flags & CKF_VERIFY) && s->crypto.kind == OP_VERIFY) ||
	    ((flags & CKF_DIGEST) && s->crypto.kind == OP_DIGEST))
		session_end_crypto(s);
	end(s);
	return CKR_OK;
}

static CK_RV kt_MessageInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
	return unsupported_session_call(h);
}
static CK_RV kt_MessageCrypt(CK_SESSION_HANDLE h, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR a, CK_ULONG al,
			     CK_BYTE_PTR i, CK_ULONG il, CK_BYTE_PTR o, CK_ULONG_PTR ol)
{
	return unsupported_session_call(h);
}
static CK_RV kt_MessageBegin(CK_SESSION_HANDLE h, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR a, CK_ULONG al)
{
	return unsupported_session_call(h);
}
static CK_RV kt_MessageNext(CK_SESSION_HANDLE h, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR i, CK_ULONG il,
			    CK_BYTE_PTR o, CK_ULONG_PTR ol, CK_FLAGS f)
{
	return unsupported_session_call(h);
}
static CK_RV kt_MessageFinal(CK_SESSION_HANDLE h)
{
	return unsupported_session_call(h);
}
static CK_RV kt_SignMessage(CK_SESSION_HANDLE h, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR d, CK_ULONG dl,
			    CK_BYTE_PTR s, CK_ULONG_PTR sl)
{
	return unsupported_session_call(h);
}
static CK_RV kt_SignMessageBegin(CK_SESSION_HANDLE h, CK_VOID_PTR p, CK_ULONG pl)
{
	return unsupported_session_call(h);
}
static CK_RV kt_SignMessageNext(CK_SESSION_HANDLE h, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR d, CK_ULONG dl,
				CK_BYTE_PTR s, CK_ULONG_PTR sl)
{
	return unsupported_session_call(h);
}
static CK_RV kt_VerifyMessage(CK_SESSION_HANDLE h, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR d, CK_ULONG dl,
			      CK_BYTE_PTR s, CK_ULONG sl)
{
	return unsupported_session_call(h);
}
static CK_RV kt_VerifyMessageNext(CK_SESSION_HANDLE h, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR d, CK_ULONG dl,
				  CK_BYTE_PTR s, CK_ULONG sl)
{
	return unsupported_session_call(h);
}

/* --- function lists and interfaces -------------------------------------- */

static CK_RV kt_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList);

#define KT_FUNCTIONS_240(getinfo)                                                                  \
	.C_Initialize = kt_Initialize, .C_Finalize = kt_Finalize, .C_GetInfo = getinfo,            \
	.C_GetFunctionList = kt_GetFunctionList, .C_GetSlotList = kt_GetSlotList,                  \
	.C_GetSlotInfo = kt_GetSlotInfo, .C_GetTokenInfo = kt_GetTokenInfo,                        \
	.C_GetMechanismList = kt_GetMechanismList, .C_GetMechanismInfo = kt_GetMechanismInfo,      \
	.C_InitToken = kt_InitToken, .C_InitPIN = kt_InitPIN, .C_SetPIN = kt_SetPIN,               \
	.C_OpenSession = kt_OpenSession, .C_CloseSession = kt_CloseSession,                        \
	.C_CloseAllSessions = kt_CloseAllSessions, .C_GetSessionInfo = kt_GetSessionInfo,          \
	.C_GetOperationState = kt_GetOperationState, .C_SetOperationState = kt_SetOperationState,  \
	.C_Login = kt_Login, .C_Logout = kt_Logout, .C_CreateObject = kt_CreateObject,             \
	.C_CopyObject = kt_CopyObject, .C_DestroyObject = kt_DestroyObject,                        \
	.C_GetObjectSize = kt_GetObjectSize, .C_GetAttributeValue = kt_GetAttributeValue,          \
	.C_SetAttributeValue = kt_SetAttributeValue, .C_FindObjectsInit = kt_FindObjectsInit,      \
	.C_FindObjects = kt_FindObjects, .C_FindObjectsFinal = kt_FindObjectsFinal,                \
	.C_EncryptInit = kt_EncryptInit, .C_Encrypt = kt_Encrypt,                                  \
	.C_EncryptUpdate = kt_EncryptUpdate, .C_EncryptFinal = kt_EncryptFinal,                    \
	.C_DecryptInit = kt_DecryptInit, .C_Decrypt = kt_Decrypt,                                  \
	.C_DecryptUpdate = kt_DecryptUpdate, .C_DecryptFinal = kt_DecryptFinal,                    \
	.C_DigestInit = kt_DigestInit, .C_Digest = kt_Digest, .C_DigestUpdate = kt_DigestUpdate,   \
	.C_DigestKey = kt_DigestKey, .C_DigestFinal = kt_DigestFinal, .C_SignInit = kt_SignInit,   \
	.C_Sign = kt_Sign, .C_SignUpdate = kt_SignUpdate, .C_SignFinal = kt_SignFinal,             \
	.C_SignRecoverInit = kt_SignRecoverInit, .C_SignRecover = kt_SignRecover,                  \
	.C_VerifyInit = kt_VerifyInit, .C_Verify = kt_Verify, .C_VerifyUpdate = kt_VerifyUpdate,   \
	.C_VerifyFinal = kt_VerifyFinal, .C_VerifyRecoverInit = kt_VerifyRecoverInit,              \
	.C_VerifyRecover = kt_VerifyRecover, .C_DigestEncryptUpdate = kt_DigestEncryptUpdate,      \
	.C_DecryptDigestUpdate = kt_DecryptDigestUpdate,                                           \
	.C_SignEncryptUpdate = kt_SignEncryptUpdate,                                               \
	.C_DecryptVerifyUpdate = kt_DecryptVerifyUpdate, .C_GenerateKey = kt_GenerateKey,          \
	.C_GenerateKeyPair = kt_GenerateKeyPair, .C_WrapKey = kt_WrapKey,                          \
	.C_UnwrapKey = kt_UnwrapKey, .C_DeriveKey = kt_DeriveKey, .C_SeedRandom = kt_SeedRandom,   \
	.C_GenerateRandom = kt_GenerateRandom, .C_GetFunctionStatus = kt_GetFunctionStatus,        \
	.C_CancelFunction = kt_CancelFunction, .C_WaitForSlotEvent = kt_WaitForSlotEvent

static CK_FUNCTION_LIST function_list_240 = {
	.version = { 2, 40 },
	KT_FUNCTIONS_240(kt_GetInfo_240),
};

static CK_RV kt_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount);
static CK_RV kt_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
			     CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags);

static CK_FUNCTION_LIST_3_0 function_list_30 = {
	.version = { 3, 0 },
	KT_FUNCTIONS_240(kt_GetInfo_30),
	.C_GetInterfaceList = kt_GetInterfaceList,
	.C_GetInterface = kt_GetInterface,
	.C_LoginUser = kt_LoginUser,
	.C_SessionCancel = kt_SessionCancel,
	.C_MessageEncryptInit = kt_MessageInit,
	.C_EncryptMessage = kt_MessageCrypt,
	.C_EncryptMessageBegin = kt_MessageBegin,
	.C_EncryptMessageNext = kt_MessageNext,
	.C_MessageEncryptFinal = kt_MessageFinal,
	.C_MessageDecryptInit = kt_MessageInit,
	.C_DecryptMessage = kt_MessageCrypt,
	.C_DecryptMessageBegin = kt_MessageBegin,
	.C_DecryptMessageNext = kt_MessageNext,
	.C_MessageDecryptFinal = kt_MessageFinal,
	.C_MessageSignInit = kt_MessageInit,
	.C_SignMessage = kt_SignMessage,
	.C_SignMessageBegin = kt_SignMessageBegin,
	.C_SignMessageNext = kt_SignMessageNext,
	.C_MessageSignFinal = kt_MessageFinal,
	.C_MessageVerifyInit = kt_MessageInit,
	.C_VerifyMessage = kt_VerifyMessage,
	.C_VerifyMessageBegin = kt_SignMessageBegin,
	.C_VerifyMessageNext = kt_VerifyMessageNext,
	.C_MessageVerifyFinal = kt_MessageFinal,
};

static CK_CHAR interface_name[] = "PKCS 11";

/* 3.0 first: C_GetInterface with no name returns the first. */
static CK_INTERFACE interfaces[] = {
	{ interface_name, &function_list_30, 0 },
	{ interface_name, &function_list_240, 0 },
};

static CK_RV kt_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
	if (!ppFunctionList)
		return CKR_ARGUMENTS_BAD;
	*ppFunctionList = &function_list_240;
	return CKR_OK;
}

static CK_RV kt_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount)
{
	if (!pulCount)
		return CKR_ARGUMENTS_BAD;
	CK_ULONG n = KT_ARRAY_SIZE(interfaces);
	if (!pInterfacesList) {
		*pulCount = n;
		return CKR_OK;
	}
	if (*pulCount < n) {
		*pulCount = n;
		return CKR_BUFFER_TOO_SMALL;
	}
	memcpy(pInterfacesList, interfaces, sizeof(interfaces));
	*pulCount = n;
	return CKR_OK;
}

static CK_RV kt_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
			     CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags)
{
	if (!ppInterface)
		return CKR_ARGUMENTS_BAD;
	for (size_t i = 0; i < KT_ARRAY_SIZE(interfaces); i++) {
		CK_INTERFACE *in = &interfaces[i];
		const CK_VERSION *v = in->pFunctionList; /* every list starts with its version */
		if (pInterfaceName && strcmp((const char *)pInterfaceName, (const char *)in->pInterfaceName) != 0)
			continue;
		if (pVersion && (pVersion->major != v->major || pVersion->minor != v->minor))
			continue;
		if ((flags & in->flags) != flags)
			continue;
		*ppInterface = in;
		return CKR_OK;
	}
	return CKR_ARGUMENTS_BAD;
}

/* The only exported symbols (module/koltamga.map). */
KT_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
	return kt_GetFunctionList(ppFunctionList);
}

KT_EXPORT CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount)
{
	return kt_GetInterfaceList(pInterfacesList, pulCount);
}

KT_EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
			       CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags)
{
	return kt_GetInterface(pInterfaceName, pVersion, ppInterface, flags);
}
