//! The cluster's certificate authority and the certificates it issues.
//!
//! On first start the server creates a CA and a serving certificate under `DATA_DIR/pki/`:
//!
//! | file         | what                                              | mode |
//! |--------------|---------------------------------------------------|------|
//! | `ca.crt`     | the CA certificate (10 years), handed to clients  | 0644 |
//! | `ca.key`     | the CA's private key                              | 0600 |
//! | `server.crt` | the serving certificate (1 year), signed by the CA | 0644 |
//! | `server.key` | the serving certificate's private key             | 0600 |
//!
//! Later starts reuse them, so kubeconfigs written earlier stay valid. The serving certificate is
//! re-issued (never the CA) when it lacks a subject alternative name the server now needs, when
//! it is close to expiry, or when it was not signed by the CA on disk.
//!
//! Clients authenticate with certificates the CA signed, the way upstream Kubernetes reads them:
//! the subject's common name is the user, each organization is a group
//! ([`identity_from_cert`]). All keys are ECDSA P-256.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SigningKey,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
const CLIENT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// A serving certificate with less left than this is re-issued at start, so a server restarted
/// now and then never serves an expired one.
const SERVING_RENEW_BEFORE_DAYS: i64 = 30;
/// Certificates start being valid a little in the past, so a client whose clock is slightly
/// behind the server's does not reject a certificate issued a moment ago.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

const CA_COMMON_NAME: &str = "visor-ca";
const SERVING_COMMON_NAME: &str = "visor-apiserver";

/// OIDs of the subject attributes written by [`subject_name`].
const OID_COMMON_NAME: &[u64] = &[2, 5, 4, 3];
const OID_ORGANIZATION: &[u64] = &[2, 5, 4, 10];

/// The CA and the serving certificate of one server.
pub struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    ca_key: KeyPair,
    server_der: CertificateDer<'static>,
    server_key_pem: String,
}

impl std::fmt::Debug for Pki {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

impl Pki {
    /// Loads `DATA_DIR/pki/{ca.crt,ca.key,server.crt,server.key}`, creating what is missing.
    ///
    /// Flow: load or create the CA; load the serving certificate and keep it if it was signed by
    /// that CA, covers every needed name and has more than 30 days left; otherwise issue a new
    /// one whose names are the needed ones plus those the old one had.
    ///
    /// The needed names are `hosts` (IP addresses or DNS names) plus, always, `127.0.0.1`,
    /// `::1`, `localhost` and the machine's hostname. Unspecified addresses (`0.0.0.0`, `::`)
    /// are skipped: no client connects to them.
    ///
    /// Guarantees: key files are written with mode 0600, every file atomically (a crash leaves
    /// either the old or the new file).
    pub fn load_or_create(data_dir: &Path, hosts: &[String]) -> anyhow::Result<Pki> {
        let dir = data_dir.join("pki");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting permissions of {}", dir.display()))?;

        let (ca_pem, ca_key) = load_or_create_ca(&dir)?;
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .context("parsing the CA certificate")?;
        let needed = needed_names(hosts);
        let (server_pem, server_key_pem) = load_or_issue_serving(&dir, &ca_der, &ca_key, &needed)?;
        let server_der = CertificateDer::from_pem_slice(server_pem.as_bytes())
            .context("parsing the serving certificate")?;
        Ok(Pki {
            ca_pem,
            ca_der,
            ca_key,
            server_der,
            server_key_pem,
        })
    }

