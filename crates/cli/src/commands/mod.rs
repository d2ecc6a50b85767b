//! One module per subcommand, each a thin layer over the pipeline.

pub mod bench;
pub mod compare;
pub mod eval;
pub mod generate;
pub mod models;
