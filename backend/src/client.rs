//! The agent API's client side, used by the operator's commands and by agents
//! talking to each other (see [`crate::api`] for the protocol).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::api::{API_VERSION, Envelope, Line, MAX_REQUEST, MigrateProgress, Request};
use crate::pki::{self, PkiError};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum ClientError {
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
    #[error("lost the connection to the agent of {host}")]
    Io {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent of {host} answered something that is not its API: {detail}")]
    Protocol { host: String, detail: String },
    /// The agent refused or failed the request; `status` is HTTP-like.
    #[error("{host}: {message}")]
    Status { host: String, status: u16, message: String },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// One agent to talk to.
#[derive(Debug, Clone)]
pub struct Client {
    pub host: String,
    pub address: String,
    tls: Arc<rustls::ClientConfig>,
}

impl Client {
    pub fn new(host: &str, address: &str, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            host: host.to_string(),
            address: address.to_string(),
            tls,
        }
    }

    /// Sends `request` and returns the final result, handing progress lines to
    /// `progress` as they come.
    pub fn call_with_progress<T: DeserializeOwned>(
        &self,
        request: Request,
        progress: &mut dyn FnMut(MigrateProgress),
    ) -> Result<T, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            host: self.host.clone(),
            address: self.address.clone(),
            source,
        };
        let io = |source| ClientError::Io {
            host: self.host.clone(),
            source,
        };
        let addr = self
            .address
            .to_socket_addrs()
            .map_err(unreachable)?
            .next()
            .ok_or_else(|| unreachable(std::io::ErrorKind::NotFound.into()))?;
        let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(unreachable)?;
        let _ = tcp.set_nodelay(true);
        let _ = tcp.set_read_timeout(Some(CONNECT_TIMEOUT));
        let mut tls = pki::connect(Arc::clone(&self.tls), &self.host, tcp).map_err(|source| match source {
            // A peer that goes away mid-handshake is not a certificate problem.
            PkiError::Handshake(e) if e.kind() != std::io::ErrorKind::InvalidData => unreachable(e),
            source => ClientError::Tls {
                host: self.host.clone(),
                source: Box::new(source),
            },
        })?;
        // Long requests (a migration) answer when they are done.
        let _ = tls.sock.set_read_timeout(None);
        let envelope = Envelope {
            v: API_VERSION,
            request,
        };
        let mut line = serde_json::to_vec(&envelope).map_err(|e| self.protocol(e.to_string()))?;
        line.push(b'\n');
        tls.write_all(&line).map_err(io)?;
        tls.flush().map_err(io)?;
        let mut reader = BufReader::new(tls);
        let mut text = String::new();
        loop {
            text.clear();
            let n = reader
                .by_ref()
                .take(MAX_REQUEST as u64)
                .read_line(&mut text)
                .map_err(|e| {
                    // A peer that rejects our certificate says so after the handshake.
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        ClientError::Tls {
                            host: self.host.clone(),
                            source: Box::new(PkiError::Handshake(e)),
                        }
                    } else {
                        io(e)
                    }
                })?;
            if n == 0 {
                return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let line: Line = serde_json::from_str(&text).map_err(|e| self.protocol(e.to_string()))?;
            match line {
                Line::Progress { progress: p } => progress(p),
                Line::Answer(answer) if answer.status == 200 => {
                    let value = answer.result.unwrap_or(serde_json::Value::Null);
                    return serde_json::from_value(value).map_err(|e| self.protocol(e.to_string()));
                }
                Line::Answer(answer) => {
                    return Err(ClientError::Status {
                        host: self.host.clone(),
                        status: answer.status,
                        message: answer.error.unwrap_or_else(|| format!("status {}", answer.status)),
                    });
                }
            }
        }
    }

    pub fn call<T: DeserializeOwned>(&self, request: Request) -> Result<T, ClientError> {
        self.call_with_progress(request, &mut |_| {})
    }

    fn protocol(&self, detail: String) -> ClientError {
        ClientError::Protocol {
            host: self.host.clone(),
            detail,
        }
    }
}
