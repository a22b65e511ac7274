//! The daemon's settings: one typed tree, layered defaults < file < `BACKFILLD__*` env < flags,
//! validated once at start-up so a bad value is an error naming its key.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

mod databases;
pub use databases::{select, DatabaseConfig, TargetDatabase, DEFAULT_DATABASE};
mod notify;
pub use notify::{redact, NotifyConfig, NotifyTarget, NOTIFY_EVENTS};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Load(String),
    #[error("config: {key}: {message}")]
    Invalid { key: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// `text` or `json`; anything else is an error naming the key and the choices.
    pub fn parse(value: &str) -> Result<LogFormat, ConfigError> {
        match value {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(ConfigError::Invalid {
                key: "log_format".into(),
                message: format!("{other:?} is not a log format: use text or json"),
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Operate,
    Admin,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_env: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database_url: Option<String>,
    pub listen: String,
    /// Partitions this process runs at once.
    pub workers: usize,
    pub jobs_dir: PathBuf,
    /// The schema holding the daemon's own tables.
    pub schema: String,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    pub log_format: LogFormat,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// The API's certificate chain (PEM): with `tls_key`, the API is served over HTTPS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// How the database is reached: `session` (directly, or a pooler's session mode) or
    /// `transaction` (PgBouncer's transaction mode and the like).
    #[serde(default)]
    pub pool_mode: crate::plumbing::pool::PoolMode,
    /// The most database connections this process opens (default: workers + 4); see
    /// `plumbing::pool::Budget` for how they are spent.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Where job events are POSTed as JSON (`[[notify]]`).
    #[serde(default)]
    pub notify: Vec<NotifyConfig>,
    /// Target databases besides `database_url` (`[[databases]]`, `config/databases.rs`).
    #[serde(default)]
    pub databases: Vec<DatabaseConfig>,
    /// The file these settings were read from, if any.
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
}

/// Values given on the command line; `None` leaves the lower layers in force.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub database_url: Option<String>,
    pub listen: Option<String>,
    pub jobs_dir: Option<PathBuf>,
    pub log_format: Option<String>,
}

impl Settings {
    pub fn load(overrides: &Overrides) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder()
            .set_default("listen", "127.0.0.1:9780")
            .and_then(|b| b.set_default("workers", 4))
            .and_then(|b| b.set_default("jobs_dir", "jobs"))
            .and_then(|b| b.set_default("schema", "backfilld"))
            .and_then(|b| b.set_default("shutdown_timeout", "30s"))
            .and_then(|b| b.set_default("lease_ttl", "30s"))
            .and_then(|b| b.set_default("log_format", "text"))
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        // $DATABASE_URL is the conventional fallback; anything more explicit wins over it.
        if let Ok(url) = std::env::var("DATABASE_URL") {
            if !url.is_empty() {
                builder = builder
                    .set_default("database_url", url)
                    .map_err(|e| ConfigError::Load(e.to_string()))?;
            }
        }
        let file = overrides
            .config_file
            .clone()
            .or_else(|| std::env::var_os("BACKFILLD_CONFIG").map(PathBuf::from));
        if let Some(file) = &file {
            if !file.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            builder = builder
                .add_source(config::File::from(file.as_path()).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("BACKFILLD")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let overrides_list = [
            ("database_url", overrides.database_url.clone()),
            ("listen", overrides.listen.clone()),
            (
                "jobs_dir",
                overrides.jobs_dir.as_ref().map(|p| p.display().to_string()),
            ),
            ("log_format", overrides.log_format.clone()),
        ];
        for (key, value) in overrides_list {
            if let Some(value) = value {
                builder = builder
                    .set_override(key, value)
                    .map_err(|e| ConfigError::Load(e.to_string()))?;
            }
        }
        let origin = file
            .as_deref()
            .map(Path::display)
            .map(|d| d.to_string())
            .unwrap_or_else(|| "defaults and environment".into());
        let built = builder
            .build()
            .map_err(|e| ConfigError::Load(format!("{origin}: {e}")))?;
        // Said before deserializing, which would name the Rust enum rather than the choices.
        if let Ok(format) = built.get_string("log_format") {
            LogFormat::parse(&format)?;
        }
        let mut settings: Settings = built
            .try_deserialize()
            .map_err(|e| ConfigError::Load(format!("{origin}: {e}")))?;
        settings.validate()?;
        settings.config_file = file;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.to_string(),
            message: message.to_string(),
        };
        if self.workers == 0 || self.workers > 1024 {
            return Err(invalid("workers", "must be between 1 and 1024"));
        }
        if self.schema.is_empty() || self.schema.len() > 63 {
            return Err(invalid("schema", "must be 1 to 63 characters"));
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(invalid("lease_ttl", "must be at least 1s"));
        }
        self.listen_address()?;
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(invalid(
                    "tls_key",
                    "tls_cert is set: give its private key too",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "tls_cert",
                    "tls_key is set: give its certificate too",
                ))
            }
            _ => {}
        }
        for (i, token) in self.tokens.iter().enumerate() {
            let key = format!("tokens[{i}]");
            if token.name.is_empty() {
                return Err(invalid(&key, "name is empty"));
            }
            match (&token.token, &token.token_env) {
                (Some(_), Some(_)) => {
                    return Err(invalid(&key, "give either token or token_env, not both"))
                }
                (None, None) => return Err(invalid(&key, "token or token_env is required")),
                (Some(t), None) if t.len() < 8 => {
                    return Err(invalid(&key, "token must be at least 8 characters"))
                }
                _ => {}
            }
        }
        self.notify_targets()?;
        self.target_databases()?;
        Ok(())
    }

    /// Inline tokens are secrets: a config file holding them should not be readable by every
    /// user of the machine (`token_env` keeps them out of files altogether). Called once
    /// logging is set up.
    pub fn warn_if_tokens_readable(&self) {
        use std::os::unix::fs::PermissionsExt;
        let Some(file) = &self.config_file else {
            return;
        };
        let inline = self.tokens.iter().any(|t| t.token.is_some());
        let mode = std::fs::metadata(file).map(|m| m.permissions().mode());
        if let (true, Ok(mode)) = (inline, mode) {
            if mode & 0o004 != 0 {
                tracing::warn!(
                    file = %file.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "the config file holds API tokens and is readable by others; chmod 600 it, or use token_env"
                );
            }
        }
    }

    /// The API's TLS configuration when `tls_cert` and `tls_key` are set, read from their files
    /// now: an unreadable file or a key that is not the certificate's is an error naming its
    /// key. Only the commands that serve the API call this, so a client command sharing the
    /// daemon's config file needs no access to its key.
    pub fn server_tls(&self) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        crate::plumbing::tls::server_config(cert, key)
            .map(Some)
            .map_err(|e| ConfigError::Invalid {
                key: e.key.to_string(),
                message: e.message,
            })
    }

    /// How this process spends its connections; `serves_api` for `serve` and `run --listen`.
    pub fn budget(&self, serves_api: bool) -> Result<crate::plumbing::pool::Budget, String> {
        crate::plumbing::pool::Budget::plan(
            self.max_connections,
            self.workers as u32,
            self.pool_mode,
            serves_api,
        )
    }

    /// The address `listen` names: an IP address and port, or a host name and port
    /// (`localhost:9780`), resolved now so a name that does not resolve is an error at start-up.
    pub fn listen_address(&self) -> Result<std::net::SocketAddr, ConfigError> {
        use std::net::ToSocketAddrs;
        let invalid = |message: String| ConfigError::Invalid {
            key: "listen".into(),
            message,
        };
        if let Ok(address) = self.listen.parse() {
            return Ok(address);
        }
        if self
            .listen
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(invalid(format!(
                "{:?} is not a host and port: write it as 127.0.0.1:9780 or localhost:9780",
                self.listen
            )));
        }
        let mut found = self
            .listen
            .to_socket_addrs()
            .map_err(|e| invalid(format!("cannot resolve {:?}: {e}", self.listen)))?;
        // IPv4 first: `localhost` is 127.0.0.1 for most clients, whatever the resolver's order.
        let all: Vec<_> = found.by_ref().collect();
        all.iter()
            .find(|a| a.is_ipv4())
            .or(all.first())
            .copied()
            .ok_or_else(|| invalid(format!("{:?} resolves to no address", self.listen)))
    }

    /// The database URL, or an error saying how to give one.
    pub fn require_database_url(&self) -> Result<&str, ConfigError> {
        self.database_url
            .as_deref()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| ConfigError::Invalid {
                key: "database_url".into(),
                message: "no database given: pass --database-url, set DATABASE_URL, or set database_url in the config file".into(),
            })
    }
}

