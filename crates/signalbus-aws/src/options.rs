//! The bus URLs `sqs://[REGION]` and `sns://[REGION]`, and the AWS configuration they make.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use signalbus_core::redact::redact_url;
use signalbus_core::{Error, Result};
use std::time::Duration;

/// The group of a FIFO message whose signal has no ordering key, unless `fifo_group=` names
/// another: all of them are one sequence.
pub const DEFAULT_FIFO_GROUP: &str = "signalbus";

/// The largest message SQS and SNS take by default: 256 KiB, body and attributes together (a
/// queue's `MaximumMessageSize` may be lower; SQS allows up to 1 MiB where raised).
pub const DEFAULT_MAX_BYTES: usize = 256 * 1024;

/// How the SQS or SNS publisher connects; usually parsed from the bus URL.
#[derive(Clone)]
pub struct AwsOptions {
    pub(crate) display: String,
    /// The region; `None`: the default chain's (`AWS_REGION`, the profile).
    pub region: Option<String>,
    /// Another endpoint than AWS's, e.g. an emulator on `http://127.0.0.1:4566`.
    pub endpoint: Option<String>,
    /// The profile of `~/.aws/config` to use instead of the default chain's.
    pub profile: Option<String>,
    /// Limit of one API call, retries included.
    pub timeout: Duration,
    /// The group of FIFO messages without an ordering key.
    pub fifo_group: String,
    /// Messages larger than this (body and attributes) are parked instead of sent.
    pub max_bytes: usize,
    /// No request of a publish call starts after this: the messages not sent by then are
    /// deferred (no attempt spent). Requests in flight finish (within `timeout`): keep the
    /// two together below the bus's publish timeout (3 s on SQLite, 30 s else).
    pub budget: Duration,
    /// Credentials given in code instead of the default chain's.
    credentials: Option<aws_credential_types::Credentials>,
}

impl std::fmt::Debug for AwsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsOptions")
            .field("url", &self.display)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("profile", &self.profile)
            .field("timeout", &self.timeout)
            .field("fifo_group", &self.fifo_group)
            .field("max_bytes", &self.max_bytes)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "given (not shown)"),
            )
            .finish()
    }
}

impl AwsOptions {
    /// Parse `SCHEME://[REGION][?params]`, where `SCHEME` is `sqs` or `sns`.
    pub fn from_url(url: &str, scheme: &str) -> Result<Self> {
        let display = redact_url(url);
        let parsed = url::Url::parse(url)
            .map_err(|e| Error::Config(format!("bus URL `{display}` is not a valid URL: {e}")))?;
        if parsed.scheme() != scheme {
            return Err(Error::Config(format!(
                "bus URL `{display}`: scheme `{}:` is not `{scheme}:`; use e.g. \
                 `{scheme}://eu-west-1`",
                parsed.scheme()
            )));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Error::Config(format!(
                "bus URL `{display}`: no credentials in the URL; they come from the AWS default \
                 chain (environment, profile, SSO, web identity, container or instance role)"
            )));
        }
        if !matches!(parsed.path(), "" | "/") {
            return Err(Error::Config(format!(
                "bus URL `{display}`: `{scheme}://REGION` takes no path; each signal's \
                 destination names its {}",
                if scheme == "sqs" { "queue" } else { "topic" }
            )));
        }
        let mut options = AwsOptions {
            display: display.clone(),
            region: parsed
                .host_str()
                .filter(|h| !h.is_empty())
                .map(str::to_owned),
            endpoint: None,
            profile: None,
            timeout: Duration::from_secs(10),
            fifo_group: DEFAULT_FIFO_GROUP.to_owned(),
            max_bytes: DEFAULT_MAX_BYTES,
            budget: Duration::from_millis(2500),
            credentials: None,
        };
        let positive = |key: &str, value: &str| -> Result<u64> {
            value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::Config(format!(
                    "bus URL `{display}`: `{key}` must be a positive whole number"
                ))
            })
        };
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "region" => options.region = Some(value.into_owned()),
                "endpoint" => {
                    let endpoint = url::Url::parse(&value)
                        .ok()
                        .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
                        .ok_or_else(|| {
                            Error::Config(format!(
                                "bus URL `{display}`: `endpoint` must be an http(s):// URL"
                            ))
                        })?;
                    options.endpoint = Some(endpoint.to_string());
                }
                "profile" => options.profile = Some(value.into_owned()),
                "timeout_ms" => {
                    options.timeout = Duration::from_millis(positive("timeout_ms", &value)?);
                }
                "fifo_group" => options.fifo_group = value.into_owned(),
                "budget_ms" => {
                    options.budget = Duration::from_millis(positive("budget_ms", &value)?);
                }
                "max_bytes" => {
                    options.max_bytes =
                        usize::try_from(positive("max_bytes", &value)?).unwrap_or(usize::MAX);
                }
                other => {
                    return Err(Error::Config(format!(
                        "bus URL `{display}`: unknown query parameter `{other}`; known: region, \
                         endpoint, profile, timeout_ms, fifo_group, max_bytes, budget_ms"
                    )));
                }
            }
        }
        if crate::encode::group_id(&options.fifo_group).is_none() {
            return Err(Error::Config(format!(
                "bus URL `{display}`: `fifo_group` must be 1 to 128 letters, digits or \
                 punctuation"
            )));
        }
        Ok(options)
    }

    /// Use these credentials instead of the default chain's (e.g. read from a secret store).
    pub fn credentials(mut self, access_key_id: &str, secret_access_key: &str) -> Self {
        self.credentials = Some(aws_credential_types::Credentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            "signalbus",
        ));
        self
    }

    /// The SDK configuration: the default credential chain, this region and endpoint, the
    /// timeout for each call, the SDK's standard retries (2 attempts) within it, and an
    /// HTTPS client of rustls on ring.
    pub(crate) async fn sdk_config(&self) -> SdkConfig {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .operation_timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(3)))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(timeouts)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2));
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(profile) = &self.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(credentials) = &self.credentials {
            loader = loader.credentials_provider(credentials.clone());
        }
        loader.load().await
    }

    /// The error of a client made without a region.
    pub(crate) fn check_region(&self, config: &SdkConfig) -> Result<()> {
        if config.region().is_none() {
            return Err(Error::Config(format!(
                "bus URL `{}`: no AWS region: write it in the URL (`sqs://eu-west-1`) or set \
                 AWS_REGION",
                self.display
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let o = AwsOptions::from_url(
            "sqs://eu-west-1?endpoint=http://127.0.0.1:4577&timeout_ms=500&fifo_group=all",
            "sqs",
        )
        .unwrap();
        assert_eq!(o.region.as_deref(), Some("eu-west-1"));
        assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:4577/"));
        assert_eq!(o.timeout, Duration::from_millis(500));
        assert_eq!(o.fifo_group, "all");
        let o = AwsOptions::from_url("sns://", "sns").unwrap();
        assert_eq!(o.region, None);
        for bad in [
            "sqs://u:secret@eu-west-1",
            "sqs://eu-west-1/queue",
            "sqs://eu-west-1?x=1",
            "sqs://eu-west-1?endpoint=ftp://h",
            "sqs://eu-west-1?fifo_group=a%20b",
            "sns://eu-west-1",
        ] {
            let e = AwsOptions::from_url(bad, "sqs").unwrap_err().to_string();
            assert!(e.contains("bus URL") && !e.contains("secret"), "{bad}: {e}");
        }
    }
}
