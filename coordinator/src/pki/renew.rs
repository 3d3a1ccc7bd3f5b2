//! Renewal of a node certificate by the node that holds it: the identity is the certificate
//! the agent presented on its mutual-TLS connection (already verified against the CA by the
//! handshake), looked up by serial in `issued.json`; the request brings only a CSR for a fresh
//! key. A revoked, expired or unknown certificate, or a CSR naming another node, is refused.
//! The replaced certificate stays valid until it expires, revoked with its node: an agent that
//! crashed before storing its new pair still connects, and renews again.

use rcgen::{CertificateSigningRequestParams, SanType};
use serde::{Deserialize, Serialize};

use super::{serial_of_der, sign, JoinRefused, Pki};

/// Most replaced certificates a node keeps while they are valid: beyond it renewal is refused,
/// so a node cannot grow `issued.json` by renewing in a loop.
const MAX_SUPERSEDED: usize = 8;

/// A certificate that a later one of the same node id replaced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Superseded {
    /// Serial number, hex.
    pub serial: String,
    /// When it would have expired (unix ms); forgotten after.
    pub expires_unix_ms: i64,
    /// Revoked (with its node).
    #[serde(default)]
    pub revoked: bool,
}

impl Pki {
    /// Signs a new certificate for the node whose current certificate is `presented_der` (the
    /// DER the client authenticated with), with the public key of `csr_pem`, and supersedes
    /// the presented one. Returns the new certificate and the CA, PEM.
    pub fn renew(
        &self,
        presented_der: &[u8],
        csr_pem: &str,
        now_ms: i64,
    ) -> Result<(String, String), JoinRefused> {
        let refused = |why: &str| JoinRefused::Renewal(why.to_string());
        let serial = serial_of_der(presented_der).ok_or_else(|| refused("unreadable"))?;
        let names = crate::tls::certificate_identities(presented_der);
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| JoinRefused::Csr(e.to_string()))?;
        let _lock = self.lock()?;
        let mut issued = self.issued()?;
        let found = issued.iter().find_map(|(node_id, c)| {
            if c.serial.eq_ignore_ascii_case(&serial) {
                return Some((node_id.clone(), c.revoked, c.expires_unix_ms));
            }
            c.superseded
                .iter()
                .find(|old| old.serial.eq_ignore_ascii_case(&serial))
                .map(|old| (node_id.clone(), old.revoked, old.expires_unix_ms))
        });
        let Some((node_id, revoked, expires_unix_ms)) = found else {
            return Err(refused("no node holds it (not issued here)"));
        };
        if revoked {
            return Err(refused("it was revoked; join again with a new token"));
        }
        if expires_unix_ms <= now_ms {
            return Err(refused("it has expired; join again with a new token"));
        }
        if !names.contains(&node_id) {
            return Err(refused("it does not name the node it was issued to"));
        }
        if let Some(other) = csr
            .params
            .subject_alt_names
            .iter()
            .find(|san| !matches!(san, SanType::DnsName(name) if name.as_str() == node_id))
        {
            return Err(JoinRefused::Csr(format!(
                "asks for {other:?}, but this certificate is node {node_id:?}'s"
            )));
        }
        let Some(current) = issued.remove(&node_id) else {
            return Err(refused("no node holds it (not issued here)"));
        };
        // The agent renews at two thirds of its certificate's span (backdated by up to its
        // lifetime): never before a quarter of the lifetime has passed.
        let lifetime = current
            .expires_unix_ms
            .saturating_sub(current.issued_unix_ms);
        if current.serial.eq_ignore_ascii_case(&serial)
            && now_ms
                .saturating_sub(current.issued_unix_ms)
                .saturating_mul(4)
                < lifetime
        {
            return Err(refused("it is not due for renewal yet"));
        }
        let live = current
            .superseded
            .iter()
            .filter(|o| o.expires_unix_ms > now_ms);
        if live.count() >= MAX_SUPERSEDED {
            return Err(refused(
                "this node renewed too often: wait until its replaced certificates expire",
            ));
        }
        let (ca_pem, issuer) = self.issuer()?;
        let cert = sign(
            &issuer,
            &mut issued,
            &node_id,
            &csr.public_key,
            &current.token_id,
            (now_ms, self.node_cert_ms),
        )?;
        if let Some(renewed) = issued.get_mut(&node_id) {
            renewed.superseded = current.superseded;
            renewed.superseded.push(Superseded {
                serial: current.serial,
                expires_unix_ms: current.expires_unix_ms,
                revoked: false,
            });
            renewed
                .superseded
                .retain(|old| old.expires_unix_ms > now_ms);
        }
        self.write_json("issued.json", &issued)?;
        Ok((cert, ca_pem))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::tempdir;
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    const NOW: i64 = 1_790_000_000_000;

