"""The direct token path's two ends (workers/direct.py) over a real socketpair, no model: the Framing writes the
bytes the relayed stream would, the worker's Writer holds tokens until the daemon decides, never blocks on a
full socket (the rest comes back as pending bytes), and notices a client that hung up."""

from __future__ import annotations

import asyncio
import json
import os
import socket

import pytest

from swarm_edge.api.openai import _chunks, _Reply
from swarm_edge.errors import ConfigError
from swarm_edge.events import Token
from swarm_edge.workers.direct import TEXT, Framing, Writer, chunk, enabled, pending


def _unchunk(raw: bytes) -> bytes:
    """An HTTP/1.1 chunked body back to its bytes (every chunk complete)."""
    out, i = b"", 0
    while i < len(raw):
        j = raw.index(b"\r\n", i)
        size = int(raw[i:j], 16)
        out += raw[j + 2:j + 2 + size]
        assert raw[j + 2 + size:j + 4 + size] == b"\r\n"
        i = j + 4 + size
    return out


async def _relayed_pieces(reply: _Reply, texts: list[str]) -> bytes:
    async def events():
        for t in texts:
            yield Token(t)
    out = b""
    async for piece in _chunks(reply, "m", events(), include_usage=False):
        if piece.startswith(b"data: [DONE]"):
            break
        out += piece
    return out


def test_the_framing_writes_what_the_relay_writes():
    reply = _Reply("chat")
    texts = ["Hel", "lo \"quoted\" \\ ", "ünï\u2028", "\n"]
    relayed = asyncio.run(_relayed_pieces(reply, texts))
    framing = reply.framing("m")
    direct = framing.first.encode() + b"".join(framing.piece(t) for t in texts)
    assert direct == relayed
    for line in direct.split(b"\n\n")[:-1]:
        json.loads(line.removeprefix(b"data: "))


def test_a_framing_without_the_token_slot_is_refused():
    with pytest.raises(ValueError):
        Framing('{"x":1}')


def test_the_writer_holds_tokens_until_told_and_relays_them_if_told_so():
    w = Writer()
    w.token("a")
    w.token("b")
    assert w.held == ["a", "b"] and not w.decided
    assert w.decide(None, None) == ["a", "b"] and w.relaying


def test_the_writer_writes_held_then_new_tokens_as_chunks():
    ours, theirs = socket.socketpair()
    try:
        w = Writer()
        w.token("a")
        framing = Framing(json.dumps({"t": TEXT}), first="<")
        assert w.decide(framing.wire(), os.dup(ours.fileno())) == []
        w.token("b")
        end = w.close()
        assert pending({"direct": end}) == b"" and end["gone"] is False and w.fd is None
        assert _unchunk(theirs.recv(1 << 16)) == b'<{"t": "a"}{"t": "b"}'
        assert w.sent()["text"] == "ab" and w.sent()["t_first"] is not None
    finally:
        ours.close()
        theirs.close()


