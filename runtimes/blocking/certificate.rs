//! Loading a client certificate from a file, for blocking programs.

use std::path::Path;

use zeroize::Zeroizing;

use crate::certificate::{file_error, rename_settings};
use crate::{ClientCertificate, ClientCertificateCredential, Error};

impl ClientCertificateCredential {
    /// Reads `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_CERTIFICATE_PATH` and the
    /// optional `AZURE_CLIENT_CERTIFICATE_PASSWORD`, `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN`
    /// and `AZURE_AUTHORITY_HOST` through `lookup` (pass `|name| std::env::var(name).ok()`),
    /// and reads the certificate file now.
    ///
    /// See [`from_env_with`](Self::from_env_with) for how the values are read.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        Self::from_env_with(lookup, |path| std::fs::read(path))
    }

    /// Creates a credential from a PEM or PKCS#12 file, read now.
    ///
    /// Errors about the file's contents name the file.
    pub fn from_file(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        path: impl AsRef<Path>,
        password: Option<&str>,
    ) -> Result<Self, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map(Zeroizing::new)
            .map_err(|e| file_error("client certificate file", path, &e))?;
        let setting = format!("client certificate file `{}`", path.display());
        let certificate = ClientCertificate::from_bytes(&bytes, password)
            .map_err(|e| rename_settings(e, &setting, "client certificate password"))?;
        Self::new(tenant_id, client_id, certificate)
    }
}
