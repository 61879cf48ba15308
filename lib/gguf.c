// gguf.c - GGUF v3 reader (validating, zero-copy over mmap) and writer.
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "quant.h"

// Limits that no real model reaches; they turn a corrupt count into a clear error instead of a
// huge allocation.
#define MAX_KEY_LEN 65536u
#define MAX_NAME_LEN 4096u

struct ac_gguf {
  const uint8_t *map;
  size_t size;
  uint32_t version;
  size_t alignment;
  size_t data_offset;
  int64_t n_kv;
  ac_gguf_kv_t *kv;
  int64_t n_tensors;
  ac_gguf_tensor_t *tensors;
};

// --- scalar types ------------------------------------------------------------

static const struct {
  const char *name;
  size_t size;
} vtypes[AC_GGUF_NTYPES] = {
    [AC_GGUF_UINT8] = {"u8", 1},    [AC_GGUF_INT8] = {"i8", 1},
    [AC_GGUF_UINT16] = {"u16", 2},  [AC_GGUF_INT16] = {"i16", 2},
    [AC_GGUF_UINT32] = {"u32", 4},  [AC_GGUF_INT32] = {"i32", 4},
    [AC_GGUF_FLOAT32] = {"f32", 4}, [AC_GGUF_BOOL] = {"bool", 1},
    [AC_GGUF_STRING] = {"str", 0},  [AC_GGUF_ARRAY] = {"arr", 0},
    [AC_GGUF_UINT64] = {"u64", 8},  [AC_GGUF_INT64] = {"i64", 8},
    [AC_GGUF_FLOAT64] = {"f64", 8},
};

size_t ac_gguf_vtype_size(ac_gguf_vtype_t t) { return (unsigned)t < AC_GGUF_NTYPES ? vtypes[t].size : 0; }

const char *ac_gguf_vtype_name(ac_gguf_vtype_t t) {
  return (unsigned)t < AC_GGUF_NTYPES ? vtypes[t].name : "?";
}

static bool vtype_is_signed(ac_gguf_vtype_t t) {
  return t == AC_GGUF_INT8 || t == AC_GGUF_INT16 || t == AC_GGUF_INT32 || t == AC_GGUF_INT64;
}
static bool vtype_is_unsigned(ac_gguf_vtype_t t) {
  return t == AC_GGUF_UINT8 || t == AC_GGUF_UINT16 || t == AC_GGUF_UINT32 || t == AC_GGUF_UINT64;
}

// Decodes one little-endian scalar of type t at p into the widened union members.
static void decode_scalar(ac_gguf_vtype_t t, const uint8_t *p, ac_gguf_kv_t *kv) {
  switch (t) {
    case AC_GGUF_UINT8: kv->v.u64 = p[0]; break;
    case AC_GGUF_INT8: kv->v.i64 = (int8_t)p[0]; break;
    case AC_GGUF_BOOL: kv->v.b = p[0] != 0; break;
    case AC_GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); kv->v.u64 = x; break; }
    case AC_GGUF_INT16: { int16_t x; memcpy(&x, p, 2); kv->v.i64 = x; break; }
    case AC_GGUF_UINT32: { uint32_t x; memcpy(&x, p, 4); kv->v.u64 = x; break; }
    case AC_GGUF_INT32: { int32_t x; memcpy(&x, p, 4); kv->v.i64 = x; break; }
    case AC_GGUF_FLOAT32: { float x; memcpy(&x, p, 4); kv->v.f64 = x; break; }
    case AC_GGUF_UINT64: memcpy(&kv->v.u64, p, 8); break;
    case AC_GGUF_INT64: memcpy(&kv->v.i64, p, 8); break;
    case AC_GGUF_FLOAT64: memcpy(&kv->v.f64, p, 8); break;
    default: break;
  }
}

// --- reader: a bounds-checked cursor ----------------------------------------------

typedef struct {
  const uint8_t *p;
  size_t off, size;
} cursor_t;

static int need(cursor_t *c, size_t n, const char *what) {
  if (n > c->size - c->off)
    return ac_error(AC_EFORMAT, "file is truncated: %s at byte %zu needs %zu bytes, %zu left", what,
                    c->off, n, c->size - c->off);
  return 0;
}

static int rd(cursor_t *c, void *dst, size_t n, const char *what) {
  int rc = need(c, n, what);
  if (rc) return rc;
  memcpy(dst, c->p + c->off, n);
  c->off += n;
  return 0;
}

