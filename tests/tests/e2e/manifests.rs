//! `wasmpod run` and its manifests as a user meets them: typos refused as `kubectl apply`
//! refuses them (with the path and the field meant), flags checked rather than panicking, and
//! no colour codes where stderr is not a terminal (journald).

use std::path::Path;

use wasmpod_runtime::error::ErrorKind;
use wasmpod_runtime::manifest::{PodManifest, UnknownFields};
use wasmpod_tests::*;

/// A pod of one `hello` container whose entry is `container` (flow YAML), with a volume `v`.
fn hello_pod(container: &str) -> String {
    let image = wasm("hello.p1");
    let container = container.replace("IMAGE", &image.display().to_string());
    pod_yaml(
        "typo",
        "Never",
        &format!("\n  volumes: [{{name: v, emptyDir: {{}}}}]\n  containers:\n    - {container}\n"),
    )
}

/// Runs `wasmpod <args…> run [run_args…] <yaml>`; returns (exit code, stdout, stderr).
fn cli_run(dir: &Path, run_args: &[&str], yaml: &str) -> (Option<i32>, String, String) {
    let manifest = manifest_file(dir, "pod.yaml", yaml);
    let mut cmd = wasmpod(&dir.join("state"));
    cmd.arg("run").args(run_args).arg(&manifest);
    let out = output_within(&mut cmd, 120);
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code(), text(&out.stdout), stderr)
}

#[test]
fn typos_are_errors_naming_the_path_and_the_field_meant() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "{name: hello, image: IMAGE, comand: [x]}",
            "spec.containers[0].comand (did you mean command?)",
        ),
        (
            "{name: hello, image: IMAGE, volumeMounts: [{name: v, mountPath: /v, readonly: true}]}",
            "spec.containers[0].volumeMounts[0].readonly (did you mean readOnly?)",
        ),
        (
            "{name: hello, image: IMAGE, resources: {limts: {memory: 64Mi}}}",
            "spec.containers[0].resources.limts (did you mean limits?)",
        ),
    ];
    for (container, want) in cases {
        let yaml = hello_pod(container);
        let err = PodManifest::parse(&yaml, tmp.path()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidArgument);
        assert!(err.message.contains(want), "{want}: {err}");
        let (code, stdout, stderr) = cli_run(tmp.path(), &[], &yaml);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(want), "{want}: {stderr}");
        assert!(stderr.contains("--warn-unknown-fields"), "{stderr}");
        assert!(stdout.is_empty(), "the pod ran: {stdout}");
    }
}

#[test]
fn fields_kubernetes_defines_keep_their_precise_treatment() {
    let tmp = tempfile::tempdir().unwrap();
    // Refused: what a Wasm pod cannot keep.
    let yaml = hello_pod(
        "{name: hello, image: IMAGE, env: [{name: A, valueFrom: {fieldRef: {fieldPath: x}}}]}",
    );
    let err = PodManifest::parse(&yaml, tmp.path()).unwrap_err();
    assert!(err.message.contains("valueFrom"), "{err}");
    assert!(!err.message.contains("unknown field"), "{err}");
    let yaml =
        hello_pod("{name: hello, image: IMAGE}").replace("volumes:", "hostPID: true\n  volumes:");
    let err = PodManifest::parse(&yaml, tmp.path()).unwrap_err();
    assert!(err.message.contains("hostPID"), "{err}");
    assert!(!err.message.contains("unknown field"), "{err}");
    let yaml =
        hello_pod("{name: hello, image: IMAGE}").replace("emptyDir: {}", "configMap: {name: c}");
    let err = PodManifest::parse(&yaml, tmp.path()).unwrap_err();
    assert!(
        err.message
            .contains("spec.volumes[0].configMap: only emptyDir and hostPath volumes"),
        "{err}"
    );
    // Ignored with a warning: it means nothing to a Wasm pod, and is no typo.
    let m = PodManifest::parse(
        &hello_pod("{name: hello, image: IMAGE, readinessProbe: {exec: {command: [x]}}}"),
        tmp.path(),
    )
    .unwrap();
    assert_eq!(
        m.warnings,
        ["spec.containers[0].readinessProbe: ignored, wasmpod does not use it"]
    );
}

