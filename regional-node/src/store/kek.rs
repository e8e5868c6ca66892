//! The region's key-encryption key (KEK), which wraps every subject's data key in the vault.
//!
//! Two custodies: the KEK in the node's memory (from `kek_file` or `kek_env`), wrapping with
//! XChaCha20-Poly1305; or an AES-256 key inside a PKCS#11 token (`[kek_pkcs11]`: an HSM, or a
//! cloud KMS's PKCS#11 library), wrapping with AES-GCM performed by the token, so that the KEK
//! never enters the node's memory. Both bind the wrapped key to what it is (the AAD names the
//! tenant and the subject reference).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
};

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use cryptoki::{
    context::{CInitializeArgs, CInitializeFlags, Pkcs11},
    mechanism::{Mechanism, aead::GcmParams},
    object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle},
    session::{Session, UserType},
    types::AuthPin,
};

pub use crate::config::{KekSource, Pkcs11Config};
use crate::{config::NodeConfig, error::NodeError};

/// A key-encryption key: wraps and unwraps data keys, bound to an AAD.
#[derive(Clone)]
pub struct Kek(Custody);

#[derive(Clone)]
enum Custody {
    Memory {
        cipher: XChaCha20Poly1305,
        /// The subject-lookup key that vaults made before the lookup key was kept wrapped
        /// in the vault derived from the KEK; kept to open those vaults.
        legacy_lookup: [u8; 32],
    },
    Token(Arc<TokenKey>),
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Custody::Memory { .. } => f.write_str("Kek(memory, <redacted>)"),
            Custody::Token(t) => write!(f, "Kek(pkcs11 {:?})", t.label),
        }
    }
}

impl From<&[u8; 32]> for Kek {
    fn from(raw: &[u8; 32]) -> Self {
        Self::in_memory(raw)
    }
}

const NONCE_LEN: usize = 24;
const GCM_IV_LEN: usize = 12;

impl Kek {
    /// A KEK held in memory.
    pub fn in_memory(raw: &[u8; 32]) -> Self {
        use sha2::Digest;
        Self(Custody::Memory {
            cipher: XChaCha20Poly1305::new_from_slice(raw).expect("32-byte key"),
            legacy_lookup: sha2::Sha256::digest(
                [b"domicile/v1/subject-lookup".as_slice(), b"\0", raw].concat(),
            )
            .into(),
        })
    }

    /// The KEK `config` names: `[kek_pkcs11]`, else `kek_env`, else `kek_file`. Never created.
    pub fn open(config: &NodeConfig) -> Result<Self, NodeError> {
        match &config.kek_pkcs11 {
            Some(p) => Ok(Self(Custody::Token(Arc::new(TokenKey::open(p)?)))),
            None => Ok(Self::in_memory(&crate::store::keys::load_kek(config)?)),
        }
    }

    /// The KEK being rotated out, when `[previous_kek]` is configured.
    pub fn open_previous(config: &NodeConfig) -> Result<Option<Self>, NodeError> {
        let Some(source) = &config.previous_kek else {
            return Ok(None);
        };
        let kek = match (&source.file, &source.env, &source.pkcs11) {
            (Some(file), None, None) => {
                Self::in_memory(&crate::store::keys::load_secret(file, "previous_kek.file")?)
            }
            (None, Some(var), None) => {
                Self::in_memory(&crate::store::keys::load_kek_env(var, "previous_kek.env")?)
            }
            (None, None, Some(p)) => Self(Custody::Token(Arc::new(TokenKey::open(p)?))),
            _ => {
                return Err(NodeError::Internal(
                    "previous_kek: set exactly one of file, env and pkcs11".into(),
                ));
            }
        };
        Ok(Some(kek))
    }

    /// The lookup key of a vault made before lookup keys were kept in the vault (only an
    /// in-memory KEK can derive it).
    pub(crate) fn legacy_lookup(&self) -> Option<[u8; 32]> {
        match &self.0 {
            Custody::Memory { legacy_lookup, .. } => Some(*legacy_lookup),
            Custody::Token(_) => None,
        }
    }

