// ctrl_zoo.c - see ctrl_zoo.h.
#include "ctrl_zoo.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "catalog.h"
#include "error.h"
#include "prompt.h"
#include "quant.h"

// --- the zoo description --------------------------------------------------------------------------

static const char *const QUANT[] = {"f16", "int8", "int4", "int2"};
static const char *const PRUNE[] = {"none", "pruned"};
static const char *const LOWRANK[] = {"no", "yes"};

// Quantization level of a ggml type name (manifest parameters.type).
static int quant_level(const char *type) {
  if (!type || !*type) return 0;
  char t[16];
  size_t n = strlen(type);
  if (n >= sizeof t) n = sizeof t - 1;
  for (size_t i = 0; i < n; i++) t[i] = (char)(type[i] >= 'A' && type[i] <= 'Z' ? type[i] + 32 : type[i]);
  t[n] = 0;
  if (!strcmp(t, "f16") || !strcmp(t, "bf16") || !strcmp(t, "f32")) return 0;
  if (!strncmp(t, "q8", 2) || !strncmp(t, "q6", 2) || !strncmp(t, "q5", 2)) return 1;
  if (!strncmp(t, "q4", 2) || !strncmp(t, "q3", 2)) return 2;
  if (!strncmp(t, "q2", 2)) return 3;
  return 0;
}

// Drops axes on which every variant makes the same choice (keeps at least one axis).
static void prune_axes(ac_ctrl_zoo_t *z) {
  for (int a = z->n_axis - 1; a >= 0 && z->n_axis > 1; a--) {
    int same = 1;
    for (int v = 1; v < z->n_variant; v++) same &= z->variant[v].choice[a] == z->variant[0].choice[a];
    if (!same) continue;
    for (int b = a; b + 1 < z->n_axis; b++) z->axis[b] = z->axis[b + 1];
    for (int v = 0; v < z->n_variant; v++)
      for (int b = a; b + 1 < z->n_axis; b++) z->variant[v].choice[b] = z->variant[v].choice[b + 1];
    z->n_axis--;
  }
}

static void set_axis(ac_ctrl_axis_t *ax, const char *name, const char *const *choices, int n) {
  memset(ax, 0, sizeof *ax);
  snprintf(ax->name, sizeof ax->name, "%s", name);
  ax->n_choice = n;
  for (int i = 0; i < n; i++) snprintf(ax->choice[i], sizeof ax->choice[i], "%s", choices[i]);
}

