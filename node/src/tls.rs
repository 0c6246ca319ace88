//! TLS: the node's certificate, the cluster CA, and who a peer is.
//!
//! One stack (rustls through tonic). Every node certificate is issued by the
//! cluster's CA and names its node in a URI SAN, `urn:chargerd:node:<id>`:
//! - the internal (Raft) listener always asks for a client certificate, and
//!   a message whose claimed sender differs from the certificate's node is
//!   refused (see `raft::service`);
//! - the public listener serves TLS and takes a client certificate when one
//!   is offered ([`ClientCerts`]); only a node certificate may carry the
//!   internal headers (a forwarded call, a shard restriction), which are
//!   stripped from anyone else ([`PeerPolicy`]);
//! - nodes dial each other (Raft, forwarding, joining) with their own
//!   certificate and check the peer's against the CA under the name
//!   [`CLUSTER_NAME`], which every node certificate carries.
//!
//! [`CertAuthority`] makes a local CA and certificates (`chargerd certs`,
//! tests); production may bring its own PKI as long as node certificates
//! carry the two names above.
use crate::ids::NodeId;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The DNS name every node certificate carries, which nodes check when they
/// dial each other (they dial addresses, not names).
pub const CLUSTER_NAME: &str = "chargerd";

const NODE_URI_PREFIX: &str = "urn:chargerd:node:";

/// Whether the public listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCerts {
    /// Taken when offered (nodes offer theirs; clients may), checked
    /// against the CA.
    #[default]
    Optional,
    /// Every client must present one from the CA (mutual TLS).
    Required,
}

/// A node's TLS material, in memory (PEM).
#[derive(Clone)]
pub struct Tls {
    pub ca_pem: Arc<str>,
    pub cert_pem: Arc<str>,
    pub key_pem: Arc<str>,
    /// The node its certificate names.
    pub node: NodeId,
    pub public_client_certs: ClientCerts,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Tls")
            .field("node", &self.node)
            .field("public_client_certs", &self.public_client_certs)
            .finish_non_exhaustive()
    }
}

/// Why TLS material was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

fn read(path: &Path) -> Result<Arc<str>, TlsError> {
    std::fs::read_to_string(path)
        .map(Arc::from)
        .map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })
}

impl Tls {
    /// Reads the CA, the node's certificate and its key, and checks that the
    /// certificate names `node`.
    pub fn load(
        ca: &Path,
        cert: &Path,
        key: &Path,
        node: NodeId,
        public_client_certs: ClientCerts,
    ) -> Result<Tls, TlsError> {
        Tls::from_pem(
            read(ca)?,
            read(cert)?,
            read(key)?,
            node,
            public_client_certs,
        )
    }

    pub fn from_pem(
        ca_pem: Arc<str>,
        cert_pem: Arc<str>,
        key_pem: Arc<str>,
        node: NodeId,
        public_client_certs: ClientCerts,
    ) -> Result<Tls, TlsError> {
        let der = first_pem_der(&cert_pem)
            .ok_or_else(|| TlsError::Invalid("certificate: no PEM certificate found".into()))?;
        match node_of_cert(&der) {
            Some(n) if n == node => {}
            Some(n) => {
                return Err(TlsError::Invalid(format!(
                    "certificate: names node {n}, but this is node {node}"
                )))
            }
            None => {
                return Err(TlsError::Invalid(format!(
                    "certificate: names no node (a URI SAN {NODE_URI_PREFIX}<id> is needed)"
                )))
            }
        }
        if first_pem_der(&ca_pem).is_none() {
            return Err(TlsError::Invalid("ca: no PEM certificate found".into()));
        }
        Ok(Tls {
            ca_pem,
            cert_pem,
            key_pem,
            node,
            public_client_certs,
        })
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
    }

    fn ca(&self) -> Certificate {
        Certificate::from_pem(self.ca_pem.as_bytes())
    }

