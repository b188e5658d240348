//! Container logs in the CRI format (`RFC3339NANO STREAM P|F TEXT`), rotated by size.
//!
//! A line longer than [`MAX_LINE`] is cut into `P` (partial) records followed by one `F`
//! (full) record, as containerd does, so readers can join them again. Rotation renames
//! `PATH` → `PATH.1` → `PATH.2` …, keeping `max_files` files in all (the live one included).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The longest line written as one record; longer ones are split into partial records.
pub const MAX_LINE: usize = 16 * 1024;

/// Which output a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A size-rotated CRI log file. Shared between a container's stdout and stderr copiers.
pub struct CriLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
}

impl CriLog {
    /// Opens (appending to) the log at `path`, creating its directory if needed.
    pub fn open(path: &Path, max_size: u64, max_files: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            max_size: max_size.max(1),
            max_files: max_files.max(1),
        })
    }

    /// Writes one record; `partial` marks a piece of a longer line.
    pub fn write_record(&mut self, stream: Stream, partial: bool, text: &[u8]) -> io::Result<()> {
        let mut record = Vec::with_capacity(text.len() + 48);
        record.extend_from_slice(timestamp_now().as_bytes());
        record.push(b' ');
        record.extend_from_slice(stream.as_str().as_bytes());
        record.extend_from_slice(if partial { b" P " } else { b" F " });
        record.extend_from_slice(text);
        record.push(b'\n');
        if self.size > 0 && self.size + record.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(&record)?;
        self.size += record.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.max_files > 1 {
            // The oldest falls off the end; the others move up by one.
            let _ = std::fs::remove_file(numbered(self.max_files - 1));
            for n in (1..self.max_files - 1).rev() {
                let from = numbered(n);
                if from.exists() {
                    std::fs::rename(&from, numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        } else {
            self.file.set_len(0)?;
        }
        self.size = 0;
        Ok(())
    }
}

/// `2024-01-01T00:00:00.000000000Z`: RFC 3339 in UTC with nanoseconds, fixed width.
pub fn timestamp_now() -> String {
    let now = jiff::Timestamp::now();
    format!(
        "{}.{:09}Z",
        now.strftime("%Y-%m-%dT%H:%M:%S"),
        now.subsec_nanosecond()
    )
}

/// Copies `input` into `log` as records of `stream` until end of file, splitting lines
/// as described in the module documentation. Returns when the writer side is closed.
pub fn copy_stream(mut input: impl Read, stream: Stream, log: Arc<Mutex<CriLog>>) {
    let mut pending: Vec<u8> = Vec::with_capacity(MAX_LINE);
    let mut buf = vec![0u8; 32 * 1024];
    let write = |partial: bool, text: &[u8]| {
        let mut log = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // A full disk must not stop the container: the record is dropped.
        let _ = log.write_record(stream, partial, text);
    };
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + pos];
            for (i, chunk) in line.chunks(MAX_LINE).enumerate() {
                let last = (i + 1) * MAX_LINE >= line.len();
                write(!last, chunk);
            }
            if line.is_empty() {
                write(false, b"");
            }
            start += pos + 1;
        }
        pending.drain(..start);
        while pending.len() >= MAX_LINE {
            write(true, &pending[..MAX_LINE]);
            pending.drain(..MAX_LINE);
        }
    }
    if !pending.is_empty() {
        write(false, &pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(path: &Path) -> Vec<(String, String, String)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let ts = parts.next().unwrap().to_string();
                assert_eq!(ts.len(), 30, "{ts}");
                (
                    parts.next().unwrap().to_string(),
                    parts.next().unwrap().to_string(),
                    parts.next().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn lines_partials_and_trailing_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let log = Arc::new(Mutex::new(CriLog::open(&path, 10 << 20, 5).unwrap()));
        let long = "x".repeat(MAX_LINE + 10);
        let input = format!("hello\n\n{long}\ntail");
        copy_stream(input.as_bytes(), Stream::Stderr, log);
        let recs = records(&path);
        let want = [
            ("stderr", "F", "hello".to_string()),
            ("stderr", "F", String::new()),
            ("stderr", "P", "x".repeat(MAX_LINE)),
            ("stderr", "F", "x".repeat(10)),
            ("stderr", "F", "tail".to_string()),
        ];
        assert_eq!(recs.len(), want.len());
        for (got, want) in recs.iter().zip(want) {
            assert_eq!(
                (got.0.as_str(), got.1.as_str(), got.2.as_str()),
                (want.0, want.1, want.2.as_str())
            );
        }
    }

    #[test]
    fn rotation_keeps_the_configured_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let mut log = CriLog::open(&path, 200, 3).unwrap();
        for i in 0..40 {
            log.write_record(Stream::Stdout, false, format!("line {i}").as_bytes())
                .unwrap();
        }
        assert!(path.exists());
        assert!(dir.path().join("c.log.1").exists());
        assert!(dir.path().join("c.log.2").exists());
        assert!(!dir.path().join("c.log.3").exists());
        for p in [path.clone(), dir.path().join("c.log.1")] {
            assert!(std::fs::metadata(&p).unwrap().len() <= 200);
        }
        let last = records(&path);
        assert_eq!(last.last().unwrap().2, "line 39");
    }
}
