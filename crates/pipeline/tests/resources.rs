//! The memory and time a run needs, estimated before anything loads (`vdit_pipeline::memory`):
//! an impossible size is one error line, a slow CPU run a warning, an ordinary run neither.

mod common;

use common::shipped_model_options;
use vdit_pipeline::registry::Registry;
use vdit_pipeline::settings::{resolve, GenerateOptions};
use vdit_pipeline::VditError;

fn options(dir: &std::path::Path) -> GenerateOptions {
    shipped_model_options(dir, "x.mp4", 1)
}

#[test]
fn an_ordinary_run_passes_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let (settings, _) = resolve(&options(dir.path()), &Registry::default()).unwrap();
    assert!(settings.warnings.is_empty(), "{:?}", settings.warnings);
}

#[test]
fn impossible_sizes_are_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    for (size, frames) in [
        (Some((1 << 20, 1 << 20)), None),
        (None, Some(4_000_000_001)),
        (Some((65536, 65536)), None),
    ] {
        let mut o = options(dir.path());
        o.size = size;
        o.frames = frames;
        match resolve(&o, &Registry::default()) {
            Err(VditError::InvalidSetting(line)) => {
                assert!(!line.contains('\n'), "{line}");
                assert!(line.contains("needs about"), "{line}");
            }
            Err(other) => panic!("{size:?} {frames:?}: {other}"),
            Ok(_) => panic!("{size:?} {frames:?} was accepted"),
        }
    }
}

#[test]
fn a_long_cpu_run_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    // vdit-tiny at 1024x1024, 81 frames, 30 steps: hours of sampling on a few cores, half an
    // hour on 64; about 6 GB with the tiled decode.
    o.size = Some((1024, 1024));
    o.frames = Some(81);
    o.vae_tiling = true;
    let (settings, _) = resolve(&o, &Registry::default()).unwrap();
    assert_eq!(settings.warnings.len(), 1, "{:?}", settings.warnings);
    assert!(
        settings.warnings[0].contains("on the CPU")
            && settings.warnings[0].contains("will take about"),
        "{:?}",
        settings.warnings
    );
}
