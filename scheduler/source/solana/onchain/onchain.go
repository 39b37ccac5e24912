// Package onchain decodes (and, for tests and tools, encodes) the Solana
// accounts the scheduler reads, Anchor style: an 8-byte discriminator (the
// first 8 bytes of sha256("account:<Name>")) followed by the Borsh encoding
// of the fields. The layouts are documented in docs/onchain.md; the
// CoordinatorCertificate is CrunchDAO's and is decoded byte for byte.
package onchain

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"unicode/utf8"
)

// PublicKey is a 32-byte Solana address.
type PublicKey [32]byte

// Discriminator returns Anchor's discriminator of an account type.
func Discriminator(name string) [8]byte {
	sum := sha256.Sum256([]byte("account:" + name))
	var d [8]byte
	copy(d[:], sum[:8])
	return d
}

var (
	CrunchDiscriminator                 = Discriminator("Crunch")
	ModelAuthorizationDiscriminator     = Discriminator("ModelAuthorization")
	CoordinatorCertificateDiscriminator = Discriminator("CoordinatorCertificate")
)

// CoordinatorCertificateSize is the exact size of that account.
const CoordinatorCertificateSize = 121

// String bounds (bytes): longer strings make an account invalid.
const (
	MaxNameLen  = 64
	MaxIDLen    = 64
	MaxURILen   = 512
	MaxEntryLen = 128
)

// Errors of decoding; each wrapped with the field at fault.
var (
	ErrDiscriminator = errors.New("wrong discriminator (not this account type)")
	ErrShort         = errors.New("account data too short")
	ErrTrailing      = errors.New("trailing bytes after the account")
	ErrInvalid       = errors.New("invalid value")
)

// Crunch is a competition: its name, its coordinator's wallet and the
// SHA-256 hashes of the public keys the coordinator may call models with
// (primary and secondary, for rotation; all zero = empty).
type Crunch struct {
	Name              string
	Coordinator       PublicKey
	CertHash          [32]byte
	CertHashSecondary [32]byte
	Bump              uint8
}

// Hardware types of a ModelAuthorization.
const (
	HardwareCPU uint8 = 0
	HardwareGPU uint8 = 1
)

// Runtimes of a ModelAuthorization.
const (
	RuntimePython     uint8 = 0
	RuntimeExecutable uint8 = 1
)

// Desired states of a ModelAuthorization.
const (
	DesiredStopped uint8 = 0
	DesiredRunning uint8 = 1
)

// ModelAuthorization allows one model of one cruncher to run for one crunch.
type ModelAuthorization struct {
	Crunch         PublicKey // the Crunch account
	Cruncher       PublicKey // the cruncher's wallet
	Hotkey         PublicKey // the cruncher's hotkey
	ModelID        string
	SubmissionID   string
	ArtifactSHA256 [32]byte
	ArtifactURI    string
	Runtime        uint8 // RuntimePython, RuntimeExecutable
	Entry          string
	Hardware       uint8  // HardwareCPU, HardwareGPU
	CPUMHz         uint32 // 0: default
	MemoryMB       uint32 // 0: default
	GPUs           uint8
	DesiredState   uint8 // DesiredStopped, DesiredRunning
	Bump           uint8
	// The resources extension, after Bump: an account that ends at Bump, or
	// with zero padding there, has no resources archive. Accounts written
	// before the extension existed decode unchanged.
	ResourcesSHA256 [32]byte
	ResourcesURI    string
}

// CoordinatorCertificate is CrunchDAO's account: the certificate hashes of
// a coordinator (lowercase hex of SHA-256 of the DER SubjectPublicKeyInfo).
type CoordinatorCertificate struct {
	Coordinator        PublicKey
	CertHash           [32]byte
	CertHashSecondary  [32]byte
	PrimaryUpdatedAt   int64
	SecondaryUpdatedAt int64
	Bump               uint8
}

// Empty reports whether the certificate names no key at all.
func (c *CoordinatorCertificate) Empty() bool {
	return c.CertHash == [32]byte{} && c.CertHashSecondary == [32]byte{}
}

// HashHex returns the lowercase hex of a hash, "" when it is all zero.
func HashHex(h [32]byte) string {
	if h == ([32]byte{}) {
		return ""
	}
	return hex.EncodeToString(h[:])
}

type reader struct {
	b   []byte
	off int
}

func (r *reader) take(n int, field string) ([]byte, error) {
	if n < 0 || len(r.b)-r.off < n {
		return nil, fmt.Errorf("%s at offset %d: %w", field, r.off, ErrShort)
	}
	p := r.b[r.off : r.off+n]
	r.off += n
	return p, nil
}

