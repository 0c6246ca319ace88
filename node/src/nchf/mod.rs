//! The Nchf_ConvergedCharging v3 producer (TS 32.290 / 32.291): a 5G SMF,
//! SMSF or IMS node charges against the cluster over HTTP/2 + JSON.
//!
//! Its own listener (`nchf_addr`): HTTP/1.1 and h2c with prior knowledge
//! on one port. Every operation goes through the same [`FrontDoor`] as
//! gRPC (routing, one-hop forwarding, admission, metrics); the ledger's
//! session dedup on (session, seq) makes a retransmission answer the
//! original and charge once.
//!
//! - `POST /nchf-convergedcharging/v3/chargingdata` → `OpenSession` (or
//!   `Debit`s for a one-time event), 201 with `Location`;
//! - `POST …/{ChargingDataRef}/update` → `Update`, 200;
//! - `POST …/{ChargingDataRef}/release` → `Terminate`, 204.
//!
//! The ChargingDataRef carries the account (so any node routes it) and the
//! session, itself a hash of (consumer, charging id / PDU session, Create's
//! invocationTimeStamp), so a retransmitted Create lands on the same
//! session. Every 4xx/5xx body is ProblemDetails (`application/problem+json`).
//! Mapping details: [`mapping`].
use crate::config::NchfOptions;
use crate::frontdoor::auth::{self, Verifier};
use crate::frontdoor::{FrontDoor, Mutation};
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use charging_proto::v1 as pb;
use charging_proto::v1::ResultCode as RC;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, StatusCode};
use mapping::{Problem, RgReport, Shaping};
use model::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

pub mod mapping;
pub mod model;

/// The API root of every path.
pub const ROOT: &str = "/nchf-convergedcharging/v3/chargingdata";

/// The method whose role an Nchf call needs (`charging:charging`).
const ROLE_OF: &str = "/charging.v1.Charging/Update";

/// The producer's shared state.
pub struct Nchf {
    fd: Arc<FrontDoor>,
    opts: NchfOptions,
    verifier: Option<Arc<Verifier>>,
    /// This listener's address (the `Location` when a request has no Host).
    local: String,
    /// validityTime of a grant, seconds (the ledger's reservation validity).
    validity_s: u64,
    /// `https` under TLS, else `http` (the `Location`'s scheme).
    scheme: &'static str,
}

impl Nchf {
    pub fn new(
        fd: Arc<FrontDoor>,
        opts: NchfOptions,
        verifier: Option<Arc<Verifier>>,
        local: String,
        tls: bool,
    ) -> Arc<Nchf> {
        let validity_s = fd.meta.1.read(|s| s.limits.reservation_validity_ms) / 1000;
        Arc::new(Nchf {
            fd,
            opts,
            verifier,
            local,
            validity_s,
            scheme: if tls { "https" } else { "http" },
        })
    }

    /// The routes, for a server (or a test) to serve.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(ROOT, post(create))
            .route(&format!("{ROOT}/{{reference}}/update"), post(update))
            .route(&format!("{ROOT}/{{reference}}/release"), post(release))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(self.clone())
    }

    /// One front-door operation, retried with the same message (the same
    /// request id and seq: the ledger answers a retry of an applied one
    /// with its original reply) while the outcome is unknown, until
    /// `request_deadline`.
    async fn call<M: Mutation>(&self, msg: M) -> Result<M::Response, Problem> {
        let deadline = Instant::now() + self.opts.request_deadline;
        let mut pause = Duration::from_millis(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.fd.mutate(msg.clone(), false)).await {
                Err(_) => {
                    return Err(Problem::unavailable(
                        "outcome unknown (deadline passed); retransmit the same request",
                    ))
                }
                Ok(Ok(r)) => return Ok(r),
                // Unknown outcomes: a leader change, or a forward whose
                // connection broke (a killed leader surfaces as INTERNAL
                // "h2 protocol error"). The same message again is safe.
                Ok(Err(s))
                    if matches!(
                        s.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::Internal
                            | tonic::Code::Unknown
                            | tonic::Code::Cancelled
                            | tonic::Code::DeadlineExceeded
                    ) && Instant::now() + pause < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(400));
                }
                Ok(Err(s)) => return Err(mapping::status_problem(&s)),
            }
        }
    }

    fn shaping<'a>(&self, reports: &'a [RgReport]) -> Shaping<'a> {
        Shaping {
            reports,
            threshold_percent: self.opts.threshold_percent,
            validity_s: self.validity_s,
        }
    }
}

