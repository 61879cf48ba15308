// sampler.c - token sampling and stop conditions.
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

// --- random numbers: xoshiro-style 64-bit generator seeded by splitmix64 --------------------

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

typedef struct {
  uint64_t s[4];
} rng_t;

static uint64_t rng_next(rng_t *r) {
  uint64_t *s = r->s, result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0], s[3] ^= s[1], s[1] ^= s[2], s[0] ^= s[3], s[2] ^= t, s[3] = rotl(s[3], 45);
  return result;
}

// Uniform in [0, 1).
static double rng_uniform(rng_t *r) { return (rng_next(r) >> 11) * 0x1.0p-53; }

// --- sampler -------------------------------------------------------------------------------------

typedef struct {
  float p;
  int32_t id;
} cand_t;

struct ac_sampler {
  ac_sampler_params_t p;
  int32_t n_vocab;
  rng_t rng;
  cand_t *cand;  // (n_vocab) scratch
};

ac_sampler_params_t ac_sampler_default_params(void) {
  return (ac_sampler_params_t){.temp = 0.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f, .seed = 0};
}

int ac_sampler_new(ac_sampler_params_t p, int32_t n_vocab, ac_sampler_t **out) {
  *out = NULL;
  if (n_vocab <= 0) return ac_error(AC_EINVAL, "vocabulary size %d", n_vocab);
  if (!(p.temp == p.temp) || p.top_p <= 0 || p.min_p >= 1 || isnan(p.top_p) || isnan(p.min_p))
    return ac_error(AC_ERANGE, "sampling parameters out of range (temp %g, top_p %g, min_p %g)", p.temp, p.top_p, p.min_p);
  ac_sampler_t *s = calloc(1, sizeof *s);
  if (!s) return ac_error(AC_ENOMEM, "out of memory");
  s->p = p;
  s->n_vocab = n_vocab;
  uint64_t x = p.seed;
  for (int i = 0; i < 4; i++) s->rng.s[i] = splitmix64(&x);
  s->cand = malloc(n_vocab * sizeof *s->cand);
  if (!s->cand) {
    free(s);
    return ac_error(AC_ENOMEM, "out of memory");
  }
  *out = s;
  return 0;
}

void ac_sampler_destroy(ac_sampler_t **self_p) {
  if (!*self_p) return;
  free((*self_p)->cand);
  free(*self_p);
  *self_p = NULL;
}

static int cand_desc(const void *a, const void *b) {
  float x = ((const cand_t *)a)->p, y = ((const cand_t *)b)->p;
  if (x != y) return x < y ? 1 : -1;
  return ((const cand_t *)a)->id - ((const cand_t *)b)->id;
}

static int32_t argmax(const float *x, int32_t n) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return best;
}

int32_t ac_sampler_sample(ac_sampler_t *s, const float *logits) {
  const ac_sampler_params_t *p = &s->p;
  if (p->temp <= 0) return argmax(logits, s->n_vocab);

  // Softmax at the temperature over all tokens, then filters on the sorted candidates.
  int32_t n = s->n_vocab;
  float mx = logits[argmax(logits, n)];
  double sum = 0;
  for (int32_t i = 0; i < n; i++) {
    s->cand[i].id = i;
    s->cand[i].p = expf((logits[i] - mx) / p->temp);
    sum += s->cand[i].p;
  }
  for (int32_t i = 0; i < n; i++) s->cand[i].p = (float)(s->cand[i].p / sum);
  qsort(s->cand, n, sizeof *s->cand, cand_desc);
  if (p->top_k > 0 && p->top_k < n) n = p->top_k;
  if (p->min_p > 0) {
    float floor_p = s->cand[0].p * p->min_p;
    int32_t k = 1;
    while (k < n && s->cand[k].p >= floor_p) k++;
    n = k;
  }
  if (p->top_p < 1) {
    double cum = 0;
    int32_t k = 0;
    while (k < n) {
      cum += s->cand[k++].p;
      if (cum >= p->top_p) break;
    }
    n = k;
  }
  double total = 0;
  for (int32_t i = 0; i < n; i++) total += s->cand[i].p;
  double u = rng_uniform(&s->rng) * total, acc = 0;
  for (int32_t i = 0; i < n; i++) {
    acc += s->cand[i].p;
    if (u < acc) return s->cand[i].id;
  }
  return s->cand[n - 1].id;
}

// --- stopping ----------------------------------------------------------------------------------

struct ac_stopper {
  const ac_tokenizer_t *tok;
  int32_t max_tokens, n_tokens;
  char **stop;
  size_t *stop_len;
  int n_stop;
  size_t max_stop;
  bool strip_space, ignore_eos;
  char *buf;       // text generated but not yet emitted
  size_t len, cap;
  char *out;       // what the last call emits
  size_t out_len;
};

const char *ac_finish_name(ac_finish_t f) {
  switch (f) {
    case AC_FINISH_EOS: return "eos";
    case AC_FINISH_STOP: return "stop";
    case AC_FINISH_LENGTH: return "length";
    default: return "none";
  }
}

