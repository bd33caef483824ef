package verifier

import (
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	"github.com/seed4c/moat/attest"
)

// Policy is what a subject's evidence is appraised against.
type Policy struct {
	// Name identifies the policy in results and logs.
	Name string
	// MeasurementPCR is the PCR the agent's measurement log replays to; it must be 8..23
	// (0..7 belong to firmware). Use attest.DefaultMeasurementPCR unless the host uses
	// that PCR for something else.
	MeasurementPCR int
	// PCRs is the SHA-256 PCR set the quote must cover, exactly. Empty means
	// {MeasurementPCR}. Every PCR other than MeasurementPCR needs GoldenPCRs values.
	PCRs []int
	// References maps each measured file path to the SHA-256 digests its content may
	// have. Every path here must be measured, and every measured path must be here: an
	// unknown file in the log is as refused as a known file with an unknown digest.
	References map[string][][32]byte
	// GoldenPCRs maps quoted PCRs other than MeasurementPCR (firmware PCRs 0–7, for
	// instance) to the values they may hold.
	GoldenPCRs map[int][][32]byte
	// AllowedEKs lists SHA-256 digests of EK SubjectPublicKeyInfos accepted without a
	// manufacturer certificate (swtpm, the simulator, TPMs without EK certificates).
	// An EK not listed here needs a certificate that chains to the verifier's EK roots.
	AllowedEKs [][32]byte
	// PinEKs makes AllowedEKs the only EKs the subject may enroll with, certified or
	// not: set it when the gateway registers each backend with its EK, so that no other
	// genuine TPM can claim a backend identity before the real one enrolls.
	PinEKs bool
	// MinTrust refuses enrollment below this level; set TrustCertified to accept only
	// manufacturer-certified TPMs.
	MinTrust attest.TrustLevel
}

// quotedPCRs is the exact selection the quote must carry, ascending.
func (p *Policy) quotedPCRs() []int {
	if len(p.PCRs) == 0 {
		return []int{p.MeasurementPCR}
	}
	out := slices.Clone(p.PCRs)
	slices.Sort(out)
	return out
}

// Validate reports a policy that could not be appraised against sensibly.
func (p *Policy) Validate() error {
	if p.Name == "" {
		return errors.New("policy has no name")
	}
	if p.MeasurementPCR < 8 || p.MeasurementPCR > 23 {
		return fmt.Errorf("policy %s: measurement PCR %d outside 8..23", p.Name, p.MeasurementPCR)
	}
	pcrs := p.quotedPCRs()
	if !slices.Contains(pcrs, p.MeasurementPCR) {
		return fmt.Errorf("policy %s: PCRs %v do not include measurement PCR %d", p.Name, pcrs, p.MeasurementPCR)
	}
	for i, pcr := range pcrs {
		if pcr < 0 || pcr > 23 || (i > 0 && pcrs[i-1] == pcr) {
			return fmt.Errorf("policy %s: PCR list %v has an invalid or repeated PCR", p.Name, pcrs)
		}
		if pcr != p.MeasurementPCR && len(p.GoldenPCRs[pcr]) == 0 {
			return fmt.Errorf("policy %s: PCR %d is quoted but has no golden value", p.Name, pcr)
		}
	}
	if len(p.References) == 0 {
		return fmt.Errorf("policy %s: no reference values: nothing would be appraised", p.Name)
	}
	for path, digests := range p.References {
		if len(digests) == 0 {
			return fmt.Errorf("policy %s: file %s has no allowed digest", p.Name, path)
		}
	}
	return nil
}

func (p *Policy) ekAllowed(ek [32]byte) bool { return slices.Contains(p.AllowedEKs, ek) }

// PolicySource gives the policy for a subject.
//
// Contract: safe for concurrent use and fast (it is consulted on every appraisal, so
// a policy change applies from the next round); returns an error for a subject it does
// not know, which refuses its enrollment and its evidence.
type PolicySource interface {
	Policy(subject string) (*Policy, error)
}

// Policies is a PolicySource from a fixed map, subject → policy.
type Policies map[string]*Policy

// Policy implements PolicySource.
func (m Policies) Policy(subject string) (*Policy, error) {
	p, ok := m[subject]
	if !ok {
		return nil, fmt.Errorf("no policy for subject %q", subject)
	}
	return p, nil
}

// ParseDigest decodes a hex SHA-256 digest, as operators write reference values.
func ParseDigest(s string) ([32]byte, error) {
	var d [32]byte
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(d) {
		return d, fmt.Errorf("parse digest %q: want 64 hex digits", s)
	}
	copy(d[:], b)
	return d, nil
}

// PolicySpec is a policy as operators write it, digests in hex: the gateway's
// attestation policies (REST API) and a backend host's policy for the gateways it
// links with (its overlay configuration) are both converted with Policy.
type PolicySpec struct {
	// MeasurementPCR: default attest.DefaultMeasurementPCR.
	MeasurementPCR int `json:"measurement_pcr,omitempty" yaml:"measurement_pcr"`
	// PCRs: default {MeasurementPCR}.
	PCRs []int `json:"pcrs,omitempty" yaml:"pcrs"`
	// References maps each measured file to the hex SHA-256 digests it may have.
	References map[string][]string `json:"references" yaml:"references"`
	// GoldenPCRs maps other quoted PCRs to the hex values they may hold.
	GoldenPCRs map[int][]string `json:"golden_pcrs,omitempty" yaml:"golden_pcrs"`
	// AllowedEKs lists hex SHA-256 digests of EKs accepted without a certificate.
	AllowedEKs []string `json:"allowed_eks,omitempty" yaml:"allowed_eks"`
}

// Policy converts the spec into a validated Policy named name.
func (s PolicySpec) Policy(name string) (*Policy, error) {
	out := &Policy{Name: name, MeasurementPCR: s.MeasurementPCR, PCRs: s.PCRs,
		References: map[string][][32]byte{}, GoldenPCRs: map[int][][32]byte{}}
	if out.MeasurementPCR == 0 {
		out.MeasurementPCR = attest.DefaultMeasurementPCR
	}
	var errs []error
	for path, ds := range s.References {
		for _, d := range ds {
			v, err := ParseDigest(d)
			errs = append(errs, prefixed("reference for "+path, err))
			out.References[path] = append(out.References[path], v)
		}
	}
	for pcr, ds := range s.GoldenPCRs {
		for _, d := range ds {
			v, err := ParseDigest(d)
			errs = append(errs, prefixed(fmt.Sprintf("golden value of PCR %d", pcr), err))
			out.GoldenPCRs[pcr] = append(out.GoldenPCRs[pcr], v)
		}
	}
	for _, d := range s.AllowedEKs {
		v, err := ParseDigest(d)
		errs = append(errs, prefixed("allowed EK", err))
		out.AllowedEKs = append(out.AllowedEKs, v)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := out.Validate(); err != nil {
		return nil, err
	}
	return out, nil
}

func prefixed(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}
