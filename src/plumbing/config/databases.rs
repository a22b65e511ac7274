//! `[[databases]]`: the target databases a job may name besides the daemon's own
//! `database_url` (README, "Several databases"), and how a job's `databases` patterns select
//! among them.

use serde::Deserialize;

use super::{ConfigError, Settings};

/// The name the daemon's own `database_url` goes by as a target: where a job without
/// `databases` runs, so single-database use is what it always was.
pub const DEFAULT_DATABASE: &str = "default";

/// One `[[databases]]` entry as written: `name`, and `url` or `url_env` (for a URL that holds
/// a password).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub name: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub url_env: Option<String>,
}

/// A target database, checked: its name and URL (read from `url_env` at start-up).
#[derive(Clone, PartialEq, Eq)]
pub struct TargetDatabase {
    pub name: String,
    pub url: String,
}

impl std::fmt::Debug for TargetDatabase {
    // The URL may carry a password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetDatabase")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Every target database: `default` (the daemon's own `database_url`, when set) first,
    /// then the `[[databases]]` entries in their order. A bad entry is an error naming its key;
    /// the URL itself is never shown.
    pub fn target_databases(&self) -> Result<Vec<TargetDatabase>, ConfigError> {
        let mut targets = Vec::new();
        if let Some(url) = &self.database_url {
            targets.push(TargetDatabase {
                name: DEFAULT_DATABASE.into(),
                url: url.clone(),
            });
        }
        for (i, entry) in self.databases.iter().enumerate() {
            let invalid = |field: &str, message: String| ConfigError::Invalid {
                key: format!("databases[{i}].{field}"),
                message,
            };
            if !crate::spec::is_valid_name(&entry.name) {
                return Err(invalid(
                    "name",
                    format!(
                        "{:?} is not a valid database name: use 1 to 63 characters from a-z, 0-9, '_' and '-', starting with a letter or digit",
                        crate::spec::shorten(&entry.name)
                    ),
                ));
            }
            if entry.name == DEFAULT_DATABASE {
                return Err(invalid(
                    "name",
                    format!("{DEFAULT_DATABASE:?} is the daemon's own database_url; choose another name"),
                ));
            }
            if let Some(first) = self.databases[..i]
                .iter()
                .position(|other| other.name == entry.name)
            {
                return Err(invalid(
                    "name",
                    format!(
                        "{:?} is defined twice (also databases[{first}]); names must be unique",
                        entry.name
                    ),
                ));
            }
            let url = match (&entry.url, &entry.url_env) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "url",
                        "give either url or url_env, not both".into(),
                    ))
                }
                (None, None) => return Err(invalid("url", "url or url_env is required".into())),
                (Some(url), None) => url.clone(),
                (None, Some(var)) => std::env::var(var)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| invalid("url_env", format!("${var} is not set")))?,
            };
            let field = if entry.url.is_some() {
                "url"
            } else {
                "url_env"
            };
            // The parser's message never repeats the URL; `connect_options` (its TLS files) shows
            // it with the password redacted, which needs a URL to redact.
            url::Url::parse(&url).map_err(|e| invalid(field, format!("not a URL: {e}")))?;
            crate::plumbing::db::connect_options(&url)
                .map_err(|e| invalid(field, e.to_string()))?;
            targets.push(TargetDatabase {
                name: entry.name.clone(),
                url,
            });
        }
        Ok(targets)
    }
}

/// The names among `known` that a job's `databases` patterns select, in `known`'s order: each
/// pattern a name or a glob (`*` any run of characters, `?` one). An empty list selects
/// `default`. A pattern that selects nothing is an error naming it and the known names.
pub fn select(patterns: &[String], known: &[&str]) -> Result<Vec<String>, String> {
    if patterns.is_empty() {
        return if known.contains(&DEFAULT_DATABASE) {
            Ok(vec![DEFAULT_DATABASE.to_string()])
        } else {
            Err("the job names no databases and the daemon has no database_url".into())
        };
    }
    for pattern in patterns {
        if !known.iter().any(|name| glob_matches(pattern, name)) {
            return Err(format!(
                "{pattern:?} matches no configured database (known: {})",
                known.join(", ")
            ));
        }
    }
    Ok(known
        .iter()
        .filter(|name| patterns.iter().any(|p| glob_matches(p, name)))
        .map(|name| name.to_string())
        .collect())
}

