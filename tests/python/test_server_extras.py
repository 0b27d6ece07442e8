"""maze-server's extras (issue 21, section 3): /tokenize and /detokenize as llama-server shapes
them, CORS (--cors-origin), and several models served by one process (--model NAME=PATH,
chosen by the request's `model`, loaded on first use, --max-loaded-models).

Run by `make test` (server-test): MAZE_SERVER_BIN and MAZE_MODEL name the binary and the default
model; the second model is Gemma 3 270M from MAZE_MODEL_DIR when it is there, else the default
model's file again under another name. Stdlib only (http.client, threads) besides pytest.
"""
import http.client
import json
import os
import threading

import pytest

import maze_server

KEY = "extras-key"
ORIGIN = "http://app.example"
SECOND = "second"
AUTH = {"Authorization": f"Bearer {KEY}"}


def second_model_path():
    gemma = os.path.join(
        os.environ.get("MAZE_MODEL_DIR", os.path.expanduser("~/.cache/maze/models")), "gemma-3-270m-Q4_K_M.gguf"
    )
    return gemma if os.path.exists(gemma) else os.environ["MAZE_MODEL"]


@pytest.fixture(scope="module")
def server():
    with maze_server.running(
        "--model", os.environ["MAZE_MODEL"],
        "--model", f"{SECOND}={second_model_path()}",
        "--max-loaded-models", "1",
        "--cors-origin", ORIGIN,
        "--api-key", KEY,
        "--threads", "2",
    ) as addr:
        yield addr


def request(server, method, path, body=None, headers=None, auth=True):
    """One request on a fresh connection: (status, lower-cased headers, body bytes)."""
    conn = http.client.HTTPConnection(*server, timeout=120)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **(AUTH if auth else {}), **(headers or {})}
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def post(server, path, body):
    status, _, reply = request(server, "POST", path, body)
    assert status == 200, (path, body, reply[:500])
    return json.loads(reply)


def error(status, body, expected, needle):
    assert status == expected, (status, body[:500])
    e = json.loads(body)["error"]
    assert needle in e["message"], e
    return e


def metric(server, name):
    _, _, body = request(server, "GET", "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


def listed(server):
    """{name: loaded} from /v1/models."""
    return {m["id"]: m["loaded"] for m in post_get(server, "/v1/models")["data"]}


def post_get(server, path):
    status, _, body = request(server, "GET", path)
    assert status == 200, body[:500]
    return json.loads(body)


# --- /tokenize and /detokenize -----------------------------------------------------------------

TEXT = "The capital of France is Paris. 媽 🤗"


def test_tokenize_detokenize_round_trip(server):
    ids = post(server, "/tokenize", {"content": TEXT})["tokens"]
    assert len(ids) > 5 and all(isinstance(i, int) for i in ids)
    assert post(server, "/detokenize", {"tokens": ids})["content"] == TEXT
    # Pieces: each token's bytes, a string when they are UTF-8, else a list of byte values (an
    # emoji split over tokens); together they are the text.
    pieces = post(server, "/tokenize", {"content": TEXT, "with_pieces": True})["tokens"]
    assert [p["id"] for p in pieces] == ids
    joined = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)
    assert joined.decode() == TEXT


def test_tokens_are_the_engines(server):
    """The ids are the ones generation uses: the Maze protocol given them generates what it does
    from the text, and the prompt counts agree."""
    prompt = "Once upon a time"
    ids = post(server, "/tokenize", {"content": prompt, "add_special": True})["tokens"]
    common = {"max_tokens": 8, "sampling": {"temperature": 0}}
    from_text = post(server, "/maze/v1/generate", {"prompt": prompt, **common})
    from_ids = post(server, "/maze/v1/generate", {"tokens": ids, **common})
    assert from_ids["tokens"] == from_text["tokens"]
    assert from_text["stats"]["prompt_tokens"] == len(ids)
    r = post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 1, "temperature": 0})
    assert r["usage"]["prompt_tokens"] == len(ids)


def test_special_tokens(server):
    text = "<|im_start|>user"
    parsed = post(server, "/tokenize", {"content": text})["tokens"]
    literal = post(server, "/tokenize", {"content": text, "parse_special": False})["tokens"]
    assert len(parsed) < len(literal)
    assert post(server, "/detokenize", {"tokens": parsed})["content"] == text


@pytest.mark.parametrize(
    "path,body,needle",
    [
        ("/tokenize", b"content=hi", "request body is not valid"),
        ("/tokenize", {"content": 5}, "at content: invalid type"),
        ("/tokenize", {"content": "x", "add_special": "yes"}, "at add_special"),
        ("/tokenize", {}, "missing field `content`"),
        ("/tokenize", {"content": "x", "contnet": "y"}, "unknown field `contnet`"),
        ("/detokenize", {"tokens": "1 2"}, "at tokens"),
        ("/detokenize", {"tokens": [1, -2]}, "at tokens[1]"),
        ("/detokenize", {"tokens": [1, 1.5]}, "at tokens[1]"),
        ("/detokenize", {"tokens": [10_000_000]}, "token id 10000000 at position 0 is out of range"),
    ],
)
def test_bad_input_is_a_json_400(server, path, body, needle):
    status, _, reply = request(server, "POST", path, body)
    error(status, reply, 400, needle)


