#include "session.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"

#define SESSION_BUCKETS 256

static pthread_rwlock_t table_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct session *buckets[SESSION_BUCKETS];
static CK_SESSION_HANDLE next_handle = 1;

static size_t bucket_of(CK_SESSION_HANDLE h)
{
	return h % SESSION_BUCKETS;
}

void session_table_init(void)
{
	memset(buckets, 0, sizeof(buckets));
}

/* A forked child keeps its parent's state referenced here instead of
 * freeing it, so leak checkers do not report it as the child's. */
static struct session *volatile abandoned[SESSION_BUCKETS];

void session_table_abandon(void)
{
	/* Kept referenced, not freed (see slot_table_abandon). */
	pthread_rwlock_t fresh = PTHREAD_RWLOCK_INITIALIZER;
	table_lock = fresh;
	for (size_t b = 0; b < SESSION_BUCKETS; b++)
		abandoned[b] = buckets[b];
	memset(buckets, 0, sizeof(buckets));
}

void session_end_crypto(struct session *s)
{
	struct crypto_state *c = &s->crypto;
	crypto_op_free(c->op);
	free(c->cert);
	free(c->signer);
	free(c->cert_issuer);
	free(c->cert_serial);
	free(c->key_label);
	free(c->key_id);
	free(c->token_serial);
	free(c->restrictions);
	/* The document itself: wiped, whatever happened. */
	kt_free_secret(c->data, c->data_cap);
	for (size_t i = 0; i < c->n_docs; i++) {
		kt_free_secret(c->docs[i].title, c->docs[i].title ? strlen(c->docs[i].title) : 0);
		kt_free_secret(c->docs[i].value, c->docs[i].len);
	}
	free(c->docs);
	memset(c, 0, sizeof(*c));
}

void session_end_find(struct session *s)
{
	free(s->find.handles);
	memset(&s->find, 0, sizeof(s->find));
}

static void session_free(struct session *s)
{
	session_end_crypto(s);
	session_end_find(s);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

/* Token bookkeeping when a session goes: its session objects go with it
 * and the last session of a token ends the login (PKCS#11 C_CloseSession). */
static void session_detach(struct session *s)
{
	struct token *t = s->token;
	token_lock(t);
	/* A session from before its device was removed was already
	 * uncounted, its objects and login dropped, when that was noticed
	 * (slot.c device_gone). */
	if (s->insertion == t->insertion) {
		token_drop_session_objects(t, s->handle);
		t->sessions--;
		if (s->flags & CKF_RW_SESSION)
			t->rw_sessions--;
		if (t->sessions == 0 && t->login != USER_NONE)
			token_logout(t);
	}
	token_unlock(t);
}

void session_table_free(void)
{
	pthread_rwlock_wrlock(&table_lock);
	for (size_t b = 0; b < SESSION_BUCKETS; b++) {
		struct session *s = buckets[b];
		while (s) {
			struct session *next = s->next;
			session_free(s);
			s = next;
		}
		buckets[b] = NULL;
	}
	pthread_rwlock_unlock(&table_lock);
}

CK_RV session_open(struct token *t, CK_FLAGS flags, CK_SESSION_HANDLE *out)
{
	struct session *s = calloc(1, sizeof(*s));
	if (!s)
		return CKR_HOST_MEMORY;
	pthread_mutex_init(&s->lock, NULL);
	s->refs = 1;
	s->token = t;
	s->insertion = __atomic_load_n(&t->insertion, __ATOMIC_ACQUIRE);
	s->flags = flags;

	pthread_rwlock_wrlock(&table_lock);
	token_lock(t);
	if (!(flags & CKF_RW_SESSION) && t->login == CKU_SO) {
		token_unlock(t);
		pthread_rwlock_unlock(&table_lock);
		session_free(s);
		return CKR_SESSION_READ_WRITE_SO_EXISTS;
	}
	t->sessions++;
	if (flags & CKF_RW_SESSION)
		t->rw_sessions++;
	token_unlock(t);
	s->handle = next_handle++;
	if (next_handle == 0) /* CK_INVALID_HANDLE is never a session */
		next_handle = 1;
	size_t b = bucket_of(s->handle);
	s->next = buckets[b];
	buckets[b] = s;
	pthread_rwlock_unlock(&table_lock);
	*out = s->handle;
	return CKR_OK;
}

static struct session *unlink_locked(CK_SESSION_HANDLE h)
{
	for (struct session **pp = &buckets[bucket_of(h)]; *pp; pp = &(*pp)->next) {
		if ((*pp)->handle == h) {
			struct session *s = *pp;
			*pp = s->next;
			return s;
		}
	}
	return NULL;
}

static void session_unref(struct session *s)
{
	if (__atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) == 0)
		session_free(s);
}

/* After unlinking: wait for a call still running in the session, end it
 * for the calls queued behind, then drop the table's reference. */
static void session_retire(struct session *s)
{
	pthread_mutex_lock(&s->lock);
	s->closed = true;
	session_detach(s);
	session_end_crypto(s);
	session_end_find(s);
	pthread_mutex_unlock(&s->lock);
	session_unref(s);
}

CK_RV session_close(CK_SESSION_HANDLE h)
{
	pthread_rwlock_wrlock(&table_lock);
	struct session *s = unlink_locked(h);
	pthread_rwlock_unlock(&table_lock);
	if (!s)
		return CKR_SESSION_HANDLE_INVALID;
	session_retire(s);
	return CKR_OK;
}

void session_close_all(struct token *t)
{
	struct session *gone = NULL;
	pthread_rwlock_wrlock(&table_lock);
	for (size_t b = 0; b < SESSION_BUCKETS; b++) {
		struct session **pp = &buckets[b];
		while (*pp) {
			struct session *s = *pp;
			if (s->token == t) {
				*pp = s->next;
				s->next = gone;
				gone = s;
			} else {
				pp = &s->next;
			}
		}
	}
	pthread_rwlock_unlock(&table_lock);
	while (gone) {
		struct session *next = gone->next;
		session_retire(gone);
		gone = next;
	}
}

CK_RV session_get(CK_SESSION_HANDLE h, struct session **out)
{
	pthread_rwlock_rdlock(&table_lock);
	struct session *s = buckets[bucket_of(h)];
	while (s && s->handle != h)
		s = s->next;
	if (s)
		__atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
	pthread_rwlock_unlock(&table_lock);
	if (!s)
		return CKR_SESSION_HANDLE_INVALID;
	pthread_mutex_lock(&s->lock);
	if (s->closed) {
		session_put(s);
		return CKR_SESSION_HANDLE_INVALID;
	}
	*out = s;
	return CKR_OK;
}

void session_put(struct session *s)
{
	pthread_mutex_unlock(&s->lock);
	session_unref(s);
}

bool session_is_rw(const struct session *s)
{
	return s->flags & CKF_RW_SESSION;
}

CK_STATE session_state(const struct session *s)
{
	bool rw = session_is_rw(s);
	switch (s->token->login) {
	case CKU_USER:
		return rw ? CKS_RW_USER_FUNCTIONS : CKS_RO_USER_FUNCTIONS;
	case CKU_SO:
		return CKS_RW_SO_FUNCTIONS;
	default:
		return rw ? CKS_RW_PUBLIC_SESSION : CKS_RO_PUBLIC_SESSION;
	}
}
