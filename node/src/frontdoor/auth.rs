//! Who may call what on the public port: bearer tokens (JWT) and roles.
//!
//! **Tokens.** Every call to `charging.v1.Charging` and `charging.v1.Admin`
//! carries `authorization: Bearer <JWT>` (health and reflection stay open).
//! A token is accepted when:
//! - its header's `alg` is ES256, RS256 or RS512 (`none` and the HS* shared
//!   secrets are refused before anything else is looked at);
//! - its signature verifies with a configured public key of the algorithm's
//!   family: the keys with the `kid` its header names (if no key has that
//!   `kid`, the keys configured without one); for a token without `kid`,
//!   any key;
//! - it carries `sub`, `aud` naming one of the configured audiences, `exp`
//!   not past (by more than the leeway), `nbf` (if present) not ahead, `iss`
//!   equal to the configured issuer if one is set (TS 29.510 claims);
//! - its `scope` (a space-separated string) holds the configured service
//!   scope (`nchf-convergedcharging` by default).
//!
//! Anything else is `UNAUTHENTICATED`, with a message (and a
//! `www-authenticate` metadata entry) in RFC 6750 form saying why.
//!
//! **Roles** are scope values too: `charging:charging`, `charging:billing`,
//! `charging:admin`; `charging:admin` implies the other two. Which role a
//! method needs is [`METHOD_ROLES`], the one table (a unit test fails if a
//! method of the proto has no entry). A valid token without the role gets
//! `PERMISSION_DENIED` (`error="insufficient_scope"`). Either refusal happens
//! before the service sees the request, so nothing changes.
//!
//! **Stream** needs any role to open; each operation in a batch is then
//! checked against the role of its unary method, and one the token may not
//! do is answered `PERMISSION_DENIED` in its own result (the rest of the
//! batch runs): a stream mixing charging and billing work stays usable by a
//! token that holds both roles, and one forbidden item cannot be mistaken
//! for a transport failure of the whole stream.
//!
//! **Forwarding.** A front door that forwards a call to the shard's leader
//! (or an admin change to the metadata leader) sends the caller's own
//! `authorization` along ([`forward_credentials`]), and the owner verifies
//! it again: a node never vouches for a caller, so a request reaches a
//! shard only with a token the owner itself accepted for that method. The
//! verified caller travels with the call as a task-local ([`Caller`]), set
//! by the layer around the handler. Verifications are cached by token (a
//! bounded map, exp still checked on every hit), so the second check costs
//! a hash lookup, not a signature.
//!
//! **The node's own calls** (the placement driver's Status and DropReplica,
//! a joining node's AddNode) carry a short-lived admin token the node signs
//! with `auth.node_key` ([`NodeCredential`], `sub = node-<id>`).
use crate::clock::SharedClock;
use crate::config::{AuthConfig, AuthKey};
use crate::maps::DashMap;
use charging_proto::v1 as pb;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::codegen::http;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::{Code, Status};

/// The metadata key of the bearer token.
pub const AUTHORIZATION: &str = "authorization";
/// The scope prefix of role values (`charging:<role>`).
pub const ROLE_SCOPE_PREFIX: &str = "charging:";
/// Verified tokens remembered at once (then the map starts over).
pub const MAX_CACHED_TOKENS: usize = 4096;
/// Longest token accepted (bytes of the header value).
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Lifetime of the tokens a node signs for its own calls.
pub const NODE_TOKEN_TTL: Duration = Duration::from_secs(600);

