//! A real PgBouncer (Debian's `pgbouncer`, which `.ci/run` installs) of the test's own, on a
//! free port in front of the shared server, in the pool mode and size the test asks for.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::ScratchDir;
use super::{free_port, on_path, server_url};

pub struct PgBouncer {
    child: Child,
    pub port: u16,
    /// Where its config and log live; owned by the postgres user, removed on drop.
    dir: ScratchDir,
}

impl PgBouncer {
    /// Starts PgBouncer with `pool_mode` (`session` or `transaction`) and `pool_size` server
    /// connections per database and user, and waits until it accepts connections. It forwards
    /// every database name to the shared test server.
    pub fn start(pool_mode: &str, pool_size: u32) -> PgBouncer {
        let binary = on_path("pgbouncer")
            .or_else(|| Some(PathBuf::from("/usr/sbin/pgbouncer")).filter(|p| p.exists()))
            .expect("pgbouncer (Debian's package; .ci/run installs it)");
        let server = url::Url::parse(&server_url()).unwrap();
        let (host, server_port) = (
            server.host_str().unwrap_or("127.0.0.1").to_string(),
            server.port().unwrap_or(5432),
        );
        let dir = ScratchDir::new("pgbouncer");
        let port = free_port();
        let users = dir.path.join("userlist.txt");
        std::fs::write(&users, "\"postgres\" \"\"\n\"app\" \"\"\n").unwrap();
        // Deliberately no `ignore_startup_parameters`: a client that sends one PgBouncer does
        // not know (sqlx's `extra_float_digits`) is refused, as on a stock installation.
        let config = format!(
            "[databases]\n* = host={host} port={server_port}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {users}\npool_mode = {pool_mode}\n\
             default_pool_size = {pool_size}\nmin_pool_size = 0\nreserve_pool_size = 0\n\
             max_client_conn = 500\nlogfile = {log}\npidfile = {pid}\n",
            users = users.display(),
            log = dir.path.join("pgbouncer.log").display(),
            pid = dir.path.join("pgbouncer.pid").display(),
        );
        let ini = dir.path.join("pgbouncer.ini");
        std::fs::write(&ini, config).unwrap();
        let mut command = Command::new(binary);
        // PgBouncer refuses to run as root; `-u` makes it switch users itself, so the child
        // is PgBouncer and killing it stops it.
        if nix_is_root() {
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pgbouncer");
        let bouncer = PgBouncer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen in 10s\n{}",
                bouncer.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        bouncer
    }

    /// The URL of `database` through this pooler.
    pub fn url(&self, database: &str) -> String {
        self.url_as("postgres", database)
    }

    pub fn url_as(&self, user: &str, database: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