    /// The CA certificate in PEM form, as clients need it (`certificate-authority-data`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A rustls server configuration presenting the serving certificate, offering ALPN `h2` and
    /// `http/1.1`, and asking clients for a certificate signed by the CA.
    ///
    /// Clients without a certificate are let through unauthenticated (they are anonymous and
    /// authorised later); a client presenting a certificate that does not chain to the CA is
    /// refused during the handshake.
    pub fn server_tls_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .context("adding the CA to the client roots")?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .context("building the client certificate verifier")?;
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())
            .context("parsing the serving key")?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("choosing TLS versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.server_der.clone()], key)
            .context("loading the serving certificate")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Issues a client certificate signed by the CA for `user` in `groups`: the subject's common
    /// name is `user` and it has one organization per group, which is how the server (like
    /// upstream Kubernetes) reads the identity back. Valid for one year. Returns
    /// `(certificate PEM, private key PEM)`.
    pub fn issue_client_cert(
        &self,
        user: &str,
        groups: &[&str],
    ) -> anyhow::Result<(String, String)> {
        if user.is_empty() {
            bail!("a client certificate needs a user name");
        }
        let key = KeyPair::generate().context("generating a client key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, user);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, CLIENT_VALIDITY);
        let issuer = Issuer::from_ca_cert_der(&self.ca_der, &self.ca_key)
            .context("reading the CA certificate")?;
        let cert = params
            .signed_by(&key, &issuer)
            .context("signing the client certificate")?;
        let der = if groups.is_empty() {
            cert.der().to_vec()
        } else {
            // rcgen keeps one value per attribute type, while Kubernetes reads one group per
            // organization attribute; so the subject is written here and the certificate
            // signed again.
            with_subject(cert.der(), &subject_name(user, groups), &self.ca_key)?
        };
        let pem = CertificateDer::from(der);
        Ok((to_pem("CERTIFICATE", &pem), key.serialize_pem()))
    }
}

/// The identity in a client certificate (DER) the TLS layer already verified: the subject's
/// common name and its organizations, i.e. `(user, groups)`. `None` if the certificate cannot be
/// parsed or has no common name.
pub fn identity_from_cert(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    if user.is_empty() {
        return None;
    }
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_string)
        .collect();
    Some((user, groups))
}

fn needed_names(hosts: &[String]) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = ["127.0.0.1", "::1", "localhost"]
        .into_iter()
        .map(String::from)
        .collect();
    if let Some(hostname) = hostname() {
        names.insert(hostname);
    }
    for host in hosts {
        let host = host.trim().trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() => {}
            Ok(ip) => {
                names.insert(ip.to_string());
            }
            Err(_) if !host.is_empty() => {
                names.insert(host.to_ascii_lowercase());
            }
            Err(_) => {}
        }
    }
    names
}

fn hostname() -> Option<String> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

fn load_or_create_ca(dir: &Path) -> anyhow::Result<(String, KeyPair)> {
    let (crt, key_file) = (dir.join("ca.crt"), dir.join("ca.key"));
    if crt.exists() && key_file.exists() {
        let pem = read(&crt)?;
        let key = KeyPair::from_pem(&read(&key_file)?)
            .with_context(|| format!("parsing {}", key_file.display()))?;
        // Refuse a mismatched pair rather than issue certificates nobody can verify.
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .with_context(|| format!("parsing {}", crt.display()))?;
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| anyhow::anyhow!("parsing {}: {e}", crt.display()))?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            bail!(
                "{} does not belong to {}",
                key_file.display(),
                crt.display()
            );
        }
        return Ok((pem, key));
    }
    if crt.exists() || key_file.exists() {
        bail!(
            "{} holds only half of the CA (ca.crt and ca.key go together); \
             restore the missing file or remove both to create a new CA",
            dir.display()
        );
    }
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY);
    let cert = params
        .self_signed(&key)
        .context("signing the CA certificate")?;
    let pem = cert.pem();
    // Key first: a crash in between leaves a key without a certificate, which is refused above
    // with a clear message, never a certificate whose key is lost.
    write_atomic(&key_file, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&crt, pem.as_bytes(), 0o644)?;
    tracing::info!(path = %crt.display(), "created a new cluster CA");
    Ok((pem, key))
}