int ac_ctrl_zoo_describe(const char *dir, ac_ctrl_zoo_t *z) {
  memset(z, 0, sizeof *z);
  ac_catalog_t cat;
  int rc = ac_catalog_load_dir(dir, &cat);
  if (rc) return rc;
  json_t *root = NULL;
  if (cat.n > AC_CTRL_MAX_VARIANTS) {
    rc = ac_error(AC_EUNSUPPORTED, "zoo %s has %d variants; the controller takes at most %d", dir, cat.n,
                  AC_CTRL_MAX_VARIANTS);
    goto out;
  }
  if (cat.n < 2) {
    rc = ac_error(AC_EINVAL, "zoo %s has %d variant; a controller needs at least two to choose from", dir, cat.n);
    goto out;
  }
  for (int i = 0; i < cat.n; i++) {
    if (strlen(cat.v[i].name) >= AC_CTRL_NAME_MAX) {
      rc = ac_error(AC_ERANGE, "variant name '%s' is longer than %d bytes", cat.v[i].name, AC_CTRL_NAME_MAX - 1);
      goto out;
    }
    snprintf(z->variant[i].name, sizeof z->variant[i].name, "%s", cat.v[i].name);
    if (strcmp(cat.v[i].name, cat.reference) == 0) z->reference = i;
  }
  z->n_variant = cat.n;
  snprintf(z->ref_file, sizeof z->ref_file, "%s/%s", dir, cat.v[z->reference].file);

  char path[4096];
  snprintf(path, sizeof path, "%s/manifest.json", dir);
  struct stat st;
  if (stat(path, &st) == 0) {
    json_error_t jerr;
    if (!(root = json_load_file(path, 0, &jerr))) {
      rc = ac_error(AC_EFORMAT, "%s: %s (line %d)", path, jerr.text, jerr.line);
      goto out;
    }
    z->has_manifest = 1;
    set_axis(&z->axis[0], "quant", QUANT, 4);
    set_axis(&z->axis[1], "prune", PRUNE, 2);
    set_axis(&z->axis[2], "lowrank", LOWRANK, 2);
    z->n_axis = 3;
    double raw[AC_CTRL_MAX_VARIANTS];
    int use_usd = 1;
    json_t *vars = json_object_get(root, "variants");
    for (int pass = 0; pass < 2; pass++) {
      for (int i = 0; i < z->n_variant; i++) {
        json_t *v = NULL, *x;
        size_t j;
        json_array_foreach(vars, j, x) {
          const char *nm = json_string_value(json_object_get(x, "name"));
          if (nm && strcmp(nm, z->variant[i].name) == 0) v = x;
        }
        if (!v) {
          rc = ac_error(AC_EFORMAT, "%s: variant '%s' vanished", path, z->variant[i].name);
          goto out;
        }
        const char *method = json_string_value(json_object_get(v, "method"));
        json_t *params = json_object_get(v, "parameters");
        const char *type = json_string_value(json_object_get(params, "type"));
        z->variant[i].choice[0] = quant_level(type);
        z->variant[i].choice[1] = method && strstr(method, "prune") ? 1 : 0;
        z->variant[i].choice[2] = method && strstr(method, "lowrank") ? 1 : 0;
        json_t *mod = json_object_get(v, "modelled");
        json_t *c = json_object_get(mod, use_usd ? "usd_per_million_tokens" : "seconds_per_token");
        raw[i] = json_is_number(c) ? json_number_value(c) : -1;
      }
      int ok = 1;
      for (int i = 0; i < z->n_variant; i++) ok &= raw[i] > 0;
      if (ok) break;
      if (pass == 1) {
        // No modelled costs at all: file bytes, as without a manifest.
        for (int i = 0; i < z->n_variant; i++) raw[i] = (double)cat.v[i].bytes;
      }
      use_usd = 0;
    }
    for (int i = 0; i < z->n_variant; i++) z->variant[i].cost = (float)(raw[i] / raw[z->reference]);
    prune_axes(z);
  } else {
    if (z->n_variant > AC_CTRL_MAX_CHOICES) {
      rc = ac_error(AC_EUNSUPPORTED, "zoo %s has %d variants and no manifest; the one 'variant' axis takes at most %d",
                    dir, z->n_variant, AC_CTRL_MAX_CHOICES);
      goto out;
    }
    ac_ctrl_axis_t *ax = &z->axis[0];
    snprintf(ax->name, sizeof ax->name, "variant");
    ax->n_choice = z->n_variant;
    for (int i = 0; i < z->n_variant; i++) {
      snprintf(ax->choice[i], sizeof ax->choice[i], "%s", z->variant[i].name);
      z->variant[i].choice[0] = i;
      z->variant[i].cost = (float)((double)cat.v[i].bytes / (double)cat.v[z->reference].bytes);
    }
    z->n_axis = 1;
  }
  // Two variants with the same choices on every axis cannot be told apart by the policy heads.
  for (int i = 0; i < z->n_variant; i++)
    for (int j = 0; j < i; j++)
      if (!memcmp(z->variant[i].choice, z->variant[j].choice, sizeof z->variant[i].choice)) {
        rc = ac_error(AC_EUNSUPPORTED, "zoo %s: variants '%s' and '%s' make the same choice on every axis", dir,
                      z->variant[j].name, z->variant[i].name);
        goto out;
      }
out:
  json_decref(root);
  ac_catalog_free(&cat);
  return rc;
}

int ac_ctrl_zoo_find(const ac_ctrl_zoo_t *z, const char *name) {
  for (int i = 0; i < z->n_variant; i++)
    if (strcmp(z->variant[i].name, name) == 0) return i;
  return -1;
}

int ac_ctrl_zoo_select(ac_ctrl_zoo_t *z, const int *keep) {
  if (!keep[z->reference]) return ac_error(AC_EINVAL, "the reference variant '%s' cannot be left out", z->variant[z->reference].name);
  int n = 0, ref = 0;
  for (int i = 0; i < z->n_variant; i++) {
    if (!keep[i]) continue;
    if (i == z->reference) ref = n;
    z->variant[n++] = z->variant[i];
  }
  if (n < 2) return ac_error(AC_EINVAL, "%d variant left; a controller needs at least two", n);
  z->n_variant = n;
  z->reference = ref;
  if (!z->has_manifest) {
    // The one "variant" axis: its choices are the variants that are left.
    ac_ctrl_axis_t *ax = &z->axis[0];
    ax->n_choice = n;
    for (int i = 0; i < n; i++) {
      snprintf(ax->choice[i], sizeof ax->choice[i], "%s", z->variant[i].name);
      z->variant[i].choice[0] = i;
    }
  } else {
    prune_axes(z);
  }
  return 0;
}

void ac_ctrl_zoo_apply(const ac_ctrl_zoo_t *z, ac_ctrl_config_t *cfg) {
  cfg->n_axis = z->n_axis;
  memcpy(cfg->axis, z->axis, sizeof cfg->axis);
  cfg->n_variant = z->n_variant;
  memcpy(cfg->variant, z->variant, sizeof cfg->variant);
  cfg->reference = z->reference;
  cfg->e = z->e;
  cfg->n_vocab = z->n_vocab;
  memcpy(cfg->embd_digest, z->digest, sizeof cfg->embd_digest);
  cfg->pad_id = 0;
  if (z->tok) {
    int32_t eos = ac_tokenizer_eos(z->tok);
    if (eos >= 0 && eos < z->n_vocab) cfg->pad_id = eos;
  }
}

