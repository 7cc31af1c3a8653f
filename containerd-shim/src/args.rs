//! The command line containerd gives a shim: Go-style flags (`-name value`, `--name=value`)
//! and an action.

use std::path::PathBuf;

#[derive(Debug, Default, PartialEq)]
pub struct Args {
    pub namespace: String,
    pub id: String,
    pub bundle: Option<PathBuf>,
    pub action: String,
}

impl Args {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut out = Args::default();
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                if !out.action.is_empty() {
                    return Err(format!("unexpected argument {arg:?}"));
                }
                out.action = arg;
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (flag, None),
            };
            // Boolean flags take no value.
            if matches!(name, "debug" | "v" | "version" | "info") {
                if name != "debug" {
                    out.action = name.to_owned();
                }
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .ok_or_else(|| format!("flag -{name} needs a value"))?,
            };
            match name {
                "namespace" => out.namespace = value,
                "id" => out.id = value,
                "bundle" => out.bundle = Some(PathBuf::from(value)),
                // containerd's own address and binary: the daemon publishes events to the
                // TTRPC_ADDRESS in the environment instead.
                "address" | "publish-binary" | "socket" => {}
                other => return Err(format!("unknown flag -{other}")),
            }
        }
        if out.action.is_empty() {
            return Err("no action (start or delete)".into());
        }
        if matches!(out.action.as_str(), "start" | "delete") && out.id.is_empty() {
            return Err("-id is required".into());
        }
        if out.namespace.is_empty() {
            out.namespace = "default".into();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, String> {
        Args::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn containerd_command_lines() {
        let a = parse("-namespace k8s.io -address /run/containerd/containerd.sock -publish-binary /usr/bin/containerd -id abc -debug start").unwrap();
        assert_eq!(
            (a.namespace.as_str(), a.id.as_str(), a.action.as_str()),
            ("k8s.io", "abc", "start")
        );
        let d = parse("--namespace=default --id=x --bundle=/b delete").unwrap();
        assert_eq!(d.bundle, Some(PathBuf::from("/b")));
        assert_eq!(d.action, "delete");
        assert!(parse("-id x").unwrap_err().contains("no action"));
        assert!(parse("start").unwrap_err().contains("-id"));
        assert!(parse("-id x -bogus 1 start").unwrap_err().contains("bogus"));
        assert!(parse("-id").unwrap_err().contains("needs a value"));
    }
}