    /// Wraps `plaintext` bound to `aad`.
    pub fn wrap(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, NodeError> {
        match &self.0 {
            Custody::Memory { cipher, .. } => seal(cipher, aad, plaintext),
            Custody::Token(token) => token.encrypt(aad, plaintext),
        }
    }

    /// Unwraps `blob` bound to `aad`; `None` when it was not wrapped by this KEK for `aad`.
    /// An `Err` is a token that cannot be reached, not a wrong key.
    pub fn unwrap(&self, aad: &[u8], blob: &[u8]) -> Result<Option<Vec<u8>>, NodeError> {
        match &self.0 {
            Custody::Memory { cipher, .. } => Ok(open(cipher, aad, blob)),
            Custody::Token(token) => token.decrypt(aad, blob),
        }
    }
}

/// `N` random bytes from the operating system.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], NodeError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| NodeError::Internal(format!("randomness: {e}")))?;
    Ok(out)
}

/// 16 random bytes in hex: an identifier nobody can guess (request, hold and case ids).
pub(crate) fn random_hex() -> Result<String, NodeError> {
    Ok(hex::encode(random::<16>()?))
}

/// `nonce(24) ‖ XChaCha20-Poly1305(cipher, aad, plaintext)`: how an in-memory KEK wraps, and
/// how a subject's data key seals its fields ([`crate::store::vault`]).
pub(crate) fn seal(
    cipher: &XChaCha20Poly1305,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, NodeError> {
    let nonce = random::<NONCE_LEN>()?;
    let ct = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| NodeError::Internal("encryption failed".into()))?;
    Ok([nonce.as_slice(), &ct].concat())
}

/// Opens what [`seal`] made with `cipher` for `aad`; `None` otherwise.
pub(crate) fn open(cipher: &XChaCha20Poly1305, aad: &[u8], blob: &[u8]) -> Option<Vec<u8>> {
    if blob.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ct) = blob.split_at(NONCE_LEN);
    let nonce = XNonce::try_from(nonce).ok()?;
    cipher.decrypt(&nonce, Payload { msg: ct, aad }).ok()
}

/// A PKCS#11 library is initialised once per process (a second `C_Initialize` fails, and
/// `C_Finalize` would cut every other session): one context per module path, kept.
fn module(path: &std::path::Path) -> Result<Pkcs11, NodeError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(m) = modules.get(path) {
        return Ok(m.clone());
    }
    let context = Pkcs11::new(path).map_err(|e| {
        NodeError::Internal(format!(
            "kek_pkcs11.module: cannot load {}: {e}",
            path.display()
        ))
    })?;
    context
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| NodeError::Internal(format!("kek_pkcs11.module: C_Initialize: {e}")))?;
    modules.insert(path.to_owned(), context.clone());
    Ok(context)
}

fn pin_of(config: &Pkcs11Config) -> Result<AuthPin, NodeError> {
    let pin = match (&config.pin_file, &config.pin_env) {
        (Some(file), _) => std::fs::read_to_string(file).map_err(|e| {
            NodeError::Internal(format!("kek_pkcs11.pin_file: {}: {e}", file.display()))
        })?,
        (None, Some(var)) => std::env::var(var).map_err(|_| {
            NodeError::Internal(format!(
                "kek_pkcs11.pin_env: the environment variable {var} is not set"
            ))
        })?,
        (None, None) => {
            return Err(NodeError::Internal(
                "kek_pkcs11: set pin_file or pin_env (the token's user PIN)".into(),
            ));
        }
    };
    Ok(AuthPin::new(pin.trim_end().to_owned().into()))
}

/// A logged-in session on the token, and the KEK's handle in it.
struct TokenKey {
    label: String,
    session: Mutex<Session>,
    key: ObjectHandle,
}

impl TokenKey {
    /// The session on `config`'s token, logged in as the user.
    fn session(config: &Pkcs11Config) -> Result<Session, NodeError> {
        let context = module(&config.module)?;
        let err = |what: &str, e: cryptoki::error::Error| {
            NodeError::Internal(format!("kek_pkcs11: {what}: {e}"))
        };
        let mut slot = None;
        for s in context
            .get_slots_with_token()
            .map_err(|e| err("listing slots", e))?
        {
            let info = context
                .get_token_info(s)
                .map_err(|e| err("reading a token", e))?;
            if info.label().trim_end() == config.token_label {
                slot = Some(s);
                break;
            }
        }
        let slot = slot.ok_or_else(|| {
            NodeError::Internal(format!(
                "kek_pkcs11.token_label: no token labelled {:?} in {}",
                config.token_label,
                config.module.display()
            ))
        })?;
        let session = context
            .open_rw_session(slot)
            .map_err(|e| err("opening a session", e))?;
        match session.login(UserType::User, Some(&pin_of(config)?)) {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {}
            Err(e) => {
                return Err(NodeError::Internal(format!(
                    "kek_pkcs11: the token refused the PIN (pin_file/pin_env): {e}"
                )));
            }
        }
        Ok(session)
    }

