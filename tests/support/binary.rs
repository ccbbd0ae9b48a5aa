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

/// `usermeta serve` as its own process, listening on a free port of 127.0.0.1, until it is killed (on drop, or
/// by [`Served::kill`], as a crash or an OOM kill would: no shutdown of any kind).
pub(crate) struct Served {
    pub addr: std::net::SocketAddr,
    child: std::process::Child,
}

impl Served {
    /// Starts it with `env` (and none of this process's `USERMETA_` variables) and waits until it listens.
    pub(crate) fn start(env: &[(&str, &str)]) -> Served {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_usermeta"));
        command.arg("serve");
        for (key, _) in std::env::vars() {
            if key.starts_with("USERMETA_") {
                command.env_remove(key);
            }
        }
        let listen = addr.to_string();
        command
            .envs(env.iter().copied())
            .env("USERMETA_LISTEN", &listen)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let child = command.spawn().expect("usermeta starts");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "usermeta serve did not listen on {addr}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Served { addr, child }
    }

    /// SIGKILL: the process ends where it stands.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}
