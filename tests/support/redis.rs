//! A real `redis-server` per test, for the fleet's tests.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A `redis-server` of this test alone, on a free port, without persistence; killed on drop.
pub(crate) struct Redis {
    pub(crate) port: u16,
    child: Child,
}

impl Redis {
    pub(crate) fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Redis::start_on(port)
    }

    pub(crate) fn start_on(port: u16) -> Redis {
        Redis::start_with(port, &[])
    }

    /// With `config` as further `redis-server` arguments.
    pub(crate) fn start_with(port: u16, config: &[&str]) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server runs (Debian: apt-get install redis-server; .ci/run installs it)",
            );
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { port, child }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
