package main

import (
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/gagliardetto/solana-go"

	"github.com/modelnodes/modelnodes/delegation"
	"github.com/modelnodes/modelnodes/internal/envflag"
)

const delegationUsage = `model-runner delegation: a cruncher's wallet states that a runner's TLS key serves its model.

Usage:
  model-runner delegation key --runner-addr HOST:PORT --runner-ca ca.pem --runner-name NAME
      prints the runner's public key (cert_pub) from its TLS handshake, after checking its
      certificate chains to ca.pem and names NAME (model-node-<id>.crunchdao.internal)
  model-runner delegation sign --keypair ~/.config/solana/id.json (--cert-pub B64 | --runner-key runner.pem) \
      --model-id ID --hotkey HOTKEY [--ttl 720h] [--out delegation.json]

--cert-pub is what "delegation key" prints (or the runner logs as cert_pub); --runner-key is the
runner's certificate, certificate request or public key (PEM). Runners that keep their key in
Vault (tls-vault-sign) keep it across renewals and reschedules, so one signature holds until
it expires. The output goes to the runner: for a Nomad job, into the job's variable
  nomad var put nomad/jobs/<job id> delegation="$(cat delegation.json)"
(or the runner's --delegation file). The runner sends it with every call, and coordinators
check it against your wallet, the model, the hotkey, the expiry and the key of the TLS
connection. Sign again before it expires; the runner picks up a new one by itself.
`

func delegationCmd(args []string) error {
	if len(args) > 0 && args[0] == "key" {
		return delegationKeyCmd(args[1:])
	}
	if len(args) == 0 || args[0] != "sign" {
		fmt.Fprint(os.Stderr, delegationUsage)
		return errors.New("want the subcommand key or sign")
	}
	fs := flag.NewFlagSet("model-runner delegation sign", flag.ContinueOnError)
	keypair := fs.String("keypair", "", "the wallet's keypair file (solana-keygen JSON)")
	runnerKey := fs.String("runner-key", "", "the runner's certificate, CSR or public key (PEM)")
	certPub := fs.String("cert-pub", "", "the runner's public key as base64 SubjectPublicKeyInfo DER (what `delegation key` prints)")
	modelID := fs.String("model-id", "", "the model the runner serves")
	hotkey := fs.String("hotkey", "", "your hotkey for the model")
	ttl := fs.Duration("ttl", 30*24*time.Hour, "how long the delegation holds")
	out := fs.String("out", "", "where to write it (default stdout)")
	fs.Usage = envflag.Usage(fs, "MODEL_RUNNER_DELEGATION", delegationUsage)
	if err := envflag.Parse(fs, "MODEL_RUNNER_DELEGATION", args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *keypair == "" || *modelID == "" || *hotkey == "" || (*runnerKey == "") == (*certPub == "") {
		return errors.New("--keypair, --model-id, --hotkey and one of --runner-key or --cert-pub are required")
	}
	wallet, err := solana.PrivateKeyFromSolanaKeygenFile(*keypair)
	if err != nil {
		return fmt.Errorf("--keypair: %w", err)
	}
	var spki []byte
	if *certPub != "" {
		if spki, err = base64.StdEncoding.DecodeString(*certPub); err != nil {
			return fmt.Errorf("--cert-pub: %w", err)
		}
		if _, err := x509.ParsePKIXPublicKey(spki); err != nil {
			return fmt.Errorf("--cert-pub is no public key: %w", err)
		}
	} else {
		pemData, err := os.ReadFile(*runnerKey)
		if err != nil {
			return fmt.Errorf("--runner-key: %w", err)
		}
		if spki, err = delegation.PublicKeyDER(pemData); err != nil {
			return fmt.Errorf("--runner-key %s: %w", *runnerKey, err)
		}
	}
	proof, err := delegation.Sign(ed25519.PrivateKey(wallet), delegation.Message{
		CertPub: delegation.CertPub(spki), ModelID: *modelID, Hotkey: *hotkey,
		ExpiresAt: time.Now().Add(*ttl).Unix(),
	})
	if err != nil {
		return err
	}
	b, _ := json.MarshalIndent(proof.ToFile(), "", "  ")
	b = append(b, '\n')
	if *out == "" {
		_, err = os.Stdout.Write(b)
		return err
	}
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s: wallet %s, model %s, expires %s\n", *out, wallet.PublicKey(), *modelID,
		time.Now().Add(*ttl).UTC().Format(time.RFC3339))
	return nil
}

// delegationKeyCmd prints the public key a running runner presents, once its
// certificate is verified: the key a cruncher signs for.
func delegationKeyCmd(args []string) error {
	fs := flag.NewFlagSet("model-runner delegation key", flag.ContinueOnError)
	addr := fs.String("runner-addr", "", "the runner's gRPC address, HOST:PORT")
	caFile := fs.String("runner-ca", "", "the CA its certificate chains to (PEM; Vault's pki/ca/pem)")
	name := fs.String("runner-name", "", "the name its certificate must carry, model-node-<id>.crunchdao.internal")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to try")
	fs.Usage = envflag.Usage(fs, "MODEL_RUNNER_DELEGATION", delegationUsage)
	if err := envflag.Parse(fs, "MODEL_RUNNER_DELEGATION", args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *addr == "" || *caFile == "" || *name == "" {
		return errors.New("--runner-addr, --runner-ca and --runner-name are required")
	}
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		return fmt.Errorf("--runner-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("--runner-ca %s holds no PEM certificate", *caFile)
	}
	// The runner asks for a client certificate and refuses the call without
	// one, but only after it has shown (and this side verified) its own.
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: *timeout}, "tcp", *addr, &tls.Config{
		RootCAs: pool, ServerName: *name, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"},
	})
	if err != nil {
		return fmt.Errorf("TLS handshake with %s as %s: %w", *addr, *name, err)
	}
	defer conn.Close()
	leaf := conn.ConnectionState().PeerCertificates[0]
	fmt.Println(delegation.CertPub(leaf.RawSubjectPublicKeyInfo))
	fmt.Fprintf(os.Stderr, "%s: %s, certificate serial %x valid until %s\n", *addr, *name, leaf.SerialNumber,
		leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}
