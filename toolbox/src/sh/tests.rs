use super::*;
use crate::applets::testing::{run, run_in};
use std::path::Path;

fn sh(script: &str) -> (i32, String, String) {
    run(&["sh", "-c", script], b"")
}

fn out(script: &str) -> String {
    let (code, out, err) = sh(script);
    assert_eq!((code, err.as_str()), (0, ""), "{script}: {out}");
    out
}

#[test]
fn lists_and_status() {
    assert_eq!(out("echo a; false || echo b; true && echo c"), "a\nb\nc\n");
    assert_eq!(sh("false").0, 1);
    assert_eq!(sh("! true").0, 1);
    assert_eq!(out("false; echo $?; ! false; echo $?"), "1\n0\n");
    assert_eq!(sh("exit 3").0, 3);
    assert_eq!(sh("exit 300").0, 44);
    assert_eq!(out("true || false && echo x"), "x\n");
    assert_eq!(
        sh("echo a; exit 5; echo b"),
        (5, "a\n".into(), String::new())
    );
    assert_eq!(
        sh("nosuch arg"),
        (127, String::new(), "sh: nosuch: not found\n".into())
    );
    assert_eq!(sh("/bin/echo hi").1, "hi\n");
    assert_eq!(sh("/x/nosuch").2, "sh: /x/nosuch: not found\n");
}

#[test]
fn control_flow() {
    assert_eq!(out("for i in 1 2; do echo $i; done | wc -l"), "2\n");
    assert_eq!(
        out("if false; then echo a; elif true; then echo b; else echo c; fi"),
        "b\n"
    );
    assert_eq!(
        out("i=0; while [ $i -lt 3 ]; do echo $i; i=$((i+1)); done"),
        "0\n1\n2\n"
    );
    assert_eq!(
        out("i=0; until [ $i -eq 2 ]; do i=$((i+1)); done; echo $i"),
        "2\n"
    );
    assert_eq!(
        out("for i in 1 2 3; do if [ $i = 2 ]; then continue; fi; echo $i; done"),
        "1\n3\n"
    );
    assert_eq!(
        out("for i in 1 2 3; do for j in a b; do [ $j = b ] && break 2; echo $i$j; done; done"),
        "1a\n"
    );
    assert_eq!(out("while true; do echo once; break; done"), "once\n");
    assert_eq!(
        out("f() { echo \"f:$1:$#\"; return 3; }; f x y; echo $?"),
        "f:x:2\n3\n"
    );
    assert_eq!(
        out("case abc in a*c) echo yes;; *) echo no;; esac"),
        "yes\n"
    );
    assert_eq!(
        out("case x in \"*\") echo star;; *) echo other;; esac"),
        "other\n"
    );
    assert_eq!(out("{ echo a; echo b; } | wc -l"), "2\n");
    assert_eq!(out("x=1; (x=2; echo $x); echo $x"), "2\n1\n");
    assert_eq!(out("(exit 4); echo $?"), "4\n");
    assert_eq!(out("set -- a b c; shift; echo $# $1 \"$@\""), "2 b b c\n");
    assert_eq!(
        sh("set -e; false; echo no"),
        (1, String::new(), String::new())
    );
    assert_eq!(
        out("set -e; false || true; if false; then :; fi; echo yes"),
        "yes\n"
    );
}

