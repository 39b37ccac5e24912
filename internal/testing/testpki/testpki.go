// Package testpki makes throwaway certificate authorities and certificates
// for tests of TLS and mTLS paths. Production certificates come from Vault.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a certificate authority.
type CA struct {
	Cert *x509.Certificate
	key  crypto.Signer
}

// NewCA returns a fresh self-signed CA.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key := ecKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{Cert: cert, key: key}
}

// Leaf describes a certificate to issue.
type Leaf struct {
	CommonName string
	DNSNames   []string
	IPs        []net.IP
	URIs       []string
	Client     bool // client auth instead of server auth
	RSA        bool // an RSA key (CrunchDAO's client accepts only RSA servers)
	NotBefore  time.Time
	NotAfter   time.Time
}

// Issued is a certificate with its key, in PEM.
type Issued struct {
	Cert              *x509.Certificate
	CertPEM, KeyPEM   []byte
	CertFile, KeyFile string
}

// Issue signs a leaf certificate for a fresh key and writes cert and key into dir.
func (ca *CA) Issue(t testing.TB, dir string, l Leaf) *Issued {
	t.Helper()
	var key crypto.Signer = ecKey(t)
	if l.RSA {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		key = k
	}
	return ca.issue(t, dir, l, key)
}

// IssueForKey signs a leaf certificate for an existing key (PKCS#8 PEM, as
// Issued.KeyPEM): a renewal that keeps the key.
func (ca *CA) IssueForKey(t testing.TB, dir string, l Leaf, keyPEM []byte) *Issued {
	t.Helper()
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		t.Fatal("testpki: no PEM key")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return ca.issue(t, dir, l, k.(crypto.Signer))
}

func (ca *CA) issue(t testing.TB, dir string, l Leaf, key crypto.Signer) *Issued {
	t.Helper()
	if l.NotBefore.IsZero() {
		l.NotBefore = time.Now().Add(-time.Hour)
	}
	if l.NotAfter.IsZero() {
		l.NotAfter = time.Now().Add(12 * time.Hour)
	}
	usage := x509.ExtKeyUsageServerAuth
	if l.Client {
		usage = x509.ExtKeyUsageClientAuth
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: l.CommonName},
		DNSNames:     l.DNSNames,
		IPAddresses:  l.IPs,
		URIs:         parseURIs(t, l.URIs),
		NotBefore:    l.NotBefore,
		NotAfter:     l.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	is := &Issued{
		Cert:    cert,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	if dir != "" {
		name := l.CommonName
		is.CertFile = filepath.Join(dir, name+".crt")
		is.KeyFile = filepath.Join(dir, name+".key")
		WriteFile(t, is.CertFile, is.CertPEM)
		WriteFile(t, is.KeyFile, is.KeyPEM)
	}
	return is
}

func parseURIs(t testing.TB, raw []string) []*url.URL {
	var out []*url.URL
	for _, r := range raw {
		u, err := url.Parse(r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, u)
	}
	return out
}

// WriteCRL writes a PEM revocation list signed by ca that revokes the given
// certificates, and returns its path.
func (ca *CA) WriteCRL(t testing.TB, dir, name string, revoked ...*x509.Certificate) string {
	t.Helper()
	return ca.WriteCRLValid(t, dir, name, time.Now().Add(-time.Minute), time.Now().Add(time.Hour), revoked...)
}

// WriteCRLValid is WriteCRL with the list's thisUpdate and nextUpdate.
func (ca *CA) WriteCRLValid(t testing.TB, dir, name string, thisUpdate, nextUpdate time.Time, revoked ...*x509.Certificate) string {
	t.Helper()
	tmpl := &x509.RevocationList{
		// Increasing, as a real CA's: a list with a lower number is older.
		Number:     big.NewInt(time.Now().UnixNano()),
		ThisUpdate: thisUpdate,
		NextUpdate: nextUpdate,
	}
	for _, c := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: time.Now()})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	WriteFile(t, p, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}))
	return p
}

// DeltaCRLPEM returns a delta revocation list (RFC 5280 deltaCRLIndicator
// naming base) signed by ca, as Vault's .../crl/delta/pem serves.
func (ca *CA) DeltaCRLPEM(t testing.TB, base int64, revoked ...*x509.Certificate) []byte {
	t.Helper()
	ind, err := asn1.Marshal(big.NewInt(base))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.RevocationList{
		Number:          big.NewInt(time.Now().UnixNano()),
		ThisUpdate:      time.Now().Add(-time.Minute),
		NextUpdate:      time.Now().Add(time.Hour),
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 27}, Critical: true, Value: ind}},
	}
	for _, c := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: time.Now()})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}

// PEM returns the CA certificate in PEM.
func (ca *CA) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// WriteCA writes the CA certificate to dir/name and returns the path.
func (ca *CA) WriteCA(t testing.TB, dir, name string) string {
	p := filepath.Join(dir, name)
	WriteFile(t, p, ca.PEM())
	return p
}

// WriteFile replaces path atomically, as Nomad's template runner does.
func WriteFile(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// WriteKeyPair writes c's chain and key (PKCS #8) as PEM files dir/name.crt
// and dir/name.key (e.g. a Vault-issued certificate for a Python client)
// and returns their paths.
func WriteKeyPair(t testing.TB, dir, name string, c *tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	var certPEM []byte
	for _, der := range c.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	key, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	WriteFile(t, certFile, certPEM)
	WriteFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}))
	return certFile, keyFile
}

func ecKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
