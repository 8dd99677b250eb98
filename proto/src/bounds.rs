//! Decoded-size bounds: what a frame may cost in memory once decoded, not only its bytes.
//!
//! The frame limit bounds a frame's bytes, but a sequence element can cost far more in
//! memory than on the wire: an empty chat message is 2 bytes of bincode and 48 bytes of
//! `String`s, so a 16 MiB frame could decode to hundreds of MiB. Every sequence a client
//! controls is therefore counted while it is decoded — before its vector is allocated,
//! from the length the wire declares — against a per-kind cap and a cap on all elements of
//! the frame together; past either, decoding stops with [`FrameError::OverLimit`]
//! (answered `TooLarge`). With these caps a decoded client message costs at most
//! [`MAX_DECODE_AMPLIFICATION`] times its frame's bytes plus [`MAX_DECODE_OVERHEAD`].
//!
//! The caps in force for a decode are set per thread for its duration (decoding is
//! synchronous), so the message types stay plain serde types; a decode outside
//! [`within`] uses the protocol's ceilings ([`DecodeLimits::default`]).

use std::cell::RefCell;
use std::marker::PhantomData;

use serde::de::{Deserializer, Error as _, SeqAccess, Visitor};
use serde::Deserialize;

use crate::frame::FrameError;
use crate::messages::{ChatMessage, Limits, Tool, ToolCall};

/// Most messages in one chat prompt.
pub const MAX_CHAT_MESSAGES: u32 = 1024;
/// Most token ids in one `Detokenize` (as many as the longest text has bytes by default).
pub const MAX_DETOKENIZE_TOKENS: u32 = 65_536;
/// Most tools in one generation request, and most tool calls in one chat message
/// (OpenAI's limit on tools).
pub const MAX_TOOLS: u32 = 128;
/// Most stop strings in one generation request.
pub const MAX_STOP_STRINGS: u32 = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: u32 = 256;
/// Most texts in one `Embed`, whatever a daemon's `max_texts_per_embed` says.
pub const MAX_TEXTS_CEILING: u32 = 65_536;
/// Most sequence elements in one frame, all sequences together.
pub const MAX_DECODED_ELEMENTS: u32 = 1 << 17;
/// A decoded client message costs at most this many times its frame's bytes ...
pub const MAX_DECODE_AMPLIFICATION: usize = 8;
/// ... plus this many bytes (the element overhead the counts above allow: at most
/// `MAX_DECODED_ELEMENTS` elements of at most 128 bytes, a chat message being the largest).
pub const MAX_DECODE_OVERHEAD: usize = 16 << 20;

/// The counts one decode may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_texts: u32,
    pub max_messages: u32,
    pub max_tokens: u32,
    pub max_stop_strings: u32,
    pub max_elements: u32,
}

impl Default for DecodeLimits {
    /// The protocol's ceilings.
    fn default() -> Self {
        DecodeLimits {
            max_texts: MAX_TEXTS_CEILING,
            max_messages: MAX_CHAT_MESSAGES,
            max_tokens: MAX_DETOKENIZE_TOKENS,
            max_stop_strings: MAX_STOP_STRINGS,
            max_elements: MAX_DECODED_ELEMENTS,
        }
    }
}

