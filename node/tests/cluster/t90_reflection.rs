//! Server reflection on the public port: both protocol versions answer
//! (grpcurl speaks v1; Python's grpcio-reflection and older tools
//! v1alpha), and they list the public services only, never the internal
//! Raft transport.
use crate::support::*;
use tonic_reflection::pb::{v1, v1alpha};

const PUBLIC: [&str; 5] = [
    "charging.v1.Admin",
    "charging.v1.Charging",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_public_api_in_both_versions() {
    let env = start().await;
    let channel = env.client.channel();

    let mut c = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = c
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("v1 reflection answers")
        .into_inner();
    let listed = match answers
        .message()
        .await
        .expect("a reply")
        .expect("one")
        .message_response
    {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) => l,
        other => panic!("v1: {other:?}"),
    };
    let mut names: Vec<String> = listed.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, PUBLIC, "v1 lists the public services only");

    let mut c = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = c
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("v1alpha reflection answers")
        .into_inner();
    let listed = match answers
        .message()
        .await
        .expect("a reply")
        .expect("one")
        .message_response
    {
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) => l,
        other => panic!("v1alpha: {other:?}"),
    };
    let mut names: Vec<String> = listed.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, PUBLIC, "v1alpha lists the same");
    env.shutdown().await;
}