// ---- the listener -----------------------------------------------------------

/// Serves the producer on `listener` until `shutdown` turns true: HTTP/1.1
/// and h2c (prior knowledge) on the same port, or, with `tls`, TLS with
/// ALPN `h2` / `http/1.1`; at most `connections_max` connections (more wait
/// in the accept queue), `streams_max` streams each.
pub async fn serve(
    listener: TcpListener,
    nchf: Arc<Nchf>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let router = nchf.router();
    let slots = Arc::new(Semaphore::new(nchf.opts.connections_max));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        };
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: nothing to wait
                    // on but time.
                    tracing::warn!(error = %e, "nchf accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let rx = shutdown.clone();
        let opts = nchf.opts.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                None => connection(stream, router, &opts, rx).await,
                Some(a) => {
                    // A handshake has a deadline too.
                    match tokio::time::timeout(Duration::from_secs(10), a.accept(stream)).await {
                        Ok(Ok(s)) => connection(s, router, &opts, rx).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "nchf TLS handshake failed"),
                        Err(_) => tracing::debug!("nchf TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// One connection, HTTP/1.1 or HTTP/2 (by its preface), until it ends or
/// the node stops (then gracefully, within 5 s).
async fn connection<IO>(io: IO, router: Router, opts: &NchfOptions, mut rx: watch::Receiver<bool>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let svc = hyper_util::service::TowerToHyperService::new(router);
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(opts.streams_max)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let conn = b.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = async { let _ = rx.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

// ---- handlers ---------------------------------------------------------------

fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(b) => (status, [(CONTENT_TYPE, "application/json")], b).into_response(),
        Err(e) => problem_response(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SYSTEM_FAILURE",
            e.to_string(),
        )),
    }
}

fn problem_response(p: Problem) -> Response {
    let body = serde_json::to_vec(&p.body).unwrap_or_default();
    let mut r = (p.status, [(CONTENT_TYPE, "application/problem+json")], body).into_response();
    if let Some(s) = p.retry_after {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
    }
    if let Some(v) = p
        .www_authenticate
        .and_then(|w| HeaderValue::from_str(&w).ok())
    {
        r.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    r
}

async fn not_found() -> Response {
    problem_response(Problem::new(
        StatusCode::NOT_FOUND,
        "RESOURCE_URI_STRUCTURE_NOT_FOUND",
        format!("not a resource of this API (paths start {ROOT})"),
    ))
}

async fn method_not_allowed() -> Response {
    problem_response(Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "every operation of this API is a POST",
    ))
}

fn record(op: &'static str, status: StatusCode, started: Instant) {
    metrics::counter!("charging_nchf_requests_total", "op" => op, "status" => status.as_str().to_string())
        .increment(1);
    metrics::histogram!("charging_nchf_request_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
}

/// What every operation does first: the token (when auth is on), the media
/// type, the body's size, its JSON. Returns the caller, the Host the
/// request named, and the message.
async fn prelude(
    n: &Nchf,
    req: Request,
) -> Result<(Option<auth::Caller>, String, ChargingDataRequest), Problem> {
    let caller = match &n.verifier {
        Some(v) => {
            let c = v
                .caller(req.headers())
                .map_err(|s| mapping::status_problem(&s))?;
            c.may(ROLE_OF).map_err(|s| mapping::status_problem(&s))?;
            Some(c)
        }
        None => None,
    };
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .filter(|h| h.parse::<http::uri::Authority>().is_ok())
        .unwrap_or_else(|| n.local.clone());
    let json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|m| m == "application/json" || m.ends_with("+json"));
    if !json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "the body must be application/json",
        ));
    }
    let max = n.opts.body_bytes_max;
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("the body is over {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|l| l > max as u64) {
        return Err(too_large());
    }
    // The body has the request's deadline too (a client trickling it
    // would hold a connection slot).
    let body = tokio::time::timeout(
        n.opts.request_deadline,
        axum::body::to_bytes(req.into_body(), max),
    )
    .await
    .map_err(|_| {
        Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            "the body did not arrive within the request deadline",
        )
    })?;
    let bytes = match body {
        Ok(b) => b,
        Err(e) => {
            let limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            return Err(if limit {
                too_large()
            } else {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_MSG_FORMAT",
                    format!("reading the body: {e}"),
                )
            });
        }
    };
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let msg: ChargingDataRequest =
        serde_path_to_error::deserialize(&mut de).map_err(|e| mapping::parse_problem(&e))?;
    de.end().map_err(|e| {
        Problem::invalid(
            "INVALID_MSG_FORMAT",
            "/",
            format!("after the JSON value: {e}"),
        )
    })?;
    Ok((caller, host, msg))
}

