//! The `nfqmark` binary: parse the command line, set up logging, call the library, and turn
//! errors into one message and an exit status: 2 for errors that stop nfqmark from starting and
//! for a thread that ended while it ran (a dead worker), so a service manager restarts it.

use std::process::ExitCode;

use clap::Parser;
#[cfg(feature = "demo")]
use nfqmark::cli::DemoResolver;
use nfqmark::cli::{Cli, Command, DemoArgs, TopArgs};
#[cfg(feature = "demo")]
use nfqmark::demo::{self, DemoOptions};
use nfqmark::top;
#[cfg(feature = "demo")]
use nfqmark_lab::Resolver;

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
        Command::Check(args) => ExitCode::from(nfqmark::daemon::check(&args) as u8),
        Command::Setup(args) => ExitCode::from(nfqmark::daemon::setup(&args) as u8),
        Command::Replay(args) => run_replay(&args),
        Command::Demo(args) => run_demo(&args),
        Command::Top(args) => run_top(&args),
    }
}

fn run_top(args: &TopArgs) -> ExitCode {
    use std::io::IsTerminal;
    let stdout = std::io::stdout();
    let opts = top::Options {
        endpoint: args.metrics,
        interval: args.interval,
        count: args.count,
        rules: args.rules,
        redraw: !args.plain && stdout.is_terminal(),
    };
    match top::run(&opts, &mut stdout.lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nfqmark top: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_replay(args: &nfqmark::cli::ReplayArgs) -> ExitCode {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let result = nfqmark::replay::run(args, &mut out, &mut std::io::stderr());
    let flushed = std::io::Write::flush(&mut out);
    match (result, flushed) {
        (Ok(_), Ok(())) => ExitCode::SUCCESS,
        (Err(nfqmark::replay::Error::Rules(diags)), _) => {
            for d in &diags {
                eprintln!("{d}");
            }
            ExitCode::from(1)
        }
        (Err(e), _) => {
            eprintln!("nfqmark replay: {e}");
            ExitCode::from(2)
        }
        (Ok(_), Err(e)) => {
            eprintln!("nfqmark replay: cannot write the output: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(feature = "demo")]
fn run_demo(args: &DemoArgs) -> ExitCode {
    let nfqmark = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("nfqmark: cannot find my own binary to run on the demo router: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = DemoOptions {
        resolver: match args.resolver {
            DemoResolver::Dnsmasq => Resolver::Dnsmasq,
            DemoResolver::Unbound => Resolver::Unbound,
            DemoResolver::Knot => Resolver::Knot,
        },
        seconds: args.seconds,
        rate: args.rate,
        keep: args.keep,
        nfqmark,
    };
    let mut out = std::io::stdout();
    match demo::run(&opts, &mut out) {
        Ok(_) => ExitCode::SUCCESS,
        Err(demo::Error::Interrupted) => {
            eprintln!("nfqmark demo: {}", demo::Error::Interrupted);
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("nfqmark demo: {e}");
            ExitCode::from(2)
        }
    }
}

/// Built without the demo (the cargo feature `demo` is off by default, and the .deb leaves it
/// out): the subcommand stays in the command line, so help, man pages and completions do not
/// depend on the build, and says how to get it.
#[cfg(not(feature = "demo"))]
fn run_demo(_: &DemoArgs) -> ExitCode {
    eprintln!(
        "nfqmark demo: this nfqmark was built without the demo (cargo feature `demo`, off by \
         default, and left out of the Debian package): build it from a checkout with \
         `sudo ./install.sh`, or `cargo build --release --features demo`"
    );
    ExitCode::from(2)
}
