"""Constrained decoding (llguidance) in both generation paths, on the bundled SmolLM2: the
output is what the constraint allows, a constraint that cannot compile is refused before
the stream starts, max_tokens still cuts (as "length"), and unconstrained streams in the
same batch are untouched."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from mlxd_runtime.errors import BadRequest
from test_generate import generator  # noqa: F401 (the bundled SmolLM2, a module fixture)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "enum": ["Paris", "Rome", "Tokyo"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
ASK = [("user", "Describe Alice, a 30 year old from Paris, as JSON.")]


def params(constraint=None, max_tokens=80):
    return {"max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0, "seed": None, "stop": [],
            "constraint": constraint}


def run_batch(generator, streams: dict[int, tuple[list, dict]]) -> dict[int, tuple[str, str]]:
    engine = generator.batch_engine(8)
    for job, (messages, p) in streams.items():
        engine.start(job, None, messages, p)
    out = {job: "" for job in streams}
    finished: dict[int, str] = {}
    while len(finished) < len(streams):
        for job, piece, _, finish, _, _ in engine.step():
            out[job] += piece
            if finish:
                finished[job] = finish
    return {job: (out[job], finished[job]) for job in streams}


def run_single(generator, messages, p) -> tuple[str, str]:
    stream = generator.start(None, messages, p)
    text = ""
    while True:
        piece, _, finish, _, _ = stream.step()
        text += piece
        if finish:
            return text, finish


def test_json_schema_regex_and_grammar_constrain_batched_streams_and_leave_the_others_alone(generator):
    alone = run_batch(generator, {9: ([("user", "Say hello.")], params(max_tokens=12))})[9]
    results = run_batch(generator, {
        1: (ASK, params(("json_schema", json.dumps(PERSON)))),
        2: ([("user", "Give me a phone number.")], params(("regex", r"[0-9]{3}-[0-9]{4}"))),
        3: ([("user", "Is Paris in France?")], params(("lark", 'start: "yes" | "no"'))),
        4: ([("user", "Any JSON object, please.")], params(("json_object", ""))),
        9: ([("user", "Say hello.")], params(max_tokens=12)),
    })
    text, finish = results[1]
    assert finish == "stop", results[1]
    jsonschema.validate(json.loads(text), PERSON)
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", results[2][0]) and results[2][1] == "stop", results[2]
    assert results[3][0] in ("yes", "no") and results[3][1] == "stop", results[3]
    assert isinstance(json.loads(results[4][0]), dict), results[4]
    assert results[9] == alone, "an unconstrained stream in the batch is unchanged"


def test_the_single_stream_path_constrains_too(generator):
    text, finish = run_single(generator, ASK, params(("json_schema", json.dumps(PERSON))))
    assert finish == "stop"
    jsonschema.validate(json.loads(text), PERSON)


def test_max_tokens_cuts_a_constrained_stream_as_length_never_as_a_complete_answer(generator):
    (text, finish), = run_batch(generator, {1: (ASK, params(("json_schema", json.dumps(PERSON)), max_tokens=4))}).values()
    assert finish == "length"
    with pytest.raises(ValueError):
        json.loads(text)


@pytest.mark.parametrize("constraint, message", [
    (("json_schema", '{"type": "frob"}'), "JSON schema"),
    (("json_schema", "{not json"), "not JSON"),
    (("regex", "a(b"), "regular expression"),
    (("lark", "start: foo"), "grammar"),
    (("xml", "<a/>"), "unknown constraint kind"),
])
def test_a_constraint_that_cannot_compile_is_a_bad_request_before_the_stream_starts(generator, constraint, message):
    engine = generator.batch_engine(2)
    with pytest.raises(BadRequest, match=message):
        engine.start(1, None, ASK, params(constraint))
    assert engine.active() == 0
    with pytest.raises(BadRequest, match=message):
        generator.start(None, ASK, params(constraint))


def test_compiled_constraints_are_cached_and_each_stream_gets_its_own_matcher(generator):
    a = generator.constraint(params(("regex", "[a-z]+")), 5)
    b = generator.constraint(params(("regex", "[a-z]+")), 5)
    assert a.matcher is not b.matcher
    assert len(generator._grammars._templates) >= 1
    key = ("regex", "[a-z]+")
    assert key in generator._grammars._templates
