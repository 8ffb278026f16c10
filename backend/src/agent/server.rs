//! The agent's API server: a thread per connection, mutual TLS, one request
//! each (see [`crate::api`]).
//!
//! A migration never waits for the connection that asked for it: the
//! connection watches it ([`super::migrations`]), and a client that is slow,
//! stopped or gone only loses its own lines (each write gives up after
//! [`WRITE_TIMEOUT`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use serde::Serialize;

use super::audit::Audited;
use super::guard::{self, Guard};
use super::journal::Event;
use super::migrations::Migration;
use super::{Agent, AgentError, Failure};
use crate::api::{
    Answer, Envelope, KEEPALIVE_EVERY, Line, MAX_REQUEST, MigrateProgress, MigrationInfo, MigrationSide, Request,
};
use crate::pki::{self, Peer};
use crate::runtime::process::chain;

/// A read of the handshake or request that takes longer ends the
/// connection (the whole of both has [`guard::REQUEST_DEADLINE`]).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A write to a client that takes longer than this ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the API address, then calls `ready` and serves until the process ends.
pub fn serve(agent: &Arc<Agent>, ready: impl FnOnce(std::net::SocketAddr)) -> Result<(), AgentError> {
    let address = agent.config.api_address;
    let listener = TcpListener::bind(address).map_err(|source| AgentError::Listen {
        address: address.to_string(),
        source,
    })?;
    let tls = pki::server_config(&agent.config.tls)?;
    let guard = Guard::start(Arc::clone(&agent.api), agent.config.max_api_connections()).map_err(|source| {
        AgentError::Listen {
            address: address.to_string(),
            source,
        }
    })?;
    ready(listener.local_addr().unwrap_or(address));
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            continue;
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        // Refused at once, counted and logged, when every place is taken:
        // a place is taken before its thread starts, so the threads a flood
        // of clients can hold are bounded.
        let Some(place) = guard.admit(&stream, peer) else {
            continue;
        };
        let agent = Arc::clone(agent);
        let tls = Arc::clone(&tls);
        let guard = Arc::clone(&guard);
        let _ = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || connection(&agent, &guard, &place, tls, stream, peer));
    }
    Ok(())
}

fn connection(
    agent: &Arc<Agent>,
    guard: &Guard,
    place: &guard::Place,
    tls: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    address: std::net::SocketAddr,
) {
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = tcp.set_write_timeout(Some(WRITE_TIMEOUT));
    let raw = tcp.as_raw_fd();
    // A client without a certificate of the cluster's CA ends here, refused
    // by TLS; the refusal is logged with its address.
    let mut stream = match pki::accept(tls, tcp) {
        Ok(stream) => stream,
        Err(_) if place.expired() => return,
        Err(e) => {
            agent.api.refused_tls.fetch_add(1, Ordering::Relaxed);
            guard.refused(address, None, &format!("refused a connection: {}", chain(&e)));
            return;
        }
    };
    let peer = match pki::peer_of(&stream.conn) {
        Ok(peer) => peer,
        Err(e) => {
            // A certificate of this CA that names no role we know: said, not
            // just dropped (the client exits with the auth code).
            agent.api.refused_tls.fetch_add(1, Ordering::Relaxed);
            let message = format!("this agent refuses the certificate: {}", chain(&e));
            guard.refused(address, None, &format!("refused a connection: {message}"));
            let mut out = LineWriter { stream: &mut stream };
            out.line(&Line::Answer(failed(Failure::new(403, message))));
            stream.conn.send_close_notify();
            let _ = stream.flush();
            return;
        }
    };
    let mut reader = BufReader::new(&mut stream);
    let mut line = String::new();
    let read = reader.by_ref().take(MAX_REQUEST as u64).read_line(&mut line);
    drop(reader);
    place.request_read();
    let _ = stream.sock.set_read_timeout(None);
    let mut out = LineWriter { stream: &mut stream };
    let answer = match read {
        Ok(0) | Err(_) => return,
        Ok(_) if !line.ends_with('\n') => Some(failed(Failure::new(
            400,
            format!("a request is one line of at most {MAX_REQUEST} bytes"),
        ))),
        Ok(_) => {
            let span = tracing::info_span!("request", from = %address, by = %peer.name);
            let _in = span.enter();
            handle(agent, &peer, address, &line, &mut out, &|| still_there(raw))
        }
    };
    if let Some(answer) = answer {
        if matches!(answer.status, 400 | 403) {
            agent.api.refused_requests.fetch_add(1, Ordering::Relaxed);
            guard.refused(
                address,
                Some(&peer),
                &format!("refused a request: {}", answer.error.as_deref().unwrap_or_default()),
            );
        }
        out.line(&Line::Answer(answer));
    }
    stream.conn.send_close_notify();
    let _ = stream.flush();
}

/// True while the client of `fd` has neither closed its side nor sent more
/// (it sends one request and then only reads): peeked without blocking.
fn still_there(fd: std::os::fd::RawFd) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    // MSG_PEEK leaves the data, and MSG_DONTWAIT keeps this one call from
    // blocking.
    let mut byte = [0u8; 1];
    matches!(
        recv(fd, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT),
        Err(nix::errno::Errno::EAGAIN)
    )
}

