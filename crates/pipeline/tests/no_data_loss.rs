//! The video writers never lose a user's file and never leave a partial output: a file vdit did
//! not write is refused (and kept), a png sequence appears whole or not at all, a shorter re-run
//! leaves none of the longer run's frames, and a killed run's temporary folder is removed by the
//! next run. The command-line side is in crates/cli/tests/no_data_loss.rs.

use std::path::{Path, PathBuf};

use vdit_pipeline::ownership::{sidecar_path, TEMP_PREFIX};
use vdit_pipeline::video::{
    existing_frames, png_frame_path, read_video, write_video, write_video_replacing, Replace,
    VideoError, VideoFrames, VideoSink,
};

/// `frames` frames of `width`x`height`, frame `t` filled with grey level `t * 10 + shade`.
fn clip(width: u32, height: u32, frames: usize, shade: u8) -> VideoFrames {
    let len = (width * height * 3) as usize;
    VideoFrames::new(
        width,
        height,
        (0..frames)
            .map(|t| vec![(t as u8).wrapping_mul(10).wrapping_add(shade); len])
            .collect(),
    )
    .unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn frame_names(out: &Path, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            png_frame_path(out, i)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[test]
fn foreign_mp4_gif_and_png_outputs_are_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.mp4", "b.gif", "c_00001.png"] {
        std::fs::write(dir.path().join(name), b"the user's own file").unwrap();
    }
    for out in ["a.mp4", "b.gif", "c.png"] {
        let err = write_video(&dir.path().join(out), &clip(16, 16, 3, 0), 16).unwrap_err();
        assert!(matches!(err, VideoError::Foreign { .. }), "{out}: {err}");
        let message = err.to_string();
        assert!(
            message.contains("--overwrite") && message.contains("did not write"),
            "{out}: {message}"
        );
        assert!(!message.contains('\n'), "one line: {message}");
    }
    // Nothing replaced, nothing added (no temporary file or folder left either).
    assert_eq!(names(dir.path()), vec!["a.mp4", "b.gif", "c_00001.png"]);
    for name in ["a.mp4", "b.gif", "c_00001.png"] {
        assert_eq!(
            std::fs::read(dir.path().join(name)).unwrap(),
            b"the user's own file"
        );
    }
    // --overwrite replaces them; the png sequence also removes the foreign frame of its pattern.
    for out in ["a.mp4", "b.gif", "c.png"] {
        let path = dir.path().join(out);
        write_video_replacing(&path, &clip(16, 16, 1, 0), 16, Replace::Always).unwrap();
        assert_eq!(read_video(&path).unwrap().video.frame_count(), 1, "{out}");
    }
    assert!(!dir.path().join("c_00001.png").exists());
}

#[test]
fn an_output_its_sidecar_lists_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clip.mp4");
    std::fs::write(&out, b"an earlier vdit video").unwrap();
    // A sidecar of another program (no vdit_version) does not make the file vdit's.
    std::fs::write(sidecar_path(&out), r#"{"files": ["clip.mp4"]}"#).unwrap();
    assert!(write_video(&out, &clip(16, 16, 2, 0), 16).is_err());
    std::fs::write(
        sidecar_path(&out),
        r#"{"vdit_version": "0.1.0", "files": ["clip.mp4"]}"#,
    )
    .unwrap();
    write_video(&out, &clip(16, 16, 2, 0), 16).unwrap();
    assert_eq!(read_video(&out).unwrap().video.frame_count(), 2);
}

/// Before the fix a shorter run wrote its 3 frames over the first 3 of 9 and the sequence read
/// back as 9 frames of two runs.
#[test]
fn a_shorter_png_rerun_leaves_none_of_the_longer_runs_frames() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seq.png");
    write_video(&out, &clip(8, 8, 9, 0), 16).unwrap();
    assert_eq!(names(dir.path()), frame_names(&out, 9));
    let short = clip(8, 8, 3, 5);
    write_video(&out, &short, 16).unwrap();
    assert_eq!(names(dir.path()), frame_names(&out, 3));
    assert_eq!(read_video(&out).unwrap().video, short);
    // Files of other names are not part of the sequence and stay.
    std::fs::write(dir.path().join("seq.txt"), b"notes").unwrap();
    std::fs::write(dir.path().join("seq_1.png"), b"not five digits").unwrap();
    write_video(&out, &clip(8, 8, 2, 0), 16).unwrap();
    let mut expected = frame_names(&out, 2);
    expected.extend(["seq.txt".to_string(), "seq_1.png".to_string()]);
    expected.sort();
    assert_eq!(names(dir.path()), expected);
}

/// A write that fails part-way leaves no frame of the new sequence (before the fix, the frames
/// before the failure stayed and read back as a complete short clip). The failure here: a
/// directory where frame 5 must go.
#[test]
fn a_png_sequence_that_fails_part_way_leaves_no_frame() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seq.png");
    std::fs::create_dir(png_frame_path(&out, 5)).unwrap();
    let err = write_video_replacing(&out, &clip(8, 8, 9, 0), 16, Replace::Always).unwrap_err();
    assert!(err.to_string().contains("seq_00005.png"), "{err}");
    assert_eq!(
        names(dir.path()),
        vec!["seq_00005.png"],
        "only the obstacle"
    );
    assert!(read_video(&out).is_err(), "no sequence to read");
}

/// A run killed before `finish` (here: the sink is leaked, as `kill -9` would leave it) has
/// written no frame under the final names; its temporary folder is hidden and named for vdit,
/// and the next run in the directory removes the folder once its process is gone.
#[test]
fn an_interrupted_png_sequence_leaves_only_a_hidden_folder_the_next_run_removes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seq.png");
    let mut sink = VideoSink::create(&out, 16).unwrap();
    sink.push(clip(8, 8, 5, 0)).unwrap();
    std::mem::forget(sink);
    assert!(existing_frames(&out).is_empty());
    let left = names(dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with(TEMP_PREFIX), "{left:?}");
    assert!(left[0].contains("seq.png"), "{left:?}");

    // The same folder as a killed process would leave it: its pid is that of a finished child.
    let child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    let mut child = child;
    child.wait().unwrap();
    let ours = format!("{TEMP_PREFIX}{}-", std::process::id());
    let killed = left[0].replacen(&ours, &format!("{TEMP_PREFIX}{dead_pid}-"), 1);
    std::fs::rename(dir.path().join(&left[0]), dir.path().join(&killed)).unwrap();

    write_video(&out, &clip(8, 8, 2, 0), 16).unwrap();
    assert_eq!(names(dir.path()), frame_names(&out, 2));
}

/// Every frame vdit writes carries its marker, so a later run may replace the sequence without
/// a sidecar; frames without it are another program's.
#[test]
fn png_frames_are_recognised_as_vdit_s_by_their_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seq.png");
    write_video(&out, &clip(8, 8, 4, 0), 16).unwrap();
    // No sidecar: the chunk alone lets the next run replace the frames.
    write_video(&out, &clip(8, 8, 4, 7), 16).unwrap();
    let frames: Vec<PathBuf> = existing_frames(&out).into_iter().map(|(_, p)| p).collect();
    assert_eq!(frames.len(), 4);
    // A png of another program at frame 2 stops the next run.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/vdit-tiny/samples_128x128x17.png"),
        &frames[2],
    )
    .unwrap();
    let err = write_video(&out, &clip(8, 8, 4, 0), 16).unwrap_err();
    assert!(err.to_string().contains("seq_00002.png"), "{err}");
}
