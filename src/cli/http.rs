//! The HTTP side from the command line: where the server is, the API key, and one call.

use anyhow::Context;
use clap::Args;
use serde_json::Value;
use stockd_protocol::ResultCode;

/// Where the server's HTTP side is and which key to present.
#[derive(Args, Debug, Clone)]
pub struct HttpTarget {
    /// Address of the server's HTTP side (host:port, or a URL).
    #[arg(long, env = "STOCKD_HTTP", default_value = "127.0.0.1:7879", global = true)]
    pub http: String,
    /// API key sent as `Authorization: Bearer` (README "Security").
    #[arg(long, env = "STOCKD_API_KEY", default_value = "", hide_env_values = true, global = true)]
    pub api_key: String,
    /// For an `https://` address: also trust the certificates in this PEM file (the server's
    /// own self-signed certificate or its CA).
    #[arg(long, env = "STOCKD_TLS_CA", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,
}

impl HttpTarget {
    /// A request to `path` (which starts with `/`), with the key if one was given.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        let base = match self.http.contains("://") {
            true => self.http.trim_end_matches('/').to_string(),
            false => format!("http://{}", self.http),
        };
        let mut client = reqwest::Client::builder();
        if let Some(ca) = &self.tls_ca {
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read certificates from {}", ca.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} holds no usable PEM certificate", ca.display()))?;
            anyhow::ensure!(!certificates.is_empty(), "{} holds no PEM certificate", ca.display());
            for certificate in certificates {
                client = client.add_root_certificate(certificate);
            }
        }
        let request = client.build()?.request(method, format!("{base}{path}"));
        Ok(match self.api_key.is_empty() {
            true => request,
            false => request.bearer_auth(&self.api_key),
        })
    }

    /// One JSON API call; a refusal is printed (code and message) and becomes `Err(code)`.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Result<Value, ResultCode>> {
        let mut request = self.request(method, path)?;
        if let Some(body) = body {
            request = request.json(&body);
        }
        let http = &self.http;
        let response = request.send().await.with_context(|| format!("cannot reach {http}"))?;
        let status = response.status();
        let body: Value = response.json().await.context("the reply is not JSON")?;
        if status.is_success() {
            return Ok(Ok(body));
        }
        let code = body["code"].as_str().unwrap_or("error");
        println!("{code}: {}", body["message"].as_str().unwrap_or(""));
        // Refusals exit with 3 like refused protocol operations; keys refusals keep their code.
        Ok(Err(match code {
            "unauthorized" => ResultCode::Unauthorized,
            "forbidden" => ResultCode::Forbidden,
            _ => ResultCode::InvalidArgument,
        }))
    }
}
