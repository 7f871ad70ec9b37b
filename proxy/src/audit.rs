//! The audit log: one JSON object per line, one line per decision, appended
//! and flushed (DESIGN.md "Decisions, denials, audit log").
//!
//! Records are serialised on the caller and handed to one writer thread, which
//! writes whatever has queued up within a few milliseconds as one batch and
//! flushes it, so a slow disk never stalls the proxy's event loop and lines
//! never interleave. The queue is
//! bounded and senders wait when it is full: records are never dropped.
//!
//! When the log cannot be written (a full disk, an I/O error) the writer
//! keeps the lines it could not write, says so on standard error, and retries
//! every [`RETRY_INTERVAL`]; meanwhile [`AuditLog::refuses_requests`] is true
//! and the proxy answers new requests 503 `audit-unavailable` (fail closed),
//! unless the log was opened with [`AuditLog::fail_open`]. The records of
//! those refusals are kept too, up to [`MAX_HELD_REFUSALS`]; past that they
//! are counted, and the count is reported when writing works again.
//!
//! Nothing from headers or bodies is ever recorded, nor the query string of a
//! URL (where tokens travel): only the path.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use thiserror::Error;

use crate::chain::Chain;
use crate::decision::{Decision, Outcome, Reason};

/// Records that may wait for the writer before senders block: a burst of a
/// second at the proxy's request rate, a few MiB of memory at most. The
/// queue grows to this as records arrive (flume): std's bounded channel
/// writes every slot when it is made, 640 KiB and 0.3 ms of page faults at
/// the start of every sandbox, most of whose logs hold a few records.
const QUEUE_RECORDS: usize = 16 * 1024;
/// After the first record of a batch the writer waits this long before
/// writing, so that at high rates senders find it busy instead of waking
/// it per record (a futex wake and a context switch each, measured at ~10%
/// of the proxy's CPU). Records still reach the file within a few ms.
const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// How often a failing log is tried again.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// Refusal records held while the log cannot be written: a client that
/// keeps asking during an outage must not grow our memory without bound
/// (about 300 bytes each, so at most 20 MiB). Records of anything the proxy
/// let through are always held.
pub const MAX_HELD_REFUSALS: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum AuditError {
    #[error("cannot open audit log {path}: {source} (check the directory exists and is writable)")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the audit writer thread: {0}")]
    Thread(#[source] io::Error),
}

/// Where the log goes: `-` is standard output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    Stdout,
    File(PathBuf),
    /// Decisions are not recorded (`exec` without --audit-log).
    Discard,
}

impl AuditTarget {
    pub fn parse(arg: &str) -> AuditTarget {
        if arg == "-" {
            AuditTarget::Stdout
        } else {
            AuditTarget::File(PathBuf::from(arg))
        }
    }
}

/// How the request reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Http,
    Connect,
    Mitm,
}

/// What became of the transfer, apart from the policy's decision (the
/// record's `outcome`): an allowed request whose upstream cannot be reached
/// stays `allow`, with `outcome: upstream-failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// Delivered: the response relayed to its end, or the tunnel closed.
    Ok,
    /// The proxy answered itself (a deny or a malformed request): nothing
    /// went upstream.
    Refused,
    /// The client went away, or its request body broke off, before the
    /// exchange ended.
    ClientAborted,
    /// The upstream could not be reached, or broke off.
    UpstreamFailed,
    /// The name did not resolve.
    ResolveFailed,
    /// No response from the upstream in time.
    Timeout,
}

/// One decision, as written to the log.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    #[serde(serialize_with = "rfc3339")]
    pub ts: SystemTime,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Arc<str>>,
    /// SHA-256 of the policy in force when the exchange began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Arc<str>>,
    pub client: Arc<str>,
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(serialize_with = "outcome")]
    pub decision: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "reason")]
    pub reason: Option<Reason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub outcome: Transport,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
}

impl Record {
    /// Fills `decision` and `rule`/`reason` from a policy decision.
    pub fn set_decision(&mut self, decision: &Decision) {
        self.decision = decision.outcome();
        self.rule = decision.grant().map(ToString::to_string);
        self.reason = decision.reason();
    }
}

fn rfc3339<S: serde::Serializer>(ts: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*ts))
}

fn outcome<S: serde::Serializer>(o: &Outcome, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(o.as_str())
}

