// test_gguf.c - GGUF writer/reader round trip and malformed-file handling.
// With `--write PATH` it only writes the all-value-types file (read by tests/py/test_gguf_io.py).
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "error.h"
#include "gguf.h"
#include "quant.h"

static float tensor_data[64];

static int write_all_types(const char *path) {
  ac_gguf_writer_t *w = ac_gguf_writer_new();
  uint8_t u8 = 200;
  int8_t i8 = -100;
  uint16_t u16 = 60000;
  int16_t i16 = -30000;
  uint64_t u64 = (1ull << 63) + 5;
  int64_t i64 = -(1ll << 62);
  double f64 = 2.25;
  int32_t arr[3] = {1, -2, 3};
  ac_str_t strs[3] = {{"a", 1}, {"", 0}, {"ccc", 3}};
  for (int i = 0; i < 64; i++) tensor_data[i] = (float)i;
  int64_t ne[2] = {32, 2};
  int rc = ac_gguf_set_scalar(w, "t.u8", AC_GGUF_UINT8, &u8) | ac_gguf_set_scalar(w, "t.i8", AC_GGUF_INT8, &i8) |
           ac_gguf_set_scalar(w, "t.u16", AC_GGUF_UINT16, &u16) | ac_gguf_set_scalar(w, "t.i16", AC_GGUF_INT16, &i16) |
           ac_gguf_set_u32(w, "t.u32", 4000000000u) | ac_gguf_set_i32(w, "t.i32", -2000000000) |
           ac_gguf_set_scalar(w, "t.u64", AC_GGUF_UINT64, &u64) | ac_gguf_set_scalar(w, "t.i64", AC_GGUF_INT64, &i64) |
           ac_gguf_set_f32(w, "t.f32", 1.5f) | ac_gguf_set_scalar(w, "t.f64", AC_GGUF_FLOAT64, &f64) |
           ac_gguf_set_bool(w, "t.bool", true) | ac_gguf_set_str(w, "t.str", "héllo wörld") |
           ac_gguf_set_arr(w, "t.arr_i32", AC_GGUF_INT32, arr, 3) | ac_gguf_set_arr_str(w, "t.arr_str", strs, 3) |
           ac_gguf_add_tensor(w, "w", AC_TYPE_F32, 2, ne, tensor_data, sizeof tensor_data);
  if (rc == 0) rc = ac_gguf_write(w, path);
  ac_gguf_writer_destroy(&w);
  return rc;
}

static void test_round_trip(const char *path) {
  CHECK(write_all_types(path) == 0, "write: %s", ac_errmsg());
  ac_gguf_t *g = NULL;
  int rc = ac_gguf_open(path, &g);
  CHECK(rc == 0, "open: %s", ac_errmsg());
  if (rc) return;
  CHECK(ac_gguf_n_kv(g) == 14, "n_kv %lld", (long long)ac_gguf_n_kv(g));
  uint32_t u;
  CHECK(ac_gguf_get_u32(g, "t.u32", &u) == 0 && u == 4000000000u, "u32");
  CHECK(ac_gguf_get_u32(g, "t.u8", &u) == 0 && u == 200, "u8 widened");
  CHECK(ac_gguf_get_u32(g, "t.i32", &u) == AC_EFORMAT, "negative i32 is not a u32");
  CHECK(ac_gguf_get_u32(g, "t.missing", &u) == AC_ENOTFOUND, "missing key");
  CHECK(strstr(ac_errmsg(), "t.missing") != NULL, "message names the key: %s", ac_errmsg());
  CHECK(ac_gguf_find_kv(g, "t.i64")->v.i64 == -(1ll << 62), "i64");
  CHECK(ac_gguf_find_kv(g, "t.u64")->v.u64 == (1ull << 63) + 5, "u64");
  CHECK(ac_gguf_find_kv(g, "t.i16")->v.i64 == -30000, "i16");
  float f;
  CHECK(ac_gguf_get_f32(g, "t.f32", &f) == 0 && f == 1.5f, "f32");
  CHECK(ac_gguf_get_f32(g, "t.f64", &f) == 0 && f == 2.25f, "f64 as f32");
  bool b;
  CHECK(ac_gguf_get_bool(g, "t.bool", &b) == 0 && b, "bool");
  ac_str_t s;
  CHECK(ac_gguf_get_str(g, "t.str", &s) == 0 && s.len == strlen("héllo wörld") && memcmp(s.ptr, "héllo wörld", s.len) == 0, "str");
  const ac_gguf_kv_t *a = ac_gguf_find_kv(g, "t.arr_str");
  CHECK(a && a->arr_n == 3 && ac_gguf_arr_str(a, 2, &s) == 0 && s.len == 3 && memcmp(s.ptr, "ccc", 3) == 0, "arr str");
  CHECK(ac_gguf_arr_str(a, 3, &s) == AC_ERANGE, "index past the end");
  a = ac_gguf_find_kv(g, "t.arr_i32");
  int32_t v;
  CHECK(a && ac_gguf_arr_u32(a, 1, &u) == AC_EFORMAT && ac_gguf_arr_u32(a, 2, &u) == 0 && u == 3, "arr i32");
  (void)v;
  const ac_gguf_tensor_t *t = ac_gguf_find_tensor(g, "w");
  CHECK(t && t->ne[0] == 32 && t->ne[1] == 2 && t->nbytes == 256 && memcmp(t->data, tensor_data, 256) == 0, "tensor");
  CHECK(t && ((uintptr_t)t->data - (uintptr_t)ac_gguf_tensor(g, 0)->data) % 32 == 0, "aligned");
  ac_gguf_close(&g);
  CHECK(g == NULL, "close clears the pointer");
}

