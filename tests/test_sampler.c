// test_sampler.c - sampling filters and the stopper, on hand-made logits.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "error.h"
#include "sampler.h"

#define V 8

// Frequencies of each token over n draws.
static void draw(ac_sampler_params_t p, const float *logits, int n, double *freq) {
  ac_sampler_t *s = NULL;
  CHECK(ac_sampler_new(p, V, &s) == 0, "new: %s", ac_errmsg());
  memset(freq, 0, V * sizeof *freq);
  for (int i = 0; i < n; i++) freq[ac_sampler_sample(s, logits)] += 1.0 / n;
  ac_sampler_destroy(&s);
}

int main(void) {
  const float logits[V] = {1.0f, 3.0f, 2.0f, 0.5f, 2.9f, -1.0f, 0.0f, 1.5f};
  double f[V];
  ac_sampler_params_t p = ac_sampler_default_params();

  draw(p, logits, 100, f);
  CHECK(fabs(f[1] - 1.0) < 1e-9, "greedy picks the argmax");

  // Temperature 1: frequencies follow the softmax (20000 draws: 3 sigma < 0.011).
  p.temp = 1.0f;
  p.seed = 7;
  draw(p, logits, 20000, f);
  double z = 0, prob[V];
  for (int i = 0; i < V; i++) z += exp(logits[i]);
  for (int i = 0; i < V; i++) prob[i] = exp(logits[i]) / z;
  for (int i = 0; i < V; i++) CHECK(fabs(f[i] - prob[i]) < 0.012, "softmax token %d: %.4f vs %.4f", i, f[i], prob[i]);

  // top-k 2: only tokens 1 and 4, in proportion e^3 : e^2.9.
  p.top_k = 2;
  draw(p, logits, 20000, f);
  double r = exp(3.0) / (exp(3.0) + exp(2.9));
  CHECK(fabs(f[1] - r) < 0.015 && fabs(f[1] + f[4] - 1.0) < 1e-9, "top-k: %.4f vs %.4f", f[1], r);

  // top-p 0.5: tokens 1 (0.33) and 4 (0.30) reach 0.5; nothing else.
  p.top_k = 0;
  p.top_p = 0.5f;
  draw(p, logits, 5000, f);
  CHECK(fabs(f[1] + f[4] - 1.0) < 1e-9 && f[1] > 0.4, "top-p keeps the smallest set reaching p");

  // min-p 0.5 keeps tokens with at least half the best probability: 1 and 4 (token 2 has
  // e^(2-3) = 0.37 of the best); min-p 0.3 keeps token 2 as well.
  p.top_p = 1.0f;
  p.min_p = 0.5f;
  draw(p, logits, 5000, f);
  CHECK(fabs(f[1] + f[4] - 1.0) < 1e-9, "min-p");
  p.min_p = 0.3f;
  draw(p, logits, 5000, f);
  CHECK(fabs(f[1] + f[4] + f[2] - 1.0) < 1e-9 && f[2] > 0.1, "min-p 0.3 keeps token 2 too");

  // Same seed, same draws; another seed, other draws.
  p = ac_sampler_default_params();
  p.temp = 1.5f;
  ac_sampler_t *a = NULL, *b = NULL, *c = NULL;
  ac_sampler_new(p, V, &a), ac_sampler_new(p, V, &b);
  p.seed = 99;
  ac_sampler_new(p, V, &c);
  int same_ab = 1, same_ac = 1;
  for (int i = 0; i < 200; i++) {
    int x = ac_sampler_sample(a, logits), y = ac_sampler_sample(b, logits), w = ac_sampler_sample(c, logits);
    same_ab &= x == y;
    same_ac &= x == w;
  }
  CHECK(same_ab && !same_ac, "seeded determinism");
  ac_sampler_destroy(&a), ac_sampler_destroy(&b), ac_sampler_destroy(&c);

  // Bad parameters are refused.
  p = ac_sampler_default_params();
  p.top_p = 0;
  CHECK(ac_sampler_new(p, V, &a) == AC_ERANGE && a == NULL, "top_p 0 refused");
  p = ac_sampler_default_params();
  p.temp = NAN;
  CHECK(ac_sampler_new(p, V, &a) == AC_ERANGE, "NaN temperature refused");
  CHECK(ac_sampler_new(ac_sampler_default_params(), 0, &a) == AC_EINVAL, "empty vocabulary refused");
  return check_report();
}
