//! Captured logs of the local runtime's processes: every line a child writes (stdout
//! and stderr) goes to `<data_dir>/logs/<instance>.log`, rotated by size
//! (`<instance>.log.1`, `.2`, …), and to live followers of the `Logs` RPC.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::sync::broadcast;

/// Longest line kept; longer lines are cut and marked.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Most lines a tail request returns.
pub const MAX_TAIL_LINES: usize = 10_000;

/// A captured line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The instance that wrote it.
    pub instance: String,
    /// The text, without its newline.
    pub text: String,
    /// When it was captured (ms since the epoch).
    pub time_ms: i64,
}

/// Rotation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// A file is rotated once it reaches this size.
    pub max_bytes: u64,
    /// Rotated files kept besides the current one.
    pub keep: u32,
}

/// Where the logs are, and who follows them.
#[derive(Debug)]
pub struct LogHub {
    dir: PathBuf,
    rotation: Rotation,
    followers: Mutex<HashMap<String, broadcast::Sender<Line>>>,
}

impl LogHub {
    /// Logs under `dir` (created when missing).
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn new(dir: PathBuf, rotation: Rotation) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&dir)?;
        Ok(Arc::new(Self {
            dir,
            rotation,
            followers: Mutex::new(HashMap::new()),
        }))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, instance: &str) -> PathBuf {
        self.dir.join(format!("{instance}.log"))
    }

    fn sender(&self, service: &str) -> broadcast::Sender<Line> {
        let mut followers = self.followers.lock().unwrap_or_else(|e| e.into_inner());
        followers
            .entry(service.to_owned())
            .or_insert_with(|| broadcast::channel(1024).0)
            .clone()
    }

    /// Live lines of every instance of `service` from now on, including instances
    /// that start later.
    pub fn follow(&self, service: &str) -> broadcast::Receiver<Line> {
        self.sender(service).subscribe()
    }

    /// The last `n` lines of `instance` (from the current and rotated files).
    pub fn tail(&self, instance: &str, n: usize) -> Vec<String> {
        let n = n.min(MAX_TAIL_LINES);
        let mut lines: Vec<String> = Vec::new();
        let mut files = vec![self.path(instance)];
        files.extend((1..=self.rotation.keep).map(|k| rotated(&self.path(instance), k)));
        for file in files {
            if lines.len() >= n {
                break;
            }
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            let older: Vec<String> = text.lines().map(str::to_owned).collect();
            let want = n - lines.len();
            let start = older.len().saturating_sub(want);
            let mut chunk = older[start..].to_vec();
            chunk.append(&mut lines);
            lines = chunk;
        }
        lines
    }

    /// Copies every line of `stream` into the log of `instance` (of `service`) until
    /// it ends.
    pub async fn capture(
        self: Arc<Self>,
        service: String,
        instance: String,
        stream: impl AsyncRead + Unpin,
    ) {
        let mut reader = BufReader::new(stream);
        let mut buffer = Vec::new();
        let sender = self.sender(&service);
        loop {
            buffer.clear();
            match (&mut reader)
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut buffer)
                .await
            {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let cut = buffer.last() != Some(&b'\n') && buffer.len() > MAX_LINE_BYTES;
            let mut text = String::from_utf8_lossy(&buffer)
                .trim_end_matches(['\n', '\r'])
                .to_owned();
            if cut {
                text.truncate(text.floor_char_boundary(MAX_LINE_BYTES));
                text.push_str(" …[cut]");
                // Skip the rest of the long line, a bounded piece at a time.
                let mut rest = Vec::new();
                loop {
                    rest.clear();
                    match (&mut reader)
                        .take(MAX_LINE_BYTES as u64)
                        .read_until(b'\n', &mut rest)
                        .await
                    {
                        Ok(0) | Err(_) => break,
                        Ok(_) if rest.last() == Some(&b'\n') => break,
                        Ok(_) => {}
                    }
                }
            }
            if let Err(error) = self.append(&instance, &text) {
                tracing::warn!(%error, instance, "log line not written");
            }
            let _ = sender.send(Line {
                instance: instance.clone(),
                text,
                time_ms: omnimesh_common::time::now_ms(),
            });
        }
    }

    /// Appends one line, rotating first when the file is full. The file is opened in
    /// append mode and each line is one write, so the stdout and stderr capture tasks of
    /// an instance never interleave within a line.
    fn append(&self, instance: &str, text: &str) -> std::io::Result<()> {
        let path = self.path(instance);
        let size = std::fs::metadata(&path).map_or(0, |meta| meta.len());
        if size + text.len() as u64 + 1 > self.rotation.max_bytes && size > 0 {
            for k in (1..self.rotation.keep).rev() {
                let _ = std::fs::rename(rotated(&path, k), rotated(&path, k + 1));
            }
            if self.rotation.keep > 0 {
                std::fs::rename(&path, rotated(&path, 1))?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let mut line = Vec::with_capacity(text.len() + 1);
        line.extend_from_slice(text.as_bytes());
        line.push(b'\n');
        file.write_all(&line)
    }
}

fn rotated(path: &Path, k: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{k}"));
    PathBuf::from(name)
}

use tokio::io::AsyncReadExt as _;

/// The level of a line, read from our JSON logs (`"level":"WARN"`) or plain text.
pub fn level_of(line: &str) -> u8 {
    let upper = line
        .get(..line.len().min(200))
        .unwrap_or(line)
        .to_ascii_uppercase();
    for (word, level) in [
        ("ERROR", 4),
        ("WARN", 3),
        ("INFO", 2),
        ("DEBUG", 1),
        ("TRACE", 0),
    ] {
        if upper.contains(word) {
            return level;
        }
    }
    2
}

/// `error`, `warn`, `info`, `debug` (or empty: everything) as a minimum level.
pub fn min_level(name: &str) -> Option<u8> {
    match name.to_ascii_lowercase().as_str() {
        "" | "trace" => Some(0),
        "debug" => Some(1),
        "info" => Some(2),
        "warn" | "warning" => Some(3),
        "error" => Some(4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_captured_rotated_tailed_and_followed() {
        let dir = tempfile::tempdir().unwrap();
        let hub = LogHub::new(
            dir.path().join("logs"),
            Rotation {
                max_bytes: 100,
                keep: 2,
            },
        )
        .unwrap();
        let mut follower = hub.follow("svc");
        let input: String = (0..60).map(|n| format!("line {n:02}\n")).collect();
        Arc::clone(&hub)
            .capture("svc".into(), "svc-0".into(), input.as_bytes())
            .await;
        // 8 bytes a line, 100 per file: the current file and two rotated ones remain.
        let tail = hub.tail("svc-0", 5);
        assert_eq!(
            tail,
            ["line 55", "line 56", "line 57", "line 58", "line 59"]
        );
        let all = hub.tail("svc-0", 1000);
        assert!(all.len() < 60 && all.len() > 24, "{}", all.len());
        assert_eq!(all.last().unwrap(), "line 59");
        assert!(dir.path().join("logs/svc-0.log.2").exists());
        assert!(!dir.path().join("logs/svc-0.log.3").exists());
        assert_eq!(follower.recv().await.unwrap().text, "line 00");
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_bytes_are_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let hub = LogHub::new(
            dir.path().to_path_buf(),
            Rotation {
                max_bytes: 1 << 20,
                keep: 1,
            },
        )
        .unwrap();
        let mut input = vec![b'x'; MAX_LINE_BYTES * 3];
        input.extend_from_slice(b"\nafter\n\xff\xfe binary\n");
        Arc::clone(&hub)
            .capture("s".into(), "i".into(), &input[..])
            .await;
        let tail = hub.tail("i", 10);
        assert_eq!(
            tail.len(),
            3,
            "{:?}",
            tail.iter().map(String::len).collect::<Vec<_>>()
        );
        assert!(tail[0].ends_with("…[cut]") && tail[0].len() < MAX_LINE_BYTES + 20);
        assert_eq!(tail[1], "after");
        assert!(tail[2].contains("binary"));
        assert!(hub.tail("nobody", 10).is_empty());
    }

    #[test]
    fn levels() {
        assert_eq!(level_of(r#"{"level":"WARN","msg":"x"}"#), 3);
        assert_eq!(level_of("2026 ERROR boom"), 4);
        assert_eq!(level_of("plain"), 2);
        assert_eq!(min_level("warn"), Some(3));
        assert_eq!(min_level("loud"), None);
    }
}
