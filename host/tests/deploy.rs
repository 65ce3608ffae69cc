//! Running the host for real, checked with the tools that will run it: the
//! systemd unit under `systemd-analyze`, the example settings file under the
//! binary itself, and the command line's habits (completions a shell
//! accepts, man pages, JSON logs, exit codes). None needs the stack.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::repo;

fn projector(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_projector"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .envs(env.iter().copied())
        .current_dir(repo())
        .output()
        .expect("the projector binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn component(domain: &str) -> String {
    common::components_dir()
        .join(format!("{domain}.wasm"))
        .display()
        .to_string()
}

#[test]
fn the_systemd_unit_verifies_and_its_sandbox_exposure_is_low() {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/projector.service")).unwrap();
    for directive in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=projector",
        "--log-format json run",
    ] {
        assert!(unit.contains(directive), "the unit lacks {directive}");
    }
    // systemd checks that ExecStart exists: point it at the built binary.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("projector.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/projector", env!("CARGO_BIN_EXE_projector")),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package) runs");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        text(&verify)
    );
    // systemd's own score of the sandboxing: 0 (locked down) to 10.
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        security.status.success(),
        "exposure over 2.0:\n{}",
        text(&security)
    );
}

#[test]
fn the_example_settings_file_is_accepted_and_a_misspelt_key_is_refused() {
    let example = repo().join("deploy/projector.example.toml");
    let example = example.to_str().unwrap();
    let out = projector(
        &["--config", example, "check", "--json", &component("order")],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["ok"], true, "the example's grants admit order");

    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.toml");
    std::fs::write(
        &typo,
        std::fs::read_to_string(example)
            .unwrap()
            .replace("lag_error_threshold", "lag_eror_threshold"),
    )
    .unwrap();
    let out = projector(
        &[
            "--config",
            typo.to_str().unwrap(),
            "check",
            &component("order"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("lag_eror_threshold"), "{}", text(&out));
}

#[test]
fn exit_codes_are_what_the_help_says() {
    let help = text(&projector(&["--help"], &[]));
    assert!(help.contains("Exit status:"), "{help}");
    // 2: usage.
    assert_eq!(projector(&["no-such-command"], &[]).status.code(), Some(2));
    assert_eq!(projector(&["status", "--jsn"], &[]).status.code(), Some(2));
    // 2: settings.
    let bad = projector(
        &["check", &component("user")],
        &[("PROJECTOR_BATCH_SIZE", "many")],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    // 0 and 1: a component accepted, then one refused (not a component).
    assert_eq!(
        projector(&["check", &component("user")], &[]).status.code(),
        Some(0)
    );
    let refused = projector(&["check", "--json", "Cargo.toml"], &[]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let report: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(report[0]["ok"], false);
    assert!(report[0]["reason"].as_str().unwrap().len() > 10, "{report}");
    // 1: a service that does not answer.
    let down = projector(
        &["status"],
        &[(
            "MYSQL_URL",
            "mysql://projector:projector@127.0.0.1:1/projector",
        )],
    );
    assert_eq!(down.status.code(), Some(1), "{}", text(&down));
}

/// The subcommands `projector --help` lists.
fn subcommands() -> Vec<String> {
    let help = text(&projector(&["--help"], &[]));
    let commands = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap();
    let names: Vec<String> = commands
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_owned)
        .collect();
    assert!(names.len() >= 15, "{names:?}");
    names
}

#[test]
fn completions_parse_in_their_shell_and_name_every_subcommand() {
    let names = subcommands();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = projector(&["completions", shell], &[]);
        assert!(out.status.success(), "{shell}: {}", text(&out));
        let script = String::from_utf8(out.stdout).unwrap();
        for name in &names {
            assert!(script.contains(name.as_str()), "{shell} lacks {name}");
        }
        if shell == "bash" {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("projector.bash");
            std::fs::write(&file, &script).unwrap();
            // Sourced in a real bash, it registers the completion function.
            let check = Command::new("bash")
                .arg("-c")
                .arg(format!(
                    "source {} && complete -p projector",
                    file.display()
                ))
                .output()
                .unwrap();
            assert!(check.status.success(), "{}", text(&check));
            assert!(String::from_utf8_lossy(&check.stdout).contains("-F _projector"));
        }
    }
}

#[test]
fn man_pages_cover_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = projector(&["man", "--dir", dir.path().to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let page = |name: &str| -> String {
        let path: PathBuf = dir.path().join(format!("{name}.1"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let main = page("projector");
    assert!(main.contains(".TH projector 1"), "{main}");
    assert!(main.contains(".SH SUBCOMMANDS"), "{main}");
    for name in subcommands() {
        let sub = page(&format!("projector-{name}"));
        assert!(sub.contains(&format!(".TH projector-{name} 1")), "{sub}");
        assert!(sub.contains(".SH NAME"), "{sub}");
    }
    let list = page("projector-dlq-list");
    assert!(list.contains("json"), "{list}");
    assert!(Path::new(&dir.path().join("projector-dlq-redrive.1")).exists());
}

#[test]
fn json_logs_are_one_object_per_line() {
    let args = ["--log-format", "json", "check", &component("user")];
    let out = projector(&args, &[("RUST_LOG", "debug")]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "no log lines at debug");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        assert!(
            v["message"].is_string() || v["target"].is_string(),
            "{line}"
        );
    }
    // The default stays text for people.
    let out = projector(&args[2..], &[("RUST_LOG", "debug")]);
    let first = String::from_utf8(out.stderr).unwrap();
    let first = first.lines().next().unwrap_or_default().to_owned();
    assert!(
        serde_json::from_str::<serde_json::Value>(&first).is_err(),
        "{first}"
    );
}