/// Shell-style matching of a whole name: `*` is any run of characters, `?` any one.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // The classic two-pointer walk: on a mismatch, let the last `*` swallow one more character.
    let (mut pi, mut ni, mut star, mut resume) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            resume = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            resume += 1;
            ni = resume;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_select_in_configured_order_and_name_what_matches_nothing() {
        let known = ["default", "shard-01", "shard-02", "eu"];
        let pick =
            |p: &[&str]| select(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &known);
        assert_eq!(pick(&[]).unwrap(), ["default"]);
        assert_eq!(pick(&["shard-*"]).unwrap(), ["shard-01", "shard-02"]);
        assert_eq!(
            pick(&["eu", "shard-0?"]).unwrap(),
            ["shard-01", "shard-02", "eu"]
        );
        assert_eq!(pick(&["*"]).unwrap().len(), 4);
        let err = pick(&["shard-*", "us-*"]).unwrap_err();
        assert!(
            err.contains("\"us-*\" matches no configured database"),
            "{err}"
        );
        assert!(!glob_matches("shard", "shard-01"));
        assert!(glob_matches("*-01", "shard-01"));
        assert!(select(&[], &["a"]).is_err());
    }
}

#[cfg(test)]
mod config_tests {
    use super::super::Overrides;
    use super::*;

    fn load(text: &str) -> Result<Settings, ConfigError> {
        super::super::load_test_config(
            text,
            Overrides {
                database_url: Some("postgres://h/home".into()),
                ..Default::default()
            },
        )
    }

    #[test]
    fn entries_are_checked_and_name_their_key() {
        std::env::set_var("BACKFILLD_TEST_SHARD_URL", "postgres://s2/db");
        let ok = load(
            "[[databases]]\nname = \"s1\"\nurl = \"postgres://s1/db\"\n[[databases]]\nname = \"s2\"\nurl_env = \"BACKFILLD_TEST_SHARD_URL\"\n",
        )
        .unwrap();
        let targets = ok.target_databases().unwrap();
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["default", "s1", "s2"]);
        assert_eq!(targets[2].url, "postgres://s2/db");
        for (text, key, words) in [
            (
                "[[databases]]\nname = \"a\"\nurl = \"postgres://x/a\"\n[[databases]]\nname = \"a\"\nurl = \"postgres://y/a\"\n",
                "databases[1].name",
                "defined twice",
            ),
            ("[[databases]]\nname = \"default\"\nurl = \"postgres://x/a\"\n", "databases[0].name", "database_url"),
            ("[[databases]]\nname = \"Bad Name\"\nurl = \"postgres://x/a\"\n", "databases[0].name", "not a valid"),
            ("[[databases]]\nname = \"a\"\n", "databases[0].url", "required"),
            ("[[databases]]\nname = \"a\"\nurl = \"postgres://x/a\"\nurl_env = \"X\"\n", "databases[0].url", "not both"),
            ("[[databases]]\nname = \"a\"\nurl_env = \"BACKFILLD_TEST_UNSET_SHARD\"\n", "databases[0].url_env", "is not set"),
            ("[[databases]]\nname = \"a\"\nurl = \"secret-password@nowhere\"\n", "databases[0].url", "not a URL"),
        ] {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(words), "{text}: {err}");
            assert!(!err.contains("secret-password"), "{err}");
        }
        let err =
            load("[[databases]]\nname = \"a\"\nurl = \"postgres://x/a\"\nport = 1\n").unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }
}