/// What a caller may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Reserve / update / terminate / commit / release / debit / balance.
    Charging,
    /// Accounts: create, buckets, top-up, refund, state.
    Billing,
    /// Tariffs and the cluster (every Admin call); implies the others.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Charging, Role::Billing, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Charging => "charging",
            Role::Billing => "billing",
            Role::Admin => "admin",
        }
    }

    /// Its scope value, e.g. `charging:billing`.
    pub fn scope(self) -> String {
        format!("{ROLE_SCOPE_PREFIX}{}", self.name())
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The roles a token grants (from its scope values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

impl Roles {
    pub fn of(roles: &[Role]) -> Roles {
        Roles(roles.iter().fold(0, |b, r| b | r.bit()))
    }

    /// The role scope values in a space-separated scope string.
    pub fn from_scope(scope: &str) -> Roles {
        let mut b = 0;
        for v in scope.split(' ') {
            if let Some(r) = v.strip_prefix(ROLE_SCOPE_PREFIX).and_then(Role::parse) {
                b |= r.bit();
            }
        }
        Roles(b)
    }

    pub fn allows(self, need: Access) -> bool {
        match need {
            Access::Any => self.0 != 0,
            Access::Role(r) => self.0 & (r.bit() | Role::Admin.bit()) != 0,
        }
    }

    fn names(self) -> String {
        let v: Vec<&str> = Role::ALL
            .into_iter()
            .filter(|r| self.0 & r.bit() != 0)
            .map(Role::name)
            .collect();
        if v.is_empty() {
            "no role".into()
        } else {
            v.join(", ")
        }
    }
}

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// This role (or admin).
    Role(Role),
    /// Any role: `Stream` (each operation is then checked on its own) and
    /// `ShardMap` (routing, which every client library asks for).
    Any,
}

/// The services whose calls need a token; every other path (health,
/// reflection) is open.
pub const PROTECTED_SERVICES: &[&str] = &["charging.v1.Charging", "charging.v1.Admin"];

/// Every method of the protected services and what it needs: THE table.
pub const METHOD_ROLES: &[(&str, Access)] = {
    use Access::{Any, Role as R};
    use Role::{Admin, Billing, Charging};
    &[
        ("/charging.v1.Charging/Reserve", R(Charging)),
        ("/charging.v1.Charging/Update", R(Charging)),
        ("/charging.v1.Charging/OpenSession", R(Charging)),
        ("/charging.v1.Charging/Terminate", R(Charging)),
        ("/charging.v1.Charging/Commit", R(Charging)),
        ("/charging.v1.Charging/Release", R(Charging)),
        ("/charging.v1.Charging/Debit", R(Charging)),
        ("/charging.v1.Charging/Balance", R(Charging)),
        ("/charging.v1.Charging/Stream", Any),
        ("/charging.v1.Charging/CreateAccount", R(Billing)),
        ("/charging.v1.Charging/BulkCreateAccounts", R(Billing)),
        ("/charging.v1.Charging/AddBucket", R(Billing)),
        ("/charging.v1.Charging/TopUp", R(Billing)),
        ("/charging.v1.Charging/Refund", R(Billing)),
        ("/charging.v1.Charging/SetAccountState", R(Billing)),
        ("/charging.v1.Charging/SetTariff", R(Admin)),
        ("/charging.v1.Charging/GetTariffs", R(Admin)),
        ("/charging.v1.Admin/Status", R(Admin)),
        ("/charging.v1.Admin/ShardMap", Any),
        ("/charging.v1.Admin/AddNode", R(Admin)),
        ("/charging.v1.Admin/DrainNode", R(Admin)),
        ("/charging.v1.Admin/RemoveNode", R(Admin)),
        ("/charging.v1.Admin/DropReplica", R(Admin)),
    ]
};

/// What `path` needs: `None` for an open service, `Some(None)` for a path
/// of a protected service that the table does not know (refused).
pub fn access_of(path: &str) -> Option<Option<Access>> {
    let service = path.strip_prefix('/')?.split('/').next()?;
    if !PROTECTED_SERVICES.contains(&service) {
        return None;
    }
    Some(
        METHOD_ROLES
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, a)| *a),
    )
}

/// The unary method a stream operation stands for (its role is that
/// method's, from [`METHOD_ROLES`]).
pub fn stream_op_method(op: &pb::op::Op) -> &'static str {
    use pb::op::Op as O;
    match op {
        O::Reserve(_) => "/charging.v1.Charging/Reserve",
        O::Update(_) => "/charging.v1.Charging/Update",
        O::Terminate(_) => "/charging.v1.Charging/Terminate",
        O::Commit(_) => "/charging.v1.Charging/Commit",
        O::Release(_) => "/charging.v1.Charging/Release",
        O::Refund(_) => "/charging.v1.Charging/Refund",
        O::Debit(_) => "/charging.v1.Charging/Debit",
        O::TopUp(_) => "/charging.v1.Charging/TopUp",
        O::Balance(_) => "/charging.v1.Charging/Balance",
        O::CreateAccount(_) => "/charging.v1.Charging/CreateAccount",
    }
}

// ---- the verified caller --------------------------------------------------

/// A caller whose token was accepted: in the request's extensions and, while
/// its handler runs, in a task-local (so forwarding can pass the token on).
#[derive(Clone, Debug)]
pub struct Caller {
    pub subject: Arc<str>,
    pub roles: Roles,
    authorization: AsciiMetadataValue,
}

tokio::task_local! {
    static CALLER: Option<Caller>;
}

impl Caller {
    /// The caller of the handler running now (`None`: auth is off, or this
    /// is the node's own work).
    pub fn current() -> Option<Caller> {
        CALLER.try_with(|c| c.clone()).ok().flatten()
    }

