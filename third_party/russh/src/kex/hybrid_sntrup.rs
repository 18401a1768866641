//! chaperone patch 2 (third_party/README.md): `sntrup761x25519-sha512` (and its original name
//! `sntrup761x25519-sha512@openssh.com`), the post-quantum hybrid key exchange OpenSSH 9.0–9.8 clients
//! and servers use by default (draft-ietf-sshm-ntruprime-ssh). Built like `hybrid_mlkem`: the client
//! sends its Streamlined NTRU Prime 761 public key followed by an X25519 public key in
//! SSH_MSG_KEX_ECDH_INIT; the server answers with the NTRU Prime ciphertext for it followed by its own
//! X25519 public key; the shared secret is SHA-512(ntru_shared || x25519_shared), encoded as a string, and
//! the exchange hash is SHA-512.

use byteorder::{BigEndian, ByteOrder};
use curve25519_dalek::montgomery::MontgomeryPoint;
use log::debug;
use sha2::Digest;
use ssh_encoding::{Encode, Writer};

use super::{compute_keys, KexAlgorithm, KexAlgorithmImplementor, KexType, SharedSecret};
use crate::mac;
use crate::session::Exchange;
use crate::{cipher, msg, CryptoVec, Error};

const NTRU_PUBLIC_KEY_SIZE: usize = sntrup761::PUBLIC_KEY_SIZE;
const NTRU_CIPHERTEXT_SIZE: usize = sntrup761::CIPHERTEXT_SIZE;
const X25519_PUBLIC_KEY_SIZE: usize = 32;

pub struct Sntrup761X25519KexType {}

impl KexType for Sntrup761X25519KexType {
    fn make(&self) -> KexAlgorithm {
        Sntrup761X25519Kex {
            ntru_secret: None,
            x25519_secret: None,
            k: None,
        }
        .into()
    }
}

#[doc(hidden)]
pub struct Sntrup761X25519Kex {
    ntru_secret: Option<Box<sntrup761::DecapsulationKey>>,
    x25519_secret: Option<[u8; 32]>,
    /// SHA-512(ntru_shared || x25519_shared): the shared secret K, once known.
    k: Option<[u8; 64]>,
}

impl std::fmt::Debug for Sntrup761X25519Kex {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "Sntrup761X25519Kex {{ ntru_secret: [hidden], x25519_secret: [hidden], k: [hidden] }}"
        )
    }
}

/// K = SHA-512(ntru_shared || x25519_shared), refusing a low-order X25519 point.
fn combine(ntru: &sntrup761::SharedSecret, x25519: &MontgomeryPoint) -> Result<[u8; 64], Error> {
    if x25519.0 == [0u8; 32] {
        debug!("peer sent a low-order curve25519 pubkey");
        return Err(Error::Kex);
    }
    let mut hasher = sha2::Sha512::new();
    hasher.update(ntru.as_ref());
    hasher.update(x25519.0);
    let mut k = [0u8; 64];
    k.copy_from_slice(&hasher.finalize());
    Ok(k)
}

impl KexAlgorithmImplementor for Sntrup761X25519Kex {
    fn skip_exchange(&self) -> bool {
        false
    }

    fn server_dh(&mut self, exchange: &mut Exchange, payload: &[u8]) -> Result<(), Error> {
        debug!("server_dh (hybrid sntrup761x25519)");

        if payload.first() != Some(&msg::KEX_ECDH_INIT) {
            return Err(Error::Inconsistent);
        }
        if payload.len() < 5 {
            return Err(Error::Inconsistent);
        }
        #[allow(clippy::indexing_slicing)] // length checked
        let c_init_len = BigEndian::read_u32(&payload[1..]) as usize;
        if payload.len() < 5 + c_init_len {
            return Err(Error::Inconsistent);
        }
        if c_init_len != NTRU_PUBLIC_KEY_SIZE + X25519_PUBLIC_KEY_SIZE {
            return Err(Error::Kex);
        }
        #[allow(clippy::indexing_slicing)] // length checked
        let c_init = &payload[5..5 + c_init_len];
        #[allow(clippy::indexing_slicing)] // length checked
        let (c_ntru_bytes, c_x25519_bytes) = c_init.split_at(NTRU_PUBLIC_KEY_SIZE);

        let c_ntru =
            sntrup761::EncapsulationKey::try_from(c_ntru_bytes).map_err(|_| Error::Kex)?;
        let mut c_x25519 = MontgomeryPoint([0; 32]);
        c_x25519.0.copy_from_slice(c_x25519_bytes);

        let (ciphertext, ntru_shared) = c_ntru.encapsulate(&mut rand::rng());
        let s_secret = rand::random::<[u8; 32]>();
        let s_x25519 = MontgomeryPoint::mul_base_clamped(s_secret);
        let k = combine(&ntru_shared, &c_x25519.mul_clamped(s_secret))?;

        exchange.server_ephemeral.clear();
        exchange
            .server_ephemeral
            .extend_from_slice(ciphertext.as_ref());
        exchange.server_ephemeral.extend_from_slice(&s_x25519.0);
        self.k = Some(k);
        Ok(())
    }

