//! The three places that say what a close code makes the client do agree: the core's rule
//! (`CloseCode::action`, protocol/src/close_code.rs, which src/core acts on), the close-code table
//! of docs/PROTOCOL.md (what third-party clients implement), and the façade's `TERMINAL` table
//! in js/rtlink.js (the names of the codes that end a client, for the message of its closed
//! state). The façade keeps its own copy because every byte of the package is downloaded by
//! every visitor; this test is what keeps the copy true.

#![cfg(not(target_arch = "wasm32"))]

use std::collections::BTreeMap;

use rtlink_protocol::{CloseAction, CloseCode};

fn read(path: &str) -> String {
    let path = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The rows of PROTOCOL.md's close-code table: code → (name, client action text).
fn documented() -> BTreeMap<u16, (String, String)> {
    let doc = read("docs/PROTOCOL.md");
    let table = doc
        .split("\n## Close codes\n")
        .nth(1)
        .expect("a '## Close codes' section")
        .split("\n\n")
        .find(|block| block.starts_with("| code | name | client action |"))
        .expect("the close-code table");
    let rows: BTreeMap<u16, (String, String)> = table
        .lines()
        .skip(2)
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            let code = cells.first()?.parse().ok()?; // `other` is the row for every other code
            Some((code, (cells[1].to_owned(), cells[2..].join(" | "))))
        })
        .collect();
    assert!(rows.len() >= 17, "{rows:?}");
    rows
}

/// What the document's action text says the client does.
fn documented_action(text: &str) -> CloseAction {
    if text.starts_with("**terminal**") {
        CloseAction::Terminal
    } else if text.starts_with("**retry after the server's delay**") {
        CloseAction::RetryAfterServerDelay
    } else if text.starts_with("**re-authenticate**") {
        CloseAction::Reauthenticate
    } else if text.starts_with("retry at once with a new session") {
        CloseAction::RetryNewSession
    } else if text.starts_with("none: the client moved its session") {
        CloseAction::Superseded
    } else if text.contains("retry with backoff") {
        CloseAction::RetryWithBackoff
    } else {
        panic!("an action the test does not know: {text}")
    }
}

/// js/rtlink.js `TERMINAL`: code → name.
fn facade_terminal() -> BTreeMap<u16, String> {
    let js = read("js/rtlink.js");
    let line = js
        .lines()
        .find_map(|l| l.strip_prefix("const TERMINAL = {"))
        .expect("`const TERMINAL = {` in js/rtlink.js");
    let body = line.strip_suffix("};").expect("TERMINAL on one line");
    body.split(',')
        .map(|entry| {
            let (code, name) = entry.split_once(':').expect("code: name");
            (
                code.trim().parse().expect("a numeric code"),
                name.trim().trim_matches('"').to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_document_states_the_cores_action_and_name_for_every_code() {
    for (code, (name, text)) in documented() {
        let c = CloseCode(code);
        assert_eq!(
            documented_action(&text),
            c.action(),
            "{code} {name}: {text}"
        );
        // 1013 (try again later) is WebSocket's own code: the core names it `TRY_AGAIN_LATER`
        // beside the protocol's codes, and `CloseCode::name` does not know it.
        if code != 1013 {
            assert_eq!(name, c.name(), "{code}");
        }
    }
}

#[test]
fn the_facade_names_exactly_the_codes_the_core_treats_as_terminal() {
    let core: BTreeMap<u16, String> = (1000..=4999)
        .map(CloseCode)
        .filter(|c| c.action() == CloseAction::Terminal)
        .map(|c| (c.0, c.name().to_owned()))
        .collect();
    let documented: BTreeMap<u16, String> = documented()
        .into_iter()
        .filter(|(_, (_, text))| documented_action(text) == CloseAction::Terminal)
        .map(|(code, (name, _))| (code, name))
        .collect();
    assert_eq!(
        facade_terminal(),
        core,
        "js/rtlink.js TERMINAL vs CloseCode::action"
    );
    assert_eq!(documented, core, "docs/PROTOCOL.md vs CloseCode::action");
}
