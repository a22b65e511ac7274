//! The client commands: `submit`, `status`, `pause`, `resume`, `cancel`, `events`, `tune`, `delete`,
//! speaking HTTP to a running daemon found from the flags, the environment or the config
//! file. Exit codes: 0 done, 1 the daemon refused (its message is printed), 2 the daemon could
//! not be reached (its certificate did not verify, say) or the input is invalid.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::commands::api_client::{Client, ClientError};
use crate::commands::error::CliError;
use crate::plumbing::config::{Role, Settings};
use crate::spec::{DutyCycle, JobSpec};
use crate::status::text;
use crate::status::view::JobView;

/// Where the client commands find the daemon: flags, then the environment, then the config
/// file (`--config` or $BACKFILLD_CONFIG: its `listen` and a token of the role the command needs).
#[derive(Debug, clap::Args)]
pub struct Remote {
    /// The daemon's URL, with its scheme (http:// or https://) [default: from the config
    /// file's listen and tls_cert, else http://127.0.0.1:9780].
    #[arg(long, env = "BACKFILLD_URL", value_name = "URL")]
    pub url: Option<String>,
    /// Bearer token [default: the config file's first token with the role the command needs].
    #[arg(
        long,
        env = "BACKFILLD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// A PEM file of certificate authorities to trust for an https:// URL, besides the
    /// system's: the private CA that signed the daemon's certificate.
    #[arg(long, env = "BACKFILLD_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
}

/// The client for a command needing `role`: `--url`/`$BACKFILLD_URL`, else the daemon the
/// config's `listen` (and `tls_cert`) describe; `--token`/`$BACKFILLD_TOKEN`, else the
/// config's first token with at least `role` whose value is at hand.
pub fn client(remote: &Remote, settings: &Settings, role: Role) -> Result<Client, CliError> {
    let url = match &remote.url {
        Some(url) => url.clone(),
        None => url_of(settings)?,
    };
    let token = remote.token.clone().or_else(|| {
        let at_hand: Vec<(Role, String)> = settings
            .tokens
            .iter()
            .filter_map(|t| match (&t.token, &t.token_env) {
                (Some(token), _) => Some((t.role, token.clone())),
                (None, Some(var)) => std::env::var(var)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .map(|v| (t.role, v)),
                (None, None) => None,
            })
            .collect();
        // Without a token strong enough, the strongest one: the daemon's 403 then names the
        // role the command needs, which says more than a 401.
        let chosen = at_hand
            .iter()
            .find(|(r, _)| *r >= role)
            .or_else(|| at_hand.iter().max_by_key(|(r, _)| *r));
        chosen.map(|(_, token)| token.clone())
    });
    Client::new(&url, token, remote.cacert.as_deref()).map_err(CliError::invalid)
}

/// The URL a client reaches the daemon at, from where it listens: a wildcard address is
/// reached on loopback, and a host name as it is written.
fn url_of(settings: &Settings) -> Result<String, CliError> {
    let scheme = if settings.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let host = match settings.listen.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        Ok(SocketAddr::V6(a)) if a.ip().is_unspecified() => format!("[::1]:{}", a.port()),
        Ok(address) => address.to_string(),
        Err(_) => {
            settings.listen_address().map_err(CliError::invalid)?;
            settings.listen.clone()
        }
    };
    Ok(format!("{scheme}://{host}"))
}

pub(crate) fn failed(error: ClientError) -> Result<i32, CliError> {
    match error {
        ClientError::Unreachable { .. } | ClientError::Tls { .. } | ClientError::Config(_) => {
            Err(CliError::invalid(error))
        }
        other => {
            eprintln!("error: {other}");
            Ok(1)
        }
    }
}

pub async fn submit(client: &Client, path: &Path, replace: bool) -> Result<i32, CliError> {
    // Parse locally first so a typo is reported with the file name, before any request.
    JobSpec::from_file(path).map_err(CliError::invalid)?;
    let toml = std::fs::read_to_string(path)
        .map_err(|e| CliError::invalid(format!("cannot read {}: {e}", path.display())))?;
    match client.submit_toml(toml, replace).await {
        Ok(job) if replace => {
            println!(
                "{}: {} with the new definition, from its checkpoint ({} rows scanned); follow it with `backfilld status {}`",
                job.name,
                job.state.as_str(),
                job.rows_scanned,
                job.name
            );
            Ok(0)
        }
        Ok(job) => {
            println!(
                "submitted {} ({} partition(s)); follow it with `backfilld status {}`",
                job.name,
                job.partitions.len(),
                job.name
            );
            Ok(0)
        }
        Err(e) => failed(e),
    }
}

/// One job (`name`) or all of them.
pub async fn fetch(client: &Client, name: Option<&str>) -> Result<Vec<JobView>, ClientError> {
    match name {
        Some(name) => client.job(name).await.map(|j| vec![j]),
        None => client.jobs().await.map(|l| l.jobs),
    }
}

