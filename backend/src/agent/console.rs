//! A VM's console on this host, by absolute offset: reading it, following
//! it live, handing it on with the VM, and the guest's console input.
//!
//! A VM's console is one byte stream over its whole life: its offset counts
//! every byte the guest wrote, on every host it ran on (the offset travels
//! in the machine state, `SerialState::console_offset`, and a boot starts it
//! at 0). On a host, in the VM's directory:
//!
//! - `console.log` is written by the VMM that runs the VM here. It holds the
//!   console's bytes from the offset its VMM's record names
//!   (`VmmRecord::console_start`) on, every byte of a guest's burst written
//!   before the vCPU goes back to the guest;
//! - `console.history.log` is what followed the VM here from the hosts it
//!   ran on before (the last MiB): a header line
//!   `vmig console history from <offset>`, then the bytes from that offset
//!   up to where this host's log begins.
//!
//! A reader asks for the bytes from an offset and gets exactly those, from
//! the history, then the log. What is kept nowhere is said (`skipped`), never
//! papered over.
//!
//! ## Following a VM across a migration
//!
//! When the source's VMM pauses the VM for the last time, every byte the
//! guest wrote is in the source's log, and the state it sends carries the
//! offset after the last one, `P`: the source's log ends at `P`, and the
//! target's VMM continues at `P` (its log begins there). Should the move
//! fail instead, the source's VMM resumes and goes on at `P` itself, and the
//! target never ran the guest: its log is empty.
//!
//! A stream on the source follows the log of the VMM it started with. It
//! ends only once that VMM has ended and the VM is no longer that VMM's
//! here (the agent let go of it after the move, or it stopped), after one
//! last read to the end of the log, which is then final; its answer names
//! the offset reached, `P` after a move, and why it ended. The follower asks
//! the VM's host now from there: the target's log begins at `P` (a target
//! whose VMM has not said where its log begins yet is waited for), so no
//! byte is lost and none comes twice. A follower that arrives later, or
//! lost its source, asks the host the VM is on from its offset: earlier
//! bytes come from the history, waited for while the migration that brings
//! it finishes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use super::vmm::{self, VmDir};
use super::{Agent, Failure};
use crate::api::{
    ConsoleAccepted, ConsoleEnd, ConsoleEndReason, ConsoleLine, KEEPALIVE_EVERY, MAX_CONSOLE_INPUT, Request,
};
use crate::client::Client;
use crate::runtime::control::{Reply, Request as VmmRequest};
use crate::runtime::record::{Side, VmmRecord};

/// How much of its console follows a VM to its next host.
const HISTORY: u64 = 1 << 20;
/// The most one `console_history` request carries: its hex must fit a
/// request line ([`crate::api::MAX_REQUEST`]).
const HISTORY_PART: usize = 256 << 10;
/// How often a stream looks for new bytes.
const POLL: Duration = Duration::from_millis(20);
/// The most one output line of a stream carries.
const CHUNK: usize = 64 << 10;
/// How long a stream asked for bytes before this host's log waits for the
/// history that follows the VM here (its source sends it once its own VMM
/// has ended).
const HISTORY_WAIT: Duration = Duration::from_secs(15);
const HISTORY_HEADER: &str = "vmig console history from ";

/// The console bytes this host keeps of the VM's earlier hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct History {
    from: u64,
    bytes: Vec<u8>,
}

impl History {
    fn end(&self) -> u64 {
        self.from + self.bytes.len() as u64
    }
}

fn read_history(dir: &VmDir) -> Option<History> {
    let data = std::fs::read(dir.history()).ok()?;
    let newline = data.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&data[..newline]).ok()?;
    let from = header.strip_prefix(HISTORY_HEADER)?.parse().ok()?;
    Some(History {
        from,
        bytes: data[newline + 1..].to_vec(),
    })
}

