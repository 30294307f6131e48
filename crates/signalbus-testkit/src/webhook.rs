//! A webhook receiver on a port of its own on 127.0.0.1: it checks every request's Standard
//! Webhooks signature, records what came, and answers as a test tells it per path (2xx, 4xx,
//! 429 with `Retry-After`, 5xx, slowly, or not at all). It can be stopped and started again on
//! the same port.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the receiver answers requests to one path.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 200.
    Ok,
    /// This status, e.g. 422 or 503.
    Status(u16),
    /// 429 with `Retry-After: seconds`.
    TooMany(u64),
    /// 200 after this long.
    Slow(Duration),
    /// Never (the connection stays open).
    Never,
}

/// One request, as it came.
#[derive(Debug, Clone)]
pub struct Request {
    /// Its path.
    pub path: String,
    /// `webhook-id`.
    pub id: String,
    /// The body.
    pub body: Vec<u8>,
    /// Every header, names in lower case.
    pub headers: HashMap<String, String>,
    /// Whether `webhook-signature` holds a valid signature by the receiver's key.
    pub signed: bool,
    /// Whether it was answered with a 2xx.
    pub accepted: bool,
}

#[derive(Default)]
struct State {
    answers: HashMap<String, Answer>,
    requests: Vec<Request>,
}

/// The receiver; stopped when dropped.
pub struct Receiver {
    /// Its port on 127.0.0.1.
    pub port: u16,
    key: Vec<u8>,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Start one on a free port, checking signatures with `secret` (`whsec_…`).
    pub async fn start(secret: &str) -> Self {
        Self::start_on(0, secret, Arc::default()).await
    }

    async fn start_on(port: u16, secret: &str, state: Arc<Mutex<State>>) -> Self {
        let key = STANDARD
            .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
            .expect("base64");
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("a port on 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let app = {
            let (state, key) = (state.clone(), key.clone());
            axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
                let (state, key) = (state.clone(), key.clone());
                async move { answer(&state, &key, uri, headers, body).await }
            })
        };
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            port,
            key,
            state,
            server,
        }
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Answer requests to `path` (e.g. `/orders`) with `answer` from now on.
    pub fn set(&self, path: &str, answer: Answer) {
        let mut state = self.state.lock().unwrap();
        state.answers.insert(path.to_owned(), answer);
    }

    /// Every request so far, in the order they came.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The requests to `path` answered with a 2xx.
    pub fn accepted(&self, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.accepted && r.path == path)
            .collect()
    }

    /// Stop it (connections in flight are dropped); [`Receiver::restart`] starts it again.
    pub fn stop(self) -> Stopped {
        self.server.abort();
        Stopped {
            port: self.port,
            key: self.key.clone(),
            state: self.state.clone(),
        }
    }
}

/// A stopped receiver, to start again on its port with what it had recorded.
pub struct Stopped {
    port: u16,
    key: Vec<u8>,
    state: Arc<Mutex<State>>,
}

impl Stopped {
    /// Start it again on the same port (waits until the port is free).
    pub async fn restart(self) -> Receiver {
        let secret = format!("whsec_{}", STANDARD.encode(&self.key));
        for _ in 0..100 {
            if std::net::TcpListener::bind(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Receiver::start_on(self.port, &secret, self.state).await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(
    state: &Mutex<State>,
    key: &[u8],
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let id = headers.get("webhook-id").cloned().unwrap_or_default();
    let signed = verify(key, &headers, &body);
    let path = uri.path().to_owned();
    let answer = state
        .lock()
        .unwrap()
        .answers
        .get(&path)
        .cloned()
        .unwrap_or(Answer::Ok);
    let accepted = matches!(answer, Answer::Ok | Answer::Slow(_)) && signed;
    let mut request = Request {
        path,
        id,
        body: body.to_vec(),
        headers,
        signed,
        accepted,
    };
    let response = match answer {
        Answer::Never => {
            request.accepted = false;
            state.lock().unwrap().requests.push(request);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return StatusCode::OK.into_response();
        }
        Answer::Slow(wait) => {
            tokio::time::sleep(wait).await;
            StatusCode::OK.into_response()
        }
        _ if !signed => StatusCode::UNAUTHORIZED.into_response(),
        Answer::Ok => StatusCode::OK.into_response(),
        Answer::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Answer::TooMany(seconds) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", seconds.to_string())],
        )
            .into_response(),
    };
    state.lock().unwrap().requests.push(request);
    response
}

/// The Standard Webhooks check: some `v1,` signature of `id.timestamp.body` by `key`.
fn verify(key: &[u8], headers: &HashMap<String, String>, body: &[u8]) -> bool {
    let (Some(id), Some(timestamp), Some(signatures)) = (
        headers.get("webhook-id"),
        headers.get("webhook-timestamp"),
        headers.get("webhook-signature"),
    ) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    signatures.split(' ').any(|s| s == expected)
}
