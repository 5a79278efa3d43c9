//! Run a fuzz target's checks over saved inputs on the stable toolchain, without libFuzzer:
//! `cargo run --example replay -- TARGET FILE|DIR...` (e.g. a crash from `artifacts/TARGET/`
//! or a whole corpus). Exit status 1 if any input panics; each one is named.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn inputs(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for e in entries {
            inputs(&e, out)?;
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let target: fn(&[u8]) = match args.next().as_deref() {
        Some("packet") => nfqmark_fuzz::packet,
        Some("engine") => nfqmark_fuzz::engine,
        Some("rules") => nfqmark_fuzz::rules,
        Some("nfnl") => nfqmark_fuzz::nfnl,
        Some("stream") => nfqmark_fuzz::stream,
        Some("answer") => nfqmark_fuzz::answer,
        Some("capture") => nfqmark_fuzz::capture,
        _ => {
            eprintln!("usage: replay packet|engine|rules|nfnl|stream|answer|capture FILE|DIR...");
            return ExitCode::from(2);
        }
    };
    let mut files = Vec::new();
    for a in args {
        if let Err(e) = inputs(Path::new(&a), &mut files) {
            eprintln!("{a}: {e}");
            return ExitCode::from(2);
        }
    }
    let mut failed = 0;
    for f in &files {
        let data = match std::fs::read(f) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{}: {e}", f.display());
                return ExitCode::from(2);
            }
        };
        if std::panic::catch_unwind(|| target(&data)).is_err() {
            eprintln!("FAILED: {}", f.display());
            failed += 1;
        }
    }
    println!("{} input(s), {failed} failed", files.len());
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
