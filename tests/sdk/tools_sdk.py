"""Tool calls through the real daemon with the SDKs people use (run by tests/tests/tools.rs).

    python tools_sdk.py SOCKET MODEL_DIR

MODEL_DIR is a tiny random model with Qwen 2.5's real tool-calling template (built by
tests/tools/tiny_mlx_lm.py --chat-template), served as "tiny"; "smollm2" (whose template
takes no tools) is served beside it. Random weights: only what the daemon enforces is
meaningful, i.e. calls forced by tool_choice (a grammar in Qwen's format), and the prompt
the template renders for a conversation with calls and results, which is checked token for
token against transformers rendering the same conversation itself. Prints one JSON report.
"""

import json
import sys

import httpx
import httpx2
import jsonschema
import ollama
import openai
from transformers import AutoTokenizer

socket, model_dir = sys.argv[1], sys.argv[2]
CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Rome"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
CLOCK = {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now.", "parameters": CITY}},
    {"type": "function", "function": {"name": "get_time", "description": "The time now.", "parameters": CLOCK}},
]
SCHEMAS = {"get_weather": CITY, "get_time": CLOCK}
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]
report = {}

oa = openai.OpenAI(
    base_url="http://localhost/v1", api_key="unused",
    http_client=openai.DefaultHttpx2Client(transport=httpx2.HTTPTransport(uds=socket)),
)


def create(**kwargs):
    return oa.chat.completions.create(**{"model": "tiny", "temperature": 0, "max_tokens": 64, **kwargs})


# 1. A named choice: one call of that function, arguments valid, finish "tool_calls".
named = {"type": "function", "function": {"name": "get_weather"}}
reply = create(messages=ASK, tools=TOOLS, tool_choice=named)
choice = reply.choices[0]
assert choice.finish_reason == "tool_calls", choice
assert choice.message.content is None, choice.message
(call,) = choice.message.tool_calls
assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_"), call
arguments = json.loads(call.function.arguments)
jsonschema.validate(arguments, CITY)
report["named"] = {"id": call.id, "arguments": arguments, "completion_tokens": reply.usage.completion_tokens}

# 2. The same streamed: OpenAI's deltas (the call's id, type and name with empty arguments,
# then the arguments), no content; the SDK's accumulation gives the same call.
chunks = list(create(messages=ASK, tools=TOOLS, tool_choice=named, stream=True))
deltas = [d for c in chunks for ch in c.choices for d in (ch.delta.tool_calls or [])]
assert deltas[0].id and deltas[0].type == "function" and deltas[0].function.name == "get_weather", deltas
assert deltas[0].function.arguments == "" and all(d.index == 0 for d in deltas), deltas
streamed = "".join(d.function.arguments or "" for d in deltas)
assert json.loads(streamed) == arguments, (streamed, arguments)
assert not "".join(ch.delta.content or "" for c in chunks for ch in c.choices), chunks
assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["tool_calls"]
with oa.chat.completions.stream(model="tiny", messages=ASK, tools=TOOLS, tool_choice=named, temperature=0,
                                max_tokens=64) as stream:
    final = stream.get_final_completion()
assert json.loads(final.choices[0].message.tool_calls[0].function.arguments) == arguments
report["streamed_deltas"] = len(deltas)

# 3. Required, one call: either function, valid against its own schema.
reply = create(messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
(call2,) = reply.choices[0].message.tool_calls
jsonschema.validate(json.loads(call2.function.arguments), SCHEMAS[call2.function.name])
report["required"] = call2.function.name

# 4. The second turn: the call and its result go back; the template renders them as Qwen
# was trained to read them — the prompt is exactly what transformers renders.
history = ASK + [
    {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"celsius": -3})},
]
reply = create(messages=history, tools=TOOLS, max_tokens=4)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
hf_history = ASK + [
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"celsius": -3})},
]
expected = tokenizer.apply_chat_template(hf_history, tools=TOOLS, add_generation_prompt=True, tokenize=True)
if hasattr(expected, "keys"):  # transformers 5 answers a BatchEncoding
    expected = expected["input_ids"]
assert reply.usage.prompt_tokens == len(expected), (reply.usage, len(expected))
assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls"), reply
report["second_turn_prompt_tokens"] = reply.usage.prompt_tokens

# 5. Refusals, each a 400 naming the problem.
refusals = {}
for name, kwargs in {
    "unknown_function": dict(model="tiny", tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}),
    "no_tool_template": dict(model="smollm2", tools=TOOLS),
    "with_response_format": dict(model="tiny", tools=TOOLS, response_format={"type": "json_object"}),
    "bad_name": dict(model="tiny", tools=[{"type": "function", "function": {"name": "a b"}}]),
}.items():
    try:
        oa.chat.completions.create(messages=ASK, max_tokens=4, **kwargs)
        raise SystemExit(f"{name} was accepted")
    except openai.BadRequestError as err:
        refusals[name] = str(err)
report["refusals"] = refusals

# 6. Ollama: the same conversation in Ollama's shape (no ids; arguments as an object; the
# tool message names its function) renders the same prompt; a forced call (mlxd's
# tool_choice extension: Ollama lets the model decide) comes back in Ollama's shape, which
# the ollama SDK reads, streamed and not.
ol = ollama.Client(host="http://localhost", transport=httpx.HTTPTransport(uds=socket))
ollama_history = ASK + [
    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": arguments}}]},
    {"role": "tool", "tool_name": "get_weather", "content": json.dumps({"celsius": -3})},
]
http = httpx.Client(transport=httpx.HTTPTransport(uds=socket), base_url="http://localhost", timeout=120)
# (Raw JSON here: the ollama SDK rewrites tool schemas through its own model, dropping
# fields such as additionalProperties, so its prompt is not the one transformers renders.)
raw = http.post("/api/chat", json={"model": "tiny", "messages": ollama_history, "tools": TOOLS, "stream": False,
                                   "options": {"temperature": 0, "num_predict": 4}}).json()
assert raw["prompt_eval_count"] == len(expected), (raw, len(expected))
reply = ol.chat(model="tiny", messages=ollama_history, tools=TOOLS, options={"temperature": 0, "num_predict": 4})
assert reply.done and reply.prompt_eval_count > 300, reply
body = {"model": "tiny", "messages": ASK, "tools": TOOLS, "tool_choice": named, "stream": False,
        "options": {"temperature": 0, "num_predict": 64}}
forced = ollama.ChatResponse.model_validate(http.post("/api/chat", json=body).json())
(ocall,) = forced.message.tool_calls
assert ocall.function.name == "get_weather" and dict(ocall.function.arguments) == arguments, forced
lines = [json.loads(line) for line in http.post("/api/chat", json={**body, "stream": True}).text.splitlines() if line]
streamed_calls = [c for line in lines for c in (ollama.ChatResponse.model_validate(line).message.tool_calls or [])]
assert [(c.function.name, dict(c.function.arguments)) for c in streamed_calls] == [("get_weather", arguments)], lines
assert lines[-1]["done"] and lines[-1]["done_reason"] == "stop", lines[-1]
# /api/show lists the "tools" capability for a template that takes tools, as Ollama does.
capabilities = {name: http.post("/api/show", json={"model": name}).json()["capabilities"] for name in ("tiny", "smollm2")}
assert capabilities == {"tiny": ["completion", "tools"], "smollm2": ["completion"]}, capabilities
report["ollama"] = {"prompt_eval_count": reply.prompt_eval_count, "forced": dict(ocall.function.arguments)}
print(json.dumps(report))
