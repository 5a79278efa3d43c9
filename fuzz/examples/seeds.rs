//! Write the seed corpus: `cargo run --example seeds [DIR]` (default `corpus`), one directory
//! per fuzz target, files built from nfqmark's packet fixtures. Runs on stable.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let mut written = 0;
    for (target, name, input) in nfqmark_fuzz::seeds() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), input)?;
        written += 1;
    }
    println!("{written} seeds written under {}", root.display());
    Ok(())
}
