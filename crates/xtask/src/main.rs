//! `cargo xtask ci`: the checks CI runs, in CI's order, from any directory of the workspace.
//!
//! - `cargo xtask ci` runs every gate below and stops at the first that fails, then prints how long each took;
//! - `cargo xtask ci GATE...` runs the gates named (`cargo xtask ci clippy test`);
//! - `cargo xtask ci --all` runs all of CI (`.ci/run`): it installs its tools, runs these gates, then the smoke
//!   runs, the book, the contract, the deployment files, the interop clients and the Envoy examples.
//!
//! The gates are cargo's; the checks that need other tools stay in `scripts/`, which `.ci/run` calls.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

/// One check CI runs: its name on the command line, what it proves, and how.
struct Gate {
    name: &'static str,
    what: &'static str,
    run: fn(&Path) -> Result<(), String>,
}

/// The gates in CI's order: the quick ones first, so a slip fails in seconds rather than after the tests.
const GATES: &[Gate] = &[
    Gate {
        name: "fmt",
        what: "cargo fmt --check",
        run: |root| run(cargo(root).args(["fmt", "--check"])),
    },
    Gate {
        name: "doc",
        what: "the crate docs (the layout) build and their links resolve (cargo doc, warnings as errors)",
        run: |root| {
            let mut doc = cargo(root);
            doc.env("RUSTDOCFLAGS", "-D warnings")
                .args(["doc", "--locked", "--no-deps"]);
            doc.args([
                "-p",
                "usermeta",
                "-p",
                "usermeta-zitadel",
                "-p",
                "zitadel-standin",
            ]);
            run(&mut doc)
        },
    },
    Gate {
        name: "layers",
        what: "no import cycles between modules: layers point down (scripts/check-module-cycles.sh)",
        run: |root| {
            run(Command::new("bash")
                .current_dir(root)
                .arg("scripts/check-module-cycles.sh"))
        },
    },
    Gate {
        name: "clippy",
        what: "cargo clippy --all-targets -- -D warnings",
        run: |root| {
            run(cargo(root).args([
                "clippy",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ]))
        },
    },
    Gate {
        name: "test",
        what: "cargo test (the README's test command)",
        run: |root| run(cargo(root).args(["test", "--locked"])),
    },
    Gate {
        name: "fuzz",
        what: "a short fuzz run: every property test named fuzz at 5000 cases (the book, \"Developing usermeta\")",
        run: |root| {
            let mut fuzz = cargo(root);
            fuzz.env("PROPTEST_CASES", "5000");
            fuzz.args([
                "test",
                "--locked",
                "--lib",
                "-p",
                "usermeta",
                "-p",
                "usermeta-zitadel",
                "fuzz",
            ]);
            run(&mut fuzz)
        },
    },
    Gate {
        name: "production",
        what: "the production build leaves the stand-in out (usermeta --no-default-features)",
        run: production,
    },
    Gate {
        name: "deny",
        what: "cargo deny check bans licenses sources (deny.toml; offline)",
        run: |root| {
            // cargo-deny reads the crates' own files offline: fetch any a fresh machine lacks.
            run(cargo(root).args(["fetch", "--locked"]))?;
            run(Command::new("bash").current_dir(root).args([
                "scripts/cargo-deny.sh",
                "check",
                "bans",
                "licenses",
                "sources",
            ]))
        },
    },
];

const USAGE: &str = "usage: cargo xtask ci [--all | GATE...]
  (no gate)  every gate below, in this order
  GATE...    the gates named
  --all      all of CI (.ci/run): these gates, then the checks that need other tools
gates:";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let root = workspace_root();
    let outcome = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["ci", "--all"] => run(Command::new("bash").current_dir(&root).arg(".ci/run")),
        ["ci", names @ ..] => chosen(names).and_then(|gates| run_gates(&root, &gates)),
        _ => Err(usage()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The gates named on the command line, in CI's order; all of them when none is named.
fn chosen(names: &[&str]) -> Result<Vec<&'static Gate>, String> {
    if let Some(unknown) = names
        .iter()
        .find(|name| !GATES.iter().any(|gate| gate.name == **name))
    {
        return Err(format!("no gate `{unknown}`\n{}", usage()));
    }
    Ok(GATES
        .iter()
        .filter(|gate| names.is_empty() || names.contains(&gate.name))
        .collect())
}

/// Runs the gates one after the other, stopping at the first that fails, and prints what each took.
fn run_gates(root: &Path, gates: &[&Gate]) -> Result<(), String> {
    let started = Instant::now();
    let mut took = Vec::new();
    for gate in gates {
        println!("== {}", gate.what);
        let gate_started = Instant::now();
        (gate.run)(root).map_err(|error| format!("gate `{}` failed: {error}", gate.name))?;
        took.push((gate.name, gate_started.elapsed()));
    }
    println!("== passed in {}:", seconds(started.elapsed()));
    for (name, elapsed) in took {
        println!("   {name:<10} {:>7}", seconds(elapsed));
    }
    Ok(())
}

/// `cargo build -p usermeta --no-default-features`, then `cargo tree` proves zitadel-standin is not in it.
fn production(root: &Path) -> Result<(), String> {
    let without_dev = ["-p", "usermeta", "--no-default-features"];
    run(cargo(root).args(["build", "--locked"]).args(without_dev))?;
    let tree = cargo(root)
        .args(["tree", "--locked", "-e", "normal"])
        .args(without_dev)
        .output()
        .map_err(|error| format!("cargo tree did not start: {error}"))?;
    if !tree.status.success() {
        return Err(format!("cargo tree exited with {}", tree.status));
    }
    if String::from_utf8_lossy(&tree.stdout).contains("zitadel-standin") {
        return Err("zitadel-standin is a dependency of usermeta without the dev feature".into());
    }
    Ok(())
}

/// The cargo that runs this task (so the toolchain is the one `rust-toolchain.toml` chose), in the workspace.
fn cargo(root: &Path) -> Command {
    let mut command = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root);
    command
}

/// Runs a command with the terminal as its output; an error when it cannot start or does not exit 0.
fn run(command: &mut Command) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|error| format!("{command:?} did not start: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} exited with {status}"))
    }
}

/// The workspace root: this crate lives in `crates/xtask/`.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn usage() -> String {
    let gates: Vec<String> = GATES
        .iter()
        .map(|gate| format!("  {:<10} {}", gate.name, gate.what))
        .collect();
    format!("{USAGE}\n{}", gates.join("\n"))
}

fn seconds(elapsed: Duration) -> String {
    format!("{:.0} s", elapsed.as_secs_f64())
}
