//! Observability against real components: a real Prometheus scraping a real daemon running a
//! real job evaluates every query of the Grafana dashboard; promtool lints the exposition; the
//! compose file and the Kubernetes manifests agree with the daemon.
//!
//! Needs Debian's `prometheus` (with promtool) and `docker-compose` packages; `.ci/run`
//! installs them when missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{api, eventually, free_port, hits_table, on_path, Daemon, TestDb};
use serde_json::{json, Value};

/// The metric names of the README's metrics table.
const DOCUMENTED_METRICS: &[&str] = &[
    "backfill_rows_scanned_total",
    "backfill_rows_updated_total",
    "backfill_batches_total",
    "backfill_batch_duration_seconds",
    "backfill_batch_size",
    "backfill_progress_ratio",
    "backfill_eta_seconds",
    "backfill_job_state",
    "backfill_throttled",
    "backfill_rate_limit_rows_per_second",
    "backfill_pending_rows",
    "backfill_pass",
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn require(tool: &str, package: &str) -> PathBuf {
    on_path(tool).unwrap_or_else(|| {
        panic!("{tool} is not installed: install Debian's {package} package (.ci/run does)")
    })
}

/// Every PromQL expression in the dashboard, with the template variables substituted.
fn dashboard_queries(job: &str) -> Vec<String> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo("dashboards/backfilld.json")).unwrap())
            .unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr.replace("$job", job).replace("$database", ".*");
            queries.push(expr.replace("$__rate_interval", "30s"));
        }
    }
    assert!(queries.len() >= 8, "the dashboard should have its panels");
    queries
}

/// Metric names a query mentions (histogram series suffixes folded onto their metric).
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = query.as_bytes();
    let mut i = 0;
    while let Some(pos) = query[i..].find("backfill_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &query[start..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|_| name.starts_with("backfill_batch_duration"))
            })
            .unwrap_or(name);
        names.push(base.to_string());
        i = end;
    }
    names
}

struct Prometheus {
    child: std::process::Child,
    base: String,
    _data: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._data);
    }
}

/// Starts Prometheus with the project's own scrape config, pointed at `target`.
fn start_prometheus(dir: &Path, target: &str) -> Prometheus {
    let binary = require("prometheus", "prometheus");
    let config = std::fs::read_to_string(repo("deploy/prometheus.yml"))
        .unwrap()
        .replace("backfilld:9780", target)
        .replace("scrape_interval: 5s", "scrape_interval: 1s");
    assert!(
        config.contains(target),
        "deploy/prometheus.yml must target backfilld:9780"
    );
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let data = dir.join("prometheus-data");
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(binary)
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    Prometheus {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _data: data,
    }
}