/// Replaces the history (through a temporary file: a reader sees the old
/// one or the new one).
fn write_history(dir: &VmDir, history: &History) -> std::io::Result<()> {
    let mut data = format!("{HISTORY_HEADER}{}\n", history.from).into_bytes();
    data.extend_from_slice(&history.bytes);
    let tmp = dir.path.join("console.history.log.tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, dir.history())
}

/// Adds a part that follows the VM here: the first starts the history, each
/// next must continue it (one it has already is taken as kept). False when
/// it does neither.
fn add_history(dir: &VmDir, from: u64, bytes: &[u8]) -> std::io::Result<bool> {
    let end = from + bytes.len() as u64;
    match read_history(dir) {
        None => write_history(
            dir,
            &History {
                from,
                bytes: bytes.to_vec(),
            },
        )
        .map(|()| true),
        Some(mut history) if history.end() == from => {
            history.bytes.extend_from_slice(bytes);
            write_history(dir, &history).map(|()| true)
        }
        Some(history) => Ok(from >= history.from && end <= history.end()),
    }
}

/// Where this host's console log begins: its VMM's word (the VMM with
/// `pid`; without one, whichever ran last).
fn log_start(dir: &VmDir, pid: Option<u32>) -> Option<u64> {
    let record = match pid {
        Some(pid) => dir.vmm_record_of(pid),
        None => VmmRecord::load(&dir.vmm_record()),
    };
    record.and_then(|r| r.console_start)
}

/// The last `max` bytes of the console this host keeps, as one run without
/// a gap: (the offset of its first byte, the bytes). History that does not
/// reach the log is left out; of the log, only its end is read.
fn kept(dir: &VmDir, pid: Option<u32>, max: u64) -> (u64, Vec<u8>) {
    let history = read_history(dir);
    let start = log_start(dir, pid).unwrap_or_else(|| history.as_ref().map_or(0, History::end));
    let mut log = Vec::new();
    let mut skipped = 0;
    if let Ok(mut file) = File::open(dir.console()) {
        let len = file.metadata().map_or(0, |m| m.len());
        skipped = len.saturating_sub(max);
        if file.seek(SeekFrom::Start(skipped)).is_ok() {
            let _ = file.take(max).read_to_end(&mut log);
        }
    }
    let first = start + skipped;
    let want = max.saturating_sub(log.len() as u64) as usize;
    match history {
        Some(history) if want > 0 && first == start && history.from <= start && history.end() >= start => {
            let before = &history.bytes[..(start - history.from) as usize];
            let from = before.len().saturating_sub(want);
            let mut bytes = before[from..].to_vec();
            bytes.extend_from_slice(&log);
            (history.from + from as u64, bytes)
        }
        _ => (first, log),
    }
}

/// How the VMM a stream follows stands.
enum Look {
    /// It runs the VM here, or its departure is being settled: more may come.
    Live,
    /// Its log is final.
    Over(ConsoleEndReason),
}

/// Why a stream stopped before its end.
enum Stop {
    /// The client went away.
    Gone,
    Failed(Failure),
}

/// Whether more may come from the VMM with the pid given (none: no VMM
/// runs the VM here), noting in the string where the VM is seen leaving for.
type LookFn<'a> = dyn FnMut(Option<u32>, &mut Option<String>) -> Look + 'a;

/// One `console_stream`.
struct Stream<'a> {
    host: &'a str,
    name: &'a str,
    look: &'a mut LookFn<'a>,
    dir: VmDir,
    /// The VMM whose log is followed; none when the VM does not run here.
    pid: Option<u32>,
    send: &'a mut dyn FnMut(ConsoleLine) -> bool,
    still_there: &'a dyn Fn() -> bool,
    last_line: Instant,
    /// Where the VM was last seen leaving for.
    to: Option<String>,
}

