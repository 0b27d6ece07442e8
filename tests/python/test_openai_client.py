"""The official OpenAI Python client against maze-server (started here, on loopback).

Run by `make test` (server-test): MAZE_SERVER_BIN and MAZE_MODEL name the binary and model.
"""
import json
import os
import subprocess

import openai
import pytest

KEY = "python-test-key"


@pytest.fixture(scope="module")
def server():
    proc = subprocess.Popen(
        [os.environ["MAZE_SERVER_BIN"], "--model", os.environ["MAZE_MODEL"], "--addr", "127.0.0.1:0", "--api-key", KEY],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        url = next(word for word in line.split() if word.startswith("http://"))
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(client):
    models = client.models.list().data
    assert len(models) == 1
    return models[0].id


def test_chat(client, model):
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        temperature=0,
        max_tokens=16,
    )
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 10


def test_chat_streaming(client, model):
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Write a haiku about rivers."}],
        temperature=0,
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert len(pieces) > 5
    assert finish in ("stop", "length")
    assert usage is not None
    if finish == "length":
        assert usage.completion_tokens == 30


def test_json_schema_output(client, model):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        temperature=0,
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
    )
    person = json.loads(r.choices[0].message.content)
    assert set(person) == {"name", "age"}
    assert isinstance(person["age"], int) and 0 <= person["age"] <= 120
    assert len(person["name"]) <= 20


def test_completions(client, model):
    r = client.completions.create(model=model, prompt="The sky is", max_tokens=5, temperature=0)
    assert r.choices[0].text
    assert r.choices[0].finish_reason == "length"


def test_errors(client, model, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert "no-such-model" in str(e.value)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], n=2)
    assert "`n`: 2 is not supported" in str(e.value)


def test_unimplemented_fields_are_refused_by_name(client, model):
    hi = [{"role": "user", "content": "hi"}]
    for kwargs, named in [
        ({"logprobs": True}, "`logprobs`: true"),
        ({"logprobs": True, "top_logprobs": 3}, "`top_logprobs`: 3"),
        # SmolLM2's template has no tool syntax: tools need --tool-format generic.
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "generic tool format"),
        ({"extra_body": {"logprobz": True}}, "`logprobz` is not a field"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=model, messages=hi, max_tokens=2, **kwargs)
        assert named in str(e.value), kwargs
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model, prompt="hi", max_tokens=2, echo=True)
    assert "`echo`: true" in str(e.value)
    # What asks for nothing, and the fields accepted and ignored, pass.
    r = client.chat.completions.create(
        model=model, messages=hi, max_tokens=2, temperature=0, n=1, logprobs=False, user="u-1", metadata={"k": "v"}
    )
    assert r.choices[0].logprobs is None
