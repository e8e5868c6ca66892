//! Trust set up outside the gateway: the federation trust bundle (`domicile trust export` on a
//! node, `domicile trust bundle` to combine), the tenant DPO's keys (`domicile dpo keygen`),
//! and the development DPO key that `domicile dev` and the test federations register.

use std::path::{Path, PathBuf};

use anyhow::Context;
use domicile_proto::trust::{TrustBundle, dpo_key_id, read_signing_key};
use ed25519_dalek::SigningKey;

/// A DPO key made by `domicile dpo keygen` or [`DevDpo`]: the private key file (64 hex
/// characters, mode 0600) and the public key's hex and id.
pub fn dpo_keygen(out: &Path) -> anyhow::Result<(SigningKey, String, String)> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    crate::certs::write_private(out, hex::encode(seed).as_bytes())?;
    let key = SigningKey::from_bytes(&seed);
    let public = hex::encode(key.verifying_key().as_bytes());
    let id = dpo_key_id(&key.verifying_key());
    Ok((key, public, id))
}

/// The `[[key]]` entries of a node's `dpo_keys_file` registering `key` for `tenants`.
pub fn dpo_keys_toml(key: &SigningKey, tenants: &[String], label: &str) -> String {
    let public = hex::encode(key.verifying_key().as_bytes());
    let mut out = String::from(
        "# DPO keys registered per tenant: requests for a person's whole record must be signed\n\
         # by one of them (see the node's `dpo_keys_file`). Re-read when this file changes.\n",
    );
    for t in tenants {
        out.push_str(&format!(
            "\n[[key]]\ntenant = {t:?}\npublic_key = \"{public}\"\nlabel = {label:?}\n"
        ));
    }
    out
}

/// The development DPO key of a federation: one key registered for every listed tenant.
#[derive(Debug, Clone)]
pub struct DevDpo {
    /// The signing key.
    pub key: SigningKey,
    /// Its private key file (`dpo.key`, 64 hex characters).
    pub key_file: PathBuf,
    /// The nodes' `dpo_keys_file` registering it.
    pub keys_file: PathBuf,
}

impl DevDpo {
    /// The key in `dir` (made when missing), registered for `tenants` in `dir/dpo-keys.toml`.
    pub fn reuse_or_generate(dir: &Path, tenants: &[String]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key_file = dir.join("dpo.key");
        let key = if key_file.exists() {
            read_signing_key(&key_file).map_err(|e| anyhow::anyhow!(e))?
        } else {
            dpo_keygen(&key_file)?.0
        };
        let keys_file = dir.join("dpo-keys.toml");
        std::fs::write(
            &keys_file,
            dpo_keys_toml(&key, tenants, "development DPO key"),
        )?;
        Ok(Self {
            key,
            key_file,
            keys_file,
        })
    }
}

/// One region's bundle entry from its audit (identity) key file, as `domicile trust export`
/// prints it: a bundle holding that region alone.
pub fn export(
    region: &str,
    audit_key_file: &Path,
    expires_at: Option<i64>,
) -> anyhow::Result<TrustBundle> {
    let seed = std::fs::read(audit_key_file)
        .with_context(|| format!("reading the audit key {}", audit_key_file.display()))?;
    let seed: [u8; 32] = seed.as_slice().try_into().map_err(|_| {
        anyhow::anyhow!(
            "{}: an audit key is a 32-byte seed",
            audit_key_file.display()
        )
    })?;
    let public = SigningKey::from_bytes(&seed).verifying_key();
    let mut bundle = TrustBundle::new();
    bundle.insert(region, public.as_bytes(), expires_at);
    Ok(bundle)
}

/// Combines bundles (each region once: the same region with two different keys is an error,
/// never a silent choice).
pub fn combine(parts: &[TrustBundle]) -> anyhow::Result<TrustBundle> {
    let mut out = TrustBundle::new();
    for part in parts {
        for (region, entry) in &part.regions {
            if let Some(existing) = out.regions.get(region)
                && existing.identity_public_key != entry.identity_public_key
            {
                anyhow::bail!(
                    "region {region} appears with two different identity keys; ask its operator which is current"
                );
            }
            out.regions.insert(region.clone(), entry.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_combine_and_conflicts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let de = dir.path().join("de.key");
        let fr = dir.path().join("fr.key");
        std::fs::write(&de, [1u8; 32]).unwrap();
        std::fs::write(&fr, [2u8; 32]).unwrap();
        let a = export("eu-de", &de, None).unwrap();
        let b = export("eu-fr", &fr, Some(2_000_000_000)).unwrap();
        let both = combine(&[a.clone(), b]).unwrap();
        assert_eq!(both.regions.len(), 2);
        let forged = export("eu-de", &fr, None).unwrap();
        assert!(
            combine(&[a, forged])
                .unwrap_err()
                .to_string()
                .contains("eu-de")
        );
    }

    #[test]
    fn the_dev_key_is_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let tenants = vec!["acme".to_owned()];
        let first = DevDpo::reuse_or_generate(dir.path(), &tenants).unwrap();
        let again = DevDpo::reuse_or_generate(dir.path(), &tenants).unwrap();
        assert_eq!(first.key.to_bytes(), again.key.to_bytes());
        let toml = std::fs::read_to_string(&again.keys_file).unwrap();
        assert!(toml.contains(&hex::encode(first.key.verifying_key().as_bytes())));
    }
}
