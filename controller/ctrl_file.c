// ctrl_file.c - the controller file: "ACCTRL\0\0", u32 version, u32 header length, a JSON header
// that describes everything (sizes, the zoo's axes and variants, θ, training info, the tensor
// table), zero padding to a 32-byte boundary, the float32 parameters (little-endian) and a
// u64 FNV-1a checksum of every byte before it.
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controller.h"
#include "ctrl_impl.h"
#include "error.h"
#include "file.h"

static const char MAGIC[8] = {'A', 'C', 'C', 'T', 'R', 'L', 0, 0};

static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}
#define FNV_INIT 0xcbf29ce484222325ull

static size_t align32(size_t x) { return (x + 31) & ~(size_t)31; }

// --- save -------------------------------------------------------------------------------------

static json_t *header_json(const ac_ctrl_t *c) {
  const ac_ctrl_config_t *k = &c->cfg;
  char hex[65];
  for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", k->embd_digest[i]);
  json_t *axes = json_array(), *vars = json_array(), *tens = json_array();
  for (int a = 0; a < k->n_axis; a++) {
    json_t *ch = json_array();
    for (int j = 0; j < k->axis[a].n_choice; j++) json_array_append_new(ch, json_string(k->axis[a].choice[j]));
    json_array_append_new(axes, json_pack("{s:s, s:o}", "name", k->axis[a].name, "choices", ch));
  }
  for (int v = 0; v < k->n_variant; v++) {
    json_t *ch = json_array();
    for (int a = 0; a < k->n_axis; a++) json_array_append_new(ch, json_integer(k->variant[v].choice[a]));
    json_array_append_new(vars, json_pack("{s:s, s:f, s:o}", "name", k->variant[v].name, "cost",
                                          (double)k->variant[v].cost, "choices", ch));
  }
  for (int i = 0; i < c->n_tensor; i++) {
    const ac__ctrl_tensor_t *t = &c->tensor[i];
    json_t *sh = json_array();
    for (int j = 0; j < t->ndim; j++) json_array_append_new(sh, json_integer(t->shape[j]));
    json_array_append_new(tens, json_pack("{s:s, s:o}", "name", t->name, "shape", sh));
  }
  char seed[32];
  snprintf(seed, sizeof seed, "%llu", (unsigned long long)k->train.seed);
  char iseed[32];
  snprintf(iseed, sizeof iseed, "%llu", (unsigned long long)k->seed);
  return json_pack(
      "{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:o, s:o, s:s, s:f, s:f, s:f, s:s,"
      " s:s, s:{s:s, s:i, s:b, s:f, s:s}, s:I, s:o}",
      "format", "agentcompress-controller", "version", AC_CTRL_FORMAT_VERSION, "k", k->k, "d", k->d,
      "n_layer", k->n_layer, "n_head", k->n_head, "ffn", k->ffn, "hidden", k->hidden, "e", k->e,
      "n_vocab", k->n_vocab, "pad_id", k->pad_id, "embd_digest", hex, "axes", axes, "variants", vars,
      "reference", k->variant[k->reference].name, "theta", (double)k->theta, "conf_min", (double)k->conf_min,
      "conf_temp", (double)k->conf_temp,
      "confidence", "max probability of softmax(sum of the variant's axis logits / conf_temp) over variants",
      "init_seed", iseed, "train", "seed", seed, "steps", k->train.steps, "maml", k->train.maml,
      "final_loss", (double)k->train.final_loss, "note", k->train.note, "n_params", (json_int_t)c->n_params,
      "tensors", tens);
}

