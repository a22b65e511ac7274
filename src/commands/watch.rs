//! `backfilld status --watch`: the status table refreshed until Ctrl-C — redrawn in place on a
//! terminal, written again as plain lines (with the time) otherwise, for logs and pipes.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::commands::api_client::Client;
use crate::commands::error::CliError;
use crate::commands::remote;

/// Clears the screen and moves the cursor home.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Exit codes as `status`'s; Ctrl-C (or SIGTERM) ends it with 0.
pub async fn execute(
    client: &Client,
    name: Option<&str>,
    interval: Duration,
) -> Result<i32, CliError> {
    let terminal = std::io::stdout().is_terminal();
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| CliError::Other(e.into()))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| CliError::Other(e.into()))?;
    loop {
        let fetched = tokio::select! {
            _ = interrupt.recv() => return Ok(0),
            _ = terminate.recv() => return Ok(0),
            fetched = remote::fetch(client, name) => fetched,
        };
        let jobs = match fetched {
            Ok(jobs) => jobs,
            Err(e) => return remote::failed(e),
        };
        let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC");
        let body = remote::render(&jobs, name.is_some());
        let mut out = std::io::stdout().lock();
        let written = if terminal {
            let every = humantime::format_duration(interval);
            write!(
                out,
                "{CLEAR}{now} · every {every} · Ctrl-C to stop\n\n{body}"
            )
        } else {
            write!(out, "--- {now}\n{body}")
        };
        // A closed pipe (`| head`) ends the watch as Ctrl-C does.
        if written.and_then(|_| out.flush()).is_err() {
            return Ok(0);
        }
        drop(out);
        tokio::select! {
            _ = interrupt.recv() => return Ok(0),
            _ = terminate.recv() => return Ok(0),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
