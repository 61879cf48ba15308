// msg.h - protocol messages (proto/agentcompress.proto) on ZeroMQ sockets.
//
// One ZeroMQ message = routing frames (if any) + one frame holding a serialized Envelope.
// Unpacking checks size and version before anything else, so a daemon can answer garbage with
// an Error and carry on.
#ifndef AC_MSG_H
#define AC_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <signal.h>
#include <stdint.h>

#include "agentcompress.pb-c.h"

typedef Agentcompress__Envelope ac_env_t;

#define AC_MSG_VERSION 1u
#define AC_MSG_MAX_BYTES (4u << 20)  // default limit on one frame (ZMQ_MAXMSGSIZE as well)

// Parses one frame. Errors: AC_ERANGE (larger than max_bytes), AC_EFORMAT (not an Envelope, or
// an empty one), AC_EUNSUPPORTED (another protocol version). The detail is in ac_errmsg().
// Free with ac_msg_free.
int ac_msg_unpack(const void *data, size_t len, size_t max_bytes, ac_env_t **out);
void ac_msg_free(ac_env_t **env_p);

// Serializes env (its version is set to AC_MSG_VERSION) into a malloc'ed buffer.
int ac_msg_pack(ac_env_t *env, uint8_t **buf, size_t *len);
// A packed Envelope carrying one ReloadCommand (what the scheduler and acctl push to
// <prefix>cmd:<worker>).
int ac_msg_pack_reload(const char *id, const char *worker, const char *variant, const char *reason,
                       uint64_t issued_at_ms, uint8_t **buf, size_t *len);

// Waits up to ms for one Envelope on a DEALER socket (the last frame; a delimiter may come
// first). Unreadable replies are skipped (said on stderr). Returns 0 with *env (free with
// ac_msg_free), 1 on timeout or when *stop becomes non-zero (stop may be NULL; it is looked at
// every 200 ms), or an error code.
int ac_msg_recv_env(void *sock, double ms, const volatile sig_atomic_t *stop, ac_env_t **env);

// Sends `nparts` routing frames (identity, and for REQ-style peers the empty delimiter) then env.
// Non-blocking: returns AC_EIO if the peer cannot take it now (its queue is full or it is gone).
int ac_msg_send(void *sock, int nparts, const void *const *parts, const size_t *part_lens, ac_env_t *env);

// Builds and sends an Error.
int ac_msg_send_error(void *sock, int nparts, const void *const *parts, const size_t *part_lens,
                      const char *task_id, Agentcompress__ErrorCode code, const char *message);

// Whether an error code means "the same task may succeed if sent again".
bool ac_msg_retriable(Agentcompress__ErrorCode code);
// The code's name without its prefix ("OVERLOADED").
const char *ac_msg_code_name(Agentcompress__ErrorCode code);

// A worker state's name for people and JSON ("ready", "reloading", ...).
const char *ac_msg_state_name(Agentcompress__WorkerState state);

// Installs `on_stop` for SIGTERM and SIGINT and ignores SIGPIPE: what every daemon and acctl do.
void ac_msg_install_signals(void (*on_stop)(int));

// A received multi-frame message: routing frames, then the payload (the last frame).
#define AC_MSG_MAX_PARTS 8
typedef struct {
  int nparts;                            // routing frames before the payload
  size_t lens[AC_MSG_MAX_PARTS];
  uint8_t parts[AC_MSG_MAX_PARTS][256];  // identities are at most 255 bytes in ZeroMQ
  void *payload;                         // malloc'ed copy of the last frame
  size_t payload_len;
  bool truncated;                        // more frames than AC_MSG_MAX_PARTS, or a part > 255 bytes
} ac_frames_t;

// Receives one whole message without blocking (0 if none: returns AC_ENOTFOUND). Frames beyond
// the limits are read and discarded (truncated set), so the socket never desynchronizes.
int ac_frames_recv(void *sock, ac_frames_t *f);
void ac_frames_free(ac_frames_t *f);
// Pointers to the routing frames, for ac_msg_send.
void ac_frames_route(const ac_frames_t *f, const void **parts);

#endif
