//! Logging, set up once: human-readable text by default, JSON lines with `log_format = "json"`.
//! While a progress bar is on screen, log lines are printed above it instead of through it.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use indicatif::ProgressBar;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::plumbing::config::LogFormat;

/// The bar currently drawn on the terminal, if any.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

pub fn set_active_bar(bar: Option<ProgressBar>) {
    *ACTIVE_BAR.lock().expect("bar lock poisoned") = bar;
}

pub fn init(format: LogFormat) {
    // The HTTP client's certificate verifier logs each refusal, which the client command
    // reports itself, in plainer words.
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,rustls_platform_verifier=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(BarAwareStderr)
        // Colours only for a person at a terminal, never in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests calling into the library) keeps the first subscriber.
    let _ = result;
}

/// Writes each log line whole, above the bar when one is drawn. tracing-indicatif does this for
/// bars that belong to tracing spans; ours belongs to the foreground run, not a span, and these
/// few lines keep it that way without a second progress-bar manager in the process.
#[derive(Clone, Copy)]
struct BarAwareStderr;

struct LineWriter(Vec<u8>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let bar = ACTIVE_BAR.lock().ok().and_then(|b| b.clone());
        let line = std::mem::take(&mut self.0);
        match bar {
            Some(bar) => bar.suspend(|| {
                let _ = std::io::stderr().write_all(&line);
            }),
            None => {
                let _ = std::io::stderr().write_all(&line);
            }
        }
    }
}

impl<'a> MakeWriter<'a> for BarAwareStderr {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(Vec::with_capacity(256))
    }
}
