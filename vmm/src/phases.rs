//! Where minivm's own start and exit go, for `--timings`: the code marks
//! the end of each phase ([`mark`]; a lock and a clock read, so always on)
//! and [`report`] lists them in time order with the guest's first entry and
//! exit, each with the time since the one before.

use std::sync::Mutex;
use std::time::Instant;

/// The phases marked so far, in the order they ended.
static MARKS: Mutex<Vec<(&'static str, Instant)>> = Mutex::new(Vec::new());

/// Notes that `phase` has just ended.
pub fn mark(phase: &'static str) {
    MARKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((phase, Instant::now()));
}

/// One line per phase since `start`, with the guest's entry and exit put
/// in their place, and the milliseconds each took.
pub fn report(start: Instant, entry: Option<Instant>, exit: Option<Instant>) -> String {
    let mut all: Vec<(&str, Instant)> = MARKS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    all.extend(entry.map(|t| ("guest's first instruction", t)));
    all.extend(exit.map(|t| ("guest's end", t)));
    lines(start, all)
}

fn lines(start: Instant, mut all: Vec<(&str, Instant)>) -> String {
    all.sort_by_key(|(_, t)| *t);
    let mut out = String::new();
    let mut prev = start;
    for (phase, t) in all {
        let ms = t.saturating_duration_since(prev).as_secs_f64() * 1000.0;
        out.push_str(&format!("  {ms:8.3} ms  {phase}\n"));
        prev = t;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn phases_come_in_time_order_with_their_own_durations() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let text = lines(
            t0,
            vec![("devices", at(5)), ("guest's end", at(9)), ("kvm", at(2))],
        );
        assert_eq!(
            text,
            "     2.000 ms  kvm\n     3.000 ms  devices\n     4.000 ms  guest's end\n"
        );
        mark("a phase");
        let r = report(t0, Some(Instant::now()), None);
        assert!(
            r.contains("a phase\n") && r.ends_with("guest's first instruction\n"),
            "{r}"
        );
    }
}
