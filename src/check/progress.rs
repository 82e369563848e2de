//! A one-line spinner on stderr for slow steps, shown only when stderr is a
//! terminal (never in pipes, logs or tests).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sync::Recover;
use tokio::task::JoinHandle;

const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

#[derive(Debug)]
pub struct Progress {
    message: Arc<Mutex<String>>,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// A spinner when `enabled` (stderr is a terminal), else a no-op.
    /// Must be called inside a tokio runtime when enabled.
    pub fn start(enabled: bool) -> Progress {
        let message = Arc::new(Mutex::new(String::new()));
        let task = enabled.then(|| {
            let message = message.clone();
            tokio::spawn(async move {
                let mut frame = 0usize;
                loop {
                    tokio::time::sleep(Duration::from_millis(120)).await;
                    let text = message.locked().clone();
                    if !text.is_empty() {
                        let mut err = std::io::stderr().lock();
                        let _ = write!(err, "\r\x1b[2K{} {text}", FRAMES[frame % FRAMES.len()]);
                        let _ = err.flush();
                    }
                    frame += 1;
                }
            })
        });
        Progress { message, task }
    }

    /// A disabled indicator.
    pub fn none() -> Progress {
        Progress {
            message: Arc::new(Mutex::new(String::new())),
            task: None,
        }
    }

    /// Names the step now running.
    pub fn step(&self, text: impl Into<String>) {
        if self.task.is_some() {
            *self.message.locked() = text.into();
        }
    }

    /// Stops the spinner and clears its line.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}
