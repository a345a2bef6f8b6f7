"""FaultProxy does what each mode promises, against a local threaded echo server."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.helpers.brokers import free_port
from tests.helpers.faultproxy import FaultProxy
from tests.helpers.wait import wait_until

# Short enough to keep the suite fast, long enough that "nothing arrived" means it.
QUIET = 0.5


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, EchoServer)
        with server.lock:
            server.accepted += 1
        sock: socket.socket = self.request
        try:
            while data := sock.recv(65536):
                sock.sendall(data)
        except OSError:
            pass  # the proxy reset us: that is what several tests do on purpose


class EchoServer(socketserver.ThreadingTCPServer):
    """Echoes every byte back; counts accepted connections. Closes after client EOF."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.lock = threading.Lock()
        self.accepted = 0

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    # Depends on ``echo``, so it is torn down first: stopping it ends every echo handler.
    with FaultProxy("127.0.0.1", echo.port) as p:
        yield p


def connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection((proxy.host, proxy.port), timeout=5)
    sock.settimeout(5)
    return sock


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return data


def roundtrip(sock: socket.socket, payload: bytes = b"ping") -> bytes:
    sock.sendall(payload)
    return recv_exact(sock, len(payload))


def assert_silent(sock: socket.socket) -> None:
    """Nothing arrives within QUIET seconds, and the connection was not closed (no FIN/RST)."""
    sock.settimeout(QUIET)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    sock.settimeout(5)


# -- pass -------------------------------------------------------------------------------


def test_pass_echoes_and_passes_half_close_on(proxy: FaultProxy, echo: EchoServer) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock, b"hello") == b"hello"
        assert roundtrip(sock, b"x" * 200_000) == b"x" * 200_000
        sock.shutdown(socket.SHUT_WR)  # echo server sees EOF and closes; we see EOF
        assert sock.recv(1) == b""
    assert proxy.connections == 1
    assert echo.accepted == 1
    wait_until(lambda: proxy.open_connections == 0, 5, "the proxy to close the connection")


def test_unknown_mode_is_rejected(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        proxy.set_mode("drop")  # type: ignore[arg-type]


# -- stall --------------------------------------------------------------------------------


def test_stall_holds_bytes_without_closing_and_pass_resumes(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
        proxy.set_mode("stall")
        sock.sendall(b"held")
        assert_silent(sock)

        # New connections are accepted and reach upstream, but nothing flows.
        with connect(proxy) as late:
            wait_until(lambda: echo.accepted == 2, 5, "the second connection upstream")
            late.sendall(b"late")
            assert_silent(late)

            proxy.set_mode("pass")
            # Stall buffers: the bytes sent during the stall arrive after it.
            assert recv_exact(sock, 4) == b"held"
            assert recv_exact(late, 4) == b"late"
            assert roundtrip(sock) == b"ping"


# -- reset --------------------------------------------------------------------------------


def test_reset_rsts_existing_and_new_connections(proxy: FaultProxy, echo: EchoServer) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
        proxy.set_mode("reset")
        with pytest.raises(ConnectionResetError):
            sock.recv(1)

    # A new client's handshake completes (the kernel does it), then the proxy answers
    # with RST: the first recv fails — or connect() itself, when the RST beats it back.
    with pytest.raises(ConnectionResetError), connect(proxy) as fresh:
        fresh.recv(1)
    assert proxy.connections == 2
    assert echo.accepted == 1  # the reset client never reached upstream

    proxy.set_mode("pass")
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"


def test_reset_all_keeps_the_mode(proxy: FaultProxy) -> None:
    with connect(proxy) as a, connect(proxy) as b:
        assert roundtrip(a) == b"ping"
        assert roundtrip(b) == b"ping"
        proxy.reset_all()
        for sock in (a, b):
            with pytest.raises(ConnectionResetError):
                sock.recv(1)
    assert proxy.mode == "pass"
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"


def test_upstream_refusing_resets_the_client() -> None:
    # Nothing listens upstream. The RST may beat connect() back, as in reset mode.
    with (
        FaultProxy("127.0.0.1", free_port()) as proxy,
        pytest.raises(ConnectionResetError),
        connect(proxy) as sock,
    ):
        sock.recv(1)


# -- blackhole ------------------------------------------------------------------------------


def test_blackhole_is_a_pulled_cable_and_pass_plugs_it_back(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
        proxy.set_mode("blackhole")
        sock.sendall(b"lost?")
        assert_silent(sock)  # no reply, no FIN, no RST

        # connect() succeeds (kernel handshake) but the server never sees the client.
        with connect(proxy) as late:
            late.sendall(b"late")
            assert_silent(late)
            assert echo.accepted == 1
            assert proxy.connections == 2

            proxy.set_mode("pass")
            assert recv_exact(sock, 5) == b"lost?"
            assert recv_exact(late, 4) == b"late"
            assert echo.accepted == 2


# -- latency ------------------------------------------------------------------------------


def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    latency = 0.15
    proxy.set_latency(latency)
    with connect(proxy) as sock:
        started = time.monotonic()
        assert roundtrip(sock) == b"ping"
        elapsed = time.monotonic() - started
    # Request and reply are each delayed: at least twice the latency. Lower bound only.
    assert elapsed >= 2 * latency
    proxy.set_latency(0)
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"


# -- control from other threads, stop ---------------------------------------------------------


def test_mode_flapping_from_threads_loses_and_reorders_nothing(proxy: FaultProxy) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, position-dependent content
    received = bytearray()
    stop_flapping = threading.Event()

    def flap(modes: tuple[str, ...]) -> None:
        while not stop_flapping.is_set():
            for mode in modes:
                proxy.set_mode(mode)  # type: ignore[arg-type]
                time.sleep(0.005)

    flappers = [
        threading.Thread(target=flap, args=(("stall", "pass"),)),
        threading.Thread(target=flap, args=(("blackhole", "pass"),)),
    ]
    with connect(proxy) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        for t in [*flappers, sender]:
            t.start()
        try:
            time.sleep(0.2)
        finally:
            stop_flapping.set()
            for t in flappers:
                t.join()
        proxy.set_mode("pass")
        while len(received) < len(payload):
            chunk = sock.recv(65536)
            assert chunk, "connection closed mid-stream"
            received += chunk
        sender.join()
    assert bytes(received) == payload


def test_stop_resets_clients_and_closes_the_port(echo: EchoServer) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port)
    proxy.start()
    try:
        with connect(proxy) as sock:
            assert roundtrip(sock) == b"ping"
            proxy.stop()
            with pytest.raises(ConnectionResetError):
                sock.recv(1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((proxy.host, proxy.port), timeout=1).close()
    finally:
        proxy.stop()  # idempotent


def test_fixed_listen_port_and_restart_on_the_same_port(echo: EchoServer) -> None:
    port = free_port()
    proxy = FaultProxy("127.0.0.1", echo.port, listen_port=port)
    with proxy:
        assert proxy.port == port
        with connect(proxy) as sock:
            assert roundtrip(sock) == b"ping"
    with proxy:  # started again: same port, counters carry over
        assert proxy.port == port
        with connect(proxy) as sock:
            assert roundtrip(sock) == b"ping"
        assert proxy.connections == 2
