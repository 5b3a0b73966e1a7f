//! How a segment's pages become stored bytes and back: compression (zstd, or gzip on request),
//! then age encryption to x25519 recipients when any are configured. The host that writes
//! backups holds only public keys; reading an encrypted backup takes an [`Identity`].

use std::io::{Read, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// Compression and encryption of new segments.
#[derive(Clone)]
pub struct Codec {
    /// `zstd` or `gzip`.
    pub compression: String,
    /// The level.
    pub level: u32,
    recipients: Vec<age::x25519::Recipient>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("compression", &self.compression)
            .field("level", &self.level)
            .field("recipients", &self.recipients.len())
            .finish()
    }
}

impl Codec {
    /// A codec for `compression` (`zstd` at `zstd_level`, or `gzip` at 6) encrypting to
    /// `recipients` (`age1...`; none: no encryption).
    pub fn new(compression: &str, zstd_level: u32, recipients: &[String]) -> Result<Codec> {
        let level = match compression {
            "zstd" => zstd_level,
            "gzip" => 6,
            other => {
                return Err(Error::invalid(
                    "invalid_value",
                    Some("compression".into()),
                    format!("compression must be zstd or gzip, not {other:?}"),
                ));
            }
        };
        let recipients = recipients
            .iter()
            .map(|r| {
                r.parse::<age::x25519::Recipient>().map_err(|_| {
                    Error::invalid(
                        "invalid_value",
                        Some("recipients".into()),
                        format!("{r:?} is not an age public key (age1...)"),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Codec {
            compression: compression.to_owned(),
            level,
            recipients,
        })
    }

    /// The recipients, as written in the config.
    pub fn recipients(&self) -> Vec<String> {
        self.recipients.iter().map(ToString::to_string).collect()
    }

    /// Compresses, then encrypts when there are recipients.
    pub fn encode(&self, plain: &[u8]) -> Result<Vec<u8>> {
        let compressed = compress(&self.compression, self.level, plain)?;
        if self.recipients.is_empty() {
            return Ok(compressed);
        }
        let internal = |e: &dyn std::fmt::Display| Error::Internal {
            message: format!("encrypt segment: {e}"),
        };
        let encryptor = age::Encryptor::with_recipients(
            self.recipients.iter().map(|r| r as &dyn age::Recipient),
        )
        .map_err(|e| internal(&e))?;
        let mut out = Vec::with_capacity(compressed.len() + 256);
        let mut w = encryptor.wrap_output(&mut out).map_err(|e| internal(&e))?;
        w.write_all(&compressed).map_err(|e| internal(&e))?;
        w.finish().map_err(|e| internal(&e))?;
        Ok(out)
    }
}

fn compress(compression: &str, level: u32, plain: &[u8]) -> Result<Vec<u8>> {
    let internal = |e: std::io::Error| Error::Internal {
        message: format!("compress segment: {e}"),
    };
    if compression == "gzip" {
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(plain.len() / 2),
            flate2::Compression::new(level),
        );
        enc.write_all(plain).map_err(internal)?;
        return enc.finish().map_err(internal);
    }
    zstd::bulk::compress(plain, level as i32).map_err(internal)
}

/// Turns a segment's stored bytes back into its pages (`plain_len` bytes).
pub fn decode(
    stored: &[u8],
    compression: &str,
    encrypted: bool,
    identity: Option<&Identity>,
    plain_len: usize,
) -> std::result::Result<Vec<u8>, String> {
    let decrypted;
    let compressed = if encrypted {
        let identity = identity.ok_or("encrypted, and no identity was given")?;
        let decryptor = age::Decryptor::new(stored).map_err(|e| format!("age header: {e}"))?;
        let mut reader = decryptor
            .decrypt(identity.0.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(|e| format!("decrypt: {e}"))?;
        let mut out = Vec::new();
        reader
            .read_to_end(&mut out)
            .map_err(|e| format!("decrypt: {e}"))?;
        decrypted = out;
        &decrypted[..]
    } else {
        stored
    };
    let plain = if compression == "gzip" {
        let mut out = Vec::with_capacity(plain_len);
        flate2::read::GzDecoder::new(compressed)
            .read_to_end(&mut out)
            .map_err(|e| format!("gunzip: {e}"))?;
        out
    } else {
        zstd::bulk::decompress(compressed, plain_len).map_err(|e| format!("zstd: {e}"))?
    };
    if plain.len() != plain_len {
        return Err(format!(
            "decodes to {} bytes, not the {plain_len} its pages need",
            plain.len()
        ));
    }
    Ok(plain)
}

/// age identities (secret keys) that can read encrypted backups.
pub struct Identity(Vec<Box<dyn age::Identity + Send + Sync>>);

impl std::fmt::Debug for Identity {
    // Never print a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({} keys)", self.0.len())
    }
}

impl Identity {
    /// Reads an age identity file (`AGE-SECRET-KEY-1...` lines, as `age-keygen` writes).
    pub fn from_file(path: &Path) -> Result<Identity> {
        let file = age::IdentityFile::from_file(path.display().to_string())
            .map_err(|e| Error::io("read identity file", path, e))?;
        let ids = file.into_identities().map_err(|e| {
            Error::backup(
                "identity_invalid",
                format!("identity file {}: {e}", path.display()),
                Some("pass the file age-keygen wrote (AGE-SECRET-KEY-1... lines)"),
            )
        })?;
        if ids.is_empty() {
            return Err(Error::backup(
                "identity_invalid",
                format!("identity file {} holds no key", path.display()),
                None,
            ));
        }
        Ok(Identity(ids))
    }

    /// An identity from the text of an identity file.
    pub fn from_text(text: &str) -> Result<Identity> {
        let file = age::IdentityFile::from_buffer(text.as_bytes())
            .map_err(|e| Error::backup("identity_invalid", format!("identity: {e}"), None))?;
        let ids = file
            .into_identities()
            .map_err(|e| Error::backup("identity_invalid", format!("identity: {e}"), None))?;
        Ok(Identity(ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    #[test]
    fn round_trips_with_and_without_encryption() {
        let plain: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_be_bytes())
            .collect();
        for compression in ["zstd", "gzip"] {
            let codec = Codec::new(compression, 3, &[]).expect("codec");
            let stored = codec.encode(&plain).expect("encode");
            assert!(stored.len() < plain.len());
            let back = decode(&stored, compression, false, None, plain.len()).expect("decode");
            assert_eq!(back, plain);
        }
        let key = age::x25519::Identity::generate();
        let codec = Codec::new("zstd", 3, &[key.to_public().to_string()]).expect("codec");
        let stored = codec.encode(&plain).expect("encode");
        let identity = Identity::from_text(key.to_string().expose_secret()).expect("identity");
        let back = decode(&stored, "zstd", true, Some(&identity), plain.len()).expect("decode");
        assert_eq!(back, plain);
        assert!(decode(&stored, "zstd", true, None, plain.len()).is_err());
        let other = age::x25519::Identity::generate();
        let wrong = Identity::from_text(other.to_string().expose_secret()).expect("identity");
        assert!(decode(&stored, "zstd", true, Some(&wrong), plain.len()).is_err());
    }
}