static int rd_str(cursor_t *c, ac_str_t *s, uint64_t max_len, const char *what) {
  uint64_t len;
  int rc = rd(c, &len, 8, what);
  if (rc) return rc;
  if (len > max_len) return ac_error(AC_EFORMAT, "%s at byte %zu: length %llu is absurd", what, c->off - 8, (unsigned long long)len);
  if ((rc = need(c, len, what))) return rc;
  s->ptr = (const char *)c->p + c->off;
  s->len = len;
  c->off += len;
  return 0;
}

static char *dup_str(ac_str_t s) {
  char *r = malloc(s.len + 1);
  if (!r) return NULL;
  memcpy(r, s.ptr, s.len);
  r[s.len] = 0;
  return r;
}

// Reads the value of `kv` (type already set). Arrays of arrays are rejected: no GGUF producer
// writes them and llama.cpp does not read them.
static int read_value(cursor_t *c, ac_gguf_kv_t *kv) {
  int rc;
  if (kv->type == AC_GGUF_STRING) return rd_str(c, &kv->v.str, c->size, kv->key);
  if (kv->type != AC_GGUF_ARRAY) {
    size_t n = vtypes[kv->type].size;
    if ((rc = need(c, n, kv->key))) return rc;
    decode_scalar(kv->type, c->p + c->off, kv);
    c->off += n;
    return 0;
  }
  uint32_t at;
  uint64_t n;
  if ((rc = rd(c, &at, 4, kv->key)) || (rc = rd(c, &n, 8, kv->key))) return rc;
  if (at >= AC_GGUF_NTYPES || at == AC_GGUF_ARRAY)
    return ac_error(AC_EFORMAT, "key '%s': bad array element type %u", kv->key, at);
  kv->arr_type = at;
  kv->arr_n = n;
  if (at == AC_GGUF_STRING) {
    // Each string takes at least its 8-byte length, which bounds n before we allocate.
    if (n > (c->size - c->off) / 8)
      return ac_error(AC_EFORMAT, "key '%s': array of %llu strings cannot fit in the file", kv->key,
                      (unsigned long long)n);
    ac_str_t *strs = malloc((n ? n : 1) * sizeof *strs);
    if (!strs) return ac_error(AC_ENOMEM, "key '%s': out of memory", kv->key);
    kv->arr_data = strs;
    for (uint64_t i = 0; i < n; i++)
      if ((rc = rd_str(c, &strs[i], c->size, kv->key))) return rc;
    return 0;
  }
  size_t es = vtypes[at].size;
  if (n > (c->size - c->off) / es)
    return ac_error(AC_EFORMAT, "key '%s': array of %llu elements runs past the end of the file",
                    kv->key, (unsigned long long)n);
  kv->arr_data = c->p + c->off;
  c->off += n * es;
  return 0;
}

