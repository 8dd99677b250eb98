"""Twenty JSON schemas of the shapes structured-output users send (nested objects, arrays,
enums, bounded numbers, required and optional properties), each with a prompt; run through
the OpenAI SDK by tests/tests/structured.rs. Strings and arrays are bounded so that a small
model's output stays short."""

S = {"type": "string", "maxLength": 24}

SCHEMAS = [
    ("Describe Alice, 30, from Paris.", {"type": "object", "properties": {"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"], "additionalProperties": False}),
    ("Is the sky blue?", {"type": "object", "properties": {"answer": {"type": "boolean"}}, "required": ["answer"], "additionalProperties": False}),
    ("Pick a color.", {"type": "object", "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}}, "required": ["color"], "additionalProperties": False}),
    ("Rate the movie from 1 to 5.", {"type": "object", "properties": {"stars": {"type": "integer", "minimum": 1, "maximum": 5}, "review": S}, "required": ["stars"], "additionalProperties": False}),
    ("Give the temperature in Paris.", {"type": "object", "properties": {"celsius": {"type": "number", "minimum": -50, "maximum": 60}}, "required": ["celsius"], "additionalProperties": False}),
    ("List three fruits.", {"type": "object", "properties": {"fruits": {"type": "array", "items": S, "minItems": 1, "maxItems": 3}}, "required": ["fruits"], "additionalProperties": False}),
    ("Describe a book.", {"type": "object", "properties": {"title": S, "author": {"type": "object", "properties": {"first": S, "last": S}, "required": ["first", "last"], "additionalProperties": False}, "year": {"type": "integer", "minimum": 1000, "maximum": 2100}}, "required": ["title", "author", "year"], "additionalProperties": False}),
    ("Give a point on a plane.", {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"], "additionalProperties": False}),
    ("What is the capital of France?", {"type": "object", "properties": {"city": S, "country": S}, "required": ["city"], "additionalProperties": False}),
    ("Classify: 'I love this!'", {"type": "object", "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]}, "confidence": {"type": "number", "minimum": 0, "maximum": 1}}, "required": ["sentiment", "confidence"], "additionalProperties": False}),
    ("Give two numbers between 1 and 10.", {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 10}, "minItems": 2, "maxItems": 2}),
    ("Make a todo item.", {"type": "object", "properties": {"task": S, "done": {"type": "boolean"}, "priority": {"type": "string", "enum": ["low", "high"]}}, "required": ["task", "done"], "additionalProperties": False}),
    ("Describe a user with tags.", {"type": "object", "properties": {"user": S, "tags": {"type": "array", "items": {"type": "string", "enum": ["admin", "dev", "ops"]}, "maxItems": 2}}, "required": ["user", "tags"], "additionalProperties": False}),
    ("Give an HTTP status.", {"type": "object", "properties": {"code": {"type": "integer", "enum": [200, 404, 500]}, "ok": {"type": "boolean"}}, "required": ["code", "ok"], "additionalProperties": False}),
    ("Describe a rectangle.", {"type": "object", "properties": {"size": {"type": "object", "properties": {"w": {"type": "integer", "minimum": 1, "maximum": 100}, "h": {"type": "integer", "minimum": 1, "maximum": 100}}, "required": ["w", "h"], "additionalProperties": False}}, "required": ["size"], "additionalProperties": False}),
    ("Name a planet.", {"type": "string", "enum": ["Mercury", "Venus", "Earth", "Mars"]}),
    ("Give an order with items.", {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 9999}, "items": {"type": "array", "items": {"type": "object", "properties": {"sku": S, "qty": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["sku", "qty"], "additionalProperties": False}, "minItems": 1, "maxItems": 2}}, "required": ["id", "items"], "additionalProperties": False}),
    ("Is 7 prime? Answer with a reason.", {"type": "object", "properties": {"prime": {"type": "boolean"}, "reason": S}, "required": ["prime"], "additionalProperties": False}),
    ("Give a date.", {"type": "object", "properties": {"year": {"type": "integer", "minimum": 1900, "maximum": 2100}, "month": {"type": "integer", "minimum": 1, "maximum": 12}, "day": {"type": "integer", "minimum": 1, "maximum": 31}}, "required": ["year", "month", "day"], "additionalProperties": False}),
    ("Describe a pet, optionally its age.", {"type": "object", "properties": {"kind": {"type": "string", "enum": ["cat", "dog"]}, "name": S, "age": {"type": "integer", "minimum": 0, "maximum": 30}}, "required": ["kind", "name"], "additionalProperties": False}),
]
