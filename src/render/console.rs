//! What `vmig vm console --follow|--attach` shows: the console's bytes as the
//! guest wrote them on standard output (a terminal or a pipe alike), and
//! notes (a move, bytes kept nowhere, a host that does not answer, the end)
//! on standard error; or with `--json`, one JSON line per event on standard
//! output:
//!
//! ```text
//! {"output":{"at":N,"len":L,"text":"..."}}   bytes from absolute offset N (text: as UTF-8, lossy)
//! {"skipped":{"from":N,"to":M}}              bytes N..M are kept on no host
//! {"moved":{"from":"hostA","to":"hostB","at":N}}
//! {"retrying":{"host":"hostA","error":"..."}}
//! {"ended":{"vm":"vm1","host":"hostB","at":N,"reason":"stopped|destroyed|detached"}}
//! ```

use std::io::Write;

use serde_json::json;

use crate::ops::console::{ConsoleEvent, Followed};

#[derive(Debug, Clone, Copy)]
pub struct ConsoleView {
    json: bool,
    /// The terminal is in raw mode: a note starts and ends its own line.
    raw: bool,
}

impl ConsoleView {
    pub fn new(json: bool, raw: bool) -> Self {
        Self { json, raw }
    }

    /// Shows one event; an error is the reader's (a closed pipe).
    pub fn event(&self, vm: &str, event: &ConsoleEvent<'_>) -> std::io::Result<()> {
        if self.json {
            let line = match event {
                ConsoleEvent::Output { at, bytes } => json!({ "output": {
                    "at": at, "len": bytes.len(), "text": String::from_utf8_lossy(bytes) } }),
                ConsoleEvent::Skipped { from, to } => json!({ "skipped": { "from": from, "to": to } }),
                ConsoleEvent::Moved { from, to, at } => json!({ "moved": { "from": from, "to": to, "at": at } }),
                ConsoleEvent::Retrying { host, error } => json!({ "retrying": { "host": host, "error": error } }),
            };
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            return out.flush();
        }
        match event {
            ConsoleEvent::Output { bytes, .. } => {
                // Unbuffered: a prompt without a newline shows at once.
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            ConsoleEvent::Skipped { from, to } => {
                self.note(&format!("bytes {from} to {to} of {vm}'s console are kept on no host"));
                Ok(())
            }
            ConsoleEvent::Moved { from, to, at } => {
                self.note(&format!(
                    "{vm} moved from {from} to {to}; its console goes on (byte {at})"
                ));
                Ok(())
            }
            ConsoleEvent::Retrying { host, error } => {
                self.note(&format!("{error}; trying again where {vm} is (it was on {host})"));
                Ok(())
            }
        }
    }

    /// How the follow ended.
    pub fn ended(&self, vm: &str, followed: &Followed) -> std::io::Result<()> {
        if self.json {
            let line = json!({ "ended": {
                "vm": vm, "host": followed.host, "at": followed.at, "reason": followed.end.name() } });
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            return out.flush();
        }
        use crate::ops::console::FollowEnd;
        let what = match followed.end {
            FollowEnd::Stopped => format!("{vm} stopped on {}", followed.host),
            FollowEnd::Destroyed => format!("{vm} is in the cluster no more"),
            FollowEnd::Detached => format!("detached from {vm}'s console on {}", followed.host),
        };
        self.note(&format!("{what} (console byte {})", followed.at));
        Ok(())
    }

    /// A line for people on standard error.
    pub fn note(&self, text: &str) {
        let mut err = std::io::stderr().lock();
        let _ = if self.raw {
            write!(err, "\r\n[vmig: {text}]\r\n")
        } else {
            writeln!(err, "vmig: {text}")
        };
        let _ = err.flush();
    }
}