static int parse(ac_gguf_t *g) {
  cursor_t c = {g->map, 0, g->size};
  uint32_t magic;
  int rc;
  if ((rc = rd(&c, &magic, 4, "magic"))) return rc;
  if (magic != AC_GGUF_MAGIC)
    return ac_error(AC_EFORMAT, "not a GGUF file: bad magic %02x %02x %02x %02x (want \"GGUF\")",
                    g->map[0], g->map[1], g->map[2], g->map[3]);
  if ((rc = rd(&c, &g->version, 4, "version"))) return rc;
  if (g->version != 2 && g->version != 3)
    return ac_error(AC_EUNSUPPORTED, "GGUF version %u is not supported (want 2 or 3; re-convert "
                    "the model with a current tool)", g->version);
  uint64_t n_tensors, n_kv;
  if ((rc = rd(&c, &n_tensors, 8, "tensor count")) || (rc = rd(&c, &n_kv, 8, "kv count"))) return rc;
  // A kv pair takes at least 12 bytes (key length + type), a tensor info at least 28.
  if (n_kv > (c.size - c.off) / 12)
    return ac_error(AC_EFORMAT, "kv count %llu is absurd for a %zu-byte file", (unsigned long long)n_kv, g->size);
  if (n_tensors > (c.size - c.off) / 28)
    return ac_error(AC_EFORMAT, "tensor count %llu is absurd for a %zu-byte file",
                    (unsigned long long)n_tensors, g->size);

  g->kv = calloc(n_kv ? n_kv : 1, sizeof *g->kv);
  g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *g->tensors);
  if (!g->kv || !g->tensors) return ac_error(AC_ENOMEM, "out of memory reading the GGUF header");

  g->alignment = AC_GGUF_DEFAULT_ALIGNMENT;
  for (uint64_t i = 0; i < n_kv; i++) {
    ac_gguf_kv_t *kv = &g->kv[i];
    ac_str_t key;
    uint32_t type;
    if ((rc = rd_str(&c, &key, MAX_KEY_LEN, "kv key"))) return rc;
    if (!(kv->key = dup_str(key))) return ac_error(AC_ENOMEM, "out of memory");
    g->n_kv = (int64_t)i + 1;
    if (memchr(key.ptr, 0, key.len)) return ac_error(AC_EFORMAT, "kv %llu: key contains a NUL byte", (unsigned long long)i);
    for (uint64_t j = 0; j < i; j++)
      if (strcmp(g->kv[j].key, kv->key) == 0) return ac_error(AC_EFORMAT, "duplicate key '%s'", kv->key);
    if ((rc = rd(&c, &type, 4, kv->key))) return rc;
    if (type >= AC_GGUF_NTYPES) return ac_error(AC_EFORMAT, "key '%s': unknown value type %u", kv->key, type);
    kv->type = type;
    if ((rc = read_value(&c, kv))) return rc;
    if (strcmp(kv->key, "general.alignment") == 0) {
      if (type != AC_GGUF_UINT32 || kv->v.u64 == 0 || (kv->v.u64 & (kv->v.u64 - 1)))
        return ac_error(AC_EFORMAT, "general.alignment must be a u32 power of two");
      g->alignment = kv->v.u64;
    }
  }

  for (uint64_t i = 0; i < n_tensors; i++) {
    ac_gguf_tensor_t *t = &g->tensors[i];
    ac_str_t name;
    if ((rc = rd_str(&c, &name, MAX_NAME_LEN, "tensor name"))) return rc;
    if (!(t->name = dup_str(name))) return ac_error(AC_ENOMEM, "out of memory");
    g->n_tensors = (int64_t)i + 1;
    if ((rc = rd(&c, &t->n_dims, 4, t->name))) return rc;
    if (t->n_dims == 0 || t->n_dims > AC_GGUF_MAX_DIMS)
      return ac_error(AC_EFORMAT, "tensor '%s': %u dimensions (want 1..%d)", t->name, t->n_dims, AC_GGUF_MAX_DIMS);
    for (int d = 0; d < AC_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
      uint64_t ne;
      if ((rc = rd(&c, &ne, 8, t->name))) return rc;
      if (ne == 0 || ne > (uint64_t)1 << 40)
        return ac_error(AC_EFORMAT, "tensor '%s': dimension %u is %llu", t->name, d, (unsigned long long)ne);
      t->ne[d] = (int64_t)ne;
    }
    if ((rc = rd(&c, &t->type, 4, t->name)) || (rc = rd(&c, &t->offset, 8, t->name))) return rc;
    const ac_type_traits_t *tt = ac_type_traits(t->type);
    if (!tt)
      return ac_error(AC_EUNSUPPORTED, "tensor '%s': unknown or unsupported tensor type %u", t->name, t->type);
    if (t->ne[0] % tt->blck_size)
      return ac_error(AC_EFORMAT, "tensor '%s': row length %lld is not a multiple of the %s block size %lld",
                      t->name, (long long)t->ne[0], tt->name, (long long)tt->blck_size);
    // Element count and byte size, checked for overflow: every dim is <= 2^40 and the bytes
    // must fit in the file, so we stop as soon as the running product exceeds the file size.
    uint64_t rows = 1;
    for (int d = 1; d < AC_GGUF_MAX_DIMS; d++) {
      if ((uint64_t)t->ne[d] > (uint64_t)g->size / rows + 1)
        return ac_error(AC_EFORMAT, "tensor '%s': shape is larger than the file", t->name);
      rows *= (uint64_t)t->ne[d];
    }
    uint64_t row_bytes = ac_row_size(t->type, t->ne[0]);
    if (rows > g->size / row_bytes)
      return ac_error(AC_EFORMAT, "tensor '%s': %llu rows of %llu bytes are larger than the file", t->name,
                      (unsigned long long)rows, (unsigned long long)row_bytes);
    t->nbytes = rows * row_bytes;
    if (t->offset % g->alignment)
      return ac_error(AC_EFORMAT, "tensor '%s': offset %llu is not aligned to %zu", t->name,
                      (unsigned long long)t->offset, g->alignment);
    for (uint64_t j = 0; j < i; j++)
      if (strcmp(g->tensors[j].name, t->name) == 0) return ac_error(AC_EFORMAT, "duplicate tensor '%s'", t->name);
  }

  size_t pad = (g->alignment - c.off % g->alignment) % g->alignment;
  g->data_offset = c.off + pad;
  if (n_tensors && g->data_offset > g->size)
    return ac_error(AC_EFORMAT, "file is truncated: tensor data would start at byte %zu of %zu", g->data_offset, g->size);
  for (int64_t i = 0; i < g->n_tensors; i++) {
    ac_gguf_tensor_t *t = &g->tensors[i];
    size_t avail = g->size - g->data_offset;
    if (t->offset > avail || t->nbytes > avail - t->offset)
      return ac_error(AC_EFORMAT, "tensor '%s': data (offset %llu, %zu bytes) ends past the end of the file "
                      "(%zu bytes of data); the file is truncated or corrupt", t->name,
                      (unsigned long long)t->offset, t->nbytes, avail);
    t->data = g->map + g->data_offset + t->offset;
  }
  return 0;
}

