//! Vapi's `end-of-call-report` kept as a conversation of the endpoint's
//! tenant, readable through `GET /api/conversations/{call id}`: the
//! transcript's turns (from `artifact.messages`, else the `transcript`
//! text), and beside them the summary, recording URL, ended reason and cost.

use serde_json::{Map, Value, json};

use super::store::StoreCallReport;
use crate::answers::conversations::{MAX_MESSAGE_CHARS, valid_conversation_id};
use crate::platform::db::Db;
use crate::tasks::TaskError;
use crate::tenants::TenantRef;

/// Turns kept of one call (a long call says a few hundred).
const MAX_TURNS: usize = 500;
/// The longest text kept of a summary or a URL.
const MAX_FIELD_CHARS: usize = 8_000;

/// A call's report as Keel stores it.
#[derive(Debug, PartialEq)]
pub struct CallReport {
    pub call_id: String,
    /// `{"role": "user"|"assistant", "content"}`, oldest first.
    pub turns: Vec<Value>,
    pub metadata: Value,
}

/// The report in a Vapi server message, or why it cannot be stored.
pub fn report(message: &Value) -> Result<CallReport, String> {
    let call_id = message["call"]["id"]
        .as_str()
        .ok_or("an end-of-call-report needs message.call.id")?;
    let call_id = valid_conversation_id(call_id)
        .map_err(|_| "message.call.id must be 1 to 128 letters, digits, - or _")?
        .to_owned();
    let artifact = &message["artifact"];
    let transcript = artifact["transcript"]
        .as_str()
        .or(message["transcript"].as_str());
    let turns = match artifact["messages"]
        .as_array()
        .or(message["messages"].as_array())
    {
        Some(messages) if !messages.is_empty() => message_turns(messages),
        _ => transcript.map(transcript_turns).unwrap_or_default(),
    };
    let text = |value: &Value| {
        value
            .as_str()
            .map(|s| Value::String(s.chars().take(MAX_FIELD_CHARS).collect()))
    };
    let mut metadata = Map::new();
    metadata.insert("source".into(), json!("vapi"));
    let fields = [
        (
            "summary",
            text(&message["analysis"]["summary"]).or(text(&message["summary"])),
        ),
        (
            "recording_url",
            text(&artifact["recordingUrl"])
                .or(text(&artifact["recording"]["mono"]["combinedUrl"]))
                .or(text(&message["recordingUrl"])),
        ),
        ("ended_reason", text(&message["endedReason"])),
        ("cost", message["cost"].as_f64().map(Value::from)),
        ("started_at", text(&message["startedAt"])),
        ("ended_at", text(&message["endedAt"])),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            metadata.insert(name.into(), value);
        }
    }
    Ok(CallReport {
        call_id,
        turns,
        metadata: Value::Object(metadata),
    })
}

/// `artifact.messages`: `{"role": "bot"|"user"|"system"|"tool_calls"|…,
/// "message"}`; what was said aloud becomes a turn.
fn message_turns(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .filter_map(|m| {
            let role = match m["role"].as_str()? {
                "user" => "user",
                "bot" | "assistant" => "assistant",
                _ => return None,
            };
            let content = m["message"].as_str().or(m["content"].as_str())?;
            turn(role, content)
        })
        .take(MAX_TURNS)
        .collect()
}

/// The transcript text: lines `AI: …` and `User: …`.
fn transcript_turns(transcript: &str) -> Vec<Value> {
    transcript
        .lines()
        .filter_map(|line| {
            let (speaker, said) = line.split_once(':')?;
            let role = match speaker.trim() {
                "User" | "user" | "Customer" => "user",
                "AI" | "Assistant" | "Bot" | "bot" => "assistant",
                _ => return None,
            };
            turn(role, said)
        })
        .take(MAX_TURNS)
        .collect()
}

fn turn(role: &str, content: &str) -> Option<Value> {
    let content: String = content.trim().chars().take(MAX_MESSAGE_CHARS).collect();
    (!content.is_empty()).then(|| json!({"role": role, "content": content}))
}

/// Stores the report of a `end-of-call-report` delivery.
pub async fn store(db: &Db, tenant: &TenantRef, message: &Value) -> Result<(), TaskError> {
    let report =
        report(message).map_err(|problem| TaskError::permanent("end-of-call-report", problem))?;
    tenant
        .run(
            db,
            &StoreCallReport {
                conversation_id: &report.call_id,
                turns: &report.turns,
                metadata: &report.metadata,
            },
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_keeps_what_was_said_and_what_it_cost() {
        let message = json!({
            "type": "end-of-call-report",
            "endedReason": "customer-ended-call",
            "cost": 0.12,
            "call": {"id": "c4b1e6a0-5a1f-4b9b-9e0e-1f2a3b4c5d6e"},
            "analysis": {"summary": "Asked about vegan dishes."},
            "artifact": {
                "recordingUrl": "https://storage.vapi.ai/c4b1.wav",
                "transcript": "AI: Hello\nUser: Vegan?",
                "messages": [
                    {"role": "system", "message": "You are Luigi's."},
                    {"role": "bot", "message": "Hello, Luigi's!"},
                    {"role": "user", "message": "Do you have vegan dishes?"},
                    {"role": "tool_calls", "toolCalls": []},
                ],
            },
        });
        let report = report(&message).unwrap();
        assert_eq!(report.call_id, "c4b1e6a0-5a1f-4b9b-9e0e-1f2a3b4c5d6e");
        assert_eq!(
            report.turns,
            [
                json!({"role": "assistant", "content": "Hello, Luigi's!"}),
                json!({"role": "user", "content": "Do you have vegan dishes?"}),
            ]
        );
        assert_eq!(report.metadata["summary"], "Asked about vegan dishes.");
        assert_eq!(
            report.metadata["recording_url"],
            "https://storage.vapi.ai/c4b1.wav"
        );
        assert_eq!(report.metadata["ended_reason"], "customer-ended-call");
        assert_eq!(report.metadata["cost"], 0.12);
    }

    #[test]
    fn without_messages_the_transcript_text_is_read() {
        let message = json!({"call": {"id": "call_1"},
                             "transcript": "AI: Hi there\nUser: Open on Monday?\nnoise"});
        let turns = report(&message).unwrap().turns;
        assert_eq!(turns.len(), 2);
        assert_eq!(
            turns[1],
            json!({"role": "user", "content": "Open on Monday?"})
        );
        assert!(report(&json!({"call": {"id": "../x"}})).is_err());
        assert!(report(&json!({})).is_err());
    }
}