    /// Whether this caller may call `path` (a method of [`METHOD_ROLES`]).
    pub fn may(&self, path: &str) -> Result<(), Status> {
        match access_of(path) {
            Some(Some(a)) if self.roles.allows(a) => Ok(()),
            Some(Some(a)) => Err(denied(path, a, self.roles)),
            _ => Err(Status::permission_denied(format!(
                "{path}: no role grants this method"
            ))),
        }
    }
}

/// Runs `f` with `caller` as the current caller (a spawned task does not
/// inherit it: the stream handler passes it on with this).
pub fn scoped<F: Future>(caller: Option<Caller>, f: F) -> impl Future<Output = F::Output> {
    CALLER.scope(caller, f)
}

/// Puts the current caller's token on an outgoing (forwarded) request, so
/// the receiving node checks it too. Nothing when there is no caller.
pub fn forward_credentials(md: &mut MetadataMap) {
    if let Some(c) = Caller::current() {
        md.insert(AUTHORIZATION, c.authorization);
    }
}

/// A stream batch's operations split by the caller's roles: those it may
/// do (in order), and the results of those it may not (`PERMISSION_DENIED`
/// each). No caller (auth off): everything passes.
pub fn screen(caller: Option<&Caller>, ops: Vec<pb::Op>) -> (Vec<pb::Op>, Vec<pb::OpResult>) {
    let Some(c) = caller else {
        return (ops, Vec::new());
    };
    let mut denied = Vec::new();
    let allowed = ops
        .into_iter()
        .filter_map(|op| {
            let Some(o) = op.op.as_ref() else {
                return Some(op);
            };
            match c.may(stream_op_method(o)) {
                Ok(()) => Some(op),
                Err(s) => {
                    denied.push(pb::OpResult {
                        correlation_id: op.correlation_id,
                        result: Some(pb::op_result::Result::Error(pb::OpError {
                            code: s.code() as i32,
                            message: s.message().to_string(),
                            leader_hint: 0,
                        })),
                    });
                    None
                }
            }
        })
        .collect();
    (allowed, denied)
}

fn denied(path: &str, need: Access, have: Roles) -> Status {
    let (scope, what) = match need {
        Access::Role(r) => (r.scope(), format!("role {}", r.name())),
        Access::Any => ("charging:charging".into(), "a role".into()),
    };
    let mut s = Status::permission_denied(format!(
        "{path} needs {what} (scope {scope}); the token grants {}",
        have.names()
    ));
    if let Ok(v) = format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"").parse() {
        s.metadata_mut().insert("www-authenticate", v);
    }
    s
}

/// `UNAUTHENTICATED`, saying why in RFC 6750 form (message and metadata).
fn unauthenticated(why: &str) -> Status {
    let why = why.replace('"', "'");
    let challenge =
        format!("Bearer realm=\"charging\", error=\"invalid_token\", error_description=\"{why}\"");
    let mut s = Status::unauthenticated(challenge.clone());
    if let Ok(v) = challenge.parse() {
        s.metadata_mut().insert("www-authenticate", v);
    }
    s
}

// ---- verification ---------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Ec,
    Rsa,
}

fn family(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::ES256 => Some(Family::Ec),
        Algorithm::RS256 | Algorithm::RS512 => Some(Family::Rsa),
        _ => None,
    }
}

struct Key {
    kid: Option<String>,
    family: Family,
    key: DecodingKey,
}

/// What a verified token said (cached by token).
#[derive(Clone)]
struct Verified {
    subject: Arc<str>,
    roles: Roles,
    /// Seconds since the epoch.
    exp: u64,
    nbf: Option<u64>,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    scope: String,
}

/// Checks tokens against the configured keys and claims.
pub struct Verifier {
    keys: Vec<Key>,
    audience: Vec<String>,
    issuer: Option<String>,
    scope: String,
    leeway_s: u64,
    clock: SharedClock,
    cache: DashMap<Box<str>, Verified>,
}

fn read_pem(what: &str, k: &AuthKey) -> Result<Vec<u8>, String> {
    std::fs::read(&k.file).map_err(|e| format!("{what}: {}: {e}", k.file.display()))
}

impl Verifier {
    /// Loads the keys of `cfg` (an error names the key).
    pub fn new(cfg: &AuthConfig, clock: SharedClock) -> Result<Verifier, String> {
        let mut keys = Vec::new();
        for (i, k) in cfg.keys.iter().enumerate() {
            let what = format!("auth.keys[{i}]");
            let pem = read_pem(&what, k)?;
            let (family, key) = match DecodingKey::from_ec_pem(&pem) {
                Ok(key) => (Family::Ec, key),
                Err(_) => match DecodingKey::from_rsa_pem(&pem) {
                    Ok(key) => (Family::Rsa, key),
                    Err(e) => {
                        return Err(format!(
                            "{what}: {}: not an EC (P-256) or RSA public key in PEM: {e}",
                            k.file.display()
                        ))
                    }
                },
            };
            keys.push(Key {
                kid: k.kid.clone(),
                family,
                key,
            });
        }
        Ok(Verifier {
            keys,
            audience: cfg.audience.clone(),
            issuer: cfg.issuer.clone(),
            scope: cfg.scope.clone(),
            leeway_s: cfg.leeway.as_secs(),
            clock,
            cache: DashMap::default(),
        })
    }

