//! JSON views of the response types, for `chargectl --json` and for tools.
//!
//! Field names follow the proto field names. Enums are rendered as their short
//! names (`"result": "OK"`, `"kind": "BYTES"`), with the numeric result code
//! alongside as `result_code`. 64-bit integers are JSON numbers (exact: serde_json
//! keeps u64/i64 as integers), not the strings of the canonical proto3 mapping.

use serde_json::{json, Map, Value};

use crate::proto::{
    AddBucketResponse, BalanceResponse, Bucket, CommitResponse, CreateAccountResponse,
    DebitResponse, GetTariffsResponse, Grant, NodeStatus, Price, RefundResponse, ReleaseResponse,
    ReserveResponse, SetAccountStateResponse, SetTariffResponse, ShardStatus, StatusResponse,
    Tariff, TerminateResponse, TopUpResponse, Units, UpdateResponse,
};
use crate::{account_state_name, bucket_kind_name, result_name};

/// A JSON rendering of a message.
pub trait ToJson {
    /// The message as a JSON value.
    fn to_json(&self) -> Value;
}

/// `{"result": "OK", "result_code": 1}` merged with the given fields.
fn with_result(code: i32, fields: Value) -> Value {
    let mut m = Map::new();
    m.insert("result".into(), json!(result_name(code)));
    m.insert("result_code".into(), json!(code));
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    Value::Object(m)
}

fn opt_units(u: &Option<Units>) -> Value {
    u.unwrap_or_default().to_json()
}

impl ToJson for Units {
    fn to_json(&self) -> Value {
        json!({
            "time_s": self.time_s,
            "volume_bytes": self.volume_bytes,
            "service_units": self.service_units,
        })
    }
}

impl ToJson for CreateAccountResponse {
    fn to_json(&self) -> Value {
        with_result(self.result, json!({ "version": self.version }))
    }
}

impl ToJson for AddBucketResponse {
    fn to_json(&self) -> Value {
        with_result(self.result, json!({ "bucket_id": self.bucket_id }))
    }
}

impl ToJson for TopUpResponse {
    fn to_json(&self) -> Value {
        with_result(self.result, json!({ "balance": self.balance }))
    }
}

impl ToJson for ReserveResponse {
    fn to_json(&self) -> Value {
        with_result(
            self.result,
            json!({
                "reservation_id": self.reservation_id,
                "granted": opt_units(&self.granted),
                "final_units": self.final_units,
                "expires_at_ms": self.expires_at_ms,
            }),
        )
    }
}

impl ToJson for Grant {
    fn to_json(&self) -> Value {
        json!({
            "rating_group": self.rating_group,
            "result": result_name(self.result),
            "result_code": self.result,
            "reservation_id": self.reservation_id,
            "granted": opt_units(&self.granted),
            "final_units": self.final_units,
            "expires_at_ms": self.expires_at_ms,
        })
    }
}

impl ToJson for UpdateResponse {
    fn to_json(&self) -> Value {
        with_result(
            self.result,
            json!({
                "grants": self.grants.iter().map(ToJson::to_json).collect::<Vec<_>>(),
                "charged": self.charged,
                "debt": self.debt,
            }),
        )
    }
}

impl ToJson for TerminateResponse {
    fn to_json(&self) -> Value {
        with_result(
            self.result,
            json!({ "charged": self.charged, "debt": self.debt }),
        )
    }
}

impl ToJson for CommitResponse {
    fn to_json(&self) -> Value {
        with_result(
            self.result,
            json!({ "charged": self.charged, "debt": self.debt }),
        )
    }
}

impl ToJson for ReleaseResponse {
    fn to_json(&self) -> Value {
        with_result(self.result, json!({}))
    }
}

impl ToJson for RefundResponse {
    fn to_json(&self) -> Value {
        with_result(
            self.result,
            json!({ "refunded_total": self.refunded_total }),
        )
    }
}

impl ToJson for DebitResponse {
    fn to_json(&self) -> Value {
        with_result(self.result, json!({ "charged": self.charged }))
    }
}

impl ToJson for Bucket {
    fn to_json(&self) -> Value {
        json!({
            "bucket_id": self.bucket_id,
            "kind": bucket_kind_name(self.kind),
            "balance": self.balance,
            "reserved": self.reserved,
            "valid_from_ms": self.valid_from_ms,
            "valid_until_ms": self.valid_until_ms,
            "priority": self.priority,
            "rating_groups": self.rating_groups,
        })
    }
}

