// settings.h - the one table of cluster settings.
//
// Every tunable of the router, workers and scheduler is a row here: name, whether it may change
// at run time, range, default and help. A value comes from, in rising precedence: the default,
// the environment (AC_<NAME> with dots as underscores, upper case), a daemon's flag
// (--set name=value), and for runtime settings the Redis hash <prefix>config, written by
// `acctl policy set`. Daemons re-read Redis every tick, so a change applies within a second.
#ifndef AC_SETTINGS_H
#define AC_SETTINGS_H

#include <stdbool.h>
#include <stddef.h>

#include "rds.h"

typedef struct {
  const char *name;
  bool runtime;       // may be changed while running (acctl policy set)
  bool is_string;
  double min, max;    // numbers only
  const char *def;    // default, as text
  const char *help;
} ac_setting_t;

const ac_setting_t *ac_settings(size_t *n);
const ac_setting_t *ac_setting_find(const char *name);
// Checks a value against its row. AC_ENOTFOUND (unknown name), AC_ERANGE or AC_EINVAL.
int ac_setting_check(const char *name, const char *value);

// Current values of every setting.
typedef struct ac_config ac_config_t;
int ac_config_new(ac_config_t **out);  // defaults, then the environment
void ac_config_destroy(ac_config_t **self_p);
// "name=value" from a flag; checked.
int ac_config_set_arg(ac_config_t *c, const char *name_eq_value);
// Reads <prefix>config from Redis; runtime rows found there override. Unknown or invalid
// entries are logged once and ignored. Returns 0, or AC_EIO when Redis is unreachable (the
// previous values stay).
int ac_config_refresh(ac_config_t *c, ac_rds_t *r);
double ac_config_num(const ac_config_t *c, const char *name);
const char *ac_config_str(const ac_config_t *c, const char *name);

#endif
