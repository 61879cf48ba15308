// gguf.h - GGUF v3 files: a validating zero-copy reader and a writer.
//
// Layout (little-endian): magic "GGUF", u32 version, u64 tensor_count, u64 kv_count, the kv pairs
// (gguf string key, u32 value type, value), the tensor infos (name, u32 n_dims, u64 ne[n_dims],
// u32 ggml type, u64 offset relative to the data section), padding to `general.alignment`
// (default 32), then the tensor data. Strings are u64 length + bytes, no terminator.
//
// The reader maps the file read-only and checks every length, count, type, dimension and offset
// against the file size before anything is used; tensor data are pointers into the mapping.
#ifndef AC_GGUF_H
#define AC_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AC_GGUF_MAGIC 0x46554747u  // "GGUF" read as a little-endian u32
#define AC_GGUF_VERSION 3
#define AC_GGUF_DEFAULT_ALIGNMENT 32
#define AC_GGUF_MAX_DIMS 4

typedef enum {
  AC_GGUF_UINT8 = 0,
  AC_GGUF_INT8 = 1,
  AC_GGUF_UINT16 = 2,
  AC_GGUF_INT16 = 3,
  AC_GGUF_UINT32 = 4,
  AC_GGUF_INT32 = 5,
  AC_GGUF_FLOAT32 = 6,
  AC_GGUF_BOOL = 7,
  AC_GGUF_STRING = 8,
  AC_GGUF_ARRAY = 9,
  AC_GGUF_UINT64 = 10,
  AC_GGUF_INT64 = 11,
  AC_GGUF_FLOAT64 = 12,
  AC_GGUF_NTYPES
} ac_gguf_vtype_t;

// A string inside the mapping: `len` bytes at `ptr`, not NUL-terminated.
typedef struct {
  const char *ptr;
  uint64_t len;
} ac_str_t;

typedef struct {
  char *key;             // NUL-terminated copy
  ac_gguf_vtype_t type;  // type of the value; AC_GGUF_ARRAY for arrays
  union {                // the scalar value, widened (type says which member)
    uint64_t u64;
    int64_t i64;
    double f64;
    bool b;
    ac_str_t str;
  } v;
  // Arrays: element type, count, and elements. Scalar arrays point into the mapping (possibly
  // unaligned: read them with memcpy or the getters below); string arrays point to an allocated
  // array of ac_str_t.
  ac_gguf_vtype_t arr_type;
  uint64_t arr_n;
  const void *arr_data;
} ac_gguf_kv_t;

typedef struct {
  char *name;                    // NUL-terminated copy
  uint32_t type;                 // ggml type id (ac_type_t in quant.h)
  uint32_t n_dims;
  int64_t ne[AC_GGUF_MAX_DIMS];  // ne[0] is the row length (fastest-varying); unused dims are 1
  uint64_t offset;               // relative to the data section
  const void *data;              // into the mapping
  size_t nbytes;
} ac_gguf_tensor_t;

typedef struct ac_gguf ac_gguf_t;

// --- reader ----------------------------------------------------------------
// Opens and validates `path`. Tensor types are checked against the known ggml types: an unknown
// type is an AC_EUNSUPPORTED error naming the tensor.
int ac_gguf_open(const char *path, ac_gguf_t **out);
void ac_gguf_close(ac_gguf_t **self_p);

uint32_t ac_gguf_version(const ac_gguf_t *g);
size_t ac_gguf_alignment(const ac_gguf_t *g);
size_t ac_gguf_file_size(const ac_gguf_t *g);
size_t ac_gguf_data_offset(const ac_gguf_t *g);
// Brings the whole file into memory now (read-ahead, then one read per page), so that the first
// evaluation does not pay for page faults: a serving worker's "loaded" means resident.
// Returns the bytes made resident.
size_t ac_gguf_make_resident(const ac_gguf_t *g);

