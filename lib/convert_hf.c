// convert_hf.c - Hugging Face llama-family model directories (safetensors + tokenizer.json) to GGUF.
//
// Input, all in one directory:
//   config.json             hyperparameters (LlamaForCausalLM / MistralForCausalLM)
//   tokenizer.json          the vocabulary, merges, added tokens and pre-tokenizer
//   tokenizer_config.json   optional: bos/eos/unk/pad tokens, add_bos_token, the chat template
//   *.safetensors           the weights, possibly sharded (model.safetensors.index.json maps each
//                           tensor to its shard)
// Output: a GGUF llama model laid out as llama.cpp's convert_hf_to_gguf.py lays it out (same tensor
// names, same row order for attn_q/attn_k, same tokenizer arrays), so llama.cpp and libac read it
// alike. Matrices are written in the requested type (F16 or F32), 1-D tensors in F32.
//
// safetensors layout: a u64 little-endian header length N, N bytes of JSON
//   {"<name>": {"dtype": "F16", "shape": [rows, cols], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {...}}
// then the data; offsets count from the first byte after the header. Shapes list the outermost
// dimension first, the reverse of GGUF's ne[]. Every field is checked against the file before any
// byte of tensor data is read; the files are mapped read-only and plain copies are referenced
// straight from the mapping.
#include "convert.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "gguf.h"
#include "quant.h"
#include "tokenizer.h"

// The safetensors reference implementation refuses headers above 100 MB; so do we, so that a
// corrupt length cannot make us parse gigabytes of tensor data as JSON.
#define ST_MAX_HEADER (100u << 20)
#define MAX_LAYERS 4096
#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

// --- small helpers ---------------------------------------------------------------------------

// "dir/name" in a new allocation, or NULL when out of memory.
static char *path_join(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s/%s", dir, name);
  return p;
}

// Appends to a fixed buffer, truncating rather than overflowing (for error messages).
__attribute__((format(printf, 3, 4))) static void append(char *buf, size_t cap, const char *fmt, ...) {
  size_t len = strlen(buf);
  if (len + 1 >= cap) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf + len, cap - len, fmt, ap);
  va_end(ap);
}

static bool file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

// Loads a JSON file. A missing file is AC_ENOTFOUND (callers decide whether that matters), a
// malformed one AC_EFORMAT with the line and column jansson reports.
static int load_json(const char *dir, const char *name, json_t **out) {
  *out = NULL;
  char *path = path_join(dir, name);
  if (!path) return ac_error(AC_ENOMEM, "out of memory");
  int rc = 0;
  if (!file_exists(path)) {
    rc = ac_error(AC_ENOTFOUND, "%s: not found (a Hugging Face model directory needs it)", path);
    goto done;
  }
  json_error_t je;
  *out = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
  if (!*out) rc = ac_error(AC_EFORMAT, "%s:%d:%d: %s", path, je.line, je.column, je.text);
done:
  free(path);
  return rc;
}

// An integer that JSON may spell as 8192 or 8192.0.
static bool json_to_int(const json_t *v, int64_t *out) {
  if (json_is_integer(v)) {
    *out = json_integer_value(v);
    return true;
  }
  if (json_is_real(v)) {
    double d = json_real_value(v);
    if (d == floor(d) && fabs(d) < 9e15) {
      *out = (int64_t)d;
      return true;
    }
  }
  return false;
}

// config.json integer `key` in [lo, hi]. Absent: `dflt` if optional, else AC_ENOTFOUND.
static int cfg_int(const json_t *cfg, const char *key, bool required, int64_t dflt, int64_t lo, int64_t hi,
                   int64_t *out) {
  const json_t *v = json_object_get(cfg, key);
  if (!v || json_is_null(v)) {
    if (required) return ac_error(AC_ENOTFOUND, "config.json: '%s' is missing", key);
    *out = dflt;
    return 0;
  }
  if (!json_to_int(v, out)) return ac_error(AC_EFORMAT, "config.json: '%s' is not an integer", key);
  if (*out < lo || *out > hi)
    return ac_error(AC_EFORMAT, "config.json: '%s' = %lld is outside [%lld, %lld]", key, (long long)*out,
                    (long long)lo, (long long)hi);
  return 0;
}

static int cfg_real(const json_t *cfg, const char *key, double dflt, double *out) {
  const json_t *v = json_object_get(cfg, key);
  if (!v || json_is_null(v)) {
    *out = dflt;
    return 0;
  }
  if (!json_is_number(v)) return ac_error(AC_EFORMAT, "config.json: '%s' is not a number", key);
  *out = json_number_value(v);
  if (!isfinite(*out) || *out <= 0) return ac_error(AC_EFORMAT, "config.json: '%s' = %g must be positive", key, *out);
  return 0;
}

// --- safetensors -----------------------------------------------------------------------------

typedef struct {
  char *path;
  uint8_t *map;  // the whole file, read-only
  size_t size;
} st_file_t;

typedef struct {
  char *name;                       // the Hugging Face name ("model.layers.0.mlp.up_proj.weight")
  uint32_t dtype;                   // AC_TYPE_F32, AC_TYPE_F16 or AC_TYPE_BF16
  int n_dims;
  int64_t shape[AC_GGUF_MAX_DIMS];  // outermost first, as safetensors lists it
  const uint8_t *data;              // into its file's mapping; not aligned
  size_t nbytes;
  int file;                         // index into st_set_t.files
} st_tensor_t;

typedef struct {
  st_file_t *files;
  int n_files;
  st_tensor_t *t;
  size_t n_t, cap_t;
} st_set_t;

static void st_free(st_set_t *s) {
  for (int i = 0; i < s->n_files; i++) {
    if (s->files[i].map) munmap(s->files[i].map, s->files[i].size);
    free(s->files[i].path);
  }
  for (size_t i = 0; i < s->n_t; i++) free(s->t[i].name);
  free(s->files);
  free(s->t);
  memset(s, 0, sizeof *s);
}

// Element size of a safetensors dtype we convert, and its ggml type; 0 for one we do not.
static size_t st_dtype(const char *s, uint32_t *type) {
  if (strcmp(s, "F32") == 0) return *type = AC_TYPE_F32, 4;
  if (strcmp(s, "F16") == 0) return *type = AC_TYPE_F16, 2;
  if (strcmp(s, "BF16") == 0) return *type = AC_TYPE_BF16, 2;
  return 0;
}

// Parses one header entry and appends it to the set.
static int st_add_entry(st_set_t *s, int file, const char *path, const char *name, const json_t *e,
                        const uint8_t *data, size_t data_size) {
  if (!json_is_object(e)) return ac_error(AC_EFORMAT, "%s: tensor '%s': header entry is not an object", path, name);
  const char *dt = json_string_value(json_object_get(e, "dtype"));
  const json_t *shape = json_object_get(e, "shape"), *offs = json_object_get(e, "data_offsets");
  if (!dt) return ac_error(AC_EFORMAT, "%s: tensor '%s': no dtype", path, name);
  uint32_t type = 0;
  size_t esize = st_dtype(dt, &type);
  if (!esize)
    return ac_error(AC_EUNSUPPORTED, "%s: tensor '%s' has dtype '%.16s'; only F32, F16 and BF16 are supported",
                    path, name, dt);
  if (!json_is_array(shape)) return ac_error(AC_EFORMAT, "%s: tensor '%s': no shape array", path, name);
  size_t nd = json_array_size(shape);
  if (nd > AC_GGUF_MAX_DIMS)
    return ac_error(AC_EUNSUPPORTED, "%s: tensor '%s' has %zu dimensions (at most %d)", path, name, nd,
                    AC_GGUF_MAX_DIMS);
  st_tensor_t t = {.dtype = type, .n_dims = (int)nd, .file = file};
  uint64_t count = 1;
  for (size_t d = 0; d < nd; d++) {
    int64_t v;
    if (!json_to_int(json_array_get(shape, d), &v) || v < 0)
      return ac_error(AC_EFORMAT, "%s: tensor '%s': shape[%zu] is not a non-negative integer", path, name, d);
    t.shape[d] = v;
    if (__builtin_mul_overflow(count, (uint64_t)v, &count))
      return ac_error(AC_EFORMAT, "%s: tensor '%s': shape overflows", path, name);
  }
  int64_t b, en;
  if (!json_is_array(offs) || json_array_size(offs) != 2 || !json_to_int(json_array_get(offs, 0), &b) ||
      !json_to_int(json_array_get(offs, 1), &en))
    return ac_error(AC_EFORMAT, "%s: tensor '%s': data_offsets is not [begin, end]", path, name);
  if (b < 0 || en < b || (uint64_t)en > data_size)
    return ac_error(AC_EFORMAT, "%s: tensor '%s': data_offsets [%lld, %lld] outside the %zu data bytes", path, name,
                    (long long)b, (long long)en, data_size);
  uint64_t need;
  if (__builtin_mul_overflow(count, (uint64_t)esize, &need) || need != (uint64_t)(en - b))
    return ac_error(AC_EFORMAT, "%s: tensor '%s': data_offsets hold %lld bytes, but shape and dtype %s need %llu",
                    path, name, (long long)(en - b), dt, (unsigned long long)need);
  t.data = data + b;
  t.nbytes = (size_t)need;
  if (s->n_t == s->cap_t) {
    size_t cap = s->cap_t ? 2 * s->cap_t : 256;
    st_tensor_t *nt = realloc(s->t, cap * sizeof *nt);
    if (!nt) return ac_error(AC_ENOMEM, "out of memory");
    s->t = nt, s->cap_t = cap;
  }
  if (!(t.name = strdup(name))) return ac_error(AC_ENOMEM, "out of memory");
  s->t[s->n_t++] = t;
  return 0;
}

