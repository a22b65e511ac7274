//! TLS end to end, against real servers: a throwaway PostgreSQL with `ssl = on` whose pg_hba
//! accepts TLS connections only (so any session opened without TLS would be refused), and the
//! daemon serving its API over HTTPS, with a certificate authority and certificates made here
//! (rcgen). What an operator would try: a verified connection runs a job, each row once; a
//! wrong CA, a wrong host name, a missing file or a refused plain connection fail with exit 2
//! and say why; `require` works without a CA; the CLI over HTTPS with and without `--cacert`.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use backfilld::plumbing::db::{Db, PoolMode};
use common::api::{assert_no_panic, Api};
use common::cluster::ScratchDir;
use common::{assert_each_hit_once, cli_with_url, command, free_port, hits_table, job_toml};
use common::{text, Daemon};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};

/// A certificate authority whose certificate is a PEM file, and what it signs.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert: PathBuf,
}

impl Authority {
    fn new(dir: &Path, name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("backfilld test {name}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = dir.join(format!("{name}.crt"));
        std::fs::write(&cert, params.self_signed(&key).unwrap().pem()).unwrap();
        Authority {
            issuer: Issuer::new(params, key),
            cert,
        }
    }

    /// A server certificate for `names`, and its key: `(cert, key)` PEM files in `dir`.
    fn issue(&self, dir: &Path, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{file}.crt")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

/// A PostgreSQL on a free port that speaks TLS only, with a certificate for `localhost` (not
/// for 127.0.0.1) signed by `ca`; `other` is an authority it does not know.
struct TlsPostgres {
    scratch: ScratchDir,
    port: u16,
    ca: Authority,
    other: Authority,
}

impl TlsPostgres {
    fn start() -> TlsPostgres {
        let mut scratch = ScratchDir::new("tls");
        let data = scratch.initdb("db");
        let ca = Authority::new(&scratch.path, "ca");
        let other = Authority::new(&scratch.path, "other-ca");
        let (cert, key) = ca.issue(&scratch.path, "server", &["localhost"]);
        // The server refuses a key file that its user does not own or that others may read.
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let chown = std::process::Command::new("chown")
            .args(["postgres", key.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(chown.success());
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .unwrap();
        let port = free_port();
        let (cert_file, key_file) = (
            format!("ssl_cert_file={}", cert.display()),
            format!("ssl_key_file={}", key.display()),
        );
        scratch.start(&data, port, &["ssl=on", &cert_file, &key_file]);
        TlsPostgres {
            scratch,
            port,
            ca,
            other,
        }
    }

    /// The URL of its `postgres` database by `host`, with `query` (TLS parameters).
    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }

    /// `sslmode=verify-full` by the name its certificate is for, trusting its CA.
    fn verified_url(&self) -> String {
        self.url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", self.ca.cert.display()),
        )
    }

    /// A pool of the test's own (through TLS, as the server wants).
    async fn pool(&self) -> Db {
        backfilld::plumbing::db::connect(&self.verified_url(), 2, PoolMode::Session)
            .await
            .unwrap()
    }

    /// A hits job over `table` of `rows` rows, as a file.
    async fn hits_job(&self, pool: &Db, name: &str, table: &str, rows: i64) -> PathBuf {
        hits_table(pool, table, "bigint", "i", rows).await;
        let path = self.scratch.path.join(format!("{name}.toml"));
        let set = "hits = \"hits + 1\"";
        let extra = "batch_size = 100\npartitions = 2";
        std::fs::write(&path, job_toml(name, table, "\"id\"", set, extra)).unwrap();
        path
    }
}

/// `output` is an exit 2 whose message says every one of `words`, and no PostgreSQL source
/// line number.
fn assert_refused(output: &Output, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{}", text(output));
    for word in words {
        assert!(
            stderr.contains(word),
            "{word:?} not said:\n{}",
            text(output)
        );
    }
    assert!(!stderr.contains(" at line "), "{}", text(output));
}

#[tokio::test]
async fn database_tls_verifies_as_libpq_does() {
    let server = TlsPostgres::start();
    let pool = server.pool().await;
    let job = server.hits_job(&pool, "verified", "t", 2_000).await;
    let job = job.to_str().unwrap();

    // verify-full by the certificate's name and its CA: the job runs, each row once. Every
    // session (pool, workers, presence) went through TLS, or pg_hba would have refused it.
    let ran = cli_with_url(&server.verified_url(), &["run", job]);
    assert_eq!(ran.status.code(), Some(0), "{}", text(&ran));
    assert_each_hit_once(&pool, "t", 2_000).await;

    let ca = server.ca.cert.display().to_string();
    let other = server.other.cert.display().to_string();
    // A CA that did not sign the certificate: refused, saying whose certificate and why.
    let wrong_ca = server.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={other}"),
    );
    for args in [vec!["run", job], vec!["check", job], vec!["migrate"]] {
        assert_refused(
            &cli_with_url(&wrong_ca, &args),
            &[
                "certificate verify failed",
                "localhost",
                "not signed by a trusted certificate authority",
                "sslrootcert",
            ],
        );
    }
    // The daemon waits for the database instead, and its /readyz says why.
    let no_jobs = server.scratch.path.join("no-jobs");
    std::fs::create_dir_all(&no_jobs).unwrap();
    let daemon = Daemon::start_unready(&wrong_ca, &server.scratch.path, "", &no_jobs);
    let (status, body) = Api::at(&daemon.base, None).get("/readyz").await;
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let reason = body["error"].as_str().unwrap_or_default();
    assert!(reason.contains("certificate verify failed"), "{body}");
    drop(daemon);
    // The right CA, but 127.0.0.1 is not a name the certificate is for.
    let wrong_host = server.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    assert_refused(
        &cli_with_url(&wrong_host, &["run", job]),
        &[
            "certificate verify failed",
            "127.0.0.1",
            "not valid for that host name",
            "it is for localhost",
        ],
    );
    // verify-ca checks the chain only, so the same host passes.
    let chain_only = server.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"));
    let checked = cli_with_url(&chain_only, &["check", job]);
    assert_eq!(checked.status.code(), Some(0), "{}", text(&checked));
    // require with a root certificate verifies the chain, as libpq does.
    let require_other = server.url("localhost", &format!("sslmode=require&sslrootcert={other}"));
    assert_refused(
        &cli_with_url(&require_other, &["migrate"]),
        &["not signed by a trusted certificate authority"],
    );
    // A file that is not there is said so before any connection.
    let missing = server.url(
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.crt",
    );
    assert_refused(
        &cli_with_url(&missing, &["check", job]),
        &["sslrootcert: cannot read /nonexistent/ca.crt"],
    );
    // Without TLS the server refuses: its message, without sqlx's source line.
    let plain = server.url("localhost", "sslmode=disable");
    assert_refused(
        &cli_with_url(&plain, &["check", job]),
        &["no pg_hba.conf entry", "no encryption"],
    );
    // Nothing above changed a row.
    assert_each_hit_once(&pool, "t", 2_000).await;

    // require encrypts without checking the certificate at all: no CA, and any host name.
    let job2 = server.hits_job(&pool, "required", "t2", 500).await;
    let required = server.url("127.0.0.1", "sslmode=require");
    let ran = cli_with_url(&required, &["run", job2.to_str().unwrap()]);
    assert_eq!(ran.status.code(), Some(0), "{}", text(&ran));
    assert_each_hit_once(&pool, "t2", 500).await;
    pool.close().await;
}

/// The CLI against `base` with `args`, trusting `cacert` if given (and nothing from the
/// environment).
fn remote(base: &str, cacert: Option<&Path>, args: &[&str]) -> Output {
    let mut cli = command("postgres://unused", args);
    cli.args(["--url", base]).env_remove("BACKFILLD_CACERT");
    if let Some(ca) = cacert {
        cli.arg("--cacert").arg(ca);
    }
    cli.output().expect("spawn backfilld")
}

/// Polls `backfilld status` over HTTPS until the daemon answers (its database must be ready
/// for the job list), bounded.
fn wait_until_answering(base: &str, ca: &Path, daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while remote(base, Some(ca), &["status"]).status.code() != Some(0) {
        assert!(
            Instant::now() < deadline,
            "no answer over HTTPS in 30s\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A job's state as `backfilld status NAME --json` reports it.
fn state(base: &str, ca: &Path, name: &str) -> String {
    let output = remote(base, Some(ca), &["status", name, "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let job: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    job["state"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_daemon_serves_https_over_a_tls_database() {
    let server = TlsPostgres::start();
    let pool = server.pool().await;
    let job = server.hits_job(&pool, "over-https", "t", 3_000).await;
    let dir = &server.scratch.path;
    let (api_cert, api_key) = server.ca.issue(dir, "api", &["localhost"]);
    let jobs = dir.join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    let config = format!(
        "tls_cert = {:?}\ntls_key = {:?}\n",
        api_cert.display().to_string(),
        api_key.display().to_string()
    );
    let daemon = Daemon::start_unready(&server.verified_url(), dir, &config, &jobs);
    let port = daemon
        .base
        .strip_prefix("https://127.0.0.1:")
        .unwrap_or_else(|| panic!("not an https address: {}", daemon.base))
        .to_string();
    let base = format!("https://localhost:{port}");
    let ca = server.ca.cert.clone();
    wait_until_answering(&base, &ca, &daemon);

    // Without the CA the certificate does not verify: exit 2, saying so and what to give.
    assert_refused(
        &remote(&base, None, &["status"]),
        &[
            "certificate verify failed",
            "not signed by a trusted certificate authority",
            "--cacert",
        ],
    );
    // Nor for a name it is not for.
    assert_refused(
        &remote(&format!("https://127.0.0.1:{port}"), Some(&ca), &["status"]),
        &["certificate verify failed", "not valid for that host name"],
    );
    // $BACKFILLD_CACERT works as --cacert does.
    let listed = command("postgres://unused", &["status", "--url", &base])
        .env("BACKFILLD_CACERT", &ca)
        .output()
        .unwrap();
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed));

    // A job submitted over HTTPS runs on the daemon's TLS connections, each row once.
    let submitted = remote(&base, Some(&ca), &["submit", job.to_str().unwrap()]);
    assert_eq!(submitted.status.code(), Some(0), "{}", text(&submitted));
    let deadline = Instant::now() + Duration::from_secs(60);
    while state(&base, &ca, "over-https") != "completed" {
        assert!(
            Instant::now() < deadline,
            "not completed in 60s\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_each_hit_once(&pool, "t", 3_000).await;

    // A client that connects and never starts the handshake is closed, not left to hold a
    // slot: after the handshake timeout (10 s), with a margin.
    let mut idle = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let read = idle.read(&mut [0u8; 16]);
    let waited = started.elapsed();
    assert!(!matches!(read, Ok(n) if n > 0), "{read:?}");
    assert!(
        waited < Duration::from_secs(15),
        "still open after {waited:?}"
    );
    assert_no_panic(&daemon.log());
    pool.close().await;
}

#[test]
fn a_bad_certificate_pair_is_a_config_error_naming_the_key() {
    let dir = std::env::temp_dir().join(format!(
        "backfilld-tls-pair-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Authority::new(&dir, "ca");
    let (cert, _) = ca.issue(&dir, "api", &["localhost"]);
    let (_, other_key) = ca.issue(&dir, "other", &["localhost"]);
    let serve = |config: &str| {
        let file = dir.join("config.toml");
        std::fs::write(&file, config).unwrap();
        let url = common::server_url();
        let file = file.to_str().unwrap().to_string();
        cli_with_url(
            &url,
            &["serve", "--listen", "127.0.0.1:0", "--config", &file],
        )
    };
    assert_refused(
        &serve(&format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            cert.display().to_string(),
            other_key.display().to_string()
        )),
        &["tls_key", "is not the private key of the certificate"],
    );
    assert_refused(
        &serve(&format!("tls_cert = {:?}\n", cert.display().to_string())),
        &["config: tls_key: tls_cert is set"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}
