//! A small process-wide `tracing` subscriber: keeps events, so cases can search traces for
//! secrets and for the halt event (`SPEC.md` R6, R8), and a failing case can print what
//! happened while it ran. Prints INFO and above live only when `RAFT_ENVELOPE_SUITE_LOG` is set.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// At most this many events are kept; older ones are dropped.
const KEEP: usize = 200_000;

/// One recorded event.
#[derive(Clone, Debug)]
pub(crate) struct Line {
    pub(crate) seq: u64,
    pub(crate) level: Level,
    /// `message key=value ...`
    pub(crate) text: String,
}

struct Capture {
    next_span: AtomicU64,
    seq: AtomicU64,
    lines: Mutex<Vec<Line>>,
}

static CAPTURE: OnceLock<Capture> = OnceLock::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Print INFO and above as they happen (`RAFT_ENVELOPE_SUITE_LOG` set), not only with failures.
static LIVE: OnceLock<bool> = OnceLock::new();

/// Installs the capture as the global default subscriber, once. Returns false when another
/// global subscriber was installed first (traces cannot be inspected then).
pub(crate) fn install() -> bool {
    let capture = CAPTURE.get_or_init(|| Capture {
        next_span: AtomicU64::new(1),
        seq: AtomicU64::new(0),
        lines: Mutex::new(Vec::new()),
    });
    if !INSTALLED.load(Ordering::Acquire) && tracing::subscriber::set_global_default(Forward(capture)).is_ok()
    {
        INSTALLED.store(true, Ordering::Release);
    }
    INSTALLED.load(Ordering::Acquire)
}

/// The current position in the event sequence: pass it to [`since`] later.
pub(crate) fn mark() -> u64 {
    CAPTURE.get().map_or(0, |c| c.seq.load(Ordering::Acquire))
}

/// Every kept event recorded after `mark`, from any thread.
pub(crate) fn since(mark: u64) -> Vec<Line> {
    CAPTURE.get().map_or_else(Vec::new, |c| {
        c.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|l| l.seq >= mark)
            .cloned()
            .collect()
    })
}

struct Forward(&'static Capture);

struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for Forward {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.enabled(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    /// Every level from this project's own crates (the secrecy checks must see debug and trace
    /// events too), INFO and above from everything else (engines are very chatty below that).
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event()
            && (*metadata.level() <= Level::INFO || metadata.target().starts_with("raft_envelope"))
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(self.0.next_span.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut text = Text(String::new());
        event.record(&mut text);
        let level = *event.metadata().level();
        if level <= Level::INFO && *LIVE.get_or_init(|| std::env::var_os("RAFT_ENVELOPE_SUITE_LOG").is_some())
        {
            eprintln!("{level:>5} {}: {}", event.metadata().target(), text.0);
        }
        let seq = self.0.seq.fetch_add(1, Ordering::AcqRel);
        let mut lines = self.0.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.len() >= KEEP {
            lines.drain(..KEEP / 2);
        }
        lines.push(Line { seq, level, text: format!("{}: {}", event.metadata().target(), text.0) });
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}
