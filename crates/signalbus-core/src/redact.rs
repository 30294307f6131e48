//! Keeps credentials out of messages and logs.

/// A bus URL that names several servers of one cluster, comma-separated after the
/// credentials: `scheme://[user:password@]host1:port1,host2:port2[/path][?query]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostList {
    /// The URL with the first server only, which [`url::Url`] parses.
    pub first: String,
    /// The other servers as written (`host:port`), in order.
    pub others: Vec<String>,
}

/// Split the servers of `url` (see [`HostList`]); a URL naming one server has no `others`.
pub fn split_hosts(url: &str) -> HostList {
    let one = || HostList {
        first: url.to_owned(),
        others: Vec::new(),
    };
    let Some(scheme_end) = url.find("://") else {
        return one();
    };
    let scheme = &url[..scheme_end];
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return one();
    }
    let start = scheme_end + 3;
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |at| start + at);
    // An `@` after the host part: a password with an unencoded `/`, `?` or `#`; where the
    // servers begin cannot be told, so the URL is taken whole (and masked whole).
    if url[end..].contains('@') {
        return one();
    }
    let authority = &url[start..end];
    let hosts_at = authority.rfind('@').map_or(start, |at| start + at + 1);
    let mut hosts = url[hosts_at..end].split(',');
    let first = hosts.next().unwrap_or_default();
    let others: Vec<String> = hosts.map(str::to_owned).collect();
    let host_like = |h: &String| {
        h.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_[]:".contains(c))
    };
    if others.is_empty() || !others.iter().all(host_like) {
        return one();
    }
    HostList {
        first: format!("{}{first}{}", &url[..hosts_at], &url[end..]),
        others,
    }
}

/// `url` with its password (and any `password=` query value) replaced by `***`, for error
/// messages and logs. Text that does not parse as a URL is returned with anything between
/// `://` and `@` masked. A URL naming several servers ([`HostList`]) keeps them all.
pub fn redact_url(url: &str) -> String {
    let hosts = split_hosts(url);
    if !hosts.others.is_empty() && url::Url::parse(&hosts.first).is_ok() {
        let first = redact_one(&hosts.first);
        // Put the other servers back after the first one, where they were.
        let at = first.find("://").map_or(0, |s| s + 3);
        let end = first[at..]
            .find(['/', '?', '#'])
            .map_or(first.len(), |e| at + e);
        return format!(
            "{},{}{}",
            &first[..end],
            hosts.others.join(","),
            &first[end..]
        );
    }
    redact_one(url)
}

fn redact_one(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.has_host() => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(k, v)| {
                    let secret = ["password", "pass", "pwd", "token", "secret"]
                        .contains(&k.to_ascii_lowercase().as_str());
                    (
                        k.into_owned(),
                        if secret { "***".into() } else { v.into_owned() },
                    )
                })
                .collect();
            if !pairs.is_empty() {
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        _ => match (url.find("://"), url.rfind('@')) {
            (Some(start), Some(at)) if at > start => {
                format!("{}://***@{}", &url[..start], &url[at + 1..])
            }
            _ => url.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{redact_url, split_hosts};

    #[test]
    fn passwords_never_survive() {
        assert_eq!(
            redact_url("postgres://bob:s3cret@db:5432/app"),
            "postgres://bob:***@db:5432/app"
        );
        assert_eq!(
            redact_url("amqp://guest@localhost"),
            "amqp://guest@localhost"
        );
        assert!(!redact_url("mysql://u:p@h/db?password=zz&x=1").contains("zz"));
        assert!(!redact_url("weird://u:p@@[bad").contains("u:p"));
        assert_eq!(redact_url("sqlite:/tmp/x.db"), "sqlite:/tmp/x.db");
    }

    #[test]
    fn several_servers() {
        let hosts = split_hosts("nats://u:p@a:1,b:2,c/?x=1");
        assert_eq!(hosts.first, "nats://u:p@a:1/?x=1");
        assert_eq!(hosts.others, ["b:2", "c"]);
        assert_eq!(split_hosts("nats://a:1?x=1").others, Vec::<String>::new());
        assert_eq!(split_hosts("sqlite:/x,y").others, Vec::<String>::new());
        assert_eq!(
            redact_url("nats://u:s3cret@a:1,b:2?token=t0k&x=1"),
            "nats://u:***@a:1,b:2?token=***&x=1"
        );
        assert_eq!(
            redact_url("amqp://u:s3cret@a:1,b:2/%2f"),
            "amqp://u:***@a:1,b:2/%2f"
        );
        assert_eq!(redact_url("nats://a:1,b:2"), "nats://a:1,b:2");
        // A password with an unencoded `,` and `/`: masked whole, as before.
        for leaky in [
            "postgres://u:a,b/c@h/db",
            "amqp://u:x,y?z@h",
            "nats://u:p,q r@h",
        ] {
            let shown = redact_url(leaky);
            assert!(
                !shown.contains("b/c")
                    && !shown.contains(",b")
                    && !shown.contains("y?z")
                    && !shown.contains("q r"),
                "{leaky} shown as {shown}"
            );
        }
    }
}
