//! Signed tree heads: C2SP tlog-checkpoint bodies in C2SP signed notes,
//! signed with Ed25519.
//!
//! A checkpoint commits to a log's origin, tree size and root hash
//! (c2sp.org/tlog-checkpoint, "Note text"):
//!
//! ```text
//! <origin>
//! <tree size in decimal>
//! <base64 root hash>
//! ```
//!
//! It is published as a signed note (c2sp.org/signed-note): the text, a blank
//! line, then one line per signature, `— <key name> <base64(key ID || signature)>`.
//! Keys travel as the strings of golang.org/x/mod/sumdb/note, which the C2SP
//! ecosystem shares: verifier keys `<name>+<hex key ID>+<base64(0x01 || public key)>`
//! and signer keys `PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>`.
//!
//! The module is pure apart from [`CheckpointSigner::generate`], which draws
//! a seed from the operating system.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::merkle::Hash;

/// The signature type byte of Ed25519 (signed-note, "Signature types").
const ALG_ED25519: u8 = 0x01;

/// Every signature line opens with an em dash (U+2014) and a space.
const SIGNATURE_LINE_PREFIX: &str = "\u{2014} ";

/// Signer key strings open with this, so they are never mistaken for
/// verifier keys.
const PRIVATE_KEY_PREFIX: &str = "PRIVATE+KEY+";

/// Signed-note asks verifiers to cap the signatures per note and to accept at
/// least 16; 100 is the cap of golang.org/x/mod/sumdb/note.
const MAX_SIGNATURES: usize = 100;

const KEY_ID_LEN: usize = 4;

/// The 4-byte key ID that names a key inside signature lines.
pub type KeyId = [u8; KEY_ID_LEN];

/// Why a key, note or checkpoint was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointError {
    /// A verifier or signer key string is not in the expected format.
    MalformedKey(&'static str),
    /// The key ID in a key string is not the one its name and key give.
    KeyIdMismatch,
    /// The key is of a signature type other than Ed25519 (0x01).
    UnsupportedKeyType(u8),
    /// A key name is empty or has a space, a `+` or a control character.
    InvalidKeyName,
    /// A checkpoint origin is empty or has a control character.
    InvalidOrigin,
    /// The text is not a well-formed signed note (or note text to sign).
    MalformedNote(&'static str),
    /// The note carries no signature by the verifier's key.
    NoVerifiedSignature,
    /// A signature by the verifier's key does not verify.
    InvalidSignature,
    /// The note text is not a well-formed checkpoint.
    MalformedCheckpoint(&'static str),
    /// The operating system could not supply randomness for a new key.
    Randomness(getrandom::Error),
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MalformedKey(why) => write!(f, "malformed key: {why}"),
            Self::KeyIdMismatch => f.write_str("key ID does not match the key"),
            Self::UnsupportedKeyType(alg) => write!(f, "unsupported key type 0x{alg:02x}"),
            Self::InvalidKeyName => f.write_str("invalid key name"),
            Self::InvalidOrigin => f.write_str("invalid checkpoint origin"),
            Self::MalformedNote(why) => write!(f, "malformed note: {why}"),
            Self::NoVerifiedSignature => f.write_str("note has no signature by the trusted key"),
            Self::InvalidSignature => f.write_str("invalid signature by the trusted key"),
            Self::MalformedCheckpoint(why) => write!(f, "malformed checkpoint: {why}"),
            Self::Randomness(err) => write!(f, "no randomness for key generation: {err}"),
        }
    }
}

// No `source()`: getrandom's error implements `std::error::Error` only with
// its `std` feature, and Display above already carries its message.
impl std::error::Error for CheckpointError {}

/// A log's signed statement of its tree head (c2sp.org/tlog-checkpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, e.g. `ledgerline.example/tenant-42`.
    pub origin: String,
    /// The number of leaves in the tree.
    pub size: u64,
    /// The RFC 6962 root of the tree at `size`.
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: origin, size and root, one per line, each ending in a
    /// newline. This is exactly the text that gets signed.
    pub fn to_note_text(&self) -> Result<String, CheckpointError> {
        if !is_valid_origin(&self.origin) {
            return Err(CheckpointError::InvalidOrigin);
        }
        Ok(format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root)
        ))
    }

    /// Parses checkpoint note text (c2sp.org/tlog-checkpoint, "Note text").
    ///
    /// Extension lines after the root are allowed by the format; they must be
    /// non-empty and are otherwise ignored (this log never writes any).
    pub fn from_note_text(text: &str) -> Result<Self, CheckpointError> {
        let body = text
            .strip_suffix('\n')
            .ok_or(CheckpointError::MalformedCheckpoint(
                "text must end in a newline",
            ))?;
        let mut lines = body.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(CheckpointError::MalformedCheckpoint(
                "fewer than three lines",
            ));
        };
        if !is_valid_origin(origin) {
            return Err(CheckpointError::InvalidOrigin);
        }
        if lines.any(str::is_empty) {
            return Err(CheckpointError::MalformedCheckpoint("empty extension line"));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size: parse_tree_size(size)?,
            root: parse_root_hash(root)?,
        })
    }
}