impl DecodeLimits {
    /// The caps of a session with these limits.
    pub fn for_session(limits: &Limits) -> DecodeLimits {
        DecodeLimits { max_texts: limits.max_texts_per_embed.min(MAX_TEXTS_CEILING), ..DecodeLimits::default() }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Texts,
    Messages,
    Tokens,
    StopStrings,
    Tools,
    ToolCalls,
}

impl Kind {
    fn cap(self, limits: &DecodeLimits) -> (u32, &'static str) {
        match self {
            Kind::Texts => (limits.max_texts, "texts in one request (max_texts_per_embed)"),
            Kind::Messages => (limits.max_messages, "chat messages in one prompt"),
            Kind::Tokens => (limits.max_tokens, "tokens in one Detokenize"),
            Kind::StopStrings => (limits.max_stop_strings, "stop strings"),
            Kind::Tools => (MAX_TOOLS, "tools in one request"),
            Kind::ToolCalls => (MAX_TOOLS, "tool calls in one chat message"),
        }
    }
}

struct Budget {
    limits: DecodeLimits,
    elements: u64,
    refused: Option<String>,
}

thread_local! {
    static BUDGET: RefCell<Option<Budget>> = const { RefCell::new(None) };
}

/// Runs `decode` with `limits` in force on this thread; an over-limit sequence turns its
/// result into [`FrameError::OverLimit`] naming the limit.
pub fn within<T>(limits: DecodeLimits, decode: impl FnOnce() -> Result<T, FrameError>) -> Result<T, FrameError> {
    let outer = BUDGET.with(|b| b.borrow_mut().replace(Budget { limits, elements: 0, refused: None }));
    let result = decode();
    let budget = BUDGET.with(|b| std::mem::replace(&mut *b.borrow_mut(), outer));
    match budget.and_then(|b| b.refused) {
        Some(reason) => Err(FrameError::OverLimit(reason)),
        None => result,
    }
}

/// Counts `count` more elements of `kind` (declared so far for this sequence: `total`).
fn claim(kind: Kind, total: u64, count: u64) -> Result<(), String> {
    BUDGET.with(|b| {
        let mut slot = b.borrow_mut();
        // Outside `within` (a decode by serde in another format, e.g. JSON) only the
        // per-kind ceilings apply: there is no frame whose elements could be summed, and
        // nothing is kept on the thread for the next decode.
        let mut outside = Budget { limits: DecodeLimits::default(), elements: 0, refused: None };
        let budget = slot.as_mut().unwrap_or(&mut outside);
        let (cap, what) = kind.cap(&budget.limits);
        let refusal = if total > u64::from(cap) {
            Some(format!("{total} {what}; at most {cap} are allowed"))
        } else if budget.elements + count > u64::from(budget.limits.max_elements) {
            Some(format!(
                "the frame holds more than {} sequence elements in all; at most {} are allowed",
                budget.elements + count,
                budget.limits.max_elements
            ))
        } else {
            None
        };
        match refusal {
            Some(reason) => {
                budget.refused.get_or_insert(reason.clone());
                Err(reason)
            }
            None => {
                budget.elements += count;
                Ok(())
            }
        }
    })
}

struct Bounded<T> {
    kind: Kind,
    _element: PhantomData<fn() -> T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        // The declared length is claimed before anything is allocated for it; a format
        // that declares none is counted element by element.
        let declared = seq.size_hint().unwrap_or(0) as u64;
        claim(self.kind, declared, declared).map_err(A::Error::custom)?;
        let mut out = Vec::with_capacity(declared as usize);
        while let Some(element) = seq.next_element()? {
            if out.len() as u64 >= declared {
                claim(self.kind, out.len() as u64 + 1, 1).map_err(A::Error::custom)?;
            }
            out.push(element);
        }
        Ok(out)
    }
}

fn bounded<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D, kind: Kind) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(Bounded { kind, _element: PhantomData })
}

pub(crate) fn texts<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    bounded(d, Kind::Texts)
}

pub(crate) fn messages<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ChatMessage>, D::Error> {
    bounded(d, Kind::Messages)
}

pub(crate) fn tokens<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    bounded(d, Kind::Tokens)
}

pub(crate) fn tools<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Tool>, D::Error> {
    bounded(d, Kind::Tools)
}

pub(crate) fn tool_calls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ToolCall>, D::Error> {
    bounded(d, Kind::ToolCalls)
}

