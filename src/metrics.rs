//! The run's results as Prometheus metrics, pushed to a Pushgateway at the end of every
//! `apply` and `verify`, failed runs included. Encoded with prometheus-client.
//!
//! Grouping key: `job="promigrate"`, `migration="<metadata.name>"`, `command="apply|verify"`.
//! The command is part of the key because the Pushgateway replaces metrics by name within a
//! group: with it, an apply's push never overwrites the last verify's numbers. Every push is a
//! POST, which replaces only the metrics it carries: a failed run does not carry
//! `promigrate_last_success_timestamp_seconds`, so the last success's time survives it.
//!
//! An `https://` gateway is verified against the system trust store, or against
//! `report.pushgateway.caFile` alone when it is set. Credentials (basic auth or a bearer
//! token) are read from files when the plan is loaded and live in a [`Secret`], which prints as
//! `<redacted>` and is never serialised; ureq logs headers only from an allow-list.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use base64::Engine;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What one run reports.
#[derive(Debug, Clone, Default)]
pub struct RunMetrics {
    /// `apply` or `verify`.
    pub command: &'static str,
    /// The run succeeded (exit 0).
    pub success: bool,
    /// Its exit code.
    pub exit_code: u8,
    /// Bytes copied (apply).
    pub copied_bytes: u64,
    /// Files copied (apply).
    pub copied_files: u64,
    /// Wall time.
    pub duration_seconds: f64,
    /// Differences found by verify (or by apply's verify before the Kubernetes steps).
    pub verify_differences: Option<u64>,
    /// When it finished (Unix seconds).
    pub finished_unix: f64,
}

/// The metrics in the text exposition format.
pub fn encode_text(m: &RunMetrics) -> String {
    let mut reg = Registry::default();
    let mut gauge = |name: &str, help: &str, v: f64| {
        let g: Gauge<f64, AtomicU64> = Gauge::default();
        g.set(v);
        reg.register(name, help, g);
    };
    gauge(
        "promigrate_last_run_success",
        "1 if the last run of this command succeeded, else 0.",
        if m.success { 1.0 } else { 0.0 },
    );
    gauge(
        "promigrate_last_run_timestamp_seconds",
        "When the last run of this command finished (Unix time).",
        m.finished_unix,
    );
    gauge(
        "promigrate_last_run_exit_code",
        "Exit code of the last run (0 ok, 1 findings, 2 invalid input, 3 failure).",
        f64::from(m.exit_code),
    );
    if m.success {
        gauge(
            "promigrate_last_success_timestamp_seconds",
            "When the last successful run of this command finished (Unix time).",
            m.finished_unix,
        );
    }
    gauge(
        "promigrate_copied_bytes",
        "Bytes copied by the last run.",
        m.copied_bytes as f64,
    );
    gauge(
        "promigrate_copied_files",
        "Files copied by the last run.",
        m.copied_files as f64,
    );
    gauge(
        "promigrate_run_duration_seconds",
        "Wall time of the last run.",
        m.duration_seconds,
    );
    if let Some(d) = m.verify_differences {
        gauge(
            "promigrate_verify_differences",
            "Differences between source and target found by the last verify.",
            d as f64,
        );
    }
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}

/// The Pushgateway URL of this migration's group for `command`.
pub fn group_url(base: &str, migration: &str, command: &str) -> String {
    format!(
        "{}/metrics/job/promigrate/migration/{migration}/command/{command}",
        base.trim_end_matches('/')
    )
}

/// Where and how to push: `report.pushgateway` resolved, or a bare `--pushgateway URL`.
#[derive(Debug, Clone)]
pub struct Pushgateway {
    /// Base URL, `http://` or `https://`.
    pub url: String,
    /// The CAs an `https://` gateway's certificate must chain to (`caFile`); the system trust
    /// store when `None`.
    pub ca: Option<CaFile>,
    /// Credentials sent with every push.
    pub auth: Option<Auth>,
}

/// `report.pushgateway.caFile`: where it is, and the certificates it holds.
#[derive(Debug, Clone)]
pub struct CaFile {
    /// The PEM file (resolved), for messages.
    pub path: PathBuf,
    /// Its certificates: the only roots trusted.
    pub roots: ureq::tls::RootCerts,
}

/// Credentials for the Pushgateway.
#[derive(Debug, Clone)]
pub enum Auth {
    /// HTTP basic auth (`report.pushgateway.basicAuth`).
    Basic {
        /// User name.
        username: String,
        /// Password, from `passwordFile`.
        password: Secret,
    },
    /// `Authorization: Bearer` (`report.pushgateway.bearerTokenFile`).
    Bearer(Secret),
}

/// A password or token. Its `Debug` says `<redacted>`; it has no `Display` nor `Serialize`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret read from a file.
    pub fn new(s: String) -> Secret {
        Secret(s)
    }

    /// The secret itself, for the request header (and tests) only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Pushgateway {
    /// A gateway with no TLS or auth settings of its own (`--pushgateway URL` alone).
    pub fn new(url: &str) -> Pushgateway {
        Pushgateway {
            url: url.to_string(),
            ca: None,
            auth: None,
        }
    }

    /// The `Authorization` header's value, marked sensitive, if there are credentials.
    fn authorization(&self) -> Result<Option<ureq::http::HeaderValue>, String> {
        let text = match &self.auth {
            None => return Ok(None),
            Some(Auth::Basic { username, password }) => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{}", password.expose()))
            ),
            Some(Auth::Bearer(token)) => format!("Bearer {}", token.expose()),
        };
        let mut v = ureq::http::HeaderValue::from_str(&text).map_err(|_| {
            "the credentials hold characters an HTTP header cannot carry".to_string()
        })?;
        v.set_sensitive(true);
        Ok(Some(v))
    }
}

