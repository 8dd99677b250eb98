"""The asyncio client against the shared daemon: the same requests, streams, credit and
errors as the blocking client, from many tasks on one connection; logprobs; structured
output; rerank and embedding prompts on the fixture models; tool calls, streamed."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, TypeVar

import pytest

import mlxd
from harness import (
    BAD_SCHEMA,
    PHONE_PATTERN,
    PHONE_PROMPT,
    SKY_PROMPT,
    SKY_SCHEMA,
    WEATHER_QUESTION,
    WEATHER_TOOL,
    Daemon,
    check_greedy_logprobs,
    check_phone_answer,
    check_sky_answer,
    check_weather_call,
    cosine,
    model_named,
    weather_answered,
)

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def test_leases_embeddings_and_errors(daemon: Daemon, minilm_reference: Any) -> None:
    async def scenario() -> None:
        async with mlxd.AsyncClient(daemon.socket, fallback=False, retry=mlxd.NO_RETRIES) as client:
            assert client.welcome.protocol_version == mlxd.PROTOCOL_VERSION
            async with client.lease("minilm") as minilm:
                texts = [item["text"] for item in minilm_reference[:6]]
                # Six requests in flight at once on one connection.
                answers = await asyncio.gather(*(minilm.embed([text]) for text in texts))
                for item, (vector,) in zip(minilm_reference, answers):
                    assert cosine(vector, item["embedding"]) >= 0.999
                matrix = await minilm.embed(texts, numpy=True)
                assert matrix.shape == (6, 384)
                assert model_named(await client.models(), "minilm").leases >= 1
            assert minilm.released
            with pytest.raises(mlxd.InvalidLeaseError):
                await minilm.embed(["x"])
            with pytest.raises(mlxd.NotFoundError):
                await client.tokenize("no-such-model", "x")
            assert (await client.status()).protocol_version == mlxd.PROTOCOL_VERSION

    run(scenario())


def test_rerank_and_embedding_prompts(daemon: Daemon) -> None:
    text = "How long do giant pandas live?"

    async def scenario() -> None:
        async with mlxd.AsyncClient(daemon.socket, fallback=False, retry=mlxd.NO_RETRIES) as client:
            names = {model.name for model in await client.models()}
            assert {"st-bert-mean", "rerank-bert"} <= names, f"fixture models not served: {sorted(names)}"
            documents = ["In China.", "On the moon.", "Pandas."]
            async with client.lease("rerank-bert") as reranker:
                answer = await reranker.rerank("Where do pandas live?", documents, top_n=2)
            assert len(answer.results) == 2 and answer.prompt_tokens > 0
            assert all(0.0 <= result.score <= 1.0 for result in answer.results)
            assert answer.results[0].score >= answer.results[1].score
            async with client.lease("st-bert-mean") as st:
                ((query,), (spelled_out,), (plain,)) = await asyncio.gather(
                    st.embed([text], prompt="query"),
                    st.embed(["query: " + text], prompt=""),
                    client.embed("st-bert-mean", [text], prompt=""),
                )
            assert max(abs(x - y) for x, y in zip(query, spelled_out)) <= 1e-5
            assert max(abs(x - y) for x, y in zip(query, plain)) > 1e-3
            with pytest.raises(mlxd.BadRequestError, match="query"):
                await client.embed("st-bert-mean", [text], prompt="no-such-prompt")
            with pytest.raises(mlxd.BadRequestError):
                await client.rerank("st-bert-mean", "q", ["a"])

    run(scenario())


def test_generation_stream_credit_and_cancel(daemon: Daemon) -> None:
    async def scenario() -> None:
        client = mlxd.AsyncClient(daemon.socket, fallback=False)
        try:
            smollm2 = await client.lease("smollm2")
            # The same greedy answer as the blocking client's.
            with daemon.client() as blocking:
                expected = blocking.chat("smollm2", [("user", "Say hi")], temperature=0, max_tokens=8)
            answer = await smollm2.chat([("user", "Say hi")], temperature=0, max_tokens=8)
            assert (answer.text, answer.tokens) == (expected.text, expected.tokens)

            # Greedy tokens with logprobs=3, as the blocking client checks them.
            prompt = [("user", "Name three colours of the rainbow.")]
            stream = await smollm2.generate(prompt, temperature=0, max_tokens=4, logprobs=3)
            with_logprobs = [token async for token in stream]
            stream = await client.generate("smollm2", prompt, temperature=0, max_tokens=4)
            without = [token async for token in stream]
            check_greedy_logprobs(with_logprobs, without, 3)
            answer = await client.chat("smollm2", prompt, temperature=0, max_tokens=4, logprobs=3)
            assert [logprobs.top[0].token for logprobs in answer.logprobs] == answer.tokens

            # Structured output, as the blocking client checks it: a JSON schema and a
            # regex (by lease and by name, at once), a schema that cannot compile.
            schema, pattern = mlxd.JsonSchema(SKY_SCHEMA), mlxd.Regex(PHONE_PATTERN)
            sky, phone = await asyncio.gather(
                smollm2.chat(SKY_PROMPT, temperature=0, max_tokens=60, constraint=schema),
                client.chat("smollm2", PHONE_PROMPT, temperature=0, max_tokens=60, constraint=pattern),
            )
            check_sky_answer(sky)
            check_phone_answer(phone)
            with pytest.raises(mlxd.BadRequestError, match="frob"):
                await smollm2.chat("x", max_tokens=4, constraint=mlxd.JsonSchema(BAD_SCHEMA))

            # A reader that stops holds exactly its window.
            stream = await smollm2.generate("One, two, three,", temperature=0, max_tokens=12, window=3)
            for _ in range(600):
                if stream.buffered >= 3:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            assert stream.buffered == 3
            tokens = [token async for token in stream]
            assert len(tokens) == 12 and stream.summary is not None
            assert stream.summary.finish_reason == mlxd.FinishReason.Length

            # Cancel mid-stream.
            stream = await smollm2.generate("Once upon a time", temperature=0, max_tokens=200)
            first = await stream.__anext__()
            await stream.cancel()
            rest = [token async for token in stream]
            assert first.token is not None and len(rest) < 199
            assert stream.summary is not None and stream.summary.finish_reason == mlxd.FinishReason.Cancelled
            await smollm2.release()
        finally:
            await client.close()

    run(scenario())


def test_a_closed_client_fails_its_requests(daemon: Daemon) -> None:
    async def scenario() -> None:
        client = await mlxd.AsyncClient(daemon.socket, fallback=False).connect()
        await client.close()
        with pytest.raises(mlxd.ConnectionClosedError):
            await client.ping()

    run(scenario())


def test_a_task_cancelled_mid_stream_cancels_its_generation(daemon: Daemon) -> None:
    """A reader task cancelled (here by wait_for's timeout) while it awaits the next token:
    its generation is cancelled at the daemon, which frees the slot at once (not after the
    stream pause limit)."""

    async def running(client: mlxd.AsyncClient) -> int:
        return model_named(await client.models(), "smollm2").sched.running

    async def scenario() -> None:
        async with mlxd.AsyncClient(daemon.socket, fallback=False) as client:
            stream = await client.generate("smollm2", "Once upon a time", temperature=0, max_tokens=2000, window=4)
            await stream.__anext__()

            async def read_on() -> None:
                async for _ in stream:
                    pass

            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(read_on(), 0.3)
            assert stream.finished
            for _ in range(100):
                if await running(client) == 0:
                    break
                await asyncio.sleep(0.05)
            assert await running(client) == 0, "the cancelled task's generation still holds its slot"
            await stream.aclose()
            assert await client.ping() >= 0

    run(scenario())


def test_tool_calls_streamed(daemon: Daemon, tools_model: str) -> None:
    async def scenario() -> None:
        async with mlxd.AsyncClient(daemon.socket, fallback=False, retry=mlxd.NO_RETRIES) as client:
            # The call comes in the stream, after the token that completed it.
            stream = await client.generate(
                tools_model,
                WEATHER_QUESTION,
                tools=[WEATHER_TOOL],
                tool_choice={"name": "get_weather"},
                temperature=0,
                max_tokens=64,
            )
            items = [item async for item in stream]
            calls = [item for item in items if isinstance(item, mlxd.ToolCall)]
            assert len(calls) == 1 and isinstance(items[items.index(calls[0]) - 1], mlxd.Token), items
            assert stream.summary is not None
            first = mlxd.Completion("", [], stream.summary, tool_calls=calls)
            call = check_weather_call(first)
            second = await client.chat(
                tools_model, weather_answered(call), tools=[WEATHER_TOOL], temperature=0, max_tokens=4
            )
            assert second.summary.prompt_tokens > stream.summary.prompt_tokens

    run(scenario())
