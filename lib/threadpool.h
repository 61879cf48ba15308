// threadpool.h - a fixed pool of threads that run one function together.
//
// ac_pool_run(pool, fn, arg) calls fn(arg, ith, nth) on every thread (the caller is thread 0)
// and returns when all have finished. Workers spin briefly between jobs before sleeping, since
// a decode step issues a few hundred short jobs back to back.
#ifndef AC_THREADPOOL_H
#define AC_THREADPOOL_H

typedef struct ac_pool ac_pool_t;
typedef void (*ac_pool_fn)(void *arg, int ith, int nth);

// n_threads counts the caller; 1 means no extra threads. NULL on failure.
ac_pool_t *ac_pool_new(int n_threads);
void ac_pool_destroy(ac_pool_t **self_p);
int ac_pool_size(const ac_pool_t *pool);
void ac_pool_run(ac_pool_t *pool, ac_pool_fn fn, void *arg);

#endif
