//! The API's bounds: how many connections are served at once (more are
//! closed as they arrive, counted and logged), and one deadline for each
//! connection to finish its TLS handshake and send its request line, kept
//! by a watcher thread that shuts the socket of a client past it. A read
//! timeout alone is per read: a client trickling a byte every few seconds
//! would hold its thread for ever.

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Connections served at once, unless the config says otherwise.
pub const MAX_CONNECTIONS: usize = 256;
/// From accept to the request line read: handshake and request together.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How often the watcher looks.
const TICK: Duration = Duration::from_millis(200);

/// The counters the host's facts show.
#[derive(Debug, Default)]
pub struct ApiCounters {
    /// Connections refused because [`MAX_CONNECTIONS`] were open.
    pub refused_busy: AtomicU64,
    /// Connections ended because their request had not come by the deadline.
    pub timed_out: AtomicU64,
    /// Handshakes refused (no certificate, another CA's, an unknown role).
    pub refused_tls: AtomicU64,
    /// Requests answered 400 or 403.
    pub refused_requests: AtomicU64,
}

/// Open connections and the deadlines of those whose request is not read yet.
#[derive(Debug)]
pub struct Guard {
    open: AtomicUsize,
    next: AtomicU64,
    pending: Mutex<HashMap<u64, Watched>>,
    pub counters: Arc<ApiCounters>,
    /// Connections served at once.
    max: usize,
}

/// A connection whose request is awaited.
#[derive(Debug)]
struct Watched {
    deadline: Instant,
    tcp: TcpStream,
    peer: SocketAddr,
    expired: Arc<AtomicBool>,
}

/// A connection being served; dropping it frees its place.
#[derive(Debug)]
pub struct Place {
    guard: Arc<Guard>,
    id: u64,
    expired: Arc<AtomicBool>,
}

impl Guard {
    /// A guard, and its watcher thread (it lives as long as the process).
    /// At most `max` connections are served at once.
    pub fn start(counters: Arc<ApiCounters>, max: usize) -> std::io::Result<Arc<Guard>> {
        let guard = Arc::new(Guard {
            open: AtomicUsize::new(0),
            next: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            counters,
            max,
        });
        let watched = Arc::clone(&guard);
        std::thread::Builder::new()
            .name("api-deadlines".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK);
                    watched.expire(Instant::now());
                }
            })?;
        Ok(guard)
    }

    /// Takes a place for a new connection from `peer`, its deadline running;
    /// None (the connection is refused, counted and logged) when every
    /// place is taken.
    pub fn admit(self: &Arc<Self>, tcp: &TcpStream, peer: SocketAddr) -> Option<Place> {
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        if open >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refuse(peer);
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let expired = Arc::new(AtomicBool::new(false));
        if let Ok(tcp) = tcp.try_clone() {
            let watched = Watched {
                deadline: Instant::now() + REQUEST_DEADLINE,
                tcp,
                peer,
                expired: Arc::clone(&expired),
            };
            self.pending().insert(id, watched);
        }
        Some(Place {
            guard: Arc::clone(self),
            id,
            expired,
        })
    }

    /// Counts and logs a connection refused for want of a place.
    fn refuse(&self, peer: SocketAddr) {
        self.counters.refused_busy.fetch_add(1, Ordering::Relaxed);
        self.refused(
            peer,
            None,
            &format!("refused a connection: {} connections are open", self.max),
        );
    }

    /// Logs a refusal: of a connection from `from`, or of a request of
    /// `peer`'s certificate.
    pub fn refused(&self, from: SocketAddr, peer: Option<&crate::pki::Peer>, message: &str) {
        match peer {
            Some(peer) => tracing::warn!(%from, by = %peer.name, role = ?peer.role, "{message}"),
            None => tracing::warn!(%from, "{message}"),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Watched>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends every connection whose request has not come by its deadline.
    fn expire(&self, now: Instant) {
        let overdue: Vec<Watched> = {
            let mut pending = self.pending();
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, w)| w.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| pending.remove(id)).collect()
        };
        for watched in overdue {
            // Said and counted before the socket goes: whoever sees it
            // closed finds the reason already in the log.
            watched.expired.store(true, Ordering::Release);
            self.counters.timed_out.fetch_add(1, Ordering::Relaxed);
            self.refused(
                watched.peer,
                None,
                &format!(
                    "dropped the connection: no request within {} s",
                    REQUEST_DEADLINE.as_secs()
                ),
            );
            let _ = watched.tcp.shutdown(Shutdown::Both);
        }
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Place {
    /// The request line is read: its deadline no longer runs.
    pub fn request_read(&self) {
        self.guard.pending().remove(&self.id);
    }

    /// Whether the deadline ended the connection (its failure is no news).
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.request_read();
        self.guard.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn a_connection_past_its_deadline_is_shut_and_places_are_bounded() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let guard = Arc::new(Guard {
            open: AtomicUsize::new(0),
            next: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            counters: Arc::default(),
            max: MAX_CONNECTIONS,
        });
        let _client = TcpStream::connect(address).unwrap();
        let (mut served, peer) = listener.accept().unwrap();
        let place = guard.admit(&served, peer).unwrap();
        assert_eq!(guard.open(), 1);
        guard.expire(Instant::now());
        assert_eq!(guard.counters.timed_out.load(Ordering::Relaxed), 0, "not yet");
        guard.expire(Instant::now() + REQUEST_DEADLINE);
        assert_eq!(guard.counters.timed_out.load(Ordering::Relaxed), 1);
        let mut byte = [0u8; 1];
        assert_eq!(served.read(&mut byte).unwrap(), 0, "the socket was shut");
        drop(place);
        assert_eq!(guard.open(), 0, "the place is free again");

        let places: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| guard.admit(&served, peer).unwrap())
            .collect();
        assert!(guard.admit(&served, peer).is_none(), "one more is refused");
        assert_eq!(guard.counters.refused_busy.load(Ordering::Relaxed), 1);
        for place in &places {
            place.request_read();
        }
        guard.expire(Instant::now() + REQUEST_DEADLINE * 2);
        assert_eq!(
            guard.counters.timed_out.load(Ordering::Relaxed),
            1,
            "read requests have no deadline"
        );
        drop(places);
        assert!(guard.admit(&served, peer).is_some());
    }
}