int ac_stopper_new(const ac_tokenizer_t *tok, int32_t max_tokens, const char *const *stop, int n_stop,
                   ac_stopper_t **out) {
  *out = NULL;
  ac_stopper_t *s = calloc(1, sizeof *s);
  if (!s) return ac_error(AC_ENOMEM, "out of memory");
  s->tok = tok;
  s->max_tokens = max_tokens;
  s->cap = 256;
  s->buf = malloc(s->cap);
  s->out = malloc(s->cap);
  s->stop = calloc(n_stop > 0 ? n_stop : 1, sizeof *s->stop);
  s->stop_len = calloc(n_stop > 0 ? n_stop : 1, sizeof *s->stop_len);
  if (!s->buf || !s->out || !s->stop || !s->stop_len) goto oom;
  for (int i = 0; i < n_stop; i++) {
    if (!stop[i] || !*stop[i]) continue;  // an empty stop string would stop at once: ignore it
    if (!(s->stop[s->n_stop] = strdup(stop[i]))) goto oom;
    s->stop_len[s->n_stop] = strlen(stop[i]);
    if (s->stop_len[s->n_stop] > s->max_stop) s->max_stop = s->stop_len[s->n_stop];
    s->n_stop++;
  }
  *out = s;
  return 0;
oom:
  ac_stopper_destroy(&s);
  return ac_error(AC_ENOMEM, "out of memory");
}

void ac_stopper_destroy(ac_stopper_t **self_p) {
  ac_stopper_t *s = *self_p;
  if (!s) return;
  for (int i = 0; i < s->n_stop; i++) free(s->stop[i]);
  free(s->stop);
  free(s->stop_len);
  free(s->buf);
  free(s->out);
  free(s);
  *self_p = NULL;
}

int32_t ac_stopper_n_tokens(const ac_stopper_t *s) { return s->n_tokens; }
void ac_stopper_strip_leading_space(ac_stopper_t *s) { s->strip_space = true; }
void ac_stopper_ignore_eos(ac_stopper_t *s) { s->ignore_eos = true; }

static int grow(ac_stopper_t *s, size_t need) {
  if (need <= s->cap) return 0;
  size_t cap = s->cap;
  while (cap < need) cap *= 2;
  char *b = realloc(s->buf, cap);
  if (!b) return -1;
  s->buf = b;
  char *o = realloc(s->out, cap);
  if (!o) return -1;
  s->out = o;
  s->cap = cap;
  return 0;
}

// Moves the first n bytes of buf to out.
static void emit(ac_stopper_t *s, size_t n) {
  memcpy(s->out, s->buf, n);
  s->out_len = n;
  memmove(s->buf, s->buf + n, s->len - n);
  s->len -= n;
}

ac_finish_t ac_stopper_push(ac_stopper_t *s, int32_t token, const char **text, size_t *len) {
  s->out_len = 0;
  *text = s->out;
  *len = 0;
  s->n_tokens++;
  if (!s->ignore_eos && ac_tokenizer_is_eog(s->tok, token)) {
    ac_stopper_flush(s, text, len);
    return AC_FINISH_EOS;
  }
  char piece[256];
  int n = ac_token_to_piece(s->tok, token, false, piece, sizeof piece);
  if (n < 0) n = 0;
  const char *pp = piece;
  if (s->strip_space) {
    if (n > 0 && piece[0] == ' ') pp++, n--;
    s->strip_space = false;
  }
  if (grow(s, s->len + n + 1) == 0) {
    memcpy(s->buf + s->len, pp, n);
    s->len += n;
  }
  // A stop string anywhere in the pending text ends generation; text before it is emitted.
  for (int i = 0; i < s->n_stop; i++) {
    char *hit = memmem(s->buf, s->len, s->stop[i], s->stop_len[i]);
    if (hit) {
      emit(s, hit - s->buf);
      s->len = 0;
      *len = s->out_len;
      return AC_FINISH_STOP;
    }
  }
  // Hold back the longest suffix that is a prefix of some stop string.
  size_t hold = 0;
  for (int i = 0; i < s->n_stop; i++)
    for (size_t k = s->stop_len[i] - 1; k > hold; k--)
      if (k <= s->len && memcmp(s->buf + s->len - k, s->stop[i], k) == 0) {
        hold = k;
        break;
      }
  emit(s, s->len - hold);
  *len = s->out_len;
  if (s->max_tokens > 0 && s->n_tokens >= s->max_tokens) {
    // The held-back part is text too, now that no more tokens come.
    memcpy(s->out + s->out_len, s->buf, s->len);
    s->out_len += s->len;
    s->len = 0;
    *len = s->out_len;
    return AC_FINISH_LENGTH;
  }
  return AC_FINISH_NONE;
}

void ac_stopper_flush(ac_stopper_t *s, const char **text, size_t *len) {
  emit(s, s->len);
  *text = s->out;
  *len = s->out_len;
}
