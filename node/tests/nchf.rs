//! The Nchf_ConvergedCharging producer through the real stack: an
//! in-process 3-node cluster (leaders spread, so most accounts are
//! forwarded from node 1), real HTTP/2 (h2c, prior knowledge; TLS with
//! ALPN h2 in its own test) and HTTP/1.1 over loopback, balances read back
//! over gRPC.
// Tests run on real time and the wall clock (as the cluster tests do).
#![allow(clippy::disallowed_methods)]
#[path = "cluster/support.rs"]
mod support;

use bytes::Bytes;
use charging_client::proto::AccountState;
use charging_client::Client;
use charging_node::cluster::{ClusterOptions, ConfigTweak, LocalCluster};
use charging_node::config::{AuthConfig, AuthKey, NchfSequence};
use charging_node::frontdoor::auth::{Role, Signer, TokenSpec};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client as HttpClient};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use support::*;

const ROOT: &str = "/nchf-convergedcharging/v3/chargingdata";

struct Nchf {
    cluster: LocalCluster,
    client: Client,
    h2: HttpClient<HttpConnector, Full<Bytes>>,
    h1: HttpClient<HttpConnector, Full<Bytes>>,
}

/// A reply: status, headers, body.
#[derive(Debug)]
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The ChargingDataRef of a 201: the last segment of `Location`.
    fn reference(&self) -> String {
        assert_eq!(self.status, StatusCode::CREATED, "{self:?}");
        let loc = self.headers["location"].to_str().unwrap();
        assert!(loc.contains(ROOT), "{loc}");
        loc.rsplit('/').next().unwrap().to_string()
    }

    /// The multipleUnitInformation of rating group `rg`.
    fn mui(&self, rg: u32) -> Value {
        self.json()["multipleUnitInformation"]
            .as_array()
            .unwrap_or_else(|| panic!("no multipleUnitInformation: {self:?}"))
            .iter()
            .find(|m| m["ratingGroup"] == rg)
            .cloned()
            .unwrap_or_else(|| panic!("no rating group {rg}: {self:?}"))
    }

    /// Asserts a ProblemDetails answer with this status and cause, valid
    /// against TS 29.571's schema (known keys, their types).
    #[track_caller]
    fn problem(&self, status: StatusCode, cause: &str) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "{self:?}"
        );
        let v = self.json();
        let o = v.as_object().expect("an object");
        for (k, x) in o {
            let ok = match k.as_str() {
                "type" | "title" | "detail" | "instance" | "cause" | "supportedFeatures" => {
                    x.is_string()
                }
                "status" => x.as_u64() == Some(u64::from(status.as_u16())),
                "invalidParams" => x.as_array().is_some_and(|a| {
                    !a.is_empty()
                        && a.iter().all(|p| {
                            p["param"].is_string()
                                && p.as_object()
                                    .unwrap()
                                    .keys()
                                    .all(|k| k == "param" || k == "reason")
                        })
                }),
                _ => false,
            };
            assert!(ok, "ProblemDetails member {k}: {x} in {v}");
        }
        assert_eq!(v["cause"], cause, "{v}");
        v
    }
}

fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

async fn start(sequence: NchfSequence) -> Nchf {
    start_auth(sequence, None).await
}

/// With `auth`: the nodes' `[auth]` and an admin token for the gRPC client.
async fn start_auth(sequence: NchfSequence, auth: Option<(AuthConfig, String)>) -> Nchf {
    let cfg = auth.as_ref().map(|a| a.0.clone());
    let tweak: ConfigTweak = Arc::new(move |c| {
        c.nchf.sequence = sequence;
        if let Some(a) = &cfg {
            c.auth = a.clone();
        }
    });
    // Plaintext (h2c): the TLS listener has its own test.
    let cluster = start_cluster(ClusterOptions {
        tweak: Some(tweak),
        tls: None,
        nchf_ports: Some(Vec::new()),
        ..ClusterOptions::default()
    })
    .await;
    cluster
        .spread_leaders(Duration::from_secs(20))
        .await
        .expect("leaders spread");
    let client = Client::connect_with_config(
        cluster.public_url(1),
        charging_client::ClientConfig {
            token: auth.map(|a| charging_client::BearerToken::new(&a.1).unwrap()),
            tls: None,
            ..client_config()
        },
    )
    .await
    .expect("client connects");
    set_standard_tariffs(&client).await;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let h2 = HttpClient::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector.clone());
    let h1 = HttpClient::builder(TokioExecutor::new()).build(connector);
    Nchf {
        cluster,
        client,
        h2,
        h1,
    }
}

