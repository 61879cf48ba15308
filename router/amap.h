// amap.h - attempt number -> task: the map the router looks up for every reply from a worker.
//
// Open addressing with linear probing and backward-shift deletion (no tombstones, so a long run
// of dispatches and answers never degrades it); keys are non-zero uint64, values pointers.
#ifndef AC_ROUTER_AMAP_H
#define AC_ROUTER_AMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  uint64_t *keys;  // 0: empty slot
  void **vals;
  size_t cap, n;   // cap: a power of two, at least twice n
} rt_amap_t;

// AC_ENOMEM when it cannot grow (the map is unchanged).
int rt_amap_put(rt_amap_t *m, uint64_t key, void *v);
// NULL when absent.
void *rt_amap_get(const rt_amap_t *m, uint64_t key);
void rt_amap_del(rt_amap_t *m, uint64_t key);
void rt_amap_free(rt_amap_t *m);

#endif