    fn find(session: &Session, label: &str) -> Result<Vec<ObjectHandle>, NodeError> {
        session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(|e| NodeError::Internal(format!("kek_pkcs11: finding the key: {e}")))
    }

    fn open(config: &Pkcs11Config) -> Result<Self, NodeError> {
        let session = Self::session(config)?;
        let key = match Self::find(&session, &config.key_label)?.as_slice() {
            [one] => *one,
            [] => {
                return Err(NodeError::Internal(format!(
                    "kek_pkcs11.key_label: the token holds no secret key labelled {:?} \
                     (`domicile keygen --config` creates one)",
                    config.key_label
                )));
            }
            _ => {
                return Err(NodeError::Internal(format!(
                    "kek_pkcs11.key_label: the token holds several keys labelled {:?}",
                    config.key_label
                )));
            }
        };
        Ok(Self {
            label: config.key_label.clone(),
            session: Mutex::new(session),
            key,
        })
    }

    fn encrypt(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, NodeError> {
        let mut iv = random::<GCM_IV_LEN>()?;
        let iv_copy = iv;
        let params = GcmParams::new(&mut iv, aad, 128.into())
            .map_err(|e| NodeError::Internal(format!("kek_pkcs11: GCM parameters: {e}")))?;
        let session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let ct = session
            .encrypt(&Mechanism::AesGcm(params), self.key, plaintext)
            .map_err(|e| NodeError::Internal(format!("kek_pkcs11: wrapping: {e}")))?;
        Ok([iv_copy.as_slice(), &ct].concat())
    }

    fn decrypt(&self, aad: &[u8], blob: &[u8]) -> Result<Option<Vec<u8>>, NodeError> {
        if blob.len() < GCM_IV_LEN + 16 {
            return Ok(None);
        }
        let (iv, ct) = blob.split_at(GCM_IV_LEN);
        let mut iv = <[u8; GCM_IV_LEN]>::try_from(iv).expect("12 bytes");
        let params = GcmParams::new(&mut iv, aad, 128.into())
            .map_err(|e| NodeError::Internal(format!("kek_pkcs11: GCM parameters: {e}")))?;
        let session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        match session.decrypt(&Mechanism::AesGcm(params), self.key, ct) {
            Ok(clear) => Ok(Some(clear)),
            // A tag that does not verify: not wrapped by this key for this AAD. SoftHSM2 says
            // so with CKR_GENERAL_ERROR; a token that is gone answers DEVICE_* or SESSION_*.
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::EncryptedDataInvalid
                | cryptoki::error::RvError::EncryptedDataLenRange
                | cryptoki::error::RvError::GeneralError,
                _,
            )) => Ok(None),
            Err(e) => Err(NodeError::Internal(format!("kek_pkcs11: unwrapping: {e}"))),
        }
    }
}

/// Creates the KEK in the token `config` names: an AES-256 key that never leaves it
/// (sensitive, not extractable), for wrapping only. Refuses when a key of that label exists.
pub fn create_token_key(config: &Pkcs11Config) -> Result<(), NodeError> {
    let session = TokenKey::session(config)?;
    if !TokenKey::find(&session, &config.key_label)?.is_empty() {
        return Err(NodeError::Internal(format!(
            "kek_pkcs11.key_label: the token already holds a key labelled {:?}: refusing to \
             make another",
            config.key_label
        )));
    }
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Label(config.key_label.as_bytes().to_vec()),
            ],
        )
        .map_err(|e| NodeError::Internal(format!("kek_pkcs11: generating the key: {e}")))?;
    Ok(())
}

/// Whether the token's key can be read out of it (it must not): its `CKA_EXTRACTABLE` and
/// `CKA_SENSITIVE`, for the tests and `domicile node check`.
pub fn token_key_is_sealed(config: &Pkcs11Config) -> Result<bool, NodeError> {
    let token = TokenKey::open(config)?;
    let session = token.session.lock().unwrap_or_else(|p| p.into_inner());
    let attrs = session
        .get_attributes(
            token.key,
            &[AttributeType::Extractable, AttributeType::Sensitive],
        )
        .map_err(|e| NodeError::Internal(format!("kek_pkcs11: reading attributes: {e}")))?;
    let mut sealed = true;
    for a in attrs {
        match a {
            Attribute::Extractable(x) => sealed &= !x,
            Attribute::Sensitive(s) => sealed &= s,
            _ => {}
        }
    }
    Ok(sealed)
}
