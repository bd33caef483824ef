// Package overlay is moat's WireGuard overlay between SE-equipped machines (gateways
// and backend hosts), with keys held by the SEs and peers admitted by attestation.
//
//   - wireguard-go runs in process on a kernel TUN (CreateTUN, WireGuard), with the
//     kernel's TSO/GRO offloads on the TUN and UDP GSO/GRO on its socket where the
//     kernel offers them. Every I/O boundary is an interface: Engine (wireguard-go),
//     Links (netlink), Firewall (nftables), attest.SE (the TPM).
//   - The static private key exists on disk only sealed by the node's SE to its
//     measured state (LoadOrCreateKey): after a change of that state unsealing fails
//     with ErrKeySealed and the node cannot join. Its public key, and the SE's P-256
//     key-agreement key, are bound into every quote of the node
//     (attest.QualifyingDataOverlay).
//   - A peer is configured only with the keys its own attestation result vouches for,
//     when that result arrives, and removed when a result evicts it or its last one
//     expires (Node is a verifier.Subscriber).
//   - Each pair's pre-shared key is HKDF over an ECDH computed inside both TPMs and an
//     epoch number (DerivePSK), rotated at every epoch without touching running
//     sessions (Node.Rotate).
//   - The UAPI dump, which holds private and pre-shared keys, is parsed into an
//     allow-listed Status before anything sees it (ParseStatus).
//   - Tenants cross the overlay in their own VXLAN segment (VNI = tenant) inside
//     WireGuard; on a gateway the segment ends in a veth that is an ordinary fast-path
//     attachment of the tenant (Segment, links.go); nftables pins each peer to the
//     VNIs it carries and clamps TCP MSS to the segment MTU (Ruleset).
//   - Start brings a node up with its plumbing; Overlay.Apply changes its peers and
//     segments live as a gateway's desired state changes (controlapi/gateway drives
//     it); Host runs a backend host's side beside `moat agent` (attest/agent's Overlay),
//     with the verifier its gateways attest to.
//
// README.md beside this file has the design, its alternatives, the proofs and figures.
package overlay
