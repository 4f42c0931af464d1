//! How rtlink compares with a peer in one fan-out run: server CPU per delivery and p99 latency
//! at equal offered load (the figures of `quick`, `full` and `windows`).

use crate::fanout;

/// Server CPU per delivery, `peer` ÷ rtlink, at the highest offered load both delivered in full
/// (every message to every subscriber, in order; the load generator may have lagged).
pub fn cpu_ratio(rtlink: &[fanout::Step], peer: &[fanout::Step]) -> Option<(f64, f64)> {
    let whole = |s: &fanout::Step| s.complete && s.errors == 0;
    rtlink
        .iter()
        .rev()
        .filter(|s| whole(s))
        .filter_map(|r| {
            peer.iter()
                .find(|p| p.offered_per_sec == r.offered_per_sec && whole(p))
                .map(|p| (r.offered_per_sec, p.cpu_ms_per_1000 / r.cpu_ms_per_1000))
        })
        .next()
}

/// p99 latency, rtlink ÷ `peer`, at every offered load both kept up with (delivered in full and
/// at ≥ 90 % of the offered rate): `(offered, rtlink p99 µs, peer p99 µs)`. Above those loads one
/// of them lags and its latency is its backlog, not a comparable figure.
pub fn p99_pairs(rtlink: &[fanout::Step], peer: &[fanout::Step]) -> Vec<(f64, u64, u64)> {
    rtlink
        .iter()
        .filter(|r| !r.saturated())
        .filter_map(|r| {
            peer.iter()
                .find(|p| p.offered_per_sec == r.offered_per_sec && !p.saturated())
                .map(|p| (r.offered_per_sec, r.p99_us, p.p99_us))
        })
        .collect()
}

/// One line on [`p99_pairs`]: each load's ratio against the ⅓ target, and how many were met.
pub fn p99_summary(pairs: &[(f64, u64, u64)]) -> String {
    if pairs.is_empty() {
        return "no offered load that both kept up with".to_owned();
    }
    let met = pairs
        .iter()
        .filter(|(_, r, p)| (*r as f64) <= *p as f64 / 3.0)
        .count();
    let each: Vec<String> = pairs
        .iter()
        .map(|(load, r, p)| {
            format!(
                "{load:.0}/s: {:.2} ({} vs {})",
                *r as f64 / (*p).max(1) as f64,
                crate::report::fmt_us(*r),
                crate::report::fmt_us(*p)
            )
        })
        .collect();
    format!(
        "{}; target ≤ 0.33 met at {met} of {} loads",
        each.join(", "),
        pairs.len()
    )
}