impl Stream<'_> {
    fn line(&mut self, line: ConsoleLine) -> Result<(), Stop> {
        if !(self.send)(line) {
            return Err(Stop::Gone);
        }
        self.last_line = Instant::now();
        Ok(())
    }

    fn output(&mut self, at: u64, bytes: &[u8]) -> Result<(), Stop> {
        for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
            self.line(ConsoleLine::output(at + (i * CHUNK) as u64, chunk))?;
        }
        Ok(())
    }

    /// Waits a moment: a keepalive when one is due, and an end when the
    /// client is gone.
    fn idle(&mut self, at: u64) -> Result<(), Stop> {
        if !(self.still_there)() {
            return Err(Stop::Gone);
        }
        if self.last_line.elapsed() >= KEEPALIVE_EVERY {
            self.line(ConsoleLine::Waiting { at })?;
        }
        std::thread::sleep(POLL);
        Ok(())
    }

    fn look(&mut self) -> Look {
        (self.look)(self.pid, &mut self.to)
    }

    fn end(&self, at: u64, reason: ConsoleEndReason) -> ConsoleEnd {
        ConsoleEnd {
            at,
            reason,
            to: self.to.clone().filter(|_| reason == ConsoleEndReason::Moved),
        }
    }

    fn run(&mut self, from: Option<u64>, back: u64) -> Result<ConsoleEnd, Stop> {
        // Opened once: after a move the agent removes the VM's directory,
        // and the log is read to its end all the same.
        let log = File::open(self.dir.console()).ok();
        let start = loop {
            if let Some(start) = log_start(&self.dir, self.pid) {
                break Some(start);
            }
            match self.look() {
                // A receiving VMM says where its log begins once it runs the VM.
                Look::Live => self.idle(from.unwrap_or(0))?,
                Look::Over(_) => break None,
            }
        };
        let history = read_history(&self.dir);
        let Some(start) = start.or_else(|| history.as_ref().map(History::end)) else {
            let at = from.unwrap_or(0);
            let reason = match self.look() {
                Look::Over(reason) => reason,
                Look::Live => ConsoleEndReason::Stopped,
            };
            return Ok(self.end(at, reason));
        };
        let log_len = log.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.len());
        let end = start + log_len;
        let first = history.as_ref().map_or(start, |h| h.from.min(start));
        let mut at = from.unwrap_or_else(|| end.saturating_sub(back).max(first));
        if at > end {
            return Err(Stop::Failed(Failure::new(
                409,
                format!(
                    "{}'s console on {} ends at byte {end}: byte {at} was never written here \
                     (a VM started again begins its console at byte 0)",
                    self.name, self.host
                ),
            )));
        }
        if at < start {
            at = self.serve_history(at, start, history)?;
        }
        let Some(mut log) = log else {
            let reason = match self.look() {
                Look::Over(reason) => reason,
                Look::Live => ConsoleEndReason::Stopped,
            };
            return Ok(self.end(at, reason));
        };
        if log.seek(SeekFrom::Start(at - start)).is_err() {
            return Err(Stop::Failed(Failure::new(500, "cannot read the console log")));
        }
        let mut buf = vec![0u8; CHUNK];
        let mut over = None;
        loop {
            let n = match log.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Stop::Failed(Failure::new(
                        500,
                        format!("cannot read the console log: {e}"),
                    )));
                }
            };
            if n > 0 {
                self.line(ConsoleLine::output(at, &buf[..n]))?;
                at += n as u64;
                continue;
            }
            if let Some(reason) = over {
                return Ok(self.end(at, reason));
            }
            match self.look() {
                Look::Live => self.idle(at)?,
                // Its VMM has ended: one more read takes what it wrote last.
                Look::Over(reason) => over = Some(reason),
            }
        }
    }

    /// Serves `[at, start)` from the history (waited for while it has not
    /// come), saying what it lacks; returns `start`.
    fn serve_history(&mut self, mut at: u64, start: u64, history: Option<History>) -> Result<u64, Stop> {
        let deadline = Instant::now() + HISTORY_WAIT;
        let mut history = history;
        while history.is_none() && Instant::now() < deadline {
            self.idle(at)?;
            history = read_history(&self.dir);
        }
        if let Some(history) = history {
            if at < history.from {
                self.line(ConsoleLine::Skipped {
                    from: at,
                    to: history.from,
                })?;
                at = history.from;
            }
            let stop = history.end().min(start);
            if at < stop {
                let bytes = &history.bytes[(at - history.from) as usize..(stop - history.from) as usize];
                self.output(at, bytes)?;
                at = stop;
            }
        }
        if at < start {
            self.line(ConsoleLine::Skipped { from: at, to: start })?;
        }
        Ok(start)
    }
}

impl Agent {
    /// The last `bytes` of the VM's console this host keeps, earlier hosts' included.
    pub fn console(&self, name: &str, bytes: u64) -> Result<String, Failure> {
        let view = self.view(name)?;
        let (_, kept) = kept(&view.dir, view.record.pid, bytes.min(16 << 20));
        let mut cut = 0;
        // Not inside a character.
        while cut < kept.len() && kept[cut] & 0xc0 == 0x80 {
            cut += 1;
        }
        Ok(String::from_utf8_lossy(&kept[cut..]).into_owned())
    }

