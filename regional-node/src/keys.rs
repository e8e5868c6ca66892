//! The region's secret files: the sealing key (32 raw bytes of X25519 private key) and the
//! pseudonym secret (32 random bytes), each mode 0600, created on first start if missing.

use std::{fs, io, path::Path};

use domicile_proto::seal::SealingKeyPair;

/// Loads the key pair at `path`, or creates one there if the file does not exist.
pub fn load_or_create(path: &Path) -> io::Result<SealingKeyPair> {
    match fs::read(path) {
        Ok(bytes) => SealingKeyPair::from_private_bytes(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("sealing key file {}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let keys = SealingKeyPair::generate();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir)?;
            }
            write_private(path, &keys.private_bytes())?;
            Ok(keys)
        }
        Err(e) => Err(e),
    }
}

/// Loads the 32-byte secret at `path`, or creates a random one there if the file does not exist.
pub fn load_or_create_secret(path: &Path) -> io::Result<[u8; 32]> {
    match fs::read(path) {
        Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("secret file {}: must hold exactly 32 bytes", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(io::Error::other)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir)?;
            }
            write_private(path, &secret)?;
            Ok(secret)
        }
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    fs::write(path, bytes)
}