#[test]
fn expansions_and_quotes() {
    assert_eq!(out("x='a  b'; echo $x; echo \"$x\""), "a b\na  b\n");
    assert_eq!(
        out("echo 'single $x' \"double \\$x \\\" \\\\\" back\\ slash"),
        "single $x double $x \" \\ back slash\n"
    );
    assert_eq!(
        out("x=5; echo ${x} ${#x} ${y:-def} ${y-un} ${x:+alt} ${z:=set} $z"),
        "5 1 def un alt set set\n"
    );
    assert_eq!(
        out("f=/a/b.tar.gz; echo ${f##*/} ${f%.*} ${f%%.*} ${f#/}"),
        "b.tar.gz /a/b.tar /a/b a/b.tar.gz\n"
    );
    assert_eq!(out("echo $(echo a; echo b) \"$(echo c)\""), "a b c\n");
    assert_eq!(out("echo `echo back`"), "back\n");
    assert_eq!(out("echo \"$(echo \"$(echo nested)\")\""), "nested\n");
    assert_eq!(
        out("echo $((1 + 2 * 3)) $((7 / 2)) $(( -3 % 2 ))"),
        "7 3 -1\n"
    );
    assert_eq!(out("x=$(false); echo $?"), "1\n");
    assert_eq!(out("echo \"\" | wc -c"), "1\n");
    assert_eq!(
        out("set -- \"a b\" c; for a in \"$@\"; do echo \"[$a]\"; done"),
        "[a b]\n[c]\n"
    );
    assert_eq!(out("HOME=/h; echo ~ ~/x a~"), "/h /h/x a~\n");
    assert_eq!(out("echo a#b # comment"), "a#b\n");
    assert_eq!(out("A=1 printenv A; echo ${A:-unset}"), "1\nunset\n");
    assert_eq!(out("export B=2; printenv B"), "2\n");
    assert_eq!(
        sh("echo ${x:?gone}"),
        (2, String::new(), "sh: x: gone\n".into())
    );
    assert_eq!(sh("echo $((1/0))").0, 2);
    assert_eq!(out("echo $0 $1"), "sh\n");
    assert_eq!(
        run(&["sh", "-c", "echo $0 $1 $#", "zero", "one"], b"").1,
        "zero one 1\n"
    );
}

