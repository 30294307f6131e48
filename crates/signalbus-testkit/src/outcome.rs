//! Reading a [`BatchOutcome`] in tests.

use signalbus_core::BatchOutcome;

/// The indices `outcome` refuses, sorted.
pub fn refused(outcome: &BatchOutcome) -> Vec<usize> {
    let mut indices: Vec<usize> = outcome.refused().iter().map(|r| r.index).collect();
    indices.sort_unstable();
    indices
}

/// The reason `outcome` gives for `index`; panics when that message was not refused.
pub fn reason(outcome: &BatchOutcome, index: usize) -> &str {
    &outcome
        .refused()
        .iter()
        .find(|r| r.index == index)
        .unwrap_or_else(|| panic!("message {index} not refused: {outcome:?}"))
        .reason
}