// Maps one .safetensors file and appends its tensors to the set.
static int st_open(st_set_t *s, const char *path) {
  st_file_t *nf = realloc(s->files, (s->n_files + 1) * sizeof *nf);
  if (!nf) return ac_error(AC_ENOMEM, "out of memory");
  s->files = nf;
  int file = s->n_files;
  st_file_t *f = &s->files[s->n_files++];
  memset(f, 0, sizeof *f);
  if (!(f->path = strdup(path))) return ac_error(AC_ENOMEM, "out of memory");

  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ac_error(errno == ENOENT ? AC_ENOTFOUND : AC_EIO, "cannot open '%s': %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return ac_error(AC_EIO, "%s: not a regular file", path);
  }
  size_t size = (size_t)st.st_size;
  if (size < 8) {
    close(fd);
    return ac_error(AC_EFORMAT, "%s: %zu bytes is too short for a safetensors file", path, size);
  }
  void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) return ac_error(AC_EIO, "cannot map '%s': %s", path, strerror(errno));
  f->map = map, f->size = size;

  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | f->map[i];
  if (n > size - 8)
    return ac_error(AC_EFORMAT, "%s: header length %llu runs past the end of the file (%zu bytes)", path,
                    (unsigned long long)n, size);
  if (n > ST_MAX_HEADER)
    return ac_error(AC_EFORMAT, "%s: header length %llu is over the 100 MB limit", path, (unsigned long long)n);
  json_error_t je;
  json_t *h = json_loadb((const char *)f->map + 8, (size_t)n, JSON_REJECT_DUPLICATES, &je);
  if (!h) return ac_error(AC_EFORMAT, "%s: bad header JSON at byte %d: %s", path, je.position, je.text);
  int rc = 0;
  if (!json_is_object(h)) {
    rc = ac_error(AC_EFORMAT, "%s: header is not a JSON object", path);
    goto done;
  }
  const char *key;
  json_t *e;
  json_object_foreach(h, key, e) {
    if (strcmp(key, "__metadata__") == 0) continue;
    if ((rc = st_add_entry(s, file, path, key, e, f->map + 8 + n, size - 8 - (size_t)n))) goto done;
  }
done:
  json_decref(h);
  return rc;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// Opens the shards that model.safetensors.index.json names, or else every *.safetensors file in
// the directory (sorted, so the result does not depend on readdir order).
static int st_load_dir(st_set_t *s, const char *dir) {
  json_t *idx = NULL;
  char **names = NULL;
  size_t n_names = 0, cap = 0;
  char *path = NULL;
  DIR *d = NULL;
  int rc = load_json(dir, "model.safetensors.index.json", &idx);
  if (rc == AC_ENOTFOUND) {
    rc = 0;
    if (!(d = opendir(dir))) {
      rc = ac_error(AC_EIO, "cannot read directory '%s': %s", dir, strerror(errno));
      goto done;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
      size_t len = strlen(de->d_name);
      if (de->d_name[0] == '.' || len <= 12 || strcmp(de->d_name + len - 12, ".safetensors") != 0) continue;
      if (n_names == cap) {
        cap = cap ? 2 * cap : 8;
        char **nn = realloc(names, cap * sizeof *nn);
        if (!nn) goto oom;
        names = nn;
      }
      if (!(names[n_names] = strdup(de->d_name))) goto oom;
      n_names++;
    }
    if (!n_names) {
      rc = ac_error(AC_ENOTFOUND, "%s: no .safetensors files", dir);
      goto done;
    }
    qsort(names, n_names, sizeof *names, cmp_str);
  } else if (rc) {
    goto done;
  } else {
    const json_t *wm = json_object_get(idx, "weight_map");
    if (!json_is_object(wm) || json_object_size(wm) == 0) {
      rc = ac_error(AC_EFORMAT, "%s/model.safetensors.index.json: no weight_map", dir);
      goto done;
    }
    if (!(names = calloc(json_object_size(wm), sizeof *names))) goto oom;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)wm, key, v) {
      const char *fn = json_string_value(v);
      // Shards live next to the index; a path that climbs out of the directory is not one.
      if (!fn || !*fn || strchr(fn, '/') || strcmp(fn, ".") == 0 || strcmp(fn, "..") == 0) {
        rc = ac_error(AC_EFORMAT, "%s/model.safetensors.index.json: tensor '%s' has a bad file name", dir, key);
        goto done;
      }
      bool seen = false;
      for (size_t i = 0; i < n_names && !seen; i++) seen = strcmp(names[i], fn) == 0;
      if (!seen && !(names[n_names++] = strdup(fn))) goto oom;
    }
  }
  for (size_t i = 0; i < n_names; i++) {
    if (!(path = path_join(dir, names[i]))) goto oom;
    if ((rc = st_open(s, path))) goto done;
    free(path);
    path = NULL;
  }
  // Every tensor the index promises must be in the shard it names.
  if (idx) {
    const char *key;
    json_t *v;
    json_object_foreach(json_object_get(idx, "weight_map"), key, v) {
      bool found = false;
      for (size_t i = 0; i < s->n_t && !found; i++) {
        const char *base = strrchr(s->files[s->t[i].file].path, '/');
        found = strcmp(s->t[i].name, key) == 0 && strcmp(base + 1, json_string_value(v)) == 0;
      }
      if (!found) {
        rc = ac_error(AC_ENOTFOUND, "%s/%s: tensor '%s' (listed in the index) is missing", dir, json_string_value(v),
                      key);
        goto done;
      }
    }
  }
  goto done;
oom:
  rc = ac_error(AC_ENOMEM, "out of memory");
done:
  if (d) closedir(d);
  for (size_t i = 0; i < n_names; i++) free(names[i]);
  free(names);
  free(path);
  json_decref(idx);
  return rc;
}

// --- hyperparameters -------------------------------------------------------------------------

typedef struct {
  int64_t n_vocab;    // vocab_size, or the embedding's rows when config.json omits it
  int64_t n_embd;     // hidden_size
  int64_t n_layer;    // num_hidden_layers
  int64_t n_ff;       // intermediate_size
  int64_t n_head;     // num_attention_heads
  int64_t n_head_kv;  // num_key_value_heads (n_head when absent: no GQA)
  int64_t head_dim;   // head_dim, or n_embd / n_head
  int64_t n_ctx;      // max_position_embeddings
  double rope_theta, rms_eps;
  bool tied;          // tie_word_embeddings: output.weight is token_embd.weight
} hparams_t;