/// Loads `toml` as a config file of its own (tests run in parallel) over `overrides`.
#[cfg(test)]
pub(crate) fn load_test_config(toml: &str, overrides: Overrides) -> Result<Settings, ConfigError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static FILES: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!("backfilld-cfg-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}.toml", FILES.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&file, toml).unwrap();
    Settings::load(&Overrides {
        config_file: Some(file),
        ..overrides
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("backfilld-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "workers = 7\nlisten = \"127.0.0.1:1\"\n").unwrap();
        let settings = Settings::load(&Overrides {
            config_file: Some(file.clone()),
            listen: Some("127.0.0.1:2".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(settings.workers, 7);
        assert_eq!(settings.listen, "127.0.0.1:2");
        assert_eq!(settings.schema, "backfilld");

        std::fs::write(&file, "workers = 0\n").unwrap();
        let err = Settings::load(&Overrides {
            config_file: Some(file),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("workers"), "{err}");
    }

    #[test]
    fn a_tls_certificate_needs_its_key() {
        let load = |toml: &str| load_test_config(toml, Overrides::default());
        let err = load("tls_cert = \"/etc/backfilld/cert.pem\"\n").unwrap_err();
        assert!(err.to_string().starts_with("config: tls_key:"), "{err}");
        let settings =
            load("tls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n").unwrap();
        let err = settings.server_tls().unwrap_err().to_string();
        assert!(err.starts_with("config: tls_cert: cannot read"), "{err}");
        assert!(load("").unwrap().server_tls().unwrap().is_none());
    }
}
