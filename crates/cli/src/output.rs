//! Standard output that a closed pipe ends quietly.
//!
//! `onephase saga show ID | head -1` closes the pipe after one line; `println!` would then
//! panic. Every line goes through [`line()`] instead: a closed pipe ends the process with
//! status 0 (the reader has what it wanted), any other write error with a message and 1.

use std::io::Write as _;

/// Writes one line to standard output (see the module docs for a closed pipe).
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` for the CLI: see [`line()`].
macro_rules! outln {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;
