//! Standard output for the subcommands (through [`outln!`] and [`out!`]):
//! a reader that stopped reading (`airlift deployment list | head`) ends
//! the program quietly with status 0, as ripgrep does, instead of the
//! panic `println!` gives when stdout's pipe is closed.

use std::io::Write;

/// Writes `args` to stdout; exits when stdout is gone.
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = stdout.write_fmt(args) {
        gone(&err);
    }
}

/// What to do with an error writing stdout: a closed pipe ends the
/// program quietly; anything else ends it with the error.
pub fn gone(err: &std::io::Error) -> ! {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("airlift: cannot write to stdout: {err}");
    std::process::exit(2);
}

/// Whether an error (the chain `run` returned) is stdout's reader going away.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(|e| e.io_error_kind())
                == Some(std::io::ErrorKind::BrokenPipe)
    })
}
