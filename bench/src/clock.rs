//! Wall-clock helpers. Scheduled instants are wall-clock instants, so every
//! measured time here is read from the same system clock the schedulers
//! and nats-server use (one machine).

use std::time::Duration;

use chrono::Utc;

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The first whole second at or after `ms`.
pub fn ceil_second(ms: i64) -> i64 {
    ms.div_euclid(1000) * 1000 + if ms.rem_euclid(1000) == 0 { 0 } else { 1000 }
}

/// Sleeps until the wall clock reads `target_ms` (returns at once if past).
pub async fn sleep_until_ms(target_ms: i64) {
    let left = target_ms - now_ms();
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left as u64)).await;
    }
}

/// Milliseconds as seconds.
pub fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_to_whole_seconds() {
        assert_eq!(ceil_second(5000), 5000);
        assert_eq!(ceil_second(5001), 6000);
        assert_eq!(ceil_second(5999), 6000);
        assert_eq!(ceil_second(0), 0);
    }
}
