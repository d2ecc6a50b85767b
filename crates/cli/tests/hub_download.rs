//! Hub resolution against a local stand-in for the Hugging Face hub (HF_ENDPOINT): `vdit
//! generate --model owner/name` lists the repo, downloads what the run needs into the hf-hub
//! cache, and generates; then `--offline` regenerates from the cache alone with the server gone.

mod common;

use common::tiny_model;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

const REPO: &str = "vdit-test/tiny-wan";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn repo_files(dir: &Path, root: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            repo_files(&path, root, out);
        } else {
            out.push(
                path.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/"),
            );
        }
    }
}

/// Answers one HTTP/1.1 request the way the hub does for hf-hub: the repo listing, and file
/// downloads with Range support plus the etag / x-repo-commit / content-range headers.
fn answer(mut stream: TcpStream, files: &[String], downloads: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut range: Option<(usize, Option<usize>)> = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("range: bytes=") {
            let (a, b) = value.trim().split_once('-').unwrap();
            range = Some((a.parse().unwrap(), b.parse().ok()));
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let listing = format!("/api/models/{REPO}/revision/main");
    let file_prefix = format!("/{REPO}/resolve/main/");
    let (status, headers, body): (&str, Vec<String>, Vec<u8>) = if path == listing {
        let siblings: Vec<String> = files
            .iter()
            .map(|f| format!("{{\"rfilename\":\"{f}\"}}"))
            .collect();
        let json = format!(
            "{{\"sha\":\"{COMMIT}\",\"siblings\":[{}]}}",
            siblings.join(",")
        );
        (
            "200 OK",
            vec!["Content-Type: application/json".into()],
            json.into_bytes(),
        )
    } else if let Some(name) = path
        .strip_prefix(&file_prefix)
        .filter(|n| files.iter().any(|f| f == n))
    {
        let bytes = std::fs::read(tiny_model().join(name)).unwrap();
        let mut hasher = DefaultHasher::new();
        name.hash(&mut hasher);
        bytes.hash(&mut hasher);
        let etag = format!("{:016x}", hasher.finish());
        let (start, end) = match range {
            Some((a, b)) => (a, b.unwrap_or(bytes.len() - 1).min(bytes.len() - 1)),
            None => (0, bytes.len() - 1),
        };
        if range.is_some_and(|(a, b)| !(a == 0 && b == Some(0))) {
            downloads.fetch_add(1, Ordering::SeqCst);
        }
        let headers = vec![
            format!("ETag: \"{etag}\""),
            format!("X-Repo-Commit: {COMMIT}"),
            format!("Content-Range: bytes {start}-{end}/{}", bytes.len()),
        ];
        ("206 Partial Content", headers, bytes[start..=end].to_vec())
    } else {
        ("404 Not Found", vec![], b"not found".to_vec())
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for header in headers {
        response.push_str(&header);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.write_all(&body);
    let _ = stream.flush();
    // Drain anything left so the client sees a clean close.
    let _ = reader.read(&mut [0u8; 1]);
}

struct FakeHub {
    endpoint: String,
    stop: Arc<AtomicBool>,
    downloads: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeHub {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let mut files = Vec::new();
        repo_files(&tiny_model(), &tiny_model(), &mut files);
        let stop = Arc::new(AtomicBool::new(false));
        let downloads = Arc::new(AtomicUsize::new(0));
        let (stop2, downloads2) = (stop.clone(), downloads.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        answer(stream, &files, &downloads2);
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        Self {
            endpoint,
            stop,
            downloads,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop();
    }
}

fn generate(endpoint: &str, cache: &Path, out: &Path, offline: bool) -> std::process::Output {
    let mut args = vec![
        "generate",
        "-p",
        "a red circle moving right",
        "--model",
        REPO,
        "--size",
        "48x32",
        "--frames",
        "9",
        "--steps",
        "2",
        "--seed",
        "1",
        "--device",
        "cpu",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    args.extend(["-o".to_string(), out.display().to_string()]);
    if offline {
        args.push("--offline".into());
    }
    Command::new(env!("CARGO_BIN_EXE_vdit"))
        .args(&args)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", "0")
        .env_remove("HF_TOKEN")
        .env_remove("VDIT_MODELS_DIR")
        .output()
        .unwrap()
}

#[test]
fn hub_models_download_into_the_cache_then_run_offline() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub-cache");
    let mut hub = FakeHub::start();

    let out = dir.path().join("online.gif");
    let run = generate(&hub.endpoint, &cache, &out, false);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(out.is_file());
    // tokenizer.json, three configs, three weight files, the scheduler config and
    // model_index.json (which names the family of a model the registry lacks).
    let downloads = hub.downloads.load(Ordering::SeqCst);
    assert_eq!(downloads, 9, "{stderr}");
    let snapshot = cache
        .join("models--vdit-test--tiny-wan/snapshots")
        .join(COMMIT);
    assert!(snapshot
        .join("transformer/diffusion_pytorch_model.safetensors")
        .exists());
    // The scheduler_config.json of the repo supplied the shift (3) of a model the registry lacks.
    assert!(stderr.contains("shift 3"), "{stderr}");

    // A second online run finds everything in the cache: no new downloads.
    let run = generate(&hub.endpoint, &cache, &dir.path().join("again.gif"), false);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(hub.downloads.load(Ordering::SeqCst), downloads);

    // Offline with the hub gone: the cache alone suffices, and gives the same video.
    hub.stop();
    let offline_out = dir.path().join("offline.gif");
    let run = generate("http://127.0.0.1:9", &cache, &offline_out, true);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&offline_out).unwrap()
    );

    // Offline with an empty cache: a clear error naming the cache, no network attempt needed.
    let run = generate(
        "http://127.0.0.1:9",
        &dir.path().join("empty"),
        &dir.path().join("x.gif"),
        true,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("offline") && stderr.contains("models--vdit-test--tiny-wan"),
        "{stderr}"
    );
}