    fn csr_for(names: &[&str]) -> String {
        let key = KeyPair::generate().unwrap();
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    }

    fn der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents
    }

    #[test]
    fn renewal_binds_to_the_presented_certificate_and_supersedes_it() {
        let dir = tempdir();
        let pki = Pki::new(&dir).with_node_cert_lifetime(30);
        let token = pki.bootstrap(&[], NOW).unwrap().join_token.unwrap();
        let (first, _) = pki
            .join(&token, "node-1", &csr_for(&["node-1"]), NOW)
            .unwrap();
        let first = der(&first);
        assert_eq!(
            pki.issued().unwrap()["node-1"].expires_unix_ms,
            NOW + 30_000
        );

        // Renewed from the presented certificate: same node id, new serial, new lifetime; a
        // CSR without names is fine (the name comes from the certificate).
        let later = NOW + 21_000;
        let (second, ca) = pki.renew(&first, &csr_for(&[]), later).unwrap();
        assert!(ca.contains("BEGIN CERTIFICATE"));
        let second = der(&second);
        assert_eq!(
            crate::tls::certificate_identities(&second),
            vec!["node-1", "node-1"]
        );
        let issued = pki.issued().unwrap();
        assert_eq!(issued.len(), 1);
        assert_eq!(issued["node-1"].expires_unix_ms, later + 30_000);
        assert_eq!(issued["node-1"].token_id, token.split('.').next().unwrap());
        let (old, new) = (
            serial_of_der(&first).unwrap(),
            serial_of_der(&second).unwrap(),
        );
        assert_ne!(old, new);
        assert!(!pki.is_revoked(&old).unwrap() && !pki.is_revoked(&new).unwrap());
        // The replaced one may renew again (its agent crashed before storing the new pair).
        let (third, _) = pki.renew(&first, &csr_for(&["node-1"]), later).unwrap();
        let third = der(&third);
        // The current one, just issued, is not due yet.
        assert!(matches!(
            pki.renew(&third, &csr_for(&["node-1"]), later + 1_000),
            Err(JoinRefused::Renewal(_))
        ));
        assert_eq!(pki.issued().unwrap()["node-1"].superseded.len(), 2);
        // Revoking the node revokes every certificate it still holds.
        let revoked = Pki::new(tempdir());
        for f in ["ca.pem", "ca.key", "issued.json"] {
            std::fs::copy(pki.path(f), revoked.path(f)).unwrap();
        }
        assert!(revoked.revoke_node("node-1").unwrap());
        for cert in [&first, &second, &third] {
            assert!(revoked.is_revoked(&serial_of_der(cert).unwrap()).unwrap());
            assert!(matches!(
                revoked.renew(cert, &csr_for(&["node-1"]), later),
                Err(JoinRefused::Renewal(_))
            ));
        }
        // A CSR for another node id is refused, whatever the certificate.
        assert!(matches!(
            pki.renew(&second, &csr_for(&["node-2"]), later),
            Err(JoinRefused::Csr(_))
        ));
        assert!(matches!(
            pki.renew(&second, &csr_for(&["node-1", "node-2"]), later),
            Err(JoinRefused::Csr(_))
        ));
        assert!(matches!(
            pki.renew(&second, "garbage", later),
            Err(JoinRefused::Csr(_))
        ));
        // Expired: refused.
        assert!(matches!(
            pki.renew(&second, &csr_for(&["node-1"]), later + 30_000),
            Err(JoinRefused::Renewal(_))
        ));
        // A certificate this CA never recorded (another PKI's) is refused.
        let other = Pki::new(tempdir());
        other.bootstrap(&[], NOW).unwrap();
        let foreign = other.issue_here(&["node-1".to_string()], NOW).unwrap();
        assert!(matches!(
            pki.renew(&der(&foreign[0].0), &csr_for(&["node-1"]), later),
            Err(JoinRefused::Renewal(_))
        ));
        assert!(matches!(
            pki.renew(b"not a certificate", &csr_for(&["node-1"]), later),
            Err(JoinRefused::Renewal(_))
        ));
    }

    #[test]
    fn a_revoked_certificate_cannot_renew() {
        let dir = tempdir();
        let pki = Pki::new(&dir);
        pki.bootstrap(&[], NOW).unwrap();
        let issued = pki.issue_here(&["node-7".to_string()], NOW).unwrap();
        let cert = der(&issued[0].0);
        assert!(pki.revoke_node("node-7").unwrap());
        assert!(matches!(
            pki.renew(&cert, &csr_for(&["node-7"]), NOW + 1_000),
            Err(JoinRefused::Renewal(_))
        ));
        let after = pki.issued().unwrap();
        assert!(after["node-7"].revoked && after["node-7"].superseded.is_empty());
    }
}
