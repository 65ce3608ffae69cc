//! Burrow-style lag statuses.
//!
//! Over the last `admin.lag_window` samples of `(next offset, lag)` a
//! partition is:
//!
//! - **ERR** when its lag is over `admin.lag_error_threshold`;
//! - **STALL** when it had lag in every sample and its next offset did not
//!   move (the consumer is stuck or gone);
//! - **WARN** when its lag never shrank and grew over the window (the
//!   consumer moves but falls behind);
//! - **OK** otherwise (any sample at zero lag is OK).
//!
//! The overall status is the worst partition's.

use std::collections::VecDeque;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum LagStatus {
    #[default]
    Ok,
    Warn,
    Stall,
    Err,
}

impl LagStatus {
    pub fn code(self) -> i64 {
        self as i64
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LagStatus::Ok => "OK",
            LagStatus::Warn => "WARN",
            LagStatus::Stall => "STALL",
            LagStatus::Err => "ERR",
        }
    }
}

/// The status of one partition from its recent `(next offset, lag)` samples,
/// oldest first, given the window length and the error threshold.
pub fn evaluate(samples: &[(i64, i64)], window: usize, error_threshold: i64) -> LagStatus {
    let Some(&(_, last_lag)) = samples.last() else {
        return LagStatus::Ok;
    };
    if last_lag > error_threshold {
        return LagStatus::Err;
    }
    if samples.len() < window.max(2) || samples.iter().any(|&(_, lag)| lag == 0) {
        return LagStatus::Ok;
    }
    let first_next = samples[0].0;
    if samples.iter().all(|&(next, _)| next == first_next) {
        return LagStatus::Stall;
    }
    if samples.windows(2).all(|w| w[1].1 >= w[0].1) && last_lag > samples[0].1 {
        return LagStatus::Warn;
    }
    LagStatus::Ok
}

/// One partition as the last samples saw it.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    pub log_end_offset: i64,
    pub lag: i64,
    pub status: LagStatus,
    #[serde(skip)]
    pub(super) samples: VecDeque<(i64, i64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_status_follows_the_burrow_rules() {
        let w = 4;
        // Too few samples, or any sample at zero lag: OK.
        assert_eq!(evaluate(&[(10, 5)], w, 100), LagStatus::Ok);
        assert_eq!(
            evaluate(&[(10, 5), (10, 0), (10, 5), (10, 5)], w, 100),
            LagStatus::Ok
        );
        // Lag and no progress over the window: STALL.
        assert_eq!(
            evaluate(&[(10, 5), (10, 6), (10, 7), (10, 7)], w, 100),
            LagStatus::Stall
        );
        // Progress, but lag never shrinks and grows: WARN.
        assert_eq!(
            evaluate(&[(10, 5), (12, 6), (14, 6), (16, 9)], w, 100),
            LagStatus::Warn
        );
        // Progress and lag shrinking at some point: OK.
        assert_eq!(
            evaluate(&[(10, 5), (12, 7), (14, 3), (16, 9)], w, 100),
            LagStatus::Ok
        );
        // Over the threshold: ERR whatever the window says.
        assert_eq!(evaluate(&[(10, 101)], w, 100), LagStatus::Err);
        assert_eq!(evaluate(&[], w, 100), LagStatus::Ok);
    }
}
