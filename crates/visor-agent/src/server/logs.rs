//! Container logs as `kubectl logs` shows them, read from the CRI-format files the runtime
//! writes.
//!
//! Each line of a log file is `RFC3339NANO STREAM TAG CONTENT`, where STREAM is `stdout` or
//! `stderr` and TAG is `F` for a full line or `P` for a partial one that the next entry of the
//! same stream continues (the runtime splits long lines). Files rotate by size: `PATH` is the
//! newest, `PATH.1` the one before, `PATH.2` older still. A reader presents them oldest first
//! as one log, joining partial entries back into whole lines, and applies the options of the
//! pod log API ([`LogOptions`]): `tailLines`, `sinceSeconds`/`sinceTime`, `timestamps`,
//! `limitBytes`, and `follow`, which keeps reading new entries (across rotation) until the
//! container stops.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;

/// How often a follower looks for new entries, rotation and the container's end.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Output is handed on in chunks of about this size.
const CHUNK: usize = 32 * 1024;
/// Rotated files beyond this many are not looked for.
const MAX_ROTATED: usize = 64;

/// The options of `GET /containerLogs/...`, as the pod log API names them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub tail_lines: Option<u64>,
    /// Entries older than this are skipped (`sinceSeconds` or `sinceTime`).
    pub since: Option<Timestamp>,
    pub timestamps: bool,
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    /// Parses the query string; a malformed value is an error naming the parameter.
    pub fn parse(query: Option<&str>, now: Timestamp) -> Result<LogOptions, String> {
        let mut options = LogOptions::default();
        let mut since_seconds = None;
        let mut since_time = None;
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "follow" => options.follow = parse_bool(&key, &value)?,
                "previous" => options.previous = parse_bool(&key, &value)?,
                "timestamps" => options.timestamps = parse_bool(&key, &value)?,
                "tailLines" => {
                    let n: i64 = value
                        .parse()
                        .map_err(|_| format!("tailLines: invalid integer {value:?}"))?;
                    // Upstream treats a negative count as "all lines".
                    options.tail_lines = (n >= 0).then_some(n as u64);
                }
                "limitBytes" => {
                    let n: i64 = value
                        .parse()
                        .map_err(|_| format!("limitBytes: invalid integer {value:?}"))?;
                    if n < 1 {
                        return Err("limitBytes: must be greater than 0".into());
                    }
                    options.limit_bytes = Some(n as u64);
                }
                "sinceSeconds" => {
                    let n: i64 = value
                        .parse()
                        .map_err(|_| format!("sinceSeconds: invalid integer {value:?}"))?;
                    if n < 1 {
                        return Err("sinceSeconds: must be greater than 0".into());
                    }
                    since_seconds = Some(n);
                }
                "sinceTime" => {
                    let t: Timestamp = value
                        .parse()
                        .map_err(|e| format!("sinceTime: invalid RFC 3339 time {value:?}: {e}"))?;
                    since_time = Some(t);
                }
                _ => {}
            }
        }
        options.since = match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                return Err("at most one of sinceTime or sinceSeconds may be specified".into());
            }
            (Some(seconds), None) => Some(
                now.checked_sub(jiff::SignedDuration::from_secs(seconds))
                    .unwrap_or(Timestamp::MIN),
            ),
            (None, time) => time,
        };
        Ok(options)
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "" | "true" | "1" | "True" | "TRUE" | "t" | "T" => Ok(true),
        "false" | "0" | "False" | "FALSE" | "f" | "F" => Ok(false),
        other => Err(format!("{key}: invalid boolean {other:?}")),
    }
}

/// One entry of a CRI log file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// As written, so output with `timestamps` shows the runtime's own precision.
    time_text: String,
    time: Timestamp,
    stderr: bool,
    partial: bool,
    content: Vec<u8>,
}