/// The tree size line: ASCII decimal without leading zeroes (just `0` for
/// the empty tree). `u64::from_str` alone would also take a `+` sign.
fn parse_tree_size(line: &str) -> Result<u64, CheckpointError> {
    let malformed = CheckpointError::MalformedCheckpoint("tree size is not a canonical decimal");
    if line.is_empty() || !line.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed);
    }
    if line.len() > 1 && line.starts_with('0') {
        return Err(malformed);
    }
    line.parse().map_err(|_| malformed)
}

/// The root hash line: standard base64 of exactly 32 bytes. The engine
/// insists on canonical padding and trailing bits, so each root has one
/// accepted spelling.
fn parse_root_hash(line: &str) -> Result<Hash, CheckpointError> {
    let malformed = CheckpointError::MalformedCheckpoint("root hash is not base64 of 32 bytes");
    let bytes = BASE64.decode(line).map_err(|_| malformed.clone())?;
    bytes.try_into().map_err(|_| malformed)
}

/// tlog-checkpoint: the origin MUST be non-empty; signed-note forbids control
/// characters anywhere, and a newline would end the line.
fn is_valid_origin(origin: &str) -> bool {
    !origin.is_empty() && !origin.chars().any(char::is_control)
}

/// signed-note: key names MUST be non-empty and MUST NOT contain Unicode
/// spaces or `+`; control characters are banned from notes altogether.
fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '+')
}

/// signed-note, "Signatures": key ID = SHA-256(key name || 0x0A || 0x01 ||
/// 32-byte Ed25519 public key)[:4].
fn ed25519_key_id(name: &str, public_key: &VerifyingKey) -> KeyId {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([ALG_ED25519]);
    hasher.update(public_key.as_bytes());
    let digest = hasher.finalize();
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    id
}

/// The parts every key string shares after its optional `PRIVATE+KEY+`:
/// `<name>+<hex key ID>+<base64(0x01 || 32 key bytes)>`.
struct KeyString<'a> {
    name: &'a str,
    key_id: KeyId,
    key_bytes: [u8; 32],
}

impl<'a> KeyString<'a> {
    fn parse(s: &'a str) -> Result<Self, CheckpointError> {
        // Names cannot hold `+` but base64 can, so only the first two split.
        let mut parts = s.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CheckpointError::MalformedKey(
                "expected <name>+<key ID>+<key>",
            ));
        };
        if !is_valid_key_name(name) {
            return Err(CheckpointError::InvalidKeyName);
        }
        let mut key_id = [0u8; KEY_ID_LEN];
        if id_hex.len() != 2 * KEY_ID_LEN || hex::decode_to_slice(id_hex, &mut key_id).is_err() {
            return Err(CheckpointError::MalformedKey("key ID is not 8 hex digits"));
        }
        let key = BASE64
            .decode(key_b64)
            .map_err(|_| CheckpointError::MalformedKey("key is not base64"))?;
        let Some((&alg, key_bytes)) = key.split_first() else {
            return Err(CheckpointError::MalformedKey("empty key"));
        };
        if alg != ALG_ED25519 {
            return Err(CheckpointError::UnsupportedKeyType(alg));
        }
        let key_bytes = key_bytes
            .try_into()
            .map_err(|_| CheckpointError::MalformedKey("Ed25519 key is not 32 bytes"))?;
        Ok(Self {
            name,
            key_id,
            key_bytes,
        })
    }
}

/// Encodes `<name>+<hex key ID>+<base64(0x01 || key bytes)>`.
fn encode_key_string(name: &str, key_id: &KeyId, key_bytes: &[u8; 32]) -> String {
    let mut key = Vec::with_capacity(33);
    key.push(ALG_ED25519);
    key.extend_from_slice(key_bytes);
    format!("{name}+{}+{}", hex::encode(key_id), BASE64.encode(key))
}

