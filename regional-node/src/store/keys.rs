//! The region's secrets: the sealing key (32 raw bytes of X25519 private key), the pseudonym
//! secret, the audit key and the key-encryption key (32 random bytes each), files of mode 0600.
//!
//! A node only ever *loads* them: a missing secret stops the start with the option that names
//! it and the command that creates it (`domicile keygen`), because a secret invented at start
//! (an unmounted Kubernetes secret, a typo in a path) silently splits the region's data in two.
//! [`create_region_keys`] is the one place that makes them, used by `domicile keygen` and by
//! `domicile dev` on a new data directory.

use std::{fs, io, path::Path};

use domicile_proto::seal::SealingKeyPair;

use crate::{config::NodeConfig, error::NodeError};

/// What to tell an operator whose key is missing.
const HOW_TO_CREATE: &str = "create the region's keys once with `domicile keygen --config <node.toml>` (or restore them \
     from where they are kept); a node never creates a missing key";

fn missing(option: &str, path: &Path) -> NodeError {
    NodeError::Internal(format!(
        "{option}: {} does not exist: {HOW_TO_CREATE}",
        path.display()
    ))
}

fn unreadable(option: &str, path: &Path, e: impl std::fmt::Display) -> NodeError {
    NodeError::Internal(format!("{option}: {}: {e}", path.display()))
}

/// Loads the sealing key pair at `path`, the value of configuration option `option`.
pub fn load(path: &Path, option: &str) -> Result<SealingKeyPair, NodeError> {
    match fs::read(path) {
        Ok(bytes) => {
            SealingKeyPair::from_private_bytes(&bytes).map_err(|e| unreadable(option, path, e))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(missing(option, path)),
        Err(e) => Err(unreadable(option, path, e)),
    }
}

/// Loads the 32-byte secret at `path`, the value of configuration option `option`.
pub fn load_secret(path: &Path, option: &str) -> Result<[u8; 32], NodeError> {
    match fs::read(path) {
        Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| unreadable(option, path, "must hold exactly 32 bytes")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(missing(option, path)),
        Err(e) => Err(unreadable(option, path, e)),
    }
}

/// The key-encryption key held in the node's memory: from the environment variable `kek_env`
/// names (which must then be set), otherwise from `kek_file`.
pub fn load_kek(config: &NodeConfig) -> Result<[u8; 32], NodeError> {
    match &config.kek_env {
        Some(var) => load_kek_env(var, "kek_env"),
        None => load_secret(&config.kek_path(), "kek_file"),
    }
}

/// A KEK of 64 hex characters from the environment variable `var` (option `option`), which
/// must be set: an unset variable is an unmounted secret, never a reason to make one up.
pub fn load_kek_env(var: &str, option: &str) -> Result<[u8; 32], NodeError> {
    let value = std::env::var(var).map_err(|_| {
        NodeError::Internal(format!(
            "{option}: the environment variable {var} is not set (an unmounted secret?); \
             refusing to start without the region's key-encryption key"
        ))
    })?;
    hex::decode(value.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| NodeError::Internal(format!("{option}: {var} must hold 64 hex characters")))
}

/// The public facts of freshly created region keys, for printing.
#[derive(Debug)]
pub struct CreatedKeys {
    /// The sealing key's id.
    pub sealing_key_id: String,
    /// The sealing public key.
    pub sealing_public: [u8; 32],
    /// The audit log's public key (verifies checkpoints and releases).
    pub audit_public: [u8; 32],
    /// The KEK, for an operator who moves it into `kek_env` (`None` when it was not made
    /// here: `kek_env` is set, or the KEK lives in a token).
    pub kek: Option<[u8; 32]>,
}

/// Creates the secrets `config` names: the sealing key, the pseudonym secret, the audit key
/// and (unless `kek_env` or a PKCS#11 KEK is configured) the KEK file. Refuses, before writing
/// anything, when any of them exists: a region's keys are made once.
pub fn create_region_keys(config: &NodeConfig) -> Result<CreatedKeys, NodeError> {
    let kek_here = config.kek_env.is_none() && config.kek_pkcs11.is_none();
    let mut files = vec![
        ("sealing_key_file", config.sealing_key_path()),
        ("pseudonym_secret_file", config.pseudonym_secret_path()),
        ("audit_key_file", config.audit_key_path()),
    ];
    if kek_here {
        files.push(("kek_file", config.kek_path()));
    }
    for (option, path) in &files {
        if path.exists() {
            return Err(NodeError::Internal(format!(
                "{option}: {} exists: refusing to overwrite a key",
                path.display()
            )));
        }
    }
    let write = |option: &str, path: &Path, bytes: &[u8]| {
        write_private(path, bytes).map_err(|e| unreadable(option, path, e))
    };
    let sealing = SealingKeyPair::generate();
    write("sealing_key_file", &files[0].1, &sealing.private_bytes())?;
    write("pseudonym_secret_file", &files[1].1, &random()?)?;
    let audit_seed = random()?;
    write("audit_key_file", &files[2].1, &audit_seed)?;
    let kek = if kek_here {
        let kek = random()?;
        write("kek_file", &files[3].1, &kek)?;
        Some(kek)
    } else {
        None
    };
    Ok(CreatedKeys {
        sealing_key_id: sealing.public().key_id().to_owned(),
        sealing_public: *sealing.public().as_bytes(),
        audit_public: public_key_of(&audit_seed),
        kek,
    })
}

/// Creates only the sealing key `config` names (after a rotation moved the current one to
/// `previous_sealing_key_file`); refuses when it exists. Its key id.
pub fn create_sealing_key(config: &NodeConfig) -> Result<String, NodeError> {
    let path = config.sealing_key_path();
    let sealing = SealingKeyPair::generate();
    write_private(&path, &sealing.private_bytes()).map_err(|e| {
        NodeError::Internal(format!(
            "sealing_key_file: {}: {e} (an existing key is never overwritten)",
            path.display()
        ))
    })?;
    Ok(sealing.public().key_id().to_owned())
}

/// Whether the region's keys were created: its sealing key file exists.
pub fn region_keys_exist(config: &NodeConfig) -> bool {
    config.sealing_key_path().exists()
}

/// [`create_region_keys`] for a region seen for the first time (its sealing key file does not
/// exist): what `domicile dev`, the benchmark's clusters and tests do before starting a node
/// on a new directory. True when keys were made.
pub fn create_if_new(config: &NodeConfig) -> Result<bool, NodeError> {
    if region_keys_exist(config) {
        return Ok(false);
    }
    create_region_keys(config).map(|_| true)
}

fn random() -> Result<[u8; 32], NodeError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| NodeError::Internal(format!("randomness: {e}")))?;
    Ok(secret)
}