int ac_ctrl_save(const ac_ctrl_t *c, const char *path) {
  if (!c || !path) return ac_error(AC_EINVAL, "ac_ctrl_save: NULL argument");
  json_t *h = header_json(c);
  if (!h) return ac_error(AC_ENOMEM, "controller header");
  char *text = json_dumps(h, JSON_COMPACT | JSON_REAL_PRECISION(17));
  json_decref(h);
  if (!text) return ac_error(AC_ENOMEM, "controller header");
  uint32_t hl = (uint32_t)strlen(text), ver = AC_CTRL_FORMAT_VERSION;
  size_t pad = align32(16 + hl) - (16 + hl);
  static const uint8_t zeros[32];
  uint64_t sum = FNV_INIT;
  char tmp[4096];
  int err = 0;
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
    free(text);
    return ac_error(AC_EINVAL, "controller path too long: %s", path);
  }
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    free(text);
    return ac_error(AC_EIO, "cannot write %s", tmp);
  }
  sum = fnv1a(sum, MAGIC, 8);
  sum = fnv1a(sum, &ver, 4);
  sum = fnv1a(sum, &hl, 4);
  sum = fnv1a(sum, text, hl);
  sum = fnv1a(sum, zeros, pad);
  sum = fnv1a(sum, c->params, c->n_params * sizeof(float));
  int ok = fwrite(MAGIC, 1, 8, f) == 8 && fwrite(&ver, 4, 1, f) == 1 && fwrite(&hl, 4, 1, f) == 1 &&
           fwrite(text, 1, hl, f) == hl && fwrite(zeros, 1, pad, f) == pad &&
           fwrite(c->params, sizeof(float), c->n_params, f) == c->n_params && fwrite(&sum, 8, 1, f) == 1;
  ok = (fclose(f) == 0) && ok;
  free(text);
  if (!ok || rename(tmp, path) != 0) {
    remove(tmp);
    err = ac_error(AC_EIO, "cannot write %s", path);
  }
  return err;
}

// --- load -------------------------------------------------------------------------------------

static int get_int(json_t *o, const char *key, int *out, const char *path) {
  json_t *v = json_object_get(o, key);
  if (!json_is_integer(v)) return ac_error(AC_EFORMAT, "%s: controller header lacks integer '%s'", path, key);
  json_int_t x = json_integer_value(v);
  if (x < -2147483647 || x > 2147483647) return ac_error(AC_EFORMAT, "%s: '%s' out of range", path, key);
  *out = (int)x;
  return 0;
}

static int get_num(json_t *o, const char *key, float *out, const char *path) {
  json_t *v = json_object_get(o, key);
  if (!json_is_number(v)) return ac_error(AC_EFORMAT, "%s: controller header lacks number '%s'", path, key);
  *out = (float)json_number_value(v);
  return 0;
}

static int get_str(json_t *o, const char *key, char *out, size_t cap, const char *path) {
  json_t *v = json_object_get(o, key);
  if (!json_is_string(v) || strlen(json_string_value(v)) >= cap)
    return ac_error(AC_EFORMAT, "%s: controller header lacks string '%s' (or it is too long)", path, key);
  strcpy(out, json_string_value(v));
  return 0;
}