/// Checks a signed note against one trusted Ed25519 key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_id: KeyId,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses a verifier key `<name>+<hex key ID>+<base64(0x01 || public key)>`,
    /// checking that the key ID belongs to the name and key.
    pub fn from_verifier_key(vkey: &str) -> Result<Self, CheckpointError> {
        let parts = KeyString::parse(vkey)?;
        let key = VerifyingKey::from_bytes(&parts.key_bytes)
            .map_err(|_| CheckpointError::MalformedKey("not an Ed25519 public key"))?;
        if ed25519_key_id(parts.name, &key) != parts.key_id {
            return Err(CheckpointError::KeyIdMismatch);
        }
        Ok(Self {
            name: parts.name.to_owned(),
            key_id: parts.key_id,
            key,
        })
    }

    /// The key name signatures must carry.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID signatures must carry.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The verifier key string this verifier was (or could have been) parsed from.
    pub fn verifier_key(&self) -> String {
        encode_key_string(&self.name, &self.key_id, self.key.as_bytes())
    }

    /// Parses a signed note and verifies it, returning the note text (with
    /// its final newline) once a signature by this key verifies.
    ///
    /// Per signed-note, "Signatures": signatures by other keys are ignored;
    /// every signature carrying this key's name and ID must verify; at least
    /// one must be present.
    pub fn open<'n>(&self, note: &'n str) -> Result<&'n str, CheckpointError> {
        let (text, signature_lines) = split_signed_note(note)?;
        let mut verified = false;
        for line in signature_lines {
            let line = SignatureLine::parse(line)?;
            if line.name != self.name || line.key_id != self.key_id {
                continue;
            }
            let signature = Signature::from_slice(&line.signature)
                .map_err(|_| CheckpointError::InvalidSignature)?;
            // Strict verification refuses malleable (non-canonical) signatures
            // and small-order keys, which honest Ed25519 signers never produce.
            self.key
                .verify_strict(text.as_bytes(), &signature)
                .map_err(|_| CheckpointError::InvalidSignature)?;
            verified = true;
        }
        if verified {
            Ok(text)
        } else {
            Err(CheckpointError::NoVerifiedSignature)
        }
    }

    /// Verifies a signed checkpoint and parses its text.
    pub fn verify_checkpoint(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::from_note_text(self.open(note)?)
    }
}

/// Verifies a signed checkpoint note against the verifier key `vkey` and
/// returns the checkpoint it signs.
pub fn verify_signed_note(note: &str, vkey: &str) -> Result<Checkpoint, CheckpointError> {
    NoteVerifier::from_verifier_key(vkey)?.verify_checkpoint(note)
}

/// Splits a signed note into its text (ending in a newline) and its
/// signature lines (signed-note, "Format").
fn split_signed_note(note: &str) -> Result<(&str, std::str::Split<'_, char>), CheckpointError> {
    if note.chars().any(|c| c.is_ascii_control() && c != '\n') {
        return Err(CheckpointError::MalformedNote("control character"));
    }
    // The text is separated from the signatures by the last empty line, and
    // keeps its own final newline.
    let blank = note.rfind("\n\n").ok_or(CheckpointError::MalformedNote(
        "no blank line before signatures",
    ))?;
    let (text, rest) = note.split_at(blank + 1);
    let signatures = rest[1..]
        .strip_suffix('\n')
        .ok_or(CheckpointError::MalformedNote(
            "signatures must end in a newline",
        ))?;
    if signatures.is_empty() {
        return Err(CheckpointError::MalformedNote("no signatures"));
    }
    if signatures.split('\n').count() > MAX_SIGNATURES {
        return Err(CheckpointError::MalformedNote("too many signatures"));
    }
    Ok((text, signatures.split('\n')))
}

/// One signature line: `— <key name> <base64(key ID || signature)>`.
struct SignatureLine<'a> {
    name: &'a str,
    key_id: KeyId,
    signature: Vec<u8>,
}

impl<'a> SignatureLine<'a> {
    fn parse(line: &'a str) -> Result<Self, CheckpointError> {
        let malformed = CheckpointError::MalformedNote("bad signature line");
        let (name, encoded) = line
            .strip_prefix(SIGNATURE_LINE_PREFIX)
            .and_then(|rest| rest.split_once(' '))
            .ok_or(malformed.clone())?;
        if !is_valid_key_name(name) {
            return Err(malformed);
        }
        let decoded = BASE64.decode(encoded).map_err(|_| malformed.clone())?;
        // A key ID and at least one byte of signature.
        if decoded.len() <= KEY_ID_LEN {
            return Err(malformed);
        }
        let (key_id, signature) = decoded.split_at(KEY_ID_LEN);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(key_id);
        Ok(Self {
            name,
            key_id: id,
            signature: signature.to_vec(),
        })
    }
}

/// Signs checkpoints (and other note text) with one Ed25519 key.
pub struct CheckpointSigner {
    name: String,
    key_id: KeyId,
    key: SigningKey,
}

