//! The cluster CA and each master's certificates.
//!
//! The first master that finds no CA in Parameter Store makes one (ECDSA P-256, ten years) and
//! stores it with a create-only put, so that masters starting together end with one CA: whoever
//! loses the race reads the winner's. Each master then signs its own certificates with it:
//!
//! - `server.crt`: etcd's client-facing TLS (SANs: the private IPv4, 127.0.0.1, `localhost`);
//! - `peer.crt`: etcd's peer TLS (SAN: the private IPv4), client and server use;
//! - `client.crt`: the agent's client certificate (CN `berth-agent`).
//!
//! Certificates last a year and are made again when the CA, the address or the validity left
//! (under 30 days) calls for it. Keys are files of mode 0600, the etcd keys owned by the etcd
//! user, and never appear in a log, a plan or `status`.

use std::net::Ipv4Addr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// The CA as stored in Parameter Store (one SecureString, JSON).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct ClusterCa {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cert", &format!("{} bytes", self.cert.len()))
            .field("key", &"** redacted **")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("the cluster CA in Parameter Store is unusable ({0}); delete the parameter only if no master uses it, or restore it")]
    BadCa(String),
    #[error("making a certificate: {0}")]
    Make(String),
}

const CA_YEARS: i64 = 10;
const LEAF_DAYS: i64 = 365;
/// A leaf certificate with less validity left is made again.
pub const RENEW_BEFORE_DAYS: i64 = 30;

impl ClusterCa {
    /// A new CA named after the cluster.
    pub fn generate(cluster: &str) -> Result<ClusterCa, PkiError> {
        let key = KeyPair::generate().map_err(|e| PkiError::Make(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("berth etcd CA {cluster}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(365 * CA_YEARS);
        let cert = params
            .self_signed(&key)
            .map_err(|e| PkiError::Make(e.to_string()))?;
        Ok(ClusterCa {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// Parses the stored JSON and checks that the key signs for the certificate.
    pub fn parse(json: &str) -> Result<ClusterCa, PkiError> {
        let ca: ClusterCa =
            serde_json::from_str(json).map_err(|e| PkiError::BadCa(format!("not JSON: {e}")))?;
        ca.issuer()?;
        Ok(ca)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("two strings serialize")
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.key).map_err(|e| PkiError::BadCa(format!("key: {e}")))?;
        Issuer::from_ca_cert_pem(&self.cert, key)
            .map_err(|e| PkiError::BadCa(format!("certificate: {e}")))
    }

    /// A leaf certificate and its key (PEM), signed by this CA.
    pub fn issue(&self, leaf: &Leaf) -> Result<(String, String), PkiError> {
        let issuer = self.issuer()?;
        let key = KeyPair::generate().map_err(|e| PkiError::Make(e.to_string()))?;
        let mut params =
            CertificateParams::new(leaf.sans.clone()).map_err(|e| PkiError::Make(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, leaf.common_name.clone());
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = leaf.usages.clone();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(LEAF_DAYS);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| PkiError::Make(e.to_string()))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// What one leaf certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub file: &'static str,
    pub common_name: String,
    pub sans: Vec<String>,
    pub usages: Vec<ExtendedKeyUsagePurpose>,
    /// The key is read by etcd (owned by its user), or by the agent only.
    pub for_etcd: bool,
}

/// The three certificates of a master at `ip`.
pub fn leaves(instance_id: &str, ip: Ipv4Addr) -> Vec<Leaf> {
    let both = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    vec![
        Leaf {
            file: "server",
            common_name: instance_id.to_string(),
            sans: vec![ip.to_string(), "127.0.0.1".into(), "localhost".into()],
            usages: both.clone(),
            for_etcd: true,
        },
        Leaf {
            file: "peer",
            common_name: instance_id.to_string(),
            sans: vec![ip.to_string()],
            usages: both,
            for_etcd: true,
        },
        Leaf {
            file: "client",
            common_name: "berth-agent".into(),
            sans: vec![],
            usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
            for_etcd: false,
        },
    ]
}

/// Whether the certificate at `cert_path` still fits: issued by `ca`, carrying `leaf`'s SANs,
/// and valid for more than [`RENEW_BEFORE_DAYS`].
pub fn still_fits(cert_path: &Path, ca: &ClusterCa, leaf: &Leaf) -> bool {
    let Ok(pem_text) = std::fs::read_to_string(cert_path) else {
        return false;
    };
    let Ok(p) = pem::parse(pem_text.as_bytes()) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(p.contents()) else {
        return false;
    };
    let Ok(ca_pem) = pem::parse(ca.cert.as_bytes()) else {
        return false;
    };
    let Ok((_, ca_cert)) = x509_parser::parse_x509_certificate(ca_pem.contents()) else {
        return false;
    };
    if cert.verify_signature(Some(ca_cert.public_key())).is_err() {
        return false;
    }
    let left = cert.validity().not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp();
    if left < RENEW_BEFORE_DAYS * 86_400 {
        return false;
    }
    let mut have: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => have.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) if b.len() == 4 => {
                    have.push(Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string())
                }
                _ => {}
            }
        }
    }
    let mut want = leaf.sans.clone();
    want.sort();
    have.sort();
    want == have
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_round_trips_through_its_stored_form_and_signs_fitting_leaves() {
        let ca = ClusterCa::generate("demo").unwrap();
        let back = ClusterCa::parse(&ca.to_json()).unwrap();
        assert!(!format!("{back:?}").contains("PRIVATE"));
        let dir = tempfile::tempdir().unwrap();
        let leaf = &leaves("i-0abc", Ipv4Addr::new(10, 0, 0, 5))[0];
        let (cert, _key) = back.issue(leaf).unwrap();
        let path = dir.path().join("server.crt");
        std::fs::write(&path, &cert).unwrap();
        assert!(still_fits(&path, &ca, leaf));
        // Another address, or another CA: made again.
        let moved = &leaves("i-0abc", Ipv4Addr::new(10, 0, 0, 6))[0];
        assert!(!still_fits(&path, &ca, moved));
        let other = ClusterCa::generate("demo").unwrap();
        assert!(!still_fits(&path, &other, leaf));
    }

    #[test]
    fn a_damaged_ca_is_refused_with_what_to_do() {
        let ca = ClusterCa::generate("demo").unwrap();
        let other = ClusterCa::generate("demo").unwrap();
        let mixed = ClusterCa {
            cert: ca.cert.clone(),
            key: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
        };
        assert!(ClusterCa::parse(&mixed.to_json()).is_err());
        assert!(ClusterCa::parse("{").is_err());
        let e = ClusterCa::parse("[]").unwrap_err().to_string();
        assert!(e.contains("Parameter Store"), "{e}");
        let _ = other;
    }
}