fn reason<S: serde::Serializer>(r: &Option<Reason>, s: S) -> Result<S::Ok, S::Error> {
    match r {
        Some(r) => s.serialize_str(r.code()),
        None => s.serialize_none(),
    }
}

enum Message {
    /// A record; `refusal`: of a request refused because the log could not
    /// be written (such records may be counted instead of held).
    Line {
        line: Vec<u8>,
        refusal: bool,
    },
    Reopen,
    Sync(flume::Sender<()>),
}

/// Whether the writer is failing, and how far it is, shared with every
/// handle.
#[derive(Debug, Default)]
struct Health {
    failing: AtomicBool,
    /// Records handed to the queue (counted before they are sent).
    sent: AtomicU64,
    /// Records the writer had taken when it last had nothing left to
    /// write: while this equals `sent`, every record is in the sink.
    settled: AtomicU64,
    /// Writes that failed.
    errors: AtomicU64,
}

impl Health {
    fn all_written(&self) -> bool {
        self.settled.load(Ordering::Acquire) == self.sent.load(Ordering::Acquire)
    }
}

/// How many times a log's writes have failed (for metrics). It does not
/// keep the log open.
#[derive(Debug, Clone)]
pub struct WriteErrors(Arc<Health>);

impl WriteErrors {
    pub fn count(&self) -> u64 {
        self.0.errors.load(Ordering::Relaxed)
    }
}

/// Called with every record as it is written (a run streams decisions to
/// whoever watches it).
pub type Observer = Arc<dyn Fn(&Record) + Send + Sync>;

/// Rewrites a text field of a record before anyone sees it (a run replaces
/// secret values with `***` in the method, host and path a client sent).
pub type Redact = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A handle to the audit log; clones share one writer.
#[derive(Clone)]
pub struct AuditLog {
    queue: flume::Sender<Message>,
    health: Arc<Health>,
    fail_open: bool,
    ids: Arc<IdSource>,
    redact: Option<Redact>,
    observer: Option<Observer>,
    _flush_on_drop: Arc<FlushOnLastDrop>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

impl AuditLog {
    /// Opens (creating, mode 0600, appending) the log and starts its writer.
    pub fn open(target: AuditTarget) -> Result<AuditLog, AuditError> {
        let mut sink = Sink::open(&target)?;
        let (queue, inbox) = flume::bounded(QUEUE_RECORDS);
        let health = Arc::new(Health::default());
        let chain = sink.chain();
        let writer = Writer {
            sink,
            chain,
            target,
            health: health.clone(),
            held: VecDeque::new(),
            held_refusals: 0,
            uncounted_refusals: 0,
            taken: 0,
        };
        std::thread::Builder::new()
            .name("tollgate-audit".into())
            .spawn(move || writer.run(inbox))
            .map_err(AuditError::Thread)?;
        Ok(AuditLog {
            queue: queue.clone(),
            health: health.clone(),
            fail_open: false,
            ids: Arc::new(IdSource::new()),
            redact: None,
            observer: None,
            _flush_on_drop: Arc::new(FlushOnLastDrop { queue, health }),
        })
    }

    /// This log, also showing every record written through it to
    /// `observer`.
    pub fn observed(&self, observer: Observer) -> AuditLog {
        AuditLog {
            observer: Some(observer),
            ..self.clone()
        }
    }

    /// This log, letting requests through even while it cannot be written
    /// (`--audit-fail open`): they go unrecorded until it can.
    pub fn fail_open(self) -> AuditLog {
        AuditLog {
            fail_open: true,
            ..self
        }
    }

    /// Whether new requests must be refused (503 `audit-unavailable`): the
    /// log cannot be written right now, and it fails closed.
    pub fn refuses_requests(&self) -> bool {
        !self.fail_open && self.health.failing.load(Ordering::Relaxed)
    }

    /// How many times a write of this log has failed, as it goes.
    pub fn write_errors(&self) -> WriteErrors {
        WriteErrors(self.health.clone())
    }

    /// A new record id, unique within this proxy and across restarts.
    pub fn next_id(&self) -> String {
        self.ids.next()
    }

    /// This log, with the method, host and path of every record written
    /// through it passed through `redact` first: what the redaction removes
    /// reaches neither the file nor an observer.
    pub fn redacted(&self, redact: Redact) -> AuditLog {
        AuditLog {
            redact: Some(redact),
            ..self.clone()
        }
    }

