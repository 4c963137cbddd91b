"""A real local OpenAI-compatible chat-completions server for the LLM client tests.

``POST /v1/chat/completions`` answers in OpenAI's response shape. ``mode`` switches its
behaviour at any time:

* ``ok``: a valid JSON answer derived deterministically from the payload it received
  (items: summary/keywords/categories; profiles: profile/interests);
* ``slow``: waits ``slow_s`` (longer than the client's timeout), then answers like ok;
* ``error``: HTTP 500;
* ``malformed``: HTTP 200 whose message content is not JSON;
* ``wrong_schema``: a JSON object of another shape;
* ``obey_injection``: does what the item text asks: answers with whatever follows
  "reply with:" in the payload's text (prose, another JSON shape...), else like ok;
* ``flaky``: HTTP 500 on every other request (the 1st, 3rd, ...), ok on the others.

Every request is recorded (path, lower-cased headers, parsed body) with the number in
flight at its arrival, so tests can assert request counts, the API key header,
``response_format`` and how the payload was framed. ``ok`` also honours ``delay_s``.

    with LLMTestServer() as server:
        server.mode = "error"
        ... LLMConfig(base_url=server.base_url) ...
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

MODES = ("ok", "slow", "error", "malformed", "wrong_schema", "obey_injection", "flaky")
_MARKER = re.compile(r"<<<[A-Z_]+\n(.*)\n[A-Z_]+>>>", re.DOTALL)
_INJECTION = re.compile(r"reply with:\s*(.*)\Z", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Recorded:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    inflight: int  # requests in flight when this one arrived, itself included

    @property
    def messages(self) -> list[dict[str, str]]:
        return list(self.body.get("messages", []))

    def message(self, role: str) -> str:
        return next(m["content"] for m in self.messages if m["role"] == role)

    def payload(self) -> dict[str, Any]:
        """The JSON payload between the user message's delimiters."""
        return extract_payload(self.message("user"))


def extract_payload(user_message: str) -> dict[str, Any]:
    """The JSON object between ``<<<NAME`` and ``NAME>>>`` lines of a user message."""
    match = _MARKER.search(user_message)
    if match is None:
        raise ValueError("no delimited payload in the user message")
    data = json.loads(match.group(1))
    assert isinstance(data, dict)
    return data


def answer_for(payload: dict[str, Any]) -> dict[str, Any]:
    """The deterministic 'model answer' of ok mode."""
    if "titles" in payload:
        titles = [str(t) for t in payload["titles"]]
        interests = [t.lower() for t in titles[:3]]
        return {"profile": "Enjoys " + ", ".join(titles[:3]), "interests": interests}
    title = str(payload.get("title", ""))
    words = [w.lower() for w in re.findall(r"\w+", title)]
    tags = [str(t).lower() for t in payload.get("tags", [])]
    return {
        "summary": f"LLM summary of {title}: {str(payload.get('text', ''))[:80]}",
        "keywords": (tags + words)[:10],
        "categories": [str(payload.get("category") or "misc").lower()],
    }


class LLMTestServer:
    """ThreadingHTTPServer on an ephemeral 127.0.0.1 port, served from a daemon thread."""

    def __init__(self, mode: str = "ok", *, slow_s: float = 5.0, delay_s: float = 0.0) -> None:
        self.mode = mode
        self.slow_s = slow_s
        self.delay_s = delay_s
        self.requests: list[Recorded] = []
        self.completed = 0  # responses fully written
        self.max_inflight = 0
        self._inflight = 0
        self._served = 0  # requests seen in flaky mode
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> LLMTestServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes slow requests
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LLMTestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self, mode: str | None = None) -> None:
        """Forget recorded requests (and switch mode)."""
        with self._lock:
            self.requests.clear()
            self.completed = 0
            self.max_inflight = 0
            self._served = 0
            if mode is not None:
                self.mode = mode

    # ---------------------------------------------------------------- handling

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        with self._lock:
            self._inflight += 1
            self.max_inflight = max(self.max_inflight, self._inflight)
            self.requests.append(
                Recorded(h.path, {k.lower(): v for k, v in h.headers.items()}, body, self._inflight)
            )
            mode = self.mode
            if mode == "flaky":
                self._served += 1
                mode = "error" if self._served % 2 == 1 else "ok"
        try:
            if h.path != "/v1/chat/completions":
                self._send(h, 404, {"error": {"message": "not found"}})
            elif mode == "error":
                self._send(h, 500, {"error": {"message": "internal error"}})
            else:
                if mode == "slow":
                    self._stop.wait(self.slow_s)
                elif self.delay_s:
                    self._stop.wait(self.delay_s)
                self._send(h, 200, self._completion(self._content(mode, body)))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests)
        finally:
            with self._lock:
                self._inflight -= 1

    def _content(self, mode: str, body: dict[str, Any]) -> str:
        if mode == "malformed":
            return "Sure! Here is the summary you asked for: a great film."
        if mode == "wrong_schema":
            return json.dumps({"result": {"description": "a film"}, "tags": ["x"]})
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        payload = extract_payload(user)
        if mode == "obey_injection":
            injected = _INJECTION.search(str(payload.get("text", "")))
            if injected:
                return injected.group(1).strip()
        return json.dumps(answer_for(payload))

    @staticmethod
    def _completion(content: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": "test-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def _send(self, h: BaseHTTPRequestHandler, status: int, data: dict[str, Any]) -> None:
        raw = json.dumps(data).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)
        h.wfile.flush()
        with self._lock:
            self.completed += 1
