//! Configuration: one TOML file with documented defaults (`default.toml`, embedded in the
//! binary), overridden by environment variables and command-line flags. Unknown keys and
//! out-of-range values are errors that name the key, never silently ignored.

mod modules;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::engine::EngineConfig;
use crate::limits::{
    BATCH_OPS_MAX, FRAME_BODY_BYTES_MAX, FRAME_BODY_BYTES_MIN, SEGMENT_BYTES_MAX,
    SEGMENT_BYTES_MIN, SHARDS_MAX,
};
use crate::wal::{FsyncMode, WalConfig};
pub use modules::{AlertingConfig, ChannelConfig, SyncSection, CHANNEL_NAME_BYTES_MAX};

/// The documented default configuration, as shipped.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config file {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("invalid configuration: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub http: HttpConfig,
    pub engine: EngineSection,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    /// Two-person approval of dangerous changes.
    pub approval: crate::auth::approvals::ApprovalConfig,
    pub tls: TlsConfig,
    pub log: LogConfig,
    pub sync: SyncSection,
    /// Sales channels whose orders are synchronised (none by default).
    pub channels: Vec<ChannelConfig>,
    pub alerting: AlertingConfig,
    /// Service levels of return tickets.
    pub aftersales: crate::aftersales::sla::SlaConfig,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub connections_max: usize,
    pub frame_body_bytes_max: u32,
    pub frame_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    /// Operations per second one connection may send (0: no limit); beyond it, `overloaded`.
    pub connection_ops_per_second: u32,
    /// Runs the server's threads under Linux's `SCHED_BATCH` policy (see `cli::serve`).
    pub batch_scheduling: bool,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
    pub sample_interval_ms: u64,
    pub trend_samples: usize,
    pub activity_skus_max: usize,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            listen: "127.0.0.1:7879".into(),
            sample_interval_ms: 1000,
            trend_samples: 60,
            activity_skus_max: 10_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    pub shards: usize,
    pub ttl_ms_default: u32,
    pub hold_ms_max: u64,
    pub retention_ms: u64,
    pub shipped_retention_ms: u64,
    pub sweep_interval_ms: u64,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    Always,
    Interval,
    Never,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub fsync_interval_ms: u64,
    pub segment_bytes: u64,
    pub snapshot_every_records: u64,
    /// Also wait until the records since the last snapshot are this share (per cent) of the
    /// SKUs and reservations it held (0: only `snapshot_every_records`).
    pub snapshot_growth_percent: u64,
    pub snapshot_interval_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            data_dir: PathBuf::from("data"),
            fsync: FsyncPolicy::Always,
            fsync_interval_ms: 100,
            segment_bytes: 64 * 1024 * 1024,
            snapshot_every_records: 1_000_000,
            snapshot_growth_percent: 100,
            snapshot_interval_ms: 300_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Off only for development: every caller is then an admin (a warning is logged).
    pub enabled: bool,
    /// HTTP API requests per second one key may send (0: no limit); beyond it, 429.
    pub http_requests_per_second: u32,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Serve both the TCP protocol and HTTP over TLS.
    pub enabled: bool,
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key of the leaf certificate.
    pub key_file: PathBuf,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            listen: "127.0.0.1:7878".into(),
            connections_max: 10_000,
            frame_body_bytes_max: FRAME_BODY_BYTES_MAX,
            frame_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            idle_timeout_ms: 0,
            shutdown_grace_ms: 5_000,
            connection_ops_per_second: 1_000_000,
            batch_scheduling: true,
        }
    }
}

impl Default for EngineSection {
    fn default() -> EngineSection {
        let engine = EngineConfig::default();
        EngineSection {
            shards: engine.shards,
            ttl_ms_default: engine.ttl_ms_default,
            hold_ms_max: engine.hold_ms_max,
            retention_ms: engine.retention_ms,
            shipped_retention_ms: engine.shipped_retention_ms,
            sweep_interval_ms: 100,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig { enabled: true, http_requests_per_second: 200 }
    }
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig { level: "info".into(), format: LogFormat::Text }
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, reason: reason.into() }
}

