//! The `backfilld` binary: parses arguments and hands over to the library.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = backfilld::commands::cli::Cli::parse();
    let code = match cli.execute().await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    };
    std::process::exit(code);
}