pub(crate) fn stop_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
    bounded(d, Kind::StopStrings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_body, decode_body_within, encode_body};
    use crate::messages::*;

    fn chat(messages: usize) -> ClientMessage {
        let message = ChatMessage::new("", "");
        ClientMessage::Request {
            id: 7,
            body: Request::Generate(GenerateRequest {
                model: ModelRef::Name("m".into()),
                input: PromptInput::Chat(vec![message; messages]),
                params: GenerateParams::default(),
                initial_credit: 1,
                priority: Priority::Interactive,
                deadline_ms: None,
            }),
        }
    }

    #[test]
    fn sequences_over_their_cap_are_refused_before_allocation() {
        let body = encode_body(&chat(MAX_CHAT_MESSAGES as usize)).unwrap();
        assert!(decode_body::<ClientMessage>(&body).is_ok());
        let body = encode_body(&chat(MAX_CHAT_MESSAGES as usize + 1)).unwrap();
        let err = decode_body::<ClientMessage>(&body).unwrap_err();
        assert!(matches!(&err, FrameError::OverLimit(why) if why.contains("1025 chat messages")), "{err}");
        // A declared length of 2^40 with no elements behind it is refused without reserving:
        // the empty token list is the body's last byte; make it claim 2^40 (varint 253 + u64).
        let detokenize = Request::Detokenize { model: ModelRef::Name("m".into()), tokens: Vec::new() };
        let mut forged = encode_body(&ClientMessage::Request { id: 1, body: detokenize }).unwrap();
        assert_eq!(forged.pop(), Some(0));
        forged.push(253);
        forged.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(decode_body::<ClientMessage>(&forged), Err(FrameError::OverLimit(_))));
    }

    #[test]
    fn tools_and_tool_calls_over_their_cap_are_refused() {
        let tool = Tool { name: String::new(), description: String::new(), parameters: String::new() };
        let call = ToolCall { id: String::new(), name: String::new(), arguments: String::new() };
        let generate = |tools: usize, calls: usize| {
            let message = ChatMessage { tool_calls: vec![call.clone(); calls], ..ChatMessage::new("assistant", "") };
            ClientMessage::Request {
                id: 7,
                body: Request::Generate(GenerateRequest {
                    model: ModelRef::Name("m".into()),
                    input: PromptInput::Chat(vec![message]),
                    params: GenerateParams { tools: vec![tool.clone(); tools], ..GenerateParams::default() },
                    initial_credit: 1,
                    priority: Priority::Interactive,
                    deadline_ms: None,
                }),
            }
        };
        let max = MAX_TOOLS as usize;
        assert!(decode_body::<ClientMessage>(&encode_body(&generate(max, max)).unwrap()).is_ok());
        let err = decode_body::<ClientMessage>(&encode_body(&generate(max + 1, 0)).unwrap()).unwrap_err();
        assert!(err.to_string().contains("129 tools in one request"), "{err}");
        let err = decode_body::<ClientMessage>(&encode_body(&generate(0, max + 1)).unwrap()).unwrap_err();
        assert!(err.to_string().contains("129 tool calls in one chat message"), "{err}");
    }

    #[test]
    fn session_limits_cap_texts_and_the_request_id_survives() {
        let limits = DecodeLimits { max_texts: 3, ..DecodeLimits::default() };
        let embed = |n: usize| ClientMessage::Request {
            id: 42,
            body: Request::Embed(EmbedRequest {
                model: ModelRef::Name("m".into()),
                texts: vec![String::new(); n],
                normalize: false,
                priority: Priority::Batch,
                deadline_ms: None,
                prompt: None,
            }),
        };
        assert!(decode_body_within::<ClientMessage>(&encode_body(&embed(3)).unwrap(), limits).is_ok());
        let body = encode_body(&embed(4)).unwrap();
        let err = decode_body_within::<ClientMessage>(&body, limits).unwrap_err();
        assert!(err.to_string().contains("4 texts in one request"), "{err}");
        assert_eq!(crate::frame::request_id(&body), Some(42));
        // Limits do not leak into later decodes on the thread.
        assert!(decode_body::<ClientMessage>(&body).is_ok());
    }

    #[test]
    fn outside_a_frame_decode_only_the_ceilings_apply_and_nothing_accumulates() {
        // As another front end would decode requests (any serde format): many requests
        // on one thread, each under the ceilings, are never refused for their sum.
        for _ in 0..3 {
            let texts = vec![String::new(); 60_000];
            let mut out: Vec<String> = Vec::new();
            claim(Kind::Texts, texts.len() as u64, texts.len() as u64).unwrap();
            out.extend(texts);
            assert_eq!(out.len(), 60_000);
        }
        assert!(claim(Kind::Messages, 1025, 1025).is_err());
        assert!(BUDGET.with(|b| b.borrow().is_none()), "nothing is left on the thread");
    }
}