static int read_hparams(const json_t *cfg, hparams_t *hp) {
  int rc;
  const json_t *arch = json_array_get(json_object_get(cfg, "architectures"), 0);
  const char *a = json_string_value(arch), *mt = json_string_value(json_object_get(cfg, "model_type"));
  if (a && strcmp(a, "LlamaForCausalLM") != 0 && strcmp(a, "MistralForCausalLM") != 0)
    return ac_error(AC_EUNSUPPORTED, "config.json: architecture '%s' is not supported (LlamaForCausalLM is)", a);
  if (!a && mt && strcmp(mt, "llama") != 0 && strcmp(mt, "mistral") != 0)
    return ac_error(AC_EUNSUPPORTED, "config.json: model_type '%s' is not supported (llama is)", mt);
  const char *act = json_string_value(json_object_get(cfg, "hidden_act"));
  if (act && strcmp(act, "silu") != 0)
    return ac_error(AC_EUNSUPPORTED, "config.json: hidden_act '%s' is not supported (silu is)", act);
  if ((rc = cfg_int(cfg, "hidden_size", true, 0, 1, 1 << 20, &hp->n_embd)) ||
      (rc = cfg_int(cfg, "num_hidden_layers", true, 0, 1, MAX_LAYERS, &hp->n_layer)) ||
      (rc = cfg_int(cfg, "intermediate_size", true, 0, 1, 1 << 22, &hp->n_ff)) ||
      (rc = cfg_int(cfg, "num_attention_heads", true, 0, 1, 1 << 14, &hp->n_head)) ||
      (rc = cfg_int(cfg, "num_key_value_heads", false, hp->n_head, 1, hp->n_head, &hp->n_head_kv)) ||
      (rc = cfg_int(cfg, "max_position_embeddings", false, 2048, 1, INT32_MAX, &hp->n_ctx)) ||
      (rc = cfg_int(cfg, "vocab_size", false, 0, 0, INT32_MAX, &hp->n_vocab)) ||
      (rc = cfg_real(cfg, "rope_theta", 10000.0, &hp->rope_theta)) ||
      (rc = cfg_real(cfg, "rms_norm_eps", 1e-6, &hp->rms_eps)))
    return rc;
  if (hp->n_head % hp->n_head_kv)
    return ac_error(AC_EFORMAT, "config.json: %lld attention heads do not split into %lld kv groups",
                    (long long)hp->n_head, (long long)hp->n_head_kv);
  const json_t *hd = json_object_get(cfg, "head_dim");
  if ((!hd || json_is_null(hd)) && hp->n_embd % hp->n_head)
    return ac_error(AC_EFORMAT, "config.json: hidden_size %lld is not a multiple of %lld heads", (long long)hp->n_embd,
                    (long long)hp->n_head);
  if ((rc = cfg_int(cfg, "head_dim", false, hp->n_embd / hp->n_head, 2, 1 << 16, &hp->head_dim))) return rc;
  // RoPE rotates pairs of dimensions, so a head must have an even size.
  if (hp->head_dim % 2) return ac_error(AC_EFORMAT, "config.json: head_dim %lld is odd", (long long)hp->head_dim);
  const json_t *tie = json_object_get(cfg, "tie_word_embeddings");
  hp->tied = json_is_true(tie);
  return 0;
}

// rope_scaling: "linear" becomes two metadata keys; "llama3" (Llama 3.1+) becomes a per-frequency
// factor tensor rope_freqs.weight, computed as llama.cpp's converter computes it.
static int write_rope_scaling(const json_t *cfg, const hparams_t *hp, ac_gguf_writer_t *w, float **freqs) {
  const json_t *rs = json_object_get(cfg, "rope_scaling");
  if (!rs || json_is_null(rs)) return 0;
  if (!json_is_object(rs)) return ac_error(AC_EFORMAT, "config.json: rope_scaling is not an object");
  const char *type = json_string_value(json_object_get(rs, "rope_type"));
  if (!type) type = json_string_value(json_object_get(rs, "type"));
  if (!type || strcmp(type, "default") == 0) return 0;
  int rc;
  double factor;
  if (strcmp(type, "linear") == 0) {
    if ((rc = cfg_real(rs, "factor", 1.0, &factor))) return rc;
    if ((rc = ac_gguf_set_str(w, "llama.rope.scaling.type", "linear")) ||
        (rc = ac_gguf_set_f32(w, "llama.rope.scaling.factor", (float)factor)))
      return rc;
    return 0;
  }
  if (strcmp(type, "llama3") == 0) {
    double lo_f, hi_f, old_ctx;
    if ((rc = cfg_real(rs, "factor", 8.0, &factor)) || (rc = cfg_real(rs, "low_freq_factor", 1.0, &lo_f)) ||
        (rc = cfg_real(rs, "high_freq_factor", 4.0, &hi_f)) ||
        (rc = cfg_real(rs, "original_max_position_embeddings", 8192, &old_ctx)))
      return rc;
    if (hi_f == lo_f) return ac_error(AC_EFORMAT, "config.json: rope_scaling high_freq_factor equals low_freq_factor");
    int64_t n = hp->head_dim / 2;
    float *f = malloc(n * sizeof *f);
    if (!f) return ac_error(AC_ENOMEM, "out of memory");
    double lo_wl = old_ctx / lo_f, hi_wl = old_ctx / hi_f;
    for (int64_t i = 0; i < n; i++) {
      // Computed in float32 as the reference does (torch.arange(...)/dim, base ** ...).
      float freq = 1.0f / powf((float)hp->rope_theta, (float)(2 * i) / (float)hp->head_dim);
      double wl = 2 * M_PI / freq;
      if (wl < hi_wl) f[i] = 1.0f;
      else if (wl > lo_wl) f[i] = (float)factor;
      else {
        double smooth = (old_ctx / wl - lo_f) / (hi_f - lo_f);
        f[i] = (float)(1 / ((1 - smooth) / factor + smooth));
      }
    }
    *freqs = f;
    return 0;
  }
  return ac_error(AC_EUNSUPPORTED, "config.json: rope_scaling type '%s' is not supported (linear and llama3 are)",
                  type);
}

// --- tensor names and shapes -----------------------------------------------------------------

typedef enum {
  K_EMBD, K_ATTN_NORM, K_Q, K_K, K_V, K_O, K_Q_B, K_K_B, K_V_B, K_O_B, K_FFN_NORM, K_GATE, K_UP, K_DOWN,
  K_OUT_NORM, K_OUTPUT, K_COUNT
} kind_t;

// Per-layer tensors: Hugging Face suffix after "model.layers.N." and the GGUF suffix after "blk.N.".
static const struct {
  kind_t kind;
  const char *hf, *gguf;
  bool required;
} layer_map[] = {
    {K_ATTN_NORM, "input_layernorm.weight", "attn_norm.weight", true},
    {K_Q, "self_attn.q_proj.weight", "attn_q.weight", true},
    {K_K, "self_attn.k_proj.weight", "attn_k.weight", true},
    {K_V, "self_attn.v_proj.weight", "attn_v.weight", true},
    {K_O, "self_attn.o_proj.weight", "attn_output.weight", true},
    {K_Q_B, "self_attn.q_proj.bias", "attn_q.bias", false},
    {K_K_B, "self_attn.k_proj.bias", "attn_k.bias", false},
    {K_V_B, "self_attn.v_proj.bias", "attn_v.bias", false},
    {K_O_B, "self_attn.o_proj.bias", "attn_output.bias", false},
    {K_FFN_NORM, "post_attention_layernorm.weight", "ffn_norm.weight", true},
    {K_GATE, "mlp.gate_proj.weight", "ffn_gate.weight", true},
    {K_UP, "mlp.up_proj.weight", "ffn_up.weight", true},
    {K_DOWN, "mlp.down_proj.weight", "ffn_down.weight", true},
};
#define N_LAYER_MAP ((int)(sizeof layer_map / sizeof layer_map[0]))

static const struct {
  kind_t kind;
  const char *hf, *gguf;
} global_map[] = {
    {K_EMBD, "model.embed_tokens.weight", "token_embd.weight"},
    {K_OUT_NORM, "model.norm.weight", "output_norm.weight"},
    {K_OUTPUT, "lm_head.weight", "output.weight"},
};

// One tensor to write.
typedef struct {
  const st_tensor_t *src;
  kind_t kind;
  int layer;     // -1 for the tensors outside the blocks
  char name[48]; // GGUF name
} plan_t;

