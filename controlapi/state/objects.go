package state

import (
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/seed4c/moat/attest/verifier"
	"github.com/seed4c/moat/controlapi/kv"
)

// Tenants.

func (s *Store) CreateTenant(t Tenant) (Tenant, error) { return create(s, tenants, &t, nil) }
func (s *Store) GetTenant(name string) (Tenant, error) { return getOne(s, tenants, name) }
func (s *Store) UpdateTenant(t Tenant, ifMatch uint64) (Tenant, error) {
	return update(s, tenants, &t, ifMatch, nil)
}
func (s *Store) ListTenants(after string, limit int) ([]Tenant, string, error) {
	return listSome(s, tenants, "", after, limit)
}

// DeleteTenant refuses a tenant that still has services, rules or policies.
func (s *Store) DeleteTenant(name string, ifMatch uint64) error {
	return remove(s, tenants, name, ifMatch, func(tx kv.Tx) error {
		what := "tenant " + name
		if err := empty(tx, services, name+"/", what); err != nil {
			return err
		}
		if err := empty(tx, rules, name+"/", what); err != nil {
			return err
		}
		if err := empty(tx, policies, name+"/", what); err != nil {
			return err
		}
		return notUsedByPeers(tx, what, func(p *OverlayPeer) bool {
			return slices.Contains(p.Tenants, name) || strings.HasPrefix(p.Subject, name+"/")
		})
	})
}

// Services.

func (s *Store) CreateService(v Service) (Service, error) {
	return create(s, services, &v, func(tx kv.Tx) error { return exists(tx, tenants, v.Tenant) })
}
func (s *Store) GetService(tenantName, name string) (Service, error) {
	return getOne(s, services, tenantName+"/"+name)
}
func (s *Store) UpdateService(v Service, ifMatch uint64) (Service, error) {
	return update(s, services, &v, ifMatch, nil)
}
func (s *Store) ListServices(tenantName, after string, limit int) ([]Service, string, error) {
	return listSome(s, services, tenantName+"/", after, limit)
}

// DeleteService refuses a service that still has backends (a rule naming it makes the
// configuration invalid, which is refused too).
func (s *Store) DeleteService(tenantName, name string, ifMatch uint64) error {
	key := tenantName + "/" + name
	return remove(s, services, key, ifMatch, func(tx kv.Tx) error { return empty(tx, backends, key+"/", "service "+key) })
}

// Backends.

func (s *Store) backendParents(b *Backend) func(kv.Tx) error {
	return func(tx kv.Tx) error {
		if err := exists(tx, services, b.Tenant+"/"+b.Service); err != nil {
			return err
		}
		if b.OverlayPeer != "" {
			return exists(tx, overlayPeers, b.OverlayPeer)
		}
		return exists(tx, policies, b.Tenant+"/"+b.Policy)
	}
}

func (s *Store) CreateBackend(b Backend) (Backend, error) {
	return create(s, backends, &b, s.backendParents(&b))
}
func (s *Store) GetBackend(tenantName, service, name string) (Backend, error) {
	return getOne(s, backends, tenantName+"/"+service+"/"+name)
}
func (s *Store) UpdateBackend(b Backend, ifMatch uint64) (Backend, error) {
	return update(s, backends, &b, ifMatch, s.backendParents(&b))
}
func (s *Store) ListBackends(tenantName, service, after string, limit int) ([]Backend, string, error) {
	return listSome(s, backends, tenantName+"/"+service+"/", after, limit)
}
func (s *Store) DeleteBackend(tenantName, service, name string, ifMatch uint64) error {
	return remove(s, backends, tenantName+"/"+service+"/"+name, ifMatch, nil)
}

// Rules.

func (s *Store) CreateRule(r Rule) (Rule, error) {
	return create(s, rules, &r, func(tx kv.Tx) error { return exists(tx, tenants, r.Tenant) })
}
func (s *Store) GetRule(tenantName, name string) (Rule, error) {
	return getOne(s, rules, tenantName+"/"+name)
}
func (s *Store) UpdateRule(r Rule, ifMatch uint64) (Rule, error) {
	return update(s, rules, &r, ifMatch, nil)
}
func (s *Store) ListRules(tenantName, after string, limit int) ([]Rule, string, error) {
	return listSome(s, rules, tenantName+"/", after, limit)
}
func (s *Store) DeleteRule(tenantName, name string, ifMatch uint64) error {
	return remove(s, rules, tenantName+"/"+name, ifMatch, nil)
}

// Policies.

func (s *Store) CreatePolicy(p Policy) (Policy, error) {
	return create(s, policies, &p, func(tx kv.Tx) error { return exists(tx, tenants, p.Tenant) })
}
func (s *Store) GetPolicy(tenantName, name string) (Policy, error) {
	return getOne(s, policies, tenantName+"/"+name)
}
func (s *Store) UpdatePolicy(p Policy, ifMatch uint64) (Policy, error) {
	return update(s, policies, &p, ifMatch, nil)
}
func (s *Store) ListPolicies(tenantName, after string, limit int) ([]Policy, string, error) {
	return listSome(s, policies, tenantName+"/", after, limit)
}

// DeletePolicy refuses a policy that backends still use.
func (s *Store) DeletePolicy(tenantName, name string, ifMatch uint64) error {
	return remove(s, policies, tenantName+"/"+name, ifMatch, func(tx kv.Tx) error {
		n := 0
		err := tx.Scan(backends.bucket, tenantName+"/", "", func(_ string, raw []byte) bool {
			var b Backend
			if decodeJSON(raw, &b) == nil && b.Policy == name {
				n++
			}
			return true
		})
		if err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("policy %s/%s is used by %d backends: %w", tenantName, name, n, ErrInUse)
		}
		return notUsedByPeers(tx, "policy "+tenantName+"/"+name, func(p *OverlayPeer) bool {
			return p.Policy == name && strings.HasPrefix(p.Subject, tenantName+"/")
		})
	})
}

// Verifier converts the policy into what the verifier appraises with, named name.
func (p *Policy) Verifier(name string) (*verifier.Policy, error) {
	return verifier.PolicySpec{MeasurementPCR: p.MeasurementPCR, PCRs: p.PCRs, References: p.References,
		GoldenPCRs: p.GoldenPCRs, AllowedEKs: p.AllowedEKs}.Policy(name)
}

func parseDigest(s string) ([32]byte, error) {
	var d [32]byte
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		return d, fmt.Errorf("%q is not a hex SHA-256 digest", s)
	}
	copy(d[:], b)
	return d, nil
}
