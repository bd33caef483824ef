// Package bench measures moat against its baselines in network namespaces: traffic
// generators, topologies, reports and plots.
package bench
