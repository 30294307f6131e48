//! Who may do what: tokens with a role (viewer or operator), the browser's session cookie,
//! and the CSRF token every form POST carries.
//!
//! A browser logs in once with its token; the cookie it gets names a session of this process
//! (a random id, the token's name and an HMAC of both and the token under a key made at
//! start — never the token itself), `HttpOnly`, `SameSite=Strict`, and `Secure` when the login
//! came over HTTPS. A session lasts [`SESSION_LIFETIME`] at most, and logging out ends it
//! here, not only in the browser: its cookie is refused from then on, wherever it was copied.
//! Scripts send `Authorization: Bearer <token>` instead. A form POST must
//! carry the CSRF token of its session (an HMAC of the session's name), which only a page of
//! the console can have read; a request whose `Origin` is another site is refused outright.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

type HmacSha256 = Hmac<Sha256>;

/// The name of the session cookie.
pub(crate) const COOKIE: &str = "signalbus_console";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads the pages and the API, without signal bodies.
    Viewer,
    /// Also unparks and purges, and sees bodies (unless the console hides them).
    Operator,
}

impl Role {
    /// `viewer` or `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// One token: a name (who, in the audit log), a role, and the secret.
#[derive(Clone)]
pub(crate) struct Token {
    pub name: String,
    pub role: Role,
    secret: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    pub name: String,
    pub role: Role,
    /// Authenticated by a cookie or by nothing (no tokens configured): a form POST needs
    /// the CSRF token. `false` for a bearer token, which a browser never sends by itself.
    pub ambient: bool,
}

/// How long a browser session lasts: a working day, then log in again.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The most sessions kept at once: logging in beyond it ends the oldest.
const MAX_SESSIONS: usize = 10_000;

/// The tokens, the key of cookies and CSRF tokens, and the live sessions (by id: whose, and
/// until when).
pub(crate) struct Access {
    tokens: Vec<Token>,
    key: [u8; 32],
    sessions: Mutex<HashMap<String, (String, Instant)>>,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

/// The shortest token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

impl Access {
    pub fn new() -> Self {
        Access {
            tokens: Vec::new(),
            key: rand::random(),
            sessions: Mutex::default(),
        }
    }

