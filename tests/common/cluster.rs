//! Throwaway PostgreSQL servers of the tests' own (initdb into a temporary directory, started on
//! a free port as the postgres user), for what cannot be done to the shared server: streaming
//! standbys, crashes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The newest installed PostgreSQL's binaries (Debian layout).
pub fn pg_bin(tool: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries in /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("bin").join(tool).exists())
        .collect();
    versions.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .pop()
        .expect("an installed PostgreSQL")
        .join("bin")
        .join(tool)
}

/// Runs a PostgreSQL tool as the postgres user (servers refuse to run as root).
pub fn as_postgres(tool: &str, args: &[&str]) {
    let output = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(pg_bin(tool))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("runuser");
    assert!(
        output.status.success(),
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A directory the postgres user owns, removed (with every server started in it stopped) on
/// drop.
pub struct ScratchDir {
    pub path: PathBuf,
    servers: Vec<PathBuf>,
}

impl ScratchDir {
    pub fn new(purpose: &str) -> ScratchDir {
        let path = std::env::temp_dir().join(format!(
            "backfilld-{purpose}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&path).unwrap();
        Command::new("chown")
            .args(["postgres", path.to_str().unwrap()])
            .status()
            .unwrap();
        ScratchDir {
            path,
            servers: Vec::new(),
        }
    }

    /// `initdb` of a new cluster named `name`, trust authentication.
    pub fn initdb(&self, name: &str) -> PathBuf {
        let data = self.path.join(name);
        as_postgres(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        data
    }

    /// Starts the cluster in `data` on `port` with extra `-c` settings, and waits until it
    /// accepts connections. It is stopped (immediately) when `self` is dropped.
    pub fn start(&mut self, data: &Path, port: u16, settings: &[&str]) {
        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            self.path.display()
        );
        for setting in settings {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        let log = self.path.join(format!("{port}.log"));
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        self.servers.push(data.to_path_buf());
    }

    /// The server log of the cluster on `port`.
    pub fn log(&self, port: u16) -> String {
        std::fs::read_to_string(self.path.join(format!("{port}.log"))).unwrap_or_default()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Standbys were started after their primaries: stop them first.
        for data in self.servers.iter().rev() {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_bin("pg_ctl"))
                .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub fn url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}
