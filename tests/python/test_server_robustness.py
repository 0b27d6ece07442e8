"""maze-server under hostile and clumsy clients (issue 20): malformed JSON, wrong types, huge
bodies and headers, slow and stalled clients, half-closed connections, streaming clients that
disconnect, more requests than slots, unknown routes. Every request gets a JSON error with the
exact status (or a sane result), and the server keeps serving: /health and a completion work at
the end.

Run by `make test` (server-test): MAZE_SERVER_BIN and MAZE_MODEL name the binary and model.
Stdlib only (sockets, http.client, threads) besides pytest.
"""
import http.client
import json
import os
import socket
import threading
import time

import pytest

import maze_server

SLOTS = 2
BODY_LIMIT = 64 << 10
READ_TIMEOUT_S = 3
HI = [{"role": "user", "content": "hi"}]
CHAT, COMPLETIONS, MAZE = "/v1/chat/completions", "/v1/completions", "/maze/v1/generate"


@pytest.fixture(scope="module")
def server():
    with maze_server.running(
        "--model", os.environ["MAZE_MODEL"],
        "--max-concurrent", str(SLOTS),
        "--max-body-bytes", str(BODY_LIMIT),
        "--read-timeout-secs", str(READ_TIMEOUT_S),
        "--threads", "2",
    ) as addr:
        yield addr


