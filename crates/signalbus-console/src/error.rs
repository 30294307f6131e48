//! The console's answers to what went wrong: a status and a sentence that says what to do,
//! as JSON (`{"error": "…"}`) for the API and as a page for the browser. Bad input is a
//! 4xx, never a 500; a database that cannot answer is a 503.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What went wrong with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConsoleError {
    /// The request itself is wrong (a filter, a parameter, a form).
    BadRequest(String),
    /// No valid credentials.
    Unauthorized,
    /// The caller may not do this.
    Forbidden(String),
    /// No such database, signal type or signal.
    NotFound(String),
    /// The database could not answer.
    Unavailable(String),
}

impl ConsoleError {
    pub fn status(&self) -> StatusCode {
        match self {
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Unauthorized => StatusCode::UNAUTHORIZED,
            ConsoleError::Forbidden(_) => StatusCode::FORBIDDEN,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A signalbus error met while answering about `database`.
    pub fn from_bus(database: &str, e: signalbus_core::Error) -> Self {
        use signalbus_core::Error;
        match e {
            Error::Config(why) => ConsoleError::BadRequest(why),
            e @ Error::UnknownSignal { .. } => ConsoleError::NotFound(e.to_string()),
            e => {
                tracing::warn!(database, error = %e, "the console could not read the database");
                ConsoleError::Unavailable(format!(
                    "the database `{database}` could not answer ({e}); try again, and check \
                     the database if it goes on"
                ))
            }
        }
    }
}

impl std::fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsoleError::Unauthorized => f.write_str(
                "sign in first: log in at /console/login with your console token, or send \
                 `Authorization: Bearer <token>`",
            ),
            ConsoleError::BadRequest(m)
            | ConsoleError::Forbidden(m)
            | ConsoleError::NotFound(m)
            | ConsoleError::Unavailable(m) => f.write_str(m),
        }
    }
}

/// The JSON form, for the API.
impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() });
        let mut response = (self.status(), axum::Json(body)).into_response();
        if self == ConsoleError::Unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
