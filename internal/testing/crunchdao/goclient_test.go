//go:build e2e

package crunchdao_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/internal/testing/crunchdao"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
)

// Our coordinator client works against CrunchDAO's own runner (plaintext):
// it sets the model up as it joins, fans a call out, reads the result typed
// as their runner types it, and reads their status codes as the model's
// (BAD_IMPLEMENTATION for a method the model lacks, MODEL_FAILED with the
// error for a method that raised, INVALID_ARGUMENT for an empty method).
func TestGoClientAgainstCrunchDAORunner(t *testing.T) {
	envs := crunchdao.Install(t)
	theirs := crunchdao.StartRunner(t, envs, pymodel(t))
	c := goClient(t, theirs.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	arg := echoArg(t)
	res := c.Call(ctx, "echo", client.Request{Args: client.Positional(arg)})
	if len(res) != 1 || !res[0].OK() {
		t.Fatalf("echo: %+v", res)
	}
	if v := res[0].Value; v.GetType() != commonspb.VariantType_JSON || !jsonEqual(t, v.GetValue(), arg.GetValue()) {
		t.Errorf("echo returned %s %q, want the JSON argument back", v.GetType(), v.GetValue())
	}
	res = c.Call(ctx, "add", client.Request{Args: client.Positional(commonspb.Int(2), commonspb.Int(40))})
	if len(res) != 1 || !res[0].OK() || res[0].Value.GetType() != commonspb.VariantType_INT {
		t.Fatalf("add: %+v", res)
	}
	if n, err := res[0].Value.AsInt(); err != nil || n != 42 {
		t.Errorf("add(2, 40) = %d %v, want 42", n, err)
	}
	for _, tc := range []struct{ method, code, message string }{
		{"no_such_method", "BAD_IMPLEMENTATION", "no_such_method"},
		{"fail", "MODEL_FAILED", "the model is unhappy"},
		{"", "INVALID_ARGUMENT", "methodName"},
	} {
		res := c.Call(ctx, tc.method, client.Request{})
		if len(res) != 1 || res[0].Status != client.ModelError || res[0].Code != tc.code {
			t.Errorf("call %q: %+v, want a model error %s", tc.method, res, tc.code)
			continue
		}
		if !containsFold(res[0].Message, tc.message) {
			t.Errorf("call %q: message %q, want it to name %q", tc.method, res[0].Message, tc.message)
		}
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}