impl Config {
    /// Parses a TOML document; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|source| ConfigError::Parse { path: origin.to_string(), source })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a config file, or the embedded defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Config::from_toml(DEFAULT_TOML, "<embedded default>"),
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
                Config::from_toml(&text, &shown)
            }
        }
    }

    /// Checks every value against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("server.listen", format!("{:?}: {e}", self.server.listen)))?;
        self.http
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("http.listen", format!("{:?}: {e}", self.http.listen)))?;
        let at_least_one = [
            ("server.connections_max", self.server.connections_max as u64),
            ("server.frame_timeout_ms", self.server.frame_timeout_ms),
            ("server.write_timeout_ms", self.server.write_timeout_ms),
            ("engine.ttl_ms_default", u64::from(self.engine.ttl_ms_default)),
            ("engine.sweep_interval_ms", self.engine.sweep_interval_ms),
            ("storage.fsync_interval_ms", self.storage.fsync_interval_ms),
            ("storage.snapshot_every_records", self.storage.snapshot_every_records),
            ("storage.snapshot_interval_ms", self.storage.snapshot_interval_ms),
            ("http.sample_interval_ms", self.http.sample_interval_ms),
            ("http.activity_skus_max", self.http.activity_skus_max as u64),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, value)| *value == 0) {
            return Err(invalid(key, "must be at least 1"));
        }
        if !(2..=3600).contains(&self.http.trend_samples) {
            return Err(invalid("http.trend_samples", "must be in 2..=3600"));
        }
        let frame = self.server.frame_body_bytes_max;
        if !(FRAME_BODY_BYTES_MIN..=FRAME_BODY_BYTES_MAX).contains(&frame) {
            return Err(invalid(
                "server.frame_body_bytes_max",
                format!("{frame} is outside {FRAME_BODY_BYTES_MIN}..={FRAME_BODY_BYTES_MAX}"),
            ));
        }
        let shards = self.engine.shards;
        if !shards.is_power_of_two() || shards > SHARDS_MAX {
            return Err(invalid(
                "engine.shards",
                format!("{shards} is not a power of two in 1..={SHARDS_MAX}"),
            ));
        }
        if u64::from(self.engine.ttl_ms_default) > self.engine.hold_ms_max {
            return Err(invalid("engine.ttl_ms_default", "exceeds engine.hold_ms_max"));
        }
        let segment = self.storage.segment_bytes;
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&segment) {
            return Err(invalid(
                "storage.segment_bytes",
                format!("{segment} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}"),
            ));
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(invalid("storage.data_dir", "must not be empty"));
        }
        let ops = self.server.connection_ops_per_second;
        if ops != 0 && ops < BATCH_OPS_MAX {
            return Err(invalid(
                "server.connection_ops_per_second",
                format!("must be 0 (no limit) or at least {BATCH_OPS_MAX}, one full batch"),
            ));
        }
        if self.approval.expiry_ms == 0 {
            return Err(invalid("approval.expiry_ms", "must be at least 1"));
        }
        if self.approval.negative_percent > 100 {
            return Err(invalid("approval.negative_percent", "must be in 0..=100"));
        }
        if self.tls.enabled {
            for (key, path) in
                [("tls.cert_file", &self.tls.cert_file), ("tls.key_file", &self.tls.key_file)]
            {
                if path.as_os_str().is_empty() {
                    return Err(invalid(key, "must be set when tls.enabled is true"));
                }
            }
        }
        modules::validate(&self.sync, &self.channels, &self.alerting, self.engine.hold_ms_max)?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", format!("{:?}: {e}", self.log.level)))?;
        Ok(())
    }

    /// The address to listen on (validated).
    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen.parse().expect("validated listen address")
    }

    /// The address of the HTTP endpoints (validated).
    pub fn http_addr(&self) -> SocketAddr {
        self.http.listen.parse().expect("validated http listen address")
    }

    pub fn wal_config(&self) -> WalConfig {
        let fsync = match self.storage.fsync {
            FsyncPolicy::Always => FsyncMode::Always,
            FsyncPolicy::Interval => {
                FsyncMode::Interval(Duration::from_millis(self.storage.fsync_interval_ms))
            }
            FsyncPolicy::Never => FsyncMode::Never,
        };
        WalConfig { segment_bytes: self.storage.segment_bytes, fsync }
    }

    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            shards: self.engine.shards,
            ttl_ms_default: self.engine.ttl_ms_default,
            hold_ms_max: self.engine.hold_ms_max,
            retention_ms: self.engine.retention_ms,
            shipped_retention_ms: self.engine.shipped_retention_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_defaults_match_the_code() {
        assert_eq!(Config::from_toml(DEFAULT_TOML, "default").expect("valid"), Config::default());
        assert_eq!(Config::from_toml("", "empty").expect("valid"), Config::default());
    }

    #[test]
    fn partial_files_keep_other_defaults() {
        let config = Config::from_toml("[engine]\nshards = 8\n", "t").expect("valid");
        assert_eq!(config.engine.shards, 8);
        assert_eq!(config.server, ServerConfig::default());
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("[engine]\nshards = 3\n", "engine.shards"),
            ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
            ("[http]\nlisten = \"nowhere\"\n", "http.listen"),
            ("[server]\nframe_body_bytes_max = 10\n", "server.frame_body_bytes_max"),
            ("[engine]\nttl_ms_default = 5000\nhold_ms_max = 10\n", "engine.ttl_ms_default"),
            ("[auth]\naccept_any_key = true\n", "accept_any_key"),
            ("[server]\nconnection_ops_per_second = 10\n", "server.connection_ops_per_second"),
            ("[approval]\nexpiry_ms = 0\n", "approval.expiry_ms"),
            ("[approval]\nnegative_percent = 101\n", "approval.negative_percent"),
            ("[tls]\nenabled = true\n", "tls.cert_file"),
            ("[server]\nconnections_max = 0\n", "server.connections_max"),
            ("[storage]\nsegment_bytes = 4096\n", "storage.segment_bytes"),
            ("[server]\nframe_timeout_ms = 0\n", "server.frame_timeout_ms"),
            ("[server]\nwrite_timeout_ms = 0\n", "server.write_timeout_ms"),
            ("[storage]\nfsync_interval_ms = 0\n", "storage.fsync_interval_ms"),
            ("[storage]\nsnapshot_interval_ms = 0\n", "storage.snapshot_interval_ms"),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(text, "t").expect_err(text);
            assert!(err.to_string().contains(key), "{err} should name {key}");
        }
    }

    #[test]
    fn unknown_keys_and_syntax_errors_are_refused() {
        let err = Config::from_toml("[server]\nlisten_port = 1\n", "my.toml").unwrap_err();
        assert!(err.to_string().contains("my.toml") && err.to_string().contains("listen_port"));
        assert!(Config::from_toml("[server\n", "t").is_err());
        assert!(Config::from_toml("[log]\nformat = \"xml\"\n", "t").is_err());
        assert!(Config::from_toml("[storage]\nfsync = \"sometimes\"\n", "t").is_err());
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = Config::load(Some(Path::new("/nonexistent/stockd.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/stockd.toml"));
    }
}
