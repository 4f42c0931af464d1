//! docs/PROTOCOL.md against the real server, as a newcomer would use it: every `curl` command of
//! its "Server API" section is run with the real `curl` (only the host and key are changed), and
//! each answer must carry exactly the fields its documented answer (the `# {...}` comment under
//! the command) shows. A renamed, missing or undocumented field fails here.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{fast_config, start};
use rtlink_protocol::ClientFrame;
use serde_json::Value;

const KEY: &str = "docs-key-0123456789abcdef";
const DOC_HOST: &str = "https://rt.example.com";

/// One documented command and the documented answer (joined comment lines), if any.
struct Example {
    command: String,
    answer: String,
}

/// The `sh` blocks of the "Server API" section. (Documented answers are JSON, values elided as
/// `"…"`.)
fn examples() -> Vec<Example> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md"))
        .unwrap();
    let section = &doc[doc.find("## Server API").expect("a Server API section")..];
    let mut out = Vec::new();
    let mut in_block = false;
    let mut lines: Vec<&str> = Vec::new();
    for line in section.lines() {
        if line.starts_with("```sh") {
            in_block = true;
            lines.clear();
        } else if in_block && line.starts_with("```") {
            in_block = false;
            let command: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| !l.starts_with('#'))
                .collect();
            let answer: Vec<&str> = lines
                .iter()
                .filter_map(|l| l.strip_prefix('#'))
                .map(str::trim)
                .collect();
            out.push(Example {
                command: command.join("\n"),
                answer: answer.join(" "),
            });
        } else if in_block {
            lines.push(line);
        }
    }
    out
}

/// Every field name in a JSON document, at any depth.
fn field_names(json: &str) -> BTreeSet<String> {
    fn walk(v: &Value, names: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    names.insert(k.clone());
                    walk(v, names);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, names)),
            _ => {}
        }
    }
    let value: Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
    let mut names = BTreeSet::new();
    walk(&value, &mut names);
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_curl_examples_work_as_documented() {
    let mut c = fast_config();
    c.api_keys = vec![KEY.parse().unwrap()];
    let s = start(c).await;
    // What the examples look at: Ana in the lobby with two tabs (one with presence metadata),
    // Bob with one, and something said.
    let mut tabs = Vec::new();
    for user in ["ana", "ana", "bob"] {
        let mut ws = s.ws(user).await;
        ws.subscribe("lobby", None).await;
        tabs.push(ws);
    }
    tabs[0]
        .send(&ClientFrame::Presence {
            room: "lobby".into(),
            meta: "{\"status\":\"away\"}".into(),
        })
        .await;
    for (i, text) in ["hi", "hello"].iter().enumerate() {
        tabs[i]
            .publish(
                "lobby",
                &format!("m{i}"),
                &format!("{{\"text\":\"{text}\"}}"),
            )
            .await;
    }

    let examples = examples();
    assert!(examples.len() >= 6, "the section lost its examples");
    let base = s.url("");
    for ex in examples {
        let command = ex.command.replace(DOC_HOST, base.trim_end_matches('/'));
        // The documented command as is; curl fails (exit 22) on an HTTP error status.
        let script = format!(
            "curl() {{ command curl -sS --fail-with-body --max-time 10 \"$@\"; }}\n{command}"
        );
        let out = tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .arg("-c")
                .arg(script)
                .env("RTLINK_API_KEY", KEY)
                .output()
        })
        .await
        .unwrap()
        .expect("bash and curl are installed (scripts/setup)");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}\n→ {body}{}",
            ex.command,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            field_names(&body),
            field_names(&ex.answer),
            "{}\n→ {body}\ndocumented: {}",
            ex.command,
            ex.answer
        );
    }
}