/// Parses one line (without its newline). Lines that are not CRI entries are skipped by the
/// caller, as upstream's reader does with a line it cannot parse.
fn parse_entry(line: &[u8]) -> Option<Entry> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let time_text = std::str::from_utf8(fields.next()?).ok()?;
    let time: Timestamp = time_text.parse().ok()?;
    let stderr = match fields.next()? {
        b"stdout" => false,
        b"stderr" => true,
        _ => return None,
    };
    // The tag may carry more flags after ':' in future runtimes; only P/F matter.
    let tag = fields.next()?;
    let partial = match tag.split(|b| *b == b':').next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some(Entry {
        time_text: time_text.to_string(),
        time,
        stderr,
        partial,
        content: fields.next().unwrap_or_default().to_vec(),
    })
}

/// A whole log line: partial entries of one stream joined, stamped with the first one's time.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Line {
    time_text: String,
    time: Timestamp,
    content: Vec<u8>,
    /// Whether the line ended (an `F` entry); an unfinished line at the end of a stopped
    /// container's log is shown without a newline.
    complete: bool,
}

/// Joins partial entries into lines, per stream (stdout and stderr interleave in one file).
#[derive(Default)]
struct Joiner {
    pending: [Option<Line>; 2],
}

impl Joiner {
    fn push(&mut self, entry: Entry) -> Option<Line> {
        let slot = &mut self.pending[entry.stderr as usize];
        let line = slot.get_or_insert_with(|| Line {
            time_text: entry.time_text.clone(),
            time: entry.time,
            content: Vec::new(),
            complete: false,
        });
        line.content.extend_from_slice(&entry.content);
        if entry.partial {
            return None;
        }
        let mut line = slot.take()?;
        line.complete = true;
        Some(line)
    }

    /// Unfinished lines, oldest first (the log ended with a partial entry).
    fn drain(&mut self) -> Vec<Line> {
        let mut lines: Vec<Line> = self.pending.iter_mut().filter_map(Option::take).collect();
        lines.sort_by_key(|l| l.time);
        lines
    }
}

/// The files of one log, oldest first: `PATH.N` … `PATH.1`, `PATH`.
fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=MAX_ROTATED)
        .map(|n| rotated(path, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_path_buf());
    files
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Renders lines under the options' filters and limits, handing out chunks of bytes.
struct Renderer<'a> {
    options: &'a LogOptions,
    out: Vec<u8>,
    written: u64,
}

impl<'a> Renderer<'a> {
    fn new(options: &'a LogOptions) -> Self {
        Renderer {
            options,
            out: Vec::with_capacity(CHUNK),
            written: 0,
        }
    }

    fn wanted(&self, line: &Line) -> bool {
        self.options.since.is_none_or(|since| line.time >= since)
    }

    /// Adds a line; returns false once `limitBytes` is reached (nothing more is to be sent).
    fn add(&mut self, line: &Line) -> bool {
        let mut text = Vec::with_capacity(line.content.len() + 40);
        if self.options.timestamps {
            text.extend_from_slice(line.time_text.as_bytes());
            text.push(b' ');
        }
        text.extend_from_slice(&line.content);
        if line.complete {
            text.push(b'\n');
        }
        if let Some(limit) = self.options.limit_bytes {
            let room = limit.saturating_sub(self.written) as usize;
            text.truncate(room);
        }
        self.written += text.len() as u64;
        self.out.extend_from_slice(&text);
        self.options
            .limit_bytes
            .is_none_or(|limit| self.written < limit)
    }

    fn take_if_full(&mut self) -> Option<Bytes> {
        (self.out.len() >= CHUNK).then(|| self.take())
    }

    fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::replace(&mut self.out, Vec::with_capacity(CHUNK)))
    }
}