    /// Appends one record.
    pub fn write(&self, record: &Record) {
        let redacted = self.redact.as_ref().map(|redact| {
            let mut copy = record.clone();
            for field in [&mut copy.method, &mut copy.host, &mut copy.path] {
                if let Some(clean) = field.as_deref().and_then(|text| redact(text)) {
                    *field = Some(clean);
                }
            }
            copy
        });
        let record = redacted.as_ref().unwrap_or(record);
        if let Some(observer) = &self.observer {
            observer(record);
        }
        let refusal = record.reason == Some(Reason::AuditUnavailable);
        match serde_json::to_vec(record) {
            Ok(mut line) => {
                line.push(b'\n');
                self.health.sent.fetch_add(1, Ordering::AcqRel);
                if self.queue.send(Message::Line { line, refusal }).is_err() {
                    tracing::error!("audit writer is gone; record {} lost", record.id);
                }
            }
            Err(e) => tracing::error!("cannot serialise audit record {}: {e}", record.id),
        }
    }

    /// Reopens the file (after log rotation); a no-op for standard output.
    pub fn reopen(&self) {
        let _ = self.queue.send(Message::Reopen);
    }

    /// Waits until every record written so far is on disk (or `timeout`):
    /// at once when the writer has nothing left (no round trip to it).
    pub fn sync(&self, timeout: Duration) {
        if self.health.all_written() {
            return;
        }
        let (done, wait) = flume::bounded(1);
        if self.queue.send(Message::Sync(done)).is_ok() {
            let _ = wait.recv_timeout(timeout);
        }
    }
}

/// Waits for the writer when the last handle goes, so no queued line is lost.
struct FlushOnLastDrop {
    queue: flume::Sender<Message>,
    health: Arc<Health>,
}

impl Drop for FlushOnLastDrop {
    fn drop(&mut self) {
        if self.health.all_written() {
            return;
        }
        let (done, wait) = flume::bounded(1);
        if self.queue.send(Message::Sync(done)).is_ok() {
            let _ = wait.recv();
        }
    }
}

enum Sink {
    Stdout(io::Stdout),
    File(BufWriter<File>),
    Discard(io::Sink),
}

impl Sink {
    fn open(target: &AuditTarget) -> Result<Sink, AuditError> {
        match target {
            AuditTarget::Stdout => Ok(Sink::Stdout(io::stdout())),
            AuditTarget::File(path) => open_append(path).map(|f| Sink::File(BufWriter::new(f))),
            AuditTarget::Discard => Ok(Sink::Discard(io::sink())),
        }
    }

    /// Where a chain continues: after the last line of a file that ends
    /// in a chained record (tollgate restarted on its log), else a new one
    /// (a new or rotated file, standard output). A file cut short mid-line
    /// gets a newline first, so that the cut shows as the bad line it is.
    fn chain(&mut self) -> Chain {
        let Sink::File(file) = self else {
            return Chain::default();
        };
        let tail = last_line(file.get_ref()).unwrap_or_default();
        match tail {
            Tail::Line(line) => Chain::after(&line).unwrap_or_default(),
            Tail::Cut => {
                let _ = file.write_all(b"\n").and_then(|()| file.flush());
                Chain::default()
            }
            Tail::Empty => Chain::default(),
        }
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(out) => out,
            Sink::File(file) => file,
            Sink::Discard(sink) => sink,
        }
    }
}

/// How an existing log file ends.
#[derive(Default)]
enum Tail {
    #[default]
    Empty,
    /// Its last line, whole (without the newline).
    Line(Vec<u8>),
    /// Mid-line: no newline at the end.
    Cut,
}

/// The last line of `file`, read from its end (a record is far shorter
/// than the 1 MiB looked at).
fn last_line(file: &File) -> io::Result<Tail> {
    use std::os::unix::fs::FileExt;
    const LOOK_BACK: u64 = 1024 * 1024;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(Tail::Empty);
    }
    let start = len.saturating_sub(LOOK_BACK);
    let mut tail = vec![0u8; usize::try_from(len - start).unwrap_or(0)];
    file.read_exact_at(&mut tail, start)?;
    let Some(body) = tail.strip_suffix(b"\n") else {
        return Ok(Tail::Cut);
    };
    let line = body
        .rsplit(|&b| b == b'\n')
        .next()
        .unwrap_or_default()
        .to_vec();
    Ok(Tail::Line(line))
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    // Readable too: where the hash chain continues is its last line.
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| AuditError::Open {
            path: path.to_owned(),
            source,
        })
}

