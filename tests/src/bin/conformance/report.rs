//! The skip list (`scripts/conformance.skip`) and `docs/conformance.md`, generated from the
//! JUnit report Ginkgo writes for critest.

use std::fmt::Write as _;

/// One line of the skip list: specs whose full text contains `text` are not run, for `reason`.
#[derive(Debug, PartialEq)]
pub struct Skip {
    pub text: String,
    pub reason: String,
}

/// Parses the skip list: `spec text # reason` a line (the text is a plain substring of the
/// spec's full text, not a regex); blank lines and lines starting with `#` are ignored.
pub fn parse_skips(list: &str) -> Result<Vec<Skip>, String> {
    let mut skips = Vec::new();
    for (n, line) in list.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((text, reason)) = line.split_once(" # ") else {
            return Err(format!(
                "line {}: `spec text # reason` expected, got {line:?}",
                n + 1
            ));
        };
        skips.push(Skip {
            text: text.trim().to_owned(),
            reason: reason.trim().to_owned(),
        });
    }
    Ok(skips)
}

/// The `-ginkgo.skip` regex for `skips`: every text quoted (RE2 syntax), joined by `|`.
pub fn skip_regex(skips: &[Skip]) -> String {
    skips
        .iter()
        .map(|s| {
            s.text
                .chars()
                .map(|c| {
                    if r"\.+*?()|[]{}^$".contains(c) {
                        format!("\\{c}")
                    } else {
                        c.to_string()
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// One `<testcase>` of the report.
#[derive(Debug, PartialEq)]
pub struct Case {
    /// The full text without Ginkgo's `[It] ` prefix.
    pub name: String,
    /// `passed`, `failed`, `skipped`, `panicked`, `interrupted`, …
    pub status: String,
    pub seconds: f64,
    /// The failure or skip message.
    pub message: String,
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';').filter(|&e| e < 12) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let c = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The value of attribute `name` in a start tag's text.
fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let len = tag[start..].find('"')?;
    Some(unescape(&tag[start..start + len]))
}

/// The `<testcase>` elements of a Ginkgo JUnit report (its own regular output: attributes in
/// double quotes, no CDATA in the parts read here).
/// A `label` (the pass's extra flags) goes in front of each spec's name.
pub fn parse_junit(xml: &str, label: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<testcase ") {
        rest = &rest[i..];
        let Some(tag_end) = rest.find('>') else { break };
        let tag = &rest[..tag_end];
        let body = if tag.ends_with('/') {
            ""
        } else {
            let end = rest.find("</testcase>").unwrap_or(rest.len());
            &rest[tag_end + 1..end]
        };
        let name = attr(tag, "name").unwrap_or_default();
        let message = ["failure", "error", "skipped"]
            .iter()
            .find_map(|el| {
                let i = body.find(&format!("<{el} "))?;
                let end = body[i..].find('>')? + i;
                attr(&body[i..end], "message")
            })
            .unwrap_or_default();
        let name = name.strip_prefix("[It] ").unwrap_or(&name);
        cases.push(Case {
            name: if label.is_empty() {
                name.to_owned()
            } else {
                format!("{label} {name}")
            },
            status: attr(tag, "status").unwrap_or_default(),
            seconds: attr(tag, "time")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0.0),
            message,
        });
        rest = &rest[tag_end..];
    }
    cases
}

/// How a case ended, for the tables: the skip list's reason when one of its lines matched.
fn outcome<'a>(case: &Case, skips: &'a [Skip]) -> (&'static str, Option<&'a Skip>) {
    match case.status.as_str() {
        "passed" => ("passed", None),
        "skipped" | "pending" => match skips.iter().find(|s| case.name.contains(&s.text)) {
            Some(s) => ("skipped (list)", Some(s)),
            None => ("skipped (critest)", None),
        },
        _ => ("FAILED", None),
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The first meaningful line of a failure message, shortened.
fn short(message: &str) -> String {
    let line = message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut s: String = line.chars().take(200).collect();
    if line.chars().count() > 200 {
        s.push('…');
    }
    s
}

/// What the run page says besides the reports: the run's facts (critest's summary lines
/// among them), a list item each.
pub struct Run {
    pub facts: Vec<String>,
}

/// `docs/conformance.md`.
pub fn markdown(cases: &[Case], skips: &[Skip], run: &Run) -> String {
    let cases: Vec<&Case> = cases
        .iter()
        .filter(|c| !c.name.contains("[BeforeSuite]") && !c.name.contains("[AfterSuite]"))
        .collect();
    let mut md = String::new();
    md.push_str("# critest conformance\n\n");
    md.push_str(
        "Generated by `scripts/conformance` from critest's JUnit report and \
         `scripts/conformance.skip`; do not edit by hand (run the script again).\n\n",
    );
    for f in &run.facts {
        let _ = writeln!(md, "- {f}");
    }
    md.push('\n');

    let mut counts: Vec<(&str, usize)> = Vec::new();
    for c in &cases {
        let (o, _) = outcome(c, skips);
        match counts.iter_mut().find(|(k, _)| *k == o) {
            Some((_, n)) => *n += 1,
            None => counts.push((o, 1)),
        }
    }
    counts.sort();
    md.push_str("| result | specs |\n|---|---:|\n");
    for (o, n) in &counts {
        let _ = writeln!(md, "| {o} | {n} |");
    }
    let _ = writeln!(md, "| total | {} |\n", cases.len());

    md.push_str("## Specs\n\n");
    md.push_str(
        "Failures first, then the rest by name. \"skipped (critest)\" is critest skipping a spec \
         itself (a feature the runtime does not advertise, its benchmarks, NRI without a \
         socket).\n\n",
    );
    md.push_str("| spec | result | seconds | note |\n|---|---|---:|---|\n");
    let mut sorted = cases.clone();
    sorted.sort_by_key(|c| (outcome(c, skips).0 != "FAILED", c.name.clone()));
    for c in sorted {
        let (o, skip) = outcome(c, skips);
        let note = match (o, skip) {
            (_, Some(s)) => s.reason.clone(),
            ("passed", _) => String::new(),
            _ => short(&c.message),
        };
        let _ = writeln!(
            md,
            "| {} | {o} | {:.1} | {} |",
            cell(&c.name),
            c.seconds,
            cell(&note)
        );
    }

    md.push_str("\n## Skip list\n\n");
    md.push_str(
        "`scripts/conformance.skip`: specs whose text contains one of these are not run \
         (`-ginkgo.skip`), for a Linux kernel feature a WebAssembly guest does not have, or an \
         image that cannot be rebuilt offline.\n\n",
    );
    md.push_str("| spec text contains | reason | specs |\n|---|---|---:|\n");
    for s in skips {
        let n = cases.iter().filter(|c| c.name.contains(&s.text)).count();
        let _ = writeln!(md, "| {} | {} | {n} |", cell(&s.text), cell(&s.reason));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skip_list_and_its_regex() {
        let skips = parse_skips(
            "# comment\n\nshould support RunAsUser # no uids\nUid|Username (x) # why\n",
        )
        .unwrap();
        assert_eq!(skips.len(), 2);
        assert_eq!(skips[0].reason, "no uids");
        assert_eq!(
            skip_regex(&skips),
            r"should support RunAsUser|Uid\|Username \(x\)"
        );
        assert!(parse_skips("no reason here\n").is_err());
    }

    #[test]
    fn junit_cases() {
        let xml = r#"<testsuites><testsuite>
<testcase name="[BeforeSuite]" classname="CRI validation" status="passed" time="0.1"></testcase>
<testcase name="[It] [k8s.io] A &#39;b&#39; c" classname="CRI validation" status="failed" time="2.5">
  <failure message="[FAILED] Expected&#xA;  x" type="failed">long</failure>
</testcase>
<testcase name="[It] [k8s.io] Skipped one" classname="CRI validation" status="skipped" time="0">
  <skipped message="skipped"></skipped>
</testcase>
</testsuite></testsuites>"#;
        let cases = parse_junit(xml, "");
        assert_eq!(cases.len(), 3);
        assert_eq!(cases[1].name, "[k8s.io] A 'b' c");
        assert_eq!(cases[1].status, "failed");
        assert_eq!(cases[1].seconds, 2.5);
        assert_eq!(cases[1].message, "[FAILED] Expected\n  x");
        let skips = parse_skips("Skipped # r\n").unwrap();
        let md = markdown(&cases, &skips, &Run { facts: vec![] });
        assert!(md.contains("| [k8s.io] A 'b' c | FAILED | 2.5 | [FAILED] Expected |"));
        assert!(md.contains("| [k8s.io] Skipped one | skipped (list) | 0.0 | r |"));
        assert!(!md.contains("BeforeSuite"));
    }
}
