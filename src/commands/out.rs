//! Printing a command's result to stdout without panicking on a closed
//! pipe (`trueup render DIR | head -1`).
//!
//! `println!` panics when stdout is gone; these macros return the write
//! error instead, and `main` ends quietly when the cause is a closed pipe.
//! SIGPIPE stays ignored on purpose: trueup also writes into pipes to
//! child processes (gpgv, ssh-keygen), where a reader that quits early
//! must be an error, not a silent death.

use std::fmt;
use std::io::Write;

/// Like `print!`, returning the write error from the enclosing function.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::commands::out::write(format_args!($($arg)*))?
    };
}

/// Like `println!`, returning the write error from the enclosing function.
macro_rules! outln {
    () => {
        $crate::commands::out::write(format_args!("\n"))?
    };
    ($($arg:tt)*) => {
        $crate::commands::out::write(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// Like `println!` for progress lines of a longer operation (a rollout):
/// a closed stdout neither panics nor stops the operation.
macro_rules! progressln {
    ($($arg:tt)*) => {{
        let _ = $crate::commands::out::write(format_args!("{}\n", format_args!($($arg)*)));
    }};
}

pub(crate) use {out, outln, progressln};

/// Writes to stdout.
pub fn write(args: fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(args)?;
    stdout.flush()
}

/// Whether an error, anywhere in its chain, is stdout's reader having gone
/// away: the command's output is no longer wanted, and that is no failure.
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let kind = cause
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| {
                cause
                    .downcast_ref::<serde_json::Error>()
                    .and_then(serde_json::Error::io_error_kind)
            });
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}
