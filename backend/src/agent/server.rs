//! The agent's API server: a thread per connection, mutual TLS, one request
//! each (see [`crate::api`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{Agent, AgentError, Failure, facts};
use crate::api::{API_VERSION, Answer, Envelope, Line, MAX_REQUEST, MigrateProgress, Request};
use crate::pki::{self, Peer};

/// A client has this long to finish the handshake and send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the API address, then calls `ready` and serves until the process ends.
pub fn serve(agent: &Arc<Agent>, ready: impl FnOnce(std::net::SocketAddr)) -> Result<(), AgentError> {
    let address = agent.config.api_address;
    let listener = TcpListener::bind(address).map_err(|source| AgentError::Listen {
        address: address.to_string(),
        source,
    })?;
    let tls = pki::server_config(&agent.config.tls)?;
    ready(listener.local_addr().unwrap_or(address));
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            continue;
        };
        let agent = Arc::clone(agent);
        let tls = Arc::clone(&tls);
        let _ = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || connection(&agent, tls, stream));
    }
    Ok(())
}

fn connection(agent: &Arc<Agent>, tls: Arc<rustls::ServerConfig>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_read_timeout(Some(REQUEST_TIMEOUT));
    // A client without a valid certificate ends here, refused by TLS.
    let Ok(mut stream) = pki::accept(tls, tcp) else {
        return;
    };
    let Ok(peer) = pki::peer_of(&stream.conn) else {
        return;
    };
    let mut reader = BufReader::new(&mut stream);
    let mut line = String::new();
    let read = reader.by_ref().take(MAX_REQUEST as u64).read_line(&mut line);
    drop(reader);
    let _ = stream.sock.set_read_timeout(None);
    let mut out = LineWriter { stream: &mut stream };
    let answer = match read {
        Ok(0) | Err(_) => return,
        Ok(_) if !line.ends_with('\n') => Err(Failure::new(
            400,
            format!("a request is one line of at most {MAX_REQUEST} bytes"),
        )),
        Ok(_) => handle(agent, &peer, &line, &mut out),
    };
    let answer = match answer {
        Ok(result) => Answer {
            status: 200,
            result: Some(result),
            error: None,
        },
        Err(failure) => Answer {
            status: failure.status,
            result: None,
            error: Some(failure.message),
        },
    };
    out.line(&Line::Answer(answer));
    stream.conn.send_close_notify();
    let _ = stream.flush();
}

struct LineWriter<'a, S: Write> {
    stream: &'a mut S,
}

impl<S: Write> LineWriter<'_, S> {
    /// Writes one answer line; a client that went away is not our failure.
    fn line(&mut self, line: &Line) {
        if let Ok(mut text) = serde_json::to_vec(line) {
            text.push(b'\n');
            let _ = self.stream.write_all(&text);
            let _ = self.stream.flush();
        }
    }
}

fn to_value(value: impl Serialize) -> Result<serde_json::Value, Failure> {
    serde_json::to_value(value).map_err(|e| Failure::new(500, e.to_string()))
}

fn handle<S: Write>(
    agent: &Arc<Agent>,
    peer: &Peer,
    line: &str,
    out: &mut LineWriter<'_, S>,
) -> Result<serde_json::Value, Failure> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| Failure::new(400, format!("the request is not JSON: {e}")))?;
    let version = value.get("v").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(API_VERSION)) {
        return Err(Failure::new(
            400,
            format!("API version {version:?} is not supported; this agent speaks version {API_VERSION}"),
        ));
    }
    let envelope: Envelope =
        serde_json::from_value(value).map_err(|e| Failure::new(400, format!("malformed request: {e}")))?;
    let request = envelope.request;
    if !crate::api::allowed(&request, peer.role) {
        return Err(Failure::new(
            403,
            format!("{} ({:?} certificate) may not make this request", peer.name, peer.role),
        ));
    }
    let mut progress = |p: MigrateProgress| out.line(&Line::Progress { progress: p });
    match request {
        Request::Host => {
            let vms = agent.vms().len();
            to_value(facts::gather(&agent.config, vms, agent.slots.usage()))
        }
        Request::ListVms => to_value(agent.list()),
        Request::CreateVm { spec, start } => to_value(agent.create(&spec, start)?),
        Request::StartVm { name } => to_value(agent.start(&name)?),
        Request::StopVm { name } => to_value(agent.stop(&name)?),
        Request::DestroyVm { name } => to_value(agent.destroy(&name)?),
        Request::ShowVm { name } => to_value(agent.show(&name)?),
        Request::Console { name, bytes } => to_value(agent.console(&name, bytes)?),
        Request::Migrate { name, target, options } => {
            to_value(agent.migrate_out(&name, &target, options, &mut progress)?)
        }
        Request::PrepareIncoming { spec, token, source } => {
            to_value(agent.prepare_incoming(&spec, token, &source, &mut progress)?)
        }
        Request::FinishIncoming {
            name,
            migrated,
            console,
        } => to_value(agent.finish_incoming(&name, migrated, &console)?),
        Request::IncomingState { name } => to_value(agent.incoming_state(&name)),
    }
}
