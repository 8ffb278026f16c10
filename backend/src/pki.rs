//! The cluster's certificate authority and the mutual-TLS configs built on it.
//!
//! Every host agent and every operator holds a certificate signed by one cluster CA,
//! and both ends of an agent connection present theirs: the CA is the whole trust
//! model, with no system roots involved. A certificate carries who its holder is
//! (subject CN) and what it may do (subject OU `host` or `operator`), so a verified
//! peer certificate is all [`peer_of`] needs to authorise a request.
//!
//! Files are PEM: `ca.pem` and `ca.key` in the CA directory, `<name>.pem` and
//! `<name>.key` for each identity. Keys are written with mode 0600. The CA is valid
//! for 10 years and the certificates it issues for 2; renewing one is issuing it
//! again under the same name.
//!
//! Only TLS 1.3 is offered. In TLS 1.3 the client finishes its handshake before the
//! server has checked the client's certificate, so a client whose certificate is
//! refused learns it on its first read, not in [`connect`]; the server learns it in
//! [`accept`].

use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::net::TcpStream;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, InvalidDnsNameError, PrivateKeyDer, ServerName};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{ClientConfig, ClientConnection, CommonState, RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
const CA_VALIDITY: Duration = Duration::from_secs(3652 * 24 * 3600);
const LEAF_VALIDITY: Duration = Duration::from_secs(730 * 24 * 3600);
/// Certificates start being valid a little in the past so that a host whose clock
/// lags the issuer's still accepts a certificate issued a moment ago.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// Why a CA, certificate or TLS session could not be set up; file problems name the
/// file, since an operator has to go and fix it.
#[derive(Debug, Error)]
pub enum PkiError {
    #[error("invalid name {0:?}: expected letters, digits, '.', '-' or '_', starting with a letter or digit")]
    InvalidName(String),
    #[error("name {0:?} is reserved for the CA's own files")]
    ReservedName(String),
    #[error("invalid subject alternative name {0:?}: expected an IP address or a host name")]
    InvalidSan(String),
    #[error("a cluster CA already exists in {0}")]
    CaExists(PathBuf),
    #[error("cannot create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read certificate {path}")]
    ReadCert {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("no certificate in {path}")]
    NoCert { path: PathBuf },
    #[error("cannot read private key {path}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("cannot parse CA certificate {path}")]
    CaCert {
        path: PathBuf,
        #[source]
        source: X509Error,
    },
    #[error("cannot issue certificates from CA certificate {path}")]
    CaIssuer {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot use CA key {path}")]
    CaKey {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("CA key {key} does not belong to CA certificate {cert}")]
    CaKeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot generate a key pair")]
    KeyGen(#[source] rcgen::Error),
    #[error("cannot sign the certificate for {name:?}")]
    Sign {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot trust CA certificate {path}")]
    TrustAnchor {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot verify clients against CA certificate {path}")]
    ClientVerifier {
        path: PathBuf,
        #[source]
        source: VerifierBuilderError,
    },
    #[error("cannot use certificate {cert} with key {key}")]
    CertKey {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot set up TLS")]
    Tls(#[source] rustls::Error),
    #[error("invalid server name {name:?}")]
    ServerName {
        name: String,
        #[source]
        source: InvalidDnsNameError,
    },
    #[error("TLS handshake failed")]
    Handshake(#[source] io::Error),
    #[error("the peer presented no certificate")]
    NoPeerCert,
    #[error("cannot parse the peer's certificate")]
    PeerCert(#[source] X509Error),
    #[error("the peer's certificate names no known role")]
    PeerRole,
    /// An agent's own certificate is not a host's, or another host's.
    #[error("{} is {}'s certificate; {wanted}", path.display(), whose)]
    NotOwn {
        path: PathBuf,
        whose: String,
        wanted: String,
    },
    #[error("the peer's certificate names no subject")]
    PeerName,
}

/// What a certificate is for, encoded in its subject OU (`host` or `operator`) so
/// that the agent can authorise by role without a separate list of who is who.
///
/// Hosts serve the agent API and call each other during a migration; operators only
/// call hosts, so their certificates cannot be used to impersonate a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Host,
    Operator,
}

impl Role {
    fn ou(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Operator => "operator",
        }
    }

    fn from_ou(text: &str) -> Option<Self> {
        match text {
            "host" => Some(Role::Host),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

/// Paths of one identity's files, so that configs can name an identity without
/// holding key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Who the peer of a verified connection is, as its certificate says: what the
/// agent authorises requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub role: Role,
    pub name: String,
}

/// Creates the cluster CA in `dir` (`ca.pem`, and `ca.key` with mode 0600), creating
/// `dir` if needed.
///
/// Refuses with [`PkiError::CaExists`] if either file is there: replacing a CA
/// silently would cut off every certificate it issued.
pub fn init_ca(dir: &Path, cluster: &str) -> Result<(), PkiError> {
    check_name(cluster)?;
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    if cert_path.exists() || key_path.exists() {
        return Err(PkiError::CaExists(dir.to_path_buf()));
    }
    fs::create_dir_all(dir).map_err(|source| PkiError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;

    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, cluster);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{cluster} CA"));
    // Path length 0: the CA signs leaves only, never intermediate CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, CA_VALIDITY);
    let key = KeyPair::generate().map_err(PkiError::KeyGen)?;
    let cert = params.self_signed(&key).map_err(|source| PkiError::Sign {
        name: format!("{cluster} CA"),
        source,
    })?;

    let exists = |_| PkiError::CaExists(dir.to_path_buf());
    write_new(&key_path, &key.serialize_pem(), 0o600).map_err(|e| e.or_exists(exists))?;
    if let Err(e) = write_new(&cert_path, &cert.pem(), 0o644) {
        // Without its certificate the key is useless, and left behind it would make
        // the next attempt fail with CaExists.
        let _ = fs::remove_file(&key_path);
        return Err(e.or_exists(exists));
    }
    Ok(())
}

/// Issues a certificate signed by the CA in `ca_dir` for `name` with `role`, writing
/// `<out_dir>/<name>.pem` and `<name>.key` (mode 0600, replacing any earlier pair so
/// that renewing is issuing again) and returning the [`Identity`] (`ca` is
/// `ca_dir/ca.pem`).
///
/// Hosts get subjectAltNames DNS `name` plus every entry of `sans` (IP literals
/// become IP SANs, others DNS SANs) and may act as TLS server and client, since hosts
/// call each other; operators get no SANs and may only act as client. Leaves are
/// valid for 2 years. `name` is restricted to letters, digits, `.`, `-` and `_`
/// because it becomes a file name and a DNS name; `ca` is reserved.
pub fn issue(ca_dir: &Path, role: Role, name: &str, sans: &[String], out_dir: &Path) -> Result<Identity, PkiError> {
    check_name(name)?;
    if name == "ca" {
        return Err(PkiError::ReservedName(name.to_string()));
    }
    let ca = load_ca(ca_dir)?;

    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cluster) = &ca.cluster {
        params
            .distinguished_name
            .push(DnType::OrganizationName, cluster.as_str());
    }
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.ou());
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    match role {
        Role::Host => {
            params.subject_alt_names = std::iter::once(name)
                .chain(sans.iter().map(String::as_str))
                .map(san_of)
                .collect::<Result<_, _>>()?;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        }
        Role::Operator => params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
    }
    set_validity(&mut params, LEAF_VALIDITY);
    let key = KeyPair::generate().map_err(PkiError::KeyGen)?;
    let cert = params.signed_by(&key, &ca.issuer).map_err(|source| PkiError::Sign {
        name: name.to_string(),
        source,
    })?;

    fs::create_dir_all(out_dir).map_err(|source| PkiError::CreateDir {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let identity = Identity {
        cert: out_dir.join(format!("{name}.pem")),
        key: out_dir.join(format!("{name}.key")),
        ca: ca.cert_path,
    };
    replace(&identity.key, &key.serialize_pem(), 0o600)?;
    replace(&identity.cert, &cert.pem(), 0o644)?;
    Ok(identity)
}

/// Server side of the agent API: presents `identity` and requires every client to
/// present a certificate chaining to `identity.ca`, so that no request reaches the
/// agent from outside the cluster.
pub fn server_config(identity: &Identity) -> Result<Arc<ServerConfig>, PkiError> {
    server_config_with(identity, rustls::crypto::ring::default_provider())
}

/// [`server_config`] with the suites of `provider`, in its order.
pub fn server_config_with(identity: &Identity, provider: CryptoProvider) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = Arc::new(provider);
    let roots = Arc::new(root_store(&identity.ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|source| PkiError::ClientVerifier {
            path: identity.ca.clone(),
            source,
        })?;
    let (certs, key) = load_identity(identity)?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(PkiError::Tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|source| identity.cert_key_error(source))?;
    Ok(Arc::new(config))
}

/// Client side: presents `identity` and trusts only `identity.ca`, not the system
/// roots, so that only a cluster host can pass for one.
pub fn client_config(identity: &Identity) -> Result<Arc<ClientConfig>, PkiError> {
    client_config_with(identity, rustls::crypto::ring::default_provider())
}

/// [`client_config`] with the suites of `provider`, in its order.
pub fn client_config_with(identity: &Identity, provider: CryptoProvider) -> Result<Arc<ClientConfig>, PkiError> {
    let provider = Arc::new(provider);
    let roots = root_store(&identity.ca)?;
    let (certs, key) = load_identity(identity)?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(PkiError::Tls)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|source| identity.cert_key_error(source))?;
    Ok(Arc::new(config))
}

/// Who the peer of a handshaken connection is, from its end-entity certificate:
/// role from the subject OU, name from the subject CN.
///
/// Only meaningful on connections from [`server_config`] or [`client_config`], whose
/// verifiers have already checked that certificate against the cluster CA.
pub fn peer_of(conn: &CommonState) -> Result<Peer, PkiError> {
    let der = conn
        .peer_certificates()
        .and_then(<[_]>::first)
        .ok_or(PkiError::NoPeerCert)?;
    subject_of(der)
}

/// Checks that `identity` is host `host`'s own: a host certificate that
/// names it. An agent that started with an operator's or another host's
/// certificate would act, towards its peers, as someone it is not.
pub fn check_host_identity(identity: &Identity, host: &str) -> Result<(), PkiError> {
    let peer = whoami(identity)?;
    let wanted = || format!("the agent of {host} needs its own host certificate (vmig pki issue --host {host})");
    match peer.role {
        Role::Host if peer.name == host => Ok(()),
        Role::Host => Err(PkiError::NotOwn {
            path: identity.cert.clone(),
            whose: format!("host {}", peer.name),
            wanted: wanted(),
        }),
        Role::Operator => Err(PkiError::NotOwn {
            path: identity.cert.clone(),
            whose: format!("operator {}", peer.name),
            wanted: wanted(),
        }),
    }
}

/// Who an identity of this machine is (its certificate's role and name):
/// what agents record as `by` for the requests it makes.
pub fn whoami(identity: &Identity) -> Result<Peer, PkiError> {
    let certs = read_certs(&identity.cert)?;
    subject_of(&certs[0])
}

/// The role (subject OU) and name (subject CN) of a certificate.
fn subject_of(der: &[u8]) -> Result<Peer, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::PeerCert(e.into()))?;
    let subject = cert.subject();
    let mut units = subject.iter_organizational_unit();
    let role = match (units.next(), units.next()) {
        (Some(unit), None) => unit.as_str().ok().and_then(Role::from_ou),
        _ => None,
    }
    .ok_or(PkiError::PeerRole)?;
    let mut names = subject.iter_common_name();
    let name = match (names.next(), names.next()) {
        (Some(name), None) => name.as_str().ok(),
        _ => None,
    }
    .ok_or(PkiError::PeerName)?;
    Ok(Peer {
        role,
        name: name.to_string(),
    })
}

/// Starts TLS over a connected blocking socket and completes the handshake, so that
/// a server the client does not trust (wrong CA, `server_name` not among its SANs)
/// is an error here rather than on first use. `server_name` is a host name or an IP
/// literal. Set timeouts on `tcp` first: the handshake blocks on it.
pub fn connect(
    config: Arc<ClientConfig>,
    server_name: &str,
    mut tcp: TcpStream,
) -> Result<StreamOwned<ClientConnection, TcpStream>, PkiError> {
    let name = ServerName::try_from(server_name).map_err(|source| PkiError::ServerName {
        name: server_name.to_string(),
        source,
    })?;
    let mut conn = ClientConnection::new(config, name.to_owned()).map_err(PkiError::Tls)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(PkiError::Handshake)?;
    }
    Ok(StreamOwned::new(conn, tcp))
}

/// Starts TLS over an accepted blocking socket and completes the handshake, so that
/// a client without a certificate from the cluster CA is an error here and the
/// caller can ask [`peer_of`] straight away. Set timeouts on `tcp` first: the
/// handshake blocks on it.
pub fn accept(
    config: Arc<ServerConfig>,
    mut tcp: TcpStream,
) -> Result<StreamOwned<ServerConnection, TcpStream>, PkiError> {
    let mut conn = ServerConnection::new(config).map_err(PkiError::Tls)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(PkiError::Handshake)?;
    }
    Ok(StreamOwned::new(conn, tcp))
}

/// The CA as `issue` needs it.
struct Ca {
    cert_path: PathBuf,
    cluster: Option<String>,
    issuer: Issuer<'static, KeyPair>,
}

fn load_ca(dir: &Path) -> Result<Ca, PkiError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let der = read_certs(&cert_path)?.swap_remove(0);
    let key_der = read_key(&key_path)?;
    let key = KeyPair::try_from(&key_der).map_err(|source| PkiError::CaKey {
        path: key_path.clone(),
        source,
    })?;
    let cert_error = |source| PkiError::CaCert {
        path: cert_path.clone(),
        source,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| cert_error(e.into()))?;
    let cluster = organization_of(&cert).map_err(cert_error)?;
    if cert.tbs_certificate.subject_pki.raw != key.subject_public_key_info() {
        return Err(PkiError::CaKeyMismatch {
            cert: cert_path,
            key: key_path,
        });
    }
    let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|source| PkiError::CaIssuer {
        path: cert_path.clone(),
        source,
    })?;
    Ok(Ca {
        cert_path,
        cluster,
        issuer,
    })
}

fn organization_of(cert: &X509Certificate<'_>) -> Result<Option<String>, X509Error> {
    cert.subject()
        .iter_organization()
        .next()
        .map(|attr| attr.as_str().map(str::to_string))
        .transpose()
}

fn load_identity(identity: &Identity) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
    Ok((read_certs(&identity.cert)?, read_key(&identity.key)?))
}

impl Identity {
    fn cert_key_error(&self, source: rustls::Error) -> PkiError {
        PkiError::CertKey {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source,
        }
    }
}

fn root_store(ca: &Path) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    // Every certificate in the file is trusted, so that a CA can be rolled over by
    // shipping old and new together.
    for cert in read_certs(ca)? {
        roots.add(cert).map_err(|source| PkiError::TrustAnchor {
            path: ca.to_path_buf(),
            source,
        })?;
    }
    Ok(roots)
}