def _small_socket_writer() -> tuple[socket.socket, socket.socket, Writer]:
    """A socketpair whose sending side buffers little, and a Writer decided onto a copy of it."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    w = Writer()
    w.decide(Framing(json.dumps({"t": TEXT})).wire(), os.dup(ours.fileno()))
    return ours, theirs, w


def test_a_full_socket_never_blocks_the_writer_and_the_rest_comes_back():
    ours, theirs, w = _small_socket_writer()
    try:
        for i in range(2000):  # ~40 KB: far more than the socket takes while nobody reads
            w.token(f"token {i:04d} ")
        assert w.out  # it kept the rest instead of waiting
        end = w.close()
        got = b""
        theirs.settimeout(0.5)
        while True:
            try:
                data = theirs.recv(1 << 16)
            except TimeoutError:
                break
            if not data:
                break
            got += data
        body = _unchunk(got + pending({"direct": end}))
        assert body == b"".join(json.dumps({"t": f"token {i:04d} "}).encode() for i in range(2000))
    finally:
        ours.close()
        theirs.close()


def test_a_client_that_hung_up_is_noticed():
    ours, theirs = socket.socketpair()
    w = Writer()
    w.decide(Framing(json.dumps({"t": TEXT})).wire(), os.dup(ours.fileno()))
    ours.close()
    theirs.close()
    w.token("a")
    assert w.gone and w.close()["gone"] is True


def test_chunk_and_the_switch():
    assert chunk(b"abc") == b"3\r\nabc\r\n"
    assert enabled({}) and not enabled({"SWARM_EDGE_DIRECT": "off"}) and enabled({"SWARM_EDGE_DIRECT": "ON"})
    with pytest.raises(ConfigError, match="SWARM_EDGE_DIRECT"):
        enabled({"SWARM_EDGE_DIRECT": "maybe"})


def test_the_writer_says_when_a_chunk_may_be_half_written_and_when_it_is_not():
    ours, theirs, w = _small_socket_writer()
    try:
        w.token("a")
        assert w.backed_change() is None  # all written: nothing to say
        changes = []
        for i in range(2000):
            w.token(f"token {i:04d} ")
            if (c := w.backed_change()) is not None:
                changes.append(c)
        assert changes == [True]  # said once, when the socket filled up
        theirs.settimeout(0.5)
        while True:  # the client catches up
            try:
                if not theirs.recv(1 << 16):
                    break
            except TimeoutError:
                break
            w.token("more")
            if (c := w.backed_change()) is not None:
                changes.append(c)
            if not w.out:
                break
        assert changes == [True, False]
        w.close()
    finally:
        ours.close()
        theirs.close()


def test_a_refused_framing_does_not_leak_the_descriptor():
    ours, theirs = socket.socketpair()
    fd = os.dup(ours.fileno())
    w = Writer()
    with pytest.raises(ValueError):
        w.decide({"template": "no slot", "first": ""}, fd)
    w.close()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by the writer
    ours.close()
    theirs.close()


def _pipe():
    """The daemon's and the worker's ends of a worker pipe (multiprocessing's, over a real socketpair)."""
    import multiprocessing

    return multiprocessing.Pipe()


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_the_orders_thread_reads_the_hand_over_as_it_comes_and_stops_at_a_cancel():
    from swarm_edge.workers.direct import Orders, send_sink

    daemon, worker = _pipe()
    client, server = socket.socketpair()
    orders = Orders(worker)
    assert orders.next(wait=False) is None
    send_sink(daemon, os.getpid(), Framing('"\\u0000"'), server.fileno())
    msg = orders.next(wait=True)
    assert msg["kind"] == "sink" and msg["framing"]["template"] == '"\\u0000"'
    fd = msg["_fd"]
    assert fd != server.fileno() and _fd_open(fd)  # a descriptor of its own, received over SCM_RIGHTS
    os.write(fd, b"hi")
    assert client.recv(2) == b"hi"
    os.close(fd)
    daemon.send_bytes(json.dumps({"kind": "cancel"}).encode())
    assert orders.next(wait=True) == {"kind": "cancel"}
    daemon.send_bytes(json.dumps({"kind": "generate"}).encode())  # the thread has stopped reading: the next
    assert orders.stop() == []                                     # order is the main thread's
    assert json.loads(worker.recv_bytes()) == {"kind": "generate"}
    for s in (client, server):
        s.close()


def test_stopping_the_orders_thread_gives_back_what_nobody_took():
    from swarm_edge.workers.direct import Orders, send_sink

    daemon, worker = _pipe()
    client, server = socket.socketpair()
    orders = Orders(worker)
    send_sink(daemon, os.getpid(), Framing('"\\u0000"'), server.fileno())
    daemon.send_bytes(json.dumps({"kind": "close"}).encode())
    while len(orders.got) < 2:  # both read by the thread, neither taken
        orders._arrived.wait(1)
    left = orders.stop()
    assert [m["kind"] for m in left] == ["sink", "close"] and _fd_open(left[0]["_fd"])
    os.close(left[0]["_fd"])
    for s in (client, server):
        s.close()


def test_the_daemon_gone_is_a_cancel_and_stop_returns_at_once():
    from swarm_edge.workers.direct import Orders

    daemon, worker = _pipe()
    orders = Orders(worker)
    daemon.close()
    assert orders.next(wait=True) == {"kind": "cancel"}
    assert orders.stop() == []
    assert orders.next(wait=True) == {"kind": "cancel"}  # the thread has ended: a wait never hangs


def test_a_hand_over_whose_descriptor_does_not_come_fails_the_generation_at_once():
    from swarm_edge.errors import InferenceError
    from swarm_edge.workers.direct import Orders

    daemon, worker = _pipe()
    orders = Orders(worker)
    daemon.send_bytes(json.dumps({"kind": "sink", "fd": True, "framing": None}).encode())
    daemon.send_bytes(b"no descriptor with this")  # bytes where SCM_RIGHTS should have been
    with pytest.raises(InferenceError, match="orders failed"):
        orders.next(wait=True)
    with pytest.raises(InferenceError):
        orders.next(wait=False)  # the model's loop sees it at its next token too
    assert orders.stop() == []
