//! Who may do what: tokens with a role (viewer or operator), the browser's session cookie,
//! and the CSRF token every form POST carries.
//!
//! A browser logs in once with its token; the cookie it gets holds the token's name and an
//! HMAC of the token under a key made at start (never the token itself), `HttpOnly` and
//! `SameSite=Strict`. Scripts send `Authorization: Bearer <token>` instead. A form POST must
//! carry the CSRF token of its session (an HMAC of the session's name), which only a page of
//! the console can have read; a request whose `Origin` is another site is refused outright.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

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

/// The tokens, and the key of cookies and CSRF tokens.
pub(crate) struct Access {
    tokens: Vec<Token>,
    key: [u8; 32],
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

    /// The session cookie's value for `token`.
    pub fn cookie_for(&self, token: &Token) -> String {
        let tag = self.mac(&[b"session", token.name.as_bytes(), token.secret.as_bytes()]);
        format!(
            "{}.{}",
            token.name,
            hex::encode(tag.finalize().into_bytes())
        )
    }

    pub fn caller_of_cookie(&self, value: &str) -> Option<Caller> {
        let (name, tag) = value.rsplit_once('.')?;
        let tag = hex::decode(tag).ok()?;
        let token = self.tokens.iter().find(|t| t.name == name)?;
        self.mac(&[b"session", token.name.as_bytes(), token.secret.as_bytes()])
            .verify_slice(&tag)
            .ok()?;
        Some(Caller {
            name: token.name.clone(),
            role: token.role,
            ambient: true,
        })
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
                .caller_of_cookie(&cookie.replace("bob.", "alice."))
                .is_none()
        );
        let other = Access::new();
        assert!(other.caller_of_cookie(&cookie).is_none());

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