/// All certificates in a PEM file, at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let read_error = |source| PkiError::ReadCert {
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    if certs.is_empty() {
        return Err(PkiError::NoCert {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| PkiError::ReadKey {
        path: path.to_path_buf(),
        source,
    })
}

fn check_name(name: &str) -> Result<(), PkiError> {
    if is_name(name) {
        Ok(())
    } else {
        Err(PkiError::InvalidName(name.to_string()))
    }
}

/// Whether `text` can serve as a file name stem and as a DNS name alike.
fn is_name(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.len() <= 253
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

fn san_of(text: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = text.parse() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = || PkiError::InvalidSan(text.to_string());
    if !is_name(text) {
        return Err(invalid());
    }
    Ok(SanType::DnsName(text.try_into().map_err(|_| invalid())?))
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + validity).into();
}

/// A write that failed, keeping whether it failed because the file was there.
struct WriteFailure {
    path: PathBuf,
    source: io::Error,
}

impl WriteFailure {
    fn or_exists(self, exists: impl FnOnce(PathBuf) -> PkiError) -> PkiError {
        if self.source.kind() == ErrorKind::AlreadyExists {
            exists(self.path)
        } else {
            PkiError::Write {
                path: self.path,
                source: self.source,
            }
        }
    }
}

impl From<WriteFailure> for PkiError {
    fn from(failure: WriteFailure) -> Self {
        PkiError::Write {
            path: failure.path,
            source: failure.source,
        }
    }
}

/// Writes a file that must not exist yet, with `mode` from the start so that a key
/// is never readable by others, not even briefly.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), WriteFailure> {
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()
    };
    write().map_err(|source| WriteFailure {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file through a fresh temporary one and a rename, so that an earlier
/// file's looser mode is not inherited and readers never see half a file.
fn replace(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(PkiError::Write { path: tmp, source: e });
        }
        _ => {}
    }
    write_new(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{SocketAddr, TcpListener};
    use std::os::unix::fs::PermissionsExt;
    use std::thread::{self, JoinHandle};

    const TIMEOUT: Duration = Duration::from_secs(10);

    struct Cluster {
        _dir: tempfile::TempDir,
        ca_dir: PathBuf,
        host: Identity,
        operator: Identity,
    }

    fn cluster() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        init_ca(&ca_dir, "test").unwrap();
        let host = issue(&ca_dir, Role::Host, "hostA", &["127.0.0.1".to_string()], dir.path()).unwrap();
        let operator = issue(&ca_dir, Role::Operator, "alice", &[], dir.path()).unwrap();
        Cluster {
            _dir: dir,
            ca_dir,
            host,
            operator,
        }
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Accepts one connection, reports who the client is and echoes one byte plus one.
    fn serve_once(config: Arc<ServerConfig>) -> (SocketAddr, JoinHandle<Result<Peer, PkiError>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut tls = accept(config, tcp)?;
            let peer = peer_of(&tls.conn)?;
            let mut byte = [0];
            tls.read_exact(&mut byte).unwrap();
            tls.write_all(&[byte[0] + 1]).unwrap();
            tls.conn.send_close_notify();
            tls.flush().unwrap();
            Ok(peer)
        });
        (addr, server)
    }

    /// Connects, sends a byte and reads the answer; any failure along the way is the
    /// error, so that a refusal the client only sees after its handshake counts too.
    fn exchange(config: Arc<ClientConfig>, server_name: &str, addr: SocketAddr) -> Result<(Peer, u8), String> {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut tls = connect(config, server_name, tcp).map_err(|e| format!("connect: {e:?}"))?;
        let peer = peer_of(&tls.conn).map_err(|e| format!("peer_of: {e:?}"))?;
        tls.write_all(&[41]).map_err(|e| format!("write: {e:?}"))?;
        let mut byte = [0];
        tls.read_exact(&mut byte).map_err(|e| format!("read: {e:?}"))?;
        Ok((peer, byte[0]))
    }

    #[test]
    fn init_ca_writes_private_key_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        init_ca(&ca_dir, "test").unwrap();
        assert!(ca_dir.join("ca.pem").is_file());
        assert_eq!(mode_of(&ca_dir.join("ca.key")), 0o600);
        let der = read_certs(&ca_dir.join("ca.pem")).unwrap().swap_remove(0);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(cert.is_ca());
        let before = fs::read(ca_dir.join("ca.key")).unwrap();

        let err = init_ca(&ca_dir, "test").unwrap_err();
        assert!(
            matches!(err, PkiError::CaExists(ref path) if path == &ca_dir),
            "{err:?}"
        );
        assert_eq!(fs::read(ca_dir.join("ca.key")).unwrap(), before);
    }

    #[test]
    fn issue_writes_private_key_and_rejects_bad_names() {
        let c = cluster();
        assert_eq!(c.host.ca, c.ca_dir.join("ca.pem"));
        assert_eq!(c.host.cert.file_name().unwrap(), "hostA.pem");
        assert_eq!(mode_of(&c.host.key), 0o600);
        assert_eq!(mode_of(&c.operator.key), 0o600);
        let out = c.host.cert.parent().unwrap();
        for name in ["", "../evil", "a/b", ".hidden"] {
            let err = issue(&c.ca_dir, Role::Host, name, &[], out).unwrap_err();
            assert!(matches!(err, PkiError::InvalidName(_)), "{name:?}: {err:?}");
        }
        let err = issue(&c.ca_dir, Role::Host, "hostB", &["bad name".to_string()], out).unwrap_err();
        assert!(matches!(err, PkiError::InvalidSan(_)), "{err:?}");
        assert!(!out.join("hostB.pem").exists());
        let err = issue(&c.ca_dir, Role::Host, "ca", &[], &c.ca_dir).unwrap_err();
        assert!(matches!(err, PkiError::ReservedName(_)), "{err:?}");
    }

    #[test]
    fn operator_and_host_see_each_other() {
        let c = cluster();
        let (addr, server) = serve_once(server_config(&c.host).unwrap());
        let (server_peer, answer) = exchange(client_config(&c.operator).unwrap(), "hostA", addr).unwrap();
        assert_eq!(answer, 42);
        assert_eq!(
            server_peer,
            Peer {
                role: Role::Host,
                name: "hostA".to_string()
            }
        );
        let client_peer = server.join().unwrap().unwrap();
        assert_eq!(
            client_peer,
            Peer {
                role: Role::Operator,
                name: "alice".to_string()
            }
        );
    }

    #[test]
    fn host_is_reachable_by_ip_san() {
        let c = cluster();
        let (addr, server) = serve_once(server_config(&c.host).unwrap());
        let (peer, _) = exchange(client_config(&c.operator).unwrap(), "127.0.0.1", addr).unwrap();
        assert_eq!(peer.name, "hostA");
        server.join().unwrap().unwrap();
    }

    #[test]
    fn client_from_another_ca_is_refused() {
        let c = cluster();
        let other = tempfile::tempdir().unwrap();
        init_ca(other.path(), "other").unwrap();
        let mallory = issue(other.path(), Role::Operator, "mallory", &[], other.path()).unwrap();
        // Mallory trusts the real CA, so only the server's check of her certificate
        // stands between her and the host.
        let mallory = Identity {
            ca: c.host.ca.clone(),
            ..mallory
        };

        let (addr, server) = serve_once(server_config(&c.host).unwrap());
        let client = exchange(client_config(&mallory).unwrap(), "hostA", addr);
        let server = server.join().unwrap();
        assert!(client.is_err(), "{client:?}");
        let err = server.unwrap_err();
        assert!(matches!(err, PkiError::Handshake(_)), "{err:?}");
    }

    #[test]
    fn client_without_certificate_is_refused() {
        let c = cluster();
        let anonymous = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(root_store(&c.host.ca).unwrap())
            .with_no_client_auth();

        let (addr, server) = serve_once(server_config(&c.host).unwrap());
        let client = exchange(Arc::new(anonymous), "hostA", addr);
        let server = server.join().unwrap();
        assert!(client.is_err(), "{client:?}");
        let err = server.unwrap_err();
        assert!(matches!(err, PkiError::Handshake(_)), "{err:?}");
    }

    #[test]
    fn server_with_wrong_name_is_refused() {
        let c = cluster();
        let (addr, server) = serve_once(server_config(&c.host).unwrap());
        let client = exchange(client_config(&c.operator).unwrap(), "hostB", addr);
        let server = server.join().unwrap();
        let err = client.unwrap_err();
        assert!(
            err.starts_with("connect: Handshake") && err.contains("NotValidForName"),
            "{err}"
        );
        assert!(server.is_err(), "{server:?}");
    }

    #[test]
    fn operator_cannot_serve() {
        let c = cluster();
        let (addr, server) = serve_once(server_config(&c.operator).unwrap());
        let client = exchange(client_config(&c.host).unwrap(), "alice", addr);
        let server = server.join().unwrap();
        // The purpose is checked before the name, so this is not the missing SAN.
        let err = client.unwrap_err();
        assert!(
            err.starts_with("connect: Handshake") && err.contains("InvalidPurpose"),
            "{err}"
        );
        assert!(server.is_err(), "{server:?}");
    }

    #[test]
    fn bad_files_are_named_in_errors() {
        let c = cluster();
        let dir = c.host.cert.parent().unwrap();
        let garbage = dir.join("garbage.pem");
        fs::write(&garbage, "not a certificate\n").unwrap();
        let missing = dir.join("missing.pem");
        let names = |err: PkiError, path: &Path| {
            let text = err.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
        };

        for bad in [&missing, &garbage] {
            names(
                client_config(&Identity {
                    cert: bad.clone(),
                    ..c.host.clone()
                })
                .unwrap_err(),
                bad,
            );
            names(
                server_config(&Identity {
                    key: bad.clone(),
                    ..c.host.clone()
                })
                .unwrap_err(),
                bad,
            );
            names(
                server_config(&Identity {
                    ca: bad.clone(),
                    ..c.host.clone()
                })
                .unwrap_err(),
                bad,
            );
        }

        let empty_ca = dir.join("no-ca");
        names(
            issue(&empty_ca, Role::Host, "hostB", &[], dir).unwrap_err(),
            &empty_ca.join("ca.pem"),
        );
        fs::copy(c.ca_dir.join("ca.pem"), dir.join("ca.pem")).unwrap();
        fs::copy(&garbage, dir.join("ca.key")).unwrap();
        names(
            issue(dir, Role::Host, "hostB", &[], dir).unwrap_err(),
            &dir.join("ca.key"),
        );
        fs::copy(&c.host.key, dir.join("ca.key")).unwrap();
        let err = issue(dir, Role::Host, "hostB", &[], dir).unwrap_err();
        assert!(matches!(err, PkiError::CaKeyMismatch { .. }), "{err:?}");
    }
}