impl ToJson for BalanceResponse {
    fn to_json(&self) -> Value {
        with_result(
            self.result,
            json!({
                "currency": self.currency,
                "state": account_state_name(self.state),
                "version": self.version,
                "credit_limit": self.credit_limit,
                "debt": self.debt,
                "available": self.available,
                "buckets": self.buckets.iter().map(ToJson::to_json).collect::<Vec<_>>(),
                "open_sessions": self.open_sessions,
                "open_reservations": self.open_reservations,
            }),
        )
    }
}

impl ToJson for SetAccountStateResponse {
    fn to_json(&self) -> Value {
        with_result(self.result, json!({}))
    }
}

impl ToJson for Price {
    fn to_json(&self) -> Value {
        json!({
            "unit": bucket_kind_name(self.unit),
            "increment": self.increment,
            "nano_per_increment": self.nano_per_increment,
        })
    }
}

impl ToJson for Tariff {
    fn to_json(&self) -> Value {
        json!({
            "rating_group": self.rating_group,
            "version": self.version,
            "prices": self.prices.iter().map(ToJson::to_json).collect::<Vec<_>>(),
        })
    }
}

impl ToJson for SetTariffResponse {
    fn to_json(&self) -> Value {
        with_result(self.result, json!({ "version": self.version }))
    }
}

impl ToJson for GetTariffsResponse {
    fn to_json(&self) -> Value {
        json!({ "tariffs": self.tariffs.iter().map(ToJson::to_json).collect::<Vec<_>>() })
    }
}

impl ToJson for NodeStatus {
    fn to_json(&self) -> Value {
        json!({
            "node_id": self.node_id,
            "public_addr": self.public_addr,
            "internal_addr": self.internal_addr,
            "reachable": self.reachable,
            "draining": self.draining,
            "replicas": self.replicas,
            "leaders": self.leaders,
        })
    }
}

impl ToJson for ShardStatus {
    fn to_json(&self) -> Value {
        // JSON object keys are strings; sort by follower id for stable output.
        let mut lag: Vec<(&u64, &u64)> = self.lag.iter().collect();
        lag.sort();
        let lag: Map<String, Value> = lag
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        json!({
            "shard_id": self.shard_id,
            "leader": self.leader,
            "term": self.term,
            "applied_index": self.applied_index,
            "voters": self.voters,
            "accounts": self.accounts,
            "lag": lag,
            "replica": self.replica,
            "joint": self.joint,
            "learner_replicas": self.learner_replicas,
            "intended": self.intended,
            // Hex: a u64 is past JSON's exact integers.
            "state_hash": self.state_hash.map(|h| format!("{h:016x}")),
            "state_index": self.state_index,
        })
    }
}

impl ToJson for charging_proto::v1::NodeChangeResponse {
    fn to_json(&self) -> Value {
        json!({ "map_version": self.map_version })
    }
}

impl ToJson for StatusResponse {
    fn to_json(&self) -> Value {
        json!({
            "node_id": self.node_id,
            "shards": self.shards,
            "map_version": self.map_version,
            "meta_leader": self.meta_leader,
            "moves_in_progress": self.moves_in_progress,
            "moves_total": self.moves_total,
            "nodes": self.nodes.iter().map(ToJson::to_json).collect::<Vec<_>>(),
            "shard_status": self.shard_status.iter().map(ToJson::to_json).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_json() {
        let r = ReserveResponse {
            result: 1,
            reservation_id: u64::MAX,
            granted: Some(Units {
                time_s: 0,
                volume_bytes: 10_000_000,
                service_units: 0,
            }),
            final_units: true,
            expires_at_ms: 1_700_000_000_000,
        };
        let v = r.to_json();
        assert_eq!(v["result"], "OK");
        assert_eq!(v["result_code"], 1);
        assert_eq!(v["reservation_id"].as_u64(), Some(u64::MAX));
        assert_eq!(v["granted"]["volume_bytes"], 10_000_000);
        assert_eq!(v["final_units"], true);
    }

    #[test]
    fn balance_and_status_json() {
        let b = BalanceResponse {
            result: 8,
            state: 2,
            buckets: vec![Bucket {
                bucket_id: 1,
                kind: 1,
                balance: -5,
                rating_groups: vec![32],
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = b.to_json();
        assert_eq!(v["result"], "INSUFFICIENT_BALANCE");
        assert_eq!(v["state"], "SUSPENDED");
        assert_eq!(v["buckets"][0]["kind"], "MONEY");
        assert_eq!(v["buckets"][0]["balance"], -5);
        let s = StatusResponse {
            node_id: 1,
            shards: 1,
            nodes: vec![],
            shard_status: vec![ShardStatus {
                shard_id: 0,
                leader: 1,
                lag: [(2, 0), (3, 7)].into_iter().collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = s.to_json();
        assert_eq!(v["shard_status"][0]["lag"]["3"], 7);
    }
}
