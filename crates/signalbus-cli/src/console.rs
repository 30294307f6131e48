//! `signalbus console` and `signalbus relay --console`: the operator console's tokens (from
//! the environment and the configuration) and its server.

use crate::args::ConsoleOptions;
use crate::config::ConsoleConfig;
use crate::error::CliError;
use crate::flushing::StopSignal;
use crate::outcome::Outcome;
use signalbus::console::{Console, Role};

/// The operator's token, named `operator` in the audit log.
pub const OPERATOR_TOKEN_ENV: &str = "SIGNALBUS_CONSOLE_OPERATOR_TOKEN";
/// The viewer's token, named `viewer` in the audit log.
pub const VIEWER_TOKEN_ENV: &str = "SIGNALBUS_CONSOLE_VIEWER_TOKEN";

/// A console with the tokens of the environment and of `config`, and the options.
pub fn console(
    options: &ConsoleOptions,
    config: Option<&ConsoleConfig>,
) -> Result<Console, CliError> {
    let bad = |e: signalbus::console::ConfigError| CliError::msg(e.to_string());
    let mut console =
        Console::new().hide_bodies(options.hide_bodies || config.is_some_and(|c| c.hide_bodies));
    for (env, name, role) in [
        (OPERATOR_TOKEN_ENV, "operator", Role::Operator),
        (VIEWER_TOKEN_ENV, "viewer", Role::Viewer),
    ] {
        if let Ok(secret) = std::env::var(env)
            && !secret.is_empty()
        {
            console = console.token(name, role, &secret).map_err(bad)?;
        }
    }
    for token in config.map(|c| c.tokens.as_slice()).unwrap_or_default() {
        let role = match token.role.as_str() {
            "operator" => Role::Operator,
            "viewer" => Role::Viewer,
            other => {
                return Err(CliError::msg(format!(
                    "console token `{}`: role {other:?} is neither \"viewer\" nor \"operator\"",
                    token.name
                )));
            }
        };
        let secret = std::env::var(&token.token_env).map_err(|_| {
            CliError::msg(format!(
                "console token `{}`: the environment variable {} is not set",
                token.name, token.token_env
            ))
        })?;
        console = console.token(&token.name, role, &secret).map_err(bad)?;
    }
    Ok(console)
}

/// Bind `listen`, refuse an open console off loopback, and serve until `stop` fires.
pub async fn serve(console: Console, listen: &str, stop: &StopSignal) -> Result<Outcome, CliError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::caused(format!("cannot listen on {listen}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::caused("cannot read the console's address", e))?;
    console
        .check_address(&addr)
        .map_err(|e| CliError::msg(e.to_string()))?;
    let open = !console.has_tokens();
    let router = console.router().map_err(|e| CliError::msg(e.to_string()))?;
    eprintln!(
        "signalbus console: serving http://{addr}/console{}",
        if open {
            " (open: no console tokens, loopback only)"
        } else {
            ""
        }
    );
    let stopped = stop.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stopped.stopped().await })
        .await
        .map_err(|e| CliError::caused("the console's server stopped", e))?;
    eprintln!("signalbus console: stopped");
    Ok(Outcome::Stopped)
}
