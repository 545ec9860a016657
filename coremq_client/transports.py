"""Byte streams for the blocking client: plain TCP as it is, TLS made safe for many threads.

The blocking client reads in one thread while any number of others write. A
plain socket allows that: ``recv`` and ``sendall`` on one socket from two
threads are independent system calls. An :class:`ssl.SSLSocket` does not:
OpenSSL forbids using one SSL object from two threads at once, and with
TLS 1.3 a read may have to write (a key update, session tickets) and a write
may have to read, so a ``recv`` racing a ``sendall`` can corrupt the
connection's state (seen as the connection closing right after it opened).

:class:`TLSStream` therefore makes every SSL call under one lock and never
blocks while holding it: its socket is non-blocking, an SSL call that would
block (``SSLWantReadError``, ``SSLWantWriteError``) releases the lock and
waits (``poll`` for the reader, ``select`` for a writer) for the socket to
become readable or writable, then tries again; the reader waits first when
nothing decrypted is buffered. ``settimeout`` keeps the socket's meaning: ``recv`` waits at
most that long for data, ``sendall`` at most that long in all, and both raise
:class:`TimeoutError` when it runs out. :class:`SocketStream` hands plain
TCP's calls straight to the socket, at no cost.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time

__all__ = ["Stream", "SocketStream", "TLSStream", "open_stream"]

#: The most plaintext handed to one SSL write: a write that must wait is
#: retried with exactly the same bytes, and smaller writes let the reader in between.
_TLS_WRITE_CHUNK = 2**16


class SocketStream:
    """A plain TCP socket: ``recv``, ``sendall`` and ``settimeout`` are the socket's own."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recv = sock.recv
        self.sendall = sock.sendall
        self.settimeout = sock.settimeout

    def shutdown(self, how: int) -> None:
        """``socket.shutdown``: ``SHUT_WR`` half-closes, ``SHUT_RDWR`` also wakes a blocked ``recv``."""
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()


class TLSStream:
    """An :class:`ssl.SSLSocket` shared by one reading thread and many writing threads.

    ``sock`` must have completed its handshake. Writers are expected to be
    serialised by the caller (frames must not interleave); the lock here
    only keeps the reader's and a writer's SSL calls apart.
    """

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self._timeout = sock.gettimeout()
        self._lock = threading.Lock()  # held only around non-blocking SSL calls
        # SSL_write may read records from the socket (during a renegotiation, TLS 1.2): if it
        # reads application data, the reader waiting in select() must be woken to take it.
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._wake_fd = self._wake_reader.fileno()
        self._reader_poll = select.poll()  # used by the one reading thread only
        self._reader_poll.register(sock.fileno(), select.POLLIN)
        self._reader_poll.register(self._wake_fd, select.POLLIN)
        sock.setblocking(False)

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes of plaintext; ``b""`` at the end of the stream."""
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        with self._lock:
            buffered = self.sock.pending()
        if not buffered:
            # Nothing decrypted is waiting: wait for the socket before trying (a read that
            # would block costs a failed system call more, on every reply).
            self._wait(False, deadline, wakeable=True)
        while True:
            with self._lock:
                try:
                    return self.sock.recv(size)
                except ssl.SSLWantReadError:
                    writing = False
                except ssl.SSLWantWriteError:
                    writing = True
            self._wait(writing, deadline, wakeable=True)

    def sendall(self, data: bytes) -> None:
        """Send all of ``data`` (within the timeout, in all), or raise."""
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        view = memoryview(data)
        for start in range(0, len(view), _TLS_WRITE_CHUNK):
            chunk = view[start:start + _TLS_WRITE_CHUNK]
            while True:
                with self._lock:
                    try:
                        self.sock.send(chunk)  # all of it: OpenSSL writes whole buffers
                        woke = self.sock.pending() > 0
                        break
                    except ssl.SSLWantWriteError:
                        writing = True
                    except ssl.SSLWantReadError:
                        writing = False
                self._wait(writing, deadline, wakeable=False)
            if woke:
                self._wake()

    def _wait(self, writing: bool, deadline: float | None, *, wakeable: bool) -> None:
        """Wait until the socket is writable (or readable), or raise TimeoutError at ``deadline``.

        ``wakeable`` (the reader) also wakes when a writer found decrypted data waiting.
        """
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError("timed out")
        if self.sock.fileno() < 0:
            raise OSError("the socket is closed")
        if wakeable and not writing:
            ready = self._reader_poll.poll(None if left is None else left * 1000)  # the reader's own poll object
            woken = any(fd == self._wake_fd for fd, _ in ready)
        else:
            sock, wake = [self.sock], [self._wake_reader] if wakeable else []
            readable, writable, _ = select.select(wake if writing else sock + wake, sock if writing else [], [], left)
            ready, woken = readable + writable, self._wake_reader in readable
        if not ready:
            raise TimeoutError("timed out")
        if woken:
            try:
                self._wake_reader.recv(64)
            except BlockingIOError:
                pass

    def _wake(self) -> None:
        try:
            self._wake_writer.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake, or closed

    def shutdown(self, how: int) -> None:
        """Shut the TCP connection down under TLS, keeping the SSL state (see ``close``).

        ``SSLSocket.shutdown`` would drop the SSL object that the reader is
        using; the raw socket's ``shutdown`` sends the FIN (``SHUT_WR``) or
        also wakes the reader's ``select`` (``SHUT_RDWR``), which then reads
        the end of the stream.
        """
        socket.socket.shutdown(self.sock, how)

    def close(self) -> None:
        with self._lock:
            self.sock.close()
        self._wake_reader.close()
        self._wake_writer.close()


Stream = SocketStream | TLSStream


def open_stream(host: str, port: int, *, timeout: float | None, tls: ssl.SSLContext | None) -> Stream:
    """Connect to ``host:port`` (with TLS if ``tls``), within ``timeout``; raise OSError on failure.

    TCP_NODELAY is set: frames are whole when written, and replies should not wait.
    """
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is None:
            return SocketStream(sock)
        return TLSStream(tls.wrap_socket(sock, server_hostname=host))
    except BaseException:
        sock.close()
        raise