/// Returns the serving certificate and key PEMs, issuing new ones if needed.
fn load_or_issue_serving(
    dir: &Path,
    ca_der: &CertificateDer<'static>,
    ca_key: &KeyPair,
    needed: &BTreeSet<String>,
) -> anyhow::Result<(String, String)> {
    let (crt, key) = (dir.join("server.crt"), dir.join("server.key"));
    let mut names = needed.clone();
    if crt.exists() && key.exists() {
        let pem = read(&crt)?;
        let key_pem = read(&key)?;
        match serving_cert_state(&pem, &key_pem, ca_der, needed) {
            Ok(ServingState::Usable) => return Ok((pem, key_pem)),
            Ok(ServingState::Reissue { reason, names: old }) => {
                tracing::info!(%reason, "re-issuing the serving certificate");
                names.extend(old);
            }
            Err(error) => {
                tracing::warn!(%error, path = %crt.display(), "replacing an unreadable serving certificate");
            }
        }
    }
    let key_pair = KeyPair::generate().context("generating the serving key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, SERVING_COMMON_NAME);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.subject_alt_names = names
        .iter()
        .map(|name| match name.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(
                name.clone()
                    .try_into()
                    .with_context(|| format!("{name:?} is not a DNS name"))?,
            )),
        })
        .collect::<anyhow::Result<_>>()?;
    set_validity(&mut params, SERVING_VALIDITY);
    let issuer = Issuer::from_ca_cert_der(ca_der, ca_key).context("reading the CA certificate")?;
    let cert = params
        .signed_by(&key_pair, &issuer)
        .context("signing the serving certificate")?;
    let (pem, key_pem) = (cert.pem(), key_pair.serialize_pem());
    write_atomic(&key, key_pem.as_bytes(), 0o600)?;
    write_atomic(&crt, pem.as_bytes(), 0o644)?;
    Ok((pem, key_pem))
}

enum ServingState {
    Usable,
    Reissue { reason: String, names: Vec<String> },
}

fn serving_cert_state(
    pem: &str,
    key_pem: &str,
    ca_der: &CertificateDer<'static>,
    needed: &BTreeSet<String>,
) -> anyhow::Result<ServingState> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).context("parsing server.crt")?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| anyhow::anyhow!("parsing server.crt: {e}"))?;
    let key = KeyPair::from_pem(key_pem).context("parsing server.key")?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        bail!("server.key does not belong to server.crt");
    }
    let mut names = Vec::new();
    if let Some(san) = cert.subject_alternative_name().ok().flatten() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    let (_, ca) =
        X509Certificate::from_der(ca_der).map_err(|e| anyhow::anyhow!("parsing ca.crt: {e}"))?;
    let reason = if cert.verify_signature(Some(ca.public_key())).is_err() {
        Some("it was not signed by the current CA".to_string())
    } else if let Some(missing) = needed.iter().find(|n| !names.contains(n)) {
        Some(format!("it does not name {missing:?}"))
    } else {
        match cert.validity().time_to_expiration() {
            Some(left) if left.whole_days() > SERVING_RENEW_BEFORE_DAYS => None,
            _ => Some("it expires within 30 days".to_string()),
        }
    };
    Ok(match reason {
        None => ServingState::Usable,
        Some(reason) => ServingState::Reissue { reason, names },
    })
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + validity).into();
}

/// The DER of an X.501 `Name`: one `CN` then one `O` per group, each in its own RDN and
/// UTF8String-encoded, which is what Go's `pkix.Name` writes and Kubernetes reads.
fn subject_name(user: &str, groups: &[&str]) -> Vec<u8> {
    let attribute = |writer: yasna::DERWriter, oid: &[u64], value: &str| {
        writer.write_set(|set| {
            set.next().write_sequence(|seq| {
                seq.next()
                    .write_oid(&yasna::models::ObjectIdentifier::from_slice(oid));
                seq.next().write_utf8_string(value);
            })
        })
    };
    yasna::construct_der(|writer| {
        writer.write_sequence(|seq| {
            for group in groups {
                attribute(seq.next(), OID_ORGANIZATION, group);
            }
            attribute(seq.next(), OID_COMMON_NAME, user);
        })
    })
}

