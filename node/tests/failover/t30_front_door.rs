//! What standard tooling sees: gRPC health, server reflection, and the
//! Prometheus endpoint with per-node series.
use super::*;
use charging_client::proto::ResultCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_metrics_are_served() {
    charging_node::metrics_http::recorder();
    let c = cluster().await;
    let url = c.public_url(2);

    // grpc.health.v1
    let ch = tonic::transport::Endpoint::from_shared(url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "charging.v1.Charging".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Server reflection lists our services.
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let msg = resp.message().await.expect("stream").expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "charging.v1.Charging",
        "charging.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }

    // A request through node 2 shows up in /metrics with node 2's label
    // (a client that calls node 2 itself, not the shard leader).
    let cl = client(url).await.with_config(ClientConfig {
        deadline_ms: 3_000,
        max_retries: 10,
        direct_to_leader: false,
        ..Default::default()
    });
    let r = settle(|| cl.create_account("metrics-1", "EUR", 10, 0, vec![])).await;
    assert_eq!(r.result, ResultCode::Ok as i32);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(charging_node::metrics_http::serve(listener, rx));
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("charging_requests_total")
                && l.contains("node=\"2\"")
                && l.contains("op=\"create_account\"")),
        "no create_account series for node 2 in:\n{body}"
    );
    assert!(
        body.contains("charging_decision_seconds"),
        "decision time missing"
    );
    let _ = stop.send(true);
    c.shutdown().await;
}