// Maps a Hugging Face name. Returns 1 with *p filled, 0 for a tensor to skip, or an error.
static int map_name(const char *hf, int64_t n_layer, plan_t *p) {
  for (size_t i = 0; i < sizeof global_map / sizeof global_map[0]; i++)
    if (strcmp(hf, global_map[i].hf) == 0) {
      p->kind = global_map[i].kind, p->layer = -1;
      snprintf(p->name, sizeof p->name, "%s", global_map[i].gguf);
      return 1;
    }
  static const char pre[] = "model.layers.";
  if (strncmp(hf, pre, sizeof pre - 1) == 0) {
    const char *s = hf + sizeof pre - 1;
    int64_t layer = 0;
    int digits = 0;
    for (; *s >= '0' && *s <= '9' && digits < 7; s++, digits++) layer = layer * 10 + (*s - '0');
    if (digits && *s == '.') {
      s++;
      // Transformers once saved the RoPE frequencies; they are recomputed from rope_theta.
      if (strcmp(s, "self_attn.rotary_emb.inv_freq") == 0) return 0;
      for (int i = 0; i < N_LAYER_MAP; i++)
        if (strcmp(s, layer_map[i].hf) == 0) {
          if (layer >= n_layer)
            return ac_error(AC_EFORMAT, "tensor '%s': layer %lld, but config.json has num_hidden_layers %lld", hf,
                            (long long)layer, (long long)n_layer);
          p->kind = layer_map[i].kind, p->layer = (int)layer;
          snprintf(p->name, sizeof p->name, "blk.%d.%s", (int)layer, layer_map[i].gguf);
          return 1;
        }
    }
  }
  return ac_error(AC_EUNSUPPORTED, "tensor '%s' is not part of a llama model this converter knows", hf);
}

// The Hugging Face shape (outermost first) config.json implies for a kind; returns n_dims.
static int expected_shape(kind_t k, const hparams_t *hp, int64_t sh[2]) {
  int64_t q = hp->n_head * hp->head_dim, kv = hp->n_head_kv * hp->head_dim;
  switch (k) {
    case K_EMBD:
    case K_OUTPUT: sh[0] = hp->n_vocab, sh[1] = hp->n_embd; return 2;
    case K_ATTN_NORM:
    case K_FFN_NORM:
    case K_OUT_NORM:
    case K_O_B: sh[0] = hp->n_embd; return 1;
    case K_Q: sh[0] = q, sh[1] = hp->n_embd; return 2;
    case K_K:
    case K_V: sh[0] = kv, sh[1] = hp->n_embd; return 2;
    case K_O: sh[0] = hp->n_embd, sh[1] = q; return 2;
    case K_Q_B: sh[0] = q; return 1;
    case K_K_B:
    case K_V_B: sh[0] = kv; return 1;
    case K_GATE:
    case K_UP: sh[0] = hp->n_ff, sh[1] = hp->n_embd; return 2;
    case K_DOWN: sh[0] = hp->n_embd, sh[1] = hp->n_ff; return 2;
    default: return 0;
  }
}

// Blocks in order, each block's tensors in kind order, output_norm and output last.
static int cmp_plan(const void *a, const void *b) {
  const plan_t *x = a, *y = b;
  int lx = x->kind == K_EMBD ? -1 : x->layer < 0 ? MAX_LAYERS : x->layer;
  int ly = y->kind == K_EMBD ? -1 : y->layer < 0 ? MAX_LAYERS : y->layer;
  if (lx != ly) return lx < ly ? -1 : 1;
  return (int)x->kind - (int)y->kind;
}

// --- tensor data -----------------------------------------------------------------------------

// Row r of a GGUF attn_q/attn_k comes from row rope_src_row(r) of the Hugging Face matrix.
// Transformers rotates dimension j of a head with dimension j + head_dim/2 (the two halves);
// llama.cpp's RoPE rotates adjacent dimensions (2j, 2j+1). llama.cpp's converter therefore views
// the rows as (n_head, 2, head_dim/2) and swaps the last two axes, and so do we.
static int64_t rope_src_row(int64_t r, int64_t head_dim) {
  int64_t h = r / head_dim, i = r % head_dim;
  return h * head_dim + (i % 2) * (head_dim / 2) + i / 2;
}

// Decodes n elements of `dtype` at unaligned `src`.
static void decode_row(const uint8_t *src, uint32_t dtype, float *dst, int64_t n) {
  if (dtype == AC_TYPE_F32) {
    memcpy(dst, src, (size_t)n * 4);
    return;
  }
  for (int64_t i = 0; i < n; i++) {
    uint16_t h;
    memcpy(&h, src + 2 * i, 2);
    dst[i] = dtype == AC_TYPE_F16 ? ac_f16_to_f32(h) : ac_bf16_to_f32(h);
  }
}

// Converts one tensor to `type` (F32 for 1-D), permuting attn_q/attn_k rows. A tensor already in
// the target type that needs no permutation is referenced from the mapping (*buf stays NULL);
// otherwise *buf is a new allocation the caller frees after writing.
static int convert_tensor(const plan_t *p, uint32_t type, const hparams_t *hp, ac_gguf_writer_t *w, void **buf) {
  const st_tensor_t *t = p->src;
  int64_t ne[2] = {t->shape[t->n_dims - 1], t->n_dims == 2 ? t->shape[0] : 1};
  uint32_t dst = t->n_dims == 1 ? AC_TYPE_F32 : type;
  int64_t heads = p->kind == K_Q || p->kind == K_Q_B   ? hp->n_head
                  : p->kind == K_K || p->kind == K_K_B ? hp->n_head_kv
                                                       : 0;
  // A permuted bias is a column of rows one element long.
  int64_t rows = heads && t->n_dims == 1 ? ne[0] : ne[1], row_len = heads && t->n_dims == 1 ? 1 : ne[0];
  size_t esrc = t->dtype == AC_TYPE_F32 ? 4 : 2, edst = dst == AC_TYPE_F32 ? 4 : 2;
  *buf = NULL;
  if (t->dtype == dst && !heads) return ac_gguf_add_tensor(w, p->name, dst, t->n_dims, ne, t->data, t->nbytes);

  size_t nbytes = (size_t)(rows * row_len) * edst;
  float *row = malloc((size_t)row_len * sizeof *row);
  uint8_t *out = malloc(nbytes ? nbytes : 1);
  if (!row || !out) {
    free(row);
    free(out);
    return ac_error(AC_ENOMEM, "out of memory for tensor '%s'", t->name);
  }
  int64_t head_dim = heads ? rows / heads : 0;
  for (int64_t r = 0; r < rows; r++) {
    int64_t sr = heads ? rope_src_row(r, head_dim) : r;
    decode_row(t->data + (size_t)(sr * row_len) * esrc, t->dtype, row, row_len);
    uint8_t *o = out + (size_t)(r * row_len) * edst;
    if (dst == AC_TYPE_F32) memcpy(o, row, (size_t)row_len * 4);
    else ac_type_traits(AC_TYPE_F16)->from_float(row, o, row_len);
  }
  free(row);
  *buf = out;
  return ac_gguf_add_tensor(w, p->name, dst, t->n_dims, ne, out, nbytes);
}

// --- tokenizer -------------------------------------------------------------------------------

// The GGUF special-token keys and the tokenizer_config.json / config.json names they come from.
static const struct {
  const char *typ, *key;
} special_keys[] = {
    {"bos", "tokenizer.ggml.bos_token_id"},
    {"eos", "tokenizer.ggml.eos_token_id"},
    {"unk", "tokenizer.ggml.unknown_token_id"},
    {"sep", "tokenizer.ggml.seperator_token_id"},  // sic: llama.cpp's spelling
    {"pad", "tokenizer.ggml.padding_token_id"},
    {"mask", "tokenizer.ggml.mask_token_id"},
};

// Added tokens that their authors forgot to mark special but llama.cpp treats as control tokens.
static bool looks_special(const char *s) {
  size_t n = strlen(s);
  if (strcmp(s, "<pad>") == 0 || strcmp(s, "<mask>") == 0 || strcmp(s, "<2mass>") == 0 || strcmp(s, "[@BOS@]") == 0)
    return true;
  if (n >= 4 && strncmp(s, "<|", 2) == 0 && strcmp(s + n - 2, "|>") == 0) return true;
  // The full-width bar of deepseek-coder: "<｜" ... "｜>".
  if (n >= 8 && strncmp(s, "<\xef\xbd\x9c", 4) == 0 && strcmp(s + n - 4, "\xef\xbd\x9c>") == 0) return true;
  return n >= 8 && strncmp(s, "<unused", 7) == 0 && s[n - 1] == '>';
}

static bool is_byte_token(const char *s) {
  static const char hex[] = "0123456789ABCDEFabcdef";
  return strlen(s) == 6 && strncmp(s, "<0x", 3) == 0 && strchr(hex, s[3]) && strchr(hex, s[4]) && s[5] == '>';
}

