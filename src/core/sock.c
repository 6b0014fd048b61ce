/*
 * Bounded reading of plain sockets (see include/legate/sock.h).
 */
#include <errno.h>
#include <sys/socket.h>
#include "legate/sock.h"

void lg_sock_read_bounded(h2o_socket_t *sock)
{
    if (sock->ssl == NULL)
        h2o_socket_dont_read(sock, 1);
}

const char *lg_sock_read(h2o_socket_t *sock, const char *err, size_t want)
{
    if (err != NULL || sock->ssl != NULL)
        return err;
    if (want < LG_SOCK_READ_MIN)
        want = LG_SOCK_READ_MIN;
    else if (want > LG_SOCK_READ_MAX)
        want = LG_SOCK_READ_MAX;
    h2o_iovec_t room = h2o_buffer_reserve(&sock->input, want);
    if (room.base == NULL)
        return h2o_socket_error_out_of_memory;
    ssize_t n;
    /* recv, not read: the socket call skips the VFS layer (vfs_read in the kernel profile) */
    while ((n = recv(h2o_socket_get_fd(sock), room.base, room.len < LG_SOCK_READ_MAX ? room.len : LG_SOCK_READ_MAX, 0)) ==
               -1 &&
           errno == EINTR)
        ;
    if (n > 0) {
        sock->input->size += (size_t)n;
        return NULL;
    }
    if (n == 0)
        return h2o_socket_error_closed;
    return errno == EAGAIN || errno == EWOULDBLOCK ? NULL : h2o_socket_error_io;
}