/// Pushes (POST) the run's metrics. A Pushgateway that is down, refuses the connection's TLS
/// or the credentials, or answers with an error is reported as a warning: it never fails the
/// migration.
pub fn push_or_warn(gw: &Pushgateway, migration: &str, m: &RunMetrics) {
    let base = &gw.url;
    match push(gw, migration, m) {
        Ok(()) => tracing::info!(
            "pushed {} metrics to {}",
            m.command,
            group_url(base, migration, m.command)
        ),
        Err(e) => tracing::warn!(
            "could not push metrics to the Pushgateway at {base}: {e}; the run itself is not affected"
        ),
    }
}

fn push(gw: &Pushgateway, migration: &str, m: &RunMetrics) -> Result<(), String> {
    let roots = gw
        .ca
        .as_ref()
        .map_or(ureq::tls::RootCerts::PlatformVerifier, |c| c.roots.clone());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(true)
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
        .build()
        .into();
    let mut req = agent
        .post(&group_url(&gw.url, migration, m.command))
        .content_type("text/plain; version=0.0.4");
    if let Some(v) = gw.authorization()? {
        // A password or token never goes out in clear text (e.g. to a --pushgateway
        // http:// override of a plan whose gateway is https).
        if !gw
            .url
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("https://")
        {
            return Err(format!(
                "not sending the credentials of report.pushgateway over plain http to {}: use an https:// URL",
                gw.url
            ));
        }
        req = req.header(ureq::http::header::AUTHORIZATION, v);
    }
    req.send(encode_text(m))
        .map(|_| ())
        .map_err(|e| describe(&e, gw))
}

/// The error, with what to do when the gateway refused the credentials, or when its
/// certificate chains to no trusted CA (rustls says `UnknownIssuer`; its other certificate
/// errors say what is wrong already).
fn describe(e: &ureq::Error, gw: &Pushgateway) -> String {
    let text = e.to_string();
    if let ureq::Error::StatusCode(401 | 403) = e {
        return match gw.auth {
            None => format!(
                "{text}: the gateway wants credentials: set report.pushgateway.basicAuth or bearerTokenFile"
            ),
            Some(_) => format!(
                "{text}: the gateway refused the credentials of report.pushgateway.basicAuth or bearerTokenFile"
            ),
        };
    }
    if !text.contains("UnknownIssuer") {
        return text;
    }
    match &gw.ca {
        None => format!(
            "{text}: the system trust store does not trust the gateway's certificate; if a private CA signed it, set report.pushgateway.caFile to that CA's PEM file"
        ),
        Some(c) => format!(
            "{text}: the gateway's certificate does not chain to a CA in {} (report.pushgateway.caFile)",
            c.path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_in_a_sensitive_header_and_nowhere_else() {
        let mut gw = Pushgateway::new("https://gw:443");
        assert!(gw.authorization().unwrap().is_none());
        gw.auth = Some(Auth::Basic {
            username: "promigrate".into(),
            password: Secret::new("s3cret".into()),
        });
        let v = gw.authorization().unwrap().unwrap();
        // base64("promigrate:s3cret")
        assert_eq!(v.to_str().unwrap(), "Basic cHJvbWlncmF0ZTpzM2NyZXQ=");
        assert!(v.is_sensitive());
        assert!(!format!("{gw:?}").contains("s3cret"), "{gw:?}");
        gw.auth = Some(Auth::Bearer(Secret::new("tok-123".into())));
        assert_eq!(
            gw.authorization().unwrap().unwrap().to_str().unwrap(),
            "Bearer tok-123"
        );
        assert!(!format!("{gw:?}").contains("tok-123"), "{gw:?}");
    }

    /// Credentials are never sent in clear text: a push with them to an http:// URL (e.g. a
    /// --pushgateway override) is refused before any connection.
    #[test]
    fn credentials_are_not_sent_over_plain_http() {
        // A listener that records whether anything connected.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let mut gw = Pushgateway::new(&format!("http://{}", l.local_addr().unwrap()));
        gw.auth = Some(Auth::Bearer(Secret::new("tok-123".into())));
        let e = push(&gw, "m", &RunMetrics::default()).unwrap_err();
        assert!(e.contains("plain http"), "{e}");
        assert!(!e.contains("tok-123"), "{e}");
        assert!(l.accept().is_err(), "something connected");
    }

    #[test]
    fn failure_does_not_carry_the_success_timestamp() {
        let mut m = RunMetrics {
            command: "apply",
            success: true,
            copied_bytes: 1234,
            finished_unix: 1.7e9,
            ..Default::default()
        };
        let ok = encode_text(&m);
        assert!(
            ok.contains("promigrate_last_success_timestamp_seconds 1700000000"),
            "{ok}"
        );
        assert!(ok.contains("promigrate_copied_bytes 1234"), "{ok}");
        m.success = false;
        let failed = encode_text(&m);
        assert!(
            !failed.contains("promigrate_last_success_timestamp_seconds"),
            "{failed}"
        );
        assert!(failed.contains("promigrate_last_run_success 0"), "{failed}");
    }
}
