//! vdit's pipeline: text to video with the networks of vdit-models, no command line needed.
//!
//! A model is resolved from the registry, a hub id or a directory ([`registry`], [`hub`]); its
//! [`family`] says which text encoder, transformer(s) and VAE it has; [`settings::resolve`] fills
//! in and checks every setting; [`stages::generate`] runs encode → denoise → decode and writes the
//! video and its JSON sidecar.
//!
//! ```no_run
//! use vdit_pipeline::registry::Registry;
//! use vdit_pipeline::settings::{resolve, GenerateOptions};
//! use vdit_pipeline::stages::generate;
//!
//! # fn main() -> vdit_pipeline::Result<()> {
//! let mut options = GenerateOptions::new("a red circle moving right");
//! options.model = Some("vdit-tiny".into());
//! options.steps = Some(8);
//! options.seed = Some(0);
//! options.output = Some("red-circle.mp4".into());
//! let (settings, files) = resolve(&options, &Registry::discover()?)?;
//! let report = generate(&settings, &files)?;
//! println!("{report}");
//! # Ok(())
//! # }
//! ```

pub mod clip;
pub mod context;
pub mod decoder;
pub mod denoise;
pub mod error;
pub mod eval;
pub mod family;
pub mod guidance_parallel;
pub mod hub;
pub mod hunyuan15;
pub mod image_cond;
pub mod memory;
pub mod metrics;
pub mod offload;
pub mod options;
pub mod output;
pub mod ownership;
pub mod registry;
pub mod resident;
pub mod sampling;
pub mod settings;
pub mod stages;
pub mod step_cache;
pub mod video;

pub use error::{Result, VditError};
