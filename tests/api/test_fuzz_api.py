"""Schemathesis against the daemon's own OpenAPI document (/openapi.json), on a real daemon with the real test
models, over the real Unix socket and the TCP listener: every operation, positive and negative bodies.

Checks on every answer: no 5xx (not_a_server_error), a status the document lists for the operation, its content
type, and its body against the documented schema (streams: every SSE event and every NDJSON line). Generations
are capped at CAP tokens (a body's max_tokens / num_predict, as pydantic would read it) so the fuzz exercises the
handlers, not inference time; half of the bodies and model paths get a real model id, past the 404. Every body the
daemon accepted goes again with a lone UTF-16 surrogate (a \\udXXX escape) in one of its strings, which
schemathesis never generates and Python's json reads. After a run the daemon must be alive and hold no lease,
queue entry or open stream.

`Campaign` is shared with benchmarks/fuzz_api.py (the >= 5,000-request campaign).
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import socket
import time
from collections import Counter, defaultdict
from typing import Any

import httpx2
import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import TypeAdapter, ValidationError
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import Daemon, private_root

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
CAP = 2             # tokens per generation
HANG_S = 60.0       # an answer slower than this is a hang (a first load on the shared 2-core machine takes ~20 s)
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
OPENAI_GENERATION = ("/v1/chat/completions", "/v1/completions")
OLLAMA_GENERATION = ("/api/chat", "/api/generate")
_INT = TypeAdapter(int)


def _read_int(value: Any) -> int | None:
    """`value` as the daemon's pydantic models read an int field, None if they refuse it."""
    try:
        return _INT.validate_python(value)
    except ValidationError:
        return None


def cap_tokens(path: str, body: Any) -> None:
    """Keep a generated body's generation short: max_tokens / max_completion_tokens / num_predict at most CAP
    (set when missing); values the daemon refuses anyway are left for it to refuse."""
    if not isinstance(body, dict):
        return
    if path in OPENAI_GENERATION:
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:  # null: the default
            body["max_tokens"] = CAP
        for key in ("max_tokens", "max_completion_tokens"):
            n = _read_int(body.get(key))
            if n is not None and n > CAP:
                body[key] = CAP
    elif path in OLLAMA_GENERATION:
        options = body.setdefault("options", {})
        if isinstance(options, dict):
            n = _read_int(options.get("num_predict"))
            if options.get("num_predict") is None or (n is not None and not 0 < n <= CAP):
                options["num_predict"] = CAP  # null or <= 0: the model's own (long) default


def inject_surrogate(body: Any, rng: random.Random) -> None:
    """Put a lone UTF-16 surrogate into one string of `body`: valid JSON (a \\udXXX escape) that Python's json
    reads into a str no UTF-8 encoder takes; schemathesis never generates one."""
    slots = []

    def walk(node):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            if isinstance(value, str):
                slots.append((node, key))
            walk(value)

    walk(body)
    if slots:
        node, key = rng.choice(slots)
        at = rng.randint(0, len(node[key]))
        node[key] = node[key][:at] + chr(rng.randint(0xD800, 0xDFFF)) + node[key][at:]