#[test]
fn pipes_and_redirections() {
    let dir = std::env::temp_dir().join(format!("toolbox-sh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run_here = |s: &str| run_in(&dir, &["sh", "-c", s], b"");
    assert_eq!(
        run_here("echo one > f; echo two >> f; cat f").1,
        "one\ntwo\n"
    );
    assert_eq!(run_here("wc -l < f").1, "2\n");
    assert_eq!(
        run_here("cat nosuch 2>&1 | grep -q 'No such file' && echo found").1,
        "found\n"
    );
    assert_eq!(run_here("cat nosuch 2>/dev/null; echo $?").1, "1\n");
    assert_eq!(run_here("echo x >/dev/null").1, "");
    assert_eq!(run_here("echo err 1>&2").2, "err\n");
    assert_eq!(
        run_here("cat < nosuch").2,
        "sh: can't open 'nosuch': No such file or directory\n"
    );
    assert_eq!(
        run_here("echo x > nodir/f").2,
        "sh: can't create nodir/f: No such file or directory\n"
    );
    assert_eq!(
        run_here("mkdir -p d; cd d; pwd; cd ..; pwd").1,
        format!("{0}/d\n{0}\n", dir.display())
    );
    assert_eq!(run_here("touch t && [ -f t ] && echo Found").1, "Found\n");
    assert_eq!(run_here("seq 1 10 | tail -n 3 | head -n 1").1, "8\n");
    assert_eq!(run_here("echo x | read v; echo \"[$v]\"").1, "[]\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn script_from_stdin() {
    let input = b"echo one\nif true; then\n  echo two\nfi\nread line\nthe line\necho \"got $line\"\nexit 7\necho never\n";
    assert_eq!(
        run(&["sh"], input),
        (7, "one\ntwo\ngot the line\n".into(), String::new())
    );
    assert_eq!(run(&["sh"], b""), (0, String::new(), String::new()));
    assert_eq!(
        run(&["sh"], b"echo partial"),
        (0, "partial\n".into(), String::new())
    );
    let (code, _, err) = run(&["sh"], b"if true; then\n");
    assert_eq!(code, 2);
    assert!(
        err.starts_with("sh: syntax error: unexpected end of file"),
        "{err}"
    );
    // `cat` reads the rest of the shell's own input.
    assert_eq!(run(&["sh"], b"cat\nline two\n").1, "line two\n");
    assert_eq!(run(&["sh", "-s", "a"], b"echo $1\n").1, "a\n");
}

#[test]
fn syntax_errors_are_status_2() {
    for s in [
        "fi",
        "if true; then",
        "echo 'x",
        "a |",
        ")",
        "echo $((1 +",
        "cat <<EOF",
    ] {
        let (code, _, err) = sh(s);
        assert_eq!(code, 2, "{s}");
        assert!(err.starts_with("sh: syntax error: "), "{s}: {err}");
    }
}

#[test]
fn glob_patterns() {
    assert!(glob_match("*", ""));
    assert!(glob_match("a*b*c", "axxbyyc"));
    assert!(!glob_match("a*b", "ac"));
    assert!(glob_match("[a-c]?", "bz"));
    assert!(glob_match("[!a]", "b"));
    assert!(glob_match("\\*", "*"));
    assert!(!glob_match("\\*", "x"));
    assert!(glob_match("[", "["));
}

#[test]
fn nesting_is_bounded() {
    assert_eq!(sh("f() { f; }; f").0, 2);
    let deep = format!(
        "f() {{ {}f{}; }}; f",
        "if true; then ".repeat(40),
        "; fi".repeat(40)
    );
    assert_eq!(
        sh(&deep),
        (2, String::new(), "sh: too deeply nested\n".into())
    );
    assert_eq!(sh("x='eval \"$x\"'; eval \"$x\"").0, 2);
    assert_eq!(sh("sh -c 'echo deep'").1, "deep\n");
    let (code, _, _) = run(
        &[
            "sh",
            "-c",
            "sh -c 'sh -c \"sh -c \\\"sh -c \\\\\\\"echo x\\\\\\\"\\\"\"'",
        ],
        b"",
    );
    assert_eq!(code, 0);
}

/// A small deterministic generator (xorshift), so that failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

#[test]
fn garbage_text_never_panics_the_parser() {
    let alphabet: Vec<char> = "ab $(){}[]'\"\\`|&;<>!#=*?~-+%:0123456789\n\tifthenfidoedone"
        .chars()
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..4000 {
        let len = (rng.next() % 60) as usize;
        let s: String = (0..len)
            .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
            .collect();
        let _ = parse::parse(&s);
    }
    // Some pathological shapes.
    for s in [
        "$((",
        "${",
        "${#",
        "${:",
        "$(()",
        "\\",
        "'",
        "`",
        "((((",
        "${x:-${x:-${x:-",
        "f() f",
        "case",
        "case x in",
        "for 1 in",
        "$((((1))))",
    ] {
        let _ = parse::parse(s);
    }
}

#[test]
fn garbage_scripts_never_panic_the_shell() {
    // Words that run only harmless applets (no sleep, no files), joined with the shell's
    // syntax; endless loops end when the step budget is spent.
    let vocab = [
        "echo",
        "true",
        "false",
        "test",
        "[",
        "]",
        "seq",
        "1",
        "3",
        "wc",
        "-l",
        "x",
        "$x",
        "$?",
        "$#",
        "$@",
        "\"$x\"",
        "${x:-d}",
        "${#x}",
        "${x%a}",
        "x=1",
        "x=$((x+1))",
        "$((1/0))",
        "$((x",
        "$(",
        ")",
        "(",
        "`",
        "'",
        "\"",
        ";",
        ";;",
        "&&",
        "||",
        "|",
        "!",
        "&",
        "\n",
        "if",
        "then",
        "elif",
        "else",
        "fi",
        "while",
        "until",
        "do",
        "done",
        "for",
        "in",
        "case",
        "esac",
        "{",
        "}",
        "f()",
        "f",
        "return",
        "break",
        "continue",
        "exit",
        "shift",
        "set",
        "-e",
        "--",
        "eval",
        "read",
        "cat",
        "<",
        ">",
        ">>",
        "2>&1",
        "/dev/null",
        ":",
        "grep",
        "-q",
        "head",
        "-n",
        "tail",
        "printenv",
        "env",
        "export",
        "unset",
        "local",
    ];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..1500 {
        let len = 1 + (rng.next() % 25) as usize;
        let script: Vec<&str> = (0..len).map(|_| rng.pick(&vocab)).collect();
        let script = script.join(" ");
        let (mut io, _, _) = Io::buffers(b"some input\nmore\n");
        io.out = Sink::Null;
        io.err = Sink::Null;
        let mut ctx = Ctx::new_in(Path::new("/nonexistent-toolbox-dir"));
        ctx.steps = Some(200);
        let argv = vec!["sh".to_string(), "-c".to_string(), script];
        let code = crate::dispatch(&mut ctx, &mut io, &argv);
        assert!((0..=255).contains(&code), "{:?}: {code}", argv[2]);
    }
}