    /// Whether more may come from VM `name`'s VMM with `pid` here, from the
    /// agent's record of the VM and the VMM's life.
    fn look_console(&self, name: &str, pid: Option<u32>, to: &mut Option<String>) -> Look {
        let Some(pid) = pid else {
            // Reserved for an arrival whose VMM is still to come: the
            // follower asks again in a moment.
            let arriving = self.vms().get(name).is_some_and(|vm| vm.record.arrival.is_some());
            return Look::Over(if arriving {
                ConsoleEndReason::Gone
            } else {
                ConsoleEndReason::Stopped
            });
        };
        let now = self.vms().get(name).map(|vm| {
            (
                vm.record.pid,
                vm.record.departure.as_ref().map(|d| d.target.name.clone()),
                vm.record.arrival.is_some(),
            )
        });
        match now {
            Some((Some(current), leaving, _)) if current == pid => {
                let departing = leaving.is_some();
                if leaving.is_some() {
                    *to = leaving;
                }
                // A departure's VMM may have ended: the move settles first.
                if departing || vmm::alive(pid) {
                    Look::Live
                } else {
                    Look::Over(ConsoleEndReason::Stopped)
                }
            }
            // No longer the VM's here, and still ending.
            _ if vmm::alive(pid) => Look::Live,
            None if to.is_some() => Look::Over(ConsoleEndReason::Moved),
            None => Look::Over(ConsoleEndReason::Gone),
            Some((None, ..)) => Look::Over(ConsoleEndReason::Stopped),
            // Another VMM holds it now: it came back by a migration, or it
            // was started again (a new boot's console begins at 0).
            Some((Some(_), _, arriving)) if arriving || to.is_some() => Look::Over(ConsoleEndReason::Moved),
            Some((Some(_), ..)) => Look::Over(ConsoleEndReason::Stopped),
        }
    }

    /// Streams VM `name`'s console from offset `from` (none: the last `back`
    /// bytes kept here) through `send`, until this host's part of it is
    /// over. None when the client went away.
    pub fn console_stream(
        &self,
        name: &str,
        from: Option<u64>,
        back: u64,
        send: &mut dyn FnMut(ConsoleLine) -> bool,
        still_there: &dyn Fn() -> bool,
    ) -> Option<Result<ConsoleEnd, Failure>> {
        let view = match self.view(name) {
            Ok(view) => view,
            Err(failure) => return Some(Err(failure)),
        };
        let mut look = |pid: Option<u32>, to: &mut Option<String>| self.look_console(name, pid, to);
        let mut stream = Stream {
            host: &self.config.name,
            name,
            look: &mut look,
            dir: view.dir.clone(),
            pid: view.record.pid,
            send,
            still_there,
            last_line: Instant::now(),
            to: view.record.departure.as_ref().map(|d| d.target.name.clone()),
        };
        match stream.run(from, back) {
            Ok(end) => Some(Ok(end)),
            Err(Stop::Failed(failure)) => Some(Err(failure)),
            Err(Stop::Gone) => None,
        }
    }

    /// Hands `input` to the VM's console; how much its UART took.
    pub fn console_input(&self, name: &str, hex: &str) -> Result<ConsoleAccepted, Failure> {
        let bytes =
            crate::hex::decode(hex).ok_or_else(|| Failure::new(400, "hex must be an even number of hex digits"))?;
        if bytes.len() > MAX_CONSOLE_INPUT {
            return Err(Failure::new(
                400,
                format!("at most {MAX_CONSOLE_INPUT} bytes of console input at once"),
            ));
        }
        let view = self.view(name)?;
        let host = &self.config.name;
        if let Some(departure) = &view.record.departure {
            return Err(Failure::new(
                503,
                format!(
                    "{name} is migrating to {}: its console takes input again where it runs once that has settled",
                    departure.target.name
                ),
            ));
        }
        if view.record.pid.is_none() {
            return Err(Failure::new(409, format!("{name} is not running on {host}")));
        }
        let arriving = view.record.arrival.is_some();
        match view.dir.request(&VmmRequest::ConsoleInput { hex: hex.to_string() }) {
            Ok(Reply::ConsoleInput { accepted }) => Ok(ConsoleAccepted { accepted }),
            Ok(_) => Err(Failure::new(500, "the VMM answered something else")),
            Err(e) if e.code() == Some("busy") || (e.code() == Some("wrong_state") && arriving) => {
                Err(Failure::new(503, format!("{name} on {host}: {e}")))
            }
            Err(e) if e.code() == Some("wrong_state") => Err(Failure::new(409, format!("{name} on {host}: {e}"))),
            // Not connected: nothing was asked, nothing taken.
            Err(e @ crate::runtime::control::ControlError::Connect { .. }) => Err(Failure::new(
                503,
                format!(
                    "{name}'s VMM on {host} does not answer: {}",
                    crate::runtime::process::chain(&e)
                ),
            )),
            Err(e) => Err(Failure::new(
                500,
                format!(
                    "the input may not have reached {name} on {host}: {}",
                    crate::runtime::process::chain(&e)
                ),
            )),
        }
    }

