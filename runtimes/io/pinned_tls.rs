//! TLS that accepts exactly one server certificate, named by its SHA-1 thumbprint.
//!
//! Service Fabric's managed-identity endpoint presents a self-signed certificate whose
//! thumbprint the platform passes in `IDENTITY_SERVER_THUMBPRINT`. ureq takes no custom
//! rustls configuration, so a connector of its own wraps the TCP stream in rustls with a
//! verifier that compares thumbprints.

use std::fmt;
use std::io::{Read, Write};
use std::sync::Arc;

use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme,
    StreamOwned,
};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, TcpConnector, Transport,
    TransportAdapter,
};

use crate::Error;

/// Builds an agent from `config` whose TLS accepts only the certificate with the SHA-1
/// `thumbprint` (hex, case-insensitive, `:` separators allowed).
///
/// NOTE: this uses ureq's `unversioned` transport API, which may change in a minor
/// release of ureq; the connector is tested against the version in Cargo.lock.
pub(crate) fn agent(config: ureq::config::Config, thumbprint: &str) -> Result<ureq::Agent, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = ThumbprintVerifier {
        thumbprint: decode_thumbprint(thumbprint)?,
        algorithms: provider.signature_verification_algorithms,
    };
    let tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config("server certificate", e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let connector = ().chain(TcpConnector::default()).chain(PinnedTlsConnector {
        config: Arc::new(tls),
    });
    Ok(ureq::Agent::with_parts(
        config,
        connector,
        DefaultResolver::default(),
    ))
}

fn decode_thumbprint(hex: &str) -> Result<[u8; 20], Error> {
    let digits: Vec<u8> = hex
        .bytes()
        .filter(|b| *b != b':' && !b.is_ascii_whitespace())
        .collect();
    let invalid = || {
        Error::config(
            "server certificate",
            format!("`{hex}` is not a SHA-1 thumbprint of 40 hex digits"),
        )
    };
    if digits.len() != 40 {
        return Err(invalid());
    }
    let mut thumbprint = [0u8; 20];
    for (byte, pair) in thumbprint.iter_mut().zip(digits.chunks(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| invalid())?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| invalid())?;
    }
    Ok(thumbprint)
}

/// Accepts the server whose end-entity certificate has the pinned SHA-1 thumbprint,
/// whatever its issuer, name or validity dates, as MSAL for Python (1.39) and for Go
/// (1.9) do. The handshake signature is still verified, so only the holder of that
/// certificate's private key gets through.
#[derive(Debug)]
struct ThumbprintVerifier {
    thumbprint: [u8; 20],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ThumbprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = digest(&SHA1_FOR_LEGACY_USE_ONLY, end_entity.as_ref());
        if actual.as_ref() == self.thumbprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Wraps the TCP transport in TLS with the pinned configuration.
#[derive(Debug)]
struct PinnedTlsConnector {
    config: Arc<ClientConfig>,
}

impl<In: Transport> Connector<In> for PinnedTlsConnector {
    type Out = PinnedTlsTransport<In>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() {
            return Err(ureq::Error::Tls(
                "a pinned server certificate requires https",
            ));
        }
        let host = details.uri.host().unwrap_or("");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| ureq::Error::Tls("the host is not a valid TLS server name"))?;
        let mut connection = ClientConnection::new(Arc::clone(&self.config), name)?;
        let mut socket = TransportAdapter::new(transport, Arc::clone(&details.current_time));
        socket.set_timeout(details.timeout);
        connection.complete_io(&mut socket)?;
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(PinnedTlsTransport {
            buffers,
            stream: StreamOwned::new(connection, socket),
        }))
    }
}

/// A TLS stream that ureq drives through its [`Transport`] buffers.
struct PinnedTlsTransport<In: Transport> {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter<In>>,
}

impl<In: Transport> fmt::Debug for PinnedTlsTransport<In> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedTlsTransport").finish_non_exhaustive()
    }
}

impl<In: Transport> Transport for PinnedTlsTransport<In> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(thumbprint: &str) -> ThumbprintVerifier {
        ThumbprintVerifier {
            thumbprint: decode_thumbprint(thumbprint).unwrap(),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    fn verify(verifier: &ThumbprintVerifier, certificate: &[u8]) -> Result<(), rustls::Error> {
        let name = ServerName::try_from("localhost").unwrap();
        verifier
            .verify_server_cert(
                &CertificateDer::from(certificate.to_vec()),
                &[],
                &name,
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    // The verifier hashes whatever bytes it gets, so a short byte string serves as a
    // certificate: SHA-1("abc") is a9993e36 4706816a ba3e2571 7850c26c 9cd0d89d (FIPS 180).
    const ABC_SHA1: &str = "a9993e364706816aba3e25717850c26c9cd0d89d";

    #[test]
    fn thumbprint_match_is_case_insensitive() {
        for pinned in [
            ABC_SHA1.to_owned(),
            ABC_SHA1.to_ascii_uppercase(),
            "A9:99:3E:36:47:06:81:6A:BA:3E:25:71:78:50:C2:6C:9C:D0:D8:9D".to_owned(),
        ] {
            assert_eq!(verify(&verifier(&pinned), b"abc"), Ok(()), "{pinned}");
        }
    }

    #[test]
    fn other_certificate_is_rejected() {
        assert_eq!(
            verify(&verifier(ABC_SHA1), b"abd"),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure
            ))
        );
    }

    #[test]
    fn malformed_thumbprints_are_config_errors() {
        for thumbprint in [
            "",
            "abc",
            &ABC_SHA1[..38],
            &format!("{}zz", &ABC_SHA1[..38]),
        ] {
            let error = decode_thumbprint(thumbprint).unwrap_err();
            assert!(
                matches!(error, Error::Config { .. }),
                "{thumbprint}: {error}"
            );
        }
    }
}