/// Reads a log once, start to end, with the options' filters; for `follow`, see [`follow`].
/// `emit` receives chunks and returns false when the reader should stop (the client left).
///
/// Returns where reading of the newest file stopped (its identity and offset) and the joiner
/// holding any unfinished line, so a follower continues from there.
fn read_all(
    path: &Path,
    options: &LogOptions,
    emit: &mut dyn FnMut(Bytes) -> bool,
) -> io::Result<ReadState> {
    let mut joiner = Joiner::default();
    let mut renderer = Renderer::new(options);
    let mut tail: VecDeque<Line> = VecDeque::new();
    let mut state = ReadState::default();
    let mut stop = false;
    let files = log_files(path);
    for (i, file) in files.iter().enumerate() {
        let newest = i + 1 == files.len();
        let handle = match File::open(file) {
            Ok(f) => f,
            // Rotated away between listing and opening; its successor is still read.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !newest => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // No file yet: the container has not written anything.
                break;
            }
            Err(e) => return Err(e),
        };
        let identity = handle.metadata()?.ino();
        let mut reader = BufReader::new(handle);
        let offset = for_each_entry(&mut reader, 0, &mut |entry| {
            if stop {
                return;
            }
            if let Some(line) = joiner.push(entry) {
                if !renderer.wanted(&line) {
                    return;
                }
                match options.tail_lines {
                    Some(n) => {
                        if n == 0 {
                            return;
                        }
                        if tail.len() as u64 == n {
                            tail.pop_front();
                        }
                        tail.push_back(line);
                    }
                    None => {
                        if !renderer.add(&line) {
                            stop = true;
                        }
                        if let Some(chunk) = renderer.take_if_full()
                            && !emit(chunk)
                        {
                            stop = true;
                        }
                    }
                }
            }
        })?;
        if newest {
            state.file = Some((identity, offset));
        }
    }
    for line in tail.drain(..) {
        if !renderer.add(&line) {
            stop = true;
            break;
        }
    }
    if !options.follow && !stop {
        for line in joiner.drain() {
            if renderer.wanted(&line) && !renderer.add(&line) {
                stop = true;
                break;
            }
        }
    }
    if !renderer.out.is_empty() && !emit(renderer.take()) {
        stop = true;
    }
    state.written = renderer.written;
    state.done = stop;
    state.joiner = joiner;
    Ok(state)
}

#[derive(Default)]
struct ReadState {
    /// Inode and offset of the newest file when reading stopped.
    file: Option<(u64, u64)>,
    written: u64,
    /// `limitBytes` reached or the client left.
    done: bool,
    joiner: Joiner,
}

/// Reads whole lines from `reader` starting at `offset`, calling `each` per parsed entry;
/// returns the offset after the last whole line (a line still being written is left for the
/// next read).
fn for_each_entry(
    reader: &mut BufReader<File>,
    offset: u64,
    each: &mut dyn FnMut(Entry),
) -> io::Result<u64> {
    reader.seek(SeekFrom::Start(offset))?;
    let mut offset = offset;
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(offset);
        }
        offset += n as u64;
        line.pop();
        if let Some(entry) = parse_entry(&line) {
            each(entry);
        }
    }
}

