// main.c - ac-router's command line and start-up; the event loop is in router.c.
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "error.h"
#include "log.h"
#include "router.h"

#define FRONT_MAX_MSG (64 << 20)  // ZMQ_MAXMSGSIZE: well above router.max_msg_bytes, so oversize
                                  // requests reach us and get TOO_BIG instead of a disconnect

static volatile sig_atomic_t got_signal;
static void on_signal(int sig) { got_signal = sig; }

static void usage(FILE *f) {
  fprintf(f,
          "usage: ac-router [options]\n"
          "  --listen ENDPOINT    front socket (default $AC_ROUTER or tcp://127.0.0.1:5555)\n"
          "  --id ID              this router's id (default host-pid); its routing id at the workers\n"
          "  --redis HOST:PORT    Redis (default $AC_REDIS or 127.0.0.1:6379)\n"
          "  --prefix P           key prefix (default $AC_PREFIX or ac:)\n"
          "  --zoo DIR            variants catalog when Redis has none; the tokenizer's default file\n"
          "  --tokenizer FILE     GGUF whose tokenizer and chat template are used (default: the\n"
          "                       reference variant's file in --zoo)\n"
          "  --controller FILE    complexity controller (acq train-controller) for the policy\n"
          "                       'controller'; trained on the tokenizer model's embeddings\n"
          "  --ctx N              context assumed before any worker reports its own (default 1024)\n"
          "  --drain-ms N         on SIGTERM, how long in-flight tasks may finish (default 3000)\n"
          "  --set NAME=VALUE     a setting (repeatable; see the settings table)\n"
          "  --log-level L        debug, info, warn, error (default info)\n"
          "  --log-format F       text or json\n");
}

static int load_tokenizer(rt_router_t *R, const char *path) {
  int rc = ac_gguf_open(path, &R->gguf);
  if (!rc) rc = ac_tokenizer_from_gguf(R->gguf, &R->tok);
  if (rc) {
    fprintf(stderr, "ac-router: tokenizer %s: %s\n", path, ac_errmsg()[0] ? ac_errmsg() : ac_strerror(rc));
    return rc;
  }
  AC_INFO("tokenizer from %s", path);
  return 0;
}

