//go:build e2e

package vaultkey_test

import (
	"context"
	"crypto/x509"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/runner/vaultkey"
)

// On the real Vault (runner-keys/ as deploy/vault/setup mounts it): the
// first runner creates the key, later ones get the same; runners starting
// together agree on one key; a corrupt entry is an error naming the entry,
// never a silently replaced key.
func TestLoadOrCreate(t *testing.T) {
	c := testcluster.Start(t, testcluster.Vault)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	vc := c.Vault.Client

	ref, err := vaultkey.ParseRef("runner-keys/model-node-a")
	if err != nil {
		t.Fatal(err)
	}
	k1, created, err := vaultkey.LoadOrCreate(ctx, vc, ref)
	if err != nil || !created {
		t.Fatalf("first load: created=%v %v", created, err)
	}
	k2, created, err := vaultkey.LoadOrCreate(ctx, vc, ref)
	if err != nil || created {
		t.Fatalf("second load: created=%v %v", created, err)
	}
	if !samePublic(t, k1.Public(), k2.Public()) {
		t.Fatal("the second load returned another key")
	}

	// Eight runners of one model start at once.
	race, _ := vaultkey.ParseRef("runner-keys/model-node-race")
	var wg sync.WaitGroup
	keys := make([]any, 8)
	errs := make([]error, 8)
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, _, err := vaultkey.LoadOrCreate(ctx, vc, race)
			if err == nil {
				keys[i] = k.Public()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i := range keys {
		if errs[i] != nil {
			t.Fatalf("runner %d: %v", i, errs[i])
		}
		if !samePublic(t, keys[0], keys[i]) {
			t.Fatalf("runners 0 and %d of one model hold different keys", i)
		}
	}

	// A corrupt entry.
	if _, err := vc.KVv2("runner-keys").Put(ctx, "model-node-bad", map[string]any{"private_key": "not a key"}); err != nil {
		t.Fatal(err)
	}
	bad, _ := vaultkey.ParseRef("runner-keys/model-node-bad")
	if _, _, err := vaultkey.LoadOrCreate(ctx, vc, bad); err == nil || !strings.Contains(err.Error(), "runner-keys/model-node-bad") {
		t.Fatalf("corrupt entry: %v", err)
	}
	if s, err := vc.KVv2("runner-keys").Get(ctx, "model-node-bad"); err != nil || s.Data["private_key"] != "not a key" {
		t.Fatalf("the corrupt entry was replaced: %v", err)
	}

	for _, in := range []string{"", "runner-keys", "/x", "runner-keys/"} {
		if _, err := vaultkey.ParseRef(in); err == nil {
			t.Errorf("ParseRef(%q) accepted", in)
		}
	}
}

func samePublic(t *testing.T, a, b any) bool {
	t.Helper()
	da, err1 := x509.MarshalPKIXPublicKey(a)
	db, err2 := x509.MarshalPKIXPublicKey(b)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	return string(da) == string(db)
}
