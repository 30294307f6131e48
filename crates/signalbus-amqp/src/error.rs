//! lapin errors as signalbus errors that say what went wrong and what to do.

use lapin::ErrorKind;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use signalbus_core::PublishError;

/// Why connecting failed, naming the host, user or vhost at fault (never the password).
pub(crate) fn connect_error(e: lapin::Error, display: &str, url: &url::Url) -> PublishError {
    let host = format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port()
            .unwrap_or(if url.scheme() == "amqps" { 5671 } else { 5672 })
    );
    let user = if url.username().is_empty() {
        "guest"
    } else {
        url.username()
    };
    let message = match e.kind() {
        ErrorKind::IOError(io) if url.scheme() == "amqps" && is_tls_failure(io) => format!(
            "the TLS handshake with RabbitMQ at {host} failed ({io}); check that the broker's \
             certificate is signed by a CA this machine trusts (for a private CA, name its PEM \
             file with `?cacertfile=`) and names the host of the URL, and, if the broker \
             verifies clients, give `certfile` and `keyfile`"
        ),
        ErrorKind::IOError(io) => format!(
            "cannot reach RabbitMQ at {host} ({io}); check the host and port of `{display}` and \
             that the broker is running"
        ),
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => format!(
                "RabbitMQ at {host} refused access to the vhost of `{display}` for user `{user}` \
                 ({amqp}); check the vhost (`/` is written `%2f`) and the user's permissions"
            ),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => format!(
                "RabbitMQ at {host} refused the credentials of user `{user}` (password not \
                 shown) ({amqp}); check the user name and password in the bus URL"
            ),
            _ => format!("RabbitMQ at {host} refused the connection: {amqp}"),
        },
        // RabbitMQ drops the socket during the handshake when the credentials are wrong.
        ErrorKind::InvalidConnectionState(_) => format!(
            "RabbitMQ at {host} closed the connection during the handshake ({e}): usually wrong \
             credentials for user `{user}` (password not shown) or a vhost that does not exist"
        ),
        _ => format!("cannot connect to RabbitMQ at {host}: {e}"),
    };
    let credentials = matches!(
        e.kind(),
        ErrorKind::ProtocolError(_) | ErrorKind::InvalidConnectionState(_)
    );
    let error = if credentials {
        PublishError::rejected(message)
    } else {
        PublishError::unavailable(message)
    };
    error.with_source(e)
}

/// A failure while publishing `exchange`/`routing_key`. Missing exchanges and access
/// errors are the broker's configuration (rejected); everything else is a lost connection.
pub(crate) fn publish_error(e: lapin::Error, exchange: &str, routing_key: &str) -> PublishError {
    let target = format!("exchange `{exchange}` with routing key `{routing_key}`");
    let error = match e.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => PublishError::rejected(format!(
                "RabbitMQ has no {target}: {amqp}; declare the exchange first"
            )),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => {
                PublishError::rejected(format!("RabbitMQ refused publishing to {target}: {amqp}"))
            }
            _ => PublishError::unavailable(format!(
                "RabbitMQ failed while publishing to {target}: {amqp}; the batch stays pending"
            )),
        },
        _ => PublishError::unavailable(format!(
            "lost the RabbitMQ connection while publishing to {target} ({e}); the batch stays \
             pending and the publisher reconnects"
        )),
    };
    error.with_source(e)
}

/// Whether an I/O error is a refused TLS handshake: rustls reports it through `io::Error`
/// as a certificate error or a fatal alert (an ordinary disconnect, "peer closed connection
/// without sending TLS close_notify", is not one).
fn is_tls_failure(io: &std::io::Error) -> bool {
    let text = io.to_string().to_ascii_lowercase();
    [
        "certificate",
        "handshake",
        "fatal alert",
        "no native root ca",
    ]
    .iter()
    .any(|word| text.contains(word))
}