static int open_front(rt_router_t *R) {
  int zero = 0, one = 1, hwm = 100000;
  int64_t maxmsg = FRONT_MAX_MSG;
  R->front = zmq_socket(R->zctx, ZMQ_ROUTER);
  if (!R->front || zmq_setsockopt(R->front, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
      zmq_setsockopt(R->front, ZMQ_LINGER, &zero, sizeof zero) ||
      zmq_setsockopt(R->front, ZMQ_ROUTER_MANDATORY, &one, sizeof one) ||
      zmq_setsockopt(R->front, ZMQ_SNDHWM, &hwm, sizeof hwm) ||
      zmq_setsockopt(R->front, ZMQ_RCVHWM, &hwm, sizeof hwm) || zmq_bind(R->front, R->listen)) {
    fprintf(stderr, "ac-router: cannot listen on %s: %s\n", R->listen, zmq_strerror(errno));
    return AC_EIO;
  }
  return 0;
}

int main(int argc, char **argv) {
  rt_router_t R_ = {0}, *R = &R_;
  const char *redis = getenv("AC_REDIS"), *prefix = getenv("AC_PREFIX"), *zoo = NULL, *tokenizer = NULL,
             *controller = NULL;
  const char *listen = getenv("AC_ROUTER");
  char **sets = calloc((size_t)argc + 1, sizeof *sets);
  int n_sets = 0, status = 1;
  R->ctx_default = 1024;
  R->drain_ms = 3000;
  ac_log_set_level(AC_LOG_INFO);
  snprintf(R->id, sizeof R->id, "%s", "");

  enum { O_LISTEN = 256, O_ID, O_REDIS, O_PREFIX, O_ZOO, O_TOK, O_CTX, O_DRAIN, O_SET, O_LEVEL, O_FORMAT, O_CTRL };
  static const struct option opts[] = {
      {"listen", required_argument, 0, O_LISTEN}, {"id", required_argument, 0, O_ID},
      {"redis", required_argument, 0, O_REDIS},   {"prefix", required_argument, 0, O_PREFIX},
      {"zoo", required_argument, 0, O_ZOO},       {"tokenizer", required_argument, 0, O_TOK},
      {"ctx", required_argument, 0, O_CTX},       {"drain-ms", required_argument, 0, O_DRAIN},
      {"set", required_argument, 0, O_SET},       {"log-level", required_argument, 0, O_LEVEL},
      {"log-format", required_argument, 0, O_FORMAT}, {"controller", required_argument, 0, O_CTRL},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    char *end;
    switch (c) {
      case O_LISTEN: listen = optarg; break;
      case O_ID:
        if (!*optarg || strlen(optarg) >= sizeof R->id) {
          fprintf(stderr, "ac-router: --id must be 1 to %zu characters\n", sizeof R->id - 1);
          goto out;
        }
        snprintf(R->id, sizeof R->id, "%s", optarg);
        break;
      case O_REDIS: redis = optarg; break;
      case O_PREFIX: prefix = optarg; break;
      case O_ZOO: zoo = optarg; break;
      case O_TOK: tokenizer = optarg; break;
      case O_CTRL: controller = optarg; break;
      case O_CTX:
        R->ctx_default = (int)strtol(optarg, &end, 10);
        if (*end || R->ctx_default < 2 || R->ctx_default > (1 << 24)) {
          fprintf(stderr, "ac-router: --ctx wants a number of tokens, not '%s'\n", optarg);
          goto out;
        }
        break;
      case O_DRAIN:
        R->drain_ms = strtod(optarg, &end);
        if (*end || !(R->drain_ms >= 0) || R->drain_ms > 3.6e6) {
          fprintf(stderr, "ac-router: --drain-ms wants milliseconds, not '%s'\n", optarg);
          goto out;
        }
        break;
      case O_SET: sets[n_sets++] = optarg; break;
      case O_LEVEL: {
        int l = ac_log_parse_level(optarg);
        if (l < 0) {
          fprintf(stderr, "ac-router: --log-level wants debug, info, warn, error or off\n");
          goto out;
        }
        ac_log_set_level((ac_log_level_t)l);
        break;
      }
      case O_FORMAT:
        if (strcmp(optarg, "json") && strcmp(optarg, "text")) {
          fprintf(stderr, "ac-router: --log-format wants text or json\n");
          goto out;
        }
        ac_log_set_json(strcmp(optarg, "json") == 0);
        break;
      case 'h': usage(stdout); status = 0; goto out;
      default: usage(stderr); status = 2; goto out;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "ac-router: unexpected argument '%s'\n", argv[optind]);
    usage(stderr);
    status = 2;
    goto out;
  }
  if (!R->id[0]) {
    char host[128] = "host";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    snprintf(R->id, sizeof R->id, "%s-%d", host, (int)getpid());
  }
  snprintf(R->listen, sizeof R->listen, "%s", listen && *listen ? listen : "tcp://127.0.0.1:5555");

  if (ac_config_new(&R->cfg)) {
    fprintf(stderr, "ac-router: out of memory\n");
    goto out;
  }
  for (int i = 0; i < n_sets; i++) {
    if (ac_config_set_arg(R->cfg, sets[i])) {
      fprintf(stderr, "ac-router: --set %s: %s\n", sets[i], ac_errmsg());
      goto out;
    }
  }
  if (ac_rds_new(redis, prefix && *prefix ? prefix : NULL, &R->rds)) {
    fprintf(stderr, "ac-router: %s\n", ac_errmsg());
    goto out;
  }
  if (zoo && ac_catalog_load_dir(zoo, &R->cat)) {
    fprintf(stderr, "ac-router: --zoo %s: %s\n", zoo, ac_errmsg());
    goto out;
  }
  if (tokenizer) {
    if (load_tokenizer(R, tokenizer)) goto out;
  } else if (zoo) {
    const ac_variant_t *ref = ac_catalog_find(&R->cat, R->cat.reference);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", zoo, ref ? ref->file : "");
    if (!ref || load_tokenizer(R, path)) goto out;
  } else {
    AC_WARN("no --tokenizer and no --zoo: prompts go to workers as text, unchecked against the context");
  }
  if (controller) {
    if (!R->gguf) {
      fprintf(stderr, "ac-router: --controller needs the model it was trained on: give --zoo or --tokenizer\n");
      goto out;
    }
    if (ac_policy_controller_load(controller, R->gguf)) {
      fprintf(stderr, "ac-router: --controller: %s\n", ac_errmsg());
      goto out;
    }
  }
  if (rt_stats_new(&R->stats)) goto out;
  if (!(R->zctx = zmq_ctx_new())) {
    fprintf(stderr, "ac-router: zmq_ctx_new: %s\n", zmq_strerror(errno));
    goto out;
  }
  if (open_front(R)) goto out;
  rt_workers_init(&R->wt, R->zctx, R->id);

  ac_msg_install_signals(on_signal);

  rt_router_read_settings(R);
  AC_INFO("router %s listening on %s (redis %s, prefix %s, %d variants known)", R->id, R->listen,
          ac_rds_addr(R->rds), ac_rds_prefix(R->rds), R->cat.n);
  status = rt_router_run(R, &got_signal);
  AC_INFO("router %s stopped", R->id);

out:
  if (R->front) {
    // Let the last answers out before the socket goes.
    int linger = 1000;
    zmq_setsockopt(R->front, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(R->front);
  }
  rt_workers_destroy(&R->wt);
  if (R->zctx) zmq_ctx_term(R->zctx);
  rt_router_free_tasks(R);
  ac_policy_shutdown();
  rt_stats_destroy(&R->stats);
  ac_catalog_free(&R->cat);
  free(R->cat_json);
  ac_tokenizer_destroy(&R->tok);
  ac_gguf_close(&R->gguf);
  ac_rds_destroy(&R->rds);
  ac_config_destroy(&R->cfg);
  free(sets);
  return status;
}
