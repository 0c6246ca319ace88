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

/// The services one reflection version lists (the two versions' generated
/// types differ only in their module).
macro_rules! listed {
    ($v:ident, $channel:expr) => {{
        let mut c = $v::server_reflection_client::ServerReflectionClient::new($channel);
        let req = $v::ServerReflectionRequest {
            host: String::new(),
            message_request: Some($v::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut answers = c
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .expect(concat!(stringify!($v), " reflection answers"))
            .into_inner();
        let reply = answers.message().await.expect("a reply").expect("one");
        let listed = match reply.message_response {
            Some($v::server_reflection_response::MessageResponse::ListServicesResponse(l)) => l,
            other => panic!("{}: {other:?}", stringify!($v)),
        };
        let mut names: Vec<String> = listed.service.into_iter().map(|s| s.name).collect();
        names.sort();
        names
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_public_api_in_both_versions() {
    let env = start().await;
    let channel = env.client.channel();
    assert_eq!(
        listed!(v1, channel.clone()),
        PUBLIC,
        "v1 lists the public services only"
    );
    assert_eq!(listed!(v1alpha, channel), PUBLIC, "v1alpha lists the same");
    env.shutdown().await;
}
