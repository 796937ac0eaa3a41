//! Realistic chat-completion request bodies for benchmarks: many messages,
//! JSON escapes, unicode, a nested `model` in metadata, and the top-level
//! `model` first or last (the OpenAI Python SDK puts it last).

#![allow(dead_code)]

/// A chat body of about `target` bytes for `model`.
pub fn chat_body(model: &str, target: usize, model_first: bool) -> Vec<u8> {
    let lines = [
        "Explain the difference between a mutex and a semaphore.\nUse \"examples\".",
        "Sure! A mutex \u{2014} short for *mutual exclusion* \u{2014} guards one resource; a semaphore counts.",
        "Translate to Japanese: 日本語のテキストも含めてください 🚀 and a path C:\\\\models\\\\llama",
        "Code:\n```rust\nfn main() { println!(\"{}\", 1 + 1); }\n```\nTabs\there, café, naïve, Ωmega.",
    ];
    let mut messages = Vec::new();
    let mut size = 0;
    let mut i = 0;
    while size < target {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        let content = lines[i % lines.len()];
        let message = serde_json::json!({"role": role, "content": content});
        size += message.to_string().len() + 1;
        messages.push(message);
        i += 1;
    }
    let messages = serde_json::to_string(&messages).expect("json");
    let rest = format!(
        r#""messages":{messages},"temperature":0.7,"max_tokens":256,"stream":false,"metadata":{{"model":"not-this-one","user":"u-1"}}"#
    );
    let body = if model_first {
        format!(r#"{{"model":"{model}",{rest}}}"#)
    } else {
        format!(r#"{{{rest},"model":"{model}"}}"#)
    };
    body.into_bytes()
}

/// The sizes the benchmarks use, with their labels.
pub const SIZES: [(&str, usize); 3] = [("1KB", 1 << 10), ("64KB", 64 << 10), ("1MB", 1 << 20)];
