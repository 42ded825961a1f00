//! The join ticket: what masters publish in Parameter Store at `/berth/CLUSTER/node/join` for
//! minions to run `kubeadm join` with.
//!
//! Shape (a JSON object, a SecureString parameter):
//! `{"token": "abcdef.0123456789abcdef", "expires": 1700000000,
//!   "ca_cert_hash": "sha256:<64 hex>", "api_server": "api.berth.internal:6443"}`
//! - `token`: a kubeadm bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`, kubeadm's
//!   `BootstrapTokenRegexp`); a secret, never logged, never in `plan` or `status`.
//! - `expires`: Unix seconds when the API server stops accepting it (its TTL from creation).
//! - `ca_cert_hash`: kubeadm's pin of the cluster CA, the SHA-256 of its DER
//!   SubjectPublicKeyInfo (`--discovery-token-ca-cert-hash`). Not secret.
//! - `api_server`: `host:port` of the API, kubeadm's `controlPlaneEndpoint`.

use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTicket {
    pub token: String,
    pub expires: u64,
    pub ca_cert_hash: String,
    pub api_server: String,
}

/// Never prints the token's secret half.
impl std::fmt::Debug for JoinTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinTicket")
            .field("token_id", &self.token_id())
            .field("expires", &self.expires)
            .field("ca_cert_hash", &self.ca_cert_hash)
            .field("api_server", &self.api_server)
            .finish()
    }
}

/// Largest ticket read (a ticket is about 200 bytes).
const MAX_TICKET: usize = 4096;

impl JoinTicket {
    /// The ticket in `text`, every field checked; the error names the field and never quotes
    /// the token.
    pub fn parse(text: &str) -> Result<JoinTicket, String> {
        if text.len() > MAX_TICKET {
            return Err(format!("more than {MAX_TICKET} bytes"));
        }
        let t: JoinTicket = serde_json::from_str(text).map_err(|e| {
            // serde's message may quote a value; keep only its position.
            format!(
                "not a join ticket (JSON with token, expires, ca_cert_hash, api_server) at line \
                 {} column {}",
                e.line(),
                e.column()
            )
        })?;
        if !valid_token(&t.token) {
            return Err(
                "`token` is not a kubeadm bootstrap token ([a-z0-9]{6}.[a-z0-9]{16})".into(),
            );
        }
        if !valid_ca_cert_hash(&t.ca_cert_hash) {
            return Err(format!(
                "`ca_cert_hash` {:?} is not `sha256:` and 64 lowercase hex digits",
                crate::config::truncate_value(&t.ca_cert_hash)
            ));
        }
        if !valid_api_server(&t.api_server) {
            return Err(format!(
                "`api_server` {:?} is not HOST:PORT",
                crate::config::truncate_value(&t.api_server)
            ));
        }
        Ok(t)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a ticket serializes")
    }

    /// The token's public half (its id), which the API server shows as the Secret
    /// `bootstrap-token-ID` and `kubeadm token list` prints.
    pub fn token_id(&self) -> &str {
        self.token.split('.').next().unwrap_or("")
    }

    /// Seconds left at `now` (Unix seconds); 0 once expired.
    pub fn left(&self, now: u64) -> u64 {
        self.expires.saturating_sub(now)
    }
}

/// kubeadm's bootstrap token format: `[a-z0-9]{6}\.[a-z0-9]{16}`.
pub fn valid_token(s: &str) -> bool {
    let ok = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    match s.split_once('.') {
        Some((id, secret)) => ok(id, 6) && ok(secret, 16),
        None => false,
    }
}

/// `sha256:` and 64 lowercase hex digits, as kubeadm prints its CA pin.
pub fn valid_ca_cert_hash(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `HOST:PORT` with a DNS name or IPv4 address and a port from 1 to 65535.
pub fn valid_api_server(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = host.parse::<std::net::Ipv4Addr>().is_ok()
        || (host.len() <= 253 && host.split('.').all(crate::discovery::valid_label));
    port_ok && host_ok
}

/// kubeadm's CA pin of a PEM certificate: `sha256:` and the hex SHA-256 of its DER
/// SubjectPublicKeyInfo (kubeadm's `pubkeypin.Hash`, RFC 7469's pin over the SPKI).
pub fn ca_cert_hash(ca_pem: &str) -> Result<String, String> {
    use sha2::Digest;
    let der = pem::parse(ca_pem).map_err(|e| format!("not PEM: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.contents())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    Ok(format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(spki))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "abcdef.0123456789abcdef";

    fn ticket() -> String {
        format!(
            r#"{{"token":"{TOKEN}","expires":1700000000,"ca_cert_hash":"sha256:{}","api_server":"api.berth.internal:6443"}}"#,
            "ab".repeat(32)
        )
    }

    #[test]
    fn a_ticket_round_trips_and_its_debug_form_hides_the_secret() {
        let t = JoinTicket::parse(&ticket()).unwrap();
        assert_eq!(t.token_id(), "abcdef");
        assert_eq!(JoinTicket::parse(&t.to_json()).unwrap(), t);
        let shown = format!("{t:?}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert_eq!(t.left(1_699_999_000), 1000);
        assert_eq!(t.left(1_800_000_000), 0);
    }

    #[test]
    fn bad_fields_are_named_and_the_token_is_never_quoted() {
        let cases = [
            (
                ticket().replace(TOKEN, "ABCDEF.0123456789abcdef"),
                "`token`",
            ),
            (ticket().replace(TOKEN, "abcdef0123456789abcdef"), "`token`"),
            (ticket().replace("sha256:", "md5:"), "`ca_cert_hash`"),
            (ticket().replace(":6443", ""), "`api_server`"),
            (
                ticket().replace("api.berth", "api;rm -rf /.berth"),
                "`api_server`",
            ),
            ("[]".to_string(), "not a join ticket"),
            (
                ticket().replace("\"expires\"", "\"extra\":1,\"expires\""),
                "not a join ticket",
            ),
            ("x".repeat(5000), "bytes"),
        ];
        for (text, want) in cases {
            let e = JoinTicket::parse(&text).unwrap_err();
            assert!(e.contains(want), "{e} lacks {want}");
            assert!(!e.contains("0123456789abcdef"), "{e}");
        }
    }

    #[test]
    fn the_pin_is_the_sha256_of_the_spki() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pin = ca_cert_hash(&cert.pem()).unwrap();
        assert!(valid_ca_cert_hash(&pin), "{pin}");
        use sha2::Digest;
        let want = hex::encode(sha2::Sha256::digest(
            rcgen::PublicKeyData::subject_public_key_info(&key),
        ));
        assert_eq!(pin, format!("sha256:{want}"));
        assert!(ca_cert_hash("not pem").is_err());
    }
}
