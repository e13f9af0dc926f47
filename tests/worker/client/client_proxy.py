"""A small real HTTP/1.1 relay in front of a real worker, for the faults and headers a worker cannot produce on its
own: connections reset (before or after the request reached the worker), transient 503 answers with Retry-After,
and state-version headers added to the answers (the worker does not send them yet). It records the head of
every request it receives, so a test can see what the client sent on each attempt.

It understands just enough HTTP: a head, then a body of Content-Length bytes (the worker's answers and the
clients' requests are all framed so).
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field


@dataclass
class Seen:
    """One request as the proxy received it."""

    method: str
    target: str
    headers: dict[str, str]  # names lower-cased
    answer_headers: dict[str, str] = field(default_factory=dict)  # of the answer the client got, when it got one

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def answer_header(self, name: str) -> str | None:
        return self.answer_headers.get(name.lower())


@dataclass
class Faults:
    resets: int = 0  # reset the first N requests' connections...
    reset_after_forwarding: bool = False  # ...after the worker answered them (the answer is lost), else before
    unavailable: int = 0  # answer the first N requests (after any resets) 503 not_caught_up, not forwarding them
    retry_after: str = "0"
    answer_headers: dict[str, str] = field(default_factory=dict)  # set on every forwarded answer


def _read_message(reader) -> tuple[bytes, dict[str, str], bytes] | None:
    """(first line, headers lower-cased, body) of one HTTP message, None at the end of the stream."""
    first = reader.readline()
    if not first:
        return None
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    assert "chunked" not in headers.get("transfer-encoding", ""), "the proxy reads Content-Length bodies only"
    body = reader.read(int(headers.get("content-length", "0")))
    return first, headers, body


def _head(first: bytes, headers: dict[str, str], replace: dict[str, str] | None = None) -> bytes:
    """The message's head, with the headers of `replace` set (in place of any of the same name)."""
    merged = {**headers, **{k.lower(): v for k, v in (replace or {}).items()}}
    lines = [first.rstrip(b"\r\n").decode("latin-1")] + [f"{k}: {v}" for k, v in merged.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _reset(sock: socket.socket) -> None:
    """Closes with a TCP RST (SO_LINGER 0): the client sees 'connection reset', not an orderly close."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class FaultyProxy:
    def __init__(self, upstream_port: int, faults: Faults | None = None) -> None:
        self.upstream_port = upstream_port
        self.faults = faults or Faults()
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def __enter__(self) -> FaultyProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        from_client, from_upstream = client.makefile("rb"), upstream.makefile("rb")
        try:
            while (request := _read_message(from_client)) is not None:
                first, headers, body = request
                method, target, _ = first.decode("latin-1").split(" ", 2)
                with self._lock:
                    self.seen.append(Seen(method, target, headers))
                    index = len(self.seen) - 1
                faults = self.faults
                if index < faults.resets and not faults.reset_after_forwarding:
                    _reset(client)
                    return
                if faults.resets <= index < faults.resets + faults.unavailable:
                    payload = b'{"error": "not_caught_up", "detail": "state: catching up", "correlation_id": "p"}'
                    answer = {"content-type": "application/json", "content-length": str(len(payload))}
                    answer["retry-after"] = faults.retry_after
                    client.sendall(_head(b"HTTP/1.1 503 Service Unavailable", answer) + payload)
                    continue
                upstream.sendall(_head(first, headers) + body)
                answer_message = _read_message(from_upstream)
                assert answer_message is not None, "the worker closed the connection"
                status_line, answer_headers, answer_body = answer_message
                if index < faults.resets:  # reset after the worker applied the request: its answer is lost
                    _reset(client)
                    return
                replaced = {k.lower(): v for k, v in faults.answer_headers.items()}
                self.seen[index].answer_headers = {**answer_headers, **replaced}
                client.sendall(_head(status_line, answer_headers, faults.answer_headers) + answer_body)
        except OSError:
            pass
        finally:
            upstream.close()
            try:
                client.close()
            except OSError:
                pass
