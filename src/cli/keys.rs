//! `stockd keys create|list|revoke`: API keys, either through a running server's HTTP API
//! (`--http`, with an admin key) or offline on the data directory while the server is stopped
//! (`--offline`; the directory lock refuses this while a server runs). A created key is
//! printed once on standard output; only its hash is stored.
//!
//! `serve` also creates the first admin key when authentication is on and the store is empty
//! (see [`bootstrap`]).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use stockd_protocol::ResultCode;

use super::http::HttpTarget;
use crate::audit::{AuditLog, NewEntry};
use crate::auth::{KeyRecord, KeyStore, Role};
use crate::config::Config;
use crate::wal::{DirLock, DirStorage};

#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(flatten)]
    http: HttpTarget,
    /// Work on the data directory instead of a running server (the server must be stopped).
    #[arg(long, global = true)]
    offline: bool,
    /// Configuration file, for the data directory (with --offline).
    #[arg(long, env = "STOCKD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory, overriding the configuration (with --offline).
    #[arg(long, env = "STOCKD_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Who does this (recorded in the audit log).
    #[arg(long, env = "USER", default_value = "cli", global = true)]
    actor: String,
    /// Why (recorded in the audit log).
    #[arg(long, default_value = "key management", global = true)]
    reason: String,
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Create a key and print it once: `stockd keys create --role checkout --name web-shop`.
    Create {
        /// checkout, sync, ops, admin or readonly.
        #[arg(long)]
        role: String,
        /// What the key is for (letters, digits, space, - _ . @).
        #[arg(long)]
        name: String,
    },
    /// List keys (id, role, name, created, revoked); never the keys themselves.
    List,
    /// Revoke a key by id: every later request with it is refused, on open connections too.
    Revoke { id: String },
}

fn line(key: &Value) -> String {
    let revoked = match key["revoked_ms"].as_u64() {
        Some(at) => format!("revoked at {}", super::fmt_ms(at)),
        None => "active".to_string(),
    };
    let created = key["created_ms"].as_u64().map(super::fmt_ms).unwrap_or_default();
    format!(
        "{}  {:<9} {:<24} created {} by {}  {revoked}",
        key["id"].as_str().unwrap_or(""),
        key["role"].as_str().unwrap_or(""),
        key["name"].as_str().unwrap_or(""),
        created,
        key["created_by"].as_str().unwrap_or(""),
    )
}

fn print_created(record: &Value, key: &str) {
    eprintln!(
        "created key {} ({} role); it is shown once below and stored only as a hash:",
        record["id"].as_str().unwrap_or(""),
        record["role"].as_str().unwrap_or("")
    );
    println!("{key}");
}

pub async fn run(args: KeyArgs) -> anyhow::Result<ResultCode> {
    if args.offline {
        return offline(args);
    }
    let http = &args.http;
    let (actor, reason) = (&args.actor, &args.reason);
    let reply = match &args.command {
        KeyCommand::Create { role, name } => {
            let body = json!({ "name": name, "role": role, "actor": actor, "reason": reason });
            http.call(reqwest::Method::POST, "/api/v1/keys", Some(body)).await?.map(|record| {
                print_created(&record, record["key"].as_str().unwrap_or(""));
            })
        }
        KeyCommand::List => http.call(reqwest::Method::GET, "/api/v1/keys", None).await?.map(|r| {
            for key in r["keys"].as_array().into_iter().flatten() {
                println!("{}", line(key));
            }
        }),
        KeyCommand::Revoke { id } => {
            let body = json!({ "actor": actor, "reason": reason });
            let path = format!("/api/v1/keys/{id}/revoke");
            http.call(reqwest::Method::POST, &path, Some(body)).await?.map(|key| {
                println!("{}", line(&key));
            })
        }
    };
    Ok(reply.err().unwrap_or(ResultCode::Ok))
}

fn offline(args: KeyArgs) -> anyhow::Result<ResultCode> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(dir) = args.data_dir {
        config.storage.data_dir = dir;
    }
    let dir = &config.storage.data_dir;
    let _lock = DirLock::acquire(dir).with_context(|| {
        format!(
            "{}: stop the server, or manage keys over HTTP (--http with an admin key)",
            dir.display()
        )
    })?;
    let storage = DirStorage::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let keys = KeyStore::open(&storage)?;
    let now_ms = crate::clock::Clock::system().now_ms();
    let by = format!("offline:{}", args.actor);
    match args.command {
        KeyCommand::Create { role, name } => {
            let Some(role) = Role::parse(&role) else {
                bail!("role {role:?}: checkout, sync, ops, admin or readonly");
            };
            let (record, key) = keys.create(&name, role, &by, now_ms)?;
            audit(&storage, now_ms, &args.actor, &args.reason, "key_create", None, &record)?;
            print_created(&serde_json::to_value(&record)?, &key);
        }
        KeyCommand::List => {
            for key in keys.list() {
                println!("{}", line(&serde_json::to_value(&key)?));
            }
        }
        KeyCommand::Revoke { id } => {
            let before = keys.revoke(&id, &by, now_ms)?;
            let after = keys.get(&id).expect("revoked keys stay listed");
            audit(
                &storage,
                now_ms,
                &args.actor,
                &args.reason,
                "key_revoke",
                Some(&before),
                &after,
            )?;
            println!("{}", line(&serde_json::to_value(&after)?));
        }
    }
    Ok(ResultCode::Ok)
}

fn audit(
    storage: &DirStorage,
    at_ms: u64,
    actor: &str,
    reason: &str,
    action: &'static str,
    before: Option<&KeyRecord>,
    after: &KeyRecord,
) -> anyhow::Result<()> {
    let log = AuditLog::open(storage)?;
    log.append(NewEntry {
        at_ms,
        actor: actor.to_string(),
        action,
        target: after.id.clone(),
        reason: reason.to_string(),
        before: before.map_or(Value::Null, crate::http::keys::audit_view),
        after: crate::http::keys::audit_view(after),
        lsn: 0,
    })?;
    Ok(())
}

/// With authentication on and no key at all, creates an admin key named `bootstrap` and
/// prints it once on standard output (never in the log), so a fresh server can be used at
/// all. Create your own keys with it, then revoke it.
pub fn bootstrap(shared: &crate::server::Shared) -> anyhow::Result<()> {
    if !shared.auth_enabled() || !shared.keys.is_empty() {
        return Ok(());
    }
    let now_ms = shared.clock.now_ms();
    let (record, key) = shared.keys.create("bootstrap", Role::Admin, "stockd", now_ms)?;
    shared.audit.append(NewEntry {
        at_ms: now_ms,
        actor: "stockd".into(),
        action: "key_create",
        target: record.id.clone(),
        reason: "first start: no API key existed".into(),
        before: Value::Null,
        after: crate::http::keys::audit_view(&record),
        lsn: 0,
    })?;
    tracing::warn!(
        key = %record.id,
        "no API key existed: created admin key `bootstrap`, printed once on standard output \
         (create your own keys with it, then revoke it)"
    );
    println!("stockd: first start, no API key existed. Admin key (shown once, stored hashed):");
    println!("STOCKD_API_KEY={key}");
    Ok(())
}
