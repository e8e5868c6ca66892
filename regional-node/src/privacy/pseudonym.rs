//! Keyed pseudonyms for records that leave the region.
//!
//! `pseudonym = hex(HMAC-SHA256(region secret, "domicile/v1/pseudonym" 0 kind 0 tenant 0
//! purpose 0 id)[..16])`, with the purpose spelled as its enum name (`PURPOSE_CX_ANALYTICS`).
//! The secret never leaves the node, so nobody outside it can compute or invert a pseudonym;
//! the purpose is in the input, so the same customer has unrelated
//! pseudonyms under different purposes; each region has its own secret, so pseudonyms from two
//! regions cannot be joined. Fields are NUL-separated and none may contain NUL (ids are validated
//! free of control characters), so distinct inputs never collide by concatenation.
//!
//! The `id` is what the node stores: a subject's reference and an interaction's keyed id
//! ([`crate::store::vault`]), never the customer's own ids. A pseudonym is therefore stable while the
//! subject lives, and a customer erased and sent again gets new pseudonyms, unrelated to the ones
//! released before the erasure.

use domicile_proto::pb::Purpose;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// What a pseudonym stands for; part of the HMAC input so that a subject and an interaction
/// with the same id get different pseudonyms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A customer (its reference).
    Subject,
    /// An interaction (`interaction_id`).
    Interaction,
}

/// Computes pseudonyms with one region's secret.
#[derive(Clone)]
pub struct Pseudonymiser {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymiser { secret: <redacted> }")
    }
}

impl Pseudonymiser {
    /// A pseudonymiser keyed by `secret`.
    pub fn new(secret: &[u8; 32]) -> Self {
        Self {
            mac: <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
                .expect("HMAC accepts keys of any length"),
        }
    }

    /// The subject's pseudonym in the node's own audit log, from its reference: the same
    /// construction with `audit` in place of a purpose, so it never equals a pseudonym that left
    /// the region.
    pub fn audit_subject(&self, tenant: &str, reference: &str) -> String {
        self.keyed(&["subject", tenant, "audit", reference])
    }

    /// The suppression id of a subject's external id: what an erasure keeps a refusal or
    /// objection under ([`crate::domain::consent::suppress`]) and a contact check looks up. The same
    /// construction with `suppression` in place of a purpose, so it never equals a pseudonym
    /// that left the region.
    pub fn suppression_of_subject(&self, tenant: &str, external_id: &str) -> String {
        self.keyed(&["suppression", "subject", tenant, external_id])
    }

    /// The suppression ids of a profile's contact identifiers, normalised first (e-mail
    /// trimmed and lower-cased, phone reduced to its digits); an identifier that normalises
    /// to nothing has none, so that two people never share one by both lacking it.
    pub fn suppression_of_contacts(&self, tenant: &str, email: &str, phone: &str) -> Vec<String> {
        let email = email.trim().to_lowercase();
        let phone: String = phone.chars().filter(char::is_ascii_digit).collect();
        [("email", email), ("phone", phone)]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(kind, v)| self.keyed(&["suppression", kind, tenant, &v]))
            .collect()
    }

    fn keyed(&self, parts: &[&str]) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"domicile/v1/pseudonym\0");
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// The pseudonym of `id` (a `kind`) of `tenant` under `purpose`: 32 hex characters.
    pub fn pseudonym(&self, kind: Kind, tenant: &str, purpose: Purpose, id: &str) -> String {
        let kind = match kind {
            Kind::Subject => "subject",
            Kind::Interaction => "interaction",
        };
        self.keyed(&[kind, tenant, purpose.as_str_name(), id])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn suppression_ids_normalise_and_never_match_across_tenants_or_kinds() {
        let p = Pseudonymiser::new(&[9; 32]);
        let ids = p.suppression_of_contacts("acme", " Emily.J@Example.com", "+1 (415) 555-0100");
        assert_eq!(ids.len(), 2);
        assert_eq!(
            ids,
            p.suppression_of_contacts("acme", "emily.j@example.com", "14155550100")
        );
        assert_ne!(
            ids,
            p.suppression_of_contacts("other", "emily.j@example.com", "14155550100"),
            "tenants do not share suppressions"
        );
        // Nothing to normalise to, no id: people without a phone never share one.
        assert!(p.suppression_of_contacts("acme", "  ", "n/a").is_empty());
        // An external id that looks like an e-mail is not that e-mail's id.
        let subject = p.suppression_of_subject("acme", "emily.j@example.com");
        assert!(!ids.contains(&subject));
        assert_ne!(subject, p.audit_subject("acme", "emily.j@example.com"));
        assert!(!subject.contains("emily"));
    }

    proptest! {
        #[test]
        fn stable_within_a_purpose_and_unlinkable_across(
            id in "[a-z0-9-]{1,40}",
            other in "[a-z0-9-]{1,40}",
            secret in any::<[u8; 32]>(),
            other_secret in any::<[u8; 32]>(),
        ) {
            let p = Pseudonymiser::new(&secret);
            let a = p.pseudonym(Kind::Subject, "acme", Purpose::CxAnalytics, &id);
            prop_assert_eq!(&a, &p.pseudonym(Kind::Subject, "acme", Purpose::CxAnalytics, &id));
            prop_assert_eq!(a.len(), 32);
            prop_assert_ne!(&a, &p.pseudonym(Kind::Subject, "acme", Purpose::Marketing, &id));
            prop_assert_ne!(&a, &p.pseudonym(Kind::Interaction, "acme", Purpose::CxAnalytics, &id));
            prop_assert_ne!(&a, &p.pseudonym(Kind::Subject, "acme2", Purpose::CxAnalytics, &id));
            if other != id {
                prop_assert_ne!(&a, &p.pseudonym(Kind::Subject, "acme", Purpose::CxAnalytics, &other));
            }
            if other_secret != secret {
                let q = Pseudonymiser::new(&other_secret);
                prop_assert_ne!(&a, &q.pseudonym(Kind::Subject, "acme", Purpose::CxAnalytics, &id));
            }
            if id.len() >= 8 {
                prop_assert!(!a.contains(&id));
            }
        }
    }

    #[test]
    fn matches_a_known_hmac_vector() {
        // HMAC-SHA256 with a 32-byte zero key over the documented input, computed independently
        // with Python's hmac module.
        let p = Pseudonymiser::new(&[0; 32]);
        assert_eq!(
            p.pseudonym(Kind::Subject, "acme", Purpose::CxAnalytics, "cust-1"),
            KNOWN
        );
    }

    const KNOWN: &str = "d1c6ee12a0004194e3e66b52cb1307ce";
}
