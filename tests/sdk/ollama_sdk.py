"""The real ollama-python SDK against mlxd's HTTP front end, on the daemon's Unix socket
or on its TCP listener (`--http`, with the bearer token).

Run by tests/tests/http.rs:  python ollama_sdk.py SOCKET FIXTURE
                             MLXD_HTTP_TOKEN=... python ollama_sdk.py http://127.0.0.1:PORT FIXTURE
"""

import json
import math
import os
import sys

import httpx
import ollama

endpoint, fixture = sys.argv[1], sys.argv[2]
if endpoint.startswith("http://"):
    # TCP (`--http`): the bearer token in every request, as for any remote Ollama behind a proxy.
    client = ollama.Client(host=endpoint, headers={"Authorization": f"Bearer {os.environ['MLXD_HTTP_TOKEN']}"})
    try:
        ollama.Client(host=endpoint).list()
        raise AssertionError("a request without the token was served")
    except ollama.ResponseError as err:
        assert err.status_code == 401, err
else:
    client = ollama.Client(host="http://localhost", transport=httpx.HTTPTransport(uds=endpoint))

names = {m.model for m in client.list().models}
assert {"minilm:latest", "smollm2:latest"} <= names, names
assert client.show("smollm2").capabilities == ["completion"]

# Embeddings equal sentence-transformers' vectors (the shared fixture).
items = json.load(open(fixture))["items"][:4]
got = client.embed(model="minilm", input=[item["text"] for item in items])
for vector, item in zip(got.embeddings, items):
    want = item["embedding"]
    cosine = sum(a * b for a, b in zip(vector, want)) / (
        math.sqrt(sum(a * a for a in vector)) * math.sqrt(sum(b * b for b in want))
    )
    assert cosine >= 0.999, cosine
assert len(client.embeddings(model="minilm:latest", prompt="one").embedding) == 384

# Chat, streamed by default and in one object; generate.
question = [{"role": "user", "content": "What is the capital of France?"}]
options = {"temperature": 0, "num_predict": 12}
whole = client.chat(model="smollm2", messages=question, options=options, stream=False)
assert "Paris" in whole.message.content, whole
assert whole.done and whole.done_reason in ("stop", "length") and whole.eval_count > 0
pieces = [part.message.content for part in client.chat(model="smollm2", messages=question, options=options, stream=True)]
assert "".join(pieces) == whole.message.content, (pieces, whole.message.content)
generated = client.generate(model="smollm2", prompt="What is the capital of France?", options=options)
assert "Paris" in generated.response and generated.done, generated

# Loaded models, with when each expires (a time Ollama's clients parse).
running = {m.model: m for m in client.ps().models}
assert "smollm2:latest" in running and running["smollm2:latest"].expires_at is not None, running
# keep_alive from a member of the socket's group is not honoured, and not an error either;
# here the test runs as the daemon's owner, so it is honoured.
assert client.chat(model="smollm2", messages=question, options=options, keep_alive="1m", stream=False).done

# Errors: an unknown model.
for stream in (False, True):
    try:
        result = client.chat(model="no-such-model", messages=question, stream=stream)
        if stream:
            list(result)
        raise AssertionError("an unknown model was served")
    except ollama.ResponseError as err:
        assert err.status_code == 404 and "no-such-model" in err.error, err
# Structured output: format "json" gives a JSON object; a schema mlxd cannot compile is a 400.
import json
reply = client.chat(model="smollm2", messages=question, format="json", options={**options, "num_predict": 80}, stream=False)
assert isinstance(json.loads(reply.message.content), dict), reply.message.content
try:
    client.chat(model="smollm2", messages=question, format={"type": "frob"}, stream=False)
    raise AssertionError("a schema that cannot compile was accepted")
except ollama.ResponseError as err:
    assert err.status_code == 400 and "frob" in err.error, err
print("ollama-python against mlxd at", endpoint, ": all checks passed")