    /// The internal listener: mutual TLS, always.
    pub fn internal_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(self.ca())
    }

    /// The public listener: TLS; a client certificate as configured.
    pub fn public_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(self.ca())
            .client_auth_optional(self.public_client_certs == ClientCerts::Optional)
    }

    /// The admin listener: TLS, and every client must present a
    /// certificate from the CA.
    pub fn admin_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(self.ca())
            .client_auth_optional(false)
    }

    /// An HTTP listener (the Nchf producer): this node's certificate, ALPN
    /// `h2` then `http/1.1`, a client certificate from the CA as on the
    /// public listener (`client_certs`).
    pub fn http_server(&self) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, TlsError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use tokio_rustls::rustls;
        let bad = |what: &str, e: &dyn std::fmt::Display| TlsError::Invalid(format!("{what}: {e}"));
        // ring, as tonic's `tls-ring` (its lack of post-quantum key
        // exchange is why rustls marks it deprecated).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| bad("certificate", &e))?;
        let key =
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| bad("key", &e))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots
                .add(c.map_err(|e| bad("ca", &e))?)
                .map_err(|e| bad("ca", &e))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        );
        let verifier = if self.public_client_certs == ClientCerts::Optional {
            verifier.allow_unauthenticated()
        } else {
            verifier
        };
        let verifier = verifier.build().map_err(|e| bad("ca", &e))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("tls", &e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| bad("certificate", &e))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Dialling another node: this node's certificate, the peer's checked
    /// against the CA under [`CLUSTER_NAME`].
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca())
            .identity(self.identity())
            .domain_name(CLUSTER_NAME)
    }
}

fn first_pem_der(pem_text: &str) -> Option<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem_text.as_bytes())
        .filter_map(Result::ok)
        .find(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
}

/// The node a certificate (DER) names in its `urn:chargerd:node:<id>` SAN.
pub fn node_of_cert(der: &[u8]) -> Option<NodeId> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => u.strip_prefix(NODE_URI_PREFIX)?.parse().ok(),
        _ => None,
    })
}

/// The node whose certificate the peer of a TLS connection presented, if
/// any (from the connection's info, which tonic puts in every request).
pub fn peer_node(extensions: &tonic::Extensions) -> Option<NodeId> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let info = extensions.get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    node_of_cert(certs.first()?)
}

/// The Admin calls that change the cluster (membership, replicas).
pub const CLUSTER_CHANGES: &[&str] = &[
    "/charging.v1.Admin/AddNode",
    "/charging.v1.Admin/DrainNode",
    "/charging.v1.Admin/RemoveNode",
    "/charging.v1.Admin/DropReplica",
];

/// What the public listener allows only from a node (a caller whose
/// certificate names one):
/// - `strip_internal` (on a TLS listener): the internal headers
///   ([`charging_proto::headers::INTERNAL`], a forwarded SetTariff's shard
///   restriction) are removed from anyone else's calls;
/// - `changes_from_nodes_only` (on a node with an admin listener, or under
///   TLS with tokens off): the calls that change the cluster
///   ([`CLUSTER_CHANGES`]) are refused from anyone else. Nodes make them of
///   each other (a joiner's AddNode, the placement driver's DropReplica);
///   operators make them on the admin listener.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerPolicy {
    pub strip_internal: bool,
    pub changes_from_nodes_only: bool,
}

impl<S> tower::Layer<S> for PeerPolicy {
    type Service = PeerPolicyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PeerPolicyService {
            inner,
            policy: *self,
        }
    }
}

#[derive(Clone, Debug)]
pub struct PeerPolicyService<S> {
    inner: S,
    policy: PeerPolicy,
}

impl<S, B> tower::Service<http::Request<B>> for PeerPolicyService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Ready<Result<Self::Response, Self::Error>>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // Who the peer is costs a certificate parse: asked only of the rare
        // call it matters to, never of a charging call without internal
        // headers (the request path).
        let p = self.policy;
        let path = req.uri().path();
        if p.changes_from_nodes_only
            && CLUSTER_CHANGES.contains(&path)
            && peer_node(req.extensions()).is_none()
        {
            let s = tonic::Status::permission_denied(format!(
                "{path}: cluster changes are served on the admin listener (admin_addr), \
                 not the public one; a node without an admin listener serves them on the \
                 public one only to admin-role tokens"
            ));
            return futures::future::Either::Right(futures::future::ready(Ok(s.into_http())));
        }
        let internal = charging_proto::headers::INTERNAL;
        if p.strip_internal
            && internal.iter().any(|h| req.headers().contains_key(*h))
            && peer_node(req.extensions()).is_none()
        {
            for h in internal {
                req.headers_mut().remove(*h);
            }
        }
        futures::future::Either::Left(self.inner.call(req))
    }
}

