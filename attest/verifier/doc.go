// Package verifier is the gateway side of moat's remote attestation: it enrolls
// backends' TPMs, issues single-use nonces, appraises evidence against each backend's
// Policy, and issues attestation results (attest.Result) to a Subscriber, including the
// expiry of results that were not renewed in time.
//
// The gateway embeds a Verifier, mounts its Handler under a path of its HTTPS server
// (which must request client certificates: ServerTLSConfig), gives it a PolicySource and
// a Store for enrollment records (MemStore here; bbolt in the gateway), and subscribes
// to results to admit and evict backends. Affirming results admit until they expire;
// contraindicated and expired results evict; refused results (submissions that could
// not be tied to the subject's TPM) change nothing, so that no stranger can evict a
// backend by sending garbage in its name.
package verifier
