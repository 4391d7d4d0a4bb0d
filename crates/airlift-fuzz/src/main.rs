//! `airlift-fuzz`: the stable fuzz driver.
//!
//! ```text
//! airlift-fuzz run TARGET [CASES] [SEED]   seeded mutations of the corpus and seeds
//! airlift-fuzz seed-corpus                 write the structured seeds into corpus/
//! airlift-fuzz replay TARGET FILE          run one input (a crash libFuzzer saved)
//! ```

use std::process::ExitCode;

use airlift_fuzz::{Target, campaign, corpus_dir, run_one, seeds};

fn target(name: Option<&String>) -> Result<Target, String> {
    let name = name.ok_or("name a target")?;
    Target::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
        format!(
            "unknown target {name:?}: expected one of {}",
            names.join(", ")
        )
    })
}

fn run(args: &[String]) -> Result<bool, String> {
    match args.first().map(String::as_str) {
        Some("run") => {
            let t = target(args.get(1))?;
            let cases = args
                .get(2)
                .map_or(Ok(100_000), |s| s.parse())
                .map_err(|e| format!("cases: {e}"))?;
            let seed = args
                .get(3)
                .map_or(Ok(1), |s| s.parse())
                .map_err(|e| format!("seed: {e}"))?;
            let report = campaign(t, cases, seed);
            println!(
                "{}: {} cases, {} failures",
                t.name(),
                report.cases,
                report.failures.len()
            );
            for f in &report.failures {
                let path = std::env::temp_dir().join(format!(
                    "airlift-fuzz-{}-{}",
                    t.name(),
                    f.origin.replace(['/', ' ', '(', ')'], "_")
                ));
                std::fs::write(&path, &f.input).map_err(|e| format!("{}: {e}", path.display()))?;
                println!(
                    "  {}: {}\n  input saved to {}",
                    f.origin,
                    f.message,
                    path.display()
                );
            }
            Ok(report.failures.is_empty())
        }
        Some("seed-corpus") => {
            for t in Target::ALL {
                let dir = corpus_dir(t);
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                for (i, bytes) in seeds::seeds(t).into_iter().enumerate() {
                    let path = dir.join(format!("seed-{i}"));
                    std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                }
            }
            Ok(true)
        }
        Some("replay") => {
            let t = target(args.get(1))?;
            let file = args.get(2).ok_or("name the input file")?;
            let input = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
            match run_one(t, file, &input) {
                Ok(()) => {
                    println!("{}: {file} passes", t.name());
                    Ok(true)
                }
                Err(f) => {
                    println!("{}: {file} fails: {}", t.name(), f.message);
                    Ok(false)
                }
            }
        }
        _ => Err(
            "usage: airlift-fuzz run TARGET [CASES] [SEED] | seed-corpus | replay TARGET FILE"
                .into(),
        ),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("airlift-fuzz: {e}");
            ExitCode::from(2)
        }
    }
}