class Campaign:
    """Generated requests to one daemon, each checked; the tally of what came back."""

    def __init__(self, http: httpx2.Client, *, alive, headers: dict[str, str] | None = None,
                 timeout: float = HANG_S) -> None:
        self.http, self.alive, self.headers, self.timeout = http, alive, headers or {}, timeout
        self.doc = http.get("/openapi.json", headers=self.headers).raise_for_status().json()
        self.schema = schemathesis.openapi.from_dict(self.doc)
        self.operations = [r.ok() for r in self.schema.get_all_operations()]
        ids = [m["id"] for m in http.get("/v1/models", headers=self.headers).json()["data"]]
        self.models = ids + [i + ":latest" for i in ids]  # Ollama clients add the tag
        self.requests: Counter[str] = Counter()
        self.statuses: dict[str, Counter[int]] = defaultdict(Counter)
        self.failures: list[dict[str, Any]] = []
        self.hangs: list[dict[str, Any]] = []
        self.crashed: str | None = None
        self.slowest = 0.0
        self._items = {}  # NDJSON item validators, by path
        self._sent: str | None = None  # the body sent instead of the case's own

    def run(self, op, mode: GenerationMode, examples: int, seed: int = 0) -> None:
        """Up to `examples` generated requests to `op`; stops early once the daemon is gone."""
        rng = random.Random(seed)  # where the surrogate goes; Hypothesis's draws would favour the first string

        @hypothesis_seed(seed)
        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                  phases=["generate"])
        @given(data=st.data())
        def one(data):
            if self.crashed:
                return
            case = data.draw(op.as_strategy(generation_mode=mode))
            for where, key in ((case.body, "model"), (case.path_parameters, "model_id")):
                if isinstance(where, dict) and isinstance(where.get(key), str) and data.draw(st.booleans()):
                    where[key] = data.draw(st.sampled_from(self.models))
            cap_tokens(op.path, case.body)
            if self.check(op, case) == 200 and isinstance(case.body, dict | list):
                # the accepted body again with a lone surrogate in one of its strings (an invalid one would not
                # get as far); a copy, as schemathesis re-validates the case's own body as UTF-8
                wire = copy.deepcopy(case.body)
                inject_surrogate(wire, rng)
                self.check(op, case, wire)

        with contextlib.suppress(Unsatisfiable):  # nothing to make invalid in a GET without parameters
            one()

    def send(self, case, wire: Any = None) -> httpx2.Response:
        """The case as an HTTP request over this campaign's client (with body `wire` instead of its own if given)."""
        kw = case.as_transport_kwargs(base_url=str(self.http.base_url).rstrip("/"), headers=self.headers)
        if wire is not None:
            kw["json"] = wire
        # json.dumps escapes what is not ASCII, so a lone surrogate goes out as the \udXXX escape JSON allows
        body = {"content": json.dumps(kw["json"]).encode()} if "json" in kw else \
            {"content": kw["data"]} if "data" in kw else {}
        return self.http.request(kw["method"], kw["url"], headers=kw["headers"], params=kw.get("params") or None,
                                 timeout=self.timeout, **body)

    def check(self, op, case, wire: Any = None) -> int | None:
        """Send one case and record its status, and any failed check, hang or crash; the status."""
        self.requests[op.label] += 1
        self._sent = json.dumps(wire) if wire is not None else None
        t0 = time.monotonic()
        try:
            response = self.send(case, wire)
        except httpx2.TimeoutException:
            self.hangs.append({"operation": op.label, "request": self._request(case)})
            return None
        except httpx2.TransportError as exc:
            if not self.alive():
                self.crashed = f"{op.label}: the daemon died ({exc!r}); last request: {self._request(case)}"
            else:
                self._fail(op, case, "connection", f"{type(exc).__name__}: {exc}")
            return None
        finally:
            self.slowest = max(self.slowest, time.monotonic() - t0)
        self.statuses[op.label][response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except schemathesis.errors.FailureGroup as group:
            for failure in group.exceptions:
                self._fail(op, case, failure.title, failure.message, response)
        if response.status_code == 200 and response.headers.get("content-type", "").startswith("application/x-ndjson"):
            self._check_lines(op, case, response)
        return response.status_code

    def _check_lines(self, op, case, response) -> None:
        # schemathesis validates SSE events against `itemSchema`, not NDJSON lines: this does the same for those
        if op.path not in self._items:
            item = self.doc["paths"][op.path][op.method]["responses"]["200"]["content"]["application/x-ndjson"]
            self._items[op.path] = jsonschema_rs.validator_for({**item["itemSchema"],
                                                                 "components": self.doc["components"]})
        for n, line in enumerate(response.text.splitlines()):
            try:
                self._items[op.path].validate(json.loads(line))
            except (ValueError, jsonschema_rs.ValidationError) as exc:
                self._fail(op, case, "NDJSON line does not match the schema", f"line {n}: {exc}"[:500], response)
                return

    def _fail(self, op, case, kind: str, message: str, response: httpx2.Response | None = None) -> None:
        self.failures.append({"operation": op.label, "kind": kind, "message": str(message)[:800],
                              "status": response.status_code if response is not None else None,
                              "body": response.text[:300] if response is not None else None,
                              "request": self._request(case)})

    def _request(self, case) -> str:
        # the curl command of the case, or its operation and the body sent instead
        if self._sent is None:
            return case.as_curl_command()[:4000]
        return f"{case.method} {case.formatted_path} with body {self._sent[:4000]}"

    def total(self) -> int:
        """Requests sent."""
        return sum(self.requests.values())


def no_lease_left(http: httpx2.Client, headers: dict[str, str] | None = None, wait: float = 20.0) -> dict:
    """/swarm/status once nothing is in use, waiting or streaming (a request cut off by a client timeout may
    still be finishing); the last status seen if that does not happen within `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        status = http.get("/swarm/status", headers=headers or {}).json()
        busy = status["waiting"] or status["streams_open"] or any(r["in_use"] for r in status["residents"])
        if not busy or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def _assert_clean(camp: Campaign, d, http: httpx2.Client, headers: dict[str, str] | None = None) -> None:
    assert camp.crashed is None, camp.crashed + "\n" + d.output()[-3000:]
    assert not camp.hangs, camp.hangs[:3]
    assert not camp.failures, json.dumps(camp.failures[:5], indent=1, ensure_ascii=False)
    assert d.proc.poll() is None
    assert http.get("/health", headers=headers or {}).json()["status"] == "ok"
    status = no_lease_left(http, headers)
    assert status["waiting"] == 0 and status["streams_open"] == 0, status
    assert all(r["in_use"] == 0 for r in status["residents"]), status["residents"]
    assert "internal error answering" not in d.output()  # the catch-all handler logs every 500 it turns out


# ---------------------------------------------------------------- the document


def test_openapi_document_lists_every_route_and_status(daemon):
    doc = daemon.http.get("/openapi.json").json()
    served = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert served == {("GET", "/v1/models"), ("GET", "/v1/models/{model_id}"), ("POST", "/v1/chat/completions"),
                      ("POST", "/v1/completions"), ("POST", "/v1/embeddings"), ("GET", "/api/tags"),
                      ("GET", "/api/ps"), ("GET", "/api/version"), ("POST", "/api/chat"), ("POST", "/api/generate"),
                      ("POST", "/api/embed"), ("GET", "/health"), ("GET", "/swarm/status"), ("POST", "/swarm/route"),
                      ("GET", "/metrics")}
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert set(chat) == {"200", "400", "401", "403", "404", "413", "500", "502", "503", "504", "507"}  # no 422
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    assert chat["507"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    ollama = doc["paths"]["/api/chat"]["post"]["responses"]
    assert ollama["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/OllamaError")
    assert "application/x-ndjson" in ollama["200"]["content"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]


# ---------------------------------------------------------------- bugs the fuzz found

LONE = "\ud800"  # JSON allows the escape; no UTF-8 encoder (llama.cpp's tokenizer, tokenizers, the response) takes it
SURROGATE_BODIES = [
    ("/v1/chat/completions", {"model": "smollm2-135m", "max_tokens": 2,
                              "messages": [{"role": "user", "content": LONE}]}),
    ("/v1/chat/completions", {"model": "smollm2-135m", "max_tokens": 2,
                              "messages": [{"role": "user", "content": [{"type": LONE}]}]}),
    ("/v1/completions", {"model": "smollm2-135m", "max_tokens": 2, "prompt": "hi", "stop": "a" + LONE}),
    ("/v1/embeddings", {"model": "minilm-l6", "input": ["a cat", LONE]}),
    ("/api/chat", {"model": "smollm2-135m", "stream": False, "options": {"num_predict": 2},
                   "messages": [{"role": "user", "content": LONE}]}),
    ("/api/chat", {"model": "smollm2-135m", "options": {"num_predict": 2, "stop": [LONE]},
                   "messages": [{"role": "user", "content": "hi"}]}),
    ("/api/generate", {"model": "smollm2-135m", "stream": False, "options": {"num_predict": 2}, "prompt": "hi",
                       "system": LONE}),
    ("/api/embed", {"model": "minilm-l6", "input": LONE}),
]


@pytest.mark.parametrize(("path", "body"), SURROGATE_BODIES, ids=lambda x: x if isinstance(x, str) else "")
def test_lone_surrogate_is_a_400_not_a_500(daemon, path, body):
    r = daemon.http.post(path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 400, (r.status_code, r.text)  # was 500 (inference_failed, internal_error) or a 200 stream
    error = r.json()["error"]
    if path.startswith("/api/"):
        assert "surrogate" in error, r.text
    else:
        assert error["code"] == "invalid_request_body" and "surrogate" in error["message"], r.text


@pytest.mark.parametrize(("body", "says"), [(b'{"model": "minilm-l6", "input": "\xff"}', "not UTF-8"),
                                           (b"[" * 100_000 + b"]" * 100_000, "nested too deeply")])
def test_an_unreadable_body_is_a_400_that_says_why(daemon, body, says):
    for path in ("/v1/embeddings", "/api/embed"):
        r = daemon.http.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        error = r.json()["error"]  # was "There was an error parsing the body", code "error"
        if path.startswith("/api/"):
            assert says in error, r.text
        else:
            assert says in error["message"] and error["code"] == "invalid_request_body", r.text


# ---------------------------------------------------------------- the Unix socket

UNIX_EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 12}


def test_fuzz_every_operation_over_the_unix_socket(daemon):
    camp = Campaign(daemon.http, alive=lambda: daemon.proc.poll() is None)
    for op in camp.operations:
        for mode in MODES:
            camp.run(op, mode, UNIX_EXAMPLES[mode])
    assert set(camp.requests) == {op.label for op in camp.operations}
    _assert_clean(camp, daemon, daemon.http)


# ---------------------------------------------------------------- the TCP listener


def free_port() -> int:
    """A loopback TCP port nobody listens on (for a moment)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def tcp_daemon(api_config):
    """A daemon with a TCP listener: (daemon, client over TCP, the token's header)."""
    import shutil

    d = Daemon(private_root(), api_config, "--tcp", f"127.0.0.1:{free_port()}").start()
    port = d.cmd[d.cmd.index("--tcp") + 1].rsplit(":", 1)[1]
    token = (d.socket.parent / "token").read_text().strip()
    try:
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=HANG_S) as tcp:
            yield d, tcp, {"Authorization": f"Bearer {token}"}
    finally:
        assert d.stop() == 0, d.output()
        shutil.rmtree(d.root, ignore_errors=True)


