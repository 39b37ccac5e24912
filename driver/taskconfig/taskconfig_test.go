package taskconfig_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/modelnodes/modelnodes/driver/taskconfig"
)

func TestMap(t *testing.T) {
	for name, c := range map[string]struct {
		cfg  taskconfig.Config
		want map[string]any
	}{
		"unset fields are left out": {taskconfig.Config{ModelDir: "local/model", Plaintext: true},
			map[string]any{"model_dir": "local/model", "plaintext": true}},
		"blocks are lists of one map, lists stay lists": {taskconfig.Config{
			ModelDir: "local/model", Runtime: "python", Port: "grpc", MaxQueue: 4,
			TLS:   &taskconfig.TLS{ClientCA: "secrets/ca.crt", Vault: &taskconfig.TLSVault{Address: "https://v:8200", TTL: "24h"}},
			Authz: &taskconfig.Authz{Crunch: "alpha", CertHashes: []string{"ab", "cd"}, CRLURL: "https://v:8200/v1/pki_int/issuers"},
		}, map[string]any{
			"model_dir": "local/model", "runtime": "python", "port": "grpc", "max_queue": 4,
			"tls": []map[string]any{{"client_ca": "secrets/ca.crt",
				"vault": []map[string]any{{"address": "https://v:8200", "ttl": "24h"}}}},
			"authz": []map[string]any{{"crunch": "alpha", "cert_hashes": []string{"ab", "cd"},
				"crl_url": "https://v:8200/v1/pki_int/issuers"}},
		}},
		"an empty block is still a block": {taskconfig.Config{TLS: &taskconfig.TLS{}},
			map[string]any{"tls": []map[string]any{{}}}},
	} {
		if got := c.cfg.Map(); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s:\n got %#v\nwant %#v", name, got, c.want)
		}
	}
}

func TestValidate(t *testing.T) {
	tls := &taskconfig.TLS{Cert: "secrets/tls.pem", Key: "secrets/tls.pem", ClientCA: "secrets/ca.crt"}
	authz := &taskconfig.Authz{Crunch: "alpha", CRLURL: "https://v/crl"}
	all := []string{"python", "executable"}
	for name, c := range map[string]struct {
		cfg     taskconfig.Config
		runtime []string
		want    []string // "" accepts
	}{
		"secure":                           {taskconfig.Config{ModelDir: "m", Runtime: "python", TLS: tls, Authz: authz}, all, nil},
		"plaintext":                        {taskconfig.Config{ModelDir: "m", Runtime: "python", Plaintext: true}, all, nil},
		"everything bad":                   {taskconfig.Config{Runtime: "executable", Entry: "../x", MaxQueue: -1, CallTimeout: "soon"}, all, []string{"model_dir is required", "inside model_dir", "a tls block is required", "call_timeout", "max_queue"}},
		"runtime not allowed on this node": {taskconfig.Config{ModelDir: "m", Runtime: "executable", Entry: "run", Plaintext: true}, []string{"python"}, []string{`runtime "executable" is not allowed`}},
		"vault and files":                  {taskconfig.Config{ModelDir: "m", Runtime: "python", TLS: &taskconfig.TLS{Cert: "c", Key: "k", Vault: &taskconfig.TLSVault{TTL: "long"}}}, all, []string{"tls.vault replaces", "tls.vault.address is required", "tls.vault.ttl"}},
		"authz without ca or crl": {taskconfig.Config{ModelDir: "m", Runtime: "python", TLS: &taskconfig.TLS{Cert: "c", Key: "k"},
			Authz: &taskconfig.Authz{PolicyFile: "p", Crunch: "alpha", CRLGrace: "0s"}}, all,
			[]string{"needs tls.client_ca", "policy_file replaces", "needs a revocation list", "crl_grace"}},
	} {
		err := c.cfg.Validate(c.runtime)
		if len(c.want) == 0 && err != nil {
			t.Errorf("%s: refused: %v", name, err)
		}
		for _, w := range c.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v, want %q in it", name, err, w)
			}
		}
	}
}
