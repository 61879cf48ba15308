// msg.c - see msg.h.
#include "msg.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "clock.h"
#include "error.h"

int ac_msg_unpack(const void *data, size_t len, size_t max_bytes, ac_env_t **out) {
  *out = NULL;
  if (max_bytes && len > max_bytes)
    return ac_error(AC_ERANGE, "message of %zu bytes is over the limit of %zu", len, max_bytes);
  ac_env_t *env = agentcompress__envelope__unpack(NULL, len, data);
  if (!env) return ac_error(AC_EFORMAT, "not a protobuf Envelope (%zu bytes)", len);
  if (env->version == 0) {  // random bytes can parse as an empty message: not ours
    agentcompress__envelope__free_unpacked(env, NULL);
    return ac_error(AC_EFORMAT, "not an AgentCompress envelope (%zu bytes, no version)", len);
  }
  if (env->version != AC_MSG_VERSION) {
    uint32_t v = env->version;
    agentcompress__envelope__free_unpacked(env, NULL);
    return ac_error(AC_EUNSUPPORTED, "protocol version %u; this build speaks %u", v, AC_MSG_VERSION);
  }
  if (env->body_case == AGENTCOMPRESS__ENVELOPE__BODY__NOT_SET) {
    agentcompress__envelope__free_unpacked(env, NULL);
    return ac_error(AC_EFORMAT, "envelope without a body");
  }
  *out = env;
  return 0;
}

void ac_msg_free(ac_env_t **env_p) {
  if (*env_p) agentcompress__envelope__free_unpacked(*env_p, NULL);
  *env_p = NULL;
}

int ac_msg_pack(ac_env_t *env, uint8_t **buf, size_t *len) {
  env->version = AC_MSG_VERSION;
  size_t n = agentcompress__envelope__get_packed_size(env);
  uint8_t *b = malloc(n ? n : 1);
  if (!b) return ac_error(AC_ENOMEM, "out of memory");
  *len = agentcompress__envelope__pack(env, b);
  *buf = b;
  return 0;
}

int ac_msg_pack_reload(const char *id, const char *worker, const char *variant, const char *reason,
                       uint64_t issued_at_ms, uint8_t **buf, size_t *len) {
  Agentcompress__ReloadCommand rc = AGENTCOMPRESS__RELOAD_COMMAND__INIT;
  rc.id = (char *)id;
  rc.worker = (char *)worker;
  rc.variant = (char *)variant;
  rc.reason = (char *)reason;
  rc.issued_at_ms = issued_at_ms;
  ac_env_t env = AGENTCOMPRESS__ENVELOPE__INIT;
  env.body_case = AGENTCOMPRESS__ENVELOPE__BODY_RELOAD;
  env.reload = &rc;
  return ac_msg_pack(&env, buf, len);
}

