//! Configuration of the companion modules: order sync (`[sync]` and one `[[channels]]` table
//! per sales channel) and alerting (`[alerting]`). Documented with their defaults in
//! `default.toml`.

use serde::Deserialize;

use super::{invalid, ConfigError};
use stockd_protocol::limits::TAG_BYTES_MAX;

/// Longest channel name: it prefixes the reservation ids of the channel's orders.
pub const CHANNEL_NAME_BYTES_MAX: usize = 32;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSection {
    /// Pull-log entries kept per channel.
    pub pull_log_max: usize,
    /// How long an order's record is kept after its last event.
    pub order_retention_ms: u64,
    /// Most pages one pull fetches; the rest waits for the next pull.
    pub pages_per_pull_max: u32,
}

impl Default for SyncSection {
    fn default() -> SyncSection {
        SyncSection {
            pull_log_max: 10_000,
            order_retention_ms: 30 * 24 * 3_600_000,
            pages_per_pull_max: 100,
        }
    }
}

/// One sales channel (marketplace or own shop).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelConfig {
    pub name: String,
    /// Base URL of the channel's API (token, orders, stock).
    pub api_url: String,
    /// OAuth2 client credentials; without a client id the API is called without a token.
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_env: Option<String>,
    /// The HMAC-SHA256 key of the channel's webhooks; without one, webhooks are refused.
    pub webhook_secret: Option<String>,
    pub webhook_secret_env: Option<String>,
    /// 0 turns pulling off (push only).
    pub poll_interval_ms: u64,
    pub token_refresh_margin_ms: u64,
    /// Hold duration of the channel's unpaid orders; 0 takes `engine.ttl_ms_default`.
    pub hold_ms: u32,
    pub push_stock: bool,
    pub push_debounce_ms: u64,
    pub request_timeout_ms: u64,
    pub retries: u32,
    pub retry_backoff_ms: u64,
}

impl Default for ChannelConfig {
    fn default() -> ChannelConfig {
        ChannelConfig {
            name: String::new(),
            api_url: String::new(),
            client_id: None,
            client_secret: None,
            client_secret_env: None,
            webhook_secret: None,
            webhook_secret_env: None,
            poll_interval_ms: 300_000,
            token_refresh_margin_ms: 600_000,
            hold_ms: 0,
            push_stock: true,
            push_debounce_ms: 1_000,
            request_timeout_ms: 10_000,
            retries: 3,
            retry_backoff_ms: 500,
        }
    }
}

/// A secret given in the file or named by an environment variable.
fn secret(
    key: &'static str,
    name: &str,
    value: &Option<String>,
    env: &Option<String>,
) -> Result<Option<String>, ConfigError> {
    match (value, env) {
        (Some(_), Some(_)) => {
            Err(invalid(key, format!("channel {name:?}: give the value or _env")))
        }
        (Some(value), None) => Ok(Some(value.clone())),
        (None, Some(var)) => match std::env::var(var) {
            Ok(value) if !value.is_empty() => Ok(Some(value)),
            _ => {
                Err(invalid(key, format!("channel {name:?}: environment variable {var} is unset")))
            }
        },
        (None, None) => Ok(None),
    }
}

impl ChannelConfig {
    /// The OAuth2 client secret (from the file or the environment).
    pub fn client_secret(&self) -> Result<Option<String>, ConfigError> {
        secret("channels.client_secret", &self.name, &self.client_secret, &self.client_secret_env)
    }

    /// The webhook signing key (from the file or the environment).
    pub fn webhook_secret(&self) -> Result<Option<String>, ConfigError> {
        secret(
            "channels.webhook_secret",
            &self.name,
            &self.webhook_secret,
            &self.webhook_secret_env,
        )
    }

