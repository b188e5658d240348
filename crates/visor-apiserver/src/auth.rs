//! Who is making a request. Authentication happens at the TLS layer: a client certificate
//! signed by the cluster CA names the user (CN) and groups (O). A request with no credential
//! is anonymous and may reach only the health and version endpoints.

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// The identity a verified client certificate carries.
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (user, mut groups) = crate::pki::identity_from_cert(der)?;
        groups.push("system:authenticated".into());
        Some(Identity { user, groups })
    }
}
