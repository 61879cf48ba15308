// amap.c - see amap.h.
#include "amap.h"

#include <stdbool.h>
#include <stdlib.h>

#include "error.h"

static size_t slot_of(const rt_amap_t *m, uint64_t key) {
  uint64_t h = key * 0x9E3779B97F4A7C15ull;
  return (size_t)(h >> 20) & (m->cap - 1);
}

static int grow(rt_amap_t *m) {
  size_t cap = m->cap ? m->cap * 2 : 1024;
  uint64_t *keys = calloc(cap, sizeof *keys);
  void **vals = calloc(cap, sizeof *vals);
  if (!keys || !vals) {
    free(keys);
    free(vals);
    return AC_ENOMEM;
  }
  rt_amap_t n = {keys, vals, cap, 0};
  for (size_t i = 0; i < m->cap; i++) {
    if (!m->keys[i]) continue;
    size_t j = slot_of(&n, m->keys[i]);
    while (n.keys[j]) j = (j + 1) & (cap - 1);
    n.keys[j] = m->keys[i];
    n.vals[j] = m->vals[i];
    n.n++;
  }
  free(m->keys);
  free(m->vals);
  *m = n;
  return 0;
}

int rt_amap_put(rt_amap_t *m, uint64_t key, void *v) {
  if ((m->n + 1) * 2 > m->cap && grow(m)) return AC_ENOMEM;
  size_t j = slot_of(m, key);
  while (m->keys[j]) j = (j + 1) & (m->cap - 1);
  m->keys[j] = key;
  m->vals[j] = v;
  m->n++;
  return 0;
}

void *rt_amap_get(const rt_amap_t *m, uint64_t key) {
  if (!m->cap || !key) return NULL;
  for (size_t j = slot_of(m, key); m->keys[j]; j = (j + 1) & (m->cap - 1))
    if (m->keys[j] == key) return m->vals[j];
  return NULL;
}

void rt_amap_del(rt_amap_t *m, uint64_t key) {
  if (!m->cap || !key) return;
  size_t j = slot_of(m, key);
  while (m->keys[j] && m->keys[j] != key) j = (j + 1) & (m->cap - 1);
  if (!m->keys[j]) return;
  m->keys[j] = 0;
  m->vals[j] = NULL;
  m->n--;
  // Shift back the entries of the same probe run that could now sit earlier.
  for (size_t k = (j + 1) & (m->cap - 1); m->keys[k]; k = (k + 1) & (m->cap - 1)) {
    size_t home = slot_of(m, m->keys[k]);
    bool movable = (j <= k) ? (home <= j || home > k) : (home <= j && home > k);
    if (!movable) continue;
    m->keys[j] = m->keys[k];
    m->vals[j] = m->vals[k];
    m->keys[k] = 0;
    m->vals[k] = NULL;
    j = k;
  }
}

void rt_amap_free(rt_amap_t *m) {
  free(m->keys);
  free(m->vals);
  m->keys = NULL;
  m->vals = NULL;
  m->cap = m->n = 0;
}
