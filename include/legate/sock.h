#ifndef LEGATE_SOCK_H
#define LEGATE_SOCK_H

#include <h2o/socket.h>

/* Bounded reading of plain sockets.
 *
 * libh2o 2.2.5 reads a readable socket until EAGAIN, doubling its input buffer
 * (and copying what the buffer holds) each time a read fills it: from a fast
 * peer that is the whole kernel receive buffer, megabytes of fresh memory per
 * wake-up, copied several times, before the owner sees a byte. An owner that
 * streams bodies switches its socket to bounded reading instead: h2o only
 * reports readiness, and the owner's read callback calls lg_sock_read(), which
 * reads once, at most `want` bytes (between LG_SOCK_READ_MIN and
 * LG_SOCK_READ_MAX), into the input buffer. The epoll registration is
 * level-triggered, so bytes left in the kernel wake the loop again on its next
 * turn, after the owner has passed on what it read. A TLS socket (once its
 * handshake is done) is read the same way and what was read is decrypted at
 * once (lg_tls_read). */

#define LG_SOCK_READ_MIN 4096
#define LG_SOCK_READ_MAX (64 * 1024)
/* The plaintext OpenSSL may hold from earlier reads (a record whose end had not
 * arrived), which lg_tls_read decrypts with the bytes it reads. */
#define LG_TLS_HELD_MAX 16384

/* Switches a socket to bounded reading, after its TLS handshake if any. The
 * owner's read callbacks must call lg_sock_read() from then on. */
void lg_sock_read_bounded(h2o_socket_t *sock);

/* Called first in a read callback: reads up to `want` bytes into sock->input
 * (a buffer with no room gets `want` bytes of room, so a body is read into
 * buffers of that size, never grown and copied). Returns the error the
 * callback should handle: `err` when set, h2o_socket_error_closed at EOF,
 * h2o_socket_error_io on a failed read, else NULL (bytes read, or none yet). */
const char *lg_sock_read(h2o_socket_t *sock, const char *err, size_t want);

/* Room to read up to `want` bytes into *buf (want > 8 KiB into an empty buffer:
 * a recycled LG_SOCK_READ_MAX-byte one; else the room there is, at least
 * LG_SOCK_READ_MIN). For lg_tls_read's encrypted and decrypted buffers too. */
h2o_iovec_t lg_sock_room(h2o_buffer_t **buf, size_t want);

/* Moves the bytes of *buf from `from` on into a fresh buffer and returns the old
 * one, untouched: slices of it that an owner handed out stay valid while reading
 * goes on into the new one (the owner disposes of the old one once they are
 * consumed). The fresh buffer is a recycled LG_SOCK_READ_MAX-byte one, so that
 * the small reads of a slow peer share it. */
h2o_buffer_t *lg_sock_detach_input(h2o_buffer_t **buf, size_t from);

/* One recv of up to `want` bytes into lg_sock_room(buf, want); returns NULL (bytes
 * read, or none yet), h2o_socket_error_closed at EOF, or another h2o error. */
const char *lg_sock_recv(int fd, h2o_buffer_t **buf, size_t want);

/* Writes what the kernel takes now of a plain socket's `bufs` (from *first_off
 * into the first), with send or sendmsg: socket calls skip the VFS layer that
 * writev goes through (vfs_writev, fdget_pos in the kernel's profile). Returns
 * how many buffers went out whole and sets *first_off to what went out of the
 * next; counts sock->bytes_written; sets *failed on an error other than
 * EAGAIN. The owner hands what is left to h2o_socket_write. */
size_t lg_sock_send_now(h2o_socket_t *sock, const h2o_iovec_t *bufs, size_t cnt, size_t *first_off, int *failed);

/* Frees the calling thread's recycled read buffers (before it exits). */
void lg_sock_thread_exit(void);

#endif