func (r *reader) u8(field string) (uint8, error) {
	p, err := r.take(1, field)
	if err != nil {
		return 0, err
	}
	return p[0], nil
}

func (r *reader) u32(field string) (uint32, error) {
	p, err := r.take(4, field)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(p), nil
}

func (r *reader) i64(field string) (int64, error) {
	p, err := r.take(8, field)
	if err != nil {
		return 0, err
	}
	return int64(binary.LittleEndian.Uint64(p)), nil
}

func (r *reader) fixed(dst []byte, field string) error {
	p, err := r.take(len(dst), field)
	if err != nil {
		return err
	}
	copy(dst, p)
	return nil
}

// str reads a Borsh string (u32 length, UTF-8 bytes) of at most max bytes.
func (r *reader) str(max int, field string) (string, error) {
	n, err := r.u32(field)
	if err != nil {
		return "", err
	}
	if n > uint32(max) {
		return "", fmt.Errorf("%s: length %d over %d: %w", field, n, max, ErrInvalid)
	}
	p, err := r.take(int(n), field)
	if err != nil {
		return "", err
	}
	if !utf8.Valid(p) {
		return "", fmt.Errorf("%s: not UTF-8: %w", field, ErrInvalid)
	}
	return string(p), nil
}

func (r *reader) disc(want [8]byte) error {
	p, err := r.take(8, "discriminator")
	if err != nil {
		return err
	}
	if !bytes.Equal(p, want[:]) {
		return ErrDiscriminator
	}
	return nil
}

// end accepts zero padding after the fields (accounts are often allocated
// with room to grow) but nothing else.
func (r *reader) end() error {
	for _, c := range r.b[r.off:] {
		if c != 0 {
			return fmt.Errorf("at offset %d: %w", r.off, ErrTrailing)
		}
	}
	return nil
}

// DecodeCrunch decodes a Crunch account.
func DecodeCrunch(data []byte) (*Crunch, error) {
	r := &reader{b: data}
	if err := r.disc(CrunchDiscriminator); err != nil {
		return nil, err
	}
	var c Crunch
	var err error
	if c.Name, err = r.str(MaxNameLen, "name"); err != nil {
		return nil, err
	}
	if c.Name == "" {
		return nil, fmt.Errorf("name: empty: %w", ErrInvalid)
	}
	if err := r.fixed(c.Coordinator[:], "coordinator"); err != nil {
		return nil, err
	}
	if err := r.fixed(c.CertHash[:], "cert_hash"); err != nil {
		return nil, err
	}
	if err := r.fixed(c.CertHashSecondary[:], "cert_hash_secondary"); err != nil {
		return nil, err
	}
	if c.Bump, err = r.u8("bump"); err != nil {
		return nil, err
	}
	return &c, r.end()
}

// DecodeModelAuthorization decodes a ModelAuthorization account.
func DecodeModelAuthorization(data []byte) (*ModelAuthorization, error) {
	r := &reader{b: data}
	if err := r.disc(ModelAuthorizationDiscriminator); err != nil {
		return nil, err
	}
	var a ModelAuthorization
	var err error
	for _, f := range []struct {
		dst  []byte
		name string
	}{{a.Crunch[:], "crunch"}, {a.Cruncher[:], "cruncher"}, {a.Hotkey[:], "hotkey"}} {
		if err := r.fixed(f.dst, f.name); err != nil {
			return nil, err
		}
	}
	if a.ModelID, err = r.str(MaxIDLen, "model_id"); err != nil {
		return nil, err
	}
	if a.ModelID == "" {
		return nil, fmt.Errorf("model_id: empty: %w", ErrInvalid)
	}
	if a.SubmissionID, err = r.str(MaxIDLen, "submission_id"); err != nil {
		return nil, err
	}
	if err := r.fixed(a.ArtifactSHA256[:], "artifact_sha256"); err != nil {
		return nil, err
	}
	if a.ArtifactURI, err = r.str(MaxURILen, "artifact_uri"); err != nil {
		return nil, err
	}
	if a.Runtime, err = r.u8("runtime"); err != nil {
		return nil, err
	}
	if a.Runtime > RuntimeExecutable {
		return nil, fmt.Errorf("runtime %d: %w", a.Runtime, ErrInvalid)
	}
	if a.Entry, err = r.str(MaxEntryLen, "entry"); err != nil {
		return nil, err
	}
	if a.Hardware, err = r.u8("hardware"); err != nil {
		return nil, err
	}
	if a.Hardware > HardwareGPU {
		return nil, fmt.Errorf("hardware %d: %w", a.Hardware, ErrInvalid)
	}
	if a.CPUMHz, err = r.u32("cpu_mhz"); err != nil {
		return nil, err
	}
	if a.MemoryMB, err = r.u32("memory_mb"); err != nil {
		return nil, err
	}
	if a.CPUMHz > 1<<20 || a.MemoryMB > 1<<24 {
		return nil, fmt.Errorf("resources cpu_mhz=%d memory_mb=%d: %w", a.CPUMHz, a.MemoryMB, ErrInvalid)
	}
	if a.GPUs, err = r.u8("gpus"); err != nil {
		return nil, err
	}
	if a.DesiredState, err = r.u8("desired_state"); err != nil {
		return nil, err
	}
	if a.DesiredState > DesiredRunning {
		return nil, fmt.Errorf("desired_state %d: %w", a.DesiredState, ErrInvalid)
	}
	if a.Bump, err = r.u8("bump"); err != nil {
		return nil, err
	}
	if r.end() == nil {
		return &a, nil // no extension: nothing, or zero padding
	}
	if err := r.fixed(a.ResourcesSHA256[:], "resources_sha256"); err != nil {
		return nil, err
	}
	if a.ResourcesURI, err = r.str(MaxURILen, "resources_uri"); err != nil {
		return nil, err
	}
	return &a, r.end()
}

