#!/usr/bin/env bash
# Writes the seeds of the `certificate_bytes` target to corpus/certificate_bytes/ with
# the openssl command-line tool. Every run makes new throwaway keys, so the files differ
# from the committed ones, and a rerun replaces the seeds. The password is
# CERTIFICATE_PASSWORD in src/lib.rs.
set -euo pipefail

PASSWORD='fuzz-pässword'
out="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/corpus/certificate_bytes"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
cd "$work"

ssl() {
    openssl "$@" 2>/dev/null
}

# A CA and a leaf it issued, both RSA 2048 (the smallest size ring accepts).
ssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -subj /CN=fuzz-ca -days 2
ssl req -new -newkey rsa:2048 -nodes -keyout leaf.key -out leaf.csr -subj /CN=fuzz-client
printf 'basicConstraints=CA:FALSE\n' >leaf.ext
ssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 \
    -extfile leaf.ext
ssl rsa -in leaf.key -traditional -out leaf.pkcs1.key
ssl pkcs8 -topk8 -v2 aes-256-cbc -in leaf.key -passout "pass:$PASSWORD" -out leaf.enc.key
ssl rsa -in leaf.key -traditional -aes256 -passout "pass:$PASSWORD" -out leaf.legacy.key
ssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ec.key -out ec.pem \
    -subj /CN=fuzz-ec -days 2

cat leaf.pem ca.pem leaf.key >"$out/pem_pkcs8_key_after_chain"
cat leaf.pkcs1.key ca.pem leaf.pem >"$out/pem_pkcs1_key_before_chain"
cat leaf.pem leaf.enc.key >"$out/pem_encrypted_pkcs8_key"
cat leaf.pem leaf.legacy.key >"$out/pem_legacy_encrypted_key"
cat ec.pem ec.key >"$out/pem_ec_key"
cat leaf.pem ca.pem >"$out/pem_certificates_without_key"
cat ca.pem leaf.key >"$out/pem_key_without_its_certificate"

export_p12() {
    ssl pkcs12 -export -inkey leaf.key -in leaf.pem -certfile ca.pem "$@"
}
export_p12 -passout "pass:$PASSWORD" -out "$out/pkcs12_aes256_sha256_mac"
export_p12 -passout "pass:$PASSWORD" -keypbe PBE-SHA1-3DES -certpbe PBE-SHA1-3DES \
    -macalg sha1 -out "$out/pkcs12_3des_sha1_mac"
export_p12 -passout "pass:$PASSWORD" -legacy -out "$out/pkcs12_legacy_rc2_certificates"
export_p12 -passout "pass:$PASSWORD" -keypbe AES-128-CBC -certpbe NONE \
    -out "$out/pkcs12_aes128_key_plain_certificates"
export_p12 -passout pass: -out "$out/pkcs12_empty_password"
export_p12 -passout pass: -keypbe NONE -certpbe NONE -nomac -out "$out/pkcs12_no_encryption_no_mac"
ssl pkcs12 -export -inkey ec.key -in ec.pem -passout "pass:$PASSWORD" -out "$out/pkcs12_ec_key"
