//! The command examples of README.md and docs/ run as written, at a small size.
//!
//! Every ```sh block is either run here or marked with a `# needs: cuda` / `# needs: download`
//! (or any other `# needs:` line) comment, which this test skips. In an unmarked block each command
//! must be `vdit …`, `target/release/vdit …` or `cargo run --release --bin vdit -- …` (run with the
//! binary cargo built for this test) or `cargo test …` (the suite this test belongs to; not run
//! again). Anything else fails, so a new example is either runnable on a CPU or marked.
//!
//! To keep the suite fast, `generate`, `compare` and `eval` get their size flags replaced by
//! `--size 64x64 --frames 5 --steps 2`; every other flag is passed as written. Commands run in a
//! temporary directory (so `-o` files land there) into which the repository's models/ and scripts/
//! are linked, with models/ as the registry.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// The Markdown files whose examples are checked: README.md and every .md under docs/.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// One ```sh block: its commands (continuation lines joined) and whether it is marked `# needs:`.
struct ShellBlock {
    file: PathBuf,
    commands: Vec<String>,
    needs: Option<String>,
}

fn shell_blocks(file: &Path) -> Vec<ShellBlock> {
    let text = std::fs::read_to_string(file).expect("readable markdown");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        match &mut current {
            None if trimmed == "```sh" => current = Some(Vec::new()),
            Some(lines) if trimmed == "```" => {
                blocks.push(parse_block(file, lines));
                current = None;
            }
            Some(lines) => lines.push(line),
            None => {}
        }
    }
    assert!(
        current.is_none(),
        "{}: unclosed ```sh block",
        file.display()
    );
    blocks
}

fn parse_block(file: &Path, lines: &[&str]) -> ShellBlock {
    let mut commands = Vec::new();
    let mut needs = None;
    let mut pending = String::new();
    for line in lines {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix('#') {
            if let Some(what) = rest.trim().strip_prefix("needs:") {
                needs = Some(what.trim().to_string());
            }
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        // A trailing comment after a command is not part of it.
        let code = match trimmed.find("  #") {
            Some(i) => trimmed[..i].trim_end(),
            None => trimmed,
        };
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head.trim_end());
            pending.push(' ');
        } else {
            pending.push_str(code);
            commands.push(std::mem::take(&mut pending));
        }
    }
    if !pending.trim().is_empty() {
        commands.push(pending);
    }
    ShellBlock {
        file: file.to_path_buf(),
        commands,
        needs,
    }
}

/// Splits a command line into words: whitespace separates, '…' and "…" quote.
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unclosed quote in `{line}`");
    if in_word {
        words.push(word);
    }
    words
}

/// What to do with one documented command.
enum Plan {
    /// Run the vdit binary with these arguments.
    Vdit(Vec<String>),
    /// `cargo test …`: the suite this test is part of.
    SelfSuite,
}

fn plan(command: &str) -> Result<Plan, String> {
    let words = split_words(command);
    let args: &[String] = match words.first().map(String::as_str) {
        Some("vdit") | Some("target/release/vdit") => &words[1..],
        Some("cargo") if words.get(1).is_some_and(|w| w == "test") => return Ok(Plan::SelfSuite),
        Some("cargo") => {
            let prefix = ["cargo", "run", "--release", "--bin", "vdit", "--"];
            if words.len() > prefix.len() && words.iter().zip(prefix).all(|(w, p)| w == p) {
                &words[prefix.len()..]
            } else {
                return Err(format!("`{command}` is not a vdit command"));
            }
        }
        _ => return Err(format!("`{command}` is not a vdit command")),
    };
    Ok(Plan::Vdit(shrink(args)))
}

/// The size flags of a generating command replaced by a small size; other flags as written.
fn shrink(args: &[String]) -> Vec<String> {
    let generating = matches!(
        args.first().map(String::as_str),
        Some("generate") | Some("compare") | Some("eval")
    );
    if !generating {
        return args.to_vec();
    }
    let sized = ["--size", "--width", "--height", "--frames", "--steps"];
    let mut out = Vec::new();
    let mut words = args.iter();
    while let Some(word) = words.next() {
        if sized.contains(&word.as_str()) {
            words.next();
        } else if sized.iter().any(|f| word.starts_with(&format!("{f}="))) {
            continue;
        } else {
            out.push(word.clone());
        }
    }
    out.extend(
        ["--size", "64x64", "--frames", "5", "--steps", "2"]
            .iter()
            .map(|s| s.to_string()),
    );
    out
}

#[test]
fn documented_cpu_examples_run() {
    let root = repo_root();
    let blocks: Vec<ShellBlock> = documents(&root)
        .iter()
        .flat_map(|f| shell_blocks(f))
        .collect();
    assert!(
        blocks.len() >= 5,
        "found only {} sh blocks: is the README there?",
        blocks.len()
    );
    let work = tempfile::tempdir().expect("temp dir");
    // Relative paths in the examples (prompt files, results) resolve as they would in a checkout.
    #[cfg(unix)]
    for dir in ["models", "scripts"] {
        std::os::unix::fs::symlink(root.join(dir), work.path().join(dir)).expect("link");
    }
    let mut ran = 0;
    let mut skipped = 0;
    for block in &blocks {
        if let Some(needs) = &block.needs {
            eprintln!("skip ({}): needs {needs}", block.file.display());
            skipped += 1;
            continue;
        }
        for command in &block.commands {
            let plan = plan(command).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; mark its block `# needs: …` or make it a vdit command",
                    block.file.display()
                )
            });
            let Plan::Vdit(args) = plan else {
                continue;
            };
            eprintln!("run ({}): vdit {}", block.file.display(), args.join(" "));
            let output = Command::new(env!("CARGO_BIN_EXE_vdit"))
                .args(&args)
                .current_dir(work.path())
                .env("VDIT_MODELS_DIR", root.join("models"))
                .env("HF_HUB_OFFLINE", "1")
                .output()
                .expect("vdit runs");
            assert!(
                output.status.success(),
                "{}: `{command}` (run as `vdit {}`) failed:\n{}",
                block.file.display(),
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
            ran += 1;
        }
    }
    eprintln!("{ran} commands run, {skipped} blocks skipped (marked # needs:)");
    assert!(ran >= 5, "only {ran} documented commands ran");
}

#[test]
fn size_flags_are_replaced_and_the_rest_kept() {
    let Plan::Vdit(args) =
        plan(r#"vdit generate -p "a red circle" --size 832x480 --frames 81 --seed 3"#).unwrap()
    else {
        panic!("a vdit command")
    };
    assert_eq!(
        args,
        [
            "generate",
            "-p",
            "a red circle",
            "--seed",
            "3",
            "--size",
            "64x64",
            "--frames",
            "5",
            "--steps",
            "2"
        ]
    );
    assert!(plan("bash scripts/gpu/run_all.sh").is_err());
    assert!(matches!(
        plan("cargo test --workspace --release"),
        Ok(Plan::SelfSuite)
    ));
}

#[test]
fn version_names_the_build_features() {
    let output = Command::new(env!("CARGO_BIN_EXE_vdit"))
        .arg("--version")
        .output()
        .expect("vdit runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    let expected = format!("vdit {} (features: ", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&expected), "{text}");
    // A default (CPU) test build has none of the optional backends.
    if !cfg!(feature = "cuda") && !cfg!(feature = "metal") {
        assert_eq!(text.trim_end(), format!("{expected}none)"));
    }
}