static int parse_header(json_t *h, ac_ctrl_config_t *k, const char *path) {
  int err;
  memset(k, 0, sizeof *k);
  if ((err = get_int(h, "k", &k->k, path)) || (err = get_int(h, "d", &k->d, path)) ||
      (err = get_int(h, "n_layer", &k->n_layer, path)) || (err = get_int(h, "n_head", &k->n_head, path)) ||
      (err = get_int(h, "ffn", &k->ffn, path)) || (err = get_int(h, "hidden", &k->hidden, path)) ||
      (err = get_int(h, "e", &k->e, path)) || (err = get_int(h, "n_vocab", &k->n_vocab, path)) ||
      (err = get_int(h, "pad_id", &k->pad_id, path)) || (err = get_num(h, "theta", &k->theta, path)) ||
      (err = get_num(h, "conf_min", &k->conf_min, path)) || (err = get_num(h, "conf_temp", &k->conf_temp, path)))
    return err;
  char hex[65], ref[AC_CTRL_NAME_MAX], buf[32];
  if ((err = get_str(h, "embd_digest", hex, sizeof hex, path))) return err;
  if (strlen(hex) != 64) return ac_error(AC_EFORMAT, "%s: embd_digest is not 64 hex digits", path);
  for (int i = 0; i < 32; i++) {
    unsigned x;
    if (sscanf(hex + 2 * i, "%2x", &x) != 1) return ac_error(AC_EFORMAT, "%s: embd_digest is not hex", path);
    k->embd_digest[i] = (uint8_t)x;
  }
  if ((err = get_str(h, "init_seed", buf, sizeof buf, path))) return err;
  k->seed = strtoull(buf, NULL, 10);
  json_t *axes = json_object_get(h, "axes"), *vars = json_object_get(h, "variants");
  if (!json_is_array(axes) || !json_is_array(vars) || json_array_size(axes) > AC_CTRL_MAX_AXES ||
      json_array_size(vars) > AC_CTRL_MAX_VARIANTS)
    return ac_error(AC_EFORMAT, "%s: controller header: bad 'axes' or 'variants'", path);
  size_t i;
  json_t *x;
  json_array_foreach(axes, i, x) {
    ac_ctrl_axis_t *a = &k->axis[k->n_axis++];
    json_t *ch = json_object_get(x, "choices");
    if ((err = get_str(x, "name", a->name, sizeof a->name, path))) return err;
    if (!json_is_array(ch) || json_array_size(ch) > AC_CTRL_MAX_CHOICES)
      return ac_error(AC_EFORMAT, "%s: axis '%s': bad choices", path, a->name);
    for (size_t j = 0; j < json_array_size(ch); j++) {
      const char *s = json_string_value(json_array_get(ch, j));
      if (!s || strlen(s) >= AC_CTRL_NAME_MAX) return ac_error(AC_EFORMAT, "%s: axis '%s': bad choice name", path, a->name);
      strcpy(a->choice[a->n_choice++], s);
    }
  }
  k->reference = -1;
  if ((err = get_str(h, "reference", ref, sizeof ref, path))) return err;
  json_array_foreach(vars, i, x) {
    ac_ctrl_variant_t *v = &k->variant[k->n_variant++];
    json_t *ch = json_object_get(x, "choices");
    if ((err = get_str(x, "name", v->name, sizeof v->name, path)) || (err = get_num(x, "cost", &v->cost, path)))
      return err;
    if (!json_is_array(ch) || (int)json_array_size(ch) != k->n_axis)
      return ac_error(AC_EFORMAT, "%s: variant '%s': %d choices expected", path, v->name, k->n_axis);
    for (int a = 0; a < k->n_axis; a++) v->choice[a] = (int)json_integer_value(json_array_get(ch, a));
    if (!strcmp(v->name, ref)) k->reference = k->n_variant - 1;
  }
  if (k->reference < 0) return ac_error(AC_EFORMAT, "%s: reference variant '%s' is not among the variants", path, ref);
  json_t *tr = json_object_get(h, "train");
  if (json_is_object(tr)) {
    if (get_str(tr, "seed", buf, sizeof buf, path) == 0) k->train.seed = strtoull(buf, NULL, 10);
    get_int(tr, "steps", &k->train.steps, path);
    k->train.maml = json_is_true(json_object_get(tr, "maml"));
    get_num(tr, "final_loss", &k->train.final_loss, path);
    get_str(tr, "note", k->train.note, sizeof k->train.note, path);
  }
  if ((err = ac_ctrl_config_check(k))) return ac_error(AC_EFORMAT, "%s: %s", path, ac_errmsg());
  return 0;
}

