//! Logging what a guest causes without letting it flood minivm's log.

/// How many occurrences of one warning are always logged; after that only
/// the power-of-two ones are.
pub const ALWAYS_LOGGED: u64 = 10;

/// Counts one more occurrence on `count`; the count so far if this one is
/// to be logged (the first [`ALWAYS_LOGGED`], then every power of two).
pub fn occurrence(count: &std::sync::atomic::AtomicU64) -> Option<u64> {
    let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    is_logged(n).then_some(n)
}

/// Whether the `n`th occurrence (from 1) of a warning is logged.
pub fn is_logged(n: u64) -> bool {
    n <= ALWAYS_LOGGED || n.is_power_of_two()
}

/// `tracing::warn!` for what a guest can trigger at will (a bad register
/// write, a malformed chain), rate-limited per call site: the first
/// [`ALWAYS_LOGGED`], then every power of two, each with the count so far.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {{
        static COUNT: ::std::sync::atomic::AtomicU64 = ::std::sync::atomic::AtomicU64::new(0);
        if let Some(n) = $crate::log::occurrence(&COUNT) {
            ::tracing::warn!("{} ({} so far)", format_args!($($arg)+), n);
        }
    }};
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    #[test]
    fn a_flood_is_logged_sparsely() {
        let count = AtomicU64::new(0);
        let logged: Vec<u64> = (0..1000)
            .filter_map(|_| super::occurrence(&count))
            .collect();
        assert_eq!(
            logged,
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 64, 128, 256, 512]
        );
        // The macro keeps one count per call site.
        for i in 0..3 {
            crate::guest_warn!("flood {i}");
        }
    }
}
