package client_test

import (
	"context"
	"fmt"
	"log"

	"github.com/seed4c/moat/controlapi/client"
)

// A tenant admin raises a backend's weight without overwriting a concurrent change.
func Example() {
	hc, err := client.NewHTTPClient(client.TLSOptions{CAFile: "/var/lib/moat/ca.crt"})
	if err != nil {
		log.Fatal(err)
	}
	c := client.New("https://gateway.example:9443", "moat_…", hc)
	ctx := context.Background()

	b, err := c.GetBackend(ctx, "acme", "web", "w1")
	if err != nil {
		log.Fatal(err) // client.IsNotFound(err) for a missing backend or another tenant's
	}
	b.Weight++
	if _, err := c.UpdateBackend(ctx, b.Backend, b.Version); client.IsVersionMismatch(err) {
		fmt.Println("someone changed it meanwhile; nothing was written")
	} else if err != nil {
		log.Fatal(err)
	}

	// Lists follow pagination; All stops fetching when the loop stops.
	for svc, err := range c.Services("acme").All(ctx) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(svc.Name, svc.VIP, svc.Port)
	}
}