// Copies s with every U+2581 replaced by a space (user-defined tokens are matched in raw text).
static char *unmeta(const char *s) {
  char *o = malloc(strlen(s) + 1), *p = o;
  if (!o) return NULL;
  while (*s) {
    if (strncmp(s, "\xe2\x96\x81", 3) == 0) *p++ = ' ', s += 3;
    else *p++ = *s++;
  }
  *p = 0;
  return o;
}

typedef struct {
  json_t *tok, *tcfg;  // tokenizer.json, tokenizer_config.json (may be NULL)
  const json_t *model, *added;
  int64_t n;           // vocabulary size
  ac_str_t *toks;      // (n) token texts, pointing into the JSON or into `owned`
  char **owned;        // (n) texts we built
  int32_t *types;      // (n)
  float *scores;       // (n) SentencePiece-style models only
  bool *set;           // (n) ids that the vocabulary defines
  ac_str_t *merges;    // byte-level BPE only
  char **merge_owned;
  size_t n_merges;
} vocab_t;

static void vocab_free(vocab_t *v) {
  for (int64_t i = 0; v->owned && i < v->n; i++) free(v->owned[i]);
  for (size_t i = 0; v->merge_owned && i < v->n_merges; i++) free(v->merge_owned[i]);
  free(v->owned), free(v->toks), free(v->types), free(v->scores), free(v->set);
  free(v->merges), free(v->merge_owned);
  json_decref(v->tok);
  json_decref(v->tcfg);
}

static int set_token(vocab_t *v, int64_t id, const char *text, const char *what) {
  if (id < 0 || id >= v->n)
    return ac_error(AC_EFORMAT, "tokenizer.json: %s '%s' has id %lld, outside the vocabulary of %lld"
                    " (config.json vocab_size)", what, text, (long long)id, (long long)v->n);
  v->toks[id] = (ac_str_t){text, strlen(text)};
  v->set[id] = true;
  return 0;
}

// The id of a special token given by its text: an added token first (as llama.cpp's converter
// looks it up), then the vocabulary; -1 if neither has it.
static int64_t token_id_by_text(const vocab_t *v, const char *text) {
  size_t i;
  const json_t *a;
  json_array_foreach(v->added, i, a) {
    const char *c = json_string_value(json_object_get(a, "content"));
    int64_t id;
    if (c && strcmp(c, text) == 0 && json_to_int(json_object_get(a, "id"), &id)) return id;
  }
  const json_t *voc = json_object_get(v->model, "vocab");
  int64_t id;
  if (json_is_object(voc) && json_to_int(json_object_get(voc, text), &id)) return id;
  if (json_is_array(voc))
    json_array_foreach(voc, i, a) {
      if (json_is_string(json_array_get(a, 0)) && strcmp(json_string_value(json_array_get(a, 0)), text) == 0)
        return (int64_t)i;
    }
  return -1;
}

// Names the pre-tokenizer the way llama.cpp's tokenizer.ggml.pre does, from the shape of
// tokenizer.json's pre_tokenizer (llama.cpp hashes the tokenization of a test text instead; the
// shapes below are what those hashes stand for). Byte-level BPE only.
#define LLAMA3_REGEX                                                       \
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| " \
  "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

static bool is_type(const json_t *o, const char *t) {
  const char *s = json_string_value(json_object_get(o, "type"));
  return s && strcmp(s, t) == 0;
}

// A ByteLevel step: add_prefix_space is not something llama.cpp can do, use_regex says whether it
// also splits with the GPT-2 pattern (default true, as in tokenizers).
static bool byte_level(const json_t *o, bool want_regex) {
  if (!is_type(o, "ByteLevel") || json_is_true(json_object_get(o, "add_prefix_space"))) return false;
  const json_t *ur = json_object_get(o, "use_regex");
  return (ur ? json_is_true(ur) : true) == want_regex;
}

// Splitting off every digit on its own: Digits(individual_digits) or Split(\p{N}, Isolated).
static bool digit_split(const json_t *o) {
  if (is_type(o, "Digits")) return json_is_true(json_object_get(o, "individual_digits"));
  if (!is_type(o, "Split") || json_is_true(json_object_get(o, "invert"))) return false;
  const char *re = json_string_value(json_object_get(json_object_get(o, "pattern"), "Regex"));
  const char *beh = json_string_value(json_object_get(o, "behavior"));
  return re && beh && strcmp(re, "\\p{N}") == 0 && strcmp(beh, "Isolated") == 0;
}

static int detect_pre(const json_t *tok, const char **pre) {
  const json_t *pt = json_object_get(tok, "pre_tokenizer"), *steps[8];
  size_t n = 0;
  if (is_type(pt, "Sequence")) {
    const json_t *arr = json_object_get(pt, "pretokenizers");
    n = json_array_size(arr);
    for (size_t i = 0; i < n && i < 8; i++) steps[i] = json_array_get(arr, i);
  } else if (json_is_object(pt)) {
    steps[0] = pt, n = 1;
  }
  const json_t *norm = json_object_get(tok, "normalizer");
  bool plain = !norm || json_is_null(norm);
  if (plain && n == 1 && byte_level(steps[0], true)) return *pre = "gpt-2", 0;
  if (plain && n == 2 && digit_split(steps[0]) && byte_level(steps[1], true)) return *pre = "smollm", 0;
  if (plain && n == 2 && is_type(steps[0], "Split") && byte_level(steps[1], false)) {
    const char *re = json_string_value(json_object_get(json_object_get(steps[0], "pattern"), "Regex"));
    if (re && strcmp(re, LLAMA3_REGEX) == 0) return *pre = "llama-bpe", 0;
  }
  // Describe what we found, so that the error says which pre-tokenizer it was.
  char desc[160] = "";
  const char *nt = json_string_value(json_object_get(norm, "type"));
  if (!plain) append(desc, sizeof desc, "(after normalizer %.32s) ", nt ? nt : "?");
  append(desc, sizeof desc, "%s", n > 1 ? "Sequence[" : n ? "" : "none");
  for (size_t i = 0; i < n && i < 8; i++) {
    const char *st = json_string_value(json_object_get(steps[i], "type"));
    append(desc, sizeof desc, "%s%.32s", i ? ", " : "", st ? st : "?");
  }
  append(desc, sizeof desc, "%s", n > 1 ? "]" : "");
  return ac_error(AC_EUNSUPPORTED,
                  "tokenizer.json: pre-tokenizer %s is not one this converter knows (gpt-2, smollm, llama-bpe)", desc);
}

// model.merges as GGUF wants them: "left right" strings. The newer list-of-pairs form may have
// spaces inside a part; those are written as U+0120, as llama.cpp's converter does.
static int read_merges(vocab_t *v) {
  const json_t *m = json_object_get(v->model, "merges");
  if (!json_is_array(m) || json_array_size(m) == 0)
    return ac_error(AC_EFORMAT, "tokenizer.json: BPE model without merges");
  v->n_merges = json_array_size(m);
  v->merges = calloc(v->n_merges, sizeof *v->merges);
  v->merge_owned = calloc(v->n_merges, sizeof *v->merge_owned);
  if (!v->merges || !v->merge_owned) return ac_error(AC_ENOMEM, "out of memory");
  for (size_t i = 0; i < v->n_merges; i++) {
    const json_t *e = json_array_get(m, i);
    if (json_is_string(e)) {
      const char *s = json_string_value(e);
      if (!strchr(s, ' ')) return ac_error(AC_EFORMAT, "tokenizer.json: merge %zu ('%s') has no space", i, s);
      v->merges[i] = (ac_str_t){s, json_string_length(e)};
      continue;
    }
    const char *a = json_string_value(json_array_get(e, 0)), *b = json_string_value(json_array_get(e, 1));
    if (!json_is_array(e) || json_array_size(e) != 2 || !a || !b)
      return ac_error(AC_EFORMAT, "tokenizer.json: merge %zu is neither \"a b\" nor [a, b]", i);
    char *o = malloc(2 * (strlen(a) + strlen(b)) + 2), *p = o;
    if (!o) return ac_error(AC_ENOMEM, "out of memory");
    v->merge_owned[i] = o;
    const char *parts[2] = {a, b};
    for (int k = 0; k < 2; k++) {
      if (k) *p++ = ' ';
      for (const char *s = parts[k]; *s; s++) {
        if (*s == ' ') *p++ = '\xc4', *p++ = '\xa0';  // U+0120
        else *p++ = *s;
      }
    }
    *p = 0;
    v->merges[i] = (ac_str_t){o, (uint64_t)(p - o)};
  }
  return 0;
}