// DecodeCoordinatorCertificate decodes CrunchDAO's account (exactly 121 bytes).
func DecodeCoordinatorCertificate(data []byte) (*CoordinatorCertificate, error) {
	if len(data) != CoordinatorCertificateSize {
		r := &reader{b: data}
		if err := r.disc(CoordinatorCertificateDiscriminator); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("size %d, want %d: %w", len(data), CoordinatorCertificateSize, ErrInvalid)
	}
	r := &reader{b: data}
	if err := r.disc(CoordinatorCertificateDiscriminator); err != nil {
		return nil, err
	}
	var c CoordinatorCertificate
	_ = r.fixed(c.Coordinator[:], "coordinator")
	_ = r.fixed(c.CertHash[:], "cert_hash")
	_ = r.fixed(c.CertHashSecondary[:], "cert_hash_secondary")
	c.PrimaryUpdatedAt, _ = r.i64("primary_updated_at")
	c.SecondaryUpdatedAt, _ = r.i64("secondary_updated_at")
	c.Bump, _ = r.u8("bump")
	return &c, nil
}

type writer struct{ bytes.Buffer }

func (w *writer) str(s string) {
	_ = binary.Write(w, binary.LittleEndian, uint32(len(s)))
	w.WriteString(s)
}

func (w *writer) u32(v uint32) { _ = binary.Write(w, binary.LittleEndian, v) }

// Encode returns the account data of c.
func (c *Crunch) Encode() []byte {
	var w writer
	w.Write(CrunchDiscriminator[:])
	w.str(c.Name)
	w.Write(c.Coordinator[:])
	w.Write(c.CertHash[:])
	w.Write(c.CertHashSecondary[:])
	w.WriteByte(c.Bump)
	return w.Bytes()
}

// Encode returns the account data of a.
func (a *ModelAuthorization) Encode() []byte {
	var w writer
	w.Write(ModelAuthorizationDiscriminator[:])
	w.Write(a.Crunch[:])
	w.Write(a.Cruncher[:])
	w.Write(a.Hotkey[:])
	w.str(a.ModelID)
	w.str(a.SubmissionID)
	w.Write(a.ArtifactSHA256[:])
	w.str(a.ArtifactURI)
	w.WriteByte(a.Runtime)
	w.str(a.Entry)
	w.WriteByte(a.Hardware)
	w.u32(a.CPUMHz)
	w.u32(a.MemoryMB)
	w.WriteByte(a.GPUs)
	w.WriteByte(a.DesiredState)
	w.WriteByte(a.Bump)
	if a.ResourcesURI != "" || a.ResourcesSHA256 != ([32]byte{}) {
		w.Write(a.ResourcesSHA256[:])
		w.str(a.ResourcesURI)
	}
	return w.Bytes()
}

// Encode returns the account data of c (121 bytes).
func (c *CoordinatorCertificate) Encode() []byte {
	var w writer
	w.Write(CoordinatorCertificateDiscriminator[:])
	w.Write(c.Coordinator[:])
	w.Write(c.CertHash[:])
	w.Write(c.CertHashSecondary[:])
	_ = binary.Write(&w, binary.LittleEndian, c.PrimaryUpdatedAt)
	_ = binary.Write(&w, binary.LittleEndian, c.SecondaryUpdatedAt)
	w.WriteByte(c.Bump)
	return w.Bytes()
}
