//! The one-shot commands behind `fipsrelay SUBCOMMAND`: `check-config`,
//! `version`, `diagnose`, `demo`, `tuning check`, `probe`, `reload` and
//! `migrate`. Each runs,
//! prints its report on stdout and returns a typed error or an outcome that
//! `main` turns into the exit status.
//!
//! None of them starts the long-running relay in this process (that is
//! `control::run`; `demo` starts one as a child process) or changes the
//! host (`reload` asks the running relay, which decides); `main` only parses
//! arguments and dispatches here.

pub mod check_config;
pub mod demo;
pub mod diagnose;
pub mod migrate;
pub mod probe;
pub mod reload;
pub mod tuning;
pub mod version;
