//! Log lines in memory, so tests can assert what usermeta logged (request ids, audit lines, that no secret
//! appears). The subscriber is process-wide: a test binary installs one, and tests running concurrently look
//! for their own unique values.

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use usermeta::{settings::LogFormat, telemetry};

/// What the subscriber wrote; clones share it.
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// usermeta's own subscriber in `format`, writing here; for the rest of the process.
    pub(crate) fn install(format: LogFormat, filter: &str) -> Captured {
        let captured = Captured::default();
        let writer = captured.clone();
        // Leaked on purpose: the subscriber lives as long as the test process.
        std::mem::forget(
            telemetry::init_with(format, filter, move || writer.clone())
                .expect("the test subscriber installs"),
        );
        captured
    }

    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }

    /// JSON log lines containing `needle`.
    pub(crate) fn lines_with(&self, needle: &str) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .filter(|line| line.contains(needle))
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

static JSON_LOGS: OnceLock<Captured> = OnceLock::new();

/// Installs the test binary's JSON subscriber (once) and returns what it captures.
pub(crate) fn capture() -> &'static Captured {
    JSON_LOGS.get_or_init(|| Captured::install(LogFormat::Json, "usermeta=info"))
}
