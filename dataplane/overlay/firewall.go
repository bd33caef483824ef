package overlay

import (
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
)

// Firewall applies an nftables ruleset: the I/O boundary to nft. NFT is the real one.
type Firewall interface {
	Apply(ruleset string) error
}

// NFT applies rulesets with `nft -f -`. Command builds the command (default
// exec.Command; tests run it in a network namespace).
type NFT struct {
	Command func(name string, args ...string) *exec.Cmd
}

// Apply implements Firewall.
func (n NFT) Apply(ruleset string) error {
	cmd := exec.Command
	if n.Command != nil {
		cmd = n.Command
	}
	c := cmd("nft", "-f", "-")
	c.Stdin = strings.NewReader(ruleset)
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %w: %s", err, out)
	}
	return nil
}

// FirewallTable names the tables Ruleset owns (family inet and bridge).
const FirewallTable = "moat_overlay"

// Ruleset is the node's nftables ruleset. It replaces its own tables whole, and holds:
//
//   - input: VXLAN is accepted only from the overlay device (a plaintext VXLAN packet
//     from the underlay would otherwise inject frames into a tenant: the kernel's VXLAN
//     socket listens on every address), and only with a VNI its source peer carries:
//     WireGuard's allowed IPs pin a peer to its overlay address, and this pins the
//     overlay address to its tenants, so a backend host of tenant a cannot send into
//     tenant b's segment;
//   - bridge forward: TCP SYNs crossing a segment have their MSS clamped to the
//     segment's MTU. The gateway rewrites destinations, so a client cannot match an
//     ICMP "fragmentation needed" to its connection, and XDP cannot send one: without
//     the clamp a full-size segment would vanish (a PMTU black hole).
func Ruleset(cfg Config, segs []Segment, device string, mtu int) string {
	addrOf := map[string]netip.Addr{}
	for _, p := range cfg.Peers {
		addrOf[p.Subject] = p.Address
	}
	var b strings.Builder
	b.WriteString(RemoveRuleset())
	fmt.Fprintf(&b, "table inet %s {\n\tchain input {\n\t\ttype filter hook input priority filter - 10; policy accept;\n", FirewallTable)
	fmt.Fprintf(&b, "\t\tudp dport %d iifname != %q counter drop comment \"plaintext VXLAN from outside the overlay\"\n", VXLANPort, device)
	for _, s := range segs {
		for _, p := range slices.Sorted(slices.Values(s.Peers)) {
			if a, ok := addrOf[p]; ok {
				fmt.Fprintf(&b, "\t\tudp dport %d ip saddr %s @th,96,24 %d accept comment %q\n", VXLANPort, a, s.VNI, s.Tenant+" from "+p)
			}
		}
	}
	fmt.Fprintf(&b, "\t\tudp dport %d counter drop comment \"VNI not carried by its source peer\"\n\t}\n}\n", VXLANPort)
	mss := SegmentMTU(mtu) - 40
	fmt.Fprintf(&b, "table bridge %s {\n\tchain forward {\n\t\ttype filter hook forward priority filter - 10; policy accept;\n", FirewallTable)
	fmt.Fprintf(&b, "\t\ttcp flags syn tcp option maxseg size > %d tcp option maxseg size set %d\n\t}\n}\n", mss, mss)
	return b.String()
}

// RemoveRuleset deletes the tables Ruleset owns (when a node leaves the overlay).
func RemoveRuleset() string {
	var b strings.Builder
	for _, family := range []string{"inet", "bridge"} {
		fmt.Fprintf(&b, "table %s %s {}\ndelete table %s %s\n", family, FirewallTable, family, FirewallTable)
	}
	return b.String()
}
