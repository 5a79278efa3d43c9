//! The `nfqmark` binary: parse the command line, set up logging, call the library, and turn
//! errors into a message and an exit status (2 for errors that stop nfqmark from starting).

use std::process::ExitCode;

use clap::Parser;
use nfqmark::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
    match cli.command {
        Command::Run(args) => match nfqmark::daemon::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nfqmark: {e}");
                ExitCode::from(2)
            }
        },
    }
}
