//! Unsigned JWTs shaped like Entra ID access tokens, for tests.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The object id used as the Redis username in tests.
pub const OID: &str = "11111111-2222-3333-4444-555555555555";
/// The tenant id used in tests.
pub const TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
/// 2026-01-01T00:00:00Z in Unix seconds.
pub const T0: u64 = 1767225600;

/// Builds a JWT for `oid` that expires at `exp`; `serial` makes tokens distinct.
pub fn jwt(oid: &str, exp: u64, serial: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    let payload = format!(
        r#"{{"aud":"https://redis.azure.com","exp":{exp},"iat":{iat},"oid":"{oid}","tid":"{TENANT}","uti":"{serial}"}}"#,
        iat = exp.saturating_sub(3600),
    );
    format!("{header}.{}.c2ln", URL_SAFE_NO_PAD.encode(payload))
}

/// Builds the body of a successful Entra token response.
pub fn token_body(token: &str, expires_in: u64) -> String {
    format!(
        r#"{{"token_type":"Bearer","expires_in":{expires_in},"ext_expires_in":{expires_in},"access_token":"{token}"}}"#
    )
}
