//! One process-wide log subscriber for this test binary, writing JSON lines into memory, so tests can assert
//! what usermeta logged (request ids, audit lines). Tests run concurrently: look for your own unique values.

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use usermeta::{settings::LogFormat, telemetry};

#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static LOGS: OnceLock<Captured> = OnceLock::new();

/// Installs the subscriber (once) and returns the captured output.
pub fn capture() -> &'static Captured {
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        // Leaked on purpose: the subscriber lives as long as the test process.
        std::mem::forget(
            telemetry::init_with(LogFormat::Json, "usermeta=info", move || writer.clone())
                .expect("the test subscriber installs"),
        );
        captured
    })
}

impl Captured {
    /// Log lines containing `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|line| line.contains(needle))
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}