    fn validate(&self, hold_ms_max: u64, warn_ms: u64) -> Result<(), ConfigError> {
        let name = &self.name;
        let valid_name = !name.is_empty()
            && name.len() <= CHANNEL_NAME_BYTES_MAX.min(TAG_BYTES_MAX)
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(invalid(
                "channels.name",
                format!("{name:?}: 1..={CHANNEL_NAME_BYTES_MAX} letters, digits, - or _"),
            ));
        }
        let url_ok = self.api_url.starts_with("http://") || self.api_url.starts_with("https://");
        if !url_ok || reqwest::Url::parse(&self.api_url).is_err() {
            return Err(invalid(
                "channels.api_url",
                format!("channel {name:?}: {:?} is not an http(s) URL", self.api_url),
            ));
        }
        let secret = self.client_secret()?;
        if self.client_id.is_some() != secret.is_some() {
            return Err(invalid(
                "channels.client_id",
                format!("channel {name:?}: give both client_id and a client secret, or neither"),
            ));
        }
        self.webhook_secret()?;
        for (key, value) in [
            ("channels.push_debounce_ms", self.push_debounce_ms),
            ("channels.request_timeout_ms", self.request_timeout_ms),
            ("channels.retry_backoff_ms", self.retry_backoff_ms),
        ] {
            if value == 0 {
                return Err(invalid(key, format!("channel {name:?}: must be at least 1")));
            }
        }
        if u64::from(self.hold_ms) > hold_ms_max {
            return Err(invalid(
                "channels.hold_ms",
                format!("channel {name:?}: exceeds engine.hold_ms_max"),
            ));
        }
        if self.client_id.is_some() && self.token_refresh_margin_ms <= warn_ms {
            return Err(invalid(
                "channels.token_refresh_margin_ms",
                format!(
                    "channel {name:?}: must exceed alerting.token_expiry_warn_ms, or every \
                     routine refresh would raise an alert"
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AlertingConfig {
    pub evaluate_interval_ms: u64,
    /// A SKU with at most this many units available (and some) is low on stock; 0: off.
    pub low_stock_units: u64,
    pub sold_out: bool,
    /// SKU alerts (low, sold out, below safety stock) firing at once; beyond, one summary.
    pub sku_alerts_max: usize,
    pub pull_failures: u32,
    pub token_expiry_warn_ms: u64,
    pub backlog_max: u64,
    pub disk_free_bytes_min: u64,
    /// 0: off.
    pub latency_p99_ms_max: u64,
    pub escalate_after_ms: u64,
    /// A resolved alert that fires again within this time is not notified again.
    pub throttle_ms: u64,
    pub notifications_per_minute_max: u32,
    pub webhook_url: Option<String>,
    pub escalation_webhook_url: Option<String>,
    pub history_max: usize,
}

impl Default for AlertingConfig {
    fn default() -> AlertingConfig {
        AlertingConfig {
            evaluate_interval_ms: 1_000,
            low_stock_units: 0,
            sold_out: true,
            sku_alerts_max: 1_000,
            pull_failures: 3,
            token_expiry_warn_ms: 300_000,
            backlog_max: 1_000,
            disk_free_bytes_min: 1 << 30,
            latency_p99_ms_max: 0,
            escalate_after_ms: 300_000,
            throttle_ms: 60_000,
            notifications_per_minute_max: 60,
            webhook_url: None,
            escalation_webhook_url: None,
            history_max: 10_000,
        }
    }
}

impl AlertingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("alerting.evaluate_interval_ms", self.evaluate_interval_ms),
            ("alerting.pull_failures", u64::from(self.pull_failures)),
            ("alerting.escalate_after_ms", self.escalate_after_ms),
            ("alerting.notifications_per_minute_max", u64::from(self.notifications_per_minute_max)),
            ("alerting.history_max", self.history_max as u64),
            ("alerting.sku_alerts_max", self.sku_alerts_max as u64),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        for (key, url) in [
            ("alerting.webhook_url", &self.webhook_url),
            ("alerting.escalation_webhook_url", &self.escalation_webhook_url),
        ] {
            if let Some(url) = url {
                let ok = url.starts_with("http://") || url.starts_with("https://");
                if !ok || reqwest::Url::parse(url).is_err() {
                    return Err(invalid(key, format!("{url:?} is not an http(s) URL")));
                }
            }
        }
        Ok(())
    }
}

/// Checks the module sections.
pub(super) fn validate(
    sync: &SyncSection,
    channels: &[ChannelConfig],
    alerting: &AlertingConfig,
    hold_ms_max: u64,
) -> Result<(), ConfigError> {
    if sync.pull_log_max == 0 || sync.pages_per_pull_max == 0 || sync.order_retention_ms == 0 {
        return Err(invalid(
            "sync",
            "pull_log_max, pages_per_pull_max and order_retention_ms must be at least 1",
        ));
    }
    alerting.validate()?;
    for (at, channel) in channels.iter().enumerate() {
        channel.validate(hold_ms_max, alerting.token_expiry_warn_ms)?;
        if channels[..at].iter().any(|c| c.name == channel.name) {
            return Err(invalid("channels.name", format!("{:?} appears twice", channel.name)));
        }
    }
    Ok(())
}
