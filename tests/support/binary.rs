//! The real `usermeta` binary, as an operator starts it, for tests where the environment and the command line
//! take part.

use std::process::{Command, Output};

/// Runs `usermeta args` with `env` and none of this process's `USERMETA_` variables.
pub(crate) fn run_usermeta(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_usermeta"));
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("USERMETA_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes `text` to a file `name` in a directory of this test process, and returns its path.
pub(crate) fn write_config(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("usermeta-config-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}