    /// The caller of a request with these headers, or why not.
    pub fn caller(&self, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let Some(v) = headers.get(AUTHORIZATION) else {
            return Err(unauthenticated(
                "no bearer token (metadata authorization: Bearer <JWT>)",
            ));
        };
        if v.len() > MAX_TOKEN_BYTES {
            return Err(unauthenticated("token too long"));
        }
        let token = v
            .to_str()
            .ok()
            .and_then(|s| {
                s.strip_prefix("Bearer ")
                    .or_else(|| s.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| unauthenticated("authorization is not `Bearer <JWT>`"))?;
        let verified = self.verify(token)?;
        Ok(Caller {
            subject: verified.subject,
            roles: verified.roles,
            // Passed on as it came (to_str above: visible ASCII).
            authorization: AsciiMetadataValue::try_from(v.as_bytes())
                .map_err(|_| unauthenticated("token is not ASCII"))?,
        })
    }

    fn now_s(&self) -> u64 {
        self.clock.now_ms() / 1000
    }

    fn fresh(&self, v: &Verified) -> Result<(), Status> {
        let now = self.now_s();
        if v.exp.saturating_add(self.leeway_s) < now {
            return Err(unauthenticated("token expired"));
        }
        if v.nbf.is_some_and(|n| n > now.saturating_add(self.leeway_s)) {
            return Err(unauthenticated("token not valid yet (nbf)"));
        }
        Ok(())
    }

    fn verify(&self, token: &str) -> Result<Verified, Status> {
        if let Some(v) = self.cache.get(token).map(|v| v.clone()) {
            self.fresh(&v)?;
            return Ok(v);
        }
        let v = self.verify_uncached(token)?;
        self.fresh(&v)?;
        if self.cache.len() >= MAX_CACHED_TOKENS {
            self.cache.clear();
        }
        self.cache.insert(token.into(), v.clone());
        Ok(v)
    }

    fn verify_uncached(&self, token: &str) -> Result<Verified, Status> {
        // `alg` first: `none` (not even an Algorithm here) and HS* never
        // reach a key.
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            unauthenticated(&format!(
                "malformed token or unsupported alg (ES256, RS256, RS512 only): {e}"
            ))
        })?;
        let fam = family(header.alg).ok_or_else(|| {
            unauthenticated(&format!(
                "alg {:?} refused (ES256, RS256, RS512 only)",
                header.alg
            ))
        })?;
        let candidates: Vec<&Key> = match &header.kid {
            Some(kid) if self.keys.iter().any(|k| k.kid.as_ref() == Some(kid)) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_ref() == Some(kid))
                .collect(),
            Some(_) => self.keys.iter().filter(|k| k.kid.is_none()).collect(),
            None => self.keys.iter().collect(),
        };
        let candidates: Vec<&Key> = candidates.into_iter().filter(|k| k.family == fam).collect();
        if candidates.is_empty() {
            return Err(unauthenticated(&format!(
                "no configured key for this token (kid {:?}, alg {:?})",
                header.kid, header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        // Time is checked against the node's clock (see `fresh`), not here.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_audience(&self.audience);
        let mut required = vec!["exp", "aud", "sub"];
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let mut last = None;
        for k in candidates {
            match jsonwebtoken::decode::<Claims>(token, &k.key, &validation) {
                Ok(d) => return self.accept(d.claims),
                Err(e) => {
                    let bad_sig =
                        matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature);
                    last = Some(e);
                    if !bad_sig {
                        // Claims are the same whichever key: no use trying on.
                        break;
                    }
                }
            }
        }
        use jsonwebtoken::errors::ErrorKind as K;
        let why = match last.as_ref().map(|e| e.kind()) {
            Some(K::InvalidSignature) => "bad signature".to_string(),
            Some(K::InvalidAudience) => "wrong audience".to_string(),
            Some(K::InvalidIssuer) => "wrong issuer".to_string(),
            Some(K::MissingRequiredClaim(c)) => format!("missing claim {c}"),
            Some(e) => format!("invalid token: {e:?}"),
            None => "invalid token".to_string(),
        };
        Err(unauthenticated(&why))
    }

    fn accept(&self, c: Claims) -> Result<Verified, Status> {
        if !self.scope.is_empty() && !c.scope.split(' ').any(|s| s == self.scope) {
            return Err(unauthenticated(&format!(
                "wrong scope: `{}` is not among the token's scopes",
                self.scope
            )));
        }
        Ok(Verified {
            subject: c.sub.into(),
            roles: Roles::from_scope(&c.scope),
            exp: c.exp,
            nbf: c.nbf,
        })
    }
}

// ---- the layer --------------------------------------------------------------

/// The tower layer on the public server: refuses a protected call without a
/// good token or the method's role, else runs it with its [`Caller`].
/// `None` (auth off): every call passes as it is.
#[derive(Clone)]
pub struct AuthLayer(pub Option<Arc<Verifier>>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            verifier: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    verifier: Option<Arc<Verifier>>,
}

type BoxFut<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFut<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let Some(v) = &self.verifier else {
            return Box::pin(self.inner.call(req));
        };
        let caller = match access_of(req.uri().path()) {
            None => None,
            Some(need) => {
                let checked = v.caller(req.headers()).and_then(|c| {
                    let need = need
                        .ok_or_else(|| Status::permission_denied("no role grants this method"))?;
                    if c.roles.allows(need) {
                        Ok(c)
                    } else {
                        Err(denied(req.uri().path(), need, c.roles))
                    }
                });
                match checked {
                    Ok(c) => Some(c),
                    Err(s) => {
                        counter_refused(s.code());
                        return Box::pin(std::future::ready(Ok(s.into_http())));
                    }
                }
            }
        };
        if let Some(c) = &caller {
            req.extensions_mut().insert(c.clone());
        }
        Box::pin(scoped(caller, self.inner.call(req)))
    }
}

