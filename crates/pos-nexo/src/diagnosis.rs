//! `DiagnosisRequest` / `DiagnosisResponse`: the lane's health check.

use serde::{Deserialize, Serialize};

use crate::codes::GlobalStatus;
use crate::message::Response;

/// `DiagnosisRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DiagnosisRequest {
    /// Also check the acquirer hosts.
    #[serde(rename = "HostDiagnosisFlag", default, skip_serializing_if = "Option::is_none")]
    pub host_diagnosis_flag: Option<bool>,
    #[serde(rename = "POIID", default, skip_serializing_if = "Option::is_none")]
    pub poi_id: Option<String>,
}

/// `DiagnosisResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagnosisResponse {
    #[serde(rename = "Response")]
    pub response: Response,
    #[serde(rename = "POIStatus", default, skip_serializing_if = "Option::is_none")]
    pub poi_status: Option<PoiStatus>,
    #[serde(rename = "HostStatus", default, skip_serializing_if = "Vec::is_empty")]
    pub host_status: Vec<HostStatus>,
    #[serde(rename = "LoggedSaleID", default, skip_serializing_if = "Vec::is_empty")]
    pub logged_sale_id: Vec<String>,
}

/// `POIStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoiStatus {
    #[serde(rename = "GlobalStatus")]
    pub global_status: GlobalStatus,
    #[serde(rename = "CommunicationOKFlag", default, skip_serializing_if = "Option::is_none")]
    pub communication_ok_flag: Option<bool>,
    #[serde(rename = "PrinterStatus", default, skip_serializing_if = "Option::is_none")]
    pub printer_status: Option<String>,
    #[serde(rename = "CardReaderOKFlag", default, skip_serializing_if = "Option::is_none")]
    pub card_reader_ok_flag: Option<bool>,
}

/// `HostStatus`: whether an acquirer host is reachable.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostStatus {
    #[serde(rename = "AcquirerID", default)]
    pub acquirer_id: String,
    #[serde(rename = "IsReachableFlag", default, skip_serializing_if = "Option::is_none")]
    pub is_reachable_flag: Option<bool>,
}