int ac_msg_send(void *sock, int nparts, const void *const *parts, const size_t *part_lens, ac_env_t *env) {
  uint8_t *buf = NULL;
  size_t len = 0;
  int rc = ac_msg_pack(env, &buf, &len);
  if (rc) return rc;
  for (int i = 0; i < nparts; i++) {
    if (zmq_send(sock, parts[i], part_lens[i], ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
      free(buf);
      return ac_error(AC_EIO, "zmq_send: %s", zmq_strerror(errno));
    }
  }
  rc = zmq_send(sock, buf, len, ZMQ_DONTWAIT) < 0 ? ac_error(AC_EIO, "zmq_send: %s", zmq_strerror(errno)) : 0;
  free(buf);
  return rc;
}

int ac_msg_send_error(void *sock, int nparts, const void *const *parts, const size_t *part_lens,
                      const char *task_id, Agentcompress__ErrorCode code, const char *message) {
  Agentcompress__Error e = AGENTCOMPRESS__ERROR__INIT;
  e.task_id = (char *)(task_id ? task_id : "");
  e.code = code;
  e.message = (char *)(message ? message : "");
  e.retriable = ac_msg_retriable(code);
  ac_env_t env = AGENTCOMPRESS__ENVELOPE__INIT;
  env.body_case = AGENTCOMPRESS__ENVELOPE__BODY_ERROR;
  env.error = &e;
  return ac_msg_send(sock, nparts, parts, part_lens, &env);
}

bool ac_msg_retriable(Agentcompress__ErrorCode code) {
  switch (code) {
    case AGENTCOMPRESS__ERROR_CODE__ERR_OVERLOADED:
    case AGENTCOMPRESS__ERROR_CODE__ERR_NO_WORKER:
    case AGENTCOMPRESS__ERROR_CODE__ERR_WORKER_LOST:
    case AGENTCOMPRESS__ERROR_CODE__ERR_DRAINING: return true;
    default: return false;
  }
}

const char *ac_msg_code_name(Agentcompress__ErrorCode code) {
  const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(&agentcompress__error_code__descriptor, (int)code);
  if (!v) return "unknown";
  return v->name + 4;  // "ERR_OVERLOADED" -> "OVERLOADED"
}

const char *ac_msg_state_name(Agentcompress__WorkerState state) {
  switch (state) {
    case AGENTCOMPRESS__WORKER_STATE__WORKER_LOADING: return "loading";
    case AGENTCOMPRESS__WORKER_STATE__WORKER_READY: return "ready";
    case AGENTCOMPRESS__WORKER_STATE__WORKER_RELOADING: return "reloading";
    case AGENTCOMPRESS__WORKER_STATE__WORKER_DRAINING: return "draining";
    default: return "unknown";
  }
}

void ac_msg_install_signals(void (*on_stop)(int)) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
}

int ac_frames_recv(void *sock, ac_frames_t *f) {
  memset(f, 0, sizeof *f);
  zmq_msg_t m;
  int more = 1, got = 0;
  while (more) {
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, sock, got ? 0 : ZMQ_DONTWAIT) < 0) {
      int e = errno;
      zmq_msg_close(&m);
      if (!got && e == EAGAIN) return AC_ENOTFOUND;
      ac_frames_free(f);
      return ac_error(AC_EIO, "zmq_msg_recv: %s", zmq_strerror(e));
    }
    got = 1;
    more = zmq_msg_more(&m);
    size_t n = zmq_msg_size(&m);
    if (more) {
      if (f->nparts < AC_MSG_MAX_PARTS && n <= 255) {
        memcpy(f->parts[f->nparts], zmq_msg_data(&m), n);
        f->lens[f->nparts++] = n;
      } else {
        f->truncated = true;
      }
    } else {
      f->payload = malloc(n ? n : 1);
      if (f->payload) {
        memcpy(f->payload, zmq_msg_data(&m), n);
        f->payload_len = n;
      } else {
        f->truncated = true;
      }
    }
    zmq_msg_close(&m);
  }
  return 0;
}

void ac_frames_free(ac_frames_t *f) {
  free(f->payload);
  f->payload = NULL;
  f->payload_len = 0;
}

void ac_frames_route(const ac_frames_t *f, const void **parts) {
  for (int i = 0; i < f->nparts; i++) parts[i] = f->parts[i];
}

int ac_msg_recv_env(void *sock, double ms, const volatile sig_atomic_t *stop, ac_env_t **env) {
  *env = NULL;
  zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
  double end = ac_mono_ms() + ms;
  for (;;) {
    double left = end - ac_mono_ms();
    if (left <= 0 || (stop && *stop)) return 1;
    int rc = zmq_poll(&it, 1, (long)(left < 200 ? left + 1 : 200));
    if (rc < 0 && errno != EINTR) return ac_error(AC_EIO, "zmq_poll: %s", zmq_strerror(errno));
    if (rc <= 0) continue;
    ac_frames_t f;
    int r = ac_frames_recv(sock, &f);
    if (r == AC_ENOTFOUND) continue;
    if (r) return r;
    r = ac_msg_unpack(f.payload, f.payload_len, 0, env);
    ac_frames_free(&f);
    if (r) {
      fprintf(stderr, "unreadable reply skipped: %s\n", ac_errmsg());
      continue;
    }
    return 0;
  }
}