/// Streams a container's log: everything there is now (filtered by the options), then, with
/// `follow`, new entries as they are written, until `running()` says the container stopped or
/// `emit` returns false.
///
/// Flow while following: poll the newest file every 100 ms; read new whole lines from the
/// offset reached; when `PATH` now names another file (rotated), finish the old file through
/// the handle still open, then start the new one at 0. After the container stops, one last
/// read picks up what it wrote before exiting.
///
/// Blocking: call from a blocking thread.
pub fn stream(
    path: &Path,
    options: &LogOptions,
    running: &dyn Fn() -> bool,
    emit: &mut dyn FnMut(Bytes) -> bool,
) -> io::Result<()> {
    let state = read_all(path, options, emit)?;
    if !options.follow || state.done {
        return Ok(());
    }
    // Tail and since applied to what existed; everything new is shown.
    let follow_options = LogOptions {
        tail_lines: None,
        ..options.clone()
    };
    let mut renderer = Renderer::new(&follow_options);
    renderer.written = state.written;
    let mut joiner = state.joiner;
    let mut current: Option<(File, u64, u64)> = match state.file {
        Some((ino, offset)) => File::open(path)
            .ok()
            .filter(|f| f.metadata().map(|m| m.ino() == ino).unwrap_or(false))
            .map(|f| (f, ino, offset))
            // Rotated between the first read and now: the whole new file is unread.
            .or_else(|| File::open(path).ok().map(|f| open_state(f, 0))),
        None => None,
    };
    let mut last_round = false;
    loop {
        if current.is_none()
            && let Ok(f) = File::open(path)
        {
            current = Some(open_state(f, 0));
        }
        if let Some((file, ino, offset)) = current.as_mut() {
            let mut stop = false;
            let mut each = |entry: Entry| {
                if stop {
                    return;
                }
                if let Some(line) = joiner.push(entry)
                    && renderer.wanted(&line)
                    && !renderer.add(&line)
                {
                    stop = true;
                }
            };
            let mut reader = BufReader::new(file.try_clone()?);
            *offset = for_each_entry(&mut reader, *offset, &mut each)?;
            if stop {
                let chunk = renderer.take();
                emit(chunk);
                return Ok(());
            }
            // Rotated: PATH is another file now. What the old one still held has just been
            // read through the open handle, so move on to the new one.
            let rotated_away = std::fs::metadata(path)
                .map(|m| m.ino() != *ino)
                .unwrap_or(true);
            if rotated_away && let Ok(f) = File::open(path) {
                let mut tail_reader = BufReader::new(file.try_clone()?);
                let mut stop = false;
                *offset = for_each_entry(&mut tail_reader, *offset, &mut |entry| {
                    if let Some(line) = joiner.push(entry)
                        && renderer.wanted(&line)
                        && !stop
                        && !renderer.add(&line)
                    {
                        stop = true;
                    }
                })?;
                if stop {
                    emit(renderer.take());
                    return Ok(());
                }
                current = Some(open_state(f, 0));
                continue;
            }
        }
        if !renderer.out.is_empty() && !emit(renderer.take()) {
            return Ok(());
        }
        if last_round {
            for line in joiner.drain() {
                if renderer.wanted(&line) {
                    renderer.add(&line);
                }
            }
            if !renderer.out.is_empty() {
                emit(renderer.take());
            }
            return Ok(());
        }
        if !running() {
            last_round = true;
            continue;
        }
        // An empty chunk asks whether the client is still there.
        if !emit(Bytes::new()) {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

fn open_state(file: File, offset: u64) -> (File, u64, u64) {
    let ino = file.metadata().map(|m| m.ino()).unwrap_or(0);
    (file, ino, offset)
}

/// Reads a whole file (used by tests and small callers).
#[cfg(test)]
fn collect(path: &Path, options: &LogOptions) -> String {
    let mut out = Vec::new();
    stream(path, options, &|| false, &mut |chunk| {
        out.extend_from_slice(&chunk);
        true
    })
    .unwrap();
    String::from_utf8(out).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(path: &Path, lines: &[&str]) {
        let mut f = File::create(path).unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    }

    fn opts() -> LogOptions {
        LogOptions::default()
    }

    #[test]
    fn joins_partial_lines_per_stream_and_reads_rotated_files_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        write(
            &rotated(&path, 2),
            &["2026-11-21T10:00:00.000000001Z stdout F first"],
        );
        write(
            &rotated(&path, 1),
            &[
                "2026-11-21T10:00:01Z stdout P sec",
                "2026-11-21T10:00:01.5Z stderr F oops",
                "2026-11-21T10:00:02Z stdout F ond",
            ],
        );
        write(
            &path,
            &[
                "not a CRI line",
                "2026-11-21T10:00:03Z stdout F third",
                "2026-11-21T10:00:04Z stdout F ",
            ],
        );
        assert_eq!(collect(&path, &opts()), "first\noops\nsecond\nthird\n\n");
        let stamped = LogOptions {
            timestamps: true,
            ..opts()
        };
        assert_eq!(
            collect(&path, &stamped),
            "2026-11-21T10:00:00.000000001Z first\n2026-11-21T10:00:01.5Z oops\n\
             2026-11-21T10:00:01Z second\n2026-11-21T10:00:03Z third\n2026-11-21T10:00:04Z \n"
        );
    }

    #[test]
    fn tail_since_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        write(
            &path,
            &[
                "2026-11-21T10:00:00Z stdout F one",
                "2026-11-21T10:00:01Z stdout F two",
                "2026-11-21T10:00:02Z stdout P thr",
                "2026-11-21T10:00:03Z stdout F ee",
                "2026-11-21T10:00:04Z stdout F four",
            ],
        );
        let tail = |n| LogOptions {
            tail_lines: Some(n),
            ..opts()
        };
        assert_eq!(collect(&path, &tail(2)), "three\nfour\n");
        assert_eq!(collect(&path, &tail(0)), "");
        assert_eq!(collect(&path, &tail(10)), "one\ntwo\nthree\nfour\n");
        let since = LogOptions {
            since: Some("2026-11-21T10:00:01Z".parse().unwrap()),
            ..opts()
        };
        assert_eq!(collect(&path, &since), "two\nthree\nfour\n");
        let limit = LogOptions {
            limit_bytes: Some(6),
            ..opts()
        };
        assert_eq!(collect(&path, &limit), "one\ntw");
    }

    #[test]
    fn an_unfinished_line_is_shown_without_newline_and_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        assert_eq!(collect(&path, &opts()), "");
        write(
            &path,
            &[
                "2026-11-21T10:00:00Z stdout F done",
                "2026-11-21T10:00:01Z stdout P half",
            ],
        );
        assert_eq!(collect(&path, &opts()), "done\nhalf");
    }

    #[test]
    fn options_parse_like_the_pod_log_api() {
        let now: Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
        let o = LogOptions::parse(
            Some("follow=true&tailLines=5&timestamps=1&limitBytes=100&sinceSeconds=60"),
            now,
        )
        .unwrap();
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!(o.tail_lines, Some(5));
        assert_eq!(o.limit_bytes, Some(100));
        assert_eq!(o.since, Some("2026-11-21T09:59:00Z".parse().unwrap()));
        let o = LogOptions::parse(
            Some("sinceTime=2026-11-21T09%3A00%3A00Z&previous=true"),
            now,
        )
        .unwrap();
        assert!(o.previous);
        assert_eq!(o.since, Some("2026-11-21T09:00:00Z".parse().unwrap()));
        assert_eq!(
            LogOptions::parse(Some("tailLines=-1"), now)
                .unwrap()
                .tail_lines,
            None
        );
        for bad in [
            "tailLines=x",
            "follow=maybe",
            "sinceSeconds=0",
            "limitBytes=0",
            "sinceTime=yesterday",
            "sinceSeconds=5&sinceTime=2026-11-21T09:00:00Z",
        ] {
            assert!(LogOptions::parse(Some(bad), now).is_err(), "{bad}");
        }
    }

    #[test]
    fn follow_reads_new_lines_across_rotation_until_the_container_stops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        write(&path, &["2026-11-21T10:00:00Z stdout F before"]);
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (tx, rx) = std::sync::mpsc::channel::<Bytes>();
        let follower = {
            let path = path.clone();
            let running = running.clone();
            std::thread::spawn(move || {
                let options = LogOptions {
                    follow: true,
                    tail_lines: Some(1),
                    ..LogOptions::default()
                };
                stream(
                    &path,
                    &options,
                    &|| running.load(std::sync::atomic::Ordering::SeqCst),
                    &mut |chunk| {
                        if !chunk.is_empty() {
                            tx.send(chunk).unwrap();
                        }
                        true
                    },
                )
                .unwrap();
            })
        };
        let mut seen = String::new();
        let wait_for = |want: &str, seen: &mut String| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !seen.ends_with(want) {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let chunk = rx
                    .recv_timeout(left)
                    .unwrap_or_else(|_| panic!("waiting for {want:?}, have {seen:?}"));
                seen.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        };
        wait_for("before\n", &mut seen);
        let append = |line: &str| {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            writeln!(f, "{line}").unwrap();
        };
        append("2026-11-21T10:00:01Z stdout P gro");
        append("2026-11-21T10:00:02Z stdout F wing");
        wait_for("growing\n", &mut seen);
        // Rotate as the runtime does: the old file keeps a last line written just before.
        append("2026-11-21T10:00:03Z stdout F last-in-old");
        std::fs::rename(&path, rotated(&path, 1)).unwrap();
        write(&path, &["2026-11-21T10:00:04Z stdout F first-in-new"]);
        wait_for("first-in-new\n", &mut seen);
        append("2026-11-21T10:00:05Z stdout F final");
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        follower.join().unwrap();
        while let Ok(chunk) = rx.try_recv() {
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert_eq!(seen, "before\ngrowing\nlast-in-old\nfirst-in-new\nfinal\n");
    }
}
