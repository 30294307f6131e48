//! What an AWS error means for the messages of a call: theirs alone (refused), or the
//! service's (an outage: no attempt spent).

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// A failed call, sorted.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The messages' own (no such queue or topic, access to it denied, invalid): refused.
    Refused(String),
    /// The service's or the connection's (throttling, 5xx, timeouts, no credentials).
    Outage(String),
}

/// Error codes that say the service is busy or out, or the credentials are: no message's
/// fault.
const OUTAGE_CODES: [&str; 14] = [
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestThrottled",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "KMSThrottlingException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
];

/// Sort `e`, the error of a call about `what` (`queue orders`), into a refusal or an outage,
/// with a reason that names it and says what AWS said (never a message body).
pub(crate) fn classify<E>(e: &SdkError<E, Response>, what: &str) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let status = service.raw().status().as_u16();
            let code = err.code().unwrap_or("unknown");
            let said = format!(
                "{what}: AWS answered HTTP {status} {code}: {}",
                err.message().unwrap_or("")
            );
            let code_tail = code.rsplit('.').next().unwrap_or(code);
            if status >= 500 || status == 429 || OUTAGE_CODES.contains(&code_tail) {
                Failure::Outage(said)
            } else {
                Failure::Refused(said)
            }
        }
        SdkError::TimeoutError(_) => Failure::Outage(format!("{what}: no answer from AWS in time")),
        other => Failure::Outage(format!("{what}: {}", DisplayErrorContext(other))),
    }
}