async fn prom_query(http: &reqwest::Client, base: &str, query: &str) -> Option<Value> {
    let response = http
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

#[tokio::test]
async fn prometheus_evaluates_every_dashboard_query_against_a_live_daemon() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 200000).await;
    let jobs = api::jobs_dir(&db);
    let daemon = Daemon::start(&db.url, &db.dir, "", &jobs);
    let http = reqwest::Client::new();
    let submitted = http
        .post(format!("{}/api/v1/jobs", daemon.base))
        .json(&json!({
            "name": "watched", "table": "t", "key": "id", "set": {"hits": "hits + 1"},
            "batch_size": 100, "rows_per_second": 2000, "partitions": 2
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 201);

    let target = daemon.base.trim_start_matches("http://").to_string();
    let prometheus = start_prometheus(&db.dir, &target);
    let base = prometheus.base.clone();
    // Enough scrapes for rate() and histogram_quantile() over 30s windows.
    eventually(
        Duration::from_secs(60),
        "Prometheus to scrape the daemon",
        || async {
            let answer = prom_query(
                &http,
                &base,
                "count_over_time(backfill_rows_scanned_total{job=\"watched\"}[1m])",
            )
            .await?;
            let samples = answer["data"]["result"][0]["value"][1]
                .as_str()?
                .parse::<f64>()
                .ok()?;
            (samples >= 4.0).then_some(())
        },
    )
    .await;

    // The `job` variable's own query: label_values(backfill_job_state, job).
    let labels: Value = http
        .get(format!("{base}/api/v1/label/job/values"))
        .query(&[("match[]", "backfill_job_state")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        labels["data"]
            .as_array()
            .unwrap()
            .contains(&json!("watched")),
        "the job label must survive the scrape (honor_labels): {labels}"
    );
    // The `database` variable's: label_values(backfill_job_state{job=~"$job"}, database).
    let databases: Value = http
        .get(format!("{base}/api/v1/label/database/values"))
        .query(&[("match[]", "backfill_job_state{job=~\"watched\"}")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(databases["data"], json!(["default"]), "{databases}");

    for query in dashboard_queries("watched") {
        for name in metric_names(&query) {
            assert!(
                DOCUMENTED_METRICS.contains(&name.as_str()),
                "{query} uses {name}, which the README's metrics table does not list"
            );
        }
        let result = eventually(
            Duration::from_secs(30),
            &format!("data for {query}"),
            || async {
                let answer = prom_query(&http, &base, &query).await?;
                assert_eq!(answer["status"], json!("success"), "{query}: {answer}");
                let result = answer["data"]["result"].as_array()?.clone();
                (!result.is_empty()).then_some(result)
            },
        )
        .await;
        println!("{query} -> {} series", result.len());
    }
}

#[tokio::test]
async fn the_exposition_passes_promtool_and_carries_every_documented_metric() {
    let promtool = require("promtool", "prometheus");
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 2000).await;
    let jobs = api::jobs_dir(&db);
    std::fs::write(
        jobs.join("j.toml"),
        common::job_toml(
            "metered",
            "t",
            "\"id\"",
            "hits = \"hits + 1\"",
            "rows_per_second = 100000\nbatch_size = 200",
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&db.url, &db.dir, "", &jobs);
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), "the job to complete", || async {
        let job: Value = http
            .get(format!("{}/api/v1/jobs/metered", daemon.base))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (job["state"] == json!("completed")).then_some(())
    })
    .await;
    let response = http
        .get(format!("{}/metrics", daemon.base))
        .send()
        .await
        .unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for name in DOCUMENTED_METRICS {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing from /metrics"
        );
    }
    for line in [
        "backfill_rows_scanned_total{database=\"default\",job=\"metered\"} 2000",
        "backfill_rows_updated_total{database=\"default\",job=\"metered\"} 2000",
        "backfill_job_state{database=\"default\",job=\"metered\",state=\"completed\"} 1",
        "backfill_job_state{database=\"default\",job=\"metered\",state=\"running\"} 0",
        "backfill_progress_ratio{database=\"default\",job=\"metered\"} 1",
        "backfill_batch_size{database=\"default\",job=\"metered\"} 200",
        "backfill_rate_limit_rows_per_second{database=\"default\",job=\"metered\"} 100000",
        "backfill_throttled{database=\"default\",job=\"metered\",reason=\"rate_limit\"} 0",
        "backfill_batches_total{database=\"default\",job=\"metered\",outcome=\"failed\"} 0",
        "backfill_batch_duration_seconds_count{database=\"default\",job=\"metered\"} 11",
        "backfill_pass{database=\"default\",job=\"metered\"} 1",
        "backfill_pending_rows{database=\"default\",job=\"metered\"} 0",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
    assert!(
        text.contains("process_cpu_seconds_total"),
        "process metrics"
    );

    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = check.wait_with_output().unwrap();
    let problems = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && problems.trim().is_empty(),
        "promtool: {problems}"
    );
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

#[test]
fn docker_compose_file_is_valid_and_mounts_only_existing_files() {
    let compose = require("docker-compose", "docker-compose");
    let output = Command::new(compose)
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(repo(""))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let file = &yaml_documents(&repo("docker-compose.yml"))[0];
    let mut mounts = 0;
    for (service, definition) in file["services"].as_object().unwrap() {
        for volume in definition["volumes"].as_array().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            assert!(
                repo(source).exists(),
                "{service} mounts {source}, which does not exist"
            );
            mounts += 1;
        }
        if definition.get("build").is_some() {
            assert!(repo("Dockerfile").exists());
        }
    }
    assert!(
        mounts >= 5,
        "compose should mount config, jobs, Prometheus and Grafana files"
    );
    // Every job the compose daemon loads is a valid job.
    for entry in std::fs::read_dir(repo("deploy/compose/jobs")).unwrap() {
        let path = entry.unwrap().path();
        backfilld::spec::JobSpec::from_file(&path).unwrap();
    }
    // Grafana's provisioning points at the mounted dashboards directory.
    let provider = &yaml_documents(&repo(
        "deploy/grafana/provisioning/dashboards/backfilld.yml",
    ))[0];
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let grafana_volumes = file["services"]["grafana"]["volumes"].as_array().unwrap();
    assert!(grafana_volumes
        .iter()
        .any(|v| v.as_str().unwrap() == format!("./dashboards:{path}:ro")));
}

#[test]
fn kubernetes_manifests_match_the_daemon() {
    let mut documents = Vec::new();
    for entry in std::fs::read_dir(repo("deploy/kubernetes")).unwrap() {
        documents.extend(yaml_documents(&entry.unwrap().path()));
    }
    let find = |kind: &str, name: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == json!(kind) && d["metadata"]["name"] == json!(name))
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    let deployment = find("Deployment", "backfilld");
    assert_eq!(deployment["spec"]["replicas"], json!(2));
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        json!(0)
    );
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["ports"][0]["containerPort"], json!(9780));
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"],
        json!("/readyz")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"],
        json!("/healthz")
    );
    assert_eq!(
        container["startupProbe"]["httpGet"]["path"],
        json!("/healthz")
    );
    // Kubernetes waits 1 s by default, no longer than /readyz itself may wait for the database
    // before answering 503: a probe must outwait the answer, or a slow database reads as a
    // hung process.
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let timeout = container[probe]["timeoutSeconds"].as_f64();
        assert!(
            timeout.is_some_and(|t| t > backfilld::api::READINESS_TIMEOUT.as_secs_f64()),
            "{probe}: timeoutSeconds {timeout:?} must exceed {:?}",
            backfilld::api::READINESS_TIMEOUT
        );
    }
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], json!("9780"));
    assert_eq!(annotations["prometheus.io/path"], json!("/metrics"));

    // The config the pods run: it loads, listens on the probed port, and shuts down in time.
    let config = find("ConfigMap", "backfilld-config");
    let dir = std::env::temp_dir().join(format!("backfilld-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("backfilld.toml");
    std::fs::write(
        &config_file,
        config["data"]["backfilld.toml"].as_str().unwrap(),
    )
    .unwrap();
    let settings =
        backfilld::plumbing::config::Settings::load(&backfilld::plumbing::config::Overrides {
            config_file: Some(config_file),
            ..Default::default()
        })
        .unwrap();
    assert!(settings.listen.ends_with(":9780"));
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace > settings.shutdown_timeout.as_secs(),
        "terminationGracePeriodSeconds {grace} must exceed shutdown_timeout {:?}",
        settings.shutdown_timeout
    );
    // Every token the config reads from the environment is in the Secret the pod loads.
    let secret = find("Secret", "backfilld-secrets");
    for token in &settings.tokens {
        let var = token
            .token_env
            .as_ref()
            .expect("tokens come from the Secret");
        assert!(
            secret["stringData"].get(var).is_some(),
            "{var} missing from the Secret"
        );
    }
    assert!(secret["stringData"].get("DATABASE_URL").is_some());
    let jobs = find("ConfigMap", "backfilld-jobs");
    for (file, body) in jobs["data"].as_object().unwrap() {
        backfilld::spec::JobSpec::from_toml(body.as_str().unwrap(), file).unwrap();
    }
    let service = find("Service", "backfilld");
    assert_eq!(service["spec"]["ports"][0]["port"], json!(9780));
    let _ = std::fs::remove_dir_all(dir);
}