fn counter_refused(code: Code) {
    let why = if code == Code::Unauthenticated {
        "unauthenticated"
    } else {
        "permission_denied"
    };
    metrics::counter!("charging_auth_refused_total", "why" => why).increment(1);
}

// ---- signing: the node's own calls, `chargerd token`, tests -------------------

/// What a signed token says.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub subject: String,
    pub audience: Vec<String>,
    pub issuer: Option<String>,
    /// The whole `scope` claim (service scope and role scopes).
    pub scope: String,
    pub ttl: Duration,
    pub kid: Option<String>,
}

impl TokenSpec {
    /// A token for `roles`, with the service scope `service_scope` (if not
    /// empty) first.
    pub fn for_roles(service_scope: &str, roles: &[Role]) -> String {
        let mut v: Vec<String> = Vec::new();
        if !service_scope.is_empty() {
            v.push(service_scope.to_string());
        }
        v.extend(roles.iter().map(|r| r.scope()));
        v.join(" ")
    }
}

#[derive(serde::Serialize)]
struct SignedClaims<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    sub: &'a str,
    aud: &'a [String],
    scope: &'a str,
    iat: u64,
    exp: u64,
}

/// A private key (PEM: PKCS#8 EC P-256 for ES256, or RSA for RS256 /
/// RS512) that signs tokens.
pub struct Signer {
    key: EncodingKey,
    alg: Algorithm,
}

impl Signer {
    /// `alg`: `None` picks ES256 for an EC key, RS256 for an RSA key.
    pub fn from_pem(pem: &[u8], alg: Option<Algorithm>) -> Result<Signer, String> {
        let (key, default) = match EncodingKey::from_ec_pem(pem) {
            Ok(k) => (k, Algorithm::ES256),
            Err(_) => (
                EncodingKey::from_rsa_pem(pem).map_err(|e| {
                    format!("not a PKCS#8 EC (P-256) or RSA private key in PEM: {e}")
                })?,
                Algorithm::RS256,
            ),
        };
        let alg = alg.unwrap_or(default);
        if family(alg).is_none() {
            return Err(format!("alg {alg:?}: only ES256, RS256, RS512"));
        }
        Ok(Signer { key, alg })
    }

    /// A token per `spec`, issued at `now_s` (seconds since the epoch).
    pub fn sign(&self, spec: &TokenSpec, now_s: u64) -> Result<String, String> {
        let mut header = Header::new(self.alg);
        header.kid = spec.kid.clone();
        let claims = SignedClaims {
            iss: spec.issuer.as_deref(),
            sub: &spec.subject,
            aud: &spec.audience,
            scope: &spec.scope,
            iat: now_s,
            exp: now_s + spec.ttl.as_secs(),
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| e.to_string())
    }
}

/// The node's own admin credential: a token it signs with `auth.node_key`,
/// re-signed when half its lifetime has passed.
pub struct NodeCredential {
    signer: Signer,
    spec: TokenSpec,
    clock: SharedClock,
    current: Mutex<Option<(AsciiMetadataValue, u64)>>,
}

