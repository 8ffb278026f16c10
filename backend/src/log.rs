//! The agent's log: `tracing` events written one a line to standard error,
//! as text for a terminal or as JSON objects for journald or a log shipper.
//!
//! Each line carries the fields of every span it happened in, outermost
//! first: a migration's thread runs in a `migration` span (`migration`,
//! `vm`, `run`), a request's in a `request` span (`from`, `by`), so the ids
//! are on every line of the work they belong to. An event's own field of
//! the same name wins over a span's. The host's name, set once, leads every
//! line.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `TIME LEVEL key=value…: message key=value…`, for a person.
    Text,
    /// One JSON object a line: `time`, `level`, `target`, `message`, then
    /// the spans' and the event's fields.
    Json,
}

impl Format {
    /// Text on a terminal, JSON otherwise (journald, a file, a pipe).
    pub fn for_stderr() -> Self {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            Format::Text
        } else {
            Format::Json
        }
    }
}

/// Errors of [`init`].
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("a logger is installed already")]
    Installed,
}

/// Makes this process's `tracing` events lines on standard error, those of
/// `level` and above, each led by `host` when given.
pub fn init(format: Format, level: Level, host: Option<&str>) -> Result<(), LogError> {
    let lines = Lines {
        format,
        level,
        host: host.map(str::to_string),
        out: Mutex::new(Box::new(std::io::stderr())),
    };
    tracing_subscriber::registry()
        .with(lines)
        .try_init()
        .map_err(|_| LogError::Installed)
}

/// The layer: formats each event as one line and writes it whole.
struct Lines {
    format: Format,
    level: Level,
    host: Option<String>,
    out: Mutex<Box<dyn std::io::Write + Send>>,
}

/// A span's fields, kept in its extensions.
#[derive(Debug, Default)]
struct Fields(Vec<(&'static str, Value)>);

impl Fields {
    fn set(&mut self, name: &'static str, value: Value) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field.name(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field.name(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.set(field.name(), Value::from(crate::runtime::process::chain(value)));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `%value` comes here too, with a Debug that is its Display.
        self.set(field.name(), Value::from(format!("{value:?}")));
    }
}

impl<S> Layer<S> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        *metadata.level() <= self.level
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        if let Some(host) = &self.host {
            fields.set("host", Value::from(host.as_str()));
        }
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(theirs) = span.extensions().get::<Fields>() {
                    for (name, value) in &theirs.0 {
                        fields.set(name, value.clone());
                    }
                }
            }
        }
        let mut own = Fields::default();
        event.record(&mut own);
        let message = own
            .0
            .iter()
            .position(|(n, _)| *n == "message")
            .map(|at| own.0.remove(at).1);
        let line = Line {
            time_ms: now_ms(),
            level: *event.metadata().level(),
            target: event.metadata().target(),
            message: message.as_ref().and_then(Value::as_str).unwrap_or_default(),
            context: &fields.0,
            own: &own.0,
        };
        let mut text = match self.format {
            Format::Text => line.text(),
            Format::Json => line.json(),
        };
        text.push('\n');
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

/// One event, ready to be written.
struct Line<'a> {
    time_ms: u64,
    level: Level,
    target: &'a str,
    message: &'a str,
    /// The host and the spans' fields.
    context: &'a [(&'static str, Value)],
    /// The event's own fields, the message taken out.
    own: &'a [(&'static str, Value)],
}

