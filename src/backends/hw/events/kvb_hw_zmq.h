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

/* A monitor on sock for CONNECTED and DISCONNECTED (ZMQ would otherwise
 * reconnect silently for ever): the PAIR socket its events arrive on, or
 * NULL (errno set). */
void *hw_zmq_monitor_open(void *sock);
/* The next monitor event (ZMQ_EVENT_*), 0 when none is waiting. */
unsigned hw_zmq_monitor_next(void *mon);
/* Stop the monitor and close its PAIR (mon may be NULL). */
void hw_zmq_monitor_close(void *sock, void *mon);

struct hw;
/* Whether the sender of a received frame is among hw's allowed peers; if
 * not, it is counted (peers_refused) and warned about, rate-limited, and the
 * message must be dropped unanswered. */
bool hw_zmq_sender_allowed(struct hw *hw, zmq_msg_t *frame);

/* ZMQ accepts a connection before anyone can look at its address.  A gate
 * on a ROUTER watches its ACCEPTED events and shuts down, at once, every
 * accepted connection whose peer is not among hw's allowed peers, so an
 * outsider holds no descriptor there (counted in peers_refused, warned
 * about, rate-limited); what was sent meanwhile is dropped by
 * hw_zmq_sender_allowed.  what: the port's name, for the warning. */
typedef struct hw_zmq_gate hw_zmq_gate_t;
hw_zmq_gate_t *hw_zmq_gate_open(struct hw *hw, void *router, const char *what);
void hw_zmq_gate_close(hw_zmq_gate_t *g); /* NULL is a no-op; before the router closes */

#endif /* KVB_HW_ZMQ_H */
