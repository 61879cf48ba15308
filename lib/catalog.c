// catalog.c - see catalog.h.
#include "catalog.h"

#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "error.h"

static int by_quality(const void *a, const void *b) {
  const ac_variant_t *x = a, *y = b;
  // Known KLD first, ascending; then bigger files first; then by name for a stable order.
  if ((x->kld >= 0) != (y->kld >= 0)) return x->kld >= 0 ? -1 : 1;
  if (x->kld >= 0 && x->kld != y->kld) return x->kld < y->kld ? -1 : 1;
  if (x->bytes != y->bytes) return x->bytes > y->bytes ? -1 : 1;
  return strcmp(x->name, y->name);
}

static int finish(ac_catalog_t *cat) {
  if (cat->n == 0) return ac_error(AC_ENOTFOUND, "no variants");
  qsort(cat->v, (size_t)cat->n, sizeof *cat->v, by_quality);
  for (int i = 0; i < cat->n; i++) cat->v[i].rank = i;
  if (!cat->reference[0] || !ac_catalog_find(cat, cat->reference))
    snprintf(cat->reference, sizeof cat->reference, "%s", cat->v[0].name);
  return 0;
}

static int add(ac_catalog_t *cat, const char *name, const char *file, uint64_t bytes, double kld, double bpw) {
  if (strlen(name) >= sizeof cat->v[0].name || strlen(file) >= sizeof cat->v[0].file)
    return ac_error(AC_ERANGE, "variant name or file too long: %s", name);
  if (ac_catalog_find(cat, name)) return ac_error(AC_EFORMAT, "variant '%s' listed twice", name);
  ac_variant_t *v = realloc(cat->v, (size_t)(cat->n + 1) * sizeof *v);
  if (!v) return ac_error(AC_ENOMEM, "out of memory");
  cat->v = v;
  ac_variant_t *x = &cat->v[cat->n++];
  memset(x, 0, sizeof *x);
  snprintf(x->name, sizeof x->name, "%s", name);
  snprintf(x->file, sizeof x->file, "%s", file);
  x->bytes = bytes;
  x->kld = kld;
  x->bpw = bpw;
  return 0;
}

// Variants from a JSON array of {name, file, bytes, kld, bpw} or a zoo manifest's "variants".
static int from_root(json_t *root, ac_catalog_t *cat) {
  json_t *vars = json_object_get(root, "variants");
  if (!json_is_array(vars)) return ac_error(AC_EFORMAT, "no \"variants\" array");
  const char *ref = json_string_value(json_object_get(root, "reference_variant"));
  if (ref) snprintf(cat->reference, sizeof cat->reference, "%s", ref);
  size_t i;
  json_t *v;
  json_array_foreach(vars, i, v) {
    const char *name = json_string_value(json_object_get(v, "name"));
    const char *file = json_string_value(json_object_get(v, "file"));
    if (!name || !file) return ac_error(AC_EFORMAT, "variant %zu has no name or file", i);
    json_t *q = json_object_get(v, "quality");
    json_t *kld = json_object_get(q ? q : v, q ? "kld_mean" : "kld");
    uint64_t bytes = (uint64_t)json_integer_value(json_object_get(v, json_object_get(v, "file_bytes") ? "file_bytes" : "bytes"));
    int rc = add(cat, name, file, bytes, json_is_number(kld) ? json_number_value(kld) : -1,
                 json_number_value(json_object_get(v, "bits_per_weight")));
    if (rc) return rc;
  }
  // The reference has KLD 0 by definition, even where the manifest does not say so.
  ac_variant_t *r = (ac_variant_t *)ac_catalog_find(cat, cat->reference);
  if (r && r->kld < 0) r->kld = 0;
  return 0;
}

int ac_catalog_from_json(const char *text, ac_catalog_t *out) {
  memset(out, 0, sizeof *out);
  json_error_t jerr;
  json_t *root = json_loads(text, 0, &jerr);
  if (!root) return ac_error(AC_EFORMAT, "catalog: bad JSON: %s (line %d)", jerr.text, jerr.line);
  int rc = from_root(root, out);
  json_decref(root);
  if (!rc) rc = finish(out);
  if (rc) ac_catalog_free(out);
  return rc;
}

int ac_catalog_load_dir(const char *dir, ac_catalog_t *out) {
  memset(out, 0, sizeof *out);
  char path[4096];
  snprintf(path, sizeof path, "%s/manifest.json", dir);
  struct stat st;
  int rc;
  if (stat(path, &st) == 0) {
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) return ac_error(AC_EFORMAT, "%s: %s (line %d)", path, jerr.text, jerr.line);
    rc = from_root(root, out);
    json_decref(root);
    if (rc) goto fail;
    // Sizes from the disk, and every listed file must be there.
    for (int i = 0; i < out->n; i++) {
      snprintf(path, sizeof path, "%s/%s", dir, out->v[i].file);
      if (stat(path, &st) != 0) {
        rc = ac_error(AC_ENOTFOUND, "variant '%s': %s is missing", out->v[i].name, path);
        goto fail;
      }
      out->v[i].bytes = (uint64_t)st.st_size;
    }
  } else {
    DIR *d = opendir(dir);
    if (!d) return ac_error(AC_EIO, "cannot open zoo directory '%s'", dir);
    struct dirent *e;
    rc = 0;
    while (!rc && (e = readdir(d))) {
      size_t n = strlen(e->d_name);
      if (n <= 5 || strcmp(e->d_name + n - 5, ".gguf") != 0) continue;
      snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
      if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
      char name[256];
      snprintf(name, sizeof name, "%.*s", (int)(n - 5), e->d_name);
      rc = add(out, name, e->d_name, (uint64_t)st.st_size, -1, 0);
    }
    closedir(d);
    if (rc) goto fail;
  }
  rc = finish(out);
  if (rc) {
    ac_error(rc, "zoo directory '%s' has no variants (no manifest.json, no *.gguf)", dir);
    goto fail;
  }
  return 0;
fail:
  ac_catalog_free(out);
  return rc;
}

int ac_catalog_to_json(const ac_catalog_t *cat, char **out) {
  json_t *root = json_object(), *arr = json_array();
  if (!root || !arr) goto oom;
  json_object_set_new(root, "reference_variant", json_string(cat->reference));
  for (int i = 0; i < cat->n; i++) {
    const ac_variant_t *v = &cat->v[i];
    json_array_append_new(arr, json_pack("{s:s, s:s, s:I, s:f, s:f, s:i}", "name", v->name, "file", v->file, "bytes",
                                         (json_int_t)v->bytes, "kld", v->kld, "bits_per_weight", v->bpw, "rank", v->rank));
  }
  json_object_set_new(root, "variants", arr);
  *out = json_dumps(root, JSON_COMPACT);
  json_decref(root);
  return *out ? 0 : ac_error(AC_ENOMEM, "out of memory");
oom:
  json_decref(root);
  json_decref(arr);
  return ac_error(AC_ENOMEM, "out of memory");
}

void ac_catalog_free(ac_catalog_t *cat) {
  free(cat->v);
  memset(cat, 0, sizeof *cat);
}

const ac_variant_t *ac_catalog_find(const ac_catalog_t *cat, const char *name) {
  for (int i = 0; i < cat->n; i++)
    if (strcmp(cat->v[i].name, name) == 0) return &cat->v[i];
  return NULL;
}

bool ac_catalog_can_serve(const ac_catalog_t *cat, const char *have, const char *want) {
  const ac_variant_t *h = ac_catalog_find(cat, have), *w = ac_catalog_find(cat, want);
  return h && w && h->rank <= w->rank;
}