/// Replaces the subject of the certificate `der` with `subject` (a DER `Name`) and signs the
/// result again with `ca_key`, keeping every other field byte for byte.
fn with_subject(der: &[u8], subject: &[u8], ca_key: &KeyPair) -> anyhow::Result<Vec<u8>> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| anyhow::anyhow!("parsing a certificate: {e}"))?;
    let old_subject = cert.subject().as_raw();
    let parse = |tbs: &[u8]| {
        yasna::parse_der(tbs, |reader| {
            let mut fields = Vec::new();
            reader.read_sequence_of(|r| {
                fields.push(r.read_der()?);
                Ok(())
            })?;
            Ok(fields)
        })
    };
    let tbs_fields = parse(cert.tbs_certificate.as_ref())
        .map_err(|e| anyhow::anyhow!("splitting a certificate: {e}"))?;
    // The fields are: version, serial, signature, issuer, validity, subject, key, extensions.
    // The issuer may equal the subject, so the subject is found by position, then checked.
    const SUBJECT_INDEX: usize = 5;
    if tbs_fields.get(SUBJECT_INDEX).map(Vec::as_slice) != Some(old_subject) {
        bail!("unexpected certificate layout");
    }
    let tbs = yasna::construct_der(|writer| {
        writer.write_sequence(|seq| {
            for (index, field) in tbs_fields.iter().enumerate() {
                let field = if index == SUBJECT_INDEX {
                    subject
                } else {
                    field.as_slice()
                };
                seq.next().write_der(field);
            }
        })
    });
    let signature = ca_key.sign(&tbs).context("signing a certificate")?;
    let algorithm = yasna::parse_der(der, |reader| {
        reader.read_sequence(|r| {
            let _tbs = r.next().read_der()?;
            let algorithm = r.next().read_der()?;
            let _signature = r.next().read_der()?;
            Ok(algorithm)
        })
    })
    .map_err(|e| anyhow::anyhow!("splitting a certificate: {e}"))?;
    Ok(yasna::construct_der(|writer| {
        writer.write_sequence(|seq| {
            seq.next().write_der(&tbs);
            seq.next().write_der(&algorithm);
            seq.next()
                .write_bitvec_bytes(&signature, signature.len() * 8);
        })
    }))
}

