//! The terminal a run reports to: the process's own (the report on stdout, progress and notes on
//! stderr, Ctrl-C to interrupt), or a buffer for a caller that runs `seed` or `bench` in its own
//! process and reads what they printed (the service's tests).

use std::fmt::{Display, Write};
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug, Clone)]
pub struct Console {
    /// Both streams, in the order written; `None` for the process's own.
    buffer: Option<Arc<Mutex<String>>>,
}

impl Console {
    /// stdout and stderr, and Ctrl-C: what the binary runs with.
    pub fn stdio() -> Self {
        Self { buffer: None }
    }

    /// One buffer for both streams (read it with [`Console::text`]); nothing interrupts a run.
    pub fn buffer() -> Self {
        Self {
            buffer: Some(Arc::default()),
        }
    }

    /// A line of the report (stdout).
    pub fn out(&self, line: impl Display) {
        match &self.buffer {
            None => println!("{line}"),
            Some(buffer) => Self::append(buffer, line),
        }
    }

    /// A line of progress, or a note beside the report (stderr).
    pub fn err(&self, line: impl Display) {
        match &self.buffer {
            None => eprintln!("{line}"),
            Some(buffer) => Self::append(buffer, line),
        }
    }

    /// Everything written so far, if this is a buffer; empty otherwise.
    pub fn text(&self) -> String {
        self.buffer.as_ref().map_or_else(String::new, |buffer| {
            buffer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }

    /// Resolves when the person at the terminal presses Ctrl-C; never for a buffer, nor when
    /// SIGINT cannot be listened for.
    pub async fn interrupted(&self) {
        // Only the process's own terminal: listening for SIGINT replaces its default action for
        // the whole process, which a caller running a phase in-process must keep.
        if self.buffer.is_some() || tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    fn append(buffer: &Mutex<String>, line: impl Display) {
        let mut text = buffer.lock().unwrap_or_else(PoisonError::into_inner);
        // Writing to a String cannot fail.
        let _ = writeln!(text, "{line}");
    }
}
