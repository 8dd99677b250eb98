//! Tool definitions, tool choices and tool calls in the JSON shapes of OpenAI's and
//! Ollama's chat APIs, to and from the protocol's [`Tool`], [`ToolChoice`] and [`ToolCall`].
//! The request core checks what only it can (names, schemas, the choice naming a tool);
//! here a wrong shape is a 400 naming the field.

use mlxd_proto::{Tool, ToolCall, ToolChoice, WireError};
use serde_json::{json, Map, Value};

/// An empty object schema: a function without parameters.
const NO_PARAMETERS: &str = r#"{"type":"object","properties":{}}"#;

/// `tools`: `[{"type": "function", "function": {"name", "description"?, "parameters"?}}]`
/// (both APIs' shape; `type` may be absent, as Ollama's clients allow).
pub fn tools(value: Option<&Value>) -> Result<Vec<Tool>, WireError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(WireError::bad_request("tools must be an array")),
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            match item.get("type").and_then(Value::as_str) {
                None | Some("function") => {}
                Some(other) => {
                    return Err(WireError::bad_request(format!(
                        "tools[{index}].type {other:?}: only \"function\" tools are supported"
                    )))
                }
            }
            let function = item
                .get("function")
                .filter(|f| f.is_object())
                .ok_or_else(|| WireError::bad_request(format!("tools[{index}] needs a function object")))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| WireError::bad_request(format!("tools[{index}].function needs a name")))?;
            let description = match function.get("description") {
                None | Some(Value::Null) => "",
                Some(Value::String(text)) => text,
                Some(_) => {
                    return Err(WireError::bad_request(format!("tools[{index}].function.description: a string")))
                }
            };
            let parameters = match function.get("parameters") {
                None | Some(Value::Null) => NO_PARAMETERS.to_owned(),
                Some(schema @ Value::Object(_)) => schema.to_string(),
                Some(_) => {
                    return Err(WireError::bad_request(format!(
                        "tools[{index}].function.parameters must be a JSON schema object"
                    )))
                }
            };
            Ok(Tool { name: name.to_owned(), description: description.to_owned(), parameters })
        })
        .collect()
}

/// OpenAI's `tool_choice`: "none" | "auto" | "required" |
/// `{"type": "function", "function": {"name"}}`; absent = auto.
pub fn tool_choice(value: Option<&Value>) -> Result<ToolChoice, WireError> {
    match value {
        None | Some(Value::Null) => Ok(ToolChoice::Auto),
        Some(Value::String(choice)) => match choice.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(WireError::bad_request(format!(
                "tool_choice {other:?}: \"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"
            ))),
        },
        Some(object) => match object.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
            Some(name) => Ok(ToolChoice::Function(name.to_owned())),
            None => Err(WireError::bad_request("tool_choice: {\"type\": \"function\", \"function\": {\"name\": ...}}")),
        },
    }
}

/// Arguments as the protocol carries them: JSON object text (a string is taken as that
/// text, an object is written out).
fn arguments(value: Option<&Value>, at: &str) -> Result<String, WireError> {
    match value {
        // "" is what some clients send back for a call without arguments.
        None | Some(Value::Null) => Ok("{}".to_owned()),
        Some(Value::String(text)) if text.trim().is_empty() => Ok("{}".to_owned()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(object @ Value::Object(_)) => Ok(object.to_string()),
        Some(_) => Err(WireError::bad_request(format!("{at}.arguments must be a JSON object or its text"))),
    }
}

/// An assistant message's `tool_calls`, in OpenAI's shape
/// (`[{"id", "type": "function", "function": {"name", "arguments": "<json>"}}]`) or
/// Ollama's (`[{"function": {"name", "arguments": {...}}}]`, ids optional: a missing one
/// is made up, unique in the conversation).
pub fn message_calls(value: Option<&Value>, message: usize) -> Result<Vec<ToolCall>, WireError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(WireError::bad_request(format!("messages[{message}].tool_calls must be an array"))),
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let at = format!("messages[{message}].tool_calls[{index}]");
            let function =
                item.get("function").ok_or_else(|| WireError::bad_request(format!("{at} needs a function")))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| WireError::bad_request(format!("{at}.function needs a name")))?;
            let id = match item.get("id") {
                Some(Value::String(id)) => id.clone(),
                None | Some(Value::Null) => format!("call_{message}_{index}"),
                Some(_) => return Err(WireError::bad_request(format!("{at}.id must be a string"))),
            };
            Ok(ToolCall { id, name: name.to_owned(), arguments: arguments(function.get("arguments"), &at)? })
        })
        .collect()
}

/// A call in OpenAI's shape (a message's or a stream delta's, with its `index`).
pub fn openai_call(call: &ToolCall, index: Option<usize>) -> Value {
    let mut object = json!({
        "id": call.id,
        "type": "function",
        "function": { "name": call.name, "arguments": call.arguments },
    });
    if let Some(index) = index {
        object["index"] = json!(index);
    }
    object
}

/// A call in Ollama's shape (as Ollama 0.12 sends it: with an id and the call's index).
pub fn ollama_call(call: &ToolCall, index: usize) -> Value {
    let arguments: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| Value::Object(Map::new()));
    json!({ "id": call.id, "function": { "index": index, "name": call.name, "arguments": arguments } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_sent_back_take_either_apis_shape_and_empty_arguments_are_an_empty_object() {
        let calls = json!([
            { "id": "call_a", "type": "function", "function": { "name": "f", "arguments": "{\"x\":1}" } },
            { "function": { "name": "g", "arguments": { "y": [2] } } },
            { "id": "call_c", "type": "function", "function": { "name": "h", "arguments": "" } },
            { "function": { "name": "k" } },
        ]);
        let read = message_calls(Some(&calls), 3).unwrap();
        let got: Vec<(&str, &str, &str)> =
            read.iter().map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str())).collect();
        assert_eq!(
            got,
            [
                ("call_a", "f", r#"{"x":1}"#),
                ("call_3_1", "g", r#"{"y":[2]}"#),
                ("call_c", "h", "{}"),
                ("call_3_3", "k", "{}")
            ]
        );
        let bad = json!([{ "function": { "name": "f", "arguments": 5 } }]);
        assert!(message_calls(Some(&bad), 0).unwrap_err().message.contains("messages[0].tool_calls[0].arguments"));
        assert!(tools(Some(&json!([{ "type": "retrieval" }]))).unwrap_err().message.contains("only \"function\""));
        assert_eq!(tool_choice(Some(&json!("required"))).unwrap(), ToolChoice::Required);
        let named = json!({ "type": "function", "function": { "name": "f" } });
        assert_eq!(tool_choice(Some(&named)).unwrap(), ToolChoice::Function("f".into()));
        assert!(tool_choice(Some(&json!("sometimes"))).is_err());
    }
}