struct LineWriter<'a, S: Write> {
    stream: &'a mut S,
}

impl<S: Write> LineWriter<'_, S> {
    /// Writes one answer line; false when the client went away (which is
    /// not the request's failure).
    fn line(&mut self, line: &Line) -> bool {
        let Ok(mut text) = serde_json::to_vec(line) else {
            return false;
        };
        text.push(b'\n');
        self.stream.write_all(&text).is_ok() && self.stream.flush().is_ok()
    }
}

fn ok(value: impl Serialize) -> Answer {
    match serde_json::value::to_raw_value(&value) {
        Ok(result) => Answer {
            status: 200,
            result: Some(result),
            error: None,
            code: None,
        },
        Err(e) => failed(Failure::new(500, e.to_string())),
    }
}

fn failed(failure: Failure) -> Answer {
    Answer {
        status: failure.status,
        result: None,
        error: Some(failure.message),
        code: Some(failure.code),
    }
}

fn answer<T: Serialize>(result: Result<T, Failure>) -> Answer {
    match result {
        Ok(value) => ok(value),
        Err(failure) => failed(failure),
    }
}

/// Handles one request; the final answer, or None when the client went away.
/// The audit trail gets what it records before the answer goes out.
fn handle<S: Write>(
    agent: &Arc<Agent>,
    peer: &Peer,
    from: std::net::SocketAddr,
    line: &str,
    out: &mut LineWriter<'_, S>,
    still_there: &dyn Fn() -> bool,
) -> Option<Answer> {
    let envelope = match Envelope::decode(line) {
        Ok(envelope) => envelope,
        Err(message) => return Some(failed(Failure::new(400, message))),
    };
    let request = envelope.request;
    let mut audited = Audited::new(&request, peer, from);
    let answer = if crate::api::allowed(&request, peer.role) {
        dispatch(agent, peer, request, &mut audited, out, still_there)
    } else {
        Some(failed(Failure::new(
            403,
            format!("{} ({:?} certificate) may not make this request", peer.name, peer.role),
        )))
    };
    // A client that went away during a read-only stream (a console) left
    // nothing to record; a migration was recorded when it was taken.
    if let Some(answer) = &answer {
        audited.answered(&agent.audit, answer.status, answer.code, answer.error.as_deref());
    }
    answer
}

/// Does what `request` asks; the final answer, or None when the client went
/// away.
fn dispatch<S: Write>(
    agent: &Arc<Agent>,
    peer: &Peer,
    request: Request,
    audited: &mut Audited,
    out: &mut LineWriter<'_, S>,
    still_there: &dyn Fn() -> bool,
) -> Option<Answer> {
    Some(match request {
        Request::Host => ok(agent.facts()),
        Request::ListVms => ok(agent.list()),
        Request::CreateVm { spec, start } => answer(agent.create(&spec, start)),
        Request::StartVm { name } => answer(agent.start(&name)),
        Request::StopVm { name } => answer(agent.stop(&name)),
        Request::DestroyVm { name } => answer(agent.destroy(&name)),
        Request::ShowVm { name } => answer(agent.show(&name)),
        Request::Console { name, bytes } => answer(agent.console(&name, bytes)),
        Request::ConsoleStream { name, from, back } => {
            let mut send = |line| out.line(&Line::Console { console: line });
            return agent
                .console_stream(&name, from, back, &mut send, still_there)
                .map(answer);
        }
        Request::ConsoleInput { name, hex } => answer(agent.console_input(&name, &hex)),
        Request::Migrate {
            name,
            target,
            options,
            id,
            run,
        } => match agent.migrate_out(&name, &target, options, id, run.as_deref(), Some(&peer.name)) {
            Ok(migration) => {
                // Watched before the trail's write, so that no line of the
                // migration (its queueing) goes by meanwhile.
                let lines = migration.watch();
                audited.taken(&agent.audit, &migration.id);
                return follow(&migration, &lines, out);
            }
            Err(failure) => failed(failure),
        },
        Request::WatchMigration { id } => match agent.migrations.get(&id) {
            Some(migration) => return watch(&migration, out),
            None => match journaled_outcome(agent, &id) {
                Some(answer) => answer,
                None => failed(Failure::new(404, format!("no migration {id} on {}", agent.config.name))),
            },
        },
        Request::Migration { id } => answer(migration_info(agent, &id)),
        Request::History { since_ms, vm, run } => {
            ok(agent.journal.history(&super::journal::Filter { since_ms, vm, run }))
        }
        Request::CancelMigration { name } => answer(agent.cancel_migration(&name)),
        Request::PrepareIncoming {
            spec,
            token,
            source,
            id,
            plaintext,
        } => {
            // The source named is whom the receiver's TLS will take the
            // streams from: it must be the host that asks.
            if source != peer.name {
                return Some(failed(Failure::new(
                    403,
                    format!("host {} cannot prepare a migration from {source}", peer.name),
                )));
            }
            let mut progress = |p: MigrateProgress| {
                out.line(&Line::Progress { progress: p });
            };
            let offer = super::incoming::Offer {
                token,
                source: &source,
                id: &id,
                plaintext,
            };
            answer(agent.prepare_incoming(&spec, &offer, &mut progress, still_there))
        }
        Request::FinishIncoming { name, id, migrated, .. } => ok(agent.finish_incoming(&name, &id, migrated)),
        Request::ConsoleHistory { name, id, from, hex } => answer(agent.console_history(&name, &id, from, &hex)),
        Request::IncomingState { name, id } => ok(agent.incoming_state(&name, &id)),
        Request::ProbeDrives { paths } => ok(paths
            .iter()
            .take(crate::vmm::devices::virtio::mmio::MAX_DEVICES * 4)
            .map(|path| super::storage::probe(&agent.config.storage, path))
            .collect::<Vec<_>>()),
        Request::Cdrom { name, medium } => answer(agent.cdrom(&name, medium.as_deref())),
        Request::SampleDirtyRate { name, window_ms } => answer(agent.sample_dirty(&name, window_ms)),
        Request::Cordon { reason, run } => answer(agent.cordon(reason, run, &peer.name)),
        Request::RecordRun { run, event } => {
            if !valid_run_id(&run) {
                return Some(failed(Failure::new(400, format!("{run:?} is not a run id"))));
            }
            match agent.runs.record(&run, Some(&peer.name), event) {
                Ok(()) => ok(()),
                Err(e) => failed(Failure::new(500, format!("cannot write the journal of runs: {e}"))),
            }
        }
        Request::Runs { run } => ok(agent.runs.runs(run.as_deref())),
        Request::Audit { since_ms, by } => ok(agent.audit.trail(since_ms, by.as_deref())),
        Request::Uncordon => answer(agent.uncordon()),
        Request::RecordRefusal {
            id,
            name,
            target,
            run,
            rules,
            code,
            message,
        } => {
            if !super::migrations::valid_id(&id) || crate::api::validate_name(&name).is_err() {
                return Some(failed(Failure::new(400, "not a migration id or VM name")));
            }
            let event = crate::api::JournalEvent::Refused { rules, code, message };
            match agent
                .journal
                .refused(&id, &name, &target, (run.as_deref(), Some(&peer.name)), event)
            {
                Ok(()) => ok(()),
                Err(e) => failed(Failure::new(500, format!("cannot write the journal: {e}"))),
            }
        }
    })
}