/// A certificate authority: makes the cluster's CA and certificates issued
/// by it (`chargerd certs`, tests).
pub struct CertAuthority {
    pub cert_pem: String,
    pub key_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// (not before, not after): from a day ago (clock skew) for `years`.
fn validity(years: i32) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    let start = now - time::Duration::days(1);
    let end = now + time::Duration::days(365 * i64::from(years));
    (start, end)
}

impl CertAuthority {
    /// A new CA (ECDSA P-256), valid for 10 years.
    pub fn generate(name: &str) -> Result<CertAuthority, TlsError> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = validity(10);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(CertAuthority {
            cert_pem: cert.pem(),
            key_pem,
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// A CA from its files (made by [`CertAuthority::generate`] earlier).
    pub fn load(cert: &Path, key: &Path) -> Result<CertAuthority, TlsError> {
        let cert_pem = read(cert)?.to_string();
        let key_pem = read(key)?.to_string();
        let issuer =
            rcgen::Issuer::from_ca_cert_pem(&cert_pem, rcgen::KeyPair::from_pem(&key_pem)?)?;
        Ok(CertAuthority {
            cert_pem,
            key_pem,
            issuer,
        })
    }

    fn issue(&self, params: rcgen::CertificateParams) -> Result<Issued, TlsError> {
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A node's certificate, valid for 2 years: server and client use, the
    /// names [`CLUSTER_NAME`] and `localhost`, each of `hosts` (names or IP
    /// addresses it is reached at), 127.0.0.1, and its node URI.
    pub fn node_cert(&self, node: NodeId, hosts: &[String]) -> Result<Issued, TlsError> {
        let mut names = vec![CLUSTER_NAME.to_string(), "localhost".to_string()];
        names.extend(hosts.iter().filter(|h| !h.is_empty()).cloned());
        names.sort();
        names.dedup();
        let mut params = rcgen::CertificateParams::new(names)?;
        let loopback = rcgen::SanType::IpAddress(IpAddr::from([127, 0, 0, 1]));
        if !params.subject_alt_names.contains(&loopback) {
            params.subject_alt_names.push(loopback);
        }
        params.subject_alt_names.push(rcgen::SanType::URI(
            format!("{NODE_URI_PREFIX}{node}").try_into()?,
        ));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("chargerd node {node}"));
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        (params.not_before, params.not_after) = validity(2);
        self.issue(params)
    }

    /// A client's certificate (mutual TLS on the public port), valid for a
    /// year; it names no node, so it never passes as a peer.
    pub fn client_cert(&self, name: &str) -> Result<Issued, TlsError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        (params.not_before, params.not_after) = validity(1);
        self.issue(params)
    }

    /// [`Tls`] for node `node` with a fresh certificate (tests, `dev`).
    pub fn node_tls(
        &self,
        node: NodeId,
        public_client_certs: ClientCerts,
    ) -> Result<Tls, TlsError> {
        let c = self.node_cert(node, &[])?;
        Tls::from_pem(
            self.cert_pem.as_str().into(),
            c.cert_pem.into(),
            c.key_pem.into(),
            node,
            public_client_certs,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_names_its_node_and_a_client_certificate_none() {
        let ca = CertAuthority::generate("test CA").unwrap();
        let n = ca
            .node_cert(7, &["node7".into(), "10.0.0.7".into()])
            .unwrap();
        let der = first_pem_der(&n.cert_pem).unwrap();
        assert_eq!(node_of_cert(&der), Some(7));
        let c = ca.client_cert("ops").unwrap();
        assert_eq!(node_of_cert(&first_pem_der(&c.cert_pem).unwrap()), None);
        // The material must name the node it is loaded for.
        let err = Tls::from_pem(
            ca.cert_pem.as_str().into(),
            n.cert_pem.into(),
            n.key_pem.into(),
            8,
            ClientCerts::Optional,
        )
        .unwrap_err();
        assert!(err.to_string().contains("names node 7"), "{err}");
    }

    #[test]
    fn a_ca_reloaded_from_its_files_issues_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::generate("test CA").unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        std::fs::write(dir.path().join("ca.key"), &ca.key_pem).unwrap();
        let again =
            CertAuthority::load(&dir.path().join("ca.pem"), &dir.path().join("ca.key")).unwrap();
        let n = again.node_cert(3, &[]).unwrap();
        assert_eq!(node_of_cert(&first_pem_der(&n.cert_pem).unwrap()), Some(3));
    }
}
