//! Operating the binary: shell completions and the manual page come from the command line's
//! own definition and need no configuration; the example systemd unit is valid and gives the
//! relay the time it needs to stop gracefully.

use crate::{BIN, text};
use std::path::Path;
use std::process::Command;

/// `signalbus` in an empty directory, with no configuration in the environment.
fn bare(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(BIN)
        .current_dir(dir.path())
        .env_remove("SIGNALBUS_CONFIG")
        .env_remove("DATABASE_URL")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn completions_and_the_manual_page_need_no_configuration() {
    for (shell, mark) in [
        ("bash", "complete -F _signalbus"),
        ("zsh", "#compdef signalbus"),
        ("fish", "complete -c signalbus"),
    ] {
        let out = bare(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(mark), "{shell}: {script}");
        for word in ["relay", "flushmany", "database-retry-max", "manpage"] {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
    }
    let out = bare(&["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
    let out = bare(&["manpage"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(page.contains(".TH signalbus 1"), "{page}");
    for word in ["relay", "bus\\-url", "Exit status"] {
        assert!(page.contains(word), "the manual page lacks {word}");
    }
}

/// The value of `key=` in a unit file.
fn setting<'u>(unit: &'u str, key: &str) -> &'u str {
    unit.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("{key} missing"))
}

#[test]
fn the_systemd_unit_is_valid_and_outlasts_the_graceful_stop() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/systemd/signalbus-relay.service");
    let unit = std::fs::read_to_string(&path).unwrap();
    let exec = setting(&unit, "ExecStart");
    let grace: u64 = exec
        .split("--shutdown-timeout ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("ExecStart sets --shutdown-timeout");
    let stop: u64 = setting(&unit, "TimeoutStopSec").parse().unwrap();
    assert!(
        stop >= grace + 5,
        "TimeoutStopSec {stop} s leaves no margin over {grace} s"
    );
    assert_eq!(setting(&unit, "KillSignal"), "SIGTERM");
    assert!(setting(&unit, "ExecReload").contains("-HUP"));
    // systemd's own check, with the unit pointed at the binary just built (and its
    // environment file optional: there is none here).
    let found = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "systemd-analyze is missing: install the Debian package systemd"
    );
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("signalbus-relay.service");
    std::fs::write(
        &local,
        unit.replace("/usr/local/bin/signalbus", BIN)
            .replace("EnvironmentFile=/", "EnvironmentFile=-/"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        text(&out.stderr)
    );
}
