// settings.c - see settings.h.
#include "settings.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "log.h"

// clang-format off
static const ac_setting_t table[] = {
  // name                         runtime str   min     max      default   help
  {"policy",                      true,  true,  0, 0,            "full",   "how the router picks a variant: full (the reference variant), fixed (policy.variant), controller"},
  {"policy.variant",              true,  true,  0, 0,            "",       "the variant the fixed policy sends every task to"},
  {"policy.conf_min",             true,  false, 0, 1,            "0.7",    "controller: below this confidence a task goes to the reference (full) variant"},
  {"policy.theta",                true,  false, 0, 1,            "0.95",   "controller: the cheapest variant whose predicted success is at least this is chosen"},
  {"router.max_queue",            true,  false, 1, 1e6,          "1024",   "tasks a router holds waiting for a worker before answering OVERLOADED"},
  {"router.queue_timeout_ms",     true,  false, 10, 3.6e6,       "60000",  "longest a task waits for a worker holding a variant that can serve it"},
  {"router.default_max_tokens",   true,  false, 1, 1e6,          "256",    "max_tokens of a task that gives 0"},
  {"router.max_attempts",         true,  false, 1, 10,           "3",      "workers a task is tried on before WORKER_LOST"},
  {"router.max_msg_bytes",        true,  false, 1024, 6.4e7,     "4194304","largest request a router accepts (TOO_BIG above)"},
  {"worker.heartbeat_ms",         false, false, 20, 60000,       "200",    "how often a worker writes its state to Redis"},
  {"worker.timeout_ms",           true,  false, 100, 600000,     "1500",   "a worker silent this long is dead: its tasks are retried elsewhere"},
  {"sched.w_freq",                true,  false, 0, 1,            "0.7",    "weight of normalised request frequency in a variant's priority"},
  {"sched.w_recency",             true,  false, 0, 1,            "0.3",    "weight of normalised recency of last use in a variant's priority"},
  {"sched.window_s",              true,  false, 1, 86400,        "120",    "sliding window over which frequency and recency are measured"},
  {"sched.min_residency_s",       true,  false, 0, 86400,        "10",     "a worker keeps a variant at least this long before it may be reloaded"},
  {"sched.hysteresis",            true,  false, 0, 1,            "0.15",   "a reload needs priority(new) > priority(old) + this"},
  {"sched.interval_ms",           true,  false, 50, 60000,       "500",    "how often the scheduler decides"},
  {"price.usd_per_hour",          true,  false, 0, 1e4,          "2.0",    "price of one worker (device) hour, for measured cost"},
};
// clang-format on
enum { N_SETTINGS = sizeof table / sizeof table[0] };

const ac_setting_t *ac_settings(size_t *n) {
  *n = N_SETTINGS;
  return table;
}

const ac_setting_t *ac_setting_find(const char *name) {
  for (size_t i = 0; i < N_SETTINGS; i++)
    if (strcmp(table[i].name, name) == 0) return &table[i];
  return NULL;
}

int ac_setting_check(const char *name, const char *value) {
  const ac_setting_t *s = ac_setting_find(name);
  if (!s) return ac_error(AC_ENOTFOUND, "unknown setting '%s'", name);
  if (s->is_string) {
    if (strcmp(name, "policy") == 0 && strcmp(value, "full") && strcmp(value, "fixed") && strcmp(value, "controller"))
      return ac_error(AC_EINVAL, "policy must be full, fixed or controller, not '%s'", value);
    return strlen(value) < 256 ? 0 : ac_error(AC_ERANGE, "%s: value too long", name);
  }
  char *end;
  double v = strtod(value, &end);
  if (end == value || *end || !isfinite(v)) return ac_error(AC_EINVAL, "%s: '%s' is not a number", name, value);
  if (v < s->min || v > s->max) return ac_error(AC_ERANGE, "%s: %g is outside [%g, %g]", name, v, s->min, s->max);
  return 0;
}

struct ac_config {
  char *val[N_SETTINGS];
  char *base[N_SETTINGS];  // the value without Redis (default, env, flag): restored when the key is deleted
  bool from_redis[N_SETTINGS];
  double num[N_SETTINGS];
  char warned[N_SETTINGS];
};

