//! Generates the man pages and the shell completions from nfqmark's own command-line
//! definitions (`nfqmark::cli::Cli`), so they always match `--help`:
//!
//! ```sh
//! cargo run --release --example generate -- man DIR            # nfqmark.8, nfqmark-run.8, ...
//! cargo run --release --example generate -- completions bash   # or zsh, fish, elvish, powershell
//! ```
//!
//! contrib/build-deb runs it for the Debian package. This is an example, not a subcommand of
//! nfqmark, so the shipped binary carries none of it (clap_mangen and clap_complete added
//! 324 kB, 9 %, to the release binary as a hidden subcommand). It owns the text of the main
//! page's sections beyond the command line (files, signals, exit status) and writes only where
//! it is told.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;
use nfqmark::cli::Cli;

/// Man page section: nfqmark is a daemon and an administrator's tool.
const MAN_SECTION: &str = "8";

/// What the main man page says beyond the command line (roff).
const MAN_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/nfqmark/nfqmark.rules\fR
The rules file the packaged service reads (\fBnfqmark run \-\-rules\fR). Check it with
\fBnfqmark check /etc/nfqmark/nfqmark.rules\fR and apply it with \fBsystemctl reload nfqmark\fR.
.TP
\fI/usr/lib/systemd/system/nfqmark.service\fR
The packaged unit (not enabled at install): nfqmark as its own user with only CAP_NET_ADMIN,
queue 0, metrics on 127.0.0.1:9120. Change its options with \fBsystemctl edit nfqmark\fR.
.TP
\fI/usr/share/doc/nfqmark/\fR
The README, the rules language (\fIrules.md\fR), example rules files (\fIexamples/\fR) and a
Grafana dashboard for the metrics (\fIgrafana/nfqmark.json\fR).
.SH SIGNALS
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop cleanly: stop the kernel queueing, give every queued packet its verdict, unbind, exit 0.
.TP
\fBSIGHUP\fR
Read the rules file again; a file with errors is rejected and the rules in force stay.
.TP
\fBSIGUSR1\fR
Log every counter on one line.
.SH EXIT STATUS
0 when stopped by a signal; 1 from \fBcheck\fR when the rules file has errors; 2 when nfqmark
cannot start (the message names the cause and the fix) or when a thread it needs ended, so
that the service manager restarts it.
.SH ENVIRONMENT
.TP
\fBRUST_LOG\fR
Log filter (\fBinfo\fR, \fBdebug\fR, \fBtrace\fR, or per module), overriding \fB\-v\fR.
.SH SEE ALSO
\fBiptables\-extensions\fR(8) (NFQUEUE, MARK, CONNMARK), \fBnft\fR(8), \fBip\-rule\fR(8),
\fBsystemd.exec\fR(5).
"#;

/// Write the man pages into `dir`: `nfqmark.8` (the command, its subcommands, files, signals,
/// exit status) and one page per visible subcommand (`nfqmark-run.8`, ...). Returns the files.
fn man_pages(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    use std::io::Write;
    let source = format!("nfqmark {}", env!("CARGO_PKG_VERSION"));
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    let main = clap_mangen::Man::new(cmd.clone())
        .section(MAN_SECTION)
        .source(source.clone())
        .manual("System Administration");
    let path = dir.join(main.get_filename());
    let mut page = Vec::new();
    main.render(&mut page)?;
    page.extend_from_slice(MAN_EXTRA.as_bytes());
    std::fs::File::create(&path)?.write_all(&page)?;
    written.push(path);
    for sub in cmd.get_subcommands() {
        let man = clap_mangen::Man::new(sub.clone())
            .section(MAN_SECTION)
            .source(source.clone())
            .manual("System Administration");
        written.push(man.generate_to(dir)?);
    }
    Ok(written)
}

/// Write the completion script for `shell` to `out`.
fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut Cli::command(), "nfqmark", out);
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: generate man DIR | generate completions bash|zsh|fish|elvish|powershell";
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["man", dir] => match man_pages(std::path::Path::new(dir)) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("generate man: {dir}: {e}");
                ExitCode::from(2)
            }
        },
        ["completions", shell] => match shell.parse::<clap_complete::Shell>() {
            Ok(shell) => {
                completions(shell, &mut std::io::stdout());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("generate completions: {e}\n{usage}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("{usage}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_cover_every_visible_subcommand_and_its_options() {
        let dir = std::env::temp_dir().join(format!("nfqmark-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let written = man_pages(&dir).expect("man pages");
        let names: Vec<String> = written
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(String::from))
            .collect();
        for page in [
            "nfqmark.8",
            "nfqmark-run.8",
            "nfqmark-check.8",
            "nfqmark-top.8",
        ] {
            assert!(names.iter().any(|n| n == page), "{page} not in {names:?}");
        }
        let main = std::fs::read_to_string(dir.join("nfqmark.8")).expect("nfqmark.8");
        assert!(main.starts_with(".ie \\n(.g .ds Aq"), "{}", &main[..80]);
        assert!(main.contains(".TH nfqmark 8"), "no title line");
        assert!(main.contains("nfqmark\\-run(8)"), "subcommands not listed");
        assert!(main.contains(".SH SIGNALS") && main.contains(".SH EXIT STATUS"));
        let run = std::fs::read_to_string(dir.join("nfqmark-run.8")).expect("nfqmark-run.8");
        assert!(run.contains("\\-\\-metrics"), "run's options missing");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn completions_name_the_subcommands_and_their_options() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let text = String::from_utf8(out).expect("utf-8");
            // fish writes long options as `-l rules`.
            let (rules, metrics) = match shell {
                clap_complete::Shell::Fish => ("-l rules", "-l metrics"),
                _ => ("--rules", "--metrics"),
            };
            for word in ["run", "check", "setup", "top", rules, metrics] {
                assert!(text.contains(word), "{shell:?}: no {word}");
            }
        }
    }
}