/// Writes `bytes` to a new file at `path` (mode 0600 on Unix), creating its directory; fails
/// if the file exists.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The public key of the region's identity (audit) key, from its seed (the audit key file):
/// the Ed25519 key that signs the audit chain and the region's statements.
pub fn public_key_of(seed: &[u8; 32]) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(seed)
        .verifying_key()
        .to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> NodeConfig {
        NodeConfig::from_toml(&format!(
            "region_id = \"eu-de\"\ncountries = [\"DE\"]\ninsecure_plaintext = true\n\
             database = \"{}\"\n",
            dir.join("eu-de.sqlite").display()
        ))
        .unwrap()
    }

    #[test]
    fn missing_secrets_are_refused_naming_the_option_and_keygen() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let err = load(&config.sealing_key_path(), "sealing_key_file")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sealing_key_file") && err.contains("domicile keygen"),
            "{err}"
        );
        let err = load_kek(&config).unwrap_err().to_string();
        assert!(
            err.contains("kek_file") && err.contains("domicile keygen"),
            "{err}"
        );
        // Nothing was created by trying.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_unset_kek_variable_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        create_region_keys(&config).unwrap();
        // The KEK file exists, but kek_env names a variable that is not set: that is an
        // unmounted secret, never a reason to fall back or to invent one.
        config.kek_env = Some("DOMICILE_TEST_KEK_THAT_IS_NOT_SET".into());
        let err = load_kek(&config).unwrap_err().to_string();
        assert!(err.contains("DOMICILE_TEST_KEK_THAT_IS_NOT_SET"), "{err}");
    }

    #[test]
    fn region_keys_are_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let created = create_region_keys(&config).unwrap();
        assert_eq!(load_kek(&config).unwrap(), created.kek.unwrap());
        let pair = load(&config.sealing_key_path(), "sealing_key_file").unwrap();
        assert_eq!(pair.public().key_id(), created.sealing_key_id.as_str());
        let err = create_region_keys(&config).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
        assert_eq!(load_kek(&config).unwrap(), created.kek.unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(config.kek_path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