// The file's tensor table must be the one this build lays out for its config.
static int check_tensors(const ac_ctrl_t *c, json_t *h, const char *path) {
  json_t *t = json_object_get(h, "tensors"), *np = json_object_get(h, "n_params");
  if (!json_is_integer(np) || (size_t)json_integer_value(np) != c->n_params)
    return ac_error(AC_EFORMAT, "%s: n_params does not match the config (%zu expected)", path, c->n_params);
  if (!json_is_array(t) || (int)json_array_size(t) != c->n_tensor)
    return ac_error(AC_EFORMAT, "%s: tensor table has %zu entries, %d expected", path, json_array_size(t), c->n_tensor);
  for (int i = 0; i < c->n_tensor; i++) {
    json_t *e = json_array_get(t, i), *sh = json_object_get(e, "shape");
    const char *name = json_string_value(json_object_get(e, "name"));
    const ac__ctrl_tensor_t *x = &c->tensor[i];
    if (!name || strcmp(name, x->name) || !json_is_array(sh) || (int)json_array_size(sh) != x->ndim)
      return ac_error(AC_EFORMAT, "%s: tensor %d is '%s', expected '%s'", path, i, name ? name : "?", x->name);
    for (int j = 0; j < x->ndim; j++)
      if (json_integer_value(json_array_get(sh, j)) != x->shape[j])
        return ac_error(AC_EFORMAT, "%s: tensor '%s' has another shape than its config gives", path, x->name);
  }
  return 0;
}

int ac_ctrl_load(const char *path, const float *E, int n_vocab, int e, const uint8_t *digest, ac_ctrl_t **out) {
  if (!path || !out) return ac_error(AC_EINVAL, "ac_ctrl_load: NULL argument");
  *out = NULL;
  char *buf = NULL;
  size_t len = 0;
  json_t *h = NULL;
  ac_ctrl_t *c = NULL;
  int err = ac_read_file(path, 0, &buf, &len);
  if (err) return err;
  uint32_t ver, hl;
  if (len < 16 || memcmp(buf, MAGIC, 8)) {
    err = ac_error(AC_EFORMAT, "%s: not a controller file (no ACCTRL magic)", path);
    goto fail;
  }
  memcpy(&ver, buf + 8, 4);
  memcpy(&hl, buf + 12, 4);
  if (ver != AC_CTRL_FORMAT_VERSION) {
    err = ac_error(AC_EUNSUPPORTED, "%s: controller file version %u, this build reads version %d (retrain or upgrade)",
                   path, ver, AC_CTRL_FORMAT_VERSION);
    goto fail;
  }
  if (hl > len - 16) {
    err = ac_error(AC_EFORMAT, "%s: truncated controller file (header of %u bytes, file of %zu)", path, hl, len);
    goto fail;
  }
  json_error_t jerr;
  h = json_loadb(buf + 16, hl, 0, &jerr);
  if (!h || !json_is_object(h)) {
    err = ac_error(AC_EFORMAT, "%s: controller header is not JSON: %s", path, h ? "not an object" : jerr.text);
    goto fail;
  }
  ac_ctrl_config_t cfg;
  if ((err = parse_header(h, &cfg, path))) goto fail;
  if ((err = ac_ctrl_new(&cfg, &c))) goto fail;
  if ((err = check_tensors(c, h, path))) goto fail;
  size_t off = align32(16 + (size_t)hl), need = off + c->n_params * sizeof(float) + 8;
  if (len != need) {
    err = ac_error(AC_EFORMAT, "%s: %s controller file (%zu bytes, %zu expected)", path,
                   len < need ? "truncated" : "oversized", len, need);
    goto fail;
  }
  uint64_t sum, want = fnv1a(FNV_INIT, buf, need - 8);
  memcpy(&sum, buf + need - 8, 8);
  if (sum != want) {
    err = ac_error(AC_EFORMAT, "%s: corrupted controller file (checksum mismatch)", path);
    goto fail;
  }
  memcpy(c->params, buf + off, c->n_params * sizeof(float));
  if (E) {
    if ((err = ac_ctrl_set_embeddings(c, E, n_vocab, e, digest))) goto fail;
    if ((err = ac_ctrl_prepare_inference(c))) goto fail;
  }
  json_decref(h);
  free(buf);
  *out = c;
  return 0;
fail:
  json_decref(h);
  free(buf);
  ac_ctrl_destroy(&c);
  return err;
}
