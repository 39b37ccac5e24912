//go:build e2e

package testcluster

import (
	"fmt"
	"strings"
	"testing"

	vaultapi "github.com/hashicorp/vault/api"
)

// The operator policy (deploy/vault/policies/operator.hcl) cannot raise its
// own rights on a real Vault: every way an operator token could reach a
// policy it does not hold (write a policy, mint a token, an AppRole, a JWT
// role, an entity, an alias or a group carrying another policy, point the
// JWT auth at its own keys, mount a new auth method) is refused. The
// allowed counterpart of each AppRole attempt succeeds, so the refusals are
// about the parameters, not the path. TestVaultCoordinatorLifecycle shows
// the same token still does its job.
func TestVaultOperatorCannotRaiseItsRights(t *testing.T) {
	c := Start(t, Vault)
	ctx := t.Context()
	root := c.Vault.Client
	op := clientWithToken(t, c, tokenWithPolicies(t, c, "operator"))
	if _, err := c.RunScriptEnv(ctx, []string{"VAULT_TOKEN=" + op.Token()}, "deploy/vault/setup", "coordinator", "alpha"); err != nil {
		t.Fatalf("operator onboarding a coordinator: %v", err)
	}
	auths, err := root.Sys().ListAuthWithContext(ctx)
	if err != nil || auths["approle/"] == nil {
		t.Fatalf("auth mounts: %v", err)
	}
	approleAcc := auths["approle/"].Accessor

	// A privileged identity the operator must not be able to become: a
	// human admin whose policies sit on their entity.
	alice, err := root.Logical().WriteWithContext(ctx, "identity/entity", map[string]any{
		"name": "alice", "policies": []string{"admin"},
	})
	if err != nil {
		t.Fatal(err)
	}
	aliceID := alice.Data["id"].(string)

	denied := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("operator %s: %v, want permission denied", what, err)
		}
	}
	write := func(path string, data map[string]any) error {
		_, err := op.Logical().WriteWithContext(ctx, path, data)
		return err
	}
	everything := `path "*" { capabilities = ["create", "read", "update", "delete", "list", "sudo"] }`

	// Tokens with other policies.
	_, err = op.Auth().Token().CreateWithContext(ctx, &vaultapi.TokenCreateRequest{Policies: []string{"admin"}})
	denied("creating an admin token", err)
	_, err = op.Auth().Token().CreateOrphanWithContext(ctx, &vaultapi.TokenCreateRequest{Policies: []string{"root"}})
	denied("creating an orphan root token", err)
	denied("writing a token role", write("auth/token/roles/evil", map[string]any{"allowed_policies": "admin"}))

	// AppRoles: a coordinator role may carry the coordinator policy only.
	if err := write("auth/approle/role/coordinator-evil", map[string]any{"token_policies": []string{"coordinator"}}); err != nil {
		t.Fatalf("operator writing a coordinator AppRole with the coordinator policy: %v", err)
	}
	for _, p := range []any{"root", "admin", "operator", "runner", "coordinator,admin", []string{"coordinator", "admin"}} {
		denied(fmt.Sprintf("writing an AppRole with token_policies=%q", p), write("auth/approle/role/coordinator-evil", map[string]any{"token_policies": p}))
	}
	denied("writing an AppRole with the old policies parameter", write("auth/approle/role/coordinator-evil", map[string]any{"policies": "admin"}))
	denied("changing an AppRole's policies endpoint", write("auth/approle/role/coordinator-alpha/policies", map[string]any{"token_policies": "admin"}))
	denied("writing a periodic coordinator AppRole", write("auth/approle/role/coordinator-evil", map[string]any{"token_period": "1h"}))
	denied("choosing a coordinator's role_id", write("auth/approle/role/coordinator-evil/role-id", map[string]any{"role_id": "mine"}))
	denied("writing a non-coordinator AppRole", write("auth/approle/role/scheduler", map[string]any{"token_policies": "coordinator"}))

	// Identity: entities, aliases and groups that carry policies.
	denied("creating an entity with policies", write("identity/entity", map[string]any{"name": "evil", "policies": "admin"}))
	denied("updating an entity's policies by id", write("identity/entity", map[string]any{"id": aliceID, "policies": "admin,operator"}))
	denied("updating an entity's policies", write("identity/entity/id/"+aliceID, map[string]any{"policies": "operator"}))
	denied("writing a named coordinator entity with policies", write("identity/entity/name/coordinator-evil", map[string]any{"policies": "admin"}))
	denied("creating a group with policies", write("identity/group", map[string]any{"name": "evil", "policies": "admin", "member_entity_ids": aliceID}))
	evil, err := op.Logical().ReadWithContext(ctx, "auth/approle/role/coordinator-evil/role-id")
	if err != nil || evil == nil {
		t.Fatalf("operator reading a coordinator's role_id: %v", err)
	}
	// Logging in with this AppRole would make the operator alice.
	denied("aliasing its AppRole to a privileged entity", write("identity/entity-alias", map[string]any{
		"name": evil.Data["role_id"], "mount_accessor": approleAcc, "canonical_id": aliceID,
	}))
	denied("aliasing with entity_id", write("identity/entity-alias", map[string]any{
		"name": evil.Data["role_id"], "mount_accessor": approleAcc, "entity_id": aliceID,
	}))
	denied("aliasing on another auth mount", write("identity/entity-alias", map[string]any{
		"name": "alice", "mount_accessor": auths["token/"].Accessor, "custom_metadata": map[string]string{"crunch": "x"},
	}))

	// What a runner is, and new auth methods or mounts.
	denied("writing a JWT role with the admin policy", write("auth/jwt-nomad/role/evil", map[string]any{
		"role_type": "jwt", "user_claim": "sub", "bound_audiences": "vault.io", "token_policies": "admin",
	}))
	denied("pointing the JWT auth at its own keys", write("auth/jwt-nomad/config", map[string]any{"jwks_url": "http://127.0.0.1:1/jwks.json"}))
	denied("enabling an auth method", op.Sys().EnableAuthWithOptionsWithContext(ctx, "evil", &vaultapi.EnableAuthOptions{Type: "userpass"}))
	denied("mounting a secrets engine", op.Sys().MountWithContext(ctx, "evil", &vaultapi.MountInput{Type: "kv"}))
	denied("tuning the runner keys' mount", op.Sys().TuneMountAllowNilWithContext(ctx, "runner-keys", vaultapi.TuneMountConfigInput{DefaultLeaseTTL: new("1h")}))

	// Policies (last: one written would grant everything above), its own and the runner's included.
	for _, name := range []string{"operator", "runner", "admin", "coordinator", "everything"} {
		denied("writing policy "+name, op.Sys().PutPolicyWithContext(ctx, name, everything))
	}
	denied("deleting policy runner", op.Sys().DeletePolicyWithContext(ctx, "runner"))

	// Nothing above changed alice, the policies, or gave the operator more.
	got, err := root.Logical().ReadWithContext(ctx, "identity/entity/id/"+aliceID)
	if err != nil || len(got.Data["aliases"].([]any)) != 0 {
		t.Errorf("alice's entity gained an alias: %v %v", err, got)
	}
	self, err := op.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := self.TokenPolicies(); len(p) != 2 || p[0] != "default" || p[1] != "operator" {
		t.Errorf("the operator's token has policies %v, want [default operator]", p)
	}
}
