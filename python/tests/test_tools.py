"""Tool calling against the real chat templates of each family (checked in under
fixtures/templates, see SOURCES.md there), on the SmolLM2 tokenizer:

- the family is recognised from the template;
- what the template writes for an assistant's call is read back by the parser as exactly
  that call (so the parser reads the format the model was trained on), streamed in small
  pieces, with nothing left over as text;
- the grammar that enforces a named tool_choice accepts that same text, token by token;
- text around calls, broken calls and calls cut short come out as text;
- the whole path on the real SmolLM2 weights with Qwen 2.5's template: a named choice gives
  one call whose arguments validate, in the batch engine and the single-stream path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from mlxd_runtime import tools as T
from mlxd_runtime.errors import BadRequest
from test_generate import _store_model, generator  # noqa: F401 (generator: a module fixture)

TEMPLATES = Path(__file__).parent / "fixtures" / "templates"
CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Rome"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = ("get_weather", "The weather in a city now.", json.dumps(CITY))
TIME = ("get_time", "The time in a city now.", json.dumps({"type": "object", "properties": {"city": {"type": "string"}}}))
ARGS = {"city": "Oslo", "unit": "celsius"}
CALL = ("call_0123456789abcdef", "get_weather", json.dumps(ARGS))

# template file -> (family, variant)
FAMILIES = {
    "Qwen-Qwen2.5-7B-Instruct.jinja": ("hermes", ""),
    "Qwen-Qwen3-0.6B.jinja": ("hermes", ""),
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja": ("hermes", ""),
    "meta-llama-Llama-3.1-8B-Instruct.jinja": ("llama3", ""),
    "meta-llama-Llama-3.2-3B-Instruct.jinja": ("llama3", ""),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("mistral", "json"),
    "Mistral-Small-3.2-24B-Instruct-2506.jinja": ("mistral", "call_id"),
    "mistralai-Ministral-3-14B-Reasoning-2512.jinja": ("mistral", "args"),
    "unsloth-mistral-Devstral-Small-2507.jinja": ("mistral", "args"),
    "google-gemma-4-31B-it.jinja": ("gemma4", ""),
}
# What ends a model's turn (never part of the output the parser sees).
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "</s>", "<turn|>", "<|tool_response>")


def _smollm2() -> Path:
    path = _store_model()
    if path is None:
        pytest.skip("smollm2 is not imported (make setup)")
    return path


def tokenizer_with(template: str, tmp_path: Path):
    """The SmolLM2 tokenizer with `template` as its chat template, loaded as mlx-lm loads a
    model's (so mlx-lm's own tool-parser inference runs too)."""
    from mlx_lm.tokenizer_utils import load

    source = _smollm2()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copyfile(source / name, tmp_path / name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return load(tmp_path)


@pytest.fixture(params=sorted(FAMILIES))
def template(request, tmp_path):
    return request.param, tokenizer_with((TEMPLATES / request.param).read_text(), tmp_path)


def params(choice=("auto", None), tools=(WEATHER, TIME), **more):
    return {"tools": list(tools), "tool_choice": choice, "parallel_tool_calls": True, **more}


def rendered_call(tokenizer) -> str:
    """What the template writes for an assistant turn that calls get_weather(Oslo, celsius),
    without the end of the turn: the output a model trained on it would give."""
    family = T.family_of(tokenizer)
    ask = [{"role": "user", "content": "Weather in Oslo?"}]
    turn = {"role": "assistant", "content": "", "tool_calls": [CALL]}
    tools = T.template_tools(params())
    before = tokenizer.apply_chat_template(
        T.template_messages(ask, family), tools=tools, add_generation_prompt=True, tokenize=False
    )
    after = tokenizer.apply_chat_template(
        T.template_messages([*ask, turn], family), tools=tools, add_generation_prompt=False, tokenize=False
    )
    if after.startswith(before):
        text = after[len(before) :]
    else:  # Gemma 4's generation prompt differs: the model's turn follows its last header
        text = after[after.rindex("<|turn>model\n") + len("<|turn>model\n") :]
    text = text.rstrip()
    while text.endswith(END_OF_TURN):
        text = text[: -len(next(e for e in END_OF_TURN if text.endswith(e)))].rstrip()
    return text


TEMPLATE_TOOLS = T.template_tools(params())


def calls_of(family: T.Family) -> T.Calls:
    return T.Calls(family, TEMPLATE_TOOLS)


def run(calls: T.Calls, text: str, finish: str = "stop", piece: int = 3):
    """`text` through `calls` in pieces of `piece` characters: (text out, calls, finish)."""
    out, made, end = [], [], None
    pieces = [text[i : i + piece] for i in range(0, len(text), piece)] or [""]
    for index, chunk in enumerate(pieces):
        last = index == len(pieces) - 1
        sent, completed, end = calls.apply(chunk, finish if last else None)
        out.append(sent)
        made.extend(completed)
    return "".join(out), made, end


def test_each_family_is_recognised_from_its_template(template):
    name, tokenizer = template
    family = T.family_of(tokenizer)
    assert family is not None and (family.name, family.variant) == FAMILIES[name]
    assert T.takes_tools(tokenizer)


def test_the_parser_reads_the_calls_the_template_writes(template):
    name, tokenizer = template
    family = T.family_of(tokenizer)
    text = rendered_call(tokenizer)
    for piece in (1, 3, 1000):
        out, made, finish = run(calls_of(family), text, piece=piece)
        assert out == "" and finish == "tool_calls", (name, text, out)
        assert [(n, json.loads(a)) for _, n, a in made] == [("get_weather", ARGS)], (name, text)
        ids = [id_ for id_, _, _ in made]
        assert all(len(i) == 9 and i.isalnum() for i in ids) if family.short_ids else ids[0].startswith("call_")


def test_the_named_choice_grammar_accepts_what_the_template_writes(template):
    import llguidance
    import llguidance.hf

    name, tokenizer = template
    family = T.family_of(tokenizer)
    p = params(choice=("function", "get_weather"))
    if family.name not in ("hermes", "llama3", "mistral"):
        with pytest.raises(BadRequest, match=f"the {family.name} tool-call format"):
            T.choice_grammar(family, p, tokenizer)
        return
    grammar = llguidance.LLMatcher.grammar_from_lark(T.choice_grammar(family, p, tokenizer))
    hf = tokenizer._tokenizer
    matcher = llguidance.LLMatcher(llguidance.hf.from_tokenizer(hf), grammar)
    text = rendered_call(tokenizer)
    for token in hf.encode(text, add_special_tokens=False):
        assert matcher.consume_token(token), (name, text, matcher.get_error())
    assert matcher.is_accepting(), (name, text)
    # ... and nothing else: another function, or arguments outside the schema.
    wrong = text.replace("Oslo", "Lima")
    matcher = llguidance.LLMatcher(llguidance.hf.from_tokenizer(hf), grammar)
    assert not all(matcher.consume_token(t) for t in hf.encode(wrong, add_special_tokens=False))


def test_history_with_calls_and_results_renders_with_each_templates_ids(template):
    name, tokenizer = template
    family = T.family_of(tokenizer)
    conversation = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": '{"celsius": -3}', "tool_call_id": CALL[0], "name": "get_weather"},
    ]
    text = tokenizer.apply_chat_template(
        T.template_messages(conversation, family), tools=T.template_tools(params()), add_generation_prompt=True,
        tokenize=False,
    )
    assert "-3" in text and "get_weather" in text and "Oslo" in text, name
    if family.short_ids and "[CALL_ID]" in text or '"id"' in text:
        mapped = family.message_id(CALL[0])
        assert len(mapped) == 9 and mapped in text and CALL[0] not in text, name


def hermes():
    return T.Family("hermes", "<tool_call>", "</tool_call>", T._parse_hermes)


def test_text_around_calls_stays_text_and_broken_calls_are_text():
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n</tool_call>'
    # Text before a call is sent; whitespace between and after calls is not.
    out, made, finish = run(calls_of(hermes()), "Let me check.\n" + call + "\n" + call + "\n")
    assert out == "Let me check.\n" and len(made) == 2 and finish == "tool_calls"
    assert len({id_ for id_, _, _ in made}) == 2
    # A call that does not parse is text, as written; so is a call cut short by max_tokens.
    broken = "<tool_call>\n{not json}\n</tool_call>"
    assert run(calls_of(hermes()), "a " + broken) == ("a " + broken, [], "stop")
    cut = call[:40]
    assert run(calls_of(hermes()), cut, finish="length") == (cut, [], "length")
    # A marker's beginning is held back only while it could be one.
    assert run(calls_of(hermes()), "x < y and <tool", piece=1) == ("x < y and <tool", [], "stop")
    # Plain text: as is, ending "stop".
    assert run(calls_of(hermes()), "Oslo is cold.") == ("Oslo is cold.", [], "stop")


def test_llama3_output_is_a_call_only_when_it_is_one_whole():
    llama = T.Family("llama3", "", "", T._parse_llama3)
    call = '{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "celsius"}}'
    for text in (call, "  " + call, "<|python_tag|>" + call):
        out, made, finish = run(calls_of(llama), text)
        assert (out, finish) == ("", "tool_calls") and [m[1] for m in made] == ["get_weather"]
    # Two calls, as Llama 3.2 may write them.
    assert len(run(calls_of(llama), call + "; " + call)[1]) == 2
    # Text, or JSON that is not a call, is text.
    assert run(calls_of(llama), "It is cold.", piece=2) == ("It is cold.", [], "stop")
    assert run(calls_of(llama), '{"celsius": -3}') == ('{"celsius": -3}', [], "stop")
    assert run(calls_of(llama), call[:30], finish="length") == (call[:30], [], "length")


def test_mistral_calls_in_each_form():
    mistral = T.Family("mistral", "[TOOL_CALLS]", "", T._parse_mistral, short_ids=True)
    forms = [
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "get_time", "arguments": {}}]',
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}[TOOL_CALLS]get_time[ARGS]{}',
        '[TOOL_CALLS]get_weather[CALL_ID]abcdefgh1[ARGS]{"city": "Oslo"}[TOOL_CALLS]get_time[CALL_ID]x2345678a[ARGS]{}',
    ]
    for text in forms:
        out, made, finish = run(calls_of(mistral), text)
        assert out == "" and finish == "tool_calls", text
        assert [(n, json.loads(a)) for _, n, a in made] == [("get_weather", {"city": "Oslo"}), ("get_time", {})]
    # Mistral's templates need 9-character ids: others are mapped, the same each time.
    assert mistral.message_id("call_1") == mistral.message_id("call_1") != "call_1"
    assert len(mistral.message_id("call_1")) == 9 and mistral.message_id("abcdefgh1") == "abcdefgh1"


def test_only_whole_calls_of_the_requests_tools_count():
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n</tool_call>'
    # Complete but not closed: the model's end of sequence closes it; max_tokens does not.
    assert run(calls_of(hermes()), call[: -len("</tool_call>")], finish="stop")[2] == "tool_calls"
    cut = call[: -len("</tool_call>")]
    assert run(calls_of(hermes()), cut, finish="length") == (cut, [], "length")
    # Another function's name, NaN (not JSON), or more calls than a message may carry.
    other = call.replace("get_weather", "launch_rocket")
    assert run(calls_of(hermes()), other) == (other, [], "stop")
    nan = call.replace('"Oslo"', "NaN")
    assert run(calls_of(hermes()), nan) == (nan, [], "stop")
    out, made, _ = run(calls_of(hermes()), call * (T.MAX_CALLS + 1), piece=1000)
    assert len(made) == T.MAX_CALLS and out == call
    # Llama 3 has no markers: JSON that is not exactly a call of a tool is text.
    llama = T.Family("llama3", "", "", T._parse_llama3)
    for text in ('{"name": "Alice", "age": 3}', '{"name": "Alice"}', '{"name": "get_time", "parameters": {}, "x": 1}'):
        assert run(calls_of(llama), text) == (text, [], "stop"), text


def test_formats_sharing_hermes_markers_go_to_their_own_parser(tmp_path):
    # GLM's template writes <tool_call>name<arg_key>k</arg_key><arg_value>v</arg_value>:
    # mlx-lm's glm47 parser, which types each value with the tool's schema.
    template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
        "{% for tc in m.tool_calls or [] %}<tool_call>{{ tc.function.name }}"
        "{% for k, v in tc.function.arguments.items() %}<arg_key>{{ k }}</arg_key><arg_value>{{ v }}</arg_value>"
        "{% endfor %}</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if tools %}{{ tools | tojson }}{% endif %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tokenizer = tokenizer_with(template, tmp_path)
    family = T.family_of(tokenizer)
    assert family.name == "glm47", family
    tools = T.template_tools(params(tools=[("add", "", json.dumps({"type": "object", "properties": {
        "n": {"type": "integer"}, "label": {"type": "string"}}}))]))
    text = "<tool_call>add\n<arg_key>n</arg_key>\n<arg_value>3</arg_value>\n<arg_key>label</arg_key>\n<arg_value>7</arg_value>\n</tool_call>"
    out, made, finish = run(T.Calls(family, tools), text)
    assert (out, finish) == ("", "tool_calls") and json.loads(made[0][2]) == {"n": 3, "label": "7"}, made
    with pytest.raises(BadRequest, match="the glm47 tool-call format"):
        T.choice_grammar(family, params(choice=("required", None)), tokenizer)


def test_schemas_with_local_definitions_compile_into_the_choice_grammar(tmp_path):
    import llguidance
    import llguidance.hf

    # What Pydantic writes for a nested enum: $defs and a $ref to it.
    schema = {
        "$defs": {"Unit": {"enum": ["celsius", "fahrenheit"], "type": "string"}},
        "properties": {"city": {"type": "string", "enum": ["Oslo"]}, "unit": {"$ref": "#/$defs/Unit"}},
        "required": ["city", "unit"], "type": "object", "additionalProperties": False,
    }
    tokenizer = tokenizer_with((TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(), tmp_path)
    p = params(choice=("required", None), tools=[("get_weather", "", json.dumps(schema)), TIME])
    grammar = llguidance.LLMatcher.grammar_from_lark(T.choice_grammar(T.family_of(tokenizer), p, tokenizer))
    hf = tokenizer._tokenizer
    for unit, ok in (("celsius", True), ("kelvin", False)):
        matcher = llguidance.LLMatcher(llguidance.hf.from_tokenizer(hf), grammar)
        assert not matcher.is_error(), matcher.get_error()
        text = f'<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "Oslo", "unit": "{unit}"}}}}\n</tool_call>'
        accepted = all(matcher.consume_token(t) for t in hf.encode(text, add_special_tokens=False))
        assert accepted == ok and (matcher.is_accepting() or not ok), (unit, matcher.get_error())


def test_no_tools_or_choice_none_means_no_parsing_and_tools_are_not_shown():
    assert T.template_tools(params(choice=("none", None))) is None
    assert T.template_tools({"tools": [], "tool_choice": ("auto", None)}) is None
    assert T.choice_grammar(hermes(), params(), None) is None


# ---------------------------------------------------------------------------------------
# The whole path, on the real SmolLM2 weights.


@pytest.fixture
def qwen_template(generator):
    """SmolLM2 with Qwen 2.5's tool-calling template (both speak ChatML)."""
    hf = generator.tokenizer._tokenizer
    original = hf.chat_template
    hf.chat_template = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    yield generator
    hf.chat_template = original


