//! The subset of TS 32.291 (Nchf_ConvergedCharging v3.1.6) and TS 29.571
//! types the producer reads and writes, by hand (generated code is 40k
//! lines and loses the enum values; see issue 18).
//!
//! Requests: unknown fields are ignored (the official YAML has ~300 types;
//! what is not modelled here is not read). The YAML's "extensible" enums
//! (anyOf [enum, string]) take any string: the known values, else `Other`.
//! Responses: absent optional fields are left out, never `null`.
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An extensible 3GPP enumeration: the known values, and any other string.
macro_rules! extensible {
    ($(#[$doc:meta])* $name:ident { $($v:ident = $s:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum $name {
            $($v,)*
            Other(String),
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$v => $s,)*
                    Self::Other(s) => s,
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $($s => Self::$v,)*
                    other => Self::Other(other.to_string()),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                Ok(Self::from(s.as_ref()))
            }
        }
    };
}

extensible!(
    /// TS 32.291 NodeFunctionality (the part the producer names).
    NodeFunctionality {
        Amf = "AMF",
        Smf = "SMF",
        Sms = "SMS",
        Smsf = "SMSF",
        PgwCSmf = "PGW_C_SMF",
        ISmf = "I_SMF",
        VSmf = "V_SMF",
        ImsNode = "IMS_Node",
        Nef = "NEF",
    }
);

extensible!(
    /// TS 32.291 QuotaManagementIndicator.
    QuotaManagementIndicator {
        OnlineCharging = "ONLINE_CHARGING",
        OfflineCharging = "OFFLINE_CHARGING",
        QuotaManagementSuspended = "QUOTA_MANAGEMENT_SUSPENDED",
    }
);

extensible!(
    /// TS 32.291 ResultCode (per rating group).
    ResultCode {
        Success = "SUCCESS",
        EndUserServiceDenied = "END_USER_SERVICE_DENIED",
        QuotaManagementNotApplicable = "QUOTA_MANAGEMENT_NOT_APPLICABLE",
        QuotaLimitReached = "QUOTA_LIMIT_REACHED",
        EndUserServiceRejected = "END_USER_SERVICE_REJECTED",
        UserUnknown = "USER_UNKNOWN",
        RatingFailed = "RATING_FAILED",
        QuotaManagement = "QUOTA_MANAGEMENT",
    }
);

extensible!(
    /// TS 32.291 TriggerType (the values the producer reads or sets).
    TriggerType {
        QuotaThreshold = "QUOTA_THRESHOLD",
        Qht = "QHT",
        Final = "FINAL",
        QuotaExhausted = "QUOTA_EXHAUSTED",
        ValidityTime = "VALIDITY_TIME",
        OtherQuotaType = "OTHER_QUOTA_TYPE",
        ForcedReauthorisation = "FORCED_REAUTHORISATION",
        AbnormalRelease = "ABNORMAL_RELEASE",
    }
);

extensible!(
    /// TS 32.291 TriggerCategory.
    TriggerCategory {
        ImmediateReport = "IMMEDIATE_REPORT",
        DeferredReport = "DEFERRED_REPORT",
    }
);

extensible!(
    /// TS 32.291 FinalUnitAction.
    FinalUnitAction {
        Terminate = "TERMINATE",
        Redirect = "REDIRECT",
        RestrictAccess = "RESTRICT_ACCESS",
    }
);

extensible!(
    /// TS 32.291 oneTimeEventType.
    OneTimeEventType {
        Iec = "IEC",
        Pec = "PEC",
    }
);

/// ChargingDataRequest (the body of Create, Update and Release).
#[derive(Clone, Debug, Deserialize)]
pub struct ChargingDataRequest {
    /// Supi: the account.
    #[serde(rename = "subscriberIdentifier", default)]
    pub subscriber_identifier: Option<String>,
    #[serde(rename = "chargingId", default)]
    pub charging_id: Option<u32>,
    #[serde(rename = "nfConsumerIdentification")]
    pub nf_consumer_identification: NfIdentification,
    /// DateTime (RFC 3339).
    #[serde(rename = "invocationTimeStamp")]
    pub invocation_time_stamp: String,
    #[serde(rename = "invocationSequenceNumber")]
    pub invocation_sequence_number: u32,
    #[serde(rename = "retransmissionIndicator", default)]
    pub retransmission_indicator: Option<bool>,
    #[serde(rename = "oneTimeEvent", default)]
    pub one_time_event: Option<bool>,
    #[serde(rename = "oneTimeEventType", default)]
    pub one_time_event_type: Option<OneTimeEventType>,
    #[serde(rename = "notifyUri", default)]
    pub notify_uri: Option<String>,
    #[serde(rename = "multipleUnitUsage", default)]
    pub multiple_unit_usage: Option<Vec<MultipleUnitUsage>>,
    #[serde(default)]
    pub triggers: Option<Vec<Trigger>>,
    #[serde(rename = "pDUSessionChargingInformation", default)]
    pub pdu_session_charging_information: Option<PduSessionChargingInformation>,
}

/// TS 32.291 NFIdentification.
#[derive(Clone, Debug, Deserialize)]
pub struct NfIdentification {
    /// NfInstanceId (a UUID by the schema; older SMFs send a name).
    #[serde(rename = "nFName", default)]
    pub nf_name: Option<String>,
    #[serde(rename = "nodeFunctionality")]
    pub node_functionality: NodeFunctionality,
}

