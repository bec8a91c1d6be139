//! The access log, off the request path: each worker thread appends its
//! lines to a buffer of its own (no lock contention, no syscall, no
//! wake-up of another thread per line); a full buffer (64 KiB) is handed to
//! one writer thread through a bounded queue, and the writer collects
//! every thread's partial buffer at least every 100 ms. The writer writes
//! to stderr or to `logging.access_log_path`; SIGUSR1 reopens the file
//! (logrotate's `postrotate`). When the writer cannot keep up and the
//! queue is full, the buffer's lines are dropped and counted
//! (`tollgate_access_log_dropped_total`): a slow disk never slows a
//! response. This is nginx's `access_log … buffer=64k flush=100ms`.
//!
//! Our own rather than env_logger's: env_logger writes each record
//! unbuffered on the calling thread (~10 % of throughput, issue 17); a
//! channel message per line instead woke the writer thread per request,
//! which on a busy core cost more than the write. Other log lines still go
//! through `log`.

use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
#[cfg(test)]
use std::time::UNIX_EPOCH;
use std::time::{Duration, SystemTime};

/// A thread's buffer is handed to the writer once it holds this much.
pub const BUFFER_BYTES: usize = 64 * 1024;
/// Full buffers queued for the writer before new ones are dropped (4 MiB).
pub const QUEUE_BUFFERS: usize = 64;
/// The longest a line waits in a thread's buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Lines of one thread, not yet handed over.
#[derive(Default)]
struct ThreadBuffer {
    bytes: Vec<u8>,
    lines: u64,
}

enum Message {
    /// A full buffer.
    Lines(Vec<u8>),
    /// Collect every thread's buffer, write, and acknowledge.
    Flush(SyncSender<()>),
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The process's stderr, with the other log lines.
    Stderr,
    /// A file, appended to; reopened on SIGUSR1.
    File(PathBuf),
}

/// What the writer and the threads share.
struct Shared {
    /// Every thread's buffer, for the writer's periodic collection.
    buffers: Mutex<Vec<Arc<Mutex<ThreadBuffer>>>>,
    reopen: AtomicBool,
    dropped: IntCounter,
}

/// The handle requests write through; one per process (tests make more).
pub struct AccessLog {
    id: u64,
    queue: SyncSender<Message>,
    shared: Arc<Shared>,
    /// `false` when the log level filters `tollgate::access` out (e.g.
    /// `RUST_LOG=warn`), as it did when the lines went through `log`.
    enabled: bool,
    /// The writer and its queue's receiving end until the writer thread
    /// starts: at the first line, so that it starts in the process that
    /// serves (`--daemon` forks after start-up, and a thread started
    /// before the fork does not exist in the child).
    pending: Mutex<Option<(Writer, mpsc::Receiver<Message>)>>,
    writer_started: std::sync::OnceLock<()>,
}

