"""Tool calling: the request's tools shown to the model through its chat template, the
calls parsed out of its output in the format of the template's family, and
``tool_choice`` "required" or a named function enforced by a grammar in that format.

Families (:func:`family_of`, from the chat template's text):

- ``hermes``: Qwen 2.5/3, Hermes 2 Pro/3 and the many models trained on their format:
  ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, one block per call.
- ``llama3``: Llama 3.1/3.2/3.3: the whole output is ``{"name": ..., "parameters": {...}}``
  (after an optional ``<|python_tag|>``); a template that renders one call per message.
- ``mistral``: ``[TOOL_CALLS]`` then a JSON list of calls (Mistral 7B v0.3, Nemo), or
  ``name[ARGS]{...}`` per call (Ministral 3, Devstral), with ``[CALL_ID]id`` where the
  template has it (Mistral Small 3.2); Mistral's templates require 9-character call ids.
- anything else mlx-lm knows how to parse (Gemma's ``<start_function_call>`` and Gemma 4's
  ``<|tool_call>``, Qwen3-Coder's XML, GLM, Kimi, MiniMax, LFM2's pythonic calls, ...):
  split at mlx-lm's markers and parsed by mlx-lm's parser for it. "required" and named
  choices need a grammar, which only the three families above have: for the others they
  are a BadRequest naming the family.

Parsing works on the stream's text (after stop strings): text outside calls is passed on
as it comes, except a possible beginning of a call marker, held back until it is one or is
not; the text of a call is held until the call is complete, then parsed. Text that looked
like a call but does not parse is passed on as text: a call is never made up from half of
one (a stream cut by max_tokens inside a call ends "length" with that text).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import string
from dataclasses import dataclass
from typing import Callable

from .errors import BadRequest

_ALPHANUMERIC = string.ascii_letters + string.digits
# Most calls one stream makes (the protocol's most tool calls in one message): calls
# after that come as text.
MAX_CALLS = 128
# JSON as the templates write it (Python's json.dumps defaults, which transformers' tojson
# uses): calls the model is made to write look like the ones it was trained on.
_JSON_STYLE = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


@dataclass
class Family:
    name: str
    # Text that opens a call ("" for llama3: the whole output is the call) and closes it
    # ("" = the calls run to the end of the output).
    start: str
    end: str
    # (text of the calls, the request's tools as templates take them) -> [(name, arguments)]
    parse: Callable[[str, list], list[tuple[str, dict]]]
    # Call ids: 9 letters and digits (Mistral's templates refuse any other).
    short_ids: bool = False
    # mistral: "json" ([TOOL_CALLS][{...}]), "args" (name[ARGS]{...}) or "call_id"
    # (name[CALL_ID]id[ARGS]{...}).
    variant: str = ""

    def new_id(self) -> str:
        if self.short_ids:
            return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(9))
        return "call_" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(24))

    def message_id(self, given: str) -> str:
        """A conversation's call id as this family's template takes it (Mistral's need 9
        letters and digits: another id is mapped to one, the same wherever it appears)."""
        if not self.short_ids or re.fullmatch(r"[A-Za-z0-9]{9}", given):
            return given
        return hashlib.sha256(given.encode()).hexdigest()[:9]


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


# Strict JSON: NaN and Infinity (which Python's decoder takes) are not.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _call(obj, arguments_key: str = "arguments", whole: bool = False) -> tuple[str, dict]:
    """(name, arguments) of a call object; `whole`: the object must be exactly a call
    (name and arguments, nothing else), for formats without markers around calls."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError("a call is an object with a name")
    keys = {arguments_key, "arguments"}
    if whole and (not keys & obj.keys() or obj.keys() - keys - {"name"}):
        raise ValueError("a call is exactly a name and its arguments")
    arguments = obj.get(arguments_key, obj.get("arguments", {}))
    if isinstance(arguments, str):  # some models write the arguments as JSON text
        arguments = _DECODER.decode(arguments)
    if not isinstance(arguments, dict):
        raise ValueError("a call's arguments are an object")
    return obj["name"], arguments


