// Package vaultkey keeps a runner's TLS private key in Vault's KV store
// (version 2), one key per model, so the key outlives certificate renewals,
// task restarts and rescheduling to another node. A cruncher's wallet
// delegation names the runner's public key (package delegation): with a key
// that changed at every renewal or allocation, the delegation would stop
// matching and CrunchDAO's client would refuse the runner.
//
// The first runner of a model creates the key with check-and-set 0, so two
// allocations starting at once (a deployment, a reschedule) end up with the
// same key: the loser of the race reads the winner's. Vault's runner policy
// lets a runner's token read and create only the entry named after its own
// Nomad job (deploy/vault/policies/runner.hcl); the key never touches the
// node's disk.
package vaultkey

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/modelnodes/modelnodes/delegation"
	"github.com/modelnodes/modelnodes/pki/vaultpki"
)

// Entry fields.
const (
	FieldPrivateKey = "private_key" // PKCS #8, PEM
	// FieldCertPub is the public key as a delegation names it: base64 of
	// the SubjectPublicKeyInfo DER (what crunchers sign).
	FieldCertPub = "cert_pub"
)

// RSABits is the size of the keys created: Vault's runner role issues RSA
// 2048 only, because CrunchDAO's client refuses other keys.
const RSABits = 2048

// Ref names an entry: <Mount>/data/<Name> in Vault's API.
type Ref struct {
	Mount, Name string
}

// ParseRef reads "mount/name" (e.g. "runner-keys/model-node-3f2a").
func ParseRef(s string) (Ref, error) {
	mount, name, ok := strings.Cut(strings.Trim(s, "/"), "/")
	if !ok || mount == "" || name == "" {
		return Ref{}, fmt.Errorf("vaultkey: %q: want MOUNT/NAME (a KV v2 mount and the entry's name)", s)
	}
	return Ref{Mount: mount, Name: name}, nil
}

func (r Ref) String() string { return r.Mount + "/" + r.Name }

// LoadOrCreate returns the key stored at ref, creating it when there is
// none. created says whether this call made it.
func LoadOrCreate(ctx context.Context, c *vaultapi.Client, ref Ref) (key crypto.Signer, created bool, err error) {
	kv := c.KVv2(ref.Mount)
	if key, err := load(ctx, kv, ref); err == nil || !errors.Is(err, vaultapi.ErrSecretNotFound) {
		return key, false, err
	}
	k, err := rsa.GenerateKey(rand.Reader, RSABits)
	if err != nil {
		return nil, false, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, false, err
	}
	spki, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return nil, false, err
	}
	_, err = kv.Put(ctx, ref.Name, map[string]any{
		FieldPrivateKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		FieldCertPub:    delegation.CertPub(spki),
	}, vaultapi.WithCheckAndSet(0))
	if err == nil {
		return k, true, nil
	}
	// Another runner of the same model created it first: use that one.
	if key, lerr := load(ctx, kv, ref); lerr == nil {
		return key, false, nil
	}
	return nil, false, fmt.Errorf("vaultkey: creating %s: %w", ref, err)
}

func load(ctx context.Context, kv *vaultapi.KVv2, ref Ref) (crypto.Signer, error) {
	s, err := kv.Get(ctx, ref.Name)
	if err != nil {
		if errors.Is(err, vaultapi.ErrSecretNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("vaultkey: reading %s: %w", ref, err)
	}
	text, _ := s.Data[FieldPrivateKey].(string)
	signer, err := vaultpki.ParseKey([]byte(text))
	if err != nil {
		return nil, fmt.Errorf("vaultkey: %s, field %s: %w", ref, FieldPrivateKey, err)
	}
	return signer, nil
}
