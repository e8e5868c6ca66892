//! A development PKI (`domicile certs`): a CA, the gateway's certificate and one per region,
//! each valid for the identity the other side pins, plus `localhost` and `127.0.0.1` for local
//! runs. ECDSA P-256 keys, files mode 0600.
//!
//! Identities: the gateway is `gateway.domicile` (what nodes pin as `gateway_identity`); a
//! region's node is `<region>.node.domicile` (what the gateway verifies, see
//! [`node_identity`]).

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// The gateway's identity in the development PKI.
pub const GATEWAY_IDENTITY: &str = "gateway.domicile";

/// The identity of `region`'s node.
pub fn node_identity(region: &str) -> String {
    format!("{region}.node.domicile")
}

/// The PKI in `dir`: the existing one when it covers `regions`, else a new one.
pub fn reuse_or_generate(dir: &Path, regions: &[String]) -> anyhow::Result<Pki> {
    let pki = Pki {
        dir: dir.to_owned(),
    };
    let complete = pki.ca().exists()
        && regions
            .iter()
            .all(|r| pki.pair(&format!("node-{r}")).1.exists());
    if complete {
        return Ok(pki);
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    generate(dir, regions, "client.domicile")
}

/// The files of a generated PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The directory.
    pub dir: PathBuf,
}

impl Pki {
    /// The CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The certificate and key of `name` (`gateway`, `node-<region>`, `client`).
    pub fn pair(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        )
    }
}

/// Writes a new file readable by its owner only (mode 0600); an existing file is an error,
/// never overwritten.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .with_context(|| format!("creating {} (it must not exist)", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

fn leaf(
    names: &[String],
    usages: &[ExtendedKeyUsagePurpose],
    issuer: &CertifiedIssuer<'_, KeyPair>,
) -> anyhow::Result<(String, String)> {
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages.to_vec();
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A new CA named `name`, its certificate written to `dir/ca.pem` (its key is not kept).
fn new_ca(dir: &Path, name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    std::fs::write(dir.join("ca.pem"), issuer.pem())?;
    Ok(issuer)
}

/// A development PKI for a region's in-country listener, apart from the federation's: its own
/// CA, the listener's certificate (`local`, for `localhost` and 127.0.0.1) and one client
/// certificate per identity in `clients` (files named by the identity).
pub fn generate_local(dir: &Path, clients: &[&str]) -> anyhow::Result<Pki> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    anyhow::ensure!(
        !dir.join("ca.pem").exists(),
        "{} exists: refusing to overwrite a PKI",
        dir.join("ca.pem").display()
    );
    let issuer = new_ca(dir, "Domicile region CA (development)")?;
    let pki = Pki {
        dir: dir.to_owned(),
    };
    let server = [ExtendedKeyUsagePurpose::ServerAuth];
    let client = [ExtendedKeyUsagePurpose::ClientAuth];
    let mut issued = vec![("local".to_owned(), "localhost".to_owned(), &server[..])];
    issued.extend(
        clients
            .iter()
            .map(|c| ((*c).to_owned(), (*c).to_owned(), &client[..])),
    );
    for (file, name, usages) in issued {
        let (cert, key) = leaf(&[name], usages, &issuer)?;
        let (cert_path, key_path) = pki.pair(&file);
        std::fs::write(cert_path, cert)?;
        write_private(&key_path, key.as_bytes())?;
    }
    Ok(pki)
}

/// Writes a CA, a gateway certificate, a certificate per region and a client certificate for
/// `client_identity` into `dir` (created if missing). Existing files are never overwritten.
pub fn generate(dir: &Path, regions: &[String], client_identity: &str) -> anyhow::Result<Pki> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    anyhow::ensure!(
        !dir.join("ca.pem").exists(),
        "{} exists: refusing to overwrite a PKI",
        dir.join("ca.pem").display()
    );
    // The CA's key is not kept: this PKI issues once; regenerate it to add a region.
    let issuer = new_ca(dir, "Domicile development CA")?;

    let both = [
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let mut issued = vec![(
        "gateway".to_owned(),
        vec![GATEWAY_IDENTITY.to_owned(), "localhost".to_owned()],
        &both[..],
    )];
    for region in regions {
        issued.push((
            format!("node-{region}"),
            vec![node_identity(region), "localhost".to_owned()],
            &both[..],
        ));
    }
    issued.push((
        "client".to_owned(),
        vec![client_identity.to_owned()],
        &[ExtendedKeyUsagePurpose::ClientAuth][..],
    ));
    let pki = Pki {
        dir: dir.to_owned(),
    };
    for (name, names, usages) in issued {
        let (cert, key) = leaf(&names, usages, &issuer)?;
        let (cert_path, key_path) = pki.pair(&name);
        std::fs::write(cert_path, cert)?;
        write_private(&key_path, key.as_bytes())?;
    }
    Ok(pki)
}
