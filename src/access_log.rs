//! The access log, off the worker threads: a request's line is formatted
//! where it ends and handed to a bounded channel; one writer thread
//! buffers lines (64 KiB) and writes them to stderr or to
//! `logging.access_log_path`, flushing at least every 100 ms. When the
//! writer cannot keep up and the channel is full, the line is dropped and
//! counted (`tollgate_access_log_dropped_total`): a slow disk never slows
//! a response. SIGUSR1 reopens the file (logrotate's `postrotate`).
//!
//! Our own rather than env_logger's: env_logger writes each record
//! unbuffered on the calling thread, which cost ~10 % of throughput on the
//! hot path (issue 17). Other log lines still go through `log`.

use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Lines queued for the writer before new ones are dropped.
pub const QUEUE_LINES: usize = 16 * 1024;
/// The writer's buffer.
const BUFFER_BYTES: usize = 64 * 1024;
/// The longest a written line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

enum Message {
    Line(String),
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

/// The handle requests write through; cheap to share.
pub struct AccessLog {
    queue: SyncSender<Message>,
    reopen: Arc<AtomicBool>,
    dropped: IntCounter,
    /// `false` when the log level filters `tollgate::access` out (e.g.
    /// `RUST_LOG=warn`), as it did when the lines went through `log`.
    enabled: bool,
}

impl AccessLog {
    /// Starts the writer thread for `destination`; `dropped` counts lines
    /// the queue had no room for.
    pub fn start(destination: Destination, dropped: IntCounter) -> io::Result<Self> {
        let sink = open(&destination)?;
        let (queue, lines) = mpsc::sync_channel(QUEUE_LINES);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            out: BufWriter::with_capacity(BUFFER_BYTES, sink),
            destination,
            reopen: reopen.clone(),
        };
        std::thread::Builder::new()
            .name("tollgate-access-log".into())
            .spawn(move || writer.run(&lines))?;
        Ok(Self {
            queue,
            reopen,
            dropped,
            enabled: log::log_enabled!(target: "tollgate::access", log::Level::Info),
        })
    }

    /// Whether lines are written at all (the log level allows them).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Queues one line (without its newline); never blocks.
    pub fn write(&self, line: String) {
        match self.queue.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Asks the writer to reopen its file before its next write.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Waits (for room in the queue, then up to `timeout`) until every
    /// line queued so far is written. Not for the request path.
    pub fn flush(&self, timeout: Duration) -> bool {
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
    out: BufWriter<Box<dyn Write + Send>>,
    destination: Destination,
    reopen: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, lines: &mpsc::Receiver<Message>) {
        let mut flushed = Instant::now();
        let mut failing = false;
        loop {
            let message = lines.recv_timeout(FLUSH_EVERY);
            if self.reopen.swap(false, Ordering::AcqRel) {
                self.reopen_file();
            }
            let result = match message {
                Ok(Message::Line(line)) => self
                    .out
                    .write_all(line.as_bytes())
                    .and_then(|()| self.out.write_all(b"\n")),
                Ok(Message::Flush(ack)) => {
                    let r = self.out.flush();
                    let _ = ack.send(());
                    flushed = Instant::now();
                    r
                }
                Err(RecvTimeoutError::Timeout) => Ok(()),
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.out.flush();
                    return;
                }
            };
            let result = if flushed.elapsed() >= FLUSH_EVERY {
                flushed = Instant::now();
                result.and_then(|()| self.out.flush())
            } else {
                result
            };
            // Said once per failing spell, not once per line.
            match result {
                Err(e) if !failing => {
                    log::error!("writing the access log: {e}");
                    failing = true;
                }
                Ok(()) => failing = false,
                Err(_) => {}
            }
        }
    }

    fn reopen_file(&mut self) {
        let Destination::File(path) = &self.destination else {
            return;
        };
        let _ = self.out.flush();
        match append(path) {
            Ok(file) => {
                self.out = BufWriter::with_capacity(BUFFER_BYTES, Box::new(file));
                log::info!("access log reopened: {}", path.display());
            }
            Err(e) => log::error!("{e}; still writing to the previous file"),
        }
    }
}

/// The timestamp of a text access line, as env_logger formats its own
/// (`2026-11-23T19:32:56.123Z`), so both kinds of line sort together.
pub struct Rfc3339Millis(pub SystemTime);

impl std::fmt::Display for Rfc3339Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days as i64);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            since.subsec_millis()
        )
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Reopens the access-log file on SIGUSR1, for log rotation.
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
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGUSR1, the access log will not be reopened: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = usr1.recv() => self.log.reopen(),
                _ = shutdown.changed() => {
                    self.log.flush(Duration::from_secs(1));
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
    }

    #[test]
    fn lines_reach_the_file_and_a_full_queue_drops_and_counts() {
        let dir = std::env::temp_dir().join(format!("tollgate-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let dropped = IntCounter::new("dropped", "dropped").expect("counter");
        let log =
            AccessLog::start(Destination::File(path.clone()), dropped.clone()).expect("start");
        log.write("first".into());
        log.write("second".into());
        assert!(log.flush(Duration::from_secs(5)), "flushed");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "first\nsecond\n"
        );
        // Rotation: the file is moved away, SIGUSR1 reopens the path.
        let rotated = dir.join("access.log.1");
        std::fs::rename(&path, &rotated).expect("rotate");
        log.reopen();
        log.write("third".into());
        assert!(log.flush(Duration::from_secs(5)));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "third\n");
        // A burst far beyond the queue never blocks; what did not fit is counted.
        for i in 0..(QUEUE_LINES * 4) {
            log.write(format!("burst {i}"));
        }
        assert!(log.flush(Duration::from_secs(10)));
        let written = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .count() as u64;
        assert_eq!(
            written - 1 + dropped.get(),
            (QUEUE_LINES * 4) as u64,
            "written + dropped = sent"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
