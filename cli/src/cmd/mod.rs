//! One module per top-level subcommand: clap arguments and the code that
//! calls the library and prints.

pub mod image;
pub mod pool;
pub mod run;
pub mod snapshot;
