// Package attest holds what the agent and the verifier of moat's remote attestation
// share: the Secure Element interface (SE), the attestation result (Result), the
// agent–verifier messages and the binding of keys into a quote (QualifyingData).
//
// The implementations live below it: attest/tpm (TPM 2.0 through go-tpm: simulator,
// swtpm, /dev/tpmrm0), attest/fakese (a pure-Go SE for tests and benchmarks),
// attest/mlog (the measurement log), attest/quote (strict decoding of TPM quotes),
// attest/verifier (enrollment, appraisal, results, HTTP handler) and attest/agent (the
// `moat agent` daemon). README.md beside this file describes the protocol.
package attest