// Scores for a BPE vocabulary with byte fallback (SentencePiece BPE exported by transformers):
// llama.cpp's SentencePiece tokenizer merges the best-scoring pair first, so merge rank i gives
// score -i; tokens no merge makes rank after every merge, by id.
static int bpe_scores(vocab_t *v) {
  const json_t *m = json_object_get(v->model, "merges"), *voc = json_object_get(v->model, "vocab");
  size_t nm = json_array_size(m);
  for (int64_t i = 0; i < v->n; i++) v->scores[i] = -(float)(nm + i);
  char *buf = NULL;
  size_t cap = 0;
  for (size_t i = 0; i < nm; i++) {
    const json_t *e = json_array_get(m, i);
    const char *a, *b;
    size_t la, lb;
    if (json_is_string(e)) {
      a = json_string_value(e);
      const char *sp = strchr(a, ' ');
      if (!sp) continue;
      la = (size_t)(sp - a), b = sp + 1, lb = strlen(b);
    } else {
      a = json_string_value(json_array_get(e, 0)), b = json_string_value(json_array_get(e, 1));
      if (!a || !b) continue;
      la = strlen(a), lb = strlen(b);
    }
    if (la + lb + 1 > cap) {
      cap = 2 * (la + lb + 1);
      char *nb = realloc(buf, cap);
      if (!nb) {
        free(buf);
        return ac_error(AC_ENOMEM, "out of memory");
      }
      buf = nb;
    }
    memcpy(buf, a, la), memcpy(buf + la, b, lb);
    int64_t id;
    if (json_to_int(json_object_getn(voc, buf, la + lb), &id) && id >= 0 && id < v->n &&
        v->scores[id] < -(float)i)
      v->scores[id] = -(float)i;
  }
  free(buf);
  for (int64_t i = 0; i < v->n; i++)
    if (v->types[i] != AC_TOKEN_NORMAL) v->scores[i] = 0;
  return 0;
}

// SentencePiece-style models put a space in front of the text when the normalizer prepends
// U+2581 (or the Metaspace pre-tokenizer does).
static bool adds_space_prefix(const json_t *tok) {
  static const char *const parts[2][2] = {{"normalizer", "normalizers"}, {"pre_tokenizer", "pretokenizers"}};
  for (int s = 0; s < 2; s++) {
    // A single step, or a Sequence of them.
    const json_t *top = json_object_get(tok, parts[s][0]);
    const json_t *arr = is_type(top, "Sequence") ? json_object_get(top, parts[s][1]) : NULL;
    size_t n = arr ? json_array_size(arr) : 1;
    for (size_t i = 0; i < n; i++) {
      const json_t *o = arr ? json_array_get(arr, i) : top;
      const char *pp = json_string_value(json_object_get(o, "prepend"));
      if (is_type(o, "Prepend") && pp && strcmp(pp, "\xe2\x96\x81") == 0) return true;
      if (is_type(o, "Metaspace")) {
        const char *scheme = json_string_value(json_object_get(o, "prepend_scheme"));
        if (scheme ? strcmp(scheme, "never") != 0 : json_is_true(json_object_get(o, "add_prefix_space"))) return true;
      }
    }
  }
  return false;
}

// Whether the post-processor puts a special token in front of every sequence (BOS).
static bool template_adds_bos(const json_t *tok) {
  const json_t *pp = json_object_get(tok, "post_processor");
  const json_t *procs = is_type(pp, "Sequence") ? json_object_get(pp, "processors") : NULL;
  size_t n = procs ? json_array_size(procs) : 1;
  for (size_t i = 0; i < n; i++) {
    const json_t *p = procs ? json_array_get(procs, i) : pp;
    const json_t *single = json_object_get(p, "single");
    if (is_type(p, "TemplateProcessing") && json_array_size(single) > 1 &&
        json_object_get(json_array_get(single, 0), "SpecialToken"))
      return true;
  }
  return false;
}

static int write_chat_template(const char *dir, const json_t *tcfg, ac_gguf_writer_t *w) {
  const json_t *ct = json_object_get(tcfg, "chat_template");
  int rc = 0;
  if (json_is_string(ct))
    return ac_gguf_set_strn(w, "tokenizer.chat_template", json_string_value(ct), json_string_length(ct));
  if (json_is_array(ct)) {
    // Several named templates: "default" is the chat template, the others keep their names.
    size_t i;
    const json_t *e;
    json_array_foreach(ct, i, e) {
      const char *name = json_string_value(json_object_get(e, "name"));
      const json_t *t = json_object_get(e, "template");
      if (!name || !json_is_string(t))
        return ac_error(AC_EFORMAT, "tokenizer_config.json: chat_template[%zu] has no name or template", i);
      char key[160];
      if (strcmp(name, "default") == 0) snprintf(key, sizeof key, "tokenizer.chat_template");
      else snprintf(key, sizeof key, "tokenizer.chat_template.%s", name);
      if ((rc = ac_gguf_set_strn(w, key, json_string_value(t), json_string_length(t)))) return rc;
    }
    return 0;
  }
  // Newer checkpoints keep the template in its own file.
  char *path = path_join(dir, "chat_template.jinja");
  if (!path) return ac_error(AC_ENOMEM, "out of memory");
  FILE *f = file_exists(path) ? fopen(path, "rb") : NULL;
  free(path);
  if (!f) return 0;
  char *text = NULL;
  size_t len = 0, cap = 0, got;
  do {
    if (len + 4096 > cap) {
      char *nt = realloc(text, cap = 2 * cap + 4096);
      if (!nt) {
        rc = ac_error(AC_ENOMEM, "out of memory");
        goto done;
      }
      text = nt;
    }
    got = fread(text + len, 1, cap - len, f);
    len += got;
  } while (got);
  if (ferror(f)) rc = ac_error(AC_EIO, "%s/chat_template.jinja: read error", dir);
  else rc = ac_gguf_set_strn(w, "tokenizer.chat_template", text, len);
done:
  free(text);
  fclose(f);
  return rc;
}