/// The `status` table, with one job's partitions when `one` names a job.
pub fn render(jobs: &[JobView], one: bool) -> String {
    let mut out = table(jobs);
    if let (true, Some(job)) = (one, jobs.first()) {
        out.push_str(&databases(job));
        out.push_str(&partitions(job));
    }
    out
}

pub async fn status(client: &Client, name: Option<&str>, json: bool) -> Result<i32, CliError> {
    let jobs = match fetch(client, name).await {
        Ok(jobs) => jobs,
        Err(e) => return failed(e),
    };
    if json {
        let text = match name {
            Some(_) => serde_json::to_string_pretty(&jobs[0]),
            None => serde_json::to_string_pretty(&serde_json::json!({ "jobs": jobs })),
        }
        .map_err(|e| CliError::Other(e.into()))?;
        println!("{text}");
        return Ok(0);
    }
    print!("{}", render(&jobs, name.is_some()));
    Ok(0)
}

pub async fn act(client: &Client, name: &str, action: &str) -> Result<i32, CliError> {
    match client.act(name, action).await {
        Ok(job) => {
            println!("{}: {}", job.name, job.state.as_str());
            Ok(0)
        }
        Err(e) => failed(e),
    }
}

pub async fn delete(client: &Client, name: &str) -> Result<i32, CliError> {
    match client.delete(name).await {
        Ok(()) => {
            println!("{name}: deleted; the name is free");
            Ok(0)
        }
        Err(e) => failed(e),
    }
}

pub async fn events(client: &Client, name: &str, json: bool) -> Result<i32, CliError> {
    let list = match client.events(name).await {
        Ok(list) => list,
        Err(e) => return failed(e),
    };
    if json {
        let text = serde_json::to_string_pretty(&list).map_err(|e| CliError::Other(e.into()))?;
        println!("{text}");
        return Ok(0);
    }
    println!(
        "{:<20} {:<10} {:<14} {:<22} DETAIL",
        "AT (UTC)", "ACTOR", "EVENT", "STATE"
    );
    for event in &list.events {
        let change = match (&event.from_state, &event.to_state) {
            (Some(from), Some(to)) => format!("{from} → {to}"),
            (None, Some(to)) => format!("→ {to}"),
            _ => "-".into(),
        };
        println!(
            "{:<20} {:<10} {:<14} {:<22} {}",
            event.at.format("%Y-%m-%d %H:%M:%S"),
            text::printable(&event.actor),
            text::printable(&event.kind),
            text::printable(&change),
            // A job over several databases: which one, ahead of the detail.
            text::printable(&match &event.database {
                Some(database) => format!("[{database}] {}", event.detail.as_deref().unwrap_or("")),
                None => event.detail.clone().unwrap_or_default(),
            })
        );
    }
    Ok(0)
}

/// The PATCH body for `tune`'s flags; `none` removes a rate limit, a pause or a duty cycle.
/// Bad values are refused here (exit 2), naming the flag, before any request.
pub fn tuning(
    rows_per_second: Option<&str>,
    batch_size: Option<u32>,
    pause: Option<&str>,
    duty_cycle: Option<&str>,
) -> Result<Value, CliError> {
    let mut body = Map::new();
    if let Some(rate) = rows_per_second {
        let value = match rate {
            "none" => Value::Null,
            n => json!(n.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                CliError::invalid(format!(
                    "--rows-per-second: {n:?} is not a positive whole number or `none`"
                ))
            })?),
        };
        body.insert("rows_per_second".into(), value);
    }
    if let Some(size) = batch_size {
        body.insert("batch_size".into(), json!(size));
    }
    if let Some(pause) = pause {
        let value = match pause {
            "none" => Value::Null,
            d => {
                humantime::parse_duration(d).map_err(|e| {
                    CliError::invalid(format!(
                        "--pause: {d:?} is not a duration such as 50ms, or `none`: {e}"
                    ))
                })?;
                json!(d)
            }
        };
        body.insert("pause".into(), value);
    }
    if let Some(duty) = duty_cycle {
        let value = match duty {
            "none" => Value::Null,
            d => json!(d
                .parse::<DutyCycle>()
                .map_err(|e| CliError::invalid(format!("--duty-cycle: {e}, or `none`")))?
                .fraction()),
        };
        body.insert("duty_cycle".into(), value);
    }
    Ok(Value::Object(body))
}

pub async fn tune(client: &Client, name: &str, tuning: Value) -> Result<i32, CliError> {
    match client.tune(name, tuning).await {
        Ok(job) => {
            let spec = &job.spec;
            println!(
                "{}: batch_size {}, rows_per_second {}, pause {}, duty_cycle {}",
                job.name,
                spec["batch_size"]
                    .as_u64()
                    .map(text::count)
                    .unwrap_or_else(|| "-".into()),
                spec["rows_per_second"]
                    .as_u64()
                    .map(text::count)
                    .unwrap_or_else(|| "none".into()),
                spec["pause"].as_str().unwrap_or("none"),
                spec["duty_cycle"].as_f64().unwrap_or(1.0),
            );
            Ok(0)
        }
        Err(e) => failed(e),
    }
}