def request(server, method, path, body=None, headers=None, timeout=60):
    """One request on a fresh connection: (status, headers, body bytes)."""
    conn = http.client.HTTPConnection(*server, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def assert_error(status, body, expected, *needles):
    """The response is `expected` with a JSON error whose message contains every needle."""
    assert status == expected, (status, body[:500])
    error = json.loads(body)["error"]
    assert isinstance(error["message"], str) and error["message"]
    for needle in needles:
        assert needle in error["message"], (needle, error["message"])
    return error


def chat(server, max_tokens=4, **fields):
    status, _, body = request(
        server,
        "POST",
        "/v1/chat/completions",
        {"messages": HI, "max_tokens": max_tokens, "temperature": 0, **fields},
    )
    assert status == 200, body[:500]
    return json.loads(body)


def raw_exchange(server, data, shut_wr=False, timeout=30):
    """Sends bytes on a raw socket and reads until the server closes or a whole response is in."""
    s = socket.create_connection(server, timeout=timeout)
    try:
        try:
            s.sendall(data)
            if shut_wr:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before taking everything
        return read_response(s)
    finally:
        s.close()


def read_response(s):
    """(status, headers, body) of one HTTP/1.1 response with a Content-Length, read from `s`."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a whole response head: {buf[:300]!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length]


def post_head(path, length=None, extra=""):
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}{extra}\r\n"
    ).encode()


def metric(server, name):
    status, _, body = request(server, "GET", "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name} in {body.decode()[:2000]}")


def wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


# --- malformed JSON -------------------------------------------------------------------------

# The start of a valid body of each route (without its closing brace).
VALID = {
    CHAT: b'{"messages": [{"role": "user", "content": "hi"}]',
    COMPLETIONS: b'{"prompt": "hi"',
    MAZE: b'{"prompt": "hi"',
}

MALFORMED = {
    "truncated": (lambda valid: valid[:-3], "EOF while parsing"),
    "invalid UTF-8": (lambda valid: valid + b', "stop": ["\xff\xfe"]}', "invalid unicode"),
    "an array": (lambda valid: b"[1, 2, 3]", "expected a JSON object, got an array"),
    "a bare string": (lambda valid: b' "hello"', "expected a JSON object, got a string"),
    "a number": (lambda valid: b"12", "expected a JSON object, got a number"),
    "null": (lambda valid: b"null", "expected a JSON object, got null"),
    "an array, truncated": (lambda valid: b"[" + valid, "EOF while parsing"),
    "trailing garbage": (lambda valid: valid + b"} xyz", "trailing characters"),
    "two objects": (lambda valid: valid + b"} {}", "trailing characters"),
    "empty": (lambda valid: b"", "EOF while parsing"),
    "not JSON at all": (lambda valid: b"messages=hi", "expected value"),
    "duplicate field": (lambda valid: valid + b', "max_tokens": 1, "max_tokens": 2}', "duplicate field `max_tokens`"),
}


@pytest.mark.parametrize("path", sorted(VALID))
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_json(server, path, case):
    make, needle = MALFORMED[case]
    status, _, reply = request(server, "POST", path, make(VALID[path]))
    assert_error(status, reply, 400, "request body is not valid", needle)


# --- wrong types ----------------------------------------------------------------------------

# (route, body, what the error must say): the field by its path, and what is wrong with it.
WRONG_TYPES = [
    (CHAT, {"messages": "hi"}, 'at messages: invalid type: string "hi", expected a sequence'),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, "at messages[0].content: expected a string or an array"),
    (CHAT, {"messages": [{"role": 1, "content": "hi"}]}, "at messages[0].role: invalid type: integer `1`"),
    (CHAT, {"messages": [{"content": "hi"}]}, "at messages[0]: missing field `role`"),
    (CHAT, {"messages": None}, "at messages: invalid type: null, expected a sequence"),
    (CHAT, {}, "missing field `messages`"),
    (CHAT, {"messages": HI, "max_tokens": "ten"}, 'at max_tokens: invalid type: string "ten", expected usize'),
    (CHAT, {"messages": HI, "max_tokens": -1}, "at max_tokens: invalid value: integer `-1`, expected usize"),
    (CHAT, {"messages": HI, "max_tokens": 1.5}, "at max_tokens: invalid type: floating point `1.5`"),
    (CHAT, {"messages": HI, "temperature": "hot"}, 'at temperature: invalid type: string "hot", expected f32'),
    (CHAT, {"messages": HI, "temperature": [1]}, "at temperature: invalid type: sequence, expected f32"),
    (CHAT, {"messages": HI, "stream": "yes"}, 'at stream: invalid type: string "yes", expected a boolean'),
    (CHAT, {"messages": HI, "stream": 1}, "at stream: invalid type: integer `1`, expected a boolean"),
    (CHAT, {"messages": HI, "stop": 5}, "at stop: expected a string or an array of strings, got a number"),
    (CHAT, {"messages": HI, "seed": -3}, "at seed: invalid value: integer `-3`, expected u64"),
    (CHAT, {"messages": HI, "top_p": {}}, "at top_p: invalid type: map, expected f32"),
    (CHAT, {"messages": HI, "stream_options": "usage"}, "at stream_options: invalid type: string"),
    (CHAT, {"messages": HI, "model": 7}, "at model: invalid type: integer `7`, expected a string"),
    (CHAT, {"messages": HI, "response_format": "json"}, "response_format must be a JSON object"),
    (CHAT, {"messages": HI, "response_format": {"type": 5}}, "response_format type must be a string"),
    (CHAT, {"messages": HI, "response_format": {"type": "json_schema", "json_schema": "x"}},
     "response_format.json_schema must be a JSON object"),
    (COMPLETIONS, {"prompt": 5}, "at prompt: expected a string or an array of strings, got a number"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": "many"}, 'at max_tokens: invalid type: string "many"'),
    (COMPLETIONS, {"prompt": "x", "temperature": "warm"}, 'at temperature: invalid type: string "warm"'),
    (COMPLETIONS, {"prompt": "x", "stream": "no"}, 'at stream: invalid type: string "no"'),
    (MAZE, {"prompt": 5}, "at prompt: invalid type: integer `5`"),
    (MAZE, {"prompt": "x", "max_tokens": "many"}, 'at max_tokens: invalid type: string "many"'),
    (MAZE, {"prompt": "x", "stream": "no"}, 'at stream: invalid type: string "no"'),
    (MAZE, {"prompt": "x", "timeout_ms": "soon"}, 'at timeout_ms: invalid type: string "soon"'),
    (MAZE, {"prompt": "x", "constraints": "json"}, 'at constraints: invalid type: string "json"'),
]


@pytest.mark.parametrize("path,body,named", WRONG_TYPES, ids=[f"{p} {json.dumps(b)[:50]}" for p, b, _ in WRONG_TYPES])
def test_wrong_types(server, path, body, named):
    status, _, reply = request(server, "POST", path, body)
    assert_error(status, reply, 400, named)


# --- huge bodies and headers ----------------------------------------------------------------


def test_huge_declared_body_is_refused_before_it_is_read(server):
    # 1 GiB declared, 1 KiB sent: the 413 must come without the server waiting for the rest.
    s = socket.create_connection(server, timeout=10)
    try:
        s.sendall(post_head("/v1/chat/completions", length=1 << 30) + b"{" + b" " * 1023)
        status, headers, body = read_response(s)
    finally:
        s.close()
    assert_error(status, body, 413, "limit", str(BODY_LIMIT))


def test_huge_chunked_body_is_refused_at_the_limit(server):
    # No Content-Length, and a body that never ends: the server must refuse it once it passes
    # the limit (413) rather than wait for more (which would end in a 408 after the timeout).
    s = socket.create_connection(server, timeout=READ_TIMEOUT_S + 10)
    try:
        s.sendall(post_head("/v1/chat/completions"))
        for _ in range(BODY_LIMIT // 8192 + 1):
            s.sendall(b"%x\r\n%s\r\n" % (8192, b" " * 8192))
        started = time.monotonic()
        status, headers, body = read_response(s)
        waited = time.monotonic() - started
    finally:
        s.close()
    assert_error(status, body, 413, "limit", str(BODY_LIMIT))
    assert waited < READ_TIMEOUT_S


def test_body_just_under_the_limit_is_parsed(server):
    content = "x" * (BODY_LIMIT - 200)
    body = json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": "bad"}).encode()
    assert len(body) < BODY_LIMIT
    status, _, reply = request(server, "POST", "/v1/chat/completions", body)
    assert_error(status, reply, 400, "max_tokens")


@pytest.mark.parametrize(
    "extra",
    ["X-Padding: " + "a" * (1 << 20) + "\r\n", "".join(f"X-H{i}: {i}\r\n" for i in range(200))],
    ids=["one 1 MiB header", "200 headers"],
)
def test_huge_headers(server, extra):
    # hyper refuses these before any route runs, with an empty 431 and a closed connection:
    # the one error without a JSON body (docs/PROTOCOL.md).
    status, headers, body = raw_exchange(server, post_head("/v1/chat/completions", length=2, extra=extra) + b"{}")
    assert (status, body) == (431, b"")


# --- slow, stalled and half-closed clients ---------------------------------------------------


def test_slow_client_does_not_block_others(server):
    # A client sends its body a byte at a time, and holds its last byte until another client has
    # been served in full: the slow one must not hold the others up, and then gets its answer.
    body = json.dumps({"messages": HI, "max_tokens": 2, "temperature": 0}).encode()
    data = post_head(CHAT, length=len(body)) + body
    head_sent, other_served = threading.Event(), threading.Event()
    result = {}

    def slow():
        s = socket.create_connection(server, timeout=60)
        try:
            head = len(data) - len(body)
            s.sendall(data[:head])
            head_sent.set()
            for i in range(head, len(data) - 1):
                s.sendall(data[i : i + 1])
                time.sleep(0.005)  # the client's pace, not synchronisation
            result["other_served_first"] = other_served.wait(READ_TIMEOUT_S - 0.5)
            s.sendall(data[-1:])
            result["response"] = read_response(s)
        except Exception as e:  # reported by the assertions below
            result["error"] = e
        finally:
            s.close()

    t = threading.Thread(target=slow)
    t.start()
    try:
        assert head_sent.wait(10)
        r = chat(server, max_tokens=1)
        assert r["choices"][0]["message"]["role"] == "assistant"
        other_served.set()
    finally:
        t.join(60)
    assert "error" not in result, result.get("error")
    assert result["other_served_first"], "the other request was not served while the slow one sent"
    status, _, reply = result["response"]
    assert status == 200, reply[:300]
    assert json.loads(reply)["choices"][0]["finish_reason"] in ("stop", "length")


def test_stalled_body_times_out_with_408(server):
    s = socket.create_connection(server, timeout=READ_TIMEOUT_S + 10)
    try:
        s.sendall(post_head("/v1/chat/completions", length=100) + b'{"messages": ')
        started = time.monotonic()
        status, _, body = read_response(s)
        waited = time.monotonic() - started
    finally:
        s.close()
    assert_error(status, body, 408, "request body", f"{READ_TIMEOUT_S} s")
    assert waited < READ_TIMEOUT_S + 5


def test_stalled_headers_are_dropped(server):
    s = socket.create_connection(server, timeout=READ_TIMEOUT_S + 10)
    try:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        try:
            rest = s.recv(65536)  # the server closes (hyper answers a header timeout with nothing)
        except ConnectionResetError:
            rest = b""
        waited = time.monotonic() - started
    finally:
        s.close()
    assert waited < READ_TIMEOUT_S + 5, "a client that never finishes its headers is kept"
    assert rest == b"" or rest.startswith(b"HTTP/1.1 408"), rest[:300]


def test_idle_keep_alive_connection_is_closed(server):
    s = socket.create_connection(server, timeout=READ_TIMEOUT_S + 10)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = read_response(s)
        assert status == 200
        started = time.monotonic()
        try:
            rest = s.recv(65536)
        except ConnectionResetError:
            rest = b""
        waited = time.monotonic() - started
    finally:
        s.close()
    assert rest == b""
    assert waited < READ_TIMEOUT_S + 5, "an idle connection is kept open"


@pytest.mark.parametrize("stream", [False, True])
def test_half_closed_connection_is_a_disconnect(server, stream):
    # End of input before the response is taken as the client leaving (TCP cannot tell a
    # half-close from a close): the generation is cancelled at once and the connection closed,
    # rather than a long generation running on for nobody (docs/PROTOCOL.md).
    body = json.dumps({"messages": HI, "max_tokens": 4000, "ignore_eos": True, "stream": stream}).encode()
    s = socket.create_connection(server, timeout=30)
    try:
        s.sendall(post_head("/v1/chat/completions", length=len(body)) + body)
        s.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        waited = time.monotonic() - started
    finally:
        s.close()
    assert waited < 10, "the generation ran on after the client shut its side"
    assert b"[DONE]" not in reply and b'"finish_reason":"length"' not in reply, reply[:300]
    wait_for(lambda: metric(server, "maze_generations_running") == 0, 10, "the generation stopped")


# --- disconnects and the slot limit ---------------------------------------------------------


def open_stream(server, max_tokens):
    """Starts a streamed chat on a raw socket and returns it once the first chunk arrived."""
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": "Tell me a very long story about a dragon."}],
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": True,
        }
    ).encode()
    s = socket.create_connection(server, timeout=60)
    s.sendall(post_head("/v1/chat/completions", length=len(body)) + body)
    buf = b""
    while buf.count(b"data: ") < 3:
        chunk = s.recv(65536)
        assert chunk, buf[:500]
        buf += chunk
    assert buf.startswith(b"HTTP/1.1 200"), buf[:300]
    return s


def test_disconnected_streams_free_their_slots(server):
    # Fill every slot with a long generation (about 40 s each at ~100 tokens/s), hang up on
    # all of them mid-stream, and a new request must be served at once.
    streams = [open_stream(server, max_tokens=4000) for _ in range(SLOTS)]
    try:
        assert metric(server, "maze_generations_running") == SLOTS
        assert_busy(*request(server, "POST", "/v1/chat/completions", {"messages": HI, "max_tokens": 1}))
    finally:
        for s in streams:
            s.close()
    started = time.monotonic()
    wait_for(lambda: metric(server, "maze_generations_running") == 0, 10, "the generations stopped")
    r = chat(server, max_tokens=2)
    assert r["usage"]["completion_tokens"] >= 1
    assert time.monotonic() - started < 10


def test_disconnected_whole_request_frees_its_slot(server):
    body = json.dumps({"messages": HI, "max_tokens": 4000, "ignore_eos": True}).encode()
    s = socket.create_connection(server, timeout=60)
    s.sendall(post_head("/v1/chat/completions", length=len(body)) + body)
    wait_for(lambda: metric(server, "maze_generations_running") == 1, 10, "the generation started")
    s.close()
    wait_for(lambda: metric(server, "maze_generations_running") == 0, 10, "the generation stopped")


def concurrently(server, n, max_tokens):
    """`n` chat requests released at once: their (status, headers, body)."""
    barrier = threading.Barrier(n)
    results = [None] * n

    def one(i):
        barrier.wait()
        body = {"messages": HI, "max_tokens": max_tokens, "temperature": 0}
        results[i] = request(server, "POST", "/v1/chat/completions", body)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(results), "a request was not answered within 60 s"
    return results


def assert_busy(status, headers, body):
    assert_error(status, body, 429, f"the server is at its limit of {SLOTS} concurrent generations")
    assert headers.get("retry-after") == "1", headers


def test_requests_beyond_the_slot_count(server):
    # Requests are not queued: with every slot taken, each one is refused at once with 429
    # and Retry-After...
    streams = [open_stream(server, max_tokens=4000) for _ in range(SLOTS)]
    try:
        for status, headers, body in concurrently(server, 2 * SLOTS, max_tokens=4):
            assert_busy(status, headers, body)
    finally:
        for s in streams:
            s.close()
    wait_for(lambda: metric(server, "maze_generations_running") == 0, 10, "the generations stopped")
    # ...and with free slots, three times as many requests as slots at once: each gets a result
    # or a 429, the first SLOTS to arrive get slots, none hangs.
    ok = 0
    for status, headers, body in concurrently(server, 3 * SLOTS, max_tokens=8):
        if status == 200:
            ok += 1
            assert json.loads(body)["choices"][0]["finish_reason"] in ("stop", "length")
        else:
            assert_busy(status, headers, body)
    assert ok >= SLOTS


# --- routes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path,expected,needle",
    [
        ("GET", "/nope", 404, "no route GET /nope"),
        ("POST", "/v1/nope", 404, "no route POST /v1/nope"),
        ("GET", "/v1/chat/completions", 405, "GET"),
        ("DELETE", "/health", 405, "DELETE"),
        ("PUT", "/maze/v1/generate", 405, "PUT"),
    ],
)
def test_unknown_routes_and_methods(server, method, path, expected, needle):
    status, headers, body = request(server, method, path, b"")
    assert_error(status, body, expected, needle)
    if expected == 405:
        assert headers.get("allow") in ("GET,HEAD", "POST"), headers


def test_wrong_content_type_is_still_parsed_or_refused_as_json(server):
    status, _, body = request(server, "POST", "/v1/chat/completions", b"{", headers={"Content-Type": "text/plain"})
    assert_error(status, body, 400, "request body is not valid")


# --- still serving ---------------------------------------------------------------------------


def test_zz_still_serving(server):
    status, _, body = request(server, "GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    r = chat(server, max_tokens=4)
    assert r["choices"][0]["finish_reason"] in ("stop", "length")
    assert metric(server, "maze_generations_running") == 0
