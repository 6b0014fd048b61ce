/*
 * Bounded reading of plain and TLS sockets (see include/legate/sock.h).
 */
#include <errno.h>
#include <sys/socket.h>
#include "legate/sock.h"
#include "legate/tls.h"

/* Body reads go into LG_SOCK_READ_MAX-byte buffers recycled per thread, as
 * libh2o recycles its 8 KiB socket buffers: a buffer of another size would be
 * malloc'd and freed per read, and a worker's malloc arena gives the top of its
 * heap back on such frees (an madvise per read, then page faults). */
static __thread h2o_buffer_prototype_t read_prototype = {{16}, {LG_SOCK_READ_MAX}};

void lg_sock_read_bounded(h2o_socket_t *sock)
{
    h2o_socket_dont_read(sock, 1);
}

h2o_iovec_t lg_sock_room(h2o_buffer_t **buf, size_t want)
{
    if (want < LG_SOCK_READ_MIN)
        want = LG_SOCK_READ_MIN;
    h2o_iovec_t room;
    if ((*buf)->size == 0 && want > h2o_socket_buffer_prototype._initial_buf.capacity) {
        if ((*buf)->bytes != NULL)
            h2o_buffer_dispose(buf);
        h2o_buffer_init(buf, &read_prototype);
        room = h2o_buffer_reserve(buf, LG_SOCK_READ_MAX);
    } else {
        /* a head, or bytes the owner has not parsed yet: the room there is, grown only below LG_SOCK_READ_MIN */
        room = h2o_buffer_reserve(buf, LG_SOCK_READ_MIN);
    }
    if (room.len > want)
        room.len = want;
    return room;
}

h2o_buffer_t *lg_sock_detach_input(h2o_buffer_t **buf, size_t from)
{
    h2o_buffer_t *old = *buf;
    h2o_buffer_init(buf, &read_prototype);
    size_t rest = old->size - from;
    if (rest != 0) {
        h2o_iovec_t dst = h2o_buffer_reserve(buf, rest);
        memcpy(dst.base, old->bytes + from, rest);
        (*buf)->size += rest;
    }
    return old;
}

const char *lg_sock_recv(int fd, h2o_buffer_t **buf, size_t want)
{
    h2o_iovec_t room = lg_sock_room(buf, want);
    if (room.base == NULL)
        return h2o_socket_error_out_of_memory;
    ssize_t n;
    /* recv, not read: the socket call skips the VFS layer (vfs_read in the kernel profile) */
    while ((n = recv(fd, room.base, room.len, 0)) == -1 && errno == EINTR)
        ;
    if (n > 0) {
        (*buf)->size += (size_t)n;
        return NULL;
    }
    if (n == 0)
        return h2o_socket_error_closed;
    return errno == EAGAIN || errno == EWOULDBLOCK ? NULL : h2o_socket_error_io;
}

void lg_sock_thread_exit(void)
{
    while (read_prototype.allocator.cnt != 0)
        free(h2o_mem_alloc_recycle(&read_prototype.allocator, 0));
}

const char *lg_sock_read(h2o_socket_t *sock, const char *err, size_t want)
{
    if (err != NULL)
        return err;
    if (want > LG_SOCK_READ_MAX)
        want = LG_SOCK_READ_MAX;
    if (sock->ssl != NULL)
        return lg_tls_read(sock, want);
    return lg_sock_recv(h2o_socket_get_fd(sock), &sock->input, want);
}

size_t lg_sock_send_now(h2o_socket_t *sock, const h2o_iovec_t *bufs, size_t cnt, size_t *first_off, int *failed)
{
    int fd = h2o_socket_get_fd(sock);
    size_t i = 0;
    while (i != cnt) {
        struct iovec iov[64];
        size_t n = 0;
        for (; n != LG_ARRAY_SIZE(iov) && i + n != cnt; ++n) {
            size_t off = n == 0 ? *first_off : 0;
            iov[n] = (struct iovec){bufs[i + n].base + off, bufs[i + n].len - off};
        }
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = n};
        ssize_t w;
        while ((w = n == 1 ? send(fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL) : sendmsg(fd, &msg, MSG_NOSIGNAL)) == -1 &&
               errno == EINTR)
            ;
        if (w <= 0) {
            if (w == -1 && errno != EAGAIN)
                *failed = 1;
            break;
        }
        sock->bytes_written += (size_t)w;
        for (size_t left = (size_t)w; left != 0 && i != cnt;) {
            size_t rest = bufs[i].len - *first_off;
            if (left < rest) {
                *first_off += left;
                left = 0;
            } else {
                left -= rest;
                *first_off = 0;
                ++i;
            }
        }
    }
    return i;
}
