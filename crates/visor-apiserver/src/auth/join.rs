//! `POST /join`: a host's agent trades a join token for its credentials.
//!
//! Request: `Authorization: Bearer ID.SECRET` and a JSON body
//! `{"nodeName": "...", "clientCsr": "<PEM PKCS#10>", "servingCsr": "<PEM PKCS#10>"}`.
//! Answer (200): `{"clientCertificate", "servingCertificate", "caCertificate"}`, all PEM.
//!
//! - The client certificate names `system:node:NODE` in group `system:nodes` (what the node
//!   authorizer recognises), for client authentication.
//! - The serving certificate carries the IP addresses and DNS names the serving CSR asked
//!   for, for server authentication (the agent's own HTTPS endpoint).
//! - Both carry the public keys of the CSRs: private keys never leave the host. A CSR whose
//!   signature does not match its key is refused.
//!
//! Errors: a missing, malformed, unknown or expired token is the same `401`; an invalid node
//! name is `422` naming `nodeName`; a malformed body or CSR is `400`. The token is never
//! logged.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rcgen::{
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::errors::{ApiError, ApiResult};
use crate::kinds::FieldError;

/// How long node certificates are valid; agents join again (or renew) before then.
const NODE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
const BACKDATE: Duration = Duration::from_secs(5 * 60);
pub use crate::rbac::node::{NODE_USER_PREFIX, NODES_GROUP};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub node_name: String,
    pub client_csr: String,
    pub serving_csr: String,
}

/// Signs node certificates with the cluster CA.
pub struct NodeSigner {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    ca_key: KeyPair,
}

impl std::fmt::Debug for NodeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSigner").finish_non_exhaustive()
    }
}

impl NodeSigner {
    /// Loads the CA the PKI keeps in `DATA_DIR/pki/` (it must exist: the server created it
    /// before starting).
    pub fn load(data_dir: &Path) -> anyhow::Result<NodeSigner> {
        let dir = data_dir.join("pki");
        let ca_pem = std::fs::read_to_string(dir.join("ca.crt"))
            .with_context(|| format!("reading {}", dir.join("ca.crt").display()))?;
        let key_pem = std::fs::read_to_string(dir.join("ca.key"))
            .with_context(|| format!("reading {}", dir.join("ca.key").display()))?;
        let ca_key = KeyPair::from_pem(&key_pem).context("parsing the CA key")?;
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).context("parsing the CA")?;
        Ok(NodeSigner {
            ca_pem,
            ca_der,
            ca_key,
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Signs `csr_pem` for node `node`: `serving` keeps the CSR's subject alternative names
    /// and sets server authentication, otherwise client authentication with no names. The
    /// subject is always `CN=system:node:NODE, O=system:nodes`, whatever the CSR asked.
    pub fn sign(&self, csr_pem: &str, node: &str, serving: bool) -> Result<String, String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("not a valid PKCS#10 certificate request: {e}"))?;
        let params = &mut csr.params;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, format!("{NODE_USER_PREFIX}{node}"));
        subject.push(DnType::OrganizationName, NODES_GROUP);
        params.distinguished_name = subject;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if serving {
            if params.subject_alt_names.is_empty() {
                return Err("the serving request names no IP address or DNS name".into());
            }
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            params.subject_alt_names.clear();
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + NODE_CERT_VALIDITY).into();
        let issuer = Issuer::from_ca_cert_der(&self.ca_der, &self.ca_key)
            .map_err(|e| format!("reading the CA: {e}"))?;
        let cert = csr
            .signed_by(&issuer)
            .map_err(|e| format!("signing: {e}"))?;
        Ok(cert.pem())
    }
}

/// Serves a join request whose token has already been checked: validates the body and signs
/// both certificates.
pub fn answer(signer: &NodeSigner, body: &[u8]) -> ApiResult<Value> {
    let request: JoinRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid join request: {e}")))?;
    let problems = crate::kinds::validation::dns1123_subdomain(&request.node_name);
    if !problems.is_empty() {
        let error = FieldError::invalid(
            "nodeName",
            &Value::String(request.node_name.clone()),
            &problems.join(", "),
        );
        return Err(ApiError::invalid("", "Node", &request.node_name, &[error]));
    }
    let client = signer
        .sign(&request.client_csr, &request.node_name, false)
        .map_err(|e| ApiError::bad_request(format!("clientCsr: {e}")))?;
    let serving = signer
        .sign(&request.serving_csr, &request.node_name, true)
        .map_err(|e| ApiError::bad_request(format!("servingCsr: {e}")))?;
    tracing::info!(node = %request.node_name, "issued node credentials");
    Ok(json!({
        "clientCertificate": client,
        "servingCertificate": serving,
        "caCertificate": signer.ca_pem(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::CertificateParams;
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

    fn csr(names: &[&str]) -> (KeyPair, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "system:masters-wannabe");
        let csr = params.serialize_request(&key).unwrap();
        (key, csr.pem().unwrap())
    }

    #[test]
    fn node_certificates_carry_the_node_identity_and_requested_names() {
        let dir = tempfile::tempdir().unwrap();
        crate::pki::Pki::load_or_create(dir.path(), &[]).unwrap();
        let signer = NodeSigner::load(dir.path()).unwrap();
        let (client_key, client_csr) = csr(&[]);
        let (_, mut serving_csr) = csr(&["10.0.0.7", "host-7.example"]);
        let body =
            json!({ "nodeName": "host-7", "clientCsr": client_csr, "servingCsr": serving_csr });
        let answer = answer(&signer, &serde_json::to_vec(&body).unwrap()).unwrap();

        let client_pem = answer["clientCertificate"].as_str().unwrap();
        let der = CertificateDer::from_pem_slice(client_pem.as_bytes()).unwrap();
        assert_eq!(
            crate::pki::identity_from_cert(&der).unwrap(),
            (
                "system:node:host-7".to_string(),
                vec!["system:nodes".to_string()]
            )
        );
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            cert.public_key().raw,
            rcgen::PublicKeyData::subject_public_key_info(&client_key).as_slice()
        );
        assert!(
            cert.extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .client_auth
        );

        let serving_pem = answer["servingCertificate"].as_str().unwrap();
        let der = CertificateDer::from_pem_slice(serving_pem.as_bytes()).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                GeneralName::IPAddress(ip) => format!("{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert!(names.contains(&"host-7.example".to_string()), "{names:?}");
        assert!(names.contains(&"[10, 0, 0, 7]".to_string()), "{names:?}");
        assert!(
            cert.extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .server_auth
        );
        assert_eq!(answer["caCertificate"].as_str(), Some(signer.ca_pem()));

        // Bad node name: 422 on nodeName. Broken CSR: 400.
        let bad =
            json!({ "nodeName": "Host_7", "clientCsr": client_csr, "servingCsr": serving_csr });
        let err = super::answer(&signer, &serde_json::to_vec(&bad).unwrap()).unwrap_err();
        assert_eq!(err.code, 422);
        assert!(err.details.unwrap()["causes"][0]["field"] == "nodeName");
        serving_csr = serving_csr.replace("MII", "MIJ");
        let broken =
            json!({ "nodeName": "host-7", "clientCsr": client_csr, "servingCsr": serving_csr });
        let err = super::answer(&signer, &serde_json::to_vec(&broken).unwrap()).unwrap_err();
        assert_eq!(err.code, 400);
    }
}