static int write_tokenizer(const char *dir, const json_t *cfg, int64_t n_vocab, ac_gguf_writer_t *w) {
  vocab_t v = {.n = n_vocab};
  int rc = load_json(dir, "tokenizer.json", &v.tok);
  if (rc) goto done;
  if ((rc = load_json(dir, "tokenizer_config.json", &v.tcfg)) == AC_ENOTFOUND) rc = 0;
  if (rc) goto done;
  if (!json_is_object(v.tok) || (v.tcfg && !json_is_object(v.tcfg))) {
    rc = ac_error(AC_EFORMAT, "%s: tokenizer.json / tokenizer_config.json is not a JSON object", dir);
    goto done;
  }
  v.model = json_object_get(v.tok, "model");
  v.added = json_object_get(v.tok, "added_tokens");
  const char *mtype = json_string_value(json_object_get(v.model, "type"));
  if (!json_is_object(v.model) || !mtype) {
    rc = ac_error(AC_EFORMAT, "tokenizer.json: no model.type");
    goto done;
  }
  if (v.added && !json_is_array(v.added)) {
    rc = ac_error(AC_EFORMAT, "tokenizer.json: added_tokens is not an array");
    goto done;
  }
  bool unigram = strcmp(mtype, "Unigram") == 0, bpe = strcmp(mtype, "BPE") == 0;
  bool byte_fallback = json_is_true(json_object_get(v.model, "byte_fallback"));
  // Byte-level BPE is "gpt2" to GGUF; SentencePiece exported as Unigram or as BPE with byte
  // fallback is "llama" (tokens + scores).
  bool spm = unigram || (bpe && byte_fallback);
  if (!unigram && !bpe) {
    rc = ac_error(AC_EUNSUPPORTED, "tokenizer.json: model type '%s' is not supported (BPE, Unigram are)", mtype);
    goto done;
  }
  const json_t *voc = json_object_get(v.model, "vocab");
  if (unigram ? !json_is_array(voc) : !json_is_object(voc)) {
    rc = ac_error(AC_EFORMAT, "tokenizer.json: model.vocab is not an %s", unigram ? "array" : "object");
    goto done;
  }
  size_t n = (size_t)v.n;
  v.toks = calloc(n, sizeof *v.toks), v.owned = calloc(n, sizeof *v.owned);
  v.types = calloc(n, sizeof *v.types), v.scores = calloc(n, sizeof *v.scores), v.set = calloc(n, sizeof *v.set);
  if (!v.toks || !v.owned || !v.types || !v.scores || !v.set) goto oom;

  // The vocabulary proper.
  if (unigram) {
    size_t i;
    const json_t *e;
    json_array_foreach(voc, i, e) {
      const char *s = json_string_value(json_array_get(e, 0));
      const json_t *sc = json_array_get(e, 1);
      if (!s || !json_is_number(sc)) {
        rc = ac_error(AC_EFORMAT, "tokenizer.json: vocab[%zu] is not [piece, score]", i);
        goto done;
      }
      if ((rc = set_token(&v, (int64_t)i, s, "token"))) goto done;
      v.scores[i] = (float)json_number_value(sc);
    }
  } else {
    const char *key;
    json_t *e;
    json_object_foreach((json_t *)voc, key, e) {
      int64_t id;
      if (!json_to_int(e, &id)) {
        rc = ac_error(AC_EFORMAT, "tokenizer.json: token '%s' has no integer id", key);
        goto done;
      }
      if (id >= 0 && id < v.n && v.set[id]) {
        rc = ac_error(AC_EFORMAT, "tokenizer.json: tokens '%s' and '%.*s' share id %lld", key,
                      (int)v.toks[id].len, v.toks[id].ptr, (long long)id);
        goto done;
      }
      if ((rc = set_token(&v, id, key, "token"))) goto done;
    }
  }
  int64_t unk = -1;
  if (spm) {
    const char *ut = json_string_value(json_object_get(v.model, "unk_token"));
    if (!unigram && ut) unk = token_id_by_text(&v, ut);
    if (unigram && !json_to_int(json_object_get(v.model, "unk_id"), &unk)) unk = -1;
  }
  for (int64_t i = 0; i < v.n; i++)
    v.types[i] = spm && i == unk ? AC_TOKEN_UNKNOWN
                 : spm && byte_fallback && v.set[i] && is_byte_token(v.toks[i].ptr) ? AC_TOKEN_BYTE
                                                                                   : AC_TOKEN_NORMAL;

  // Added tokens replace what the vocabulary says for their id.
  size_t ai;
  const json_t *a;
  json_array_foreach(v.added, ai, a) {
    const char *c = json_string_value(json_object_get(a, "content"));
    int64_t id;
    if (!c || !json_to_int(json_object_get(a, "id"), &id)) {
      rc = ac_error(AC_EFORMAT, "tokenizer.json: added_tokens[%zu] has no id or content", ai);
      goto done;
    }
    if ((rc = set_token(&v, id, c, "added token"))) goto done;
    if (spm && id == unk) continue;
    if (json_is_true(json_object_get(a, "special")) || looks_special(c)) {
      v.types[id] = AC_TOKEN_CONTROL;
    } else {
      // Matched in the raw text by llama.cpp, so written with plain spaces.
      v.types[id] = AC_TOKEN_USER_DEFINED;
      if (strstr(c, "\xe2\x96\x81")) {
        free(v.owned[id]);
        if (!(v.owned[id] = unmeta(c))) goto oom;
        v.toks[id] = (ac_str_t){v.owned[id], strlen(v.owned[id])};
      }
    }
  }
  // Ids nothing defines (an embedding padded past the tokenizer) get placeholder tokens.
  for (int64_t i = 0; i < v.n; i++) {
    if (v.set[i]) continue;
    char tmp[32];
    int len = snprintf(tmp, sizeof tmp, "[PAD%lld]", (long long)i);
    if (!(v.owned[i] = strdup(tmp))) goto oom;
    v.toks[i] = (ac_str_t){v.owned[i], (uint64_t)len};
    v.types[i] = AC_TOKEN_UNUSED;
  }

  if ((rc = ac_gguf_set_str(w, "tokenizer.ggml.model", spm ? "llama" : "gpt2"))) goto done;
  if (spm) {
    if (!unigram && (rc = bpe_scores(&v))) goto done;
    if ((rc = ac_gguf_set_arr(w, "tokenizer.ggml.scores", AC_GGUF_FLOAT32, v.scores, v.n)) ||
        (rc = ac_gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", adds_space_prefix(v.tok))))
      goto done;
  } else {
    const char *pre = NULL;
    if ((rc = detect_pre(v.tok, &pre)) || (rc = read_merges(&v)) ||
        (rc = ac_gguf_set_str(w, "tokenizer.ggml.pre", pre)) ||
        (rc = ac_gguf_set_arr_str(w, "tokenizer.ggml.merges", v.merges, v.n_merges)) ||
        (rc = ac_gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", false)))
      goto done;
  }
  if ((rc = ac_gguf_set_arr_str(w, "tokenizer.ggml.tokens", v.toks, v.n)) ||
      (rc = ac_gguf_set_arr(w, "tokenizer.ggml.token_type", AC_GGUF_INT32, v.types, v.n)))
    goto done;

  // Special tokens: tokenizer_config.json names them by text, config.json by id.
  for (size_t i = 0; i < sizeof special_keys / sizeof special_keys[0]; i++) {
    char name[32];
    snprintf(name, sizeof name, "%s_token", special_keys[i].typ);
    const json_t *e = json_object_get(v.tcfg, name);
    const char *text = json_is_object(e) ? json_string_value(json_object_get(e, "content")) : json_string_value(e);
    int64_t id = text ? token_id_by_text(&v, text) : -1;
    snprintf(name, sizeof name, "%s_token_id", special_keys[i].typ);
    if (id < 0 && !json_to_int(json_object_get(cfg, name), &id)) id = -1;
    if (id < 0 && strcmp(special_keys[i].typ, "unk") == 0) id = unk;
    if (id < 0) continue;
    if (id >= v.n) {
      rc = ac_error(AC_EFORMAT, "%s %lld is outside the vocabulary of %lld", name, (long long)id, (long long)v.n);
      goto done;
    }
    if ((rc = ac_gguf_set_u32(w, special_keys[i].key, (uint32_t)id))) goto done;
  }
  // HF adds BOS when the config says so or the post-processor template starts with a special
  // token; byte-level BPE tokenizers otherwise add nothing, SentencePiece ones add BOS.
  const json_t *ab = json_object_get(v.tcfg, "add_bos_token"), *ae = json_object_get(v.tcfg, "add_eos_token");
  bool add_bos = json_is_boolean(ab) ? json_is_true(ab) : template_adds_bos(v.tok) || spm;
  if ((rc = ac_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", add_bos))) goto done;
  if (json_is_boolean(ae) && (rc = ac_gguf_set_bool(w, "tokenizer.ggml.add_eos_token", json_is_true(ae)))) goto done;
  rc = write_chat_template(dir, v.tcfg, w);
  goto done;
oom:
  rc = ac_error(AC_ENOMEM, "out of memory");
done:
  vocab_free(&v);
  return rc;
}

// --- the conversion --------------------------------------------------------------------------

// Names and JSON parser messages quote the input, which may hold control characters (an escaped
// "\n" in a tensor name) or broken UTF-8; the message must stay one printable line of text, so
// those bytes become '?'.
static void one_line_error(int rc) {
  char msg[512];
  snprintf(msg, sizeof msg, "%s", ac_errmsg());
  bool dirty = false;
  for (unsigned char *c = (unsigned char *)msg; *c;) {
    int n = *c < 0x80 ? 1 : (*c & 0xe0) == 0xc0 ? 2 : (*c & 0xf0) == 0xe0 ? 3 : (*c & 0xf8) == 0xf0 ? 4 : 0;
    bool ok = n > 0;
    for (int k = 1; ok && k < n; k++) ok = (c[k] & 0xc0) == 0x80;
    // C0/C1 controls, DEL, and the Unicode line and paragraph separators.
    if (ok && n == 1) ok = *c >= 0x20 && *c != 0x7f;
    if (ok && n == 2) ok = !(c[0] == 0xc2 && c[1] < 0xa0) && c[0] >= 0xc2;
    if (ok && n == 3)
      ok = !(c[0] == 0xe2 && c[1] == 0x80 && (c[2] == 0xa8 || c[2] == 0xa9)) && !(c[0] == 0xe0 && c[1] < 0xa0) &&
           !(c[0] == 0xed && c[1] >= 0xa0);  // overlong forms, surrogates
    if (ok && n == 4) ok = c[0] <= 0xf4 && !(c[0] == 0xf0 && c[1] < 0x90) && !(c[0] == 0xf4 && c[1] >= 0x90);
    if (ok) {
      c += n;
    } else {
      *c++ = '?';
      dirty = true;
    }
  }
  if (dirty) ac_error(rc, "%s", msg);
}

// general.name: the model's hub name when config.json records it, else the directory's name.
static int write_name(const char *dir, const json_t *cfg, ac_gguf_writer_t *w) {
  const char *s = json_string_value(json_object_get(cfg, "_name_or_path"));
  char buf[256];
  if (!s || !*s) s = dir;
  snprintf(buf, sizeof buf, "%s", s);
  size_t n = strlen(buf);
  while (n > 1 && buf[n - 1] == '/') buf[--n] = 0;
  const char *base = strrchr(buf, '/');
  return ac_gguf_set_str(w, "general.name", base && base[1] ? base + 1 : buf);
}

int ac_convert_hf(const char *dir, const char *out_path, uint32_t type) {
  if (!dir || !out_path) return ac_error(AC_EINVAL, "convert: no model directory or output path");
  if (type != AC_TYPE_F16 && type != AC_TYPE_F32)
    return ac_error(AC_EINVAL, "convert writes f16 or f32; use 'acq quantize' for other types");
  ac_quant_init();
  json_t *cfg = NULL;
  st_set_t st = {0};
  plan_t *plan = NULL;
  void **bufs = NULL;
  bool *have = NULL;
  float *rope_freqs = NULL;
  size_t n_plan = 0;
  hparams_t hp = {0};
  ac_gguf_writer_t *w = ac_gguf_writer_new();
  if (!w) return ac_error(AC_ENOMEM, "out of memory");
  int rc = load_json(dir, "config.json", &cfg);
  if (rc) goto done;
  if (!json_is_object(cfg)) {
    rc = ac_error(AC_EFORMAT, "%s/config.json: not a JSON object", dir);
    goto done;
  }
  if ((rc = read_hparams(cfg, &hp)) || (rc = st_load_dir(&st, dir))) goto done;

  // Map every tensor to its GGUF name; check names, shapes and that nothing is there twice.
  if (!(plan = calloc(st.n_t ? st.n_t : 1, sizeof *plan)) ||
      !(have = calloc((size_t)(hp.n_layer + 1) * K_COUNT, sizeof *have)))
    goto oom;
  for (size_t i = 0; i < st.n_t; i++) {
    plan_t p = {.src = &st.t[i]};
    int m = map_name(st.t[i].name, hp.n_layer, &p);
    if (m < 0) {
      rc = m;
      goto done;
    }
    if (m == 0 || (p.kind == K_OUTPUT && hp.tied)) continue;
    if (p.kind == K_EMBD && hp.n_vocab == 0 && st.t[i].n_dims == 2) hp.n_vocab = st.t[i].shape[0];
    bool *slot = &have[(size_t)(p.layer < 0 ? hp.n_layer : p.layer) * K_COUNT + p.kind];
    if (*slot) {
      rc = ac_error(AC_EFORMAT, "tensor '%s' appears twice (%s)", st.t[i].name, st.files[st.t[i].file].path);
      goto done;
    }
    *slot = true;
    plan[n_plan++] = p;
  }
  if (hp.n_vocab <= 0) {
    rc = ac_error(AC_EFORMAT, "%s: no vocab_size in config.json and no 2-D model.embed_tokens.weight", dir);
    goto done;
  }
  if (!have[hp.n_layer * K_COUNT + K_EMBD] || !have[hp.n_layer * K_COUNT + K_OUT_NORM]) {
    rc = ac_error(AC_ENOTFOUND, "%s: tensor '%s' is missing", dir,
                  have[hp.n_layer * K_COUNT + K_EMBD] ? "model.norm.weight" : "model.embed_tokens.weight");
    goto done;
  }
  for (int64_t l = 0; l < hp.n_layer; l++)
    for (int i = 0; i < N_LAYER_MAP; i++)
      if (layer_map[i].required && !have[l * K_COUNT + layer_map[i].kind]) {
        rc = ac_error(AC_ENOTFOUND, "%s: tensor 'model.layers.%lld.%s' is missing", dir, (long long)l, layer_map[i].hf);
        goto done;
      }
  for (size_t i = 0; i < n_plan; i++) {
    const st_tensor_t *t = plan[i].src;
    int64_t sh[2] = {0, 0};
    int nd = expected_shape(plan[i].kind, &hp, sh);
    if (t->n_dims != nd || t->shape[0] != sh[0] || (nd == 2 && t->shape[1] != sh[1])) {
      char got[112] = "", want[64];
      for (int d = 0; d < t->n_dims; d++) append(got, sizeof got, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
      if (nd == 2) snprintf(want, sizeof want, "%lld, %lld", (long long)sh[0], (long long)sh[1]);
      else snprintf(want, sizeof want, "%lld", (long long)sh[0]);
      rc = ac_error(AC_EFORMAT, "tensor '%s' has shape [%s]; config.json implies [%s]", t->name, got, want);
      goto done;
    }
  }
  qsort(plan, n_plan, sizeof *plan, cmp_plan);

  // Metadata, as llama.cpp's converter writes it for LlamaForCausalLM.
  if ((rc = ac_gguf_set_str(w, "general.architecture", "llama")) || (rc = write_name(dir, cfg, w)) ||
      (rc = ac_gguf_set_u32(w, "general.file_type", type == AC_TYPE_F16 ? 1 : 0)) ||
      (rc = ac_gguf_set_u32(w, "llama.vocab_size", (uint32_t)hp.n_vocab)) ||
      (rc = ac_gguf_set_u32(w, "llama.context_length", (uint32_t)hp.n_ctx)) ||
      (rc = ac_gguf_set_u32(w, "llama.embedding_length", (uint32_t)hp.n_embd)) ||
      (rc = ac_gguf_set_u32(w, "llama.block_count", (uint32_t)hp.n_layer)) ||
      (rc = ac_gguf_set_u32(w, "llama.feed_forward_length", (uint32_t)hp.n_ff)) ||
      (rc = ac_gguf_set_u32(w, "llama.attention.head_count", (uint32_t)hp.n_head)) ||
      (rc = ac_gguf_set_u32(w, "llama.attention.head_count_kv", (uint32_t)hp.n_head_kv)) ||
      (rc = ac_gguf_set_f32(w, "llama.rope.freq_base", (float)hp.rope_theta)) ||
      (rc = ac_gguf_set_f32(w, "llama.attention.layer_norm_rms_epsilon", (float)hp.rms_eps)) ||
      (rc = ac_gguf_set_u32(w, "llama.rope.dimension_count", (uint32_t)hp.head_dim)))
    goto done;
  // Heads narrower or wider than n_embd / n_head need their size spelled out.
  if (hp.head_dim * hp.n_head != hp.n_embd &&
      ((rc = ac_gguf_set_u32(w, "llama.attention.key_length", (uint32_t)hp.head_dim)) ||
       (rc = ac_gguf_set_u32(w, "llama.attention.value_length", (uint32_t)hp.head_dim))))
    goto done;
  if ((rc = write_rope_scaling(cfg, &hp, w, &rope_freqs)) || (rc = write_tokenizer(dir, cfg, hp.n_vocab, w))) goto done;

  // Tensors. Converted copies stay alive until the file is written.
  if (!(bufs = calloc(n_plan ? n_plan : 1, sizeof *bufs))) goto oom;
  if (rope_freqs) {
    int64_t ne = hp.head_dim / 2;
    if ((rc = ac_gguf_add_tensor(w, "rope_freqs.weight", AC_TYPE_F32, 1, &ne, rope_freqs, ne * sizeof(float))))
      goto done;
  }
  for (size_t i = 0; i < n_plan; i++)
    if ((rc = convert_tensor(&plan[i], type, &hp, w, &bufs[i]))) goto done;
  rc = ac_gguf_write(w, out_path);
  goto done;
oom:
  rc = ac_error(AC_ENOMEM, "out of memory");
done:
  for (size_t i = 0; bufs && i < n_plan; i++) free(bufs[i]);
  free(bufs);
  free(plan);
  free(have);
  free(rope_freqs);
  st_free(&st);
  json_decref(cfg);
  ac_gguf_writer_destroy(&w);
  if (rc) one_line_error(rc);
  return rc;
}
