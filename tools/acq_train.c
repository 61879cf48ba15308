// acq_train.c - `acq train-controller LABELS -o CTRL --zoo DIR --workload WORKLOAD`: trains the
// complexity controller (controller/controller.h) on labels written by `acq label`.
//
// Inputs:
//   LABELS    agentcompress-labels v1 (tools/acq_label.c): a header, then one line per task ×
//             variant with "id", "domain", "variant", "success".
//   WORKLOAD  the workload the labels were made from (bench/workloads/README.md): the task texts.
//             Tasks are joined to labels by id.
//   --zoo     the zoo the labels were made on: the variants' axes and relative costs, and the
//             reference model whose frozen token embeddings and tokenizer the controller reads
//             (controller/ctrl_zoo.h).
// What it trains on: the tasks of the workload (of --train-domains, when given) that have a label
// for every variant in the controller; the controller's variants are the zoo's variants that
// appear in the labels (the reference must). Each task's text (the prompt, or the message
// contents joined by "\n", no chat template) is tokenized with the reference's tokenizer; the
// first k ids are the input.
// How: AdamW; each step draws, per domain, a support and a query batch (--batch tasks each) from
// that domain's tasks in a seeded shuffled order, and takes one first-order MAML step across the
// domains (--no-maml: one plain multi-task step on the same batches). Deterministic for a seed.
// Progress on stderr; the controller file (ac_ctrl_save) records the training run.
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "acq.h"
#include "controller.h"
#include "ctrl_zoo.h"
#include "csv.h"
#include "error.h"
#include "labels.h"
#include "workload.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: acq train-controller LABELS -o CTRL --zoo DIR --workload WORKLOAD [options]\n"
          "  --size tiny|paper      network size (tiny: 2 layers x 64; paper: 6 x 512 x 8 heads)\n"
          "  --k N                  tokens read per task (default 32)\n"
          "  --steps N              outer training steps (default 400)\n"
          "  --batch N              tasks per support / query batch per domain (default 16)\n"
          "  --lr X                 AdamW learning rate (default 2e-3)\n"
          "  --seed S               initialisation, batch order and Gumbel noise (default 1)\n"
          "  --no-maml              plain multi-task training instead of first-order MAML\n"
          "  --inner-lr X           MAML inner SGD step (default 0.05)\n"
          "  --lambda-cost X        weight of the expected cost (default 0.3)\n"
          "  --lambda-quality X     weight of the quality shortfall below theta (default 0.7)\n"
          "  --theta X              success threshold, stored in the file (default 0.95)\n"
          "  --conf-min X           confidence fallback threshold stored in the file (default 0.7)\n"
          "  --train-domains a,b    train on these domains only (default: every domain)\n"
          "  --quiet                no progress lines\n");
}

// --- labels ------------------------------------------------------------------------------------

typedef struct {
  const char *id;
  int task;  // index in the workload
} id_ref_t;

static int by_id(const void *a, const void *b) { return strcmp(((const id_ref_t *)a)->id, ((const id_ref_t *)b)->id); }

