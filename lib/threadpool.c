// threadpool.c - spin-then-sleep worker pool.
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

// How long a worker spins for the next job before it sleeps: long enough to bridge the gap
// between the matmuls of one token, short enough not to burn a core when idle. Past
// PAUSE_ITERS the spinning thread yields its core each round, so a machine with more runnable
// threads than cores (a shared CI box) still makes progress instead of spinning against the
// very thread it waits for.
#define SPIN_ITERS 200000
#define PAUSE_ITERS 2000

static inline void backoff(int iter) {
  if (iter < PAUSE_ITERS) cpu_relax();
  else sched_yield();
}

typedef struct {
  ac_pool_t *pool;
  int ith;
  pthread_t tid;
} worker_t;

struct ac_pool {
  int n;
  worker_t *workers;
  ac_pool_fn fn;
  void *arg;
  atomic_uint gen;      // bumped once per job
  atomic_int pending;   // workers still running the current job
  atomic_bool quit;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  atomic_int sleepers;
};

static void *worker_main(void *p) {
  worker_t *w = p;
  ac_pool_t *pool = w->pool;
  unsigned seen = 0;
  for (;;) {
    unsigned g;
    int spins = 0;
    while ((g = atomic_load_explicit(&pool->gen, memory_order_acquire)) == seen) {
      if (atomic_load(&pool->quit)) return NULL;
      if (++spins < SPIN_ITERS) {
        backoff(spins);
        continue;
      }
      pthread_mutex_lock(&pool->mu);
      atomic_fetch_add(&pool->sleepers, 1);
      while (atomic_load(&pool->gen) == seen && !atomic_load(&pool->quit))
        pthread_cond_wait(&pool->cv, &pool->mu);
      atomic_fetch_sub(&pool->sleepers, 1);
      pthread_mutex_unlock(&pool->mu);
      spins = 0;
    }
    seen = g;
    if (atomic_load(&pool->quit)) return NULL;
    pool->fn(pool->arg, w->ith, pool->n);
    atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_release);
  }
}

ac_pool_t *ac_pool_new(int n_threads) {
  if (n_threads < 1) n_threads = 1;
  ac_pool_t *pool = calloc(1, sizeof *pool);
  if (!pool) return NULL;
  pool->n = n_threads;
  pthread_mutex_init(&pool->mu, NULL);
  pthread_cond_init(&pool->cv, NULL);
  pool->workers = calloc(n_threads, sizeof *pool->workers);
  if (!pool->workers) goto fail;
  for (int i = 1; i < n_threads; i++) {
    pool->workers[i] = (worker_t){pool, i, 0};
    if (pthread_create(&pool->workers[i].tid, NULL, worker_main, &pool->workers[i]) != 0) {
      pool->n = i;  // destroy joins only the threads that started
      goto fail;
    }
  }
  return pool;
fail:
  ac_pool_destroy(&pool);
  return NULL;
}

void ac_pool_destroy(ac_pool_t **self_p) {
  ac_pool_t *pool = *self_p;
  if (!pool) return;
  pthread_mutex_lock(&pool->mu);
  atomic_store(&pool->quit, true);
  pthread_cond_broadcast(&pool->cv);
  pthread_mutex_unlock(&pool->mu);
  for (int i = 1; i < pool->n && pool->workers; i++) pthread_join(pool->workers[i].tid, NULL);
  pthread_mutex_destroy(&pool->mu);
  pthread_cond_destroy(&pool->cv);
  free(pool->workers);
  free(pool);
  *self_p = NULL;
}

int ac_pool_size(const ac_pool_t *pool) { return pool ? pool->n : 1; }

void ac_pool_run(ac_pool_t *pool, ac_pool_fn fn, void *arg) {
  if (!pool || pool->n == 1) {
    fn(arg, 0, 1);
    return;
  }
  pool->fn = fn;
  pool->arg = arg;
  atomic_store_explicit(&pool->pending, pool->n - 1, memory_order_relaxed);
  atomic_fetch_add(&pool->gen, 1);  // seq_cst: pairs with the sleepers check below
  if (atomic_load(&pool->sleepers) > 0) {
    pthread_mutex_lock(&pool->mu);
    pthread_cond_broadcast(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
  }
  fn(arg, 0, pool->n);
  for (int i = 0; atomic_load_explicit(&pool->pending, memory_order_acquire) > 0; i++) backoff(i);
}
