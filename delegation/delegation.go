// Package delegation is CrunchDAO's wallet delegation: the cruncher's wallet
// signs a statement that a given TLS public key serves its model, and the
// runner presents it on every call so the coordinator can check it is talking
// to the model it meant, not to whoever holds a certificate from the CA.
//
// On the wire, as gRPC response headers of every unary call:
//
//	x-server-auth-message    base64 of the message bytes, a JSON object:
//	                         {"cert_pub": base64 of the runner's TLS SubjectPublicKeyInfo DER,
//	                          "model_id": "...", "hotkey": "...", "expires_at": unix seconds}
//	x-server-auth-signature  base64 of the Ed25519 signature of the message bytes by the wallet
//	x-server-wallet-pubkey   the wallet's public key, base58 (a Solana address)
//
// The signature covers the message bytes exactly as sent, so neither side
// re-encodes the JSON.
package delegation

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mr-tron/base58"
	"google.golang.org/grpc/metadata"

	"github.com/modelnodes/modelnodes/internal/filewatch"
)

// Header names.
const (
	HeaderMessage   = "x-server-auth-message"
	HeaderSignature = "x-server-auth-signature"
	HeaderWallet    = "x-server-wallet-pubkey"
)

// maxMessage bounds a message a verifier will decode (a real one is ~300 bytes).
const maxMessage = 4096

// Message is what the wallet signs.
type Message struct {
	// CertPub is the runner's TLS public key: base64 of its
	// SubjectPublicKeyInfo DER.
	CertPub string `json:"cert_pub"`
	// ModelID is the model the runner serves.
	ModelID string `json:"model_id"`
	// Hotkey is the cruncher's hotkey for the model.
	Hotkey string `json:"hotkey"`
	// ExpiresAt is when the statement stops being valid, in unix seconds.
	ExpiresAt int64 `json:"expires_at"`
}

// Proof is a signed message.
type Proof struct {
	Message   []byte            // the signed bytes
	Signature []byte            // Ed25519 over Message
	Wallet    ed25519.PublicKey // the signer
}

// Errors of Verify; each names one way a proof fails.
var (
	ErrMalformed    = errors.New("delegation: malformed")
	ErrMissing      = errors.New("delegation: no delegation headers")
	ErrBadSignature = errors.New("delegation: the signature does not verify")
	ErrWrongWallet  = errors.New("delegation: signed by another wallet")
	ErrWrongModel   = errors.New("delegation: names another model")
	ErrWrongHotkey  = errors.New("delegation: names another hotkey")
	ErrExpired      = errors.New("delegation: expired")
	ErrWrongKey     = errors.New("delegation: covers another TLS key than the connection's")
)

// Sign makes a proof of m with the wallet's key.
func Sign(key ed25519.PrivateKey, m Message) (*Proof, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: wallet key of %d bytes", ErrMalformed, len(key))
	}
	msg, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return &Proof{Message: msg, Signature: ed25519.Sign(key, msg), Wallet: key.Public().(ed25519.PublicKey)}, nil
}

// CertPub encodes a SubjectPublicKeyInfo DER as Message.CertPub.
func CertPub(spkiDER []byte) string { return base64.StdEncoding.EncodeToString(spkiDER) }

// Headers returns the proof as gRPC metadata.
func (p *Proof) Headers() metadata.MD {
	return metadata.Pairs(
		HeaderMessage, base64.StdEncoding.EncodeToString(p.Message),
		HeaderSignature, base64.StdEncoding.EncodeToString(p.Signature),
		HeaderWallet, base58.Encode(p.Wallet),
	)
}

// FromHeaders reads a proof from response headers.
func FromHeaders(md metadata.MD) (*Proof, error) {
	get := func(k string) (string, error) {
		v := md.Get(k)
		switch {
		case len(v) == 0:
			return "", fmt.Errorf("%w (%s)", ErrMissing, k)
		case len(v) > 1:
			return "", fmt.Errorf("%w: %d values of %s", ErrMalformed, len(v), k)
		}
		return v[0], nil
	}
	var vals [3]string
	for i, k := range []string{HeaderMessage, HeaderSignature, HeaderWallet} {
		v, err := get(k)
		if err != nil {
			return nil, err
		}
		vals[i] = v
	}
	return parse(vals[0], vals[1], vals[2])
}

func parse(msgB64, sigB64, wallet58 string) (*Proof, error) {
	if len(msgB64) > base64.StdEncoding.EncodedLen(maxMessage) {
		return nil, fmt.Errorf("%w: message longer than %d bytes", ErrMalformed, maxMessage)
	}
	msg, err := base64.StdEncoding.DecodeString(msgB64)
	if err != nil {
		return nil, fmt.Errorf("%w: message: %v", ErrMalformed, err)
	}
	sig, err := base64.StdEncoding.DecodeString(sigB64)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: signature", ErrMalformed)
	}
	if len(wallet58) > 64 {
		return nil, fmt.Errorf("%w: wallet", ErrMalformed)
	}
	wallet, err := base58.Decode(wallet58)
	if err != nil || len(wallet) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: wallet", ErrMalformed)
	}
	return &Proof{Message: msg, Signature: sig, Wallet: wallet}, nil
}