#[test]
fn warn_unknown_fields_runs_the_pod_with_a_warning() {
    require_guests();
    let tmp = tempfile::tempdir().unwrap();
    let yaml = hello_pod("{name: hello, image: IMAGE, comand: [x]}");
    let m = PodManifest::parse_with(&yaml, tmp.path(), UnknownFields::Warn).unwrap();
    assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
    let (code, stdout, stderr) = cli_run(tmp.path(), &["--warn-unknown-fields"], &yaml);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("hello | Hello from wasmpod!"), "{stdout}");
    assert!(
        stderr.lines().any(|l| l.starts_with("warning: ")
            && l.contains("spec.containers[0].comand")
            && l.contains("did you mean command?")),
        "{stderr}"
    );
}

#[test]
fn out_of_range_durations_are_refused_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = hello_pod("{name: hello, image: IMAGE}");
    for (value, want) in [
        ("1e300", "too large"),
        ("inf", "too large"),
        ("-1", "cannot be negative"),
        ("NaN", "not a number of seconds"),
        ("soon", "not a number of seconds"),
    ] {
        let (code, stdout, stderr) = cli_run(tmp.path(), &["--backoff", value], &yaml);
        assert_eq!(code, Some(2), "--backoff {value}: {stderr}");
        assert!(
            stderr.contains("--backoff") && stderr.contains(want),
            "--backoff {value}: {stderr}"
        );
        assert!(stdout.is_empty(), "the pod ran: {stdout}");
    }
}

#[test]
fn no_colour_codes_when_stderr_is_not_a_terminal() {
    require_guests();
    let tmp = tempfile::tempdir().unwrap();
    let manifest = manifest_file(
        tmp.path(),
        "pod.yaml",
        &hello_pod("{name: hello, image: IMAGE}"),
    );
    let mut cmd = wasmpod(&tmp.path().join("state"));
    // Debug lines of our own crate: the log lines journald would receive.
    cmd.env("RUST_LOG", "wasmpod_runtime=debug")
        .env_remove("NO_COLOR")
        .arg("run")
        .arg(&manifest);
    let out = output_within(&mut cmd, 120);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("DEBUG"), "no log lines to check: {stderr}");
    assert!(!stderr.contains("\x1b["), "colour codes: {stderr:?}");
}

/// The README's synopsis of `wasmpod run` lists exactly the flags `--help` shows, with the
/// same value names.
#[test]
fn readme_synopsis_matches_help() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section = &readme[readme
        .find("## `wasmpod run`")
        .expect("a wasmpod run section")..];
    let synopsis: String = section
        .lines()
        .skip(1)
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.starts_with("    "))
        .collect();
    // Each `[--flag VALUE]`, brackets inside VALUE (`HOST[:PORT]`) included.
    let mut in_readme = Vec::new();
    for (start, _) in synopsis.match_indices("[--") {
        let mut depth = 0;
        let end = synopsis[start..]
            .find(|c| {
                depth += match c {
                    '[' => 1,
                    ']' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .expect("a closing bracket");
        in_readme.push(&synopsis[start + 3..start + end]);
    }
    let out = output_within(
        wasmpod(Path::new("/nonexistent")).args(["run", "--help"]),
        60,
    );
    let help = text(&out.stdout);
    let mut in_help: Vec<String> = help
        .lines()
        .filter_map(|l| {
            l.trim_start()
                .split("--")
                .nth(1)
                .filter(|_| l.contains("  --"))
        })
        .map(|flag| flag.replace(['<', '>'], ""))
        .filter(|flag| flag != "help")
        .collect();
    in_readme.sort();
    in_help.sort();
    assert_eq!(in_readme, in_help, "README synopsis vs --help:\n{help}");
}