int ac_gguf_open(const char *path, ac_gguf_t **out) {
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ac_error(AC_EIO, "cannot open '%s': %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return ac_error(AC_EIO, "cannot stat '%s': %s", path, strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return ac_error(AC_EIO, "'%s' is not a regular file", path);
  }
  if (st.st_size < 24) {
    close(fd);
    return ac_error(AC_EFORMAT, "'%s' is too small to be a GGUF file (%lld bytes)", path, (long long)st.st_size);
  }
  void *map = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  close(fd);
  if (map == MAP_FAILED) return ac_error(AC_EIO, "cannot map '%s': %s", path, strerror(e));

  ac_gguf_t *g = calloc(1, sizeof *g);
  if (!g) {
    munmap(map, st.st_size);
    return ac_error(AC_ENOMEM, "out of memory");
  }
  g->map = map;
  g->size = st.st_size;
  int rc = parse(g);
  if (rc) {
    // Prefix the path so the one line a CLI prints names the file.
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ac_errmsg());
    ac_gguf_close(&g);
    return ac_error(rc, "%s: %s", path, msg);
  }
  *out = g;
  return 0;
}

void ac_gguf_close(ac_gguf_t **self_p) {
  ac_gguf_t *g = *self_p;
  if (!g) return;
  for (int64_t i = 0; i < g->n_kv; i++) {
    free(g->kv[i].key);
    if (g->kv[i].type == AC_GGUF_ARRAY && g->kv[i].arr_type == AC_GGUF_STRING) free((void *)g->kv[i].arr_data);
  }
  for (int64_t i = 0; i < g->n_tensors; i++) free(g->tensors[i].name);
  free(g->kv);
  free(g->tensors);
  if (g->map) munmap((void *)g->map, g->size);
  free(g);
  *self_p = NULL;
}

uint32_t ac_gguf_version(const ac_gguf_t *g) { return g->version; }
size_t ac_gguf_alignment(const ac_gguf_t *g) { return g->alignment; }
size_t ac_gguf_file_size(const ac_gguf_t *g) { return g->size; }
size_t ac_gguf_data_offset(const ac_gguf_t *g) { return g->data_offset; }