/// TS 32.291 PDUSessionChargingInformation (what identifies the session).
#[derive(Clone, Debug, Deserialize)]
pub struct PduSessionChargingInformation {
    #[serde(rename = "chargingId", default)]
    pub charging_id: Option<u32>,
    #[serde(rename = "pduSessionInformation", default)]
    pub pdu_session_information: Option<PduSessionInformation>,
}

/// TS 32.291 PDUSessionInformation (its PDU session id).
#[derive(Clone, Debug, Deserialize)]
pub struct PduSessionInformation {
    #[serde(rename = "pduSessionID", default)]
    pub pdu_session_id: Option<u8>,
}

/// TS 32.291 MultipleUnitUsage.
#[derive(Clone, Debug, Deserialize)]
pub struct MultipleUnitUsage {
    #[serde(rename = "ratingGroup")]
    pub rating_group: u32,
    #[serde(rename = "requestedUnit", default)]
    pub requested_unit: Option<RequestedUnit>,
    #[serde(rename = "usedUnitContainer", default)]
    pub used_unit_container: Option<Vec<UsedUnitContainer>>,
    #[serde(rename = "uPFID", default)]
    pub upf_id: Option<String>,
}

/// TS 32.291 RequestedUnit.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RequestedUnit {
    #[serde(default)]
    pub time: Option<u32>,
    #[serde(rename = "totalVolume", default)]
    pub total_volume: Option<u64>,
    #[serde(rename = "uplinkVolume", default)]
    pub uplink_volume: Option<u64>,
    #[serde(rename = "downlinkVolume", default)]
    pub downlink_volume: Option<u64>,
    #[serde(rename = "serviceSpecificUnits", default)]
    pub service_specific_units: Option<u64>,
}

/// TS 32.291 UsedUnitContainer.
#[derive(Clone, Debug, Deserialize)]
pub struct UsedUnitContainer {
    #[serde(rename = "quotaManagementIndicator", default)]
    pub quota_management_indicator: Option<QuotaManagementIndicator>,
    #[serde(default)]
    pub triggers: Option<Vec<Trigger>>,
    #[serde(default)]
    pub time: Option<u32>,
    #[serde(rename = "totalVolume", default)]
    pub total_volume: Option<u64>,
    #[serde(rename = "uplinkVolume", default)]
    pub uplink_volume: Option<u64>,
    #[serde(rename = "downlinkVolume", default)]
    pub downlink_volume: Option<u64>,
    #[serde(rename = "serviceSpecificUnits", default)]
    pub service_specific_units: Option<u64>,
}

/// TS 32.291 Trigger (request and response).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Trigger {
    #[serde(
        rename = "triggerType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub trigger_type: Option<TriggerType>,
    #[serde(rename = "triggerCategory")]
    pub trigger_category: TriggerCategory,
}

/// ChargingDataResponse.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChargingDataResponse {
    #[serde(rename = "invocationTimeStamp")]
    pub invocation_time_stamp: String,
    #[serde(rename = "invocationSequenceNumber")]
    pub invocation_sequence_number: u32,
    #[serde(
        rename = "multipleUnitInformation",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub multiple_unit_information: Vec<MultipleUnitInformation>,
}

/// TS 32.291 MultipleUnitInformation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MultipleUnitInformation {
    #[serde(rename = "resultCode")]
    pub result_code: ResultCode,
    #[serde(rename = "ratingGroup")]
    pub rating_group: u32,
    #[serde(
        rename = "grantedUnit",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub granted_unit: Option<GrantedUnit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Trigger>,
    /// DurationSec.
    #[serde(
        rename = "validityTime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub validity_time: Option<u64>,
    #[serde(
        rename = "finalUnitIndication",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub final_unit_indication: Option<FinalUnitIndication>,
    #[serde(
        rename = "timeQuotaThreshold",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub time_quota_threshold: Option<u64>,
    #[serde(
        rename = "volumeQuotaThreshold",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub volume_quota_threshold: Option<u64>,
    #[serde(
        rename = "unitQuotaThreshold",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub unit_quota_threshold: Option<u64>,
    #[serde(rename = "uPFID", default, skip_serializing_if = "Option::is_none")]
    pub upf_id: Option<String>,
}

/// TS 32.291 GrantedUnit.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantedUnit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
    #[serde(
        rename = "totalVolume",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub total_volume: Option<u64>,
    #[serde(
        rename = "uplinkVolume",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub uplink_volume: Option<u64>,
    #[serde(
        rename = "downlinkVolume",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub downlink_volume: Option<u64>,
    #[serde(
        rename = "serviceSpecificUnits",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub service_specific_units: Option<u64>,
}

/// TS 32.291 FinalUnitIndication (never sent empty).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FinalUnitIndication {
    #[serde(rename = "finalUnitAction")]
    pub final_unit_action: FinalUnitAction,
}

/// TS 29.571 ProblemDetails (every 4xx/5xx body, `application/problem+json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProblemDetails {
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub cause: String,
    #[serde(
        rename = "invalidParams",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub invalid_params: Vec<InvalidParam>,
}

/// TS 29.571 InvalidParam: a JSON pointer and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InvalidParam {
    pub param: String,
    pub reason: String,
}