impl Line<'_> {
    /// `time`, `level`, `message` first, then the host's, the spans' and
    /// the event's fields (the event's own win), then `target`.
    fn json(&self) -> String {
        let quoted = |text: &str| Value::from(text).to_string();
        let mut text = format!(
            "{{\"time\":\"{}\",\"level\":\"{}\",\"message\":{}",
            rfc3339(self.time_ms),
            self.level.as_str().to_ascii_lowercase(),
            quoted(self.message)
        );
        let own: Vec<&str> = self.own.iter().map(|(n, _)| *n).collect();
        let context = self.context.iter().filter(|(n, _)| !own.contains(n));
        for (name, value) in context.chain(self.own) {
            if !matches!(*name, "time" | "level" | "target" | "message") {
                let _ = write!(text, ",{}:{value}", quoted(name));
            }
        }
        let _ = write!(text, ",\"target\":{}}}", quoted(self.target));
        text
    }

    fn text(&self) -> String {
        let mut text = format!("{} {:<5}", rfc3339(self.time_ms), self.level.as_str());
        let own: Vec<&str> = self.own.iter().map(|(n, _)| *n).collect();
        for (name, value) in self.context.iter().filter(|(n, _)| !own.contains(n)) {
            let _ = write!(text, " {name}={}", plain(value));
        }
        let _ = write!(text, ": {}", self.message);
        for (name, value) in self.own {
            let _ = write!(text, " {name}={}", plain(value));
        }
        text
    }
}

/// A value as text: a string bare unless it has spaces or quotes.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) if !s.is_empty() && !s.contains([' ', '"', '=']) => s.clone(),
        other => other.to_string(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn rfc3339(ms: u64) -> String {
    let (days, in_day) = (ms / 86_400_000, ms % 86_400_000);
    let (year, month, day) = civil(days as i64);
    let (h, m, s, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// The proleptic Gregorian date of `days` since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines_of(format: Format, level: Level, emit: impl FnOnce()) -> Vec<String> {
        let shared = Shared::default();
        let layer = Lines {
            format,
            level,
            host: Some("hostA".into()),
            out: Mutex::new(Box::new(shared.clone())),
        };
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        let bytes = shared.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap().lines().map(str::to_string).collect()
    }

    fn migration_events() {
        let span = tracing::info_span!("migration", migration = "m-1", vm = "vm1", run = tracing::field::Empty);
        span.record("run", "r-0123456789abcdef");
        let _in = span.enter();
        tracing::info!(phase = "copying", "phase changed");
        let inner = tracing::info_span!("request", by = "alice");
        let _also = inner.enter();
        tracing::warn!(vm = "vm2", status = 409u64, "refused: \"busy\"");
        tracing::debug!("not at info");
    }

    #[test]
    fn json_lines_carry_the_spans_ids_and_the_events_fields() {
        let lines = lines_of(Format::Json, Level::INFO, migration_events);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let first: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["host"], "hostA");
        assert_eq!(first["migration"], "m-1");
        assert_eq!(first["run"], "r-0123456789abcdef");
        assert_eq!(first["phase"], "copying");
        assert_eq!(first["message"], "phase changed");
        assert_eq!(first["level"], "info");
        let second: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(second["migration"], "m-1");
        assert_eq!(second["by"], "alice");
        assert_eq!(second["vm"], "vm2", "the event's own field wins");
        assert_eq!(second["status"], 409);
        assert_eq!(second["message"], "refused: \"busy\"");
        assert!(second["time"].as_str().unwrap().ends_with('Z'));
        assert!(lines[1].starts_with("{\"time\":"), "{}", lines[1]);
        assert_eq!(lines[1].matches("\"vm\":").count(), 1, "{}", lines[1]);
    }

    #[test]
    fn text_lines_say_the_same_for_a_person() {
        let lines = lines_of(Format::Text, Level::DEBUG, migration_events);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0]
                .contains(" INFO  host=hostA migration=m-1 vm=vm1 run=r-0123456789abcdef: phase changed phase=copying"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains("WARN  host=hostA migration=m-1 run="), "{}", lines[1]);
        assert!(
            lines[1].ends_with("by=alice: refused: \"busy\" vm=vm2 status=409"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("DEBUG") && lines[2].ends_with(": not at info"));
    }

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day of a century divisible by 400), 12:34:56.789.
        assert_eq!(rfc3339(951_827_696_789), "2000-02-29T12:34:56.789Z");
        assert_eq!(rfc3339(1_796_083_200_000), "2026-12-01T00:00:00.000Z");
        assert_eq!(rfc3339(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }
}
