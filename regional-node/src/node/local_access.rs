//! Who may call the in-country listener: the principals of `[[local_principals]]`, each with
//! its role, recognised by the name on their client certificate. Built when the node opens
//! (an invalid identity stops the start); the gRPC layer that applies it per call is
//! [`crate::api::local`].

use std::sync::Arc;

use rustls_pki_types::ServerName;

use crate::{
    config::{LocalRole, NodeConfig},
    error::NodeError,
};

/// Admission on the in-country listener: who is calling (their client certificate) and
/// whether their role may call the method.
#[derive(Debug, Clone)]
pub struct LocalAccess {
    /// `None`: a plaintext loopback listener, where every caller has every role.
    principals: Option<Arc<[Named]>>,
}

/// A named local principal: its certificate name, role, and principal string.
type Named = (ServerName<'static>, LocalRole, Arc<str>);

impl LocalAccess {
    /// From the configuration's `[[local_principals]]` when `[local_tls]` is set.
    pub fn from_config(config: &NodeConfig) -> Result<Self, NodeError> {
        if config.local_tls.is_none() {
            return Ok(Self { principals: None });
        }
        let principals = config
            .local_principals
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let name = ServerName::try_from(p.identity.clone()).map_err(|_| {
                    NodeError::Internal(format!(
                        "local_principals[{i}].identity: must be a DNS name"
                    ))
                })?;
                let principal: Arc<str> =
                    format!("local:{}/{}", p.identity, p.role.as_str()).into();
                Ok((name, p.role, principal))
            })
            .collect::<Result<Vec<_>, NodeError>>()?;
        Ok(Self {
            principals: Some(principals.into()),
        })
    }

    /// The principal and role of a caller presenting `leaf`, if it is a named principal.
    pub(crate) fn admit(&self, leaf: Option<&rustls_pki_types::CertificateDer<'_>>) -> Admitted {
        let Some(principals) = &self.principals else {
            return Admitted::Everyone;
        };
        let Some(leaf) = leaf else {
            return Admitted::Nobody;
        };
        principals
            .iter()
            .find(|(name, _, _)| domicile_ops::tls::valid_for(leaf, std::slice::from_ref(name)))
            .map_or(Admitted::Nobody, |(_, role, principal)| {
                Admitted::As(*role, principal.clone())
            })
    }
}

/// Who a caller is admitted as.
pub(crate) enum Admitted {
    /// A plaintext loopback listener: every caller, every role.
    Everyone,
    /// A named principal, with its role.
    As(LocalRole, Arc<str>),
    /// Not a named principal.
    Nobody,
}