/// Streams a migration's progress to the client, with a keepalive line when
/// there is no news, until it ends; its outcome is the answer. None when the
/// client went away (the migration goes on).
fn watch<S: Write>(migration: &Migration, out: &mut LineWriter<'_, S>) -> Option<Answer> {
    follow(migration, &migration.watch(), out)
}

/// [`watch`] with the watcher's `lines` already taken.
fn follow<S: Write>(
    migration: &Migration,
    lines: &std::sync::mpsc::Receiver<MigrateProgress>,
    out: &mut LineWriter<'_, S>,
) -> Option<Answer> {
    loop {
        match lines.recv_timeout(KEEPALIVE_EVERY) {
            Ok(line) => {
                if !out.line(&Line::Progress { progress: line }) {
                    return None;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some(outcome) = migration.outcome() {
                    return Some(outcome.answer());
                }
                let waiting = MigrateProgress::Waiting {
                    phase: migration.phase(),
                };
                if !out.line(&Line::Progress { progress: waiting }) {
                    return None;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return migration.outcome().map(|outcome| outcome.answer());
            }
        }
    }
}

/// The recorded outcome of a migration that has left the agent's memory.
fn journaled_outcome(agent: &Agent, id: &str) -> Option<Answer> {
    agent
        .journal
        .entries(id)
        .into_iter()
        .rev()
        .find_map(|entry| match entry.event {
            Event::Ended { outcome } => Some(outcome.answer()),
            _ => None,
        })
}

fn migration_info(agent: &Agent, id: &str) -> Result<MigrationInfo, Failure> {
    if let Some(migration) = agent.migrations.get(id) {
        return Ok(MigrationInfo {
            id: id.to_string(),
            vm: migration.vm.clone(),
            side: MigrationSide::Source,
            peer: migration.target.clone(),
            phase: Some(migration.phase()),
            outcome: migration.outcome(),
            arrival: None,
        });
    }
    let entries = agent.journal.entries(id);
    if let Some(started) = entries.iter().find(|e| e.event == Event::Started) {
        let outcome = entries.iter().rev().find_map(|e| match &e.event {
            Event::Ended { outcome } => Some((**outcome).clone()),
            _ => None,
        });
        return Ok(MigrationInfo {
            id: id.to_string(),
            vm: started.vm.clone(),
            side: MigrationSide::Source,
            peer: started.peer.clone(),
            phase: None,
            outcome,
            arrival: None,
        });
    }
    agent
        .arrival_info(id)
        .ok_or_else(|| Failure::new(404, format!("no migration {id} on {}", agent.config.name)))
}

/// A run id as `vmig` makes them: `r-` and 16 hex digits (a bounded,
/// printable key for the journal).
fn valid_run_id(run: &str) -> bool {
    run.strip_prefix("r-")
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}