// --- embeddings ----------------------------------------------------------------------------------

int ac_ctrl_embeddings_from_gguf(const ac_gguf_t *g, float **E, int *n_vocab, int *e, uint8_t digest[32]) {
  *E = NULL;
  const ac_gguf_tensor_t *t = ac_gguf_find_tensor(g, "token_embd.weight");
  if (!t) return ac_error(AC_ENOTFOUND, "the model has no token_embd.weight (the controller reads its embeddings)");
  const ac_type_traits_t *tr = ac_type_traits(t->type);
  if (!tr || !tr->to_float) return ac_error(AC_EUNSUPPORTED, "token_embd.weight: type %u cannot be read as float", t->type);
  int64_t cols = t->ne[0], rows = t->ne[1];
  if (t->n_dims != 2 || cols <= 0 || rows <= 0 || cols > (1 << 16) || rows > (1 << 24) || cols % tr->blck_size)
    return ac_error(AC_EFORMAT, "token_embd.weight: shape [%lld, %lld] is not an embedding table", (long long)cols,
                    (long long)rows);
  size_t row_bytes = (size_t)(cols / tr->blck_size) * tr->type_size;
  if (row_bytes * (size_t)rows > t->nbytes) return ac_error(AC_EFORMAT, "token_embd.weight: data shorter than its shape");
  float *out = malloc((size_t)rows * (size_t)cols * sizeof *out);
  if (!out) return ac_error(AC_ENOMEM, "out of memory for %lld × %lld embeddings", (long long)rows, (long long)cols);
  for (int64_t r = 0; r < rows; r++) tr->to_float((const uint8_t *)t->data + (size_t)r * row_bytes, out + r * cols, cols);
  EVP_MD_CTX *h = EVP_MD_CTX_new();
  unsigned dl = 0;
  if (!h || !EVP_DigestInit_ex(h, EVP_sha256(), NULL) || !EVP_DigestUpdate(h, t->data, row_bytes * (size_t)rows) ||
      !EVP_DigestFinal_ex(h, digest, &dl) || dl != 32) {
    EVP_MD_CTX_free(h);
    free(out);
    return ac_error(AC_ENOMEM, "sha256 of token_embd.weight failed");
  }
  EVP_MD_CTX_free(h);
  *E = out;
  *n_vocab = (int)rows;
  *e = (int)cols;
  return 0;
}

int ac_ctrl_zoo_load(const char *dir, ac_ctrl_zoo_t *z) {
  int rc = ac_ctrl_zoo_describe(dir, z);
  if (rc) return rc;
  if ((rc = ac_gguf_open(z->ref_file, &z->gguf)) || (rc = ac_tokenizer_from_gguf(z->gguf, &z->tok)) ||
      (rc = ac_ctrl_embeddings_from_gguf(z->gguf, &z->E, &z->n_vocab, &z->e, z->digest))) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", ac_errmsg()[0] ? ac_errmsg() : ac_strerror(rc));
    ac_ctrl_zoo_free(z);
    return ac_error(rc, "reference variant %s: %s", z->ref_file, msg);
  }
  return 0;
}

void ac_ctrl_zoo_free(ac_ctrl_zoo_t *z) {
  if (!z) return;
  free(z->E);
  ac_tokenizer_destroy(&z->tok);
  ac_gguf_close(&z->gguf);
  memset(z, 0, sizeof *z);
}

// --- task text -> ids ---------------------------------------------------------------------------

char *ac_ctrl_chat_text(const ac_chat_msg_t *msgs, size_t n, size_t *len) {
  size_t total = 1;
  for (size_t i = 0; i < n; i++) total += (msgs[i].content ? strlen(msgs[i].content) : 0) + 1;
  char *s = malloc(total), *p = s;
  if (!s) return NULL;
  for (size_t i = 0; i < n; i++) {
    if (i) *p++ = '\n';
    size_t k = msgs[i].content ? strlen(msgs[i].content) : 0;
    memcpy(p, msgs[i].content ? msgs[i].content : "", k);
    p += k;
  }
  *p = 0;
  if (len) *len = (size_t)(p - s);
  return s;
}

int ac_ctrl_text_ids(const ac_tokenizer_t *tok, const char *text, size_t len, int32_t **ids, int *n) {
  *ids = NULL;
  *n = 0;
  if (len == 0) {
    int32_t bos = ac_tokenizer_bos(tok);
    if (bos < 0) return 0;  // nothing to read: the controller reads one pad token
    if (!(*ids = malloc(sizeof **ids))) return ac_error(AC_ENOMEM, "out of memory");
    (*ids)[0] = bos;
    *n = 1;
    return 0;
  }
  return ac_tokenize_all(tok, text, len, ac_tokenizer_add_bos(tok), true, ids, n);
}
