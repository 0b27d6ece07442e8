"""Tool calling through the official OpenAI Python client against maze-server serving
Qwen2.5-Coder-0.5B-Instruct (its chat template renders tools; calls are Hermes <tool_call>
blocks, enforced by Maze's tool grammar): a full round trip, streamed and not, and the errors.

Run by `make test` (server-test): MAZE_SERVER_BIN names the binary, MAZE_MODEL_DIR the models.
"""
import json
import os

import openai
import pytest

from maze_server import running

MODEL_DIR = os.environ.get("MAZE_MODEL_DIR", os.path.expanduser("~/.cache/maze/models"))
QWEN = os.path.join(MODEL_DIR, "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The current time", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What's the weather in Paris right now?"}]


@pytest.fixture(scope="module")
def client():
    assert os.path.isfile(QWEN), f"{QWEN} is missing: run scripts/fetch-model.sh qwen2.5-coder (make test does)"
    with running("--model", f"qwen={QWEN}", "--threads", "2") as (host, port):
        yield openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="none", max_retries=0, timeout=300)


def check_weather_call(call):
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str) and set(args) <= {"city", "unit"}
    assert args.get("unit", "celsius") in ("celsius", "fahrenheit")
    return args


def follow_up(message, call, result):
    """The conversation after a call: the assistant's turn as the client returns it, then the
    tool's result."""
    assistant = message.model_dump(exclude_none=True)
    return ASK + [assistant, {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)}]


def test_round_trip(client):
    r = client.chat.completions.create(
        model="qwen", messages=ASK, tools=[WEATHER, TIME], tool_choice="required", temperature=0, max_tokens=80
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert len(choice.message.tool_calls) >= 1
    call = choice.message.tool_calls[0]
    assert check_weather_call(call)["city"] == "Paris"
    assert r.model_extra["maze"]["validation"]["satisfied"] is True
    # The tool's result goes back; the model continues. Qwen2.5-Coder-0.5B asks for the same
    # call again under `auto` (also with a system prompt telling it to answer), so the answer
    # is asked for with tool_choice "none": text, with no call syntax in it.
    history = follow_up(choice.message, call, {"temperature_c": 18, "sky": "clear"})
    again = client.chat.completions.create(model="qwen", messages=history, tools=[WEATHER, TIME], temperature=0, max_tokens=60)
    for c in again.choices[0].message.tool_calls or []:
        check_weather_call(c)
    final = client.chat.completions.create(
        model="qwen", messages=history, tools=[WEATHER, TIME], tool_choice="none", temperature=0, max_tokens=60
    )
    answer = final.choices[0]
    assert answer.finish_reason == "stop", answer
    assert answer.message.tool_calls is None
    assert answer.message.content and "<tool_call>" not in answer.message.content
    assert final.usage.prompt_tokens > r.usage.prompt_tokens + 20, "the call and its result are in the prompt"


def test_round_trip_streamed(client):
    kwargs = dict(model="qwen", messages=ASK, tools=[WEATHER, TIME], tool_choice="required", temperature=0, max_tokens=80)
    whole = client.chat.completions.create(**kwargs).choices[0].message
    calls, finish, text = {}, None, ""
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for piece in delta.tool_calls or []:
            if piece.id is not None:
                assert piece.index not in calls, "one opening piece per call"
                assert piece.type == "function" and piece.function.arguments == ""
                calls[piece.index] = {"id": piece.id, "name": piece.function.name, "arguments": ""}
            else:
                calls[piece.index]["arguments"] += piece.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and text == ""
    assert [c["name"] for c in calls.values()] == [c.function.name for c in whole.tool_calls]
    assert [c["arguments"] for c in calls.values()] == [c.function.arguments for c in whole.tool_calls]
    # The answer, streamed.
    first = whole.tool_calls[0]
    stream = client.chat.completions.create(
        model="qwen", messages=follow_up(whole, first, {"temperature_c": 18}), tools=[WEATHER],
        tool_choice="none", temperature=0, max_tokens=60, stream=True,
    )
    pieces = [c.choices[0] for c in stream if c.choices]
    answer = "".join(p.delta.content or "" for p in pieces)
    assert answer and "<tool_call>" not in answer and not any(p.delta.tool_calls for p in pieces)
    assert pieces[-1].finish_reason == "stop"


def test_auto_lets_the_model_answer_in_text(client):
    r = client.chat.completions.create(
        model="qwen", messages=[{"role": "user", "content": "What does CPU stand for?"}],
        tools=[WEATHER], temperature=0, max_tokens=40,
    )
    message = r.choices[0].message
    assert message.tool_calls is None and "Central Processing Unit" in message.content
    assert r.choices[0].finish_reason == "stop"


def test_a_named_tool_is_the_one_called(client):
    r = client.chat.completions.create(
        model="qwen", messages=ASK, tools=[WEATHER, TIME], temperature=0, max_tokens=40,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls = r.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_time"] and json.loads(calls[0].function.arguments) == {}


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"tools": [{"type": "function", "function": {"name": "no way"}}]}, "^[A-Za-z0-9_-]{1,64}$"),
        ({"tools": [WEATHER, WEATHER]}, "already declared by tools[0]"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "search"}}}, "names 'search'"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice \"sometimes\""),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tool 'f' parameters"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}]}, "/not"),
        ({"tools": [{"type": "retrieval"}]}, "retrieval"),
    ],
)
def test_bad_tool_requests_are_400s_naming_the_problem(client, kwargs, named):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="qwen", messages=ASK, max_tokens=4, **kwargs)
    assert named in str(e.value), str(e.value)


def test_a_tool_message_must_answer_a_call(client):
    messages = ASK + [{"role": "tool", "tool_call_id": "call_nobody", "content": "18"}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="qwen", messages=messages, tools=[WEATHER], max_tokens=4)
    assert "tool_call_id 'call_nobody' matches no earlier tool call" in str(e.value)