    /// Keeps a part of the console that follows VM `name` here by arrival
    /// `id` (see [`Request::ConsoleHistory`]).
    pub fn console_history(&self, name: &str, id: &str, from: u64, hex: &str) -> Result<bool, Failure> {
        let bytes =
            crate::hex::decode(hex).ok_or_else(|| Failure::new(400, "hex must be an even number of hex digits"))?;
        let view = self.view(name)?;
        let arrived_by = |pid| {
            view.dir
                .vmm_record_of(pid)
                .and_then(|r| r.handoff)
                .is_some_and(|h| h.side == Side::Target && h.migration.as_deref() == Some(id))
        };
        let ours = view.record.arrival.as_ref().is_some_and(|a| a.id == id) || view.record.pid.is_some_and(arrived_by);
        if !ours {
            return Ok(false);
        }
        add_history(&view.dir, from, &bytes)
            .map_err(|e| Failure::new(500, format!("cannot keep {name}'s console history: {e}")))
    }

    /// Sends the end of the console this host holds of a VM that moved
    /// (its VMM with `pid` has paused for good: its log is final) to the
    /// target, for arrival `id`, oldest part first.
    pub(super) fn hand_console_on(&self, peer: &Client, name: &str, dir: &VmDir, pid: u32, id: &str) {
        let (mut from, bytes) = kept(dir, Some(pid), HISTORY);
        for part in bytes.chunks(HISTORY_PART) {
            let kept = peer.call::<bool>(Request::ConsoleHistory {
                name: name.to_string(),
                id: id.to_string(),
                from,
                hex: crate::hex::encode(part),
            });
            if !matches!(kept, Ok(true)) {
                return;
            }
            from += part.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, VmDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VmDir::new(tmp.path(), "vm1");
        std::fs::create_dir_all(&dir.path).unwrap();
        (tmp, dir)
    }

    /// The record of the VMM with pid 7 (the one the streams follow).
    fn record_start(dir: &VmDir, start: u64) {
        let mut record = VmmRecord::new();
        record.pid = 7;
        record.console_start = Some(start);
        record.store(&dir.vmm_record()).unwrap();
    }

    #[test]
    fn history_parts_continue_each_other_or_are_refused() {
        let (_tmp, dir) = dir();
        assert_eq!(read_history(&dir), None);
        assert!(add_history(&dir, 100, b"HB seq=4 ").unwrap());
        assert!(add_history(&dir, 109, b"t_ms=").unwrap());
        assert!(add_history(&dir, 100, b"HB seq=4 ").unwrap(), "a part kept already");
        assert!(!add_history(&dir, 200, b"x").unwrap(), "a part that leaves a gap");
        assert_eq!(
            read_history(&dir),
            Some(History {
                from: 100,
                bytes: b"HB seq=4 t_ms=".to_vec()
            })
        );
        let text = std::fs::read_to_string(dir.history()).unwrap();
        assert!(text.starts_with("vmig console history from 100\nHB"), "{text}");
    }

    #[test]
    fn the_kept_console_is_the_history_then_the_log_without_a_gap() {
        let (_tmp, dir) = dir();
        std::fs::write(dir.console(), b"ms=7\nHB seq=5").unwrap();
        record_start(&dir, 14);
        assert_eq!(kept(&dir, None, 100), (14, b"ms=7\nHB seq=5".to_vec()), "the log alone");
        add_history(&dir, 0, b"HB seq=4 t_").unwrap();
        let gap = kept(&dir, None, 100);
        assert_eq!(gap, (14, b"ms=7\nHB seq=5".to_vec()), "a gap: history left out");
        std::fs::remove_file(dir.history()).unwrap();
        add_history(&dir, 3, b"HB seq=4 t_").unwrap();
        assert_eq!(kept(&dir, None, 100), (3, b"HB seq=4 t_ms=7\nHB seq=5".to_vec()));
        // Only the end: of the log alone, or reaching into the history.
        assert_eq!(kept(&dir, None, 5), (22, b"seq=5".to_vec()));
        assert_eq!(kept(&dir, None, 16), (11, b" t_ms=7\nHB seq=5".to_vec()));
        // A VMM that never said where its log begins: right after the history.
        std::fs::remove_file(dir.vmm_record()).unwrap();
        assert_eq!(kept(&dir, None, 100).0, 3);
    }

    /// Runs a stream over `dir` whose VMM's life is `looks` (each look may
    /// first append to the log, as the VMM would); its lines and end.
    fn stream(dir: &VmDir, from: Option<u64>, mut looks: Vec<(&[u8], Look)>) -> (Vec<ConsoleLine>, ConsoleEnd) {
        let mut lines = Vec::new();
        let mut send = |line| {
            lines.push(line);
            true
        };
        let console = dir.console();
        let mut look = move |_: Option<u32>, to: &mut Option<String>| {
            *to = Some("hostB".into());
            let (append, look) = if looks.is_empty() {
                (&b""[..], Look::Over(ConsoleEndReason::Moved))
            } else {
                looks.remove(0)
            };
            let mut file = std::fs::OpenOptions::new().append(true).open(&console).unwrap();
            std::io::Write::write_all(&mut file, append).unwrap();
            look
        };
        let end = {
            let mut stream = Stream {
                host: "hostA",
                name: "vm1",
                look: &mut look,
                dir: dir.clone(),
                pid: Some(7),
                send: &mut send,
                still_there: &|| true,
                last_line: Instant::now(),
                to: None,
            };
            match stream.run(from, 0) {
                Ok(end) => end,
                Err(_) => panic!("the stream stopped"),
            }
        };
        (lines, end)
    }

    fn bytes_of(lines: &[ConsoleLine]) -> (Vec<u8>, Vec<(u64, u64)>) {
        let mut bytes = Vec::new();
        let mut skipped = Vec::new();
        for line in lines {
            match line {
                ConsoleLine::Output { hex, .. } => bytes.extend(crate::hex::decode(hex).unwrap()),
                ConsoleLine::Skipped { from, to } => skipped.push((*from, *to)),
                ConsoleLine::Waiting { .. } => {}
            }
        }
        (bytes, skipped)
    }

    #[test]
    fn a_stream_serves_history_then_the_log_and_its_last_bytes_before_it_ends() {
        let (_tmp, dir) = dir();
        add_history(&dir, 100, b"HB seq=4 t_").unwrap();
        std::fs::write(dir.console(), b"ms=7\n").unwrap();
        record_start(&dir, 111);
        // The VMM writes twice more, the second time just as it ends.
        let looks = vec![
            (&b"HB "[..], Look::Live),
            (&b"seq=5"[..], Look::Over(ConsoleEndReason::Moved)),
        ];
        let (lines, end) = stream(&dir, Some(103), looks);
        let (bytes, skipped) = bytes_of(&lines);
        assert_eq!(bytes, b"seq=4 t_ms=7\nHB seq=5", "from offset 103, every byte once");
        assert!(skipped.is_empty());
        assert_eq!(
            end,
            ConsoleEnd {
                at: 124,
                reason: ConsoleEndReason::Moved,
                to: Some("hostB".into())
            }
        );
        let ConsoleLine::Output { at, .. } = &lines[0] else {
            panic!("{lines:?}");
        };
        assert_eq!(*at, 103);
    }

    #[test]
    fn what_is_kept_nowhere_is_said() {
        let (_tmp, dir) = dir();
        add_history(&dir, 100, b"0123456789").unwrap();
        std::fs::write(dir.console(), b"log").unwrap();
        record_start(&dir, 120);
        let (lines, end) = stream(&dir, Some(90), vec![(&b""[..], Look::Over(ConsoleEndReason::Stopped))]);
        let (bytes, skipped) = bytes_of(&lines);
        assert_eq!(bytes, b"0123456789log");
        assert_eq!(skipped, [(90, 100), (110, 120)], "{lines:?}");
        assert_eq!((end.at, end.reason, end.to), (123, ConsoleEndReason::Stopped, None));
    }
}