ASK = [{"role": "user", "content": "What is the weather in Oslo? Answer in celsius.", "tool_calls": []}]


def sampling(**more):
    return {"max_tokens": 60, "temperature": 0.0, "top_p": 1.0, "seed": None, "stop": [], **more}


def test_a_model_whose_template_takes_no_tools_refuses_them(generator):
    with pytest.raises(BadRequest, match="does not take tools"):
        generator.checked_prompt(None, ASK, sampling(**params()))
    # tool_choice none: the tools are not shown, nothing to refuse.
    assert generator.checked_prompt(None, ASK, sampling(**params(choice=("none", None))))


def test_a_named_choice_makes_one_valid_call_in_both_paths(qwen_template):
    p = sampling(**params(choice=("function", "get_weather")))
    engine = qwen_template.batch_engine(4)
    engine.start(1, None, ASK, p)
    engine.start(2, None, ASK, sampling())  # a neighbour without tools: plain text
    text, made, finish = {1: "", 2: ""}, {1: [], 2: []}, {}
    while len(finish) < 2:
        for job, piece, _, end, _, calls in engine.step():
            text[job] += piece
            made[job] += calls
            if end:
                finish[job] = end
    stream = qwen_template.start(None, ASK, p)
    single_text, single_made, single_finish = "", [], None
    while single_finish is None:
        piece, _, single_finish, _, calls = stream.step()
        single_text += piece
        single_made += calls
    for out, calls, end in ((text[1], made[1], finish[1]), (single_text, single_made, single_finish)):
        assert (out, end) == ("", "tool_calls")
        ((id_, name, arguments),) = calls
        assert name == "get_weather" and id_.startswith("call_")
        jsonschema.validate(json.loads(arguments), CITY)
    assert made[2] == [] and finish[2] in ("stop", "length") and text[2]