// Decode parses the signed message (without checking the signature).
func (p *Proof) Decode() (Message, error) {
	var m Message
	dec := json.NewDecoder(bytes.NewReader(p.Message))
	if err := dec.Decode(&m); err != nil {
		return m, fmt.Errorf("%w: message: %v", ErrMalformed, err)
	}
	return m, nil
}

// Expect is what the coordinator knows independently: the wallet and hotkey
// announced for the model (on chain or by the orchestrator), the model id,
// and the public key of the TLS connection the proof came on.
type Expect struct {
	Wallet   string // base58
	ModelID  string
	Hotkey   string
	ConnSPKI []byte // the peer certificate's RawSubjectPublicKeyInfo
	Now      time.Time
}

// Verify checks the proof against e and returns its message.
func (p *Proof) Verify(e Expect) (Message, error) {
	if !ed25519.Verify(p.Wallet, p.Message, p.Signature) {
		return Message{}, ErrBadSignature
	}
	if base58.Encode(p.Wallet) != e.Wallet {
		return Message{}, fmt.Errorf("%w: %s", ErrWrongWallet, base58.Encode(p.Wallet))
	}
	m, err := p.Decode()
	if err != nil {
		return m, err
	}
	if m.ModelID != e.ModelID {
		return m, fmt.Errorf("%w: %q", ErrWrongModel, m.ModelID)
	}
	if m.Hotkey != e.Hotkey {
		return m, fmt.Errorf("%w: %q", ErrWrongHotkey, m.Hotkey)
	}
	now := e.Now
	if now.IsZero() {
		now = time.Now()
	}
	if now.Unix() >= m.ExpiresAt {
		return m, fmt.Errorf("%w at %s", ErrExpired, time.Unix(m.ExpiresAt, 0).UTC().Format(time.RFC3339))
	}
	if m.CertPub != CertPub(e.ConnSPKI) {
		return m, ErrWrongKey
	}
	return m, nil
}

// File is how a proof is stored for the runner (--delegation): the header
// values as they are sent.
type File struct {
	Message   string `json:"message"`
	Signature string `json:"signature"`
	Wallet    string `json:"wallet"`
}

// ToFile returns p in the file format.
func (p *Proof) ToFile() File {
	md := p.Headers()
	return File{Message: md.Get(HeaderMessage)[0], Signature: md.Get(HeaderSignature)[0], Wallet: md.Get(HeaderWallet)[0]}
}

// Load reads a proof file and checks its own signature.
func Load(path string) (*Proof, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return decodeFile(b, path)
}

// decodeFile reads the file format (from path, for errors) and checks the
// proof's own signature.
func decodeFile(b []byte, path string) (*Proof, error) {
	var f File
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, path, err)
	}
	p, err := parse(f.Message, f.Signature, f.Wallet)
	if err != nil {
		return nil, err
	}
	if !ed25519.Verify(p.Wallet, p.Message, p.Signature) {
		return nil, fmt.Errorf("%s: %w", path, ErrBadSignature)
	}
	return p, nil
}

// PublicKeyDER extracts a SubjectPublicKeyInfo DER from PEM data holding a
// certificate, a certificate request or a public key: what a cruncher has of
// the runner's key when signing.
func PublicKeyDER(pemData []byte) ([]byte, error) {
	block, _ := pem.Decode(pemData)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	switch block.Type {
	case "CERTIFICATE":
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		return c.RawSubjectPublicKeyInfo, nil
	case "CERTIFICATE REQUEST":
		r, err := x509.ParseCertificateRequest(block.Bytes)
		if err != nil {
			return nil, err
		}
		return r.RawSubjectPublicKeyInfo, nil
	case "PUBLIC KEY":
		if _, err := x509.ParsePKIXPublicKey(block.Bytes); err != nil {
			return nil, err
		}
		return block.Bytes, nil
	}
	return nil, fmt.Errorf("PEM block %q holds no public key", block.Type)
}

// Reloader serves the proof in a file, re-read when the file changes (a
// cruncher re-signs before expiry; the runner picks it up without restart).
type Reloader struct {
	path  string
	cur   atomic.Pointer[Proof]
	mu    sync.Mutex
	stamp string
}

// NewReloader loads the proof at path. An empty file holds no proof yet
// (a Nomad template of a variable nobody has written): Proof is nil until
// the file gets one.
func NewReloader(path string) (*Reloader, error) {
	r := &Reloader{path: path}
	if _, err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Proof returns the proof in use, nil when there is none.
func (r *Reloader) Proof() *Proof { return r.cur.Load() }

// Reload re-reads the file if it changed; on error the previous proof stays.
func (r *Reloader) Reload() (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := filewatch.Stamp(r.path)
	if err != nil {
		return false, err
	}
	if st == r.stamp {
		return false, nil
	}
	b, err := os.ReadFile(r.path)
	if err != nil {
		return false, err
	}
	var p *Proof
	if len(bytes.TrimSpace(b)) > 0 {
		if p, err = decodeFile(b, r.path); err != nil {
			return false, err
		}
	}
	r.cur.Store(p)
	r.stamp = st
	return true, nil
}