fn to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn read(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes `contents` to `path` through a temporary file in the same directory and a rename, so
/// readers see the old or the new file, never a part; the file is created with `mode` and synced.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("a file path without a directory")?;
    let name = path
        .file_name()
        .context("a file path without a name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode above is filtered by the umask; keys must end up 0600 whatever it is.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::{ServerName, UnixTime};

    fn pki(dir: &Path, hosts: &[&str]) -> Pki {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        Pki::load_or_create(dir, &hosts).unwrap()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn server_verifier(pki: &Pki) -> Arc<rustls::client::WebPkiServerVerifier> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap())
            .unwrap();
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn creates_files_with_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        pki(dir.path(), &[]);
        let pki_dir = dir.path().join("pki");
        assert_eq!(mode(&pki_dir.join("ca.key")), 0o600);
        assert_eq!(mode(&pki_dir.join("server.key")), 0o600);
        assert_eq!(mode(&pki_dir.join("ca.crt")), 0o644);
        assert_eq!(mode(&pki_dir), 0o700);
    }

    #[test]
    fn serving_certificate_verifies_for_every_needed_name() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path(), &["10.1.2.3", "api.example.test", "0.0.0.0"]);
        let verifier = server_verifier(&pki);
        let hostname = hostname().unwrap();
        for name in [
            "127.0.0.1",
            "::1",
            "localhost",
            "10.1.2.3",
            "api.example.test",
            &hostname,
        ] {
            let server_name = ServerName::try_from(name.to_string()).unwrap();
            verifier
                .verify_server_cert(&pki.server_der, &[], &server_name, &[], UnixTime::now())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = ServerName::try_from("other.example.test").unwrap();
        assert!(
            verifier
                .verify_server_cert(&pki.server_der, &[], &other, &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn reuses_the_ca_and_serving_certificate_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let first = pki(dir.path(), &["10.1.2.3"]);
        let second = pki(dir.path(), &["10.1.2.3"]);
        assert_eq!(first.ca_pem(), second.ca_pem());
        assert_eq!(first.server_der, second.server_der);
        assert_eq!(first.server_key_pem, second.server_key_pem);
        // A subset of the names the certificate already has needs nothing new either.
        let third = pki(dir.path(), &[]);
        assert_eq!(first.server_der, third.server_der);
    }

    #[test]
    fn reissues_the_serving_certificate_for_a_new_name_keeping_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let first = pki(dir.path(), &["10.1.2.3"]);
        let second = pki(dir.path(), &["10.9.9.9"]);
        assert_eq!(first.ca_pem(), second.ca_pem(), "the CA is never replaced");
        assert_ne!(first.server_der, second.server_der);
        let verifier = server_verifier(&second);
        for name in ["10.1.2.3", "10.9.9.9"] {
            let server_name = ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&second.server_der, &[], &server_name, &[], UnixTime::now())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn reissues_a_serving_certificate_from_another_ca() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        pki(a.path(), &[]);
        let other = pki(b.path(), &[]);
        fs::copy(
            b.path().join("pki/server.crt"),
            a.path().join("pki/server.crt"),
        )
        .unwrap();
        fs::copy(
            b.path().join("pki/server.key"),
            a.path().join("pki/server.key"),
        )
        .unwrap();
        let reloaded = pki(a.path(), &[]);
        assert_ne!(reloaded.server_der, other.server_der);
        let verifier = server_verifier(&reloaded);
        let name = ServerName::try_from("localhost").unwrap();
        verifier
            .verify_server_cert(&reloaded.server_der, &[], &name, &[], UnixTime::now())
            .unwrap();
    }

    #[test]
    fn refuses_half_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        pki(dir.path(), &[]);
        fs::remove_file(dir.path().join("pki/ca.crt")).unwrap();
        let error = Pki::load_or_create(dir.path(), &[]).unwrap_err();
        assert!(error.to_string().contains("half of the CA"), "{error}");
    }

    fn verify_client(pki: &Pki, cert_pem: &str) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        verifier
            .verify_client_cert(&der, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn client_certificates_chain_to_the_ca_and_carry_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path(), &[]);
        for groups in [
            &[][..],
            &["system:masters"][..],
            &["dev", "ops", "system:authenticated"][..],
        ] {
            let (cert, key) = pki.issue_client_cert("alice", groups).unwrap();
            verify_client(&pki, &cert).unwrap_or_else(|e| panic!("{groups:?}: {e}"));
            let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
            let (user, got) = identity_from_cert(&der).unwrap();
            assert_eq!(user, "alice");
            assert_eq!(got, groups);
            // The key is the one the certificate names.
            let key = KeyPair::from_pem(&key).unwrap();
            let (_, parsed) = X509Certificate::from_der(&der).unwrap();
            assert_eq!(
                parsed.public_key().raw,
                key.subject_public_key_info().as_slice()
            );
            let days = parsed.validity().time_to_expiration().unwrap().whole_days();
            assert!((364..=366).contains(&days), "{days} days");
        }
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (pki_a, pki_b) = (pki(a.path(), &[]), pki(b.path(), &[]));
        let (cert, _) = pki_b
            .issue_client_cert("mallory", &["system:masters"])
            .unwrap();
        assert!(verify_client(&pki_a, &cert).is_err());
    }

    #[test]
    fn identity_needs_a_common_name() {
        assert_eq!(identity_from_cert(b"not a certificate"), None);
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path(), &[]);
        // The CA's own certificate has a CN and no organization.
        assert_eq!(
            identity_from_cert(&pki.ca_der),
            Some((CA_COMMON_NAME.to_string(), vec![]))
        );
    }

    #[test]
    fn tls_handshake_with_and_without_a_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path(), &[]);
        let server_config = Arc::new(pki.server_tls_config().unwrap());
        let (cert, key) = pki.issue_client_cert("admin", &["system:masters"]).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let anonymous = builder.clone().with_no_client_auth();
        let admin = builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
        for (config, expected) in [
            (anonymous, None),
            (
                admin,
                Some(("admin".to_string(), vec!["system:masters".to_string()])),
            ),
        ] {
            let mut client = rustls::ClientConnection::new(
                Arc::new(config),
                ServerName::try_from("127.0.0.1").unwrap(),
            )
            .unwrap();
            let mut server = rustls::ServerConnection::new(server_config.clone()).unwrap();
            // Shuttle handshake bytes in memory until both sides are done.
            for _ in 0..10 {
                let mut buf = Vec::new();
                client.write_tls(&mut buf).unwrap();
                server.read_tls(&mut buf.as_slice()).unwrap();
                server.process_new_packets().unwrap();
                let mut buf = Vec::new();
                server.write_tls(&mut buf).unwrap();
                client.read_tls(&mut buf.as_slice()).unwrap();
                client.process_new_packets().unwrap();
            }
            assert!(!server.is_handshaking() && !client.is_handshaking());
            let identity = server
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|der| identity_from_cert(der));
            assert_eq!(identity, expected);
        }
    }
}