fn time_of(msg: &ChargingDataRequest) -> Result<u64, Problem> {
    mapping::parse_time(&msg.invocation_time_stamp).ok_or_else(|| {
        Problem::invalid(
            "MANDATORY_IE_INCORRECT",
            "/invocationTimeStamp",
            "not an RFC 3339 date-time",
        )
    })
}

/// Runs an operation under the caller's identity (forwarded calls carry
/// its token) and answers.
async fn run<F>(n: Arc<Nchf>, op: &'static str, req: Request, f: F) -> Response
where
    F: AsyncOp,
{
    let started = Instant::now();
    let r = match prelude(&n, req).await {
        Ok((caller, host, msg)) => auth::scoped(caller, f.run(n.clone(), host, msg)).await,
        Err(p) => Err(p),
    };
    let resp = r.unwrap_or_else(problem_response);
    record(op, resp.status(), started);
    resp
}

/// An operation after the prelude (a trait, so `run` takes each handler's
/// future without boxing closures' lifetimes).
trait AsyncOp {
    fn run(
        self,
        n: Arc<Nchf>,
        host: String,
        msg: ChargingDataRequest,
    ) -> impl std::future::Future<Output = Result<Response, Problem>> + Send;
}

struct Create;
struct Update(String);
struct Release(String);

async fn create(State(n): State<Arc<Nchf>>, req: Request) -> Response {
    run(n, "create", req, Create).await
}

async fn update(
    State(n): State<Arc<Nchf>>,
    Path(reference): Path<String>,
    req: Request,
) -> Response {
    run(n, "update", req, Update(reference)).await
}

async fn release(
    State(n): State<Arc<Nchf>>,
    Path(reference): Path<String>,
    req: Request,
) -> Response {
    run(n, "release", req, Release(reference)).await
}

fn unknown_ref() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "CONTEXT_NOT_FOUND",
        "no charging session has this ChargingDataRef",
    )
}

fn answer(msg: &ChargingDataRequest, mui: Vec<MultipleUnitInformation>) -> ChargingDataResponse {
    ChargingDataResponse {
        invocation_time_stamp: msg.invocation_time_stamp.clone(),
        invocation_sequence_number: msg.invocation_sequence_number,
        multiple_unit_information: mui,
    }
}

impl AsyncOp for Create {
    async fn run(
        self,
        n: Arc<Nchf>,
        host: String,
        msg: ChargingDataRequest,
    ) -> Result<Response, Problem> {
        let ts = time_of(&msg)?;
        // Any non-empty string is a schema-valid SUPI: one that cannot be
        // an account is an unknown user, not a malformed request.
        let account = msg
            .subscriber_identifier
            .clone()
            .filter(|s| !s.is_empty() && s.len() <= crate::frontdoor::validate::MAX_ID_BYTES)
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::NOT_FOUND,
                    "USER_UNKNOWN",
                    "no account for this subscriberIdentifier",
                )
            })?;
        let session = mapping::session_of(&msg, ts);
        let reference = mapping::encode_ref(&account, &session);
        let seq = mapping::seq_of(n.opts.sequence, &msg, ts);
        let now = n.fd.clock.now_ms();
        let reports = mapping::reports(&msg, false, &n.opts)?;
        let location = format!("{}://{host}{ROOT}/{reference}", n.scheme);
        let mui = if msg.one_time_event == Some(true) {
            event(&n, &account, &reference, seq, ts, now, &reports).await?
        } else {
            let r = n
                .call(pb::OpenSessionRequest {
                    account_id: account.clone(),
                    request_id: mapping::request_id(&reference, seq, "create", 0, ts, now),
                    session_id: session,
                    seq,
                    reports: mapping::to_pb(&reports),
                })
                .await?;
            if let Some(p) = mapping::rejection_problem(r.result, "request") {
                return Err(p);
            }
            mapping::units_info(&r.grants, &n.shaping(&reports))
        };
        let mut resp = json_response(StatusCode::CREATED, &answer(&msg, mui));
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(LOCATION, v);
        }
        Ok(resp)
    }
}