// --- malformed files -----------------------------------------------------------------------------

typedef struct {
  uint8_t b[4096];
  size_t n;
} buf_t;

static void put(buf_t *b, const void *p, size_t n) {
  memcpy(b->b + b->n, p, n);
  b->n += n;
}
static void put_u32(buf_t *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf_t *b, uint64_t v) { put(b, &v, 8); }
static void put_str(buf_t *b, const char *s) {
  put_u64(b, strlen(s));
  put(b, s, strlen(s));
}

// A file with one u32 kv and one f32 tensor [32, n_rows]; fields can be spoiled.
typedef struct {
  uint32_t magic, version, ttype, n_dims;
  uint64_t n_tensors, n_kv, dim0, dim1, offset, key_len;
  size_t truncate_to;
} spec_t;

static spec_t good(void) {
  return (spec_t){AC_GGUF_MAGIC, 3, AC_TYPE_F32, 2, 1, 1, 32, 2, 0, 5, 0};
}

static int open_spec(const char *path, spec_t sp) {
  buf_t b = {{0}, 0};
  put_u32(&b, sp.magic);
  put_u32(&b, sp.version);
  put_u64(&b, sp.n_tensors);
  put_u64(&b, sp.n_kv);
  put_u64(&b, sp.key_len);
  put(&b, "a.key", 5);
  put_u32(&b, AC_GGUF_UINT32);
  put_u32(&b, 7);
  put_str(&b, "w");
  put_u32(&b, sp.n_dims);
  put_u64(&b, sp.dim0);
  put_u64(&b, sp.dim1);
  put_u32(&b, sp.ttype);
  put_u64(&b, sp.offset);
  while (b.n % 32) b.b[b.n++] = 0;
  for (int i = 0; i < 64; i++) put(&b, &(float){1.0f}, 4);
  size_t n = sp.truncate_to ? sp.truncate_to : b.n;
  FILE *f = fopen(path, "wb");
  fwrite(b.b, 1, n, f);
  fclose(f);
  ac_gguf_t *g = NULL;
  int rc = ac_gguf_open(path, &g);
  ac_gguf_close(&g);
  return rc;
}

static void test_malformed(const char *path) {
  spec_t sp = good();
  CHECK(open_spec(path, sp) == 0, "the good file opens: %s", ac_errmsg());
  sp = good(), sp.magic = 0x12345678;
  CHECK(open_spec(path, sp) == AC_EFORMAT && strstr(ac_errmsg(), "magic"), "magic: %s", ac_errmsg());
  sp = good(), sp.version = 1;
  CHECK(open_spec(path, sp) == AC_EUNSUPPORTED, "version: %s", ac_errmsg());
  sp = good(), sp.n_tensors = 1ull << 62;
  CHECK(open_spec(path, sp) == AC_EFORMAT && strstr(ac_errmsg(), "absurd"), "tensor count: %s", ac_errmsg());
  sp = good(), sp.n_kv = UINT64_MAX;
  CHECK(open_spec(path, sp) == AC_EFORMAT, "kv count: %s", ac_errmsg());
  sp = good(), sp.key_len = 1ull << 40;
  CHECK(open_spec(path, sp) == AC_EFORMAT, "key length: %s", ac_errmsg());
  sp = good(), sp.ttype = 1001;  // 1000 is our q2x; 1001 is nobody's
  CHECK(open_spec(path, sp) == AC_EUNSUPPORTED && strstr(ac_errmsg(), "'w'"), "type: %s", ac_errmsg());
  sp = good(), sp.n_dims = 0;
  CHECK(open_spec(path, sp) == AC_EFORMAT, "0 dims: %s", ac_errmsg());
  sp = good(), sp.dim1 = 1ull << 39;
  CHECK(open_spec(path, sp) == AC_EFORMAT, "huge dim: %s", ac_errmsg());
  sp = good(), sp.dim1 = 0;
  CHECK(open_spec(path, sp) == AC_EFORMAT, "zero dim: %s", ac_errmsg());
  sp = good(), sp.dim0 = 31, sp.ttype = AC_TYPE_Q8_0;
  CHECK(open_spec(path, sp) == AC_EFORMAT && strstr(ac_errmsg(), "block size"), "row vs block: %s", ac_errmsg());
  sp = good(), sp.offset = 32;
  CHECK(open_spec(path, sp) == AC_EFORMAT && strstr(ac_errmsg(), "past the end"), "offset: %s", ac_errmsg());
  sp = good(), sp.offset = 4;
  CHECK(open_spec(path, sp) == AC_EFORMAT && strstr(ac_errmsg(), "aligned"), "alignment: %s", ac_errmsg());
  sp = good(), sp.dim1 = 3;
  CHECK(open_spec(path, sp) == AC_EFORMAT, "data larger than the file: %s", ac_errmsg());
  for (size_t cut = 1; cut < 96; cut += 7) {
    sp = good(), sp.truncate_to = cut;
    int rc = open_spec(path, sp);
    CHECK(rc == AC_EFORMAT, "truncated at %zu: %d %s", cut, rc, ac_errmsg());
  }
  CHECK(ac_gguf_open("/nonexistent/x.gguf", &(ac_gguf_t *){NULL}) == AC_EIO, "missing file");
}

int main(int argc, char **argv) {
  ac_quant_init();
  if (argc == 3 && strcmp(argv[1], "--write") == 0) {
    int rc = write_all_types(argv[2]);
    if (rc) fprintf(stderr, "test_gguf: %s\n", ac_errmsg());
    return rc ? 1 : 0;
  }
  char path[] = "/tmp/ac_test_gguf_XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return 1;
  close(fd);
  test_round_trip(path);
  test_malformed(path);
  unlink(path);
  return check_report();
}
