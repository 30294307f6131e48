//! Which signal types a command acts on.

use crate::error::CliError;
use signalbus::{Backend, SignalBus};

/// The known names among `names` minus `exclude`, in registration order; unknown names get a
/// warning. Fails when names were given and none is known, or nothing is left.
pub(crate) fn select<DB: Backend>(
    bus: &SignalBus<DB>,
    names: &[String],
    exclude: &[String],
) -> Result<Vec<String>, CliError> {
    let known: Vec<String> = bus.signal_types().map(|t| t.name().to_owned()).collect();
    for name in names.iter().chain(exclude) {
        if !known.contains(name) {
            eprintln!(
                "warning: unknown signal name `{name}` ignored; known signals: {}",
                if known.is_empty() {
                    "(none)".to_owned()
                } else {
                    known.join(", ")
                }
            );
        }
    }
    let chosen: Vec<String> = known
        .iter()
        .filter(|k| names.is_empty() || names.contains(k))
        .filter(|k| !exclude.contains(k))
        .cloned()
        .collect();
    if chosen.is_empty() {
        return Err(CliError::msg(if known.is_empty() {
            "no signal types are declared".to_owned()
        } else if !names.is_empty() && !names.iter().any(|n| known.contains(n)) {
            "none of the given signal names is known; nothing to do".to_owned()
        } else {
            "every signal type is excluded; nothing to do".to_owned()
        }));
    }
    Ok(chosen)
}