thread_local! {
    /// This thread's buffer for each access log (by id).
    static LOCAL: RefCell<Vec<(u64, Arc<Mutex<ThreadBuffer>>)>> = const { RefCell::new(Vec::new()) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AccessLog {
    /// The access log for `destination` (opened now, so a bad path fails
    /// the start); its writer thread starts with the first line. `dropped`
    /// counts lines the queue had no room for.
    pub fn start(destination: Destination, dropped: IntCounter) -> io::Result<Self> {
        let sink = open(&destination)?;
        let (queue, messages) = mpsc::sync_channel(QUEUE_BUFFERS);
        let shared = Arc::new(Shared {
            buffers: Mutex::new(Vec::new()),
            reopen: AtomicBool::new(false),
            dropped,
        });
        let writer = Writer {
            out: sink,
            destination,
            shared: shared.clone(),
            failing: false,
        };
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            queue,
            shared,
            enabled: log::log_enabled!(target: "tollgate::access", log::Level::Info),
            pending: Mutex::new(Some((writer, messages))),
            writer_started: std::sync::OnceLock::new(),
        })
    }

    /// Starts the writer thread, once, in the process that writes lines.
    fn ensure_writer(&self) {
        self.writer_started.get_or_init(|| {
            let Some((writer, messages)) = lock(&self.pending).take() else {
                return;
            };
            let spawned = std::thread::Builder::new()
                .name("tollgate-access-log".into())
                .spawn(move || writer.run(&messages));
            if let Err(e) = spawned {
                // Lines then fill the queue and are dropped and counted.
                log::error!("cannot start the access-log writer: {e}");
            }
        });
    }

    /// Whether lines are written at all (the log level allows them).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Runs `f` on this thread's buffer, registered with the writer on
    /// first use.
    fn with_local<R>(&self, f: impl FnOnce(&mut ThreadBuffer) -> R) -> R {
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let i = match local.iter().position(|(id, _)| *id == self.id) {
                Some(i) => i,
                None => {
                    let buffer = Arc::new(Mutex::new(ThreadBuffer::default()));
                    lock(&self.shared.buffers).push(buffer.clone());
                    local.push((self.id, buffer));
                    local.len() - 1
                }
            };
            let result = f(&mut lock(&local[i].1));
            result
        })
    }

    /// Appends one line (without its newline); never blocks on I/O.
    pub fn write(&self, line: &str) {
        self.write_with(|out| out.extend_from_slice(line.as_bytes()));
    }

    /// Appends the line `compose` writes straight into this thread's buffer
    /// (no line-sized allocation or copy per request); its newline is added
    /// here. Never blocks on I/O.
    pub fn write_with(&self, compose: impl FnOnce(&mut Vec<u8>)) {
        self.ensure_writer();
        let full = self.with_local(|buffer| {
            compose(&mut buffer.bytes);
            buffer.bytes.push(b'\n');
            buffer.lines += 1;
            if buffer.bytes.len() < BUFFER_BYTES {
                return None;
            }
            let lines = std::mem::take(&mut buffer.lines);
            // A buffer with room for a whole batch: growing one from empty
            // would copy each batch twice over.
            let fresh = Vec::with_capacity(BUFFER_BYTES + 1024);
            Some((std::mem::replace(&mut buffer.bytes, fresh), lines))
        });
        if let Some((bytes, lines)) = full {
            self.hand_over(bytes, lines);
        }
    }

    fn hand_over(&self, bytes: Vec<u8>, lines: u64) {
        match self.queue.try_send(Message::Lines(bytes)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped.inc_by(lines);
            }
        }
    }

    /// Asks the writer to reopen its file before its next write.
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
    }

    /// Waits (for room in the queue, then up to `timeout`) until every
    /// line written so far, on any thread, is written out. Not for the
    /// request path.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.ensure_writer();
        let (ack, done) = mpsc::sync_channel(1);
        if self.queue.send(Message::Flush(ack)).is_err() {
            return false;
        }
        done.recv_timeout(timeout).is_ok()
    }
}

fn open(destination: &Destination) -> io::Result<Box<dyn Write + Send>> {
    Ok(match destination {
        Destination::Stderr => Box::new(io::stderr()),
        Destination::File(path) => Box::new(append(path)?),
    })
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("access log {}: {e}", path.display())))
}

struct Writer {
    out: Box<dyn Write + Send>,
    destination: Destination,
    shared: Arc<Shared>,
    failing: bool,
}

