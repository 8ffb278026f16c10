//! The agent API's client side, used by the operator's commands and by agents
//! talking to each other (see [`crate::api`] for the protocol).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use thiserror::Error;

use crate::api::{API_VERSION, Code, ConsoleLine, Envelope, MAX_ANSWER, MigrateProgress, Request};
use crate::pki::{self, PkiError};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum ClientError {
    /// The request never reached the agent: nothing was asked.
    #[error("cannot reach the agent of {host} at {address}")]
    Unreachable {
        host: String,
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent of {host} did not accept our certificate, or we did not accept its")]
    Tls {
        host: String,
        #[source]
        source: Box<PkiError>,
    },
    /// The request was sent, and the connection failed before the answer.
    #[error("lost the connection to the agent of {host}")]
    Io {
        host: String,
        #[source]
        source: std::io::Error,
    },
    /// The request was sent, and the agent closed the connection before
    /// its answer (it ended, or restarted).
    #[error("the agent of {host} closed the connection before it answered")]
    Closed { host: String },
    /// The request was sent, and the agent said nothing for longer than
    /// the caller waits for a line.
    #[error("the agent of {host} sent nothing for {} s", .waited.as_secs())]
    Silent { host: String, waited: Duration },
    /// The caller stopped waiting for the answer (a cancel).
    #[error("stopped waiting for the agent of {host}")]
    Aborted { host: String },
    #[error("the agent of {host} answered something that is not its API: {detail}")]
    Protocol { host: String, detail: String },
    /// The agent refused or failed the request; `status` is HTTP-like and
    /// `code` says what it was.
    #[error("{host}: {message}")]
    Status {
        host: String,
        status: u16,
        code: Code,
        message: String,
    },
}

impl ClientError {
    /// The host whose agent the call was for.
    pub fn host(&self) -> &str {
        match self {
            ClientError::Unreachable { host, .. }
            | ClientError::Tls { host, .. }
            | ClientError::Io { host, .. }
            | ClientError::Closed { host }
            | ClientError::Silent { host, .. }
            | ClientError::Aborted { host }
            | ClientError::Protocol { host, .. }
            | ClientError::Status { host, .. } => host,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The agent's code for a refusal or failure it answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the request may have been taken but its answer was lost:
    /// whoever sent it must ask again to learn what happened.
    pub fn answer_lost(&self) -> bool {
        matches!(
            self,
            ClientError::Io { .. } | ClientError::Closed { .. } | ClientError::Silent { .. }
        )
    }
}

/// An answer line ([`crate::api::Line`]) as the client reads it.
#[derive(Deserialize)]
struct RawLine<'a> {
    #[serde(default)]
    progress: Option<MigrateProgress>,
    #[serde(default)]
    console: Option<ConsoleLine>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    code: Option<Code>,
}

/// A line before the final answer.
enum Streamed {
    Progress(MigrateProgress),
    Console(ConsoleLine),
}

/// One agent to talk to.
#[derive(Debug, Clone)]
pub struct Client {
    pub host: String,
    pub address: String,
    tls: Arc<rustls::ClientConfig>,
    /// The address our connections leave from (an agent's own), if set.
    local: Option<IpAddr>,
    /// The longest a call waits for the next line of its answer.
    patience: Option<Duration>,
}

impl Client {
    pub fn new(host: &str, address: &str, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            host: host.to_string(),
            address: address.to_string(),
            tls,
            local: None,
            patience: None,
        }
    }

    /// Connections leave from `ip` (an agent talks from its own address).
    pub fn from_address(mut self, ip: Option<IpAddr>) -> Self {
        self.local = ip;
        self
    }

    /// A call gives up ([`ClientError::Silent`]) when the agent sends no line
    /// for `patience`.
    pub fn patience(mut self, patience: Option<Duration>) -> Self {
        self.patience = patience;
        self
    }

    /// Sends `request` and returns the final result, handing progress lines to
    /// `progress` as they come.
    pub fn call_with_progress<T: DeserializeOwned>(
        &self,
        request: Request,
        progress: &mut dyn FnMut(MigrateProgress),
    ) -> Result<T, ClientError> {
        self.call_until(request, &mut |line| {
            progress(line);
            true
        })
    }

    /// Like [`Client::call_with_progress`], but gives up on the answer
    /// ([`ClientError::Aborted`]) once `progress` returns false.
    pub fn call_until<T: DeserializeOwned>(
        &self,
        request: Request,
        progress: &mut dyn FnMut(MigrateProgress) -> bool,
    ) -> Result<T, ClientError> {
        self.exchange(request, &mut |line| match line {
            Streamed::Progress(p) => progress(p),
            Streamed::Console(_) => true,
        })
    }

    /// Sends a `console_stream` request and hands its console lines to
    /// `on_line` as they come, until the final answer; gives up
    /// ([`ClientError::Aborted`]) once `on_line` returns false.
    pub fn stream_console<T: DeserializeOwned>(
        &self,
        request: Request,
        on_line: &mut dyn FnMut(ConsoleLine) -> bool,
    ) -> Result<T, ClientError> {
        self.exchange(request, &mut |line| match line {
            Streamed::Console(c) => on_line(c),
            Streamed::Progress(_) => true,
        })
    }

    fn exchange<T: DeserializeOwned>(
        &self,
        request: Request,
        on_line: &mut dyn FnMut(Streamed) -> bool,
    ) -> Result<T, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            host: self.host.clone(),
            address: self.address.clone(),
            source,
        };
        let addr = self
            .address
            .to_socket_addrs()
            .map_err(unreachable)?
            .next()
            .ok_or_else(|| unreachable(std::io::ErrorKind::NotFound.into()))?;
        let tcp = crate::net::connect(&addr, self.local, CONNECT_TIMEOUT).map_err(unreachable)?;
        let _ = tcp.set_nodelay(true);
        let _ = tcp.set_read_timeout(Some(CONNECT_TIMEOUT));
        let _ = tcp.set_write_timeout(Some(CONNECT_TIMEOUT));
        let mut tls = pki::connect(Arc::clone(&self.tls), &self.host, tcp).map_err(|source| match source {
            // A peer that goes away mid-handshake is not a certificate problem.
            PkiError::Handshake(e) if e.kind() != std::io::ErrorKind::InvalidData => unreachable(e),
            source => ClientError::Tls {
                host: self.host.clone(),
                source: Box::new(source),
            },
        })?;
        // Long requests (a migration) answer when they are done.
        let _ = tls.sock.set_read_timeout(self.patience);
        let envelope = Envelope {
            v: API_VERSION,
            request,
        };
        let mut line = serde_json::to_vec(&envelope).map_err(|e| self.protocol(e.to_string()))?;
        line.push(b'\n');
        tls.write_all(&line).map_err(|e| self.lost(e))?;
        tls.flush().map_err(|e| self.lost(e))?;
        let mut reader = BufReader::with_capacity(64 << 10, tls);
        let mut text = String::new();
        loop {
            text.clear();
            let n = reader
                .by_ref()
                .take(MAX_ANSWER as u64)
                .read_line(&mut text)
                .map_err(|e| {
                    // A peer that rejects our certificate says so after the handshake.
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        ClientError::Tls {
                            host: self.host.clone(),
                            source: Box::new(PkiError::Handshake(e)),
                        }
                    } else {
                        self.lost(e)
                    }
                })?;
            if n == 0 {
                return Err(ClientError::Closed {
                    host: self.host.clone(),
                });
            }
            // One pass over the line, the result kept raw: an answer can be
            // megabytes (a history), parsed once, straight into `T`.
            let mut line: RawLine<'_> = serde_json::from_str(&text).map_err(|e| self.protocol(e.to_string()))?;
            let streamed = match line.progress.take() {
                Some(p) => Some(Streamed::Progress(p)),
                None => line.console.take().map(Streamed::Console),
            };
            if let Some(streamed) = streamed {
                if !on_line(streamed) {
                    return Err(ClientError::Aborted {
                        host: self.host.clone(),
                    });
                }
                continue;
            }
            match line {
                RawLine {
                    status: Some(200),
                    result,
                    ..
                } => {
                    let raw = result.map_or("null", RawValue::get);
                    return serde_json::from_str(raw).map_err(|e| self.protocol(e.to_string()));
                }
                RawLine {
                    status: Some(status),
                    error,
                    code,
                    ..
                } => {
                    return Err(ClientError::Status {
                        host: self.host.clone(),
                        status,
                        code: code.unwrap_or_else(|| Code::of_status(status)),
                        message: error.unwrap_or_else(|| format!("status {status}")),
                    });
                }
                RawLine { .. } => {
                    return Err(self.protocol("a line that is neither progress, console nor an answer".into()));
                }
            }
        }
    }

    pub fn call<T: DeserializeOwned>(&self, request: Request) -> Result<T, ClientError> {
        self.call_with_progress(request, &mut |_| {})
    }

    /// A failure after the request was sent. An end of the stream without
    /// TLS's closing alert is the agent closing (or dying), said in our own
    /// words (the TLS library's message points at its documentation).
    fn lost(&self, error: std::io::Error) -> ClientError {
        match error.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => ClientError::Closed {
                host: self.host.clone(),
            },
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::Silent {
                host: self.host.clone(),
                waited: self.patience.unwrap_or(CONNECT_TIMEOUT),
            },
            _ => ClientError::Io {
                host: self.host.clone(),
                source: error,
            },
        }
    }

    fn protocol(&self, detail: String) -> ClientError {
        ClientError::Protocol {
            host: self.host.clone(),
            detail,
        }
    }
}