// Reads LABELS into lab[task * AC_CTRL_MAX_VARIANTS + variant]: -1 unknown, 0 fail, 1 success
// (variant indices of the zoo z). Checks the header against the zoo.
static int read_labels(const char *path, const ac_ctrl_zoo_t *z, const ac_workload_t *w, int8_t *lab) {
  ac_labels_t lf;
  int rc = ac_labels_open(&lf, path, "acq train-controller");
  const char *ref = rc ? NULL : json_string_value(json_object_get(lf.header, "reference"));
  if (!rc && strcmp(ref, z->variant[z->reference].name) != 0)
    rc = ac_error(AC_EINVAL, "%s: labels judged against '%s', but the zoo's reference is '%s'", path, ref,
                  z->variant[z->reference].name);
  id_ref_t *ix = rc ? NULL : malloc((w->n ? w->n : 1) * sizeof *ix);
  if (!rc && !ix) rc = ac_error(AC_ENOMEM, "out of memory");
  if (rc) {
    ac_labels_close(&lf);
    return rc;
  }
  for (size_t i = 0; i < w->n; i++) ix[i] = (id_ref_t){w->tasks[i].id, (int)i};
  qsort(ix, w->n, sizeof *ix, by_id);
  long unknown_task = 0, unknown_var = 0, lines = 0;
  char warned_var[256] = "";
  json_t *o;
  while ((rc = ac_labels_next(&lf, &o)) == 0) {
    lines++;
    const char *id = json_string_value(json_object_get(o, "id"));
    const char *var = json_string_value(json_object_get(o, "variant"));
    json_t *succ = json_object_get(o, "success");
    if (!id || !var || !json_is_boolean(succ)) {
      json_decref(o);
      rc = ac_error(AC_EFORMAT, "%s:%d: a label needs \"id\", \"variant\" (strings) and \"success\" (bool)", path,
                    lf.lineno);
      break;
    }
    id_ref_t key = {id, 0}, *hit = bsearch(&key, ix, w->n, sizeof *ix, by_id);
    int v = ac_ctrl_zoo_find(z, var);
    if (!hit) unknown_task++;
    if (v < 0) {
      unknown_var++;
      if (!strstr(warned_var, var) && strlen(warned_var) + strlen(var) + 3 < sizeof warned_var) {
        strcat(warned_var, warned_var[0] ? ", " : "");
        strcat(warned_var, var);
      }
    }
    if (hit && v >= 0) lab[(size_t)hit->task * AC_CTRL_MAX_VARIANTS + v] = json_is_true(succ) ? 1 : 0;
    json_decref(o);
  }
  if (rc == 1) rc = 0;
  if (!rc && unknown_task)
    fprintf(stderr, "acq train-controller: %ld of %ld labels name tasks that are not in the workload (ignored)\n",
            unknown_task, lines);
  if (!rc && unknown_var)
    fprintf(stderr, "acq train-controller: %ld labels name variants the zoo does not have (%s; ignored)\n", unknown_var,
            warned_var);
  free(ix);
  ac_labels_close(&lf);
  return rc;
}

// --- training data -------------------------------------------------------------------------------

typedef struct {
  int n, k, V;
  int32_t *ids;     // n × k
  int *lens;        // n
  uint8_t *lab;     // n × V
  int *domain;      // n
  int n_domain;
  char **domain_name;
  int **members;    // per domain, its task indices
  int *n_members;
} data_t;

static void data_free(data_t *d) {
  free(d->ids);
  free(d->lens);
  free(d->lab);
  free(d->domain);
  for (int i = 0; i < d->n_domain; i++) {
    free(d->domain_name[i]);
    free(d->members[i]);
  }
  free(d->domain_name);
  free(d->members);
  free(d->n_members);
}