impl fmt::Debug for CheckpointSigner {
    // Never print the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("name", &self.name)
            .field("key_id", &hex::encode(self.key_id))
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// A signer named `name` (by C2SP convention the log origin) whose
    /// Ed25519 key derives from the 32-byte `seed` (RFC 8032 private key).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, CheckpointError> {
        if !is_valid_key_name(name) {
            return Err(CheckpointError::InvalidKeyName);
        }
        let key = SigningKey::from_bytes(seed);
        Ok(Self {
            name: name.to_owned(),
            key_id: ed25519_key_id(name, &key.verifying_key()),
            key,
        })
    }

    /// A signer with a fresh key from the operating system's randomness.
    pub fn generate(name: &str) -> Result<Self, CheckpointError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(CheckpointError::Randomness)?;
        Self::from_seed(name, &seed)
    }

    /// Parses a signer key `PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>`,
    /// checking that the key ID belongs to the name and the derived public key.
    pub fn from_private_key(skey: &str) -> Result<Self, CheckpointError> {
        let rest = skey
            .strip_prefix(PRIVATE_KEY_PREFIX)
            .ok_or(CheckpointError::MalformedKey("missing PRIVATE+KEY+ prefix"))?;
        let parts = KeyString::parse(rest)?;
        let signer = Self::from_seed(parts.name, &parts.key_bytes)?;
        if signer.key_id != parts.key_id {
            return Err(CheckpointError::KeyIdMismatch);
        }
        Ok(signer)
    }

    /// The key name written into signature lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID written into signature lines.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The signer key string, for storing the key as a secret. Handle with care.
    pub fn private_key(&self) -> String {
        format!(
            "{PRIVATE_KEY_PREFIX}{}",
            encode_key_string(&self.name, &self.key_id, self.key.as_bytes())
        )
    }

    /// The verifier key string to publish: `<name>+<hex key ID>+<base64(0x01 || public key)>`.
    pub fn verifier_key(&self) -> String {
        encode_key_string(
            &self.name,
            &self.key_id,
            self.key.verifying_key().as_bytes(),
        )
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// Signs note `text` and returns the signed note: the text, a blank
    /// line and this key's signature line (signed-note, "Format").
    ///
    /// The text must be non-empty, end in a newline and hold no control
    /// characters other than newlines.
    pub fn sign_note(&self, text: &str) -> Result<String, CheckpointError> {
        if !text.ends_with('\n') {
            return Err(CheckpointError::MalformedNote("text must end in a newline"));
        }
        if text.chars().any(|c| c.is_control() && c != '\n') {
            return Err(CheckpointError::MalformedNote("control character"));
        }
        // Ed25519 over the note text exactly (signed-note, "Ed25519 signatures").
        let signature = self.key.sign(text.as_bytes());
        let mut payload = Vec::with_capacity(KEY_ID_LEN + Signature::BYTE_SIZE);
        payload.extend_from_slice(&self.key_id);
        payload.extend_from_slice(&signature.to_bytes());
        Ok(format!(
            "{text}\n{SIGNATURE_LINE_PREFIX}{} {}\n",
            self.name,
            BASE64.encode(payload)
        ))
    }

    /// Signs the checkpoint for `origin` at tree `size` with root `root` and
    /// returns the signed note.
    pub fn sign_checkpoint(
        &self,
        origin: &str,
        size: u64,
        root: &Hash,
    ) -> Result<String, CheckpointError> {
        let checkpoint = Checkpoint {
            origin: origin.to_owned(),
            size,
            root: *root,
        };
        self.sign_note(&checkpoint.to_note_text()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::merkle;

    // ---- Known-answer vectors from golang.org/x/mod/sumdb/note note_test.go

    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const NEUMANN_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                                then you don't know what your problem is.\n";
    const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    fn peter_note() -> String {
        format!("{NEUMANN_TEXT}\n{PETER_SIG}")
    }

    fn test_signer() -> CheckpointSigner {
        CheckpointSigner::from_seed("ledgerline.test/log", &[7; 32]).expect("valid name")
    }

    fn some_root() -> Hash {
        merkle::root(&[[1u8; 32], [2u8; 32], [3u8; 32]])
    }

    #[test]
    fn signer_key_strings_match_go_vectors() {
        let signer = CheckpointSigner::from_private_key(PETER_SKEY).expect("valid skey");
        assert_eq!(signer.name(), "PeterNeumann");
        assert_eq!(signer.key_id(), [0xc7, 0x4f, 0x20, 0xa3]);
        assert_eq!(signer.verifier_key(), PETER_VKEY);
        assert_eq!(signer.private_key(), PETER_SKEY);
        let verifier = NoteVerifier::from_verifier_key(PETER_VKEY).expect("valid vkey");
        assert_eq!(verifier.name(), "PeterNeumann");
        assert_eq!(verifier.key_id(), signer.key_id());
        assert_eq!(verifier.verifier_key(), PETER_VKEY);
        assert_eq!(signer.verifier(), verifier);
        let enoch = NoteVerifier::from_verifier_key(ENOCH_VKEY).expect("valid vkey");
        assert_eq!(enoch.key_id(), [0xaf, 0x0c, 0xfe, 0x78]);
    }

    #[test]
    fn signing_matches_go_vector_byte_for_byte() {
        // note_test.go TestSign: Ed25519 is deterministic, so the whole
        // signed note must match.
        let signer = CheckpointSigner::from_private_key(PETER_SKEY).expect("valid skey");
        assert_eq!(
            signer.sign_note(NEUMANN_TEXT).expect("valid text"),
            peter_note()
        );
    }

    #[test]
    fn go_vector_verifies_with_plain_ed25519_verify_strict() {
        // Independent of the note parser: decode the key and the signature
        // line by hand and check Ed25519 over the exact note text.
        let key_b64 = PETER_VKEY.rsplit('+').next().expect("three parts");
        let key = BASE64.decode(key_b64).expect("base64");
        assert_eq!(key[0], ALG_ED25519);
        let key = VerifyingKey::from_bytes(&key[1..].try_into().expect("32 bytes")).expect("key");
        let sig_b64 = PETER_SIG.trim_end().rsplit(' ').next().expect("signature");
        let sig = BASE64.decode(sig_b64).expect("base64");
        assert_eq!(sig.len(), 4 + 64);
        assert_eq!(sig[..4], [0xc7, 0x4f, 0x20, 0xa3]);
        let sig = Signature::from_slice(&sig[4..]).expect("64 bytes");
        assert!(key.verify_strict(NEUMANN_TEXT.as_bytes(), &sig).is_ok());
        assert!(key.verify_strict(b"something else\n", &sig).is_err());
    }

    #[test]
    fn open_go_vectors() {
        let peter = NoteVerifier::from_verifier_key(PETER_VKEY).expect("valid vkey");
        let enoch = NoteVerifier::from_verifier_key(ENOCH_VKEY).expect("valid vkey");
        assert_eq!(peter.open(&peter_note()), Ok(NEUMANN_TEXT));
        // Signatures by other keys are ignored; each key finds its own.
        let both = format!("{NEUMANN_TEXT}\n{PETER_SIG}{ENOCH_SIG}");
        assert_eq!(peter.open(&both), Ok(NEUMANN_TEXT));
        assert_eq!(enoch.open(&both), Ok(NEUMANN_TEXT));
        assert_eq!(
            enoch.open(&peter_note()),
            Err(CheckpointError::NoVerifiedSignature)
        );
        // Duplicated signatures are fine.
        let twice = format!("{NEUMANN_TEXT}\n{PETER_SIG}{PETER_SIG}{ENOCH_SIG}{ENOCH_SIG}");
        assert_eq!(peter.open(&twice), Ok(NEUMANN_TEXT));
        // A corrupt signature by the trusted key rejects the note.
        let corrupt = format!(
            "{NEUMANN_TEXT}\n{}ABCD{}",
            &PETER_SIG[..60],
            &PETER_SIG[60..]
        );
        assert_eq!(peter.open(&corrupt), Err(CheckpointError::InvalidSignature));
        // ...but a corrupt signature by an untrusted key does not.
        let other_corrupt = format!(
            "{NEUMANN_TEXT}\n{PETER_SIG}{}ABCD{}",
            &ENOCH_SIG[..60],
            &ENOCH_SIG[60..]
        );
        assert_eq!(peter.open(&other_corrupt), Ok(NEUMANN_TEXT));
        // Right key ID, wrong name; right name, wrong key ID.
        let misnamed = peter_note().replace("PeterNeumann", "CarmenSandiego");
        assert_eq!(
            peter.open(&misnamed),
            Err(CheckpointError::NoVerifiedSignature)
        );
        let wrong_id = peter_note().replace("x08g", "xxxx");
        assert_eq!(
            peter.open(&wrong_id),
            Err(CheckpointError::NoVerifiedSignature)
        );
        // Too many signatures.
        let many = format!("{NEUMANN_TEXT}\n{}", PETER_SIG.repeat(101));
        assert!(matches!(
            peter.open(&many),
            Err(CheckpointError::MalformedNote(_))
        ));
        let hundred = format!("{NEUMANN_TEXT}\n{}", PETER_SIG.repeat(100));
        assert_eq!(peter.open(&hundred), Ok(NEUMANN_TEXT));
    }

    #[test]
    fn open_rejects_malformed_notes() {
        let peter = NoteVerifier::from_verifier_key(PETER_VKEY).expect("valid vkey");
        let sig_without_newline = PETER_SIG.trim_end_matches('\n');
        let bad = [
            NEUMANN_TEXT.to_owned(),
            format!("{NEUMANN_TEXT}\n"),
            format!("{NEUMANN_TEXT}\n{sig_without_newline}"),
            format!("\x01{NEUMANN_TEXT}\n{PETER_SIG}"),
            format!("{NEUMANN_TEXT}\n\u{2014} Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"),
            format!("{NEUMANN_TEXT}\n{PETER_SIG}Unexpected line.\n"),
            format!("{NEUMANN_TEXT}\n{}", PETER_SIG.replace('\u{2014}', "-")),
            format!("{NEUMANN_TEXT}\n{}", PETER_SIG.replace("Neumann ", "Neumann  ")),
            format!("{NEUMANN_TEXT}\n\u{2014} PeterNeumann x08gow==\n"),
            format!("{NEUMANN_TEXT}\n\u{2014} PeterNeumann !!!!\n"),
            format!("{NEUMANN_TEXT}\r\n{PETER_SIG}"),
        ];
        for note in &bad {
            assert!(
                matches!(peter.open(note), Err(CheckpointError::MalformedNote(_))),
                "accepted {note:?}"
            );
        }
        // Well-formed, with the trusted key's name and ID, but a 1-byte signature.
        assert_eq!(
            peter.open(&format!("{NEUMANN_TEXT}\n\u{2014} PeterNeumann x08go/Y=\n")),
            Err(CheckpointError::InvalidSignature)
        );
    }

    #[test]
    fn open_splits_at_the_last_blank_line() {
        // The signed-note spec example: its text has an empty line of its own.
        let note = "Ognuno sta solo sul cuor della terra\n\
                    trafitto da un raggio di sole:\n\
                    \n\
                    ed è subito sera.\n\
                    \n\
                    \u{2014} quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n";
        // Well-formed, but signed by a key we do not trust.
        let verifier = test_signer().verifier();
        assert_eq!(
            verifier.open(note),
            Err(CheckpointError::NoVerifiedSignature)
        );
        // And our own signature over a text with empty lines round-trips.
        let text = "a\n\nb\n\n";
        let signed = test_signer().sign_note(text).expect("valid text");
        assert_eq!(verifier.open(&signed), Ok(text));
    }

    #[test]
    fn verifier_key_manglings_are_rejected() {
        // note_test.go TestNewVerifier: every proper substring and every
        // single-byte increment of the key string must be refused.
        assert!(NoteVerifier::from_verifier_key(PETER_VKEY).is_ok());
        let b = PETER_VKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if i == 0 && j == b.len() {
                    continue;
                }
                let sub = &PETER_VKEY[i..j];
                assert!(
                    NoteVerifier::from_verifier_key(sub).is_err(),
                    "accepted {sub:?}"
                );
            }
        }
        for i in 0..b.len() {
            let mut mangled = b.to_vec();
            mangled[i] += 1;
            let mangled = String::from_utf8(mangled).expect("ASCII");
            assert!(
                NoteVerifier::from_verifier_key(&mangled).is_err(),
                "accepted {mangled:?}"
            );
        }
        // Wrong key length and unknown algorithm, each with an adjusted key ID.
        assert!(NoteVerifier::from_verifier_key(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        )
        .is_err());
        assert_eq!(
            NoteVerifier::from_verifier_key(
                "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            ),
            Err(CheckpointError::UnsupportedKeyType(0x65))
        );
        assert_eq!(
            NoteVerifier::from_verifier_key(
                "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            ),
            Err(CheckpointError::KeyIdMismatch)
        );
    }

    #[test]
    fn signer_key_manglings_are_rejected() {
        // note_test.go TestNewSigner.
        let b = PETER_SKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if i == 0 && j == b.len() {
                    continue;
                }
                let sub = &PETER_SKEY[i..j];
                assert!(
                    CheckpointSigner::from_private_key(sub).is_err(),
                    "accepted {sub:?}"
                );
            }
        }
        for i in 0..b.len() {
            let mut mangled = b.to_vec();
            mangled[i] += 1;
            let mangled = String::from_utf8(mangled).expect("ASCII");
            assert!(
                CheckpointSigner::from_private_key(&mangled).is_err(),
                "accepted {mangled:?}"
            );
        }
        // A verifier key is not a signer key, and vice versa.
        assert!(CheckpointSigner::from_private_key(PETER_VKEY).is_err());
        assert!(NoteVerifier::from_verifier_key(PETER_SKEY).is_err());
    }

    #[test]
    fn invalid_key_names_are_rejected() {
        for name in ["", "a b", "a+b", "a\tb", "a\nb", "a\u{a0}b", "a\u{7f}b"] {
            assert_eq!(
                CheckpointSigner::from_seed(name, &[1; 32]).map(|_| ()),
                Err(CheckpointError::InvalidKeyName),
                "{name:?}"
            );
        }
        assert!(CheckpointSigner::from_seed("example.com/log-42", &[1; 32]).is_ok());
    }

    // ---- Checkpoints -------------------------------------------------------

    #[test]
    fn checkpoint_sign_verify_round_trip() {
        let signer = test_signer();
        let vkey = signer.verifier_key();
        for (size, root) in [
            (0, merkle::EMPTY_ROOT),
            (3, some_root()),
            (u64::MAX, [0xff; 32]),
        ] {
            let note = signer
                .sign_checkpoint("ledgerline.test/tenant-1", size, &root)
                .expect("valid origin");
            let checkpoint = verify_signed_note(&note, &vkey).expect("verifies");
            assert_eq!(
                checkpoint,
                Checkpoint {
                    origin: "ledgerline.test/tenant-1".to_owned(),
                    size,
                    root
                }
            );
        }
    }

    #[test]
    fn checkpoint_note_layout() {
        let signer = test_signer();
        let root = some_root();
        let note = signer
            .sign_checkpoint("ledgerline.test/tenant-1", 3, &root)
            .expect("valid origin");
        let body = format!("ledgerline.test/tenant-1\n3\n{}\n", BASE64.encode(root));
        let (text, signature) = note.split_at(body.len());
        assert_eq!(text, body);
        let signature = signature
            .strip_prefix("\n\u{2014} ledgerline.test/log ")
            .and_then(|s| s.strip_suffix('\n'))
            .expect("one signature line");
        let decoded = BASE64.decode(signature).expect("base64");
        assert_eq!(decoded.len(), 68);
        assert_eq!(decoded[..4], signer.key_id());
        // The signature is plain Ed25519 over the body bytes.
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let sig = Signature::from_slice(&decoded[4..]).expect("64 bytes");
        assert!(key.verify_strict(body.as_bytes(), &sig).is_ok());
        // The key ID is SHA-256(name || "\n" || 0x01 || public key)[:4].
        let mut preimage = b"ledgerline.test/log\n\x01".to_vec();
        preimage.extend_from_slice(key.as_bytes());
        assert_eq!(signer.key_id(), Sha256::digest(&preimage)[..4]);
    }

    #[test]
    fn any_single_byte_change_to_a_signed_checkpoint_is_rejected() {
        let signer = test_signer();
        let vkey = signer.verifier_key();
        let note = signer
            .sign_checkpoint("ledgerline.test/tenant-1", 1234, &some_root())
            .expect("valid origin");
        assert!(verify_signed_note(&note, &vkey).is_ok());
        let bytes = note.as_bytes();
        for i in 0..bytes.len() {
            if !bytes[i].is_ascii() {
                continue; // inside the em dash, covered below
            }
            for flip in [0x01, 0x02, 0x20] {
                let mut changed = bytes.to_vec();
                changed[i] ^= flip;
                let Ok(changed) = String::from_utf8(changed) else {
                    continue;
                };
                assert!(
                    verify_signed_note(&changed, &vkey).is_err(),
                    "accepted change at byte {i}: {changed:?}"
                );
            }
        }
        assert!(verify_signed_note(&note.replace('\u{2014}', "-"), &vkey).is_err());
        assert!(verify_signed_note(&note.replace('\u{2014}', "\u{2013}"), &vkey).is_err());
        // Removed or added lines.
        assert!(verify_signed_note(note.trim_end(), &vkey).is_err());
        assert!(verify_signed_note(&format!("{note}\n"), &vkey).is_err());
        assert!(verify_signed_note(&format!("x\n{note}"), &vkey).is_err());
        assert!(verify_signed_note(&note.replacen("\n", "\nextension\n", 3), &vkey).is_err());
    }

    #[test]
    fn signature_by_another_key_is_rejected() {
        let note = test_signer()
            .sign_checkpoint("ledgerline.test/tenant-1", 1, &some_root())
            .expect("valid origin");
        // Same name, different key: different key ID, so not our signature.
        let impostor = CheckpointSigner::from_seed("ledgerline.test/log", &[8; 32]).expect("ok");
        assert_eq!(
            verify_signed_note(&note, &impostor.verifier_key()),
            Err(CheckpointError::NoVerifiedSignature)
        );
        // A forged line claiming our name and key ID but signed by another key.
        let forged = impostor
            .sign_checkpoint("ledgerline.test/tenant-1", 1, &some_root())
            .expect("valid origin");
        let ours = test_signer();
        let forged = forged.replace(
            &BASE64.encode(impostor.key_id())[..4],
            &BASE64.encode(ours.key_id())[..4],
        );
        assert!(verify_signed_note(&forged, &ours.verifier_key()).is_err());
    }

    #[test]
    fn generated_keys_round_trip_through_their_strings() {
        let signer = CheckpointSigner::generate("ledgerline.test/log").expect("OS randomness");
        let other = CheckpointSigner::generate("ledgerline.test/log").expect("OS randomness");
        assert_ne!(signer.verifier_key(), other.verifier_key());
        let restored = CheckpointSigner::from_private_key(&signer.private_key()).expect("valid");
        assert_eq!(restored.verifier_key(), signer.verifier_key());
        let note = restored
            .sign_checkpoint("ledgerline.test/tenant-9", 9, &some_root())
            .expect("valid origin");
        let checkpoint = verify_signed_note(&note, &signer.verifier_key()).expect("verifies");
        assert_eq!(checkpoint.size, 9);
        // Debug output never shows the private key.
        let debug = format!("{signer:?}");
        assert!(!debug.contains(&signer.private_key()));
        assert!(!debug.contains(signer.private_key().rsplit('+').next().expect("key")));
    }

    #[test]
    fn checkpoint_text_parsing() {
        let root = some_root();
        let root_b64 = BASE64.encode(root);
        let parse = |text: &str| Checkpoint::from_note_text(text);
        let ok = parse(&format!("example.com/log\n42\n{root_b64}\n")).expect("valid");
        assert_eq!(
            (ok.origin.as_str(), ok.size, ok.root),
            ("example.com/log", 42, root)
        );
        assert_eq!(
            parse(&format!("o\n0\n{}\n", BASE64.encode(merkle::EMPTY_ROOT)))
                .expect("valid")
                .size,
            0
        );
        assert_eq!(
            parse(&format!("o\n18446744073709551615\n{root_b64}\n"))
                .expect("valid")
                .size,
            u64::MAX
        );
        // Extension lines are allowed, and ignored, when non-empty.
        assert_eq!(
            parse(&format!(
                "example.com/log\n42\n{root_b64}\next one\next two\n"
            )),
            Ok(ok.clone())
        );
        // The tlog-checkpoint spec example body.
        let example = parse(
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        )
        .expect("valid");
        assert_eq!(example.size, 20852163);
        assert_eq!(
            BASE64.encode(example.root),
            "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
        );

        let root_31 = BASE64.encode([0u8; 31]);
        let root_33 = BASE64.encode([0u8; 33]);
        let bad = [
            format!("example.com/log\n42\n{root_b64}"),
            "example.com/log\n42\n".to_owned(),
            format!("example.com/log\n{root_b64}\n"),
            format!("\n42\n{root_b64}\n"),
            format!("example.com/log\n\n{root_b64}\n"),
            format!("example.com/log\n042\n{root_b64}\n"),
            format!("example.com/log\n00\n{root_b64}\n"),
            format!("example.com/log\n+42\n{root_b64}\n"),
            format!("example.com/log\n-1\n{root_b64}\n"),
            format!("example.com/log\n4 2\n{root_b64}\n"),
            format!("example.com/log\n18446744073709551616\n{root_b64}\n"),
            format!("example.com/log\n42\n{root_31}\n"),
            format!("example.com/log\n42\n{root_33}\n"),
            format!("example.com/log\n42\n{}\n", root_b64.trim_end_matches('=')),
            format!("example.com/log\n42\n {root_b64}\n"),
            format!("example.com/log\n42\n{}\n", hex::encode(root)),
            format!("example.com/log\n42\n{root_b64}\n\n"),
            format!("example.com/log\n42\n{root_b64}\next\n\n"),
        ];
        for text in &bad {
            assert!(parse(text).is_err(), "accepted {text:?}");
        }
        // Non-canonical trailing bits in the root's base64.
        let mut noncanonical = root_b64.clone().into_bytes();
        let last = noncanonical.len() - 2; // the character before '='
        noncanonical[last] = if noncanonical[last] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let noncanonical = String::from_utf8(noncanonical).expect("ASCII");
        if BASE64.decode(&noncanonical).is_err() {
            assert!(parse(&format!("o\n1\n{noncanonical}\n")).is_err());
        }
    }

    #[test]
    fn invalid_origins_are_refused_when_signing() {
        let signer = test_signer();
        for origin in ["", "a\nb", "a\rb", "tab\there"] {
            assert_eq!(
                signer.sign_checkpoint(origin, 1, &some_root()),
                Err(CheckpointError::InvalidOrigin),
                "{origin:?}"
            );
        }
        // Spaces and '+' are discouraged in origins but allowed.
        assert!(signer.sign_checkpoint("a b+c", 1, &some_root()).is_ok());
    }

    #[test]
    fn sign_note_refuses_malformed_text() {
        let signer = test_signer();
        for text in ["", "abc", "a\x00b\n", "a\rb\n"] {
            assert!(
                matches!(
                    signer.sign_note(text),
                    Err(CheckpointError::MalformedNote(_))
                ),
                "{text:?}"
            );
        }
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            CheckpointError::InvalidSignature.to_string(),
            "invalid signature by the trusted key"
        );
        assert_eq!(
            CheckpointError::UnsupportedKeyType(2).to_string(),
            "unsupported key type 0x02"
        );
    }
}
