package jobs_test

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	dep "github.com/hashicorp/consul-template/dependency"
	cttemplate "github.com/hashicorp/consul-template/template"

	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/jobs"
)

// jobs.CATemplate rendered by consul-template at the version Nomad 1.11.3
// embeds, against Vault's answers after `deploy/vault/setup
// rotate-intermediate` (as Vault 1.21 gives them: pki_int/cert/ca_chain holds
// only the new default issuer; LIST pki_int/issuers holds the imported root,
// the previous and the new intermediate). The bundle must hold both
// intermediates, or a runner started after the rotation cannot verify the
// previous issuer's revocation list and refuses its still-valid
// certificates; and it must read only paths Vault serves without a token
// (the runner's policy grants none of them). The real Vault and Nomad run
// it in driver.TestE2ERunnerAfterIntermediateRotation.
func TestCATemplateRendersEveryIssuer(t *testing.T) {
	root := testpki.NewCA(t, "root")
	previous := testpki.NewCA(t, "intermediate 1")
	current := testpki.NewCA(t, "intermediate 2")
	ids := map[string]*testpki.CA{"0d1e2f-root": root, "1a2b3c-previous": previous, "4d5e6f-current": current}
	reads := map[string]map[string]any{
		"pki/cert/ca":           {"certificate": string(root.PEM())},
		"pki_int/cert/ca":       {"certificate": string(current.PEM())},
		"pki_int/cert/ca_chain": {"ca_chain": string(current.PEM()) + string(root.PEM())},
	}
	var keys []string
	for id, ca := range ids {
		reads["pki_int/issuer/"+id+"/json"] = map[string]any{"certificate": string(ca.PEM()), "issuer_id": id}
		keys = append(keys, id)
	}
	lists := map[string][]string{"pki_int/issuers": keys}
	// What Vault 1.21's PKI backend serves unauthenticated (PathsSpecial
	// of builtin/logical/pki), as the template reaches it.
	public := regexp.MustCompile(`^vault\.(read\(pki(_int)?/cert/[^/)]+\)|list\(pki_int/issuers\)|read\(pki_int/issuer/[^/)]+/json\))$`)

	tmpl, err := cttemplate.NewTemplate(&cttemplate.NewTemplateInput{Contents: jobs.CATemplate})
	if err != nil {
		t.Fatalf("consul-template refuses CATemplate: %v", err)
	}
	brain := cttemplate.NewBrain()
	var out []byte
	for round := 0; ; round++ {
		res, err := tmpl.Execute(&cttemplate.ExecuteInput{Brain: brain})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range res.Used.List() {
			if !public.MatchString(d.String()) {
				t.Errorf("the template reads %s, which Vault does not serve without a token", d)
			}
		}
		if res.Missing.Len() == 0 {
			out = res.Output
			break
		}
		if round > 5 {
			t.Fatalf("still missing after %d rounds: %v", round, res.Missing.List())
		}
		// Answer as Vault does: the runner's token reads what is public.
		for _, d := range res.Missing.List() {
			var path string
			switch q := d.(type) {
			case *dep.VaultReadQuery:
				path = strings.TrimSuffix(strings.TrimPrefix(q.String(), "vault.read("), ")")
				data, ok := reads[path]
				if !ok {
					t.Fatalf("the template reads %s, which Vault does not have", path)
				}
				brain.Remember(d, &dep.Secret{Data: data})
			case *dep.VaultListQuery:
				path = strings.TrimSuffix(strings.TrimPrefix(q.String(), "vault.list("), ")")
				brain.Remember(d, lists[path])
			default:
				t.Fatalf("unexpected dependency %s (%T)", d, d)
			}
		}
	}
	for what, ca := range map[string]*testpki.CA{"root": root, "previous intermediate": previous, "current intermediate": current} {
		if !bytes.Contains(out, bytes.TrimSpace(ca.PEM())) {
			t.Errorf("the rendered client-CA bundle lacks the %s:\n%s", what, out)
		}
	}
}