static void shuffle(int *a, int n, ac_ctrl_rng_t *r) {
  for (int i = n - 1; i > 0; i--) {
    int j = (int)(ac_ctrl_rng_u32(r) % (uint32_t)(i + 1));
    int t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
}

// Per domain: its members in a shuffled order, reshuffled at the end of each pass.
typedef struct {
  int *order, pos, n;
} cursor_t;

static int next_task(cursor_t *c, ac_ctrl_rng_t *r) {
  if (c->pos == c->n) {
    shuffle(c->order, c->n, r);
    c->pos = 0;
  }
  return c->order[c->pos++];
}

static void fill(const data_t *d, int slot, int task, int32_t *ids, int *lens, uint8_t *lab) {
  memcpy(ids + (size_t)slot * d->k, d->ids + (size_t)task * d->k, (size_t)d->k * sizeof *ids);
  lens[slot] = d->lens[task];
  memcpy(lab + (size_t)slot * d->V, d->lab + (size_t)task * d->V, (size_t)d->V);
}

// Mean losses over every task (batches of up to 64).
static int eval_all(ac_ctrl_t *c, const data_t *d, const ac_ctrl_loss_params_t *lp, ac_ctrl_losses_t *out) {
  memset(out, 0, sizeof *out);
  for (int s = 0; s < d->n; s += 64) {
    int B = d->n - s < 64 ? d->n - s : 64;
    ac_ctrl_batch_t b = {.B = B, .ids = d->ids + (size_t)s * d->k, .lens = d->lens + s, .success = d->lab + (size_t)s * d->V};
    ac_ctrl_losses_t l;
    int rc = ac_ctrl_eval_loss(c, &b, lp, &l);
    if (rc) return rc;
    float w = (float)B / d->n;
    out->total += w * l.total;
    out->success += w * l.success;
    out->complexity += w * l.complexity;
    out->policy += w * l.policy;
    out->cost += w * l.cost;
  }
  return 0;
}

static bool parse_num(const char *s, double lo, double hi, double *out) {
  char *end;
  double v = strtod(s, &end);
  if (*end || !(v >= lo && v <= hi)) return false;
  *out = v;
  return true;
}

int acq_train_controller_main(int argc, char **argv) {
  static const struct option opts[] = {
      {"out", required_argument, 0, 'o'},          {"zoo", required_argument, 0, 'z'},
      {"workload", required_argument, 0, 'w'},     {"size", required_argument, 0, 'S'},
      {"steps", required_argument, 0, 'n'},        {"seed", required_argument, 0, 's'},
      {"no-maml", no_argument, 0, 'M'},            {"lambda-cost", required_argument, 0, 'c'},
      {"lambda-quality", required_argument, 0, 'q'}, {"theta", required_argument, 0, 'T'},
      {"train-domains", required_argument, 0, 'D'}, {"k", required_argument, 0, 'k'},
      {"batch", required_argument, 0, 'B'},        {"lr", required_argument, 0, 'L'},
      {"inner-lr", required_argument, 0, 'I'},     {"conf-min", required_argument, 0, 'C'},
      {"quiet", no_argument, 0, 'Q'},              {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  const char *out = NULL, *zoo_dir = NULL, *wl_path = NULL, *size = "tiny", *domains = NULL;
  double steps = 400, seed = 1, lcost = 0.3, lqual = 0.7, theta = 0.95, k = 32, batch = 16, lr = 2e-3, inner_lr = 0.05,
         conf_min = 0.7;
  int maml = 1, quiet = 0, c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    bool ok = true;
    switch (c) {
      case 'o': out = optarg; break;
      case 'z': zoo_dir = optarg; break;
      case 'w': wl_path = optarg; break;
      case 'S': size = optarg; ok = !strcmp(size, "tiny") || !strcmp(size, "paper"); break;
      case 'n': ok = parse_num(optarg, 0, 1e8, &steps) && steps == floor(steps); break;
      case 's': ok = parse_num(optarg, 0, 1.8e19, &seed) && seed == floor(seed); break;
      case 'M': maml = 0; break;
      case 'c': ok = parse_num(optarg, 0, 1e6, &lcost); break;
      case 'q': ok = parse_num(optarg, 0, 1e6, &lqual); break;
      case 'T': ok = parse_num(optarg, 0, 1, &theta); break;
      case 'C': ok = parse_num(optarg, 0, 1, &conf_min); break;
      case 'D': domains = optarg; ok = *optarg != 0; break;
      case 'k': ok = parse_num(optarg, 1, 4096, &k) && k == floor(k); break;
      case 'B': ok = parse_num(optarg, 1, 65536, &batch) && batch == floor(batch); break;
      case 'L': ok = parse_num(optarg, 1e-9, 10, &lr); break;
      case 'I': ok = parse_num(optarg, 1e-9, 10, &inner_lr); break;
      case 'Q': quiet = 1; break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
    if (!ok) {
      for (const struct option *o = opts; o->name; o++)
        if (o->val == c) {
          fprintf(stderr, "acq train-controller: bad value '%s' for --%s\n", optarg, o->name);
          break;
        }
      return 2;
    }
  }
  if (optind + 1 != argc || !out || !zoo_dir || !wl_path) {
    usage(stderr);
    return 2;
  }
  const char *labels = argv[optind];
  double t0 = now_s();

  ac_ctrl_zoo_t z;
  ac_workload_t w = {0};
  data_t d = {0};
  ac_ctrl_t *ctl = NULL;
  ac_ctrl_trainer_t *tr = NULL;
  int8_t *lab = NULL;
  int32_t *bids = NULL;
  int *blens = NULL;
  uint8_t *blab = NULL;
  cursor_t *cur = NULL;
  ac_ctrl_batch_t *sup = NULL, *qry = NULL;
  int status = 1, rc;
  if ((rc = ac_ctrl_zoo_load(zoo_dir, &z))) return acq_fail(zoo_dir, rc);
  if ((rc = ac_workload_load(wl_path, &w))) {
    status = acq_fail(wl_path, rc);
    goto done;
  }
  lab = malloc((w.n ? w.n : 1) * AC_CTRL_MAX_VARIANTS);
  if (!lab) {
    status = acq_fail("labels", ac_error(AC_ENOMEM, "out of memory"));
    goto done;
  }
  memset(lab, -1, (w.n ? w.n : 1) * AC_CTRL_MAX_VARIANTS);
  if ((rc = read_labels(labels, &z, &w, lab))) {
    status = acq_fail(labels, rc);
    goto done;
  }

  // The controller's variants: the zoo's that the labels cover.
  int keep[AC_CTRL_MAX_VARIANTS] = {0}, old_v = z.n_variant, map[AC_CTRL_MAX_VARIANTS];
  for (size_t i = 0; i < w.n; i++)
    for (int v = 0; v < old_v; v++) keep[v] |= lab[i * AC_CTRL_MAX_VARIANTS + v] >= 0;
  if (!keep[z.reference]) {
    status = acq_fail(labels, ac_error(AC_EINVAL, "no label for the reference variant '%s' of a task of %s",
                                       z.variant[z.reference].name, wl_path));
    goto done;
  }
  for (int v = 0, j = 0; v < old_v; v++) map[v] = keep[v] ? j++ : -1;
  for (int v = 0; v < old_v; v++)
    if (!keep[v]) fprintf(stderr, "acq train-controller: variant %s has no labels; left out of the controller\n", z.variant[v].name);
  if ((rc = ac_ctrl_zoo_select(&z, keep))) {
    status = acq_fail(labels, rc);
    goto done;
  }

  // The tasks: of the chosen domains, labelled on every variant.
  ac_ctrl_config_t cfg = strcmp(size, "paper") == 0 ? ac_ctrl_config_paper() : ac_ctrl_config_tiny();
  cfg.k = (int)k;
  ac_ctrl_zoo_apply(&z, &cfg);
  cfg.theta = (float)theta;
  cfg.conf_min = (float)conf_min;
  cfg.seed = (uint64_t)seed;
  d.k = cfg.k;
  d.V = z.n_variant;
  d.ids = calloc((w.n ? w.n : 1) * (size_t)d.k, sizeof *d.ids);
  d.lens = calloc(w.n ? w.n : 1, sizeof *d.lens);
  d.lab = calloc((w.n ? w.n : 1) * (size_t)d.V, 1);
  d.domain = calloc(w.n ? w.n : 1, sizeof *d.domain);
  d.domain_name = calloc(w.n ? w.n : 1, sizeof *d.domain_name);
  d.members = calloc(w.n ? w.n : 1, sizeof *d.members);
  d.n_members = calloc(w.n ? w.n : 1, sizeof *d.n_members);
  if (!d.ids || !d.lens || !d.lab || !d.domain || !d.domain_name || !d.members || !d.n_members) {
    status = acq_fail("training data", ac_error(AC_ENOMEM, "out of memory"));
    goto done;
  }
  long incomplete = 0, other_domain = 0;
  for (size_t i = 0; i < w.n; i++) {
    const ac_task_t *t = &w.tasks[i];
    if (!ac_csv_has(domains, t->domain)) {
      other_domain++;
      continue;
    }
    bool complete = true, any = false;
    for (int v = 0; v < old_v; v++) {
      if (map[v] < 0) continue;
      int8_t l = lab[i * AC_CTRL_MAX_VARIANTS + v];
      complete &= l >= 0;
      any |= l >= 0;
    }
    if (!complete) {
      incomplete += any;
      continue;
    }
    for (int v = 0; v < old_v; v++)
      if (map[v] >= 0) d.lab[(size_t)d.n * d.V + map[v]] = (uint8_t)lab[i * AC_CTRL_MAX_VARIANTS + v];
    size_t tl;
    char *text = ac_task_text(t, &tl);
    int32_t *ids = NULL;
    int n_ids = 0;
    if (!text || (rc = ac_ctrl_text_ids(z.tok, text, tl, &ids, &n_ids))) {
      free(text);
      status = acq_fail(t->id, text ? rc : ac_error(AC_ENOMEM, "out of memory"));
      goto done;
    }
    free(text);
    int n = n_ids < d.k ? n_ids : d.k;
    memcpy(d.ids + (size_t)d.n * d.k, ids, (size_t)n * sizeof *ids);
    for (int j = n; j < d.k; j++) d.ids[(size_t)d.n * d.k + j] = cfg.pad_id;
    d.lens[d.n] = n;
    free(ids);
    int dom = -1;
    for (int j = 0; j < d.n_domain; j++)
      if (strcmp(d.domain_name[j], t->domain) == 0) dom = j;
    if (dom < 0) {
      dom = d.n_domain++;
      d.domain_name[dom] = strdup(t->domain);
      d.members[dom] = malloc(w.n * sizeof(int));
      if (!d.domain_name[dom] || !d.members[dom]) {
        status = acq_fail("training data", ac_error(AC_ENOMEM, "out of memory"));
        goto done;
      }
    }
    d.domain[d.n] = dom;
    d.members[dom][d.n_members[dom]++] = d.n;
    d.n++;
  }
  if (incomplete)
    fprintf(stderr, "acq train-controller: %ld tasks lack a label for some variant; left out\n", incomplete);
  if (domains && other_domain)
    fprintf(stderr, "acq train-controller: %ld tasks of other domains than %s left out\n", other_domain, domains);
  if (d.n == 0) {
    status = acq_fail(labels, ac_error(AC_EINVAL, "no task of %s is labelled on every variant%s%s", wl_path,
                                       domains ? " in domains " : "", domains ? domains : ""));
    goto done;
  }

  // Summary of the data.
  {
    long succ[AC_CTRL_MAX_VARIANTS] = {0};
    for (int i = 0; i < d.n; i++)
      for (int v = 0; v < d.V; v++) succ[v] += d.lab[(size_t)i * d.V + v];
    fprintf(stderr, "acq train-controller: %d tasks in %d domain%s (", d.n, d.n_domain, d.n_domain == 1 ? "" : "s");
    for (int j = 0; j < d.n_domain; j++) fprintf(stderr, "%s%s %d", j ? ", " : "", d.domain_name[j], d.n_members[j]);
    fprintf(stderr, "), %d variants:", d.V);
    for (int v = 0; v < d.V; v++)
      fprintf(stderr, " %s (cost %.3f, success %.1f%%)", z.variant[v].name, z.variant[v].cost, 100.0 * succ[v] / d.n);
    fprintf(stderr, "\n");
  }

  if ((rc = ac_ctrl_new(&cfg, &ctl)) || (rc = ac_ctrl_set_embeddings(ctl, z.E, z.n_vocab, z.e, z.digest))) {
    status = acq_fail("controller", rc);
    goto done;
  }
  ac_ctrl_adamw_params_t opt = ac_ctrl_adamw_default_params();
  opt.lr = (float)lr;
  ac_ctrl_meta_params_t meta = ac_ctrl_meta_default_params();
  meta.maml = maml;
  meta.inner_lr = (float)inner_lr;
  ac_ctrl_loss_params_t lp = ac_ctrl_loss_default_params();
  lp.cost.lambda_cost = (float)lcost;
  lp.cost.lambda_quality = (float)lqual;
  lp.cost.theta = (float)theta;
  uint64_t s64 = (uint64_t)seed;
  if ((rc = ac_ctrl_trainer_new(ctl, opt, meta, lp, s64 ^ 0x9E3779B97F4A7C15ull, &tr))) {
    status = acq_fail("trainer", rc);
    goto done;
  }
  size_t size_params = 0;
  ac_ctrl_params(ctl, &size_params);
  ac_ctrl_losses_t l0;
  if ((rc = eval_all(ctl, &d, &lp, &l0))) {
    status = acq_fail("evaluation", rc);
    goto done;
  }
  if (!quiet)
    fprintf(stderr,
            "acq train-controller: %s controller (%zu parameters, k %d), %s, %d steps of %d domain%s x 2 x %d "
            "tasks; initial loss %.4f\n",
            size, size_params, cfg.k, maml ? "first-order MAML" : "multi-task (no MAML)", (int)steps, d.n_domain,
            d.n_domain == 1 ? "" : "s", (int)batch, l0.total);

  int B = (int)batch, nd = d.n_domain;
  bids = malloc((size_t)nd * 2 * B * d.k * sizeof *bids);
  blens = malloc((size_t)nd * 2 * B * sizeof *blens);
  blab = malloc((size_t)nd * 2 * B * d.V);
  cur = calloc((size_t)nd, sizeof *cur);
  sup = calloc((size_t)nd, sizeof *sup);
  qry = calloc((size_t)nd, sizeof *qry);
  if (!bids || !blens || !blab || !cur || !sup || !qry) {
    status = acq_fail("training", ac_error(AC_ENOMEM, "out of memory"));
    goto done;
  }
  ac_ctrl_rng_t rng;
  ac_ctrl_rng_seed(&rng, s64 + 0x5851F42D4C957F2Dull);
  for (int j = 0; j < nd; j++) {
    cur[j] = (cursor_t){d.members[j], d.n_members[j], d.n_members[j]};  // shuffled on first use
  }
  int every = steps >= 20 ? (int)steps / 20 : 1;
  ac_ctrl_losses_t run = {0};
  int run_n = 0;
  double t_train = now_s();
  for (int s = 0; s < (int)steps; s++) {
    for (int j = 0; j < nd; j++)
      for (int half = 0; half < 2; half++) {
        int slot = (j * 2 + half) * B;
        for (int i = 0; i < B; i++) fill(&d, slot + i, next_task(&cur[j], &rng), bids, blens, blab);
        ac_ctrl_batch_t b = {.B = B, .ids = bids + (size_t)slot * d.k, .lens = blens + slot, .success = blab + (size_t)slot * d.V};
        if (half == 0) sup[j] = b;
        else qry[j] = b;
      }
    ac_ctrl_losses_t l;
    if ((rc = ac_ctrl_trainer_step(tr, sup, qry, nd, &l))) {
      status = acq_fail("training step", rc);
      goto done;
    }
    if (!isfinite(l.total)) {
      status = acq_fail("training", ac_error(AC_ERANGE, "the loss is not finite at step %d (lower --lr)", s + 1));
      goto done;
    }
    run.total += l.total;
    run.success += l.success;
    run.complexity += l.complexity;
    run.policy += l.policy;
    run.cost += l.cost;
    run_n++;
    if (!quiet && ((s + 1) % every == 0 || s + 1 == (int)steps)) {
      fprintf(stderr,
              "acq train-controller: step %d/%d  loss %.4f (success %.4f, complexity %.4f, policy %.4f, cost %.4f)  "
              "%.1f s\n",
              s + 1, (int)steps, run.total / run_n, run.success / run_n, run.complexity / run_n, run.policy / run_n,
              run.cost / run_n, now_s() - t_train);
      memset(&run, 0, sizeof run);
      run_n = 0;
    }
  }
  double train_s = now_s() - t_train;

  ac_ctrl_losses_t l1;
  if ((rc = eval_all(ctl, &d, &lp, &l1))) {
    status = acq_fail("evaluation", rc);
    goto done;
  }
  // The decisions on the training tasks: success kept and cost against the reference for all.
  if ((rc = ac_ctrl_prepare_inference(ctl))) {
    status = acq_fail("controller", rc);
    goto done;
  }
  double cost = 0, cost_oracle = 0, ref_cost = z.variant[z.reference].cost;
  long ok = 0, fallback = 0;
  for (int i = 0; i < d.n; i++) {
    ac_ctrl_pred_t p;
    if ((rc = ac_ctrl_predict(ctl, d.ids + (size_t)i * d.k, d.lens[i], &p))) {
      status = acq_fail("prediction", rc);
      goto done;
    }
    ok += d.lab[(size_t)i * d.V + p.variant];
    fallback += p.fallback;
    cost += z.variant[p.variant].cost;
    float best = ref_cost;
    for (int v = 0; v < d.V; v++)
      if (d.lab[(size_t)i * d.V + v] && z.variant[v].cost < best) best = z.variant[v].cost;
    cost_oracle += best;
  }
  fprintf(stderr,
          "acq train-controller: loss %.4f -> %.4f in %.1f s; on the training tasks: success %.1f%%, cost %.1f%% of "
          "the reference's (oracle %.1f%%), %ld confidence fallbacks\n",
          l0.total, l1.total, train_s, 100.0 * ok / d.n, 100.0 * cost / (ref_cost * d.n),
          100.0 * cost_oracle / (ref_cost * d.n), fallback);

  ac_ctrl_config_t *mc = ac_ctrl_config_mut(ctl);
  mc->train.seed = s64;
  mc->train.steps = (int)steps;
  mc->train.maml = maml;
  mc->train.final_loss = l1.total;
  snprintf(mc->train.note, sizeof mc->train.note, "%d tasks, %d domains%s%s, batch %d, lr %g", d.n, d.n_domain,
           domains ? " " : "", domains ? domains : "", B, lr);
  if ((rc = ac_ctrl_save(ctl, out))) {
    status = acq_fail(out, rc);
    goto done;
  }
  fprintf(stderr, "acq train-controller: wrote %s (%.1f s in all)\n", out, now_s() - t0);
  status = 0;
done:
  free(bids);
  free(blens);
  free(blab);
  free(cur);
  free(sup);
  free(qry);
  free(lab);
  ac_ctrl_trainer_destroy(&tr);
  ac_ctrl_destroy(&ctl);
  data_free(&d);
  ac_workload_free(&w);
  ac_ctrl_zoo_free(&z);
  return status;
}
