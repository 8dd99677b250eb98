"""The real openai-python SDK against mlxd's HTTP front end, on the daemon's Unix socket
or on its TCP listener (`--http`, with the bearer token).

Run by tests/tests/http.rs with the endpoint and the path of the MiniLM fixture:
    python openai_sdk.py SOCKET FIXTURE
    MLXD_HTTP_TOKEN=... python openai_sdk.py http://127.0.0.1:PORT FIXTURE
Every check is an assert; the first failure ends the script with a traceback.
"""

import base64
import json
import math
import os
import struct
import sys

import httpx2
import openai

endpoint, fixture = sys.argv[1], sys.argv[2]
if endpoint.startswith("http://"):
    client = openai.OpenAI(base_url=f"{endpoint}/v1", api_key=os.environ["MLXD_HTTP_TOKEN"], max_retries=0)
    # Without the token, TCP answers 401.
    try:
        openai.OpenAI(base_url=f"{endpoint}/v1", api_key="wrong", max_retries=0).models.list()
        raise AssertionError("a wrong token was accepted")
    except openai.AuthenticationError as err:
        assert err.status_code == 401, err
else:
    client = openai.OpenAI(
        base_url="http://localhost/v1",
        api_key="unused-on-a-unix-socket",
        http_client=openai.DefaultHttpx2Client(transport=httpx2.HTTPTransport(uds=endpoint)),
        max_retries=0,
    )

# Models.
names = {m.id for m in client.models.list()}
assert {"minilm", "smollm2"} <= names, names

# Embeddings equal sentence-transformers' vectors (the shared fixture), as floats and base64.
reference = json.load(open(fixture))
items = reference["items"] if isinstance(reference, dict) else reference
texts = [item["text"] for item in items[:6]]
expected = [item["embedding"] for item in items[:6]]
for encoding in ("float", "base64"):
    got = client.embeddings.create(model="minilm", input=texts, encoding_format=encoding)
    assert [d.index for d in got.data] == list(range(len(texts)))
    assert got.usage.prompt_tokens > 0
    for row, want in zip(got.data, expected):
        vector = row.embedding
        if isinstance(vector, str):  # asked for base64: little-endian float32s
            raw = base64.b64decode(vector)
            vector = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        cosine = sum(a * b for a, b in zip(vector, want)) / (
            math.sqrt(sum(a * a for a in vector)) * math.sqrt(sum(b * b for b in want))
        )
        assert cosine >= 0.999, (encoding, cosine)
single = client.embeddings.create(model="minilm", input="one text")
assert len(single.data) == 1 and len(single.data[0].embedding) == 384

# Chat: greedy, and the same answer streamed, with usage at the end.
question = [{"role": "user", "content": "What is the capital of France?"}]
chat = client.chat.completions.create(model="smollm2", messages=question, max_tokens=12, temperature=0)
answer = chat.choices[0].message.content
assert "Paris" in answer, answer
assert chat.choices[0].finish_reason in ("stop", "length")
assert chat.usage.prompt_tokens > 0 and chat.usage.completion_tokens > 0
pieces, usage, finish = [], None, None
for chunk in client.chat.completions.create(
    model="smollm2", messages=question, max_tokens=12, temperature=0, stream=True,
    stream_options={"include_usage": True},
):
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        pieces.append(choice.delta.content or "")
        finish = choice.finish_reason or finish
assert "".join(pieces) == answer, ("".join(pieces), answer)
assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens
# The repeat of the same prompt by the same user reuses the prompt cache.
assert usage.prompt_tokens_details.cached_tokens > 0, usage
assert finish == chat.choices[0].finish_reason

# The sampler's extensions (as vLLM and llama.cpp take them): top_k=1 is greedy at any temperature.
top1 = client.chat.completions.create(
    model="smollm2", messages=question, max_tokens=12, temperature=1.0, extra_body={"top_k": 1, "min_p": 0.0}
)
assert top1.choices[0].message.content == answer, (top1.choices[0].message.content, answer)

# Parts content, stop strings, max_completion_tokens, and the text completion endpoint.
parts = [{"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}]
stopped = client.chat.completions.create(
    model="smollm2", messages=parts, max_completion_tokens=12, temperature=0, stop=[" Paris"]
)
assert "Paris" not in stopped.choices[0].message.content, stopped
assert stopped.choices[0].finish_reason == "stop"
completion = client.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=6, temperature=0)
assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 6

# Errors: status codes and OpenAI's error object.
try:
    client.embeddings.create(model="no-such-model", input="x")
    raise AssertionError("an unknown model was served")
except openai.NotFoundError as err:
    assert err.body["code"] == "not_found", err.body
try:
    client.chat.completions.create(model="smollm2", messages=question, n=2)
    raise AssertionError("n=2 was accepted")
except openai.BadRequestError as err:
    assert "n must be 1" in err.body["message"], err.body
try:
    client.chat.completions.create(model="smollm2", messages=question, max_tokens=10**6)
    raise AssertionError("max_tokens over the limit was accepted")
except openai.APIStatusError as err:
    assert err.status_code == 413, err
print("openai-python", openai.__version__, "against mlxd at", endpoint, ": all checks passed")
