//! The admin listener: with one, the calls that change the cluster
//! (AddNode, DrainNode, RemoveNode, DropReplica) are refused on the public
//! port from anyone but a node, and served on the admin port, which takes
//! only clients with a certificate from the CA. Nodes still make those
//! calls of each other on the public port (a joiner's AddNode, the
//! placement driver's DropReplica): a node joins and gets replicas.
use crate::support::*;
use charging_client::proto::admin_client::AdminClient;
use charging_client::proto::{AddNodeRequest, DropReplicaRequest, StatusRequest};
use charging_node::cluster::ClusterOptions;
use charging_node::tls::CLUSTER_NAME;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// A channel to `url` trusting the cluster's CA, with a client certificate
/// if `cert` is set; `None` when the connection is refused.
async fn dial(url: &str, cert: bool) -> Option<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca().cert_pem))
        .domain_name(CLUSTER_NAME);
    if cert {
        let c = ca().client_cert("ops").unwrap();
        tls = tls.identity(Identity::from_pem(c.cert_pem, c.key_pem));
    }
    Endpoint::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()
}

/// The codes of AddNode (an invalid id: the handler refuses it, so a code
/// other than PERMISSION_DENIED shows the call got there and nothing
/// changes) and DropReplica, and whether Status is served.
async fn probe(ch: Channel) -> (Code, Code, bool) {
    let mut c = AdminClient::new(ch);
    let add = c
        .add_node(AddNodeRequest {
            node_id: 0,
            ..Default::default()
        })
        .await
        .err()
        .map_or(Code::Ok, |s| s.code());
    let drop = c
        .drop_replica(DropReplicaRequest {
            shard_id: 0,
            replica: 1,
        })
        .await
        .err()
        .map_or(Code::Ok, |s| s.code());
    let status = c.status(StatusRequest::default()).await.is_ok();
    (add, drop, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_changes_go_through_the_admin_listener_only() {
    let mut cluster = start_cluster(ClusterOptions {
        tls: Some(ca()),
        admin_listeners: true,
        ..ClusterOptions::default()
    })
    .await;
    let public = cluster.public_url(1);
    let admin = cluster.admin_url(1).expect("an admin listener");

    // Public port, a client with or without a certificate: cluster changes
    // refused before their handler, reads served.
    for cert in [false, true] {
        let ch = dial(&public, cert).await.expect("public port connects");
        let (add, drop, status) = probe(ch).await;
        assert_eq!(add, Code::PermissionDenied, "public AddNode (cert {cert})");
        assert_eq!(
            drop,
            Code::PermissionDenied,
            "public DropReplica (cert {cert})"
        );
        assert!(status, "public Status (cert {cert})");
    }

    // Admin port without a client certificate: no service at all.
    let refused = match dial(&admin, false).await {
        None => true,
        Some(ch) => !probe(ch).await.2,
    };
    assert!(
        refused,
        "the admin port must refuse a client without a certificate"
    );

    // Admin port with one: the calls reach their handlers (an invalid node
    // id is INVALID_ARGUMENT; a replica not hosted is not dropped).
    let ch = dial(&admin, true).await.expect("admin port connects");
    let (add, drop, status) = probe(ch).await;
    assert_eq!(
        add,
        Code::InvalidArgument,
        "admin AddNode reaches its handler"
    );
    assert_eq!(drop, Code::Ok, "admin DropReplica reaches its handler");
    assert!(status, "admin Status");
    let ch = dial(&public, false).await.expect("public port connects");
    let nodes = AdminClient::new(ch)
        .status(StatusRequest::default())
        .await
        .expect("status")
        .into_inner()
        .nodes
        .len();
    assert_eq!(nodes, 3, "nothing changed");

    // Nodes make cluster changes of each other on the public port: a node
    // joins and the placement driver moves replicas onto it.
    cluster.add_node(4, 2).await.expect("node 4 starts");
    poll(
        Duration::from_secs(60),
        "node 4 joins and hosts replicas",
        || {
            let ok = cluster.nodes[&1]
                .front_door
                .map()
                .is_some_and(|m| m.nodes.contains_key(&4))
                && !cluster.nodes[&4].shards().is_empty();
            async move { ok.then_some(()) }
        },
    )
    .await;
    cluster.shutdown().await;
}

/// Under TLS with tokens off and no admin listener, no caller can prove it
/// is an operator: the public port refuses cluster changes from anyone but
/// a node, and still serves reads. (With tokens on, an admin-role token may
/// make them there: `t95_auth`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_or_an_admin_listener_only_nodes_change_the_cluster() {
    let cluster = start_cluster(ClusterOptions {
        tls: Some(ca()),
        ..ClusterOptions::default()
    })
    .await;
    let public = cluster.public_url(1);
    for cert in [false, true] {
        let ch = dial(&public, cert).await.expect("public port connects");
        let (add, drop, status) = probe(ch).await;
        assert_eq!(add, Code::PermissionDenied, "public AddNode (cert {cert})");
        assert_eq!(
            drop,
            Code::PermissionDenied,
            "public DropReplica (cert {cert})"
        );
        assert!(status, "public Status (cert {cert})");
    }
    cluster.shutdown().await;
}