size_t ac_gguf_make_resident(const ac_gguf_t *g) {
  // MADV_POPULATE_READ (Linux 5.14) faults the whole range in with the kernel's large sequential
  // reads; where it is missing, read-ahead advice and one touch per page do the same, slower.
#ifdef MADV_POPULATE_READ
  if (madvise((void *)g->map, g->size, MADV_POPULATE_READ) == 0) return g->size;
#endif
  madvise((void *)g->map, g->size, MADV_WILLNEED);
  const size_t page = 4096;
  volatile uint8_t sink = 0;
  for (size_t off = 0; off < g->size; off += page) sink ^= g->map[off];
  (void)sink;
  return g->size;
}
int64_t ac_gguf_n_kv(const ac_gguf_t *g) { return g->n_kv; }
const ac_gguf_kv_t *ac_gguf_kv(const ac_gguf_t *g, int64_t i) { return i >= 0 && i < g->n_kv ? &g->kv[i] : NULL; }
int64_t ac_gguf_n_tensors(const ac_gguf_t *g) { return g->n_tensors; }
const ac_gguf_tensor_t *ac_gguf_tensor(const ac_gguf_t *g, int64_t i) {
  return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const ac_gguf_kv_t *ac_gguf_find_kv(const ac_gguf_t *g, const char *key) {
  for (int64_t i = 0; i < g->n_kv; i++)
    if (strcmp(g->kv[i].key, key) == 0) return &g->kv[i];
  return NULL;
}

const ac_gguf_tensor_t *ac_gguf_find_tensor(const ac_gguf_t *g, const char *name) {
  for (int64_t i = 0; i < g->n_tensors; i++)
    if (strcmp(g->tensors[i].name, name) == 0) return &g->tensors[i];
  return NULL;
}

// --- typed getters -------------------------------------------------------------

// Converts a decoded integer kv (scalar view) to u32 if it fits.
static int scalar_to_u32(ac_gguf_vtype_t t, const ac_gguf_kv_t *v, const char *key, uint32_t *out) {
  if (vtype_is_unsigned(t) && v->v.u64 <= UINT32_MAX) { *out = (uint32_t)v->v.u64; return 0; }
  if (vtype_is_signed(t) && v->v.i64 >= 0 && v->v.i64 <= (int64_t)UINT32_MAX) { *out = (uint32_t)v->v.i64; return 0; }
  return ac_error(AC_EFORMAT, "key '%s': want an unsigned 32-bit integer, have %s", key, ac_gguf_vtype_name(t));
}

static int scalar_to_f32(ac_gguf_vtype_t t, const ac_gguf_kv_t *v, const char *key, float *out) {
  if (t == AC_GGUF_FLOAT32 || t == AC_GGUF_FLOAT64) { *out = (float)v->v.f64; return 0; }
  return ac_error(AC_EFORMAT, "key '%s': want a float, have %s", key, ac_gguf_vtype_name(t));
}

static const ac_gguf_kv_t *find_or_err(const ac_gguf_t *g, const char *key, int *rc) {
  const ac_gguf_kv_t *kv = ac_gguf_find_kv(g, key);
  *rc = kv ? 0 : ac_error(AC_ENOTFOUND, "required key '%s' is missing", key);
  return kv;
}

int ac_gguf_get_u32(const ac_gguf_t *g, const char *key, uint32_t *out) {
  int rc;
  const ac_gguf_kv_t *kv = find_or_err(g, key, &rc);
  return kv ? scalar_to_u32(kv->type, kv, key, out) : rc;
}

int ac_gguf_get_f32(const ac_gguf_t *g, const char *key, float *out) {
  int rc;
  const ac_gguf_kv_t *kv = find_or_err(g, key, &rc);
  return kv ? scalar_to_f32(kv->type, kv, key, out) : rc;
}

int ac_gguf_get_bool(const ac_gguf_t *g, const char *key, bool *out) {
  int rc;
  const ac_gguf_kv_t *kv = find_or_err(g, key, &rc);
  if (!kv) return rc;
  if (kv->type != AC_GGUF_BOOL) return ac_error(AC_EFORMAT, "key '%s': want a bool, have %s", key, ac_gguf_vtype_name(kv->type));
  *out = kv->v.b;
  return 0;
}

int ac_gguf_get_str(const ac_gguf_t *g, const char *key, ac_str_t *out) {
  int rc;
  const ac_gguf_kv_t *kv = find_or_err(g, key, &rc);
  if (!kv) return rc;
  if (kv->type != AC_GGUF_STRING) return ac_error(AC_EFORMAT, "key '%s': want a string, have %s", key, ac_gguf_vtype_name(kv->type));
  *out = kv->v.str;
  return 0;
}

static int arr_elem(const ac_gguf_kv_t *kv, uint64_t i, ac_gguf_kv_t *tmp) {
  if (kv->type != AC_GGUF_ARRAY) return ac_error(AC_EFORMAT, "key '%s' is not an array", kv->key);
  if (i >= kv->arr_n) return ac_error(AC_ERANGE, "key '%s': index %llu past the %llu elements", kv->key,
                                      (unsigned long long)i, (unsigned long long)kv->arr_n);
  if (kv->arr_type != AC_GGUF_STRING)
    decode_scalar(kv->arr_type, (const uint8_t *)kv->arr_data + i * vtypes[kv->arr_type].size, tmp);
  return 0;
}

int ac_gguf_arr_u32(const ac_gguf_kv_t *kv, uint64_t i, uint32_t *out) {
  ac_gguf_kv_t tmp;
  int rc = arr_elem(kv, i, &tmp);
  return rc ? rc : scalar_to_u32(kv->arr_type, &tmp, kv->key, out);
}

int ac_gguf_arr_f32(const ac_gguf_kv_t *kv, uint64_t i, float *out) {
  ac_gguf_kv_t tmp;
  int rc = arr_elem(kv, i, &tmp);
  return rc ? rc : scalar_to_f32(kv->arr_type, &tmp, kv->key, out);
}

int ac_gguf_arr_str(const ac_gguf_kv_t *kv, uint64_t i, ac_str_t *out) {
  ac_gguf_kv_t tmp;
  int rc = arr_elem(kv, i, &tmp);
  if (rc) return rc;
  if (kv->arr_type != AC_GGUF_STRING) return ac_error(AC_EFORMAT, "key '%s' is not an array of strings", kv->key);
  *out = ((const ac_str_t *)kv->arr_data)[i];
  return 0;
}

// --- writer --------------------------------------------------------------------
// Each kv's value is serialized (type-tagged, as it goes in the file) when it is set, so the
// writer holds no pointers into the caller's memory for metadata.

typedef struct {
  char *key;
  uint32_t type;
  uint8_t *val;  // serialized value, without the type tag
  size_t val_len;
} wkv_t;

typedef struct {
  char *name;
  uint32_t type, n_dims;
  int64_t ne[AC_GGUF_MAX_DIMS];
  const void *data;
  size_t nbytes;
} wtensor_t;

struct ac_gguf_writer {
  wkv_t *kv;
  size_t n_kv, cap_kv;
  wtensor_t *t;
  size_t n_t, cap_t;
};

ac_gguf_writer_t *ac_gguf_writer_new(void) { return calloc(1, sizeof(ac_gguf_writer_t)); }

void ac_gguf_writer_destroy(ac_gguf_writer_t **self_p) {
  ac_gguf_writer_t *w = *self_p;
  if (!w) return;
  for (size_t i = 0; i < w->n_kv; i++) free(w->kv[i].key), free(w->kv[i].val);
  for (size_t i = 0; i < w->n_t; i++) free(w->t[i].name);
  free(w->kv);
  free(w->t);
  free(w);
  *self_p = NULL;
}

int ac_gguf_remove_kv(ac_gguf_writer_t *w, const char *key) {
  for (size_t i = 0; i < w->n_kv; i++) {
    if (strcmp(w->kv[i].key, key) == 0) {
      free(w->kv[i].key);
      free(w->kv[i].val);
      memmove(&w->kv[i], &w->kv[i + 1], (w->n_kv - i - 1) * sizeof *w->kv);
      w->n_kv--;
      return 0;
    }
  }
  return ac_error(AC_ENOTFOUND, "key '%s' not set", key);
}

// Takes ownership of `val` (freed on failure too). Replaces an existing key in place so the
// order of keys stays as first set.
static int put_kv(ac_gguf_writer_t *w, const char *key, uint32_t type, uint8_t *val, size_t len) {
  for (size_t i = 0; i < w->n_kv; i++) {
    if (strcmp(w->kv[i].key, key) == 0) {
      free(w->kv[i].val);
      w->kv[i].type = type, w->kv[i].val = val, w->kv[i].val_len = len;
      return 0;
    }
  }
  if (w->n_kv == w->cap_kv) {
    size_t cap = w->cap_kv ? 2 * w->cap_kv : 32;
    wkv_t *kv = realloc(w->kv, cap * sizeof *kv);
    if (!kv) goto fail;
    w->kv = kv, w->cap_kv = cap;
  }
  char *k = strdup(key);
  if (!k) goto fail;
  w->kv[w->n_kv++] = (wkv_t){k, type, val, len};
  return 0;
fail:
  free(val);
  return ac_error(AC_ENOMEM, "out of memory setting '%s'", key);
}

int ac_gguf_set_scalar(ac_gguf_writer_t *w, const char *key, ac_gguf_vtype_t type, const void *v) {
  size_t n = ac_gguf_vtype_size(type);
  if (!n) return ac_error(AC_EINVAL, "key '%s': %s is not a scalar type", key, ac_gguf_vtype_name(type));
  uint8_t *val = malloc(n);
  if (!val) return ac_error(AC_ENOMEM, "out of memory");
  memcpy(val, v, n);
  return put_kv(w, key, type, val, n);
}

int ac_gguf_set_u32(ac_gguf_writer_t *w, const char *key, uint32_t v) { return ac_gguf_set_scalar(w, key, AC_GGUF_UINT32, &v); }
int ac_gguf_set_i32(ac_gguf_writer_t *w, const char *key, int32_t v) { return ac_gguf_set_scalar(w, key, AC_GGUF_INT32, &v); }
int ac_gguf_set_f32(ac_gguf_writer_t *w, const char *key, float v) { return ac_gguf_set_scalar(w, key, AC_GGUF_FLOAT32, &v); }
int ac_gguf_set_bool(ac_gguf_writer_t *w, const char *key, bool v) {
  uint8_t b = v;
  return ac_gguf_set_scalar(w, key, AC_GGUF_BOOL, &b);
}

int ac_gguf_set_strn(ac_gguf_writer_t *w, const char *key, const char *s, uint64_t len) {
  uint8_t *val = malloc(8 + len);
  if (!val) return ac_error(AC_ENOMEM, "out of memory");
  memcpy(val, &len, 8);
  memcpy(val + 8, s, len);
  return put_kv(w, key, AC_GGUF_STRING, val, 8 + len);
}

int ac_gguf_set_str(ac_gguf_writer_t *w, const char *key, const char *s) {
  return ac_gguf_set_strn(w, key, s, strlen(s));
}

int ac_gguf_set_arr(ac_gguf_writer_t *w, const char *key, ac_gguf_vtype_t type, const void *data, uint64_t n) {
  size_t es = ac_gguf_vtype_size(type);
  if (!es) return ac_error(AC_EINVAL, "key '%s': arrays of %s need ac_gguf_set_arr_str", key, ac_gguf_vtype_name(type));
  uint8_t *val = malloc(12 + n * es);
  if (!val) return ac_error(AC_ENOMEM, "out of memory");
  uint32_t t = type;
  memcpy(val, &t, 4);
  memcpy(val + 4, &n, 8);
  if (n) memcpy(val + 12, data, n * es);
  return put_kv(w, key, AC_GGUF_ARRAY, val, 12 + n * es);
}

int ac_gguf_set_arr_str(ac_gguf_writer_t *w, const char *key, const ac_str_t *strs, uint64_t n) {
  size_t len = 12;
  for (uint64_t i = 0; i < n; i++) len += 8 + strs[i].len;
  uint8_t *val = malloc(len), *p = val;
  if (!val) return ac_error(AC_ENOMEM, "out of memory");
  uint32_t t = AC_GGUF_STRING;
  memcpy(p, &t, 4), p += 4;
  memcpy(p, &n, 8), p += 8;
  for (uint64_t i = 0; i < n; i++) {
    memcpy(p, &strs[i].len, 8), p += 8;
    memcpy(p, strs[i].ptr, strs[i].len), p += strs[i].len;
  }
  return put_kv(w, key, AC_GGUF_ARRAY, val, len);
}

int ac_gguf_set_kv(ac_gguf_writer_t *w, const ac_gguf_kv_t *kv) {
  switch (kv->type) {
    case AC_GGUF_STRING: return ac_gguf_set_strn(w, kv->key, kv->v.str.ptr, kv->v.str.len);
    case AC_GGUF_ARRAY:
      if (kv->arr_type == AC_GGUF_STRING) return ac_gguf_set_arr_str(w, kv->key, kv->arr_data, kv->arr_n);
      return ac_gguf_set_arr(w, kv->key, kv->arr_type, kv->arr_data, kv->arr_n);
    default: {
      // Re-narrow the widened value to its stored width (little-endian host).
      uint8_t buf[8];
      switch (kv->type) {
        case AC_GGUF_BOOL: buf[0] = kv->v.b; break;
        case AC_GGUF_FLOAT32: { float f = (float)kv->v.f64; memcpy(buf, &f, 4); break; }
        case AC_GGUF_FLOAT64: memcpy(buf, &kv->v.f64, 8); break;
        default:
          if (vtype_is_signed(kv->type)) memcpy(buf, &kv->v.i64, 8);
          else memcpy(buf, &kv->v.u64, 8);
      }
      return ac_gguf_set_scalar(w, kv->key, kv->type, buf);
    }
  }
}

int ac_gguf_add_tensor(ac_gguf_writer_t *w, const char *name, uint32_t type, uint32_t n_dims,
                       const int64_t *ne, const void *data, size_t nbytes) {
  if (n_dims == 0 || n_dims > AC_GGUF_MAX_DIMS) return ac_error(AC_EINVAL, "tensor '%s': %u dims", name, n_dims);
  if (!ac_type_traits(type)) return ac_error(AC_EUNSUPPORTED, "tensor '%s': unknown type %u", name, type);
  size_t want = ac_row_size(type, ne[0]);
  for (uint32_t d = 1; d < n_dims; d++) want *= (size_t)ne[d];
  if (want == 0 || want != nbytes)
    return ac_error(AC_EINVAL, "tensor '%s': %zu bytes given, shape and type need %zu", name, nbytes, want);
  for (size_t i = 0; i < w->n_t; i++)
    if (strcmp(w->t[i].name, name) == 0) return ac_error(AC_EINVAL, "duplicate tensor '%s'", name);
  if (w->n_t == w->cap_t) {
    size_t cap = w->cap_t ? 2 * w->cap_t : 64;
    wtensor_t *t = realloc(w->t, cap * sizeof *t);
    if (!t) return ac_error(AC_ENOMEM, "out of memory");
    w->t = t, w->cap_t = cap;
  }
  wtensor_t *t = &w->t[w->n_t];
  memset(t, 0, sizeof *t);
  if (!(t->name = strdup(name))) return ac_error(AC_ENOMEM, "out of memory");
  t->type = type, t->n_dims = n_dims, t->data = data, t->nbytes = nbytes;
  for (int d = 0; d < AC_GGUF_MAX_DIMS; d++) t->ne[d] = d < (int)n_dims ? ne[d] : 1;
  w->n_t++;
  return 0;
}

static size_t writer_alignment(const ac_gguf_writer_t *w) {
  for (size_t i = 0; i < w->n_kv; i++)
    if (strcmp(w->kv[i].key, "general.alignment") == 0 && w->kv[i].type == AC_GGUF_UINT32) {
      uint32_t a;
      memcpy(&a, w->kv[i].val, 4);
      if (a && !(a & (a - 1))) return a;
    }
  return AC_GGUF_DEFAULT_ALIGNMENT;
}

static bool put(FILE *f, const void *p, size_t n) { return n == 0 || fwrite(p, 1, n, f) == n; }
static bool put_zeros(FILE *f, size_t n) {
  static const uint8_t zeros[64];
  while (n) {
    size_t k = n < sizeof zeros ? n : sizeof zeros;
    if (!put(f, zeros, k)) return false;
    n -= k;
  }
  return true;
}

int ac_gguf_write(ac_gguf_writer_t *w, const char *path) {
  size_t align = writer_alignment(w);
  char tmp[4096];
  if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
    return ac_error(AC_EINVAL, "path too long: %s", path);
  FILE *f = fopen(tmp, "wb");
  if (!f) return ac_error(AC_EIO, "cannot create '%s': %s", tmp, strerror(errno));
  setvbuf(f, NULL, _IOFBF, 1 << 20);

  bool ok = true;
  uint32_t magic = AC_GGUF_MAGIC, version = AC_GGUF_VERSION;
  uint64_t n_t = w->n_t, n_kv = w->n_kv;
  ok = ok && put(f, &magic, 4) && put(f, &version, 4) && put(f, &n_t, 8) && put(f, &n_kv, 8);
  for (size_t i = 0; ok && i < w->n_kv; i++) {
    uint64_t kl = strlen(w->kv[i].key);
    ok = put(f, &kl, 8) && put(f, w->kv[i].key, kl) && put(f, &w->kv[i].type, 4) &&
         put(f, w->kv[i].val, w->kv[i].val_len);
  }
  uint64_t off = 0;
  for (size_t i = 0; ok && i < w->n_t; i++) {
    const wtensor_t *t = &w->t[i];
    uint64_t nl = strlen(t->name);
    ok = put(f, &nl, 8) && put(f, t->name, nl) && put(f, &t->n_dims, 4);
    for (uint32_t d = 0; ok && d < t->n_dims; d++) {
      uint64_t ne = (uint64_t)t->ne[d];
      ok = put(f, &ne, 8);
    }
    ok = ok && put(f, &t->type, 4) && put(f, &off, 8);
    off += (t->nbytes + align - 1) / align * align;
  }
  if (ok) {
    long pos = ftell(f);
    ok = pos >= 0 && put_zeros(f, (align - (size_t)pos % align) % align);
  }
  for (size_t i = 0; ok && i < w->n_t; i++) {
    const wtensor_t *t = &w->t[i];
    ok = put(f, t->data, t->nbytes) && put_zeros(f, (align - t->nbytes % align) % align);
  }
  int e = errno;
  if (fflush(f) != 0 || fsync(fileno(f)) != 0) ok = false, e = errno;
  fclose(f);
  if (!ok || rename(tmp, path) != 0) {
    if (ok) e = errno;
    unlink(tmp);
    return ac_error(AC_EIO, "cannot write '%s': %s", path, strerror(e));
  }
  return 0;
}
