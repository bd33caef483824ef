// Package controlapi is moat's control plane: the REST API, its authentication and
// authorization, the state store and the reconciler that turns desired state into
// dataplane map writes.
package controlapi
