"""A TCP fault proxy for partition tests (a tiny stand-in for Toxiproxy).

Put a ``FaultProxy`` between a client and a server (relay and Mosquitto, RabbitMQ, an
HTTP server, ...), point the client at ``proxy.host:proxy.port`` and break the network on
demand from the test thread::

    with FaultProxy("127.0.0.1", broker.port) as proxy:
        ...                              # client connects to proxy.port
        proxy.set_mode("blackhole")      # pull the cable
        proxy.set_mode("pass")           # plug it back in

The proxy runs its own asyncio loop in a background thread. Every control method is
thread-safe and synchronous: when it returns, the change is in effect (e.g. after
``set_mode("reset")`` every RST has been sent).

Modes
-----
``pass``
    Bytes flow both ways (after ``set_latency`` seconds per chunk, each direction).
    An EOF from one side is passed on as a half-close (``shutdown(SHUT_WR)``); a reset or
    error on either side resets the other side too. New clients get a fresh upstream
    connection; if that connection fails the client is reset (as in ``reset`` mode).
``stall``
    Connections stay open but no byte moves in either direction. Nothing is dropped: the
    proxy stops *reading*, so data waits in kernel buffers (only chunks already read are
    held in the proxy: one or two per direction, or what was in flight under latency)
    and TCP flow control eventually blocks senders.
    EOFs and resets from the peers are not noticed either, exactly like a frozen
    network. New clients are accepted and get an upstream connection, but nothing flows.
``blackhole``
    Like ``stall`` for existing connections, and new clients are accepted by the kernel
    (their ``connect()`` succeeds — a listening socket always completes the handshake)
    but the proxy neither reads from them nor connects upstream: the server never sees
    them. Nobody gets a FIN or RST: to both peers it looks like a pulled cable.
``reset``
    Every open connection is closed with RST on both sides (SO_LINGER 0), and every new
    client is accepted and immediately reset. The client's TCP handshake completes (the
    kernel does it), so usually ``connect()`` succeeds and the first ``recv``/``send``
    fails with ``ConnectionResetError`` (``ECONNRESET``); on loopback the RST can arrive
    before a ``connect()`` with a timeout returns, which then raises it instead. Existing
    clients see ``ConnectionResetError`` on their next ``recv`` (never a clean ``b""``).

Back to ``pass``: stalled and blackholed connections *resume* — buffered bytes are
delivered in order and clients held by ``blackhole`` are connected upstream only then (as
if TCP retransmissions got through after the cable came back). Connections reset by
``reset``/``reset_all`` are gone for good; new connections work normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar, get_args

Mode = Literal["pass", "stall", "reset", "blackhole"]
MODES: Final = frozenset(get_args(Mode))

_CHUNK: Final = 65536
# Chunks a direction may hold between reading and forwarding (only > 1 with latency):
# bounded so a slow receiver pushes back on the sender instead of filling our memory.
_MAX_IN_FLIGHT: Final = 64
_CONTROL_TIMEOUT: Final = 10.0

_T = TypeVar("_T")


def _close_with_rst(sock: socket.socket) -> None:
    """Close ``sock`` so the peer gets RST, not FIN (SO_LINGER on, timeout 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass(eq=False)
class _Conn:
    """One client connection and (once made) its upstream connection."""

    client: socket.socket
    upstream: socket.socket | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.client, self.upstream) if s is not None]


