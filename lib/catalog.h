// catalog.h - the variants a cluster can serve, and which may stand in for which.
//
// Built from a zoo directory: DIR/manifest.json (written by `acq zoo`) when there is one, else
// every DIR/*.gguf file as a variant named by its stem. Variants are ranked by quality: by the
// manifest's measured KL divergence against the reference (lower is better), and without a
// manifest by file size (bigger is better). A variant may serve a task meant for another when
// its rank is at least as good: the router never serves below the chosen quality.
//
// The scheduler publishes the catalog to Redis (<prefix>catalog, JSON), so routers need no disk.
#ifndef AC_CATALOG_H
#define AC_CATALOG_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
  char name[64];
  char file[256];      // relative to the zoo directory
  uint64_t bytes;      // file size
  double kld;          // mean KL divergence vs the reference; -1 unknown
  double bpw;          // bits per weight; 0 unknown
  int rank;            // 0 = best quality (the reference)
} ac_variant_t;

typedef struct {
  ac_variant_t *v;     // sorted by rank
  int n;
  char reference[64];  // the full model
} ac_catalog_t;

int ac_catalog_load_dir(const char *dir, ac_catalog_t *out);
int ac_catalog_from_json(const char *json, ac_catalog_t *out);
// malloc'ed JSON text.
int ac_catalog_to_json(const ac_catalog_t *cat, char **out);
void ac_catalog_free(ac_catalog_t *cat);
const ac_variant_t *ac_catalog_find(const ac_catalog_t *cat, const char *name);
// Whether a worker holding `have` may answer a task for which `want` was chosen.
bool ac_catalog_can_serve(const ac_catalog_t *cat, const char *have, const char *want);

#endif