def _json_values(text: str) -> list:
    """The JSON values in `text`, one after another (separated by whitespace or `;`)."""
    decoder = _DECODER
    values, at = [], 0
    while True:
        while at < len(text) and text[at] in " \t\r\n;":
            at += 1
        if at == len(text):
            return values
        value, at = decoder.raw_decode(text, at)
        values.append(value)


def _parse_hermes(text: str, _tools=None) -> list[tuple[str, dict]]:
    values = _json_values(text.strip())
    if len(values) != 1:
        raise ValueError("one JSON object per <tool_call>")
    value = values[0]
    return [_call(v) for v in value] if isinstance(value, list) else [_call(value)]


def _parse_llama3(text: str, _tools=None) -> list[tuple[str, dict]]:
    text = text.strip()
    if text.startswith("<|python_tag|>"):
        text = text[len("<|python_tag|>") :]
    values = _json_values(text)
    if not values:
        raise ValueError("no call")
    # No markers: JSON the user asked for ({"name": "Alice", ...}) must not pass for a call.
    return [_call(v, "parameters", whole=True) for v in values]


_MISTRAL_HEADER = re.compile(r"\s*(?:\[TOOL_CALLS\])?\s*([\w.-]+)\s*(?:\[CALL_ID\]\s*([A-Za-z0-9]+)\s*)?\[ARGS\]")


def _parse_mistral(text: str, _tools=None) -> list[tuple[str, dict]]:
    text = text.strip()
    if text.startswith("["):  # [{"name": ..., "arguments": ...}, ...]
        (value,) = _json_values(text)
        if not isinstance(value, list) or not value:
            raise ValueError("a list of calls")
        return [_call(v) for v in value]
    decoder = _DECODER
    calls, at = [], 0
    while at < len(text):
        match = _MISTRAL_HEADER.match(text, at)
        if match is None:
            if text[at:].strip():
                raise ValueError("name[ARGS]{...}")
            break
        arguments, at = decoder.raw_decode(text, match.end())
        if not isinstance(arguments, dict):
            raise ValueError("a call's arguments are an object")
        calls.append((match.group(1), arguments))
    if not calls:
        raise ValueError("no call")
    return calls


def _mlx_lm_parser(module) -> Callable[[str, list], list[tuple[str, dict]]]:
    def parse(text: str, tools=None) -> list[tuple[str, dict]]:
        # The tools let a parser type the values (Qwen3-Coder's XML parameters are text).
        parsed = module.parse_tool_call(text, tools)
        return [_call(p) for p in (parsed if isinstance(parsed, list) else [parsed])]

    return parse


