/*
 * ZMQ sockets on the event service: the process-wide context, whole
 * multipart messages received without blocking, and the edge-triggered
 * ZMQ_FD rule (after any send or receive, ZMQ_EVENTS must be checked again:
 * the fd may not fire for messages already queued).  vLLM's side channels
 * (both generations) use these.
 */
#ifndef KVB_HW_ZMQ_H
#define KVB_HW_ZMQ_H

#include <stdbool.h>
#include <stddef.h>

#include <zmq.h>

#define HW_ZMQ_MAX_FRAMES 4
#define HW_ZMQ_MAX_MSG (64u << 20)

/* One context per process, made on first use (thread-safe, shared; libzmq's
 * I/O thread is its own, not ours). */
void *hw_zmq_ctx(void);
/* Receive one whole multipart message without blocking.  Returns the number
 * of frames kept (> 0), 0 when nothing is ready, -1 on error; frames beyond
 * HW_ZMQ_MAX_FRAMES are drained and only counted in *n_total. */
int hw_zmq_recv(void *sock, zmq_msg_t *frames, size_t *n_total);
/* The sender's IP address of a received frame ("" when ZMQ does not say). */
const char *hw_zmq_peer(zmq_msg_t *frame);
void hw_zmq_frames_close(zmq_msg_t *frames, int n);
/* A message is waiting (ZMQ_EVENTS has POLLIN). */
bool hw_zmq_readable(void *sock);
/* The socket's fd to watch for readability. */
int hw_zmq_fd(void *sock);

#endif /* KVB_HW_ZMQ_H */