# --- CORS ------------------------------------------------------------------------------------


def test_cors_preflight_needs_no_key(server):
    status, headers, body = request(
        server,
        "OPTIONS",
        "/v1/chat/completions",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"},
        auth=False,
    )
    assert status == 204, body
    assert headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in headers["access-control-allow-methods"]
    allowed = headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    # The request that follows carries the key, and its answer is readable by the page.
    status, headers, _ = request(server, "POST", "/tokenize", {"content": "hi"}, headers={"Origin": ORIGIN})
    assert status == 200 and headers["access-control-allow-origin"] == ORIGIN


def test_cors_other_origins_get_no_headers(server):
    status, headers, body = request(
        server,
        "OPTIONS",
        "/v1/chat/completions",
        headers={"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"},
        auth=False,
    )
    error(status, body, 401, "API key")
    assert "access-control-allow-origin" not in headers
    status, headers, _ = request(server, "GET", "/health", headers={"Origin": "http://elsewhere.example"})
    assert status == 200 and "access-control-allow-origin" not in headers


# --- several models ----------------------------------------------------------------------------


def test_models_are_listed_and_chosen_by_name(server):
    models = post_get(server, "/v1/models")["data"]
    assert [m["id"] for m in models][1:] == [SECOND] and len(models) == 2
    default = models[0]["id"]
    hi = [{"role": "user", "content": "hi"}]
    r = post(server, "/v1/chat/completions", {"model": SECOND, "messages": hi, "max_tokens": 2, "temperature": 0})
    assert r["model"] == SECOND
    # One may stay loaded: the default went when the second came.
    assert listed(server) == {default: False, SECOND: True}
    maze = {m["name"]: m for m in post_get(server, "/maze/v1/models")["models"]}
    assert maze[SECOND]["loaded"] and maze[SECOND]["vocab_size"] > 0
    # No model: the default, loaded again.
    r = post(server, "/v1/chat/completions", {"messages": hi, "max_tokens": 2, "temperature": 0})
    assert r["model"] == default
    assert listed(server) == {default: True, SECOND: False}
    # /tokenize and the Maze protocol pick by name too.
    tokens = post(server, "/tokenize", {"content": TEXT, "model": SECOND})["tokens"]
    assert post(server, "/detokenize", {"tokens": tokens, "model": SECOND})["content"] == TEXT
    r = post(server, "/maze/v1/generate", {"model": default, "prompt": "a", "max_tokens": 1})
    assert r["provenance"]["model"]


def test_unknown_model_is_an_openai_404(server):
    status, _, body = request(
        server, "POST", "/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    )
    e = error(status, body, 404, "model 'nope' is not served here")
    assert e["code"] == "model_not_found" and e["param"] == "model"
    assert f"'{SECOND}'" in e["message"]
    status, _, body = request(server, "POST", "/tokenize", {"model": "nope", "content": "x"})
    error(status, body, 404, "model 'nope'")


def loads(server, name):
    _, _, body = request(server, "GET", "/metrics")
    line = next(l for l in body.decode().splitlines() if l.startswith(f'maze_model_loads_total{{model="{name}"}}'))
    return int(float(line.rsplit(" ", 1)[1]))


def test_concurrent_first_requests_load_once(server):
    # Make sure the second model is not loaded, then ask for it from several threads at once.
    post(server, "/tokenize", {"content": "x"})
    assert not listed(server)[SECOND]
    before = loads(server, SECOND)
    results = []

    def ask():
        results.append(request(server, "POST", "/tokenize", {"content": TEXT, "model": SECOND}))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r[0] for r in results] == [200] * 4, results
    assert len({r[2] for r in results}) == 1
    assert loads(server, SECOND) == before + 1


def test_a_model_in_use_is_not_unloaded(server):
    """A streamed generation on the default model holds it while the second one loads: both are
    loaded (over the limit) until the stream ends, then the default goes."""
    post(server, "/tokenize", {"content": "x"})
    default = next(name for name, loaded in listed(server).items() if loaded)
    conn = http.client.HTTPConnection(*server, timeout=120)
    try:
        body = {"prompt": "Count:", "max_tokens": 4000, "ignore_eos": True, "stream": True}
        conn.request("POST", "/maze/v1/generate", body=json.dumps(body), headers={**AUTH, "Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200
        assert r.read(6) == b"data: "  # generating
        post(server, "/tokenize", {"content": "x", "model": SECOND})
        assert listed(server) == {default: True, SECOND: True}
    finally:
        conn.close()  # the generation is cancelled, and its model given back
    for _ in range(200):
        if not listed(server)[default]:
            break
        threading.Event().wait(0.05)
    assert listed(server) == {default: False, SECOND: True}


def test_health_names_the_default(server):
    status, _, body = request(server, "GET", "/health", auth=False)
    assert status == 200
    assert json.loads(body)["model"] == post_get(server, "/v1/models")["data"][0]["id"]