int64_t ac_gguf_n_kv(const ac_gguf_t *g);
const ac_gguf_kv_t *ac_gguf_kv(const ac_gguf_t *g, int64_t i);
const ac_gguf_kv_t *ac_gguf_find_kv(const ac_gguf_t *g, const char *key);  // NULL if absent

// Typed getters: AC_ENOTFOUND if the key is absent, AC_EFORMAT if its type does not fit
// (any integer type whose value fits is accepted for the integer getters; f32/f64 for floats).
int ac_gguf_get_u32(const ac_gguf_t *g, const char *key, uint32_t *out);
int ac_gguf_get_f32(const ac_gguf_t *g, const char *key, float *out);
int ac_gguf_get_bool(const ac_gguf_t *g, const char *key, bool *out);
int ac_gguf_get_str(const ac_gguf_t *g, const char *key, ac_str_t *out);
// Element i of an array kv as u32 / f32 / string, with the same conversions.
int ac_gguf_arr_u32(const ac_gguf_kv_t *kv, uint64_t i, uint32_t *out);
int ac_gguf_arr_f32(const ac_gguf_kv_t *kv, uint64_t i, float *out);
int ac_gguf_arr_str(const ac_gguf_kv_t *kv, uint64_t i, ac_str_t *out);

int64_t ac_gguf_n_tensors(const ac_gguf_t *g);
const ac_gguf_tensor_t *ac_gguf_tensor(const ac_gguf_t *g, int64_t i);
const ac_gguf_tensor_t *ac_gguf_find_tensor(const ac_gguf_t *g, const char *name);  // or NULL

size_t ac_gguf_vtype_size(ac_gguf_vtype_t t);  // bytes of a scalar type; 0 for string/array
const char *ac_gguf_vtype_name(ac_gguf_vtype_t t);

// --- writer ----------------------------------------------------------------
// Collects kv pairs and tensors, then writes the file in one go. Keys are unique: setting a key
// again replaces its value. Tensor data are referenced, not copied, until ac_gguf_write().
typedef struct ac_gguf_writer ac_gguf_writer_t;

ac_gguf_writer_t *ac_gguf_writer_new(void);
void ac_gguf_writer_destroy(ac_gguf_writer_t **self_p);

int ac_gguf_set_scalar(ac_gguf_writer_t *w, const char *key, ac_gguf_vtype_t type, const void *val);
int ac_gguf_set_u32(ac_gguf_writer_t *w, const char *key, uint32_t v);
int ac_gguf_set_i32(ac_gguf_writer_t *w, const char *key, int32_t v);
int ac_gguf_set_f32(ac_gguf_writer_t *w, const char *key, float v);
int ac_gguf_set_bool(ac_gguf_writer_t *w, const char *key, bool v);
int ac_gguf_set_str(ac_gguf_writer_t *w, const char *key, const char *s);
int ac_gguf_set_strn(ac_gguf_writer_t *w, const char *key, const char *s, uint64_t len);
// An array of scalars of `type` (n elements, packed, little-endian host layout).
int ac_gguf_set_arr(ac_gguf_writer_t *w, const char *key, ac_gguf_vtype_t type, const void *data,
                    uint64_t n);
int ac_gguf_set_arr_str(ac_gguf_writer_t *w, const char *key, const ac_str_t *strs, uint64_t n);
// Copies one kv pair (any type) from a reader.
int ac_gguf_set_kv(ac_gguf_writer_t *w, const ac_gguf_kv_t *kv);
int ac_gguf_remove_kv(ac_gguf_writer_t *w, const char *key);

int ac_gguf_add_tensor(ac_gguf_writer_t *w, const char *name, uint32_t type, uint32_t n_dims,
                       const int64_t *ne, const void *data, size_t nbytes);

// Writes to `path` through a temporary file renamed into place, so a failed write leaves no
// partial file behind.
int ac_gguf_write(ac_gguf_writer_t *w, const char *path);

#endif
