//! What the runner tells the operator as it goes: one line per step, with
//! the time since the run started, on stdout and in `chaos.log` of the run
//! directory.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Console {
    start: Instant,
    file: Mutex<Option<File>>,
}

impl Console {
    pub fn new() -> Console {
        Console {
            start: Instant::now(),
            file: Mutex::new(None),
        }
    }

    /// From now on, lines also go to `path`.
    pub fn log_to(&self, path: &Path) {
        let file = OpenOptions::new().create(true).append(true).open(path).ok();
        if let Ok(mut guard) = self.file.lock() {
            *guard = file;
        }
    }

    pub fn say(&self, message: impl AsRef<str>) {
        let line = format!(
            "[{:>7.1}s] {}",
            self.start.elapsed().as_secs_f64(),
            message.as_ref()
        );
        // A closed stdout (`| head`) must not end the run half way.
        let _ = writeln!(std::io::stdout(), "{line}");
        if let Ok(mut guard) = self.file.lock()
            && let Some(file) = guard.as_mut()
        {
            let _ = writeln!(file, "{line}");
        }
    }
}

impl Default for Console {
    fn default() -> Self {
        Console::new()
    }
}
