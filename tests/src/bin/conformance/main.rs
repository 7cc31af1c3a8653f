//! The helper of `scripts/conformance` (critest against `wasmpod serve`):
//!
//!     conformance images OUT REGISTRY   # the test images as OCI layouts under OUT, the list
//!                                       # of what to push to REGISTRY (host:port), the
//!                                       # images file for critest
//!     conformance skip-regex SKIPFILE   # the -ginkgo.skip regex of the skip list
//!     conformance report SKIPFILE OUT FACTS JUNIT[=LABEL]...
//!                                       # docs/conformance.md from critest's JUnit reports
//!                                       # (a labelled one is a focused pass: its label, the
//!                                       # pass's flags, goes before each spec's name), FACTS
//!                                       # a file of lines to list above the tables

mod images;
mod report;

use std::path::Path;
use std::process::ExitCode;

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))
}

fn run(args: &[String]) -> Result<(), String> {
    match args {
        [cmd, out, registry] if cmd == "images" => {
            let load = |name: &str| {
                let path = wasmpod_tests::wasm(name);
                std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))
            };
            let (p1, p2) = (load("toolbox.p1")?, load("toolbox.p2")?);
            images::write(Path::new(out), registry, &p1, &p2)
                .map_err(|e| format!("writing the images under {out}: {e}"))
        }
        [cmd, skip] if cmd == "skip-regex" => {
            let skips = report::parse_skips(&read(skip)?).map_err(|e| format!("{skip}: {e}"))?;
            println!("{}", report::skip_regex(&skips));
            Ok(())
        }
        [cmd, skip, out, facts, junits @ ..] if cmd == "report" && !junits.is_empty() => {
            let skips = report::parse_skips(&read(skip)?).map_err(|e| format!("{skip}: {e}"))?;
            let mut cases = Vec::new();
            for junit in junits {
                let (path, label) = junit.split_once('=').unwrap_or((junit, ""));
                let mut pass = report::parse_junit(&read(path)?, label);
                if pass.is_empty() {
                    return Err(format!("{path}: no test cases"));
                }
                if !label.is_empty() {
                    // A focused pass: only the specs it ran (or critest skipped itself).
                    pass.retain(|c| !(c.status == "skipped" && c.message == "skipped"));
                }
                cases.extend(pass);
            }
            let facts = read(facts)?.lines().map(str::to_owned).collect();
            let md = report::markdown(&cases, &skips, &report::Run { facts });
            std::fs::write(out, md).map_err(|e| format!("writing {out}: {e}"))
        }
        _ => Err(
            "usage: conformance images OUT REGISTRY | skip-regex SKIPFILE | \
                  report JUNIT SKIPFILE OUT SUMMARY [FACT...]"
                .to_owned(),
        ),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conformance: {e}");
            ExitCode::FAILURE
        }
    }
}
