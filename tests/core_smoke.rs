#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used)]
mod core_util;
use core_util::*;
use rtlink::core::*;

#[test]
fn connect_and_welcome() {
    let mut sim = Sim::one(Config::default());
    sim.connect(0, &["lobby"]);
    let tab = &sim.tabs[0];
    assert_eq!(tab.open_kind(), Some(TransportKind::WebSocket));
    assert!(tab.events.contains(&Event::Subscribed {
        room: "lobby".into()
    }));
    assert!(tab
        .events
        .contains(&Event::TransportRemembered(TransportKind::WebSocket)));
    let states = tab.states();
    assert!(matches!(
        states[0],
        State::Connecting {
            transport: TransportKind::WebSocket,
            attempt: 1
        }
    ));
    assert!(matches!(states.last(), Some(State::Open { .. })));
}