impl NodeCredential {
    pub fn new(node: u64, cfg: &AuthConfig, clock: SharedClock) -> Result<Self, String> {
        let k = cfg
            .node_key
            .as_ref()
            .ok_or("auth.node_key: needed when auth is enabled")?;
        let signer = Signer::from_pem(&read_pem("auth.node_key", k)?, None)
            .map_err(|e| format!("auth.node_key: {}: {e}", k.file.display()))?;
        let spec = TokenSpec {
            subject: format!("node-{node}"),
            audience: cfg.audience.iter().take(1).cloned().collect(),
            issuer: cfg.issuer.clone(),
            scope: TokenSpec::for_roles(&cfg.scope, &[Role::Admin]),
            ttl: NODE_TOKEN_TTL,
            kid: k.kid.clone(),
        };
        let c = NodeCredential {
            signer,
            spec,
            clock,
            current: Mutex::new(None),
        };
        c.value()?;
        Ok(c)
    }

    fn value(&self) -> Result<AsciiMetadataValue, String> {
        let now = self.clock.now_ms() / 1000;
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((v, issued)) = &*cur {
            if now < issued + NODE_TOKEN_TTL.as_secs() / 2 {
                return Ok(v.clone());
            }
        }
        let t = self.signer.sign(&self.spec, now)?;
        let v = AsciiMetadataValue::try_from(format!("Bearer {t}")).map_err(|e| e.to_string())?;
        *cur = Some((v.clone(), now));
        Ok(v)
    }

    /// Puts the node's token on one of its own requests.
    pub fn authorize(&self, md: &mut MetadataMap) {
        match self.value() {
            Ok(v) => {
                md.insert(AUTHORIZATION, v);
            }
            Err(e) => tracing::error!(error = %e, "signing the node's own token failed"),
        }
    }
}

