"""A small real HTTP server speaking the OpenAI chat-completions and completions protocol, on 127.0.0.1.

Tests give it a `responder(kind, body) -> str | dict | (status, message)` that writes the reply, and
may queue what the next requests get (`fail_next(status, retry_after=...)`, `slow_next(seconds)`,
`reply_next(text)`) to exercise retries, timeouts and garbage. Every request is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class OpenAIStub:
    def __init__(self, responder=None):
        self.responder = responder or (lambda kind, body: "ステップごとに考えます。3+4=7\n解答: 7")
        self.requests: list[dict] = []
        self.failures: deque = deque()
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    return self._send(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})
                self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with stub.lock:
                    stub.requests.append({"path": self.path, "body": body,
                                          "auth": self.headers.get("Authorization")})
                    failure = stub.failures.popleft() if stub.failures else None
                reply = None
                if failure:
                    kind, arg = failure
                    if kind == "slow":
                        time.sleep(arg)
                    elif kind == "reply":
                        reply = arg
                    else:
                        headers = {"Retry-After": str(arg)} if arg is not None else {}
                        return self._send(kind, {"error": {"message": f"stub failure {kind}", "type": "stub"}},
                                          headers)
                kind = "chat" if self.path.endswith("/chat/completions") else "completions"
                if reply is None:
                    reply = stub.responder(kind, body)
                if isinstance(reply, tuple):  # (status, error message): the responder refuses
                    return self._send(reply[0], {"error": {"message": reply[1], "type": "invalid_request_error"}})
                text = reply if isinstance(reply, str) else json.dumps(reply, ensure_ascii=False)
                usage = {"prompt_tokens": 10, "completion_tokens": max(1, len(text) // 2),
                         "total_tokens": 10 + max(1, len(text) // 2)}
                if kind == "chat":
                    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                    obj = "chat.completion"
                else:
                    choice = {"index": 0, "finish_reason": "stop", "text": text, "logprobs": None}
                    obj = "text_completion"
                self._send(200, {"id": "stub-1", "object": obj, "created": int(time.time()),
                                 "model": body.get("model", "stub"), "choices": [choice], "usage": usage})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def fail_next(self, status: int, retry_after: float | None = None, times: int = 1):
        for _ in range(times):
            self.failures.append((status, retry_after))

    def reply_next(self, text: str, times: int = 1):
        for _ in range(times):
            self.failures.append(("reply", text))

    def slow_next(self, seconds: float, times: int = 1):
        for _ in range(times):
            self.failures.append(("slow", seconds))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def stand_in_judge(kind, body):
    """A judge for trying `errors` offline: a category from a hash of the prompt (numbers meaningless)."""
    prompt = body["messages"][-1]["content"] if body.get("messages") else body.get("prompt", "")
    return {"category": "ABC"[sum(map(ord, prompt)) % 3], "reason": "stand-in judge: category from a hash"}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="A local OpenAI-compatible stand-in judge on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    stub = OpenAIStub(stand_in_judge)
    stub.server.server_close()
    stub.server = ThreadingHTTPServer(("127.0.0.1", args.port), stub.server.RequestHandlerClass)
    print(f"stand-in judge at http://127.0.0.1:{args.port}/v1 (Ctrl-C stops it)", flush=True)
    try:
        stub.server.serve_forever()
    except KeyboardInterrupt:
        pass