impl Writer {
    fn run(mut self, messages: &mpsc::Receiver<Message>) {
        loop {
            let message = messages.recv_timeout(FLUSH_EVERY);
            if self.shared.reopen.swap(false, Ordering::AcqRel) {
                self.reopen_file();
            }
            match message {
                Ok(Message::Lines(bytes)) => self.write(&bytes),
                Ok(Message::Flush(ack)) => {
                    // Full buffers queued meanwhile, then the partial ones.
                    let mut acks = vec![ack];
                    while let Ok(queued) = messages.try_recv() {
                        match queued {
                            Message::Lines(bytes) => self.write(&bytes),
                            Message::Flush(ack) => acks.push(ack),
                        }
                    }
                    self.collect();
                    for ack in acks {
                        let _ = ack.send(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.collect(),
                Err(RecvTimeoutError::Disconnected) => {
                    self.collect();
                    return;
                }
            }
        }
    }

    /// Writes out what every thread has buffered so far.
    fn collect(&mut self) {
        let buffers: Vec<_> = lock(&self.shared.buffers).clone();
        for buffer in buffers {
            let bytes = {
                let mut buffer = lock(&buffer);
                if buffer.bytes.is_empty() {
                    continue;
                }
                buffer.lines = 0;
                std::mem::take(&mut buffer.bytes)
            };
            self.write(&bytes);
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        // Said once per failing spell, not once per buffer.
        match self.out.write_all(bytes).and_then(|()| self.out.flush()) {
            Err(e) if !self.failing => {
                log::error!("writing the access log: {e}");
                self.failing = true;
            }
            Ok(()) => self.failing = false,
            Err(_) => {}
        }
    }

    fn reopen_file(&mut self) {
        let Destination::File(path) = &self.destination else {
            return;
        };
        match append(path) {
            Ok(file) => {
                self.out = Box::new(file);
                log::info!("access log reopened: {}", path.display());
            }
            Err(e) => log::error!("{e}; still writing to the previous file"),
        }
    }
}

/// The timestamp of a text access line, formatted as env_logger formats
/// its own (`2026-11-23T19:32:56.123Z`, with the same `jiff` code), so both
/// kinds of line sort together.
pub struct Rfc3339Millis(pub SystemTime);

impl std::fmt::Display for Rfc3339Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = Vec::with_capacity(24);
        push_rfc3339_millis(&mut text, self.0);
        f.write_str(&String::from_utf8_lossy(&text))
    }
}

thread_local! {
    /// The last whole second formatted on this thread, and its text up to
    /// the seconds (`2026-11-23T19:32:56`).
    static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
}

/// Appends `t` as [`Rfc3339Millis`] shows it. The date and time of day go
/// through `jiff` once per second per thread; a line within that second
/// only appends the milliseconds (the calendar conversion per line showed
/// in the profile).
pub fn push_rfc3339_millis(out: &mut Vec<u8>, t: SystemTime) {
    let Ok(ts) = jiff::Timestamp::try_from(t) else {
        out.extend_from_slice(b"-");
        return;
    };
    let (second, millis) = (ts.as_second(), ts.subsec_millisecond());
    // Before 1970 the sub-second part counts down from the next second.
    let (second, millis) = if millis < 0 {
        (second - 1, millis + 1000)
    } else {
        (second, millis)
    };
    SECOND.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != second {
            let whole = jiff::Timestamp::from_second(second).unwrap_or(ts);
            let text = format!("{whole:.0}");
            cache.1 = text.trim_end_matches('Z').to_owned();
            cache.0 = second;
        }
        out.extend_from_slice(cache.1.as_bytes());
    });
    let millis = millis.unsigned_abs();
    out.extend_from_slice(&[
        b'.',
        b'0' + (millis / 100 % 10) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
}

/// Reopens the access-log file on SIGUSR1, for log rotation, and writes
/// out what is buffered when the server shuts down.
pub struct ReopenOnSignal {
    log: Arc<AccessLog>,
}

impl ReopenOnSignal {
    /// Reopens `log`'s file on every SIGUSR1.
    pub fn new(log: Arc<AccessLog>) -> Self {
        Self { log }
    }
}

#[async_trait::async_trait]
impl BackgroundService for ReopenOnSignal {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = match signal(SignalKind::user_defined1()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGUSR1, the access log will not be reopened: {e}");
                None
            }
        };
        loop {
            tokio::select! {
                Some(_) = async { usr1.as_mut()?.recv().await } => self.log.reopen(),
                _ = shutdown.changed() => {
                    let log = self.log.clone();
                    let _ = tokio::task::spawn_blocking(move || log.flush(Duration::from_secs(1))).await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_like_env_loggers() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_462_376_123);
        assert_eq!(Rfc3339Millis(t).to_string(), "2026-11-23T19:32:56.123Z");
        assert_eq!(
            Rfc3339Millis(UNIX_EPOCH).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(Rfc3339Millis(leap).to_string(), "2000-02-29T00:00:00.000Z");
        // The per-second cache: same second, the next one, back again, and
        // before 1970 (whose milliseconds count from the earlier second).
        for (millis, shown) in [
            (1_795_462_376_999, "2026-11-23T19:32:56.999Z"),
            (1_795_462_377_000, "2026-11-23T19:32:57.000Z"),
            (1_795_462_376_001, "2026-11-23T19:32:56.001Z"),
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(millis);
            assert_eq!(Rfc3339Millis(t).to_string(), shown);
        }
        let before = UNIX_EPOCH - Duration::from_millis(500);
        assert_eq!(
            Rfc3339Millis(before).to_string(),
            "1969-12-31T23:59:59.500Z"
        );
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tollgate-access-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn lines_from_every_thread_reach_the_file_and_rotation_reopens_it() {
        let dir = scratch("rotate");
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let dropped = IntCounter::new("dropped", "dropped").expect("counter");
        let log = Arc::new(
            AccessLog::start(Destination::File(path.clone()), dropped.clone()).expect("start"),
        );
        log.write("first");
        let other = log.clone();
        std::thread::spawn(move || other.write("from another thread"))
            .join()
            .expect("thread");
        assert!(log.flush(Duration::from_secs(5)), "flushed");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.contains("first\n") && text.contains("from another thread\n"),
            "{text}"
        );
        // Rotation: the file is moved away, SIGUSR1 reopens the path.
        std::fs::rename(&path, dir.join("access.log.1")).expect("rotate");
        log.reopen();
        log.write("third");
        assert!(log.flush(Duration::from_secs(5)));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "third\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_line_is_written_or_counted_as_dropped() {
        let dir = scratch("burst");
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let dropped = IntCounter::new("dropped", "dropped").expect("counter");
        let log =
            AccessLog::start(Destination::File(path.clone()), dropped.clone()).expect("start");
        let line = "x".repeat(199);
        let sent = 100_000u64; // 20 MB: five times the queue and a buffer
        for _ in 0..sent {
            log.write(&line);
        }
        assert!(log.flush(Duration::from_secs(30)));
        let written = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .count() as u64;
        assert_eq!(
            written + dropped.get(),
            sent,
            "written {written}, dropped {}",
            dropped.get()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