/// A new ES256 key pair: (private key PKCS#8 PEM, public key SPKI PEM).
pub fn generate_es256() -> Result<(String, String), String> {
    let kp =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    Ok((kp.serialize_pem(), kp.public_key_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method of the protected services, from the proto's descriptors.
    fn proto_methods() -> Vec<String> {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(charging_proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set decodes");
        let mut out = Vec::new();
        for f in &set.file {
            for s in &f.service {
                let name = format!("{}.{}", f.package(), s.name());
                if PROTECTED_SERVICES.contains(&name.as_str()) {
                    for m in &s.method {
                        out.push(format!("/{name}/{}", m.name()));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_method_of_the_proto_has_exactly_one_entry() {
        let methods = proto_methods();
        assert!(methods.len() >= 20, "descriptors read: {methods:?}");
        for m in &methods {
            let n = METHOD_ROLES.iter().filter(|(p, _)| p == m).count();
            assert_eq!(n, 1, "{m}: {n} entries in METHOD_ROLES (want exactly 1)");
        }
        for (p, _) in METHOD_ROLES {
            assert!(
                methods.iter().any(|m| m == p),
                "{p}: not a method of the proto"
            );
        }
    }

    #[test]
    fn every_stream_op_maps_to_a_table_method() {
        use pb::op::Op as O;
        let ops = [
            O::Reserve(Default::default()),
            O::Update(Default::default()),
            O::Terminate(Default::default()),
            O::Commit(Default::default()),
            O::Release(Default::default()),
            O::Refund(Default::default()),
            O::Debit(Default::default()),
            O::TopUp(Default::default()),
            O::Balance(Default::default()),
            O::CreateAccount(Default::default()),
        ];
        for op in &ops {
            let m = stream_op_method(op);
            assert!(
                matches!(access_of(m), Some(Some(Access::Role(_)))),
                "{m}: stream op without a role"
            );
        }
    }

    struct FakeClock(std::sync::atomic::AtomicU64);
    impl crate::clock::Clock for FakeClock {
        fn now_ms(&self) -> u64 {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    fn headers(token: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        h
    }

    /// Keys by `kid`, and `exp` / `nbf` with the leeway, by the node's
    /// clock, also for a token already verified (cached).
    #[test]
    fn kid_selection_and_time_with_leeway() {
        let dir = tempfile::tempdir().unwrap();
        let mut keys = Vec::new();
        let mut signers = Vec::new();
        for kid in ["a", "b"] {
            let (private, public) = generate_es256().unwrap();
            let file = dir.path().join(format!("{kid}.pub.pem"));
            std::fs::write(&file, public).unwrap();
            keys.push(AuthKey {
                file,
                kid: Some(kid.into()),
            });
            signers.push(Signer::from_pem(private.as_bytes(), None).unwrap());
        }
        let cfg = AuthConfig {
            enabled: true,
            keys,
            audience: vec!["aud".into()],
            leeway: Duration::from_secs(30),
            ..AuthConfig::default()
        };
        let t0 = 1_800_000_000u64;
        let clock = Arc::new(FakeClock((t0 * 1000).into()));
        let v = Verifier::new(&cfg, clock.clone()).unwrap();
        let spec = |kid: Option<&str>| TokenSpec {
            subject: "s".into(),
            audience: vec!["aud".into()],
            issuer: None,
            scope: TokenSpec::for_roles("nchf-convergedcharging", &[Role::Billing]),
            ttl: Duration::from_secs(60),
            kid: kid.map(Into::into),
        };
        let msg = |r: Result<Caller, Status>| r.err().map(|s| s.message().to_string());
        // Signed by b: accepted under kid b or without a kid, not under kid a.
        let b = signers[1].sign(&spec(Some("b")), t0).unwrap();
        assert!(v.caller(&headers(&b)).is_ok());
        assert!(v
            .caller(&headers(&signers[1].sign(&spec(None), t0).unwrap()))
            .is_ok());
        let as_a = signers[1].sign(&spec(Some("a")), t0).unwrap();
        assert!(msg(v.caller(&headers(&as_a)))
            .unwrap()
            .contains("bad signature"));
        let unknown = signers[1].sign(&spec(Some("z")), t0).unwrap();
        assert!(msg(v.caller(&headers(&unknown)))
            .unwrap()
            .contains("no configured key"));
        let c = v.caller(&headers(&b)).unwrap();
        assert_eq!(c.roles, Roles::of(&[Role::Billing]));
        assert_eq!(&*c.subject, "s");
        // exp = t0 + 60; leeway 30: good until t0 + 90 (cached by now).
        clock
            .0
            .store((t0 + 90) * 1000, std::sync::atomic::Ordering::SeqCst);
        assert!(v.caller(&headers(&b)).is_ok());
        clock
            .0
            .store((t0 + 91) * 1000, std::sync::atomic::Ordering::SeqCst);
        assert!(msg(v.caller(&headers(&b))).unwrap().contains("expired"));
        // Issued in the future (nbf), within and past the leeway.
        let mut later = spec(None);
        later.ttl = Duration::from_secs(600);
        let now = t0 + 91;
        #[derive(serde::Serialize)]
        struct WithNbf<'a> {
            sub: &'a str,
            aud: &'a str,
            scope: String,
            exp: u64,
            nbf: u64,
        }
        let key = |i: usize| &signers[i].key;
        let nbf = |n: u64| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::ES256),
                &WithNbf {
                    sub: "s",
                    aud: "aud",
                    scope: later.scope.clone(),
                    exp: now + 600,
                    nbf: n,
                },
                key(0),
            )
            .unwrap()
        };
        assert!(v.caller(&headers(&nbf(now + 30))).is_ok());
        assert!(msg(v.caller(&headers(&nbf(now + 31))))
            .unwrap()
            .contains("not valid yet"));
    }

    /// RSA keys (free5GC's NRF signs RS512): RS256 and RS512 tokens verify
    /// against the configured public key, in PKCS#1 or SPKI PEM; one signed
    /// by another RSA key, or re-labelled with the other RSA alg, does not.
    #[test]
    fn rs256_and_rs512_verify_against_rsa_keys() {
        use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
        use rsa::pkcs8::{EncodePublicKey, LineEnding};
        let gen = || {
            let k = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
            let private = k.to_pkcs1_pem(LineEnding::LF).unwrap().to_string();
            (k, private)
        };
        let (ours, ours_pem) = gen();
        let (_, other_pem) = gen();
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_800_000_000u64;
        let spec = TokenSpec {
            subject: "nrf-client".into(),
            audience: vec!["CHF".into()],
            issuer: None,
            scope: TokenSpec::for_roles("nchf-convergedcharging", &[Role::Charging]),
            ttl: Duration::from_secs(60),
            kid: None,
        };
        let public_pems = [
            (
                "pkcs1",
                ours.to_public_key().to_pkcs1_pem(LineEnding::LF).unwrap(),
            ),
            (
                "spki",
                ours.to_public_key()
                    .to_public_key_pem(LineEnding::LF)
                    .unwrap(),
            ),
        ];
        for (form, public) in public_pems {
            let file = dir.path().join(format!("{form}.pub.pem"));
            std::fs::write(&file, public).unwrap();
            let cfg = AuthConfig {
                enabled: true,
                keys: vec![AuthKey { file, kid: None }],
                audience: vec!["CHF".into()],
                ..AuthConfig::default()
            };
            let v = Verifier::new(&cfg, Arc::new(FakeClock((t0 * 1000).into()))).unwrap();
            for alg in [Algorithm::RS256, Algorithm::RS512] {
                let token = Signer::from_pem(ours_pem.as_bytes(), Some(alg))
                    .unwrap()
                    .sign(&spec, t0)
                    .unwrap();
                let c = v
                    .caller(&headers(&token))
                    .unwrap_or_else(|s| panic!("{form} key, {alg:?}: refused: {}", s.message()));
                assert_eq!(c.roles, Roles::of(&[Role::Charging]), "{form} {alg:?}");
                let forged = Signer::from_pem(other_pem.as_bytes(), Some(alg))
                    .unwrap()
                    .sign(&spec, t0)
                    .unwrap();
                let why = v
                    .caller(&headers(&forged))
                    .expect_err("another key's token");
                assert_eq!(why.code(), tonic::Code::Unauthenticated);
                assert!(why.message().contains("bad signature"), "{}", why.message());
                // The same signature under the other RSA alg's header.
                let (h, rest) = token.split_once('.').unwrap();
                let other = if alg == Algorithm::RS256 {
                    "RS512"
                } else {
                    "RS256"
                };
                let relabelled = base64::Engine::encode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    format!("{{\"typ\":\"JWT\",\"alg\":\"{other}\"}}"),
                );
                assert_ne!(h, relabelled);
                let why = v
                    .caller(&headers(&format!("{relabelled}.{rest}")))
                    .expect_err("a relabelled token");
                assert_eq!(why.code(), tonic::Code::Unauthenticated, "{form} {alg:?}");
            }
        }
    }

    /// With an issuer configured, `iss` is required and must match.
    #[test]
    fn issuer_when_configured() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = generate_es256().unwrap();
        let file = dir.path().join("k.pub.pem");
        std::fs::write(&file, public).unwrap();
        let cfg = AuthConfig {
            enabled: true,
            keys: vec![AuthKey { file, kid: None }],
            audience: vec!["aud".into()],
            issuer: Some("nrf".into()),
            ..AuthConfig::default()
        };
        let t0 = 1_800_000_000u64;
        let v = Verifier::new(&cfg, Arc::new(FakeClock((t0 * 1000).into()))).unwrap();
        let signer = Signer::from_pem(private.as_bytes(), None).unwrap();
        let token = |iss: Option<&str>| {
            let spec = TokenSpec {
                subject: "s".into(),
                audience: vec!["aud".into()],
                issuer: iss.map(Into::into),
                scope: TokenSpec::for_roles("nchf-convergedcharging", &[Role::Charging]),
                ttl: Duration::from_secs(60),
                kid: None,
            };
            headers(&signer.sign(&spec, t0).unwrap())
        };
        let why = |h| v.caller(&h).err().map(|s| s.message().to_string());
        assert_eq!(why(token(Some("nrf"))), None);
        assert!(why(token(Some("someone")))
            .unwrap()
            .contains("wrong issuer"));
        assert!(why(token(None)).unwrap().contains("missing claim iss"));
    }

    #[test]
    fn roles_of_methods() {
        let need = |m: &str| access_of(&format!("/charging.v1.{m}")).unwrap().unwrap();
        let charging = Roles::from_scope("nchf-convergedcharging charging:charging");
        let billing = Roles::from_scope("charging:billing");
        let admin = Roles::from_scope("x charging:admin y");
        let none = Roles::from_scope("nchf-convergedcharging charging:root");
        for m in [
            "Charging/Reserve",
            "Charging/Commit",
            "Charging/Balance",
            "Charging/Debit",
        ] {
            assert!(charging.allows(need(m)) && admin.allows(need(m)), "{m}");
            assert!(!billing.allows(need(m)), "{m}");
        }
        for m in [
            "Charging/TopUp",
            "Charging/CreateAccount",
            "Charging/Refund",
            "Charging/SetAccountState",
        ] {
            assert!(billing.allows(need(m)) && admin.allows(need(m)), "{m}");
            assert!(!charging.allows(need(m)), "{m}");
        }
        for m in [
            "Charging/SetTariff",
            "Admin/DropReplica",
            "Admin/AddNode",
            "Admin/RemoveNode",
            "Admin/Status",
        ] {
            assert!(admin.allows(need(m)), "{m}");
            assert!(!charging.allows(need(m)) && !billing.allows(need(m)), "{m}");
        }
        for m in ["Charging/Stream", "Admin/ShardMap"] {
            assert!(charging.allows(need(m)) && billing.allows(need(m)), "{m}");
            assert!(!none.allows(need(m)), "{m}: a token with no role");
        }
        // Open services and unknown methods of protected ones.
        assert_eq!(access_of("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            access_of("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(access_of("/charging.v1.Admin/Nope"), Some(None));
    }
}