/// The writer thread's state.
struct Writer {
    sink: Sink,
    /// Where the file's hash chain stands ([`crate::chain`]).
    chain: Chain,
    target: AuditTarget,
    health: Arc<Health>,
    /// Lines the sink has not taken yet (it failed), oldest first.
    held: VecDeque<Vec<u8>>,
    /// How many of `held` are refusal records.
    held_refusals: usize,
    /// Refusal records not held (past [`MAX_HELD_REFUSALS`]) since the
    /// log last worked.
    uncounted_refusals: u64,
    /// Records taken from the queue.
    taken: u64,
}

impl Writer {
    fn run(mut self, inbox: flume::Receiver<Message>) {
        loop {
            let first = if self.failing() {
                match inbox.recv_timeout(RETRY_INTERVAL) {
                    Ok(message) => Some(message),
                    Err(flume::RecvTimeoutError::Timeout) => None,
                    Err(flume::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match inbox.recv() {
                    Ok(message) => Some(message),
                    Err(_) => return,
                }
            };
            if matches!(first, Some(Message::Line { .. })) {
                std::thread::sleep(BATCH_WINDOW);
            }
            let mut waiting = Vec::new();
            let mut next = first;
            while let Some(message) = next {
                match message {
                    Message::Line { line, refusal } => {
                        self.taken += 1;
                        self.hold(line, refusal);
                    }
                    Message::Sync(done) => waiting.push(done),
                    Message::Reopen => self.reopen(),
                }
                next = inbox.try_recv().ok();
            }
            self.write_held();
            if self.held.is_empty() {
                self.health.settled.store(self.taken, Ordering::Release);
            }
            for done in waiting {
                let _ = done.send(());
            }
        }
    }

    fn failing(&self) -> bool {
        self.health.failing.load(Ordering::Relaxed)
    }

    fn hold(&mut self, line: Vec<u8>, refusal: bool) {
        if refusal {
            if self.held_refusals >= MAX_HELD_REFUSALS {
                self.uncounted_refusals += 1;
                return;
            }
            self.held_refusals += 1;
        }
        self.held.push_back(line);
    }

    /// Hands every held line to the sink and flushes it; on the first
    /// failure, keeps the rest and marks the log failing.
    fn write_held(&mut self) {
        let written = self.write_lines().and_then(|()| self.sink.writer().flush());
        match written {
            Ok(()) => self.recovered(),
            Err(e) => self.failed(&e),
        }
    }

    /// Links each held line into the chain as it is handed over: a line the
    /// sink does not take leaves the chain as it was.
    fn write_lines(&mut self) -> io::Result<()> {
        while let Some(line) = self.held.front() {
            let record = line.strip_suffix(b"\n").unwrap_or(line);
            let (mut chained, next) = self.chain.link(record);
            chained.push(b'\n');
            self.sink.writer().write_all(&chained)?;
            self.chain = next;
            if line_is_refusal(line) {
                self.held_refusals = self.held_refusals.saturating_sub(1);
            }
            self.held.pop_front();
        }
        Ok(())
    }

    fn failed(&mut self, error: &io::Error) {
        self.health.errors.fetch_add(1, Ordering::Relaxed);
        if !self.health.failing.swap(true, Ordering::Relaxed) {
            tracing::error!(
                "audit log write failed: {error}; refusing new requests (503 audit-unavailable) until it can be written"
            );
        }
    }

    fn recovered(&mut self) {
        if self.health.failing.swap(false, Ordering::Relaxed) {
            tracing::error!("audit log writable again; requests are served");
            if self.uncounted_refusals > 0 {
                tracing::error!(
                    "{} audit-unavailable refusals were not recorded (more than {MAX_HELD_REFUSALS} while the log could not be written)",
                    self.uncounted_refusals
                );
                self.uncounted_refusals = 0;
            }
        }
    }

    fn reopen(&mut self) {
        let _ = self.sink.writer().flush();
        match Sink::open(&self.target) {
            Ok(reopened) => {
                self.sink = reopened;
                self.chain = self.sink.chain();
            }
            Err(e) => tracing::error!("{e}; still writing to the old file"),
        }
    }
}

/// Whether a serialised record is an `audit-unavailable` refusal.
fn line_is_refusal(line: &[u8]) -> bool {
    const MARK: &[u8] = b"\"reason\":\"audit-unavailable\"";
    line.windows(MARK.len()).any(|window| window == MARK)
}

/// Record ids: the proxy's start time in milliseconds and a counter, so ids
/// sort by time and never repeat across restarts.
struct IdSource {
    epoch: u64,
    counter: AtomicU64,
}

impl IdSource {
    fn new() -> IdSource {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        IdSource {
            epoch,
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:x}-{n}", self.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Grant, Verdict};

    fn record(id: &str) -> Record {
        Record {
            ts: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            id: id.into(),
            phase: Some(Arc::from("agent")),
            policy: None,
            client: Arc::from("127.0.0.1:5000"),
            kind: Kind::Http,
            method: Some("GET".into()),
            scheme: Some("http"),
            host: Some("example.com".into()),
            port: Some(80),
            path: Some("/x".into()),
            decision: Outcome::Allow,
            rule: None,
            reason: None,
            resolved: None,
            status: Some(403),
            outcome: Transport::Ok,
            bytes_up: 1,
            bytes_down: 2,
            duration_ms: 3,
        }
    }

    #[test]
    fn redaction_reaches_the_file_and_the_observer_before_they_see_a_record() {
        let dir = std::env::temp_dir().join(format!("tollgate-audit-r-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let observed = seen.clone();
        let log = AuditLog::open(AuditTarget::File(path.clone()))
            .unwrap()
            .redacted(Arc::new(|text: &str| {
                text.contains("s3cret")
                    .then(|| text.replace("s3cret", "***"))
            }))
            .observed(Arc::new(move |record: &Record| {
                observed.lock().unwrap().push(record.clone());
            }));
        let mut leaky = record("r1");
        leaky.method = Some("s3cret".into());
        leaky.host = Some("s3cret.evil.example".into());
        leaky.path = Some("/login/s3cret".into());
        log.write(&leaky);
        log.sync(Duration::from_secs(5));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("\"host\":\"***.evil.example\""), "{text}");
        assert!(text.contains("\"path\":\"/login/***\""), "{text}");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method.as_deref(), Some("***"));
        assert_eq!(seen[0].path.as_deref(), Some("/login/***"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// sync skips the writer only while it has nothing left: every record
    /// written before a sync is in the file when it returns, round after
    /// round.
    #[test]
    fn every_record_before_a_sync_is_in_the_file_after_it() {
        let dir = std::env::temp_dir().join(format!("tollgate-audit-s-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(AuditTarget::File(path.clone())).unwrap();
        log.sync(Duration::from_secs(5));
        for round in 1..=50 {
            log.write(&record(&format!("r{round}")));
            log.sync(Duration::from_secs(5));
            let lines = std::fs::read_to_string(&path).unwrap().lines().count();
            assert_eq!(lines, round, "round {round}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_are_json_lines_with_the_contract_fields() {
        let dir = std::env::temp_dir().join(format!("tollgate-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(AuditTarget::File(path.clone())).unwrap();
        let mut denied = record("a");
        denied.set_decision(&Decision {
            verdict: Verdict::Deny(Reason::NotAllowlisted),
            enforced: true,
        });
        log.write(&denied);
        let mut allowed = record("b");
        allowed.set_decision(&Decision {
            verdict: Verdict::Allow(Grant::Rule(Arc::from("allow[0]:example.com"))),
            enforced: true,
        });
        log.write(&allowed);
        log.sync(Duration::from_secs(5));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["ts"], "2023-11-14T22:13:20.123Z");
        assert_eq!(lines[0]["decision"], "deny");
        assert_eq!(lines[0]["reason"], "not-allowlisted");
        assert!(lines[0].get("rule").is_none());
        assert_eq!(lines[1]["decision"], "allow");
        assert_eq!(lines[1]["rule"], "allow[0]:example.com");
        assert_eq!(lines[1]["phase"], "agent");
        assert_eq!(lines[1]["kind"], "http");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ids_are_unique() {
        let ids = IdSource::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
    }
}
