// Package attest holds what the agent and the verifier of moat's remote attestation
// share: the Secure Element interface (SE), the attestation result (Result), the
// agent–verifier messages and the binding of keys into a quote (QualifyingData).
//
// For an operator, the protocol in short (README.md beside this file has the details
// and the attack each check stops):
//
//   - Enrollment, once per backend: the agent sends its TPM's endorsement key (EK, with
//     the manufacturer's certificate when the TPM has one) and an attestation key (AK).
//     The verifier accepts the EK if its certificate chains to a configured TPM
//     manufacturer CA, or if the policy allow-lists its SHA-256; checks that the AK is a
//     restricted, non-duplicable, TPM-generated signing key; and proves AK and EK live in
//     one TPM with MakeCredential/ActivateCredential. The identity is then bound to that
//     EK.
//   - Every round (2 s by default): the agent re-hashes the application's files into PCR
//     15, gets a single-use nonce, and sends a TPM quote whose qualifying data binds the
//     nonce, its identity, its WireGuard public key and its TLS client key, with the PCR
//     values and the measurement log. The verifier checks all of it against the
//     backend's policy and the TPM's counters, and issues a result.
//   - A result admits the backend for a short time (6 s by default). The verifier
//     expires it by itself when no fresh evidence renews it; a failed appraisal evicts
//     at once. Submissions the verifier cannot tie to the backend's TPM are refused
//     without touching its standing.
//
// The implementations live below: attest/tpm (TPM 2.0 through go-tpm: simulator,
// swtpm, /dev/tpmrm0), attest/fakese (a pure-Go SE for tests and benchmarks),
// attest/mlog (the measurement log), attest/tpmwire (strict decoding of TPM
// structures), attest/verifier (enrollment, appraisal, results, HTTP handler) and
// attest/agent (the `moat agent` daemon).
package attest
