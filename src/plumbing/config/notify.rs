//! `[[notify]]`: the webhooks the daemon posts events to, checked at start-up; a URL (which may
//! hold a secret) is never shown, only `scheme://host[:port]`.

use serde::Deserialize;

use super::{ConfigError, Settings};

/// One `[[notify]]` entry: a webhook that receives a JSON POST for each event of these kinds.
/// `url` (or `url_env`, for a URL that holds a secret) and `events`, each one of
/// [`NOTIFY_EVENTS`]; all of them when absent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub url_env: Option<String>,
    #[serde(default)]
    pub events: Option<Vec<String>>,
}

/// The event kinds a `[[notify]]` entry may ask for: the event log's kinds of the same names.
pub const NOTIFY_EVENTS: [&str; 5] = ["completed", "failed", "paused", "cancelled", "throttled"];

/// A `[[notify]]` entry, checked: its URL (resolved from `url_env` at start-up) and kinds.
#[derive(Clone, PartialEq, Eq)]
pub struct NotifyTarget {
    pub url: url::Url,
    pub events: Vec<String>,
}

impl NotifyTarget {
    /// The URL as logs and metric labels may show it: `scheme://host[:port]`, without the
    /// credentials a webhook URL carries in its user info, path (Slack's secret) or query.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }
}

impl std::fmt::Debug for NotifyTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyTarget")
            .field("url", &self.redacted())
            .field("events", &self.events)
            .finish()
    }
}

/// `scheme://host[:port]` of `url`: all of it that is safe to log.
pub fn redact(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

impl Settings {
    /// The `[[notify]]` entries, checked, with `url_env` read from the environment: a bad
    /// entry is an error naming its key (and never showing the URL, which may hold a secret).
    pub fn notify_targets(&self) -> Result<Vec<NotifyTarget>, ConfigError> {
        let mut targets = Vec::new();
        for (i, entry) in self.notify.iter().enumerate() {
            let invalid = |field: &str, message: String| ConfigError::Invalid {
                key: format!("notify[{i}].{field}"),
                message,
            };
            let (text, field) = match (&entry.url, &entry.url_env) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "url",
                        "give either url or url_env, not both".into(),
                    ))
                }
                (None, None) => return Err(invalid("url", "url or url_env is required".into())),
                (Some(url), None) => (url.clone(), "url"),
                (None, Some(var)) => (
                    std::env::var(var)
                        .map_err(|_| invalid("url_env", format!("${var} is not set")))?,
                    "url_env",
                ),
            };
            // The parser's message never repeats the URL, so it may be shown.
            let url =
                url::Url::parse(&text).map_err(|e| invalid(field, format!("not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(invalid(
                    field,
                    "must be an http:// or https:// URL with a host".into(),
                ));
            }
            let events = match &entry.events {
                None => NOTIFY_EVENTS.iter().map(|e| e.to_string()).collect(),
                Some(events) if events.is_empty() => {
                    return Err(invalid(
                        "events",
                        format!("is empty; leave it out for all of {NOTIFY_EVENTS:?}"),
                    ))
                }
                Some(events) => events.clone(),
            };
            if let Some(unknown) = events.iter().find(|e| !NOTIFY_EVENTS.contains(&e.as_str())) {
                return Err(invalid(
                    "events",
                    format!(
                        "{:?} is not an event; use any of {NOTIFY_EVENTS:?}",
                        crate::spec::shorten(unknown)
                    ),
                ));
            }
            targets.push(NotifyTarget { url, events });
        }
        Ok(targets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plumbing::config::{load_test_config, Overrides};

    #[test]
    fn notify_entries_are_checked_and_name_their_key() {
        let load = |toml: &str| load_test_config(toml, Overrides::default());
        let secret = "https://user:pw@hooks.example:8443/services/T0/B0/SECRET?token=abc";
        let ok = load(&format!(
            "[[notify]]\nurl = \"{secret}\"\nevents = [\"failed\", \"completed\"]\n[[notify]]\nurl = \"http://127.0.0.1:9/hook\"\n"
        ))
        .unwrap();
        let targets = ok.notify_targets().unwrap();
        assert_eq!(targets[0].events, ["failed", "completed"]);
        assert_eq!(targets[1].events.len(), NOTIFY_EVENTS.len());
        assert_eq!(targets[0].redacted(), "https://hooks.example:8443");
        assert!(!format!("{:?}", targets[0]).contains("SECRET"));
        for (toml, key) in [
            (
                "[[notify]]\nurl = \"http://h/x\"\nevents = [\"done\"]\n",
                "notify[0].events",
            ),
            (
                "[[notify]]\nurl = \"http://h/x\"\nevents = []\n",
                "notify[0].events",
            ),
            ("[[notify]]\nurl = \"ftp://h/x\"\n", "notify[0].url"),
            ("[[notify]]\nurl = \"not a url\"\n", "notify[0].url"),
            ("[[notify]]\nevents = [\"failed\"]\n", "notify[0].url"),
            (
                "[[notify]]\nurl_env = \"BACKFILLD_TEST_UNSET_HOOK\"\n",
                "notify[0].url_env",
            ),
        ] {
            let err = load(toml).unwrap_err().to_string();
            assert!(err.starts_with(&format!("config: {key}:")), "{toml}: {err}");
        }
        let err = load("[[notify]]\nurl = \"http://h/x\"\nsecret = 1\n").unwrap_err();
        assert!(err.to_string().contains("secret"), "{err}");
    }
}
