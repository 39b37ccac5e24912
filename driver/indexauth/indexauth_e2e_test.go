//go:build e2e

package indexauth_test

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/modelnodes/modelnodes/driver/indexauth"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
)

// Against the real Vault that deploy/vault/setup configures: a token with
// the runner policy (deploy/vault/policies/runner.hcl) reads the default
// secret; one without it is denied, saying the policy must allow it; a
// missing secret, a deleted one and a bad entry each say what is wrong; and
// no error shows a credential.
func TestE2EReadFromVault(t *testing.T) {
	c := testcluster.Start(t, testcluster.Vault)
	ctx := context.Background()
	const path = "secret/data/modelnodes/indexes"
	kv := c.Vault.Client.KVv2("secret")
	if _, err := kv.Put(ctx, "modelnodes/indexes", map[string]any{
		"mirror.example": "reader:s3cret-pw", "pypi.nvidia.com": "nv-t0ken",
	}); err != nil {
		t.Fatal(err)
	}
	tokenFile := func(token string) string {
		p := filepath.Join(t.TempDir(), "vault_token")
		if err := os.WriteFile(p, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	runner := tokenFile(c.Vault.TokenWithPolicies(t, "runner"))
	root := tokenFile(c.Vault.Token)
	read := func(path, token string) (indexauth.Credentials, error) {
		return indexauth.Source{Path: path, Address: c.Vault.Addr, TokenFile: token}.Read(ctx)
	}

	creds, err := read(path, runner)
	if err != nil {
		t.Fatalf("the runner policy's token: %v", err)
	}
	out, _, err := creds.Apply([]string{"https://mirror.example/simple", "https://pypi.nvidia.com"})
	if err != nil || !reflect.DeepEqual(out, []string{"https://reader:s3cret-pw@mirror.example/simple", "https://nv-t0ken@pypi.nvidia.com"}) {
		t.Fatalf("Apply: %q %v", out, err)
	}

	if _, err := kv.Put(ctx, "modelnodes/broken", map[string]any{"https://mirror.example": "reader:s3cret-pw"}); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "modelnodes/deleted", map[string]any{"mirror.example": "reader:s3cret-pw"}); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "modelnodes/deleted"); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct{ path, token, want string }{
		"no policy":      {path, tokenFile(c.Vault.TokenWithPolicies(t, "default")), `denied reading secret/data/modelnodes/indexes with the task's Vault token: the job's Vault policy must allow "read"`},
		"missing secret": {"secret/data/modelnodes/nothing", root, "has no secret at secret/data/modelnodes/nothing"},
		"deleted secret": {"secret/data/modelnodes/deleted", root, "no current version"},
		"bad entry":      {"secret/data/modelnodes/broken", root, `key "https://mirror.example": want an index host`},
		"revoked token":  {path, tokenFile("hvs.not-a-token"), "denied"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := read(c.path, c.token)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Read: %v\nwant an error saying %q", err, c.want)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("the error shows a credential: %q", err)
			}
			t.Logf("%s: %v", name, err)
		})
	}
}