def test_fuzz_over_tcp_with_the_token(tcp_daemon):
    d, tcp, auth = tcp_daemon
    camp = Campaign(tcp, alive=lambda: d.proc.poll() is None, headers=auth)
    for op in camp.operations:
        camp.run(op, GenerationMode.POSITIVE, 6, seed=1)
    _assert_clean(camp, d, tcp, auth)


@pytest.mark.parametrize("given", ["no token", "wrong token", "foreign Host"])
def test_tcp_refusals_on_every_operation(tcp_daemon, given):
    d, tcp, auth = tcp_daemon
    doc = d.http.get("/openapi.json").json()
    headers = {"no token": {}, "wrong token": {"Authorization": "Bearer " + "x" * 43},
               "foreign Host": {**auth, "Host": "evil.example:80"}}[given]
    expected = 403 if given == "foreign Host" else 401
    for path, ops in doc["paths"].items():
        for method in ops:
            url = path.replace("{model_id}", "smollm2-135m")
            r = tcp.request(method.upper(), url, headers=headers, json={} if method == "post" else None)
            assert r.status_code == expected, (method, path, r.status_code, r.text)
            # the body Ollama clients read under /api/, OpenAI's elsewhere (what the document says)
            error = r.json()["error"]
            assert isinstance(error, str) if path.startswith("/api/") else error["code"] in ("unauthorized",
                                                                                            "forbidden_host"), r.text