class FaultProxy:
    """A TCP proxy from ``host:port`` (127.0.0.1, free port by default) to the upstream.

    Contract: see the module docstring for what each mode does. Create, ``start()``
    (or use as a context manager), control from any thread, ``stop()``. ``stop()`` resets
    every open connection, closes the listener and joins the thread; it is idempotent.
    ``port`` is ``listen_port``, or 0 until ``start()`` binds a free one; a proxy
    started again after ``stop()`` listens on the same port (mode, latency and
    ``connections`` carry over).
    """

    host: str
    port: int

    def __init__(
        self, upstream_host: str, upstream_port: int, listen_port: int | None = None
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = "127.0.0.1"
        self.port = listen_port or 0
        self._mode: Mode = "pass"
        self._latency = 0.0
        self._accepted = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # Loop-side state, created and touched only in the proxy thread.
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._conns: set[_Conn] = set()
        self._flowing: asyncio.Event | None = None  # set iff mode == "pass"
        self._admitting: asyncio.Event | None = None  # set iff new conns may go upstream

    # -- public control API (any thread) --------------------------------------------

    @property
    def mode(self) -> Mode:
        """The current mode."""
        return self._mode

    @property
    def latency(self) -> float:
        """The current one-way delay per chunk, in seconds."""
        return self._latency

    @property
    def connections(self) -> int:
        """How many client connections the proxy has accepted so far (any mode)."""
        return self._accepted  # an int written only by the loop thread: atomic to read

    @property
    def open_connections(self) -> int:
        """How many client connections are currently open through the proxy."""
        return self._call(self._count_open())

    def start(self) -> None:
        """Bind the listening socket (so ``port`` is known) and start the proxy thread."""
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # So a proxy restarted on the same listen_port is not blocked by TIME_WAIT.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(128)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run_loop, name=f"FaultProxy:{self.port}", daemon=True
        )
        self._thread.start()
        self._call(self._begin())

    def stop(self) -> None:
        """Reset every connection, stop listening, stop the loop and join the thread."""
        if self._thread is None or self._loop is None:
            return
        try:
            self._call(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=_CONTROL_TIMEOUT)
            if self._thread.is_alive():
                raise RuntimeError("FaultProxy thread did not stop")
            self._thread = None
            self._loop = None

    def set_mode(self, mode: Mode) -> None:
        """Switch to ``mode`` ("pass", "stall", "reset" or "blackhole"); see module doc."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(MODES)}")
        self._call(self._apply_mode(mode))

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk by ``seconds`` in each direction (round trip: twice that).

        Applies to chunks read after the call. The delay is a latency, not a rate
        limit: chunks are pipelined, each forwarded ``seconds`` after it was read.
        """
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency = float(seconds)

    def reset_all(self) -> None:
        """Close every open connection with RST on both sides; the mode is unchanged."""
        self._call(self._reset_conns())

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- thread plumbing --------------------------------------------------------------

    def _run_loop(self) -> None:
        """Thread body: run the loop until ``stop()``, then close it in this thread."""
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # An upstream given by name resolves in the default executor: join its threads.
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the proxy loop and wait for its result (from another thread)."""
        if self._loop is None:
            coro.close()  # never awaited: close it so Python does not warn
            raise RuntimeError("FaultProxy is not running")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=_CONTROL_TIMEOUT)

    # -- loop side: lifecycle -----------------------------------------------------------

    async def _begin(self) -> None:
        self._flowing = asyncio.Event()
        self._admitting = asyncio.Event()
        self._sync_events()
        self._accept_task = asyncio.create_task(self._accept_loop())

    async def _shutdown(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            await asyncio.gather(self._accept_task, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        await self._reset_conns()

    async def _count_open(self) -> int:
        return len(self._conns)

    async def _apply_mode(self, mode: Mode) -> None:
        self._mode = mode
        self._sync_events()
        if mode == "reset":
            await self._reset_conns()

    def _sync_events(self) -> None:
        assert self._flowing is not None and self._admitting is not None
        _toggle(self._flowing, self._mode == "pass")
        _toggle(self._admitting, self._mode in ("pass", "stall"))

    async def _reset_conns(self) -> None:
        """Cancel every connection task; each resets its sockets as it unwinds."""
        tasks = [c.task for c in self._conns if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- loop side: connections ---------------------------------------------------------

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            client, _addr = await loop.sock_accept(self._listener)
            self._accepted += 1
            if self._mode == "reset":
                _close_with_rst(client)
                continue
            conn = _Conn(client)
            self._conns.add(conn)
            conn.task = asyncio.create_task(self._serve(conn))

    async def _serve(self, conn: _Conn) -> None:
        """Connect upstream when admitted, then pump both ways until both sides are done.

        Normal end (EOF both ways): close both sockets (the FINs were already passed on).
        Any error, or cancellation by reset/stop: close both sockets with RST.
        """
        assert self._admitting is not None
        loop = asyncio.get_running_loop()
        clean = False
        try:
            await self._admitting.wait()  # blackhole holds new clients here
            conn.upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            conn.upstream.setblocking(False)
            await loop.sock_connect(conn.upstream, self.upstream)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(conn.client, conn.upstream))
                group.create_task(self._pump(conn.upstream, conn.client))
            clean = True
        except* OSError:
            pass  # a peer reset/refused: reset the other side too (below)
        finally:
            for sock in conn.sockets():
                if clean:
                    sock.close()
                else:
                    _close_with_rst(sock)
            self._conns.discard(conn)

    async def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Forward ``src`` -> ``dst`` until EOF, honouring mode and latency.

        A reader stage timestamps chunks and a writer stage forwards each one when its
        delay has passed, so latency does not throttle throughput. Both stages wait
        while the proxy is not in "pass" mode.
        """
        pipe: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_MAX_IN_FLIGHT)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._read_into(src, pipe))
            group.create_task(self._write_from(pipe, dst))

    async def _read_into(
        self, src: socket.socket, pipe: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        assert self._flowing is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._flowing.wait()
            data = await loop.sock_recv(src, _CHUNK)
            await pipe.put((loop.time() + self._latency, data))
            if not data:
                return  # EOF: the writer passes it on as a half-close

    async def _write_from(
        self, pipe: asyncio.Queue[tuple[float, bytes]], dst: socket.socket
    ) -> None:
        assert self._flowing is not None
        loop = asyncio.get_running_loop()
        while True:
            due, data = await pipe.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            # A chunk read just before a stall is held here, never dropped.
            await self._flowing.wait()
            if not data:
                dst.shutdown(socket.SHUT_WR)
                return
            await loop.sock_sendall(dst, data)


def _toggle(event: asyncio.Event, on: bool) -> None:
    if on:
        event.set()
    else:
        event.clear()


__all__ = ["MODES", "FaultProxy", "Mode"]