    fn client_dh(
        &mut self,
        client_ephemeral: &mut Vec<u8>,
        writer: &mut impl Writer,
    ) -> Result<(), Error> {
        let (ntru_pk, ntru_sk) = sntrup761::generate_key(&mut rand::rng());
        let x25519_secret = rand::random::<[u8; 32]>();
        let x25519_pk = MontgomeryPoint::mul_base_clamped(x25519_secret);

        client_ephemeral.clear();
        client_ephemeral.extend_from_slice(ntru_pk.as_ref());
        client_ephemeral.extend_from_slice(&x25519_pk.0);

        msg::KEX_ECDH_INIT.encode(writer)?;
        client_ephemeral.as_slice().encode(writer)?;

        self.ntru_secret = Some(Box::new(ntru_sk));
        self.x25519_secret = Some(x25519_secret);
        Ok(())
    }

    fn compute_shared_secret(&mut self, remote_pubkey_: &[u8]) -> Result<(), Error> {
        if remote_pubkey_.len() != NTRU_CIPHERTEXT_SIZE + X25519_PUBLIC_KEY_SIZE {
            return Err(Error::Kex);
        }
        let (ct_bytes, s_x25519_bytes) = remote_pubkey_.split_at(NTRU_CIPHERTEXT_SIZE);
        let ciphertext =
            sntrup761::Ciphertext::try_from(ct_bytes).map_err(|_| Error::KexInit)?;
        let ntru_secret = self.ntru_secret.take().ok_or(Error::KexInit)?;
        let ntru_shared = ntru_secret.decapsulate(&ciphertext);
        let mut s_x25519 = MontgomeryPoint([0; 32]);
        s_x25519.0.copy_from_slice(s_x25519_bytes);
        let x25519_secret = self.x25519_secret.take().ok_or(Error::KexInit)?;
        self.k = Some(combine(&ntru_shared, &s_x25519.mul_clamped(x25519_secret))?);
        Ok(())
    }

    fn shared_secret_bytes(&self) -> Option<&[u8]> {
        self.k.as_ref().map(|k| k.as_slice())
    }

    fn compute_exchange_hash(
        &self,
        key: &[u8],
        exchange: &Exchange,
        buffer: &mut CryptoVec,
    ) -> Result<Vec<u8>, Error> {
        buffer.clear();
        exchange.client_id.encode(buffer)?;
        exchange.server_id.encode(buffer)?;
        exchange.client_kex_init.encode(buffer)?;
        exchange.server_kex_init.encode(buffer)?;

        buffer.extend(key);

        exchange.client_ephemeral.encode(buffer)?;
        exchange.server_ephemeral.encode(buffer)?;

        let k = self.k.as_ref().ok_or(Error::KexInit)?;
        k.as_slice().encode(buffer)?;

        let mut hasher = sha2::Sha512::new();
        hasher.update(&buffer);
        Ok(hasher.finalize().to_vec())
    }

    fn compute_keys(
        &self,
        session_id: &[u8],
        exchange_hash: &[u8],
        cipher: cipher::Name,
        remote_to_local_mac: mac::Name,
        local_to_remote_mac: mac::Name,
        is_server: bool,
    ) -> Result<super::cipher::CipherPair, Error> {
        let k = self.k.as_ref().ok_or(Error::KexInit)?;
        let shared_secret = SharedSecret::from_string(k)?;
        compute_keys::<sha2::Sha512>(
            Some(&shared_secret),
            session_id,
            exchange_hash,
            cipher,
            remote_to_local_mac,
            local_to_remote_mac,
            is_server,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kex() -> Sntrup761X25519Kex {
        Sntrup761X25519Kex {
            ntru_secret: None,
            x25519_secret: None,
            k: None,
        }
    }

    #[test]
    fn client_and_server_agree() {
        let (mut client, mut server) = (kex(), kex());
        let mut client_ephemeral = Vec::new();
        let mut init = Vec::new();
        client.client_dh(&mut client_ephemeral, &mut init).unwrap();
        assert_eq!(
            client_ephemeral.len(),
            NTRU_PUBLIC_KEY_SIZE + X25519_PUBLIC_KEY_SIZE
        );
        let mut exchange = Exchange::default();
        server.server_dh(&mut exchange, &init).unwrap();
        assert_eq!(
            exchange.server_ephemeral.len(),
            NTRU_CIPHERTEXT_SIZE + X25519_PUBLIC_KEY_SIZE
        );
        client
            .compute_shared_secret(&exchange.server_ephemeral)
            .unwrap();
        assert_eq!(client.k, server.k);
        assert!(client.k.is_some());
    }

    #[test]
    fn wrong_sizes_are_refused() {
        let mut server = kex();
        let mut exchange = Exchange::default();
        let mut init = vec![msg::KEX_ECDH_INIT];
        init.extend_from_slice(&(10u32).to_be_bytes());
        init.extend_from_slice(&[0u8; 10]);
        assert!(server.server_dh(&mut exchange, &init).is_err());
        let mut client = kex();
        assert!(client.compute_shared_secret(&[0u8; 12]).is_err());
    }
}