impl Nchf {
    fn url(&self, node: u64, path: &str) -> String {
        format!("{}{ROOT}{path}", self.cluster.nchf_url(node).unwrap())
    }

    async fn send(&self, h1: bool, url: &str, ctype: &str, body: Vec<u8>) -> Got {
        let req = http::Request::post(url)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let c = if h1 { &self.h1 } else { &self.h2 };
        let resp = tokio::time::timeout(Duration::from_secs(30), c.request(req))
            .await
            .expect("answered within 30 s")
            .expect("HTTP exchange");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Got {
            status,
            headers,
            body,
        }
    }

    async fn post_with(&self, node: u64, path: &str, body: &Value, token: Option<&str>) -> Got {
        let mut req =
            http::Request::post(self.url(node, path)).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
            .unwrap();
        let resp = self.h2.request(req).await.expect("HTTP exchange");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Got {
            status,
            headers,
            body,
        }
    }

    async fn post(&self, path: &str, body: &Value) -> Got {
        self.send(
            false,
            &self.url(1, path),
            "application/json",
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    async fn create(&self, body: &Value) -> Got {
        self.post("", body).await
    }

    async fn update(&self, reference: &str, body: &Value) -> Got {
        self.post(&format!("/{reference}/update"), body).await
    }

    async fn release(&self, reference: &str, body: &Value) -> Got {
        self.post(&format!("/{reference}/release"), body).await
    }

    async fn shutdown(self) {
        self.cluster.shutdown().await;
    }
}

/// A ChargingDataRequest from an SMF (`ms`: its invocationTimeStamp).
fn msg(supi: Option<&str>, isn: u32, ms: u64, muus: Value) -> Value {
    let mut v = json!({
        "nfConsumerIdentification": {
            "nodeFunctionality": "SMF",
            "nFName": "6a7f3f4e-1111-4222-8333-444455556666"
        },
        "invocationTimeStamp": rfc3339(ms),
        "invocationSequenceNumber": isn,
        "pDUSessionChargingInformation": {
            "chargingId": 7,
            "pduSessionInformation": {"pduSessionID": 5, "dnnId": "internet"}
        },
        "multipleUnitUsage": muus
    });
    if let Some(s) = supi {
        v["subscriberIdentifier"] = json!(s);
    }
    v
}

fn ask(rg: u32, bytes: u64) -> Value {
    json!({"ratingGroup": rg, "requestedUnit": {"totalVolume": bytes}, "uPFID": "upf-a"})
}

fn used_ask(rg: u32, used: u64, bytes: u64) -> Value {
    json!({
        "ratingGroup": rg,
        "requestedUnit": {"totalVolume": bytes},
        "usedUnitContainer": [{"localSequenceNumber": 1, "totalVolume": used}],
        "uPFID": "upf-a"
    })
}

fn used(rg: u32, used: u64) -> Value {
    json!({
        "ratingGroup": rg,
        "usedUnitContainer": [{"localSequenceNumber": 9, "totalVolume": used}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_update_update_release_charges_the_exact_amount() {
    let n = start(NchfSequence::Isn).await;
    let t = now_ms();
    // One subscriber on every shard: most are forwarded from node 1.
    for (i, supi) in account_per_shard("imsi-00101").iter().enumerate() {
        create(&n.client, supi, 1000).await;
        let c = n
            .create(&msg(Some(supi), 0, t, json!([ask(RG_DATA, 10 * MB)])))
            .await;
        let r = c.reference();
        let m = c.mui(RG_DATA);
        assert_eq!(m["resultCode"], "SUCCESS", "{m}");
        assert_eq!(m["grantedUnit"]["totalVolume"], 10 * MB, "{m}");
        assert_eq!(m["uPFID"], "upf-a");
        assert_eq!(m["validityTime"], 60);
        assert_eq!(m["volumeQuotaThreshold"], 2 * MB, "20% of the grant");
        let kinds: Vec<&str> = m["triggers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["triggerType"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["QUOTA_EXHAUSTED", "VALIDITY_TIME", "QUOTA_THRESHOLD"],
            "{m}"
        );
        assert!(m.get("finalUnitIndication").is_none(), "{m}");
        assert_money(&balance(&n.client, supi).await, 1000, 100);
        // 2.5 MB, then 3 MB, then 0.2 MB: 5.7 MB, 6 started MB, 60 cents.
        let u = n
            .update(
                &r,
                &msg(
                    None,
                    1,
                    t + 1,
                    json!([used_ask(RG_DATA, 2_500_000, 10 * MB)]),
                ),
            )
            .await;
        assert_eq!(u.status, StatusCode::OK, "{u:?}");
        assert_eq!(u.json()["invocationSequenceNumber"], 1);
        assert_eq!(u.mui(RG_DATA)["resultCode"], "SUCCESS");
        let u = n
            .update(
                &r,
                &msg(None, 2, t + 2, json!([used_ask(RG_DATA, 3 * MB, 10 * MB)])),
            )
            .await;
        assert_eq!(u.status, StatusCode::OK, "{u:?}");
        let rel = n
            .release(&r, &msg(None, 3, t + 3, json!([used(RG_DATA, 200_000)])))
            .await;
        assert_eq!(rel.status, StatusCode::NO_CONTENT, "shard {i}: {rel:?}");
        assert!(rel.body.is_empty());
        let b = balance(&n.client, supi).await;
        assert_money(&b, 940, 0);
        assert_eq!((b.open_sessions, b.open_reservations), (0, 0), "{b:?}");
        // The session is closed: an Update on it is refused.
        n.update(&r, &msg(None, 4, t + 4, json!([ask(RG_DATA, MB)])))
            .await
            .problem(StatusCode::NOT_FOUND, "CONTEXT_NOT_FOUND");
    }
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_rating_group_gets_its_result_code() {
    let n = start(NchfSequence::Isn).await;
    let t = now_ms();
    // 25 cents: data is granted, voice partly (the last grant), an
    // unpriced group fails rating.
    create(&n.client, "imsi-rc-1", 25).await;
    let c = n
        .create(&msg(
            Some("imsi-rc-1"),
            0,
            t,
            json!([
                ask(RG_DATA, MB),
                {"ratingGroup": RG_VOICE, "requestedUnit": {"time": 3600}},
                ask(RG_UNPRICED, MB)
            ]),
        ))
        .await;
    assert_eq!(c.mui(RG_DATA)["resultCode"], "SUCCESS");
    let v = c.mui(RG_VOICE);
    assert_eq!(v["resultCode"], "SUCCESS", "{v}");
    // 25 - 10 held for data = 15: five minutes of voice, the last grant.
    assert_eq!(v["grantedUnit"]["time"], 300, "{v}");
    assert_eq!(
        v["finalUnitIndication"]["finalUnitAction"], "TERMINATE",
        "{v}"
    );
    assert_eq!(v["timeQuotaThreshold"], 60, "{v}");
    assert_eq!(c.mui(RG_UNPRICED)["resultCode"], "RATING_FAILED");
    assert!(c.mui(RG_UNPRICED).get("grantedUnit").is_none());
    // Nothing left: the next group asked for reaches the quota limit.
    let r = c.reference();
    let u = n
        .update(
            &r,
            &msg(
                None,
                1,
                t + 1,
                json!([{"ratingGroup": RG_SMS, "requestedUnit": {"serviceSpecificUnits": 1}}]),
            ),
        )
        .await;
    assert_eq!(u.status, StatusCode::OK, "{u:?}");
    assert_eq!(u.mui(RG_SMS)["resultCode"], "QUOTA_LIMIT_REACHED", "{u:?}");
    // Suspended: usage is still charged, quota is denied per group.
    let s = n
        .client
        .set_account_state("imsi-rc-1", AccountState::Suspended)
        .await
        .unwrap();
    assert_rc(s.result, charging_client::proto::ResultCode::Ok, "suspend");
    let u = n
        .update(&r, &msg(None, 2, t + 2, json!([used_ask(RG_DATA, MB, MB)])))
        .await;
    assert_eq!(u.status, StatusCode::OK, "{u:?}");
    assert_eq!(
        u.mui(RG_DATA)["resultCode"],
        "END_USER_SERVICE_DENIED",
        "{u:?}"
    );
    // Unknown subscriber: 404 USER_UNKNOWN (ProblemDetails: a 4xx body is
    // never a ChargingDataResponse).
    n.create(&msg(Some("imsi-nobody"), 0, t, json!([ask(RG_DATA, MB)])))
        .await
        .problem(StatusCode::NOT_FOUND, "USER_UNKNOWN");
    // A suspended subscriber opens no new session.
    n.create(&msg(Some("imsi-rc-1"), 0, t + 10, json!([])))
        .await
        .problem(StatusCode::FORBIDDEN, "END_USER_REQUEST_DENIED");
    n.shutdown().await;
}

/// Create, Update and Release each sent twice: the same answer, one charge.
async fn retransmissions(sequence: NchfSequence) {
    let n = start(sequence).await;
    let t = now_ms();
    // Timestamp mode stands for SMFs whose ISN never moves (always 0).
    let isn = |i: u32| if sequence == NchfSequence::Isn { i } else { 0 };
    for supi in account_per_shard("imsi-rt") {
        create(&n.client, &supi, 1000).await;
        let body = msg(Some(&supi), isn(0), t, json!([ask(RG_DATA, 10 * MB)]));
        let c1 = n.create(&body).await;
        let c2 = n.create(&body).await;
        assert_eq!(c1.reference(), c2.reference(), "same session");
        assert_eq!(c1.body, c2.body);
        let r = c1.reference();
        let up = msg(
            None,
            isn(1),
            t + 1000,
            json!([used_ask(RG_DATA, 3 * MB, 10 * MB)]),
        );
        let u1 = n.update(&r, &up).await;
        let u2 = n.update(&r, &up).await;
        assert_eq!(u1.status, StatusCode::OK, "{u1:?}");
        assert_eq!((u2.status, &u2.body), (StatusCode::OK, &u1.body));
        assert_money(&balance(&n.client, &supi).await, 970, 100);
        // Over HTTP/1.1 and to another node: still the same answer.
        let u3 = n
            .send(
                true,
                &n.url(2, &format!("/{r}/update")),
                "application/json",
                serde_json::to_vec(&up).unwrap(),
            )
            .await;
        assert_eq!((u3.status, &u3.body), (StatusCode::OK, &u1.body));
        let rel = msg(None, isn(2), t + 2000, json!([used(RG_DATA, MB)]));
        assert_eq!(n.release(&r, &rel).await.status, StatusCode::NO_CONTENT);
        assert_eq!(n.release(&r, &rel).await.status, StatusCode::NO_CONTENT);
        let b = balance(&n.client, &supi).await;
        assert_money(&b, 960, 0);
        assert_eq!(b.open_sessions, 0, "{b:?}");
    }
    if sequence == NchfSequence::Isn {
        // A second, different Update under the same ISN is refused, and
        // changes nothing.
        let supi = "imsi-rt-reuse";
        create(&n.client, supi, 1000).await;
        let r = n
            .create(&msg(Some(supi), 0, t, json!([ask(RG_DATA, MB)])))
            .await
            .reference();
        n.update(&r, &msg(None, 0, t + 1, json!([used_ask(RG_DATA, MB, MB)])))
            .await
            .problem(StatusCode::CONFLICT, "INVOCATION_SEQUENCE_NUMBER_REUSED");
        assert_money(&balance(&n.client, supi).await, 1000, 10);
    }
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retransmission_answers_the_same_and_charges_once_by_isn() {
    retransmissions(NchfSequence::Isn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retransmission_answers_the_same_and_charges_once_by_timestamp() {
    retransmissions(NchfSequence::Timestamp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn free5gc_shaped_requests_work() {
    // As the free5GC SMF sends them (internal/sbi/consumer/chf_service.go):
    // ISN always 0, nFName "SMF", no multipleUnitUsage on Create, usage as
    // uplink/downlink (int32, omitted when 0) per URR report, requestedUnit
    // total = uplink = downlink, the grant applied only with its triggers,
    // found by (uPFID, ratingGroup).
    let n = start(NchfSequence::Timestamp).await;
    let supi = "imsi-208930000000003";
    create(&n.client, supi, 10_000).await;
    let t = now_ms() / 1000 * 1000; // whole seconds, as Go's RFC 3339
    let smf = |ms: u64, muus: Option<Value>| {
        let mut v = json!({
            "subscriberIdentifier": supi,
            "nfConsumerIdentification": {"nFName": "SMF", "nodeFunctionality": "SMF",
                "nFIPv4Address": "127.0.0.2"},
            "invocationTimeStamp": rfc3339(ms),
            "invocationSequenceNumber": 0,
            "notifyUri": "http://127.0.0.2:8000/nsmf-callback/notify_urn:uuid:1",
            "pDUSessionChargingInformation": {"chargingId": 1,
                "pduSessionInformation": {"pduSessionID": 1, "dnnId": "internet",
                    "networkSlicingInfo": {"sNSSAI": {"sst": 1, "sd": "010203"}}}}
        });
        if let Some(m) = muus {
            v["multipleUnitUsage"] = m;
        }
        v
    };
    let c = n.create(&smf(t, None)).await;
    let r = c.reference();
    assert_eq!(c.json()["invocationSequenceNumber"], 0);
    assert!(c.json().get("multipleUnitInformation").is_none(), "{c:?}");
    let want = json!({"totalVolume": 5000, "uplinkVolume": 5000, "downlinkVolume": 5000});
    let u = n
        .update(
            &r,
            &smf(
                t + 1000,
                Some(json!([{"ratingGroup": RG_DATA, "uPFID": "upf-9", "requestedUnit": want,
                    "usedUnitContainer": [{"localSequenceNumber": 0,
                        "quotaManagementIndicator": "ONLINE_CHARGING",
                        "triggers": [{"triggerType": "QUOTA_EXHAUSTED", "triggerCategory": "IMMEDIATE_REPORT"}],
                        "triggerTimestamp": rfc3339(t + 1000),
                        "uplinkVolume": 1000, "downlinkVolume": 3000}]}])),
            ),
        )
        .await;
    assert_eq!(u.status, StatusCode::OK, "{u:?}");
    let m = u.mui(RG_DATA);
    assert_eq!(m["uPFID"], "upf-9", "{m}");
    assert_eq!(
        m["grantedUnit"],
        json!({"totalVolume": 5000, "uplinkVolume": 5000, "downlinkVolume": 5000}),
        "{m}"
    );
    assert!(m["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["triggerType"] == "QUOTA_EXHAUSTED"));
    assert!(m.get("finalUnitIndication").is_none(), "never an empty one");
    // A report with only downlink (uplink 0 omitted), then the release.
    let u = n
        .update(
            &r,
            &smf(
                t + 2000,
                Some(
                    json!([{"ratingGroup": RG_DATA, "uPFID": "upf-9", "requestedUnit": want,
                    "usedUnitContainer": [{"localSequenceNumber": 0, "downlinkVolume": 4000}]}]),
                ),
            ),
        )
        .await;
    assert_eq!(u.status, StatusCode::OK, "{u:?}");
    let rel = n
        .release(
            &r,
            &smf(
                t + 3000,
                Some(json!([{"ratingGroup": RG_DATA, "uPFID": "upf-9",
                    "usedUnitContainer": [{"localSequenceNumber": 0, "uplinkVolume": 500,
                        "triggers": [{"triggerType": "FINAL", "triggerCategory": "IMMEDIATE_REPORT"}]}]}])),
            ),
        )
        .await;
    assert_eq!(rel.status, StatusCode::NO_CONTENT, "{rel:?}");
    // 4000 + 4000 + 500 bytes on one reservation (the first 4000 were
    // reported before the group had a grant: charged on the reservation
    // that grant opened): one started MB, 10 cents.
    let b = balance(&n.client, supi).await;
    assert_money(&b, 9_990, 0);
    // Offline charging: charged, nothing granted, never refused.
    let c = n.create(&smf(t + 5000, None)).await;
    let r = c.reference();
    let u = n
        .update(
            &r,
            &smf(
                t + 6000,
                Some(json!([{"ratingGroup": RG_DATA, "requestedUnit": want,
                    "usedUnitContainer": [{"localSequenceNumber": 0,
                        "quotaManagementIndicator": "OFFLINE_CHARGING", "totalVolume": 2 * MB}]}])),
            ),
        )
        .await;
    assert_eq!(u.status, StatusCode::OK, "{u:?}");
    assert!(u.json().get("multipleUnitInformation").is_none(), "{u:?}");
    assert_money(&balance(&n.client, supi).await, 9_970, 0);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_4xx_is_problem_details() {
    let n = start(NchfSequence::Isn).await;
    let t = now_ms();
    create(&n.client, "imsi-4xx", 100).await;
    let ok = msg(Some("imsi-4xx"), 0, t, json!([ask(RG_DATA, MB)]));
    let url = n.url(1, "");
    // Not JSON: 415.
    n.send(false, &url, "text/plain", b"hello".to_vec())
        .await
        .problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE");
    // Malformed JSON, a missing IE, a wrong type: 400 naming the pointer.
    n.send(false, &url, "application/json", b"{\"a\":".to_vec())
        .await
        .problem(StatusCode::BAD_REQUEST, "MANDATORY_IE_INCORRECT");
    let mut missing = ok.clone();
    missing
        .as_object_mut()
        .unwrap()
        .remove("invocationSequenceNumber");
    let p = n
        .create(&missing)
        .await
        .problem(StatusCode::BAD_REQUEST, "MANDATORY_IE_MISSING");
    assert_eq!(
        p["invalidParams"][0]["param"], "/invocationSequenceNumber",
        "{p}"
    );
    let mut wrong = ok.clone();
    wrong["multipleUnitUsage"][0]["ratingGroup"] = json!("thirty-two");
    let p = n
        .create(&wrong)
        .await
        .problem(StatusCode::BAD_REQUEST, "MANDATORY_IE_INCORRECT");
    assert_eq!(
        p["invalidParams"][0]["param"], "/multipleUnitUsage/0/ratingGroup",
        "{p}"
    );
    let mut when = ok.clone();
    when["invocationTimeStamp"] = json!("yesterday");
    let p = n
        .create(&when)
        .await
        .problem(StatusCode::BAD_REQUEST, "MANDATORY_IE_INCORRECT");
    assert_eq!(
        p["invalidParams"][0]["param"], "/invocationTimeStamp",
        "{p}"
    );
    // Too large: 413.
    let mut big = ok.clone();
    big["padding"] = json!("x".repeat(300 << 10));
    n.create(&big)
        .await
        .problem(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");
    // Unknown subscriber, unknown or foreign reference: 404.
    let mut nobody = ok.clone();
    nobody
        .as_object_mut()
        .unwrap()
        .remove("subscriberIdentifier");
    n.create(&nobody)
        .await
        .problem(StatusCode::NOT_FOUND, "USER_UNKNOWN");
    n.update("not-a-ref", &ok)
        .await
        .problem(StatusCode::NOT_FOUND, "CONTEXT_NOT_FOUND");
    let r = n.create(&ok).await.reference();
    let (acct, _) = r.split_once('.').unwrap();
    n.release(&format!("{acct}.0123456789abcdef0123456789abcdef"), &ok)
        .await
        .problem(StatusCode::NOT_FOUND, "CONTEXT_NOT_FOUND");
    // Unknown path, wrong method.
    n.send(
        false,
        &n.url(1, "/x/y/z"),
        "application/json",
        b"{}".to_vec(),
    )
    .await
    .problem(StatusCode::NOT_FOUND, "RESOURCE_URI_STRUCTURE_NOT_FOUND");
    let get = http::Request::get(n.url(1, ""))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = n.h2.request(get).await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    // The same ISN with another request: 409; suspended: 403.
    n.update(&r, &msg(None, 0, t + 1, json!([used(RG_DATA, 1)])))
        .await
        .problem(StatusCode::CONFLICT, "INVOCATION_SEQUENCE_NUMBER_REUSED");
    n.client
        .set_account_state("imsi-4xx", AccountState::Closed)
        .await
        .unwrap();
    n.create(&msg(Some("imsi-4xx"), 0, t + 5, json!([])))
        .await
        .problem(StatusCode::FORBIDDEN, "END_USER_REQUEST_DENIED");
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_time_event_is_a_debit_once() {
    let n = start(NchfSequence::Isn).await;
    let t = now_ms();
    create(&n.client, "imsi-sms", 100).await;
    let mut ev = msg(
        Some("imsi-sms"),
        0,
        t,
        json!([{"ratingGroup": RG_SMS, "requestedUnit": {"serviceSpecificUnits": 2}}]),
    );
    ev["oneTimeEvent"] = json!(true);
    ev["oneTimeEventType"] = json!("IEC");
    let a = n.create(&ev).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    let m = a.mui(RG_SMS);
    assert_eq!(m["resultCode"], "SUCCESS", "{m}");
    assert_eq!(m["grantedUnit"]["serviceSpecificUnits"], 2);
    let b = n.create(&ev).await;
    assert_eq!(a.body, b.body);
    assert_money(&balance(&n.client, "imsi-sms").await, 50, 0);
    // Too dear: per rating group, nothing charged.
    ev["invocationSequenceNumber"] = json!(1);
    ev["multipleUnitUsage"][0]["requestedUnit"]["serviceSpecificUnits"] = json!(3);
    let c = n.create(&ev).await;
    assert_eq!(c.mui(RG_SMS)["resultCode"], "QUOTA_LIMIT_REACHED", "{c:?}");
    assert_money(&balance(&n.client, "imsi-sms").await, 50, 0);
    n.shutdown().await;
}

/// Sends `body` to `url` until it is answered other than 503 (what an SMF
/// does: retransmit), within 30 s.
async fn until_answered(
    h2: &HttpClient<HttpConnector, Full<Bytes>>,
    url: &str,
    body: &Value,
) -> (StatusCode, Bytes) {
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let req = http::Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
            .unwrap();
        let resp = h2.request(req).await.expect("HTTP exchange");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        if status != StatusCode::SERVICE_UNAVAILABLE {
            return (status, bytes);
        }
        assert!(
            std::time::Instant::now() < give_up,
            "still 503 after 30 s: {bytes:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_mid_update_settles_on_retry_without_a_double_charge() {
    let mut n = start(NchfSequence::Isn).await;
    let t = now_ms();
    // An account whose shard node 1 (the Nchf node the SMF talks to) does
    // not lead: its leader is killed while Updates are in flight.
    let supi = (0..1000)
        .map(|i| format!("imsi-kill-{i}"))
        .find(|a| n.cluster.deciding_leader(shard(a)).is_some_and(|l| l != 1))
        .expect("an account led elsewhere");
    let victim = n.cluster.deciding_leader(shard(&supi)).unwrap();
    create(&n.client, &supi, 10_000).await;
    const SESSIONS: u64 = 8;
    let mut refs = Vec::new();
    for i in 0..SESSIONS {
        let c = n
            .create(&msg(Some(&supi), 0, t + i, json!([ask(RG_DATA, MB)])))
            .await;
        refs.push(c.reference());
    }
    let mut tasks = Vec::new();
    for r in &refs {
        let h2 = n.h2.clone();
        let url = n.url(1, &format!("/{r}/update"));
        let body = msg(None, 1, t + 100, json!([used_ask(RG_DATA, MB, MB)]));
        tasks.push(tokio::spawn(async move {
            let first = until_answered(&h2, &url, &body).await;
            let again = until_answered(&h2, &url, &body).await;
            (first, again)
        }));
    }
    n.cluster.kill(victim).await;
    for t in tasks {
        let ((s1, b1), (s2, b2)) = t.await.unwrap();
        assert_eq!(s1, StatusCode::OK, "{b1:?}");
        assert_eq!((s2, b2), (s1, b1), "a retransmission answers the same");
    }
    // 1 MB charged once per session, 1 MB held again by each.
    let b = balance(&n.client, &supi).await;
    assert_money(&b, 10_000 - 10 * SESSIONS as i64, 10 * SESSIONS as i64);
    for r in &refs {
        let rel = n
            .release(r, &msg(None, 2, t + 200, json!([used(RG_DATA, 0)])))
            .await;
        assert_eq!(rel.status, StatusCode::NO_CONTENT, "{rel:?}");
    }
    assert_money(
        &balance(&n.client, &supi).await,
        10_000 - 10 * SESSIONS as i64,
        0,
    );
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_checked_as_on_grpc() {
    const AUD: &str = "charging-test";
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = charging_node::frontdoor::auth::generate_es256().unwrap();
    let pub_file = dir.path().join("jwt.pub.pem");
    let priv_file = dir.path().join("jwt.pem");
    std::fs::write(&pub_file, public).unwrap();
    std::fs::write(&priv_file, &private).unwrap();
    let cfg = AuthConfig {
        enabled: true,
        keys: vec![AuthKey {
            file: pub_file,
            kid: None,
        }],
        audience: vec![AUD.into()],
        node_key: Some(AuthKey {
            file: priv_file,
            kid: None,
        }),
        ..AuthConfig::default()
    };
    let signer = Signer::from_pem(private.as_bytes(), None).unwrap();
    let token = |scope: String| {
        let spec = TokenSpec {
            subject: "smf-1".into(),
            audience: vec![AUD.into()],
            issuer: None,
            scope,
            ttl: Duration::from_secs(600),
            kid: None,
        };
        signer.sign(&spec, now_ms() / 1000).unwrap()
    };
    let svc = "nchf-convergedcharging";
    let admin = token(TokenSpec::for_roles(svc, &[Role::Admin]));
    let n = start_auth(NchfSequence::Isn, Some((cfg, admin))).await;
    let t = now_ms();
    let accounts = account_per_shard("imsi-tok");
    for a in &accounts {
        create(&n.client, a, 1000).await;
    }
    let body = |a: &str| msg(Some(a), 0, t, json!([ask(RG_DATA, MB)]));
    // No token, a token without the service scope: 401 with a challenge.
    let p = n.post_with(1, "", &body(&accounts[0]), None).await;
    p.problem(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert!(p.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let no_svc = token(Role::Charging.scope());
    n.post_with(1, "", &body(&accounts[0]), Some(&no_svc))
        .await
        .problem(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    // The service scope without the charging role: 403, insufficient scope.
    let billing = token(TokenSpec::for_roles(svc, &[Role::Billing]));
    let p = n
        .post_with(1, "", &body(&accounts[0]), Some(&billing))
        .await;
    p.problem(StatusCode::FORBIDDEN, "FORBIDDEN");
    assert!(p.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    assert_money(&balance(&n.client, &accounts[0]).await, 1000, 0);
    // The charging role: served on every shard (the token goes along with
    // what node 1 forwards, and the owner checks it again).
    let smf = token(TokenSpec::for_roles(svc, &[Role::Charging]));
    for a in &accounts {
        let c = n.post_with(1, "", &body(a), Some(&smf)).await;
        let r = c.reference();
        let u = n
            .post_with(
                1,
                &format!("/{r}/release"),
                &msg(None, 1, t + 1, json!([used(RG_DATA, MB)])),
                Some(&smf),
            )
            .await;
        assert_eq!(u.status, StatusCode::NO_CONTENT, "{u:?}");
        assert_money(&balance(&n.client, a).await, 990, 0);
    }
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_tls_it_serves_h2_by_alpn() {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let cluster = start_cluster(ClusterOptions {
        tls: Some(ca()),
        nchf_ports: Some(Vec::new()),
        ..ClusterOptions::default()
    })
    .await;
    let client = connect(cluster.public_url(1)).await;
    set_standard_tariffs(&client).await;
    create(&client, "imsi-tls", 1000).await;
    let url = cluster.nchf_url(1).unwrap();
    let addr = url.strip_prefix("https://").expect("https under TLS");
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca().cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("HTTP/2 over TLS");
    tokio::spawn(conn);
    let body = msg(Some("imsi-tls"), 0, now_ms(), json!([ask(RG_DATA, MB)]));
    let req = http::Request::post(format!("{url}{ROOT}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(loc.starts_with("https://"), "{loc}");
    assert_money(&balance(&client, "imsi-tls").await, 1000, 10);
    // Plaintext to the TLS port: no answer.
    let h2 = HttpClient::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let plain = http::Request::post(format!("http://{addr}{ROOT}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
        .unwrap();
    assert!(h2.request(plain).await.is_err());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_is_503_with_retry_after_and_changes_nothing() {
    // One request in a node at once: a burst of Creates meets the limit.
    let tweak: ConfigTweak = Arc::new(|c| c.front_door.max_inflight_requests = 1);
    let cluster = start_cluster(ClusterOptions {
        tweak: Some(tweak),
        nchf_ports: Some(Vec::new()),
        ..ClusterOptions::default()
    })
    .await;
    let client = Client::connect_with_config(
        cluster.public_url(1),
        charging_client::ClientConfig {
            tls: None,
            ..client_config()
        },
    )
    .await
    .unwrap();
    set_standard_tariffs(&client).await;
    create(&client, "imsi-busy", 100_000).await;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let h2: HttpClient<HttpConnector, Full<Bytes>> = HttpClient::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let url = format!("{}{ROOT}", cluster.nchf_url(1).unwrap());
    let t = now_ms();
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let h2 = h2.clone();
        let url = url.clone();
        let body = msg(Some("imsi-busy"), 0, t + i, json!([ask(RG_DATA, MB)]));
        tasks.push(tokio::spawn(async move {
            let req = http::Request::post(&url)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
                .unwrap();
            let resp = h2.request(req).await.unwrap();
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            Got {
                status,
                headers,
                body,
            }
        }));
    }
    let (mut created, mut refused) = (0i64, 0);
    for t in tasks {
        let g = t.await.unwrap();
        if g.status == StatusCode::CREATED {
            created += 1;
        } else {
            g.problem(StatusCode::SERVICE_UNAVAILABLE, "NF_CONGESTION");
            assert_eq!(g.headers["retry-after"], "1", "{g:?}");
            refused += 1;
        }
    }
    assert!(refused > 0, "64 at once against a limit of 1: some refused");
    // Exactly the accepted ones hold quota (10 cents each).
    let b = balance(&client, "imsi-busy").await;
    assert_money(&b, 100_000, 10 * created);
    cluster.shutdown().await;
}