    pub fn add(&mut self, name: &str, role: Role, secret: &str) -> Result<(), String> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        {
            return Err(format!(
                "console token name {name:?}: use letters, digits, `-`, `_`, `.` or `@`"
            ));
        }
        if secret.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the console token of `{name}` is shorter than {MIN_TOKEN_LEN} characters; \
                 make one with `openssl rand -hex 24`"
            ));
        }
        if self.tokens.iter().any(|t| t.name == name) {
            return Err(format!("two console tokens are named `{name}`"));
        }
        if self.tokens.iter().any(|t| t.secret == secret) {
            return Err(format!(
                "the console token of `{name}` is also another name's: give each its own"
            ));
        }
        self.tokens.push(Token {
            name: name.to_owned(),
            role,
            secret: secret.to_owned(),
        });
        Ok(())
    }

    /// Whether any token is configured (without, the console is open, loopback only).
    pub fn required(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The caller of a request without credentials: the open console's operator, or nobody.
    pub fn anonymous(&self) -> Option<Caller> {
        (!self.required()).then(|| Caller {
            name: "local".to_owned(),
            role: Role::Operator,
            ambient: true,
        })
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The token whose secret is `secret` (compared in constant time, through their MACs).
    pub fn by_secret(&self, secret: &str) -> Option<&Token> {
        let given = self
            .mac(&[b"token", secret.as_bytes()])
            .finalize()
            .into_bytes();
        self.tokens.iter().find(|t| {
            self.mac(&[b"token", t.secret.as_bytes()])
                .verify_slice(&given)
                .is_ok()
        })
    }

    pub fn bearer(&self, secret: &str) -> Option<Caller> {
        self.by_secret(secret).map(|t| Caller {
            name: t.name.clone(),
            role: t.role,
            ambient: false,
        })
    }

    /// A new session of `token`: the session cookie's value (`id.name.tag`).
    pub fn cookie_for(&self, token: &Token) -> String {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let now = Instant::now();
        let mut sessions = self.sessions.lock().expect("sessions lock");
        sessions.retain(|_, (_, until)| *until > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), (token.name.clone(), now + SESSION_LIFETIME));
        let tag = self.session_mac(token, &id);
        format!(
            "{id}.{}.{}",
            token.name,
            hex::encode(tag.finalize().into_bytes())
        )
    }

    fn session_mac(&self, token: &Token, id: &str) -> HmacSha256 {
        self.mac(&[
            b"session",
            id.as_bytes(),
            token.name.as_bytes(),
            token.secret.as_bytes(),
        ])
    }

    /// The caller of a session cookie: a session of this process, live, with a valid tag.
    pub fn caller_of_cookie(&self, value: &str) -> Option<Caller> {
        let (id, rest) = value.split_once('.')?;
        let (name, tag) = rest.rsplit_once('.')?;
        let tag = hex::decode(tag).ok()?;
        let token = self.tokens.iter().find(|t| t.name == name)?;
        self.session_mac(token, id).verify_slice(&tag).ok()?;
        let sessions = self.sessions.lock().expect("sessions lock");
        let (whose, until) = sessions.get(id)?;
        if whose != name || *until <= Instant::now() {
            return None;
        }
        Some(Caller {
            name: token.name.clone(),
            role: token.role,
            ambient: true,
        })
    }

    /// End the session of a cookie (logging out): refused from now on, wherever it was
    /// copied. Whether there was one.
    pub fn end_session(&self, value: &str) -> bool {
        let Some((id, _)) = value.split_once('.') else {
            return false;
        };
        self.sessions
            .lock()
            .expect("sessions lock")
            .remove(id)
            .is_some()
    }

    /// The CSRF token of `caller`'s session.
    pub fn csrf(&self, caller: &Caller) -> String {
        hex::encode(
            self.mac(&[b"csrf", caller.name.as_bytes()])
                .finalize()
                .into_bytes(),
        )
    }

    pub fn csrf_ok(&self, caller: &Caller, given: &str) -> bool {
        let Ok(given) = hex::decode(given) else {
            return false;
        };
        self.mac(&[b"csrf", caller.name.as_bytes()])
            .verify_slice(&given)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_csrf_tokens_are_bound_to_the_key_and_the_name() {
        let mut access = Access::new();
        access
            .add("alice", Role::Operator, "alice-secret-0123456789")
            .unwrap();
        access
            .add("bob", Role::Viewer, "bob-secret-0123456789ab")
            .unwrap();
        assert!(
            access
                .add("carol", Role::Viewer, "short")
                .unwrap_err()
                .contains("shorter")
        );
        assert!(
            access
                .add("bob", Role::Viewer, "another-secret-0123456")
                .unwrap_err()
                .contains("two")
        );
        assert!(
            access
                .add("bad name", Role::Viewer, "another-secret-0123456")
                .is_err()
        );

        let alice = access.bearer("alice-secret-0123456789").unwrap();
        assert_eq!((alice.role, alice.ambient), (Role::Operator, false));
        assert!(access.bearer("alice-secret-012345678").is_none());

        let token = access.by_secret("bob-secret-0123456789ab").unwrap().clone();
        let cookie = access.cookie_for(&token);
        assert!(!cookie.contains("secret"), "the cookie holds no secret");
        let bob = access.caller_of_cookie(&cookie).unwrap();
        assert_eq!(
            (bob.name.as_str(), bob.role, bob.ambient),
            ("bob", Role::Viewer, true)
        );
        // A cookie forged for another name, or made under another key, is refused.
        assert!(
            access
                .caller_of_cookie(&cookie.replace(".bob.", ".alice."))
                .is_none()
        );
        let other = Access::new();
        assert!(other.caller_of_cookie(&cookie).is_none());
        // Each login is a session of its own; logging out ends that one only.
        let second = access.cookie_for(&token);
        assert_ne!(cookie, second);
        assert!(access.end_session(&cookie));
        assert!(access.caller_of_cookie(&cookie).is_none(), "ended");
        assert!(!access.end_session(&cookie));
        assert!(access.caller_of_cookie(&second).is_some());
        // An expired session is refused.
        let (id, _) = second.split_once('.').unwrap();
        access.sessions.lock().unwrap().get_mut(id).unwrap().1 = Instant::now();
        assert!(access.caller_of_cookie(&second).is_none(), "expired");

        let csrf = access.csrf(&bob);
        assert!(access.csrf_ok(&bob, &csrf));
        assert!(!access.csrf_ok(&alice, &csrf));
        assert!(!access.csrf_ok(&bob, "zz"));
        assert!(
            access.anonymous().is_none(),
            "tokens configured: no open access"
        );
        assert_eq!(Access::new().anonymous().unwrap().role, Role::Operator);
    }
}