/// A one-time event (IEC): each rating group's units debited at once
/// (requested units, else used ones), each its own deduplicated `Debit`.
async fn event(
    n: &Nchf,
    account: &str,
    reference: &str,
    seq: u64,
    ts: u64,
    now: u64,
    reports: &[RgReport],
) -> Result<Vec<MultipleUnitInformation>, Problem> {
    let mut out = Vec::with_capacity(reports.len());
    for r in reports {
        let units = if r.requested != pb::Units::default() {
            r.requested
        } else {
            r.used
        };
        let d = n
            .call(pb::DebitRequest {
                account_id: account.to_string(),
                request_id: mapping::request_id(reference, seq, "debit", r.rating_group, ts, now),
                rating_group: r.rating_group,
                units: Some(units),
            })
            .await?;
        if let Some(p) = mapping::rejection_problem(d.result, "request") {
            return Err(p);
        }
        let ok = d.result == RC::Ok as i32;
        out.push(MultipleUnitInformation {
            result_code: mapping::rg_result(d.result),
            rating_group: r.rating_group,
            granted_unit: ok.then(|| GrantedUnit {
                time: (units.time_s > 0).then_some(units.time_s),
                total_volume: (units.volume_bytes > 0).then_some(units.volume_bytes),
                service_specific_units: (units.service_units > 0).then_some(units.service_units),
                ..GrantedUnit::default()
            }),
            triggers: Vec::new(),
            validity_time: None,
            final_unit_indication: None,
            time_quota_threshold: None,
            volume_quota_threshold: None,
            unit_quota_threshold: None,
            upf_id: r.upf_id.clone(),
        });
    }
    Ok(out)
}

impl AsyncOp for Update {
    async fn run(
        self,
        n: Arc<Nchf>,
        _host: String,
        msg: ChargingDataRequest,
    ) -> Result<Response, Problem> {
        let (account, session) = mapping::decode_ref(&self.0).ok_or_else(unknown_ref)?;
        let ts = time_of(&msg)?;
        let seq = mapping::seq_of(n.opts.sequence, &msg, ts);
        let reports = mapping::reports(&msg, false, &n.opts)?;
        let now = n.fd.clock.now_ms();
        let request_id = mapping::request_id(&self.0, seq, "update", 0, ts, now);
        let r = if reports.is_empty() {
            // An Update with nothing in it (schema-valid) is recorded as an
            // `OpenSession` on the open session: the ledger's Update needs a
            // report. (A forged reference to no session opens one.)
            let o = n
                .call(pb::OpenSessionRequest {
                    account_id: account,
                    request_id,
                    session_id: session,
                    seq,
                    reports: Vec::new(),
                })
                .await?;
            pb::UpdateResponse {
                result: o.result,
                grants: o.grants,
                charged: o.charged,
                debt: o.debt,
            }
        } else {
            n.call(pb::UpdateRequest {
                account_id: account,
                request_id,
                session_id: session,
                seq,
                reports: mapping::to_pb(&reports),
            })
            .await?
        };
        let mui = if r.result == RC::Ok as i32 {
            mapping::units_info(&r.grants, &n.shaping(&reports))
        } else if let Some(p) = mapping::rejection_problem(r.result, "ChargingDataRef") {
            return Err(p);
        } else {
            // Nothing could be done at all (no usage, every grant refused):
            // each rating group that asked gets the reason.
            let grants: Vec<pb::Grant> = reports
                .iter()
                .filter(|x| x.requested != pb::Units::default())
                .map(|x| pb::Grant {
                    rating_group: x.rating_group,
                    result: r.result,
                    ..pb::Grant::default()
                })
                .collect();
            mapping::units_info(&grants, &n.shaping(&reports))
        };
        Ok(json_response(StatusCode::OK, &answer(&msg, mui)))
    }
}

impl AsyncOp for Release {
    async fn run(
        self,
        n: Arc<Nchf>,
        _host: String,
        msg: ChargingDataRequest,
    ) -> Result<Response, Problem> {
        let (account, session) = mapping::decode_ref(&self.0).ok_or_else(unknown_ref)?;
        let ts = time_of(&msg)?;
        let seq = mapping::seq_of(n.opts.sequence, &msg, ts);
        let reports = mapping::reports(&msg, true, &n.opts)?;
        let now = n.fd.clock.now_ms();
        let r = n
            .call(pb::TerminateRequest {
                account_id: account,
                request_id: mapping::request_id(&self.0, seq, "release", 0, ts, now),
                session_id: session,
                seq,
                reports: mapping::to_pb(&reports),
            })
            .await?;
        if let Some(p) = mapping::rejection_problem(r.result, "ChargingDataRef") {
            return Err(p);
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}