/// The `status` table: one line per job.
pub fn table(jobs: &[JobView]) -> String {
    let mut out = format!(
        "{:<24} {:<10} {:<28} {:>12} {:>12} {:>10} {:>8} {:<10} {}\n",
        "NAME",
        "STATE",
        "PROGRESS",
        "SCANNED",
        "UPDATED",
        "RATE/s",
        "ETA",
        "THROTTLE",
        "LAST ERROR"
    );
    for job in jobs {
        out.push_str(&format!(
            "{:<24} {:<10} {:<28} {:>12} {:>12} {:>10} {:>8} {:<10} {}\n",
            text::printable(&job.name),
            job.state.as_str(),
            bar(job.progress),
            text::signed_count(job.rows_scanned),
            text::signed_count(job.rows_updated),
            text::rate(job.rate_rows_per_second),
            job.eta_seconds
                .map(|s| text::duration(std::time::Duration::from_secs_f64(s.max(0.0))))
                .unwrap_or_else(|| "-".into()),
            text::printable(job.throttled.as_deref().unwrap_or("-")),
            text::printable(job.last_error.as_deref().unwrap_or("-")),
        ));
    }
    out
}

/// Each database's part of a job over several databases (nothing for a single-database job):
/// the table above holds the totals.
fn databases(job: &JobView) -> String {
    let Some(parts) = &job.databases else {
        return String::new();
    };
    let mut out = format!(
        "\n  {:<16} {:<10} {:<28} {:>12} {:>12} {:>10} ERROR\n",
        "DATABASE", "STATE", "PROGRESS", "SCANNED", "UPDATED", "RATE/s"
    );
    for part in parts {
        out.push_str(&format!(
            "  {:<16} {:<10} {:<28} {:>12} {:>12} {:>10} {}\n",
            part.database,
            part.state.map_or("-", |s| s.as_str()),
            bar(part.progress),
            text::signed_count(part.rows_scanned),
            text::signed_count(part.rows_updated),
            text::rate(part.rate_rows_per_second),
            text::printable(
                (part.error.as_deref())
                    .or(part.last_error.as_deref())
                    .unwrap_or("-")
            ),
        ));
    }
    out
}

fn partitions(job: &JobView) -> String {
    let mut out = format!(
        "\n  {:<5} {:<8} {:>12} {:>12}  {:<24} OWNER\n",
        "PART", "STATE", "SCANNED", "UPDATED", "CURSOR"
    );
    for p in &job.partitions {
        out.push_str(&format!(
            "  {:<5} {:<8} {:>12} {:>12}  {:<24} {}\n",
            p.index,
            p.state,
            text::signed_count(p.rows_scanned),
            text::signed_count(p.rows_updated),
            text::cursor(p.cursor.as_deref()),
            text::printable(p.owner.as_deref().unwrap_or("-")),
        ));
    }
    out
}

fn bar(progress: f64) -> String {
    let filled = (progress.clamp(0.0, 1.0) * 20.0).round() as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(filled),
        ".".repeat(20 - filled),
        progress * 100.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plumbing::config::Overrides;

    fn settings(toml: &str) -> Settings {
        let dir = std::env::temp_dir().join(format!("backfilld-remote-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{}.toml", toml.len()));
        std::fs::write(&file, toml).unwrap();
        Settings::load(&Overrides {
            config_file: Some(file),
            ..Overrides::default()
        })
        .unwrap()
    }

    #[test]
    fn the_url_follows_the_configs_listen_and_tls() {
        let url = |toml: &str| url_of(&settings(toml)).unwrap();
        assert_eq!(url("listen = \"0.0.0.0:9781\""), "http://127.0.0.1:9781");
        assert_eq!(url("listen = \"[::]:9781\""), "http://[::1]:9781");
        assert_eq!(url("listen = \"localhost:9799\""), "http://localhost:9799");
        assert_eq!(
            url("listen = \"10.0.0.5:443\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\""),
            "https://10.0.0.5:443"
        );
    }

    #[test]
    fn tune_sends_a_duty_cycle_as_a_number_and_refuses_a_bad_one_naming_the_flag() {
        let body = |d: &str| tuning(None, None, None, Some(d));
        assert_eq!(body("0.5").unwrap(), json!({"duty_cycle": 0.5}));
        assert_eq!(body("none").unwrap(), json!({"duty_cycle": null}));
        for bad in ["0", "1.5", "0.333", "half", ""] {
            let err = body(bad).unwrap_err().to_string();
            assert!(
                err.contains("--duty-cycle") && err.contains("duty_cycle"),
                "{bad}: {err}"
            );
        }
    }
}