def _template_text(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the tool one is used with tools
        return template.get("tool_use") or template.get("default") or ""
    if isinstance(template, list):  # [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template", "") for t in template if isinstance(t, dict)}
        return named.get("tool_use") or named.get("default") or ""
    return template or ""


def takes_tools(tokenizer) -> bool:
    """Whether the model's chat template uses a `tools` variable."""
    return re.search(r"\btools\b", _template_text(tokenizer)) is not None


def family_of(tokenizer) -> Family | None:
    """The tool-call format of the model's chat template, or None if it has none."""
    template = _template_text(tokenizer)
    # mlx-lm's inference (what mlx_lm.server uses) knows the formats that share markers
    # with Hermes' (GLM's <tool_call>name<arg_key>..., Qwen3-Coder's XML): its parser is
    # taken for any format other than the two mlxd has grammars for.
    parser = getattr(tokenizer, "tool_parser", None)
    start, end = getattr(tokenizer, "tool_call_start", None), getattr(tokenizer, "tool_call_end", None)
    kind = parser.__module__.rsplit(".", 1)[-1] if parser is not None else None
    if kind is not None and kind not in ("json_tools", "mistral") and start:
        import importlib

        return Family(kind, start, end or "", _mlx_lm_parser(importlib.import_module(parser.__module__)))
    if "[TOOL_CALLS]" in template:
        variant = "call_id" if "[CALL_ID]" in template else "args" if "[ARGS]" in template else "json"
        return Family("mistral", "[TOOL_CALLS]", "", _parse_mistral, short_ids=True, variant=variant)
    if "<tool_call>" in template and not re.search(r"<tool_call>(\\n|\n)<function=|<arg_key>", template):
        return Family("hermes", "<tool_call>", "</tool_call>", _parse_hermes)
    if "<|python_tag|>" in template or ("ipython" in template and '"parameters"' in template):
        return Family("llama3", "", "", _parse_llama3)
    return None


# ---------------------------------------------------------------------------------------
# The prompt: messages and tools as Hugging Face chat templates take them.


def template_messages(messages: list[dict], family: Family | None) -> list[dict]:
    """The protocol's messages (role, content, tool_calls as (id, name, arguments JSON),
    tool_call_id, name) as chat templates read them: an assistant's calls as
    ``{"id", "type": "function", "function": {"name", "arguments": dict}}``, a tool
    message with its ``tool_call_id`` and ``name``."""
    out = []
    for message in messages:
        if isinstance(message, (tuple, list)):  # (role, content)
            message = {"role": message[0], "content": message[1]}
        item = {"role": message["role"], "content": message["content"]}
        calls = message.get("tool_calls") or []
        if calls:
            item["tool_calls"] = [
                {
                    "id": family.message_id(id_) if family else id_,
                    "type": "function",
                    "function": {"name": name, "arguments": json.loads(arguments)},
                }
                for id_, name, arguments in calls
            ]
        if message.get("tool_call_id") is not None:
            id_ = message["tool_call_id"]
            item["tool_call_id"] = family.message_id(id_) if family else id_
        if message.get("name") is not None:
            item["name"] = message["name"]
        out.append(item)
    return out


def template_tools(params: dict) -> list[dict] | None:
    """The request's tools as templates take them, or None (none, or tool_choice none)."""
    tools = params.get("tools") or []
    choice, _ = params.get("tool_choice") or ("auto", None)
    if not tools or choice == "none":
        return None
    return [
        {"type": "function", "function": {"name": name, "description": description, "parameters": json.loads(schema)}}
        for name, description, schema in tools
    ]


# ---------------------------------------------------------------------------------------
# tool_choice "required" and named: a grammar in the family's format.


def _call_schema(family: Family, name: str, parameters: dict) -> dict:
    key = "parameters" if family.name == "llama3" else "arguments"
    properties = {"name": {"const": name}, key: parameters}
    if family.name == "mistral":  # Nemo's template writes each call's id after it
        properties["id"] = {"type": "string", "pattern": "^[a-zA-Z0-9]{9}$"}
    return {"type": "object", "properties": properties, "required": ["name", key], "additionalProperties": False}


def _hoisted(tools: list[tuple[str, dict]]) -> tuple[list[tuple[str, dict]], dict]:
    """The tools' schemas with their local definitions (`$defs`, `definitions`, what
    Pydantic writes for nested models and enums) moved to one root `$defs`, each tool's
    under its own prefix, and their `$ref`s rewritten: inside a call's schema, a `$ref`
    would otherwise resolve against the call's wrapper, which has none."""
    hoisted: dict = {}
    out = []
    for index, (name, schema) in enumerate(tools):
        prefix = f"tool{index}_"

        def rewrite(node):
            if isinstance(node, dict):
                node = {k: rewrite(v) for k, v in node.items() if k not in ("$defs", "definitions")}
                ref = node.get("$ref")
                if isinstance(ref, str):
                    if ref == "#":
                        node["$ref"] = f"#/$defs/{prefix}"
                    for local in ("#/$defs/", "#/definitions/"):
                        if ref.startswith(local):
                            node["$ref"] = f"#/$defs/{prefix}{ref[len(local):]}"
                return node
            if isinstance(node, list):
                return [rewrite(v) for v in node]
            return node

        if isinstance(schema, dict):
            for key in ("$defs", "definitions"):
                for def_name, definition in (schema.get(key) or {}).items():
                    hoisted[f"{prefix}{def_name}"] = rewrite(definition)
            if '"$ref": "#"' in json.dumps(schema):
                hoisted[prefix] = rewrite(schema)
        out.append((name, rewrite(schema)))
    return out, hoisted


def _lark_json(schema: dict) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": _JSON_STYLE})


def _lark_literal(text: str, tokenizer) -> str:
    """`text` in a Lark rule: a special token by id (grammars cannot spell those), else
    the quoted text."""
    ids = tokenizer.encode(text, add_special_tokens=False) if text else []
    special = set(getattr(getattr(tokenizer, "_tokenizer", tokenizer), "all_special_ids", []) or [])
    added = getattr(getattr(tokenizer, "_tokenizer", tokenizer), "added_tokens_decoder", {}) or {}
    if len(ids) == 1 and (ids[0] in special or getattr(added.get(ids[0]), "special", False)):
        return f"<[{ids[0]}]>"
    return json.dumps(text)


def choice_grammar(family: Family | None, params: dict, tokenizer) -> str | None:
    """The Lark grammar that makes the output the call(s) `tool_choice` asks for, or None
    when the model may choose ("auto", "none")."""
    choice, named = params.get("tool_choice") or ("auto", None)
    if choice not in ("required", "function") or not params.get("tools"):
        return None
    if family is None or family.name not in ("hermes", "llama3", "mistral"):
        what = f"the {family.name} tool-call format" if family else "this model's chat template (no tool-call format)"
        raise BadRequest(
            f"tool_choice {choice!r} needs a grammar for {what}; there is one for the hermes/qwen, "
            "llama3 and mistral formats (use tool_choice auto)"
        )
    tools = [(name, json.loads(schema)) for name, _, schema in params["tools"] if choice != "function" or name == named]
    parallel = bool(params.get("parallel_tool_calls", True)) and choice == "required"
    wrapped, defs = _hoisted(tools)
    defs = {"$defs": defs} if defs else {}
    if family.name == "hermes":
        schemas = [_call_schema(family, name, parameters) for name, parameters in wrapped]
        schema = {**(schemas[0] if len(schemas) == 1 else {"anyOf": schemas}), **defs}
        start = _lark_literal("<tool_call>", tokenizer) + ' "\\n"'
        end = '"\\n" ' + _lark_literal("</tool_call>", tokenizer)
        rules = [f"call: {start} {_lark_json(schema)} {end}"]
        top = 'call ("\\n" call)*' if parallel else "call"
    elif family.name == "llama3":  # one call per message in Llama 3's templates
        schemas = [_call_schema(family, name, parameters) for name, parameters in wrapped]
        schema = {**(schemas[0] if len(schemas) == 1 else {"anyOf": schemas}), **defs}
        rules, top = [f"call: {_lark_json(schema)}"], "call"
    elif family.variant == "json":
        schemas = [_call_schema(family, name, parameters) for name, parameters in wrapped]
        items = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
        array = {"type": "array", "items": items, "minItems": 1, **({} if parallel else {"maxItems": 1}), **defs}
        rules, top = [f"call: {_lark_literal('[TOOL_CALLS]', tokenizer)} {_lark_json(array)}"], "call"
    else:
        call_id = f' {_lark_literal("[CALL_ID]", tokenizer)} /[a-zA-Z0-9]{{9}}/' if family.variant == "call_id" else ""
        args = _lark_literal("[ARGS]", tokenizer)
        one = " | ".join(f"{json.dumps(name)}{call_id} {args} {_lark_json(p)}" for name, p in tools)
        rules = [f"call: {_lark_literal('[TOOL_CALLS]', tokenizer)} ({one})"]
        top = "call+" if parallel else "call"
    return "\n".join([f"start: {top}", *rules]) + "\n"


# ---------------------------------------------------------------------------------------
# The output: text and calls apart.


def _held_prefix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that could begin `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


class Calls:
    """One stream's tool calls, split from its text as it comes (see the module's doc)."""

    def __init__(self, family: Family, tools: list[dict]):
        self.family = family
        self.tools = tools  # as templates take them (mlx-lm's parsers read the schemas)
        self.names = {t["function"]["name"] for t in tools}
        self.pending = ""  # text held back: a possible marker, or whitespace between calls
        self.call = None  # the text of the call being read (None: outside a call)
        self.made = 0
        # llama3: undecided until the output's first non-space character.
        self.whole = None if not family.start else False

    def _calls(self, text: str) -> list[tuple[str, str, str]] | None:
        """The calls `text` spells, or None if it is not calls of the request's tools (it
        is then passed on as text)."""
        try:
            parsed = self.family.parse(text, self.tools)
            calls = [
                (self.family.new_id(), name, json.dumps(arguments, ensure_ascii=False, allow_nan=False))
                for name, arguments in parsed
            ]
        except Exception:  # any parser's failure
            return None
        if not calls or any(name not in self.names for _, name, _ in calls) or self.made + len(calls) > MAX_CALLS:
            return None
        self.made += len(calls)
        return calls

    def apply(self, text: str, finish: str | None) -> tuple[str, list, str | None]:
        """(text to send, calls completed, finish reason) for the next piece of output."""
        family = self.family
        out, calls = [], []
        if not family.start:  # llama3: the whole output is a call, or it is text
            self.pending += text
            if self.whole is None:
                head = self.pending.lstrip()
                tag = "<|python_tag|>"
                if head and not (tag.startswith(head) and finish is None):
                    self.whole = head.startswith("{") or head.startswith(tag)
                elif finish is None:
                    return "", [], None
            if self.whole and finish is None:
                return "", [], None
            text, self.pending = self.pending, ""
            if self.whole and finish != "length":  # (a call cut short is text)
                made = self._calls(text)
                if made is not None:
                    return "", made, _finish(finish, True)
            return text, [], finish
        text = self.pending + text
        self.pending = ""
        while text:
            if self.call is None:
                at = text.find(family.start)
                if at < 0:
                    keep = _held_prefix(text, family.start) if finish is None else 0
                    body = text[: len(text) - keep]
                    self.pending = text[len(text) - keep :]
                    if self.made and not body.strip() and finish is None:
                        self.pending, body = body + self.pending, ""  # between calls
                    out.append(body)
                    break
                if text[:at].strip() or not self.made:  # (not the whitespace between calls)
                    out.append(text[:at])
                self.call, text = "", text[at + len(family.start) :]
            else:
                buffer = self.call + text
                at = buffer.find(family.end) if family.end else -1
                if at < 0:
                    self.call = buffer
                    break
                body, text = buffer[:at], buffer[at + len(family.end) :]
                made = self._calls(body)
                if made is None:
                    out.append(family.start + body + family.end)
                else:
                    calls.extend(made)
                self.call = None
        if finish is not None and self.call is not None:  # a call open at the end
            # Complete if the model ended it (no end marker, or end of sequence first);
            # cut short by max_tokens, it is text.
            made = self._calls(self.call) if finish != "length" else None
            if made is None:
                out.append(family.start + self.call)
            else:
                calls.extend(made)
            self.call = None
        text = "".join(out)
        if finish is not None and self.made and not text.strip():
            text = ""
        return text, calls, _finish(finish, self.made > 0)


def _finish(finish: str | None, made: bool) -> str | None:
    return "tool_calls" if finish == "stop" and made else finish


def stream_calls(tokenizer, params: dict) -> Calls | None:
    """A stream's :class:`Calls` when it has tools to call, else None."""
    tools = template_tools(params)
    if tools is None:
        return None
    family = family_of(tokenizer)
    return Calls(family, tools) if family is not None else None
