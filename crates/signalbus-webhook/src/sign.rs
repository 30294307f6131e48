//! Standard Webhooks signatures: `webhook-signature` = `v1,` + base64(HMAC-SHA256(key,
//! `{webhook-id}.{webhook-timestamp}.{body}`)), one per secret, separated by spaces (several
//! secrets while one is rotated out). A secret is `whsec_` + the base64 of its key bytes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

/// The signing keys; never shown by `Debug`.
#[derive(Clone)]
pub struct Secrets(Vec<Vec<u8>>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} key(s), not shown)", self.0.len())
    }
}

impl Secrets {
    /// Parse space-separated `whsec_…` secrets; the error never contains a secret.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (n, secret) in text.split_whitespace().enumerate() {
            let Some(encoded) = secret.strip_prefix("whsec_") else {
                return Err(format!(
                    "webhook secret {} does not start with `whsec_`: a secret is `whsec_` and \
                     the base64 of 24 to 64 random bytes (e.g. `whsec_$(openssl rand -base64 32)`)",
                    n + 1
                ));
            };
            let key = STANDARD.decode(encoded).map_err(|_| {
                format!("webhook secret {} is not `whsec_` and valid base64", n + 1)
            })?;
            if !(24..=64).contains(&key.len()) {
                return Err(format!(
                    "webhook secret {} has {} key bytes; the Standard Webhooks range is 24 to 64",
                    n + 1,
                    key.len()
                ));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("no webhook secret given".into());
        }
        Ok(Secrets(keys))
    }

    /// The `webhook-signature` header value of a message.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let signatures: Vec<String> = self
            .0
            .iter()
            .map(|key| format!("v1,{}", STANDARD.encode(mac(key, id, timestamp, body))))
            .collect();
        signatures.join(" ")
    }

    /// Whether `signature` (a `webhook-signature` header value) holds a valid signature of the
    /// message by one of these keys, and `timestamp` is within `tolerance` of `now` (seconds
    /// since the Unix epoch): what a receiver checks.
    pub fn verify(
        &self,
        id: &str,
        timestamp: u64,
        body: &[u8],
        signature: &str,
        now: u64,
        tolerance: Duration,
    ) -> bool {
        if now.abs_diff(timestamp) > tolerance.as_secs() {
            return false;
        }
        signature.split_whitespace().any(|one| {
            let Some(encoded) = one.strip_prefix("v1,") else {
                return false;
            };
            let Ok(given) = STANDARD.decode(encoded) else {
                return false;
            };
            self.0.iter().any(|key| {
                let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
                feed(&mut mac, id, timestamp, body);
                mac.verify_slice(&given).is_ok() // constant time
            })
        })
    }
}

fn feed(mac: &mut HmacSha256, id: &str, timestamp: u64, body: &[u8]) {
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
}

fn mac(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
    feed(&mut mac, id, timestamp, body);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (checked with Python's hmac).
    #[test]
    fn signs_like_the_specification() {
        let secrets = Secrets::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let signature = secrets.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let five_min = Duration::from_secs(300);
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        assert!(secrets.verify(id, 1614265330, body, &signature, 1614265400, five_min));
        assert!(!secrets.verify(id, 1614265330, b"{}", &signature, 1614265400, five_min));
        assert!(!secrets.verify(id, 1614265330, body, &signature, 1614275400, five_min));
        assert!(!format!("{secrets:?}").contains("MfKQ"));
    }

    #[test]
    fn rotation_signs_with_every_secret_and_bad_secrets_are_named_not_shown() {
        let two = Secrets::parse(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw  whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .unwrap();
        let signature = two.sign("id", 1, b"x");
        assert_eq!(signature.split(' ').count(), 2);
        let old = Secrets::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert!(old.verify("id", 1, b"x", &signature, 1, Duration::from_secs(1)));
        for bad in ["s3cr3t", "whsec_!!!", "whsec_c2hvcnQ=", ""] {
            let e = Secrets::parse(bad).unwrap_err();
            assert!(!e.contains("s3cr3t") && !e.contains("!!!"), "{e}");
        }
    }
}
