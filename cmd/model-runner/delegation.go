package main

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/gagliardetto/solana-go"

	"github.com/modelnodes/modelnodes/internal/delegation"
	"github.com/modelnodes/modelnodes/internal/envflag"
)

const delegationUsage = `model-runner delegation sign: state, with your wallet, that a runner's TLS key serves your model.

Usage:
  model-runner delegation sign --keypair ~/.config/solana/id.json --runner-key runner.csr \
      --model-id ID --hotkey HOTKEY [--ttl 720h] [--out delegation.json]

--runner-key is the runner's certificate, certificate request or public key (PEM).
The output file goes to the runner (--delegation); the runner sends it with every call, and
coordinators check it against your wallet, the model, the hotkey, the expiry and the key of
the TLS connection. Sign again before it expires; the runner picks up a new file by itself.
`

func delegationCmd(args []string) error {
	if len(args) == 0 || args[0] != "sign" {
		fmt.Fprint(os.Stderr, delegationUsage)
		return errors.New("want the subcommand sign")
	}
	fs := flag.NewFlagSet("model-runner delegation sign", flag.ContinueOnError)
	keypair := fs.String("keypair", "", "the wallet's keypair file (solana-keygen JSON)")
	runnerKey := fs.String("runner-key", "", "the runner's certificate, CSR or public key (PEM)")
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
	if *keypair == "" || *runnerKey == "" || *modelID == "" || *hotkey == "" {
		return errors.New("--keypair, --runner-key, --model-id and --hotkey are required")
	}
	wallet, err := solana.PrivateKeyFromSolanaKeygenFile(*keypair)
	if err != nil {
		return fmt.Errorf("--keypair: %w", err)
	}
	pemData, err := os.ReadFile(*runnerKey)
	if err != nil {
		return fmt.Errorf("--runner-key: %w", err)
	}
	spki, err := delegation.PublicKeyDER(pemData)
	if err != nil {
		return fmt.Errorf("--runner-key %s: %w", *runnerKey, err)
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