static int put(ac_config_t *c, size_t i, const char *value) {
  char *v = strdup(value);
  if (!v) return ac_error(AC_ENOMEM, "out of memory");
  free(c->val[i]);
  c->val[i] = v;
  c->num[i] = table[i].is_string ? 0 : strtod(v, NULL);
  return 0;
}

// Sets both the current value and the base one (what a deleted Redis entry falls back to).
static int put_base(ac_config_t *c, size_t i, const char *value) {
  char *b = strdup(value);
  if (!b) return ac_error(AC_ENOMEM, "out of memory");
  free(c->base[i]);
  c->base[i] = b;
  return c->from_redis[i] ? 0 : put(c, i, value);
}

int ac_config_new(ac_config_t **out) {
  ac_config_t *c = calloc(1, sizeof *c);
  if (!c) return ac_error(AC_ENOMEM, "out of memory");
  for (size_t i = 0; i < N_SETTINGS; i++) {
    const char *v = table[i].def;
    char env[96] = "AC_";
    size_t k = 3;
    for (const char *p = table[i].name; *p && k + 1 < sizeof env; p++) env[k++] = *p == '.' ? '_' : (char)toupper(*p);
    env[k] = 0;
    const char *e = getenv(env);
    if (e && ac_setting_check(table[i].name, e) == 0) v = e;
    else if (e) AC_WARN("ignoring %s: %s", env, ac_errmsg());
    if (put_base(c, i, v)) {
      ac_config_destroy(&c);
      return AC_ENOMEM;
    }
  }
  *out = c;
  return 0;
}

void ac_config_destroy(ac_config_t **self_p) {
  ac_config_t *c = *self_p;
  if (!c) return;
  for (size_t i = 0; i < N_SETTINGS; i++) free(c->val[i]), free(c->base[i]);
  free(c);
  *self_p = NULL;
}

int ac_config_set_arg(ac_config_t *c, const char *arg) {
  const char *eq = strchr(arg, '=');
  if (!eq) return ac_error(AC_EINVAL, "--set wants name=value, not '%s'", arg);
  char name[96];
  snprintf(name, sizeof name, "%.*s", (int)(eq - arg), arg);
  int rc = ac_setting_check(name, eq + 1);
  if (rc) return rc;
  size_t i = (size_t)(ac_setting_find(name) - table);
  return put_base(c, i, eq + 1);
}

int ac_config_refresh(ac_config_t *c, ac_rds_t *r) {
  redisReply *rep = ac_rds_cmd(r, "HGETALL %sconfig", ac_rds_prefix(r));
  if (!rep) return AC_EIO;
  if (rep->type == REDIS_REPLY_ARRAY) {
    bool seen[N_SETTINGS] = {false};
    for (size_t k = 0; k + 1 < rep->elements; k += 2) {
      const char *name = rep->element[k]->str, *value = rep->element[k + 1]->str;
      if (!name || !value) continue;
      const ac_setting_t *s = ac_setting_find(name);
      if (!s || !s->runtime || ac_setting_check(name, value) != 0) {
        size_t i = s ? (size_t)(s - table) : 0;
        if (s && !c->warned[i]) AC_WARN("config %s=%s in redis ignored: %s", name, value, s->runtime ? ac_errmsg() : "not runtime");
        if (s) c->warned[i] = 1;
        continue;
      }
      size_t i = (size_t)(s - table);
      seen[i] = true;
      c->from_redis[i] = true;
      if (!c->val[i] || strcmp(c->val[i], value) != 0) {
        AC_INFO("config %s = %s", name, value);
        put(c, i, value);
      }
    }
    // An entry deleted from Redis gives the setting back its own value.
    for (size_t i = 0; i < N_SETTINGS; i++) {
      if (c->from_redis[i] && !seen[i]) {
        c->from_redis[i] = false;
        AC_INFO("config %s = %s (no longer set in redis)", table[i].name, c->base[i]);
        put(c, i, c->base[i]);
      }
    }
  }
  freeReplyObject(rep);
  return 0;
}

double ac_config_num(const ac_config_t *c, const char *name) {
  const ac_setting_t *s = ac_setting_find(name);
  return s ? c->num[s - table] : NAN;
}

const char *ac_config_str(const ac_config_t *c, const char *name) {
  const ac_setting_t *s = ac_setting_find(name);
  return s ? c->val[s - table] : "";
}
